import Foundation
import RotaRedis
import RotaRedisServer
@_exported import RotaTestSupport
import RotaStreams
import Synchronization

/// A private redis-server, a client on it and a key space unique to the test.
struct Env: Sendable {
    let server: RedisServer
    let client: RedisClient
    let space: RedisKeySpace

    func stream(_ name: String, _ options: RedisStream.Options = .init()) throws -> RedisStream {
        try RedisStream(name: name, keySpace: space, client: client, options: options)
    }

    func exists(_ key: String) async throws -> Bool {
        try await client.send("EXISTS", key).int == 1
    }

    /// Consumer names of `group` on `stream`, from XINFO CONSUMERS.
    func consumers(_ stream: RedisStream, group: String) async throws -> [String] {
        let reply = try await client.send("XINFO", "CONSUMERS", stream.key, group)
        return (reply.array ?? []).compactMap { info -> String? in
            guard let fields = info.array, let index = fields.firstIndex(of: .bulkString(Array("name".utf8))), index + 1 < fields.count
            else { return nil }
            return fields[index + 1].string
        }
    }

    /// The number of pending entries of `group` (XPENDING summary).
    func pendingCount(_ stream: RedisStream, group: String) async throws -> Int {
        try await client.send("XPENDING", stream.key, group).array?.first?.int ?? -1
    }
}

func withEnv<R: Sendable>(_ body: (Env) async throws -> R) async throws -> R {
    try await RedisServer.withServer { server in
        var configuration = server.configuration
        configuration.commandTimeout = .seconds(5)
        configuration.reconnect = .init(initial: .milliseconds(10), maximum: .milliseconds(200))
        return try await RedisClient.withClient(configuration) { client in
            let space = try RedisKeySpace("t\(UInt32.random(in: 0...UInt32.max))")
            return try await body(Env(server: server, client: client, space: space))
        }
    }
}

/// Waits up to `within` for the next event; nil if none came (or the sequence ended).
/// An event that arrives while the wait is being abandoned is still returned, never lost.
func nextEvent(_ events: StreamEvents, within: Duration = .seconds(5)) async throws -> StreamEvent? {
    try await withThrowingTaskGroup(of: StreamEvent?.self) { group in
        group.addTask {
            var iterator = events.makeAsyncIterator()
            return try await iterator.next()
        }
        group.addTask {
            try? await Task.sleep(for: within)
            return nil
        }
        var found: StreamEvent?
        if let first = try await group.next() { found = first }
        group.cancelAll()
        while let more = try await group.next() {
            if found == nil { found = more }
        }
        return found
    }
}

/// The next event, failing the test if none arrives in time.
func expectEvent(_ events: StreamEvents, within: Duration = .seconds(5), _ what: String = "an event") async throws -> StreamEvent {
    guard let event = try await nextEvent(events, within: within) else { throw TestFailure("no event within \(within): expected \(what)") }
    return event
}

/// Collects what a sink delivers (acking each when asked) from a task of the test's group.
final class Collector: Sendable {
    private let received = Mutex<[StreamEvent]>([])

    var events: [StreamEvent] { received.withLock { $0 } }
    var payloads: [String] { events.map { String(decoding: $0.payload, as: UTF8.self) } }

    func collect(_ sink: StreamSink, ack: Bool) async throws {
        for try await event in sink.events {
            received.withLock { $0.append(event) }
            if ack { try await sink.ack(event) }
        }
    }
}

/// Stops one task of a test's group (task groups cannot cancel a single child).
final class Stopper: Sendable {
    private let signal: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation

    init() { (signal, continuation) = AsyncStream.makeStream(of: Void.self) }

    func stop() { continuation.finish() }

    /// Runs `body` until ``stop()`` is called, then cancels it and waits for it to end.
    func run(_ body: @escaping @Sendable () async throws -> Void) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await body() }
            for await _ in signal {}
            group.cancelAll()
            try await group.waitForAll()
        }
    }
}


extension String {
    var bytes: [UInt8] { Array(utf8) }
}

extension StreamEvent {
    var text: String { String(decoding: payload, as: UTF8.self) }
}
