/// How to reach a Redis server and how the client behaves towards it.
///
/// Build one from a URL (``init(url:)``) and adjust the defaulted fields as needed.
public struct RedisConfiguration: Sendable, CustomStringConvertible {
    /// Where the server listens.
    public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
        enum Kind: Sendable, Hashable {
            case tcp(host: String, port: Int)
            case unix(path: String)
        }
        let kind: Kind

        public static func tcp(host: String, port: Int = 6379) -> Endpoint { Endpoint(kind: .tcp(host: host, port: port)) }
        public static func unixSocket(path: String) -> Endpoint { Endpoint(kind: .unix(path: path)) }

        public var description: String {
            switch kind {
            case .tcp(let host, let port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            case .unix(let path): return "unix:\(path)"
            }
        }
    }

    /// Reconnection delays: exponential from `initial` up to `maximum`, each randomised by ±`jitter`
    /// so that many clients cut off together do not reconnect in lockstep.
    public struct Backoff: Sendable, Hashable {
        public var initial: Duration
        public var maximum: Duration
        public var multiplier: Double
        /// Fraction of the delay, 0...1, added or removed at random.
        public var jitter: Double

        public init(initial: Duration = .milliseconds(25), maximum: Duration = .seconds(2), multiplier: Double = 2, jitter: Double = 0.2) {
            self.initial = initial
            self.maximum = maximum
            self.multiplier = multiplier
            self.jitter = jitter
        }

        /// The delay before reconnection attempt `attempt` (1-based).
        public func delay(attempt: Int) -> Duration {
            let base = Double(initial.components.seconds) + Double(initial.components.attoseconds) / 1e18
            let cap = Double(maximum.components.seconds) + Double(maximum.components.attoseconds) / 1e18
            var seconds = base
            for _ in 0..<max(0, min(attempt - 1, 64)) where seconds < cap { seconds *= max(1, multiplier) }
            seconds = min(cap, seconds)
            let spread = seconds * max(0, min(1, jitter))
            if spread > 0 { seconds += Double.random(in: -spread...spread) }
            return .nanoseconds(Int64(max(0, seconds) * 1e9))
        }
    }

    /// TLS settings for a connection (`rediss://`).
    ///
    /// The server's certificate is verified by default, against the system's trust roots or a
    /// given CA; its name must match the endpoint's host (or ``serverName``). Certificate files are
    /// read when the connection starts (in ``RedisConnection/run()``), not when the value is built.
    public struct TLS: Sendable, Hashable, CustomStringConvertible {
        /// Whether the server's certificate is verified. Only ``TLS/insecureNoVerification`` turns it off.
        public var verifiesServerCertificate: Bool
        /// PEM file of the CA certificate(s) to trust instead of the system's trust roots.
        public var caCertificatePath: String?
        /// PEM file of the client certificate presented to the server (with ``clientKeyPath``).
        public var clientCertificatePath: String?
        /// PEM file of the client certificate's private key.
        public var clientKeyPath: String?
        /// The name sent in SNI and checked against the server's certificate; the endpoint's host when nil.
        public var serverName: String?

        /// TLS with the server's certificate verified: against `caCertificatePath` if given, otherwise
        /// against the system's trust roots. A client certificate needs both its certificate and key files.
        public static func verified(
            caCertificatePath: String? = nil,
            clientCertificatePath: String? = nil,
            clientKeyPath: String? = nil,
            serverName: String? = nil
        ) -> TLS {
            TLS(
                verifiesServerCertificate: true, caCertificatePath: caCertificatePath,
                clientCertificatePath: clientCertificatePath, clientKeyPath: clientKeyPath, serverName: serverName)
        }

        /// TLS without any check of the server's certificate: encrypted, but open to anyone in the
        /// middle. **For tests only**; never use it against a real server.
        public static let insecureNoVerification = TLS(
            verifiesServerCertificate: false, caCertificatePath: nil, clientCertificatePath: nil, clientKeyPath: nil, serverName: nil)

        public var description: String {
            var parts = [verifiesServerCertificate ? "verified" : "UNVERIFIED"]
            if let caCertificatePath { parts.append("ca \(caCertificatePath)") }
            if let clientCertificatePath { parts.append("cert \(clientCertificatePath)") }
            if let serverName { parts.append("name \(serverName)") }
            return "tls (\(parts.joined(separator: ", ")))"
        }
    }

    public var endpoint: Endpoint
    /// TLS for TCP endpoints; nil for plain connections. `rediss://` URLs set it.
    public var tls: TLS?
    /// ACL user name; nil logs in as `default` (password-only AUTH).
    public var username: String?
    public var password: String?
    /// The database SELECTed on every (re)connect.
    public var database: Int
    /// Default time a command may take, from the call until its reply, including any wait for a connection.
    public var commandTimeout: Duration = .seconds(10)
    /// Time allowed to open a TCP or Unix connection.
    public var connectTimeout: Duration = .seconds(5)
    public var reconnect = Backoff()
    /// Multiplexed connections shared by ordinary commands.
    public var commandConnections = 2
    /// Name set with CLIENT SETNAME on every connection, so operators can tell Rota's connections apart.
    public var clientName: String?
    /// The largest reply accepted, in RESP bytes (headers and bulk payloads), counted as the bytes
    /// arrive: a reply that grows past it, or a bulk string whose announced length would take it
    /// past, fails its command with `.replyTooLarge` and resets the connection, so no server (or
    /// value written into Redis) can make the client buffer without bound. 1 GiB by default: a
    /// stream batch of 1000 entries (a sink's default `maxPolled`) with 1 MiB payloads (the pool's
    /// default `maxPayloadBytes`) fits. Each connection buffers at most one reply this size.
    public var maxReplyBytes = 1 << 30
    /// The most array elements one reply may announce, nested arrays included (an `HGETALL` of a
    /// map of N entries is 2·N). Over it, the same as ``maxReplyBytes``. 4,194,304 by default: a
    /// map of 2 million entries, 20 times a pool's default job limit. A parsed element costs
    /// about 100 bytes whatever its size on the wire, so this bounds what small elements cost.
    public var maxReplyElements = 1 << 22

    public init(endpoint: Endpoint, username: String? = nil, password: String? = nil, database: Int = 0, tls: TLS? = nil) {
        self.endpoint = endpoint
        self.username = username
        self.password = password
        self.database = database
        self.tls = tls
    }

    /// Parses `redis://[user[:password]@]host[:port][/db]`, `rediss://…` (the same, over TLS) or
    /// `unix://[user[:password]@]/path/to/socket[?db=N]`.
    ///
    /// `rediss://` verifies the server's certificate against the system's trust roots, or against
    /// the CA given by `?ca=/path/ca.pem`; `&cert=/path/client.pem&key=/path/client.key` present a
    /// client certificate. Query values are percent-decoded.
    ///
    /// User and password may be percent-encoded. A malformed URL throws an `.invalidArgument` error
    /// naming the bad part; the password never appears in the message.
    public init(url: String) throws(RedisError) {
        self = try RedisURLParser(url).parse(password: nil)
    }

    /// Parses `url` as ``init(url:)`` does, with the password given apart (read from a file, say,
    /// so that it never shows in a process list): `url` may then name a user without a password,
    /// and must not carry one itself.
    public init(url: String, password: String) throws(RedisError) {
        self = try RedisURLParser(url).parse(password: password)
    }

    public var description: String {
        var text = "\(endpoint)"
        if let tls { text += " \(tls)" }
        if database != 0 { text += " db \(database)" }
        if let username { text += " user \(username)" }
        if password != nil { text += " (password set)" }
        return text
    }
}

struct RedisURLParser {
    let url: String

    init(_ url: String) { self.url = url }

    func fail(_ what: String) -> RedisError {
        RedisError(.invalidArgument, "invalid Redis URL '\(redacted)': \(what)")
    }

    /// The URL with any password replaced, for error messages. A user part without a colon is
    /// replaced whole: `redis://secret@host` is how some clients write a password alone.
    var redacted: String {
        guard let schemeEnd = Self.schemeSeparator(in: url), let at = url[schemeEnd.upperBound...].lastIndex(of: "@") else { return url }
        let userinfo = url[schemeEnd.upperBound..<at]
        guard let colon = userinfo.firstIndex(of: ":") else { return String(url[..<schemeEnd.upperBound]) + "***" + String(url[at...]) }
        return String(url[..<url.index(after: colon)]) + "***" + String(url[at...])
    }

    /// The range of the first "://".
    static func schemeSeparator(in text: String) -> Range<String.Index>? {
        var index = text.startIndex
        while index < text.endIndex {
            if text[index...].hasPrefix("://") { return index..<text.index(index, offsetBy: 3) }
            index = text.index(after: index)
        }
        return nil
    }

    func parse(password given: String?) throws(RedisError) -> RedisConfiguration {
        guard let schemeEnd = Self.schemeSeparator(in: url) else {
            throw fail("missing scheme; expected redis://host[:port][/db] or unix:///path/to/socket")
        }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        var rest = url[schemeEnd.upperBound...]

        var query: Substring = ""
        if let q = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: q)...]
            rest = rest[..<q]
        }
        if rest.contains("#") { throw fail("fragments ('#') are not allowed") }

        var username: String?
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let userinfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = userinfo.firstIndex(of: ":") {
                let user = try decode(userinfo[..<colon], part: "user name")
                username = user.isEmpty ? nil : user
                password = try decode(userinfo[userinfo.index(after: colon)...], part: "password")
            } else {
                let user = try decode(userinfo, part: "user name")
                username = user.isEmpty ? nil : user
            }
            if given != nil && password != nil { throw fail("a password is given in the URL and apart (a password file): give one") }
            if username != nil && password == nil && given == nil {
                throw fail("a user is given without a password (redis://USER:PASSWORD@HOST, or the password in a file)")
            }
        }
        if let given { password = given }

        var database = 0
        let endpoint: RedisConfiguration.Endpoint
        var tls: RedisConfiguration.TLS?
        switch scheme {
        case "redis", "rediss":
            var hostPort = rest
            if let slash = rest.firstIndex(of: "/") {
                hostPort = rest[..<slash]
                let path = rest[rest.index(after: slash)...]
                if !path.isEmpty { database = try parseDatabase(path) }
            }
            endpoint = try parseHostPort(hostPort)
            var ca: String?
            var cert: String?
            var key: String?
            for (name, value) in try parameters(query) {
                switch name {
                case "db": database = try parseDatabase(value)
                case "ca", "cert", "key":
                    guard scheme == "rediss" else {
                        throw fail("query parameter '\(name)' is for TLS; use rediss:// instead of redis://")
                    }
                    let path = try decode(value, part: "'\(name)' parameter")
                    guard !path.isEmpty else { throw fail("query parameter '\(name)' has an empty path") }
                    switch name {
                    case "ca": ca = path
                    case "cert": cert = path
                    default: key = path
                    }
                default:
                    let known = scheme == "rediss" ? "'db', 'ca', 'cert', 'key'" : "'db'"
                    throw fail("unknown query parameter '\(name)' (supported: \(known))")
                }
            }
            if (cert == nil) != (key == nil) {
                throw fail("a client certificate needs both 'cert' and 'key' query parameters")
            }
            if scheme == "rediss" {
                tls = .verified(caCertificatePath: ca, clientCertificatePath: cert, clientKeyPath: key)
            }
        case "unix":
            guard rest.hasPrefix("/"), rest.count > 1 else {
                throw fail("the socket path must be absolute, as in unix:///path/to/redis.sock")
            }
            endpoint = .unixSocket(path: try decode(rest, part: "socket path"))
            for (name, value) in try parameters(query) {
                switch name {
                case "db": database = try parseDatabase(value)
                default: throw fail("unknown query parameter '\(name)' (only 'db' is supported)")
                }
            }
        default:
            throw fail("unknown scheme '\(scheme)'; expected redis://, rediss:// or unix://")
        }

        return RedisConfiguration(endpoint: endpoint, username: username, password: password, database: database, tls: tls)
    }

    private func parseHostPort(_ text: Substring) throws(RedisError) -> RedisConfiguration.Endpoint {
        guard !text.isEmpty else { throw fail("missing host") }
        var host: Substring
        var portText: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw fail("unterminated IPv6 address '\(text)'") }
            host = text[text.index(after: text.startIndex)..<close]
            let after = text[text.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw fail("unexpected '\(after)' after IPv6 address") }
                portText = after.dropFirst()
            }
        } else if let colon = text.firstIndex(of: ":") {
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        } else {
            host = text
        }
        guard !host.isEmpty else { throw fail("missing host") }
        let allowed = host.allSatisfy { $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == "_" || $0 == ":" || $0 == "%" }
        guard allowed, host.unicodeScalars.allSatisfy(\.isASCII) else { throw fail("invalid host '\(host)'") }
        var port = 6379
        if let portText {
            guard let value = Int(portText), (1...65535).contains(value), portText.allSatisfy(\.isASCII) else {
                throw fail("port '\(portText)' is not a number between 1 and 65535")
            }
            port = value
        }
        return .tcp(host: String(host), port: port)
    }

    private func parseDatabase(_ text: Substring) throws(RedisError) -> Int {
        guard let value = Int(text), value >= 0, text.allSatisfy({ $0.isASCII && $0.isNumber }) else {
            throw fail("database '\(text)' is not a non-negative integer")
        }
        return value
    }

    private func parameters(_ query: Substring) throws(RedisError) -> [(String, Substring)] {
        var result: [(String, Substring)] = []
        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            guard let eq = pair.firstIndex(of: "=") else { throw fail("query parameter '\(pair)' has no value") }
            result.append((String(pair[..<eq]), pair[pair.index(after: eq)...]))
        }
        return result
    }

    private func decode(_ text: Substring, part: String) throws(RedisError) -> String {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next().flatMap(Self.hexValue), let low = iterator.next().flatMap(Self.hexValue) else {
                    throw fail("bad percent-encoding in the \(part)")
                }
                bytes.append(high << 4 | low)
            } else {
                bytes.append(byte)
            }
        }
        guard let decoded = String(validating: bytes, as: UTF8.self) else { throw fail("the \(part) is not valid UTF-8") }
        return decoded
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
