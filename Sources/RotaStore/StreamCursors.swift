import Foundation
import GRDB

/// A Redis stream entry ID, `ms-seq`. IDs order as (ms, seq) integer pairs, not as text
/// ("10-0" comes after "9-0"); the ms part is the entry's time.
public struct StreamEntryID: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var ms: UInt64
    public var seq: UInt64

    public init(ms: UInt64, seq: UInt64) {
        self.ms = ms
        self.seq = seq
    }

    /// Parses `ms-seq`; nil for anything else.
    public init?(_ text: String) {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 2, let ms = UInt64(parts[0]), let seq = UInt64(parts[1]) else { return nil }
        self.init(ms: ms, seq: seq)
    }

    public var description: String { "\(ms)-\(seq)" }

    public static func < (lhs: StreamEntryID, rhs: StreamEntryID) -> Bool {
        (lhs.ms, lhs.seq) < (rhs.ms, rhs.seq)
    }

    /// The smallest ID after this one (nil after the largest).
    /// The smallest ID after this one; nil after the largest.
    public var successor: StreamEntryID? {
        if seq < UInt64.max { return StreamEntryID(ms: ms, seq: seq + 1) }
        if ms < UInt64.max { return StreamEntryID(ms: ms + 1, seq: 0) }
        return nil
    }
}

/// A hole in this node's history: the stream's entries after `after` and before `before` were
/// trimmed before this node read them, so its history lacks whatever they were.
public struct HistoryGap: Sendable, Hashable {
    public var pool: String
    public var stream: String
    public var after: String
    public var before: String
    public var detectedAt: Date
    /// When `rota history sync` copied what it lacks from another node's database, and which one.
    public var filledAt: Date?
    public var filledFrom: String?

    public init(pool: String, stream: String, after: String, before: String, detectedAt: Date, filledAt: Date? = nil,
                filledFrom: String? = nil) {
        self.pool = pool
        self.stream = stream
        self.after = after
        self.before = before
        self.detectedAt = detectedAt
        self.filledAt = filledAt
        self.filledFrom = filledFrom
    }

    /// Whether some entry ID lies inside both gaps (both exclude their ends).
    func overlaps(_ other: HistoryGap) -> Bool {
        guard let a = StreamEntryID(after), let b = StreamEntryID(before), let c = StreamEntryID(other.after),
            let d = StreamEntryID(other.before)
        else { return true }  // unreadable: assume the worst
        guard let first = max(a, c).successor else { return false }
        return first < min(b, d)
    }
}

extension StoreError.Code {
    /// An argument the store cannot take (a malformed stream entry ID, an empty range).
    public static let invalidArgument = StoreError.Code("invalidArgument")
}

extension PlanStore {
    /// The last entry ID this node recorded from `stream` of `pool`, or nil if it never read it.
    public func streamCursor(pool: String, stream: String) throws(StoreError) -> String? {
        do {
            return try database.read { db in try Self.streamCursor(db, pool: pool, stream: stream) }
        } catch {
            throw Self.map(error, path: path, doing: "read")
        }
    }

    static func streamCursor(_ db: Database, pool: String, stream: String) throws -> String? {
        try String.fetchOne(db, sql: "SELECT last_id FROM stream_cursor WHERE pool = ? AND stream = ?", arguments: [pool, stream])
    }

    /// Moves the cursor of `stream` to `lastID`, never back: an older ID (another reader, a late
    /// batch) leaves it where it is. Returns whether it moved. A malformed ID is refused.
    @discardableResult
    public func setStreamCursor(pool: String, stream: String, lastID: String) throws(StoreError) -> Bool {
        guard let new = StreamEntryID(lastID) else {
            throw StoreError(.invalidArgument, "'\(lastID)' is not a stream entry ID (ms-seq)")
        }
        do {
            return try database.write { db in
                if let current = try Self.streamCursor(db, pool: pool, stream: stream), let old = StreamEntryID(current), new <= old {
                    return false
                }
                try db.execute(sql: """
                    INSERT INTO stream_cursor (pool, stream, last_id) VALUES (?, ?, ?)
                    ON CONFLICT (pool, stream) DO UPDATE SET last_id = excluded.last_id
                    """, arguments: [pool, stream, new.description])
                return true
            }
        } catch {
            throw Self.map(error, path: path, doing: "write")
        }
    }

    /// Records that the entries of `stream` after `after` and before `before` were trimmed before
    /// this node read them. Idempotent; returns whether the gap was new.
    @discardableResult
    public func recordGap(pool: String, stream: String, after: String, before: String, at: Date = Date()) throws(StoreError) -> Bool {
        guard let from = StreamEntryID(after), let to = StreamEntryID(before), from < to else {
            throw StoreError(.invalidArgument, "gap '\(after)'..'\(before)' is not a range of stream entry IDs (ms-seq, first < last)")
        }
        do {
            return try database.write { db in
                try db.execute(sql: """
                    INSERT INTO history_gap (pool, stream, after_id, before_id, detected_ms) VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT (pool, stream, after_id, before_id) DO NOTHING
                    """, arguments: [pool, stream, from.description, to.description, Self.ms(at)])
                return db.changesCount > 0
            }
        } catch {
            throw Self.map(error, path: path, doing: "write")
        }
    }

    /// The gaps recorded (of one pool, when given), unfilled ones only unless `includeFilled`,
    /// in the order they were detected.
    public func gaps(pool: String? = nil, includeFilled: Bool = false) throws(StoreError) -> [HistoryGap] {
        do {
            return try database.read { db in try Self.gaps(db, pool: pool, includeFilled: includeFilled).map(\.gap) }
        } catch {
            throw Self.map(error, path: path, doing: "read")
        }
    }

    static func gaps(_ db: Database, pool: String?, includeFilled: Bool) throws -> [(id: Int64, gap: HistoryGap)] {
        var conditions: [String] = []
        var arguments: [any DatabaseValueConvertible] = []
        if let pool { conditions.append("pool = ?"); arguments.append(pool) }
        if !includeFilled { conditions.append("filled_ms IS NULL") }
        let sql = "SELECT * FROM history_gap" + (conditions.isEmpty ? "" : " WHERE " + conditions.joined(separator: " AND ")) + " ORDER BY id"
        return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(arguments)).map { row in
            (row["id"], HistoryGap(pool: row["pool"], stream: row["stream"], after: row["after_id"], before: row["before_id"],
                detectedAt: date(row["detected_ms"]), filledAt: (row["filled_ms"] as Int64?).map(date), filledFrom: row["filled_from"]))
        }
    }
}
