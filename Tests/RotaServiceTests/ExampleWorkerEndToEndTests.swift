import Foundation
import RotaRedis
import RotaStore
import RotaTestSupport
import Testing

// The README's mixed pool, run as a user would: `rota run --workers 2` (handlers `log`, `exec`)
// and the example application `rota-example-worker` (handlers `greet`, `log`) in one pool, with a
// plan of eight `greet` jobs. Only the example's worker can run them.

private let greetJobs = (0..<8).map { "greet/\($0)" }

private let greetPlan = """
    pool: mixed
    producers:
      - name: greetings
        every: 1s
        mode: exact
        jobs:
    \(greetJobs.map { "      - {key: \($0), handler: greet, payload: {name: \"\($0)\"}}" }.joined(separator: "\n"))

    """

@Suite("Embedded workers: the mixed pool of the README", .serialized, .timeLimit(.minutes(4)))
struct ExampleWorkerEndToEndTests {
    /// Pool state straight from Redis: who owns each job, what each worker can run, what is held.
    private struct PoolState {
        var owners: [String: String] = [:]
        var capabilities: [String: Set<String>] = [:]
        var unplaced: [String: String] = [:]
    }

    private func read(_ client: RedisClient) async throws -> PoolState {
        func hash(_ name: String) async throws -> [String: String] {
            let items = try await client.send("HGETALL", "rota:{mixed}:map:\(name)").array ?? []
            var result: [String: String] = [:]
            for index in stride(from: 0, to: items.count - 1, by: 2) {
                if let key = items[index].string, !key.hasPrefix("="), let value = items[index + 1].string { result[key] = value }
            }
            return result
        }
        return PoolState(
            owners: try await hash("owners"),
            capabilities: try await hash("worker-capabilities").mapValues { Set($0.split(separator: ",").map(String.init)) },
            unplaced: try await hash("unplaced-jobs"))
    }

    private func startExample(_ cluster: RunCluster, _ label: String) throws -> RunNode {
        try RunNode(
            label: label, database: "", arguments: [cluster.redisURL, cluster.pool],
            executable: try builtExecutable("rota-example-worker"))
    }

    @Test("greet jobs run only on the example's worker, wait unplaced while it is dead, and start again when it is back")
    func mixedPool() async throws {
        try await withRunCluster(pool: "mixed", plans: greetPlan) { cluster in
            let runner = try cluster.start("runner", extra: ["--workers", "2"])
            try await runner.waitUntilReady()
            let configuration = try RedisConfiguration(url: cluster.redisURL)
            try await RedisClient.withClient(configuration) { client in
                // Before the example joins, nothing can run the plan: held, not failing.
                try await pollAsync("the greet jobs held before any greet worker exists", timeout: .seconds(20), diagnostics: cluster.diagnostics) {
                    Set(try await read(client).unplaced.keys) == Set(greetJobs)
                }
                let example = try startExample(cluster, "example-1")
                var state = PoolState()
                try await pollAsync("every greet job running on a greet worker", timeout: .seconds(20), diagnostics: cluster.diagnostics + example.diagnostics) {
                    state = try await read(client)
                    return greetJobs.allSatisfy { state.owners[$0] != nil } && state.unplaced.isEmpty
                }
                for job in greetJobs {
                    let owner = try #require(state.owners[job])
                    #expect(state.capabilities[owner]?.contains("greet") == true, "\(job) runs on \(owner), which has \(state.capabilities[owner] ?? [])")
                }
                let exampleWorkers = Set(greetJobs.compactMap { state.owners[$0] })
                #expect(state.capabilities.filter { $0.value == ["exec", "log"] }.count == 2, "rota run's two workers: \(state.capabilities)")

                // The example dies: its greet jobs are lost, then held; no round fails meanwhile.
                try await example.kill()
                try await pollAsync("the greet jobs held after the example died", timeout: .seconds(30), diagnostics: cluster.diagnostics) {
                    let state = try await read(client)
                    return Set(state.unplaced.keys) == Set(greetJobs) && greetJobs.allSatisfy { state.owners[$0] == nil }
                }
                let restarted = try startExample(cluster, "example-2")
                try await pollAsync("the greet jobs running again on the new example worker", timeout: .seconds(20), diagnostics: cluster.diagnostics + restarted.diagnostics) {
                    state = try await read(client)
                    return greetJobs.allSatisfy { state.owners[$0].map { !exampleWorkers.contains($0) } ?? false } && state.unplaced.isEmpty
                }
                for job in greetJobs {
                    #expect(state.capabilities[state.owners[job] ?? ""]?.contains("greet") == true)
                }
                try await restarted.kill()
            }

            // The history: no failed round, `unplaced` recorded (not as a failure), and each job's
            // steps in order: held, started, lost, held, started.
            let rounds = try runner.rounds(producer: "greetings")
            #expect(!rounds.isEmpty)
            #expect(rounds.allSatisfy { $0.failed == 0 }, "failed rounds: \(rounds.filter { $0.failed > 0 }.map(\.roundID))")
            let actions = try rounds.flatMap { try runner.actions(of: $0.roundID) }
            #expect(!actions.contains { $0.outcome == .failed })
            #expect(Set(actions.filter { $0.outcome == .unplaced }.map(\.job)) == Set(greetJobs))
            try await poll("each job's steps in the history", timeout: .seconds(10), diagnostics: runner.diagnostics) {
                for job in greetJobs {
                    let kinds = try runner.store().jobEvents(job: job).sorted { $0.at < $1.at }.map(\.kind.rawValue)
                    let steps = kinds.filter { ["unplaced", "started", "lost"].contains($0) }
                    guard steps.starts(with: ["unplaced", "started", "lost", "unplaced", "started"]) else {
                        throw TestFailure("\(job): \(kinds)")
                    }
                }
                return true
            }
        }
    }
}

/// ``poll(_:timeout:every:diagnostics:_:)`` for an async condition.
private func pollAsync(_ what: String, timeout: Duration, diagnostics: @autoclosure () -> String = "", _ body: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    var lastError: (any Error)?
    while true {
        do {
            if try await body() { return }
        } catch {
            lastError = error
        }
        if ContinuousClock.now >= deadline {
            throw TestFailure("timed out after \(timeout) waiting for \(what)\(lastError.map { " (last error: \($0))" } ?? "")\n\(diagnostics())")
        }
        try await Task.sleep(for: .milliseconds(100))
    }
}
