// An application embedding a Rota worker: it joins a pool and runs the jobs whose plan names the
// `greet` handler (and logs those naming `log`). Its worker declares both names as capabilities,
// so the pool sends it only jobs it can run; a `greet` job dispatched while no such worker is up
// waits in the pool (unplaced) and starts when this one joins.
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

/// The application's own runner: a job prints a greeting every few seconds until it is stopped
/// (its task cancelled), and prints the notifications it is sent. The whole job is this one call.
struct Greeter: NamedJobRunner {
    func validate(payload: [UInt8], job: Job) throws {
        // Refused here, the dispatch fails with this text and nothing runs.
        guard !payload.isEmpty else { throw ServiceError(.invalidPayload, "greet: the payload names whom to greet") }
    }

    func run(payload: [UInt8], job: Job, context: JobContext) async throws {
        let text = String(decoding: payload, as: UTF8.self)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for await note in context.notifications {
                    print("\(job.key) was told: \(String(decoding: note, as: UTF8.self))")
                }
            }
            group.addTask {
                // Ends with CancellationError when the job is stopped: the stop, not a failure.
                while true {
                    print("hello from \(job.key): \(text)")
                    try await Task.sleep(for: .seconds(3))
                }
            }
            try await group.next()
            group.cancelAll()
        }
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
            let runner = RegistryJobRunner(registry: registry)
            _ = try await node.addWorker(runner, capabilities: runner.capabilities)
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
    try registry.register("log", LogJobRunner(logger: logger))
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
