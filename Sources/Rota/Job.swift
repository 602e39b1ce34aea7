import Foundation

/// A long-running job as a worker sees it.
public struct Job: Sendable, Hashable {
    /// Unique in the pool: at most one job per key runs at a time.
    public let key: String
    public let payload: [UInt8]
    /// When the job was first dispatched (kept across requeues and handoffs).
    public let createdAt: Date
    /// True when this start is a handoff or recovery of a job that already ran somewhere.
    public let isRequeued: Bool
    /// The node that dispatched (or last requeued) the job.
    public let dispatcherID: String
    /// The worker running it.
    public let workerID: String
    /// The capability a worker must have to run the job (see ``Node/addWorker(_:capabilities:)``);
    /// nil: any worker.
    public let requirement: String?

    public init(
        key: String, payload: [UInt8], createdAt: Date, isRequeued: Bool, dispatcherID: String, workerID: String,
        requirement: String? = nil
    ) {
        self.requirement = requirement
        self.key = key
        self.payload = payload
        self.createdAt = createdAt
        self.isRequeued = isRequeued
        self.dispatcherID = dispatcherID
        self.workerID = workerID
    }
}

/// What a worker does with jobs. Start should return quickly (spawn the long-running work and
/// return): a start slower than the ack grace period gets the job delivered again.
///
/// Starts may repeat for a job that already runs (at-least-once delivery); the worker filters the
/// exact repeats it can see, but handlers should still be idempotent.
public protocol JobHandler: Sendable {
    /// Starts the job. Throwing fails the dispatch with the error's text; throwing
    /// ``PoolError/requeue`` asks for another attempt later.
    func start(_ job: Job) async throws
    /// Stops the job. Throwing leaves it running and owned by this worker.
    func stop(key: String) async throws
}

/// A handler that also accepts notifications sent to its jobs with ``Node/notify(key:payload:)``.
public protocol NotificationHandler: JobHandler {
    func handleNotification(key: String, payload: [UInt8]) async throws
}

/// A worker as listed in the pool's registry.
public struct WorkerInfo: Sendable, Hashable {
    public let id: String
    public let createdAt: Date
}
