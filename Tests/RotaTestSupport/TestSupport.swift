import Foundation

/// Polls `condition` until it holds or the deadline passes. Tests wait on state this way (or on
/// events), never by sleeping and hoping.
public func eventually(
    _ what: String,
    timeout: Duration = .seconds(10),
    _ condition: () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if (try? await condition()) == true { return }
        try await Task.sleep(for: .milliseconds(10))
    }
    throw TestFailure("timed out after \(timeout) waiting for: \(what)")
}

/// A test-side failure with a message.
public struct TestFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Runs `body` and returns the error it threw, or nil.
public func caught(_ body: () async throws -> Void) async -> (any Error)? {
    do {
        try await body()
        return nil
    } catch {
        return error
    }
}
