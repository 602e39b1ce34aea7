import ArgumentParser
import Foundation
import RotaPlans
import RotaRedis
import RotaService

/// `rota plan`: the subcommands of ``Plan`` (read from its configuration, so they stay in step
/// with it) plus `diff`, which needs a pool.
struct PlanCommands: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: Plan.configuration.abstract,
        discussion: Plan.configuration.discussion,
        subcommands: Plan.configuration.subcommands + [PlanDiff.self],
        defaultSubcommand: Plan.configuration.defaultSubcommand
    )
}

/// What the next round of each producer would do to the pool, computed from plan files and the
/// pool's state in Redis. Nothing is applied.
struct PlanDiff: ParsableCommand, AsyncCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff",
        abstract: "Show what the next round of each producer would start, stop and restart in the pool (nothing is applied).",
        discussion: """
            For each producer of the pool in the plan files: the jobs desired at --at (now by default; \
            windows on the producer's time zone) that do not run are started, those running with \
            another payload restarted; exact mode stops the running jobs this producer started that \
            are no longer desired, additive mode the running ones listed under stop: or not desired.
            """
    )

    @Argument(help: "Plan files or directories of *.yaml files.")
    var paths: [String]

    @OptionGroup var poolOptions: PoolOptions

    @Option(help: "Plan as of this time (RFC 3339, or a duration meaning that long ago); now by default.")
    var at: String?

    @Option(help: "Output format: table or json.")
    var format: ReportFormat = .table

    enum Action: String {
        case start, restart, stop
    }

    struct Change {
        var producer: String
        var job: String
        var action: Action
        var handler: String?
        var reason: String
    }

    func execute() async throws {
        let instant = try time(at, option: "--at") ?? Date()
        let files: [PlanFile]
        do {
            files = try PlanParser.load(paths: paths, defaultPool: poolOptions.pool)
        } catch {
            throw fail(error)
        }
        let pool = poolOptions.pool
        let producers = files.filter { ($0.pool ?? pool) == pool }.flatMap(\.producers)
        var configuration = try requiredRedisConfiguration(poolOptions, command: "plan diff")
        configuration.commandConnections = 1
        let (changes, unchanged) = try await withPoolClient(configuration) { client in
            try await Self.diff(producers, at: instant, reader: try PoolReader(client: client, pool: pool))
        }
        switch format {
        case .json:
            print(jsonArray(changes.map { [("producer", .string($0.producer)), ("job", .string($0.job)), ("action", .string($0.action.rawValue)),
                ("handler", .optional($0.handler)), ("reason", .string($0.reason))] }), terminator: "")
        case .table:
            print(render(["PRODUCER", "JOB", "ACTION", "HANDLER", "REASON"],
                changes.map { [$0.producer, $0.job, $0.action.rawValue, $0.handler ?? "-", $0.reason] }, format: .table), terminator: "")
            let count = { (action: Action) in changes.filter { $0.action == action }.count }
            print("pool \(pool) at \(rfc3339(instant)): \(count(.start)) to start, \(count(.restart)) to restart, \(count(.stop)) to stop, \(unchanged) unchanged (\(producers.count) producer(s))")
        }
    }

    static func diff(_ producers: [ProducerDefinition], at instant: Date, reader: PoolReader) async throws -> (changes: [Change], unchanged: Int) {
        let bookkeeping = try await reader.pipeline(producers.map { RedisCommand("HKEYS", reader.mapKey("schedule-\($0.name)")) })
        var changes: [Change] = []
        var unchanged = 0
        for (index, producer) in producers.enumerated() {
            let zone = TimeZone(identifier: producer.timeZone) ?? TimeZone(secondsFromGMT: 0) ?? .current
            var desired: [(job: JobDefinition, payload: [UInt8])] = []
            var idle: [String] = []
            for job in producer.jobs {
                guard job.isDesired(at: instant, in: zone) else {
                    idle.append(job.key)
                    continue
                }
                do {
                    desired.append((job, try JobEnvelope(handler: job.handler, payload: job.payload).encoded()))
                } catch {
                    throw CommandFailure("producer \(producer.name), job \(job.key): \(error.message)")
                }
            }
            let desiredKeys = Set(desired.map(\.job.key))
            var stops: [String] = []
            switch producer.mode {
            case .exact:
                stops = PoolReader.keys(bookkeeping[index]).filter { !desiredKeys.contains($0) }.sorted()
            case .additive:
                var seen: Set<String> = []
                stops = (producer.stop + idle).filter { seen.insert($0).inserted }
            }
            let keys = desired.map(\.job.key) + stops
            let current = try await payloads(of: keys, reader: reader)
            for (job, payload) in desired {
                switch current[job.key] {
                case nil:
                    changes.append(Change(producer: producer.name, job: job.key, action: .start, handler: job.handler, reason: "desired, not running"))
                case payload?:
                    unchanged += 1
                case let running?:
                    let was = (try? JobEnvelope(decoding: running)).map { $0.handler == job.handler ? "payload changed" : "handler \($0.handler) → \(job.handler)" }
                    changes.append(Change(producer: producer.name, job: job.key, action: .restart, handler: job.handler, reason: was ?? "payload changed"))
                }
            }
            let listed = Set(producer.stop)
            for key in stops where current[key] != nil {
                let reason = producer.mode == .exact ? "started by this producer, no longer desired"
                    : listed.contains(key) ? "listed under stop:" : "not desired now"
                changes.append(Change(producer: producer.name, job: key, action: .stop,
                    handler: current[key].flatMap { try? JobEnvelope(decoding: $0).handler }, reason: reason))
            }
        }
        return (changes, unchanged)
    }

    /// The payloads in `job-payloads` of `keys` (absent: the job does not run).
    static func payloads(of keys: [String], reader: PoolReader) async throws -> [String: [UInt8]] {
        var result: [String: [UInt8]] = [:]
        var start = 0
        while start < keys.count {
            let chunk = Array(keys[start..<min(keys.count, start + 500)])
            start += chunk.count
            let arguments: [any RedisArgument] = ["HMGET", reader.mapKey("job-payloads")] + chunk.map { $0 as any RedisArgument }
            let reply = try await reader.pipeline([RedisCommand(arguments: arguments)])[0]
            for (key, value) in zip(chunk, reply.array ?? []) where !value.isNull {
                result[key] = value.bytes ?? []
            }
        }
        return result
    }
}
