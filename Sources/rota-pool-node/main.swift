// A pool node in a process of its own, for tests that kill processes and for `rota-bench pool`.
//
// Usage: rota-pool-node --redis URL --pool NAME [--workers N] [--client-only]
//          [--worker-ttl-ms MS] [--ack-grace-ms MS] [--block-ms MS] [--shutdown-ttl-ms MS] [--quiet]
//          [--ticker NAME:MS] [--worker-capabilities CLASS/CLASS/…]
//
// --worker-capabilities: the initial workers' capabilities, one class per worker in turn (worker i
// gets class i mod the number of classes); a class is a comma-separated list, possibly empty:
// `greet/log` gives workers 0, 2… {greet} and 1, 3… {log}; `greet,log/` gives 0, 2… both, 1, 3…
// none. Without it workers have no capabilities (they run jobs without a requirement only).
//
// Prints one line per event on stdout (flushed):
//   ready <node-id> <worker-id>…        joined, workers added
//   start <worker-id> <key>             a start handler ran (not with --quiet)
//   stop <worker-id> <key>              a stop handler ran (not with --quiet)
//   result <n> ok | result <n> error <code> <message>   reply to a stdin command
//   tick <name> <token> <delivered>      a tick of --ticker this node delivered (token = scheduled
//                                       Unix µs, delivered = Unix µs), then " missed=N dropped=N"
//   closed                              after close/shutdown, just before exiting 0
// Reads commands on stdin, one per line:
//   dispatch <key> [payload] · stop <key> · close · shutdown · workers (prints "workers <id>…")
//   dispatch-req <key> <capability> [payload]   a job only workers with the capability run; when
//                                       none is active the job is held: prints "unplaced <key>
//                                       <capability>" before its result line (which is ok)
//   add-worker [cap,…] (prints "worker <id>" before its result line)
// End of stdin closes the node. Exit status 1 with a message on stderr if joining fails.
import Foundation
import Logging
import NIOCore
import NIOPosix
import Rota
import RotaRedis
import Synchronization

let output = Mutex(())
func emit(_ line: String) {
    output.withLock { _ in
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
    }
}

struct Arguments {
    var redis = "redis://127.0.0.1:6379"
    var pool = "rota"
    var workers = 1
    var clientOnly = false
    var quiet = false
    var tickers: [(name: String, interval: Duration)] = []
    /// `--worker-capabilities`: worker i gets `capabilityClasses[i % count]`; empty: none.
    var capabilityClasses: [Set<String>] = []
    var options = Node.Options()

    /// The capabilities of initial worker `index`.
    func capabilities(ofWorker index: Int) -> Set<String> {
        capabilityClasses.isEmpty ? [] : capabilityClasses[index % capabilityClasses.count]
    }

    init(_ arguments: [String]) throws {
        var iterator = arguments.makeIterator()
        func value(_ flag: String) throws -> String {
            guard let value = iterator.next() else { throw ArgumentError(message: "\(flag) needs a value") }
            return value
        }
        func milliseconds(_ flag: String) throws -> Duration {
            let text = try value(flag)
            guard let number = Int(text), number > 0 else { throw ArgumentError(message: "\(flag): '\(text)' is not a positive number of milliseconds") }
            return .milliseconds(number)
        }
        while let flag = iterator.next() {
            switch flag {
            case "--redis": redis = try value(flag)
            case "--pool": pool = try value(flag)
            case "--workers":
                let text = try value(flag)
                guard let number = Int(text), number >= 0 else { throw ArgumentError(message: "--workers: '\(text)' is not a count") }
                workers = number
            case "--client-only": clientOnly = true
            case "--quiet": quiet = true
            case "--ticker":
                let text = try value(flag)
                let parts = text.split(separator: ":")
                guard parts.count == 2, let number = Int(parts[1]), number > 0 else {
                    throw ArgumentError(message: "--ticker: '\(text)' is not NAME:MILLISECONDS")
                }
                tickers.append((String(parts[0]), .milliseconds(number)))
            case "--worker-capabilities":
                // Each name is checked by `addWorker` (an invalid one fails the join).
                capabilityClasses = try value(flag).split(separator: "/", omittingEmptySubsequences: false).map(capabilityList)
            case "--worker-ttl-ms": options.workerTTL = try milliseconds(flag)
            case "--ack-grace-ms": options.ackGracePeriod = try milliseconds(flag)
            case "--block-ms": options.jobSinkBlockDuration = try milliseconds(flag)
            case "--shutdown-ttl-ms": options.workerShutdownTTL = try milliseconds(flag)
            default: throw ArgumentError(message: "unknown argument '\(flag)'")
            }
        }
        options.clientOnly = clientOnly
    }
}

/// `a,b,c` as a set (empty items skipped).
func capabilityList(_ text: Substring) -> Set<String> {
    Set(text.split(separator: ",").map(String.init))
}

struct ArgumentError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

/// Prints starts and stops; jobs "run" until stopped.
struct PrintingHandler: JobHandler {
    let worker: @Sendable () -> String
    let quiet: Bool
    func start(_ job: Job) async throws {
        if !quiet { emit("start \(job.workerID) \(job.key)") }
    }

    func stop(key: String) async throws {
        if !quiet { emit("stop \(worker()) \(key)") }
    }
}

final class WorkerName: Sendable {
    let value = Mutex("")
}

/// Lines of stdin, read on a thread of their own (blocking reads must not hold a concurrency
/// thread); the sequence ends at end of input.
func standardInputLines() -> AsyncStream<String> {
    let (stream, continuation) = AsyncStream.makeStream(of: String.self)
    let thread = Thread {
        while let line = readLine() { continuation.yield(line) }
        continuation.finish()
    }
    thread.start()
    return stream
}

func serve(_ arguments: Arguments) async throws {
    let configuration = try RedisConfiguration(url: arguments.redis)
    try await RedisClient.withClient(configuration) { client in
        let node = try Node(pool: arguments.pool, client: client, options: arguments.options)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await node.run() }
            try await node.waitUntilReady()
            var ids: [String] = []
            func addWorker(capabilities: Set<String>) async throws -> String {
                let name = WorkerName()
                let handler = PrintingHandler(worker: { name.value.withLock { $0 } }, quiet: arguments.quiet)
                let worker = try await node.addWorker(handler, capabilities: capabilities)
                name.value.withLock { $0 = worker.id }
                return worker.id
            }
            for index in 0..<arguments.workers {
                ids.append(try await addWorker(capabilities: arguments.capabilities(ofWorker: index)))
            }
            for (name, interval) in arguments.tickers {
                let ticker = try await node.ticker(named: name, interval: interval)
                group.addTask {
                    for await tick in ticker.ticks {
                        let delivered = Int64(tick.delivered.timeIntervalSince1970 * 1e6)
                        emit("tick \(name) \(tick.token) \(delivered) missed=\(tick.missed) dropped=\(tick.dropped)")
                    }
                }
            }
            emit((["ready", node.id] + ids).joined(separator: " "))
            var number = 0
            for await line in standardInputLines() {
                number += 1
                let parts = line.split(separator: " ", maxSplits: 2).map(String.init)
                guard let command = parts.first else { continue }
                do {
                    switch command {
                    case "dispatch" where parts.count >= 2:
                        try await node.dispatch(key: parts[1], payload: parts.count > 2 ? Array(parts[2].utf8) : [])
                    case "stop" where parts.count == 2:
                        try await node.stop(key: parts[1])
                    case "dispatch-req" where parts.count >= 3:
                        // <key> <capability> [payload]: the payload may hold spaces.
                        let fields = line.split(separator: " ", maxSplits: 3).map(String.init)
                        let payload = fields.count > 3 ? Array(fields[3].utf8) : []
                        let outcome = try await node.dispatch(key: fields[1], payload: payload, requirement: fields[2])
                        if case .unplaced(let requirement) = outcome { emit("unplaced \(fields[1]) \(requirement)") }
                    case "add-worker" where parts.count <= 2:
                        let capabilities = parts.count == 2 ? capabilityList(Substring(parts[1])) : []
                        emit("worker \(try await addWorker(capabilities: capabilities))")
                    case "workers":
                        emit((["workers"] + node.localWorkers.map(\.id)).joined(separator: " "))
                    case "close":
                        try await node.close()
                    case "shutdown":
                        try await node.shutdown()
                    default:
                        throw ArgumentError(message: "unknown command '\(line)'")
                    }
                    emit("result \(number) ok")
                } catch let error as PoolError {
                    emit("result \(number) error \(error.code) \(error.message)")
                } catch {
                    emit("result \(number) error other \(error)")
                }
                if node.isClosed { break }
            }
            try await node.close()
            try await group.waitForAll()
            emit("closed")
        }
    }
}

// Tasks resumed by a Redis reply continue on the event loop that read it (no hop to another
// thread pool): about a fifth less CPU per job, measured with `rota-bench pool`.
_ = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()

do {
    let arguments = try Arguments(Array(CommandLine.arguments.dropFirst()))
    try await serve(arguments)
} catch {
    FileHandle.standardError.write(Data("rota-pool-node: \(error)\n".utf8))
    exit(1)
}
