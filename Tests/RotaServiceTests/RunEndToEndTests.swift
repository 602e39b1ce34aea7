import Foundation
import RotaStore
import RotaTestSupport
import Testing

// End-to-end tests of `rota run` with real processes: the built `rota` binary (beside the test
// bundle), a private redis-server per test, each node with its own SQLite file and one worker,
// plan files with 1 s intervals. Every wait polls with a deadline; every process started is
// SIGKILLed at the end, even on failure (RunSupport.swift). At most three `rota run` at once.

/// The planning interval of every producer in these tests.
private let interval: TimeInterval = 1

/// A plan with one exact-mode producer per name, each with one always-desired `log` job `NAME/one`.
private func beatPlan(_ producers: [String]) -> String {
    var text = "pool: e2e\nproducers:\n"
    for name in producers {
        text += """
              - name: \(name)
                every: 1s
                mode: exact
                jobs:
                  - key: \(name)/one
                    handler: log
                    payload: {producer: \(name)}

            """
    }
    return text
}

/// RFC 3339 without fractional seconds, as plan files write bounds.
private func planTime(_ date: Date) -> String {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime]
    return formatter.string(from: date)
}

/// Groups that hold more than one element, described: duplicates are what must not exist.
private func duplicates<Key: Hashable>(_ rounds: [RoundRecord], by key: (RoundRecord) -> Key) -> [String] {
    Dictionary(grouping: rounds, by: key).values.filter { $0.count > 1 }.map { group in
        group.map { "\($0.roundID) by \($0.node) at \(rfc3339($0.tick))" }.joined(separator: " & ")
    }
}

/// Checks one node's history of one producer: one round per tick (no duplicate tick or fencing
/// token), tokens matching ticks, ticks on the producer's phase (multiples of the interval apart).
/// Returns the number of ticks skipped between consecutive rounds.
@discardableResult
private func checkOneRoundPerTick(_ rounds: [RoundRecord], node: String, producer: String) -> Int {
    #expect(duplicates(rounds, by: { $0.tick }).isEmpty, "\(node)/\(producer): two rounds for one tick: \(duplicates(rounds, by: { $0.tick }))")
    #expect(duplicates(rounds, by: { $0.token ?? -1 }).isEmpty, "\(node)/\(producer): a fencing token used twice")
    var skipped = 0
    for round in rounds {
        guard let token = round.token else {
            Issue.record("\(node): round ID \(round.roundID) does not end with a fencing token")
            continue
        }
        #expect(abs(Double(token) / 1e6 - round.tick.timeIntervalSince1970) < 0.001, "\(node): \(round.roundID) token and tick disagree")
    }
    let tokens = onPhase(rounds, node: node).compactMap(\.token)
    let step = Int64(interval * 1_000_000)
    for (previous, next) in zip(tokens, tokens.dropFirst()) {
        let gap = next - previous
        #expect(gap % step == 0 && gap > 0,
            "\(node)/\(producer): ticks \(previous) and \(next) are \(gap) µs apart, not a multiple of the \(step) µs interval (off the ticker's phase)")
        if gap > step { skipped += Int(gap / step) - 1 }
    }
    return skipped
}

/// The rounds on the ticker's phase (that of the earliest round), by tick. The others must be
/// triggered ones: a plan change plans its new revision at once, off the phase, in the first round
/// of that revision.
private func onPhase(_ rounds: [RoundRecord], node: String) -> [RoundRecord] {
    let sorted = rounds.filter { $0.token != nil }.sorted { ($0.token ?? 0) < ($1.token ?? 0) }
    guard let base = sorted.first?.token else { return [] }
    let step = Int64(interval * 1_000_000)
    var kept: [RoundRecord] = []
    for (index, round) in sorted.enumerated() {
        guard let token = round.token, (token - base) % step != 0 else {
            kept.append(round)
            continue
        }
        #expect(index > 0 && sorted[index - 1].revision != round.revision,
            "\(node): round \(round.roundID) is off the ticker's phase but not the first round of a new revision")
    }
    return kept
}

@Suite(.serialized, .timeLimit(.minutes(4)))
struct RunEndToEndTests {
    // MARK: 1. Three nodes converge

    @Test("three nodes, one Redis: every node's history holds the same rounds, one per producer and tick")
    func threeNodesConverge() async throws {
        let producers = ["alpha", "beta"]
        try await withRunCluster(plans: beatPlan(producers)) { cluster in
            let nodes = try await cluster.launch(["n1", "n2", "n3"])
            let ids = Set(nodes.map(\.plannerName))
            try #require(ids.count == 3, "three distinct node names: \(ids)")

            // About six rounds of each producer, as the first node sees them.
            let cutoff: [String: Date] = try await poll("six finished rounds of each producer on n1", timeout: .seconds(60),
                diagnostics: cluster.diagnostics) {
                var cutoff: [String: Date] = [:]
                for producer in producers {
                    let finished = try nodes[0].rounds(producer: producer).filter { $0.finishedAt != nil }
                    guard finished.count >= 6, let last = finished.last else { return nil }
                    cutoff[producer] = last.tick
                }
                return cutoff
            }

            // Converged: up to the cutoff every node holds the same rounds — same IDs, planners,
            // ticks, revisions, outcomes — and the same actions.
            struct Snapshot: Equatable {
                var rounds: [RoundRecord]
                var actions: [String: [ActionRecord]]
            }
            func snapshot(_ node: RunNode) throws -> Snapshot {
                let rounds = try node.rounds().filter { round in cutoff[round.producer].map { round.tick <= $0 } ?? false }
                var actions: [String: [ActionRecord]] = [:]
                for round in rounds { actions[round.roundID] = try node.actions(of: round.roundID) }
                return Snapshot(rounds: rounds, actions: actions)
            }
            func divergence() -> String {
                let snapshots = nodes.map { (label: $0.label, ids: Set(((try? snapshot($0))?.rounds ?? []).map(\.roundID))) }
                let union = snapshots.reduce(into: Set<String>()) { $0.formUnion($1.ids) }
                return snapshots.map { "\($0.label) lacks \(union.subtracting($0.ids).sorted())" }.joined(separator: "; ")
                    + "\n" + cluster.diagnostics
            }
            let converged = try await poll("every node to hold the same finished rounds up to the cutoff", timeout: .seconds(20),
                diagnostics: divergence()) { () -> Snapshot? in
                let snapshots = try nodes.map(snapshot)
                guard snapshots.allSatisfy({ $0 == snapshots[0] }), snapshots[0].rounds.allSatisfy({ $0.finishedAt != nil }) else { return nil }
                return snapshots[0]
            }

            for producer in producers {
                let rounds = converged.rounds.filter { $0.producer == producer }
                #expect(rounds.count >= 6, "\(producer): \(rounds.count) rounds up to the cutoff")
                #expect(rounds.allSatisfy { $0.revision == 1 && $0.pool == "e2e" && $0.error == nil && $0.failed == 0 })
                // The first round started the job; later ones found it running (the history records
                // no action for a job left alone, or an already-running one).
                // The intent, recorded before the round was applied, says the same.
                #expect(rounds[0].planned.map { "\($0.job) \($0.action.rawValue)" } == ["\(producer)/one start"],
                    "\(producer): the first round's intent: \(rounds[0].planned)")
                #expect(rounds.dropFirst().allSatisfy { $0.planned.isEmpty }, "\(producer): later rounds intend nothing")
                let firstActions = converged.actions[rounds[0].roundID] ?? []
                #expect(firstActions.map { "\($0.job) \($0.action.rawValue) \($0.outcome.rawValue)" } == ["\(producer)/one start started"],
                    "\(producer): the first round starts the job: \(firstActions)")
                let later = rounds.dropFirst().flatMap { converged.actions[$0.roundID] ?? [] }
                #expect(later.allSatisfy { $0.action == .start && $0.outcome == .alreadyRunning },
                    "\(producer): later rounds must leave the job alone: \(later.map { "\($0.job) \($0.action.rawValue) \($0.outcome.rawValue)" })")
            }
            #expect(Set(converged.rounds.map(\.node)).isSubset(of: ids), "planners: \(Set(converged.rounds.map(\.node))) vs nodes \(ids)")

            // Every node's whole history (past the cutoff too): one round per producer per tick.
            var skipped = 0
            for node in nodes {
                let rounds = try node.rounds()
                for producer in producers {
                    skipped += checkOneRoundPerTick(rounds.filter { $0.producer == producer }, node: node.label, producer: producer)
                }
            }
            #expect(skipped == 0, "ticks with no round in some history: \(skipped)")

            // Each job runs on exactly one worker of the pool: `job started` minus `job stopped`
            // lines over all nodes is one. (A worker joining after the first round may take a job
            // over: the pool stops it on the old worker, then starts it on the new one.)
            for producer in producers {
                let key = "\(producer)/one"
                let lines = nodes.flatMap { node in
                    node.entries.filter { $0["job"] == key && ($0["message"] == "job started" || $0["message"] == "job stopped") }
                        .map { "\(node.label): \($0["message"] ?? "") requeued=\($0["requeued"] ?? "-")" }
                }
                let running = nodes.filter { node in
                    node.logs("job started").filter { $0["job"] == key }.count > node.logs("job stopped").filter { $0["job"] == key }.count
                }
                let balance = lines.filter { $0.contains("started") }.count - lines.filter { $0.contains("stopped") }.count
                #expect(balance == 1 && running.count == 1, "\(key) must run on one worker: \(lines)")
                print("threeNodesConverge: \(key): \(lines.joined(separator: ", "))")
            }

            // The read side: `rota history --format json` of every node shows those rounds.
            let expected = converged.rounds.map { [$0.roundID, $0.node, rfc3339($0.tick)] }.sorted { $0[0] < $1[0] }
            for node in nodes {
                let listed = try await historyJSON(db: node.database).compactMap { object -> [String]? in
                    guard let id = object["round"] as? String, let producer = object["producer"] as? String,
                        let tick = object["tick"] as? String, let planner = object["node"] as? String,
                        let limit = cutoff[producer], let date = ISO8601DateFormatter.fractional.date(from: tick), date <= limit
                    else { return nil }
                    return [id, planner, tick]
                }.sorted { $0[0] < $1[0] }
                #expect(listed == expected, "\(node.label): rota history differs from the converged rounds")
                let running = try await jobsAt(db: node.database, Date())
                #expect(running == producers.map { "\($0)/one" }, "\(node.label): rota jobs --at now: \(running)")
            }

            let planners = Dictionary(grouping: converged.rounds, by: \.node).map { id, rounds in
                "\(cluster.node(id: id)?.label ?? id): \(rounds.count)"
            }.sorted()
            print("threeNodesConverge: \(converged.rounds.count) rounds up to the cutoff on every node; planned by \(planners.joined(separator: ", "))")
        }
    }

    // MARK: 2. Failover

    @Test("SIGKILL the node that planned the latest round: another node plans the next one within an interval + 1 s")
    func plannerFailover() async throws {
        try await withRunCluster(plans: beatPlan(["alpha"])) { cluster in
            let nodes = try await cluster.launch(["n1", "n2", "n3"])
            try await poll("three rounds in every node's history", timeout: .seconds(60), diagnostics: cluster.diagnostics) {
                try nodes.allSatisfy { try $0.rounds().filter { $0.finishedAt != nil }.count >= 3 } ? () : nil
            }

            // Catch a round as soon as its planner records it, so the kill lands early in the
            // interval, long before the next tick is due.
            func latest() -> RoundRecord? {
                nodes.filter { !$0.hasExited }.compactMap { try? $0.rounds().last }.max { $0.tick < $1.tick }
            }
            let before = try #require(latest())
            let newest = try await poll("a new round", timeout: .seconds(10), every: .milliseconds(20), diagnostics: cluster.diagnostics) {
                latest().flatMap { $0.tick > before.tick ? $0 : nil }
            }
            let victim = try #require(cluster.node(id: newest.node), "the planner \(newest.node) is one of the test's nodes")
            let killedAt = Date()
            try await victim.kill()
            let survivors = nodes.filter { $0 !== victim }
            let survivorIDs = Set(survivors.map(\.plannerName))

            // The victim's last round, by its own history (it records the intent before applying).
            let victimLast = try #require(try victim.rounds().filter { $0.node == newest.node }.last)
            let next = try await poll("a round after the victim's last, planned by a survivor", timeout: .seconds(15),
                every: .milliseconds(20), diagnostics: cluster.diagnostics) {
                survivors.compactMap { try? $0.rounds().first { $0.tick > victimLast.tick } }.min { $0.tick < $1.tick }
            }
            let tickGap = next.tick.timeIntervalSince(victimLast.tick)
            let sinceKill = next.startedAt.timeIntervalSince(killedAt)
            print("plannerFailover: killed \(victim.label) (\(newest.node)) \(String(format: "%.3f", killedAt.timeIntervalSince(newest.tick))) s after its tick; "
                + "next round \(next.roundID) by \(cluster.node(id: next.node)?.label ?? next.node): tick +\(String(format: "%.3f", tickGap)) s after the victim's last, "
                + "started \(String(format: "%.3f", sinceKill)) s after the kill")
            #expect(survivorIDs.contains(next.node), "the next round's planner \(next.node) must be a survivor \(survivorIDs)")
            #expect(tickGap <= interval + 1, "failover took \(tickGap) s of ticks (limit: interval + 1 s)")
            #expect(sinceKill <= interval + 1, "the next round started \(sinceKill) s after the kill (limit: interval + 1 s)")

            // Planning goes on: three more rounds, the same in both survivors, one per tick.
            let horizon = next.tick.addingTimeInterval(3 * interval)
            func divergence() -> String {
                survivors.map { node in "\(node.label): \(((try? node.rounds()) ?? []).suffix(6).map(\.roundID))" }.joined(separator: "\n")
                    + "\n" + cluster.diagnostics
            }
            try await poll("both survivors to hold the same finished rounds up to three ticks after the failover", timeout: .seconds(20),
                diagnostics: divergence()) { () -> Void? in
                let views = try survivors.map { try $0.rounds().filter { $0.tick <= horizon } }
                guard views[0].count > 0, views[0] == views[1], views[0].allSatisfy({ $0.finishedAt != nil }),
                    views[0].contains(where: { $0.tick >= horizon }) else { return nil }
                return ()
            }
            for node in survivors {
                let rounds = try node.rounds()
                checkOneRoundPerTick(rounds, node: node.label, producer: "alpha")
                #expect(rounds.filter { $0.tick > victimLast.tick }.allSatisfy { survivorIDs.contains($0.node) },
                    "\(node.label): a round after the kill planned by the dead node")
                // What the victim finished and published before its last round reached the survivors.
                let published = try victim.rounds().filter { $0.node == newest.node && $0.finishedAt != nil && $0.tick < victimLast.tick }
                let known = Set(rounds.map(\.roundID))
                #expect(published.allSatisfy { known.contains($0.roundID) },
                    "\(node.label) lacks rounds of the dead node: \(published.map(\.roundID).filter { !known.contains($0) })")
            }

            // When the victim's worker ran the job, the pool restarts it on a survivor (worker TTL 10 s).
            if victim.logs("job started").contains(where: { $0["job"] == "alpha/one" }) {
                let moved = try await poll("alpha/one to start on a survivor", timeout: .seconds(45), every: .milliseconds(200),
                    diagnostics: cluster.diagnostics) { () -> Date? in
                    survivors.contains { $0.logs("job started").contains { $0["job"] == "alpha/one" } } ? Date() : nil
                }
                print("plannerFailover: the victim ran alpha/one; a survivor started it \(String(format: "%.1f", moved.timeIntervalSince(killedAt))) s after the kill")
            } else {
                print("plannerFailover: alpha/one ran on a survivor; no job move needed")
            }
        }
    }

    // MARK: 2b. Failover with a round that waits on the dead node's worker

    /// The README's promise: "each tick's plan — the first one included — runs on one node". After
    /// a SIGKILL the dead node's worker stays in the routing table for about a worker TTL (10 s), so
    /// a round that dispatches new jobs waits that long for the starts routed to it. Meanwhile the
    /// node applying that round must not swallow ticks: a tick it wins but cannot plan is planned
    /// by no node at all, and nothing in the history says so.
    @Test("a round waiting on a SIGKILLed node's worker does not swallow the ticks its node wins")
    func stuckRoundKeepsEveryTickPlanned() async throws {
        func plan(newJobs: Int) -> String {
            var text = "pool: e2e\nproducers:\n  - name: grow\n    every: 1s\n    mode: exact\n    jobs:\n"
            text += "      - {key: grow/base, handler: log}\n"
            for index in 0..<newJobs { text += "      - {key: grow/\(index), handler: log}\n" }
            return text
        }
        let newJobs = 12  // each routed to the dead worker with probability 1/3: (2/3)^12 < 1% that none is
        try await withRunCluster(plans: plan(newJobs: 0)) { cluster in
            let nodes = try await cluster.launch(["n1", "n2", "n3"])
            try await poll("two rounds in every node's history", timeout: .seconds(60), diagnostics: cluster.diagnostics) {
                try nodes.allSatisfy { try $0.rounds().filter { $0.finishedAt != nil }.count >= 2 } ? () : nil
            }
            let victim = nodes[2]
            try await victim.kill()
            let survivors = Array(nodes.prefix(2))
            _ = try cluster.writePlan(plan(newJobs: newJobs))

            // Every new job starts (the pool cleans the dead worker up within about its TTL).
            let keys = (0..<newJobs).map { "grow/\($0)" }
            func startedKeys(_ node: RunNode) throws -> Set<String> {
                var started: Set<String> = []
                for round in try node.rounds() where round.started > 0 {
                    for action in try node.actions(of: round.roundID) where action.outcome == .started { started.insert(action.job) }
                }
                return started
            }
            try await poll("the \(newJobs) new jobs started", timeout: .seconds(90), every: .milliseconds(250), diagnostics: cluster.diagnostics) {
                try survivors.contains { try startedKeys($0).isSuperset(of: keys) } ? () : nil
            }
            let firstRevised = try #require(try survivors.compactMap { try $0.rounds().first { $0.revision == 2 } }.min { $0.tick < $1.tick })
            let horizon = Date().addingTimeInterval(3 * interval)
            let settled = try await poll("both survivors to hold the same finished rounds up to three ticks from now", timeout: .seconds(30),
                diagnostics: cluster.diagnostics) { () -> [RoundRecord]? in
                let views = try survivors.map { try $0.rounds().filter { $0.tick <= horizon } }
                guard views[0] == views[1], views[0].allSatisfy({ $0.finishedAt != nil }),
                    views[0].contains(where: { $0.tick.addingTimeInterval(interval) > horizon }) else { return nil }
                return views[0]
            }

            // From the first round of the new plan on, every tick has its round.
            let window = onPhase(settled, node: "survivors").filter { $0.tick >= firstRevised.tick }
            let tokens = window.compactMap(\.token)
            let step = Int64(interval * 1_000_000)
            var missing: [String] = []
            for (previous, next) in zip(tokens, tokens.dropFirst()) where next - previous > step {
                for token in stride(from: previous + step, to: next, by: Int(step)) {
                    missing.append(rfc3339(Date(timeIntervalSince1970: Double(token) / 1e6)))
                }
            }
            let longest = window.max { ($0.finishedAt ?? $0.startedAt).timeIntervalSince($0.startedAt) < ($1.finishedAt ?? $1.startedAt).timeIntervalSince($1.startedAt) }
            let longestText = longest.map { round in
                "\(round.roundID) by \(cluster.node(id: round.node)?.label ?? round.node) took "
                    + String(format: "%.1f", (round.finishedAt ?? round.startedAt).timeIntervalSince(round.startedAt)) + " s"
            } ?? "-"
            print("stuckRoundKeepsEveryTickPlanned: \(window.count) rounds over \(tokens.count > 1 ? (tokens.last! - tokens.first!) / step + 1 : Int64(tokens.count)) ticks; "
                + "longest round \(longestText); ticks with no round: \(missing.count)")
            #expect(missing.isEmpty, "ticks planned by no node while \(longestText): \(missing)")
            for node in survivors { checkOneRoundPerTick(try node.rounds(), node: node.label, producer: "grow") }
        }
    }

    // MARK: 3. Windows and payloads

    @Test("from/until bounds start a job and stop it after the bound; a payload edit restarts a job once")
    func windowsAndPayloads() async throws {
        let base = Date(timeIntervalSince1970: (Date().timeIntervalSince1970 + 1).rounded(.up))
        // Bounds a few seconds ahead: the node needs a second or two to start (debug build, 2 cores).
        let switchAt = base.addingTimeInterval(7)  // win/early until, win/late from
        let endAt = base.addingTimeInterval(11)  // win/late until
        func plan(version: Int) -> String {
            """
            pool: e2e
            producers:
              - name: windows
                every: 1s
                mode: exact
                jobs:
                  - key: win/early
                    handler: log
                    payload: {w: early}
                    until: \(planTime(switchAt))
                  - key: win/late
                    handler: log
                    payload: {w: late}
                    from: \(planTime(switchAt))
                    until: \(planTime(endAt))
                  - key: win/payload
                    handler: log
                    payload: {v: \(version)}

            """
        }
        try await withRunCluster(plans: plan(version: 1)) { cluster in
            let node = try await cluster.launch(["n1"])[0]
            typealias Acted = (round: RoundRecord, action: ActionRecord)
            func acted() throws -> [Acted] {
                try node.rounds(producer: "windows").filter { $0.finishedAt != nil }.flatMap { round in
                    try node.actions(of: round.roundID).map { (round: round, action: $0) }
                }
            }
            func on(_ job: String, _ all: [Acted]) -> [Acted] { all.filter { $0.action.job == job } }

            // Past the end of win/late's window.
            try await poll("win/late stopped at its until bound", timeout: .seconds(60), diagnostics: cluster.diagnostics) {
                try on("win/late", acted()).contains { $0.action.action == .stop } ? () : nil
            }
            let rounds = try node.rounds(producer: "windows")
            let all = try acted()
            let early = on("win/early", all), late = on("win/late", all)

            let earlyStart = try #require(early.first { $0.action.outcome == .started }, "win/early started: \(early.map(\.action))")
            #expect(earlyStart.round.tick < switchAt && earlyStart.action.action == .start)
            let earlyStop = try #require(early.first { $0.action.action == .stop }, "win/early stopped")
            #expect(earlyStop.action.outcome == .stopped)
            #expect(earlyStop.round.roundID == rounds.first { $0.tick >= switchAt }?.roundID,
                "win/early is stopped by the first round at or after its until bound (\(rfc3339(switchAt))), not at \(rfc3339(earlyStop.round.tick))")
            #expect(early.filter { $0.action.outcome == .started }.count == 1, "win/early started once: \(early.map(\.action))")
            #expect(early.filter { $0.round.tick >= switchAt }.map(\.action.action) == [.stop], "win/early after its window: \(early.map(\.action))")

            #expect(late.allSatisfy { $0.round.tick >= switchAt }, "win/late acted on before its from bound: \(late.map(\.round.roundID))")
            let lateStart = try #require(late.first { $0.action.outcome == .started }, "win/late started: \(late.map(\.action))")
            #expect(lateStart.round.roundID == earlyStop.round.roundID, "win/late starts in the round that stops win/early")
            let lateStop = try #require(late.first { $0.action.action == .stop })
            #expect(lateStop.action.outcome == .stopped)
            #expect(lateStop.round.roundID == rounds.first { $0.tick >= endAt }?.roundID,
                "win/late is stopped by the first round at or after \(rfc3339(endAt)), not at \(rfc3339(lateStop.round.tick))")
            #expect(late.filter { $0.action.outcome == .started }.count == 1)

            // The log handler's lines on the node: started, then stopped, each once per job.
            for job in ["win/early", "win/late"] {
                let lines = node.entries.filter { $0["job"] == job && ($0["message"] == "job started" || $0["message"] == "job stopped") }
                #expect(lines.map { $0["message"] ?? "" } == ["job started", "job stopped"], "\(job): \(lines)")
                #expect(lines.first?["payload"]?.contains(job == "win/early" ? "early" : "late") == true)
            }

            // `rota jobs --at` agrees with the windows.
            func middle(_ a: Date, _ b: Date) -> Date { a.addingTimeInterval(b.timeIntervalSince(a) / 2) }
            #expect(try await jobsAt(db: node.database, middle(earlyStart.action.at, earlyStop.action.at)) == ["win/early", "win/payload"])
            #expect(try await jobsAt(db: node.database, middle(lateStart.action.at, lateStop.action.at)) == ["win/late", "win/payload"])
            #expect(try await jobsAt(db: node.database, lateStop.action.at.addingTimeInterval(0.001)) == ["win/payload"])

            // A payload edit (same file size: only the modification time tells the reload loop).
            let editedAt = Date()
            _ = try cluster.writePlan(plan(version: 2))
            let restart = try await poll("a round restarting win/payload with the new payload", timeout: .seconds(20),
                diagnostics: cluster.diagnostics) {
                try on("win/payload", acted()).first { $0.action.action == .restart }
            }
            print("windowsAndPayloads: payload edit → restart in round \(restart.round.roundID) "
                + "\(String(format: "%.2f", restart.round.startedAt.timeIntervalSince(editedAt))) s after the edit")
            #expect(restart.action.outcome == .started)
            #expect(restart.round.revision == 2)
            let horizon = restart.round.tick.addingTimeInterval(2 * interval)
            try await poll("two more rounds after the restart", timeout: .seconds(15), diagnostics: cluster.diagnostics) {
                try node.rounds(producer: "windows").contains { $0.tick >= horizon && $0.finishedAt != nil } ? () : nil
            }
            let after = try acted()
            let payloadActions = on("win/payload", after)
            #expect(payloadActions.filter { $0.action.action == .restart }.count == 1, "one restart: \(payloadActions.map(\.action))")
            #expect(payloadActions.filter { $0.round.tick > restart.round.tick }.allSatisfy { $0.action.outcome == .alreadyRunning },
                "after the restart the new payload runs: \(payloadActions.map(\.action.outcome.rawValue))")
            let stray = after.filter { $0.round.tick > lateStop.round.tick && $0.action.job != "win/payload" }
            let strayText = stray.map { "\($0.round.roundID) rev \($0.round.revision) \($0.action.job) \($0.action.action.rawValue) \($0.action.outcome.rawValue)" }
            #expect(stray.isEmpty, "nothing else acted on after the windows closed: \(strayText)")
            let revisions = try node.rounds(producer: "windows").map { ($0.startedAt < editedAt, $0.revision) }
            #expect(revisions.allSatisfy { $0.0 ? $0.1 == 1 : true }, "rounds before the edit ran revision 1")
            #expect(try node.rounds(producer: "windows").filter { $0.tick >= restart.round.tick }.allSatisfy { $0.revision == 2 })
            let payloadLines = node.entries.filter { $0["job"] == "win/payload" && ($0["message"] == "job started" || $0["message"] == "job stopped") }
            #expect(payloadLines.map { $0["message"] ?? "" } == ["job started", "job stopped", "job started"], "\(payloadLines)")
            #expect(payloadLines.first?["payload"]?.contains(#""v":1"#) == true && payloadLines.last?["payload"]?.contains(#""v":2"#) == true,
                "payloads: \(payloadLines.map { $0["payload"] ?? "" })")
            #expect(node.logs("plan updated").contains { $0["producer"] == "windows" && $0["revision"] == "2" })
        }
    }

    // MARK: 4. Bad plan edits

    @Test("a bad plan edit keeps the old plan running and logs FILE:LINE:COLUMN")
    func badEditKeepsOldPlan() async throws {
        func lines(payload: String, extra: String? = nil) -> [String] {
            var lines = ["pool: e2e", "producers:", "  - name: steady", "    every: 1s", "    mode: exact", "    jobs:",
                         "      - key: steady/one", "        handler: log", "        payload: \(payload)"]
            if let extra { lines.append(extra) }
            return lines
        }
        try await withRunCluster(plans: lines(payload: "{v: 1}").joined(separator: "\n") + "\n") { cluster in
            let node = try await cluster.launch(["n1"])[0]
            let path = cluster.plans.appendingPathComponent("plan.yaml").path
            try await poll("two finished rounds", timeout: .seconds(60), diagnostics: cluster.diagnostics) {
                try node.rounds().filter { $0.finishedAt != nil }.count >= 2 ? () : nil
            }

            /// Waits for the next reload failure and returns its error text.
            func nextReloadFailure(after count: Int) async throws -> String {
                try await poll("a 'plan reload failed' log line", timeout: .seconds(15), diagnostics: cluster.diagnostics) {
                    let failures = node.logs("plan reload failed")
                    return failures.count > count ? failures[count]["error"] ?? "" : nil
                }
            }
            /// Waits for three rounds that started after `mark` and checks they ran the old plan.
            func threeRoundsOfRevisionOne(after mark: Date, _ what: String) async throws {
                let later = try await poll("three rounds after \(what)", timeout: .seconds(15), diagnostics: cluster.diagnostics) {
                    let later = try node.rounds().filter { $0.startedAt > mark && $0.finishedAt != nil }
                    return later.count >= 3 ? later : nil
                }
                #expect(later.allSatisfy { $0.revision == 1 }, "after \(what): revisions \(later.map(\.revision))")
                for round in later {
                    let actions = try node.actions(of: round.roundID)
                    // The job is left alone: no action, or an already-running one.
                    #expect(actions.allSatisfy { $0.job == "steady/one" && $0.action == .start && $0.outcome == .alreadyRunning },
                        "after \(what): \(round.roundID) \(actions)")
                }
            }

            // An unknown field (and a payload change that must not be applied).
            let unknown = lines(payload: "{v: 2}", extra: "        colour: red")
            _ = try cluster.writePlan(unknown.joined(separator: "\n") + "\n")
            let first = try await nextReloadFailure(after: 0)
            let column = try #require(unknown.last?.firstIndex(of: "c")).utf16Offset(in: unknown.last!) + 1
            let located = "\(path):\(unknown.count):\(column): error: unknown field 'colour'"
            #expect(first.contains(located), "the reload error names \(located): \(first)")
            try await threeRoundsOfRevisionOne(after: Date(), "an unknown field")

            // Invalid YAML.
            let broken = lines(payload: "{v: 2")
            _ = try cluster.writePlan(broken.joined(separator: "\n") + "\n")
            let second = try await nextReloadFailure(after: 1)
            let pattern = try Regex("\(NSRegularExpression.escapedPattern(for: path)):[0-9]+:[0-9]+: error: ")
            #expect(second.contains(pattern), "the YAML error is located FILE:LINE:COLUMN: \(second)")
            try await threeRoundsOfRevisionOne(after: Date(), "invalid YAML")
            #expect(node.logs("plan updated").isEmpty, "no plan was updated by the bad edits")
            #expect(!node.hasExited)

            // A good edit is picked up: revision 2 (the bad ones were never stored), job restarted.
            _ = try cluster.writePlan(lines(payload: "{v: 3}").joined(separator: "\n") + "\n")
            let restarted = try await poll("a round of revision 2 restarting the job", timeout: .seconds(15), diagnostics: cluster.diagnostics) {
                try node.rounds().first { round in
                    try round.revision == 2 && node.actions(of: round.roundID).contains { $0.action == .restart && $0.outcome == .started }
                }
            }
            #expect(try node.rounds().filter { $0.tick > restarted.tick }.allSatisfy { $0.revision == 2 })
            print("badEditKeepsOldPlan: errors logged:\n  \(first.replacingOccurrences(of: "\n", with: "\n  "))\n  \(second.replacingOccurrences(of: "\n", with: "\n  "))")
        }
    }

    @Test("a round left unfinished by a node that died mid-round is closed as interrupted when the node starts again, and reaches the other nodes")
    func interruptedRoundIsClosedAndPublished() async throws {
        try await withRunCluster(plans: beatPlan(["alpha"])) { cluster in
            // What a planner SIGKILLed between recording a round's intent and its outcome leaves in
            // its database: an unfinished round, never published on the history stream.
            let database = cluster.directory.appendingPathComponent("n1.sqlite").path
            let tick = Date(timeIntervalSince1970: (Date().timeIntervalSince1970 - 3600).rounded())  // whole ms, as stored
            do {
                let store = try PlanStore.open(path: database)
                try store.recordIntent(RoundRecord(roundID: "died-mid-round", pool: cluster.pool, producer: "alpha", revision: 1,
                    node: "n1-before-the-crash", tick: tick, startedAt: tick, planned: [PlannedAction(job: "alpha/one", action: .start)]))
                try #require(try store.unpublishedRounds(pool: cluster.pool).map(\.0.roundID) == ["died-mid-round"])
            }
            // n2 plans first; n1 comes back afterwards with the interrupted round, which therefore
            // reaches the history stream after newer rounds.
            let n2 = try await cluster.launch(["n2"])[0]
            let before = try await poll("a finished round of alpha on n2", timeout: .seconds(30), diagnostics: cluster.diagnostics) {
                try n2.rounds(producer: "alpha").last { $0.finishedAt != nil }
            }
            let n1 = try await cluster.launch(["n1"])[0]
            let nodes = [n1, n2]

            for node in nodes {
                let closed = try await poll("\(node.label) holds the interrupted round, closed", timeout: .seconds(30),
                    diagnostics: cluster.diagnostics) { () -> RoundRecord? in
                    guard let round = try node.store().round(id: "died-mid-round")?.0, round.finishedAt != nil else { return nil }
                    return round
                }
                #expect(closed.error?.hasPrefix("interrupted:") == true, "\(node.label): \(closed.error ?? "no error")")
                #expect(closed.tick == tick && closed.planned == [PlannedAction(job: "alpha/one", action: .start)])
                #expect(try node.actions(of: "died-mid-round").isEmpty, "what the dead planner applied is not known")
            }
            #expect(n1.logs("closed a round left unfinished by an earlier run").count == 1)

            // `rota status`, right away: alpha's last round is its latest tick, not the newest
            // stream entry (the interrupted round, an hour older).
            let result = try await rotaCommand(["status", "--redis", cluster.redisURL, "--pool", cluster.pool, "--format", "json"])
            #expect(result.status == 0, "\(result.err)")
            let object = try JSONSerialization.jsonObject(with: Data(result.out.utf8)) as? [String: Any]
            let alpha = try #require((object?["producers"] as? [[String: Any]])?.first { $0["name"] as? String == "alpha" }, "\(result.out)")
            #expect(alpha["last_round"] as? String != "died-mid-round", "\(alpha)")
            let lastTick = (alpha["last_tick"] as? String).flatMap { ISO8601DateFormatter.fractional.date(from: $0) }
            #expect(lastTick.map { $0 >= before.tick } == true, "last_tick \(alpha["last_tick"] ?? "-") vs \(before.tick)")
            #expect(Set(nodes.map(\.plannerName)).contains(alpha["planner"] as? String ?? "?"), "planner: \(alpha)")

            // Its echo from the history stream marks it published on n1: it is not published again.
            try await poll("n1 has nothing left to publish", timeout: .seconds(15), diagnostics: cluster.diagnostics) {
                try n1.store().unpublishedRounds(pool: cluster.pool).isEmpty ? () : nil
            }
            // The hash chains of both histories still verify with the closed round in them.
            for node in nodes {
                let verify = try await rotaCommand(["history", "verify", "--db", node.database])
                #expect(verify.status == 0, "rota history verify --db \(node.label): \(verify.out) \(verify.err)")
            }
        }
    }
}

extension ISO8601DateFormatter {
    /// RFC 3339 with fractional seconds (what `rota history --format json` prints).
    static var fractional: ISO8601DateFormatter {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter
    }
}
