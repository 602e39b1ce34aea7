import Foundation
import GRDB

/// A change of a pool's plan, as the pool's change log carries it (see `PoolPlan` in
/// RotaService): every node records each one, so the revision history is the same everywhere.
public struct PlanEvent: Sendable, Hashable {
    public enum Kind: String, Sendable, Hashable, CaseIterable {
        case created, updated, retired, paused, resumed, triggered
    }

    public var pool: String
    /// The change log entry's ID; nil for a definition learnt from the plan itself (its log entry
    /// was trimmed before this node read it): then only the revision is recorded.
    public var entryID: String?
    public var producer: String
    public var kind: Kind
    /// The pool's plan revision after the change.
    public var revision: Int
    public var actor: String
    public var at: Date
    public var reason: String?
    public var until: Date?
    public var stopJobs: Bool?
    /// Created and updated: the canonical JSON definition, its hash and the file it came from.
    public var definition: String?
    public var contentHash: String?
    public var source: String?

    public init(pool: String, entryID: String?, producer: String, kind: Kind, revision: Int, actor: String, at: Date,
                reason: String? = nil, until: Date? = nil, stopJobs: Bool? = nil, definition: String? = nil,
                contentHash: String? = nil, source: String? = nil) {
        self.pool = pool
        self.entryID = entryID
        self.producer = producer
        self.kind = kind
        self.revision = revision
        self.actor = actor
        self.at = at
        self.reason = reason
        self.until = until
        self.stopJobs = stopJobs
        self.definition = definition
        self.contentHash = contentHash
        self.source = source
    }
}

/// What a node last applied from its own plan files: see ``PlanStore/nodePlan(pool:)``.
public struct NodePlanRecord: Sendable, Hashable {
    public var filesDigest: String
    public var poolRevision: Int

    public init(filesDigest: String, poolRevision: Int) {
        self.filesDigest = filesDigest
        self.poolRevision = poolRevision
    }
}

extension PlanStore {
    /// Records changes of a pool's plan in one transaction. Idempotent by change log entry: an
    /// entry seen before is skipped. A created or updated producer gets the revision row (the
    /// pool's revision number) and becomes current unless a newer revision is; a retired one is
    /// marked retired. Returns how many events were new.
    @discardableResult
    public func recordPlanEvents(_ events: [PlanEvent]) throws(StoreError) -> Int {
        guard !events.isEmpty else { return 0 }
        do {
            return try database.write { db in
                var recorded = 0
                for event in events {
                    let at = Self.ms(event.at)
                    if let entryID = event.entryID {
                        try db.execute(sql: """
                            INSERT INTO plan_event (pool, entry_id, producer, kind, revision, actor, at_ms, reason, until_ms, stop_jobs)
                            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (pool, entry_id) DO NOTHING
                            """, arguments: [event.pool, entryID, event.producer, event.kind.rawValue, event.revision, event.actor, at,
                                event.reason, event.until.map(Self.ms), event.stopJobs.map { $0 ? 1 : 0 }])
                        guard db.changesCount > 0 else { continue }
                        recorded += 1
                    }
                    switch event.kind {
                    case .created, .updated:
                        guard let definition = event.definition, let hash = event.contentHash else { continue }
                        try Self.recordRevision(db, event, definition: definition, hash: hash)
                    case .retired:
                        try db.execute(sql: "UPDATE producer SET retired_at = ? WHERE pool = ? AND name = ? AND current_revision <= ?",
                            arguments: [Self.timestamp(event.at), event.pool, event.producer, event.revision])
                    case .paused, .resumed, .triggered:
                        break
                    }
                }
                return recorded
            }
        } catch {
            throw Self.map(error, path: path, doing: "record plan changes in")
        }
    }

    private static func recordRevision(_ db: Database, _ event: PlanEvent, definition: String, hash: String) throws {
        try db.execute(sql: "INSERT INTO producer (pool, name, current_revision) VALUES (?, ?, ?) ON CONFLICT (pool, name) DO NOTHING",
            arguments: [event.pool, event.producer, event.revision])
        guard let id = try Int64.fetchOne(db, sql: "SELECT id FROM producer WHERE pool = ? AND name = ?", arguments: [event.pool, event.producer])
        else { return }
        // A database written before the pool held the plan may hold a local revision under the
        // same number: it is kept (history is not rewritten), and the pool's is not recorded.
        try db.execute(sql: """
            INSERT INTO producer_revision (producer_id, revision, definition, content_hash, source_file, created_at, created_by)
            VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (producer_id, revision) DO NOTHING
            """, arguments: [id, event.revision, definition, hash, event.source ?? "", Self.timestamp(event.at), event.actor])
        try db.execute(sql: "UPDATE producer SET current_revision = ?, retired_at = NULL WHERE id = ? AND current_revision <= ?",
            arguments: [event.revision, id, event.revision])
    }

    /// The plan events of `pool` (of one producer when given), oldest first, at most `limit`.
    public func planEvents(pool: String, producer: String? = nil, limit: Int = 1000) throws(StoreError) -> [PlanEvent] {
        var sql = "SELECT * FROM plan_event WHERE pool = ?"
        var arguments: [any DatabaseValueConvertible] = [pool]
        if let producer {
            sql += " AND producer = ?"
            arguments.append(producer)
        }
        sql += " ORDER BY id DESC LIMIT \(max(0, limit))"
        do {
            return try database.read { db in
                try Row.fetchAll(db, sql: sql, arguments: StatementArguments(arguments)).reversed().map { row in
                    let stopJobs: Int? = row["stop_jobs"]
                    let until: Int64? = row["until_ms"]
                    return PlanEvent(pool: row["pool"], entryID: row["entry_id"], producer: row["producer"],
                        kind: PlanEvent.Kind(rawValue: row["kind"]) ?? .updated, revision: row["revision"], actor: row["actor"],
                        at: Self.date(row["at_ms"]), reason: row["reason"], until: until.map(Self.date), stopJobs: stopJobs.map { $0 != 0 })
                }
            }
        } catch {
            throw Self.map(error, path: path, doing: "read")
        }
    }

    /// What this node last applied from its plan files to `pool`, or nil if it never did.
    public func nodePlan(pool: String) throws(StoreError) -> NodePlanRecord? {
        do {
            return try database.read { db in
                try Row.fetchOne(db, sql: "SELECT files_digest, pool_revision FROM node_plan WHERE pool = ?", arguments: [pool]).map {
                    NodePlanRecord(filesDigest: $0["files_digest"], poolRevision: $0["pool_revision"])
                }
            }
        } catch {
            throw Self.map(error, path: path, doing: "read")
        }
    }

    public func setNodePlan(pool: String, _ record: NodePlanRecord, now: Date = Date()) throws(StoreError) {
        do {
            try database.write { db in
                try db.execute(sql: """
                    INSERT INTO node_plan (pool, files_digest, pool_revision, at_ms) VALUES (?, ?, ?, ?)
                    ON CONFLICT (pool) DO UPDATE SET files_digest = excluded.files_digest, pool_revision = excluded.pool_revision,
                        at_ms = excluded.at_ms
                    """, arguments: [pool, record.filesDigest, record.poolRevision, Self.ms(now)])
            }
        } catch {
            throw Self.map(error, path: path, doing: "write")
        }
    }
}
