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
struct RegistryHandlerTests {
    @Test("routes a job to the handler its envelope names, and stop and notify to the same handler")
    func routes() async throws {
        let alpha = RecordingNamedHandler()
        let beta = RecordingNamedHandler()
        let registry = try HandlerRegistry(["alpha": alpha, "beta": beta])
        let handler = RegistryJobHandler(registry: registry, logger: HandlerLogCapture().logger)

        try await handler.start(job("k1", try JobEnvelope(handler: "alpha", payload: Array("one".utf8)).encoded()))
        #expect(alpha.events == ["start k1 one"])
        #expect(beta.events.isEmpty)
        #expect(handler.handlerName(forKey: "k1") == "alpha")

        try await handler.handleNotification(key: "k1", payload: Array("ping".utf8))
        try await handler.stop(key: "k1")
        #expect(alpha.events == ["start k1 one", "notify k1 ping", "stop k1"])
        #expect(handler.handlerName(forKey: "k1") == nil)

        // Stopping (or notifying) a key this worker does not run is a no-op.
        try await handler.stop(key: "k1")
        try await handler.handleNotification(key: "k1", payload: [])
        #expect(alpha.events.count == 3 && beta.events.isEmpty)

        // A start naming another handler for a running key stops it under the old one first.
        try await handler.start(job("k2", try JobEnvelope(handler: "alpha", payload: Array("a".utf8)).encoded()))
        try await handler.start(job("k2", try JobEnvelope(handler: "beta", payload: Array("b".utf8)).encoded()))
        #expect(alpha.events.suffix(2) == ["start k2 a", "stop k2"])
        #expect(beta.events == ["start k2 b"])
        try await handler.stop(key: "k2")
        #expect(beta.events == ["start k2 b", "stop k2"])

        // A failing start forgets the key: a later stop does not reach the handler.
        alpha.failStarts.withLock { $0 = true }
        let error = await caught { try await handler.start(job("k3", try JobEnvelope(handler: "alpha", payload: []).encoded())) }
        #expect(error is PoolError)
        #expect(handler.handlerName(forKey: "k3") == nil)
    }

    @Test("an unknown handler fails the start with the names this worker has")
    func unknownHandler() async throws {
        let handler = RegistryJobHandler(registry: try HandlerRegistry(["beta": RecordingNamedHandler(), "alpha": RecordingNamedHandler()]))
        let error = await caught { try await handler.start(job("k", try JobEnvelope(handler: "nope", payload: []).encoded())) }
        let serviceError = try #require(error as? ServiceError)
        #expect(serviceError.code == .unknownHandler)
        #expect("\(serviceError)".contains("unknown handler 'nope' (this worker has: alpha, beta)"))
        #expect(handler.runningJobs.isEmpty)

        let empty = RegistryJobHandler(registry: HandlerRegistry())
        let none = await caught { try await empty.start(job("k", try JobEnvelope(handler: "x", payload: []).encoded())) }
        #expect("\(none.map { "\($0)" } ?? "")".contains("unknown handler 'x' (this worker has: none)"))
    }

    @Test("a payload that is not an envelope fails the start clearly")
    func notAnEnvelope() async throws {
        let recorder = RecordingNamedHandler()
        let handler = RegistryJobHandler(registry: try HandlerRegistry(["alpha": recorder]))
        let error = await caught { try await handler.start(job("k", Array("plain bytes".utf8))) }
        let serviceError = try #require(error as? ServiceError)
        #expect(serviceError.code == .invalidPayload)
        #expect("\(serviceError)".contains("not a Rota job envelope"))
        #expect(recorder.events.isEmpty)
    }

    @Test("registration validates names and refuses duplicates")
    func registration() throws {
        var registry = HandlerRegistry()
        try registry.register("log", RecordingNamedHandler())
        #expect(registry.names == ["log"])
        #expect(registry["log"] != nil && registry.handler(named: "exec") == nil)
        #expect(throws: ServiceError.self) { try registry.register("log", RecordingNamedHandler()) }
        #expect(throws: ServiceError.self) { try registry.register("Bad Name", RecordingNamedHandler()) }
        #expect(throws: ServiceError.self) { try registry.register("", RecordingNamedHandler()) }
    }

    @Test("the log handler logs starts (payload cut at 1 KiB), notifications and stops")
    func logHandler() async throws {
        let logs = HandlerLogCapture()
        let handler = RegistryJobHandler(registry: try HandlerRegistry(["log": LogJobHandler(logger: logs.logger)]))
        let long = String(repeating: "é", count: 700)    // 1400 bytes
        try await handler.start(job("k", try JobEnvelope(handler: "log", payload: Array(long.utf8)).encoded()))
        try await handler.handleNotification(key: "k", payload: Array("refresh".utf8))
        try await handler.stop(key: "k")
        let started = try #require(logs.entries.first { $0.message == "job started" })
        let payload = try #require(started.metadata["payload"])
        #expect(payload.hasPrefix(String(repeating: "é", count: 512)) && payload.hasSuffix("…(1400 bytes)"))
        #expect(!payload.contains("\u{FFFD}"))
        #expect(logs.entries.contains { $0.message == "job notified" && $0.metadata["payload"] == "refresh" })
        #expect(logs.entries.contains { $0.message == "job stopped" && $0.metadata["job"] == "k" })
    }
}

@Suite("Exec handler")
struct ExecHandlerTests {
    @Test("an allowed command found on PATH starts; stop kills it within the grace period")
    func startAndStop() async throws {
        try await withExec(allowed: ["/usr/bin/sleep", "/bin/sleep"]) { exec, _ in
            try await exec.start(key: "s", payload: json(#"{"command": "sleep", "args": ["30"]}"#), job: job("s", []))
            let pid = try #require(exec.status(key: "s")?.pid)
            #expect(kill(pid, 0) == 0)

            let began = ContinuousClock.now
            try await exec.stop(key: "s")
            #expect(ContinuousClock.now - began < .seconds(4))
            #expect(isGone(pid))
            #expect(exec.status(key: "s") == nil)
            try await exec.stop(key: "s")    // unknown key: no-op
        }
    }

    @Test("a child ignoring SIGTERM is killed with SIGKILL after the grace period, with its process group")
    func sigkillAfterGrace() async throws {
        try await withExec(allowed: ["/bin/sh"]) { exec, logs in
            // The shell ignores TERM (so does the background sleep, which inherits that) and prints
            // the sleep's pid.
            let payload = json(#"{"command": "/bin/sh", "args": ["-c", "trap '' TERM; sleep 30 & echo $!; wait"], "grace_ms": 300}"#)
            try await exec.start(key: "stubborn", payload: payload, job: job("stubborn", []))
            let pid = try #require(exec.status(key: "stubborn")?.pid)
            try await eventually("the shell printed its background pid") { logs.lines(stream: "stdout", job: "stubborn").count == 1 }
            let grandchild = try #require(pid_t(logs.lines(stream: "stdout", job: "stubborn")[0]))

            let began = ContinuousClock.now
            try await exec.stop(key: "stubborn")
            let elapsed = ContinuousClock.now - began
            #expect(elapsed >= .milliseconds(300) && elapsed < .seconds(4))
            #expect(isGone(pid))
            #expect(logs.entries.contains { $0.message.contains("SIGKILL") })
            // The orphaned sleep was killed with the group (it may linger as a zombie until init reaps it).
            try await eventually("the grandchild is dead") { isGoneOrZombie(grandchild) }

            // A cancelled stop does not wait out the grace period (but still waits for the exit).
            let long = json(#"{"command": "/bin/sh", "args": ["-c", "trap '' TERM; sleep 30"], "grace_ms": 20000}"#)
            try await exec.start(key: "cancelled", payload: long, job: job("cancelled", []))
            let other = try #require(exec.status(key: "cancelled")?.pid)
            let stopBegan = ContinuousClock.now
            let stopping = Task { try await exec.stop(key: "cancelled") }
            stopping.cancel()
            try await stopping.value
            #expect(ContinuousClock.now - stopBegan < .seconds(5))
            #expect(isGone(other))
        }
    }

    @Test("commands outside the allow-list are refused and never spawned")
    func refused() async throws {
        let marker = NSTemporaryDirectory() + "rota-exec-marker-\(UInt32.random(in: 0...UInt32.max))"
        try await withExec(allowed: ["/bin/sleep", "/usr/bin/sleep"]) { exec, _ in
            for command in ["/usr/bin/touch", "touch", "/bin/../usr/bin/touch", "/bin/sleep/../../usr/bin/touch", "bin/touch"] {
                let payload = json(#"{"command": "\#(command)", "args": ["\#(marker)"]}"#)
                let error = await caught { try await exec.start(key: "t", payload: payload, job: job("t", [])) }
                #expect((error as? ServiceError)?.code == .execNotAllowed, "\(command): \(error.map { "\($0)" } ?? "no error")")
                #expect(exec.status(key: "t") == nil)
            }
            let error = await caught { try await exec.start(key: "t", payload: json(#"{"command": "/usr/bin/touch", "args": ["x"]}"#), job: job("t", [])) }
            #expect("\(error.map { "\($0)" } ?? "")".contains("is not allowed on this worker (allowed: /bin/sleep, /usr/bin/sleep)"))
            // A job may not make an allowed program load other code.
            let preload = await caught {
                try await exec.start(key: "t", payload: json(#"{"command": "/bin/sleep", "args": ["1"], "env": {"LD_PRELOAD": "/tmp/x.so"}}"#), job: job("t", []))
            }
            #expect((preload as? ServiceError)?.code == .execNotAllowed)
        }
        #expect(!FileManager.default.fileExists(atPath: marker))

        // An empty allow-list refuses everything; allow-list patterns must be absolute.
        try await withExec(allowed: []) { exec, _ in
            let error = await caught { try await exec.start(key: "t", payload: json(#"{"command": "/bin/sleep", "args": ["1"]}"#), job: job("t", [])) }
            #expect((error as? ServiceError)?.code == .execNotAllowed)
            #expect("\(error.map { "\($0)" } ?? "")".contains("--allow-exec"))
        }
        #expect(throws: ServiceError.self) { try ExecJobHandler(allowed: ["sleep"], logger: Logger(label: "test")) }

        // Allowed but missing: execFailed. Allowed through its realpath: /bin/sleep is /usr/bin/sleep
        // on merged-/usr systems.
        try await withExec(allowed: ["/nonexistent-rota/*", "/usr/bin/*"]) { exec, _ in
            let missing = await caught { try await exec.start(key: "m", payload: json(#"{"command": "/nonexistent-rota/tool"}"#), job: job("m", [])) }
            #expect((missing as? ServiceError)?.code == .execFailed)
            if let resolved = realpath("/bin/sleep", nil) {
                defer { free(resolved) }
                if String(cString: resolved) == "/usr/bin/sleep" {
                    try await exec.start(key: "real", payload: json(#"{"command": "/bin/sleep", "args": ["30"]}"#), job: job("real", []))
                    #expect(exec.status(key: "real")?.pid != nil)
                }
            }
        }
    }

    @Test("malformed payloads are refused with clear errors")
    func payloads() async throws {
        try await withExec(allowed: ["/bin/*"]) { exec, _ in
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
                let error = await caught { try await exec.start(key: "p", payload: json(payload), job: job("p", [])) }
                #expect((error as? ServiceError)?.code == .invalidPayload, "\(payload)")
                #expect("\(error.map { "\($0)" } ?? "")".contains(fragment), "\(payload): \(error.map { "\($0)" } ?? "no error")")
            }
            let spec = try ExecSpec(decoding: json(#"{"command": "x", "env": null}"#))
            #expect(spec.restart == .onFailure && spec.grace == .seconds(5) && spec.args.isEmpty && spec.env.isEmpty)
        }
    }

    @Test("restart policies: always restarts a command that exits, never and on-failure after success do not")
    func restartPolicies() async throws {
        try await withExec(allowed: ["/bin/sh"]) { exec, _ in
            try await exec.start(key: "always", payload: json(#"{"command": "/bin/sh", "args": ["-c", "exit 0"], "restart": "always"}"#), job: job("always", []))
            try await exec.start(key: "failing", payload: json(#"{"command": "/bin/sh", "args": ["-c", "exit 3"]}"#), job: job("failing", []))
            try await exec.start(key: "never", payload: json(#"{"command": "/bin/sh", "args": ["-c", "exit 0"], "restart": "never"}"#), job: job("never", []))
            try await exec.start(key: "done", payload: json(#"{"command": "/bin/sh", "args": ["-c", "exit 0"]}"#), job: job("done", []))

            try await eventually("'always' restarted twice") { (exec.status(key: "always")?.starts ?? 0) >= 3 }
            try await eventually("'on-failure' restarted a failing command") { (exec.status(key: "failing")?.starts ?? 0) >= 2 }
            #expect(exec.status(key: "failing")?.lastExit == "exit code 3")
            // A finished supervisor cannot restart anything: the runs counted are final.
            try await eventually("'never' is over") { exec.status(key: "never")?.isFinished == true }
            try await eventually("'on-failure' after success is over") { exec.status(key: "done")?.isFinished == true }
            #expect(exec.status(key: "never") == ExecJobStatus(pid: nil, starts: 1, lastExit: "exit code 0", isFinished: true))
            #expect(exec.status(key: "done")?.starts == 1)

            // A repeated start of a finished job does not run it again.
            try await exec.start(key: "never", payload: json(#"{"command": "/bin/sh", "args": ["-c", "exit 0"], "restart": "never"}"#), job: job("never", []))
            #expect(exec.status(key: "never")?.starts == 1)

            try await exec.stop(key: "always")
            try await exec.stop(key: "never")
            #expect(exec.status(key: "always") == nil && exec.status(key: "never") == nil)
        }
    }

    @Test("stdout and stderr lines reach the log with the job key")
    func output() async throws {
        try await withExec(allowed: ["/bin/sh"]) { exec, logs in
            let payload = json(#"{"command": "/bin/sh", "args": ["-c", "echo hello-out; echo second; echo hello-err >&2; printf no-newline"], "restart": "never"}"#)
            try await exec.start(key: "talk", payload: payload, job: job("talk", []))
            try await eventually("the output is logged") {
                logs.lines(stream: "stdout", job: "talk") == ["hello-out", "second", "no-newline"]
                    && logs.lines(stream: "stderr", job: "talk") == ["hello-err"]
            }
            #expect(logs.entries.contains { $0.message == "hello-out" && $0.metadata["pid"] != nil })
        }
    }

    @Test("children do not inherit the worker's environment: only PATH, listed variables and the job's env")
    func environment() async throws {
        setenv("ROTA_TEST_SECRET", "hunter2", 1)
        defer { unsetenv("ROTA_TEST_SECRET") }
        try await withExec(allowed: ["/usr/bin/env"]) { exec, logs in
            let payload = json(#"{"command": "/usr/bin/env", "env": {"JOB_VAR": "yes"}, "restart": "never"}"#)
            try await exec.start(key: "env", payload: payload, job: job("env", []))
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
        try await withExec(allowed: ["/bin/sh"]) { exec, logs in
            let script = #"read -r _ _ _ _ pgrp _ < /proc/$$/stat; echo "pgrp=$pgrp pid=$$"; grep -E '^Sig(Blk|Ign)' /proc/self/status; ls /proc/$$/fd | tr '\n' ' '; echo"#
            let payload = try JSONSerialization.data(withJSONObject: ["command": "/bin/sh", "args": ["-c", script], "restart": "never"])
            try await exec.start(key: "iso", payload: Array(payload), job: job("iso", []))
            let pid = try #require(exec.status(key: "iso")?.pid)
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

    @Test("a repeated start is idempotent; a new payload replaces the child; stopAll ends everything")
    func idempotence() async throws {
        try await withExec(allowed: ["/bin/sleep", "/usr/bin/sleep"]) { exec, _ in
            let payload = json(#"{"command": "/bin/sleep", "args": ["30"]}"#)
            try await exec.start(key: "i", payload: payload, job: job("i", []))
            let first = try #require(exec.status(key: "i")?.pid)
            try await exec.start(key: "i", payload: payload, job: job("i", []))
            #expect(exec.status(key: "i")?.pid == first && exec.status(key: "i")?.starts == 1)

            try await exec.start(key: "i", payload: json(#"{"command": "/bin/sleep", "args": ["31"]}"#), job: job("i", []))
            let second = try #require(exec.status(key: "i")?.pid)
            #expect(second != first)
            #expect(isGone(first))

            // Through the registry, as a worker runs it.
            let registry = RegistryJobHandler(registry: try HandlerRegistry(["exec": exec]))
            try await registry.start(job("r", try JobEnvelope(handler: "exec", payload: payload).encoded()))
            let third = try #require(exec.status(key: "r")?.pid)

            await exec.stopAll()
            #expect(isGone(second) && isGone(third))
            #expect(exec.keys.isEmpty)
            let late = await caught { try await exec.start(key: "late", payload: payload, job: job("late", [])) }
            #expect((late as? ServiceError)?.code == .execFailed)
        }
    }
}

// MARK: - Support

/// Runs `body` with an exec handler allowing `allowed` under the tests' permissive policy
/// (``permissivePolicy(_:)``) and a log capture; always stops every child.
private func withExec(
    allowed: [String],
    _ body: (ExecJobHandler, HandlerLogCapture) async throws -> Void
) async throws {
    try await withExecHandler(policy: try permissivePolicy(allowed), body)
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

/// A named handler that records what it is asked.
private final class RecordingNamedHandler: NamedJobHandler {
    let recorded = Mutex<[String]>([])
    let failStarts = Mutex(false)

    var events: [String] { recorded.withLock { $0 } }

    func start(key: String, payload: [UInt8], job: Job) async throws {
        if failStarts.withLock({ $0 }) { throw PoolError.requeue }
        recorded.withLock { $0.append("start \(key) \(String(decoding: payload, as: UTF8.self))") }
    }

    func stop(key: String) async throws {
        recorded.withLock { $0.append("stop \(key)") }
    }

    func handleNotification(key: String, payload: [UInt8]) async throws {
        recorded.withLock { $0.append("notify \(key) \(String(decoding: payload, as: UTF8.self))") }
    }
}
