/// Chooses which of `buckets` active workers (ordered by creation time) runs a job.
///
/// Injectable so tests can pin jobs to workers; must be safe for concurrent use.
public protocol JobHasher: Sendable {
    /// Returns the index, in `0..<buckets`, of the worker that should run the
    /// job named `key`; 0 when `buckets` is 1 or less.
    func bucket(for key: String, buckets: Int) -> Int
}

/// The default ``JobHasher``: jump consistent hash of the key's CRC-64/XZ.
///
/// Matches the Go implementation (`crc64.ECMA` table and Lamping & Veach's
/// jump hash), so Swift and Go nodes in one pool agree on job placement.
/// Adding a worker moves only about 1/n of the keys, all onto the new worker.
public struct JumpHasher: JobHasher {
    /// Creates the hasher; it is stateless.
    public init() {}

    public func bucket(for key: String, buckets: Int) -> Int {
        guard buckets > 1 else { return 0 }
        return Self.jump(Self.crc64(key.utf8), buckets: buckets)
    }

    // Reflected ECMA-182 polynomial, as in Go's crc64.ECMA.
    private static let polynomial: UInt64 = 0xC96C_5795_D787_0F42

    // Immutable after lazy, thread-safe initialisation, so no shared mutable state.
    private static let table: [UInt64] = (0..<256).map { index in
        var crc = UInt64(index)
        for _ in 0..<8 {
            crc = crc & 1 == 1 ? (crc >> 1) ^ polynomial : crc >> 1
        }
        return crc
    }

    /// CRC-64/XZ: init and final XOR all ones, so "123456789" → 0x995DC9BBDF1939FA.
    static func crc64(_ bytes: some Sequence<UInt8>) -> UInt64 {
        let table = Self.table
        var crc = ~UInt64(0)
        for byte in bytes {
            crc = table[Int(truncatingIfNeeded: crc ^ UInt64(byte)) & 0xFF] ^ (crc >> 8)
        }
        return ~crc
    }

    /// Lamping & Veach jump consistent hash; returns 0 when `buckets` is 1 or less.
    static func jump(_ hash: UInt64, buckets: Int) -> Int {
        guard buckets > 1 else { return 0 }
        let count = Int64(buckets)
        var key = hash
        var bucket: Int64 = -1
        var next: Int64 = 0
        while next < count {
            bucket = next
            key = key &* 2_862_933_555_777_941_757 &+ 1
            let candidate = Double(bucket + 1) * (Double(UInt64(1) << 31) / Double((key >> 33) + 1))
            // Past Int64 the conversion would trap; such a jump exceeds any count anyway.
            guard candidate < 0x1p63 else { break }
            next = Int64(candidate)
        }
        return Int(bucket)
    }
}
