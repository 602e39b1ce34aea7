import Foundation
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

/// The kernel's floor for sequential PINGs: one thread doing a blocking `write()` then blocking
/// `read()`s on a plain TCP socket, with no event loop and no client at all. Fewer syscalls per
/// round trip than redis-benchmark (2 against its 9), so on a quiet machine nothing that talks to
/// the server over TCP one command at a time can be faster. No AUTH: for servers without a password.
func blockingSocketFloor(host: String, port: Int, count: Int) async throws -> Double {
    try await onOwnThread(named: "rota-bench syscall floor") { try blockingPings(host: host, port: port, count: count) }
}

private func blockingPings(host: String, port: Int, count: Int) throws -> Double {
    var hints = addrinfo()
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    var found: UnsafeMutablePointer<addrinfo>?
    let status = getaddrinfo(host, String(port), &hints, &found)
    guard status == 0, let address = found else {
        throw BenchError("cannot resolve \(host):\(port): \(String(cString: gai_strerror(status)))")
    }
    defer { freeaddrinfo(found) }
    let fd = socket(address.pointee.ai_family, address.pointee.ai_socktype, address.pointee.ai_protocol)
    guard fd >= 0 else { throw BenchError("socket() failed: errno \(errno)") }
    defer { close(fd) }
    var on: Int32 = 1
    setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
    guard connect(fd, address.pointee.ai_addr, address.pointee.ai_addrlen) == 0 else {
        throw BenchError("connect to \(host):\(port) failed: errno \(errno)")
    }
    let ping = Array("*1\r\n$4\r\nPING\r\n".utf8)
    let pongLength = 7  // "+PONG\r\n"
    var reply = [UInt8](repeating: 0, count: 64)
    let clock = ContinuousClock()
    let start = clock.now
    for _ in 0..<count {
        let written = ping.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == ping.count else { throw BenchError("write failed: errno \(errno)") }
        var received = 0
        while received < pongLength {
            let n = reply.withUnsafeMutableBytes { buffer in
                read(fd, buffer.baseAddress.map { $0 + received }, buffer.count - received)
            }
            guard n > 0 else { throw BenchError("read failed or the server closed the connection: errno \(errno)") }
            received += n
        }
    }
    return Double(count) / seconds(clock.now - start)
}
