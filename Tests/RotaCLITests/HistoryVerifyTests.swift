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
        #expect(json.out.hasSuffix(#""problem":null}"# + "\n"))

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
}
