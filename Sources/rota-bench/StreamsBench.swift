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
            var sinkRate: [Double] = [], rawRate: [Double] = [], deliver50: [Double] = [], confirmed50: [Double] = []
            for round in 1...max(1, common.rounds) {
                if !common.json { print("round \(round)/\(common.rounds)…") }
                let hopped = try await hops(client, space: space)
                raw50.append(percentile(hopped.raw, 50))
                raw99.append(percentile(hopped.raw, 99))
                sink50.append(percentile(hopped.acked, 50))
                sink99.append(percentile(hopped.acked, 99))
                deliver50.append(percentile(hopped.delivered, 50))
                confirmed50.append(percentile(hopped.confirmed, 50))
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
                // Context for sink_e2e: XADD → the event reaches the consumer, before its
                // acknowledgement; and XADD → an awaited ack's reply (one more round trip).
                latency("sink_deliver_p50", deliver50, raw50),
                latency("sink_e2e_confirmed_p50", confirmed50, raw50),
                Measurement(
                    suite: "streams", metric: "sink_events_per_s", value: rate, unit: "events/s", reference: rawReference,
                    ratio: rate / rawReference),
            ]
            if common.json {
                for row in rows { print(row.json) }
            } else {
                printTable(rows)
                print("latency ratios: value / reference, lower is better (target p50 ≤ 1.5);")
                print("sink_e2e: the consumer acknowledges with acknowledge(_:) (XACK queued, not awaited);")
                print("sink_e2e_confirmed: with ack(_:), which waits for the XACK's reply.")
                print("sink_events_per_s: \(instances) sink instances acking each event; reference: one plain")
                print("connection reading XREADGROUP COUNT 1000 and acking each batch in one pipeline.")
            }
        }
    }

    /// Hops, one event at a time, alternating between the reference and the sink so that both see
    /// the same machine (phases seconds apart drift by tens of µs on a 2-vCPU VM). µs from before
    /// the XADD, sorted.
    ///
    /// Reference: XADD on the shared connections → a consumer already blocked in XREADGROUP (NOACK)
    /// on a plain dedicated connection. Sink: XADD (``RedisStream/add``) → the sink delivers → the
    /// consumer acknowledges; sink hops alternate between ``StreamSink/acknowledge(_:)`` (returns
    /// once the XACK is queued: `acked`) and ``StreamSink/ack(_:)`` (returns with its reply: `confirmed`).
    private func hops(_ client: RedisClient, space: RedisKeySpace)
        async throws -> (raw: [Double], acked: [Double], confirmed: [Double], delivered: [Double])
    {
        let rawKey = space.key("stream", "raw-hop-\(UUID().uuidString)")
        try await client.send("XGROUP", "CREATE", rawKey, "g", "$", "MKSTREAM")
        let stream = try RedisStream(name: "sink-hop-\(UUID().uuidString)", keySpace: space, client: client)
        let count = hops
        enum Side: Sendable { case raw([Double]), sink([Double], [Double], [Double]) }
        let (rawDone, rawSignal) = AsyncStream.makeStream(of: Void.self)
        let (sinkDone, sinkSignal) = AsyncStream.makeStream(of: Void.self)
        let sides = try await StreamSink.withSink(name: "bench", streams: [stream], options: .init(start: .newest)) { sink in
            try await withThrowingTaskGroup(of: Side.self) { group in
                group.addTask {
                    try await client.withDedicatedConnection { connection in
                        var results: [Double] = []
                        results.reserveCapacity(count)
                        let read = RedisCommand("XREADGROUP", "GROUP", "g", "c", "COUNT", 1, "NOACK", "BLOCK", 0, "STREAMS", rawKey, ">")
                        rawSignal.yield()
                        while results.count < count {
                            let reply = try await connection.send(read, timeout: .seconds(30))
                            let received = monotonicNanoseconds()
                            guard let fields = reply.array?.first?.array?.last?.array?.first?.array?.last?.array,
                                let sent = fields.last?.string.flatMap(UInt64.init)
                            else { throw RedisError(.protocolError, "unexpected XREADGROUP reply \(reply)") }
                            results.append(Double(received &- sent) / 1000)
                            rawSignal.yield()
                        }
                        rawSignal.finish()
                        return .raw(results)
                    }
                }
                group.addTask {
                    var acked: [Double] = [], confirmed: [Double] = [], delivered: [Double] = []
                    var index = 0
                    for try await event in sink.events {
                        let received = monotonicNanoseconds()
                        let confirm = index % 2 == 1
                        index += 1
                        if confirm { try await sink.ack(event) } else { try sink.acknowledge(event) }
                        let done = monotonicNanoseconds()
                        guard let sent = UInt64(String(decoding: event.payload, as: UTF8.self)) else {
                            throw RedisError(.protocolError, "unexpected payload")
                        }
                        if confirm { confirmed.append(Double(done &- sent) / 1000) } else { acked.append(Double(done &- sent) / 1000) }
                        delivered.append(Double(received &- sent) / 1000)
                        sinkSignal.yield()
                        if index == count { break }
                    }
                    sinkSignal.finish()
                    return .sink(acked, confirmed, delivered)
                }
                var rawTurns = rawDone.makeAsyncIterator()
                var sinkTurns = sinkDone.makeAsyncIterator()
                guard await rawTurns.next() != nil else { throw ValidationError("the reference consumer stopped") }
                for index in 0..<count {
                    if index > 0 { guard await rawTurns.next() != nil else { break } }
                    // Let the consumer's next XREADGROUP reach the server and block there.
                    try await Task.sleep(for: .microseconds(500))
                    try await client.send("XADD", rawKey, "*", "t", String(monotonicNanoseconds()))
                    if index > 0 { guard await sinkTurns.next() != nil else { break } }
                    try await Task.sleep(for: .microseconds(500))
                    try await stream.add(name: "t", payload: Array(String(monotonicNanoseconds()).utf8))
                }
                var raw: [Double] = [], acked: [Double] = [], confirmed: [Double] = [], delivered: [Double] = []
                for try await side in group {
                    switch side {
                    case .raw(let values): raw = values
                    case .sink(let a, let c, let d): (acked, confirmed, delivered) = (a, c, d)
                    }
                }
                return (raw.sorted(), acked.sorted(), confirmed.sorted(), delivered.sorted())
            }
        }
        try await stream.destroy()
        try await client.send("DEL", rawKey)
        return sides
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
