import CHiredis

/// A decoded RESP2 reply. Bulk strings are bytes: payloads may hold NUL and invalid UTF-8.
public enum RedisValue: Sendable, Hashable {
    /// `+OK`-style status replies.
    case simpleString(String)
    /// `-ERR …` replies nested inside arrays (EXEC, pipelines). A top-level error reply to
    /// ``RedisClient/send(_:)`` is thrown as a ``RedisError`` with code `.server` instead.
    case error(String)
    case integer(Int64)
    case bulkString([UInt8])
    case null
    case array([RedisValue])
}

extension RedisValue {
    /// The bulk or status string as UTF-8 text (invalid sequences repaired), or nil for other replies.
    public var string: String? {
        switch self {
        case .bulkString(let bytes): return String(decoding: bytes, as: UTF8.self)
        case .simpleString(let s): return s
        default: return nil
        }
    }

    /// The raw bytes of a bulk or status string.
    public var bytes: [UInt8]? {
        switch self {
        case .bulkString(let bytes): return bytes
        case .simpleString(let s): return Array(s.utf8)
        default: return nil
        }
    }

    /// An integer reply, or a bulk string holding a decimal integer (as `GET` of a counter returns).
    public var int: Int? {
        switch self {
        case .integer(let i): return Int(exactly: i)
        case .bulkString(let bytes): return Int(String(decoding: bytes, as: UTF8.self))
        default: return nil
        }
    }

    public var array: [RedisValue]? {
        if case .array(let values) = self { return values }
        return nil
    }

    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// Throws the error reply as a ``RedisError``; returns any other reply as is.
    public func throwingServerError() throws(RedisError) -> RedisValue {
        if case .error(let message) = self { throw RedisError(.server, message) }
        return self
    }
}

extension RedisValue: CustomStringConvertible {
    public var description: String {
        switch self {
        case .simpleString(let s): return s
        case .error(let s): return "(error) \(s)"
        case .integer(let i): return "(integer) \(i)"
        case .bulkString(let b): return "\"\(String(decoding: b, as: UTF8.self))\""
        case .null: return "(nil)"
        case .array(let values): return "[" + values.map(\.description).joined(separator: ", ") + "]"
        }
    }
}

extension RedisValue {
    /// Copies a hiredis reply tree into Swift values. The caller still owns (and frees) `reply`.
    init(copying reply: UnsafePointer<redisReply>) {
        let r = reply.pointee
        switch r.type {
        case REDIS_REPLY_STRING:
            self = .bulkString(Self.copyBytes(r.str, r.len))
        case REDIS_REPLY_STATUS:
            self = .simpleString(String(decoding: Self.buffer(r.str, r.len), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            self = .error(String(decoding: Self.buffer(r.str, r.len), as: UTF8.self))
        case REDIS_REPLY_INTEGER:
            self = .integer(r.integer)
        case REDIS_REPLY_ARRAY:
            var values: [RedisValue] = []
            values.reserveCapacity(r.elements)
            if let elements = r.element {
                for index in 0..<r.elements {
                    if let child = elements[index] {
                        values.append(RedisValue(copying: child))
                    } else {
                        values.append(.null)
                    }
                }
            }
            self = .array(values)
        default:
            // REDIS_REPLY_NIL, and any type a future hiredis might add: nothing to copy.
            self = .null
        }
    }

    private static func buffer(_ pointer: UnsafeMutablePointer<CChar>?, _ length: Int) -> UnsafeRawBufferPointer {
        guard let pointer, length > 0 else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: pointer, count: length)
    }

    private static func copyBytes(_ pointer: UnsafeMutablePointer<CChar>?, _ length: Int) -> [UInt8] {
        Array(buffer(pointer, length))
    }
}
