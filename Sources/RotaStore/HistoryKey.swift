internal import Crypto
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension StoreError.Code {
    /// A history key file that cannot be used: unreadable, too short, too large.
    public static let invalidKey = StoreError.Code("invalidKey")
}

/// A pool's history key: HMAC-SHA256 authentication of what enters the pool's history (the
/// entries of its history stream, prune records, stored heads), so that write access to Redis or
/// to a node's database is not enough to forge them. Every node and every command that writes or
/// checks the history of a pool is given the same key (`--history-key-file`).
///
/// Authentication codes travel as a tag `v1:KEYID:MAC` (both hex): the version names the scheme
/// (HMAC-SHA256 over a domain string and length-prefixed parts), the key ID tells which key made
/// it without revealing the key.
public struct HistoryKey: Sendable {
    /// The key's bytes (swift-crypto's `SymmetricKey` is not `Sendable`: one is made per use).
    private let bytes: [UInt8]
    /// The first 4 bytes of HMAC(key, "rota.key-id.v1"), hex: names the key in tags and messages.
    public let id: String

    /// The shortest key accepted, in bytes: HMAC-SHA256's own strength.
    public static let minimumBytes = 32
    /// A key file larger than this is not a key (someone gave the wrong file).
    static let maximumFileBytes = 4096

    /// A key of `bytes` (at least ``minimumBytes``).
    public init(bytes: [UInt8]) throws(StoreError) {
        guard bytes.count >= Self.minimumBytes else {
            throw StoreError(.invalidKey, "a history key needs at least \(Self.minimumBytes) random bytes, this one has \(bytes.count)")
        }
        self.bytes = bytes
        var hmac = HMAC<Crypto.SHA256>(key: SymmetricKey(data: bytes))
        hmac.update(data: Array("rota.key-id.v1".utf8))
        id = SHA256.hex(Array(hmac.finalize()).prefix(4))
    }

    /// The key a key file holds: its text when that is only hex digits (whitespace and line breaks
    /// ignored, as `xxd -p` writes them), its raw bytes otherwise.
    /// Text of hex digits only is read as hex, whatever its length: a hex key cut short by a digit
    /// is refused, not taken for raw bytes (random bytes are all hex digits with odds of 10^-34).
    public init(fileContent data: [UInt8]) throws(StoreError) {
        let digits = data.filter { !Self.isSpace($0) }
        guard !digits.isEmpty, digits.allSatisfy({ Self.hexValue($0) != nil }) else {
            try self.init(bytes: data)
            return
        }
        guard let bytes = Self.bytes(hex: digits) else {
            throw StoreError(.invalidKey, "\(digits.count) hex digits: a history key in hex has an even number, at least \(2 * Self.minimumBytes)")
        }
        try self.init(bytes: bytes)
    }

    /// Reads a key file (see ``init(fileContent:)``). The warning, when there is one, says the file
    /// may be read by other users.
    public static func load(path: String) throws(StoreError) -> (key: HistoryKey, warning: String?) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw StoreError(.invalidKey, "cannot read '\(path)'")
        }
        guard data.count <= maximumFileBytes else {
            throw StoreError(.invalidKey, "'\(path)' is larger than \(maximumFileBytes / 1024) KiB: not a history key")
        }
        let key: HistoryKey
        do {
            key = try HistoryKey(fileContent: Array(data))
        } catch {
            throw StoreError(.invalidKey, "'\(path)': \(error.message) (create one with `rota history keygen FILE`)")
        }
        var warning: String?
        if let mode = (try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? Int, mode & 0o077 != 0 {
            warning = "'\(path)' may be read by other users (mode \(String(mode, radix: 8))); chmod 600 it"
        }
        return (key, warning)
    }

    /// Writes a new random key (``minimumBytes`` from the system's generator, as 64 hex digits and a
    /// newline) to a new file of mode 0600; an existing file is never overwritten.
    public static func create(path: String) throws(StoreError) -> HistoryKey {
        let bytes = SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) }
        let key = try HistoryKey(bytes: bytes)
        let text = Array((SHA256.hex(bytes) + "\n").utf8)
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            let reason = errno == EEXIST ? "it exists (a key is never overwritten)" : String(cString: strerror(errno))
            throw StoreError(.invalidKey, "cannot create '\(path)': \(reason)")
        }
        defer { close(descriptor) }
        let written = text.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        guard written == text.count else {
            unlink(path)
            throw StoreError(.invalidKey, "cannot write '\(path)': \(String(cString: strerror(errno)))")
        }
        return key
    }

    /// The tag authenticating `parts` in `domain`: `v1:KEYID:MAC`.
    package func tag(_ domain: String, _ parts: [[UInt8]]) -> String {
        "v1:\(id):" + SHA256.hex(Array(code(domain, parts)))
    }

    /// What a tag says about `parts` in `domain`.
    package func check(_ tag: String?, _ domain: String, _ parts: [[UInt8]]) -> TagCheck {
        guard let tag, !tag.isEmpty else { return .missing }
        let fields = tag.split(separator: ":", omittingEmptySubsequences: false)
        guard fields.count == 3, fields[0] == "v1", let mac = Self.bytes(hex: Array(fields[2].utf8)), mac.count == 32 else { return .invalid }
        guard fields[1] == id else { return .otherKey(String(fields[1].prefix(16))) }
        // Constant time: `==` of a MAC against bytes is swift-crypto's safeCompare.
        return code(domain, parts) == mac ? .valid : .invalid
    }

    /// HMAC-SHA256 over the domain, then each part preceded by its length (8 bytes, big-endian),
    /// so that no two different lists of parts give the same message.
    private func code(_ domain: String, _ parts: [[UInt8]]) -> HashedAuthenticationCode<Crypto.SHA256> {
        var hmac = HMAC<Crypto.SHA256>(key: SymmetricKey(data: bytes))
        hmac.update(data: Array(domain.utf8))
        for part in parts {
            withUnsafeBytes(of: UInt64(part.count).bigEndian) { hmac.update(data: $0) }
            hmac.update(data: part)
        }
        return hmac.finalize()
    }

    private static func isSpace(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09 }

    private static func hexValue(_ digit: UInt8) -> UInt8? {
        switch digit {
        case 0x30...0x39: digit - 0x30
        case 0x61...0x66: digit - 0x61 + 10
        case 0x41...0x46: digit - 0x41 + 10
        default: nil
        }
    }

    /// The bytes of an even number of hex digits; nil for anything else.
    static func bytes(hex digits: [UInt8]) -> [UInt8]? {
        guard digits.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(digits.count / 2)
        var index = 0
        while index + 1 < digits.count {
            guard let high = hexValue(digits[index]), let low = hexValue(digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return bytes
    }
}

/// What a tag says about what it claims to authenticate (``HistoryKey/check(_:_:_:)``).
package enum TagCheck: Equatable, Sendable {
    /// Made with this key over exactly these parts.
    case valid
    /// No tag at all.
    case missing
    /// Made with another key (its ID).
    case otherKey(String)
    /// Malformed, or not made over these parts with this key.
    case invalid
}
