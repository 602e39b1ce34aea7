import ArgumentParser
import Foundation
import Rota
import RotaRedis

/// `rota-chaos`: faults against a real pool of `rota run` and `rota worker` processes on this
/// machine, each followed by an independent check of what runs, what Redis records and what every
/// planner's history holds. One JSON line per scenario; exit status 1 if any scenario failed.
struct Chaos: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rota-chaos",
        abstract: "Chaos suite: SIGKILL/SIGSTOP nodes, restart Redis, kill connections, flood the pool; check nothing is lost or run twice.",
        discussion: """
            Each scenario starts a fresh pool (1 redis-server with AOF, 3 `rota run`, 3 `rota worker`, \
            a plan of 500 always-desired jobs at 1 s), waits until every job runs once, injects its \
            fault, then waits for the pool to settle. Pass: 0 lost, 0 running twice, 0 overlap after \
            settling (rolling-restart: none during the fault either), 0 duplicate or missing history \
            rounds, settled within worker TTL + ack grace + one interval; with \
            --require-history-agreement, no disagreement between the history and the workers' logs. \
            Logs of failed scenarios are kept (their directory is printed).
            """
    )

    enum ProfileName: String, ExpressibleByArgument, CaseIterable { case short, long }

    @Option(help: "short (CI, under 10 minutes) or long.")
    var profile: ProfileName = .short

    @Option(name: .customLong("scenario"), help: "Run only these scenarios (repeatable): \(Scenario.allCases.map(\.rawValue).joined(separator: ", ")).")
    var scenarios: [String] = []

    @Option(help: "Seed of the random choices (victims, gaps); printed in every line.")
    var seed: UInt64?

    @Option(help: "Path of rota (default: next to this executable).")
    var rota: String?

    @Option(help: "Keep every scenario's logs and databases under this directory.")
    var keep: String?

    @Flag(help: "Fail a scenario whose history disagrees with the workers' logs (history_disagreement_s > 0); always reported.")
    var requireHistoryAgreement = false

    @Flag(help: .hidden)
    var selfTest = false

    func validate() throws {
        for name in scenarios where Scenario(rawValue: name) == nil {
            throw ValidationError("unknown scenario '\(name)'; known: \(Scenario.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    func execute() async throws {
        // The checker checks its own arithmetic first (hand-made cases; microseconds).
        let broken = Steps.selfTest()
        for failure in broken { FileHandle.standardError.write(Data("rota-chaos: self-test: \(failure)\n".utf8)) }
        if !broken.isEmpty { throw ExitCode(1) }
        if selfTest {
            print("rota-chaos: self-test passed")
            return
        }
        let executable = URL(fileURLWithPath: rota
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("rota").path)
        guard FileManager.default.isExecutableFile(atPath: executable.path) else {
            throw ValidationError("rota not found at \(executable.path): build it first (swift build --product rota)")
        }
        let chosen = scenarios.isEmpty ? Scenario.allCases : scenarios.compactMap(Scenario.init(rawValue:))
        let settings = profile == .short ? Profile.short : Profile.long
        let seed = self.seed ?? UInt64(Date().timeIntervalSince1970 * 1000)
        var random = SplitMix64(seed: seed)
        let base = keep.map { URL(fileURLWithPath: $0) }
            ?? FileManager.default.temporaryDirectory.appendingPathComponent("rota-chaos-\(UUID().uuidString)")
        var failed: [String] = []
        for scenario in chosen {
            let directory = base.appendingPathComponent(scenario.rawValue)
            let line = await run(scenario, profile: settings, directory: directory, executable: executable, random: &random)
            var fields = line.fields
            fields.insert(("profile", profile.rawValue), at: 1)
            fields.append(("seed", seed))
            // Written straight away (print buffers when stdout is a file or a pipe, as in CI).
            FileHandle.standardOutput.write(Data((jsonLine(fields) + "\n").utf8))
            if !line.pass {
                failed.append(scenario.rawValue)
                FileHandle.standardError.write(Data("rota-chaos: \(scenario.rawValue) failed; logs and databases kept in \(directory.path)\n".utf8))
            } else if keep == nil {
                try? FileManager.default.removeItem(at: directory)
            }
        }
        if keep == nil && failed.isEmpty { try? FileManager.default.removeItem(at: base) }
        if !failed.isEmpty { throw ExitCode(1) }
    }

    struct Line: Sendable {
        var pass: Bool
        var fields: [(String, any Sendable)]
    }

    /// One scenario on a fresh pool; never throws: a harness failure is a failed line that says why.
    private func run(_ scenario: Scenario, profile: Profile, directory: URL, executable: URL, random: inout SplitMix64) async -> Line {
        let budget = settleBudget()
        let cluster = ChaosCluster(directory: directory, executable: executable)
        let began = Date()
        var fields: [(String, any Sendable)] = [("scenario", scenario.rawValue)]
        do {
            try await cluster.start()
            let result = try await RedisClient.withClient(cluster.redisConfiguration) { client in
                try await measure(scenario, profile: profile, cluster: cluster, client: client, budget: budget, random: &random)
            }
            await cluster.stop()
            fields += result.fields
            fields.append(("duration_s", rounded(Date().timeIntervalSince(began))))
            return Line(pass: result.pass, fields: fields)
        } catch {
            await cluster.stop()
            fields += [("pass", false), ("error", "\(error)"), ("duration_s", rounded(Date().timeIntervalSince(began)))]
            return Line(pass: false, fields: fields)
        }
    }

    private func measure(
        _ scenario: Scenario, profile: Profile, cluster: ChaosCluster, client: RedisClient, budget: Double, random: inout SplitMix64
    ) async throws -> Line {
        var checker = Checker(cluster: cluster, client: client, desired: ChaosCluster.plannedJobs)
        let initial = await checker.waitSettled(from: Date(), hold: 2, limit: 120)
        guard initial.settledAt != nil else {
            throw ChaosFailure(.setup, "the pool did not converge before the fault: \(initial.lastDivergence.joined(separator: "; "))")
        }
        let faultStart = Date()
        let injected = try await scenario.inject(profile: profile, cluster: cluster, checker: &checker, random: &random)
        let faultEnd = Date()
        // Twice the budget: a pool that settles late is reported with its time, not cut off.
        let settling = await checker.waitSettled(from: faultEnd, hold: profile.hold, limit: 2 * budget)
        let view = checker.logView()
        let lost = checker.desired.filter { view.copies[$0] == nil }
        let twice = view.copies.filter { $0.value > 1 }
        let settledFrom = settling.settledAt ?? settling.end.addingTimeInterval(-profile.hold)
        let overlap = checker.overlapSeconds(from: settledFrom, until: settling.end)
        let (faultOverlap, worstFaultOverlap) = checker.overlap(from: faultStart, until: settledFrom)
        let history = await checker.history(horizon: Date().addingTimeInterval(-3), wait: 20)
        // From the initial convergence to the end of settling, with a planning interval of
        // tolerance either side of every change in the logs.
        let agreementFrom = initial.settledAt ?? faultStart
        let agreement = checker.historyAgreement(from: agreementFrom, until: settling.end, tolerance: Double(ChaosCluster.intervalSeconds))
        let disagreement = agreement.worst.map { rounded(Double($0.total) / 1000) } ?? -1
        let settle = settling.settledAt.map { $0.timeIntervalSince(faultEnd) }
        var failures: [String] = []
        // Still working, not just still holding its jobs: planning goes on, and a new job can be
        // started and stopped.
        let roundsAfter = history.roundsTicked(after: faultEnd.addingTimeInterval(2))
        if roundsAfter == 0 { failures.append("no round planned after the fault") }
        let probe: Double
        do {
            probe = try await checker.probe(key: "probe/\(scenario.rawValue)", timeout: budget)
        } catch {
            probe = -1
            failures.append("probe: \(error)")
        }
        if !lost.isEmpty { failures.append("lost \(lost.count): \(lost.sorted().prefix(5))") }
        if !twice.isEmpty { failures.append("running twice \(twice.count): \(twice.keys.sorted().prefix(5))") }
        if !view.misplaced.isEmpty { failures.append("running on workers without their handler: \(view.misplaced.prefix(5))") }
        if overlap > 0 { failures.append("overlap after settling \(rounded(overlap)) s") }
        if scenario.forbidsFaultOverlap && faultOverlap > 0 { failures.append("overlap during the fault \(rounded(faultOverlap)) s") }
        failures += injected.failures
        if requireHistoryAgreement && disagreement != 0 {
            failures.append(agreement.worst == nil ? "no history readable" : "history disagrees with the logs for \(disagreement) s")
        }
        if history.duplicateRounds > 0 || history.missingRounds > 0 { failures += history.examples }
        if let settle, settle > budget { failures.append("settled in \(rounded(settle)) s (budget \(budget) s)") }
        let crashed = cluster.all.filter(\.crashed)
        if !crashed.isEmpty { failures.append("crashed: \(crashed.map { "\($0.slot)#\($0.incarnation)" }.joined(separator: ","))") }
        if settle == nil { failures.append("never settled: \(settling.lastDivergence.joined(separator: "; "))") }
        var fields: [(String, any Sendable)] = [
            ("pass", failures.isEmpty),
            ("lost", lost.count), ("running_twice", twice.count), ("misplaced", view.misplaced.count), ("overlap_s", rounded(overlap)),
            ("duplicate_rounds", history.duplicateRounds), ("missing_history_rounds", history.missingRounds),
            ("settle_s", settle.map(rounded) ?? -1), ("settle_budget_s", budget),
            ("desired", checker.desired.count), ("running", view.copies.count), ("faults", injected.faults),
            ("fault_overlap_s", rounded(faultOverlap)), ("rounds", history.rounds), ("unfinished_rounds", history.unfinishedRounds),
            ("skipped_ticks", history.skippedTicks), ("rounds_after_fault", roundsAfter), ("probe_s", rounded(probe)),
            ("crashes", crashed.count), ("history_disagreement_s", disagreement),
        ]
        if let worst = agreement.worst {
            fields += [
                ("history_disagreement_worst", worst.worst.map { "\($0.job) \(rounded(Double($0.ms) / 1000)) s" }.joined(separator: "; ")),
                ("history_disagreement_db", worst.slot),
                ("history_disagreement_per_db", agreement.databases.map { "\($0.slot):\(rounded(Double($0.total) / 1000))" }.joined(separator: ",")),
            ]
        }
        fields.append(("history_window_ms", "\(unixMilliseconds(agreementFrom))-\(unixMilliseconds(settling.end))"))
        if !agreement.unreadable.isEmpty { fields.append(("history_unreadable", agreement.unreadable.joined(separator: "; "))) }
        fields += injected.details
        if !worstFaultOverlap.isEmpty { fields.append(("fault_overlap_worst", worstFaultOverlap.joined(separator: "; "))) }
        if !failures.isEmpty { fields.append(("failures", failures.joined(separator: " | "))) }
        return Line(pass: failures.isEmpty, fields: fields)
    }
}

private func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

/// How long the pool may take to settle after a fault: worker TTL + ack grace + one interval.
func settleBudget() -> Double {
    let defaults = Node.Options()
    return seconds(defaults.workerTTL) + seconds(defaults.ackGracePeriod) + Double(ChaosCluster.intervalSeconds)
}

private func rounded(_ value: Double) -> Double { (value * 1000).rounded() / 1000 }

/// One JSON object with its keys in the given order (the scenario first, for people reading CI logs).
func jsonLine(_ fields: [(String, any Sendable)]) -> String {
    let parts = fields.map { key, value -> String in
        let encoded: String
        switch value {
        case let value as Bool: encoded = value ? "true" : "false"
        case let value as Int: encoded = "\(value)"
        case let value as UInt64: encoded = "\(value)"
        case let value as Double: encoded = value.isFinite ? "\(value)" : "null"
        default:
            let data = (try? JSONSerialization.data(withJSONObject: ["\(value)"], options: [.withoutEscapingSlashes])) ?? Data("[\"\"]".utf8)
            encoded = String(decoding: data.dropFirst().dropLast(), as: UTF8.self)
        }
        return "\"\(key)\":\(encoded)"
    }
    return "{" + parts.joined(separator: ",") + "}"
}

// A hand-written entry point (as in `rota`): ArgumentParser's async entry resolves to the
// synchronous `run()` from a main.swift.
do {
    let command = try Chaos.parseAsRoot()
    if let chaos = command as? Chaos {
        try await chaos.execute()
    } else {
        var other = command
        try other.run()
    }
} catch {
    Chaos.exit(withError: error)
}
