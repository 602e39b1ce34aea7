import Foundation
@testable import Rota
import RotaRedis
import Testing

@Suite("Pool: capability-aware placement", .serialized, .timeLimit(.minutes(3)))
struct CapabilityTests {
    private func keys(_ prefix: String, _ count: Int) -> [String] { (0..<count).map { "\(prefix)-\($0)" } }

    @Test("a job with a requirement runs only on workers that have it; jobs without one use every worker")
    func requirementsPickWorkers() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let greet = RecordingHandler(), log = RecordingHandler(), bare = RecordingHandler()
            let greetWorker = try await node.addWorker(greet, capabilities: ["greet"])
            let logWorker = try await node.addWorker(log, capabilities: ["log", "exec"])
            let bareWorker = try await node.addWorker(bare)
            #expect(greetWorker.capabilities == ["greet"])
            for key in keys("g", 12) { #expect(try await node.dispatch(key: key, requirement: "greet") == .started) }
            for key in keys("l", 12) { #expect(try await node.dispatch(key: key, requirement: "log") == .started) }
            for key in keys("any", 24) { try await node.dispatch(key: key) }
            #expect(Set(keys("g", 12)).isSubset(of: greet.runningKeys))
            #expect(Set(keys("l", 12)).isSubset(of: log.runningKeys))
            #expect(!bare.runningKeys.contains { $0.hasPrefix("g-") || $0.hasPrefix("l-") })
            // Jobs without a requirement are hashed over all active workers, as before.
            let active = node.activeWorkers()
            #expect(Set(active) == [greetWorker.id, logWorker.id, bareWorker.id])
            let hasher = JumpHasher()
            let handlers = [greetWorker.id: greet, logWorker.id: log, bareWorker.id: bare]
            for key in keys("any", 24) {
                let target = active[hasher.bucket(for: key, buckets: active.count)]
                #expect(handlers[target]?.runningKeys.contains(key) == true, "job \(key) runs on its hash target")
            }
            let capabilities = try await node.workerCapabilities()
            #expect(capabilities == [greetWorker.id: ["greet"], logWorker.id: ["exec", "log"], bareWorker.id: []])
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("a worker of one class joining moves only jobs of its class, no more than its share")
    func joiningMovesOnlyItsClass() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let greet1 = RecordingHandler(), log1 = RecordingHandler(), greet2 = RecordingHandler()
            let first = try await node.addWorker(greet1, capabilities: ["greet"])
            _ = try await node.addWorker(log1, capabilities: ["log"])
            let greetKeys = keys("g", 40), logKeys = keys("l", 40)
            for key in greetKeys { try await node.dispatch(key: key, requirement: "greet") }
            for key in logKeys { try await node.dispatch(key: key, requirement: "log") }
            let second = try await node.addWorker(greet2, capabilities: ["greet"])
            let hasher = JumpHasher()
            let order = [first.id, second.id].sorted { lhs, rhs in
                node.localWorkers.firstIndex { $0.id == lhs } ?? 0 < node.localWorkers.firstIndex { $0.id == rhs } ?? 0
            }
            let expected = Set(greetKeys.filter { order[hasher.bucket(for: $0, buckets: 2)] == second.id })
            #expect(!expected.isEmpty && expected.count < greetKeys.count)
            try await eventually("the new greet worker runs exactly its share of greet jobs") { greet2.runningKeys == expected }
            #expect(Set(greet1.stopped) == expected, "only the jobs that moved were stopped on the first greet worker")
            #expect(log1.stopped.isEmpty, "no log job moved")
            #expect(log1.runningKeys == Set(logKeys))
            try await node.shutdown()
        }
    }

    @Test("no capable worker: the job is held unplaced, logged once, refused a second dispatch, and starts when one joins")
    func heldUntilACapableWorkerJoins() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let log = RecordingHandler()
            _ = try await node.addWorker(log, capabilities: ["log"])
            let outcome = try await node.dispatch(key: "hello", payload: bytes("p"), requirement: "greet")
            #expect(outcome == .unplaced(requirement: "greet"))
            try await eventually("listed as unplaced") { try await node.unplacedJobs() == ["hello": "greet"] }
            try await eventually("the held job exists in the pool") { try await node.jobPayload("hello") == bytes("p") }
            let again = await caught { try await node.dispatch(key: "hello", payload: bytes("p"), requirement: "greet") } as? PoolError
            #expect(again?.code == .jobExists)
            // Sweeps and worker changes do not log it again or treat it as an orphan.
            _ = try await node.addWorker(RecordingHandler(), capabilities: ["other"])
            await node.cleanUpInactiveWorkers()
            #expect(log.started.isEmpty)
            let held = try await jobLog(node, pool.client).filter { $0.kind == .unplaced }
            #expect(held.count == 1)
            #expect(held.first?.jobs.map(\.job) == ["hello"])
            #expect(held.first?.jobs.first?.error?.contains("greet") == true)

            let greet = RecordingHandler()
            let greeter = try await node.addWorker(greet, capabilities: ["greet"])
            try await eventually("the greet worker started the held job") { greet.running["hello"] == bytes("p") }
            try await eventually("nothing is held any more") { try await node.unplacedJobs().isEmpty }
            #expect(node.maps.owners.string("hello") == greeter.id)
            let started = try await jobLog(node, pool.client).filter { $0.kind == .started && $0.jobs.contains { $0.job == "hello" } }
            #expect(started.count == 1)
            #expect(started.first?.jobs.first?.reason == "placed")
            try await node.shutdown()
            #expect(try await leftoverKeys(pool.client, pool: pool.pool) == [])
        }
    }

    @Test("a job whose only capable worker dies or leaves waits unplaced, then runs on a new one")
    func onlyCapableWorkerRemoved() async throws {
        try await withPool { pool in
            // A long ack grace: a start left pending would only come back after it, so the job
            // must be held by the first delivery of its requeue.
            var options = testOptions()
            options.ackGracePeriod = .seconds(30)
            let planner = try await pool.start(options).node
            let host = try await pool.start(options)
            let first = RecordingHandler()
            let firstWorker = try await host.node.addWorker(first, capabilities: ["greet"])
            _ = try await planner.addWorker(RecordingHandler(), capabilities: ["log"])
            try await planner.dispatch(key: "crashy", requirement: "greet")
            try await planner.dispatch(key: "leaving", requirement: "greet")
            #expect(first.runningKeys == ["crashy", "leaving"])
            // Removed gracefully: its handoff finds no other greet worker.
            await host.node.removeWorker(firstWorker)
            try await eventually("both jobs are held") { try await planner.unplacedJobs() == ["crashy": "greet", "leaving": "greet"] }
            #expect(Set(first.stopped) == ["crashy", "leaving"])

            let second = RecordingHandler()
            _ = try await host.node.addWorker(second, capabilities: ["greet"])
            try await eventually("the new greet worker runs both") { second.runningKeys == ["crashy", "leaving"] }
            // Killed: its jobs are lost, then held rather than failing.
            await host.crash()
            try await eventually("held again after the crash", timeout: .seconds(10)) {
                try await planner.unplacedJobs() == ["crashy": "greet", "leaving": "greet"]
            }
            let entries = try await jobLog(planner, pool.client)
            #expect(entries.contains { $0.kind == .lost && Set($0.jobs.map(\.job)) == ["crashy", "leaving"] })
            #expect(entries.filter { $0.kind == .unplaced }.flatMap(\.jobs).count == 4, "held twice each: after the removal and after the crash")
            #expect(!entries.contains { $0.kind == .startFailed || $0.kind == .givenUp })

            let third = RecordingHandler()
            _ = try await planner.addWorker(third, capabilities: ["greet"])
            try await eventually("a third greet worker runs both") { third.runningKeys == ["crashy", "leaving"] }
            try await planner.shutdown()
        }
    }

    @Test("a stop ends a held job: payload, requirement and hold are gone")
    func stopEndsAHeldJob() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            _ = try await node.addWorker(RecordingHandler(), capabilities: ["log"])
            #expect(try await node.dispatch(key: "held", requirement: "greet") == .unplaced(requirement: "greet"))
            #expect(try await node.stopAndWait(key: "held") == .endedUnowned)
            try await eventually("the job is gone") {
                node.maps.payloads.get("held") == nil && node.maps.unplaced.get("held") == nil && node.maps.requirements.get("held") == nil
            }
            // The key is free again: with a capable worker it starts at once.
            let greet = RecordingHandler()
            _ = try await node.addWorker(greet, capabilities: ["greet"])
            #expect(try await node.dispatch(key: "held", requirement: "greet") == .started)
            #expect(greet.runningKeys == ["held"])
            try await node.shutdown()
        }
    }

    @Test("a schedule records a held job as unplaced once, and its stop-all ends it")
    func scheduleHoldsAndStops() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            _ = try await node.addWorker(RecordingHandler(), capabilities: ["log"])
            let producer = ScriptedProducer(name: "held") { call, _ in
                switch call {
                case 1: return JobPlan(start: [PlannedJob(key: "K", payload: bytes("k"), requirement: "greet")], stopAll: true)
                case 2: return JobPlan(stopAll: true)
                default: throw PoolError.scheduleStop
                }
            }
            let schedule = try await node.schedule(producer, interval: .milliseconds(20))
            var reports: [PlanReport] = []
            for await event in schedule.events {
                if case .applied(let report) = event { reports.append(report) }
            }
            #expect(reports.map { $0.outcomes.map(\.outcome) } == [[.unplaced(requirement: "greet")], [.stopped]])
            try await eventually("the held job is gone") { node.maps.payloads.get("K") == nil && node.maps.unplaced.get("K") == nil }
            try await node.shutdown()
        }
    }

    @Test("capabilities and requirements are validated before anything is written")
    func invalidNames() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            for bad in ["", "a,b", "has space", String(repeating: "x", count: 65), "naïve"] {
                let worker = await caught { _ = try await node.addWorker(RecordingHandler(), capabilities: [bad]) } as? PoolError
                #expect(worker?.code == .invalidArgument, "capability '\(bad)'")
                let dispatch = await caught { try await node.dispatch(key: "k", requirement: bad) } as? PoolError
                #expect(dispatch?.code == .invalidArgument, "requirement '\(bad)'")
            }
            #expect(node.maps.workers.keys.isEmpty)
            try await node.shutdown()
        }
    }

    @Test("poisoned capability and requirement entries are skipped, never trusted")
    func poisonedEntries() async throws {
        try await withPool { pool in
            let node = try await pool.start().node
            let greet = RecordingHandler()
            let worker = try await node.addWorker(greet, capabilities: ["greet"])
            // Someone with write access lists garbage for the worker and for a job.
            try await node.maps.capabilities.setAndWait(worker.id, "greet,,bad cap," + String(repeating: "y", count: 100) + ",log")
            #expect(node.workerView().capabilities[worker.id] == ["greet", "log"])
            try await node.maps.requirements.setAndWait("job", "no,such")
            try await node.dispatch(key: "job")
            #expect(greet.runningKeys == ["job"], "an invalid recorded requirement counts as none")
            try await node.shutdown()
        }
    }

    @Test("WorkerView hashes each requirement over its own workers")
    func workerView() {
        let view = WorkerView(active: ["a", "b", "c", "d"], capabilities: ["a": ["x"], "b": ["y"], "c": ["x", "y"]])
        #expect(view.capable(of: nil) == ["a", "b", "c", "d"])
        #expect(view.capable(of: "x") == ["a", "c"])
        #expect(view.capable(of: "y") == ["b", "c"])
        #expect(view.capable(of: "z") == [])
        #expect(view.target(for: "k", requirement: "z", hasher: JumpHasher()) == nil)
        let hasher = JumpHasher()
        for key in (0..<50).map({ "k\($0)" }) {
            #expect(view.target(for: key, requirement: "x", hasher: hasher) == ["a", "c"][hasher.bucket(for: key, buckets: 2)])
        }
        #expect(Capability.decode(Array("b,a,,a, c".utf8)) == ["a", "b"])
        #expect(Capability.encode(["b", "a"]) == "a,b")
    }

    @Test("job records carry the requirement; records without one decode as before")
    func wire() {
        let date = Date(timeIntervalSince1970: 1_700_000_000)
        let plain = JobRecord(key: "k", dispatcher: "d", payload: [1, 2], createdAt: date)
        #expect(JobRecord(decoding: plain.encoded()) == plain)
        let required = JobRecord(key: "k", dispatcher: "d", payload: [1], createdAt: date, requeued: true, requirement: "greet")
        #expect(JobRecord(decoding: required.encoded()) == required)
        let both = JobRecord(key: "k", dispatcher: "d", createdAt: date, origin: JobOrigin(actor: "a", reason: "r", round: "x"), requirement: "g")
        #expect(JobRecord(decoding: both.encoded()) == both)
        var bad = required.encoded()
        bad.removeLast()
        bad.append(UInt8(ascii: ","))
        #expect(JobRecord(decoding: bad) == nil, "an invalid requirement makes the record malformed")
    }
}
