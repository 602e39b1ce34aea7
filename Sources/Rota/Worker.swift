import Foundation
import Logging
import Metrics
import RotaRedis
import RotaStreams
import Synchronization

/// A job host inside a node. Created by ``Node/addWorker(_:capabilities:)``; the pool routes jobs
/// to it by consistent hashing and it runs them with its ``JobHandler`` or ``JobRunner``.
///
/// Events reach a worker through its own inbox stream and are handled one at a time, in order.
public final class Worker: Sendable {
    public let id: String
    /// When the worker joined; workers are ordered by it for hashing.
    public let createdAt: Date
    /// What it can run (``Node/addWorker(_:capabilities:)``).
    public let capabilities: Set<String>
    let createdAtNanos: Int64
    let executor: any JobExecutor
    let node: Node
    let inbox: RedisStream
    let reader: StreamReader
    let loops = LoopGroup()
    /// Event handling and rebalancing take turns: a job is never released half started.
    let serial = AsyncLock()
    let logger: Logger
    /// Runner jobs to run as children of ``run()``; finished once the worker is done for good.
    let launches: (stream: AsyncStream<JobLaunch>, continuation: AsyncStream<JobLaunch>.Continuation)
    /// Opened when ``run()``'s job group has ended: every job task and end record is done.
    let jobsDone = OneShotSignal()

    /// Why a stop that failed was asked for: it decides what the job's late end records.
    enum FailedStop {
        /// A stop of the job (`stopped` with this origin once it ends).
        case stop(JobOrigin?)
        /// A handoff that kept the job here (it moves once it ends: `released`, then requeued).
        case handoff(reason: String)
    }

    private struct State {
        var jobs: [String: Job] = [:]
        var stopped = false
        var registered = false
        /// The last keep-alive Redis accepted. Peers clean a worker up only once its keep-alive is
        /// older than the worker TTL, so before that a missing registry entry means Redis lost it.
        var lastKeepAlive = ContinuousClock.now
        /// Set when a keep-alive comes more than a TTL after the previous one (the process was
        /// paused, or Redis unreachable): peers may have evicted this worker meanwhile, and the
        /// fresh keep-alive written since does not undo that. Cleared once Redis shows the worker
        /// still registered and not being cleaned up.
        var suspectEvicted = false
        /// Test seam: a frozen process writes no keep-alives.
        var keepAliveSuspended = false
        /// The last inbox event handled: the inbox is trimmed up to it.
        var lastEvent: String?
        /// Jobs whose last stop failed and that still run here.
        var failedStops: [String: FailedStop] = [:]
    }

    private let state = Mutex(State())

    init(id: String, createdAtNanos: Int64, execution: JobExecution, node: Node, capabilities: Set<String> = []) throws {
        self.capabilities = capabilities
        self.id = id
        self.createdAtNanos = createdAtNanos
        self.createdAt = dateFromNanos(createdAtNanos)
        self.node = node
        var logger = node.logger
        logger[metadataKey: "worker"] = "\(id)"
        self.logger = logger
        launches = AsyncStream.makeStream(of: JobLaunch.self)
        executor = execution.makeExecutor(
            workerID: id, logger: logger, launches: launches.continuation, stopGracePeriod: node.options.jobStopGracePeriod
        )
        inbox = try node.workerInbox(id)
        // Half the worker TTL, so a stopped worker notices quickly.
        reader = try StreamReader(
            stream: inbox,
            options: .init(blockDuration: node.options.workerTTL / 2, start: .oldest),
            logger: logger
        )
    }

    /// The jobs this worker runs, sorted by key.
    public var jobs: [Job] {
        state.withLock { Array($0.jobs.values) }.sorted { $0.key < $1.key }
    }

    public var isStopped: Bool { state.withLock { $0.stopped } }

    var isRegistered: Bool { state.withLock { $0.registered } }

    func markRegistered() { state.withLock { $0.registered = true } }

    func localJob(_ key: String) -> Job? { state.withLock { $0.jobs[key] } }

    /// True when peers may have decided this worker is dead: no keep-alive for a worker TTL.
    var mayHaveBeenEvicted: Bool {
        let (last, suspect) = state.withLock { ($0.lastKeepAlive, $0.suspectEvicted) }
        return suspect || ContinuousClock.now - last > node.options.workerTTL
    }

    /// Test seam: stop writing keep-alives, as a frozen process would.
    func suspendKeepAlive() { state.withLock { $0.keepAliveSuspended = true } }

    func forget(_ key: String) {
        state.withLock { state in
            state.jobs.removeValue(forKey: key)
            state.failedStops.removeValue(forKey: key)
        }
    }

    // MARK: Loops

    /// Runs the worker (a child task of the node's ``Node/run()``): its loops until ``stopLoops()``,
    /// and its runner jobs, each a child task, until ``finishJobs()``. The jobs outlive the loops:
    /// a closing worker stops its loops first, then hands its jobs off one by one. Cancelling this
    /// (a node crash) cancels every job and records nothing.
    func run() async {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.runLoops() }
            for await launch in launches.stream {
                group.addTask {
                    guard let end = await launch.run() else { return }
                    await self.recordEnd(end)
                }
            }
        }
        jobsDone.fire()
    }

    private func runLoops() async {
        await loops.run([
            { [reader, logger] in
                do { try await reader.run() } catch { logger.error("worker inbox reader failed", metadata: ["error": "\(error)"]) }
            },
            { await self.eventLoop() },
            { await self.keepAliveLoop() },
        ])
    }

    /// The worker is done for good (its jobs handed off, stopped or evicted): no job starts here
    /// any more. Waits, up to the stop grace period, for the job tasks left and the ends they
    /// record, so those land while the worker still owns its jobs in Redis.
    func finishJobs() async {
        launches.continuation.finish()
        if !(await jobsDone.wait(for: node.options.jobStopGracePeriod)) {
            logger.warning("worker jobs still running after the stop grace period; the node's end cancels them")
        }
    }

    /// Stops reading events and keeping alive; jobs are not stopped here. Idempotent.
    func stopLoops() async {
        state.withLock { $0.stopped = true }
        await loops.stop()
    }

    private func keepAliveLoop() async {
        let period = node.options.keepAlivePeriod
        // The keep-alive runs often so the history dates a death precisely; checking the inbox
        // and trimming it only needs the reference's pace, half the TTL.
        let housekeepingEvery = max(1, Int((node.options.workerTTL / 2) / period))
        var beat = 0
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: period)
            } catch {
                return
            }
            guard !isStopped else { return }
            if state.withLock({ $0.keepAliveSuspended }) { continue }
            do {
                let attempted = ContinuousClock.now
                let ttl = node.options.workerTTL
                state.withLock { state in
                    if attempted - state.lastKeepAlive > ttl { state.suspectEvicted = true }
                }
                try await node.maps.workerKeepAlive.set(id, String(nowNanos()))
                let (lastEvent, suspect) = state.withLock { state -> (String?, Bool) in
                    state.lastKeepAlive = attempted
                    return (state.lastEvent, state.suspectEvicted)
                }
                if suspect { try await checkEviction() }
                await stopJobsOwnedElsewhere()
                beat += 1
                guard beat % housekeepingEvery == 0 || suspect else { continue }
                try await ensureInbox()
                if let lastEvent {
                    // Handled events are done with: trim them (the inbox has no length cap).
                    try await node.client.send("XTRIM", inbox.key, "MINID", lastEvent)
                }
            } catch {
                logger.warning("worker keep-alive failed", metadata: ["error": "\(error)"])
            }
        }
    }

    /// After a keep-alive gap: Redis says whether a peer evicted this worker. The keep-alive was
    /// written first, so a peer that locks the worker for cleanup after this check sees it alive
    /// and backs off (`Node.cleanUp` checks the keep-alive in Redis under its lock).
    private func checkEviction() async throws {
        let replies = try await node.client.pipeline([
            RedisCommand("HEXISTS", node.maps.workers.contentKey, id),
            RedisCommand("HEXISTS", node.maps.cleanup.contentKey, id),
        ])
        let registered = replies.first?.int == 1, locked = replies.last?.int == 1
        if registered && !locked {
            state.withLock { $0.suspectEvicted = false }
        } else {
            logger.warning("worker may have been evicted while it was unreachable", metadata: ["registered": "\(registered)", "cleanup": "\(locked)"])
            // The node's rebalance evicts it once its replica shows the removal.
            node.rebalanceRequests.continuation.yield()
        }
    }

    /// Routing nodes append with NOMKSTREAM; if Redis lost the inbox, only its owner brings it back.
    private func ensureInbox() async throws {
        if try await node.client.send("EXISTS", inbox.key).int == 0 {
            logger.warning("worker inbox is missing; re-creating it")
            try await inbox.add(name: "i", payload: Envelope(sender: node.id, payload: Array(id.utf8)).encoded())
        }
    }

    /// After Redis lost the pool's state: registry entry, keep-alive, inbox and the ownership and
    /// payloads of every job this worker runs, as they are here.
    func registerAgain() async {
        await serial.withLock {
            guard !isStopped else { return }
            do {
                try await ensureInbox()
                let attempted = ContinuousClock.now
                try await node.maps.workerKeepAlive.set(id, String(nowNanos()))
                state.withLock { $0.lastKeepAlive = attempted }
                if !capabilities.isEmpty { try await node.maps.capabilities.setAndWait(id, Capability.encode(capabilities)) }
                try await node.maps.workers.setAndWait(id, String(createdAtNanos))
                var running = jobs
                if !running.isEmpty {
                    // A job that another worker owns in Redis was requeued while this one was out
                    // of reach (and Redis did not lose it): it runs there now, so it stops here
                    // rather than being recorded over its new owner.
                    let owners = try await node.client.send(
                        RedisCommand(arguments: ["HMGET", node.maps.owners.contentKey] + running.map(\.key))
                    ).array ?? []
                    var taken: Set<String> = []
                    for (job, reply) in zip(running, owners) {
                        guard let owner = reply.string, owner != id else { continue }
                        await stopTakenOver(job.key, owner: owner)
                        taken.insert(job.key)
                    }
                    running.removeAll { taken.contains($0.key) }
                }
                if !running.isEmpty {
                    // Not a start: no job-log entry, and written whatever Redis holds ("2").
                    var commit = Commit()
                    commit.started = running.map { StartedJob(job: $0, flag: "2", logFragment: "") }
                    await settle(try await record(commit), of: commit)
                }
                logger.info("worker registered again", metadata: ["jobs": "\(running.count)"])
            } catch {
                logger.error("could not register the worker again", metadata: ["error": "\(error)"])
            }
        }
    }

    private func eventLoop() async {
        do {
            // Events are handled in inbox order, one at a time; what is already buffered is taken
            // as a batch, and the batch's starts and replies are committed with one script.
            while let batch = try await reader.events.nextBatch(max: 64) {
                await serial.withLock {
                    let commit = await self.handle(batch)
                    await self.send(commit)
                }
                if let last = batch.last { state.withLock { $0.lastEvent = last.id } }
            }
        } catch {
            if !Task.isCancelled { logger.error("worker event loop ended", metadata: ["error": "\(error)"]) }
        }
    }

    /// A reply to append to another node's inbox.
    struct Reply {
        let inbox: String
        let name: String
        let payload: [UInt8]
    }

    /// A job to record as running here.
    struct StartedJob {
        let job: Job
        /// "1" fresh dispatch, "0" requeued (recorded only while the payload exists), "2" registered
        /// again (see ``PoolScripts/commitBatch``).
        let flag: String
        /// The job-log object for a real start; "" for a confirmation (a repeated delivery).
        let logFragment: String
    }

    /// A requeued start that failed: counted in Redis, given up after the maximum.
    struct FailedStart {
        let key: String
        let error: String
        let logFragment: String
    }

    /// The jobs a batch started, the requeued starts that failed, and the replies it owes, written
    /// together by ``send(_:)``.
    struct Commit {
        var started: [StartedJob] = []
        var failed: [FailedStart] = []
        var replies: [Reply] = []

        var isEmpty: Bool { started.isEmpty && failed.isEmpty && replies.isEmpty }

        mutating func merge(_ other: Commit) {
            started += other.started
            failed += other.failed
            replies += other.replies
        }
    }

    /// An event decoded from the inbox.
    private enum Inbound {
        case start(StreamEvent, Envelope, JobRecord)
        case stop(StreamEvent, Envelope, StopRecord)
        case notify(StreamEvent, Envelope, NotificationRecord)
        case malformed(StreamEvent, Envelope, String)
        /// A record whose payload is over the node's limit; a fresh start's dispatcher is told.
        case refused(StreamEvent, Envelope, String, dispatcher: String?)
    }

    /// Handles a batch of inbox events in order and returns what to commit: the jobs started, and
    /// for each event an ack to its routing node and, for a fresh start, the result for the
    /// dispatcher. An event whose outcome is "requeue" gets no reply (the routing node leaves the
    /// pool event pending, so it is delivered again).
    func handle(_ batch: [StreamEvent]) async -> Commit {
        var inbound: [Inbound] = []
        for event in batch where event.name != "i" {
            guard let envelope = Envelope(decoding: event.payload) else {
                logger.error("ignoring a malformed inbox event", metadata: ["event": "\(event.id)"])
                continue
            }
            switch event.name {
            case "j":
                if let record = JobRecord(decoding: envelope.payload) {
                    if let problem = oversized(record.key, record.payload) {
                        inbound.append(.refused(event, envelope, problem, dispatcher: record.requeued ? nil : record.dispatcher))
                    } else {
                        inbound.append(.start(event, envelope, record))
                    }
                } else {
                    inbound.append(.malformed(event, envelope, "malformed job record"))
                }
            case "s":
                if let record = StopRecord(decoding: envelope.payload) {
                    inbound.append(.stop(event, envelope, record))
                } else {
                    inbound.append(.malformed(event, envelope, "malformed stop record"))
                }
            case "n":
                if let record = NotificationRecord(decoding: envelope.payload) {
                    if let problem = oversized(record.key, record.payload) {
                        inbound.append(.refused(event, envelope, problem, dispatcher: nil))
                    } else {
                        inbound.append(.notify(event, envelope, record))
                    }
                } else {
                    inbound.append(.malformed(event, envelope, "malformed notification record"))
                }
            default:
                logger.warning("ignoring an unknown inbox event", metadata: ["name": "\(event.name)"])
            }
        }
        var commit = Commit()
        var index = 0
        while index < inbound.count {
            // A run of consecutive starts is recorded together.
            var starts: [(StreamEvent, Envelope, JobRecord)] = []
            while index < inbound.count, case .start(let event, let envelope, let record) = inbound[index] {
                starts.append((event, envelope, record))
                index += 1
            }
            if !starts.isEmpty {
                let (outcomes, startCommit) = await runStarts(starts.map(\.2))
                commit.merge(startCommit)
                for ((event, envelope, record), outcome) in zip(starts, outcomes) {
                    commit.replies += reply(to: event, from: envelope, outcome: outcome, dispatcher: record.requeued ? nil : record.dispatcher)
                }
                continue
            }
            // A stop must not overtake the recording of this batch's earlier starts.
            if !commit.started.isEmpty, case .stop = inbound[index] {
                await send(commit)
                commit = Commit()
            }
            switch inbound[index] {
            case .stop(let event, let envelope, let record):
                let outcome = await Result(catching: { try await self.stop(record) })
                commit.replies += reply(to: event, from: envelope, outcome: outcome, dispatcher: nil)
                commit.replies += stopReply(to: record, event: event, outcome: outcome)
            case .notify(let event, let envelope, let record):
                commit.replies += reply(to: event, from: envelope, outcome: await Result(catching: { try await self.notify(record) }), dispatcher: nil)
            case .malformed(let event, let envelope, let problem):
                commit.replies += reply(to: event, from: envelope, outcome: .failure(PoolError(.invalidArgument, problem)), dispatcher: nil)
            case .refused(let event, let envelope, let problem, let dispatcher):
                commit.replies += reply(to: event, from: envelope, outcome: .failure(PoolError(.payloadTooLarge, problem)), dispatcher: dispatcher)
            case .start:
                break
            }
            index += 1
        }
        return commit
    }

    /// Why a payload read from the inbox is refused (over ``Node/Options/maxPayloadBytes``), or nil.
    private func oversized(_ key: String, _ payload: [UInt8]) -> String? {
        let limit = node.options.maxPayloadBytes
        guard payload.count > limit else { return nil }
        node.refusePayload(key: key, bytes: payload.count, source: "inbox")
        return "job \(key): payload of \(payload.count) bytes exceeds the worker's limit of \(limit) bytes (Node.Options.maxPayloadBytes)"
    }

    private func reply(to event: StreamEvent, from envelope: Envelope, outcome: Result<Void, any Error>, dispatcher: String?) -> [Reply] {
        var errorText = ""
        if case .failure(let error) = outcome {
            if isRequeue(error) { return [] }
            errorText = describe(error)
        }
        let ack = Envelope(sender: id, payload: AckRecord(eventID: event.id, error: errorText).encoded())
        var replies = [Reply(inbox: node.keySpace.key("stream", Node.inboxName(ofNode: envelope.sender)), name: "a", payload: ack.encoded())]
        if let dispatcher, let poolEventID = event.topic {
            let result = AckRecord(eventID: poolEventID, error: errorText)
            replies.append(Reply(inbox: node.keySpace.key("stream", Node.inboxName(ofNode: dispatcher)), name: "d", payload: result.encoded()))
        }
        return replies
    }

    /// The stop outcome for the node that waits for it (``Node/stopAndWait(key:origin:)``), sent
    /// with the batch's commit: after the stop's own script, so the payload is gone by then.
    private func stopReply(to record: StopRecord, event: StreamEvent, outcome: Result<Void, any Error>) -> [Reply] {
        guard !record.requester.isEmpty, let poolEventID = event.topic else { return [] }
        let result: StopResultRecord
        switch outcome {
        case .success: result = StopResultRecord(eventID: poolEventID, outcome: .stopped, detail: id)
        case .failure(let error) where isRequeue(error): return []
        case .failure(let error): result = StopResultRecord(eventID: poolEventID, outcome: .failed, detail: describe(error))
        }
        return [Reply(inbox: node.keySpace.key("stream", Node.inboxName(ofNode: record.requester)), name: "r", payload: result.encoded())]
    }

    private func isRequeue(_ error: any Error) -> Bool { (error as? PoolError)?.code == .requeue }

    private func describe(_ error: any Error) -> String { (error as? PoolError)?.message ?? "\(error)" }

    /// Records the started jobs, counts the failed requeued starts and appends the replies,
    /// atomically (see ``PoolScripts/commitBatch``), then stops what the pool refused.
    /// NOMKSTREAM: a node that is gone gets nothing (its pool event is delivered again; a vanished
    /// dispatcher no longer waits). If this fails, nothing is acknowledged: the events come back
    /// and, the jobs running here already, are only recorded and acknowledged then.
    func send(_ commit: Commit) async {
        guard !commit.isEmpty else { return }
        do {
            await settle(try await record(commit), of: commit)
        } catch {
            logger.warning("could not record starts and acknowledge events; they will be delivered again", metadata: ["error": "\(error)"])
        }
    }

    /// Runs ``PoolScripts/commitBatch``: → the requeued starts refused (their job ended meanwhile),
    /// the jobs given up and the owners the starts displaced.
    func record(_ commit: Commit) async throws -> CommitResult {
        guard !commit.isEmpty else { return CommitResult() }
        let maps = node.maps
        var keys: [any RedisArgument] = [
            maps.owners.contentKey, maps.owners.channel, maps.payloads.contentKey, maps.payloads.channel,
            maps.pending.contentKey, maps.pending.channel, node.startFailuresKey, node.jobLogKey, maps.cleanup.contentKey,
            maps.requirements.contentKey, maps.requirements.channel, maps.unplaced.contentKey, maps.unplaced.channel,
        ]
        var inboxIndex: [String: Int] = [:]
        let logsStarts = commit.started.contains { !$0.logFragment.isEmpty }
        var arguments: [any RedisArgument] = [
            id, commit.started.count, commit.failed.count, node.options.maxStartFailures,
            logsStarts ? JobLogJSON.head(.started, worker: id, node: node) : "",
            commit.failed.isEmpty ? "" : JobLogJSON.head(.startFailed, worker: id, node: node),
            commit.failed.isEmpty ? "" : JobLogJSON.head(.givenUp, worker: id, node: node),
        ]
        for started in commit.started {
            arguments += [started.job.key, started.job.payload, started.flag, started.logFragment, started.job.requirement ?? ""]
        }
        for failed in commit.failed { arguments += [failed.key, failed.logFragment] }
        for reply in commit.replies {
            let index: Int
            if let known = inboxIndex[reply.inbox] {
                index = known
            } else {
                keys.append(reply.inbox)
                index = keys.count
                inboxIndex[reply.inbox] = index
            }
            arguments += [index, reply.name, reply.payload]
        }
        let reply = try await node.client.evaluate(PoolScripts.commitBatch, keys: keys, arguments: arguments)
        let lists = reply.array ?? []
        func strings(_ index: Int) -> [String] { index < lists.count ? (lists[index].array ?? []).compactMap(\.string) : [] }
        let pairs = strings(2)
        let displaced = stride(from: 0, to: pairs.count - 1, by: 2).map { (owner: pairs[$0], key: pairs[$0 + 1]) }
        return CommitResult(refused: strings(0), givenUp: strings(1), displaced: displaced)
    }

    /// What ``PoolScripts/commitBatch`` reports back.
    struct CommitResult {
        /// Requeued starts the pool refused: their job ended meanwhile.
        var refused: [String] = []
        var givenUp: [String] = []
        /// Starts that replaced another worker as the job's owner (a late or repeated requeue).
        var displaced: [(owner: String, key: String)] = []
    }

    /// After a commit: a requeued start the pool refused belongs to a job a stop ended while the
    /// start ran here; its copy stops again (job log `taken-over`, reason `ended`). Given-up jobs
    /// are reported. A start that replaced another owner ends that owner's run in the job log
    /// (`lost`, reason `displaced`, at its last keep-alive): a dead owner never reports it, a live
    /// one stops its copy at its next keep-alive and logs `taken-over`, which then ends the run.
    func settle(_ result: CommitResult, of commit: Commit) async {
        var displaced: [String: [String]] = [:]
        for (owner, key) in result.displaced where owner != id { displaced[owner, default: []].append(key) }
        for (owner, keys) in displaced.sorted(by: { $0.key < $1.key }) {
            let seen = node.maps.workerKeepAlive.get(owner).flatMap(timestampNanos)
            await node.appendJobLog(.lost, worker: owner, lastSeen: seen, jobs: keys.map {
                JobLogJSON.job($0, origin: JobOrigin(actor: node.options.name, reason: "displaced"), requeued: true)
            })
        }
        var stopped: [String] = []
        for key in result.refused where localJob(key) != nil {
            logger.warning("the job ended while its requeued start ran here; stopping it again", metadata: ["job": "\(key)"])
            do {
                try await executor.stop(key: key)
            } catch {
                logger.warning("stop handler failed", metadata: ["job": "\(key)", "error": "\(error)"])
            }
            forget(key)
            stopped.append(JobLogJSON.job(key, origin: JobOrigin(actor: node.options.name, reason: "ended"), requeued: true))
        }
        await node.appendJobLog(.takenOver, worker: id, jobs: stopped)
        for key in result.givenUp {
            let error = commit.failed.last { $0.key == key }?.error ?? ""
            logger.error(
                "giving up job \(key): its requeued start failed \(node.options.maxStartFailures) times in a row; last error: \(error)",
                metadata: ["job": "\(key)", "error": "\(error)"]
            )
        }
    }

    // MARK: Job events

    /// Starts a job and records it (owner and payload). A failed start leaves no record (a
    /// requeued job keeps the payload it already had, so it is recovered later rather than lost).
    func start(_ record: JobRecord) async throws {
        let (outcomes, commit) = await runStarts([record])
        await settle(try await self.record(commit), of: commit)
        try outcomes[0].get()
    }

    /// Runs the start handler of each job in order and returns the outcomes and the jobs to
    /// record. Recording comes after the handlers, with the acknowledgements: until then the
    /// pool event stays pending, so a worker that dies here has its job delivered elsewhere.
    func runStarts(_ records: [JobRecord]) async -> ([Result<Void, any Error>], Commit) {
        guard !isStopped else { return (records.map { _ in .failure(PoolError(.workerStopped, "worker stopped")) }, Commit()) }
        // Repeated deliveries of a job this worker already runs with the same payload: the
        // ownership is confirmed, the handler is not started twice (and the job log not told).
        var known = state.withLock { state in state.jobs.mapValues(\.payload) }
        var outcomes: [Result<Void, any Error>] = []
        var commit = Commit()
        for record in records {
            let job = Job(
                key: record.key, payload: record.payload, createdAt: record.createdAt,
                isRequeued: record.requeued, dispatcherID: record.dispatcher, workerID: id, requirement: record.requirement
            )
            let flag = record.requeued ? "0" : "1"
            if let requirement = record.requirement, !capabilities.contains(requirement) {
                // Routed by a node whose view of the workers lagged: left unacknowledged, it comes
                // back after the ack grace period and goes to a worker that has the capability.
                logger.notice("start of a job this worker cannot run left for another", metadata: ["job": "\(job.key)", "requirement": "\(requirement)"])
                outcomes.append(.failure(PoolError.requeue))
                continue
            }
            if known[job.key] == job.payload {
                commit.started.append(StartedJob(job: job, flag: flag, logFragment: ""))
                outcomes.append(.success(()))
                continue
            }
            do {
                try await executor.start(job)
                state.withLock { $0.jobs[job.key] = job }
                known[job.key] = job.payload
                commit.started.removeAll { $0.job.key == job.key }
                commit.started.append(StartedJob(job: job, flag: flag, logFragment: JobLogJSON.job(job.key, origin: record.origin, requeued: record.requeued)))
                outcomes.append(.success(()))
            } catch {
                if known[job.key] != nil {
                    // A restart with a new payload failed: the old run is gone too.
                    forget(job.key)
                    known.removeValue(forKey: job.key)
                    commit.started.removeAll { $0.job.key == job.key }
                }
                if record.requeued && !isRequeue(error) {
                    let text = describe(error)
                    commit.failed.append(FailedStart(key: job.key, error: text, logFragment: JobLogJSON.job(job.key, origin: record.origin, requeued: true, error: text)))
                }
                outcomes.append(.failure(error))
            }
        }
        // The worker set may have changed while these starts were in flight: if a job's target
        // is now another worker, a rebalance moves it (checking these jobs, not all of them).
        let view = node.workerView()
        let hasher = node.options.hasher
        if !view.active.isEmpty, commit.started.contains(where: { started in
            view.target(for: started.job.key, requirement: started.job.requirement, hasher: hasher).map { $0 != id } ?? false
        }) {
            node.rebalanceRequests.continuation.yield()
        }
        return (outcomes, commit)
    }

    func stop(_ key: String) async throws { try await stop(StopRecord(key: key)) }

    /// Stops a job this worker runs, for good: job log `stopped`, or `stop-failed` when the handler
    /// throws (the job then keeps running and stays owned).
    func stop(_ record: StopRecord) async throws {
        let key = record.key
        guard localJob(key) != nil else { throw PoolError.requeue }
        do {
            try await executor.stop(key: key)
        } catch {
            if !isRequeue(error) {
                state.withLock { $0.failedStops[key] = .stop(record.origin) }
                await node.appendJobLog(.stopFailed, worker: id, jobs: [JobLogJSON.job(key, origin: record.origin, error: describe(error))])
            }
            throw error
        }
        forget(key)
        try await releaseOwnership([(key, JobLogJSON.job(key, origin: record.origin))], deletePayloads: true, log: .stopped)
    }

    func notify(_ record: NotificationRecord) async throws {
        guard !isStopped else { return }
        guard localJob(record.key) != nil else { throw PoolError.requeue }
        try await executor.notify(key: record.key, payload: record.payload)
    }

    /// A runner job ended by itself (`finished`, `failed`), or after every stop waiting for it
    /// gave up: the job leaves the pool, as the failed stop meant it to (a handoff moves it now).
    /// Under `serial`, so the event handling and handoffs see the job either running or recorded.
    func recordEnd(_ end: JobEnd) async {
        await serial.withLock {
            // A stop or a newer start that took the run records it instead; a job forgotten here
            // (a stop that failed while the worker was leaving, a restart that failed) was given up.
            guard end.claim(), let job = localJob(end.key) else { return }
            let failedStop = state.withLock { $0.failedStops[end.key] }
            forget(end.key)
            let own = { (reason: String) in JobOrigin(actor: self.node.options.name, reason: reason) }
            let (log, fragment): (JobLogEntry.Kind, String)
            switch (end.kind, failedStop) {
            case (.finished, _):
                (log, fragment) = (.finished, JobLogJSON.job(end.key, origin: own("finished")))
            case (.failed(let text), _):
                (log, fragment) = (.failed, JobLogJSON.job(end.key, origin: own("failed"), error: text))
            case (.stopped, .handoff(let reason)?):
                await handOffEnded(job, reason: reason)
                return
            case (.stopped, .stop(let origin)?):
                (log, fragment) = (.stopped, JobLogJSON.job(end.key, origin: origin))
            case (.stopped, nil):
                (log, fragment) = (.stopped, JobLogJSON.job(end.key, origin: own("stopped")))
            }
            do {
                try await releaseOwnership([(end.key, fragment)], deletePayloads: true, log: log, ownedOnly: true)
            } catch {
                logger.error("could not remove an ended job from the pool", metadata: ["job": "\(end.key)", "error": "\(error)"])
            }
        }
    }

    /// A job whose handoff stop failed ended late: the handoff completes now.
    private func handOffEnded(_ job: Job, reason: String) async {
        let origin = JobOrigin(actor: node.options.name, reason: reason)
        do {
            try await releaseOwnership([(job.key, JobLogJSON.job(job.key, origin: origin, requeued: job.isRequeued))], deletePayloads: false, log: .released)
        } catch {
            logger.warning("could not release ownership", metadata: ["job": "\(job.key)", "error": "\(error)"])
        }
        for failed in await node.requeueAll([job], origin: origin) {
            logger.error("could not requeue a job; orphan recovery will restart it", metadata: ["job": "\(failed.key)"])
        }
    }

    /// Gives jobs up (see ``PoolScripts/release``); the job log gets `log` for those whose
    /// ownership or payload this removed, each with its fragment. With `ownedOnly`, payloads go
    /// only where the ownership still named this worker: a job that ended here by itself after
    /// peers moved it (this worker paused, evicted) keeps running, payload and all, where it moved.
    func releaseOwnership(
        _ jobs: [(key: String, logFragment: String)], deletePayloads: Bool, log: JobLogEntry.Kind, ownedOnly: Bool = false
    ) async throws {
        guard !jobs.isEmpty else { return }
        let maps = node.maps
        let mode = deletePayloads ? (ownedOnly ? "2" : "1") : "0"
        var arguments: [any RedisArgument] = [id, mode, JobLogJSON.head(log, worker: id, node: node)]
        for job in jobs { arguments += [job.key, job.logFragment] }
        _ = try await node.client.evaluate(
            PoolScripts.release,
            keys: [
                maps.owners.contentKey, maps.owners.channel, maps.payloads.contentKey, maps.payloads.channel,
                node.startFailuresKey, node.jobLogKey, maps.requirements.contentKey, maps.requirements.channel,
                maps.unplaced.contentKey, maps.unplaced.channel,
            ],
            arguments: arguments
        )
    }

    // MARK: Handoffs

    /// Moves the jobs whose hash target is another active worker: each is stopped here and its
    /// ownership released before the start event for the new owner is appended, so a job never
    /// runs on both. The payload stays throughout.
    func rebalance(view: WorkerView) async {
        await serial.withLock {
            guard !isStopped, view.active.contains(id) else { return }
            let hasher = node.options.hasher
            // A job no active worker can run (not even this one, by the pool's record) stays.
            let moving = state.withLock { Array($0.jobs.values) }.filter { job in
                view.target(for: job.key, requirement: job.requirement, hasher: hasher).map { $0 != id } ?? false
            }
            guard !moving.isEmpty else { return }
            logger.debug("rebalancing", metadata: ["moving": "\(moving.count)"])
            let released = await releaseForHandoff(moving, reason: "rebalance", keepOnStopFailure: true)
            let failed = await node.requeueAll(released, origin: JobOrigin(actor: node.options.name, reason: "rebalance"))
            for job in failed {
                // Nowhere else to go: run it here again rather than lose it. Should this start
                // fail too, the payload stays and orphan recovery restarts the job.
                do {
                    let requeued = Job(
                        key: job.key, payload: job.payload, createdAt: job.createdAt,
                        isRequeued: true, dispatcherID: job.dispatcherID, workerID: id, requirement: job.requirement
                    )
                    try await executor.start(requeued)
                    state.withLock { $0.jobs[job.key] = requeued }
                    var commit = Commit()
                    let origin = JobOrigin(actor: node.options.name, reason: "requeue-failed")
                    commit.started = [StartedJob(job: requeued, flag: "0", logFragment: JobLogJSON.job(job.key, origin: origin, requeued: true))]
                    await settle(try await record(commit), of: commit)
                } catch {
                    logger.error("could not restart a job after a failed handoff; orphan recovery will", metadata: ["job": "\(job.key)", "error": "\(error)"])
                }
            }
        }
    }

    /// Stops `jobs` here, then releases their ownership (payloads stay) with job log `released`,
    /// so that the requeue the caller appends next never makes a job run on two workers at once.
    /// A failing stop handler logs `stop-failed`; with `keepOnStopFailure` the job then stays here,
    /// otherwise it is forgotten and moves all the same (the worker is leaving).
    /// A runner job that already ended by itself (or is gone) is left to the record of its end:
    /// moving it would run it again. Called under `serial`, like that record.
    /// → the jobs released.
    func releaseForHandoff(_ jobs: [Job], reason: String, keepOnStopFailure: Bool) async -> [Job] {
        let origin = JobOrigin(actor: node.options.name, reason: reason)
        var released: [Job] = []
        var stopFailures: [String] = []
        for job in jobs where localJob(job.key) != nil && !executor.hasEnded(key: job.key) {
            do {
                try await executor.stop(key: job.key)
            } catch {
                logger.warning("stop handler failed", metadata: ["job": "\(job.key)", "error": "\(error)", "reason": "\(reason)"])
                stopFailures.append(JobLogJSON.job(job.key, origin: origin, requeued: job.isRequeued, error: describe(error)))
                if keepOnStopFailure {
                    state.withLock { $0.failedStops[job.key] = .handoff(reason: reason) }
                    continue
                }
            }
            forget(job.key)
            released.append(job)
        }
        await node.appendJobLog(.stopFailed, worker: id, jobs: stopFailures)
        do {
            try await releaseOwnership(released.map { ($0.key, JobLogJSON.job($0.key, origin: origin, requeued: $0.isRequeued)) }, deletePayloads: false, log: .released)
        } catch {
            // The requeued start overwrites the ownership anyway.
            logger.warning("could not release ownership", metadata: ["error": "\(error)"])
        }
        return released
    }

    /// Stops, here only, the jobs whose ownership another worker took over. That happens when a
    /// start was delivered twice (an ack lost in a Redis outage, a slow start redelivered after
    /// the ack grace period) and the second delivery went to another worker: the registry names
    /// one owner per job, and the job runs there. Checked every keep-alive, so a duplicate lasts
    /// at most half a worker TTL (the reference let it run until a rebalance).
    ///
    /// Also stops the jobs a stop ended while this worker looked dead (paused, cut off from
    /// Redis): no owner, and the tombstone the routing node left names this worker. Without the
    /// tombstone a missing owner proves nothing: Redis may have lost its state, and
    /// ``registerAgain()`` restores what runs here.
    func stopJobsOwnedElsewhere() async {
        let owners = node.maps.owners
        let payloads = node.maps.payloads
        let suspects = state.withLock { state in
            state.jobs.keys.filter { key in
                if let owner = owners.string(key) { return owner != id }
                return payloads.get(key) == nil
            }
        }
        guard !suspects.isEmpty else { return }
        await serial.withLock {
            for key in suspects where localJob(key) != nil {
                // The replica may lag behind this worker's own start: Redis has the last word.
                // Starts are recorded under `serial`, so a job running here is in Redis by now.
                let tombstone = node.endedKey(key)
                guard let replies = try? await node.client.pipeline([
                    RedisCommand("HGET", owners.contentKey, key), RedisCommand("GET", tombstone),
                ]), replies.count == 2 else { continue }
                if let owner = replies[0].string, !replies[0].isNull {
                    guard owner != id else { continue }
                    // Every real owner is registered: removing a worker removes its owner entries
                    // in the same script. An entry naming no registered worker was written by
                    // something else; the job runs here, so it is claimed back (compare-and-set:
                    // a real owner written meanwhile wins) instead of being stopped.
                    let registered = (try? await node.client.send("HEXISTS", node.maps.workers.contentKey, owner).int) ?? 1
                    if registered == 0, let (_, claimed) = try? await owners.testAndSet(key, test: owner, id), claimed {
                        Counter(label: "rota_owner_entries_repaired").increment()
                        logger.warning("the job's owner entry named no registered worker; claimed it back", metadata: ["job": "\(key)", "entry": "\(owner.prefix(200))"])
                        continue
                    }
                    await stopTakenOver(key, owner: owner)
                } else if replies[1].string == id {
                    logger.warning("a stop ended this job while the worker looked dead; stopping it here", metadata: ["job": "\(key)"])
                    await stopHereOnly([key], reason: "ended")
                    _ = try? await node.client.send("DEL", tombstone)
                }
            }
        }
    }

    /// Stops a job Redis shows owned by another worker (it runs there) and forgets it here,
    /// without touching its ownership or payload. Called under `serial`.
    private func stopTakenOver(_ key: String, owner: String) async {
        logger.warning("job was taken over by another worker; stopping it here", metadata: ["job": "\(key)", "owner": "\(owner)"])
        await stopHereOnly([key], reason: "taken-over")
    }

    /// Stops jobs here without touching the pool's state (they belong to others now): job log
    /// `taken-over` with `reason`.
    private func stopHereOnly(_ keys: [String], reason: String) async {
        let origin = JobOrigin(actor: node.options.name, reason: reason)
        var logged: [String] = []
        for key in keys {
            do {
                try await executor.stop(key: key)
            } catch {
                logger.warning("stop handler failed", metadata: ["job": "\(key)", "error": "\(error)"])
            }
            forget(key)
            logged.append(JobLogJSON.job(key, origin: origin))
        }
        await node.appendJobLog(.takenOver, worker: id, jobs: logged)
    }

    /// Shutdown: stops every local job for good (ownership and payload removed).
    func stopAllJobs() async {
        let current = jobs
        let origin = JobOrigin(actor: node.options.name, reason: "shutdown")
        var stopped: [(key: String, logFragment: String)] = []
        for job in current {
            do {
                try await executor.stop(key: job.key)
            } catch {
                logger.warning("stop handler failed during shutdown", metadata: ["job": "\(job.key)", "error": "\(error)"])
            }
            forget(job.key)
            stopped.append((job.key, JobLogJSON.job(job.key, origin: origin)))
        }
        do {
            try await releaseOwnership(stopped, deletePayloads: true, log: .stopped)
        } catch {
            logger.error("could not remove stopped jobs from the pool", metadata: ["error": "\(error)"])
        }
    }

    /// Stops every local job without touching the pool's maps (the worker was evicted: its jobs
    /// already belong to others).
    func stopJobsLocally() async {
        await stopHereOnly(jobs.map(\.key), reason: "evicted")
    }
}

extension Result where Failure == any Error {
    init(catching body: () async throws -> Success) async {
        do {
            self = .success(try await body())
        } catch {
            self = .failure(error)
        }
    }
}
