import Foundation
import RotaRedis
import RotaRedisServer
import Synchronization

/// The pool a scenario runs against: one redis-server (AOF on, so a restart keeps the state),
/// `planners` × `rota run` (one embedded worker each, own SQLite file) and `workers` × `rota worker`
/// (two workers each), all on one plan of `producers` × `jobsPerProducer` always-desired jobs at a
/// 1 s interval, in two handler classes: even producers' jobs name `log`, which only the `rota run`
/// workers offer, odd producers' name `greet`, which only the `rota worker` processes offer (the
/// built-in log runner under that name): the pool must place each class on its own workers.
final class ChaosCluster: Sendable {
    static let pool = "chaos"
    static let producers = 10
    static let jobsPerProducer = 50
    /// Every producer plans once a second.
    static let intervalSeconds = 1

    let directory: URL
    let executable: URL
    let server: RedisServer
    let planners: Int
    let workers: Int
    private let processes = Mutex<[ChaosProcess]>([])

    /// Every job key of the plan: what must be running once the pool settled.
    static var plannedJobs: Set<String> {
        var keys = Set<String>()
        for producer in 0..<producers {
            for job in 0..<jobsPerProducer { keys.insert("p\(producer)/j\(job)") }
        }
        return keys
    }

    /// The handler class of a producer's jobs: `log` (planners' workers) or `greet` (worker processes').
    static func handler(ofProducer producer: Int) -> String { producer % 2 == 0 ? "log" : "greet" }

    /// Whether the process in `slot` offers the handler of `job`: plan jobs `pN/…` by their
    /// producer's class; the probe's and flood's jobs are `log` jobs.
    static func slot(_ slot: String, offersHandlerOf job: String) -> Bool {
        var handler = "log"
        if job.hasPrefix("p"), let producer = Int(job.dropFirst().prefix { $0 != "/" }) { handler = self.handler(ofProducer: producer) }
        return handler == "log" ? slot.hasPrefix("r") : slot.hasPrefix("w")
    }

    init(directory: URL, executable: URL, planners: Int = 3, workers: Int = 3) {
        self.directory = directory
        self.executable = executable
        self.planners = planners
        self.workers = workers
        var options = RedisServer.Options()
        options.appendOnly = true
        options.unixSocket = false
        self.server = RedisServer(options: options)
    }

    var databaseDirectory: URL { directory.appendingPathComponent("db") }
    var plansDirectory: URL { directory.appendingPathComponent("plans") }
    var logDirectory: URL { directory.appendingPathComponent("logs") }

    func database(of slot: String) -> String { databaseDirectory.appendingPathComponent("\(slot).sqlite").path }
    var plannerSlots: [String] { (0..<planners).map { "r\($0)" } }
    var workerSlots: [String] { (0..<workers).map { "w\($0)" } }

    /// Starts Redis and every node, and waits until each node is ready.
    func start() async throws {
        for folder in [databaseDirectory, plansDirectory, logDirectory] {
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        }
        var plan = "pool: \(Self.pool)\nproducers:\n"
        for producer in 0..<Self.producers {
            plan += "  - name: p\(producer)\n    every: \(Self.intervalSeconds)s\n    mode: exact\n    jobs:\n"
            let handler = Self.handler(ofProducer: producer)
            for job in 0..<Self.jobsPerProducer { plan += "      - {key: p\(producer)/j\(job), handler: \(handler), payload: {n: \(job)}}\n" }
        }
        try plan.write(to: plansDirectory.appendingPathComponent("chaos.yaml"), atomically: true, encoding: .utf8)
        do {
            try await server.start()
        } catch {
            throw ChaosFailure(.redis, "redis-server did not start", underlying: error)
        }
        let started = try (plannerSlots + workerSlots).map { try spawn($0) }
        for process in started { try await process.waitUntilReady() }
    }

    /// Starts a new incarnation of `slot` (its previous one must have ended); does not wait.
    @discardableResult
    func spawn(_ slot: String) throws -> ChaosProcess {
        let incarnation = processes.withLock { list in list.filter { $0.slot == slot }.count }
        let logPath = logDirectory.appendingPathComponent("\(slot).\(incarnation).log").path
        let common = ["--redis", server.url, "--pool", Self.pool, "--name", slot, "--log-format", "json"]
        let role: ChaosProcess.Role = slot.hasPrefix("r") ? .planner : .worker
        let arguments = role == .planner
            // Debug: a round that changed nothing logs its "round" line at debug, and the checker
            // counts every round's line to find a tick planned twice.
            ? ["run", "--plans", plansDirectory.path, "--db", database(of: slot), "--workers", "1", "--handler", "log", "--log-level", "debug"] + common
            : ["worker", "--workers", "2", "--handler", "greet=log"] + common
        let process = try ChaosProcess(
            role: role, slot: slot, incarnation: incarnation, executable: executable, arguments: arguments, logPath: logPath)
        processes.withLock { $0.append(process) }
        return process
    }

    /// Every incarnation started so far, in start order.
    var all: [ChaosProcess] { processes.withLock { $0 } }

    /// The current incarnation of `slot`.
    func current(_ slot: String) -> ChaosProcess? { all.last { $0.slot == slot } }

    /// The live planner that logged the most recent round: the one to kill to hurt planning most.
    func currentPlanner() -> ChaosProcess? {
        let live = plannerSlots.compactMap { current($0) }.filter { !$0.hasEnded }
        return live.max { lastRound($0) < lastRound($1) }
    }

    private func lastRound(_ process: ChaosProcess) -> Date {
        process.records.last { if case .round = $0.kind { return true } else { return false } }?.time ?? .distantPast
    }

    /// Kills every node and the server.
    func stop() async {
        for process in all { await process.killNow() }
        await server.kill()
    }

    /// A client configuration for the harness's own connection (the checker and the load generator).
    var redisConfiguration: RedisConfiguration { server.configuration }
}
