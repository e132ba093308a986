/*
 * Default socket path and the daemon's check of the socket's directory: see paths.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/paths.h"
#include "kvtier/errors.h"

#define SOCKET_DIR_MODE 0755

int kvt_socket_default(char *buf, size_t cap)
{
    if (!buf)
        return KVT_E_INVAL;
    uid_t euid = geteuid();
    char path[KVT_SOCKET_PATH_MAX + 64];
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    int n = -1;
    if (euid == 0) {
        n = snprintf(path, sizeof(path), "/run/kvtier/kvtier.sock");
    } else if (xdg && xdg[0] == '/' && strlen(xdg) < KVT_SOCKET_PATH_MAX) {
        n = snprintf(path, sizeof(path), "%s/kvtier/kvtier.sock", xdg);
        if (n < 0 || n >= KVT_SOCKET_PATH_MAX)
            n = -1; /* too long for a socket address: the /tmp fallback below */
    }
    if (n < 0)
        n = snprintf(path, sizeof(path), "/tmp/kvtier-%u/kvtier.sock", (unsigned)euid);
    if (n < 0 || (size_t)n >= cap) {
        if (cap)
            buf[0] = '\0';
        return KVT_E_TOOBIG;
    }
    memcpy(buf, path, (size_t)n + 1);
    return 0;
}

__attribute__((format(printf, 4, 5))) static int say(char *why, size_t why_cap, int rc,
                                                     const char *fmt, ...)
{
    if (why && why_cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, why_cap, fmt, ap);
        va_end(ap);
    }
    return rc;
}

int kvt_socket_dir_prepare(const char *socket_path, char *why, size_t why_cap)
{
    if (why && why_cap)
        why[0] = '\0';
    if (!socket_path || !*socket_path || strlen(socket_path) >= KVT_SOCKET_PATH_MAX)
        return say(why, why_cap, KVT_E_INVAL, "socket path is empty or longer than %d bytes",
                   KVT_SOCKET_PATH_MAX - 1);
    char dir[KVT_SOCKET_PATH_MAX];
    const char *slash = strrchr(socket_path, '/');
    if (!slash)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == socket_path)
        snprintf(dir, sizeof(dir), "/");
    else
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - socket_path), socket_path);
    if (slash && slash[1] == '\0')
        return say(why, why_cap, KVT_E_INVAL, "socket path %s names a directory", socket_path);

    if (mkdir(dir, SOCKET_DIR_MODE) != 0 && errno != EEXIST) {
        int e = errno;
        return say(why, why_cap, -e, "cannot create socket directory %s: %s", dir, strerror(e));
    }
    /* O_NOFOLLOW: a symlink in place of the directory could be pointed elsewhere later by whoever
     * owns it; fstat on the opened directory then checks exactly what the socket will live in. */
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        struct stat lst;
        if ((e == ELOOP || e == ENOTDIR) && lstat(dir, &lst) == 0 && S_ISLNK(lst.st_mode))
            return say(why, why_cap, -ELOOP, "socket directory %s is a symlink", dir);
        return say(why, why_cap, -e, "socket directory %s: %s", dir, strerror(e));
    }
    struct stat st;
    int rc = fstat(fd, &st);
    int e = errno;
    close(fd);
    if (rc != 0)
        return say(why, why_cap, -e, "socket directory %s: %s", dir, strerror(e));
    uid_t euid = geteuid();
    if (st.st_uid != euid && st.st_uid != 0)
        return say(why, why_cap, -EACCES,
                   "socket directory %s is owned by uid %u, not by uid %u or root: another user "
                   "could replace the socket",
                   dir, (unsigned)st.st_uid, (unsigned)euid);
    if (st.st_mode & (S_IWGRP | S_IWOTH))
        return say(why, why_cap, -EACCES,
                   "socket directory %s is writable by %s (mode %04o): another user could bind "
                   "the socket first; use a directory of the daemon's own",
                   dir, (st.st_mode & S_IWOTH) ? "others" : "its group",
                   (unsigned)(st.st_mode & 07777));
    return 0;
}
