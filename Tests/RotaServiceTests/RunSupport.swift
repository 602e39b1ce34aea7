import Foundation
import RotaRedisServer
import RotaStore
import RotaTestSupport
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Support for the end-to-end tests of `rota run` (RunEndToEndTests.swift): the built `rota`
// binary run as child processes — one-shot commands (`rota history …`) and long-running nodes
// (`rota run …`) whose JSON log lines on stderr are parsed as they come — a private redis-server
// per test, and polling with deadlines. Nodes are started through ``withRunCluster(plans:_:)``,
// which SIGKILLs whatever still runs when the body returns or throws (or its task is cancelled).

/// The built `rota`.
func rotaExecutable() throws -> URL { try builtExecutable("rota") }

struct CommandOutput: Sendable {
    var status: Int32
    var out: String
    var err: String
}

/// Runs `rota ARGUMENTS` to completion (on a thread of its own) and returns its exit status and
/// output. Killed if it takes longer than `timeout`.
func rotaCommand(_ arguments: [String], timeout: Duration = .seconds(30)) async throws -> CommandOutput {
    let executable = try rotaExecutable()
    return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<CommandOutput, any Error>) in
        Thread {
            let process = Process()
            process.executableURL = executable
            process.arguments = arguments
            let out = Pipe(), err = Pipe()
            closeOnExec(out)
            closeOnExec(err)
            process.standardInput = FileHandle.nullDevice
            process.standardOutput = out
            process.standardError = err
            do {
                try process.run()
            } catch {
                continuation.resume(throwing: TestFailure("cannot run rota \(arguments): \(error)"))
                return
            }
            let pid = process.processIdentifier
            // Killed at the deadline unless it finished (checked under the lock, so a finished
            // command's reused pid is never signalled).
            let finished = Mutex(false)
            Thread {
                let deadline = ContinuousClock.now + timeout
                while ContinuousClock.now < deadline {
                    if finished.withLock({ $0 }) { return }
                    usleep(20_000)
                }
                finished.withLock { done in if !done { sendSignal(pid, SIGKILL) } }
            }.start()
            let errors = Mutex(Data())
            let errorsDone = DispatchSemaphore(value: 0)
            let errorFD = err.fileHandleForReading.fileDescriptor
            Thread {
                readAll(errorFD) { data in errors.withLock { $0.append(data) } }
                errorsDone.signal()
            }.start()
            var output = Data()
            readAll(out.fileHandleForReading.fileDescriptor) { output.append($0) }
            errorsDone.wait()
            finished.withLock { done in
                // Still a zombie until waited for: the pid cannot be reused before this.
                done = true
            }
            process.waitUntilExit()
            continuation.resume(returning: CommandOutput(
                status: process.terminationStatus,
                out: String(decoding: output, as: UTF8.self),
                err: String(decoding: errors.withLock { $0 }, as: UTF8.self)
            ))
            withExtendedLifetime((out, err)) {}
        }.start()
    }
}

/// A `rota run` child process: its stderr (JSON log lines, `--log-format json`) is parsed line by
/// line on a thread of its own.
final class RunNode: Sendable {
    struct State: Sendable {
        var lines: [String] = []
        /// The JSON log lines, every value as a string (JSONLogHandler writes strings only).
        var entries: [[String: String]] = []
        var partial = Data()
        var stderrEnded = false
        /// Set once the process exited: status (or signal number) and whether a signal ended it.
        var exit: (status: Int32, signaled: Bool)?
    }

    let label: String
    let database: String
    let arguments: [String]
    let pid: Int32
    private let process: Mutex<Process>
    private let guarded = Mutex(State())
    private let keepAlive = Mutex<[FileHandle]>([])
    /// This node's SQLite store, opened by the test (read side) once the node created it.
    private let openedStore = Mutex<PlanStore?>(nil)

    init(label: String, database: String, arguments: [String], executable: URL? = nil) throws {
        self.label = label
        self.database = database
        self.arguments = arguments
        let process = Process()
        process.executableURL = try executable ?? rotaExecutable()
        process.arguments = arguments
        let errors = Pipe()
        closeOnExec(errors)
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = errors
        self.process = Mutex(process)
        try process.run()
        pid = process.processIdentifier
        let errorFD = errors.fileHandleForReading.fileDescriptor
        keepAlive.withLock { $0 = [errors.fileHandleForReading] }
        Thread { [self] in
            readAll(errorFD) { self.consume($0) }
            self.guarded.withLock { $0.stderrEnded = true }
            let current = self.process.withLock { $0 }
            current.waitUntilExit()
            let status = current.terminationStatus
            let signaled = current.terminationReason == .uncaughtSignal
            self.guarded.withLock { $0.exit = (status, signaled) }
        }.start()
    }

    private func consume(_ data: Data) {
        guarded.withLock { state in
            state.partial.append(data)
            while let newline = state.partial.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: state.partial[state.partial.startIndex..<newline], as: UTF8.self)
                state.partial.removeSubrange(state.partial.startIndex...newline)
                state.lines.append(line)
                if let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] {
                    state.entries.append(object.mapValues { "\($0)" })
                }
            }
        }
    }

    var state: State { guarded.withLock { $0 } }
    var entries: [[String: String]] { state.entries }
    var hasExited: Bool { state.exit != nil }

    /// Log entries with this message, in order.
    func logs(_ message: String) -> [[String: String]] { entries.filter { $0["message"] == message } }

    /// The node ID, from the `rota run ready` line (set once the node is ready).
    var nodeID: String? { logs("rota run ready").first?["node"] }

    /// What rounds record as their planner: the node's stable name (`--name`, the label here).
    var plannerName: String { label }

    /// Waits for the `rota run ready` line; throws if the process exits first.
    func waitUntilReady(timeout: Duration = .seconds(60)) async throws {
        let deadline = ContinuousClock.now + timeout
        while nodeID == nil {
            if hasExited { throw TestFailure("\(label) exited before it was ready\n\(diagnostics)") }
            if ContinuousClock.now >= deadline { throw TestFailure("\(label) not ready after \(timeout)\n\(diagnostics)") }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// This node's history store, opened on first use (after the node is ready, so it exists and is migrated).
    func store() throws -> PlanStore {
        try openedStore.withLock { opened in
            if let opened { return opened }
            let store = try PlanStore.open(path: database)
            opened = store
            return store
        }
    }

    /// Every round in this node's history, oldest tick first.
    func rounds(producer: String? = nil) throws -> [RoundRecord] {
        var filter = HistoryFilter()
        filter.producer = producer
        filter.limit = 1_000_000
        return try store().rounds(matching: filter).sorted { ($0.tick, $0.roundID) < ($1.tick, $1.roundID) }
    }

    /// A round's actions in this node's history.
    func actions(of roundID: String) throws -> [ActionRecord] {
        try store().round(id: roundID)?.1 ?? []
    }

    /// A description for failure messages: identity, exit, the last stderr lines.
    var diagnostics: String {
        let current = state
        let exit = current.exit.map { $0.signaled ? "killed by signal \($0.status)" : "exited with status \($0.status)" } ?? "running"
        return """
            [\(label) pid \(pid) node \(nodeID ?? "?") db \(database) — \(exit); \(current.lines.count) stderr lines]
                \(current.lines.suffix(25).joined(separator: "\n    "))
            """
    }

    /// SIGKILL, then waits until the process is gone.
    func kill(timeout: Duration = .seconds(10)) async throws {
        if !hasExited { sendSignal(pid, SIGKILL) }
        let deadline = ContinuousClock.now + timeout
        while !hasExited {
            if ContinuousClock.now >= deadline { throw TestFailure("\(label) still running \(timeout) after SIGKILL") }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Kills without the async machinery: usable in cleanup paths, even when the test's task is
    /// cancelled.
    func killForCleanup() {
        guard !hasExited else { return }
        sendSignal(pid, SIGKILL)
        let deadline = ContinuousClock.now + .seconds(5)
        while !hasExited && ContinuousClock.now < deadline { usleep(2_000) }
    }
}

/// The `rota run` nodes of one test (at most ``maximum`` at once: the machine has 2 cores), the
/// plan directory they share and the Redis they use.
final class RunCluster: Sendable {
    static let maximum = 3
    let redisURL: String
    let pool: String
    let directory: URL
    /// The plan directory every node is given (`--plans`).
    let plans: URL
    private let nodes = Mutex<[RunNode]>([])

    init(redisURL: String, pool: String, directory: URL) {
        self.redisURL = redisURL
        self.pool = pool
        self.directory = directory
        self.plans = directory.appendingPathComponent("plans")
    }

    var all: [RunNode] { nodes.withLock { $0 } }
    var live: [RunNode] { all.filter { !$0.hasExited } }

    /// Starts `rota run` (its own SQLite file, one worker, JSON logs) on the shared plan directory
    /// or on `plans`, or with no plan files (`following`: it follows the pool's plan); does not
    /// wait for it.
    func start(_ label: String, plans: URL? = nil, following: Bool = false, extra: [String] = []) throws -> RunNode {
        let running = live.count
        guard running < Self.maximum else {
            throw TestFailure("refusing to start \(label): \(running) rota run processes already run (maximum \(Self.maximum))")
        }
        let database = directory.appendingPathComponent("\(label).sqlite").path
        let node = try RunNode(label: label, database: database, arguments: [
            "run"] + (following ? [] : ["--plans", (plans ?? self.plans).path]) + ["--db", database, "--redis", redisURL, "--pool", pool,
            "--workers", "1", "--name", label, "--log-format", "json",
        ] + extra)
        nodes.withLock { $0.append(node) }
        return node
    }

    /// Starts nodes together (as a deployment would) and waits until each is ready.
    func launch(_ labels: [String], plans: (String) -> URL? = { _ in nil }) async throws -> [RunNode] {
        let started = try labels.map { try start($0, plans: plans($0)) }
        for node in started { try await node.waitUntilReady() }
        return started
    }

    /// The node named `id` (rounds name their planner by the node's `--name`, the test's label).
    func node(id: String) -> RunNode? { all.first { $0.label == id } }

    func killAll() {
        for node in all { node.killForCleanup() }
    }

    var diagnostics: String { all.map(\.diagnostics).joined(separator: "\n") }

    /// A plan directory of the node `label` (created if needed), for tests where nodes' files differ.
    func plans(of label: String) throws -> URL {
        let url = directory.appendingPathComponent("plans-\(label)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// Writes a plan file atomically (a reload never sees half a file).
    func writePlan(_ text: String, name: String = "plan.yaml", in directory: URL? = nil) throws -> String {
        let url = (directory ?? plans).appendingPathComponent(name)
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }
}

/// Runs `body` with a private redis-server and a temporary plan directory holding `plans`
/// (`plan.yaml`); every `rota run` started through the cluster is killed when `body` returns or
/// throws, the server stopped and the directory removed.
func withRunCluster<R>(pool: String = "e2e", plans: String, _ body: (RunCluster) async throws -> R) async throws -> R {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("rota-run-e2e-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory.appendingPathComponent("plans"), withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    return try await RedisServer.withServer { server in
        let cluster = RunCluster(redisURL: server.url, pool: pool, directory: directory)
        _ = try cluster.writePlan(plans)
        do {
            let result = try await body(cluster)
            cluster.killAll()
            return result
        } catch {
            // The nodes' logs say what went wrong more often than the error does.
            print("rota run nodes at failure:\n\(cluster.diagnostics)")
            cluster.killAll()
            throw error
        }
    }
}

/// Polls `body` until it returns a value (errors it throws count as "not yet"), every `every`;
/// throws at the deadline with the last error and `diagnostics`.
@discardableResult
func poll<T>(
    _ what: String,
    timeout: Duration,
    every: Duration = .milliseconds(100),
    diagnostics: @autoclosure () -> String = "",
    _ body: () throws -> T?
) async throws -> T {
    let deadline = ContinuousClock.now + timeout
    var lastError: (any Error)?
    while true {
        do {
            if let value = try body() { return value }
        } catch {
            lastError = error
        }
        if ContinuousClock.now >= deadline {
            throw TestFailure("timed out after \(timeout) waiting for \(what)\(lastError.map { " (last error: \($0))" } ?? "")\n\(diagnostics())")
        }
        try await Task.sleep(for: every)
    }
}

extension RoundRecord {
    /// The tick's fencing token (Unix µs), the last component of the round ID.
    var token: Int64? { roundID.split(separator: "/").last.flatMap { Int64($0) } }
}

/// RFC 3339 with milliseconds, UTC (what `rota` prints and accepts).
func rfc3339(_ date: Date) -> String {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return formatter.string(from: date)
}

/// `rota history --db DB --format json`, parsed.
func historyJSON(db: String) async throws -> [[String: Any]] {
    let result = try await rotaCommand(["history", "--db", db, "--format", "json", "--limit", "100000"])
    guard result.status == 0 else { throw TestFailure("rota history --db \(db) failed (\(result.status)): \(result.err)") }
    guard let array = try JSONSerialization.jsonObject(with: Data(result.out.utf8)) as? [[String: Any]] else {
        throw TestFailure("rota history --format json printed no JSON array: \(result.out.prefix(500))")
    }
    return array
}

/// `rota jobs --db DB --at T --format json`: the job keys running at T according to the history.
func jobsAt(db: String, _ instant: Date) async throws -> [String] {
    let result = try await rotaCommand(["jobs", "--db", db, "--at", rfc3339(instant), "--format", "json"])
    guard result.status == 0 else { throw TestFailure("rota jobs --db \(db) failed (\(result.status)): \(result.err)") }
    guard let array = try JSONSerialization.jsonObject(with: Data(result.out.utf8)) as? [[String: Any]] else {
        throw TestFailure("rota jobs --format json printed no JSON array: \(result.out.prefix(500))")
    }
    return array.compactMap { $0["job"] as? String }.sorted()
}
