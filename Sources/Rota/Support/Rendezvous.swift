import Synchronization

/// Matches values to waiters by ID, whichever comes first.
///
/// A dispatcher learns its pool event's ID only when `XADD` replies, and under load the start
/// result can be read from the inbox before the dispatching task has run again; a routing node
/// can likewise read a worker's ack before it recorded the event it forwarded. Values that arrive
/// early are kept (up to `capacity`, oldest dropped first) until their waiter registers.
final class Rendezvous<Value: Sendable>: Sendable {
    private enum Entry {
        case waiting(CheckedContinuation<Value, any Error>)
        case arrived(Value, ContinuousClock.Instant)
    }

    private struct State {
        var entries: [String: Entry] = [:]
        var early: [(id: String, at: ContinuousClock.Instant)] = []
        var failure: (any Error)?
    }

    private let state = Mutex(State())
    let capacity: Int
    let earlyLifetime: Duration

    init(capacity: Int = 10_000, earlyLifetime: Duration = .seconds(120)) {
        self.capacity = capacity
        self.earlyLifetime = earlyLifetime
    }

    /// Hands `value` to the waiter for `id`, or keeps it for one that comes later.
    /// Returns false if it was kept rather than delivered.
    @discardableResult
    func deliver(_ id: String, _ value: Value) -> Bool {
        let waiter = state.withLock { state -> CheckedContinuation<Value, any Error>? in
            if case .waiting(let continuation)? = state.entries[id] {
                state.entries.removeValue(forKey: id)
                return continuation
            }
            let now = ContinuousClock.now
            state.entries[id] = .arrived(value, now)
            state.early.append((id, now))
            prune(&state, now: now)
            return nil
        }
        waiter?.resume(returning: value)
        return waiter != nil
    }

    /// Removes and returns a value that arrived before anyone waited for it.
    func take(_ id: String) -> Value? {
        state.withLock { state in
            guard case .arrived(let value, _)? = state.entries[id] else { return nil }
            state.entries.removeValue(forKey: id)
            return value
        }
    }

    /// Waits for the value of `id`. Cancellation removes the waiter and throws `CancellationError`.
    func wait(_ id: String) async throws -> Value {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Value, any Error>) in
                let now: Result<Value, any Error>? = state.withLock { state in
                    if let failure = state.failure { return .failure(failure) }
                    if case .arrived(let value, _)? = state.entries[id] {
                        state.entries.removeValue(forKey: id)
                        return .success(value)
                    }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    state.entries[id] = .waiting(continuation)
                    return nil
                }
                if let now { continuation.resume(with: now) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Value, any Error>? in
                guard case .waiting(let continuation)? = state.entries[id] else { return nil }
                state.entries.removeValue(forKey: id)
                return continuation
            }
            waiter?.resume(throwing: CancellationError())
        }
    }

    /// Fails every waiter, present and future (the node closed).
    func fail(with error: any Error) {
        let waiters = state.withLock { state -> [CheckedContinuation<Value, any Error>] in
            state.failure = error
            var waiters: [CheckedContinuation<Value, any Error>] = []
            for (_, entry) in state.entries {
                if case .waiting(let continuation) = entry { waiters.append(continuation) }
            }
            state.entries = [:]
            state.early = []
            return waiters
        }
        for waiter in waiters { waiter.resume(throwing: error) }
    }

    var waitingCount: Int {
        state.withLock { state in
            state.entries.values.reduce(0) { count, entry in
                if case .waiting = entry { return count + 1 }
                return count
            }
        }
    }

    private func prune(_ state: inout State, now: ContinuousClock.Instant) {
        while let first = state.early.first, state.early.count > capacity || now - first.at > earlyLifetime {
            if case .arrived(_, let at)? = state.entries[first.id], at == first.at {
                state.entries.removeValue(forKey: first.id)
            }
            state.early.removeFirst()
        }
    }
}
