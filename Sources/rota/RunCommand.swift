import ArgumentParser
import Foundation
import Logging
import Rota
import RotaHTTP
import RotaPlans
import RotaRedis
import RotaRedisServer
import RotaService
import RotaStore
import ServiceLifecycle

enum LogFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

/// Options shared by the commands that join a pool.
struct PoolOptions: ParsableArguments {
    @Option(help: "Redis URL (redis://[user[:password]@]host[:port][/db] or unix:///path?db=N); default: $ROTA_REDIS_URL.")
    var redis: String?

    @Option(help: "A file holding the Redis password (it then stays out of the process list and the URL names at most the user).")
    var redisPasswordFile: String?

    @Option(help: "The pool.")
    var pool = "default"

    /// `--redis`, or `ROTA_REDIS_URL` (an environment variable does not show in `ps`).
    var redisURL: String? {
        if let redis { return redis }
        guard let url = ProcessInfo.processInfo.environment["ROTA_REDIS_URL"], !url.isEmpty else { return nil }
        return url
    }

    /// The Redis to use, or nil when none is given. Errors name the option and never the password.
    func redisConfiguration() throws -> RedisConfiguration? {
        guard let url = redisURL else {
            if redisPasswordFile != nil { throw CommandFailure("--redis-password-file needs --redis URL (or ROTA_REDIS_URL)") }
            return nil
        }
        let option = redis != nil ? "--redis" : "ROTA_REDIS_URL"
        do {
            guard let file = redisPasswordFile else { return try RedisConfiguration(url: url) }
            return try RedisConfiguration(url: url, password: try readPasswordFile(file))
        } catch let error as RedisError {
            throw CommandFailure("\(option): \(error.message)")
        }
    }
}

/// The password in `path`: its text without one trailing newline. Refuses an empty or oversized
/// file; warns when other users may read it.
func readPasswordFile(_ path: String) throws -> String {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw CommandFailure("--redis-password-file: cannot read '\(path)'")
    }
    guard data.count <= 4096 else { throw CommandFailure("--redis-password-file: '\(path)' is larger than 4 KiB: not a password") }
    var text = String(decoding: data, as: UTF8.self)
    if text.hasSuffix("\r\n") { text.removeLast(2) } else if text.hasSuffix("\n") { text.removeLast() }
    guard !text.isEmpty else { throw CommandFailure("--redis-password-file: '\(path)' is empty") }
    if let mode = (try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? Int, mode & 0o077 != 0 {
        FileHandle.standardError.write(Data("warning: --redis-password-file: '\(path)' may be read by other users (mode \(String(mode, radix: 8))); chmod 600 it\n".utf8))
    }
    return text
}

/// `--history-key-file` (or `ROTA_HISTORY_KEY_FILE`): the pool's history key, which signs and
/// checks the history stream's entries, prune records and stored heads (README: "Authenticated
/// history").
struct HistoryKeyOptions: ParsableArguments {
    @Option(help: "A file holding the pool's history key: at least 32 random bytes, raw or as hex (`rota history keygen FILE` makes one). Default: $ROTA_HISTORY_KEY_FILE.")
    var historyKeyFile: String?

    /// The key, or nil when none is given. Warns on stderr when other users may read the file.
    func load() throws -> HistoryKey? {
        let option: String, path: String
        if let historyKeyFile {
            (option, path) = ("--history-key-file", historyKeyFile)
        } else if let file = ProcessInfo.processInfo.environment["ROTA_HISTORY_KEY_FILE"], !file.isEmpty {
            (option, path) = ("ROTA_HISTORY_KEY_FILE", file)
        } else {
            return nil
        }
        do {
            let (key, warning) = try HistoryKey.load(path: path)
            if let warning { FileHandle.standardError.write(Data("warning: \(option): \(warning)\n".utf8)) }
            return key
        } catch {
            throw CommandFailure("\(option): \(error.message)")
        }
    }
}

struct Run: ParsableCommand, AsyncCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the scheduler: the pool's plan → one planner per producer and tick across the nodes → the pool's workers; history in SQLite.",
        discussion: """
            Every node plans from the pool's plan in Redis (`rota plan apply`, `rota producer …`). With --plans, \
            this node also writes its files to the pool's plan when they change: files equal to the pool's plan \
            write nothing; files unchanged since this node applied them while the pool moved on are reported \
            as plan drift (log, metric rota_plan_drift, `rota status`) and not written; edited files are written \
            as a compare-and-set against the revision this node last saw, retiring producers they no longer define.
            """
    )

    @Option(help: "Plan files or directories of *.yaml files (repeatable). None: follow the pool's plan only.")
    var plans: [String] = []

    @Option(help: "The SQLite database of definitions and history (created on first use).")
    var db = "rota.sqlite"

    @OptionGroup var poolOptions: PoolOptions

    @OptionGroup var historyKeyOptions: HistoryKeyOptions

    @Option(help: "Embedded workers in this process (0: plan only).")
    var workers = 2

    @Option(help: "This node's name in `rota status` and in the history (default: the host name; keep it the same across restarts).")
    var name: String?

    @Option(help: "The exec handler's policy (YAML): the programs jobs may run, with the arguments and environment a job may pass each. None by default.")
    var execPolicy: String?

    @Option(help: "A program the exec handler may run with no arguments and no environment from the job (glob on absolute paths; repeatable). Arguments need --exec-policy.")
    var allowExec: [String] = []

    @Option(name: .customLong("handler"), help: "Offer a built-in handler under a name: NAME or NAME=KIND, KIND `log` or `exec` (repeatable). The names are this process's workers' capabilities: only jobs naming one of them are routed here. Default: log and exec.")
    var handlers: [String] = []

    @Option(help: "Without --redis: let the private redis-server listen on 127.0.0.1:PORT too (it listens on a Unix socket only otherwise; the password is in its 0700 directory).")
    var privateRedisPort: Int?

    @OptionGroup var httpOptions: HTTPOptions

    func validate() throws {
        if let privateRedisPort {
            guard (1...65535).contains(privateRedisPort) else { throw ValidationError("--private-redis-port must be 1-65535") }
            guard poolOptions.redisURL == nil else { throw ValidationError("--private-redis-port is for the private redis-server: not with --redis") }
        }
    }

    @Option(help: "Log format: text or json.")
    var logFormat: LogFormat = .text

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"

    func execute() async throws {
        let policy = try loadExecPolicy(file: execPolicy, allowExec: allowExec)
        let historyKey = try historyKeyOptions.load()
        let logger = try bootstrapLogging(format: logFormat, level: logLevel)
        let (registry, exec) = try builtInRegistry(policy: policy, handlers: handlers, logger: logger)
        try await withRedis(try poolOptions.redisConfiguration(), tcpPort: privateRedisPort, logger: logger) { redisConfiguration in
            let client = RedisClient(configuration: redisConfiguration, logger: logger)
            var nodeOptions = Node.Options()
            if let name { nodeOptions.name = name }
            var configuration = RunService.Configuration(
                planPaths: plans, databasePath: db, pool: poolOptions.pool, workers: workers,
                registry: registry, nodeOptions: nodeOptions, logger: logger
            )
            configuration.historyKey = historyKey
            let service = try RunService(configuration: configuration, client: client)
            var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: client), .init(service: service)]
            if let http = try httpOptions.configuration() {
                // Ready once the node joined, Redis answers and the plan is loaded.
                services.append(.init(service: HTTPServer(
                    configuration: http,
                    readiness: [.nodeJoined(service.node), .redisAnswers(client), .planLoaded(service)],
                    metrics: HTTPServer.bootstrapMetrics(), logger: logger)))
            }
            let group = ServiceGroup(configuration: .init(
                services: services,
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            ))
            do {
                try await group.run()
            } catch {
                await exec.stopAll()
                throw error
            }
            // Children of exec jobs never outlive the worker that supervises them.
            await exec.stopAll()
        }
    }
}

/// Runs `body` against `given`, or against a private redis-server started for the run (on a Unix
/// socket in a temporary directory, stopped afterwards) when none is given.
func withRedis(_ given: RedisConfiguration?, tcpPort: Int? = nil, logger: Logger, _ body: (RedisConfiguration) async throws -> Void) async throws {
    if let given {
        try await body(given)
        return
    }
    var options = RedisServer.Options()
    options.ownProcessGroup = true  // Ctrl-C stops rota, which hands its jobs over, then stops the server
    // Nobody else's: no TCP port, a password only this process knows, a 0700 directory around the
    // socket, and gone with this process however it ends.
    options.tcp = tcpPort != nil
    options.tcpPort = tcpPort
    options.password = (0..<4).map { _ in String(UInt64.random(in: 0...UInt64.max), radix: 16) }.joined()
    options.diesWithOwner = true
    let server = RedisServer(options: options)
    do {
        try await server.start()
    } catch {
        throw CommandFailure("no --redis given and a private redis-server could not be started (is redis-server installed?): \(error)")
    }
    // The private server listens on a Unix socket in its temporary directory.
    var configuration = server.configuration
    if let socket = server.socketPath { configuration = RedisConfiguration(endpoint: .unixSocket(path: socket), password: options.password) }
    logger.info("started a private redis-server for this run", metadata: ["redis": "\(configuration.endpoint)"])
    if let tcpPort {
        logger.notice("the private redis-server also listens on 127.0.0.1:\(tcpPort); its password is in \(server.directory)/redis.conf (readable by this user only)")
    }
    do {
        try await body(configuration)
    } catch {
        await server.stop(removeDirectory: true)
        throw error
    }
    await server.stop(removeDirectory: true)
}

/// The exec handler's policy: the `--exec-policy` file's programs, then one per `--allow-exec`
/// pattern. A bad file or pattern is a usage error (exit 64) naming the file, line and cause.
func loadExecPolicy(file: String?, allowExec: [String]) throws -> ExecPolicy {
    var policy: ExecPolicy
    do throws(ServiceError) {
        if let file {
            policy = try ExecPolicy.load(path: file)
        } else {
            policy = try ExecPolicy(programs: [])
        }
    } catch {
        throw failure("--exec-policy: \(error.message)", exitCode: 64)
    }
    do throws(ServiceError) {
        var programs: [ExecPolicy.Program] = []
        for pattern in allowExec { programs.append(try ExecPolicy.Program(allowing: pattern)) }
        policy = try policy.adding(programs)
    } catch {
        throw failure("--allow-exec: \(error.message)", exitCode: 64)
    }
    return policy
}

/// The built-in runners: `log`, and `exec` under `policy`, under their own names or those of
/// `--handler NAME[=KIND]` (one built-in may serve several names: `greet=log` lets a process dry-run
/// `greet` jobs). A policy this process cannot apply (a missing working directory, a limit above
/// its hard limit) or a bad `--handler` is a usage error (exit 64).
func builtInRegistry(policy: ExecPolicy, handlers: [String] = [], logger: Logger) throws -> (HandlerRegistry, ExecJobRunner) {
    let exec: ExecJobRunner
    do throws(ServiceError) {
        exec = try ExecJobRunner(policy: policy, logger: logger)
    } catch {
        throw failure("--exec-policy: \(error.message)", exitCode: 64)
    }
    let log = LogJobRunner(logger: logger)
    var registry = HandlerRegistry()
    for spec in handlers.isEmpty ? ["log", "exec"] : handlers {
        let parts = spec.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        let name = parts[0], kind = parts.count > 1 ? parts[1] : parts[0]
        do throws(ServiceError) {
            switch kind {
            case "log": try registry.register(name, log)
            case "exec": try registry.register(name, exec)
            default: throw ServiceError(.invalidArgument, "unknown built-in handler '\(kind)' (built-ins: log, exec)")
            }
        } catch {
            throw failure("--handler \(terminalSafe(spec)): \(error.message)", exitCode: 64)
        }
    }
    return (registry, exec)
}

/// Sets up logging at `level`. An unknown level is a usage error (exit 64) listing the valid
/// ones: falling back to `info` silently would hide the debug lines someone asked for.
func bootstrapLogging(format: LogFormat, level: String) throws -> Logger {
    guard let logLevel = Logger.Level(rawValue: level) else {
        let valid = Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")
        throw failure("--log-level: unknown level '\(terminalSafe(level))' (valid: \(valid))", exitCode: 64)
    }
    LoggingSystem.bootstrap { label in
        var handler: any LogHandler = format == .json
            ? JSONLogHandler(label: label)
            : TerminalSafeLogHandler(StreamLogHandler.standardError(label: label))
        handler.logLevel = logLevel
        return handler
    }
    var logger = Logger(label: "rota")
    logger.logLevel = logLevel
    return logger
}

/// Text logs with control characters escaped (see ``terminalSafe(_:)``) in the message and every
/// metadata value: job keys, worker names and handler errors come from payloads and Redis, and a
/// newline in one would forge a log line, an ESC would drive the operator's terminal.
struct TerminalSafeLogHandler: LogHandler {
    private var inner: StreamLogHandler
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level {
        get { inner.logLevel }
        set { inner.logLevel = newValue }
    }

    init(_ inner: StreamLogHandler) { self.inner = inner }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var event = event
        event.message = Logger.Message(stringLiteral: terminalSafe("\(event.message)"))
        event.metadata = metadata.merging(event.metadata ?? [:]) { $1 }.reduce(into: [:]) { safe, entry in
            safe[terminalSafe(entry.key)] = Self.safe(entry.value)
        }
        inner.log(event: event)
    }

    private static func safe(_ value: Logger.Metadata.Value) -> Logger.Metadata.Value {
        switch value {
        case .string(let text): .string(terminalSafe(text))
        case .stringConvertible(let convertible): .string(terminalSafe(convertible.description))
        case .array(let values): .array(values.map(safe))
        case .dictionary(let entries): .dictionary(entries.reduce(into: [:]) { $0[terminalSafe($1.key)] = safe($1.value) })
        }
    }
}

/// One JSON object per line on stderr: time (RFC 3339 UTC with milliseconds: log readers such as
/// `rota-chaos` order starts and stops of different processes by it), level, label, message, metadata.
struct JSONLogHandler: LogHandler {
    static let timeFormat = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
    let label: String
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var object: [String: String] = [
            "time": Date().formatted(Self.timeFormat),
            "level": event.level.rawValue,
            "label": label,
            "message": "\(event.message)",
        ]
        for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) { object[key] = "\(value)" }
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
        FileHandle.standardError.write(data + Data("\n".utf8))
    }
}
