import NIOCore

/// A task executor that runs Swift tasks on one NIO event loop.
///
/// A task that does round trip after round trip on one connection spends most of its overhead on
/// getting back to where the reply is: each reply is read on the connection's event loop, and the
/// awaiting task resumes elsewhere (a cooperative-pool thread, woken by a futex) or, with NIO's event
/// loops installed as the global executor, on the loop but as the loop's *serial* executor, so every
/// nonisolated `async` call boundary after it hops through the loop's queue again.
///
/// Under `withTaskExecutorPreference(connection.taskExecutor)` the reply resumes the task on the
/// loop that read it, as plain nonisolated code: no thread switch, no hop at call boundaries, and
/// the next command is written straight from the task (``RedisConnection`` writes at once when
/// called on its loop with nothing queued). The same holds for child tasks, which inherit the
/// preference. Actor-isolated code still runs on its actor.
///
/// The preferred code runs on the event loop thread, alongside every channel of that loop: keep it
/// to I/O and light work, since anything slow or blocking there delays those channels too.
///
/// ```swift
/// try await client.withDedicatedConnection { connection in
///     try await withTaskExecutorPreference(connection.taskExecutor) {
///         for key in keys { _ = try await connection.send(RedisCommand("GET", key)) }
///     }
/// }
/// ```
///
/// The event loop must outlive the tasks that prefer it: a job handed to a loop that has shut down
/// is never run (NIO drops it), so its task would never resume.
public final class EventLoopTaskExecutor: TaskExecutor {
    /// The loop the tasks run on.
    public let eventLoop: any EventLoop

    /// An executor for `eventLoop`; creating one does no I/O.
    public init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        // As a task executor, not the loop's serial executor: the job then runs as generic
        // (nonisolated) code and its later calls need no hop back to the loop's queue.
        eventLoop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
