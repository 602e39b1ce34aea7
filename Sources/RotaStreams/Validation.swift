import Foundation
import RotaRedis

/// Name and ID checks, all done before anything is sent to Redis.
enum Validation {
    private static let forbidden: Set<Unicode.Scalar> = [" ", "\0", "*", "?", "[", "]", "{", "}"]

    /// Stream and sink names: 1–512 characters, none of space, NUL, `*`, `?`, `[`, `]`, `{`, `}`.
    ///
    /// The braces are reserved because a name inside a key must not open a second cluster hash tag;
    /// the others because names end up in `SCAN`/`KEYS` patterns when operators inspect a pool.
    static func name(_ name: String, kind: String) throws(RedisError) {
        guard !name.isEmpty, name.count <= 512 else {
            throw RedisError(.invalidArgument, "\(kind) name must be 1-512 characters, got \(name.count)")
        }
        if let bad = name.unicodeScalars.first(where: { forbidden.contains($0) }) {
            throw RedisError(.invalidArgument, "\(kind) name '\(name)' contains the reserved character '\(bad.escaped(asASCII: true))'")
        }
    }

    /// A stream entry ID as Redis accepts it for a start position: `<ms>` or `<ms>-<seq>`.
    static func entryID(_ id: String) throws(RedisError) {
        guard EntryID(id) != nil else {
            throw RedisError(.invalidArgument, "'\(id)' is not a stream entry ID (expected <ms>-<seq> or <ms>)")
        }
    }

    /// Compiles a topic pattern once, so an invalid one fails when the sink or reader is created.
    static func topicPattern(_ pattern: String) throws(RedisError) {
        do {
            _ = try Regex(pattern)
        } catch {
            throw RedisError(.invalidArgument, "topic pattern must be a valid regex: \(error)", underlying: error)
        }
    }

    static func positive(_ duration: Duration, _ what: String) throws(RedisError) {
        guard duration > .zero else { throw RedisError(.invalidArgument, "\(what) must be positive, got \(duration)") }
    }
}

/// A parsed stream entry ID, `<ms>-<seq>`; a bare `<ms>` means `<ms>-0`.
struct EntryID: Comparable, Hashable, Sendable, CustomStringConvertible {
    var milliseconds: UInt64
    var sequence: UInt64

    static let zero = EntryID(milliseconds: 0, sequence: 0)

    init(milliseconds: UInt64, sequence: UInt64) {
        self.milliseconds = milliseconds
        self.sequence = sequence
    }

    init?(_ text: String) {
        let parts = text.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
        guard let ms = parts.first.flatMap({ UInt64($0) }) else { return nil }
        if parts.count == 2 {
            guard let seq = UInt64(parts[1]) else { return nil }
            self.init(milliseconds: ms, sequence: seq)
        } else {
            self.init(milliseconds: ms, sequence: 0)
        }
    }

    /// The cursor just before `date`'s millisecond, so reading "after" it includes entries created
    /// at `date` (Redis cursors are exclusive).
    static func before(_ date: Date) -> EntryID {
        let ms = UInt64(max(0, (date.timeIntervalSince1970 * 1000).rounded(.down)))
        return ms == 0 ? .zero : EntryID(milliseconds: ms - 1, sequence: UInt64.max)
    }

    static func < (a: EntryID, b: EntryID) -> Bool {
        (a.milliseconds, a.sequence) < (b.milliseconds, b.sequence)
    }

    var description: String { "\(milliseconds)-\(sequence)" }

    /// The entry's creation time: the ID's millisecond part, as Redis derives it from its clock.
    var date: Date { Date(timeIntervalSince1970: Double(milliseconds) / 1000) }
}

/// Unix time in nanoseconds, the unit of keep-alive timestamps.
func unixNanoseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
}

func unixMilliseconds() -> Int64 { unixNanoseconds() / 1_000_000 }

extension Duration {
    /// Whole milliseconds, rounded up so that a positive duration never becomes 0.
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        let ms = seconds * 1000 + attoseconds / 1_000_000_000_000_000
        return attoseconds % 1_000_000_000_000_000 > 0 ? ms + 1 : ms
    }

    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
