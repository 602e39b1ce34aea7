/// One measured figure, printed as a table row or a JSON line.
struct Measurement {
    let suite: String
    let metric: String
    let value: Double
    let unit: String
    let reference: Double?
    /// Throughputs: value / reference. Latencies: reference / value. Either way, ≥ 1 means "at least as good".
    let ratio: Double?

    var json: String {
        func number(_ x: Double?) -> String {
            guard let x, x.isFinite else { return "null" }
            return x.rounded() == x && abs(x) < 1e15 ? String(Int(x)) : String(format3(x))
        }
        return "{\"suite\":\"\(suite)\",\"metric\":\"\(metric)\",\"value\":\(number(value)),\"unit\":\"\(unit)\","
            + "\"reference\":\(number(reference)),\"ratio\":\(number(ratio))}"
    }
}

func format3(_ x: Double) -> String {
    let scaled = (x * 1000).rounded() / 1000
    return "\(scaled)"
}

func printTable(_ rows: [Measurement]) {
    let header = ["metric", "value", "unit", "reference", "ratio"]
    let cells = rows.map { row in
        [row.metric, format3(row.value), row.unit, row.reference.map(format3) ?? "-", row.ratio.map(format3) ?? "-"]
    }
    let widths = header.indices.map { column in ([header[column]] + cells.map { $0[column] }).map(\.count).max() ?? 0 }
    func line(_ values: [String]) -> String {
        values.enumerated().map { index, value in
            index == 0 ? value.padding(toLength: widths[index], withPad: " ", startingAt: 0)
                : String(repeating: " ", count: widths[index] - value.count) + value
        }.joined(separator: "  ")
    }
    print(line(header))
    for row in cells { print(line(row)) }
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    guard !sorted.isEmpty else { return .nan }
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

func percentile(_ sorted: [Double], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return .nan }
    let index = min(sorted.count - 1, max(0, Int((p / 100 * Double(sorted.count)).rounded(.up)) - 1))
    return sorted[index]
}

extension String {
    func padding(toLength length: Int, withPad pad: String, startingAt: Int) -> String {
        count >= length ? self : self + String(repeating: pad, count: length - count)
    }
}
