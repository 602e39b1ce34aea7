import ArgumentParser
import Foundation
import RotaPlans
import RotaRedis
import RotaService
import RotaStore

/// `rota-bench plan`: how long a change of the pool's plan takes to reach planning.
struct PlanBench: ParsableCommand, AsyncBody {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Plan changes: `rota plan apply` started → the first round planned with the new revision, with several rota run nodes following the pool's plan.",
        discussion: "Each apply starts at a random phase of the producer's interval. The time includes the apply process's start and its trigger of the changed producer."
    )

    @OptionGroup var common: BenchOptions

    @Option(help: "rota run processes (following the pool's plan, no plan files).")
    var nodes = 3

    @Option(help: "Applies measured (each waits for its first round).")
    var applies = 30

    @Option(help: "The producer's interval, in milliseconds.")
    var intervalMs = 1000

    @Option(help: "Jobs of the producer (each apply changes their payloads: its first round restarts them).")
    var jobs = 10

    @Option(help: "Path of rota (default: next to this executable).")
    var rota: String?

    @Flag(help: "Print every sample too.")
    var samples = false

    var executable: String {
        rota ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("rota").path
    }

    func run() throws {}

    func planText(version: Int) -> String {
        var text = "producers:\n  - name: changing\n    every: \(intervalMs)ms\n    mode: exact\n    jobs:\n"
        for job in 0..<jobs { text += "      - {key: changing/j\(job), handler: log, payload: {version: \(version)}}\n" }
        return text
    }

    /// `rota plan apply FILE` to completion; returns the revision it printed.
    func apply(_ file: URL, redis: RedisConfiguration, pool: String) throws -> Int {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["plan", "apply", file.path, "--redis", redis.urlForChildren, "--pool", pool, "--format", "json"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0,
              let object = try JSONSerialization.jsonObject(with: data) as? [String: Any], let revision = object["revision"] as? Int else {
            throw ValidationError("rota plan apply failed (\(process.terminationStatus)): \(String(decoding: data, as: UTF8.self))")
        }
        return revision
    }

    func body(nioExecutor: Bool) async throws {
        let pool = "planbench"
        try await common.withServer { configuration in
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("rota-bench-plan-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            let file = directory.appendingPathComponent("plan.yaml")
            try planText(version: 0).write(to: file, atomically: true, encoding: .utf8)
            _ = try apply(file, redis: configuration, pool: pool)
            try await withRotaRunNodes(rota: rota, redis: configuration, pool: pool, nodes: nodes, producers: 0, jobs: 0) { children, directory in
                if !common.json { print("plan: \(nodes) nodes following the pool's plan, one producer of \(jobs) jobs every \(intervalMs) ms; \(applies) applies…") }
                let store = try PlanStore.open(path: directory.appendingPathComponent("node0.sqlite").path)
                func firstRound(revision: Int, timeout: Duration) async throws -> RoundRecord {
                    let deadline = ContinuousClock.now + timeout
                    var filter = HistoryFilter()
                    filter.pool = pool
                    filter.producer = "changing"
                    filter.limit = 50
                    while ContinuousClock.now < deadline {
                        if let round = try store.rounds(matching: filter).filter({ $0.revision == revision }).min(by: { $0.startedAt < $1.startedAt }) {
                            return round
                        }
                        try await Task.sleep(for: .milliseconds(10))
                    }
                    throw ValidationError("no round with revision \(revision) within \(timeout)")
                }
                // Every node ready and planning: node 0 has recorded rounds of the first revision.
                _ = try await firstRound(revision: 1, timeout: .seconds(60))
                var latencies: [Double] = []
                for version in 1...applies {
                    // A random phase of the interval: applies come whenever people make them.
                    try await Task.sleep(for: .milliseconds(Int.random(in: 0..<intervalMs)))
                    try planText(version: version).write(to: file, atomically: true, encoding: .utf8)
                    let applied = Date()
                    let revision = try apply(file, redis: configuration, pool: pool)
                    let round = try await firstRound(revision: revision, timeout: .seconds(30))
                    latencies.append(round.startedAt.timeIntervalSince(applied) * 1000)
                }
                for child in children { kill(child.processIdentifier, SIGKILL) }
                for child in children { child.waitUntilExit() }
                latencies.sort()
                if samples && !common.json { print("samples (ms): " + latencies.map { String(Int($0)) }.joined(separator: " ")) }
                let target = 2 * Double(intervalMs) + 100
                let rows = [
                    Measurement(suite: "plan", metric: "plan_apply_to_planned_p50_ms", value: percentile(latencies, 50), unit: "ms",
                        reference: Double(intervalMs) / 2, ratio: nil),
                    Measurement(suite: "plan", metric: "plan_apply_to_planned_ms", value: percentile(latencies, 99), unit: "ms",
                        reference: target, ratio: target / percentile(latencies, 99)),
                ]
                if common.json {
                    for row in rows { print(row.json) }
                } else {
                    printTable(rows)
                    print("(p99 reference = the target, 2 × interval + 100 ms; p50 reference = half an interval, the mean wait for the next tick)")
                }
            }
        }
    }
}
