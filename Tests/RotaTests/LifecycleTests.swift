import Foundation
@testable import Rota
import RotaRedis
import Synchronization
import Testing

/// Fails its first `failures` starts of each key with a requeue request.
final class RequeueingHandler: JobHandler {
    let recorder = RecordingHandler()
    let failures: Int
    let attempts = Mutex<[String: Int]>([:])

    init(failures: Int) { self.failures = failures }

    func start(_ job: Job) async throws {
        let attempt = attempts.withLock { attempts -> Int in
            attempts[job.key, default: 0] += 1
            return attempts[job.key, default: 0]
        }
        if attempt <= failures { throw PoolError.requeue }
        try await recorder.start(job)
    }

    func stop(key: String) async throws { try await recorder.stop(key: key) }
}

@Suite("Pool: lifecycle, client-only nodes, requeue, eviction", .serialized, .timeLimit(.minutes(3)))
struct LifecycleTests {
    @Test("joining a pool that is shutting down fails clearly")
    func joinDuringShutdown() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            _ = try await node.maps.shutdown.setAndWait("shutdown", "someone")
            let late = try Node(pool: pool.pool, client: pool.client, options: testOptions())
            let running = TestNode(late)
            async let run: Void = running.run()
            let error = await caught { try await late.waitUntilReady() } as? PoolError
            #expect(error?.code == .shuttingDown)
            #expect(error?.message.contains("shutting down") == true)
            await run
            try await eventually("the running node shut down too") { node.isShutdown }
        }
    }

    @Test("client-only nodes dispatch, stop and notify; they cannot host workers or shut the pool down; close is safe twice")
    func clientOnly() async throws {
        try await withPool { pool in
            let worker = try await pool.start().node
            let handler = RecordingHandler()
            _ = try await worker.addWorker(handler)
            let client = try await pool.start(testOptions(clientOnly: true)).node
            try await client.dispatch(key: "job", payload: bytes("from a client"))
            #expect(handler.running == ["job": bytes("from a client")])
            #expect(try await client.jobKeys() == ["job"])
            #expect(try await client.jobPayload("job") == bytes("from a client"))
            #expect(try await client.poolWorkers().count == 1)
            try await client.notify(key: "job", payload: bytes("n"))
            try await eventually("notified") { handler.notifications.count == 1 }
            try await client.stop(key: "job")
            try await eventually("stopped") { handler.running.isEmpty }
            #expect((await caught { _ = try await client.addWorker(RecordingHandler()) } as? PoolError)?.code == .clientOnly)
            #expect((await caught { try await client.shutdown() } as? PoolError)?.code == .clientOnly)
            try await client.close()
            try await client.close()
            #expect(client.isClosed)
            #expect((await caught { try await client.dispatch(key: "late") } as? PoolError)?.code == .closed)
            try await worker.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("twenty concurrent dispatches of one key admit exactly one")
    func twentyDispatches() async throws {
        try await withPool { pool in
            let a = try await pool.start().node
            let b = try await pool.start(testOptions(clientOnly: true)).node
            let handler = RecordingHandler()
            _ = try await a.addWorker(handler)
            let errors = await withTaskGroup(of: (any Error)?.self) { group in
                for index in 0..<20 {
                    group.addTask { await caught { try await (index.isMultiple(of: 2) ? a : b).dispatch(key: "single", payload: bytes("\(index)")) } }
                }
                return await group.reduce(into: [(any Error)?]()) { $0.append($1) }
            }
            let successes = errors.filter { $0 == nil }.count
            let codes: [PoolError.Code] = errors.compactMap { ($0 as? PoolError)?.code }
            let exists = codes.filter { $0 == .jobExists }.count
            #expect(successes == 1)
            #expect(exists == 19)
            #expect(handler.started.count == 1)
            try await a.shutdown()
        }
    }

    @Test("a handler that asks for a requeue gets the job again")
    func handlerRequeue() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let handler = RequeueingHandler(failures: 1)
            _ = try await node.addWorker(handler)
            // Redelivery takes the ack grace period plus up to one idle-claim period, which can
            // exceed the dispatch timeout (twice the grace): the dispatch may report a timeout.
            let error = await caught { try await node.dispatch(key: "retry-me", payload: bytes("p")) } as? PoolError
            #expect(error == nil || error?.code == .timeout)
            try await eventually("the second attempt started the job") { handler.recorder.running == ["retry-me": bytes("p")] }
            #expect(handler.attempts.withLock { $0["retry-me"] } == 2)
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("dispatch fails with a timeout when no worker takes the job")
    func dispatchTimeout() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let started = ContinuousClock.now
            let error = await caught { try await node.dispatch(key: "nobody") } as? PoolError
            #expect(error?.code == .timeout)
            #expect(ContinuousClock.now - started >= node.options.ackGracePeriod * 2)
            try await eventually("the guard is released") { node.maps.pending.get("nobody") == nil }
            #expect((await caught { try await node.dispatch(key: "") } as? PoolError)?.code == .invalidArgument)
            #expect((await caught { try await node.dispatch(key: "a=b") } as? PoolError)?.code == .invalidArgument)
            try await node.shutdown()
        }
    }

    @Test("a live worker evicted by a peer stops its jobs, so nothing runs twice")
    func evictedWorkerStopsJobs() async throws {
        try await withPool { pool in
            let a = try await pool.start(testOptions(hasher: FixedHasher(bucket: 0))).node
            let b = try await pool.start(testOptions(hasher: FixedHasher(bucket: 0))).node
            let slow = RecordingHandler()
            let other = RecordingHandler()
            let slowWorker = try await a.addWorker(slow)
            _ = try await b.addWorker(other)
            try await a.dispatch(key: "job", payload: bytes("p"))
            #expect(slow.runningKeys == ["job"])
            // A's worker freezes (no keep-alives) but keeps running its job: B's sweep finds it
            // dead and requeues the job.
            slowWorker.suspendKeepAlive()
            try await eventually("the other worker runs the job") { other.runningKeys == ["job"] }
            try await eventually("the evicted worker stopped it") { slow.running.isEmpty && slow.stopped == ["job"] }
            try await eventually("A forgot the evicted worker") { a.localWorkers.isEmpty }
            try await a.shutdown()
        }
    }

    @Test("a start delivered twice to two workers: the worker that lost the ownership stops its copy")
    func duplicateStartResolved() async throws {
        try await withPool { pool in
            let hasher = SwitchableHasher()
            let node = try await pool.start(testOptions(hasher: hasher)).node
            let h1 = RecordingHandler()
            let h2 = RecordingHandler()
            _ = try await node.addWorker(h1)
            let w2 = try await node.addWorker(h2)
            try await node.dispatch(key: "job", payload: bytes("p"))
            #expect(h1.runningKeys == ["job"])
            // A redelivered start reaching the second worker (as after a lost ack, when the active
            // set differed for a moment): W2 is then the hash target too, so no rebalance undoes it.
            hasher.current.withLock { $0 = 1 }
            let again = JobRecord(key: "job", dispatcher: node.id, payload: bytes("p"), createdAt: Date(), requeued: true)
            try await w2.start(again)
            #expect(h2.runningKeys == ["job"])
            try await eventually("the first worker stopped its copy") { h1.running.isEmpty && h1.stopped == ["job"] }
            #expect(h2.runningKeys == ["job"])
            #expect(node.maps.owners.string("job") == w2.id)
            #expect(node.maps.payloads.get("job") == bytes("p"))
            try await node.shutdown()
        }
    }

    @Test("adding a worker moves only the jobs whose hash target changed")
    func rebalanceMovesOnlyChangedTargets() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let handlers = [RecordingHandler(), RecordingHandler()]
            for handler in handlers { _ = try await node.addWorker(handler) }
            let keys = (0..<60).map { "job-\($0)" }
            for key in keys { try await node.dispatch(key: key) }
            let before = handlers.map(\.runningKeys)
            let third = RecordingHandler()
            _ = try await node.addWorker(third)
            let expectedMoved = Set(keys.filter { JumpHasher().bucket(for: $0, buckets: 3) == 2 })
            try await eventually("the new worker runs exactly the moved jobs") { third.runningKeys == expectedMoved }
            for (index, handler) in handlers.enumerated() {
                #expect(handler.runningKeys == before[index].subtracting(expectedMoved))
                #expect(Set(handler.stopped) == before[index].intersection(expectedMoved))
            }
            let everywhere = handlers.map(\.runningKeys.count).reduce(0, +) + third.runningKeys.count
            #expect(everywhere == keys.count)
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }
}

@Suite("Pool: Redis restarts", .serialized, .timeLimit(.minutes(3)))
struct RedisRestartTests {
    @Test("Redis restarted empty: workers register again and every job runs exactly once")
    func emptyRestart() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let handlers = [RecordingHandler(), RecordingHandler()]
            var workers: [Worker] = []
            for handler in handlers { workers.append(try await node.addWorker(handler)) }
            let keys = (0..<10).map { "job-\($0)" }
            for key in keys { try await node.dispatch(key: key, payload: bytes("payload-\(key)")) }
            try await pool.server.restart()  // no persistence: Redis comes back empty
            try await eventually("ownership and payloads are back in Redis", timeout: .seconds(20)) {
                let owners = try await node.hashContent(node.maps.owners.contentKey)
                let payloads = try await node.hashContent(node.maps.payloads.contentKey)
                return Set(owners.keys) == Set(keys) && keys.allSatisfy { payloads[$0] == bytes("payload-\($0)") }
            }
            // Each job runs exactly once, on the worker the registry names.
            let running = handlers.flatMap(\.runningKeys)
            #expect(running.count == keys.count && Set(running) == Set(keys))
            let owners = try await node.hashContent(node.maps.owners.contentKey)
            for (index, handler) in handlers.enumerated() {
                for key in handler.runningKeys { #expect(owners[key] == bytes(workers[index].id)) }
            }
            // And the pool takes new work (once the pool stream's group is back).
            try await eventually("a new dispatch succeeds", timeout: .seconds(20)) {
                do {
                    try await node.dispatch(key: "after-restart")
                    return true
                } catch let error as PoolError where error.code == .jobExists {
                    return true
                }
            }
            #expect(handlers.flatMap(\.runningKeys).count == keys.count + 1)
            try await node.shutdown()
        }
    }
}
