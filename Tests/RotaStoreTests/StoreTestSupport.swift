import Foundation
import RotaTestSupport

/// Runs SQL statements on the file behind the store's back (another process, as a tamperer would),
/// and returns the rows of the queries among them, one `a|b|c` line each.
@discardableResult
func sql(_ path: String, _ statements: String...) throws -> String { try sql(path, statements) }

@discardableResult
func sql(_ path: String, _ statements: [String]) throws -> String {
    let script = """
        import sqlite3, sys
        c = sqlite3.connect(sys.argv[1], isolation_level=None)
        c.execute("PRAGMA busy_timeout = 5000")
        for statement in sys.argv[2:]:
            for row in c.execute(statement):
                print("|".join("" if v is None else str(v) for v in row))
        """
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", "-c", script, path] + statements
    let out = Pipe()
    process.standardOutput = out
    try process.run()
    let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { throw TestFailure("sqlite3 script failed: \(statements)") }
    return text.trimmingCharacters(in: .whitespacesAndNewlines)
}
