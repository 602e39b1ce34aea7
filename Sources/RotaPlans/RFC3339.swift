import Foundation

/// Strict RFC 3339 timestamps (`2026-12-01T10:00:00Z`, `2026-12-01T10:00:00.250+01:00`).
///
/// Foundation's `ISO8601DateFormatter` is lenient where a scheduler must not be: it turns
/// `2026-02-30` into March 2 and accepts offsets such as `+25:00`, so a typo in a plan's `from:`
/// would silently move a job's window. This parser checks every field's range and says which one
/// is wrong.
public enum RFC3339 {
    /// The instant `text` names, or why it is not a valid RFC 3339 timestamp.
    public static func parse(_ text: String) -> Result<Date, InvalidTimestamp> {
        let bytes = Array(text.utf8)
        var position = 0

        func fail(_ reason: String) -> Result<Date, InvalidTimestamp> { .failure(InvalidTimestamp(reason: reason)) }
        func digits(_ count: Int) -> Int? {
            guard position + count <= bytes.count else { return nil }
            var value = 0
            for byte in bytes[position..<position + count] {
                guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
                value = value * 10 + Int(byte - UInt8(ascii: "0"))
            }
            position += count
            return value
        }
        func expect(_ characters: String) -> Bool {
            guard position < bytes.count, characters.utf8.contains(bytes[position]) else { return false }
            position += 1
            return true
        }

        let shape = "expected YYYY-MM-DDTHH:MM:SS[.fraction] then Z or ±HH:MM"
        guard let year = digits(4), expect("-"), let month = digits(2), expect("-"), let day = digits(2), expect("Tt"),
            let hour = digits(2), expect(":"), let minute = digits(2), expect(":"), let second = digits(2)
        else { return fail(shape) }
        var fraction = 0.0
        if position < bytes.count, bytes[position] == UInt8(ascii: ".") {
            position += 1
            let start = position
            while position < bytes.count, bytes[position] >= UInt8(ascii: "0"), bytes[position] <= UInt8(ascii: "9") { position += 1 }
            guard position > start, let value = Double("0." + String(decoding: bytes[start..<position], as: UTF8.self)) else {
                return fail("a '.' must be followed by digits (fractional seconds)")
            }
            fraction = value
        }
        var offsetSeconds = 0
        if expect("Zz") {
            // UTC
        } else if position < bytes.count, bytes[position] == UInt8(ascii: "+") || bytes[position] == UInt8(ascii: "-") {
            let sign = bytes[position] == UInt8(ascii: "-") ? -1 : 1
            position += 1
            guard let offsetHours = digits(2), expect(":"), let offsetMinutes = digits(2) else { return fail(shape) }
            guard offsetHours <= 23, offsetMinutes <= 59 else {
                return fail("the UTC offset must be between -23:59 and +23:59")
            }
            offsetSeconds = sign * (offsetHours * 3600 + offsetMinutes * 60)
        } else {
            return fail("missing time zone: end with Z or an offset such as +01:00")
        }
        guard position == bytes.count else { return fail(shape) }

        guard (1...12).contains(month) else { return fail("month \(month) is not between 01 and 12") }
        let length = daysIn(month: month, year: year)
        guard (1...length).contains(day) else {
            return fail("day \(day) is not in \(String(format: "%04d-%02d", year, month)), which has \(length) days")
        }
        guard hour <= 23 else { return fail("hour \(hour) is not between 00 and 23") }
        guard minute <= 59 else { return fail("minute \(minute) is not between 00 and 59") }
        guard second <= 59 else { return fail("second \(second) is not between 00 and 59 (leap seconds are not supported)") }

        let days = daysSinceEpoch(year: year, month: month, day: day)
        let seconds = Double(days * 86_400 + hour * 3600 + minute * 60 + second - offsetSeconds) + fraction
        return .success(Date(timeIntervalSince1970: seconds))
    }

    /// The instant `text` names; nil if it is not a valid RFC 3339 timestamp.
    public static func date(from text: String) -> Date? {
        try? parse(text).get()
    }

    private static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    private static func daysSinceEpoch(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }
}

/// Why a text is not an RFC 3339 timestamp (see ``RFC3339/parse(_:)``).
public struct InvalidTimestamp: Error, Sendable, CustomStringConvertible {
    /// The field that is wrong, and how, for people.
    public let reason: String

    public var description: String { reason }
}
