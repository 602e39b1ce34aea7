import Foundation
import Logging
import Metrics
import RotaMap
import RotaRedis
import RotaStreams
import ServiceLifecycle
import Synchronization

/// A process's membership in a pool: it dispatches, stops and notifies jobs and — unless it is
/// client-only — routes the pool's events and hosts workers.
///
/// The initializer does no I/O. ``run()`` joins the pool and runs the node's background duties
/// until ``close()`` or ``shutdown()`` completes (or graceful shutdown, which closes the node);
/// ``waitUntilReady()`` returns once the node has joined. ``withNode(pool:client:options:_:)``
/// does both for scoped use. Cancelling ``run()`` stops everything at once without leaving the
/// pool — to peers it looks like a crash, and they recover the node's jobs.
public final class Node: Service, Sendable {
    /// Unique per node and per run.
    public let id: String
    public let pool: String
    public let options: Options

    /// The pool's Redis client (shared with the layers above: the history follows the pool's streams with it).
    public let client: RedisClient
    let keySpace: RedisKeySpace
    let logger: Logger
    let maps: PoolMaps
    let poolStream: RedisStream
    let inbox: RedisStream
    let inboxReader: StreamReader
    let sink: StreamSink?
    let loops = LoopGroup()
    let readyLatch = Latch()
    let closedLatch = Latch()
    /// Dispatch results by pool event ID.
    let results = Rendezvous<DispatchReply>()
    /// Stop outcomes by pool event ID (``stopAndWait(key:origin:)``).
    let stopResults = Rendezvous<StopResultRecord>()
    let rebalanceLock = AsyncLock()
    let rebalanceRequests: (stream: AsyncStream<Void>, continuation: AsyncStream<Void>.Continuation)
    let spawner: (stream: AsyncStream<@Sendable () async -> Void>, continuation: AsyncStream<@Sendable () async -> Void>.Continuation)
    let state = Mutex(NodeState())

    /// Events older than this are acknowledged and dropped when routed.
    static let maxEventAge: Duration = .seconds(120)

    /// Validates the pool name and options; does no I/O.
    ///
    /// - Parameters:
    ///   - pool: 1–128 characters, none of `{ } * ? [ ]`, space or `:`.
    ///   - client: must be running (it is usually a service of the same group).
    public init(pool: String, client: RedisClient, options: Options = Options()) throws(PoolError) {
        do {
            keySpace = try RedisKeySpace(pool)
        } catch {
            throw PoolError(.invalidArgument, "invalid pool name: \(error.message)", underlying: error)
        }
        guard options.workerTTL > .zero, options.ackGracePeriod > .zero, options.jobSinkBlockDuration > .zero,
              options.workerShutdownTTL > .zero, options.maxQueuedJobs >= 0,
              options.maxStartFailures >= 1
        else {
            throw PoolError(.invalidArgument, "pool options: durations must be positive, maxQueuedJobs not negative and maxStartFailures at least 1")
        }
        self.id = newIdentifier()
        self.pool = pool
        self.options = options
        self.client = client
        var logger = options.logger
        logger[metadataKey: "pool"] = "\(pool)"
        logger[metadataKey: "node"] = "\(id)"
        self.logger = logger
        do {
            maps = try PoolMaps(keySpace: keySpace, client: client, maxPayloadBytes: options.maxPayloadBytes, logger: logger)
            // Queues are never capped by length (a cap trims events nobody has read yet): they are
            // trimmed up to what their consumers have processed.
            poolStream = try RedisStream(name: "pool", keySpace: keySpace, client: client, options: .init(maxLength: 0))
            inbox = try RedisStream(name: Self.inboxName(ofNode: id), keySpace: keySpace, client: client, options: .init(maxLength: 0))
            inboxReader = try StreamReader(
                stream: inbox,
                options: .init(blockDuration: options.jobSinkBlockDuration, start: .oldest),
                logger: logger
            )
            if options.clientOnly {
                sink = nil
            } else {
                // Start at the oldest entry, not `$`: dispatches made before the first routing node
                // created the group must still be delivered.
                sink = try StreamSink(
                    name: "events",
                    stream: poolStream,
                    options: .init(blockDuration: options.jobSinkBlockDuration, start: .oldest, ackGracePeriod: options.ackGracePeriod),
                    logger: logger
                )
            }
        } catch let error as ReplicatedMapError {
            throw PoolError(.invalidArgument, error.message, underlying: error)
        } catch let error as RedisError {
            throw PoolError(.invalidArgument, error.message, underlying: error)
        } catch {
            throw PoolError(.invalidArgument, "\(error)", underlying: error)
        }
        rebalanceRequests = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        spawner = AsyncStream.makeStream(of: (@Sendable () async -> Void).self)
    }

    /// Runs a node for the duration of `body` (which starts once the node joined the pool), then
    /// closes it.
    public static func withNode<R: Sendable>(
        pool: String,
        client: RedisClient,
        options: Options = Options(),
        _ body: @Sendable (Node) async throws -> R
    ) async throws -> R {
        let node = try Node(pool: pool, client: client, options: options)
        return try await withThrowingTaskGroup(of: Void.self, returning: R.self) { group in
            group.addTask { try await node.run() }
            do {
                try await node.waitUntilReady()
                let result = try await body(node)
                try await node.close()
                try await group.waitForAll()
                return result
            } catch {
                try? await node.close()
                group.cancelAll()
                throw error
            }
        }
    }

    /// Node ID → name: a plain hash (nothing replicates it), for `rota status`.
    var namesKey: String { keySpace.key("node-names") }
    /// Worker ID → ID of its node: a plain hash, for `rota status`.
    var workerNodesKey: String { keySpace.key("worker-nodes") }

    static func inboxName(ofNode node: String) -> String { "node-\(node)" }
    static func inboxName(ofWorker worker: String) -> String { "worker-\(worker)" }

    /// `XADD key NOMKSTREAM * n name p payload [t topic]`, the entry layout of ``RedisStream``,
    /// for pipelined appends to inboxes that must not be re-created by a late writer.
    func appendCommand(to key: String, name: String, payload: [UInt8], topic: String? = nil) -> RedisCommand {
        var arguments: [any RedisArgument] = ["XADD", key, "NOMKSTREAM", "*", "n", name, "p", payload]
        if let topic { arguments += ["t", topic] }
        return RedisCommand(arguments: arguments)
    }

    /// Another node's or worker's inbox, for appending (with NOMKSTREAM) only.
    func nodeInbox(_ node: String) throws -> RedisStream {
        try RedisStream(name: Self.inboxName(ofNode: node), keySpace: keySpace, client: client, options: .init(maxLength: 0))
    }

    func workerInbox(_ worker: String) throws -> RedisStream {
        try RedisStream(name: Self.inboxName(ofWorker: worker), keySpace: keySpace, client: client, options: .init(maxLength: 0))
    }

    // MARK: Lifecycle

    /// Joins the pool and serves until the node is closed or shut down. Throws if joining fails
    /// (for example ``PoolError/Code/shuttingDown``). Call once.
    public func run() async throws {
        let start = state.withLock { state -> Bool in
            guard state.phase == .created else { return false }
            state.phase = .joining
            return true
        }
        guard start else { throw PoolError(.invalidArgument, "Node.run() may only be called once") }
        defer {
            // A crash (cancellation) or a failed join: whatever waits must not wait forever.
            let error = PoolError(.closed, "node \(id) stopped")
            readyLatch.open(.failure(error))
            results.fail(with: error)
            stopResults.fail(with: error)
            state.withLock { state in
                if state.phase != .closed { state.phase = .closed }
            }
            spawner.continuation.finish()
            closedLatch.open()
        }
        try await withThrowingDiscardingTaskGroup { group in
            // A failing child cancels the group's children, not this task: ending the spawner is
            // what lets the loop below (and so run()) end.
            for map in maps.joined(clientOnly: options.clientOnly) {
                group.addTask {
                    do {
                        try await map.run()
                    } catch {
                        // The root cause (e.g. NOPERM, a wrong password) is what waiters must see,
                        // not the "closed" of the maps cancelled because of it.
                        self.readyLatch.open(.failure(PoolError(.redis, "joining pool \(self.pool): map \(map.name): \(error)", underlying: error)))
                        self.spawner.continuation.finish()
                        throw error
                    }
                }
            }
            group.addTask {
                do {
                    try await self.join()
                } catch {
                    self.readyLatch.open(.failure(error))
                    self.spawner.continuation.finish()
                    throw error
                }
                await self.loops.run(self.nodeLoops() + [{ await self.becomeReady() }])
            }
            group.addTask {
                // Graceful shutdown of the service group closes the node: its jobs move to others.
                try? await gracefulShutdown()
                if !Task.isCancelled { try? await self.close() }
            }
            for await task in spawner.stream {
                group.addTask { await task() }
            }
            group.cancelAll()
        }
    }

    /// Returns once the node has joined the pool; throws if joining failed.
    public func waitUntilReady() async throws {
        try await readyLatch.wait()
    }

    /// Runs `task` as a child of ``run()``'s task group; false if the node is no longer running.
    @discardableResult
    func spawn(_ task: @escaping @Sendable () async -> Void) -> Bool {
        if case .enqueued = spawner.continuation.yield(task) { return true }
        return false
    }

    private func join() async throws {
        let joined = maps.joined(clientOnly: options.clientOnly)
        for map in joined { try await map.waitUntilReady() }
        if let requester = maps.shutdown.string("shutdown") {
            throw PoolError(.shuttingDown, "pool \(pool) is shutting down (requested by node \(requester))")
        }
        do {
            try await maps.nodeKeepAlive.set(id, String(nowNanos()))
            try await client.send("HSET", namesKey, id, options.name)
            // The owner creates its inbox; everyone else appends with NOMKSTREAM, so a late writer
            // never resurrects the inbox of a node that is gone.
            try await inbox.add(name: "i", payload: Array(id.utf8))
        } catch {
            throw PoolError(.redis, "joining pool \(pool): \(error)", underlying: error)
        }
    }

    /// Runs beside the node's loops: the node is ready once its inbox reader and pool sink are.
    private func becomeReady() async {
        do {
            try await inboxReader.ready()
            try await sink?.ready()
        } catch {
            readyLatch.open(.failure(PoolError(.redis, "joining pool \(pool): \(error)", underlying: error)))
            return
        }
        state.withLock { state in
            if state.phase == .joining { state.phase = .running }
        }
        readyLatch.open()
        logger.debug("node joined", metadata: ["clientOnly": "\(options.clientOnly)"])
    }

    /// True from the moment the node joined the pool (``waitUntilReady()`` returned) until it
    /// starts closing: what a readiness probe asks without waiting.
    public var isRunning: Bool { state.withLock { $0.phase == .running } }

    /// Closed means the node no longer dispatches, routes or hosts workers.
    public var isClosed: Bool { state.withLock { $0.phase >= .closing } }

    /// True once this node took part in a pool shutdown.
    public var isShutdown: Bool { state.withLock { $0.shutdown } }

    func checkOpen() throws(PoolError) {
        let phase = state.withLock { $0.phase }
        switch phase {
        case .running: return
        case .created, .joining: throw PoolError(.notRunning, "node \(id) has not joined pool \(pool) yet")
        case .closing, .closed: throw PoolError(.closed, "node \(id) of pool \(pool) is closed")
        }
    }

    /// Leaves the pool: stops this node's workers and hands their jobs to workers on other nodes;
    /// the rest of the pool keeps running. Safe to call twice, and on client-only nodes.
    public func close() async throws {
        let proceed = state.withLock { state -> Bool in
            switch state.phase {
            case .created:
                state.phase = .closed
                return false
            case .joining, .running:
                state.phase = .closing
                return true
            case .closing, .closed:
                return false
            }
        }
        guard proceed else {
            if state.withLock({ $0.phase }) == .closed && !closedLatch.isOpen {
                closedLatch.open()
                spawner.continuation.finish()
            }
            await closedLatch.settle()
            return
        }
        logger.debug("closing node")
        let workers = localWorkers
        // Stop the workers and then the node's loops first, so nothing new reaches workers whose
        // jobs are being handed over.
        await withDiscardingTaskGroup { group in
            for worker in workers { group.addTask { await worker.stopLoops() } }
        }
        await loops.stop()
        await withDiscardingTaskGroup { group in
            for worker in workers {
                group.addTask {
                    await self.requeueJobs(of: worker, reason: "worker-closing")
                    await worker.finishJobs()
                    await self.removeFromMaps(worker)
                }
            }
        }
        await finishClosing(shutdown: false)
    }

    /// The last steps of close and shutdown: leave the maps, drop the inbox, let ``run()`` return.
    func finishClosing(shutdown: Bool) async {
        state.withLock { $0.workers = [:] }
        for map in maps.all { map.close() }
        // Tickers wait for their next tick or a wake-up: they must see the closed map now.
        for ticker in state.withLock({ Array($0.tickers.values) }) { ticker.wake.fire() }
        do {
            try await client.send("DEL", inbox.key)
            try await client.send("HDEL", namesKey, id)
        } catch {
            logger.warning("could not delete the node inbox", metadata: ["error": "\(error)"])
        }
        let closed = PoolError(.closed, "node \(id) of pool \(pool) closed")
        results.fail(with: closed)
        stopResults.fail(with: closed)
        state.withLock { state in
            state.phase = .closed
            if shutdown { state.shutdown = true }
        }
        spawner.continuation.finish()
        closedLatch.open()
        logger.debug("node closed", metadata: ["shutdown": "\(shutdown)"])
    }

    /// Stops the whole pool: every node stops all its jobs and leaves, and the pool's Redis state
    /// is removed (map tombstones aside), so the name can be used again. Returns once this node is
    /// done and the other nodes' workers are gone (or after the worker shutdown TTL).
    /// Not available on client-only nodes; a no-op on a node that is already closing.
    public func shutdown() async throws {
        guard !options.clientOnly else {
            throw PoolError(.clientOnly, "node \(id) is client-only: only routing nodes can shut the pool down")
        }
        let phase = state.withLock { $0.phase }
        switch phase {
        case .closing, .closed: return
        case .created, .joining: throw PoolError(.notRunning, "node \(id) has not joined pool \(pool) yet")
        case .running: break
        }
        do {
            _ = try await maps.shutdown.set("shutdown", id)
        } catch {
            throw PoolError(.redis, "could not request the shutdown of pool \(pool)", underlying: error)
        }
        // Our own watcher reacts like every other node's; start it right away anyway.
        spawn { await self.handlePoolShutdown() }
        await closedLatch.settle()
        await waitForOtherWorkers()
        await destroyPoolState()
    }

    /// Shutdown handling, on every node: stop every local job for good, then leave.
    func handlePoolShutdown() async {
        let proceed = state.withLock { state -> Bool in
            guard state.phase == .running || state.phase == .joining else { return false }
            state.phase = .closing
            return true
        }
        guard proceed else { return }
        logger.info("pool is shutting down; stopping every local job")
        let workers = localWorkers
        await withDiscardingTaskGroup { group in
            for worker in workers {
                group.addTask {
                    await worker.stopLoops()
                    await worker.stopAllJobs()
                    await worker.finishJobs()
                }
            }
        }
        await loops.stop()
        await withDiscardingTaskGroup { group in
            for worker in workers { group.addTask { await self.removeFromMaps(worker) } }
        }
        await finishClosing(shutdown: true)
    }

    /// Waits (up to the worker shutdown TTL) until no live worker of another node is registered.
    private func waitForOtherWorkers() async {
        let deadline = ContinuousClock.now + options.workerShutdownTTL
        while ContinuousClock.now < deadline {
            do {
                let registry = try await hashContent(maps.workers.contentKey)
                let keepAlives = try await hashContent(maps.workerKeepAlive.contentKey)
                let now = nowNanos()
                let live = registry.keys.filter { worker in
                    guard let seen = keepAlives[worker].flatMap(timestampNanos) else { return false }
                    return now - seen <= options.workerTTL.nanoseconds
                }
                if live.isEmpty { return }
            } catch {
                logger.warning("shutdown: reading the worker registry failed", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: min(.milliseconds(50), options.workerTTL / 4))
        }
        logger.warning("shutdown: other nodes' workers did not leave within the worker shutdown TTL")
    }

    private func destroyPoolState() async {
        for map in maps.all {
            do {
                try await map.destroy()
            } catch {
                logger.error("shutdown: destroying map \(map.name) failed", metadata: ["error": "\(error)"])
            }
        }
        // Schedules' bookkeeping maps: their names depend on the producers, so they are found by
        // pattern (one slot: the scan stays within the pool's hash tag on a cluster too).
        do {
            var cursor = "0"
            repeat {
                let reply = try await client.send("SCAN", cursor, "MATCH", keySpace.key("map", "schedule-*"), "COUNT", 1000).array ?? []
                cursor = reply.first?.string ?? "0"
                for key in reply.count > 1 ? reply[1].array ?? [] : [] {
                    guard let key = key.string, let name = key.split(separator: ":").last.map(String.init) else { continue }
                    try await ReplicatedMap(name, keySpace: keySpace, client: client, logger: logger).destroy()
                }
            } while cursor != "0"
        } catch {
            logger.error("shutdown: destroying schedule maps failed", metadata: ["error": "\(error)"])
        }
        do {
            // Tombstones of ended jobs expire by themselves; a new pool of this name starts clean.
            var cursor = "0"
            repeat {
                let reply = try await client.send("SCAN", cursor, "MATCH", keySpace.key("ended", "*"), "COUNT", 1000).array ?? []
                cursor = reply.first?.string ?? "0"
                if reply.count > 1, let keys = reply[1].array?.compactMap(\.string), !keys.isEmpty {
                    _ = try await client.send(RedisCommand(arguments: ["DEL"] + keys))
                }
            } while cursor != "0"
        } catch {
            logger.error("shutdown: deleting tombstones failed", metadata: ["error": "\(error)"])
        }
        do {
            try await poolStream.destroy()
            // The job log stays: it is history (capped), not state, and its readers may be behind.
            try await client.send(
                "DEL", keySpace.key("sink", "events", "keepalive"), keySpace.key("sink", "events", "lease"), namesKey, workerNodesKey,
                startFailuresKey
            )
        } catch {
            logger.error("shutdown: deleting the pool stream failed", metadata: ["error": "\(error)"])
        }
        logger.info("pool shut down")
    }

    // MARK: Workers

    /// Adds a worker that runs jobs with `handler`. It takes jobs as soon as this returns (and the
    /// jobs whose hash now points at it move over from other workers).
    ///
    /// `capabilities` (each 1–64 characters of `A-Z a-z 0-9 - _ . :`) say which jobs with a
    /// requirement it can run (``dispatch(key:payload:requirement:origin:)``); jobs without one
    /// run on any worker. Jobs of one requirement are spread over the workers that have it, so a
    /// worker joining moves only jobs it can run, and held (unplaced) jobs it can run start.
    public func addWorker(_ handler: any JobHandler, capabilities: Set<String> = []) async throws -> Worker {
        try await addWorker(executor: .handler(handler), capabilities: capabilities)
    }

    /// Adds a worker whose jobs are child tasks of it: a job lasts as long as `runner.run` does, a
    /// stop cancels just that task, and a job that ends by itself leaves the pool. Nothing the
    /// runner starts can outlive its worker, or the node.
    public func addWorker(_ runner: some JobRunner, capabilities: Set<String> = []) async throws -> Worker {
        try await addWorker(executor: .runner(runner), capabilities: capabilities)
    }

    func addWorker(executor: JobExecution, capabilities: Set<String>) async throws -> Worker {
        guard !options.clientOnly else {
            throw PoolError(.clientOnly, "node \(id) is client-only: it cannot host workers")
        }
        try checkOpen()
        for capability in capabilities.sorted() { try Capability.validate(capability, what: "worker capability") }
        let workerID = newIdentifier()
        let createdAt = nowNanos()
        let worker = try Worker(id: workerID, createdAtNanos: createdAt, execution: executor, node: self, capabilities: capabilities)
        do {
            try await worker.inbox.add(name: "i", payload: Envelope(sender: id, payload: Array(workerID.utf8)).encoded())
            try await client.send("HSET", workerNodesKey, workerID, id)
            // Keep-alive first: the registry entry is what peers react to, and a worker must be
            // active (alive) from the moment they see it.
            try await maps.workerKeepAlive.setAndWait(workerID, String(nowNanos()))
            // Before the registry entry: a peer that sees the worker knows what it can run.
            if !capabilities.isEmpty { try await maps.capabilities.setAndWait(workerID, Capability.encode(capabilities)) }
        } catch {
            throw PoolError(.redis, "adding a worker: \(error)", underlying: error)
        }
        let registered = state.withLock { state -> Bool in
            guard state.phase == .running else { return false }
            state.workers[workerID] = worker
            return true
        }
        guard registered, spawn({ await worker.run() }) else {
            _ = try? await maps.workerKeepAlive.delete(workerID)
            throw PoolError(.closed, "node \(id) of pool \(pool) is closed")
        }
        do {
            try await worker.reader.ready()
            try await maps.workers.setAndWait(workerID, String(createdAt))
            worker.markRegistered()
        } catch {
            await removeWorker(worker)
            throw PoolError(.redis, "adding a worker: \(error)", underlying: error)
        }
        logger.debug("worker added", metadata: ["worker": "\(workerID)"])
        return worker
    }

    /// Stops a worker, hands its jobs to the other workers and removes it from the pool.
    public func removeWorker(_ worker: Worker) async {
        guard state.withLock({ $0.workers[worker.id] }) != nil else { return }
        await worker.stopLoops()
        await requeueJobs(of: worker, reason: "worker-removed")
        await worker.finishJobs()
        await removeFromMaps(worker)
        state.withLock { _ = $0.workers.removeValue(forKey: worker.id) }
    }

    /// The jobs held unplaced (no active worker has what they require), with their requirement.
    public func unplacedJobs() async throws -> [String: String] {
        let content = options.clientOnly ? try await hashContent(maps.unplaced.contentKey) : maps.unplaced.snapshot
        return content.compactMapValues { value in
            let requirement = String(decoding: value, as: UTF8.self)
            return Capability.isValid(requirement) ? requirement : nil
        }
    }

    /// The capabilities of the pool's registered workers (those without any are listed empty).
    public func workerCapabilities() async throws -> [String: Set<String>] {
        let registry = options.clientOnly ? try await hashContent(maps.workers.contentKey) : maps.workers.snapshot
        let stored = options.clientOnly ? try await hashContent(maps.capabilities.contentKey) : maps.capabilities.snapshot
        var result: [String: Set<String>] = [:]
        for worker in registry.keys { result[worker] = stored[worker].map(Capability.decode) ?? [] }
        return result
    }

    /// The workers this node hosts.
    public var localWorkers: [Worker] {
        state.withLock { Array($0.workers.values) }.sorted { ($0.createdAtNanos, $0.id) < ($1.createdAtNanos, $1.id) }
    }

    func localWorker(_ id: String) -> Worker? { state.withLock { $0.workers[id] } }

    // MARK: Queries

    /// The keys of the jobs running in the pool (from the ownership registry).
    public func jobKeys() async throws -> [String] {
        if options.clientOnly {
            return try await hashContent(maps.owners.contentKey).keys.sorted()
        }
        return maps.owners.keys.sorted()
    }

    /// The worker that owns a job and the node that worker runs on (nil when the node did not
    /// record it), or nil when no worker owns the job. `rota explain` asks this for one job, so
    /// a client-only node reads two fields instead of the whole ownership registry.
    public func jobOwner(_ key: String) async throws -> (worker: String, node: String?)? {
        let worker: String?
        if options.clientOnly {
            worker = try await client.send("HGET", maps.owners.contentKey, key).bytes.map { String(decoding: $0, as: UTF8.self) }
        } else {
            worker = maps.owners.get(key).map { String(decoding: $0, as: UTF8.self) }
        }
        guard let worker, !worker.isEmpty else { return nil }
        let node = try await client.send("HGET", workerNodesKey, worker).bytes.map { String(decoding: $0, as: UTF8.self) }
        return (worker, node)
    }

    /// The payload of a running job: nil when the job does not exist, empty when it has none.
    /// A payload over ``Options/maxPayloadBytes`` reads as nil, as it does in the replicas.
    public func jobPayload(_ key: String) async throws -> [UInt8]? {
        if options.clientOnly {
            let reply = try await client.send("HGET", maps.payloads.contentKey, key)
            guard !reply.isNull else { return nil }
            let payload = reply.bytes ?? []
            guard payload.count <= options.maxPayloadBytes else {
                refusePayload(key: key, bytes: payload.count, source: "payloads")
                return nil
            }
            return payload
        }
        return maps.payloads.get(key)
    }

    /// Logs and counts a payload read from Redis and refused for its size (it never reaches a
    /// handler or a replica). Each source event is refused once, so this logs once per key and event.
    func refusePayload(key: String, bytes: Int, source: String) {
        Counter(label: "rota_payloads_refused", dimensions: [("source", source)]).increment()
        state.withLock { $0.refusedPayloads[source, default: 0] += 1 }
        logger.warning(
            "refusing a payload over the size limit read from Redis",
            metadata: ["job": "\(key)", "bytes": "\(bytes)", "limit": "\(options.maxPayloadBytes)", "source": "\(source)"])
    }

    /// Payloads refused by ``refusePayload(key:bytes:source:)`` so far, by source (a test seam).
    var refusedPayloadCounts: [String: Int] { state.withLock { $0.refusedPayloads } }

    /// Every worker registered in the pool, on any node (workers being retired are left out).
    public func poolWorkers() async throws -> [WorkerInfo] {
        let registry = options.clientOnly ? try await hashContent(maps.workers.contentKey) : maps.workers.snapshot
        return registry.compactMap { id, value -> WorkerInfo? in
            guard let nanos = timestampNanos(value) else { return nil }
            return WorkerInfo(id: id, createdAt: dateFromNanos(nanos))
        }.sorted { ($0.createdAt, $0.id) < ($1.createdAt, $1.id) }
    }

    func hashContent(_ key: String) async throws -> [String: [UInt8]] {
        let items = try await client.send("HGETALL", key).array ?? []
        var content: [String: [UInt8]] = [:]
        var index = 0
        while index + 1 < items.count {
            if let field = items[index].string, !field.hasPrefix("=") { content[field] = items[index + 1].bytes ?? [] }
            index += 2
        }
        return content
    }
}

/// The mutable part of a node, behind its `Mutex`.
struct NodeState {
    enum Phase: Int, Comparable {
        case created, joining, running, closing, closed
        static func < (lhs: Phase, rhs: Phase) -> Bool { lhs.rawValue < rhs.rawValue }
    }

    var phase = Phase.created
    var shutdown = false
    var workers: [String: Worker] = [:]
    /// Pool events forwarded to a worker inbox and not yet acknowledged by the worker.
    var routed: [RoutedKey: StreamEvent] = [:]
    var lastRoutedCollection = ContinuousClock.now
    /// Worker acks read before the forwarding task recorded the event (see ``Rendezvous``).
    var earlyAcks: [RoutedKey: (ack: AckRecord, at: ContinuousClock.Instant)] = [:]
    /// When each ownerless payload was first seen (orphan recovery).
    var orphansSeen: [String: ContinuousClock.Instant] = [:]
    /// Workers whose keep-alive in Redis was unreadable at a cleanup, since when (see
    /// ``Node/cleanUp(worker:keys:)``).
    var unreadableKeepAlives: [String: ContinuousClock.Instant] = [:]
    /// The last inbox event handled: the inbox is trimmed up to it.
    var lastInboxEvent: String?
    /// Payloads read from the pool stream, inboxes or Redis directly and refused for their size,
    /// by source.
    var refusedPayloads: [String: Int] = [:]
    /// When this node last saw Redis out of reach (a keep-alive failed or took over a second):
    /// for a TTL afterwards every keep-alive in Redis may be stale for that reason alone.
    var lastOutage: ContinuousClock.Instant?
    /// Tickers running on this node, woken by the ticker watcher.
    var tickers: [ObjectIdentifier: Ticker] = [:]
}

struct RoutedKey: Hashable {
    let worker: String
    let inboxEventID: String
}

/// The replicated maps of a pool.
struct PoolMaps: Sendable {
    let shutdown: ReplicatedMap
    let nodeKeepAlive: ReplicatedMap
    let workers: ReplicatedMap
    let workerKeepAlive: ReplicatedMap
    let cleanup: ReplicatedMap
    /// Job key → worker ID. One entry per job, so an ownership change costs O(1), whatever the
    /// number of jobs (the reference kept a JSON list per worker, rewritten on every change).
    let owners: ReplicatedMap
    let payloads: ReplicatedMap
    let pending: ReplicatedMap
    /// Ticker name → `<next tick, Unix µs>|<interval>`: the shared state of distributed tickers.
    let tickers: ReplicatedMap
    /// Worker ID → its capabilities (``Capability/encode(_:)``); no entry: none.
    let capabilities: ReplicatedMap
    /// Job key → the capability its worker must have, while the job exists (no entry: any worker).
    let requirements: ReplicatedMap
    /// Job key → its requirement, for jobs held because no active worker has it.
    let unplaced: ReplicatedMap

    /// Values over their limit are skipped by the replicas (see ``ReplicatedMap/Options/maxValueBytes``):
    /// payloads over `maxPayloadBytes`, and in the other maps, whose values are IDs, timestamps and
    /// ticker entries, anything over 64 KiB.
    init(keySpace: RedisKeySpace, client: RedisClient, maxPayloadBytes: Int, logger: Logger) throws {
        func map(_ name: String, maxValueBytes: Int = 64 << 10) throws -> ReplicatedMap {
            try ReplicatedMap(name, keySpace: keySpace, client: client, options: .init(maxValueBytes: maxValueBytes), logger: logger)
        }
        shutdown = try map("shutdown")
        nodeKeepAlive = try map("node-keepalive")
        workers = try map("workers")
        workerKeepAlive = try map("worker-keepalive")
        cleanup = try map("cleanup")
        owners = try map("owners")
        payloads = try map("job-payloads", maxValueBytes: maxPayloadBytes)
        pending = try map("pending-jobs")
        tickers = try map("tickers")
        capabilities = try map("worker-capabilities")
        requirements = try map("job-requirements")
        unplaced = try map("unplaced-jobs")
    }

    var all: [ReplicatedMap] {
        [shutdown, nodeKeepAlive, workers, workerKeepAlive, cleanup, owners, payloads, pending, tickers, capabilities, requirements, unplaced]
    }

    /// Client-only nodes replicate only what they need to join and to expire dead nodes.
    func joined(clientOnly: Bool) -> [ReplicatedMap] { clientOnly ? [shutdown, nodeKeepAlive] : all }
}

// MARK: Time and identifiers

func nowNanos() -> Int64 {
    var spec = timespec()
    clock_gettime(CLOCK_REALTIME, &spec)
    return Int64(spec.tv_sec) * 1_000_000_000 + Int64(spec.tv_nsec)
}

/// A Unix-nanosecond timestamp read from Redis, if it is one a pool could have written (2000 to
/// 2200): anything else is garbage, never arithmetic (`now - Int64.min` traps).
func timestampNanos(_ text: some StringProtocol) -> Int64? {
    guard text.utf8.count <= 20, let value = Int64(text), value >= 946_684_800_000_000_000, value <= 7_258_118_400_000_000_000 else {
        return nil
    }
    return value
}

func timestampNanos(_ bytes: [UInt8]) -> Int64? { timestampNanos(String(decoding: bytes, as: UTF8.self)) }

func dateFromNanos(_ nanos: Int64) -> Date {
    Date(timeIntervalSince1970: Double(nanos / 1_000_000_000) + Double(nanos % 1_000_000_000) / 1e9)
}

/// A unique, roughly time-ordered ID (milliseconds then randomness), usable in keys and names.
func newIdentifier() -> String {
    let millis = UInt64(nowNanos() / 1_000_000)
    let random = UInt64.random(in: 0...UInt64.max)
    let head = String(millis, radix: 36)
    let tail = String(random, radix: 36)
    return head + String(repeating: "0", count: max(0, 13 - tail.count)) + tail
}

extension Duration {
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
