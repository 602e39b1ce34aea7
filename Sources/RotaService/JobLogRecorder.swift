import Foundation
import Logging
import Metrics
import Rota
import RotaRedis
import RotaStore
import RotaStreams

/// Records the pool's job log (what workers really did: starts, stops, failed stops, handoffs,
/// lost workers, given-up jobs, jobs that finished or failed by themselves, jobs waiting unplaced
/// for a capable worker) into this node's SQLite, as the facts `job_runs`,
/// `job_state_changes` and `rota jobs --at` answer from. Every node records every entry
/// (idempotent by entry ID and position).
struct JobLogRecorder: Sendable {
    let node: Node
    let store: PlanStore
    let logger: Logger

    func run() async {
        let stream: RedisStream
        do {
            stream = try RedisStream(name: JobLogEntry.streamName, keySpace: try RedisKeySpace(node.pool), client: node.client,
                options: .init(maxLength: JobLogEntry.maxLength))
        } catch {
            logger.error("cannot follow the pool's job log", metadata: ["error": "\(error)"])
            return
        }
        let pool = node.pool
        let follower = StreamFollower(stream: stream, store: store, pool: pool, logger: logger)
        await follower.run { [store, logger] batch in
            var events: [JobEventRecord] = []
            for entry in batch {
                do {
                    events += Self.records(try JobLogEntry.decode(entry.payload), entryID: entry.id, pool: pool)
                } catch {
                    Counter(label: "rota_history_entries_skipped", dimensions: [("stream", JobLogEntry.streamName)]).increment()
                    logger.error("ignoring an unreadable job log entry", metadata: ["event": "\(entry.id)", "error": "\(error)"])
                }
            }
            do {
                try store.recordJobEvents(events)
                return true
            } catch {
                logger.error("could not record job log entries", metadata: ["entries": "\(batch.count)", "error": "\(error)"])
                return false
            }
        }
    }

    static func records(_ entry: JobLogEntry, entryID: String, pool: String) -> [JobEventRecord] {
        entry.jobs.enumerated().compactMap { index, job in
            guard let kind = JobEventKind(rawValue: entry.kind.rawValue) else { return nil }
            return JobEventRecord(
                pool: pool, entryID: entryID, index: index, job: job.job, kind: kind, worker: entry.worker, node: entry.node,
                nodeID: entry.nodeID, at: entry.at, actor: job.actor, reason: job.reason, round: job.round, requeued: job.requeued,
                error: job.error, lastSeen: entry.lastSeen)
        }
    }
}
