import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What the checker takes from a process's JSON log lines (`--log-format json`, written by the
/// process itself): the `log` handler's "job started"/"job stopped" lines, the planner's "round"
/// lines and the "ready" line with the node ID.
struct LogRecord: Sendable {
    enum Kind: Sendable { case started(worker: String), stopped(worker: String?), round(producer: String, round: String) }
    let time: Date
    let kind: Kind
    let job: String
}

/// One incarnation of a `rota run` or `rota worker` child: spawned once, SIGKILLed, paused and
/// resumed by the scenarios. A thread of its own reads its stderr as it comes, keeps the lines
/// the checker needs and copies every line to a log file (kept when a scenario fails).
final class ChaosProcess: Sendable {
    enum Role: String, Sendable { case planner = "run", worker }

    struct State: Sendable {
        var records: [LogRecord] = []
        var nodeID: String?
        var partial = Data()
        var lines = 0
        /// When the process was SIGKILLed (its jobs end there) or was seen to exit.
        var endedAt: Date?
        var exitStatus: Int32?
        var lastLines: [String] = []
        /// Set when the suite itself killed it: any other exit is a crash.
        var killedBySuite = false
        /// Set when the suite asked it to stop (SIGTERM): an exit with status 0 is then no crash.
        var terminatedBySuite = false
        /// It ended on a signal (it did not call exit).
        var endedBySignal = false
    }

    let role: Role
    /// `r0`…, `w0`…: the slot; a restarted process keeps its slot (and a planner its database).
    let slot: String
    let incarnation: Int
    let pid: Int32
    let logPath: String
    private let guarded = Mutex(State())
    private let process: Mutex<Process>

    init(role: Role, slot: String, incarnation: Int, executable: URL, arguments: [String], logPath: String) throws {
        self.role = role
        self.slot = slot
        self.incarnation = incarnation
        self.logPath = logPath
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        let errors = Pipe()
        // Both ends close-on-exec: a child spawned later must not hold this pipe's write end, or
        // EOF would never come when this child dies (the child gets its end through dup2).
        for handle in [errors.fileHandleForReading, errors.fileHandleForWriting] {
            _ = fcntl(handle.fileDescriptor, F_SETFD, FD_CLOEXEC)
        }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = errors
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        guard let log = FileHandle(forWritingAtPath: logPath) else {
            throw ChaosFailure(.setup, "cannot write \(logPath)")
        }
        try process.run()
        self.process = Mutex(process)
        pid = process.processIdentifier
        let reading = errors.fileHandleForReading
        Thread { [self] in
            var buffer = [UInt8](repeating: 0, count: 65_536)
            let fd = reading.fileDescriptor
            while true {
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count > 0 {
                    let data = Data(buffer[0..<count])
                    log.write(data)
                    consume(data)
                } else if count == 0 || errno != EINTR {
                    break
                }
            }
            try? log.close()
            try? reading.close()
            let current = self.process.withLock { $0 }
            current.waitUntilExit()
            let status = current.terminationStatus
            let bySignal = current.terminationReason == .uncaughtSignal
            let ended = guarded.withLock { state -> State in
                state.exitStatus = status
                state.endedBySignal = bySignal
                if state.endedAt == nil { state.endedAt = Date() }
                return state
            }
            // For people (and scripts) reading a kept log: where the checker ends its open jobs.
            if let end = FileHandle(forWritingAtPath: logPath), let endedAt = ended.endedAt {
                let how = ended.killedBySuite ? "SIGKILLed by rota-chaos" : ended.terminatedBySuite ? "exited after SIGTERM" : "exited"
                let line = #"{"message":"rota-chaos: process ended","how":"\#(how)","status":\#(status),"time":"\#(Self.timeFormat.format(endedAt))","at_ms":\#(unixMilliseconds(endedAt))}"#
                _ = try? end.seekToEnd()
                try? end.write(contentsOf: Data((line + "\n").utf8))
                try? end.close()
            }
            withExtendedLifetime(errors) {}
        }.start()
    }

    private static let timeFormat = Date.ISO8601FormatStyle(includingFractionalSeconds: true)

    private func consume(_ data: Data) {
        guarded.withLock { state in
            state.partial.append(data)
            while let newline = state.partial.firstIndex(of: UInt8(ascii: "\n")) {
                let line = state.partial[state.partial.startIndex..<newline]
                state.partial.removeSubrange(state.partial.startIndex...newline)
                state.lines += 1
                let text = String(decoding: line, as: UTF8.self)
                state.lastLines.append(text)
                if state.lastLines.count > 20 { state.lastLines.removeFirst() }
                guard let object = try? JSONSerialization.jsonObject(with: line) as? [String: Any],
                    let message = object["message"] as? String
                else { continue }
                let time = (object["time"] as? String).flatMap { try? Self.timeFormat.parse($0) } ?? Date()
                switch message {
                case "job started":
                    if let job = object["job"] as? String {
                        state.records.append(LogRecord(time: time, kind: .started(worker: object["worker"] as? String ?? "?"), job: job))
                    }
                case "job stopped":
                    if let job = object["job"] as? String {
                        state.records.append(LogRecord(time: time, kind: .stopped(worker: object["worker"] as? String), job: job))
                    }
                case "round":
                    if let producer = object["producer"] as? String, let round = object["round"] as? String {
                        state.records.append(LogRecord(time: time, kind: .round(producer: producer, round: round), job: ""))
                    }
                case "rota run ready", "rota worker ready":
                    state.nodeID = object["node"] as? String
                default:
                    break
                }
            }
        }
    }

    var state: State { guarded.withLock { $0 } }
    var records: [LogRecord] { guarded.withLock { $0.records } }
    var nodeID: String? { guarded.withLock { $0.nodeID } }
    var hasEnded: Bool { guarded.withLock { $0.endedAt != nil } }
    var endedAt: Date? { guarded.withLock { $0.endedAt } }

    /// It exited without the suite killing it (a crash, a trap, an exit on its own), or exited
    /// with a failure or on a signal after the suite asked it to stop.
    var crashed: Bool {
        guarded.withLock { state in
            guard let status = state.exitStatus, !state.killedBySuite else { return false }
            return !(state.terminatedBySuite && status == 0 && !state.endedBySignal)
        }
    }

    func signal(_ signal: Int32) {
        guard !hasEnded else { return }
        _ = kill(pid, signal)
    }

    /// SIGKILL; its jobs end now. Waits (bounded) until the process is gone.
    func killNow() async {
        let alreadyEnded = guarded.withLock { state -> Bool in
            if state.endedAt != nil { return true }
            state.endedAt = Date()
            state.killedBySuite = true
            return false
        }
        guard !alreadyEnded else { return }
        _ = kill(pid, SIGKILL)
        let deadline = ContinuousClock.now + .seconds(10)
        while guarded.withLock({ $0.exitStatus == nil }) && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// SIGTERM: the process hands its jobs over and exits on its own; its jobs end at its own
    /// "job stopped" lines, or at its exit. Waits until it has exited, at most `timeout`; past that
    /// it is SIGKILLed and false is returned.
    func terminate(timeout: Duration) async -> Bool {
        let proceed = guarded.withLock { state -> Bool in
            guard state.endedAt == nil else { return false }
            state.terminatedBySuite = true
            return true
        }
        guard proceed else { return true }
        _ = kill(pid, SIGTERM)
        let deadline = ContinuousClock.now + timeout
        // endedAt is set once the whole of its stderr was read and it was reaped.
        while !hasEnded {
            if ContinuousClock.now >= deadline {
                await killNow()
                return false
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return true
    }

    /// Waits until the process logged its ready line; throws if it ends first or at the deadline.
    func waitUntilReady(timeout: Duration = .seconds(60)) async throws {
        let deadline = ContinuousClock.now + timeout
        while nodeID == nil {
            if hasEnded { throw ChaosFailure(.process, "\(description) ended before it was ready:\n\(tail)") }
            if ContinuousClock.now >= deadline { throw ChaosFailure(.process, "\(description) not ready after \(timeout):\n\(tail)") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    var description: String { "\(slot)#\(incarnation) (rota \(role.rawValue), pid \(pid))" }

    /// Its last log lines, for failure messages.
    var tail: String { state.lastLines.map { "    " + $0 }.joined(separator: "\n") }
}

/// A failure of the chaos harness itself (not a finding about Rota, which the checker reports):
/// a process that does not start, a server that does not come back, a pool that never converged
/// before the fault.
struct ChaosFailure: Error, CustomStringConvertible {
    enum Code: String, Sendable { case setup, process, redis }
    let code: Code
    let message: String
    let underlying: (any Error)?

    init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    var description: String { "\(code.rawValue): \(message)" + (underlying.map { " (\($0))" } ?? "") }
}
