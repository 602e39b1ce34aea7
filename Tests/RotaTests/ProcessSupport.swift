import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Child processes running `rota-pool-node` (Sources/rota-pool-node/main.swift: flags and the
// stdout/stdin line protocol), for tests that kill nodes for real. Children are started through
// ``withPoolNodeProcesses(redis:pool:_:)``, which kills whatever still runs when the body returns
// or throws, so a failing test never leaves processes behind.

/// The flags of the crash tests: short timings, stretched for a 2-core machine.
let crashTimingFlags = ["--worker-ttl-ms", "500", "--ack-grace-ms", "400", "--block-ms", "100", "--shutdown-ttl-ms", "500"]

/// The built `rota-pool-node`.
func poolNodeExecutable() throws -> URL { try builtExecutable("rota-pool-node") }

/// One `rota-pool-node` child process: its stdout is parsed line by line on a thread of its own
/// into the state below; waits are event-driven with deadlines.
///
/// Children are ended with SIGKILL or by closing their stdin (the node then closes and exits), never
/// with SIGTERM: a child spawned from a thread that blocks signals (NIO's do) may inherit that mask.
final class PoolNodeProcess: Sendable {
    /// What the child printed so far, with start/stop lines applied in order.
    struct State: Sendable {
        var lines: [String] = []
        var stderr = Data()
        /// `ready <node> <worker…>`.
        var node: String?
        var workers: [String] = []
        /// Worker → keys it runs now (start inserts, stop removes).
        var running: [String: Set<String>] = [:]
        /// Key → number of `start` lines.
        var starts: [String: Int] = [:]
        /// `start` lines for a key some worker of this process was already running.
        var duplicateStarts: [String] = []
        /// Command number → the text after `result <n> ` (`ok` or `error …`).
        var results: [Int: String] = [:]
        var closed = false
        var stdoutEnded = false
        /// Set once the process exited: its status (or signal number) and whether a signal ended it.
        var exit: (status: Int32, signaled: Bool)?

        /// Key → number of workers of this process running it.
        var runningCounts: [String: Int] {
            var counts: [String: Int] = [:]
            for keys in running.values { for key in keys { counts[key, default: 0] += 1 } }
            return counts
        }

        var runningKeys: Set<String> { Set(running.values.joined()) }
    }

    private struct Internal {
        var state = State()
        var partial = Data()
        var version: UInt64 = 0
        var nextWaiter: UInt64 = 0
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var commandsSent = 0
        var stdinClosed = false
    }

    let label: String
    let arguments: [String]
    private let process: Mutex<Process>
    private let stdin: FileHandle
    private let guarded = Mutex(Internal())
    let pid: Int32

    /// Starts the child; returns once it is spawned (see ``waitUntilReady(timeout:)``).
    init(label: String, arguments: [String]) throws {
        Self.ignoreSIGPIPE
        self.label = label
        self.arguments = arguments
        let process = Process()
        process.executableURL = try poolNodeExecutable()
        process.arguments = arguments
        let input = Pipe(), output = Pipe(), errors = Pipe()
        // Close-on-exec on every end (the child gets its ends through dup2, which clears the flag):
        // a process spawned later — another child, or a restarted redis-server — must not inherit
        // the write end of this child's stdin, or closing it would never reach the child as EOF.
        for handle in [input.fileHandleForReading, input.fileHandleForWriting, output.fileHandleForReading,
                       output.fileHandleForWriting, errors.fileHandleForReading, errors.fileHandleForWriting] {
            _ = fcntl(handle.fileDescriptor, F_SETFD, FD_CLOEXEC)
        }
        process.standardInput = input
        process.standardOutput = output
        process.standardError = errors
        self.stdin = input.fileHandleForWriting
        self.process = Mutex(process)
        try process.run()
        pid = process.processIdentifier
        // Process.run() closed our copies of the child's ends (so EOF arrives when the child exits).
        let outputFD = output.fileHandleForReading.fileDescriptor
        let errorFD = errors.fileHandleForReading.fileDescriptor
        // Keep the handles (which own the descriptors) alive as long as the threads read them.
        keepAlive.withLock { $0 = [output.fileHandleForReading, errors.fileHandleForReading] }
        // Blocking reads on threads of their own: they must not hold a concurrency thread.
        Thread { [self] in
            readAll(outputFD) { self.consume(stdout: $0) }
            self.update { $0.stdoutEnded = true }
            self.reapWhenExited()
        }.start()
        Thread { [self] in
            readAll(errorFD) { data in self.update { $0.stderr.append(data) } }
        }.start()
    }

    private let keepAlive = Mutex<[FileHandle]>([])

    /// A child writing to a closed pipe is its business; the test process must not die of SIGPIPE
    /// when it writes to the stdin of a child that was killed.
    private static let ignoreSIGPIPE: Void = {
        #if canImport(Glibc)
        _ = Glibc.signal(SIGPIPE, SIG_IGN)
        #else
        _ = Darwin.signal(SIGPIPE, SIG_IGN)
        #endif
    }()

    /// After stdout ended, wait (on this thread) for the exit status.
    private func reapWhenExited() {
        let current = process.withLock { $0 }
        current.waitUntilExit()
        let status = current.terminationStatus
        let signaled = current.terminationReason == .uncaughtSignal
        update { $0.exit = (status, signaled) }
    }

    // MARK: State

    var state: State { guarded.withLock { $0.state } }

    /// The node ID of the `ready` line (after ``waitUntilReady(timeout:)``).
    var node: String { state.node ?? "?" }
    /// The worker IDs of the `ready` line, then of `worker` lines.
    var workers: [String] { state.workers }
    var running: [String: Set<String>] { state.running }
    var runningCounts: [String: Int] { state.runningCounts }
    var runningKeys: Set<String> { state.runningKeys }
    func startCount(_ key: String) -> Int { state.starts[key] ?? 0 }
    var hasExited: Bool { state.exit != nil }
    var stderrText: String { String(decoding: state.stderr, as: UTF8.self) }

    /// A description for failure messages: identity, exit, the last stdout lines and stderr.
    var diagnostics: String {
        let current = state
        let exit = current.exit.map { $0.signaled ? "killed by signal \($0.status)" : "exited with status \($0.status)" } ?? "running"
        let stderr = String(decoding: current.stderr, as: UTF8.self).split(separator: "\n").suffix(20).joined(separator: "\n    ")
        return """
            [\(label) pid \(pid) node \(current.node ?? "?") — \(exit); \(current.lines.count) stdout lines; \
            running \(current.runningCounts.count) keys]
              last stdout: \(current.lines.suffix(12).joined(separator: " | "))
              stderr: \(stderr.isEmpty ? "(empty)" : stderr)
            """
    }

    private func update(_ body: (inout State) -> Void) {
        let waiters = guarded.withLock { inner -> [CheckedContinuation<Void, Never>] in
            body(&inner.state)
            inner.version &+= 1
            defer { inner.waiters = [:] }
            return Array(inner.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    private func consume(stdout data: Data) {
        let waiters = guarded.withLock { inner -> [CheckedContinuation<Void, Never>] in
            inner.partial.append(data)
            while let newline = inner.partial.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: inner.partial[inner.partial.startIndex..<newline], as: UTF8.self)
                inner.partial.removeSubrange(inner.partial.startIndex...newline)
                Self.apply(line, to: &inner.state)
            }
            inner.version &+= 1
            defer { inner.waiters = [:] }
            return Array(inner.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    private static func apply(_ line: String, to state: inout State) {
        state.lines.append(line)
        let parts = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard let first = parts.first else { return }
        switch first {
        case "ready" where parts.count >= 2:
            state.node = parts[1]
            state.workers = Array(parts.dropFirst(2))
        case "worker" where parts.count == 2:
            state.workers.append(parts[1])
        case "start" where parts.count == 3:
            let (worker, key) = (parts[1], parts[2])
            if state.running.values.contains(where: { $0.contains(key) }) {
                state.duplicateStarts.append("\(key) on \(worker) (running: \(state.running.filter { $0.value.contains(key) }.keys.sorted()))")
            }
            state.running[worker, default: []].insert(key)
            state.starts[key, default: 0] += 1
        case "stop" where parts.count == 3:
            state.running[parts[1]]?.remove(parts[2])
        case "result" where parts.count >= 3:
            if let number = Int(parts[1]) { state.results[number] = parts.dropFirst(2).joined(separator: " ") }
        case "closed":
            state.closed = true
        default:
            break
        }
    }

    // MARK: Waiting

    /// Waits until `condition` holds for the state, re-checking on every change; throws (with the
    /// child's diagnostics) at the deadline.
    @discardableResult
    func waitUntil(
        _ what: String,
        timeout: Duration = .seconds(10),
        _ condition: (State) -> Bool
    ) async throws -> State {
        let deadline = ContinuousClock.now + timeout
        while true {
            let (current, version) = guarded.withLock { ($0.state, $0.version) }
            if condition(current) { return current }
            if ContinuousClock.now >= deadline {
                throw TestFailure("\(label): timed out after \(timeout) waiting for \(what)\n\(diagnostics)")
            }
            try Task.checkCancellation()
            await change(after: version, until: deadline)
        }
    }

    /// Waits for a stdout line matching `predicate` (among all lines so far) and returns it.
    @discardableResult
    func waitForLine(
        _ what: String = "a matching line",
        timeout: Duration = .seconds(10),
        matching predicate: (String) -> Bool
    ) async throws -> String {
        let state = try await waitUntil("line: \(what)", timeout: timeout) { $0.lines.contains(where: predicate) }
        return state.lines.first(where: predicate)!
    }

    /// Waits for the `ready` line; throws if the child exits first.
    func waitUntilReady(timeout: Duration = .seconds(30)) async throws {
        let state = try await waitUntil("the ready line", timeout: timeout) { $0.node != nil || $0.exit != nil || $0.stdoutEnded }
        guard state.node != nil else { throw TestFailure("\(label) exited before it was ready\n\(diagnostics)") }
    }

    /// Returns when the state changed after `version`, or at the deadline, or on cancellation.
    private func change(after version: UInt64, until deadline: ContinuousClock.Instant) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.changeSignal(after: version) }
            group.addTask { try? await Task.sleep(until: deadline, clock: .continuous) }
            await group.next()
            group.cancelAll()
        }
    }

    private func changeSignal(after version: UInt64) async {
        let id = guarded.withLock { inner -> UInt64 in
            inner.nextWaiter &+= 1
            return inner.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = guarded.withLock { inner -> Bool in
                    if inner.version != version || Task.isCancelled { return true }
                    inner.waiters[id] = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            guarded.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }

    // MARK: Commands

    /// Writes one command line to the child's stdin; returns its number (for its `result` line).
    @discardableResult
    func send(_ command: String) throws -> Int {
        precondition(!command.contains("\n"), "one command per line")
        return try guarded.withLock { inner -> Int in
            guard !inner.stdinClosed else { throw TestFailure("\(label): stdin is closed; cannot send '\(command)'") }
            do {
                try stdin.write(contentsOf: Data((command + "\n").utf8))
            } catch {
                throw TestFailure("\(label): writing '\(command)' failed: \(error)")
            }
            inner.commandsSent += 1
            return inner.commandsSent
        }
    }

    /// Sends a command and waits for its `result` line; returns `ok` or `error <code> <message>`.
    func request(_ command: String, timeout: Duration = .seconds(10)) async throws -> String {
        let number = try send(command)
        let state = try await waitUntil("the result of '\(command)'", timeout: timeout) { $0.results[number] != nil || $0.stdoutEnded }
        guard let result = state.results[number] else { throw TestFailure("\(label) ended before answering '\(command)'\n\(diagnostics)") }
        return result
    }

    // MARK: Ending

    /// SIGKILL, then waits until the process is gone (its last stdout lines are read by then).
    func kill(timeout: Duration = .seconds(10)) async throws {
        if !hasExited { sendSignal(pid, SIGKILL) }
        closeStdin()
        try await waitForExit(timeout: timeout)
    }

    /// Closes stdin (the node closes: its jobs move to other nodes, it prints `closed` and exits)
    /// and waits for the exit; SIGKILL if it is still running at the deadline. Returns the exit
    /// status (a signal number if killed).
    @discardableResult
    func terminate(timeout: Duration = .seconds(15)) async throws -> Int32 {
        closeStdin()
        do {
            try await waitForExit(timeout: timeout)
        } catch {
            try await kill()
            throw TestFailure("\(label) did not exit within \(timeout) after its stdin was closed; killed\n\(diagnostics)")
        }
        return state.exit?.status ?? -1
    }

    func closeStdin() {
        guarded.withLock { inner in
            guard !inner.stdinClosed else { return }
            inner.stdinClosed = true
            try? stdin.close()
        }
    }

    private func waitForExit(timeout: Duration) async throws {
        try await waitUntil("the process to exit", timeout: timeout) { $0.exit != nil && $0.stdoutEnded }
    }

    /// Kills without waiting on the async machinery: usable in cleanup paths, even when the test's
    /// task is cancelled (its time limit passed).
    func killForCleanup() {
        guard !hasExited else { return }
        sendSignal(pid, SIGKILL)
        closeStdin()
        let deadline = ContinuousClock.now + .seconds(5)
        while !hasExited && ContinuousClock.now < deadline { usleep(2_000) }
    }
}

/// The children of one test, all killed when the test ends. At most ``maximum`` run at once (the
/// machine has 2 cores).
final class PoolNodeProcesses: Sendable {
    static let maximum = 3
    let redisURL: String
    let pool: String
    private let children = Mutex<[PoolNodeProcess]>([])

    init(redisURL: String, pool: String) {
        self.redisURL = redisURL
        self.pool = pool
    }

    var all: [PoolNodeProcess] { children.withLock { $0 } }

    /// Starts a node with `workers` workers and waits for its `ready` line.
    func launch(_ label: String, workers: Int, flags: [String] = crashTimingFlags, readyTimeout: Duration = .seconds(30)) async throws -> PoolNodeProcess {
        let live = all.filter { !$0.hasExited }.count
        guard live < Self.maximum else { throw TestFailure("refusing to start a child process: \(live) already run (maximum \(Self.maximum))") }
        let child = try PoolNodeProcess(
            label: label,
            arguments: ["--redis", redisURL, "--pool", pool, "--workers", String(workers)] + flags
        )
        children.withLock { $0.append(child) }
        try await child.waitUntilReady(timeout: readyTimeout)
        return child
    }

    /// Kills every child still running.
    func killAll() {
        for child in all { child.killForCleanup() }
    }

    /// Diagnostics of every child, for failure messages.
    var diagnostics: String { all.map(\.diagnostics).joined(separator: "\n") }
}

/// Runs `body` with a set of `rota-pool-node` children of pool `pool` on `redis`; kills them all
/// when it returns or throws.
func withPoolNodeProcesses<R: Sendable>(
    redis: String,
    pool: String,
    _ body: (PoolNodeProcesses) async throws -> R
) async throws -> R {
    let children = PoolNodeProcesses(redisURL: redis, pool: pool)
    do {
        let result = try await body(children)
        children.killAll()
        return result
    } catch {
        // The children's state says what went wrong more often than the error does.
        print("children at failure:\n\(children.diagnostics)")
        children.killAll()
        throw error
    }
}
