import Foundation
import Logging
import RotaRedis
import Synchronization

/// Opens once, with success or an error; tasks wait on it (``StreamSink/ready()``).
final class Gate: Sendable {
    private struct State {
        var result: Result<Void, any Error>?
        var waiters: [(id: UInt64, continuation: CheckedContinuation<Void, any Error>)] = []
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())

    func open(_ result: Result<Void, any Error>) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, any Error>] in
            guard state.result == nil else { return [] }
            state.result = result
            defer { state.waiters = [] }
            return state.waiters.map(\.continuation)
        }
        for waiter in waiters { waiter.resume(with: result) }
    }

    var isOpen: Bool { state.withLock { $0.result != nil } }

    func wait() async throws {
        let id = state.withLock { state -> UInt64 in
            state.nextID += 1
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let now: Result<Void, any Error>? = state.withLock { state in
                    if let result = state.result { return result }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    state.waiters.append((id, continuation))
                    return nil
                }
                if let now { continuation.resume(with: now) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Void, any Error>? in
                guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return state.waiters.remove(at: index).continuation
            }
            waiter?.resume(throwing: CancellationError())
        }
    }
}

/// Exponential back-off with jitter for read loops: 25 ms doubling to 1 s, each wait drawn from
/// the upper half of the current step so that many instances do not retry in lockstep.
struct Backoff {
    private var attempt = 0

    mutating func reset() { attempt = 0 }

    mutating func wait() async throws {
        attempt = min(attempt + 1, 16)
        let cap = min(1000, 25 << min(attempt - 1, 6))
        try await Task.sleep(for: .milliseconds(Int.random(in: cap / 2...cap)))
    }
}

/// Errors worth retrying: the server was unreachable or slow. Anything else (a refused AUTH, a
/// WRONGTYPE key) would fail the same way again.
func isTransient(_ error: any Error) -> Bool {
    guard let error = error as? RedisError else { return false }
    return error.code == .connectionClosed || error.code == .timeout
}

/// Interrupts a read loop's blocking `XREAD`/`XREADGROUP` when its set of streams changes, so an
/// added stream is read at once rather than after the block duration.
///
/// The loop records its dedicated connection's `CLIENT ID` and the generation of the stream set its
/// current read uses; ``run(client:)`` sends `CLIENT UNBLOCK` (which ends the read as a timeout
/// would) until the loop has started a read with the current generation. If the connection was
/// silently replaced since the ID was taken, the unblock misses (or, after a server restart,
/// wakes some other client's blocking call, which then simply reads again); the loop still picks up
/// the change after one block duration.
final class ReadWaker: Sendable {
    private struct State {
        var generation = 0
        var readGeneration: Int?
        var clientID: Int?
    }

    private let state = Mutex(State())
    private let signal: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation

    init() {
        (signal, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    var generation: Int { state.withLock { $0.generation } }
    var clientID: Int? { state.withLock { $0.clientID } }

    func setClientID(_ id: Int?) { state.withLock { $0.clientID = id } }

    func streamsChanged() {
        state.withLock { $0.generation += 1 }
        continuation.yield()
    }

    /// Marks a read as in flight for the stream set of `generation`; false if the set changed since
    /// (the loop must take a new snapshot rather than block on a stale one).
    func beginRead(generation: Int) -> Bool {
        state.withLock { state in
            guard state.generation == generation else { return false }
            state.readGeneration = generation
            return true
        }
    }
    func endRead() { state.withLock { $0.readGeneration = nil } }

    /// Sleeps until the stream set changes (used while it is empty).
    func waitForChange(from generation: Int) async throws {
        while self.generation == generation {
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Runs for the life of the read loop, inside its task group.
    func run(client: RedisClient) async {
        for await _ in signal {
            while !Task.isCancelled {
                let target = state.withLock { state -> Int? in
                    guard let read = state.readGeneration, read < state.generation else { return nil }
                    return state.clientID
                }
                guard let target else { break }
                _ = try? await client.send("CLIENT", "UNBLOCK", target)
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
    }

    func finish() { continuation.finish() }
}

/// One entry of an `XREAD`/`XREADGROUP`/`XCLAIM` reply: `[id, [field, value, …]]`.
struct RawEntry {
    let id: String
    let name: String
    let topic: String?
    let payload: [UInt8]
    let signature: String?

    /// Nil for entries that are not `[id, fields]` (a deleted entry's `[id, nil]`, or nil).
    init?(_ value: RedisValue) {
        guard let parts = value.array, parts.count >= 2, let id = parts[0].string, let fields = parts[1].array else { return nil }
        var name = "", topic: String?, payload: [UInt8] = [], signature: String?
        var index = 0
        while index + 1 < fields.count {
            switch fields[index].string {
            case "n": name = fields[index + 1].string ?? ""
            case "p": payload = fields[index + 1].bytes ?? []
            case "t": topic = fields[index + 1].string
            case "s": signature = fields[index + 1].string
            default: break
            }
            index += 2
        }
        self.id = id
        self.name = name
        self.topic = topic.flatMap { $0.isEmpty ? nil : $0 }
        self.payload = payload
        self.signature = signature
    }

    func event(stream: String, sink: String?) -> StreamEvent {
        StreamEvent(id: id, stream: stream, sink: sink, name: name, topic: topic, payload: payload, signature: signature)
    }
}

/// Splits an `XREAD`/`XREADGROUP` reply into (stream key, entries); nil reply (timeout) → [].
func streamBatches(_ reply: RedisValue) throws -> [(key: String, entries: [RedisValue])] {
    if reply.isNull { return [] }
    guard let streams = reply.array else { throw RedisError(.protocolError, "unexpected stream read reply \(reply)") }
    return try streams.map { stream in
        guard let parts = stream.array, parts.count == 2, let key = parts[0].string else {
            throw RedisError(.protocolError, "unexpected stream read reply \(stream)")
        }
        return (key, parts[1].array ?? [])
    }
}

extension RedisClient {
    /// The command timeout for a blocking read: the block itself plus the usual margin.
    func blockingTimeout(_ block: Duration) -> Duration { block + configuration.commandTimeout }
}

let noOpLogger = Logger(label: "rota.streams", factory: { _ in SwiftLogNoOpLogHandler() })
