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
