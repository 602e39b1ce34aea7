import Foundation

// Binary records exchanged on the pool's Redis streams.
//
// All integers are little-endian; a "str" is a UInt32 length followed by that
// many bytes. Records come from other nodes (possibly older or buggy ones), so
// decoding never traps: malformed input yields nil.

/// A job as dispatched to a worker.
///
/// Layout: str key, str dispatcher node ID, str payload, Int64 `createdAt`
/// (Unix nanoseconds), 1 byte `requeued` (0 or 1), then, only when the job has an origin or a
/// requirement: str actor (≤ 200 bytes), str reason (≤ 64), str round (≤ 300, empty for none),
/// all empty for no origin; then, only when the job has a requirement: str requirement (a valid
/// capability, see ``Capability``).
struct JobRecord: Sendable, Hashable {
    var key: String
    /// Node ID of the dispatcher that created the job.
    var dispatcher: String
    var payload: [UInt8]
    /// Carried as whole Unix nanoseconds, so sub-nanosecond precision is lost.
    var createdAt: Date
    var requeued: Bool
    /// Who asked for this start and why (for the job log).
    var origin: JobOrigin?
    /// The capability the job's worker must have.
    var requirement: String?

    init(
        key: String, dispatcher: String, payload: [UInt8] = [], createdAt: Date, requeued: Bool = false, origin: JobOrigin? = nil,
        requirement: String? = nil
    ) {
        self.requirement = requirement
        self.key = key
        self.dispatcher = dispatcher
        self.payload = payload
        self.createdAt = createdAt
        self.requeued = requeued
        self.origin = origin
    }

    func encoded() -> [UInt8] {
        var writer = WireWriter()
        writer.writeString(key)
        writer.writeString(dispatcher)
        writer.writeBytes(payload)
        writer.writeInt64(unixNanoseconds(of: createdAt))
        writer.writeUInt8(requeued ? 1 : 0)
        if origin != nil || requirement != nil { writer.writeOrigin(origin ?? JobOrigin(actor: "", reason: "")) }
        if let requirement { writer.writeString(requirement) }
        return writer.bytes
    }

    init?(decoding bytes: [UInt8]) {
        var reader = WireReader(bytes)
        guard let key = reader.readString(),
              let dispatcher = reader.readString(),
              let payload = reader.readBytes(),
              let nanos = reader.readInt64()
        else { return nil }
        // Records written before `requeued` existed end right after the timestamp.
        var requeued = false
        if !reader.isAtEnd {
            switch reader.readUInt8() {
            case 0: requeued = false
            case 1: requeued = true
            default: return nil
            }
        }
        // Records written before origins existed end right after `requeued`.
        var origin: JobOrigin?
        if !reader.isAtEnd {
            guard let read = reader.readOrigin() else { return nil }
            origin = read.actor.isEmpty && read.reason.isEmpty && read.round == nil ? nil : read
        }
        // Records written before requirements existed end right after the origin.
        var requirement: String?
        if !reader.isAtEnd {
            guard let read = reader.readString(), Capability.isValid(read) else { return nil }
            requirement = read
        }
        guard reader.isAtEnd else { return nil }
        self.init(
            key: key, dispatcher: dispatcher, payload: payload, createdAt: date(fromUnixNanoseconds: nanos),
            requeued: requeued, origin: origin, requirement: requirement
        )
    }
}

/// A request to stop a job.
///
/// Layout: str key, str requester node ID (empty: nobody waits for the outcome), str actor,
/// str reason, str round (the origin; all empty for none, round empty for no round). A bare
/// ``JobKeyRecord`` (older nodes) decodes as a stop without requester or origin. The key comes
/// first, as in every pool event, for ``JobKeyRecord/key(fromEventPayload:)``.
struct StopRecord: Sendable, Hashable {
    var key: String
    var requester: String
    var origin: JobOrigin?

    init(key: String, requester: String = "", origin: JobOrigin? = nil) {
        self.key = key
        self.requester = requester
        self.origin = origin
    }

    func encoded() -> [UInt8] {
        var writer = WireWriter()
        writer.writeString(key)
        writer.writeString(requester)
        writer.writeOrigin(origin ?? JobOrigin(actor: "", reason: ""))
        return writer.bytes
    }

    init?(decoding bytes: [UInt8]) {
        var reader = WireReader(bytes)
        guard let key = reader.readString() else { return nil }
        if reader.isAtEnd {
            self.init(key: key)
            return
        }
        guard let requester = reader.readString(), requester.utf8.count <= 200,
              let origin = reader.readOrigin(), reader.isAtEnd
        else { return nil }
        self.init(key: key, requester: requester, origin: origin.actor.isEmpty && origin.reason.isEmpty ? nil : origin)
    }
}

/// The outcome of a stop, for the node that asked (``Node/stopAndWait(key:origin:)``).
///
/// Layout: str pool event ID of the stop, 1 byte outcome (0 stopped, 1 not running, 2 ended
/// unowned, 3 failed), str detail (the worker ID when stopped, the error when failed).
struct StopResultRecord: Sendable, Hashable {
    enum Outcome: UInt8, Sendable {
        case stopped = 0, notRunning = 1, endedUnowned = 2, failed = 3
    }

    var eventID: String
    var outcome: Outcome
    var detail: String

    init(eventID: String, outcome: Outcome, detail: String = "") {
        self.eventID = eventID
        self.outcome = outcome
        self.detail = detail
    }

    func encoded() -> [UInt8] {
        var writer = WireWriter()
        writer.writeString(eventID)
        writer.writeUInt8(outcome.rawValue)
        writer.writeString(detail)
        return writer.bytes
    }

    init?(decoding bytes: [UInt8]) {
        var reader = WireReader(bytes)
        guard let eventID = reader.readString(), let code = reader.readUInt8(), let outcome = Outcome(rawValue: code),
              let detail = reader.readString(), reader.isAtEnd
        else { return nil }
        self.init(eventID: eventID, outcome: outcome, detail: detail)
    }
}

/// Names a job without carrying its payload.
///
/// Layout: str key.
struct JobKeyRecord: Sendable, Hashable {
    var key: String

    init(key: String) {
        self.key = key
    }

    func encoded() -> [UInt8] {
        var writer = WireWriter()
        writer.writeString(key)
        return writer.bytes
    }

    init?(decoding bytes: [UInt8]) {
        var reader = WireReader(bytes)
        guard let key = reader.readString(), reader.isAtEnd else { return nil }
        self.init(key: key)
    }

    /// The payload length a job (`j`) or notification (`n`) pool event carries, read without
    /// copying the payload; for a fresh job, also its dispatcher. Nil for other events and for
    /// records too short to say.
    static func payloadSize(eventName: String, eventPayload payload: [UInt8]) -> (bytes: Int, freshDispatcher: String?)? {
        var reader = WireReader(payload)
        switch eventName {
        case "j":
            guard reader.skipBytes() != nil, let dispatcher = reader.readString(), let bytes = reader.skipBytes() else { return nil }
            // The timestamp, then `requeued` (absent in records older than it: fresh).
            guard reader.readInt64() != nil else { return (bytes, nil) }
            return (bytes, reader.isAtEnd || reader.readUInt8() == 0 ? dispatcher : nil)
        case "n":
            guard reader.skipBytes() != nil, let bytes = reader.skipBytes() else { return nil }
            return (bytes, nil)
        default:
            return nil
        }
    }

    /// Reads the job key from a job, job-key or notification record.
    ///
    /// All three start with the key, so routing code can find it without
    /// knowing which kind of event it holds; trailing fields are ignored.
    static func key(fromEventPayload payload: [UInt8]) -> String? {
        var reader = WireReader(payload)
        return reader.readString()
    }
}

/// A notification about a job, e.g. its result.
///
/// Layout: str key, str payload.
struct NotificationRecord: Sendable, Hashable {
    var key: String
    var payload: [UInt8]

    init(key: String, payload: [UInt8] = []) {
        self.key = key
        self.payload = payload
    }

    func encoded() -> [UInt8] {
        var writer = WireWriter()
        writer.writeString(key)
        writer.writeBytes(payload)
        return writer.bytes
    }

    init?(decoding bytes: [UInt8]) {
        var reader = WireReader(bytes)
        guard let key = reader.readString(), let payload = reader.readBytes(), reader.isAtEnd else { return nil }
        self.init(key: key, payload: payload)
    }
}

/// Wraps an inner record with the ID of the node that sent it.
///
/// Layout: str sender ID, str inner payload.
struct Envelope: Sendable, Hashable {
    var sender: String
    var payload: [UInt8]

    init(sender: String, payload: [UInt8] = []) {
        self.sender = sender
        self.payload = payload
    }

    func encoded() -> [UInt8] {
        var writer = WireWriter()
        writer.writeString(sender)
        writer.writeBytes(payload)
        return writer.bytes
    }

    init?(decoding bytes: [UInt8]) {
        var reader = WireReader(bytes)
        guard let sender = reader.readString(), let payload = reader.readBytes(), reader.isAtEnd else { return nil }
        self.init(sender: sender, payload: payload)
    }
}

/// Acknowledges processing of a stream event.
///
/// Layout: str event ID, str error message.
struct AckRecord: Sendable, Hashable {
    var eventID: String
    /// Empty on success.
    var error: String

    init(eventID: String, error: String = "") {
        self.eventID = eventID
        self.error = error
    }

    var succeeded: Bool { error.isEmpty }

    func encoded() -> [UInt8] {
        var writer = WireWriter()
        writer.writeString(eventID)
        writer.writeString(error)
        return writer.bytes
    }

    init?(decoding bytes: [UInt8]) {
        var reader = WireReader(bytes)
        guard let eventID = reader.readString(), let error = reader.readString(), reader.isAtEnd else { return nil }
        self.init(eventID: eventID, error: error)
    }
}

// MARK: - Timestamps

private let nanosPerSecond: Int64 = 1_000_000_000

/// Splits into whole seconds and fraction first: multiplying the full interval
/// by 1e9 would push it past 2^53 and lose nanoseconds.
///
/// Dates outside Int64 nanoseconds (before 1677 or after 2262) saturate rather
/// than trap, since `Date.distantFuture` and friends are legitimate values.
private func unixNanoseconds(of date: Date) -> Int64 {
    let interval = date.timeIntervalSince1970
    guard interval.isFinite else { return interval.isNaN ? 0 : (interval > 0 ? .max : .min) }
    let seconds = interval.rounded(.down)
    // Bounds checked in Double so the Int64 conversion below cannot trap.
    guard seconds > -9_223_372_037, seconds < 9_223_372_037 else { return seconds > 0 ? .max : .min }
    let fraction = ((interval - seconds) * 1e9).rounded()
    let (whole, overflow) = Int64(seconds).multipliedReportingOverflow(by: nanosPerSecond)
    guard !overflow else { return seconds > 0 ? .max : .min }
    let (total, overflow2) = whole.addingReportingOverflow(Int64(fraction))
    guard !overflow2 else { return seconds > 0 ? .max : .min }
    return total
}

private func date(fromUnixNanoseconds nanos: Int64) -> Date {
    // Floored split keeps the fraction non-negative for pre-1970 dates and
    // keeps whole seconds exact in the Double.
    let (seconds, remainder) = nanos.quotientAndRemainder(dividingBy: nanosPerSecond)
    let (flooredSeconds, flooredRemainder) = remainder < 0 ? (seconds - 1, remainder + nanosPerSecond) : (seconds, remainder)
    return Date(timeIntervalSince1970: Double(flooredSeconds) + Double(flooredRemainder) / 1e9)
}

// MARK: - Reader and writer

private struct WireWriter {
    private(set) var bytes: [UInt8] = []

    mutating func writeUInt8(_ value: UInt8) {
        bytes.append(value)
    }

    mutating func writeUInt32(_ value: UInt32) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func writeInt64(_ value: Int64) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func writeBytes(_ value: some Collection<UInt8>) {
        // A field over 4 GiB cannot be framed; trapping beats emitting a
        // record whose length silently wrapped.
        guard let length = UInt32(exactly: value.count) else {
            preconditionFailure("wire field of \(value.count) bytes exceeds UInt32 length")
        }
        writeUInt32(length)
        bytes.append(contentsOf: value)
    }

    mutating func writeString(_ value: String) {
        writeBytes(value.utf8)
    }

    mutating func writeOrigin(_ origin: JobOrigin) {
        writeString(origin.actor)
        writeString(origin.reason)
        writeString(origin.round ?? "")
    }
}

private struct WireReader {
    private let bytes: [UInt8]
    private var offset: Int

    init(_ bytes: [UInt8]) {
        self.bytes = bytes
        offset = bytes.startIndex
    }

    var isAtEnd: Bool { offset == bytes.endIndex }

    private var remaining: Int { bytes.endIndex - offset }

    mutating func readUInt8() -> UInt8? {
        guard remaining >= 1 else { return nil }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func readUInt32() -> UInt32? {
        guard remaining >= 4 else { return nil }
        var value: UInt32 = 0
        for index in 0..<4 {
            value |= UInt32(bytes[offset + index]) << (8 * index)
        }
        offset += 4
        return value
    }

    mutating func readInt64() -> Int64? {
        guard remaining >= 8 else { return nil }
        var value: UInt64 = 0
        for index in 0..<8 {
            value |= UInt64(bytes[offset + index]) << (8 * index)
        }
        offset += 8
        return Int64(bitPattern: value)
    }

    mutating func readBytes() -> [UInt8]? {
        // Compared as Int so a huge length from garbage input cannot overflow.
        guard let length = readUInt32().map(Int.init), length <= remaining else { return nil }
        defer { offset += length }
        return Array(bytes[offset..<offset + length])
    }

    /// Skips a length-prefixed field; returns its length.
    mutating func skipBytes() -> Int? {
        guard let length = readUInt32().map(Int.init), length <= remaining else { return nil }
        offset += length
        return length
    }

    /// Keys and IDs must be valid UTF-8; anything else is treated as malformed.
    mutating func readString() -> String? {
        readBytes().flatMap { String(validating: $0, as: UTF8.self) }
    }

    /// Actor, reason and round, each within its cap (a longer one makes the record malformed).
    mutating func readOrigin() -> JobOrigin? {
        guard let actor = readString(), let reason = readString(), let round = readString() else { return nil }
        let origin = JobOrigin(actor: actor, reason: reason, round: round.isEmpty ? nil : round)
        return origin.fitsWire ? origin : nil
    }
}
