import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import Metrics
import NIOCore
import Prometheus
import RotaService
import ServiceLifecycle

/// The HTTP server of `rota run` and `rota worker` (`--http ADDRESS:PORT`), on Hummingbird:
///
/// - `GET /healthz`: 200 `{"status":"ok","version":"…"}` while the process runs;
/// - `GET /readyz`: 200 `{"ready":true}` when every ``ReadinessCheck`` holds, otherwise 503
///   `{"ready":false,"check":"…","reason":"…"}` naming the first that does not;
/// - `GET /metrics`: the Prometheus registry in text format;
/// - anything else: 404 `{"error":"not found","path":"…"}`.
///
/// It keeps at most ``Configuration/maxConnections`` connections (more are closed at once, see
/// `CappedChildChannel`) and closes those idle for ``Configuration/idleTimeout``. More routes are
/// added through `routes` when the server is built.
public struct HTTPServer: Service {
    /// The request context of every route.
    public typealias Context = BasicRequestContext

    /// Where the server listens and the limits that keep it from being a way to exhaust the process.
    public struct Configuration: Sendable {
        public var address: HTTPAddress
        /// Connections kept open at most; more are closed as soon as they are accepted.
        public var maxConnections: Int
        /// A connection without a request or a response in flight for this long is closed.
        public var idleTimeout: Duration

        /// Refuses a cap outside 1-10000 and an idle timeout outside 100 ms-1 h.
        public init(address: HTTPAddress, maxConnections: Int = 64, idleTimeout: Duration = .seconds(10)) throws(HTTPServerError) {
            guard (1...10_000).contains(maxConnections) else {
                throw HTTPServerError(.invalidConfiguration, "the connection cap must be 1-10000, not \(maxConnections)")
            }
            guard idleTimeout >= .milliseconds(100), idleTimeout <= .seconds(3600) else {
                throw HTTPServerError(.invalidConfiguration, "the idle timeout must be from 100ms to 1h, not \(idleTimeout)")
            }
            self.address = address
            self.maxConnections = maxConnections
            self.idleTimeout = idleTimeout
        }
    }

    public let configuration: Configuration
    private let readiness: [ReadinessCheck]
    private let metrics: PrometheusCollectorRegistry
    private let routes: @Sendable (Router<Context>) -> Void
    private let logger: Logger

    /// - Parameters:
    ///   - readiness: the conditions of `/readyz`, checked in order on each request.
    ///   - metrics: the registry `/metrics` serves (``bootstrapMetrics()`` installs one).
    ///   - routes: adds further routes to the router before the server starts.
    public init(
        configuration: Configuration,
        readiness: [ReadinessCheck],
        metrics: PrometheusCollectorRegistry,
        logger: Logger,
        routes: @escaping @Sendable (Router<Context>) -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.readiness = readiness
        self.metrics = metrics
        self.logger = logger
        self.routes = routes
    }

    /// Installs a Prometheus registry as the process's metrics backend and returns it. Once per
    /// process (swift-metrics refuses a second bootstrap).
    public static func bootstrapMetrics() -> PrometheusCollectorRegistry {
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        return registry
    }

    /// The router with every route: the built-in ones, then those of `routes`.
    func makeRouter() -> Router<Context> {
        let router = Router(context: Context.self)
        router.add(middleware: NotFoundAsJSON<Context>())
        router.get("/healthz") { _, _ in
            jsonResponse(Health(status: "ok", version: RotaVersion.current), status: .ok)
        }
        let readiness = readiness
        router.get("/readyz") { _, _ in
            for check in readiness {
                if let reason = await check.check() {
                    return jsonResponse(Readiness(ready: false, check: check.name, reason: reason), status: .serviceUnavailable)
                }
            }
            return jsonResponse(Readiness(ready: true, check: nil, reason: nil), status: .ok)
        }
        let metrics = metrics
        router.get("/metrics") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: metrics.emitToBuffer()))
            )
        }
        routes(router)
        return router
    }

    public func run() async throws {
        let count = ConnectionCount(limit: configuration.maxConnections)
        let http1 = HTTP1Channel.Configuration(idleTimeout: TimeAmount(configuration.idleTimeout))
        let server = HTTPServerBuilder { responder in
            CappedChildChannel(base: HTTP1Channel(responder: responder, configuration: http1), count: count)
        }
        let address = configuration.address
        let logger = logger
        let application = Application(
            router: makeRouter(),
            server: server,
            configuration: ApplicationConfiguration(address: .hostname(address.host, port: address.port)),
            onServerRunning: { channel in
                // The port actually bound, so that a log reader can reach the server.
                let bound = HTTPAddress(host: address.host, port: channel.localAddress?.port ?? address.port)
                logger.info("serving http", metadata: ["url": "\(bound.url)", "maxConnections": "\(count.limit)"])
            },
            logger: logger
        )
        try await application.run()
    }
}

/// `/healthz`'s body.
private struct Health: Encodable {
    let status: String
    let version: String
}

/// `/readyz`'s body: `check` and `reason` only when not ready.
private struct Readiness: Encodable {
    let ready: Bool
    let check: String?
    let reason: String?
}

/// A 404's body.
private struct NotFound: Encodable {
    let error: String
    let path: String
}

/// `value` as a JSON response (keys sorted: the same bytes for the same answer).
func jsonResponse(_ value: some Encodable, status: HTTPResponse.Status) -> Response {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    // Our bodies are strings and booleans: encoding cannot fail, but an empty object beats a crash.
    let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
    return Response(
        status: status,
        headers: [.contentType: "application/json"],
        body: ResponseBody(byteBuffer: ByteBuffer(bytes: data))
    )
}

/// Answers an unknown path with a JSON 404, like every other answer of the server, rather than
/// Hummingbird's empty one.
struct NotFoundAsJSON<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError where error.status == .notFound {
            return jsonResponse(NotFound(error: "not found", path: request.uri.path), status: .notFound)
        }
    }
}
