import Foundation
import RotaTestSupport
import Testing

private let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

@Suite(.serialized) struct CLITests {
    let db = FileManager.default.temporaryDirectory.appendingPathComponent("rota-cli-\(UUID().uuidString).sqlite").path

    @Test func validateReportsEveryProblemAndExitsOne() throws {
        let bad = FileManager.default.temporaryDirectory.appendingPathComponent("bad-\(UUID().uuidString).yaml")
        try "producers:\n  - name: p\n    every: soon\n    jobs:\n      - {key: k, handler: h, colour: red}\n".write(to: bad, atomically: true, encoding: .utf8)
        let result = try rota(["plan", "validate", bad.path])
        #expect(result.status == 1)
        let lines = result.err.split(separator: "\n")
        #expect(lines.count == 2)
        #expect(lines.contains { $0.hasPrefix("\(bad.path):3:12: error: invalid duration 'soon'") })
        #expect(lines.contains { $0.hasPrefix("\(bad.path):5:30: error: unknown field 'colour'") })
        let good = try rota(["plan", "validate", repository.appendingPathComponent("plans").path])
        #expect(good.status == 0)
    }

    @Test func applyShowWindowsAndErrors() throws {
        let plans = repository.appendingPathComponent("plans").path
        let applied = try rota(["plan", "apply", plans, "--db", db, "--format", "json"])
        #expect(applied.status == 0)
        #expect(applied.out.contains(#"{"pool":"demo","producer":"pollers","outcome":"created","revision":1}"#))
        let again = try rota(["plan", "apply", plans, "--db", db, "--format", "json"])
        #expect(again.out.contains(#""outcome":"unchanged""#))
        let windows = try rota(["plan", "windows", "pollers", "--db", db, "--pool", "demo",
            "--from", "2026-12-04T00:00:00Z", "--until", "2026-12-05T00:00:00Z", "--format", "json"])
        #expect(windows.status == 0)
        #expect(windows.out.trimmingCharacters(in: .whitespacesAndNewlines) == """
            [{"job":"poll/lyon","from":"2026-12-04T00:00:00.000Z","until":"2026-12-05T00:00:00.000Z"},\
            {"job":"poll/paris","from":"2026-12-04T07:00:00.000Z","until":"2026-12-04T19:00:00.000Z"}]
            """)
        let missing = try rota(["plan", "show", "nope", "--db", db, "--pool", "demo"])
        #expect(missing.status != 0)
        #expect(missing.err.split(separator: "\n").count == 1)
        let badTime = try rota(["history", "--db", db, "--since", "last tuesday"])
        #expect(badTime.status != 0)
        #expect(badTime.err.contains("--since 'last tuesday'"))
        let empty = try rota(["jobs", "--db", db, "--format", "json"])
        #expect(empty.status == 0 && empty.out == "[]\n")
    }

    @Test func corruptDatabaseIsOneLineAndNothingWritten() throws {
        let corrupt = FileManager.default.temporaryDirectory.appendingPathComponent("corrupt-\(UUID().uuidString).sqlite").path
        let garbage = Data(repeating: 0x5A, count: 4096)
        try garbage.write(to: URL(fileURLWithPath: corrupt))
        let result = try rota(["plan", "apply", repository.appendingPathComponent("plans").path, "--db", corrupt])
        #expect(result.status != 0)
        #expect(result.err.split(separator: "\n").count == 1)
        #expect(result.err.contains("not a Rota database"))
        #expect(try Data(contentsOf: URL(fileURLWithPath: corrupt)) == garbage)
    }
}
