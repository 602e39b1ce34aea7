import Foundation
import Logging
@testable import Rota
import RotaRedis
import RotaRedisServer
@_exported import RotaTestSupport
import Synchronization

func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }
func text(_ bytes: [UInt8]?) -> String? { bytes.map { String(decoding: $0, as: UTF8.self) } }

/// Short timings, as the reference's tests use, stretched a little for a 2-core machine running
/// debug builds.
func testOptions(clientOnly: Bool = false, hasher: (any JobHasher)? = nil, logger: Logger? = nil) -> Node.Options {
    var options = Node.Options()
    options.workerTTL = .milliseconds(400)
    options.workerShutdownTTL = .milliseconds(500)
    options.jobSinkBlockDuration = .milliseconds(100)
    options.ackGracePeriod = .milliseconds(300)
    options.clientOnly = clientOnly
    if let hasher { options.hasher = hasher }
    if let logger {
        options.logger = logger
    } else if ProcessInfo.processInfo.environment["ROTA_TEST_LOG"] != nil {
        var logger = Logger(label: "test", factory: { StreamLogHandler.standardError(label: $0) })
        logger.logLevel = .debug
        options.logger = logger
    }
    return options
}

/// A private Redis server, a client and a unique pool name; nodes started with ``start(_:)`` run
/// until the body returns (then they are crashed, i.e. cancelled, if still running).
final class PoolHarness: Sendable {
    let server: RedisServer
    let client: RedisClient
    let pool: String
    private let spawner: AsyncStream<@Sendable () async -> Void>.Continuation

    init(server: RedisServer, client: RedisClient, pool: String, spawner: AsyncStream<@Sendable () async -> Void>.Continuation) {
        self.server = server
        self.client = client
        self.pool = pool
        self.spawner = spawner
    }

    /// Starts a node of the pool and waits until it joined.
    func start(_ options: Node.Options = testOptions(), pool: String? = nil) async throws -> TestNode {
        let node = try Node(pool: pool ?? self.pool, client: client, options: options)
        let running = TestNode(node)
        spawner.yield { await running.run() }
        try await node.waitUntilReady()
        return running
    }
}

/// A running node that a test can crash (cancel without cleanup).
final class TestNode: Sendable {
    let node: Node
    private let crashSignal = Latch()
    private let ended = Latch()

    init(_ node: Node) { self.node = node }

    func run() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await self.node.run() }
            group.addTask { await self.crashSignal.settle() }
            await group.next()
            crashSignal.open()
            group.cancelAll()
        }
        ended.open()
    }

    /// Stops the node at once, as if its process died: no close, no requeue.
    func crash() async {
        crashSignal.open()
        await ended.settle()
    }
}

func withPool<R: Sendable>(_ body: @Sendable (PoolHarness) async throws -> R) async throws -> R {
    try await RedisServer.withServer { server in
        var configuration = server.configuration
        configuration.commandTimeout = .seconds(5)
        configuration.reconnect = .init(initial: .milliseconds(10), maximum: .milliseconds(200))
        return try await RedisClient.withClient(configuration) { client in
            let (stream, continuation) = AsyncStream.makeStream(of: (@Sendable () async -> Void).self)
            let harness = PoolHarness(server: server, client: client, pool: "p\(UInt32.random(in: 0...UInt32.max))", spawner: continuation)
            return try await withThrowingTaskGroup(of: R?.self) { group in
                group.addTask {
                    await withDiscardingTaskGroup { nodes in
                        for await task in stream { nodes.addTask { await task() } }
                    }
                    return nil
                }
                defer { group.cancelAll() }
                let result = try await body(harness)
                continuation.finish()
                group.cancelAll()
                return result
            }
        }
    }
}

/// Records what a worker's handler was asked to do.
final class RecordingHandler: NotificationHandler {
    struct State {
        var running: [String: [UInt8]] = [:]
        var started: [Job] = []
        var stopped: [String] = []
        var notifications: [(key: String, payload: [UInt8])] = []
    }

    let state = Mutex(State())
    let startError: (@Sendable (Job) -> (any Error)?)?

    init(startError: (@Sendable (Job) -> (any Error)?)? = nil) {
        self.startError = startError
    }

    func start(_ job: Job) async throws {
        if let error = startError?(job) { throw error }
        state.withLock { state in
            state.running[job.key] = job.payload
            state.started.append(job)
        }
    }

    func stop(key: String) async throws {
        state.withLock { state in
            state.running.removeValue(forKey: key)
            state.stopped.append(key)
        }
    }

    func handleNotification(key: String, payload: [UInt8]) async throws {
        state.withLock { $0.notifications.append((key, payload)) }
    }

    var running: [String: [UInt8]] { state.withLock { $0.running } }
    var runningKeys: Set<String> { Set(running.keys) }
    var started: [Job] { state.withLock { $0.started } }
    var stopped: [String] { state.withLock { $0.stopped } }
    var notifications: [(key: String, payload: [UInt8])] { state.withLock { $0.notifications } }
}

/// A handler without notification support.
struct PlainHandler: JobHandler {
    let recorder: RecordingHandler
    func start(_ job: Job) async throws { try await recorder.start(job) }
    func stop(key: String) async throws { try await recorder.stop(key: key) }
}

/// Always the same bucket (clamped to the number of workers).
struct FixedHasher: JobHasher {
    let bucket: Int
    func bucket(for key: String, buckets: Int) -> Int { min(bucket, buckets - 1) }
}

/// A bucket chosen by a function of the key.
struct FunctionHasher: JobHasher {
    let choose: @Sendable (String, Int) -> Int
    func bucket(for key: String, buckets: Int) -> Int { min(choose(key, buckets), buckets - 1) }
}

/// A bucket the test can change at run time.
final class SwitchableHasher: JobHasher {
    let current = Mutex(0)
    func bucket(for key: String, buckets: Int) -> Int { min(current.withLock { $0 }, buckets - 1) }
}

/// Keeps every log message (for assertions on logged errors).
final class LogCapture: Sendable {
    struct Entry: Sendable {
        let level: Logger.Level
        let message: String
    }

    let entries = Mutex<[Entry]>([])

    var logger: Logger {
        Logger(label: "test") { _ in CapturingHandler(capture: self) }
    }

    func contains(level: Logger.Level, _ fragment: String) -> Bool {
        entries.withLock { $0.contains { $0.level == level && $0.message.contains(fragment) } }
    }

    var errors: [String] { entries.withLock { $0.filter { $0.level >= .error }.map(\.message) } }
}

struct CapturingHandler: LogHandler {
    let capture: LogCapture
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .debug

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        capture.entries.withLock { $0.append(.init(level: event.level, message: "\(event.message)")) }
    }
}

/// The pool's Redis keys left after a shutdown, minus what may legitimately stay: map tombstones
/// (only `=rev`, `=cleared`, `=kind=destroy`), node inboxes cleaned asynchronously, and the job
/// log (history, kept on purpose).
func leftoverKeys(_ client: RedisClient, pool: String) async throws -> [String] {
    let keys = try await client.send("KEYS", "rota:{\(pool)}:*").array?.compactMap(\.string) ?? []
    var left: [String] = []
    for key in keys.sorted() {
        if key.contains(":stream:node-") || key.hasSuffix(":stream:job-log") { continue }
        if try await client.send("TYPE", key).string == "hash" {
            let fields = try await client.send("HGETALL", key).array?.compactMap(\.string) ?? []
            var content: [String: String] = [:]
            var index = 0
            while index + 1 < fields.count {
                content[fields[index]] = fields[index + 1]
                index += 2
            }
            if content["=kind"] == "destroy", content.keys.allSatisfy({ $0.hasPrefix("=") }) { continue }
        }
        left.append(key)
    }
    return left
}
