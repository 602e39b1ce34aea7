import ArgumentParser
import Foundation
import RotaRedis
import RotaRedisServer

struct RedisBench: ParsableCommand, AsyncBody {
    static let configuration = CommandConfiguration(
        commandName: "redis",
        abstract: "Redis client throughput and latency, beside redis-benchmark against the same server."
    )

    @OptionGroup var common: BenchOptions

    @Option(help: "PINGs per sequential round.")
    var sequentialCount = 20_000

    @Option(help: "PINGs per pipelined round.")
    var pipelinedCount = 400_000

    @Option(help: "Stream hops measured per round.")
    var hops = 3_000

    @Flag(help: "Measure only the sequential PINGs and their reference (for profiling the round trip).")
    var sequentialOnly = false

    func run() throws {}

    func body(nioExecutor: Bool) async throws {
        try await common.withServer { configuration in try await measure(configuration) }
    }

    private func measure(_ configuration: RedisConfiguration) async throws {
        guard case let (host, port)? = tcpAddress(configuration.endpoint) else {
            throw ValidationError("rota-bench redis needs a TCP server (redis-benchmark is run against it too)")
        }
        let reference = ReferenceBenchmark(host: host, port: port, password: configuration.password, database: configuration.database)
        try await RedisClient.withClient(configuration) { client in
            var seq: [Double] = [], seqRef: [Double] = [], seqNoPreference: [Double] = [], syscallFloor: [Double] = []
            var p50: [Double] = [], p99: [Double] = [], p50Ref: [Double] = [], p99Ref: [Double] = []
            var one: [Double] = [], oneRef: [Double] = []
            var four: [Double] = [], fourRef: [Double] = []
            var concurrent: [Double] = []
            var floor: [Double] = []
            var seqCPU: [Double] = [], seqCPURef: [Double] = [], floorCPU: [Double] = []
            var hop50: [Double] = [], hop99: [Double] = []
            for round in 1...max(1, common.rounds) {
                if !common.json { print("round \(round)/\(common.rounds)…") }
                // The two variants take turns going first, so neither always follows redis-benchmark.
                if round % 2 == 0 { seqNoPreference.append(try await sequential(client, onTheConnectionsLoop: false).0) }
                let (rate, latencies, cpu) = try await sequential(client)
                seqCPU.append(cpu)
                seq.append(rate)
                p50.append(percentile(latencies, 50))
                p99.append(percentile(latencies, 99))
                if round % 2 == 1 { seqNoPreference.append(try await sequential(client, onTheConnectionsLoop: false).0) }
                let childrenBefore = cpuMicroseconds(RUSAGE_CHILDREN)
                let refSeq = try await reference.run(clients: 1, pipeline: 1, requests: sequentialCount)
                // redis-benchmark -t ping runs PING_INLINE and PING_MBULK: two series of `requests`.
                seqCPURef.append((cpuMicroseconds(RUSAGE_CHILDREN) - childrenBefore) / Double(2 * sequentialCount))
                seqRef.append(refSeq.rps)
                if configuration.password == nil {
                    // No event loop at all: what the kernel allows one thread doing write() then read().
                    syscallFloor.append(try await blockingSocketFloor(host: host, port: port, count: sequentialCount))
                    let before = cpuMicroseconds(RUSAGE_SELF)
                    floor.append(try await transportFloor(host: host, port: port, count: sequentialCount))
                    floorCPU.append((cpuMicroseconds(RUSAGE_SELF) - before) / Double(sequentialCount))
                }
                p50Ref.append(refSeq.p50Microseconds)
                p99Ref.append(refSeq.p99Microseconds)
                if sequentialOnly { continue }

                one.append(try await pipelined(client, connections: 1))
                oneRef.append(try await reference.run(clients: 1, pipeline: 64, requests: pipelinedCount).rps)
                four.append(try await pipelined(client, connections: 4))
                fourRef.append(try await reference.run(clients: 4, pipeline: 64, requests: pipelinedCount).rps)
                concurrent.append(try await concurrentTasks(client))

                let hopsMeasured = try await streamHops(client)
                hop50.append(percentile(hopsMeasured, 50))
                hop99.append(percentile(hopsMeasured, 99))
            }
            func throughput(_ metric: String, _ values: [Double], _ references: [Double]) -> Measurement {
                let value = median(values), reference = median(references)
                return Measurement(suite: "redis", metric: metric, value: value, unit: "ops/s", reference: reference, ratio: value / reference)
            }
            func latency(_ metric: String, _ values: [Double], _ references: [Double]) -> Measurement {
                let value = median(values), reference = median(references)
                return Measurement(suite: "redis", metric: metric, value: value, unit: "us", reference: reference, ratio: reference / value)
            }
            var rows = sequentialOnly ? [
                throughput("ping_sequential", seq, seqRef),
                latency("ping_latency_p50", p50, p50Ref),
                latency("ping_latency_p99", p99, p99Ref),
                latency("ping_sequential_cpu_per_op", seqCPU, seqCPURef),
            ] : [
                throughput("ping_sequential", seq, seqRef),
                throughput("ping_pipelined_1x64", one, oneRef),
                throughput("ping_pipelined_4x64", four, fourRef),
                throughput("ping_concurrent_tasks_1x64", concurrent, oneRef),
                latency("ping_latency_p50", p50, p50Ref),
                latency("ping_latency_p99", p99, p99Ref),
                // The reference for a hop is redis-benchmark's PING round trip: a hop is one command
                // to the server plus one reply pushed to the blocked consumer.
                latency("stream_hop_p50", hop50, p50Ref),
                latency("stream_hop_p99", hop99, p99Ref),
            ]
            // Context for ping_sequential: process CPU (user + system) per round trip, against
            // redis-benchmark's in the same round (µs, ratio reference / value like a latency). A
            // sequential round trip waits on this CPU, so it is the part of the gap that is ours.
            if !sequentialOnly { rows.insert(latency("ping_sequential_cpu_per_op", seqCPU, seqCPURef), at: 1) }
            // Context for ping_sequential: the same loop without the connection's task executor,
            // i.e. what a caller gets who does not follow EventLoopTaskExecutor's advice.
            rows.insert(throughput("ping_sequential_no_task_executor", seqNoPreference, seqRef), at: 1)
            // Context for ping_sequential: blocking write()/read() on a plain socket, no event loop
            // and no client (see TransportFloor.swift); no client can do less per round trip.
            if !syscallFloor.isEmpty { rows.insert(throughput("ping_sequential_syscall_floor", syscallFloor, seqRef), at: 1) }
            if !floor.isEmpty {
                // Context for ping_sequential: a bare NIO handler, no client layers (see TransportFloor.swift).
                rows.insert(throughput("ping_sequential_nio_floor", floor, seqRef), at: 1)
                rows.insert(latency("ping_sequential_nio_floor_cpu_per_op", floorCPU, seqCPURef), at: 2)
            }
            if common.json {
                for row in rows { print(row.json) }
            } else {
                printTable(rows)
            }
        }
    }

    private func tcpAddress(_ endpoint: RedisConfiguration.Endpoint) -> (String, Int)? {
        let text = endpoint.description
        guard !text.hasPrefix("unix:"), let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]) else {
            return nil
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") { host = String(host.dropFirst().dropLast()) }
        return (host, port)
    }

    /// PING after PING on one connection; returns ops/s, each round trip in µs (sorted) and the
    /// process CPU time per round trip in µs. `onTheConnectionsLoop` runs the loop the documented
    /// way for round trip after round trip (under the connection's task executor); without it the
    /// task runs wherever the global executor puts it.
    private func sequential(_ client: RedisClient, onTheConnectionsLoop: Bool = true) async throws -> (Double, [Double], Double) {
        try await client.withDedicatedConnection { connection in
            try await withTaskExecutorPreference(onTheConnectionsLoop ? connection.taskExecutor : nil) {
                try await pingAfterPing(connection)
            }
        }
    }

    private func pingAfterPing(_ connection: RedisConnection) async throws -> (Double, [Double], Double) {
        let ping = RedisCommand("PING")
        for _ in 0..<500 { _ = try await connection.send(ping) }  // warm-up
        var latencies: [Double] = []
        latencies.reserveCapacity(sequentialCount)
        let clock = ContinuousClock()
        let cpuBefore = cpuMicroseconds(RUSAGE_SELF)
        let start = clock.now
        var last = start
        for _ in 0..<sequentialCount {
            _ = try await connection.send(ping)
            let now = clock.now
            latencies.append(microseconds(now - last))
            last = now
        }
        let rate = Double(sequentialCount) / seconds(clock.now - start)
        let cpu = (cpuMicroseconds(RUSAGE_SELF) - cpuBefore) / Double(sequentialCount)
        return (rate, latencies.sorted(), cpu)
    }

    /// Batches of 64 PINGs in one write (redis-benchmark's -P 64), on `connections` connections at once.
    private func pipelined(_ client: RedisClient, connections: Int) async throws -> Double {
        let batch = Array(repeating: RedisCommand("PING"), count: 64)
        let batchesPerConnection = max(1, pipelinedCount / 64 / connections)
        let clock = ContinuousClock()
        let start = clock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<connections {
                group.addTask {
                    try await client.withDedicatedConnection { connection in
                        for _ in 0..<batchesPerConnection {
                            let replies = try await connection.pipeline(batch)
                            guard replies.count == 64 else { throw RedisError(.protocolError, "short pipeline") }
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        return Double(batchesPerConnection * connections * 64) / seconds(clock.now - start)
    }

    /// 64 tasks sending PING after PING on one shared connection: pipelining by concurrency alone.
    private func concurrentTasks(_ client: RedisClient) async throws -> Double {
        let perTask = max(1, pipelinedCount / 4 / 64)
        return try await client.withDedicatedConnection { connection in
            let ping = RedisCommand("PING")
            let clock = ContinuousClock()
            let start = clock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<64 {
                    group.addTask {
                        for _ in 0..<perTask { _ = try await connection.send(ping) }
                    }
                }
                try await group.waitForAll()
            }
            return Double(perTask * 64) / seconds(clock.now - start)
        }
    }

    /// XADD on the shared connections → a consumer blocked in XREADGROUP on its own connection.
    /// Each entry carries its send time; the consumer reports the difference.
    private func streamHops(_ client: RedisClient) async throws -> [Double] {
        let stream = "rota-bench:hop:\(UUID().uuidString)"
        _ = try await client.send("XGROUP", "CREATE", stream, "g", "$", "MKSTREAM")
        defer { Task { _ = try? await client.send("DEL", stream) } }
        let (ready, readyContinuation) = AsyncStream.makeStream(of: Void.self)
        let count = hops
        return try await withThrowingTaskGroup(of: [Double].self) { group in
            group.addTask {
                try await client.withDedicatedConnection { connection in
                    var results: [Double] = []
                    results.reserveCapacity(count)
                    let read = RedisCommand("XREADGROUP", "GROUP", "g", "c", "COUNT", 1, "BLOCK", 0, "STREAMS", stream, ">")
                    readyContinuation.yield()
                    while results.count < count {
                        let reply = try await connection.send(read, timeout: .seconds(30))
                        let received = monotonicNanoseconds()
                        guard let fields = reply.array?.first?.array?[1].array?.first?.array?[1].array,
                            let sent = fields.last?.string.flatMap(UInt64.init)
                        else { throw RedisError(.protocolError, "unexpected XREADGROUP reply \(reply)") }
                        results.append(Double(received &- sent) / 1000)
                        readyContinuation.yield()
                    }
                    readyContinuation.finish()
                    return results
                }
            }
            var iterator = ready.makeAsyncIterator()
            for _ in 0..<count {
                guard await iterator.next() != nil else { break }
                // Give the consumer's next XREADGROUP time to reach the server and block there.
                try await Task.sleep(for: .microseconds(500))
                _ = try await client.send("XADD", stream, "*", "t", String(monotonicNanoseconds()))
            }
            let results = try await group.next() ?? []
            return results.sorted()
        }
    }
}

/// User + system CPU time of this process (RUSAGE_SELF) or of its reaped children (RUSAGE_CHILDREN), µs.
func cpuMicroseconds(_ who: __rusage_who) -> Double {
    var usage = rusage()
    getrusage(who.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e6 + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec)
}

func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

func microseconds(_ duration: Duration) -> Double { seconds(duration) * 1e6 }

/// Runs `redis-benchmark -t ping` against the same server and reads its CSV (the PING_MBULK row:
/// RESP arrays, which is what our client sends).
struct ReferenceBenchmark {
    let host: String
    let port: Int
    let password: String?
    let database: Int

    struct Result {
        let rps: Double
        let p50Microseconds: Double
        let p99Microseconds: Double
    }

    func run(clients: Int, pipeline: Int, requests: Int) async throws -> Result {
        var arguments = ["-h", host, "-p", String(port), "-c", String(clients), "-P", String(pipeline), "-n", String(requests),
            "-t", "ping", "--csv", "--dbnum", String(database)]
        if let password { arguments += ["-a", password] }
        let output = try await runProcess(try executable(), arguments)
        for line in output.split(whereSeparator: \.isNewline) where line.hasPrefix("\"PING_MBULK\"") {
            let fields = line.split(separator: ",").map { Double($0.trimmingCharacters(in: CharacterSet(charactersIn: "\""))) }
            guard fields.count >= 7, let rps = fields[1], let p50 = fields[4], let p99 = fields[6] else { break }
            return Result(rps: rps, p50Microseconds: p50 * 1000, p99Microseconds: p99 * 1000)
        }
        throw ValidationError("could not read redis-benchmark's output: \(output.prefix(300))")
    }

    private func executable() throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let candidates = path.split(separator: ":").map { "\($0)/redis-benchmark" } + ["/usr/bin/redis-benchmark"]
        guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw ValidationError("redis-benchmark not found on PATH (apt-get install -y redis-tools)")
        }
        return found
    }
}

/// Runs a process to completion on a thread of its own (its blocking wait must not occupy an event
/// loop, which is where tasks run here) and returns its standard output.
func runProcess(_ executable: String, _ arguments: [String]) async throws -> String {
    try await onOwnThread(named: "rota-bench \(URL(fileURLWithPath: executable).lastPathComponent)") {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }
}

/// Runs blocking work on a thread of its own, so that no event loop or cooperative thread blocks,
/// and returns its result.
func onOwnThread<T: Sendable>(named name: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        let thread = Thread { continuation.resume(with: Result { try body() }) }
        thread.name = name
        thread.start()
    }
}
