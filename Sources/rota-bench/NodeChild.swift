import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// The child processes of the pool and ticker benches (`rota-pool-node`), and the line queue
// their reading threads fill.

/// When a chunk of a child's output was read: each bench stamps its lines with the clock it needs.
struct ReadTime: Sendable {
    let instant: ContinuousClock.Instant
    let unixMicroseconds: Int64
}

/// Looks at one output line of a child (on its reading thread, so it must not block) and returns
/// true when it took the line; the others go to the child's command/ready queue.
typealias LineInterceptor = @Sendable (_ line: String, _ read: ReadTime, _ pid: pid_t) -> Bool

/// One `rota-pool-node` process, driven over its stdin and read line by line on a thread of its
/// own. Lines the bench's interceptor takes (start/stop lines for the pool bench's placement, tick
/// lines for the ticker bench) go there; every other line to ``control``.
final class NodeChild: Sendable {
    /// Its position in launch order.
    let index: Int
    /// `rota-pool-node A`, `… B`…, by launch order.
    let name: String
    let pid: pid_t
    private let input: Mutex<Int32>
    private let control = LineQueue()
    private let sent = Mutex(0)
    private let status = Mutex<Int32?>(nil)
    /// The words of its `ready <node> <worker>…` line after `ready`.
    private let readyFields = Mutex<[String]?>(nil)

    private init(index: Int, pid: pid_t, input: Int32) {
        self.index = index
        self.name = "rota-pool-node \(Character(UnicodeScalar(UInt8(65 + index % 26))))"
        self.pid = pid
        self.input = Mutex(input)
    }

    /// The worker IDs of its ready line.
    var workers: [String] { readyFields.withLock { Array(($0 ?? []).dropFirst()) } }

    /// Spawns with an empty signal mask and default handlers (the caller's threads block signals)
    /// and pipes on stdin and stdout; stderr is inherited.
    static func spawn(index: Int, executable: String, arguments: [String], intercept: @escaping LineInterceptor) throws -> NodeChild {
        var inPipe: [Int32] = [-1, -1]
        var outPipe: [Int32] = [-1, -1]
        // Close-on-exec: no child may inherit another child's pipes (its stdin would never end).
        // Children are spawned one at a time, so nothing spawns between pipe() and fcntl().
        guard pipe(&inPipe) == 0 else { throw BenchError("pipe: \(String(cString: strerror(errno)))") }
        guard pipe(&outPipe) == 0 else {
            let error = errno
            close(inPipe[0])
            close(inPipe[1])
            throw BenchError("pipe: \(String(cString: strerror(error)))")
        }
        for fd in inPipe + outPipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var child: pid_t = 0
        let result = posix_spawn(&child, executable, &actions, &attributes, argv, environ)
        close(inPipe[0])
        close(outPipe[1])
        guard result == 0 else {
            close(inPipe[1])
            close(outPipe[0])
            throw BenchError("cannot start \(executable): \(String(cString: strerror(result)))")
        }
        let process = NodeChild(index: index, pid: child, input: inPipe[1])
        process.startReading(outPipe[0], intercept: intercept)
        return process
    }

    private func startReading(_ fd: Int32, intercept: @escaping LineInterceptor) {
        let (control, pid) = (self.control, self.pid)
        let thread = Thread {
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            var pending: [UInt8] = []
            while true {
                let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { break }
                let time = ReadTime(instant: ContinuousClock.now, unixMicroseconds: unixMicroseconds())
                pending.append(contentsOf: chunk[0..<count])
                var lineStart = 0
                for position in pending.indices where pending[position] == UInt8(ascii: "\n") {
                    let line = String(decoding: pending[lineStart..<position], as: UTF8.self)
                    lineStart = position + 1
                    if !intercept(line, time, pid) { control.push(line) }
                }
                pending.removeFirst(lineStart)
            }
            close(fd)
            control.finish()
        }
        thread.start()
    }

    func waitUntilReady(timeout: Duration) async throws {
        let deadline = ContinuousClock.now + timeout
        while true {
            guard let line = await control.next(until: deadline) else {
                throw BenchError("\(name) did not report ready within \(timeout)\(exitNote())")
            }
            let parts = line.split(separator: " ").map(String.init)
            if parts.first == "ready", parts.count >= 2 {
                readyFields.withLock { $0 = Array(parts.dropFirst()) }
                return
            }
        }
    }

    /// Sends a command line and waits for its `result` line; returns the lines printed before it.
    func command(_ text: String, timeout: Duration) async throws -> [String] {
        let number = sent.withLock { count -> Int in
            count += 1
            return count
        }
        try write(text + "\n")
        let deadline = ContinuousClock.now + timeout
        let prefix = "result \(number) "
        var lines: [String] = []
        while true {
            guard let line = await control.next(until: deadline) else {
                throw BenchError("\(name): no result for '\(text)' within \(timeout)\(exitNote())")
            }
            guard line.hasPrefix(prefix) else {
                lines.append(line)
                continue
            }
            let outcome = line.dropFirst(prefix.count)
            guard outcome == "ok" else { throw BenchError("\(name): '\(text)' failed: \(outcome)") }
            return lines
        }
    }

    private func write(_ text: String) throws {
        try input.withLock { fd in
            guard fd >= 0 else { throw BenchError("\(name): input already closed") }
            var bytes = Array(text.utf8)[...]
            while !bytes.isEmpty {
                let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
                if written < 0 {
                    if errno == EINTR { continue }
                    throw BenchError("\(name): writing a command failed: \(String(cString: strerror(errno)))\(exitNote())")
                }
                bytes = bytes.dropFirst(written)
            }
        }
    }

    /// End of input: the node closes and the process exits.
    func closeInput() {
        input.withLock { fd in
            if fd >= 0 { close(fd) }
            fd = -1
        }
    }

    /// The exit status once the process has exited (reaping it), nil while it runs.
    var exitStatus: Int32? {
        status.withLock { status in
            if let status { return status }
            var raw: Int32 = 0
            let result = waitpid(pid, &raw, WNOHANG)
            if result == pid {
                status = raw
            } else if result < 0 {
                status = -1
            }
            return status
        }
    }

    var hasExited: Bool { exitStatus != nil }

    func waitForExit(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while !hasExited {
            guard ContinuousClock.now < deadline else { return false }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return true
    }

    /// SIGKILL, then waits until the process is gone.
    func kill() async {
        closeInput()
        guard !hasExited else { return }
        _ = Glibc.kill(pid, SIGKILL)
        _ = await waitForExit(timeout: .seconds(10))
    }

    private func exitNote() -> String {
        exitStatus.map { "; it exited (wait status \($0))" } ?? ""
    }
}

/// Lines handed from a reading thread to one async consumer at a time.
final class LineQueue: Sendable {
    private struct State {
        var lines: [String] = []
        var head = 0
        var finished = false
        var waiter: CheckedContinuation<String?, Never>?
    }

    private let state = Mutex(State())

    func push(_ line: String) {
        let waiter = state.withLock { state -> CheckedContinuation<String?, Never>? in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.lines.append(line)
            return nil
        }
        waiter?.resume(returning: line)
    }

    func finish() {
        let waiter = state.withLock { state -> CheckedContinuation<String?, Never>? in
            state.finished = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: nil)
    }

    /// The next line; nil once the input ended (or the task is cancelled).
    func next() async -> String? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<String?, Never>) in
                let now: String?? = state.withLock { state in
                    if state.head < state.lines.count {
                        defer {
                            state.head += 1
                            if state.head == state.lines.count {
                                state.lines.removeAll(keepingCapacity: true)
                                state.head = 0
                            }
                        }
                        return .some(state.lines[state.head])
                    }
                    if state.finished || Task.isCancelled { return .some(nil) }
                    state.waiter = continuation
                    return nil
                }
                if let now { continuation.resume(returning: now) }
            }
        } onCancel: {
            state.withLock { state -> CheckedContinuation<String?, Never>? in
                defer { state.waiter = nil }
                return state.waiter
            }?.resume(returning: nil)
        }
    }

    /// The next line, or nil if the input ended or `deadline` passed first.
    func next(until deadline: ContinuousClock.Instant) async -> String? {
        await withTaskGroup(of: String?.self) { group in
            group.addTask { await self.next() }
            group.addTask {
                try? await Task.sleep(until: deadline)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }
}
