import Foundation
@testable import Rota
import RotaMap
import RotaRedis
import Testing

@Suite("Pool: job and payload limits", .serialized, .timeLimit(.minutes(2)))
struct PoolLimitTests {
    /// A node of `pool` limited to `maxJobs`, with one recording worker.
    private func startLimited(_ pool: PoolHarness, maxJobs: Int) async throws -> (Node, RecordingHandler, Worker) {
        var options = testOptions()
        options.maxJobs = maxJobs
        let node = try await pool.start(options).node
        let handler = RecordingHandler()
        return (node, handler, try await node.addWorker(handler))
    }

    @Test("a dispatch beyond maxJobs fails with tooManyJobs; handoffs of existing jobs still start; a stop makes room again")
    func jobLimit() async throws {
        try await withPool { pool in
            let (first, _, _) = try await startLimited(pool, maxJobs: 3)
            for index in 0..<3 { try await first.dispatch(key: "job-\(index)", payload: bytes("p\(index)")) }
            let error = try #require(await caught { try await first.dispatch(key: "job-3", payload: bytes("p3")) } as? PoolError)
            #expect(error.code == .tooManyJobs)
            #expect(error.message.contains("the pool has 3 jobs, its limit is 3"), "\(error.message)")
            #expect(try await first.jobPayload("job-3") == nil, "nothing of the refused job was kept")
            #expect(try await pool.client.send("HEXISTS", first.maps.pending.contentKey, "job-3").int == 0, "no pending guard left")

            // A full pool still hands its jobs over: the requeued starts bypass admission.
            let (second, secondHandler, secondWorker) = try await startLimited(pool, maxJobs: 3)
            try await first.close()
            try await eventually("the closed node's jobs restart on the other node") {
                secondHandler.runningKeys == ["job-0", "job-1", "job-2"]
            }
            #expect(secondHandler.started.allSatisfy { $0.isRequeued })
            let again = await caught { try await second.dispatch(key: "job-3") } as? PoolError
            #expect(again?.code == .tooManyJobs)

            guard case .stopped(let stoppedBy) = try await second.stopAndWait(key: "job-0") else { throw TestFailure("job-0 not stopped") }
            #expect(stoppedBy == secondWorker.id)
            try await second.dispatch(key: "job-3", payload: bytes("p3"))
            #expect(secondHandler.runningKeys.contains("job-3"))
            try await second.shutdown()
        }
    }

    @Test("a schedule's plan beyond maxJobs: the extra start fails with the limit's error, the others start")
    func jobLimitInAPlan() async throws {
        try await withPool { pool in
            let (node, _, _) = try await startLimited(pool, maxJobs: 2)
            let producer = ScriptedProducer(name: "limited") { _, _ in
                JobPlan(start: (0..<3).map { PlannedJob(key: "planned-\($0)") })
            }
            let schedule = try await node.schedule(producer, interval: .milliseconds(50))
            var report: PlanReport?
            for await event in schedule.events {
                if case .applied(let applied) = event {
                    report = applied
                    break
                }
            }
            let applied = try #require(report)
            #expect(applied.count(.started) == 2)
            #expect(applied.failures.count == 1)
            #expect(applied.failures.first?.message.contains("Node.Options.maxJobs") == true, "\(applied.failures)")
            try await node.shutdown()
        }
    }

    @Test("a payload over maxPayloadBytes written straight into Redis is skipped and counted; the node keeps working")
    func poisonedPayloads() async throws {
        try await withPool { pool in
            let capture = LogCapture()
            var options = testOptions(logger: capture.logger)
            options.maxPayloadBytes = 1024
            let payloadsKey = "rota:{\(pool.pool)}:map:job-payloads"
            let poison = Array(repeating: UInt8(ascii: "P"), count: 4096)
            // Before the node joins: its snapshot holds the poisoned payload.
            try await pool.client.send("HSET", payloadsKey, "poisoned-before", poison)
            let node = try await pool.start(options).node
            let handler = RecordingHandler()
            let worker = try await node.addWorker(handler)
            let space = node.keySpace
            #expect(payloadsKey == node.maps.payloads.contentKey)
            #expect(node.maps.payloads.get("poisoned-before")?.count == nil)
            let skippedAtJoin = node.maps.payloads.skippedValueCount
            #expect(skippedAtJoin >= 1)

            // While it runs: a change message through the map protocol, from a writer with no limit.
            try await ReplicatedMap.withMap("job-payloads", keySpace: space, client: pool.client) { writer in
                try await writer.set("fine", "small")
                try await writer.set("poisoned-live", poison)
                try await writer.set("after", "small")
            }
            try await eventually("the change after the poisoned one is applied") { node.maps.payloads.get("after") != nil }
            #expect(node.maps.payloads.get("poisoned-live")?.count == nil)
            #expect(node.maps.payloads.get("fine") == bytes("small"))
            #expect(node.maps.payloads.skippedValueCount >= skippedAtJoin + 1)
            #expect(capture.entries.withLock { $0.filter { $0.message.contains("map value over the size limit") }.count } == 2)

            // A job record on the pool stream and one in the worker's inbox, each with a payload
            // over the limit: neither is forwarded nor started.
            let oversized = JobRecord(key: "poisoned-stream", dispatcher: "nobody", payload: poison, createdAt: Date(), requeued: true)
            try await pool.client.send("XADD", space.key("stream", "pool"), "*", "n", "j", "p", oversized.encoded())
            let inboxRecord = JobRecord(key: "poisoned-inbox", dispatcher: "nobody", payload: poison, createdAt: Date(), requeued: true)
            let envelope = Envelope(sender: node.id, payload: inboxRecord.encoded())
            try await pool.client.send(
                "XADD", space.key("stream", Node.inboxName(ofWorker: worker.id)), "*", "n", "j", "p", envelope.encoded())
            // The routing node refuses the first; the worker, the second (nobody routed it).
            try await eventually("both records are refused") { node.refusedPayloadCounts == ["pool-stream": 1, "inbox": 1] }
            #expect(capture.entries.withLock { $0.filter { $0.message.contains("payload over the size limit") }.count } == 2)

            // The pool keeps serving, and orphan recovery never started the poisoned jobs.
            try await node.dispatch(key: "after-poison", payload: bytes("ok"))
            #expect(handler.runningKeys == ["after-poison"])
            #expect(try await node.jobPayload("poisoned-before")?.count == nil)
            try await node.shutdown()
        }
    }

    @Test("a client-only node refuses an oversized payload read with HGET, as replicas do")
    func clientOnlyPayloadRead() async throws {
        try await withPool { pool in
            var options = testOptions(clientOnly: true)
            options.maxPayloadBytes = 16
            let node = try await pool.start(options).node
            try await pool.client.send("HSET", node.maps.payloads.contentKey, "big", Array(repeating: UInt8(1), count: 17), "small", "x")
            #expect(try await node.jobPayload("big")?.count == nil)
            #expect(try await node.jobPayload("small") == bytes("x"))
            #expect(node.refusedPayloadCounts == ["payloads": 1])
        }
    }
}
