import Foundation
import RotaPlans
import RotaTestSupport
import Testing

// Fuzzing of the plan-file parser/validator and the cron parser, as ordinary (deterministic) tests:
// the corpus in `Corpus/` (kept in the repository, read via #filePath; the target excludes it), plus
// mutants derived from it with a seeded PRNG. Every input must give either a value or a clear error
// (file, line >= 1, column >= 1, a message), never a crash, and finish quickly: inputs run on a worker
// thread, each one timed, under a watchdog on the test's task, so a hang fails the test instead of
// freezing the run. A failure names the input (corpus file or line, mutant number); rerunning
// reproduces it exactly.
//
// Corpus conventions: a `# valid` line in a plan file means it must parse, `# expect: TEXT` that it must
// be rejected with a diagnostic containing TEXT (otherwise either is fine); in `cron.txt`, `# valid`,
// `# invalid` and `# either` set what the following lines must do. Bytes that are not UTF-8 text are
// generated in code (`binaryInputs`).
//
// Coverage-guided fuzzing works too (Linux, Swift 6.3): an executable target depending on RotaPlans
// whose `@_cdecl("LLVMFuzzerTestOneInput")` function calls `PlanParser.parse`, and whose
// `@_cdecl("<product>_main")` calls `LLVMFuzzerRunDriver` (SwiftPM renames an executable's `main`),
// built with `swift build -c release --product <product> -Xswiftc -sanitize=fuzzer,address` and run
// on a copy of `Corpus/plans` (libFuzzer adds files to its first directory).

// MARK: - Corpus

private enum Corpus {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Corpus")
    static let plansDirectory = directory.appendingPathComponent("plans")

    /// `Corpus/plans/*.yaml`, sorted by name.
    static func planFiles() throws -> [(name: String, bytes: [UInt8])] {
        let names = try FileManager.default.contentsOfDirectory(atPath: plansDirectory.path)
            .filter { $0.hasSuffix(".yaml") }.sorted()
        return try names.map { name in
            (name, Array(try Data(contentsOf: plansDirectory.appendingPathComponent(name))))
        }
    }

    /// `Corpus/cron.txt`: one expression per line, exactly as written (spaces and tabs included);
    /// `#` lines are comments, and `# valid`, `# invalid`, `# either` set what the lines below must do.
    static func cronLines() throws -> [(text: String, expect: CronExpect, line: Int)] {
        let text = try String(contentsOf: directory.appendingPathComponent("cron.txt"), encoding: .utf8)
        var expect = CronExpect.either
        var result: [(String, CronExpect, Int)] = []
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            switch line {
            case "# valid": expect = .valid
            case "# invalid": expect = .invalid
            case "# either": expect = .either
            case _ where line.hasPrefix("#") || line.isEmpty: continue
            default: result.append((String(line), expect, index + 1))
            }
        }
        return result
    }
}

/// What a corpus plan file must do: a `# valid` line means it must parse, `# expect: TEXT` that it
/// must be rejected with a diagnostic containing TEXT; otherwise either outcome is fine.
private enum PlanExpect: Sendable {
    case valid
    case rejected(String)
    case either

    init(_ text: String) {
        self = .either
        for line in text.split(whereSeparator: \.isNewline).prefix(3) {
            if line == "# valid" { self = .valid }
            if line.hasPrefix("# expect: ") { self = .rejected(String(line.dropFirst("# expect: ".count))) }
        }
    }
}

private enum CronExpect: Sendable { case valid, invalid, either }

// MARK: - Deterministic randomness and mutation

/// Byte-level mutations of YAML text.
private enum YAMLMutator {
    /// Characters and fragments with a meaning in YAML (or in the validator), inserted or spliced in.
    static let specials: [[UInt8]] = [
        ":", "-", "[", "]", "{", "}", "&", "*", "!", "|", ">", "%", "@", "\t", "\0", "#", "'", "\"", ",", "?", "`",
        "\n", " ", "\r", "\r\n", "- ", ": ", "? ", "&a ", "*a", "&a [*a, *a]", "!!", "!!str ", "!!binary ", "!<tag:x> ", "\\",
        "\u{FEFF}", "\u{2028}", "\u{85}", "\u{A0}", "é", "👨‍👩‍👧", "---\n", "...\n", "%YAML 1.1\n", "<<: ",
        "9999999999999999999", "9223372036854775807:0", "1:0:0:0:0:0:0:0:0:0:0:0", "1:30", ".inf", ".nan", "~", "null", "0x", "1e999",
        "0ms", "99ms", "100ms", "1e3s", "Europe/Paris", "../../dev/zero", "GMT+14", "2026-03-29T02:30:00+01:00", "23:59:60Z",
        "*/0", "5-1", "L", "W", "MON-FRI", "@daily", "=", "[[[[[[[[", "]]]]]]]]", "{a: {b: {c: ", "'\"'", "\"\\u0000\"", "\"\\xZZ\"",
    ].map { Array($0.utf8) }

    static func mutate(_ seed: [UInt8], using rng: inout SplitMix64) -> [UInt8] {
        var bytes = seed
        for _ in 0..<Int.random(in: 1...3, using: &rng) {
            let at = bytes.isEmpty ? 0 : Int.random(in: 0...bytes.count, using: &rng)
            switch Int.random(in: 0..<10, using: &rng) {
            case 0 where at < bytes.count:  // flip a bit (may produce invalid UTF-8)
                bytes[at] ^= 1 << UInt8.random(in: 0..<8, using: &rng)
            case 1 where at < bytes.count:  // any byte
                bytes[at] = UInt8.random(in: 0...255, using: &rng)
            case 2, 3:  // a special character or fragment
                bytes.insert(contentsOf: specials.randomElement(using: &rng)!, at: at)
            case 4 where at < bytes.count:  // delete a few bytes
                bytes.removeSubrange(at..<min(bytes.count, at + Int.random(in: 1...8, using: &rng)))
            case 5:  // truncate
                bytes.removeSubrange(at...)
            case 6:  // duplicate the line containing `at`
                let (start, end) = line(around: at, in: bytes)
                bytes.insert(contentsOf: bytes[start..<end] + [UInt8(ascii: "\n")], at: start)
            case 7:  // indent or dedent the line containing `at`
                let (start, _) = line(around: at, in: bytes)
                if Bool.random(using: &rng) || start >= bytes.count || bytes[start] != UInt8(ascii: " ") {
                    bytes.insert(contentsOf: Array(repeating: UInt8(ascii: " "), count: Int.random(in: 1...4, using: &rng)), at: start)
                } else {
                    bytes.remove(at: start)
                }
            case 8 where !bytes.isEmpty:  // splice in a copy of another part of the text
                let from = Int.random(in: 0..<bytes.count, using: &rng)
                let chunk = bytes[from..<min(bytes.count, from + Int.random(in: 1...40, using: &rng))]
                bytes.insert(contentsOf: chunk, at: at)
            default:  // swap two lines
                let a = line(around: at, in: bytes)
                let b = line(around: Int.random(in: 0...bytes.count, using: &rng), in: bytes)
                guard a.start != b.start else { continue }
                let (first, second) = a.start < b.start ? (a, b) : (b, a)
                guard first.end <= second.start else { continue }
                let firstLine = Array(bytes[first.start..<first.end])
                let secondLine = Array(bytes[second.start..<second.end])
                bytes.replaceSubrange(second.start..<second.end, with: firstLine)
                bytes.replaceSubrange(first.start..<first.end, with: secondLine)
            }
        }
        return bytes
    }

    /// The line around `index`: `[start, end)` without its newline.
    static func line(around index: Int, in bytes: [UInt8]) -> (start: Int, end: Int) {
        var start = min(index, bytes.count)
        while start > 0, bytes[start - 1] != UInt8(ascii: "\n") { start -= 1 }
        var end = min(index, bytes.count)
        while end < bytes.count, bytes[end] != UInt8(ascii: "\n") { end += 1 }
        return (start, end)
    }
}

/// Character-level mutations of cron expressions.
private enum CronMutator {
    static let alphabet = Array("0123456789*/-,@ \tLW?#HJANMONSUFRIDECxé☃٣０\u{A0}")
    static let fragments = ["60", "59", "24", "31", "32", "13", "7", "8", "0", "99999999999999999999", "JAN", "sun", "MON-FRI", "L", "W", "?",
                            "#3", "/0", "/7", "/61", "-", ",", "*/", "@daily", "@reboot", " ", "\t", "\u{A0}", "\u{301}", "1-", "-1", "5-1"]

    static func mutate(_ seed: String, using rng: inout SplitMix64) -> String {
        var chars = Array(seed)
        for _ in 0..<Int.random(in: 1...3, using: &rng) {
            let at = Int.random(in: 0...chars.count, using: &rng)
            switch Int.random(in: 0..<8, using: &rng) {
            case 0: chars.insert(alphabet.randomElement(using: &rng)!, at: at)
            case 1: chars.insert(contentsOf: fragments.randomElement(using: &rng)!, at: at)
            case 2 where at < chars.count: chars.remove(at: at)
            case 3 where at < chars.count: chars[at] = alphabet.randomElement(using: &rng)!
            case 4: chars.removeSubrange(at...)
            default:  // duplicate, drop or swap whole fields
                var fields = String(chars).split(separator: " ", omittingEmptySubsequences: false).map(String.init)
                guard !fields.isEmpty else { continue }
                let i = Int.random(in: 0..<fields.count, using: &rng)
                let j = Int.random(in: 0..<fields.count, using: &rng)
                switch Int.random(in: 0..<3, using: &rng) {
                case 0: fields.insert(fields[i], at: j)
                case 1: fields.remove(at: i)
                default: fields.swapAt(i, j)
                }
                chars = Array(fields.joined(separator: " "))
            }
        }
        return String(chars)
    }
}

// MARK: - Running inputs under a watchdog

/// What checking one input found: its problems, and what happened ("accepted", or the kind of rejection).
private struct Outcome: Sendable {
    var problems: [String]
    var kind: String

    /// A diagnostic's message without quoted parts and numbers, so that rejections can be counted by kind.
    static func kind(of message: String) -> String {
        String(message.replacing(quoted, with: "'…'").replacing(number, with: "N").prefix(70))
    }

    private nonisolated(unsafe) static let quoted = try! Regex("'[^']*'|\"[^\"]*\"")
    private nonisolated(unsafe) static let number = try! Regex("[0-9]+")
}

/// What a guarded run found.
private struct GuardedRun: Sendable {
    var count = 0
    /// How many inputs ended in each way ("accepted", or a kind of rejection).
    var kinds: [String: Int] = [:]
    var problems: [String] = []
    var slowest: Duration = .zero
    var slowestInput = ""
    /// Set when an input had not finished after `3 × limit`: the run stopped waiting (its thread is left behind).
    var hung: String?
    var elapsed: Duration = .zero
}

private final class Progress: @unchecked Sendable {
    let lock = NSLock()
    var current: Int?
    var started = ContinuousClock.now
    var done = false
    var run = GuardedRun()
}

/// Runs `check` on every input, on a thread of its own (8 MiB of stack), timing each call. A call that
/// takes longer than `limit` is a problem; one that has not returned after `3 × limit` is a hang: the
/// watchdog on the test's task reports it and stops waiting. `check` returns what is wrong with an input
/// (it must not use `#expect`: it does not run on the test's task).
private func guarded<Input: Sendable>(
    _ inputs: [Input], limit: Duration = .seconds(2),
    describe: @escaping @Sendable (Input) -> String,
    check: @escaping @Sendable (Input) -> Outcome
) async -> GuardedRun {
    let progress = Progress()
    let clock = ContinuousClock()
    let begin = clock.now
    let thread = Thread {
        for (index, input) in inputs.enumerated() {
            let start = clock.now
            progress.lock.withLock { progress.current = index; progress.started = start }
            let outcome = check(input)
            let elapsed = clock.now - start
            progress.lock.withLock {
                progress.current = nil
                progress.run.count += 1
                progress.run.problems += outcome.problems.map { "\(describe(input)): \($0)" }
                progress.run.kinds[outcome.kind, default: 0] += 1
                if elapsed > limit { progress.run.problems.append("\(describe(input)): took \(elapsed), limit \(limit)") }
                if elapsed > progress.run.slowest { (progress.run.slowest, progress.run.slowestInput) = (elapsed, describe(input)) }
            }
        }
        progress.lock.withLock { progress.done = true }
    }
    thread.stackSize = 8 << 20
    thread.start()
    while true {
        try? await Task.sleep(for: .milliseconds(10))
        let state: (done: Bool, stuck: Int?) = progress.lock.withLock {
            let stuck = progress.current.flatMap { clock.now - progress.started > limit * 3 ? $0 : nil }
            return (progress.done, stuck)
        }
        if state.done { break }
        if let stuck = state.stuck {
            progress.lock.withLock { progress.run.hung = describe(inputs[stuck]) }
            break
        }
    }
    return progress.lock.withLock {
        progress.run.elapsed = clock.now - begin
        return progress.run
    }
}

/// Records a guarded run's problems as test issues (the first 30, then a count).
private func report(_ run: GuardedRun, _ what: String, expectedCount: Int) {
    if let hung = run.hung { Issue.record("\(what): HANG on \(hung)") }
    #expect(run.hung != nil || run.count == expectedCount, "\(what): ran \(run.count) of \(expectedCount)")
    for problem in run.problems.prefix(30) { Issue.record("\(what): \(problem)") }
    if run.problems.count > 30 { Issue.record("\(what): … and \(run.problems.count - 30) more problems") }
    print("\(what): \(run.count) inputs in \(run.elapsed), slowest \(run.slowest) (\(run.slowestInput.prefix(120)))")
    let kinds = run.kinds.sorted { ($0.value, $1.key) > ($1.value, $0.key) }
    print("\(what): " + kinds.prefix(12).map { "\($0.value) \($0.key)" }.joined(separator: " | ") + (kinds.count > 12 ? " | … \(kinds.count - 12) more kinds" : ""))
}

// MARK: - Checking one plan text

/// Characters libyaml counts as line breaks: a diagnostic's line must lie within the text.
private let lineBreaks: Set<Unicode.Scalar> = ["\n", "\r", "\u{85}", "\u{2028}", "\u{2029}"]

/// Parses `text` and returns what is wrong with the outcome (empty: a plan, or a clear rejection).
private func planProblems(_ text: String, path: String, expect: PlanExpect) -> Outcome {
    var problems: [String] = []
    var kind = "accepted"
    do {
        let plan = try PlanParser.parse(contents: text, path: path)
        problems += acceptedPlanProblems(plan, path: path)
        if case .rejected(let expected) = expect { problems.append("accepted; expected a rejection mentioning '\(expected)'") }
    } catch {
        let lastLine = 2 + text.unicodeScalars.reduce(0) { $0 + (lineBreaks.contains($1) ? 1 : 0) }
        if error.diagnostics.isEmpty { problems.append("rejected without any diagnostic") }
        kind = Outcome.kind(of: error.diagnostics.first?.message ?? "")
        for diagnostic in error.diagnostics {
            if diagnostic.file != path { problems.append("diagnostic for another file: \(diagnostic)") }
            if !(1...lastLine).contains(diagnostic.line) { problems.append("line \(diagnostic.line) outside 1...\(lastLine): \(diagnostic)") }
            if diagnostic.column < 1 { problems.append("column < 1: \(diagnostic)") }
            if diagnostic.message.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty { problems.append("empty message: \(diagnostic)") }
        }
        switch expect {
        case .valid:
            problems.append("rejected; expected valid:\n\(error.description.prefix(600))")
        case .rejected(let expected) where !error.diagnostics.contains(where: { $0.message.contains(expected) }):
            problems.append("rejected without '\(expected)':\n\(error.description.prefix(600))")
        default:
            break
        }
    }
    return Outcome(problems: problems, kind: kind)
}

/// What an accepted plan must satisfy: everything the validator promises.
private func acceptedPlanProblems(_ plan: PlanFile, path: String) -> [String] {
    var problems: [String] = []
    if plan.path != path { problems.append("path \(plan.path)") }
    var keys: Set<String> = []
    for producer in plan.producers {
        if producer.name.isEmpty { problems.append("empty producer name") }
        if producer.interval < PlanParser.minimumInterval { problems.append("interval \(producer.interval) below the minimum") }
        guard let zone = TimeZone(identifier: producer.timeZone) else {
            problems.append("unknown zone \(producer.timeZone)")
            continue
        }
        if producer.mode == .exact, !producer.stop.isEmpty { problems.append("stop in exact mode") }
        for key in producer.stop where key.isEmpty || key.contains("=") { problems.append("bad stop key \(key.debugDescription)") }
        for job in producer.jobs {
            if job.key.isEmpty || job.key.contains("=") || job.key.contains(where: \.isWhitespace) {
                problems.append("bad job key \(job.key.debugDescription)")
            }
            if !keys.insert(job.key).inserted { problems.append("duplicate job key \(job.key)") }
            if job.handler.isEmpty { problems.append("empty handler") }
            if (try? JSONSerialization.jsonObject(with: Data(job.payload), options: [.fragmentsAllowed])) == nil {
                problems.append("payload is not JSON: \(String(decoding: job.payload.prefix(200), as: UTF8.self))")
            }
            if let from = job.from, let until = job.until, until <= from { problems.append("until <= from") }
            if let active = job.active, (try? CronExpression(parsing: active.source)) != active {
                problems.append("cron \(active.source.debugDescription) does not re-parse to itself")
            }
            _ = job.isDesired(at: Date(timeIntervalSince1970: 1_790_000_000), in: zone)
        }
    }
    return problems
}

// MARK: - Checking one cron expression

/// Weeks around UTC-offset transitions (gaps, folds, 30-minute and 45-minute offsets), plus the
/// edges of the evaluated range.
private let cronWindows: [(zone: TimeZone, start: Date, days: Int)] = {
    func at(_ zone: String, _ iso: String, days: Int = 7) -> (TimeZone, Date, Int) {
        (TimeZone(identifier: zone)!, try! Date(iso, strategy: .iso8601), days)
    }
    return [
        at("Europe/Paris", "2026-03-26T00:00:00Z"),  // gap 2026-03-29 02:00 → 03:00
        at("Europe/Paris", "2026-10-22T00:00:00Z"),  // fold 2026-10-25 03:00 → 02:00
        at("America/New_York", "2026-03-05T00:00:00Z"),
        at("America/New_York", "2026-10-29T00:00:00Z"),
        at("Australia/Lord_Howe", "2026-04-02T00:00:00Z"),  // 30-minute fold
        at("Australia/Lord_Howe", "2026-10-01T00:00:00Z"),
        at("Pacific/Chatham", "2026-04-02T00:00:00Z"),  // +13:45 → +12:45
        at("America/St_Johns", "2026-03-05T00:00:00Z"),  // -03:30 → -02:30
        at("Asia/Kathmandu", "2026-06-01T00:00:00Z"),
        at("UTC", "2028-02-25T00:00:00Z"),  // leap day
        (TimeZone(identifier: "UTC")!, Date(timeIntervalSince1970: 1e12 - 3 * 86_400), 5),  // past the evaluated range
        (TimeZone(identifier: "Europe/Paris")!, Date(timeIntervalSince1970: -1e12 - 2 * 86_400), 4),
    ]
}()

private func cronProblems(_ text: String, expect: CronExpect, windows: [(zone: TimeZone, start: Date, days: Int)], seed: UInt64) -> Outcome {
    let expression: CronExpression
    do {
        expression = try CronExpression(parsing: text)
    } catch {
        var problems: [String] = []
        if error.message.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty { problems.append("empty message") }
        if !(1...(text.count + 1)).contains(error.column) { problems.append("column \(error.column) outside 1...\(text.count + 1): \(error)") }
        if expect == .valid { problems.append("rejected; expected valid: \(error)") }
        return Outcome(problems: problems, kind: Outcome.kind(of: error.message))
    }
    var problems: [String] = []
    if expect == .invalid { problems.append("accepted; expected a rejection") }
    if expression.source != text { problems.append("source \(expression.source.debugDescription)") }
    if expression.minutes == 0 || expression.hours == 0 || expression.daysOfMonth == 0 || expression.months == 0 || expression.daysOfWeek == 0 {
        problems.append("an empty field mask")
    }
    if (try? CronExpression(parsing: text)) != expression { problems.append("parsing again gives another value") }
    var rng = SplitMix64(state: seed)
    for window in windows {
        problems += intervalProblems(expression, window.zone, from: window.start, days: window.days, using: &rng)
    }
    return Outcome(problems: problems, kind: "accepted")
}

/// `activeIntervals` over a window must be ordered, disjoint, maximal and agree with `isActive`.
private func intervalProblems(_ e: CronExpression, _ zone: TimeZone, from start: Date, days: Int, using rng: inout SplitMix64) -> [String] {
    let end = start.addingTimeInterval(Double(days) * 86_400)
    let intervals = e.activeIntervals(from: start, until: end, in: zone)
    let label = "\(zone.identifier) from \(start.timeIntervalSince1970)"
    func text(_ interval: CronInterval) -> String { "[\(interval.from.timeIntervalSince1970), \(interval.until.timeIntervalSince1970))" }
    var problems: [String] = []
    for (index, interval) in intervals.enumerated() {
        if !(start <= interval.from && interval.from < interval.until && interval.until <= end) {
            problems.append("\(label): interval \(text(interval)) outside the window or empty")
        }
        if index > 0, intervals[index - 1].until >= interval.from {
            problems.append("\(label): intervals \(text(intervals[index - 1])) and \(text(interval)) overlap, touch or are out of order")
        }
    }
    // Boundaries of up to 40 intervals (the first and last 20): active inside, inactive just outside.
    let sample = intervals.count <= 40 ? intervals : Array(intervals.prefix(20) + intervals.suffix(20))
    for interval in sample {
        let last = interval.until.addingTimeInterval(-1)
        if !e.isActive(at: interval.from, in: zone) || !e.isActive(at: last, in: zone) {
            problems.append("\(label): \(text(interval)) has an inactive boundary")
        }
        if interval.from > start, e.isActive(at: interval.from.addingTimeInterval(-1), in: zone) {
            problems.append("\(label): active just before \(text(interval)) (not maximal)")
        }
        if interval.until < end, e.isActive(at: interval.until, in: zone) {
            problems.append("\(label): active just after \(text(interval)) (not maximal)")
        }
    }
    // Random instants: `isActive` agrees with membership in the intervals.
    for _ in 0..<8 {
        let t = start.addingTimeInterval(Double(Int.random(in: 0..<(days * 86_400), using: &rng)))
        let inside = intervals.contains { $0.contains(t) }
        if e.isActive(at: t, in: zone) != inside {
            problems.append("\(label): isActive(\(t.timeIntervalSince1970)) = \(!inside) but the intervals say \(inside)")
        }
    }
    return problems
}

// MARK: - Tests

@Suite("Fuzzing") struct FuzzTests {
    /// (a) Every corpus file: a plan, or a `PlanValidationError` whose every diagnostic is located and
    /// worded; `# valid` / `# expect:` files must do what they say.
    @Test func corpusPlanFiles() async throws {
        let files = try Corpus.planFiles()
        #expect(files.count >= 200)
        let inputs = files.map { (name: $0.name, text: String(decoding: $0.bytes, as: UTF8.self)) }
        let run = await guarded(inputs, describe: { $0.name }) { input in
            planProblems(input.text, path: "Corpus/plans/\(input.name)", expect: PlanExpect(input.text))
        }
        report(run, "corpus plans", expectedCount: inputs.count)
    }

    /// The corpus directory through `load` (reading files, cross-file checks): rejected as a whole,
    /// with well-formed diagnostics for the files that have problems.
    @Test func corpusDirectoryLoads() throws {
        do {
            _ = try PlanParser.load(paths: [Corpus.plansDirectory.path])
            Issue.record("the corpus has invalid files: loading it must fail")
        } catch {
            #expect(error.diagnostics.count > 100)
            for diagnostic in error.diagnostics {
                #expect(diagnostic.file.hasPrefix(Corpus.plansDirectory.path) && diagnostic.line >= 1 && diagnostic.column >= 1
                    && !diagnostic.message.isEmpty, "\(diagnostic)")
            }
        }
    }

    /// (b) Mutants of every corpus file (byte flips, YAML indicators, truncation, duplicated/swapped lines…).
    @Test func mutatedPlanFiles() async throws {
        let mutantsPerSeed = 150
        let seeds = try Corpus.planFiles().filter { $0.bytes.count <= 4_096 }
        var inputs: [(label: String, text: String)] = []
        for (index, seed) in seeds.enumerated() {
            var rng = SplitMix64(state: 0x5EED_0000 &+ UInt64(index))
            for mutant in 0..<mutantsPerSeed {
                let bytes = YAMLMutator.mutate(seed.bytes, using: &rng)
                inputs.append(("\(seed.name) mutant \(mutant)", String(decoding: bytes, as: UTF8.self)))
            }
        }
        let run = await guarded(inputs, describe: { "\($0.label) \(String($0.text.prefix(300)).debugDescription)" }) { input in
            planProblems(input.text, path: "mutant.yaml", expect: .either)
        }
        report(run, "plan mutants", expectedCount: inputs.count)
        // The mutants must reach the validator, not only the YAML syntax checks.
        #expect(run.kinds["accepted", default: 0] * 100 > inputs.count, "accepted: \(run.kinds["accepted", default: 0])")
        #expect(run.kinds.count > 100, "kinds of outcome: \(run.kinds.count)")
    }

    /// (c) Every cron corpus line, evaluated over DST weeks in several zones and at the range's edges.
    @Test func corpusCronExpressions() async throws {
        let lines = try Corpus.cronLines()
        #expect(lines.count >= 150)
        let run = await guarded(lines, describe: { "cron.txt:\($0.line) \($0.text.debugDescription)" }) { line in
            cronProblems(line.text, expect: line.expect, windows: cronWindows, seed: UInt64(line.line))
        }
        report(run, "corpus cron", expectedCount: lines.count)
    }

    /// (c) Mutants of every cron corpus line; the valid ones evaluated over one DST week each.
    @Test func mutatedCronExpressions() async throws {
        let mutantsPerSeed = 500
        let lines = try Corpus.cronLines()
        var inputs: [(label: String, text: String, window: Int)] = []
        for line in lines {
            var rng = SplitMix64(state: 0xC404 &+ UInt64(line.line))
            for mutant in 0..<mutantsPerSeed {
                let text = CronMutator.mutate(line.text, using: &rng)
                inputs.append(("cron.txt:\(line.line) mutant \(mutant)", text, Int.random(in: 0..<cronWindows.count, using: &rng)))
            }
        }
        let run = await guarded(inputs, describe: { "\($0.label) \($0.text.debugDescription)" }) { input in
            cronProblems(input.text, expect: .either, windows: [cronWindows[input.window]], seed: UInt64(input.window))
        }
        report(run, "cron mutants", expectedCount: inputs.count)
        #expect(run.kinds["accepted", default: 0] * 50 > inputs.count, "accepted: \(run.kinds["accepted", default: 0])")
        #expect(run.kinds.count > 50, "kinds of outcome: \(run.kinds.count)")
    }

    /// (d) Nested aliases ("billion laughs") are rejected before anything expands them, quickly, at the
    /// first anchor. Yams composes an alias as a shared copy, so without the check the payload's JSON
    /// conversion was exponential, and an alias used as a mapping key made `Yams.compose` itself
    /// exponential (it hashes keys).
    @Test func billionLaughsIsRejectedQuickly() async {
        func laughs(_ levels: Int, width: Int) -> String {
            var text = "defs:\n  l0: &a0 [" + Array(repeating: "lol", count: width).joined(separator: ", ") + "]\n"
            for level in 1...levels {
                text += "  l\(level): &a\(level) [" + Array(repeating: "*a\(level - 1)", count: width).joined(separator: ", ") + "]\n"
            }
            return text
        }
        let job = "producers:\n  - name: p\n    every: 1s\n    jobs:\n      - key: k\n        handler: h\n"
        let inputs: [(String, String)] = [
            ("payload", laughs(9, width: 10) + job + "        payload: *a9\n"),
            ("key", laughs(9, width: 10) + "? *a9\n: boom\nproducers: []\n"),
            ("flow key", laughs(9, width: 10) + "[*a9, *a9]: boom\nproducers: []\n"),
            ("merge", laughs(9, width: 10) + job.replacingOccurrences(of: "      - key: k\n", with: "      - <<: {x: *a9}\n        key: k\n")),
            ("wide and deep", laughs(40, width: 40) + job + "        payload: [*a40, *a40]\n"),
        ]
        let run = await guarded(inputs, limit: .milliseconds(500), describe: { $0.0 }) { input in
            do throws(PlanValidationError) {
                _ = try PlanParser.parse(contents: input.1, path: "laughs.yaml")
                return Outcome(problems: ["accepted"], kind: "accepted")
            } catch {
                let first = error.diagnostics.first
                var problems: [String] = []
                if first?.description != "laughs.yaml:2:7: error: anchors and aliases are not supported ('&a0'): write the value out in full" {
                    problems.append("first diagnostic: \(first?.description ?? "none")")
                }
                if !error.diagnostics.allSatisfy({ $0.message.hasPrefix("anchors and aliases are not supported") }) {
                    problems.append("other diagnostics:\n\(error.description.prefix(600))")
                }
                return Outcome(problems: problems, kind: Outcome.kind(of: error.diagnostics.first?.message ?? ""))
            }
        }
        report(run, "billion laughs", expectedCount: inputs.count)
    }

    /// Anchors and aliases are rejected wherever they are, and only real ones: `&` and `*` inside
    /// scalars, quotes, block scalars and comments are text.
    @Test(arguments: [
        ("pool: &p demo\nproducers: []\n", "plan.yaml:1:7: error: anchors and aliases are not supported ('&p'): write the value out in full"),
        ("pool: demo\nproducers: *nothing\n", "plan.yaml:2:12: error: anchors and aliases are not supported ('*nothing'): write the value out in full"),
        ("pool: !!str &p demo\nproducers: []\n", "plan.yaml:1:7: error: anchors and aliases are not supported ('&p'): write the value out in full"),
        ("producers: [{name: p, every: 1s, jobs: [{key: k, handler: h, active: * * * * *}]}]\n",
         "plan.yaml:1:71: error: YAML syntax error: did not find expected alphabetic or numeric character while scanning an alias"
            + " (quote a value that starts with '*' or '&', e.g. active: \"* * * * *\")"),
    ])
    func anchorsAndAliasesAreRejectedClearly(yaml: String, expected: String) {
        #expect(throws: PlanValidationError.self) { try PlanParser.parse(contents: yaml, path: "plan.yaml") }
        do {
            _ = try PlanParser.parse(contents: yaml, path: "plan.yaml")
        } catch {
            #expect(error.diagnostics.first?.description == expected, "\(error)")
        }
    }

    @Test func ampersandsAndStarsInTextAreNotAnchors() throws {
        let plan = try PlanParser.parse(contents: """
            # &comment *comment
            producers:
              - name: p
                every: 1s
                jobs:
                  - key: "*k&"
                    handler: h
                    payload: {a: see *this* & that, b: '*x', c: "&y", d: 5 * 3}  # *z
                    active: "*/5 * * * *"
                  - key: k2
                    handler: h
                    payload: |
                      *not an alias*
                      &not an anchor
            """, path: "plan.yaml")
        let jobs = plan.producers[0].jobs
        #expect(String(decoding: jobs[0].payload, as: UTF8.self) == #"{"a":"see *this* & that","b":"*x","c":"&y","d":"5 * 3"}"#)
        #expect(String(decoding: jobs[1].payload, as: UTF8.self) == #""*not an alias*\n&not an anchor""#)
    }

    /// Regression: Yams computes YAML 1.1 base-60 integers (`1:30` = 90) with trapping arithmetic, so
    /// `payload: 9223372036854775807:0` crashed the process. Those now become doubles.
    @Test func base60PayloadNumbersDoNotTrap() throws {
        func payload(_ value: String) throws -> String {
            let plan = try PlanParser.parse(contents: "producers: [{name: p, every: 1s, jobs: [{key: k, handler: h, payload: \(value)}]}]\n", path: "p.yaml")
            return String(decoding: plan.producers[0].jobs[0].payload, as: UTF8.self)
        }
        #expect(try payload("1:30") == "90")
        #expect(try payload("-1:30") == "-90")
        #expect(try payload("1_0:00") == "600")
        #expect(try payload("9223372036854775807:0") == "5.5340232221128655e+20")
        #expect(try payload("1:0:0:0:0:0:0:0:0:0:0:0") == "3.62797056e+19")
        #expect(try payload("'9223372036854775807:0'") == #""9223372036854775807:0""#)
    }

    /// A control character is located and named (it used to be reported at 1:1).
    @Test func controlCharactersAreLocated() {
        let problems = planProblems("pool: demo\nproducers: [\u{7}]\n", path: "plan.yaml", expect: .rejected(
            "cannot read YAML: control characters are not allowed (U+0007)"))
        #expect(problems.problems.isEmpty, "\(problems)")
        do {
            _ = try PlanParser.parse(contents: "pool: demo\nproducers: [\u{7}]\n", path: "plan.yaml")
        } catch {
            #expect(error.diagnostics.map(\.description) == ["plan.yaml:2:13: error: cannot read YAML: control characters are not allowed (U+0007)"])
        }
    }

    /// Regression: `isActive` excluded the lower edge of the evaluated range (-1e12 s) that
    /// `activeIntervals` includes; both now use [-1e12, 1e12).
    @Test func rangeEdgesAgree() throws {
        let every = try CronExpression(parsing: "* * * * *")
        let utc = TimeZone(identifier: "UTC")!
        for edge in [-1e12, 1e12] {
            let intervals = every.activeIntervals(from: Date(timeIntervalSince1970: edge - 120), until: Date(timeIntervalSince1970: edge + 120), in: utc)
            for t in [edge - 1, edge, edge + 1] {
                let instant = Date(timeIntervalSince1970: t)
                #expect(every.isActive(at: instant, in: utc) == intervals.contains { $0.contains(instant) }, "\(t)")
            }
        }
    }

    /// Bytes that are not valid UTF-8 text, or that hold control characters: `load` reports the
    /// encoding, `parse` (given a repaired string) a clear YAML error — never a crash.
    @Test func binaryInputs() throws {
        let valid = Array("producers:\n  - name: p\n    every: 1s\n".utf8)
        let cases: [(String, [UInt8])] = [
            ("nul at start", [0] + valid), ("nul inside", Array(valid[..<15]) + [0] + Array(valid[15...])), ("nul at end", valid + [0]),
            ("only nul", [0, 0, 0]), ("0xff", valid + [0xFF]), ("overlong slash", Array("pool: ".utf8) + [0xC0, 0xAF] + [10]),
            ("lone continuation", [0x80] + valid), ("truncated sequence", valid + [0xE2, 0x82]), ("surrogate", Array("pool: ".utf8) + [0xED, 0xA0, 0x80]),
            ("utf-16le bom", [0xFF, 0xFE] + valid.flatMap { [$0, 0] }), ("utf-16be bom", [0xFE, 0xFF] + valid.flatMap { [0, $0] }),
            ("utf-32 bom", [0xFF, 0xFE, 0, 0, 0x70, 0, 0, 0]), ("control bytes", Array("pool: a".utf8) + Array(1...8) + [10]),
            ("del and c1", Array("pool: a".utf8) + [0x7F, 0xC2, 0x80, 0xC2, 0x9F, 10]), ("bell in key", Array("po\u{7}ol: a\n".utf8)),
            ("random", (0..<512).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 7) }),
        ]
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("rota-fuzz-\(ProcessInfo.processInfo.processIdentifier)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        for (index, (name, bytes)) in cases.enumerated() {
            let problems = planProblems(String(decoding: bytes, as: UTF8.self), path: "binary.yaml", expect: .either).problems
            #expect(problems.isEmpty, "\(name): \(problems)")
            let file = directory.appendingPathComponent("\(index).yaml")
            try Data(bytes).write(to: file)
            do {
                _ = try PlanParser.load(paths: [file.path])
                #expect(String(bytes: bytes, encoding: .utf8) != nil, "\(name): accepted")
            } catch {
                #expect(!error.diagnostics.isEmpty && error.diagnostics.allSatisfy { $0.line >= 1 && $0.column >= 1 && !$0.message.isEmpty },
                    "\(name): \(error)")
                if String(bytes: bytes, encoding: .utf8) == nil {
                    #expect(error.diagnostics.map(\.message) == ["the file is not valid UTF-8"], "\(name): \(error)")
                }
            }
        }
    }

    /// Composing, converting and encoding are recursive: at the accepted nesting limit they fit a
    /// 512 KiB stack (macOS' secondary and Swift-concurrency threads); deeper documents are rejected
    /// before anything recurses. (libyaml alone allows 1,000 levels, which overflowed such a stack.)
    @Test func deepNestingFitsA512KiBStack() async {
        let job = "producers:\n  - name: p\n    every: 1s\n    jobs:\n      - key: k\n        handler: h\n        payload: "
        let tooDeep = "nesting deeper than 100 levels of lists and mappings is not supported"
        let inputs: [(String, String, PlanExpect)] = [
            ("flow 95", job + String(repeating: "[", count: 95) + String(repeating: "]", count: 95) + "\n", .valid),
            ("maps 47", job + String(repeating: "{a: [", count: 47) + "x" + String(repeating: "]}", count: 47) + "\n", .valid),
            ("flow 96", job + String(repeating: "[", count: 96) + String(repeating: "]", count: 96) + "\n", .rejected(tooDeep)),
            ("flow 999", job + String(repeating: "[", count: 999) + String(repeating: "]", count: 999) + "\n", .rejected(tooDeep)),
            ("key 999", "? " + String(repeating: "[", count: 999) + String(repeating: "]", count: 999) + "\n: 1\nproducers: []\n", .rejected(tooDeep)),
            ("flow 5000", job + String(repeating: "[", count: 5_000) + "\n", .rejected(tooDeep)),  // libyaml's limit, reworded
            ("dashes 3000", job + "\n          " + String(repeating: "- ", count: 3_000) + "x\n", .rejected(tooDeep)),
            ("indentless 120", (0..<120).map { String(repeating: "  ", count: $0) + "- a\($0):\n" }.joined() + "x\n", .rejected(tooDeep)),
        ]
        final class Box: @unchecked Sendable { var problems: [String] = [] }
        let box = Box()
        let finished = DispatchSemaphore(value: 0)
        let thread = Thread {
            for (name, text, expect) in inputs {
                let problems = planProblems(text, path: "deep.yaml", expect: expect).problems
                box.problems += problems.map { "\(name): \($0)" }
            }
            finished.signal()
        }
        thread.stackSize = 512 << 10
        thread.start()
        while finished.wait(timeout: .now()) == .timedOut { try? await Task.sleep(for: .milliseconds(10)) }
        #expect(box.problems.isEmpty, "\(box.problems)")
    }
}
