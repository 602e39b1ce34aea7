import Foundation
import RotaTestSupport
import Testing

/// Runs SQL on the file behind rota's back.
private func sql(_ path: String, _ statement: String) throws {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()", path, statement]
    try process.run()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { throw TestFailure("sqlite3 script failed: \(statement)") }
}

@Suite struct HistoryVerifyCLITests {
    let db = FileManager.default.temporaryDirectory.appendingPathComponent("rota-verify-\(UUID().uuidString).sqlite").path

    @Test func intactThenTamperedExitCodesAndFormats() throws {
        let intact = try rota(["history", "verify", "--db", db])
        #expect(intact.status == 0)
        #expect(intact.out == "ok: 0 rounds verified\n")
        let json = try rota(["history", "verify", "--db", db, "--format", "json"])
        #expect(json.status == 0)
        #expect(json.out.hasPrefix(#"{"ok":true,"verified":0,"unchained":0,"pruned":0,"head":"0000"#))
        #expect(json.out.contains(#""problem":null,"intact":true,"events":0,"events_pruned":0,"event_head":"0000"#))
        #expect(json.out.hasSuffix(#""gaps":[]}"# + "\n"))

        // A round slipped in by hand, without hashes.
        try sql(db, "INSERT INTO round (round_id, pool, producer, revision, node, tick_ms, started_ms) VALUES ('fake', 'demo', 'p', 1, 'n', 5, 5)")
        let tampered = try rota(["history", "verify", "--db", db])
        #expect(tampered.status == 2)
        #expect(tampered.out == "round fake (#1) altered: it has no chain hashes (inserted by hand, or its hashes were removed)\n")
        let tamperedJSON = try rota(["history", "verify", "--db", db, "--format", "json"])
        #expect(tamperedJSON.status == 2)
        #expect(tamperedJSON.out.contains(#""ok":false"#))
        #expect(tamperedJSON.out.contains(#""problem":{"kind":"altered","part":"identity","round":"fake","id":1,"missing_ids":null,"#))

        let csv = try rota(["history", "verify", "--db", db, "--format", "csv"])
        #expect(csv.status != 0 && csv.status != 2)
    }

    @Test func gapsExitWithThreeUnlessTampered() throws {
        #expect(try rota(["history", "verify", "--db", db]).status == 0)
        try sql(db, "INSERT INTO history_gap (pool, stream, after_id, before_id, detected_ms) VALUES ('demo', 'history', '1800000000000-0', '1800000060000-3', 1800000100000)")
        let gaps = try rota(["history", "verify", "--db", db])
        #expect(gaps.status == 3)
        #expect(gaps.out == """
            intact, with gaps: 0 rounds verified
            gap: pool demo stream history: entries after 1800000000000-0 (2027-01-15T08:00:00.000Z) and before 1800000060000-3 \
            (2027-01-15T08:01:00.000Z) were trimmed before this node read them (detected 2027-01-15T08:01:40.000Z)

            """)
        let json = try rota(["history", "verify", "--db", db, "--format", "json"])
        #expect(json.status == 3)
        #expect(json.out.hasPrefix(#"{"ok":false,"#))
        #expect(json.out.contains(#""intact":true"#))
        #expect(json.out.contains(#""gaps":[{"pool":"demo","stream":"history","after":"1800000000000-0","before":"1800000060000-3","detected_at":"2027-01-15T08:01:40.000Z","filled_at":null,"filled_from":null}]"#))
        // Tampered and incomplete: tampered wins.
        try sql(db, "INSERT INTO round (round_id, pool, producer, revision, node, tick_ms, started_ms) VALUES ('fake', 'demo', 'p', 1, 'n', 5, 5)")
        let both = try rota(["history", "verify", "--db", db])
        #expect(both.status == 2)
        #expect(both.out.hasPrefix("round fake (#1) altered"))
        #expect(both.out.contains("gap: pool demo stream history"))
        let help = try rota(["history", "verify", "--help"])
        let words = help.out.split(whereSeparator: \.isWhitespace).joined(separator: " ")
        #expect(words.contains("3 when the chains are intact but unfilled gaps exist"))
        #expect(words.contains("Tampered wins: a history that is both tampered and incomplete exits 2"))
    }
}

@Suite struct HistorySyncCLITests {
    private func database(_ name: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("rota-sync-\(name)-\(UUID().uuidString).sqlite").path
        #expect(try rota(["history", "verify", "--db", path]).status == 0)  // creates and migrates it
        return path
    }

    @Test func syncFillsTheGapsTheOtherDatabaseCoversThenVerifyPasses() throws {
        let mine = try database("mine"), other = try database("other")
        try sql(mine, "INSERT INTO history_gap (pool, stream, after_id, before_id, detected_ms) VALUES ('demo', 'history', '100-0', '200-0', 1)")
        try sql(other, "INSERT INTO stream_cursor (pool, stream, last_id) VALUES ('demo', 'history', '300-0')")
        #expect(try rota(["history", "verify", "--db", mine]).status == 3)
        let sync = try rota(["history", "sync", "--db", mine, "--from", other])
        #expect(sync.status == 0)
        #expect(sync.out == """
            copied from \(other): 0 round(s), 0 outcome(s) of unfinished rounds, 0 job event(s)
            filled gap: pool demo stream history: after 100-0 and before 200-0

            """)
        let verify = try rota(["history", "verify", "--db", mine])
        #expect(verify.status == 0 && verify.out == "ok: 0 rounds verified\n")
    }

    @Test func syncRefusesTamperedSameAndForeignFiles() throws {
        let mine = try database("mine"), other = try database("other")
        try sql(other, "INSERT INTO round (round_id, pool, producer, revision, node, tick_ms, started_ms) VALUES ('fake', 'demo', 'p', 1, 'n', 5, 5)")
        let tampered = try rota(["history", "sync", "--db", mine, "--from", other])
        #expect(tampered.status != 0 && tampered.status != 2 && tampered.status != 3)
        #expect(tampered.err.split(separator: "\n").count == 1)
        #expect(tampered.err.contains("its history does not verify, nothing copied: round fake (#1) altered"))
        let same = try rota(["history", "sync", "--db", mine, "--from", mine])
        #expect(same.status != 0 && same.err.contains("is this database"))
        let foreign = FileManager.default.temporaryDirectory.appendingPathComponent("rota-sync-foreign-\(UUID().uuidString).sqlite").path
        try sql(foreign, "CREATE TABLE notes (x)")
        let notRota = try rota(["history", "sync", "--db", mine, "--from", foreign])
        #expect(notRota.status != 0 && notRota.err.contains("not a Rota database"))
    }
}
