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
        abstract: "Compare plan files with the pool: what `plan apply` would change in the pool's plan, and what the next round of each producer would start, stop and restart (nothing is applied).",
        discussion: """
            PLAN: each producer of the files (and, with --prune, each of the pool's producers the files lack) \
            as `rota plan apply` would leave it: created, updated, unchanged or retired, against the pool's plan revision.
            JOBS: for each producer of the pool in the plan files: the jobs desired at --at (now by default; \
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

    @Flag(help: "Show the pool's producers the files lack as retired (what `plan apply --prune` would do).")
    var prune = false

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
        let updates = files.filter { ($0.pool ?? pool) == pool }
            .flatMap { file in file.producers.map { PoolPlan.Update(definition: $0, source: file.path) } }
        let (planned, changes, unchanged) = try await withPoolClient(configuration) { client in
            let plan: PoolPlan.ApplyResult
            do {
                plan = try await PoolPlan(pool: pool, client: client).apply(updates, expectRevision: nil, prune: prune, dryRun: true,
                    actor: currentActor())
            } catch let error as ServiceError {
                throw CommandFailure(error.message)
            }
            let (changes, unchanged) = try await Self.diff(producers, at: instant, reader: try PoolReader(client: client, pool: pool))
            return (plan, changes, unchanged)
        }
        switch format {
        case .json:
            let plan: [JSONValue] = planned.changes.map {
                .object([("producer", .string($0.producer)), ("outcome", .string($0.outcome.rawValue)), ("revision", .int($0.revision))])
            }
            let jobs: [JSONValue] = changes.map { .object([("producer", .string($0.producer)), ("job", .string($0.job)),
                ("action", .string($0.action.rawValue)), ("handler", .optional($0.handler)), ("reason", .string($0.reason))]) }
            print(JSONValue.object([("pool_revision", .int(planned.previousRevision)), ("plan", .array(plan)), ("jobs", .array(jobs))]).text)
        case .table:
            print("PLAN (pool \(pool) at revision \(planned.previousRevision))")
            print(render(["PRODUCER", "OUTCOME"], planned.changes.map { [$0.producer, $0.outcome.rawValue] }, format: .table))
            print("JOBS")
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
