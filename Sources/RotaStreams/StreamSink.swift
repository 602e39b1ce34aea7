import Foundation
import Logging
import RotaRedis
import Synchronization

/// A named consumer group over one or more streams: each event goes to one instance of the sink,
/// and comes back (possibly to another instance) until it is acknowledged. Delivery is
/// at-least-once, so handlers must tolerate duplicates.
///
/// Every process that creates a `StreamSink` with the same name (in the same key space) is one
/// instance: one Redis consumer, with a keep-alive in `rota:{pool}:sink:NAME:keepalive`.
/// Instances claim each other's events left unacknowledged longer than the ack grace period, and
/// delete consumers whose keep-alive is older than twice that period — after claiming their
/// pending events, never before.
///
/// Creating a sink does no I/O; ``run()`` joins the streams and reads until cancelled. Stopping
/// (cancelling ``run()``) leaves the consumer and its pending events in place, so another instance
/// picks them up after the grace period. ``withSink(name:streams:options:logger:_:)`` does both for
/// scoped use:
///
/// ```swift
/// try await StreamSink.withSink(name: "mailer", streams: [orders]) { sink in
///     for try await event in sink.events {
///         try await send(event.payload)
///         try await sink.ack(event)
///     }
/// }
/// ```
///
/// Errors are ``RedisError``s. Once reading, a sink survives whatever Redis does — lost
/// connections, restarts, a deleted group or stream (`NOGROUP`: it re-creates the group where it
/// left off) — retrying with back-off (up to ~1 s, with jitter) and logging. Only errors retrying
/// cannot fix end ``run()`` and the ``events`` sequence: a refused AUTH, or a failure other than
/// an unreachable server while joining the streams (a key of the wrong type, say).
public final class StreamSink: Sendable {
    public struct Options: Sendable {
        /// How long one `XREADGROUP` waits for events. Shorter means quicker notice of a dead server;
        /// stream set changes interrupt the wait anyway.
        public var blockDuration: Duration
        /// Events per read (and per claim batch).
        public var maxPolled: Int
        /// Events buffered for ``events`` before the read loop waits for the consumer.
        public var bufferSize: Int
        /// Where a group this sink creates starts; an existing group keeps its cursor.
        public var start: StreamStart
        /// Deliver only events with exactly this topic. Others are acknowledged and skipped.
        public var topic: String?
        /// Deliver only events whose topic matches this regular expression (anywhere in the topic).
        public var topicPattern: String?
        /// Read with `NOACK`: no pending list, no acknowledgement, no redelivery (at-most-once).
        public var noAck: Bool
        /// How long an event may stay unacknowledged before another instance (or this one) claims it
        /// again. Keep-alives are written every half period; consumers silent for twice this are
        /// deleted (after their events are claimed). Every instance of a sink should use the same value.
        public var ackGracePeriod: Duration

        public init(
            blockDuration: Duration = .seconds(5),
            maxPolled: Int = 1000,
            bufferSize: Int = 1000,
            start: StreamStart = .newest,
            topic: String? = nil,
            topicPattern: String? = nil,
            noAck: Bool = false,
            ackGracePeriod: Duration = .seconds(20)
        ) {
            self.blockDuration = blockDuration
            self.maxPolled = maxPolled
            self.bufferSize = bufferSize
            self.start = start
            self.topic = topic
            self.topicPattern = topicPattern
            self.noAck = noAck
            self.ackGracePeriod = ackGracePeriod
        }

        /// How often the idle-claim loop runs: every 500 ms, or every grace period if shorter.
        public var idleCheckPeriod: Duration { min(.milliseconds(500), ackGracePeriod) }
    }

    private struct Member {
        let token: Int
        let stream: RedisStream
        let start: StreamStart
        var joined = false
        /// The highest ID this instance received: where a lost group is re-created.
        var lastSeen: EntryID?
    }

    private enum Phase { case created, running, stopped }

    private struct State {
        var phase = Phase.created
        var members: [Member]
        var nextToken: Int
        var consumer: String
        var lastKeepAlive: ContinuousClock.Instant?
        /// Two successful keep-alives were more than twice the grace period apart: peers may have
        /// deleted this consumer meanwhile.
        var renewalNeeded = false
    }

    public let name: String
    public let keySpace: RedisKeySpace
    public let options: Options
    /// What ``run()`` delivers. See ``StreamEvents`` for the buffering policy.
    public let events: StreamEvents

    let client: RedisClient
    let logger: Logger
    private let filter: TopicFilter
    private let keepAliveKey: String
    private let leaseKey: String
    private let buffer: EventBuffer
    private let waker = ReadWaker()
    private let readyGate = Gate()
    private let state: Mutex<State>

    /// Validates everything up front; does no I/O.
    ///
    /// - Parameters:
    ///   - streams: at least one; all in the same key space. The first one's client is used.
    public init(name: String, streams: [RedisStream], options: Options = Options(), logger: Logger? = nil) throws(RedisError) {
        try Validation.name(name, kind: "sink")
        guard let first = streams.first else { throw RedisError(.invalidArgument, "a sink needs at least one stream") }
        guard streams.allSatisfy({ $0.keySpace == first.keySpace }) else {
            throw RedisError(.invalidArgument, "all streams of a sink must be in the same key space")
        }
        try Validation.positive(options.blockDuration, "block duration")
        try Validation.positive(options.ackGracePeriod, "ack grace period")
        guard options.maxPolled > 0 else { throw RedisError(.invalidArgument, "max polled must be positive, got \(options.maxPolled)") }
        guard options.bufferSize > 0 else { throw RedisError(.invalidArgument, "buffer size must be positive, got \(options.bufferSize)") }
        try options.start.validate()
        self.filter = try TopicFilter(topic: options.topic, pattern: options.topicPattern)
        self.name = name
        self.keySpace = first.keySpace
        self.options = options
        self.client = first.client
        self.logger = logger ?? noOpLogger
        self.keepAliveKey = first.keySpace.key("sink", name, "keepalive")
        self.leaseKey = first.keySpace.key("sink", name, "lease")
        self.buffer = EventBuffer(capacity: options.bufferSize)
        self.events = StreamEvents(buffer: buffer)
        var members: [Member] = []
        for stream in streams where !members.contains(where: { $0.stream.name == stream.name }) {
            members.append(Member(token: members.count, stream: stream, start: options.start))
        }
        self.state = Mutex(State(members: members, nextToken: members.count, consumer: Self.newConsumerID()))
    }

    public convenience init(name: String, stream: RedisStream, options: Options = Options(), logger: Logger? = nil) throws(RedisError) {
        try self.init(name: name, streams: [stream], options: options, logger: logger)
    }

    /// This instance's current Redis consumer name. It changes if the instance was cut off from
    /// Redis for longer than twice the grace period (others may have deleted it meanwhile).
    public var consumer: String { state.withLock { $0.consumer } }

    /// The names of the streams this sink reads.
    public var streams: [String] { state.withLock { $0.members.map(\.stream.name) } }

    private static func newConsumerID() -> String { UUID().uuidString.lowercased() }

    // MARK: Lifecycle

    /// Creates a sink, runs it for the duration of `body` (which starts once the groups exist and
    /// this consumer is registered), then stops it.
    public static func withSink<R: Sendable>(
        name: String,
        streams: [RedisStream],
        options: Options = Options(),
        logger: Logger? = nil,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (StreamSink) async throws -> R
    ) async throws -> R {
        let sink = try StreamSink(name: name, streams: streams, options: options, logger: logger)
        return try await withThrowingTaskGroup(of: Void.self, returning: R.self, isolation: isolation) { group in
            group.addTask { try await sink.run() }
            defer { group.cancelAll() }
            try await sink.ready()
            return try await body(sink)
        }
    }

    /// Returns once ``run()`` has created the groups and registered this consumer: events appended
    /// from then on reach the sink (with a ``StreamStart/newest`` start). Throws if ``run()`` failed.
    public func ready() async throws {
        try await readyGate.wait()
    }

    /// Joins the streams, then reads, keeps this consumer alive and claims idle events until the
    /// task is cancelled (then returns normally). May be called once.
    public func run() async throws {
        let start = state.withLock { state -> Bool in
            guard case .created = state.phase else { return false }
            state.phase = .running
            return true
        }
        guard start else { throw RedisError(.invalidArgument, "StreamSink.run() may only be called once") }
        do {
            try await client.withDedicatedConnection { connection in
                try await self.setUp()
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await self.readLoop(connection) }
                    group.addTask { await self.keepAliveLoop() }
                    group.addTask { await self.claimLoop() }
                    group.addTask { await self.waker.run(client: self.client) }
                    defer { group.cancelAll() }
                    // The loops end only when cancelled, or when reading fails for good.
                    try await group.next()
                }
            }
            stop(nil)
        } catch {
            if Task.isCancelled || error is CancellationError {
                stop(nil)
                return
            }
            logger.error("sink stopped", metadata: ["sink": "\(name)", "error": "\(error)"])
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

    /// Writes the keep-alive and joins every stream; retries while Redis is unreachable.
    private func setUp() async throws {
        var backoff = Backoff()
        while true {
            do {
                try await writeKeepAlive()
                try await joinPendingMembers()
                return
            } catch where isTransient(error) {
                logger.debug("sink setup failed; retrying", metadata: ["sink": "\(name)", "error": "\(error)"])
                try await backoff.wait()
            }
        }
    }

    /// Joins members not joined yet, until none is left; then opens the ready gate. From then on
    /// ``addStream(_:start:)`` joins by itself.
    private func joinPendingMembers() async throws {
        while true {
            let next = state.withLock { state -> (Member, String)? in
                guard let member = state.members.first(where: { !$0.joined }) else { return nil }
                return (member, state.consumer)
            }
            guard let (member, consumer) = next else {
                // Checked again under the lock by addStream: it joins by itself once the gate is open.
                let done = state.withLock { state -> Bool in
                    guard !state.members.contains(where: { !$0.joined }) else { return false }
                    readyGate.open(.success(()))
                    return true
                }
                if done { return }
                continue
            }
            try await join(member.stream, start: member.start.redisID, consumer: consumer)
            state.withLock { state in
                if let index = state.members.firstIndex(where: { $0.token == member.token }) { state.members[index].joined = true }
            }
        }
    }

    private func join(_ stream: RedisStream, start: String, consumer: String) async throws {
        _ = try await client.evaluate(
            SinkScripts.join,
            keys: [stream.key, stream.sinksKey, keepAliveKey],
            arguments: [name, start, consumer, Int64(unixNanoseconds())] + stream.ttlScriptArguments)
    }

    // MARK: Streams

    /// Adds a stream (a no-op if one with this name is already read). Its group is created at
    /// `start` (the sink's start by default) unless it exists. Takes effect immediately, even while
    /// a read is blocked.
    public func addStream(_ stream: RedisStream, start: StreamStart? = nil) async throws {
        guard stream.keySpace == keySpace else {
            throw RedisError(.invalidArgument, "stream '\(stream.name)' is in key space \(stream.keySpace), the sink in \(keySpace)")
        }
        try start?.validate()
        let action = state.withLock { state -> (Member, String)?? in
            if state.members.contains(where: { $0.stream.name == stream.name }) { return .some(nil) }
            let member = Member(token: state.nextToken, stream: stream, start: start ?? options.start)
            state.nextToken += 1
            state.members.append(member)
            // Before the gate opens, setUp joins it; after, we do.
            return readyGate.isOpen && state.phase == .running ? (member, state.consumer) : nil
        }
        guard case let (member, consumer)?? = action else { return }
        do {
            try await join(stream, start: member.start.redisID, consumer: consumer)
        } catch {
            state.withLock { $0.members.removeAll { $0.token == member.token } }
            throw error
        }
        state.withLock { state in
            if let index = state.members.firstIndex(where: { $0.token == member.token }) { state.members[index].joined = true }
        }
        waker.streamsChanged()
    }

    /// Stops reading a stream (a no-op if it is not read) and unregisters this consumer from it.
    /// When no consumer of the sink is left on the stream, its group is destroyed; otherwise events
    /// this instance left unacknowledged there are claimed by the others.
    public func removeStream(_ stream: RedisStream) async throws {
        let removed = state.withLock { state -> (Member, String)? in
            guard let index = state.members.firstIndex(where: { $0.stream.name == stream.name }) else { return nil }
            return (state.members.remove(at: index), state.consumer)
        }
        guard let (member, consumer) = removed else { return }
        waker.streamsChanged()
        guard member.joined else { return }
        _ = try await client.evaluate(SinkScripts.leave, keys: [member.stream.key, member.stream.sinksKey], arguments: [name, consumer])
    }

    // MARK: Acknowledgement

    /// Acknowledges an event this sink delivered, so it is not delivered again. Returns false if it
    /// was no longer pending (already acknowledged, or claimed and acknowledged elsewhere — the
    /// acknowledgement is per group, not per instance). A no-op with ``Options/noAck``.
    @discardableResult
    public func ack(_ event: StreamEvent) async throws -> Bool {
        try checkDelivered(event)
        if options.noAck { return true }
        let reply = try await client.send("XACK", keySpace.key("stream", event.stream), name, event.id)
        return reply.int == 1
    }

    /// Acknowledges an event this sink delivered without waiting for Redis's reply: the `XACK` is
    /// queued on a shared connection and the call returns, saving the consumer a round trip per event
    /// (like AMQP's basic.ack or a NATS `Ack`, which are not confirmed either). Use ``ack(_:)`` when
    /// the caller must know the acknowledgement landed.
    ///
    /// A failed acknowledgement (Redis unreachable, an error reply, no reply within the command
    /// timeout) is logged as a warning; the event then stays pending and is delivered again after the
    /// ack grace period, as if the consumer had died, so at-least-once delivery holds either way.
    /// Throws at once for an event of another sink, or when the client is closed.
    public func acknowledge(_ event: StreamEvent) throws {
        try checkDelivered(event)
        if options.noAck { return }
        let logger = logger, sink = name, id = event.id, stream = event.stream
        try client.send(RedisCommand("XACK", keySpace.key("stream", event.stream), name, event.id)) { result in
            guard case .failure(let error) = result else { return }
            logger.warning("acknowledgement failed; the event will be delivered again after the ack grace period",
                metadata: ["sink": "\(sink)", "stream": "\(stream)", "event": "\(id)", "error": "\(error)"])
        }
    }

    private func checkDelivered(_ event: StreamEvent) throws(RedisError) {
        guard event.sink == name else {
            throw RedisError(.invalidArgument, "event \(event.id) was delivered by \(event.sink.map { "sink '\($0)'" } ?? "a reader"), not sink '\(name)'")
        }
    }

    /// Acknowledges several events of this sink in one `XACK` per stream; returns how many were
    /// still pending.
    @discardableResult
    public func ack(_ events: [StreamEvent]) async throws -> Int {
        if let foreign = events.first(where: { $0.sink != name }) {
            throw RedisError(.invalidArgument, "event \(foreign.id) was not delivered by sink '\(name)'")
        }
        if options.noAck || events.isEmpty { return 0 }
        var byStream: [String: [String]] = [:]
        for event in events { byStream[event.stream, default: []].append(event.id) }
        var acknowledged = 0
        for (stream, ids) in byStream {
            let reply = try await client.send(RedisCommand(arguments: ["XACK", keySpace.key("stream", stream), name] + ids))
            acknowledged += reply.int ?? 0
        }
        return acknowledged
    }

    // MARK: Loops

    private var blockMilliseconds: Int64 { options.blockDuration.milliseconds }

    private func readLoop(_ connection: RedisConnection) async throws {
        let matcher = filter.matcher()
        var backoff = Backoff()
        while !Task.isCancelled {
            do {
                try await renewConsumerIfStale(matcher: matcher)
                let generation = waker.generation
                let (members, consumer) = state.withLock { state in (state.members.filter(\.joined), state.consumer) }
                if members.isEmpty {
                    try await waker.waitForChange(from: generation)
                    continue
                }
                if waker.clientID == nil { waker.setClientID(try await connection.send("CLIENT", "ID").int) }
                var arguments: [any RedisArgument] = [
                    "XREADGROUP", "GROUP", name, consumer, "COUNT", options.maxPolled, "BLOCK", blockMilliseconds,
                ]
                if options.noAck { arguments.append("NOACK") }
                arguments.append("STREAMS")
                arguments += members.map(\.stream.key)
                arguments += members.map { _ in ">" }
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
                var delivered = false
                for batch in try streamBatches(reply) {
                    guard let member = members.first(where: { $0.stream.key == batch.key }) else { continue }
                    guard try await deliver(batch.entries, from: member, matcher: matcher) else { return }
                    delivered = delivered || !batch.entries.isEmpty
                }
                // Consumers woken by this batch run before the next read is written (a syscall on
                // this loop), not after it: about 3 µs sooner from XADD to consumer, measured.
                if delivered { await Task.yield() }
            } catch {
                if Task.isCancelled || error is CancellationError { return }
                if let error = error as? RedisError, error.code == .authenticationFailed || error.code == .invalidArgument {
                    throw error
                }
                if let error = error as? RedisError, error.serverErrorPrefix == "NOGROUP" {
                    // The stream or its group vanished (a restart without persistence, a DEL, an
                    // XGROUP DESTROY): re-create it where this instance left off, then read again.
                    logger.info("sink group missing; re-creating", metadata: ["sink": "\(name)", "error": "\(error)"])
                    do {
                        try await rejoinAll()
                    } catch {
                        logger.debug("sink group re-creation failed", metadata: ["sink": "\(name)", "error": "\(error)"])
                    }
                } else {
                    waker.setClientID(nil)
                    logger.debug("sink read failed; retrying", metadata: ["sink": "\(name)", "error": "\(error)"])
                }
                do { try await backoff.wait() } catch { return }
            }
        }
    }

    /// Filters and hands `entries` of `member`'s stream to the buffer; acknowledges filtered-out
    /// ones. Returns false once the buffer is finished. Events of a stream removed meanwhile are
    /// left pending, for the instances still reading it.
    private func deliver(_ entries: [RedisValue], from member: Member, matcher: TopicMatcher) async throws -> Bool {
        var skipped: [String] = []
        var highest: EntryID?
        for value in entries {
            guard let entry = RawEntry(value) else { continue }
            if let id = EntryID(entry.id), highest.map({ id > $0 }) ?? true { highest = id }
            guard matcher.matches(entry.topic) else {
                skipped.append(entry.id)
                continue
            }
            let current = state.withLock { state in state.members.contains { $0.token == member.token } }
            guard current else { break }
            guard try await buffer.send(entry.event(stream: member.stream.name, sink: name)) else { return false }
        }
        if let highest {
            state.withLock { state in
                if let index = state.members.firstIndex(where: { $0.token == member.token }),
                    state.members[index].lastSeen.map({ highest > $0 }) ?? true
                {
                    state.members[index].lastSeen = highest
                }
            }
        }
        if !skipped.isEmpty, !options.noAck {
            _ = try await client.send(RedisCommand(arguments: ["XACK", member.stream.key, name] + skipped))
        }
        return true
    }

    /// Re-joins every stream with the current consumer, re-creating lost groups where this instance
    /// left off (or at the configured start if it has received nothing from that stream).
    private func rejoinAll() async throws {
        let (members, consumer) = state.withLock { state in (state.members.filter(\.joined), state.consumer) }
        try await writeKeepAlive()
        for member in members {
            try await join(member.stream, start: member.lastSeen?.description ?? member.start.redisID, consumer: consumer)
        }
    }

    /// Cut off from Redis for more than twice the grace period (no keep-alive for that long, or two
    /// keep-alives that far apart), this consumer may have been deleted by another instance:
    /// continue as a brand-new consumer, and retire the old one after claiming what it still holds.
    private func renewConsumerIfStale(matcher: TopicMatcher) async throws {
        let (stale, old) = state.withLock { state in
            let silent = state.lastKeepAlive.map { ContinuousClock.now - $0 > options.ackGracePeriod * 2 } ?? true
            return (silent || state.renewalNeeded, state.consumer)
        }
        guard stale else { return }
        let fresh = Self.newConsumerID()
        let now = ContinuousClock.now
        try await client.send("HSET", keepAliveKey, fresh, Int64(unixNanoseconds()))
        let members = state.withLock { $0.members.filter(\.joined) }
        for member in members {
            try await join(member.stream, start: member.lastSeen?.description ?? member.start.redisID, consumer: fresh)
        }
        logger.info("sink consumer renewed after losing contact", metadata: ["sink": "\(name)", "consumer": "\(fresh)"])
        state.withLock { state in
            state.consumer = fresh
            state.lastKeepAlive = now
            state.renewalNeeded = false
        }
        // Hand what the old consumer still holds to the new one, and retire it everywhere.
        for member in members {
            _ = try await sweep(member, matcher: matcher, retiring: old)
        }
    }

    private func writeKeepAlive() async throws {
        let consumer = self.consumer
        let now = ContinuousClock.now
        try await client.send("HSET", keepAliveKey, consumer, Int64(unixNanoseconds()))
        state.withLock { state in
            guard state.consumer == consumer else { return }
            if let last = state.lastKeepAlive, now - last > options.ackGracePeriod * 2 { state.renewalNeeded = true }
            state.lastKeepAlive = now
        }
    }

    private func keepAliveLoop() async {
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: options.ackGracePeriod / 2)
                try await writeKeepAlive()
            } catch {
                if Task.isCancelled { return }
                logger.debug("sink keep-alive failed", metadata: ["sink": "\(name)", "error": "\(error)"])
            }
        }
    }

    /// First sweeps stale consumers (claiming their events before deleting them), then, every idle
    /// check period and only while holding the sink's lease, claims events idle longer than the
    /// grace period and sweeps again.
    private func claimLoop() async {
        let matcher = filter.matcher()
        var initial = true
        while !Task.isCancelled {
            do {
                let creation = initial
                initial = false
                if !creation {
                    try await Task.sleep(for: options.idleCheckPeriod)
                    guard try await acquireLease() else { continue }
                }
                let members = state.withLock { $0.members.filter(\.joined) }
                for member in members {
                    if !options.noAck, !creation {
                        guard try await autoclaim(member, matcher: matcher) else { return }
                    }
                    guard try await sweep(member, matcher: matcher) else { return }
                }
            } catch {
                if Task.isCancelled || error is CancellationError { return }
                logger.debug("sink idle claim failed", metadata: ["sink": "\(name)", "error": "\(error)"])
            }
        }
    }

    private func acquireLease() async throws -> Bool {
        let period = options.idleCheckPeriod.milliseconds
        let lease = max(1, period - 5)
        let now = unixMilliseconds()
        let reply = try await client.evaluate(SinkScripts.acquireLease, keys: [leaseKey], arguments: [now + lease, now, lease])
        return reply.int == 1
    }

    /// `XAUTOCLAIM` to this consumer every entry idle longer than the grace period, and deliver it.
    private func autoclaim(_ member: Member, matcher: TopicMatcher) async throws -> Bool {
        var cursor = "0-0"
        for _ in 0..<100 {
            let reply = try await client.send(
                RedisCommand(
                    "XAUTOCLAIM", member.stream.key, name, consumer, options.ackGracePeriod.milliseconds, cursor,
                    "COUNT", options.maxPolled))
            guard let parts = reply.array, parts.count >= 2, let next = parts[0].string else {
                throw RedisError(.protocolError, "unexpected XAUTOCLAIM reply \(reply)")
            }
            if let entries = parts[1].array, !entries.isEmpty {
                guard try await deliver(entries, from: member, matcher: matcher) else { return false }
            }
            if next == "0-0" { break }
            cursor = next
        }
        return true
    }

    /// Claims stale consumers' pending events, then deletes those consumers (or, `retiring`, only
    /// that one, unconditionally).
    private func sweep(_ member: Member, matcher: TopicMatcher, retiring: String = "") async throws -> Bool {
        let threshold = unixNanoseconds() - (options.ackGracePeriod * 2).nanoseconds
        let reply = try await client.evaluate(
            SinkScripts.sweep,
            keys: [member.stream.key, member.stream.sinksKey, keepAliveKey],
            arguments: [name, consumer, threshold, retiring])
        guard let parts = reply.array, parts.count == 2 else { return true }
        if let deleted = parts[1].array, !deleted.isEmpty {
            logger.info(
                "sink deleted stale consumers", metadata: ["sink": "\(name)", "stream": "\(member.stream.name)", "consumers": "\(deleted.compactMap(\.string))"])
        }
        if let claimed = parts[0].array, !claimed.isEmpty {
            return try await deliver(claimed, from: member, matcher: matcher)
        }
        return true
    }
}
