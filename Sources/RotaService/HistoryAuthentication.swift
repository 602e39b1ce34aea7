import Logging
import Metrics
import RotaStore
import RotaStreams
import Synchronization

/// Signs and checks the entries of the pool's history stream (rounds and manual actions) with the
/// pool's history key. An entry's signature (stream field `s`) is the key's tag over the pool's
/// name, the entry's name and its exact payload bytes, in the domain `rota.history-entry.v1`: it
/// cannot be moved to another pool's stream or re-labelled, and any change to the payload shows.
struct HistoryEntrySigner: Sendable {
    static let domain = "rota.history-entry.v1"

    let key: HistoryKey
    let pool: String

    func signature(name: String, payload: [UInt8]) -> String {
        key.tag(Self.domain, [Array(pool.utf8), Array(name.utf8), payload])
    }

    func check(_ event: StreamEvent) -> TagCheck {
        key.check(event.signature, Self.domain, [Array(pool.utf8), Array(event.name.utf8), event.payload])
    }
}

/// What a node with a history key does with the stream entries it cannot verify: skips them,
/// counts them (`rota_history_entries_unverified`, by reason) and logs the first of each reason
/// with its entry ID (an attacker writing to the stream must not flood the log).
final class UnverifiedEntries: Sendable {
    let signer: HistoryEntrySigner
    let logger: Logger
    private let logged = Mutex<Set<String>>([])

    init(signer: HistoryEntrySigner, logger: Logger) {
        self.signer = signer
        self.logger = logger
    }

    /// True when `event` carries a valid signature; otherwise it is counted and maybe logged.
    func accepts(_ event: StreamEvent) -> Bool {
        let reason: String
        var metadata: Logger.Metadata = ["event": "\(event.id)", "stream": "\(event.stream)"]
        switch signer.check(event) {
        case .valid: return true
        case .missing: reason = "unsigned"
        case .otherKey(let id):
            reason = "other-key"
            metadata["signed_with"] = "\(id)"
            metadata["key"] = "\(signer.key.id)"
        case .invalid: reason = "bad-signature"
        }
        metadata["reason"] = "\(reason)"
        Counter(label: "rota_history_entries_unverified", dimensions: [("pool", signer.pool), ("reason", reason)]).increment()
        if logged.withLock({ $0.insert(reason).inserted }) {
            logger.error("ignoring history stream entries not signed with this pool's history key (the first of each reason is logged; all are counted in rota_history_entries_unverified)",
                metadata: metadata)
        }
        return false
    }
}
