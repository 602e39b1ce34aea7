import ArgumentParser
import Foundation
import RotaRedis
import RotaRedisServer
import RotaStore

/// `rota-bench service`: several `rota run` processes on one Redis planning many producers.
struct ServiceBench: ParsableCommand, AsyncBody {
    static let configuration = CommandConfiguration(
        commandName: "service",
        abstract: "Scheduler rounds: round time, tick-to-applied time and CPU per round with several rota run nodes."
    )

    @OptionGroup var common: BenchOptions

    @Option(help: "rota run processes.")
    var nodes = 3

    @Option(help: "Producers in the plan (1 s interval each).")
    var producers = 100

    @Option(help: "Jobs per producer.")
    var jobs = 100

    @Option(help: "Seconds measured (after the warm-up).")
    var seconds = 60

    @Option(help: "Seconds of warm-up: every job starts, nothing changes afterwards.")
    var warmup = 15

    @Option(help: "Path of rota (default: next to this executable).")
    var rota: String?

    @Flag(help: "Give the nodes a history key: every round is signed and every entry of the history stream verified.")
    var historyKey = false

    func run() throws {}

    func body(nioExecutor: Bool) async throws {
        try await common.withServer { configuration in
            try await withRotaRunNodes(rota: rota, redis: configuration, pool: "bench", nodes: nodes, producers: producers, jobs: jobs,
                historyKey: historyKey) { children, directory in
                if !common.json {
                    print("service: \(nodes) nodes, \(producers) producers x \(jobs) jobs, 1 s interval\(historyKey ? ", history key" : ""); "
                        + "warm-up \(warmup) s, measuring \(seconds) s…")
                }
                try await Task.sleep(for: .seconds(warmup))
                let cpuBefore = children.map { cpuSeconds(pid: $0.processIdentifier) * 1000 }
                let from = Date()
                try await Task.sleep(for: .seconds(seconds))
                let until = Date()
                let cpuAfter = children.map { cpuSeconds(pid: $0.processIdentifier) * 1000 }
                for child in children { kill(child.processIdentifier, SIGKILL) }
                for child in children { child.waitUntilExit() }
                // Every node records every round; node 0's history is the pool's.
                let store = try PlanStore.open(path: directory.appendingPathComponent("node0.sqlite").path)
                var filter = HistoryFilter()
                filter.pool = "bench"
                filter.since = from
                filter.until = until
                filter.limit = 1_000_000
                let rounds = try store.rounds(matching: filter).filter { $0.finishedAt != nil }
                guard !rounds.isEmpty else { throw ValidationError("no round recorded in the measured window") }
                let durations = rounds.compactMap { round in round.finishedAt.map { $0.timeIntervalSince(round.startedAt) * 1000 } }.sorted()
                let tickToApplied = rounds.compactMap { round in round.finishedAt.map { $0.timeIntervalSince(round.tick) * 1000 } }.sorted()
                let cpu = zip(cpuBefore, cpuAfter).map { $1 - $0 }.reduce(0, +)
                let expected = Double(producers * seconds)
                let rows = [
                    Measurement(suite: "service", metric: "round_p50_ms", value: percentile(durations, 50), unit: "ms", reference: 50, ratio: nil),
                    Measurement(suite: "service", metric: "round_p99_ms", value: percentile(durations, 99), unit: "ms", reference: 50,
                        ratio: 50 / percentile(durations, 99)),
                    Measurement(suite: "service", metric: "tick_to_applied_p99_ms", value: percentile(tickToApplied, 99), unit: "ms", reference: 100,
                        ratio: 100 / percentile(tickToApplied, 99)),
                    Measurement(suite: "service", metric: "cpu_ms_per_round", value: cpu / Double(rounds.count), unit: "ms", reference: nil, ratio: nil),
                    Measurement(suite: "service", metric: "rounds_recorded", value: Double(rounds.count), unit: "rounds", reference: expected,
                        ratio: Double(rounds.count) / expected),
                ]
                if common.json {
                    for row in rows { print(row.json) }
                } else {
                    printTable(rows)
                    print("(reference = the target; rounds_recorded reference = producers x seconds; cpu = all rota run processes)")
                }
            }
        }
    }
}

/// Runs `body` with `nodes` `rota run` processes on one Redis, planning a generated plan of
/// `producers` × `jobs` at 1 s in pool `pool` (`log` handler, 2 workers each, one SQLite file per
/// node in a temporary directory given to `body`). With `producers` 0 the nodes get no plan files:
/// they follow the pool's plan. With `historyKey`, they share a new history key. The processes are
/// killed and the directory removed when `body` returns or throws.
func withRotaRunNodes<R>(
    rota: String?, redis configuration: RedisConfiguration, pool: String, nodes: Int, producers: Int, jobs: Int, historyKey: Bool = false,
    _ body: ([Process], URL) async throws -> R
) async throws -> R {
    let executable = rota ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("rota").path
    guard FileManager.default.isExecutableFile(atPath: executable) else {
        throw ValidationError("rota not found at \(executable): build it first (swift build -c release --product rota)")
    }
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("rota-bench-\(pool)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory.appendingPathComponent("plans"), withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    var plan = "pool: \(pool)\nproducers:\n"
    for producer in 0..<producers {
        plan += "  - name: p\(producer)\n    every: 1s\n    mode: exact\n    jobs:\n"
        for job in 0..<jobs { plan += "      - {key: p\(producer)/j\(job), handler: log, payload: {n: \(job)}}\n" }
    }
    if producers > 0 { try plan.write(to: directory.appendingPathComponent("plans/\(pool).yaml"), atomically: true, encoding: .utf8) }
    let keyFile = directory.appendingPathComponent("history.key").path
    if historyKey { _ = try HistoryKey.create(path: keyFile) }
    var children: [Process] = []
    defer { for child in children where child.isRunning { kill(child.processIdentifier, SIGKILL) } }
    for node in 0..<nodes {
        let child = Process()
        child.executableURL = URL(fileURLWithPath: executable)
        let plans = producers > 0 ? ["--plans", directory.appendingPathComponent("plans").path] : []
        child.arguments = ["run"] + plans + [
            "--db", directory.appendingPathComponent("node\(node).sqlite").path,
            "--redis", configuration.urlForChildren, "--pool", pool, "--workers", "2", "--name", "\(pool)-\(node)", "--log-level", "error",
        ] + (historyKey ? ["--history-key-file", keyFile] : [])
        child.standardOutput = FileHandle.nullDevice
        child.standardError = FileHandle.nullDevice
        try child.run()
        children.append(child)
    }
    return try await body(children, directory)
}

extension RedisConfiguration {
    /// A URL a child process can use for the same server.
    var urlForChildren: String {
        let place = endpoint.description
        if place.hasPrefix("unix:") { return "unix://" + place.dropFirst("unix:".count) }
        let auth = password.map { ":\($0)@" } ?? ""
        return "redis://\(auth)\(place)"
    }
}
