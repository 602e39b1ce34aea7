import Foundation
import GRDB

/// What a round does to one job.
public enum ActionKind: String, Sendable, Hashable, CaseIterable {
    case start, stop, restart
}

/// How an action ended.
public enum ActionOutcome: String, Sendable, Hashable, CaseIterable {
    case started
    case alreadyRunning = "already-running"
    case stopped
    case notFound = "not-found"
    case failed
}

/// A planned action, recorded with the round's intent before it is applied.
public struct PlannedAction: Sendable, Hashable {
    public var job: String
    public var action: ActionKind
    public var payloadHash: String?

    public init(job: String, action: ActionKind, payloadHash: String? = nil) {
        self.job = job
        self.action = action
        self.payloadHash = payloadHash
    }
}

/// An applied action and its outcome.
public struct ActionRecord: Sendable, Hashable {
    public var job: String
    public var action: ActionKind
    public var outcome: ActionOutcome
    public var error: String?
    public var payloadHash: String?
    public var at: Date
    /// Why the action was taken (`retired`, `paused`); nil where the round's plan is the reason.
    public var reason: String?

    public init(job: String, action: ActionKind, outcome: ActionOutcome, error: String? = nil, payloadHash: String? = nil, at: Date,
                reason: String? = nil) {
        self.job = job
        self.action = action
        self.outcome = outcome
        self.error = error
        self.payloadHash = payloadHash
        self.at = at
        self.reason = reason
    }
}

/// A planning round: intent first (planned actions), outcome later (counts, error, actions).
public struct RoundRecord: Sendable, Hashable {
    public var roundID: String
    public var pool: String
    public var producer: String
    public var revision: Int
    public var node: String
    /// The tick's scheduled time: the fencing token.
    public var tick: Date
    public var startedAt: Date
    public var finishedAt: Date?
    public var planned: [PlannedAction]
    public var started = 0
    public var stopped = 0
    public var failed = 0
    public var error: String?

    public init(roundID: String, pool: String, producer: String, revision: Int, node: String, tick: Date, startedAt: Date,
        planned: [PlannedAction] = []) {
        self.roundID = roundID
        self.pool = pool
        self.producer = producer
        self.revision = revision
        self.node = node
        self.tick = tick
        self.startedAt = startedAt
        self.planned = planned
    }
}

/// Which rounds `rounds(matching:)` returns, newest first.
public struct HistoryFilter: Sendable {
    public var pool: String?
    public var producer: String?
    public var job: String?
    public var node: String?
    public var since: Date?
    public var until: Date?
    public var failedOnly = false
    public var limit = 100

    public init() {}
}

/// A job running at some instant according to the history.
public struct RunningJob: Sendable, Hashable {
    public var job: String
    public var producer: String
    /// Since when it has been running (its last start at or before the instant).
    public var since: Date
}

/// What a prune removed (or would remove, in a dry run).
public struct PruneReport: Sendable, Hashable {
    public var rounds: Int
    public var actions: Int

    public init(rounds: Int, actions: Int) {
        self.rounds = rounds
        self.actions = actions
    }
}

extension StoreError.Code {
    /// A round for the same producer and tick was already recorded under another ID.
    public static let duplicateRound = StoreError.Code("duplicateRound")
}

extension PlanStore {
    static func ms(_ date: Date) -> Int64 { Int64((date.timeIntervalSince1970 * 1000).rounded()) }
    static func date(_ ms: Int64) -> Date { Date(timeIntervalSince1970: Double(ms) / 1000) }

    /// Records a round's intent. Returns false when this round ID is already recorded (rounds arrive
    /// from several nodes; recording is idempotent). A different round for the same producer and
    /// tick is refused with `.duplicateRound`: two planners for one tick is a bug worth seeing.
    @discardableResult
    public func recordIntent(_ round: RoundRecord) throws(StoreError) -> Bool {
        do {
            return try database.write { db in
                var chain = try ChainState.load(db)
                let inserted = try Self.insertIntent(db, round, unpublished: true, chain: &chain)
                try chain.saveIfChanged(db)
                return inserted
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw Self.map(error, path: path, doing: "record a round in")
        }
    }

    /// Appends the round to the round chain (see HistoryChain.swift): its hash covers the previous
    /// round's hash, its identity and its intent, none of which change afterwards.
    private static func insertIntent(_ db: Database, _ round: RoundRecord, unpublished: Bool, chain: inout ChainState) throws -> Bool {
        if try Bool.fetchOne(db, sql: "SELECT 1 FROM round WHERE round_id = ?", arguments: [round.roundID]) == true {
            if !unpublished {
                // This node's own round came back from the stream: it is published.
                try db.cachedStatement(sql: "UPDATE round SET unpublished = 0 WHERE round_id = ? AND unpublished = 1")
                    .execute(arguments: [round.roundID])
            }
            return false
        }
        if let other = try String.fetchOne(db, sql: "SELECT round_id FROM round WHERE pool = ? AND producer = ? AND tick_ms = ?",
            arguments: [round.pool, round.producer, ms(round.tick)])
        {
            throw StoreError(.duplicateRound,
                "round \(round.roundID) of \(round.producer) at tick \(ms(round.tick)) duplicates round \(other)")
        }
        let intent = "[" + round.planned.map { action in
            "{\"job\":\(jsonString(action.job)),\"action\":\"\(action.action.rawValue)\"}"
        }.joined(separator: ",") + "]"
        let tickMS = ms(round.tick), startedMS = ms(round.startedAt)
        let intentHash = chain.hasher.intentHash(intent)
        let hash = chain.hasher.roundHash(prev: chain.roundHead, roundID: round.roundID, pool: round.pool, producer: round.producer,
            revision: Int64(round.revision), node: round.node, tickMS: tickMS, startedMS: startedMS, intentHash: intentHash)
        try db.cachedStatement(sql: """
            INSERT INTO round (round_id, pool, producer, revision, node, tick_ms, started_ms, intent, prev_hash, intent_hash, hash, unpublished)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """).execute(arguments: [round.roundID, round.pool, round.producer, round.revision, round.node,
                tickMS, startedMS, intent, Data(chain.roundHead), Data(intentHash), Data(hash), unpublished ? 1 : 0])
        chain.roundHead = hash
        chain.changed = true
        return true
    }

    /// Records a round's outcome and its actions. Idempotent: a round already finished is left as is.
    public func recordOutcome(roundID: String, finishedAt: Date, actions: [ActionRecord], error: String? = nil) throws(StoreError) {
        do {
            try database.write { db in
                var jobIDs: [String: Int64] = [:]
                var chain = try ChainState.load(db)
                try Self.insertOutcome(db, roundID: roundID, finishedAt: finishedAt, actions: actions, error: error, jobIDs: &jobIDs,
                    chain: &chain)
                try chain.saveIfChanged(db)
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw Self.map(error, path: path, doing: "record a round in")
        }
    }

    /// Intent and outcome in one transaction: for rounds learnt from another node, already complete.
    public func recordRound(_ round: RoundRecord, actions: [ActionRecord]) throws(StoreError) {
        try recordRounds([(round, actions)])
    }

    /// Several complete rounds in one transaction: how a node catching up on the history stream
    /// records what it missed. A write touches one index page per distinct job, so batching
    /// rounds is what keeps catch-up fast.
    public func recordRounds(_ rounds: [(RoundRecord, [ActionRecord])]) throws(StoreError) {
        do {
            try database.write { db in
                var jobIDs: [String: Int64] = [:]
                var chain = try ChainState.load(db)
                for (round, actions) in rounds {
                    _ = try Self.insertIntent(db, round, unpublished: false, chain: &chain)
                    try Self.insertOutcome(db, roundID: round.roundID, finishedAt: round.finishedAt ?? round.startedAt, actions: actions,
                        error: round.error, jobIDs: &jobIDs, chain: &chain)
                }
                try chain.saveIfChanged(db)
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw Self.map(error, path: path, doing: "record a round in")
        }
    }

    /// `jobIDs` caches job-key lookups for the rest of the transaction. Appends the outcome to the
    /// outcome chain (see HistoryChain.swift), unless the round predates the chain.
    private static func insertOutcome(
        _ db: Database, roundID: String, finishedAt: Date, actions: [ActionRecord], error: String?, jobIDs: inout [String: Int64],
        chain: inout ChainState
    ) throws {
        let find = try db.cachedStatement(sql: "SELECT id, finished_ms, hash FROM round WHERE round_id = ?")
        guard let row = try Row.fetchOne(find, arguments: [roundID]) else {
            throw StoreError(.failed, "no round \(roundID) to record an outcome for")
        }
        let id: Int64 = row[0]
        if !row.hasNull(atIndex: 1) { return }
        let roundHash = (row[2] as Data?).map { [UInt8]($0) }
        chain.hasher.startActions()
        let insertJob = try db.cachedStatement(sql: "INSERT INTO job (key) VALUES (?)")
        let findJob = try db.cachedStatement(sql: "SELECT id FROM job WHERE key = ?")
        let insertAction = try db.cachedStatement(sql: """
            INSERT INTO action (round, seq, job, action, outcome, error, payload_hash, at_ms, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            """)
        var started = 0, stopped = 0, failed = 0
        for (seq, action) in actions.enumerated() {
            var jobID = jobIDs[action.job]
            if jobID == nil {
                jobID = try Int64.fetchOne(findJob, arguments: [action.job])
            }
            if jobID == nil {
                try insertJob.execute(arguments: [action.job])
                jobID = db.lastInsertedRowID
            }
            guard let jobID else { continue }
            jobIDs[action.job] = jobID
            let atMS = ms(action.at)
            try insertAction.execute(arguments: [id, seq, jobID, action.action.rawValue, action.outcome.rawValue, action.error,
                action.payloadHash, atMS, action.reason])
            if roundHash != nil {
                chain.hasher.addAction(seq: Int64(seq), job: action.job, action: action.action.rawValue, outcome: action.outcome.rawValue,
                    error: action.error, payloadHash: action.payloadHash, atMS: atMS, reason: action.reason)
            }
            switch action.outcome {
            case .started: started += 1
            case .stopped: stopped += 1
            case .failed: failed += 1
            case .alreadyRunning, .notFound: break
            }
        }
        let finishedMS = ms(finishedAt)
        guard let roundHash else {
            // Recorded before the chain existed (migration 0003): its outcome stays unchained too.
            try db.cachedStatement(sql: "UPDATE round SET finished_ms = ?, started = ?, stopped = ?, failed = ?, error = ? WHERE id = ?")
                .execute(arguments: [finishedMS, started, stopped, failed, error, id])
            return
        }
        let actionsHash = chain.hasher.finishActions()
        let seq = chain.outcomeSeq + 1
        let outcomeHash = chain.hasher.outcomeHash(prev: chain.outcomeHead, roundHash: roundHash, seq: seq, finishedMS: finishedMS,
            started: Int64(started), stopped: Int64(stopped), failed: Int64(failed), error: error, actionsHash: actionsHash)
        try db.cachedStatement(sql: """
            UPDATE round SET finished_ms = ?, started = ?, stopped = ?, failed = ?, error = ?,
                outcome_seq = ?, outcome_prev = ?, actions_hash = ?, outcome_hash = ? WHERE id = ?
            """).execute(arguments: [finishedMS, started, stopped, failed, error, seq, Data(chain.outcomeHead), Data(actionsHash),
                Data(outcomeHash), id])
        chain.outcomeSeq = seq
        chain.outcomeHead = outcomeHash
        chain.changed = true
    }

    /// This node's rounds of `pool` not yet on the history stream, oldest first, with their
    /// actions (unfinished ones have none yet).
    public func unpublishedRounds(pool: String) throws(StoreError) -> [(RoundRecord, [ActionRecord])] {
        let ids: [String]
        do {
            ids = try database.read { db in
                try String.fetchAll(db, sql: "SELECT round_id FROM round WHERE pool = ? AND unpublished = 1 ORDER BY id", arguments: [pool])
            }
        } catch {
            throw Self.map(error, path: path, doing: "read")
        }
        var rounds: [(RoundRecord, [ActionRecord])] = []
        for id in ids {
            if let found = try round(id: id) { rounds.append(found) }
        }
        return rounds
    }

    /// Marks a round as put on the history stream.
    public func markPublished(roundID: String) throws(StoreError) {
        do {
            try database.write { db in
                try db.execute(sql: "UPDATE round SET unpublished = 0 WHERE round_id = ?", arguments: [roundID])
            }
        } catch {
            throw Self.map(error, path: path, doing: "update")
        }
    }

    /// Rounds matching `filter`, newest first.
    public func rounds(matching filter: HistoryFilter) throws(StoreError) -> [RoundRecord] {
        var conditions: [String] = []
        var arguments: [any DatabaseValueConvertible] = []
        if let pool = filter.pool { conditions.append("r.pool = ?"); arguments.append(pool) }
        if let producer = filter.producer { conditions.append("r.producer = ?"); arguments.append(producer) }
        if let node = filter.node { conditions.append("r.node = ?"); arguments.append(node) }
        if let since = filter.since { conditions.append("r.started_ms >= ?"); arguments.append(Self.ms(since)) }
        if let until = filter.until { conditions.append("r.started_ms < ?"); arguments.append(Self.ms(until)) }
        if filter.failedOnly { conditions.append("(r.failed > 0 OR r.error IS NOT NULL)") }
        if let job = filter.job {
            var clause = "r.id IN (SELECT a.round FROM action a WHERE a.job = (SELECT id FROM job WHERE key = ?)"
            arguments.append(job)
            if let since = filter.since { clause += " AND a.at_ms >= ?"; arguments.append(Self.ms(since)) }
            if let until = filter.until { clause += " AND a.at_ms < ?"; arguments.append(Self.ms(until)) }
            conditions.append(clause + ")")
        }
        let sql = "SELECT r.* FROM round r" + (conditions.isEmpty ? "" : " WHERE " + conditions.joined(separator: " AND "))
            + " ORDER BY r.started_ms DESC, r.id DESC LIMIT \(max(0, filter.limit))"
        do {
            return try database.read { db in
                try Row.fetchAll(db, sql: sql, arguments: StatementArguments(arguments)).map(Self.round)
            }
        } catch {
            throw Self.map(error, path: path, doing: "read")
        }
    }

    /// One round with its actions, or nil.
    public func round(id roundID: String) throws(StoreError) -> (RoundRecord, [ActionRecord])? {
        do {
            return try database.read { db in
                guard let row = try Row.fetchOne(db, sql: "SELECT * FROM round WHERE round_id = ?", arguments: [roundID]) else { return nil }
                let actions = try Row.fetchAll(db, sql: """
                    SELECT j.key, a.action, a.outcome, a.error, a.payload_hash, a.at_ms, a.reason
                    FROM action a JOIN job j ON j.id = a.job WHERE a.round = ? ORDER BY a.seq
                    """, arguments: [row["id"] as Int64]).map { row in
                    ActionRecord(job: row["key"], action: ActionKind(rawValue: row["action"]) ?? .start,
                        outcome: ActionOutcome(rawValue: row["outcome"]) ?? .failed, error: row["error"],
                        payloadHash: row["payload_hash"], at: Self.date(row["at_ms"]), reason: row["reason"])
                }
                return (Self.round(row), actions)
            }
        } catch {
            throw Self.map(error, path: path, doing: "read")
        }
    }

    private static func round(_ row: Row) -> RoundRecord {
        var round = RoundRecord(roundID: row["round_id"], pool: row["pool"], producer: row["producer"], revision: row["revision"],
            node: row["node"], tick: date(row["tick_ms"]), startedAt: date(row["started_ms"]))
        round.finishedAt = (row["finished_ms"] as Int64?).map(date)
        round.started = row["started"]
        round.stopped = row["stopped"]
        round.failed = row["failed"]
        round.error = row["error"]
        if let intent = (row["intent"] as String?)?.data(using: .utf8),
            let items = try? JSONSerialization.jsonObject(with: intent) as? [[String: String]]
        {
            round.planned = items.compactMap { item in
                guard let job = item["job"], let action = item["action"].flatMap(ActionKind.init(rawValue:)) else { return nil }
                return PlannedAction(job: job, action: action)
            }
        }
        return round
    }

    /// Jobs running at `instant` according to the history: those whose last state-changing action
    /// at or before it left them running (started or already running).
    public func jobsRunning(at instant: Date) throws(StoreError) -> [RunningJob] {
        let at = Self.ms(instant)
        do {
            return try database.read { db in
                // One index seek per job (action_by_job), not a scan of the whole history.
                // Both subqueries walk action_by_job backwards from T and stop at the first match.
                try Row.fetchAll(db, sql: """
                    SELECT j.key, last.at_ms, last.outcome, r.producer,
                           (SELECT s.at_ms FROM action s WHERE s.job = j.id AND s.at_ms <= ? AND s.outcome = 'started'
                            ORDER BY s.at_ms DESC LIMIT 1) AS started_ms
                    FROM job j
                    JOIN action last ON (last.round, last.seq) = (
                        SELECT a.round, a.seq FROM action a
                        WHERE a.job = j.id AND a.at_ms <= ? AND a.outcome IN ('started', 'already-running', 'stopped', 'not-found')
                        ORDER BY a.at_ms DESC LIMIT 1)
                    JOIN round r ON r.id = last.round
                    WHERE last.outcome IN ('started', 'already-running')
                    ORDER BY j.key
                    """, arguments: [at, at]).map { row in
                    let since: Int64 = (row["started_ms"] as Int64?) ?? row["at_ms"]
                    return RunningJob(job: row["key"], producer: row["producer"], since: Self.date(since))
                }
            }
        } catch {
            throw Self.map(error, path: path, doing: "read")
        }
    }

    /// Deletes rounds (and their actions) started before `olderThan`, and/or all but the newest
    /// `keep` rounds. With `dryRun`, only counts what would go.
    ///
    /// The deleted rounds need not be a prefix of the hash chains (rounds are recorded in any
    /// order): before deleting, the chains' bridges are rewritten so that every remaining round
    /// still links to the one before it, and verification passes (see HistoryChain.swift).
    public func prune(olderThan: Date?, keep: Int?, dryRun: Bool) throws(StoreError) -> PruneReport {
        var conditions: [String] = []
        var arguments: [any DatabaseValueConvertible] = []
        if let olderThan { conditions.append("started_ms < ?"); arguments.append(Self.ms(olderThan)) }
        if let keep {
            conditions.append("id NOT IN (SELECT id FROM round ORDER BY started_ms DESC, id DESC LIMIT ?)")
            arguments.append(max(0, keep))
        }
        guard !conditions.isEmpty else { return PruneReport(rounds: 0, actions: 0) }
        // Both limits must allow the deletion: old enough AND beyond the newest `keep`.
        let selection = "SELECT id FROM round WHERE " + conditions.joined(separator: " AND ")
        do {
            return try database.write { db in
                let rounds = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM (\(selection))", arguments: StatementArguments(arguments)) ?? 0
                let actions = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM action WHERE round IN (\(selection))",
                    arguments: StatementArguments(arguments)) ?? 0
                if !dryRun && rounds > 0 {
                    let state = try ChainState.load(db)
                    try Self.rebridge(db, .round, entries: """
                        SELECT id, prev_hash, hash, id IN (\(selection)) FROM round WHERE hash IS NOT NULL ORDER BY id
                        """, arguments: StatementArguments(arguments), head: state.roundHead)
                    try Self.rebridge(db, .outcome, entries: """
                        SELECT id, outcome_prev, outcome_hash, id IN (\(selection)) FROM round
                        WHERE outcome_hash IS NOT NULL AND outcome_seq IS NOT NULL ORDER BY outcome_seq
                        """, arguments: StatementArguments(arguments), head: state.outcomeHead)
                    try db.execute(sql: "DELETE FROM action WHERE round IN (\(selection))", arguments: StatementArguments(arguments))
                    try db.execute(sql: "DELETE FROM round WHERE id IN (\(selection))", arguments: StatementArguments(arguments))
                }
                return PruneReport(rounds: rounds, actions: actions)
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw Self.map(error, path: path, doing: "prune")
        }
    }
}

/// A JSON string literal.
func jsonString(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        default:
            if scalar.value < 0x20 { out += String(format: "\\u%04x", scalar.value) } else { out.unicodeScalars.append(scalar) }
        }
    }
    return out + "\""
}
