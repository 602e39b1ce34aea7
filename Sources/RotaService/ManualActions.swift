import Foundation
import RotaPlans
import RotaRedis
import RotaStore
import RotaStreams

/// Actions taken by hand (`rota dispatch`, `rota stop`, `rota notify`) go into the history as
/// one-action rounds of the pseudo-producer ``producer`` on the pool's history stream, so every
/// node records them, chained, like the planners' rounds: who (`user@host`), what, when, and the
/// outcome the worker confirmed.
public struct ManualActionLog: Sendable {
    /// Not a valid producer name in a plan file (`@` is refused), so it never names a real one.
    public static let producer = "@manual"

    let pool: String
    let stream: RedisStream
    let clockKey: String
    let signer: HistoryEntrySigner?

    /// With `historyKey` (the pool's history key), actions are signed: the pool's nodes that have
    /// the key record only signed entries.
    public init(pool: String, client: RedisClient, historyKey: HistoryKey? = nil) throws(ServiceError) {
        do {
            stream = try RoundLog.historyStream(pool: pool, client: client)
            clockKey = try RedisKeySpace(pool).key("manual-clock")
        } catch {
            throw ServiceError(.invalidArgument, "pool \(pool): \(error)", underlying: error)
        }
        self.pool = pool
        signer = historyKey.map { HistoryEntrySigner(key: $0, pool: pool) }
    }

    /// A strictly increasing millisecond per pool: a manual round's tick is its fencing token
    /// (one round per producer and tick), and two actions in the same millisecond must both count.
    /// The reply is range-checked too: a tick outside a day of now falls back to now.
    static let clockScript = RedisScript("""
        local t = tonumber(ARGV[1])
        local last = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
        -- A value more than a day ahead is not this clock's (a poisoned key): not followed.
        if t <= last and last < t + 86400000 then t = last + 1 end
        redis.call('SET', KEYS[1], tostring(t))
        return t
        """)

    /// Publishes one manual action with its confirmed outcome. `startedAt` is when the action was
    /// asked for; the round finishes now.
    public func record(job: String, action: ActionKind, outcome: ActionOutcome, error: String? = nil, payloadHash: String? = nil,
                       actor: String, startedAt: Date) async throws {
        let now = Date()
        let millis = Int64((startedAt.timeIntervalSince1970 * 1000).rounded())
        let clock = try await stream.client.evaluate(Self.clockScript, keys: [clockKey], arguments: [String(millis)]).int.map(Int64.init)
        let tickMS = clock.flatMap { (millis - 86_400_000...millis + 86_400_000).contains($0) ? $0 : nil } ?? millis
        let tick = Date(timeIntervalSince1970: Double(tickMS) / 1000)
        var round = RoundRecord(roundID: "\(pool)/\(Self.producer)/\(tickMS)", pool: pool, producer: Self.producer, revision: 0,
            node: actor, tick: tick, startedAt: startedAt, planned: [PlannedAction(job: job, action: action, payloadHash: payloadHash)])
        round.finishedAt = now
        switch outcome {
        case .started: round.started = 1
        case .stopped: round.stopped = 1
        case .failed, .stopFailed: round.failed = 1
        // Unplaced: the job waits for a worker with its handler; neither started nor failed.
        case .alreadyRunning, .notFound, .notified, .unplaced: break
        }
        round.error = nil
        let actions = [ActionRecord(job: job, action: action, outcome: outcome, error: error, payloadHash: payloadHash, at: now,
            reason: Reason.manual, actor: actor)]
        let payload = try HistoryWire.encode(round, actions)
        _ = try await stream.add(name: HistoryWire.entryName, payload: payload,
            signature: signer?.signature(name: HistoryWire.entryName, payload: payload))
    }
}
