import Foundation
@testable import RotaMap
import RotaRedis
import RotaRedisServer
import Testing

@Suite struct MapScenarioTests {
    // S-036
    @Test func basicSetGetDeleteReset() async throws {
        try await withMapServer { _, client, space in
            try await ReplicatedMap.withMap("test", keySpace: space, client: client) { map in
                #expect(map.count == 0 && map.keys.isEmpty)
                let previous = try await map.set("foo", "bar")
                #expect(previous == nil)
                try await eventually("foo replicated") { map.texts == ["foo": "bar"] }
                #expect(map.keys == ["foo"])
                let deleted = try await map.delete("foo")
                #expect(deleted == bytes("bar"))
                try await eventually("foo deleted") { map.count == 0 && map.get("foo") == nil }
                for key in ["foo", "bar", "baz"] {
                    let old = try await map.set(key, key)
                    #expect(old == nil)
                }
                try await eventually("three keys") { map.count == 3 }
                #expect(try await map.delete("foo") == bytes("foo"))
                try await eventually("two keys") { map.texts == ["bar": "bar", "baz": "baz"] }
                try await map.reset()
                try await eventually("empty after reset") { map.count == 0 && map.get("bar") == nil }
            }
        }
    }

    // S-037, S-038
    @Test(arguments: [false, true])
    func ttlAbsoluteAndSliding(sliding: Bool) async throws {
        try await withMapServer { _, client, space in
            let ttl: ReplicatedMap.TTL = sliding ? .sliding(.seconds(20)) : .absolute(.seconds(20))
            try await ReplicatedMap.withMap("ttl", keySpace: space, client: client, options: .init(ttl: ttl)) { map in
                try await map.set("a", "1")
                let first = try #require(try await client.send("PTTL", map.contentKey).int)
                #expect(first > 0 && first <= 20_000)
                try await eventually("the TTL decreases") {
                    (try await client.send("PTTL", map.contentKey).int ?? 0) < first - 100
                }
                try await map.set("b", "2")
                let second = try #require(try await client.send("PTTL", map.contentKey).int)
                if sliding {
                    #expect(second > first - 100)
                    #expect(second > 19_500)
                } else {
                    #expect(second < first)
                }
            }
        }
    }

    // S-039
    @Test func setAndWaitIsReadYourWrite() async throws {
        try await withMapServer { _, client, space in
            try await ReplicatedMap.withMap("test", keySpace: space, client: client) { map in
                #expect(try await map.setAndWait("key1", "value1") == nil)
                #expect(map.string("key1") == "value1")
                #expect(try await map.setAndWait("key1", "value2") == bytes("value1"))
                #expect(map.string("key1") == "value2")
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for i in 0..<20 { group.addTask { try await map.set("k\(i)", "v") } }
                    group.addTask { try await map.setAndWait("waited", "yes") }
                    for i in 20..<40 { group.addTask { try await map.set("k\(i)", "v") } }
                    try await group.waitForAll()
                }
                #expect(map.string("waited") == "yes")
                let cancelled = Task {
                    withUnsafeCurrentTask { $0?.cancel() }
                    return try await map.setAndWait("never", "x")
                }
                let result = await cancelled.result
                #expect(throws: CancellationError.self) { try result.get() }
            }
        }
    }

    // S-040
    @Test func readsSurviveCloseWritesDoNotResetDoes() async throws {
        try await withMapServer { _, client, space in
            try await ReplicatedMap.withMap("test", keySpace: space, client: client) { map in
                try await map.setAndWait("foo", "bar")
                map.close()
                #expect(map.isClosed)
                #expect(map.count == 1 && map.keys == ["foo"] && map.string("foo") == "bar")
                let setError = await caught { try await map.set("foo", "baz") }
                #expect((setError as? ReplicatedMapError)?.code == .closed)
                let deleteError = await caught { try await map.delete("foo") }
                #expect((deleteError as? ReplicatedMapError)?.code == .closed)
                try await map.reset()
                #expect(try await client.send("HGET", map.contentKey, "foo").isNull)
            }
        }
    }

    // S-041, S-042, S-043
    @Test func emptyValuesAndExistence() async throws {
        try await withMapServer { _, client, space in
            try await ReplicatedMap.withMap("test", keySpace: space, client: client) { map in
                try await map.set("empty", "")
                try await eventually("empty value replicated") { map.get("empty") == [] }
                #expect(try await map.set("new", "v1") == nil)
                #expect(try await map.set("new", "v2") == bytes("v1"))
                #expect(try await map.set("empty", "nonempty") == [])
                try await eventually("overwritten") { map.string("empty") == "nonempty" && map.string("new") == "v2" }
                #expect(try await map.delete("missing") == nil)
                #expect(try await map.delete("new") == bytes("v2"))
                try await eventually("deleted") { map.get("new") == nil }
            }
        }
    }

    // S-044, S-048
    @Test func testAndSetOutcomes() async throws {
        try await withMapServer { _, client, space in
            try await ReplicatedMap.withMap("test", keySpace: space, client: client) { map in
                try await map.set("k", "v1")
                let first = try await map.testAndSet("k", test: "v1", "v2")
                #expect(first.previous == bytes("v1") && first.updated)
                let second = try await map.testAndSet("k", test: "v1", "v3")
                #expect(second.previous == bytes("v2") && !second.updated)
                let missing = try await map.testAndSet("missing", test: "", "x")
                #expect(missing.previous == nil && !missing.updated)
                try await eventually("value is v2") { map.string("k") == "v2" }
                #expect(try await client.send("HGET", map.contentKey, "missing").isNull)
            }
        }
    }

    // S-045, S-047
    @Test func testAndDeleteOutcomes() async throws {
        try await withMapServer { _, client, space in
            try await ReplicatedMap.withMap("test", keySpace: space, client: client) { map in
                try await map.setAndWait("k", "v")
                let wrong = try await map.testAndDelete("k", test: "nope")
                #expect(wrong.previous == bytes("v") && !wrong.deleted)
                #expect(map.string("k") == "v")
                let right = try await map.testAndDelete("k", test: "v")
                #expect(right.previous == bytes("v") && right.deleted)
                try await eventually("k deleted") { map.get("k") == nil }
                let missing = try await map.testAndDelete("k", test: "v")
                #expect(missing.previous == nil && !missing.deleted)
            }
        }
    }

    // S-046, S-050
    @Test func listsAppendUniqueRemove() async throws {
        try await withMapServer { _, client, space in
            try await ReplicatedMap.withMap("test", keySpace: space, client: client) { map in
                #expect(try await map.appendUnique("k", ["a", "b", "c"]) == ["a", "b", "c"])
                #expect(try await client.send("HGET", map.contentKey, "k").string == #"["a","b","c"]"#)
                #expect(try await map.appendUnique("k", ["d", "e", "a"]) == ["a", "b", "c", "d", "e"])
                #expect(try await map.appendUnique("k", ["a", "e"]) == ["a", "b", "c", "d", "e"])
                #expect(try await map.appendUnique("other", ["x", "y", "z"]) == ["x", "y", "z"])
                #expect(try await map.append("list", ["bar"]) == ["bar"])
                #expect(try await map.append("list", ["baz", "with,comma/slash"]) == ["bar", "baz", "with,comma/slash"])
                try await eventually("list replicated") { map.values("list") == ["bar", "baz", "with,comma/slash"] }
                let first = try await map.removeValues("list", ["bar", "with,comma/slash"])
                #expect(first.remaining == ["baz"] && first.removed)
                #expect(try await client.send("HGET", map.contentKey, "list").string == #"["baz"]"#)
                let last = try await map.removeValues("list", ["baz"])
                #expect(last.remaining == nil && last.removed)
                try await eventually("list gone") { map.get("list") == nil }
                let missing = try await map.removeValues("nothing", ["a"])
                #expect(missing.remaining == nil && !missing.removed)
                #expect(try await client.send("EXISTS", "list") == .integer(0))
            }
        }
    }

    // S-049
    @Test func testAndReset() async throws {
        try await withMapServer { _, client, space in
            try await ReplicatedMap.withMap("test", keySpace: space, client: client) { map in
                for i in 1...3 { try await map.set("key\(i)", "value\(i)") }
                #expect(try await map.testAndReset(keys: ["key1", "key2", "key3"], tests: ["value1", "value2", "value3"]))
                try await eventually("reset") { map.count == 0 }
                try await map.set("key1", "newvalue1")
                try await map.setAndWait("key2", "newvalue2")
                #expect(try await map.testAndReset(keys: ["key1", "key2"], tests: ["value1", "value2"]) == false)
                #expect(try await map.testAndReset(keys: ["key1", "key2"], tests: ["newvalue1", "value2"]) == false)
                #expect(try await map.testAndReset(keys: ["key1", "key3"], tests: ["newvalue1", "x"]) == false)
                #expect(map.count == 2)
                #expect(try await map.testAndReset(keys: [], tests: []))
                try await eventually("reset with no keys") { map.count == 0 }
                let mismatch = await caught { _ = try await map.testAndReset(keys: ["a"], tests: []) }
                #expect((mismatch as? ReplicatedMapError)?.code == .invalidArgument)
            }
        }
    }

    // S-051
    @Test func increment() async throws {
        try await withMapServer { _, client, space in
            try await ReplicatedMap.withMap("test", keySpace: space, client: client) { map in
                #expect(try await map.increment("n", by: 1) == 1)
                #expect(try await client.send("HGET", map.contentKey, "n").string == "1")
                #expect(try await map.increment("n", by: 41) == 42)
                #expect(try await map.increment("n", by: -1) == 41)
                #expect(try await map.increment("n", by: -41) == 0)
                #expect(try await client.send("HGET", map.contentKey, "n").string == "0")
                try await map.set("text", "abc")
                let error = await caught { _ = try await map.increment("text") }
                #expect((error as? ReplicatedMapError)?.code == .redis)
            }
        }
    }

    // S-053, S-054..056
    @Test func nameAndKeyValidation() async throws {
        try await withMapServer { _, client, space in
            #expect(throws: ReplicatedMapError.self) { _ = try ReplicatedMap("invalid*redis*key", keySpace: space, client: client) }
            #expect(throws: ReplicatedMapError.self) { _ = try ReplicatedMap("", keySpace: space, client: client) }
            try await ReplicatedMap.withMap("test", keySpace: space, client: client) { map in
                for key in ["", "a=b"] {
                    let set = await caught { try await map.set(key, "v") }
                    #expect((set as? ReplicatedMapError)?.code == .invalidKey)
                    let append = await caught { try await map.append(key, ["v"]) }
                    #expect((append as? ReplicatedMapError)?.code == .invalidKey)
                    let remove = await caught { try await map.removeValues(key, ["v"]) }
                    #expect((remove as? ReplicatedMapError)?.code == .invalidKey)
                    let testAndDelete = await caught { try await map.testAndDelete(key, test: "v") }
                    #expect((testAndDelete as? ReplicatedMapError)?.code == .invalidKey)
                }
                // Nothing reached Redis: the hash holds no user field.
                let fields = try await client.send("HLEN", map.contentKey)
                #expect(fields == .integer(0))
            }
        }
    }

    // S-058
    @Test func destroyThenReuse() async throws {
        try await withMapServer { _, client, space in
            try await ReplicatedMap.withMap("destroy-reuse", keySpace: space, client: client) { map in
                try await map.setAndWait("before", "1")
                let revision = map.revision
                try await map.destroy()
                try await eventually("destroyed") { map.count == 0 }
                let tombstone = try await client.send("HGETALL", map.contentKey)
                #expect(Set(tombstone.array?.compactMap(\.string) ?? []) == ["=rev", "\(revision + 1)", "=kind", "destroy", "=cleared"])
                try await map.set("after", "2")
                try await eventually("reused") { map.texts == ["after": "2"] }
                #expect(map.revision == revision + 2)
            }
        }
    }

    // S-059: malformed messages are rejected by the parser, before any state changes.
    @Test func malformedMessagesAreRejected() {
        #expect(MapMessageProbe.parses("destroy:") == false)
        #expect(MapMessageProbe.parses("reset:abc") == false)
        #expect(MapMessageProbe.parses("bogus:1") == false)
        #expect(MapMessageProbe.parses("no colon") == false)
        #expect(MapMessageProbe.parses("set:\u{3}\0\0\0foo") == false)
        #expect(MapMessageProbe.parses("destroy:7") == true)
        let set: [UInt8] = Array("set:".utf8) + [3, 0, 0, 0] + Array("foo".utf8) + [0, 0, 0, 0] + [1, 0, 0, 0] + Array("8".utf8)
        #expect(MapMessageProbe.parses(set) == true)
    }

    // S-061 and the waiter registry: a waiter is released by any later revision.
    @Test func waiterReleasedByLaterRevision() async throws {
        try await withMapServer { _, client, space in
            try await ReplicatedMap.withMap("test", keySpace: space, client: client) { map in
                let target = map.revision + 1
                async let waited: Void = map.wait(forRevision: target)
                try await map.set("a", "1")
                try await map.set("a", "2")
                try await waited
                #expect(map.revision >= target)
            }
        }
    }
}

enum MapMessageProbe {
    static func parses(_ text: String) -> Bool { MapMessage(Array(text.utf8)) != nil }
    static func parses(_ bytes: [UInt8]) -> Bool { MapMessage(bytes) != nil }
}

@Suite struct MapValueLimitTests {
    @Test("values over maxValueBytes are skipped by the replica: the key reads as absent, writes still complete, the map goes on")
    func oversizedValuesAreSkipped() async throws {
        try await withMapServer { _, client, space in
            try await ReplicatedMap.withMap("limited", keySpace: space, client: client, options: .init(maxValueBytes: 8)) { map in
                try await map.setAndWait("k", "small")
                #expect(map.get("k") == bytes("small"))
                // A change message with a value over the limit: the old value goes, the revision
                // still moves (setAndWait returns), the refusal is counted.
                try await map.setAndWait("k", "much too large")
                #expect(map.get("k") == nil)
                #expect(map.skippedValueCount == 1)
                // A new key whose first value is over the limit changes nothing here; the write
                // still completes.
                try await map.setAndWait("fresh", "also much too large")
                #expect(map.skippedValueCount == 2)
                try await map.setAndWait("other", "fits")
                #expect(map.texts == ["other": "fits"])
                // Written straight into the hash: a later snapshot skips it too.
                try await client.send("HSET", map.contentKey, "raw", "over eight bytes")
            }
            try await ReplicatedMap.withMap("limited", keySpace: space, client: client, options: .init(maxValueBytes: 8)) { map in
                #expect(map.texts == ["other": "fits"])
                #expect(map.skippedValueCount == 3)
            }
        }
    }
}
