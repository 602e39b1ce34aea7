import Foundation
import Logging
import RotaRedis
import RotaRedisServer
import RotaStreams
import Synchronization
import Testing

/// Short timings: block 100 ms. The grace period is long unless a test is about redelivery (then
/// 50 ms, as the reference's tests use), so slow CI machines do not see spurious redeliveries.
private func fast(_ start: StreamStart = .oldest, grace: Duration = .seconds(5)) -> StreamSink.Options {
    StreamSink.Options(blockDuration: .milliseconds(100), start: start, ackGracePeriod: grace)
}

@Suite struct SinkTests {
    // S-070
    @Test func creationAndInvalidPattern() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            _ = try StreamSink(name: "sink", stream: stream)
            let error = #expect(throws: RedisError.self) {
                try StreamSink(name: "sink", stream: stream, options: .init(topicPattern: "("))
            }
            #expect(error?.code == .invalidArgument)
            #expect(error?.message.hasPrefix("topic pattern must be a valid regex: ") == true)
        }
    }

    // S-089
    @Test func sinkOptionDefaults() {
        let defaults = StreamSink.Options()
        #expect(defaults.blockDuration == .seconds(5))
        #expect(defaults.maxPolled == 1000)
        #expect(defaults.bufferSize == 1000)
        #expect(defaults.start == .newest)
        #expect(defaults.topic == nil && defaults.topicPattern == nil)
        #expect(defaults.noAck == false)
        #expect(defaults.ackGracePeriod == .seconds(20))
        #expect(defaults.idleCheckPeriod == .milliseconds(500))
        #expect(StreamSink.Options(ackGracePeriod: .milliseconds(50)).idleCheckPeriod == .milliseconds(50))
        let set = StreamSink.Options(blockDuration: .seconds(1))
        #expect(set.blockDuration == .seconds(1) && set.maxPolled == 1000 && set.start == .newest)
        #expect(StreamSink.Options(maxPolled: 7).maxPolled == 7)
        #expect(StreamSink.Options(bufferSize: 3).bufferSize == 3)
        #expect(StreamSink.Options(topic: "t").topic == "t")
        #expect(StreamSink.Options(topicPattern: "^t").topicPattern == "^t")
        #expect(StreamSink.Options(start: .after("5-0")).start == .after("5-0"))
        #expect(StreamSink.Options(noAck: true).noAck)
        #expect(StreamSink.Options(ackGracePeriod: .seconds(3)).blockDuration == .seconds(5))
    }

    // S-090 (start positions as Redis IDs; `at` is inclusive of its millisecond)
    @Test func startPositionIDs() throws {
        let client = RedisClient(configuration: RedisConfiguration(endpoint: .tcp(host: "127.0.0.1", port: 1)))
        let stream = try RedisStream(name: "s", keySpace: try RedisKeySpace("p"), client: client)
        // Accepted forms; invalid IDs are rejected at creation.
        _ = try StreamSink(name: "g", stream: stream, options: .init(start: .after("0")))
        _ = try StreamSink(name: "g", stream: stream, options: .init(start: .after("1700000000000-3")))
        _ = try StreamSink(name: "g", stream: stream, options: .init(start: .at(Date(timeIntervalSince1970: 1_700_000_000))))
        #expect(throws: RedisError.self) { try StreamSink(name: "g", stream: stream, options: .init(start: .after("1-x"))) }
    }

    // S-071
    @Test func readsOneEvent() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            try await StreamSink.withSink(name: "sink", streams: [stream], options: fast()) { sink in
                try await stream.add(name: "event", payload: "payload".bytes)
                let event = try await expectEvent(sink.events, within: .seconds(1))
                #expect(event.name == "event" && event.text == "payload")
                #expect(event.sink == "sink" && event.stream == "s" && event.topic == nil)
                #expect(try await sink.ack(event))
                #expect(try await env.pendingCount(stream, group: "sink") == 0)
            }
        }
    }

    @Test func newestStartDeliversEventsAddedOnceReady() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            try await stream.add(name: "old")
            try await StreamSink.withSink(name: "sink", streams: [stream], options: fast(.newest)) { sink in
                try await stream.add(name: "new")
                #expect(try await expectEvent(sink.events).name == "new")
            }
        }
    }

    // S-072
    @Test func startPositions() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            var firstID = ""
            try await StreamSink.withSink(name: "sink", streams: [stream], options: fast()) { sink in
                firstID = try #require(try await stream.add(name: "event", payload: "payload".bytes))
                try await stream.add(name: "event", payload: "payload2".bytes)
                for expected in ["payload", "payload2"] {
                    let event = try await expectEvent(sink.events)
                    #expect(event.text == expected)
                    try await sink.ack(event)
                }
            }
            try await StreamSink.withSink(name: "sink2", streams: [stream], options: fast(.after(firstID))) { sink throws in
                let event = try await expectEvent(sink.events)
                #expect(event.text == "payload2")
                try await sink.ack(event)
                #expect(try await nextEvent(sink.events, within: .milliseconds(200)) == nil)
            }
            try await StreamSink.withSink(name: "sink3", streams: [stream], options: fast(.after("0"))) { sink throws in
                #expect(try await expectEvent(sink.events).text == "payload")
                #expect(try await expectEvent(sink.events).text == "payload2")
            }
            let atFirst = try #require(firstID.split(separator: "-").first.flatMap { Double($0) })
            try await StreamSink.withSink(
                name: "sink4", streams: [stream], options: fast(.at(Date(timeIntervalSince1970: atFirst / 1000)))
            ) { sink throws in
                #expect(try await expectEvent(sink.events).text == "payload")
            }
        }
    }

    // S-073
    @Test func stoppingKeepsTheStream() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            let started = ContinuousClock.now
            var options = StreamSink.Options(start: .oldest)
            options.blockDuration = .seconds(60)
            try await StreamSink.withSink(name: "sink", streams: [stream], options: options) { sink in
                try await stream.add(name: "event", payload: "payload".bytes)
                let event = try await expectEvent(sink.events)
                try await sink.ack(event)
            }
            // A 60 s block does not delay stopping: cancellation ends the read at once.
            #expect(ContinuousClock.now - started < .seconds(20))
            #expect(try await env.exists(stream.key))
            try await stream.destroy()
            try await eventually("the stream is gone") { try await !env.exists(stream.key) }
        }
    }

    // S-074
    @Test func twoStreamsAndIdempotentAddStream() async throws {
        try await withEnv { env in
            let s1 = try env.stream("s1")
            let s2 = try env.stream("s2")
            try await StreamSink.withSink(name: "sink", streams: [s1], options: fast()) { sink in
                try await sink.addStream(s2)
                try await sink.addStream(s2)
                #expect(sink.streams == ["s1", "s2"])
                try await s1.add(name: "event", payload: "payload".bytes)
                try await s2.add(name: "event", payload: "payload2".bytes)
                let first = try await expectEvent(sink.events)
                let second = try await expectEvent(sink.events)
                #expect([first.text, second.text] == ["payload", "payload2"])
                #expect([first.stream, second.stream] == ["s1", "s2"])
                try await sink.ack(first)
                try await sink.ack(second)
            }
        }
    }

    /// An added stream is read at once, although the running read blocks for 5 s.
    @Test func addStreamInterruptsABlockedRead() async throws {
        try await withEnv { env in
            let s1 = try env.stream("s1")
            let s2 = try env.stream("s2")
            try await StreamSink.withSink(name: "sink", streams: [s1], options: .init(start: .oldest)) { sink in
                try await eventually("the first read blocks") {
                    (try await env.client.send("INFO", "clients").string ?? "").contains("blocked_clients:1")
                }
                let started = ContinuousClock.now
                try await sink.addStream(s2)
                try await s2.add(name: "e", payload: "late".bytes)
                #expect(try await expectEvent(sink.events, within: .seconds(3)).text == "late")
                #expect(ContinuousClock.now - started < .seconds(2))
            }
        }
    }

    // S-075
    @Test func removeStreamAndAddItBack() async throws {
        try await withEnv { env in
            let s1 = try env.stream("s1")
            let s2 = try env.stream("s2")
            try await StreamSink.withSink(name: "sink", streams: [s1, s2], options: fast()) { sink in
                try await s1.add(name: "event", payload: "one".bytes)
                try await s2.add(name: "event", payload: "two".bytes)
                var got: Set<String> = []
                for _ in 0..<2 {
                    let event = try await expectEvent(sink.events)
                    got.insert(event.text)
                    try await sink.ack(event)
                }
                #expect(got == ["one", "two"])

                try await sink.removeStream(s2)
                // The last consumer left: the group is gone, and so is the registry entry.
                #expect(try await env.client.send("XINFO", "GROUPS", s2.key).array?.isEmpty == true)
                #expect(try await env.client.send("HEXISTS", s2.sinksKey, "sink").int == 0)
                let third = try #require(try await s1.add(name: "event3", payload: "three".bytes))
                let event3 = try await expectEvent(sink.events)
                #expect(event3.name == "event3")
                try await sink.ack(event3)

                try await sink.addStream(s2, start: .after(third))
                try await sink.removeStream(s1)
                try await s2.add(name: "event4", payload: "four".bytes)
                let event4 = try await expectEvent(sink.events)
                #expect(event4.name == "event4" && event4.stream == "s2")
                try await sink.ack(event4)
            }
        }
    }

    // S-076
    @Test func oneDeliveryPerEventAcrossInstances() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            let a = Collector(), b = Collector()
            try await StreamSink.withSink(name: "sink", streams: [stream], options: fast(grace: .milliseconds(50))) { sinkA in
                try await StreamSink.withSink(name: "sink", streams: [stream], options: fast(grace: .milliseconds(50))) { sinkB in
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask { try await a.collect(sinkA, ack: true) }
                        group.addTask { try await b.collect(sinkB, ack: true) }
                        try await stream.add(name: "event", payload: "once".bytes)
                        try await eventually("one instance receives the event", timeout: .seconds(2)) { a.events.count + b.events.count >= 1 }
                        try await Task.sleep(for: .milliseconds(150))  // 3 grace periods: any redelivery would show
                        #expect(a.events.count + b.events.count == 1)
                        group.cancelAll()
                    }
                }
            }
        }
    }

    @Test func manyEventsAreSplitAcrossInstancesExactlyOnceWhenAcked() async throws {
        try await withEnv { env in
            let stream = try env.stream("s", .init(maxLength: 0))
            let options = StreamSink.Options(blockDuration: .milliseconds(100), maxPolled: 10, start: .oldest, ackGracePeriod: .seconds(5))
            let a = Collector(), b = Collector()
            try await StreamSink.withSink(name: "sink", streams: [stream], options: options) { sinkA in
                try await StreamSink.withSink(name: "sink", streams: [stream], options: options) { sinkB in
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask { try await a.collect(sinkA, ack: true) }
                        group.addTask { try await b.collect(sinkB, ack: true) }
                        for i in 0..<200 { try await stream.add(name: "e", payload: "\(i)".bytes) }
                        try await eventually("all events are received") { a.events.count + b.events.count >= 200 }
                        let all = a.payloads + b.payloads
                        #expect(Set(all).count == 200 && all.count == 200)
                        group.cancelAll()
                    }
                }
            }
        }
    }

    // S-077
    @Test func unackedEventIsRedelivered() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            try await StreamSink.withSink(name: "sink", streams: [stream], options: fast(grace: .milliseconds(50))) { sink in
                let id = try await stream.add(name: "event", payload: "p".bytes)
                let first = try await expectEvent(sink.events, within: .seconds(1))
                #expect(first.id == id)
                let again = try await expectEvent(sink.events, within: .seconds(2), "the redelivery")
                #expect(again.id == id)
                try await sink.ack(again)
                // Drain a redelivery that may have been claimed just before the ack.
                while let extra = try await nextEvent(sink.events, within: .milliseconds(150)) {
                    #expect(extra.id == id)
                }
                #expect(try await env.pendingCount(stream, group: "sink") == 0)
            }
        }
    }

    // S-078
    @Test func unackedEventMovesToAnotherInstanceWhenTheReceiverStops() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            let sinkA = try StreamSink(name: "sink", stream: stream, options: fast(grace: .milliseconds(50)))
            let sinkB = try StreamSink(name: "sink", stream: stream, options: fast(grace: .milliseconds(50)))
            let stopA = Stopper(), stopB = Stopper()
            let a = Collector(), b = Collector()
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await stopA.run { try await sinkA.run() } }
                group.addTask { try await stopB.run { try await sinkB.run() } }
                try await sinkA.ready()
                try await sinkB.ready()
                group.addTask { try await a.collect(sinkA, ack: false) }
                group.addTask { try await b.collect(sinkB, ack: false) }
                let id = try await stream.add(name: "event", payload: "p".bytes)
                try await eventually("someone receives it", timeout: .seconds(2)) { !a.events.isEmpty || !b.events.isEmpty }
                let (receiver, other, otherSink, stopReceiver) = a.events.isEmpty ? (b, a, sinkA, stopB) : (a, b, sinkB, stopA)
                #expect(receiver.events.first?.id == id)
                let before = other.events.count
                stopReceiver.stop()
                try await eventually("the other instance receives it", timeout: .seconds(2)) { other.events.count > before }
                let moved = try #require(other.events.last)
                #expect(moved.id == id)
                #expect(try await otherSink.ack(moved))
                stopA.stop()
                stopB.stop()
                try await group.waitForAll()
            }
        }
    }

    // S-079
    @Test func staleConsumerIsDeletedAfterItsEventsAreClaimed() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            let sink1 = try StreamSink(name: "sink", stream: stream, options: fast(grace: .milliseconds(50)))
            let sink2 = try StreamSink(name: "sink", stream: stream, options: fast(grace: .milliseconds(50)))
            let stop1 = Stopper(), stop2 = Stopper()
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await stop1.run { try await sink1.run() } }
                try await sink1.ready()
                let id = try await stream.add(name: "event", payload: "p".bytes)
                let received = try await expectEvent(sink1.events)
                #expect(received.id == id)

                group.addTask { try await stop2.run { try await sink2.run() } }
                try await sink2.ready()
                try await eventually("two consumers", timeout: .seconds(1)) { try await env.consumers(stream, group: "sink").count == 2 }

                stop1.stop()
                try await eventually("one consumer left", timeout: .seconds(2)) {
                    try await env.consumers(stream, group: "sink") == [sink2.consumer]
                }
                #expect(try await env.client.send("HEXISTS", env.space.key("sink", "sink", "keepalive"), sink1.consumer).int == 0)
                let registry = try await env.client.send("HGET", stream.sinksKey, "sink").string ?? ""
                #expect(!registry.contains(sink1.consumer) && registry.contains(sink2.consumer))

                let claimed = try await expectEvent(sink2.events, within: .seconds(1))
                #expect(claimed.id == id)
                try await sink2.ack(claimed)
                stop2.stop()
                try await group.waitForAll()
            }
        }
    }

    /// §13.8: a new instance claims a long-dead consumer's pending events before deleting it, even
    /// when the events are younger than the grace period (so no idle claim would take them).
    @Test func newInstanceClaimsAStaleConsumersEventsBeforeDeletingIt() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            let keepAlive = env.space.key("sink", "sink", "keepalive")
            try await env.client.send("XGROUP", "CREATE", stream.key, "sink", "0", "MKSTREAM")
            let id = try #require(try await stream.add(name: "orphan", payload: "p".bytes))
            try await env.client.send("XREADGROUP", "GROUP", "sink", "ghost", "COUNT", 10, "STREAMS", stream.key, ">")
            let longAgo = Int64((Date().timeIntervalSince1970 - 3600) * 1e9)
            try await env.client.send("HSET", keepAlive, "ghost", longAgo)
            try await env.client.send("HSET", stream.sinksKey, "sink", "[\"ghost\"]")
            #expect(try await env.pendingCount(stream, group: "sink") == 1)

            let options = StreamSink.Options(blockDuration: .milliseconds(100), start: .oldest, ackGracePeriod: .seconds(30))
            try await StreamSink.withSink(name: "sink", streams: [stream], options: options) { sink in
                let event = try await expectEvent(sink.events, within: .seconds(2), "the ghost's event")
                #expect(event.id == id && event.name == "orphan")
                #expect(try await env.consumers(stream, group: "sink") == [sink.consumer])
                #expect(try await env.client.send("HEXISTS", keepAlive, "ghost").int == 0)
                #expect(try await env.client.send("HGET", stream.sinksKey, "sink").string == "[\"\(sink.consumer)\"]")
                #expect(try await sink.ack(event))
            }
        }
    }

    /// A consumer with a fresh keep-alive is never deleted, however idle.
    @Test func liveConsumersAreNotSwept() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            try await StreamSink.withSink(name: "sink", streams: [stream], options: fast(grace: .milliseconds(200))) { a in
                try await StreamSink.withSink(name: "sink", streams: [stream], options: fast(grace: .milliseconds(200))) { b in
                    try await Task.sleep(for: .seconds(1))  // 5 grace periods of silence on the stream
                    #expect(Set(try await env.consumers(stream, group: "sink")) == [a.consumer, b.consumer])
                }
            }
        }
    }

    // §13.20: filtered-out events are acknowledged, not re-claimed forever.
    @Test func filteredOutEventsAreAcknowledged() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            var options = fast()
            options.topic = "wanted"
            try await StreamSink.withSink(name: "sink", streams: [stream], options: options) { sink in
                try await stream.add(name: "skip", topic: "other")
                try await stream.add(name: "skip-untopical")
                try await stream.add(name: "take", topic: "wanted")
                let event = try await expectEvent(sink.events)
                #expect(event.name == "take" && event.topic == "wanted")
                try await sink.ack(event)
                try await eventually("nothing is pending") { try await env.pendingCount(stream, group: "sink") == 0 }
                #expect(try await nextEvent(sink.events, within: .milliseconds(200)) == nil)
            }
        }
    }

    @Test func topicPatternFilter() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            var options = fast()
            options.topicPattern = "^ord(er)?s$"
            try await StreamSink.withSink(name: "sink", streams: [stream], options: options) { sink in
                try await stream.add(name: "a", topic: "billing")
                try await stream.add(name: "b", topic: "orders")
                try await stream.add(name: "c", topic: "ords")
                #expect(try await expectEvent(sink.events).name == "b")
                #expect(try await expectEvent(sink.events).name == "c")
            }
        }
    }

    @Test func noAckSinkLeavesNothingPending() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            var options = fast()
            options.noAck = true
            try await StreamSink.withSink(name: "sink", streams: [stream], options: options) { sink in
                try await stream.add(name: "a")
                let event = try await expectEvent(sink.events)
                #expect(try await sink.ack(event))
                #expect(try await env.pendingCount(stream, group: "sink") == 0)
                #expect(try await nextEvent(sink.events, within: .milliseconds(200)) == nil)
            }
        }
    }

    @Test func ackRejectsEventsOfOtherSinks() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            let sink = try StreamSink(name: "sink", stream: stream)
            let foreign = StreamEvent(id: "1-0", stream: "s", sink: "other", name: "x", topic: nil, payload: [])
            let error = await caught { try await sink.ack(foreign) }
            #expect((error as? RedisError)?.code == .invalidArgument)
        }
    }

    @Test func acknowledgeReturnsAtOnceAndTheEventIsNotDeliveredAgain() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            try await StreamSink.withSink(name: "sink", streams: [stream], options: fast(grace: .milliseconds(300))) { sink in
                for i in 0..<3 { try await stream.add(name: "e", payload: "\(i)".bytes) }
                var payloads: [String] = []
                for _ in 0..<3 {
                    let event = try await expectEvent(sink.events, within: .seconds(2))
                    try sink.acknowledge(event)
                    payloads.append(event.text)
                }
                #expect(payloads == ["0", "1", "2"])
                try await eventually("the acknowledgements land") { try await env.pendingCount(stream, group: "sink") == 0 }
                // Past two grace periods: an unacknowledged event would have come back by now.
                #expect(try await nextEvent(sink.events, within: .milliseconds(800)) == nil)
                let foreign = StreamEvent(id: "1-0", stream: "s", sink: "other", name: "x", topic: nil, payload: [])
                #expect((await caught { try sink.acknowledge(foreign) } as? RedisError)?.code == .invalidArgument)
            }
        }
    }

    /// An acknowledgement Redis refuses (here: an ACL user without XACK) is logged, and the event
    /// comes back after the grace period as if the consumer had died; the awaited `ack` throws instead.
    @Test func refusedAcknowledgeIsLoggedAndTheEventComesBack() async throws {
        var options = RedisServer.Options()
        options.extraConfig = ["user consumer on >secret ~* &* +@all -xack"]
        try await RedisServer.withServer(options: options) { server in
            var configuration = server.configuration
            configuration.username = "consumer"
            configuration.password = "secret"
            configuration.commandTimeout = .seconds(5)
            try await RedisClient.withClient(configuration) { client in
                let space = try RedisKeySpace("t\(UInt32.random(in: 0...UInt32.max))")
                let stream = try RedisStream(name: "s", keySpace: space, client: client)
                let warnings = WarningLog()
                let logger = Logger(label: "test") { _ in warnings }
                try await StreamSink.withSink(name: "sink", streams: [stream], options: fast(grace: .milliseconds(100)), logger: logger) { sink in
                    let id = try await stream.add(name: "e", payload: "p".bytes)
                    let event = try await expectEvent(sink.events, within: .seconds(2))
                    try sink.acknowledge(event)
                    try await eventually("the refusal is logged") { warnings.messages.contains { $0.contains("acknowledgement failed") } }
                    #expect(warnings.messages.contains { $0.contains("NOPERM") })
                    let again = try await expectEvent(sink.events, within: .seconds(3), "the redelivery")
                    #expect(again.id == id)
                    let error = await caught { try await sink.ack(again) }
                    #expect((error as? RedisError)?.code == .server)
                }
            }
        }
    }

    @Test func runTwiceFails() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            try await StreamSink.withSink(name: "sink", streams: [stream], options: fast()) { sink in
                let error = await caught { try await sink.run() }
                #expect((error as? RedisError)?.code == .invalidArgument)
            }
        }
    }

    /// §13.21: deleting the group under a running sink: it re-creates it (where it left off) and
    /// keeps delivering, without spinning on NOGROUP.
    @Test func recoversFromADeletedGroup() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            try await StreamSink.withSink(name: "sink", streams: [stream], options: fast()) { sink in
                try await stream.add(name: "before")
                try await sink.ack(try await expectEvent(sink.events))
                let callsBefore = try await commandCalls(env.client, "xreadgroup")
                try await env.client.send("XGROUP", "DESTROY", stream.key, "sink")
                try await stream.add(name: "after")
                let event = try await expectEvent(sink.events, "the event added after the group was deleted")
                #expect(event.name == "after")
                try await sink.ack(event)
                // A spinning loop would have issued thousands of reads by now.
                #expect(try await commandCalls(env.client, "xreadgroup") - callsBefore < 100)

                try await env.client.send("DEL", stream.key)
                try await eventually("the group is re-created") { try await env.exists(stream.key) }
                try await stream.add(name: "after-del")
                #expect(try await expectEvent(sink.events).name == "after-del")
            }
        }
    }

    @Test func survivesAServerRestart() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            try await StreamSink.withSink(name: "sink", streams: [stream], options: fast()) { sink in
                try await stream.add(name: "before")
                try await sink.ack(try await expectEvent(sink.events))
                try await env.server.restart()  // no persistence: stream, group and keep-alives are gone
                try await eventually("the client is back", timeout: .seconds(10)) {
                    try await env.client.send("PING") == .simpleString("PONG")
                }
                try await eventually("the sink re-created its group", timeout: .seconds(10)) {
                    try await env.exists(stream.key)
                }
                // A command caught on a connection that has not yet noticed the restart fails with
                // .connectionClosed (it may or may not have run): retry, as a caller would.
                try await eventually("the stream accepts writes again") { (try? await stream.add(name: "after")) != nil }
                let event = try await expectEvent(sink.events, within: .seconds(10), "the event added after the restart")
                #expect(event.name == "after")
                #expect(try await sink.ack(event))
                try await eventually("the keep-alive is back") {
                    try await env.client.send("HEXISTS", env.space.key("sink", "sink", "keepalive"), sink.consumer).int == 1
                }
            }
        }
    }

    /// Cut off for longer than twice the grace period (the server hangs), an instance continues as a
    /// new consumer, and hands the events its old consumer still held to the new one.
    @Test func renewsItsConsumerAfterLosingContact() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            try await StreamSink.withSink(name: "sink", streams: [stream], options: fast(grace: .milliseconds(100))) { sink in
                let id = try await stream.add(name: "held")
                #expect(try await expectEvent(sink.events).id == id)  // not acked: pending on the old consumer
                let old = sink.consumer
                env.server.pause(true)
                try await Task.sleep(for: .milliseconds(600))
                env.server.pause(false)
                try await eventually("a new consumer") { sink.consumer != old }
                try await eventually("the old consumer is retired") {
                    try await env.consumers(stream, group: "sink") == [sink.consumer]
                }
                #expect(try await env.client.send("HEXISTS", env.space.key("sink", "sink", "keepalive"), old).int == 0)
                var redelivered = try await expectEvent(sink.events, "the held event, again")
                while redelivered.id != id { redelivered = try await expectEvent(sink.events, "the held event, again") }
                try await sink.ack(redelivered)
                let next = try #require(try await stream.add(name: "next"))
                var event = try await expectEvent(sink.events)
                while event.id != next { event = try await expectEvent(sink.events) }
                try await sink.ack(event)
            }
        }
    }

    @Test func slowConsumerGetsEverythingInOrderThroughASmallBuffer() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            var options = fast()
            options.bufferSize = 2
            options.maxPolled = 3
            options.ackGracePeriod = .seconds(10)
            try await StreamSink.withSink(name: "sink", streams: [stream], options: options) { sink in
                for i in 0..<20 { try await stream.add(name: "e", payload: "\(i)".bytes) }
                var got: [String] = []
                for _ in 0..<20 {
                    let event = try await expectEvent(sink.events)
                    got.append(event.text)
                    try await sink.ack(event)
                    try await Task.sleep(for: .milliseconds(5))
                }
                #expect(got == (0..<20).map(String.init))
            }
        }
    }
}

/// How many times the server ran a command (INFO commandstats).
func commandCalls(_ client: RedisClient, _ command: String) async throws -> Int {
    let info = try await client.send("INFO", "commandstats").string ?? ""
    for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix("cmdstat_\(command):calls=") {
        let value = line.dropFirst("cmdstat_\(command):calls=".count).prefix { $0.isNumber }
        return Int(value) ?? 0
    }
    return 0
}

/// Warning lines, with their metadata, for tests that check what a component logged.
private final class WarningLog: LogHandler, Sendable {
    private let lines = Mutex<[String]>([])
    var messages: [String] { lines.withLock { $0 } }

    var metadata: Logger.Metadata {
        get { [:] }
        set {}
    }
    var logLevel: Logger.Level {
        get { .warning }
        set {}
    }
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { nil }
        set {}
    }

    func log(event: LogEvent) {
        guard event.level >= .warning else { return }
        let details = (event.metadata ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        lines.withLock { $0.append("\(event.message) \(details)") }
    }
}
