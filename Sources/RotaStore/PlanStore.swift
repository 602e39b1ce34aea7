import Foundation
import GRDB
import RotaMigrations
import RotaPlans

/// Rota's SQLite store: producer definitions and their revisions.
///
/// Opened with ``open(path:busyTimeout:)`` (the file is created on first use, WAL mode, schema
/// migrated). GRDB runs the blocking SQLite calls on its own queues; this type only holds the pool.
public final class PlanStore: Sendable {
    let database: DatabasePool
    public let path: String

    private init(database: DatabasePool, path: String) {
        self.database = database
        self.path = path
    }

    /// SQLite's process-wide soft heap limit set by the first store opened (unless the process
    /// set one): page caches stay within it however large the history grows.
    public static let softHeapLimit: Int64 = 32 << 20

    /// Opens (creating if needed) and migrates the database at `path`.
    public static func open(path: String, busyTimeout: Duration = .seconds(5)) throws(StoreError) -> PlanStore {
        var configuration = Configuration()
        configuration.busyMode = .timeout(TimeInterval(busyTimeout.components.seconds) + Double(busyTimeout.components.attoseconds) / 1e18)
        configuration.prepareDatabase { db in
            // WAL commits then skip fsync (a power loss may drop the last commits, never corrupt);
            // a 32 MiB page cache keeps the history's hot index pages from being re-read.
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
            try db.execute(sql: "PRAGMA cache_size = -32768")
            // Each connection of the pool (a writer, readers) may fill its own cache as the
            // history grows: without a bound, a long-running node's memory grows with its
            // database (measured: +2.4 MB/min at 100 rounds/s). A process-wide soft limit on
            // SQLite's heap makes the caches recycle pages instead. Set only when the process
            // has none: an embedding application's own limit is kept.
            if try Int64.fetchOne(db, sql: "PRAGMA soft_heap_limit") == 0 {
                try db.execute(sql: "PRAGMA soft_heap_limit = \(PlanStore.softHeapLimit)")
            }
            // 16 KiB pages (effective when the file is created): the history's job index takes
            // inserts all over; bigger pages mean fewer page splits and writes per commit.
            try db.execute(sql: "PRAGMA page_size = 16384")
        }
        // A new database is its owner's alone (SQLite gives its -wal and -shm files the same mode).
        createIfMissing(path, mode: 0o600)
        let database: DatabasePool
        do {
            database = try DatabasePool(path: path, configuration: configuration)
        } catch {
            throw map(error, path: path, doing: "open")
        }
        do {
            let migrations = try RotaMigrations.all()
            var migrator = DatabaseMigrator()
            for migration in migrations {
                migrator.registerMigration(migration.identifier) { db in try db.execute(sql: migration.sql) }
            }
            let known = Set(migrations.map(\.identifier))
            let applied = try database.read { db in try migrator.appliedIdentifiers(db) }
            let unknown = applied.subtracting(known)
            guard unknown.isEmpty else {
                throw StoreError(.newerSchema,
                    "\(path): the database was written by a newer Rota (unknown migrations: \(unknown.sorted().joined(separator: ", "))); upgrade rota to use it")
            }
            try migrator.migrate(database)
        } catch let error as StoreError {
            throw error
        } catch {
            throw map(error, path: path, doing: "migrate")
        }
        return PlanStore(database: database, path: path)
    }

    /// Turns GRDB/SQLite errors into one clear line naming the file.
    static func map(_ error: any Error, path: String, doing what: String) -> StoreError {
        guard let sqlite = error as? DatabaseError else {
            return StoreError(.failed, "\(path): cannot \(what) the database: \(error)", underlying: error)
        }
        switch sqlite.resultCode {
        case .SQLITE_NOTADB, .SQLITE_CORRUPT:
            return StoreError(.corrupt, "\(path): not a Rota database, or the file is damaged (\(sqlite.message ?? "corrupt"))", underlying: error)
        case .SQLITE_BUSY, .SQLITE_LOCKED:
            return StoreError(.busy, "\(path): the database is locked by another process", underlying: error)
        case .SQLITE_CANTOPEN, .SQLITE_READONLY, .SQLITE_PERM, .SQLITE_IOERR:
            return StoreError(.cannotOpen, "\(path): cannot \(what) the database: \(sqlite.message ?? "\(sqlite.resultCode)")", underlying: error)
        default:
            return StoreError(.failed, "\(path): cannot \(what) the database: \(sqlite.message ?? "\(sqlite.resultCode)")", underlying: error)
        }
    }

    /// Identifiers of the migrations applied to this database.
    public func appliedMigrations() throws(StoreError) -> [String] {
        do {
            return try database.read { db in try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations ORDER BY identifier") }
        } catch {
            throw Self.map(error, path: path, doing: "read")
        }
    }
}

extension PlanStore {
    /// Moves the write-ahead log into the main file (`wal_checkpoint(TRUNCATE)`), e.g. before
    /// measuring or copying the file.
    public func checkpoint() throws(StoreError) {
        do {
            try database.writeWithoutTransaction { db in _ = try Row.fetchAll(db, sql: "PRAGMA wal_checkpoint(TRUNCATE)") }
        } catch {
            throw Self.map(error, path: path, doing: "checkpoint")
        }
    }
}
