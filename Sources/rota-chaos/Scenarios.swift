import Foundation
import Rota
import RotaMap
import RotaRedis
import RotaService

/// How hard and how long: `short` is the CI profile (under 10 minutes on 2 cores), `long` repeats
/// every fault several times over and floods harder.
struct Profile: Sendable {
    var workerKills: Int
    var workerKillGap: ClosedRange<Double>
    var plannerKills: Int
    var plannerKillGap: ClosedRange<Double>
    var pauses: Int
    var redisRestarts: Int
    var redisDownSeconds: Double
    var clientKills: Int
    var floodJobs: Int
    /// Rolling restarts of the whole fleet, one process after the other.
    var rollingRestarts: Int
    /// Seconds the pool must stay converged to count as settled (and over which overlap is measured).
    var hold: Double

    static let short = Profile(
        workerKills: 20, workerKillGap: 2...4, plannerKills: 10, plannerKillGap: 3...5, pauses: 1,
        redisRestarts: 1, redisDownSeconds: 2, clientKills: 1, floodJobs: 2_500, rollingRestarts: 1, hold: 5)
    static let long = Profile(
        workerKills: 100, workerKillGap: 1...5, plannerKills: 40, plannerKillGap: 2...6, pauses: 3,
        redisRestarts: 3, redisDownSeconds: 5, clientKills: 5, floodJobs: 10_000, rollingRestarts: 3, hold: 15)
}

enum Scenario: String, CaseIterable, Sendable {
    case sigkillWorkers = "sigkill-workers"
    case sigkillPlanner = "sigkill-planner"
    case sigstop
    case redisRestart = "redis-restart"
    case clientKill = "client-kill"
    case flood
    case poison
    case rollingRestart = "rolling-restart"

    /// What the fault phase did, for the report.
    struct Injected {
        var faults = 0
        var details: [(String, any Sendable)] = []
        /// What went wrong during the fault phase itself (the scenario fails).
        var failures: [String] = []
    }

    /// A graceful fault: no job may run in two copies at any time, not just after settling.
    var forbidsFaultOverlap: Bool { self == .rollingRestart }

    /// Runs the fault phase against a converged pool. Returns when the last fault is over (the
    /// last process restarted, the paused ones resumed, Redis back); settling is measured from then.
    func inject(profile: Profile, cluster: ChaosCluster, checker: inout Checker, random: inout SplitMix64) async throws -> Injected {
        var injected = Injected()
        let workerTTL = Node.Options().workerTTL
        switch self {
        case .sigkillWorkers:
            for _ in 0..<profile.workerKills {
                let slot = cluster.workerSlots[Int(random.next() % UInt64(cluster.workerSlots.count))]
                if let victim = cluster.current(slot) { await victim.killNow() }
                try cluster.spawn(slot)
                injected.faults += 1
                try await Task.sleep(for: .seconds(random.uniform(profile.workerKillGap)))
            }
        case .sigkillPlanner:
            var victims: [String] = []
            for _ in 0..<profile.plannerKills {
                guard let victim = cluster.currentPlanner() else { throw ChaosFailure(.process, "no live planner to kill") }
                await victim.killNow()
                try cluster.spawn(victim.slot)
                victims.append(victim.slot)
                injected.faults += 1
                try await Task.sleep(for: .seconds(random.uniform(profile.plannerKillGap)))
            }
            injected.details.append(("victims", victims.joined(separator: ",")))
        case .sigstop:
            // A worker node and the busiest planner together, for longer than the worker TTL:
            // both come back to a pool that gave their jobs to others.
            // They stay paused past the worker TTL and until the pool gave their jobs to other
            // workers (their copies still "run" in the paused processes: jobs running twice), so
            // that resuming exercises "stop the jobs you lost" — bounded by TTL + ack grace + 10 s.
            let least = Double(workerTTL.components.seconds) + 2
            let most = least + Double(Node.Options().ackGracePeriod.components.seconds) + 10
            var pausedFor: [Double] = []
            var takenOver = 0
            for round in 0..<profile.pauses {
                let worker = cluster.current(cluster.workerSlots[round % cluster.workerSlots.count])
                let planner = cluster.currentPlanner()
                let paused = [worker, planner].compactMap { $0 }
                let began = Date()
                for process in paused { process.signal(SIGSTOP) }
                try await Task.sleep(for: .seconds(least))
                while Date().timeIntervalSince(began) < most {
                    takenOver = checker.logView().copies.values.filter { $0 > 1 }.count
                    if takenOver > 0 { break }
                    try await Task.sleep(for: .milliseconds(250))
                }
                for process in paused { process.signal(SIGCONT) }
                pausedFor.append(Date().timeIntervalSince(began))
                injected.faults += paused.count
                injected.details.append(("paused_\(round)", paused.map(\.slot).joined(separator: ",")))
                injected.details.append(("taken_over_\(round)", takenOver))
                if round + 1 < profile.pauses {
                    let settled = await checker.waitSettled(from: Date(), hold: 2, limit: 60)
                    guard settled.settledAt != nil else { break }
                }
            }
            injected.details.append(("paused_s", pausedFor.map { ($0 * 10).rounded() / 10 }.map { "\($0)" }.joined(separator: ",")))
        case .redisRestart:
            for round in 0..<profile.redisRestarts {
                await cluster.server.kill()
                try await Task.sleep(for: .seconds(profile.redisDownSeconds))
                do {
                    try await cluster.server.start()
                } catch {
                    throw ChaosFailure(.redis, "redis-server did not restart", underlying: error)
                }
                injected.faults += 1
                if round + 1 < profile.redisRestarts {
                    let settled = await checker.waitSettled(from: Date(), hold: 2, limit: 60)
                    guard settled.settledAt != nil else { break }
                }
            }
            injected.details.append(("down_s", profile.redisDownSeconds))
        case .clientKill:
            var killed = 0
            for round in 0..<profile.clientKills {
                for type in ["normal", "pubsub"] {
                    killed += (try? await checker.client.send("CLIENT", "KILL", "TYPE", type, "SKIPME", "yes").int) ?? 0
                }
                injected.faults += 1
                if round + 1 < profile.clientKills { try await Task.sleep(for: .seconds(2)) }
            }
            injected.details.append(("connections_killed", killed))
        case .poison:
            let written = try await poison(client: checker.client)
            // Then live records, as a writer who wants to disturb running work would: a live
            // worker's keep-alive made unreadable, and a running job's owner entry pointed at a
            // worker that does not exist. The pool must heal (nothing lost, nothing left twice).
            let live = try await checker.redisView()
            let space = try RedisKeySpace(ChaosCluster.pool)
            var liveWritten = 0
            if let worker = live.workers.sorted().randomElement(using: &random) {
                try await ReplicatedMap("worker-keepalive", keySpace: space, client: checker.client).set(worker, "garbage")
                injected.details.append(("poisoned_live_worker", worker))
                liveWritten += 1
            }
            if let job = live.owners.keys.sorted().randomElement(using: &random) {
                try await ReplicatedMap("owners", keySpace: space, client: checker.client).set(job, "poison-ghost")
                injected.details.append(("poisoned_live_job", job))
                liveWritten += 1
            }
            injected.faults = written + liveWritten
            injected.details.append(("poisoned_entries", written + liveWritten))
            // Long enough for every node to meet them: sweeps, ticks, replication, status.
            try await Task.sleep(for: .seconds(5))
        case .rollingRestart:
            injected = try await rollingRestart(rounds: profile.rollingRestarts, cluster: cluster, checker: checker)
        case .flood:
            let result = try await flood(jobs: profile.floodJobs, client: checker.client)
            checker.desired.formUnion(result.started)
            checker.optional.formUnion(result.failed.keys)
            injected.faults = 1
            injected.details += [
                ("flood_jobs", profile.floodJobs), ("flood_started", result.started.count), ("flood_failed", result.failed.count),
                ("pool_stream_peak", result.streamPeak), ("max_queued_jobs", Node.Options().maxQueuedJobs),
                ("flood_jobs_per_s", (Double(profile.floodJobs) / result.seconds).rounded()),
            ]
            if let example = result.failed.first { injected.details.append(("flood_error", "\(example.key): \(example.value)")) }
        }
        return injected
    }

    /// SIGTERM each `rota run` and then each `rota worker` in turn; once it has exited, start it
    /// again in its slot (same name, same database) and wait until it is back (ready, and it took
    /// a job or the pool stayed converged for 2 s) before the next.
    private func rollingRestart(rounds: Int, cluster: ChaosCluster, checker: Checker) async throws -> Injected {
        var injected = Injected()
        // A node hands its jobs over for at most a worker TTL; rejoining may take as long as the
        // pool may take to settle.
        let limit = settleBudget()
        var exits: [Double] = [], backs: [Double] = []
        for _ in 0..<rounds {
            for slot in cluster.plannerSlots + cluster.workerSlots {
                guard let victim = cluster.current(slot), !victim.hasEnded else { throw ChaosFailure(.process, "no live \(slot) to restart") }
                let asked = Date()
                if !(await victim.terminate(timeout: .seconds(limit))) {
                    injected.failures.append("\(victim.description) still running \(limit) s after SIGTERM (SIGKILLed)")
                }
                exits.append(Date().timeIntervalSince(asked))
                injected.faults += 1
                let successor = try cluster.spawn(slot)
                let spawned = Date()
                try await successor.waitUntilReady()
                if let back = await checker.waitBack(successor, since: spawned, hold: 2, limit: limit) {
                    backs.append(back)
                } else {
                    injected.failures.append("\(successor.description) not back \(limit) s after its restart")
                }
            }
        }
        let tenths = { (values: [Double]) in values.map { "\(($0 * 10).rounded() / 10)" }.joined(separator: ",") }
        injected.details += [("restart_order", (cluster.plannerSlots + cluster.workerSlots).joined(separator: ",")),
            ("exit_s", tenths(exits)), ("back_s", tenths(backs))]
        return injected
    }

    /// Writes out-of-range and malformed values into the pool's maps (raw and as forged change
    /// messages), streams and hashes, as anyone with write access to the pool's keys could.
    /// Real workers' and jobs' records are left alone (overwriting them is a different attack: it
    /// evicts or moves live work); a real producer's ticker and pause field are poisoned, and must
    /// heal. Returns how many entries were written.
    private func poison(client: RedisClient) async throws -> Int {
        let space = try RedisKeySpace(ChaosCluster.pool)
        let map = { (name: String) in space.key("map", name) }
        let huge = "99999999999999999999999", min = String(Int64.min), max = String(Int64.max)
        // Through the maps' own write protocol (every replica applies them at once), as a writer
        // using Rota's scripts would.
        let entries: [(map: String, key: String, value: String)] = [
            ("node-keepalive", "poison-node-a", min), ("node-keepalive", "poison-node-b", "1e300"), ("node-keepalive", "poison-node-c", "abc"),
            ("workers", "poison-worker", min), ("workers", "poison-worker-2", "-"),
            ("worker-keepalive", "poison-worker", max), ("worker-keepalive", "poison-worker-2", huge),
            ("cleanup", "poison-worker", huge),
            ("pending-jobs", "poison/pending", "-1"), ("pending-jobs", "poison/pending-2", "abc"),
            ("tickers", "poison-ticker", "1|1ns"), ("tickers", "schedule-p0", "1|1ns"),
            ("tickers", "poison-ancient", "946684800000001|1ms"), ("tickers", "poison-far", "\(max)|1s"),
            ("schedule-p1", "poison/ghost", "not-a-time"),
            ("worker-capabilities", "poison-worker", "greet,,bad cap,\(huge)\u{1B}"), ("job-requirements", "poison/req", "no,such"),
            ("unplaced-jobs", "poison/held", "bad cap"), ("unplaced-jobs", "poison/held-2", "log"),
        ]
        for entry in entries {
            try await ReplicatedMap(entry.map, keySpace: space, client: client).set(entry.key, entry.value)
        }
        var commands: [RedisCommand] = [
            RedisCommand("HSET", space.key("node-names"), "poison-node-a", "\u{1B}[2J"),
            RedisCommand("HSET", space.key("plan"), "p:p2", "{not json", "r:p3", #"{"revision":-5,"by":"x","at":1e300}"#,
                "d:poison-producer", "[]", "h:poison-producer", "1 zz"),
            RedisCommand("HSET", space.key("producer-rounds"), "p4", "garbage", "p5", "1|{}"),
            RedisCommand("HSET", space.key("plan-drift"), "poison-node-a", "{]"),
            RedisCommand("XADD", space.key("stream", "history"), "*", "n", "round", "p",
                #"{"id":"chaos/p0/1","pool":"chaos","producer":"p0","revision":1,"node":"x","tick":1e300,"started":-1e300,"planned":[],"counts":[-1,1e300,0],"actions":[]}"#),
            RedisCommand("XADD", space.key("stream", "history"), "*", "n", "round", "p", Array<UInt8>([0xFF, 0x00, 0xFE])),
            RedisCommand("XADD", space.key("stream", "plan-log"), "*", "n", "created", "p",
                #"{"kind":"created","producer":"p0","revision":1e300,"by":"x","at":-9223372036854775808}"#),
            RedisCommand("XADD", space.key("stream", "plan-log"), "*", "n", "exploded", "p", "{}"),
            RedisCommand("XADD", space.key("stream", "pool"), "*", "n", "j", "p", Array<UInt8>([255, 255, 255, 255, 1])),
            RedisCommand("XADD", space.key("stream", "pool"), "*", "n", "zz", "p", "garbage"),
        ]
        // Forged change messages on the maps' channels: malformed, and with absurd revisions.
        for name in ["tickers", "workers", "node-keepalive", "owners", "job-payloads", "worker-capabilities", "unplaced-jobs"] {
            commands.append(RedisCommand("PUBLISH", map(name) + ":updates", "set:garbage"))
            commands.append(RedisCommand("PUBLISH", map(name) + ":updates", "reset:" + huge))
            commands.append(RedisCommand("PUBLISH", map(name) + ":updates", Array<UInt8>([0xFF, 0x00])))
        }
        let replies = try await client.pipeline(commands)
        for (command, reply) in zip(commands, replies) {
            if case .failure = Result(catching: { try reply.throwingServerError() }) {
                throw ChaosFailure(.redis, "poisoning failed at \(command)")
            }
        }
        return entries.count + commands.count
    }

    struct FloodResult {
        var started: Set<String> = []
        var failed: [String: String] = [:]
        var streamPeak = 0
        var seconds = 0.0
    }

    /// Dispatches `jobs` extra `log` jobs from a client-only node, 256 at a time, while watching the
    /// pool stream's length.
    private func flood(jobs: Int, client: RedisClient) async throws -> FloodResult {
        var options = Node.Options()
        options.clientOnly = true
        options.name = "chaos-flood"
        let began = Date()
        var result = try await Node.withNode(pool: ChaosCluster.pool, client: client, options: options) { node in
            try await withThrowingTaskGroup(of: FloodResult.self) { group in
                let watching = Task {
                    var peak = 0
                    while !Task.isCancelled {
                        let length = (try? await client.send("XLEN", "rota:{\(ChaosCluster.pool)}:stream:pool").int) ?? 0
                        peak = max(peak, length)
                        try? await Task.sleep(for: .milliseconds(20))
                    }
                    return peak
                }
                let lanes = 256
                for lane in 0..<lanes {
                    group.addTask {
                        var partial = FloodResult()
                        for index in stride(from: lane, to: jobs, by: lanes) {
                            let key = "flood/\(index)"
                            do {
                                let payload = try JobEnvelope(handler: "log", payload: Array("{\"flood\":\(index)}".utf8)).encoded()
                                try await node.dispatch(key: key, payload: payload, requirement: "log")
                                partial.started.insert(key)
                            } catch {
                                partial.failed[key] = "\(error)"
                            }
                        }
                        return partial
                    }
                }
                var total = FloodResult()
                for try await partial in group {
                    total.started.formUnion(partial.started)
                    total.failed.merge(partial.failed) { first, _ in first }
                }
                watching.cancel()
                total.streamPeak = await watching.value
                return total
            }
        }
        result.seconds = Date().timeIntervalSince(began)
        return result
    }
}

/// A small seeded generator, so a run's choices can be replayed with `--seed`.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func uniform(_ range: ClosedRange<Double>) -> Double {
        range.lowerBound + Double(next() >> 11) / Double(1 << 53) * (range.upperBound - range.lowerBound)
    }
}
