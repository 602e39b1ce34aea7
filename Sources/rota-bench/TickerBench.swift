import ArgumentParser
import Foundation
import Rota
import RotaMap
import RotaRedis
import RotaRedisServer
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The distributed ticker and the schedule, end to end, with nodes in `rota-pool-node` child
/// processes (found next to this executable).
///
/// Phases, each on a fresh pool:
/// 1. Ticks: `--nodes` children (`--workers 0 --ticker bench:<interval-ms>`). After all are ready
///    and `--warmup-ticks` intervals have passed, tick lines are collected from every child until
///    `--ticks` distinct tokens were seen. Lateness = delivered − scheduled (the line's delivered
///    µs − its token); duplicates = tokens delivered more than once; missed = gaps in the token
///    sequence (consecutive tokens must differ by exactly one interval) and the lines' `missed=`.
/// 2. Failover, `--failovers` times: the child that prints the next tick line is SIGKILLed as soon
///    as the line is read (by the thread reading it); the gap is the next tick's delivery on another
///    child minus the killed tick's delivery (both from the lines; ideal: one interval). Then the
///    remaining children shut the pool down.
/// 3. Reconcile: 2 quiet children × 2 workers and a routing node in this process (no workers),
///    which dispatches `--jobs` jobs with payloads (`--concurrency` in flight), then schedules a
///    producer whose plan returns those jobs with the same payloads, every `--reconcile-interval-ms`
///    (the first plan is immediate). A round's time is the arrival of its `.applied` event minus
///    the return of `plan(for:)`; the median of `--reconcile-rounds` rounds is reported. Every round
///    must report every job `alreadyRunning`: a started, restarted or failed job fails the bench.
///
/// Children are killed on any error.
struct TickerBench: ParsableCommand, AsyncBody {
    static let configuration = CommandConfiguration(
        commandName: "ticker",
        abstract: "Distributed ticker lateness, duplicates, missed ticks, failover gap, and the schedule's reconcile time."
    )

    @OptionGroup var common: BenchOptions

    @Option(help: "Ticker nodes (child processes).")
    var nodes = 5

    @Option(help: "Ticker interval in milliseconds.")
    var intervalMs = 100

    @Option(help: "Distinct ticks measured (after the warm-up).")
    var ticks = 300

    @Option(help: "Intervals skipped once every node is ready, and waited between failovers.")
    var warmupTicks = 10

    @Option(help: "Nodes killed one after the other right after delivering a tick.")
    var failovers = 3

    @Option(help: "Jobs the reconciled plan holds (all running already).")
    var jobs = 10_000

    @Option(help: "Dispatches in flight while the jobs are started.")
    var concurrency = 256

    @Option(help: "Reconcile rounds measured (the median is reported).")
    var reconcileRounds = 5

    @Option(help: "Interval of the reconciled schedule, in milliseconds.")
    var reconcileIntervalMs = 1_000

    @Option(help: "Path of rota-pool-node (default: next to this executable).")
    var poolNode: String?

    func run() throws {}

    func body(nioExecutor: Bool) async throws {
        guard nodes > 0, intervalMs > 0, ticks > 1, warmupTicks >= 0, failovers >= 0, jobs > 0, concurrency > 0,
              reconcileRounds > 0, reconcileIntervalMs > 0
        else { throw ValidationError("counts and durations must be positive") }
        guard failovers < nodes else { throw ValidationError("--failovers must leave at least one node running") }
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
        try await RedisClient.withClient(configuration) { client in
            let tickerRows = try await tickerPhase(url: url, executable: executable)
            let reconcileRow = try await reconcilePhase(url: url, client: client, executable: executable)
            let rows = tickerRows + [reconcileRow]
            if common.json {
                for row in rows { print(row.json) }
            } else {
                printTable(rows.map(\.measurement))
                for row in rows where !row.extra.isEmpty {
                    print("\(row.measurement.metric): " + row.extra.map { "\($0.0)=\($0.1)" }.joined(separator: " "))
                }
            }
        }
    }

    private func say(_ text: String) {
        if !common.json { print("ticker: \(text)") }
    }

    // MARK: Phases 1 and 2: ticks and failover

    private func tickerPhase(url: String, executable: String) async throws -> [PoolRow] {
        let pool = "bench-ticker-\(UInt32.random(in: 0...UInt32.max))"
        let interval = Int64(intervalMs) * 1000
        let log = TickLog()
        let children = TickerChildren()
        do {
            say("starting \(nodes) nodes with a \(intervalMs) ms ticker…")
            for index in 0..<nodes {
                let arguments = ["--redis", url, "--pool", pool, "--workers", "0", "--quiet", "--ticker", "bench:\(intervalMs)"]
                let child = try NodeChild.spawn(index: index, executable: executable, arguments: arguments) { line, read, pid in
                    guard let tick = parseTick(line, child: index, read: read.unixMicroseconds) else { return false }
                    // Not reaped until the bench's kill() waits for it: the pid cannot be reused.
                    if log.record(tick) { _ = Glibc.kill(pid, SIGKILL) }
                    return true
                }
                children.append(child)
                try await child.waitUntilReady(timeout: .seconds(30))
            }

            // Ticks.
            let threshold = unixMicroseconds() + Int64(warmupTicks) * interval
            say("collecting \(ticks) ticks after \(warmupTicks) warm-up intervals…")
            let deadline = ContinuousClock.now + .milliseconds(intervalMs * (ticks + warmupTicks) * 2) + .seconds(20)
            while true {
                let seen = log.distinctTokens(from: threshold)
                if seen >= ticks { break }
                try children.checkAlive(log: log, during: "the tick collection")
                guard ContinuousClock.now < deadline else { throw BenchError("only \(seen) of \(ticks) ticks seen in time") }
                try await Task.sleep(for: .milliseconds(20))
            }
            // A duplicate of the last ticks would arrive about as late as the ticks themselves.
            try await Task.sleep(for: .milliseconds(max(50, intervalMs)))
            let tickRows = tickRows(log.lines, from: threshold, interval: interval)

            // Failover.
            var failoverResults: [Failover] = []
            for round in 0..<failovers {
                let phase = "failover \(round + 1)/\(failovers)"
                say("\(phase)…")
                try await children.pause(.milliseconds(intervalMs * max(1, warmupTicks)), log: log)
                log.arm()
                let victim = try await children.poll(log: log, during: phase, within: .milliseconds(intervalMs * 10) + .seconds(10)) {
                    log.victim
                }
                await children.all[victim.child].kill()
                let next = try await children.poll(log: log, during: phase + " (waiting for the tick after the kill)",
                                                   within: .milliseconds(intervalMs * 10) + .seconds(10)) {
                    log.lines.filter { $0.token > victim.token && $0.child != victim.child }.min { $0.token < $1.token }
                }
                failoverResults.append(Failover(victim: victim, next: next, interval: interval))
            }

            say("shutting the ticker pool down…")
            try await children.shutdownPool(log: log)
            return tickRows + failoverRows(failoverResults, log: log, from: threshold, interval: interval)
        } catch {
            await children.killAll()
            throw error
        }
    }

    private func tickRows(_ lines: [TickLine], from threshold: Int64, interval: Int64) -> [PoolRow] {
        let window = Array(Set(lines.map(\.token).filter { $0 >= threshold }).sorted().prefix(ticks))
        let first = window.first ?? threshold, last = window.last ?? threshold
        let measured = lines.filter { $0.token >= first && $0.token <= last }
        let lateness = measured.map { Double($0.delivered - $0.token) / 1000 }.sorted()
        let readLag = measured.map { Double($0.read - $0.delivered) / 1000 }.sorted()
        let p50 = percentile(lateness, 50), p99 = percentile(lateness, 99)
        let sequence = tokenSequence(measured.map(\.token), interval: interval)
        let missedFields = measured.reduce(0) { $0 + $1.missed }
        let dropped = measured.reduce(0) { $0 + $1.dropped }
        let missed = max(sequence.missing, missedFields)
        var perNode = [Int](repeating: 0, count: nodes)
        for line in measured where line.child < nodes { perNode[line.child] += 1 }
        let shape: [(String, String)] = [("ticks", "\(window.count)"), ("nodes", "\(nodes)"), ("interval_ms", "\(intervalMs)")]
        return [
            PoolRow(
                Measurement(suite: "ticker", metric: "tick_lateness_p50", value: p50, unit: "ms", reference: nil, ratio: nil),
                extra: shape + [("ticks_per_node", "[" + perNode.map(String.init).joined(separator: ",") + "]")]
            ),
            PoolRow(
                Measurement(suite: "ticker", metric: "tick_lateness_p99", value: p99, unit: "ms", reference: nil, ratio: nil),
                extra: shape + [
                    ("max_ms", jsonNumber(lateness.last ?? .nan)), ("min_ms", jsonNumber(lateness.first ?? .nan)),
                    ("line_read_lag_p99_ms", jsonNumber(percentile(readLag, 99))),
                    ("target", jsonString("<=10")), ("met", "\(p99 <= 10)"),
                ]
            ),
            PoolRow(
                Measurement(suite: "ticker", metric: "duplicate_ticks", value: Double(sequence.duplicated), unit: "ticks", reference: nil, ratio: nil),
                extra: shape + [
                    ("extra_deliveries", "\(sequence.extraDeliveries)"),
                    ("target", jsonString("0")), ("met", "\(sequence.duplicated == 0)"),
                ]
            ),
            PoolRow(
                Measurement(suite: "ticker", metric: "missed_ticks", value: Double(missed), unit: "ticks", reference: nil, ratio: nil),
                extra: shape + [
                    ("sequence_gaps", "\(sequence.missing)"), ("missed_field_sum", "\(missedFields)"),
                    ("misaligned", "\(sequence.misaligned)"), ("dropped_field_sum", "\(dropped)"),
                    ("target", jsonString("0")), ("met", "\(missed == 0 && sequence.misaligned == 0)"),
                ]
            ),
        ]
    }

    private func failoverRows(_ results: [Failover], log: TickLog, from threshold: Int64, interval: Int64) -> [PoolRow] {
        guard !results.isEmpty else { return [] }
        let gaps = results.map(\.gapMilliseconds)
        let worst = gaps.max() ?? .nan
        let target = Double(intervalMs + 100)
        // The whole run, failovers included: every tick from the end of the warm-up on.
        let whole = tokenSequence(log.lines.map(\.token).filter { $0 >= threshold }, interval: interval)
        return [
            PoolRow(
                Measurement(suite: "ticker", metric: "failover_gap_ms", value: worst, unit: "ms", reference: Double(intervalMs), ratio: nil),
                extra: [
                    ("gaps_ms", "[" + gaps.map(jsonNumber).joined(separator: ",") + "]"),
                    ("next_token_offsets_ms", "[" + results.map { jsonNumber(Double($0.next.token - $0.victim.token) / 1000) }.joined(separator: ",") + "]"),
                    ("missed_after_kill", "[" + results.map { String($0.missed) }.joined(separator: ",") + "]"),
                    ("kill_after_delivery_ms", "[" + results.map { jsonNumber(Double($0.victim.read - $0.victim.delivered) / 1000) }.joined(separator: ",") + "]"),
                    ("nodes_after", "\(nodes - results.count)"),
                    ("duplicates_whole_run", "\(whole.duplicated)"), ("missed_whole_run", "\(whole.missing)"),
                    ("target", jsonString("<=\(intervalMs + 100)")), ("met", "\(worst <= target)"),
                ]
            ),
        ]
    }

    // MARK: Phase 3: reconcile

    private func reconcilePhase(url: String, client: RedisClient, executable: String) async throws -> PoolRow {
        let pool = "bench-reconcile-\(UInt32.random(in: 0...UInt32.max))"
        let children = ChildSet()
        do {
            say("reconcile: starting 2 nodes × 2 workers…")
            try await children.launch(executable: executable, url: url, pool: pool, nodes: 2, workersPerNode: 2, quiet: true, placement: nil)
            let (total, concurrency, wanted) = (jobs, self.concurrency, reconcileRounds)
            let interval = Duration.milliseconds(reconcileIntervalMs)
            let planned = (0..<total).map { PlannedJob(key: "reconcile-\($0)", payload: Array("payload-\($0)".utf8)) }
            let json = common.json
            let outcome = try await Node.withNode(pool: pool, client: client) { node -> ReconcileOutcome in
                // Start every job, bounded.
                if !json { print("ticker: reconcile: dispatching \(total) jobs, \(concurrency) in flight…") }
                let clock = ContinuousClock()
                let start = clock.now
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        while !Task.isCancelled {
                            if let dead = children.exited() { throw BenchError("\(dead) exited during the dispatches") }
                            try? await Task.sleep(for: .milliseconds(100))
                        }
                    }
                    var jobs = planned.makeIterator()
                    func addNext() -> Bool {
                        guard let job = jobs.next() else { return false }
                        group.addTask {
                            do {
                                try await node.dispatch(key: job.key, payload: job.payload)
                            } catch {
                                throw BenchError("dispatching \(job.key) failed: \(error)")
                            }
                        }
                        return true
                    }
                    for _ in 0..<concurrency where !addNext() { break }
                    for _ in 0..<total {
                        try await group.next()
                        _ = addNext()
                    }
                    group.cancelAll()
                }
                let dispatchRate = Double(total) / seconds(clock.now - start)
                // The plan's apply reads this node's replica: it must hold every job, or the first
                // round would dispatch (and find the job existing) instead of reconciling.
                let replicaDeadline = ContinuousClock.now + .seconds(30)
                var missing = planned
                while !missing.isEmpty {
                    var still: [PlannedJob] = []
                    for job in missing where try await node.jobPayload(job.key) != job.payload { still.append(job) }
                    missing = still
                    if missing.isEmpty { break }
                    guard ContinuousClock.now < replicaDeadline else {
                        throw BenchError("\(missing.count) jobs not in this node's replica with their payload 30 s after dispatch")
                    }
                    try await Task.sleep(for: .milliseconds(20))
                }

                if !json { print("ticker: reconcile: \(wanted) rounds of a \(total)-job plan…") }
                let times = PlanTimes()
                let producer = ReconcileProducer(name: "bench-reconcile", jobs: planned, times: times)
                let schedule = try await node.schedule(producer, interval: interval)
                let rounds: [ReconcileRound]
                do {
                    rounds = try await collectRounds(schedule, times: times, wanted: wanted, children: children,
                                                     timeout: interval * (wanted + 2) + .seconds(60))
                } catch {
                    try? await schedule.stop()
                    throw error
                }
                try await schedule.stop()
                return ReconcileOutcome(rounds: rounds, dispatchRate: dispatchRate)
            }
            // The schedule's bookkeeping map (job → when it was started) is not part of the pool's
            // state that a shutdown removes: drop it here (it holds every job).
            let bookkeeping = try ReplicatedMap("schedule-bench-reconcile", keySpace: RedisKeySpace(pool), client: client)
            try await bookkeeping.destroy()
            say("reconcile: shutting the pool down…")
            try await children.shutdownPool()

            let rounds = outcome.rounds
            let bad = rounds.filter { $0.started > 0 || $0.restarted > 0 || $0.failed > 0 || $0.alreadyRunning != jobs }
            if let round = bad.first {
                throw BenchError("reconcile round \(round.index): \(round.alreadyRunning) already running, \(round.started) started, "
                    + "\(round.restarted) restarted, \(round.failed) failed of \(jobs) (every job must be already running: no dispatch may be sent)")
            }
            let times = rounds.map(\.milliseconds)
            let value = median(times)
            return PoolRow(
                Measurement(suite: "ticker", metric: "reconcile_10k_ms", value: value, unit: "ms", reference: nil, ratio: nil),
                extra: [
                    ("jobs", "\(jobs)"), ("rounds_ms", "[" + times.map(jsonNumber).joined(separator: ",") + "]"),
                    ("first_round_ms", jsonNumber(times.first ?? .nan)),
                    ("plan_interval_ms", "[" + rounds.map { jsonNumber($0.sincePreviousPlan) }.joined(separator: ",") + "]"),
                    ("already_running", "[" + rounds.map { String($0.alreadyRunning) }.joined(separator: ",") + "]"),
                    ("started", "\(rounds.reduce(0) { $0 + $1.started })"),
                    ("restarted", "\(rounds.reduce(0) { $0 + $1.restarted })"),
                    ("failed", "\(rounds.reduce(0) { $0 + $1.failed })"),
                    ("dispatch_jobs_per_s", jsonNumber(outcome.dispatchRate)),
                    ("target", jsonString("<=100")), ("met", "\(value <= 100)"),
                ]
            )
        } catch {
            await children.killAll()
            throw error
        }
    }

    /// `.applied` events until `wanted` rounds were seen; fails on a plan failure, an early end, a
    /// child that exited, or the timeout.
    private func collectRounds(
        _ schedule: Schedule, times: PlanTimes, wanted: Int, children: ChildSet, timeout: Duration
    ) async throws -> [ReconcileRound] {
        try await withThrowingTaskGroup(of: [ReconcileRound].self) { group in
            group.addTask {
                var rounds: [ReconcileRound] = []
                var previousPlan: ContinuousClock.Instant?
                for await event in schedule.events {
                    switch event {
                    case .applied(let report):
                        let arrived = ContinuousClock.now
                        guard let returned = times.returned(report.tick.token) else {
                            throw BenchError("an applied plan for tick \(report.tick.token) that the producer did not plan")
                        }
                        rounds.append(ReconcileRound(
                            index: rounds.count + 1,
                            milliseconds: seconds(arrived - returned) * 1000,
                            sincePreviousPlan: previousPlan.map { seconds(returned - $0) * 1000 } ?? .nan,
                            alreadyRunning: report.count(.alreadyRunning),
                            started: report.count(.started),
                            restarted: report.count(.restarted),
                            failed: report.failures.count
                        ))
                        previousPlan = returned
                        if rounds.count == wanted { return rounds }
                    case .planFailed(_, let error):
                        throw BenchError("the producer failed to plan: \(error)")
                    case .ended:
                        throw BenchError("the schedule ended after \(rounds.count) rounds")
                    }
                }
                throw BenchError("the schedule's events ended after \(rounds.count) rounds")
            }
            group.addTask {
                let deadline = ContinuousClock.now + timeout
                while ContinuousClock.now < deadline {
                    if let dead = children.exited() { throw BenchError("\(dead) exited during the reconcile rounds") }
                    try await Task.sleep(for: .milliseconds(100))
                }
                throw BenchError("\(wanted) reconcile rounds did not complete within \(timeout)")
            }
            guard let rounds = try await group.next() else { throw BenchError("no reconcile rounds") }
            group.cancelAll()
            return rounds
        }
    }
}

// MARK: - Tick lines

/// One `tick` line of a child: token and delivery in Unix µs (from the line), `read` when this
/// process read it (Unix µs).
struct TickLine: Sendable {
    let child: Int
    let token: Int64
    let delivered: Int64
    let missed: Int
    let dropped: Int
    let read: Int64
}

/// Duplicates and gaps in a set of delivered tokens (which may repeat).
struct TokenSequence {
    /// Tokens delivered more than once, and the deliveries beyond the first.
    var duplicated = 0
    var extraDeliveries = 0
    /// Ticks missing between consecutive distinct tokens (difference / interval − 1).
    var missing = 0
    /// Consecutive distinct tokens whose difference is not a multiple of the interval.
    var misaligned = 0
}

func tokenSequence(_ tokens: [Int64], interval: Int64) -> TokenSequence {
    var counts: [Int64: Int] = [:]
    for token in tokens { counts[token, default: 0] += 1 }
    var result = TokenSequence()
    for count in counts.values where count > 1 {
        result.duplicated += 1
        result.extraDeliveries += count - 1
    }
    let distinct = counts.keys.sorted()
    for (previous, next) in zip(distinct, distinct.dropFirst()) {
        let difference = next - previous
        if difference % interval != 0 { result.misaligned += 1 }
        result.missing += max(0, Int(difference / interval) - 1)
    }
    return result
}

/// One failover: the tick after which a node was killed and the next tick, on another node.
struct Failover {
    let victim: TickLine
    let next: TickLine
    let interval: Int64

    var gapMilliseconds: Double { Double(next.delivered - victim.delivered) / 1000 }
    var missed: Int { max(0, Int((next.token - victim.token) / interval) - 1) }
}

/// Every tick line read from the children. When armed, the next line read (from a child not
/// killed yet) gets its child killed at once, by the reading thread.
final class TickLog: Sendable {
    private struct State {
        var lines: [TickLine] = []
        var armed = false
        var victim: TickLine?
        var killed: Set<Int> = []
    }

    private let state = Mutex(State())

    /// Records a line; true if its child must be killed now.
    func record(_ line: TickLine) -> Bool {
        state.withLock { state in
            state.lines.append(line)
            guard state.armed, !state.killed.contains(line.child) else { return false }
            state.armed = false
            state.victim = line
            state.killed.insert(line.child)
            return true
        }
    }

    func arm() {
        state.withLock { state in
            state.victim = nil
            state.armed = true
        }
    }

    var victim: TickLine? { state.withLock { $0.victim } }
    var killed: Set<Int> { state.withLock { $0.killed } }
    var lines: [TickLine] { state.withLock { $0.lines } }

    func distinctTokens(from threshold: Int64) -> Int {
        state.withLock { state in Set(state.lines.lazy.map(\.token).filter { $0 >= threshold }).count }
    }
}

// MARK: - Reconcile

struct ReconcileRound: Sendable {
    let index: Int
    let milliseconds: Double
    let sincePreviousPlan: Double
    let alreadyRunning: Int
    let started: Int
    let restarted: Int
    let failed: Int
}

struct ReconcileOutcome: Sendable {
    let rounds: [ReconcileRound]
    let dispatchRate: Double
}

/// When `plan(for:)` returned, by tick token.
final class PlanTimes: Sendable {
    private let times = Mutex<[Int64: ContinuousClock.Instant]>([:])

    func record(_ token: Int64) {
        let now = ContinuousClock.now
        times.withLock { $0[token] = now }
    }

    func returned(_ token: Int64) -> ContinuousClock.Instant? { times.withLock { $0[token] } }
}

/// Plans the same jobs (with the same payloads) at every tick.
struct ReconcileProducer: JobProducer {
    let name: String
    let jobs: [PlannedJob]
    let times: PlanTimes

    func plan(for tick: Tick) async throws -> JobPlan {
        let plan = JobPlan(start: jobs)
        times.record(tick.token)
        return plan
    }
}

// MARK: - Ticker child processes

/// The ticker phase's children, by index (a killed child stays in the list).
final class TickerChildren: Sendable {
    private let children = Mutex<[NodeChild]>([])

    var all: [NodeChild] { children.withLock { $0 } }

    func append(_ child: NodeChild) { children.withLock { $0.append(child) } }

    /// Throws if a child exited that was not killed on purpose.
    func checkAlive(log: TickLog, during phase: String) throws {
        let killed = log.killed
        if let dead = all.first(where: { !killed.contains($0.index) && $0.hasExited }) {
            throw BenchError("\(dead.name) (pid \(dead.pid), status \(dead.exitStatus.map(String.init) ?? "?")) exited during \(phase)")
        }
    }

    /// Polls `probe` every millisecond until it returns a value; throws if a child exits that was
    /// not killed on purpose, or after `timeout`.
    func poll<T>(log: TickLog, during phase: String, within timeout: Duration, _ probe: () -> T?) async throws -> T {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let value = probe() { return value }
            try checkAlive(log: log, during: phase)
            guard ContinuousClock.now < deadline else { throw BenchError("\(phase): nothing within \(timeout)") }
            try await Task.sleep(for: .milliseconds(1))
        }
    }

    /// Sleeps, watching for children that exit.
    func pause(_ duration: Duration, log: TickLog) async throws {
        let end = ContinuousClock.now + duration
        while ContinuousClock.now < end {
            try checkAlive(log: log, during: "a pause between failovers")
            try await Task.sleep(for: min(.milliseconds(20), end - ContinuousClock.now))
        }
    }

    /// `shutdown` on the first live child, `close` on the other live ones, then end of input for
    /// all; children still running after 30 s are killed.
    func shutdownPool(log: TickLog) async throws {
        let killed = log.killed
        let live = all.filter { !killed.contains($0.index) }
        for child in all where killed.contains(child.index) { await child.kill() }
        if let first = live.first {
            _ = try await first.command("shutdown", timeout: .seconds(150))
            for child in live.dropFirst() { _ = try await child.command("close", timeout: .seconds(60)) }
        }
        for child in live { child.closeInput() }
        var stuck: [String] = []
        for child in live where !(await child.waitForExit(timeout: .seconds(30))) {
            stuck.append(child.name)
            await child.kill()
        }
        if !stuck.isEmpty { throw BenchError("\(stuck.joined(separator: ", ")) did not exit after the pool shutdown; killed") }
    }

    func killAll() async {
        for child in all { await child.kill() }
    }
}


/// `tick <name> <token> <delivered> missed=N dropped=N`.
private func parseTick(_ line: String, child: Int, read: Int64) -> TickLine? {
    guard line.hasPrefix("tick ") else { return nil }
    let parts = line.split(separator: " ")
    guard parts.count == 6, let token = Int64(parts[2]), let delivered = Int64(parts[3]),
          parts[4].hasPrefix("missed="), let missed = Int(parts[4].dropFirst("missed=".count)),
          parts[5].hasPrefix("dropped="), let dropped = Int(parts[5].dropFirst("dropped=".count))
    else { return nil }
    return TickLine(child: child, token: token, delivered: delivered, missed: missed, dropped: dropped, read: read)
}

/// A JSON number with 3 decimals at most; null when not finite.
private func jsonNumber(_ x: Double) -> String { x.isFinite ? format3(x) : "null" }

/// Wall-clock Unix microseconds (the clock of the children's tick lines).
func unixMicroseconds() -> Int64 {
    var spec = timespec()
    clock_gettime(CLOCK_REALTIME, &spec)
    return Int64(spec.tv_sec) * 1_000_000 + Int64(spec.tv_nsec) / 1000
}
