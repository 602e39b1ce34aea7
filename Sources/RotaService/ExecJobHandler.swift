import Foundation
import Logging
import Rota
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The built-in `exec` handler: each job runs an allow-listed command as a supervised child
/// process (Linux only).
///
/// **Payload** (JSON; only `command` is required, unknown fields are refused):
///
/// ```json
/// {"command": "/usr/bin/rsync", "args": ["-a", "src/", "dst/"], "env": {"LANG": "C"},
///  "restart": "on-failure", "grace_ms": 5000}
/// ```
///
/// - `command`: an absolute path, or a name looked up on the worker's `PATH` (never on the job's
///   `env`, and only through absolute `PATH` entries). `.` and `..` path components are refused.
/// - `args`: the arguments (`argv[1...]`); `argv[0]` is `command` as written. Default none.
/// - `env`: the child's environment, on top of `PATH` (the worker's search path) and the few
///   worker variables the operator lists in ``Options/inheritedEnvironment`` — nothing else of the
///   worker's environment is inherited. Variables that change which code a program loads (`LD_*`,
///   `GCONV_PATH`, `BASH_ENV`, `ENV`, `BASH_FUNC_*`, …) are refused.
/// - `restart`: `never`, `on-failure` (the default: restart after a non-zero exit or a death by
///   signal) or `always`. Restarts wait a back-off of 1 s doubling to 30 s (``Options``); a run that
///   lasted at least the maximum back-off resets it.
/// - `grace_ms`: how long `stop` waits after SIGTERM before SIGKILL, default 5000, at most 600000.
///
/// **Allow-list.** Commands run only if they match one of the operator's glob patterns
/// (`fnmatch(3)` with `FNM_PATHNAME | FNM_PERIOD`: `*` matches neither `/` nor a leading `.`),
/// e.g. `/usr/bin/*`, `/opt/tools/run-*`. A command is allowed when its absolute path as resolved
/// (after the `PATH` lookup, before following symlinks) *or* its `realpath` matches: `/bin/sh`
/// matches the pattern `/bin/sh` on a merged-/usr system where it is `/usr/bin/dash`, and
/// `/bin/sleep` matches `/usr/bin/*`. The resolved path never contains `.`/`..`, so the lexical
/// match cannot be walked out of its directory; symlinks inside allowed directories are trusted
/// (only whoever may write there can create them). What is spawned is the `realpath` that was
/// checked. An empty allow-list refuses everything. A refused command throws
/// ``ServiceError/Code/execNotAllowed`` from `start` and is never spawned.
///
/// Allow-list a program, not an interpreter: with `/bin/sh` allowed, a plan can run anything
/// through `-c`.
///
/// **Processes.** Children are spawned with `posix_spawn` (not Foundation's `Process`): an empty
/// signal mask and default dispositions (the worker's threads block signals), a process group of
/// their own, stdin from `/dev/null`, every other inherited descriptor closed. stdout and stderr go
/// through pipes, each read by a dedicated thread (blocking reads never hold a Swift concurrency
/// thread) and logged line by line at info level with `job`, `pid` and `stream` metadata. A third
/// thread per child blocks in `waitid` until it exits.
///
/// **Stop.** `stop(key:)` sends SIGTERM (and SIGCONT) to the child's process group, waits up to
/// the grace period, then sends SIGKILL, and returns once the child has been reaped. A cancelled
/// caller shortens the grace to nothing (SIGKILL at once) but still waits for the exit. When a
/// child exits on its own, what it left running in its process group is killed before it is
/// reaped, so restarts never pile up orphans.
///
/// **Supervision.** Each job has one supervisor, an unstructured `Task` owned by this handler:
/// `JobHandler.start` must return while the job keeps running, and the pool gives handlers no
/// scope that outlives a start, so a task group would need a `run()` that every embedding
/// application must also run (and starts would hang or fail without it). Instead each task is
/// kept in the job table and ``stop(key:)`` / ``stopAll()`` always stop and await it; nothing is
/// left running after ``stopAll()`` returns.
///
/// **Idempotence.** A start for a key that runs with the same payload does nothing (the process
/// keeps running, or stays finished if its restart policy ended it: the job is over until the pool
/// stops it); with another payload the old child is stopped and the new one started. A start during
/// the key's stop waits for the stop to finish, so there is never more than one child per key.
public final class ExecJobHandler: NamedJobHandler {
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
        /// Variables of the worker's own environment passed to children (besides `PATH`, which is
        /// always the search path). Nothing else is inherited: a worker's secrets (a Redis
        /// password in the environment, tokens) never reach a job's process unless listed here.
        public var inheritedEnvironment: [String] = ["LANG", "LC_ALL", "TZ", "HOME"]

        public init() {
            searchPath = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin")
                .split(separator: ":").map(String.init)
        }
    }

    /// The default of `grace_ms`.
    public static let defaultGrace: Duration = .seconds(5)

    public let allowed: [String]
    public let options: Options
    let logger: Logger

    private struct Entry {
        let supervisor: Supervisor
        var stopping = false
    }

    private struct State {
        var entries: [String: Entry] = [:]
        var closed = false
    }

    private let state = Mutex(State())

    /// - Parameter allowed: glob patterns on absolute executable paths (see the type's
    ///   documentation). A pattern that is not absolute throws ``ServiceError/Code/invalidArgument``.
    /// What a child starts from before its job's `env`: `PATH` and the listed worker variables.
    var childEnvironment: [String: String] {
        let own = ProcessInfo.processInfo.environment
        var environment: [String: String] = ["PATH": options.searchPath.joined(separator: ":")]
        for name in options.inheritedEnvironment { if let value = own[name] { environment[name] = value } }
        return environment
    }

    public init(allowed: [String], logger: Logger, options: Options = Options()) throws(ServiceError) {
        for pattern in allowed where !pattern.hasPrefix("/") {
            throw ServiceError(.invalidArgument, "exec allow-list pattern '\(pattern)' must be an absolute path (globs allowed, e.g. /usr/bin/*)")
        }
        self.allowed = allowed
        self.logger = logger
        self.options = options
    }

    // MARK: - NamedJobHandler

    public func start(key: String, payload: [UInt8], job: Job) async throws {
        let spec = try ExecSpec(decoding: payload)
        let target = try resolve(spec.command)
        while true {
            enum Action {
                case running(Supervisor)
                case wait(Supervisor)
                case replace(Supervisor)
                case launch(Supervisor)
            }
            let action = try state.withLock { state throws(ServiceError) -> Action in
                guard !state.closed else {
                    throw ServiceError(.execFailed, "exec: the handler is shut down; job '\(key)' not started")
                }
                if let entry = state.entries[key] {
                    if entry.stopping { return .wait(entry.supervisor) }
                    if entry.supervisor.payload == payload { return .running(entry.supervisor) }
                    state.entries[key]?.stopping = true
                    return .replace(entry.supervisor)
                }
                let supervisor = Supervisor(key: key, payload: payload, spec: spec, target: target, handler: self)
                state.entries[key] = Entry(supervisor: supervisor)
                return .launch(supervisor)
            }
            switch action {
            case .running(let supervisor):
                // Its first spawn may still be in flight: report how it went.
                if case .failure(let error) = await supervisor.firstSpawn.wait(cancellable: false) { throw error }
                logger.debug("exec job already runs with this payload", metadata: ["job": "\(key)"])
                return
            case .wait(let supervisor):
                _ = await supervisor.finished.wait(cancellable: false)
                remove(supervisor)
            case .replace(let supervisor):
                logger.info("exec job payload changed: restarting it", metadata: ["job": "\(key)"])
                await terminate(supervisor)
            case .launch(let supervisor):
                supervisor.launch()
                guard case .failure(let error) = await supervisor.firstSpawn.wait(cancellable: false) else { return }
                _ = await supervisor.finished.wait(cancellable: false)
                remove(supervisor)
                throw error
            }
        }
    }

    /// Stops the job's child (SIGTERM, grace, SIGKILL) and returns once it is gone. Unknown keys
    /// are a no-op.
    public func stop(key: String) async throws {
        let supervisor = state.withLock { state -> Supervisor? in
            state.entries[key]?.stopping = true
            return state.entries[key]?.supervisor
        }
        guard let supervisor else { return }
        await terminate(supervisor)
    }

    /// Stops every job and refuses new starts: call it before the worker's process exits. Returns
    /// once every child is gone.
    public func stopAll() async {
        let supervisors = state.withLock { state -> [Supervisor] in
            state.closed = true
            for key in state.entries.keys { state.entries[key]?.stopping = true }
            return state.entries.values.map(\.supervisor)
        }
        await withDiscardingTaskGroup { group in
            for supervisor in supervisors {
                group.addTask { await self.terminate(supervisor) }
            }
        }
    }

    /// What the handler knows about a job, nil when it does not run it.
    public func status(key: String) -> ExecJobStatus? {
        state.withLock { $0.entries[key]?.supervisor }?.status.withLock { $0 }
    }

    /// The keys of the jobs started and not stopped.
    public var keys: [String] { state.withLock { Array($0.entries.keys) } }

    // MARK: - Internals

    private func terminate(_ supervisor: Supervisor) async {
        supervisor.stopRequested.fulfill(())
        await withTaskCancellationHandler {
            _ = await supervisor.finished.wait(cancellable: false)
        } onCancel: {
            supervisor.escalate.fulfill(())
        }
        remove(supervisor)
    }

    private func remove(_ supervisor: Supervisor) {
        state.withLock { state in
            if state.entries[supervisor.key]?.supervisor === supervisor { state.entries[supervisor.key] = nil }
        }
    }

    /// Where a command is, and whether the allow-list lets it run. Throws `execNotAllowed` before
    /// anything about the file matters, `execFailed` for an allowed command that cannot run.
    func resolve(_ command: String) throws(ServiceError) -> ExecTarget {
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
            guard isAllowed(path) || real.map(isAllowed) == true else { continue }
            guard let real, Self.isExecutableFile(real) else {
                throw ServiceError(.execFailed, "exec: command '\(command)' (\(path)) does not exist or is not an executable file")
            }
            return ExecTarget(argv0: command, path: path, executable: real)
        }
        let shown = candidates[0] == command ? command : "\(command)' (\(candidates[0])"
        let allowList = allowed.isEmpty
            ? "this worker allows no commands: start it with --allow-exec PATTERN"
            : "allowed: \(allowed.joined(separator: ", "))"
        throw ServiceError(.execNotAllowed, "exec: command '\(shown)' is not allowed on this worker (\(allowList))")
    }

    func isAllowed(_ path: String) -> Bool {
        allowed.contains { fnmatch($0, path, FNM_PATHNAME | FNM_PERIOD) == 0 }
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

/// What ``ExecJobHandler`` knows about a job.
public struct ExecJobStatus: Sendable, Hashable {
    /// The running child, nil between runs (back-off) and once the job is over.
    public var pid: pid_t?
    /// Children spawned so far (1 + restarts).
    public var starts: Int = 0
    /// How the last child ended, e.g. `exit code 0`, `signal 9 (Killed)`.
    public var lastExit: String?
    /// The supervisor is done: stopped, or the restart policy ended the job.
    public var isFinished = false

    public init(pid: pid_t? = nil, starts: Int = 0, lastExit: String? = nil, isFinished: Bool = false) {
        self.pid = pid
        self.starts = starts
        self.lastExit = lastExit
        self.isFinished = isFinished
    }
}

/// A resolved, allowed command.
struct ExecTarget: Sendable, Hashable {
    /// `argv[0]`: the command as the payload wrote it.
    var argv0: String
    /// The absolute path it resolved to (before symlinks).
    var path: String
    /// The realpath that is spawned.
    var executable: String
}

// MARK: - Payload

/// The `exec` payload (see ``ExecJobHandler``).
public struct ExecSpec: Sendable, Hashable {
    public enum Restart: String, Sendable, Hashable {
        case never
        case onFailure = "on-failure"
        case always
    }

    public var command: String
    public var args: [String] = []
    public var env: [String: String] = [:]
    public var restart: Restart = .onFailure
    public var grace: Duration = ExecJobHandler.defaultGrace

    static let fields = ["command", "args", "env", "restart", "grace_ms"]
    static let maxGraceMilliseconds = 600_000

    /// Environment variables a job may not set: they make an allowed program load or run other code.
    static let refusedVariables: Set<String> = [
        "GCONV_PATH", "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "IFS", "CDPATH", "GLOBIGNORE",
        "LOCPATH", "NLSPATH", "HOSTALIASES", "RES_OPTIONS", "MALLOC_TRACE", "PERL5OPT", "PERL5LIB", "PERLLIB",
        "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONINSPECT", "RUBYOPT", "RUBYLIB", "NODE_OPTIONS",
        "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "GIT_EXEC_PATH", "GIT_SSH", "GIT_SSH_COMMAND", "GIT_CONFIG_GLOBAL",
    ]
    static let refusedPrefixes = ["LD_", "BASH_FUNC_", "DYLD_"]

    public init(command: String, args: [String] = [], env: [String: String] = [:], restart: Restart = .onFailure, grace: Duration = ExecJobHandler.defaultGrace) {
        self.command = command
        self.args = args
        self.env = env
        self.restart = restart
        self.grace = grace
    }

    /// Decodes and validates a payload: `invalidPayload` for malformed JSON, unknown fields,
    /// wrong types or values; `execNotAllowed` for a refused environment variable.
    public init(decoding payload: [UInt8]) throws(ServiceError) {
        do {
            self = try JSONDecoder().decode(Wire.self, from: Data(payload)).spec
        } catch let error as ServiceError {
            throw error
        } catch let DecodingError.keyNotFound(key, _) {
            throw Self.invalid("missing field \"\(key.stringValue)\"")
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context) {
            let field = context.codingPath.first?.stringValue ?? ""
            throw Self.invalid(Self.expectations[field] ?? "the payload must be a JSON object with at least \"command\"")
        } catch {
            throw Self.invalid("the payload is not valid JSON (\(String(decoding: payload.prefix(80), as: UTF8.self)))", underlying: error)
        }
        try validate()
    }

    private static let expectations = [
        "command": "\"command\" must be a non-empty string",
        "args": "\"args\" must be an array of strings",
        "env": "\"env\" must be an object of strings",
        "restart": "\"restart\" must be one of never, on-failure, always",
        "grace_ms": "\"grace_ms\" must be an integer from 0 to \(maxGraceMilliseconds)",
    ]

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
            let command = try container.decode(String.self, forKey: Key(stringValue: "command"))
            guard !command.isEmpty else { throw ExecSpec.invalid(ExecSpec.expectations["command"]!) }
            spec = ExecSpec(command: command)
            spec.args = try container.decodeIfPresent([String].self, forKey: Key(stringValue: "args")) ?? []
            spec.env = try container.decodeIfPresent([String: String].self, forKey: Key(stringValue: "env")) ?? [:]
            if let text = try container.decodeIfPresent(String.self, forKey: Key(stringValue: "restart")) {
                guard let policy = Restart(rawValue: text) else { throw ExecSpec.invalid(ExecSpec.expectations["restart"]!) }
                spec.restart = policy
            }
            if let milliseconds = try container.decodeIfPresent(Int.self, forKey: Key(stringValue: "grace_ms")) {
                guard (0...ExecSpec.maxGraceMilliseconds).contains(milliseconds) else {
                    throw ExecSpec.invalid(ExecSpec.expectations["grace_ms"]!)
                }
                spec.grace = .milliseconds(milliseconds)
            }
        }
    }

    func validate() throws(ServiceError) {
        guard !command.utf8.contains(0), !args.contains(where: { $0.utf8.contains(0) }) else {
            throw Self.invalid("\"command\" and \"args\" must not contain NUL characters")
        }
        for (name, value) in env {
            guard !name.isEmpty, !name.contains("="), !name.utf8.contains(0), !value.utf8.contains(0) else {
                throw Self.invalid("environment variable names must be non-empty without '=' and values without NUL ('\(name)')")
            }
            if Self.refusedVariables.contains(name) || Self.refusedPrefixes.contains(where: name.hasPrefix) {
                throw ServiceError(.execNotAllowed, "exec: the job may not set the environment variable \(name) (it changes which code a program loads or runs)")
            }
        }
    }

    fileprivate static func invalid(_ message: String, underlying: (any Error)? = nil) -> ServiceError {
        ServiceError(.invalidPayload, "exec: \(message)", underlying: underlying)
    }
}

// MARK: - Supervision

/// One job: spawns its child, restarts it per policy, stops it on request.
private final class Supervisor: Sendable {
    let key: String
    let payload: [UInt8]
    let spec: ExecSpec
    let target: ExecTarget
    let handler: ExecJobHandler
    let logger: Logger

    let status = Mutex(ExecJobStatus())
    /// The first spawn's outcome: `start` returns or throws with it.
    let firstSpawn = OneShot<Result<Void, ServiceError>>()
    let stopRequested = OneShot<Void>()
    /// Skip (the rest of) the grace period: the stopping caller was cancelled.
    let escalate = OneShot<Void>()
    /// Fulfilled when ``supervise()`` returns: the child is gone and nothing will spawn another.
    let finished = OneShot<Void>()

    init(key: String, payload: [UInt8], spec: ExecSpec, target: ExecTarget, handler: ExecJobHandler) {
        self.key = key
        self.payload = payload
        self.spec = spec
        self.target = target
        self.handler = handler
        var logger = handler.logger
        logger[metadataKey: "job"] = "\(key)"
        self.logger = logger
    }

    /// Starts the supervising task. It is not cancelled to stop it (cancellation would cut the
    /// grace period's timers short): ``stopRequested`` asks it to stop, ``finished`` says it ended.
    func launch() {
        Task { await self.supervise() }
    }

    private func supervise() async {
        var backoff = handler.options.restartBackoff
        var first = true
        while true {
            let child: Child
            do {
                child = try Child.spawn(spec: spec, target: target, base: handler.childEnvironment, logger: logger)
            } catch {
                if first {
                    firstSpawn.fulfill(.failure(error))
                    break
                }
                logger.error("exec: could not restart the command", metadata: ["error": "\(error)"])
                guard spec.restart != .never, await pause(backoff) else { break }
                backoff = min(backoff * 2, handler.options.maxRestartBackoff)
                continue
            }
            status.withLock {
                $0.pid = child.pid
                $0.starts += 1
            }
            logger.info(
                first ? "exec: command started" : "exec: command restarted",
                metadata: ["pid": "\(child.pid)", "command": "\(target.path)", "args": "\(spec.args)"]
            )
            if first {
                first = false
                firstSpawn.fulfill(.success(()))
            }
            let startedAt = ContinuousClock.now
            let woke = await firstOf([
                { _ = await child.exited.wait(cancellable: true) },
                { _ = await self.stopRequested.wait(cancellable: true) },
            ])
            if woke == 1, child.exited.value == nil {
                let exit = await stop(child)
                logger.info("exec: command stopped", metadata: ["pid": "\(child.pid)", "status": "\(exit)"])
                record(exit)
                break
            }
            let exit = await child.reap(drainTimeout: handler.options.outputDrainTimeout)
            record(exit)
            if exit.isSuccess {
                logger.info("exec: command exited", metadata: ["pid": "\(child.pid)", "status": "\(exit)"])
            } else {
                logger.warning("exec: command failed", metadata: ["pid": "\(child.pid)", "status": "\(exit)"])
            }
            guard stopRequested.value == nil else { break }
            switch spec.restart {
            case .never: break
            case .onFailure where exit.isSuccess: break
            case .onFailure, .always:
                if ContinuousClock.now - startedAt >= handler.options.maxRestartBackoff {
                    backoff = handler.options.restartBackoff
                }
                logger.info("exec: restarting after back-off", metadata: ["backoff": "\(backoff)", "policy": "\(spec.restart.rawValue)"])
                guard await pause(backoff) else { break }
                backoff = min(backoff * 2, handler.options.maxRestartBackoff)
                continue
            }
            break
        }
        status.withLock {
            $0.pid = nil
            $0.isFinished = true
        }
        finished.fulfill(())
    }

    private func record(_ exit: ExitStatus) {
        status.withLock {
            $0.pid = nil
            $0.lastExit = exit.description
        }
    }

    /// Sleeps `duration` unless a stop is requested first; true when it slept the whole time.
    private func pause(_ duration: Duration) async -> Bool {
        let woke = await firstOf([
            { try? await Task.sleep(for: duration) },
            { _ = await self.stopRequested.wait(cancellable: true) },
        ])
        return woke == 0 && stopRequested.value == nil
    }

    /// SIGTERM to the group, up to the grace period, SIGKILL, reap.
    private func stop(_ child: Child) async -> ExitStatus {
        child.signalGroup(SIGTERM)
        child.signalGroup(SIGCONT)
        if escalate.value == nil, spec.grace > .zero {
            _ = await firstOf([
                { _ = await child.exited.wait(cancellable: true) },
                { try? await Task.sleep(for: self.spec.grace) },
                { _ = await self.escalate.wait(cancellable: true) },
            ])
        }
        if child.exited.value == nil {
            logger.warning("exec: command did not exit after SIGTERM; sending SIGKILL", metadata: ["pid": "\(child.pid)", "grace": "\(spec.grace)"])
            child.signalGroup(SIGKILL)
        }
        return await child.reap(drainTimeout: handler.options.outputDrainTimeout)
    }
}

/// A spawned child: its pid, the `waitid` thread's exit signal, the output threads' end signal.
private final class Child: Sendable {
    let pid: pid_t
    /// Fulfilled when the child has exited (still unreaped: its pid and process group stay reserved).
    let exited = OneShot<Void>()
    /// Fulfilled when both output pipes reached end of file.
    let drained = OneShot<Void>()
    private let openStreams = Mutex(2)

    private init(pid: pid_t) { self.pid = pid }

    func signalGroup(_ signal: Int32) {
        _ = killpg(pid, signal)
    }

    /// Once exited: kills what is left in its process group, reaps it, waits (bounded) for the rest
    /// of its output.
    func reap(drainTimeout: Duration) async -> ExitStatus {
        _ = await exited.wait(cancellable: false)
        signalGroup(SIGKILL)
        var raw: Int32 = 0
        var result: pid_t
        repeat { result = waitpid(pid, &raw, 0) } while result < 0 && errno == EINTR
        if drained.value == nil {
            _ = await firstOf([
                { _ = await self.drained.wait(cancellable: true) },
                { try? await Task.sleep(for: drainTimeout) },
            ])
        }
        return result == pid ? ExitStatus(raw: raw) : ExitStatus(raw: nil)
    }

    static func spawn(spec: ExecSpec, target: ExecTarget, base: [String: String], logger: Logger) throws(ServiceError) -> Child {
        var output: [Int32] = [-1, -1]
        var errors: [Int32] = [-1, -1]
        guard SpawnSupport.pipe(&output), SpawnSupport.pipe(&errors) else {
            let reason = String(cString: strerror(errno))
            for fd in output + errors where fd >= 0 { close(fd) }
            throw ServiceError(.execFailed, "exec: cannot create pipes for '\(target.argv0)': \(reason)")
        }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, output[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errors[1], 2)
        // Every other descriptor: the pipes are close-on-exec, but descriptors other threads open
        // without O_CLOEXEC would leak into the child (and keep pipes of other children open).
        SpawnSupport.closeFrom(&actions, 3)

        var environment = base
        for (name, value) in spec.env { environment[name] = value }
        let argv: [UnsafeMutablePointer<CChar>?] = ([target.argv0] + spec.args).map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in argv + envp { free(pointer) } }

        var pid: pid_t = 0
        let result = posix_spawn(&pid, target.executable, &actions, &attributes, argv, envp)
        close(output[1])
        close(errors[1])
        guard result == 0 else {
            close(output[0])
            close(errors[0])
            throw ServiceError(.execFailed, "exec: cannot start '\(target.argv0)' (\(target.executable)): \(String(cString: strerror(result)))")
        }

        let child = Child(pid: pid)
        child.startThreads(stdout: output[0], stderr: errors[0], logger: logger)
        return child
    }

    private func startThreads(stdout: Int32, stderr: Int32, logger: Logger) {
        var logger = logger
        logger[metadataKey: "pid"] = "\(pid)"
        for (fd, stream) in [(stdout, "stdout"), (stderr, "stderr")] {
            var streamLogger = logger
            streamLogger[metadataKey: "stream"] = "\(stream)"
            let lineLogger = streamLogger
            SpawnSupport.thread(name: "exec-\(pid)-\(stream)") {
                Self.pump(fd: fd, logger: lineLogger)
                let last = self.openStreams.withLock { count -> Bool in
                    count -= 1
                    return count == 0
                }
                if last { self.drained.fulfill(()) }
            }
        }
        let pid = self.pid
        SpawnSupport.thread(name: "exec-\(pid)-wait") {
            var info = siginfo_t()
            while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) != 0, errno == EINTR {}
            self.exited.fulfill(())
        }
    }

    /// Longest line logged as one message; longer ones are split.
    static let maxLine = 16 * 1024

    /// Reads `fd` to end of file, logging each line; closes it.
    private static func pump(fd: Int32, logger: Logger) {
        defer { close(fd) }
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 1)
        defer { chunk.deallocate() }
        var line: [UInt8] = []
        func emit() {
            if line.last == 0x0D { line.removeLast() }
            logger.info("\(String(decoding: line, as: UTF8.self))")
            line.removeAll(keepingCapacity: true)
        }
        while true {
            let count = read(fd, chunk.baseAddress, chunk.count)
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            for byte in chunk[0..<count] {
                if byte == 0x0A {
                    emit()
                } else {
                    line.append(byte)
                    if line.count >= maxLine { emit() }
                }
            }
        }
        if !line.isEmpty { emit() }
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

/// Runs `operations` concurrently; returns the index of the first to finish and cancels the rest
/// (which must return promptly when cancelled).
private func firstOf(_ operations: [@Sendable () async -> Void]) async -> Int {
    await withTaskGroup(of: Int.self) { group in
        for (index, operation) in operations.enumerated() {
            group.addTask {
                await operation()
                return index
            }
        }
        let first = await group.next() ?? 0
        group.cancelAll()
        return first
    }
}

private enum SpawnSupport {
    private typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32
    private typealias Pipe2 = @convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> Int32

    // glibc ≥ 2.34 and 2.9 have them, but Swift's Glibc module does not declare these GNU
    // extensions: look them up at run time.
    private static let closeFromFunction: CloseFrom? = symbol("posix_spawn_file_actions_addclosefrom_np")
    private static let pipe2Function: Pipe2? = symbol("pipe2")

    private static func symbol<F>(_ name: String) -> F? {
        guard let handle = dlopen(nil, RTLD_NOW), let pointer = dlsym(handle, name) else { return nil }
        return unsafeBitCast(pointer, to: F.self)
    }

    /// `posix_spawn_file_actions_addclosefrom_np(actions, lowest)` when libc has it.
    static func closeFrom(_ actions: inout posix_spawn_file_actions_t, _ lowest: Int32) {
        guard let closeFromFunction else { return }
        _ = closeFromFunction(&actions, lowest)
    }

    /// A close-on-exec pipe (atomically with `pipe2`, else `pipe` + `fcntl`).
    static func pipe(_ fds: inout [Int32]) -> Bool {
        fds.withUnsafeMutableBufferPointer { buffer in
            if let pipe2Function { return pipe2Function(buffer.baseAddress, O_CLOEXEC) == 0 }
            guard Glibc.pipe(buffer.baseAddress) == 0 else { return false }
            for fd in buffer { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            return true
        }
    }

    /// A plain thread (not a Swift concurrency one) for blocking calls.
    static func thread(name: String, _ body: @escaping @Sendable () -> Void) {
        let thread = Thread(block: body)
        thread.name = name
        thread.stackSize = 512 * 1024
        thread.start()
    }
}
