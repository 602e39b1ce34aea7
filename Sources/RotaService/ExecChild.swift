import CRotaExecGuard
import Foundation
import Logging
import RotaStore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What a job runs once the policy accepted it.
struct ExecInvocation: Sendable, Hashable {
    /// `argv[0]`: the command as the payload wrote it, or the program's path.
    var argv0: String
    /// The realpath that is spawned.
    var executable: String
    var arguments: [String]
    /// The program's fixed variables and the job's (checked) ones, applied over the inherited ones.
    var environment: [String: String]
    /// The base under which the job's own directory is made; nil: `/`.
    var workBase: String?
    var limits: ExecPolicy.Limits
}

/// One run of a job: the guard process (ExecGuard.c) and, under it, the job's program.
///
/// The guard's pid is the one this process waits for; the program's pid arrives on the control
/// socket once it runs. ``exited`` means the guard is gone, which it only is once the program and
/// every process it left behind were killed and reaped.
final class ExecChild: Sendable {
    /// The guard.
    let guardPID: pid_t
    /// The program's pid once it runs, or why it could not be started.
    let started = OneShot<Result<pid_t, ServiceError>>()
    /// Fulfilled when the guard has exited (still unreaped: its pid stays reserved).
    let exited = OneShot<Void>()
    /// Fulfilled when both output pipes reached end of file.
    let drained = OneShot<Void>()
    /// The worker's end of the control socket; closing it (or this process dying) kills the job.
    private let control: Int32
    private let jobStatus = Mutex<Int32?>(nil)
    private let jobPID = Mutex<pid_t?>(nil)
    private let openStreams = Mutex(2)

    private init(guardPID: pid_t, control: Int32) {
        self.guardPID = guardPID
        self.control = control
    }

    /// SIGTERM and SIGCONT to the program's process group.
    func terminate() { send("T") }

    /// SIGKILL to the program and everything it started.
    func kill() { send("K") }

    private func send(_ command: Character) {
        var byte = command.asciiValue ?? 0
        _ = Glibc.send(control, &byte, 1, Int32(MSG_NOSIGNAL))
    }

    /// Once the guard exited: reaps it, waits (bounded) for the rest of the output, closes the
    /// control socket. The program's status as the guard saw it. Never ends early on task
    /// cancellation: it is how a stopped (cancelled) job ends.
    func reap(drainTimeout: Duration, logger: Logger) async -> ExitStatus {
        _ = await exited.wait(cancellable: false)
        var raw: Int32 = 0
        var result: pid_t
        repeat { result = waitpid(guardPID, &raw, 0) } while result < 0 && errno == EINTR
        if result == guardPID, raw != 0 {
            logger.warning("exec: the guard process ended abnormally", metadata: ["guard": "\(guardPID)", "status": "\(ExitStatus(raw: raw))"])
        }
        // Timed, not cancellable: a stopped job reaps in a cancelled task and still wants its
        // last lines.
        if drained.value == nil { _ = await drained.wait(timeout: drainTimeout) }
        close(control)
        return ExitStatus(raw: jobStatus.withLock { $0 })
    }

    /// Starts a guard for `invocation` and waits until the program runs: the run and the program's
    /// pid. Throws `execFailed` when it cannot be started (the guard is reaped first).
    static func start(_ invocation: ExecInvocation, workDirectory: String, environment: [String: String], logger: Logger, drainTimeout: Duration) async throws(ServiceError) -> (ExecChild, pid_t) {
        let child = try spawn(invocation, workDirectory: workDirectory, environment: environment, logger: logger)
        switch await child.started.wait(cancellable: false) {
        case .success(let pid):
            return (child, pid)
        case nil:  // not cancellable: never
            return (child, child.guardPID)
        case .failure(let error):
            child.kill()
            _ = await child.reap(drainTimeout: drainTimeout, logger: logger)
            throw error
        }
    }

    private static func spawn(_ invocation: ExecInvocation, workDirectory: String, environment: [String: String], logger: Logger) throws(ServiceError) -> ExecChild {
        let message = Self.spec(invocation, workDirectory: workDirectory, environment: environment)
        guard message.count <= 8 << 20 else {
            throw ServiceError(.execFailed, "exec: the arguments and environment of '\(invocation.argv0)' exceed 8 MiB")
        }
        var output: [Int32] = [-1, -1]
        var errors: [Int32] = [-1, -1]
        var sockets: [Int32] = [-1, -1]
        guard SpawnSupport.pipe(&output), SpawnSupport.pipe(&errors), SpawnSupport.socketPair(&sockets) else {
            let reason = String(cString: strerror(errno))
            for fd in output + errors + sockets where fd >= 0 { close(fd) }
            throw ServiceError(.execFailed, "exec: cannot create pipes for '\(invocation.argv0)': \(reason)")
        }
        // The guard finds its end on descriptor 3: never let it *be* 3 here, or the dup2 below
        // would leave it close-on-exec.
        if sockets[1] == ROTA_EXEC_GUARD_FD {
            let moved = fcntl(sockets[1], F_DUPFD_CLOEXEC, ROTA_EXEC_GUARD_FD + 1)
            close(sockets[1])
            sockets[1] = moved
        }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, output[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errors[1], 2)
        posix_spawn_file_actions_adddup2(&actions, sockets[1], ROTA_EXEC_GUARD_FD)
        // Every other descriptor: the pipes are close-on-exec, but descriptors other threads open
        // without O_CLOEXEC would leak into the child (and keep pipes of other children open).
        SpawnSupport.closeFrom(&actions, ROTA_EXEC_GUARD_FD + 1)

        // This very executable: it becomes the guard before its main runs (ExecGuard.c). No
        // environment: the guard passes the job's to the program itself.
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("rota-exec-guard"), strdup(rota_exec_guard_marker()), nil]
        let envp: [UnsafeMutablePointer<CChar>?] = [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, "/proc/self/exe", &actions, &attributes, argv, envp)
        close(output[1])
        close(errors[1])
        close(sockets[1])
        guard result == 0 else {
            close(output[0])
            close(errors[0])
            close(sockets[0])
            throw ServiceError(.execFailed, "exec: cannot start the guard process for '\(invocation.argv0)' (/proc/self/exe): \(String(cString: strerror(result)))")
        }
        let child = ExecChild(guardPID: pid, control: sockets[0])
        child.startThreads(stdout: output[0], stderr: errors[0], invocation: invocation, logger: logger)
        // The socket buffer takes most specs at once; a larger one waits for the guard to read.
        let sent = message.withUnsafeBytes { buffer -> Bool in
            var offset = 0
            while offset < buffer.count {
                let count = Glibc.send(sockets[0], buffer.baseAddress.map { $0 + offset }, buffer.count - offset, Int32(MSG_NOSIGNAL))
                if count < 0, errno == EINTR { continue }
                guard count > 0 else { return false }
                offset += count
            }
            return true
        }
        if !sent {
            // End of file ends a guard still reading the spec; the guard thread then reports the
            // failure through `started`.
            logger.warning("exec: could not hand the job to its guard process", metadata: ["guard": "\(pid)", "error": "\(String(cString: strerror(errno)))"])
            shutdown(sockets[0], Int32(SHUT_WR))
        }
        return child
    }

    /// The spec the guard reads (ExecGuard.c `parse_spec`): a 4-byte little-endian length, then
    /// NUL-terminated strings.
    static func spec(_ invocation: ExecInvocation, workDirectory: String, environment: [String: String]) -> [UInt8] {
        var strings = [workDirectory]
        strings += invocation.limits.ordered.map { $0.value.map(String.init) ?? "" }
        strings.append(invocation.executable)
        strings.append(String(invocation.arguments.count + 1))
        strings.append(invocation.argv0)
        strings += invocation.arguments
        strings.append(String(environment.count))
        strings += environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        var body: [UInt8] = []
        for string in strings {
            body += string.utf8
            body.append(0)
        }
        let length = UInt32(clamping: body.count)
        return withUnsafeBytes(of: length.littleEndian) { Array($0) } + body
    }

    private func startThreads(stdout: Int32, stderr: Int32, invocation: ExecInvocation, logger: Logger) {
        for (fd, stream) in [(stdout, "stdout"), (stderr, "stderr")] {
            var streamLogger = logger
            streamLogger[metadataKey: "stream"] = "\(stream)"
            let lineLogger = streamLogger
            SpawnSupport.thread(name: "exec-\(guardPID)-\(stream)") {
                Self.pump(fd: fd) { line in
                    let pid = self.jobPID.withLock { $0 } ?? self.guardPID
                    lineLogger.info("\(line)", metadata: ["pid": "\(pid)"])
                }
                let last = self.openStreams.withLock { count -> Bool in
                    count -= 1
                    return count == 0
                }
                if last { self.drained.fulfill(()) }
            }
        }
        let guardPID = self.guardPID
        let control = self.control
        SpawnSupport.thread(name: "exec-\(guardPID)-guard") {
            Self.pump(fd: control, closing: false) { line in self.handle(line, invocation: invocation) }
            self.started.fulfill(.failure(ServiceError(.execFailed, "exec: the guard process of '\(invocation.argv0)' ended before starting it")))
            var info = siginfo_t()
            while waitid(P_PID, id_t(guardPID), &info, WEXITED | WNOWAIT) != 0, errno == EINTR {}
            self.exited.fulfill(())
        }
    }

    /// A line from the guard: `started PID`, `failed STAGE ERRNO` or `exited STATUS`.
    private func handle(_ line: String, invocation: ExecInvocation) {
        let words = line.split(separator: " ")
        guard words.count >= 2 else { return }
        switch words[0] {
        case "started":
            guard let pid = pid_t(words[1]) else { return }
            jobPID.withLock { $0 = pid }
            started.fulfill(.success(pid))
        case "exited":
            guard let status = Int32(words[1]) else { return }
            jobStatus.withLock { $0 = status }
        case "failed":
            let code = words.count >= 3 ? Int32(words[2]) ?? 0 : 0
            started.fulfill(.failure(Self.failure(stage: String(words[1]), code: code, invocation: invocation)))
        default:
            return
        }
    }

    static func failure(stage: String, code: Int32, invocation: ExecInvocation) -> ServiceError {
        let reason = String(cString: strerror(code))
        let message: String
        switch stage {
        case "exec": message = "cannot start '\(invocation.argv0)' (\(invocation.executable)): \(reason)"
        case "chdir": message = "cannot enter the job's working directory for '\(invocation.argv0)': \(reason)"
        case "cpu_seconds", "address_space_mb", "open_files", "file_size_mb":
            message = "cannot set the limit \(stage) for '\(invocation.argv0)': \(reason)"
        default: message = "cannot start '\(invocation.argv0)': the guard process failed at \(stage): \(reason)"
        }
        return ServiceError(.execFailed, "exec: \(message)")
    }

    /// Longest line logged as one message; longer ones are split.
    static let maxLine = 16 * 1024

    /// Reads `fd` to end of file, handing over each line; closes it unless told not to.
    private static func pump(fd: Int32, closing: Bool = true, _ emit: (String) -> Void) {
        defer { if closing { close(fd) } }
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 1)
        defer { chunk.deallocate() }
        var line: [UInt8] = []
        func flush() {
            if line.last == 0x0D { line.removeLast() }
            emit(String(decoding: line, as: UTF8.self))
            line.removeAll(keepingCapacity: true)
        }
        while true {
            let count = read(fd, chunk.baseAddress, chunk.count)
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            for byte in chunk[0..<count] {
                if byte == 0x0A {
                    flush()
                } else {
                    line.append(byte)
                    if line.count >= maxLine { flush() }
                }
            }
        }
        if !line.isEmpty { flush() }
    }
}

/// A job's own working directory: `base/<key>-<hash>`, created mode 0700 (and set back to 0700
/// if it exists). Refuses anything but a directory of this user at that place.
func prepareWorkDirectory(base: String, key: String) throws(ServiceError) -> String {
    let path = (base.hasSuffix("/") ? base : base + "/") + workDirectoryName(for: key)
    if mkdir(path, 0o700) != 0 && errno != EEXIST {
        throw ServiceError(.execFailed, "exec: cannot create the job's working directory \(path): \(String(cString: strerror(errno)))")
    }
    var info = stat()
    guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR, info.st_uid == geteuid() else {
        throw ServiceError(.execFailed, "exec: the job's working directory \(path) exists but is not a directory of this user")
    }
    if info.st_mode & 0o777 != 0o700 { _ = chmod(path, 0o700) }
    return path
}

/// A directory name for a job key: its safe characters (at most 48) and a hash of the whole key,
/// so keys differing only in unsafe characters get different directories.
func workDirectoryName(for key: String) -> String {
    var readable = String(key.unicodeScalars.prefix(48).map { scalar -> Character in
        scalar.isASCII && (ExecPolicy.isASCIIAlphanumeric(UInt8(scalar.value)) || "._-".unicodeScalars.contains(scalar)) ? Character(scalar) : "_"
    })
    if readable.hasPrefix(".") { readable = "_" + readable.dropFirst() }
    return readable + "-" + SHA256.hex(SHA256.hash(Array(key.utf8)).prefix(8))
}

enum SpawnSupport {
    private typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32
    private typealias Pipe2 = @convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> Int32

    // glibc ≥ 2.34 and 2.9 have them, but Swift's Glibc module does not declare these GNU
    // extensions: look them up at run time.
    private static let closeFromFunction: CloseFrom? = symbol("posix_spawn_file_actions_addclosefrom_np")
    private static let pipe2Function: Pipe2? = symbol("pipe2")

    private static func symbol<F>(_ name: String) -> F? {
        guard let handle = dlopen(nil, RTLD_NOW), let pointer = dlsym(handle, name) else { return nil }
        return unsafeBitCast(pointer, to: F.self)
    }

    /// `posix_spawn_file_actions_addclosefrom_np(actions, lowest)` when libc has it.
    static func closeFrom(_ actions: inout posix_spawn_file_actions_t, _ lowest: Int32) {
        guard let closeFromFunction else { return }
        _ = closeFromFunction(&actions, lowest)
    }

    /// A close-on-exec pipe (atomically with `pipe2`, else `pipe` + `fcntl`).
    static func pipe(_ fds: inout [Int32]) -> Bool {
        fds.withUnsafeMutableBufferPointer { buffer in
            if let pipe2Function { return pipe2Function(buffer.baseAddress, O_CLOEXEC) == 0 }
            guard Glibc.pipe(buffer.baseAddress) == 0 else { return false }
            for fd in buffer { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            return true
        }
    }

    /// A close-on-exec stream socket pair: no other child may inherit the worker's end, or the
    /// guard would not see end of file when the worker dies.
    static func socketPair(_ fds: inout [Int32]) -> Bool {
        fds.withUnsafeMutableBufferPointer { buffer in
            socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, buffer.baseAddress) == 0
        }
    }

    /// A plain thread (not a Swift concurrency one) for blocking calls.
    static func thread(name: String, _ body: @escaping @Sendable () -> Void) {
        let thread = Thread(block: body)
        thread.name = name
        thread.stackSize = 512 * 1024
        thread.start()
    }
}
