/*
 * The metrics endpoint (see metrics.h): the listening socket, libmicrohttpd driven from the loop,
 * and the three answers. libmicrohttpd parses HTTP; this file only routes a parsed request.
 */
#include "daemon/metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <microhttpd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/prom.h"
#include "kvtier/errors.h"

/* Room for one rendering of every stat (about 60 KiB with a disk tier and eight tenants). */
#define RENDER_BYTES (1u << 20)
/* Per connection: request line and headers past this get 431 and the connection closes. */
#define CONN_MEMORY_BYTES (16u * 1024)
#define RUN_INTERVAL_MS 1000u

struct kvt_metrics {
    struct kvt_metrics_config cfg;
    struct kvt_loop *loop;
    struct MHD_Daemon *mhd;
    int listen_fd;
    struct kvt_watch w;
    int watching;
    struct kvt_timer timer;
    char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    char *buf; /* RENDER_BYTES */
    struct kvt_metrics_stats st;
};

/* ---- the address ------------------------------------------------------------------------- */

static int is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a))
            return 1;
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return ss->ss_family == AF_UNIX;
}

int kvt_metrics_parse_listen(const char *spec, int allow_remote, struct sockaddr_storage *out,
                             socklen_t *out_len, char *why, size_t why_cap)
{
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof(ss));
    if (!strncmp(spec, "unix:", 5)) {
        struct sockaddr_un *un = (struct sockaddr_un *)&ss;
        const char *path = spec + 5;
        if (path[0] != '/' || strlen(path) >= sizeof(un->sun_path)) {
            snprintf(why, why_cap,
                     "metrics.listen '%s': unix: needs an absolute path under %zu "
                     "bytes",
                     spec, sizeof(un->sun_path));
            return KVT_E_BADCONFIG;
        }
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, path, strlen(path) + 1);
        len = (socklen_t)sizeof(*un);
        goto done;
    }
    char host[256], port[16];
    const char *colon = strrchr(spec, ':');
    if (!colon) {
        snprintf(host, sizeof(host), "127.0.0.1");
        snprintf(port, sizeof(port), "%s", spec);
    } else {
        size_t hl = (size_t)(colon - spec);
        const char *h = spec;
        if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') { /* [v6]:port */
            h++;
            hl -= 2;
        }
        if (hl == 0 || hl >= sizeof(host)) {
            snprintf(why, why_cap, "metrics.listen '%s': want host:port, a port or unix:/path",
                     spec);
            return KVT_E_BADCONFIG;
        }
        memcpy(host, h, hl);
        host[hl] = '\0';
        snprintf(port, sizeof(port), "%s", colon + 1);
        if (!strcmp(host, "localhost"))
            snprintf(host, sizeof(host), "127.0.0.1");
    }
    char *end;
    errno = 0;
    unsigned long p = strtoul(port, &end, 10);
    if (!port[0] || *end || p > 65535 || errno || strlen(port) > 5) {
        snprintf(why, why_cap, "metrics.listen '%s': the port must be a number 0..65535", spec);
        return KVT_E_BADCONFIG;
    }
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV,
                             .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    if (getaddrinfo(host, port, &hints, &ai) || !ai) {
        snprintf(why, why_cap,
                 "metrics.listen '%s': '%s' is not a numeric IPv4 or IPv6 address (or localhost)",
                 spec, host);
        return KVT_E_BADCONFIG;
    }
    memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
    len = ai->ai_addrlen;
    freeaddrinfo(ai);
    if (!is_loopback(&ss) && !allow_remote) {
        snprintf(why, why_cap,
                 "metrics.listen '%s' is not a loopback address: the endpoint has no "
                 "authentication; set metrics.allow_remote=true to expose it anyway",
                 spec);
        return KVT_E_BADCONFIG;
    }
done:
    if (out) {
        *out = ss;
        *out_len = len;
    }
    return 0;
}

static int listen_on(struct kvt_metrics *m, char *why, size_t why_cap)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int rc = kvt_metrics_parse_listen(m->cfg.listen, m->cfg.allow_remote, &ss, &len, why, why_cap);
    if (rc)
        return rc;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(why, why_cap, "metrics socket: %s", strerror(errno));
        return -errno;
    }
    int one = 1;
    if (ss.ss_family != AF_UNIX)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss.ss_family == AF_UNIX) {
        const struct sockaddr_un *un = (const struct sockaddr_un *)&ss;
        const char *path = un->sun_path;
        struct stat sb;
        /* A socket file left by a daemon that died; anything else at that path is kept. */
        if (lstat(path, &sb) == 0 && S_ISSOCK(sb.st_mode))
            unlink(path);
        memcpy(m->unix_path, un->sun_path, sizeof(m->unix_path)); /* NUL-terminated: parsed */
    }
    if (bind(fd, (struct sockaddr *)&ss, len) || listen(fd, 16)) {
        rc = -errno;
        snprintf(why, why_cap, "metrics.listen %s: %s", m->cfg.listen, strerror(errno));
        m->unix_path[0] = '\0';
        close(fd);
        return rc;
    }
    if (m->unix_path[0])
        chmod(m->unix_path, 0660);
    m->listen_fd = fd;
    return 0;
}

/* ---- answers ----------------------------------------------------------------------------- */

static enum MHD_Result answer(struct MHD_Connection *conn, unsigned status, const char *type,
                              const char *body, size_t len)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static const char *const TEXT = "text/plain; charset=utf-8";

static enum MHD_Result serve_metrics(struct kvt_metrics *m, struct MHD_Connection *conn)
{
    const struct kvt_stat *st;
    size_t n = m->cfg.snapshot(m->cfg.arg, &st);
    struct kvt_prom_out out = {.buf = m->buf, .cap = RENDER_BYTES};
    int rc = kvt_prom_render(st, n, &out);
    if (rc) {
        m->st.render_errors++;
        KVT_LOG_RATELIMITED(KVT_LOG_ERROR, "metrics", "stats do not render: %s", kvt_strerror(rc));
        static const char msg[] = "stats could not be rendered; see the daemon's log\n";
        return answer(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, TEXT, msg, sizeof(msg) - 1);
    }
    m->st.scrapes++;
    return answer(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", m->buf, out.len);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct kvt_metrics *m = cls;
    (void)version;
    (void)upload_data;
    (void)con_cls;
    /* Answered at the first call, before any body is read: a body is never wanted, and
     * libmicrohttpd discards what follows and closes the connection. */
    *upload_data_size = 0;
    if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD)) {
        m->st.bad_method++;
        static const char msg[] = "only GET and HEAD\n";
        return answer(conn, MHD_HTTP_METHOD_NOT_ALLOWED, TEXT, msg, sizeof(msg) - 1);
    }
    if (!strcmp(url, "/metrics"))
        return serve_metrics(m, conn);
    if (!strcmp(url, "/healthz")) {
        char why[768];
        size_t len;
        int bad = m->cfg.health(m->cfg.arg, why, sizeof(why) - 1);
        m->st.health_checks++;
        m->st.health_failures += bad != 0;
        len = strlen(why);
        why[len++] = '\n';
        return answer(conn, bad ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_OK, TEXT, why, len);
    }
    m->st.not_found++;
    static const char msg[] = "not found: /metrics and /healthz are served here\n";
    return answer(conn, MHD_HTTP_NOT_FOUND, TEXT, msg, sizeof(msg) - 1);
}

/* ---- driving libmicrohttpd from the loop ------------------------------------------------- */

static void on_timer(void *arg);

/* Runs libmicrohttpd twice: at the connection limit it takes its listening socket out of its
 * epoll set, and puts it back only at the start of the run after the one that closed a
 * connection; without the second run a connection waiting in the backlog would never wake it.
 * Then the timer: when it next wants to be called without an event (an idle timeout, or 0 for
 * connections with work left), and at least once a second as a backstop. */
static void run(struct kvt_metrics *m)
{
    MHD_run(m->mhd);
    MHD_run(m->mhd);
    MHD_UNSIGNED_LONG_LONG ms;
    if (MHD_get_timeout(m->mhd, &ms) != MHD_YES || ms > RUN_INTERVAL_MS)
        ms = RUN_INTERVAL_MS;
    kvt_loop_timer_start(m->loop, &m->timer, ms, on_timer, m);
}

static void on_timer(void *arg)
{
    run(arg);
}

static void on_ready(void *arg, uint32_t events)
{
    (void)events;
    run(arg);
}

static void mhd_log(void *arg, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
static void mhd_log(void *arg, const char *fmt, va_list ap)
{
    char line[256];
    (void)arg;
    vsnprintf(line, sizeof(line), fmt, ap);
    size_t len = strlen(line);
    while (len && line[len - 1] == '\n')
        line[--len] = '\0';
    KVT_LOG_RATELIMITED(KVT_LOG_WARN, "metrics", "http: %s", line);
}

int kvt_metrics_create(const struct kvt_metrics_config *cfg, struct kvt_loop *loop, char *why,
                       size_t why_cap, struct kvt_metrics **out)
{
    struct kvt_metrics *m = kvt_calloc(KVT_ALLOC_MISC, 1, sizeof(*m));
    if (!m)
        return KVT_E_NOMEM;
    int rc = KVT_E_NOMEM;
    m->cfg = *cfg;
    m->loop = loop;
    m->listen_fd = -1;
    m->buf = kvt_malloc(KVT_ALLOC_MISC, RENDER_BYTES);
    if (!m->buf)
        goto err;
    if ((rc = listen_on(m, why, why_cap)))
        goto err;
    /* MHD_USE_EPOLL without an internal thread: the caller runs it (MHD_run) when its epoll
     * descriptor is readable and on its timeout. */
    m->mhd = MHD_start_daemon(MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, NULL, NULL, on_request, m,
                              MHD_OPTION_EXTERNAL_LOGGER, mhd_log, m, MHD_OPTION_LISTEN_SOCKET,
                              m->listen_fd, MHD_OPTION_CONNECTION_LIMIT,
                              (unsigned)cfg->connections_max, MHD_OPTION_CONNECTION_TIMEOUT,
                              (unsigned)cfg->idle_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                              (size_t)CONN_MEMORY_BYTES, MHD_OPTION_END);
    if (!m->mhd) {
        snprintf(why, why_cap, "metrics: libmicrohttpd did not start on %s", cfg->listen);
        rc = KVT_E_INVAL;
        goto err;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(m->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (!info || info->epoll_fd < 0) {
        snprintf(why, why_cap, "metrics: libmicrohttpd has no epoll descriptor");
        rc = KVT_E_INVAL;
        goto err;
    }
    if ((rc = kvt_loop_watch(loop, &m->w, info->epoll_fd, EPOLLIN, on_ready, m))) {
        snprintf(why, why_cap, "metrics: epoll_ctl: %s", strerror(-rc));
        goto err;
    }
    m->watching = 1;
    run(m); /* arms the timer */
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char host[INET6_ADDRSTRLEN] = "", port[8] = "";
    if (!m->unix_path[0] && getsockname(m->listen_fd, (struct sockaddr *)&ss, &sl) == 0)
        getnameinfo((struct sockaddr *)&ss, sl, host, sizeof(host), port, sizeof(port),
                    NI_NUMERICHOST | NI_NUMERICSERV);
    if (m->unix_path[0])
        KVT_INFO("metrics", "metrics listening on unix:%s (/metrics, /healthz)", m->unix_path);
    else
        KVT_INFO("metrics", "metrics listening on %s%s%s:%s (/metrics, /healthz)",
                 ss.ss_family == AF_INET6 ? "[" : "", host, ss.ss_family == AF_INET6 ? "]" : "",
                 port);
    *out = m;
    return 0;
err:
    kvt_metrics_destroy(m);
    return rc;
}

void kvt_metrics_destroy(struct kvt_metrics *m)
{
    if (!m)
        return;
    if (m->watching)
        kvt_loop_unwatch(m->loop, &m->w);
    kvt_loop_timer_stop(m->loop, &m->timer);
    if (m->mhd) {
        /* Quiesced first, so libmicrohttpd hands the listening socket back instead of closing
         * it; stopping closes every scraper connection. */
        MHD_quiesce_daemon(m->mhd);
        MHD_stop_daemon(m->mhd);
    }
    if (m->listen_fd >= 0)
        close(m->listen_fd);
    if (m->unix_path[0])
        unlink(m->unix_path);
    kvt_free(KVT_ALLOC_MISC, m->buf);
    kvt_free(KVT_ALLOC_MISC, m);
}

void kvt_metrics_stats(const struct kvt_metrics *m, struct kvt_metrics_stats *out)
{
    *out = m->st;
}
