import Foundation
import GRDB

// MARK: - The tamper-evident history
//
// Two SHA-256 hash chains run over the `round` table (migration 0003_history_chain):
//
// - The round chain, in insertion order (`round.id`). When a round's intent is recorded:
//     intent_hash = SHA-256("rota.intent.v1" ‖ intent text)
//     hash        = SHA-256("rota.round.v1" ‖ prev_hash ‖ round_id ‖ pool ‖ producer ‖ revision ‖ node
//                           ‖ tick_ms ‖ started_ms ‖ intent_hash)
//   where prev_hash is the hash of the round appended before it (32 zero bytes for the first).
//   These fields never change after the intent is written.
// - The outcome chain, in the order outcomes are recorded (`round.outcome_seq`: a round's outcome
//   may come long after rounds recorded later, and rounds arrive from several nodes in any order).
//   When a round's outcome is recorded:
//     actions_hash = SHA-256("rota.actions.v1" ‖ for each action row in seq order: seq ‖ job key ‖
//                            action ‖ outcome ‖ error ‖ payload_hash ‖ at_ms ‖ … ‖ count)
//     outcome_hash = SHA-256("rota.outcome.v1" ‖ outcome_prev ‖ hash ‖ outcome_seq ‖ finished_ms
//                            ‖ started ‖ stopped ‖ failed ‖ error ‖ actions_hash)
//   Chaining the outcomes too means an outcome cannot be erased (the round turned back into an
//   unfinished one) without breaking the chain; `hash` in it binds the outcome to its round.
//
// Fields are encoded compactly but unambiguously (hashing is most of what the chain costs when
// recording): integers as zigzag LEB128 varints, texts as a varint of length + 1 (0 for NULL) and
// their UTF-8 bytes, an action's kind and outcome as one byte (0 followed by the text for a value
// this version does not know), hashes as their 32 bytes. Action rows are hashed with their job's
// key, not its number, so renaming a row of `job` alters every round that acted on it.
//
// Each row stores the previous hash it was chained to (`prev_hash`, `outcome_prev`), so
// verification tells an altered row (its hashes do not match its own content) from a missing one
// (a row that matches its content but links to no remaining row). `history_chain` holds the head
// of each chain (the last hash appended), so deleting the newest rounds shows too.
//
// Pruning deletes rounds by age or count, which need not be a prefix of the insertion order. For
// every gap it leaves between remaining entries, it records a bridge (`history_chain_bridge`):
// "the entry linking to `to_hash` follows the entry whose hash is `from_hash`; `pruned` entries
// were removed between them". A prune only bridges gaps whose links were intact: a gap that was
// already there (a row deleted by hand) stays visible.
//
// A third chain (migration 0006_audit_history) runs over the pool's job events (`job_event`), in
// insertion order (`job_event.id`), built like the round chain:
//     hash = SHA-256("rota.event.v1" ‖ prev_hash ‖ pool ‖ entry_id ‖ idx ‖ job key ‖ kind ‖ worker ‖ node
//                    ‖ node_id ‖ at_ms ‖ actor ‖ reason ‖ round_id ‖ requeued ‖ error [‖ "last_seen" ‖ last_seen_ms])
// (`last_seen_ms`, migration 0007, only when set)
// with its head in `history_chain.event_head` and its bridges under the name 'event'. An action's
// `actor` (0006) enters its row's hash only when set, as `reason` (0005) does.
//
// Rounds recorded before migration 0003 have no hashes: they are "unchained". The migration notes
// the highest round id at that time (`history_chain.unchained_through`); a round without hashes
// is accepted as unchained only up to that id and before the first chained round, otherwise it
// was inserted or altered by hand. The first chained round links to 32 zero bytes. Outcomes of
// unchained rounds are not chained.
//
// Prunes themselves are recorded in a fourth chain, authenticated with the pool's history key
// when one is given (PruneChain.swift): bridge rows alone would hide a deletion.
//
// What this does and does not protect against: any change made to the file without going through
// the store (raw SQL, a hex editor, a restored backup missing rows) breaks a hash or a link. The
// chains use no secret: someone who knows the scheme can recompute every hash after an edit. A
// head kept elsewhere (`rota history head`, checked by `rota history verify --expect-head`)
// closes that gap up to the moment it was taken; the history key closes it for prunes.

/// The outcome of ``PlanStore/verifyHistory()``.
public struct HistoryVerification: Sendable, Hashable {
    /// Chained rounds checked: all of them when the history is intact, those before the problem otherwise.
    public var verified: Int
    /// Rounds recorded before the chain existed (a database older than migration 0003_history_chain).
    public var unchained: Int
    /// Rounds removed by pruning, bridged by the chain.
    public var pruned: Int
    /// The round chain's head: the hash of the last round recorded (hex).
    public var head: String
    /// The outcome chain's head (hex).
    public var outcomeHead: String
    /// The first altered or missing row, in insertion order (rounds first, then job events); nil
    /// when the history is intact.
    public var problem: HistoryProblem?
    /// Job events checked (the pool's job log, migration 0006).
    public var events = 0
    /// Job events removed by pruning, bridged by the event chain.
    public var eventsPruned = 0
    /// The event chain's head (hex).
    public var eventHead = ""
    /// Holes this node knows its history has (entries trimmed from a stream before it read them),
    /// not filled since: the chains cannot show what never reached this database.
    public var gaps: [HistoryGap] = []
    /// Prunes recorded (migration 0008): each a record chained to the one before, over the
    /// bridges it left.
    public var prunes = 0
    /// The prune chain's head (hex).
    public var pruneHead = ""
    /// Prune records without the history key's tag: made without a key (accepted, when a key
    /// checks the history, only before the first prune made with it).
    public var unauthenticatedPrunes = 0
    /// Bridge rows written by prunes before migration 0008, which no prune record covers yet:
    /// accepted as they were, unauthenticated.
    public var legacyBridges = 0
    /// The ID of the history key the prune records were checked with; nil without a key.
    public var keyID: String?

    public var isIntact: Bool { problem == nil }
    /// Intact and without unfilled gaps.
    public var isComplete: Bool { problem == nil && gaps.isEmpty }
}

/// The first thing `verifyHistory` found wrong.
public struct HistoryProblem: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: String, Sendable, Hashable {
        /// A round whose content no longer matches its hashes.
        case altered
        /// A gap in a chain: a round (or a round's outcome) deleted, or the newest ones.
        case missing
    }

    /// Which part of a round no longer matches its hash.
    public enum Part: String, Sendable, Hashable {
        /// round_id, pool, producer, revision, node, tick, start (or the row's chain hashes).
        case identity
        /// The planned actions.
        case intent
        /// Finished time, counts, error (or the outcome's chain hashes).
        case outcome
        /// The action rows (any of their columns, their number, their job's key).
        case actions
    }

    public var kind: Kind
    /// For altered rounds.
    public var part: Part?
    /// The altered round, or the round right after the gap (nil when the gap is at the end).
    public var roundID: String?
    /// That round's row id (`round.id`, the insertion order), or the job event's (`job_event.id`).
    public var id: Int64?
    /// For a problem in the event chain: the altered job event, or the one right after the gap,
    /// as `pool entry-id#index` (nil when the gap is at the end).
    public var event: String?
    /// Which chain: round, outcome or event.
    public var chain = "round"
    /// The row ids of the missing rounds, when they can be told (a gap between two remaining rounds).
    public var missingIDs: ClosedRange<Int64>?
    /// One line for people.
    public var message: String

    public var description: String { message }
}

/// Builds the messages the chain hashes, in one reused buffer.
struct ChainHasher {
    static let genesis = [UInt8](repeating: 0, count: 32)

    private var buffer: [UInt8] = []
    private var actionCount: Int64 = 0

    init() { buffer.reserveCapacity(8192) }

    mutating func intentHash(_ intent: String?) -> [UInt8] {
        start("rota.intent.v1")
        append(intent)
        return SHA256.hash(buffer)
    }

    mutating func roundHash(
        prev: [UInt8], roundID: String, pool: String, producer: String, revision: Int64, node: String, tickMS: Int64, startedMS: Int64,
        intentHash: [UInt8]
    ) -> [UInt8] {
        start("rota.round.v1")
        append(bytes: prev)
        append(roundID)
        append(pool)
        append(producer)
        append(revision)
        append(node)
        append(tickMS)
        append(startedMS)
        append(bytes: intentHash)
        return SHA256.hash(buffer)
    }

    mutating func startActions() {
        start("rota.actions.v1")
        actionCount = 0
    }

    mutating func addAction(seq: Int64, job: String?, action: String, outcome: String, error: String?, payloadHash: String?, atMS: Int64,
                            reason: String?, actor: String?) {
        append(seq)
        append(job)
        append(code: Self.code(action: action), action)
        append(code: Self.code(outcome: outcome), outcome)
        append(error)
        append(payloadHash)
        append(atMS)
        // Appended only when set (migration 0005): actions recorded before it hash as they did.
        if let reason {
            append("reason")
            append(reason)
        }
        // The same for the actor (migration 0006).
        if let actor {
            append("actor")
            append(actor)
        }
        actionCount += 1
    }

    private static func code(action: String) -> UInt8? {
        switch action {
        case "start": 1
        case "stop": 2
        case "restart": 3
        case "notify": 4
        default: nil
        }
    }

    private static func code(outcome: String) -> UInt8? {
        switch outcome {
        case "started": 1
        case "already-running": 2
        case "stopped": 3
        case "not-found": 4
        case "failed": 5
        case "stop-failed": 6
        case "notified": 7
        case "unplaced": 8
        default: nil
        }
    }

    mutating func finishActions() -> [UInt8] {
        append(actionCount)
        return SHA256.hash(buffer)
    }

    mutating func outcomeHash(
        prev: [UInt8], roundHash: [UInt8], seq: Int64, finishedMS: Int64?, started: Int64, stopped: Int64, failed: Int64, error: String?,
        actionsHash: [UInt8]
    ) -> [UInt8] {
        start("rota.outcome.v1")
        append(bytes: prev)
        append(bytes: roundHash)
        append(seq)
        if let finishedMS {
            buffer.append(1)
            append(finishedMS)
        } else {
            buffer.append(0)
        }
        append(started)
        append(stopped)
        append(failed)
        append(error)
        append(bytes: actionsHash)
        return SHA256.hash(buffer)
    }

    mutating func eventHash(
        prev: [UInt8], pool: String, entryID: String, index: Int64, job: String?, kind: String, worker: String, node: String, nodeID: String,
        atMS: Int64, actor: String?, reason: String?, roundID: String?, requeued: Bool, error: String?, lastSeenMS: Int64?
    ) -> [UInt8] {
        start("rota.event.v1")
        append(bytes: prev)
        append(pool)
        append(entryID)
        append(index)
        append(job)
        append(kind)
        append(worker)
        append(node)
        append(nodeID)
        append(atMS)
        append(actor)
        append(reason)
        append(roundID)
        buffer.append(requeued ? 1 : 0)
        append(error)
        // Only when set (migration 0007), so events recorded before it keep their hashes.
        if let lastSeenMS {
            append("last_seen")
            append(lastSeenMS)
        }
        return SHA256.hash(buffer)
    }

    /// The digest of a bridge set: each bridge in (chain, to) order, then the count.
    mutating func bridgesHash(_ bridges: [(chain: String, bridge: ChainBridge)]) -> [UInt8] {
        start("rota.bridges.v1")
        for (chain, bridge) in bridges {
            append(chain)
            // Length-prefixed: a row edited to another length must not read as a different split.
            appendVarint(UInt64(bridge.to.count))
            append(bytes: bridge.to)
            appendVarint(UInt64(bridge.from.count))
            append(bytes: bridge.from)
            append(Int64(bridge.pruned))
        }
        append(Int64(bridges.count))
        return SHA256.hash(buffer)
    }

    mutating func pruneHash(prev: [UInt8], seq: Int64, atMS: Int64, rounds: Int64, actions: Int64, events: Int64, bridgesHash: [UInt8])
        -> [UInt8]
    {
        start("rota.prune.v1")
        append(bytes: prev)
        append(seq)
        append(atMS)
        append(rounds)
        append(actions)
        append(events)
        append(bytes: bridgesHash)
        return SHA256.hash(buffer)
    }

    private mutating func start(_ domain: StaticString) {
        buffer.removeAll(keepingCapacity: true)
        domain.withUTF8Buffer { buffer.append(contentsOf: $0) }
    }

    private mutating func append(bytes: [UInt8]) {
        buffer.append(contentsOf: bytes)
    }

    /// Zigzag LEB128.
    private mutating func append(_ value: Int64) {
        appendVarint(UInt64(bitPattern: (value &<< 1) ^ (value &>> 63)))
    }

    private mutating func appendVarint(_ value: UInt64) {
        var value = value
        while value >= 0x80 {
            buffer.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value &>>= 7
        }
        buffer.append(UInt8(truncatingIfNeeded: value))
    }

    /// A known value as its one-byte code, anything else as 0 and its text.
    private mutating func append(code: UInt8?, _ text: String) {
        if let code {
            buffer.append(code)
        } else {
            buffer.append(0)
            append(text)
        }
    }

    private mutating func append(_ text: String?) {
        guard var text else {
            buffer.append(0)
            return
        }
        text.withUTF8 { utf8 in
            appendVarint(UInt64(utf8.count) + 1)
            buffer.append(contentsOf: utf8)
        }
    }
}

/// The chain heads, read at the start of a recording transaction and written back at its end.
struct ChainState {
    var roundHead: [UInt8]
    var outcomeHead: [UInt8]
    var outcomeSeq: Int64
    var eventHead: [UInt8]
    var hasher = ChainHasher()
    var changed = false

    static func load(_ db: Database) throws -> ChainState {
        guard let row = try Row.fetchOne(db, sql: "SELECT round_head, outcome_head, outcome_seq, event_head FROM history_chain WHERE id = 1")
        else {
            // The migration creates the row: someone deleted it. Recording must not stop for that;
            // the chains restart from zero, and verification reports the break at the next round.
            try db.execute(sql: """
                INSERT INTO history_chain (id, round_head, outcome_head, outcome_seq, unchained_through)
                VALUES (1, zeroblob(32), zeroblob(32), COALESCE((SELECT MAX(outcome_seq) FROM round), 0), 0)
                """)
            return try load(db)
        }
        return ChainState(roundHead: bytes(row["round_head"]), outcomeHead: bytes(row["outcome_head"]), outcomeSeq: row["outcome_seq"],
            eventHead: bytes(row["event_head"]))
    }

    func saveIfChanged(_ db: Database) throws {
        guard changed else { return }
        try db.cachedStatement(sql: "UPDATE history_chain SET round_head = ?, outcome_head = ?, outcome_seq = ?, event_head = ? WHERE id = 1")
            .execute(arguments: [Data(roundHead), Data(outcomeHead), outcomeSeq, Data(eventHead)])
    }
}

/// A BLOB column as bytes (empty when NULL).
func bytes(_ data: Data?) -> [UInt8] { data.map { [UInt8]($0) } ?? [] }

/// A gap left by pruning: the entry linking to `to` follows the entry whose hash is `from`.
struct ChainBridge {
    var to: [UInt8]
    var from: [UInt8]
    var pruned: Int
}

enum ChainName: String {
    case round, outcome, event
}

extension PlanStore {
    static func loadBridges(_ db: Database, _ chain: ChainName) throws -> [[UInt8]: ChainBridge] {
        var bridges: [[UInt8]: ChainBridge] = [:]
        for row in try Row.fetchAll(db, sql: "SELECT to_hash, from_hash, pruned FROM history_chain_bridge WHERE chain = ?", arguments: [chain.rawValue]) {
            let bridge = ChainBridge(to: bytes(row["to_hash"]), from: bytes(row["from_hash"]), pruned: row["pruned"])
            bridges[bridge.to] = bridge
        }
        return bridges
    }

    /// Before a prune deletes the rounds `selection` selects: rewrites one chain's bridges so that
    /// the remaining entries still link up. `entries` selects (id, prev, hash, doomed) in chain order.
    static func rebridge(_ db: Database, _ chain: ChainName, entries sql: String, arguments: StatementArguments, head: [UInt8]) throws {
        let old = try loadBridges(db, chain)
        var lastKept = ChainHasher.genesis  // what the next remaining entry must link from
        var previous = ChainHasher.genesis  // the entry just before, remaining or doomed
        var spanIntact = true
        var spanPruned = 0
        var bridges: [ChainBridge] = []

        func link(_ to: [UInt8]) -> (intact: Bool, pruned: Int) {
            if to == previous { return (true, 0) }
            if let bridge = old[to], bridge.from == previous { return (true, bridge.pruned) }
            return (false, 0)
        }
        // Reaching a remaining entry (or the head) that links to `to`.
        func close(_ to: [UInt8]) {
            let (intact, pruned) = link(to)
            if to == lastKept { return }
            if spanIntact && intact {
                bridges.append(ChainBridge(to: to, from: lastKept, pruned: spanPruned + pruned))
            } else if let bridge = old[to] {
                bridges.append(bridge)  // a break that was already there stays as it was
            }
        }

        let cursor = try Row.fetchCursor(db, sql: sql, arguments: arguments)
        while let row = try cursor.next() {
            let prev = bytes(row[1]), hash = bytes(row[2])
            if row[3] as Bool {
                let (intact, pruned) = link(prev)
                spanIntact = spanIntact && intact
                spanPruned += pruned + 1
            } else {
                close(prev)
                lastKept = hash
                spanIntact = true
                spanPruned = 0
            }
            previous = hash
        }
        close(head)

        try db.execute(sql: "DELETE FROM history_chain_bridge WHERE chain = ?", arguments: [chain.rawValue])
        let insert = try db.cachedStatement(sql: "INSERT OR REPLACE INTO history_chain_bridge (chain, to_hash, from_hash, pruned) VALUES (?, ?, ?, ?)")
        for bridge in bridges {
            try insert.execute(arguments: [chain.rawValue, Data(bridge.to), Data(bridge.from), bridge.pruned])
        }
    }

    /// Checks the hash chains of the history: every chained round against its hashes, every link
    /// between consecutive rounds (and outcomes, and job events), the heads, the prune records and
    /// the bridges they left. Reports the first altered or missing row in insertion order (rounds,
    /// then job events, then prunes). With the pool's history `key`, a prune record that is not
    /// authenticated by it is a problem too (see PruneChain.swift). Reads a consistent snapshot;
    /// recording may go on meanwhile.
    public func verifyHistory(key: HistoryKey? = nil) throws(StoreError) -> HistoryVerification {
        do {
            return try database.read { db in try Self.verify(db, key: key) }
        } catch let error as StoreError {
            throw error
        } catch {
            throw Self.map(error, path: path, doing: "verify")
        }
    }

    private struct Located {
        var position: Int64  // the row id the problem is reported at (Int64.max: after the last row)
        var problem: HistoryProblem
    }

    static func verify(_ db: Database, key: HistoryKey? = nil) throws -> HistoryVerification {
        guard let state = try Row.fetchOne(db, sql: """
            SELECT round_head, outcome_head, unchained_through, event_head FROM history_chain WHERE id = 1
            """)
        else {
            let problem = HistoryProblem(kind: .missing, message: "the chain state (table history_chain) was deleted")
            return HistoryVerification(verified: 0, unchained: 0, pruned: 0, head: "", outcomeHead: "", problem: problem)
        }
        let roundHead = bytes(state["round_head"]), outcomeHead = bytes(state["outcome_head"])
        let outcomeProblem = try verifyOutcomeLinks(db, head: outcomeHead)
        var result = try verifyRounds(db, head: roundHead, unchainedThrough: state["unchained_through"],
            stopAt: outcomeProblem?.position ?? Int64.max)
        if let outcomeProblem, result.problem == nil || outcomeProblem.position < result.problem!.position {
            result.problem = outcomeProblem
        }
        let eventHead = bytes(state["event_head"])
        let events = try verifyEvents(db, head: eventHead)
        let prunes = try verifyPrunes(db, key: key)
        var verification = HistoryVerification(verified: result.verified, unchained: result.unchained, pruned: result.pruned,
            head: SHA256.hex(roundHead), outcomeHead: SHA256.hex(outcomeHead),
            problem: result.problem?.problem ?? events.problem ?? prunes.problem)
        verification.events = events.verified
        verification.eventsPruned = events.pruned
        verification.eventHead = SHA256.hex(eventHead)
        verification.prunes = prunes.count
        verification.pruneHead = SHA256.hex(prunes.head)
        verification.unauthenticatedPrunes = prunes.unauthenticated
        verification.legacyBridges = prunes.legacyBridges
        verification.keyID = key?.id
        verification.gaps = try gaps(db, pool: nil, includeFilled: false).map(\.gap)
        return verification
    }

    private struct EventsResult {
        var verified = 0
        var pruned = 0
        var problem: HistoryProblem?
    }

    /// The event chain, in insertion order: each job event against its hash, each link, the head.
    private static func verifyEvents(_ db: Database, head: [UInt8]) throws -> EventsResult {
        var result = EventsResult()
        let bridges = try loadBridges(db, .event)
        var hasher = ChainHasher()
        var previous = ChainHasher.genesis
        var previousName: String?
        let cursor = try Row.fetchCursor(db, sql: """
            SELECT e.id, e.pool, e.entry_id, e.idx, j.key, e.kind, e.worker, e.node, e.node_id, e.at_ms, e.actor, e.reason, e.round_id,
                   e.requeued, e.error, e.prev_hash, e.hash, e.last_seen_ms
            FROM job_event e LEFT JOIN job j ON j.id = e.job ORDER BY e.id
            """)
        func problem(_ kind: HistoryProblem.Kind, _ id: Int64?, _ name: String?, _ message: String) -> HistoryProblem {
            var problem = HistoryProblem(kind: kind, id: id, message: message)
            problem.event = name
            problem.chain = ChainName.event.rawValue
            return problem
        }
        while let row = try cursor.next() {
            let id: Int64 = row[0], pool: String = row[1], entryID: String = row[2], index: Int64 = row[3]
            let name = "\(pool) \(entryID)#\(index)"
            let label = "job event \(name) (#\(id))"
            let prev = bytes(row[15]), hash = bytes(row[16])
            let computed = hasher.eventHash(prev: prev, pool: pool, entryID: entryID, index: index, job: row[4], kind: row[5], worker: row[6],
                node: row[7], nodeID: row[8], atMS: row[9], actor: row[10], reason: row[11], roundID: row[12], requeued: row[13],
                error: row[14], lastSeenMS: row[17])
            if computed != hash {
                result.problem = problem(.altered, id, name, "\(label) altered: its content does not match its hash")
                return result
            }
            if prev != previous {
                if let bridge = bridges[prev], bridge.from == previous {
                    result.pruned += bridge.pruned
                } else {
                    let after = previousName ?? "the start of the event chain"
                    result.problem = problem(.missing, id, name,
                        "job event(s) missing before \(label): it links to neither \(after) nor a prune")
                    return result
                }
            }
            result.verified += 1
            previous = hash
            previousName = label
        }
        if head != previous {
            if let bridge = bridges[head], bridge.from == previous {
                result.pruned += bridge.pruned
            } else {
                let last = previousName.map { "\($0), the newest" } ?? "the start of the event chain"
                result.problem = problem(.missing, nil, nil,
                    "job event(s) missing after \(last): the event chain's head (\(SHA256.hex(head.prefix(8)))…) leads to neither it nor a prune")
            }
        }
        return result
    }

    private static func name(_ roundID: String, _ id: Int64) -> String { "round \(roundID) (#\(id))" }

    /// The outcome chain's links, in the order the outcomes were recorded. The outcomes' own
    /// hashes are checked with their rounds.
    private static func verifyOutcomeLinks(_ db: Database, head: [UInt8]) throws -> Located? {
        let bridges = try loadBridges(db, .outcome)
        var previous = ChainHasher.genesis
        var previousName: String?
        let cursor = try Row.fetchCursor(db, sql: """
            SELECT id, round_id, outcome_seq, outcome_prev, outcome_hash FROM round
            WHERE outcome_hash IS NOT NULL AND outcome_seq IS NOT NULL ORDER BY outcome_seq
            """)
        while let row = try cursor.next() {
            let id: Int64 = row[0], roundID: String = row[1], seq: Int64 = row[2]
            let prev = bytes(row[3])
            if prev != previous && bridges[prev]?.from != previous {
                let after = previousName.map { "the outcome of \($0)" } ?? "the start of the outcome chain"
                return Located(position: id, problem: HistoryProblem(kind: .missing, roundID: roundID, id: id, chain: "outcome",
                    message: "outcome missing before the outcome of \(name(roundID, id)) (outcome #\(seq)): it links to neither \(after) nor a prune; a round's outcome was erased or its round deleted"))
            }
            previous = bytes(row[4])
            previousName = name(roundID, id)
        }
        if head != previous && bridges[head]?.from != previous {
            let last = previousName.map { "the outcome of \($0), the last one" } ?? "the start of the outcome chain"
            return Located(position: Int64.max, problem: HistoryProblem(kind: .missing, chain: "outcome",
                message: "outcome(s) missing after \(last): the outcome chain's head (\(SHA256.hex(head.prefix(8)))…) leads to neither it nor a prune"))
        }
        return nil
    }

    private struct RoundsResult {
        var verified = 0
        var unchained = 0
        var pruned = 0
        var problem: Located?
    }

    /// The rounds in insertion order, each with its action rows (one merged pass over both tables).
    private static func verifyRounds(_ db: Database, head: [UInt8], unchainedThrough: Int64, stopAt: Int64) throws -> RoundsResult {
        var result = RoundsResult()
        let bridges = try loadBridges(db, .round)
        var hasher = ChainHasher()
        var previous = ChainHasher.genesis
        var previousRound: (roundID: String, id: Int64)?
        var lastUnchained: Int64 = 0
        var chainStarted = false

        let rounds = try Row.fetchCursor(db, sql: """
            SELECT id, round_id, pool, producer, revision, node, tick_ms, started_ms, finished_ms, intent, started, stopped, failed,
                   error, prev_hash, intent_hash, hash, outcome_seq, outcome_prev, actions_hash, outcome_hash
            FROM round ORDER BY id
            """)
        let actions = try Row.fetchCursor(db, sql: """
            SELECT a.round, a.seq, j.key, a.action, a.outcome, a.error, a.payload_hash, a.at_ms, a.reason, a.actor
            FROM action a LEFT JOIN job j ON j.id = a.job ORDER BY a.round, a.seq
            """)
        // The next action row not consumed yet, copied out of the cursor.
        struct ActionRow {
            var round: Int64, seq: Int64, job: String?, action: String, outcome: String, error: String?, payloadHash: String?, atMS: Int64
            var reason: String?, actor: String?
        }
        func nextAction() throws -> ActionRow? {
            guard let row = try actions.next() else { return nil }
            return ActionRow(round: row[0], seq: row[1], job: row[2], action: row[3], outcome: row[4], error: row[5], payloadHash: row[6],
                atMS: row[7], reason: row[8], actor: row[9])
        }
        var pending = try nextAction()

        /// Skips action rows of rounds before `id`; reports them when they belong to no round in the chain.
        func orphans(before id: Int64) throws -> Located? {
            while let action = pending, action.round < id {
                var count = 0
                let round = action.round
                while let next = pending, next.round == round {
                    count += 1
                    pending = try nextAction()
                }
                if chainStarted && round > lastUnchained {
                    return Located(position: round, problem: HistoryProblem(kind: .missing, id: round, missingIDs: round...round,
                        message: "round #\(round) missing: deleted, but \(count) action row(s) still refer to it"))
                }
            }
            return nil
        }
        func altered(_ roundID: String, _ id: Int64, _ part: HistoryProblem.Part, _ what: String) -> Located {
            Located(position: id, problem: HistoryProblem(kind: .altered, part: part, roundID: roundID, id: id,
                message: "\(name(roundID, id)) altered: \(what)"))
        }

        while let row = try rounds.next() {
            let id: Int64 = row[0], roundID: String = row[1]
            if id > stopAt { break }  // the outcome chain broke earlier (a tie goes to the round chain)
            guard let hash = row[16] as Data? else {
                if chainStarted || id > unchainedThrough {
                    result.problem = altered(roundID, id, .identity,
                        "it has no chain hashes (inserted by hand, or its hashes were removed)")
                    return result
                }
                result.unchained += 1
                lastUnchained = id
                continue
            }
            chainStarted = true
            if let problem = try orphans(before: id) {
                result.problem = problem
                return result
            }
            let prev = bytes(row[14]), intentHash = bytes(row[15])
            // The row against its own hashes.
            if hasher.intentHash(row[9]) != intentHash {
                result.problem = altered(roundID, id, .intent, "its intent (planned actions) does not match its hash")
                return result
            }
            let computed = hasher.roundHash(prev: prev, roundID: roundID, pool: row[2], producer: row[3], revision: row[4], node: row[5],
                tickMS: row[6], startedMS: row[7], intentHash: intentHash)
            if computed != [UInt8](hash) {
                result.problem = altered(roundID, id, .identity,
                    "its identity (round ID, pool, producer, revision, node, tick, start) does not match its hash")
                return result
            }
            // The link to the round before it.
            if prev != previous {
                if let bridge = bridges[prev], bridge.from == previous {
                    result.pruned += bridge.pruned
                } else {
                    var missing: ClosedRange<Int64>?
                    let description: String
                    if let before = previousRound {
                        if before.id + 1 < id { missing = (before.id + 1)...(id - 1) }
                        let ids = missing.map { $0.count == 1 ? "round #\($0.lowerBound)" : "rounds #\($0.lowerBound)–#\($0.upperBound)" }
                            ?? "round(s)"
                        description = "\(ids) missing between \(name(before.roundID, before.id)) and \(name(roundID, id)): "
                            + "it links to neither \(name(before.roundID, before.id)) nor a prune"
                    } else {
                        description = "round(s) missing before \(name(roundID, id)), the oldest chained round: "
                            + "it links to neither the start of the chain nor a prune"
                    }
                    result.problem = Located(position: id, problem: HistoryProblem(kind: .missing, roundID: roundID, id: id,
                        missingIDs: missing, message: description))
                    return result
                }
            }
            // Its outcome and actions.
            var actionRows = 0
            hasher.startActions()
            while let action = pending, action.round == id {
                hasher.addAction(seq: action.seq, job: action.job, action: action.action, outcome: action.outcome, error: action.error,
                    payloadHash: action.payloadHash, atMS: action.atMS, reason: action.reason, actor: action.actor)
                actionRows += 1
                pending = try nextAction()
            }
            if let outcomeHash = row[20] as Data? {
                if hasher.finishActions() != bytes(row[19]) {
                    result.problem = altered(roundID, id, .actions, "its action rows do not match their hash")
                    return result
                }
                let seq: Int64? = row[17]
                let computed = hasher.outcomeHash(prev: bytes(row[18]), roundHash: [UInt8](hash), seq: seq ?? -1, finishedMS: row[8],
                    started: row[10], stopped: row[11], failed: row[12], error: row[13], actionsHash: bytes(row[19]))
                if seq == nil || computed != [UInt8](outcomeHash) {
                    result.problem = altered(roundID, id, .outcome, "its outcome (finished time, counts, error) does not match its hash")
                    return result
                }
            } else {
                // Not finished when its outcome was chained: nothing may claim otherwise.
                if actionRows > 0 {
                    result.problem = altered(roundID, id, .actions, "it has action rows but no recorded outcome")
                    return result
                }
                let finished: Int64? = row[8], error: String? = row[13]
                let counts: [Int64] = [row[10], row[11], row[12]]
                if finished != nil || error != nil || counts != [0, 0, 0] || !row.hasNull(atIndex: 17) || !row.hasNull(atIndex: 18)
                    || !row.hasNull(atIndex: 19)
                {
                    result.problem = altered(roundID, id, .outcome, "it has an outcome that was never chained (its hash is missing)")
                    return result
                }
            }
            result.verified += 1
            previous = [UInt8](hash)
            previousRound = (roundID, id)
        }
        if stopAt != Int64.max { return result }
        if let problem = try orphans(before: Int64.max) {
            result.problem = problem
            return result
        }
        // The newest round against the head: the last rounds may have been deleted.
        if head != previous {
            if let bridge = bridges[head], bridge.from == previous {
                result.pruned += bridge.pruned
            } else {
                let last = previousRound.map { "\(name($0.roundID, $0.id)), the newest" } ?? "the start of the chain"
                result.problem = Located(position: Int64.max, problem: HistoryProblem(kind: .missing,
                    message: "round(s) missing after \(last): the chain's head (\(SHA256.hex(head.prefix(8)))…) leads to neither it nor a prune"))
            }
        }
        return result
    }
}
