import Foundation
import Logging
import RotaRedis
import Synchronization

/// Reads one or more streams without a consumer group: every reader sees every event appended
/// after its start position. No acknowledgements, no redelivery; nothing is stored in Redis.
///
/// Creating a reader does no I/O; ``run()`` reads until cancelled.
/// ``withReader(streams:options:logger:_:)`` does both for scoped use. With a
/// ``StreamStart/newest`` start, the position is resolved to the stream's last ID when the reader
/// starts (and when a stream is added), so events appended between two reads are never missed.
///
/// Errors are ``RedisError``s. Read errors (connection lost, server restarted) are logged and
/// retried with back-off (up to ~1 s, with jitter); the reader continues after the last event it
/// read. Only errors retrying cannot fix end ``run()`` and ``events``: a refused AUTH, or a failure
/// other than an unreachable server while resolving the start positions.
public final class StreamReader: Sendable {
    public struct Options: Sendable {
        /// How long one `XREAD` waits for events; stream set changes interrupt the wait.
        public var blockDuration: Duration
        /// Events per read.
        public var maxPolled: Int
        /// Events buffered for ``events`` before the reader waits for the consumer.
        public var bufferSize: Int
        public var start: StreamStart
        /// Deliver only events with exactly this topic.
        public var topic: String?
        /// Deliver only events whose topic matches this regular expression (anywhere in the topic).
        public var topicPattern: String?

        public init(
            blockDuration: Duration = .seconds(5),
            maxPolled: Int = 1000,
            bufferSize: Int = 1000,
            start: StreamStart = .newest,
            topic: String? = nil,
            topicPattern: String? = nil
        ) {
            self.blockDuration = blockDuration
            self.maxPolled = maxPolled
            self.bufferSize = bufferSize
            self.start = start
            self.topic = topic
            self.topicPattern = topicPattern
        }
    }

    private struct Member {
        let token: Int
        let stream: RedisStream
        let start: StreamStart
        /// The last ID read (exclusive cursor); nil until resolved from `start`.
        var cursor: String?
    }

    private enum Phase { case created, running, stopped }

    private struct State {
        var phase = Phase.created
        var members: [Member]
        var nextToken: Int
    }

    public let options: Options
    public let keySpace: RedisKeySpace
    /// What ``run()`` delivers. See ``StreamEvents`` for the buffering policy.
    public let events: StreamEvents

    let client: RedisClient
    let logger: Logger
    private let filter: TopicFilter
    private let buffer: EventBuffer
    private let waker = ReadWaker()
    private let readyGate = Gate()
    private let state: Mutex<State>

    /// Validates everything up front; does no I/O.
    ///
    /// - Parameters:
    ///   - streams: at least one; all in the same key space. The first one's client is used.
    public init(streams: [RedisStream], options: Options = Options(), logger: Logger? = nil) throws(RedisError) {
        guard let first = streams.first else { throw RedisError(.invalidArgument, "a reader needs at least one stream") }
        guard streams.allSatisfy({ $0.keySpace == first.keySpace }) else {
            throw RedisError(.invalidArgument, "all streams of a reader must be in the same key space")
        }
        try Validation.positive(options.blockDuration, "block duration")
        guard options.maxPolled > 0 else { throw RedisError(.invalidArgument, "max polled must be positive, got \(options.maxPolled)") }
        guard options.bufferSize > 0 else { throw RedisError(.invalidArgument, "buffer size must be positive, got \(options.bufferSize)") }
        try options.start.validate()
        self.filter = try TopicFilter(topic: options.topic, pattern: options.topicPattern)
        self.options = options
        self.keySpace = first.keySpace
        self.client = first.client
        self.logger = logger ?? noOpLogger
        self.buffer = EventBuffer(capacity: options.bufferSize)
        self.events = StreamEvents(buffer: buffer)
        var members: [Member] = []
        for stream in streams where !members.contains(where: { $0.stream.name == stream.name }) {
            members.append(Member(token: members.count, stream: stream, start: options.start))
        }
        self.state = Mutex(State(members: members, nextToken: members.count))
    }

    public convenience init(stream: RedisStream, options: Options = Options(), logger: Logger? = nil) throws(RedisError) {
        try self.init(streams: [stream], options: options, logger: logger)
    }

    /// The names of the streams this reader reads.
    public var streams: [String] { state.withLock { $0.members.map(\.stream.name) } }

    /// Creates a reader, runs it for the duration of `body` (which starts once every start position
    /// is resolved), then stops it.
    public static func withReader<R: Sendable>(
        streams: [RedisStream],
        options: Options = Options(),
        logger: Logger? = nil,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (StreamReader) async throws -> R
    ) async throws -> R {
        let reader = try StreamReader(streams: streams, options: options, logger: logger)
        return try await withThrowingTaskGroup(of: Void.self, returning: R.self, isolation: isolation) { group in
            group.addTask { try await reader.run() }
            defer { group.cancelAll() }
            try await reader.ready()
            return try await body(reader)
        }
    }

    /// Returns once ``run()`` has resolved the start positions: events appended from then on will
    /// be delivered. Throws if ``run()`` failed.
    public func ready() async throws {
        try await readyGate.wait()
    }

    /// Reads until the task is cancelled (then returns normally). May be called once.
    public func run() async throws {
        let start = state.withLock { state -> Bool in
            guard case .created = state.phase else { return false }
            state.phase = .running
            return true
        }
        guard start else { throw RedisError(.invalidArgument, "StreamReader.run() may only be called once") }
        do {
            try await client.withDedicatedConnection { connection in
                try await self.resolvePendingCursors()
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await self.readLoop(connection) }
                    group.addTask { await self.waker.run(client: self.client) }
                    defer { group.cancelAll() }
                    try await group.next()
                }
            }
            stop(nil)
        } catch {
            if Task.isCancelled || error is CancellationError {
                stop(nil)
                return
            }
            logger.error("reader stopped", metadata: ["error": "\(error)"])
            stop(error)
            throw error
        }
    }

    private func stop(_ error: (any Error)?) {
        state.withLock { $0.phase = .stopped }
        waker.finish()
        readyGate.open(.failure(error ?? CancellationError()))
        buffer.finish(throwing: error)
    }

    /// Resolves the cursors not resolved yet (retrying while Redis is unreachable), then opens the gate.
    private func resolvePendingCursors() async throws {
        var backoff = Backoff()
        while true {
            let next = state.withLock { state -> Member? in
                if let member = state.members.first(where: { $0.cursor == nil }) { return member }
                readyGate.open(.success(()))
                return nil
            }
            guard let member = next else { return }
            do {
                let cursor = try await resolve(member.stream, member.start)
                state.withLock { state in
                    if let index = state.members.firstIndex(where: { $0.token == member.token }) { state.members[index].cursor = cursor }
                }
                backoff.reset()
            } catch where isTransient(error) {
                logger.debug("reader start failed; retrying", metadata: ["error": "\(error)"])
                try await backoff.wait()
            }
        }
    }

    /// A concrete exclusive cursor: the stream's last entry ID for ``StreamStart/newest`` ("0-0"
    /// when the stream is empty or missing), the start's own ID otherwise.
    private func resolve(_ stream: RedisStream, _ start: StreamStart) async throws -> String {
        guard case .newest = start else { return start.redisID }
        let reply = try await client.send("XREVRANGE", stream.key, "+", "-", "COUNT", 1)
        return reply.array?.first?.array?.first?.string ?? "0-0"
    }

    /// Adds a stream (a no-op if one with this name is already read), from `start` (the reader's
    /// start by default). Takes effect immediately, even while a read is blocked.
    public func addStream(_ stream: RedisStream, start: StreamStart? = nil) async throws {
        guard stream.keySpace == keySpace else {
            throw RedisError(.invalidArgument, "stream '\(stream.name)' is in key space \(stream.keySpace), the reader in \(keySpace)")
        }
        try start?.validate()
        let action = state.withLock { state -> Member?? in
            if state.members.contains(where: { $0.stream.name == stream.name }) { return .some(nil) }
            let member = Member(token: state.nextToken, stream: stream, start: start ?? options.start)
            state.nextToken += 1
            state.members.append(member)
            return readyGate.isOpen && state.phase == .running ? member : nil
        }
        guard case let member?? = action else { return }
        do {
            let cursor = try await resolve(stream, member.start)
            state.withLock { state in
                if let index = state.members.firstIndex(where: { $0.token == member.token }) { state.members[index].cursor = cursor }
            }
        } catch {
            state.withLock { $0.members.removeAll { $0.token == member.token } }
            throw error
        }
        waker.streamsChanged()
    }

    /// Stops reading a stream; a no-op if it is not read.
    public func removeStream(_ stream: RedisStream) {
        let removed = state.withLock { state -> Bool in
            guard let index = state.members.firstIndex(where: { $0.stream.name == stream.name }) else { return false }
            state.members.remove(at: index)
            return true
        }
        if removed { waker.streamsChanged() }
    }

    private func readLoop(_ connection: RedisConnection) async throws {
        let matcher = filter.matcher()
        var backoff = Backoff()
        while !Task.isCancelled {
            do {
                let generation = waker.generation
                let members = state.withLock { $0.members.filter { $0.cursor != nil } }
                if members.isEmpty {
                    try await waker.waitForChange(from: generation)
                    continue
                }
                if waker.clientID == nil { waker.setClientID(try await connection.send("CLIENT", "ID").int) }
                var arguments: [any RedisArgument] = ["XREAD", "COUNT", options.maxPolled, "BLOCK", options.blockDuration.milliseconds, "STREAMS"]
                arguments += members.map(\.stream.key)
                arguments += members.map { $0.cursor ?? "0-0" }
                guard waker.beginRead(generation: generation) else { continue }
                let reply: RedisValue
                do {
                    reply = try await connection.send(RedisCommand(arguments: arguments), timeout: client.blockingTimeout(options.blockDuration))
                    waker.endRead()
                } catch {
                    waker.endRead()
                    throw error
                }
                backoff.reset()
                for batch in try streamBatches(reply) {
                    guard let member = members.first(where: { $0.stream.key == batch.key }) else { continue }
                    for value in batch.entries {
                        guard let entry = RawEntry(value) else { continue }
                        // Advance first: a filtered-out event moves the cursor too.
                        let current = state.withLock { state -> Bool in
                            guard let index = state.members.firstIndex(where: { $0.token == member.token }) else { return false }
                            state.members[index].cursor = entry.id
                            return true
                        }
                        guard current else { break }
                        guard matcher.matches(entry.topic) else { continue }
                        guard try await buffer.send(entry.event(stream: member.stream.name, sink: nil)) else { return }
                    }
                }
            } catch {
                if Task.isCancelled || error is CancellationError { return }
                if let error = error as? RedisError, error.code == .authenticationFailed || error.code == .invalidArgument {
                    throw error
                }
                waker.setClientID(nil)
                logger.debug("reader read failed; retrying", metadata: ["error": "\(error)"])
                do { try await backoff.wait() } catch { return }
            }
        }
    }
}
