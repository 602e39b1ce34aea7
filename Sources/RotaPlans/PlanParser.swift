import Foundation
import Yams

/// Reads and validates plan files. Every problem is reported, each with its file, line and column;
/// a file with any problem yields no definitions at all.
public enum PlanParser {
    /// The shortest planning interval accepted.
    public static let minimumInterval: Duration = .milliseconds(100)

    /// Parses one file's text. `path` is only used to label diagnostics.
    public static func parse(contents: String, path: String) throws(PlanValidationError) -> PlanFile {
        var walker = Walker(path: path)
        let plan = walker.plan(contents)
        guard walker.diagnostics.isEmpty, let plan else { throw PlanValidationError(walker.diagnostics) }
        return plan
    }

    /// Loads files and directories (their `*.yaml` and `*.yml` files, sorted by name) and checks
    /// what must hold across files too: producer names and job keys are unique within a pool.
    /// `defaultPool` is used for files that name no pool.
    public static func load(paths: [String], defaultPool: String? = nil) throws(PlanValidationError) -> [PlanFile] {
        var diagnostics: [PlanDiagnostic] = []
        var files: [PlanFile] = []
        for path in expand(paths, diagnostics: &diagnostics) {
            guard let data = FileManager.default.contents(atPath: path) else {
                diagnostics.append(PlanDiagnostic(file: path, line: 1, column: 1, message: "cannot read the file"))
                continue
            }
            guard let text = String(data: data, encoding: .utf8) else {
                diagnostics.append(PlanDiagnostic(file: path, line: 1, column: 1, message: "the file is not valid UTF-8"))
                continue
            }
            do {
                files.append(try parse(contents: text, path: path))
            } catch {
                diagnostics += error.diagnostics
            }
        }
        diagnostics += crossFileProblems(files, defaultPool: defaultPool)
        guard diagnostics.isEmpty else { throw PlanValidationError(diagnostics) }
        return files
    }

    private static func expand(_ paths: [String], diagnostics: inout [PlanDiagnostic]) -> [String] {
        var result: [String] = []
        for path in paths {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                diagnostics.append(PlanDiagnostic(file: path, line: 1, column: 1, message: "no such file or directory"))
                continue
            }
            if isDirectory.boolValue {
                let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
                result += names.filter { $0.hasSuffix(".yaml") || $0.hasSuffix(".yml") }.sorted()
                    .map { (path as NSString).appendingPathComponent($0) }
            } else {
                result.append(path)
            }
        }
        return result
    }

    private static func crossFileProblems(_ files: [PlanFile], defaultPool: String?) -> [PlanDiagnostic] {
        var diagnostics: [PlanDiagnostic] = []
        var producers: [String: String] = [:]  // "pool/name" → file
        var jobs: [String: String] = [:]  // "pool/key" → "file (producer)"
        for file in files {
            let pool = file.pool ?? defaultPool ?? ""
            for producer in file.producers {
                if let other = producers["\(pool)/\(producer.name)"], other != file.path {
                    diagnostics.append(PlanDiagnostic(file: file.path, line: 1, column: 1,
                        message: "producer '\(producer.name)' is also defined in \(other)"))
                }
                producers["\(pool)/\(producer.name)"] = file.path
                for job in producer.jobs {
                    if let other = jobs["\(pool)/\(job.key)"], !other.hasPrefix(file.path + " ") {
                        diagnostics.append(PlanDiagnostic(file: file.path, line: 1, column: 1,
                            message: "job key '\(job.key)' is also declared in \(other)"))
                    }
                    jobs["\(pool)/\(job.key)"] = "\(file.path) (producer \(producer.name))"
                }
            }
        }
        return diagnostics
    }
}

/// Walks the YAML node tree, collecting every problem instead of stopping at the first.
private struct Walker {
    let path: String
    var diagnostics: [PlanDiagnostic] = []

    init(path: String) { self.path = path }

    mutating func error(_ node: Node?, _ message: String, columnOffset: Int = 0) {
        let mark = node?.mark
        diagnostics.append(PlanDiagnostic(file: path, line: mark?.line ?? 1, column: (mark?.column ?? 1) + columnOffset, message: message))
    }

    mutating func plan(_ text: String) -> PlanFile? {
        let problems = YAMLPreflight.problems(in: text)
        guard problems.isEmpty else {
            diagnostics += problems.map { PlanDiagnostic(file: path, line: $0.line, column: $0.column, message: $0.message) }
            return nil
        }
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            yamlError(error)
            return nil
        } catch {
            diagnostics.append(PlanDiagnostic(file: path, line: 1, column: 1, message: "invalid YAML: \(error)"))
            return nil
        }
        guard let root else {
            diagnostics.append(PlanDiagnostic(file: path, line: 1, column: 1, message: "the file is empty; expected a mapping with 'producers:'"))
            return nil
        }
        guard let mapping = root.mapping else {
            error(root, "expected a mapping with 'pool:' and 'producers:' at the top level")
            return nil
        }
        var pool: String?
        var producers: [ProducerDefinition] = []
        var sawProducers = false
        for (key, value) in mapping {
            switch key.string {
            case "pool":
                if let name = scalarString(value, field: "pool") {
                    if validPoolName(name) {
                        pool = name
                    } else {
                        error(value, "invalid pool name '\(name)': use 1-128 characters without spaces, ':', '{', '}', '*', '?', '[', ']'")
                    }
                }
            case "producers":
                sawProducers = true
                guard let list = value.sequence else {
                    error(value, "'producers' must be a list")
                    continue
                }
                var names: [String: Node] = [:]
                var keys: [String: Node] = [:]
                for item in list {
                    guard let producer = self.producer(item) else { continue }
                    if let first = names[producer.name] {
                        error(item, "duplicate producer name '\(producer.name)' (first defined at line \(first.mark?.line ?? 0))")
                    } else {
                        names[producer.name] = item
                    }
                    for node in item.mapping?["jobs"]?.sequence ?? [] {
                        guard let key = node.mapping?["key"]?.string else { continue }
                        if let first = keys[key] {
                            error(node, "duplicate job key '\(key)' (first declared at line \(first.mark?.line ?? 0))")
                        } else {
                            keys[key] = node
                        }
                    }
                    producers.append(producer)
                }
            default:
                unknownField(key, allowed: ["pool", "producers"])
            }
        }
        if !sawProducers { error(root, "missing 'producers:'") }
        return PlanFile(path: path, pool: pool, producers: producers)
    }

    mutating func producer(_ node: Node) -> ProducerDefinition? {
        guard let mapping = node.mapping else {
            error(node, "each producer must be a mapping with 'name:', 'every:' and 'jobs:'")
            return nil
        }
        var name: String?
        var interval: Duration?
        var mode = ProducerDefinition.Mode.exact
        var timeZone = "UTC"
        var jobs: [JobDefinition] = []
        var stop: [String] = []
        var stopNode: Node?
        var valid = true
        for (key, value) in mapping {
            switch key.string {
            case "name":
                guard let text = scalarString(value, field: "name") else { valid = false; continue }
                if validName(text) { name = text } else {
                    error(value, "invalid producer name '\(text)': use 1-128 letters, digits, '.', '_', '-' or '/'")
                    valid = false
                }
            case "every":
                guard let text = scalarString(value, field: "every") else { valid = false; continue }
                guard let duration = PlanDuration.parse(text) else {
                    error(value, "invalid duration '\(text)': use a number with a unit, e.g. 500ms, 10s, 1m30s, 2h")
                    valid = false
                    continue
                }
                if duration < PlanParser.minimumInterval {
                    error(value, "planning interval \(text) is shorter than the minimum of 100ms")
                    valid = false
                } else {
                    interval = duration
                }
            case "mode":
                guard let text = scalarString(value, field: "mode") else { valid = false; continue }
                guard let parsed = ProducerDefinition.Mode(rawValue: text) else {
                    error(value, "invalid mode '\(text)': expected 'exact' or 'additive'")
                    valid = false
                    continue
                }
                mode = parsed
            case "timezone":
                guard let text = scalarString(value, field: "timezone") else { valid = false; continue }
                // Foundation may accept a name cut at a NUL ("Europe/Paris\0x") once that zone is cached.
                if text.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) || TimeZone(identifier: text) == nil {
                    error(value, "unknown time zone '\(text)': use an IANA name such as Europe/Paris or UTC")
                    valid = false
                } else {
                    timeZone = text
                }
            case "jobs":
                guard let list = value.sequence else {
                    error(value, "'jobs' must be a list")
                    valid = false
                    continue
                }
                for item in list {
                    if let job = self.job(item) { jobs.append(job) } else { valid = false }
                }
            case "stop":
                stopNode = value
                guard let list = value.sequence else {
                    error(value, "'stop' must be a list of job keys")
                    valid = false
                    continue
                }
                for item in list {
                    guard let key = scalarString(item, field: "stop") else { valid = false; continue }
                    if let problem = Self.keyProblem(key) {
                        error(item, problem)
                        valid = false
                    } else {
                        stop.append(key)
                    }
                }
            default:
                unknownField(key, allowed: ["name", "every", "mode", "timezone", "jobs", "stop"])
                valid = false
            }
        }
        if name == nil && mapping["name"] == nil { error(node, "producer is missing 'name:'"); valid = false }
        if interval == nil && mapping["every"] == nil { error(node, "producer is missing 'every:' (its planning interval)"); valid = false }
        if mode == .exact, let stopNode {
            error(stopNode, "'stop:' is only allowed in additive mode (exact mode stops every job it does not list)")
            valid = false
        }
        guard valid, let name, let interval else { return nil }
        return ProducerDefinition(name: name, interval: interval, mode: mode, timeZone: timeZone, jobs: jobs, stop: stop)
    }

    mutating func job(_ node: Node) -> JobDefinition? {
        guard let mapping = node.mapping else {
            error(node, "each job must be a mapping with 'key:' and 'handler:'")
            return nil
        }
        var key: String?
        var handler: String?
        var payload: [UInt8] = Array("null".utf8)
        var active: CronExpression?
        var from: Date?
        var until: Date?
        var untilNode: Node?
        var valid = true
        for (field, value) in mapping {
            switch field.string {
            case "key":
                guard let text = scalarString(value, field: "key") else { valid = false; continue }
                if let problem = Self.keyProblem(text) { error(value, problem); valid = false } else { key = text }
            case "handler":
                guard let text = scalarString(value, field: "handler") else { valid = false; continue }
                if validName(text) { handler = text } else {
                    error(value, "invalid handler name '\(text)': use 1-128 letters, digits, '.', '_', '-' or '/'")
                    valid = false
                }
            case "payload":
                guard let json = self.json(value) else { valid = false; continue }
                payload = json.bytes
            case "active":
                guard let text = scalarString(value, field: "active") else { valid = false; continue }
                do {
                    active = try CronExpression(parsing: text)
                } catch {
                    let quoted = value.scalar.map { $0.style == .singleQuoted || $0.style == .doubleQuoted } ?? false
                    self.error(value, "invalid cron window: \(error.message)", columnOffset: (quoted ? 1 : 0) + error.column - 1)
                    valid = false
                }
            case "from":
                if let date = timestamp(value, field: "from") { from = date } else { valid = false }
            case "until":
                untilNode = value
                if let date = timestamp(value, field: "until") { until = date } else { valid = false }
            default:
                unknownField(field, allowed: ["key", "handler", "payload", "active", "from", "until"])
                valid = false
            }
        }
        if mapping["key"] == nil { error(node, "job is missing 'key:'"); valid = false }
        if mapping["handler"] == nil { error(node, "job is missing 'handler:' (the worker-side handler name)"); valid = false }
        if let from, let until, until <= from {
            error(untilNode, "'until' must be later than 'from'")
            valid = false
        }
        guard valid, let key, let handler else { return nil }
        return JobDefinition(key: key, handler: handler, payload: payload, active: active, from: from, until: until)
    }

    /// Job keys travel through Redis maps and streams: non-empty, no '=', no whitespace or control characters.
    static func keyProblem(_ key: String) -> String? {
        if key.isEmpty { return "job key must not be empty" }
        if key.utf8.count > 512 { return "job key '\(key.prefix(40))…' is longer than 512 bytes" }
        if key.contains("=") { return "job key '\(key)' contains '=' (reserved)" }
        if key.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0.properties.generalCategory == .control }) {
            return "job key '\(key)' contains whitespace or control characters"
        }
        return nil
    }

    func validName(_ text: String) -> Bool {
        !text.isEmpty && text.count <= 128
            && text.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "._-/".unicodeScalars.contains($0)) }
    }

    func validPoolName(_ text: String) -> Bool {
        !text.isEmpty && text.count <= 128
            && !text.unicodeScalars.contains { " :{}*?[]".unicodeScalars.contains($0) || $0.properties.generalCategory == .control }
    }

    mutating func unknownField(_ key: Node, allowed: [String]) {
        let name = key.string ?? "?"
        error(key, "unknown field '\(name)'; expected one of: \(allowed.joined(separator: ", "))")
    }

    mutating func scalarString(_ node: Node, field: String) -> String? {
        guard let scalar = node.scalar else {
            error(node, "'\(field)' must be a single value, not a list or mapping")
            return nil
        }
        return scalar.string
    }

    mutating func timestamp(_ node: Node, field: String) -> Date? {
        guard let text = scalarString(node, field: field) else { return nil }
        switch RFC3339.parse(text) {
        case .success(let date):
            return date
        case .failure(let problem):
            error(node, "invalid '\(field)' time '\(text)': \(problem.reason); use RFC 3339, e.g. 2026-12-01T00:00:00Z")
            return nil
        }
    }

    /// Any YAML value, as JSON. Mapping keys must be strings.
    mutating func json(_ node: Node) -> CanonicalJSON? {
        switch node {
        case .scalar(let scalar):
            if scalar.style == .plain {
                if node.null != nil { return .null }
                if let value = node.bool { return .bool(value) }
                if let value = Self.int(node) { return .integer(Int64(value)) }
                if let value = node.float {
                    guard value.isFinite else {
                        error(node, "payload numbers must be finite (JSON has no NaN or infinity)")
                        return nil
                    }
                    return .double(value)
                }
            }
            return .string(scalar.string)
        case .sequence(let sequence):
            var items: [CanonicalJSON] = []
            for item in sequence {
                guard let value = json(item) else { return nil }
                items.append(value)
            }
            return .array(items)
        case .mapping(let mapping):
            var members: [String: CanonicalJSON] = [:]
            for (key, value) in mapping {
                guard let name = key.scalar?.string else {
                    error(key, "payload mapping keys must be plain strings")
                    return nil
                }
                guard let member = json(value) else { return nil }
                members[name] = member
            }
            return .object(members)
        case .alias:
            error(node, "aliases are not supported in payloads")
            return nil
        }
    }

    /// `node.int`, except that base-60 integers (YAML 1.1: `1:30` is 90) which would overflow give nil
    /// (and then a double), because Yams computes them with trapping arithmetic.
    static func int(_ node: Node) -> Int? {
        guard let text = node.scalar?.string, text.contains(":") else { return node.int }
        var digits = Substring(text.replacingOccurrences(of: "_", with: ""))
        let negative = digits.hasPrefix("-")
        if negative || digits.hasPrefix("+") { digits = digits.dropFirst() }
        var value = 0
        var base = 1
        for component in digits.components(separatedBy: ":").reversed() {
            guard let digit = Int(component, radix: 10) else { return node.int }  // not base 60: no arithmetic
            let (scaled, o1) = digit.multipliedReportingOverflow(by: base)
            let (sum, o2) = value.addingReportingOverflow(scaled)
            let (nextBase, o3) = base.multipliedReportingOverflow(by: 60)
            guard !o1, !o2, !o3 else { return nil }
            (value, base) = (sum, nextBase)
        }
        if negative, value == .min { return nil }
        return node.int
    }

    mutating func yamlError(_ error: YamlError) {
        switch error {
        case .scanner(let context, let problem, let mark, _),
            .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            var detail = context.map { "\(problem) \($0.text)" } ?? problem
            if problem.hasPrefix("Maximum nesting level reached") {  // libyaml's own limit, far above ours
                detail = "nesting deeper than \(YAMLPreflight.maximumDepth) levels of lists and mappings is not supported"
            } else if let text = context?.text, text.hasSuffix("scanning an alias") || text.hasSuffix("scanning an anchor") {
                detail += " (quote a value that starts with '*' or '&', e.g. active: \"* * * * *\")"
            }
            diagnostics.append(PlanDiagnostic(file: path, line: mark.line, column: mark.column, message: "YAML syntax error: \(detail)"))
        case .duplicatedKeysInMapping(let duplicates, let context):
            diagnostics.append(PlanDiagnostic(file: path, line: context.mark.line, column: context.mark.column,
                message: "duplicate key\(duplicates.count > 1 ? "s" : "") \(duplicates.map { "'\($0)'" }.joined(separator: ", ")) in a mapping"))
        case .reader(let problem, let offset, let value, let yaml):
            // E.g. a control character: locate it (the offset counts characters) and name it.
            var (line, column) = (1, 1)
            for character in yaml.prefix(offset ?? 0) {
                (line, column) = character.isNewline ? (line + 1, 1) : (line, column + 1)
            }
            let hex = String(value, radix: 16, uppercase: true)
            let code = value >= 0 ? " (U+\(String(repeating: "0", count: max(0, 4 - hex.count)) + hex))" : ""
            diagnostics.append(PlanDiagnostic(file: path, line: line, column: column, message: "cannot read YAML: \(problem)\(code)"))
        default:
            diagnostics.append(PlanDiagnostic(file: path, line: 1, column: 1, message: "invalid YAML: \(error)"))
        }
    }
}
