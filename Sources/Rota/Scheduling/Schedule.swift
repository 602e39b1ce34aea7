import Foundation
import Logging
import RotaMap
import Synchronization

/// A job that a plan wants running.
public struct PlannedJob: Sendable, Hashable {
    public var key: String
    public var payload: [UInt8]
    /// Why the plan wants it (job log `reason` of its start or restart); "planned" when nil.
    public var reason: String?
    /// The capability its worker must have (``Node/dispatch(key:payload:requirement:origin:)``).
    public var requirement: String?

    public init(key: String, payload: [UInt8] = [], reason: String? = nil, requirement: String? = nil) {
        self.key = key
        self.payload = payload
        self.reason = reason
        self.requirement = requirement
    }
}

/// What a producer wants at one tick: jobs to start, and either keys to stop or "stop all" (every
/// job this producer started that is not in ``start``).
public struct JobPlan: Sendable, Hashable {
    public var start: [PlannedJob]
    /// Ignored when ``stopAll`` is set.
    public var stop: [String]
    public var stopAll: Bool
    /// Why each stop is wanted (job key → job log `reason`); "planned" for keys not listed.
    public var stopReasons: [String: String]
    /// The reason of the stops "stop all" makes; "planned" when nil.
    public var stopAllReason: String?
    /// The planning round's ID, carried into the job log with every action of this plan.
    public var round: String?

    public init(
        start: [PlannedJob] = [], stop: [String] = [], stopAll: Bool = false,
        stopReasons: [String: String] = [:], stopAllReason: String? = nil, round: String? = nil
    ) {
        self.start = start
        self.stop = stop
        self.stopAll = stopAll
        self.stopReasons = stopReasons
        self.stopAllReason = stopAllReason
        self.round = round
    }
}

/// Computes plans for ``Node/schedule(_:interval:)``. Throw ``PoolError/scheduleStop`` from
/// ``plan(for:)`` to end the schedule on every node.
public protocol JobProducer: Sendable {
    /// Unique per pool: nodes scheduling producers of the same name share one schedule. 1–200
    /// characters, none of space, `*`, `?`, `[`, `]`, `{`, `}`, `:`, `=`.
    var name: String { get }
    func plan(for tick: Tick) async throws -> JobPlan
}

/// What applying a plan did to one job.
public enum JobOutcome: Sendable, Hashable {
    case started
    /// Running already with the same payload: left alone.
    case alreadyRunning
    /// Running with another payload: stopped and started again with the new one.
    case restarted
    /// The owner's stop handler returned (or the job had no owner and was ended).
    case stopped
    /// Asked to stop, but not running.
    case notFound
    case failed(String)
    /// No active worker has the job's requirement: the job waits in the pool, unplaced, and starts
    /// when such a worker joins (later rounds see it as running with its payload).
    case unplaced(requirement: String)
    /// The stop handler failed, or no stop was confirmed in time: the job may still run, and the
    /// schedule keeps it in its bookkeeping so that the next "stop all" tries again.
    case stopFailed(String)
}

/// One applied plan.
public struct PlanReport: Sendable {
    public let producer: String
    public let tick: Tick
    public let node: String
    /// In plan order: starts, then stops.
    public let outcomes: [(key: String, outcome: JobOutcome)]

    public func count(_ outcome: JobOutcome) -> Int { outcomes.filter { $0.outcome == outcome }.count }
    /// Failed starts, restarts and stops.
    public var failures: [(key: String, message: String)] {
        outcomes.compactMap { item in
            switch item.outcome {
            case .failed(let message), .stopFailed(let message): return (item.key, message)
            default: return nil
            }
        }
    }
}

/// What a schedule reports to its observers (``Schedule/events``).
public enum ScheduleEvent: Sendable {
    /// This node planned a tick and applied the plan.
    case applied(PlanReport)
    /// The producer failed at this tick (the schedule goes on).
    case planFailed(tick: Tick, error: String)
    /// The schedule ended on this node: closed here, stopped (here or elsewhere), or the node closed.
    case ended
}

/// A producer scheduled on this node; every node that schedules the same producer name shares it,
/// and each tick is planned on exactly one of them. Created by ``Node/schedule(_:interval:)``.
public final class Schedule: Sendable {
    public let producer: any JobProducer
    public let ticker: Ticker
    /// Job key → when this schedule started it: the jobs "stop all" may stop. Shared by the nodes.
    let started: ReplicatedMap
    let node: Node
    let logger: Logger
    let eventStream: (stream: AsyncStream<ScheduleEvent>, continuation: AsyncStream<ScheduleEvent>.Continuation)
    let ended = Latch()

    init(producer: any JobProducer, ticker: Ticker, started: ReplicatedMap, node: Node) {
        self.producer = producer
        self.ticker = ticker
        self.started = started
        self.node = node
        var logger = node.logger
        logger[metadataKey: "producer"] = "\(producer.name)"
        self.logger = logger
        eventStream = AsyncStream.makeStream(of: ScheduleEvent.self, bufferingPolicy: .bufferingNewest(1000))
    }

    /// Reports of this node's rounds, failures, and the end. One consumer.
    public var events: AsyncStream<ScheduleEvent> { eventStream.stream }

    /// Stops planning on this node; the other nodes go on.
    public func close() async {
        await ticker.close()
        await ended.settle()
    }

    /// Ends the schedule on every node (jobs it started keep running).
    public func stop() async throws {
        try await ticker.stop()
        await ended.settle()
    }

    func run() async {
        defer {
            eventStream.continuation.yield(.ended)
            eventStream.continuation.finish()
            ended.open()
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await self.started.run() }
            group.addTask { await self.ticker.run() }
            group.addTask {
                // A reset of the bookkeeping is how a node that got "stop" tells the others (the
                // deleted ticker entry tells them too; either is enough).
                for await change in self.started.changes() where change == .reset {
                    if self.node.maps.tickers.get(self.ticker.name) == nil { await self.ticker.close() }
                }
            }
            await plan()
            started.close()
            group.cancelAll()
        }
    }

    private func plan() async {
        do {
            try await started.waitUntilReady()
        } catch {
            logger.error("schedule could not join its bookkeeping map", metadata: ["error": "\(error)"])
            await ticker.close()
            return
        }
        for await tick in ticker.ticks {
            let plan: JobPlan
            do {
                plan = try await producer.plan(for: tick)
            } catch let error as PoolError where error.code == .scheduleStop {
                logger.info("producer asked to stop the schedule")
                do {
                    try await started.reset()
                } catch {
                    logger.warning("could not reset the schedule's bookkeeping", metadata: ["error": "\(error)"])
                }
                do {
                    try await ticker.stop()
                } catch {
                    logger.error("could not stop the schedule's ticker", metadata: ["error": "\(error)"])
                }
                return
            } catch {
                logger.error("producer failed to plan", metadata: ["error": "\(error)"])
                eventStream.continuation.yield(.planFailed(tick: tick, error: "\(error)"))
                continue
            }
            let report = await apply(plan, at: tick)
            eventStream.continuation.yield(.applied(report))
        }
    }

    /// Reconciles instead of re-dispatching: a job running with the planned payload is left alone,
    /// a missing one is dispatched, one with another payload is restarted, and stops are sent only
    /// for jobs that run.
    func apply(_ plan: JobPlan, at tick: Tick) async -> PlanReport {
        let payloads = node.maps.payloads
        var outcomes: [String: JobOutcome] = [:]
        var toDispatch: [PlannedJob] = []
        var toRestart: [PlannedJob] = []
        var bookkeep: [String] = []
        for job in plan.start where outcomes[job.key] == nil {
            switch payloads.get(job.key) {
            case job.payload?:
                outcomes[job.key] = .alreadyRunning
                if started.get(job.key) == nil { bookkeep.append(job.key) }
            case nil:
                toDispatch.append(job)
                outcomes[job.key] = .started
            case _?:
                toRestart.append(job)
                outcomes[job.key] = .restarted
            }
        }
        // Restarts and dispatches wait for their start: many at once (bounded), not one tick-long
        // queue (a payload change of many jobs restarted them one after the other).
        let work = toRestart.map { (job: $0, restart: true) } + toDispatch.map { (job: $0, restart: false) }
        await withTaskGroup(of: (String, JobOutcome).self) { group in
            var pending = work.makeIterator()
            func addNext() -> Bool {
                guard let next = pending.next() else { return false }
                let origin = self.origin(plan, reason: next.job.reason)
                group.addTask {
                    (next.job.key, next.restart ? await self.restart(next.job, origin: origin) : await self.dispatch(next.job, origin: origin))
                }
                return true
            }
            for _ in 0..<64 where !addNext() { break }
            while let (key, outcome) = await group.next() {
                outcomes[key] = outcome
                switch outcome {
                case .started, .alreadyRunning, .restarted, .unplaced:
                    // A held job exists in the pool like a running one: "stop all" must end it too.
                    bookkeep.append(key)
                default:
                    break
                }
                _ = addNext()
            }
        }
        let now = String(nowNanos())
        await withTaskGroup(of: Void.self) { group in
            // One write per job, many at once: a first round over thousands of running jobs
            // must not take a round trip each, one after the other.
            var pending = bookkeep.makeIterator()
            func addNext() -> Bool {
                guard let key = pending.next() else { return false }
                group.addTask {
                    do {
                        try await self.started.set(key, now)
                    } catch {
                        self.logger.warning("could not record a started job", metadata: ["job": "\(key)", "error": "\(error)"])
                    }
                }
                return true
            }
            for _ in 0..<64 where !addNext() { break }
            while await group.next() != nil { _ = addNext() }
        }
        let startKeys = Set(plan.start.map(\.key))
        let stops = plan.stopAll ? started.keys.filter { !startKeys.contains($0) }.sorted() : plan.stop
        var stopOutcomes: [String: JobOutcome] = [:]
        var stopOrder: [String] = []
        var toStop: [String] = []
        for key in stops where (!startKeys.contains(key) || !plan.stopAll) && stopOutcomes[key] == nil {
            stopOrder.append(key)
            if payloads.get(key) == nil {
                stopOutcomes[key] = .notFound
            } else {
                stopOutcomes[key] = .stopFailed("not applied")
                toStop.append(key)
            }
        }
        // Stops wait for their worker's confirmation: many at once (bounded), as dispatches.
        await withTaskGroup(of: (String, JobOutcome).self) { group in
            var pending = toStop.makeIterator()
            func addNext() -> Bool {
                guard let key = pending.next() else { return false }
                let origin = self.origin(plan, reason: plan.stopReasons[key] ?? (plan.stopAll ? plan.stopAllReason : nil))
                group.addTask { (key, await self.stop(key, origin: origin)) }
                return true
            }
            for _ in 0..<64 where !addNext() { break }
            while let (key, outcome) = await group.next() {
                stopOutcomes[key] = outcome
                _ = addNext()
            }
        }
        for key in stopOrder {
            if case .stopFailed? = stopOutcomes[key] { continue }
            if case .failed? = stopOutcomes[key] { continue }
            // Stopped or not running: forgotten. A failed stop is kept, so a later "stop all"
            // tries again.
            do {
                _ = try await started.delete(key)
            } catch {
                logger.warning("could not forget a stopped job", metadata: ["job": "\(key)", "error": "\(error)"])
            }
        }
        var ordered: [(key: String, outcome: JobOutcome)] = []
        var seen: Set<String> = []
        for job in plan.start where seen.insert(job.key).inserted {
            ordered.append((job.key, outcomes[job.key] ?? .failed("not applied")))
        }
        ordered += stopOrder.map { (key: $0, outcome: stopOutcomes[$0] ?? .stopFailed("not applied")) }
        for failure in ordered {
            switch failure.outcome {
            case .failed(let message), .stopFailed(let message):
                logger.warning("plan action failed", metadata: ["job": "\(failure.key)", "error": "\(message)"])
            default: break
            }
        }
        return PlanReport(producer: producer.name, tick: tick, node: node.id, outcomes: ordered)
    }

    /// The origin of this node's actions for `plan`: "planned" unless the plan says why.
    private func origin(_ plan: JobPlan, reason: String?) -> JobOrigin {
        var origin = JobOrigin(actor: node.options.name, reason: reason ?? "planned", round: plan.round)
        // Producers' texts: what would not fit the pool's records is cut, not refused.
        if !origin.fitsWire {
            origin = JobOrigin(
                actor: String(decoding: origin.actor.utf8.prefix(JobOrigin.maxActorBytes), as: UTF8.self),
                reason: String(decoding: origin.reason.utf8.prefix(JobOrigin.maxReasonBytes), as: UTF8.self),
                round: origin.round.map { String(decoding: $0.utf8.prefix(JobOrigin.maxRoundBytes), as: UTF8.self) }
            )
        }
        return origin
    }

    private func dispatch(_ job: PlannedJob, origin: JobOrigin) async -> JobOutcome {
        do {
            switch try await node.dispatch(key: job.key, payload: job.payload, requirement: job.requirement, origin: origin) {
            case .started: return .started
            case .unplaced(let requirement): return .unplaced(requirement: requirement)
            }
        } catch let error as PoolError where error.code == .jobExists {
            // Started meanwhile (another node's round, or this node's replica was behind).
            return .alreadyRunning
        } catch let error as PoolError {
            return .failed(error.message)
        } catch {
            return .failed("\(error)")
        }
    }

    /// A stop confirmed by the job's worker: `.stopped` only once the stop handler returned (or
    /// the job had no owner and was ended).
    private func stop(_ key: String, origin: JobOrigin) async -> JobOutcome {
        do {
            switch try await node.stopAndWait(key: key, origin: origin) {
            case .stopped, .endedUnowned: return .stopped
            case .notRunning: return .notFound
            }
        } catch let error as PoolError {
            return .stopFailed(error.code == .stopFailed ? error.message : "\(error.code): \(error.message)")
        } catch {
            return .stopFailed("\(error)")
        }
    }

    /// Stops a job running with another payload, waits for its worker to confirm, then starts
    /// the new one. An old copy that did not stop is not started over: two would run.
    private func restart(_ job: PlannedJob, origin: JobOrigin) async -> JobOutcome {
        switch await stop(job.key, origin: origin) {
        case .stopFailed(let message):
            return .failed("restart: the old copy did not stop: \(message)")
        default:
            switch await dispatch(job, origin: origin) {
            case .started: return .restarted
            case let other: return other
            }
        }
    }
}

extension Node {
    /// Creates (or joins) the pool-wide ticker `name`: each tick goes to exactly one of the nodes
    /// that created it. Joining a running ticker with the same interval keeps its phase; another
    /// interval replaces the old one for everyone. Not available on client-only nodes.
    public func ticker(named name: String, interval: Duration) async throws -> Ticker {
        let ticker = try await makeTicker(named: name, interval: interval, firstTickNow: false)
        guard spawn({ await ticker.run() }) else { throw PoolError(.closed, "node \(id) of pool \(pool) is closed") }
        return ticker
    }

    func makeTicker(named name: String, interval: Duration, firstTickNow: Bool) async throws -> Ticker {
        guard !options.clientOnly else { throw PoolError(.clientOnly, "node \(id) is client-only: it cannot run tickers or schedules") }
        try checkOpen()
        try Self.validate(scheduleName: name)
        guard interval >= .milliseconds(1), interval <= .seconds(366 * 86_400) else {
            throw PoolError(.invalidArgument, "ticker \(name): the interval must be from 1ms to 366 days")
        }
        let entry: TickerEntry
        do {
            // Redis, not the replica: joining must see the entry as it is now.
            let fresh = TickerEntry(next: nowMicros() + (firstTickNow ? 0 : interval.microseconds), interval: interval)
            // Set-if-absent first: nodes starting together must not each create a first tick.
            if try await maps.tickers.setIfAbsent(name, fresh.raw) {
                entry = fresh
            } else if let current = try await client.send("HGET", maps.tickers.contentKey, name).string.flatMap(TickerEntry.init),
                      current.interval == interval {
                entry = current
            } else {
                // Another interval (or an unreadable entry): this one replaces it for everyone.
                entry = fresh
                try await maps.tickers.setAndWait(name, entry.raw)
            }
        } catch let error as PoolError {
            throw error
        } catch {
            throw PoolError(.redis, "creating ticker \(name): \(error)", underlying: error)
        }
        return Ticker(name: name, node: self, entry: entry)
    }

    /// Schedules `producer` every `interval`: every node that schedules a producer of the same
    /// name shares one ticker, so each tick's plan (the first included) runs on exactly one node.
    /// Applying a plan reconciles with what runs (see ``Schedule``). Not available on client-only
    /// nodes.
    public func schedule(_ producer: any JobProducer, interval: Duration) async throws -> Schedule {
        try Self.validate(scheduleName: producer.name)
        let started: ReplicatedMap
        do {
            started = try ReplicatedMap("schedule-" + producer.name, keySpace: keySpace, client: client, logger: logger)
        } catch {
            throw PoolError(.invalidArgument, "producer name '\(producer.name)': \(error)", underlying: error)
        }
        // The first plan is due at once (on one node): a new schedule should not wait an interval.
        let ticker = try await makeTicker(named: "schedule-" + producer.name, interval: interval, firstTickNow: true)
        let schedule = Schedule(producer: producer, ticker: ticker, started: started, node: self)
        guard spawn({ await schedule.run() }) else { throw PoolError(.closed, "node \(id) of pool \(pool) is closed") }
        return schedule
    }

    /// What ``triggerTicker(named:)`` did.
    public enum TriggerOutcome: Sendable, Hashable {
        /// One extra tick is due now, on exactly one of the ticker's nodes; the regular ticks
        /// keep their times.
        case triggered
        /// A triggered tick is pending already: this one adds nothing.
        case alreadyPending
        /// The regular tick is due within a millisecond: it is the tick asked for.
        case dueNow
    }

    /// Makes the pool-wide ticker `name` deliver one tick now, on exactly one of its nodes (the
    /// same compare-and-set as every tick: fenced like one), without moving its regular ticks.
    /// Works from client-only nodes. Throws ``PoolError/Code-swift.struct/invalidArgument`` when no
    /// such ticker runs in the pool.
    public func triggerTicker(named name: String) async throws -> TriggerOutcome {
        try Self.validate(scheduleName: name)
        for _ in 0..<10 {
            let raw: String?
            do {
                raw = try await client.send("HGET", maps.tickers.contentKey, name).string
            } catch {
                throw PoolError(.redis, "reading ticker \(name): \(error)", underlying: error)
            }
            guard let raw else { throw PoolError(.invalidArgument, "no ticker \(name) runs in pool \(pool)") }
            guard let entry = TickerEntry(raw) else { throw PoolError(.invalidArgument, "ticker \(name) holds an unreadable entry '\(raw.prefix(100))'") }
            if entry.after != nil { return .alreadyPending }
            let now = nowMicros()
            guard entry.next > now + 1000 else { return .dueNow }
            let triggered = TickerEntry(next: now, interval: entry.interval, after: entry.next)
            do {
                if try await maps.tickers.testAndSet(name, test: raw, triggered.raw).updated { return .triggered }
            } catch {
                throw PoolError(.redis, "triggering ticker \(name): \(error)", underlying: error)
            }
            // A tick was claimed meanwhile: try again against the new entry.
        }
        throw PoolError(.redis, "ticker \(name) kept changing; trigger not applied")
    }

    /// The interval of the pool-wide ticker `name`, or nil when no such ticker runs.
    public func tickerInterval(named name: String) async throws -> Duration? {
        try Self.validate(scheduleName: name)
        do {
            return try await client.send("HGET", maps.tickers.contentKey, name).string.flatMap(TickerEntry.init)?.interval
        } catch {
            throw PoolError(.redis, "reading ticker \(name): \(error)", underlying: error)
        }
    }

    /// The jobs the schedule of producer `name` started and has not stopped (its bookkeeping, as
    /// Redis holds it now): what "stop all" stops.
    public func scheduledJobs(producer name: String) async throws -> [String] {
        try Self.validate(scheduleName: name)
        do {
            let reply = try await client.send("HKEYS", keySpace.key("map", "schedule-" + name))
            return (reply.array ?? []).compactMap(\.string).filter { !$0.hasPrefix("=") }.sorted()
        } catch {
            throw PoolError(.redis, "reading the jobs of schedule \(name): \(error)", underlying: error)
        }
    }

    static func validate(scheduleName name: String) throws(PoolError) {
        guard !name.isEmpty, name.count <= 200 else { throw PoolError(.invalidArgument, "names of tickers and producers must be 1-200 characters") }
        let reserved: Set<Character> = [" ", "*", "?", "[", "]", "{", "}", ":", "=", "\0"]
        if let bad = name.first(where: { reserved.contains($0) }) {
            throw PoolError(.invalidArgument, "name '\(name)' contains the reserved character '\(bad)'")
        }
    }
}
