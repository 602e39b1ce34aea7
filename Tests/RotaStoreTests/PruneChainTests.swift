import Foundation
@testable import RotaStore
import RotaTestSupport
import Testing

// Prune records (migration 0008), the history key's tags on them, and stored heads.

private func temporaryPath() -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("rota-prunes-\(UUID().uuidString).sqlite").path
}

private func at(_ seconds: Double) -> Date { Date(timeIntervalSince1970: 1_800_000_000 + seconds) }

private func finished(_ id: String, tick: Double, node: String = "n1") -> (RoundRecord, [ActionRecord]) {
    var record = RoundRecord(roundID: id, pool: "demo", producer: "p", revision: 1, node: node, tick: at(tick), startedAt: at(tick),
        planned: [PlannedAction(job: "a", action: .start)])
    record.finishedAt = at(tick + 1)
    return (record, [ActionRecord(job: "a", action: .start, outcome: .started, at: at(tick + 0.5))])
}

/// Rounds r1…r`count`, ids 1…`count`, one tick apart.
private func history(_ count: Int = 6, node: String = "n1", path: String = temporaryPath()) throws -> PlanStore {
    let store = try PlanStore.open(path: path)
    try store.recordRounds((1...count).map { finished("r\($0)", tick: Double($0 * 10), node: node) })
    return store
}


/// What a tamperer with write access to the file does to hide round #`id`: deletes it and writes
/// the bridges a prune would have written (round and outcome chains).
private let hideRound3 = [
    "INSERT INTO history_chain_bridge SELECT 'round', hash, prev_hash, 1 FROM round WHERE id = 3",
    "INSERT INTO history_chain_bridge SELECT 'outcome', outcome_hash, outcome_prev, 1 FROM round WHERE id = 3",
    "DELETE FROM action WHERE round = 3",
    "DELETE FROM round WHERE id = 3",
]

@Suite struct PruneChainTests {
    let key: HistoryKey
    let otherKey: HistoryKey

    init() throws {
        key = try HistoryKey(bytes: Array(repeating: 1, count: 32))
        otherKey = try HistoryKey(bytes: Array(repeating: 2, count: 32))
    }

    @Test func aDeletedRoundReplacedByBridgeRowsIsCaught() throws {
        let store = try history()
        let head = try store.verifyHistory().head
        try sql(store.path, hideRound3)
        let result = try store.verifyHistory()
        let problem = try #require(result.problem, "bridge rows written by hand passed as a prune")
        #expect(result.head == head, "the round chain's head did not change: only the prune chain shows it")
        #expect(problem.chain == "prune" && problem.kind == .altered)
        #expect(problem.message.contains("bridge rows added by hand"), "\(problem.message)")
    }

    @Test func pruneRecordsChainAndCoverTheBridges() throws {
        let store = try history(8)
        #expect(try store.prune(olderThan: nil, keep: 6, dryRun: false).rounds == 2)
        #expect(try store.prune(olderThan: nil, keep: 4, dryRun: false).rounds == 2)
        #expect(try store.prune(olderThan: nil, keep: 4, dryRun: false).rounds == 0)  // nothing to delete: no record
        var result = try store.verifyHistory()
        #expect(result.problem == nil && result.prunes == 2 && result.pruned == 4 && result.unauthenticatedPrunes == 2)
        // After a prune, bridge rows written by hand differ from what it left.
        try sql(store.path, hideRound3.map { $0.replacingOccurrences(of: "id = 3", with: "id = 6").replacingOccurrences(of: "round = 3", with: "round = 6") })
        result = try store.verifyHistory()
        #expect(result.problem?.chain == "prune" && result.problem?.message.contains("not the ones prune #2") == true, "\(result.problem?.message ?? "")")
        // And a prune does not seal them.
        #expect(throws: StoreError.self) { try store.prune(olderThan: nil, keep: 1, dryRun: false) }
        // A record deleted or edited by hand shows too.
        let edited = try history(8)
        _ = try edited.prune(olderThan: nil, keep: 6, dryRun: false)
        _ = try edited.prune(olderThan: nil, keep: 5, dryRun: false)
        try sql(edited.path, "UPDATE history_prune SET rounds = 0 WHERE seq = 1")
        #expect(try edited.verifyHistory().problem?.message.hasPrefix("prune #1") == true)
        try sql(edited.path, "UPDATE history_prune SET rounds = 2 WHERE seq = 1", "DELETE FROM history_prune WHERE seq = 2")
        let missing = try #require(try edited.verifyHistory().problem)
        #expect(missing.kind == .missing && missing.message.hasPrefix("prune record(s) missing after prune #1"), "\(missing.message)")
    }

    @Test func withTheKeyAForgedPruneRecordIsRefused() throws {
        let store = try history(8)
        _ = try store.prune(olderThan: nil, keep: 6, dryRun: false, key: key)
        #expect(try store.verifyHistory(key: key).problem == nil)
        // The tamperer hides round #5 and appends a prune record computed like the store would:
        // consistent, so it passes without the key, but it has no valid tag.
        try sql(store.path, hideRound3.map { $0.replacingOccurrences(of: "id = 3", with: "id = 5").replacingOccurrences(of: "round = 3", with: "round = 5") })
        try forgePruneRecord(store.path, tag: nil)
        #expect(try store.verifyHistory().problem == nil, "without the key, a well-made record cannot be told from a prune")
        let problem = try #require(try store.verifyHistory(key: key).problem)
        #expect(problem.chain == "prune" && problem.id == 2 && problem.message.contains("without the history key, after prunes made with it"))
        // A tag copied from the real record does not fit the forged one.
        try sql(store.path, "UPDATE history_prune SET tag = (SELECT tag FROM history_prune WHERE seq = 1) WHERE seq = 2")
        #expect(try store.verifyHistory(key: key).problem?.message.contains("not authenticated by the history key") == true)
        // Nor does another key's.
        try sql(store.path, "UPDATE history_prune SET tag = '\(otherKey.tag(PlanStore.pruneDomain, [[0]]))' WHERE seq = 2")
        #expect(try store.verifyHistory(key: key).problem?.message.contains("another history key (\(otherKey.id))") == true)
    }

    @Test func anAuthenticatedHistoryIsPrunedOnlyWithItsKey() throws {
        let store = try history(8)
        _ = try store.prune(olderThan: nil, keep: 7, dryRun: false)  // before the key: accepted, counted
        _ = try store.prune(olderThan: nil, keep: 6, dryRun: false, key: key)
        let result = try store.verifyHistory(key: key)
        #expect(result.problem == nil && result.prunes == 2 && result.unauthenticatedPrunes == 1 && result.keyID == key.id)
        #expect { try store.prune(olderThan: nil, keep: 5, dryRun: false) } throws: { ($0 as? StoreError)?.code == .invalidKey }
        #expect { try store.prune(olderThan: nil, keep: 5, dryRun: false, key: otherKey) } throws: { ($0 as? StoreError)?.code == .invalidKey }
        #expect(try store.prune(olderThan: nil, keep: 5, dryRun: false, key: key).rounds == 1)
        #expect(try store.verifyHistory(key: otherKey).problem?.message.contains("another history key") == true)
    }

    @Test func aDatabaseWithBridgesFromBeforePruneRecordsStillVerifies() throws {
        // Written by the code of migration 0005: two bridges from a prune, no prune record.
        let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/pre-0006.sqlite")
        let path = temporaryPath()
        try FileManager.default.copyItem(atPath: fixture.path, toPath: path)
        let store = try PlanStore.open(path: path)
        #expect(try store.appliedMigrations().contains("0008_authenticated_prunes"))
        for checkedWith in [nil, key] {
            let result = try store.verifyHistory(key: checkedWith)
            #expect(result.problem == nil && result.verified == 6 && result.pruned == 2 && result.legacyBridges == 2 && result.prunes == 0)
        }
        // One more bridge by hand is more than the migration counted.
        try sql(path, "INSERT INTO history_chain_bridge VALUES ('event', randomblob(32), randomblob(32), 1)")
        #expect(try store.verifyHistory().problem?.message.contains("added by hand") == true)
        #expect(throws: StoreError.self) { try store.prune(olderThan: nil, keep: 1, dryRun: false, key: key) }
        try sql(path, "DELETE FROM history_chain_bridge WHERE chain = 'event'")
        // The first prune with the key takes the old bridges over, after verifying the history.
        #expect(try store.prune(olderThan: nil, keep: 4, dryRun: false, key: key).rounds > 0)
        let result = try store.verifyHistory(key: key)
        #expect(result.problem == nil && result.legacyBridges == 0 && result.prunes == 1 && result.unauthenticatedPrunes == 0)
    }
}

/// Appends a prune record computed as the store computes one, over the bridge rows as they are.
private func forgePruneRecord(_ path: String, tag: String?) throws {
    let rows = try sql(path, "SELECT chain, hex(to_hash), hex(from_hash), pruned FROM history_chain_bridge ORDER BY chain, to_hash")
    let bridges = rows.split(separator: "\n").map { line -> (chain: String, bridge: ChainBridge) in
        let fields = line.split(separator: "|").map(String.init)
        return (fields[0], ChainBridge(to: HistoryKey.bytes(hex: Array(fields[1].lowercased().utf8)) ?? [],
            from: HistoryKey.bytes(hex: Array(fields[2].lowercased().utf8)) ?? [], pruned: Int(fields[3]) ?? 0))
    }
    let state = try sql(path, "SELECT hex(prune_head), prune_seq FROM history_chain").split(separator: "|").map(String.init)
    let prev = HistoryKey.bytes(hex: Array(state[0].lowercased().utf8)) ?? []
    let seq = (Int64(state[1]) ?? 0) + 1
    var hasher = ChainHasher()
    let bridgesHash = hasher.bridgesHash(bridges)
    let hash = hasher.pruneHash(prev: prev, seq: seq, atMS: 1_800_000_000_000, rounds: 1, actions: 1, events: 0, bridgesHash: bridgesHash)
    try sql(path,
        "INSERT INTO history_prune VALUES (\(seq), 1800000000000, 1, 1, 0, X'\(SHA256.hex(bridgesHash))', X'\(SHA256.hex(prev))', X'\(SHA256.hex(hash))', \(tag.map { "'\($0)'" } ?? "NULL"))",
        "UPDATE history_chain SET prune_head = X'\(SHA256.hex(hash))', prune_seq = \(seq)")
}

/// Stored heads (`rota history head`).
extension PruneChainTests {
    @Test func aHeadVerifiesLaterAndAfterGrowthAndPrunes() throws {
        let store = try history(6)
        let head = try store.head(key: key)
        let parsed = try HistoryHead(parsing: head.text + "\n")
        #expect(parsed.text == head.text && parsed.round == head.round && parsed.round.position == 6 && parsed.rounds == 6 && head.tag != nil)
        var check = try store.checkHead(parsed, key: key)
        #expect(check.problem == nil && check.authenticated && check.roundsSince == 0)
        // The history grows, then is pruned past the head's round.
        try store.recordRounds([finished("r7", tick: 70), finished("r8", tick: 80)])
        check = try store.checkHead(parsed, key: key)
        #expect(check.problem == nil && check.roundsSince == 2)
        _ = try store.prune(olderThan: nil, keep: 1, dryRun: false, key: key)
        #expect(try store.verifyHistory(key: key).problem == nil)
        check = try store.checkHead(parsed, key: key)
        #expect(check.problem == nil && check.prunesSince == 1, "\(check)")
        #expect(check.notes.contains("the head's round #6 was pruned since"), "\(check.notes)")
        // Without the key its tag is not checked, and said so.
        #expect(try store.checkHead(parsed).notes.first == "the head's tag is not checked: no history key given")
    }

    @Test func aRewrittenHistoryNoLongerContainsTheHead() throws {
        let path = temporaryPath()
        let store = try history(6, path: path)
        let head = try HistoryHead(parsing: try store.head().text)
        // Someone who knows the scheme rewrites the history from scratch, one node name changed:
        // a consistent history that verifies, but not the one the head saw.
        try sql(path, "DELETE FROM action", "DELETE FROM round", "UPDATE history_chain SET round_head = zeroblob(32), outcome_head = zeroblob(32), outcome_seq = 0")
        try store.recordRounds((1...6).map { finished("r\($0)", tick: Double($0 * 10), node: $0 == 3 ? "evil" : "n1") })
        #expect(try store.verifyHistory().problem == nil)
        let check = try store.checkHead(head)
        #expect(check.problem?.contains("the round chain no longer holds the head's round #6") == true, "\(check)")
    }

    @Test func aHeadsTagIsChecked() throws {
        let store = try history(3)
        let head = try store.head(key: key)
        let edited = try HistoryHead(parsing: head.text.replacingOccurrences(of: "rounds=3", with: "rounds=4"))
        #expect(try store.checkHead(edited, key: key).problem?.contains("does not verify") == true)
        #expect(try store.checkHead(head, key: otherKey).problem?.contains("another history key") == true)
        let untagged = try store.head()
        #expect(untagged.tag == nil && !untagged.text.contains("tag="))
        #expect(try store.checkHead(untagged, key: key).notes.first?.contains("has no tag") == true)
        for bad in ["", "hello", "rota-history-head v1 at=x", String(head.text.dropLast(3))] {
            if bad == String(head.text.dropLast(3)) {
                // A damaged tag still parses: checking it fails.
                #expect(try store.checkHead(try HistoryHead(parsing: bad), key: key).problem != nil)
            } else {
                #expect(throws: StoreError.self) { try HistoryHead(parsing: bad) }
            }
        }
        // A history that does not verify has no head.
        try sql(store.path, "UPDATE round SET node = 'evil' WHERE id = 2")
        #expect { try store.head(key: key) } throws: { ($0 as? StoreError)?.code == .tampered }
    }
}
