import Foundation
import GRDB
import GRDBSQLite

/// What a round does to one job.
public enum ActionKind: String, Sendable, Hashable, CaseIterable {
    case start, stop, restart
    /// A manual notification sent to a running job.
    case notify
}

/// How an action ended.
public enum ActionOutcome: String, Sendable, Hashable, CaseIterable {
    case started
    case alreadyRunning = "already-running"
    case stopped
    case notFound = "not-found"
    case failed
    /// The worker's stop handler failed: the job still runs. Counted as failed.
    case stopFailed = "stop-failed"
    /// A manual notification was delivered.
    case notified
    /// No active worker has the capability the job requires: the job waits in the pool and starts
    /// once such a worker joins (the action's `error` names the capability). Not a failure: it
    /// counts as neither started nor failed.
    case unplaced
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
    /// Who decided: the node's name, or `user@host` for an action taken from the command line.
    /// Chained when set, so actions recorded before it existed verify as they did.
    public var actor: String?

    public init(job: String, action: ActionKind, outcome: ActionOutcome, error: String? = nil, payloadHash: String? = nil, at: Date,
                reason: String? = nil, actor: String? = nil) {
        self.job = job
        self.action = action
        self.outcome = outcome
        self.error = error
        self.payloadHash = payloadHash
        self.at = at
        self.reason = reason
        self.actor = actor
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
    /// The producer whose round started it; empty when no round did (a manual or requeued start
    /// whose origin the history does not have).
    public var producer: String
    /// Since when it has been running (its last start at or before the instant).
    public var since: Date
    /// Where it ran, when the pool's job log says (nil for history recorded before the job log).
    public var worker: String?
    public var node: String?
}

/// What a prune removed (or would remove, in a dry run).
public struct PruneReport: Sendable, Hashable {
    public var rounds: Int
    public var actions: Int
    /// Job events removed (only `olderThan` removes them: `keep` counts rounds).
    public var jobEvents: Int

    public init(rounds: Int, actions: Int, jobEvents: Int = 0) {
        self.rounds = rounds
        self.actions = actions
        self.jobEvents = jobEvents
    }
}

extension StoreError.Code {
    /// A round for the same producer and tick was already recorded under another ID.
    public static let duplicateRound = StoreError.Code("duplicateRound")
}

extension PlanStore {
    /// Unix milliseconds, saturating: a date from another node's data never traps.
    static func ms(_ date: Date) -> Int64 {
        let value = (date.timeIntervalSince1970 * 1000).rounded()
        guard value.isFinite else { return 0 }
        if value >= 9.2e18 { return Int64.max }
        if value <= -9.2e18 { return Int64.min }
        return Int64(value)
    }
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
    static func insertIntent(_ db: Database, _ round: RoundRecord, unpublished: Bool, chain: inout ChainState) throws -> Bool {
        if try Bool.fetchOne(db.cachedStatement(sql: "SELECT 1 FROM round WHERE round_id = ?"), arguments: [round.roundID]) == true {
            if !unpublished {
                // This node's own round came back from the stream: it is published.
                try db.cachedStatement(sql: "UPDATE round SET unpublished = 0 WHERE round_id = ? AND unpublished = 1")
                    .execute(arguments: [round.roundID])
            }
            return false
        }
        if let other = try String.fetchOne(db.cachedStatement(sql: "SELECT round_id FROM round WHERE pool = ? AND producer = ? AND tick_ms = ?"),
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
    static func insertOutcome(
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
        var keys: [ActionKeys] = []
        keys.reserveCapacity(actions.count)
        var started = 0, stopped = 0, failed = 0
        for (seq, action) in actions.enumerated() {
            let jobID = try Self.jobID(db, action.job, cache: &jobIDs)
            let atMS = ms(action.at)
            keys.append(ActionKeys(job: jobID, atMS: atMS))
            if roundHash != nil {
                chain.hasher.addAction(seq: Int64(seq), job: action.job, action: action.action.rawValue, outcome: action.outcome.rawValue,
                    error: action.error, payloadHash: action.payloadHash, atMS: atMS, reason: action.reason, actor: action.actor)
            }
            switch action.outcome {
            case .started: started += 1
            case .stopped: stopped += 1
            case .failed, .stopFailed: failed += 1
            case .alreadyRunning, .notFound, .notified, .unplaced: break
            }
        }
        try insertActions(db, round: id, actions, keys)
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

    /// An action row's job id and time, as its INSERT binds them.
    private struct ActionKeys {
        var job: Int64
        var atMS: Int64
    }

    private static let actionColumns: Int32 = 10

    /// `INSERT INTO action` of 1, 2, 4, … 64 rows. One statement per row paid SQLite's
    /// per-statement work (transaction check, opening the table's and both indexes' cursors,
    /// halting) on every row: about a third of the recording time. 64 rows of 10 values stay under
    /// the 999 variables an older SQLite allows.
    ///
    /// `OR FAIL`: with the default ABORT, a statement writing several rows keeps a statement
    /// journal to undo itself alone, spilled to a temporary file (1.46M `pwrite`s against 48k for
    /// a 1M-row history). Nothing here goes on after a failed insert: the error rolls back the
    /// whole transaction, as before.
    private static let insertActionsSQL: [String] = (0...6).map { power in
        let row = "(" + Array(repeating: "?", count: Int(actionColumns)).joined(separator: ", ") + ")"
        return "INSERT OR FAIL INTO action (round, seq, job, action, outcome, error, payload_hash, at_ms, reason, actor) VALUES "
            + Array(repeating: row, count: 1 << power).joined(separator: ", ")
    }

    /// Writes a round's action rows in chunks of the largest size that fits, so that only seven
    /// statements are ever prepared.
    ///
    /// Values are bound with SQLite's C API, and GRDB executes the statement (its checks, errors
    /// and cache stay in charge): `StatementArguments` went through GRDB's unspecialized generic
    /// initializer, a key-path projection per value, 15 % of the recording time.
    private static func insertActions(_ db: Database, round: Int64, _ actions: [ActionRecord], _ keys: [ActionKeys]) throws {
        var done = 0
        var power = insertActionsSQL.count - 1
        while done < actions.count {
            while 1 << power > actions.count - done { power -= 1 }
            let chunk = 1 << power
            let statement = try db.cachedStatement(sql: insertActionsSQL[power])
            // Resets, clears the previous bindings and tells GRDB the arguments are bound.
            statement.setUncheckedArguments(StatementArguments())
            for offset in 0..<chunk {
                let seq = done + offset, action = actions[seq], base = Int32(offset) * actionColumns
                try bind(statement, base + 1, round)
                try bind(statement, base + 2, Int64(seq))
                try bind(statement, base + 3, keys[seq].job)
                try bind(statement, base + 4, action.action.rawValue)
                try bind(statement, base + 5, action.outcome.rawValue)
                try bind(statement, base + 6, action.error)
                try bind(statement, base + 7, action.payloadHash)
                try bind(statement, base + 8, keys[seq].atMS)
                try bind(statement, base + 9, action.reason)
                try bind(statement, base + 10, action.actor)
            }
            try statement.execute()
            done += chunk
        }
    }

    private static func bind(_ statement: Statement, _ index: Int32, _ value: Int64) throws {
        try check(sqlite3_bind_int64(statement.sqliteStatement, index, value), statement)
    }

    /// Copied by SQLite (SQLITE_TRANSIENT) and NUL-terminated, as GRDB binds a String.
    private static func bind(_ statement: Statement, _ index: Int32, _ value: String?) throws {
        guard let value else { return try check(sqlite3_bind_null(statement.sqliteStatement, index), statement) }
        try check(sqlite3_bind_text(statement.sqliteStatement, index, value, -1, transient), statement)
    }

    private static func check(_ code: Int32, _ statement: Statement) throws {
        guard code == SQLITE_OK else { throw DatabaseError(resultCode: ResultCode(rawValue: code), sql: statement.sql) }
    }

    private static let transient = unsafeBitCast(OpaquePointer(bitPattern: -1), to: sqlite3_destructor_type.self)

    /// The row id of job `key` in `job`, created when new; `cache` keeps lookups for the rest of
    /// the transaction.
    static func jobID(_ db: Database, _ key: String, cache: inout [String: Int64]) throws -> Int64 {
        if let id = cache[key] { return id }
        let id: Int64
        if let found = try Int64.fetchOne(db.cachedStatement(sql: "SELECT id FROM job WHERE key = ?"), arguments: [key]) {
            id = found
        } else {
            try db.cachedStatement(sql: "INSERT INTO job (key) VALUES (?)").execute(arguments: [key])
            id = db.lastInsertedRowID
        }
        cache[key] = id
        return id
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

    /// How many of each round's actions ended `unplaced` (a job waiting for a worker with its
    /// capability), by round ID; rounds without any are left out. Not a column of `round`: the
    /// round's counts (started, stopped, failed) are chained, and an unplaced job is none of them.
    public func unplacedCounts(roundIDs: [String]) throws(StoreError) -> [String: Int] {
        guard !roundIDs.isEmpty else { return [:] }
        do {
            return try database.read { db in
                var counts: [String: Int] = [:]
                // One seek per round on the action primary key (round, seq).
                let statement = try db.cachedStatement(sql: """
                    SELECT COUNT(*) FROM action WHERE round = (SELECT id FROM round WHERE round_id = ?) AND outcome = 'unplaced'
                    """)
                for roundID in Set(roundIDs) {
                    let count = try Int.fetchOne(statement, arguments: [roundID]) ?? 0
                    if count > 0 { counts[roundID] = count }
                }
                return counts
            }
        } catch {
            throw Self.map(error, path: path, doing: "read")
        }
    }

    /// One round with its actions, or nil.
    public func round(id roundID: String) throws(StoreError) -> (RoundRecord, [ActionRecord])? {
        do {
            return try database.read { db in try Self.readRound(db, roundID: roundID) }
        } catch {
            throw Self.map(error, path: path, doing: "read")
        }
    }

    static func readRound(_ db: Database, roundID: String) throws -> (RoundRecord, [ActionRecord])? {
        guard let row = try Row.fetchOne(db, sql: "SELECT * FROM round WHERE round_id = ?", arguments: [roundID]) else { return nil }
        let actions = try Row.fetchAll(db, sql: """
            SELECT j.key, a.action, a.outcome, a.error, a.payload_hash, a.at_ms, a.reason, a.actor
            FROM action a JOIN job j ON j.id = a.job WHERE a.round = ? ORDER BY a.seq
            """, arguments: [row["id"] as Int64]).map { row in
            ActionRecord(job: row["key"], action: ActionKind(rawValue: row["action"]) ?? .start,
                outcome: ActionOutcome(rawValue: row["outcome"]) ?? .failed, error: row["error"],
                payloadHash: row["payload_hash"], at: Self.date(row["at_ms"]), reason: row["reason"], actor: row["actor"])
        }
        return (Self.round(row), actions)
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

    /// Jobs running at `instant` according to the history, sorted by key.
    ///
    /// From the pool's job log where this database has it: a job runs at T while a run of it is
    /// open (a `started` event at or before T with no end event on the same worker up to T, ends
    /// dated as in the `job_run_end` view of migration 0007: a dead worker's at its last keep-alive); its
    /// worker, node and start come from that run. Only the job's two latest starts at or before T
    /// are looked at (enough for a takeover, where the new run starts before the old one ends):
    /// a few seeks per job however long its history. An older run still open behind two later
    /// ones (a job running three times at once) shows in `job_runs` and `job_state_changes`, not
    /// here. A job with no job event at or before T is answered from the rounds' actions before
    /// its pool's first job event (a database written before the job log): its last
    /// state-changing action left it running.
    public func jobsRunning(at instant: Date) throws(StoreError) -> [RunningJob] {
        let at = Self.ms(instant)
        do {
            return try database.read { db in
                // The two latest starts at or before T (a takeover overlaps two runs), each open
                // when no end on its worker follows it up to T: four seeks per job.
                let open = { (start: String) in
                    """
                    (\(start) IS NOT NULL AND NOT EXISTS (
                        SELECT 1 FROM job_event st JOIN job_run_end x ON x.job = st.job AND x.worker = st.worker
                        WHERE st.id = \(start) AND NOT x.contradicted AND (x.at_ms, x.id) > (st.at_ms, st.id)
                          AND (CASE WHEN x.ended_ms < x.at_ms THEN MAX(st.at_ms + 1, x.ended_ms) ELSE x.at_ms END) <= :t))
                    """
                }
                let facts = try Row.fetchAll(db, sql: """
                    SELECT c.key, s.at_ms, s.worker, s.node, r.producer
                    FROM (
                        SELECT j.key,
                               (SELECT o.id FROM job_event o WHERE o.job = j.id AND o.kind = 'started' AND o.at_ms <= :t
                                ORDER BY o.at_ms DESC, o.id DESC LIMIT 1) AS s1,
                               (SELECT o.id FROM job_event o WHERE o.job = j.id AND o.kind = 'started' AND o.at_ms <= :t
                                ORDER BY o.at_ms DESC, o.id DESC LIMIT 1 OFFSET 1) AS s2
                        FROM job j) c
                    JOIN job_event s ON s.id = CASE WHEN \(open("c.s1")) THEN c.s1 WHEN \(open("c.s2")) THEN c.s2 END
                    LEFT JOIN round r ON r.round_id = \(Self.runRoundSQL("s"))
                    """, arguments: ["t": at]).map { row in
                    RunningJob(job: row["key"], producer: row["producer"] ?? "", since: Self.date(row["at_ms"]), worker: row["worker"],
                        node: row["node"])
                }
                // Before the job log: the rounds' actions, for jobs the log says nothing about up
                // to T. Both subqueries walk action_by_job backwards from T and stop at the first
                // match (rows at or after the pool's first job event are skipped: facts rule there).
                let legacy = try Row.fetchAll(db, sql: """
                    SELECT j.key, last.at_ms, r.producer,
                           (SELECT s.at_ms FROM action s WHERE s.job = j.id AND s.at_ms <= last.at_ms AND s.outcome = 'started'
                            ORDER BY s.at_ms DESC LIMIT 1) AS started_ms
                    FROM job j
                    JOIN action last ON (last.round, last.seq) = (
                        SELECT a.round, a.seq FROM action a
                        WHERE a.job = j.id AND a.at_ms <= :t AND a.outcome IN ('started', 'already-running', 'stopped', 'not-found')
                          AND a.at_ms < COALESCE((SELECT MIN(f.at_ms) FROM job_event f
                                                  WHERE f.pool = (SELECT pool FROM round WHERE id = a.round)), 9223372036854775807)
                        ORDER BY a.at_ms DESC LIMIT 1)
                    JOIN round r ON r.id = last.round
                    WHERE last.outcome IN ('started', 'already-running')
                      AND NOT EXISTS (SELECT 1 FROM job_event e WHERE e.job = j.id AND e.at_ms <= :t)
                    """, arguments: ["t": at]).map { row in
                    let since: Int64 = (row["started_ms"] as Int64?) ?? row["at_ms"]
                    return RunningJob(job: row["key"], producer: row["producer"], since: Self.date(since))
                }
                return (facts + legacy).sorted { $0.job < $1.job }
            }
        } catch {
            throw Self.map(error, path: path, doing: "read")
        }
    }

    /// The round a `started` event (table alias `alias`) belongs to: its own, or for a requeued
    /// start without one, that of the latest earlier non-requeued start of the job (the run it
    /// continues). As in the job_runs view (0006_audit_history.sql).
    static func runRoundSQL(_ alias: String) -> String {
        """
        COALESCE(\(alias).round_id, CASE WHEN \(alias).requeued = 1 THEN (
            SELECT o2.round_id FROM job_event o2
            WHERE o2.job = \(alias).job AND o2.kind = 'started' AND (o2.requeued = 0 OR o2.round_id IS NOT NULL)
              AND (o2.at_ms < \(alias).at_ms OR (o2.at_ms = \(alias).at_ms AND o2.id < \(alias).id))
            ORDER BY o2.at_ms DESC, o2.id DESC LIMIT 1) END)
        """
    }

    /// Deletes rounds (and their actions) started before `olderThan`, and/or all but the newest
    /// `keep` rounds; with `olderThan`, job events before it too (`keep` counts rounds only: job
    /// events are kept by age alone). With `dryRun`, only counts what would go.
    ///
    /// The deleted rounds need not be a prefix of the hash chains (rounds are recorded in any
    /// order): before deleting, the chains' bridges are rewritten so that every remaining round
    /// (and job event) still links to the one before it, and verification passes (see HistoryChain.swift).
    /// The prune is recorded in the prune chain (PruneChain.swift), authenticated with the pool's
    /// history `key` when given; a history whose prunes are authenticated is pruned only with its
    /// key, and never when its bridges are not the ones its last prune left.
    public func prune(olderThan: Date?, keep: Int?, dryRun: Bool, key: HistoryKey? = nil) throws(StoreError) -> PruneReport {
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
        let eventCut = olderThan.map(Self.ms)
        do {
            return try database.write { db in
                let rounds = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM (\(selection))", arguments: StatementArguments(arguments)) ?? 0
                let actions = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM action WHERE round IN (\(selection))",
                    arguments: StatementArguments(arguments)) ?? 0
                var events = 0
                if let eventCut {
                    events = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM job_event WHERE at_ms < ?", arguments: [eventCut]) ?? 0
                }
                guard !dryRun else { return PruneReport(rounds: rounds, actions: actions, jobEvents: events) }
                guard rounds > 0 || events > 0 else { return PruneReport(rounds: 0, actions: 0, jobEvents: 0) }
                try Self.checkBeforePrune(db, key: key)
                let state = try ChainState.load(db)
                if rounds > 0 {
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
                if let eventCut, events > 0 {
                    try Self.rebridge(db, .event, entries: "SELECT id, prev_hash, hash, at_ms < ? FROM job_event ORDER BY id",
                        arguments: [eventCut], head: state.eventHead)
                    try db.execute(sql: "DELETE FROM job_event WHERE at_ms < ?", arguments: [eventCut])
                }
                try Self.appendPrune(db, rounds: rounds, actions: actions, events: events, key: key)
                return PruneReport(rounds: rounds, actions: actions, jobEvents: events)
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
