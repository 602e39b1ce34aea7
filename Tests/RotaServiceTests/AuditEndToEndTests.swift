import Foundation
import RotaRedis
import RotaService
import RotaStore
import RotaTestSupport
import Testing

// End-to-end tests of the audit history (B2) with real `rota run` processes: every action has its
// reason and actor, exact-mode intents list their stops, manual CLI actions reach every node's
// history, `job_runs` says where each job ran and why it stopped, and a node that missed trimmed
// stream entries records the gap, which `rota history sync` fills.

/// `rota ARGS --redis … --pool …`, which must exit with `status`.
private func rotaPool(_ cluster: RunCluster, _ arguments: [String], status: Int32 = 0) async throws -> CommandOutput {
    let result = try await rotaCommand(arguments + ["--redis", cluster.redisURL, "--pool", cluster.pool], timeout: .seconds(60))
    guard result.status == status else {
        throw TestFailure("rota \(arguments.joined(separator: " ")) exited \(result.status), not \(status)\nout: \(result.out)\nerr: \(result.err)")
    }
    return result
}

/// RFC 3339 without fractional seconds, as plan files write bounds.
private func planTime(_ date: Date) -> String {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime]
    return formatter.string(from: date)
}

private func auditPlan(until: Date, version: Int, withTemp: Bool) -> String {
    var text = """
        pool: e2e
        producers:
          - name: exact
            every: 1s
            mode: exact
            jobs:
              - key: exact/always
                handler: log
                payload: {version: \(version)}
              - key: exact/bounded
                handler: log
                payload: {version: 1}
                until: \(planTime(until))

        """
    if withTemp {
        text += """
                  - key: exact/temp
                    handler: log
                    payload: {version: 1}

            """
    }
    text += """
          - name: additive
            every: 1s
            mode: additive
            jobs:
              - key: add/one
                handler: log
                payload: {version: 1}
            stop: [add/old]

        """
    return text
}

extension RunNode {
    /// Every action of this node's history on `job`, oldest first, with its round.
    func actions(onJob job: String) throws -> [(round: RoundRecord, action: ActionRecord)] {
        var filter = HistoryFilter()
        filter.job = job
        filter.limit = 100_000
        return try store().rounds(matching: filter).flatMap { round in
            (try store().round(id: round.roundID)?.1 ?? []).filter { $0.job == job }.map { (round, $0) }
        }.sorted { $0.action.at < $1.action.at }
    }
}

@Suite(.serialized, .timeLimit(.minutes(5))) struct AuditEndToEndTests {
    @Test("every action carries its reason and its actor; exact-mode intents list their stops; job_runs says where it ran and why it stopped")
    func reasonsActorsAndRuns() async throws {
        let until = Date().addingTimeInterval(6)
        try await withRunCluster(plans: auditPlan(until: until, version: 1, withTemp: true)) { cluster in
            let node = try cluster.start("n1")
            try await node.waitUntilReady()
            let first = try await poll("exact/always, exact/bounded and exact/temp started", timeout: .seconds(20), diagnostics: cluster.diagnostics) {
                let starts = try ["exact/always", "exact/bounded", "exact/temp", "add/one"].map { try node.actions(onJob: $0).first }
                return starts.allSatisfy { $0?.action.outcome == .started } ? starts.compactMap { $0 } : nil
            }
            for (round, action) in first {
                #expect(action.actor == "n1", "\(action)")
                #expect(round.node == "n1", "a round names its planner by the node's name: \(round.node)")
            }
            #expect(first[0].action.reason == Reason.addedToPlan, "\(first[0].action)")
            #expect(first[1].action.reason == Reason.windowOpened, "\(first[1].action)")
            #expect(first[3].action.reason == Reason.addedToPlan, "\(first[3].action)")

            // The bound passes: the exact producer stops it because its window closed.
            let closed = try await poll("exact/bounded stopped after its bound", timeout: .seconds(20), diagnostics: cluster.diagnostics) {
                try node.actions(onJob: "exact/bounded").first { $0.action.action == .stop }
            }
            #expect(closed.action.outcome == .stopped && closed.action.reason == Reason.windowClosed, "\(closed.action)")
            #expect(closed.round.planned.contains { $0.job == "exact/bounded" && $0.action == .stop },
                "the exact round's intent lists its stop: \(closed.round.planned)")

            // A manual dispatch of a key the additive producer lists under stop:
            let dispatched = try await rotaPool(cluster, ["dispatch", "add/old", "--handler", "log", "--payload", "{}"])
            #expect(dispatched.out.contains("started add/old"))
            let manual = try await poll("the manual dispatch is in the history", timeout: .seconds(10)) {
                try node.actions(onJob: "add/old").first { $0.round.producer == ManualActionLog.producer }
            }
            #expect(manual.action.reason == Reason.manual && manual.action.outcome == .started, "\(manual.action)")
            #expect(manual.action.actor?.contains("@") == true, "a CLI actor is user@host: \(manual.action.actor ?? "nil")")
            let listed = try await poll("the additive producer stops add/old (stop list)", timeout: .seconds(10), diagnostics: cluster.diagnostics) {
                try node.actions(onJob: "add/old").first { $0.round.producer == "additive" && $0.action.outcome == .stopped }
            }
            #expect(listed.action.reason == Reason.stopList, "\(listed.action)")

            // Edit: new payload for exact/always, exact/temp dropped from the plan.
            _ = try cluster.writePlan(auditPlan(until: until, version: 2, withTemp: false))
            let restarted = try await poll("exact/always restarted with its new payload", timeout: .seconds(20), diagnostics: cluster.diagnostics) {
                try node.actions(onJob: "exact/always").first { $0.action.action == .restart }
            }
            #expect(restarted.action.outcome == .started && restarted.action.reason == Reason.payloadChanged, "\(restarted.action)")
            let removed = try await poll("exact/temp stopped", timeout: .seconds(20), diagnostics: cluster.diagnostics) {
                try node.actions(onJob: "exact/temp").first { $0.action.action == .stop }
            }
            #expect(removed.action.outcome == .stopped && removed.action.reason == Reason.removedFromPlan, "\(removed.action)")
            #expect(removed.round.planned.contains { $0.job == "exact/temp" && $0.action == .stop }, "\(removed.round.planned)")

            // Facts: where each job ran and why it stopped, from the pool's job log.
            let runs = try await poll("job_runs has the bounded job's run, closed", timeout: .seconds(10)) {
                let runs = try node.store().jobRuns(job: "exact/bounded")
                return runs.first?.stoppedAt != nil ? runs : nil
            }
            #expect(runs.count == 1, "\(runs)")
            #expect(runs.first?.node == "n1" && runs.first?.worker.isEmpty == false, "\(runs)")
            #expect(runs.first?.stopReason == Reason.windowClosed, "\(runs)")
            let always = try node.store().jobRuns(job: "exact/always")
            #expect(always.count == 2 && always.first?.stopReason == Reason.payloadChanged && always.last?.stoppedAt == nil, "\(always)")
            let history = try await rotaCommand(["history", "verify", "--db", node.database])
            #expect(history.status == 0, "\(history.out)\(history.err)")
        }
    }

    @Test("rota dispatch, notify and stop are recorded by every node with their actor and confirmed outcome; stop of a missing job is recorded too")
    func manualActionsReachEveryNode() async throws {
        try await withRunCluster(plans: "pool: e2e\nproducers: []\n") { cluster in
            let nodes = try await cluster.launch(["n1", "n2"])
            _ = try await rotaPool(cluster, ["dispatch", "hand/one", "--handler", "log", "--payload", "{}"])
            _ = try await rotaPool(cluster, ["notify", "hand/one", "hello"])
            let stopped = try await rotaPool(cluster, ["stop", "hand/one"])
            #expect(stopped.out.contains("stopped hand/one"), "\(stopped.out)")
            let missing = try await rotaPool(cluster, ["stop", "hand/none"], status: 4)
            #expect(missing.err.contains("not found"), "\(missing.err)")
            for node in nodes {
                let outcomes = try await poll("\(node.label) recorded the manual actions", timeout: .seconds(10)) {
                    let actions = try node.actions(onJob: "hand/one")
                    return actions.count == 3 ? actions : nil
                }
                #expect(outcomes.map(\.action.outcome) == [.started, .notified, .stopped], "\(outcomes.map(\.action))")
                #expect(outcomes.allSatisfy { $0.round.producer == ManualActionLog.producer && $0.action.reason == Reason.manual })
                let none = try node.actions(onJob: "hand/none")
                #expect(none.map(\.action.outcome) == [.notFound], "\(none.map(\.action))")
            }
            // The pool's facts: one run on one of the nodes, ended by the manual stop.
            let runs = try await poll("job_runs closed the manual job's run", timeout: .seconds(10)) {
                let runs = try nodes[0].store().jobRuns(job: "hand/one")
                return runs.first?.stoppedAt != nil ? runs : nil
            }
            #expect(runs.count == 1 && runs.first?.stopReason == Reason.manual, "\(runs)")
        }
    }

    @Test("a node that missed trimmed stream entries records a gap (verify exits 3); history sync from another node fills it and verify passes")
    func gapsAreDetectedAndFilled() async throws {
        let plan = """
            pool: e2e
            producers:
              - name: beat
                every: 1s
                mode: exact
                jobs:
                  - key: beat/one
                    handler: log
                    payload: {}

            """
        try await withRunCluster(plans: plan) { cluster in
            let nodes = try await cluster.launch(["n1", "n2"])
            try await poll("n2 recorded rounds", timeout: .seconds(20)) { try nodes[1].rounds().count >= 2 ? true : nil }
            try await nodes[1].kill()
            let missedFrom = Date()
            try await poll("n1 planned rounds while n2 was down", timeout: .seconds(20)) {
                try nodes[0].rounds().filter { $0.startedAt > missedFrom.addingTimeInterval(1) }.count >= 3 ? true : nil
            }
            // Redis trims what n2 never read (as the streams' caps would over a long absence).
            try await RedisClient.withClient(try RedisConfiguration(url: cluster.redisURL)) { client in
                for stream in ["history", "job-log"] {
                    _ = try await client.send("XTRIM", "rota:{e2e}:stream:\(stream)", "MAXLEN", "0")
                }
            }
            let restarted = try cluster.start("n2")
            try await restarted.waitUntilReady()
            let gaps = try await poll("n2 recorded the gap", timeout: .seconds(10)) {
                let gaps = try restarted.store().gaps(pool: "e2e")
                return gaps.contains { $0.stream == "history" } ? gaps : nil
            }
            #expect(gaps.allSatisfy { $0.filledAt == nil }, "\(gaps)")
            let verify = try await rotaCommand(["history", "verify", "--db", restarted.database])
            #expect(verify.status == 3, "verify reports the gap with its own exit code: \(verify.status)\n\(verify.out)\(verify.err)")
            let n1Database = nodes[0].database
            let sync = try await rotaCommand(["history", "sync", "--db", restarted.database, "--from", n1Database])
            #expect(sync.status == 0, "\(sync.out)\(sync.err)")
            let after = try await rotaCommand(["history", "verify", "--db", restarted.database])
            #expect(after.status == 0, "\(after.out)\(after.err)")
            let missed = try nodes[0].rounds().filter { $0.startedAt > missedFrom.addingTimeInterval(1) && $0.startedAt < missedFrom.addingTimeInterval(3) }
            let synced = Set(try restarted.rounds().map(\.roundID))
            #expect(!missed.isEmpty && missed.allSatisfy { synced.contains($0.roundID) }, "rounds planned while n2 was down are in its history now")
        }
    }
}
