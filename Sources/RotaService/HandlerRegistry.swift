import Logging
import Rota

/// A runner of the jobs whose envelope names it (see ``JobEnvelope``), in the structured form of
/// ``Rota/JobRunner``: a job is one call to ``run(payload:job:context:)`` that lasts as long as
/// the job.
///
/// - ``validate(payload:job:)`` runs before the worker accepts the job: throwing fails the start
///   (the dispatcher, or the round, gets the error's text). It runs on the worker's event loop:
///   keep it to checks of the payload, without waiting on anything.
/// - ``run(payload:job:context:)``: returning ends the job (`finished`), throwing ends it with the
///   error (`failed`); either way it leaves the pool. A stop cancels the call's task, which then
///   has `context.stopGracePeriod` to wind down; whatever it returns or throws then is the stop.
/// - Notifications sent to the job arrive on `context.notifications`.
/// - The pool runs at most one copy of a job per worker: a start with another payload ends the
///   running copy (cancelled, awaited) before the new one runs.
public protocol NamedJobRunner: Sendable {
    /// Checks the job before the worker accepts it. `payload` is the runner's own payload (the
    /// envelope's content); `job` is the pool's view of the job (its payload is the whole
    /// envelope). The default accepts every job.
    func validate(payload: [UInt8], job: Job) throws
    /// Runs the job until it is done or its task is cancelled (stopped).
    func run(payload: [UInt8], job: Job, context: JobContext) async throws
}

extension NamedJobRunner {
    public func validate(payload: [UInt8], job: Job) throws {}
}

/// Named runners of a worker: the envelope's `handler` field picks one.
///
/// ```swift
/// var registry = HandlerRegistry()
/// try registry.register("crawl", Crawler())
/// try registry.register("log", LogJobRunner(logger: logger))
/// let runner = RegistryJobRunner(registry: registry)
/// let worker = try await node.addWorker(runner, capabilities: runner.capabilities)
/// ```
public struct HandlerRegistry: Sendable {
    private var runners: [String: any NamedJobRunner] = [:]

    public init() {}

    /// A registry holding `runners`; throws as ``register(_:_:)`` does for an invalid name.
    public init(_ runners: [String: any NamedJobRunner]) throws(ServiceError) {
        for (name, runner) in runners.sorted(by: { $0.key < $1.key }) {
            try register(name, runner)
        }
    }

    /// Adds `runner` under `name`. Names follow ``JobEnvelope/validate(handler:)`` (1–64 characters
    /// of `a-z`, `0-9`, `-`, `_`, `.`); an invalid or already registered name throws
    /// ``ServiceError/Code/invalidArgument``.
    public mutating func register(_ name: String, _ runner: any NamedJobRunner) throws(ServiceError) {
        do {
            try JobEnvelope.validate(handler: name)
        } catch {
            throw ServiceError(.invalidArgument, error.message, underlying: error)
        }
        guard runners[name] == nil else {
            throw ServiceError(.invalidArgument, "a handler named '\(name)' is already registered")
        }
        runners[name] = runner
    }

    /// The runner registered under `name`, if any.
    public func runner(named name: String) -> (any NamedJobRunner)? { runners[name] }

    public subscript(name: String) -> (any NamedJobRunner)? { runners[name] }

    /// The registered names, sorted.
    public var names: [String] { runners.keys.sorted() }

    public var isEmpty: Bool { runners.isEmpty }

    /// The error for a job naming a handler this registry does not have.
    func unknownHandler(_ name: String, key: String) -> ServiceError {
        let known = names.isEmpty ? "none" : names.joined(separator: ", ")
        return ServiceError(.unknownHandler, "job '\(key)': unknown handler '\(name)' (this worker has: \(known))")
    }
}

/// The ``Rota/JobRunner`` of a worker whose jobs carry a ``JobEnvelope``: give it to
/// `Node.addWorker(_:capabilities:)` with its ``capabilities``. Each job is decoded and run by the
/// runner its envelope names.
///
/// - A payload that is not an envelope fails the start with ``ServiceError/Code/invalidPayload``;
///   an unknown handler name with ``ServiceError/Code/unknownHandler`` (`unknown handler 'NAME'
///   (this worker has: a, b)`). Both are thrown by ``validate(_:)``, so the dispatch fails with
///   that text and nothing runs.
/// - Errors of the named runners pass through unchanged.
public struct RegistryJobRunner: JobRunner {
    public let registry: HandlerRegistry

    public init(registry: HandlerRegistry) {
        self.registry = registry
    }

    /// What a worker running this declares to the pool: the registry's names. Service dispatches
    /// require the envelope's handler, so a job only goes to a worker that has its runner (and
    /// waits, unplaced, while no active worker has).
    public var capabilities: Set<String> { Set(registry.names) }

    public func validate(_ job: Job) throws {
        let (envelope, runner) = try resolve(job)
        try runner.validate(payload: envelope.payload, job: job)
    }

    public func run(_ job: Job, context: JobContext) async throws {
        // Decoded again: validate accepted this very payload, and a job carries no state between
        // the two calls.
        let (envelope, runner) = try resolve(job)
        try await runner.run(payload: envelope.payload, job: job, context: context)
    }

    /// The job's envelope and the runner it names.
    private func resolve(_ job: Job) throws(ServiceError) -> (JobEnvelope, any NamedJobRunner) {
        let envelope: JobEnvelope
        do {
            envelope = try JobEnvelope(decoding: job.payload)
        } catch {
            throw ServiceError(.invalidPayload, "job '\(job.key)': \(error.message)", underlying: error)
        }
        guard let runner = registry.runner(named: envelope.handler) else {
            throw registry.unknownHandler(envelope.handler, key: job.key)
        }
        return (envelope, runner)
    }
}
