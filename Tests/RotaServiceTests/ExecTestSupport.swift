import Foundation
import Logging
import Rota
import RotaService
import RotaTestSupport
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// Helpers shared by the handler tests (HandlerTests.swift, ExecBoundaryTests.swift).

func job(_ key: String, _ payload: [UInt8]) -> Job {
    Job(key: key, payload: payload, createdAt: Date(), isRequeued: false, dispatcherID: "dispatcher", workerID: "worker")
}

func json(_ text: String) -> [UInt8] { Array(text.utf8) }

/// Runs jobs the way a worker does: each one call of its runner's `run` in a task of its own,
/// after `validate` accepted it; a stop cancels that task and awaits it. Test code only: the
/// unstructured tasks here stand for the worker's child tasks.
final class JobHarness: Sendable {
    private struct Running {
        let task: Task<Void, any Error>
        let notifications: AsyncStream<[UInt8]>.Continuation
        let ended: EndFlag
    }

    private let validate: @Sendable (Job) throws -> Void
    private let run: @Sendable (Job, JobContext) async throws -> Void
    let stopGracePeriod: Duration
    let logger: Logger
    private let running = Mutex<[String: Running]>([:])

    /// A harness for a pool-level runner (the job's payload is what the runner gets).
    init(_ runner: some JobRunner, stopGracePeriod: Duration = .seconds(10), logger: Logger = Logger(label: "test")) {
        validate = { try runner.validate($0) }
        run = { try await runner.run($0, context: $1) }
        self.stopGracePeriod = stopGracePeriod
        self.logger = logger
    }

    /// A harness for a named runner, called as ``RegistryJobRunner`` calls it (payload = the
    /// envelope's content, here the whole job payload).
    init(named runner: some NamedJobRunner, stopGracePeriod: Duration = .seconds(10), logger: Logger = Logger(label: "test")) {
        validate = { try runner.validate(payload: $0.payload, job: $0) }
        run = { try await runner.run(payload: $0.payload, job: $0, context: $1) }
        self.stopGracePeriod = stopGracePeriod
        self.logger = logger
    }

    /// Validates the job and, if accepted, starts running it; throws what `validate` threw.
    func start(_ key: String, _ payload: [UInt8], worker: String = "worker") throws {
        let job = Job(key: key, payload: payload, createdAt: Date(), isRequeued: false, dispatcherID: "dispatcher", workerID: worker)
        try validate(job)
        let (notifications, continuation) = AsyncStream.makeStream(of: [UInt8].self)
        var jobLogger = logger
        jobLogger[metadataKey: "job"] = "\(key)"
        let context = JobContext(workerID: worker, stopGracePeriod: stopGracePeriod, notifications: notifications, logger: jobLogger)
        let run = self.run
        let ended = EndFlag()
        let task = Task {
            defer {
                continuation.finish()
                ended.set()
            }
            try await run(job, context)
        }
        running.withLock { $0[key] = Running(task: task, notifications: continuation, ended: ended) }
    }

    func notify(_ key: String, _ payload: [UInt8]) {
        running.withLock { $0[key] }?.notifications.yield(payload)
    }

    /// Whether the job's call is still going.
    func isRunning(_ key: String) -> Bool {
        running.withLock { $0[key] }.map { !$0.ended.isSet } ?? false
    }

    /// Stops the job (cancels its task) and returns how its call ended; nil for an unknown key.
    @discardableResult
    func stop(_ key: String) async -> Result<Void, any Error>? {
        guard let job = running.withLock({ $0.removeValue(forKey: key) }) else { return nil }
        job.task.cancel()
        return await job.task.result
    }

    /// How a job's call ended by itself, waiting for it at most `timeout` (then a test failure).
    func outcome(_ key: String, timeout: Duration = .seconds(10)) async throws -> Result<Void, any Error> {
        guard let job = running.withLock({ $0[key] }) else { throw TestFailure("no job \(key)") }
        try await eventually("job \(key) ended by itself", timeout: timeout) { job.ended.isSet }
        running.withLock { _ = $0.removeValue(forKey: key) }
        return await job.task.result
    }

    /// Stops every job.
    func stopAll() async {
        for key in running.withLock({ Array($0.keys) }) { await stop(key) }
    }
}

/// Set once a job's call returned or threw.
private final class EndFlag: Sendable {
    private let ended = Mutex(false)
    var isSet: Bool { ended.withLock { $0 } }
    func set() { ended.withLock { $0 = true } }
}
/// The process no longer exists, not even as a zombie.
func isGone(_ pid: pid_t) -> Bool {
    kill(pid, 0) == -1 && errno == ESRCH
}

/// Dead: gone, or a zombie waiting for its (new) parent to reap it.
func isGoneOrZombie(_ pid: pid_t) -> Bool {
    if isGone(pid) { return true }
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = stat.lastIndex(of: ")")
    else { return true }
    return stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("Z")
}

/// Keeps every log message with its metadata (flattened to strings).
final class HandlerLogCapture: Sendable {
    struct Entry: Sendable {
        let level: Logger.Level
        let message: String
        let metadata: [String: String]
    }

    private let stored = Mutex<[Entry]>([])

    var entries: [Entry] { stored.withLock { $0 } }

    var logger: Logger {
        Logger(label: "test") { _ in Handler(capture: self) }
    }

    func append(_ entry: Entry) {
        stored.withLock { $0.append(entry) }
    }

    /// The output lines the exec handler logged for `job` on `stream`, in order.
    func lines(stream: String, job: String) -> [String] {
        entries.filter { $0.metadata["stream"] == stream && $0.metadata["job"] == job }.map(\.message)
    }

    struct Handler: LogHandler {
        let capture: HandlerLogCapture
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let merged = metadata.merging(event.metadata ?? [:]) { $1 }
            capture.append(Entry(level: event.level, message: "\(event.message)", metadata: merged.mapValues { "\($0)" }))
        }
    }
}

/// Runs `body` with an exec runner under `policy` (short back-offs), a harness running its jobs
/// and a log capture; always stops every job and child.
func withExecRunner(
    policy: ExecPolicy,
    stopGracePeriod: Duration = .seconds(10),
    _ body: (ExecJobRunner, JobHarness, HandlerLogCapture) async throws -> Void
) async throws {
    let logs = HandlerLogCapture()
    var options = ExecJobRunner.Options()
    options.restartBackoff = .milliseconds(20)
    options.maxRestartBackoff = .milliseconds(100)
    let exec = try ExecJobRunner(policy: policy, logger: logs.logger, options: options)
    let jobs = JobHarness(named: exec, stopGracePeriod: stopGracePeriod, logger: logs.logger)
    do {
        try await body(exec, jobs, logs)
    } catch {
        await jobs.stopAll()
        await exec.stopAll()
        throw error
    }
    await jobs.stopAll()
    await exec.stopAll()
}

/// Starts an exec job and waits for its first child to run: the child's pid. A job that ends
/// before is a test failure naming how it ended.
func startChild(_ jobs: JobHarness, _ exec: ExecJobRunner, _ key: String, _ payload: [UInt8]) async throws -> pid_t {
    try jobs.start(key, payload)
    var pid: pid_t?
    try await eventually("job \(key)'s child runs") {
        pid = exec.status(key: key)?.pid
        return pid != nil || !jobs.isRunning(key)
    }
    guard let pid else { throw TestFailure("job \(key) ended without a child: \(try await jobs.outcome(key))") }
    return pid
}

/// The text of a call's error, or "returned".
func describe(_ result: Result<Void, any Error>?) -> String {
    switch result {
    case .success?: "returned"
    case .failure(let error)?: "\(error)"
    case nil: "unknown job"
    }
}
