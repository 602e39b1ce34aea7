import CHiredis

/// Bounds what one reply may cost while hiredis reads it (``RedisConfiguration/maxReplyBytes``,
/// ``RedisConfiguration/maxReplyElements``). hiredis 0.14 has no such limits: it buffers a bulk
/// string until all of it has arrived, whatever length its header announced, and allocates an
/// array's element table as soon as the `*<count>` header is read.
///
/// - Bytes: after every `redisReaderGetReply`, the bytes the reader consumed (cursor moved, plus
///   what it dropped from the front of its buffer) are added to the reply being read; the bytes
///   still buffered are added on top. A bulk header the reader is waiting behind is read (that
///   one line) so an announced length over the limit is refused before its bytes arrive.
/// - Elements: the reader's `createArray` callback is wrapped; it counts every array's announced
///   length into the reader's `privdata` and refuses (returns NULL, which hiredis reports as out
///   of memory) before the default callback allocates anything.
///
/// Lives on the channel's event loop, owned by its ``RedisChannelHandler``.
final class ReplyLimiter {
    /// What the `createArray` callback reads and writes, through the reader's `privdata`.
    struct Budget {
        var elementsLeft: Int
        /// The array length that was refused, if one was.
        var refusedArray: Int?
    }

    let maxBytes: Int
    let maxElements: Int
    /// Stable memory for the C callback; freed in deinit, after the reader that points to it.
    private let budget: UnsafeMutablePointer<Budget>
    /// Bytes of the reply being read that the reader has consumed already.
    private var consumed = 0

    init(maxBytes: Int, maxElements: Int) {
        self.maxBytes = max(1, maxBytes)
        self.maxElements = max(0, maxElements)
        budget = .allocate(capacity: 1)
        budget.initialize(to: Budget(elementsLeft: self.maxElements, refusedArray: nil))
    }

    deinit {
        budget.deinitialize(count: 1)
        budget.deallocate()
    }

    /// A reader whose arrays are counted against this limiter's budget.
    func makeReader() -> UnsafeMutablePointer<redisReader>? {
        guard let functions = countingFunctions, let reader = redisReaderCreateWithFunctions(functions) else {
            return redisReaderCreate()
        }
        reader.pointee.privdata = UnsafeMutableRawPointer(budget)
        return reader
    }

    /// Reader state before a `redisReaderGetReply`, for ``account(after:reader:)``.
    func mark(_ reader: UnsafeMutablePointer<redisReader>) -> (length: Int, position: Int) {
        (reader.pointee.len, reader.pointee.pos)
    }

    /// Counts what one `redisReaderGetReply` consumed. When it returned a reply: the reply's size
    /// if over the limit (the budget starts over either way), else nil.
    func account(after mark: (length: Int, position: Int), reader: UnsafeMutablePointer<redisReader>, completed: Bool) -> Int? {
        // hiredis drops consumed bytes from the front of its buffer (cursor back to 0) once it has
        // read 1 KiB: what it consumed is the length dropped plus how far the cursor moved.
        consumed += (mark.length - reader.pointee.len) + (reader.pointee.pos - mark.position)
        guard completed else { return nil }
        let size = consumed
        consumed = 0
        budget.pointee.elementsLeft = maxElements
        return size > maxBytes ? size : nil
    }

    /// After the reader ran out of complete replies: why the reply it is waiting on must be refused
    /// (too many bytes buffered or announced, too many elements), or nil.
    func refusal(_ reader: UnsafeMutablePointer<redisReader>) -> String? {
        if let refused = budget.pointee.refusedArray {
            return "a reply with more than \(maxElements) array elements (an array of \(refused) announced; RedisConfiguration.maxReplyElements)"
        }
        let buffered = consumed + (reader.pointee.len - reader.pointee.pos)
        if buffered > maxBytes {
            return "a reply of more than \(maxBytes) bytes (\(buffered) buffered; RedisConfiguration.maxReplyBytes)"
        }
        if let bulk = Self.pendingBulk(reader), bulk.total > maxBytes - consumed {
            return "a reply of more than \(maxBytes) bytes (a bulk string of \(bulk.payload) bytes announced; RedisConfiguration.maxReplyBytes)"
        }
        return nil
    }

    /// The elements refusal, when the reader failed because the `createArray` hook said no.
    var refusedElements: Bool { budget.pointee.refusedArray != nil }

    /// When the reader waits inside a bulk string whose header line it has: the payload length
    /// announced, and the bytes still to come with it (header line, payload, CRLF). Reads that one
    /// line only.
    static func pendingBulk(_ reader: UnsafeMutablePointer<redisReader>) -> (payload: Int, total: Int)? {
        let r = reader.pointee
        let depth = MemoryLayout.size(ofValue: r.rstack) / MemoryLayout<redisReadTask>.stride
        guard r.ridx >= 0, Int(r.ridx) < depth, let buffer = r.buf, r.len > r.pos else { return nil }
        let taskType = withUnsafeBytes(of: r.rstack) { raw in
            raw.load(fromByteOffset: Int(r.ridx) * MemoryLayout<redisReadTask>.stride, as: redisReadTask.self).type
        }
        // The type byte ('$') is consumed already; the cursor is at the length.
        guard taskType == REDIS_REPLY_STRING else { return nil }
        let line = UnsafeRawBufferPointer(start: buffer + r.pos, count: min(r.len - r.pos, 24))
        var length = 0
        for (index, byte) in line.enumerated() {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                // 18 digits at most: no overflow, and already far over any limit.
                guard index < 18 else { return (Int.max, Int.max) }
                length = length * 10 + Int(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "\r"):
                return index == 0 ? nil : (length, index + 2 + length + 2)
            default:
                return nil  // "-1" (nil) or garbage: hiredis decides
            }
        }
        return nil  // the line is not complete yet
    }
}

// hiredis' default reply functions with `createArray` wrapped, built once from a throwaway
// reader (the defaults are static in hiredis.c). Immutable after initialisation.
private let defaultCreateArray: (@convention(c) (UnsafePointer<redisReadTask>?, Int32) -> UnsafeMutableRawPointer?)? = {
    guard let probe = redisReaderCreate() else { return nil }
    defer { redisReaderFree(probe) }
    return probe.pointee.fn?.pointee.createArray
}()

nonisolated(unsafe) private let countingFunctions: UnsafeMutablePointer<redisReplyObjectFunctions>? = {
    guard let probe = redisReaderCreate() else { return nil }
    defer { redisReaderFree(probe) }
    guard let defaults = probe.pointee.fn, defaultCreateArray != nil else { return nil }
    let table = UnsafeMutablePointer<redisReplyObjectFunctions>.allocate(capacity: 1)
    table.initialize(to: defaults.pointee)
    table.pointee.createArray = { task, elements in
        if let budget = task?.pointee.privdata?.assumingMemoryBound(to: ReplyLimiter.Budget.self) {
            let count = Int(elements)
            guard count >= 0, count <= budget.pointee.elementsLeft else {
                budget.pointee.refusedArray = count
                return nil
            }
            budget.pointee.elementsLeft -= count
        }
        return defaultCreateArray?(task, elements)
    }
    return table
}()
