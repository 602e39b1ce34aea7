import HummingbirdCore
import Logging
import NIOCore
import Synchronization

/// The connections a server holds open, against its cap.
final class ConnectionCount: Sendable {
    let limit: Int
    private let open = Mutex(0)

    init(limit: Int) { self.limit = limit }

    /// Counts one more connection, or refuses it when `limit` are open.
    func admit() -> Bool {
        open.withLock { count in
            guard count < limit else { return false }
            count += 1
            return true
        }
    }

    func release() { open.withLock { $0 -= 1 } }
}

/// A child channel setup that closes a connection at once when `count.limit` are already open.
///
/// Hummingbird's own cap (`availableConnectionsDelegate`) stops accepting instead: the kernel
/// still completes the handshakes into the listen backlog, so clients over the cap sit connected
/// and unanswered. Closing them keeps the promise of the server this one replaced: an idle socket
/// costs a client its connection rather than waiting, and never holds one of our descriptors.
struct CappedChildChannel<Base: ServerChildChannel>: ServerChildChannel {
    typealias Value = Base.Value

    let base: Base
    let count: ConnectionCount

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        guard count.admit() else {
            // Set up, then closed: a failed setup would reach the listener as an error and end its
            // accept loop. The handler then sees a closed channel and returns at once.
            logger.debug("http connection over the cap closed", metadata: ["max": "\(count.limit)"])
            return base.setup(channel: channel, logger: logger).map { value in
                channel.close(promise: nil)
                return value
            }
        }
        let count = count
        channel.closeFuture.whenComplete { _ in count.release() }
        return base.setup(channel: channel, logger: logger)
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}
