import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension StoreError.Code {
    /// Another process holds the database's run lock (``DatabaseLock``).
    public static let inUse = StoreError.Code("inUse")
}

/// The lock that makes a database one `rota run`'s: an exclusive `flock` on `DATABASE.lock`,
/// held for the life of this object. The kernel drops it when the process dies (SIGKILL
/// included), so a lock is never stale. A separate file, not the database: closing a descriptor
/// of the database file would drop SQLite's own (POSIX) locks of the whole process.
public final class DatabaseLock: Sendable {
    public let path: String
    private let descriptor: Int32

    private init(path: String, descriptor: Int32) {
        self.path = path
        self.descriptor = descriptor
    }

    /// Takes the lock of the database at `database`, or throws `.inUse` naming the holder's
    /// process ID (written into the lock file by the holder).
    public static func acquire(forDatabase database: String) throws(StoreError) -> DatabaseLock {
        let path = database + ".lock"
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw StoreError(.cannotOpen, "\(path): cannot open the database's lock file: \(String(cString: strerror(errno)))")
        }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            let failure = errno
            var buffer = [UInt8](repeating: 0, count: 32)
            let count = pread(descriptor, &buffer, buffer.count, 0)
            close(descriptor)
            guard failure == EWOULDBLOCK else {
                throw StoreError(.cannotOpen, "\(path): cannot lock the database: \(String(cString: strerror(failure)))")
            }
            let holder = count > 0 ? Int32(String(decoding: buffer.prefix(count), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) : nil
            throw StoreError(.inUse, "\(database) is in use by another rota run" + (holder.map { " (pid \($0))" } ?? "")
                + ": one rota run per database; give this one its own --db")
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(descriptor, 0)
        _ = pid.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }
        return DatabaseLock(path: path, descriptor: descriptor)
    }

    deinit {
        close(descriptor)
    }
}

/// Creates an empty file at `path` with `mode` unless something is there already.
func createIfMissing(_ path: String, mode: mode_t) {
    let descriptor = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode)
    if descriptor >= 0 { close(descriptor) }
}
