import Foundation
import Logging
import RotaPlans
import RotaRedis
import RotaStore

/// A live producer of the pool's plan: its current definition and the pool revision that wrote it.
public struct PlanProducer: Sendable, Hashable {
    public var name: String
    /// The pool's plan revision at which this definition was written.
    public var revision: Int
    /// SHA-256 (hex) of ``definition``: what "unchanged" is decided on.
    public var contentHash: String
    /// Canonical JSON (``ProducerDefinition/canonicalJSON``).
    public var definition: String
    public var actor: String
    public var at: Date
    /// The plan file it came from (as the applier named it).
    public var source: String
}

/// A paused producer: it plans nothing until resumed (or `until` passes).
public struct PlanPause: Sendable, Hashable {
    public var reason: String
    public var until: Date?
    public var stopJobs: Bool
    public var actor: String
    public var at: Date
    /// The entry as stored: a resume at `until` clears exactly this pause, not a newer one.
    var raw: String = ""

    /// Whether the pause holds at `instant`.
    public func holds(at instant: Date) -> Bool { until.map { instant < $0 } ?? true }
}

/// A producer removed from the plan.
public struct PlanRetirement: Sendable, Hashable {
    public var revision: Int
    public var actor: String
    public var at: Date
}

/// The pool's plan as Redis holds it now.
public struct PlanSnapshot: Sendable {
    public var revision: Int
    public var producers: [String: PlanProducer]
    public var paused: [String: PlanPause]
    public var retired: [String: PlanRetirement]
    /// Entries that could not be read (skipped): field and cause.
    public var skipped: [(field: String, cause: String)]

    public static let empty = PlanSnapshot(revision: 0, producers: [:], paused: [:], retired: [:], skipped: [])
}

/// The last round of a producer, kept per producer by the planner that ran it (`rota status`
/// reads it without scanning the history stream).
public struct LastRound: Sendable, Hashable, Codable {
    public var id: String
    public var tick: Date
    public var node: String
    public var revision: Int
    public var finished: Date?
    public var started: Int
    public var stopped: Int
    public var failed: Int
    public var error: String?
    /// Ticks skipped just before this round because every node was busy or down.
    public var missed: Int

    public init(id: String, tick: Date, node: String, revision: Int, finished: Date?, started: Int, stopped: Int, failed: Int,
                error: String?, missed: Int) {
        self.id = id
        self.tick = tick
        self.node = node
        self.revision = revision
        self.finished = finished
        self.started = started
        self.stopped = stopped
        self.failed = failed
        self.error = error
        self.missed = missed
    }
}

/// A node's report that its plan files differ from the pool's plan and were not applied.
public struct PlanDrift: Sendable, Hashable, Codable {
    public var node: String
    public var name: String?
    public var since: Date
    /// The pool revision this node last applied or agreed with.
    public var nodeRevision: Int
    public var poolRevision: Int
    /// Producers whose definition in the files differs from the pool's (or exists on one side only).
    public var differing: [String]
    public var message: String
}

/// The pool's plan in Redis, under the pool's hash tag: the current producer definitions with one
/// pool-wide revision (hash `plan`), pauses and retirements, and a change log (stream
/// `plan-log`) that every node records into its SQLite. Every change is one Lua script: a
/// compare-and-set on the revision, the definitions and the log entries together, so a writer
/// killed mid-way leaves the old plan or the new one, never half.
///
/// Fields of `plan`: `=revision`; `d:NAME` (JSON: revision, producer, hash, definition, source,
/// by, at); `h:NAME` (`REVISION HASH`, what the script compares); `p:NAME` (a pause: reason, until,
/// stop_jobs, by, at); `r:NAME` (a retirement: revision, producer, by, at).
public struct PoolPlan: Sendable {
    public let pool: String
    public let client: RedisClient
    let space: RedisKeySpace

    /// Entries of the change log kept in Redis; a node that was away longer catches up from the
    /// plan itself (current definitions), without the intermediate revisions.
    public static let logLength = 10_000

    public init(pool: String, client: RedisClient) throws(ServiceError) {
        self.pool = pool
        self.client = client
        do {
            space = try RedisKeySpace(pool)
        } catch {
            throw ServiceError(.invalidArgument, "pool '\(pool)': \(error.message)", underlying: error)
        }
    }

    public var planKey: String { space.key("plan") }
    /// The change log: a stream in the layout of ``RotaStreams/RedisStream`` (`n` kind, `p` JSON).
    public var logKey: String { space.key("stream", "plan-log") }
    public var lastRoundsKey: String { space.key("producer-rounds") }
    public var driftKey: String { space.key("plan-drift") }
    /// The stream name of ``logKey`` (for a ``RotaStreams/RedisStream``).
    public static let logStreamName = "plan-log"

    // MARK: Reading

    /// The whole plan. Unreadable entries are skipped and listed in ``PlanSnapshot/skipped``.
    /// With `verify`, each definition is also parsed and must name its producer (a caller that
    /// parses them itself, once per change, passes false).
    public func read(verify: Bool = true) async throws -> PlanSnapshot {
        let reply = try await send(RedisCommand("HGETALL", planKey), doing: "reading the plan")
        let items = reply.array ?? []
        var snapshot = PlanSnapshot.empty
        var index = 0
        while index + 1 < items.count {
            defer { index += 2 }
            guard let field = items[index].string, let value = items[index + 1].string else { continue }
            if field == "=revision" {
                guard let revision = Self.revision(value) else {
                    snapshot.skipped.append((field, "not a revision number: '\(value.prefix(40))'"))
                    continue
                }
                snapshot.revision = revision
                continue
            }
            guard field.count > 2, field.dropFirst().first == ":" else { continue }
            let name = String(field.dropFirst(2))
            do {
                switch field.first {
                case "d": snapshot.producers[name] = try Self.decodeProducer(value, name: name, verify: verify)
                case "p": snapshot.paused[name] = try Self.decodePause(value)
                case "r": snapshot.retired[name] = try Self.decodeRetirement(value)
                default: continue
                }
            } catch {
                snapshot.skipped.append((field, "\(error)"))
            }
        }
        return snapshot
    }

    /// One producer: its definition, pause and retirement (one round trip; what a planner reads
    /// at each tick). Unreadable entries throw.
    public func producer(_ name: String) async throws -> (producer: PlanProducer?, pause: PlanPause?, retired: PlanRetirement?) {
        let reply = try await send(RedisCommand("HMGET", planKey, "d:" + name, "p:" + name, "r:" + name), doing: "reading producer \(name)")
        let values = reply.array ?? []
        guard values.count == 3 else { throw ServiceError(.invalidArgument, "reading producer \(name): unexpected reply") }
        return (
            try values[0].string.map { try Self.decodeProducer($0, name: name) },
            try values[1].string.map { try Self.decodePause($0) },
            try values[2].string.map { try Self.decodeRetirement($0) }
        )
    }

    /// A producer's definition as a planner needs it at each tick.
    public enum Current: Sendable {
        /// The definition with the hash the caller knows, at this revision: nothing fetched.
        case same(revision: Int)
        case fetched(PlanProducer)
        /// Not in the plan (retired, or never there).
        case absent
    }

    /// What a planner reads at each tick: `h:`, `p:` and `r:` (short fields, one round trip), and
    /// the definition only when its hash is not `knownHash` (a second round trip, once per change).
    /// An unreadable pause or retirement is left out and named in `unreadable` (the producer plans
    /// as if it were not there: someone with write access cannot stop its planning with garbage).
    public func planning(_ name: String, knownHash: String?) async throws
        -> (current: Current, pause: PlanPause?, retired: PlanRetirement?, unreadable: [String])
    {
        let reply = try await send(RedisCommand("HMGET", planKey, "h:" + name, "p:" + name, "r:" + name), doing: "reading producer \(name)")
        let values = reply.array ?? []
        guard values.count == 3 else { throw ServiceError(.invalidArgument, "reading producer \(name): unexpected reply") }
        var unreadable: [String] = []
        let pause = values[1].string.flatMap { text -> PlanPause? in
            guard let pause = try? Self.decodePause(text) else {
                unreadable.append("p:" + name)
                return nil
            }
            return pause
        }
        let retired = values[2].string.flatMap { text -> PlanRetirement? in
            guard let retired = try? Self.decodeRetirement(text) else {
                unreadable.append("r:" + name)
                return nil
            }
            return retired
        }
        if let field = values[0].string, let knownHash, let space = field.firstIndex(of: " "),
           field[field.index(after: space)...] == knownHash, let revision = Self.revision(String(field[..<space])), revision > 0 {
            return (.same(revision: revision), pause, retired, unreadable)
        }
        guard let text = try await send(RedisCommand("HGET", planKey, "d:" + name), doing: "reading producer \(name)").string else {
            return (.absent, pause, retired, unreadable)
        }
        return (.fetched(try Self.decodeProducer(text, name: name)), pause, retired, unreadable)
    }

    // MARK: Changing

    /// A producer as plan files define it.
    public struct Update: Sendable, Hashable {
        public var definition: ProducerDefinition
        public var source: String

        public init(definition: ProducerDefinition, source: String) {
            self.definition = definition
            self.source = source
        }

        public var name: String { definition.name }
    }

    /// What ``apply(_:expectRevision:prune:dryRun:actor:now:)`` did.
    public struct ApplyResult: Sendable, Hashable {
        public enum Outcome: String, Sendable, Hashable {
            case created, updated, unchanged, retired
        }

        public struct Change: Sendable, Hashable {
            public var producer: String
            public var outcome: Outcome
            /// The revision of the producer's definition after the apply (the retiring revision
            /// for a retired one).
            public var revision: Int
        }

        /// The plan's revision before the apply.
        public var previousRevision: Int
        /// After it (the same when nothing changed; what it would be, in a dry run).
        public var revision: Int
        public var changes: [Change]
        /// Set when `expectRevision` did not match: nothing was written.
        public var conflict: Bool

        public var changed: Bool { changes.contains { $0.outcome != .unchanged } }
    }

    /// Writes `producers` to the pool's plan in one atomic step: new ones are created, changed
    /// ones updated (both at the new revision), identical ones left alone, and with `prune` the
    /// live producers not in `producers` retired. Nothing changes → no new revision. With
    /// `expectRevision`, a plan at another revision is left untouched and ``ApplyResult/conflict``
    /// is set. With `dryRun`, the outcome is computed and nothing written.
    public func apply(_ producers: [Update], expectRevision: Int?, prune: Bool, dryRun: Bool = false, actor: String,
                      now: Date = Date()) async throws -> ApplyResult {
        var seen: Set<String> = []
        for update in producers where !seen.insert(update.name).inserted {
            throw ServiceError(.invalidArgument, "producer \(update.name) is defined twice")
        }
        // Producers whose entries are unreadable are written again even when their hash matches.
        let unreadable = Set(try await read().skipped.map(\.field))
        var arguments: [any RedisArgument] = [
            expectRevision.map(String.init) ?? "", prune ? "1" : "0", dryRun ? "1" : "0", Self.logLength,
            try Self.fragment(Common(by: actor, at: Self.ms(now))), producers.count,
        ]
        for update in producers.sorted(by: { $0.name < $1.name }) {
            let text = update.definition.canonicalJSON
            let hash = Self.contentHash(text)
            arguments += [update.name, hash,
                          try Self.fragment(Definition(producer: update.name, hash: hash, definition: text, source: update.source)),
                          unreadable.contains("d:" + update.name) ? "1" : "0"]
        }
        let reply = try await evaluate(Self.applyScript, arguments: arguments, doing: "applying the plan")
        let items = reply.array ?? []
        guard let status = items.first?.int else { throw ServiceError(.invalidArgument, "applying the plan: unexpected reply \(reply)") }
        switch status {
        case 0:
            let current = items.count > 1 ? items[1].int ?? 0 : 0
            return ApplyResult(previousRevision: current, revision: current, changes: [], conflict: true)
        case 1:
            guard items.count >= 3, let previous = items[1].int, let revision = items[2].int else {
                throw ServiceError(.invalidArgument, "applying the plan: unexpected reply \(reply)")
            }
            var changes: [ApplyResult.Change] = []
            var index = 3
            while index + 2 < items.count {
                if let name = items[index].string, let outcome = items[index + 1].string.flatMap(ApplyResult.Outcome.init),
                   let revision = items[index + 2].string.flatMap(Int.init) {
                    changes.append(ApplyResult.Change(producer: name, outcome: outcome, revision: revision))
                }
                index += 3
            }
            return ApplyResult(previousRevision: previous, revision: revision, changes: changes, conflict: false)
        default:
            throw ServiceError(.invalidArgument, "the pool's plan revision in \(planKey) is unreadable: \(items.dropFirst().first?.string ?? "")")
        }
    }

    /// Why a pause, resume or trigger was refused.
    public enum Refusal: Error, Sendable, Hashable {
        case unknownProducer
        case retired
        case notPaused
        case paused
        /// A resume at `until` found another pause than the one it ends.
        case pauseChanged
    }

    /// Pauses producer `name` pool-wide. Returns whether it was paused already (the pause is
    /// replaced).
    public func pause(_ name: String, reason: String, until: Date?, stopJobs: Bool, actor: String, now: Date = Date()) async throws
        -> Result<Bool, Refusal>
    {
        let body = try Self.fragment(Pause(reason: reason, until: until.map(Self.ms), stop_jobs: stopJobs, by: actor, at: Self.ms(now)))
        return try await event("paused", name, body: body)
    }

    /// Ends the pause of producer `name`. With `expecting`, only that pause (a resume when its
    /// `until` passed must not end a newer pause).
    public func resume(_ name: String, actor: String, reason: String? = nil, expecting: PlanPause? = nil, now: Date = Date()) async throws
        -> Result<Bool, Refusal>
    {
        let body = try Self.fragment(Note(reason: reason, by: actor, at: Self.ms(now)))
        return try await event("resumed", name, body: body, expected: expecting?.raw ?? "")
    }

    /// Records that `actor` triggered a round of producer `name` (check first that no pause holds:
    /// a paused producer plans nothing, triggered or not).
    public func noteTrigger(_ name: String, actor: String, now: Date = Date()) async throws -> Result<Bool, Refusal> {
        try await event("triggered", name, body: try Self.fragment(Note(reason: nil, by: actor, at: Self.ms(now))))
    }

    private func event(_ kind: String, _ name: String, body: String, expected: String = "") async throws -> Result<Bool, Refusal> {
        let reply = try await evaluate(Self.eventScript, arguments: [name, kind, body, Self.logLength, try Self.json(name), expected],
            doing: "\(kind): producer \(name)")
        let items = reply.array ?? []
        switch items.first?.int {
        case 1: return .success(items.count > 1 && items[1].int == 1)
        case 2: return .failure(.retired)
        case 3: return .failure(.unknownProducer)
        case 4: return .failure(.notPaused)
        case 7: return .failure(.pauseChanged)
        default: throw ServiceError(.invalidArgument, "\(kind): producer \(name): the plan's revision is unreadable")
        }
    }

    // MARK: Last rounds and drift

    /// Keeps `round` as producer `round.producer`'s last round unless a later tick is kept already.
    public func recordLastRound(producer: String, _ round: LastRound) async throws {
        let json = String(decoding: try JSONEncoder().encode(round), as: UTF8.self)
        _ = try await evaluate(Self.lastRoundScript, keys: [lastRoundsKey],
            arguments: [producer, String(Self.ms(round.tick)), json], doing: "recording the last round of \(producer)")
    }

    /// Every producer's last round (unreadable entries skipped).
    public func lastRounds() async throws -> [String: LastRound] {
        let reply = try await send(RedisCommand("HGETALL", lastRoundsKey), doing: "reading last rounds")
        var rounds: [String: LastRound] = [:]
        let items = reply.array ?? []
        var index = 0
        while index + 1 < items.count {
            defer { index += 2 }
            guard let name = items[index].string, let value = items[index + 1].bytes,
                  let bar = value.firstIndex(of: UInt8(ascii: "|")),
                  let round = try? JSONDecoder().decode(LastRound.self, from: Data(value[(bar + 1)...])) else { continue }
            rounds[name] = round
        }
        return rounds
    }

    public func setDrift(_ drift: PlanDrift?, node: String) async throws {
        if let drift {
            let json = String(decoding: try JSONEncoder().encode(drift), as: UTF8.self)
            _ = try await send(RedisCommand("HSET", driftKey, node, json), doing: "reporting plan drift")
        } else {
            _ = try await send(RedisCommand("HDEL", driftKey, node), doing: "clearing plan drift")
        }
    }

    /// Drift reports by node (unreadable ones skipped).
    public func drifts() async throws -> [PlanDrift] {
        let reply = try await send(RedisCommand("HVALS", driftKey), doing: "reading plan drift")
        return (reply.array ?? []).compactMap { $0.bytes.flatMap { try? JSONDecoder().decode(PlanDrift.self, from: Data($0)) } }
            .sorted { $0.node < $1.node }
    }

    // MARK: The change log

    /// A change log entry as a ``PlanEvent`` of this pool; throws for an entry that is not one.
    public func decodeEvent(entryID: String, kind: String, payload: [UInt8]) throws -> PlanEvent {
        struct Wire: Decodable {
            var kind: String
            var producer: String
            var revision: Int
            var by: String
            var at: Int64
            var reason: String?
            var until: Int64?
            var stop_jobs: Bool?
            var hash: String?
            var definition: String?
            var source: String?
        }
        let wire = try Self.decode(Wire.self, Data(payload), as: "a plan change (plan-log entry \(entryID))")
        guard let eventKind = PlanEvent.Kind(rawValue: wire.kind), wire.kind == kind else {
            throw ServiceError(.invalidArgument, "plan-log entry \(entryID): unknown kind '\(wire.kind.prefix(40))'")
        }
        guard Self.validRevision(wire.revision), let at = Self.date(ms: wire.at) else {
            throw ServiceError(.invalidArgument, "plan-log entry \(entryID): revision or time out of range")
        }
        let until = try Self.optionalDate(ms: wire.until, field: "plan-log entry \(entryID): until")
        if eventKind == .created || eventKind == .updated {
            guard let definition = wire.definition, let hash = wire.hash, Self.contentHash(definition) == hash else {
                throw ServiceError(.invalidArgument, "plan-log entry \(entryID): the definition does not match its hash")
            }
        }
        return PlanEvent(pool: pool, entryID: entryID, producer: wire.producer, kind: eventKind, revision: wire.revision, actor: wire.by,
            at: at, reason: wire.reason, until: until, stopJobs: wire.stop_jobs, definition: wire.definition, contentHash: wire.hash,
            source: wire.source)
    }

    // MARK: Encoding

    /// SHA-256 (hex) of a canonical definition.
    public static func contentHash(_ text: String) -> String { SHA256.hex(SHA256.hash(Array(text.utf8))) }

    private struct Common: Encodable { var by: String; var at: Int64 }
    private struct Definition: Encodable { var producer: String; var hash: String; var definition: String; var source: String }
    private struct Pause: Encodable { var reason: String; var until: Int64?; var stop_jobs: Bool; var by: String; var at: Int64 }
    private struct Note: Encodable { var reason: String?; var by: String; var at: Int64 }

    /// The members of an object's JSON without the braces: the scripts splice them together.
    private static func fragment(_ value: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let text = String(decoding: try encoder.encode(value), as: UTF8.self)
        return String(text.dropFirst().dropLast())
    }

    private static func json(_ text: String) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return String(decoding: try encoder.encode(text), as: UTF8.self)
    }

    // MARK: Decoding (nothing read from Redis is trusted)

    /// Revisions are 0 ... 2^53 (what Lua's numbers hold exactly).
    static func validRevision(_ value: Int) -> Bool { value >= 0 && value <= 9_007_199_254_740_991 }

    static func revision(_ text: String) -> Int? {
        guard text.count <= 16, let value = Int(text), validRevision(value) else { return nil }
        return value
    }

    static func ms(_ date: Date) -> Int64 { Int64((date.timeIntervalSince1970 * 1000).rounded()) }

    /// JSON of `what`, or an error that says it is not one.
    private static func decode<T: Decodable>(_ type: T.Type, _ data: Data, as what: String) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: data)
        } catch {
            throw ServiceError(.invalidArgument, "not \(what): \(error)")
        }
    }

    /// An optional time field in range, or an error naming the field.
    private static func optionalDate(ms value: Int64?, field: String) throws -> Date? {
        guard let value else { return nil }
        guard let date = date(ms: value) else { throw ServiceError(.invalidArgument, "\(field) \(value) out of range") }
        return date
    }

    /// Times between 2000 and 2200: anything else is not a time this plan wrote.
    static func date(ms value: Int64) -> Date? {
        guard value >= 946_684_800_000, value <= 7_258_118_400_000 else { return nil }
        return Date(timeIntervalSince1970: Double(value) / 1000)
    }

    /// With `verify`, the definition is parsed too and must define `name` (a planner parses it
    /// anyway, once per change; `read()` verifies every entry).
    static func decodeProducer(_ text: String, name: String, verify: Bool = false) throws -> PlanProducer {
        struct Wire: Decodable {
            var revision: Int
            var producer: String
            var hash: String
            var definition: String
            var source: String?
            var by: String
            var at: Int64
        }
        let wire = try decode(Wire.self, Data(text.utf8), as: "a producer definition entry")
        guard wire.producer == name else { throw ServiceError(.invalidArgument, "entry names producer '\(wire.producer.prefix(80))'") }
        guard validRevision(wire.revision), wire.revision > 0 else { throw ServiceError(.invalidArgument, "revision \(wire.revision) out of range") }
        guard let at = date(ms: wire.at) else { throw ServiceError(.invalidArgument, "time \(wire.at) out of range") }
        guard contentHash(wire.definition) == wire.hash else { throw ServiceError(.invalidArgument, "the definition does not match its hash") }
        if verify {
            let definition: ProducerDefinition
            do {
                definition = try ProducerDefinition(canonicalJSON: wire.definition)
            } catch {
                throw ServiceError(.invalidArgument, "unreadable definition: \(error)")
            }
            guard definition.name == name else {
                throw ServiceError(.invalidArgument, "the definition is of producer '\(definition.name.prefix(80))'")
            }
        }
        return PlanProducer(name: name, revision: wire.revision, contentHash: wire.hash, definition: wire.definition, actor: wire.by, at: at,
            source: wire.source ?? "")
    }

    static func decodePause(_ text: String) throws -> PlanPause {
        struct Wire: Decodable {
            var reason: String
            var until: Int64?
            var stop_jobs: Bool
            var by: String
            var at: Int64
        }
        let wire = try decode(Wire.self, Data(text.utf8), as: "a pause entry")
        guard let at = date(ms: wire.at) else { throw ServiceError(.invalidArgument, "time \(wire.at) out of range") }
        return PlanPause(reason: wire.reason, until: try optionalDate(ms: wire.until, field: "until"), stopJobs: wire.stop_jobs, actor: wire.by, at: at, raw: text)
    }

    static func decodeRetirement(_ text: String) throws -> PlanRetirement {
        struct Wire: Decodable {
            var revision: Int
            var by: String
            var at: Int64
        }
        let wire = try decode(Wire.self, Data(text.utf8), as: "a retirement entry")
        guard validRevision(wire.revision), let at = date(ms: wire.at) else { throw ServiceError(.invalidArgument, "revision or time out of range") }
        return PlanRetirement(revision: wire.revision, actor: wire.by, at: at)
    }

    // MARK: Redis

    private func send(_ command: RedisCommand, doing what: String) async throws -> RedisValue {
        do {
            return try await client.send(command).throwingServerError()
        } catch let error as RedisError {
            throw ServiceError(.redis, "\(what) of pool \(pool): \(error.message)", underlying: error)
        }
    }

    private func evaluate(_ script: RedisScript, keys: [String]? = nil, arguments: [any RedisArgument], doing what: String) async throws
        -> RedisValue
    {
        do {
            let keys: [any RedisArgument] = keys ?? [planKey, logKey]
            return try await client.evaluate(script, keys: keys, arguments: arguments).throwingServerError()
        } catch let error as RedisError {
            throw ServiceError(.redis, "\(what) of pool \(pool): \(error.message)", underlying: error)
        }
    }

    // MARK: Scripts

    /// Reads the revision; nil (and the script returns {5, raw}) when it is not a number in range.
    private static let revisionHelper = """
        local function plan_revision()
          local raw = redis.call('HGET', KEYS[1], '=revision') or '0'
          if string.len(raw) > 16 or not string.match(raw, '^%d+$') then return nil, raw end
          local rev = tonumber(raw)
          if rev > 9007199254740991 then return nil, raw end
          return rev, raw
        end

        """

    /// KEYS: plan, plan-log. ARGV: expected revision ('' any), prune, dry run, log length, the
    /// common JSON members (by, at), count, then per producer: name, hash, its JSON members, and
    /// '1' to write it even if its hash matches (its entry is unreadable).
    /// → {0, current} conflict · {1, previous, revision, name, outcome, revision, …} · {5, raw}.
    static let applyScript = RedisScript(revisionHelper + """
        local rev, raw = plan_revision()
        if not rev then return {5, raw} end
        if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= rev then return {0, rev} end
        local prune, dry, maxlen, common, n = ARGV[2] == '1', ARGV[3] == '1', ARGV[4], ARGV[5], tonumber(ARGV[6])
        local new = rev + 1
        local newtext = string.format('%d', new)
        local out = {1, rev, rev}
        local changed = false
        local listed = {}
        local function log(kind, members)
          if dry then return end
          redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', 'n', kind, 'p',
            '{"kind":"' .. kind .. '","revision":' .. newtext .. ',' .. members .. ',' .. common .. '}')
        end
        for i = 0, n - 1 do
          local name, hash, members, repair = ARGV[7 + i * 4], ARGV[8 + i * 4], ARGV[9 + i * 4], ARGV[10 + i * 4] == '1'
          listed[name] = true
          local exists = redis.call('HEXISTS', KEYS[1], 'd:' .. name) == 1
          local current = redis.call('HGET', KEYS[1], 'h:' .. name)
          local crev, chash
          if current then crev, chash = string.match(current, '^(%d+) (%x+)$') end
          if exists and chash == hash and not repair then
            table.insert(out, name); table.insert(out, 'unchanged'); table.insert(out, crev)
          else
            local outcome = exists and 'updated' or 'created'
            changed = true
            table.insert(out, name); table.insert(out, outcome); table.insert(out, newtext)
            if not dry then
              redis.call('HSET', KEYS[1], 'd:' .. name, '{"revision":' .. newtext .. ',' .. members .. ',' .. common .. '}',
                'h:' .. name, newtext .. ' ' .. hash)
              redis.call('HDEL', KEYS[1], 'r:' .. name)
              log(outcome, members)
            end
          end
        end
        if prune then
          local fields = redis.call('HKEYS', KEYS[1])
          table.sort(fields)
          for _, field in ipairs(fields) do
            if string.sub(field, 1, 2) == 'd:' then
              local name = string.sub(field, 3)
              if not listed[name] then
                changed = true
                table.insert(out, name); table.insert(out, 'retired'); table.insert(out, newtext)
                if not dry then
                  local members = '"producer":' .. cjson.encode(name)
                  redis.call('HDEL', KEYS[1], field, 'h:' .. name, 'p:' .. name)
                  redis.call('HSET', KEYS[1], 'r:' .. name, '{"revision":' .. newtext .. ',' .. members .. ',' .. common .. '}')
                  log('retired', members)
                end
              end
            end
          end
        end
        if changed then
          out[3] = new
          if not dry then redis.call('HSET', KEYS[1], '=revision', newtext) end
        end
        return out
        """)

    /// KEYS: plan, plan-log. ARGV: name, kind (paused, resumed, triggered), its JSON members, log
    /// length, the name as JSON, the pause a resume must find ('' any).
    /// → {1, was paused} · {2} retired · {3} unknown · {4} not paused · {5} bad revision · {7}
    /// another pause.
    static let eventScript = RedisScript(revisionHelper + """
        local name, kind = ARGV[1], ARGV[2]
        if redis.call('HEXISTS', KEYS[1], 'd:' .. name) == 0 then
          if redis.call('HEXISTS', KEYS[1], 'r:' .. name) == 1 then return {2} end
          return {3}
        end
        local rev = plan_revision()
        if not rev then return {5} end
        local pause = redis.call('HGET', KEYS[1], 'p:' .. name)
        if kind == 'paused' then
          redis.call('HSET', KEYS[1], 'p:' .. name, '{' .. ARGV[3] .. '}')
        elseif kind == 'resumed' then
          if not pause then return {4} end
          if ARGV[6] ~= '' and pause ~= ARGV[6] then return {7} end
          redis.call('HDEL', KEYS[1], 'p:' .. name)
        elseif kind == 'triggered' then
          -- A note of a trigger made: whether a pause holds (its `until` is in the caller's time)
          -- was the caller's to check before triggering.
        else
          return {5}
        end
        redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'n', kind, 'p',
          '{"kind":"' .. kind .. '","producer":' .. ARGV[5] .. ',"revision":' .. string.format('%d', rev) .. ',' .. ARGV[3] .. '}')
        if pause then return {1, 1} end
        return {1, 0}
        """)

    /// KEYS: last rounds. ARGV: producer, tick (Unix ms), JSON. Kept unless a later tick is.
    static let lastRoundScript = RedisScript("""
        local current = redis.call('HGET', KEYS[1], ARGV[1])
        if current then
          local tick = string.match(current, '^(%d+)|')
          if tick and string.len(tick) <= 16 and tonumber(tick) >= tonumber(ARGV[2]) then return 0 end
        end
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3])
        return 1
        """)
}

extension LastRound {
    init(_ round: RoundRecord, missed: Int) {
        self.init(id: round.roundID, tick: round.tick, node: round.node, revision: round.revision, finished: round.finishedAt,
            started: round.started, stopped: round.stopped, failed: round.failed, error: round.error, missed: missed)
    }
}
