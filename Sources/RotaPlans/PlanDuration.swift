import Foundation

/// Parses durations such as `100ms`, `10s`, `1m30s`, `2h`, `1.5s`: a sequence of
/// `<number>[.<fraction>]<unit>` with units `ms`, `s`, `m`, `h`, `d`.
enum PlanDuration {
    static func parse(_ text: String) -> Duration? {
        var rest = Substring(text.trimmingCharacters(in: .whitespaces))
        guard !rest.isEmpty else { return nil }
        var total: Double = 0
        while !rest.isEmpty {
            let number = rest.prefix { $0.isASCII && ($0.isNumber || $0 == ".") }
            guard !number.isEmpty, number.filter({ $0 == "." }).count <= 1, let value = Double(number) else { return nil }
            rest = rest.dropFirst(number.count)
            let unit = rest.prefix { $0.isASCII && $0.isLetter }
            rest = rest.dropFirst(unit.count)
            let scale: Double
            switch unit {
            case "ms": scale = 0.001
            case "s": scale = 1
            case "m": scale = 60
            case "h": scale = 3600
            case "d": scale = 86_400
            default: return nil
            }
            total += value * scale
        }
        guard total.isFinite, total < 1e9 else { return nil }
        return .milliseconds(Int64((total * 1000).rounded()))
    }
}

/// Parses a duration written like the plan files' `every:` (`500ms`, `10s`, `1m30s`, `2h`, `1d`).
public func parseDuration(_ text: String) -> Duration? {
    PlanDuration.parse(text)
}
