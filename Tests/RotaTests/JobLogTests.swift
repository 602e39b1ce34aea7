import Foundation
@testable import Rota
import RotaRedis
import Synchronization
import Testing

/// The pool's job log, as Redis holds it now (entries that do not decode fail the test).
func jobLog(_ node: Node, _ client: RedisClient) async throws -> [JobLogEntry] {
    let reply = try await client.send("XRANGE", node.jobLogKey, "-", "+").array ?? []
    return try reply.map { item in
        let fields = item.array?.last?.array ?? []
        guard let index = fields.firstIndex(where: { $0.string == "p" }), index + 1 < fields.count, let payload = fields[index + 1].bytes,
              fields.first?.string == "n", fields.count > 1, fields[1].string == JobLogEntry.eventName
        else { throw TestFailure("job log entry without n=e / p: \(item)") }
        return try JobLogEntry.decode(payload)
    }
}

/// The entries of one kind that name `job`.
func entries(_ log: [JobLogEntry], _ kind: JobLogEntry.Kind, job: String) -> [(entry: JobLogEntry, job: JobLogJob)] {
    log.filter { $0.kind == kind }.flatMap { entry in entry.jobs.filter { $0.job == job }.map { (entry, $0) } }
}

/// A handler whose stops can be made to fail or take time, and that records a timeline of
/// starts and finished stops shared with other handlers.
final class ControlledHandler: JobHandler {
    enum Event: Equatable { case started(String), stopped(String) }

    let recorder = RecordingHandler()
    let name: String
    let timeline: Timeline?
    let failStops = Mutex<Set<String>>([])
    let failRequeuedStarts = Mutex(false)
    let stopDuration: Duration

    init(name: String = "", timeline: Timeline? = nil, stopDuration: Duration = .zero) {
        self.name = name
        self.timeline = timeline
        self.stopDuration = stopDuration
    }

    func start(_ job: Job) async throws {
        if job.isRequeued, failRequeuedStarts.withLock({ $0 }) { throw TestFailure("cannot start \(job.key)") }
        try await recorder.start(job)
        timeline?.events.withLock { $0.append((name, .started(job.key), .now)) }
    }

    func stop(key: String) async throws {
        if failStops.withLock({ $0.contains(key) }) { throw TestFailure("\(key) refuses to stop") }
        // A job that takes a while to wind down (the handler's own behaviour, not a test wait).
        if stopDuration > .zero { try await Task.sleep(for: stopDuration) }
        try await recorder.stop(key: key)
        timeline?.events.withLock { $0.append((name, .stopped(key), .now)) }
    }
}

/// The process-wide timeline type, shared by handlers on several nodes.
final class Timeline: Sendable {
    let events = Mutex<[(name: String, event: ControlledHandler.Event, at: ContinuousClock.Instant)]>([])
}

@Suite("Pool: job log, confirmed stops, ended and given-up jobs, close ordering (B2)", .serialized, .timeLimit(.minutes(3)))
struct JobLogTests {
    @Test("the node name defaults to the host name, stable across restarts")
    func defaultName() {
        #expect(Node.Options().name == ProcessInfo.processInfo.hostName)
    }

    @Test("dispatch and a confirmed stop are in the job log with their origins; stopAndWait returns once the payload is gone")
    func dispatchAndStop() async throws {
        try await withPool { pool in
            var options = testOptions()
            options.name = "node-one"
            let node = try await pool.start(options).node
            let client = try await pool.start(testOptions(clientOnly: true)).node
            let handler = ControlledHandler()
            let worker = try await node.addWorker(handler)
            let origin = JobOrigin(actor: "alice@laptop", reason: "manual", round: "round-1")
            try await node.dispatch(key: "job", payload: bytes("p"), origin: origin)
            var log = try await jobLog(node, pool.client)
            let started = entries(log, .started, job: "job")
            #expect(started.count == 1)
            #expect(started.first?.entry.worker == worker.id)
            #expect(started.first?.entry.node == "node-one")
            #expect(started.first?.entry.nodeID == node.id)
            #expect(started.first?.job == JobLogJob(job: "job", actor: "alice@laptop", reason: "manual", round: "round-1", requeued: false))
            #expect(abs(started.first?.entry.at.timeIntervalSinceNow ?? 100) < 30)

            // From a client-only node: confirmed by the worker, and the payload is gone by then.
            let stopOrigin = JobOrigin(actor: "bob@host", reason: "removed-from-plan")
            let outcome = try await client.stopAndWait(key: "job", origin: stopOrigin)
            #expect(outcome == .stopped(worker: worker.id))
            #expect(try await pool.client.send("HEXISTS", node.maps.payloads.contentKey, "job").int == 0)
            #expect(try await pool.client.send("HEXISTS", node.maps.owners.contentKey, "job").int == 0)
            #expect(handler.recorder.stopped == ["job"])
            log = try await jobLog(node, pool.client)
            let stopped = entries(log, .stopped, job: "job")
            #expect(stopped.count == 1)
            #expect(stopped.first?.entry.worker == worker.id)
            #expect(stopped.first?.job == JobLogJob(job: "job", actor: "bob@host", reason: "removed-from-plan", requeued: false))

            // Stopping what does not exist: the routing node answers.
            #expect(try await client.stopAndWait(key: "no-such-job") == .notRunning)
            // A plain stop still works without anyone waiting.
            try await node.dispatch(key: "other")
            try await node.stop(key: "other")
            try await eventually("the other job stopped") { handler.recorder.stopped.contains("other") }
            // The client node first: running on, it would write its keep-alive after the shutdown.
            try await client.close()
            try await node.shutdown()
            let left = try await leftoverKeys(pool.client, pool: pool.pool)
            #expect(left == [])
        }
    }

    @Test("a repeated delivery of a running job is a confirmation, not a start: no second started entry")
    func confirmationNotLogged() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let handler = ControlledHandler()
            let worker = try await node.addWorker(handler)
            try await node.dispatch(key: "job", payload: bytes("p"))
            let again = JobRecord(key: "job", dispatcher: node.id, payload: bytes("p"), createdAt: Date(), requeued: true)
            try await worker.start(again)
            #expect(handler.recorder.started.count == 1)
            #expect(entries(try await jobLog(node, pool.client), .started, job: "job").count == 1)
            try await node.shutdown()
        }
    }

    @Test("a stop handler that throws: stopAndWait throws stopFailed, the job stays owned, the job log says stop-failed")
    func stopFailed() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let handler = ControlledHandler()
            let worker = try await node.addWorker(handler)
            try await node.dispatch(key: "stubborn", payload: bytes("p"))
            handler.failStops.withLock { $0 = ["stubborn"] }
            let error = await caught { _ = try await node.stopAndWait(key: "stubborn", origin: JobOrigin(actor: "me", reason: "manual")) } as? PoolError
            #expect(error?.code == .stopFailed)
            #expect(error?.message == "stubborn refuses to stop")
            #expect(try await pool.client.send("HGET", node.maps.owners.contentKey, "stubborn").string == worker.id)
            #expect(try await pool.client.send("HGET", node.maps.payloads.contentKey, "stubborn").bytes == bytes("p"))
            #expect(worker.jobs.map(\.key) == ["stubborn"])
            let failed = entries(try await jobLog(node, pool.client), .stopFailed, job: "stubborn")
            #expect(failed.count == 1)
            #expect(failed.first?.job.error == "stubborn refuses to stop")
            #expect(failed.first?.job.reason == "manual")
            handler.failStops.withLock { $0 = [] }
            #expect(try await node.stopAndWait(key: "stubborn") == .stopped(worker: worker.id))
            try await node.shutdown()
        }
    }

    @Test("a stop ends a job nobody owns; a late requeued start does not bring it back")
    func endedUnownedAndNoResurrection() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let handler = ControlledHandler()
            let worker = try await node.addWorker(handler)
            // A payload without an owner (a handoff whose start is still on its way, an orphan).
            try await node.maps.payloads.setAndWait("orphan", bytes("p"))
            let outcome = try await node.stopAndWait(key: "orphan", origin: JobOrigin(actor: "me", reason: "stop-list"))
            #expect(outcome == .endedUnowned)
            #expect(try await pool.client.send("HEXISTS", node.maps.payloads.contentKey, "orphan").int == 0)
            let ended = entries(try await jobLog(node, pool.client), .endedUnowned, job: "orphan")
            #expect(ended.count == 1)
            #expect(ended.first?.job.reason == "stop-list")
            #expect(ended.first?.entry.worker == "")

            // The handoff's start arrives after all: the pool refuses it and the worker stops its copy.
            let late = JobRecord(key: "orphan", dispatcher: node.id, payload: bytes("p"), createdAt: Date(), requeued: true)
            try await worker.start(late)
            #expect(handler.recorder.started.map(\.key) == ["orphan"])
            #expect(handler.recorder.stopped == ["orphan"])
            #expect(worker.jobs.isEmpty)
            #expect(try await pool.client.send("HEXISTS", node.maps.payloads.contentKey, "orphan").int == 0)
            #expect(try await pool.client.send("HEXISTS", node.maps.owners.contentKey, "orphan").int == 0)
            let log = try await jobLog(node, pool.client)
            #expect(entries(log, .started, job: "orphan").isEmpty)
            #expect(entries(log, .takenOver, job: "orphan").first?.job.reason == "ended")
            try await node.shutdown()
        }
    }

    @Test("a stop ends the job of a worker that stopped keeping alive")
    func endedWhenOwnerIsDead() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let handler = ControlledHandler()
            let worker = try await node.addWorker(handler)
            try await node.dispatch(key: "job", payload: bytes("p"))
            worker.suspendKeepAlive()
            try await eventually("the worker is no longer active") { !node.activeWorkers().contains(worker.id) }
            #expect(try await node.stopAndWait(key: "job") == .endedUnowned)
            #expect(try await pool.client.send("HEXISTS", node.maps.payloads.contentKey, "job").int == 0)
            #expect(entries(try await jobLog(node, pool.client), .endedUnowned, job: "job").count == 1)
            // The owner may come back: the tombstone tells it to stop its copy.
            #expect(try await pool.client.send("GET", node.endedKey("job")).string == worker.id)
        }
    }

    @Test("a job the pool ended while its worker looked dead stops at the worker's next keep-alive")
    func endedWhileAway() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let handler = ControlledHandler()
            let worker = try await node.addWorker(handler)
            try await node.dispatch(key: "job", payload: bytes("p"))
            // Without a tombstone a missing owner and payload prove nothing (Redis may have lost
            // its state): the job keeps running.
            _ = try await node.maps.owners.delete("job")
            _ = try await node.maps.payloads.delete("job")
            for round in 1...2 {
                let seen = try await pool.client.send("HGET", node.maps.workerKeepAlive.contentKey, worker.id).string
                try await eventually("keep-alive round \(round)") {
                    try await pool.client.send("HGET", node.maps.workerKeepAlive.contentKey, worker.id).string != seen
                }
            }
            #expect(handler.recorder.stopped.isEmpty)
            // What the routing node's end-unowned script leaves behind for a dead owner.
            try await pool.client.send("SET", node.endedKey("job"), worker.id, "PX", 60_000)
            try await eventually("the worker stopped its copy") { handler.recorder.stopped == ["job"] && worker.jobs.isEmpty }
            #expect(entries(try await jobLog(node, pool.client), .takenOver, job: "job").first?.job.reason == "ended")
            try await eventually("the tombstone is gone") { try await pool.client.send("EXISTS", node.endedKey("job")).int == 0 }
            try await node.shutdown()
        }
    }

    @Test("a requeued job that keeps failing to start is given up after maxStartFailures; a success resets the count")
    func givenUp() async throws {
        try await withPool { pool in
            let capture = LogCapture()
            var options = testOptions(logger: capture.logger)
            options.maxStartFailures = 3
            let node = try await pool.start(options).node
            let handler = ControlledHandler()
            handler.failRequeuedStarts.withLock { $0 = true }
            let worker = try await node.addWorker(handler)
            let failures = node.startFailuresKey
            func requeued(_ key: String) -> JobRecord {
                JobRecord(key: key, dispatcher: node.id, payload: bytes("p"), createdAt: Date(), requeued: true, origin: JobOrigin(actor: "n", reason: "worker-lost"))
            }
            try await node.maps.payloads.setAndWait("zombie", bytes("p"))
            try await node.maps.payloads.setAndWait("flaky", bytes("p"))
            // One failure, then a success: the count starts over.
            #expect(await caught { try await worker.start(requeued("flaky")) } != nil)
            #expect(try await pool.client.send("HGET", failures, "flaky").string == "1")
            handler.failRequeuedStarts.withLock { $0 = false }
            try await worker.start(requeued("flaky"))
            #expect(try await pool.client.send("HEXISTS", failures, "flaky").int == 0)
            handler.failRequeuedStarts.withLock { $0 = true }

            for attempt in 1...2 {
                #expect(await caught { try await worker.start(requeued("zombie")) } != nil)
                #expect(try await pool.client.send("HGET", failures, "zombie").string == String(attempt))
                #expect(try await pool.client.send("HEXISTS", node.maps.payloads.contentKey, "zombie").int == 1)
            }
            #expect(await caught { try await worker.start(requeued("zombie")) } != nil)
            #expect(try await pool.client.send("HEXISTS", node.maps.payloads.contentKey, "zombie").int == 0)
            #expect(try await pool.client.send("HEXISTS", failures, "zombie").int == 0)
            let log = try await jobLog(node, pool.client)
            #expect(entries(log, .startFailed, job: "zombie").map(\.job.failures) == [1, 2])
            let gaveUp = entries(log, .givenUp, job: "zombie")
            #expect(gaveUp.count == 1)
            #expect(gaveUp.first?.job.failures == 3)
            #expect(gaveUp.first?.job.error == "cannot start zombie")
            #expect(capture.contains(level: .error, "giving up job zombie"))
            #expect(entries(log, .started, job: "flaky").first?.job.reason == "worker-lost")
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("a late requeued start that replaces another owner ends that owner's run: lost, reason displaced, at its last keep-alive")
    func displacedOwner() async throws {
        try await withPool { pool in
            let node = try await pool.start(testOptions()).node
            let worker = try await node.addWorker(ControlledHandler())
            // A job owned by a worker that died 30 s ago (its keep-alive is still in Redis).
            let seen = Int64(Date().timeIntervalSince1970 * 1000 - 30_000) * 1_000_000
            try await node.maps.workerKeepAlive.setAndWait("ghost", String(seen))
            try await node.maps.payloads.setAndWait("late", bytes("p"))
            try await node.maps.owners.setAndWait("late", bytes("ghost"))
            // Another owned by a worker a peer is cleaning up: its cleaner logs `lost`, not the start.
            try await node.maps.payloads.setAndWait("recovered", bytes("p"))
            try await node.maps.owners.setAndWait("recovered", bytes("ghost2"))
            try await node.maps.cleanup.setAndWait("ghost2", String(nowNanos()))
            try await worker.start(JobRecord(key: "recovered", dispatcher: node.id, payload: bytes("p"), createdAt: Date(), requeued: true,
                origin: JobOrigin(actor: "n", reason: "worker-lost")))
            try await worker.start(JobRecord(key: "late", dispatcher: node.id, payload: bytes("p"), createdAt: Date(), requeued: true,
                origin: JobOrigin(actor: "n", reason: "rebalance")))
            #expect(try await pool.client.send("HGET", node.maps.owners.contentKey, "late").string == worker.id)
            let log = try await jobLog(node, pool.client)
            let lost = try #require(entries(log, .lost, job: "late").first)
            #expect(lost.entry.worker == "ghost" && lost.job.reason == "displaced" && lost.job.requeued)
            #expect(lost.entry.lastSeen == Date(timeIntervalSince1970: Double(seen / 1_000_000) / 1000))
            // A repeated start on the same worker displaces nobody.
            try await worker.start(JobRecord(key: "late", dispatcher: node.id, payload: bytes("p"), createdAt: Date(), requeued: true,
                origin: JobOrigin(actor: "n", reason: "rebalance")))
            #expect(entries(try await jobLog(node, pool.client), .lost, job: "late").count == 1)
            #expect(entries(log, .lost, job: "recovered").isEmpty && !entries(log, .started, job: "recovered").isEmpty)
            try await node.shutdown()
        }
    }

    @Test("a job-log entry appended by a task being cancelled is still written (a worker evicted while stopping a job)")
    func appendSurvivesCancellation() async throws {
        try await withPool { pool in
            let node = try await pool.start(testOptions()).node
            let task = Task {
                while !Task.isCancelled { await Task.yield() }
                await node.appendJobLog(.takenOver, worker: "w", jobs: [JobLogJSON.job("k", origin: JobOrigin(actor: "n", reason: "taken-over"))])
            }
            task.cancel()
            await task.value
            #expect(entries(try await jobLog(node, pool.client), .takenOver, job: "k").count == 1)
            try await node.shutdown()
        }
    }

    @Test("a dead worker's runs are logged lost even when their requeue fails (a cleaner may die right after requeueing)")
    func lostLoggedBeforeRequeue() async throws {
        try await withPool { pool in
            let node = try await pool.start(testOptions()).node
            let seen = Int64(Date().timeIntervalSince1970 * 1000 - 30_000) * 1_000_000
            try await node.maps.workerKeepAlive.setAndWait("ghost", String(seen))
            try await node.maps.payloads.setAndWait("orphaned", bytes("p"))
            try await node.maps.owners.setAndWait("orphaned", bytes("ghost"))
            // Requeues fail: the pool stream is not a stream for a moment.
            _ = try await pool.client.send("DEL", node.poolStream.key)
            _ = try await pool.client.send("SET", node.poolStream.key, "not a stream")
            await node.cleanUp(worker: "ghost", keys: ["orphaned"])
            _ = try await pool.client.send("DEL", node.poolStream.key)
            let lost = entries(try await jobLog(node, pool.client), .lost, job: "orphaned")
            #expect(lost.count == 1 && lost.first?.entry.worker == "ghost" && lost.first?.job.reason == "worker-lost")
            try await node.shutdown()
        }
    }

    @Test("a dead worker's jobs: lost, then started on another worker")
    func lostAndRestarted() async throws {
        try await withPool { pool in
            var optionsA = testOptions(hasher: FixedHasher(bucket: 0))
            optionsA.name = "node-a"
            optionsA.keepAliveInterval = .milliseconds(50)
            var optionsB = testOptions(hasher: FixedHasher(bucket: 0))
            optionsB.name = "node-b"
            let runningA = try await pool.start(optionsA)
            let a = runningA.node
            let b = try await pool.start(optionsB).node
            let workerA = try await a.addWorker(ControlledHandler())
            try await eventually("B sees A's worker") { b.activeWorkers() == [workerA.id] }
            let handlerB = ControlledHandler()
            let workerB = try await b.addWorker(handlerB)
            try await b.dispatch(key: "job", payload: bytes("p"))
            #expect(workerA.jobs.map(\.key) == ["job"])
            // Crashing before the routing node acknowledged the start would make this a
            // redelivery of the dispatch, not a recovery.
            try await eventually("the start event is acknowledged") {
                try await pool.client.send("XPENDING", b.poolStream.key, "events").array?.first?.int == 0
            }
            let crashedAt = Date()
            await runningA.crash()
            try await eventually("B's worker runs the job") { handlerB.recorder.runningKeys == ["job"] }
            try await eventually("the job log has lost and started") {
                let log = try await jobLog(b, pool.client)
                return !entries(log, .lost, job: "job").isEmpty && entries(log, .started, job: "job").count == 2
            }
            let log = try await jobLog(b, pool.client)
            let lost = try #require(entries(log, .lost, job: "job").first)
            #expect(lost.entry.worker == workerA.id)
            #expect(lost.entry.node == "node-b")
            #expect(lost.job.reason == "worker-lost")
            // Its run ends at its last keep-alive (every 50 ms), not when B found it dead (a TTL later).
            let lastSeen = try #require(lost.entry.lastSeen)
            #expect(lastSeen.timeIntervalSince(crashedAt) <= 0.05 && lastSeen.timeIntervalSince(crashedAt) >= -0.3)
            #expect(lost.entry.at.timeIntervalSince(lastSeen) >= 0.3)
            let restarted = try #require(entries(log, .started, job: "job").last)
            #expect(restarted.entry.worker == workerB.id)
            // Logged before the requeue (a cleaner killed after requeueing must not leave the run open).
            let lostIndex = try #require(log.firstIndex { $0.kind == .lost })
            let restartIndex = try #require(log.lastIndex { $0.kind == .started && $0.worker == workerB.id })
            #expect(lostIndex < restartIndex)
            #expect(restarted.job.requeued)
            #expect(restarted.job.reason == "worker-lost")
            try await b.shutdown()
        }
    }

    @Test("closing a node stops each job before another worker starts it (no overlap in a rolling restart)")
    func closeStopsBeforeRequeue() async throws {
        try await withPool { pool in
            let timeline = Timeline()
            let a = try await pool.start(testOptions(hasher: FixedHasher(bucket: 0))).node
            let b = try await pool.start(testOptions(hasher: FixedHasher(bucket: 0))).node
            // A's worker is older: bucket 0 while it lives. Its jobs take a while to stop.
            let handlerA = ControlledHandler(name: "a", timeline: timeline, stopDuration: .milliseconds(300))
            let workerA = try await a.addWorker(handlerA)
            try await eventually("B sees A's worker") { b.activeWorkers() == [workerA.id] }
            let handlerB = ControlledHandler(name: "b", timeline: timeline)
            _ = try await b.addWorker(handlerB)
            // Three jobs of 300 ms each: stopping them all takes longer than two worker TTLs, and
            // peers must not take the closing worker for dead meanwhile.
            let keys: Set = ["j1", "j2", "j3"]
            for key in keys.sorted() { try await b.dispatch(key: key, payload: bytes(key)) }
            #expect(handlerA.recorder.runningKeys == keys)
            // Closing before the routing node acknowledged a start would let that start be
            // delivered again to B (a redelivery, another matter than the handoff tested here).
            try await eventually("the start events are acknowledged") {
                try await pool.client.send("XPENDING", b.poolStream.key, "events").array?.first?.int == 0
            }
            try await a.close()
            try await eventually("B runs every job") { handlerB.recorder.runningKeys == keys }
            let events = timeline.events.withLock { $0 }
            for key in keys.sorted() {
                let stoppedOnA = try #require(events.first { $0.name == "a" && $0.event == .stopped(key) })
                let startedOnB = try #require(events.first { $0.name == "b" && $0.event == .started(key) })
                let history = try await jobLog(b, pool.client).filter { $0.jobs.contains { $0.job == key } }
                #expect(startedOnB.at > stoppedOnA.at, "\(key) started on B before A's copy stopped: \(history)")
            }
            let log = try await jobLog(b, pool.client)
            #expect(entries(log, .released, job: "j1").first?.job.reason == "worker-closing")
            #expect(entries(log, .started, job: "j1").last?.job.reason == "worker-closing")
            try await b.shutdown()
        }
    }

    @Test("Schedule.apply: stops wait for the worker; a failed stop stays in the bookkeeping; a restart whose old copy does not stop fails")
    func scheduleStops() async throws {
        try await withPool { pool in
            var options = testOptions()
            options.name = "planner"
            let node = try await pool.start(options).node
            let handler = ControlledHandler()
            _ = try await node.addWorker(handler)
            let producer = ScriptedProducer(name: "plan") { call, _ in
                switch call {
                case 1: return JobPlan(start: [PlannedJob(key: "a", reason: "window-opened"), PlannedJob(key: "stubborn", payload: bytes("v1"))], round: "r1")
                case 2: return JobPlan(start: [], stopAll: true, stopAllReason: "window-closed", round: "r2")
                case 3: return JobPlan(start: [PlannedJob(key: "stubborn", payload: bytes("v2"), reason: "payload-changed")], round: "r3")
                case 4: return JobPlan(start: [], stopAll: true, round: "r4")
                default: return JobPlan()
                }
            }
            let schedule = try await node.schedule(producer, interval: .milliseconds(400))
            var reports = schedule.events.makeAsyncIterator()
            func nextReport() async throws -> PlanReport {
                while let event = await reports.next() {
                    if case .applied(let report) = event { return report }
                }
                throw TestFailure("the schedule ended")
            }
            let first = try await nextReport()
            #expect(first.count(.started) == 2)
            handler.failStops.withLock { $0 = ["stubborn"] }

            let second = try await nextReport()
            #expect(second.outcomes.first { $0.key == "a" }?.outcome == .stopped)
            #expect(second.outcomes.first { $0.key == "stubborn" }?.outcome == .stopFailed("stubborn refuses to stop"))
            #expect(second.failures.map(\.key) == ["stubborn"])
            #expect(try await node.scheduledJobs(producer: "plan") == ["stubborn"])
            #expect(try await pool.client.send("HEXISTS", node.maps.payloads.contentKey, "a").int == 0)

            let third = try await nextReport()
            let restart = third.outcomes.first { $0.key == "stubborn" }?.outcome
            #expect(restart == .failed("restart: the old copy did not stop: stubborn refuses to stop"))
            #expect(handler.recorder.started.filter { $0.key == "stubborn" }.count == 1)
            #expect(handler.recorder.running["stubborn"] == bytes("v1"))
            handler.failStops.withLock { $0 = [] }

            let fourth = try await nextReport()
            #expect(fourth.outcomes.first { $0.key == "stubborn" }?.outcome == .stopped)
            #expect(try await node.scheduledJobs(producer: "plan") == [])

            let log = try await jobLog(node, pool.client)
            #expect(entries(log, .started, job: "a").first?.job == JobLogJob(job: "a", actor: "planner", reason: "window-opened", round: "r1"))
            #expect(entries(log, .started, job: "stubborn").first?.job.reason == "planned")
            #expect(entries(log, .stopped, job: "a").first?.job == JobLogJob(job: "a", actor: "planner", reason: "window-closed", round: "r2"))
            #expect(entries(log, .stopFailed, job: "stubborn").map(\.job.round) == ["r2", "r3"])
            #expect(entries(log, .stopped, job: "stubborn").first?.job.round == "r4")
            await schedule.close()
            try await node.shutdown()
        }
    }

    // MARK: Formats

    @Test("job-log entries decode exactly; malformed ones are errors, never traps")
    func decoding() throws {
        let valid = #"{"v":1,"kind":"given-up","worker":"w","node":"n","node_id":"id","at":1733600000123,"jobs":[{"job":"k","actor":"a","reason":"r","round":"x","requeued":true,"error":"e","failures":5}]}"#
        let entry = try JobLogEntry.decode(bytes(valid))
        #expect(entry == JobLogEntry(
            kind: .givenUp, worker: "w", node: "n", nodeID: "id", at: Date(timeIntervalSince1970: 1_733_600_000.123),
            jobs: [JobLogJob(job: "k", actor: "a", reason: "r", round: "x", requeued: true, error: "e", failures: 5)]
        ))
        let long = String(repeating: "x", count: 1025)
        let job = #"{"job":"k","requeued":false}"#
        func make(kind: String = "started", at: String = "1733600000123", worker: String = "w", jobs: String? = nil, v: String = "1") -> String {
            let jobs = jobs ?? "[" + job + "]"
            return #"{"v":\#(v),"kind":"\#(kind)","worker":"\#(worker)","node":"n","node_id":"i","at":\#(at),"jobs":\#(jobs)}"#
        }
        let malformed: [(String, String)] = [
            ("not JSON", "garbage"),
            ("empty", ""),
            ("unknown kind", make(kind: "exploded")),
            ("other version", make(v: "2")),
            ("before 2000", make(at: "946684799999")),
            ("after 2200", make(at: "7258118400001")),
            ("negative time", make(at: "-1")),
            ("time beyond Int64", make(at: "99999999999999999999999")),
            ("fractional time", make(at: "1733600000123.5")),
            ("long worker", make(worker: long)),
            ("long job key", make(jobs: #"[{"job":"\#(long)","requeued":false}]"#)),
            ("long error", make(jobs: #"[{"job":"k","requeued":false,"error":"\#(long)"}]"#)),
            ("negative failures", make(jobs: #"[{"job":"k","requeued":false,"failures":-1}]"#)),
            ("jobs not an array", make(jobs: "{}")),
            ("job without requeued", make(jobs: #"[{"job":"k"}]"#)),
            ("too many jobs", make(jobs: "[" + Array(repeating: job, count: 10_001).joined(separator: ",") + "]")),
            ("missing field", #"{"v":1,"kind":"started"}"#),
            ("last seen after the entry", make(at: #"1733600000123,"last_seen":1733600000124"#)),
            ("last seen before 2000", make(at: #"1733600000123,"last_seen":946684799999"#)),
            ("last seen not a number", make(at: #"1733600000123,"last_seen":"x""#)),
        ]
        for (name, text) in malformed {
            #expect(throws: PoolError.self, "\(name)") { try JobLogEntry.decode(bytes(text)) }
        }
        #expect(throws: PoolError.self) { try JobLogEntry.decode([0xFF, 0xFE, 0x00]) }
        #expect(try JobLogEntry.decode(bytes(make(kind: "lost", at: #"1733600000123,"last_seen":1733600000000"#))).lastSeen
            == Date(timeIntervalSince1970: 1_733_600_000))
        #expect(try JobLogEntry.decode(bytes(make(kind: "lost"))).lastSeen == nil)
        // What the pool writes decodes, including text that needs escaping.
        let written = JobLogJSON.entry(
            #"{"v":1,"kind":"stopped","worker":"w","node":"# + JobLogJSON.quote("n\"\u{1}") + #","node_id":"i","at":1733600000000,"jobs":["#,
            [JobLogJSON.job("k\"\\\n\u{7}é", origin: JobOrigin(actor: "a", reason: "r"), error: "line\nbreak")]
        )
        let decoded = try JobLogEntry.decode(bytes(written))
        #expect(decoded.jobs == [JobLogJob(job: "k\"\\\n\u{7}é", actor: "a", reason: "r", error: "line\nbreak")])
        #expect(JobLogJSON.quote("\u{1}\"") == #""\u0001\"""#)
        #expect(JobLogJSON.clip(long).utf8.count <= JobLogEntry.maxStringBytes)
    }

    @Test("job and stop records carry origins; old records still decode; over-long origins are malformed")
    func records() throws {
        let date = Date(timeIntervalSince1970: 1_700_000_000)
        let origin = JobOrigin(actor: "alice@host", reason: "manual", round: "r")
        let job = JobRecord(key: "k", dispatcher: "d", payload: [1], createdAt: date, requeued: true, origin: origin)
        #expect(JobRecord(decoding: job.encoded()) == job)
        var noRound = job
        noRound.origin = JobOrigin(actor: "a", reason: "b")
        #expect(JobRecord(decoding: noRound.encoded())?.origin == JobOrigin(actor: "a", reason: "b"))
        var old = job
        old.origin = nil
        #expect(JobRecord(decoding: old.encoded()) == old)
        var long = job
        long.origin = JobOrigin(actor: "a", reason: String(repeating: "r", count: 65))
        #expect(JobRecord(decoding: long.encoded()) == nil)

        let stop = StopRecord(key: "k", requester: "node", origin: origin)
        #expect(StopRecord(decoding: stop.encoded()) == stop)
        #expect(JobKeyRecord.key(fromEventPayload: stop.encoded()) == "k")
        #expect(StopRecord(decoding: JobKeyRecord(key: "k").encoded()) == StopRecord(key: "k"))
        #expect(StopRecord(decoding: StopRecord(key: "k").encoded()) == StopRecord(key: "k"))
        #expect(StopRecord(decoding: StopRecord(key: "k", origin: JobOrigin(actor: String(repeating: "a", count: 201), reason: "r")).encoded()) == nil)
        #expect(StopRecord(decoding: stop.encoded() + [0]) == nil)
        #expect(StopRecord(decoding: Array(stop.encoded().dropLast())) == nil)

        let result = StopResultRecord(eventID: "1-0", outcome: .failed, detail: "boom")
        #expect(StopResultRecord(decoding: result.encoded()) == result)
        #expect(StopResultRecord(decoding: Array(result.encoded().dropLast())) == nil)
        var bad = result.encoded()
        bad[7] = 9
        #expect(StopResultRecord(decoding: bad) == nil)
    }

    @Test("origins that do not fit the records are refused before anything is sent")
    func originValidated() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let tooLong = JobOrigin(actor: String(repeating: "a", count: 201), reason: "manual")
            #expect((await caught { try await node.dispatch(key: "k", origin: tooLong) } as? PoolError)?.code == .invalidArgument)
            #expect((await caught { _ = try await node.stopAndWait(key: "k", origin: tooLong) } as? PoolError)?.code == .invalidArgument)
            try await node.shutdown()
        }
    }
}
