import Foundation

extension ProducerDefinition {
    /// The definition as canonical JSON: the same definition always gives the same text, so the
    /// store can tell "unchanged" from "updated" by comparing texts, and keep each revision as is.
    public var canonicalJSON: String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        func date(_ value: Date?) -> CanonicalJSON { value.map { .string(formatter.string(from: $0)) } ?? .null }
        let (seconds, attoseconds) = interval.components
        let jobs: [CanonicalJSON] = jobs.map { job in
            .object([
                "key": .string(job.key),
                "handler": .string(job.handler),
                "payload": .raw(job.payload),
                "active": job.active.map { .string($0.source) } ?? .null,
                "from": date(job.from),
                "until": date(job.until),
            ])
        }
        let value = CanonicalJSON.object([
            "name": .string(name),
            "every_ms": .integer(seconds * 1000 + attoseconds / 1_000_000_000_000_000),
            "mode": .string(mode.rawValue),
            "timezone": .string(timeZone),
            "jobs": .array(jobs),
            "stop": .array(stop.map { .string($0) }),
        ])
        return String(decoding: value.bytes, as: UTF8.self)
    }
}

/// FNV-1a (64-bit) of a text, as 16 hex digits: a short fingerprint to show beside a definition.
/// Equality is always decided on the full text, never on this.
public func fingerprint(_ text: String) -> String {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in text.utf8 {
        hash ^= UInt64(byte)
        hash &*= 0x0000_0100_0000_01B3
    }
    let hex = String(hash, radix: 16)
    return String(repeating: "0", count: 16 - hex.count) + hex
}

/// A stored definition that cannot be read back (written by an incompatible Rota, or edited by hand).
public struct DefinitionDecodingError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

extension ProducerDefinition {
    /// Reads back a definition stored as ``canonicalJSON``.
    public init(canonicalJSON text: String) throws(DefinitionDecodingError) {
        let value: CanonicalJSON
        do {
            value = try JSONDecoder().decode(CanonicalJSON.self, from: Data(text.utf8))
        } catch {
            throw DefinitionDecodingError(message: "stored definition is not JSON: \(error)")
        }
        func bad(_ what: String) -> DefinitionDecodingError { DefinitionDecodingError(message: "stored definition: \(what)") }
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        guard let name = value["name"]?.stringValue else { throw bad("missing name") }
        guard case .integer(let milliseconds)? = value["every_ms"] else { throw bad("missing every_ms") }
        guard let mode = value["mode"]?.stringValue.flatMap(Mode.init(rawValue:)) else { throw bad("bad mode") }
        guard let timeZone = value["timezone"]?.stringValue else { throw bad("missing timezone") }
        guard case .array(let jobItems)? = value["jobs"], case .array(let stopItems)? = value["stop"] else { throw bad("missing jobs or stop") }
        var jobs: [JobDefinition] = []
        for item in jobItems {
            guard let key = item["key"]?.stringValue, let handler = item["handler"]?.stringValue, let payload = item["payload"] else {
                throw bad("a job lacks key, handler or payload")
            }
            var active: CronExpression?
            if let source = item["active"]?.stringValue {
                do { active = try CronExpression(parsing: source) } catch { throw bad("job \(key): \(error.message)") }
            }
            let from = item["from"]?.stringValue.flatMap { formatter.date(from: $0) }
            let until = item["until"]?.stringValue.flatMap { formatter.date(from: $0) }
            jobs.append(JobDefinition(key: key, handler: handler, payload: payload.bytes, active: active, from: from, until: until))
        }
        self.init(name: name, interval: .milliseconds(milliseconds), mode: mode, timeZone: timeZone, jobs: jobs,
            stop: stopItems.compactMap(\.stringValue))
    }

    /// One maximal span of real time during which a job is desired.
    public struct DesiredWindow: Sendable, Hashable {
        public var job: String
        public var from: Date
        public var until: Date
    }

    /// When each job is desired within `[start, end)`: its cron window (on the producer's wall
    /// clock) clipped to its bounds; a job without a window is desired over its whole bounds.
    /// Ordered by job key, then time.
    public func desiredIntervals(from start: Date, until end: Date) -> [DesiredWindow] {
        let zone = TimeZone(identifier: timeZone) ?? TimeZone(secondsFromGMT: 0) ?? .current
        var windows: [DesiredWindow] = []
        for job in jobs.sorted(by: { $0.key < $1.key }) {
            let lower = max(start, job.from ?? start)
            let upper = min(end, job.until ?? end)
            guard lower < upper else { continue }
            if let active = job.active {
                windows += active.activeIntervals(from: lower, until: upper, in: zone).map { DesiredWindow(job: job.key, from: $0.from, until: $0.until) }
            } else {
                windows.append(DesiredWindow(job: job.key, from: lower, until: upper))
            }
        }
        return windows
    }
}
