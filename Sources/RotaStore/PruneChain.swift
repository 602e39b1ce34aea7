import Foundation
import GRDB

// MARK: - Prune records (migration 0008_authenticated_prunes)
//
// A prune rewrites the bridges of the chains (history_chain_bridge) so that what remains still
// links up. Bridges alone prove nothing: two rows written by hand hid a deleted round. So every
// prune appends a record to a fourth chain, `history_prune`:
//     bridges_hash = SHA-256("rota.bridges.v1" ‖ every bridge row in (chain, to_hash) order ‖ count)
//     hash         = SHA-256("rota.prune.v1" ‖ prev_hash ‖ seq ‖ at_ms ‖ rounds ‖ actions ‖ events ‖ bridges_hash)
// with its head in history_chain (prune_head, prune_seq). Verification requires the bridge rows
// to be exactly the set the newest record covers: a bridge added by hand needs a new record too.
// Anyone can compute those hashes; what they cannot compute without the pool's history key is a
// record's `tag` (HMAC over its hash, domain "rota.prune.v1"). With the key, `rota history verify`
// refuses a record whose tag does not verify, and a record without one once a record with one
// exists (prunes made before the key was introduced stay accepted, and are reported).
//
// Bridges written before migration 0008 have no record: they are accepted while no prune record
// exists and their number does not exceed what the migration counted (`legacy_bridges`); the first
// prune afterwards verifies the whole history before it covers them with its record.

/// One prune, as its record says.
struct PruneRecord {
    var seq: Int64
    var atMS: Int64
    var rounds: Int64
    var actions: Int64
    var events: Int64
    var bridgesHash: [UInt8]
    var prev: [UInt8]
    var hash: [UInt8]
    var tag: String?

    init(_ row: Row) {
        seq = row["seq"]
        atMS = row["at_ms"]
        rounds = row["rounds"]
        actions = row["actions"]
        events = row["events"]
        bridgesHash = bytes(row["bridges_hash"])
        prev = bytes(row["prev_hash"])
        hash = bytes(row["hash"])
        tag = row["tag"]
    }

    /// "prune #3 (2026-12-07T10:00:00Z: 120 rounds, 40 job events)", for messages.
    var name: String {
        let at = Date(timeIntervalSince1970: Double(atMS) / 1000).formatted(.iso8601)
        return "prune #\(seq) (\(at): \(rounds) round(s), \(events) job event(s))"
    }

    func computedHash(_ hasher: inout ChainHasher) -> [UInt8] {
        hasher.pruneHash(prev: prev, seq: seq, atMS: atMS, rounds: rounds, actions: actions, events: events, bridgesHash: bridgesHash)
    }
}

/// What the prune chain says (part of ``HistoryVerification``).
struct PrunesResult {
    var count = 0
    var unauthenticated = 0
    var legacyBridges = 0
    var head = ChainHasher.genesis
    var problem: HistoryProblem?
}

extension StoreError.Code {
    /// The history does not verify where an operation needs it to (a prune must not seal bridges
    /// or records it cannot vouch for).
    public static let tampered = StoreError.Code("tampered")
}

extension PlanStore {
    static let pruneDomain = "rota.prune.v1"

    /// The digest of the bridge rows as they are.
    static func currentBridgesHash(_ db: Database, _ hasher: inout ChainHasher) throws -> (hash: [UInt8], count: Int) {
        let bridges = try Row.fetchAll(db, sql: "SELECT chain, to_hash, from_hash, pruned FROM history_chain_bridge ORDER BY chain, to_hash")
            .map { row in (chain: row[0] as String, bridge: ChainBridge(to: bytes(row[1]), from: bytes(row[2]), pruned: row[3])) }
        return (hasher.bridgesHash(bridges), bridges.count)
    }

    /// The prune chain: each record against its hash and link, the head, the bridges against the
    /// newest record, and with `key` the records' tags.
    static func verifyPrunes(_ db: Database, key: HistoryKey?) throws -> PrunesResult {
        var result = PrunesResult()
        guard let state = try Row.fetchOne(db, sql: "SELECT prune_head, prune_seq, legacy_bridges FROM history_chain WHERE id = 1") else {
            return result  // reported by the caller
        }
        let head = bytes(state["prune_head"]), headSeq: Int64 = state["prune_seq"], legacy: Int = state["legacy_bridges"]
        result.head = head
        func problem(_ kind: HistoryProblem.Kind, _ seq: Int64?, _ message: String) -> PrunesResult {
            var problem = HistoryProblem(kind: kind, id: seq, message: message)
            problem.chain = "prune"
            result.problem = problem
            return result
        }
        var hasher = ChainHasher()
        var previous = ChainHasher.genesis
        var last: PruneRecord?
        var authenticated = false
        for row in try Row.fetchAll(db, sql: "SELECT * FROM history_prune ORDER BY seq") {
            let record = PruneRecord(row)
            let expected = (last?.seq ?? 0) + 1
            if record.seq != expected || record.prev != previous {
                let after = last.map(\.name) ?? "the start of the prune chain"
                return problem(.missing, record.seq, "prune record(s) missing before \(record.name): it links to neither \(after) nor follows it")
            }
            if record.computedHash(&hasher) != record.hash {
                return problem(.altered, record.seq, "\(record.name) altered: its record does not match its hash")
            }
            if let key {
                switch key.check(record.tag, pruneDomain, [record.hash]) {
                case .valid:
                    authenticated = true
                case .missing where !authenticated:
                    result.unauthenticated += 1  // made before the key was introduced
                case .missing:
                    return problem(.altered, record.seq,
                        "\(record.name) was made without the history key, after prunes made with it: forged (a deletion passed off as a prune?)")
                case .otherKey(let id):
                    return problem(.altered, record.seq, "\(record.name) was authenticated by another history key (\(id)), not this one (\(key.id))")
                case .invalid:
                    return problem(.altered, record.seq,
                        "\(record.name) is not authenticated by the history key: forged or altered (a deletion passed off as a prune?)")
                }
            } else if record.tag == nil {
                result.unauthenticated += 1
            }
            result.count += 1
            previous = record.hash
            last = record
        }
        if previous != head || (last?.seq ?? 0) != headSeq {
            let newest = last.map { "\($0.name), the newest" } ?? "the start of the prune chain"
            return problem(.missing, nil, "prune record(s) missing after \(newest): the prune chain's head leads elsewhere")
        }
        let (current, count) = try currentBridgesHash(db, &hasher)
        if let last {
            if current != last.bridgesHash {
                return problem(.altered, last.seq,
                    "the prune bridges are not the ones \(last.name) left: bridge rows added, removed or changed by hand (a deleted round or event hidden as a prune?)")
            }
        } else if count > legacy {
            return problem(.altered, nil,
                "\(count) prune bridge row(s) but no prune record, and \(legacy) written before prunes were recorded: bridge rows added by hand (a deleted round or event hidden as a prune?)")
        } else {
            result.legacyBridges = count
        }
        return result
    }

    /// Before a prune rewrites the bridges: they must be the ones the last prune left (a prune
    /// must not seal bridges or records forged since), made with `key` when the history's prunes
    /// are authenticated. Bridges from before prune records existed are taken over only from a
    /// history that verifies.
    static func checkBeforePrune(_ db: Database, key: HistoryKey?) throws {
        guard let state = try Row.fetchOne(db, sql: "SELECT prune_seq, legacy_bridges FROM history_chain WHERE id = 1") else { return }
        let seq: Int64 = state["prune_seq"], legacy: Int = state["legacy_bridges"]
        var hasher = ChainHasher()
        let (current, count) = try currentBridgesHash(db, &hasher)
        guard seq > 0 else {
            if count > legacy {
                throw StoreError(.tampered, "bridge rows that no prune wrote: run `rota history verify`; nothing pruned")
            }
            if count > 0, let problem = try verify(db, key: key).problem {
                throw StoreError(.tampered, "the history does not verify (\(problem.message)): nothing pruned")
            }
            return
        }
        guard let row = try Row.fetchOne(db, sql: "SELECT * FROM history_prune WHERE seq = ?", arguments: [seq]) else {
            throw StoreError(.tampered, "the newest prune record (#\(seq)) is missing: run `rota history verify`; nothing pruned")
        }
        let last = PruneRecord(row)
        guard current == last.bridgesHash else {
            throw StoreError(.tampered, "the prune bridges are not the ones \(last.name) left: run `rota history verify`; nothing pruned")
        }
        let keyed = try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM history_prune WHERE tag IS NOT NULL)") ?? false
        guard let key else {
            if keyed {
                throw StoreError(.invalidKey, "this history's prunes are authenticated: give its history key (--history-key-file) to prune it")
            }
            return
        }
        switch key.check(last.tag, pruneDomain, [last.hash]) {
        case .valid: break
        case .missing where !keyed: break  // the first prune with a key
        case .otherKey(let id):
            throw StoreError(.invalidKey, "this history's prunes are authenticated by history key \(id), not by this one (\(key.id)); nothing pruned")
        case .missing, .invalid:
            throw StoreError(.tampered, "\(last.name) is not authenticated by the history key: run `rota history verify`; nothing pruned")
        }
    }

    /// Appends the record of a prune whose bridges are written.
    static func appendPrune(_ db: Database, rounds: Int, actions: Int, events: Int, key: HistoryKey?) throws {
        guard let state = try Row.fetchOne(db, sql: "SELECT prune_head, prune_seq FROM history_chain WHERE id = 1") else { return }
        var hasher = ChainHasher()
        let seq = (state["prune_seq"] as Int64) + 1, prev = bytes(state["prune_head"]), atMS = ms(Date())
        let bridgesHash = try currentBridgesHash(db, &hasher).hash
        let hash = hasher.pruneHash(prev: prev, seq: seq, atMS: atMS, rounds: Int64(rounds), actions: Int64(actions), events: Int64(events),
            bridgesHash: bridgesHash)
        try db.execute(sql: """
            INSERT INTO history_prune (seq, at_ms, rounds, actions, events, bridges_hash, prev_hash, hash, tag)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, arguments: [seq, atMS, rounds, actions, events, Data(bridgesHash), Data(prev), Data(hash), key?.tag(pruneDomain, [hash])])
        try db.execute(sql: "UPDATE history_chain SET prune_head = ?, prune_seq = ? WHERE id = 1", arguments: [Data(hash), seq])
    }
}
