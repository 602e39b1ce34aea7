import ArgumentParser
import Foundation
import RotaPlans
import RotaStore

extension RoundRecord {
    /// The stable JSON shape scripts rely on. `unplaced`: the round's jobs that wait for a worker
    /// with their capability (not failures).
    func json(unplaced: Int) -> [(String, JSONValue)] {
        [("round", .string(roundID)), ("pool", .string(pool)), ("producer", .string(producer)), ("revision", .int(revision)),
         ("node", .string(node)), ("tick", .string(rfc3339(tick))), ("started_at", .string(rfc3339(startedAt))),
         ("finished_at", .optional(finishedAt.map(rfc3339))), ("started", .int(started)), ("stopped", .int(stopped)),
         ("failed", .int(failed)), ("unplaced", .int(unplaced)), ("error", .optional(error))]
    }

    func row(unplaced: Int) -> [String] {
        [roundID, producer, String(revision), node, rfc3339(tick), String(started), String(stopped), String(failed), String(unplaced), error ?? "-"]
    }

    static let header = ["ROUND", "PRODUCER", "REV", "NODE", "TICK", "STARTED", "STOPPED", "FAILED", "UNPLACED", "ERROR"]
}

/// The time an option names (RFC 3339, or a duration meaning that long ago); a clear failure otherwise.
func time(_ text: String, option: String) throws -> Date {
    guard let date = parseTime(text) else { throw invalidTime(option, text) }
    return date
}

func time(_ text: String?, option: String) throws -> Date? {
    try text.map { try time($0, option: option) }
}

struct History: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Audit the planning history: rounds, their actions, the pool's job events, retention.",
        subcommands: [List.self, ShowRound.self, Prune.self, Verify.self, Head.self, Sync.self, Keygen.self],
        defaultSubcommand: List.self
    )

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "Rounds, newest first.")

        @Option(help: "The SQLite database.") var db: String
        @Option(help: "Only this pool.") var pool: String?
        @Option(help: "Only this producer.") var producer: String?
        @Option(help: "Only rounds that acted on this job.") var job: String?
        @Option(help: "Only rounds planned by this node.") var node: String?
        @Option(help: "From this time on (RFC 3339, or a duration meaning that long ago).") var since: String?
        @Option(help: "Before this time.") var until: String?
        @Flag(help: "Only rounds with failures.") var failed = false
        @Option(help: "At most this many rounds.") var limit = 100
        @Option(help: "Output format: table, json or csv.") var format: OutputFormat = .table

        func run() throws {
            guard limit > 0 else { throw CommandFailure("--limit must be positive") }
            var filter = HistoryFilter()
            filter.pool = pool
            filter.producer = producer
            filter.job = job
            filter.node = node
            filter.since = try time(since, option: "--since")
            filter.until = try time(until, option: "--until")
            filter.failedOnly = failed
            filter.limit = limit
            let store = try openStore(db)
            let rounds: [RoundRecord]
            let unplaced: [String: Int]
            do {
                rounds = try store.rounds(matching: filter)
                unplaced = try store.unplacedCounts(roundIDs: rounds.map(\.roundID))
            } catch {
                throw CommandFailure(error.message)
            }
            switch format {
            case .json: print(jsonArray(rounds.map { $0.json(unplaced: unplaced[$0.roundID] ?? 0) }), terminator: "")
            case .table, .csv: print(render(RoundRecord.header, rounds.map { $0.row(unplaced: unplaced[$0.roundID] ?? 0) }, format: format), terminator: "")
            }
        }
    }

    struct ShowRound: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "One round and its actions.")

        @Argument(help: "The round ID.") var round: String
        @Option(help: "The SQLite database.") var db: String
        @Option(help: "Output format: table, json or csv.") var format: OutputFormat = .table

        func run() throws {
            let store = try openStore(db)
            let found: (RoundRecord, [ActionRecord])?
            do { found = try store.round(id: round) } catch { throw CommandFailure(error.message) }
            guard let (record, actions) = found else { throw CommandFailure("no round '\(round)' in \(db)") }
            let unplaced = actions.filter { $0.outcome == .unplaced }.count
            switch format {
            case .json:
                let items = actions.map { action -> JSONValue in
                    .object([("job", .string(action.job)), ("action", .string(action.action.rawValue)),
                        ("outcome", .string(action.outcome.rawValue)), ("error", .optional(action.error)), ("at", .string(rfc3339(action.at))),
                        ("reason", .optional(action.reason)), ("actor", .optional(action.actor))])
                }
                print(jsonArray([record.json(unplaced: unplaced) + [("actions", .array(items))]]), terminator: "")
            case .table, .csv:
                print(render(RoundRecord.header, [record.row(unplaced: unplaced)], format: format))
                print(render(["JOB", "ACTION", "OUTCOME", "AT", "REASON", "ACTOR", "ERROR"],
                    actions.map { [$0.job, $0.action.rawValue, $0.outcome.rawValue, rfc3339($0.at), $0.reason ?? "-", $0.actor ?? "-", $0.error ?? "-"] },
                    format: format),
                    terminator: "")
            }
        }
    }

    struct Prune: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete old rounds and their actions (and, with --older-than, old job events).",
            discussion: """
                --keep counts rounds only: job events are pruned by age alone (--older-than). Every prune is recorded in the \
                history's prune chain, authenticated with the pool's history key when one is given; a history whose prunes \
                are authenticated is pruned only with its key.
                """)

        @Option(help: "The SQLite database.") var db: String
        @Option(help: "Delete rounds started longer ago than this duration (e.g. 30d).") var olderThan: String?
        @Option(help: "Keep at least the newest N rounds.") var keep: Int?
        @Flag(help: "Report what would be deleted; delete nothing.") var dryRun = false
        @OptionGroup var historyKeyOptions: HistoryKeyOptions

        func run() throws {
            guard olderThan != nil || keep != nil else { throw CommandFailure("give --older-than, --keep or both") }
            if let keep, keep < 0 { throw CommandFailure("--keep must not be negative") }
            var cutoff: Date?
            if let olderThan {
                guard parseDuration(olderThan) != nil, let date = parseTime(olderThan) else {
                    throw CommandFailure("--older-than '\(olderThan)' is not a duration (e.g. 30d, 12h)")
                }
                cutoff = date
            }
            let key = try historyKeyOptions.load()
            let store = try openStore(db)
            let report: PruneReport
            do { report = try store.prune(olderThan: cutoff, keep: keep, dryRun: dryRun, key: key) } catch { throw CommandFailure(error.message) }
            print("\(dryRun ? "would delete" : "deleted") \(report.rounds) round(s) and \(report.actions) action(s)"
                + (olderThan == nil ? "" : ", \(report.jobEvents) job event(s)"))
        }
    }
}

extension History {
    /// `rota history verify`: checks the history's hash chains (see RotaStore's HistoryChain.swift).
    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check the history's hash chains: report the first altered or missing round or job event, and known gaps.",
            discussion: """
                Every round is chained to the one recorded before it (SHA-256 over its identity and intent), every \
                outcome to the outcome recorded before it (over the finished time, counts, error and action rows), and \
                every job event of the pool's job log to the event recorded before it. Rounds recorded before the chain \
                existed are reported as unchained; pruned rounds and events are bridged.

                The chains cannot show what never reached this database: entries trimmed from the pool's streams \
                before this node read them. The node records those as gaps, listed here until `rota history sync` \
                fills them from another node's database.

                Every prune is recorded in a fourth chain over the bridges it left: bridge rows that no prune record \
                covers are reported. With the pool's history key (--history-key-file), prune records must be \
                authenticated by it (those made before the first prune with the key are accepted and counted): a \
                round deleted by hand and replaced by bridge rows shows even with an unchanged head.

                --expect-head takes a head printed earlier by `rota history head` (the line, or a file holding it or \
                its JSON): the history must still contain that state (it may have grown, or been pruned by recorded \
                prunes, since); with the key, the head's tag must verify too.

                Exit codes: 0 with "ok: N rounds verified" when the history is intact and has no unfilled gap; \
                2 with one line naming the first altered round or event (and which part) or the first missing one, \
                a prune record or bridge that does not verify, or a stored head the history no longer contains; \
                3 when the chains are intact but unfilled gaps exist (one line per gap). Tampered wins: a history \
                that is both tampered and incomplete exits 2.
                """
        )

        enum Format: String, ExpressibleByArgument, CaseIterable {
            case table, json
        }

        @Option(help: "The SQLite database.") var db: String
        @Option(help: "Output format: table or json.") var format: Format = .table
        @OptionGroup var historyKeyOptions: HistoryKeyOptions
        @Option(help: "A head printed by `rota history head` (the line itself, or a file holding it or its JSON) the history must still contain.")
        var expectHead: String?

        func run() throws {
            let key = try historyKeyOptions.load()
            let expected = try expectHead.map(readHead)
            let store = try openStore(db)
            let result: HistoryVerification
            var headCheck: HeadCheck?
            do {
                result = try store.verifyHistory(key: key)
                if let expected, result.isIntact { headCheck = try store.checkHead(expected, key: key) }
            } catch {
                throw CommandFailure(error.message)
            }
            switch format {
            case .json:
                var members: [(String, JSONValue)] = [("ok", .raw(result.isIntact ? "true" : "false")), ("verified", .int(result.verified)),
                    ("unchained", .int(result.unchained)), ("pruned", .int(result.pruned)), ("head", .string(result.head)),
                    ("outcome_head", .string(result.outcomeHead))]
                if let problem = result.problem {
                    members.append(("problem", .object([
                        ("kind", .string(problem.kind.rawValue)), ("part", .optional(problem.part?.rawValue)),
                        ("round", .optional(problem.roundID)), ("id", problem.id.map { .int(Int($0)) } ?? .null),
                        ("missing_ids", problem.missingIDs.map { .array([.int(Int($0.lowerBound)), .int(Int($0.upperBound))]) } ?? .null),
                        ("message", .string(problem.message)), ("chain", .string(problem.chain)), ("event", .optional(problem.event)),
                    ])))
                } else {
                    members.append(("problem", .null))
                }
                members += [("intact", .raw(result.isIntact ? "true" : "false")), ("events", .int(result.events)),
                    ("events_pruned", .int(result.eventsPruned)), ("event_head", .string(result.eventHead)),
                    ("prunes", .int(result.prunes)), ("prune_head", .string(result.pruneHead)),
                    ("unauthenticated_prunes", .int(result.unauthenticatedPrunes)), ("legacy_bridges", .int(result.legacyBridges)),
                    ("key", .optional(result.keyID)), ("gaps", .array(result.gaps.map(\.json)))]
                if let headCheck {
                    members.append(("expected_head", .object([
                        ("ok", .raw(headCheck.problem == nil ? "true" : "false")), ("problem", .optional(headCheck.problem)),
                        ("authenticated", .raw(headCheck.authenticated ? "true" : "false")), ("notes", .array(headCheck.notes.map { .string($0) })),
                        ("rounds_since", .int(headCheck.roundsSince)), ("events_since", .int(headCheck.eventsSince)),
                        ("prunes_since", .int(headCheck.prunesSince)),
                    ])))
                }
                members[0] = ("ok", .raw(result.isComplete && headCheck?.problem == nil ? "true" : "false"))
                print(JSONValue.object(members).text)
            case .table:
                if let problem = result.problem {
                    print(problem.message)
                } else {
                    var notes: [String] = []
                    if result.unchained > 0 { notes.append("\(result.unchained) older round(s) unchained: recorded before the chain existed") }
                    if result.pruned > 0 { notes.append("\(result.pruned) pruned") }
                    if result.eventsPruned > 0 { notes.append("\(result.eventsPruned) job event(s) pruned") }
                    if result.prunes > 0 {
                        let unauthenticated = result.unauthenticatedPrunes
                        let tagged = result.prunes - unauthenticated
                        notes.append("\(result.prunes) prune(s) recorded" + (result.keyID != nil
                            ? (unauthenticated == 0 ? ", authenticated" : ", \(unauthenticated) made without the history key")
                            : (tagged > 0 ? ", \(tagged) tagged with a history key: not checked without --history-key-file" : "")))
                    }
                    if result.legacyBridges > 0 { notes.append("\(result.legacyBridges) bridge(s) from prunes before they were recorded, not authenticated") }
                    let events = result.events > 0 ? " and \(result.events) job events" : ""
                    print((result.gaps.isEmpty ? "ok: " : "intact, with gaps: ") + "\(result.verified) rounds\(events) verified"
                        + (notes.isEmpty ? "" : " (\(notes.joined(separator: "; ")))"))
                }
                if let headCheck, let expected {
                    if let problem = headCheck.problem {
                        print("expected head of \(rfc3339(expected.at)) not found: \(problem)")
                    } else {
                        print("expected head of \(rfc3339(expected.at)) \(headCheck.authenticated ? "(authenticated) " : "")found: "
                            + "\(headCheck.roundsSince) round(s), \(headCheck.eventsSince) job event(s) and \(headCheck.prunesSince) prune(s) since")
                    }
                    for note in headCheck.notes { print("note: \(note)") }
                }
                for gap in result.gaps { print(gap.line) }
            }
            if !result.isIntact || headCheck?.problem != nil { throw ExitCode(2) }
            if !result.gaps.isEmpty { throw ExitCode(3) }
        }
    }
}

extension History {
    /// `rota history keygen FILE`: a new history key.
    struct Keygen: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a pool's history key: 32 random bytes as hex, in a new file of mode 0600.",
            discussion: """
                Give the same file (--history-key-file, or ROTA_HISTORY_KEY_FILE) to every `rota run` of the pool and to the \
                commands that write or check its history (dispatch, stop, notify, history verify, head, prune). An existing \
                file is never overwritten. `head -c 32 /dev/urandom | xxd -p > FILE` makes an equivalent key.
                """
        )

        @Argument(help: "The file to create.") var file: String

        func run() throws {
            let key: HistoryKey
            do { key = try HistoryKey.create(path: file) } catch { throw CommandFailure(error.message) }
            print("created history key \(key.id) in \(file)")
        }
    }
}

/// A stored head: the line itself, or a file holding it or `rota history head --format json`'s object.
func readHead(_ value: String) throws -> HistoryHead {
    var text = value
    if !value.hasPrefix("rota-history-head") {
        guard let data = FileManager.default.contents(atPath: value), data.count <= 65_536 else {
            throw CommandFailure("--expect-head: '\(value)' is neither a head (rota-history-head v1 …) nor a readable file holding one")
        }
        text = String(decoding: data, as: UTF8.self)
        if let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let head = object["head"] as? String { text = head }
    }
    do { return try HistoryHead(parsing: text) } catch { throw CommandFailure("--expect-head: \(error.message)") }
}

extension History {
    /// `rota history head`: the chains' heads, for an auditor to keep elsewhere.
    struct Head: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the history's chain heads (rounds, outcomes, job events, prunes), tagged with the pool's history key when given.",
            discussion: """
                Store the line somewhere the nodes cannot write (another machine, a ticket, a log collector). Later, \
                `rota history verify --db D --expect-head LINE_OR_FILE` tells whether the history still contains that \
                state: it may have grown or been pruned by recorded prunes since, but not been rewritten. With the history \
                key the head carries a tag, so a stored head cannot be forged either. Refuses (exit 2) a history that does \
                not verify.
                """
        )

        @Option(help: "The SQLite database.") var db: String
        @OptionGroup var historyKeyOptions: HistoryKeyOptions
        @Option(help: "Output format: table (the line) or json.") var format: Verify.Format = .table

        func run() throws {
            let key = try historyKeyOptions.load()
            let store = try openStore(db)
            let head: HistoryHead
            do {
                head = try store.head(key: key)
            } catch let error where error.code == .tampered {
                throw failure(error.message, exitCode: 2)
            } catch {
                throw CommandFailure(error.message)
            }
            switch format {
            case .table:
                print(head.text)
            case .json:
                func link(_ link: HistoryHead.Link) -> JSONValue { .object([("position", .int(Int(link.position))), ("hash", .string(link.hash))]) }
                print(JSONValue.object([("head", .string(head.text)), ("at", .string(rfc3339(head.at))), ("round", link(head.round)),
                    ("outcome", link(head.outcome)), ("event", link(head.event)), ("prune", link(head.prune)), ("rounds", .int(head.rounds)),
                    ("events", .int(head.events)), ("key", .optional(key?.id)), ("tag", .optional(head.tag))]).text)
            }
        }
    }
}

extension HistoryGap {
    var json: JSONValue {
        .object([("pool", .string(pool)), ("stream", .string(stream)), ("after", .string(after)), ("before", .string(before)),
            ("detected_at", .string(rfc3339(detectedAt))), ("filled_at", .optional(filledAt.map(rfc3339))),
            ("filled_from", .optional(filledFrom))])
    }

    /// One line for people: the stream IDs' ms parts are times.
    var line: String {
        let times = [after, before].map { id in StreamEntryID(id).flatMap { Date(milliseconds: $0.ms) }.map(rfc3339) ?? id }
        return "gap: pool \(pool) stream \(stream): entries after \(after) (\(times[0])) and before \(before) (\(times[1])) were trimmed "
            + "before this node read them (detected \(rfc3339(detectedAt)))"
            + (filledAt.map { " filled \(rfc3339($0)) from \(filledFrom ?? "?")" } ?? "")
    }
}

extension Date {
    /// A stream ID's ms part as a date, when it is one (not beyond what Date holds sensibly).
    init?(milliseconds: UInt64) {
        guard milliseconds < 1 << 52 else { return nil }
        self.init(timeIntervalSince1970: Double(milliseconds) / 1000)
    }
}

extension History {
    /// `rota history sync`: fills this node's history from another node's database.
    struct Sync: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Copy from another node's database the rounds and job events this one lacks; fill the gaps it covers.",
            discussion: """
                Opens --from read-only, checks its chains (refuses one that does not verify, one that is this same \
                database, and files that are not a Rota database of this version), then appends what --db lacks \
                (rounds with their actions by round ID, outcomes of rounds --db has unfinished, job events by stream \
                entry) to --db's own chains, so that `rota history verify --db` still passes. A gap of --db is marked \
                filled when --from read that stream past it and has no unfilled gap overlapping it.
                """
        )

        @Option(help: "The SQLite database to fill.") var db: String
        @Option(help: "Another node's SQLite database (opened read-only).") var from: String

        func run() throws {
            let store = try openStore(db)
            let report: SyncReport
            do { report = try store.sync(from: from) } catch { throw CommandFailure(error.message) }
            print("copied from \(report.source): \(report.rounds) round(s), \(report.outcomes) outcome(s) of unfinished rounds, "
                + "\(report.jobEvents) job event(s)")
            for conflict in report.conflicts { print("not copied: \(conflict)") }
            for gap in report.filledGaps {
                print("filled gap: pool \(gap.pool) stream \(gap.stream): after \(gap.after) and before \(gap.before)")
            }
            let left: [HistoryGap]
            do { left = try store.gaps() } catch { throw CommandFailure(error.message) }
            if !left.isEmpty { print("\(left.count) gap(s) still unfilled") }
        }
    }
}

struct Jobs: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Jobs running at a given time, according to the history.")

    @Option(help: "The SQLite database.") var db: String
    @Option(help: "The instant (RFC 3339, or a duration meaning that long ago); now by default.") var at: String?
    @Option(help: "Output format: table, json or csv.") var format: OutputFormat = .table

    func run() throws {
        let instant = try time(at, option: "--at") ?? Date()
        let store = try openStore(db)
        let jobs: [RunningJob]
        do { jobs = try store.jobsRunning(at: instant) } catch { throw CommandFailure(error.message) }
        switch format {
        case .json:
            print(jsonArray(jobs.map { [("job", .string($0.job)), ("producer", .string($0.producer)), ("since", .string(rfc3339($0.since))),
                ("worker", .optional($0.worker)), ("node", .optional($0.node))] }),
                terminator: "")
        case .table, .csv:
            print(render(["JOB", "PRODUCER", "SINCE", "WORKER", "NODE"],
                jobs.map { [$0.job, $0.producer.isEmpty ? "-" : $0.producer, rfc3339($0.since), $0.worker ?? "-", $0.node ?? "-"] },
                format: format), terminator: "")
        }
    }
}
