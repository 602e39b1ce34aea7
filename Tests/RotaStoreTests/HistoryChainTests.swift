import Foundation
import RotaMigrations
@testable import RotaStore
import RotaTestSupport
import Testing

private func temporaryPath() -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("rota-chain-\(UUID().uuidString).sqlite").path
}

private func at(_ seconds: Double) -> Date { Date(timeIntervalSince1970: 1_800_000_000 + seconds) }

private func round(_ id: String, producer: String = "p", tick: Double, jobs: [String] = ["a", "b"]) -> RoundRecord {
    RoundRecord(roundID: id, pool: "demo", producer: producer, revision: 1, node: "n1", tick: at(tick), startedAt: at(tick + 0.01),
        planned: jobs.map { PlannedAction(job: $0, action: .start) })
}

private func finished(_ id: String, producer: String = "p", tick: Double, error: String? = nil) -> (RoundRecord, [ActionRecord]) {
    var record = round(id, producer: producer, tick: tick)
    record.finishedAt = at(tick + 1)
    record.error = error
    return (record, actions(tick: tick))
}

private func actions(tick: Double) -> [ActionRecord] {
    [ActionRecord(job: "a", action: .start, outcome: .started, payloadHash: "h1", at: at(tick + 0.1)),
     ActionRecord(job: "b", action: .start, outcome: .failed, error: "no handler 'x'", at: at(tick + 0.2)),
     ActionRecord(job: "c", action: .stop, outcome: .notFound, at: at(tick + 0.3), reason: "retired")]
}

/// r1…r7 recorded every way the service records them (ids 1…7; outcomes in the order r2, r1, r4…r7;
/// r3 left unfinished), with idempotent repeats.
private func populated() throws -> PlanStore {
    let store = try PlanStore.open(path: temporaryPath())
    try store.recordIntent(round("r1", tick: 0))
    try store.recordIntent(round("r2", producer: "q", tick: 0))
    try store.recordOutcome(roundID: "r2", finishedAt: at(1), actions: Array(actions(tick: 0).prefix(2)))
    try store.recordIntent(round("r3", tick: 10))
    try store.recordOutcome(roundID: "r1", finishedAt: at(2), actions: actions(tick: 0), error: "partly failed")
    try store.recordRounds([finished("r4", tick: 20), finished("r5", tick: 30), finished("r6", tick: 40, error: "redis down")])
    try store.recordRound(finished("r7", tick: 50).0, actions: finished("r7", tick: 50).1)
    // Rounds learnt again from other nodes change nothing.
    #expect(try store.recordIntent(round("r1", tick: 0)) == false)
    try store.recordRounds([finished("r4", tick: 20), finished("r1", tick: 0)])
    try store.recordOutcome(roundID: "r1", finishedAt: at(9), actions: [])
    return store
}

@Suite struct SHA256Tests {
    private func hex(_ text: String) -> String { SHA256.hex(SHA256.hash(Array(text.utf8))) }

    @Test func standardVectors() {
        // FIPS 180-4 / NIST examples.
        #expect(hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")
            == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        #expect(hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu")
            == "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1")
        #expect(SHA256.hex(SHA256.hash([UInt8](repeating: 0x61, count: 1_000_000)))
            == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    @Test func everyPaddingBoundary() {
        // Lengths 0…199 cross the one- and two-block padding cases (55, 56, 63, 64, 119, 120, …);
        // the expected value is Python's hashlib over the same digests.
        var digests: [UInt8] = []
        for length in 0..<200 {
            digests += SHA256.hash((0..<length).map { UInt8(truncatingIfNeeded: $0 * 7 + 3) })
        }
        #expect(SHA256.hex(SHA256.hash(digests)) == "615d67a99b8c846e1f0582dfe127019e93c33a66e89ced6a4f81f932c82ece87")
    }
}

@Suite struct HistoryChainTests {
    @Test func bothRecordingPathsVerify() throws {
        let store = try PlanStore.open(path: temporaryPath())
        let empty = try store.verifyHistory()
        #expect(empty.isIntact && empty.verified == 0 && empty.head == String(repeating: "0", count: 64))

        let populated = try populated()
        let result = try populated.verifyHistory()
        #expect(result.problem == nil)
        #expect(result.verified == 7 && result.unchained == 0 && result.pruned == 0)
        // The unfinished round gets its outcome later: still intact.
        try populated.recordOutcome(roundID: "r3", finishedAt: at(60), actions: actions(tick: 60))
        #expect(try populated.verifyHistory().isIntact)
        #expect(try populated.verifyHistory().outcomeHead != result.outcomeHead)
    }

    struct Tampering: Sendable, CustomTestStringConvertible {
        var name: String
        var statements: [String]
        var kind: HistoryProblem.Kind
        var part: HistoryProblem.Part?
        var round: String?
        var missing: ClosedRange<Int64>?
        var testDescription: String { name }
    }

    static let tamperings: [Tampering] = [
        Tampering(name: "intent", statements: ["UPDATE round SET intent = '[]' WHERE round_id = 'r5'"], kind: .altered, part: .intent, round: "r5"),
        Tampering(name: "node", statements: ["UPDATE round SET node = 'evil' WHERE round_id = 'r2'"], kind: .altered, part: .identity, round: "r2"),
        Tampering(name: "tick", statements: ["UPDATE round SET tick_ms = tick_ms + 1 WHERE round_id = 'r6'"], kind: .altered, part: .identity,
            round: "r6"),
        Tampering(name: "hashes removed", statements: ["UPDATE round SET hash = NULL WHERE round_id = 'r3'"], kind: .altered, part: .identity,
            round: "r3"),
        Tampering(name: "an action's outcome",
            statements: ["UPDATE action SET outcome = 'started' WHERE round = (SELECT id FROM round WHERE round_id = 'r4') AND seq = 1"],
            kind: .altered, part: .actions, round: "r4"),
        Tampering(name: "an action's time",
            statements: ["UPDATE action SET at_ms = at_ms - 1000 WHERE round = (SELECT id FROM round WHERE round_id = 'r7') AND seq = 0"],
            kind: .altered, part: .actions, round: "r7"),
        Tampering(name: "an action's reason given",
            statements: ["UPDATE action SET reason = 'retired' WHERE round = (SELECT id FROM round WHERE round_id = 'r6') AND seq = 0"],
            kind: .altered, part: .actions, round: "r6"),
        Tampering(name: "an action's reason changed",
            statements: ["UPDATE action SET reason = 'manual' WHERE round = (SELECT id FROM round WHERE round_id = 'r4') AND seq = 2"],
            kind: .altered, part: .actions, round: "r4"),
        Tampering(name: "an action removed",
            statements: ["DELETE FROM action WHERE round = (SELECT id FROM round WHERE round_id = 'r1') AND seq = 2"],
            kind: .altered, part: .actions, round: "r1"),
        Tampering(name: "an action added",
            statements: ["INSERT INTO action SELECT id, 9, 1, 'stop', 'stopped', NULL, NULL, 0, NULL, NULL FROM round WHERE round_id = 'r5'"],
            kind: .altered, part: .actions, round: "r5"),
        Tampering(name: "an action added to an unfinished round",
            statements: ["INSERT INTO action SELECT id, 0, 1, 'stop', 'stopped', NULL, NULL, 0, NULL, NULL FROM round WHERE round_id = 'r3'"],
            kind: .altered, part: .actions, round: "r3"),
        Tampering(name: "a job renamed", statements: ["UPDATE job SET key = 'zzz' WHERE key = 'c'"], kind: .altered, part: .actions, round: "r1"),
        Tampering(name: "counts", statements: ["UPDATE round SET failed = 0 WHERE round_id = 'r1'"], kind: .altered, part: .outcome, round: "r1"),
        Tampering(name: "error", statements: ["UPDATE round SET error = NULL WHERE round_id = 'r6'"], kind: .altered, part: .outcome, round: "r6"),
        Tampering(name: "an unfinished round marked finished", statements: ["UPDATE round SET finished_ms = 1 WHERE round_id = 'r3'"],
            kind: .altered, part: .outcome, round: "r3"),
        Tampering(name: "a middle round deleted",
            statements: ["DELETE FROM action WHERE round = 4", "DELETE FROM round WHERE id = 4"],
            kind: .missing, round: "r5", missing: 4...4),
        Tampering(name: "a middle round deleted, its actions left", statements: ["DELETE FROM round WHERE id = 4"], kind: .missing,
            missing: 4...4),
        Tampering(name: "the oldest round deleted", statements: ["DELETE FROM action WHERE round = 1", "DELETE FROM round WHERE id = 1"],
            kind: .missing, round: "r2"),
        Tampering(name: "the newest round deleted", statements: ["DELETE FROM action WHERE round = 7", "DELETE FROM round WHERE id = 7"],
            kind: .missing),
        Tampering(name: "an outcome erased",
            statements: [
                """
                UPDATE round SET finished_ms = NULL, started = 0, stopped = 0, failed = 0, error = NULL, outcome_seq = NULL,
                    outcome_prev = NULL, actions_hash = NULL, outcome_hash = NULL WHERE round_id = 'r2'
                """,
                "DELETE FROM action WHERE round = 2",
            ],
            // r2's outcome came first, r1's next: the break shows at r1's outcome.
            kind: .missing, round: "r1"),
        Tampering(name: "a round inserted by hand",
            statements: ["INSERT INTO round (round_id, pool, producer, revision, node, tick_ms, started_ms) VALUES ('fake', 'demo', 'p', 1, 'n1', 5, 5)"],
            kind: .altered, part: .identity, round: "fake"),
        Tampering(name: "the head replaced", statements: ["UPDATE history_chain SET round_head = randomblob(32)"], kind: .missing),
    ]

    @Test(arguments: tamperings) func tamperingIsReportedAtTheRightRound(_ tampering: Tampering) throws {
        let store = try populated()
        try sql(store.path, tampering.statements)
        let result = try store.verifyHistory()
        let problem = try #require(result.problem)
        #expect(problem.kind == tampering.kind)
        #expect(problem.part == tampering.part)
        #expect(problem.roundID == tampering.round)
        if let missing = tampering.missing { #expect(problem.missingIDs == missing) }
        #expect(!problem.message.contains("\n"))
        if let round = tampering.round { #expect(problem.message.contains("round \(round) (#")) }
        #expect(problem.chain == (tampering.name == "an outcome erased" ? "outcome" : "round"))
    }

    @Test func messagesNameTheRoundAndThePart() throws {
        let store = try populated()
        try sql(store.path, "UPDATE round SET intent = '[]' WHERE round_id = 'r5'")
        #expect(try store.verifyHistory().problem?.message == "round r5 (#5) altered: its intent (planned actions) does not match its hash")
        let other = try populated()
        try sql(other.path, "DELETE FROM action WHERE round = 4", "DELETE FROM round WHERE id = 4")
        #expect(try other.verifyHistory().problem?.message
            == "round #4 missing between round r3 (#3) and round r5 (#5): it links to neither round r3 (#3) nor a prune")
        let newest = try populated()
        try sql(newest.path, "DELETE FROM action WHERE round = 7", "DELETE FROM round WHERE id = 7")
        #expect(try newest.verifyHistory().problem?.message.hasPrefix("round(s) missing after round r6 (#6), the newest") == true)
    }

    @Test func recordingGoesOnWhenTheChainStateIsDeleted() throws {
        let store = try populated()
        try sql(store.path, "DELETE FROM history_chain")
        #expect(try store.verifyHistory().problem?.message == "the chain state (table history_chain) was deleted")
        try store.recordRound(finished("r8", tick: 60).0, actions: actions(tick: 60))
        let problem = try #require(try store.verifyHistory().problem)
        #expect(problem.kind == .missing && problem.roundID == "r8")
    }

    @Test func aRestoredRowWithItsOldContentIsIntactAgain() throws {
        let store = try populated()
        let original = try sql(store.path, "SELECT node FROM round WHERE round_id = 'r2'")
        try sql(store.path, "UPDATE round SET node = 'evil' WHERE round_id = 'r2'")
        #expect(try store.verifyHistory().problem?.part == .identity)
        try sql(store.path, "UPDATE round SET node = '\(original)' WHERE round_id = 'r2'")
        #expect(try store.verifyHistory().isIntact)
    }

    @Test func pruneKeepsTheChainVerifiable() throws {
        let store = try PlanStore.open(path: temporaryPath())
        // Recorded out of start order (a node catching up records old rounds after new ones), so
        // what a prune deletes is not a prefix of the chain: batches in reverse tick order,
        // two-step rounds whose outcomes come in another order, unfinished rounds.
        for batch in 0..<3 {
            try store.recordRounds((0..<10).reversed().map { finished("b\(batch)-\($0)", tick: Double($0 * 100 + batch * 7)) })
        }
        for index in 0..<6 { try store.recordIntent(round("t\(index)", producer: "t", tick: Double(index * 150 + 3))) }
        for index in [4, 0, 2, 5] {
            try store.recordOutcome(roundID: "t\(index)", finishedAt: at(Double(index * 150 + 4)), actions: actions(tick: Double(index * 150)))
        }
        #expect(try store.verifyHistory().verified == 36)

        let first = try store.prune(olderThan: at(450), keep: nil, dryRun: false)
        #expect(first.rounds > 0 && first.rounds < 36)
        var result = try store.verifyHistory()
        #expect(result.problem == nil)
        #expect(result.verified == 36 - first.rounds && result.pruned == first.rounds)

        // Recording goes on after a prune: a late outcome, rounds old and new, an unfinished one.
        try store.recordOutcome(roundID: "t3", finishedAt: at(500), actions: [])
        try store.recordRounds([finished("late-old", tick: 1), finished("late-new", tick: 5_000)])
        try store.recordIntent(round("open", producer: "o", tick: 6_000))
        result = try store.verifyHistory()
        #expect(result.problem == nil)
        #expect(result.verified == 36 - first.rounds + 3)

        let second = try store.prune(olderThan: nil, keep: 5, dryRun: false)
        result = try store.verifyHistory()
        #expect(result.problem == nil)
        #expect(result.verified == 5 && result.pruned == first.rounds + second.rounds)

        // Everything pruned, then new rounds: they link to the pruned head through the bridge.
        _ = try store.prune(olderThan: nil, keep: 0, dryRun: false)
        #expect(try store.verifyHistory().problem == nil)
        #expect(try store.verifyHistory().verified == 0)
    }

    @Test func afterPruningEverythingNewRoundsStillVerifyAndTamperingShows() throws {
        let store = try populated()
        _ = try store.prune(olderThan: nil, keep: 0, dryRun: false)
        try store.recordRounds([finished("n1", tick: 100), finished("n2", tick: 110), finished("n3", tick: 120)])
        try store.recordIntent(round("n4", tick: 130))
        let result = try store.verifyHistory()
        #expect(result.problem == nil && result.verified == 4 && result.pruned == 7)
        try sql(store.path, "UPDATE round SET intent = '[]' WHERE round_id = 'n2'")
        #expect(try store.verifyHistory().problem?.roundID == "n2")
    }

    @Test func pruningDoesNotHideADeletionMadeByHand() throws {
        let store = try populated()
        try sql(store.path, "DELETE FROM action WHERE round = 4", "DELETE FROM round WHERE id = 4")
        // A prune elsewhere in the chain leaves the break as it was.
        _ = try store.prune(olderThan: at(5), keep: nil, dryRun: false)  // r1, r2
        var problem = try #require(try store.verifyHistory().problem)
        #expect(problem.kind == .missing && problem.roundID == "r5")
        // Pruning the rounds around the gap does not bridge it either.
        _ = try store.prune(olderThan: at(35), keep: nil, dryRun: false)  // r3, r5
        problem = try #require(try store.verifyHistory().problem)
        #expect(problem.kind == .missing && problem.roundID == "r6")
        // A dry run changes nothing.
        #expect(try store.prune(olderThan: at(1_000), keep: nil, dryRun: true).rounds == 2)
        #expect(try store.verifyHistory().problem?.roundID == "r6")
    }

    @Test func anOlderDatabaseKeepsItsRoundsUnchained() throws {
        let path = temporaryPath()
        // A database as 0002 left it, with rounds: two finished, one still waiting for its outcome.
        let migrations = try RotaMigrations.all().filter { $0.identifier < "0003" }
        #expect(migrations.count == 2)
        var statements = migrations.map(\.sql)
        statements.append("CREATE TABLE grdb_migrations (identifier TEXT NOT NULL PRIMARY KEY)")
        statements += migrations.map { "INSERT INTO grdb_migrations VALUES ('\($0.identifier)')" }
        statements += [
            "INSERT INTO job (id, key) VALUES (1, 'a')",
            "INSERT INTO round (round_id, pool, producer, revision, node, tick_ms, started_ms, finished_ms, intent, started) VALUES ('old1', 'demo', 'p', 1, 'n', 1000, 1001, 1002, '[]', 1)",
            "INSERT INTO round (round_id, pool, producer, revision, node, tick_ms, started_ms, finished_ms, intent, started) VALUES ('old2', 'demo', 'p', 1, 'n', 2000, 2001, 2002, '[]', 1)",
            "INSERT INTO round (round_id, pool, producer, revision, node, tick_ms, started_ms, intent) VALUES ('old3', 'demo', 'p', 1, 'n', 3000, 3001, '[]')",
            "INSERT INTO action VALUES (1, 0, 1, 'start', 'started', NULL, NULL, 1001)",
            "INSERT INTO action VALUES (2, 0, 1, 'start', 'started', NULL, NULL, 2001)",
        ]
        let script = """
            import sqlite3, sys
            c = sqlite3.connect(sys.argv[1], isolation_level=None)
            for statement in sys.argv[2:]:
                c.executescript(statement)
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, path] + statements
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)

        let store = try PlanStore.open(path: path)
        #expect(try store.appliedMigrations().contains("0003_history_chain"))
        var result = try store.verifyHistory()
        #expect(result.problem == nil && result.verified == 0 && result.unchained == 3)
        // The pending old round's outcome arrives after the upgrade: unchained as its round.
        try store.recordOutcome(roundID: "old3", finishedAt: at(0), actions: actions(tick: 0))
        try store.recordRounds([finished("new1", tick: 10), finished("new2", tick: 20)])
        try store.recordIntent(round("new3", tick: 30))
        result = try store.verifyHistory()
        #expect(result.problem == nil && result.verified == 3 && result.unchained == 3)

        // A round slipped in without hashes is not taken for an old one.
        try sql(path, "INSERT INTO round (round_id, pool, producer, revision, node, tick_ms, started_ms) VALUES ('fake', 'demo', 'p', 1, 'n', 5, 5)")
        let problem = try #require(try store.verifyHistory().problem)
        #expect(problem.kind == .altered && problem.roundID == "fake")
        // It never entered the chain: removing it restores the history (the next round reuses its id).
        try sql(path, "DELETE FROM round WHERE round_id = 'fake'")
        try store.recordRound(finished("new4", tick: 40).0, actions: [])
        #expect(try store.verifyHistory().isIntact)

        // Pruning old and new rounds alike keeps it verifiable.
        _ = try store.prune(olderThan: nil, keep: 3, dryRun: false)
        result = try store.verifyHistory()
        #expect(result.problem == nil && result.verified == 3 && result.unchained == 0)
    }
}

/// The chain heads of a fixed history, as computed by the hand-written SHA-256 and one INSERT per
/// action row: a change to hashing or to how action rows are written must leave them identical,
/// or databases recorded before it stop verifying.
@Suite struct ChainStabilityTests {
    private static func actions(_ count: Int, tick: Double, salt: Int) -> [ActionRecord] {
        let kinds: [(ActionKind, ActionOutcome)] = [(.start, .started), (.start, .alreadyRunning), (.stop, .stopped), (.stop, .notFound),
            (.restart, .failed), (.stop, .stopFailed), (.notify, .notified), (.start, .unplaced)]
        return (0..<count).map { index in
            let (kind, outcome) = kinds[(index + salt) % kinds.count]
            let job: String = index % 5 == 0 ? "job \"\(index % 7)\" ✓" : "job/\((index * 13 + salt) % 40)"
            let error: String? = outcome == .failed ? "exit \(index)" : nil
            let payloadHash: String? = index % 3 == 0 ? nil : "p\(index)"
            let reason: String? = index % 4 == 1 ? "retired" : nil
            let actor: String? = index % 6 == 2 ? "ops@host" : nil
            let time = at(tick + Double(index) / 1000)
            return ActionRecord(job: job, action: kind, outcome: outcome, error: error, payloadHash: payloadHash, at: time, reason: reason,
                actor: actor)
        }
    }

    @Test func headsOfAFixedHistoryAreUnchanged() throws {
        let store = try PlanStore.open(path: temporaryPath())
        // Round sizes around the multi-row INSERT's chunk boundaries (0, 1, 63, 64, 65, 130).
        try store.recordIntent(round("s1", tick: 0, jobs: ["x", "y\\z"]))
        try store.recordOutcome(roundID: "s1", finishedAt: at(1), actions: Self.actions(130, tick: 0, salt: 0), error: "partly")
        var batch: [(RoundRecord, [ActionRecord])] = []
        for (index, size) in [0, 1, 63, 64, 65].enumerated() {
            var record = round("s\(index + 2)", producer: "q\(index % 2)", tick: Double(10 * (index + 1)))
            record.finishedAt = at(Double(10 * (index + 1)) + 1)
            batch.append((record, Self.actions(size, tick: Double(10 * (index + 1)), salt: index)))
        }
        try store.recordRounds(batch)
        var events: [JobEventRecord] = []
        for index in 0..<5 {
            let kind: JobEventKind = index % 2 == 0 ? .started : .stopped
            let actor: String? = index == 3 ? "ops@host" : nil
            let roundID: String? = index == 0 ? "s1" : nil
            events.append(JobEventRecord(pool: "demo", entryID: "\(index)-0", index: 0, job: "job/\(index)", kind: kind, worker: "w\(index % 2)",
                node: "n1", nodeID: "id-n1", at: at(100 + Double(index)), actor: actor, round: roundID, requeued: index == 4))
        }
        try store.recordJobEvents(events)
        let result = try store.verifyHistory()
        #expect(result.problem == nil && result.verified == 6 && result.events == 5)
        #expect(result.head == "4e8ed2c7ae7438b0d0c10b38abb9ebce94f0362f4f4fa1096f5b1f55e7fe9155")
        #expect(result.outcomeHead == "015093ee5ace16603cd1e922ff2b732e74fba94933ada616b01cc62a6b6b68cf")
        #expect(result.eventHead == "790086040afefcc441adb38f03cdd81ac53ff235c56a567b8c7a9ce84f61ad63")
        // The rows read back as written, in order.
        let (_, stored) = try #require(try store.round(id: "s1"))
        #expect(stored == Self.actions(130, tick: 0, salt: 0))
        #expect(try store.round(id: "s6")?.1 == batch[4].1)
    }

    @Test func aFailedActionInsertRecordsNothingOfTheBatch() throws {
        let store = try PlanStore.open(path: temporaryPath())
        try store.recordRounds([finished("r1", tick: 0)])
        let before = try store.verifyHistory()
        // Fails the 71st row: in the second chunk (64 + 32 + 4) of the second round.
        try sql(store.path, "CREATE TRIGGER refuse BEFORE INSERT ON action WHEN NEW.seq = 70 BEGIN SELECT RAISE(FAIL, 'refused'); END")
        var second = round("r3", tick: 20)
        second.finishedAt = at(21)
        #expect(throws: StoreError.self) {
            try store.recordRounds([finished("r2", tick: 10), (second, Self.actions(100, tick: 20, salt: 1))])
        }
        let after = try store.verifyHistory()
        #expect(after.problem == nil && after.verified == 1 && after.head == before.head && after.outcomeHead == before.outcomeHead)
        #expect(try sql(store.path, "SELECT COUNT(*) FROM action") == "3")
        // The statements work again once the cause is gone.
        try sql(store.path, "DROP TRIGGER refuse")
        try store.recordRounds([finished("r2", tick: 10), (second, Self.actions(100, tick: 20, salt: 1))])
        #expect(try store.round(id: "r3")?.1 == Self.actions(100, tick: 20, salt: 1))
        #expect(try store.verifyHistory().verified == 3)
    }
}
