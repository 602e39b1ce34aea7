import Logging
import Rota

/// The built-in `log` handler: it runs nothing and logs what it is asked to do — starts (with the
/// payload as UTF-8 text, cut at 1 KiB), stops and notifications — at info level, with the job key
/// in the metadata. Useful to try plan files and to watch routing.
public struct LogJobHandler: NamedJobHandler {
    /// Payload bytes logged at most; longer payloads are cut (on a character boundary) and marked.
    public static let maxLoggedBytes = 1024

    private let logger: Logger

    public init(logger: Logger) {
        self.logger = logger
    }

    public func start(key: String, payload: [UInt8], job: Job) async throws {
        logger.info(
            "job started",
            metadata: [
                "job": "\(key)",
                "payload": "\(Self.text(payload))",
                "requeued": "\(job.isRequeued)",
                "worker": "\(job.workerID)",
                "dispatcher": "\(job.dispatcherID)",
            ]
        )
    }

    public func stop(key: String) async throws {
        var metadata: Logger.Metadata = ["job": "\(key)"]
        if let worker = HandlerContext.workerID { metadata["worker"] = "\(worker)" }
        logger.info("job stopped", metadata: metadata)
    }

    public func handleNotification(key: String, payload: [UInt8]) async throws {
        logger.info("job notified", metadata: ["job": "\(key)", "payload": "\(Self.text(payload))"])
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
