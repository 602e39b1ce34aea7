import Foundation
import Logging
import Metrics
import RotaRedis
import RotaStore
import RotaStreams

/// Follows one of the pool's streams into this node's SQLite: from the cursor the store keeps
/// (from the oldest entry the first time), batch by batch, moving the cursor only once a batch is
/// recorded. The streams are capped, so a node away long enough misses entries: when Redis says
/// entries after the cursor were deleted (`XINFO STREAM`'s `max-deleted-entry-id`, Redis 7), the
/// range is recorded as a gap that `rota history verify` reports and `rota history sync` fills.
struct StreamFollower: Sendable {
    let stream: RedisStream
    let store: PlanStore
    let pool: String
    let logger: Logger
    /// How often a running follower checks again for a gap (the reader fell behind the trimming).
    var gapCheckInterval: Duration = .seconds(60)

    /// Reads until cancelled. `record` gets each batch and returns whether it is stored (unreadable
    /// entries skipped count as stored). After a batch that could not be stored the cursor stays
    /// where it was for the rest of this run, so the next run reads that batch again (recording
    /// is idempotent).
    func run(_ record: @escaping @Sendable ([StreamEvent]) async -> Bool) async {
        do {
            let cursor = try? store.streamCursor(pool: pool, stream: stream.name)
            var known = cursor
            await checkGap(after: known)
            let reader = try StreamReader(stream: stream,
                options: .init(blockDuration: .seconds(2), maxPolled: 1000, start: cursor.map { .after($0) } ?? .oldest), logger: logger)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await reader.run() }
                defer { group.cancelAll() }
                var lastCheck = ContinuousClock.now
                var frozen = false
                while let batch = try await reader.events.nextBatch(max: 1000) {
                    if ContinuousClock.now - lastCheck >= gapCheckInterval {
                        lastCheck = ContinuousClock.now
                        await checkGap(after: known)
                    }
                    if await !record(batch) { frozen = true }
                    guard !frozen, let last = batch.last?.id else { continue }
                    do {
                        try store.setStreamCursor(pool: pool, stream: stream.name, lastID: last)
                        known = last
                    } catch {
                        logger.warning("could not save a stream cursor", metadata: ["stream": "\(stream.name)", "error": "\(error)"])
                    }
                }
            }
        } catch {
            if !Task.isCancelled { logger.error("following a stream stopped", metadata: ["stream": "\(stream.name)", "error": "\(error)"]) }
        }
    }

    /// Records a gap when Redis deleted entries after `cursor` (this node never read them).
    /// Trimming removes the oldest entries, so the cursor's own entry still being there proves
    /// nothing after it was trimmed; when it is gone, what lies between it and the first entry
    /// left is recorded as a gap. (Redis 7.0 does not count trimmed entries in
    /// `max-deleted-entry-id`, only `XDEL`ed ones, which are checked too.)
    func checkGap(after cursor: String?) async {
        guard let cursor, let cursorID = StreamEntryID(cursor) else { return }
        let before: String
        do {
            let replies = try await stream.client.pipeline([
                RedisCommand("XRANGE", stream.key, cursor, cursor),
                RedisCommand("XRANGE", stream.key, "-", "+", "COUNT", "1"),
                RedisCommand("XINFO", "STREAM", stream.key),
            ])
            guard replies.count == 3 else { return }
            var info: [String: RedisValue] = [:]
            let items = replies[2].array ?? []
            var index = 0
            while index + 1 < items.count {
                if let name = items[index].string { info[name] = items[index + 1] }
                index += 2
            }
            let first = replies[1].array?.first?.array?.first?.string
            let deleted = info["max-deleted-entry-id"]?.string.flatMap(StreamEntryID.init)
            let cursorKept = !(replies[0].array ?? []).isEmpty
            if let deleted, deleted > cursorID {
                before = first ?? (deleted.successor ?? deleted).description
            } else if !cursorKept, let first, let firstID = StreamEntryID(first), firstID > cursorID {
                before = first
            } else if !cursorKept, first == nil, let last = info["last-generated-id"]?.string.flatMap(StreamEntryID.init), last > cursorID {
                // Everything was trimmed, the entries after the cursor too.
                before = (last.successor ?? last).description
            } else {
                return
            }
        } catch {
            // No stream yet (nothing published), or Redis unreachable: nothing to compare.
            return
        }
        do {
            guard try store.recordGap(pool: pool, stream: stream.name, after: cursor, before: before, at: Date()) else { return }
            Counter(label: "rota_history_gaps", dimensions: [("pool", pool), ("stream", stream.name)]).increment()
            logger.error("entries of a pool stream were trimmed before this node recorded them: history gap recorded",
                metadata: ["stream": "\(stream.name)", "after": "\(cursor)", "before": "\(before)"])
        } catch {
            logger.error("could not record a history gap", metadata: ["stream": "\(stream.name)", "error": "\(error)"])
        }
    }
}
