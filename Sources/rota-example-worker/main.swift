// An application embedding a Rota worker: it joins a pool and runs the jobs whose plan names the
// `greet` handler (and logs those naming `log`).
//
//   swift run rota-example-worker redis://127.0.0.1:6379 demo
//
// Plan file for it:
//   pool: demo
//   producers:
//     - name: greetings
//       every: 5s
//       jobs:
//         - {key: greet/world, handler: greet, payload: {name: world}}
import Foundation
import Logging
import Rota
import RotaRedis
import RotaService
import ServiceLifecycle

/// The application's own handler: a long-running job per key, here a task printing a greeting
/// every few seconds until it is stopped.
final class Greeter: NamedJobHandler {
    private let tasks = TaskTable()

    func start(key: String, payload: [UInt8], job: Job) async throws {
        let text = String(decoding: payload, as: UTF8.self)
        await tasks.replace(key) {
            while !Task.isCancelled {
                print("hello from \(key): \(text)")
                try? await Task.sleep(for: .seconds(3))
            }
        }
    }

    func stop(key: String) async throws {
        await tasks.cancel(key)
    }
}

/// The running greetings, one task per job key.
actor TaskTable {
    private var tasks: [String: Task<Void, Never>] = [:]

    func replace(_ key: String, _ body: @escaping @Sendable () async -> Void) {
        tasks[key]?.cancel()
        // One task per job: the job outlives the start call that created it, by design.
        tasks[key] = Task { await body() }
    }

    func cancel(_ key: String) {
        tasks.removeValue(forKey: key)?.cancel()
    }
}

/// Runs the node and adds the worker once it has joined.
struct WorkerService: Service {
    let node: Node
    let registry: HandlerRegistry

    func run() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await node.run() }
            try await node.waitUntilReady()
            _ = try await node.addWorker(RegistryJobHandler(registry: registry))
            try await group.waitForAll()
        }
    }
}

let arguments = CommandLine.arguments
let url = arguments.count > 1 ? arguments[1] : "redis://127.0.0.1:6379"
let pool = arguments.count > 2 ? arguments[2] : "demo"
do {
    let logger = Logger(label: "example")
    let client = RedisClient(configuration: try RedisConfiguration(url: url), logger: logger)
    var registry = HandlerRegistry()
    try registry.register("greet", Greeter())
    try registry.register("log", LogJobHandler(logger: logger))
    let node = try Node(pool: pool, client: client)
    let group = ServiceGroup(configuration: .init(
        services: [.init(service: client), .init(service: WorkerService(node: node, registry: registry))],
        gracefulShutdownSignals: [.sigterm, .sigint],
        logger: logger
    ))
    try await group.run()
} catch {
    FileHandle.standardError.write(Data("rota-example-worker: \(error)\n".utf8))
    exit(1)
}
