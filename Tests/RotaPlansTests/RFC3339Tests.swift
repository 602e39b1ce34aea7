import Foundation
import RotaPlans
import Testing

@Suite struct RFC3339Tests {
    @Test(arguments: [
        ("1970-01-01T00:00:00Z", 0.0),
        ("2026-12-01T10:00:00Z", 1_796_119_200.0),
        ("2026-12-01t10:00:00z", 1_796_119_200.0),
        ("2026-12-01T11:30:00+01:30", 1_796_119_200.0),
        ("2026-12-01T05:00:00-05:00", 1_796_119_200.0),
        ("2026-12-01T10:00:00.25Z", 1_796_119_200.25),
        ("2024-02-29T00:00:00Z", 1_709_164_800.0),
        ("2000-02-29T23:59:59Z", 951_868_799.0),
        ("1969-12-31T23:59:59Z", -1.0),
    ])
    func validTimestamps(text: String, seconds: Double) throws {
        let date = try RFC3339.parse(text).get()
        #expect(abs(date.timeIntervalSince1970 - seconds) < 1e-6, "\(text) → \(date.timeIntervalSince1970)")
    }

    /// Each is accepted by Foundation's ISO8601DateFormatter (or would be a typo it turns into
    /// another instant); each names the field at fault.
    @Test(arguments: [
        ("2026-02-30T00:00:00Z", "day 30 is not in 2026-02, which has 28 days"),
        ("2025-02-29T00:00:00Z", "day 29 is not in 2025-02, which has 28 days"),
        ("1900-02-29T00:00:00Z", "day 29 is not in 1900-02, which has 28 days"),
        ("2026-04-31T00:00:00Z", "day 31 is not in 2026-04, which has 30 days"),
        ("2026-13-01T00:00:00Z", "month 13 is not between 01 and 12"),
        ("2026-00-10T00:00:00Z", "month 0 is not between 01 and 12"),
        ("2026-02-28T24:00:00Z", "hour 24 is not between 00 and 23"),
        ("2026-02-28T10:60:00Z", "minute 60 is not between 00 and 59"),
        ("2026-12-31T23:59:60Z", "second 60 is not between 00 and 59"),
        ("2026-12-01T10:00:00+25:00", "the UTC offset must be between -23:59 and +23:59"),
        ("2026-12-01T10:00:00", "missing time zone"),
        ("2026-12-01T10:00:00.Z", "a '.' must be followed by digits"),
        ("2026-12-01 10:00:00Z", "expected YYYY-MM-DDTHH:MM:SS"),
        ("2026-12-01T10:00:00Z trailing", "expected YYYY-MM-DDTHH:MM:SS"),
        ("26-12-01T10:00:00Z", "expected YYYY-MM-DDTHH:MM:SS"),
        ("", "expected YYYY-MM-DDTHH:MM:SS"),
    ])
    func invalidTimestampsNameTheFieldAtFault(text: String, reason: String) {
        switch RFC3339.parse(text) {
        case .success(let date): Issue.record("\(text) accepted as \(date)")
        case .failure(let problem): #expect(problem.reason.contains(reason), "\(text): \(problem.reason)")
        }
    }
}
