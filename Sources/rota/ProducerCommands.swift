import ArgumentParser
import Foundation
import Rota
import RotaPlans
import RotaRedis
import RotaService

// The pool's plan from the command line: `rota plan apply --redis` (PlanCommands.swift) and
// `rota producer pause|resume|trigger|list`. Exit codes beyond 0/1: 5 the plan changed meanwhile,
// 6 no such producer, 7 the producer is retired, 8 its state refuses (resume of a producer that
// is not paused, trigger of a paused one), 9 no node plans it (trigger), 64 a bad option value.

/// The pool's plan over a client connected to `options.redis`.
func withPoolPlan<R: Sendable>(_ options: PoolOptions, command: String, _ body: (PoolPlan) async throws -> R) async throws -> R {
    var configuration = try requiredRedisConfiguration(options, command: command)
    configuration.commandConnections = 1
    return try await withPoolClient(configuration) { client in
        let plan: PoolPlan
        do {
            plan = try PoolPlan(pool: options.pool, client: client)
        } catch {
            throw CommandFailure("--pool: \((error as? ServiceError)?.message ?? "\(error)")")
        }
        do {
            return try await body(plan)
        } catch let error as ServiceError {
            throw CommandFailure(error.message)
        }
    }
}

/// An apply to the pool's plan; `refusal` set when it was refused (nothing written).
struct AppliedToPool: Sendable {
    var result: PoolPlan.ApplyResult
    var refusal: ExitCode?
}

/// Applies `updates` as a compare-and-set against `expectRevision`, or the revision read first:
/// two concurrent applies never both write over a plan they did not see.
func applyToPool(_ updates: [PoolPlan.Update], poolOptions: PoolOptions, expectRevision: Int?, prune: Bool, dryRun: Bool) async throws
    -> AppliedToPool
{
    try await withPoolPlan(poolOptions, command: "plan apply") { plan in
        let expected: Int
        if let expectRevision {
            expected = expectRevision
        } else {
            expected = try await plan.read().revision
        }
        let result = try await plan.apply(updates, expectRevision: expected, prune: prune, dryRun: dryRun, actor: currentActor())
        guard !result.conflict else {
            let basis = expectRevision != nil ? "--expect-revision \(expected)" : "revision \(expected) (read before applying)"
            return AppliedToPool(result: result, refusal: failure(
                "the pool's plan of pool \(poolOptions.pool) is at revision \(result.revision), not \(basis): someone else changed it meanwhile; nothing written (see `rota plan diff`, then apply again)",
                exitCode: 5))
        }
        return AppliedToPool(result: result, refusal: nil)
    }
}

func printApplied(_ result: PoolPlan.ApplyResult, format: OutputFormat, pool: String, dryRun: Bool) {
    guard !result.conflict else { return }
    switch format {
    case .json:
        let changes: [JSONValue] = result.changes.map {
            .object([("producer", .string($0.producer)), ("outcome", .string($0.outcome.rawValue)), ("revision", .int($0.revision))])
        }
        print(JSONValue.object([
            ("pool", .string(pool)), ("previous_revision", .int(result.previousRevision)), ("revision", .int(result.revision)),
            ("dry_run", .raw(dryRun ? "true" : "false")), ("changes", .array(changes)),
        ]).text)
    case .table, .csv:
        print(render(["PRODUCER", "OUTCOME", "REVISION"], result.changes.map { [$0.producer, $0.outcome.rawValue, String($0.revision)] },
            format: format), terminator: "")
        guard format == .table else { return }
        let count = { (outcome: PoolPlan.ApplyResult.Outcome) in result.changes.filter { $0.outcome == outcome }.count }
        let revisions = result.changed ? "revision \(result.previousRevision) → \(result.revision)" : "revision \(result.revision), unchanged"
        print("pool \(pool): \(revisions): \(count(.created)) created, \(count(.updated)) updated, \(count(.unchanged)) unchanged, "
            + "\(count(.retired)) retired" + (dryRun ? " (dry run: nothing written)" : ""))
    }
}

/// The refusal of a pause, resume or trigger, as its message and exit code.
func refusal(_ refusal: PoolPlan.Refusal, producer: String, pool: String) -> ExitCode {
    switch refusal {
    case .unknownProducer: return failure("no producer '\(producer)' in the plan of pool \(pool) (see `rota producer list`)", exitCode: 6)
    case .retired: return failure("producer '\(producer)' is retired from the plan of pool \(pool)", exitCode: 7)
    case .notPaused: return failure("producer '\(producer)' is not paused", exitCode: 8)
    case .paused: return failure("producer '\(producer)' is paused: resume it first (`rota producer resume \(producer)`)", exitCode: 8)
    case .pauseChanged: return failure("producer '\(producer)' was paused again meanwhile", exitCode: 8)
    }
}

/// A producer name as given on the command line: the pool's rules, checked before any I/O.
func checkProducerName(_ name: String) throws {
    let reserved: Set<Character> = [" ", "*", "?", "[", "]", "{", "}", ":", "=", "\0"]
    guard !name.isEmpty, name.count <= 200, !name.contains(where: { reserved.contains($0) || $0.isNewline }) else {
        throw ValidationError("'\(name.prefix(80))' is not a producer name (1-200 characters, none of space * ? [ ] { } : =)")
    }
}

/// The producer a command acts on, and its pool.
struct ProducerTarget: ParsableArguments {
    @Argument(help: "The producer.")
    var name: String

    @OptionGroup var poolOptions: PoolOptions

    func validate() throws { try checkProducerName(name) }
}

struct ProducerCommands: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "producer",
        abstract: "Pause, resume, trigger and list the producers of a pool's plan.",
        discussion: """
            Pauses, resumes and triggers are pool-wide, obeyed by every node within one interval, and recorded \
            in every node's history (`plan_event`, the `producer_events` view) with who did it and why.
            Exit codes: 0 done, 1 failure, 6 no such producer, 7 the producer is retired, 8 its state refuses \
            (resume of a producer that is not paused, trigger of a paused one), 9 no node plans it (trigger), \
            64 a bad option value (e.g. --until in the past).
            """,
        subcommands: [Pause.self, Resume.self, Trigger.self, List.self]
    )

    struct Pause: ParsableCommand, AsyncCommand {
        static let configuration = CommandConfiguration(
            abstract: "Pause a producer pool-wide: it plans nothing until resumed (its running jobs keep running unless --stop-jobs).")

        @OptionGroup var target: ProducerTarget
        var name: String { target.name }
        var poolOptions: PoolOptions { target.poolOptions }

        @Option(help: "Why (recorded in the history).")
        var reason: String

        @Option(help: "Resume by itself at this time: RFC 3339, or a duration from now (e.g. 30m, 2h).")
        var until: String?

        @Flag(help: "Also stop the jobs it started (at once, in one round recorded with the reason 'paused').")
        var stopJobs = false

        func validate() throws {
            guard !reason.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { throw ValidationError("--reason must not be empty") }
            guard reason.count <= 1000 else { throw ValidationError("--reason is limited to 1000 characters") }
            _ = try untilDate()
        }

        func untilDate(now: Date = Date()) throws -> Date? {
            guard let until else { return nil }
            let date: Date
            if let absolute = RFC3339.date(from: until) {
                date = absolute
            } else if let duration = parseDuration(until) {
                date = now.addingTimeInterval(Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18)
            } else {
                throw ValidationError("--until '\(until)' is not an RFC 3339 time or a duration from now (e.g. 30m, 2h)")
            }
            guard date > now else { throw ValidationError("--until \(rfc3339(date)) is in the past") }
            guard date.timeIntervalSince(now) <= 366 * 86_400 else { throw ValidationError("--until is limited to a year from now") }
            return date
        }

        func execute() async throws {
            let until = try untilDate()
            let outcome = try await withPoolPlan(poolOptions, command: "producer pause") { plan in
                try await plan.pause(name, reason: reason, until: until, stopJobs: stopJobs, actor: currentActor())
            }
            switch outcome {
            case .failure(let refused):
                throw refusal(refused, producer: name, pool: poolOptions.pool)
            case .success(let wasPaused):
                print("paused \(name)" + (until.map { " until \(rfc3339($0))" } ?? "") + (wasPaused ? " (its earlier pause replaced)" : "")
                    + (stopJobs ? "; its jobs are being stopped" : "; its running jobs keep running"))
            }
            if stopJobs {
                // The stopping round now, on one node, rather than at the next tick.
                _ = try? await withClientNode(poolOptions, command: "producer-pause") { node in
                    try await node.triggerTicker(named: "schedule-" + name)
                }
            }
        }
    }

    struct Resume: ParsableCommand, AsyncCommand {
        static let configuration = CommandConfiguration(abstract: "Resume a paused producer pool-wide.")

        @OptionGroup var target: ProducerTarget
        var name: String { target.name }
        var poolOptions: PoolOptions { target.poolOptions }

        @Option(help: "Why (recorded in the history).")
        var reason: String?

        func execute() async throws {
            let outcome = try await withPoolPlan(poolOptions, command: "producer resume") { plan in
                try await plan.resume(name, actor: currentActor(), reason: reason)
            }
            if case .failure(let refused) = outcome { throw refusal(refused, producer: name, pool: poolOptions.pool) }
            print("resumed \(name): it plans again from its next tick")
        }
    }

    struct Trigger: ParsableCommand, AsyncCommand {
        static let configuration = CommandConfiguration(
            abstract: "Plan one round of a producer now, on exactly one node (fenced like a tick; its regular ticks keep their times).")

        @OptionGroup var target: ProducerTarget
        var name: String { target.name }
        var poolOptions: PoolOptions { target.poolOptions }

        func execute() async throws {
            let state = try await withPoolPlan(poolOptions, command: "producer trigger") { plan in try await plan.producer(name) }
            guard state.producer != nil else {
                throw refusal(state.retired != nil ? .retired : .unknownProducer, producer: name, pool: poolOptions.pool)
            }
            if state.pause?.holds(at: Date()) == true { throw refusal(.paused, producer: name, pool: poolOptions.pool) }
            let outcome: Node.TriggerOutcome
            do {
                outcome = try await withClientNode(poolOptions, command: "producer-trigger") { node in
                    try await node.triggerTicker(named: "schedule-" + name)
                }
            } catch let error as PoolError where error.code == .invalidArgument {
                throw failure("no node plans producer '\(name)' now (\(error.message)): start `rota run` for pool \(poolOptions.pool)", exitCode: 9)
            }
            switch outcome {
            case .alreadyPending:
                print("a triggered round of \(name) is pending already")
            case .triggered, .dueNow:
                let noted = try await withPoolPlan(poolOptions, command: "producer trigger") { plan in
                    try await plan.noteTrigger(name, actor: currentActor())
                }
                if case .failure(let refused) = noted { throw refusal(refused, producer: name, pool: poolOptions.pool) }
                print("triggered \(name): one round now, planned by one node")
            }
        }
    }

    struct List: ParsableCommand, AsyncCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the pool's producers: revision, mode, interval, paused (why, until, by whom), last round, next tick, missed ticks.")

        @OptionGroup var poolOptions: PoolOptions

        @Option(help: "Output format: table or json.")
        var format: ReportFormat = .table

        func execute() async throws {
            var configuration = try requiredRedisConfiguration(poolOptions, command: "producer list")
            configuration.commandConnections = 1
            let pool = poolOptions.pool
            let (producers, revision) = try await withPoolClient(configuration) { client in
                let reader = try PoolReader(client: client, pool: pool)
                return try await ProducerInfo.load(reader)
            }
            switch format {
            case .json:
                print(JSONValue.object([("pool", .string(pool)), ("revision", .int(revision)), ("producers", .array(producers.map(\.json)))]).text)
            case .table:
                print("pool \(pool): plan revision \(revision), \(producers.count) producer(s)")
                print(render(["NAME", "REVISION", "MODE", "INTERVAL", "STATE", "LAST ROUND", "LAST TICK", "NEXT TICK", "MISSED"],
                    producers.map { [$0.name, String($0.revision), $0.mode ?? "-", $0.interval ?? "-", $0.stateText, $0.last?.id ?? "-",
                        $0.last.map { rfc3339($0.tick) } ?? "-", $0.nextTick.map(rfc3339) ?? "-", $0.last.map { String($0.missed) } ?? "-"] },
                    format: .table), terminator: "")
            }
        }
    }
}

/// One live producer of the pool's plan with its state: what `rota producer list` and `rota
/// status` show.
struct ProducerInfo {
    var name: String
    var revision: Int
    var mode: String?
    var interval: String?
    var pause: PlanPause?
    var last: LastRound?
    var nextTick: Date?
    var jobs = 0

    var stateText: String {
        guard let pause else { return "active" }
        var text = "paused by \(pause.actor) at \(rfc3339(pause.at)): \(pause.reason)"
        if let until = pause.until { text += " (until \(rfc3339(until)))" }
        if pause.stopJobs { text += " [jobs stopped]" }
        return text
    }

    var json: JSONValue {
        func date(_ value: Date?) -> JSONValue { .optional(value.map(rfc3339)) }
        let paused: JSONValue = pause.map { pause in
            .object([("reason", .string(pause.reason)), ("until", date(pause.until)), ("by", .string(pause.actor)), ("at", date(pause.at)),
                ("stop_jobs", .raw(pause.stopJobs ? "true" : "false"))])
        } ?? .null
        return .object([
            ("name", .string(name)), ("revision", .int(revision)), ("mode", .optional(mode)), ("interval", .optional(interval)),
            ("paused", paused), ("planner", .optional(last?.node)), ("last_round", .optional(last?.id)), ("last_tick", date(last?.tick)),
            ("last_error", .optional(last?.error)), ("missed_ticks", last.map { .int($0.missed) } ?? .null),
            ("next_tick", date(nextTick)), ("jobs", .int(jobs)),
        ])
    }

    /// The live producers (by name) and the plan's revision, from the plan, the per-producer last
    /// rounds, the tickers and the schedules' bookkeeping: a few reads however long the history.
    static func load(_ reader: PoolReader) async throws -> (producers: [ProducerInfo], revision: Int) {
        let plan: PoolPlan
        do {
            plan = try PoolPlan(pool: reader.space.name, client: reader.client)
        } catch {
            throw CommandFailure("--pool: \(error.message)")
        }
        let snapshot: PlanSnapshot
        let lastRounds: [String: LastRound]
        do {
            snapshot = try await plan.read()
            lastRounds = try await plan.lastRounds()
        } catch let error as ServiceError {
            throw CommandFailure(error.message)
        }
        let tickers = PoolReader.fields(try await reader.pipeline([reader.hash(reader.mapKey("tickers"))])[0])
        let names = snapshot.producers.keys.sorted()
        let bookkeeping = try await reader.pipeline(names.map { RedisCommand("HKEYS", reader.mapKey("schedule-\($0)")) })
        var producers: [ProducerInfo] = []
        for (index, name) in names.enumerated() {
            guard let producer = snapshot.producers[name] else { continue }
            let definition = try? ProducerDefinition(canonicalJSON: producer.definition)
            let ticker = tickers["schedule-" + name].flatMap(parseTickerEntry)
            producers.append(ProducerInfo(
                name: name, revision: producer.revision, mode: definition?.mode.rawValue,
                interval: ticker?.interval ?? definition.map { formatPlanDuration($0.interval) },
                // A pause whose `until` passed no longer holds (its producer's next round ends it).
                pause: snapshot.paused[name].flatMap { $0.holds(at: Date()) ? $0 : nil }, last: lastRounds[name], nextTick: ticker?.next, jobs: PoolReader.keys(bookkeeping[index]).count))
        }
        return (producers, snapshot.revision)
    }
}

/// `1m30s`-style text of a plan interval.
func formatPlanDuration(_ duration: Duration) -> String {
    var milliseconds = duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
    var text = ""
    for (unit, size) in [("h", Int64(3_600_000)), ("m", 60_000), ("s", 1000), ("ms", 1)] where milliseconds >= size {
        text += "\(milliseconds / size)\(unit)"
        milliseconds %= size
    }
    return text.isEmpty ? "0s" : text
}
