import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// An async Redis client: a few multiplexed connections for ordinary commands, plus dedicated
/// connections for blocking commands and pub/sub.
///
/// The initializer does no I/O. ``run()`` connects and keeps the connections up; it must be running
/// (directly, in a task group, or as a `Service` in a `ServiceGroup`) while the client is used.
/// ``withClient(_:eventLoopGroup:logger:_:)`` does both for scoped use.
///
/// ```swift
/// let client = RedisClient(configuration: try RedisConfiguration(url: "redis://localhost:6379"))
/// try await withThrowingDiscardingTaskGroup { group in
///     group.addTask { try await client.run() }
///     try await client.send("SET", "greeting", "hello")
///     group.cancelAll()
/// }
/// ```
public final class RedisClient: Service, Sendable {
    public let configuration: RedisConfiguration
    let eventLoopGroup: any EventLoopGroup
    let logger: Logger
    private let connections: [RedisConnection]
    private let nextConnection = Atomic<Int>(0)

    /// - Parameters:
    ///   - eventLoopGroup: where connections live; NIO's shared singleton group by default.
    ///   - logger: connection events are logged here; nothing is logged by default.
    public init(
        configuration: RedisConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "rota.redis", factory: { _ in SwiftLogNoOpLogHandler() })
    ) {
        self.configuration = configuration
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        self.connections = (0..<max(1, configuration.commandConnections)).map { _ in
            RedisConnection(configuration: configuration, eventLoop: eventLoopGroup.next(), logger: logger)
        }
    }

    /// Keeps the command connections up until cancelled or until graceful shutdown.
    /// Throws when a connection is refused for good (wrong password, bad database).
    public func run() async throws {
        do {
            try await cancelWhenGracefulShutdown {
                try await withThrowingDiscardingTaskGroup { group in
                    for connection in self.connections {
                        group.addTask {
                            do {
                                try await connection.run()
                            } catch let error as RedisError {
                                // Before the group cancels the others: commands queued on them
                                // fail with this error rather than with "connection closed".
                                for other in self.connections { other.fail(error) }
                                throw error
                            }
                        }
                    }
                }
            }
        } catch let error as RedisError {
            // One connection was refused for good; the others would be too. Every later command
            // fails with this error instead of a vague "connection closed".
            for connection in connections { connection.fail(error) }
            throw error
        }
    }

    /// Runs a client for the duration of `body`.
    public static func withClient<R: Sendable>(
        _ configuration: RedisConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "rota.redis", factory: { _ in SwiftLogNoOpLogHandler() }),
        isolation: isolated (any Actor)? = #isolation,
        _ body: (RedisClient) async throws -> R
    ) async throws -> R {
        let client = RedisClient(configuration: configuration, eventLoopGroup: eventLoopGroup, logger: logger)
        return try await withThrowingTaskGroup(of: Void.self, returning: R.self, isolation: isolation) { group in
            group.addTask { try await client.run() }
            defer { group.cancelAll() }
            return try await body(client)
        }
    }

    /// The connection for the next command: one on the caller's own event loop if there is one (no
    /// thread hop when NIO runs Swift concurrency), otherwise the next in turn.
    private var connection: RedisConnection {
        if connections.count == 1 { return connections[0] }
        for connection in connections where connection.eventLoop.inEventLoop { return connection }
        let index = nextConnection.wrappingAdd(1, ordering: .relaxed).oldValue
        return connections[Int(UInt(bitPattern: index) % UInt(connections.count))]
    }

    // MARK: Commands

    /// Sends one command and returns its reply; an error reply throws a `.server` ``RedisError``.
    ///
    /// Blocking commands (BLPOP, XREAD… BLOCK) belong on a dedicated connection
    /// (``withDedicatedConnection(_:)``) so they cannot hold up other callers.
    public func send(_ command: RedisCommand, timeout: Duration? = nil) async throws -> RedisValue {
        try await connection.send(command, timeout: timeout)
    }

    /// Queues a command without waiting for its reply; see ``RedisConnection/send(_:timeout:onReply:)``.
    public func send(
        _ command: RedisCommand, timeout: Duration? = nil, onReply: @escaping @Sendable (Result<RedisValue, RedisError>) -> Void
    ) throws {
        try connection.send(command, timeout: timeout, onReply: onReply)
    }

    /// Sends `name` with `arguments`, e.g. `send("HSET", key, field, value)`.
    @discardableResult
    public func send(_ name: String, _ arguments: any RedisArgument...) async throws -> RedisValue {
        try await connection.send(arguments: [name] + arguments, timeout: nil)
    }

    /// Sends the commands in one write on one connection and returns every reply in order; error
    /// replies are returned in place as ``RedisValue/error(_:)``.
    public func pipeline(_ commands: [RedisCommand], timeout: Duration? = nil) async throws -> [RedisValue] {
        try await connection.pipeline(commands, timeout: timeout)
    }

    /// Runs a Lua script by SHA, loading it again if the server lost it (NOSCRIPT).
    public func evaluate(_ script: RedisScript, keys: [any RedisArgument] = [], arguments: [any RedisArgument] = []) async throws -> RedisValue {
        let command: [any RedisArgument] = ["EVALSHA", script.sha1, keys.count] + keys + arguments
        do {
            return try await connection.send(arguments: command, timeout: nil)
        } catch let error as RedisError where error.serverErrorPrefix == "NOSCRIPT" {
            let loaded = try await send("SCRIPT", "LOAD", script.source)
            guard loaded.string == script.sha1 else {
                throw RedisError(.protocolError, "SCRIPT LOAD returned \(loaded), expected \(script.sha1)")
            }
            return try await connection.send(arguments: command, timeout: nil)
        }
    }

    // MARK: Dedicated connections

    /// Runs `body` with a connection of its own, opened for the call and closed after it.
    ///
    /// Use it for blocking commands (`XREADGROUP … BLOCK`, `BLPOP`) and long read loops: whatever
    /// they wait for, the client's shared connections stay free. The connection reconnects like any
    /// other while `body` runs.
    public func withDedicatedConnection<R: Sendable>(
        isolation: isolated (any Actor)? = #isolation,
        _ body: (RedisConnection) async throws -> R
    ) async throws -> R {
        let connection = RedisConnection(configuration: configuration, eventLoop: eventLoopGroup.next(), logger: logger)
        return try await withThrowingTaskGroup(of: Void.self, returning: R.self, isolation: isolation) { group in
            group.addTask { try await connection.run() }
            defer { group.cancelAll() }
            return try await body(connection)
        }
    }

    /// Subscribes on a dedicated connection and runs `body` with the subscription; returns once
    /// the server confirmed the initial subscriptions, and unsubscribes (closes) when `body` returns.
    public func withSubscription<R: Sendable>(
        channels: [String] = [],
        patterns: [String] = [],
        isolation: isolated (any Actor)? = #isolation,
        _ body: (RedisSubscription) async throws -> R
    ) async throws -> R {
        try await withSubscription(channels: channels, patterns: patterns, handler: nil, isolation: isolation, body)
    }

    /// Like ``withSubscription(channels:patterns:isolation:_:)``, but every event is handed to
    /// `handler` on the connection's event loop as it arrives, instead of to the subscription's
    /// sequence. The handler must not block; it saves the task hop a sequence consumer costs.
    public func withSubscription<R: Sendable>(
        channels: [String] = [],
        patterns: [String] = [],
        handler: (@Sendable (RedisPubSubEvent) -> Void)?,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (RedisSubscription) async throws -> R
    ) async throws -> R {
        let subscription = RedisSubscription(commandTimeout: configuration.commandTimeout, handler: handler)
        let connection = RedisConnection(
            configuration: configuration,
            eventLoop: eventLoopGroup.next(),
            logger: logger,
            onPush: { subscription.push($0) },
            onConnected: { subscription.connected() }
        )
        subscription.attach(connection)
        return try await withThrowingTaskGroup(of: Void.self, returning: R.self, isolation: isolation) { group in
            group.addTask {
                do {
                    try await connection.run()
                    subscription.finish(throwing: nil)
                } catch {
                    subscription.finish(throwing: error)
                    throw error
                }
            }
            defer {
                subscription.finish(throwing: nil)
                group.cancelAll()
            }
            if !channels.isEmpty { try await subscription.subscribe(channels: channels) }
            if !patterns.isEmpty { try await subscription.subscribe(patterns: patterns) }
            return try await body(subscription)
        }
    }
}
