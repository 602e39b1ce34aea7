import ArgumentParser
import Foundation
import Rota
import RotaRedis
import RotaService

/// Formats of commands that print one report (several sections): `table` for people, `json`.
enum ReportFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json
}

/// Reads a pool's state straight from Redis (see the key layout in ARCHITECTURE.md), without
/// joining the pool as a node.
struct PoolReader {
    let client: RedisClient
    let space: RedisKeySpace

    init(client: RedisClient, pool: String) throws {
        self.client = client
        do {
            space = try RedisKeySpace(pool)
        } catch {
            throw CommandFailure("--pool: \(error.message)")
        }
    }

    func mapKey(_ name: String) -> String { space.key("map", name) }
    func streamKey(_ name: String) -> String { space.key("stream", name) }

    /// Sends the commands in one pipeline; an error reply throws.
    func pipeline(_ commands: [RedisCommand]) async throws -> [RedisValue] {
        guard !commands.isEmpty else { return [] }
        do {
            return try await client.pipeline(commands).map { try $0.throwingServerError() }
        } catch let error as RedisError {
            throw CommandFailure("reading pool \(space.name): \(error.message)")
        }
    }

    /// The user fields of a map (`HGETALL`; reserved fields, starting with `=`, left out).
    static func fields(_ reply: RedisValue) -> [String: [UInt8]] {
        let items = reply.array ?? []
        var content: [String: [UInt8]] = [:]
        var index = 0
        while index + 1 < items.count {
            if let field = items[index].string, !field.hasPrefix("=") { content[field] = items[index + 1].bytes ?? [] }
            index += 2
        }
        return content
    }

    /// The user keys of a map (`HKEYS`).
    static func keys(_ reply: RedisValue) -> [String] {
        (reply.array ?? []).compactMap(\.string).filter { !$0.hasPrefix("=") }
    }

    func hash(_ key: String) -> RedisCommand { RedisCommand("HGETALL", key) }
}

extension StatusCommand {
    /// The capabilities of the pool's workers and the unplaced jobs with what they wait for, read
    /// with the pool's queries on a client-only node that never joins (its queries read Redis).
    /// A failure leaves both empty, with a warning: the rest of the report still stands.
    static func routing(_ reader: PoolReader) async throws -> (capabilities: [String: Set<String>], unplaced: [String: String]) {
        var options = Node.Options()
        options.clientOnly = true
        options.name = "rota-status"
        do {
            let node = try Node(pool: reader.space.name, client: reader.client, options: options)
            return (try await node.workerCapabilities(), try await node.unplacedJobs())
        } catch {
            FileHandle.standardError.write(Data("warning: the workers' capabilities and unplaced jobs could not be read: \(terminalSafe(poolMessage(error)))\n".utf8))
            return ([:], [:])
        }
    }
}

/// Stream entries as returned by XRANGE/XREVRANGE: ID and fields.
struct StreamEntry {
    var id: String
    var fields: [String: [UInt8]]

    static func entries(_ reply: RedisValue) -> [StreamEntry] {
        (reply.array ?? []).compactMap { item -> StreamEntry? in
            guard let parts = item.array, parts.count == 2, let id = parts[0].string else { return nil }
            let values = parts[1].array ?? []
            var fields: [String: [UInt8]] = [:]
            var index = 0
            while index + 1 < values.count {
                if let name = values[index].string { fields[name] = values[index + 1].bytes ?? [] }
                index += 2
            }
            return StreamEntry(id: id, fields: fields)
        }
    }
}

/// The node that created a worker, read from the `i` (init) entry its inbox starts with:
/// the envelope `str sender, str payload` (4-byte little-endian lengths), sender = the node,
/// payload = the worker ID. The worker trims its inbox once it handled later events, so the entry
/// (and with it the answer) is gone once the worker took a job: nil then.
func workerNode(fromFirstInboxEntry reply: RedisValue, worker: String) -> String? {
    guard let entry = StreamEntry.entries(reply).first, entry.fields["n"] == Array("i".utf8), let bytes = entry.fields["p"] else {
        return nil
    }
    var offset = 0
    func string() -> [UInt8]? {
        guard offset + 4 <= bytes.count else { return nil }
        let length = Int(bytes[offset]) | Int(bytes[offset + 1]) << 8 | Int(bytes[offset + 2]) << 16 | Int(bytes[offset + 3]) << 24
        offset += 4
        guard length >= 0, offset + length <= bytes.count else { return nil }
        defer { offset += length }
        return Array(bytes[offset..<offset + length])
    }
    guard let sender = string(), let payload = string(), offset == bytes.count, payload == Array(worker.utf8), !sender.isEmpty else {
        return nil
    }
    return String(decoding: sender, as: UTF8.self)
}

func dateFromNanos(_ text: String) -> Date? {
    guard let nanos = Int64(text) else { return nil }
    return Date(timeIntervalSince1970: Double(nanos / 1_000_000_000) + Double(nanos % 1_000_000_000) / 1e9)
}

/// `<next tick, Unix µs>|<interval>[|<regular tick after a triggered one>]` of a ticker entry.
func parseTickerEntry(_ bytes: [UInt8]) -> (next: Date, interval: String)? {
    let text = String(decoding: bytes, as: UTF8.self)
    let parts = text.split(separator: "|", maxSplits: 2, omittingEmptySubsequences: false)
    guard parts.count >= 2, let micros = Int64(parts[0]), micros >= 0, micros < 7_258_118_400_000_000 else { return nil }
    return (Date(timeIntervalSince1970: Double(micros / 1_000_000) + Double(micros % 1_000_000) / 1e6), String(parts[1]))
}

struct StatusCommand: ParsableCommand, AsyncCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show a pool: nodes, workers (with their capabilities) and their jobs, jobs, and each producer's planner, last round and next tick.",
        discussion: """
            Reads Redis directly (it does not join the pool). Producers come from the pool's plan, each \
            with the last round kept for it; nodes whose plan files differ from the pool's plan are listed \
            under plan drift; jobs that no active worker can run (unplaced) are listed with the capability \
            they wait for.
            """
    )

    @OptionGroup var poolOptions: PoolOptions

    @Option(help: "Output format: table or json.")
    var format: ReportFormat = .table

    @Option(name: .customLong("watch"), help: ArgumentHelp(
        "Redraw the status every SECONDS (2 when given no value) until interrupted; on a terminal the screen is cleared first, otherwise snapshots are separated by a blank line.",
        valueName: "SECONDS"))
    var watchInterval: String?

    /// The interval of a bare `--watch` (see ``expandBareWatch(_:)``).
    static let defaultWatch = "2"

    func validate() throws {
        if let watchInterval, Self.watchSeconds(watchInterval) == nil {
            throw ValidationError("--watch: '\(watchInterval)' is not a number of seconds between 0.1 and 86400")
        }
    }

    static func watchSeconds(_ text: String) -> Double? {
        guard let seconds = Double(text), seconds.isFinite, seconds >= 0.1, seconds <= 86_400 else { return nil }
        return seconds
    }

    /// `rota status … --watch` with no value, written `--watch=2` so that ArgumentParser (whose
    /// options always take a value) accepts it; a number after `--watch` stays its value.
    static func expandBareWatch(_ arguments: [String]) -> [String] {
        guard arguments.first == "status" else { return arguments }
        return expandBareOption(arguments, option: "--watch", bare: defaultWatch) { watchSeconds($0) != nil }
    }

    struct NodeRow {
        var id: String
        var name: String?
        var lastSeen: Date?
        var workers = 0
    }

    struct WorkerRow {
        var id: String
        var node: String?
        var jobs = 0
        var created: Date?
        var lastSeen: Date?
        var retiring: Bool
        /// What it declared when it joined (its handlers, for service workers).
        var capabilities: Set<String> = []
    }

    struct JobRow {
        var key: String
        var worker: String?
        var handler: String?
        /// The capability it waits for while no active worker has it (unplaced).
        var unplaced: String?
    }

    func execute() async throws {
        var configuration = try requiredRedisConfiguration(poolOptions, command: "status")
        configuration.commandConnections = 1
        let pool = poolOptions.pool
        let format = format
        guard let seconds = watchInterval.flatMap(Self.watchSeconds) else {
            let text = try await withPoolClient(configuration) { client in
                let reader = try PoolReader(client: client, pool: pool)
                return try await Self.report(reader, format: format)
            }
            print(text, terminator: "")
            return
        }
        try await withPoolClient(configuration) { client in
            let reader = try PoolReader(client: client, pool: pool)
            // Clearing is for a person watching; a pipe or file gets every snapshot, in order.
            let terminal = isatty(STDOUT_FILENO) == 1
            var first = true
            while !Task.isCancelled {
                let text: String
                do {
                    text = try await Self.report(reader, format: format)
                } catch {
                    // One failed read (Redis restarting) must not end a watch: the next one may succeed.
                    FileHandle.standardError.write(Data("warning: \(terminalSafe(poolMessage(error)))\n".utf8))
                    try await Task.sleep(for: .milliseconds(Int64(seconds * 1000)))
                    continue
                }
                if terminal {
                    print("\u{1B}[H\u{1B}[2J" + text, terminator: "")
                } else {
                    print((first ? "" : "\n") + text, terminator: "")
                }
                first = false
                // Standard output to a pipe is block-buffered: each snapshot must reach a reader now (nil:
                // every stream, as `stdout` itself is not concurrency-safe to name).
                fflush(nil)
                try await Task.sleep(for: .milliseconds(Int64(seconds * 1000)))
            }
        }
    }

    static func report(_ reader: PoolReader, format: ReportFormat) async throws -> String {
        let replies = try await reader.pipeline([
            reader.hash(reader.mapKey("node-keepalive")),
            reader.hash(reader.space.key("node-names")),
            reader.hash(reader.mapKey("workers")),
            reader.hash(reader.mapKey("worker-keepalive")),
            reader.hash(reader.mapKey("owners")),
            reader.hash(reader.mapKey("job-payloads")),
        ])
        let nodeKeepAlive = PoolReader.fields(replies[0])
        let names = PoolReader.fields(replies[1]).mapValues { String(decoding: $0, as: UTF8.self) }
        let registry = PoolReader.fields(replies[2])
        let workerKeepAlive = PoolReader.fields(replies[3])
        let owners = PoolReader.fields(replies[4]).mapValues { String(decoding: $0, as: UTF8.self) }
        let payloads = PoolReader.fields(replies[5])

        // Workers, and their node (recorded by the node when it added the worker; for workers of
        // older nodes, the init entry of the inbox, while it is still there).
        let workerIDs = registry.keys.sorted()
        let workerNodes = PoolReader.fields(try await reader.pipeline([RedisCommand("HGETALL", reader.space.key("worker-nodes"))])[0])
            .mapValues { String(decoding: $0, as: UTF8.self) }
        let inboxHeads = try await reader.pipeline(workerIDs.map {
            RedisCommand("XRANGE", reader.streamKey("worker-\($0)"), "-", "+", "COUNT", "1")
        })
        // Capabilities and unplaced jobs through the pool's own queries, on a client-only node
        // that is never run: a client-only node answers queries from Redis, without joining.
        let (capabilities, unplaced) = try await Self.routing(reader)
        var workers: [WorkerRow] = []
        for (index, id) in workerIDs.enumerated() {
            let value = String(decoding: registry[id] ?? [], as: UTF8.self)
            workers.append(WorkerRow(
                id: id, node: workerNodes[id] ?? workerNode(fromFirstInboxEntry: inboxHeads[index], worker: id),
                jobs: owners.values.filter { $0 == id }.count,
                created: dateFromNanos(value), lastSeen: workerKeepAlive[id].flatMap { dateFromNanos(String(decoding: $0, as: UTF8.self)) },
                retiring: value == "-", capabilities: capabilities[id] ?? []
            ))
        }
        workers.sort { ($0.created ?? .distantFuture, $0.id) < ($1.created ?? .distantFuture, $1.id) }

        // Nodes: those with a keep-alive or a name; a node that closed (no inbox, no name) is left
        // out even while its keep-alive entry waits for a peer's sweep.
        let candidates = Set(nodeKeepAlive.keys).union(names.keys).sorted()
        let inboxes = try await reader.pipeline(candidates.map { RedisCommand("EXISTS", reader.streamKey("node-\($0)")) })
        var nodes: [NodeRow] = []
        for (index, id) in candidates.enumerated() where inboxes[index].int == 1 || names[id] != nil {
            nodes.append(NodeRow(
                id: id, name: names[id],
                lastSeen: nodeKeepAlive[id].flatMap { dateFromNanos(String(decoding: $0, as: UTF8.self)) },
                workers: workers.filter { $0.node == id }.count
            ))
        }

        let jobs = Set(owners.keys).union(payloads.keys).union(unplaced.keys).sorted().map { key in
            JobRow(key: key, worker: owners[key], handler: payloads[key].flatMap { try? JobEnvelope(decoding: $0).handler },
                unplaced: unplaced[key])
        }
        let unplacedJobs = jobs.filter { $0.unplaced != nil }

        // Producers: the pool's plan with each producer's last round (kept per producer: a slow
        // producer beside fast ones still shows its last round), and nodes reporting plan drift.
        let (producerRows, revision) = try await ProducerInfo.load(reader)
        let drifts: [PlanDrift]
        do {
            // Reports of nodes that are gone (killed before they could clear theirs) are left out.
            let live = Set(nodes.map(\.id))
            drifts = try await PoolPlan(pool: reader.space.name, client: reader.client).drifts().filter { live.contains($0.node) }
        } catch let error as ServiceError {
            throw CommandFailure(error.message)
        }

        switch format {
        case .json:
            func date(_ value: Date?) -> JSONValue { .optional(value.map(rfc3339)) }
            let object: JSONValue = .object([
                ("pool", .string(reader.space.name)),
                ("nodes", .array(nodes.map { .object([
                    ("id", .string($0.id)), ("name", .optional($0.name)), ("last_seen", date($0.lastSeen)), ("workers", .int($0.workers)),
                ]) })),
                ("workers", .array(workers.map { .object([
                    ("id", .string($0.id)), ("node", .optional($0.node)), ("jobs", .int($0.jobs)),
                    ("created", date($0.created)), ("last_seen", date($0.lastSeen)), ("retiring", .raw($0.retiring ? "true" : "false")),
                    ("capabilities", .array($0.capabilities.sorted().map { .string($0) })),
                ]) })),
                ("jobs", .array(jobs.map { .object([
                    ("key", .string($0.key)), ("worker", .optional($0.worker)), ("handler", .optional($0.handler)),
                    ("unplaced", .optional($0.unplaced)),
                ]) })),
                ("unplaced", .array(unplacedJobs.map { .object([("key", .string($0.key)), ("requirement", .optional($0.unplaced))]) })),
                ("plan_revision", .int(revision)),
                ("producers", .array(producerRows.map { row in
                    guard case .object(var members) = row.json else { return row.json }
                    members.append(("planner_name", .optional(row.last.map { names[$0.node] ?? $0.node })))
                    return .object(members)
                })),
                ("plan_drift", .array(drifts.map { .object([
                    ("node", .string($0.node)), ("name", .optional($0.name)), ("since", date($0.since)), ("node_revision", .int($0.nodeRevision)),
                    ("pool_revision", .int($0.poolRevision)), ("differing", .array($0.differing.map { .string($0) })), ("message", .string($0.message)),
                ]) })),
            ])
            return object.text + "\n"
        case .table:
            func date(_ value: Date?) -> String { value.map(rfc3339) ?? "-" }
            func node(_ id: String?) -> String {
                guard let id else { return "-" }
                return names[id].map { "\($0) (\(id))" } ?? id
            }
            let waiting = unplacedJobs.isEmpty ? "" : " (\(unplacedJobs.count) unplaced)"
            var out = "pool \(reader.space.name): \(nodes.count) node(s), \(workers.count) worker(s), \(jobs.count) job(s)\(waiting), \(producerRows.count) producer(s)\n"
            out += "\nNODES\n" + render(["ID", "NAME", "WORKERS", "LAST SEEN"],
                nodes.map { [$0.id, $0.name ?? "-", String($0.workers), date($0.lastSeen)] }, format: .table)
            out += "\nWORKERS\n" + render(["ID", "NODE", "JOBS", "CREATED", "LAST SEEN", "STATE", "CAPABILITIES"],
                workers.map { [$0.id, node($0.node), String($0.jobs), date($0.created), date($0.lastSeen), $0.retiring ? "retiring" : "active",
                    $0.capabilities.isEmpty ? "-" : $0.capabilities.sorted().joined(separator: ",")] },
                format: .table)
            out += "\nJOBS\n" + render(["KEY", "WORKER", "HANDLER"], jobs.map { job in
                [job.key, job.worker ?? (job.unplaced == nil ? "(awaiting a worker)" : "(unplaced)"), job.handler ?? "-"]
            }, format: .table)
            if !unplacedJobs.isEmpty {
                out += "\nUNPLACED (no active worker has the capability; each starts when a worker with it joins)\n"
                    + render(["KEY", "WAITS FOR CAPABILITY"], unplacedJobs.map { [$0.key, $0.unplaced ?? "-"] }, format: .table)
            }
            out += "\nPRODUCERS (plan revision \(revision))\n" + render(
                ["NAME", "REVISION", "STATE", "PLANNER", "LAST ROUND", "LAST TICK", "NEXT TICK", "INTERVAL", "JOBS", "LAST ERROR"],
                producerRows.map { [$0.name, String($0.revision), $0.pause == nil ? "active" : "paused", node($0.last?.node), $0.last?.id ?? "-",
                    date($0.last?.tick), date($0.nextTick), $0.interval ?? "-", String($0.jobs), $0.last?.error ?? "-"] }, format: .table)
            if !drifts.isEmpty {
                out += "\nPLAN DRIFT (nodes whose plan files differ from the pool's plan; not applied)\n" + render(
                    ["NODE", "SINCE", "NODE REVISION", "POOL REVISION", "DIFFERING", "WHY"],
                    drifts.map { [node($0.node), date($0.since), String($0.nodeRevision), String($0.poolRevision),
                        $0.differing.joined(separator: ","), $0.message] }, format: .table)
            }
            return out
        }
    }
}
