import Foundation
import Logging
import Metrics
import RotaRedis

/// Who asked for a job action and why: carried with dispatches and stops into the pool's job log.
public struct JobOrigin: Sendable, Hashable {
    /// A node name, or "user@host" for a CLI action. At most 200 bytes.
    public var actor: String
    /// e.g. window-opened, window-closed, added-to-plan, removed-from-plan, stop-list,
    /// payload-changed, retired, paused, manual. At most 64 bytes.
    public var reason: String
    /// The planning round's ID when a round asked. At most 300 bytes.
    public var round: String?

    public init(actor: String, reason: String, round: String? = nil) {
        self.actor = actor
        self.reason = reason
        self.round = round
    }

    static let maxActorBytes = 200
    static let maxReasonBytes = 64
    static let maxRoundBytes = 300

    /// True when the fields fit the wire records (a longer one makes the record malformed).
    var fitsWire: Bool {
        actor.utf8.count <= Self.maxActorBytes && reason.utf8.count <= Self.maxReasonBytes
            && (round?.utf8.count ?? 0) <= Self.maxRoundBytes
    }

    /// Checked before anything is sent: a record other nodes would refuse must not be written.
    func validate() throws(PoolError) {
        guard fitsWire else {
            throw PoolError(.invalidArgument, "job origin: actor ≤ \(Self.maxActorBytes), reason ≤ \(Self.maxReasonBytes) and round ≤ \(Self.maxRoundBytes) bytes")
        }
    }
}

/// What a stop confirmed by the pool did (``Node/stopAndWait(key:origin:)``).
public enum StopOutcome: Sendable, Hashable {
    /// The owner's stop handler returned; the job is gone from the pool.
    case stopped(worker: String)
    /// No such job (no payload in Redis).
    case notRunning
    /// The job existed but no worker ran it; it was ended.
    case endedUnowned
}

/// One job of a ``JobLogEntry``.
public struct JobLogJob: Sendable, Hashable {
    public var job: String
    /// From the dispatch or stop that caused the transition, or from the pool itself (a node name).
    public var actor: String?
    public var reason: String?
    public var round: String?
    /// The start was a handoff or recovery of a job that already ran somewhere.
    public var requeued: Bool
    /// The handler's or runner's error text (`start-failed`, `stop-failed`, `given-up`, `failed`).
    public var error: String?
    /// Consecutive failed requeued starts (`start-failed`, `given-up`).
    public var failures: Int?

    public init(job: String, actor: String? = nil, reason: String? = nil, round: String? = nil, requeued: Bool = false, error: String? = nil, failures: Int? = nil) {
        self.job = job
        self.actor = actor
        self.reason = reason
        self.round = round
        self.requeued = requeued
        self.error = error
        self.failures = failures
    }
}

/// One entry of the pool's job log: facts the pool itself recorded about job transitions, appended
/// by the same atomic script that changed the pool's state where a script is involved.
///
/// The log is the Redis stream ``Node/jobLogKey`` (`rota:{pool}:stream:job-log`, `MAXLEN ~ 100000`),
/// entries in the layout of every pool stream: field `n` = `"e"`, field `p` = one JSON object:
///
/// ```json
/// {"v":1,"kind":"started","worker":"<worker id>","node":"<node name>","node_id":"<node id>",
///  "at":1733600000123,"jobs":[{"job":"k","actor":"…","reason":"…","round":"…","requeued":false}]}
/// ```
///
/// `at` is Unix milliseconds on the writer's clock; `lost` entries add `last_seen`, the dead
/// worker's last keep-alive in Unix milliseconds (on its node's clock, capped at `at`). In a job,
/// `actor`, `reason`, `round`, `error` and `failures` are left out when they do not apply; `requeued` is always there. One entry per
/// batch or transition (one per commit batch on the start path). `worker` is "" when no worker
/// is involved (`orphan-requeued`, `ended-unowned`).
///
/// Kinds:
/// - `started`: a worker's start handler returned and the pool recorded the worker as the owner
///   (fresh dispatch, requeue, handoff). Not for a repeated delivery of a job the worker runs
///   already with the same payload, nor for a worker registering its jobs again after Redis lost them.
/// - `start-failed`: a requeued start failed; `error`, and `failures` (consecutive failures).
/// - `stopped`: the owner's stop handler returned and the job ended (payload removed). Origin from
///   the stop request; reason `shutdown` when the pool shut down. For a ``JobRunner`` job whose
///   stop failed (it outlived its grace period), written when the run finally ends.
/// - `stop-failed`: the stop handler threw; the job stays running and owned (`error`).
/// - `released`: stopped here for a handoff; the job is requeued for another worker (reason
///   `rebalance`, `worker-closing`, `worker-removed`).
/// - `taken-over`: stopped here without touching the pool's state: another worker owns the job
///   (reason `taken-over`), a peer evicted this worker (`evicted`), or the job was ended while its
///   requeued start ran here, so the start was refused (`ended`).
/// - `lost`: a peer found `worker` dead and requeued its jobs (`node` is the cleaning node; reason
///   `worker-lost`; `last_seen` its last keep-alive, when Redis still had it). Also written with
///   reason `displaced` when a requeued start replaced `worker` as the owner (a late or repeated
///   requeue): a live `worker` then stops its copy and logs `taken-over`, which ends its run instead.
/// - `orphan-requeued`: a payload without an owner was requeued (reason `orphan`).
/// - `ended-unowned`: a stop ended a job that no active worker ran.
/// - `finished` / `failed`: a ``JobRunner`` job returned / threw (`error`) by itself and left the pool.
/// - `unplaced`: no active worker has the capability the job requires; the job waits in the pool
///   (`error` names the capability) and starts once such a worker joins.
/// - `given-up`: a requeued job failed to start ``Node/Options/maxStartFailures`` times in a row
///   and was removed from the pool (`error` is the last one).
public struct JobLogEntry: Sendable, Hashable {
    public enum Kind: String, Sendable, Hashable, CaseIterable {
        case started
        case startFailed = "start-failed"
        case stopped
        case stopFailed = "stop-failed"
        case released
        case takenOver = "taken-over"
        case lost
        case orphanRequeued = "orphan-requeued"
        case endedUnowned = "ended-unowned"
        case givenUp = "given-up"
        case finished
        case failed
        case unplaced
    }

    /// The stream entry's `n` field.
    public static let eventName = "e"
    /// The format version (`v`); entries of other versions are refused.
    public static let version = 1
    /// The stream's approximate cap (`XADD MAXLEN ~`).
    public static let maxLength = 100_000
    /// The stream's name in the pool's key space (`rota:{pool}:stream:job-log`).
    public static let streamName = "job-log"

    public var kind: Kind
    public var worker: String
    /// The writing node's name (``Node/Options/name``).
    public var node: String
    public var nodeID: String
    public var at: Date
    /// For `lost`: the dead worker's last keep-alive (the jobs ran at most until about then, within
    /// one ``Node/Options/keepAliveInterval``); never after `at`.
    public var lastSeen: Date?
    public var jobs: [JobLogJob]

    public init(kind: Kind, worker: String, node: String, nodeID: String, at: Date, lastSeen: Date? = nil, jobs: [JobLogJob]) {
        self.kind = kind
        self.worker = worker
        self.node = node
        self.nodeID = nodeID
        self.at = at
        self.lastSeen = lastSeen
        self.jobs = jobs
    }

    static let maxStringBytes = 1024
    static let maxJobs = 10_000
    static let maxEntryBytes = 32 << 20
    /// 2000-01-01 and 2200-01-01 in Unix milliseconds.
    static let atRange: ClosedRange<Int64> = 946_684_800_000...7_258_118_400_000

    private struct WireJob: Decodable {
        let job: String
        let actor: String?
        let reason: String?
        let round: String?
        let requeued: Bool
        let error: String?
        let failures: Int?
    }

    private struct Wire: Decodable {
        let v: Int
        let kind: String
        let worker: String
        let node: String
        let node_id: String
        let at: Int64
        let last_seen: Int64?
        let jobs: [WireJob]
    }

    /// Decodes an entry's `p` field. Everything is range-checked (times 2000–2200, strings up to
    /// 1 KiB, at most 10,000 jobs, known kinds and version): the stream is in Redis, so anything
    /// may be in it.
    public static func decode(_ bytes: [UInt8]) throws(PoolError) -> JobLogEntry {
        guard bytes.count <= maxEntryBytes else { throw malformed("entry of \(bytes.count) bytes") }
        let wire: Wire
        do {
            wire = try JSONDecoder().decode(Wire.self, from: Data(bytes))
        } catch {
            throw malformed("\(error)")
        }
        guard wire.v == version else { throw malformed("version \(wire.v)") }
        guard let kind = Kind(rawValue: wire.kind) else { throw malformed("unknown kind '\(wire.kind.prefix(64))'") }
        guard atRange.contains(wire.at) else { throw malformed("time \(wire.at) out of range") }
        if let seen = wire.last_seen, !atRange.contains(seen) || seen > wire.at {
            throw malformed("last_seen \(seen) out of range or after the entry's time")
        }
        guard wire.jobs.count <= maxJobs else { throw malformed("\(wire.jobs.count) jobs") }
        try checkLength(wire.worker, "worker")
        try checkLength(wire.node, "node")
        try checkLength(wire.node_id, "node_id")
        var jobs: [JobLogJob] = []
        jobs.reserveCapacity(wire.jobs.count)
        for job in wire.jobs {
            try checkLength(job.job, "job")
            for (value, name) in [(job.actor, "actor"), (job.reason, "reason"), (job.round, "round"), (job.error, "error")] {
                if let value { try checkLength(value, name) }
            }
            if let failures = job.failures, failures < 0 || failures > 1_000_000_000 { throw malformed("failures \(failures)") }
            jobs.append(JobLogJob(job: job.job, actor: job.actor, reason: job.reason, round: job.round, requeued: job.requeued, error: job.error, failures: job.failures))
        }
        return JobLogEntry(
            kind: kind, worker: wire.worker, node: wire.node, nodeID: wire.node_id,
            at: Date(timeIntervalSince1970: Double(wire.at) / 1000),
            lastSeen: wire.last_seen.map { Date(timeIntervalSince1970: Double($0) / 1000) }, jobs: jobs
        )
    }

    private static func checkLength(_ value: String, _ field: String) throws(PoolError) {
        guard value.utf8.count <= maxStringBytes else { throw malformed("\(field) longer than \(maxStringBytes) bytes") }
    }

    private static func malformed(_ problem: String) -> PoolError {
        PoolError(.invalidArgument, "malformed job log entry: \(problem)")
    }
}

// MARK: Writing

/// Builds job-log JSON in pieces, so that scripts can assemble an entry from the jobs they
/// actually changed: `head + fragments joined by "," + "]}"`.
enum JobLogJSON {
    /// `lastSeen`: a dead worker's last keep-alive (Unix nanoseconds), for `lost`; never later than `at`.
    static func head(_ kind: JobLogEntry.Kind, worker: String, node: Node, lastSeen: Int64? = nil) -> String {
        let at = nowNanos() / 1_000_000
        let seen = lastSeen.map { ",\"last_seen\":\(min($0 / 1_000_000, at))" } ?? ""
        return "{\"v\":\(JobLogEntry.version),\"kind\":\(quote(kind.rawValue)),\"worker\":\(quote(worker)),\"node\":\(quote(node.options.name)),"
            + "\"node_id\":\(quote(node.id)),\"at\":\(at)\(seen),\"jobs\":["
    }

    /// One job object. Scripts that append `failures` rely on it ending with `}`.
    static func job(_ key: String, origin: JobOrigin?, requeued: Bool = false, error: String? = nil) -> String {
        var text = "{\"job\":\(quote(key))"
        if let origin {
            text += ",\"actor\":\(quote(origin.actor)),\"reason\":\(quote(origin.reason))"
            if let round = origin.round { text += ",\"round\":\(quote(round))" }
        }
        text += ",\"requeued\":\(requeued)"
        if let error { text += ",\"error\":\(quote(clip(error)))" }
        return text + "}"
    }

    static func entry(_ head: String, _ jobs: [String]) -> String {
        head + jobs.joined(separator: ",") + "]}"
    }

    /// Error texts come from handlers: kept within what readers accept.
    static func clip(_ text: String) -> String {
        guard text.utf8.count > JobLogEntry.maxStringBytes - 16 else { return text }
        var clipped = ""
        for character in text {
            if clipped.utf8.count + character.utf8.count > JobLogEntry.maxStringBytes - 16 { break }
            clipped.append(character)
        }
        return clipped + "…"
    }

    static func quote(_ text: String) -> String {
        // Keys, IDs and names rarely need escaping: one pass over the bytes decides.
        if !text.utf8.contains(where: { $0 < 0x20 || $0 == 0x22 || $0 == 0x5C || $0 == 0x7F }) { return "\"" + text + "\"" }
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

extension Node {
    /// The Redis stream of the pool's job log (see ``JobLogEntry``).
    public var jobLogKey: String { keySpace.key("stream", JobLogEntry.streamName) }

    /// Start-failure counts of requeued jobs (job key → consecutive failures): a plain hash, read
    /// and written only by scripts.
    var startFailuresKey: String { keySpace.key("start-failures") }

    /// Appends an entry outside a script. A failure is logged and counted, never thrown: the job
    /// log must not fail the operation it describes.
    func appendJobLog(_ kind: JobLogEntry.Kind, worker: String, lastSeen: Int64? = nil, jobs: [String]) async {
        guard !jobs.isEmpty else { return }
        let entry = JobLogJSON.entry(JobLogJSON.head(kind, worker: worker, node: self, lastSeen: lastSeen), jobs)
        let (client, key) = (client, jobLogKey)
        do {
            // The fact is written even when the caller is being cancelled (a worker's loop stops
            // jobs it found taken over while its node evicts it): the task is awaited here, so
            // it does not outlive this call; it only does not inherit the cancellation.
            _ = try await Task {
                try await client.send("XADD", key, "MAXLEN", "~", JobLogEntry.maxLength, "*", "n", JobLogEntry.eventName, "p", entry)
            }.value
        } catch {
            Counter(label: "rota_job_log_write_failures").increment()
            logger.warning("could not append to the job log", metadata: ["kind": "\(kind.rawValue)", "error": "\(error)"])
        }
    }
}
