import Foundation
import RotaRedis
import RotaRedisServer
import RotaTestSupport
import Testing

/// A `rota worker` process (or another worker program) in the background; its output goes to a
/// log file (read on failure).
private final class BackgroundWorker {
    let process = Process()
    let log: URL

    /// `rota worker ARGUMENTS`, or `executable ARGUMENTS`.
    init(arguments: [String], executable: URL? = nil) throws {
        log = FileManager.default.temporaryDirectory.appendingPathComponent("rota-worker-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process.executableURL = try executable ?? rotaExecutable()
        process.arguments = executable == nil ? ["worker"] + arguments : arguments
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
    }

    var output: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. Returns the exit status, nil if
    /// it had to be killed.
    @discardableResult
    func stop(grace: Duration = .seconds(20)) async -> Int32? {
        guard process.isRunning else { return process.terminationStatus }
        process.terminate()
        let deadline = ContinuousClock.now + grace
        while process.isRunning, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
        guard process.isRunning else {
            process.waitUntilExit()
            return process.terminationStatus
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        return nil
    }

    deinit {
        // Never leave a worker behind, whatever happened to the test.
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: log)
    }
}

/// `rota status --format json`, parsed.
private struct StatusReport {
    var nodes: [[String: Any]]
    var workers: [[String: Any]]
    var jobs: [[String: Any]]
    var producers: [[String: Any]]
    var unplaced: [[String: Any]]

    init(_ text: String) throws {
        guard let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
              let nodes = object["nodes"] as? [[String: Any]], let workers = object["workers"] as? [[String: Any]],
              let jobs = object["jobs"] as? [[String: Any]], let producers = object["producers"] as? [[String: Any]],
              let unplaced = object["unplaced"] as? [[String: Any]]
        else { throw TestFailure("unexpected status JSON: \(text)") }
        self.nodes = nodes
        self.workers = workers
        self.jobs = jobs
        self.producers = producers
        self.unplaced = unplaced
    }
}

@Suite(.serialized) struct PoolCommandTests {
    @Test func workerDispatchStatusStopAndPlanDiff() async throws {
        try await RedisServer.withServer { server in
            let pool = "cli-\(UUID().uuidString.prefix(8))"
            let target = ["--redis", server.url, "--pool", pool]
            let worker = try BackgroundWorker(arguments: target + ["--workers", "1", "--name", "cli-test-node"])
            do {
                try await scenario(target: target, worker: worker)
            } catch {
                await worker.stop()
                Issue.record("worker output:\n\(worker.output)")
                throw error
            }
            // SIGTERM: the worker closes its node and exits 0.
            let status = await worker.stop()
            #expect(status == 0, "worker output:\n\(worker.output)")
        }
    }

    @Test("text logs escape control characters: a job key cannot forge a log line or drive the terminal")
    func textLogsAreEscaped() async throws {
        try await RedisServer.withServer { server in
            let target = ["--redis", server.url, "--pool", "esc-\(UUID().uuidString.prefix(8))"]
            let worker = try BackgroundWorker(arguments: target + ["--workers", "1", "--log-format", "text"])
            try await eventually("the worker is ready", timeout: .seconds(30)) { worker.output.contains("rota worker ready") }
            let dispatched = try rota(["dispatch", "evil\u{1B}[2J\nforged: rota worker ready", "--handler", "log", "--payload", "t\u{1B}]0;x\u{7}"]
                + target)
            #expect(dispatched.status == 0, "\(dispatched.err)")
            try await eventually("the start is logged", timeout: .seconds(30)) { worker.output.contains("job started") }
            let output = worker.output
            #expect(!output.contains("\u{1B}") && !output.contains("\u{7}"), "raw control characters in:\n\(output)")
            #expect(!output.split(separator: "\n").contains { $0.hasPrefix("forged") }, "a forged line in:\n\(output)")
            #expect(output.contains("evil\\u{1B}[2J\\u{A}forged"), "\(output)")
            await worker.stop()
        }
    }

    private func status(_ target: [String]) throws -> StatusReport {
        let result = try rota(["status", "--format", "json"] + target)
        guard result.status == 0 else { throw TestFailure("rota status failed: \(result.err)") }
        return try StatusReport(result.out)
    }

    private func scenario(target: [String], worker: BackgroundWorker) async throws {
        // The worker joins: status shows its node (by name) and the worker on that node.
        var report = try status(target)
        try await eventually("the worker joined", timeout: .seconds(30)) {
            report = try status(target)
            return report.workers.count == 1 && report.nodes.contains { $0["name"] as? String == "cli-test-node" }
        }
        let nodeID = try #require(report.nodes.first { $0["name"] as? String == "cli-test-node" }?["id"] as? String)
        let workerID = try #require(report.workers.first?["id"] as? String)
        // Before its first job the worker's inbox still tells its node.
        #expect(report.workers.first?["node"] as? String == nodeID)

        let dispatched = try rota(["dispatch", "job/1", "--handler", "log", "--payload", "hello"] + target)
        #expect(dispatched.status == 0, "\(dispatched.err)")
        report = try status(target)
        #expect(report.jobs.contains { $0["key"] as? String == "job/1" && $0["worker"] as? String == workerID && $0["handler"] as? String == "log" })
        let listed = try #require(report.workers.first { $0["id"] as? String == workerID })
        #expect(listed["jobs"] as? Int == 1)
        // Once the worker trimmed its inbox the node is unknown (null); it is never another node.
        #expect(listed["node"] as? String == nodeID || listed["node"] is NSNull)
        #expect(report.nodes.contains { $0["id"] as? String == nodeID })

        let again = try rota(["dispatch", "job/1", "--handler", "log", "--payload", "hello"] + target)
        #expect(again.status == 3)
        #expect(again.err.contains("job job/1 already exists"))

        let unknownStop = try rota(["stop", "job/none"] + target)
        #expect(unknownStop.status == 4)
        #expect(unknownStop.err.contains("job job/none not found"))
        let unknownNotify = try rota(["notify", "job/none", "hi"] + target)
        #expect(unknownNotify.status == 4)
        let notified = try rota(["notify", "job/1", "hi"] + target)
        #expect(notified.status == 0, "\(notified.err)")

        let stopped = try rota(["stop", "job/1"] + target)
        #expect(stopped.status == 0, "\(stopped.err)")
        try await eventually("job/1 is gone from status", timeout: .seconds(30)) {
            try status(target).jobs.isEmpty
        }

        // A worker-side error fails the dispatch with its text (exit 1): the exec handler refuses a
        // program its policy does not name.
        let refused = try rota(["dispatch", "job/2", "--handler", "exec", "--payload", #"{"command": "/bin/true"}"#] + target)
        #expect(refused.status == 1, "\(refused)")
        #expect(refused.err.contains("is not allowed on this worker"), "\(refused.err)")
        #expect(try status(target).jobs.isEmpty)

        // `--wait` takes an optional value: alone (here before the key, or last) it waits without a
        // limit; a job that starts at once returns 0 either way. A bad value is a usage error.
        let waited = try rota(["dispatch", "--wait", "job/3", "--handler", "log"] + target)
        #expect(waited.status == 0 && waited.out == "started job/3\n", "\(waited)")
        let waitedLast = try rota(["dispatch", "job/4", "--handler", "log"] + target + ["--wait"])
        #expect(waitedLast.status == 0 && waitedLast.out == "started job/4\n", "\(waitedLast)")
        let timed = try rota(["dispatch", "job/5", "--handler", "log", "--wait", "30"] + target)
        #expect(timed.status == 0, "\(timed)")
        let badWait = try rota(["dispatch", "job/6", "--handler", "log", "--wait=soon"] + target)
        #expect(badWait.status == 64 && badWait.err.contains("--wait takes seconds"), "\(badWait)")
        #expect(try rota(["stop", "job/3", "job/4", "job/5"] + target).status == 0)
        try await eventually("the waited-for jobs are gone from status", timeout: .seconds(30)) { try status(target).jobs.isEmpty }

        let plan = FileManager.default.temporaryDirectory.appendingPathComponent("rota-diff-\(UUID().uuidString).yaml")
        defer { try? FileManager.default.removeItem(at: plan) }
        try """
            producers:
              - name: feeds
                every: 1m
                jobs:
                  - {key: feed/a, handler: log, payload: {city: A}}
                  - {key: feed/later, handler: log, from: 2999-01-01T00:00:00Z}
            """.write(to: plan, atomically: true, encoding: .utf8)
        let diff = try rota(["plan", "diff", plan.path, "--format", "json"] + target)
        #expect(diff.status == 0, "\(diff.err)")
        #expect(diff.out.trimmingCharacters(in: .whitespacesAndNewlines)
            == #"{"pool_revision":0,"plan":[{"producer":"feeds","outcome":"created","revision":1}],"jobs":[{"producer":"feeds","job":"feed/a","action":"start","handler":"log","reason":"desired, not running"}]}"#)
        // Nothing was applied.
        #expect(try status(target).jobs.isEmpty)
    }

    /// Needs the pool's capability routing (B3: `Node.dispatch` returning `.unplaced`,
    /// `workerCapabilities()`, `unplacedJobs()`).
    @Test("a job no active worker can run: status shows the workers' capabilities and the job unplaced; dispatch exits 11, --wait 12, or 0 once a capable worker joins")
    func unplacedJobs() async throws {
        try await RedisServer.withServer { server in
            let target = ["--redis", server.url, "--pool", "cap-\(UUID().uuidString.prefix(8))"]
            let worker = try BackgroundWorker(arguments: target + ["--workers", "1", "--name", "cap-node"])
            do {
                try await unplacedScenario(target: target, server: server)
            } catch {
                Issue.record("worker output:\n\(worker.output)")
                throw error
            }
            await worker.stop()
        }
    }

    private func unplacedScenario(target: [String], server: RedisServer) async throws {
        // The worker declares its handlers.
        try await eventually("the worker lists its capabilities", timeout: .seconds(30)) {
            try status(target).workers.contains { ($0["capabilities"] as? [String]) == ["exec", "log"] }
        }
        let table = try rota(["status"] + target)
        #expect(table.out.contains("CAPABILITIES") && table.out.contains("exec,log"), "\(table.out)")

        // No worker has `greet`: the job waits, unplaced (exit 11), and is there to see.
        let dispatched = try rota(["dispatch", "greet/1", "--handler", "greet", "--payload", "world"] + target)
        #expect(dispatched.status == 11, "\(dispatched)")
        #expect(dispatched.out.contains("job greet/1 waits for a worker with capability 'greet' (no active worker has it)"), "\(dispatched.out)")
        let report = try status(target)
        #expect(report.unplaced.contains { $0["key"] as? String == "greet/1" && $0["requirement"] as? String == "greet" }, "\(report.unplaced)")
        #expect(report.jobs.contains { $0["key"] as? String == "greet/1" && $0["unplaced"] as? String == "greet" && $0["worker"] is NSNull })
        let text = try rota(["status"] + target)
        #expect(text.out.contains("(1 unplaced)") && text.out.contains("UNPLACED"), "\(text.out)")
        #expect(text.out.split(separator: "\n").contains { $0.hasPrefix("greet/1") && $0.hasSuffix("greet") }, "\(text.out)")
        // It exists: a second dispatch is refused; a stop ends it.
        #expect(try rota(["dispatch", "greet/1", "--handler", "greet", "--payload", "world"] + target).status == 3)
        #expect(try rota(["stop", "greet/1"] + target).status == 0)
        try await eventually("greet/1 is gone", timeout: .seconds(30)) { try status(target).unplaced.isEmpty }

        // --wait with a limit: still unplaced when it runs out (exit 12).
        let timedOut = try rota(["dispatch", "greet/2", "--handler", "greet", "--payload", "you", "--wait", "1"] + target)
        #expect(timedOut.status == 12, "\(timedOut)")
        #expect(timedOut.err.contains("job greet/2 still waits for a worker with capability 'greet' after 1 s"), "\(timedOut.err)")

        // --wait without a limit, then a worker with `greet` joins (the example worker): it starts
        // the waiting jobs, and the waiting dispatch returns 0.
        let waiting = Process()
        waiting.executableURL = try rotaExecutable()
        waiting.arguments = ["dispatch", "greet/3", "--handler", "greet", "--payload", "all", "--wait"] + target
        let out = Pipe(), err = Pipe()
        waiting.standardOutput = out
        waiting.standardError = err
        try waiting.run()
        defer { if waiting.isRunning { kill(waiting.processIdentifier, SIGKILL) } }
        try await eventually("greet/3 is unplaced", timeout: .seconds(30)) {
            try status(target).unplaced.contains { $0["key"] as? String == "greet/3" }
        }
        #expect(waiting.isRunning)
        let pool = target[3]
        let example = try BackgroundWorker(arguments: [server.url, pool], executable: try builtExecutable("rota-example-worker"))
        try await eventually("the waiting dispatch returned", timeout: .seconds(30)) { !waiting.isRunning }
        waiting.waitUntilExit()
        let printed = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(waiting.terminationStatus == 0, "\(printed) \(String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))")
        #expect(printed.hasPrefix("started greet/3"), "\(printed)")
        try await eventually("greet/2 started too", timeout: .seconds(30)) {
            let report = try status(target)
            return report.unplaced.isEmpty && report.jobs.filter { $0["worker"] is String }.count == 2
        }
        #expect(try status(target).workers.contains { ($0["capabilities"] as? [String]) == ["greet", "log"] })
        await example.stop(grace: .seconds(10))
    }

    @Test("the pool's plan from the CLI: apply, list, pause/resume, trigger with no node planning, dry run, conflicts")
    func producerCommandsWithoutNodes() async throws {
        try await RedisServer.withServer { server in
            let target = ["--redis", server.url, "--pool", "plan-cli"]
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("rota-plan-cli-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            try """
                producers:
                  - name: feeds
                    every: 5m
                    jobs:
                      - {key: feed/a, handler: log}
                """.write(to: directory.appendingPathComponent("plan.yaml"), atomically: true, encoding: .utf8)
            let dry = try rota(["plan", "apply", directory.path, "--dry-run"] + target)
            #expect(dry.status == 0 && dry.out.contains("1 created") && dry.out.contains("dry run: nothing written"), "\(dry)")
            let applied = try rota(["plan", "apply", directory.path, "--format", "json"] + target)
            #expect(applied.out.contains(#""previous_revision":0,"revision":1"#), "\(applied)")
            let again = try rota(["plan", "apply", directory.path] + target)
            #expect(again.status == 0 && again.out.contains("revision 1, unchanged"), "\(again)")
            let stale = try rota(["plan", "apply", directory.path, "--expect-revision", "0"] + target)
            #expect(stale.status == 5 && stale.err.contains("at revision 1, not --expect-revision 0"), "\(stale)")

            let list = try rota(["producer", "list", "--format", "json"] + target)
            let object = try #require(try JSONSerialization.jsonObject(with: Data(list.out.utf8)) as? [String: Any])
            let feeds = try #require((object["producers"] as? [[String: Any]])?.first)
            #expect(feeds["name"] as? String == "feeds" && feeds["revision"] as? Int == 1 && feeds["mode"] as? String == "exact")
            #expect(feeds["interval"] as? String == "5m" && feeds["paused"] is NSNull, "\(feeds)")

            // No rota run plans it: a trigger says so.
            let trigger = try rota(["producer", "trigger", "feeds"] + target)
            #expect(trigger.status == 9 && trigger.err.contains("no node plans producer 'feeds'"), "\(trigger)")
            let pause = try rota(["producer", "pause", "feeds", "--reason", "maintenance window", "--until", "2h"] + target)
            #expect(pause.status == 0, "\(pause)")
            let paused = try rota(["producer", "list"] + target)
            #expect(paused.out.contains("paused by") && paused.out.contains("maintenance window (until "), "\(paused.out)")
            #expect(try rota(["producer", "trigger", "feeds"] + target).status == 8)
            #expect(try rota(["producer", "resume", "feeds"] + target).status == 0)
            #expect(try rota(["producer", "resume", "feeds"] + target).status == 8)
            #expect(try rota(["producer", "pause", "bad name", "--reason", "x"] + target).status == 64)
            #expect(try rota(["producer", "pause", "feeds", "--reason", " "] + target).status == 64)
            #expect(try rota(["plan", "apply", directory.path, "--pool", "plan-cli"]).err.contains("--redis"))
        }
    }

    @Test("rota dispatch into a pool at its job limit (100,000 by default) exits 10 naming the limit")
    func dispatchAtTheJobLimit() async throws {
        try await RedisServer.withServer { server in
            let pool = "cli-full-\(UUID().uuidString.prefix(8))"
            // 100,000 jobs' payloads, written in the server: no node needs to run them.
            _ = try await RedisClient.withClient(server.configuration) { client in
                try await client.evaluate(
                    RedisScript("for i = 1, 100000 do redis.call('HSET', KEYS[1], 'job-' .. i, 'x') end return 1"),
                    keys: ["rota:{\(pool)}:map:job-payloads"])
            }
            let result = try rota(["dispatch", "one-more", "--handler", "log", "--redis", server.url, "--pool", pool])
            #expect(result.status == 10, "\(result)")
            #expect(result.err.contains("the pool has 100000 jobs, its limit is 100000"), "\(result.err)")
        }
    }

    @Test func poolCommandsNeedRedis() throws {
        for arguments in [["worker"], ["status"], ["stop", "k"], ["dispatch", "k", "--handler", "log"]] {
            let result = try rota(arguments + ["--pool", "p"])
            #expect(result.status != 0, "\(arguments)")
            #expect(result.err.contains("--redis"), "\(arguments): \(result.err)")
        }
    }
}
