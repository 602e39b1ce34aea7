import Foundation
import GRDB
import RotaMigrations

/// What ``PlanStore/sync(from:now:)`` copied and filled.
public struct SyncReport: Sendable, Hashable {
    /// The other database, as an absolute path.
    public var source: String
    /// Rounds this database did not have, copied with their actions (finished or not).
    public var rounds: Int
    /// Rounds this database had unfinished whose outcome the other one had.
    public var outcomes: Int
    /// Job events this database did not have.
    public var jobEvents: Int
    /// Rounds not copied because this database has another round for the same producer and tick
    /// (two planners for one tick: worth a look), one line each.
    public var conflicts: [String]
    /// This database's gaps the other one covers, now marked filled.
    public var filledGaps: [HistoryGap]
}

extension StoreError.Code {
    /// `sync` was given this database itself.
    public static let sameDatabase = StoreError.Code("sameDatabase")
    /// The file is a SQLite database, but not one this Rota wrote (unknown or older schema).
    public static let notRotaDatabase = StoreError.Code("notRotaDatabase")
    /// The other database's hash chains do not verify: nothing is copied from it.
    public static let sourceTampered = StoreError.Code("sourceTampered")
}

extension PlanStore {
    /// Fills this node's history from another node's database (`other`, opened read-only): the
    /// rounds (with actions) and job events this one lacks, appended to this database's chains so
    /// that it still verifies; then marks filled each of this database's gaps that `other` covers
    /// (its cursor on that stream is past the gap and none of its own unfilled gaps overlaps it).
    ///
    /// Refuses a file that is this database, is not a Rota database of this version (same
    /// migrations, same schema), or whose chains do not verify. One transaction: all or nothing.
    public func sync(from other: String, now: Date = Date()) throws(StoreError) -> SyncReport {
        let source = URL(fileURLWithPath: other).standardizedFileURL.path
        guard FileManager.default.fileExists(atPath: source) else {
            throw StoreError(.cannotOpen, "\(source): no such file")
        }
        if Self.sameFile(source, path) {
            throw StoreError(.sameDatabase, "\(source) is this database (\(path)): sync from another node's database")
        }
        var configuration = Configuration()
        configuration.readonly = true
        let queue: DatabaseQueue
        do {
            queue = try DatabaseQueue(path: source, configuration: configuration)
        } catch {
            throw Self.map(error, path: source, doing: "open")
        }
        let snapshot: SyncSource
        do {
            let (ownSchema, ours) = try database.read { db in try (Self.schema(db), Self.roundStates(db)) }
            snapshot = try queue.read { db in try Self.readSource(db, path: source, expectedSchema: ownSchema, ours: ours) }
        } catch let error as StoreError {
            throw error
        } catch {
            throw Self.map(error, path: source, doing: "read")
        }
        do {
            return try database.write { db in try Self.apply(db, snapshot, source: source, now: now) }
        } catch let error as StoreError {
            throw error
        } catch {
            throw Self.map(error, path: path, doing: "sync")
        }
    }

    /// The same file under two names (symbolic or hard links, `..`), by device and inode.
    private static func sameFile(_ a: String, _ b: String) -> Bool {
        let manager = FileManager.default
        let a = URL(fileURLWithPath: a).resolvingSymlinksInPath().path, b = URL(fileURLWithPath: b).resolvingSymlinksInPath().path
        guard let first = try? manager.attributesOfItem(atPath: a), let second = try? manager.attributesOfItem(atPath: b) else {
            return a == b
        }
        return (first[.systemNumber] as? NSNumber) == (second[.systemNumber] as? NSNumber)
            && (first[.systemFileNumber] as? NSNumber) == (second[.systemFileNumber] as? NSNumber)
    }

    /// The schema as text: what two databases migrated by the same Rota share exactly.
    private static func schema(_ db: Database) throws -> [String] {
        try String.fetchAll(db, sql: """
            SELECT type || ' ' || name || ': ' || COALESCE(sql, '') FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name
            """)
    }

    /// Round IDs, each with whether the round is finished.
    private static func roundStates(_ db: Database) throws -> [String: Bool] {
        var states: [String: Bool] = [:]
        for row in try Row.fetchAll(db, sql: "SELECT round_id, finished_ms IS NOT NULL FROM round") { states[row[0]] = row[1] }
        return states
    }

    /// What a sync copies, read in one transaction of the other database.
    private struct SyncSource {
        var rounds: [(record: RoundRecord, actions: [ActionRecord])]
        var events: [JobEventRecord]
        var cursors: [String: StreamEntryID]  // "pool\u{0}stream"
        var gaps: [HistoryGap]
    }

    /// `ours`: this database's rounds (finished or not): only the others are read in full.
    private static func readSource(_ db: Database, path: String, expectedSchema: [String], ours: [String: Bool]) throws -> SyncSource {
        guard try db.tableExists("grdb_migrations") else {
            throw StoreError(.notRotaDatabase, "\(path): not a Rota database (it has no migrations table)")
        }
        let applied = Set(try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations"))
        let known = Set(try RotaMigrations.all().map(\.identifier))
        if !applied.isSubset(of: known) {
            throw StoreError(.notRotaDatabase,
                "\(path): written by a newer Rota (unknown migrations: \(applied.subtracting(known).sorted().joined(separator: ", ")))")
        }
        if applied != known {
            throw StoreError(.notRotaDatabase,
                "\(path): written by an older Rota (missing migrations: \(known.subtracting(applied).sorted().joined(separator: ", "))); "
                    + "open it once with this rota (e.g. rota history verify --db \(path)) to migrate it")
        }
        guard try schema(db) == expectedSchema else {
            throw StoreError(.notRotaDatabase, "\(path): not a Rota database: its schema differs from the one its migrations create")
        }
        let verification = try verify(db)
        if let problem = verification.problem {
            throw StoreError(.sourceTampered, "\(path): its history does not verify, nothing copied: \(problem.message)")
        }
        var source = SyncSource(rounds: [], events: [], cursors: [:], gaps: verification.gaps)
        for row in try Row.fetchAll(db, sql: "SELECT round_id, finished_ms IS NOT NULL FROM round ORDER BY id") {
            let roundID: String = row[0], finished: Bool = row[1]
            guard ours[roundID] == nil || (ours[roundID] == false && finished), let round = try readRound(db, roundID: roundID) else { continue }
            source.rounds.append(round)
        }
        for row in try Row.fetchAll(db, sql: "SELECT pool, stream, last_id FROM stream_cursor") {
            let pool: String = row[0], stream: String = row[1], last: String = row[2]
            if let id = StreamEntryID(last) { source.cursors[pool + "\u{0}" + stream] = id }
        }
        source.events = try readJobEvents(db, job: nil, afterID: nil, limit: Int.max).map(\.record)
        return source
    }

    private static func apply(_ db: Database, _ source: SyncSource, source path: String, now: Date) throws -> SyncReport {
        var report = SyncReport(source: path, rounds: 0, outcomes: 0, jobEvents: 0, conflicts: [], filledGaps: [])
        var chain = try ChainState.load(db)
        var jobIDs: [String: Int64] = [:]
        // Rounds: in the other database's insertion order.
        let ours = try roundStates(db)
        for (round, actions) in source.rounds {
            let had = ours[round.roundID]
            if had == nil {
                do {
                    _ = try insertIntent(db, round, unpublished: false, chain: &chain)
                } catch let error as StoreError where error.code == .duplicateRound {
                    report.conflicts.append(error.message)
                    continue
                }
                report.rounds += 1
            }
            if had != true, let finishedAt = round.finishedAt {
                try insertOutcome(db, roundID: round.roundID, finishedAt: finishedAt, actions: actions, error: round.error, jobIDs: &jobIDs,
                    chain: &chain)
                if had == false { report.outcomes += 1 }
            }
        }
        report.jobEvents = try insertJobEvents(db, source.events, chain: &chain, jobIDs: &jobIDs)
        try chain.saveIfChanged(db)
        // Gaps the other database covers.
        for (id, gap) in try gaps(db, pool: nil, includeFilled: false) {
            // The cursor is the last entry the other node read: it covers every entry up to it, so
            // a gap ending right after it (`before` its successor) is covered too.
            guard let before = StreamEntryID(gap.before), let cursor = source.cursors[gap.pool + "\u{0}" + gap.stream],
                cursor >= before || (cursor.successor.map { $0 >= before } ?? true),
                !source.gaps.contains(where: { $0.pool == gap.pool && $0.stream == gap.stream && $0.overlaps(gap) })
            else { continue }
            try db.execute(sql: "UPDATE history_gap SET filled_ms = ?, filled_from = ? WHERE id = ?", arguments: [ms(now), path, id])
            var filled = gap
            filled.filledAt = date(ms(now))
            filled.filledFrom = path
            report.filledGaps.append(filled)
        }
        return report
    }
}
