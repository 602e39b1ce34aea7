import Foundation
import RotaRedis
import RotaRedisServer
import RotaTestSupport
import Testing

/// Every failure is one clear line on stderr (the last one), a non-zero status, and no output.
private func expectClearFailure(_ result: (status: Int32, out: String, err: String), mentioning fragment: String,
                                sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(result.status != 0, "exit status", sourceLocation: sourceLocation)
    let lines = result.err.split(separator: "\n").filter { !$0.contains(" info ") && !$0.contains(" debug ") }
    #expect(lines.count >= 1, "a message on stderr", sourceLocation: sourceLocation)
    #expect(lines.last?.contains(fragment) == true, "stderr: \(result.err)", sourceLocation: sourceLocation)
    #expect(!result.err.contains("Fatal error") && !result.err.contains("Stack dump"), "no crash", sourceLocation: sourceLocation)
}

@Suite("CLI: bad input gets one clear line and changes nothing", .serialized)
struct BadInputTests {
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("rota-bad-\(UUID().uuidString)")

    @Test("missing files, bad URLs, unreachable or refusing Redis, unreadable databases")
    func badInput() async throws {
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let db = scratch.appendingPathComponent("h.sqlite").path
        // Missing plan files.
        expectClearFailure(try rota(["plan", "validate", scratch.appendingPathComponent("nope.yaml").path]), mentioning: "nope.yaml")
        // A malformed Redis URL names the bad part.
        expectClearFailure(try rota(["status", "--redis", "redis://host:notaport", "--pool", "p"]), mentioning: "port")
        expectClearFailure(try rota(["dispatch", "k", "--handler", "log", "--redis", "http://x", "--pool", "p"]), mentioning: "http")
        // Unreachable Redis.
        expectClearFailure(try rota(["stop", "k", "--redis", "redis://127.0.0.1:1", "--pool", "p"]), mentioning: "127.0.0.1:1")
        // A --handler that is not a built-in, or not a valid name, is a usage error before any connection.
        let badKind = try rota(["worker", "--redis", "redis://127.0.0.1:1", "--pool", "p", "--handler", "greet=nope"])
        expectClearFailure(badKind, mentioning: "--handler greet=nope: unknown built-in handler 'nope' (built-ins: log, exec)")
        #expect(badKind.status == 64)
        expectClearFailure(try rota(["worker", "--redis", "redis://127.0.0.1:1", "--pool", "p", "--handler", "Bad Name=log"]), mentioning: "--handler Bad Name=log")
        expectClearFailure(try rota(["worker", "--redis", "redis://127.0.0.1:1", "--pool", "p", "--handler", "log", "--handler", "log"]), mentioning: "already registered")
        // A corrupt database: refused, and left as it was.
        let corrupt = scratch.appendingPathComponent("corrupt.sqlite").path
        try Data("this is not a database, just text that is long enough to look like a header".utf8).write(to: URL(fileURLWithPath: corrupt))
        let before = try Data(contentsOf: URL(fileURLWithPath: corrupt))
        expectClearFailure(try rota(["history", "--db", corrupt]), mentioning: "corrupt.sqlite")
        #expect(try Data(contentsOf: URL(fileURLWithPath: corrupt)) == before)
        // Times: an impossible date names its field (Foundation would have read March 2); other
        // text is neither a time nor a duration.
        expectClearFailure(try rota(["jobs", "--db", db, "--at", "2026-02-30T00:00:00Z"]),
            mentioning: "--at '2026-02-30T00:00:00Z' is not a valid RFC 3339 time: day 30 is not in 2026-02, which has 28 days")
        expectClearFailure(try rota(["history", "--db", db, "--since", "2026-12-01T10:00:00+25:00"]), mentioning: "UTC offset")
        expectClearFailure(try rota(["history", "--db", db, "--since", "last week"]), mentioning: "not an RFC 3339 time or a duration")
        // A database in a directory that does not exist.
        expectClearFailure(try rota(["history", "--db", scratch.appendingPathComponent("no/dir/h.sqlite").path]), mentioning: "h.sqlite")
        // A wrong password: refused before anything is written.
        try await RedisServer.withServer(options: {
            var options = RedisServer.Options()
            options.password = "right-password"
            return options
        }()) { server in
            let url = "redis://:wrong-password@127.0.0.1:\(server.port)"
            let run = try rota(["run", "--plans", "\(repositoryRoot)/plans", "--db", db, "--pool", "demo", "--redis", url])
            expectClearFailure(run, mentioning: "WRONGPASS")
            #expect(!run.err.contains("wrong-password"), "the password never appears in messages")
            let history = try rota(["history", "--db", db, "--format", "json"])
            #expect(history.out.trimmingCharacters(in: .whitespacesAndNewlines) == "[]", "no round written")
            let status = try rota(["status", "--redis", url, "--pool", "demo"])
            expectClearFailure(status, mentioning: "WRONGPASS")
            #expect(!status.err.contains("wrong-password"))
        }
    }
}

@Suite("CLI: secrets stay out of process lists, messages and world-readable files", .serialized)
struct SecretTests {
    @Test("--redis-password-file, ROTA_REDIS_URL, redacted user-only URLs, a 0600 database")
    func secrets() async throws {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("rota-secrets-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        try await RedisServer.withServer(options: {
            var options = RedisServer.Options()
            options.password = "s3cret-pass"
            return options
        }()) { server in
            let bare = "redis://127.0.0.1:\(server.port)"
            let file = scratch.appendingPathComponent("password")
            try "s3cret-pass\n".write(to: file, atomically: true, encoding: .utf8)
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: file.path)
            let viaFile = try rota(["status", "--redis", bare, "--redis-password-file", file.path, "--pool", "demo"])
            #expect(viaFile.status == 0, "\(viaFile.err)")
            #expect(!viaFile.err.contains("warning"))
            // Readable by others: it still works, with a warning.
            try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: file.path)
            let loose = try rota(["status", "--redis", bare, "--redis-password-file", file.path, "--pool", "demo"])
            #expect(loose.status == 0 && loose.err.contains("may be read by other users"), "\(loose.err)")
            // A password in the URL and in a file, an empty file, a missing file.
            expectClearFailure(try rota(["status", "--redis", server.url, "--redis-password-file", file.path, "--pool", "demo"]),
                mentioning: "give one")
            let empty = scratch.appendingPathComponent("empty")
            try "".write(to: empty, atomically: true, encoding: .utf8)
            expectClearFailure(try rota(["status", "--redis", bare, "--redis-password-file", empty.path, "--pool", "demo"]), mentioning: "is empty")
            expectClearFailure(try rota(["status", "--redis", bare, "--redis-password-file", scratch.appendingPathComponent("none").path,
                "--pool", "demo"]), mentioning: "cannot read")
            // The URL from the environment.
            let viaEnvironment = try rota(["status", "--pool", "demo"], environment: ["ROTA_REDIS_URL": server.url])
            #expect(viaEnvironment.status == 0, "\(viaEnvironment.err)")
            // A user part without a password is how some clients write a password: never echoed.
            let userOnly = try rota(["status", "--redis", "redis://s3cret-pass@127.0.0.1:\(server.port)", "--pool", "demo"])
            expectClearFailure(userOnly, mentioning: "without a password")
            #expect(!userOnly.err.contains("s3cret-pass"), "\(userOnly.err)")
        }
        // A database is created readable by its owner only.
        let db = scratch.appendingPathComponent("new.sqlite").path
        let plan = scratch.appendingPathComponent("plan.yaml")
        try "producers:\n  - name: p\n    every: 1s\n    jobs:\n      - {key: a, handler: log}\n".write(to: plan, atomically: true, encoding: .utf8)
        #expect(try rota(["plan", "apply", plan.path, "--db", db]).status == 0)
        let mode = try #require(try FileManager.default.attributesOfItem(atPath: db)[.posixPermissions] as? Int)
        #expect(mode == 0o600, "mode \(String(mode, radix: 8))")
    }
}

@Suite("CLI: what it prints is safe for terminals and spreadsheets", .serialized)
struct OutputEscapingTests {
    @Test("control characters from Redis are escaped in tables; CSV cells that look like formulas are quoted")
    func escaping() async throws {
        try await RedisServer.withServer { server in
            // A job key with an escape sequence that would clear the screen, written by whoever
            // can write the pool's keys.
            _ = try await RedisClient.withClient(server.configuration) { client in
                try await client.send("HSET", "rota:{esc}:map:job-payloads", "evil\u{1B}[2Jkey", "x")
            }
            let status = try rota(["status", "--redis", server.url, "--pool", "esc"])
            #expect(status.status == 0, "\(status.err)")
            #expect(!status.out.contains("\u{1B}"), "a raw ESC reached the terminal")
            #expect(status.out.contains("evil\\u{1B}[2Jkey"), "\(status.out)")
            // rota explain too: the key is in the pool (a payload, no owner, no worker at all).
            let explained = try rota(["explain", "evil\u{1B}[2Jkey", "--redis", server.url, "--pool", "esc"])
            #expect(explained.status == 0, "\(explained.err)")
            #expect(!explained.out.contains("\u{1B}"), "a raw ESC reached the terminal")
            #expect(explained.out.contains("evil\\u{1B}[2Jkey") && explained.out.contains("no active worker"), "\(explained.out)")
        }
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("rota-escape-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let plan = scratch.appendingPathComponent("plan.yaml")
        try "producers:\n  - name: p\n    every: 1s\n    jobs:\n      - {key: \"@SUM(1)\", handler: log}\n      - {key: \"-1\", handler: log}\n"
            .write(to: plan, atomically: true, encoding: .utf8)
        let db = scratch.appendingPathComponent("x.sqlite").path
        let applied = try rota(["plan", "apply", plan.path, "--db", db, "--pool", "esc"])
        #expect(applied.status == 0, "\(applied.err)")
        let csv = try rota(["plan", "windows", "p", "--db", db, "--pool", "esc", "--from", "2026-01-01T00:00:00Z", "--until", "2026-01-02T00:00:00Z",
            "--format", "csv"])
        #expect(csv.out.contains("\n'@SUM(1),"), "\(csv.out)")
        #expect(!csv.out.contains("\n@SUM"))
        // A number stays a number.
        #expect(csv.out.contains("\n-1,"), "\(csv.out)")
    }
}

private let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
