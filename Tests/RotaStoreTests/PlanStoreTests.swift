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
