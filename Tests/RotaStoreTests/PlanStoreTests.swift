import Foundation
import RotaMigrations
import RotaPlans
import RotaStore
import RotaTestSupport
import Testing

private func temporaryDatabase() -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("rota-store-\(UUID().uuidString).sqlite").path
}

private func plan(_ yaml: String, path: String = "plans/p.yaml") throws -> PlanFile {
    try PlanParser.parse(contents: yaml, path: path)
}

@Suite struct PlanStoreTests {
    @Test func migrationsApplyOnceAndAreRecorded() throws {
        let path = temporaryDatabase()
        let migrations = try RotaMigrations.all().map(\.identifier)
        #expect(migrations.first == "0001_producers")
        let store = try PlanStore.open(path: path)
        #expect(try store.appliedMigrations() == migrations)
        let again = try PlanStore.open(path: path)
        #expect(try again.appliedMigrations() == migrations)
    }

    @Test func everyMigrationFileShips() throws {
        // Each Migrations/*.sql must be declared as a resource in Package.swift, or it never runs.
        let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Migrations")
        let onDisk = try FileManager.default.contentsOfDirectory(atPath: folder.path).filter { $0.hasSuffix(".sql") }
            .map { String($0.dropLast(4)) }.sorted()
        #expect(try RotaMigrations.all().map(\.identifier) == onDisk)
    }

    @Test func newerDatabaseIsRefused() throws {
        let path = temporaryDatabase()
        _ = try PlanStore.open(path: path)
        // A later Rota recorded a migration this one does not know.
        let sqlite = Process()
        sqlite.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        sqlite.arguments = ["python3", "-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"INSERT INTO grdb_migrations VALUES ('9999_future')\"); c.commit()", path]
        try sqlite.run()
        sqlite.waitUntilExit()
        #expect(sqlite.terminationStatus == 0)
        do {
            _ = try PlanStore.open(path: path)
            Issue.record("a newer database was opened")
        } catch {
            #expect(error.code == .newerSchema)
            #expect(error.message.contains("9999_future"))
        }
    }

    @Test func corruptAndUnopenableFilesGiveClearErrors() throws {
        let path = temporaryDatabase()
        try Data(repeating: 0x42, count: 8192).write(to: URL(fileURLWithPath: path))
        do {
            _ = try PlanStore.open(path: path)
            Issue.record("a corrupt file was opened")
        } catch {
            #expect(error.code == .corrupt)
            #expect(error.message.hasPrefix(path))
        }
        do {
            _ = try PlanStore.open(path: "/nonexistent-dir/\(UUID().uuidString)/rota.sqlite")
            Issue.record("an impossible path was opened")
        } catch {
            #expect(error.code == .cannotOpen)
        }
    }

    @Test func revisionsCreatedUpdatedUnchangedRetired() throws {
        let store = try PlanStore.open(path: temporaryDatabase())
        let v1 = try plan("""
            producers:
              - {name: a, every: 10s, jobs: [{key: a1, handler: log, payload: {n: 1}}]}
              - {name: b, every: 1m, jobs: []}
            """)
        let first = try store.apply([v1], defaultPool: "demo", actor: "alice@host")
        #expect(first.map { "\($0.name):\($0.outcome.rawValue):\($0.revision)" } == ["a:created:1", "b:created:1"])

        let same = try store.apply([v1], defaultPool: "demo", actor: "alice@host")
        #expect(same.map(\.outcome) == [.unchanged, .unchanged])

        let v2 = try plan("""
            producers:
              - {name: a, every: 10s, jobs: [{key: a1, handler: log, payload: {n: 2}}]}
            """)
        let second = try store.apply([v2], defaultPool: "demo", actor: "bob@host")
        #expect(second.map { "\($0.name):\($0.outcome.rawValue):\($0.revision)" } == ["a:updated:2", "b:retired:1"])

        let history = try store.revisions(pool: "demo", name: "a")
        #expect(history.map(\.revision) == [1, 2])
        #expect(history.map(\.createdBy) == ["alice@host", "bob@host"])
        #expect(history[0].definition.contains(#""payload":{"n":1}"#))
        #expect(history[1].definition.contains(#""payload":{"n":2}"#))
        let current = try store.producers(pool: "demo")
        #expect(current.map(\.name) == ["a", "b"])
        #expect(current[1].retiredAt != nil)

        // A retired producer that comes back gets a new revision and is live again.
        let back = try store.apply([v1], defaultPool: "demo", actor: "carol@host")
        #expect(back.map { "\($0.name):\($0.outcome.rawValue):\($0.revision)" } == ["a:updated:3", "b:updated:2"])
        #expect(try store.producers(pool: "demo").allSatisfy { $0.retiredAt == nil })
        // Other pools are untouched by applying files of this one.
        let other = try plan("pool: other\nproducers:\n  - {name: z, every: 1s}\n")
        _ = try store.apply([other], defaultPool: "demo", actor: "x")
        #expect(try store.producers(pool: "demo").allSatisfy { $0.retiredAt == nil })
        #expect(try store.producers(pool: "other").map(\.name) == ["z"])
    }

    @Test func canonicalDefinitionIgnoresFormatting() throws {
        let a = try plan("producers:\n  - {name: p, every: 60s, jobs: [{key: k, handler: h, payload: {b: 1, a: 2}}]}\n")
        let b = try plan("""
            producers:
              - name: p
                every: 1m
                mode: exact
                timezone: UTC
                jobs:
                  - key: k
                    handler: h
                    payload:
                      a: 2
                      b: 1
            """)
        #expect(a.producers[0].canonicalJSON == b.producers[0].canonicalJSON)
        let store = try PlanStore.open(path: temporaryDatabase())
        _ = try store.apply([a], defaultPool: "demo", actor: "x")
        #expect(try store.apply([b], defaultPool: "demo", actor: "x").map(\.outcome) == [.unchanged])
    }
}

@Suite struct StoreSettingsTests {
    @Test func newDatabasesUseWALAndLargePages() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("rota-settings-\(UUID().uuidString).sqlite").path
        _ = try PlanStore.open(path: path)
        let check = Process()
        let pipe = Pipe()
        check.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        check.arguments = ["python3", "-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute('PRAGMA page_size').fetchone()[0], c.execute('PRAGMA journal_mode').fetchone()[0])", path]
        check.standardOutput = pipe
        try check.run()
        check.waitUntilExit()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(output.trimmingCharacters(in: .whitespacesAndNewlines) == "16384 wal")
    }
}

@Suite struct StoreUpgradeAndLockTests {
    private func python(_ script: String, _ arguments: [String]) throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script] + arguments
        try process.run()
        process.waitUntilExit()
        return process.terminationStatus
    }

    @Test func anOldDatabaseIsMigratedAndKeepsItsData() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("rota-old-\(UUID().uuidString).sqlite").path
        // A database as the first release left it: only 0001 applied, one producer stored.
        let first = try #require(try RotaMigrations.all().first)
        let script = """
            import sqlite3, sys
            c = sqlite3.connect(sys.argv[1])
            c.executescript(sys.argv[2])
            c.execute("CREATE TABLE grdb_migrations (identifier TEXT NOT NULL PRIMARY KEY)")
            c.execute("INSERT INTO grdb_migrations VALUES (?)", (sys.argv[3],))
            c.execute("INSERT INTO producer (id, pool, name, current_revision) VALUES (1, 'demo', 'old', 1)")
            c.execute("INSERT INTO producer_revision VALUES (1, 1, '{}', 'h', 'f.yaml', '2026-01-01T00:00:00.000Z', 'me')")
            c.commit()
            """
        #expect(try python(script, [path, first.sql, first.identifier]) == 0)
        let store = try PlanStore.open(path: path)
        #expect(try store.appliedMigrations() == (try RotaMigrations.all().map(\.identifier)))
        #expect(try store.producers(pool: "demo").map(\.name) == ["old"])
        #expect(try store.recordIntent(RoundRecord(roundID: "r", pool: "demo", producer: "old", revision: 1, node: "n",
            tick: Date(timeIntervalSince1970: 1), startedAt: Date(timeIntervalSince1970: 1))))
    }

    @Test func aLockedDatabaseFailsClearlyAfterTheBusyTimeout() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("rota-locked-\(UUID().uuidString).sqlite").path
        _ = try PlanStore.open(path: path)
        let ready = FileManager.default.temporaryDirectory.appendingPathComponent("rota-locked-\(UUID().uuidString).ready").path
        let release = ready + ".release"
        // Another process holds the write lock for a while.
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        holder.arguments = ["python3", "-c", """
            import os, sqlite3, sys, time
            c = sqlite3.connect(sys.argv[1], isolation_level=None)
            c.execute("BEGIN IMMEDIATE")
            c.execute("INSERT INTO job (key) VALUES ('held')")
            open(sys.argv[2], 'w').close()
            deadline = time.time() + 30
            while time.time() < deadline and not os.path.exists(sys.argv[3]):
                time.sleep(0.01)
            c.execute("ROLLBACK")
            """, path, ready, release]
        try holder.run()
        defer {
            _ = FileManager.default.createFile(atPath: release, contents: nil)
            holder.waitUntilExit()
        }
        try await eventually("the other process holds the lock") { FileManager.default.fileExists(atPath: ready) }
        do {
            // Opening checks migrations under the write lock, so it may be the step that waits.
            let store = try PlanStore.open(path: path, busyTimeout: .milliseconds(200))
            try store.recordIntent(RoundRecord(roundID: "r", pool: "p", producer: "x", revision: 1, node: "n",
                tick: Date(timeIntervalSince1970: 1), startedAt: Date(timeIntervalSince1970: 1)))
            Issue.record("wrote through another process's lock")
        } catch {
            #expect(error.code == .busy)
            #expect(error.message.contains("locked"))
        }
    }
}
