import Foundation
import RotaRedis
import RotaRedisServer
import Testing

@Suite struct ClientTests {
    @Test func basicCommands() async throws {
        try await withRedis { _, client in
            let p = testPrefix()
            #expect(try await client.send("PING") == .simpleString("PONG"))
            #expect(try await client.send("SET", p + "k", "v") == .simpleString("OK"))
            #expect(try await client.send("GET", p + "k").string == "v")
            #expect(try await client.send("GET", p + "missing").isNull)
            #expect(try await client.send("INCRBY", p + "n", 41) == .integer(41))
            #expect(try await client.send("INCR", p + "n").int == 42)
            let list = try await client.send("LRANGE", p + "none", 0, -1)
            #expect(list == .array([]))
        }
    }

    @Test func serverErrorsCarryTheServerMessage() async throws {
        try await withRedis { _, client in
            let p = testPrefix()
            _ = try await client.send("SET", p + "s", "text")
            let error = await caught { _ = try await client.send("INCR", p + "s") }
            let redisError = try #require(error as? RedisError)
            #expect(redisError.code == .server)
            #expect(redisError.message == "ERR value is not an integer or out of range")
            #expect(redisError.serverErrorPrefix == "ERR")
            // The connection is still fine afterwards.
            #expect(try await client.send("PING") == .simpleString("PONG"))
        }
    }

    /// `send(_:onReply:)` returns before the reply; the reply, an error reply or a timeout reaches
    /// the callback once, and replies stay matched to the awaited commands around it.
    @Test func sendWithoutWaitingReportsEachOutcomeToItsCallback() async throws {
        try await withRedis { server, client in
            let p = testPrefix()
            let outcomes = AsyncStream<(String, Result<RedisValue, RedisError>)>.makeStream()
            func report(_ tag: String) -> @Sendable (Result<RedisValue, RedisError>) -> Void {
                { result in outcomes.continuation.yield((tag, result)) }
            }
            _ = try await client.send("SET", p + "s", "text")
            try client.send(RedisCommand("INCR", p + "n"), onReply: report("incr"))
            try client.send(RedisCommand("INCR", p + "s"), onReply: report("error"))
            #expect(try await client.send("ECHO", "between").string == "between")
            var iterator = outcomes.stream.makeAsyncIterator()
            var seen: [String: Result<RedisValue, RedisError>] = [:]
            while seen.count < 2, let (tag, result) = await iterator.next() { seen[tag] = result }
            #expect(try seen["incr"]?.get() == .integer(1))
            guard case .failure(let refused)? = seen["error"] else { throw TestFailure("INCR of text did not fail: \(String(describing: seen["error"]))") }
            #expect(refused.code == .server)

            // A paused server: the command's timeout reaches the callback.
            try await client.withDedicatedConnection { connection in
                _ = try await connection.send("PING")
                server.pause(true)
                defer { server.pause(false) }
                try connection.send(RedisCommand("PING"), timeout: .milliseconds(200), onReply: report("timeout"))
                guard let (tag, result) = await iterator.next() else { throw TestFailure("no outcome") }
                #expect(tag == "timeout")
                guard case .failure(let error) = result else { throw TestFailure("expected a timeout, got \(result)") }
                #expect(error.code == .timeout)
            }
            #expect(try await client.send("GET", p + "n").string == "1")
        }
    }

    @Test func binaryPayloadsRoundTrip() async throws {
        try await withRedis { _, client in
            let key: [UInt8] = Array(testPrefix().utf8) + [0, 0xFF, 0x0A, 0]
            var payload: [UInt8] = [0, 0, 0xC3, 0x28, 0xFF, 0xFE, 0x0D, 0x0A, 0x24, 0x2A]  // NULs, invalid UTF-8, CRLF, '$', '*'
            payload += (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            _ = try await client.send("SET", key, payload)
            #expect(try await client.send("GET", key).bytes == payload)
            #expect(try await client.send("STRLEN", key) == .integer(Int64(payload.count)))
            let empty: [UInt8] = []
            _ = try await client.send("SET", key, empty)
            #expect(try await client.send("GET", key) == .bulkString([]))
        }
    }

    @Test func tenThousandConcurrentCommandsEachGetTheirOwnReply() async throws {
        try await withRedis { _, client in
            let mismatches = try await withThrowingTaskGroup(of: Int.self) { group in
                for i in 0..<10_000 {
                    group.addTask {
                        let reply = try await client.send("ECHO", "reply-\(i)")
                        return reply.string == "reply-\(i)" ? 0 : 1
                    }
                }
                return try await group.reduce(0, +)
            }
            #expect(mismatches == 0)
        }
    }

    @Test func pipelineReturnsRepliesInOrderWithErrorsInPlace() async throws {
        try await withRedis { _, client in
            let p = testPrefix()
            let replies = try await client.pipeline([
                RedisCommand("SET", p + "a", "1"),
                RedisCommand("INCR", p + "a"),
                RedisCommand("HGET", p + "a", "f"),
                RedisCommand("GET", p + "a"),
            ])
            #expect(replies.count == 4)
            #expect(replies[0] == .simpleString("OK"))
            #expect(replies[1] == .integer(2))
            guard case .error(let message) = replies[2] else {
                Issue.record("expected an error reply, got \(replies[2])")
                return
            }
            #expect(message.hasPrefix("WRONGTYPE"))
            #expect(replies[3].string == "2")
        }
    }

    @Test func unixSocketAndDatabaseSelection() async throws {
        try await RedisServer.withServer { server in
            let path = try #require(server.socketPath)
            let p = testPrefix()
            try await RedisClient.withClient(try RedisConfiguration(url: "unix://\(path)?db=3")) { client in
                _ = try await client.send("SET", p + "k", "in-db-3")
            }
            try await RedisClient.withClient(server.configuration) { client in
                let value = try await client.send("GET", p + "k")
                #expect(value.isNull)
            }
            try await RedisClient.withClient(try RedisConfiguration(url: "redis://127.0.0.1:\(server.port)/3")) { client in
                let value = try await client.send("GET", p + "k")
                #expect(value.string == "in-db-3")
            }
        }
    }

    @Test func evalShaReloadsScriptsAfterScriptFlush() async throws {
        try await withRedis { _, client in
            let p = testPrefix()
            let script = RedisScript("return redis.call('INCRBY', KEYS[1], ARGV[1])")
            #expect(try await client.evaluate(script, keys: [p + "n"], arguments: [5]) == .integer(5))
            _ = try await client.send("SCRIPT", "FLUSH")
            #expect(try await client.send("SCRIPT", "EXISTS", script.sha1) == .array([.integer(0)]))
            #expect(try await client.evaluate(script, keys: [p + "n"], arguments: [2]) == .integer(7))
            #expect(try await client.send("SCRIPT", "EXISTS", script.sha1) == .array([.integer(1)]))
            let failing = RedisScript("return redis.error_reply('BOOM custom')")
            let error = await caught { _ = try await client.evaluate(failing) }
            #expect((error as? RedisError)?.message == "BOOM custom")
        }
    }

    @Test func blockedReadGroupDoesNotDelayOtherCommands() async throws {
        try await withRedis { _, client in
            let p = testPrefix()
            let stream = p + "stream"
            _ = try await client.send("XGROUP", "CREATE", stream, "g", "$", "MKSTREAM")
            try await withThrowingTaskGroup(of: RedisValue.self) { group in
                group.addTask {
                    try await client.withDedicatedConnection { connection in
                        try await connection.send(
                            RedisCommand("XREADGROUP", "GROUP", "g", "c1", "COUNT", 1, "BLOCK", 30_000, "STREAMS", stream, ">"),
                            timeout: .seconds(40))
                    }
                }
                // Wait until the server sees the consumer blocked.
                try await eventually("the consumer blocks") {
                    try await infoField(client, section: "clients", field: "blocked_clients") == 1
                }
                // Meanwhile ordinary commands keep flowing on the shared connections.
                for i in 0..<200 {
                    #expect(try await client.send("ECHO", "\(i)").string == "\(i)")
                }
                #expect(try await infoField(client, section: "clients", field: "blocked_clients") == 1)
                _ = try await client.send("XADD", stream, "*", "field", "value")
                let reply = try #require(try await group.next())
                let entries = reply.array?.first?.array?[1].array
                #expect(entries?.first?.array?[1] == .array([.bulkString(Array("field".utf8)), .bulkString(Array("value".utf8))]))
            }
        }
    }

    @Test func timeoutFailsTheCommandAndTheLateReplyReachesNobodyElse() async throws {
        try await withRedis { _, client in
            let p = testPrefix()
            try await client.withDedicatedConnection { connection in
                // Connected first, so the BLPOP is written rather than expiring in the queue.
                _ = try await connection.send("PING")
                let started = ContinuousClock.now
                let error = await caught {
                    _ = try await connection.send(RedisCommand("BLPOP", p + "list", 60), timeout: .milliseconds(200))
                }
                #expect((error as? RedisError)?.code == .timeout)
                #expect(ContinuousClock.now - started < .seconds(20))  // far below the server's 60 s
                try await eventually("the BLPOP blocks on the server") {
                    try await infoField(client, section: "clients", field: "blocked_clients") == 1
                }
                // The BLPOP is still blocked on the server; queue an ECHO behind it, then release it.
                async let echo = connection.send("ECHO", "mine")
                try await eventually("the ECHO is queued behind BLPOP") { await connection.pendingCount() >= 2 }
                _ = try await client.send("RPUSH", p + "list", "late-reply")
                #expect(try await echo.string == "mine")
                #expect(try await connection.send("ECHO", "next").string == "next")
            }
        }
    }

    /// Also under the connection's task executor, where the cancelled task awaits on the loop.
    @Test(arguments: [false, true])
    func cancellationReturnsPromptlyAndKeepsRepliesMatched(onTheConnectionsExecutor: Bool) async throws {
        try await withRedis { _, client in
            let p = testPrefix()
            try await client.withDedicatedConnection { connection in
                let blocked = Task(executorPreference: onTheConnectionsExecutor ? connection.taskExecutor : nil) {
                    try await connection.send(RedisCommand("BLPOP", p + "list", 10), timeout: .seconds(20))
                }
                try await eventually("BLPOP blocks") {
                    try await infoField(client, section: "clients", field: "blocked_clients") == 1
                }
                blocked.cancel()
                let result = await blocked.result
                #expect(throws: CancellationError.self) { try result.get() }
                async let echo = connection.send("ECHO", "after-cancel")
                _ = try await client.send("RPUSH", p + "list", "for-the-cancelled-one")
                #expect(try await echo.string == "after-cancel")
                // The cancelled BLPOP did consume the element on the server; its reply was dropped.
                #expect(try await client.send("LLEN", p + "list") == .integer(0))
            }
        }
    }

    @Test func alreadyCancelledTaskSendsNothing() async throws {
        try await withRedis { _, client in
            let p = testPrefix()
            let task = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                return try await client.send("SET", p + "k", "v")
            }
            let result = await task.result
            #expect(throws: CancellationError.self) { try result.get() }
            let exists = try await client.send("EXISTS", p + "k")
            #expect(exists == .integer(0))
        }
    }

    /// Under the connection's task executor, a task and its child tasks run on the connection's
    /// event loop, before and after every round trip; without it they do not (the test process
    /// keeps Swift's default global executor). Replies still reach their own callers.
    @Test func tasksPreferringTheConnectionsExecutorRunOnItsLoop() async throws {
        try await withRedis { _, client in
            try await client.withDedicatedConnection { connection in
                _ = try await connection.send("PING")
                #expect(!connection.eventLoop.inEventLoop)
                let onLoop = try await withTaskExecutorPreference(connection.taskExecutor) {
                    var everyStep = connection.eventLoop.inEventLoop
                    for index in 0..<200 {
                        let reply = try await connection.send("ECHO", "m\(index)")
                        everyStep = everyStep && reply.string == "m\(index)" && connection.eventLoop.inEventLoop
                    }
                    async let child: Bool = {
                        let reply = try await connection.send("ECHO", "child")
                        return reply.string == "child" && connection.eventLoop.inEventLoop
                    }()
                    return try await child && everyStep
                }
                #expect(onLoop)
            }
        }
    }
}
