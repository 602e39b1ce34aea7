import Foundation
import RotaTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A free TCP port on 127.0.0.1 (bound, read, released: the server binds it moments later).
func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard bound else { throw TestFailure("cannot find a free port") }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// A connected TCP socket to 127.0.0.1:`port`, or nil.
func connectTo(_ port: Int) -> Int32? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    let connected = withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
    guard connected else {
        close(fd)
        return nil
    }
    return fd
}

/// Whether the peer closed `fd` (a read returns 0 or fails), waiting at most 10 ms.
private func closedByPeer(_ fd: Int32) -> Bool {
    var poll = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    guard Glibc.poll(&poll, 1, 10) > 0 else { return false }
    var byte: UInt8 = 0
    return recv(fd, &byte, 1, Int32(MSG_DONTWAIT)) <= 0
}

@Suite(.serialized, .timeLimit(.minutes(2))) struct MetricsServerTests {
    // Through the deprecated --metrics-* aliases: they must keep serving the HTTP server.
    @Test("the HTTP server (--metrics-port alias) binds 127.0.0.1 by default, caps its connections and closes idle ones")
    func capsAndIdleTimeout() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("rota-metrics-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("plans"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try "producers:\n  - name: p\n    every: 1s\n    jobs:\n      - {key: a, handler: log}\n"
            .write(to: directory.appendingPathComponent("plans/plan.yaml"), atomically: true, encoding: .utf8)
        let port = try freePort()
        let database = directory.appendingPathComponent("n.sqlite").path
        let node = try RunNode(label: "metrics", database: database, arguments: [
            "run", "--plans", directory.appendingPathComponent("plans").path, "--db", database, "--workers", "1", "--log-format", "json",
            "--metrics-port", String(port), "--metrics-max-connections", "4", "--metrics-idle-timeout", "1s",
        ])
        defer { node.killForCleanup() }
        try await node.waitUntilReady()
        #expect(node.logs("serving http").first?["url"] == "http://127.0.0.1:\(port)")

        // Twenty idle connections: four are kept, the others closed at once.
        let sockets = (0..<20).compactMap { _ in connectTo(port) }
        defer { for fd in sockets { close(fd) } }
        #expect(sockets.count == 20)
        var closed: Set<Int32> = []
        try await poll("the connections over the cap closed", timeout: .seconds(5), every: .milliseconds(20)) {
            for fd in sockets where !closed.contains(fd) && closedByPeer(fd) { closed.insert(fd) }
            return closed.count >= 16 ? true : nil
        }
        #expect(closed.count == 16, "closed \(closed.count) of 20 with a cap of 4")
        let descriptors = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(node.pid)/fd").count
        // Then the idle timeout closes the four kept ones.
        let keptAt = ContinuousClock.now
        try await poll("the idle connections closed", timeout: .seconds(5), every: .milliseconds(20)) {
            for fd in sockets where !closed.contains(fd) && closedByPeer(fd) { closed.insert(fd) }
            return closed.count == 20 ? true : nil
        }
        #expect(ContinuousClock.now - keptAt >= .milliseconds(500), "closed before the idle timeout")
        #expect(descriptors < 200, "\(descriptors) descriptors open")

        // And a scrape works again.
        let body = try scrapeMetrics(port: port)
        #expect(body.hasPrefix("HTTP/1.1 200"), "\(body.prefix(200))")
        #expect(body.contains("rota_"), "\(body.prefix(300))")
    }
}

/// `GET /metrics` on 127.0.0.1:`port`: the whole response, status line included.
func scrapeMetrics(port: Int) throws -> String { try rawHTTPGet(port: port, path: "/metrics") }

/// `GET path` on 127.0.0.1:`port` with `Connection: close`: the whole response, status line
/// included, as read until the server closes (at most 5 s).
func rawHTTPGet(port: Int, path: String) throws -> String {
    guard let fd = connectTo(port) else { throw TestFailure("cannot connect to 127.0.0.1:\(port)") }
    defer { close(fd) }
    let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
    guard send(fd, request, request.count, 0) == request.count else { throw TestFailure("cannot send GET \(path)") }
    var response = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: 65_536)
    let deadline = ContinuousClock.now + .seconds(5)
    while ContinuousClock.now < deadline {
        var poll = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard Glibc.poll(&poll, 1, 100) > 0 else { continue }
        let count = recv(fd, &buffer, buffer.count, 0)
        if count <= 0 { break }
        response += buffer.prefix(count)
    }
    return String(decoding: response, as: UTF8.self)
}
