import CHiredis
import NIOCore

/// Encodes nothing and decodes everything: commands arrive already encoded by hiredis'
/// `redisFormatCommandArgv`; replies are parsed by a hiredis `redisReader` and matched, in order,
/// to the slots of the commands that were written.
///
/// Lives on its channel's event loop; every method is called there.
final class RedisChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var reader: UnsafeMutablePointer<redisReader>?
    private var inFlight = CircularBuffer<ReplySlot>(initialCapacity: 64)
    /// Replies gathered so far for the pipeline at the head of `inFlight`. Kept outside the buffer
    /// so appending never copies it.
    private var collected: [RedisValue] = []
    private var context: ChannelHandlerContext?
    private var closedError: RedisError?
    /// Pub/sub connections hand every push message (and any reply nobody waits for) to this closure.
    var onPush: ((RedisValue) -> Void)?
    /// Called once when the channel goes inactive, after every in-flight slot has been failed,
    /// with the error they were failed with.
    var onInactive: ((RedisError) -> Void)?

    var inFlightCount: Int { inFlight.count }
    /// For error messages.
    private let endpoint: RedisConfiguration.Endpoint?
    private let limiter: ReplyLimiter

    init(endpoint: RedisConfiguration.Endpoint?, maxReplyBytes: Int, maxReplyElements: Int) {
        self.endpoint = endpoint
        self.limiter = ReplyLimiter(maxBytes: maxReplyBytes, maxElements: maxReplyElements)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.reader = limiter.makeReader()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        failAll(RedisError(.connectionClosed, "the connection handler was removed"))
        if let reader { redisReaderFree(reader) }
        reader = nil
        self.context = nil
    }

    /// Writes already-encoded commands and registers their slots; one flush for the whole batch.
    /// `slots` may be shorter than the number of commands: commands with no slot (SUBSCRIBE on a
    /// pub/sub connection) expect no matched reply.
    func write(_ bytes: ByteBuffer, slots: some Sequence<ReplySlot>) {
        guard let context, closedError == nil else {
            let error = closedError ?? RedisError(.connectionClosed, "the connection is closed")
            for slot in slots { slot.resolve(.failure(error)) }
            return
        }
        inFlight.append(contentsOf: slots)
        context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        guard let reader else { return }
        let fed = buffer.withUnsafeReadableBytes { bytes -> Int32 in
            guard let base = bytes.baseAddress, bytes.count > 0 else { return REDIS_OK }
            return redisReaderFeed(reader, base.assumingMemoryBound(to: CChar.self), bytes.count)
        }
        guard fed == REDIS_OK else { return protocolFailure(context: context) }
        while true {
            var replyPointer: UnsafeMutableRawPointer?
            let mark = limiter.mark(reader)
            guard redisReaderGetReply(reader, &replyPointer) == REDIS_OK else {
                // The element hook refused an array: hiredis reports that as out of memory.
                if limiter.refusedElements, let refusal = limiter.refusal(reader) { return refuseReply(refusal, context: context) }
                return protocolFailure(context: context)
            }
            let oversized = limiter.account(after: mark, reader: reader, completed: replyPointer != nil)
            guard let replyPointer else { break }
            if let size = oversized {
                freeReplyObject(replyPointer)
                return refuseReply(
                    "a reply of more than \(limiter.maxBytes) bytes (\(size) bytes; RedisConfiguration.maxReplyBytes)", context: context)
            }
            let value = RedisValue(copying: replyPointer.assumingMemoryBound(to: redisReply.self))
            freeReplyObject(replyPointer)
            deliver(value)
            if self.reader == nil { return }  // delivery closed the channel
        }
        if let refusal = limiter.refusal(reader) { refuseReply(refusal, context: context) }
    }

    /// A reply over the limits: its command fails with `.replyTooLarge`; the commands written
    /// after it may have run, so they fail as on any lost connection. The reader is dropped with
    /// whatever it buffered, and the connection closes (its owner reconnects).
    private func refuseReply(_ reason: String, context: ChannelHandlerContext) {
        let error = RedisError(.replyTooLarge, "refused \(reason); the connection was reset")
        collected = []
        inFlight.popFirst()?.resolve(.failure(error))
        let reset = RedisError(.connectionClosed, "the connection was reset: an earlier reply exceeded the reply limits", underlying: error)
        closedError = reset
        failAll(reset)
        if let reader { redisReaderFree(reader) }
        reader = nil
        context.close(promise: nil)
    }

    private func deliver(_ value: RedisValue) {
        if let onPush, inFlight.isEmpty || Self.isPush(value) {
            onPush(value)
            return
        }
        guard !inFlight.isEmpty else {
            // A reply nobody asked for means we lost track of the protocol: never guess who it belongs to.
            closedError = RedisError(.protocolError, "received a reply with no command waiting for it")
            context?.close(promise: nil)
            return
        }
        let head = inFlight[inFlight.startIndex]
        if !head.isPipeline {
            inFlight.removeFirst()
            if case .error(let message) = value {
                head.resolve(.failure(RedisError(.server, message)))
            } else {
                head.resolve(.success(.one(value)))
            }
        } else {
            if collected.isEmpty { collected.reserveCapacity(head.expectedReplies) }
            collected.append(value)
            if collected.count == head.expectedReplies {
                inFlight.removeFirst()
                let replies = collected
                collected = []
                head.resolve(.success(.many(replies)))
            }
        }
    }

    /// Push messages of a subscribed connection: message, pmessage, (p)(un)subscribe confirmations, pong.
    static func isPush(_ value: RedisValue) -> Bool {
        guard case .array(let items) = value, let first = items.first, case .bulkString(let kind) = first else { return false }
        switch String(decoding: kind, as: UTF8.self) {
        case "message", "pmessage", "subscribe", "psubscribe", "unsubscribe", "punsubscribe", "pong": return true
        default: return false
        }
    }

    /// Fails the waiters whose deadline has passed; returns the earliest deadline still pending.
    func expire(now: NIODeadline) -> NIODeadline? {
        var earliest: NIODeadline?
        for slot in inFlight where !slot.isResolved {
            if slot.deadline <= now {
                slot.resolve(.failure(RedisError(.timeout, "no reply within the command timeout")))
            } else if earliest.map({ slot.deadline < $0 }) ?? true {
                earliest = slot.deadline
            }
        }
        return earliest
    }

    private func protocolFailure(context: ChannelHandlerContext) {
        var detail = "reader missing"
        if let reader {
            detail = withUnsafeBytes(of: reader.pointee.errstr) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
        }
        let error = RedisError(.protocolError, "invalid reply from the server: \(detail)")
        closedError = error
        failAll(error)
        // The reader's state is undefined after an error: drop it along with the connection.
        if let reader { redisReaderFree(reader) }
        reader = nil
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let error = closedError ?? RedisError(.connectionClosed, "the connection to the server was lost")
        closedError = error
        failAll(error)
        let callback = onInactive
        onInactive = nil
        callback?(error)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if closedError == nil {
            if RedisTLS.isTLSError(error), let endpoint {
                closedError = RedisTLS.error(error, endpoint: endpoint)
            } else {
                closedError = RedisError(.connectionClosed, "the connection failed", underlying: error)
            }
        }
        context.close(promise: nil)
    }

    private func failAll(_ error: RedisError) {
        collected = []
        while let slot = inFlight.popFirst() {
            slot.resolve(.failure(error))
        }
    }

    /// Closes the channel, making `error` the reason given to in-flight commands.
    func close(reason error: RedisError) {
        if closedError == nil { closedError = error }
        context?.close(promise: nil)
    }
}
