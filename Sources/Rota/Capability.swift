/// What a worker can run, and what a job requires of its worker.
///
/// A capability is 1–64 characters of `A-Z a-z 0-9 - _ . :` (the service uses its handler names).
/// Workers list theirs in the pool's `worker-capabilities` map as a sorted, comma-separated list;
/// a job's requirement lives in `job-requirements` while the job exists. Both are read from Redis,
/// so parsing skips what is not valid instead of trusting it.
enum Capability {
    static let maxBytes = 64

    static func isValid(_ name: some StringProtocol) -> Bool {
        let bytes = name.utf8
        guard !bytes.isEmpty, bytes.count <= maxBytes else { return false }
        return bytes.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: ":"):
                true
            default:
                false
            }
        }
    }

    static func validate(_ name: String, what: String) throws(PoolError) {
        guard isValid(name) else {
            throw PoolError(.invalidArgument, "\(what) '\(name.prefix(80))' is not a capability: 1-\(maxBytes) characters of A-Z a-z 0-9 - _ . :")
        }
    }

    /// The map value of a worker's capabilities.
    static func encode(_ capabilities: Set<String>) -> String { capabilities.sorted().joined(separator: ",") }

    /// The capabilities in a map value; invalid items are dropped (at most 1,000 are read).
    static func decode(_ bytes: [UInt8]) -> Set<String> {
        guard !bytes.isEmpty else { return [] }
        var result: Set<String> = []
        for item in bytes.split(separator: UInt8(ascii: ","), maxSplits: 1000, omittingEmptySubsequences: true).prefix(1000) {
            let name = String(decoding: item, as: UTF8.self)
            if isValid(name) { result.insert(name) }
        }
        return result
    }
}
