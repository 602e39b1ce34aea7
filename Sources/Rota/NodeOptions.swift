import Foundation
import Logging

extension Node {
    /// How a node takes part in its pool. The defaults are the reference pool's documented ones.
    public struct Options: Sendable {
        /// How long an event may stay unacknowledged before it is delivered again. Dispatches wait
        /// twice this for a start result; pending-dispatch guards last twice this.
        public var ackGracePeriod: Duration = .seconds(20)
        /// A client-only node dispatches, stops and notifies, but routes nothing and hosts no workers.
        public var clientOnly = false
        /// How long a read of the pool stream or the node inbox blocks in Redis.
        public var jobSinkBlockDuration: Duration = .seconds(5)
        /// How many processed events the pool stream keeps (for inspection) before routing nodes
        /// trim them. Events not yet routed or acknowledged are never trimmed, however many there
        /// are (the reference's `MAXLEN` cap dropped them, losing jobs); dispatches are not refused.
        public var maxQueuedJobs = 1000
        /// The longest one attempt to requeue a closing worker's jobs waits.
        public var workerShutdownTTL: Duration = .seconds(120)
        /// Liveness window of workers and nodes: a keep-alive older than this is a death. Nodes
        /// keep alive every half of it, workers every ``keepAliveInterval``; dead-worker and
        /// dead-node sweeps run every period.
        public var workerTTL: Duration = .seconds(10)
        /// How often workers write their keep-alive (at most every half ``workerTTL``). A worker
        /// found dead has its jobs' runs end at its last keep-alive in the job log (`lost`,
        /// `last_seen`): this is how precisely the history dates the end of a killed worker's jobs.
        public var keepAliveInterval: Duration = .milliseconds(500)
        /// A human name for this node (shown by `rota status`, written into the job log); the
        /// host name by default, so it stays the same across restarts. Node IDs stay unique
        /// whatever the names.
        public var name: String = ProcessInfo.processInfo.hostName
        /// A requeued job (a handoff or recovery) whose start fails this many times in a row, on
        /// any workers, is given up: removed from the pool and logged (`given-up`), instead of
        /// being retried forever. A successful start resets the count. Fresh dispatches are not
        /// counted: their dispatcher gets the error and nothing is kept.
        public var maxStartFailures = 5
        /// How long a ``JobRunner`` job may take to end once a stop cancelled it
        /// (``JobContext/stopGracePeriod``).
        public var jobStopGracePeriod: Duration = .seconds(10)
        /// The largest payload a dispatch or notification accepts (bytes). Payloads are copied to
        /// every routing node's memory: a limit keeps one bad caller from exhausting them. It also
        /// applies to what the node reads from Redis: a larger payload in the pool's payload map,
        /// pool stream or a worker inbox (written there by something other than a node) is skipped,
        /// logged with its key and counted (`rota_payloads_refused`, `rota_map_values_skipped`),
        /// never loaded or started.
        public var maxPayloadBytes = 1 << 20
        /// The most jobs the pool may hold, running or being dispatched, checked atomically when a
        /// fresh dispatch is admitted (by the dispatching node's own setting): past it
        /// ``Node/dispatch(key:payload:origin:)`` throws ``PoolError/Code/tooManyJobs``. Requeues
        /// and handoffs of jobs already in the pool are never refused. Every routing node holds
        /// every job's payload and owner in memory, so this bounds them too.
        public var maxJobs = 100_000
        /// Picks a job's worker among the active ones. Replace it to pin jobs in tests.
        public var hasher: any JobHasher = JumpHasher()
        public var logger = Logger(label: "rota.pool", factory: { _ in SwiftLogNoOpLogHandler() })

        public init() {}

        /// The period of worker keep-alives: ``keepAliveInterval`` within 10 ms…half ``workerTTL``.
        var keepAlivePeriod: Duration {
            max(.milliseconds(10), min(keepAliveInterval, workerTTL / 2))
        }
    }
}
