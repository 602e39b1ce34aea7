import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Plumbing shared by the tests that run Rota's executables as child processes (`rota`,
// `rota-pool-node`).

/// Sends `signal` to `pid`.
public func sendSignal(_ pid: Int32, _ signal: Int32) {
    #if canImport(Glibc)
    _ = Glibc.kill(pid, signal)
    #else
    _ = Darwin.kill(pid, signal)
    #endif
}

/// Marks both ends of a pipe close-on-exec (the child gets its end through dup2, which clears the
/// flag): a process spawned later must not inherit another child's pipe ends, or EOF would never
/// arrive when that child dies.
public func closeOnExec(_ pipe: Pipe) {
    for handle in [pipe.fileHandleForReading, pipe.fileHandleForWriting] {
        _ = fcntl(handle.fileDescriptor, F_SETFD, FD_CLOEXEC)
    }
}

/// Reads `fd` until EOF (on the calling thread: callers use threads of their own, never a
/// concurrency thread).
public func readAll(_ fd: Int32, _ deliver: (Data) -> Void) {
    var buffer = [UInt8](repeating: 0, count: 65_536)
    while true {
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count > 0 {
            deliver(Data(buffer[0..<count]))
        } else if count == 0 || errno != EINTR {
            return
        }
    }
}

private final class BundleMarker {}

/// The built executable `name` of this package (beside the test bundle; `swift build
/// --build-tests` builds the executables too).
public func builtExecutable(_ name: String) throws -> URL {
    let candidates = [
        Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent(name),
        Bundle.main.bundleURL.appendingPathComponent(name),
        // Bundle.main is the test runner itself in some layouts: look beside the build products.
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(name),
        Bundle(for: BundleMarker.self).bundleURL.deletingLastPathComponent().appendingPathComponent(name),
    ]
    guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) else {
        throw TestFailure("\(name) not found (build it with `swift build --build-tests`); looked at \(candidates.map(\.path))")
    }
    return found
}
