import Foundation
import Yams

#if canImport(Glibc)
import Glibc
#endif

extension ExecPolicy {
    /// Reads a policy file (YAML, which JSON also is). The file must not be writable by other
    /// users: whoever can write it decides what jobs run.
    ///
    /// ```yaml
    /// work_dir: /var/lib/rota/jobs          # each job runs in work_dir/<key>-<hash> (0700)
    /// inherit_env: [LANG, TZ]               # worker variables every child gets
    /// programs:
    ///   - name: import                      # jobs: {"program": "import", "slots": {...}}
    ///     path: /opt/etl/bin/import
    ///     args: ["--source={source}", "--day", "{day}"]
    ///     slots:
    ///       source: "[a-z][a-z0-9_]{0,31}"  # a pattern, or {pattern, max_length, allow_leading_dash}
    ///       day: {pattern: "[0-9]{4}-[0-9]{2}-[0-9]{2}", max_length: 10}
    ///     env: {IMPORT_BATCH: "[0-9]{1,5}"} # what a job's env may set
    ///     set_env: {IMPORT_LOG: json}       # fixed by the operator
    ///     limits: {cpu_seconds: 3600, address_space_mb: 2048, open_files: 256, file_size_mb: 1024}
    /// ```
    ///
    /// Problems throw ``ServiceError/Code/invalidArgument`` whose message has one
    /// `FILE:LINE:COLUMN: error: …` line per problem.
    public static func load(path: String) throws(ServiceError) -> ExecPolicy {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw invalid("\(path): cannot read the exec policy: \(String(cString: strerror(errno)))")
        }
        guard info.st_mode & S_IFMT == S_IFREG, info.st_size <= 1 << 20 else {
            throw invalid("\(path): the exec policy must be a regular file of at most 1 MiB")
        }
        if info.st_mode & 0o022 != 0 {
            throw invalid("\(path): the exec policy is writable by other users (mode \(String(info.st_mode & 0o777, radix: 8))): whoever can write it decides what jobs run; chmod go-w it")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw invalid("\(path): cannot read the exec policy")
        }
        return try parse(String(decoding: data, as: UTF8.self), path: path)
    }

    /// Parses the text of a policy file (see ``load(path:)``); `path` names it in messages.
    public static func parse(_ text: String, path: String) throws(ServiceError) -> ExecPolicy {
        var reader = PolicyReader(path: path)
        let policy = reader.policy(text)
        guard reader.problems.isEmpty, let policy else {
            throw invalid(reader.problems.joined(separator: "\n"))
        }
        return policy
    }
}

/// Walks the YAML tree, collecting every problem with its place.
private struct PolicyReader {
    let path: String
    var problems: [String] = []

    init(path: String) { self.path = path }

    mutating func problem(_ node: Node?, _ message: String) {
        let mark = node?.mark
        problems.append("\(path):\(mark?.line ?? 1):\(mark?.column ?? 1): error: \(message)")
    }

    /// A ServiceError from a model check, placed at `node`.
    mutating func problem(_ node: Node?, _ error: ServiceError) {
        problem(node, error.message)
    }

    static let topFields = ["work_dir", "inherit_env", "programs"]
    static let programFields = ["name", "path", "args", "slots", "env", "set_env", "limits", "work_dir"]
    static let valueFields = ["pattern", "max_length", "allow_leading_dash"]
    static let limitFields = ["cpu_seconds", "address_space_mb", "open_files", "file_size_mb"]

    mutating func policy(_ text: String) -> ExecPolicy? {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            yamlError(error)
            return nil
        } catch {
            problem(nil, "invalid YAML: \(error)")
            return nil
        }
        guard let root, let mapping = root.mapping else {
            problem(root, "expected a mapping with 'programs:' (and optionally 'work_dir:', 'inherit_env:')")
            return nil
        }
        var workDirectory: String?
        var inherited = ExecPolicy.defaultInheritedEnvironment
        var programs: [ExecPolicy.Program] = []
        var sawPrograms = false
        for (key, value) in mapping {
            switch key.string {
            case "work_dir":
                guard let text = string(value, field: "work_dir") else { continue }
                do throws(ServiceError) {
                    try ExecPolicy.checkDirectory(text, field: "work_dir")
                    workDirectory = text
                } catch {
                    problem(value, error)
                }
            case "inherit_env":
                guard let list = value.sequence else {
                    problem(value, "'inherit_env' must be a list of variable names, e.g. [LANG, TZ]")
                    continue
                }
                inherited = []
                for item in list {
                    guard let name = string(item, field: "inherit_env") else { continue }
                    guard ExecPolicy.isVariableName(name) else {
                        problem(item, "'\(name)' is not a variable name (letters, digits, '_'; not starting with a digit)")
                        continue
                    }
                    inherited.append(name)
                }
            case "programs":
                sawPrograms = true
                guard let list = value.sequence else {
                    problem(value, "'programs' must be a list")
                    continue
                }
                for (index, item) in list.enumerated() {
                    if let program = program(item, index: index) { programs.append(program) }
                }
            default:
                unknown(key, allowed: Self.topFields)
            }
        }
        if !sawPrograms { problem(root, "missing 'programs:' (a list of the programs jobs may run)") }
        guard problems.isEmpty else { return nil }
        do throws(ServiceError) {
            return try ExecPolicy(programs: programs, workDirectory: workDirectory, inheritedEnvironment: inherited)
        } catch {
            problem(root, error)
            return nil
        }
    }

    mutating func program(_ node: Node, index: Int) -> ExecPolicy.Program? {
        guard let mapping = node.mapping else {
            problem(node, "programs[\(index)] must be a mapping with at least 'path:'")
            return nil
        }
        let before = problems.count
        var name: String?
        var path: String?
        var arguments: [String] = []
        var argumentNodes: [Node] = []
        var slots: [String: ExecPolicy.Value] = [:]
        var environment: [String: ExecPolicy.Value] = [:]
        var fixed: [String: String] = [:]
        var limits = ExecPolicy.Limits()
        var workDirectory: String?
        for (key, value) in mapping {
            switch key.string {
            case "name":
                name = string(value, field: "name")
                if let given = name { check(value) { () throws(ServiceError) in try ExecPolicy.Program.checkName(given) } }
            case "path":
                path = string(value, field: "path")
                if let given = path { check(value) { () throws(ServiceError) in try ExecPolicy.Program.checkPath(given, named: false) } }
            case "args":
                guard let list = value.sequence else {
                    problem(value, "'args' must be a list of strings (the argument template), e.g. [\"--day\", \"{day}\"]")
                    continue
                }
                for item in list {
                    guard let text = string(item, field: "args") else { continue }
                    check(item) { () throws(ServiceError) in _ = try TemplateArgument(parsing: text) }
                    arguments.append(text)
                    argumentNodes.append(item)
                }
            case "slots":
                slots = values(value, field: "slots")
            case "env":
                environment = values(value, field: "env")
            case "set_env":
                guard let entries = value.mapping else {
                    problem(value, "'set_env' must be a mapping of variable names to values")
                    continue
                }
                for (variable, text) in entries {
                    guard let variableName = string(variable, field: "set_env"), let fixedValue = string(text, field: variableName) else { continue }
                    fixed[variableName] = fixedValue
                }
            case "limits":
                limits = self.limits(value)
            case "work_dir":
                workDirectory = string(value, field: "work_dir")
            default:
                unknown(key, allowed: Self.programFields)
            }
        }
        guard let path else {
            if problems.count == before { problem(node, "programs[\(index)]: missing 'path:' (the program's absolute path)") }
            return nil
        }
        guard problems.count == before else { return nil }
        do throws(ServiceError) {
            return try ExecPolicy.Program(
                name: name, path: path, arguments: arguments, slots: slots, environment: environment, fixedEnvironment: fixed,
                limits: limits, workDirectory: workDirectory, origin: "\(self.path):\(node.mark?.line ?? 1)"
            )
        } catch {
            // Cross-field problems (a slot the template does not use…): placed at the program.
            problem(node, "programs[\(index)]\(name.map { " (\($0))" } ?? ""): \(error.message)")
            return nil
        }
    }

    /// A mapping of names to values (`slots`, `env`).
    mutating func values(_ node: Node, field: String) -> [String: ExecPolicy.Value] {
        guard let mapping = node.mapping else {
            problem(node, "'\(field)' must be a mapping of names to patterns, e.g. {day: \"[0-9]{4}-[0-9]{2}-[0-9]{2}\"}")
            return [:]
        }
        var result: [String: ExecPolicy.Value] = [:]
        for (key, value) in mapping {
            guard let name = string(key, field: field), let parsed = self.value(value, field: "\(field).\(name)") else { continue }
            result[name] = parsed
        }
        return result
    }

    /// A pattern string, or `{pattern, max_length, allow_leading_dash}`.
    mutating func value(_ node: Node, field: String) -> ExecPolicy.Value? {
        var pattern: String?
        var maxLength = ExecPolicy.Value.defaultMaxLength
        var allowsDash = false
        var patternNode = node
        switch node {
        case .scalar(let scalar):
            pattern = scalar.string
        case .mapping(let mapping):
            for (key, value) in mapping {
                switch key.string {
                case "pattern":
                    pattern = string(value, field: "\(field).pattern")
                    patternNode = value
                case "max_length":
                    guard let number = integer(value, field: "\(field).max_length") else { continue }
                    maxLength = number
                case "allow_leading_dash":
                    guard let flag = boolean(value, field: "\(field).allow_leading_dash") else { continue }
                    allowsDash = flag
                default:
                    unknown(key, allowed: Self.valueFields)
                }
            }
            if pattern == nil { problem(node, "\(field): missing 'pattern:'") }
        default:
            problem(node, "\(field) must be a quoted pattern (e.g. \"[0-9]+\"; unquoted [..] is a YAML list) or a mapping with 'pattern:'")
        }
        guard let pattern else { return nil }
        do throws(ServiceError) {
            return try ExecPolicy.Value(pattern: pattern, maxLength: maxLength, allowsLeadingDash: allowsDash)
        } catch {
            problem(patternNode, "\(field): \(error.message)")
            return nil
        }
    }

    mutating func limits(_ node: Node) -> ExecPolicy.Limits {
        var limits = ExecPolicy.Limits()
        guard let mapping = node.mapping else {
            problem(node, "'limits' must be a mapping, e.g. {cpu_seconds: 3600, open_files: 256}")
            return limits
        }
        let mebibyte = 1 << 20
        for (key, value) in mapping {
            guard let name = key.string, Self.limitFields.contains(name) else {
                unknown(key, allowed: Self.limitFields)
                continue
            }
            guard let number = integer(value, field: "limits.\(name)") else { continue }
            let bound = 1 << 40
            guard (1...bound).contains(number) else {
                problem(value, "limits.\(name) must be from 1 to \(bound)")
                continue
            }
            switch name {
            case "cpu_seconds": limits.cpuSeconds = number
            case "address_space_mb": limits.addressSpaceBytes = number * mebibyte
            case "open_files": limits.openFiles = number
            default: limits.fileSizeBytes = number * mebibyte
            }
        }
        return limits
    }

    mutating func yamlError(_ error: YamlError) {
        switch error {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            problems.append("\(path):\(mark.line):\(mark.column): error: YAML syntax error: \(context.map { "\(problem) \($0.text)" } ?? problem)")
        case .duplicatedKeysInMapping(let duplicates, let context):
            problems.append("\(path):\(context.mark.line):\(context.mark.column): error: duplicate key \(duplicates.map { "'\($0)'" }.joined(separator: ", ")) in a mapping")
        default:
            problem(nil, "invalid YAML: \(error)")
        }
    }

    mutating func check(_ node: Node, _ body: () throws(ServiceError) -> Void) {
        do throws(ServiceError) {
            try body()
        } catch {
            problem(node, error)
        }
    }

    mutating func unknown(_ key: Node, allowed: [String]) {
        problem(key, "unknown field '\(key.string ?? "?")'; expected one of: \(allowed.joined(separator: ", "))")
    }

    mutating func string(_ node: Node, field: String) -> String? {
        guard let scalar = node.scalar else {
            problem(node, "'\(field)' must be a single value, not a list or mapping")
            return nil
        }
        return scalar.string
    }

    /// A decimal integer, nothing YAML 1.1 reads as one otherwise (`0x10`, `1:30`).
    mutating func integer(_ node: Node, field: String) -> Int? {
        guard let text = string(node, field: field) else { return nil }
        guard let number = Int(text, radix: 10) else {
            problem(node, "'\(field)' must be a whole number")
            return nil
        }
        return number
    }

    mutating func boolean(_ node: Node, field: String) -> Bool? {
        switch string(node, field: field) {
        case "true": return true
        case "false": return false
        case nil: return nil
        default:
            problem(node, "'\(field)' must be true or false")
            return nil
        }
    }
}
