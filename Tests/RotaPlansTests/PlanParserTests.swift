import Foundation
import RotaPlans
import Testing

private func problems(_ yaml: String) -> [String] {
    do {
        _ = try PlanParser.parse(contents: yaml, path: "plan.yaml")
        return []
    } catch {
        return error.diagnostics.map(\.description)
    }
}

@Suite struct PlanParserTests {
    @Test func validPlanParses() throws {
        let plan = try PlanParser.parse(contents: """
            pool: demo
            producers:
              - name: pollers
                every: 10s
                mode: exact
                timezone: Europe/Paris
                jobs:
                  - key: poll/paris
                    handler: log
                    payload: {city: Paris, n: 3, ok: true, tags: [a, b], none: null, ratio: 0.5}
                    active: "* 8-19 * * MON-FRI"
                    from: 2026-12-01T00:00:00Z
                    until: 2027-01-01T00:00:00Z
                  - key: poll/lyon
                    handler: log
              - name: extras
                every: 1m30s
                mode: additive
                stop: [poll/old]
                jobs: []
            """, path: "plan.yaml")
        #expect(plan.pool == "demo")
        #expect(plan.producers.map(\.name) == ["pollers", "extras"])
        let pollers = plan.producers[0]
        #expect(pollers.interval == .seconds(10))
        #expect(pollers.timeZone == "Europe/Paris")
        #expect(pollers.jobs.count == 2)
        let paris = pollers.jobs[0]
        #expect(String(decoding: paris.payload, as: UTF8.self)
            == #"{"city":"Paris","n":3,"none":null,"ok":true,"ratio":0.5,"tags":["a","b"]}"#)
        #expect(paris.active?.source == "* 8-19 * * MON-FRI")
        #expect(paris.from == Date(timeIntervalSince1970: 1_796_083_200))
        #expect(String(decoding: pollers.jobs[1].payload, as: UTF8.self) == "null")
        #expect(plan.producers[1].interval == .seconds(90))
        #expect(plan.producers[1].mode == .additive)
        #expect(plan.producers[1].stop == ["poll/old"])
    }

    @Test func payloadIsCanonical() throws {
        let a = try PlanParser.parse(contents: "producers:\n  - {name: p, every: 1s, jobs: [{key: k, handler: h, payload: {b: 1, a: [x, \"y\"]}}]}\n", path: "a")
        let b = try PlanParser.parse(contents: """
            producers:
              - name: p
                every: 1s
                jobs:
                  - key: k
                    handler: h
                    payload:
                      a:
                        - x
                        - y
                      b: 1
            """, path: "b")
        #expect(a.producers[0].jobs[0].payload == b.producers[0].jobs[0].payload)
    }

    @Test func everyProblemIsReportedAtOnceWithLineAndColumn() {
        let found = problems("""
            pool: demo
            colour: blue
            producers:
              - name: pollers
                every: 10 parsecs
                timezone: Mars/Olympus
                stop: [x]
                jobs:
                  - key: a
                    handler: log
                    active: "61 * * * *"
                    surprise: 1
                  - key: a
                    handler: log
                  - handler: log
              - name: pollers
                every: 50ms
                jobs: []
            """)
        #expect(found.contains("plan.yaml:2:1: error: unknown field 'colour'; expected one of: pool, producers"))
        #expect(found.contains("plan.yaml:5:12: error: invalid duration '10 parsecs': use a number with a unit, e.g. 500ms, 10s, 1m30s, 2h"))
        #expect(found.contains("plan.yaml:6:15: error: unknown time zone 'Mars/Olympus': use an IANA name such as Europe/Paris or UTC"))
        #expect(found.contains("plan.yaml:7:11: error: 'stop:' is only allowed in additive mode (exact mode stops every job it does not list)"))
        #expect(found.contains("plan.yaml:11:18: error: invalid cron window: minute field: value 61 out of range 0-59"))
        #expect(found.contains("plan.yaml:12:9: error: unknown field 'surprise'; expected one of: key, handler, payload, active, from, until"))
        #expect(found.contains("plan.yaml:15:9: error: job is missing 'key:'"))
        #expect(found.contains("plan.yaml:17:12: error: planning interval 50ms is shorter than the minimum of 100ms"))
        #expect(found.count >= 8)
    }

    @Test func duplicateNamesAndKeys() {
        let found = problems("""
            producers:
              - name: p
                every: 1s
                jobs:
                  - {key: k, handler: h}
                  - {key: k, handler: h}
              - name: p
                every: 1s
            """)
        #expect(found.contains { $0.hasPrefix("plan.yaml:6:9: error: duplicate job key 'k'") })
        #expect(found.contains { $0.hasPrefix("plan.yaml:7:5: error: duplicate producer name 'p'") })
    }

    @Test(arguments: [
        ("producers: [\n", "YAML syntax error"),
        ("producers:\n  - name: p\n    every: 1s\n  every: 2s\n", "YAML syntax error"),
        ("pool: a\npool: b\nproducers: []\n", "duplicate key 'pool'"),
        ("", "the file is empty"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("producers:\n  - name: p\n    every: 1s\n    jobs:\n      - {key: \"a=b\", handler: h}\n", "contains '=' (reserved)"),
        ("producers:\n  - name: p\n    every: 1s\n    jobs:\n      - {key: k, handler: h, from: 2027-01-01T00:00:00Z, until: 2026-01-01T00:00:00Z}\n", "'until' must be later than 'from'"),
        ("producers:\n  - name: p\n    every: 1s\n    jobs:\n      - {key: k, handler: h, from: yesterday}\n", "invalid 'from' time 'yesterday'"),
        ("producers:\n  - name: p\n    every: 1s\n    jobs:\n      - {key: k, handler: h, until: 2026-02-30T00:00:00Z}\n",
         "plan.yaml:5:37: error: invalid 'until' time '2026-02-30T00:00:00Z': day 30 is not in 2026-02, which has 28 days"),
        ("producers:\n  - name: p\n    every: 1s\n    mode: sometimes\n", "invalid mode 'sometimes'"),
        ("producers:\n  - name: p\n", "missing 'every:'"),
        ("pool: 'a b'\nproducers: []\n", "invalid pool name 'a b'"),
    ])
    func rejectsWithAClearMessage(yaml: String, expected: String) {
        let found = problems(yaml)
        #expect(found.contains { $0.contains(expected) }, "\(found)")
        #expect(found.allSatisfy { $0.hasPrefix("plan.yaml:") && $0.contains(": error: ") })
    }

    @Test func cronColumnPointsInsideQuotedAndPlainScalars() {
        let quoted = problems("producers:\n  - name: p\n    every: 1s\n    jobs:\n      - {key: k, handler: h, active: \"* * * * MOM\"}\n")
        #expect(quoted.contains { $0.hasPrefix("plan.yaml:5:47: error: invalid cron window: day-of-week field") }, "\(quoted)")
    }

    @Test func loadChecksAcrossFilesAndDirectories() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("plans-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try "producers:\n  - {name: a, every: 1s, jobs: [{key: shared, handler: h}]}\n"
            .write(to: directory.appendingPathComponent("1.yaml"), atomically: true, encoding: .utf8)
        try "producers:\n  - {name: b, every: 1s, jobs: [{key: shared, handler: h}]}\n"
            .write(to: directory.appendingPathComponent("2.yml"), atomically: true, encoding: .utf8)
        try "not a plan".write(to: directory.appendingPathComponent("notes.txt"), atomically: true, encoding: .utf8)
        do {
            _ = try PlanParser.load(paths: [directory.path])
            Issue.record("duplicate job key across files was accepted")
        } catch {
            #expect(error.diagnostics.count == 1)
            #expect(error.diagnostics[0].message.contains("job key 'shared' is also declared in"))
        }
        try "producers:\n  - {name: b, every: 1s, jobs: [{key: other, handler: h}]}\n"
            .write(to: directory.appendingPathComponent("2.yml"), atomically: true, encoding: .utf8)
        let files = try PlanParser.load(paths: [directory.path])
        #expect(files.map(\.producers.count) == [1, 1])
        do {
            _ = try PlanParser.load(paths: [directory.appendingPathComponent("missing.yaml").path])
            Issue.record("missing file accepted")
        } catch {
            #expect(error.diagnostics[0].message == "no such file or directory")
        }
    }

    @Test func desiredHonoursBoundsAndWindow() throws {
        let plan = try PlanParser.parse(contents: """
            producers:
              - name: p
                every: 1s
                timezone: Europe/Paris
                jobs:
                  - key: k
                    handler: h
                    active: "* 9-17 * * *"
                    from: 2026-12-01T00:00:00Z
                    until: 2026-12-02T00:00:00Z
            """, path: "p")
        let job = plan.producers[0].jobs[0]
        let paris = try #require(TimeZone(identifier: "Europe/Paris"))
        #expect(job.isDesired(at: Date(timeIntervalSince1970: 1_796_112_000), in: paris))  // 2026-12-01T08:00Z = 09:00 Paris
        #expect(!job.isDesired(at: Date(timeIntervalSince1970: 1_796_108_400), in: paris))  // 07:00Z = 08:00 Paris
        #expect(!job.isDesired(at: Date(timeIntervalSince1970: 1_796_198_400), in: paris))  // 2026-12-02T08:00Z: after until
    }
}

@Suite struct ShippedPlansTests {
    /// The examples in plans/ must always be valid.
    @Test func examplePlansAreValid() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let files = try PlanParser.load(paths: [root.appendingPathComponent("plans").path])
        #expect(!files.isEmpty)
        #expect(files.allSatisfy { !$0.producers.isEmpty })
    }
}
