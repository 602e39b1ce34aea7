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
}
