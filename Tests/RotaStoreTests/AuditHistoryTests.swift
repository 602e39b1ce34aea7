import Foundation
@testable import RotaStore
import RotaMigrations
import RotaTestSupport
import Testing

private func scratch(_ name: String = "audit") -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("rota-\(name)-\(UUID().uuidString).sqlite").path
}

private func time(_ seconds: Double) -> Date { Date(timeIntervalSince1970: 1_800_000_000 + seconds) }

/// A job-log entry with one job (index 0 unless given).
private func event(_ entry: String, _ job: String, _ kind: JobEventKind, worker: String, at seconds: Double, index: Int = 0,
                   round: String? = nil, requeued: Bool = false, reason: String? = nil, actor: String? = nil, pool: String = "demo")
    -> JobEventRecord
{
    JobEventRecord(pool: pool, entryID: entry, index: index, job: job, kind: kind, worker: worker, node: "node-of-\(worker)",
        nodeID: "id-\(worker)", at: time(seconds), actor: actor, reason: reason, round: round, requeued: requeued)
}

private func finishedRound(_ id: String, tick: Double, producer: String = "p", _ actions: [ActionRecord]) -> (RoundRecord, [ActionRecord]) {
    var record = RoundRecord(roundID: id, pool: "demo", producer: producer, revision: 4, node: "n1", tick: time(tick), startedAt: time(tick))
    record.finishedAt = time(tick + 0.5)
    return (record, actions)
}

/// Runs `tampering` on the store's file: verification must name an altered job event.
private func expectEventAltered(_ store: PlanStore, by tampering: String) throws {
    try sql(store.path, tampering)
    let problem = try #require(try store.verifyHistory().problem)
    #expect(problem.chain == "event" && problem.kind == .altered)
}

/// The fixture written by the code of migration 0005 (see the Fixtures folder), copied to a scratch file.
private func pre0006Database() throws -> String {
    let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/pre-0006.sqlite")
    let path = scratch("pre0006")
    try FileManager.default.copyItem(atPath: fixture.path, toPath: path)
    return path
}

@Suite struct AuditMigrationTests {
    @Test func aDatabaseWrittenBefore0006MigratesAndStillVerifies() throws {
        let path = try pre0006Database()
        #expect(try sql(path, "SELECT COUNT(*) FROM grdb_migrations WHERE identifier = '0006_audit_history'") == "0")
        let store = try PlanStore.open(path: path)
        #expect(try store.appliedMigrations().contains("0006_audit_history"))
        var result = try store.verifyHistory()
        #expect(result.problem == nil)
        #expect(result.verified == 6 && result.pruned == 2 && result.events == 0)
        // The old rows kept their content (a reason, an error, no actor).
        let (old4, actions) = try #require(try store.round(id: "old4"))
        #expect(old4.revision == 3 && actions.map(\.reason) == [nil, "retired"] && actions.allSatisfy { $0.actor == nil })
        #expect(try store.round(id: "old3")?.1.last?.error == "boom")
        // What the old history says ran: old/a's last action was already-running (started before).
        let running = try store.jobsRunning(at: Date(timeIntervalSince1970: 1_700_000_060))
        #expect(running.map(\.job) == ["old/a"])
        #expect(running.first?.worker == nil)

        // Recording goes on with the new columns and outcomes, on all three chains.
        try store.recordRounds([finishedRound("new1", tick: 0, [
            ActionRecord(job: "old/a", action: .stop, outcome: .stopFailed, error: "handler hung", at: time(0.1), actor: "node-1"),
            ActionRecord(job: "old/b", action: .notify, outcome: .notified, at: time(0.2), actor: "ops@laptop"),
            ActionRecord(job: "old/c", action: .start, outcome: .unplaced, at: time(0.3)),
        ])])
        try store.recordOutcome(roundID: "old-open", finishedAt: time(1), actions: [])
        try store.recordJobEvents([event("1-0", "old/a", .started, worker: "w1", at: 2)])
        result = try store.verifyHistory()
        #expect(result.problem == nil && result.verified == 7 && result.events == 1)
        // The bridges table was rebuilt: a prune of rounds and events bridges all three chains.
        _ = try store.prune(olderThan: time(5), keep: nil, dryRun: false)
        result = try store.verifyHistory()
        #expect(result.problem == nil && result.verified == 0 && result.events == 0 && result.eventsPruned == 1)
        try store.recordRounds([finishedRound("new2", tick: 10, [])])
        try store.recordJobEvents([event("2-0", "old/a", .stopped, worker: "w1", at: 11)])
        #expect(try store.verifyHistory().problem == nil)
    }

    @Test func newOutcomesAndTheActorAreStoredAndStopFailedCountsAsFailed() throws {
        let store = try PlanStore.open(path: scratch())
        let (round, recorded) = finishedRound("r1", tick: 0, [
            ActionRecord(job: "a", action: .stop, outcome: .stopFailed, error: "stop handler failed", at: time(0.1), reason: "paused",
                actor: "node-2"),
            ActionRecord(job: "b", action: .stop, outcome: .stopped, at: time(0.2)),
            ActionRecord(job: "c", action: .notify, outcome: .notified, at: time(0.3), actor: "ops@host"),
        ])
        try store.recordRound(round, actions: recorded)
        let (record, actions) = try #require(try store.round(id: "r1"))
        #expect(record.failed == 1 && record.stopped == 1 && record.started == 0)
        #expect(actions.map(\.outcome) == [.stopFailed, .stopped, .notified])
        #expect(actions.map(\.actor) == ["node-2", nil, "ops@host"])
        #expect(try sql(store.path, "SELECT actor FROM job_timeline WHERE job = 'c'") == "ops@host")
        #expect(try store.verifyHistory().isIntact)
    }

    static let actorTamperings = [
        "UPDATE action SET actor = 'someone-else' WHERE seq = 0",
        "UPDATE action SET actor = NULL WHERE seq = 0",
        "UPDATE action SET actor = 'intruder' WHERE seq = 1",
    ]

    @Test(arguments: actorTamperings) func theActorIsChained(_ tampering: String) throws {
        let store = try PlanStore.open(path: scratch())
        let (round, actions) = finishedRound("r1", tick: 0, [
            ActionRecord(job: "a", action: .stop, outcome: .stopped, at: time(0.1), actor: "node-1"),
            ActionRecord(job: "b", action: .start, outcome: .started, at: time(0.2)),
        ])
        try store.recordRound(round, actions: actions)
        #expect(try store.verifyHistory().isIntact)
        try sql(store.path, tampering)
        let problem = try #require(try store.verifyHistory().problem)
        #expect(problem.kind == .altered && problem.part == .actions && problem.roundID == "r1")
    }
}

@Suite struct JobEventTests {
    @Test func recordingIsIdempotentByEntryAndIndex() throws {
        let store = try PlanStore.open(path: scratch())
        let batch = [event("5-0", "a", .started, worker: "w1", at: 1), event("5-0", "b", .started, worker: "w1", at: 1, index: 1),
                     event("6-0", "a", .stopped, worker: "w1", at: 2, reason: "retired", actor: "n1")]
        #expect(try store.recordJobEvents(batch) == 3)
        let head = try store.verifyHistory().eventHead
        #expect(try store.recordJobEvents(batch) == 0)
        #expect(try store.verifyHistory().eventHead == head)
        // An overlapping batch: only the new entry counts; the same entry in another pool is another event.
        #expect(try store.recordJobEvents([batch[2], event("7-0", "b", .stopped, worker: "w1", at: 3),
                                           event("5-0", "a", .started, worker: "w1", at: 1, pool: "other")]) == 2)
        let recorded = try store.jobEvents()
        #expect(recorded.count == 5)
        #expect(recorded[2] == batch[2])
        #expect(try store.jobEvents(job: "b").map(\.entryID) == ["5-0", "7-0"])
        let result = try store.verifyHistory()
        #expect(result.isIntact && result.events == 5)
    }

    struct Tampering: Sendable, CustomTestStringConvertible {
        var name: String
        var statements: [String]
        var kind: HistoryProblem.Kind
        var event: String?
        var testDescription: String { name }
    }

    static let tamperings = [
        Tampering(name: "kind", statements: ["UPDATE job_event SET kind = 'given-up' WHERE entry_id = '2-0'"], kind: .altered,
            event: "demo 2-0#0"),
        Tampering(name: "worker", statements: ["UPDATE job_event SET worker = 'w9' WHERE entry_id = '3-0'"], kind: .altered,
            event: "demo 3-0#0"),
        Tampering(name: "time", statements: ["UPDATE job_event SET at_ms = at_ms + 1 WHERE entry_id = '1-0'"], kind: .altered,
            event: "demo 1-0#0"),
        Tampering(name: "reason removed", statements: ["UPDATE job_event SET reason = NULL WHERE entry_id = '2-0'"], kind: .altered,
            event: "demo 2-0#0"),
        Tampering(name: "job renamed", statements: ["UPDATE job SET key = 'zzz' WHERE key = 'b'"], kind: .altered, event: "demo 3-0#0"),
        Tampering(name: "a middle event deleted", statements: ["DELETE FROM job_event WHERE entry_id = '2-0'"], kind: .missing,
            event: "demo 3-0#0"),
        Tampering(name: "the newest event deleted", statements: ["DELETE FROM job_event WHERE entry_id = '4-0'"], kind: .missing),
        Tampering(name: "an event inserted by hand",
            statements: ["INSERT INTO job_event (pool, entry_id, idx, job, kind, worker, node, node_id, at_ms, requeued, prev_hash, hash) SELECT pool, '9-0', 0, job, 'stopped', worker, node, node_id, at_ms + 5, 0, hash, hash FROM job_event WHERE entry_id = '4-0'"],
            kind: .altered, event: "demo 9-0#0"),
        Tampering(name: "the head replaced", statements: ["UPDATE history_chain SET event_head = randomblob(32)"], kind: .missing),
    ]

    @Test(arguments: tamperings) func theEventChainShowsTampering(_ tampering: Tampering) throws {
        let store = try PlanStore.open(path: scratch())
        try store.recordJobEvents([event("1-0", "a", .started, worker: "w1", at: 1)])
        try store.recordJobEvents([event("2-0", "a", .stopped, worker: "w1", at: 2, reason: "paused"),
                                   event("3-0", "b", .started, worker: "w2", at: 3), event("4-0", "b", .lost, worker: "w2", at: 4)])
        #expect(try store.verifyHistory().isIntact)
        try sql(store.path, tampering.statements)
        let problem = try #require(try store.verifyHistory().problem)
        #expect(problem.chain == "event" && problem.kind == tampering.kind && problem.event == tampering.event)
        #expect(!problem.message.contains("\n"))
    }

    @Test func pruningRemovesOldEventsAndKeepsTheChainVerifiable() throws {
        let store = try PlanStore.open(path: scratch())
        // Recorded out of time order (a node catching up), so the pruned events are not a prefix.
        try store.recordJobEvents((0..<10).reversed().map { event("\($0)-0", "j\($0 % 3)", .started, worker: "w\($0)", at: Double($0 * 10)) })
        try store.recordJobEvents((10..<20).map { event("\($0)-0", "j\($0 % 3)", .stopped, worker: "w\($0 - 10)", at: Double($0 * 10)) })
        #expect(try store.verifyHistory().events == 20)
        #expect(try store.prune(olderThan: time(45), keep: nil, dryRun: true).jobEvents == 5)
        #expect(try store.prune(olderThan: nil, keep: 0, dryRun: false).jobEvents == 0)  // keep counts rounds only
        #expect(try store.jobEvents().count == 20)
        let report = try store.prune(olderThan: time(45), keep: nil, dryRun: false)
        #expect(try report.jobEvents == 5 && store.jobEvents().count == 15)
        var result = try store.verifyHistory()
        #expect(result.problem == nil && result.events == 15 && result.eventsPruned == 5)
        try store.recordJobEvents([event("30-0", "j1", .started, worker: "w7", at: 1)])  // an old one, late
        _ = try store.prune(olderThan: time(150), keep: nil, dryRun: false)
        result = try store.verifyHistory()
        #expect(result.problem == nil && result.events == 5 && result.eventsPruned == 16)
        // A deletion by hand after the prunes still shows.
        try sql(store.path, "DELETE FROM job_event WHERE entry_id = '17-0'")
        #expect(try store.verifyHistory().problem?.chain == "event")
    }
}

@Suite struct JobRunTests {
    /// a: start/stop on w1. b: started on w1, taken over by w2 (w2 still runs it). c: started by
    /// round r1 on w3, w3 lost, requeued onto w4 (runs). d: a manual start, running.
    private func scenario() throws -> PlanStore {
        let store = try PlanStore.open(path: scratch())
        try store.recordRound(finishedRound("r1", tick: 0, producer: "poller", []).0, actions: [])
        try store.recordJobEvents([
            event("1-0", "a", .started, worker: "w1", at: 0, round: "r1", reason: "due"),
            event("1-0", "b", .started, worker: "w1", at: 0, index: 1, round: "r1"),
            event("1-0", "c", .started, worker: "w3", at: 0, index: 2, round: "r1"),
            event("2-0", "d", .started, worker: "w1", at: 5, actor: "ops@host"),
            event("3-0", "a", .stopped, worker: "w1", at: 10, reason: "retired", actor: "n1"),
            event("4-0", "b", .started, worker: "w2", at: 20),
            event("5-0", "b", .takenOver, worker: "w1", at: 21),
            event("6-0", "c", .lost, worker: "w3", at: 30),
            event("7-0", "c", .orphanRequeued, worker: "w3", at: 31),
            event("8-0", "c", .started, worker: "w4", at: 32, requeued: true),
            event("9-0", "d", .stopFailed, worker: "w1", at: 40),
        ])
        return store
    }

    @Test func startsPairWithTheFirstLaterEndOnTheSameWorker() throws {
        let store = try scenario()
        let runs = try store.jobRuns()
        let summary = runs.map { "\($0.job) \($0.worker) \(Int($0.startedAt.timeIntervalSince(time(0)))) "
            + "\($0.stoppedAt.map { String(Int($0.timeIntervalSince(time(0)))) } ?? "open") \($0.stopKind?.rawValue ?? "-") \($0.producer ?? "-")" }
        #expect(summary == [
            "a w1 0 10 stopped poller", "b w1 0 21 taken-over poller", "c w3 0 30 lost poller", "d w1 5 open - -",
            "b w2 20 open - -", "c w4 32 open - poller",
        ])
        let a = try #require(runs.first { $0.job == "a" })
        #expect(a.stopReason == "retired" && a.stopActor == "n1" && a.startReason == "due" && a.roundID == "r1" && a.revision == 4)
        #expect(try store.jobRuns(job: "d").first?.actor == "ops@host")
        // Time windows: runs overlapping [15, 25).
        #expect(try store.jobRuns(since: time(15), until: time(25)).map { "\($0.job) \($0.worker)" } == ["b w1", "c w3", "d w1", "b w2"])
        #expect(try store.jobRuns(job: "c", limit: 1).map(\.worker) == ["w4"])
    }

    @Test func theViewAnswersInPlainSQL() throws {
        let store = try scenario()
        #expect(try sql(store.path, """
            SELECT job, worker, node, started_at, COALESCE(stopped_at, 'running'), COALESCE(stop_kind, '-'), COALESCE(stop_reason, '-')
            FROM job_runs WHERE job = 'a' ORDER BY started_ms
            """) == "a|w1|node-of-w1|2027-01-15T08:00:00.000Z|2027-01-15T08:00:10.000Z|stopped|retired")
        #expect(try sql(store.path, """
            SELECT job || ' ' || worker FROM job_runs WHERE started_ms <= \(PlanStore.ms(time(25)))
              AND (stopped_ms IS NULL OR stopped_ms > \(PlanStore.ms(time(25)))) ORDER BY job
            """) == "b w2\nc w3\nd w1")
        #expect(try sql(store.path, "SELECT job FROM job_runs WHERE stop_kind = 'lost'") == "c")
    }

    @Test func jobsRunningFromTheFacts() throws {
        let store = try scenario()
        func running(_ seconds: Double) throws -> [String] {
            try store.jobsRunning(at: time(seconds)).map { "\($0.job)@\($0.worker ?? "?")" }
        }
        #expect(try running(-1) == [])
        #expect(try running(1) == ["a@w1", "b@w1", "c@w3"])
        #expect(try running(20.5) == ["b@w2", "c@w3", "d@w1"])  // b on two workers: the latest open run
        #expect(try running(21) == ["b@w2", "c@w3", "d@w1"])  // w1's run of b ended; w2's goes on
        #expect(try running(31) == ["b@w2", "d@w1"])  // c lost, not yet requeued
        #expect(try running(50) == ["b@w2", "c@w4", "d@w1"])  // a stop that failed leaves d running
        let c = try #require(try store.jobsRunning(at: time(50)).first { $0.job == "c" })
        #expect(c.producer == "poller" && c.node == "node-of-w4" && c.since == time(32))
        // The same from the view: the latest state change at or before T.
        #expect(try sql(store.path, """
            SELECT state FROM job_state_changes WHERE job = 'b' AND at_ms <= \(PlanStore.ms(time(21))) ORDER BY at_ms DESC LIMIT 1
            """) == "running")
        #expect(try sql(store.path, """
            SELECT state FROM job_state_changes WHERE job = 'c' AND at_ms <= \(PlanStore.ms(time(31))) ORDER BY at_ms DESC LIMIT 1
            """) == "stopped")
    }

    @Test func legacyActionsAnswerBeforeThePoolsFirstJobEvent() throws {
        let store = try PlanStore.open(path: scratch())
        // History from before the job log: rounds only.
        try store.recordRounds([
            finishedRound("old1", tick: 0, [ActionRecord(job: "x", action: .start, outcome: .started, at: time(0)),
                                           ActionRecord(job: "y", action: .start, outcome: .started, at: time(0))]),
            finishedRound("old2", tick: 10, [ActionRecord(job: "y", action: .stop, outcome: .stopped, at: time(10))]),
        ])
        #expect(try store.jobsRunning(at: time(15)).map(\.job) == ["x"])
        // The job log starts at 100. A round after that intends to start z, but the pool never did
        // (no event): the facts rule from 100 on. x runs on since before the log (no event says otherwise).
        try store.recordJobEvents([event("1-0", "w", .started, worker: "w1", at: 100)])
        try store.recordRounds([finishedRound("new1", tick: 110, [ActionRecord(job: "z", action: .start, outcome: .started, at: time(110))])])
        #expect(try store.jobsRunning(at: time(15)).map(\.job) == ["x"])
        let later = try store.jobsRunning(at: time(120))
        #expect(later.map(\.job) == ["w", "x"])
        #expect(later.map(\.worker) == ["w1", nil])
        #expect(later.last?.producer == "p" && later.last?.since == time(0))
        // An event for x ends it, as the facts say.
        try store.recordJobEvents([event("2-0", "x", .stopped, worker: "w0", at: 130)])
        #expect(try store.jobsRunning(at: time(140)).map(\.job) == ["w"])
        #expect(try sql(store.path, "SELECT job || ' ' || source || ' ' || state FROM job_state_changes ORDER BY at_ms, job")
            == "x action running\ny action running\ny action stopped\nw event running\nx event stopped")
    }

    @Test func jobsRunningStaysFastOnALargeHistory() throws {
        let store = try PlanStore.open(path: scratch("large"))
        // 10,000 jobs, 100,000 events (5 runs each, on rotating workers; every other job's last run
        // still open), inserted directly: the query is measured here, not the chain.
        let script = """
            import sqlite3, sys
            c = sqlite3.connect(sys.argv[1], isolation_level=None)
            c.execute("BEGIN")
            c.executemany("INSERT INTO job (id, key) VALUES (?, ?)", ((j + 1, "job/%05d" % j) for j in range(10000)))
            def rows():
                n = 0
                for j in range(10000):
                    for run in range(5):
                        start = 1800000000000 + run * 3600000 + j
                        worker = "w%d" % ((j + run) % 50)
                        n += 1
                        yield (n, "demo", "%d-0" % n, 0, j + 1, "started", worker, "node", "nid", start, 0, b"", b"")
                        if run < 4 or j % 2 == 0:
                            n += 1
                            yield (n, "demo", "%d-0" % n, 0, j + 1, "stopped", worker, "node", "nid", start + 1800000, 0, b"", b"")
            c.executemany("INSERT INTO job_event (id, pool, entry_id, idx, job, kind, worker, node, node_id, at_ms, requeued, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows())
            c.execute("COMMIT")
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, store.path]
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        #expect(try sql(store.path, "SELECT COUNT(*) FROM job_event") == "95000")
        let clock = ContinuousClock()
        for (offset, expected) in [(5.0 * 3600, 5_000), (3.9 * 3600, 0), (4.1 * 3600, 10_000)] {
            let started = clock.now
            let running = try store.jobsRunning(at: time(offset))
            let elapsed = clock.now - started
            #expect(running.count == expected)
            #expect(elapsed < .milliseconds(500), "jobsRunning(at:) took \(elapsed)")
        }
    }
}

@Suite struct StreamCursorAndGapTests {
    @Test func theCursorOnlyMovesForwardByNumberNotText() throws {
        let store = try PlanStore.open(path: scratch())
        #expect(try store.streamCursor(pool: "demo", stream: "history") == nil)
        #expect(try store.setStreamCursor(pool: "demo", stream: "history", lastID: "9-5"))
        #expect(try store.setStreamCursor(pool: "demo", stream: "history", lastID: "10-0"))  // "10-0" < "9-5" as text
        #expect(try store.setStreamCursor(pool: "demo", stream: "history", lastID: "9-9") == false)
        #expect(try store.setStreamCursor(pool: "demo", stream: "history", lastID: "10-0") == false)
        #expect(try store.setStreamCursor(pool: "demo", stream: "history", lastID: "10-10"))
        #expect(try store.setStreamCursor(pool: "demo", stream: "history", lastID: "10-2") == false)
        #expect(try store.streamCursor(pool: "demo", stream: "history") == "10-10")
        #expect(try store.streamCursor(pool: "demo", stream: "job-log") == nil)
        for bad in ["", "10", "10-", "-1-0", "a-b", "1-2-3", "18446744073709551616-0"] {
            #expect(throws: StoreError.self) { try store.setStreamCursor(pool: "demo", stream: "history", lastID: bad) }
        }
    }

    @Test func gapsAreRecordedOnceAndReportedByVerify() throws {
        let store = try PlanStore.open(path: scratch())
        #expect(try store.recordGap(pool: "demo", stream: "history", after: "100-0", before: "200-3", at: time(1)))
        #expect(try store.recordGap(pool: "demo", stream: "history", after: "100-0", before: "200-3", at: time(2)) == false)
        #expect(try store.recordGap(pool: "other", stream: "job-log", after: "0-0", before: "5-0", at: time(3)))
        #expect(throws: StoreError.self) { try store.recordGap(pool: "demo", stream: "history", after: "9-0", before: "10-0x") }
        #expect(throws: StoreError.self) { try store.recordGap(pool: "demo", stream: "history", after: "10-0", before: "9-0") }
        #expect(try store.gaps().map(\.pool) == ["demo", "other"])
        #expect(try store.gaps(pool: "demo") == [HistoryGap(pool: "demo", stream: "history", after: "100-0", before: "200-3",
            detectedAt: time(1))])
        let result = try store.verifyHistory()
        #expect(result.isIntact && !result.isComplete && result.gaps.count == 2)
    }

    @Test func overlapIsDecidedOnEntryIDs() {
        func gap(_ after: String, _ before: String) -> HistoryGap {
            HistoryGap(pool: "p", stream: "s", after: after, before: before, detectedAt: time(0))
        }
        #expect(gap("1-0", "5-0").overlaps(gap("4-0", "9-0")))
        #expect(gap("1-0", "5-0").overlaps(gap("2-0", "3-0")))
        #expect(!gap("1-0", "5-0").overlaps(gap("5-0", "9-0")))  // 5-0 itself was read
        #expect(gap("1-0", "5-0").overlaps(gap("4-9", "5-0")))
        #expect(!gap("1-0", "1-1").overlaps(gap("0-0", "9-0")))  // no ID lies between 1-0 and 1-1
        #expect(gap("9-0", "10-0").overlaps(gap("9-5", "12-0")))  // numbers, not text
    }
}

@Suite struct HistorySyncTests {
    /// OTHER has rounds r1…r3 and events 1…4 and read the history stream to 900-0 and the job log
    /// to 50-0 (with its own gap there); D has r1, r3 unfinished, event 1, and three gaps.
    private func twoNodes() throws -> (d: PlanStore, other: PlanStore) {
        let other = try PlanStore.open(path: scratch("other"))
        let d = try PlanStore.open(path: scratch("d"))
        let rounds = (1...3).map { finishedRound("r\($0)", tick: Double($0 * 10), [
            ActionRecord(job: "j\($0)", action: .start, outcome: .started, at: time(Double($0 * 10)), actor: "n\($0)")]) }
        try other.recordRounds(rounds)
        try other.recordIntent(finishedRound("r4", tick: 40, []).0)
        let events = [event("1-0", "j1", .started, worker: "w1", at: 10), event("2-0", "j2", .started, worker: "w1", at: 20),
                      event("2-0", "j3", .started, worker: "w2", at: 20, index: 1), event("3-0", "j1", .stopped, worker: "w1", at: 30)]
        try other.recordJobEvents(events)
        try other.setStreamCursor(pool: "demo", stream: "history", lastID: "900-0")
        try other.setStreamCursor(pool: "demo", stream: "job-log", lastID: "50-0")
        try other.recordGap(pool: "demo", stream: "job-log", after: "20-0", before: "30-0")

        try d.recordRounds([rounds[0]])
        try d.recordIntent(rounds[2].0)
        try d.recordJobEvents([events[0]])
        try d.recordGap(pool: "demo", stream: "history", after: "100-0", before: "500-0")  // covered
        try d.recordGap(pool: "demo", stream: "job-log", after: "25-0", before: "40-0")  // OTHER lacks it too
        try d.recordGap(pool: "demo", stream: "history", after: "800-0", before: "950-0")  // OTHER not that far yet
        return (d, other)
    }

    @Test func syncCopiesWhatIsMissingAndFillsCoveredGaps() throws {
        let (d, other) = try twoNodes()
        let report = try d.sync(from: other.path, now: time(1000))
        #expect(report.rounds == 2 && report.outcomes == 1 && report.jobEvents == 3 && report.conflicts.isEmpty)
        #expect(report.filledGaps.map { "\($0.stream) \($0.after)" } == ["history 100-0"])
        #expect(try d.round(id: "r2")?.1.first?.actor == "n2")
        #expect(try d.round(id: "r3")?.0.finishedAt != nil)
        #expect(try d.round(id: "r4")?.0.finishedAt == nil)
        #expect(try d.jobEvents().count == 4)
        let result = try d.verifyHistory()
        #expect(result.problem == nil && result.verified == 4 && result.events == 4)
        #expect(result.gaps.map { "\($0.stream) \($0.after)" } == ["job-log 25-0", "history 800-0"])
        let filled = try d.gaps(includeFilled: true).first
        #expect(filled?.filledFrom == other.path && filled?.filledAt == time(1000))
        // Again: nothing new.
        let again = try d.sync(from: other.path)
        #expect(again.rounds == 0 && again.outcomes == 0 && again.jobEvents == 0 && again.filledGaps.isEmpty)
        #expect(try d.verifyHistory().isIntact)
        // The source was not written to.
        #expect(try other.verifyHistory().events == 4 && other.gaps().count == 1)
    }

    @Test func aSecondRoundForTheSameTickIsReportedNotCopied() throws {
        let (d, other) = try twoNodes()
        try d.recordRound(finishedRound("mine", tick: 20, []).0, actions: [])
        let report = try d.sync(from: other.path)
        #expect(report.rounds == 1 && report.conflicts.count == 1 && report.conflicts[0].contains("r2"))
        #expect(try d.verifyHistory().isIntact)
    }

    @Test func syncRefusesATamperedSource() throws {
        let (d, other) = try twoNodes()
        try sql(other.path, "UPDATE job_event SET worker = 'w9' WHERE entry_id = '2-0' AND idx = 1")
        let before = try d.verifyHistory()
        let error = try #require(throws: StoreError.self) { try d.sync(from: other.path) }
        #expect(error.code == .sourceTampered && error.message.contains("job event demo 2-0#1"))
        #expect(try d.verifyHistory() == before)
        #expect(try d.gaps().count == 3)
    }

    @Test func syncRefusesItselfAndFilesThatAreNotRotaDatabases() throws {
        let (d, _) = try twoNodes()
        #expect(throws: StoreError.self) { try d.sync(from: d.path) }
        let link = scratch("link")
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: d.path)
        #expect((try #require(throws: StoreError.self) { try d.sync(from: link) }).code == .sameDatabase)
        let plain = scratch("plain")
        try sql(plain, "CREATE TABLE round (x)")
        #expect((try #require(throws: StoreError.self) { try d.sync(from: plain) }).code == .notRotaDatabase)
        let garbage = scratch("garbage")
        try Data(repeating: 0x41, count: 8192).write(to: URL(fileURLWithPath: garbage))
        #expect(throws: StoreError.self) { try d.sync(from: garbage) }
        #expect((try #require(throws: StoreError.self) { try d.sync(from: scratch("missing")) }).code == .cannotOpen)
        // An older Rota's database is refused with a way out.
        let old = try pre0006Database()
        let refused = try #require(throws: StoreError.self) { try d.sync(from: old) }
        #expect(refused.code == .notRotaDatabase && refused.message.contains("older Rota"))
        // A schema changed by hand is not taken for Rota's.
        let changed = try PlanStore.open(path: scratch("changed"))
        try sql(changed.path, "CREATE TABLE extra (x)")
        #expect((try #require(throws: StoreError.self) { try d.sync(from: changed.path) }).code == .notRotaDatabase)
    }
}

/// Runs on a worker found dead end at its last keep-alive (migration 0007), unless the worker
/// came back and ended its copy itself.
@Suite struct LostRunTests {
    private func lost(_ entry: String, _ job: String, worker: String, at seconds: Double, lastSeen: Double?) -> JobEventRecord {
        JobEventRecord(pool: "demo", entryID: entry, index: 0, job: job, kind: .lost, worker: worker, node: "cleaner", nodeID: "id-cleaner",
            at: time(seconds), actor: "cleaner", reason: "worker-lost", requeued: true, lastSeen: lastSeen.map(time))
    }

    /// e: on w5 from 0, w5 last seen at 12, found dead at 30. f: started on w6 at 14, after w6's
    /// last keep-alive (12); found dead at 30. g: on w7 from 0, found dead at 30 (last seen 12),
    /// requeued onto w8 at 31, and w7 came back at 40 and stopped its copy (a paused process).
    /// h: on w9, found dead at 30 with no keep-alive left (an event from before 0007 looks alike).
    /// i: on w10, last seen at 12; the cleaner requeued it onto w11 (started at 30) before it
    /// wrote the `lost` event (30.5), as the pool does.
    /// k: on w12 (last seen 12), found dead at 30, requeued onto w13 (30.1), whose start also
    /// logged the displaced owner (30.2); w12 was only paused and stopped its copy at 31.
    private func scenario() throws -> PlanStore {
        let store = try PlanStore.open(path: scratch())
        try store.recordJobEvents([
            event("1-0", "e", .started, worker: "w5", at: 0),
            event("1-1", "g", .started, worker: "w7", at: 0),
            event("1-2", "h", .started, worker: "w9", at: 0),
            event("2-0", "f", .started, worker: "w6", at: 14),
            lost("3-0", "e", worker: "w5", at: 30, lastSeen: 12),
            lost("3-1", "f", worker: "w6", at: 30, lastSeen: 12),
            lost("3-2", "g", worker: "w7", at: 30, lastSeen: 12),
            lost("3-3", "h", worker: "w9", at: 30, lastSeen: nil),
            event("4-0", "g", .started, worker: "w8", at: 31, requeued: true),
            event("5-0", "g", .takenOver, worker: "w7", at: 40, reason: "evicted"),
            event("6-0", "i", .started, worker: "w10", at: 0),
            event("7-0", "i", .started, worker: "w11", at: 30, requeued: true),
            lost("8-0", "i", worker: "w10", at: 30.5, lastSeen: 12),
            event("9-0", "k", .started, worker: "w12", at: 0),
            lost("10-0", "k", worker: "w12", at: 30, lastSeen: 12),
            event("11-0", "k", .started, worker: "w13", at: 30.1, requeued: true),
            lost("12-0", "k", worker: "w12", at: 30.2, lastSeen: 12),
            event("13-0", "k", .takenOver, worker: "w12", at: 31, reason: "evicted"),
        ])
        return store
    }

    @Test func aLostRunEndsAtTheLastKeepAliveUnlessTheWorkerEndedItItself() throws {
        let store = try scenario()
        let summary = try store.jobRuns().map { "\($0.job) \($0.worker) \(Int($0.startedAt.timeIntervalSince(time(0)))) "
            + "\($0.stoppedAt.map { String(Int($0.timeIntervalSince(time(0)))) } ?? "open") \($0.stopKind?.rawValue ?? "-") "
            + "\($0.stopLoggedAt.map { String(Int($0.timeIntervalSince(time(0)))) } ?? "-")" }
        #expect(summary == [
            "e w5 0 12 lost 30", "g w7 0 40 taken-over 40", "h w9 0 30 lost 30", "i w10 0 12 lost 30", "k w12 0 31 taken-over 31",
            "f w6 14 14 lost 30", "i w11 30 open - -", "k w13 30 open - -", "g w8 31 open - -",
        ])
        func running(_ seconds: Double) throws -> [String] {
            try store.jobsRunning(at: time(seconds)).map { "\($0.job)@\($0.worker ?? "?")" }
        }
        #expect(try running(11) == ["e@w5", "g@w7", "h@w9", "i@w10", "k@w12"])
        #expect(try running(13) == ["g@w7", "h@w9", "k@w12"])
        #expect(try running(20) == ["g@w7", "h@w9", "k@w12"])  // f ended at its start: its worker was already dead
        #expect(try running(35) == ["g@w8", "i@w11", "k@w13"])  // g's copy on w7 still held (ended at 40), the newer run is shown
        #expect(try running(45) == ["g@w8", "i@w11", "k@w13"])
        // The view agrees: the latest state change at or before T.
        func state(_ job: String, _ seconds: Double) throws -> String {
            try sql(store.path, """
                SELECT state FROM job_state_changes WHERE job = '\(job)' AND at_ms <= \(PlanStore.ms(time(seconds)))
                ORDER BY at_ms DESC LIMIT 1
                """)
        }
        #expect(try state("e", 11) == "running" && state("e", 13) == "stopped")
        #expect(try state("f", 15) == "stopped")
        #expect(try state("g", 20) == "running" && state("g", 35) == "running" && state("g", 45) == "running")
        #expect(try state("h", 29) == "running" && state("h", 31) == "stopped")
        // i's new run (started at 30) does not keep it "running" back at its last keep-alive.
        #expect(try state("i", 11) == "running" && state("i", 20) == "stopped" && state("i", 31) == "running")
        // k: two lost events, both contradicted by w12's own end.
        #expect(try state("k", 20) == "running" && state("k", 30.15) == "running" && state("k", 32) == "running")
        #expect(try sql(store.path, "SELECT COUNT(*) FROM job_state_changes WHERE job = 'k' AND cause = 'lost'") == "0")
        #expect(try sql(store.path, "SELECT COUNT(*) FROM job_state_changes WHERE job = 'g' AND cause = 'lost'") == "0")
        #expect(try store.verifyHistory().isIntact)
    }

    @Test(arguments: [
        "UPDATE job_event SET last_seen_ms = last_seen_ms - 5000 WHERE entry_id = '3-0'",
        "UPDATE job_event SET last_seen_ms = NULL WHERE entry_id = '3-0'",
        "UPDATE job_event SET last_seen_ms = at_ms WHERE entry_id = '3-3'",
    ])
    func lastSeenIsChained(_ tampering: String) throws {
        try expectEventAltered(try scenario(), by: tampering)
    }

    @Test func aDatabaseWrittenBefore0007MigratesAndStillVerifies() throws {
        // Written by `rota run` of the 0006 release: rounds, starts, a worker SIGKILLed (lost), releases.
        let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/post-0006.sqlite")
        let path = scratch("post0006")
        try FileManager.default.copyItem(atPath: fixture.path, toPath: path)
        #expect(try sql(path, "SELECT COUNT(*) FROM grdb_migrations WHERE identifier = '0007_lost_last_seen'") == "0")
        let before = try sql(path, "SELECT job, worker, started_ms, stopped_ms, stop_kind FROM job_runs ORDER BY start_event")
        let store = try PlanStore.open(path: path)
        #expect(try store.appliedMigrations().contains("0007_lost_last_seen"))
        let verified = try store.verifyHistory()
        #expect(verified.problem == nil && verified.verified == 24 && verified.events == 26)
        // Lost events without a last keep-alive end their runs where they did before.
        #expect(try sql(path, "SELECT job, worker, started_ms, stopped_ms, stop_kind FROM job_runs ORDER BY start_event") == before)
        #expect(try sql(path, "SELECT COUNT(*) FROM job_runs WHERE stop_kind = 'lost' AND stopped_ms = stop_logged_ms") == "3")
        // New lost events carry it, and the chain goes on.
        try store.recordJobEvents([lost("9999999999999-0", "job/1", worker: "w-new", at: 1_000, lastSeen: 990)])
        #expect(try store.verifyHistory().isIntact)
    }
}

/// Job events of structured workers and capability routing (migration 0009): `finished` and
/// `failed` end a run; `unplaced` ends nothing and starts nothing.
@Suite struct RunnerJobEventTests {
    @Test func theNewKindsAndWhatTheyEnd() {
        #expect(JobEventKind.finished.endsRun && JobEventKind.failed.endsRun)
        #expect(!JobEventKind.unplaced.endsRun)
        #expect(JobEventKind(rawValue: "finished") == .finished && JobEventKind(rawValue: "unplaced") == .unplaced)
    }

    /// a: finished by itself on w1. b: failed by itself on w1. c: unplaced at 1 (no worker with its
    /// capability), started on w2 at 10 once one joined. d: on w3, found dead at 30 (last seen 12),
    /// but w3 was only paused and its job finished at 31: its own end contradicts the `lost`.
    private func scenario() throws -> PlanStore {
        let store = try PlanStore.open(path: scratch("runner"))
        var failed = event("3-0", "b", .failed, worker: "w1", at: 6)
        failed.error = "exec: '/bin/sh' ended with exit code 3"
        var unplaced = event("2-0", "c", .unplaced, worker: "", at: 1)
        unplaced.error = "no active worker has capability 'exec'"
        try store.recordJobEvents([
            event("1-0", "a", .started, worker: "w1", at: 0),
            event("1-1", "b", .started, worker: "w1", at: 0),
            event("1-2", "d", .started, worker: "w3", at: 0),
            unplaced,
            event("4-0", "a", .finished, worker: "w1", at: 5),
            failed,
            event("5-0", "c", .started, worker: "w2", at: 10),
            JobEventRecord(pool: "demo", entryID: "6-0", index: 0, job: "d", kind: .lost, worker: "w3", node: "node-of-w3", nodeID: "id-w3",
                at: time(30), actor: "cleaner", reason: "worker-lost", lastSeen: time(12)),
            event("7-0", "d", .finished, worker: "w3", at: 31),
        ])
        return store
    }

    @Test func finishedAndFailedEndRunsUnplacedEndsNothing() throws {
        let store = try scenario()
        let runs = try store.jobRuns()
        let summary = runs.map { "\($0.job) \($0.worker) \(Int($0.startedAt.timeIntervalSince(time(0)))) "
            + "\($0.stoppedAt.map { String(Int($0.timeIntervalSince(time(0)))) } ?? "open") \($0.stopKind?.rawValue ?? "-")" }
        #expect(summary == ["a w1 0 5 finished", "b w1 0 6 failed", "d w3 0 31 finished", "c w2 10 open -"])
        #expect(runs.first { $0.job == "b" }?.stopError == "exec: '/bin/sh' ended with exit code 3")
        func running(_ seconds: Double) throws -> [String] {
            try store.jobsRunning(at: time(seconds)).map { "\($0.job)@\($0.worker ?? "?")" }
        }
        #expect(try running(2) == ["a@w1", "b@w1", "d@w3"])  // c waits: not running
        #expect(try running(7) == ["d@w3"])
        #expect(try running(20) == ["c@w2", "d@w3"])
        #expect(try running(35) == ["c@w2"])
        // The views: an unplaced event is no state change; finished and failed are stops.
        #expect(try sql(store.path, "SELECT COUNT(*) FROM job_state_changes WHERE cause = 'unplaced'") == "0")
        #expect(try sql(store.path, "SELECT job || ' ' || state || ' ' || cause FROM job_state_changes WHERE cause IN ('finished', 'failed') ORDER BY at_ms")
            == "a stopped finished\nb stopped failed\nd stopped finished")
        #expect(try sql(store.path, "SELECT COUNT(*) FROM job_state_changes WHERE cause = 'lost'") == "0")
        #expect(try store.jobEvents(job: "c").map(\.kind) == [.unplaced, .started])
        #expect(try store.jobEvents(job: "c").first?.error == "no active worker has capability 'exec'")
        let verified = try store.verifyHistory()
        #expect(verified.isIntact && verified.events == 9)
    }

    @Test(arguments: [
        "UPDATE job_event SET kind = 'stopped' WHERE entry_id = '4-0'",
        "UPDATE job_event SET error = 'exit code 4' WHERE entry_id = '3-0'",
        "UPDATE job_event SET kind = 'started' WHERE entry_id = '2-0'",
    ])
    func theNewKindsAreChained(_ tampering: String) throws {
        try expectEventAltered(try scenario(), by: tampering)
    }

    @Test func anUnplacedActionIsShownAndNotAFailure() throws {
        let store = try PlanStore.open(path: scratch("unplaced"))
        try store.recordRounds([
            finishedRound("r1", tick: 0, [
                ActionRecord(job: "x", action: .start, outcome: .unplaced, error: "no active worker has capability 'gpu'", at: time(0.1)),
                ActionRecord(job: "y", action: .start, outcome: .started, at: time(0.2)),
            ]),
            finishedRound("r2", tick: 10, [ActionRecord(job: "y", action: .stop, outcome: .failed, error: "boom", at: time(10.1))]),
        ])
        let (round, actions) = try #require(try store.round(id: "r1"))
        #expect(round.started == 1 && round.failed == 0)
        #expect(actions.first?.outcome == .unplaced && actions.first?.error == "no active worker has capability 'gpu'")
        var filter = HistoryFilter()
        filter.failedOnly = true
        #expect(try store.rounds(matching: filter).map(\.roundID) == ["r2"])
        #expect(try store.unplacedCounts(roundIDs: ["r1", "r2", "none"]) == ["r1": 1])
        #expect(try store.verifyHistory().isIntact)
    }

    /// Applies `migrations` (their SQL, as GRDB would, and their identifiers) to the file at `path`
    /// behind the store's back: a database as an older rota left it.
    private func migrate(_ path: String, to last: String) throws {
        let migrations = try RotaMigrations.all().filter { $0.identifier <= last }
        let script = """
            import sqlite3, sys
            c = sqlite3.connect(sys.argv[1], isolation_level=None)
            c.execute("CREATE TABLE IF NOT EXISTS grdb_migrations (identifier TEXT NOT NULL PRIMARY KEY)")
            done = {row[0] for row in c.execute("SELECT identifier FROM grdb_migrations")}
            for identifier, sql in zip(sys.argv[2::2], sys.argv[3::2]):
                if identifier in done:
                    continue
                c.executescript("BEGIN;" + sql + ";COMMIT;")
                c.execute("INSERT INTO grdb_migrations (identifier) VALUES (?)", (identifier,))
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, path] + migrations.flatMap { [$0.identifier, $0.sql] }
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TestFailure("migrating \(path) to \(last) failed") }
    }

    @Test func aDatabaseWrittenBefore0009MigratesAndStillVerifies() throws {
        // Written by `rota run` of the 0006 release, brought to 0008 as the releases since would.
        let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/post-0006.sqlite")
        let path = scratch("pre0009")
        try FileManager.default.copyItem(atPath: fixture.path, toPath: path)
        try migrate(path, to: "0008_authenticated_prunes")
        #expect(try sql(path, "SELECT COUNT(*) FROM grdb_migrations WHERE identifier = '0009_runner_job_events'") == "0")
        let queries = [
            "SELECT job, worker, started_ms, stopped_ms, stop_kind, stop_reason, producer, start_event, stop_event FROM job_runs ORDER BY start_event",
            "SELECT job, at_ms, state, cause, worker FROM job_state_changes ORDER BY at_ms, job, cause",
            "SELECT id, kind, hex(hash) FROM job_event ORDER BY id",
        ]
        let before = try queries.map { try sql(path, $0) }
        // A new kind is refused before the migration.
        #expect(throws: (any Error).self) {
            try sql(path, "UPDATE job_event SET kind = 'finished' WHERE id = (SELECT MIN(id) FROM job_event)")
        }

        let store = try PlanStore.open(path: path)
        #expect(try store.appliedMigrations().contains("0009_runner_job_events"))
        let verified = try store.verifyHistory()
        #expect(verified.problem == nil && verified.verified == 24 && verified.events == 26)
        // Old rows, old answers: same ids, kinds, hashes, runs and state changes.
        #expect(try queries.map { try sql(path, $0) } == before)
        #expect(try sql(path, "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'job_event'") == "5")

        // New kinds go on the chain.
        let job = try #require(try store.jobRuns().last?.job)
        try store.recordJobEvents([
            event("9999999999997-0", job, .started, worker: "w-new", at: 1_000_000),
            event("9999999999998-0", job, .finished, worker: "w-new", at: 1_000_001),
            event("9999999999999-0", "new/waiting", .unplaced, worker: "", at: 1_000_002),
        ])
        #expect(try store.jobRuns(job: job).last?.stopKind == .finished)
        #expect(try store.verifyHistory().isIntact)
    }
}
