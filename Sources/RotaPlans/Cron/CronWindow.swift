import Foundation

/// A half-open span `[from, until)` of real time during which a cron window is active.
///
/// Used instead of `DateInterval` because that type stores a duration and
/// recomputes `end`, which can drift by a floating-point ulp; scheduler code
/// compares boundaries for equality and needs them exact.
public struct CronInterval: Sendable, Hashable, CustomStringConvertible {
    /// First instant inside the interval.
    public let from: Date
    /// First instant after the interval (exclusive).
    public let until: Date

    public init(from: Date, until: Date) {
        self.from = from
        self.until = until
    }

    /// Length in seconds, for reporting and for tests.
    public var duration: TimeInterval { until.timeIntervalSince(from) }

    /// Half-open containment, matching `CronExpression.isActive(at:in:)`.
    public func contains(_ instant: Date) -> Bool { from <= instant && instant < until }

    public var description: String { "[\(from), \(until))" }
}

extension CronExpression {
    /// Instants further than this from 1970 (≈ ±31,000 years) are treated as
    /// outside any window, so integer arithmetic can never overflow or trap.
    static let secondsLimit: Double = 1e12

    /// True when the instant falls in a matching wall-clock minute in `zone`.
    ///
    /// The instant is converted with the UTC offset in effect *at that instant*,
    /// so a minute skipped by a DST gap never matches and a minute repeated by a
    /// fold matches both times — the window is level-triggered on the producer's
    /// wall clock, which is what users mean when they write "9-17".
    public func isActive(at instant: Date, in zone: TimeZone) -> Bool {
        let t = instant.timeIntervalSince1970
        // [-limit, limit): the range `activeIntervals` clamps to, so the two agree at the edges.
        guard t.isFinite, t >= -Self.secondsLimit, t < Self.secondsLimit else { return false }
        let offset = zone.secondsFromGMT(for: instant)
        return matches(localSeconds: Int(t.rounded(.down)) + offset)
    }

    /// Maximal half-open intervals `[from, until)` within `[start, end)` during which
    /// the window is active, in real (UTC) time, in order.
    ///
    /// Lets the scheduler plan ahead (and tests state expectations) without sampling:
    /// work is per local day and per matching hour rather than per minute, and the
    /// zone is only consulted around UTC-offset transitions. Adjacent active minutes,
    /// including across a DST fold, are merged. Returns `[]` when `start >= end`.
    /// Cost grows with the number of local days in the range (plus matching minute
    /// runs), so callers should ask for bounded horizons, not `distantPast…distantFuture`.
    public func activeIntervals(from start: Date, until end: Date, in zone: TimeZone) -> [CronInterval] {
        let s = start.timeIntervalSince1970
        let e = end.timeIntervalSince1970
        guard s.isFinite, e.isFinite, s < e else { return [] }
        let lo = Int(min(max(s, -Self.secondsLimit), Self.secondsLimit).rounded(.down))
        let hi = Int(min(max(e, -Self.secondsLimit), Self.secondsLimit).rounded(.up))
        guard lo < hi else { return [] }

        let runs = minuteRuns()
        var raw: [(from: Int, until: Int)] = []
        var pieceStart = lo
        var offset = Self.offset(zone, at: pieceStart)
        while pieceStart < hi {
            let pieceEnd = Self.constantOffsetEnd(zone, from: pieceStart, offset: offset, limit: hi)
            appendIntervals(from: pieceStart, until: pieceEnd, offset: offset, runs: runs, into: &raw)
            pieceStart = pieceEnd
            if pieceStart < hi { offset = Self.offset(zone, at: pieceStart) }
        }

        var result: [CronInterval] = []
        result.reserveCapacity(raw.count)
        for interval in raw {
            let from = max(Double(interval.from), s)
            let until = min(Double(interval.until), e)
            if from < until {
                result.append(CronInterval(
                    from: Date(timeIntervalSince1970: from),
                    until: Date(timeIntervalSince1970: until)))
            }
        }
        return result
    }

    // MARK: - Internals

    /// Matches a local wall-clock time given as seconds since 1970-01-01T00:00 *local*.
    func matches(localSeconds: Int) -> Bool {
        let days = Self.floorDiv(localSeconds, 86_400)
        let secondOfDay = localSeconds - days * 86_400
        let (_, month, day) = Self.civil(fromDays: days)
        return matches(
            minute: secondOfDay % 3_600 / 60,
            hour: secondOfDay / 3_600,
            day: day,
            month: month,
            weekday: Self.weekday(fromDays: days))
    }

    /// Runs of consecutive matching minutes as `[first, last + 1)`, so a fully
    /// matching hour costs one interval instead of sixty.
    func minuteRuns() -> [(start: Int, end: Int)] {
        var runs: [(start: Int, end: Int)] = []
        var minute = 0
        while minute < 60 {
            if minutes & (1 << UInt64(minute)) == 0 { minute += 1; continue }
            let start = minute
            while minute < 60, minutes & (1 << UInt64(minute)) != 0 { minute += 1 }
            runs.append((start, minute))
        }
        return runs
    }

    /// Emits the active intervals of `[from, until)` (UTC seconds), throughout which
    /// the zone's offset is `offset`, appending in order and merging with the tail.
    private func appendIntervals(
        from: Int, until: Int, offset: Int, runs: [(start: Int, end: Int)],
        into out: inout [(from: Int, until: Int)]
    ) {
        let localFrom = from + offset
        let localUntil = until + offset
        let firstDay = Self.floorDiv(localFrom, 86_400)
        let lastDay = Self.floorDiv(localUntil - 1, 86_400)
        var dayIndex = firstDay
        while dayIndex <= lastDay {
            defer { dayIndex += 1 }
            let (_, month, day) = Self.civil(fromDays: dayIndex)
            guard months & (1 << UInt16(month)) != 0,
                  dayMatches(day: day, month: month, weekday: Self.weekday(fromDays: dayIndex))
            else { continue }
            let dayStart = dayIndex * 86_400
            for hour in 0..<24 where hours & (1 << UInt32(hour)) != 0 {
                let hourStart = dayStart + hour * 3_600
                if hourStart >= localUntil { break }
                if hourStart + 3_600 <= localFrom { continue }
                for run in runs {
                    let a = max(hourStart + run.start * 60 - offset, from)
                    let b = min(hourStart + run.end * 60 - offset, until)
                    guard a < b else { continue }
                    if let last = out.last, last.until >= a {
                        out[out.count - 1].until = max(last.until, b)
                    } else {
                        out.append((a, b))
                    }
                }
            }
        }
    }

    private static func offset(_ zone: TimeZone, at seconds: Int) -> Int {
        zone.secondsFromGMT(for: Date(timeIntervalSince1970: Double(seconds)))
    }

    /// The end (exclusive) of the span starting at `start` over which `zone` keeps `offset`,
    /// capped at `limit`. Uses the zone's transition list as a hint, but also caps each
    /// span at one day and verifies the offset at its last second, bisecting if needed,
    /// so a transition the hint does not report (e.g. a pure standard-offset change)
    /// still splits the span correctly.
    private static func constantOffsetEnd(_ zone: TimeZone, from start: Int, offset: Int, limit: Int) -> Int {
        var end = min(limit, start + 86_400)
        if let next = zone.nextDaylightSavingTimeTransition(after: Date(timeIntervalSince1970: Double(start))) {
            let t = next.timeIntervalSince1970
            if t.isFinite, t < Double(end) {
                let candidate = Int(t.rounded(.up))
                if candidate > start { end = min(end, candidate) }
            }
        }
        if self.offset(zone, at: end - 1) == offset { return end }
        // Invariant: offset(low) == offset, offset(high) != offset.
        var low = start
        var high = end - 1
        while high - low > 1 {
            let mid = low + (high - low) / 2
            if self.offset(zone, at: mid) == offset { low = mid } else { high = mid }
        }
        return high
    }

    @inline(__always)
    static func floorDiv(_ a: Int, _ b: Int) -> Int {
        let q = a / b
        return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q
    }

    /// 0 = Sunday. Day 0 (1970-01-01) was a Thursday.
    @inline(__always)
    static func weekday(fromDays days: Int) -> Int {
        let r = (days + 4) % 7
        return r < 0 ? r + 7 : r
    }

    /// Proleptic Gregorian (year, month, day) for a count of days since 1970-01-01.
    /// Done arithmetically because building `DateComponents` per day/minute is far
    /// slower and allocates.
    static func civil(fromDays days: Int) -> (year: Int, month: Int, day: Int) {
        let z = days + 719_468
        let era = floorDiv(z, 146_097)
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1_460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        return (year, month, day)
    }
}
