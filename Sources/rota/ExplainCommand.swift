import ArgumentParser
import Foundation
import Rota
import RotaRedis
import RotaService
import RotaStore

/// Formats of `rota explain`: a short report for people, or ``JobExplanation`` as JSON.
enum ExplainFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

struct ExplainCommand: ParsableCommand, AsyncCommand {
    static let configuration = CommandConfiguration(
        commandName: "explain",
        abstract: "Why a job runs or does not run: the producers listing it, their windows, pauses and retirements, the last rounds that acted on it, its owner and when it runs next.",
        discussion: """
            Reads the pool's plan and state from Redis (--redis; it does not join the pool) and the \
            rounds from a node's history (--db); either one alone answers what it can. Exit codes: 0, \
            4 when no producer lists the job and the pool does not hold it, 1 otherwise.
            """
    )

    @Argument(help: "The job's key.")
    var job: String

    @Option(help: "The instant to explain: RFC 3339, or a duration meaning that long ago; default: now.")
    var at: String?

    @Option(help: "A node's SQLite history (rounds; retired producers' definitions).")
    var db: String?

    @OptionGroup var poolOptions: PoolOptions

    @Option(help: "Output format: text or json.")
    var format: ExplainFormat = .text

    func execute() async throws {
        let instant: Date
        if let at {
            guard let parsed = parseTime(at) else { throw invalidTime("--at", at) }
            instant = parsed
        } else {
            instant = Date()
        }
        let redis = try poolOptions.redisConfiguration()
        guard redis != nil || db != nil else { throw CommandFailure("rota explain needs --redis URL (or ROTA_REDIS_URL), --db FILE, or both") }
        let store = try db.map(openStore)
        let pool = poolOptions.pool
        let job = job
        let explanation: JobExplanation
        if var configuration = redis {
            configuration.commandConnections = 1
            explanation = try await withPoolClient(configuration) { client in
                var options = Node.Options()
                options.clientOnly = true
                options.name = "rota-explain"
                // A client-only node that never runs: its queries read Redis without joining the pool.
                let node: Node
                let plan: PoolPlan
                do {
                    node = try Node(pool: pool, client: client, options: options)
                    plan = try PoolPlan(pool: pool, client: client)
                } catch {
                    throw CommandFailure("--pool: \(poolMessage(error))")
                }
                return try await Self.compute(job: job, at: instant, pool: pool, plan: plan, node: node, store: store)
            }
        } else {
            explanation = try await Self.compute(job: job, at: instant, pool: pool, plan: nil, node: nil, store: store)
        }
        switch format {
        case .json:
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            // snake_case like the other commands' JSON (`last_seen`, `plan_revision`).
            encoder.keyEncodingStrategy = .convertToSnakeCase
            encoder.dateEncodingStrategy = .custom { date, encoder in
                var container = encoder.singleValueContainer()
                try container.encode(rfc3339(date))
            }
            print(String(decoding: try encoder.encode(explanation), as: UTF8.self))
        case .text:
            print(Self.text(explanation), terminator: "")
        }
        if !explanation.found { throw ExitCode(4) }
    }

    static func compute(job: String, at instant: Date, pool: String, plan: PoolPlan?, node: Node?, store: PlanStore?) async throws -> JobExplanation {
        do {
            return try await JobExplanation.compute(job: job, at: instant, pool: pool, plan: plan, node: node, store: store)
        } catch {
            throw CommandFailure(error.message)
        }
    }

    /// The report for people. Each line is escaped whole (``terminalSafe(_:)``) once built, so a
    /// newline or ESC inside a value read from Redis or the history stays on its line, escaped.
    static func text(_ e: JobExplanation) -> String {
        func date(_ value: Date?) -> String { value.map(rfc3339) ?? "-" }
        var lines: [String] = []
        func line(_ text: String = "") { lines.append(text) }
        line("job \(e.job) in pool \(e.pool) at \(rfc3339(e.at))")
        if !e.found { line("not found: no producer lists it and the pool does not hold it") }
        if e.producers.isEmpty {
            line()
            line("no producer lists it")
        }
        for listing in e.producers {
            line()
            line("producer \(listing.producer) (revision \(listing.revision), \(listing.mode), \(listing.timeZone)), handler \(listing.handler): "
                + (listing.desired ? "wants it now" : "does not want it now"))
            switch listing.state {
            case .active: break
            case .paused:
                if let pause = listing.pause {
                    line("  paused by \(pause.by) at \(date(pause.at)): \(pause.reason)" + (pause.until.map { ", until \(rfc3339($0))" } ?? ", until resumed")
                        + (pause.stopJobs ? " (its jobs stopped)" : ""))
                }
            case .retired:
                let by = listing.retirement.map { $0.by.isEmpty ? "" : " by \($0.by) at \(date($0.at))" } ?? ""
                line("  retired\(by): it plans nothing more")
            }
            let window = listing.window
            if let cron = window.cron {
                line("  window '\(cron)': " + (window.open ? "open" : "closed") + " at \(window.localTime)")
                for field in window.closedBy {
                    line("    closed by the \(field.field) field '\(field.expression)' (the clock's \(field.field) is \(field.value))")
                }
            } else {
                line("  no window (wanted at all times within its bounds); producer clock \(window.localTime)")
            }
            if let dst = window.dst { line("  \(dst.message)") }
            if listing.from != nil || listing.until != nil {
                let state = switch listing.bounds {
                case .open: "within them"
                case .beforeFrom: "not yet: before from"
                case .afterUntil: "ended: at or after until"
                }
                line("  bounds from \(date(listing.from)) until \(date(listing.until)): \(state)")
            }
            if !listing.desired {
                line("  next wanted: " + (listing.nextDesired.map(rfc3339) ?? "never within a year"))
            }
        }
        if let placement = e.placement {
            line()
            switch placement.status {
            case .running:
                let node = placement.node.map { id in placement.nodeName.map { "\($0) (\(id))" } ?? id } ?? "an unrecorded node"
                line("pool: running on worker \(placement.worker ?? "-") of node \(node)")
            case .unplaced:
                line("pool: held unplaced: no active worker has capability '\(placement.requirement ?? "-")' (it starts when a worker with it joins)")
            case .awaitingRequeue:
                line("pool: awaiting requeue: its payload is in the pool without an owner (its worker left; the pool hands it to another)")
            case .noWorker:
                line("pool: waiting: the pool has no active worker")
            case .absent:
                // Wanted but absent: between the window opening and its producer's next tick, or
                // its starts fail (the rounds below say which).
                if let next = e.nextRun, next.now {
                    line("pool: not in the pool yet: the next round of \(next.producer ?? "-") starts it (see the rounds below for failed starts)")
                } else {
                    line("pool: not in the pool")
                }
            }
            if let handler = placement.handler { line("  handler \(handler), \(placement.activeWorkers) active worker(s) in the pool") }
        }
        if !e.rounds.isEmpty {
            line()
            line("last rounds that acted on it (newest first)")
            for round in e.rounds {
                let actions = round.actions.map { action in
                    "\(action.action) \(action.outcome)" + (action.reason.map { " (\($0))" } ?? "") + (action.error.map { ": \($0)" } ?? "")
                }.joined(separator: "; ")
                line("  \(date(round.tick))  \(round.id) by \(round.node): \(actions.isEmpty ? "-" : actions)"
                    + (round.error.map { " [round error: \($0)]" } ?? ""))
            }
        }
        line()
        if let next = e.nextRun {
            line("next run: " + (next.now ? "now" : date(next.at)) + " (producer \(next.producer ?? "-"))")
        } else {
            line("next run: none: no producer wants it within a year")
        }
        for note in e.notes { line("note: \(note)") }
        return lines.map(terminalSafe).joined(separator: "\n") + "\n"
    }
}
