import Foundation
import RotaRedis
import RotaRedisServer
import RotaStreams
import Testing

private func fast(_ start: StreamStart = .oldest) -> StreamReader.Options {
    StreamReader.Options(blockDuration: .milliseconds(100), start: start)
}

@Suite struct ReaderTests {
    // S-080
    @Test func creationAndInvalidPattern() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            _ = try StreamReader(stream: stream)
            let error = #expect(throws: RedisError.self) { try StreamReader(stream: stream, options: .init(topicPattern: "(")) }
            #expect(error?.code == .invalidArgument)
            #expect(error?.message.hasPrefix("topic pattern must be a valid regex: ") == true)
        }
    }

    // S-088
    @Test func readerOptionDefaults() {
        let defaults = StreamReader.Options()
        #expect(defaults.blockDuration == .seconds(5))
        #expect(defaults.maxPolled == 1000)
        #expect(defaults.bufferSize == 1000)
        #expect(defaults.start == .newest)
        #expect(defaults.topic == nil && defaults.topicPattern == nil)
        let block = StreamReader.Options(blockDuration: .seconds(1))
        #expect(block.blockDuration == .seconds(1) && block.maxPolled == 1000 && block.start == .newest)
        #expect(StreamReader.Options(maxPolled: 5).maxPolled == 5)
        #expect(StreamReader.Options(bufferSize: 5).bufferSize == 5)
        #expect(StreamReader.Options(start: .after("1-1")).start == .after("1-1"))
        #expect(StreamReader.Options(topic: "t").topic == "t")
        #expect(StreamReader.Options(topicPattern: "t+").topicPattern == "t+")
    }

    // S-081
    @Test func readsOneEvent() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            try await StreamReader.withReader(streams: [stream], options: fast()) { reader in
                try await stream.add(name: "event", payload: "payload".bytes, topic: "t")
                let event = try await expectEvent(reader.events, within: .seconds(1))
                #expect(event.name == "event" && event.text == "payload" && event.topic == "t")
                #expect(event.sink == nil && event.stream == "s")
            }
        }
    }

    // S-082
    @Test func startPositions() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            var firstID = ""
            try await StreamReader.withReader(streams: [stream], options: fast()) { reader in
                firstID = try #require(try await stream.add(name: "event", payload: "payload".bytes))
                try await stream.add(name: "event", payload: "payload2".bytes)
                #expect(try await expectEvent(reader.events).text == "payload")
                #expect(try await expectEvent(reader.events).text == "payload2")
            }
            try await StreamReader.withReader(streams: [stream], options: fast(.after(firstID))) { reader throws in
                #expect(try await expectEvent(reader.events).text == "payload2")
            }
            try await StreamReader.withReader(streams: [stream], options: fast(.after("0"))) { reader throws in
                #expect(try await expectEvent(reader.events).text == "payload")
                #expect(try await expectEvent(reader.events).text == "payload2")
            }
        }
    }

    @Test func everyReaderSeesEveryEvent() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            try await StreamReader.withReader(streams: [stream], options: fast(.newest)) { r1 in
                try await StreamReader.withReader(streams: [stream], options: fast(.newest)) { r2 in
                    for i in 0..<5 { try await stream.add(name: "e\(i)") }
                    for reader in [r1, r2] {
                        for i in 0..<5 { #expect(try await expectEvent(reader.events).name == "e\(i)") }
                    }
                }
            }
        }
    }

    /// §13.22: with a `.newest` start the position is concrete from the start, so events appended
    /// while the reader is busy between two reads are not skipped.
    @Test func newestStartMissesNothingBetweenReads() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            try await stream.add(name: "old")
            var options = fast(.newest)
            options.bufferSize = 1
            options.maxPolled = 1
            try await StreamReader.withReader(streams: [stream], options: options) { reader in
                // The reader fills its one-slot buffer and waits; everything added meanwhile must follow.
                for i in 0..<10 { try await stream.add(name: "e\(i)") }
                try await Task.sleep(for: .milliseconds(100))
                for i in 0..<10 { #expect(try await expectEvent(reader.events).name == "e\(i)") }
                #expect(try await nextEvent(reader.events, within: .milliseconds(150)) == nil)
            }
        }
    }

    // S-083
    @Test func stoppingKeepsTheStream() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            let started = ContinuousClock.now
            var options = StreamReader.Options(start: .oldest)
            options.blockDuration = .seconds(60)  // stopping must not wait this out
            try await StreamReader.withReader(streams: [stream], options: options) { reader in
                try await stream.add(name: "event")
                _ = try await expectEvent(reader.events)
            }
            #expect(ContinuousClock.now - started < .seconds(20))
            #expect(try await env.exists(stream.key))
            try await stream.destroy()
            #expect(try await env.exists(stream.key) == false)
        }
    }

    // S-084
    @Test func twoStreamsAndIdempotentAddStream() async throws {
        try await withEnv { env in
            let s1 = try env.stream("s1")
            let s2 = try env.stream("s2")
            try await StreamReader.withReader(streams: [s1], options: fast()) { reader in
                try await reader.addStream(s2)
                try await reader.addStream(s2)
                #expect(reader.streams == ["s1", "s2"])
                try await s1.add(name: "event", payload: "payload".bytes)
                try await s2.add(name: "event", payload: "payload2".bytes)
                #expect(try await expectEvent(reader.events).text == "payload")
                #expect(try await expectEvent(reader.events).text == "payload2")
            }
        }
    }

    @Test func addStreamInterruptsABlockedRead() async throws {
        try await withEnv { env in
            let s1 = try env.stream("s1")
            let s2 = try env.stream("s2")
            try await StreamReader.withReader(streams: [s1], options: .init(start: .oldest)) { reader in
                try await eventually("the first read blocks") {
                    (try await env.client.send("INFO", "clients").string ?? "").contains("blocked_clients:1")
                }
                let started = ContinuousClock.now
                try await reader.addStream(s2, start: .oldest)
                try await s2.add(name: "late")
                #expect(try await expectEvent(reader.events, within: .seconds(3)).name == "late")
                #expect(ContinuousClock.now - started < .seconds(2))
            }
        }
    }

    // S-085
    @Test func removeStream() async throws {
        try await withEnv { env in
            let s1 = try env.stream("s1")
            let s2 = try env.stream("s2")
            try await StreamReader.withReader(streams: [s1, s2], options: fast()) { reader in
                try await s1.add(name: "one")
                try await s2.add(name: "two")
                let got = Set([try await expectEvent(reader.events).name, try await expectEvent(reader.events).name])
                #expect(got == ["one", "two"])
                reader.removeStream(s2)
                try await s2.add(name: "ignored")
                try await s1.add(name: "event3")
                #expect(try await expectEvent(reader.events).name == "event3")
                #expect(try await nextEvent(reader.events, within: .milliseconds(200)) == nil)
            }
        }
    }

    @Test func topicFilters() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            var exact = fast()
            exact.topic = "orders"
            var pattern = fast()
            pattern.topicPattern = "^bill"
            try await StreamReader.withReader(streams: [stream], options: exact) { byTopic in
                try await StreamReader.withReader(streams: [stream], options: pattern) { byPattern in
                    try await stream.add(name: "a", topic: "orders")
                    try await stream.add(name: "b", topic: "billing")
                    try await stream.add(name: "c")
                    try await stream.add(name: "d", topic: "orders")
                    #expect(try await expectEvent(byTopic.events).name == "a")
                    #expect(try await expectEvent(byTopic.events).name == "d")
                    #expect(try await expectEvent(byPattern.events).name == "b")
                    #expect(try await nextEvent(byPattern.events, within: .milliseconds(150)) == nil)
                }
            }
        }
    }

    @Test func survivesAServerRestart() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            try await StreamReader.withReader(streams: [stream], options: fast(.newest)) { reader in
                try await stream.add(name: "before")
                #expect(try await expectEvent(reader.events).name == "before")
                try await env.server.restart()
                try await eventually("the client is back", timeout: .seconds(10)) {
                    try await env.client.send("PING") == .simpleString("PONG")
                }
                // A command caught on a connection that has not yet noticed the restart fails with
                // .connectionClosed (it may or may not have run): retry, as a caller would.
                try await eventually("the stream accepts writes again") { (try? await stream.add(name: "after")) != nil }
                let event = try await expectEvent(reader.events, within: .seconds(10), "the event added after the restart")
                #expect(event.name == "after")
            }
        }
    }

    @Test func stopsPromptlyWhenCancelledAndEndsItsEvents() async throws {
        try await withEnv { env in
            let stream = try env.stream("s")
            let reader = try StreamReader(stream: stream)
            let stopper = Stopper()
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await stopper.run { try await reader.run() } }
                try await reader.ready()
                try await Task.sleep(for: .milliseconds(50))
                let started = ContinuousClock.now
                stopper.stop()
                try await group.waitForAll()
                #expect(ContinuousClock.now - started < .seconds(1))
            }
            var iterator = reader.events.makeAsyncIterator()
            #expect(try await iterator.next() == nil)
        }
    }
}
