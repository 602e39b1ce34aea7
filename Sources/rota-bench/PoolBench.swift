import ArgumentParser
import Foundation
import Rota
import RotaRedis
import RotaRedisServer
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The dedicated worker pool, end to end: a client-only dispatcher node in this process, routing
/// nodes with their workers in `rota-pool-node` child processes (found next to this executable).
///
/// Phases, each on a fresh pool:
/// 1. Latency: 2 quiet children × 2 workers; `--rounds` rounds of `--dispatches` sequential
///    dispatches (after `--warmup` ones), each round beside the reference measured just before it:
///    one Redis stream hop (XADD on one connection → a blocked XREAD on another). Ratios are
///    value / reference: LOWER IS BETTER (target: p50 ratio ≤ 8). `INFO commandstats` before and
///    after each round gives the server commands per dispatch (scripts' inner commands included).
/// 2. Burst: 2 children × 2 workers, not quiet (their start/stop lines say where each job runs);
///    `--jobs` dispatches, `--concurrency` in flight, until every dispatch returned. Jobs/s counts
///    successful dispatches only; failures are in `errors`. Then the children's VmRSS with the pool
///    holding the jobs.
/// 3. Rebalance: `add-worker` on the second child; the time until every job whose jump-hash bucket
///    among 5 workers is the new one runs there, once, with no key running on two workers, and the
///    start/stop lines have been quiet for `--settle-ms`. Then the pool is shut down (`shutdown`
///    on one child, `close` on the other).
/// 4. Mixed rebalance, on a pool of its own: 2 children × 2 workers, one `greet` and one `log`
///    worker each; `--jobs` jobs, every other one requiring `greet`, the others `log`; then
///    `add-worker greet` on the second child. Timed as phase 3, with the expected set computed over
///    the `greet` workers only (3 instead of 2); every start or stop of another job during the
///    rebalance counts as unexpected (a `log` job must never move). Then that pool is shut down.
///
/// Children are killed on any error. `--profile` adds per-command call counts, CPU use per process and a rebalance
/// timeline (to stderr with `--json`, to stdout otherwise).
struct PoolBench: ParsableCommand, AsyncBody {
    static let configuration = CommandConfiguration(
        commandName: "pool",
        abstract: "Worker pool dispatch latency, commands per dispatch, burst throughput, rebalance time and node memory."
    )

    @OptionGroup var common: BenchOptions

    @Option(help: "Sequential dispatches measured per round (latency and commands per dispatch).")
    var dispatches = 2_000

    @Option(help: "Sequential dispatches before the first measured round.")
    var warmup = 100

    @Option(help: "Reference stream hops measured per round.")
    var hops = 2_000

    @Option(help: "Jobs dispatched in the burst (the pool then holds them for the rebalance).")
    var jobs = 10_000

    @Option(help: "Burst dispatches in flight at once.")
    var concurrency = 256

    @Option(help: "Rebalance: quiet time (no start/stop line) that ends it, in milliseconds.")
    var settleMs = 500

    @Option(help: "Rebalance: give up after this many seconds.")
    var rebalanceTimeout = 60

    @Option(help: "Path of rota-pool-node (default: next to this executable).")
    var poolNode: String?

    @Flag(help: "Also print where the time goes: commands per job, CPU per process, the rebalance timeline.")
    var profile = false

    func run() throws {}

    func body(nioExecutor: Bool) async throws {
        guard dispatches > 0, warmup >= 0, hops > 0, jobs > 0, concurrency > 0, settleMs >= 0, rebalanceTimeout > 0 else {
            throw ValidationError("counts must be positive")
        }
        // A child that died must not kill the bench when a command is written to its stdin.
        signal(SIGPIPE, SIG_IGN)
        let executable = try poolNodeExecutable()
        if let redis = common.redis {
            try await measure(url: redis, configuration: try RedisConfiguration(url: redis), executable: executable)
        } else {
            try await RedisServer.withServer { server in
                try await measure(url: server.url, configuration: server.configuration, executable: executable)
            }
        }
    }

    private func poolNodeExecutable() throws -> String {
        if let poolNode {
            guard FileManager.default.isExecutableFile(atPath: poolNode) else { throw ValidationError("--pool-node: \(poolNode) is not executable") }
            return poolNode
        }
        let own = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? Bundle.main.executablePath ?? CommandLine.arguments[0]
        let candidate = URL(fileURLWithPath: own).deletingLastPathComponent().appendingPathComponent("rota-pool-node").path
        guard FileManager.default.isExecutableFile(atPath: candidate) else {
            throw ValidationError("rota-pool-node not found next to rota-bench (\(candidate)); build it: swift build -c release --product rota-pool-node")
        }
        return candidate
    }

    private func measure(url: String, configuration: RedisConfiguration, executable: String) async throws {
        let notes = ProfileNotes(enabled: profile, toStandardError: common.json)
        try await RedisClient.withClient(configuration) { client in
            let latency = try await latencyPhase(url: url, client: client, executable: executable, notes: notes)
            let burst = try await burstAndRebalance(url: url, client: client, executable: executable, notes: notes)
            let mixed = try await mixedRebalance(url: url, client: client, executable: executable, notes: notes)
            let rows = latency + burst + mixed
            if common.json {
                for row in rows { print(row.json) }
            } else {
                printTable(rows.map(\.measurement))
                for row in rows where !row.extra.isEmpty {
                    print("\(row.measurement.metric): " + row.extra.map { "\($0.0)=\($0.1)" }.joined(separator: " "))
                }
                print("dispatch ratios: value / stream_hop reference, lower is better (target p50 ≤ 8).")
            }
            notes.flush()
        }
    }

    // MARK: Phase 1: sequential dispatch latency

    private func latencyPhase(url: String, client: RedisClient, executable: String, notes: ProfileNotes) async throws -> [PoolRow] {
        let pool = "bench-pool-\(UInt32.random(in: 0...UInt32.max))"
        let children = ChildSet()
        do {
            try await children.launch(executable: executable, url: url, pool: pool, nodes: 2, workersPerNode: 2, quiet: true, placement: nil)
            let rounds = max(1, common.rounds)
            let (warmup, dispatches, hops, json) = (self.warmup, self.dispatches, self.hops, common.json)
            let results = try await Node.withNode(pool: pool, client: client, options: clientOnlyOptions()) { node in
                for index in 0..<warmup { try await node.dispatch(key: "warm-\(index)") }
                var perRound: [(latencies: [Double], hops: [Double], commands: [String: CommandStat])] = []
                for round in 1...rounds {
                    if !json { print("pool: latency round \(round)/\(rounds)…") }
                    let reference = try await streamHops(client, count: hops)
                    let before = try await commandStats(client)
                    var latencies: [Double] = []
                    latencies.reserveCapacity(dispatches)
                    let clock = ContinuousClock()
                    for index in 0..<dispatches {
                        let start = clock.now
                        try await node.dispatch(key: "seq-\(round)-\(index)")
                        latencies.append(microseconds(clock.now - start))
                    }
                    let after = try await commandStats(client)
                    perRound.append((latencies.sorted(), reference, CommandStat.delta(after, before)))
                }
                return perRound
            }
            try await children.shutdownPool()
            let p50 = median(results.map { percentile($0.latencies, 50) })
            let p99 = median(results.map { percentile($0.latencies, 99) })
            let hop50 = median(results.map { percentile($0.hops, 50) })
            let hop99 = median(results.map { percentile($0.hops, 99) })
            // The INFO that read "before" is counted in "after".
            let perDispatch = median(results.map { Double(CommandStat.totalCalls($0.commands) - 1) / Double(dispatches) })
            notes.add("commands per sequential dispatch (last round, all server commands incl. script internals and background loops):")
            if let last = results.last { notes.addCommandTable(last.commands, per: Double(dispatches), unit: "dispatch") }
            return [
                PoolRow(
                    Measurement(suite: "pool", metric: "dispatch_p50", value: p50, unit: "us", reference: hop50, ratio: p50 / hop50),
                    extra: [("reference_metric", jsonString("stream_hop_p50")), ("target", jsonString("ratio<=8")), ("met", "\(p50 / hop50 <= 8)")]
                ),
                PoolRow(
                    Measurement(suite: "pool", metric: "dispatch_p99", value: p99, unit: "us", reference: hop99, ratio: p99 / hop99),
                    extra: [("reference_metric", jsonString("stream_hop_p99"))]
                ),
                PoolRow(
                    Measurement(suite: "pool", metric: "commands_per_dispatch", value: perDispatch, unit: "commands", reference: nil, ratio: nil),
                    extra: [("dispatches", "\(dispatches)")]
                ),
            ]
        } catch {
            await children.killAll()
            throw error
        }
    }

    // MARK: Phases 2 and 3: burst, memory, rebalance

    private func burstAndRebalance(url: String, client: RedisClient, executable: String, notes: ProfileNotes) async throws -> [PoolRow] {
        let pool = "bench-pool-\(UInt32.random(in: 0...UInt32.max))"
        let placement = Placement()
        let children = ChildSet()
        do {
            try await children.launch(executable: executable, url: url, pool: pool, nodes: 2, workersPerNode: 2, quiet: false, placement: placement)
            let originals = children.workers
            if !common.json { print("pool: burst of \(jobs) jobs, \(concurrency) in flight…") }

            // Burst.
            let (total, concurrency) = (jobs, self.concurrency)
            let tally = DispatchTally()
            let commandsBefore = try await commandStats(client)
            let cpuBefore = try await cpuSnapshot(client, children)
            let elapsed = try await dispatchConcurrently(
                pool: pool, client: client, children: children, total: total, concurrency: concurrency, tally: tally
            ) { (burstKey($0), nil) }
            let cpuAfter = try await cpuSnapshot(client, children)
            let commandsAfter = try await commandStats(client)
            let (succeeded, errors) = tally.counts
            let rate = Double(succeeded) / seconds(elapsed)
            notes.add("burst: \(succeeded) ok, \(tally.summary) in \(format3(seconds(elapsed))) s")
            notes.addCPU(cpuBefore, cpuAfter, wall: elapsed, children: children)
            notes.addCommandTable(CommandStat.delta(commandsAfter, commandsBefore), per: Double(max(1, succeeded)), unit: "job")

            // The start lines trail the dispatch results by a pipe read at most.
            let deadline = ContinuousClock.now + .seconds(10)
            while placement.runningKeys < succeeded && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            let running = placement.runningKeys
            let rss = children.all.map { rssMegabytes(pid: $0.pid) }
            let burstRows = [
                PoolRow(
                    Measurement(suite: "pool", metric: "burst_jobs_per_s", value: rate, unit: "jobs/s", reference: nil, ratio: nil),
                    extra: [
                        ("errors", "\(errors)"), ("error_codes", jsonString(tally.summary)), ("jobs", "\(total)"),
                        ("concurrency", "\(concurrency)"), ("started_seen", "\(running)"),
                        ("target", jsonString(">=5000")), ("met", "\(rate >= 5000 && errors == 0)"),
                    ]
                ),
                PoolRow(
                    Measurement(suite: "pool", metric: "node_rss_mb_10k_jobs", value: rss.max() ?? .nan, unit: "MB", reference: nil, ratio: nil),
                    extra: [
                        ("jobs_held", "\(running)"), ("rss_mb_per_child", "[" + rss.map(format3).joined(separator: ",") + "]"),
                        ("target", jsonString("<=100")), ("met", "\((rss.max() ?? .infinity) <= 100)"),
                    ]
                ),
            ]

            // Rebalance.
            if !common.json { print("pool: rebalance (add-worker) with \(running) jobs…") }
            let keys = placement.keys
            let hasher = JumpHasher()
            let misplaced = keys.filter { key in placement.workers(of: key) != [originals[hasher.bucket(for: key, buckets: originals.count)]] }.count
            let expected = Set(keys.filter { hasher.bucket(for: $0, buckets: originals.count + 1) == originals.count })
            let target = children.all[children.all.count - 1]
            let run = try await measureRebalance(
                "add-worker", on: target, expected: expected, originals: Set(originals), anyOtherMoveIsUnexpected: false,
                placement: placement, children: children, client: client, notes: notes
            )
            let outcome = run.outcome
            let rebalanceRow = PoolRow(
                Measurement(suite: "pool", metric: "rebalance_s", value: run.elapsedSeconds, unit: "s", reference: nil, ratio: nil),
                extra: [
                    ("completed", "\(run.completed)"), ("jobs_held", "\(keys.count)"), ("expected_moved", "\(expected.count)"),
                    ("moved_ok", "\(outcome.good)"), ("on_new_worker", "\(placement.count(on: run.newWorker))"),
                    ("unexpected_moved", "\(outcome.unexpected)"), ("running_twice", "\(outcome.doubles)"),
                    ("running_nowhere", "\(outcome.empty)"), ("overlap_max_seen", "\(outcome.maxDoubles)"),
                    ("misplaced_before", "\(misplaced)"),
                    ("first_stop_ms", run.ms(outcome.firstStop)), ("last_new_start_ms", run.ms(outcome.lastNewStart)),
                    ("target", jsonString("<=2")), ("met", "\(run.completed && run.elapsedSeconds <= 2)"),
                ]
            )
            if !common.json { print("pool: shutting the pool down…") }
            try await children.shutdownPool()
            return burstRows + [rebalanceRow]
        } catch {
            await children.killAll()
            throw error
        }
    }

    // MARK: Phase 4: rebalance of one capability class in a mixed pool

    private func mixedRebalance(url: String, client: RedisClient, executable: String, notes: ProfileNotes) async throws -> [PoolRow] {
        let pool = "bench-pool-\(UInt32.random(in: 0...UInt32.max))"
        let placement = Placement()
        let children = ChildSet()
        do {
            // Worker i of each child gets class i mod 2: every child runs one greet and one log worker.
            try await children.launch(
                executable: executable, url: url, pool: pool, nodes: 2, workersPerNode: 2, quiet: false, placement: placement,
                workerCapabilities: "\(MixedJob.greet)/\(MixedJob.log)"
            )
            let originals = children.workers
            let greetWorkers = originals.enumerated().filter { $0.offset % 2 == 0 }.map(\.element)
            let logWorkers = originals.enumerated().filter { $0.offset % 2 == 1 }.map(\.element)
            if !common.json { print("pool: mixed pool, \(jobs) jobs over \(MixedJob.greet) and \(MixedJob.log), \(concurrency) in flight…") }
            let tally = DispatchTally()
            _ = try await dispatchConcurrently(pool: pool, client: client, children: children, total: jobs, concurrency: concurrency, tally: tally) {
                let job = MixedJob($0)
                return (job.key, job.requirement)
            }
            let (succeeded, errors) = tally.counts
            let deadline = ContinuousClock.now + .seconds(10)
            while placement.runningKeys < succeeded && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }

            // Each class is hashed over its own workers, in pool order; the new greet worker is the
            // newest, so a greet job moves exactly when its bucket among 3 is the last one.
            let held = (0..<jobs).map(MixedJob.init).filter { !placement.workers(of: $0.key).isEmpty }
            let hasher = JumpHasher()
            let misplaced = held.filter { job in
                let workers = job.requirement == MixedJob.greet ? greetWorkers : logWorkers
                return placement.workers(of: job.key) != [workers[hasher.bucket(for: job.key, buckets: workers.count)]]
            }.count
            let greetKeys = held.filter { $0.requirement == MixedJob.greet }.map(\.key)
            let expected = Set(greetKeys.filter { hasher.bucket(for: $0, buckets: greetWorkers.count + 1) == greetWorkers.count })
            if !common.json { print("pool: mixed rebalance (add-worker \(MixedJob.greet)) with \(held.count) jobs…") }
            let target = children.all[children.all.count - 1]
            let run = try await measureRebalance(
                "add-worker \(MixedJob.greet)", on: target, expected: expected, originals: Set(originals), anyOtherMoveIsUnexpected: true,
                placement: placement, children: children, client: client, notes: notes
            )
            let outcome = run.outcome
            let unexpected = placement.unexpectedKeys
            let logMoved = unexpected.filter { $0.hasPrefix(MixedJob.log + "-") }.count
            let met = run.completed && run.elapsedSeconds <= 2 && outcome.unexpected == 0 && outcome.doubles == 0 && outcome.empty == 0
            let row = PoolRow(
                Measurement(suite: "pool", metric: "rebalance_s_mixed", value: run.elapsedSeconds, unit: "s", reference: nil, ratio: nil),
                extra: [
                    ("completed", "\(run.completed)"), ("jobs_held", "\(held.count)"), ("greet_jobs", "\(greetKeys.count)"),
                    ("dispatch_errors", "\(errors)"), ("error_codes", jsonString(tally.summary)),
                    ("expected_moved", "\(expected.count)"), ("moved_ok", "\(outcome.good)"),
                    ("on_new_worker", "\(placement.count(on: run.newWorker))"),
                    ("unexpected_moved", "\(outcome.unexpected)"), ("log_moved", "\(logMoved)"),
                    ("running_twice", "\(outcome.doubles)"), ("running_nowhere", "\(outcome.empty)"),
                    ("overlap_max_seen", "\(outcome.maxDoubles)"), ("misplaced_before", "\(misplaced)"),
                    ("first_stop_ms", run.ms(outcome.firstStop)), ("last_new_start_ms", run.ms(outcome.lastNewStart)),
                    ("target", jsonString("<=2")), ("met", "\(met)"),
                ]
            )
            if !common.json { print("pool: shutting the mixed pool down…") }
            try await children.shutdownPool()
            return [row]
        } catch {
            await children.killAll()
            throw error
        }
    }

    // MARK: Shared by the phases

    /// Dispatches `total` jobs from a client-only node of `pool`, `concurrency` in flight, until
    /// every dispatch returned; `job(i)` is the i-th job's key and requirement. Returns the time taken.
    private func dispatchConcurrently(
        pool: String, client: RedisClient, children: ChildSet, total: Int, concurrency: Int, tally: DispatchTally,
        job: @escaping @Sendable (Int) -> (key: String, requirement: String?)
    ) async throws -> Duration {
        try await Node.withNode(pool: pool, client: client, options: clientOnlyOptions()) { node in
            let clock = ContinuousClock()
            let start = clock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                // A dead child would leave its dispatches waiting for their timeout: stop at once.
                group.addTask {
                    while !Task.isCancelled {
                        if let dead = children.exited() { throw BenchError("\(dead) exited during the burst") }
                        try? await Task.sleep(for: .milliseconds(100))
                    }
                }
                var next = 0
                func addNext() {
                    let (key, requirement) = job(next)
                    next += 1
                    group.addTask { await tally.dispatch(node, key: key, requirement: requirement) }
                }
                while next < min(concurrency, total) { addNext() }
                var returned = 0
                while returned < total {
                    try await group.next()
                    returned += 1
                    if next < total { addNext() }
                }
                group.cancelAll()
            }
            return clock.now - start
        }
    }

    /// Sends `command` (an add-worker) to `target` and follows the start/stop lines until the
    /// `expected` keys run once each on a worker outside `originals`, none runs twice or nowhere,
    /// and the lines have been quiet for `--settle-ms` (or `--rebalance-timeout` passed).
    private func measureRebalance(
        _ command: String, on target: NodeChild, expected: Set<String>, originals: Set<String>, anyOtherMoveIsUnexpected: Bool,
        placement: Placement, children: ChildSet, client: RedisClient, notes: ProfileNotes
    ) async throws -> RebalanceRun {
        let commandsBefore = try await commandStats(client)
        let cpuBefore = try await cpuSnapshot(client, children)
        let clock = ContinuousClock()
        let start = clock.now
        placement.watch(expected: expected, originals: originals, anyOtherMoveIsUnexpected: anyOtherMoveIsUnexpected)
        async let added = target.command(command, timeout: .seconds(rebalanceTimeout))
        let settle = Duration.milliseconds(settleMs)
        let giveUp = start + .seconds(rebalanceTimeout)
        while clock.now < giveUp {
            let progress = placement.progress
            if let done = progress.doneAt, clock.now - max(done, progress.lastLine ?? done) >= settle { break }
            if let dead = children.exited() { throw BenchError("\(dead) exited during the rebalance") }
            try await Task.sleep(for: .milliseconds(10))
        }
        let addedLines = try await added
        let newWorker = addedLines.first { $0.hasPrefix("worker ") }.map { String($0.dropFirst("worker ".count)) } ?? "?"
        let outcome = placement.progress
        let cpuAfter = try await cpuSnapshot(client, children)
        let commandsAfter = try await commandStats(client)
        let run = RebalanceRun(outcome: outcome, start: start, end: outcome.doneAt ?? clock.now, newWorker: newWorker)
        notes.add("\(command) timeline (ms after it): first stop \(run.ms(outcome.firstStop)), last stop \(run.ms(outcome.lastStop)), "
            + "first start on new worker \(run.ms(outcome.firstNewStart)), last \(run.ms(outcome.lastNewStart)), done \(run.ms(outcome.doneAt))")
        var histogram: [Int: Int] = [:]
        for instant in outcome.newStarts { histogram[Int(seconds(instant - start) * 4), default: 0] += 1 }
        notes.add("  starts on the new worker per 250 ms (bucket start in ms: count): "
            + histogram.sorted { $0.key < $1.key }.map { "\($0.key * 250):\($0.value)" }.joined(separator: " "))
        notes.addCPU(cpuBefore, cpuAfter, wall: clock.now - start, children: children)
        notes.addCommandTable(CommandStat.delta(commandsAfter, commandsBefore), per: Double(max(1, expected.count)), unit: "moved job")
        return run
    }

    private func clientOnlyOptions() -> Node.Options {
        var options = Node.Options()
        options.clientOnly = true
        return options
    }

    // MARK: References and probes

    /// The reference hop: XADD on the shared connections → a reader blocked in XREAD (no group) on
    /// a dedicated connection, as `rota-bench streams` measures its raw hop. µs, sorted.
    private func streamHops(_ client: RedisClient, count: Int) async throws -> [Double] {
        let key = "rota-bench:pool-hop:\(UUID().uuidString)"
        guard let first = try await client.send("XADD", key, "*", "t", "0").string else {
            throw BenchError("XADD returned no ID")
        }
        let (ready, readyContinuation) = AsyncStream.makeStream(of: Void.self)
        let results = try await withThrowingTaskGroup(of: [Double].self) { group in
            group.addTask {
                try await client.withDedicatedConnection { connection in
                    var results: [Double] = []
                    results.reserveCapacity(count)
                    var cursor = first
                    readyContinuation.yield()
                    while results.count < count {
                        let reply = try await connection.send(RedisCommand("XREAD", "COUNT", 1, "BLOCK", 0, "STREAMS", key, cursor), timeout: .seconds(30))
                        let received = monotonicNanoseconds()
                        guard let entry = reply.array?.first?.array?.last?.array?.first?.array, let id = entry.first?.string,
                            let sent = entry.last?.array?.last?.string.flatMap(UInt64.init)
                        else { throw BenchError("unexpected XREAD reply \(reply)") }
                        cursor = id
                        results.append(Double(received &- sent) / 1000)
                        readyContinuation.yield()
                    }
                    readyContinuation.finish()
                    return results
                }
            }
            var iterator = ready.makeAsyncIterator()
            for _ in 0..<count {
                guard await iterator.next() != nil else { break }
                // Let the reader's next XREAD reach the server and block there.
                try await Task.sleep(for: .microseconds(500))
                try await client.send("XADD", key, "*", "t", String(monotonicNanoseconds()))
            }
            return try await group.next() ?? []
        }
        try await client.send("DEL", key)
        return results.sorted()
    }

    private func commandStats(_ client: RedisClient) async throws -> [String: CommandStat] {
        guard let text = try await client.send("INFO", "commandstats").string else { throw BenchError("INFO commandstats returned no text") }
        return CommandStat.parse(text)
    }

    private func cpuSnapshot(_ client: RedisClient, _ children: ChildSet) async throws -> CPUSnapshot {
        let info = try await client.send("INFO", "cpu").string ?? ""
        var redis = 0.0
        for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix("used_cpu_sys:") || line.hasPrefix("used_cpu_user:") {
            redis += Double(line.split(separator: ":").last.map(String.init)?.trimmingCharacters(in: .whitespaces) ?? "") ?? 0
        }
        return CPUSnapshot(bench: cpuSeconds(pid: getpid()), children: children.all.map { cpuSeconds(pid: $0.pid) }, redis: redis)
    }
}

private func burstKey(_ index: Int) -> String { "burst-\(index)" }

/// Job `index` of the mixed phase: even ones require `greet`, odd ones `log`; the key starts with
/// the requirement.
private struct MixedJob {
    static let greet = "greet"
    static let log = "log"

    let key: String
    let requirement: String

    init(_ index: Int) {
        requirement = index % 2 == 0 ? Self.greet : Self.log
        key = "\(requirement)-\(index)"
    }
}

/// One measured rebalance: the placement when it ended, and when it was done (or gave up).
private struct RebalanceRun {
    let outcome: Placement.Progress
    let start: ContinuousClock.Instant
    /// When the placement was done, or when the wait gave up.
    let end: ContinuousClock.Instant
    let newWorker: String

    var completed: Bool { outcome.doneAt != nil }
    var elapsedSeconds: Double { seconds(end - start) }

    /// Milliseconds after the add-worker command, or "null".
    func ms(_ instant: ContinuousClock.Instant?) -> String { instant.map { format3(seconds($0 - start) * 1000) } ?? "null" }
}

// MARK: - Rows

struct PoolRow {
    let measurement: Measurement
    /// Extra JSON fields: name and an already-encoded JSON value.
    let extra: [(String, String)]

    init(_ measurement: Measurement, extra: [(String, String)] = []) {
        self.measurement = measurement
        self.extra = extra
    }

    var json: String {
        var text = measurement.json
        guard !extra.isEmpty, text.hasSuffix("}") else { return text }
        text.removeLast()
        for (name, value) in extra { text += ",\"\(name)\":\(value)" }
        return text + "}"
    }
}

func jsonString(_ text: String) -> String {
    var escaped = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": escaped += "\\\""
        case "\\": escaped += "\\\\"
        case "\n": escaped += "\\n"
        case _ where scalar.value < 0x20: escaped += String(format: "\\u%04x", scalar.value)
        default: escaped.unicodeScalars.append(scalar)
        }
    }
    return escaped + "\""
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

// MARK: - Burst dispatches

/// Successful and failed dispatches of the burst, by error code.
final class DispatchTally: Sendable {
    private struct State {
        var succeeded = 0
        var failures: [String: (count: Int, first: String)] = [:]
    }

    private let state = Mutex(State())

    /// A held (unplaced) job counts as a failure with the code `unplaced`: the benches dispatch
    /// only what their workers can run.
    func dispatch(_ node: Node, key: String, requirement: String? = nil) async {
        do {
            switch try await node.dispatch(key: key, requirement: requirement) {
            case .started: state.withLock { $0.succeeded += 1 }
            case .unplaced(let requirement): fail("unplaced", "job \(key) held: no worker with \(requirement)")
            }
        } catch {
            fail((error as? PoolError).map { "\($0.code)" } ?? "\(type(of: error))", "\(error)")
        }
    }

    private func fail(_ code: String, _ message: String) {
        state.withLock { state in
            let previous = state.failures[code]
            state.failures[code] = ((previous?.count ?? 0) + 1, previous?.first ?? message)
        }
    }

    var counts: (succeeded: Int, failed: Int) {
        state.withLock { ($0.succeeded, $0.failures.values.reduce(0) { $0 + $1.count }) }
    }

    /// "code×count (first message)", or "none".
    var summary: String {
        state.withLock { state in
            guard !state.failures.isEmpty else { return "none" }
            return state.failures.sorted { $0.key < $1.key }.map { "\($0.key)×\($0.value.count) (\($0.value.first))" }.joined(separator: "; ")
        }
    }
}

// MARK: - Where each job runs, from the children's start/stop lines

/// Tracks, per job key, the workers currently running it (from `start`/`stop` lines), and during a
/// rebalance whether every key that must move runs on the new worker only.
final class Placement: Sendable {
    struct Progress: Sendable {
        /// Expected keys running exactly once, on a worker that is not one of the originals.
        var good = 0
        /// Keys running on two workers or more right now, and the most seen at once.
        var doubles = 0
        var maxDoubles = 0
        /// Keys that ran once and run nowhere now.
        var empty = 0
        /// Keys outside the expected set that started on a new worker (with `anyOtherMoveIsUnexpected`:
        /// that started or stopped anywhere).
        var unexpected = 0
        var doneAt: ContinuousClock.Instant?
        var lastLine: ContinuousClock.Instant?
        var firstStop: ContinuousClock.Instant?
        var lastStop: ContinuousClock.Instant?
        var firstNewStart: ContinuousClock.Instant?
        var lastNewStart: ContinuousClock.Instant?
        /// When each start on a new worker was read (for the profile's histogram).
        var newStarts: [ContinuousClock.Instant] = []
    }

    private struct Watch {
        let expected: Set<String>
        let originals: Set<String>
        /// Whether any start or stop of a key outside `expected` is unexpected, not only a start on
        /// a new worker.
        let anyOtherMove: Bool
        var unexpected: Set<String> = []
    }

    private struct State {
        var running: [String: [String]] = [:]
        var perWorker: [String: Int] = [:]
        var watch: Watch?
        var progress = Progress()
    }

    private let state = Mutex(State())

    func record(start: Bool, worker: String, key: String, at now: ContinuousClock.Instant) {
        state.withLock { state in
            let known = state.running[key]
            let before = known ?? []
            var after = before
            if start {
                guard !before.contains(worker) else { return }
                after.append(worker)
                state.perWorker[worker, default: 0] += 1
            } else {
                guard let index = before.firstIndex(of: worker) else { return }
                after.remove(at: index)
                state.perWorker[worker, default: 0] -= 1
            }
            state.running[key] = after
            if before.count < 2 && after.count >= 2 { state.progress.doubles += 1 }
            if before.count >= 2 && after.count < 2 { state.progress.doubles -= 1 }
            // `empty` counts keys that ran and run nowhere now (a key seen for the first time was not counted).
            if !before.isEmpty && after.isEmpty { state.progress.empty += 1 }
            if known != nil && before.isEmpty && !after.isEmpty { state.progress.empty -= 1 }
            guard var watch = state.watch else { return }
            state.progress.lastLine = now
            state.progress.maxDoubles = max(state.progress.maxDoubles, state.progress.doubles)
            func good(_ workers: [String]) -> Bool { workers.count == 1 && !watch.originals.contains(workers[0]) }
            if watch.expected.contains(key) {
                state.progress.good += (good(after) ? 1 : 0) - (good(before) ? 1 : 0)
            }
            let onNewWorker = !watch.originals.contains(worker)
            if !watch.expected.contains(key) && (watch.anyOtherMove || (start && onNewWorker)) {
                watch.unexpected.insert(key)
                state.progress.unexpected = watch.unexpected.count
            }
            if start {
                if onNewWorker {
                    if state.progress.firstNewStart == nil { state.progress.firstNewStart = now }
                    state.progress.lastNewStart = now
                    state.progress.newStarts.append(now)
                }
            } else {
                if state.progress.firstStop == nil { state.progress.firstStop = now }
                state.progress.lastStop = now
            }
            state.watch = watch
            let done = state.progress.good == watch.expected.count && state.progress.doubles == 0 && state.progress.empty == 0
            if !done {
                state.progress.doneAt = nil
            } else if state.progress.doneAt == nil {
                state.progress.doneAt = now
            }
        }
    }

    /// Starts watching a rebalance: `expected` keys must end up on a worker outside `originals`.
    /// Unexpected: another key starting on a new worker, or with `anyOtherMoveIsUnexpected` any
    /// start or stop of another key.
    func watch(expected: Set<String>, originals: Set<String>, anyOtherMoveIsUnexpected: Bool) {
        state.withLock { state in
            var progress = Progress()
            progress.doubles = state.progress.doubles
            progress.maxDoubles = state.progress.doubles
            progress.empty = state.progress.empty
            progress.good = 0
            for key in expected {
                if let workers = state.running[key], workers.count == 1, !originals.contains(workers[0]) { progress.good += 1 }
            }
            // Nothing to move: done from the start (no line may ever come).
            if progress.good == expected.count && progress.doubles == 0 && progress.empty == 0 { progress.doneAt = .now }
            state.progress = progress
            state.watch = Watch(expected: expected, originals: originals, anyOtherMove: anyOtherMoveIsUnexpected)
        }
    }

    var progress: Progress { state.withLock { $0.progress } }

    /// The keys counted in ``Progress/unexpected`` by the current watch.
    var unexpectedKeys: Set<String> { state.withLock { $0.watch?.unexpected ?? [] } }

    /// Keys running on at least one worker.
    var runningKeys: Int { state.withLock { state in state.running.values.reduce(0) { $0 + ($1.isEmpty ? 0 : 1) } } }

    /// Keys running on at least one worker.
    var keys: [String] { state.withLock { state in state.running.filter { !$0.value.isEmpty }.map(\.key) } }

    func workers(of key: String) -> [String] { state.withLock { $0.running[key] ?? [] } }

    func count(on worker: String) -> Int { state.withLock { $0.perWorker[worker] ?? 0 } }
}

// MARK: - Child processes

/// The children of one pool, in launch order (which is their workers' creation order).
final class ChildSet: Sendable {
    private let children = Mutex<[NodeChild]>([])

    var all: [NodeChild] { children.withLock { $0 } }

    /// Every worker, in creation order: the first child's, then the second's…
    var workers: [String] { all.flatMap(\.workers) }

    /// Starts the children one after the other, each once the previous one is ready, so that the
    /// workers' creation order is the children's order.
    /// `workerCapabilities` is passed as `--worker-capabilities` (each child's worker i gets class i).
    func launch(
        executable: String, url: String, pool: String, nodes: Int, workersPerNode: Int, quiet: Bool, placement: Placement?,
        workerCapabilities: String? = nil
    ) async throws {
        for index in 0..<nodes {
            var arguments = ["--redis", url, "--pool", pool, "--workers", String(workersPerNode)]
            if quiet { arguments.append("--quiet") }
            if let workerCapabilities { arguments += ["--worker-capabilities", workerCapabilities] }
            let child = try NodeChild.spawn(index: index, executable: executable, arguments: arguments) { line, read, _ in
                // `start <worker> <key>` / `stop <worker> <key>`: where each job runs.
                let isStart = line.hasPrefix("start "), isStop = line.hasPrefix("stop ")
                guard isStart || isStop else { return false }
                let parts = line.split(separator: " ", maxSplits: 2)
                if parts.count == 3, let placement {
                    placement.record(start: isStart, worker: String(parts[1]), key: String(parts[2]), at: read.instant)
                }
                return true
            }
            children.withLock { $0.append(child) }
            try await child.waitUntilReady(timeout: .seconds(30))
        }
    }

    /// The name of a child that exited, if any did.
    func exited() -> String? {
        all.first { $0.hasExited }.map { "\($0.name) (pid \($0.pid), status \($0.exitStatus.map(String.init) ?? "?"))" }
    }

    /// `shutdown` on the first child, `close` on the others, then end of input for all; children
    /// still running after 30 s are killed.
    func shutdownPool() async throws {
        let children = all
        guard let first = children.first else { return }
        do {
            _ = try await first.command("shutdown", timeout: .seconds(150))
            for child in children.dropFirst() { _ = try await child.command("close", timeout: .seconds(60)) }
        } catch {
            await killAll()
            throw error
        }
        for child in children { child.closeInput() }
        var stuck: [String] = []
        for child in children where !(await child.waitForExit(timeout: .seconds(30))) {
            stuck.append(child.name)
            await child.kill()
        }
        if !stuck.isEmpty { throw BenchError("\(stuck.joined(separator: ", ")) did not exit after the pool shutdown; killed") }
    }

    func killAll() async {
        for child in all { await child.kill() }
    }
}

// MARK: - /proc and INFO readings

/// VmRSS of a process, in MB (MiB); NaN if it cannot be read.
func rssMegabytes(pid: pid_t) -> Double {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return .nan }
    for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        if fields.count >= 2, let kilobytes = Double(fields[1]) { return kilobytes / 1024 }
    }
    return .nan
}

/// User + system CPU seconds of a process (/proc/<pid>/stat fields 14 and 15).
func cpuSeconds(pid: pid_t) -> Double {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = text.lastIndex(of: ")")
    else { return .nan }
    // After the command name: field 3 (state) is the first.
    let fields = text[text.index(after: close)...].split(separator: " ")
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return .nan }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

struct CPUSnapshot {
    let bench: Double
    let children: [Double]
    let redis: Double
}

struct CommandStat: Sendable {
    var calls: Int
    var microseconds: Int

    static func parse(_ info: String) -> [String: CommandStat] {
        var stats: [String: CommandStat] = [:]
        for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix("cmdstat_") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = String(line[line.index(line.startIndex, offsetBy: "cmdstat_".count)..<colon])
            var stat = CommandStat(calls: 0, microseconds: 0)
            for field in line[line.index(after: colon)...].split(separator: ",") {
                let pair = field.split(separator: "=", maxSplits: 1)
                guard pair.count == 2 else { continue }
                if pair[0] == "calls" { stat.calls = Int(pair[1]) ?? 0 }
                if pair[0] == "usec" { stat.microseconds = Int(pair[1]) ?? 0 }
            }
            stats[name] = stat
        }
        return stats
    }

    static func delta(_ after: [String: CommandStat], _ before: [String: CommandStat]) -> [String: CommandStat] {
        var delta: [String: CommandStat] = [:]
        for (name, stat) in after {
            let previous = before[name] ?? CommandStat(calls: 0, microseconds: 0)
            let difference = CommandStat(calls: stat.calls - previous.calls, microseconds: stat.microseconds - previous.microseconds)
            if difference.calls > 0 { delta[name] = difference }
        }
        return delta
    }

    static func totalCalls(_ stats: [String: CommandStat]) -> Int { stats.values.reduce(0) { $0 + $1.calls } }
}

/// The `--profile` output, collected during the run and printed at the end.
final class ProfileNotes: Sendable {
    let enabled: Bool
    let toStandardError: Bool
    private let lines = Mutex<[String]>([])

    init(enabled: Bool, toStandardError: Bool) {
        self.enabled = enabled
        self.toStandardError = toStandardError
    }

    func add(_ line: String) {
        guard enabled else { return }
        lines.withLock { $0.append(line) }
    }

    func addCommandTable(_ stats: [String: CommandStat], per count: Double, unit: String) {
        guard enabled else { return }
        let total = CommandStat.totalCalls(stats)
        let totalMicros = stats.values.reduce(0) { $0 + $1.microseconds }
        add("  \(format3(Double(total) / count)) commands/\(unit), \(format3(Double(totalMicros) / count)) µs of server time/\(unit)")
        for (name, stat) in stats.sorted(by: { $0.value.calls > $1.value.calls }) {
            add("    \(name.padding(toLength: 22, withPad: " ", startingAt: 0)) \(format3(Double(stat.calls) / count)) calls/\(unit)  "
                + "\(format3(Double(stat.microseconds) / count)) µs/\(unit)")
        }
    }

    func addCPU(_ before: CPUSnapshot, _ after: CPUSnapshot, wall: Duration, children: ChildSet) {
        guard enabled else { return }
        let names = children.all.map(\.name)
        var parts = ["bench \(format3(after.bench - before.bench)) s"]
        for (index, name) in names.enumerated() where index < before.children.count && index < after.children.count {
            parts.append("\(name) \(format3(after.children[index] - before.children[index])) s")
        }
        parts.append("redis-server \(format3(after.redis - before.redis)) s")
        add("  CPU over \(format3(seconds(wall))) s wall: " + parts.joined(separator: ", "))
    }

    func flush() {
        guard enabled else { return }
        let text = lines.withLock { $0 }.joined(separator: "\n") + "\n"
        if toStandardError {
            FileHandle.standardError.write(Data(text.utf8))
        } else {
            print(text, terminator: "")
        }
    }
}
