import ArgumentParser
import Logging
import RotaHTTP
import RotaPlans

/// The HTTP server's options, shared by `rota run` and `rota worker`. The `--metrics-*` options
/// predate the server (it served /metrics only) and are kept as deprecated aliases: scripts and
/// scrape configurations that use them get the same server.
struct HTTPOptions: ParsableArguments {
    @Option(help: "Serve /healthz, /readyz and /metrics on ADDRESS:PORT (:PORT or PORT: 127.0.0.1; [::1]:PORT for IPv6). Off unless given.")
    var http: String?

    @Option(help: "HTTP connections kept open at most; more are closed at once (default 64).")
    var httpMaxConnections: Int?

    @Option(help: "HTTP connections idle this long are closed (e.g. 10s; default 10s).")
    var httpIdleTimeout: String?

    @Option(help: "Deprecated: --http PORT (the same server).")
    var metricsPort: Int?

    @Option(help: "Deprecated: --http ADDRESS:PORT, with --metrics-port.")
    var metricsAddress: String?

    @Option(help: "Deprecated: --http-max-connections.")
    var metricsMaxConnections: Int?

    @Option(help: "Deprecated: --http-idle-timeout.")
    var metricsIdleTimeout: String?

    func validate() throws {
        _ = try configuration()
    }

    /// The server's configuration, or nil when neither `--http` nor `--metrics-port` asks for one.
    /// A value given twice (an option and its alias) or out of range is a usage error.
    func configuration() throws -> HTTPServer.Configuration? {
        func one<T>(_ value: T?, _ alias: T?, _ names: String) throws -> T? {
            if value != nil, alias != nil { throw ValidationError("\(names): give one (the second is a deprecated alias of the first)") }
            return value ?? alias
        }
        let maxConnections = try one(httpMaxConnections, metricsMaxConnections, "--http-max-connections and --metrics-max-connections") ?? 64
        let idleText = try one(httpIdleTimeout, metricsIdleTimeout, "--http-idle-timeout and --metrics-idle-timeout") ?? "10s"
        guard let idleTimeout = parseDuration(idleText) else {
            throw ValidationError("--http-idle-timeout: '\(idleText)' is not a duration (e.g. 10s, 500ms)")
        }
        let address: HTTPAddress
        do throws(HTTPServerError) {
            switch (http, metricsPort) {
            case (nil, nil):
                // --metrics-address alone never started a server and still does not (scripts pass it
                // unconditionally). The limits are still checked: a bad limit is a mistake even while the server is off.
                _ = try HTTPServer.Configuration(address: HTTPAddress(port: 1), maxConnections: maxConnections, idleTimeout: idleTimeout)
                return nil
            case (let http?, nil):
                guard metricsAddress == nil else { throw HTTPServerError(.invalidAddress, "--metrics-address is an alias for --http's address: give --http ADDRESS:PORT") }
                address = try HTTPAddress(parsing: http)
            case (nil, let port?):
                guard (1...65535).contains(port) else { throw HTTPServerError(.invalidAddress, "--metrics-port must be 1-65535") }
                address = HTTPAddress(host: metricsAddress ?? HTTPAddress.defaultHost, port: port)
            case (.some, .some):
                throw HTTPServerError(.invalidAddress, "--http and --metrics-port: give one (--metrics-port is a deprecated alias of --http)")
            }
            return try HTTPServer.Configuration(address: address, maxConnections: maxConnections, idleTimeout: idleTimeout)
        } catch {
            throw ValidationError("--http: \(error.message)")
        }
    }
}
