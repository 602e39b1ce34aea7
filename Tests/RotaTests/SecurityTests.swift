import Foundation
@testable import Rota
import RotaRedis
import RotaRedisServer
import Testing

/// The ACL a pool's user needs: every command Rota uses, on the pool's keys and channels only.
func poolACL(user: String, password: String, pool: String) -> [any RedisArgument] {
    ["ACL", "SETUSER", user, "reset", "on", ">\(password)", "~rota:{\(pool)}:*", "&rota:{\(pool)}:*",
     "+@all", "-@admin", "-@dangerous", "+client|setname", "+client|id", "+client|unblock"]
}

@Suite("Pool: least-privilege Redis users", .serialized, .timeLimit(.minutes(2)))
struct SecurityTests {
    @Test("a pool runs under an ACL user limited to its keys and channels; another pool's user cannot touch it")
    func aclPerPool() async throws {
        try await RedisServer.withServer { server in
            try await RedisClient.withClient(server.configuration) { admin in
                let args = poolACL(user: "alpha", password: "alpha-secret", pool: "alpha")
                _ = try await admin.send(RedisCommand(arguments: args))
                _ = try await admin.send(RedisCommand(arguments: poolACL(user: "beta", password: "beta-secret", pool: "beta")))
                var alphaConfiguration = server.configuration
                alphaConfiguration.username = "alpha"
                alphaConfiguration.password = "alpha-secret"
                var beta = server.configuration
                beta.username = "beta"
                beta.password = "beta-secret"
                let betaConfiguration = beta
                try await RedisClient.withClient(alphaConfiguration) { alphaClient in
                    try await Node.withNode(pool: "alpha", client: alphaClient, options: testOptions()) { node in
                        let handler = RecordingHandler()
                        _ = try await node.addWorker(handler)
                        try await node.dispatch(key: "job", payload: bytes("secret payload"))
                        #expect(handler.runningKeys == ["job"])
                        try await RedisClient.withClient(betaConfiguration) { betaClient in
                            // Beta can neither read nor change alpha's jobs.
                            let read = await caught { _ = try await betaClient.send("HGETALL", "rota:{alpha}:map:job-payloads") } as? RedisError
                            #expect(read?.message.contains("NOPERM") == true)
                            let write = await caught { _ = try await betaClient.send("HDEL", "rota:{alpha}:map:owners", "job") } as? RedisError
                            #expect(write?.message.contains("NOPERM") == true)
                            // A node of pool alpha on beta's credentials fails to join, clearly.
                            let intruder = try Node(pool: "alpha", client: betaClient, options: testOptions())
                            let joined = await withTaskGroup(of: (any Error)?.self) { group in
                                group.addTask { await caught { try await intruder.run() } }
                                group.addTask { await caught { try await intruder.waitUntilReady() } }
                                let first = await group.next() ?? nil
                                group.cancelAll()
                                return first
                            }
                            #expect(joined != nil, "beta must not join pool alpha")
                            #expect("\(joined.map { "\($0)" } ?? "")".contains("NOPERM"))
                        }
                        try await node.shutdown()
                    }
                }
            }
        }
    }
}
