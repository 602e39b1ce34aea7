/// The error of the pool layer: nodes, workers, dispatch.
///
/// Match on ``code``: `catch let error as PoolError where error.code == .jobExists`.
public struct PoolError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }

        /// The job is already running in the pool, or another dispatch of it is in progress.
        public static let jobExists = Code("jobExists")
        /// The node was closed (or the pool shut down): it no longer dispatches or hosts workers.
        public static let closed = Code("closed")
        /// The operation needs a routing node; this one was created client-only.
        public static let clientOnly = Code("clientOnly")
        /// The pool is shutting down: joining it is refused.
        public static let shuttingDown = Code("shuttingDown")
        /// A job key is empty or contains `=`, or a pool name is invalid.
        public static let invalidArgument = Code("invalidArgument")
        /// The pending-dispatch guard of the key holds something other than a timestamp. It is left
        /// alone (never treated as stale): someone must look at it.
        public static let malformedPendingGuard = Code("malformedPendingGuard")
        /// No worker confirmed the start within the dispatch timeout (twice the ack grace period).
        /// The job may still start later.
        public static let timeout = Code("timeout")
        /// The worker's start handler failed; ``message`` is its error's text.
        public static let startFailed = Code("startFailed")
        /// The worker's stop handler failed, or a ``JobRunner`` job outlived its stop grace period
        /// (``Node/stopAndWait(key:origin:)``); the job keeps running and stays owned. ``message``
        /// is the error text.
        public static let stopFailed = Code("stopFailed")
        /// The job reached a worker that is stopping.
        public static let workerStopped = Code("workerStopped")
        /// Thrown by a handler to ask for the event to be delivered again later (maybe elsewhere).
        public static let requeue = Code("requeue")
        /// The node is not running yet (``Node/run()`` has not joined the pool).
        public static let notRunning = Code("notRunning")
        /// A payload is larger than ``Node/Options/maxPayloadBytes``.
        public static let payloadTooLarge = Code("payloadTooLarge")
        /// A fresh dispatch found the pool at ``Node/Options/maxJobs`` jobs (running or being
        /// dispatched); nothing was started. Requeues and handoffs of existing jobs are never refused.
        public static let tooManyJobs = Code("tooManyJobs")
        /// Thrown by ``JobProducer/plan(for:)`` to end its schedule on every node.
        public static let scheduleStop = Code("scheduleStop")
        /// Redis failed or refused an operation; ``underlying`` holds the cause.
        public static let redis = Code("redis")
    }

    public var code: Code
    public var message: String
    public var underlying: (any Error)?

    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    /// Throw this from ``JobHandler/start(_:)``, ``JobHandler/stop(key:)`` or
    /// ``NotificationHandler/handleNotification(key:payload:)`` to have the event delivered again
    /// after the ack grace period instead of acknowledged.
    public static var requeue: PoolError { PoolError(.requeue, "requeue") }

    /// Throw this from ``JobProducer/plan(for:)`` to end the schedule on every node.
    public static var scheduleStop: PoolError { PoolError(.scheduleStop, "stop") }

    public var description: String {
        var text = "pool \(code): \(message)"
        if let underlying { text += " (\(underlying))" }
        return text
    }
}
