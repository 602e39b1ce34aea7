import Foundation
import Logging
import Rota
import RotaService
import RotaTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

// The exec runner's trust boundary (README "The exec handler"): a program runs only with the
// arguments and environment its policy declares, refused before anything is spawned; the guard
// process between the worker and each job kills what the job leaves behind (setsid daemons
// included) and everything when the worker dies, SIGKILL included. Real processes throughout;
// the process tests run one at a time.

@Suite("Exec policy files")
struct ExecPolicyFileTests {
    @Test("a policy file declares programs with templates, slots, environment, limits and directories")
    func parses() throws {
        let text = """
            work_dir: /tmp
            inherit_env: [LANG]
            programs:
              - name: import
                path: /opt/etl/bin/import
                args: ["--source={source}", "--day", "{day}", "{{literal}}"]
                slots:
                  source: "[a-z][a-z0-9_]{0,31}"
                  day: {pattern: "[0-9]{4}-[0-9]{2}-[0-9]{2}", max_length: 10}
                env: {IMPORT_BATCH: "[0-9]{1,5}"}
                set_env: {IMPORT_LOG: json, PATH: /opt/etl/bin}
                limits: {cpu_seconds: 60, address_space_mb: 512, open_files: 64, file_size_mb: 1}
                work_dir: /var/tmp
              - path: /usr/bin/sleep
                args: ["{seconds}"]
                slots: {seconds: {pattern: "[0-9]+", allow_leading_dash: false}}
            """
        let policy = try ExecPolicy.parse(text, path: "policy.yaml")
        #expect(policy.workDirectory == "/tmp" && policy.inheritedEnvironment == ["LANG"])
        #expect(policy.programs.count == 2)
        let program = try #require(policy.programs.first)
        #expect(program.name == "import" && program.path == "/opt/etl/bin/import" && program.workDirectory == "/var/tmp")
        #expect(program.arguments == ["--source={source}", "--day", "{day}", "{{literal}}"])
        #expect(program.slots["day"]?.maxLength == 10 && program.slots["source"]?.allowsLeadingDash == false)
        #expect(program.environment.keys.sorted() == ["IMPORT_BATCH"])
        #expect(program.fixedEnvironment == ["IMPORT_LOG": "json", "PATH": "/opt/etl/bin"])
        #expect(program.limits == ExecPolicy.Limits(cpuSeconds: 60, addressSpaceBytes: 512 << 20, openFiles: 64, fileSizeBytes: 1 << 20))
        #expect(program.origin == "policy.yaml:4")
        #expect(policy.programs[1].name == nil && policy.programs[1].slots["seconds"]?.pattern == "[0-9]+")
    }

    static let badFiles: [(String, String)] = [
        ("programs: [", "policy.yaml:2:1: error: YAML syntax error"),
        ("work_dir: /tmp\n", "policy.yaml:1:1: error: missing 'programs:'"),
        ("programs:\n  - path: bin/tool\n", "policy.yaml:2:11: error: path 'bin/tool' must be an absolute path"),
        ("programs:\n  - path: /bin/x\n    argz: []\n", "policy.yaml:3:5: error: unknown field 'argz'"),
        ("programs:\n  - path: /bin/x\n    args: [\"{n}\"]\n    slots:\n      n: [0-9]\n", "policy.yaml:5:10: error: slots.n must be a quoted pattern"),
        ("programs:\n  - path: /bin/x\n    args: [\"{n}\"]\n    slots: {n: \"a)\"}\n", "policy.yaml:4:16: error: slots.n: the pattern \"a)\" is not a valid regular expression"),
        ("programs:\n  - path: /bin/x\n    args: [\"{n}\"]\n", "policy.yaml:2:5: error: programs[0]: the arguments use the slot '{n}', which 'slots' does not declare"),
        ("programs:\n  - path: /bin/x\n    slots: {n: \"[0-9]+\"}\n", "the slot 'n' is declared but no argument uses it"),
        ("programs:\n  - path: /bin/x\n    args: [\"{a}:{b}\"]\n    slots: {a: x, b: y}\n", "policy.yaml:3:12: error: argument \"{a}:{b}\" has more than one slot"),
        ("programs:\n  - path: /bin/x\n    args: [\"{a\"]\n", "'{' without a closing '}'"),
        ("programs:\n  - path: /bin/x\n    env: {LD_PRELOAD: \".*\"}\n", "jobs may not set LD_PRELOAD"),
        ("programs:\n  - path: /bin/x\n    env: {GIT_CONFIG_COUNT: \"[0-9]\"}\n", "jobs may not set GIT_CONFIG_COUNT"),
        ("programs:\n  - name: x\n    path: /bin/*\n", "a program with a name runs one executable, so its path cannot be a glob"),
        ("programs:\n  - {name: x, path: /bin/a}\n  - {name: x, path: /bin/b}\n", "program name 'x' is declared twice (policy.yaml:2 and policy.yaml:3)"),
        ("programs:\n  - path: /bin/x\n    limits: {open_files: -1}\n", "policy.yaml:3:26: error: limits.open_files must be from 1"),
        ("programs:\n  - path: /bin/x\n    limits: {memory: 1}\n", "unknown field 'memory'"),
        ("programs:\n  - path: /bin/x\n    args: [\"{n}\"]\n    slots: {n: {pattern: x, allow_leading_dash: yes}}\n", "'slots.n.allow_leading_dash' must be true or false"),
        ("work_dir: relative\nprograms: []\n", "policy.yaml:1:11: error: work_dir 'relative' must be an absolute path"),
        ("inherit_env: [\"A=B\"]\nprograms: []\n", "'A=B' is not a variable name"),
    ]

    @Test("a bad policy file is refused naming the file, line, column and cause", arguments: badFiles)
    func refusesBadFiles(text: String, expected: String) {
        do throws(ServiceError) {
            _ = try ExecPolicy.parse(text, path: "policy.yaml")
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains(expected), "\(error.message)")
        }
    }

    @Test("a policy file others may write is refused; rota worker exits 64 on a bad policy or --allow-exec")
    func fileAndCommandLine() async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let good = directory.appendingPathComponent("good.yaml").path
        try "programs:\n  - path: /usr/bin/true\n".write(toFile: good, atomically: true, encoding: .utf8)
        #expect(try ExecPolicy.load(path: good).programs.map(\.path) == ["/usr/bin/true"])
        chmod(good, 0o666)
        #expect(throws: ServiceError.self) { try ExecPolicy.load(path: good) }
        #expect(((try? ExecPolicy.load(path: good)) == nil))

        let bad = directory.appendingPathComponent("bad.yaml").path
        try "programs:\n  - path: /usr/bin/true\n    args: [\"{x}\"]\n".write(toFile: bad, atomically: true, encoding: .utf8)
        let target = ["--redis", "redis://127.0.0.1:1", "--pool", "exec-policy"]
        let refused = try await rotaCommand(["worker", "--exec-policy", bad] + target)
        #expect(refused.status == 64, "\(refused.err)")
        #expect(refused.err.contains("\(bad):2:5: error:") && refused.err.contains("'{x}'"), "\(refused.err)")
        let writable = try await rotaCommand(["worker", "--exec-policy", good] + target)
        #expect(writable.status == 64 && writable.err.contains("writable by other users"), "\(writable.err)")
        let relative = try await rotaCommand(["worker", "--allow-exec", "bin/tool"] + target)
        #expect(relative.status == 64 && relative.err.contains("must be an absolute path"), "\(relative.err)")
    }
}

@Suite("Exec boundary", .serialized)
struct ExecBoundaryTests {
    @Test("an allowed program with an argument or variable it does not declare is refused before spawning")
    func refusedBeforeSpawning() async throws {
        let base = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: base) }
        let policy = try ExecPolicy(
            programs: [
                try ExecPolicy.Program(
                    path: "/usr/bin/touch", arguments: ["--", "{file}"], slots: ["file": try ExecPolicy.Value(pattern: "[a-z]{1,16}")],
                    environment: ["TOUCH_NOTE": try ExecPolicy.Value(pattern: "[a-z]+")]
                ),
            ],
            workDirectory: base.path
        )
        try await withExecRunner(policy: policy) { exec, jobs, logs in
            // Allowed: it runs in the job's own directory under the base.
            try jobs.start("ok", json(#"{"command": "/usr/bin/touch", "args": ["--", "made"], "env": {"TOUCH_NOTE": "x"}, "restart": "never"}"#))
            #expect(describe(try await jobs.outcome("ok")) == "returned")
            let directories = try FileManager.default.contentsOfDirectory(atPath: base.path)
            #expect(directories.count == 1 && directories.first?.hasPrefix("ok-") == true)
            #expect(FileManager.default.fileExists(atPath: base.appendingPathComponent(directories[0]).appendingPathComponent("made").path))

            let cases: [(args: String, env: String, expected: String)] = [
                (#"["--", "-exec"]"#, "{}", #"argument 2 "-exec" does not fit the slot 'file': "-exec" starts with '-'"#),
                (#"["--", "../up"]"#, "{}", "has a '..' path component"),
                (#"["--", "a/b"]"#, "{}", #"does not match the pattern "[a-z]{1,16}""#),
                (#"["--", "made\n-x"]"#, "{}", "does not match the pattern"),
                (#"["--config=/tmp/x", "made"]"#, "{}", #"argument 1 "--config=/tmp/x" must be "--""#),
                (#"["--", "made", "--", "more"]"#, "{}", #"it takes 2 arguments ("--" "{file}"), not 4"#),
                (#"["--", "made"]"#, #"{"PATH": "/tmp"}"#, "may not set the environment variable PATH (it may set: TOUCH_NOTE)"),
                (#"["--", "made"]"#, #"{"GIT_CONFIG_COUNT": "1"}"#, "may not set the environment variable GIT_CONFIG_COUNT"),
                (#"["--", "made"]"#, #"{"LD_PRELOAD": "/tmp/x.so"}"#, "may not set the environment variable LD_PRELOAD"),
                (#"["--", "made"]"#, #"{"TOUCH_NOTE": "A B"}"#, #"the environment variable TOUCH_NOTE "A B" does not match"#),
            ]
            for (index, refused) in cases.enumerated() {
                let key = "refused-\(index)"
                let payload = json(#"{"command": "/usr/bin/touch", "args": \#(refused.args), "env": \#(refused.env)}"#)
                let error = await caught { try jobs.start(key, payload) }
                let message = error.map { "\($0)" } ?? "no error"
                #expect((error as? ServiceError)?.code == .execNotAllowed, "\(refused): \(message)")
                #expect(message.contains("/usr/bin/touch") && message.contains(refused.expected), "\(refused): \(message)")
                #expect(exec.status(key: key) == nil && !jobs.isRunning(key))
            }
            // Nothing ran for them: no start logged, no directory made.
            #expect(logs.entries.filter { $0.message == "exec: command started" }.count == 1)
            #expect(try FileManager.default.contentsOfDirectory(atPath: base.path) == directories)
        }

        // --allow-exec: the program, with nothing from the job.
        try await withExecRunner(policy: try ExecPolicy(allowing: ["/usr/bin/touch"])) { _, jobs, _ in
            let withArguments = await caught { try jobs.start("a", json(#"{"command": "/usr/bin/touch", "args": ["x"]}"#)) }
            #expect((withArguments as? ServiceError)?.code == .execNotAllowed)
            #expect("\(withArguments.map { "\($0)" } ?? "")".contains("--allow-exec allows no arguments or environment; declare them in an --exec-policy file"))
            let withEnvironment = await caught { try jobs.start("e", json(#"{"command": "/usr/bin/touch", "env": {"X": "1"}}"#)) }
            #expect((withEnvironment as? ServiceError)?.code == .execNotAllowed)
        }
    }

    @Test("the slot form fills the template; values that would inject options, paths or words are refused")
    func slots() async throws {
        let show = try ExecPolicy.Program(
            name: "show", path: "/usr/bin/printf", arguments: [#"%s|%s|%s\n"#, "--name={name}", "{file}", "{name}"],
            slots: ["name": try ExecPolicy.Value(pattern: "[a-z0-9_-]{1,32}"), "file": try ExecPolicy.Value(pattern: "[a-z0-9.]{1,64}")]
        )
        try await withExecRunner(policy: try ExecPolicy(programs: [show])) { _, jobs, logs in
            try jobs.start("filled", json(#"{"program": "show", "slots": {"name": "orders", "file": "x.csv"}, "restart": "never"}"#))
            // The same arguments written out in full match the same template.
            let written = #"{"command": "/usr/bin/printf", "args": ["%s|%s|%s\\n", "--name=orders", "y.csv", "orders"], "restart": "never"}"#
            try jobs.start("written", json(written))
            try await eventually("both printed their arguments") {
                logs.lines(stream: "stdout", job: "filled") == ["--name=orders|x.csv|orders"]
                    && logs.lines(stream: "stdout", job: "written") == ["--name=orders|y.csv|orders"]
            }

            let cases: [(payload: String, expected: String)] = [
                (#"{"program": "show", "slots": {"name": "-exec", "file": "x"}}"#, #"slot 'name' "-exec" starts with '-'"#),
                (#"{"program": "show", "slots": {"name": "--config=/etc/x", "file": "x"}}"#, "starts with '-'"),
                (#"{"program": "show", "slots": {"name": "a", "file": "/etc/passwd"}}"#, #"slot 'file' "/etc/passwd" does not match the pattern"#),
                (#"{"program": "show", "slots": {"name": "a", "file": ".."}}"#, "has a '..' path component"),
                (#"{"program": "show", "slots": {"name": "a b", "file": "x"}}"#, "does not match the pattern"),
                (#"{"program": "show", "slots": {"name": "a", "file": "x", "extra": "1"}}"#, "gives the slot 'extra', which it does not have (slots: file, name)"),
                (#"{"program": "show", "slots": {"name": "a"}}"#, "does not give the slot 'file'"),
                (#"{"program": "show", "slots": {"name": "a", "file": "x"}, "env": {"A": "1"}}"#, "may not set the environment variable A (it may set none)"),
                (#"{"program": "nope"}"#, "this worker has no program named 'nope' (programs: show)"),
                (#"{"command": "/usr/bin/printf", "args": ["%s|%s|%s\\n", "--name=orders", "x", "other"]}"#, "must repeat the slot 'name' as given before (\"orders\")"),
                (#"{"command": "/usr/bin/printf", "args": ["%s|%s|%s\\n", "--config=x", "x", "x"]}"#, #"does not have the form "--name={name}""#),
                (#"{"command": "/usr/bin/printf", "args": ["%n", "--name=a", "x", "a"]}"#, #"argument 1 "%n" must be "%s|%s|%s\\n""#),
                (#"{"command": "/usr/bin/printf", "args": ["%s|%s|%s\\n", "--name=-x", "x", "-x"]}"#, "starts with '-'"),
            ]
            for (index, refused) in cases.enumerated() {
                let key = "refused-\(index)"
                let error = await caught { try jobs.start(key, json(refused.payload)) }
                let message = error.map { "\($0)" } ?? "no error"
                #expect((error as? ServiceError)?.code == .execNotAllowed, "\(refused.payload): \(message)")
                #expect(message.contains(refused.expected), "\(refused.payload): \(message)")
            }
            #expect(logs.entries.filter { $0.message == "exec: command started" }.count == 2)
        }
    }

    @Test("a child's environment: PATH, the inherited worker variables, the program's fixed ones and the job's declared ones")
    func environment() async throws {
        setenv("ROTA_BOUNDARY_SECRET", "hunter2", 1)
        defer { unsetenv("ROTA_BOUNDARY_SECRET") }
        let program = try ExecPolicy.Program(
            path: "/usr/bin/env", environment: ["GREETING": try ExecPolicy.Value(pattern: "[a-z]+")], fixedEnvironment: ["FIXED": "1"]
        )
        try await withExecRunner(policy: try ExecPolicy(programs: [program])) { _, jobs, logs in
            try jobs.start("env", json(#"{"command": "/usr/bin/env", "env": {"GREETING": "hello"}, "restart": "never"}"#))
            #expect(describe(try await jobs.outcome("env")) == "returned")
            try await eventually("its output is logged") { logs.lines(stream: "stdout", job: "env").contains("GREETING=hello") }
            let lines = logs.lines(stream: "stdout", job: "env")
            #expect(lines.contains("FIXED=1") && lines.contains { $0.hasPrefix("PATH=") })
            #expect(!lines.contains { $0.hasPrefix("ROTA_BOUNDARY_SECRET=") }, "\(lines)")
        }
    }

    @Test("setsid and double-forked descendants are killed on stop and when the job exits on its own; the program dies with its guard")
    func descendantsDie() async throws {
        let programs = [
            // One daemon in a session of its own, one orphaned by its (sub)shell.
            try ExecPolicy.Program(name: "daemons", path: "/bin/sh", arguments: ["-c", "setsid sleep 300 & echo $!; (setsid sleep 300 & echo $!); wait"]),
            try ExecPolicy.Program(name: "leaves", path: "/bin/sh", arguments: ["-c", "setsid sleep 300 & echo $!"]),
            try ExecPolicy.Program(name: "sleeper", path: "/bin/sleep", arguments: ["300"]),
        ]
        try await withExecRunner(policy: try ExecPolicy(programs: programs)) { exec, jobs, logs in
            let pid = try await startChild(jobs, exec, "daemons", json(#"{"program": "daemons"}"#))
            try await eventually("both daemons printed their pids") { logs.lines(stream: "stdout", job: "daemons").count == 2 }
            let daemons = logs.lines(stream: "stdout", job: "daemons").compactMap { pid_t($0) }
            #expect(daemons.count == 2)
            // Each escaped the job's session and process group (once it ran setsid).
            try await eventually("the daemons are in sessions of their own") { daemons.allSatisfy { getsid($0) == $0 } }
            #expect(daemons.allSatisfy { getsid($0) != getsid(pid) && getpgid($0) != pid })
            #expect(describe(await jobs.stop("daemons")) == "returned")
            // Killed and reaped by the guard before the stopped call returned: not even zombies.
            #expect(isGone(pid))
            for daemon in daemons { #expect(isGone(daemon), "daemon \(daemon) survived the stop") }

            try jobs.start("leaves", json(#"{"program": "leaves", "restart": "never"}"#))
            #expect(describe(try await jobs.outcome("leaves")) == "returned")
            let left = try #require(logs.lines(stream: "stdout", job: "leaves").first.flatMap { pid_t($0) })
            #expect(isGone(left), "the daemon it left behind survived")

            // Its guard SIGKILLed: the program dies with it (its parent-death signal).
            let program = try await startChild(jobs, exec, "orphaned", json(#"{"program": "sleeper", "restart": "never"}"#))
            let guardian = try #require(logs.entries.last { $0.message == "exec: command started" && $0.metadata["job"] == "orphaned" }?.metadata["guard"].flatMap { pid_t($0) })
            kill(guardian, SIGKILL)
            try await eventually("the program died with its guard") { isGoneOrZombie(program) }
            // The job failed: its program did not end by itself with a success.
            if case .success = try await jobs.outcome("orphaned") { Issue.record("the orphaned job returned") }
        }
    }

    @Test("each job runs in a 0700 directory of its own, under its program's resource limits; a CPU limit ends a spinning job")
    func directoryAndLimits() async throws {
        let base = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: base) }
        let limits = ExecPolicy.Limits(cpuSeconds: 30, addressSpaceBytes: 1 << 30, openFiles: 64, fileSizeBytes: 1 << 20)
        let programs = [
            try ExecPolicy.Program(name: "where", path: "/bin/sh", arguments: ["-c", "pwd; ulimit -n; ulimit -t; ulimit -v; ulimit -f"], limits: limits),
            try ExecPolicy.Program(name: "spin", path: "/bin/sh", arguments: ["-c", "while :; do :; done"], limits: ExecPolicy.Limits(cpuSeconds: 1)),
        ]
        try await withExecRunner(policy: try ExecPolicy(programs: programs, workDirectory: base.path)) { _, jobs, logs in
            try jobs.start("where/job 1", json(#"{"program": "where", "restart": "never"}"#))
            try await eventually("the limits are printed") { logs.lines(stream: "stdout", job: "where/job 1").count == 5 }
            let lines = logs.lines(stream: "stdout", job: "where/job 1")
            let directory = URL(fileURLWithPath: lines[0])
            #expect(directory.deletingLastPathComponent().standardizedFileURL.path == base.standardizedFileURL.path, "\(lines)")
            #expect(directory.lastPathComponent.hasPrefix("where_job_1-"))
            let mode = try FileManager.default.attributesOfItem(atPath: directory.path)[.posixPermissions] as? Int
            #expect(mode == 0o700)
            // Open files, CPU seconds, address space in KiB, file size in 512-byte blocks.
            #expect(Array(lines[1...]) == ["64", "30", "\((1 << 30) / 1024)", "\((1 << 20) / 512)"])

            try jobs.start("spin", json(#"{"program": "spin", "restart": "never"}"#))
            // The CPU limit ends the loop: the job fails with the signal.
            let spun = describe(try await jobs.outcome("spin", timeout: .seconds(15)))
            #expect(spun.contains("ended with signal \(SIGXCPU)"), "\(spun)")
        }
    }

    @Test("a job and the daemon it started die with their worker when the worker is SIGKILLed")
    func diesWithWorker() async throws {
        let plan = """
            pool: e2e
            producers:
              - name: execs
                every: 1s
                mode: exact
                jobs:
                  - key: exec/daemon
                    handler: exec
                    payload: {program: daemon}
            """
        try await withRunCluster(plans: plan) { cluster in
            let policy = cluster.directory.appendingPathComponent("exec-policy.yaml").path
            try """
                programs:
                  - name: daemon
                    path: /bin/sh
                    args: ["-c", "setsid sleep 300 & echo $!; exec sleep 300"]
                """.write(toFile: policy, atomically: true, encoding: .utf8)
            let database = cluster.directory.appendingPathComponent("n1.sqlite").path
            let node = try RunNode(label: "n1", database: database, arguments: [
                "run", "--plans", cluster.plans.path, "--db", database, "--redis", cluster.redisURL, "--pool", cluster.pool,
                "--workers", "1", "--name", "n1", "--log-format", "json", "--exec-policy", policy,
            ])
            defer { node.killForCleanup() }
            let started = try await poll("the exec job started", timeout: .seconds(60), diagnostics: node.diagnostics) {
                node.logs("exec: command started").first.flatMap { $0["pid"] }.flatMap { pid_t($0) }
            }
            let daemon = try await poll("the daemon's pid", timeout: .seconds(10), diagnostics: node.diagnostics) {
                node.entries.first { $0["job"] == "exec/daemon" && $0["stream"] == "stdout" }?["message"].flatMap { pid_t($0) }
            }
            #expect(kill(started, 0) == 0 && kill(daemon, 0) == 0)

            try await node.kill()
            try await eventually("the job and its daemon died with the worker", timeout: .seconds(5)) {
                isGoneOrZombie(started) && isGoneOrZombie(daemon)
            }
        }
    }
}

/// A new directory under the temporary directory, mode 0700.
private func temporaryDirectory() throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("rota-exec-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
    return url
}
