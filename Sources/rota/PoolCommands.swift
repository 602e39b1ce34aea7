import ArgumentParser
import Foundation
import Logging
import Rota
import RotaHTTP
import RotaRedis
import RotaPlans
import RotaService
import RotaStore
import ServiceLifecycle

// Commands that work on a running pool: a standalone worker node, and the client commands
// (dispatch, stop, notify). Exit codes of the client commands: 0 success, 1 failure,
// 3 the job already exists (dispatch), 4 the job does not exist (stop, notify), 5 a worker failed
// to stop its job (stop), 10 the pool is at its job limit (dispatch), 11 the job waits for a
// worker with its handler (dispatch), 12 it still waits when --wait runs out (dispatch).
// `rota dispatch` is in DispatchCommand.swift.

/// The Redis URL of a command that needs an existing pool (no private server: it would be empty).
func requiredRedisConfiguration(_ options: PoolOptions, command: String) throws -> RedisConfiguration {
    guard let configuration = try options.redisConfiguration() else {
        throw CommandFailure("rota \(command) works on an existing pool: give --redis URL (or set ROTA_REDIS_URL)")
    }
    return configuration
}

/// Runs `body` with a running client once Redis answered a PING (so an unreachable server fails
/// within the command timeout instead of waiting for a reconnect forever).
func withPoolClient<R: Sendable>(
    _ configuration: RedisConfiguration,
    _ body: (RedisClient) async throws -> R
) async throws -> R {
    try await RedisClient.withClient(configuration) { client in
        do {
            _ = try await client.send(RedisCommand("PING"), timeout: .seconds(5))
        } catch {
            throw CommandFailure("cannot reach Redis at \(configuration): \((error as? RedisError)?.message ?? "\(error)")")
        }
        return try await body(client)
    }
}

/// Runs `body` on a client-only node of the pool (it dispatches, stops and notifies; it routes
/// nothing), then leaves the pool.
func withClientNode<R: Sendable>(
    _ options: PoolOptions,
    command: String,
    _ body: @escaping @Sendable (Node) async throws -> R
) async throws -> R {
    var configuration = try requiredRedisConfiguration(options, command: command)
    configuration.commandConnections = 1
    return try await withPoolClient(configuration) { client in
        var nodeOptions = Node.Options()
        nodeOptions.clientOnly = true
        nodeOptions.name = "rota-\(command)-\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)"
        let node: Node
        do {
            node = try Node(pool: options.pool, client: client, options: nodeOptions)
        } catch {
            throw CommandFailure(poolMessage(error))
        }
        return try await withThrowingTaskGroup(of: Void.self, returning: R.self) { group in
            group.addTask { try await node.run() }
            do {
                try await node.waitUntilReady()
            } catch {
                group.cancelAll()
                throw CommandFailure("joining pool \(options.pool): \((error as? PoolError)?.message ?? "\(error)")")
            }
            let result: Result<R, any Error>
            do {
                result = .success(try await body(node))
            } catch {
                result = .failure(error)
            }
            // Leave properly: the node's inbox and name go away with it.
            try? await node.close()
            try? await group.waitForAll()
            return try result.get()
        }
    }
}

/// Prints `Error: message` like ArgumentParser does and returns the exit code to throw.
func failure(_ message: String, exitCode: Int32) -> ExitCode {
    FileHandle.standardError.write(Data("Error: \(message)\n".utf8))
    return ExitCode(exitCode)
}

/// The bytes of `--payload TEXT` or `--payload-file F` (`-` reads standard input); empty without either.
func payloadBytes(text: String?, file: String?, textName: String = "--payload") throws -> [UInt8] {
    switch (text, file) {
    case (.some, .some):
        throw CommandFailure("give \(textName) or --payload-file, not both")
    case (let text?, nil):
        return Array(text.utf8)
    case (nil, let path?):
        if path == "-" { return Array(FileHandle.standardInput.readDataToEndOfFile()) }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CommandFailure("--payload-file: cannot read '\(path)'")
        }
        return Array(data)
    case (nil, nil):
        return []
    }
}

/// The message of a pool error without its code prefix; other errors as they describe themselves.
func poolMessage(_ error: any Error) -> String {
    if let error = error as? PoolError { return error.message }
    if let error = error as? CommandFailure { return error.description }
    return "\(error)"
}

// MARK: rota worker

struct WorkerCommand: ParsableCommand, AsyncCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run a worker node of an existing pool with the built-in handlers, until SIGTERM/SIGINT.",
        discussion: """
            The node hosts --workers workers running the built-in handlers: `log`, and `exec` limited to \
            the programs of --exec-policy and --allow-exec. It plans nothing (that is `rota run`). On \
            SIGTERM/SIGINT it leaves the pool: its jobs move to the workers of the other nodes, then the \
            children of its exec jobs are stopped.
            """
    )

    @OptionGroup var poolOptions: PoolOptions

    @Option(help: "Workers in this process.")
    var workers = 2

    @Option(help: "The exec handler's policy (YAML): the programs jobs may run, with the arguments and environment a job may pass each. None by default.")
    var execPolicy: String?

    @Option(help: "A program the exec handler may run with no arguments and no environment from the job (glob on absolute paths; repeatable). Arguments need --exec-policy.")
    var allowExec: [String] = []

    @Option(name: .customLong("handler"), help: "Offer a built-in handler under a name: NAME or NAME=KIND, KIND `log` or `exec` (repeatable). The names are this process's workers' capabilities: only jobs naming one of them are routed here. Default: log and exec.")
    var handlers: [String] = []

    @Option(help: "This node's name in `rota status` and in the history (default: the host name; keep it the same across restarts).")
    var name: String?

    @OptionGroup var httpOptions: HTTPOptions

    @Option(help: "Log format: text or json.")
    var logFormat: LogFormat = .text

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"

    func validate() throws {
        guard workers >= 1 else { throw ValidationError("--workers must be at least 1") }
        guard poolOptions.redisURL != nil else {
            throw ValidationError("a worker joins an existing pool: give --redis URL (rota run starts a private Redis, rota worker does not)")
        }
    }

    func execute() async throws {
        let policy = try loadExecPolicy(file: execPolicy, allowExec: allowExec)
        let configuration = try requiredRedisConfiguration(poolOptions, command: "worker")
        let logger = try bootstrapLogging(format: logFormat, level: logLevel)
        let (registry, exec) = try builtInRegistry(policy: policy, handlers: handlers, logger: logger)
        let client = RedisClient(configuration: configuration, logger: logger)
        var nodeOptions = Node.Options()
        nodeOptions.logger = logger
        if let name { nodeOptions.name = name }
        let node: Node
        do {
            node = try Node(pool: poolOptions.pool, client: client, options: nodeOptions)
        } catch {
            throw CommandFailure(error.message)
        }
        let service = WorkerNodeService(node: node, workers: workers, exec: exec, logger: logger, runner: RegistryJobRunner(registry: registry))
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: client), .init(service: service)]
        if let http = try httpOptions.configuration() {
            // A worker plans nothing: ready once its node joined and Redis answers.
            services.append(.init(service: HTTPServer(
                configuration: http, readiness: [.nodeJoined(node), .redisAnswers(client)],
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
            // Children of exec jobs never outlive the worker that supervises them.
            await exec.stopAll()
            throw CommandFailure("\(poolMessage(error))")
        }
        await exec.stopAll()
    }
}

/// A node hosting workers: joins, adds the workers, and on graceful shutdown closes the node (its
/// jobs move to other nodes) before the exec children are stopped.
struct WorkerNodeService: Service {
    let node: Node
    let workers: Int
    let exec: ExecJobRunner
    let logger: Logger
    let runner: RegistryJobRunner

    func run() async throws {
        try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                try await node.run()
                return true
            }
            group.addTask {
                try? await gracefulShutdown()
                guard !Task.isCancelled else { return false }
                logger.info("shutting down: handing jobs over to the other nodes")
                try? await node.close()
                await exec.stopAll()
                return false
            }
            do {
                try await node.waitUntilReady()
                // Each worker declares its handlers: dispatches require the envelope's handler, so
                // a job only comes to a worker that can run it.
                for _ in 0..<workers {
                    _ = try await node.addWorker(runner, capabilities: runner.capabilities)
                }
            } catch {
                group.cancelAll()
                throw error
            }
            logger.info("rota worker ready", metadata: [
                "pool": "\(node.pool)", "node": "\(node.id)", "name": "\(node.options.name)",
                "workers": "\(node.localWorkers.map(\.id).joined(separator: ","))",
                "capabilities": "\(runner.capabilities.sorted().joined(separator: ","))",
            ])
            // The node ends after close, or when the pool shuts down: then stop waiting for signals.
            while let nodeEnded = try await group.next() {
                if nodeEnded { group.cancelAll() }
            }
        }
    }
}

// MARK: rota stop / rota notify

struct StopCommand: ParsableCommand, AsyncCommand {
    static let configuration = CommandConfiguration(
        commandName: "stop",
        abstract: "Stop jobs of the pool for good; returns once each job's worker confirmed the stop.",
        discussion: """
            A job that no worker runs right now (awaiting a worker, its worker lost) is ended by the pool itself. Every stop is \
            recorded in the history with its outcome and who asked.
            Exit status: 0 every job stopped, 4 some job was not found (the others are stopped), 5 some worker failed to stop \
            its job (it still runs), 1 any other failure.
            """
    )

    @Argument(help: "The job keys.")
    var keys: [String]

    @Flag(help: .hidden)
    var wait = false

    @OptionGroup var poolOptions: PoolOptions

    @OptionGroup var historyKeyOptions: HistoryKeyOptions

    func validate() throws {
        guard !keys.isEmpty else { throw ValidationError("give at least one job key") }
    }

    func execute() async throws {
        let historyKey = try historyKeyOptions.load()
        let keys = self.keys, actor = currentActor(), pool = poolOptions.pool
        let (missing, failed): ([String], [String]) = try await withClientNode(poolOptions, command: "stop") { node in
            var missing: [String] = [], failed: [String] = []
            for key in keys {
                let asked = Date()
                do {
                    switch try await node.stopAndWait(key: key, origin: JobOrigin(actor: actor, reason: Reason.manual)) {
                    case .stopped(let worker):
                        print("stopped \(key) (worker \(worker))")
                        await recordManual(pool: pool, key: historyKey, node: node, job: key, action: .stop, outcome: .stopped, actor: actor, asked: asked)
                    case .endedUnowned:
                        print("stopped \(key) (no worker ran it: ended by the pool)")
                        await recordManual(pool: pool, key: historyKey, node: node, job: key, action: .stop, outcome: .stopped, actor: actor, asked: asked)
                    case .notRunning:
                        missing.append(key)
                        await recordManual(pool: pool, key: historyKey, node: node, job: key, action: .stop, outcome: .notFound, actor: actor, asked: asked)
                    }
                } catch let error as PoolError where error.code == .stopFailed || error.code == .timeout {
                    FileHandle.standardError.write(Data("Error: job \(key) did not stop: \(error.message)\n".utf8))
                    failed.append(key)
                    await recordManual(pool: pool, key: historyKey, node: node, job: key, action: .stop, outcome: .stopFailed, error: error.message, actor: actor,
                        asked: asked)
                } catch {
                    throw CommandFailure("stopping \(key): \(poolMessage(error))")
                }
            }
            return (missing, failed)
        }
        guard failed.isEmpty else { throw ExitCode(5) }
        guard missing.isEmpty else {
            throw failure(missing.map { "job \($0) not found" }.joined(separator: "\nError: "), exitCode: 4)
        }
    }
}

/// Puts a manual action on the pool's history stream. A failure is reported, not thrown: the
/// action itself happened.
func recordManual(pool: String, key: HistoryKey?, node: Node, job: String, action: ActionKind, outcome: ActionOutcome,
                  error: String? = nil, payloadHash: String? = nil, actor: String, asked: Date) async {
    do {
        try await ManualActionLog(pool: pool, client: node.client, historyKey: key).record(job: job, action: action, outcome: outcome, error: error,
            payloadHash: payloadHash, actor: actor, startedAt: asked)
    } catch {
        FileHandle.standardError.write(Data("Warning: the action on \(job) could not be recorded in the pool's history: \(error)\n".utf8))
    }
}

struct NotifyCommand: ParsableCommand, AsyncCommand {
    static let configuration = CommandConfiguration(
        commandName: "notify",
        abstract: "Send a notification to the worker running a job.",
        discussion: "Exit status: 0 sent, 4 the job was not found, 1 any other failure."
    )

    @Argument(help: "The job key.")
    var key: String

    @Argument(help: "The notification, as text.")
    var text: String?

    @Option(help: "Read the notification from this file (- for standard input).")
    var payloadFile: String?

    @OptionGroup var poolOptions: PoolOptions

    @OptionGroup var historyKeyOptions: HistoryKeyOptions

    func execute() async throws {
        let payload = try payloadBytes(text: text, file: payloadFile, textName: "TEXT")
        let historyKey = try historyKeyOptions.load()
        let key = self.key, actor = currentActor(), pool = poolOptions.pool
        let found: Bool = try await withClientNode(poolOptions, command: "notify") { node in
            let asked = Date()
            guard try await node.jobPayload(key) != nil else {
                await recordManual(pool: pool, key: historyKey, node: node, job: key, action: .notify, outcome: .notFound, actor: actor, asked: asked)
                return false
            }
            do {
                try await node.notify(key: key, payload: payload, origin: JobOrigin(actor: actor, reason: Reason.manual))
            } catch {
                throw CommandFailure("notifying \(key): \(poolMessage(error))")
            }
            // Queued for the job's worker: the pool does not confirm notifications.
            await recordManual(pool: pool, key: historyKey, node: node, job: key, action: .notify, outcome: .notified, actor: actor, asked: asked)
            return true
        }
        guard found else { throw failure("job \(key) not found", exitCode: 4) }
        print("notified \(key)")
    }
}
