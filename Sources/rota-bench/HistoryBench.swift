import ArgumentParser
import Foundation
import RotaStore

struct HistoryBench: ParsableCommand, AsyncBody {
    static let configuration = CommandConfiguration(
        commandName: "history",
        abstract: "SQLite plan history: recording rate, audit query latency, bytes per action row, job events recorded per second."
    )

    @Flag(help: "Print one JSON object per line instead of a table.")
    var json = false

    @Option(help: "Action rows to record.")
    var rows = 1_000_000

    @Option(help: "Action rows per round.")
    var roundSize = 100

    @Option(help: "Distinct job keys.")
    var jobs = 1_000

    @Option(help: "Queries per query kind.")
    var queries = 200

    @Option(help: "Rounds per transaction (a node catching up on the history stream records in batches).")
    var batch = 1_000

    @Option(help: "Job events (the pool's job log) to record after the rounds, in batches of --event-batch.")
    var events = 200_000

    @Option(help: "Job events per recordJobEvents call.")
    var eventBatch = 1_000

    func run() throws {}

    func body(nioExecutor: Bool) async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("rota-bench-history-\(UUID().uuidString).sqlite").path
        defer {
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
        }
        let store = try PlanStore.open(path: path)
        let rounds = max(1, rows / roundSize)
        // The history spans the last two days, so `--since 1d` selects about half of it.
        let now = Date()
        let span = 2 * 86_400.0
        let keys = (0..<jobs).map { String(format: "job/%05d", $0) }
        // Each job lives a realistic life: started, confirmed running round after round, now and
        // then stopped and started again.
        func action(occurrence: Int) -> (ActionKind, ActionOutcome) {
            switch occurrence % 20 {
            case 0: return (.start, .started)
            case 19: return (.stop, .stopped)
            default: return (.start, .alreadyRunning)
            }
        }
        var occurrences = [Int](repeating: 0, count: keys.count)

        if !json { print("recording \(rounds * roundSize) action rows in \(rounds) rounds…") }
        let clock = ContinuousClock()
        let started = clock.now
        var pending: [(RoundRecord, [ActionRecord])] = []
        for index in 0..<rounds {
            let tick = now.addingTimeInterval(-span + span * Double(index) / Double(rounds))
            var round = RoundRecord(roundID: "bench-\(index)", pool: "bench", producer: "producer-\(index % 10)", revision: 1,
                node: "node-\(index % 3)", tick: tick, startedAt: tick)
            round.finishedAt = tick.addingTimeInterval(0.05)
            let actions = (0..<roundSize).map { offset in
                let job = (index * roundSize + offset) % keys.count
                let (kind, outcome) = action(occurrence: occurrences[job])
                occurrences[job] += 1
                return ActionRecord(job: keys[job], action: kind, outcome: outcome,
                    payloadHash: "0123456789abcdef", at: tick.addingTimeInterval(Double(offset) / 1000), actor: "node-\(index % 3)")
            }
            pending.append((round, actions))
            if pending.count >= max(1, batch) || index == rounds - 1 {
                try store.recordRounds(pending)
                pending.removeAll(keepingCapacity: true)
            }
        }
        let rate = Double(rounds * roundSize) / seconds(clock.now - started)
        try store.checkpoint()
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        let bytesPerRow = Double(size) / Double(rounds * roundSize)

        // The job log over the same span: each job started and stopped in turn on rotating workers.
        if !json { print("recording \(events) job events in batches of \(eventBatch)…") }
        let eventsStarted = clock.now
        var eventBuffer: [JobEventRecord] = []
        for index in 0..<max(0, events) {
            let job = index % keys.count
            let cycle = index / keys.count
            let worker = "worker-\((job + cycle / 2) % 30)"
            eventBuffer.append(JobEventRecord(pool: "bench", entryID: "\(index)-0", index: 0, job: keys[job],
                kind: cycle % 2 == 0 ? .started : .stopped, worker: worker, node: "node-\(job % 3)", nodeID: "node-id-\(job % 3)",
                at: now.addingTimeInterval(-span + span * Double(index) / Double(max(1, events))), actor: "node-\(job % 3)",
                round: cycle % 2 == 0 ? "bench-\(index % rounds)" : nil))
            if eventBuffer.count >= max(1, eventBatch) || index == events - 1 {
                try store.recordJobEvents(eventBuffer)
                eventBuffer.removeAll(keepingCapacity: true)
            }
        }
        let eventRate = Double(max(0, events)) / seconds(clock.now - eventsStarted)
        try store.checkpoint()
        let sizeWithEvents = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        let bytesPerEvent = Double(sizeWithEvents - size) / Double(max(1, events))

        var jobLatencies: [Double] = []
        var atLatencies: [Double] = []
        for query in 0..<queries {
            var filter = HistoryFilter()
            filter.job = keys[(query * 7919) % keys.count]
            filter.since = Date().addingTimeInterval(-86_400)
            let t0 = clock.now
            _ = try store.rounds(matching: filter)
            jobLatencies.append(microseconds(clock.now - t0) / 1000)
            let instant = now.addingTimeInterval(-span * Double(query % 97) / 97)
            let t1 = clock.now
            _ = try store.jobsRunning(at: instant)
            atLatencies.append(microseconds(clock.now - t1) / 1000)
        }
        // No external reference exists for these: `reference` is the target, and
        // `ratio` ≥ 1 means the target is met (value/target for rates, target/value otherwise).
        let rows = [
            Measurement(suite: "history", metric: "history_rows_per_s", value: rate, unit: "rows/s", reference: 100_000, ratio: rate / 100_000),
            Measurement(suite: "history", metric: "history_query_job_p99_ms", value: percentile(jobLatencies.sorted(), 99), unit: "ms",
                reference: 20, ratio: 20 / percentile(jobLatencies.sorted(), 99)),
            Measurement(suite: "history", metric: "history_query_at_p99_ms", value: percentile(atLatencies.sorted(), 99), unit: "ms",
                reference: 20, ratio: 20 / percentile(atLatencies.sorted(), 99)),
            Measurement(suite: "history", metric: "history_bytes_per_row", value: bytesPerRow, unit: "bytes", reference: 200,
                ratio: 200 / bytesPerRow),
            // No target was set for these: the action rows' targets serve as references.
            Measurement(suite: "history", metric: "job_events_per_s", value: eventRate, unit: "events/s", reference: 100_000,
                ratio: eventRate / 100_000),
            Measurement(suite: "history", metric: "job_event_bytes", value: bytesPerEvent, unit: "bytes", reference: 200,
                ratio: 200 / bytesPerEvent),
        ]
        if json {
            for row in rows { print(row.json) }
        } else {
            printTable(rows)
            print("(reference = the target; ratio ≥ 1 means it is met)")
        }
    }
}
