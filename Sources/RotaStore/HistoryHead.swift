import Foundation
import GRDB
import RotaPlans

/// The state of a history's chains at one moment, for an auditor to keep somewhere else
/// (`rota history head`). ``PlanStore/checkHead(_:key:)`` later tells whether the history still
/// contains that state: it may have grown since, or been pruned by recorded prunes, but a rewrite
/// of what the head covers shows.
///
/// Text form, one line; with the pool's history key, `tag` authenticates everything before ` tag=`:
///
///     rota-history-head v1 at=2026-12-07T20:00:00.123Z round=ID:HASH outcome=SEQ:HASH event=ID:HASH
///         prune=SEQ:HASH rounds=N events=M tag=v1:KEYID:MAC
///
/// For each chain, the newest entry's position (a round's or job event's row id, an outcome's or a
/// prune's sequence number; 0 for an empty chain or a newest entry no longer there) and its hash.
public struct HistoryHead: Sendable, Hashable {
    public struct Link: Sendable, Hashable {
        public var position: Int64
        /// Hex.
        public var hash: String
    }

    public var at: Date
    public var round: Link
    public var outcome: Link
    public var event: Link
    public var prune: Link
    /// Rounds and job events in the history when the head was taken.
    public var rounds: Int
    public var events: Int
    /// The history key's tag over ``body``; nil for a head taken without a key.
    public var tag: String?
    /// The authenticated text: the line without its tag.
    public let body: String

    static let domain = "rota.head.v1"
    static let prefix = "rota-history-head v1"

    /// The line to store.
    public var text: String { body + (tag.map { " tag=\($0)" } ?? "") }

    init(at: Date, round: Link, outcome: Link, event: Link, prune: Link, rounds: Int, events: Int, key: HistoryKey?) {
        (self.at, self.round, self.outcome, self.event, self.prune, self.rounds, self.events) = (at, round, outcome, event, prune, rounds, events)
        let time = at.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
        func link(_ name: String, _ link: Link) -> String { "\(name)=\(link.position):\(link.hash)" }
        body = "\(Self.prefix) at=\(time) \(link("round", round)) \(link("outcome", outcome)) \(link("event", event)) \(link("prune", prune)) "
            + "rounds=\(rounds) events=\(events)"
        tag = key?.tag(Self.domain, [Array(body.utf8)])
    }

    /// Reads a head's line (surrounding whitespace ignored); throws `.invalidHead` for anything else.
    public init(parsing input: String) throws(StoreError) {
        let line = input.trimmingCharacters(in: .whitespacesAndNewlines)
        func bad(_ why: String) -> StoreError { StoreError(.invalidHead, "not a history head (\(why)): \(line.prefix(80))") }
        guard line.hasPrefix(Self.prefix + " "), !line.contains("\n") else { throw bad("it must start with '\(Self.prefix) '") }
        var body = line, tag: String?
        if let range = line.range(of: " tag=") {
            body = String(line[..<range.lowerBound])
            tag = String(line[range.upperBound...])
        }
        var fields: [String: String] = [:]
        for field in body.dropFirst(Self.prefix.count + 1).split(separator: " ") {
            let parts = field.split(separator: "=", maxSplits: 1)
            guard parts.count == 2 else { throw bad("field '\(field.prefix(40))'") }
            fields[String(parts[0])] = String(parts[1])
        }
        func link(_ name: String) throws(StoreError) -> Link {
            let parts = (fields[name] ?? "").split(separator: ":")
            guard parts.count == 2, let position = Int64(parts[0]), position >= 0, parts[1].count == 64,
                  HistoryKey.bytes(hex: Array(parts[1].utf8)) != nil
            else { throw bad("\(name)=POSITION:HASH") }
            return Link(position: position, hash: String(parts[1]))
        }
        guard let time = fields["at"], let at = RFC3339.date(from: time) else { throw bad("at=TIME") }
        guard let rounds = fields["rounds"].flatMap(Int.init), let events = fields["events"].flatMap(Int.init), rounds >= 0, events >= 0 else {
            throw bad("rounds=N events=N")
        }
        (self.at, self.rounds, self.events, self.tag, self.body) = (at, rounds, events, tag, body)
        (round, outcome, event, prune) = (try link("round"), try link("outcome"), try link("event"), try link("prune"))
    }
}

extension StoreError.Code {
    /// A stored history head that cannot be read.
    public static let invalidHead = StoreError.Code("invalidHead")
}

/// What ``PlanStore/checkHead(_:key:)`` found.
public struct HeadCheck: Sendable, Hashable {
    /// Nil when the history still contains the head's state (and, with a key, the head's tag verifies).
    public var problem: String?
    /// Things worth knowing that are not problems: the head's tag was not checked, entries it
    /// covered were pruned since.
    public var notes: [String] = []
    /// Chained rounds and job events recorded after the head's, and prunes since.
    public var roundsSince = 0
    public var eventsSince = 0
    public var prunesSince = 0
    /// The head's tag verified with the history key.
    public var authenticated = false
}

extension PlanStore {
    /// The head of this history now. Refuses a history that does not verify (with `key`, its
    /// prune records must be authenticated by it): a head vouches for what it covers.
    public func head(key: HistoryKey? = nil) throws(StoreError) -> HistoryHead {
        do {
            return try database.read { db in
                let verification = try Self.verify(db, key: key)
                if let problem = verification.problem {
                    throw StoreError(.tampered, "the history does not verify, no head given: \(problem.message)")
                }
                guard let state = try Row.fetchOne(db, sql: """
                    SELECT round_head, outcome_head, outcome_seq, event_head, prune_head, prune_seq FROM history_chain WHERE id = 1
                    """)
                else { throw StoreError(.tampered, "the chain state (table history_chain) was deleted") }
                func newest(_ table: String, head: [UInt8]) throws -> HistoryHead.Link {
                    let row = try Row.fetchOne(db, sql: "SELECT id, hash FROM \(table) WHERE hash IS NOT NULL ORDER BY id DESC LIMIT 1")
                    let position: Int64 = row.flatMap { bytes($0[1]) == head ? $0[0] : nil } ?? 0
                    return HistoryHead.Link(position: position, hash: SHA256.hex(head))
                }
                return HistoryHead(at: Date(), round: try newest("round", head: bytes(state["round_head"])),
                    outcome: .init(position: state["outcome_seq"], hash: SHA256.hex(bytes(state["outcome_head"]))),
                    event: try newest("job_event", head: bytes(state["event_head"])),
                    prune: .init(position: state["prune_seq"], hash: SHA256.hex(bytes(state["prune_head"]))),
                    rounds: verification.verified, events: verification.events, key: key)
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw Self.map(error, path: path, doing: "read")
        }
    }

    /// Whether this history still contains the state `head` recorded: each chain still holds the
    /// head's entry (the chains then continue from it, which ``verifyHistory(key:)`` checks: call
    /// it first), or that entry was pruned since by a recorded prune; the prune chain still
    /// holds the head's prune record. With `key`, the head's tag must verify and the prunes since
    /// the head must be authenticated by it.
    public func checkHead(_ head: HistoryHead, key: HistoryKey? = nil) throws(StoreError) -> HeadCheck {
        var check = HeadCheck()
        if let tag = head.tag {
            if let key {
                switch key.check(tag, HistoryHead.domain, [Array(head.body.utf8)]) {
                case .valid: check.authenticated = true
                case .otherKey(let id): check.problem = "the head was authenticated by another history key (\(id)), not this one (\(key.id))"
                case .missing, .invalid: check.problem = "the head's tag does not verify with the history key: the head was edited, or not taken from this pool"
                }
                if check.problem != nil { return check }
            } else {
                check.notes.append("the head's tag is not checked: no history key given")
            }
        } else if key != nil {
            check.notes.append("the head has no tag (taken without the history key): where it came from is not checked")
        }
        do {
            return try database.read { db in
                let genesis = SHA256.hex(ChainHasher.genesis)
                let pruneSeq = try Int64.fetchOne(db, sql: "SELECT prune_seq FROM history_chain WHERE id = 1") ?? 0
                // Prune records are never deleted: the head's must be there, unchanged.
                if head.prune.position > 0 || head.prune.hash != genesis {
                    let stored = try Data.fetchOne(db, sql: "SELECT hash FROM history_prune WHERE seq = ?", arguments: [head.prune.position])
                    guard let stored, SHA256.hex([UInt8](stored)) == head.prune.hash else {
                        check.problem = "the prune chain no longer holds the head's prune #\(head.prune.position): prune records were rewritten or deleted"
                        return check
                    }
                }
                check.prunesSince = Int(clamping: max(0, pruneSeq - head.prune.position))
                if let key {
                    for row in try Row.fetchAll(db, sql: "SELECT * FROM history_prune WHERE seq > ? ORDER BY seq", arguments: [head.prune.position]) {
                        let record = PruneRecord(row)
                        if key.check(record.tag, Self.pruneDomain, [record.hash]) != .valid {
                            check.problem = "\(record.name), after the head, is not authenticated by the history key"
                            return check
                        }
                    }
                }
                let chains: [(name: String, link: HistoryHead.Link, byPosition: String, byHash: String, head: String)] = [
                    ("round", head.round, "SELECT hash FROM round WHERE id = ?", "SELECT 1 FROM round WHERE hash = ?", "round_head"),
                    ("outcome", head.outcome, "SELECT outcome_hash FROM round WHERE outcome_seq = ?", "SELECT 1 FROM round WHERE outcome_hash = ?",
                     "outcome_head"),
                    ("job event", head.event, "SELECT hash FROM job_event WHERE id = ?", "SELECT 1 FROM job_event WHERE hash = ?", "event_head"),
                ]
                for chain in chains {
                    guard chain.link.hash != genesis, let hash = HistoryKey.bytes(hex: Array(chain.link.hash.utf8)) else { continue }
                    if let current = try Data.fetchOne(db, sql: "SELECT \(chain.head) FROM history_chain WHERE id = 1"), [UInt8](current) == hash {
                        continue
                    }
                    if let found = try Data.fetchOne(db, sql: chain.byPosition, arguments: [chain.link.position]), [UInt8](found) == hash { continue }
                    if try Bool.fetchOne(db, sql: chain.byHash, arguments: [Data(hash)]) == true { continue }
                    // Gone: only a recorded prune may have removed it.
                    guard check.prunesSince > 0 else {
                        check.problem = "the \(chain.name) chain no longer holds the head's \(chain.name) #\(chain.link.position) "
                            + "(\(chain.link.hash.prefix(16))…) and nothing was pruned since: the history was rewritten or entries deleted"
                        return check
                    }
                    check.notes.append("the head's \(chain.name) #\(chain.link.position) was pruned since")
                }
                check.roundsSince = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM round WHERE hash IS NOT NULL AND id > ?",
                    arguments: [head.round.position]) ?? 0
                check.eventsSince = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM job_event WHERE id > ?", arguments: [head.event.position]) ?? 0
                return check
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw Self.map(error, path: path, doing: "read")
        }
    }
}
