import NIOCore
import Synchronization

/// What a slot resolves with: one reply, or all the replies of a pipeline.
enum ReplyPayload: Sendable {
    case one(RedisValue)
    case many([RedisValue])
}

/// The place a caller waits for its reply.
///
/// A slot is resolved exactly once, by whoever comes first: the reply, a timeout, the caller's
/// cancellation or a lost connection. Later attempts are ignored, which is what keeps a reply to a
/// cancelled command from ever reaching another caller: the slot stays in the connection's FIFO
/// and silently absorbs its reply.
final class ReplySlot: Sendable {
    private enum State {
        case idle
        case waiting(UnsafeContinuation<ReplyPayload, any Error>)
        case resolvedEarly(Result<ReplyPayload, any Error>)
        case finished
    }

    private let state = Mutex<State>(.idle)
    /// Set for a command nobody awaits (``RedisConnection/send(_:timeout:onReply:)``): it gets the result
    /// instead of a continuation, on whichever thread resolves the slot.
    private let onResolve: (@Sendable (Result<ReplyPayload, any Error>) -> Void)?
    /// Replies expected: 1 for a command, N for a pipeline of N.
    let expectedReplies: Int
    /// Pipelines resolve with `.many` and keep error replies in place, even a pipeline of one.
    let isPipeline: Bool
    let deadline: NIODeadline

    init(deadline: NIODeadline, onResolve: (@Sendable (Result<ReplyPayload, any Error>) -> Void)? = nil) {
        self.expectedReplies = 1
        self.isPipeline = false
        self.deadline = deadline
        self.onResolve = onResolve
    }

    init(pipelineOf count: Int, deadline: NIODeadline) {
        self.expectedReplies = count
        self.isPipeline = true
        self.deadline = deadline
        self.onResolve = nil
    }

    /// Parks the caller. If the slot was resolved before the caller got here, resumes it at once.
    func install(_ continuation: UnsafeContinuation<ReplyPayload, any Error>) {
        let early: Result<ReplyPayload, any Error>? = state.withLock { state in
            switch state {
            case .idle:
                state = .waiting(continuation)
                return nil
            case .resolvedEarly(let result):
                state = .finished
                return result
            case .waiting, .finished:
                preconditionFailure("a reply slot is awaited once")
            }
        }
        if let early { continuation.resume(with: early) }
    }

    /// Resolves the slot; returns false when it was already resolved.
    @discardableResult
    func resolve(_ result: Result<ReplyPayload, any Error>) -> Bool {
        enum Action { case alreadyResolved, stored, resume(UnsafeContinuation<ReplyPayload, any Error>), callBack }
        let action: Action = state.withLock { state in
            switch state {
            case .idle where onResolve != nil:
                state = .finished
                return .callBack
            case .idle:
                state = .resolvedEarly(result)
                return .stored
            case .waiting(let continuation):
                state = .finished
                return .resume(continuation)
            case .resolvedEarly, .finished:
                return .alreadyResolved
            }
        }
        switch action {
        case .alreadyResolved: return false
        case .stored: break
        case .resume(let continuation): continuation.resume(with: result)
        case .callBack: onResolve?(result)
        }
        return true
    }

    var isResolved: Bool {
        state.withLock { state in
            switch state {
            case .idle, .waiting: return false
            case .resolvedEarly, .finished: return true
            }
        }
    }

    /// Waits for the slot, resolving it with CancellationError if the calling task is cancelled.
    func wait() async throws -> ReplyPayload {
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<ReplyPayload, any Error>) in
                self.install(continuation)
            }
        } onCancel: {
            self.resolve(.failure(CancellationError()))
        }
    }
}
