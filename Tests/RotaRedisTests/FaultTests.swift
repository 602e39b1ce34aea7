import Foundation
import Logging
import ServiceLifecycle
import RotaRedis
import RotaRedisServer
import Testing

@Suite struct FaultTests {
    @Test func reconnectsAfterClientKill() async throws {
        try await withRedis(configure: { $0.database = 2 }) { server, client in
            let p = testPrefix()
            _ = try await client.send("SET", p + "k", "before")
            try await RedisClient.withClient(server.configuration) { admin in
                let killed = try await admin.send("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
                #expect((killed.int ?? 0) >= 1)
            }
            // Commands after the kill are carried by a fresh connection, SELECTed on db 2 again.
            try await eventually("the client reconnects") { try await client.send("GET", p + "k").string == "before" }
            for i in 0..<50 { #expect(try await client.send("ECHO", "\(i)").string == "\(i)") }
        }
    }

    @Test func reconnectsAfterServerRestartAndQueuedCommandsWait() async throws {
        try await withRedis { server, client in
            #expect(try await client.send("PING") == .simpleString("PONG"))
            await server.kill()
            // Once the client noticed (a command now waits in the queue rather than being written
            // into the dead socket), a command issued while the server is down waits for the reconnect.
            try await eventually("the client notices the server is gone") {
                let error = await caught { _ = try await client.send(RedisCommand("PING"), timeout: .milliseconds(50)) }
                return (error as? RedisError)?.code == .timeout
            }
            async let reply = client.send(RedisCommand("ECHO", "queued"), timeout: .seconds(8))
            try await server.start()
            #expect(try await reply.string == "queued")
        }
    }

    @Test func commandWhileDisconnectedTimesOutWithAClearError() async throws {
        try await withRedis { server, client in
            #expect(try await client.send("PING") == .simpleString("PONG"))
            await server.kill()
            let started = ContinuousClock.now
            let error = await caught { _ = try await client.send(RedisCommand("PING"), timeout: .milliseconds(300)) }
            let redisError = try #require(error as? RedisError)
            #expect(redisError.code == .timeout || redisError.code == .connectionClosed)
            #expect(ContinuousClock.now - started < .seconds(3))
            if redisError.code == .timeout {
                #expect(redisError.message.contains("no connection to 127.0.0.1:\(server.port)"))
            }
            try await server.start()
            try await eventually("the client reconnects") { try await client.send("PING") == .simpleString("PONG") }
        }
    }

    @Test func aclUserLogsIn() async throws {
        var options = RedisServer.Options()
        options.password = "default-pw"
        options.extraConfig = ["user alice on >wonderland ~* &* +@all"]
        try await RedisServer.withServer(options: options) { server in
            let url = "redis://alice:wonderland@127.0.0.1:\(server.port)"
            try await RedisClient.withClient(try RedisConfiguration(url: url)) { client in
                let user = try await client.send("ACL", "WHOAMI")
                #expect(user.string == "alice")
            }
            try await RedisClient.withClient(try RedisConfiguration(url: server.url)) { client in
                let user = try await client.send("ACL", "WHOAMI")
                #expect(user.string == "default")
            }
        }
    }

    @Test func wrongPasswordFailsClearlyWithoutRetryStorm() async throws {
        var options = RedisServer.Options()
        options.password = "right"
        try await RedisServer.withServer(options: options) { server in
            var configuration = try RedisConfiguration(url: "redis://:wrong@127.0.0.1:\(server.port)")
            configuration.reconnect = .init(initial: .milliseconds(1), maximum: .milliseconds(5))
            let client = RedisClient(configuration: configuration)
            let runError = await caught { try await client.run() }
            #expect((runError as? RedisError)?.code == .authenticationFailed)
            #expect((runError as? RedisError)?.message.contains("WRONGPASS") == true)
            // After the refusal, commands fail at once with the same clear error.
            let sendError = await caught { _ = try await client.send("PING") }
            #expect((sendError as? RedisError)?.code == .authenticationFailed)
            try await RedisClient.withClient(server.configuration) { admin in
                // One connection per command connection, plus the admin's own: no retries.
                let connections = try await infoField(admin, section: "stats", field: "total_connections_received")
                #expect(connections <= configuration.commandConnections + admin.configuration.commandConnections)
            }
        }
    }

    @Test func pubSubDeliversAndResubscribesAfterServerRestart() async throws {
        try await withRedis { server, client in
            let p = testPrefix()
            try await client.withSubscription(channels: [p + "news"], patterns: [p + "pat.*"]) { subscription in
                var events = subscription.makeAsyncIterator()
                #expect(try await client.send("PUBLISH", p + "news", [0, 1, 2] as [UInt8]) == .integer(1))
                #expect(try await events.next() == .message(channel: p + "news", payload: [0, 1, 2]))
                _ = try await client.send("PUBLISH", p + "pat.x", "hello")
                #expect(try await events.next() == .patternMessage(pattern: p + "pat.*", channel: p + "pat.x", payload: Array("hello".utf8)))

                try await server.restart()
                #expect(try await events.next() == .resubscribed)
                try await eventually("the publisher reconnects") {
                    try await client.send("PUBLISH", p + "news", "after") == .integer(1)
                }
                #expect(try await events.next() == .message(channel: p + "news", payload: Array("after".utf8)))

                try await subscription.unsubscribe(channels: [p + "news"])
                #expect(try await client.send("PUBLISH", p + "news", "gone") == .integer(0))
                try await subscription.subscribe(channels: [p + "other"])
                #expect(try await client.send("PUBLISH", p + "other", "x") == .integer(1))
                #expect(try await events.next() == .message(channel: p + "other", payload: Array("x".utf8)))
            }
        }
    }

    @Test func pubSubResubscribesAfterClientKill() async throws {
        try await withRedis { server, client in
            let p = testPrefix()
            try await client.withSubscription(channels: [p + "c"]) { subscription in
                var events = subscription.makeAsyncIterator()
                _ = try await client.send("CLIENT", "KILL", "TYPE", "pubsub")
                #expect(try await events.next() == .resubscribed)
                #expect(try await client.send("PUBLISH", p + "c", "m") == .integer(1))
                #expect(try await events.next() == .message(channel: p + "c", payload: Array("m".utf8)))
            }
        }
    }
}

@Suite struct RobustnessTests {
    @Test func tooDeeplyNestedReplyIsAProtocolErrorAndTheClientRecovers() async throws {
        try await withRedis(configure: { $0.commandConnections = 1 }) { _, client in
            // hiredis 0.14 parses at most 7 levels of nested arrays; this reply has 9.
            let deep = RedisScript("return {{{{{{{{{1}}}}}}}}}")
            let error = await caught { _ = try await client.evaluate(deep) }
            #expect((error as? RedisError)?.code == .protocolError)
            // The connection was dropped with the unparsable reply; the next command reconnects.
            try await eventually("the client reconnects") { try await client.send("PING") == .simpleString("PONG") }
            let shallow = try await client.evaluate(RedisScript("return {{{{{{1}}}}}}"))
            #expect(shallow == .array([.array([.array([.array([.array([.array([.integer(1)])])])])])]))
        }
    }

    @Test func clientStopsOnGracefulShutdown() async throws {
        try await RedisServer.withServer { server in
            let client = RedisClient(configuration: server.configuration)
            let group = ServiceGroup(services: [client], logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                try await eventually("the client serves commands") { try await client.send("PING") == .simpleString("PONG") }
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
            }
            // Once shut down, the client refuses commands instead of hanging.
            let error = await caught { _ = try await client.send("PING") }
            #expect((error as? RedisError)?.code == .connectionClosed)
        }
    }

    @Test func emptyCommandIsRejectedBeforeSending() async throws {
        try await withRedis { _, client in
            let error = await caught { _ = try await client.send(RedisCommand(arguments: [])) }
            #expect((error as? RedisError)?.code == .invalidArgument)
            let pong = try await client.send("PING")
            #expect(pong == .simpleString("PONG"))
        }
    }
}
