import Foundation
import Logging
import Metrics
import RotaMap
import RotaRedis
import RotaStreams

/// Where a pool event goes.
enum RouteDecision: Equatable, Sendable {
    case worker(String)
    /// The job exists (its payload is in Redis) but no active worker owns it: a handoff or a
    /// recovery is under way. Leave the event unacknowledged so it comes back later.
    case awaitingOwner
    /// The job does not exist: acknowledge and drop (stopping an unknown job is a no-op).
    case notFound
    /// No active worker: leave unacknowledged.
    case noWorkers
    /// A start no active worker can take: none has the job's requirement. The job is held (see
    /// ``PoolScripts/park``) until one joins.
    case unplaced(requirement: String)
}

/// The active workers and their capabilities as one node sees them, read once per batch.
struct WorkerView: Sendable {
    /// In hash-bucket order (``Node/activeWorkers()``).
    let active: [String]
    let capabilities: [String: Set<String>]

    /// The active workers that can run a job requiring `requirement` (all of them for nil), in
    /// hash-bucket order: jobs of one requirement are hashed over their own workers only, so a
    /// worker joining moves only jobs it can run.
    func capable(of requirement: String?) -> [String] {
        guard let requirement else { return active }
        return active.filter { capabilities[$0]?.contains(requirement) == true }
    }

    /// The worker a job should run on; nil when none can.
    func target(for key: String, requirement: String?, hasher: any JobHasher) -> String? {
        let capable = capable(of: requirement)
        guard !capable.isEmpty else { return nil }
        return capable[hasher.bucket(for: key, buckets: capable.count)]
    }
}

/// What a dispatcher hears about its start event.
enum DispatchReply: Sendable, Equatable {
    /// From the worker: "" started, else the start's error text.
    case result(String)
    /// From the routing node: the job is held for a worker with this capability.
    case unplaced(String)
}

/// The outcome of the admission script.
enum Claim: Equatable, Sendable {
    case claimed(token: String)
    case exists
    case pending(until: String)
    case malformed(String)
    /// The pool holds ``Node/Options/maxJobs`` jobs (running or being dispatched) already.
    case full(jobs: String)
}

extension Node {
    // MARK: Dispatch, stop, notify

    /// Starts a job on one worker of the pool and returns once that worker's start handler ran.
    ///
    /// Admission is atomic in Redis: while the job runs, or while another dispatch of the same key
    /// is in progress (from any node), this throws ``PoolError/Code/jobExists``. A failing start
    /// handler's error text comes back as ``PoolError/Code/startFailed``; no start within twice the
    /// ack grace period throws ``PoolError/Code/timeout`` (the job may still start later).
    /// `origin` (who asked, and why) goes into the job log's `started` entry.
    ///
    /// With a `requirement`, only workers that list it among their capabilities run the job
    /// (``addWorker(_:capabilities:)``), wherever it moves later. When none is active the job is
    /// held in the pool and this returns ``DispatchOutcome/unplaced(requirement:)``: the job exists
    /// (a second dispatch throws ``PoolError/Code/jobExists``, a stop ends it) and starts once
    /// such a worker joins.
    @discardableResult
    public func dispatch(key: String, payload: [UInt8] = [], requirement: String? = nil, origin: JobOrigin? = nil) async throws -> DispatchOutcome {
        try checkOpen()
        try Self.validate(key: key)
        try checkPayload(payload, of: key)
        try origin?.validate()
        if let requirement { try Capability.validate(requirement, what: "job \(key): requirement") }
        let began = ContinuousClock.now
        defer { Metrics.Timer(label: "rota_dispatch_duration").recordNanoseconds((ContinuousClock.now - began).nanoseconds) }
        let record = JobRecord(
            key: key, dispatcher: id, payload: payload, createdAt: Date(), requeued: false, origin: origin, requirement: requirement)
        let (claim, eventID) = try await claimAndAppend(record)
        let token: String
        switch claim {
        case .claimed(let claimed): token = claimed
        case .exists: throw PoolError(.jobExists, "job \(key) already exists")
        case .pending(let until): throw PoolError(.jobExists, "job \(key) is already being dispatched (pending until \(until))")
        case .malformed(let value):
            throw PoolError(.malformedPendingGuard, "job \(key): malformed pending guard '\(value)' in \(maps.pending.contentKey); it is left untouched")
        case .full(let jobs):
            throw PoolError(
                .tooManyJobs, "job \(key): the pool has \(jobs) jobs, its limit is \(options.maxJobs) (Node.Options.maxJobs); the job was not started")
        }
        let outcome: Result<DispatchReply, any Error>
        do {
            guard let eventID else { throw PoolError(.redis, "dispatching \(key): the admission script returned no event ID") }
            outcome = .success(try await waitForResult(eventID, in: results, timeoutMessage: "job \(key) timed out: no worker started it"))
        } catch {
            outcome = .failure(error)
        }
        // A started job's guard was removed by the worker's start script. Otherwise give it back,
        // even when the caller is cancelled: it must not block the key for the whole guard
        // lifetime. Compare-and-delete: a newer dispatcher's guard stays.
        switch outcome {
        case .success(.result("")):
            return .started
        case .success(.unplaced(let requirement)):
            // Held: the hold removed the guard and stored the payload (the job exists now).
            return .unplaced(requirement: requirement)
        default:
            break
        }
        if Task.isCancelled {
            spawn { _ = try? await self.release(key, token: token) }
        } else {
            do {
                _ = try await release(key, token: token)
            } catch {
                logger.warning("could not release the pending guard", metadata: ["job": "\(key)", "error": "\(error)"])
            }
        }
        switch outcome {
        case .success(.result("")): return .started
        case .success(.result(let failure)): throw PoolError(.startFailed, failure)
        case .success(.unplaced(let requirement)): return .unplaced(requirement: requirement)
        case .failure(let error as PoolError): throw error
        case .failure(let error as CancellationError): throw error
        case .failure(let error): throw PoolError(.redis, "dispatching \(key): \(error)", underlying: error)
        }
    }

    /// The value delivered for pool event `eventID`, waiting at most twice the ack grace period.
    private func waitForResult<Value: Sendable>(_ eventID: String, in rendezvous: Rendezvous<Value>, timeoutMessage: String) async throws -> Value {
        let timeout = options.ackGracePeriod * 2
        return try await withThrowingTaskGroup(of: Value?.self) { group in
            group.addTask { try await rendezvous.wait(eventID) }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let result = first else {
                throw PoolError(.timeout, "\(timeoutMessage) within \(timeout)")
            }
            return result
        }
    }

    /// Asks the worker running `key` to stop it. Returns once the request is queued; stopping a job
    /// that does not exist is a no-op, and one that exists but no worker runs is ended. `origin`
    /// goes into the job log. ``stopAndWait(key:origin:)`` waits for the outcome.
    public func stop(key: String, origin: JobOrigin? = nil) async throws {
        try checkOpen()
        try origin?.validate()
        try await append("s", StopRecord(key: key, origin: origin).encoded(), what: "stopping \(key)")
    }

    /// Stops `key` and returns once the pool confirmed it: the owner's stop handler returned and
    /// the job is gone from Redis, or there was no such job, or it had no owner and was ended.
    /// A failing stop handler throws ``PoolError/Code/stopFailed`` (the job keeps running and
    /// stays owned); no outcome within twice the ack grace period throws
    /// ``PoolError/Code/timeout`` (the stop may still happen). Works from client-only nodes.
    public func stopAndWait(key: String, origin: JobOrigin? = nil) async throws -> StopOutcome {
        try checkOpen()
        try origin?.validate()
        let eventID = try await append("s", StopRecord(key: key, requester: id, origin: origin).encoded(), what: "stopping \(key)")
        guard let eventID else { throw PoolError(.redis, "stopping \(key): XADD returned no event ID") }
        let result = try await waitForResult(eventID, in: stopResults, timeoutMessage: "stopping job \(key) timed out: no worker confirmed it")
        switch result.outcome {
        case .stopped: return .stopped(worker: result.detail)
        case .notRunning: return .notRunning
        case .endedUnowned: return .endedUnowned
        case .failed: throw PoolError(.stopFailed, result.detail)
        }
    }

    /// Sends `payload` to the worker running `key` (to its ``NotificationHandler``). Returns once the
    /// notification is queued. `origin` is accepted for symmetry with dispatch and stop;
    /// notifications are not job transitions and are not logged.
    public func notify(key: String, payload: [UInt8], origin: JobOrigin? = nil) async throws {
        try checkOpen()
        try checkPayload(payload, of: key)
        try await append("n", NotificationRecord(key: key, payload: payload).encoded(), what: "notifying \(key)")
    }

    @discardableResult
    private func append(_ name: String, _ payload: [UInt8], what: String) async throws -> String? {
        do {
            return try await poolStream.add(name: name, payload: payload)
        } catch {
            throw PoolError(.redis, "\(what): \(error)", underlying: error)
        }
    }

    func checkPayload(_ payload: [UInt8], of key: String) throws(PoolError) {
        guard payload.count <= options.maxPayloadBytes else {
            throw PoolError(.payloadTooLarge, "job \(key): payload of \(payload.count) bytes exceeds the limit of \(options.maxPayloadBytes) bytes (Node.Options.maxPayloadBytes)")
        }
    }

    static func validate(key: String) throws(PoolError) {
        guard !key.isEmpty else { throw PoolError(.invalidArgument, "job keys must not be empty") }
        guard !key.contains("=") else { throw PoolError(.invalidArgument, "job key '\(key)' contains '=' (reserved)") }
    }

    /// Atomic admission in Redis (never the local replicas, which may be behind).
    func claim(_ key: String) async throws -> Claim {
        let now = nowNanos()
        let until = now + (options.ackGracePeriod * 2).nanoseconds
        let reply: RedisValue
        do {
            reply = try await client.evaluate(
                PoolScripts.claimDispatch,
                keys: [maps.payloads.contentKey, maps.pending.contentKey, maps.pending.channel],
                arguments: [key, String(now), String(until), options.maxJobs]
            )
        } catch {
            throw PoolError(.redis, "admitting \(key): \(error)", underlying: error)
        }
        return try Self.claim(from: reply, key: key)
    }

    /// `{code, value[, event ID]}` of the admission scripts.
    private static func claim(from reply: RedisValue, key: String) throws -> Claim {
        let items = reply.array ?? []
        let value = items.count > 1 ? items[1].string ?? "" : ""
        switch items.first?.int {
        case 1: return .claimed(token: value)
        case 2: return .pending(until: value)
        case 3: return .exists
        case 4: return .malformed(value)
        case 5: return .full(jobs: value)
        default: throw PoolError(.redis, "admitting \(key): unexpected reply \(reply)")
        }
    }

    /// Admission and the start event in one round trip (see ``PoolScripts/claimAndAppend``).
    func claimAndAppend(_ record: JobRecord) async throws -> (Claim, String?) {
        let now = nowNanos()
        let until = now + (options.ackGracePeriod * 2).nanoseconds
        let reply: RedisValue
        do {
            reply = try await client.evaluate(
                PoolScripts.claimAndAppend,
                keys: [maps.payloads.contentKey, maps.pending.contentKey, maps.pending.channel, poolStream.key],
                arguments: [record.key, String(now), String(until), 0, record.encoded(), options.maxJobs]
            )
        } catch {
            throw PoolError(.redis, "dispatching \(record.key): \(error)", underlying: error)
        }
        let claim = try Self.claim(from: reply, key: record.key)
        guard case .claimed = claim, let items = reply.array, items.count > 2 else { return (claim, nil) }
        return (claim, items[2].string)
    }

    /// Removes the pending guard of `key` if it still holds `token`.
    func release(_ key: String, token: String) async throws -> Bool {
        let reply = try await client.evaluate(
            PoolScripts.releaseDispatch,
            keys: [maps.pending.contentKey, maps.pending.channel],
            arguments: [key, token]
        )
        return reply.int == 1
    }

    /// Appends a start event that bypasses admission (handoffs and recoveries: the job exists).
    @discardableResult
    func requeue(_ record: JobRecord) async throws -> String? {
        // Origins the pool writes itself are short; one that would not fit is left out.
        var record = record
        if record.origin?.fitsWire == false { record.origin = nil }
        record.requeued = true
        return try await poolStream.add(name: "j", payload: record.encoded())
    }

    // MARK: Routing (pool events → worker inboxes)

    func poolEventsLoop() async {
        guard let sink else { return }
        do {
            // What is already buffered is routed together: one pipelined write forwards it all.
            while let batch = try await sink.events.nextBatch(max: 128) {
                await route(batch)
            }
        } catch {
            if !Task.isCancelled { logger.error("pool event loop ended", metadata: ["error": "\(error)"]) }
        }
    }

    func route(_ event: StreamEvent) async {
        await route([event])
    }

    /// Routes pool events, in order: each goes to one worker's inbox, or is acknowledged and
    /// dropped (stale, malformed, unknown job), or is left pending to come back later.
    func route(_ events: [StreamEvent]) async {
        guard let sink else { return }
        var dropped: [StreamEvent] = []
        var forwards: [(event: StreamEvent, target: String)] = []
        var commands: [RedisCommand] = []
        // Outcomes owed to the nodes waiting for them: stops, and dispatches refused here.
        var stopReplies: [RedisCommand] = []
        // Snapshots of four maps: once per batch, not once per event.
        let view = workerView()
        for event in events {
            if Date().timeIntervalSince(event.createdAt) > Double(Self.maxEventAge.components.seconds) {
                logger.info("dropping a stale pool event", metadata: ["event": "\(event.id)", "name": "\(event.name)"])
                dropped.append(event)
                continue
            }
            guard let key = JobKeyRecord.key(fromEventPayload: event.payload), ["j", "s", "n"].contains(event.name) else {
                logger.error("dropping a malformed pool event", metadata: ["event": "\(event.id)", "name": "\(event.name)"])
                dropped.append(event)
                continue
            }
            if let size = JobKeyRecord.payloadSize(eventName: event.name, eventPayload: event.payload), size.bytes > options.maxPayloadBytes {
                // Written by something other than a node (or one with a larger limit): never forwarded.
                refusePayload(key: key, bytes: size.bytes, source: "pool-stream")
                dropped.append(event)
                if let dispatcher = size.freshDispatcher, !dispatcher.isEmpty {
                    let refusal = AckRecord(
                        eventID: event.id,
                        error: "job \(key): payload of \(size.bytes) bytes exceeds the routing node's limit of \(options.maxPayloadBytes) bytes (Node.Options.maxPayloadBytes)")
                    stopReplies.append(appendCommand(to: keySpace.key("stream", Self.inboxName(ofNode: dispatcher)), name: "d", payload: refusal.encoded()))
                }
                continue
            }
            let record = event.name == "j" ? JobRecord(decoding: event.payload) : nil
            if event.name == "j" && record == nil {
                logger.error("dropping a malformed job record", metadata: ["event": "\(event.id)", "job": "\(key)"])
                dropped.append(event)
                continue
            }
            let decision = await routeDecision(eventName: event.name, key: key, requirement: record?.requirement, view: view)
            switch decision {
            case .worker(let target):
                // The topic carries the pool event ID: the worker returns a start's result
                // straight to the dispatcher, keyed by it (one hop less than through this node).
                let envelope = Envelope(sender: id, payload: event.payload)
                let inbox = keySpace.key("stream", Self.inboxName(ofWorker: target))
                commands.append(appendCommand(to: inbox, name: event.name, payload: envelope.encoded(), topic: event.id))
                forwards.append((event, target))
            case .notFound:
                dropped.append(event)
                if event.name == "s", let reply = stopReply(event, .notRunning) { stopReplies.append(reply) }
            case .awaitingOwner where event.name == "s":
                // Nobody runs it to stop it: end it here, unless an owner turned up meanwhile.
                switch await endUnowned(event, key: key) {
                case .notRunning?:
                    dropped.append(event)
                    if let reply = stopReply(event, .notRunning) { stopReplies.append(reply) }
                case .endedUnowned?:
                    dropped.append(event)
                    if let reply = stopReply(event, .endedUnowned) { stopReplies.append(reply) }
                default:
                    logger.debug("stop left for later: the job has an owner now", metadata: ["event": "\(event.id)", "job": "\(key)"])
                }
            case .unplaced(let requirement):
                guard let record else { continue }
                switch await park(record, requirement: requirement, eventID: event.id) {
                case 1?, 2?: dropped.append(event)
                default: logger.debug("start left for later", metadata: ["event": "\(event.id)", "job": "\(key)"])
                }
            case .awaitingOwner, .noWorkers:
                // Left pending: the sink delivers it again after the ack grace period.
                logger.debug("event left for later", metadata: ["event": "\(event.id)", "job": "\(key)", "reason": "\(decision)"])
            }
        }
        if !stopReplies.isEmpty {
            do {
                _ = try await client.pipeline(stopReplies)
            } catch {
                logger.warning("could not reply to stop requesters", metadata: ["error": "\(error)"])
            }
        }
        if !dropped.isEmpty {
            do {
                try await sink.ack(dropped)
            } catch {
                logger.warning("could not acknowledge dropped pool events", metadata: ["error": "\(error)"])
            }
        }
        guard !commands.isEmpty else { return }
        let replies: [RedisValue]
        do {
            replies = try await client.pipeline(commands)
        } catch {
            logger.warning("forwarding pool events failed; they will be delivered again", metadata: ["events": "\(commands.count)", "error": "\(error)"])
            return
        }
        var early: [(StreamEvent, AckRecord)] = []
        for (forward, reply) in zip(forwards, replies) {
            guard let inboxID = reply.string, !reply.isNull else {
                // NOMKSTREAM and the inbox is gone (or an error): delivered again later.
                logger.info("worker inbox unavailable; event left for later", metadata: ["worker": "\(forward.target)", "reply": "\(reply)"])
                continue
            }
            let routedKey = RoutedKey(worker: forward.target, inboxEventID: inboxID)
            let ack = state.withLock { state -> AckRecord? in
                if let early = state.earlyAcks.removeValue(forKey: routedKey) { return early.ack }
                state.routed[routedKey] = forward.event
                return nil
            }
            if let ack { early.append((forward.event, ack)) }
        }
        if !early.isEmpty { await complete(early) }
    }

    /// The routing decision for an event: starts go to the hash target among active workers;
    /// stops and notifications go to the job's current owner.
    /// `view` is the active workers when the caller already has them (a batch reads them once).
    /// A start goes only to workers that have the job's `requirement` (``JobRecord/requirement``,
    /// else the pool's record of it): with none active, it is `.unplaced`.
    ///
    /// A start for a job an active worker already owns is a redelivery (admission refuses a second
    /// dispatch; a requeue releases or outlives the owner first): the routing node that sent it
    /// died before the worker's ack reached it, and the event came back after the ack grace. It
    /// goes to the owner, which runs the job already and only records it again. Sent to the hash
    /// target instead (which may have changed since), a second copy would run until the owner's
    /// next keep-alive noticed the takeover. If the owner is off target, its rebalance moves the
    /// job (stop, then start).
    func routeDecision(eventName: String, key: String, requirement: String? = nil, view: WorkerView? = nil) async -> RouteDecision {
        let view = view ?? workerView()
        let active = view.active
        if eventName == "j" {
            let requirement = requirement ?? self.requirement(of: key)
            if let owner = maps.owners.string(key), active.contains(owner) { return .worker(owner) }
            guard let target = view.target(for: key, requirement: requirement, hasher: options.hasher) else {
                return requirement.map { .unplaced(requirement: $0) } ?? .noWorkers
            }
            return .worker(target)
        }
        if let owner = maps.owners.string(key), active.contains(owner) {
            return .worker(owner)
        }
        // No active owner: Redis (not the replica) says whether the job exists at all.
        do {
            let exists = try await client.send("HEXISTS", maps.payloads.contentKey, key).int == 1
            return exists ? .awaitingOwner : .notFound
        } catch {
            return .awaitingOwner
        }
    }

    /// The outcome of a stop event for the node waiting for it, if one does (an append to its
    /// inbox, NOMKSTREAM).
    private func stopReply(_ event: StreamEvent, _ outcome: StopResultRecord.Outcome) -> RedisCommand? {
        guard let record = StopRecord(decoding: event.payload), !record.requester.isEmpty else { return nil }
        let result = StopResultRecord(eventID: event.id, outcome: outcome)
        return appendCommand(to: keySpace.key("stream", Self.inboxName(ofNode: record.requester)), name: "r", payload: result.encoded())
    }

    /// Ends a job that exists but that no active worker owns (see ``PoolScripts/endUnowned``):
    /// → `.endedUnowned`, `.notRunning` (gone meanwhile), or nil when an owner turned up (or Redis
    /// failed) and the stop must be routed again later.
    func endUnowned(_ event: StreamEvent, key: String) async -> StopResultRecord.Outcome? {
        guard let record = StopRecord(decoding: event.payload) else { return nil }
        let seenOwner = maps.owners.string(key) ?? ""
        let reply: RedisValue
        do {
            reply = try await client.evaluate(
                PoolScripts.endUnowned,
                keys: [
                    maps.owners.contentKey, maps.owners.channel, maps.payloads.contentKey, maps.payloads.channel,
                    maps.pending.contentKey, maps.pending.channel, startFailuresKey, jobLogKey, maps.workerKeepAlive.contentKey,
                    endedKey(key), maps.requirements.contentKey, maps.requirements.channel, maps.unplaced.contentKey, maps.unplaced.channel,
                ],
                arguments: [
                    key, seenOwner, String(nowNanos()), String(options.workerTTL.nanoseconds),
                    JobLogJSON.head(.endedUnowned, worker: "", node: self), JobLogJSON.job(key, origin: record.origin),
                    Self.tombstoneLifetimeMillis,
                ]
            )
        } catch {
            logger.warning("could not end a job without owner; the stop is left for later", metadata: ["job": "\(key)", "error": "\(error)"])
            return nil
        }
        switch reply.int {
        case 0: return .notRunning
        case 1:
            logger.info("stopped a job that no worker ran", metadata: ["job": "\(key)", "lastOwner": "\(seenOwner)"])
            return .endedUnowned
        default: return nil
        }
    }

    /// The tombstone of a job a stop ended while its owner looked dead: the owner's ID, for
    /// ``tombstoneLifetimeMillis``. A worker paused longer than that has been evicted (and stopped
    /// every job) by then.
    func endedKey(_ job: String) -> String { keySpace.key("ended", job) }

    static let tombstoneLifetimeMillis = 600_000

    /// The active workers with their capabilities.
    func workerView() -> WorkerView {
        let active = activeWorkers()
        let stored = maps.capabilities.snapshot
        var capabilities: [String: Set<String>] = [:]
        for worker in active {
            if let value = stored[worker] { capabilities[worker] = Capability.decode(value) }
        }
        return WorkerView(active: active, capabilities: capabilities)
    }

    /// Holds a start no active worker can take (see ``PoolScripts/park``); a fresh dispatch's
    /// dispatcher hears `unplaced`. → the script's reply (1 held, 0 owned now, 2 ended), nil when
    /// Redis failed (the event is delivered again).
    func park(_ record: JobRecord, requirement: String, eventID: String) async -> Int? {
        let fresh = !record.requeued
        let reply = fresh && !record.dispatcher.isEmpty ? AckRecord(eventID: eventID, error: requirement).encoded() : []
        let inbox = keySpace.key("stream", Self.inboxName(ofNode: fresh && !record.dispatcher.isEmpty ? record.dispatcher : id))
        let origin = record.origin ?? JobOrigin(actor: options.name, reason: fresh ? "dispatch" : "requeue")
        do {
            let result = try await client.evaluate(
                PoolScripts.park,
                keys: [
                    maps.owners.contentKey, maps.owners.channel, maps.payloads.contentKey, maps.payloads.channel,
                    maps.pending.contentKey, maps.pending.channel, maps.requirements.contentKey, maps.requirements.channel, maps.unplaced.contentKey, maps.unplaced.channel, jobLogKey, inbox,
                ],
                arguments: [
                    record.key, record.payload, requirement, fresh ? "1" : "0", JobLogJSON.head(.unplaced, worker: "", node: self),
                    JobLogJSON.job(record.key, origin: origin, requeued: record.requeued, error: "no active worker has capability '\(requirement)'"),
                    reply, maps.owners.string(record.key) ?? "",
                ]
            ).int
            if result == 1 {
                logger.info("job held: no active worker has its requirement", metadata: ["job": "\(record.key)", "requirement": "\(requirement)"])
            }
            return result
        } catch {
            logger.warning("could not hold an unplaced job; it is delivered again later", metadata: ["job": "\(record.key)", "error": "\(error)"])
            return nil
        }
    }

    /// Places the held jobs that an active worker can now run (see ``PoolScripts/place``); every
    /// routing node does this when the workers change, and the script lets exactly one place each.
    func placeUnplaced() async {
        let held = maps.unplaced.snapshot
        guard !held.isEmpty else { return }
        let view = workerView()
        var records: [(key: String, requirement: String, record: [UInt8])] = []
        let origin = JobOrigin(actor: options.name, reason: "placed")
        for (key, value) in held.sorted(by: { $0.key < $1.key }) {
            let requirement = String(decoding: value, as: UTF8.self)
            guard Capability.isValid(requirement), !view.capable(of: requirement).isEmpty, let payload = maps.payloads.get(key) else { continue }
            let record = JobRecord(key: key, dispatcher: id, payload: payload, createdAt: Date(), requeued: true, origin: origin, requirement: requirement)
            records.append((key, requirement, record.encoded()))
        }
        guard !records.isEmpty else { return }
        let keys: [any RedisArgument] = [maps.unplaced.contentKey, maps.unplaced.channel, maps.owners.contentKey, maps.payloads.contentKey, poolStream.key]
        // Concurrent calls share the connection's pipeline; 32 at a time bounds what is in flight.
        let placed = await withTaskGroup(of: Int.self) { group in
            var iterator = records.makeIterator()
            var count = 0
            func addNext() -> Bool {
                guard let next = iterator.next() else { return false }
                group.addTask {
                    do {
                        return try await self.client.evaluate(PoolScripts.place, keys: keys, arguments: [next.key, next.requirement, next.record]).int ?? 0
                    } catch {
                        self.logger.warning("could not place a held job; the next worker change or sweep retries", metadata: ["job": "\(next.key)", "error": "\(error)"])
                        return 0
                    }
                }
                return true
            }
            for _ in 0..<32 where !addNext() { break }
            while let result = await group.next() {
                count += result
                _ = addNext()
            }
            return count
        }
        if placed > 0 { logger.info("placed held jobs on workers that can run them", metadata: ["jobs": "\(placed)"]) }
    }

    /// Workers that may receive jobs, in hash-bucket order: registered (not retiring), not being
    /// cleaned up, and alive (keep-alive within the worker TTL). Ordered by creation time, then ID,
    /// so every node computes the same order.
    func activeWorkers() -> [String] {
        let registry = maps.workers.snapshot
        guard !registry.isEmpty else { return [] }
        let keepAlives = maps.workerKeepAlive.snapshot
        let locks = maps.cleanup.snapshot
        let now = nowNanos()
        let ttl = options.workerTTL.nanoseconds
        var active: [(created: Int64, id: String)] = []
        for (worker, value) in registry {
            guard let created = timestampNanos(value) else { continue }
            if let lock = locks[worker].flatMap(timestampNanos), now - lock < ttl { continue }
            guard let seen = keepAlives[worker].flatMap(timestampNanos), now - seen <= ttl else { continue }
            active.append((created, worker))
        }
        return active.sorted { ($0.created, $0.id) < ($1.created, $1.id) }.map(\.id)
    }

    // MARK: Node inbox (acks from workers, results for dispatchers)

    func nodeEventsLoop() async {
        do {
            // Acknowledgements of a batch go out in one XACK, up to 8 batches at once, so the
            // loop keeps reading instead of waiting for each round trip.
            try await withThrowingTaskGroup(of: Void.self) { group in
                var inFlight = 0
                while let batch = try await inboxReader.events.nextBatch(max: 128) {
                    if let last = batch.last { state.withLock { $0.lastInboxEvent = last.id } }
                    var completed: [(StreamEvent, AckRecord)] = []
                    for event in batch {
                        guard event.name == "a" else {
                            handleInboxEvent(event)
                            continue
                        }
                        guard let envelope = Envelope(decoding: event.payload), let ack = AckRecord(decoding: envelope.payload) else {
                            logger.error("ignoring a malformed worker ack", metadata: ["event": "\(event.id)"])
                            continue
                        }
                        if let routed = match(ack, from: envelope.sender) { completed.append((routed, ack)) }
                    }
                    guard !completed.isEmpty else { continue }
                    if inFlight >= 8 {
                        try await group.next()
                        inFlight -= 1
                    }
                    group.addTask { await self.complete(completed) }
                    inFlight += 1
                }
            }
        } catch {
            if !Task.isCancelled { logger.error("node inbox loop ended", metadata: ["error": "\(error)"]) }
        }
    }

    private func handleInboxEvent(_ event: StreamEvent) {
        if event.name == "r" {
            guard let result = StopResultRecord(decoding: event.payload) else {
                logger.error("ignoring a malformed stop result", metadata: ["event": "\(event.id)"])
                return
            }
            stopResults.deliver(result.eventID, result)
            return
        }
        guard event.name == "d" || event.name == "u" else { return }
        guard let result = AckRecord(decoding: event.payload) else {
            logger.error("ignoring a malformed dispatch result", metadata: ["event": "\(event.id)"])
            return
        }
        if event.name == "u" {
            guard Capability.isValid(result.error) else {
                logger.error("ignoring a malformed unplaced reply", metadata: ["event": "\(event.id)"])
                return
            }
            results.deliver(result.eventID, .unplaced(result.error))
        } else {
            results.deliver(result.eventID, .result(result.error))
        }
    }

    /// A worker acknowledged an event this node forwarded to it.
    func handleAck(from worker: String, _ ack: AckRecord) async {
        if let event = match(ack, from: worker) { await complete([(event, ack)]) }
    }

    /// The forwarded event a worker's ack is for, removed from the routed table. An ack read
    /// before its entry was written (the forwarding task had not run since its XADD returned) is
    /// kept for a while; one for an event never routed here is harmless.
    func match(_ ack: AckRecord, from worker: String) -> StreamEvent? {
        let routedKey = RoutedKey(worker: worker, inboxEventID: ack.eventID)
        let event = state.withLock { state -> StreamEvent? in
            if let event = state.routed.removeValue(forKey: routedKey) { return event }
            let now = ContinuousClock.now
            state.earlyAcks[routedKey] = (ack, now)
            if state.earlyAcks.count > 10_000 {
                state.earlyAcks = state.earlyAcks.filter { now - $0.value.at < Self.maxEventAge }
            }
            return nil
        }
        if event == nil {
            logger.debug("ack for an event this node does not know", metadata: ["worker": "\(worker)", "event": "\(ack.eventID)"])
        }
        return event
    }

    /// Acknowledges the pool events workers handled (the workers returned start results to the
    /// dispatchers themselves) and forgets stale routed entries.
    func complete(_ handled: [(StreamEvent, AckRecord)]) async {
        for (event, ack) in handled where !ack.error.isEmpty {
            logger.info("worker reported an error", metadata: ["event": "\(event.id)", "name": "\(event.name)", "error": "\(ack.error)"])
        }
        do {
            _ = try await sink?.ack(handled.map(\.0))
        } catch {
            logger.warning("could not acknowledge pool events", metadata: ["events": "\(handled.count)", "error": "\(error)"])
        }
        collectStaleRoutedEvents()
    }

    /// Routed entries whose pool event is older than the maximum age will never be acked usefully.
    func collectStaleRoutedEvents() {
        let cutoff = Date().addingTimeInterval(-Double(Self.maxEventAge.components.seconds))
        let now = ContinuousClock.now
        state.withLock { state in
            // A full scan per ack would be quadratic under load: large tables are scanned once a second.
            guard state.routed.count > 0, state.routed.count < 1000 || now - state.lastRoutedCollection > .seconds(1) else { return }
            state.lastRoutedCollection = now
            state.routed = state.routed.filter { $0.value.createdAt >= cutoff }
        }
    }

    /// Number of forwarded events awaiting a worker ack (a test seam).
    var routedCount: Int { state.withLock { $0.routed.count } }
}
