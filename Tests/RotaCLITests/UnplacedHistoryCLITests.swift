import Foundation
import RotaStore
import RotaTestSupport
import Testing

/// `rota history` and `rota jobs` on the history of capability routing and structured jobs: an
/// unplaced start is shown and is no failure; jobs that finished or failed by themselves end their
/// runs; `rota history verify` accepts the new job event kinds.
@Suite("CLI: unplaced jobs and finished/failed runs in the history")
struct UnplacedHistoryCLITests {
    let db = FileManager.default.temporaryDirectory.appendingPathComponent("rota-unplaced-\(UUID().uuidString).sqlite").path

    private func at(_ seconds: Double) -> Date { Date(timeIntervalSince1970: 1_800_000_000 + seconds) }

    private func record() throws {
        let store = try PlanStore.open(path: db)
        var round = RoundRecord(roundID: "r1", pool: "demo", producer: "p", revision: 1, node: "n1", tick: at(0), startedAt: at(0),
            planned: [PlannedAction(job: "gpu/1", action: .start), PlannedAction(job: "a", action: .start)])
        round.finishedAt = at(1)
        var failedRound = RoundRecord(roundID: "r2", pool: "demo", producer: "p", revision: 1, node: "n1", tick: at(10), startedAt: at(10),
            planned: [PlannedAction(job: "b", action: .start)])
        failedRound.finishedAt = at(11)
        try store.recordRounds([
            (round, [
                ActionRecord(job: "gpu/1", action: .start, outcome: .unplaced, error: "no active worker has capability 'gpu'", at: at(0.5),
                    reason: "added-to-plan", actor: "n1"),
                ActionRecord(job: "a", action: .start, outcome: .started, at: at(0.6), reason: "added-to-plan", actor: "n1"),
            ]),
            (failedRound, [ActionRecord(job: "b", action: .start, outcome: .failed, error: "boom", at: at(10.5), actor: "n1")]),
        ])
        func event(_ entry: String, _ job: String, _ kind: JobEventKind, _ worker: String, _ seconds: Double, error: String? = nil) -> JobEventRecord {
            JobEventRecord(pool: "demo", entryID: entry, index: 0, job: job, kind: kind, worker: worker, node: "n1", nodeID: "id-n1", at: at(seconds),
                error: error)
        }
        try store.recordJobEvents([
            event("1-0", "gpu/1", .unplaced, "", 0.5, error: "no active worker has capability 'gpu'"),
            event("2-0", "a", .started, "w1", 0.6),
            event("3-0", "a", .failed, "w1", 5, error: "exec: '/bin/sh' ended with exit code 3"),
            event("4-0", "c", .started, "w1", 6),
            event("5-0", "c", .finished, "w1", 7),
            event("6-0", "gpu/1", .started, "w2", 20),
        ])
    }

    @Test func unplacedIsShownNotCountedAsFailedAndTheNewKindsVerify() throws {
        try record()
        let table = try rota(["history", "--db", db])
        #expect(table.status == 0, "\(table)")
        let lines = table.out.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true) }
        #expect(lines.first?.contains("UNPLACED") == true, "\(table.out)")
        let header = lines.first.map { $0.map(String.init) } ?? []
        let r1 = try #require(lines.first { $0.first == "r1" }.map { $0.map(String.init) })
        // Columns after TICK line up with the header (TICK is one word, no blank in ERROR "-").
        let started = try #require(header.firstIndex(of: "STARTED")), failed = try #require(header.firstIndex(of: "FAILED"))
        let unplaced = try #require(header.firstIndex(of: "UNPLACED"))
        #expect(r1[started] == "1" && r1[failed] == "0" && r1[unplaced] == "1", "\(table.out)")

        let failedOnly = try rota(["history", "--db", db, "--failed", "--format", "json"])
        #expect(failedOnly.status == 0)
        #expect(failedOnly.out.contains(#""round":"r2""#) && !failedOnly.out.contains(#""round":"r1""#), "\(failedOnly.out)")
        let json = try rota(["history", "--db", db, "--format", "json"])
        #expect(json.out.contains(#""started":1,"stopped":0,"failed":0,"unplaced":1,"error":null"#), "\(json.out)")

        let show = try rota(["history", "show", "r1", "--db", db])
        #expect(show.status == 0)
        #expect(show.out.split(separator: "\n").contains { $0.hasPrefix("gpu/1") && $0.contains("unplaced") && $0.contains("no active worker has capability 'gpu'") },
            "\(show.out)")
        let csv = try rota(["history", "show", "r1", "--db", db, "--format", "csv"])
        #expect(csv.out.contains("gpu/1,start,unplaced,"), "\(csv.out)")

        // What ran: gpu/1 not while it waited; a and c not after they failed or finished.
        let early = try rota(["jobs", "--db", db, "--at", "2027-01-15T08:00:03Z", "--format", "json"])
        #expect(early.out.contains(#""job":"a""#) && !early.out.contains("gpu/1"), "\(early.out)")
        let later = try rota(["jobs", "--db", db, "--at", "2027-01-15T08:00:30Z", "--format", "json"])
        #expect(later.out.contains(#""job":"gpu/1""#) && !later.out.contains(#""job":"a""#) && !later.out.contains(#""job":"c""#), "\(later.out)")

        let verify = try rota(["history", "verify", "--db", db, "--format", "json"])
        #expect(verify.status == 0, "\(verify)")
        #expect(verify.out.contains(#""events":6"#), "\(verify.out)")
    }
}
