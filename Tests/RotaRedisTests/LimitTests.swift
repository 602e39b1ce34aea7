import Foundation
import RotaRedis
import Testing

@Suite("Redis client: reply limits", .timeLimit(.minutes(2)))
struct ReplyLimitTests {
    /// The ID of the connection serving the client's commands (one command connection).
    private func connectionID(_ client: RedisClient) async throws -> Int {
        try #require(try await client.send("CLIENT", "ID").int)
    }

    /// A client with one command connection and the given limits (the defaults otherwise).
    private func withLimits(
        bytes: Int = 1 << 30, elements: Int = 1 << 22, _ body: (RedisClient, String) async throws -> Void
    ) async throws {
        try await withRedis(configure: {
            $0.commandConnections = 1
            $0.maxReplyBytes = bytes
            $0.maxReplyElements = elements
        }) { _, client in
            try await body(client, testPrefix())
        }
    }

    @Test("a bulk reply over maxReplyBytes fails its command, resets the connection, and the client works again")
    func oversizedBulk() async throws {
        try await withLimits(bytes: 64 << 10) { client, p in
            try await client.send("SET", p + "big", Array(repeating: UInt8(ascii: "x"), count: 4 << 20))
            try await client.send("SET", p + "small", "fits")
            let before = try await connectionID(client)
            let error = await caught { _ = try await client.send("GET", p + "big") }
            let redisError = try #require(error as? RedisError)
            #expect(redisError.code == .replyTooLarge)
            #expect(redisError.message.contains("65536 bytes"), "\(redisError.message)")
            #expect(redisError.message.contains("4194304"), "the announced length is named: \(redisError.message)")
            try await eventually("the client reconnects") { try await client.send("GET", p + "small").string == "fits" }
            #expect(try await connectionID(client) != before, "the connection was reset")
        }
    }

    @Test("bytes are counted across the elements of an array as they arrive")
    func oversizedArrayOfSmallBulks() async throws {
        try await withLimits(bytes: 64 << 10) { client, p in
            // 20,000 bulks of 16 bytes: about 460 KB in all, no single bulk near the limit.
            for chunk in stride(from: 0, to: 20_000, by: 1000) {
                let items: [any RedisArgument] = (chunk..<(chunk + 1000)).map { String(format: "item-%011d", $0) }
                _ = try await client.send(RedisCommand(arguments: ["RPUSH", p + "list"] + items))
            }
            let error = await caught { _ = try await client.send("LRANGE", p + "list", 0, -1) }
            #expect((error as? RedisError)?.code == .replyTooLarge)
            try await eventually("the client reconnects") { try await client.send("LLEN", p + "list").int == 20_000 }
            #expect(try await client.send("LRANGE", p + "list", 0, 99).array?.count == 100)
        }
    }

    @Test("the byte limit is exact: a reply of exactly maxReplyBytes passes, one byte more fails")
    func exactByteLimit() async throws {
        // GET of 1000 bytes is `$1000\r\n` + 1000 bytes + `\r\n`: 1009 bytes.
        for (limit, passes) in [(1009, true), (1008, false)] {
            try await withLimits(bytes: limit) { client, p in
                try await client.send("SET", p + "k", Array(repeating: UInt8(ascii: "y"), count: 1000))
                let error = await caught { _ = try await client.send("GET", p + "k") }
                if passes {
                    #expect(error == nil, "limit \(limit): \(String(describing: error))")
                } else {
                    #expect((error as? RedisError)?.code == .replyTooLarge, "limit \(limit): \(String(describing: error))")
                }
            }
        }
    }

    @Test("a reply with more array elements than maxReplyElements fails, nested arrays counted, and the client works again")
    func tooManyElements() async throws {
        try await withLimits(elements: 1000) { client, p in
            let items: [any RedisArgument] = (0..<2000).map { "f\($0)" }
            _ = try await client.send(RedisCommand(arguments: ["RPUSH", p + "list"] + items))
            let before = try await connectionID(client)
            let error = await caught { _ = try await client.send("LRANGE", p + "list", 0, -1) }
            let redisError = try #require(error as? RedisError)
            #expect(redisError.code == .replyTooLarge)
            #expect(redisError.message.contains("maxReplyElements"), "\(redisError.message)")
            try await eventually("the client reconnects") { try await client.send("LLEN", p + "list").int == 2000 }
            #expect(try await connectionID(client) != before, "the connection was reset")
            #expect(try await client.send("LRANGE", p + "list", 0, 998).array?.count == 999)

            // 300 stream entries: 300 at the top, but 4 more per entry inside (entry, ID and
            // fields array, field, value): 1,500 in all.
            for index in 0..<300 { try await client.send("XADD", p + "stream", "*", "f", "\(index)") }
            let nested = await caught { _ = try await client.send("XRANGE", p + "stream", "-", "+") }
            #expect((nested as? RedisError)?.code == .replyTooLarge)
            try await eventually("the client reconnects") { try await client.send("XLEN", p + "stream").int == 300 }
            #expect(try await client.send("XRANGE", p + "stream", "-", "+", "COUNT", 199).array?.count == 199)
        }
    }

    @Test("the defaults leave ordinary large replies alone")
    func defaults() async throws {
        let configuration = RedisConfiguration(endpoint: .tcp(host: "localhost"))
        #expect(configuration.maxReplyBytes == 1 << 30)
        #expect(configuration.maxReplyElements == 1 << 22)
        try await withRedis { _, client in
            let p = testPrefix()
            try await client.send("SET", p + "k", Array(repeating: UInt8(ascii: "z"), count: 8 << 20))
            #expect(try await client.send("GET", p + "k").bytes?.count == 8 << 20)
        }
    }
}
