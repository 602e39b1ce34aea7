import Logging
import Rota
import Synchronization

/// A handler that runs the jobs whose envelope names it (see ``JobEnvelope``).
///
/// Same contract as ``Rota/JobHandler``: `start` returns quickly (it launches the long-running
/// work), starts may repeat for a job that already runs (make them idempotent), and a start with
/// another payload for a running key replaces that run (the pool restarts a changed job this way).
/// Throw ``Rota/PoolError/requeue`` to have the event delivered again later.
public protocol NamedJobHandler: Sendable {
    /// Starts the job `key`. `payload` is the handler's own payload (the envelope's content);
    /// `job` is the pool's view of the job (its payload is the whole envelope).
    func start(key: String, payload: [UInt8], job: Job) async throws
    /// Stops the job `key`. Stopping a key that does not run should be a no-op.
    func stop(key: String) async throws
    /// A notification sent to the job with `Node.notify(key:payload:)`.
    ///
    /// The default implementation ignores it, logging it at debug level (logger label
    /// `rota.service.handlers`): handlers that have nothing to do with notifications need not
    /// implement it.
    func handleNotification(key: String, payload: [UInt8]) async throws
}

extension NamedJobHandler {
    public func handleNotification(key: String, payload: [UInt8]) async throws {
        defaultNotificationLogger.debug(
            "notification ignored: the handler does not handle notifications",
            metadata: ["job": "\(key)", "handler": "\(type(of: self))", "bytes": "\(payload.count)"]
        )
    }
}

private let defaultNotificationLogger = Logger(label: "rota.service.handlers")

/// Named handlers of a worker: the envelope's `handler` field picks one.
///
/// ```swift
/// var registry = HandlerRegistry()
/// try registry.register("crawl", Crawler())
/// try registry.register("log", LogJobHandler(logger: logger))
/// let worker = try await node.addWorker(RegistryJobHandler(registry: registry, logger: logger))
/// ```
public struct HandlerRegistry: Sendable {
    private var handlers: [String: any NamedJobHandler] = [:]

    public init() {}

    /// A registry holding `handlers`; throws as ``register(_:_:)`` does for an invalid name.
    public init(_ handlers: [String: any NamedJobHandler]) throws(ServiceError) {
        for (name, handler) in handlers.sorted(by: { $0.key < $1.key }) {
            try register(name, handler)
        }
    }

    /// Adds `handler` under `name`. Names follow ``JobEnvelope/validate(handler:)`` (1–64 characters
    /// of `a-z`, `0-9`, `-`, `_`, `.`); an invalid or already registered name throws
    /// ``ServiceError/Code/invalidArgument``.
    public mutating func register(_ name: String, _ handler: any NamedJobHandler) throws(ServiceError) {
        do {
            try JobEnvelope.validate(handler: name)
        } catch {
            throw ServiceError(.invalidArgument, error.message, underlying: error)
        }
        guard handlers[name] == nil else {
            throw ServiceError(.invalidArgument, "a handler named '\(name)' is already registered")
        }
        handlers[name] = handler
    }

    /// The handler registered under `name`, if any.
    public func handler(named name: String) -> (any NamedJobHandler)? { handlers[name] }

    public subscript(name: String) -> (any NamedJobHandler)? { handlers[name] }

    /// The registered names, sorted.
    public var names: [String] { handlers.keys.sorted() }

    public var isEmpty: Bool { handlers.isEmpty }

    /// The error for a job naming a handler this registry does not have.
    func unknownHandler(_ name: String, key: String) -> ServiceError {
        let known = names.isEmpty ? "none" : names.joined(separator: ", ")
        return ServiceError(.unknownHandler, "job '\(key)': unknown handler '\(name)' (this worker has: \(known))")
    }
}

/// The pool-side handler of a worker whose jobs carry a ``JobEnvelope``: give it to
/// `Node.addWorker`. Each start is decoded and handed to the handler the envelope names; stops and
/// notifications of a key go to the handler that started it.
///
/// - A payload that is not an envelope fails the start with ``ServiceError/Code/invalidPayload``;
///   an unknown handler name with ``ServiceError/Code/unknownHandler`` (`unknown handler 'NAME'
///   (this worker has: a, b)`). Either way the dispatch fails with that text.
/// - A start for a key that runs under another handler stops it there first (the pool restarts a
///   job whose payload changed by starting it again). A start under the same handler goes to it:
///   idempotence and replacement are that handler's business.
/// - A failed start forgets the key (a failed replacement leaves nothing running, as the pool
///   assumes). Stopping a key this worker does not run is a no-op; a failed stop keeps it.
/// - Errors of the named handlers (``Rota/PoolError/requeue`` included) pass through unchanged.
/// What a named handler may want to know about the call it serves beyond its arguments.
public enum HandlerContext {
    /// The worker a stop or notification is for, set by ``RegistryJobHandler`` (a start carries
    /// it in its `Job`). A handler instance shared by several workers of a process tells their
    /// calls apart with it: the `log` handler names the worker in its "job stopped" lines.
    @TaskLocal public static var workerID: String?
}

public final class RegistryJobHandler: NotificationHandler {
    public let registry: HandlerRegistry
    private let logger: Logger

    private struct Entry {
        var handler: String
        var generation: UInt64
        /// The worker that started it (stops and notifications run with it in ``HandlerContext``).
        var worker: String
    }

    private struct State {
        var entries: [String: Entry] = [:]
        var nextGeneration: UInt64 = 0
    }

    private let state = Mutex(State())

    public init(registry: HandlerRegistry, logger: Logger = Logger(label: "rota.service.handlers")) {
        self.registry = registry
        self.logger = logger
    }

    /// The name of the handler running `key`, nil when this worker does not run it.
    public func handlerName(forKey key: String) -> String? {
        state.withLock { $0.entries[key]?.handler }
    }

    /// The keys started here and not stopped since, with their handler names.
    public var runningJobs: [String: String] {
        state.withLock { $0.entries.mapValues(\.handler) }
    }

    public func start(_ job: Job) async throws {
        let envelope: JobEnvelope
        do {
            envelope = try JobEnvelope(decoding: job.payload)
        } catch {
            throw ServiceError(.invalidPayload, "job '\(job.key)': \(error.message)", underlying: error)
        }
        guard let handler = registry.handler(named: envelope.handler) else {
            throw registry.unknownHandler(envelope.handler, key: job.key)
        }
        if let previous = state.withLock({ $0.entries[job.key] }), previous.handler != envelope.handler {
            logger.info(
                "job moves to another handler: stopping it under the old one",
                metadata: ["job": "\(job.key)", "from": "\(previous.handler)", "to": "\(envelope.handler)"]
            )
            if let old = registry.handler(named: previous.handler) {
                try await old.stop(key: job.key)
            }
            forget(job.key, generation: previous.generation)
        }
        let generation = state.withLock { state in
            state.nextGeneration += 1
            state.entries[job.key] = Entry(handler: envelope.handler, generation: state.nextGeneration, worker: job.workerID)
            return state.nextGeneration
        }
        do {
            try await handler.start(key: job.key, payload: envelope.payload, job: job)
        } catch {
            forget(job.key, generation: generation)
            throw error
        }
    }

    public func stop(key: String) async throws {
        guard let entry = state.withLock({ $0.entries[key] }) else {
            logger.debug("stop of a job this worker does not run: nothing to do", metadata: ["job": "\(key)"])
            return
        }
        if let handler = registry.handler(named: entry.handler) {
            try await HandlerContext.$workerID.withValue(entry.worker) { try await handler.stop(key: key) }
        }
        forget(key, generation: entry.generation)
    }

    public func handleNotification(key: String, payload: [UInt8]) async throws {
        guard let entry = state.withLock({ $0.entries[key] }), let handler = registry.handler(named: entry.handler) else {
            logger.warning("notification for a job this worker does not run: ignored", metadata: ["job": "\(key)"])
            return
        }
        try await HandlerContext.$workerID.withValue(entry.worker) { try await handler.handleNotification(key: key, payload: payload) }
    }

    /// Removes `key` unless a later start replaced the entry meanwhile.
    private func forget(_ key: String, generation: UInt64) {
        state.withLock { state in
            if state.entries[key]?.generation == generation { state.entries[key] = nil }
        }
    }
}
