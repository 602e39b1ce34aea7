import Foundation
import RotaPlans
import RotaRedis
import RotaRedisServer
import RotaService
import RotaStore
import RotaTestSupport
import Testing

// PoolPlan against a real redis-server: the atomic apply (compare-and-set, prune, dry run), the
// change log it writes, pause/resume/trigger refusals, last rounds, and entries poisoned by
// someone with write access to the pool's keys.

private func producer(_ name: String, every: String = "1s", payload: String = "1") throws -> ProducerDefinition {
    let text = """
        producers:
          - name: \(name)
            every: \(every)
            jobs:
              - {key: \(name)/a, handler: log, payload: {v: \(payload)}}
        """
    let file = try PlanParser.parse(contents: text, path: "test.yaml")
    return try #require(file.producers.first)
}

private func updates(_ definitions: [ProducerDefinition]) -> [PoolPlan.Update] {
    definitions.map { PoolPlan.Update(definition: $0, source: "test.yaml") }
}

private func withPlan<R: Sendable>(_ body: (PoolPlan, RedisClient) async throws -> R) async throws -> R {
    try await RedisServer.withServer { server in
        try await RedisClient.withClient(server.configuration) { client in
            try await body(try PoolPlan(pool: "plan-\(UUID().uuidString.prefix(8))", client: client), client)
        }
    }
}

/// The change log's entries: kind and decoded event.
private func log(_ plan: PoolPlan, _ client: RedisClient) async throws -> [PlanEvent] {
    let reply = try await client.send("XRANGE", plan.logKey, "-", "+")
    return try (reply.array ?? []).map { entry in
        let parts = try #require(entry.array)
        let id = try #require(parts[0].string)
        let fields = try #require(parts[1].array)
        var values: [String: [UInt8]] = [:]
        var index = 0
        while index + 1 < fields.count {
            values[fields[index].string ?? ""] = fields[index + 1].bytes
            index += 2
        }
        return try plan.decodeEvent(entryID: id, kind: String(decoding: values["n"] ?? [], as: UTF8.self), payload: values["p"] ?? [])
    }
}

@Suite(.serialized) struct PoolPlanTests {
    @Test("apply: created, unchanged (no new revision), updated, pruned; one log entry per change")
    func applyOutcomes() async throws {
        try await withPlan { plan, client in
            let a = try producer("a"), b = try producer("b")
            let first = try await plan.apply(updates([a, b]), expectRevision: 0, prune: true, actor: "t")
            #expect(!first.conflict)
            #expect(first.previousRevision == 0 && first.revision == 1)
            #expect(first.changes.map(\.outcome) == [.created, .created])

            // Same definitions: nothing written, the revision stays.
            let same = try await plan.apply(updates([b, a]), expectRevision: 1, prune: true, actor: "t")
            #expect(same.revision == 1 && !same.changed)
            #expect(same.changes.map(\.revision) == [1, 1])

            // b changes, a is dropped: one new revision for both changes.
            let changed = try await plan.apply(updates([try producer("b", payload: "2")]), expectRevision: 1, prune: true, actor: "u")
            #expect(changed.revision == 2)
            #expect(Set(changed.changes.map { "\($0.producer):\($0.outcome.rawValue):\($0.revision)" }) == ["b:updated:2", "a:retired:2"])

            let snapshot = try await plan.read()
            #expect(snapshot.revision == 2)
            #expect(snapshot.producers.keys.sorted() == ["b"])
            #expect(snapshot.producers["b"]?.revision == 2)
            #expect(snapshot.producers["b"]?.actor == "u")
            #expect(snapshot.retired["a"]?.revision == 2)
            #expect(snapshot.skipped.isEmpty)

            let events = try await log(plan, client)
            #expect(events.map { "\($0.producer):\($0.kind.rawValue):\($0.revision)" }
                == ["a:created:1", "b:created:1", "b:updated:2", "a:retired:2"])
            #expect(events[2].definition == (try producer("b", payload: "2")).canonicalJSON)

            // A retired producer comes back as created, at a new revision.
            let back = try await plan.apply(updates([a, try producer("b", payload: "2")]), expectRevision: 2, prune: false, actor: "t")
            #expect(back.changes.first { $0.producer == "a" }?.outcome == .created)
            #expect(try await plan.read().retired["a"] == nil)
        }
    }

    @Test("apply: a stale expected revision writes nothing; a dry run writes nothing")
    func conflictAndDryRun() async throws {
        try await withPlan { plan, client in
            _ = try await plan.apply(updates([try producer("a")]), expectRevision: 0, prune: false, actor: "t")
            let stale = try await plan.apply(updates([try producer("a", payload: "9")]), expectRevision: 0, prune: false, actor: "t")
            #expect(stale.conflict)
            #expect(stale.revision == 1)
            let dry = try await plan.apply(updates([try producer("c")]), expectRevision: 1, prune: true, dryRun: true, actor: "t")
            #expect(!dry.conflict && dry.revision == 2)
            #expect(Set(dry.changes.map { "\($0.producer):\($0.outcome.rawValue)" }) == ["c:created", "a:retired"])
            let snapshot = try await plan.read()
            #expect(snapshot.revision == 1 && snapshot.producers.keys.sorted() == ["a"])
            #expect(try await log(plan, client).count == 1)
        }
    }

    @Test("two concurrent applies against the same revision: exactly one writes")
    func concurrentApplies() async throws {
        try await withPlan { plan, _ in
            _ = try await plan.apply(updates([try producer("a")]), expectRevision: 0, prune: false, actor: "t")
            let results = try await withThrowingTaskGroup(of: PoolPlan.ApplyResult.self) { group in
                for index in 0..<8 {
                    group.addTask {
                        try await plan.apply(updates([try producer("a", payload: "\(index + 10)")]), expectRevision: 1, prune: false,
                            actor: "writer\(index)")
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(results.filter { !$0.conflict }.count == 1)
            #expect(try await plan.read().revision == 2)
        }
    }

    @Test("pause, resume and trigger: refusals for unknown, retired, not paused and paused producers; log entries with actors")
    func pauseResumeTrigger() async throws {
        try await withPlan { plan, client in
            _ = try await plan.apply(updates([try producer("a"), try producer("b")]), expectRevision: 0, prune: false, actor: "t")
            _ = try await plan.apply(updates([try producer("a")]), expectRevision: 1, prune: true, actor: "t")
            #expect(try await plan.pause("nope", reason: "x", until: nil, stopJobs: false, actor: "ops") == .failure(.unknownProducer))
            #expect(try await plan.pause("b", reason: "x", until: nil, stopJobs: false, actor: "ops") == .failure(.retired))
            #expect(try await plan.resume("a", actor: "ops") == .failure(.notPaused))
            let until = Date().addingTimeInterval(3600)
            #expect(try await plan.pause("a", reason: "incident 7", until: until, stopJobs: true, actor: "ops") == .success(false))
            let pause = try #require(try await plan.producer("a").pause)
            #expect(pause.reason == "incident 7" && pause.stopJobs && pause.actor == "ops")
            #expect(abs((pause.until ?? .distantPast).timeIntervalSince(until)) < 0.01)
            // A resume that expects another pause than the one in force is refused.
            #expect(try await plan.pause("a", reason: "again", until: nil, stopJobs: false, actor: "ops2") == .success(true))
            #expect(try await plan.resume("a", actor: "auto", expecting: pause) == .failure(.pauseChanged))
            #expect(try await plan.resume("a", actor: "ops", reason: "fixed") == .success(true))
            #expect(try await plan.noteTrigger("a", actor: "ops") == .success(false))
            // Pauses and triggers leave the plan's revision alone.
            #expect(try await plan.read().revision == 2)
            let events = try await log(plan, client).filter { $0.producer == "a" }.map { "\($0.kind.rawValue):\($0.actor):\($0.reason ?? "-")" }
            #expect(events == ["created:t:-", "paused:ops:incident 7", "paused:ops2:again", "resumed:ops:fixed", "triggered:ops:-"])
        }
    }

    @Test("last rounds: a round of an earlier tick never replaces a later one")
    func lastRounds() async throws {
        try await withPlan { plan, _ in
            let base = Date(timeIntervalSince1970: 1_800_000_000)
            func round(_ id: String, _ offset: TimeInterval) -> LastRound {
                LastRound(id: id, tick: base.addingTimeInterval(offset), node: "n", revision: 1, finished: nil, started: 0, stopped: 0,
                    failed: 0, error: nil, missed: 0)
            }
            try await plan.recordLastRound(producer: "a", round("late", 10))
            try await plan.recordLastRound(producer: "a", round("early", 5))
            try await plan.recordLastRound(producer: "b", round("only", 1))
            let rounds = try await plan.lastRounds()
            #expect(rounds["a"]?.id == "late")
            #expect(rounds["b"]?.id == "only")
        }
    }

    @Test("poisoned plan entries are skipped and named; a poisoned revision refuses writes without trapping")
    func poisonedEntries() async throws {
        try await withPlan { plan, client in
            _ = try await plan.apply(updates([try producer("a"), try producer("b")]), expectRevision: 0, prune: false, actor: "t")
            let good = try await client.send("HGET", plan.planKey, "d:b").string ?? ""
            // A definition whose hash does not match, a huge revision, garbage, an out-of-range time.
            try await client.send("HSET", plan.planKey, "d:a", good.replacingOccurrences(of: "\"producer\":\"b\"", with: "\"producer\":\"a\""))
            try await client.send("HSET", plan.planKey, "d:c", #"{"revision":1e300,"producer":"c","hash":"x","definition":"","by":"x","at":1}"#)
            try await client.send("HSET", plan.planKey, "p:b", "not json")
            try await client.send("HSET", plan.planKey, "r:z", #"{"revision":1,"by":"x","at":-9223372036854775808}"#)
            let snapshot = try await plan.read()
            #expect(snapshot.producers.keys.sorted() == ["b"])
            #expect(Set(snapshot.skipped.map(\.field)) == ["d:a", "d:c", "p:b", "r:z"])
            #expect(snapshot.paused.isEmpty && snapshot.retired.isEmpty)
            // The apply repairs a producer whose entry was tampered with.
            let repaired = try await plan.apply(updates([try producer("a"), try producer("b")]), expectRevision: 1, prune: false, actor: "t")
            #expect(repaired.changes.first { $0.producer == "a" }?.outcome == .updated)
            #expect(try await plan.read().producers["a"] != nil)

            for poison in ["-1", "1e300", "99999999999999999999", "abc", "9007199254740993"] {
                try await client.send("HSET", plan.planKey, "=revision", poison)
                await #expect(throws: ServiceError.self, "revision \(poison)") {
                    _ = try await plan.apply(updates([try producer("a")]), expectRevision: nil, prune: false, actor: "t")
                }
                await #expect(throws: ServiceError.self, "revision \(poison)") {
                    _ = try await plan.pause("a", reason: "x", until: nil, stopJobs: false, actor: "t")
                }
                #expect(try await plan.read().skipped.contains { $0.field == "=revision" }, "revision \(poison)")
            }
        }
    }

    @Test("the change log decoder refuses entries that are not plan changes")
    func hostileLogEntries() async throws {
        try await withPlan { plan, _ in
            let definition = try producer("a").canonicalJSON
            let hash = PoolPlan.contentHash(definition)
            func entry(_ json: String, kind: String = "created") -> Bool {
                (try? plan.decodeEvent(entryID: "1-0", kind: kind, payload: Array(json.utf8))) != nil
            }
            let valid = #"{"kind":"created","producer":"a","revision":1,"by":"t","at":1800000000000,"hash":"\#(hash)","definition":\#(try jsonString(definition))}"#
            #expect(entry(valid))
            #expect(!entry(valid, kind: "updated"))
            #expect(!entry(valid.replacingOccurrences(of: hash, with: String(repeating: "0", count: 64))))
            #expect(!entry(valid.replacingOccurrences(of: "\"revision\":1", with: "\"revision\":-5")))
            #expect(!entry(valid.replacingOccurrences(of: "1800000000000", with: "-9223372036854775808")))
            #expect(!entry(#"{"kind":"exploded","producer":"a","revision":1,"by":"t","at":1800000000000}"#, kind: "exploded"))
            #expect(!entry("[]"))
            #expect(entry(#"{"kind":"paused","producer":"a","revision":3,"by":"t","at":1800000000000,"reason":"r","until":1800000001000,"stop_jobs":true}"#,
                kind: "paused"))
        }
    }
}

private func jsonString(_ text: String) throws -> String {
    String(decoding: try JSONEncoder().encode(text), as: UTF8.self)
}
