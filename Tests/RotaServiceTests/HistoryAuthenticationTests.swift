import Foundation
import RotaRedis
import RotaService
import RotaStore
import RotaTestSupport
import Testing

// The pool's history key with real `rota run` processes: what reaches a node's history through the
// history stream must be signed with it.

/// A complete round as the history stream carries it (HistoryWire's JSON), written by hand.
private func forgedRound(id: String, tick: Double) -> [UInt8] {
    Array("""
        {"id":"\(id)","pool":"e2e","producer":"p","revision":1,"node":"mallory","tick":\(tick),"started":\(tick),\
        "finished":\(tick + 0.01),"planned":[{"job":"evil","action":"start"}],"counts":[1,0,0],\
        "actions":[{"job":"evil","action":"start","outcome":"started","at":\(tick),"reason":"manual","actor":"mallory"}]}
        """.utf8)
}

private let plan = "pool: e2e\nproducers:\n  - name: p\n    every: 1s\n    jobs:\n      - {key: a, handler: log}\n"

@Suite(.serialized, .timeLimit(.minutes(5))) struct HistoryAuthenticationTests {
    @Test("with a history key, forged stream entries (unsigned, another key's, a bad signature) are not recorded but counted, and do not take the coming rounds' IDs; signed rounds and manual actions are recorded")
    func forgedEntriesAreRefused() async throws {
        try await withRunCluster(plans: plan) { cluster in
            let keyFile = cluster.directory.appendingPathComponent("history.key").path
            let key = try HistoryKey.create(path: keyFile)
            let port = try freePort()
            let n1 = try cluster.start("n1", extra: ["--history-key-file", keyFile, "--metrics-port", String(port)])
            let n2 = try cluster.start("n2", extra: ["--history-key-file", keyFile])
            try await n1.waitUntilReady()
            try await n2.waitUntilReady()
            #expect(n1.logs("rota run ready").first?["history_key"] == key.id)

            // The rounds one node plans reach the other only through the stream: signed, recorded.
            try await poll("both nodes recorded the same rounds", timeout: .seconds(20), diagnostics: cluster.diagnostics) {
                let (one, two) = (try n1.rounds(producer: "p").map(\.roundID), try n2.rounds(producer: "p").map(\.roundID))
                return one.count >= 3 && Set(one.prefix(3)).isSubset(of: Set(two)) ? true : nil
            }

            // Forged rounds for the coming ticks of p, which would make those ticks' real rounds fail.
            let forged = try await RedisClient.withClient(try RedisConfiguration(url: cluster.redisURL)) { client -> [(id: String, token: Int64)] in
                let ticker = try #require(try await client.send("HGET", "rota:{e2e}:map:tickers", "schedule-p").string)
                let next = try #require(ticker.split(separator: "|").first.flatMap { Int64($0) })
                let other = try HistoryKey(bytes: [UInt8](repeating: 7, count: 32))
                var forged: [(id: String, token: Int64)] = []
                for offset in 2...4 {
                    let token = next + Int64(offset) * 1_000_000
                    let payload = forgedRound(id: "e2e/p/\(token)", tick: Double(token) / 1e6)
                    let parts = [Array("e2e".utf8), Array("round".utf8)]
                    let signature: [String] = switch offset {
                    case 2: []
                    case 3: ["s", other.tag("rota.history-entry.v1", parts + [payload])]
                    default: ["s", key.tag("rota.history-entry.v1", parts + [Array("{}".utf8)])]  // this key, another payload
                    }
                    let command = RedisCommand(arguments: ["XADD", "rota:{e2e}:stream:history", "*", "n", "round", "p", payload] + signature)
                    forged.append((try #require(try await client.send(command).string), token))
                }
                return forged
            }

            // A manual action with the key is recorded by both; one without it is not.
            let signed = try await rotaCommand(["dispatch", "hand/signed", "--handler", "log", "--history-key-file", keyFile,
                "--redis", cluster.redisURL, "--pool", "e2e"])
            #expect(signed.status == 0, "\(signed.err)")
            let unsigned = try await rotaCommand(["dispatch", "hand/unsigned", "--handler", "log", "--redis", cluster.redisURL, "--pool", "e2e"])
            #expect(unsigned.status == 0, "\(unsigned.err)")
            for node in [n1, n2] {
                let manual = try await poll("\(node.label) recorded the signed manual action", timeout: .seconds(10)) {
                    try node.actions(onJob: "hand/signed").first
                }
                #expect(manual.round.producer == ManualActionLog.producer && manual.action.outcome == .started)
            }

            // The forged ticks pass: both nodes record the real rounds of those ticks.
            for node in [n1, n2] {
                let real = try await poll("\(node.label) recorded the real rounds of the forged ticks", timeout: .seconds(20),
                    diagnostics: cluster.diagnostics) {
                    let rounds = try node.rounds(producer: "p").filter { round in forged.contains { $0.token == round.token } }
                    return rounds.count == forged.count ? rounds : nil
                }
                #expect(real.allSatisfy { $0.node == "n1" || $0.node == "n2" }, "\(real.map(\.node))")
            }
            for node in [n1, n2] {
                let rounds = try node.rounds()
                #expect(!rounds.contains { $0.node == "mallory" }, "\(node.label) recorded a forged round")
                #expect(try node.actions(onJob: "evil").isEmpty)
                #expect(try node.actions(onJob: "hand/unsigned").isEmpty, "\(node.label) recorded the unsigned manual action")
                let verify = try await rotaCommand(["history", "verify", "--db", node.database])
                #expect(verify.status == 0, "\(verify.out)\(verify.err)")
            }

            // Logged once per reason, with the entry's ID; counted.
            let logged = n1.logs("ignoring history stream entries not signed with this pool's history key (the first of each reason is logged; all are counted in rota_history_entries_unverified)")
            #expect(logged.map { $0["reason"] ?? "" } == ["unsigned", "other-key", "bad-signature"], "\(logged)")
            #expect(logged.map { $0["event"] ?? "" } == forged.map(\.id), "\(logged)")
            let metrics = try scrapeMetrics(port: port)
            for (reason, count) in [("unsigned", 2), ("other-key", 1), ("bad-signature", 1)] {
                let line = metrics.split(separator: "\n").first { $0.hasPrefix("rota_history_entries_unverified{") && $0.contains("reason=\"\(reason)\"") }
                #expect(line?.hasSuffix(" \(count)") == true, "\(reason): \(line ?? "no line")\n\(metrics.prefix(2000))")
            }
        }
    }
}
