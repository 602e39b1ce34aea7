import Logging
import Metrics
import Synchronization

/// How a worker acts on its jobs, whatever shape the user's code has: the worker's event
/// handling, handoffs and stops go through this and nothing else.
protocol JobExecutor: Sendable {
    /// Returns once the job is started; throwing means the start failed (the dispatcher gets the
    /// error's text, ``PoolError/requeue`` asks for another delivery).
    func start(_ job: Job) async throws
    /// Throwing means the stop failed: the job keeps running and stays owned here.
    func stop(key: String) async throws
    func notify(key: String, payload: [UInt8]) async throws
    /// True when the job's run is over but its end is not recorded yet. A handoff leaves such a
    /// job to that record: moving it would run a job again that already ended.
    func hasEnded(key: String) -> Bool
}

/// Which executor a worker builds: the executor needs the worker's logger and job group, which
/// exist only once the worker does.
enum JobExecution: Sendable {
    case handler(any JobHandler)
    case runner(any JobRunner)

    func makeExecutor(workerID: String, logger: Logger, launches: AsyncStream<JobLaunch>.Continuation, stopGracePeriod: Duration) -> any JobExecutor {
        switch self {
        case .handler(let handler):
            return HandlerExecutor(handler: handler, logger: logger)
        case .runner(let runner):
            return RunnerExecutor(runner: runner, workerID: workerID, logger: logger, launches: launches, stopGracePeriod: stopGracePeriod)
        }
    }
}

/// A job for the worker's job group to run as a child task. `run` returns how the job ended when
/// the worker must record it, nil when a stop (or a newer run of the key) accounts for the end.
struct JobLaunch: Sendable {
    let key: String
    let run: @Sendable () async -> JobEnd?
}

/// A runner job's end that the worker records (under its `serial` lock).
struct JobEnd: Sendable {
    enum Kind: Sendable, Equatable {
        /// `run` returned.
        case finished
        /// `run` threw (the error's text).
        case failed(String)
        /// The run ended after every stop waiting for it had given up (the grace period passed).
        case stopped
    }

    let key: String
    let kind: Kind
    /// Takes the end for recording; false when a stop or a new start took the run meanwhile,
    /// which then accounts for it. Only one of them records a run's end.
    let claim: @Sendable () -> Bool
}

// MARK: Handlers

/// Today's pulse-shaped ``JobHandler``: start and stop are calls into the handler, which runs the
/// job wherever it likes.
struct HandlerExecutor: JobExecutor {
    let handler: any JobHandler
    let logger: Logger

    func start(_ job: Job) async throws { try await handler.start(job) }

    func stop(key: String) async throws { try await handler.stop(key: key) }

    func notify(key: String, payload: [UInt8]) async throws {
        guard let notifiable = handler as? any NotificationHandler else {
            logger.error(
                "worker does not implement NotificationHandler; ignoring the notification",
                metadata: ["job": "\(key)"]
            )
            return
        }
        try await notifiable.handleNotification(key: key, payload: payload)
    }

    /// A handler's jobs end only when they are stopped.
    func hasEnded(key: String) -> Bool { false }
}

// MARK: Runners

/// A ``JobRunner``'s jobs: each run is a child task of the worker's job group (``Worker/run()``),
/// a stop cancels just that run and waits for its end up to the grace period.
final class RunnerExecutor: JobExecutor {
    /// One run of a job. The signals are shared with its child task; the flags change only under
    /// the executor's lock, so a run's end is decided once: by its own end, or by a stop.
    private struct Run {
        let generation: UInt64
        let stopRequest = OneShotSignal()
        let end = OneShotSignal()
        let notifications: AsyncStream<[UInt8]>.Continuation
        var stopRequested = false
        var ended = false
        /// Stops waiting for the end: while there are any, they record the end, not the run.
        var stopWaiters = 0
    }

    private struct State {
        var runs: [String: Run] = [:]
        var generation: UInt64 = 0
    }

    let runner: any JobRunner
    let workerID: String
    let logger: Logger
    let launches: AsyncStream<JobLaunch>.Continuation
    let stopGracePeriod: Duration
    private let state = Mutex(State())
    private let dropped = Counter(label: "rota_notifications_dropped")

    /// Notifications a job has not read yet, at most: past it new ones are dropped (and counted),
    /// so a job that never reads its notifications cannot exhaust the worker's memory.
    static let notificationBuffer = 1024

    init(runner: any JobRunner, workerID: String, logger: Logger, launches: AsyncStream<JobLaunch>.Continuation, stopGracePeriod: Duration) {
        self.runner = runner
        self.workerID = workerID
        self.logger = logger
        self.launches = launches
        self.stopGracePeriod = stopGracePeriod
    }

    func start(_ job: Job) async throws {
        try runner.validate(job)
        if state.withLock({ $0.runs[job.key] != nil }) {
            // A new payload for a running key: one run per key, so the old one ends first.
            do {
                try await stop(key: job.key)
            } catch {
                throw PoolError(.startFailed, "job \(job.key): its previous run did not end: \((error as? PoolError)?.message ?? "\(error)")", underlying: error)
            }
        }
        let (notifications, continuation) = AsyncStream.makeStream(of: [UInt8].self, bufferingPolicy: .bufferingOldest(Self.notificationBuffer))
        let run = state.withLock { state -> Run in
            state.generation += 1
            let run = Run(generation: state.generation, notifications: continuation)
            state.runs[job.key] = run
            return run
        }
        var logger = logger
        logger[metadataKey: "job"] = "\(job.key)"
        let context = JobContext(workerID: workerID, stopGracePeriod: stopGracePeriod, notifications: notifications, logger: logger)
        let launch = JobLaunch(key: job.key) { [self] in await execute(job, run: run, context: context) }
        if case .terminated = launches.yield(launch) {
            state.withLock { state in
                if state.runs[job.key]?.generation == run.generation { state.runs.removeValue(forKey: job.key) }
            }
            continuation.finish()
            throw PoolError(.workerStopped, "worker stopped")
        }
    }

    /// The body of a run's child task: `run` races the stop request; a stop cancels it and the
    /// task then waits for `run` to end (the stop itself waits only the grace period).
    private func execute(_ job: Job, run: Run, context: JobContext) async -> JobEnd? {
        var outcome: Result<Void, any Error> = .success(())
        // Stopped before its task began: the job never runs.
        if !run.stopRequest.isFired {
            outcome = await withTaskGroup(of: Result<Void, any Error>?.self) { group in
                group.addTask { [runner] in
                    do {
                        try await runner.run(job, context: context)
                        return .success(())
                    } catch {
                        return .failure(error)
                    }
                }
                group.addTask {
                    await run.stopRequest.wait()
                    return nil
                }
                var outcome: Result<Void, any Error> = .success(())
                while let next = await group.next() {
                    // Either the run ended (the stop waiter goes) or the stop came (the run is
                    // cancelled, and its end awaited).
                    group.cancelAll()
                    if let next {
                        outcome = next
                        break
                    }
                }
                return outcome
            }
        }
        run.notifications.finish()
        let kind: JobEnd.Kind? = state.withLock { state in
            guard var current = state.runs[job.key], current.generation == run.generation else { return nil }
            current.ended = true
            state.runs[job.key] = current
            if !current.stopRequested {
                switch outcome {
                case .success: return .finished
                case .failure(let error): return .failed((error as? PoolError)?.message ?? "\(error)")
                }
            }
            return current.stopWaiters > 0 ? nil : .stopped
        }
        run.end.fire()
        // Cancelled from above without a stop: the node crashed (its run() was cancelled), and a
        // crash records nothing.
        guard let kind, !Task.isCancelled else { return nil }
        return JobEnd(key: job.key, kind: kind) { [self] in claim(job.key, generation: run.generation) }
    }

    private func claim(_ key: String, generation: UInt64) -> Bool {
        state.withLock { state in
            guard let run = state.runs[key], run.generation == generation, run.ended else { return false }
            state.runs.removeValue(forKey: key)
            return true
        }
    }

    /// Cancels the run and waits for its end up to the grace period; past it the stop fails (the
    /// run was cancelled all the same, and its late end is recorded as the stop). A run that
    /// already ended is taken by the stop: the stop records its end.
    func stop(key: String) async throws {
        let run = state.withLock { state -> Run? in
            guard var run = state.runs[key] else { return nil }
            if run.ended {
                state.runs.removeValue(forKey: key)
                return nil
            }
            run.stopRequested = true
            run.stopWaiters += 1
            state.runs[key] = run
            return run
        }
        guard let run else { return }
        run.stopRequest.fire()
        _ = await run.end.wait(for: stopGracePeriod)
        let ended = state.withLock { state -> Bool in
            // Another stop or a newer start took the run: it is over.
            guard var current = state.runs[key], current.generation == run.generation else { return true }
            if current.ended {
                state.runs.removeValue(forKey: key)
                return true
            }
            current.stopWaiters -= 1
            state.runs[key] = current
            return false
        }
        guard ended else {
            throw PoolError(.stopFailed, "job \(key) did not end within its stop grace period (\(stopGracePeriod)) after its task was cancelled")
        }
    }

    func notify(key: String, payload: [UInt8]) async throws {
        guard let run = state.withLock({ $0.runs[key] }), !run.ended else { return }
        if case .dropped = run.notifications.yield(payload) {
            dropped.increment()
            logger.warning(
                "dropping a notification: the job has not read the \(Self.notificationBuffer) before it",
                metadata: ["job": "\(key)"]
            )
        }
    }

    func hasEnded(key: String) -> Bool {
        state.withLock { $0.runs[key]?.ended ?? false }
    }
}

/// A one-shot event whose waits also end when the waiting task is cancelled (``Latch``'s do
/// not): a child task waiting for its job's stop request must not outlive the job.
final class OneShotSignal: Sendable {
    private struct State {
        var fired = false
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter = 0
    }

    private let state = Mutex(State())

    var isFired: Bool { state.withLock { $0.fired } }

    func fire() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            guard !state.fired else { return [] }
            state.fired = true
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once fired, or once the calling task is cancelled.
    func wait() async {
        let id = state.withLock { state in
            defer { state.nextWaiter += 1 }
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { state -> Bool in
                    if state.fired || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }

    /// Waits at most `duration`; → whether it fired.
    func wait(for duration: Duration) async -> Bool {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.wait() }
            group.addTask { try? await Task.sleep(for: duration) }
            await group.next()
            group.cancelAll()
        }
        return isFired
    }
}
