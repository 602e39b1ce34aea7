import Foundation
import Logging
import Rota
import RotaPlans
import RotaRedis
import RotaStore
import RotaStreams
import Synchronization

/// Plans the rounds of one producer from its stored definition: at each tick it computes the jobs
/// desired at the tick's scheduled time (windows on the producer's clock, bounds, mode) and records
/// the round's intent before the schedule applies it.
final class ProducerPlanner: JobProducer {
    let name: String
    let pool: String
    let node: Node
    let history: RoundLog

    private struct State {
        var definition: ProducerDefinition
        var revision: Int
        /// Rounds planned by this node and not applied yet, by tick token.
        var open: [Int64: OpenRound] = [:]
    }

    struct OpenRound {
        var record: RoundRecord
        var starts: Set<String>
        var payloadHashes: [String: String]
    }

    private let state: Mutex<State>

    init(definition: ProducerDefinition, revision: Int, pool: String, node: Node, history: RoundLog) {
        self.name = definition.name
        self.pool = pool
        self.node = node
        self.history = history
        self.state = Mutex(State(definition: definition, revision: revision))
    }

    /// A new revision of the definition, used from the next round on.
    func update(_ definition: ProducerDefinition, revision: Int) {
        state.withLock {
            $0.definition = definition
            $0.revision = revision
        }
    }

    var revision: Int { state.withLock { $0.revision } }
    var interval: Duration { state.withLock { $0.definition.interval } }

    func plan(for tick: Tick) async throws -> JobPlan {
        let (definition, revision) = state.withLock { ($0.definition, $0.revision) }
        let zone = TimeZone(identifier: definition.timeZone) ?? TimeZone(secondsFromGMT: 0) ?? .current
        var start: [PlannedJob] = []
        var idle: [String] = []
        var hashes: [String: String] = [:]
        for job in definition.jobs {
            guard job.isDesired(at: tick.scheduled, in: zone) else {
                idle.append(job.key)
                continue
            }
            let envelope = try JobEnvelope(handler: job.handler, payload: job.payload).encoded()
            start.append(PlannedJob(key: job.key, payload: envelope))
            hashes[job.key] = fingerprint(String(decoding: envelope, as: UTF8.self))
        }
        let plan = definition.mode == .exact
            ? JobPlan(start: start, stopAll: true)
            : JobPlan(start: start, stop: definition.stop + idle)
        // The intent: what this round means to change, judged against the pool as this node sees it.
        var planned: [PlannedAction] = []
        for job in start {
            switch try? await node.jobPayload(job.key) {
            case nil: planned.append(PlannedAction(job: job.key, action: .start, payloadHash: hashes[job.key]))
            case job.payload?: break
            case _?: planned.append(PlannedAction(job: job.key, action: .restart, payloadHash: hashes[job.key]))
            }
        }
        for key in plan.stop where (try? await node.jobPayload(key)) != nil {
            planned.append(PlannedAction(job: key, action: .stop))
        }
        let record = RoundRecord(
            roundID: "\(pool)/\(name)/\(tick.token)", pool: pool, producer: name, revision: revision,
            node: node.id, tick: tick.scheduled, startedAt: Date(), planned: planned
        )
        try history.recordIntent(record)
        state.withLock { $0.open[tick.token] = OpenRound(record: record, starts: Set(start.map(\.key)), payloadHashes: hashes) }
        return plan
    }

    /// The schedule applied this node's plan: record and publish the outcome.
    func finish(_ report: PlanReport) async -> RoundRecord? {
        guard let open = state.withLock({ $0.open.removeValue(forKey: report.tick.token) }) else { return nil }
        let now = Date()
        var record = open.record
        var actions: [ActionRecord] = []
        for (key, outcome) in report.outcomes {
            let isStart = open.starts.contains(key)
            let hash = open.payloadHashes[key]
            switch outcome {
            case .started:
                actions.append(ActionRecord(job: key, action: .start, outcome: .started, payloadHash: hash, at: now))
                record.started += 1
            case .alreadyRunning:
                // Nothing changed: a row per running job per round would bury the changes (100
                // jobs at 1 s is 8.6 million rows a day) and say nothing the previous start did not.
                break
            case .restarted:
                actions.append(ActionRecord(job: key, action: .restart, outcome: .started, payloadHash: hash, at: now))
                record.started += 1
            case .stopped:
                actions.append(ActionRecord(job: key, action: .stop, outcome: .stopped, at: now))
                record.stopped += 1
            case .notFound:
                actions.append(ActionRecord(job: key, action: .stop, outcome: .notFound, at: now))
            case .failed(let message):
                actions.append(ActionRecord(job: key, action: isStart ? .start : .stop, outcome: .failed, error: message, payloadHash: hash, at: now))
                record.failed += 1
            }
        }
        record.finishedAt = now
        await history.recordOutcome(record, actions: actions)
        return record
    }
}

/// Where rounds go: this node's SQLite history, and the pool's history stream so that every other
/// node records them too (idempotently, by round ID).
final class RoundLog: Sendable {
    let store: PlanStore
    let stream: RedisStream
    let logger: Logger

    /// The history stream keeps about this many rounds: a node down for longer than it takes the
    /// pool to plan them catches up only on what is left.
    static let streamLength = 10_000

    init(store: PlanStore, keySpace: RedisKeySpace, client: RedisClient, logger: Logger) throws {
        self.store = store
        self.stream = try RedisStream(name: "history", keySpace: keySpace, client: client, options: .init(maxLength: Self.streamLength))
        self.logger = logger
    }

    func recordIntent(_ round: RoundRecord) throws {
        try store.recordIntent(round)
    }

    func recordOutcome(_ round: RoundRecord, actions: [ActionRecord]) async {
        do {
            try store.recordOutcome(roundID: round.roundID, finishedAt: round.finishedAt ?? Date(), actions: actions, error: round.error)
        } catch {
            logger.error("could not record a round's outcome", metadata: ["round": "\(round.roundID)", "error": "\(error)"])
        }
        do {
            // No write here to mark it published: the round comes back on the history stream
            // within moments and `replicate` clears the flag in its batched transaction (one
            // write transaction per round less on the planning path).
            try await stream.add(name: "round", payload: try HistoryWire.encode(round, actions))
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
                try await stream.add(name: "round", payload: try HistoryWire.encode(round, actions))
                try store.markPublished(roundID: round.roundID)
                published += 1
            }
        } catch {
            logger.warning("could not publish pending rounds; will retry", metadata: ["error": "\(error)"])
        }
        if published > 0 { logger.info("published rounds that had not reached the history stream", metadata: ["rounds": "\(published)"]) }
    }

    /// Records every round of the history stream, from its oldest entry (idempotent), then follows
    /// it. Runs until cancelled.
    func replicate(into store: PlanStore) async {
        do {
            let reader = try StreamReader(stream: stream, options: .init(blockDuration: .seconds(2), maxPolled: 1000, start: .oldest), logger: logger)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await reader.run() }
                defer { group.cancelAll() }
                while let batch = try await reader.events.nextBatch(max: 1000) {
                    var rounds: [(RoundRecord, [ActionRecord])] = []
                    for event in batch {
                        do {
                            rounds.append(try HistoryWire.decode(event.payload))
                        } catch {
                            logger.error("ignoring an unreadable history entry", metadata: ["event": "\(event.id)", "error": "\(error)"])
                        }
                    }
                    do {
                        try store.recordRounds(rounds)
                    } catch {
                        // One bad round must not block the others: record them one by one.
                        for (round, actions) in rounds {
                            do {
                                try store.recordRound(round, actions: actions)
                            } catch {
                                logger.error("could not record a replicated round", metadata: ["round": "\(round.roundID)", "error": "\(error)"])
                            }
                        }
                    }
                }
            }
        } catch {
            if !Task.isCancelled { logger.error("history replication stopped", metadata: ["error": "\(error)"]) }
        }
    }
}

/// Rounds on the history stream: JSON, one complete round per entry. Public for readers of the
/// stream outside a node (`rota status`), so there is one definition of the format.
public enum HistoryWire {
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
    }

    static func encode(_ round: RoundRecord, _ actions: [ActionRecord]) throws -> [UInt8] {
        let wire = Round(
            id: round.roundID, pool: round.pool, producer: round.producer, revision: round.revision, node: round.node,
            tick: round.tick.timeIntervalSince1970, started: round.startedAt.timeIntervalSince1970,
            finished: round.finishedAt?.timeIntervalSince1970,
            planned: round.planned.map { Planned(job: $0.job, action: $0.action.rawValue, hash: $0.payloadHash) },
            counts: [round.started, round.stopped, round.failed], error: round.error,
            actions: actions.map { Action(job: $0.job, action: $0.action.rawValue, outcome: $0.outcome.rawValue, error: $0.error, hash: $0.payloadHash, at: $0.at.timeIntervalSince1970) }
        )
        return Array(try JSONEncoder().encode(wire))
    }

    /// A round and its actions from one history stream entry's payload; throws for a payload that
    /// is not a round (not JSON, a field missing, an unknown action or outcome).
    public static func decode(_ bytes: [UInt8]) throws -> (RoundRecord, [ActionRecord]) {
        let wire = try JSONDecoder().decode(Round.self, from: Data(bytes))
        var round = RoundRecord(
            roundID: wire.id, pool: wire.pool, producer: wire.producer, revision: wire.revision, node: wire.node,
            tick: Date(timeIntervalSince1970: wire.tick), startedAt: Date(timeIntervalSince1970: wire.started),
            planned: try wire.planned.map { planned in
                guard let action = ActionKind(rawValue: planned.action) else { throw ServiceError(.invalidArgument, "unknown action '\(planned.action)'") }
                return PlannedAction(job: planned.job, action: action, payloadHash: planned.hash)
            }
        )
        round.finishedAt = wire.finished.map { Date(timeIntervalSince1970: $0) }
        if wire.counts.count == 3 {
            round.started = wire.counts[0]
            round.stopped = wire.counts[1]
            round.failed = wire.counts[2]
        }
        round.error = wire.error
        let actions = try wire.actions.map { action in
            guard let kind = ActionKind(rawValue: action.action), let outcome = ActionOutcome(rawValue: action.outcome) else {
                throw ServiceError(.invalidArgument, "unknown action or outcome in round \(wire.id)")
            }
            return ActionRecord(job: action.job, action: kind, outcome: outcome, error: action.error, payloadHash: action.hash,
                                at: Date(timeIntervalSince1970: action.at))
        }
        return (round, actions)
    }
}
