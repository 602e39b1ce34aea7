import NIOCore
import NIOPosix

/// The transport's floor for sequential PINGs: a bare NIO handler that writes the next PING from
/// `channelRead` itself — no codec, no tasks, no continuations. The gap between this and
/// `ping_sequential` is what the client's own layers cost; the gap between this and
/// redis-benchmark is NIO and the kernel.
final class FloorHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let ping: ByteBuffer
    private var remaining: Int
    private var pendingBytes = 0
    private let done: EventLoopPromise<Void>

    init(count: Int, done: EventLoopPromise<Void>) {
        self.remaining = count
        self.done = done
        self.ping = ByteBuffer(string: "*1\r\n$4\r\nPING\r\n")
    }

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(ping), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        pendingBytes += unwrapInboundIn(data).readableBytes
        while pendingBytes >= 7 {  // "+PONG\r\n"
            pendingBytes -= 7
            remaining -= 1
            if remaining == 0 {
                done.succeed()
                context.close(promise: nil)
                return
            }
            context.writeAndFlush(wrapOutboundOut(ping), promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        done.fail(error)
        context.close(promise: nil)
    }
}

/// PING round trips per second through `FloorHandler` (no AUTH: for servers without a password).
func transportFloor(host: String, port: Int, count: Int) async throws -> Double {
    let loop = MultiThreadedEventLoopGroup.singleton.next()
    let done = loop.makePromise(of: Void.self)
    let clock = ContinuousClock()
    let start = clock.now
    let channel = try await ClientBootstrap(group: loop)
        .channelOption(.tcpOption(.tcp_nodelay), value: 1)
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(FloorHandler(count: count, done: done))
            }
        }
        .connect(host: host, port: port).get()
    try await done.futureResult.get()
    try? await channel.closeFuture.get()
    return Double(count) / seconds(clock.now - start)
}
