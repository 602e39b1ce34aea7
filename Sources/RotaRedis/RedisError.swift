/// The one error type of the Redis layer.
///
/// Callers match on ``code`` (`catch let e as RedisError where e.code == .timeout`) rather than on
/// the message, which is meant for people and may change.
public struct RedisError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, as an open set of codes: new codes can be added without breaking callers.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }

        /// The server answered with an error reply; ``RedisError/message`` is the server's text.
        public static let server = Code("server")
        /// The connection closed (or was never open) before the reply arrived.
        public static let connectionClosed = Code("connectionClosed")
        /// No reply within the command's timeout (including time spent waiting for a connection).
        public static let timeout = Code("timeout")
        /// The bytes received are not valid RESP, or a reply had an unexpected shape.
        public static let protocolError = Code("protocolError")
        /// A bad argument, URL or configuration value, detected before anything was sent.
        public static let invalidArgument = Code("invalidArgument")
        /// AUTH was refused: wrong user or password. The client does not retry these.
        public static let authenticationFailed = Code("authenticationFailed")
        /// The TLS handshake failed or the TLS session broke. Certificate failures (the server's
        /// certificate did not verify, or the server refused ours) are final: the client does not
        /// retry them. Others are retried like a refused connection.
        public static let tlsFailed = Code("tlsFailed")
        /// A reply exceeded ``RedisConfiguration/maxReplyBytes`` or
        /// ``RedisConfiguration/maxReplyElements``. Its command fails with this code; the
        /// connection is closed and reconnects, and commands in flight behind it fail with
        /// `.connectionClosed` (this error as their ``RedisError/underlying``).
        public static let replyTooLarge = Code("replyTooLarge")
    }

    public var code: Code
    public var message: String
    /// The lower-level error this one wraps, when there is one (an I/O error, for instance).
    public var underlying: (any Error)?

    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    /// For server errors: the first word of the server's message (`ERR`, `NOSCRIPT`, `NOGROUP`, `WRONGTYPE`…).
    public var serverErrorPrefix: Substring? {
        guard code == .server else { return nil }
        return message.split(separator: " ", maxSplits: 1).first
    }

    public var description: String {
        var text = "Redis \(code): \(message)"
        if let underlying { text += " (\(underlying))" }
        return text
    }
}
