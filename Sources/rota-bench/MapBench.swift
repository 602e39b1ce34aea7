import ArgumentParser
import Foundation
import RotaMap
import RotaRedis
import RotaRedisServer

struct MapBench: ParsableCommand, AsyncBody {
    static let configuration = CommandConfiguration(
        commandName: "map",
        abstract: "Replicated map propagation and write throughput, beside raw Redis pub/sub and HSET."
    )

    @OptionGroup var common: BenchOptions

    @Option(help: "Propagation samples per round.")
    var samples = 2_000

    @Option(help: "Writes per round (spread over 16 writers).")
    var writes = 32_000

    func run() throws {}

    func body(nioExecutor: Bool) async throws {
        try await common.withServer { configuration in try await measure(configuration) }
    }

    private func measure(_ configuration: RedisConfiguration) async throws {
        let space = try RedisKeySpace("bench-\(UUID().uuidString.prefix(8))")
        // Writer and observer replicas use separate clients, as two processes would.
        try await RedisClient.withClient(configuration) { writerClient in
            try await RedisClient.withClient(configuration) { observerClient in
                // The writer is a plain handle on the map (it writes, it does not replicate), so the only
                // replica doing apply work is the observer: write → Redis → replica, like the raw
                // PUBLISH → subscriber reference.
                let writer = try ReplicatedMap("bench", keySpace: space, client: writerClient)
                do {
                    try await ReplicatedMap.withMap("bench", keySpace: space, client: observerClient) { observer in
                        var p50: [Double] = [], p99: [Double] = [], refP50: [Double] = [], refP99: [Double] = []
                        var rate: [Double] = [], refRate: [Double] = []
                        for round in 1...max(1, common.rounds) {
                            if !common.json { print("round \(round)/\(common.rounds)…") }
                            let (map, raw) = try await propagation(writer: writer, observer: observer,
                                publisher: writerClient, subscriber: observerClient, space: space)
                            p50.append(percentile(map, 50))
                            p99.append(percentile(map, 99))
                            refP50.append(percentile(raw, 50))
                            refP99.append(percentile(raw, 99))
                            rate.append(try await writeRate { i in try await writer.set("w\(i % 1000)", "value-\(i)") })
                            refRate.append(try await writeRate { i in
                                try await writerClient.send("HSET", space.key("bench", "raw"), "w\(i % 1000)", "value-\(i)")
                            })
                        }
                        // Latencies here: ratio = value / reference (≤ 1.5 is the target; lower is better).
                        func latency(_ metric: String, _ values: [Double], _ references: [Double]) -> Measurement {
                            let value = median(values), reference = median(references)
                            return Measurement(suite: "map", metric: metric, value: value, unit: "us", reference: reference, ratio: value / reference)
                        }
                        let rows = [
                            latency("map_propagation_p50", p50, refP50),
                            latency("map_propagation_p99", p99, refP99),
                            Measurement(suite: "map", metric: "map_writes_per_s", value: median(rate), unit: "ops/s",
                                reference: median(refRate), ratio: median(rate) / median(refRate)),
                        ]
                        if common.json {
                            for row in rows { print(row.json) }
                        } else {
                            printTable(rows)
                            print("(latency ratios here are value / reference: lower is better; reference = raw PUBLISH → subscriber, raw HSET)")
                        }
                        try await writer.destroy()
                        _ = try await writerClient.send("DEL", writer.contentKey, space.key("bench", "raw"))
                    }
                }
            }
        }
    }

    /// Propagation samples, each map sample followed by a reference sample, so that both see the
    /// same machine (a 2-core VM drifts by tens of µs between phases a few seconds apart).
    ///
    /// Map: from the start of a write on one replica until the other replica's local copy shows it.
    /// Reference: from the start of a bare PUBLISH until a subscriber on the observer's client has it.
    private func propagation(
        writer: ReplicatedMap, observer: ReplicatedMap, publisher: RedisClient, subscriber: RedisClient, space: RedisKeySpace
    ) async throws -> (map: [Double], reference: [Double]) {
        let changes = observer.changes()
        var changeIterator = changes.makeAsyncIterator()
        let channel = space.key("bench", "raw-channel")
        return try await subscriber.withSubscription(channels: [channel]) { subscription in
            var messages = subscription.makeAsyncIterator()
            var map: [Double] = [], reference: [Double] = []
            map.reserveCapacity(samples)
            reference.reserveCapacity(samples)
            let clock = ContinuousClock()
            for i in 0..<samples {
                let expected = "v\(i)"
                var start = clock.now
                async let written = writer.set("probe", expected)
                while observer.string("probe") != expected {
                    guard await changeIterator.next() != nil else { throw ValidationError("observer closed") }
                }
                map.append(microseconds(clock.now - start))
                _ = try await written

                let payload = Array(expected.utf8)
                start = clock.now
                async let published = publisher.send("PUBLISH", channel, payload)
                while true {
                    guard let event = try await messages.next() else { throw ValidationError("subscription ended") }
                    if case .message(_, let received) = event, received == payload { break }
                }
                reference.append(microseconds(clock.now - start))
                _ = try await published
            }
            return (map.sorted(), reference.sorted())
        }
    }

    /// Writes per second from 16 concurrent writers.
    private func writeRate(_ write: @escaping @Sendable (Int) async throws -> Void) async throws -> Double {
        let writers = 16
        let perWriter = max(1, writes / writers)
        let clock = ContinuousClock()
        let start = clock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for w in 0..<writers {
                group.addTask {
                    for i in 0..<perWriter { try await write(w * perWriter + i) }
                }
            }
            try await group.waitForAll()
        }
        return Double(perWriter * writers) / seconds(clock.now - start)
    }
}
