// The exec guard: one small process between a worker and each `exec` job (ARCHITECTURE.md,
// "The exec guard").
//
// The worker starts `/proc/self/exe ROTA_EXEC_GUARD_MARKER` with its end of a socket pair on
// descriptor 3; the constructor below turns that process into the guard before any Swift code
// runs, so every executable linking RotaService can be its own guard (no helper binary to
// install). The guard
//   - reads what to run (working directory, limits, executable, argv, environment) from the socket;
//   - makes itself a child subreaper, so descendants orphaned by their parent (`setsid`,
//     double forks) are reparented to it instead of init;
//   - forks the job: own process group, parent-death signal SIGKILL (the guard is single-threaded,
//     so this fires exactly when the guard dies), clean signal mask, `chdir`, `setrlimit`, `execve`;
//   - on 'T' from the worker: SIGTERM + SIGCONT to the job's process group; on 'K', on end of file
//     (the worker stopped it, exited, or was SIGKILLed: the kernel closes the worker's end) or on
//     SIGTERM/SIGINT/SIGHUP/SIGQUIT to itself, or when the job's main process exits: SIGKILL to
//     every descendant, repeated until it has no child left;
//   - reports `started PID`, `failed STAGE ERRNO` and `exited WAIT-STATUS` lines on the socket.
// Only async-signal-safe calls are made between fork and execve.

#define _GNU_SOURCE  // pipe2

#include "CRotaExecGuard.h"

const char *rota_exec_guard_marker(void) { return ROTA_EXEC_GUARD_MARKER; }

#ifdef __linux__

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

enum { LIMIT_COUNT = 4 };
static const int limit_resources[LIMIT_COUNT] = {RLIMIT_CPU, RLIMIT_AS, RLIMIT_NOFILE, RLIMIT_FSIZE};
// The names the policy file uses: failures are reported with them.
static const char *const limit_names[LIMIT_COUNT] = {"cpu_seconds", "address_space_mb", "open_files", "file_size_mb"};

enum { STAGE_SETPGID = -1, STAGE_DEATH_SIGNAL = -2, STAGE_CHDIR = -3, STAGE_EXEC = -4 };

// The largest spec accepted (the worker bounds argv and environment far below this).
static const uint32_t max_spec = 16u << 20;

struct spec {
    const char *work_dir;
    long long limits[LIMIT_COUNT];  // -1: unchanged
    const char *executable;
    char **argv;
    char **envp;
};

struct failure {
    int stage;  // STAGE_* or a limit index
    int error;
};

static const int control = ROTA_EXEC_GUARD_FD;

// One line to the worker; lost if the worker is gone (MSG_NOSIGNAL: no SIGPIPE).
static void report(const char *format, ...) {
    char line[128];
    va_list arguments;
    va_start(arguments, format);
    int length = vsnprintf(line, sizeof line, format, arguments);
    va_end(arguments);
    if (length <= 0 || (size_t)length >= sizeof line) return;
    size_t sent = 0;
    while (sent < (size_t)length) {
        ssize_t count = send(control, line + sent, (size_t)length - sent, MSG_NOSIGNAL);
        if (count < 0 && errno == EINTR) continue;
        if (count <= 0) return;
        sent += (size_t)count;
    }
}

static int read_full(int fd, void *buffer, size_t count) {
    size_t done = 0;
    while (done < count) {
        ssize_t got = read(fd, (char *)buffer + done, count - done);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return -1;
        done += (size_t)got;
    }
    return 0;
}

// The spec: NUL-terminated strings, in order: work_dir, the LIMIT_COUNT limits (decimal, empty:
// unchanged), executable, argc, argv[0..<argc], envc, envp[0..<envc].
static const char *next_string(char **cursor, char *end) {
    if (*cursor >= end) return NULL;
    char *found = memchr(*cursor, 0, (size_t)(end - *cursor));
    if (!found) return NULL;
    const char *text = *cursor;
    *cursor = found + 1;
    return text;
}

static int parse_count(const char *text, long long max, long long *value) {
    if (!text || !*text) return -1;
    char *rest = NULL;
    errno = 0;
    long long parsed = strtoll(text, &rest, 10);
    if (errno != 0 || *rest != 0 || parsed < 0 || parsed > max) return -1;
    *value = parsed;
    return 0;
}

static char **parse_list(char **cursor, char *end) {
    long long count = 0;
    if (parse_count(next_string(cursor, end), 1 << 20, &count) != 0) return NULL;
    char **list = calloc((size_t)count + 1, sizeof(char *));
    if (!list) return NULL;
    for (long long index = 0; index < count; index++) {
        const char *text = next_string(cursor, end);
        if (!text) return NULL;
        list[index] = (char *)text;
    }
    return list;
}

static int parse_spec(char *data, size_t size, struct spec *spec) {
    char *cursor = data, *end = data + size;
    spec->work_dir = next_string(&cursor, end);
    if (!spec->work_dir) return -1;
    for (int index = 0; index < LIMIT_COUNT; index++) {
        const char *text = next_string(&cursor, end);
        if (!text) return -1;
        spec->limits[index] = -1;
        if (*text && parse_count(text, INT64_MAX, &spec->limits[index]) != 0) return -1;
    }
    spec->executable = next_string(&cursor, end);
    if (!spec->executable || !*spec->executable) return -1;
    spec->argv = parse_list(&cursor, end);
    if (!spec->argv || !spec->argv[0]) return -1;
    spec->envp = parse_list(&cursor, end);
    if (!spec->envp) return -1;
    return cursor == end ? 0 : -1;
}

// In the forked child: async-signal-safe calls only.
__attribute__((noreturn)) static void run_job(const struct spec *spec, int error_fd, pid_t guard) {
    struct failure failure = {0, 0};
    if (setpgid(0, 0) != 0) {
        failure = (struct failure){STAGE_SETPGID, errno};
        goto failed;
    }
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
        failure = (struct failure){STAGE_DEATH_SIGNAL, errno};
        goto failed;
    }
    if (getppid() != guard) _exit(127);  // the guard died before the death signal was armed
    struct sigaction default_action;
    memset(&default_action, 0, sizeof default_action);
    default_action.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &default_action, NULL);
    sigset_t empty;
    sigemptyset(&empty);
    sigprocmask(SIG_SETMASK, &empty, NULL);
    if (spec->work_dir[0] && chdir(spec->work_dir) != 0) {
        failure = (struct failure){STAGE_CHDIR, errno};
        goto failed;
    }
    for (int index = 0; index < LIMIT_COUNT; index++) {
        if (spec->limits[index] < 0) continue;
        struct rlimit limit = {(rlim_t)spec->limits[index], (rlim_t)spec->limits[index]};
        // CPU: SIGXCPU at the soft limit, which a program may catch to end cleanly; SIGKILL at the
        // hard one (the worker bounds the value far below overflow).
        if (limit_resources[index] == RLIMIT_CPU) limit.rlim_max += 1;
        if (setrlimit(limit_resources[index], &limit) != 0) {
            failure = (struct failure){index, errno};
            goto failed;
        }
    }
    execve(spec->executable, spec->argv, spec->envp);
    failure = (struct failure){STAGE_EXEC, errno};
failed:
    while (write(error_fd, &failure, sizeof failure) < 0 && errno == EINTR) {}
    _exit(127);
}

static const char *stage_name(int stage) {
    switch (stage) {
    case STAGE_SETPGID: return "setpgid";
    case STAGE_DEATH_SIGNAL: return "pdeathsig";
    case STAGE_CHDIR: return "chdir";
    case STAGE_EXEC: return "exec";
    default: return stage >= 0 && stage < LIMIT_COUNT ? limit_names[stage] : "unknown";
    }
}

// True when a signal other than SIGCHLD arrived: someone asks the guard itself to end.
static int drain_signals(int signals) {
    int asked = 0;
    struct signalfd_siginfo info;
    for (;;) {
        ssize_t count = read(signals, &info, sizeof info);
        if (count < 0 && errno == EINTR) continue;
        if (count != (ssize_t)sizeof info) return asked;
        if (info.ssi_signo != SIGCHLD) asked = 1;
    }
}

// Reaps every exited child (the job, or orphans reparented here); records the job's status.
static void reap(pid_t job, int *job_done, int *job_status) {
    for (;;) {
        int status = 0;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid < 0 && errno == EINTR) continue;
        if (pid <= 0) return;
        if (pid == job) {
            *job_done = 1;
            *job_status = status;
        }
    }
}

// Fallback for kernels without CONFIG_PROC_CHILDREN: every process whose parent is the guard.
static void kill_children_by_scan(pid_t self) {
    DIR *proc = opendir("/proc");
    if (!proc) return;
    struct dirent *entry;
    while ((entry = readdir(proc)) != NULL) {
        long long pid = 0;
        if (parse_count(entry->d_name, INT32_MAX, &pid) != 0 || pid <= 1) continue;
        char path[64], text[512];
        snprintf(path, sizeof path, "/proc/%lld/stat", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t count = read(fd, text, sizeof text - 1);
        close(fd);
        if (count <= 0) continue;
        text[count] = 0;
        char *close_paren = strrchr(text, ')');  // the command name may contain anything
        char state = 0;
        int parent = 0;
        if (close_paren && sscanf(close_paren + 1, " %c %d", &state, &parent) == 2 && parent == self) {
            kill((pid_t)pid, SIGKILL);
        }
    }
    closedir(proc);
}

static void kill_children(void) {
    pid_t self = getpid();
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)self);  // single-threaded: tid == pid
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        kill_children_by_scan(self);
        return;
    }
    char buffer[4096];
    long long pid = -1;
    for (;;) {
        ssize_t count = read(fd, buffer, sizeof buffer);
        if (count < 0 && errno == EINTR) continue;
        if (count <= 0) break;
        for (ssize_t index = 0; index < count; index++) {
            char c = buffer[index];
            if (c >= '0' && c <= '9') {
                pid = (pid < 0 ? 0 : pid) * 10 + (c - '0');
                if (pid > INT32_MAX) pid = INT32_MAX;
            } else {
                if (pid > 1) kill((pid_t)pid, SIGKILL);
                pid = -1;
            }
        }
    }
    if (pid > 1) kill((pid_t)pid, SIGKILL);
    close(fd);
}

// SIGKILL to every descendant. Killing a child reparents its own children to the guard (it is
// their subreaper), so the loop goes down the tree until the guard has no child left.
static void kill_descendants(pid_t job, int *job_done, int *job_status, int signals) {
    // The whole group at once while its leader is unreaped (its pgid cannot be reused meanwhile).
    if (!*job_done) killpg(job, SIGKILL);
    for (;;) {
        kill_children();
        reap(job, job_done, job_status);
        siginfo_t info;
        memset(&info, 0, sizeof info);
        if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) < 0 && errno == ECHILD) return;
        struct pollfd wake = {.fd = signals, .events = POLLIN};
        poll(&wake, 1, 20);
        drain_signals(signals);
    }
}

static int guard_main(void) {
    fcntl(control, F_SETFD, FD_CLOEXEC);
    struct sigaction ignore;
    memset(&ignore, 0, sizeof ignore);
    ignore.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &ignore, NULL);  // output pipes whose reader (the worker) is gone

    uint32_t length = 0;
    if (read_full(control, &length, sizeof length) != 0) return 1;  // the worker is gone already
    if (length == 0 || length > max_spec) {
        report("failed spec %d\n", EINVAL);
        return 1;
    }
    char *data = malloc(length);
    struct spec spec;
    if (!data || read_full(control, data, length) != 0 || parse_spec(data, length, &spec) != 0) {
        report("failed spec %d\n", EINVAL);
        return 1;
    }
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
        report("failed subreaper %d\n", errno);
        return 1;
    }
    sigset_t handled;
    sigemptyset(&handled);
    int handled_signals[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT};
    for (size_t index = 0; index < sizeof handled_signals / sizeof handled_signals[0]; index++) {
        sigaddset(&handled, handled_signals[index]);
    }
    sigprocmask(SIG_BLOCK, &handled, NULL);
    int signals = signalfd(-1, &handled, SFD_CLOEXEC | SFD_NONBLOCK);
    int errors[2];
    if (signals < 0 || pipe2(errors, O_CLOEXEC) != 0) {
        report("failed setup %d\n", errno);
        return 1;
    }

    pid_t guard = getpid();
    pid_t job = fork();
    if (job < 0) {
        report("failed fork %d\n", errno);
        return 1;
    }
    if (job == 0) {
        close(errors[0]);
        run_job(&spec, errors[1], guard);
    }
    close(errors[1]);
    setpgid(job, job);  // also here: the group exists before the first 'T' can arrive
    struct failure failure;
    ssize_t got;
    do {
        got = read(errors[0], &failure, sizeof failure);
    } while (got < 0 && errno == EINTR);
    close(errors[0]);

    int job_done = 0, job_status = 0;
    if (got == (ssize_t)sizeof failure) {
        report("failed %s %d\n", stage_name(failure.stage), failure.error);
        kill_descendants(job, &job_done, &job_status, signals);
        return 0;
    }
    report("started %d\n", (int)job);

    int stop = 0;
    while (!job_done && !stop) {
        struct pollfd watched[2] = {{.fd = control, .events = POLLIN}, {.fd = signals, .events = POLLIN}};
        if (poll(watched, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (watched[1].revents) stop |= drain_signals(signals);
        reap(job, &job_done, &job_status);
        if (watched[0].revents && !job_done) {
            char commands[16];
            ssize_t count = read(control, commands, sizeof commands);
            if (count < 0 && errno == EINTR) continue;
            if (count <= 0) stop = 1;  // end of file: the worker closed its end or died
            for (ssize_t index = 0; index < count; index++) {
                if (commands[index] == 'T') {
                    killpg(job, SIGTERM);
                    killpg(job, SIGCONT);
                } else if (commands[index] == 'K') {
                    stop = 1;
                }
            }
        }
    }
    kill_descendants(job, &job_done, &job_status, signals);
    if (job_done) report("exited %d\n", job_status);
    return 0;
}

// glibc passes argc, argv and envp to constructors.
__attribute__((constructor)) static void rota_exec_guard_entry(int argc, char **argv, char **envp) {
    (void)envp;
    if (argc >= 2 && argv && argv[1] && strcmp(argv[1], ROTA_EXEC_GUARD_MARKER) == 0) {
        _exit(guard_main());
    }
}

#endif
