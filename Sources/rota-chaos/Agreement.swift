import Foundation

/// Unix milliseconds, rounded: the unit of the agreement sweep (and of the times `rota-chaos`
/// writes for scripts to check it again).
func unixMilliseconds(_ date: Date) -> Int64 { Int64((date.timeIntervalSince1970 * 1000).rounded()) }

/// Whether a job runs, as a step function of time: the instants (Unix milliseconds) at which its
/// state changes, in order, one per instant, each a real change. Before the first, it does not run.
struct Steps: Equatable, Sendable {
    struct Change: Equatable, Sendable {
        let at: Int64
        let running: Bool
    }

    private(set) var changes: [Change] = []

    /// Never running.
    init() {}

    /// From counted copies (+1 a start, -n the end of n copies), by any number of processes: the
    /// job runs while the count is above 0. At one instant the stops count first, so a hand-over
    /// within a millisecond is no change.
    init(copies: [(at: Int64, delta: Int)]) {
        var count = 0
        var index = 0
        let sorted = copies.sorted { $0.at != $1.at ? $0.at < $1.at : $0.delta < $1.delta }
        while index < sorted.count {
            let at = sorted[index].at
            while index < sorted.count && sorted[index].at == at {
                count += sorted[index].delta
                index += 1
            }
            append(at: at, running: count > 0)
        }
    }

    /// From state rows ("running"/"stopped" at an instant): the last row at or before T says
    /// whether the job runs at T. Rows of one instant: "stopped" before "running" (a restart).
    init(states: [(at: Int64, running: Bool)]) {
        let sorted = states.sorted { $0.at != $1.at ? $0.at < $1.at : !$0.running && $1.running }
        var index = 0
        while index < sorted.count {
            let at = sorted[index].at
            var running = false
            while index < sorted.count && sorted[index].at == at {
                running = sorted[index].running
                index += 1
            }
            append(at: at, running: running)
        }
    }

    private mutating func append(at: Int64, running: Bool) {
        if (changes.last?.running ?? false) != running { changes.append(Change(at: at, running: running)) }
    }

    /// Milliseconds within `from`..<`until` during which `self` (the truth: the workers' logs) and
    /// `other` (the history) disagree, leaving out `tolerance` ms either side of each of `self`'s
    /// changes (the history may record an action up to one planning interval before or after the
    /// worker logs it). An exact event sweep over the merged breakpoints, no sampling.
    func disagreement(with other: Steps, tolerance: Int64, from: Int64, until: Int64) -> Int64 {
        guard until > from else { return 0 }
        // The tolerated windows, merged into disjoint ascending intervals.
        var windows: [(start: Int64, end: Int64)] = []
        for change in changes {
            let start = change.at - tolerance, end = change.at + tolerance
            if let last = windows.last, start <= last.end {
                windows[windows.count - 1].end = max(last.end, end)
            } else {
                windows.append((start, end))
            }
        }
        var points: Set<Int64> = [from, until]
        for at in changes.map(\.at) + other.changes.map(\.at) + windows.flatMap({ [$0.start, $0.end] }) where at > from && at < until {
            points.insert(at)
        }
        let breakpoints = points.sorted()
        var mine = 0, theirs = 0, window = 0
        var running = false, claimed = false
        var total: Int64 = 0
        for (start, end) in zip(breakpoints, breakpoints.dropFirst()) {
            while mine < changes.count && changes[mine].at <= start {
                running = changes[mine].running
                mine += 1
            }
            while theirs < other.changes.count && other.changes[theirs].at <= start {
                claimed = other.changes[theirs].running
                theirs += 1
            }
            while window < windows.count && windows[window].end <= start { window += 1 }
            // Every window bound inside the range is a breakpoint: a segment is wholly in or out.
            let tolerated = window < windows.count && windows[window].start <= start
            if running != claimed && !tolerated { total += end - start }
        }
        return total
    }
}

extension Steps {
    /// Hand-made cases of the sweep (`rota-chaos --self-test`, and before every run): the failures,
    /// empty when all hold.
    static func selfTest() -> [String] {
        var failures: [String] = []
        func expect(_ name: String, _ got: Int64, _ want: Int64) {
            if got != want { failures.append("\(name): got \(got) ms, want \(want) ms") }
        }
        let none = Steps()
        // Logs: runs 10_000..20_000. History agrees exactly: nothing.
        let logs = Steps(copies: [(10_000, 1), (20_000, -1)])
        expect("exact agreement", logs.disagreement(with: Steps(states: [(10_000, true), (20_000, false)]), tolerance: 1_000, from: 0, until: 30_000), 0)
        // History never says it runs: 10 s, less 1 s after the start and 1 s before the stop.
        expect("history silent", logs.disagreement(with: none, tolerance: 1_000, from: 0, until: 30_000), 8_000)
        expect("history silent, no tolerance", logs.disagreement(with: none, tolerance: 0, from: 0, until: 30_000), 10_000)
        // History late by 0.5 s on both edges: within the tolerance.
        expect("late within tolerance", logs.disagreement(with: Steps(states: [(10_500, true), (20_500, false)]), tolerance: 1_000, from: 0, until: 30_000), 0)
        // History late by 3 s on the start: 2 s beyond the tolerance.
        expect("late start", logs.disagreement(with: Steps(states: [(13_000, true), (20_000, false)]), tolerance: 1_000, from: 0, until: 30_000), 2_000)
        // History says it still runs after the stop, to the end: 10 s less 1 s of tolerance.
        expect("stop missing", logs.disagreement(with: Steps(states: [(10_000, true)]), tolerance: 1_000, from: 0, until: 30_000), 9_000)
        // Only the window counts; state before the window is carried in.
        expect("window clip", logs.disagreement(with: Steps(states: [(10_000, true)]), tolerance: 1_000, from: 25_000, until: 28_000), 3_000)
        expect("empty window", logs.disagreement(with: none, tolerance: 0, from: 5, until: 5), 0)
        // A spurious stop/start in the history while the logs show a steady run: its gap counts
        // in full (tolerance only goes around the logs' changes).
        expect("history gap", logs.disagreement(with: Steps(states: [(10_000, true), (14_000, false), (16_000, true), (20_000, false)]), tolerance: 1_000, from: 0, until: 30_000), 2_000)
        // Two copies overlapping, then a hand-over within one millisecond: one run 10_000..30_000.
        let handedOver = Steps(copies: [(10_000, 1), (12_000, 1), (15_000, -1), (20_000, -1), (20_000, 1), (30_000, -1)])
        expect("copies", Int64(handedOver.changes.count), 2)
        expect("hand-over", handedOver.disagreement(with: Steps(states: [(10_000, true), (30_000, false)]), tolerance: 0, from: 0, until: 40_000), 0)
        // Overlapping tolerance windows merge: changes at 10_000 and 11_000 (a 1 s gap in the logs) with 1 s each side.
        let flicker = Steps(copies: [(5_000, 1), (10_000, -1), (11_000, 1), (20_000, -1)])
        expect("merged windows", flicker.disagreement(with: Steps(states: [(5_000, true), (20_000, false)]), tolerance: 1_000, from: 0, until: 30_000), 0)
        expect("gap without tolerance", flicker.disagreement(with: Steps(states: [(5_000, true), (20_000, false)]), tolerance: 0, from: 0, until: 30_000), 1_000)
        // History rows of one instant: stopped then running (a restart) leaves it running; repeated states are one change.
        let restart = Steps(states: [(10_000, true), (15_000, true), (20_000, false), (20_000, true), (25_000, false)])
        expect("restart rows", Int64(restart.changes.count), 2)
        expect("restart", logs.disagreement(with: restart, tolerance: 0, from: 0, until: 30_000), 5_000)
        return failures
    }
}
