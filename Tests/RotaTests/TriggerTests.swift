import Foundation
@testable import Rota
import RotaTestSupport
import Synchronization
import Testing

@Suite("Pool: triggered ticks", .serialized, .timeLimit(.minutes(2)))
struct TriggerTests {
    @Test("a trigger delivers one tick now on exactly one of three nodes; the regular ticks keep their times")
    func triggerOnOneNode() async throws {
        try await withPool { pool in
            let nodes = try await [pool.start().node, pool.start().node, pool.start().node]
            let producers = (0..<3).map { _ in ScriptedProducer(name: "hourly") { _, _ in JobPlan() } }
            var schedules: [Schedule] = []
            for (node, producer) in zip(nodes, producers) {
                schedules.append(try await node.schedule(producer, interval: .seconds(3600)))
            }
            func calls() -> Int { producers.reduce(0) { $0 + $1.callCount } }
            // The first tick of a new schedule is due at once, on one node.
            try await eventually("the first tick") { calls() == 1 }
            let raw = try await pool.client.send("HGET", nodes[0].maps.tickers.contentKey, "schedule-hourly").string
            let regular = try #require(raw.flatMap(TickerEntry.init))
            #expect(regular.after == nil)

            let before = Date()
            #expect(try await nodes[1].triggerTicker(named: "schedule-hourly") == .triggered)
            try await eventually("the triggered tick", timeout: .seconds(5)) { calls() == 2 }
            let triggered = try #require(producers.flatMap { $0.ticks.withLock { $0 } }.max { $0.scheduled < $1.scheduled })
            #expect(triggered.scheduled >= before.addingTimeInterval(-0.001) && triggered.scheduled <= Date())
            #expect(triggered.scheduled < Date(timeIntervalSince1970: Double(regular.next) / 1e6))
            // The entry is back on its regular tick, and the nodes adopted it.
            try await eventually("the regular tick is next again") {
                let raw = try await pool.client.send("HGET", nodes[0].maps.tickers.contentKey, "schedule-hourly").string
                return raw.flatMap(TickerEntry.init) == TickerEntry(next: regular.next, interval: .seconds(3600))
            }
            for schedule in schedules {
                try await eventually("every node knows the regular next tick") {
                    abs(schedule.ticker.nextTick.timeIntervalSince1970 * 1e6 - Double(regular.next)) < 2
                }
            }
            // Exactly one triggered plan: no node delivers it twice, nor the regular tick early.
            // (A second trigger is the positive control that the nodes still take ticks.)
            #expect(try await nodes[2].triggerTicker(named: "schedule-hourly") == .triggered)
            try await eventually("the second triggered tick", timeout: .seconds(5)) { calls() == 3 }
            for schedule in schedules { await schedule.close() }
            #expect(calls() == 3)
            for node in nodes { try await node.close() }
        }
    }

    @Test("a trigger while one is pending adds nothing; a node joining later delivers it once; unknown tickers are refused")
    func pendingAndUnknown() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let ticker = try await node.ticker(named: "quiet", interval: .seconds(3600))
            let regular = ticker.nextTick
            await ticker.close()
            // Nobody takes ticks now: the trigger stays pending.
            #expect(try await node.triggerTicker(named: "quiet") == .triggered)
            #expect(try await node.triggerTicker(named: "quiet") == .alreadyPending)
            await #expect(throws: PoolError.self) { _ = try await node.triggerTicker(named: "nothing") }
            await #expect(throws: PoolError.self) { _ = try await node.triggerTicker(named: "bad name") }

            let other = try await pool.start().node
            let joined = try await other.ticker(named: "quiet", interval: .seconds(3600))
            var iterator = joined.ticks.makeAsyncIterator()
            let tick = try #require(await iterator.next())
            #expect(tick.scheduled < regular)
            #expect(tick.missed == 0)
            try await eventually("back on the regular tick") { abs(joined.nextTick.timeIntervalSince(regular)) < 0.001 }
            await joined.close()
            try await node.close()
            try await other.close()
        }
    }

    @Test("ticker entries: two and three fields parse; a trigger's regular tick must come after it; out-of-range values are refused")
    func entryFormat() {
        let t = Int64(1_800_000_000_000_000)
        #expect(TickerEntry("\(t)|1s") == TickerEntry(next: t, interval: .seconds(1)))
        #expect(TickerEntry("\(t)|1s|\(t + 200)") == TickerEntry(next: t, interval: .seconds(1), after: t + 200))
        #expect(TickerEntry("\(t)|1s|\(t + 200)")?.raw == "\(t)|1s|\(t + 200)")
        #expect(TickerEntry("\(t)|1s|\(t - 50)") == nil)
        #expect(TickerEntry("\(t)|1s|") == nil)
        #expect(TickerEntry("\(t)|1s|x") == nil)
        #expect(TickerEntry("\(t)|1s|\(t + 200)|300") == nil)
        // Out of range: times outside 2000-2200, intervals under 1 ms or over a year, durations
        // whose nanoseconds overflow.
        #expect(TickerEntry("100|1s") == nil)
        #expect(TickerEntry("\(Int64.min)|1s") == nil)
        #expect(TickerEntry("\(t)|1ns") == nil)
        #expect(TickerEntry("\(t)|999us") == nil)
        #expect(TickerEntry("\(t)|9999999999h") == nil)
        #expect(parseGoDuration("9999999999h") == nil)
    }
}
