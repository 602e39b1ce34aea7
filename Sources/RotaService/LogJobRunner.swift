import Logging
import Rota

/// The built-in `log` runner: it runs nothing and logs what happens to its jobs — the start (with
/// the payload as UTF-8 text, cut at 1 KiB), each notification and the stop — at info level, with
/// the job key in the metadata. A job runs until it is stopped. Useful to try plan files and to
/// watch routing.
public struct LogJobRunner: NamedJobRunner {
    /// Payload bytes logged at most; longer payloads are cut (on a character boundary) and marked.
    public static let maxLoggedBytes = 1024

    private let logger: Logger

    public init(logger: Logger) {
        self.logger = logger
    }

    public func run(payload: [UInt8], job: Job, context: JobContext) async throws {
        logger.info(
            "job started",
            metadata: [
                "job": "\(job.key)",
                "payload": "\(Self.text(payload))",
                "requeued": "\(job.isRequeued)",
                "worker": "\(context.workerID)",
                "dispatcher": "\(job.dispatcherID)",
            ]
        )
        // The sequence ends when the task is cancelled (the stop) or the job ends.
        for await note in context.notifications {
            logger.info("job notified", metadata: ["job": "\(job.key)", "payload": "\(Self.text(note))", "worker": "\(context.workerID)"])
        }
        // A log job ends only when stopped: should the notifications end first, wait for the stop.
        await untilCancelled()
        logger.info("job stopped", metadata: ["job": "\(job.key)", "worker": "\(context.workerID)"])
    }

    /// `payload` as text: invalid UTF-8 is replaced, more than ``maxLoggedBytes`` bytes are cut at
    /// the last character boundary before the limit and followed by `…(N bytes)`.
    static func text(_ payload: [UInt8]) -> String {
        guard payload.count > maxLoggedBytes else { return String(decoding: payload, as: UTF8.self) }
        var end = maxLoggedBytes
        // Back up over continuation bytes (10xxxxxx) so a multi-byte character is not split.
        while end > 0, payload[end] & 0xC0 == 0x80 { end -= 1 }
        return String(decoding: payload[..<end], as: UTF8.self) + "…(\(payload.count) bytes)"
    }
}

/// Suspends until the current task is cancelled (at once if it already is).
func untilCancelled() async {
    _ = await OneShot<Void>().wait(cancellable: true)
}
