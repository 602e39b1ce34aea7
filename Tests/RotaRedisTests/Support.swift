import Foundation
import RotaRedis
import RotaRedisServer
@_exported import RotaTestSupport

/// Starts a private server, runs a client against it, and tears both down.
func withRedis<R: Sendable>(
    options: RedisServer.Options = RedisServer.Options(),
    configure: (inout RedisConfiguration) -> Void = { _ in },
    _ body: (RedisServer, RedisClient) async throws -> R
) async throws -> R {
    try await RedisServer.withServer(options: options) { server in
        var configuration = server.configuration
        configuration.commandTimeout = .seconds(5)
        configure(&configuration)
        return try await RedisClient.withClient(configuration) { client in
            try await body(server, client)
        }
    }
}

/// A key prefix unique to one test, so tests never touch each other's keys.
func testPrefix(_ function: String = #function) -> String {
    "test:\(function.prefix { $0 != "(" }):\(UUID().uuidString.prefix(8)):"
}

/// Reads an integer field of INFO (e.g. `total_connections_received`).
func infoField(_ client: RedisClient, section: String, field: String) async throws -> Int {
    let info = try await client.send("INFO", section).string ?? ""
    for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix(field + ":") {
        if let value = Int(line.dropFirst(field.count + 1)) { return value }
    }
    throw TestFailure("INFO \(section) has no field \(field)")
}
