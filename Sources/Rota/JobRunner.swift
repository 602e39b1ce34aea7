import Logging

/// A worker's jobs in structured form: running a job is one async call, a child task of its
/// worker, that lasts as long as the job.
///
/// ```swift
/// struct Greeter: JobRunner {
///     func run(_ job: Job, context: JobContext) async throws {
///         for await note in context.notifications { context.logger.info("\(note.count) bytes") }
///     }
/// }
/// let worker = try await node.addWorker(Greeter(), capabilities: ["greet"])
/// ```
///
/// - Stopping a job cancels its task; it has ``JobContext/stopGracePeriod`` to wind down.
/// - Returning ends the job (job log `finished`), throwing ends it with the error (`failed`);
///   either way it leaves the pool. After a stop, returning or throwing is the stop (`stopped`).
/// - Starts may repeat for a job that already runs (at-least-once delivery): the worker filters
///   exact repeats; a start with another payload ends the running copy first, then runs the new one.
public protocol JobRunner: Sendable {
    /// Checks a job before the worker accepts it: throwing fails the start (the dispatcher gets
    /// the error's text; a requeued start counts towards ``Node/Options/maxStartFailures``).
    /// Runs on the worker's event loop: keep it quick. The default accepts every job.
    func validate(_ job: Job) throws
    /// Runs `job` until it is done or cancelled (stopped).
    func run(_ job: Job, context: JobContext) async throws
}

extension JobRunner {
    public func validate(_ job: Job) throws {}
}

/// What a running job gets from its worker besides the job itself.
public struct JobContext: Sendable {
    /// The worker running the job.
    public let workerID: String
    /// How long the job may take to end once its task is cancelled; past it the stop is reported
    /// as failed (the job stays owned here) and its late end is recorded as the stop.
    public let stopGracePeriod: Duration
    /// Notifications sent to the job with ``Node/notify(key:payload:)``, in order. Finishes when
    /// the job ends.
    public let notifications: AsyncStream<[UInt8]>
    /// The worker's logger, with the job's key as metadata.
    public let logger: Logger

    public init(workerID: String, stopGracePeriod: Duration, notifications: AsyncStream<[UInt8]>, logger: Logger) {
        self.workerID = workerID
        self.stopGracePeriod = stopGracePeriod
        self.notifications = notifications
        self.logger = logger
    }
}

/// What a dispatch led to.
public enum DispatchOutcome: Sendable, Hashable {
    /// A worker's start handler ran (its `validate` accepted the job).
    case started
    /// No active worker has the capability the job requires: the job is held in the pool as
    /// unplaced (it exists: a second dispatch of the key is refused) and starts once a worker
    /// with `requirement` joins. A stop ends it.
    case unplaced(requirement: String)
}
