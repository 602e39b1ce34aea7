import Foundation
import RotaMap
import RotaRedis
import RotaRedisServer
@_exported import RotaTestSupport
import Synchronization

/// A private server, a client, and a key space unique to the test.
func withMapServer<R: Sendable>(
    _ body: (RedisServer, RedisClient, RedisKeySpace) async throws -> R
) async throws -> R {
    try await RedisServer.withServer { server in
        var configuration = server.configuration
        configuration.commandTimeout = .seconds(5)
        configuration.reconnect = .init(initial: .milliseconds(10), maximum: .milliseconds(200))
        return try await RedisClient.withClient(configuration) { client in
            let space = try RedisKeySpace("t\(UInt32.random(in: 0...UInt32.max))")
            return try await body(server, client, space)
        }
    }
}

func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

extension ReplicatedMap {
    /// The local copy as text, for compact assertions.
    var texts: [String: String] { snapshot.mapValues { String(decoding: $0, as: UTF8.self) } }
}

/// Collects notifications from a map in the background.
final class ChangeRecorder: Sendable {
    private let seen = Mutex<[MapChange]>([])
    var changes: [MapChange] { seen.withLock { $0 } }
    func record(_ change: MapChange) { seen.withLock { $0.append(change) } }
}
