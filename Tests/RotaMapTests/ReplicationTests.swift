import Foundation
import RotaMap
import RotaRedis
import RotaRedisServer
import Testing

@Suite struct ReplicationTests {
    @Test func threeReplicasUnderConcurrentWritersConverge() async throws {
        try await withMapServer { server, client, space in
            // Each replica has its own client (its own connections), as separate processes would.
            try await RedisClient.withClient(server.configuration) { client2 in
                try await RedisClient.withClient(server.configuration) { client3 in
                    try await ReplicatedMap.withMap("shared", keySpace: space, client: client) { a in
                        try await ReplicatedMap.withMap("shared", keySpace: space, client: client2) { b in
                            try await ReplicatedMap.withMap("shared", keySpace: space, client: client3) { c in
                                try await withThrowingTaskGroup(of: Void.self) { group in
                                    for (index, map) in [a, b, c].enumerated() {
                                        group.addTask {
                                            for i in 0..<100 {
                                                try await map.set("k\(i % 17)", "w\(index)-\(i)")
                                                if i % 10 == 0 { try await map.increment("counter") }
                                                if i % 25 == 0 { try await map.delete("k\((i + 3) % 17)") }
                                            }
                                        }
                                    }
                                    try await group.waitForAll()
                                }
                                let final = try #require(try await client.send("HGET", a.contentKey, "=rev").int)
                                try await eventually("replicas reach the final revision") {
                                    a.revision == Int64(final) && b.revision == Int64(final) && c.revision == Int64(final)
                                }
                                #expect(a.texts == b.texts)
                                #expect(b.texts == c.texts)
                                #expect(a.string("counter") == "30")
                                let hash = try await client.send("HGETALL", a.contentKey).array ?? []
                                var stored: [String: String] = [:]
                                for pair in stride(from: 0, to: hash.count - 1, by: 2) {
                                    let field = hash[pair].string ?? ""
                                    if !field.hasPrefix("=") { stored[field] = hash[pair + 1].string }
                                }
                                #expect(a.texts == stored)
                            }
                        }
                    }
                }
            }
        }
    }

    // S-057 and the "CLIENT KILL TYPE pubsub while writes happen": no update is lost.
    @Test func replicaWhoseSubscriptionIsKilledConvergesWithNoLostUpdate() async throws {
        try await withMapServer { server, client, space in
            try await RedisClient.withClient(server.configuration) { writerClient in
                try await ReplicatedMap.withMap("test", keySpace: space, client: client) { observer in
                    try await ReplicatedMap.withMap("test", keySpace: space, client: writerClient) { writer in
                        try await writer.setAndWait("foo", "bar")
                        try await eventually("observer has foo") { observer.string("foo") == "bar" }
                        try await withThrowingTaskGroup(of: Void.self) { group in
                            group.addTask {
                                for i in 0..<300 { try await writer.set("key\(i % 50)", "value\(i)") }
                            }
                            group.addTask {
                                for _ in 0..<3 {
                                    _ = try await writerClient.send("CLIENT", "KILL", "TYPE", "pubsub")
                                    try await Task.sleep(for: .milliseconds(15))
                                }
                            }
                            try await group.waitForAll()
                        }
                        try await writer.set("foo2", "bar2")
                        let final = Int64(try #require(try await client.send("HGET", writer.contentKey, "=rev").int))
                        try await eventually("observer converges") { observer.revision == final && writer.revision == final }
                        #expect(observer.texts == writer.texts)
                        #expect(observer.string("foo2") == "bar2")
                        #expect(observer.count == 52)
                    }
                }
            }
        }
    }

    // S-060 and the issue: a Reset made while a replica was disconnected is reported as Reset.
    @Test func resetWhileDisconnectedIsReportedAsReset() async throws {
        try await withMapServer { server, client, space in
            try await RedisClient.withClient(server.configuration) { writerClient in
                try await ReplicatedMap.withMap("reconnect-reset-event", keySpace: space, client: client) { observer in
                    try await ReplicatedMap.withMap("reconnect-reset-event", keySpace: space, client: writerClient) { writer in
                        try await writer.setAndWait("k", "v")
                        try await eventually("observer has k") { observer.string("k") == "v" }
                        let changes = observer.changes()
                        // Kill the observer's subscription, then reset and write again: whether the observer
                        // sees the messages or resyncs from the hash, it must report a reset.
                        _ = try await writerClient.send("CLIENT", "KILL", "TYPE", "pubsub")
                        try await writer.reset()
                        try await writer.set("later", "x")
                        #expect(try await firstChange(in: changes, matching: .reset, within: .seconds(5)))
                        try await eventually("observer converged") { observer.texts == ["later": "x"] }
                    }
                }
            }
        }
    }

    @Test func notificationsCoalesceWithoutMaskingAReset() async throws {
        try await withMapServer { _, client, space in
            try await ReplicatedMap.withMap("test", keySpace: space, client: client) { map in
                let changes = map.changes()
                try await map.set("a", "1")
                try await map.reset()
                try await map.set("b", "2")
                try await map.setAndWait("c", "3")
                // Nobody consumed while the four changes landed: one notification is pending, and it is
                // the strongest of them.
                var iterator = changes.makeAsyncIterator()
                #expect(await iterator.next() == .reset)
                try await map.setAndWait("d", "4")
                #expect(await iterator.next() == .change)
            }
        }
    }

    @Test func revisionGapTriggersResync() async throws {
        try await withMapServer { _, client, space in
            try await ReplicatedMap.withMap("test", keySpace: space, client: client) { map in
                try await map.setAndWait("a", "1")
                // A write that bumps the revision without publishing, as if its message had been lost.
                _ = try await client.send("HSET", map.contentKey, "silent", "yes")
                _ = try await client.send("HINCRBY", map.contentKey, "=rev", 1)
                try await map.set("b", "2")
                try await eventually("the gap is noticed and the map resynced") {
                    map.string("silent") == "yes" && map.string("b") == "2"
                }
            }
        }
    }

    @Test func replicaSurvivesServerRestart() async throws {
        var options = RedisServer.Options()
        options.appendOnly = true
        try await RedisServer.withServer(options: options) { server in
            var configuration = server.configuration
            configuration.reconnect = .init(initial: .milliseconds(10), maximum: .milliseconds(200))
            try await RedisClient.withClient(configuration) { client in
                let space = try RedisKeySpace("restart")
                try await ReplicatedMap.withMap("test", keySpace: space, client: client) { map in
                    try await map.setAndWait("before", "1")
                    try await server.restart()
                    try await eventually("writes work again") { (try? await map.set("after", "2")) != nil }
                    try await eventually("replica caught up") { map.texts == ["before": "1", "after": "2"] }
                }
            }
        }
    }
}

/// Waits for a notification of `kind` on `changes`, up to `timeout`.
func firstChange(in changes: AsyncStream<MapChange>, matching kind: MapChange, within timeout: Duration) async throws -> Bool {
    try await withThrowingTaskGroup(of: Bool.self) { group in
        group.addTask {
            for await change in changes where change == kind { return true }
            return false
        }
        group.addTask {
            try await Task.sleep(for: timeout)
            return false
        }
        let found = try await group.next() ?? false
        group.cancelAll()
        return found
    }
}
