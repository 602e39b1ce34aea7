import Foundation
import RotaHTTP
import RotaRedisServer
import RotaService
import RotaTestSupport
import Testing

/// An HTTP response: its status code and body.
struct HTTPReply {
    var status: Int
    var body: String
}

/// `GET path` on 127.0.0.1:`port` with `Connection: close`; throws when there is no complete answer.
func httpGet(port: Int, path: String) throws -> HTTPReply {
    let text = try rawHTTPGet(port: port, path: path)
    guard text.hasPrefix("HTTP/1.1 "), let status = Int(text.dropFirst(9).prefix(3)),
          let split = text.range(of: "\r\n\r\n") else {
        throw TestFailure("no HTTP answer to GET \(path): \(text.prefix(200))")
    }
    return HTTPReply(status: status, body: String(text[split.upperBound...]))
}

/// The JSON object of `reply`'s body, as strings (booleans as "true"/"false").
func jsonFields(_ reply: HTTPReply) throws -> [String: String] {
    guard let object = try JSONSerialization.jsonObject(with: Data(reply.body.utf8)) as? [String: Any] else {
        throw TestFailure("not a JSON object: \(reply.body)")
    }
    return object.mapValues { value in
        if let flag = value as? Bool { return flag ? "true" : "false" }
        return "\(value)"
    }
}

/// The local addresses (hex, as /proc/net/tcp writes them) of the sockets of `pid` listening on
/// `port`: 0100007F is 127.0.0.1, 00000000 every interface.
func listeningAddresses(pid: Int32, port: Int) throws -> [String] {
    let table = try String(contentsOfFile: "/proc/\(pid)/net/tcp", encoding: .utf8)
    let portHex = String(format: "%04X", port)
    return table.split(separator: "\n").dropFirst().compactMap { line in
        let fields = line.split(separator: " ")
        guard fields.count > 3, fields[3] == "0A" else { return nil }  // 0A: LISTEN
        let local = fields[1].split(separator: ":")
        guard local.count == 2, local[1] == portHex else { return nil }
        return String(local[0])
    }
}

private let plan = "pool: e2e\nproducers:\n  - name: p\n    every: 1s\n    jobs:\n      - {key: a, handler: log}\n"

@Suite(.serialized, .timeLimit(.minutes(3))) struct HTTPServerTests {
    @Test("rota run --http :PORT: 127.0.0.1 only; /healthz, /readyz, /metrics, a JSON 404; /readyz is 503 with a reason while Redis does not answer")
    func routesAndReadiness() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("rota-http-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("plans"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try await RedisServer.withServer { server in
            let cluster = RunCluster(redisURL: server.url, pool: "e2e", directory: directory)
            _ = try cluster.writePlan(plan)
            defer { cluster.killAll() }
            let port = try freePort()
            let node = try cluster.start("n1", extra: ["--http", ":\(port)"])
            try await node.waitUntilReady()
            #expect(node.logs("serving http").first?["url"] == "http://127.0.0.1:\(port)")
            #expect(try listeningAddresses(pid: node.pid, port: port) == ["0100007F"], "the server listens on 127.0.0.1 only")

            let health = try httpGet(port: port, path: "/healthz")
            #expect(health.status == 200)
            #expect(try jsonFields(health) == ["status": "ok", "version": RotaVersion.current])

            // Ready: the node joined, Redis answers, the plan is loaded (`rota run ready` was logged).
            let ready = try httpGet(port: port, path: "/readyz")
            #expect(ready.status == 200, "\(ready.body)")
            #expect(try jsonFields(ready) == ["ready": "true"])

            let metrics = try httpGet(port: port, path: "/metrics")
            #expect(metrics.status == 200)
            #expect(metrics.body.contains("# TYPE rota_"), "\(metrics.body.prefix(300))")

            let missing = try httpGet(port: port, path: "/nope")
            #expect(missing.status == 404)
            #expect(try jsonFields(missing) == ["error": "not found", "path": "/nope"])

            // Redis stops answering (SIGSTOP): not ready, and the answer says why.
            server.pause(true)
            let paused = try await poll("/readyz to answer 503", timeout: .seconds(10), diagnostics: cluster.diagnostics) { () -> HTTPReply? in
                let reply = try httpGet(port: port, path: "/readyz")
                return reply.status == 503 ? reply : nil
            }
            server.pause(false)
            let fields = try jsonFields(paused)
            #expect(fields["ready"] == "false")
            #expect(fields["check"] == "redis")
            #expect(fields["reason"]?.contains("PING") == true, "\(paused.body)")
            // /healthz does not depend on Redis.
            // (Asked after the resume too: the process stayed alive through the pause.)
            #expect(try httpGet(port: port, path: "/healthz").status == 200)

            // Redis answers again: ready again.
            try await poll("/readyz to answer 200 again", timeout: .seconds(20), diagnostics: cluster.diagnostics) {
                try httpGet(port: port, path: "/readyz").status == 200 ? true : nil
            }
        }
    }

    @Test("rota worker --http serves the same routes: ready once its node joined, 503 naming the node while it cannot join; --http with --metrics-port is a usage error")
    func worker() async throws {
        try await RedisServer.withServer { server in
            let port = try freePort()
            let worker = try RunNode(label: "worker", database: "", arguments: [
                "worker", "--redis", server.url, "--pool", "e2e", "--workers", "1", "--log-format", "json", "--http", "127.0.0.1:\(port)",
            ])
            defer { worker.killForCleanup() }
            try await poll("/readyz of rota worker to answer 200", timeout: .seconds(30), diagnostics: worker.diagnostics) {
                try httpGet(port: port, path: "/readyz").status == 200 ? true : nil
            }
            #expect(try jsonFields(try httpGet(port: port, path: "/healthz"))["version"] == RotaVersion.current)
            #expect(try httpGet(port: port, path: "/metrics").body.contains("rota_"))

            // A worker whose Redis refuses connections never joins: alive, not ready, and why.
            let lonelyPort = try freePort()
            let lonely = try RunNode(label: "lonely", database: "", arguments: [
                "worker", "--redis", "redis://127.0.0.1:1", "--pool", "e2e", "--log-format", "json", "--http", String(lonelyPort),
            ])
            defer { lonely.killForCleanup() }
            let notReady = try await poll("/readyz of a worker without Redis to answer", timeout: .seconds(30), diagnostics: lonely.diagnostics) {
                try httpGet(port: lonelyPort, path: "/readyz")
            }
            #expect(notReady.status == 503)
            #expect(try jsonFields(notReady) == ["ready": "false", "check": "node", "reason": "the node has not joined pool e2e yet"])
            #expect(try httpGet(port: lonelyPort, path: "/healthz").status == 200)

            let both = try await rotaCommand(["worker", "--redis", server.url, "--http", ":\(port)", "--metrics-port", String(port)])
            #expect(both.status == 64, "\(both.err)")
            #expect(both.err.contains("--metrics-port"), "\(both.err)")
        }
    }

    @Test("rota run --http stops on SIGTERM like without it: the server closes and the process exits 0; a bad limit is a usage error")
    func gracefulShutdown() async throws {
        try await withRunCluster(plans: plan) { cluster in
            let port = try freePort()
            let node = try cluster.start("n1", extra: ["--http", "127.0.0.1:\(port)", "--http-max-connections", "8", "--http-idle-timeout", "2s"])
            try await node.waitUntilReady()
            #expect(try httpGet(port: port, path: "/readyz").status == 200)
            // An idle connection must not hold the shutdown up.
            let idle = connectTo(port)
            defer { if let idle { close(idle) } }
            sendSignal(node.pid, SIGTERM)
            try await poll("rota run to exit after SIGTERM", timeout: .seconds(30), diagnostics: node.diagnostics) { node.hasExited ? true : nil }
            #expect(node.state.exit?.status == 0 && node.state.exit?.signaled == false, "\(node.diagnostics)")
            #expect(connectTo(port) == nil, "the port still accepts connections")

            for bad in [["--http-max-connections", "0"], ["--http-idle-timeout", "50ms"], ["--http-idle-timeout", "soon"],
                        ["--http-max-connections", "4", "--metrics-max-connections", "4"], ["--http", "[::1]"]] {
                let output = try await rotaCommand(["run", "--redis", cluster.redisURL, "--http", ":\(port)"] + bad)
                #expect(output.status == 64, "\(bad): \(output.err)")
            }
        }
    }

    @Test("rota --version prints the version")
    func version() async throws {
        let output = try await rotaCommand(["--version"])
        #expect(output.status == 0)
        #expect(output.out.trimmingCharacters(in: .whitespacesAndNewlines) == RotaVersion.current)
    }

    @Test("--http takes ADDRESS:PORT, :PORT, PORT and [IPv6]:PORT; 127.0.0.1 unless an address is given")
    func addresses() throws {
        #expect(try HTTPAddress(parsing: "8080") == HTTPAddress(host: "127.0.0.1", port: 8080))
        #expect(try HTTPAddress(parsing: ":8080") == HTTPAddress(host: "127.0.0.1", port: 8080))
        #expect(try HTTPAddress(parsing: "0.0.0.0:9464") == HTTPAddress(host: "0.0.0.0", port: 9464))
        #expect(try HTTPAddress(parsing: "[::1]:9464") == HTTPAddress(host: "::1", port: 9464))
        #expect(HTTPAddress(host: "::1", port: 9464).url == "http://[::1]:9464")
        for bad in ["", ":", "host:", "host:0", "host:65536", "::1:80", "[::1]", "[::1]80", "[]:80", "x:y"] {
            #expect(throws: HTTPServerError.self, "\(bad)") { try HTTPAddress(parsing: bad) }
        }
    }
}
