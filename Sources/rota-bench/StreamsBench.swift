import ArgumentParser
import Foundation
import RotaRedis
import RotaRedisServer
import RotaStreams
import Synchronization

/// Sink latency and throughput, each beside plain-connection Redis stream commands measured in the
/// same run, round by round.
///
/// Ratios here are all value / reference. For the latencies that means LOWER IS BETTER (1.5 = the
/// sink's XADD → deliver → ack costs 1.5× a raw XADD → blocked XREADGROUP hop; the target is a p50
/// ratio ≤ 1.5) — the opposite orientation of `rota-bench redis`, whose latency ratios are
/// reference / value. For the throughput, higher is better.
struct StreamsBench: ParsableCommand, AsyncBody {
    static let configuration = CommandConfiguration(
        commandName: "streams",
        abstract: "Stream sink latency and throughput, beside raw XADD/XREADGROUP on plain connections."
    )

    @OptionGroup var common: BenchOptions

    @Option(help: "Hops (one event at a time) measured per round, for the latencies.")
    var hops = 2_000

    @Option(help: "Events per burst, for the throughput.")
    var burst = 20_000

    @Option(help: "Sink instances consuming the burst.")
    var instances = 4

    func run() throws {}

    func body(nioExecutor: Bool) async throws {
        try await common.withServer { configuration in try await measure(configuration) }
    }

    private func measure(_ configuration: RedisConfiguration) async throws {
        try await RedisClient.withClient(configuration) { client in
            let space = try RedisKeySpace("bench\(UInt32.random(in: 0...UInt32.max))")
            var sink50: [Double] = [], sink99: [Double] = [], raw50: [Double] = [], raw99: [Double] = []
            var sinkRate: [Double] = [], rawRate: [Double] = [], deliver50: [Double] = []
            for round in 1...max(1, common.rounds) {
                if !common.json { print("round \(round)/\(common.rounds)…") }
                let raw = try await rawHops(client, space: space)
                raw50.append(percentile(raw, 50))
                raw99.append(percentile(raw, 99))
                let sink = try await sinkHops(client, space: space)
                sink50.append(percentile(sink.acked, 50))
                sink99.append(percentile(sink.acked, 99))
                deliver50.append(percentile(sink.delivered, 50))
                rawRate.append(try await rawThroughput(client, space: space))
                sinkRate.append(try await sinkThroughput(client, space: space))
            }
            func latency(_ metric: String, _ values: [Double], _ references: [Double]) -> Measurement {
                let value = median(values), reference = median(references)
                // value / reference: lower is better (see the type's comment).
                return Measurement(suite: "streams", metric: metric, value: value, unit: "us", reference: reference, ratio: value / reference)
            }
            let rate = median(sinkRate), rawReference = median(rawRate)
            let rows = [
                latency("sink_e2e_p50", sink50, raw50),
                latency("sink_e2e_p99", sink99, raw99),
                // Context for sink_e2e: XADD → the event reaches the consumer, before its ack (whose
                // round trip sink_e2e includes and the reference hop does not).
                latency("sink_deliver_p50", deliver50, raw50),
                Measurement(
                    suite: "streams", metric: "sink_events_per_s", value: rate, unit: "events/s", reference: rawReference,
                    ratio: rate / rawReference),
            ]
            if common.json {
                for row in rows { print(row.json) }
            } else {
                printTable(rows)
                print("latency ratios: value / reference, lower is better (target p50 ≤ 1.5);")
                print("sink_events_per_s: \(instances) sink instances acking each event; reference: one plain")
                print("connection reading XREADGROUP COUNT 1000 and acking each batch in one pipeline.")
            }
        }
    }

    /// The reference hop: XADD on the shared connections → a consumer already blocked in
    /// XREADGROUP on a plain dedicated connection. µs from before the XADD to the reply, sorted.
    private func rawHops(_ client: RedisClient, space: RedisKeySpace) async throws -> [Double] {
        let key = space.key("stream", "raw-hop-\(UUID().uuidString)")
        try await client.send("XGROUP", "CREATE", key, "g", "$", "MKSTREAM")
        let (ready, readyContinuation) = AsyncStream.makeStream(of: Void.self)
        let count = hops
        let results = try await withThrowingTaskGroup(of: [Double].self) { group in
            group.addTask {
                try await client.withDedicatedConnection { connection in
                    var results: [Double] = []
                    results.reserveCapacity(count)
                    let read = RedisCommand("XREADGROUP", "GROUP", "g", "c", "COUNT", 1, "NOACK", "BLOCK", 0, "STREAMS", key, ">")
                    readyContinuation.yield()
                    while results.count < count {
                        let reply = try await connection.send(read, timeout: .seconds(30))
                        let received = monotonicNanoseconds()
                        guard let fields = reply.array?.first?.array?.last?.array?.first?.array?.last?.array,
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
                // Let the consumer's next XREADGROUP reach the server and block there.
                try await Task.sleep(for: .microseconds(500))
                try await client.send("XADD", key, "*", "t", String(monotonicNanoseconds()))
            }
            return try await group.next() ?? []
        }
        try await client.send("DEL", key)
        return results.sorted()
    }

    /// XADD (``RedisStream/add``) → the sink delivers the event → ``StreamSink/ack(_:)`` completes,
    /// one event at a time. µs, sorted.
    private func sinkHops(_ client: RedisClient, space: RedisKeySpace) async throws -> (acked: [Double], delivered: [Double]) {
        let stream = try RedisStream(name: "sink-hop-\(UUID().uuidString)", keySpace: space, client: client)
        let count = hops
        let results = try await StreamSink.withSink(name: "bench", streams: [stream], options: .init(start: .newest)) { sink in
            try await withThrowingTaskGroup(of: ([Double], [Double]).self) { group in
                let (acked, ackedContinuation) = AsyncStream.makeStream(of: Void.self)
                group.addTask {
                    var results: [Double] = [], delivered: [Double] = []
                    results.reserveCapacity(count)
                    delivered.reserveCapacity(count)
                    for try await event in sink.events {
                        let received = monotonicNanoseconds()
                        try await sink.ack(event)
                        let done = monotonicNanoseconds()
                        guard let sent = UInt64(String(decoding: event.payload, as: UTF8.self)) else {
                            throw RedisError(.protocolError, "unexpected payload")
                        }
                        results.append(Double(done &- sent) / 1000)
                        delivered.append(Double(received &- sent) / 1000)
                        ackedContinuation.yield()
                        if results.count == count { break }
                    }
                    ackedContinuation.finish()
                    return (results, delivered)
                }
                var iterator = acked.makeAsyncIterator()
                for index in 0..<count {
                    if index > 0 { guard await iterator.next() != nil else { break } }
                    try await Task.sleep(for: .microseconds(500))
                    try await stream.add(name: "t", payload: Array(String(monotonicNanoseconds()).utf8))
                }
                return try await group.next() ?? ([], [])
            }
        }
        try await stream.destroy()
        return (results.0.sorted(), results.1.sorted())
    }

    /// Fills a stream with `burst` events in pipelined batches while `instances` sinks of one name
    /// consume them, acking each (up to 64 acks in flight per instance). Events/s from the first
    /// XADD to the last ack.
    private func sinkThroughput(_ client: RedisClient, space: RedisKeySpace) async throws -> Double {
        let stream = try RedisStream(name: "sink-burst-\(UUID().uuidString)", keySpace: space, client: client, options: .init(maxLength: 0))
        let options = StreamSink.Options(blockDuration: .seconds(1), start: .newest, ackGracePeriod: .seconds(60))
        let sinks = try (0..<max(1, instances)).map { _ in try StreamSink(name: "bench", stream: stream, options: options) }
        let total = burst
        let acked = AckCounter()
        let (done, doneContinuation) = AsyncStream.makeStream(of: Void.self)
        let elapsed = try await withThrowingTaskGroup(of: Void.self, returning: Duration.self) { group in
            for sink in sinks {
                group.addTask { try await sink.run() }
                group.addTask {
                    // Acks are awaited, but up to 64 at a time per instance: a consumer keeps
                    // taking events while earlier acks are on the wire, as a real one would.
                    try await withThrowingTaskGroup(of: Void.self) { acks in
                        var outstanding = 0
                        for try await event in sink.events {
                            if outstanding == 64 {
                                try await acks.next()
                                outstanding -= 1
                            }
                            outstanding += 1
                            acks.addTask {
                                try await sink.ack(event)
                                if acked.increment() == total { doneContinuation.finish() }
                            }
                        }
                        try await acks.waitForAll()
                    }
                }
            }
            for sink in sinks { try await sink.ready() }
            let clock = ContinuousClock()
            let start = clock.now
            try await produce(client, key: stream.key, count: total)
            for await _ in done {}
            let elapsed = clock.now - start
            group.cancelAll()
            return elapsed
        }
        try await stream.destroy()
        return Double(total) / seconds(elapsed)
    }

    /// The reference: one plain connection reading XREADGROUP COUNT 1000 and acking every batch
    /// with one pipeline of XACKs (one per event), while the same burst is produced.
    private func rawThroughput(_ client: RedisClient, space: RedisKeySpace) async throws -> Double {
        let key = space.key("stream", "raw-burst-\(UUID().uuidString)")
        try await client.send("XGROUP", "CREATE", key, "g", "$", "MKSTREAM")
        let total = burst
        let elapsed = try await withThrowingTaskGroup(of: Void.self, returning: Duration.self) { group in
            let (ready, readyContinuation) = AsyncStream.makeStream(of: Void.self)
            group.addTask {
                try await client.withDedicatedConnection { connection in
                    let read = RedisCommand("XREADGROUP", "GROUP", "g", "c", "COUNT", 1000, "BLOCK", 1000, "STREAMS", key, ">")
                    readyContinuation.finish()
                    var seen = 0
                    while seen < total {
                        let reply = try await connection.send(read, timeout: .seconds(30))
                        let entries = reply.array?.first?.array?.last?.array ?? []
                        let acks = entries.compactMap { $0.array?.first?.string }.map { RedisCommand("XACK", key, "g", $0) }
                        _ = try await connection.pipeline(acks)
                        seen += entries.count
                    }
                }
            }
            for await _ in ready {}
            let clock = ContinuousClock()
            let start = clock.now
            try await produce(client, key: key, count: total)
            try await group.waitForAll()
            return clock.now - start
        }
        try await client.send("DEL", key)
        return Double(total) / seconds(elapsed)
    }

    private func produce(_ client: RedisClient, key: String, count: Int) async throws {
        let payload = Array(repeating: UInt8(ascii: "x"), count: 64)
        var sent = 0
        while sent < count {
            let batch = min(500, count - sent)
            let commands = (0..<batch).map { _ in RedisCommand("XADD", key, "*", "n", "e", "p", payload) }
            _ = try await client.pipeline(commands)
            sent += batch
        }
    }
}

/// Events acknowledged so far, shared by the consuming tasks.
private final class AckCounter: Sendable {
    private let count = Atomic<Int>(0)
    func increment() -> Int { count.add(1, ordering: .relaxed).newValue }
}
