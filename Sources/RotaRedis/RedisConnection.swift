import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// One reconnecting connection to Redis, on which many commands may be in flight at once.
///
/// Commands are encoded by the calling task and appended to a shared outbound buffer; the first
/// command after a flush schedules one drain on the event loop, which writes everything queued so far
/// with a single flush. Replies are matched to commands in order by ``RedisChannelHandler``.
///
/// While disconnected, commands wait in the queue (up to their timeout) and go out on the next
/// connection, after AUTH and SELECT. Commands that were already written when a connection dropped
/// fail with `.connectionClosed`: whether the server ran them is unknown, so they are not resent.
///
/// ``run()`` must be running for the connection to connect; cancelling it closes the connection.
public final class RedisConnection: Sendable {
    private struct Queued {
        let slot: ReplySlot?
        let start: Int
        let length: Int
    }

    private enum Phase {
        case idle
        case connecting
        case handshaking
        case ready(NIOLoopBound<RedisChannelHandler>)
        case failed(RedisError)
        case closed
    }

    private struct State {
        var phase: Phase = .idle
        var queue: [Queued] = []
        var buffer: ByteBuffer
        var drainScheduled = false
        var sweepAt: NIODeadline?
        var lastError: RedisError?
        var channel: (any Channel)?
    }

    public let configuration: RedisConfiguration
    /// The loop this connection's channel, drains and timers run on.
    public let eventLoop: any EventLoop
    /// Runs tasks on ``eventLoop``: a task doing round trip after round trip on this connection
    /// runs fastest under `withTaskExecutorPreference(connection.taskExecutor)` (see
    /// ``EventLoopTaskExecutor`` for why, and for what must not run there).
    public let taskExecutor: EventLoopTaskExecutor
    let logger: Logger
    private let state: Mutex<State>
    private let onPush: (@Sendable (RedisValue) -> Void)?
    private let onConnected: (@Sendable () -> Void)?
    private let allocator = ByteBufferAllocator()

    /// Creates the connection without connecting: that happens in ``run()``.
    public convenience init(configuration: RedisConfiguration, eventLoop: any EventLoop, logger: Logger) {
        self.init(configuration: configuration, eventLoop: eventLoop, logger: logger, onPush: nil, onConnected: nil)
    }

    init(
        configuration: RedisConfiguration,
        eventLoop: any EventLoop,
        logger: Logger,
        onPush: (@Sendable (RedisValue) -> Void)?,
        onConnected: (@Sendable () -> Void)?
    ) {
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.taskExecutor = EventLoopTaskExecutor(eventLoop: eventLoop)
        self.logger = logger
        self.onPush = onPush
        self.onConnected = onConnected
        self.state = Mutex(State(buffer: ByteBufferAllocator().buffer(capacity: 0)))
    }

    // MARK: Sending

    /// Sends one command and waits for its reply. An error reply is thrown as a `.server` error.
    public func send(_ command: RedisCommand, timeout: Duration? = nil) async throws -> RedisValue {
        try Task.checkCancellation()
        let slot = ReplySlot(deadline: deadline(timeout))
        try command.encoded.get().withUnsafeBytes { bytes in try enqueue(bytes, slot: slot) }
        return try await single(slot)
    }

    /// Queues one command without waiting for its reply; `onReply` gets the reply (an error reply as
    /// a `.server` error), a timeout or a lost connection, exactly once: on the connection's event
    /// loop, or on the thread that closes the connection for commands still queued. It must not
    /// block. For fire-and-forget commands whose outcome is only logged (a stream sink's
    /// acknowledgements): the caller saves a round trip, and the write itself leaves at the event
    /// loop's next turn, together with any other command queued meanwhile.
    ///
    /// Throws at once if the connection refuses commands (closed or failed).
    public func send(
        _ command: RedisCommand, timeout: Duration? = nil, onReply: @escaping @Sendable (Result<RedisValue, RedisError>) -> Void
    ) throws {
        // The handler already turns an error reply into a `.server` failure for single commands.
        let slot = ReplySlot(deadline: deadline(timeout)) { result in
            switch result {
            case .success(.one(let value)): onReply(.success(value))
            case .success(.many): onReply(.failure(RedisError(.protocolError, "expected one reply")))
            case .failure(let error as RedisError): onReply(.failure(error))
            case .failure(let error): onReply(.failure(RedisError(.connectionClosed, "the command failed", underlying: error)))
            }
        }
        let encoded = try command.encoded.get()
        try encoded.withUnsafeBytes { bytes in try enqueue(bytes, slot: slot, writeAtOnce: false) }
    }

    /// Sends `name` with `arguments`; see ``send(_:timeout:)``.
    @discardableResult
    public func send(_ name: String, _ arguments: any RedisArgument...) async throws -> RedisValue {
        try await send(arguments: [name] + arguments, timeout: nil)
    }

    /// Encodes straight into the outbound buffer: no intermediate ``RedisCommand``.
    func send(arguments: [any RedisArgument], timeout: Duration?) async throws -> RedisValue {
        try Task.checkCancellation()
        let slot = ReplySlot(deadline: deadline(timeout))
        try RESPEncoder.withEncoded(arguments) { bytes in try enqueue(bytes, slot: slot) }
        return try await single(slot)
    }

    private func single(_ slot: ReplySlot) async throws -> RedisValue {
        guard case .one(let value) = try await slot.wait() else {
            throw RedisError(.protocolError, "expected one reply")
        }
        return value
    }

    /// Sends all commands in one write and waits for all replies, in order. Error replies are
    /// returned in place as ``RedisValue/error(_:)`` so that one failing command does not hide the others.
    public func pipeline(_ commands: [RedisCommand], timeout: Duration? = nil) async throws -> [RedisValue] {
        try Task.checkCancellation()
        guard !commands.isEmpty else { return [] }
        var encoded = allocator.buffer(capacity: 32 * commands.count)
        for command in commands { encoded.writeBytes(try command.encoded.get()) }
        let slot = ReplySlot(pipelineOf: commands.count, deadline: deadline(timeout))
        try encoded.withUnsafeReadableBytes { bytes in try enqueue(bytes, slot: slot) }
        switch try await slot.wait() {
        case .many(let values): return values
        case .one(let value): return [value]
        }
    }

    /// Queues a command whose reply is not matched (SUBSCRIBE and friends on a pub/sub connection).
    func sendWithoutReply(_ command: RedisCommand) throws {
        try command.encoded.get().withUnsafeBytes { bytes in try enqueue(bytes, slot: nil) }
    }

    /// Commands written and not yet answered, plus commands queued for writing.
    public func pendingCount() async -> Int {
        let (queued, handler) = state.withLock { state -> (Int, NIOLoopBound<RedisChannelHandler>?) in
            if case .ready(let handler) = state.phase { return (state.queue.count, handler) }
            return (state.queue.count, nil)
        }
        guard let handler else { return queued }
        let inFlight = try? await eventLoop.submit { handler.value.inFlightCount }.get()
        return queued + (inFlight ?? 0)
    }

    private func deadline(_ timeout: Duration?) -> NIODeadline {
        let timeout = timeout ?? configuration.commandTimeout
        let (seconds, attoseconds) = timeout.components
        return .now() + .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }

    /// `writeAtOnce: false` always goes through the drain task, for callers that do not wait for
    /// the reply: the write then leaves at the loop's next turn (with whatever else was queued)
    /// instead of costing the caller a syscall.
    private func enqueue(_ bytes: UnsafeRawBufferPointer, slot: ReplySlot?, writeAtOnce: Bool = true) throws(RedisError) {
        var scheduleDrain = false
        var armSweep: NIODeadline?
        var writeNow: NIOLoopBound<RedisChannelHandler>?
        let onLoop = eventLoop.inEventLoop
        let refusal: RedisError? = state.withLock { state in
            switch state.phase {
            case .failed(let error): return error
            case .closed: return RedisError(.connectionClosed, "the connection to \(configuration.endpoint) is closed")
            case .idle, .connecting, .handshaking: break
            case .ready(let handler):
                // A caller already on the loop, with nothing queued or in flight, writes at once:
                // there is nothing to coalesce with, and a drain task would only add a loop turn.
                if writeAtOnce, onLoop, !state.drainScheduled, state.queue.isEmpty, handler.value.inFlightCount == 0 {
                    writeNow = handler
                } else if !state.drainScheduled {
                    state.drainScheduled = true
                    scheduleDrain = true
                }
            }
            if writeNow != nil {
                if let slot, state.sweepAt.map({ slot.deadline < $0 }) ?? true {
                    state.sweepAt = slot.deadline
                    armSweep = slot.deadline
                }
                return nil
            }
            let start = state.buffer.writerIndex
            state.buffer.writeBytes(bytes)
            state.queue.append(Queued(slot: slot, start: start, length: bytes.count))
            if let slot, state.sweepAt.map({ slot.deadline < $0 }) ?? true {
                state.sweepAt = slot.deadline
                armSweep = slot.deadline
            }
            return nil
        }
        if let refusal { throw refusal }
        if let writeNow {
            var buffer = allocator.buffer(capacity: bytes.count)
            buffer.writeBytes(bytes)
            // No array for the one slot: this is the path of every sequential round trip.
            if let slot {
                writeNow.value.write(buffer, slots: CollectionOfOne(slot))
            } else {
                writeNow.value.write(buffer, slots: EmptyCollection())
            }
        }
        if scheduleDrain { eventLoop.execute { self.drain() } }
        if let armSweep { eventLoop.scheduleTask(deadline: armSweep) { self.sweep() } }
    }

    /// Writes everything queued, with one flush. Runs on the event loop.
    private func drain() {
        let work = state.withLock { state -> (NIOLoopBound<RedisChannelHandler>, ByteBuffer, [Queued])? in
            state.drainScheduled = false
            guard case .ready(let handler) = state.phase, !state.queue.isEmpty else { return nil }
            var queue: [Queued] = []
            swap(&queue, &state.queue)
            state.queue.reserveCapacity(queue.count)
            let buffer = state.buffer
            state.buffer = allocator.buffer(capacity: buffer.readableBytes)
            return (handler, buffer, queue)
        }
        guard let (handler, buffer, queue) = work else { return }
        let allLive = queue.allSatisfy { !($0.slot?.isResolved ?? false) }
        if allLive {
            handler.value.write(buffer, slots: queue.lazy.compactMap(\.slot))
        } else {
            // Some callers gave up (timeout, cancellation) before their command left: don't send those.
            var live = allocator.buffer(capacity: buffer.readableBytes)
            var slots: [ReplySlot] = []
            for entry in queue where !(entry.slot?.isResolved ?? false) {
                if let bytes = buffer.getSlice(at: entry.start, length: entry.length) { live.writeImmutableBuffer(bytes) }
                if let slot = entry.slot { slots.append(slot) }
            }
            if live.readableBytes > 0 { handler.value.write(live, slots: slots) }
        }
    }

    /// Fails commands whose deadline passed, queued or in flight, and re-arms for the next deadline.
    private func sweep() {
        let now = NIODeadline.now()
        var expired: [ReplySlot] = []
        let (handler, lastError, queuedEarliest) = state.withLock { state -> (NIOLoopBound<RedisChannelHandler>?, RedisError?, NIODeadline?) in
            state.sweepAt = nil
            var earliest: NIODeadline?
            var anyDead = false
            for entry in state.queue {
                guard let slot = entry.slot else { continue }
                if slot.isResolved { anyDead = true; continue }
                if slot.deadline <= now {
                    expired.append(slot)
                    anyDead = true
                } else if earliest.map({ slot.deadline < $0 }) ?? true {
                    earliest = slot.deadline
                }
            }
            var handler: NIOLoopBound<RedisChannelHandler>?
            if case .ready(let h) = state.phase {
                handler = h
            } else if anyDead {
                compactQueue(&state, dropping: Set(expired.map(ObjectIdentifier.init)))
            }
            return (handler, state.lastError, earliest)
        }
        let reason = lastError.map { " (last error: \($0.message))" } ?? ""
        let waitError = RedisError(
            .timeout, "no connection to \(configuration.endpoint) within the command timeout\(reason)", underlying: lastError)
        for slot in expired { slot.resolve(.failure(waitError)) }
        var earliest = queuedEarliest
        if let handler, let inFlightEarliest = handler.value.expire(now: now) {
            earliest = earliest.map { min($0, inFlightEarliest) } ?? inFlightEarliest
        }
        guard let earliest else { return }
        let arm = state.withLock { state -> Bool in
            guard state.sweepAt.map({ earliest < $0 }) ?? true else { return false }
            state.sweepAt = earliest
            return true
        }
        if arm { eventLoop.scheduleTask(deadline: earliest) { self.sweep() } }
    }

    /// Drops dead entries and their bytes, so a long outage does not accumulate abandoned commands.
    private func compactQueue(_ state: inout State, dropping: Set<ObjectIdentifier>) {
        var buffer = allocator.buffer(capacity: state.buffer.readableBytes)
        var queue: [Queued] = []
        for entry in state.queue {
            if let slot = entry.slot, slot.isResolved || dropping.contains(ObjectIdentifier(slot)) { continue }
            guard let bytes = state.buffer.getSlice(at: entry.start, length: entry.length) else { continue }
            let start = buffer.writerIndex
            buffer.writeImmutableBuffer(bytes)
            queue.append(Queued(slot: entry.slot, start: start, length: entry.length))
        }
        state.buffer = buffer
        state.queue = queue
    }

    // MARK: Lifecycle

    /// Connects, and reconnects with back-off whenever the connection drops, until the task is cancelled.
    ///
    /// Throws only for errors that retrying cannot fix: a refused AUTH (`.authenticationFailed`), a
    /// refused SELECT or unreadable TLS files (`.invalidArgument`), a TLS certificate failure
    /// (`.tlsFailed`). Pending commands fail with the same error.
    public func run() async throws {
        var attempt = 0
        defer { shutDown() }
        // Built once per run: it reads the certificate files.
        var tlsContext: NIOSSLContext?
        if let tls = configuration.tls {
            do {
                tlsContext = try RedisTLS.makeContext(tls)
            } catch {
                fail(error)
                logger.error("redis TLS configuration refused", metadata: ["redis.endpoint": "\(configuration.endpoint)", "error": "\(error)"])
                throw error
            }
        }
        while !Task.isCancelled {
            setPhase(.connecting)
            do {
                let channel = try await connect(tlsContext: tlsContext)
                let handler = try await install(on: channel)
                try await handshake(handler)
                attempt = 0
                becomeReady(handler, channel: channel)
                logger.debug("redis connected", metadata: ["redis.endpoint": "\(configuration.endpoint)"])
                await withTaskCancellationHandler {
                    try? await channel.closeFuture.get()
                } onCancel: {
                    channel.close(promise: nil)
                }
                if Task.isCancelled { break }
                logger.info("redis connection lost; reconnecting", metadata: ["redis.endpoint": "\(configuration.endpoint)"])
            } catch let error as RedisError
                where error.code == .authenticationFailed || error.code == .invalidArgument || RedisTLS.isFinal(error)
            {
                fail(error)
                logger.error("redis connection refused", metadata: ["redis.endpoint": "\(configuration.endpoint)", "error": "\(error)"])
                throw error
            } catch {
                if Task.isCancelled { break }
                let redisError = error as? RedisError
                    ?? RedisError(.connectionClosed, "cannot connect to \(configuration.endpoint)", underlying: error)
                state.withLock { $0.lastError = redisError }
                logger.debug("redis connect failed", metadata: ["redis.endpoint": "\(configuration.endpoint)", "error": "\(redisError)"])
            }
            attempt += 1
            try? await Task.sleep(for: configuration.reconnect.delay(attempt: attempt))
        }
    }

    private func connect(tlsContext: NIOSSLContext?) async throws -> any Channel {
        let timeout = configuration.connectTimeout.components
        let endpoint = configuration.endpoint
        let (maxReplyBytes, maxReplyElements) = (configuration.maxReplyBytes, configuration.maxReplyElements)
        let tlsHost: (RedisConfiguration.TLS, String)?
        switch (configuration.tls, endpoint.kind) {
        case (nil, _): tlsHost = nil
        case (let tls?, .tcp(let host, _)): tlsHost = (tls, host)
        case (.some, .unix): throw RedisError(.invalidArgument, "TLS is not supported over a Unix socket (\(endpoint))")
        }
        var bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(.nanoseconds(timeout.seconds * 1_000_000_000 + timeout.attoseconds / 1_000_000_000))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tlsContext, let (tls, host) = tlsHost {
                        // First in the pipeline: everything after it reads and writes plaintext.
                        try channel.pipeline.syncOperations.addHandler(RedisTLS.makeHandler(context: tlsContext, tls: tls, host: host))
                    }
                    try channel.pipeline.syncOperations.addHandler(
                        RedisChannelHandler(endpoint: endpoint, maxReplyBytes: maxReplyBytes, maxReplyElements: maxReplyElements))
                }
            }
        switch configuration.endpoint.kind {
        case .tcp(let host, let port):
            bootstrap = bootstrap
                .channelOption(.tcpOption(.tcp_nodelay), value: 1)
                .channelOption(.socketOption(.so_keepalive), value: 1)
            return try await bootstrap.connect(host: host, port: port).get()
        case .unix(let path):
            return try await bootstrap.connect(unixDomainSocketPath: path).get()
        }
    }

    private func install(on channel: any Channel) async throws -> NIOLoopBound<RedisChannelHandler> {
        let onPush = self.onPush
        return try await channel.eventLoop.submit {
            let handler = try channel.pipeline.syncOperations.handler(type: RedisChannelHandler.self)
            handler.onPush = onPush
            handler.onInactive = { [weak self] reason in self?.connectionLost(reason) }
            return NIOLoopBound(handler, eventLoop: channel.eventLoop)
        }.get()
    }

    /// AUTH, SELECT and CLIENT SETNAME, before any queued command may use the connection.
    private func handshake(_ handler: NIOLoopBound<RedisChannelHandler>) async throws {
        setPhase(.handshaking)
        var commands: [RedisCommand] = []
        var names: [String] = []
        if let password = configuration.password {
            if let username = configuration.username {
                commands.append(RedisCommand("AUTH", username, password))
            } else {
                commands.append(RedisCommand("AUTH", password))
            }
            names.append("AUTH")
        }
        if configuration.database != 0 {
            commands.append(RedisCommand("SELECT", configuration.database))
            names.append("SELECT")
        }
        if let name = configuration.clientName {
            commands.append(RedisCommand("CLIENT", "SETNAME", name))
            names.append("CLIENT SETNAME")
        }
        if configuration.tls != nil {
            // A round trip proves the TLS session works, so that a failed handshake, or a server
            // refusing our certificate just after it, is reported here rather than after going ready.
            commands.append(RedisCommand("PING"))
            names.append("PING")
        }
        guard !commands.isEmpty else { return }

        var encoded = allocator.buffer(capacity: 64)
        for command in commands { encoded.writeBytes(try command.encoded.get()) }
        let slot = ReplySlot(pipelineOf: commands.count, deadline: deadline(configuration.connectTimeout))
        let bytes = encoded
        let setupTimeout = configuration.tls == nil
            ? "no reply to AUTH/SELECT within the connect timeout"
            : "no TLS handshake and reply to \(names.joined(separator: "/")) within the connect timeout (does \(configuration.endpoint) speak TLS?)"
        eventLoop.execute { handler.value.write(bytes, slots: CollectionOfOne(slot)) }
        let timer = eventLoop.scheduleTask(deadline: slot.deadline) {
            slot.resolve(.failure(RedisError(.timeout, setupTimeout)))
        }
        defer { timer.cancel() }
        guard case .many(let replies) = try await slot.wait() else { return }
        for (name, reply) in zip(names, replies) {
            guard case .error(let message) = reply else { continue }
            switch name {
            case "AUTH":
                throw RedisError(.authenticationFailed, "AUTH refused by \(configuration.endpoint): \(message)")
            case "SELECT":
                throw RedisError(.invalidArgument, "SELECT \(configuration.database) refused by \(configuration.endpoint): \(message)")
            case "PING":
                continue  // any reply (NOAUTH included) proves the TLS session works; commands report the rest
            default:
                throw RedisError(.server, "\(name) failed during connection setup: \(message)")
            }
        }
    }

    private func becomeReady(_ handler: NIOLoopBound<RedisChannelHandler>, channel: any Channel) {
        let scheduleDrain = state.withLock { state -> Bool in
            state.phase = .ready(handler)
            state.channel = channel
            state.lastError = nil
            guard !state.drainScheduled else { return false }
            state.drainScheduled = true
            return true
        }
        // Resubscription is queued before the drain runs, so it goes out ahead of nothing it depends on.
        onConnected?()
        if scheduleDrain { eventLoop.execute { self.drain() } }
    }

    /// Called on the event loop as soon as the channel goes inactive, so no drain writes into it.
    private func connectionLost(_ reason: RedisError) {
        state.withLock { state in
            if case .ready = state.phase { state.phase = .connecting }
            state.channel = nil
            state.lastError = RedisError(.connectionClosed, "the connection to \(configuration.endpoint) was lost")
        }
        if let refused = reason.underlying as? RedisError, refused.code == .replyTooLarge {
            logger.warning(
                "redis reply over the limits; connection reset",
                metadata: ["redis.endpoint": "\(configuration.endpoint)", "error": "\(refused.message)"])
        }
    }

    private func setPhase(_ phase: Phase) {
        state.withLock { state in
            switch state.phase {
            case .failed, .closed: return
            default: state.phase = phase
            }
        }
    }

    /// Refuses every queued and future command with `error`.
    func fail(_ error: RedisError) {
        let queue = state.withLock { state -> [Queued] in
            state.phase = .failed(error)
            defer { state.queue = [] }
            return state.queue
        }
        for entry in queue { entry.slot?.resolve(.failure(error)) }
    }

    private func shutDown() {
        let (queue, channel) = state.withLock { state -> ([Queued], (any Channel)?) in
            if case .failed = state.phase {} else { state.phase = .closed }
            defer {
                state.queue = []
                state.channel = nil
            }
            return (state.queue, state.channel)
        }
        let error = RedisError(.connectionClosed, "the connection to \(configuration.endpoint) was closed")
        for entry in queue { entry.slot?.resolve(.failure(error)) }
        channel?.close(promise: nil)
    }
}
