import RotaRedis
import RotaRedisServer
import Logging
import Foundation
func print(_ s: String) { FileHandle.standardError.write((s + "\n").data(using: .utf8)!) }

var logger = Logger(label: "dbg")
logger.logLevel = .trace
print("starting server")
try await RedisServer.withServer { server in
    print("server on \(server.port)")
    try await RedisClient.withClient(server.configuration, logger: logger) { client in
        print("sending")
        let r = try await client.send("PING")
        print("got \(r)")
    }
    print("client done")
}
print("done")
