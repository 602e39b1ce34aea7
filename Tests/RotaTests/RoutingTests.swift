import Foundation
@testable import Rota
import RotaRedis
import RotaStreams
import Testing

@Suite("Pool: routing, admission, close and shutdown (scenarios A)", .serialized, .timeLimit(.minutes(3)))
struct RoutingTests {
    @Test("S-007 stop goes to the current owner even if the hash target changed")
    func stopRoutesToOwner() async throws {
        try await withPool { pool in
            let hasher = SwitchableHasher()
            let node = try await pool.start(testOptions(hasher: hasher)).node
            let h1 = RecordingHandler()
            let h2 = RecordingHandler()
            let w1 = try await node.addWorker(h1)
            _ = try await node.addWorker(h2)
            try await node.dispatch(key: "job", payload: bytes("p"))
            try await eventually("W1 is the replicated owner") { node.maps.owners.string("job") == w1.id }
            hasher.current.withLock { $0 = 1 }
            try await node.stop(key: "job")
            try await eventually("W1 stopped the job") { h1.stopped == ["job"] }
            #expect(h2.stopped.isEmpty)
            #expect(h2.started.isEmpty)
            try await eventually("no job, no payload, no owner") {
                h1.running.isEmpty && node.maps.payloads.get("job") == nil && node.maps.owners.get("job") == nil
            }
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("a redelivered start of a job an active worker owns goes to that owner, not to a changed hash target")
    func redeliveredStartRoutesToOwner() async throws {
        try await withPool { pool in
            let hasher = SwitchableHasher()
            let node = try await pool.start(testOptions(hasher: hasher)).node
            let h1 = RecordingHandler()
            let w1 = try await node.addWorker(h1)
            let w2 = try await node.addWorker(RecordingHandler())
            try await node.dispatch(key: "job", payload: bytes("p"))
            try await eventually("W1 is the replicated owner") { node.maps.owners.string("job") == w1.id }
            hasher.current.withLock { $0 = 1 }
            #expect(await node.routeDecision(eventName: "j", key: "job") == .worker(w1.id))
            #expect(await node.routeDecision(eventName: "j", key: "fresh-job") == .worker(w2.id), "an unowned job goes to its hash target")
            // An owner that is no longer active (dead, being cleaned up) does not attract the start.
            try await node.maps.cleanup.setAndWait(w1.id, String(nowNanos()))
            #expect(await node.routeDecision(eventName: "j", key: "job") == .worker(w2.id))
            try await node.maps.cleanup.delete(w1.id)
            #expect(h1.started.count == 1)
            try await node.shutdown()
        }
    }

    @Test("S-008 control events wait for an owner while the payload exists, and are dropped once it is gone")
    func ownershipGaps() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            _ = try await node.addWorker(RecordingHandler())
            try await node.maps.payloads.setAndWait("handoff-job", bytes("payload"))
            #expect(await node.routeDecision(eventName: "s", key: "handoff-job") == .awaitingOwner)
            #expect(await node.routeDecision(eventName: "n", key: "handoff-job") == .awaitingOwner)
            _ = try await node.maps.payloads.delete("handoff-job")
            #expect(await node.routeDecision(eventName: "s", key: "handoff-job") == .notFound)
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("S-009 admission: one dispatch per key, guards live in Redis and are released by their owner only")
    func admission() async throws {
        try await withPool { pool in
            let n1 = try await pool.start().node
            let n2 = try await pool.start().node
            _ = try await n1.addWorker(RecordingHandler())
            _ = try await n2.addWorker(RecordingHandler())
            let pendingKey = n1.maps.pending.contentKey

            // a. concurrent dispatch of one key from two nodes
            async let first: (any Error)? = caught { try await n1.dispatch(key: "concurrent-job", payload: bytes("1")) }
            async let second: (any Error)? = caught { try await n2.dispatch(key: "concurrent-job", payload: bytes("2")) }
            let outcomes = await [first, second]
            #expect(outcomes.filter { $0 == nil }.count == 1)
            #expect(outcomes.compactMap { $0 as? PoolError }.map(\.code) == [.jobExists])

            // b. re-dispatch of a running job
            try await n1.dispatch(key: "sequential-job")
            await #expect(throws: PoolError.self) { try await n2.dispatch(key: "sequential-job") }
            #expect((await caught { try await n2.dispatch(key: "sequential-job") } as? PoolError)?.code == .jobExists)

            // c. a live guard present only in Redis
            let future = String(nowNanos() + 3_600_000_000_000)
            try await pool.client.send("HSET", pendingKey, "live-guard", future)
            #expect(try await n2.claim("live-guard") == .pending(until: future))
            #expect(try await pool.client.send("HGET", pendingKey, "live-guard").string == future)

            // d. a stale guard is replaced, and the claim is published to the replicas
            try await pool.client.send("HSET", pendingKey, "stale-guard", String(nowNanos() - 3_600_000_000_000))
            guard case .claimed(let token) = try await n2.claim("stale-guard") else { throw TestFailure("stale guard not replaced") }
            #expect(!token.isEmpty)
            #expect(try await pool.client.send("HGET", pendingKey, "stale-guard").string == token)
            try await eventually("replica shows the new token") { n2.maps.pending.string("stale-guard") == token }
            #expect(try await n2.release("stale-guard", token: token))

            // e. a malformed guard is an error of its own and stays untouched
            try await pool.client.send("HSET", pendingKey, "bad-guard", "not-a-timestamp")
            #expect(try await n2.claim("bad-guard") == .malformed("not-a-timestamp"))
            #expect(try await pool.client.send("HGET", pendingKey, "bad-guard").string == "not-a-timestamp")

            // f. release only removes the owner's guard
            guard case .claimed(let mine) = try await n2.claim("owned-guard") else { throw TestFailure("claim failed") }
            try await eventually("replica shows the guard") { n2.maps.pending.string("owned-guard") == mine }
            #expect(try await n2.release("owned-guard", token: "someone-else") == false)
            #expect(try await pool.client.send("HGET", pendingKey, "owned-guard").string == mine)
            #expect(try await n2.release("owned-guard", token: mine))
            #expect(try await pool.client.send("HEXISTS", pendingKey, "owned-guard").int == 0)
            try await eventually("replica drops the guard") { n2.maps.pending.get("owned-guard") == nil }

            // g. twenty concurrent claims admit one
            let claims = try await withThrowingTaskGroup(of: Claim.self) { group in
                for _ in 0..<20 { group.addTask { try await n2.claim("contended") } }
                return try await group.reduce(into: [Claim]()) { $0.append($1) }
            }
            let winners = claims.compactMap { claim -> String? in
                if case .claimed(let token) = claim { return token }
                return nil
            }
            #expect(winners.count == 1)
            #expect(claims.filter { if case .pending = $0 { return true } else { return false } }.count == 19)
            if let winner = winners.first { #expect(try await n2.release("contended", token: winner)) }

            // h. admission consults Redis, not the replica
            try await pool.client.send("HSET", n1.maps.payloads.contentKey, "hidden-job", "x")
            #expect((await caught { try await n2.dispatch(key: "hidden-job", payload: bytes("new")) } as? PoolError)?.code == .jobExists)
            #expect(try await pool.client.send("HEXISTS", pendingKey, "hidden-job").int == 0)
            try await pool.client.send("HDEL", n1.maps.payloads.contentKey, "hidden-job")

            // i. an expired guard does not block a dispatch
            try await n1.maps.pending.setAndWait("expired-job", String(nowNanos() - 3_600_000_000_000))
            try await n1.dispatch(key: "expired-job")

            // j. the guard is removed after a successful dispatch
            try await n1.dispatch(key: "clean-job")
            try await eventually("no guard for clean-job") { n1.maps.pending.get("clean-job") == nil }

            // k. a malformed guard makes the dispatch fail distinctly
            try await n1.maps.pending.setAndWait("invalid-job", "invalid-timestamp")
            let malformed = await caught { try await n1.dispatch(key: "invalid-job") } as? PoolError
            #expect(malformed?.code == .malformedPendingGuard)
            #expect(malformed?.message.contains("malformed pending guard") == true)
            #expect(n1.maps.pending.string("invalid-job") == "invalid-timestamp")
            _ = try await n1.maps.pending.delete("invalid-job")
            _ = try await n1.maps.pending.delete("bad-guard")
            _ = try await n1.maps.pending.delete("live-guard")

            // l. Unlike the reference, deleting the pool stream does not lose dispatches: the sinks
            // re-create their group. A dispatch with no worker to take it fails (timeout), and its
            // guard is removed all the same.
            try await pool.client.send("DEL", n1.poolStream.key)
            try await n1.dispatch(key: "after-stream-loss")
            for worker in n1.localWorkers { await n1.removeWorker(worker) }
            for worker in n2.localWorkers { await n2.removeWorker(worker) }
            let failure = await caught { try await n1.dispatch(key: "lost-job") } as? PoolError
            #expect(failure?.code == .timeout)
            try await eventually("no guard for lost-job") { n1.maps.pending.get("lost-job") == nil }
        }
    }

    @Test("S-010 a notification reaches the job's worker")
    func notification() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let handler = RecordingHandler()
            _ = try await node.addWorker(handler)
            try await node.dispatch(key: "test-job")
            try await node.notify(key: "test-job", payload: bytes("test notification"))
            try await eventually("the handler got it") { handler.notifications.count == 1 }
            #expect(handler.notifications.first?.key == "test-job")
            #expect(handler.notifications.first?.payload == bytes("test notification"))
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("S-011 a notification to a handler without notification support is logged as an error")
    func notificationWithoutHandler() async throws {
        try await withPool { pool in
            let capture = LogCapture()
            let node = try await pool.start(testOptions(logger: capture.logger)).node
            let recorder = RecordingHandler()
            let worker = try await node.addWorker(PlainHandler(recorder: recorder))
            try await node.dispatch(key: "test-job")
            try await node.notify(key: "test-job", payload: bytes("hello"))
            try await eventually("error logged") { capture.contains(level: .error, "does not implement NotificationHandler") }
            #expect(worker.jobs.map(\.key) == ["test-job"])
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("S-012 RemoveWorker, then Shutdown")
    func removeWorkerThenShutdown() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let worker = try await node.addWorker(RecordingHandler())
            try await node.dispatch(key: "job")
            await node.removeWorker(worker)
            try await eventually("worker has no jobs") { worker.jobs.isEmpty }
            #expect(node.localWorkers.isEmpty)
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("S-013 Close stops local jobs; Shutdown of a closed node is a no-op")
    func closeStopsJobs() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let handler = RecordingHandler()
            let worker = try await node.addWorker(handler)
            try await node.dispatch(key: "job")
            try await node.close()
            #expect(node.isClosed)
            #expect(worker.jobs.isEmpty)
            #expect(handler.stopped == ["job"])
            try await node.shutdown()
            try await node.close()
            await #expect(throws: PoolError.self) { try await node.dispatch(key: "other") }
            #expect((await caught { try await node.dispatch(key: "other") } as? PoolError)?.code == .closed)
        }
    }

    @Test("S-014 two-node dispatch and ack path")
    func twoNodeAckPath() async throws {
        try await withPool { pool in
            let n1 = try await pool.start(testOptions(hasher: FixedHasher(bucket: 1))).node
            let n2 = try await pool.start(testOptions(hasher: FixedHasher(bucket: 1))).node
            let h1 = RecordingHandler(startError: { _ in TestFailure("W1 must not start anything") })
            let h2 = RecordingHandler()
            _ = try await n1.addWorker(h1)
            _ = try await n2.addWorker(h2)
            try await n1.dispatch(key: "job", payload: bytes("p"))
            #expect(h2.runningKeys == ["job"])
            #expect(h1.started.isEmpty)
            try await eventually("routed events are all acknowledged") { n1.routedCount == 0 && n2.routedCount == 0 }
            try await n1.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("S-015 Close requeues jobs to another node")
    func closeRequeues() async throws {
        try await withPool { pool in
            let n1 = try await pool.start(testOptions(hasher: FixedHasher(bucket: 0))).node
            let n2 = try await pool.start(testOptions(hasher: FixedHasher(bucket: 0))).node
            let h1 = RecordingHandler()
            let h2 = RecordingHandler()
            let w1 = try await n1.addWorker(h1)
            let w2 = try await n2.addWorker(h2)
            try await n1.dispatch(key: "job", payload: bytes("payload"))
            #expect(h1.runningKeys == ["job"])
            try await n1.close()
            try await eventually("W2 runs the job") { h2.runningKeys == ["job"] }
            #expect(h2.started.first?.isRequeued == true)
            #expect(h2.started.first?.payload == bytes("payload"))
            #expect(w1.jobs.isEmpty)
            try await eventually("W2 owns it") { n2.maps.owners.string("job") == w2.id }
            try await n2.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("S-016 an ack for an event never routed is harmless")
    func unknownAck() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            _ = try await node.addWorker(RecordingHandler())
            await node.handleAck(from: "no-such-worker", AckRecord(eventID: "1-1"))
            #expect(node.routedCount == 0)
            try await node.dispatch(key: "still-works")
            try await node.shutdown()
        }
    }

    @Test("S-017 stale routed events are collected when an ack is processed")
    func staleRoutedEvents() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            _ = try await node.addWorker(RecordingHandler())
            let nowMillis = nowNanos() / 1_000_000
            func event(ageSeconds: Int64, seq: Int) -> StreamEvent {
                StreamEvent(id: "\(nowMillis - ageSeconds * 1000)-\(seq)", stream: "pool", sink: "events", name: "s", topic: nil,
                            payload: JobKeyRecord(key: "k\(seq)").encoded())
            }
            let old = RoutedKey(worker: "w", inboxEventID: "1-1")
            let recent = RoutedKey(worker: "w", inboxEventID: "1-2")
            let acked = RoutedKey(worker: "w", inboxEventID: "1-3")
            node.state.withLock { state in
                state.routed[old] = event(ageSeconds: 240, seq: 1)
                state.routed[recent] = event(ageSeconds: 1, seq: 2)
                state.routed[acked] = event(ageSeconds: 0, seq: 3)
            }
            await node.handleAck(from: "w", AckRecord(eventID: "1-3"))
            let left = node.state.withLock { Set($0.routed.keys) }
            #expect(left == [recent])
            try await node.shutdown()
        }
    }

    @Test("S-018 a dead node's inbox is removed by a peer")
    func deadNodeInbox() async throws {
        try await withPool { pool in
            let n1 = try await pool.start().node
            let running2 = try await pool.start()
            let n2 = running2.node
            _ = try await n1.addWorker(RecordingHandler())
            _ = try await n2.addWorker(RecordingHandler())
            try await n1.dispatch(key: "a")
            try await n2.dispatch(key: "b")
            #expect(try await pool.client.send("EXISTS", n2.inbox.key).int == 1)
            await running2.crash()
            let stale = nowNanos() - 3 * n1.options.workerTTL.nanoseconds
            try await n1.maps.nodeKeepAlive.setAndWait(n2.id, String(stale))
            try await eventually("N2's inbox is deleted", timeout: .seconds(5)) {
                try await pool.client.send("EXISTS", n2.inbox.key).int == 0
            }
            #expect(try await pool.client.send("EXISTS", n1.inbox.key).int == 1)
            try await eventually("N1 forgets N2") { n1.maps.nodeKeepAlive.get(n2.id) == nil }
            try await n1.shutdown()
        }
    }

    @Test("S-019 Shutdown stops every job")
    func shutdownStopsAll() async throws {
        try await withPool { pool in
            let hasher = FunctionHasher { key, _ in key.hasSuffix("1") || key.hasSuffix("2") ? 0 : 1 }
            let node = try await pool.start(testOptions(hasher: hasher)).node
            let h1 = RecordingHandler()
            let h2 = RecordingHandler()
            let w1 = try await node.addWorker(h1)
            let w2 = try await node.addWorker(h2)
            for key in ["job1", "job2", "job3", "job4"] { try await node.dispatch(key: key) }
            #expect(h1.runningKeys == ["job1", "job2"])
            #expect(h2.runningKeys == ["job3", "job4"])
            try await node.shutdown()
            #expect(Set(h1.stopped + h2.stopped) == ["job1", "job2", "job3", "job4"])
            #expect(w1.jobs.isEmpty && w2.jobs.isEmpty)
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("S-020 the node inbox exists while the node runs and is deleted on shutdown")
    func inboxLifecycle() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            _ = try await node.addWorker(RecordingHandler())
            try await node.dispatch(key: "job")
            #expect(try await pool.client.send("EXISTS", node.inbox.key).int == 1)
            try await node.shutdown()
            #expect(try await pool.client.send("EXISTS", node.inbox.key).int == 0)
        }
    }

    @Test("S-022 removing a worker from the maps keeps the payloads")
    func removalKeepsPayloads() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let worker = try await node.addWorker(RecordingHandler())
            try await node.dispatch(key: "job1", payload: bytes("one"))
            try await node.dispatch(key: "job2", payload: bytes("two"))
            // Its keep-alive loop would register it (and its jobs) again on its next beat.
            await worker.stopLoops()
            await node.removeWorkerEntries(worker.id)
            #expect(try await pool.client.send("HGET", node.maps.payloads.contentKey, "job1").bytes == bytes("one"))
            #expect(try await pool.client.send("HGET", node.maps.payloads.contentKey, "job2").bytes == bytes("two"))
            let owners = try await node.hashContent(node.maps.owners.contentKey)
            #expect(owners.isEmpty, "ownership entries left: \(owners.keys.sorted())")
        }
    }
}
