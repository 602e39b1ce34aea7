import Foundation

/// One validated plan file: which producers exist and which long-running jobs each wants running.
public struct PlanFile: Sendable, Hashable {
    /// The file the plan came from, as given to the parser (used in diagnostics and history).
    public var path: String
    /// The pool named in the file, if any (the CLI's `--pool` applies otherwise).
    public var pool: String?
    public var producers: [ProducerDefinition]
}

/// A producer: plans its jobs every `interval`, in its time zone.
public struct ProducerDefinition: Sendable, Hashable {
    /// How a plan treats running jobs it does not list.
    public enum Mode: String, Sendable, Hashable, Codable {
        /// Jobs this producer started that are not desired now are stopped (stop-all semantics).
        case exact
        /// Only the keys listed under `stop:` are stopped.
        case additive
    }

    public var name: String
    public var interval: Duration
    public var mode: Mode
    /// IANA identifier, e.g. `Europe/Paris`.
    public var timeZone: String
    public var jobs: [JobDefinition]
    /// Keys to stop (additive mode only).
    public var stop: [String]
}

/// A job a producer wants running, optionally only inside a cron window and between bounds.
public struct JobDefinition: Sendable, Hashable {
    public var key: String
    /// The worker-side handler name.
    public var handler: String
    /// The payload as canonical JSON bytes (sorted keys, no insignificant whitespace), so an
    /// unchanged payload always has the same bytes and hash.
    public var payload: [UInt8]
    /// The window during which the job should run; nil means always.
    public var active: CronExpression?
    /// Bounds: desired from `from` (inclusive) until `until` (exclusive).
    public var from: Date?
    public var until: Date?

    /// Whether the job should be running at `instant`, on the producer's wall clock.
    public func isDesired(at instant: Date, in zone: TimeZone) -> Bool {
        if let from, instant < from { return false }
        if let until, instant >= until { return false }
        return active?.isActive(at: instant, in: zone) ?? true
    }
}

/// One problem found in a plan file, located by line and column (1-based).
public struct PlanDiagnostic: Sendable, Hashable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int
    public var message: String

    public init(file: String, line: Int, column: Int, message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.message = message
    }

    /// `FILE:LINE:COLUMN: error: MESSAGE`, the format compilers use, so editors can jump to it.
    public var description: String { "\(file):\(line):\(column): error: \(message)" }
}

/// Every problem found in one or more plan files: validation reports them all at once.
public struct PlanValidationError: Error, Sendable, CustomStringConvertible {
    public var diagnostics: [PlanDiagnostic]

    public init(_ diagnostics: [PlanDiagnostic]) { self.diagnostics = diagnostics }

    public var description: String { diagnostics.map(\.description).joined(separator: "\n") }
}
