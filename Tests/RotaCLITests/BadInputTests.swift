import Foundation
import RotaRedisServer
import RotaTestSupport
import Testing

/// Runs the built `rota` (beside the test bundle) with a deadline.
private func rotaCommand(_ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
    var executable = Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("rota")
    if !FileManager.default.isExecutableFile(atPath: executable.path) {
        executable = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("rota")
    }
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    let error = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    return (process.terminationStatus, output, error)
}

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
        expectClearFailure(try rotaCommand(["plan", "validate", scratch.appendingPathComponent("nope.yaml").path]), mentioning: "nope.yaml")
        // A malformed Redis URL names the bad part.
        expectClearFailure(try rotaCommand(["status", "--redis", "redis://host:notaport", "--pool", "p"]), mentioning: "port")
        expectClearFailure(try rotaCommand(["dispatch", "k", "--handler", "log", "--redis", "http://x", "--pool", "p"]), mentioning: "http")
        // Unreachable Redis.
        expectClearFailure(try rotaCommand(["stop", "k", "--redis", "redis://127.0.0.1:1", "--pool", "p"]), mentioning: "127.0.0.1:1")
        // A corrupt database: refused, and left as it was.
        let corrupt = scratch.appendingPathComponent("corrupt.sqlite").path
        try Data("this is not a database, just text that is long enough to look like a header".utf8).write(to: URL(fileURLWithPath: corrupt))
        let before = try Data(contentsOf: URL(fileURLWithPath: corrupt))
        expectClearFailure(try rotaCommand(["history", "--db", corrupt]), mentioning: "corrupt.sqlite")
        #expect(try Data(contentsOf: URL(fileURLWithPath: corrupt)) == before)
        // A database in a directory that does not exist.
        expectClearFailure(try rotaCommand(["history", "--db", scratch.appendingPathComponent("no/dir/h.sqlite").path]), mentioning: "h.sqlite")
        // A wrong password: refused before anything is written.
        try await RedisServer.withServer(options: {
            var options = RedisServer.Options()
            options.password = "right-password"
            return options
        }()) { server in
            let url = "redis://:wrong-password@127.0.0.1:\(server.port)"
            let run = try rotaCommand(["run", "--plans", "\(repositoryRoot)/plans", "--db", db, "--pool", "demo", "--redis", url])
            expectClearFailure(run, mentioning: "WRONGPASS")
            #expect(!run.err.contains("wrong-password"), "the password never appears in messages")
            let history = try rotaCommand(["history", "--db", db, "--format", "json"])
            #expect(history.out.trimmingCharacters(in: .whitespacesAndNewlines) == "[]", "no round written")
            let status = try rotaCommand(["status", "--redis", url, "--pool", "demo"])
            expectClearFailure(status, mentioning: "WRONGPASS")
            #expect(!status.err.contains("wrong-password"))
        }
    }
}

private let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
