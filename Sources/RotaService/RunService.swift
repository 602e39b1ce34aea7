import Foundation
import Logging
import Metrics
import Rota
import RotaPlans
import RotaRedis
import RotaStore
import RotaStreams
import ServiceLifecycle
import Synchronization
import UnixSignals

/// `rota run`: follows the pool's plan (in Redis, the same for every node), schedules each of its
/// producers on the pool (each round planned by one node per tick), hosts embedded workers, and
/// records the pool's history and plan changes in this node's SQLite. With plan files it also
/// writes them to the pool's plan when they change, under the drift policy of ``applyFiles()``.
public final class RunService: Service, Sendable {
    public struct Configuration: Sendable {
        /// Plan files, or directories of `*.yaml` files; empty: follow the pool's plan only.
        public var planPaths: [String]
        public var databasePath: String
        /// The pool this node serves; producers of plan files naming another pool are ignored.
        public var pool: String
        /// Embedded workers (0: plan only).
        public var workers: Int
        /// The named runners of the embedded workers (through a ``RegistryJobRunner``); each worker
        /// declares their names as its capabilities.
        public var registry: HandlerRegistry
        public var nodeOptions: Node.Options
        /// How often plan files are checked for changes (SIGHUP reloads at once).
        public var reloadInterval: Duration
        /// How often the pool's plan is read again even without a change log entry (a safety net:
        /// changes arrive through the change log within milliseconds).
        public var planCheckInterval: Duration
        /// The pool's history key: this node signs the rounds it publishes on the history stream
        /// and records only entries signed with it. Nil: the stream is unauthenticated (anyone who
        /// can write to it can put rounds in every node's history).
        public var historyKey: HistoryKey?
        public var logger: Logger

        public init(planPaths: [String], databasePath: String, pool: String, workers: Int,
                    registry: HandlerRegistry, nodeOptions: Node.Options = Node.Options(),
                    reloadInterval: Duration = .milliseconds(500), planCheckInterval: Duration = .seconds(10), logger: Logger) {
            self.planPaths = planPaths
            self.databasePath = databasePath
            self.pool = pool
            self.workers = workers
            self.registry = registry
            self.nodeOptions = nodeOptions
            self.reloadInterval = reloadInterval
            self.planCheckInterval = planCheckInterval
            self.logger = logger
        }
    }

    public let configuration: Configuration
    public let node: Node
    let client: RedisClient
    let plan: PoolPlan
    let logger: Logger
    let spawner: (stream: AsyncStream<@Sendable () async -> Void>, continuation: AsyncStream<@Sendable () async -> Void>.Continuation)
    let readyLatch = ReadyLatch()
    /// Why the plan is looked at again: this node's files changed, or the pool's plan did.
    enum Reload { case files, pool }
    let reloads = AsyncStream.makeStream(of: Reload.self, bufferingPolicy: .bufferingNewest(4))

    private struct Scheduled {
        let planner: ProducerPlanner
        let schedule: Schedule
        let interval: Duration
    }

    private struct State {
        var schedules: [String: Scheduled] = [:]
        var filesSignature = ""
        /// The pool revision this node last compared its files with: an edit of its files is
        /// written as a compare-and-set against it.
        var lastSeenRevision: Int?
        var drift: PlanDrift?
        /// Unreadable plan entries already logged.
        var loggedSkips: Set<String> = []
        /// The plan revision whose definitions are recorded in SQLite.
        var recordedRevision: Int?
        /// The plan files as last parsed, by their signature.
        var parsedFiles: (signature: String, updates: [PoolPlan.Update], digest: String)?
        /// Producers' intervals by content hash: a definition is parsed once, not at every re-read.
        var intervals: [String: Duration] = [:]
    }

    private let state = Mutex(State())

    public init(configuration: Configuration, client: RedisClient) throws {
        self.configuration = configuration
        self.client = client
        var nodeOptions = configuration.nodeOptions
        nodeOptions.logger = configuration.logger
        self.node = try Node(pool: configuration.pool, client: client, options: nodeOptions)
        self.plan = try PoolPlan(pool: configuration.pool, client: client)
        var logger = configuration.logger
        logger[metadataKey: "node"] = "\(node.id)"
        self.logger = logger
        spawner = AsyncStream.makeStream(of: (@Sendable () async -> Void).self)
    }

    /// Who this node is in the plan's change log and drift reports.
    var actor: String { "rota run \(configuration.nodeOptions.name)" }

    /// Returns once the node joined, the workers run and every producer is scheduled.
    public func waitUntilReady() async throws { try await readyLatch.wait() }

    /// Whether ``waitUntilReady()`` would return now without an error: the node joined, the
    /// workers run and the plan is loaded (every producer scheduled). A readiness probe's question.
    public var isReady: Bool { readyLatch.isOpenWithoutError }

    public func run() async throws {
        // One rota run per database: a second one would close the first's rounds as interrupted.
        let lock = try DatabaseLock.acquire(forDatabase: configuration.databasePath)
        defer { withExtendedLifetime(lock) {} }
        let store = try PlanStore.open(path: configuration.databasePath)
        let history = try RoundLog(store: store, plan: plan, key: configuration.historyKey, logger: logger)
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
                if self.state.withLock({ $0.drift }) != nil { try? await self.plan.setDrift(nil, node: self.node.id) }
                try? await self.node.close()
                self.spawner.continuation.finish()
            }
            for await task in spawner.stream { group.addTask { await task() } }
            group.cancelAll()
        }
    }

    private func start(store: PlanStore, history: RoundLog) async throws {
        // Joined first: a Redis that refuses us (wrong password, ACL) fails the run before the
        // plan files change anything.
        try await node.waitUntilReady()
        state.withLock { $0.lastSeenRevision = nil }
        if !configuration.planPaths.isEmpty {
            do {
                try await applyFiles(store: store)
            } catch let error as ServiceError where error.code == .invalidArgument {
                // The pool's plan keeps running; with none, there is nothing to run.
                guard try await !plan.read().producers.isEmpty else {
                    let cause = error.underlying ?? error
                    throw ServiceError(.invalidArgument, "plan files are invalid (and pool \(configuration.pool) has no plan to follow):\n\(cause)",
                        underlying: cause)
                }
                logger.error("plan files are invalid; following the pool's plan", metadata: ["error": "\(error)"])
            }
        }
        // Each worker declares the handlers it has: the planner's jobs require theirs, so a job
        // whose handler no worker has waits in the pool (unplaced) instead of failing its start.
        let runner = RegistryJobRunner(registry: configuration.registry)
        for _ in 0..<configuration.workers {
            _ = try await node.addWorker(runner, capabilities: runner.capabilities)
        }
        spawner.continuation.yield { await history.replicate(into: store) }
        spawner.continuation.yield { [node, logger] in await JobLogRecorder(node: node, store: store, logger: logger).run() }
        // Before planning: what an earlier run of this node left unpublished goes out first.
        await history.publishPending(pool: configuration.pool, closingInterrupted: true)
        spawner.continuation.yield { [configuration] in
            while !Task.isCancelled {
                do { try await Task.sleep(for: .seconds(5)) } catch { return }
                await history.publishPending(pool: configuration.pool, closingInterrupted: false)
            }
        }
        spawner.continuation.yield { await self.followPlanLog(store: store) }
        try await syncSchedules(history: history)
        let producers = state.withLock { $0.schedules.keys.sorted() }
        logger.info("rota run ready", metadata: [
            "pool": "\(configuration.pool)", "workers": "\(configuration.workers)",
            "capabilities": "\(configuration.registry.names.joined(separator: ","))",
            "producers": "\(producers.joined(separator: ","))", "database": "\(configuration.databasePath)",
            // The key's ID, never the key: nodes of one pool must show the same.
            "history_key": "\(configuration.historyKey?.id ?? "none")",
        ])
        spawner.continuation.yield { await self.reloadLoop(store: store, history: history) }
    }

    // MARK: Plan files → the pool's plan

    /// The producers of the plan files for this pool and their digest, parsed again only when
    /// the files changed (every change of the pool's plan compares them with it). Throws
    /// `.invalidArgument` for invalid files.
    private func loadFiles() throws -> (updates: [PoolPlan.Update], digest: String) {
        let signature = filesSignature()
        if let cached = state.withLock({ $0.parsedFiles }), cached.signature == signature { return (cached.updates, cached.digest) }
        defer { state.withLock { $0.filesSignature = signature } }
        let files: [PlanFile]
        do {
            files = try PlanParser.load(paths: configuration.planPaths, defaultPool: configuration.pool)
        } catch {
            state.withLock { $0.parsedFiles = nil }
            throw ServiceError(.invalidArgument, "plan files are invalid; the pool's plan is unchanged:\n\(error)", underlying: error)
        }
        let updates = files.filter { ($0.pool ?? configuration.pool) == configuration.pool }
            .flatMap { file in file.producers.map { PoolPlan.Update(definition: $0, source: file.path) } }
        let digest = Self.digest(updates)
        state.withLock { $0.parsedFiles = (signature, updates, digest) }
        return (updates, digest)
    }

    /// Writes this node's plan files to the pool's plan, under this policy:
    /// - files equal to the pool's plan: nothing to write (two nodes with the same files never
    ///   churn), and this node agrees with that revision;
    /// - files unchanged since this node last applied them (or never applied while the pool has
    ///   a plan): the pool's plan is newer. Not written: *plan drift* is reported;
    /// - otherwise (the files were edited): written as a compare-and-set against the revision this
    ///   node last saw, retiring producers no longer in them. A lost race is drift, not a forced write.
    func applyFiles(store: PlanStore) async throws {
        let (updates, digest) = try loadFiles()
        var snapshot = try await plan.read(verify: false)
        if Self.matches(updates, snapshot) {
            try await agree(store: store, digest: digest, revision: snapshot.revision)
            return
        }
        // A pool that has no plan at all (a new or emptied Redis, a private server started anew)
        // is seeded whatever this node applied before: there is nothing newer to protect.
        let empty = snapshot.revision == 0 && snapshot.producers.isEmpty && snapshot.retired.isEmpty && snapshot.skipped.isEmpty
        let record = empty ? nil : try store.nodePlan(pool: configuration.pool)
        let base = empty ? 0 : state.withLock { $0.lastSeenRevision } ?? record?.poolRevision
        if record?.filesDigest == digest || (base == nil && snapshot.revision != 0) {
            let why = record == nil
                ? "this node never applied its plan files and the pool has a plan (revision \(snapshot.revision))"
                : "this node's plan files are unchanged since it applied them at revision \(record?.poolRevision ?? 0); the pool is at revision \(snapshot.revision)"
            await reportDrift(updates, snapshot, nodeRevision: record?.poolRevision ?? 0, why: why)
            return
        }
        let result = try await plan.apply(updates, expectRevision: base ?? 0, prune: true, actor: actor)
        if result.conflict {
            snapshot = try await plan.read(verify: false)
            if Self.matches(updates, snapshot) {
                try await agree(store: store, digest: digest, revision: snapshot.revision)
            } else {
                await reportDrift(updates, snapshot, nodeRevision: base ?? 0,
                    why: "this node's plan files changed, but the pool's plan moved from revision \(base ?? 0) to \(snapshot.revision) first")
            }
            return
        }
        try await agree(store: store, digest: digest, revision: result.revision)
        for change in result.changes where change.outcome != .unchanged {
            logger.info("plan \(change.outcome.rawValue)", metadata: ["producer": "\(change.producer)", "revision": "\(change.revision)"])
            if change.outcome == .updated || change.outcome == .retired {
                // Its new revision (or, retired, its last round) planned now, not at its next tick.
                _ = try? await node.triggerTicker(named: "schedule-" + change.producer)
            }
        }
    }

    private func agree(store: PlanStore, digest: String, revision: Int) async throws {
        let record = NodePlanRecord(filesDigest: digest, poolRevision: revision)
        if try store.nodePlan(pool: configuration.pool) != record { try store.setNodePlan(pool: configuration.pool, record) }
        state.withLock { $0.lastSeenRevision = revision }
        await reportDrift(nil)
    }

    private func reportDrift(_ updates: [PoolPlan.Update], _ snapshot: PlanSnapshot, nodeRevision: Int, why: String) async {
        state.withLock { $0.lastSeenRevision = snapshot.revision }
        let files = Dictionary(updates.map { ($0.name, PoolPlan.contentHash($0.definition.canonicalJSON)) }, uniquingKeysWith: { $1 })
        let differing = Set(files.keys).union(snapshot.producers.keys)
            .filter { files[$0] != snapshot.producers[$0]?.contentHash }.sorted()
        let since = state.withLock { $0.drift?.since } ?? Date()
        await reportDrift(PlanDrift(node: node.id, name: configuration.nodeOptions.name, since: since, nodeRevision: nodeRevision,
            poolRevision: snapshot.revision, differing: differing, message: why))
    }

    /// Records drift (nil: none) in Redis, the metric and the log (once per change).
    private func reportDrift(_ drift: PlanDrift?) async {
        let previous = state.withLock { state -> PlanDrift? in
            defer { state.drift = drift }
            return state.drift
        }
        Gauge(label: "rota_plan_drift", dimensions: [("pool", configuration.pool)]).record(drift == nil ? 0 : 1)
        if let drift {
            if previous?.poolRevision != drift.poolRevision || previous?.differing != drift.differing {
                logger.warning("plan drift: this node's plan files differ from the pool's plan and were not applied", metadata: [
                    "why": "\(drift.message)", "pool_revision": "\(drift.poolRevision)",
                    "differing": "\(drift.differing.joined(separator: ","))",
                ])
            }
        } else if previous != nil {
            logger.info("plan drift resolved: this node's plan files match the pool's plan")
        }
        guard previous != drift else { return }
        do {
            try await plan.setDrift(drift, node: node.id)
        } catch {
            logger.warning("could not report plan drift in Redis", metadata: ["error": "\(error)"])
        }
    }

    /// Names and content hashes of the files' producers, as one SHA-256.
    static func digest(_ updates: [PoolPlan.Update]) -> String {
        let text = updates.map { "\($0.name) \(PoolPlan.contentHash($0.definition.canonicalJSON))\n" }.sorted().joined()
        return PoolPlan.contentHash(text)
    }

    static func matches(_ updates: [PoolPlan.Update], _ snapshot: PlanSnapshot) -> Bool {
        guard updates.count == snapshot.producers.count else { return false }
        return updates.allSatisfy { snapshot.producers[$0.name]?.contentHash == PoolPlan.contentHash($0.definition.canonicalJSON) }
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

    // MARK: Following the pool's plan

    /// Records the pool's plan change log into SQLite (from its oldest entry; idempotent) and
    /// asks for a re-read of the plan after each batch. Runs until cancelled.
    private func followPlanLog(store: PlanStore) async {
        do {
            let stream = try RedisStream(name: PoolPlan.logStreamName, keySpace: try RedisKeySpace(configuration.pool), client: client,
                options: .init(maxLength: PoolPlan.logLength))
            let reader = try StreamReader(stream: stream, options: .init(blockDuration: .seconds(2), maxPolled: 1000, start: .oldest),
                logger: logger)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await reader.run() }
                defer { group.cancelAll() }
                while let batch = try await reader.events.nextBatch(max: 1000) {
                    var events: [PlanEvent] = []
                    for event in batch {
                        do {
                            events.append(try plan.decodeEvent(entryID: event.id, kind: event.name, payload: event.payload))
                        } catch {
                            Counter(label: "rota_plan_log_skipped", dimensions: [("pool", configuration.pool)]).increment()
                            logger.error("ignoring an unreadable plan change", metadata: ["event": "\(event.id)", "error": "\(error)"])
                        }
                    }
                    do {
                        try store.recordPlanEvents(events)
                    } catch {
                        logger.error("could not record plan changes", metadata: ["error": "\(error)"])
                    }
                    reloads.continuation.yield(.pool)
                }
            }
        } catch {
            if !Task.isCancelled { logger.error("plan change log following stopped", metadata: ["error": "\(error)"]) }
        }
    }

    private func reloadLoop(store: PlanStore, history: RoundLog) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await _ in await UnixSignalsSequence(trapping: .sighup) {
                    self.logger.info("SIGHUP: reloading plan files")
                    self.reloads.continuation.yield(.files)
                }
            }
            if !configuration.planPaths.isEmpty {
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: self.configuration.reloadInterval)
                        if self.filesSignature() != self.state.withLock({ $0.filesSignature }) { self.reloads.continuation.yield(.files) }
                    }
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: self.configuration.planCheckInterval)
                    self.reloads.continuation.yield(.pool)
                }
            }
            for await reason in reloads.stream {
                if node.isClosed { break }
                do {
                    if !configuration.planPaths.isEmpty {
                        do {
                            try await applyFiles(store: store)
                        } catch let error as ServiceError where error.code == .invalidArgument {
                            // Logged when the files change, not at every change of the pool.
                            if reason == .files { logger.error("plan reload failed", metadata: ["error": "\(error)"]) }
                        }
                    }
                    try await syncSchedules(history: history)
                } catch {
                    logger.error("plan reload failed", metadata: ["error": "\(error)"])
                }
            }
            group.cancelAll()
        }
    }

    /// Schedules the pool's live producers (a new interval: a new schedule), keeps retired ones
    /// scheduled until their last round ended them (and schedules one whose ticker still runs,
    /// so that round happens even if every node that had it left), and closes the rest.
    private func syncSchedules(history: RoundLog) async throws {
        let snapshot = try await plan.read(verify: false)
        recordCurrent(snapshot, in: history.store)
        let newSkips = state.withLock { state in
            snapshot.skipped.filter { state.loggedSkips.insert("\($0.field)|\($0.cause)").inserted }
        }
        for skip in newSkips {
            Counter(label: "rota_plan_entries_skipped", dimensions: [("pool", configuration.pool)]).increment()
            logger.error("ignoring an unreadable entry of the pool's plan", metadata: ["field": "\(skip.field)", "error": "\(skip.cause)"])
        }
        var wanted: [String: Duration] = [:]
        for (name, producer) in snapshot.producers {
            if let interval = state.withLock({ $0.intervals[producer.contentHash] }) {
                wanted[name] = interval
                continue
            }
            do {
                let definition = try ProducerDefinition(canonicalJSON: producer.definition)
                guard definition.name == name else { throw ServiceError(.invalidArgument, "the definition is of producer '\(definition.name.prefix(80))'") }
                wanted[name] = definition.interval
                state.withLock { $0.intervals[producer.contentHash] = definition.interval }
            } catch {
                logger.error("definition unreadable; producer not scheduled", metadata: ["producer": "\(name)", "error": "\(error)"])
            }
        }
        let existing = state.withLock { $0.schedules }
        for name in snapshot.retired.keys where existing[name] == nil {
            if let interval = try? await node.tickerInterval(named: "schedule-" + name) { wanted[name] = interval }
        }
        for (name, scheduled) in existing where wanted[name] == nil && snapshot.retired[name] == nil {
            logger.info("producer no longer in the pool's plan: not planned by this node", metadata: ["producer": "\(name)"])
            await scheduled.schedule.close()
            state.withLock { _ = $0.schedules.removeValue(forKey: name) }
        }
        for (name, interval) in wanted.sorted(by: { $0.key < $1.key }) {
            if let scheduled = existing[name] {
                guard scheduled.interval != interval else { continue }
                await scheduled.schedule.close()
            }
            let planner = ProducerPlanner(name: name, pool: configuration.pool, node: node, history: history, plan: plan, logger: logger)
            let schedule = try await node.schedule(planner, interval: interval)
            state.withLock { $0.schedules[name] = Scheduled(planner: planner, schedule: schedule, interval: interval) }
            spawner.continuation.yield { await self.follow(schedule, planner: planner) }
        }
    }

    /// Records the plan's current definitions and retirements (once per revision): a node away
    /// for longer than the change log reaches still has every current revision in its SQLite.
    private func recordCurrent(_ snapshot: PlanSnapshot, in store: PlanStore) {
        guard state.withLock({ $0.recordedRevision != snapshot.revision }) else { return }
        var events = snapshot.producers.values.map { producer in
            PlanEvent(pool: configuration.pool, entryID: nil, producer: producer.name, kind: .updated, revision: producer.revision,
                actor: producer.actor, at: producer.at, definition: producer.definition, contentHash: producer.contentHash,
                source: producer.source)
        }
        events += snapshot.retired.map { name, retirement in
            PlanEvent(pool: configuration.pool, entryID: nil, producer: name, kind: .retired, revision: retirement.revision,
                actor: retirement.actor, at: retirement.at)
        }
        do {
            try store.recordPlanEvents(events)
            state.withLock { $0.recordedRevision = snapshot.revision }
        } catch {
            logger.error("could not record the pool's current plan", metadata: ["error": "\(error)"])
        }
    }

    /// One log line per round this node planned, and its outcome in the history. A retired
    /// producer's last round, once every stop succeeded, ends its schedule on every node.
    private func follow(_ schedule: Schedule, planner: ProducerPlanner) async {
        for await event in schedule.events {
            switch event {
            case .applied(let report):
                guard let (round, final, unplaced) = await planner.finish(report) else { continue }
                let duration = (round.finishedAt ?? Date()).timeIntervalSince(round.startedAt)
                let dimensions = [("producer", round.producer)]
                Counter(label: "rota_rounds", dimensions: dimensions).increment()
                Metrics.Timer(label: "rota_round_duration", dimensions: dimensions).recordNanoseconds(Int64(duration * 1e9))
                Counter(label: "rota_jobs_started", dimensions: dimensions).increment(by: round.started)
                Counter(label: "rota_jobs_stopped", dimensions: dimensions).increment(by: round.stopped)
                Counter(label: "rota_jobs_failed", dimensions: dimensions).increment(by: round.failed)
                // A round that changed nothing logs at debug: 100 producers at 1 s would otherwise
                // write 100 info lines a second that say only "still fine".
                let changed = round.started + round.stopped + round.failed + unplaced > 0 || round.error != nil
                logger.log(level: changed ? .info : .debug, "round", metadata: [
                    "producer": "\(round.producer)", "round": "\(round.roundID)", "revision": "\(round.revision)",
                    "started": "\(round.started)", "stopped": "\(round.stopped)", "failed": "\(round.failed)",
                    "unplaced": "\(unplaced)", "duration_ms": "\(Int(duration * 1000))",
                ])
                if final {
                    logger.info("producer retired: its jobs are stopped and its schedule ends on every node", metadata: ["producer": "\(round.producer)"])
                    do {
                        try await schedule.stop()
                    } catch {
                        logger.warning("could not end a retired producer's schedule; its next tick tries again", metadata: [
                            "producer": "\(round.producer)", "error": "\(error)",
                        ])
                    }
                }
            case .planFailed(let tick, let error):
                logger.error("round failed to plan", metadata: ["producer": "\(planner.name)", "tick": "\(tick.token)", "error": "\(error)"])
            case .ended:
                state.withLock { state in
                    if state.schedules[planner.name]?.schedule === schedule { state.schedules.removeValue(forKey: planner.name) }
                }
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

    /// Opened, and without a failure.
    var isOpenWithoutError: Bool { state.withLock { $0.done && $0.error == nil } }

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
