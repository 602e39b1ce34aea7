import Foundation
import RotaPlans
import RotaStore
import RotaTestSupport
import Testing
@testable import RotaService

// `rota explain` against a real pool (one `rota run` on a private redis-server): a running job,
// a closed window (the closing field named), a paused and a retired producer, a held (unplaced)
// job, an unknown one; a DST gap and fold without Redis. Also that rounds which changed nothing
// log at debug, and that an unknown --log-level is a usage error.

private let explainPlan = """
    pool: e2e
    producers:
      - name: always
        every: 1s
        mode: exact
        jobs:
          - key: always/one
            handler: log
      - name: night
        every: 1s
        mode: exact
        timezone: UTC
        jobs:
          - key: night/one
            handler: log
            active: "* 1-2 * * *"
      - name: berlin
        every: 1s
        mode: exact
        timezone: Europe/Berlin
        jobs:
          - key: berlin/one
            handler: log
            active: "30 2 * * *"
      - name: calm
        every: 1s
        mode: exact
        jobs:
          - key: calm/one
            handler: log
      - name: gone
        every: 1s
        mode: exact
        jobs:
          - key: gone/one
            handler: log

    """

/// `rota explain JOB --format json` on the cluster's pool and `db`; the exit status must be `status`.
private func explain(_ cluster: RunCluster, _ job: String, db: String? = nil, at: String? = nil, status: Int32 = 0) async throws -> [String: Any] {
    var arguments = ["explain", job, "--format", "json", "--redis", cluster.redisURL, "--pool", cluster.pool]
    if let db { arguments += ["--db", db] }
    if let at { arguments += ["--at", at] }
    let result = try await rotaCommand(arguments)
    guard result.status == status else {
        throw TestFailure("rota explain \(job) exited \(result.status), not \(status)\nout: \(result.out)\nerr: \(result.err)")
    }
    return try #require(try JSONSerialization.jsonObject(with: Data(result.out.utf8)) as? [String: Any], "\(result.out)")
}

private func listing(_ object: [String: Any]) -> [String: Any] {
    (object["producers"] as? [[String: Any]])?.first ?? [:]
}

@Suite("rota explain", .serialized)
struct ExplainEndToEndTests {
    @Test("running, closed window, paused, retired, unplaced and unknown jobs; quiet rounds log at debug")
    func explainsJobs() async throws {
        try await withRunCluster(plans: explainPlan) { cluster in
            let node = try cluster.start("a")
            try await node.waitUntilReady()
            try await poll("always/one running", timeout: .seconds(30), diagnostics: cluster.diagnostics) {
                try node.store().jobsRunning(at: Date()).contains { $0.job == "always/one" } ? true : nil
            }

            // Desired and running: owner named, next run now, the starting round listed.
            let running = try await explain(cluster, "always/one", db: node.database)
            #expect(running["found"] as? Bool == true)
            #expect(listing(running)["desired"] as? Bool == true && listing(running)["state"] as? String == "active")
            let placement = try #require(running["placement"] as? [String: Any])
            #expect(placement["status"] as? String == "running")
            #expect((placement["worker"] as? String)?.isEmpty == false)
            #expect(placement["node_name"] as? String == "a", "\(placement)")
            #expect((running["next_run"] as? [String: Any])?["now"] as? Bool == true)
            let rounds = try #require(running["rounds"] as? [[String: Any]])
            #expect(rounds.contains { round in
                (round["actions"] as? [[String: Any]] ?? []).contains { $0["outcome"] as? String == "started" }
            }, "\(rounds)")

            // Closed window: the hour field closes it, the next opening is 01:00 UTC the next day.
            let night = try await explain(cluster, "night/one", at: "2026-06-15T12:30:00Z")
            let window = try #require(listing(night)["window"] as? [String: Any])
            #expect(window["open"] as? Bool == false)
            #expect((window["closed_by"] as? [[String: Any]])?.map { $0["field"] as? String } == ["hour"], "\(window)")
            #expect(listing(night)["next_desired"] as? String == "2026-06-16T01:00:00.000Z")

            // DST: 01:30 UTC on 2026-03-29 is 03:30 CEST, in the shadow of the 02:00-03:00 gap.
            let berlin = try await explain(cluster, "berlin/one", at: "2026-03-29T01:30:00Z")
            let berlinWindow = try #require(listing(berlin)["window"] as? [String: Any])
            #expect((berlinWindow["dst"] as? [String: Any])?["kind"] as? String == "gap", "\(berlinWindow)")
            #expect((berlinWindow["closed_by"] as? [[String: Any]])?.map { $0["field"] as? String } == ["hour"])

            // Paused: by whom and until when; the text report says so too.
            let paused = try await rotaCommand(["producer", "pause", "calm", "--reason", "maintenance", "--until", "30d",
                "--redis", cluster.redisURL, "--pool", cluster.pool])
            #expect(paused.status == 0, "\(paused.err)")
            let calm = try await explain(cluster, "calm/one")
            #expect(listing(calm)["state"] as? String == "paused" && listing(calm)["desired"] as? Bool == false)
            let pause = try #require(listing(calm)["pause"] as? [String: Any])
            #expect(pause["reason"] as? String == "maintenance" && (pause["by"] as? String)?.contains("@") == true)
            #expect(pause["until"] is String && listing(calm)["next_desired"] as? String == pause["until"] as? String, "\(calm)")
            // From the history alone (no Redis): the pause replayed from the node's plan events.
            try await poll("the pause recorded", timeout: .seconds(15), diagnostics: cluster.diagnostics) {
                try node.store().planEvents(pool: "e2e", producer: "calm").contains { $0.kind == .paused } ? true : nil
            }
            let offline = try await rotaCommand(["explain", "calm/one", "--db", node.database, "--pool", cluster.pool, "--format", "json"])
            #expect(offline.status == 0, "\(offline.err)")
            let offlineObject = try #require(try JSONSerialization.jsonObject(with: Data(offline.out.utf8)) as? [String: Any])
            #expect(listing(offlineObject)["state"] as? String == "paused" && offlineObject["placement"] == nil, "\(offline.out)")
            let calmText = try await rotaCommand(["explain", "calm/one", "--redis", cluster.redisURL, "--pool", cluster.pool])
            #expect(calmText.status == 0, "\(calmText.err)")
            #expect(calmText.out.contains("paused by"), "\(calmText.out)")
            #expect(calmText.out.contains("maintenance"))

            // Retired: an apply without `gone`; its last definition comes from the node's history.
            let without = try cluster.plans(of: "without-gone")
            _ = try cluster.writePlan(explainPlan.components(separatedBy: "  - name: gone")[0], in: without)
            let applied = try await rotaCommand(["plan", "apply", without.path, "--prune", "--redis", cluster.redisURL, "--pool", cluster.pool])
            #expect(applied.status == 0, "\(applied.err)")
            try await poll("the retirement recorded", timeout: .seconds(15), diagnostics: cluster.diagnostics) {
                try node.store().planEvents(pool: "e2e", producer: "gone").contains { $0.kind == .retired } ? true : nil
            }
            let gone = try await explain(cluster, "gone/one", db: node.database)
            #expect(listing(gone)["state"] as? String == "retired" && listing(gone)["desired"] as? Bool == false, "\(gone)")
            #expect(listing(gone)["retirement"] is [String: Any])

            // Held: no worker has the handler; the capability is named.
            let held = try await rotaCommand(["dispatch", "held/one", "--handler", "nosuch", "--redis", cluster.redisURL, "--pool", cluster.pool])
            #expect(held.status == 11, "\(held.err)")
            let heldExplained = try await explain(cluster, "held/one")
            let heldPlacement = try #require(heldExplained["placement"] as? [String: Any])
            #expect(heldPlacement["status"] as? String == "unplaced" && heldPlacement["requirement"] as? String == "nosuch", "\(heldPlacement)")
            #expect((heldExplained["producers"] as? [Any])?.isEmpty == true && heldExplained["found"] as? Bool == true)

            // Unknown everywhere: exit 4.
            let unknown = try await explain(cluster, "nobody/none", db: node.database, status: 4)
            #expect(unknown["found"] as? Bool == false)

            // Rounds that changed nothing (always/one already running, night's window closed) log
            // at debug: every "round" line at info reports a change.
            try await poll("three rounds of always", timeout: .seconds(15), diagnostics: cluster.diagnostics) {
                try node.rounds(producer: "always").count >= 3 ? true : nil
            }
            let logged = node.logs("round")
            #expect(logged.filter { $0["producer"] == "always" }.count == 1, "only the starting round of always at info: \(logged)")
            for entry in logged {
                let changes = ["started", "stopped", "failed", "unplaced"].compactMap { entry[$0].flatMap(Int.init) }.reduce(0, +)
                #expect(changes > 0, "a round that changed nothing logged at info: \(entry)")
            }
        }
    }

    @Test("an unknown --log-level is a usage error listing the valid levels")
    func unknownLogLevel() async throws {
        let result = try await rotaCommand(["run", "--db", "/nonexistent/never.sqlite", "--log-level", "verbose"])
        #expect(result.status == 64)
        #expect(result.err.contains("verbose") && result.err.contains("trace, debug, info"), "\(result.err)")
    }

    @Test("DST gap and fold named, closing fields named (no Redis)")
    func windows() throws {
        let berlin = try #require(TimeZone(identifier: "Europe/Berlin"))
        let gapCron = try CronExpression(parsing: "30 2 * * *")
        // 2026-03-29 01:30 UTC = 03:30 CEST: read with CET it is 02:30, a time that did not exist.
        let gap = JobExplanation.window(gapCron, at: Date(timeIntervalSince1970: 1_774_747_800), in: berlin)
        #expect(gap.dst?.kind == .gap && gap.dst?.localRange == "02:00-03:00", "\(String(describing: gap.dst))")
        #expect(!gap.open && gap.closedBy.map(\.field) == ["hour"])
        // 2026-10-25 00:30 UTC = 02:30 CEST (first), 01:30 UTC = 02:30 CET (second): open both times.
        let first = JobExplanation.window(gapCron, at: Date(timeIntervalSince1970: 1_792_888_200), in: berlin)
        let second = JobExplanation.window(gapCron, at: Date(timeIntervalSince1970: 1_792_891_800), in: berlin)
        #expect(first.dst?.kind == .fold && second.dst?.kind == .fold && first.open && second.open)
        #expect(first.dst?.message.contains("first") == true && second.dst?.message.contains("second") == true)
        // Far from a transition: no note. Weekday-only window on a Sunday: day-of-week closes it.
        let utc = try #require(TimeZone(identifier: "UTC"))
        let weekdays = JobExplanation.window(try CronExpression(parsing: "* * * * 1-5"), at: Date(timeIntervalSince1970: 1_781_438_400), in: utc)
        #expect(weekdays.dst == nil && weekdays.closedBy.map(\.field) == ["day-of-week"], "\(weekdays)")
    }
}

@Suite("rota status --watch", .serialized)
struct StatusWatchTests {
    @Test("--watch redraws: successive snapshots separated by a blank line when stdout is not a terminal")
    func watch() async throws {
        try await withRunCluster(plans: "pool: e2e\nproducers: []\n") { cluster in
            let output = cluster.directory.appendingPathComponent("watch.out")
            _ = FileManager.default.createFile(atPath: output.path, contents: nil)
            let file = try FileHandle(forWritingTo: output)
            defer { try? file.close() }
            let process = Process()
            process.executableURL = try rotaExecutable()
            // A bare --watch followed by another option: the default interval (2 s).
            process.arguments = ["status", "--redis", cluster.redisURL, "--pool", cluster.pool, "--watch"]
            process.standardInput = FileHandle.nullDevice
            process.standardOutput = file
            process.standardError = FileHandle.nullDevice
            try process.run()
            defer { if process.isRunning { process.terminate() } }
            let text = try await poll("two snapshots", timeout: .seconds(15)) { () -> String? in
                let text = String(decoding: (try? Data(contentsOf: output)) ?? Data(), as: UTF8.self)
                return text.components(separatedBy: "pool e2e:").count >= 3 ? text : nil
            }
            #expect(process.isRunning, "the watch ended by itself")
            process.terminate()
            process.waitUntilExit()
            #expect(!text.contains("\u{1B}"), "a screen clear written to a file")
            #expect(text.contains("\n\npool e2e:"), "snapshots not separated by a blank line: \(text)")
        }
    }
}
