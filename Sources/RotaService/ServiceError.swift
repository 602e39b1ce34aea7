/// The error of the service layer: job runners (handlers), plans, history, the `rota` service commands.
///
/// Match on ``code``: `catch let error as ServiceError where error.code == .unknownHandler`.
///
/// Its ``description`` is the ``message`` alone (followed by the underlying error's text when the
/// message does not already contain it): a handler's start error travels to the dispatcher and
/// into the history as that text, so it reads as a sentence rather than as a code.
public struct ServiceError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }

        /// A job's envelope names a handler this worker does not have.
        public static let unknownHandler = Code("unknownHandler")
        /// A job's payload is not what its handler accepts: not a job envelope, malformed JSON for
        /// `exec`, a missing or ill-typed field.
        public static let invalidPayload = Code("invalidPayload")
        /// `exec` refused a command: it matches none of the worker's allow-list patterns, or the job
        /// sets an environment variable that changes which code a program loads.
        public static let execNotAllowed = Code("execNotAllowed")
        /// `exec` could not run an allowed command: not found, not executable, spawn failure.
        public static let execFailed = Code("execFailed")
        /// An `exec` job's program ended with a failure (a non-zero exit code, a signal) and its
        /// restart policy ended the job: the job failed with that status.
        public static let execExited = Code("execExited")
        /// A caller passed something invalid: a handler name, a duplicate registration, an
        /// allow-list pattern that is not an absolute path.
        public static let invalidArgument = Code("invalidArgument")
        /// Redis failed or refused an operation of the service (the pool's plan, its history).
        public static let redis = Code("redis")
        /// A node's SQLite history could not be read (the ``RotaStore/StoreError`` is the underlying error).
        public static let history = Code("history")
    }

    public var code: Code
    public var message: String
    public var underlying: (any Error)?

    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String {
        guard let underlying else { return message }
        let cause = "\(underlying)"
        return message.contains(cause) ? message : "\(message): \(cause)"
    }
}
