import Foundation
import RotaStore
import RotaTestSupport
import Testing

// `--history-key-file`, `rota history keygen`, `rota history head` and `verify --expect-head`.

private func sql(_ path: String, _ statements: [String]) throws {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", "-c", "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nfor s in sys.argv[2:]: c.execute(s)\nc.commit()", path]
        + statements
    try process.run()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { throw TestFailure("sqlite3 script failed: \(statements)") }
}

/// Rounds r`from`…r`to` of producer p, recorded as a node records what it learns from the stream.
private func record(_ path: String, _ range: ClosedRange<Int>, node: (Int) -> String = { _ in "n1" }) throws {
    let store = try PlanStore.open(path: path)
    try store.recordRounds(range.map { index in
        let at = Date(timeIntervalSince1970: 1_800_000_000 + Double(index * 10))
        var round = RoundRecord(roundID: "r\(index)", pool: "demo", producer: "p", revision: 1, node: node(index), tick: at, startedAt: at,
            planned: [PlannedAction(job: "a", action: .start)])
        round.finishedAt = at.addingTimeInterval(1)
        return (round, [ActionRecord(job: "a", action: .start, outcome: .started, at: at)])
    })
}

@Suite("CLI: the history key, heads and authenticated prunes", .serialized)
struct HistoryKeyCLITests {
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("rota-key-\(UUID().uuidString)")

    init() throws { try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true) }

    private func path(_ name: String) -> String { scratch.appendingPathComponent(name).path }

    @Test("keygen, key files (hex, raw, xxd -p lines), and bad ones: missing, short, readable by others")
    func keyFiles() throws {
        defer { try? FileManager.default.removeItem(at: scratch) }
        let db = path("h.sqlite"), key = path("history.key")
        let made = try rota(["history", "keygen", key])
        #expect(made.status == 0 && made.out.hasPrefix("created history key "), "\(made.err)")
        let mode = try #require(try FileManager.default.attributesOfItem(atPath: key)[.posixPermissions] as? Int)
        #expect(mode == 0o600, "mode \(String(mode, radix: 8))")
        #expect(try String(contentsOfFile: key, encoding: .utf8).count == 65)
        let again = try rota(["history", "keygen", key])
        #expect(again.status != 0 && again.err.contains("it exists"), "\(again.err)")
        let id = String(made.out.split(separator: " ")[3])

        let verified = try rota(["history", "verify", "--db", db, "--history-key-file", key])
        #expect(verified.status == 0 && verified.err.isEmpty, "\(verified.err)")
        // The same bytes raw, and as `xxd -p` writes them (two lines), are the same key.
        let hex = try String(contentsOfFile: key, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let bytes = try #require(stride(from: 0, to: hex.count, by: 2).map { offset -> UInt8? in
            let start = hex.index(hex.startIndex, offsetBy: offset)
            return UInt8(hex[start..<hex.index(start, offsetBy: 2)], radix: 16)
        } as [UInt8?]).compactMap { $0 }
        _ = FileManager.default.createFile(atPath: path("raw.key"), contents: Data(bytes), attributes: [.posixPermissions: 0o600])
        _ = FileManager.default.createFile(atPath: path("xxd.key"), contents: Data((String(hex.prefix(60)) + "\n" + String(hex.dropFirst(60)) + "\n").utf8),
            attributes: [.posixPermissions: 0o600])
        for file in ["raw.key", "xxd.key"] {
            let head = try rota(["history", "head", "--db", db, "--history-key-file", path(file), "--format", "json"])
            #expect(head.status == 0 && head.out.contains("\"key\":\"\(id)\""), "\(file): \(head.out)\(head.err)")
        }
        // From the environment.
        let viaEnvironment = try rota(["history", "head", "--db", db, "--format", "json"], environment: ["ROTA_HISTORY_KEY_FILE": key])
        #expect(viaEnvironment.out.contains("\"key\":\"\(id)\""), "\(viaEnvironment.out)\(viaEnvironment.err)")

        // Bad key files: one clear line, nothing done.
        let missing = try rota(["history", "verify", "--db", db, "--history-key-file", path("none.key")])
        #expect(missing.status == 1 && missing.err.contains("--history-key-file: cannot read"), "\(missing.err)")
        let fromEnvironment = try rota(["history", "verify", "--db", db], environment: ["ROTA_HISTORY_KEY_FILE": path("none.key")])
        #expect(fromEnvironment.status == 1 && fromEnvironment.err.contains("ROTA_HISTORY_KEY_FILE: cannot read"), "\(fromEnvironment.err)")
        _ = FileManager.default.createFile(atPath: path("short.key"), contents: Data(String(hex.prefix(32)).utf8), attributes: [.posixPermissions: 0o600])
        let short = try rota(["dispatch", "k", "--handler", "log", "--redis", "redis://127.0.0.1:1", "--history-key-file", path("short.key")])
        #expect(short.status == 1 && short.err.contains("at least 32 random bytes, this one has 16"), "\(short.err)")
        _ = FileManager.default.createFile(atPath: path("odd.key"), contents: Data(hex.dropLast().utf8), attributes: [.posixPermissions: 0o600])
        let odd = try rota(["history", "verify", "--db", db, "--history-key-file", path("odd.key")])
        #expect(odd.status == 1 && odd.err.contains("63 hex digits: a history key in hex has an even number, at least 64"), "\(odd.err)")
        // Readable by others: used, with a warning.
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: key)
        let loose = try rota(["history", "verify", "--db", db, "--history-key-file", key])
        #expect(loose.status == 0 && loose.err.contains("--history-key-file: '\(key)' may be read by other users (mode 644); chmod 600 it"),
            "\(loose.err)")
    }

    @Test("history head verifies later, after growth and prunes; a rewrite, a forged head and hidden deletions exit 2")
    func headsAndPrunes() throws {
        defer { try? FileManager.default.removeItem(at: scratch) }
        let db = path("h.sqlite"), key = path("history.key")
        #expect(try rota(["history", "keygen", key]).status == 0)
        try record(db, 1...5)
        let head = try rota(["history", "head", "--db", db, "--history-key-file", key])
        #expect(head.status == 0 && head.out.hasPrefix("rota-history-head v1 at=") && head.out.contains(" round=5:")
            && head.out.contains(" tag=v1:"), "\(head.out)\(head.err)")
        let line = head.out.trimmingCharacters(in: .whitespacesAndNewlines)
        try (line + "\n").write(toFile: path("head.txt"), atomically: true, encoding: .utf8)
        let json = try rota(["history", "head", "--db", db, "--history-key-file", key, "--format", "json"])
        try json.out.write(toFile: path("head.json"), atomically: true, encoding: .utf8)

        // Later: more rounds, a prune with the key. The head, given any way, is still there.
        try record(db, 6...8)
        let pruned = try rota(["history", "prune", "--db", db, "--keep", "6", "--history-key-file", key])
        #expect(pruned.status == 0, "\(pruned.err)")
        for expected in [line, path("head.txt"), path("head.json")] {
            let check = try rota(["history", "verify", "--db", db, "--history-key-file", key, "--expect-head", expected])
            #expect(check.status == 0, "\(check.out)\(check.err)")
            #expect(check.out.contains("(authenticated) found: 3 round(s), 0 job event(s) and 1 prune(s) since"), "\(check.out)")
        }
        let unchecked = try rota(["history", "verify", "--db", db])
        #expect(unchecked.out.contains("1 prune(s) recorded, 1 tagged with a history key: not checked without --history-key-file"), "\(unchecked.out)")
        // A prune without the key is refused; an edited head does not verify.
        let unkeyed = try rota(["history", "prune", "--db", db, "--keep", "1"])
        #expect(unkeyed.status == 1 && unkeyed.err.contains("give its history key"), "\(unkeyed.err)")
        let edited = try rota(["history", "verify", "--db", db, "--history-key-file", key, "--expect-head",
            line.replacingOccurrences(of: "rounds=5", with: "rounds=9")])
        #expect(edited.status == 2 && edited.out.contains("tag does not verify"), "\(edited.out)")
        let garbage = try rota(["history", "verify", "--db", db, "--expect-head", "rota-history-head v1 round=x"])
        #expect(garbage.status == 1 && garbage.err.contains("--expect-head: not a history head"), "\(garbage.err)")

        // A round deleted and replaced by bridge rows: caught, the head unchanged.
        try sql(db, [
            "INSERT INTO history_chain_bridge SELECT 'round', hash, prev_hash, 1 FROM round WHERE id = 7",
            "INSERT INTO history_chain_bridge SELECT 'outcome', outcome_hash, outcome_prev, 1 FROM round WHERE id = 7",
            "DELETE FROM action WHERE round = 7", "DELETE FROM round WHERE id = 7",
        ])
        let hidden = try rota(["history", "verify", "--db", db, "--history-key-file", key])
        #expect(hidden.status == 2 && hidden.out.contains("bridge rows added, removed or changed by hand"), "\(hidden.out)")
        let noHead = try rota(["history", "head", "--db", db, "--history-key-file", key])
        #expect(noHead.status == 2 && noHead.err.contains("the history does not verify, no head given"), "\(noHead.err)")

        // A history rewritten from scratch verifies on its own, but no longer contains the head.
        let rewritten = path("rewritten.sqlite")
        try record(rewritten, 1...5) { $0 == 2 ? "evil" : "n1" }
        #expect(try rota(["history", "verify", "--db", rewritten]).status == 0)
        let check = try rota(["history", "verify", "--db", rewritten, "--expect-head", line, "--format", "json"])
        #expect(check.status == 2, "\(check.out)")
        #expect(check.out.contains(#""expected_head":{"ok":false,"problem":"the round chain no longer holds the head's round #5"#), "\(check.out)")
    }
}
