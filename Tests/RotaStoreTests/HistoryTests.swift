import Foundation
import RotaStore
import RotaTestSupport
import Testing

private func temporaryStore() throws -> PlanStore {
    try PlanStore.open(path: FileManager.default.temporaryDirectory.appendingPathComponent("rota-history-\(UUID().uuidString).sqlite").path)
}

private func at(_ seconds: Double) -> Date { Date(timeIntervalSince1970: 1_800_000_000 + seconds) }

private func round(_ id: String, producer: String = "p", tick: Double, node: String = "n1") -> RoundRecord {
    RoundRecord(roundID: id, pool: "demo", producer: producer, revision: 1, node: node, tick: at(tick), startedAt: at(tick + 0.01),
        planned: [PlannedAction(job: "a", action: .start)])
}

@Suite struct HistoryTests {
    @Test func intentThenOutcomeAndIdempotentRecording() throws {
        let store = try temporaryStore()
        #expect(try store.recordIntent(round("r1", tick: 0)))
        #expect(try store.recordIntent(round("r1", tick: 0)) == false)  // the same round learnt twice
        try store.recordOutcome(roundID: "r1", finishedAt: at(1), actions: [
            ActionRecord(job: "a", action: .start, outcome: .started, at: at(0.5)),
            ActionRecord(job: "b", action: .stop, outcome: .notFound, at: at(0.6)),
            ActionRecord(job: "c", action: .start, outcome: .failed, error: "no handler 'x'", at: at(0.7)),
        ])
        // A second outcome for a finished round changes nothing.
        try store.recordOutcome(roundID: "r1", finishedAt: at(2), actions: [ActionRecord(job: "z", action: .start, outcome: .started, at: at(2))])
        let (record, actions) = try #require(try store.round(id: "r1"))
        #expect(record.started == 1 && record.stopped == 0 && record.failed == 1)
        #expect(record.finishedAt == at(1))
        #expect(record.planned == [PlannedAction(job: "a", action: .start)])
        #expect(actions.map(\.job) == ["a", "b", "c"])
        #expect(actions[2].error == "no handler 'x'")
    }

    @Test("own rounds stay unpublished until marked or echoed back by the stream; learnt rounds never are")
    func publicationTracking() throws {
        let store = try temporaryStore()
        try store.recordIntent(round("own1", tick: 0))
        try store.recordIntent(round("own2", tick: 1))
        var learnt = round("other", tick: 2, node: "n2")
        learnt.finishedAt = at(3)
        try store.recordRound(learnt, actions: [])
        #expect(try store.unpublishedRounds(pool: "demo").map(\.0.roundID) == ["own1", "own2"])
        #expect(try store.unpublishedRounds(pool: "elsewhere").isEmpty)
        try store.recordOutcome(roundID: "own1", finishedAt: at(1), actions: [ActionRecord(job: "a", action: .start, outcome: .started, at: at(0.5))])
        let pending = try store.unpublishedRounds(pool: "demo")
        #expect(pending.first?.0.finishedAt == at(1) && pending.first?.1.map(\.job) == ["a"], "a finished round comes with its actions")
        try store.markPublished(roundID: "own1")
        #expect(try store.unpublishedRounds(pool: "demo").map(\.0.roundID) == ["own2"])
        // own2 comes back from the history stream (published by this node before it could mark it).
        var echoed = round("own2", tick: 1)
        echoed.finishedAt = at(2)
        try store.recordRounds([(echoed, [])])
        #expect(try store.unpublishedRounds(pool: "demo").isEmpty)
    }

    @Test func aSecondRoundForTheSameTickIsRefused() throws {
        let store = try temporaryStore()
        try store.recordIntent(round("r1", tick: 10))
        do {
            try store.recordIntent(round("r2", tick: 10))
            Issue.record("duplicate round recorded silently")
        } catch {
            #expect(error.code == .duplicateRound)
        }
        #expect(try store.recordIntent(round("r3", producer: "other", tick: 10)))
    }

    @Test func filtersAndFailedRounds() throws {
        let store = try temporaryStore()
        for i in 0..<10 {
            var r = round("r\(i)", producer: i % 2 == 0 ? "even" : "odd", tick: Double(i * 60), node: i < 5 ? "n1" : "n2")
            r.finishedAt = at(Double(i * 60) + 1)
            if i == 7 { r.error = "redis down" }
            try store.recordRound(r, actions: [ActionRecord(job: "job\(i % 3)", action: .start, outcome: i == 4 ? .failed : .started, at: at(Double(i * 60)))])
        }
        var filter = HistoryFilter()
        #expect(try store.rounds(matching: filter).map(\.roundID) == (0..<10).reversed().map { "r\($0)" })
        filter.producer = "odd"
        #expect(try store.rounds(matching: filter).map(\.roundID) == ["r9", "r7", "r5", "r3", "r1"])
        filter = HistoryFilter()
        filter.job = "job1"
        #expect(try store.rounds(matching: filter).map(\.roundID) == ["r7", "r4", "r1"])
        filter.since = at(200)
        #expect(try store.rounds(matching: filter).map(\.roundID) == ["r7", "r4"])
        filter = HistoryFilter()
        filter.failedOnly = true
        #expect(try store.rounds(matching: filter).map(\.roundID) == ["r7", "r4"])
        filter = HistoryFilter()
        filter.node = "n2"
        filter.limit = 2
        #expect(try store.rounds(matching: filter).map(\.roundID) == ["r9", "r8"])
    }

    @Test func jobsRunningAtAnInstant() throws {
        let store = try temporaryStore()
        func record(_ id: String, tick: Double, _ actions: [(String, ActionKind, ActionOutcome)]) throws {
            var r = round(id, tick: tick)
            r.finishedAt = at(tick + 1)
            try store.recordRound(r, actions: actions.map { ActionRecord(job: $0.0, action: $0.1, outcome: $0.2, at: at(tick)) })
        }
        try record("r1", tick: 0, [("a", .start, .started), ("b", .start, .started), ("c", .start, .failed)])
        try record("r2", tick: 10, [("a", .start, .alreadyRunning), ("b", .stop, .stopped)])
        try record("r3", tick: 20, [("b", .start, .started), ("a", .stop, .notFound)])
        #expect(try store.jobsRunning(at: at(-1)).isEmpty)
        #expect(try store.jobsRunning(at: at(5)).map(\.job) == ["a", "b"])
        let at15 = try store.jobsRunning(at: at(15))
        #expect(at15.map(\.job) == ["a"])
        #expect(at15.first?.since == at(0))  // running since its start, not since the confirmation
        let at25 = try store.jobsRunning(at: at(25))
        #expect(at25.map(\.job) == ["b"])
        #expect(at25.first?.since == at(20))
    }

    @Test func pruneByAgeAndCountWithDryRun() throws {
        let store = try temporaryStore()
        for i in 0..<10 {
            var r = round("r\(i)", tick: Double(i * 100))
            r.finishedAt = at(Double(i * 100) + 1)
            try store.recordRound(r, actions: [ActionRecord(job: "j", action: .start, outcome: .started, at: at(Double(i * 100))),
                ActionRecord(job: "k", action: .start, outcome: .started, at: at(Double(i * 100)))])
        }
        let preview = try store.prune(olderThan: at(450), keep: nil, dryRun: true)
        #expect(preview == PruneReport(rounds: 5, actions: 10))
        #expect(try store.rounds(matching: HistoryFilter()).count == 10)
        #expect(try store.prune(olderThan: at(450), keep: nil, dryRun: false) == preview)
        #expect(try store.rounds(matching: HistoryFilter()).count == 5)
        #expect(try store.prune(olderThan: nil, keep: 2, dryRun: false) == PruneReport(rounds: 3, actions: 6))
        #expect(try store.rounds(matching: HistoryFilter()).map(\.roundID) == ["r9", "r8"])
        // Both limits: old enough AND beyond the newest `keep`.
        #expect(try store.prune(olderThan: at(10_000), keep: 1, dryRun: false) == PruneReport(rounds: 1, actions: 2))
    }

    @Test func concurrentWriterAndReaders() async throws {
        let store = try temporaryStore()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for i in 0..<200 {
                    var r = round("w\(i)", tick: Double(i))
                    r.finishedAt = at(Double(i) + 0.5)
                    try store.recordRound(r, actions: (0..<20).map { ActionRecord(job: "job\($0)", action: .start, outcome: .started, at: at(Double(i))) })
                }
            }
            for _ in 0..<3 {
                group.addTask {
                    var last = 0
                    for _ in 0..<100 {
                        // WAL: readers see a consistent, growing history while the writer commits.
                        let count = try store.rounds(matching: { var f = HistoryFilter(); f.limit = 1000; return f }()).count
                        #expect(count >= last)
                        last = count
                        _ = try store.jobsRunning(at: at(1000))
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(try store.jobsRunning(at: at(1000)).count == 20)
    }
}
