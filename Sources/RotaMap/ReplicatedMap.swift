import Foundation
import Logging
import Metrics
import RotaRedis
import Synchronization

/// A string-keyed map whose source of truth is a Redis hash, mirrored in every process that runs it.
///
/// Reads (``get(_:)``, ``keys``, ``snapshot``, ``count``) are local and cheap. Writes are atomic Lua
/// scripts that change the hash, bump its revision and publish the change in one step; the local
/// copy changes when the published change comes back (or at once with ``setAndWait(_:_:)``).
/// Replicas apply changes in revision order; a missed revision (a gap) or a re-subscription after a
/// reconnect triggers a full resync from the hash, so no update is ever silently lost.
///
/// The initializer does no I/O: ``run()`` joins the map and keeps it in sync until cancelled or
/// closed; ``waitUntilReady()`` returns once the first snapshot is loaded. ``withMap(_:keySpace:client:options:logger:_:)``
/// does both for scoped use.
public final class ReplicatedMap: Sendable {
    /// Expiry of the map's hash. Maps of a pool never expire; other users may want them to.
    public struct TTL: Sendable, Hashable {
        let duration: Duration
        let sliding: Bool
        /// Set once when the hash is created; later writes do not extend it.
        public static func absolute(_ duration: Duration) -> TTL { TTL(duration: duration, sliding: false) }
        /// Refreshed by every write.
        public static func sliding(_ duration: Duration) -> TTL { TTL(duration: duration, sliding: true) }
    }

    public struct Options: Sendable {
        public var ttl: TTL?
        /// The largest value the local copy takes (bytes); nil for no limit. A larger value, from a
        /// change message or a snapshot, is skipped: the key reads as absent here (its previous
        /// value dropped), a warning names the key once, and ``ReplicatedMap/skippedValueCount``
        /// and the counter `rota_map_values_skipped` (dimension `map`) count it. Anyone who can
        /// write the hash could otherwise make every replica hold whatever they wrote. Writes
        /// through this map are not refused: the limit is about what replicas keep.
        public var maxValueBytes: Int?
        public init(ttl: TTL? = nil, maxValueBytes: Int? = nil) {
            self.ttl = ttl
            self.maxValueBytes = maxValueBytes
        }
    }

    private struct State {
        var content: [String: [UInt8]] = [:]
        var revision: Int64 = 0
        var ready = false
        /// Until the next snapshot is installed, messages are kept here rather than applied.
        var resyncing = true
        var buffered: [MapMessage] = []
        var closed = false
        var failure: (any Error)?
        var readyWaiters: [CheckedContinuation<Void, any Error>] = []
        var revisionWaiters: [UInt64: (target: Int64, continuation: CheckedContinuation<Void, any Error>)] = [:]
        var subscribers: [UInt64: AsyncStream<MapChange>.Continuation] = [:]
        var nextID: UInt64 = 0
        /// Values refused for their size, in all.
        var skippedValues = 0
        /// Keys whose oversized value was logged already (until they hold a value we keep).
        var loggedSkips: Set<String> = []
    }

    /// A value refused for its size, to log and count outside the lock.
    struct Skip: Sendable {
        let key: String
        let bytes: Int
        let firstTime: Bool
    }

    public let name: String
    public let keySpace: RedisKeySpace
    /// The Redis hash holding the content.
    public let contentKey: String
    /// The pub/sub channel carrying change messages.
    public let channel: String
    let client: RedisClient
    let options: Options
    let logger: Logger
    private let state = Mutex(State())
    private let closeSignal: (stream: AsyncStream<Void>, continuation: AsyncStream<Void>.Continuation)
    private let resyncSignal: (stream: AsyncStream<Void>, continuation: AsyncStream<Void>.Continuation)

    /// Validates the name (1–512 characters, none of space, NUL, `*`, `?`, `[`, `]`, `{`, `}`, `:`).
    public init(
        _ name: String,
        keySpace: RedisKeySpace,
        client: RedisClient,
        options: Options = Options(),
        logger: Logger = Logger(label: "rota.map", factory: { _ in SwiftLogNoOpLogHandler() })
    ) throws(ReplicatedMapError) {
        try Self.validate(name: name)
        self.name = name
        self.keySpace = keySpace
        self.contentKey = keySpace.key("map", name)
        self.channel = keySpace.key("map", name, "updates")
        self.client = client
        self.options = options
        var logger = logger
        logger[metadataKey: "map"] = "\(name)"
        self.logger = logger
        self.closeSignal = AsyncStream.makeStream(of: Void.self)
        self.resyncSignal = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    static func validate(name: String) throws(ReplicatedMapError) {
        guard !name.isEmpty, name.utf8.count <= 512 else {
            throw ReplicatedMapError(.invalidName, "map name must be 1-512 bytes long")
        }
        let reserved: Set<Character> = [" ", "\0", "*", "?", "[", "]", "{", "}", ":"]
        if let bad = name.first(where: { reserved.contains($0) }) {
            throw ReplicatedMapError(.invalidName, "map name '\(name)' contains the reserved character '\(bad)'")
        }
    }

    static func validate(key: String) throws(ReplicatedMapError) {
        guard !key.isEmpty else { throw ReplicatedMapError(.invalidKey, "map keys must not be empty") }
        guard !key.contains("=") else { throw ReplicatedMapError(.invalidKey, "map key '\(key)' contains '=' (reserved)") }
    }

    /// Joins the map for the duration of `body`.
    public static func withMap<R: Sendable>(
        _ name: String,
        keySpace: RedisKeySpace,
        client: RedisClient,
        options: Options = Options(),
        logger: Logger = Logger(label: "rota.map", factory: { _ in SwiftLogNoOpLogHandler() }),
        isolation: isolated (any Actor)? = #isolation,
        _ body: (ReplicatedMap) async throws -> R
    ) async throws -> R {
        let map = try ReplicatedMap(name, keySpace: keySpace, client: client, options: options, logger: logger)
        return try await withThrowingTaskGroup(of: Void.self, returning: R.self, isolation: isolation) { group in
            group.addTask { try await map.run() }
            defer { group.cancelAll() }
            try await map.waitUntilReady()
            return try await body(map)
        }
    }

    // MARK: Lifecycle

    /// Subscribes to the map's channel, loads the snapshot, then applies changes until cancelled or
    /// ``close()``d. Throws only when the subscription is refused for good (e.g. wrong password).
    public func run() async throws {
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await self.replicate() }
                group.addTask { for await _ in self.closeSignal.stream {} }
                _ = try await group.next()
                group.cancelAll()
            }
        } catch is CancellationError {
        } catch {
            finish(failure: error)
            throw error
        }
        finish(failure: nil)
    }

    /// Returns once the first snapshot is loaded; throws if ``run()`` failed or the map was closed first.
    public func waitUntilReady() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let immediate: Result<Void, any Error>? = state.withLock { state in
                if state.ready { return .success(()) }
                if let failure = state.failure { return .failure(failure) }
                if state.closed { return .failure(ReplicatedMapError(.closed, "map \(name) was closed before it was ready")) }
                state.readyWaiters.append(continuation)
                return nil
            }
            if let immediate { continuation.resume(with: immediate) }
        }
    }

    /// Stops replication. The content stays readable; writes fail with `.closed`, except
    /// ``reset()`` and ``destroy()``. Idempotent.
    public func close() {
        closeSignal.continuation.finish()
        finish(failure: nil)
    }

    public var isClosed: Bool { state.withLock { $0.closed } }

    private func finish(failure: (any Error)?) {
        let (readyWaiters, revisionWaiters, subscribers) = state.withLock { state in
            if !state.closed { logger.debug("map closed") }
            state.closed = true
            if state.failure == nil { state.failure = failure }
            defer {
                state.readyWaiters = []
                state.revisionWaiters = [:]
                state.subscribers = [:]
            }
            return (state.readyWaiters, state.revisionWaiters, state.subscribers)
        }
        let error = failure ?? ReplicatedMapError(.closed, "map \(name) is closed")
        for waiter in readyWaiters { waiter.resume(throwing: error) }
        for (_, waiter) in revisionWaiters { waiter.continuation.resume(throwing: error) }
        for (_, subscriber) in subscribers { subscriber.finish() }
    }

    /// Messages are applied as they arrive, on the subscription's event loop (no task hop between
    /// Redis and the local copy); this task only loads snapshots when one is needed.
    private func replicate() async throws {
        try await client.withSubscription(channels: [channel], handler: { [weak self] event in self?.receive(event) }) { _ in
            try await resync()
            for await _ in resyncSignal.stream {
                try await resync()
            }
        }
    }

    private func receive(_ event: RedisPubSubEvent) {
        switch event {
        case .message(_, let payload):
            guard let message = MapMessage(payload) else {
                logger.warning("ignoring malformed map message", metadata: ["bytes": "\(payload.count)"])
                return
            }
            if apply(message) == .gap {
                logger.info("revision gap; resyncing")
                resyncSignal.continuation.yield()
            }
        case .resubscribed:
            logger.info("map subscription reconnected; resyncing")
            state.withLock { $0.resyncing = true }
            resyncSignal.continuation.yield()
        case .patternMessage:
            break
        }
    }

    enum ApplyOutcome: Equatable { case applied, ignored, buffered, gap }

    /// Applies one change message (or buffers it while a snapshot is being loaded).
    func apply(_ message: MapMessage) -> ApplyOutcome {
        typealias Effects = (ApplyOutcome, MapChange?, [AsyncStream<MapChange>.Continuation], [CheckedContinuation<Void, any Error>], Skip?)
        let limit = options.maxValueBytes
        let (outcome, kind, subscribers, released, skip) = state.withLock { state -> Effects in
            if state.resyncing {
                state.buffered.append(message)
                return (.buffered, nil, [], [], nil)
            }
            var skip: Skip?
            let (outcome, kind) = Self.applyLocked(message, &state, limit: limit, skip: &skip)
            if outcome == .gap {
                state.resyncing = true
                state.buffered = [message]
            }
            // An applied change moves the revision even when it changes nothing here (a skipped value).
            guard outcome == .applied else { return (outcome, nil, [], [], skip) }
            return (outcome, kind, kind == nil ? [] : Array(state.subscribers.values), releaseWaiters(&state), skip)
        }
        if let skip { report([skip]) }
        if let kind { for subscriber in subscribers { subscriber.post(kind) } }
        for waiter in released { waiter.resume() }
        return outcome
    }

    /// The replica rule: apply revision r+1 only; ignore older; report a gap for anything newer.
    private static func applyLocked(_ message: MapMessage, _ state: inout State, limit: Int?, skip: inout Skip?) -> (ApplyOutcome, MapChange?) {
        guard message.revision > state.revision else { return (.ignored, nil) }
        // Every write bumps the revision by one: anything else means messages were lost.
        guard message.revision == state.revision + 1 else { return (.gap, nil) }
        state.revision = message.revision
        switch message {
        case .set(let key, let value, _):
            // The map's own fields never travel as keys; a message claiming one is not ours to apply.
            guard !key.hasPrefix("=") else { return (.ignored, nil) }
            if let limit, value.count > limit {
                // The revision still counts (no gap); the key's old value is no longer true.
                skip = Self.skipLocked(key, bytes: value.count, &state)
                return (.applied, state.content.removeValue(forKey: key) == nil ? nil : .delete)
            }
            state.content[key] = value
            if !state.loggedSkips.isEmpty { state.loggedSkips.remove(key) }
            return (.applied, .change)
        case .delete(let key, _):
            state.content.removeValue(forKey: key)
            if !state.loggedSkips.isEmpty { state.loggedSkips.remove(key) }
            return (.applied, .delete)
        case .reset, .destroy:
            state.content = [:]
            state.loggedSkips = []
            return (.applied, .reset)
        }
    }

    private static func skipLocked(_ key: String, bytes: Int, _ state: inout State) -> Skip {
        state.skippedValues += 1
        // Bounded: past 10,000 poisoned keys, each further refusal is logged again.
        let firstTime = state.loggedSkips.count >= 10_000 || state.loggedSkips.insert(key).inserted
        return Skip(key: key, bytes: bytes, firstTime: firstTime)
    }

    /// Logs (once per key) and counts values refused for their size.
    private func report(_ skips: [Skip]) {
        guard !skips.isEmpty else { return }
        Counter(label: "rota_map_values_skipped", dimensions: [("map", name)]).increment(by: skips.count)
        for skip in skips where skip.firstTime {
            logger.warning(
                "skipping a map value over the size limit",
                metadata: ["key": "\(skip.key)", "bytes": "\(skip.bytes)", "limit": "\(options.maxValueBytes ?? 0)"])
        }
    }

    /// Values refused for their size (``Options/maxValueBytes``) since the map started.
    public var skippedValueCount: Int { state.withLock { $0.skippedValues } }

    private func releaseWaiters(_ state: inout State) -> [CheckedContinuation<Void, any Error>] {
        var released: [CheckedContinuation<Void, any Error>] = []
        for (id, waiter) in state.revisionWaiters where waiter.target <= state.revision {
            released.append(waiter.continuation)
            state.revisionWaiters.removeValue(forKey: id)
        }
        return released
    }

    /// Replaces the local content with the hash, retrying with back-off until it succeeds.
    private func resync() async throws {
        var attempt = 0
        while true {
            try Task.checkCancellation()
            do {
                let reply = try await client.send("HGETALL", contentKey)
                install(snapshot: reply)
                return
            } catch let error as RedisError where error.code == .authenticationFailed {
                throw error
            } catch {
                if Task.isCancelled { throw CancellationError() }
                attempt += 1
                logger.info("map resync failed; retrying", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                try await Task.sleep(for: .milliseconds(min(1000, 25 << min(attempt, 6)) + Int.random(in: 0...50)))
            }
        }
    }

    private func install(snapshot reply: RedisValue) {
        var content: [String: [UInt8]] = [:]
        var revision: Int64 = 0
        var clearedAt: Int64 = 0
        var oversized: [(key: String, bytes: Int)] = []
        let limit = options.maxValueBytes ?? Int.max
        let items = reply.array ?? []
        var index = 0
        while index + 1 < items.count {
            let field = items[index].string ?? ""
            let value = items[index + 1].bytes ?? []
            switch field {
            case "=rev": revision = Int64(String(decoding: value, as: UTF8.self)) ?? 0
            case "=kind": break  // tombstone marker; `=cleared` carries what a resync needs
            case "=cleared": clearedAt = Int64(String(decoding: value, as: UTF8.self)) ?? 0
            default:
                if value.count > limit {
                    oversized.append((field, value.count))
                } else {
                    content[field] = value
                }
            }
            index += 2
        }
        let maxValueBytes = options.maxValueBytes
        let (subscribers, kind, readyWaiters, released, stillBehind, skips) = state.withLock { state in
            var skips = oversized.map { Self.skipLocked($0.key, bytes: $0.bytes, &state) }
            // Keys that hold a value we keep are logged again if they are poisoned later.
            if !state.loggedSkips.isEmpty { state.loggedSkips = state.loggedSkips.filter { content[$0] == nil } }
            let wasReady = state.ready
            let old = state.content
            let oldRevision = state.revision
            state.content = content
            state.revision = revision
            state.ready = true
            state.resyncing = false
            // Messages that arrived while the snapshot was loading: apply those newer than it.
            var replayed: MapChange?
            var stillBehind = false
            let buffered = state.buffered.sorted { $0.revision < $1.revision }
            state.buffered = []
            for (index, message) in buffered.enumerated() {
                var skip: Skip?
                let (outcome, change) = Self.applyLocked(message, &state, limit: maxValueBytes, skip: &skip)
                if let skip { skips.append(skip) }
                if outcome == .gap {
                    state.resyncing = true
                    state.buffered = Array(buffered[index...])
                    stillBehind = true
                    break
                }
                if let change { replayed = max(replayed ?? change, change) }
            }
            let readyWaiters = state.readyWaiters
            state.readyWaiters = []
            var kind: MapChange?
            if wasReady && revision != oldRevision || replayed != nil {
                if revision < oldRevision || clearedAt > oldRevision {
                    // Cleared since we last looked (or the hash was deleted or expired under us).
                    kind = .reset
                } else {
                    kind = .change  // upgraded to .delete below if keys vanished
                }
                if old.keys.contains(where: { content[$0] == nil }), let current = kind, current < .delete { kind = .delete }
                if let replayed { kind = max(kind ?? replayed, replayed) }
            }
            if !wasReady { kind = nil }
            let subscribers = kind == nil ? [] : Array(state.subscribers.values)
            return (subscribers, kind, readyWaiters, releaseWaiters(&state), stillBehind, skips)
        }
        report(skips)
        if stillBehind { resyncSignal.continuation.yield() }
        if !readyWaiters.isEmpty { logger.debug("map joined", metadata: ["revision": "\(revision)", "keys": "\(content.count)"]) }
        for waiter in readyWaiters { waiter.resume() }
        if let kind { for subscriber in subscribers { subscriber.post(kind) } }
        for waiter in released { waiter.resume() }
    }

    // MARK: Local reads

    /// The value of `key` in the local copy (an empty value is a real value).
    public func get(_ key: String) -> [UInt8]? { state.withLock { $0.content[key] } }

    /// The value of `key` as UTF-8 text.
    public func string(_ key: String) -> String? { get(key).map { String(decoding: $0, as: UTF8.self) } }

    /// The value of `key` read as a list: a JSON array of strings, or (legacy) comma-separated.
    public func values(_ key: String) -> [String]? { get(key).map(Self.decodeList) }

    public var keys: [String] { state.withLock { Array($0.content.keys) } }
    public var snapshot: [String: [UInt8]] { state.withLock { $0.content } }
    public var count: Int { state.withLock { $0.content.count } }
    /// The revision of the local copy.
    public var revision: Int64 { state.withLock { $0.revision } }

    static func decodeList(_ bytes: [UInt8]) -> [String] {
        let text = String(decoding: bytes, as: UTF8.self)
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.hasPrefix("["), let list = try? JSONDecoder().decode([String].self, from: Data(trimmed.utf8)) {
            return list
        }
        return text.split(separator: ",", omittingEmptySubsequences: true).map(String.init)
    }

    // MARK: Change notifications

    /// Change notifications, coalesced: while the consumer is busy, pending notifications merge into
    /// the strongest kind (reset > delete > change), so a reset is never masked by a later change.
    /// The sequence ends when the map closes.
    public func changes() -> AsyncStream<MapChange> {
        let (stream, continuation) = AsyncStream.makeStream(of: MapChange.self, bufferingPolicy: .bufferingNewest(1))
        let registered = state.withLock { state -> UInt64? in
            guard !state.closed else { return nil }
            state.nextID += 1
            state.subscribers[state.nextID] = continuation
            return state.nextID
        }
        guard let id = registered else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    // MARK: Writes

    private func execute(_ script: RedisScript, key: String, _ arguments: [any RedisArgument], allowClosed: Bool = false) async throws -> RedisValue {
        if !allowClosed && isClosed { throw ReplicatedMapError(.closed, "map \(name) is closed") }
        do {
            let reply = try await client.evaluate(script, keys: [contentKey, channel], arguments: arguments)
            if let ttl = options.ttl {
                let seconds = max(1, Int(ttl.duration.components.seconds))
                if ttl.sliding {
                    try await client.send("EXPIRE", contentKey, seconds)
                } else {
                    try await client.send("EXPIRE", contentKey, seconds, "NX")
                }
            }
            return reply
        } catch let error as RedisError {
            throw ReplicatedMapError(.redis, "\(name): \(key): \(error.message)", underlying: error)
        }
    }

    private func pair(_ reply: RedisValue) -> (existed: Bool, value: [UInt8]?) {
        let items = reply.array ?? []
        let existed = items.first?.int == 1
        return (existed, existed ? (items.count > 1 ? items[1].bytes ?? [] : []) : nil)
    }

    /// Sets `key`; returns the previous value (nil if there was none).
    @discardableResult
    public func set(_ key: String, _ value: some RedisArgument) async throws -> [UInt8]? {
        try await setReturningRevision(key, value).previous
    }

    private func setReturningRevision(_ key: String, _ value: some RedisArgument) async throws -> (previous: [UInt8]?, revision: Int64) {
        try Self.validate(key: key)
        let reply = try await execute(MapScripts.set, key: key, [key, value])
        let items = reply.array ?? []
        let revision = items.count > 2 ? Int64(items[2].int ?? 0) : 0
        return (pair(reply).value, revision)
    }

    /// Sets `key` and returns once the local copy reflects this write (read-your-write).
    @discardableResult
    public func setAndWait(_ key: String, _ value: some RedisArgument) async throws -> [UInt8]? {
        try Task.checkCancellation()
        let (previous, revision) = try await setReturningRevision(key, value)
        try await wait(forRevision: revision)
        return previous
    }

    /// Returns once the local revision reaches `target`.
    public func wait(forRevision target: Int64) async throws {
        let id = state.withLock { state -> UInt64 in
            state.nextID += 1
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let immediate: Result<Void, any Error>? = state.withLock { state in
                    if state.revision >= target { return .success(()) }
                    if state.closed { return .failure(ReplicatedMapError(.closed, "map \(name) is closed")) }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    state.revisionWaiters[id] = (target, continuation)
                    return nil
                }
                if let immediate { continuation.resume(with: immediate) }
            }
        } onCancel: {
            let waiter = state.withLock { $0.revisionWaiters.removeValue(forKey: id) }
            waiter?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Sets `key` only if it is absent; returns true if it wrote.
    public func setIfAbsent(_ key: String, _ value: some RedisArgument) async throws -> Bool {
        try Self.validate(key: key)
        return try await execute(MapScripts.setIfAbsent, key: key, [key, value]).int == 1
    }

    /// Sets `key` to `value` only if it currently holds `test` (a missing key never matches).
    /// Returns the previous value and whether the write happened.
    @discardableResult
    public func testAndSet(_ key: String, test: some RedisArgument, _ value: some RedisArgument) async throws -> (previous: [UInt8]?, updated: Bool) {
        try Self.validate(key: key)
        let reply = try await execute(MapScripts.testAndSet, key: key, [key, test, value])
        let items = reply.array ?? []
        return (pair(reply).value, items.count > 2 && items[2].int == 1)
    }

    /// Adds `delta` to the integer at `key` (missing counts as 0); returns the new value.
    @discardableResult
    public func increment(_ key: String, by delta: Int64 = 1) async throws -> Int64 {
        try Self.validate(key: key)
        let reply = try await execute(MapScripts.increment, key: key, [key, delta])
        guard let value = reply.string.flatMap(Int64.init) else {
            throw ReplicatedMapError(.redis, "\(name): \(key): unexpected increment reply \(reply)")
        }
        return value
    }

    /// Appends items to the list at `key` (duplicates kept); returns the whole list.
    @discardableResult
    public func append(_ key: String, _ items: [String]) async throws -> [String] {
        try await append(key, items, unique: false)
    }

    /// Appends the items not already in the list at `key`; writes nothing if none is new.
    @discardableResult
    public func appendUnique(_ key: String, _ items: [String]) async throws -> [String] {
        try await append(key, items, unique: true)
    }

    private func append(_ key: String, _ items: [String], unique: Bool) async throws -> [String] {
        try Self.validate(key: key)
        let reply = try await execute(MapScripts.append, key: key, [key, unique ? "1" : "0"] + items)
        let encoded = (reply.array ?? []).dropFirst().first?.bytes ?? []
        return encoded.isEmpty ? [] : Self.decodeList(encoded)
    }

    /// Removes every occurrence of the items from the list at `key`, deleting the key when the list
    /// becomes empty. Returns the remaining list (nil if none) and whether anything was removed.
    @discardableResult
    public func removeValues(_ key: String, _ items: [String]) async throws -> (remaining: [String]?, removed: Bool) {
        try Self.validate(key: key)
        let reply = try await execute(MapScripts.removeValues, key: key, [key] + items)
        let parts = reply.array ?? []
        let removed = parts.first?.int == 1
        let existed = parts.count > 1 && parts[1].int == 1
        let encoded = parts.count > 2 ? parts[2].bytes ?? [] : []
        return (existed && !encoded.isEmpty ? Self.decodeList(encoded) : nil, removed)
    }

    /// Deletes `key`; returns its previous value (nil if it was absent — then nothing is written).
    @discardableResult
    public func delete(_ key: String) async throws -> [UInt8]? {
        try Self.validate(key: key)
        return pair(try await execute(MapScripts.delete, key: key, [key])).value
    }

    /// Deletes `key` only if it holds `test`; returns the previous value and whether it deleted.
    @discardableResult
    public func testAndDelete(_ key: String, test: some RedisArgument) async throws -> (previous: [UInt8]?, deleted: Bool) {
        try Self.validate(key: key)
        let reply = try await execute(MapScripts.testAndDelete, key: key, [key, test])
        let items = reply.array ?? []
        return (pair(reply).value, items.count > 2 && items[2].int == 1)
    }

    /// Clears the map. Works after ``close()`` too (shutdown clears maps it no longer follows).
    public func reset() async throws {
        _ = try await execute(MapScripts.clear, key: "*", ["reset"], allowClosed: true)
    }

    /// Clears the map only if every key holds its test value (a missing key never matches; no keys: always).
    @discardableResult
    public func testAndReset(keys: [String], tests: [String]) async throws -> Bool {
        guard keys.count == tests.count else {
            throw ReplicatedMapError(.invalidArgument, "testAndReset: \(keys.count) keys but \(tests.count) test values")
        }
        for key in keys { try Self.validate(key: key) }
        return try await execute(MapScripts.testAndReset, key: "*", [keys.count] + keys + tests).int == 1
    }

    /// Clears the map and leaves a tombstone (`=rev`, `=kind=destroy`) so revisions keep counting if
    /// the map is used again. Works after ``close()`` too.
    public func destroy() async throws {
        _ = try await execute(MapScripts.clear, key: "*", ["destroy"], allowClosed: true)
    }
}

extension AsyncStream<MapChange>.Continuation {
    /// Yields `kind`, merging it with a notification still waiting in the one-slot buffer so the
    /// stronger of the two survives.
    func post(_ kind: MapChange) {
        if case .dropped(let older) = yield(kind), older > kind {
            yield(older)
        }
    }
}
