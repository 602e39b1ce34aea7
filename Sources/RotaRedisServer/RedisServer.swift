import Foundation
import RotaRedis
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A private `redis-server` process in a temporary directory, on a free port (and optionally a Unix
/// socket), that its owner can stop, kill and restart.
///
/// Tests start their own servers with it so each can be killed or restarted without disturbing
/// others; `rota-bench` and `rota run` (without `--redis`) use it to bring a server along.
public final class RedisServer: Sendable {
    /// How the server is started.
    public struct Options: Sendable {
        /// Serve TCP over TLS only (`tls-port`, with the plain `port` off); the Unix socket stays plain.
        public struct TLS: Sendable {
            /// PEM files of the server's certificate and key.
            public var certificateFile: String
            public var keyFile: String
            /// PEM file of the CA that signed the server's certificate and that client certificates must chain to.
            public var caCertificateFile: String
            /// `tls-auth-clients`: `no`, `optional` (verify a client certificate if one is presented) or `yes`.
            public var authClients: String

            public init(certificateFile: String, keyFile: String, caCertificateFile: String, authClients: String = "optional") {
                self.certificateFile = certificateFile
                self.keyFile = keyFile
                self.caCertificateFile = caCertificateFile
                self.authClients = authClients
            }
        }

        /// TLS on the TCP port; nil for plain TCP.
        public var tls: TLS?
        /// Listen on a Unix socket in the server's directory as well as on TCP.
        public var unixSocket = true
        /// `requirepass` for the default user.
        public var password: String?
        /// Extra `redis.conf` lines, e.g. `user alice on >secret ~* +@all`.
        public var extraConfig: [String] = []
        /// Turn on the append-only file so data survives a restart.
        public var appendOnly = false
        /// Path of the `redis-server` binary; searched on PATH (and /usr/bin, /usr/local/bin) when nil.
        public var executable: String?
        /// Start the server in a process group of its own, so that a terminal's Ctrl-C (sent to the
        /// whole foreground group) reaches only the owner, which stops the server after its graceful
        /// shutdown has used it. Off for test servers: there the group signal is what cleans them up.
        public var ownProcessGroup = false
        /// Listen on TCP (127.0.0.1) too. Off: the Unix socket only (which must then be on), so no
        /// other local user can reach the server through a port.
        public var tcp = true
        /// The TCP port to listen on; nil: a free one is picked.
        public var tcpPort: Int?
        /// The server is SIGKILLed when its owner process dies, however it dies (SIGKILL too): a
        /// watchdog child waits on a pipe only the owner holds open.
        public var diesWithOwner = false

        public init() {}
    }

    public let options: Options
    /// The directory holding the config, logs, data and socket; removed by ``stop(removeDirectory:)``.
    public let directory: String
    /// The TCP port, chosen by the first ``start(timeout:)`` and kept across restarts (0 before).
    public var port: Int { chosenPort.withLock { $0 } }
    private let chosenPort = Mutex(0)
    private let process = LockedProcess()
    private let watchdog = Watchdog()

    /// The Unix socket path, when ``Options/unixSocket`` is on.
    public var socketPath: String? { options.unixSocket ? directory + "/redis.sock" : nil }

    /// A `redis://` URL for the TCP port (with the password, if any); with TLS, a `rediss://` URL
    /// trusting the server's CA (`?ca=`).
    public var url: String {
        let scheme = options.tls == nil ? "redis" : "rediss"
        var url = "\(scheme)://127.0.0.1:\(port)"
        if let password = options.password { url = "\(scheme)://:\(password)@127.0.0.1:\(port)" }
        if let tls = options.tls { url += "?ca=" + Self.percentEncoded(tls.caCertificateFile) }
        return url
    }

    /// A client configuration for TCP (with TLS verified against the server's CA, when TLS is on).
    public var configuration: RedisConfiguration {
        RedisConfiguration(
            endpoint: .tcp(host: "127.0.0.1", port: port), password: options.password,
            tls: options.tls.map { .verified(caCertificatePath: $0.caCertificateFile) })
    }

    private static func percentEncoded(_ text: String) -> String {
        var result = ""
        for byte in text.utf8 {
            let scalar = Unicode.Scalar(byte)
            if scalar.isASCII, scalar.properties.isAlphabetic || ("0"..."9").contains(scalar) || "/-._~".unicodeScalars.contains(scalar) {
                result.unicodeScalars.append(scalar)
            } else {
                result += String(format: "%%%02X", byte)
            }
        }
        return result
    }

    /// Picks a port and a directory name; nothing is created or started until ``start(timeout:)``.
    public init(options: Options = Options()) {
        self.options = options
        let name = "rota-redis-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        self.directory = (NSTemporaryDirectory() as NSString).appendingPathComponent(name)
    }

    /// Starts the server and returns when it accepts connections. Restarting after ``kill()`` or
    /// ``stop(removeDirectory:)`` reuses the same port and directory (and data, with AOF on).
    public func start(timeout: Duration = .seconds(30)) async throws {
        if port != 0 || !options.tcp { return try await launch(timeout: timeout) }
        if let fixed = options.tcpPort {
            chosenPort.withLock { $0 = fixed }
            return try await launch(timeout: timeout)
        }
        // First start: another process may grab the probed port before redis binds it; try a few.
        var lastError: (any Error)?
        for _ in 0..<5 {
            guard let candidate = (0..<500).lazy.map({ _ in Int.random(in: Self.portRange) }).first(where: Self.isFree) else { break }
            chosenPort.withLock { $0 = candidate }
            do {
                return try await launch(timeout: timeout)
            } catch let error as RedisServerError where error.message.contains("Address already in use") {
                lastError = error
            }
        }
        chosenPort.withLock { $0 = 0 }
        throw lastError ?? RedisServerError("no free port in \(Self.portRange)")
    }

    private func launch(timeout: Duration) async throws {
        let executable = try options.executable ?? Self.findExecutable()
        // Its owner's alone: the config holds the password, the directory the socket.
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        var config = [
            options.tls == nil && options.tcp ? "port \(port)" : "port 0",
            "bind 127.0.0.1",
            "dir \(directory)",
            "logfile \(directory)/redis.log",
            "daemonize no",
            "save \"\"",
            "appendonly \(options.appendOnly ? "yes" : "no")",
            "protected-mode no",
        ]
        if let socketPath { config += ["unixsocket \(socketPath)", "unixsocketperm 700"] }
        if let password = options.password { config.append("requirepass \(password)") }
        if let tls = options.tls {
            config += [
                "tls-port \(port)",
                "tls-cert-file \(tls.certificateFile)",
                "tls-key-file \(tls.keyFile)",
                "tls-ca-cert-file \(tls.caCertificateFile)",
                "tls-auth-clients \(tls.authClients)",
            ]
        }
        config += options.extraConfig
        let configPath = directory + "/redis.conf"
        guard FileManager.default.createFile(atPath: configPath, contents: Data((config.joined(separator: "\n") + "\n").utf8),
                                             attributes: [.posixPermissions: 0o600]) else {
            throw RedisServerError("cannot write \(configPath)")
        }
        let logPath = directory + "/redis.log"
        let logSizeBefore = (try? FileManager.default.attributesOfItem(atPath: logPath)[.size] as? Int) ?? 0

        try process.launch(executable: executable, arguments: [configPath], ownProcessGroup: options.ownProcessGroup)
        if options.diesWithOwner, let pid = process.pid { try watchdog.start(killing: pid) }

        // The server writes this line once it listens; reading the log avoids racing its startup.
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let status = process.reap() {
                throw RedisServerError("redis-server exited at startup (status \(status)): \(lastLogLines(logPath))")
            }
            if let log = FileManager.default.contents(atPath: logPath), log.count > logSizeBefore,
                // "Ready to accept connections tcp", or "…now ready to accept connections at <socket>" without TCP.
                String(decoding: log.dropFirst(logSizeBefore), as: UTF8.self).lowercased().contains("ready to accept connections")
            {
                return
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        await kill()
        throw RedisServerError("redis-server did not become ready within \(timeout): \(lastLogLines(logPath))")
    }

    /// Stops the server with SIGTERM (a clean shutdown, which rewrites nothing since saving is off).
    public func stop(removeDirectory: Bool = false) async {
        // The watchdog goes first: it must never signal a pid the server no longer holds.
        await watchdog.stop()
        await process.signal(SIGTERM)
        if removeDirectory { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// Kills the server with SIGKILL, as a crash would.
    public func kill() async {
        await watchdog.stop()
        await process.signal(SIGKILL)
    }

    /// Kills the server and starts it again on the same port and directory.
    public func restart() async throws {
        await kill()
        try await start()
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) the server process, to simulate a hung server.
    public func pause(_ paused: Bool) {
        process.send(paused ? SIGSTOP : SIGCONT)
    }

    /// Runs a server for the duration of `body`, then stops it and removes its directory.
    public static func withServer<R>(
        options: Options = Options(),
        isolation: isolated (any Actor)? = #isolation,
        _ body: (RedisServer) async throws -> R
    ) async throws -> R {
        let server = RedisServer(options: options)
        do {
            try await server.start()
            let result = try await body(server)
            await server.stop(removeDirectory: true)
            return result
        } catch {
            await server.stop(removeDirectory: true)
            throw error
        }
    }

    private func lastLogLines(_ path: String) -> String {
        guard let data = FileManager.default.contents(atPath: path) else { return "(no log)" }
        return String(decoding: data, as: UTF8.self).split(separator: "\n").suffix(3).joined(separator: " | ")
    }

    static func findExecutable() throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let candidates = path.split(separator: ":").map { "\($0)/redis-server" } + ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw RedisServerError("redis-server not found on PATH; install it (apt-get install -y redis-server)")
        }
        return found
    }

    /// Ports are chosen outside Linux' ephemeral range (32768–60999): a killed server's port must
    /// still be free when it restarts, and ports in the ephemeral range get taken by outgoing
    /// connections in the meantime.
    static let portRange = 20_000..<32_000

    private static func isFree(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        return bound == 0
    }
}

/// A failure to start or control a private redis-server.
public struct RedisServerError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "redis-server: \(message)" }
}

/// The running process. The pid is behind a lock; exit is observed by polling `waitpid`, so no
/// thread ever blocks on it.
private final class LockedProcess: Sendable {
    private let current = Mutex<pid_t?>(nil)

    var pid: pid_t? { current.withLock { $0 } }

    /// Spawns with an empty signal mask and default handlers: the caller's threads (NIO's among them)
    /// block signals, and a child inheriting that mask would ignore SIGTERM.
    func launch(executable: String, arguments: [String], ownProcessGroup: Bool, stdin: Int32? = nil) throws {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attributes, &all)
        var flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF
        if ownProcessGroup {
            posix_spawnattr_setpgroup(&attributes, 0)
            flags |= POSIX_SPAWN_SETPGROUP
        }
        posix_spawnattr_setflags(&attributes, Int16(flags))

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let stdin {
            posix_spawn_file_actions_adddup2(&actions, stdin, 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)

        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var child: pid_t = 0
        let result = posix_spawn(&child, executable, &actions, &attributes, argv, environ)
        guard result == 0 else {
            throw RedisServerError("cannot start \(executable): \(String(cString: strerror(result)))")
        }
        current.withLock { $0 = child }
    }

    /// The exit status if the process has exited (reaping it), nil while it runs.
    func reap() -> Int32? {
        current.withLock { pid -> Int32? in
            guard let current = pid else { return 0 }
            var status: Int32 = 0
            let result = waitpid(current, &status, WNOHANG)
            guard result == current || result < 0 else { return nil }
            pid = nil
            return status
        }
    }

    func send(_ signal: Int32) {
        current.withLock { pid in
            if let pid { _ = Glibc.kill(pid, signal) }
        }
    }

    /// Sends `signal` (and SIGCONT, in case the process is paused) and waits for it to exit.
    func signal(_ signal: Int32) async {
        send(signal)
        send(SIGCONT)
        let deadline = ContinuousClock.now + .seconds(10)
        while reap() == nil {
            if ContinuousClock.now > deadline {
                send(SIGKILL)
            }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }
}

/// Kills a server whose owner died: a `/bin/sh` child reads a pipe whose only write end the owner
/// holds (close-on-exec, so no other child inherits it); when the owner exits, however it exits,
/// the read returns and the shell SIGKILLs the server. Stopped before the server on a normal stop.
private final class Watchdog: Sendable {
    private let state = Mutex<(process: LockedProcess, writeEnd: Int32)?>(nil)

    func start(killing server: pid_t) throws {
        var ends: [Int32] = [0, 0]
        // pipe2 is not in the Glibc module: close-on-exec is set right after (a child spawned in
        // between elsewhere could inherit the write end and only delay the watchdog).
        guard pipe(&ends) == 0 else { throw RedisServerError("cannot create the watchdog's pipe: \(String(cString: strerror(errno)))") }
        _ = fcntl(ends[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(ends[1], F_SETFD, FD_CLOEXEC)
        let process = LockedProcess()
        do {
            try process.launch(executable: "/bin/sh", arguments: ["-c", "read _; kill -KILL \(server)"], ownProcessGroup: true, stdin: ends[0])
        } catch {
            close(ends[0])
            close(ends[1])
            throw error
        }
        close(ends[0])
        state.withLock { $0 = (process, ends[1]) }
    }

    func stop() async {
        guard let (process, writeEnd) = state.withLock({ state in defer { state = nil }; return state }) else { return }
        await process.signal(SIGKILL)
        close(writeEnd)
    }
}
