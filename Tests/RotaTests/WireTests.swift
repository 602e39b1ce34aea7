import Foundation
@testable import Rota
import Testing

private extension String {
    var utf8Bytes: [UInt8] { Array(utf8) }
}

/// 2022-01-01T00:00:00Z.
private let newYear2022 = Date(timeIntervalSince1970: 1_640_995_200)

@Suite("Pool wire records")
struct WireTests {
    struct JobCase: Sendable, CustomTestStringConvertible {
        var name: String
        var record: JobRecord
        var testDescription: String { name }
    }

    static let jobCases: [JobCase] = [
        JobCase(name: "simple job", record: JobRecord(key: "job1", dispatcher: "node-a", payload: "payload".utf8Bytes, createdAt: newYear2022, requeued: false)),
        JobCase(name: "empty job", record: JobRecord(key: "job1", dispatcher: "node-a", createdAt: newYear2022)),
        JobCase(name: "requeued job", record: JobRecord(key: "job1", dispatcher: "node-a", payload: "payload".utf8Bytes, createdAt: newYear2022, requeued: true)),
    ]

    @Test("job record round trip", arguments: jobCases)
    func jobRoundTrip(_ testCase: JobCase) throws {
        let bytes = testCase.record.encoded()
        let decoded = try #require(JobRecord(decoding: bytes))
        #expect(decoded.key == testCase.record.key)
        #expect(decoded.dispatcher == testCase.record.dispatcher)
        #expect(decoded.payload == testCase.record.payload)
        #expect(decoded.createdAt == testCase.record.createdAt)
        #expect(decoded.requeued == testCase.record.requeued)
        #expect(decoded == testCase.record)
        #expect(decoded.encoded() == bytes)
        #expect(JobKeyRecord.key(fromEventPayload: bytes) == testCase.record.key)
    }

    @Test func jobRecordLayout() {
        let bytes = JobRecord(key: "k", dispatcher: "d", payload: [0xAB], createdAt: newYear2022, requeued: true).encoded()
        let nanos: Int64 = 1_640_995_200_000_000_000
        let expected: [UInt8] = [1, 0, 0, 0, 0x6B, 1, 0, 0, 0, 0x64, 1, 0, 0, 0, 0xAB]
            + withUnsafeBytes(of: nanos.littleEndian, Array.init) + [1]
        #expect(bytes == expected)
    }

    @Test func emptyPayloadIsZeroLength() throws {
        let bytes = JobRecord(key: "", dispatcher: "", createdAt: Date(timeIntervalSince1970: 0)).encoded()
        #expect(bytes == [UInt8](repeating: 0, count: 4 + 4 + 4 + 8 + 1))
        let decoded = try #require(JobRecord(decoding: bytes))
        #expect(decoded.payload.isEmpty && decoded.key.isEmpty && decoded.dispatcher.isEmpty)
    }

    @Test func oldFormatWithoutRequeuedByte() throws {
        let record = JobRecord(key: "job1", dispatcher: "node-a", payload: "payload".utf8Bytes, createdAt: newYear2022, requeued: true)
        let old = Array(record.encoded().dropLast())
        let decoded = try #require(JobRecord(decoding: old))
        #expect(decoded.key == "job1" && decoded.payload == "payload".utf8Bytes && decoded.createdAt == newYear2022)
        #expect(!decoded.requeued)
        #expect(JobKeyRecord.key(fromEventPayload: old) == "job1")
    }

    @Test func truncatedJobRecordsAreRejected() {
        let bytes = JobRecord(key: "job1", dispatcher: "node-a", payload: "payload".utf8Bytes, createdAt: newYear2022).encoded()
        // Dropping only the requeued byte is the old format; anything shorter cuts a field.
        for length in 0..<(bytes.count - 1) {
            #expect(JobRecord(decoding: Array(bytes.prefix(length))) == nil, "prefix of \(length) bytes")
        }
    }

    @Test func oversizedLengthsAreRejected() {
        let bytes = JobRecord(key: "job1", dispatcher: "node-a", payload: "payload".utf8Bytes, createdAt: newYear2022).encoded()
        for length in [UInt32(bytes.count), 0x7FFF_FFFF, .max] {
            var patched = bytes
            withUnsafeBytes(of: length.littleEndian) { patched.replaceSubrange(0..<4, with: $0) }
            #expect(JobRecord(decoding: patched) == nil)
            #expect(JobKeyRecord.key(fromEventPayload: patched) == nil)
            #expect(NotificationRecord(decoding: patched) == nil)
            #expect(Envelope(decoding: patched) == nil)
            #expect(AckRecord(decoding: patched) == nil)
        }
        // Payload length one past the end of the record.
        var payloadPatched = bytes
        let payloadLengthOffset = 4 + 4 + 4 + 6
        let remaining = bytes.count - payloadLengthOffset - 4
        withUnsafeBytes(of: UInt32(remaining + 1).littleEndian) { payloadPatched.replaceSubrange(payloadLengthOffset..<payloadLengthOffset + 4, with: $0) }
        #expect(JobRecord(decoding: payloadPatched) == nil)
    }

    @Test func strayBytesAreRejected() {
        let bytes = JobRecord(key: "job1", dispatcher: "node-a", createdAt: newYear2022).encoded()
        #expect(JobRecord(decoding: Array(bytes.dropLast()) + [2]) == nil, "requeued must be 0 or 1")
        #expect(JobRecord(decoding: bytes + [0]) == nil, "trailing byte")
        #expect(Envelope(decoding: Envelope(sender: "s", payload: [1]).encoded() + [0]) == nil)
    }

    @Test func randomBytesAreRejected() {
        var generator = SplitMix64(state: 0x5EED)
        for _ in 0..<2000 {
            let count = Int.random(in: 0...64, using: &generator)
            let garbage = (0..<count).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
            #expect(JobRecord(decoding: garbage) == nil)
            #expect(JobKeyRecord(decoding: garbage) == nil)
            #expect(NotificationRecord(decoding: garbage) == nil)
            #expect(Envelope(decoding: garbage) == nil)
            #expect(AckRecord(decoding: garbage) == nil)
        }
    }

    @Test func invalidUTF8KeyIsRejected() {
        let bytes: [UInt8] = [2, 0, 0, 0, 0xC3, 0x28]
        #expect(JobKeyRecord(decoding: bytes) == nil)
        #expect(JobKeyRecord.key(fromEventPayload: bytes) == nil)
    }

    @Test func binaryPayloadRoundTrips() throws {
        let payload: [UInt8] = [0, 0xFF, 0xC3, 0x28, 0, 0xED, 0xA0, 0x80, 0]
        let job = JobRecord(key: "job1", dispatcher: "node-a", payload: payload, createdAt: newYear2022)
        #expect(try #require(JobRecord(decoding: job.encoded())).payload == payload)
        let notification = NotificationRecord(key: "job1", payload: payload)
        #expect(NotificationRecord(decoding: notification.encoded()) == notification)
        let envelope = Envelope(sender: "node-a", payload: payload)
        #expect(Envelope(decoding: envelope.encoded()) == envelope)
    }

    @Test func unicodeKeyRoundTrips() throws {
        let record = JobKeyRecord(key: "jöb-🚀")
        #expect(JobKeyRecord(decoding: record.encoded()) == record)
        #expect(record.encoded().count == 4 + "jöb-🚀".utf8.count)
    }

    @Test func timestampsKeepNanoseconds() throws {
        for date in [
            newYear2022,
            Date(timeIntervalSince1970: 0),
            Date(timeIntervalSince1970: -1.5),
            Date(timeIntervalSince1970: 1_640_995_200.25),
            Date(timeIntervalSince1970: 1_640_995_200.000_001),
        ] {
            let record = JobRecord(key: "k", dispatcher: "d", createdAt: date)
            let decoded = try #require(JobRecord(decoding: record.encoded()))
            #expect(abs(decoded.createdAt.timeIntervalSince(date)) < 1e-6, "\(date.timeIntervalSince1970)")
            #expect(decoded.encoded() == record.encoded())
        }
    }

    @Test func extremeDatesSaturate() throws {
        for date in [Date.distantFuture, .distantPast] {
            let bytes = JobRecord(key: "k", dispatcher: "d", createdAt: date).encoded()
            #expect(JobRecord(decoding: bytes) != nil)
        }
    }

    @Test func jobKeyRecordRoundTrip() throws {
        let record = JobKeyRecord(key: "job1")
        let bytes = record.encoded()
        #expect(JobKeyRecord(decoding: bytes) == record)
        #expect(JobKeyRecord.key(fromEventPayload: bytes) == "job1")
    }

    @Test func notificationRoundTrip() throws {
        for record in [NotificationRecord(key: "job1", payload: "done".utf8Bytes), NotificationRecord(key: "job2")] {
            let bytes = record.encoded()
            let decoded = try #require(NotificationRecord(decoding: bytes))
            #expect(decoded == record)
            #expect(decoded.encoded() == bytes)
            #expect(JobKeyRecord.key(fromEventPayload: bytes) == record.key)
        }
    }

    @Test func envelopeRoundTrip() throws {
        let inner = JobKeyRecord(key: "job1").encoded()
        let record = Envelope(sender: "node-a", payload: inner)
        let bytes = record.encoded()
        let decoded = try #require(Envelope(decoding: bytes))
        #expect(decoded.sender == "node-a" && decoded.payload == inner)
        #expect(decoded.encoded() == bytes)
        #expect(JobKeyRecord(decoding: decoded.payload)?.key == "job1")
        #expect(Envelope(decoding: Envelope(sender: "", payload: []).encoded()) == Envelope(sender: ""))
    }

    @Test func ackRoundTrip() throws {
        for record in [AckRecord(eventID: "1640995200000-0"), AckRecord(eventID: "1-1", error: "worker stopped")] {
            let bytes = record.encoded()
            let decoded = try #require(AckRecord(decoding: bytes))
            #expect(decoded == record)
            #expect(decoded.succeeded == record.error.isEmpty)
            #expect(decoded.encoded() == bytes)
        }
    }
}

@Suite("Job hashing")
struct JumpHashTests {
    struct Vector: Sendable, CustomTestStringConvertible {
        var key: String
        var crc: UInt64
        /// Expected buckets for n = 1, 2, 3, 4, 5, 10, 100.
        var buckets: [Int]
        var testDescription: String { key.isEmpty ? "empty key" : key }
    }

    static let counts = [1, 2, 3, 4, 5, 10, 100]

    static let vectors: [Vector] = [
        Vector(key: "job1", crc: 0xD943_590F_F3DF_37BD, buckets: [0, 0, 2, 2, 2, 2, 2]),
        Vector(key: "job2", crc: 0x9EE9_23E6_5838_C889, buckets: [0, 0, 0, 3, 3, 9, 69]),
        Vector(key: "hello", crc: 0x9B1E_DAE5_DBB9_37B1, buckets: [0, 1, 2, 3, 3, 9, 34]),
        Vector(key: "", crc: 0, buckets: [0, 0, 0, 0, 0, 0, 0]),
    ]

    @Test func crcCheckValue() {
        #expect(JumpHasher.crc64("123456789".utf8) == 0x995D_C9BB_DF19_39FA)
    }

    @Test("hash vectors", arguments: vectors)
    func vector(_ vector: Vector) {
        #expect(JumpHasher.crc64(vector.key.utf8) == vector.crc)
        let hasher = JumpHasher()
        #expect(Self.counts.map { hasher.bucket(for: vector.key, buckets: $0) } == vector.buckets)
        #expect(Self.counts.map { JumpHasher.jump(vector.crc, buckets: $0) } == vector.buckets)
    }

    @Test func degenerateBucketCounts() {
        let hasher = JumpHasher()
        for count in [Int.min, -1, 0, 1] {
            #expect(hasher.bucket(for: "job1", buckets: count) == 0)
        }
        // Must not trap however large the count.
        #expect((0..<Int.max).contains(hasher.bucket(for: "job1", buckets: .max)))
    }

    @Test func bucketsStayInRange() {
        let hasher = JumpHasher()
        for index in 0..<1000 {
            for count in [2, 3, 7, 64] {
                #expect((0..<count).contains(hasher.bucket(for: "job-\(index)", buckets: count)))
            }
        }
    }

    @Test func addingAWorkerMovesKeysOnlyToIt() {
        let hasher = JumpHasher()
        let total = 10_000
        var moved = 0
        var strays: [String] = []
        for index in 0..<total {
            let key = "job-\(index)"
            let before = hasher.bucket(for: key, buckets: 4)
            let after = hasher.bucket(for: key, buckets: 5)
            guard before != after else { continue }
            moved += 1
            if after != 4 { strays.append(key) }
        }
        #expect(strays.isEmpty)
        let fraction = Double(moved) / Double(total)
        #expect(fraction >= 0.15 && fraction <= 0.25, "moved \(fraction)")
    }

    @Test func concurrentHashingAgrees() async {
        let hasher = JumpHasher()
        let keys = (0..<1000).map { "job-\($0)" }
        let results = await withTaskGroup(of: [Int].self) { group in
            for _ in 0..<8 {
                group.addTask { keys.map { hasher.bucket(for: $0, buckets: 10) } }
            }
            return await group.reduce(into: [[Int]]()) { $0.append($1) }
        }
        #expect(results.count == 8)
        let serial = keys.map { hasher.bucket(for: $0, buckets: 10) }
        #expect(results.allSatisfy { $0 == serial })
    }
}
