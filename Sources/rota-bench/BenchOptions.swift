import ArgumentParser
import RotaRedis
import RotaRedisServer

/// Options every Redis-backed benchmark takes, and the server they run against.
struct BenchOptions: ParsableArguments {
    @Option(help: "Server to measure (redis://…); a private redis-server is started when omitted.")
    var redis: String?

    @Flag(help: "Print one JSON object per line instead of a table.")
    var json = false

    @Option(help: "Rounds per metric; medians are reported.")
    var rounds = 3

    /// Read by main.swift before parsing (the executor must be chosen before any task exists);
    /// declared here so that every benchmark accepts it.
    @Flag(help: "Keep Swift's default global executor instead of installing NIO's event loops as it, as an application embedding Rota would.")
    var defaultExecutor = false

    /// Runs `body` against `--redis`, or against a private server started for the run.
    func withServer(_ body: (RedisConfiguration) async throws -> Void) async throws {
        if let redis {
            try await body(try RedisConfiguration(url: redis))
        } else {
            try await RedisServer.withServer { server in try await body(server.configuration) }
        }
    }
}
