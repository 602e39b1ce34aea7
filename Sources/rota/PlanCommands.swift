import ArgumentParser
import Foundation
import RotaPlans
import RotaService
import RotaStore

struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate, apply and inspect plan files.",
        subcommands: [Validate.self, Apply.self, Show.self, Windows.self]
    )

    struct Validate: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Check plan files; print every problem as FILE:LINE:COLUMN: error: MESSAGE.")

        @Argument(help: "Plan files or directories of *.yaml files.")
        var paths: [String]

        @Option(help: "Pool for files that name none.")
        var pool: String?

        func run() throws {
            do {
                let files = try PlanParser.load(paths: paths, defaultPool: pool)
                let producers = files.reduce(0) { $0 + $1.producers.count }
                let jobs = files.reduce(0) { $0 + $1.producers.reduce(0) { $0 + $1.jobs.count } }
                print("ok: \(files.count) file(s), \(producers) producer(s), \(jobs) job(s)")
            } catch {
                throw fail(error)
            }
        }
    }

    struct Apply: ParsableCommand, AsyncCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write the producers of plan files to the pool's plan: one atomic step, one new revision; a bad file changes nothing.",
            discussion: """
                With --redis, the files' producers (of --pool) are written to the pool's plan in Redis, which every \
                `rota run` node plans from: created, updated, unchanged and (with --prune) retired producers are \
                printed with the new revision. The write is a compare-and-set against the revision read first \
                (or --expect-revision): when someone else changed the plan meanwhile nothing is written.
                With --db instead, the files are stored in a local database only (validation and previews).
                Exit codes: 0 applied (or nothing to change), 1 invalid files or another failure, 5 the pool's \
                plan is at another revision than expected: nothing written.
                """
        )

        @Argument(help: "Plan files or directories of *.yaml files.")
        var paths: [String]

        @OptionGroup var poolOptions: PoolOptions

        @Option(help: "A local SQLite database instead of the pool (created on first use).")
        var db: String?

        @Option(help: "Write only if the pool's plan is at this revision (exit code 5 otherwise).")
        var expectRevision: Int?

        @Flag(help: "Retire the pool's producers that the files do not define: their jobs are stopped.")
        var prune = false

        @Flag(help: "Show what would change; write nothing.")
        var dryRun = false

        @Option(help: "Output format: table, json or csv.")
        var format: OutputFormat = .table

        func execute() async throws {
            let files: [PlanFile]
            do {
                files = try PlanParser.load(paths: paths, defaultPool: poolOptions.pool)
            } catch {
                throw fail(error)
            }
            guard poolOptions.redisURL != nil else {
                guard let db else {
                    throw CommandFailure("rota plan apply writes to a pool: give --redis URL (or --db FILE to store the files in a local database)")
                }
                try applyLocally(files, db: db)
                return
            }
            guard db == nil else { throw CommandFailure("give --redis (the pool's plan) or --db (a local database), not both") }
            if let expectRevision, expectRevision < 0 { throw ValidationError("--expect-revision must be 0 or more") }
            let updates = files.filter { ($0.pool ?? poolOptions.pool) == poolOptions.pool }
                .flatMap { file in file.producers.map { PoolPlan.Update(definition: $0, source: file.path) } }
            let outcome = try await applyToPool(updates, poolOptions: poolOptions, expectRevision: expectRevision, prune: prune,
                dryRun: dryRun)
            printApplied(outcome.result, format: format, pool: poolOptions.pool, dryRun: dryRun)
            if let refusal = outcome.refusal { throw refusal }
            // Updated producers plan their new revision now, retired ones their last round (on
            // one node each, fenced like a tick), rather than at their next tick.
            let touched = outcome.result.changes.filter { $0.outcome == .updated || $0.outcome == .retired }.map(\.producer)
            if !dryRun && !touched.isEmpty {
                try? await withClientNode(poolOptions, command: "plan-apply") { node in
                    for name in touched { _ = try? await node.triggerTicker(named: "schedule-" + name) }
                }
            }
        }

        private func applyLocally(_ files: [PlanFile], db: String) throws {
            guard expectRevision == nil, !prune, !dryRun else {
                throw CommandFailure("--expect-revision, --prune and --dry-run work on the pool's plan: give --redis URL")
            }
            let store = try openStore(db)
            let results: [AppliedProducer]
            do {
                results = try store.apply(files, defaultPool: poolOptions.pool, actor: currentActor())
            } catch {
                throw CommandFailure("\(error.message)")
            }
            switch format {
            case .json:
                print(jsonArray(results.map { [("pool", .string($0.pool)), ("producer", .string($0.name)),
                    ("outcome", .string($0.outcome.rawValue)), ("revision", .int($0.revision))] }), terminator: "")
            case .table, .csv:
                print(render(["POOL", "PRODUCER", "OUTCOME", "REVISION"],
                    results.map { [$0.pool, $0.name, $0.outcome.rawValue, String($0.revision)] }, format: format), terminator: "")
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show stored producers (current revisions), or one producer's revisions.")

        @Argument(help: "A producer: show all its revisions.")
        var producer: String?

        @Option(help: "The SQLite database.")
        var db: String

        @Option(help: "Pool.")
        var pool = "default"

        @Option(help: "Output format: table, json or csv.")
        var format: OutputFormat = .table

        func run() throws {
            let store = try openStore(db)
            let revisions: [ProducerRevision]
            do {
                if let producer {
                    revisions = try store.revisions(pool: pool, name: producer)
                } else {
                    revisions = try store.producers(pool: pool)
                }
            } catch {
                throw CommandFailure("\(error.message)")
            }
            if let producer, revisions.isEmpty { throw CommandFailure("no producer '\(producer)' in pool '\(pool)' of \(db)") }
            switch format {
            case .json:
                print(jsonArray(revisions.map { [("pool", .string($0.pool)), ("producer", .string($0.name)), ("revision", .int($0.revision)),
                    ("created", .string($0.createdAt)), ("by", .string($0.createdBy)), ("file", .string($0.sourceFile)),
                    ("retired", .optional($0.retiredAt)), ("hash", .string($0.contentHash)), ("definition", .raw($0.definition))] }),
                    terminator: "")
            case .table, .csv:
                print(render(["PRODUCER", "REVISION", "CREATED", "BY", "FILE", "RETIRED", "HASH"],
                    revisions.map { [$0.name, String($0.revision), $0.createdAt, $0.createdBy, $0.sourceFile, $0.retiredAt ?? "-", $0.contentHash] },
                    format: format), terminator: "")
            }
        }
    }

    struct Windows: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "When each job of a producer is desired over a time range (preview; DST transitions visible).")

        @Argument(help: "The producer.")
        var producer: String

        @Option(help: "The SQLite database.")
        var db: String

        @Option(help: "Pool.")
        var pool = "default"

        @Option(help: "Start of the range: RFC 3339, or a duration meaning that long ago.")
        var from: String

        @Option(help: "End of the range (exclusive).")
        var until: String

        @Option(help: "Output format: table, json or csv.")
        var format: OutputFormat = .table

        func run() throws {
            let start = try time(from, option: "--from")
            let end = try time(until, option: "--until")
            guard start < end else { throw CommandFailure("--from must be earlier than --until") }
            guard end.timeIntervalSince(start) <= 366 * 86_400 else { throw CommandFailure("the range is limited to 366 days") }
            let store = try openStore(db)
            let definition: ProducerDefinition
            do {
                guard let current = try store.producers(pool: pool).first(where: { $0.name == producer }) else {
                    throw CommandFailure("no producer '\(producer)' in pool '\(pool)' of \(db)")
                }
                definition = try ProducerDefinition(canonicalJSON: current.definition)
            } catch let error as StoreError {
                throw CommandFailure("\(error.message)")
            }
            let windows = definition.desiredIntervals(from: start, until: end)
            switch format {
            case .json:
                print(jsonArray(windows.map { [("job", .string($0.job)), ("from", .string(rfc3339($0.from))), ("until", .string(rfc3339($0.until)))] }),
                    terminator: "")
            case .table, .csv:
                print(render(["JOB", "FROM", "UNTIL"], windows.map { [$0.job, rfc3339($0.from), rfc3339($0.until)] }, format: format), terminator: "")
            }
        }
    }
}
