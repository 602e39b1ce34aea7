/// SHA-256 (FIPS 180-4) of a byte string: the history chain's hash (Foundation on Linux has no
/// CryptoKit). One-shot: the chain hashes short messages it has just built in a buffer.
package enum SHA256 {
    /// The 32-byte digest of `message`.
    package static func hash(_ message: [UInt8]) -> [UInt8] {
        message.withUnsafeBytes { hash($0) }
    }

    static func hash(_ message: UnsafeRawBufferPointer) -> [UInt8] {
        var state: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32) =
            (0x6A09_E667, 0xBB67_AE85, 0x3C6E_F372, 0xA54F_F53A, 0x510E_527F, 0x9B05_688C, 0x1F83_D9AB, 0x5BE0_CD19)
        let fullBlocks = message.count / 64
        withUnsafeTemporaryAllocation(of: UInt32.self, capacity: 64) { w in
            let w = w.baseAddress!
            for block in 0..<fullBlocks {
                compress(&state, message.baseAddress! + block * 64, w)
            }
            // The tail: the remaining bytes, 0x80, zeros, and the bit length (one or two blocks).
            withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 128) { tail in
                let tail = UnsafeMutableRawBufferPointer(tail)
                let rest = message.count - fullBlocks * 64
                if rest > 0 {
                    tail.baseAddress!.copyMemory(from: message.baseAddress! + fullBlocks * 64, byteCount: rest)
                }
                tail[rest] = 0x80
                let length = rest < 56 ? 64 : 128
                for index in (rest + 1)..<(length - 8) { tail[index] = 0 }
                let bits = UInt64(message.count) &* 8
                for index in 0..<8 { tail[length - 1 - index] = UInt8(truncatingIfNeeded: bits >> UInt64(index * 8)) }
                for block in stride(from: 0, to: length, by: 64) {
                    compress(&state, UnsafeRawPointer(tail.baseAddress! + block), w)
                }
            }
        }
        var digest = [UInt8](repeating: 0, count: 32)
        digest.withUnsafeMutableBytes { out in
            for (index, word) in [state.0, state.1, state.2, state.3, state.4, state.5, state.6, state.7].enumerated() {
                out.storeBytes(of: word.bigEndian, toByteOffset: index * 4, as: UInt32.self)
            }
        }
        return digest
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

    @inline(__always)
    private static func compress(
        _ state: inout (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32), _ block: UnsafeRawPointer,
        _ w: UnsafeMutablePointer<UInt32>
    ) {
        for index in 0..<16 {
            w[index] = UInt32(bigEndian: block.loadUnaligned(fromByteOffset: index * 4, as: UInt32.self))
        }
        for index in 16..<64 {
            let a = w[index - 15], b = w[index - 2]
            let s0 = rotr(a, 7) ^ rotr(a, 18) ^ (a &>> 3)
            let s1 = rotr(b, 17) ^ rotr(b, 19) ^ (b &>> 10)
            w[index] = w[index - 16] &+ s0 &+ w[index - 7] &+ s1
        }
        var (a, b, c, d, e, f, g, h) = state
        k.withUnsafeBufferPointer { k in
            let k = k.baseAddress!
            var index = 0
            while index < 64 {
                step(a, b, c, &d, e, f, g, &h, k[index] &+ w[index])
                step(h, a, b, &c, d, e, f, &g, k[index + 1] &+ w[index + 1])
                step(g, h, a, &b, c, d, e, &f, k[index + 2] &+ w[index + 2])
                step(f, g, h, &a, b, c, d, &e, k[index + 3] &+ w[index + 3])
                step(e, f, g, &h, a, b, c, &d, k[index + 4] &+ w[index + 4])
                step(d, e, f, &g, h, a, b, &c, k[index + 5] &+ w[index + 5])
                step(c, d, e, &f, g, h, a, &b, k[index + 6] &+ w[index + 6])
                step(b, c, d, &e, f, g, h, &a, k[index + 7] &+ w[index + 7])
                index += 8
            }
        }
        state = (state.0 &+ a, state.1 &+ b, state.2 &+ c, state.3 &+ d, state.4 &+ e, state.5 &+ f, state.6 &+ g, state.7 &+ h)
    }

    /// One round, with the eight working variables renamed instead of moved: d += t1, h = t1 + t2.
    @inline(__always)
    private static func step(
        _ a: UInt32, _ b: UInt32, _ c: UInt32, _ d: inout UInt32, _ e: UInt32, _ f: UInt32, _ g: UInt32, _ h: inout UInt32, _ kw: UInt32
    ) {
        let t1 = h &+ (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) &+ ((e & f) ^ (~e & g)) &+ kw
        let t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) &+ ((a & b) ^ (a & c) ^ (b & c))
        d = d &+ t1
        h = t1 &+ t2
    }

    // Masking shifts: no over-shift checks.
    @inline(__always)
    private static func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { x &>> n | x &<< (32 &- n) }

    private static let k: [UInt32] = [
        0x428A_2F98, 0x7137_4491, 0xB5C0_FBCF, 0xE9B5_DBA5, 0x3956_C25B, 0x59F1_11F1, 0x923F_82A4, 0xAB1C_5ED5,
        0xD807_AA98, 0x1283_5B01, 0x2431_85BE, 0x550C_7DC3, 0x72BE_5D74, 0x80DE_B1FE, 0x9BDC_06A7, 0xC19B_F174,
        0xE49B_69C1, 0xEFBE_4786, 0x0FC1_9DC6, 0x240C_A1CC, 0x2DE9_2C6F, 0x4A74_84AA, 0x5CB0_A9DC, 0x76F9_88DA,
        0x983E_5152, 0xA831_C66D, 0xB003_27C8, 0xBF59_7FC7, 0xC6E0_0BF3, 0xD5A7_9147, 0x06CA_6351, 0x1429_2967,
        0x27B7_0A85, 0x2E1B_2138, 0x4D2C_6DFC, 0x5338_0D13, 0x650A_7354, 0x766A_0ABB, 0x81C2_C92E, 0x9272_2C85,
        0xA2BF_E8A1, 0xA81A_664B, 0xC24B_8B70, 0xC76C_51A3, 0xD192_E819, 0xD699_0624, 0xF40E_3585, 0x106A_A070,
        0x19A4_C116, 0x1E37_6C08, 0x2748_774C, 0x34B0_BCB5, 0x391C_0CB3, 0x4ED8_AA4A, 0x5B9C_CA4F, 0x682E_6FF3,
        0x748F_82EE, 0x78A5_636F, 0x84C8_7814, 0x8CC7_0208, 0x90BE_FFFA, 0xA450_6CEB, 0xBEF9_A3F7, 0xC671_78F2,
    ]
}
