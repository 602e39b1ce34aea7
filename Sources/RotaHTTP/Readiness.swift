import Rota
import RotaRedis
import RotaService

/// One condition of `/readyz`: nil when it holds, otherwise the reason the process is not ready.
///
/// The checks run in order on every probe and the first failing one names the reason, so put the
/// cheap and fundamental ones (the node joined) before the ones that ask Redis.
public struct ReadinessCheck: Sendable {
    /// What the check looks at (`node`, `redis`, `plan`): the `check` field of a 503's JSON.
    public let name: String
    /// nil when ready; otherwise the reason, a sentence for the operator.
    public let check: @Sendable () async -> String?

    public init(name: String, check: @escaping @Sendable () async -> String?) {
        self.name = name
        self.check = check
    }

    /// The node joined its pool and is not closing: `waitUntilReady()` returned and `close()` was
    /// not called.
    public static func nodeJoined(_ node: Node) -> ReadinessCheck {
        ReadinessCheck(name: "node") {
            if node.isRunning { return nil }
            return node.isClosed ? "the node left pool \(node.pool)" : "the node has not joined pool \(node.pool) yet"
        }
    }

    /// Redis answers a PING within `timeout`: a node cut off from Redis neither receives jobs nor
    /// keeps its workers alive, whatever its own state says.
    public static func redisAnswers(_ client: RedisClient, timeout: Duration = .seconds(1)) -> ReadinessCheck {
        ReadinessCheck(name: "redis") {
            do {
                _ = try await client.send(RedisCommand("PING"), timeout: timeout)
                return nil
            } catch let error as RedisError {
                // The code and message only: anyone who reaches the port reads the reason, and an
                // underlying error's text is not vetted the way the message is.
                return "redis did not answer a PING within \(timeout): \(error.code): \(error.message)"
            } catch {
                return "redis did not answer a PING within \(timeout)"
            }
        }
    }

    /// `rota run`'s service is up: the node joined, its workers run and its plan is loaded (every
    /// producer of the pool's plan scheduled).
    public static func planLoaded(_ service: RunService) -> ReadinessCheck {
        ReadinessCheck(name: "plan") {
            service.isReady ? nil : "the plan is not loaded yet"
        }
    }
}
