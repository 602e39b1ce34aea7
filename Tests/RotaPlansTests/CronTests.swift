import Foundation
import RotaPlans
import RotaTestSupport
import Testing

// MARK: - Helpers

private func cron(_ text: String) throws -> CronExpression {
    try CronExpression(parsing: text)
}

private func parseError(_ text: String) -> CronError? {
    do {
        _ = try CronExpression(parsing: text)
        return nil
    } catch {
        return error
    }
}

private func mask(_ values: [Int]) -> UInt64 {
    values.reduce(0) { $0 | (1 << UInt64($1)) }
}

private func mask(_ values: ClosedRange<Int>) -> UInt64 { mask(Array(values)) }

/// "2026-03-29T00:30:00Z" → Date (whole seconds only).
private func utc(_ text: String) -> Date {
    try! Date(text, strategy: .iso8601)
}

private func zone(_ identifier: String) -> TimeZone {
    TimeZone(identifier: identifier)!
}

private func interval(_ from: String, _ until: String) -> CronInterval {
    CronInterval(from: utc(from), until: utc(until))
}

/// The five masks of an expression, widened, for table comparisons.
private func masks(_ e: CronExpression) -> [UInt64] {
    [e.minutes, UInt64(e.hours), UInt64(e.daysOfMonth), UInt64(e.months), UInt64(e.daysOfWeek)]
}

/// Reference implementation: sample every UTC minute with `isActive` and merge.
/// Valid only for zones whose offsets are whole minutes (all modern zones).
private func bruteForceIntervals(_ e: CronExpression, from: Date, until: Date, in tz: TimeZone) -> [CronInterval] {
    var result: [CronInterval] = []
    var t = from
    while t < until {
        let next = t.addingTimeInterval(60)
        if e.isActive(at: t, in: tz) {
            if let last = result.last, last.until == t {
                result[result.count - 1] = CronInterval(from: last.from, until: next)
            } else {
                result.append(CronInterval(from: t, until: next))
            }
        }
        t = next
    }
    return result
}

// MARK: - Parsing

struct ParseCase: Sendable, CustomTestStringConvertible {
    let text: String
    let minutes: UInt64
    let hours: UInt64
    let days: UInt64
    let months: UInt64
    let weekdays: UInt64
    var testDescription: String { text }
}

private let allMinutes = mask(0...59)
private let allHours = mask(0...23)
private let allDays = mask(1...31)
private let allMonths = mask(1...12)
private let allWeekdays = mask(0...6)

@Suite("Parsing")
struct ParsingTests {
    static let cases: [ParseCase] = [
        ParseCase(text: "* * * * *", minutes: allMinutes, hours: allHours, days: allDays, months: allMonths, weekdays: allWeekdays),
        ParseCase(text: "*/15 9-17 * * MON-FRI", minutes: mask([0, 15, 30, 45]), hours: mask(9...17), days: allDays, months: allMonths, weekdays: mask(1...5)),
        ParseCase(text: "1-30/5 * * * *", minutes: mask([1, 6, 11, 16, 21, 26]), hours: allHours, days: allDays, months: allMonths, weekdays: allWeekdays),
        ParseCase(text: "5/10 * * * *", minutes: mask([5, 15, 25, 35, 45, 55]), hours: allHours, days: allDays, months: allMonths, weekdays: allWeekdays),
        ParseCase(text: "*/60 */24 */31 */12 */7", minutes: mask([0]), hours: mask([0]), days: mask([1]), months: mask([1]), weekdays: mask([0])),
        ParseCase(text: "0 0 1,15 * *", minutes: mask([0]), hours: mask([0]), days: mask([1, 15]), months: allMonths, weekdays: allWeekdays),
        ParseCase(text: "0 12 * * SUN", minutes: mask([0]), hours: mask([12]), days: allDays, months: allMonths, weekdays: mask([0])),
        ParseCase(text: "0 12 * * 7", minutes: mask([0]), hours: mask([12]), days: allDays, months: allMonths, weekdays: mask([0])),
        ParseCase(text: "0 12 * * 0-7", minutes: mask([0]), hours: mask([12]), days: allDays, months: allMonths, weekdays: allWeekdays),
        ParseCase(text: "0 12 * * 5-7", minutes: mask([0]), hours: mask([12]), days: allDays, months: allMonths, weekdays: mask([0, 5, 6])),
        ParseCase(text: "0 12 * * */2", minutes: mask([0]), hours: mask([12]), days: allDays, months: allMonths, weekdays: mask([0, 2, 4, 6])),
        ParseCase(text: "0 12 * * 1/2", minutes: mask([0]), hours: mask([12]), days: allDays, months: allMonths, weekdays: mask([1, 3, 5])),
        ParseCase(text: "0 12 * * sat,Sun,mOn", minutes: mask([0]), hours: mask([12]), days: allDays, months: allMonths, weekdays: mask([0, 1, 6])),
        ParseCase(text: "0 12 * * tue-THU/2", minutes: mask([0]), hours: mask([12]), days: allDays, months: allMonths, weekdays: mask([2, 4])),
        ParseCase(text: "0 0 * jan-Mar,DEC *", minutes: mask([0]), hours: mask([0]), days: allDays, months: mask([1, 2, 3, 12]), weekdays: allWeekdays),
        ParseCase(text: "0 0 * FEB/3 *", minutes: mask([0]), hours: mask([0]), days: allDays, months: mask([2, 5, 8, 11]), weekdays: allWeekdays),
        ParseCase(text: "0 0 1 1-12/3 *", minutes: mask([0]), hours: mask([0]), days: mask([1]), months: mask([1, 4, 7, 10]), weekdays: allWeekdays),
        ParseCase(text: "0 0 */10 * *", minutes: mask([0]), hours: mask([0]), days: mask([1, 11, 21, 31]), months: allMonths, weekdays: allWeekdays),
        ParseCase(text: "0,30 */6 * * *", minutes: mask([0, 30]), hours: mask([0, 6, 12, 18]), days: allDays, months: allMonths, weekdays: allWeekdays),
        ParseCase(text: "59 23 31 12 6", minutes: mask([59]), hours: mask([23]), days: mask([31]), months: mask([12]), weekdays: mask([6])),
        ParseCase(text: "00 05 01 01 00", minutes: mask([0]), hours: mask([5]), days: mask([1]), months: mask([1]), weekdays: mask([0])),
        ParseCase(text: "1,1,1-2,2 3-3 7 7 7", minutes: mask([1, 2]), hours: mask([3]), days: mask([7]), months: mask([7]), weekdays: mask([0])),
        ParseCase(text: "0-10/4,50-59/3 * * * *", minutes: mask([0, 4, 8, 50, 53, 56, 59]), hours: allHours, days: allDays, months: allMonths, weekdays: allWeekdays),
        ParseCase(text: "59/5 23/5 31/5 12/5 6/5", minutes: mask([59]), hours: mask([23]), days: mask([31]), months: mask([12]), weekdays: mask([6])),
        ParseCase(text: "  \t0\t 0  *   *  *\n", minutes: mask([0]), hours: mask([0]), days: allDays, months: allMonths, weekdays: allWeekdays),
    ]

    @Test(arguments: cases)
    func parsesSyntaxForms(_ c: ParseCase) throws {
        let e = try cron(c.text)
        #expect(masks(e) == [c.minutes, c.hours, c.days, c.months, c.weekdays])
        #expect(e.source == c.text)
        #expect(e.description == c.text)
    }

    @Test(arguments: [
        ("@yearly", "0 0 1 1 *"), ("@annually", "0 0 1 1 *"), ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"), ("@daily", "0 0 * * *"), ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"), ("@DAILY", "0 0 * * *"), ("  @Hourly\t", "0 * * * *"),
    ])
    func macrosExpand(_ macro: String, _ expansion: String) throws {
        let m = try cron(macro)
        let x = try cron(expansion)
        #expect(masks(m) == masks(x))
        #expect(m.dayOfMonthIsStar == x.dayOfMonthIsStar)
        #expect(m.dayOfWeekIsStar == x.dayOfWeekIsStar)
        #expect(m.source == macro)
    }

    @Test func starFlagsFollowFirstCharacter() throws {
        let a = try cron("0 0 */2 * MON")
        #expect(a.dayOfMonthIsStar && !a.dayOfWeekIsStar)
        let b = try cron("0 0 1-31 * 0-7")
        #expect(!b.dayOfMonthIsStar && !b.dayOfWeekIsStar)
        let c = try cron("0 0 * * *")
        #expect(c.dayOfMonthIsStar && c.dayOfWeekIsStar)
    }

    @Test func valueSemantics() throws {
        #expect(try cron("0 0 * * *") == cron("0 0 * * *"))
        // Identity includes the source text, so differently written equivalents differ.
        #expect(try cron("0 0 * * 7") != cron("0 0 * * 0"))
        #expect(try masks(cron("0 0 * * 7")) == masks(cron("0 0 * * 0")))
    }
}

// MARK: - Errors

struct ErrorCase: Sendable, CustomTestStringConvertible {
    let text: String
    let message: String
    let column: Int
    init(_ text: String, _ message: String, _ column: Int) {
        self.text = text
        self.message = message
        self.column = column
    }
    var testDescription: String { "\(text.debugDescription) → \(message)" }
}

@Suite("Errors")
struct ErrorTests {
    static let cases: [ErrorCase] = [
        // field count
        ErrorCase("", "expected 5 fields, found 0", 1),
        ErrorCase("   \t ", "expected 5 fields, found 0", 1),
        ErrorCase("0 0 * *", "expected 5 fields, found 4", 8),
        ErrorCase("0 0 * *   ", "expected 5 fields, found 4", 8),
        ErrorCase("0", "expected 5 fields, found 1", 2),
        ErrorCase("0 0 * * * *", "expected 5 fields, found 6", 11),
        ErrorCase("0 0 * * * 👨‍👩‍👧 x", "expected 5 fields, found 7", 11),
        // ranges of values
        ErrorCase("61 * * * *", "minute field: value 61 out of range 0-59", 1),
        ErrorCase("* 24 * * *", "hour field: value 24 out of range 0-23", 3),
        ErrorCase("* * 0 * *", "day-of-month field: value 0 out of range 1-31", 5),
        ErrorCase("* * 32 * *", "day-of-month field: value 32 out of range 1-31", 5),
        ErrorCase("* * * 0 *", "month field: value 0 out of range 1-12", 7),
        ErrorCase("* * * 13 *", "month field: value 13 out of range 1-12", 7),
        ErrorCase("* * * * 8", "day-of-week field: value 8 out of range 0-7", 9),
        ErrorCase("0-60 * * * *", "minute field: value 60 out of range 0-59", 3),
        ErrorCase("1,2,99 * * * *", "minute field: value 99 out of range 0-59", 5),
        ErrorCase("99999999999999999999 * * * *", "minute field: value 99999999999999999999 out of range 0-59", 1),
        ErrorCase("* * 000000000000000000000000032 * *", "day-of-month field: value 000000000000000000000000032 out of range 1-31", 5),
        // names
        ErrorCase("* * * * MOM", "day-of-week field: unknown name \"MOM\"", 9),
        ErrorCase("* * * * MONDAY", "day-of-week field: unknown name \"MONDAY\"", 9),
        ErrorCase("* * * JANUARY *", "month field: unknown name \"JANUARY\"", 7),
        ErrorCase("* * * * JAN", "day-of-week field: unknown name \"JAN\"", 9),
        ErrorCase("* * * MON *", "month field: unknown name \"MON\"", 7),
        ErrorCase("MON * * * *", "minute field: expected a number, found \"MON\"", 1),
        ErrorCase("* * x * *", "day-of-month field: expected a number, found \"x\"", 5),
        ErrorCase("5a * * * *", "minute field: invalid value \"5a\"", 1),
        ErrorCase("* * * * MON1", "day-of-week field: invalid value \"MON1\"", 9),
        // steps
        ErrorCase("* */0 * * *", "hour field: step must be >= 1", 5),
        ErrorCase("*/0 * * * *", "minute field: step must be >= 1", 3),
        ErrorCase("1-5/00 * * * *", "minute field: step must be >= 1", 5),
        ErrorCase("*/61 * * * *", "minute field: step 61 out of range 1-60", 3),
        ErrorCase("* * * * */8", "day-of-week field: step 8 out of range 1-7", 11),
        ErrorCase("*/99999999999999999999 * * * *", "minute field: step 99999999999999999999 out of range 1-60", 3),
        ErrorCase("*/ * * * *", "minute field: expected a step number, found end of field", 3),
        ErrorCase("*/x * * * *", "minute field: step must be a number, found \"x\"", 3),
        ErrorCase("*/-1 * * * *", "minute field: expected a step number, found \"-\"", 3),
        ErrorCase("*/5/5 * * * *", "minute field: unexpected character \"/\"", 4),
        // ranges
        ErrorCase("* * * 9-3 *", "month field: range 9-3 is reversed", 7),
        ErrorCase("* * * * FRI-MON", "day-of-week field: range FRI-MON is reversed", 9),
        ErrorCase("1,30-10 * * * *", "minute field: range 30-10 is reversed", 3),
        ErrorCase("1-5-7 * * * *", "minute field: unexpected character \"-\"", 4),
        ErrorCase("*-5 * * * *", "minute field: unexpected character \"-\"", 2),
        ErrorCase("*5 * * * *", "minute field: unexpected character \"5\"", 2),
        // malformed tokens
        ErrorCase("- * * * *", "minute field: expected a number, found \"-\"", 1),
        ErrorCase("1- * * * *", "minute field: expected a number, found end of field", 3),
        ErrorCase("* * * * 1-", "day-of-week field: expected a number or name, found end of field", 11),
        ErrorCase("/5 * * * *", "minute field: expected a number, found \"/\"", 1),
        ErrorCase("-5 * * * *", "minute field: expected a number, found \"-\"", 1),
        ErrorCase(",, * * * *", "minute field: empty list element", 1),
        ErrorCase("1,,2 * * * *", "minute field: empty list element", 3),
        ErrorCase("1, * * * *", "minute field: empty list element", 3),
        ErrorCase("* * * * 1,", "day-of-week field: empty list element", 11),
        ErrorCase("0 0 @daily * *", "day-of-month field: expected a number, found \"@\"", 5),
        // unicode (columns count Characters)
        ErrorCase("* * * * ☃", "day-of-week field: expected a number or name, found \"☃\"", 9),
        ErrorCase("０ * * * *", "minute field: expected a number, found \"０\"", 1),
        ErrorCase("é * * * *", "minute field: expected a number, found \"é\"", 1),
        ErrorCase("1é * * * *", "minute field: unexpected character \"é\"", 2),
        ErrorCase("👨‍👩‍👧 👨‍👩‍👧 * 32 *", "minute field: expected a number, found \"👨‍👩‍👧\"", 1),
        ErrorCase("0 0 * * 👨‍👩‍👧", "day-of-week field: expected a number or name, found \"👨‍👩‍👧\"", 9),
        // macros
        ErrorCase("@weekely", "unknown macro \"@weekely\"", 1),
        ErrorCase("  @weekely", "unknown macro \"@weekely\"", 3),
        ErrorCase("@reboot", "unknown macro \"@reboot\"", 1),
        ErrorCase("@", "unknown macro \"@\"", 1),
        ErrorCase("@daily 5", "unexpected \"5\" after macro \"@daily\"", 8),
        ErrorCase("@daily @hourly", "unexpected \"@hourly\" after macro \"@daily\"", 8),
    ]

    @Test(arguments: cases)
    func rejects(_ c: ErrorCase) {
        let error = parseError(c.text)
        #expect(error == CronError(message: c.message, column: c.column))
    }

    @Test func descriptionIncludesColumnAndMessage() {
        let error = CronError(message: "minute field: value 61 out of range 0-59", column: 1)
        #expect(error.description == "column 1: minute field: value 61 out of range 0-59")
    }
}

// MARK: - Matching

struct MatchCase: Sendable, CustomTestStringConvertible {
    let text: String
    let minute, hour, day, month, weekday: Int
    let expected: Bool
    init(_ text: String, _ minute: Int, _ hour: Int, _ day: Int, _ month: Int, _ weekday: Int, _ expected: Bool) {
        (self.text, self.minute, self.hour, self.day, self.month, self.weekday, self.expected)
            = (text, minute, hour, day, month, weekday, expected)
    }
    var testDescription: String { "\(text) @ \(minute) \(hour) \(day) \(month) wd\(weekday) → \(expected)" }
}

@Suite("Matching")
struct MatchingTests {
    static let cases: [MatchCase] = [
        // */15 9-17 * * MON-FRI
        MatchCase("*/15 9-17 * * MON-FRI", 0, 9, 5, 1, 1, true),
        MatchCase("*/15 9-17 * * MON-FRI", 45, 17, 9, 1, 5, true),
        MatchCase("*/15 9-17 * * MON-FRI", 46, 17, 9, 1, 5, false),
        MatchCase("*/15 9-17 * * MON-FRI", 0, 18, 9, 1, 5, false),
        MatchCase("*/15 9-17 * * MON-FRI", 59, 8, 9, 1, 5, false),
        MatchCase("*/15 9-17 * * MON-FRI", 30, 12, 10, 1, 6, false),
        MatchCase("*/15 9-17 * * MON-FRI", 30, 12, 11, 1, 0, false),
        MatchCase("*/15 9-17 * * MON-FRI", 14, 12, 12, 1, 1, false),
        // 0 0 1,15 * *
        MatchCase("0 0 1,15 * *", 0, 0, 1, 7, 3, true),
        MatchCase("0 0 1,15 * *", 0, 0, 15, 12, 2, true),
        MatchCase("0 0 1,15 * *", 0, 0, 14, 12, 1, false),
        MatchCase("0 0 1,15 * *", 1, 0, 15, 12, 2, false),
        // 0 12 * * SUN (dom is *, so the weekday alone decides)
        MatchCase("0 12 * * SUN", 0, 12, 11, 1, 0, true),
        MatchCase("0 12 * * SUN", 0, 12, 12, 1, 1, false),
        MatchCase("0 12 * * SUN", 0, 12, 12, 1, 7, true), // weekday 7 accepted as Sunday
        // OR rule: 13th OR Friday
        MatchCase("0 0 13 * FRI", 0, 0, 13, 1, 2, true),   // Tue 2026-01-13
        MatchCase("0 0 13 * FRI", 0, 0, 16, 1, 5, true),   // Fri 2026-01-16
        MatchCase("0 0 13 * FRI", 0, 0, 13, 2, 5, true),   // Fri 2026-02-13, both
        MatchCase("0 0 13 * FRI", 0, 0, 15, 1, 4, false),  // Thu 2026-01-15
        MatchCase("0 0 13 * FRI", 0, 1, 16, 1, 5, false),  // right day, wrong hour
        // AND rule when dom starts with '*' even if stepped
        MatchCase("0 0 */2 * MON", 0, 0, 5, 1, 1, true),   // odd day and Monday
        MatchCase("0 0 */2 * MON", 0, 0, 12, 1, 1, false), // Monday, even day
        MatchCase("0 0 */2 * MON", 0, 0, 7, 1, 3, false),  // odd day, Wednesday
        // AND rule when dow starts with '*'
        MatchCase("0 0 13 * */2", 0, 0, 13, 1, 2, true),
        MatchCase("0 0 13 * */2", 0, 0, 13, 1, 1, false),
        // month restriction applies regardless of the OR rule
        MatchCase("0 0 13 6 FRI", 0, 0, 13, 1, 2, false),
        MatchCase("0 0 13 6 FRI", 0, 0, 5, 6, 5, true),
        // out-of-range inputs never match
        MatchCase("* * * * *", 60, 0, 1, 1, 0, false),
        MatchCase("* * * * *", -1, 0, 1, 1, 0, false),
        MatchCase("* * * * *", 0, 24, 1, 1, 0, false),
        MatchCase("* * * * *", 0, 0, 0, 1, 0, false),
        MatchCase("* * * * *", 0, 0, 32, 1, 0, false),
        MatchCase("* * * * *", 0, 0, 1, 13, 0, false),
        MatchCase("* * * * *", 0, 0, 1, 1, 8, false),
        MatchCase("* * * * *", 59, 23, 31, 12, 6, true),
        // macros
        MatchCase("@yearly", 0, 0, 1, 1, 4, true),
        MatchCase("@yearly", 0, 0, 1, 2, 0, false),
        MatchCase("@weekly", 0, 0, 4, 1, 0, true),
        MatchCase("@weekly", 0, 0, 5, 1, 1, false),
        MatchCase("@hourly", 0, 13, 5, 1, 1, true),
        MatchCase("@hourly", 1, 13, 5, 1, 1, false),
    ]

    @Test(arguments: cases)
    func matchTable(_ c: MatchCase) throws {
        let e = try cron(c.text)
        #expect(e.matches(minute: c.minute, hour: c.hour, day: c.day, month: c.month, weekday: c.weekday) == c.expected)
    }

    /// `isActive` must agree with Foundation's own calendar conversion of the instant.
    @Test(arguments: ["UTC", "Europe/Paris", "America/New_York", "Asia/Kathmandu", "Australia/Lord_Howe", "Pacific/Chatham", "America/St_Johns"])
    func isActiveAgreesWithCalendar(_ id: String) throws {
        let tz = zone(id)
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = tz
        let expressions = try ["*/7 */3 * * *", "0-29 * 1-10 * MON,WED", "* 1-3 13 * FRI", "*/2 * * */2 *"].map(cron)
        var rng = SplitMix64(state: 42)
        for _ in 0..<2_000 {
            // 1990 … 2040, with sub-minute noise
            let t = Date(timeIntervalSince1970: Double.random(in: 631_152_000...2_208_988_800, using: &rng))
            let c = calendar.dateComponents([.minute, .hour, .day, .month, .weekday], from: t)
            for e in expressions {
                let expected = e.matches(minute: c.minute!, hour: c.hour!, day: c.day!, month: c.month!, weekday: c.weekday! - 1)
                #expect(e.isActive(at: t, in: tz) == expected, "\(e) at \(t) in \(id)")
            }
        }
    }
}

// MARK: - DST

@Suite("Daylight saving time")
struct DSTTests {
    let paris = zone("Europe/Paris")
    let newYork = zone("America/New_York")

    @Test func tzdataIsWhatTheTablesAssume() {
        #expect(paris.secondsFromGMT(for: utc("2026-03-29T00:59:59Z")) == 3_600)
        #expect(paris.secondsFromGMT(for: utc("2026-03-29T01:00:00Z")) == 7_200)
        #expect(paris.secondsFromGMT(for: utc("2026-10-25T00:59:59Z")) == 7_200)
        #expect(paris.secondsFromGMT(for: utc("2026-10-25T01:00:00Z")) == 3_600)
        #expect(newYork.secondsFromGMT(for: utc("2026-03-08T06:59:59Z")) == -18_000)
        #expect(newYork.secondsFromGMT(for: utc("2026-03-08T07:00:00Z")) == -14_400)
        #expect(newYork.secondsFromGMT(for: utc("2026-11-01T05:59:59Z")) == -14_400)
        #expect(newYork.secondsFromGMT(for: utc("2026-11-01T06:00:00Z")) == -18_000)
    }

    // Paris spring forward: 2026-03-29 01:59:59 CET (+01) → 03:00:00 CEST (+02) at 01:00Z.
    // The local day runs 2026-03-28T23:00Z … 2026-03-29T22:00Z (23 real hours).

    @Test func parisGapHourNeverMatches() throws {
        let e = try cron("* 2 * * *")
        #expect(e.activeIntervals(from: utc("2026-03-28T23:00:00Z"), until: utc("2026-03-29T22:00:00Z"), in: paris).isEmpty)
        var t = utc("2026-03-28T23:00:00Z")
        while t < utc("2026-03-29T22:00:00Z") {
            #expect(!e.isActive(at: t, in: paris))
            t += 60
        }
        // The day before and after it does match, for one real hour each.
        #expect(e.activeIntervals(from: utc("2026-03-28T00:00:00Z"), until: utc("2026-03-31T00:00:00Z"), in: paris) == [
            interval("2026-03-28T01:00:00Z", "2026-03-28T02:00:00Z"),
            interval("2026-03-30T00:00:00Z", "2026-03-30T01:00:00Z"),
        ])
    }

    @Test func parisSpringForwardAroundTheGap() throws {
        let e = try cron("30 1-3 * * *")
        #expect(e.activeIntervals(from: utc("2026-03-28T23:00:00Z"), until: utc("2026-03-29T22:00:00Z"), in: paris) == [
            interval("2026-03-29T00:30:00Z", "2026-03-29T00:31:00Z"), // 01:30 CET
            interval("2026-03-29T01:30:00Z", "2026-03-29T01:31:00Z"), // 03:30 CEST
        ])
        #expect(e.isActive(at: utc("2026-03-29T00:30:59Z"), in: paris))
        #expect(!e.isActive(at: utc("2026-03-29T00:31:00Z"), in: paris))
        #expect(e.isActive(at: utc("2026-03-29T01:30:00Z"), in: paris))
        // The last CET minute and first CEST minute are adjacent in real time.
        let edge = try cron("59 1 * * *")
        let after = try cron("0 3 * * *")
        #expect(edge.isActive(at: utc("2026-03-29T00:59:30Z"), in: paris))
        #expect(after.isActive(at: utc("2026-03-29T01:00:00Z"), in: paris))
        #expect(try cron("59 1,3 * * *").activeIntervals(from: utc("2026-03-29T00:00:00Z"), until: utc("2026-03-29T03:00:00Z"), in: paris) == [
            interval("2026-03-29T00:59:00Z", "2026-03-29T01:00:00Z"),
            interval("2026-03-29T01:59:00Z", "2026-03-29T02:00:00Z"),
        ])
        #expect(try cron("0-59/59 1,3 * * *").activeIntervals(from: utc("2026-03-29T00:00:00Z"), until: utc("2026-03-29T03:00:00Z"), in: paris) == [
            interval("2026-03-29T00:00:00Z", "2026-03-29T00:01:00Z"),
            interval("2026-03-29T00:59:00Z", "2026-03-29T01:01:00Z"), // 01:59 CET then 03:00 CEST: merged
            interval("2026-03-29T01:59:00Z", "2026-03-29T02:00:00Z"),
        ])
    }

    // Paris fall back: 2026-10-25 02:59:59 CEST (+02) → 02:00:00 CET (+01) at 01:00Z.

    @Test func parisFoldHourMatchesTwice() throws {
        let e = try cron("* 2 * * *")
        let intervals = e.activeIntervals(from: utc("2026-10-24T22:00:00Z"), until: utc("2026-10-25T23:00:00Z"), in: paris)
        #expect(intervals == [interval("2026-10-25T00:00:00Z", "2026-10-25T02:00:00Z")])
        #expect(intervals.first?.duration == 7_200)
        #expect(e.isActive(at: utc("2026-10-25T00:00:00Z"), in: paris))
        #expect(e.isActive(at: utc("2026-10-25T00:59:59Z"), in: paris))
        #expect(e.isActive(at: utc("2026-10-25T01:00:00Z"), in: paris))
        #expect(e.isActive(at: utc("2026-10-25T01:59:59Z"), in: paris))
        #expect(!e.isActive(at: utc("2026-10-25T02:00:00Z"), in: paris))
        #expect(!e.isActive(at: utc("2026-10-24T23:59:59Z"), in: paris))

        let once = try cron("30 2 * * *")
        #expect(once.activeIntervals(from: utc("2026-10-24T22:00:00Z"), until: utc("2026-10-25T23:00:00Z"), in: paris) == [
            interval("2026-10-25T00:30:00Z", "2026-10-25T00:31:00Z"),
            interval("2026-10-25T01:30:00Z", "2026-10-25T01:31:00Z"),
        ])
    }

    // New York spring forward: 2026-03-08 02:00 EST (-05) → 03:00 EDT (-04) at 07:00Z.

    @Test func newYorkSpringForward() throws {
        let day = (utc("2026-03-08T05:00:00Z"), utc("2026-03-09T04:00:00Z"))
        #expect(try cron("30 2 * * *").activeIntervals(from: day.0, until: day.1, in: newYork).isEmpty)
        #expect(try cron("0 1 * * *").activeIntervals(from: day.0, until: day.1, in: newYork) == [
            interval("2026-03-08T06:00:00Z", "2026-03-08T06:01:00Z"),
        ])
        #expect(try cron("0 3 * * *").activeIntervals(from: day.0, until: day.1, in: newYork) == [
            interval("2026-03-08T07:00:00Z", "2026-03-08T07:01:00Z"),
        ])
        #expect(try cron("* 1-3 * * *").activeIntervals(from: day.0, until: day.1, in: newYork) == [
            interval("2026-03-08T06:00:00Z", "2026-03-08T08:00:00Z"), // 01:00 EST … 03:59 EDT
        ])
    }

    // New York fall back: 2026-11-01 02:00 EDT (-04) → 01:00 EST (-05) at 06:00Z; 01:xx repeats.

    @Test func newYorkFallBack() throws {
        let day = (utc("2026-11-01T04:00:00Z"), utc("2026-11-02T05:00:00Z"))
        let e = try cron("0 1 * * *")
        #expect(e.activeIntervals(from: day.0, until: day.1, in: newYork) == [
            interval("2026-11-01T05:00:00Z", "2026-11-01T05:01:00Z"),
            interval("2026-11-01T06:00:00Z", "2026-11-01T06:01:00Z"),
        ])
        #expect(e.isActive(at: utc("2026-11-01T05:00:30Z"), in: newYork))
        #expect(e.isActive(at: utc("2026-11-01T06:00:30Z"), in: newYork))
        #expect(!e.isActive(at: utc("2026-11-01T07:00:30Z"), in: newYork))
        #expect(try cron("* 1 * * *").activeIntervals(from: day.0, until: day.1, in: newYork) == [
            interval("2026-11-01T05:00:00Z", "2026-11-01T07:00:00Z"),
        ])
        #expect(try cron("0 2 * * *").activeIntervals(from: day.0, until: day.1, in: newYork) == [
            interval("2026-11-01T07:00:00Z", "2026-11-01T07:01:00Z"),
        ])
    }

    // Asia/Kathmandu is +05:45 all year.

    @Test func kathmanduQuarterHourOffset() throws {
        let tz = zone("Asia/Kathmandu")
        #expect(tz.secondsFromGMT(for: utc("2026-06-01T00:00:00Z")) == 20_700)
        #expect(try cron("0 0 * * *").activeIntervals(from: utc("2025-12-31T00:00:00Z"), until: utc("2026-01-01T00:00:00Z"), in: tz) == [
            interval("2025-12-31T18:15:00Z", "2025-12-31T18:16:00Z"),
        ])
        #expect(try cron("10 9 * * *").activeIntervals(from: utc("2026-01-01T00:00:00Z"), until: utc("2026-01-02T00:00:00Z"), in: tz) == [
            interval("2026-01-01T03:25:00Z", "2026-01-01T03:26:00Z"),
        ])
        // 09:00-09:59 local = 03:15Z-04:15Z; a full hour straddling a UTC hour boundary.
        #expect(try cron("* 9 * * *").activeIntervals(from: utc("2026-01-01T00:00:00Z"), until: utc("2026-01-02T00:00:00Z"), in: tz) == [
            interval("2026-01-01T03:15:00Z", "2026-01-01T04:15:00Z"),
        ])
        // Thursday 2026-01-01 local begins at 2025-12-31T18:15Z.
        #expect(try cron("0 0 * * THU").isActive(at: utc("2025-12-31T18:15:00Z"), in: tz))
        #expect(try !cron("0 0 * * WED").isActive(at: utc("2025-12-31T18:15:00Z"), in: tz))
    }

    // Australia/Lord_Howe: +10:30 standard, +11:00 daylight (a 30-minute shift).
    // 2026-04-05 02:00 (+11) → 01:30 (+10:30) at 2026-04-04T15:00Z: 01:30-01:59 repeats.
    // 2026-10-04 02:00 (+10:30) → 02:30 (+11) at 2026-10-03T15:30Z: 02:00-02:29 skipped.

    @Test func lordHoweHalfHourDST() throws {
        let tz = zone("Australia/Lord_Howe")
        #expect(tz.secondsFromGMT(for: utc("2026-04-04T14:59:59Z")) == 39_600)
        #expect(tz.secondsFromGMT(for: utc("2026-04-04T15:00:00Z")) == 37_800)
        #expect(tz.secondsFromGMT(for: utc("2026-10-03T15:29:59Z")) == 37_800)
        #expect(tz.secondsFromGMT(for: utc("2026-10-03T15:30:00Z")) == 39_600)

        let april = (utc("2026-04-04T12:00:00Z"), utc("2026-04-05T12:00:00Z"))
        #expect(try cron("45 1 * * *").activeIntervals(from: april.0, until: april.1, in: tz) == [
            interval("2026-04-04T14:45:00Z", "2026-04-04T14:46:00Z"),
            interval("2026-04-04T15:15:00Z", "2026-04-04T15:16:00Z"),
        ])
        #expect(try cron("15 1 * * *").activeIntervals(from: april.0, until: april.1, in: tz) == [
            interval("2026-04-04T14:15:00Z", "2026-04-04T14:16:00Z"),
        ])
        // 01:00 local (+11) = 14:00Z until the fold; 01:30-01:59 again (+10:30) = 15:00Z-15:30Z.
        #expect(try cron("* 1 * * *").activeIntervals(from: april.0, until: april.1, in: tz) == [
            interval("2026-04-04T14:00:00Z", "2026-04-04T15:30:00Z"),
        ])

        let october = (utc("2026-10-03T12:00:00Z"), utc("2026-10-04T12:00:00Z"))
        #expect(try cron("15 2 * * *").activeIntervals(from: october.0, until: october.1, in: tz).isEmpty)
        #expect(try cron("45 2 * * *").activeIntervals(from: october.0, until: october.1, in: tz) == [
            interval("2026-10-03T15:45:00Z", "2026-10-03T15:46:00Z"),
        ])
        #expect(try cron("* 2 * * *").activeIntervals(from: october.0, until: october.1, in: tz) == [
            interval("2026-10-03T15:30:00Z", "2026-10-03T16:00:00Z"),
        ])
    }

    /// activeIntervals vs. per-minute sampling of isActive, around every transition above.
    @Test(arguments: [
        ("Europe/Paris", "2026-03-28T00:00:00Z"), ("Europe/Paris", "2026-10-24T00:00:00Z"),
        ("America/New_York", "2026-03-07T00:00:00Z"), ("America/New_York", "2026-10-31T00:00:00Z"),
        ("Australia/Lord_Howe", "2026-04-03T00:00:00Z"), ("Australia/Lord_Howe", "2026-10-02T00:00:00Z"),
        ("Asia/Kathmandu", "2026-01-01T00:00:00Z"), ("Pacific/Chatham", "2026-04-04T00:00:00Z"),
        ("America/St_Johns", "2026-11-01T00:00:00Z"), ("UTC", "2028-02-27T00:00:00Z"),
    ])
    func intervalsAgreeWithSampling(_ id: String, _ startText: String) throws {
        let tz = zone(id)
        let start = utc(startText)
        let end = start.addingTimeInterval(3 * 86_400)
        for text in ["* * * * *", "* 1-3 * * *", "*/7 2 * * *", "0-29 * * * *", "30-59 1,2 * * *",
                     "*/10 * 29 2 *", "0 0 13 * SUN", "* * * * MON", "15,45 * * * *"] {
            let e = try cron(text)
            #expect(e.activeIntervals(from: start, until: end, in: tz) == bruteForceIntervals(e, from: start, until: end, in: tz),
                    "\(text) in \(id)")
        }
    }
}

// MARK: - Intervals

@Suite("Intervals")
struct IntervalTests {
    let utcZone = zone("UTC")

    @Test func allStarIsTheWholeRange() throws {
        let e = try cron("* * * * *")
        let start = Date(timeIntervalSince1970: 1_780_000_000.25)
        let end = Date(timeIntervalSince1970: 1_790_000_000.75)
        for id in ["UTC", "Europe/Paris", "Australia/Lord_Howe", "Asia/Kathmandu"] {
            #expect(e.activeIntervals(from: start, until: end, in: zone(id)) == [CronInterval(from: start, until: end)])
        }
    }

    @Test func wholeYearOfEverythingIsOneInterval() throws {
        let start = utc("2026-01-01T00:00:00Z")
        let end = utc("2027-01-01T00:00:00Z")
        #expect(try cron("* * * * *").activeIntervals(from: start, until: end, in: zone("Europe/Paris")) == [
            CronInterval(from: start, until: end),
        ])
    }

    @Test func emptyOrReversedRange() throws {
        let e = try cron("* * * * *")
        let t = utc("2026-01-01T00:00:00Z")
        #expect(e.activeIntervals(from: t, until: t, in: utcZone).isEmpty)
        #expect(e.activeIntervals(from: t, until: t - 60, in: utcZone).isEmpty)
    }

    @Test func stepsProduceSeparateIntervals() throws {
        // Monday 2026-01-05
        let intervals = try cron("*/15 9-17 * * MON-FRI").activeIntervals(
            from: utc("2026-01-05T00:00:00Z"), until: utc("2026-01-06T00:00:00Z"), in: utcZone)
        #expect(intervals.count == 36)
        #expect(intervals.first == interval("2026-01-05T09:00:00Z", "2026-01-05T09:01:00Z"))
        #expect(intervals.last == interval("2026-01-05T17:45:00Z", "2026-01-05T17:46:00Z"))
        #expect(intervals.allSatisfy { $0.duration == 60 })
        // Saturday and Sunday produce nothing.
        #expect(try cron("*/15 9-17 * * MON-FRI").activeIntervals(
            from: utc("2026-01-10T00:00:00Z"), until: utc("2026-01-12T00:00:00Z"), in: utcZone).isEmpty)
    }

    @Test func mergesAcrossHourBoundaries() throws {
        #expect(try cron("* 9-17 * * *").activeIntervals(
            from: utc("2026-01-05T00:00:00Z"), until: utc("2026-01-07T00:00:00Z"), in: utcZone) == [
            interval("2026-01-05T09:00:00Z", "2026-01-05T18:00:00Z"),
            interval("2026-01-06T09:00:00Z", "2026-01-06T18:00:00Z"),
        ])
        #expect(try cron("50-59,0-9 * * * *").activeIntervals(
            from: utc("2026-01-05T00:00:00Z"), until: utc("2026-01-05T03:00:00Z"), in: utcZone) == [
            interval("2026-01-05T00:00:00Z", "2026-01-05T00:10:00Z"),
            interval("2026-01-05T00:50:00Z", "2026-01-05T01:10:00Z"),
            interval("2026-01-05T01:50:00Z", "2026-01-05T02:10:00Z"),
            interval("2026-01-05T02:50:00Z", "2026-01-05T03:00:00Z"),
        ])
    }

    @Test func mergesAcrossDayMonthAndYearBoundaries() throws {
        #expect(try cron("* 23,0 * * *").activeIntervals(
            from: utc("2026-01-05T12:00:00Z"), until: utc("2026-01-06T12:00:00Z"), in: utcZone) == [
            interval("2026-01-05T23:00:00Z", "2026-01-06T01:00:00Z"),
        ])
        #expect(try cron("* * 31,1 12,1 *").activeIntervals(
            from: utc("2026-12-30T00:00:00Z"), until: utc("2027-01-03T00:00:00Z"), in: utcZone) == [
            interval("2026-12-31T00:00:00Z", "2027-01-02T00:00:00Z"),
        ])
        // Paris local new year's midnight (23:00Z-01:00 local merge), then 1 Jan 23:xx local.
        // 31 Dec 00:xx local (30 Dec 23:00Z) lies before the range; 2 Jan 00:xx is not day 1.
        let paris = try cron("* 23,0 31,1 12,1 *").activeIntervals(
            from: utc("2026-12-31T00:00:00Z"), until: utc("2027-01-02T00:00:00Z"), in: zone("Europe/Paris"))
        #expect(paris == [
            interval("2026-12-31T22:00:00Z", "2027-01-01T00:00:00Z"),
            interval("2027-01-01T22:00:00Z", "2027-01-01T23:00:00Z"),
        ])
    }

    @Test func clipsToTheRequestedRange() throws {
        #expect(try cron("* 9-17 * * *").activeIntervals(
            from: utc("2026-01-05T10:30:30Z"), until: utc("2026-01-05T12:15:00Z"), in: utcZone) == [
            interval("2026-01-05T10:30:30Z", "2026-01-05T12:15:00Z"),
        ])
        #expect(try cron("30 10 * * *").activeIntervals(
            from: utc("2026-01-05T10:30:20Z"), until: utc("2026-01-05T10:30:40Z"), in: utcZone) == [
            interval("2026-01-05T10:30:20Z", "2026-01-05T10:30:40Z"),
        ])
        let fractional = try cron("30 10 * * *").activeIntervals(
            from: utc("2026-01-05T10:30:20Z") + 0.5, until: utc("2026-01-06T00:00:00Z"), in: utcZone)
        #expect(fractional == [CronInterval(from: utc("2026-01-05T10:30:20Z") + 0.5, until: utc("2026-01-05T10:31:00Z"))])
        #expect(try cron("30 10 * * *").activeIntervals(
            from: utc("2026-01-05T10:31:00Z"), until: utc("2026-01-06T10:30:00Z"), in: utcZone).isEmpty)
    }

    @Test func orRuleOverAMonth() throws {
        // January 2026: the 13th is a Tuesday; Fridays are 2, 9, 16, 23, 30.
        let intervals = try cron("0 0 13 * FRI").activeIntervals(
            from: utc("2026-01-01T00:00:00Z"), until: utc("2026-02-01T00:00:00Z"), in: utcZone)
        #expect(intervals.map(\.from) == ["02", "09", "13", "16", "23", "30"].map { utc("2026-01-\($0)T00:00:00Z") })
    }

    @Test func impossibleDateNeverMatches() throws {
        #expect(try cron("0 0 30 2 *").activeIntervals(
            from: utc("2026-01-01T00:00:00Z"), until: utc("2030-01-01T00:00:00Z"), in: utcZone).isEmpty)
        // ...but Feb 29 does in a leap year.
        #expect(try cron("0 0 29 2 *").activeIntervals(
            from: utc("2026-01-01T00:00:00Z"), until: utc("2030-01-01T00:00:00Z"), in: utcZone) == [
            interval("2028-02-29T00:00:00Z", "2028-02-29T00:01:00Z"),
        ])
    }

    @Test func aYearOfFiveMinuteStepsIsCountedExactly() throws {
        // Paris local year 2026 lasts 8,760 real hours; offsets are whole hours so the
        // number of matching real minutes is exactly 8,760 × 12.
        let start = utc("2025-12-31T23:00:00Z")
        let end = utc("2026-12-31T23:00:00Z")
        let clock = ContinuousClock()
        var intervals: [CronInterval] = []
        let elapsed = try clock.measure {
            intervals = try cron("*/5 * * * *").activeIntervals(from: start, until: end, in: zone("Europe/Paris"))
        }
        #expect(intervals.count == 8_760 * 12)
        #expect(zip(intervals, intervals.dropFirst()).allSatisfy { $0.until < $1.from })
        #expect(elapsed < .seconds(5))
    }

    @Test func extremeDatesDoNotTrap() throws {
        let e = try cron("0 0 1 1 *")
        _ = e.isActive(at: .distantPast, in: utcZone)
        #expect(!e.isActive(at: Date(timeIntervalSince1970: .infinity), in: utcZone))
        #expect(!e.isActive(at: Date(timeIntervalSince1970: .nan), in: utcZone))
        #expect(e.activeIntervals(from: Date(timeIntervalSince1970: .nan), until: .distantFuture, in: utcZone).isEmpty)
        #expect(e.activeIntervals(from: .distantFuture, until: Date(timeIntervalSince1970: .infinity), in: utcZone).isEmpty)
        #expect(e.activeIntervals(from: Date(timeIntervalSince1970: 1e300), until: Date(timeIntervalSince1970: 2e300), in: utcZone).isEmpty)
        #expect(e.activeIntervals(from: Date(timeIntervalSince1970: -2e300), until: Date(timeIntervalSince1970: -1e300), in: utcZone).isEmpty)
        #expect(!e.isActive(at: Date(timeIntervalSince1970: 1e300), in: utcZone))
        let farPast = try cron("0 0 1 1 *").activeIntervals(
            from: .distantPast, until: Date.distantPast.addingTimeInterval(2 * 366 * 86_400), in: utcZone)
        #expect(farPast.count == 2)
    }
}

// MARK: - Robustness

@Suite("Robustness")
struct RobustnessTests {
    static let fragments: [String] = [
        "0", "1", "5", "7", "9", "12", "23", "31", "59", "60", "99999999999999999999", "*", "/", "-", ",",
        " ", " ", " ", "\t", "@", "@daily", "@weekely", "JAN", "mon", "SUN", "MOM", "x", "é", "☃",
        "👨‍👩‍👧", "０", "\u{301}", "\n", "*/0", "*/15", "1-", "/5", ",,", "1-30/5", "\r\n", "\"", "\\",
    ]

    private static func check(_ text: String) {
        do {
            let e = try CronExpression(parsing: text)
            #expect(e.minutes != 0 && e.hours != 0 && e.daysOfMonth != 0 && e.months != 0 && e.daysOfWeek != 0, "\(text.debugDescription)")
            _ = e.isActive(at: Date(timeIntervalSince1970: 1_780_000_000), in: TimeZone(identifier: "Europe/Paris")!)
        } catch {
            #expect(!error.message.isEmpty, "\(text.debugDescription)")
            #expect((1...(text.count + 1)).contains(error.column), "\(text.debugDescription) → \(error)")
        }
    }

    @Test func randomCharacterSoup() {
        var rng = SplitMix64(state: 0xC0FFEE)
        let alphabet = Array("0123456789*/-,@ \tJANMONSUFRIxé☃👨‍👩‍👧０\u{301}")
        for _ in 0..<3_000 {
            let length = Int.random(in: 0...24, using: &rng)
            let text = String((0..<length).map { _ in alphabet.randomElement(using: &rng)! })
            Self.check(text)
        }
    }

    @Test func randomFragmentSoup() {
        var rng = SplitMix64(state: 7)
        for _ in 0..<3_000 {
            let count = Int.random(in: 0...12, using: &rng)
            let text = (0..<count).map { _ in Self.fragments.randomElement(using: &rng)! }.joined()
            Self.check(text)
        }
    }

    @Test func randomFiveFieldShapes() {
        // Mostly well-formed fields so the deeper paths (ranges, steps, names) get exercised.
        var rng = SplitMix64(state: 2026)
        let good = ["*", "0", "1", "5", "7", "12", "30", "1", "2", "3", "4", "6"]
        let bad = ["59", "60", "MON", "jan", "FRI", "SUN", "x", "", "99999999999999999999", "0"]
        let pick: (inout SplitMix64) -> String = { rng in
            Int.random(in: 0..<10, using: &rng) == 0 ? bad.randomElement(using: &rng)! : good.randomElement(using: &rng)!
        }
        var accepted = 0
        for _ in 0..<3_000 {
            let fields = (0..<5).map { _ -> String in
                let elements = (0..<Int.random(in: 1...3, using: &rng)).map { _ -> String in
                    var s = pick(&rng)
                    if Int.random(in: 0..<4, using: &rng) == 0 { s += "-" + pick(&rng) }
                    if Int.random(in: 0..<4, using: &rng) == 0 { s += "/" + pick(&rng) }
                    return s
                }
                return elements.joined(separator: ",")
            }
            let text = fields.joined(separator: " ")
            if (try? CronExpression(parsing: text)) != nil { accepted += 1 }
            Self.check(text)
        }
        #expect(accepted > 0)
    }
}
