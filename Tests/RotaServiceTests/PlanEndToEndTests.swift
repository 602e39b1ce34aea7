import Foundation
import RotaRedis
import RotaService
import RotaStore
import RotaTestSupport
import Testing

// End-to-end tests of the pool-wide plan (B1) with three real `rota run` processes: identical
// files cause no churn, an edit on one node reaches every node's planning, stale files report
// drift instead of reverting, a SIGKILLed applier leaves the old or the new plan, retire / pause /
// resume / trigger are seen by every node, and `rota status` reads last rounds per producer.

/// Producers `name` at `every` (exact mode) with one always-desired `log` job `NAME/one` whose
/// payload carries `version`.
private func plan(_ producers: [(name: String, every: String)], version: Int = 1) -> String {
    var text = "pool: e2e\nproducers:\n"
    for producer in producers {
        text += """
              - name: \(producer.name)
                every: \(producer.every)
                mode: exact
                jobs:
                  - key: \(producer.name)/one
                    handler: log
                    payload: {producer: \(producer.name), version: \(version)}

            """
    }
    return text
}

/// `rota ARGS --redis … --pool …`, which must exit with `status`.
private func rotaPool(_ cluster: RunCluster, _ arguments: [String], status: Int32 = 0) async throws -> CommandOutput {
    let result = try await rotaCommand(arguments + ["--redis", cluster.redisURL, "--pool", cluster.pool])
    guard result.status == status else {
        throw TestFailure("rota \(arguments.joined(separator: " ")) exited \(result.status), not \(status)\nout: \(result.out)\nerr: \(result.err)")
    }
    return result
}

private func jsonObject(_ text: String) throws -> [String: Any] {
    guard let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
        throw TestFailure("not a JSON object: \(text.prefix(500))")
    }
    return object
}

/// The pool's plan revision and its producers (`rota producer list --format json`).
private func producerList(_ cluster: RunCluster) async throws -> (revision: Int, producers: [String: [String: Any]]) {
    let object = try jsonObject(try await rotaPool(cluster, ["producer", "list", "--format", "json"]).out)
    let producers = (object["producers"] as? [[String: Any]] ?? []).reduce(into: [String: [String: Any]]()) {
        $0[$1["name"] as? String ?? ""] = $1
    }
    return (object["revision"] as? Int ?? -1, producers)
}

/// `rota status --format json`.
private func status(_ cluster: RunCluster) async throws -> [String: Any] {
    try jsonObject(try await rotaPool(cluster, ["status", "--format", "json"]).out)
}

/// The pool's plan read straight from Redis (every entry verified).
private func snapshot(_ cluster: RunCluster) async throws -> PlanSnapshot {
    try await RedisClient.withClient(try RedisConfiguration(url: cluster.redisURL)) { client in
        try await PoolPlan(pool: cluster.pool, client: client).read()
    }
}

extension RunNode {
    /// This node's record of the pool's plan changes, as "producer:kind:revision".
    func planEvents() throws -> [String] {
        try store().planEvents(pool: "e2e").map { "\($0.producer):\($0.kind.rawValue):\($0.revision)" }
    }
}

@Suite(.serialized, .timeLimit(.minutes(5))) struct PlanEndToEndTests {
    @Test("identical files cause no churn; an edit on one node reaches every node's planning within 2 s; stale nodes report drift, not a revert")
    func editPropagatesAndStaleFilesDrift() async throws {
        let producers = [(name: "alpha", every: "1s"), (name: "beta", every: "1s")]
        try await withRunCluster(plans: plan(producers)) { cluster in
            for label in ["n1", "n2", "n3"] { _ = try cluster.writePlan(plan(producers), in: try cluster.plans(of: label)) }
            let nodes = try await cluster.launch(["n1", "n2", "n3"]) { try? cluster.plans(of: $0) }
            try await poll("three rounds of alpha", timeout: .seconds(30), diagnostics: cluster.diagnostics) {
                try nodes[0].rounds(producer: "alpha").filter { $0.finishedAt != nil }.count >= 3 ? true : nil
            }
            // No churn: one revision, created once, and every node recorded exactly that.
            #expect(try await producerList(cluster).revision == 1)
            for node in nodes {
                #expect(try node.planEvents() == ["alpha:created:1", "beta:created:1"], "\(node.label)")
            }

            // Edit n1's files: the pool's plan moves to revision 2 and every node plans with it.
            let edited = Date()
            _ = try cluster.writePlan(plan(producers, version: 2), in: try cluster.plans(of: "n1"))
            var seen: [String: TimeInterval] = [:]
            try await poll("every node records revision 2", timeout: .seconds(10), every: .milliseconds(20), diagnostics: cluster.diagnostics) {
                for node in nodes where seen[node.label] == nil {
                    if try node.planEvents().contains("alpha:updated:2") { seen[node.label] = Date().timeIntervalSince(edited) }
                }
                return seen.count == 3 ? true : nil
            }
            #expect(seen.values.allSatisfy { $0 <= 2 }, "seconds from the edit until each node had revision 2: \(seen)")
            let firstNew = try await poll("a round of alpha planned with revision 2", timeout: .seconds(5), every: .milliseconds(20),
                diagnostics: cluster.diagnostics) {
                try nodes.flatMap { try $0.rounds(producer: "alpha") }.filter { $0.revision == 2 }.map(\.startedAt).min()
            }
            #expect(firstNew.timeIntervalSince(edited) <= 2, "the first round with revision 2 started \(firstNew.timeIntervalSince(edited)) s after the edit")
            print("editPropagatesAndStaleFilesDrift: seconds from the edit until each node recorded revision 2: "
                + seen.sorted { $0.key < $1.key }.map { "\($0.key) \(String(format: "%.2f", $0.value))" }.joined(separator: ", ")
                + "; first round with it after \(String(format: "%.2f", firstNew.timeIntervalSince(edited))) s")
            // No round started after that used the old definition, whichever node planned it.
            try await poll("three more rounds of alpha", timeout: .seconds(20), diagnostics: cluster.diagnostics) {
                try nodes[0].rounds(producer: "alpha").filter { $0.startedAt > firstNew }.count >= 3 ? true : nil
            }
            let stale = try nodes.flatMap { try $0.rounds(producer: "alpha") }.filter { $0.startedAt > firstNew && $0.revision != 2 }
            #expect(stale.isEmpty, "rounds with the old revision after the new one: \(stale.map(\.roundID))")

            // n2 and n3 still have the old files: drift, reported and not applied.
            var drifting: Set<String> = []
            try await pollAsync("n2 and n3 report drift", timeout: .seconds(10), diagnostics: cluster.diagnostics) {
                let drift = (try await status(cluster)["plan_drift"] as? [[String: Any]]) ?? []
                drifting = Set(drift.compactMap { $0["name"] as? String })
                return drifting == ["n2", "n3"]
            }
            #expect(drifting == ["n2", "n3"])
            for node in nodes[1...] {
                #expect(!node.logs("plan drift: this node's plan files differ from the pool's plan and were not applied").isEmpty, "\(node.label)")
            }
            #expect(try await producerList(cluster).revision == 2)
            #expect(try await snapshot(cluster).producers["alpha"]?.definition.contains("\"version\":2") == true)

            // Their files catch up: the drift ends, with no new revision.
            for label in ["n2", "n3"] { _ = try cluster.writePlan(plan(producers, version: 2), in: try cluster.plans(of: label)) }
            try await pollAsync("the drift reports are gone", timeout: .seconds(10), diagnostics: cluster.diagnostics) {
                ((try await status(cluster)["plan_drift"] as? [[String: Any]]) ?? []).isEmpty
            }
            #expect(try await producerList(cluster).revision == 2)
            for node in nodes {
                let events = try node.planEvents()
                #expect(events == ["alpha:created:1", "beta:created:1", "alpha:updated:2", "beta:updated:2"], "\(node.label)")
            }
        }
    }

    @Test("a node restarting with stale files does not revert the pool's plan; a SIGKILLed applier leaves the old or the new revision; concurrent applies: one wins")
    func staleRestartKillMidApplyAndConflicts() async throws {
        let producers = [(name: "alpha", every: "1s")]
        try await withRunCluster(plans: plan(producers)) { cluster in
            for label in ["n1", "n2", "n3"] { _ = try cluster.writePlan(plan(producers), in: try cluster.plans(of: label)) }
            var nodes = try await cluster.launch(["n1", "n2", "n3"]) { try? cluster.plans(of: $0) }
            #expect(try await producerList(cluster).revision == 1)

            // n3 goes down; n1's edit moves the plan on; n3 comes back with its old files.
            try await nodes[2].kill()
            _ = try cluster.writePlan(plan(producers, version: 2), in: try cluster.plans(of: "n1"))
            try await pollAsync("revision 2", timeout: .seconds(10), diagnostics: cluster.diagnostics) {
                try await producerList(cluster).revision == 2
            }
            nodes[2] = try cluster.start("n3", plans: try cluster.plans(of: "n3"))
            try await nodes[2].waitUntilReady()
            try await poll("n3 reports drift", timeout: .seconds(10), diagnostics: cluster.diagnostics) {
                nodes[2].logs("plan drift: this node's plan files differ from the pool's plan and were not applied").first
            }
            #expect(try await producerList(cluster).revision == 2)
            #expect(try await snapshot(cluster).producers["alpha"]?.definition.contains("\"version\":2") == true)
            // n3 recorded the revision it missed while down.
            try await poll("n3 recorded revision 2", timeout: .seconds(10)) { try nodes[2].planEvents().contains("alpha:updated:2") ? true : nil }

            // SIGKILL n1 at once or moments after an edit of its files: the plan is at the old
            // revision or the new one, whole, and never half-written.
            var random = SplitMix64(state: 7)
            for version in 3...5 {
                let before = try await snapshot(cluster)
                _ = try cluster.writePlan(plan(producers + [(name: "extra\(version)", every: "1s")], version: version),
                    in: try cluster.plans(of: "n1"))
                try await Task.sleep(for: .milliseconds(Int(random.next() % 700)))
                try await nodes[0].kill()
                let after = try await snapshot(cluster)
                #expect(after.skipped.isEmpty)
                if after.revision == before.revision {
                    #expect(after.producers.keys.sorted() == before.producers.keys.sorted())
                } else {
                    #expect(after.revision == before.revision + 1)
                    #expect(after.producers.keys.sorted() == ["alpha", "extra\(version)"])
                    #expect(after.producers.values.allSatisfy { $0.definition.contains("\"version\":\(version)") })
                }
                // Back up, n1 applies its files if the kill came first (they changed since it last applied).
                nodes[0] = try cluster.start("n1", plans: try cluster.plans(of: "n1"))
                try await nodes[0].waitUntilReady()
                try await pollAsync("revision with version \(version)", timeout: .seconds(10), diagnostics: cluster.diagnostics) {
                    try await snapshot(cluster).producers["extra\(version)"] != nil
                }
            }

            // Two applies against the same revision: exactly one writes, the other is told why.
            let revision = try await producerList(cluster).revision
            let a = try cluster.plans(of: "apply-a"), b = try cluster.plans(of: "apply-b")
            _ = try cluster.writePlan(plan(producers, version: 10), in: a)
            _ = try cluster.writePlan(plan(producers, version: 11), in: b)
            async let first = rotaCommand(["plan", "apply", a.path, "--expect-revision", String(revision), "--redis", cluster.redisURL, "--pool", cluster.pool])
            async let second = rotaCommand(["plan", "apply", b.path, "--expect-revision", String(revision), "--redis", cluster.redisURL, "--pool", cluster.pool])
            let results = try await [first, second]
            #expect(results.map(\.status).sorted() == [0, 5], "\(results.map { "\($0.status): \($0.err)" })")
            let loser = try #require(results.first { $0.status == 5 })
            #expect(loser.err.contains("at revision \(revision + 1), not --expect-revision \(revision)"), "\(loser.err)")
            #expect(try await producerList(cluster).revision == revision + 1)
        }
    }

    @Test("retire, pause --stop-jobs, resume and trigger: seen by every node, recorded with reasons and actors")
    func retirePauseResumeTrigger() async throws {
        let producers = [(name: "alpha", every: "1s"), (name: "beta", every: "1s"), (name: "hourly", every: "1h")]
        try await withRunCluster(plans: plan(producers)) { cluster in
            let nodes = try await cluster.launch(["n1", "n2", "n3"])
            func running() async throws -> Set<String> {
                Set(((try await status(cluster)["jobs"] as? [[String: Any]]) ?? []).compactMap { $0["key"] as? String })
            }
            func everyNode(_ what: String, _ condition: @escaping (RunNode) throws -> Bool) async throws {
                try await poll(what, timeout: .seconds(15), diagnostics: cluster.diagnostics) {
                    try nodes.allSatisfy(condition) ? true : nil
                }
            }
            try await pollAsync("all three jobs run", timeout: .seconds(30), diagnostics: cluster.diagnostics) {
                try await running() == ["alpha/one", "beta/one", "hourly/one"]
            }

            // Trigger: one more round of the hourly producer, on one node, in every node's history.
            try await everyNode("the hourly producer's first round everywhere") { try $0.rounds(producer: "hourly").count == 1 }
            let triggered = try await rotaPool(cluster, ["producer", "trigger", "hourly"])
            #expect(triggered.out.contains("triggered hourly"))
            try await everyNode("the triggered round everywhere") { try $0.rounds(producer: "hourly").count == 2 }
            try await everyNode("the trigger recorded everywhere") { try $0.planEvents().contains("hourly:triggered:1") }

            // Pause with --stop-jobs: beta's job stops in a round recorded with the reason, then
            // beta plans nothing while alpha goes on.
            let paused = try await rotaPool(cluster, ["producer", "pause", "beta", "--reason", "incident 42", "--stop-jobs"])
            #expect(paused.out.contains("paused beta"))
            try await pollAsync("beta's job stopped", timeout: .seconds(10), diagnostics: cluster.diagnostics) {
                try await running() == ["alpha/one", "hourly/one"]
            }
            func stops(_ node: RunNode, producer: String, reason: String) throws -> [ActionRecord] {
                try node.rounds(producer: producer).flatMap { try node.actions(of: $0.roundID) }
                    .filter { $0.action == .stop && $0.outcome == .stopped && $0.reason == reason }
            }
            try await everyNode("the paused stop in every history") { try stops($0, producer: "beta", reason: "paused").map(\.job) == ["beta/one"] }
            let pauseEvent = try #require(try nodes[2].store().planEvents(pool: "e2e", producer: "beta").first { $0.kind == .paused })
            #expect(pauseEvent.reason == "incident 42" && pauseEvent.stopJobs == true && pauseEvent.actor.contains("@"))
            let betaRounds = try nodes[0].rounds(producer: "beta").count
            let alphaRounds = try nodes[0].rounds(producer: "alpha").count
            try await poll("three more rounds of alpha", timeout: .seconds(15), diagnostics: cluster.diagnostics) {
                try nodes[0].rounds(producer: "alpha").count >= alphaRounds + 3 ? true : nil
            }
            #expect(try nodes[0].rounds(producer: "beta").count == betaRounds, "a paused producer planned rounds")
            let list = try await producerList(cluster)
            let betaPause = try #require(list.producers["beta"]?["paused"] as? [String: Any])
            #expect(betaPause["reason"] as? String == "incident 42")

            // A pause with --until ends by itself: the first planner past it resumes the producer
            // (recorded with that actor) and plans again.
            let hourlyRounds = try nodes[0].rounds(producer: "hourly").count
            _ = try await rotaPool(cluster, ["producer", "pause", "hourly", "--reason", "short", "--until", "2s"])
            #expect(try await rotaPool(cluster, ["producer", "trigger", "hourly"], status: 8).err.contains("is paused"))
            try await pollAsync("a trigger accepted once the pause's until passed", timeout: .seconds(15), every: .milliseconds(250),
                diagnostics: cluster.diagnostics) {
                try await rotaCommand(["producer", "trigger", "hourly", "--redis", cluster.redisURL, "--pool", cluster.pool]).status == 0
            }
            try await everyNode("a round of hourly after its pause ended") { try $0.rounds(producer: "hourly").count == hourlyRounds + 1 }
            try await everyNode("the planner ended the pause") { node in
                let events = try node.store().planEvents(pool: "e2e", producer: "hourly")
                return events.contains { $0.kind == .resumed && $0.actor.hasPrefix("rota (pause until") }
            }
            #expect(try await producerList(cluster).producers["hourly"]?["paused"] is NSNull)

            // Resume: beta plans (and starts its job) again.
            _ = try await rotaPool(cluster, ["producer", "resume", "beta", "--reason", "fixed"])
            try await pollAsync("beta's job runs again", timeout: .seconds(10), diagnostics: cluster.diagnostics) {
                try await running() == ["alpha/one", "beta/one", "hourly/one"]
            }
            try await everyNode("the resume recorded everywhere") { try $0.planEvents().contains("beta:resumed:1") }

            // Retire alpha with an apply that lacks it: its job is stopped in a round with the
            // reason retired, its ticker is gone, status no longer lists it.
            let without = try cluster.plans(of: "without-alpha")
            _ = try cluster.writePlan(plan(Array(producers.dropFirst())), in: without)
            let applied = try jsonObject(try await rotaPool(cluster, ["plan", "apply", without.path, "--prune", "--format", "json"]).out)
            let changes = (applied["changes"] as? [[String: Any]] ?? []).map { "\($0["producer"] ?? ""):\($0["outcome"] ?? "")" }
            #expect(changes.sorted() == ["alpha:retired", "beta:unchanged", "hourly:unchanged"], "\(applied)")
            try await pollAsync("alpha's job stopped", timeout: .seconds(10), diagnostics: cluster.diagnostics) {
                try await running() == ["beta/one", "hourly/one"]
            }
            try await everyNode("the retiring stop in every history") { try stops($0, producer: "alpha", reason: "retired").map(\.job) == ["alpha/one"] }
            try await everyNode("the retirement recorded everywhere") { try $0.planEvents().contains("alpha:retired:2") }
            let report = try await status(cluster)
            let listed = ((report["producers"] as? [[String: Any]]) ?? []).compactMap { $0["name"] as? String }
            #expect(listed.sorted() == ["beta", "hourly"])
            let tickers = try await RedisClient.withClient(try RedisConfiguration(url: cluster.redisURL)) { client in
                try await client.send("HKEYS", "rota:{e2e}:map:tickers").array?.compactMap(\.string) ?? []
            }
            #expect(!tickers.contains("schedule-alpha"), "\(tickers)")
            // The nodes' files still list alpha, unchanged since they applied them: drift, not a revival.
            try await pollAsync("the nodes report drift", timeout: .seconds(10), diagnostics: cluster.diagnostics) {
                ((try await status(cluster)["plan_drift"] as? [[String: Any]]) ?? []).count == 3
            }
            #expect(try await snapshot(cluster).producers["alpha"] == nil)

            // Bad input: each its own exit code, the plan untouched.
            let revision = try await producerList(cluster).revision
            #expect(try await rotaPool(cluster, ["producer", "pause", "nope", "--reason", "x"], status: 6).err.contains("no producer 'nope'"))
            #expect(try await rotaPool(cluster, ["producer", "pause", "alpha", "--reason", "x"], status: 7).err.contains("retired"))
            #expect(try await rotaPool(cluster, ["producer", "resume", "beta"], status: 8).err.contains("not paused"))
            #expect(try await rotaPool(cluster, ["producer", "pause", "beta", "--reason", "x", "--until", "2020-01-01T00:00:00Z"], status: 64)
                .err.contains("in the past"))
            let broken = try cluster.plans(of: "broken")
            _ = try cluster.writePlan("pool: e2e\nproducers:\n  - name: beta\n    every: sometimes\n", in: broken)
            #expect(try await rotaPool(cluster, ["plan", "apply", broken.path], status: 1).err.contains("plan.yaml:4"))
            #expect(try await producerList(cluster).revision == revision)
        }
    }

    @Test("a node whose Redis lost the plan (emptied, or a new private server) seeds it again from its unchanged files")
    func emptiedRedisIsSeededAgain() async throws {
        try await withRunCluster(plans: plan([(name: "alpha", every: "1s")])) { cluster in
            let first = try await cluster.launch(["n1"])[0]
            #expect(try await producerList(cluster).revision == 1)
            try await first.kill()
            _ = try await RedisClient.withClient(try RedisConfiguration(url: cluster.redisURL)) { client in try await client.send("FLUSHALL") }
            let again = try cluster.start("n1")
            try await again.waitUntilReady()
            #expect(again.logs("rota run ready").first?["producers"] == "alpha")
            #expect(try await producerList(cluster).revision == 1)
            #expect(again.logs("plan drift: this node's plan files differ from the pool's plan and were not applied").isEmpty)
        }
    }

    @Test("rota status shows a slow producer's last round however many rounds other producers published since")
    func statusReadsLastRoundsPerProducer() async throws {
        try await withRunCluster(plans: plan([(name: "slow", every: "1h"), (name: "fast", every: "1s")])) { cluster in
            let node = try await cluster.launch(["n1"])[0]
            try await poll("the slow producer's first round", timeout: .seconds(30), diagnostics: cluster.diagnostics) {
                try node.rounds(producer: "slow").first { $0.finishedAt != nil }
            }
            // More history than any scan of the newest entries would read.
            try await RedisClient.withClient(try RedisConfiguration(url: cluster.redisURL)) { client in
                let commands = (0..<1_500).map { _ in RedisCommand("XADD", "rota:{e2e}:stream:history", "*", "n", "note", "p", "{}") }
                _ = try await client.pipeline(commands)
            }
            let report = try await status(cluster)
            let slow = try #require(((report["producers"] as? [[String: Any]]) ?? []).first { $0["name"] as? String == "slow" })
            let expected = try #require(try node.rounds(producer: "slow").last?.roundID)
            #expect(slow["last_round"] as? String == expected, "\(slow)")
            #expect(slow["planner_name"] as? String == "n1")

            // A node without plan files follows the pool's plan: it records it and plans rounds.
            let follower = try cluster.start("n2", following: true)
            try await follower.waitUntilReady()
            try await poll("the follower recorded the plan", timeout: .seconds(10)) {
                try follower.planEvents() == ["fast:created:1", "slow:created:1"] ? true : nil
            }
            let followerID = follower.plannerName
            try await poll("a round of fast planned by the follower", timeout: .seconds(30), diagnostics: cluster.diagnostics) {
                try follower.rounds(producer: "fast").first { $0.node == followerID && $0.revision == 1 }
            }
            #expect(follower.logs("plan drift: this node's plan files differ from the pool's plan and were not applied").isEmpty)
        }
    }
}

@Suite(.serialized, .timeLimit(.minutes(2))) struct DatabaseLockEndToEndTests {
    @Test("a second rota run on the same database exits with a clear message; the lock dies with its holder, even on SIGKILL")
    func oneRunPerDatabase() async throws {
        try await withRunCluster(plans: plan([(name: "alpha", every: "1s")])) { cluster in
            let first = try await cluster.launch(["n1"])[0]
            let second = try cluster.start("n1")
            try await poll("the second rota run exits", timeout: .seconds(20), diagnostics: cluster.diagnostics) { second.state.exit }
            let exit = try #require(second.state.exit)
            #expect(!exit.signaled && exit.status != 0)
            let text = second.state.lines.joined(separator: "\n")
            #expect(text.contains("is in use by another rota run (pid \(first.pid))"), "\(text)")
            #expect(second.nodeID == nil)
            #expect(!first.hasExited)
            // The first keeps planning, and its rounds are not closed as interrupted.
            let before = try first.rounds(producer: "alpha").count
            try await poll("more rounds on the first", timeout: .seconds(10)) { try first.rounds(producer: "alpha").count > before ? true : nil }
            #expect(try first.rounds().allSatisfy { $0.error == nil })

            try await first.kill()
            let third = try cluster.start("n1")
            try await third.waitUntilReady()
        }
    }
}

@Suite(.serialized, .timeLimit(.minutes(2))) struct PrivateServerTests {
    @Test("rota run's private redis-server: Unix socket only, a password, a 0700 directory, and gone when rota run is SIGKILLed")
    func privateServerIsPrivateAndDiesWithItsOwner() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("rota-private-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("plans"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try plan([(name: "alpha", every: "1s")]).write(to: directory.appendingPathComponent("plans/plan.yaml"), atomically: true, encoding: .utf8)
        let database = directory.appendingPathComponent("n1.sqlite").path
        let node = try RunNode(label: "private", database: database, arguments: [
            "run", "--plans", directory.appendingPathComponent("plans").path, "--db", database, "--pool", "e2e", "--workers", "1",
            "--log-format", "json",
        ])
        defer { node.killForCleanup() }
        try await node.waitUntilReady()
        let endpoint = try #require(node.logs("started a private redis-server for this run").first?["redis"])
        let socket = String(try #require(endpoint.split(separator: ":", maxSplits: 1).last))
        let serverDirectory = (socket as NSString).deletingLastPathComponent
        func mode(_ path: String) throws -> Int { try #require(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int) }
        #expect(try mode(serverDirectory) == 0o700)
        #expect(try mode(serverDirectory + "/redis.conf") == 0o600)
        let config = try String(contentsOfFile: serverDirectory + "/redis.conf", encoding: .utf8)
        #expect(config.contains("port 0\n") && config.contains("requirepass "), "\(config)")
        // Without the password the socket refuses every command.
        let refused = try await RedisClient.withClient(RedisConfiguration(endpoint: .unixSocket(path: socket))) { client in
            do {
                _ = try await client.send("PING").throwingServerError()
                return ""
            } catch {
                return "\(error)"
            }
        }
        #expect(refused.contains("NOAUTH"), "\(refused)")
        // The server's process (redis-server runs in its directory), then rota run SIGKILLed: it goes too.
        let servers = serverProcesses(in: serverDirectory)
        try #require(servers.count == 1, "redis-server processes in \(serverDirectory): \(servers)")
        try await node.kill()
        try await poll("the private redis-server is gone", timeout: .seconds(10)) { serverProcesses(in: serverDirectory).isEmpty ? true : nil }
        // Gone, or a zombie waiting for whoever inherited it to reap it (state Z).
        let stat = FileManager.default.contents(atPath: "/proc/\(servers[0])/stat").map { String(decoding: $0, as: UTF8.self) }
        #expect(stat == nil || stat?.contains(") Z ") == true, "\(stat ?? "")")
    }
}

extension PrivateServerTests {
    @Test("--private-redis-port: TCP only when asked, behind the password")
    func tcpWhenAsked() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("rota-private-tcp-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("plans"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try plan([(name: "alpha", every: "1s")]).write(to: directory.appendingPathComponent("plans/plan.yaml"), atomically: true, encoding: .utf8)
        let database = directory.appendingPathComponent("n1.sqlite").path
        let port = try freePort()
        let node = try RunNode(label: "private-tcp", database: database, arguments: [
            "run", "--plans", directory.appendingPathComponent("plans").path, "--db", database, "--pool", "e2e", "--workers", "1",
            "--log-format", "json", "--private-redis-port", String(port),
        ])
        defer { node.killForCleanup() }
        try await node.waitUntilReady()
        let endpoint = try #require(node.logs("started a private redis-server for this run").first?["redis"])
        let serverDirectory = (String(try #require(endpoint.split(separator: ":", maxSplits: 1).last)) as NSString).deletingLastPathComponent
        let config = try String(contentsOfFile: serverDirectory + "/redis.conf", encoding: .utf8)
        let password = try #require(config.split(separator: "\n").first { $0.hasPrefix("requirepass ") }?.dropFirst("requirepass ".count))
        func ping(_ configuration: RedisConfiguration) async throws -> String {
            try await RedisClient.withClient(configuration) { client in
                do {
                    return try await client.send("PING").throwingServerError().string ?? ""
                } catch {
                    return "\(error)"
                }
            }
        }
        #expect(try await ping(RedisConfiguration(endpoint: .tcp(host: "127.0.0.1", port: port))).contains("NOAUTH"))
        #expect(try await ping(RedisConfiguration(endpoint: .tcp(host: "127.0.0.1", port: port), password: String(password))) == "PONG")
    }
}

/// Live redis-server processes whose working directory is `directory` (from /proc; a zombie has
/// no working directory left, and counts as gone).
private func serverProcesses(in directory: String) -> [Int32] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { entry -> Int32? in
        guard let pid = Int32(entry),
              let name = FileManager.default.contents(atPath: "/proc/\(entry)/comm").map({ String(decoding: $0, as: UTF8.self) }),
              name.hasPrefix("redis-server"),
              let cwd = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(entry)/cwd"), cwd == directory else { return nil }
        return pid
    }
}

/// Polls an async condition until it holds; throws at the deadline.
func pollAsync(_ what: String, timeout: Duration, every: Duration = .milliseconds(100), diagnostics: @autoclosure () -> String = "",
               _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    var lastError: (any Error)?
    while true {
        do {
            if try await condition() { return }
        } catch {
            lastError = error
        }
        if ContinuousClock.now >= deadline {
            throw TestFailure("timed out after \(timeout) waiting for \(what)\(lastError.map { " (last error: \($0))" } ?? "")\n\(diagnostics())")
        }
        try await Task.sleep(for: every)
    }
}
