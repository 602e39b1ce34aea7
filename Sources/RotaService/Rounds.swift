import Foundation
import Logging
import Metrics
import Rota
import RotaPlans
import RotaRedis
import RotaStore
import RotaStreams
import Synchronization

/// Plans the rounds of one producer from the pool's current definition (read from Redis at each
/// tick, never a local copy): it computes the jobs desired at the tick's scheduled time (windows on
/// the producer's clock, bounds, mode) and records the round's intent before the schedule applies
/// it. A paused producer plans nothing (or, paused with `stop_jobs`, stops what it started); a
/// retired one plans one last round that stops every job it started.
final class ProducerPlanner: JobProducer {
    let name: String
    let pool: String
    let node: Node
    let history: RoundLog
    let plan: PoolPlan
    let logger: Logger

    /// Why a round is planned when it is not the producer's own plan.
    enum Special: String {
        case retired, paused
    }

    private struct State {
        /// The last definition decoded, by its content hash: decoding once per change, not per tick.
        var cached: (hash: String, definition: ProducerDefinition)?
        /// Rounds planned by this node and not applied yet, by tick token.
        var open: [Int64: OpenRound] = [:]
        /// What was logged about the plan last (logged once per change, not per tick).
        var lastNotice = ""
        /// Unreadable plan fields already logged.
        var loggedUnreadable: Set<String> = []
        /// The job keys of the definition this planner planned from last, and its revision: a start
        /// of a key it did not list is `added-to-plan`.
        var previousKeys: (revision: Int, keys: Set<String>)?
    }

    struct OpenRound {
        var record: RoundRecord
        var starts: Set<String>
        var payloadHashes: [String: String]
        /// Why each planned action is taken, by job key (see ``Reason``).
        var reasons: [String: String]
        /// The reason of stops the planner did not list (stop-all stops of jobs it no longer plans).
        var defaultStopReason: String
        var special: Special?
        var missed: Int
    }

    private let state = Mutex(State())

    init(name: String, pool: String, node: Node, history: RoundLog, plan: PoolPlan, logger: Logger) {
        self.name = name
        self.pool = pool
        self.node = node
        self.history = history
        self.plan = plan
        self.logger = logger
    }

    func plan(for tick: Tick) async throws -> JobPlan {
        let (current, pause, retired, unreadable) = try await plan.planning(name, knownHash: state.withLock { $0.cached?.hash })
        if !unreadable.isEmpty {
            Counter(label: "rota_plan_entries_skipped", dimensions: [("pool", pool)]).increment(by: unreadable.count)
            let new = state.withLock { state in unreadable.filter { state.loggedUnreadable.insert($0).inserted } }
            if !new.isEmpty { logger.error("ignoring unreadable entries of the pool's plan", metadata: ["fields": "\(new.joined(separator: ","))"]) }
        }
        let producer: (revision: Int, definition: ProducerDefinition)?
        switch current {
        case .same(let revision):
            producer = state.withLock { $0.cached }.map { (revision, $0.definition) }
        case .fetched(let fetched):
            producer = (fetched.revision, try definition(of: fetched))
        case .absent:
            producer = nil
        }
        guard let producer else {
            guard let retired else {
                notice("producer is not in the pool's plan: planning nothing")
                return JobPlan()
            }
            // Retired: one last round stops every job the schedule started, pool-wide.
            return try await stopAll(tick: tick, revision: retired.revision, special: .retired)
        }
        if let pause {
            if pause.holds(at: Date()) {
                notice("paused: planning nothing")
                guard pause.stopJobs else { return JobPlan() }
                return try await stopAll(tick: tick, revision: producer.revision, special: .paused)
            }
            // Its `until` passed: this planner ends it (that pause only, not a newer one).
            _ = try? await plan.resume(name, actor: "rota (pause until \((pause.until ?? Date()).formatted(.iso8601)) passed)", expecting: pause)
        }
        let definition = producer.definition
        notice("")
        let revision = producer.revision
        let zone = TimeZone(identifier: definition.timeZone) ?? TimeZone(secondsFromGMT: 0) ?? .current
        let previous = previousKeys(revision: revision)
        var start: [PlannedJob] = []
        var idle: [String] = []
        var hashes: [String: String] = [:]
        var startReasons: [String: String] = [:]
        for job in definition.jobs {
            guard job.isDesired(at: tick.scheduled, in: zone) else {
                idle.append(job.key)
                continue
            }
            let envelope = try JobEnvelope(handler: job.handler, payload: job.payload).encoded()
            // Only a worker with the job's handler can run it: one without would fail its start.
            start.append(PlannedJob(key: job.key, payload: envelope, requirement: job.handler))
            hashes[job.key] = fingerprint(String(decoding: envelope, as: UTF8.self))
            startReasons[job.key] = Reason.start(of: job, previousKeys: previous)
        }
        state.withLock { $0.previousKeys = (revision, Set(definition.jobs.map(\.key))) }
        // The intent: what this round means to change, judged against the pool as this node sees it.
        var planned: [PlannedAction] = []
        var reasons: [String: String] = [:]
        for index in start.indices {
            let job = start[index]
            switch try? await node.jobPayload(job.key) {
            case nil:
                reasons[job.key] = startReasons[job.key]
                planned.append(PlannedAction(job: job.key, action: .start, payloadHash: hashes[job.key]))
            case job.payload?:
                break
            case _?:
                reasons[job.key] = Reason.payloadChanged
                planned.append(PlannedAction(job: job.key, action: .restart, payloadHash: hashes[job.key]))
            }
            start[index].reason = reasons[job.key]
        }
        let startKeys = Set(start.map(\.key))
        let listed = Set(definition.jobs.map(\.key))
        var stopReasons: [String: String] = [:]
        let jobPlan: JobPlan
        if definition.mode == .exact {
            // Stop-all stops every job the schedule started and this round does not start: the
            // intent lists them too, each with its reason (the window closed, or the plan dropped it).
            for key in try await node.scheduledJobs(producer: name) where !startKeys.contains(key) {
                stopReasons[key] = listed.contains(key) ? Reason.windowClosed : Reason.removedFromPlan
            }
            jobPlan = JobPlan(start: start, stopAll: true, stopReasons: stopReasons, stopAllReason: Reason.removedFromPlan,
                round: roundID(tick))
        } else {
            for key in idle { stopReasons[key] = Reason.windowClosed }
            for key in definition.stop { stopReasons[key] = Reason.stopList }
            jobPlan = JobPlan(start: start, stop: definition.stop + idle, stopReasons: stopReasons, round: roundID(tick))
        }
        for key in stopReasons.keys.sorted() where (try? await node.jobPayload(key)) != nil {
            reasons[key] = stopReasons[key]
            planned.append(PlannedAction(job: key, action: .stop))
        }
        try open(tick: tick, revision: revision, planned: planned, starts: startKeys, hashes: hashes, reasons: reasons,
            defaultStopReason: Reason.removedFromPlan, special: nil)
        return jobPlan
    }

    /// The keys of the definition before `revision`: this planner's last one, or, after a restart or
    /// on a node that has not planned this producer yet, the previous revision in the history.
    private func previousKeys(revision: Int) -> Set<String>? {
        if let previous = state.withLock({ $0.previousKeys }) {
            return previous.revision <= revision ? previous.keys : nil
        }
        guard let older = try? history.store.revisions(pool: pool, name: name).filter({ $0.revision < revision }).max(by: { $0.revision < $1.revision }),
              let definition = try? ProducerDefinition(canonicalJSON: older.definition)
        else { return [] }
        return Set(definition.jobs.map(\.key))
    }

    private func roundID(_ tick: Tick) -> String { "\(pool)/\(name)/\(tick.token)" }

    /// A round that stops every job the schedule started (none: no round at all).
    private func stopAll(tick: Tick, revision: Int, special: Special) async throws -> JobPlan {
        let jobs = try await node.scheduledJobs(producer: name)
        guard !jobs.isEmpty || special == .retired else { return JobPlan() }
        try open(tick: tick, revision: revision, planned: jobs.map { PlannedAction(job: $0, action: .stop) }, starts: [], hashes: [:],
            reasons: [:], defaultStopReason: special.rawValue, special: special)
        return JobPlan(start: [], stopAll: true, stopAllReason: special.rawValue, round: roundID(tick))
    }

    private func open(tick: Tick, revision: Int, planned: [PlannedAction], starts: Set<String>, hashes: [String: String],
                      reasons: [String: String], defaultStopReason: String, special: Special?) throws {
        // The planner is named by the node's stable name (the same across restarts), not its ID.
        let record = RoundRecord(
            roundID: roundID(tick), pool: pool, producer: name, revision: revision,
            node: node.options.name, tick: tick.scheduled, startedAt: Date(), planned: planned
        )
        try history.recordIntent(record)
        state.withLock {
            $0.open[tick.token] = OpenRound(record: record, starts: starts, payloadHashes: hashes, reasons: reasons,
                defaultStopReason: defaultStopReason, special: special, missed: tick.missed)
        }
    }

    private func definition(of producer: PlanProducer) throws -> ProducerDefinition {
        if let cached = state.withLock({ $0.cached }), cached.hash == producer.contentHash { return cached.definition }
        let definition: ProducerDefinition
        do {
            definition = try ProducerDefinition(canonicalJSON: producer.definition)
        } catch {
            throw ServiceError(.invalidArgument, "producer \(name) revision \(producer.revision): \(error)", underlying: error)
        }
        guard definition.name == name else {
            throw ServiceError(.invalidArgument, "producer \(name) revision \(producer.revision) defines '\(definition.name)'")
        }
        state.withLock { $0.cached = (producer.contentHash, definition) }
        return definition
    }

    /// Logs a state of the plan once, when it changes.
    private func notice(_ message: String) {
        let changed = state.withLock { state -> Bool in
            defer { state.lastNotice = message }
            return state.lastNotice != message
        }
        if changed && !message.isEmpty { logger.info("\(message)", metadata: ["producer": "\(name)"]) }
    }

    /// The schedule applied this node's plan: record and publish the outcome. `final` is set for a
    /// retired producer's last round that stopped everything: its schedule can end. `unplaced`
    /// counts the jobs held for a capability (not in the record's counts, but a change all the same).
    func finish(_ report: PlanReport) async -> (record: RoundRecord, final: Bool, unplaced: Int)? {
        guard let open = state.withLock({ $0.open.removeValue(forKey: report.tick.token) }) else { return nil }
        let now = Date()
        var record = open.record
        var actions: [ActionRecord] = []
        var unplaced = 0
        let actor = node.options.name
        for (key, outcome) in report.outcomes {
            let isStart = open.starts.contains(key)
            let hash = open.payloadHashes[key]
            let reason = open.special?.rawValue ?? open.reasons[key] ?? (isStart ? Reason.notRunning : open.defaultStopReason)
            func action(_ kind: ActionKind, _ outcome: ActionOutcome, error: String? = nil, hash: String? = nil) -> ActionRecord {
                ActionRecord(job: key, action: kind, outcome: outcome, error: error, payloadHash: hash, at: now, reason: reason, actor: actor)
            }
            switch outcome {
            case .started:
                actions.append(action(.start, .started, hash: hash))
                record.started += 1
            case .alreadyRunning:
                // Nothing changed: a row per running job per round would bury the changes (100
                // jobs at 1 s is 8.6 million rows a day) and say nothing the previous start did not.
                break
            case .restarted:
                actions.append(action(.restart, .started, hash: hash))
                record.started += 1
            case .stopped:
                actions.append(action(.stop, .stopped))
                record.stopped += 1
            case .notFound:
                // A stop of a job that is not running is a non-event, except where the intent
                // planned it (the job ended meanwhile): recorded then, so the intent has its outcome.
                if open.record.planned.contains(where: { $0.job == key && $0.action == .stop }) { actions.append(action(.stop, .notFound)) }
            case .stopFailed(let message):
                // The worker could not stop it: it still runs, and the next round tries again.
                actions.append(action(.stop, .stopFailed, error: message))
                record.failed += 1
            case .unplaced(let requirement):
                // Held in the pool until a worker with the capability joins: not a failure, and
                // later rounds see the job as running with its payload, so this is recorded once.
                let kind: ActionKind = open.reasons[key] == Reason.payloadChanged ? .restart : .start
                actions.append(action(kind, .unplaced, error: "no active worker has capability '\(requirement)'", hash: hash))
                unplaced += 1
            case .failed(let message):
                let kind: ActionKind = !isStart ? .stop : (open.reasons[key] == Reason.payloadChanged ? .restart : .start)
                actions.append(action(kind, .failed, error: message, hash: hash))
                record.failed += 1
            }
        }
        record.finishedAt = now
        await history.recordOutcome(record, actions: actions, missed: open.missed)
        return (record, open.special == .retired && record.failed == 0, unplaced)
    }
}

/// Why a round acts on a job: recorded with every action (`action.reason`) and carried into the
/// pool's job log. The documented list (README "Audit history") is this one plus the pool's own
/// reasons (`worker-lost`, `requeued`, `rebalance`, `worker-closing`, `shutdown`, `given-up`).
public enum Reason {
    /// The job has a window or bounds, and they are open at the tick.
    public static let windowOpened = "window-opened"
    /// The definition the planner saw before did not list the job.
    public static let addedToPlan = "added-to-plan"
    /// An always-wanted job that is not running (its first round on a new node, after a failure or
    /// after the pool gave it up).
    public static let notRunning = "not-running"
    public static let payloadChanged = "payload-changed"
    public static let windowClosed = "window-closed"
    /// Exact mode: the schedule started it and the plan no longer lists it.
    public static let removedFromPlan = "removed-from-plan"
    /// Additive mode: listed under `stop:`.
    public static let stopList = "stop-list"
    public static let retired = "retired"
    public static let paused = "paused"
    /// A `rota dispatch`, `stop` or `notify` by hand.
    public static let manual = "manual"

    static func start(of job: JobDefinition, previousKeys: Set<String>?) -> String {
        if job.active != nil || job.from != nil || job.until != nil { return windowOpened }
        if let previousKeys, !previousKeys.contains(job.key) { return addedToPlan }
        return notRunning
    }
}

/// Where rounds go: this node's SQLite history, and the pool's history stream so that every other
/// node records them too (idempotently, by round ID).
final class RoundLog: Sendable {
    let store: PlanStore
    let stream: RedisStream
    let plan: PoolPlan
    let logger: Logger
    /// Signs what this node publishes and filters what it records; nil: unauthenticated.
    let signer: HistoryEntrySigner?

    /// The history stream keeps about this many rounds: a node down for longer than it takes the
    /// pool to plan them catches up only on what is left.
    static let streamLength = 10_000

    init(store: PlanStore, plan: PoolPlan, key: HistoryKey?, logger: Logger) throws {
        self.store = store
        self.plan = plan
        self.stream = try Self.historyStream(pool: plan.pool, client: plan.client)
        self.signer = key.map { HistoryEntrySigner(key: $0, pool: plan.pool) }
        self.logger = logger
    }

    /// Appends a round to the history stream, signed when this node has the pool's history key.
    func publish(_ round: RoundRecord, _ actions: [ActionRecord]) async throws {
        let payload = try HistoryWire.encode(round, actions)
        try await stream.add(name: HistoryWire.entryName, payload: payload,
            signature: signer?.signature(name: HistoryWire.entryName, payload: payload))
    }

    /// The pool's history stream (rounds, and manual actions as rounds).
    static func historyStream(pool: String, client: RedisClient) throws -> RedisStream {
        try RedisStream(name: "history", keySpace: try RedisKeySpace(pool), client: client, options: .init(maxLength: streamLength))
    }

    func recordIntent(_ round: RoundRecord) throws {
        try store.recordIntent(round)
    }

    func recordOutcome(_ round: RoundRecord, actions: [ActionRecord], missed: Int) async {
        do {
            try store.recordOutcome(roundID: round.roundID, finishedAt: round.finishedAt ?? Date(), actions: actions, error: round.error)
        } catch {
            logger.error("could not record a round's outcome", metadata: ["round": "\(round.roundID)", "error": "\(error)"])
        }
        do {
            // No write here to mark it published: the round comes back on the history stream
            // within moments and `replicate` clears the flag in its batched transaction (one
            // write transaction per round less on the planning path).
            // The producer's last round, for `rota status` and `rota producer list`, beside it.
            async let last: Void = plan.recordLastRound(producer: round.producer, LastRound(round, missed: missed))
            try await publish(round, actions)
            do {
                try await last
            } catch {
                logger.warning("could not record a producer's last round", metadata: ["round": "\(round.roundID)", "error": "\(error)"])
            }
        } catch {
            // Left marked unpublished: `publishPending` tries again.
            logger.warning("could not publish a round on the history stream", metadata: ["round": "\(round.roundID)", "error": "\(error)"])
        }
    }

    /// The error an interrupted round is closed with.
    static let interrupted = "interrupted: the planner stopped before recording this round's outcome; what it applied is not known"

    /// Publishes this node's rounds of `pool` that never reached the history stream, so every
    /// node's history ends up with them. With `closingInterrupted` (at start, before this node
    /// plans anything; one `rota run` per database) an unfinished round was left by a process that
    /// died mid-round: it is closed as interrupted first. Otherwise unfinished rounds are in flight
    /// and left alone, as are rounds finished in the last seconds (their own publish is under way).
    func publishPending(pool: String, closingInterrupted: Bool) async {
        var published = 0
        do {
            for (pending, actions) in try store.unpublishedRounds(pool: pool) {
                var round = pending
                if let finished = round.finishedAt {
                    if !closingInterrupted && Date().timeIntervalSince(finished) < 5 { continue }
                } else {
                    guard closingInterrupted else { continue }
                    let now = Date()
                    round.finishedAt = now
                    round.error = Self.interrupted
                    try store.recordOutcome(roundID: round.roundID, finishedAt: now, actions: [], error: Self.interrupted)
                    logger.warning("closed a round left unfinished by an earlier run", metadata: ["round": "\(round.roundID)"])
                }
                try await publish(round, actions)
                try store.markPublished(roundID: round.roundID)
                published += 1
            }
        } catch {
            logger.warning("could not publish pending rounds; will retry", metadata: ["error": "\(error)"])
        }
        if published > 0 { logger.info("published rounds that had not reached the history stream", metadata: ["rounds": "\(published)"]) }
    }

    /// Records every round of the history stream (from this node's cursor; idempotent), then
    /// follows it. Runs until cancelled. With the pool's history key, only entries signed with it
    /// are recorded: a forged entry neither enters the history nor takes a future round's ID.
    func replicate(into store: PlanStore) async {
        let follower = StreamFollower(stream: stream, store: store, pool: plan.pool, logger: logger)
        let unverified = signer.map { UnverifiedEntries(signer: $0, logger: logger) }
        await follower.run { [logger] batch in
            var rounds: [(RoundRecord, [ActionRecord])] = []
            for event in batch {
                if let unverified, !unverified.accepts(event) { continue }
                do {
                    rounds.append(try HistoryWire.decode(event.payload))
                } catch {
                    Counter(label: "rota_history_entries_skipped", dimensions: [("stream", "history")]).increment()
                    logger.error("ignoring an unreadable history entry", metadata: ["event": "\(event.id)", "error": "\(error)"])
                }
            }
            do {
                try store.recordRounds(rounds)
                return true
            } catch {
                // One bad round must not block the others: record them one by one.
                var stored = true
                for (round, actions) in rounds {
                    do {
                        try store.recordRound(round, actions: actions)
                    } catch let error as StoreError where error.code == .duplicateRound {
                        logger.error("refusing a round that duplicates a recorded one", metadata: ["round": "\(round.roundID)", "error": "\(error)"])
                    } catch {
                        stored = false
                        logger.error("could not record a replicated round", metadata: ["round": "\(round.roundID)", "error": "\(error)"])
                    }
                }
                return stored
            }
        }
    }
}

/// Rounds on the history stream: JSON, one complete round per entry. Public for readers of the
/// stream outside a node (`rota status`), so there is one definition of the format.
public enum HistoryWire {
    /// The entries' `n` field.
    static let entryName = "round"

    struct Round: Codable {
        var id: String
        var pool: String
        var producer: String
        var revision: Int
        var node: String
        var tick: Double
        var started: Double
        var finished: Double?
        var planned: [Planned]
        var counts: [Int]
        var error: String?
        var actions: [Action]
    }

    struct Planned: Codable {
        var job: String
        var action: String
        var hash: String?
    }

    struct Action: Codable {
        var job: String
        var action: String
        var outcome: String
        var error: String?
        var hash: String?
        var at: Double
        var reason: String?
        var actor: String?
    }

    static func encode(_ round: RoundRecord, _ actions: [ActionRecord]) throws -> [UInt8] {
        let wire = Round(
            id: round.roundID, pool: round.pool, producer: round.producer, revision: round.revision, node: round.node,
            tick: round.tick.timeIntervalSince1970, started: round.startedAt.timeIntervalSince1970,
            finished: round.finishedAt?.timeIntervalSince1970,
            planned: round.planned.map { Planned(job: $0.job, action: $0.action.rawValue, hash: $0.payloadHash) },
            counts: [round.started, round.stopped, round.failed], error: round.error,
            actions: actions.map { Action(job: $0.job, action: $0.action.rawValue, outcome: $0.outcome.rawValue, error: $0.error, hash: $0.payloadHash,
                at: $0.at.timeIntervalSince1970, reason: $0.reason, actor: $0.actor) }
        )
        return Array(try JSONEncoder().encode(wire))
    }

    /// A round and its actions from one history stream entry's payload; throws for a payload that
    /// is not a round (not JSON, a field missing, an unknown action or outcome).
    public static func decode(_ bytes: [UInt8]) throws -> (RoundRecord, [ActionRecord]) {
        let wire = try JSONDecoder().decode(Round.self, from: Data(bytes))
        // Nothing read from the stream is trusted: times 2000-2200 (a tick of 1e300 would trap
        // where the store turns it into milliseconds), revisions 0...2^53, counts 0...10^9.
        func time(_ value: Double, _ field: String) throws -> Date {
            guard value.isFinite, value >= 946_684_800, value <= 7_258_118_400 else {
                throw ServiceError(.invalidArgument, "round \(wire.id.prefix(200)): \(field) \(value) is out of range")
            }
            return Date(timeIntervalSince1970: value)
        }
        guard wire.revision >= 0, wire.revision <= 9_007_199_254_740_991, wire.counts.allSatisfy({ (0...1_000_000_000).contains($0) }) else {
            throw ServiceError(.invalidArgument, "round \(wire.id.prefix(200)): revision or counts out of range")
        }
        var round = RoundRecord(
            roundID: wire.id, pool: wire.pool, producer: wire.producer, revision: wire.revision, node: wire.node,
            tick: try time(wire.tick, "tick"), startedAt: try time(wire.started, "started"),
            planned: try wire.planned.map { planned in
                guard let action = ActionKind(rawValue: planned.action) else { throw ServiceError(.invalidArgument, "unknown action '\(planned.action)'") }
                return PlannedAction(job: planned.job, action: action, payloadHash: planned.hash)
            }
        )
        round.finishedAt = try wire.finished.map { try time($0, "finished") }
        if wire.counts.count == 3 {
            round.started = wire.counts[0]
            round.stopped = wire.counts[1]
            round.failed = wire.counts[2]
        }
        round.error = wire.error
        let actions = try wire.actions.map { action in
            guard let kind = ActionKind(rawValue: action.action), let outcome = ActionOutcome(rawValue: action.outcome) else {
                throw ServiceError(.invalidArgument, "unknown action or outcome in round \(wire.id.prefix(200))")
            }
            guard (action.reason?.utf8.count ?? 0) <= 64, (action.actor?.utf8.count ?? 0) <= 300 else {
                throw ServiceError(.invalidArgument, "round \(wire.id.prefix(200)): an action's reason or actor is too long")
            }
            return ActionRecord(job: action.job, action: kind, outcome: outcome, error: action.error, payloadHash: action.hash,
                                at: try time(action.at, "action time"), reason: action.reason, actor: action.actor)
        }
        return (round, actions)
    }
}
