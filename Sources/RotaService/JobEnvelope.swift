/// What a job's payload in the pool holds when it comes from a plan file (or `rota dispatch`):
/// the name of the handler that runs it and the handler's own payload.
///
/// Wire format (binary-safe, readable in `redis-cli`): `rota-job/1\n<handler>\n<payload bytes>`.
public struct JobEnvelope: Sendable, Hashable {
    public var handler: String
    public var payload: [UInt8]

    static let magic = Array("rota-job/1\n".utf8)

    /// Handler names: 1–64 characters of `a-z`, `0-9`, `-`, `_`, `.`.
    public init(handler: String, payload: [UInt8]) throws(EnvelopeError) {
        try Self.validate(handler: handler)
        self.handler = handler
        self.payload = payload
    }

    public static func validate(handler: String) throws(EnvelopeError) {
        let allowed = Set("abcdefghijklmnopqrstuvwxyz0123456789-_.")
        guard !handler.isEmpty, handler.count <= 64, handler.allSatisfy({ allowed.contains($0) }) else {
            throw EnvelopeError(message: "handler name '\(handler)' must be 1-64 characters of a-z, 0-9, '-', '_', '.'")
        }
    }

    public func encoded() -> [UInt8] {
        Self.magic + Array(handler.utf8) + [0x0A] + payload
    }

    /// Decodes an envelope; throws for payloads that are not one (a job dispatched without a handler).
    public init(decoding bytes: [UInt8]) throws(EnvelopeError) {
        guard bytes.starts(with: Self.magic) else {
            throw EnvelopeError(message: "the job payload is not a Rota job envelope (no handler named)")
        }
        let rest = bytes.dropFirst(Self.magic.count)
        guard let newline = rest.firstIndex(of: 0x0A) else {
            throw EnvelopeError(message: "the job envelope has no end of handler name")
        }
        let name = String(decoding: rest[rest.startIndex..<newline], as: UTF8.self)
        try self.init(handler: name, payload: Array(rest[rest.index(after: newline)...]))
    }
}

public struct EnvelopeError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}
