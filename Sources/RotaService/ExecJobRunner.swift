import Foundation
import Logging
import Rota
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The built-in `exec` runner: each job runs a program the worker's ``ExecPolicy`` allows, as a
/// supervised child process (Linux only).
///
/// **Payload** (JSON; `command` or `program` is required, unknown fields are refused):
///
/// ```json
/// {"program": "import", "slots": {"source": "crm"}, "env": {"IMPORT_BATCH": "500"},
///  "restart": "on-failure", "grace_ms": 5000}
/// {"command": "/usr/bin/sleep", "args": ["30"]}
/// ```
///
/// - `program` + `slots`: a program of the policy by name, its argument template filled with the
///   slot values (each checked against its slot's constraints).
/// - `command` + `args`: an absolute path, or a name looked up on the worker's `PATH` (never on the
///   job's `env`, and only through absolute `PATH` entries; `.` and `..` components are refused),
///   and the whole argument list (`argv[1...]`; `argv[0]` is `command` as written), which must
///   match the template of a program the policy declares for that path.
/// - `env`: variables for the child; each must be declared by the program, with a value that fits
///   its constraints. The child also gets `PATH` (the worker's search path), the worker variables
///   the policy lists in ``ExecPolicy/inheritedEnvironment`` and the program's fixed variables —
///   nothing else of the worker's environment.
/// - `restart`: `never`, `on-failure` (the default: restart after a non-zero exit or a death by
///   signal) or `always`. Restarts wait a back-off of 1 s doubling to 30 s (``Options``); a run that
///   lasted at least the maximum back-off resets it.
/// - `grace_ms`: how long a stop waits after SIGTERM before SIGKILL, default 5000, at most 600000,
///   and at most what the worker's stop grace period (`JobContext.stopGracePeriod`) leaves after
///   ``Options/outputDrainTimeout``: past that period the pool reports the stop as failed.
///
/// **Paths.** A command is a program of the policy when its absolute path as resolved (after the
/// `PATH` lookup, before following symlinks) or its `realpath` matches the program's path
/// (`fnmatch(3)` with `FNM_PATHNAME | FNM_PERIOD` for the globs of `--allow-exec`): `/bin/sleep` is
/// `/usr/bin/sleep` on a merged-/usr system. The resolved path never contains `.`/`..`, so a glob
/// cannot be walked out of its directory; symlinks inside allowed directories are trusted (only
/// whoever may write there can create them). What is spawned is the `realpath` that was checked.
///
/// A job the policy does not allow throws ``ServiceError/Code/execNotAllowed`` from
/// ``validate(payload:job:)``, naming the program and the refused argument or variable: its start
/// fails and nothing is spawned. An allowed program that is missing or not executable throws
/// ``ServiceError/Code/execFailed`` there too. A program that cannot be started once accepted (its
/// working directory cannot be made, a limit cannot be set) fails the job: ``run(payload:job:context:)``
/// throws ``ServiceError/Code/execFailed``.
///
/// **Processes.** Each run is a guard process (this executable, `/proc/self/exe`, started in a
/// mode of its own before its `main`: `CRotaExecGuard`) with the program as its child. The guard is
/// spawned with `posix_spawn`: an empty signal mask and default dispositions (the worker's threads
/// block signals), a process group of its own, stdin from `/dev/null`, every other inherited
/// descriptor closed. The program gets its own process group, the job's working directory
/// (``ExecPolicy/workDirectory``, else `/`), the program's resource limits, and SIGKILL as its
/// parent-death signal. The guard is a child subreaper: what the program leaves behind, `setsid`
/// or double-forked daemons included, stays its descendant. When the worker closes the guard's
/// control socket, or dies (SIGKILL included: the kernel closes the socket), or the program exits,
/// the guard SIGKILLs every descendant and exits. stdout and stderr go through pipes, each read by
/// a dedicated thread (blocking reads never hold a Swift concurrency thread) and logged line by
/// line at info level with `job`, `pid` and `stream` metadata. A third thread per run reads the
/// guard's reports (`started PID`, `exited STATUS`) and waits for the guard's exit.
///
/// **Structure.** A job is one call of ``run(payload:job:context:)``, in the task the worker gives
/// it: it spawns the child, waits for it, restarts it per policy, and returns only once the child
/// and everything it started are gone. Nothing runs outside that call (no unstructured task).
///
/// **Stop** (the call's task is cancelled): the guard sends SIGTERM (and SIGCONT) to the program's
/// process group, the call waits up to the grace period, then has the guard SIGKILL every
/// descendant, and returns once the guard has been reaped — so nothing the job started is left.
/// The waits after the cancellation do not observe it (they would end at once): they are timed.
///
/// **The program ending by itself** ends the job when its restart policy says so: `never` after
/// any exit, `on-failure` after a success. A success returns (the job log says `finished`); a
/// failure (non-zero exit code, a signal) throws ``ServiceError/Code/execExited`` naming the
/// status (`failed`). What the program left running is killed either way.
///
/// **One child per key.** A run of a key waits for a previous run of the same key in this runner
/// (a job handed between two workers of one process) to be gone before it spawns, so there is
/// never more than one child per key here.
public final class ExecJobRunner: NamedJobRunner {
    /// Timings and the lookup path.
    public struct Options: Sendable {
        /// The first restart back-off; it doubles after each restart up to ``maxRestartBackoff``.
        public var restartBackoff: Duration = .seconds(1)
        public var maxRestartBackoff: Duration = .seconds(30)
        /// How long to wait, once a child has exited, for the last lines of its output.
        public var outputDrainTimeout: Duration = .seconds(1)
        /// Directories searched for command names without `/` (relative entries are skipped).
        /// Defaults to the worker's `PATH`.
        public var searchPath: [String]

        public init() {
            searchPath = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin")
                .split(separator: ":").map(String.init)
        }
    }

    /// The default of `grace_ms`.
    public static let defaultGrace: Duration = .seconds(5)

    /// What jobs may run.
    public let policy: ExecPolicy
    public let options: Options
    let logger: Logger

    private struct State {
        /// The run of each key that owns its child (see "One child per key").
        var runs: [String: ExecRun] = [:]
        var closed = false
    }

    private let state = Mutex(State())

    /// What a child starts from before its program's fixed variables and its job's `env`: `PATH`
    /// and the inherited worker variables.
    var childEnvironment: [String: String] {
        let own = ProcessInfo.processInfo.environment
        var environment: [String: String] = ["PATH": options.searchPath.joined(separator: ":")]
        for name in policy.inheritedEnvironment { if let value = own[name] { environment[name] = value } }
        return environment
    }

    /// - Throws: ``ServiceError/Code/invalidArgument`` when a working directory base is missing or
    ///   writable by other users, or a limit exceeds what this process may grant.
    public init(policy: ExecPolicy, logger: Logger, options: Options = Options()) throws(ServiceError) {
        let bases = Set([policy.workDirectory].compactMap { $0 } + policy.programs.compactMap(\.workDirectory))
        for base in bases.sorted() {
            var info = stat()
            guard stat(base, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
                throw ServiceError(.invalidArgument, "exec work_dir \(base) is not an existing directory (create it, owned by the worker's user, mode 0700 or 0755)")
            }
            guard info.st_mode & 0o022 == 0 else {
                throw ServiceError(.invalidArgument, "exec work_dir \(base) is writable by other users (mode \(String(info.st_mode & 0o777, radix: 8))): they could replace a job's directory; chmod go-w it")
            }
        }
        if geteuid() != 0 {
            for program in policy.programs {
                for (name, value, resource) in program.limits.ordered {
                    guard let value else { continue }
                    var current = rlimit()
                    // rlim_t.max: RLIM_INFINITY, whose macro does not import.
                    guard getrlimit(resource, &current) == 0, current.rlim_max != rlim_t.max else { continue }
                    if UInt64(value) > UInt64(current.rlim_max) {
                        throw ServiceError(.invalidArgument, "\(program.origin): limits.\(name) is above this worker's hard limit (\(current.rlim_max)); only root may raise it")
                    }
                }
            }
        }
        self.policy = policy
        self.logger = logger
        self.options = options
    }

    /// The `--allow-exec` form: each pattern (a glob on absolute paths) a program that runs
    /// without arguments or environment from the job (``ExecPolicy/init(allowing:)``).
    public convenience init(allowed: [String], logger: Logger, options: Options = Options()) throws(ServiceError) {
        try self.init(policy: ExecPolicy(allowing: allowed), logger: logger, options: options)
    }

    // MARK: - NamedJobRunner

    /// Decodes the payload and checks it against the policy (see the type's documentation);
    /// nothing is spawned.
    public func validate(payload: [UInt8], job: Job) throws {
        try checkOpen(job.key)
        _ = try authorize(ExecSpec(decoding: payload))
    }

    /// Runs the job's program until its restart policy ends it or the task is cancelled (stopped);
    /// returns once the child and what it started are gone.
    public func run(payload: [UInt8], job: Job, context: JobContext) async throws {
        // Checked again: validate ran in another call, and the policy's files may have changed.
        let spec = try ExecSpec(decoding: payload)
        let invocation = try authorize(spec)
        var jobLogger = self.logger
        jobLogger[metadataKey: "job"] = "\(job.key)"
        jobLogger[metadataKey: "worker"] = "\(context.workerID)"
        let logger = jobLogger
        // The stop must end within the worker's stop grace period, reaping and draining included.
        let budget = max(.zero, context.stopGracePeriod - options.outputDrainTimeout)
        if spec.grace > budget {
            logger.info("exec: grace_ms is longer than the worker's stop grace period allows; SIGKILL comes earlier", metadata: [
                "grace": "\(spec.grace)", "used": "\(budget)",
            ])
        }
        let run = ExecRun(key: job.key, spec: spec, invocation: invocation, grace: min(spec.grace, budget), runner: self, logger: logger)
        guard try await claim(run) else { return }
        defer { release(run) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            // Notifications mean nothing to a program; they are read (and dropped) so that none
            // pile up in the job's stream.
            group.addTask {
                for await note in context.notifications {
                    logger.debug("exec: notification ignored: the exec handler does not take notifications", metadata: ["bytes": "\(note.count)"])
                }
            }
            defer { group.cancelAll() }
            try await run.supervise()
        }
    }

    /// Stops every job's child (SIGTERM, grace, SIGKILL) and refuses new jobs: call it before the
    /// worker's process exits. Returns once every child is gone. The workers' own stops end the
    /// jobs first when the node closes; this is the net for anything still running.
    public func stopAll() async {
        let runs = state.withLock { state -> [ExecRun] in
            state.closed = true
            return Array(state.runs.values)
        }
        await withDiscardingTaskGroup { group in
            for run in runs {
                group.addTask { await run.shutDown() }
            }
        }
    }

    /// What the runner knows about a running job, nil when it does not run it.
    public func status(key: String) -> ExecJobStatus? {
        state.withLock { $0.runs[key] }?.status.withLock { $0 }
    }

    /// The keys of the jobs running here.
    public var keys: [String] { state.withLock { Array($0.runs.keys) } }

    // MARK: - Internals

    private func checkOpen(_ key: String) throws(ServiceError) {
        if state.withLock({ $0.closed }) {
            throw ServiceError(.execFailed, "exec: the handler is shut down; job '\(key)' not started")
        }
    }

    /// Makes `run` the owner of its key once a previous run of the key is gone. False when the
    /// task was cancelled while waiting (stopped before it ran).
    private func claim(_ run: ExecRun) async throws -> Bool {
        while true {
            let previous = try state.withLock { state throws(ServiceError) -> ExecRun? in
                guard !state.closed else {
                    throw ServiceError(.execFailed, "exec: the handler is shut down; job '\(run.key)' not started")
                }
                if let previous = state.runs[run.key] { return previous }
                state.runs[run.key] = run
                return nil
            }
            guard let previous else { return true }
            run.logger.info("exec: waiting for the previous run of the job to end")
            _ = await previous.finished.wait(cancellable: true)
            if Task.isCancelled { return false }
        }
    }

    private func release(_ run: ExecRun) {
        state.withLock { state in
            if state.runs[run.key] === run { state.runs[run.key] = nil }
        }
        run.finished.fulfill(())
    }

    /// What the job runs, if the policy allows it: `execNotAllowed` naming what is refused, before
    /// anything about the file matters; `execFailed` for an allowed program that cannot run.
    func authorize(_ spec: ExecSpec) throws(ServiceError) -> ExecInvocation {
        if let name = spec.program {
            guard let program = policy.programs.first(where: { $0.name == name }) else {
                let names = policy.programs.compactMap(\.name)
                throw ServiceError(.execNotAllowed, "exec: this worker has no program named '\(name)' (\(names.isEmpty ? "its policy names none" : "programs: \(names.joined(separator: ", "))"))")
            }
            let arguments = try program.fill(spec.slots).get()
            if let reason = program.refusal(environment: spec.env) { throw program.refused(reason) }
            guard let real = Self.realPath(program.path), Self.isExecutableFile(real) else {
                throw ServiceError(.execFailed, "exec: program '\(name)' (\(program.path)) does not exist or is not an executable file")
            }
            return invocation(program, argv0: program.path, executable: real, arguments: arguments, env: spec.env)
        }
        let command = spec.command ?? ""
        let candidates: [String]
        if command.contains("/") {
            guard command.hasPrefix("/") else {
                throw ServiceError(.execNotAllowed, "exec: command '\(command)' must be an absolute path or a name looked up on PATH")
            }
            let components = command.split(separator: "/", omittingEmptySubsequences: true)
            guard !components.contains(where: { $0 == "." || $0 == ".." }) else {
                throw ServiceError(.execNotAllowed, "exec: command '\(command)' must not contain '.' or '..' components")
            }
            candidates = ["/" + components.joined(separator: "/")]
        } else {
            let found = options.searchPath
                .filter { $0.hasPrefix("/") }
                .map { ($0.hasSuffix("/") ? $0 : $0 + "/") + command }
                .filter(Self.isExecutableFile)
            guard !found.isEmpty else {
                throw ServiceError(.execFailed, "exec: command '\(command)' not found on the worker's PATH (\(options.searchPath.joined(separator: ":")))")
            }
            candidates = found
        }
        for path in candidates {
            let real = Self.realPath(path)
            let programs = policy.programs.filter { $0.matches(path: path) || real.map($0.matches) == true }
            guard let first = programs.first else { continue }
            guard let real, Self.isExecutableFile(real) else {
                throw ServiceError(.execFailed, "exec: command '\(command)' (\(path)) does not exist or is not an executable file")
            }
            var reasons: [String] = []
            for program in programs {
                if let reason = program.refusal(arguments: spec.args) ?? program.refusal(environment: spec.env) {
                    reasons.append(programs.count == 1 ? reason : "\(program.origin): \(reason)")
                    continue
                }
                return invocation(program, argv0: command, executable: real, arguments: spec.args, env: spec.env)
            }
            guard programs.count > 1 else { throw first.refused(reasons.joined()) }
            throw ServiceError(.execNotAllowed, "exec: no program declared for \(path) accepts the job: \(reasons.joined(separator: "; "))")
        }
        let shown = candidates[0] == command ? command : "\(command)' (\(candidates[0])"
        var paths: [String] = []
        for program in policy.programs where !paths.contains(program.path) { paths.append(program.path) }
        let allowList = paths.isEmpty
            ? "this worker allows no commands: start it with --exec-policy FILE or --allow-exec PATH"
            : "allowed: \(paths.joined(separator: ", "))"
        throw ServiceError(.execNotAllowed, "exec: command '\(shown)' is not allowed on this worker (\(allowList))")
    }

    private func invocation(_ program: ExecPolicy.Program, argv0: String, executable: String, arguments: [String], env: [String: String]) -> ExecInvocation {
        ExecInvocation(
            argv0: argv0, executable: executable, arguments: arguments,
            environment: program.fixedEnvironment.merging(env) { $1 },
            workBase: program.workDirectory ?? policy.workDirectory, limits: program.limits
        )
    }

    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    static func isExecutableFile(_ path: String) -> Bool {
        var info = stat()
        guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { return false }
        return access(path, X_OK) == 0
    }
}

/// What ``ExecJobRunner`` knows about a running job.
public struct ExecJobStatus: Sendable, Hashable {
    /// The running child, nil between runs (back-off).
    public var pid: pid_t?
    /// Children spawned so far (1 + restarts).
    public var starts: Int = 0
    /// How the last child ended, e.g. `exit code 0`, `signal 9 (Killed)`.
    public var lastExit: String?

    public init(pid: pid_t? = nil, starts: Int = 0, lastExit: String? = nil) {
        self.pid = pid
        self.starts = starts
        self.lastExit = lastExit
    }
}

// MARK: - Payload

/// The `exec` payload (see ``ExecJobRunner``): a program by name with slot values, or a
/// command with its arguments; what the worker's ``ExecPolicy`` allows is decided later, by the
/// runner.
public struct ExecSpec: Sendable, Hashable {
    public enum Restart: String, Sendable, Hashable {
        case never
        case onFailure = "on-failure"
        case always
    }

    /// A path or a name looked up on `PATH`; nil when the job names a ``program``.
    public var command: String?
    /// The name of a program of the policy; nil when the job gives a ``command``.
    public var program: String?
    /// The arguments of a ``command``.
    public var args: [String] = []
    /// The slot values of a ``program``.
    public var slots: [String: String] = [:]
    public var env: [String: String] = [:]
    public var restart: Restart = .onFailure
    public var grace: Duration = ExecJobRunner.defaultGrace

    static let fields = ["command", "program", "args", "slots", "env", "restart", "grace_ms"]
    static let maxGraceMilliseconds = 600_000

    /// A command and its whole argument list.
    public init(command: String, args: [String] = [], env: [String: String] = [:], restart: Restart = .onFailure, grace: Duration = ExecJobRunner.defaultGrace) {
        self.command = command
        self.args = args
        self.env = env
        self.restart = restart
        self.grace = grace
    }

    /// A program of the policy by name, with its slot values.
    public init(program: String, slots: [String: String] = [:], env: [String: String] = [:], restart: Restart = .onFailure, grace: Duration = ExecJobRunner.defaultGrace) {
        self.program = program
        self.slots = slots
        self.env = env
        self.restart = restart
        self.grace = grace
    }

    /// Decodes and validates a payload: `invalidPayload` for malformed JSON, unknown fields,
    /// wrong types or values.
    public init(decoding payload: [UInt8]) throws(ServiceError) {
        do {
            self = try JSONDecoder().decode(Wire.self, from: Data(payload)).spec
        } catch let error as ServiceError {
            throw error
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context) {
            let field = context.codingPath.first?.stringValue ?? ""
            throw Self.invalid(Self.expectations[field] ?? "the payload must be a JSON object with \"command\" or \"program\"")
        } catch {
            throw Self.invalid("the payload is not valid JSON (\(String(decoding: payload.prefix(80), as: UTF8.self)))", underlying: error)
        }
        try validate()
    }

    private static let expectations = [
        "command": "\"command\" must be a non-empty string",
        "program": "\"program\" must be a non-empty string",
        "args": "\"args\" must be an array of strings",
        "slots": "\"slots\" must be an object of strings",
        "env": "\"env\" must be an object of strings",
        "restart": "\"restart\" must be one of never, on-failure, always",
        "grace_ms": "\"grace_ms\" must be an integer from 0 to \(maxGraceMilliseconds)",
    ]

    private static func expected(_ field: String) -> ServiceError {
        invalid(expectations[field] ?? "\"\(field)\" is invalid")
    }

    /// The JSON shape, strict: unknown fields and wrong types are errors; null means the default.
    private struct Wire: Decodable {
        var spec: ExecSpec

        struct Key: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: Key.self)
            if let unknown = container.allKeys.map(\.stringValue).sorted().first(where: { !ExecSpec.fields.contains($0) }) {
                throw ExecSpec.invalid("unknown field '\(unknown)' (fields: \(ExecSpec.fields.joined(separator: ", ")))")
            }
            let command = try container.decodeIfPresent(String.self, forKey: Key(stringValue: "command"))
            let program = try container.decodeIfPresent(String.self, forKey: Key(stringValue: "program"))
            let args = try container.decodeIfPresent([String].self, forKey: Key(stringValue: "args"))
            let slots = try container.decodeIfPresent([String: String].self, forKey: Key(stringValue: "slots"))
            switch (command, program) {
            case (let command?, nil):
                guard !command.isEmpty else { throw ExecSpec.expected("command") }
                guard slots == nil else { throw ExecSpec.invalid("\"slots\" go with \"program\"; a \"command\" takes \"args\"") }
                spec = ExecSpec(command: command, args: args ?? [])
            case (nil, let program?):
                guard !program.isEmpty else { throw ExecSpec.expected("program") }
                guard args == nil else { throw ExecSpec.invalid("\"args\" go with \"command\"; a \"program\" takes \"slots\"") }
                spec = ExecSpec(program: program, slots: slots ?? [:])
            case (nil, nil):
                throw ExecSpec.invalid("missing field \"command\" (or \"program\")")
            case (.some, .some):
                throw ExecSpec.invalid("give \"command\" or \"program\", not both")
            }
            spec.env = try container.decodeIfPresent([String: String].self, forKey: Key(stringValue: "env")) ?? [:]
            if let text = try container.decodeIfPresent(String.self, forKey: Key(stringValue: "restart")) {
                guard let policy = Restart(rawValue: text) else { throw ExecSpec.expected("restart") }
                spec.restart = policy
            }
            if let milliseconds = try container.decodeIfPresent(Int.self, forKey: Key(stringValue: "grace_ms")) {
                guard (0...ExecSpec.maxGraceMilliseconds).contains(milliseconds) else { throw ExecSpec.expected("grace_ms") }
                spec.grace = .milliseconds(milliseconds)
            }
        }
    }

    func validate() throws(ServiceError) {
        let texts = [command ?? "", program ?? ""] + args + slots.keys + slots.values
        guard !texts.contains(where: { $0.utf8.contains(0) }) else {
            throw Self.invalid("\"command\", \"program\", \"args\" and \"slots\" must not contain NUL characters")
        }
        for (name, value) in env {
            guard !name.isEmpty, !name.contains("="), !name.utf8.contains(0), !value.utf8.contains(0) else {
                throw Self.invalid("environment variable names must be non-empty without '=' and values without NUL (\(quoted(name)))")
            }
        }
    }

    fileprivate static func invalid(_ message: String, underlying: (any Error)? = nil) -> ServiceError {
        ServiceError(.invalidPayload, "exec: \(message)", underlying: underlying)
    }
}


// MARK: - Supervision

/// One run of a job: spawns its child, restarts it per policy, stops it when its task is cancelled.
private final class ExecRun: Sendable {
    let key: String
    let spec: ExecSpec
    let invocation: ExecInvocation
    /// SIGTERM to SIGKILL on a stop: `grace_ms`, within the worker's stop grace period.
    let grace: Duration
    let runner: ExecJobRunner
    let logger: Logger

    let status = Mutex(ExecJobStatus())
    /// The child running now, for ``shutDown()``, and whether that was called: one lock, so a
    /// child spawned as the runner shuts down is seen by one side or the other.
    private let shared = Mutex<(child: ExecChild?, shuttingDown: Bool)>((nil, false))
    /// Fulfilled once the run is over and its key released: a waiting run of the same key goes on.
    let finished = OneShot<Void>()

    init(key: String, spec: ExecSpec, invocation: ExecInvocation, grace: Duration, runner: ExecJobRunner, logger: Logger) {
        self.key = key
        self.spec = spec
        self.invocation = invocation
        self.grace = grace
        self.runner = runner
        self.logger = logger
    }

    /// Spawns and watches the child until the restart policy ends the job (returns after a
    /// success, throws after a failure) or the task is cancelled (returns once the child is gone).
    func supervise() async throws {
        var backoff = runner.options.restartBackoff
        var first = true
        while true {
            // Stopped between two runs (during a back-off, or as the previous child exited).
            if Task.isCancelled { return }
            let spawned: ExecChild
            let pid: pid_t
            do {
                (spawned, pid) = try await spawn()
            } catch {
                // The first spawn failing fails the job: the program cannot run here.
                if first { throw error }
                logger.error("exec: could not restart the command", metadata: ["error": "\(error)"])
                guard spec.restart != .never else { throw error }
                guard await pause(backoff) else { return try endOfPause() }
                backoff = min(backoff * 2, runner.options.maxRestartBackoff)
                continue
            }
            let shuttingDown = shared.withLock { shared -> Bool in
                shared.child = spawned
                return shared.shuttingDown
            }
            defer { shared.withLock { $0.child = nil } }
            status.withLock {
                $0.pid = pid
                $0.starts += 1
            }
            logger.info(
                first ? "exec: command started" : "exec: command restarted",
                metadata: ["pid": "\(pid)", "guard": "\(spawned.guardPID)", "command": "\(invocation.executable)", "args": "\(invocation.arguments)"]
            )
            first = false
            let startedAt = ContinuousClock.now
            if shuttingDown {
                let exit = await stop(spawned)
                record(exit)
                throw shutDownError(exit)
            }
            // Returns early (nil) when the task is cancelled: the job is being stopped.
            _ = await spawned.exited.wait(cancellable: true)
            if spawned.exited.value == nil {
                let exit = await stop(spawned)
                record(exit)
                logger.info("exec: command stopped", metadata: ["pid": "\(pid)", "status": "\(exit)"])
                return
            }
            let exit = await spawned.reap(drainTimeout: runner.options.outputDrainTimeout, logger: logger)
            record(exit)
            if exit.isSuccess {
                logger.info("exec: command exited", metadata: ["pid": "\(pid)", "status": "\(exit)"])
            } else {
                logger.warning("exec: command failed", metadata: ["pid": "\(pid)", "status": "\(exit)"])
            }
            // A stop that came as the child exited is the stop, whatever the status.
            if Task.isCancelled { return }
            if shared.withLock({ $0.shuttingDown }) { throw shutDownError(exit) }
            switch spec.restart {
            case .never:
                guard exit.isSuccess else { throw exited(exit) }
                return
            case .onFailure where exit.isSuccess:
                return
            case .onFailure, .always:
                if ContinuousClock.now - startedAt >= runner.options.maxRestartBackoff {
                    backoff = runner.options.restartBackoff
                }
                logger.info("exec: restarting after back-off", metadata: ["backoff": "\(backoff)", "policy": "\(spec.restart.rawValue)"])
                guard await pause(backoff) else { return try endOfPause() }
                backoff = min(backoff * 2, runner.options.maxRestartBackoff)
            }
        }
    }

    /// A back-off cut short: by a stop (the job ends as stopped) or by ``shutDown()`` (it fails).
    private func endOfPause() throws(ServiceError) {
        if shared.withLock({ $0.shuttingDown }) {
            throw ServiceError(.execFailed, "exec: job '\(key)' not restarted: the worker's exec handler shut down")
        }
    }

    private func shutDownError(_ exit: ExitStatus) -> ServiceError {
        ServiceError(.execFailed, "exec: '\(invocation.argv0)' was ended by the worker's exec handler shutting down (\(exit))")
    }

    /// The job's end when its program failed by itself and the policy does not restart it.
    private func exited(_ exit: ExitStatus) -> ServiceError {
        ServiceError(.execExited, "exec: '\(invocation.argv0)' ended with \(exit)")
    }

    /// Ends the current child as a stop would and keeps the run from restarting (``ExecJobRunner/stopAll()``).
    func shutDown() async {
        let current = shared.withLock { shared -> ExecChild? in
            shared.shuttingDown = true
            return shared.child
        }
        guard let current else { return }
        current.terminate()
        if grace > .zero { _ = await current.exited.wait(timeout: grace) }
        if current.exited.value == nil { current.kill() }
        // The run's own task reaps the guard; the guard is gone only once every descendant is.
        _ = await current.exited.wait(cancellable: false)
    }

    private func record(_ exit: ExitStatus) {
        status.withLock {
            $0.pid = nil
            $0.lastExit = exit.description
        }
    }

    /// Sleeps `duration` (a restart back-off); false when the task was cancelled meanwhile (stopped)
    /// or the runner is shutting down.
    private func pause(_ duration: Duration) async -> Bool {
        do {
            try await Task.sleep(for: duration)
        } catch {
            return false
        }
        return !shared.withLock { $0.shuttingDown }
    }

    /// The job's directory, then a guard and its program (ExecChild).
    private func spawn() async throws(ServiceError) -> (ExecChild, pid_t) {
        let directory = try invocation.workBase.map { base throws(ServiceError) in try prepareWorkDirectory(base: base, key: key) } ?? "/"
        let environment = runner.childEnvironment.merging(invocation.environment) { $1 }
        return try await ExecChild.start(
            invocation, workDirectory: directory, environment: environment, logger: logger, drainTimeout: runner.options.outputDrainTimeout
        )
    }

    /// SIGTERM to the program's group, up to the grace period, SIGKILL to everything it started,
    /// reap. Runs in a cancelled task: every wait here is timed, none observes the cancellation.
    private func stop(_ child: ExecChild) async -> ExitStatus {
        child.terminate()
        if grace > .zero { _ = await child.exited.wait(timeout: grace) }
        if child.exited.value == nil {
            logger.warning("exec: command did not exit after SIGTERM; sending SIGKILL", metadata: ["guard": "\(child.guardPID)", "grace": "\(grace)"])
            child.kill()
        }
        return await child.reap(drainTimeout: runner.options.outputDrainTimeout, logger: logger)
    }
}

/// A `waitpid` status.
struct ExitStatus: Sendable, CustomStringConvertible {
    /// nil when the child was reaped elsewhere and its status is unknown.
    var raw: Int32?

    var exitCode: Int32? {
        guard let raw, raw & 0x7F == 0 else { return nil }
        return (raw >> 8) & 0xFF
    }

    var signal: Int32? {
        guard let raw, raw & 0x7F != 0, raw & 0x7F != 0x7F else { return nil }
        return raw & 0x7F
    }

    var isSuccess: Bool { exitCode == 0 }

    var description: String {
        if let exitCode { return "exit code \(exitCode)" }
        if let signal {
            let name = strsignal(signal).map { String(cString: $0) } ?? "?"
            return "signal \(signal) (\(name))"
        }
        return "unknown exit status"
    }
}


// MARK: - Small concurrency and libc helpers

/// A value set once; waiters resume when it is.
final class OneShot<Value: Sendable>: Sendable {
    private struct State {
        var value: Value?
        var waiters: [UInt64: CheckedContinuation<Value?, Never>] = [:]
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())

    init() {}

    var value: Value? { state.withLock { $0.value } }

    /// Sets the value and resumes every waiter; false (and no change) if it was already set.
    @discardableResult
    func fulfill(_ value: Value) -> Bool {
        let waiters = state.withLock { state -> [CheckedContinuation<Value?, Never>]? in
            guard state.value == nil else { return nil }
            state.value = value
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        guard let waiters else { return false }
        for waiter in waiters { waiter.resume(returning: value) }
        return true
    }

    /// The value once set, or nil after `timeout`. The wait does not observe task cancellation:
    /// a stopping job waits out its grace period in a cancelled task, where `Task.sleep` would
    /// end at once. The timer is a Dispatch deadline, not a task.
    func wait(timeout: Duration) async -> Value? {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        return await withCheckedContinuation { (continuation: CheckedContinuation<Value?, Never>) in
            let ready = state.withLock { state -> Value? in
                if let value = state.value { return value }
                state.waiters[id] = continuation
                return nil
            }
            if let ready {
                continuation.resume(returning: ready)
                return
            }
            let (seconds, attoseconds) = timeout.components
            let nanoseconds = min(max(0, seconds), 1 << 32) * 1_000_000_000 + max(0, attoseconds) / 1_000_000_000
            DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(clamping: nanoseconds))) {
                // Resumed here only if fulfill did not take the waiter first.
                self.state.withLock { $0.waiters.removeValue(forKey: id) }?.resume(returning: nil)
            }
        }
    }

    /// The value once set. A `cancellable` wait returns nil when the task is cancelled first.
    func wait(cancellable: Bool) async -> Value? {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Value?, Never>) in
                let ready = state.withLock { state -> Value?? in
                    if let value = state.value { return .some(value) }
                    if cancellable, Task.isCancelled { return .some(nil) }
                    state.waiters[id] = continuation
                    return nil
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            guard cancellable else { return }
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume(returning: nil)
        }
    }
}
