import Logging
import NIOCore
import Synchronization

/// Something that happened on a subscribed connection.
public enum RedisPubSubEvent: Sendable, Hashable {
    /// A message published on a channel subscribed by name.
    case message(channel: String, payload: [UInt8])
    /// A message published on a channel matched by a subscribed pattern.
    case patternMessage(pattern: String, channel: String, payload: [UInt8])
    /// The connection was lost and has been re-established with every subscription confirmed again.
    /// Messages published in between are lost: anything that mirrors state from messages must resync.
    case resubscribed
}

/// A pub/sub subscription on its own connection, delivering events as an `AsyncSequence`.
///
/// Obtain one with ``RedisClient/withSubscription(channels:patterns:_:)``, which runs its connection
/// and closes it when the closure returns. The connection re-subscribes by itself after any reconnect
/// and then yields ``RedisPubSubEvent/resubscribed``.
public final class RedisSubscription: AsyncSequence, Sendable {
    public typealias Element = RedisPubSubEvent
    public typealias Failure = any Error

    private struct State {
        var channels: Set<String> = []
        var patterns: Set<String> = []
        var confirmedChannels: Set<String> = []
        var confirmedPatterns: Set<String> = []
        var waiters: [Waiter] = []
        var connections = 0
        var resubscribePending = false
    }

    private struct Waiter {
        let slot: ReplySlot
        let channels: Set<String>
        let patterns: Set<String>
        /// Waiting for these to be confirmed subscribed (true) or unsubscribed (false).
        let subscribed: Bool
    }

    private let state = Mutex(State())
    private let stream: AsyncThrowingStream<RedisPubSubEvent, any Error>
    private let continuation: AsyncThrowingStream<RedisPubSubEvent, any Error>.Continuation
    private let connectionBox = Mutex<RedisConnection?>(nil)
    private let commandTimeout: Duration

    /// When set, events go to this closure, called on the connection's event loop, instead of the
    /// sequence: for consumers that must react without a task hop (replicated maps).
    private let handler: (@Sendable (RedisPubSubEvent) -> Void)?

    init(commandTimeout: Duration, handler: (@Sendable (RedisPubSubEvent) -> Void)? = nil) {
        (stream, continuation) = AsyncThrowingStream.makeStream(of: RedisPubSubEvent.self)
        self.commandTimeout = commandTimeout
        self.handler = handler
    }

    private func deliver(_ event: RedisPubSubEvent) {
        if let handler {
            handler(event)
        } else {
            continuation.yield(event)
        }
    }

    func attach(_ connection: RedisConnection) { connectionBox.withLock { $0 = connection } }

    private var connection: RedisConnection {
        get throws(RedisError) {
            guard let connection = connectionBox.withLock({ $0 }) else {
                throw RedisError(.connectionClosed, "the subscription is closed")
            }
            return connection
        }
    }

    public func makeAsyncIterator() -> AsyncThrowingStream<RedisPubSubEvent, any Error>.Iterator {
        stream.makeAsyncIterator()
    }

    /// Subscribes to channels; returns once the server confirmed every one of them, so a message
    /// published after this returns is delivered.
    public func subscribe(channels: [String]) async throws {
        try await change(channels: Set(channels), patterns: [], subscribe: true)
    }

    /// Subscribes to glob-style patterns (PSUBSCRIBE); returns once confirmed.
    public func subscribe(patterns: [String]) async throws {
        try await change(channels: [], patterns: Set(patterns), subscribe: true)
    }

    public func unsubscribe(channels: [String]) async throws {
        try await change(channels: Set(channels), patterns: [], subscribe: false)
    }

    public func unsubscribe(patterns: [String]) async throws {
        try await change(channels: [], patterns: Set(patterns), subscribe: false)
    }

    private func change(channels: Set<String>, patterns: Set<String>, subscribe: Bool) async throws {
        guard !channels.isEmpty || !patterns.isEmpty else { return }
        if channels.contains(where: \.isEmpty) || patterns.contains(where: \.isEmpty) {
            throw RedisError(.invalidArgument, "channel and pattern names must not be empty")
        }
        let connection = try self.connection
        let deadline = NIODeadline.now() + .nanoseconds(Int64(commandTimeout.components.seconds) * 1_000_000_000
            + commandTimeout.components.attoseconds / 1_000_000_000)
        let slot = ReplySlot(deadline: deadline)
        state.withLock { state in
            if subscribe {
                state.channels.formUnion(channels)
                state.patterns.formUnion(patterns)
            } else {
                state.channels.subtract(channels)
                state.patterns.subtract(patterns)
            }
            state.waiters.append(Waiter(slot: slot, channels: channels, patterns: patterns, subscribed: subscribe))
        }
        if !channels.isEmpty {
            try connection.sendWithoutReply(RedisCommand(arguments: [subscribe ? "SUBSCRIBE" : "UNSUBSCRIBE"] + Array(channels)))
        }
        if !patterns.isEmpty {
            try connection.sendWithoutReply(RedisCommand(arguments: [subscribe ? "PSUBSCRIBE" : "PUNSUBSCRIBE"] + Array(patterns)))
        }
        checkWaiters()
        let timer = connection.eventLoop.scheduleTask(deadline: deadline) {
            slot.resolve(.failure(RedisError(.timeout, "the server did not confirm the (un)subscription in time")))
        }
        defer { timer.cancel() }
        _ = try await slot.wait()
    }

    /// Re-sends every subscription on a fresh connection. Runs on the event loop, before queued commands.
    func connected() {
        let (channels, patterns, first) = state.withLock { state -> ([String], [String], Bool) in
            state.confirmedChannels = []
            state.confirmedPatterns = []
            state.connections += 1
            let first = state.connections == 1
            if !first { state.resubscribePending = true }
            return (Array(state.channels), Array(state.patterns), first)
        }
        guard let connection = connectionBox.withLock({ $0 }) else { return }
        if !channels.isEmpty { try? connection.sendWithoutReply(RedisCommand(arguments: ["SUBSCRIBE"] + channels)) }
        if !patterns.isEmpty { try? connection.sendWithoutReply(RedisCommand(arguments: ["PSUBSCRIBE"] + patterns)) }
        if !first { checkWaiters() }
    }

    /// Handles one push message from the server. Runs on the event loop.
    func push(_ value: RedisValue) {
        if case .error(let message) = value {
            // A refused SUBSCRIBE (e.g. NOPERM from an ACL): the oldest pending request gets the
            // server's error instead of waiting for a confirmation that will never come.
            let waiter = state.withLock { state -> ReplySlot? in
                guard let index = state.waiters.firstIndex(where: { !$0.slot.isResolved }) else { return nil }
                let waiter = state.waiters.remove(at: index)
                if waiter.subscribed {
                    state.channels.subtract(waiter.channels)
                    state.patterns.subtract(waiter.patterns)
                }
                return waiter.slot
            }
            waiter?.resolve(.failure(RedisError(.server, message)))
            return
        }
        guard case .array(let items) = value, let kind = items.first?.string else { return }
        switch (kind, items.count) {
        case ("message", 3):
            if let channel = items[1].string, let payload = items[2].bytes {
                deliver(.message(channel: channel, payload: payload))
            }
        case ("pmessage", 4):
            if let pattern = items[1].string, let channel = items[2].string, let payload = items[3].bytes {
                deliver(.patternMessage(pattern: pattern, channel: channel, payload: payload))
            }
        case ("subscribe", 3), ("unsubscribe", 3), ("psubscribe", 3), ("punsubscribe", 3):
            guard let name = items[1].string else { return }
            state.withLock { state in
                switch kind {
                case "subscribe": state.confirmedChannels.insert(name)
                case "unsubscribe": state.confirmedChannels.remove(name)
                case "psubscribe": state.confirmedPatterns.insert(name)
                default: state.confirmedPatterns.remove(name)
                }
            }
            checkWaiters()
        default:
            break
        }
    }

    private func checkWaiters() {
        let (ready, resubscribed) = state.withLock { state -> ([ReplySlot], Bool) in
            var ready: [ReplySlot] = []
            state.waiters.removeAll { waiter in
                if waiter.slot.isResolved { return true }
                let done = waiter.subscribed
                    ? waiter.channels.isSubset(of: state.confirmedChannels) && waiter.patterns.isSubset(of: state.confirmedPatterns)
                    : waiter.channels.isDisjoint(with: state.confirmedChannels) && waiter.patterns.isDisjoint(with: state.confirmedPatterns)
                if done { ready.append(waiter.slot) }
                return done
            }
            var resubscribed = false
            if state.resubscribePending, state.channels.isSubset(of: state.confirmedChannels),
                state.patterns.isSubset(of: state.confirmedPatterns)
            {
                state.resubscribePending = false
                resubscribed = true
            }
            return (ready, resubscribed)
        }
        for slot in ready { slot.resolve(.success(.one(.null))) }
        if resubscribed { deliver(.resubscribed) }
    }

    func finish(throwing error: (any Error)?) {
        connectionBox.withLock { $0 = nil }
        let waiters = state.withLock { state in
            defer { state.waiters = [] }
            return state.waiters
        }
        let closed = error ?? RedisError(.connectionClosed, "the subscription is closed")
        for waiter in waiters { waiter.slot.resolve(.failure(closed)) }
        continuation.finish(throwing: error)
    }
}
