import Synchronization

/// A one-shot event: waiters resume once it is opened (with success or an error); later waiters
/// resume at once. Used for readiness and "closed" signals.
final class Latch: Sendable {
    private struct State {
        var result: Result<Void, any Error>?
        var waiters: [CheckedContinuation<Void, any Error>] = []
    }

    private let state = Mutex(State())

    var isOpen: Bool { state.withLock { $0.result != nil } }

    /// Opens the latch; only the first call counts.
    func open(_ result: Result<Void, any Error> = .success(())) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, any Error>] in
            guard state.result == nil else { return [] }
            state.result = result
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(with: result) }
    }

    func wait() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let result = state.withLock { state -> Result<Void, any Error>? in
                if let result = state.result { return result }
                state.waiters.append(continuation)
                return nil
            }
            if let result { continuation.resume(with: result) }
        }
    }

    /// Waits without throwing; returns when the latch opens either way.
    func settle() async {
        _ = try? await wait()
    }
}

/// A set of loops run inside the caller's task (`run`) that another task can stop and wait for
/// (`stop`). Node and worker loops use it so that Close can stop them in a given order while the
/// rest of the node (its replicated maps) keeps running.
final class LoopGroup: Sendable {
    private struct State {
        var stopRequested = false
        var started = false
        var stopper: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())
    private let finished = Latch()

    /// Runs every loop until `stop()` or cancellation. A loop that returns or throws does not stop
    /// the others (each loop handles its own errors and retries). Returns at once if already stopped.
    func run(_ loops: [@Sendable () async -> Void]) async {
        let proceed = state.withLock { state -> Bool in
            guard !state.stopRequested, !state.started else { return false }
            state.started = true
            return true
        }
        guard proceed else {
            finished.open()
            return
        }
        await withDiscardingTaskGroup { group in
            for loop in loops { group.addTask { await loop() } }
            // Waits for stop(); cancellation of the group (a crash, or stop) ends it too.
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let resumeNow = state.withLock { state -> Bool in
                        if state.stopRequested || Task.isCancelled { return true }
                        state.stopper = continuation
                        return false
                    }
                    if resumeNow { continuation.resume() }
                }
            } onCancel: {
                state.withLock { state -> CheckedContinuation<Void, Never>? in
                    defer { state.stopper = nil }
                    return state.stopper
                }?.resume()
            }
            group.cancelAll()
        }
        finished.open()
    }

    /// Stops the loops and waits until they have ended. Safe to call more than once and before `run`.
    func stop() async {
        let (stopper, started) = state.withLock { state -> (CheckedContinuation<Void, Never>?, Bool) in
            state.stopRequested = true
            defer { state.stopper = nil }
            return (state.stopper, state.started)
        }
        stopper?.resume()
        if started { await finished.settle() } else { finished.open() }
    }

    var isStopped: Bool { state.withLock { $0.stopRequested } }
}

/// A FIFO async mutual exclusion: a worker's event handling and its rebalancing take turns, so a
/// job is never released while its start is half done. Not reentrant.
final class AsyncLock: Sendable {
    private struct State {
        var locked = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    func withLock<R: Sendable>(_ body: () async throws -> R) async rethrows -> R {
        await acquire()
        defer { release() }
        return try await body()
    }

    private func acquire() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let granted = state.withLock { state -> Bool in
                if !state.locked {
                    state.locked = true
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if granted { continuation.resume() }
        }
    }

    private func release() {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if state.waiters.isEmpty {
                state.locked = false
                return nil
            }
            return state.waiters.removeFirst()
        }
        next?.resume()
    }
}
