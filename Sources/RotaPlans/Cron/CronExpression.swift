/// A rejected cron expression.
///
/// Carries the 1-based column (counted in `Character`s of the text handed to
/// `CronExpression(parsing:)`) of the token that caused the rejection, so the
/// plan loader can report `FILE:LINE:COLUMN: error: MESSAGE` and editors can jump
/// straight to the mistake instead of leaving the user to re-read the whole line.
public struct CronError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Human-readable cause; names the field when the problem is inside one.
    public let message: String
    /// 1-based column of the offending token; `text.count + 1` means "at the end".
    public let column: Int

    public init(message: String, column: Int) {
        self.message = message
        self.column = column
    }

    public var description: String { "column \(column): \(message)" }
}

/// A parsed five-field cron expression (minute hour day-of-month month day-of-week).
///
/// Parsed once into bitsets so that a scheduler can evaluate it for hundreds of
/// thousands of wall-clock minutes (e.g. a year of intervals) without re-reading
/// text or allocating. Evaluation against real time lives in `CronWindow.swift`.
public struct CronExpression: Sendable, Hashable, CustomStringConvertible {
    /// The text exactly as given, kept so diagnostics and plan dumps can echo what the user wrote.
    public let source: String
    /// Bit `n` set ⇔ minute `n` (0-59) matches.
    public let minutes: UInt64
    /// Bit `n` set ⇔ hour `n` (0-23) matches.
    public let hours: UInt32
    /// Bit `n` set ⇔ day-of-month `n` (1-31) matches; bit 0 is never set.
    public let daysOfMonth: UInt32
    /// Bit `n` set ⇔ month `n` (1-12) matches; bit 0 is never set.
    public let months: UInt16
    /// Bit `n` set ⇔ weekday `n` (0 = Sunday … 6 = Saturday) matches; a written 7 is folded into bit 0.
    public let daysOfWeek: UInt8
    /// Whether the day-of-month field was written starting with `*`.
    /// Standard cron combines the two day fields with OR only when *both* are restricted,
    /// so this has to be remembered separately from the bitset (`*/2` is "unrestricted" too).
    public let dayOfMonthIsStar: Bool
    /// Whether the day-of-week field was written starting with `*` (see `dayOfMonthIsStar`).
    public let dayOfWeekIsStar: Bool

    public var description: String { source }

    /// Parses `text`; every malformed input is reported as a `CronError`, never a trap,
    /// because plan files are user-edited and a typo must not take the scheduler down.
    public init(parsing text: String) throws(CronError) {
        let chars = Array(text)
        var tokens: [(start: Int, end: Int)] = []
        var i = 0
        while i < chars.count {
            if chars[i].isWhitespace { i += 1; continue }
            let start = i
            while i < chars.count, !chars[i].isWhitespace { i += 1 }
            tokens.append((start, i))
        }

        if let first = tokens.first, chars[first.start] == "@" {
            let name = String(chars[first.start..<first.end])
            guard let expansion = CronExpression.macros[name.lowercased()] else {
                throw CronError(message: "unknown macro \"\(name)\"", column: first.start + 1)
            }
            if tokens.count > 1 {
                let extra = tokens[1]
                throw CronError(
                    message: "unexpected \"\(String(chars[extra.start..<extra.end]))\" after macro \"\(name)\"",
                    column: extra.start + 1)
            }
            // Expansions are fixed, known-valid text (covered by tests), so this never throws.
            let expanded = try CronExpression(parsing: expansion)
            self = expanded.withSource(text)
            return
        }

        guard tokens.count == 5 else {
            let column: Int
            if tokens.count > 5 {
                column = tokens[5].start + 1
            } else if let last = tokens.last {
                column = last.end + 1
            } else {
                column = 1
            }
            throw CronError(message: "expected 5 fields, found \(tokens.count)", column: column)
        }

        var masks: [UInt64] = []
        for (spec, token) in zip(FieldSpec.all, tokens) {
            masks.append(try spec.parse(chars, token.start, token.end))
        }
        self.source = text
        self.minutes = masks[0]
        self.hours = UInt32(truncatingIfNeeded: masks[1])
        self.daysOfMonth = UInt32(truncatingIfNeeded: masks[2])
        self.months = UInt16(truncatingIfNeeded: masks[3])
        let dow = masks[4]
        self.daysOfWeek = UInt8(truncatingIfNeeded: (dow & 0x7F) | (dow >> 7 & 1))
        self.dayOfMonthIsStar = chars[tokens[2].start] == "*"
        self.dayOfWeekIsStar = chars[tokens[4].start] == "*"
    }

    private init(copying other: CronExpression, source: String) {
        self.source = source
        self.minutes = other.minutes
        self.hours = other.hours
        self.daysOfMonth = other.daysOfMonth
        self.months = other.months
        self.daysOfWeek = other.daysOfWeek
        self.dayOfMonthIsStar = other.dayOfMonthIsStar
        self.dayOfWeekIsStar = other.dayOfWeekIsStar
    }

    private func withSource(_ text: String) -> CronExpression {
        CronExpression(copying: self, source: text)
    }

    /// True when the local wall-clock minute given by these fields matches.
    ///
    /// Takes plain fields (weekday 0 = Sunday) so callers that already hold local
    /// fields—and tests—can check the cron rules without any calendar or time zone.
    /// Out-of-range inputs simply don't match.
    public func matches(minute: Int, hour: Int, day: Int, month: Int, weekday: Int) -> Bool {
        guard (0...59).contains(minute), (0...23).contains(hour), (1...31).contains(day),
              (1...12).contains(month), (0...7).contains(weekday)
        else { return false }
        guard minutes & (1 << UInt64(minute)) != 0,
              hours & (1 << UInt32(hour)) != 0,
              months & (1 << UInt16(month)) != 0
        else { return false }
        return dayMatches(day: day, month: month, weekday: weekday % 7)
    }

    /// The day rule on its own, so interval computation can skip whole days cheaply.
    @inline(__always)
    func dayMatches(day: Int, month: Int, weekday: Int) -> Bool {
        let domHit = daysOfMonth & (1 << UInt32(day)) != 0
        let dowHit = daysOfWeek & (1 << UInt8(weekday)) != 0
        if dayOfMonthIsStar || dayOfWeekIsStar {
            return domHit && dowHit
        }
        return domHit || dowHit
    }

    static let macros: [String: String] = [
        "@yearly": "0 0 1 1 *",
        "@annually": "0 0 1 1 *",
        "@monthly": "0 0 1 * *",
        "@weekly": "0 0 * * 0",
        "@daily": "0 0 * * *",
        "@midnight": "0 0 * * *",
        "@hourly": "0 * * * *",
    ]
}

/// Static description of one cron field; the parser is shared by all five.
private struct FieldSpec {
    let name: String
    /// Smallest and largest value accepted when written explicitly.
    let low: Int
    let high: Int
    /// Upper end used by `*` and `N/step`. Differs from `high` only for
    /// day-of-week, where 7 is an alias of Sunday and must not be stepped onto
    /// (`1/2` means Mon, Wed, Fri — not also Sunday).
    let implicitHigh: Int
    let names: [String: Int]

    /// Largest meaningful step: the number of distinct values of the field.
    var stepLimit: Int { implicitHigh - low + 1 }

    static let all: [FieldSpec] = [
        FieldSpec(name: "minute", low: 0, high: 59, implicitHigh: 59, names: [:]),
        FieldSpec(name: "hour", low: 0, high: 23, implicitHigh: 23, names: [:]),
        FieldSpec(name: "day-of-month", low: 1, high: 31, implicitHigh: 31, names: [:]),
        FieldSpec(name: "month", low: 1, high: 12, implicitHigh: 12, names: [
            "JAN": 1, "FEB": 2, "MAR": 3, "APR": 4, "MAY": 5, "JUN": 6,
            "JUL": 7, "AUG": 8, "SEP": 9, "OCT": 10, "NOV": 11, "DEC": 12,
        ]),
        FieldSpec(name: "day-of-week", low: 0, high: 7, implicitHigh: 6, names: [
            "SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6,
        ]),
    ]

    private func fail(_ cause: String, at index: Int) -> CronError {
        CronError(message: "\(name) field: \(cause)", column: index + 1)
    }

    private var expectation: String { names.isEmpty ? "a number" : "a number or name" }

    /// Parses `chars[start..<end]` (one whitespace-free field) into a bitmask.
    func parse(_ chars: [Character], _ start: Int, _ end: Int) throws(CronError) -> UInt64 {
        var mask: UInt64 = 0
        var elementStart = start
        while true {
            var elementEnd = elementStart
            while elementEnd < end, chars[elementEnd] != "," { elementEnd += 1 }
            if elementEnd == elementStart {
                throw fail("empty list element", at: elementStart)
            }
            mask |= try parseElement(chars, elementStart, elementEnd)
            if elementEnd == end { break }
            elementStart = elementEnd + 1  // skip the comma; may equal `end` → empty element
        }
        return mask
    }

    /// One list element: `*`, `N`, `N-M`, each optionally followed by `/STEP`.
    private func parseElement(_ chars: [Character], _ start: Int, _ end: Int) throws(CronError) -> UInt64 {
        var pos = start
        let first: Int
        var last: Int
        var isSingle = false
        if chars[pos] == "*" {
            first = low
            last = implicitHigh
            pos += 1
        } else {
            let (value, text, next) = try parseValue(chars, pos, end)
            first = value
            last = value
            pos = next
            if pos < end, chars[pos] == "-" {
                pos += 1
                let (upper, upperText, afterUpper) = try parseValue(chars, pos, end)
                if upper < value {
                    throw fail("range \(text)-\(upperText) is reversed", at: start)
                }
                last = upper
                pos = afterUpper
            } else {
                isSingle = true
            }
        }

        var step = 1
        if pos < end, chars[pos] == "/" {
            pos += 1
            let (token, next) = Self.word(chars, pos, end)
            guard !token.isEmpty else {
                throw fail("expected a step number, found \(Self.describe(chars, pos, end))", at: pos)
            }
            guard let number = Self.number(token) else {
                throw fail("step must be a number, found \"\(token)\"", at: pos)
            }
            if number < 1 {
                throw fail("step must be >= 1", at: pos)
            }
            if number > stepLimit {
                throw fail("step \(token) out of range 1-\(stepLimit)", at: pos)
            }
            step = number
            pos = next
            if isSingle { last = max(first, implicitHigh) }
        }

        if pos < end {
            throw fail("unexpected character \"\(chars[pos])\"", at: pos)
        }

        var mask: UInt64 = 0
        for value in stride(from: first, through: last, by: step) {
            mask |= 1 << UInt64(value)
        }
        return mask
    }

    /// A number or (where the field has them) a name; range-checked.
    private func parseValue(_ chars: [Character], _ pos: Int, _ end: Int) throws(CronError) -> (Int, String, Int) {
        let (token, next) = Self.word(chars, pos, end)
        guard !token.isEmpty else {
            throw fail("expected \(expectation), found \(Self.describe(chars, pos, end))", at: pos)
        }
        if let number = Self.number(token) {
            guard number >= low, number <= high else {
                throw fail("value \(token) out of range \(low)-\(high)", at: pos)
            }
            return (number, token, next)
        }
        if token.allSatisfy(\.isLetter) {
            if names.isEmpty {
                throw fail("expected a number, found \"\(token)\"", at: pos)
            }
            guard let value = names[token.uppercased()] else {
                throw fail("unknown name \"\(token)\"", at: pos)
            }
            return (value, token, next)
        }
        throw fail("invalid value \"\(token)\"", at: pos)
    }

    /// Maximal run of ASCII letters/digits starting at `pos`.
    private static func word(_ chars: [Character], _ pos: Int, _ end: Int) -> (String, Int) {
        var next = pos
        while next < end, chars[next].isASCII, chars[next].isLetter || chars[next].isNumber {
            next += 1
        }
        return (String(chars[pos..<next]), next)
    }

    /// Decimal value of an all-digit token, saturating so absurdly long numbers
    /// still produce an "out of range" diagnostic rather than an overflow trap.
    private static func number(_ token: String) -> Int? {
        guard token.allSatisfy(\.isNumber) else { return nil }
        var value = 0
        for char in token {
            guard let digit = char.wholeNumberValue else { return nil }
            value = min(value * 10 + digit, 1_000_000)
        }
        return value
    }

    private static func describe(_ chars: [Character], _ pos: Int, _ end: Int) -> String {
        pos < end ? "\"\(chars[pos])\"" : "end of field"
    }
}
