import Foundation
@testable import Rota
import RotaRedis
import Testing

@Suite("Pool: bad input from callers and from Redis", .serialized, .timeLimit(.minutes(2)))
struct MalformedDataTests {
    @Test("payloads over the configured limit are refused with a clear error")
    func payloadLimit() async throws {
        try await withPool { pool in
            var options = testOptions()
            options.maxPayloadBytes = 1024
            let node = try await pool.start(options).node
            _ = try await node.addWorker(RecordingHandler())
            let error = await caught { try await node.dispatch(key: "big", payload: Array(repeating: 1, count: 1025)) } as? PoolError
            #expect(error?.code == .payloadTooLarge)
            #expect(error?.message.contains("1025 bytes exceeds the limit of 1024") == true)
            try await node.dispatch(key: "fits", payload: Array(repeating: 1, count: 1024))
            try await node.shutdown()
        }
    }

    @Test("out-of-range numbers in Redis never trap or spin: Int64.min keep-alives, a ticker of 1ns, a ticker entry from the year 2000")
    func outOfRangeNumbers() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let handler = RecordingHandler()
            _ = try await node.addWorker(handler)
            let now = String(nowNanos())
            // A registered worker and a node whose keep-alives are Int64.min (now - seen traps).
            try await node.maps.workers.set("ghost", now)
            try await node.maps.workerKeepAlive.set("ghost", String(Int64.min))
            try await node.maps.nodeKeepAlive.set("ghost-node", String(Int64.min))
            try await node.maps.cleanup.set("ghost", String(Int64.max))
            // Tickers: 1 ns (a zero step: every node would loop forever), and one due in 2000 at
            // 10 ms (80 billion ticks behind, counted one by one before).
            try await node.maps.tickers.set("tiny", "\(nowNanos() / 1000)|1ns")
            try await node.maps.tickers.set("ancient", "946684800000001|10ms")
            let ancient = try await node.ticker(named: "ancient", interval: .milliseconds(10))
            var ticks = ancient.ticks.makeAsyncIterator()
            let first = try #require(await ticks.next())
            #expect(first.missed > 10_000_000_000, "missed \(first.missed)")
            await ancient.close()
            let tiny = try await node.ticker(named: "tiny", interval: .milliseconds(10))
            var tinyTicks = tiny.ticks.makeAsyncIterator()
            _ = try #require(await tinyTicks.next())
            #expect(tiny.interval == .milliseconds(10))
            await tiny.close()
            // A running ticker whose entry is overwritten with garbage repairs it and ticks on.
            let healing = try await node.ticker(named: "healing", interval: .milliseconds(10))
            var healingTicks = healing.ticks.makeAsyncIterator()
            _ = try #require(await healingTicks.next())
            try await node.maps.tickers.set("healing", "1|1ns")
            try await eventually("the entry repaired") { node.maps.tickers.string("healing").flatMap(TickerEntry.init) != nil }
            let afterRepair = Date()
            var healed = try #require(await healingTicks.next())
            while healed.delivered < afterRepair { healed = try #require(await healingTicks.next()) }
            #expect(healing.interval == .milliseconds(10))
            await healing.close()
            // The sweeps ran over the poisoned entries: the ghost worker is gone, the pool serves.
            try await eventually("the ghost worker is cleaned up", timeout: .seconds(10)) { node.maps.workers.get("ghost") == nil }
            try await node.dispatch(key: "after-poison", payload: bytes("ok"))
            #expect(handler.runningKeys.contains("after-poison"))
            try await node.shutdown()
        }
    }

    @Test("garbage written into the pool's maps and streams is skipped; the pool keeps serving")
    func foreignGarbage() async throws {
        try await withPool { pool in
            let capture = LogCapture()
            let node = try await pool.start(testOptions(logger: capture.logger)).node
            let handler = RecordingHandler()
            let worker = try await node.addWorker(handler)
            let space = node.keySpace
            // A foreign writer: events with unknown names and undecodable payloads on the pool
            // stream and the worker inbox, a registry entry that is not a timestamp, a 16 MB
            // payload with odd bytes in its key, a malformed ticker entry.
            try await pool.client.send("XADD", space.key("stream", "pool"), "*", "n", "zz", "p", "garbage")
            try await pool.client.send("XADD", space.key("stream", "pool"), "*", "n", "j", "p", Array<UInt8>([1, 2, 3]))
            try await pool.client.send("XADD", space.key("stream", "worker-\(worker.id)"), "*", "n", "j", "p", "not an envelope")
            try await pool.client.send("XADD", space.key("stream", "node-\(node.id)"), "*", "n", "a", "p", Array<UInt8>([255, 255, 255, 255]))
            try await node.maps.workers.set("intruder", "not-a-timestamp")
            var big = Array("x".utf8)
            big += Array(repeating: 0xFF, count: 16 << 20)
            try await node.maps.payloads.set("odd\u{1}key\u{7F}", big)
            try await node.maps.tickers.set("broken", "yesterday|soon")
            // The pool still works.
            try await node.dispatch(key: "after-garbage", payload: bytes("ok"))
            #expect(handler.runningKeys.contains("after-garbage"))
            #expect(!node.activeWorkers().contains("intruder"))
            try await eventually("malformed input was logged") { capture.contains(level: .error, "malformed") }
            try await node.stop(key: "after-garbage")
            try await eventually("stopped") { !handler.runningKeys.contains("after-garbage") }
            try await node.shutdown()
        }
    }

    @Test("an owner entry overwritten with a worker that does not exist is claimed back; a real other owner still takes the job over")
    func forgedOwnerEntry() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let handler = RecordingHandler(), other = RecordingHandler()
            let worker = try await node.addWorker(handler, capabilities: ["a"])
            let second = try await node.addWorker(other, capabilities: ["b"])
            try await node.dispatch(key: "victim", payload: bytes("p"), requirement: "a")
            try await eventually("owned by the worker") { node.maps.owners.string("victim") == worker.id }
            // A writer points the entry at a worker that does not exist.
            try await node.maps.owners.setAndWait("victim", "ghost")
            try await eventually("claimed back") { node.maps.owners.string("victim") == worker.id }
            #expect(handler.stopped.isEmpty, "the job was never stopped")
            #expect(handler.runningKeys == ["victim"])
            #expect(!(try await jobLog(node, pool.client)).contains { $0.kind == .takenOver })
            // An entry naming a registered worker is a takeover, as before.
            try await node.maps.owners.setAndWait("victim", second.id)
            try await eventually("stopped here") { handler.stopped == ["victim"] }
            try await node.shutdown()
        }
    }
}

extension MalformedDataTests {
    @Test("a keep-alive made unreadable in Redis spares its worker for one TTL, then counts as silence")
    func unreadableKeepAlive() async throws {
        try await withPool { pool in
            let host = try await pool.start().node
            let sweeper = try await pool.start().node
            let handler = RecordingHandler()
            let worker = try await host.addWorker(handler)
            try await host.dispatch(key: "kept", payload: bytes("p"))
            // Frozen, so only the forged value is there; the sweeper is asked directly.
            worker.suspendKeepAlive()
            try await sweeper.maps.workerKeepAlive.setAndWait(worker.id, "garbage")
            await sweeper.cleanUp(worker: worker.id, keys: ["kept"])
            #expect(try await pool.client.send("HEXISTS", sweeper.maps.workers.contentKey, worker.id).int == 1, "left alone the first time")
            #expect(sweeper.maps.owners.string("kept") == worker.id)
            // Still unreadable a TTL later: the worker is as dead as a silent one.
            try await eventually("cleaned up once unreadable for a TTL") {
                await sweeper.cleanUp(worker: worker.id, keys: ["kept"])
                return try await pool.client.send("HEXISTS", sweeper.maps.workers.contentKey, worker.id).int == 0
            }
            try await host.shutdown()
        }
    }
}
