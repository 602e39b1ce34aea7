import CHiredis
import NIOCore

/// A value that can be sent as one argument of a Redis command. Arguments are bytes.
public protocol RedisArgument: Sendable {
    /// Lends the argument's bytes for the duration of `body`, without copying where possible.
    func withRedisArgumentBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R
}

extension String: RedisArgument {
    public func withRedisArgumentBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        var copy = self  // withUTF8 is mutating because it may make a bridged string contiguous.
        return try copy.withUTF8 { try body(UnsafeRawBufferPointer($0)) }
    }
}

extension Substring: RedisArgument {
    public func withRedisArgumentBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        var copy = self
        return try copy.withUTF8 { try body(UnsafeRawBufferPointer($0)) }
    }
}

extension Array: RedisArgument where Element == UInt8 {
    public func withRedisArgumentBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withUnsafeBytes(body)
    }
}

extension ArraySlice: RedisArgument where Element == UInt8 {
    public func withRedisArgumentBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withUnsafeBytes(body)
    }
}

extension ByteBuffer: RedisArgument {
    public func withRedisArgumentBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withUnsafeReadableBytes(body)
    }
}

extension Int: RedisArgument {
    public func withRedisArgumentBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try description.withRedisArgumentBytes(body)
    }
}

extension Int64: RedisArgument {
    public func withRedisArgumentBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try description.withRedisArgumentBytes(body)
    }
}

extension UInt64: RedisArgument {
    public func withRedisArgumentBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try description.withRedisArgumentBytes(body)
    }
}

extension Double: RedisArgument {
    public func withRedisArgumentBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        // Redis parses "inf"/"-inf" but not Swift's "nan"; callers must not send NaN.
        try description.withRedisArgumentBytes(body)
    }
}

/// One command, encoded to RESP (by hiredis) when it is created.
///
/// Encoding up front lets a command be sent many times, or from many tasks, at the cost of one
/// copy of its bytes; `send("NAME", args…)` encodes straight into the connection's buffer instead.
public struct RedisCommand: Sendable {
    /// The RESP bytes, or the reason the arguments could not be encoded.
    let encoded: Result<[UInt8], RedisError>

    public init(_ name: String, _ arguments: any RedisArgument...) {
        self.init(arguments: [name] + arguments)
    }

    public init(arguments: [any RedisArgument]) {
        do {
            let bytes: [UInt8] = try RESPEncoder.withEncoded(arguments) { buffer in Array(buffer) }
            encoded = .success(bytes)
        } catch let error as RedisError {
            encoded = .failure(error)
        } catch {
            encoded = .failure(RedisError(.invalidArgument, "could not encode the command", underlying: error))
        }
    }
}

/// Where an empty argument points: hiredis copies zero bytes from it, but memcpy wants a valid pointer.
/// Written once at initialisation and never again, so sharing it across threads is safe.
nonisolated(unsafe) private let emptyArgument: UnsafeMutablePointer<CChar> = {
    let pointer = UnsafeMutablePointer<CChar>.allocate(capacity: 1)
    pointer.initialize(to: 0)
    return pointer
}()

enum RESPEncoder {
    /// Encodes `arguments` with hiredis' `redisFormatCommandArgv` and lends the RESP bytes to `body`.
    static func withEncoded<R>(
        _ arguments: [any RedisArgument],
        _ body: (UnsafeRawBufferPointer) throws -> R
    ) throws -> R {
        let count = arguments.count
        guard count > 0 else { throw RedisError(.invalidArgument, "a command needs at least its name") }
        guard count <= Int(Int32.max) else { throw RedisError(.invalidArgument, "too many arguments (\(count))") }
        do {
            return try withUnsafeTemporaryAllocation(of: UnsafePointer<CChar>?.self, capacity: count) { argv in
                try withUnsafeTemporaryAllocation(of: Int.self, capacity: count) { lengths in
                    // Each argument lends its bytes through a closure, so the closures nest: every pointer
                    // stays valid until the innermost call has formatted the command.
                    func lend(_ index: Int) throws -> R {
                        if index == count {
                            var target: UnsafeMutablePointer<CChar>? = nil
                            let length = redisFormatCommandArgv(&target, Int32(count), argv.baseAddress, lengths.baseAddress)
                            guard length >= 0, let target else {
                                throw RedisError(.invalidArgument, "hiredis could not encode the command (out of memory?)")
                            }
                            defer { redisFreeCommand(target) }
                            return try body(UnsafeRawBufferPointer(start: target, count: Int(length)))
                        }
                        return try arguments[index].withRedisArgumentBytes { bytes in
                            argv[index] = UnsafePointer(
                                bytes.baseAddress?.assumingMemoryBound(to: CChar.self) ?? UnsafePointer(emptyArgument))
                            lengths[index] = bytes.count
                            return try lend(index + 1)
                        }
                    }
                    return try lend(0)
                }
            }
        } catch let error as RedisError {
            throw error
        } catch {
            throw RedisError(.invalidArgument, "could not encode the command", underlying: error)
        }
    }
}
