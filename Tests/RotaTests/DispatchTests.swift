import Foundation
import Logging
@testable import Rota
import RotaRedis
import Testing

@Suite("Pool: nodes, workers, dispatch (scenarios A)", .serialized, .timeLimit(.minutes(2)))
struct DispatchTests {
    @Test("S-001 local worker listing, then shutdown leaves a clean Redis")
    func localWorkers() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            var ids: Set<String> = []
            for _ in 0..<3 { ids.insert(try await node.addWorker(RecordingHandler()).id) }
            #expect(Set(node.localWorkers.map(\.id)) == ids)
            try await node.shutdown()
            #expect(node.isShutdown)
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("S-002 pool-wide worker listing across nodes")
    func poolWorkers() async throws {
        try await withPool { pool in
            let a = try await pool.start().node
            let b = try await pool.start().node
            let w1 = try await a.addWorker(RecordingHandler())
            let w2 = try await a.addWorker(RecordingHandler())
            let w3 = try await b.addWorker(RecordingHandler())
            try await eventually("A lists all three workers") {
                Set(try await a.poolWorkers().map(\.id)) == [w1.id, w2.id, w3.id]
            }
            try await a.shutdown()
            try await b.shutdown()  // already closed by the pool shutdown: a no-op
            #expect(b.isClosed)
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("S-003 job keys visible from any node")
    func jobKeys() async throws {
        try await withPool { pool in
            let n1 = try await pool.start(testOptions(hasher: FixedHasher(bucket: 0))).node
            let n2 = try await pool.start(testOptions(hasher: FixedHasher(bucket: 1))).node
            _ = try await n1.addWorker(RecordingHandler())
            _ = try await n2.addWorker(RecordingHandler())
            for index in 1...4 { try await n1.dispatch(key: "job\(index)", payload: bytes("payload\(index)")) }
            try await eventually("node 1 lists the four keys") { try await n1.jobKeys() == ["job1", "job2", "job3", "job4"] }
            try await eventually("node 2 lists the four keys") { try await n2.jobKeys() == ["job1", "job2", "job3", "job4"] }
            try await n1.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("S-004 job payload lookup, and removal on stop")
    func jobPayload() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            _ = try await node.addWorker(RecordingHandler())
            try await node.dispatch(key: "job1", payload: bytes("payload1"))
            try await eventually("payload of job1") { try await node.jobPayload("job1") == bytes("payload1") }
            try await node.dispatch(key: "job2")
            try await eventually("empty payload of job2 is found") { try await node.jobPayload("job2") == [] }
            #expect(try await node.jobPayload("never") == nil)
            try await node.stop(key: "job1")
            try await eventually("job1 is gone") { try await node.jobPayload("job1") == nil }
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("S-005 dispatch to the only worker")
    func oneWorker() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let handler = RecordingHandler()
            let worker = try await node.addWorker(handler)
            try await node.dispatch(key: "job", payload: bytes("test payload"))
            // The start handler ran before dispatch returned.
            #expect(handler.running == ["job": bytes("test payload")])
            #expect(worker.jobs.map(\.key) == ["job"])
            #expect(worker.jobs.first?.payload == bytes("test payload"))
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("S-006 hash-based distribution over two workers")
    func twoWorkers() async throws {
        try await withPool { pool in
            let hasher = FunctionHasher { key, _ in key == "job1" ? 0 : 1 }
            let node = try await pool.start(testOptions(hasher: hasher)).node
            let h1 = RecordingHandler()
            let h2 = RecordingHandler()
            let w1 = try await node.addWorker(h1)
            let w2 = try await node.addWorker(h2)
            try await node.dispatch(key: "job1", payload: bytes("one"))
            try await node.dispatch(key: "job2", payload: bytes("two"))
            #expect(w1.jobs.map(\.key) == ["job1"])
            #expect(w2.jobs.map(\.key) == ["job2"])
            #expect(h1.running == ["job1": bytes("one")])
            #expect(h2.running == ["job2": bytes("two")])
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }
}
