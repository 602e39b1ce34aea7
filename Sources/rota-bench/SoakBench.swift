import ArgumentParser
import Foundation
import RotaRedis
import RotaRedisServer

/// `rota-bench soak`: steady load for minutes; resident memory, open descriptors and SQLite size
/// of every `rota run` node sampled each minute must stay flat after the warm-up.
struct SoakBench: ParsableCommand, AsyncBody {
    static let configuration = CommandConfiguration(
        commandName: "soak",
        abstract: "Steady load (100 producers, 10,000 jobs, 1 s) for N minutes: memory, descriptors and database growth."
    )

    @OptionGroup var common: BenchOptions

    @Option(help: "Minutes of steady load measured (after one minute of warm-up).")
    var minutes = 10

    @Option(help: "rota run processes.")
    var nodes = 2

    @Option(help: "Producers (1 s interval each).")
    var producers = 100

    @Option(help: "Jobs per producer.")
    var jobs = 100

    @Option(help: "Seconds between samples.")
    var sampleSeconds = 60

    @Option(help: "Seconds of warm-up before the first sample (default: one sample period). SQLite's page cache (32 MiB per connection) grows with the database until it is full: a warm-up past that shows the plateau.")
    var warmupSeconds: Int?

    @Option(help: "Path of rota (default: next to this executable).")
    var rota: String?

    func run() throws {}

    func body(nioExecutor: Bool) async throws {
        try await common.withServer { configuration in
            try await withRotaRunNodes(rota: rota, redis: configuration, pool: "soak", nodes: nodes, producers: producers, jobs: jobs) { children, directory in
                let warmup = warmupSeconds ?? sampleSeconds
                if !common.json { print("soak: \(nodes) nodes, \(producers * jobs) jobs, warm-up \(warmup) s, then \(minutes) samples…") }
                try await Task.sleep(for: .seconds(warmup))
                struct Sample { let rss: Double; let fds: Int; let dbBytes: Int }
                func sample() -> Sample {
                    let pids = children.map(\.processIdentifier)
                    let rss = pids.map { rssMegabytes(pid: $0) }.reduce(0, +)
                    let fds = pids.map { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\($0)/fd").count) ?? 0 }.reduce(0, +)
                    let db = (0..<nodes).map { node -> Int in
                        ["", "-wal"].map { suffix in
                            let path = directory.appendingPathComponent("node\(node).sqlite\(suffix)").path
                            return ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.intValue ?? 0
                        }.reduce(0, +)
                    }.reduce(0, +)
                    return Sample(rss: rss, fds: fds, dbBytes: db)
                }
                var samples = [sample()]
                for index in 1...max(1, minutes) {
                    try await Task.sleep(for: .seconds(sampleSeconds))
                    guard children.allSatisfy(\.isRunning) else { throw ValidationError("a rota run process exited during the soak") }
                    samples.append(sample())
                    if !common.json {
                        let last = samples[samples.count - 1]
                        print("  sample \(index): rss \(format3(last.rss)) MB, fds \(last.fds), sqlite \(last.dbBytes / 1024) KiB")
                    }
                }
                guard let first = samples.first, let last = samples.last else { return }
                let rssGrowth = (last.rss - first.rss) / first.rss * 100
                // Growth over the second half alone: a plateau shows as ~0 here even if the first
                // samples still caught caches filling.
                let middle = samples[samples.count / 2]
                let lateGrowth = (last.rss - middle.rss) / middle.rss * 100
                let dbPerMinute = Double(last.dbBytes - first.dbBytes) / Double(max(1, minutes)) * 60 / Double(sampleSeconds) / 1_048_576
                let rows = [
                    Measurement(suite: "soak", metric: "rss_growth_pct", value: rssGrowth, unit: "%", reference: 5, ratio: nil),
                    Measurement(suite: "soak", metric: "rss_growth_second_half_pct", value: lateGrowth, unit: "%", reference: nil, ratio: nil),
                    Measurement(suite: "soak", metric: "fd_growth", value: Double(last.fds - first.fds), unit: "fds", reference: 0, ratio: nil),
                    Measurement(suite: "soak", metric: "rss_mb", value: last.rss, unit: "MB", reference: nil, ratio: nil),
                    Measurement(suite: "soak", metric: "sqlite_mb_per_minute", value: dbPerMinute, unit: "MB/min", reference: nil, ratio: nil),
                ]
                if common.json {
                    for row in rows { print(row.json) }
                } else {
                    printTable(rows)
                    print("(targets: rss_growth_pct ≤ 5 after warm-up, fd_growth = 0; SQLite grows with the rounds until `rota history prune` — sqlite_mb_per_minute sizes the retention)")
                }
            }
        }
    }
}
