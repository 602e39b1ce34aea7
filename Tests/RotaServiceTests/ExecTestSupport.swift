import Foundation
import Logging
import Rota
import RotaService
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// Helpers shared by the handler tests (HandlerTests.swift, ExecBoundaryTests.swift).

func job(_ key: String, _ payload: [UInt8]) -> Job {
    Job(key: key, payload: payload, createdAt: Date(), isRequeued: false, dispatcherID: "dispatcher", workerID: "worker")
}

func json(_ text: String) -> [UInt8] { Array(text.utf8) }

/// Runs `body` with an exec handler under `policy` (short back-offs) and a log capture; always
/// stops every child.
func withExecHandler(
    policy: ExecPolicy,
    _ body: (ExecJobHandler, HandlerLogCapture) async throws -> Void
) async throws {
    let logs = HandlerLogCapture()
    var options = ExecJobHandler.Options()
    options.restartBackoff = .milliseconds(20)
    options.maxRestartBackoff = .milliseconds(100)
    let exec = try ExecJobHandler(policy: policy, logger: logs.logger, options: options)
    do {
        try await body(exec, logs)
    } catch {
        await exec.stopAll()
        throw error
    }
    await exec.stopAll()
}

/// The process no longer exists, not even as a zombie.
func isGone(_ pid: pid_t) -> Bool {
    kill(pid, 0) == -1 && errno == ESRCH
}

/// Dead: gone, or a zombie waiting for its (new) parent to reap it.
func isGoneOrZombie(_ pid: pid_t) -> Bool {
    if isGone(pid) { return true }
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = stat.lastIndex(of: ")")
    else { return true }
    return stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("Z")
}

/// Keeps every log message with its metadata (flattened to strings).
final class HandlerLogCapture: Sendable {
    struct Entry: Sendable {
        let level: Logger.Level
        let message: String
        let metadata: [String: String]
    }

    private let stored = Mutex<[Entry]>([])

    var entries: [Entry] { stored.withLock { $0 } }

    var logger: Logger {
        Logger(label: "test") { _ in Handler(capture: self) }
    }

    func append(_ entry: Entry) {
        stored.withLock { $0.append(entry) }
    }

    /// The output lines the exec handler logged for `job` on `stream`, in order.
    func lines(stream: String, job: String) -> [String] {
        entries.filter { $0.metadata["stream"] == stream && $0.metadata["job"] == job }.map(\.message)
    }

    struct Handler: LogHandler {
        let capture: HandlerLogCapture
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let merged = metadata.merging(event.metadata ?? [:]) { $1 }
            capture.append(Entry(level: event.level, message: "\(event.message)", metadata: merged.mapValues { "\($0)" }))
        }
    }
}
