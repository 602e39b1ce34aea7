import ArgumentParser
import Foundation
import Logging
import Rota
import RotaRedis
import RotaRedisServer
import RotaService
import ServiceLifecycle

enum LogFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

/// Options shared by the commands that join a pool.
struct PoolOptions: ParsableArguments {
    @Option(help: "Redis URL (redis://[user[:password]@]host[:port][/db] or unix:///path?db=N).")
    var redis: String?

    @Option(help: "The pool.")
    var pool = "default"
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

    @Option(help: "Embedded workers in this process (0: plan only).")
    var workers = 2

    @Option(help: "This node's name in `rota status` (default: host name and process ID).")
    var name: String?

    @Option(help: "Executables the exec handler may run (glob patterns on absolute paths; repeatable). None by default.")
    var allowExec: [String] = []

    @Option(help: "Serve metrics in Prometheus text format on this port (GET /metrics).")
    var metricsPort: Int?

    @Option(help: "Log format: text or json.")
    var logFormat: LogFormat = .text

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"

    func execute() async throws {
        let logger = bootstrapLogging(format: logFormat, level: logLevel)
        try await withRedis(poolOptions.redis, logger: logger) { redisConfiguration in
            let client = RedisClient(configuration: redisConfiguration, logger: logger)
            let (registry, exec) = try builtInRegistry(allowExec: allowExec, logger: logger)
            var nodeOptions = Node.Options()
            if let name { nodeOptions.name = name }
            let service = try RunService(
                configuration: .init(
                    planPaths: plans, databasePath: db, pool: poolOptions.pool, workers: workers,
                    makeHandler: { RegistryJobHandler(registry: registry, logger: logger) }, nodeOptions: nodeOptions, logger: logger
                ),
                client: client
            )
            var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: client), .init(service: service)]
            if let metricsPort {
                services.append(.init(service: MetricsServer(port: metricsPort, registry: MetricsServer.bootstrap(), logger: logger)))
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

/// Runs `body` against `url`, or against a private redis-server started for the run (on a Unix
/// socket in a temporary directory, stopped afterwards) when no URL is given.
func withRedis(_ url: String?, logger: Logger, _ body: (RedisConfiguration) async throws -> Void) async throws {
    if let url {
        let configuration: RedisConfiguration
        do {
            configuration = try RedisConfiguration(url: url)
        } catch {
            throw CommandFailure("--redis: \(error.message)")
        }
        try await body(configuration)
        return
    }
    var options = RedisServer.Options()
    options.ownProcessGroup = true  // Ctrl-C stops rota, which hands its jobs over, then stops the server
    let server = RedisServer(options: options)
    do {
        try await server.start()
    } catch {
        throw CommandFailure("no --redis given and a private redis-server could not be started (is redis-server installed?): \(error)")
    }
    // The private server listens on a Unix socket in its temporary directory.
    var configuration = server.configuration
    if let socket = server.socketPath { configuration = RedisConfiguration(endpoint: .unixSocket(path: socket)) }
    logger.info("started a private redis-server for this run", metadata: ["redis": "\(configuration.endpoint)"])
    do {
        try await body(configuration)
    } catch {
        await server.stop(removeDirectory: true)
        throw error
    }
    await server.stop(removeDirectory: true)
}

/// The built-in handlers: `log`, and `exec` limited to the allow-listed executables.
func builtInRegistry(allowExec: [String], logger: Logger) throws -> (HandlerRegistry, ExecJobHandler) {
    let exec: ExecJobHandler
    do {
        exec = try ExecJobHandler(allowed: allowExec, logger: logger)
    } catch {
        throw CommandFailure("--allow-exec: \(error)")
    }
    var registry = HandlerRegistry()
    try registry.register("log", LogJobHandler(logger: logger))
    try registry.register("exec", exec)
    return (registry, exec)
}

func bootstrapLogging(format: LogFormat, level: String) -> Logger {
    let logLevel = Logger.Level(rawValue: level) ?? .info
    LoggingSystem.bootstrap { label in
        var handler: any LogHandler = format == .json
            ? JSONLogHandler(label: label)
            : StreamLogHandler.standardError(label: label)
        handler.logLevel = logLevel
        return handler
    }
    var logger = Logger(label: "rota")
    logger.logLevel = logLevel
    return logger
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
