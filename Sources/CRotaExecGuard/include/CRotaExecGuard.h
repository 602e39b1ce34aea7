#ifndef ROTA_EXEC_GUARD_H
#define ROTA_EXEC_GUARD_H

// The process between a worker and each `exec` job (see ExecGuard.c).

/// argv[1] of a guard: the executable that links this target (`/proc/self/exe`) started with it
/// runs the guard before `main` and never returns to it.
#define ROTA_EXEC_GUARD_MARKER "--rota-exec-guard-v1"

/// The guard's control socket: descriptor 3 in the guard.
#define ROTA_EXEC_GUARD_FD 3

/// The marker (referencing it from Swift also keeps the constructor linked in).
const char *rota_exec_guard_marker(void);

#endif
