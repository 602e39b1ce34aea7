import Foundation
@testable import Rota
import RotaMap
import RotaRedis
import Synchronization
import Testing

/// A producer whose plans come from a closure; counts its calls.
final class ScriptedProducer: JobProducer {
    let name: String
    let calls = Mutex(0)
    let ticks = Mutex<[Tick]>([])
    let body: @Sendable (Int, Tick) async throws -> JobPlan

    init(name: String, _ body: @escaping @Sendable (Int, Tick) async throws -> JobPlan) {
        self.name = name
        self.body = body
    }

    func plan(for tick: Tick) async throws -> JobPlan {
        let call = calls.withLock { count -> Int in
            count += 1
            return count
        }
        ticks.withLock { $0.append(tick) }
        return try await body(call, tick)
    }

    var callCount: Int { calls.withLock { $0 } }
}

/// A value shared between tasks of a test.
final class Shared<Value: Sendable>: Sendable {
    private let value: Mutex<Value>
    init(_ value: Value) { self.value = Mutex(value) }
    func withLock<R: Sendable>(_ body: (inout Value) -> R) -> R { value.withLock { body(&$0) } }
}

@Suite("Pool: ticker and schedule (scenarios C)", .serialized, .timeLimit(.minutes(3)))
struct SchedulingTests {
    @Test("S-032 first tick about one interval after creation; the shared entry moves on; stop ends it")
    func firstTick() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let created = Date()
            let ticker = try await node.ticker(named: "ticker1", interval: .milliseconds(10))
            var iterator = ticker.ticks.makeAsyncIterator()
            guard let tick = await iterator.next() else { throw TestFailure("no tick") }
            #expect(abs(tick.scheduled.timeIntervalSince(created) - 0.010) < 1)
            #expect(abs(ticker.nextTick.timeIntervalSince(created) - 0.010) < 1)
            #expect(ticker.interval == .milliseconds(10))
            try await ticker.stop()
            try await eventually("the entry is gone") { node.maps.tickers.get("ticker1") == nil }
            // The sequence ends: no tick after the stop.
            while let late = await iterator.next() {
                #expect(late.delivered <= Date(), "only ticks delivered before the stop may still be read")
            }
            try await node.shutdown()
        }
    }

    @Test("S-033 creating a ticker again with another interval replaces it for everyone")
    func replaceInterval() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let created = Date()
            let first = try await node.ticker(named: "x", interval: .milliseconds(10))
            let second = try await node.ticker(named: "x", interval: .milliseconds(20))
            #expect(second.interval == .milliseconds(20))
            #expect(abs(second.nextTick.timeIntervalSince(created) - 0.020) < 1)
            try await eventually("the first ticker adopts the new interval") { first.interval == .milliseconds(20) }
            // Joining with the same interval keeps the phase.
            let third = try await node.ticker(named: "x", interval: .milliseconds(20))
            #expect(abs(third.nextTick.timeIntervalSince(second.nextTick)).truncatingRemainder(dividingBy: 0.020) < 0.001
                || abs(third.nextTick.timeIntervalSince(second.nextTick)) < 0.001)
            try await first.stop()
            await second.close()
            await third.close()
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("S-034 a failed advance is retried within min(interval, 1 s) and emits no tick; ticks resume after")
    func failedAdvanceRetried() async throws {
        try await withPool { pool in
            let capture = LogCapture()
            let node = try await pool.start(testOptions(logger: capture.logger)).node
            let ticker = try await node.ticker(named: "fragile", interval: .milliseconds(50))
            var iterator = ticker.ticks.makeAsyncIterator()
            _ = await iterator.next()
            // Make the shared entry unwritable: the compare-and-set fails in Redis.
            let key = node.maps.tickers.contentKey
            let saved = try await node.hashContent(key)
            try await pool.client.send("DEL", key)
            try await pool.client.send("SET", key, "not a hash")
            let broken = Date()
            // A consumer waits for the next tick meanwhile (tickers compete only for waiting consumers).
            let waiting = Task { await iterator.next() }
            try await eventually("advances fail and are retried", timeout: .seconds(5)) {
                capture.entries.withLock { $0.filter { $0.message.contains("advancing the ticker failed") }.count } >= 3
            }
            let failures = capture.entries.withLock { $0.filter { $0.message.contains("advancing the ticker failed") }.count }
            let elapsed = Date().timeIntervalSince(broken)
            #expect(Double(failures) >= elapsed / 0.2, "retried about every interval (50 ms), not once a second")
            // Restore: ticks resume without a restart, and none was emitted meanwhile.
            try await pool.client.send("DEL", key)
            for (field, value) in saved { try await pool.client.send("HSET", key, field, value) }
            let resumed = Date()
            guard let next = await waiting.value else { throw TestFailure("ticker ended") }
            #expect(next.delivered >= resumed, "no tick while the entry could not be written")
            #expect(next.missed > 0, "the ticks that were due while broken are reported as missed")
            try await ticker.stop()
            try await node.shutdown()
        }
    }

    @Test("five nodes share a 50 ms ticker for 400 ticks: every tick exactly once", .timeLimit(.minutes(2)))
    func fiveNodes() async throws {
        try await withPool { pool in
            var nodes: [Node] = []
            for _ in 0..<5 { nodes.append(try await pool.start().node) }
            let tickers = try await withThrowingTaskGroup(of: Ticker.self) { group in
                for node in nodes { group.addTask { try await node.ticker(named: "shared", interval: .milliseconds(50)) } }
                return try await group.reduce(into: [Ticker]()) { $0.append($1) }
            }
            let seen = Shared<[Int64: Int]>([:])
            let missedTotal = Shared(0)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for ticker in tickers {
                    group.addTask {
                        for await tick in ticker.ticks {
                            seen.withLock { $0[tick.token, default: 0] += 1 }
                            missedTotal.withLock { $0 += tick.missed }
                        }
                    }
                }
                try await eventually("400 ticks delivered", timeout: .seconds(60)) { seen.withLock { $0.count } >= 400 }
                try await tickers[0].stop()
                try await group.waitForAll()
            }
            let tokens = seen.withLock { $0 }
            #expect(tokens.values.allSatisfy { $0 == 1 }, "a tick delivered twice: \(tokens.filter { $0.value > 1 })")
            let sorted = tokens.keys.sorted()
            let gaps = zip(sorted, sorted.dropFirst()).filter { $1 - $0 != 50_000 }
            #expect(gaps.isEmpty, "scheduled times not consecutive: \(gaps.prefix(5))")
            #expect(missedTotal.withLock { $0 } == 0)
            for node in nodes { try await node.close() }
        }
    }

    @Test("S-031 schedule lifecycle: start, stop, start many, stop all, mixed, stop the schedule")
    func scheduleLifecycle() async throws {
        try await withPool { pool in
            let capture = LogCapture()
            let node = try await pool.start(testOptions(logger: capture.logger)).node
            let handler = RecordingHandler()
            let worker = try await node.addWorker(handler)
            @Sendable func running() -> Set<String> { Set(worker.jobs.map(\.key)) }
            let producer = ScriptedProducer(name: "lifecycle") { call, _ in
                func waitFor(_ keys: Set<String>) async throws {
                    try await eventually("worker runs \(keys)", timeout: .seconds(5)) { running() == keys }
                }
                switch call {
                case 1:
                    return JobPlan(start: [PlannedJob(key: "K", payload: bytes("k"))])
                case 2:
                    try await waitFor(["K"])
                    return JobPlan(stop: ["K"])
                case 3:
                    try await waitFor([])
                    return JobPlan(start: [PlannedJob(key: "K1"), PlannedJob(key: "K2")])
                case 4:
                    try await waitFor(["K1", "K2"])
                    return JobPlan(stopAll: true)
                case 5:
                    try await waitFor([])
                    return JobPlan(start: [PlannedJob(key: "K", payload: bytes("k"))])
                case 6:
                    try await waitFor(["K"])
                    return JobPlan(start: [PlannedJob(key: "K1")], stopAll: true)
                case 7:
                    try await waitFor(["K1"])
                    throw PoolError.scheduleStop
                default:
                    throw TestFailure("plan called an 8th time")
                }
            }
            // An observer of the schedule's bookkeeping map, as in the reference test.
            let (events, sawReset) = try await ReplicatedMap.withMap("schedule-lifecycle", keySpace: node.keySpace, client: pool.client) { bookkeeping in
                let resets = bookkeeping.changes()
                let schedule = try await node.schedule(producer, interval: .milliseconds(10))
                var events: [ScheduleEvent] = []
                for await event in schedule.events { events.append(event) }
                let sawReset = await withTaskGroup(of: Bool.self) { group in
                    group.addTask {
                        for await change in resets where change == .reset { return true }
                        return false
                    }
                    group.addTask {
                        try? await Task.sleep(for: .seconds(5))
                        return false
                    }
                    defer { group.cancelAll() }
                    return await group.next() ?? false
                }
                return (events, sawReset)
            }
            #expect(producer.callCount == 7)
            #expect(running() == ["K1"])
            #expect(sawReset, "the bookkeeping map was reset")
            let reports = events.compactMap { event -> PlanReport? in
                if case .applied(let report) = event { return report }
                return nil
            }
            #expect(reports.count == 6)
            #expect(reports.flatMap(\.failures).isEmpty)
            #expect(reports.map { $0.outcomes.map(\.outcome) } == [
                [.started], [.stopped], [.started, .started], [.stopped, .stopped], [.started], [.started, .stopped],
            ])
            #expect(capture.errors.isEmpty, "errors logged: \(capture.errors)")
            #expect(node.maps.tickers.get("schedule-lifecycle") == nil)
            try await node.shutdown()
        }
    }

    @Test("a plan error is reported to the observer and the schedule goes on")
    func planErrorsReported() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            _ = try await node.addWorker(RecordingHandler())
            let producer = ScriptedProducer(name: "flaky") { call, _ in
                if call == 2 { throw TestFailure("the source of truth is down") }
                return JobPlan(start: [PlannedJob(key: "steady", payload: bytes("s"))])
            }
            let schedule = try await node.schedule(producer, interval: .milliseconds(20))
            var applied: [PlanReport] = []
            var failures: [String] = []
            for await event in schedule.events {
                switch event {
                case .applied(let report): applied.append(report)
                case .planFailed(_, let error): failures.append(error)
                case .ended: break
                }
                if applied.count >= 3 { try await schedule.stop() }
            }
            #expect(failures == ["the source of truth is down"])
            #expect(applied.first?.outcomes.map(\.outcome) == [.started])
            #expect(applied.dropFirst().allSatisfy { $0.outcomes.map(\.outcome) == [.alreadyRunning] })
            #expect(producer.callCount >= 4)
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("a producer scheduled on three nodes: one plan per tick (the first too), reconciliation, stop-all, stop everywhere")
    func threeNodes() async throws {
        try await withPool { pool in
            var nodes: [Node] = []
            for _ in 0..<3 { nodes.append(try await pool.start().node) }
            let handler = RecordingHandler()
            _ = try await nodes[0].addWorker(handler)
            let phase = Shared(0)  // 0: run A, B, C; 1: keep only A; 2: stop the schedule
            let producers = (0..<3).map { _ in
                ScriptedProducer(name: "three") { _, _ in
                    switch phase.withLock({ $0 }) {
                    case 0: return JobPlan(start: ["A", "B", "C"].map { PlannedJob(key: $0, payload: bytes($0)) })
                    case 1: return JobPlan(start: [PlannedJob(key: "A", payload: bytes("A"))], stopAll: true)
                    default: throw PoolError.scheduleStop
                    }
                }
            }
            var schedules: [Schedule] = []
            for (node, producer) in zip(nodes, producers) {
                schedules.append(try await node.schedule(producer, interval: .milliseconds(100)))
            }
            try await eventually("A, B and C run") { handler.runningKeys == ["A", "B", "C"] }
            // Rounds go on; the running jobs are left alone (reported as already running).
            try await eventually("several rounds planned") { producers.map(\.callCount).reduce(0, +) >= 5 }
            #expect(handler.started.count == 3, "no job started twice")
            // One plan per tick, across the nodes, the first included.
            let tokens = producers.flatMap { $0.ticks.withLock { $0.map(\.token) } }
            #expect(Set(tokens).count == tokens.count, "a tick planned twice")
            phase.withLock { $0 = 1 }
            try await eventually("only A runs") { handler.runningKeys == ["A"] }
            #expect(Set(handler.stopped) == ["B", "C"])
            phase.withLock { $0 = 2 }
            for schedule in schedules {
                try await eventually("the schedule ended on every node", timeout: .seconds(5)) { schedule.ended.isOpen }
            }
            #expect(handler.runningKeys == ["A"], "jobs keep running after the schedule ends")
            try await nodes[0].shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }
}


/// `tick <name> <token> <delivered>` lines of a child: (token, delivered µs).
private func ticks(of child: PoolNodeProcess) -> [(token: Int64, delivered: Int64)] {
    child.state.lines.compactMap { line in
        let parts = line.split(separator: " ")
        guard parts.count >= 4, parts[0] == "tick", let token = Int64(parts[2]), let delivered = Int64(parts[3]) else { return nil }
        return (token, delivered)
    }
}

@Suite("Pool: ticker failover across processes", .serialized, .timeLimit(.minutes(2)))
struct TickerFailoverTests {
    @Test("kill -9 the node that delivered the last tick: the next tick comes from another node, on time")
    func failover() async throws {
        try await withPool { pool in
            try await withPoolNodeProcesses(redis: pool.server.url, pool: pool.pool) { children in
                var nodes: [PoolNodeProcess] = []
                for index in 0..<3 {
                    nodes.append(try await children.launch("ticker-\(index)", workers: 0, flags: crashTimingFlags + ["--ticker", "failover:200"]))
                }
                let interval: Int64 = 200_000
                for round in 0..<2 {
                    let alive = nodes.filter { !$0.hasExited }
                    let before = alive.flatMap(ticks).map(\.token).max() ?? 0
                    // The next tick, and who delivered it: that node is killed right away.
                    var holder: PoolNodeProcess?
                    var killedToken: Int64 = 0
                    try await eventually("a new tick (round \(round))", timeout: .seconds(5)) {
                        for child in alive {
                            if let latest = ticks(of: child).map(\.token).max(), latest > before {
                                holder = child
                                killedToken = latest
                                return true
                            }
                        }
                        return false
                    }
                    guard let holder else { throw TestFailure("no holder") }
                    try await holder.kill()
                    let survivors = alive.filter { $0 !== holder }
                    var next: (token: Int64, delivered: Int64)?
                    try await eventually("the next tick on a survivor", timeout: .seconds(5)) {
                        next = survivors.flatMap(ticks).filter { $0.token > killedToken }.min { $0.token < $1.token }
                        return next != nil
                    }
                    guard let next else { throw TestFailure("no next tick") }
                    let lateness = Double(next.delivered - next.token) / 1000
                    print("ticker failover round \(round): next tick \(lateness) ms after its scheduled time")
                    #expect(next.token == killedToken + interval, "the tick after the killed node's tick is not skipped")
                    #expect(next.delivered - next.token <= interval + 100_000, "late by \(lateness) ms")
                }
                // No tick was delivered twice by the processes.
                let all = nodes.flatMap(ticks).map(\.token)
                #expect(Set(all).count == all.count)
            }
        }
    }
}
