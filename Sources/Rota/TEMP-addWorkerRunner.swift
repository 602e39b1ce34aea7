// TEMPORARY SHIM — DELETE AT MERGE (B3/7).
//
// Stands in for the pool's own `Node.addWorker(_ runner: some JobRunner, capabilities:)`, which
// lands on another branch with the structured job API. It only exists so that the service, the
// CLI and the example worker (branch b3-v), written against that overload, build and run before
// the merge. It adapts a runner to the start/stop `JobHandler` API with one unstructured task per
// job — exactly what the real implementation does not do — and it cannot tell the pool that a job
// returned or threw by itself (no `finished`/`failed` job log entry: the job stays owned until it
// is stopped). Nothing else may depend on it.
import Logging
import Synchronization

extension Node {
    /// TEMPORARY (see the top of this file): adds a worker running jobs with `runner`.
    public func addWorker(_ runner: some JobRunner, capabilities: Set<String> = []) async throws -> Worker {
        try await addWorker(
            TemporaryRunnerHandler(runner: runner, stopGracePeriod: options.jobStopGracePeriod, logger: logger), capabilities: capabilities
        )
    }
}

/// TEMPORARY (see the top of this file).
final class TemporaryRunnerHandler<Runner: JobRunner>: NotificationHandler {
    private struct Running {
        let payload: [UInt8]
        let task: Task<Void, Never>
        let notifications: AsyncStream<[UInt8]>.Continuation
    }

    private let runner: Runner
    private let stopGracePeriod: Duration
    private let logger: Logger
    private let running = Mutex<[String: Running]>([:])

    init(runner: Runner, stopGracePeriod: Duration, logger: Logger) {
        self.runner = runner
        self.stopGracePeriod = stopGracePeriod
        self.logger = logger
    }

    func start(_ job: Job) async throws {
        if let current = running.withLock({ $0[job.key] }) {
            if current.payload == job.payload { return }
            try await stop(key: job.key)
        }
        try runner.validate(job)
        let (notifications, continuation) = AsyncStream.makeStream(of: [UInt8].self)
        var jobLogger = logger
        jobLogger[metadataKey: "job"] = "\(job.key)"
        let context = JobContext(workerID: job.workerID, stopGracePeriod: stopGracePeriod, notifications: notifications, logger: jobLogger)
        let runner = self.runner
        let task = Task {
            do {
                try await runner.run(job, context: context)
            } catch {
                jobLogger.warning("job ended with an error (temporary shim: not reported to the pool)", metadata: ["error": "\(error)"])
            }
            continuation.finish()
        }
        running.withLock { $0[job.key] = Running(payload: job.payload, task: task, notifications: continuation) }
    }

    func stop(key: String) async throws {
        guard let current = running.withLock({ $0.removeValue(forKey: key) }) else { return }
        current.task.cancel()
        await current.task.value
    }

    func handleNotification(key: String, payload: [UInt8]) async throws {
        running.withLock { $0[key] }?.notifications.yield(payload)
    }
}
