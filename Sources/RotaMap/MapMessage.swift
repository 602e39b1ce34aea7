/// A change message as published by the map's scripts (see ``MapScripts``).
enum MapMessage: Equatable, Sendable {
    case set(key: String, value: [UInt8], revision: Int64)
    case delete(key: String, revision: Int64)
    case reset(revision: Int64)
    case destroy(revision: Int64)

    var revision: Int64 {
        switch self {
        case .set(_, _, let revision), .delete(_, let revision), .reset(let revision), .destroy(let revision): return revision
        }
    }

    /// Parses a message; nil for anything malformed (bad framing, missing or unparsable revision,
    /// unknown operation), which the replica logs and ignores.
    init?(_ bytes: [UInt8]) {
        guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")) else { return nil }
        let operation = String(decoding: bytes[..<colon], as: UTF8.self)
        var reader = Reader(bytes: bytes[(colon + 1)...])
        switch operation {
        case "set":
            guard let key = reader.string(), let value = reader.field(), let revision = reader.string().flatMap(Int64.init),
                reader.isAtEnd
            else { return nil }
            self = .set(key: key, value: Array(value), revision: revision)
        case "del":
            guard let key = reader.string(), let revision = reader.string().flatMap(Int64.init), reader.isAtEnd else { return nil }
            self = .delete(key: key, revision: revision)
        case "reset", "destroy":
            guard let revision = Int64(String(decoding: bytes[(colon + 1)...], as: UTF8.self)) else { return nil }
            self = operation == "reset" ? .reset(revision: revision) : .destroy(revision: revision)
        default:
            return nil
        }
    }

    private struct Reader {
        var bytes: ArraySlice<UInt8>

        var isAtEnd: Bool { bytes.isEmpty }

        /// One length-prefixed field: 4-byte little-endian length, then that many bytes.
        mutating func field() -> ArraySlice<UInt8>? {
            guard bytes.count >= 4 else { return nil }
            let start = bytes.startIndex
            let length = Int(bytes[start]) | Int(bytes[start + 1]) << 8 | Int(bytes[start + 2]) << 16 | Int(bytes[start + 3]) << 24
            let body = start + 4
            guard length >= 0, bytes.count - 4 >= length else { return nil }
            defer { bytes = bytes[(body + length)...] }
            return bytes[body..<(body + length)]
        }

        mutating func string() -> String? {
            field().map { String(decoding: $0, as: UTF8.self) }
        }
    }
}

/// What kind of change a notification reports. Notifications carry no keys or values: read the map.
public enum MapChange: Int, Sendable, Comparable {
    /// A key was set.
    case change = 0
    /// A key was deleted.
    case delete = 1
    /// The map was cleared (reset or destroyed), or resynced after missed messages.
    case reset = 2

    public static func < (lhs: MapChange, rhs: MapChange) -> Bool { lhs.rawValue < rhs.rawValue }
}
