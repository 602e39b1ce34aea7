import Foundation
@testable import Rota
import RotaRedis
import Testing

/// Stops a worker without any cleanup, as if its host froze, and makes its keep-alive look old.
func silentlyStop(_ worker: Worker, on node: Node, age: Int64 = 2) async throws {
    await worker.stopLoops()
    let stale = nowNanos() - age * node.options.workerTTL.nanoseconds
    try await node.maps.workerKeepAlive.setAndWait(worker.id, String(stale))
}

@Suite("Pool: dead workers, orphans, worker internals (scenarios A and B)", .serialized, .timeLimit(.minutes(3)))
struct WorkerTests {
    @Test("S-021 a dead worker's jobs move to a new worker and the dead worker is purged")
    func deadWorkerPurged() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let dead = try await node.addWorker(RecordingHandler())
            for key in ["a", "b", "c"] { try await node.dispatch(key: key, payload: bytes(key)) }
            try await silentlyStop(dead, on: node)
            let handler = RecordingHandler()
            let fresh = try await node.addWorker(handler)
            try await eventually("the new worker runs the three jobs", timeout: .seconds(10)) { handler.runningKeys == ["a", "b", "c"] }
            try await eventually("only the new worker is left") { node.localWorkers.map(\.id) == [fresh.id] }
            try await eventually("the dead worker is gone from every map") {
                node.maps.workers.get(dead.id) == nil && node.maps.workerKeepAlive.get(dead.id) == nil
                    && !node.maps.owners.snapshot.values.contains(bytes(dead.id))
            }
            #expect(handler.running == ["a": bytes("a"), "b": bytes("b"), "c": bytes("c")])
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("S-023 orphaned payloads are requeued after the grace period", arguments: [(3, 0), (3, 2), (2, 2)])
    func orphans(jobs: Int, orphaned: Int) async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let worker = try await node.addWorker(RecordingHandler())
            let keys = (0..<jobs).map { "job\($0)" }
            for key in keys { try await node.dispatch(key: key, payload: bytes("payload-\(key)")) }
            for key in keys.prefix(orphaned) { _ = try await node.maps.owners.delete(key) }
            try await eventually("removal observed") { node.maps.owners.count == jobs - orphaned }
            await node.requeueOrphans()
            try await eventually("every key is owned again", timeout: .seconds(10)) {
                await node.requeueOrphans()
                return keys.allSatisfy { node.maps.owners.string($0) == worker.id }
            }
            #expect(Set(worker.jobs.map(\.key)) == Set(keys))
            // Each map replicates on its own connection: the payloads may trail the owners a little.
            try await eventually("every payload is there") { keys.allSatisfy { node.maps.payloads.get($0) == bytes("payload-\($0)") } }
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("S-025 a dead worker's job is recovered by the periodic sweep")
    func periodicRecovery() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let first = try await node.addWorker(RecordingHandler())
            try await node.dispatch(key: "job1")
            await first.stopLoops()  // its keep-alive simply stops
            let handler = RecordingHandler()
            let second = try await node.addWorker(handler)
            try await eventually("the silent worker is no longer active") { node.activeWorkers() == [second.id] }
            try await node.dispatch(key: "job2")
            try await eventually("the new worker runs both jobs") { handler.runningKeys == ["job1", "job2"] }
            try await node.shutdown()
        }
    }

    @Test("S-026 rebalancing moves ownership and keeps the payload")
    func rebalanceMovesOwnership() async throws {
        try await withPool { pool in
            let node = try await pool.start(testOptions(hasher: FunctionHasher { _, buckets in buckets - 1 })).node
            let h1 = RecordingHandler()
            let h2 = RecordingHandler()
            let w1 = try await node.addWorker(h1)
            try await node.dispatch(key: "rebalance-job", payload: bytes("keep me"))
            try await eventually("W1 is the replicated owner") { node.maps.owners.string("rebalance-job") == w1.id }
            let w2 = try await node.addWorker(h2)
            try await eventually("W2 runs the job, W1 does not") { h2.runningKeys == ["rebalance-job"] && h1.running.isEmpty }
            #expect(h1.stopped == ["rebalance-job"])
            #expect(w1.jobs.isEmpty)
            try await eventually("W2 is the only owner") { node.maps.owners.string("rebalance-job") == w2.id }
            #expect(try await pool.client.send("HGET", node.maps.payloads.contentKey, "rebalance-job").bytes == bytes("keep me"))
            #expect(h2.started.first?.isRequeued == true)
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("S-027 a failed fresh start leaves no trace; a failed requeued start keeps its payload")
    func startFailure() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let worker = try await node.addWorker(RecordingHandler(startError: { _ in TestFailure("E") }))
            let payloads = node.maps.payloads.contentKey
            let owners = node.maps.owners.contentKey
            let fresh = JobRecord(key: "new-job", dispatcher: node.id, payload: bytes("fresh payload"), createdAt: Date(), requeued: false)
            #expect((await caught { try await worker.start(fresh) } as? TestFailure)?.description == "E")
            #expect(try await pool.client.send("HEXISTS", payloads, "new-job").int == 0)
            #expect(try await pool.client.send("HEXISTS", owners, "new-job").int == 0)
            // A requeued job exists in the pool already: its payload is there before the start.
            try await node.maps.payloads.set("requeued-job", bytes("requeued payload"))
            let requeued = JobRecord(key: "requeued-job", dispatcher: node.id, payload: bytes("requeued payload"), createdAt: Date(), requeued: true)
            #expect((await caught { try await worker.start(requeued) } as? TestFailure)?.description == "E")
            #expect(try await pool.client.send("HEXISTS", owners, "requeued-job").int == 0)
            #expect(try await pool.client.send("HGET", payloads, "requeued-job").bytes == bytes("requeued payload"))
            // The dispatch path reports the handler's error text.
            let failure = await caught { try await node.dispatch(key: "dispatched-job") } as? PoolError
            #expect(failure?.code == .startFailed)
            #expect(failure?.message == "E")
            _ = try await node.maps.payloads.delete("requeued-job")
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("S-028 workers refuse control events for jobs they do not run")
    func controlEventsNeedOwnership() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let handler = RecordingHandler()
            let worker = try await node.addWorker(handler)
            #expect((await caught { try await worker.stop("missing-job") } as? PoolError)?.code == .requeue)
            #expect(handler.stopped.isEmpty)
            #expect((await caught { try await worker.notify(NotificationRecord(key: "missing-job", payload: bytes("x"))) } as? PoolError)?.code == .requeue)
            #expect(handler.notifications.isEmpty)
            try await node.shutdown()
        }
    }

    @Test("S-029 stale workers are excluded and cleaned up")
    func staleWorkersInOneNode() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let healthy = try await node.addWorker(RecordingHandler())
            var stale: [Worker] = []
            for _ in 0..<5 { stale.append(try await node.addWorker(RecordingHandler())) }
            for worker in stale { try await silentlyStop(worker, on: node) }
            try await eventually("only the healthy worker is active") { node.activeWorkers() == [healthy.id] }
            try await eventually("the stale workers leave the registry") { node.maps.workers.keys == [healthy.id] }
            try await node.shutdown()
        }
    }

    @Test("S-030 stale-worker cleanup is scoped to its pool")
    func cleanupScopedToPool() async throws {
        try await withPool { pool in
            let one = try await pool.start().node
            let two = try await pool.start(pool: pool.pool + "-2").node
            let healthy = try await one.addWorker(RecordingHandler())
            var stale: [Worker] = []
            for _ in 0..<5 { stale.append(try await two.addWorker(RecordingHandler())) }
            for worker in stale { try await silentlyStop(worker, on: two) }
            try await eventually("pool 2 has no active worker and an empty registry") {
                two.activeWorkers().isEmpty && two.maps.workers.keys.isEmpty
            }
            #expect(one.activeWorkers() == [healthy.id])
            #expect(one.maps.workers.keys == [healthy.id])
            try await one.shutdown()
            try await two.shutdown()
        }
    }
}
