import ArgumentParser
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import RotaPlans
import RotaService
import RotaStore

protocol AsyncCommand {
    func execute() async throws
}

struct Rota: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rota",
        abstract: "Rota: a Redis-backed dedicated worker pool for long-running jobs, with a scheduler on top.",
        version: RotaVersion.current,
        subcommands: [Run.self, WorkerCommand.self, PlanCommands.self, ProducerCommands.self, History.self, Jobs.self, DispatchCommand.self, StopCommand.self, NotifyCommand.self, StatusCommand.self, ExplainCommand.self]
    )
}

/// Output formats shared by the commands that list things.
enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json, csv
}

/// A failure already explained to the user: print the message, exit with the status.
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Prints plan diagnostics (one per line, compiler style) to standard error and exits 1.
func fail(_ error: PlanValidationError) -> ExitCode {
    for diagnostic in error.diagnostics {
        FileHandle.standardError.write(Data((diagnostic.description + "\n").utf8))
    }
    return ExitCode(1)
}

func openStore(_ path: String) throws -> PlanStore {
    do {
        return try PlanStore.open(path: path)
    } catch {
        throw CommandFailure("\(error.message)")
    }
}

/// Who is acting, recorded with new revisions.
func currentActor() -> String {
    // USER may be unset (cron, containers, CI): the password database names the user then.
    var user = ProcessInfo.processInfo.environment["USER"] ?? ""
    if user.isEmpty, let entry = getpwuid(getuid()), let name = entry.pointee.pw_name { user = String(cString: name) }
    return "\(user.isEmpty ? "uid\(getuid())" : user)@\(ProcessInfo.processInfo.hostName)"
}

/// Parses RFC 3339 times (strictly: no February 30), or a duration meaning "that long ago"
/// (`2h`, `1d`, `90s`).
func parseTime(_ text: String, now: Date = Date()) -> Date? {
    if let date = RFC3339.date(from: text) { return date }
    if let duration = parseDuration(text) {
        return now.addingTimeInterval(-(Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18))
    }
    return nil
}

/// The failure for an `option` whose value `text` is neither a time nor a duration: for a text
/// that reads like a timestamp, it says which field is wrong.
func invalidTime(_ option: String, _ text: String) -> CommandFailure {
    if text.first?.isNumber == true, text.contains("-"), case .failure(let problem) = RFC3339.parse(text) {
        return CommandFailure("\(option) '\(text)' is not a valid RFC 3339 time: \(problem.reason)")
    }
    return CommandFailure("\(option) '\(text)' is not an RFC 3339 time or a duration (e.g. 2h, 1d)")
}

func rfc3339(_ date: Date) -> String {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return formatter.string(from: date)
}

/// `text` with its control characters (ESC among them: a job key or an error read from Redis could
/// otherwise move the cursor, recolour or rewrite a terminal) written as `\u{1B}`-style escapes.
func terminalSafe(_ text: String) -> String {
    guard text.unicodeScalars.contains(where: isControl) else { return text }
    var out = ""
    for scalar in text.unicodeScalars {
        if isControl(scalar) {
            out += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
        } else {
            out.unicodeScalars.append(scalar)
        }
    }
    return out
}

private func isControl(_ scalar: Unicode.Scalar) -> Bool {
    scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029
}

/// A CSV field a spreadsheet will not run as a formula: one starting with `=`, `+`, `@` or `-`
/// (other than a number or a lone `-`) gets a leading `'` (OWASP's advice for CSV injection).
func spreadsheetSafe(_ value: String) -> String {
    guard let first = value.first else { return value }
    let formula = "=+@".contains(first) || (first == "-" && value.count > 1 && Double(value) == nil)
    return formula ? "'" + value : value
}

/// Renders rows for people (aligned columns), or as CSV; both safe to print (see
/// ``terminalSafe(_:)`` and ``spreadsheetSafe(_:)``).
func render(_ header: [String], _ rows: [[String]], format: OutputFormat) -> String {
    let rows = rows.map { $0.map(terminalSafe) }
    switch format {
    case .csv:
        func field(_ value: String) -> String {
            let value = spreadsheetSafe(value)
            return value.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" }) ? "\"" + value.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : value
        }
        return ([header] + rows).map { $0.map(field).joined(separator: ",") }.joined(separator: "\n") + "\n"
    case .table, .json:
        let widths = header.indices.map { column in ([header[column]] + rows.map { $0[column] }).map(\.count).max() ?? 0 }
        func line(_ values: [String]) -> String {
            values.enumerated().map { index, value in
                index == values.count - 1 ? value : value + String(repeating: " ", count: widths[index] - value.count)
            }.joined(separator: "  ")
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n") + "\n"
    }
}

/// JSON text of an array of objects with stable key order.
func jsonArray(_ objects: [[(String, JSONValue)]]) -> String {
    "[" + objects.map { members in
        "{" + members.map { "\(JSONValue.string($0.0).text):\($0.1.text)" }.joined(separator: ",") + "}"
    }.joined(separator: ",") + "]\n"
}

enum JSONValue {
    case string(String)
    case int(Int)
    case null
    case raw(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    static func optional(_ value: String?) -> JSONValue { value.map { .string($0) } ?? .null }

    var text: String {
        switch self {
        case .int(let value): return String(value)
        case .null: return "null"
        case .raw(let text): return text
        case .array(let items): return "[" + items.map(\.text).joined(separator: ",") + "]"
        case .object(let members): return "{" + members.map { "\(JSONValue.string($0.0).text):\($0.1.text)" }.joined(separator: ",") + "}"
        case .string(let value):
            var out = "\""
            for scalar in value.unicodeScalars {
                switch scalar {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                default:
                    if scalar.value < 0x20 {
                        out += String(format: "\\u%04x", scalar.value)
                    } else {
                        out.unicodeScalars.append(scalar)
                    }
                }
            }
            return out + "\""
        }
    }
}
