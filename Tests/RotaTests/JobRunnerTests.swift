import Foundation
@testable import Rota
import RotaRedis
import Synchronization
import Testing

/// A runner whose jobs do what their payload says, recording what happened in one timeline
/// shared by every worker that uses it:
/// - `return`: returns at once; `throw:<text>`: throws `<text>`;
/// - `stubborn`: ignores cancellation until ``letStubbornEnd()``;
/// - anything else: records notifications until cancelled (then throws `CancellationError`) or
///   until the notification `end` (then returns).
///
/// Validation refuses `invalid:<text>` with `<text>`.
final class ScriptedRunner: JobRunner {
    enum Event: Equatable, Sendable {
        case started(job: String, payload: String, worker: String)
        case ended(job: String, worker: String, cancelled: Bool)
        case note(job: String, text: String)
    }

    let events = Mutex<[Event]>([])
    private let stubbornRelease = Latch()

    func validate(_ job: Job) throws {
        let command = text(job.payload) ?? ""
        if command.hasPrefix("invalid:") { throw TestFailure(String(command.dropFirst("invalid:".count))) }
    }

    func run(_ job: Job, context: JobContext) async throws {
        let command = text(job.payload) ?? ""
        record(.started(job: job.key, payload: command, worker: context.workerID))
        defer { record(.ended(job: job.key, worker: context.workerID, cancelled: Task.isCancelled)) }
        switch command {
        case "return":
            return
        case _ where command.hasPrefix("throw:"):
            throw TestFailure(String(command.dropFirst("throw:".count)))
        case "stubborn":
            // Not cancellation-aware on purpose: the job overstays its grace period.
            await stubbornRelease.settle()
        default:
            // Iteration ends when the task is cancelled (a stop) or the stream finishes.
            for await note in context.notifications {
                if note == bytes("end") { return }
                record(.note(job: job.key, text: text(note) ?? ""))
            }
            try Task.checkCancellation()
        }
    }

    func letStubbornEnd() { stubbornRelease.open() }

    private func record(_ event: Event) { events.withLock { $0.append(event) } }

    var timeline: [Event] { events.withLock { $0 } }

    func started(_ job: String) -> [Event] { timeline.filter { if case .started(job, _, _) = $0 { true } else { false } } }

    func ended(_ job: String) -> [Event] { timeline.filter { if case .ended(job, _, _) = $0 { true } else { false } } }

    func notes(_ job: String) -> [String] {
        timeline.compactMap { if case .note(job, let text) = $0 { text } else { nil } }
    }

    /// Where `event` stands in the timeline, if it happened.
    func index(of event: Event) -> Int? { timeline.firstIndex(of: event) }
}

/// Neither a payload nor an owner in Redis: the job left the pool.
func expectGone(_ key: String, _ node: Node, _ pool: PoolHarness, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    #expect(try await pool.client.send("HEXISTS", node.maps.payloads.contentKey, key).int == 0, sourceLocation: sourceLocation)
    #expect(try await pool.client.send("HEXISTS", node.maps.owners.contentKey, key).int == 0, sourceLocation: sourceLocation)
}

/// Waits until `node`'s replica names `worker` as the job's owner: stops and notifications are
/// routed by it, and one routed before it shows the owner waits an ack grace period (out of order).
func awaitOwner(_ key: String, _ worker: Worker, on node: Node) async throws {
    try await eventually("\(key) is owned by \(worker.id) in the replica") { node.maps.owners.string(key) == worker.id }
}

@Suite("Pool: JobRunner jobs are child tasks of their worker (B3)", .serialized, .timeLimit(.minutes(3)))
struct JobRunnerTests {
    @Test("a dispatch runs the job's task; a confirmed stop cancels it, logs stopped and the job leaves the pool")
    func dispatchAndStop() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let runner = ScriptedRunner()
            let worker = try await node.addWorker(runner)
            #expect(try await node.dispatch(key: "job", payload: bytes("wait")) == .started)
            try await awaitOwner("job", worker, on: node)
            try await eventually("the job's task runs") { runner.started("job") == [.started(job: "job", payload: "wait", worker: worker.id)] }
            let origin = JobOrigin(actor: "alice@laptop", reason: "manual")
            #expect(try await node.stopAndWait(key: "job", origin: origin) == .stopped(worker: worker.id))
            // The stop waited for the task to end.
            #expect(runner.ended("job") == [.ended(job: "job", worker: worker.id, cancelled: true)])
            let log = try await jobLog(node, pool.client)
            #expect(entries(log, .stopped, job: "job").map(\.job) == [JobLogJob(job: "job", actor: "alice@laptop", reason: "manual")])
            #expect(entries(log, .failed, job: "job").isEmpty)
            #expect(try await node.jobKeys().isEmpty)
            #expect(try await node.jobPayload("job") == nil)
            #expect(worker.jobs.isEmpty)
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test(
        "a job that returns is finished, one that throws is failed with the error's text: logged by the pool itself, gone from the pool",
        arguments: [("return", JobLogEntry.Kind.finished, nil), ("throw:disk full", .failed, "disk full")] as [(String, JobLogEntry.Kind, String?)]
    )
    func endsByItself(command: String, kind: JobLogEntry.Kind, error: String?) async throws {
        try await withPool { pool in
            var options = testOptions()
            options.name = "node-one"
            let node = try await pool.start(options).node
            let runner = ScriptedRunner()
            let worker = try await node.addWorker(runner)
            try await node.dispatch(key: "job", payload: bytes(command))
            try await eventually("the end is logged") { !entries(try await jobLog(node, pool.client), kind, job: "job").isEmpty }
            let log = try await jobLog(node, pool.client)
            let ended = entries(log, kind, job: "job")
            #expect(ended.map(\.job) == [JobLogJob(job: "job", actor: "node-one", reason: kind.rawValue, error: error)])
            #expect(ended.first?.entry.worker == worker.id)
            #expect(entries(log, .stopped, job: "job").isEmpty)
            try await expectGone("job", node, pool)
            try await eventually("the replicas no longer list it") { try await node.jobKeys().isEmpty && node.maps.payloads.get("job") == nil }
            #expect(try await node.jobPayload("job") == nil)
            #expect(worker.jobs.isEmpty)
            // The key is free again.
            try await node.dispatch(key: "job", payload: bytes("wait"))
            try await eventually("the second run started") { runner.started("job").count == 2 }
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("validate throwing fails the dispatch with its text; the job never runs")
    func validationRefuses() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let runner = ScriptedRunner()
            _ = try await node.addWorker(runner)
            let error = await caught { try await node.dispatch(key: "job", payload: bytes("invalid:no such program")) } as? PoolError
            #expect(error?.code == .startFailed)
            #expect(error?.message == "no such program")
            #expect(runner.timeline.isEmpty)
            #expect(try await pool.client.send("HEXISTS", node.maps.payloads.contentKey, "job").int == 0)
            try await node.shutdown()
        }
    }

    @Test("notifications reach the job's context in order")
    func notificationsInOrder() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let runner = ScriptedRunner()
            let worker = try await node.addWorker(runner)
            try await node.dispatch(key: "job", payload: bytes("listen"))
            try await awaitOwner("job", worker, on: node)
            let sent = (1...20).map { "note-\($0)" }
            for note in sent { try await node.notify(key: "job", payload: bytes(note)) }
            try await eventually("every notification arrived") { runner.notes("job").count == sent.count }
            #expect(runner.notes("job") == sent)
            try await node.shutdown()
        }
    }

    @Test("a job that ignores cancellation past its grace period: stop-failed, the job stays owned, its late end is logged stopped")
    func graceExceeded() async throws {
        try await withPool { pool in
            var options = testOptions()
            options.jobStopGracePeriod = .milliseconds(300)
            // The stop takes the grace period: no redelivery of the stop event meanwhile.
            options.ackGracePeriod = .seconds(3)
            let node = try await pool.start(options).node
            let runner = ScriptedRunner()
            let worker = try await node.addWorker(runner)
            try await node.dispatch(key: "job", payload: bytes("stubborn"))
            try await awaitOwner("job", worker, on: node)
            try await eventually("the job runs") { runner.started("job").count == 1 }
            let origin = JobOrigin(actor: "alice@laptop", reason: "manual")
            let error = await caught { _ = try await node.stopAndWait(key: "job", origin: origin) } as? PoolError
            #expect(error?.code == .stopFailed)
            #expect(error?.message.contains("stop grace period") == true)
            #expect(try await pool.client.send("HGET", node.maps.owners.contentKey, "job").string == worker.id)
            #expect(try await node.jobPayload("job") == bytes("stubborn"))
            #expect(worker.jobs.map(\.key) == ["job"])
            var log = try await jobLog(node, pool.client)
            #expect(entries(log, .stopFailed, job: "job").count == 1)
            #expect(entries(log, .stopped, job: "job").isEmpty)
            runner.letStubbornEnd()
            try await eventually("the late end is logged as the stop") { !entries(try await jobLog(node, pool.client), .stopped, job: "job").isEmpty }
            log = try await jobLog(node, pool.client)
            #expect(entries(log, .stopped, job: "job").map(\.job) == [JobLogJob(job: "job", actor: "alice@laptop", reason: "manual")])
            #expect(entries(log, .finished, job: "job").isEmpty)
            try await expectGone("job", node, pool)
            #expect(worker.jobs.isEmpty)
            try await node.shutdown()
        }
    }

    @Test("a rebalance whose stop outlives the grace period keeps the job here, and moves it once it ends")
    func lateEndCompletesHandoff() async throws {
        try await withPool { pool in
            // The newest worker is every job's target.
            var options = testOptions(hasher: FunctionHasher { _, buckets in buckets - 1 })
            options.jobStopGracePeriod = .milliseconds(300)
            let node = try await pool.start(options).node
            let runner = ScriptedRunner()
            let first = try await node.addWorker(runner)
            try await node.dispatch(key: "job", payload: bytes("stubborn"))
            let second = try await node.addWorker(runner)
            try await eventually("the handoff's stop failed") { !entries(try await jobLog(node, pool.client), .stopFailed, job: "job").isEmpty }
            #expect(first.jobs.map(\.key) == ["job"])
            #expect(entries(try await jobLog(node, pool.client), .released, job: "job").isEmpty)
            runner.letStubbornEnd()
            // Started again on the other worker; let go already, it then returns at once.
            try await eventually("the job ran on the other worker") {
                runner.started("job").contains(.started(job: "job", payload: "stubborn", worker: second.id))
            }
            try await eventually("and finished there") { !entries(try await jobLog(node, pool.client), .finished, job: "job").isEmpty }
            let log = try await jobLog(node, pool.client)
            #expect(entries(log, .stopFailed, job: "job").map(\.job.reason) == ["rebalance"])
            #expect(entries(log, .released, job: "job").map(\.entry.worker) == [first.id])
            #expect(entries(log, .started, job: "job").map(\.entry.worker) == [first.id, second.id])
            #expect(entries(log, .finished, job: "job").map(\.entry.worker) == [second.id])
            #expect(entries(log, .stopped, job: "job").isEmpty)
            try await node.shutdown()
        }
    }

    @Test("a start with a new payload for a running job ends the old run before the new one starts")
    func restartWithNewPayload() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let runner = ScriptedRunner()
            let worker = try await node.addWorker(runner)
            try await node.dispatch(key: "job", payload: bytes("first"))
            try await awaitOwner("job", worker, on: node)
            try await eventually("the first run started") { runner.started("job").count == 1 }
            let restart = JobRecord(key: "job", dispatcher: node.id, payload: bytes("second"), createdAt: Date(), requeued: true)
            try await worker.start(restart)
            try await eventually("the second run started") { runner.started("job").count == 2 }
            let oldEnd = runner.index(of: .ended(job: "job", worker: worker.id, cancelled: true))
            let newStart = runner.index(of: .started(job: "job", payload: "second", worker: worker.id))
            #expect(oldEnd != nil && newStart != nil && (oldEnd ?? .max) < (newStart ?? .min))
            #expect(worker.jobs.map(\.payload) == [bytes("second")])
            // The old run's end is the restart's doing: nothing recorded it.
            let log = try await jobLog(node, pool.client)
            for kind in [JobLogEntry.Kind.stopped, .finished, .failed] { #expect(entries(log, kind, job: "job").isEmpty) }
            // The new run is the one a stop reaches.
            #expect(try await node.stopAndWait(key: "job") == .stopped(worker: worker.id))
            #expect(runner.ended("job").count == 2)
            try await node.shutdown()
        }
    }

    @Test("a closing worker hands its runner jobs over: each task is cancelled here before it starts on the other worker")
    func closeHandsOff() async throws {
        try await withPool { pool in
            // Every job goes to the oldest active worker: first the closing one, then the other.
            let options = testOptions(hasher: FixedHasher(bucket: 0))
            let leaving = try await pool.start(options).node
            let staying = try await pool.start(options).node
            let runner = ScriptedRunner()
            let first = try await leaving.addWorker(runner)
            let keys = ["a", "b", "c"]
            for key in keys { try await leaving.dispatch(key: key, payload: bytes("wait")) }
            #expect(first.jobs.map(\.key) == keys)
            let second = try await staying.addWorker(runner)
            // Close stops the worker's loops before it hands the jobs off: they run on meanwhile.
            await first.stopLoops()
            for key in keys { try await first.executor.notify(key: key, payload: bytes("still running")) }
            try await eventually("the jobs still run once the loops stopped") { keys.allSatisfy { runner.notes($0) == ["still running"] } }
            try await leaving.close()
            try await eventually("the other worker runs every job") { Set(second.jobs.map(\.key)) == Set(keys) }
            try await eventually("every task started there") { keys.allSatisfy { runner.started($0).count == 2 } }
            for key in keys {
                let cancelled = runner.index(of: .ended(job: key, worker: first.id, cancelled: true))
                let restarted = runner.index(of: .started(job: key, payload: "wait", worker: second.id))
                #expect(cancelled != nil && restarted != nil && (cancelled ?? .max) < (restarted ?? .min), "job \(key)")
            }
            let log = try await jobLog(staying, pool.client)
            for key in keys {
                #expect(entries(log, .released, job: key).map(\.entry.worker) == [first.id])
                #expect(entries(log, .started, job: key).map(\.entry.worker) == [first.id, second.id])
                #expect(entries(log, .stopped, job: key).isEmpty)
            }
            try await staying.shutdown()
        }
    }

    @Test("removing a runner worker hands its jobs over and ends its job group while the node runs on")
    func removeWorkerEndsJobGroup() async throws {
        try await withPool { pool in
            let node = try await pool.start(testOptions(hasher: FixedHasher(bucket: 0))).node
            let runner = ScriptedRunner()
            let first = try await node.addWorker(runner)
            let second = try await node.addWorker(runner)
            for key in ["a", "b"] { try await node.dispatch(key: key, payload: bytes("wait")) }
            #expect(first.jobs.map(\.key) == ["a", "b"])
            await node.removeWorker(first)
            // removeWorker returns once the worker's job group has ended, not at the node's end.
            #expect(first.jobsDone.isFired)
            #expect(runner.ended("a") == [.ended(job: "a", worker: first.id, cancelled: true)])
            try await eventually("the other worker runs both jobs") { second.jobs.map(\.key) == ["a", "b"] }
            #expect(!node.isClosed)
            try await node.shutdown()
        }
    }

    @Test("a job that ends by itself after another worker took it over leaves the pool's copy alone")
    func endAfterTakeover() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let runner = ScriptedRunner()
            let worker = try await node.addWorker(runner)
            // Its keep-alive would stop the taken-over copy first: this is about the job's own end.
            worker.suspendKeepAlive()
            try await node.dispatch(key: "job", payload: bytes("wait"))
            try await eventually("the job runs") { runner.started("job").count == 1 }
            // As if peers had found the worker dead and the job now ran elsewhere.
            try await node.maps.owners.setAndWait("job", "another-worker")
            try await worker.executor.notify(key: "job", payload: bytes("end"))
            try await eventually("the worker let the job go") { worker.jobs.isEmpty }
            // Recorded under the worker's lock, like every other job event: done once it is free.
            await worker.serial.withLock {}
            #expect(try await pool.client.send("HGET", node.maps.payloads.contentKey, "job").bytes == bytes("wait"))
            #expect(try await pool.client.send("HGET", node.maps.owners.contentKey, "job").string == "another-worker")
            #expect(entries(try await jobLog(node, pool.client), .finished, job: "job").isEmpty)
            _ = try await node.maps.owners.delete("job")
            _ = try await node.maps.payloads.delete("job")
            try await node.shutdown()
        }
    }

    @Test("cancelling the node's run() cancels its runner jobs: they are children, ended once run() returns")
    func crashCancelsJobs() async throws {
        try await withPool { pool in
            let running = try await pool.start()
            let node = running.node
            let runner = ScriptedRunner()
            let worker = try await node.addWorker(runner)
            try await node.dispatch(key: "job", payload: bytes("wait"))
            try await eventually("the job runs") { runner.started("job").count == 1 }
            await running.crash()
            // No waiting: run() returned, so its children (the job's task among them) have ended.
            #expect(runner.ended("job") == [.ended(job: "job", worker: worker.id, cancelled: true)])
            // A crash records nothing: peers recover the job.
            let log = try await jobLog(node, pool.client)
            for kind in [JobLogEntry.Kind.stopped, .finished, .failed] { #expect(entries(log, kind, job: "job").isEmpty) }
            #expect(try await pool.client.send("HGET", node.maps.payloads.contentKey, "job").bytes == bytes("wait"))
        }
    }
}
