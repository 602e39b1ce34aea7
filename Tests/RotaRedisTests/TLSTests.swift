import Foundation
import RotaRedis
import RotaRedisServer
import Testing

/// A throwaway CA, a server certificate (for `localhost` and 127.0.0.1) and a client certificate,
/// made with the `openssl` CLI in a temporary directory.
struct TLSFixture {
    let directory: String
    var caCertificate: String { directory + "/ca.crt" }
    var serverCertificate: String { directory + "/server.crt" }
    var serverKey: String { directory + "/server.key" }
    var clientCertificate: String { directory + "/client.crt" }
    var clientKey: String { directory + "/client.key" }
    /// A server certificate naming only `localhost`, not 127.0.0.1 (NIOSSL accepts a match of
    /// either the name or the peer's IP address, so testing the name needs a certificate without the IP).
    var namedServerCertificate: String { directory + "/named.crt" }
    var namedServerKey: String { directory + "/named.key" }
    /// A second CA that signed nothing the server uses.
    var otherCACertificate: String { directory + "/other-ca.crt" }

    static let openssl: String? = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let candidates = path.split(separator: ":").map { "\($0)/openssl" } + ["/usr/bin/openssl", "/usr/local/bin/openssl"]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    /// Whether the installed redis-server was built with TLS: a build without it rejects `tls-port`
    /// as a bad directive; one with it fails on the missing certificate instead. Neither listens.
    static let redisSupportsTLS: Bool = {
        guard let output = try? run(redisServerPath ?? "/usr/bin/redis-server", [
            "--port", "0", "--tls-port", "1", "--tls-cert-file", "/nonexistent/rota.crt", "--tls-key-file", "/nonexistent/rota.key",
            "--tls-auth-clients", "no", "--save", "", "--dir", NSTemporaryDirectory(),
        ], allowFailure: true)
        else { return false }
        return output.contains("TLS") && !output.contains("Bad directive")
    }()

    static let redisServerPath: String? = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let candidates = path.split(separator: ":").map { "\($0)/redis-server" } + ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    static let available = openssl != nil && redisSupportsTLS
    static let skipReason: Comment =
        openssl == nil
        ? "openssl CLI not found on PATH: cannot make the test certificates (apt-get install -y openssl)"
        : "the installed redis-server has no TLS support (it rejects tls-port)"

    init() throws {
        guard let openssl = Self.openssl else { throw TestFailure("openssl not found") }
        directory = (NSTemporaryDirectory() as NSString).appendingPathComponent("rota-tls-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for ca in ["ca", "other-ca"] {
            try Self.run(openssl, ["req", "-x509", "-new"] + ec + [
                "-keyout", "\(directory)/\(ca).key", "-out", "\(directory)/\(ca).crt", "-days", "2", "-subj", "/CN=Rota test \(ca)",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            ])
        }
        for (name, extensions) in [
            ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
            ("named", "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n"),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            try Self.run(openssl, ["req", "-new"] + ec + [
                "-keyout", "\(directory)/\(name).key", "-out", "\(directory)/\(name).csr", "-subj", "/CN=rota-test-\(name)",
            ])
            let extFile = "\(directory)/\(name).ext"
            try ("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n" + extensions)
                .write(toFile: extFile, atomically: true, encoding: .utf8)
            try Self.run(openssl, [
                "x509", "-req", "-in", "\(directory)/\(name).csr", "-CA", caCertificate, "-CAkey", "\(directory)/ca.key",
                "-CAcreateserial", "-out", "\(directory)/\(name).crt", "-days", "2", "-extfile", extFile,
            ])
        }
    }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }

    func serverOptions(authClients: String = "optional", named: Bool = false) -> RedisServer.Options {
        var options = RedisServer.Options()
        options.unixSocket = false
        options.tls = .init(
            certificateFile: named ? namedServerCertificate : serverCertificate, keyFile: named ? namedServerKey : serverKey,
            caCertificateFile: caCertificate, authClients: authClients)
        return options
    }

    /// Runs a TLS server for `body`, then stops it and removes the certificates.
    static func withServer<R>(
        authClients: String = "optional", named: Bool = false, _ body: (RedisServer, TLSFixture) async throws -> R
    ) async throws -> R {
        let fixture = try TLSFixture()
        defer { fixture.remove() }
        return try await RedisServer.withServer(options: fixture.serverOptions(authClients: authClients, named: named)) { server in
            try await body(server, fixture)
        }
    }

    /// Runs a process to completion (at most 10 s) and returns its output (stdout and stderr).
    @discardableResult
    static func run(_ executable: String, _ arguments: [String], allowFailure: Bool = false) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: output, as: UTF8.self)
        if !allowFailure && process.terminationStatus != 0 {
            throw TestFailure("\(executable) \(arguments.joined(separator: " ")) failed (\(process.terminationStatus)): \(text)")
        }
        return text
    }
}

/// Runs a client until `run()` throws, or fails after `limit`: refusals must be quick and final.
private func runError(_ configuration: RedisConfiguration, within limit: Duration = .seconds(10)) async -> (any Error)? {
    var configuration = configuration
    configuration.reconnect = .init(initial: .milliseconds(5), maximum: .milliseconds(20))
    let client = RedisClient(configuration: configuration)
    return await withTaskGroup(of: (any Error)?.self) { group in
        group.addTask { await caught { try await client.run() } }
        group.addTask {
            try? await Task.sleep(for: limit)
            return TestFailure("client.run() still running after \(limit): the failure was retried instead of reported")
        }
        let first = await group.next() ?? nil
        group.cancelAll()
        return first
    }
}

@Suite(.enabled(if: TLSFixture.available, TLSFixture.skipReason))
struct TLSTests {
    @Test func connectsWithTheCAAndRunsCommands() async throws {
        try await TLSFixture.withServer { server, _ in
            #expect(server.url.hasPrefix("rediss://127.0.0.1:"))
            for configuration in [server.configuration, try RedisConfiguration(url: server.url)] {
                try await RedisClient.withClient(configuration) { client in
                    let p = testPrefix()
                    _ = try await client.send("SET", p + "k", "over TLS")
                    #expect(try await client.send("GET", p + "k").string == "over TLS")
                    try await client.withSubscription(channels: [p + "news"]) { subscription throws in
                        var events = subscription.makeAsyncIterator()
                        #expect(try await client.send("PUBLISH", p + "news", "hi") == .integer(1))
                        #expect(try await events.next() == .message(channel: p + "news", payload: Array("hi".utf8)))
                    }
                }
            }
        }
    }

    @Test func verifiesTheHostName() async throws {
        try await TLSFixture.withServer(named: true) { server, fixture in
            var configuration = server.configuration
            // The certificate names only localhost: connecting to 127.0.0.1 it does not match…
            var error = await runError(configuration) as? RedisError
            #expect(error?.code == .tlsFailed, "\(String(describing: error))")
            #expect(error?.message.contains("does not match the host name") == true, "\(String(describing: error))")
            // …under the name it names, it works…
            configuration.tls = .verified(caCertificatePath: fixture.caCertificate, serverName: "localhost")
            try await RedisClient.withClient(configuration) { client throws in
                #expect(try await client.send("PING") == .simpleString("PONG"))
            }
            // …and so does a host name that resolves to the server…
            configuration.endpoint = .tcp(host: "localhost", port: server.port)
            configuration.tls = .verified(caCertificatePath: fixture.caCertificate)
            try await RedisClient.withClient(configuration) { client throws in
                #expect(try await client.send("PING") == .simpleString("PONG"))
            }
            // …but under another name it is refused, for good.
            configuration.endpoint = .tcp(host: "127.0.0.1", port: server.port)
            configuration.tls = .verified(caCertificatePath: fixture.caCertificate, serverName: "redis.example.com")
            error = await runError(configuration) as? RedisError
            #expect(error?.code == .tlsFailed, "\(String(describing: error))")
            #expect(error?.message.contains("redis.example.com") == true, "\(String(describing: error))")
        }
    }

    @Test func systemTrustRootsRefuseTheTestCAQuicklyAndForGood() async throws {
        try await TLSFixture.withServer { server, _ in
            var configuration = server.configuration
            configuration.tls = .verified()
            let start = ContinuousClock.now
            let error = await runError(configuration) as? RedisError
            #expect(ContinuousClock.now - start < .seconds(5))
            #expect(error?.code == .tlsFailed, "\(String(describing: error))")
            #expect(error?.message.contains("certificate could not be verified") == true, "\(String(describing: error))")
            #expect(error?.message.contains("CERTIFICATE_VERIFY_FAILED") == true, "\(String(describing: error))")
            #expect(error?.message.contains("\(server.port)") == true)

            // A command sent meanwhile fails with the same error, not a timeout.
            let client = RedisClient(configuration: configuration)
            await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                let sendError = await caught { _ = try await client.send(RedisCommand("PING"), timeout: .seconds(8)) }
                #expect((sendError as? RedisError)?.code == .tlsFailed, "\(String(describing: sendError))")
                group.cancelAll()
                _ = await caught { try await group.waitForAll() }
            }
        }
    }

    @Test func aCAThatDidNotSignTheServerIsRefused() async throws {
        try await TLSFixture.withServer { server, fixture in
            var configuration = server.configuration
            configuration.tls = .verified(caCertificatePath: fixture.otherCACertificate)
            let error = await runError(configuration) as? RedisError
            #expect(error?.code == .tlsFailed, "\(String(describing: error))")
        }
    }

    @Test func insecureNoVerificationConnects() async throws {
        try await TLSFixture.withServer { server, _ in
            var configuration = server.configuration
            configuration.tls = .insecureNoVerification
            try await RedisClient.withClient(configuration) { client throws in
                #expect(try await client.send("PING") == .simpleString("PONG"))
            }
        }
    }

    @Test func requiredClientCertificate() async throws {
        try await TLSFixture.withServer(authClients: "yes") { server, fixture in
            var configuration = server.configuration
            configuration.tls = .verified(
                caCertificatePath: fixture.caCertificate, clientCertificatePath: fixture.clientCertificate, clientKeyPath: fixture.clientKey)
            try await RedisClient.withClient(configuration) { client in
                let p = testPrefix()
                _ = try await client.send("SET", p + "k", "mutual")
                #expect(try await client.send("GET", p + "k").string == "mutual")
            }
            let url = server.url + "&cert=\(fixture.clientCertificate)&key=\(fixture.clientKey)"
            try await RedisClient.withClient(try RedisConfiguration(url: url)) { client throws in
                #expect(try await client.send("PING") == .simpleString("PONG"))
            }

            // Without a client certificate the server refuses the session.
            configuration.tls = .verified(caCertificatePath: fixture.caCertificate)
            let start = ContinuousClock.now
            let error = await runError(configuration) as? RedisError
            #expect(ContinuousClock.now - start < .seconds(5))
            #expect(error?.code == .tlsFailed, "\(String(describing: error))")
            #expect(error?.message.contains("did not accept the client certificate") == true, "\(String(describing: error))")
        }
    }

    @Test func aPlainServerIsRetriedAndNamedInTimeouts() async throws {
        // Not a certificate problem (the server may be switched to TLS soon): retried, and named
        // in the timeout of a command that waited for it.
        try await withRedis(configure: {
            $0.tls = .insecureNoVerification
            $0.connectTimeout = .milliseconds(200)
            $0.reconnect = .init(initial: .milliseconds(5), maximum: .milliseconds(50))
        }) { _, client in
            let error = await caught { _ = try await client.send(RedisCommand("PING"), timeout: .seconds(2)) } as? RedisError
            #expect(error?.code == .timeout, "\(String(describing: error))")
            #expect(error?.message.contains("TLS") == true, "\(String(describing: error))")
        }
    }

    @Test func unreadableCertificateFilesAreNamed() async throws {
        try await TLSFixture.withServer { server, fixture in
            var configuration = server.configuration
            configuration.tls = .verified(caCertificatePath: fixture.directory + "/missing-ca.pem")
            var error = await runError(configuration) as? RedisError
            #expect(error?.code == .invalidArgument)
            #expect(error?.message.contains("missing-ca.pem") == true, "\(String(describing: error))")

            configuration.tls = .verified(
                caCertificatePath: fixture.caCertificate, clientCertificatePath: fixture.clientCertificate,
                clientKeyPath: fixture.serverCertificate)  // not a key
            error = await runError(configuration) as? RedisError
            #expect(error?.code == .invalidArgument)
            #expect(error?.message.contains("server.crt") == true, "\(String(describing: error))")
        }
    }
}

@Suite struct TLSURLTests {
    @Test func redissUsesSystemRootsByDefault() throws {
        let c = try RedisConfiguration(url: "rediss://:secret@redis.example.com:6380/2")
        #expect(c.endpoint == .tcp(host: "redis.example.com", port: 6380))
        #expect(c.database == 2 && c.password == "secret")
        #expect(c.tls == .verified())
        #expect(c.tls?.verifiesServerCertificate == true)
        #expect(c.description.contains("tls"))
        #expect(!c.description.contains("secret"))
    }

    @Test func redissQueryParameters() throws {
        let c = try RedisConfiguration(url: "rediss://host?ca=/etc/ssl/my%20ca.pem&cert=/c/client.pem&key=/c/client%2Bkey.pem&db=4")
        #expect(c.tls == .verified(caCertificatePath: "/etc/ssl/my ca.pem", clientCertificatePath: "/c/client.pem", clientKeyPath: "/c/client+key.pem"))
        #expect(c.database == 4)
        #expect(c.endpoint == .tcp(host: "host", port: 6379))
    }

    @Test func plainRedisHasNoTLS() throws {
        #expect(try RedisConfiguration(url: "redis://host").tls == nil)
        #expect(try RedisConfiguration(url: "unix:///tmp/r.sock").tls == nil)
        #expect(RedisConfiguration(endpoint: .tcp(host: "h")).tls == nil)
    }

    @Test(arguments: [
        ("rediss://host?foo=1", "unknown query parameter 'foo'"),
        ("rediss://host?ca", "query parameter 'ca' has no value"),
        ("rediss://host?ca=", "'ca' has an empty path"),
        ("rediss://host?ca=/a%zz", "percent-encoding in the 'ca' parameter"),
        ("rediss://host?cert=/c.pem", "both 'cert' and 'key'"),
        ("rediss://host?key=/k.pem", "both 'cert' and 'key'"),
        ("redis://host?ca=/ca.pem", "use rediss://"),
        ("rediss://", "missing host"),
    ])
    func malformed(url: String, expected: String) {
        do {
            _ = try RedisConfiguration(url: url)
            Issue.record("\(url) was accepted")
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains(expected), "\(error.message)")
        }
    }

    @Test func errorsNeverShowThePassword() {
        do {
            _ = try RedisConfiguration(url: "rediss://alice:topsecret@host?bogus=1")
            Issue.record("accepted")
        } catch {
            #expect(!error.message.contains("topsecret"))
            #expect(!error.description.contains("topsecret"))
            #expect(error.message.contains("'bogus'"))
        }
    }
}
