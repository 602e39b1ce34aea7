import Foundation
import Logging
import RotaMap
import RotaRedis
import RotaStreams

extension Node {
    /// The node's background duties, run by ``LoopGroup`` until close.
    func nodeLoops() -> [@Sendable () async -> Void] {
        let ttl = options.workerTTL
        var loops: [@Sendable () async -> Void] = [
            { [inboxReader, logger] in
                do { try await inboxReader.run() } catch { logger.error("node inbox reader failed", metadata: ["error": "\(error)"]) }
            },
            { await self.nodeEventsLoop() },
            { await self.every(ttl / 2) { await self.keepNodeAlive() } },
            { await self.every(ttl, sweep: true) { await self.removeInactiveNodes() } },
        ]
        guard let sink, !options.clientOnly else { return loops }
        loops += [
            { [logger] in
                do { try await sink.run() } catch { logger.error("pool sink failed", metadata: ["error": "\(error)"]) }
            },
            { await self.poolEventsLoop() },
            { await self.watchWorkers() },
            { await self.watchShutdown() },
            { await self.watchTickers() },
            { await self.every(ttl, sweep: true) { await self.cleanUpInactiveWorkers() } },
            { await self.every(ttl) { await self.trimPoolStream() } },
            { await self.every(self.options.ackGracePeriod, sweep: true) { await self.removeStalePendingGuards() } },
        ]
        return loops
    }

    /// Runs `body` every `period`.
    ///
    /// With `sweep`, a wake-up more than a second late means this process was paused (SIGSTOP,
    /// a VM freeze) or badly starved: its map replicas have not applied what changed meanwhile,
    /// and a sweep would judge live peers by keep-alives that are only stale here. That round is
    /// skipped; the next one runs a period later. (Keep-alives are not sweeps: they run at once.)
    func every(_ period: Duration, sweep: Bool = false, _ body: @Sendable () async -> Void) async {
        let clock = ContinuousClock()
        while !Task.isCancelled {
            let due = clock.now + period
            do {
                try await Task.sleep(until: due, clock: clock)
            } catch {
                return
            }
            let late = clock.now - due
            if sweep && late > .seconds(1) {
                logger.notice("maintenance woke up late (paused or starved); skipping one sweep", metadata: ["late": "\(late)"])
                continue
            }
            await body()
        }
    }

    // MARK: Keep-alive and dead nodes

    func keepNodeAlive() async {
        let began = ContinuousClock.now
        do {
            try await maps.nodeKeepAlive.set(id, String(nowNanos()))
            // A write that waited for a reconnect lands with the value of when it was issued.
            if ContinuousClock.now - began > .seconds(1) { state.withLock { $0.lastOutage = .now } }
            // Peers delete the inbox of a node they believe dead; a node that was only paused
            // re-creates it, or it could never receive acks and results again.
            if try await client.send("EXISTS", inbox.key).int == 0 {
                logger.warning("node inbox was deleted by a peer; re-creating it")
                try await inbox.add(name: "i", payload: Array(id.utf8))
            } else if let handled = state.withLock({ $0.lastInboxEvent }) {
                // Handled events are done with: trim them (the inbox has no length cap).
                try await client.send("XTRIM", inbox.key, "MINID", handled)
            }
        } catch {
            state.withLock { $0.lastOutage = .now }
            logger.warning("node keep-alive failed", metadata: ["error": "\(error)"])
        }
    }

    /// True when Redis was out of reach for this node within the last TTL, or its own keep-alive
    /// in Redis is older than one and a half keep-alive periods: its writes did not land, so its
    /// peers' did not either and their keep-alives look stale only because of the outage. A sweep
    /// then waits a round: evicting live workers right after an outage would run their jobs twice.
    func ownKeepAliveLapsed() async -> Bool {
        if let outage = state.withLock({ $0.lastOutage }), ContinuousClock.now - outage < options.workerTTL { return true }
        guard let value = try? await client.send("HGET", maps.nodeKeepAlive.contentKey, id).string, let seen = timestampNanos(value) else {
            return true
        }
        return nowNanos() - seen > (options.workerTTL / 2 + options.workerTTL / 4).nanoseconds
    }

    /// Deletes the inbox and keep-alive of nodes silent for longer than the worker TTL.
    func removeInactiveNodes() async {
        if await ownKeepAliveLapsed() {
            logger.notice("this node's own keep-alive lapsed (Redis unreachable?): skipping a sweep of inactive nodes")
            return
        }
        let now = nowNanos()
        let ttl = options.workerTTL.nanoseconds
        for (node, value) in maps.nodeKeepAlive.snapshot where node != id {
            if let seen = timestampNanos(value), now - seen <= ttl { continue }
            do {
                // Compare-and-delete first: it succeeds only if the node has not written a
                // keep-alive since the one judged here, whatever this replica has not applied yet.
                guard try await maps.nodeKeepAlive.testAndDelete(node, test: value).deleted else { continue }
                try await client.send("DEL", keySpace.key("stream", Self.inboxName(ofNode: node)))
                try await client.send("HDEL", namesKey, node)
                logger.info("removed an inactive node", metadata: ["inactive": "\(node)"])
            } catch {
                logger.warning("could not remove an inactive node", metadata: ["inactive": "\(node)", "error": "\(error)"])
            }
        }
    }

    /// Trims the pool stream up to the oldest event the routing nodes have not acknowledged (or
    /// not received yet), once it holds more than `maxQueuedJobs` entries. Unprocessed events are
    /// never trimmed.
    func trimPoolStream() async {
        do {
            guard try await client.send("XLEN", poolStream.key).int ?? 0 > options.maxQueuedJobs else { return }
            var lastDelivered: String?
            for group in try await client.send("XINFO", "GROUPS", poolStream.key).array ?? [] {
                let fields = group.array ?? []
                var info: [String: RedisValue] = [:]
                var index = 0
                while index + 1 < fields.count {
                    if let name = fields[index].string { info[name] = fields[index + 1] }
                    index += 2
                }
                if info["name"]?.string == "events" { lastDelivered = info["last-delivered-id"]?.string }
            }
            guard var safe = lastDelivered else { return }
            let pending = try await client.send("XPENDING", poolStream.key, "events").array ?? []
            if let count = pending.first?.int, count > 0, pending.count > 1, let oldest = pending[1].string {
                safe = oldest
            }
            try await client.send("XTRIM", poolStream.key, "MINID", "~", safe)
        } catch {
            logger.debug("pool stream trim failed", metadata: ["error": "\(error)"])
        }
    }

    // MARK: Worker set changes

    private func watchWorkers() async {
        await withDiscardingTaskGroup { group in
            group.addTask {
                for await change in self.maps.workers.changes() {
                    if change == .reset { await self.restoreLostState() }
                    await self.rebalance()
                }
            }
            group.addTask {
                for await _ in self.rebalanceRequests.stream { await self.rebalance() }
            }
            group.addTask {
                // A capability entry may reach this replica after the registry entry it precedes.
                for await _ in self.maps.capabilities.changes() { await self.rebalance() }
            }
        }
    }

    /// The worker registry went back in time or was emptied while the pool runs (the pool never
    /// resets it; only shutdown destroys it, and then this node is closing): Redis lost the pool's
    /// state — restarted without persistence, failed over to a stale replica, flushed. What this
    /// node knows to be true locally is registered again: its inbox, its workers, their jobs.
    func restoreLostState() async {
        await rebalanceLock.withLock {
            guard state.withLock({ $0.phase == .running }) else { return }
            logger.warning("the worker registry was reset (Redis restarted or flushed?); registering local workers and jobs again")
            await keepNodeAlive()
            for worker in localWorkers where worker.isRegistered && !worker.isStopped {
                await worker.registerAgain()
            }
        }
    }

    /// Stops local workers that peers evicted, moves local jobs whose hash target changed, and
    /// places held jobs a worker can run now.
    func rebalance() async {
        await moveJobs()
        await placeUnplaced()
    }

    private func moveJobs() async {
        await rebalanceLock.withLock {
            guard state.withLock({ $0.phase == .running }) else { return }
            let registry = maps.workers.snapshot
            for worker in localWorkers where worker.isRegistered && registry[worker.id] == nil {
                if worker.isStopped || worker.mayHaveBeenEvicted {
                    // A peer removed it (stopped ones too: a worker that died silently is
                    // forgotten once a peer cleaned it up).
                    await evict(worker)
                } else {
                    // Its keep-alive is fresh, so no peer can have cleaned it up: Redis lost the
                    // entry (a restart without persistence, a flush). Put it back.
                    await worker.registerAgain()
                }
            }
            let view = workerView()
            guard !view.active.isEmpty else { return }
            for worker in localWorkers where !worker.isStopped {
                await worker.rebalance(view: view)
            }
        }
    }

    /// A peer decided this worker was dead and requeued its jobs: stop running them here (they run
    /// elsewhere now), then finish removing the worker.
    private func evict(_ worker: Worker) async {
        logger.warning("worker was evicted by a peer; stopping its jobs here", metadata: ["worker": "\(worker.id)"])
        await worker.stopLoops()
        await worker.stopJobsLocally()
        await worker.finishJobs()
        await removeFromMaps(worker)
        state.withLock { _ = $0.workers.removeValue(forKey: worker.id) }
    }

    private func watchShutdown() async {
        for await _ in maps.shutdown.changes() {
            // Only a request counts: the destroy that ends a shutdown notifies too.
            if maps.shutdown.string("shutdown") != nil {
                spawn { await self.handlePoolShutdown() }
                return
            }
        }
    }

    func register(_ ticker: Ticker) {
        state.withLock { $0.tickers[ObjectIdentifier(ticker)] = ticker }
        ticker.wake.fire()
    }

    func unregister(_ ticker: Ticker) {
        state.withLock { _ = $0.tickers.removeValue(forKey: ObjectIdentifier(ticker)) }
    }

    /// Wakes the tickers whose shared entry changed; all of them when the map closes.
    private func watchTickers() async {
        for await _ in maps.tickers.changes() {
            for ticker in state.withLock({ Array($0.tickers.values) }) where maps.tickers.string(ticker.name) != ticker.knownRaw {
                ticker.wake.fire()
            }
        }
        for ticker in state.withLock({ Array($0.tickers.values) }) { ticker.wake.fire() }
    }

    // MARK: Requeue and removal

    /// Appends requeued start events for `jobs`, at most 64 at a time; returns those that failed.
    /// `origin` says why (it reaches the job log with the new owner's `started`).
    func requeueAll(_ jobs: [Job], origin: JobOrigin) async -> [Job] {
        var failed: [Job] = []
        await withTaskGroup(of: Job?.self) { group in
            var iterator = jobs.makeIterator()
            func addNext() -> Bool {
                guard let job = iterator.next() else { return false }
                group.addTask {
                    let record = JobRecord(
                        key: job.key, dispatcher: job.dispatcherID, payload: job.payload, createdAt: job.createdAt, requeued: true, origin: origin,
                        requirement: job.requirement
                    )
                    do {
                        _ = try await self.requeue(record)
                        return nil
                    } catch {
                        self.logger.warning("requeue failed", metadata: ["job": "\(job.key)", "error": "\(error)"])
                        return job
                    }
                }
                return true
            }
            for _ in 0..<64 where !addNext() { break }
            while let result = await group.next() {
                if let result { failed.append(result) }
                _ = addNext()
            }
        }
        return failed
    }

    /// Close and RemoveWorker: retire the (stopped) worker, then hand its jobs to the others. Each
    /// job is stopped here before its requeue is appended (a job never runs on two workers during
    /// a rolling restart), its ownership released and its payload kept. If this process dies
    /// before a job's ownership is released, the owner still names this worker and the cleanup of
    /// the dead worker requeues it; if it dies between the release and the requeue, the payload
    /// has no owner and orphan recovery requeues it. `reason`: `worker-closing` or `worker-removed`.
    func requeueJobs(of worker: Worker, reason: String) async {
        let jobs = worker.jobs
        guard !jobs.isEmpty else { return }
        do {
            let (previous, updated) = try await maps.workers.testAndSet(worker.id, test: String(worker.createdAtNanos), "-")
            if !updated {
                if previous == Array("-".utf8) { return }
                // It must never be picked as a target again, whatever the entry held.
                try await maps.workers.set(worker.id, "-")
            }
        } catch {
            logger.warning("could not mark the worker as retiring", metadata: ["worker": "\(worker.id)", "error": "\(error)"])
        }
        await withDiscardingTaskGroup { group in
            // The worker's loops are stopped, but stopping its jobs may take longer than the
            // worker TTL: its keep-alive goes on meanwhile, or peers would find it dead and
            // requeue the jobs it has not stopped yet (two copies again).
            group.addTask { await self.keepAlive(retiring: worker) }
            await self.handOff(jobs, of: worker, reason: reason)
            group.cancelAll()
        }
    }

    private func handOff(_ jobs: [Job], of worker: Worker, reason: String) async {
        let origin = JobOrigin(actor: options.name, reason: reason)
        // A few jobs at a time: each is requeued as soon as it stopped, rather than all of them
        // waiting for the slowest stop.
        var pending = jobs[...]
        while !pending.isEmpty {
            let chunk = Array(pending.prefix(16))
            pending = pending.dropFirst(chunk.count)
            // Under the worker's lock, as the record of a runner job's own end: each job is either
            // handed off or recorded as ended, never both.
            var remaining = await worker.serial.withLock {
                await worker.releaseForHandoff(chunk, reason: reason, keepOnStopFailure: false)
            }
            let deadline = ContinuousClock.now + options.workerTTL
            while !remaining.isEmpty {
                remaining = await requeueAll(remaining, origin: origin)
                if remaining.isEmpty || ContinuousClock.now >= deadline { break }
                try? await Task.sleep(for: .milliseconds(50))
            }
            for job in remaining {
                // Stopped here, payload kept, no owner: orphan recovery restarts it once Redis
                // takes writes again.
                logger.error("could not requeue a job; orphan recovery will restart it", metadata: ["job": "\(job.key)"])
            }
        }
    }

    /// Writes a retiring worker's keep-alive every keep-alive period until cancelled.
    private func keepAlive(retiring worker: Worker) async {
        while !Task.isCancelled {
            do {
                try await maps.workerKeepAlive.set(worker.id, String(nowNanos()))
            } catch {
                logger.warning("keep-alive of a retiring worker failed", metadata: ["worker": "\(worker.id)", "error": "\(error)"])
            }
            do {
                try await Task.sleep(for: options.keepAlivePeriod)
            } catch {
                return
            }
        }
    }

    func removeFromMaps(_ worker: Worker) async {
        await removeWorkerEntries(worker.id)
    }

    /// Removes a worker from the registry, keep-alives, cleanup locks and ownership (payloads
    /// stay), and deletes its inbox.
    func removeWorkerEntries(_ workerID: String) async {
        do {
            _ = try await client.evaluate(
                PoolScripts.removeWorker,
                keys: [
                    maps.workers.contentKey, maps.workers.channel,
                    maps.workerKeepAlive.contentKey, maps.workerKeepAlive.channel,
                    maps.cleanup.contentKey, maps.cleanup.channel,
                    maps.owners.contentKey, maps.owners.channel,
                    maps.capabilities.contentKey, maps.capabilities.channel,
                ],
                arguments: [workerID]
            )
            try await client.send("DEL", keySpace.key("stream", Self.inboxName(ofWorker: workerID)))
            try await client.send("HDEL", workerNodesKey, workerID)
        } catch {
            logger.warning("could not remove a worker from the pool maps", metadata: ["worker": "\(workerID)", "error": "\(error)"])
        }
    }

    // MARK: Dead workers and orphans

    /// Finds workers that own jobs or are registered but are not active, and cleans them up
    /// (requeue their jobs, remove them); then recovers orphaned payloads.
    func cleanUpInactiveWorkers() async {
        guard state.withLock({ $0.phase == .running }) else { return }
        if await ownKeepAliveLapsed() {
            logger.notice("this node's own keep-alive lapsed (Redis unreachable?): skipping a sweep of inactive workers")
            return
        }
        var owned: [String: [String]] = [:]
        for (key, worker) in maps.owners.snapshot {
            owned[String(decoding: worker, as: UTF8.self), default: []].append(key)
        }
        let registry = maps.workers.snapshot
        let keepAlives = maps.workerKeepAlive.snapshot
        let active = Set(activeWorkers())
        let now = nowNanos()
        let ttl = options.workerTTL.nanoseconds
        for worker in Set(owned.keys).union(registry.keys) where !active.contains(worker) {
            if let local = localWorker(worker), !local.isStopped { continue }
            // Retiring workers with a live keep-alive are being handed over by their own node.
            if registry[worker] == Array("-".utf8),
               let seen = keepAlives[worker].flatMap(timestampNanos), now - seen <= ttl {
                continue
            }
            await cleanUp(worker: worker, keys: owned[worker] ?? [])
        }
        await requeueOrphans()
        // Normally done when the workers change; this catches a placement that failed then.
        await placeUnplaced()
    }

    /// Cleans up one inactive worker under a cleanup lock (which also keeps it out of the active
    /// set on every node).
    func cleanUp(worker: String, keys: [String]) async {
        let now = nowNanos()
        // Its last keep-alive: its jobs' runs end there in the job log (it died after it).
        var lastSeen: Int64?
        do {
            if let lock = maps.cleanup.get(worker) {
                if let since = timestampNanos(lock), now - since < options.workerTTL.nanoseconds { return }
                // A stale lock: its holder died mid-cleanup.
                guard try await maps.cleanup.testAndDelete(worker, test: lock).deleted else { return }
            }
            guard try await maps.cleanup.setIfAbsent(worker, String(now)) else { return }
            // The verdict came from this node's replica, which may lag (a node resumed after a
            // pause acts before it applied the keep-alives written meanwhile). Redis decides.
            let raw = try await client.send("HGET", maps.workerKeepAlive.contentKey, worker)
            let stored = raw.string.flatMap { timestampNanos($0) }
            lastSeen = stored
            // A keep-alive that is there but unreadable was written by something else: a live
            // worker overwrites it within a keep-alive period. It counts as seen now until it has
            // stayed unreadable for a TTL (then the worker is as dead as a silent one).
            let unreadableSince = state.withLock { state -> ContinuousClock.Instant? in
                guard !raw.isNull, stored == nil else {
                    state.unreadableKeepAlives.removeValue(forKey: worker)
                    return nil
                }
                if state.unreadableKeepAlives.count > 10_000 { state.unreadableKeepAlives.removeAll() }
                return state.unreadableKeepAlives[worker, default: .now]
            }
            if let since = unreadableSince, ContinuousClock.now - since < options.workerTTL {
                state.withLock { $0.unreadableKeepAlives[worker] = since }
                logger.notice("worker's keep-alive in Redis is unreadable: left alone for one TTL", metadata: ["worker": "\(worker)"])
                _ = try await maps.cleanup.testAndDelete(worker, test: String(now))
                return
            }
            if let stored, nowNanos() - stored <= options.workerTTL.nanoseconds {
                logger.notice("worker looked inactive in this node's lagging view but is alive: left alone", metadata: ["worker": "\(worker)"])
                _ = try await maps.cleanup.testAndDelete(worker, test: String(now))
                return
            }
        } catch {
            logger.warning("could not lock an inactive worker for cleanup", metadata: ["worker": "\(worker)", "error": "\(error)"])
            return
        }
        logger.info("cleaning up an inactive worker", metadata: ["inactive": "\(worker)", "jobs": "\(keys.count)"])
        // Entries without a payload are stale (the job was stopped): they go with the worker below.
        var requeued: [Job] = []
        for key in keys where maps.owners.string(key) == worker {
            if let payload = maps.payloads.get(key) {
                requeued.append(Job(
                    key: key, payload: payload, createdAt: Date(), isRequeued: true, dispatcherID: id, workerID: "", requirement: requirement(of: key)))
            }
        }
        let origin = JobOrigin(actor: options.name, reason: "worker-lost")
        // Logged before the requeue: the runs ended with the worker whatever happens next, and a
        // cleaner killed right after requeueing would leave them open in the history for good (a
        // later cleanup no longer sees the jobs, which have new owners by then).
        await appendJobLog(.lost, worker: worker, lastSeen: lastSeen, jobs: requeued.map {
            JobLogJSON.job($0.key, origin: origin, requeued: true)
        })
        let failed = await requeueAll(requeued, origin: origin)
        guard failed.isEmpty else {
            // Keep the lock: a later sweep retries once it is stale.
            logger.warning("cleanup incomplete; will retry", metadata: ["inactive": "\(worker)", "failed": "\(failed.count)"])
            return
        }
        await removeWorkerEntries(worker)
    }

    /// The pool's record of a job's requirement (nil: none, or not a valid capability).
    func requirement(of key: String) -> String? {
        maps.requirements.string(key).flatMap { Capability.isValid($0) ? $0 : nil }
    }

    /// Payloads that no worker owns for longer than the grace period are requeued: the last
    /// resort when everything else failed (cascading failures, a handoff whose event was lost).
    func requeueOrphans() async {
        let grace = max(options.workerTTL * 2, options.ackGracePeriod)
        let now = ContinuousClock.now
        let payloads = maps.payloads.snapshot
        var due: [Job] = []
        state.withLock { state in
            var seen: [String: ContinuousClock.Instant] = [:]
            // Held jobs have no owner on purpose: they are placed when a capable worker joins.
            for (key, payload) in payloads where maps.owners.get(key) == nil && maps.unplaced.get(key) == nil {
                let first = state.orphansSeen[key] ?? now
                if now - first >= grace {
                    due.append(Job(
                        key: key, payload: payload, createdAt: Date(), isRequeued: true, dispatcherID: id, workerID: "", requirement: requirement(of: key)))
                } else {
                    seen[key] = first
                }
            }
            state.orphansSeen = seen
        }
        guard !due.isEmpty else { return }
        logger.warning("requeuing orphaned jobs", metadata: ["count": "\(due.count)"])
        let origin = JobOrigin(actor: options.name, reason: "orphan")
        let failed = await requeueAll(due, origin: origin)
        let failedKeys = Set(failed.map(\.key))
        await appendJobLog(.orphanRequeued, worker: "", jobs: due.filter { !failedKeys.contains($0.key) }.map {
            JobLogJSON.job($0.key, origin: origin, requeued: true)
        })
        if !failed.isEmpty {
            // Try again at the next sweep rather than after another grace period.
            state.withLock { state in
                for job in failed { state.orphansSeen[job.key] = now - grace }
            }
        }
    }

    /// Deletes pending-dispatch guards whose time is past (compare-and-delete; malformed guards are
    /// reported, never removed).
    func removeStalePendingGuards() async {
        let now = nowNanos()
        for (key, value) in maps.pending.snapshot {
            guard let until = timestampNanos(value) else {
                logger.error("malformed pending guard left alone", metadata: ["job": "\(key)", "value": "\(String(decoding: value, as: UTF8.self))"])
                continue
            }
            guard until < now else { continue }
            do {
                _ = try await maps.pending.testAndDelete(key, test: value)
            } catch {
                logger.warning("could not remove a stale pending guard", metadata: ["job": "\(key)", "error": "\(error)"])
            }
        }
    }
}
