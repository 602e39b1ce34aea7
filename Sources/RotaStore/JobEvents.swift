import Foundation
import GRDB

/// What the pool saw happen to a job (its "job-log" stream), as opposed to what a planner intended
/// (the rounds' actions).
public enum JobEventKind: String, Sendable, Hashable, CaseIterable {
    case started
    case startFailed = "start-failed"
    case stopped
    /// The worker's stop handler failed: the job still runs.
    case stopFailed = "stop-failed"
    case released
    /// Another worker took the job over (the event names the worker that lost it).
    case takenOver = "taken-over"
    /// The worker running it died (the event names the dead worker).
    case lost
    case orphanRequeued = "orphan-requeued"
    case endedUnowned = "ended-unowned"
    case givenUp = "given-up"
    /// A structured job (`JobRunner`) returned by itself and left the pool (migration 0009).
    case finished
    /// A structured job threw by itself (the event's `error`) and left the pool.
    case failed
    /// No active worker has the capability the job requires (the event's `error` names it): the
    /// job waits in the pool, not running, and starts once such a worker joins.
    case unplaced

    /// Whether it ends the run of the job on the event's worker. `unplaced` ends nothing: a run the
    /// job had ended with its own event (released, lost, …), and an unplaced job is not running.
    public var endsRun: Bool {
        switch self {
        case .stopped, .released, .takenOver, .lost, .endedUnowned, .givenUp, .finished, .failed: true
        case .started, .startFailed, .stopFailed, .orphanRequeued, .unplaced: false
        }
    }
}

/// One job of one job-log entry. `(pool, entryID, index)` identifies it: every node records the
/// same entries, and recording one twice changes nothing.
public struct JobEventRecord: Sendable, Hashable {
    public var pool: String
    /// The stream entry's ID.
    public var entryID: String
    /// The job's position in the entry's jobs.
    public var index: Int
    public var job: String
    public var kind: JobEventKind
    /// The worker the event is about (for `lost`, the dead one).
    public var worker: String
    /// The node that reported it, by name and ID.
    public var node: String
    public var nodeID: String
    public var at: Date
    /// Who decided (a node, or `user@host`).
    public var actor: String?
    public var reason: String?
    /// The round that decided it (its round ID), when a round did.
    public var round: String?
    public var requeued: Bool
    public var error: String?
    /// For `lost`: the dead worker's last keep-alive, where its runs end (migration 0007).
    public var lastSeen: Date?

    public init(pool: String, entryID: String, index: Int, job: String, kind: JobEventKind, worker: String, node: String, nodeID: String,
                at: Date, actor: String? = nil, reason: String? = nil, round: String? = nil, requeued: Bool = false, error: String? = nil,
                lastSeen: Date? = nil) {
        self.pool = pool
        self.entryID = entryID
        self.index = index
        self.job = job
        self.kind = kind
        self.worker = worker
        self.node = node
        self.nodeID = nodeID
        self.at = at
        self.actor = actor
        self.reason = reason
        self.round = round
        self.requeued = requeued
        self.error = error
        self.lastSeen = lastSeen
    }
}

/// A run of a job on one worker: a `started` event and the first later end event of the job on
/// the same worker (see the `job_runs` view).
public struct JobRun: Sendable, Hashable {
    public var job: String
    public var pool: String
    /// From the round that started it (or, for a requeued start, the run it continues); nil for
    /// manual starts.
    public var producer: String?
    public var revision: Int?
    public var worker: String
    public var node: String
    public var startedAt: Date
    /// nil while it runs. For a run on a worker found dead (`lost`), its last keep-alive.
    public var stoppedAt: Date?
    /// When the end was logged (for `lost`: when the death was found).
    public var stopLoggedAt: Date?
    public var stopKind: JobEventKind?
    public var stopReason: String?
    public var stopActor: String?
    public var stopError: String?
    public var startReason: String?
    /// Who started it.
    public var actor: String?
    public var roundID: String?
    public var requeued: Bool
}

extension PlanStore {
    /// Records job-log entries in one transaction, appending the new ones to the event chain.
    /// Idempotent by `(pool, entryID, index)`. Returns how many were new.
    @discardableResult
    public func recordJobEvents(_ events: [JobEventRecord]) throws(StoreError) -> Int {
        guard !events.isEmpty else { return 0 }
        do {
            return try database.write { db in
                var chain = try ChainState.load(db)
                var jobIDs: [String: Int64] = [:]
                let recorded = try Self.insertJobEvents(db, events, chain: &chain, jobIDs: &jobIDs)
                try chain.saveIfChanged(db)
                return recorded
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw Self.map(error, path: path, doing: "record job events in")
        }
    }

    static func insertJobEvents(_ db: Database, _ events: [JobEventRecord], chain: inout ChainState, jobIDs: inout [String: Int64]) throws
        -> Int
    {
        let exists = try db.cachedStatement(sql: "SELECT 1 FROM job_event WHERE pool = ? AND entry_id = ? AND idx = ?")
        let insert = try db.cachedStatement(sql: """
            INSERT INTO job_event (pool, entry_id, idx, job, kind, worker, node, node_id, at_ms, actor, reason, round_id, requeued, error,
                                   last_seen_ms, prev_hash, hash)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """)
        var recorded = 0
        for event in events {
            if try Bool.fetchOne(exists, arguments: [event.pool, event.entryID, event.index]) == true { continue }
            let jobID = try jobID(db, event.job, cache: &jobIDs)
            let atMS = ms(event.at)
            let lastSeenMS = event.lastSeen.map(ms)
            let hash = chain.hasher.eventHash(prev: chain.eventHead, pool: event.pool, entryID: event.entryID, index: Int64(event.index),
                job: event.job, kind: event.kind.rawValue, worker: event.worker, node: event.node, nodeID: event.nodeID, atMS: atMS,
                actor: event.actor, reason: event.reason, roundID: event.round, requeued: event.requeued, error: event.error,
                lastSeenMS: lastSeenMS)
            try insert.execute(arguments: [event.pool, event.entryID, event.index, jobID, event.kind.rawValue, event.worker, event.node,
                event.nodeID, atMS, event.actor, event.reason, event.round, event.requeued ? 1 : 0, event.error, lastSeenMS,
                Data(chain.eventHead), Data(hash)])
            chain.eventHead = hash
            chain.changed = true
            recorded += 1
        }
        return recorded
    }

    /// The job events recorded (of one job, when given), in recording order, at most `limit` (the newest).
    public func jobEvents(job: String? = nil, limit: Int = 1000) throws(StoreError) -> [JobEventRecord] {
        do {
            return try database.read { db in
                try Self.readJobEvents(db, job: job, afterID: nil, limit: limit).map(\.record)
            }
        } catch {
            throw Self.map(error, path: path, doing: "read")
        }
    }

    /// Job events with their row ids, in id order: of one job, or after `afterID`; the newest `limit`.
    static func readJobEvents(_ db: Database, job: String?, afterID: Int64?, limit: Int) throws -> [(id: Int64, record: JobEventRecord)] {
        var conditions: [String] = []
        var arguments: [any DatabaseValueConvertible] = []
        if let job { conditions.append("j.key = ?"); arguments.append(job) }
        if let afterID { conditions.append("e.id > ?"); arguments.append(afterID) }
        let sql = """
            SELECT * FROM (
                SELECT e.id, e.pool, e.entry_id, e.idx, j.key, e.kind, e.worker, e.node, e.node_id, e.at_ms, e.actor, e.reason, e.round_id,
                       e.requeued, e.error, e.last_seen_ms
                FROM job_event e JOIN job j ON j.id = e.job
                \(conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND "))
                ORDER BY e.id DESC LIMIT \(max(0, limit)))
            ORDER BY id
            """
        return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(arguments)).map { row in
            // Stored indexes came from Int; an out-of-range one (a hand-made file) is clamped, never trapped on.
            let index: Int64 = row[3]
            let record = JobEventRecord(pool: row[1], entryID: row[2], index: Int(clamping: index), job: row[4],
                kind: JobEventKind(rawValue: row[5]) ?? .stopped, worker: row[6], node: row[7], nodeID: row[8], at: date(row[9]),
                actor: row[10], reason: row[11], round: row[12], requeued: (row[13] as Int64) != 0, error: row[14],
                lastSeen: (row[15] as Int64?).map(date))
            return (row[0], record)
        }
    }

    /// Runs of jobs (of one job, when given) that overlap `since`..<`until`, oldest first: the
    /// newest `limit` of them. Answered from the `job_runs` view (migrations 0006, 0007, 0009).
    public func jobRuns(job: String? = nil, since: Date? = nil, until: Date? = nil, limit: Int = 1000) throws(StoreError) -> [JobRun] {
        var conditions: [String] = []
        var arguments: [any DatabaseValueConvertible] = []
        if let job { conditions.append("job = ?"); arguments.append(job) }
        if let since { conditions.append("(stopped_ms IS NULL OR stopped_ms >= ?)"); arguments.append(Self.ms(since)) }
        if let until { conditions.append("started_ms < ?"); arguments.append(Self.ms(until)) }
        let sql = """
            SELECT * FROM (
                SELECT * FROM job_runs \(conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND "))
                ORDER BY started_ms DESC, start_event DESC LIMIT \(max(0, limit)))
            ORDER BY started_ms, start_event
            """
        do {
            return try database.read { db in
                try Row.fetchAll(db, sql: sql, arguments: StatementArguments(arguments)).map { row in
                    let revision: Int64? = row["revision"]
                    return JobRun(job: row["job"], pool: row["pool"], producer: row["producer"], revision: revision.map { Int(clamping: $0) },
                        worker: row["worker"], node: row["node"], startedAt: Self.date(row["started_ms"]),
                        stoppedAt: (row["stopped_ms"] as Int64?).map(Self.date),
                        stopLoggedAt: (row["stop_logged_ms"] as Int64?).map(Self.date), stopKind: (row["stop_kind"] as String?).flatMap(JobEventKind.init),
                        stopReason: row["stop_reason"], stopActor: row["stop_actor"], stopError: row["stop_error"],
                        startReason: row["start_reason"], actor: row["actor"], roundID: row["round_id"],
                        requeued: (row["requeued"] as Int64) != 0)
                }
            }
        } catch {
            throw Self.map(error, path: path, doing: "read")
        }
    }
}
