import Foundation
import GRDB
import RotaPlans

/// What applying plan files did to one producer.
public struct AppliedProducer: Sendable, Hashable {
    public enum Outcome: String, Sendable, Hashable {
        /// First seen: revision 1.
        case created
        /// Its definition changed (or it came back after being retired): a new revision.
        case updated
        /// Same definition as the current revision: nothing written.
        case unchanged
        /// No longer in the files: marked retired, its revisions kept.
        case retired
    }

    public var pool: String
    public var name: String
    public var outcome: Outcome
    public var revision: Int
}

/// One stored revision of a producer's definition.
public struct ProducerRevision: Sendable, Hashable {
    public var pool: String
    public var name: String
    public var revision: Int
    /// Canonical JSON of the definition.
    public var definition: String
    public var contentHash: String
    public var sourceFile: String
    public var createdAt: String
    public var createdBy: String
    /// Set on the current revision of a retired producer.
    public var retiredAt: String?
}

extension PlanStore {
    /// Stores the producers of `files` in one transaction: new definitions get revision 1, changed
    /// ones revision N+1 (older revisions are kept), unchanged ones nothing; producers of the pools
    /// these files cover that are no longer defined are marked retired, not deleted.
    ///
    /// - Parameters:
    ///   - defaultPool: the pool of files that name none.
    ///   - actor: who applies (user@host, node name), recorded with each new revision.
    public func apply(_ files: [PlanFile], defaultPool: String, actor: String, now: Date = Date()) throws(StoreError) -> [AppliedProducer] {
        let timestamp = Self.timestamp(now)
        do {
            return try database.write { db in
                var results: [AppliedProducer] = []
                var defined: [String: Set<String>] = [:]
                for file in files {
                    let pool = file.pool ?? defaultPool
                    defined[pool, default: []].formUnion(file.producers.map(\.name))
                    for producer in file.producers {
                        let text = producer.canonicalJSON
                        let row = try Row.fetchOne(db, sql: """
                            SELECT p.id, p.current_revision, p.retired_at, r.definition
                            FROM producer p JOIN producer_revision r ON r.producer_id = p.id AND r.revision = p.current_revision
                            WHERE p.pool = ? AND p.name = ?
                            """, arguments: [pool, producer.name])
                        guard let row else {
                            try db.execute(sql: "INSERT INTO producer (pool, name, current_revision) VALUES (?, ?, 1)",
                                arguments: [pool, producer.name])
                            try insertRevision(db, producerID: db.lastInsertedRowID, revision: 1, text: text, file: file.path, at: timestamp, by: actor)
                            results.append(AppliedProducer(pool: pool, name: producer.name, outcome: .created, revision: 1))
                            continue
                        }
                        let id: Int64 = row["id"]
                        let current: Int = row["current_revision"]
                        let retired: String? = row["retired_at"]
                        let stored: String = row["definition"]
                        if stored == text && retired == nil {
                            results.append(AppliedProducer(pool: pool, name: producer.name, outcome: .unchanged, revision: current))
                            continue
                        }
                        try insertRevision(db, producerID: id, revision: current + 1, text: text, file: file.path, at: timestamp, by: actor)
                        try db.execute(sql: "UPDATE producer SET current_revision = ?, retired_at = NULL WHERE id = ?",
                            arguments: [current + 1, id])
                        results.append(AppliedProducer(pool: pool, name: producer.name, outcome: .updated, revision: current + 1))
                    }
                }
                for (pool, names) in defined.sorted(by: { $0.key < $1.key }) {
                    let live = try Row.fetchAll(db, sql: "SELECT id, name, current_revision FROM producer WHERE pool = ? AND retired_at IS NULL ORDER BY name",
                        arguments: [pool])
                    for row in live where !names.contains(row["name"]) {
                        try db.execute(sql: "UPDATE producer SET retired_at = ? WHERE id = ?", arguments: [timestamp, row["id"] as Int64])
                        results.append(AppliedProducer(pool: pool, name: row["name"], outcome: .retired, revision: row["current_revision"]))
                    }
                }
                return results
            }
        } catch {
            throw Self.map(error, path: path, doing: "write")
        }
    }

    private func insertRevision(_ db: Database, producerID: Int64, revision: Int, text: String, file: String, at: String, by actor: String) throws {
        try db.execute(sql: """
            INSERT INTO producer_revision (producer_id, revision, definition, content_hash, source_file, created_at, created_by)
            VALUES (?, ?, ?, ?, ?, ?, ?)
            """, arguments: [producerID, revision, text, fingerprint(text), file, at, actor])
    }

    /// The current revision of every producer of `pool` (retired ones included, with `retiredAt`).
    public func producers(pool: String) throws(StoreError) -> [ProducerRevision] {
        try revisions(where: "p.pool = ? AND r.revision = p.current_revision", [pool])
    }

    /// Every revision of one producer, oldest first.
    public func revisions(pool: String, name: String) throws(StoreError) -> [ProducerRevision] {
        try revisions(where: "p.pool = ? AND p.name = ?", [pool, name])
    }

    private func revisions(where condition: String, _ arguments: StatementArguments) throws(StoreError) -> [ProducerRevision] {
        do {
            return try database.read { db in
                try Row.fetchAll(db, sql: """
                    SELECT p.pool, p.name, p.retired_at, p.current_revision, r.revision, r.definition, r.content_hash,
                           r.source_file, r.created_at, r.created_by
                    FROM producer p JOIN producer_revision r ON r.producer_id = p.id
                    WHERE \(condition)
                    ORDER BY p.pool, p.name, r.revision
                    """, arguments: arguments).map { row in
                    let revision: Int = row["revision"]
                    let current: Int = row["current_revision"]
                    return ProducerRevision(
                        pool: row["pool"], name: row["name"], revision: revision, definition: row["definition"],
                        contentHash: row["content_hash"], sourceFile: row["source_file"], createdAt: row["created_at"],
                        createdBy: row["created_by"], retiredAt: revision == current ? row["retired_at"] : nil)
                }
            }
        } catch {
            throw Self.map(error, path: path, doing: "read")
        }
    }

    /// RFC 3339 UTC with milliseconds: sorts as text in time order.
    static func timestamp(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: date)
    }
}
