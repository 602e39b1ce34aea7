import Foundation
import Logging
import Rota
import RotaService
import RotaTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Handler registry")
struct RegistryRunnerTests {
    @Test("runs a job with the runner its envelope names; notifications reach it; a stop cancels it")
    func routes() async throws {
        let alpha = RecordingRunner()
        let beta = RecordingRunner()
        let runner = RegistryJobRunner(registry: try HandlerRegistry(["alpha": alpha, "beta": beta]))
        #expect(runner.capabilities == ["alpha", "beta"])
        let jobs = JobHarness(runner)

        try jobs.start("k1", try JobEnvelope(handler: "alpha", payload: Array("one".utf8)).encoded(), worker: "w1")
        try await eventually("alpha runs k1") { alpha.events.contains("run k1 one on w1") }
        #expect(alpha.events == ["validate k1 one", "run k1 one on w1"])
        #expect(beta.events.isEmpty)

        jobs.notify("k1", Array("ping".utf8))
        try await eventually("the notification reached alpha") { alpha.events.contains("notify k1 ping") }
        let stopped = await jobs.stop("k1")
        #expect(describe(stopped) == "returned")
        #expect(alpha.events.last == "stopped k1")
        #expect(beta.events.isEmpty)

        // The named runner's errors pass through: from validate (the start fails, nothing runs)…
        alpha.failValidation.withLock { $0 = true }
        let refused = await caught { try jobs.start("k2", try JobEnvelope(handler: "alpha", payload: []).encoded()) }
        #expect((refused as? ServiceError)?.code == .invalidPayload)
        #expect(!alpha.events.contains { $0.hasPrefix("run k2") })
        // …and from run (the job fails with them).
        try jobs.start("k3", try JobEnvelope(handler: "beta", payload: Array("fail".utf8)).encoded())
        let failed = try await jobs.outcome("k3")
        #expect(describe(failed) == "beta was told to fail")
        // A runner that returns by itself ends its job.
        try jobs.start("k4", try JobEnvelope(handler: "beta", payload: Array("done".utf8)).encoded())
        #expect(describe(try await jobs.outcome("k4")) == "returned")
    }

    @Test("an unknown handler fails validation with the names this worker has; nothing runs")
    func unknownHandler() async throws {
        let alpha = RecordingRunner(), beta = RecordingRunner()
        let runner = RegistryJobRunner(registry: try HandlerRegistry(["beta": beta, "alpha": alpha]))
        let error = await caught { try runner.validate(job("k", try JobEnvelope(handler: "nope", payload: []).encoded())) }
        let serviceError = try #require(error as? ServiceError)
        #expect(serviceError.code == .unknownHandler)
        #expect("\(serviceError)".contains("job 'k': unknown handler 'nope' (this worker has: alpha, beta)"))
        #expect(alpha.events.isEmpty && beta.events.isEmpty)

        let empty = RegistryJobRunner(registry: HandlerRegistry())
        #expect(empty.capabilities.isEmpty)
        let none = await caught { try empty.validate(job("k", try JobEnvelope(handler: "x", payload: []).encoded())) }
        #expect("\(none.map { "\($0)" } ?? "")".contains("unknown handler 'x' (this worker has: none)"))
        // run checks it again (a worker calls validate first; nothing else may be relied on).
        let run = await caught {
            try await runner.run(job("k", try JobEnvelope(handler: "nope", payload: []).encoded()), context: context())
        }
        #expect((run as? ServiceError)?.code == .unknownHandler)
    }

    @Test("a payload that is not an envelope fails validation clearly")
    func notAnEnvelope() async throws {
        let recorder = RecordingRunner()
        let runner = RegistryJobRunner(registry: try HandlerRegistry(["alpha": recorder]))
        let error = await caught { try runner.validate(job("k", Array("plain bytes".utf8))) }
        let serviceError = try #require(error as? ServiceError)
        #expect(serviceError.code == .invalidPayload)
        #expect("\(serviceError)".contains("not a Rota job envelope"))
        #expect(recorder.events.isEmpty)
    }

    @Test("registration validates names and refuses duplicates")
    func registration() throws {
        var registry = HandlerRegistry()
        try registry.register("log", RecordingRunner())
        #expect(registry.names == ["log"])
        #expect(registry["log"] != nil && registry.runner(named: "exec") == nil)
        #expect(throws: ServiceError.self) { try registry.register("log", RecordingRunner()) }
        #expect(throws: ServiceError.self) { try registry.register("Bad Name", RecordingRunner()) }
        #expect(throws: ServiceError.self) { try registry.register("", RecordingRunner()) }
        #expect(RegistryJobRunner(registry: registry).capabilities == ["log"])
    }

    @Test("the log runner logs the start (payload cut at 1 KiB), notifications and the stop, and runs until stopped")
    func logRunner() async throws {
        let logs = HandlerLogCapture()
        let jobs = JobHarness(RegistryJobRunner(registry: try HandlerRegistry(["log": LogJobRunner(logger: logs.logger)])))
        let long = String(repeating: "é", count: 700)    // 1400 bytes
        try jobs.start("k", try JobEnvelope(handler: "log", payload: Array(long.utf8)).encoded(), worker: "w7")
        try await eventually("the start is logged") { logs.entries.contains { $0.message == "job started" } }
        jobs.notify("k", Array("refresh".utf8))
        try await eventually("the notification is logged") {
            logs.entries.contains { $0.message == "job notified" && $0.metadata["payload"] == "refresh" }
        }
        #expect(jobs.isRunning("k"))
        #expect(describe(await jobs.stop("k")) == "returned")
        let started = try #require(logs.entries.first { $0.message == "job started" })
        let payload = try #require(started.metadata["payload"])
        #expect(payload.hasPrefix(String(repeating: "é", count: 512)) && payload.hasSuffix("…(1400 bytes)"))
        #expect(!payload.contains("\u{FFFD}"))
        #expect(started.metadata["worker"] == "w7")
        #expect(logs.entries.contains { $0.message == "job stopped" && $0.metadata["job"] == "k" && $0.metadata["worker"] == "w7" })
    }
}

@Suite("Exec runner")
struct ExecRunnerTests {
    @Test("an allowed command found on PATH runs; a stop (cancellation) kills it within the grace period and the call returns")
    func startAndStop() async throws {
        try await withExec(allowed: ["/usr/bin/sleep", "/bin/sleep"]) { exec, jobs, _ in
            let pid = try await startChild(jobs, exec, "s", json(#"{"command": "sleep", "args": ["30"]}"#))
            #expect(kill(pid, 0) == 0)
            #expect(exec.keys == ["s"])

            let began = ContinuousClock.now
            #expect(describe(await jobs.stop("s")) == "returned")
            #expect(ContinuousClock.now - began < .seconds(4))
            #expect(isGone(pid))
            #expect(exec.status(key: "s") == nil && exec.keys.isEmpty)
        }
    }

    @Test("a child ignoring SIGTERM is killed with SIGKILL after the grace period, with its process group")
    func sigkillAfterGrace() async throws {
        try await withExec(allowed: ["/bin/sh"]) { exec, jobs, logs in
            // The shell ignores TERM (so does the background sleep, which inherits that) and prints
            // the sleep's pid.
            let payload = json(#"{"command": "/bin/sh", "args": ["-c", "trap '' TERM; sleep 30 & echo $!; wait"], "grace_ms": 300}"#)
            let pid = try await startChild(jobs, exec, "stubborn", payload)
            try await eventually("the shell printed its background pid") { logs.lines(stream: "stdout", job: "stubborn").count == 1 }
            let grandchild = try #require(pid_t(logs.lines(stream: "stdout", job: "stubborn")[0]))

            let began = ContinuousClock.now
            #expect(describe(await jobs.stop("stubborn")) == "returned")
            let elapsed = ContinuousClock.now - began
            #expect(elapsed >= .milliseconds(300) && elapsed < .seconds(4))
            #expect(isGone(pid))
            #expect(logs.entries.contains { $0.message.contains("SIGKILL") })
            // The orphaned sleep was killed with the group (it may linger as a zombie until init reaps it).
            try await eventually("the grandchild is dead") { isGoneOrZombie(grandchild) }
        }
    }

    @Test("grace_ms longer than the worker's stop grace period is cut to fit it")
    func graceWithinTheStopGracePeriod() async throws {
        // 1.5 s to stop, 1 s of it kept for the output: SIGKILL 0.5 s after SIGTERM, not 20 s.
        try await withExec(allowed: ["/bin/sh"], stopGracePeriod: .milliseconds(1500)) { exec, jobs, logs in
            let payload = json(#"{"command": "/bin/sh", "args": ["-c", "trap '' TERM; echo ready; sleep 30"], "grace_ms": 20000}"#)
            let pid = try await startChild(jobs, exec, "long", payload)
            // Stopped once the trap is set (before, SIGTERM alone would end it).
            try await eventually("the shell ignores TERM") { logs.lines(stream: "stdout", job: "long") == ["ready"] }
            let began = ContinuousClock.now
            #expect(describe(await jobs.stop("long")) == "returned")
            let elapsed = ContinuousClock.now - began
            #expect(elapsed >= .milliseconds(500) && elapsed < .milliseconds(1500), "\(elapsed)")
            #expect(isGone(pid))
            #expect(logs.entries.contains { $0.message.contains("longer than the worker's stop grace period") })
        }
    }

    @Test("commands outside the allow-list fail validation and are never spawned")
    func refused() async throws {
        let marker = NSTemporaryDirectory() + "rota-exec-marker-\(UInt32.random(in: 0...UInt32.max))"
        try await withExec(allowed: ["/bin/sleep", "/usr/bin/sleep"]) { exec, jobs, _ in
            for command in ["/usr/bin/touch", "touch", "/bin/../usr/bin/touch", "/bin/sleep/../../usr/bin/touch", "bin/touch"] {
                let payload = json(#"{"command": "\#(command)", "args": ["\#(marker)"]}"#)
                let error = await caught { try jobs.start("t", payload) }
                #expect((error as? ServiceError)?.code == .execNotAllowed, "\(command): \(error.map { "\($0)" } ?? "no error")")
                #expect(exec.status(key: "t") == nil && !jobs.isRunning("t"))
            }
            let error = await caught { try jobs.start("t", json(#"{"command": "/usr/bin/touch", "args": ["x"]}"#)) }
            #expect("\(error.map { "\($0)" } ?? "")".contains("is not allowed on this worker (allowed: /bin/sleep, /usr/bin/sleep)"))
            // A job may not make an allowed program load other code.
            let preload = await caught {
                try jobs.start("t", json(#"{"command": "/bin/sleep", "args": ["1"], "env": {"LD_PRELOAD": "/tmp/x.so"}}"#))
            }
            #expect((preload as? ServiceError)?.code == .execNotAllowed)
            // run checks again: a payload validate would refuse never spawns, whoever calls run.
            let direct = await caught {
                try await exec.run(payload: json(#"{"command": "/usr/bin/touch", "args": ["\#(marker)"]}"#), job: job("t", []), context: context())
            }
            #expect((direct as? ServiceError)?.code == .execNotAllowed)
        }
        #expect(!FileManager.default.fileExists(atPath: marker))

        // An empty allow-list refuses everything; allow-list patterns must be absolute.
        try await withExec(allowed: []) { _, jobs, _ in
            let error = await caught { try jobs.start("t", json(#"{"command": "/bin/sleep", "args": ["1"]}"#)) }
            #expect((error as? ServiceError)?.code == .execNotAllowed)
            #expect("\(error.map { "\($0)" } ?? "")".contains("--allow-exec"))
        }
        #expect(throws: ServiceError.self) { try ExecJobRunner(allowed: ["sleep"], logger: Logger(label: "test")) }

        // Allowed but missing: execFailed. Allowed through its realpath: /bin/sleep is /usr/bin/sleep
        // on merged-/usr systems.
        try await withExec(allowed: ["/nonexistent-rota/*", "/usr/bin/*"]) { exec, jobs, _ in
            let missing = await caught { try jobs.start("m", json(#"{"command": "/nonexistent-rota/tool"}"#)) }
            #expect((missing as? ServiceError)?.code == .execFailed)
            if let resolved = realpath("/bin/sleep", nil) {
                defer { free(resolved) }
                if String(cString: resolved) == "/usr/bin/sleep" {
                    _ = try await startChild(jobs, exec, "real", json(#"{"command": "/bin/sleep", "args": ["30"]}"#))
                }
            }
        }
    }

    @Test("malformed payloads fail validation with clear errors")
    func payloads() async throws {
        try await withExec(allowed: ["/bin/*"]) { _, jobs, _ in
            let cases: [(String, String)] = [
                ("not json", "not valid JSON"),
                (#"["/bin/sleep"]"#, "JSON object"),
                (#"{"args": ["1"]}"#, "missing field \"command\""),
                (#"{"command": ""}"#, "non-empty string"),
                (#"{"command": "/bin/sleep", "arg": ["1"]}"#, "unknown field 'arg'"),
                (#"{"command": "/bin/sleep", "args": "1"}"#, "array of strings"),
                (#"{"command": "/bin/sleep", "restart": "sometimes"}"#, "never, on-failure, always"),
                (#"{"command": "/bin/sleep", "grace_ms": true}"#, "grace_ms"),
                (#"{"command": "/bin/sleep", "grace_ms": -1}"#, "grace_ms"),
            ]
            for (payload, fragment) in cases {
                let error = await caught { try jobs.start("p", json(payload)) }
                #expect((error as? ServiceError)?.code == .invalidPayload, "\(payload)")
                #expect("\(error.map { "\($0)" } ?? "")".contains(fragment), "\(payload): \(error.map { "\($0)" } ?? "no error")")
            }
            let spec = try ExecSpec(decoding: json(#"{"command": "x", "env": null}"#))
            #expect(spec.restart == .onFailure && spec.grace == .seconds(5) && spec.args.isEmpty && spec.env.isEmpty)
        }
    }

    @Test("the program ending by itself ends the job when its policy says so: success returns, failure throws with the status")
    func restartPolicies() async throws {
        try await withExec(allowed: ["/bin/sh"]) { exec, jobs, _ in
            try jobs.start("always", json(#"{"command": "/bin/sh", "args": ["-c", "exit 0"], "restart": "always"}"#))
            try jobs.start("failing", json(#"{"command": "/bin/sh", "args": ["-c", "exit 3"]}"#))
            try jobs.start("never", json(#"{"command": "/bin/sh", "args": ["-c", "exit 0"], "restart": "never"}"#))
            try jobs.start("never-failing", json(#"{"command": "/bin/sh", "args": ["-c", "exit 3"], "restart": "never"}"#))
            try jobs.start("done", json(#"{"command": "/bin/sh", "args": ["-c", "exit 0"]}"#))
            try jobs.start("killed", json(#"{"command": "/bin/sh", "args": ["-c", "kill -9 $$"], "restart": "never"}"#))

            try await eventually("'always' restarted twice") { (exec.status(key: "always")?.starts ?? 0) >= 3 }
            try await eventually("'on-failure' restarted a failing command") { (exec.status(key: "failing")?.starts ?? 0) >= 2 }
            #expect(exec.status(key: "failing")?.lastExit == "exit code 3")
            // Over: `never` after any exit, `on-failure` after a success.
            #expect(describe(try await jobs.outcome("never")) == "returned")
            #expect(describe(try await jobs.outcome("done")) == "returned")
            let failed = try await jobs.outcome("never-failing")
            guard case .failure(let error) = failed else { throw TestFailure("never-failing returned") }
            #expect((error as? ServiceError)?.code == .execExited)
            #expect("\(error)".contains("'/bin/sh' ended with exit code 3"), "\(error)")
            #expect(describe(try await jobs.outcome("killed")).contains("ended with signal 9"))
            #expect(exec.status(key: "never") == nil && exec.status(key: "done") == nil)
            #expect(jobs.isRunning("always") && jobs.isRunning("failing"))

            #expect(describe(await jobs.stop("always")) == "returned")
            #expect(describe(await jobs.stop("failing")) == "returned")
            #expect(exec.keys.isEmpty)
        }
    }

    @Test("stdout and stderr lines reach the log with the job key; notifications are read and dropped")
    func output() async throws {
        try await withExec(allowed: ["/bin/sh"]) { _, jobs, logs in
            let payload = json(#"{"command": "/bin/sh", "args": ["-c", "echo hello-out; echo second; echo hello-err >&2; printf no-newline"], "restart": "never"}"#)
            try jobs.start("talk", payload)
            #expect(describe(try await jobs.outcome("talk")) == "returned")
            // Reaped only after its output drained (within the drain timeout).
            try await eventually("the output is logged") {
                logs.lines(stream: "stdout", job: "talk") == ["hello-out", "second", "no-newline"]
                    && logs.lines(stream: "stderr", job: "talk") == ["hello-err"]
            }
            #expect(logs.entries.contains { $0.message == "hello-out" && $0.metadata["pid"] != nil })

            try jobs.start("quiet", json(#"{"command": "/bin/sh", "args": ["-c", "sleep 30"]}"#))
            try await eventually("quiet runs") { logs.entries.contains { $0.message == "exec: command started" && $0.metadata["job"] == "quiet" } }
            jobs.notify("quiet", Array("hello".utf8))
            try await eventually("the notification is dropped") { logs.entries.contains { $0.message.contains("notification ignored") } }
            #expect(jobs.isRunning("quiet"))
        }
    }

    @Test("children do not inherit the worker's environment: only PATH, listed variables and the job's env")
    func environment() async throws {
        setenv("ROTA_TEST_SECRET", "hunter2", 1)
        defer { unsetenv("ROTA_TEST_SECRET") }
        try await withExec(allowed: ["/usr/bin/env"]) { _, jobs, logs in
            try jobs.start("env", json(#"{"command": "/usr/bin/env", "env": {"JOB_VAR": "yes"}, "restart": "never"}"#))
            #expect(describe(try await jobs.outcome("env")) == "returned")
            try await eventually("the environment is printed") { logs.lines(stream: "stdout", job: "env").contains("JOB_VAR=yes") }
            let lines = logs.lines(stream: "stdout", job: "env")
            #expect(!lines.contains { $0.hasPrefix("ROTA_TEST_SECRET=") }, "a worker variable leaked: \(lines)")
            #expect(lines.contains { $0.hasPrefix("PATH=") })
        }
    }

    @Test("children get a process group of their own, no blocked or ignored signals, no inherited descriptors")
    func isolation() async throws {
        // A descriptor this process leaks without O_CLOEXEC must not reach the child.
        // (F_DUPFD: not close-on-exec, and above dash's own fd 10.)
        let opened = open("/dev/null", O_RDONLY | O_CLOEXEC)
        let leaked = fcntl(opened, F_DUPFD, 200)
        close(opened)
        defer { close(leaked) }
        try await withExec(allowed: ["/bin/sh"]) { _, jobs, logs in
            let script = #"read -r _ _ _ _ pgrp _ < /proc/$$/stat; echo "pgrp=$pgrp pid=$$"; grep -E '^Sig(Blk|Ign)' /proc/self/status; ls /proc/$$/fd | tr '\n' ' '; echo"#
            let payload = try JSONSerialization.data(withJSONObject: ["command": "/bin/sh", "args": ["-c", script], "restart": "never"])
            try jobs.start("iso", Array(payload))
            #expect(describe(try await jobs.outcome("iso")) == "returned")
            let pid = try #require(logs.entries.first { $0.message == "exec: command started" && $0.metadata["job"] == "iso" }?.metadata["pid"])
            try await eventually("the script printed 4 lines") { logs.lines(stream: "stdout", job: "iso").count == 4 }
            let lines = logs.lines(stream: "stdout", job: "iso")
            #expect(lines[0] == "pgrp=\(pid) pid=\(pid)")
            #expect(lines[1].hasPrefix("SigBlk:") && lines[1].hasSuffix("0000000000000000"))
            // glibc's posix_spawn leaves its internal signals 32 and 33 (below SIGRTMIN) ignored.
            let ignored = UInt64(lines[2].split(separator: "\t").last.map(String.init) ?? "", radix: 16)
            #expect(ignored.map { $0 & ~UInt64(0x1_8000_0000) } == 0, "\(lines)")
            let descriptors = Set(lines[3].split(separator: " ").compactMap { Int32($0) })
            // 0-2, plus what dash itself holds (fd 10, pipe ends while it forks `ls | tr`).
            #expect(descriptors.isSuperset(of: [0, 1, 2]) && descriptors.allSatisfy { $0 <= 10 }, "\(descriptors)")
            #expect(leaked >= 200 && !descriptors.contains(leaked))
        }
    }

    @Test("one child per key: a second run of a key waits for the first to be gone; stopAll ends everything and refuses new jobs")
    func oneChildPerKey() async throws {
        try await withExec(allowed: ["/bin/sleep", "/usr/bin/sleep"]) { exec, jobs, logs in
            let payload = json(#"{"command": "/bin/sleep", "args": ["30"]}"#)
            let first = try await startChild(jobs, exec, "i", payload)
            // The same key on another worker of this process (a job handed over): it waits.
            let other = JobHarness(named: exec, logger: logs.logger)
            try other.start("i", json(#"{"command": "/bin/sleep", "args": ["31"]}"#), worker: "w2")
            try await eventually("the second run waits") { logs.entries.contains { $0.message.contains("waiting for the previous run") } }
            #expect(exec.status(key: "i")?.pid == first && exec.status(key: "i")?.starts == 1)
            await jobs.stop("i")
            #expect(isGone(first))
            var second: pid_t?
            try await eventually("the second run spawned its child") {
                second = exec.status(key: "i")?.pid
                return second != nil
            }
            #expect(second != first)

            // Through the registry, as a worker runs it.
            let registry = JobHarness(RegistryJobRunner(registry: try HandlerRegistry(["exec": exec])), logger: logs.logger)
            try registry.start("r", try JobEnvelope(handler: "exec", payload: payload).encoded())
            var third: pid_t?
            try await eventually("the registry's job runs") {
                third = exec.status(key: "r")?.pid
                return third != nil
            }

            await exec.stopAll()
            #expect(second.map(isGone) == true && third.map(isGone) == true)
            // Their calls end failed: the runner, not a stop, ended them.
            #expect(describe(try await other.outcome("i")).contains("shutting down"))
            #expect(describe(try await registry.outcome("r")).contains("shutting down"))
            #expect(exec.keys.isEmpty)
            let late = await caught { try jobs.start("late", payload) }
            #expect((late as? ServiceError)?.code == .execFailed)
        }
    }
}

// MARK: - Support

/// Runs `body` with an exec runner allowing `allowed` under the tests' permissive policy
/// (``permissivePolicy(_:)``), a job harness and a log capture; always stops every child.
private func withExec(
    allowed: [String],
    stopGracePeriod: Duration = .seconds(10),
    _ body: (ExecJobRunner, JobHarness, HandlerLogCapture) async throws -> Void
) async throws {
    try await withExecRunner(policy: try permissivePolicy(allowed), stopGracePeriod: stopGracePeriod, body)
}

/// A context for calling `run` directly.
private func context(worker: String = "worker") -> JobContext {
    JobContext(workerID: worker, stopGracePeriod: .seconds(10), notifications: AsyncStream { $0.finish() }, logger: Logger(label: "test"))
}

/// The policy these tests were written against (from before per-program policies): each pattern
/// with no arguments, one number, or `-c` and any one-line script, and the variable JOB_VAR.
/// Tests only: `-c SCRIPT` is exactly what a real policy must never allow.
private func permissivePolicy(_ allowed: [String]) throws -> ExecPolicy {
    let number = try ExecPolicy.Value(pattern: "[0-9]+")
    let script = try ExecPolicy.Value(pattern: ".*", maxLength: 4096, allowsLeadingDash: true)
    let environment = ["JOB_VAR": try ExecPolicy.Value(pattern: "[a-z]*")]
    var programs: [ExecPolicy.Program] = []
    for pattern in allowed {
        programs.append(try ExecPolicy.Program(path: pattern, environment: environment))
        programs.append(try ExecPolicy.Program(path: pattern, arguments: ["{n}"], slots: ["n": number], environment: environment))
        programs.append(try ExecPolicy.Program(path: pattern, arguments: ["-c", "{script}"], slots: ["script": script], environment: environment))
    }
    return try ExecPolicy(programs: programs)
}

/// A named runner that records what it is asked. A job runs until stopped; its payload `fail`
/// makes it throw, `done` makes it return.
private final class RecordingRunner: NamedJobRunner {
    let recorded = Mutex<[String]>([])
    let failValidation = Mutex(false)

    var events: [String] { recorded.withLock { $0 } }

    func validate(payload: [UInt8], job: Job) throws {
        if failValidation.withLock({ $0 }) { throw ServiceError(.invalidPayload, "refused by the runner") }
        recorded.withLock { $0.append("validate \(job.key) \(String(decoding: payload, as: UTF8.self))") }
    }

    func run(payload: [UInt8], job: Job, context: JobContext) async throws {
        let text = String(decoding: payload, as: UTF8.self)
        recorded.withLock { $0.append("run \(job.key) \(text) on \(context.workerID)") }
        if text == "fail" { throw TestFailure("beta was told to fail") }
        if text == "done" { return }
        for await note in context.notifications {
            recorded.withLock { $0.append("notify \(job.key) \(String(decoding: note, as: UTF8.self))") }
        }
        recorded.withLock { $0.append("stopped \(job.key)") }
    }
}
