import Foundation
import RotaRedis
import RotaRedisServer
import RotaStreams
import Testing

@Suite struct StreamTests {
    // S-062
    @Test func destroyWithAndWithoutData() async throws {
        try await withEnv { env in
            let stream = try env.stream("empty")
            try await stream.destroy()
            #expect(try await env.exists(stream.key) == false)
            try await stream.add(name: "foo", payload: "bar".bytes)
            #expect(try await env.exists(stream.key))
            try await stream.destroy()
            #expect(try await env.exists(stream.key) == false)
        }
    }

    // S-063, S-087
    @Test func streamOptionDefaults() throws {
        let defaults = RedisStream.Options()
        #expect(defaults.maxLength == 1000)
        #expect(defaults.ttl == nil)
        let capped = RedisStream.Options(maxLength: 10)
        #expect(capped.maxLength == 10)
        #expect(capped.ttl == nil)
        let absolute = RedisStream.Options(ttl: .absolute(.seconds(2)))
        #expect(absolute.maxLength == 1000)
        #expect(absolute.ttl == .absolute(.seconds(2)))
        let sliding = RedisStream.Options(ttl: .sliding(.seconds(2)))
        #expect(sliding.ttl == .sliding(.seconds(2)))
    }

    @Test func keyLayout() throws {
        let client = RedisClient(configuration: RedisConfiguration(endpoint: .tcp(host: "127.0.0.1", port: 1)))
        let stream = try RedisStream(name: "orders", keySpace: try RedisKeySpace("pool1"), client: client)
        #expect(stream.key == "rota:{pool1}:stream:orders")
        #expect(stream.sinksKey == "rota:{pool1}:stream:orders:sinks")
    }

    /// Bad names and options fail before any I/O: the client here is never run.
    @Test(arguments: ["", "a b", "a*", "a?", "a[", "a]", "a{", "a}", "nul\0", String(repeating: "x", count: 513)])
    func invalidNamesAreRejected(name: String) throws {
        let client = RedisClient(configuration: RedisConfiguration(endpoint: .tcp(host: "127.0.0.1", port: 1)))
        let space = try RedisKeySpace("pool")
        let error = #expect(throws: RedisError.self) { try RedisStream(name: name, keySpace: space, client: client) }
        #expect(error?.code == .invalidArgument)
        let stream = try RedisStream(name: "ok", keySpace: space, client: client)
        let sinkError = #expect(throws: RedisError.self) { try StreamSink(name: name, stream: stream) }
        #expect(sinkError?.code == .invalidArgument)
    }

    @Test func invalidOptionsAreRejected() throws {
        let client = RedisClient(configuration: RedisConfiguration(endpoint: .tcp(host: "127.0.0.1", port: 1)))
        let space = try RedisKeySpace("pool")
        #expect(throws: RedisError.self) { try RedisStream(name: "s", keySpace: space, client: client, options: .init(maxLength: -1)) }
        #expect(throws: RedisError.self) { try RedisStream(name: "s", keySpace: space, client: client, options: .init(ttl: .absolute(.zero))) }
        #expect(throws: RedisError.self) { try RedisStream(name: "s", keySpace: space, client: client, options: .init(ttl: .sliding(.seconds(-1)))) }
        let stream = try RedisStream(name: "s", keySpace: space, client: client)
        #expect(throws: RedisError.self) { try StreamSink(name: "g", stream: stream, options: .init(start: .after("nope"))) }
        #expect(throws: RedisError.self) { try StreamSink(name: "g", stream: stream, options: .init(ackGracePeriod: .zero)) }
        #expect(throws: RedisError.self) { try StreamSink(name: "g", stream: stream, options: .init(topic: "a", topicPattern: "b")) }
        #expect(throws: RedisError.self) { try StreamReader(stream: stream, options: .init(maxPolled: 0)) }
        let other = try RedisStream(name: "s", keySpace: try RedisKeySpace("other"), client: client)
        #expect(throws: RedisError.self) { try StreamSink(name: "g", streams: [stream, other]) }
        #expect(throws: RedisError.self) { try StreamSink(name: "g", streams: []) }
    }

    // S-064
    @Test func addWritesNameAndPayload() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            let id = try #require(try await stream.add(name: "foo", payload: "bar".bytes))
            let entries = try #require(try await env.client.send("XRANGE", stream.key, "-", "+").array)
            #expect(entries.count == 1)
            #expect(entries.first?.array?.first?.string == id)
            #expect(entries.first?.array?[1] == .array([.bulkString("n".bytes), .bulkString("foo".bytes), .bulkString("p".bytes), .bulkString("bar".bytes)]))
        }
    }

    @Test func onlyIfExistsDoesNotCreateTheStream() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            #expect(try await stream.add(name: "x", onlyIfExists: true) == nil)
            #expect(try await env.exists(stream.key) == false)
            try await stream.add(name: "first")
            #expect(try await stream.add(name: "second", onlyIfExists: true) != nil)
            #expect(try await stream.length() == 2)
        }
    }

    @Test func binaryPayloadsRoundTrip() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            let payload: [UInt8] = [0, 255, 1, 0, 0xC3, 0x28]
            try await stream.add(name: "bin", payload: payload)
            try await StreamReader.withReader(streams: [stream], options: .init(blockDuration: .milliseconds(100), start: .oldest)) { reader in
                let event = try await expectEvent(reader.events)
                #expect(event.payload == payload)
            }
        }
    }

    @Test func maxLengthTrimsApproximately() async throws {
        try await withEnv { env in
            let stream = try env.stream("s", .init(maxLength: 10))
            for i in 0..<500 { try await stream.add(name: "e\(i)") }
            let length = try await stream.length()
            #expect(length >= 10)
            #expect(length < 500)
        }
    }

    // S-065
    @Test func absoluteTTL() async throws {
        try await withEnv { env in
            let stream = try env.stream("s", .init(ttl: .absolute(.seconds(2))))
            try await stream.add(name: "a")
            try await Task.sleep(for: .milliseconds(250))
            let first = try #require(try await env.client.send("PTTL", stream.key).int)
            #expect(first > 0 && first <= 2000 && first < 1900)
            try await stream.add(name: "b")
            let second = try #require(try await env.client.send("PTTL", stream.key).int)
            #expect(second <= first && second < 1900)
        }
    }

    // S-066
    @Test func slidingTTL() async throws {
        try await withEnv { env in
            let stream = try env.stream("s", .init(ttl: .sliding(.seconds(2))))
            try await stream.add(name: "a")
            try await Task.sleep(for: .milliseconds(250))
            let first = try #require(try await env.client.send("PTTL", stream.key).int)
            #expect(first < 1900)
            try await stream.add(name: "b")
            let second = try #require(try await env.client.send("PTTL", stream.key).int)
            #expect(second > 1500)
        }
    }

    @Test func sinkJoinAppliesTheTTLToStreamAndRegistry() async throws {
        try await withEnv { env in
            let stream = try env.stream("s", .init(ttl: .absolute(.seconds(30))))
            try await StreamSink.withSink(name: "g", streams: [stream], options: .init(blockDuration: .milliseconds(100))) { _ in
                let streamTTL = try await env.client.send("PTTL", stream.key).int ?? -1
                let registryTTL = try await env.client.send("PTTL", stream.sinksKey).int ?? -1
                #expect(streamTTL > 0 && streamTTL <= 30_000)
                #expect(registryTTL > 0 && registryTTL <= 30_000)
            }
        }
    }

    // S-067 (adapted: no rmap tombstone; destroy deletes the registry hash)
    @Test func destroyRemovesTheStreamAndItsSinksRegistry() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            try await StreamSink.withSink(name: "gateway", streams: [stream], options: .init(blockDuration: .milliseconds(100))) { _ in }
            #expect(try await env.exists(stream.sinksKey))
            #expect(try await env.client.send("HEXISTS", stream.sinksKey, "gateway").int == 1)
            try await stream.destroy()
            #expect(try await env.exists(stream.key) == false)
            #expect(try await env.exists(stream.sinksKey) == false)
        }
    }

    // S-068
    @Test func removeByID() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            let first = try #require(try await stream.add(name: "a"))
            try await stream.add(name: "b")
            #expect(try await stream.remove(ids: [first]) == 1)
            #expect(try await stream.length() == 1)
            #expect(try await stream.remove(ids: []) == 0)
        }
    }

    // S-069
    @Test func topicField() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            try await stream.add(name: "bar", payload: "baz".bytes, topic: "foo")
            try await stream.add(name: "untopical", topic: "")
            let entries = try #require(try await env.client.send("XRANGE", stream.key, "-", "+").array)
            #expect(entries.count == 2)
            #expect(entries[0].array?[1] == .array(["n", "bar", "p", "baz", "t", "foo"].map { .bulkString($0.bytes) }))
            #expect(entries[1].array?[1].array?.count == 4)  // no `t` field for an empty topic
        }
    }

    // S-086
    @Test func eventCreationTimeComesFromTheID() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            let id = try #require(try await stream.add(name: "a"))
            let ms = try #require(id.split(separator: "-").first.flatMap { Double($0) })
            try await StreamReader.withReader(streams: [stream], options: .init(blockDuration: .milliseconds(100), start: .oldest)) { reader in
                let event = try await expectEvent(reader.events)
                #expect(event.id == id)
                #expect(event.createdAt == Date(timeIntervalSince1970: ms / 1000))
                #expect(abs(event.createdAt.timeIntervalSinceNow) < 60)
            }
            let made = StreamEvent(id: "1700000000123-7", stream: "s", sink: nil, name: "x", topic: nil, payload: [])
            #expect(made.createdAt == Date(timeIntervalSince1970: 1_700_000_000.123))
        }
    }
}
