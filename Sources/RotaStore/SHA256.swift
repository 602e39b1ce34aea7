internal import Crypto

/// SHA-256 (FIPS 180-4): the history chains' hash and the plan's content hash. swift-crypto's
/// (BoringSSL on Linux, with the CPU's SHA extensions where it has them) behind the few calls the
/// store and the service make, so they keep working on byte arrays.
package enum SHA256 {
    /// The 32-byte digest of `message`.
    package static func hash(_ message: [UInt8]) -> [UInt8] {
        Crypto.SHA256.hash(data: message).withUnsafeBytes { Array($0) }
    }

    /// Lower-case hexadecimal of a digest.
    package static func hex(_ digest: some Collection<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        text.reserveCapacity(digest.count * 2)
        for byte in digest {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: text, as: UTF8.self)
    }
}
