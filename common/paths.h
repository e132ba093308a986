/*
 * Where the daemon's Unix socket lives by default, and the check the daemon makes on the socket's
 * directory before it binds there. Both sides call kvt_socket_default() so that they agree on the
 * path without configuration.
 *
 * Why a directory of its own: a socket in a world-writable directory such as /tmp can be bound
 * first by any user (squatting), so the daemon fails to start and clients hand their arena to the
 * squatter. In a directory owned by the daemon's user (or root) and writable by nobody else, no
 * other user can create the socket. Clients still check who serves the socket (SO_PEERCRED in
 * libkvtier), because an explicitly configured path may live anywhere.
 */
#ifndef KVT_COMMON_PATHS_H
#define KVT_COMMON_PATHS_H

#include <stddef.h>

/* sizeof(struct sockaddr_un.sun_path) on Linux: a socket path must be shorter than this. */
#define KVT_SOCKET_PATH_MAX 108

/* Writes the default socket path into buf (NUL-terminated):
 *   euid 0:                                    /run/kvtier/kvtier.sock
 *   $XDG_RUNTIME_DIR set, absolute, and short: $XDG_RUNTIME_DIR/kvtier/kvtier.sock
 *   otherwise:                                 /tmp/kvtier-<euid>/kvtier.sock
 * "Short" means the resulting path fits a socket address (KVT_SOCKET_PATH_MAX); a longer runtime
 * directory falls back to /tmp, so daemon and client still agree. Returns 0, KVT_E_INVAL (buf
 * NULL) or KVT_E_TOOBIG (cap too small; buf then holds ""). */
int kvt_socket_default(char *buf, size_t cap);

/* For the daemon, before it binds socket_path: creates the socket's parent directory when it is
 * missing (mode 0755, one level only: the grandparent must exist), then accepts it only when it is
 * a real directory (not a symlink) owned by the daemon's euid or by root and writable by neither
 * group nor others. A sticky world-writable directory such as /tmp is refused too: anyone may
 * create names in it. Returns 0; -EACCES (untrusted directory) or -errno from mkdir/open (e.g.
 * -ENOENT when the grandparent is missing, -ELOOP for a symlink); KVT_E_INVAL for a bad path. On
 * an error, why (may be NULL) gets a one-line reason, truncated to why_cap. */
int kvt_socket_dir_prepare(const char *socket_path, char *why, size_t why_cap);

#endif
