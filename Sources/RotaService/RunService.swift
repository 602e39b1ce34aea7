import Foundation
import Logging
import Metrics
import Rota
import RotaPlans
import RotaRedis
import RotaStore
import ServiceLifecycle
import Synchronization
import UnixSignals

/// `rota run`: plan files → store → one schedule per producer on the pool (each round planned by
/// one node per tick), embedded workers, and the pool's history recorded in this node's SQLite.
public final class RunService: Service, Sendable {
    public struct Configuration: Sendable {
        /// Plan files, or directories of `*.yaml` files.
        public var planPaths: [String]
        public var databasePath: String
        /// The pool this node serves; producers of plan files naming another pool are ignored.
        public var pool: String
        /// Embedded workers (0: plan only).
        public var workers: Int
        /// The handler of each embedded worker.
        public var makeHandler: @Sendable () -> any JobHandler
        public var nodeOptions: Node.Options
        /// How often plan files are checked for changes (SIGHUP reloads at once).
        public var reloadInterval: Duration
        public var logger: Logger

        public init(planPaths: [String], databasePath: String, pool: String, workers: Int,
                    makeHandler: @escaping @Sendable () -> any JobHandler, nodeOptions: Node.Options = Node.Options(),
                    reloadInterval: Duration = .seconds(2), logger: Logger) {
            self.planPaths = planPaths
            self.databasePath = databasePath
            self.pool = pool
            self.workers = workers
            self.makeHandler = makeHandler
            self.nodeOptions = nodeOptions
            self.reloadInterval = reloadInterval
            self.logger = logger
        }
    }

    public let configuration: Configuration
    public let node: Node
    let client: RedisClient
    let logger: Logger
    let spawner: (stream: AsyncStream<@Sendable () async -> Void>, continuation: AsyncStream<@Sendable () async -> Void>.Continuation)
    let readyLatch = ReadyLatch()

    private struct Scheduled {
        let planner: ProducerPlanner
        let schedule: Schedule
    }

    private struct State {
        var schedules: [String: Scheduled] = [:]
        var filesSignature = ""
        var store: PlanStore?
        var history: RoundLog?
    }

    private let state = Mutex(State())

    public init(configuration: Configuration, client: RedisClient) throws {
        self.configuration = configuration
        self.client = client
        var nodeOptions = configuration.nodeOptions
        nodeOptions.logger = configuration.logger
        self.node = try Node(pool: configuration.pool, client: client, options: nodeOptions)
        var logger = configuration.logger
        logger[metadataKey: "node"] = "\(node.id)"
        self.logger = logger
        spawner = AsyncStream.makeStream(of: (@Sendable () async -> Void).self)
    }

    /// Returns once the node joined, the workers run and every producer is scheduled.
    public func waitUntilReady() async throws { try await readyLatch.wait() }

    public func run() async throws {
        let store = try PlanStore.open(path: configuration.databasePath)
        let history = try RoundLog(store: store, keySpace: try RedisKeySpace(configuration.pool), client: client, logger: logger)
        state.withLock {
            $0.store = store
            $0.history = history
        }
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { try await self.node.run() }
            group.addTask {
                do {
                    try await self.start(store: store, history: history)
                    self.readyLatch.open(nil)
                } catch {
                    self.readyLatch.open(error)
                    self.spawner.continuation.finish()
                    throw error
                }
            }
            group.addTask {
                // Graceful shutdown: planning stops, then the node hands its jobs over and leaves.
                try? await gracefulShutdown()
                guard !Task.isCancelled else { return }
                self.logger.info("shutting down: closing schedules and handing jobs over")
                for scheduled in self.state.withLock({ Array($0.schedules.values) }) { await scheduled.schedule.close() }
                try? await self.node.close()
                self.spawner.continuation.finish()
            }
            for await task in spawner.stream { group.addTask { await task() } }
            group.cancelAll()
        }
    }

    private func start(store: PlanStore, history: RoundLog) async throws {
        // Joined first: a Redis that refuses us (wrong password, ACL) fails the run before the
        // plan files change anything in the store.
        try await node.waitUntilReady()
        do {
            try loadPlans(into: store)
        } catch {
            // Plans stored by an earlier run keep running; with none, there is nothing to run.
            guard try !store.producers(pool: configuration.pool).filter({ $0.retiredAt == nil }).isEmpty else {
                let cause = (error as? ServiceError)?.underlying ?? error
                throw ServiceError(.invalidArgument, "plan files are invalid (and no plans of pool \(configuration.pool) are stored to fall back on):\n\(cause)", underlying: cause)
            }
            logger.error("plan files are invalid; running the definitions stored by an earlier run", metadata: ["error": "\(error)"])
        }
        for _ in 0..<configuration.workers {
            _ = try await node.addWorker(configuration.makeHandler())
        }
        spawner.continuation.yield { await history.replicate(into: store) }
        // Before planning: what an earlier run of this node left unpublished goes out first.
        await history.publishPending(pool: configuration.pool, closingInterrupted: true)
        spawner.continuation.yield { [configuration] in
            while !Task.isCancelled {
                do { try await Task.sleep(for: .seconds(5)) } catch { return }
                await history.publishPending(pool: configuration.pool, closingInterrupted: false)
            }
        }
        try await syncSchedules(store: store, history: history)
        let producers = state.withLock { $0.schedules.keys.sorted() }
        logger.info("rota run ready", metadata: [
            "pool": "\(configuration.pool)", "workers": "\(configuration.workers)",
            "producers": "\(producers.joined(separator: ","))", "database": "\(configuration.databasePath)",
        ])
        spawner.continuation.yield { await self.reloadLoop(store: store, history: history) }
    }

    // MARK: Plans

    /// Validates and stores the plan files. A file that fails validation changes nothing: the last
    /// good definitions keep running.
    @discardableResult
    func loadPlans(into store: PlanStore) throws -> Bool {
        let signature = filesSignature()
        let files: [PlanFile]
        do {
            files = try PlanParser.load(paths: configuration.planPaths, defaultPool: configuration.pool)
        } catch {
            state.withLock { $0.filesSignature = signature }
            throw ServiceError(.invalidArgument, "plan files are invalid; keeping the last good plans:\n\(error)", underlying: error)
        }
        let applied = try store.apply(files, defaultPool: configuration.pool, actor: "rota run \(node.id)")
        state.withLock { $0.filesSignature = signature }
        for producer in applied where producer.pool == configuration.pool && producer.outcome != .unchanged {
            logger.info("plan \(producer.outcome.rawValue)", metadata: ["producer": "\(producer.name)", "revision": "\(producer.revision)"])
        }
        return true
    }

    /// Paths, sizes and modification times of the plan files: a cheap change detector.
    private func filesSignature() -> String {
        var parts: [String] = []
        let manager = FileManager.default
        for path in configuration.planPaths {
            var isDirectory: ObjCBool = false
            guard manager.fileExists(atPath: path, isDirectory: &isDirectory) else {
                parts.append("\(path):missing")
                continue
            }
            let files = isDirectory.boolValue
                ? ((try? manager.contentsOfDirectory(atPath: path)) ?? []).filter { $0.hasSuffix(".yaml") || $0.hasSuffix(".yml") }.sorted().map { path + "/" + $0 }
                : [path]
            for file in files {
                let attributes = try? manager.attributesOfItem(atPath: file)
                let size = (attributes?[.size] as? NSNumber)?.intValue ?? -1
                let modified = (attributes?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
                parts.append("\(file):\(size):\(modified)")
            }
        }
        return parts.joined(separator: "|")
    }

    private func reloadLoop(store: PlanStore, history: RoundLog) async {
        await withTaskGroup(of: Void.self) { group in
            let (requests, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
            group.addTask {
                for await _ in await UnixSignalsSequence(trapping: .sighup) {
                    self.logger.info("SIGHUP: reloading plan files")
                    continuation.yield()
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: self.configuration.reloadInterval)
                    if self.filesSignature() != self.state.withLock({ $0.filesSignature }) { continuation.yield() }
                }
            }
            for await _ in requests {
                if node.isClosed { break }
                do {
                    try loadPlans(into: store)
                    try await syncSchedules(store: store, history: history)
                } catch {
                    logger.error("plan reload failed", metadata: ["error": "\(error)"])
                }
            }
            group.cancelAll()
        }
    }

    /// Schedules new producers, updates changed ones and closes retired ones.
    private func syncSchedules(store: PlanStore, history: RoundLog) async throws {
        let current = try store.producers(pool: configuration.pool).filter { $0.retiredAt == nil }
        var wanted: [String: (ProducerDefinition, Int)] = [:]
        for revision in current {
            do {
                wanted[revision.name] = (try ProducerDefinition(canonicalJSON: revision.definition), revision.revision)
            } catch {
                logger.error("stored definition unreadable; producer not scheduled", metadata: ["producer": "\(revision.name)", "error": "\(error)"])
            }
        }
        let existing = state.withLock { $0.schedules }
        for (name, scheduled) in existing where wanted[name] == nil {
            logger.info("producer retired: no longer planned by this node", metadata: ["producer": "\(name)"])
            await scheduled.schedule.close()
            state.withLock { _ = $0.schedules.removeValue(forKey: name) }
        }
        for (name, (definition, revision)) in wanted.sorted(by: { $0.key < $1.key }) {
            if let scheduled = existing[name] {
                guard scheduled.planner.revision != revision else { continue }
                if scheduled.planner.interval == definition.interval {
                    scheduled.planner.update(definition, revision: revision)
                    continue
                }
                await scheduled.schedule.close()
            }
            let planner = ProducerPlanner(definition: definition, revision: revision, pool: configuration.pool, node: node, history: history)
            let schedule = try await node.schedule(planner, interval: definition.interval)
            state.withLock { $0.schedules[name] = Scheduled(planner: planner, schedule: schedule) }
            spawner.continuation.yield { await self.follow(schedule, planner: planner) }
        }
    }

    /// One log line per round this node planned, and its outcome in the history.
    private func follow(_ schedule: Schedule, planner: ProducerPlanner) async {
        for await event in schedule.events {
            switch event {
            case .applied(let report):
                guard let round = await planner.finish(report) else { continue }
                let duration = (round.finishedAt ?? Date()).timeIntervalSince(round.startedAt)
                let dimensions = [("producer", round.producer)]
                Counter(label: "rota_rounds", dimensions: dimensions).increment()
                Metrics.Timer(label: "rota_round_duration", dimensions: dimensions).recordNanoseconds(Int64(duration * 1e9))
                Counter(label: "rota_jobs_started", dimensions: dimensions).increment(by: round.started)
                Counter(label: "rota_jobs_stopped", dimensions: dimensions).increment(by: round.stopped)
                Counter(label: "rota_jobs_failed", dimensions: dimensions).increment(by: round.failed)
                logger.info("round", metadata: [
                    "producer": "\(round.producer)", "round": "\(round.roundID)", "revision": "\(round.revision)",
                    "started": "\(round.started)", "stopped": "\(round.stopped)", "failed": "\(round.failed)",
                    "duration_ms": "\(Int(duration * 1000))",
                ])
            case .planFailed(let tick, let error):
                logger.error("round failed to plan", metadata: ["producer": "\(planner.name)", "tick": "\(tick.token)", "error": "\(error)"])
            case .ended:
                break
            }
        }
    }
}

/// A one-shot readiness signal carrying an optional failure.
final class ReadyLatch: Sendable {
    private let state = Mutex<(done: Bool, error: (any Error)?, waiters: [CheckedContinuation<Void, any Error>])>((false, nil, []))

    func open(_ error: (any Error)?) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, any Error>] in
            guard !state.done else { return [] }
            state.done = true
            state.error = error
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters {
            if let error { waiter.resume(throwing: error) } else { waiter.resume() }
        }
    }

    func wait() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let now = state.withLock { state -> Result<Void, any Error>? in
                guard state.done else {
                    state.waiters.append(continuation)
                    return nil
                }
                if let error = state.error { return .failure(error) }
                return .success(())
            }
            if let now { continuation.resume(with: now) }
        }
    }
}
