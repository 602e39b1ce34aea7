import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What the `exec` handler may run: per program, the arguments and the environment variables a
/// job's payload may choose. Whatever a program does not declare is refused before anything is
/// spawned: this is an allow-list, and it is the boundary between whoever writes job payloads
/// (plan files, `rota dispatch`) and the worker's host.
///
/// A job names a program in one of two ways (``ExecSpec``):
/// - by ``Program/name``, filling its slots: `{"program": "import", "slots": {"source": "crm"}}`;
///   the worker builds the arguments from the program's template;
/// - by path, giving the whole argument list: `{"command": "/usr/bin/sleep", "args": ["30"]}`;
///   the list must match the template of a program declared for that path, element by element:
///   literal text exactly, each slot with its constraints. Programs are tried in declaration
///   order and the first that accepts the arguments and environment runs.
///
/// Written by an operator as a YAML file (``load(path:)``; `rota run|worker --exec-policy FILE`,
/// README "The exec handler"), or built in code.
public struct ExecPolicy: Sendable {
    /// The programs, in declaration order.
    public let programs: [Program]
    /// The directory under which each job gets a working directory of its own
    /// (`BASE/<key>-<hash>`, created mode 0700); a program's own ``Program/workDirectory``
    /// overrides it. nil: children start in `/`.
    public let workDirectory: String?
    /// Variables of the worker's own environment passed to every child (besides `PATH`, always the
    /// worker's search path). Nothing else of the worker's environment is inherited: its secrets
    /// (a Redis password, tokens) never reach a job unless listed here.
    public let inheritedEnvironment: [String]

    /// `LANG`, `LC_ALL`, `TZ`, `HOME`.
    public static let defaultInheritedEnvironment = ["LANG", "LC_ALL", "TZ", "HOME"]

    /// Checks the whole: program names unique, directories absolute, variable names valid.
    public init(programs: [Program], workDirectory: String? = nil, inheritedEnvironment: [String] = defaultInheritedEnvironment) throws(ServiceError) {
        var names: [String: String] = [:]
        for program in programs {
            guard let name = program.name else { continue }
            if let first = names[name] {
                throw Self.invalid("program name '\(name)' is declared twice (\(first) and \(program.origin))")
            }
            names[name] = program.origin
        }
        if let workDirectory { try Self.checkDirectory(workDirectory, field: "work_dir") }
        for name in inheritedEnvironment where !Self.isVariableName(name) {
            throw Self.invalid("inherit_env: '\(name)' is not a variable name (letters, digits, '_'; not starting with a digit)")
        }
        self.programs = programs
        self.workDirectory = workDirectory
        self.inheritedEnvironment = inheritedEnvironment
    }

    /// The `--allow-exec` form: each pattern a program that runs without arguments or environment
    /// from the job.
    public init(allowing patterns: [String]) throws(ServiceError) {
        var programs: [Program] = []
        for pattern in patterns { programs.append(try Program(allowing: pattern)) }
        try self.init(programs: programs)
    }

    /// This policy with `others` appended (`--allow-exec` beside `--exec-policy`).
    public func adding(_ others: [Program]) throws(ServiceError) -> ExecPolicy {
        try ExecPolicy(programs: programs + others, workDirectory: workDirectory, inheritedEnvironment: inheritedEnvironment)
    }

    static func invalid(_ message: String) -> ServiceError {
        ServiceError(.invalidArgument, message)
    }

    static func isVariableName(_ name: String) -> Bool {
        guard let first = name.utf8.first, !(UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first), name.utf8.count <= 256 else { return false }
        return name.utf8.allSatisfy { $0 == UInt8(ascii: "_") || isASCIIAlphanumeric($0) }
    }

    static func isASCIIAlphanumeric(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
            || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }

    static func checkDirectory(_ path: String, field: String) throws(ServiceError) {
        let components = path.split(separator: "/")
        guard path.hasPrefix("/"), !path.utf8.contains(0), !components.contains(where: { $0 == "." || $0 == ".." }) else {
            throw invalid("\(field) '\(path)' must be an absolute path without '.' or '..' components")
        }
    }

    /// Environment variables a policy may not let payloads set, even when declared: they make a
    /// program load other code or configuration. A safety net under the allow-list, for operator
    /// mistakes; a fixed value (``Program/fixedEnvironment``) may set them.
    static let unsettableVariables: Set<String> = [
        "PATH", "GCONV_PATH", "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "IFS", "CDPATH", "GLOBIGNORE",
        "LOCPATH", "NLSPATH", "HOSTALIASES", "RES_OPTIONS", "MALLOC_TRACE", "GLIBC_TUNABLES", "PERL5OPT", "PERL5LIB",
        "PERLLIB", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONINSPECT", "PYTHONUSERBASE", "RUBYOPT", "RUBYLIB",
        "NODE_OPTIONS", "NODE_PATH", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH",
        "OPENSSL_CONF", "OPENSSL_MODULES", "OPENSSL_ENGINES", "GIT_EXEC_PATH", "GIT_SSH", "GIT_SSH_COMMAND",
        "GIT_ASKPASS", "SSH_ASKPASS", "GIT_TEMPLATE_DIR", "EDITOR", "VISUAL", "PAGER", "XDG_CONFIG_HOME", "XDG_CONFIG_DIRS",
    ]
    static let unsettablePrefixes = ["LD_", "BASH_FUNC_", "DYLD_", "GIT_CONFIG"]

    static func isUnsettable(_ name: String) -> Bool {
        unsettableVariables.contains(name) || unsettablePrefixes.contains(where: name.hasPrefix)
    }
}

extension ExecPolicy {
    /// One program and what a job may pass it.
    public struct Program: Sendable {
        /// The name a job's `program` field uses; nil: jobs reach it by path only.
        public let name: String?
        /// An absolute path; a glob (`fnmatch(3)` with `FNM_PATHNAME | FNM_PERIOD`) only for
        /// programs without a name. A job's command matches when its resolved absolute path or
        /// that path's `realpath` matches; the `realpath` is what runs.
        public let path: String
        /// The argument template, one element per argument (`argv[1...]`): literal text with at
        /// most one `{slot}` per element (`{{` and `}}` are literal braces), e.g.
        /// `["--source={source}", "--", "{file}"]`.
        public let arguments: [String]
        /// What a job may put in each slot; every slot must be used in ``arguments``.
        public let slots: [String: Value]
        /// The variables a job's `env` may set, with what it may set them to.
        public let environment: [String: Value]
        /// Variables set by the operator for every run of this program (after the inherited ones).
        public let fixedEnvironment: [String: String]
        /// Resource limits of the child (inherited by what it starts).
        public let limits: Limits
        /// Overrides the policy's ``ExecPolicy/workDirectory``.
        public let workDirectory: String?
        /// Where it was declared (`FILE:LINE`, `--allow-exec`), for messages.
        public let origin: String
        let template: [TemplateArgument]

        /// Checks the declaration: a valid name, an absolute path (a glob only without a name),
        /// templates that parse and use exactly the declared slots, variable names, no loader
        /// variable among those a job may set, positive limits.
        public init(
            name: String? = nil, path: String, arguments: [String] = [], slots: [String: Value] = [:],
            environment: [String: Value] = [:], fixedEnvironment: [String: String] = [:], limits: Limits = Limits(),
            workDirectory: String? = nil, origin: String? = nil
        ) throws(ServiceError) {
            let origin = origin ?? name.map { "program '\($0)'" } ?? path
            if let name { try Self.checkName(name) }
            try Self.checkPath(path, named: name != nil)
            var template: [TemplateArgument] = []
            for element in arguments { template.append(try TemplateArgument(parsing: element)) }
            let used = Set(template.compactMap(\.slot))
            if let undeclared = used.subtracting(slots.keys).sorted().first {
                throw ExecPolicy.invalid("the arguments use the slot '{\(undeclared)}', which 'slots' does not declare")
            }
            if let unused = Set(slots.keys).subtracting(used).sorted().first {
                throw ExecPolicy.invalid("the slot '\(unused)' is declared but no argument uses it")
            }
            for name in environment.keys.sorted() {
                try Self.checkVariable(name)
                if ExecPolicy.isUnsettable(name) {
                    throw ExecPolicy.invalid("jobs may not set \(name): it changes which code or configuration a program loads (set a fixed value with set_env instead)")
                }
                if fixedEnvironment[name] != nil {
                    throw ExecPolicy.invalid("\(name) is both in env (set by jobs) and in set_env (fixed)")
                }
            }
            for (name, value) in fixedEnvironment.sorted(by: { $0.key < $1.key }) {
                try Self.checkVariable(name)
                guard !value.utf8.contains(0) else { throw ExecPolicy.invalid("set_env \(name) contains a NUL character") }
            }
            try limits.check()
            if let workDirectory { try ExecPolicy.checkDirectory(workDirectory, field: "work_dir") }
            self.name = name
            self.path = path
            self.arguments = arguments
            self.slots = slots
            self.environment = environment
            self.fixedEnvironment = fixedEnvironment
            self.limits = limits
            self.workDirectory = workDirectory
            self.origin = origin
            self.template = template
        }

        /// A program from `--allow-exec PATTERN`: no arguments, no environment from the job.
        public init(allowing pattern: String) throws(ServiceError) {
            guard pattern.hasPrefix("/") else {
                throw ExecPolicy.invalid("exec allow-list pattern '\(pattern)' must be an absolute path (globs allowed, e.g. /usr/bin/*)")
            }
            try self.init(path: pattern, origin: "--allow-exec \(pattern)")
        }

        static func checkName(_ name: String) throws(ServiceError) {
            guard (1...64).contains(name.utf8.count),
                name.utf8.allSatisfy({ ExecPolicy.isASCIIAlphanumeric($0) || "_-.".utf8.contains($0) })
            else {
                throw ExecPolicy.invalid("program name '\(name)' must be 1-64 letters, digits, '_', '-' or '.'")
            }
        }

        static func checkPath(_ path: String, named: Bool) throws(ServiceError) {
            let components = path.split(separator: "/")
            guard path.hasPrefix("/"), !path.utf8.contains(0), !components.isEmpty,
                !components.contains(where: { $0 == "." || $0 == ".." })
            else {
                throw ExecPolicy.invalid("path '\(path)' must be an absolute path to a program without '.' or '..' components")
            }
            if named, path.contains(where: { "*?[\\".contains($0) }) {
                throw ExecPolicy.invalid("path '\(path)': a program with a name runs one executable, so its path cannot be a glob")
            }
        }

        static func checkVariable(_ name: String) throws(ServiceError) {
            guard ExecPolicy.isVariableName(name) else {
                throw ExecPolicy.invalid("'\(name)' is not a variable name (letters, digits, '_'; not starting with a digit)")
            }
        }

        /// Whether a job's command (absolute, lexically clean) is this program.
        func matches(path candidate: String) -> Bool {
            fnmatch(path, candidate, FNM_PATHNAME | FNM_PERIOD) == 0
        }

        /// Why the job's argument list does not fit the template, nil when it does.
        func refusal(arguments given: [String]) -> String? {
            guard given.count == template.count else {
                if template.isEmpty {
                    return origin.hasPrefix("--allow-exec")
                        ? "it runs without arguments (--allow-exec allows no arguments or environment; declare them in an --exec-policy file)"
                        : "it takes no arguments from a job"
                }
                return "it takes \(template.count) argument\(template.count == 1 ? "" : "s") (\(arguments.map(quoted).joined(separator: " "))), not \(given.count)"
            }
            var bound: [String: String] = [:]
            for (index, (element, argument)) in zip(template, given).enumerated() {
                if let reason = element.refusal(argument, slots: slots, bound: &bound) {
                    return "argument \(index + 1) \(quoted(argument)) \(reason)"
                }
            }
            return nil
        }

        /// The arguments with the job's slot values filled in, or why they cannot be.
        func fill(_ values: [String: String]) -> Result<[String], ServiceError> {
            if let unknown = values.keys.sorted().first(where: { slots[$0] == nil }) {
                let known = slots.keys.sorted().joined(separator: ", ")
                return .failure(refused("the job gives the slot '\(unknown)', which it does not have (\(known.isEmpty ? "it has no slots" : "slots: \(known)"))"))
            }
            for name in slots.keys.sorted() {
                guard let value = values[name] else { return .failure(refused("the job does not give the slot '\(name)'")) }
                if let reason = slots[name]?.refusal(value) {
                    return .failure(refused("slot '\(name)' \(quoted(value)) \(reason)"))
                }
            }
            return .success(template.map { $0.filled(values) })
        }

        /// Why the job's environment is not allowed, nil when it is.
        func refusal(environment given: [String: String]) -> String? {
            for (name, value) in given.sorted(by: { $0.key < $1.key }) {
                guard let rule = environment[name] else {
                    let allowed = environment.keys.sorted().joined(separator: ", ")
                    return "the job may not set the environment variable \(name) (\(allowed.isEmpty ? "it may set none" : "it may set: \(allowed)"))"
                }
                if let reason = rule.refusal(value) { return "the environment variable \(name) \(quoted(value)) \(reason)" }
            }
            return nil
        }

        func refused(_ reason: String) -> ServiceError {
            let described = name.map { "program '\($0)'" } ?? path
            return ServiceError(.execNotAllowed, "exec: \(described)\(origin == described ? "" : " (\(origin))") refuses the job: \(reason)")
        }
    }

    /// What a job may put in a slot or an environment variable.
    public struct Value: Sendable, Hashable {
        /// A regular expression (Swift `Regex` syntax) the whole value must match. `.` does not
        /// match a newline; `\d` and `\w` match any script's digits and letters, so prefer
        /// `[0-9]` and `[A-Za-z]`.
        public let pattern: String
        /// At most this many bytes (UTF-8).
        public let maxLength: Int
        /// Whether a value may start with `-` (never by default: it would read as an option).
        public let allowsLeadingDash: Bool

        /// The default ``maxLength``.
        public static let defaultMaxLength = 256

        /// Throws when the pattern does not compile or a bound is out of range.
        public init(pattern: String, maxLength: Int = defaultMaxLength, allowsLeadingDash: Bool = false) throws(ServiceError) {
            guard (1...1000).contains(pattern.utf8.count) else {
                throw ExecPolicy.invalid("the pattern must have 1 to 1000 characters")
            }
            do {
                _ = try Regex(pattern)
            } catch {
                throw ExecPolicy.invalid("the pattern \(quoted(pattern)) is not a valid regular expression: \(error)")
            }
            guard (1...65_536).contains(maxLength) else { throw ExecPolicy.invalid("max_length must be 1 to 65536") }
            self.pattern = pattern
            self.maxLength = maxLength
            self.allowsLeadingDash = allowsLeadingDash
        }

        /// Why `value` is refused, nil when it is allowed.
        func refusal(_ value: String) -> String? {
            if value.utf8.contains(0) { return "contains a NUL character" }
            if value.utf8.count > maxLength { return "is longer than \(maxLength) bytes" }
            if !allowsLeadingDash, value.hasPrefix("-") { return "starts with '-' (the slot does not allow a leading '-')" }
            // Whatever the pattern says: a value never climbs out of a directory.
            if value.split(separator: "/", omittingEmptySubsequences: false).contains("..") { return "has a '..' path component" }
            guard let regex = try? Regex(pattern), (try? regex.wholeMatch(in: value)) != nil else {
                return "does not match the pattern \(quoted(pattern))"
            }
            return nil
        }
    }

    /// Resource limits applied with `setrlimit` (soft and hard) in the child before it runs: they
    /// hold per process, and each process it starts inherits them.
    public struct Limits: Sendable, Hashable {
        /// CPU seconds (`RLIMIT_CPU`): SIGXCPU at the limit, SIGKILL a second later.
        public var cpuSeconds: Int?
        /// Virtual memory (`RLIMIT_AS`): allocations beyond it fail.
        public var addressSpaceBytes: Int?
        /// Open descriptors (`RLIMIT_NOFILE`).
        public var openFiles: Int?
        /// The largest file it may write (`RLIMIT_FSIZE`): SIGXFSZ beyond it.
        public var fileSizeBytes: Int?

        /// nil leaves a limit as the worker has it.
        public init(cpuSeconds: Int? = nil, addressSpaceBytes: Int? = nil, openFiles: Int? = nil, fileSizeBytes: Int? = nil) {
            self.cpuSeconds = cpuSeconds
            self.addressSpaceBytes = addressSpaceBytes
            self.openFiles = openFiles
            self.fileSizeBytes = fileSizeBytes
        }

        /// The limits in the guard's order (see ExecGuard.c), nil where unset.
        var ordered: [(name: String, value: Int?, resource: Int32)] {
            [
                ("cpu_seconds", cpuSeconds, Int32(RLIMIT_CPU.rawValue)),
                ("address_space_mb", addressSpaceBytes, Int32(RLIMIT_AS.rawValue)),
                ("open_files", openFiles, Int32(RLIMIT_NOFILE.rawValue)),
                ("file_size_mb", fileSizeBytes, Int32(RLIMIT_FSIZE.rawValue)),
            ]
        }

        func check() throws(ServiceError) {
            for (name, value, _) in ordered {
                if let value, value <= 0 { throw ExecPolicy.invalid("limits.\(name) must be positive") }
            }
        }
    }
}

/// One element of an argument template: literal text around at most one slot.
struct TemplateArgument: Sendable, Hashable {
    var prefix: String
    var slot: String?
    var suffix: String

    /// Parses `text{slot}text`; `{{` and `}}` are literal braces.
    init(parsing element: String) throws(ServiceError) {
        var literal = ""
        var prefix: String?
        var slot: String?
        var characters = element.unicodeScalars.makeIterator()
        var pending = characters.next()
        while let scalar = pending {
            pending = characters.next()
            switch scalar {
            case "{" where pending == "{", "}" where pending == "}":
                literal.unicodeScalars.append(scalar)
                pending = characters.next()
            case "{":
                var name = ""
                while let next = pending, next != "}" {
                    name.unicodeScalars.append(next)
                    pending = characters.next()
                }
                guard pending == "}" else {
                    throw ExecPolicy.invalid("argument \(quoted(element)): '{' without a closing '}' (write '{{' for a literal brace)")
                }
                pending = characters.next()
                guard ExecPolicy.isVariableName(name), name.utf8.count <= 64 else {
                    throw ExecPolicy.invalid("argument \(quoted(element)): '{\(name)}' is not a slot name (letters, digits, '_')")
                }
                guard slot == nil else {
                    throw ExecPolicy.invalid("argument \(quoted(element)) has more than one slot: give each slot an argument of its own, or one slot whose pattern covers the whole value")
                }
                slot = name
                prefix = literal
                literal = ""
            case "}":
                throw ExecPolicy.invalid("argument \(quoted(element)): '}' without an opening '{' (write '}}' for a literal brace)")
            default:
                literal.unicodeScalars.append(scalar)
            }
        }
        guard !element.utf8.contains(0) else { throw ExecPolicy.invalid("argument \(quoted(element)) contains a NUL character") }
        if let prefix {
            (self.prefix, self.slot, self.suffix) = (prefix, slot, literal)
        } else {
            (self.prefix, self.slot, self.suffix) = (literal, nil, "")
        }
    }

    func filled(_ values: [String: String]) -> String {
        guard let slot else { return prefix }
        return prefix + (values[slot] ?? "") + suffix
    }

    /// Why `argument` is not this element (its slot bound to the value inside), nil when it is.
    /// Compared byte for byte: no Unicode equivalence between what was checked and what runs.
    func refusal(_ argument: String, slots: [String: ExecPolicy.Value], bound: inout [String: String]) -> String? {
        let bytes = Array(argument.utf8), head = Array(prefix.utf8), tail = Array(suffix.utf8)
        guard let slot else {
            return bytes == head ? nil : "must be \(quoted(prefix))"
        }
        guard bytes.count >= head.count + tail.count, bytes.starts(with: head), bytes.reversed().starts(with: tail.reversed()) else {
            return "does not have the form \(quoted(prefix + "{" + slot + "}" + suffix))"
        }
        let value = String(decoding: bytes[head.count..<(bytes.count - tail.count)], as: UTF8.self)
        if let earlier = bound[slot] {
            return earlier.utf8.elementsEqual(value.utf8) ? nil : "must repeat the slot '\(slot)' as given before (\(quoted(earlier)))"
        }
        if let reason = slots[slot]?.refusal(value) { return "does not fit the slot '\(slot)': \(quoted(value)) \(reason)" }
        bound[slot] = value
        return nil
    }
}

/// `text` quoted for a message: escapes for control characters, at most 80 characters.
func quoted(_ text: String) -> String {
    let shown = text.count > 80 ? String(text.prefix(80)) + "…" : text
    return String(reflecting: shown)
}
