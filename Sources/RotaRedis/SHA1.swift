internal import Crypto

/// SHA-1 of a byte string, as Redis names scripts (EVALSHA); swift-crypto's. Not used for anything
/// security-related.
enum SHA1 {
    static func hexDigest(_ message: some Collection<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var hex: [UInt8] = []
        hex.reserveCapacity(40)
        for byte in Insecure.SHA1.hash(data: Array(message)) {
            hex.append(digits[Int(byte >> 4)])
            hex.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: hex, as: UTF8.self)
    }
}

/// A Lua script, identified by the SHA-1 of its source as Redis does.
///
/// Run it with ``RedisClient/evaluate(_:keys:arguments:)``: it is sent by SHA (EVALSHA) and loaded
/// again whenever the server answers NOSCRIPT — after a restart or a SCRIPT FLUSH.
public struct RedisScript: Sendable, Hashable {
    public let source: String
    public let sha1: String

    public init(_ source: String) {
        self.source = source
        self.sha1 = SHA1.hexDigest(source.utf8)
    }
}
