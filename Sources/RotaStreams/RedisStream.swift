import RotaRedis

/// A Redis stream of named events with byte payloads, living in a pool's ``RedisKeySpace``.
///
/// Stream `S` is the key `rota:{pool}:stream:S`; the registry of its sinks' consumers is the hash
/// `rota:{pool}:stream:S:sinks`. Creating a value does no I/O: the key appears with the first
/// ``add(name:payload:topic:signature:onlyIfExists:)`` or when a ``StreamSink`` creates its group.
///
/// Errors are ``RedisError``s: `.invalidArgument` for bad names or options (thrown before anything is
/// sent), the client's codes for everything else.
public struct RedisStream: Sendable {
    /// How long a stream lives without being written to.
    public enum TTL: Sendable, Hashable {
        /// Expire this long after the key was created; later writes do not extend it.
        case absolute(Duration)
        /// Expire this long after the last write: every add (and sink join) restarts the clock.
        case sliding(Duration)
    }

    public struct Options: Sendable {
        /// Approximate cap on the entries kept (`XADD MAXLEN ~`); 0 keeps everything. Trimming can
        /// remove entries a sink has not acknowledged yet: those are lost, so size it above the backlog.
        public var maxLength: Int
        /// Applied to the stream and to its sinks registry; nil (the default) keeps them forever.
        public var ttl: TTL?

        public init(maxLength: Int = 1000, ttl: TTL? = nil) {
            self.maxLength = maxLength
            self.ttl = ttl
        }
    }

    public let name: String
    public let keySpace: RedisKeySpace
    public let client: RedisClient
    public let options: Options
    /// The stream's Redis key.
    public let key: String
    /// The hash of sink name → JSON array of consumer IDs registered on this stream.
    public let sinksKey: String

    /// Validates the name and options; does no I/O.
    public init(name: String, keySpace: RedisKeySpace, client: RedisClient, options: Options = Options()) throws(RedisError) {
        try Validation.name(name, kind: "stream")
        guard options.maxLength >= 0 else {
            throw RedisError(.invalidArgument, "stream max length must be 0 (no cap) or positive, got \(options.maxLength)")
        }
        switch options.ttl {
        case .absolute(let ttl)?: try Validation.positive(ttl, "stream TTL")
        case .sliding(let ttl)?: try Validation.positive(ttl, "stream TTL")
        case nil: break
        }
        self.name = name
        self.keySpace = keySpace
        self.client = client
        self.options = options
        self.key = keySpace.key("stream", name)
        self.sinksKey = keySpace.key("stream", name, "sinks")
    }

    /// Appends an event and returns its ID.
    ///
    /// With `onlyIfExists`, a missing stream is not created and nil is returned: producers use it for
    /// streams whose consumers announce themselves by creating them (an inbox whose owner is gone).
    /// When a TTL is configured it is applied in the same round trip; if that fails the event was
    /// appended all the same, and the error is thrown. A `signature` is stored beside the payload
    /// (field `s`) for readers that check one.
    @discardableResult
    public func add(name eventName: String, payload: [UInt8] = [], topic: String? = nil, signature: String? = nil,
                    onlyIfExists: Bool = false) async throws -> String? {
        var arguments: [any RedisArgument] = ["XADD", key]
        if onlyIfExists { arguments.append("NOMKSTREAM") }
        if options.maxLength > 0 { arguments += ["MAXLEN", "~", options.maxLength] }
        arguments += ["*", "n", eventName, "p", payload]
        if let topic, !topic.isEmpty { arguments += ["t", topic] }
        if let signature { arguments += ["s", signature] }
        let xadd = RedisCommand(arguments: arguments)
        guard let expire = expireCommand(for: key) else {
            return try await client.send(xadd).string
        }
        let replies = try await client.pipeline([xadd, expire])
        guard replies.count == 2 else { throw RedisError(.protocolError, "XADD pipeline returned \(replies.count) replies") }
        let id = try replies[0].throwingServerError()
        _ = try replies[1].throwingServerError()
        return id.string
    }

    /// Deletes entries by ID (`XDEL`) and returns how many existed. Pending references to them in
    /// sinks are dropped the next time a sink claims them.
    @discardableResult
    public func remove(ids: [String]) async throws -> Int {
        guard !ids.isEmpty else { return 0 }
        let reply = try await client.send(RedisCommand(arguments: ["XDEL", key] + ids))
        return reply.int ?? 0
    }

    /// Deletes the stream (and with it every consumer group) and its sinks registry.
    ///
    /// Running sinks re-create a deleted stream when they next read (they recover their group as
    /// after a server restart), so stop a stream's sinks before destroying it. Sink keep-alives are
    /// per sink name, shared with other streams, and are left alone.
    public func destroy() async throws {
        try await client.send("DEL", key, sinksKey)
    }

    /// The number of entries (`XLEN`); 0 when the stream does not exist.
    public func length() async throws -> Int {
        try await client.send("XLEN", key).int ?? 0
    }

    /// `PEXPIRE` for the TTL kind: `NX` (only if no TTL yet) for absolute, a refresh for sliding.
    func expireCommand(for key: String) -> RedisCommand? {
        switch options.ttl {
        case .absolute(let ttl)?: return RedisCommand("PEXPIRE", key, ttl.milliseconds, "NX")
        case .sliding(let ttl)?: return RedisCommand("PEXPIRE", key, ttl.milliseconds)
        case nil: return nil
        }
    }

    /// The TTL as script arguments: milliseconds (0 = none) and `NX` or `` (refresh).
    var ttlScriptArguments: [any RedisArgument] {
        switch options.ttl {
        case .absolute(let ttl)?: return [ttl.milliseconds, "NX"]
        case .sliding(let ttl)?: return [ttl.milliseconds, ""]
        case nil: return [0, ""]
        }
    }
}
