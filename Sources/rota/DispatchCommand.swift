import ArgumentParser
import Foundation
import Rota
import RotaPlans
import RotaRedis
import RotaService
import RotaStore
import RotaStreams

// MARK: rota dispatch

struct DispatchCommand: ParsableCommand, AsyncCommand {
    static let configuration = CommandConfiguration(
        commandName: "dispatch",
        abstract: "Start a job in the pool with a named handler; returns once a worker started it.",
        discussion: """
            The job requires a worker with its handler (a worker declares the handlers it has). When no active worker \
            has it, the job waits in the pool, unplaced, and starts once such a worker joins: without --wait the \
            command says so and exits 11; with --wait it waits for the start (--wait alone: without a time limit; \
            --wait SECONDS or --wait=SECONDS: exit 12 if the job still waits then). `rota stop KEY` ends a waiting job.
            Exit status: 0 started, 3 the job already exists (or is being dispatched), 10 the pool is at its job limit, \
            11 the job waits for a worker with its handler, 12 it still waits after --wait SECONDS, 1 any other failure \
            (the worker's error text for a failed start; a job stopped while it waited).
            """
    )

    /// What a bare `--wait` becomes before parsing (see ``expandBareWait(_:)``).
    static let noLimit = "none"

    @Argument(help: "The job key.")
    var key: String

    @Option(help: "The worker-side handler (e.g. log, exec).")
    var handler: String

    @Option(help: "The handler's payload, as text.")
    var payload: String?

    @Option(help: "Read the handler's payload from this file (- for standard input).")
    var payloadFile: String?

    @Option(name: .customLong("wait"), help: ArgumentHelp(
        "If no active worker has the handler, wait until the job starts: at most SECONDS (or a duration: 90s, 5m), without a limit when given no value.",
        valueName: "SECONDS"))
    var waitLimit: String?

    @OptionGroup var poolOptions: PoolOptions

    @OptionGroup var historyKeyOptions: HistoryKeyOptions

    func validate() throws {
        if let waitLimit, Self.waitDuration(waitLimit) == nil {
            throw ValidationError("--wait takes seconds (e.g. 30, 2.5) or a duration (90s, 5m), or no value to wait without a limit")
        }
    }

    /// `--wait`'s value: nil for no limit; `.some(nil)` for an invalid text.
    static func waitDuration(_ text: String) -> Duration?? {
        if text == noLimit { return .some(nil) }
        if let seconds = Double(text), seconds.isFinite, seconds >= 0, seconds <= 1e9 { return .some(.milliseconds(Int64((seconds * 1000).rounded()))) }
        if let duration = parseDuration(text) { return .some(duration) }
        return nil
    }

    /// `rota dispatch … --wait` with no value, written `--wait=none` so that ArgumentParser (whose
    /// options always take a value) accepts it. A `--wait` followed by a number or duration keeps
    /// it as its value: a key that looks like one goes before `--wait`, or is written `--wait=…`.
    /// `rota status --watch` with no value is expanded here too (``StatusCommand/expandBareWatch(_:)``):
    /// this is the one rewrite the entry point applies.
    static func expandBareWait(_ arguments: [String]) -> [String] {
        guard arguments.first == "dispatch" else { return StatusCommand.expandBareWatch(arguments) }
        return expandBareOption(arguments, option: "--wait", bare: noLimit) { $0 != noLimit && waitDuration($0) != nil }
    }

    /// How a dispatch ended, as the command reports it.
    enum Outcome: Sendable {
        case started
        /// No active worker has the capability; not waited for.
        case unplaced(requirement: String)
        /// Waited for and started (on `worker` when the job log said so).
        case startedAfterWaiting(requirement: String, worker: String?)
        /// Still unplaced when --wait ran out.
        case stillWaiting(requirement: String, after: Duration)
        /// Ended (stopped, given up) while it waited.
        case endedWhileWaiting(requirement: String, how: String)
        case failed(PoolError)
    }

    func execute() async throws {
        let envelope: JobEnvelope
        do {
            envelope = try JobEnvelope(handler: handler, payload: try payloadBytes(text: payload, file: payloadFile))
        } catch let error as EnvelopeError {
            throw CommandFailure("--handler: \(error.message)")
        }
        let historyKey = try historyKeyOptions.load()
        // validate() accepted it: the outer optional is set.
        let wait: Duration?? = waitLimit.map { Self.waitDuration($0) ?? nil }
        let key = self.key, actor = currentActor(), pool = poolOptions.pool
        let outcome: Outcome = try await withClientNode(poolOptions, command: "dispatch") { node in
            let asked = Date()
            let hash = fingerprint(String(decoding: envelope.encoded(), as: UTF8.self))
            // Where the job log stands before the dispatch: a start that follows at once is not missed.
            let cursor = wait == nil ? nil : try await Self.jobLogEnd(node)
            let result: Result<DispatchOutcome, PoolError>
            do {
                // The job needs a worker that has its handler (workers declare their handlers).
                result = .success(try await node.dispatch(key: key, payload: envelope.encoded(), requirement: envelope.handler,
                    origin: JobOrigin(actor: actor, reason: Reason.manual)))
            } catch let error as PoolError {
                result = .failure(error)
            }
            func record(_ outcome: ActionOutcome, error: String? = nil) async {
                await recordManual(pool: pool, key: historyKey, node: node, job: key, action: .start, outcome: outcome, error: error,
                    payloadHash: hash, actor: actor, asked: asked)
            }
            switch result {
            case .success(.started):
                await record(.started)
                return .started
            case .success(.unplaced(let requirement)):
                await record(.unplaced, error: "no active worker has capability '\(requirement)'")
                guard let wait, let cursor else { return .unplaced(requirement: requirement) }
                FileHandle.standardError.write(Data("job \(key) waits for a worker with capability '\(requirement)' (no active worker has it): waiting\(wait.map { " up to \(Self.seconds($0))" } ?? "")\n".utf8))
                switch try await Self.waitUntilRunning(node, key: key, after: cursor, limit: wait) {
                case .running(let worker): return .startedAfterWaiting(requirement: requirement, worker: worker)
                case .ended(let how): return .endedWhileWaiting(requirement: requirement, how: how)
                case .timedOut: return .stillWaiting(requirement: requirement, after: wait ?? .zero)
                }
            case .failure(let error) where error.code == .jobExists:
                await record(.alreadyRunning)
                return .failed(error)
            case .failure(let error):
                await record(.failed, error: error.message)
                return .failed(error)
            }
        }
        switch outcome {
        case .started:
            print("started \(key)")
        case .unplaced(let requirement):
            print("job \(key) waits for a worker with capability '\(requirement)' (no active worker has it): it starts when one joins; `rota stop \(key)` ends it")
            throw ExitCode(11)
        case .startedAfterWaiting(_, let worker):
            print("started \(key)" + (worker.map { " (worker \($0))" } ?? ""))
        case .stillWaiting(let requirement, let after):
            throw failure("job \(key) still waits for a worker with capability '\(requirement)' after \(Self.seconds(after)) (it stays in the pool and starts when one joins; `rota stop \(key)` ends it)", exitCode: 12)
        case .endedWhileWaiting(let requirement, let how):
            throw CommandFailure("job \(key) ended while it waited for a worker with capability '\(requirement)' (\(how))")
        case .failed(let error) where error.code == .jobExists:
            throw failure("job \(key) already exists", exitCode: 3)
        case .failed(let error) where error.code == .tooManyJobs:
            throw failure(error.message, exitCode: 10)
        case .failed(let error) where error.code == .timeout:
            throw CommandFailure("job \(key): no worker confirmed the start in time (it may still start later)")
        case .failed(let error):
            throw CommandFailure(error.message)
        }
    }

    static func seconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let milliseconds = attoseconds / 1_000_000_000_000_000
        return milliseconds == 0 ? "\(seconds) s" : "\(seconds).\(String(format: "%03d", milliseconds)) s"
    }

    // MARK: Waiting for an unplaced job

    enum WaitOutcome: Sendable {
        case running(worker: String?)
        case ended(String)
        case timedOut
    }

    /// The ID of the job log's last entry ("0-0" when it has none).
    static func jobLogEnd(_ node: Node) async throws -> String {
        let reply = try await node.client.send("XREVRANGE", node.jobLogKey, "+", "-", "COUNT", 1)
        return reply.array?.first?.array?.first?.string ?? "0-0"
    }

    /// Follows the pool's job log after `cursor` until it shows `key` started (→ running) or ended
    /// without running (a stop of the waiting job, the pool giving it up), or `limit` passes. Every
    /// few seconds it also reads the pool's state, in case the entry it waits for was trimmed
    /// from the (capped) log before it was read.
    static func waitUntilRunning(_ node: Node, key: String, after cursor: String, limit: Duration?) async throws -> WaitOutcome {
        let stream = try RedisStream(name: JobLogEntry.streamName, keySpace: try RedisKeySpace(node.pool), client: node.client,
            options: .init(maxLength: JobLogEntry.maxLength))
        let reader = try StreamReader(stream: stream, options: .init(blockDuration: .seconds(1), start: .after(cursor)))
        return try await withThrowingTaskGroup(of: WaitOutcome?.self) { group in
            group.addTask {
                try await reader.run()
                return nil
            }
            group.addTask {
                for try await event in reader.events {
                    guard let entry = try? JobLogEntry.decode(event.payload), entry.jobs.contains(where: { $0.job == key }) else { continue }
                    switch entry.kind {
                    case .started: return .running(worker: entry.worker)
                    case .endedUnowned: return .ended("stopped")
                    case .givenUp: return .ended("given up by the pool")
                    default: continue
                    }
                }
                return nil
            }
            group.addTask {
                while true {
                    try await Task.sleep(for: .seconds(5))
                    if try await node.jobKeys().contains(key) { return .running(worker: nil) }
                    // Gone from the pool, and not held as unplaced either: ended.
                    if try await node.jobPayload(key) == nil, try await node.unplacedJobs()[key] == nil {
                        return .ended("it is no longer in the pool")
                    }
                }
            }
            if let limit {
                group.addTask {
                    try await Task.sleep(for: limit)
                    return .timedOut
                }
            }
            while let next = try await group.next() {
                guard let next else { continue }
                group.cancelAll()
                return next
            }
            return .timedOut
        }
    }
}

/// `arguments` with each `option` that has no value (`isValue` refuses what follows it) written
/// `option=bare`, so that ArgumentParser, whose options always take a value, accepts it. Stops at `--`.
func expandBareOption(_ arguments: [String], option: String, bare: String, isValue: (String) -> Bool) -> [String] {
    var result: [String] = []
    var index = 0
    while index < arguments.count {
        let argument = arguments[index]
        if argument == "--" {
            result += arguments[index...]
            break
        }
        if argument == option {
            if index + 1 < arguments.count, isValue(arguments[index + 1]) {
                result += [argument, arguments[index + 1]]
                index += 2
                continue
            }
            result.append("\(option)=\(bare)")
        } else {
            result.append(argument)
        }
        index += 1
    }
    return result
}
