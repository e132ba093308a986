/*
 * The metrics endpoint: a small HTTP server (libmicrohttpd, without threads of its own) on the
 * daemon's loop. GET /metrics answers every stat in the Prometheus text format (common/prom.h),
 * GET /healthz 200 "ok" or 503 with the reason a tier does not serve, anything else 404 (405 for
 * a method other than GET or HEAD). libmicrohttpd runs in its epoll mode: its epoll descriptor is
 * one watcher of the loop and its timeouts one loop timer, so every answer is built on the loop
 * thread from a snapshot taken there, with no lock. Connections, request size and idle time are
 * bounded (metrics.connections_max, 16 KiB of headers, metrics.idle_timeout_s), so a slow or
 * hostile scraper costs a connection slot for at most that long and never blocks the loop.
 *
 * The module knows nothing of the server: it asks the callbacks below for the stats and the
 * health, and its caller destroys it before the loop.
 */
#ifndef KVT_DAEMON_METRICS_H
#define KVT_DAEMON_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/loop.h"
#include "common/stats.h"
#include "kvtier/kvtier.h"

struct kvt_metrics;

/* Every stat, in storage the callee owns until its next call (on the loop thread). */
typedef size_t (*kvt_metrics_snapshot_fn)(void *arg, const struct kvt_stat **out);
/* 0 when healthy; nonzero with a one-line reason in why (cap bytes). */
typedef int (*kvt_metrics_health_fn)(void *arg, char *why, size_t cap);

struct kvt_metrics_config {
    const char *listen;       /* borrowed during create: host:port, a bare port, unix:/path */
    int allow_remote;         /* accept an address that is not loopback */
    uint32_t connections_max; /* scrapers at once */
    uint32_t idle_timeout_s;  /* a connection without progress this long is closed */
    kvt_metrics_snapshot_fn snapshot;
    kvt_metrics_health_fn health;
    void *arg; /* for both callbacks; borrowed for the endpoint's life */
};

/* Endpoint counters, for the stats (metrics.*). */
#define KVT_METRICS_STATS_DEF(X, A)                                                                \
    X(A, scrapes, KVT_STAT_COUNTER, "", "GET /metrics answered")                                   \
    X(A, health_checks, KVT_STAT_COUNTER, "", "GET /healthz answered (200 or 503)")                \
    X(A, health_failures, KVT_STAT_COUNTER, "", "GET /healthz answered 503")                       \
    X(A, not_found, KVT_STAT_COUNTER, "", "HTTP requests for another path (404)")                  \
    X(A, bad_method, KVT_STAT_COUNTER, "", "HTTP requests with a method other than GET or HEAD")   \
    X(A, render_errors, KVT_STAT_COUNTER, "",                                                      \
      "scrapes answered 500 because the stats did not render (a bug or too small a buffer)")
#define KVT_METRICS_STATS(A) KVT_METRICS_STATS_DEF(KVT_STAT_NAME_ONLY, A)

struct kvt_metrics_stats {
#define KVT__MSTAT_FIELD(name) uint64_t name;
    KVT_METRICS_STATS(KVT__MSTAT_FIELD)
#undef KVT__MSTAT_FIELD
};

/* Parses metrics.listen: "unix:/path", "port" (on 127.0.0.1), "host:port" or "[v6]:port" with a
 * numeric host or "localhost"; port 0 lets the kernel choose (the log says which). Refuses an
 * address that is not loopback unless allow_remote. 0, or KVT_E_BADCONFIG with the reason in why.
 * out may be NULL (a check only). */
int kvt_metrics_parse_listen(const char *spec, int allow_remote, struct sockaddr_storage *out,
                             socklen_t *out_len, char *why, size_t why_cap);

/* Binds the address and registers with loop (borrowed for the endpoint's life). 0, or an error
 * with a one-line reason in why. */
int kvt_metrics_create(const struct kvt_metrics_config *cfg, struct kvt_loop *loop, char *why,
                       size_t why_cap, struct kvt_metrics **out);
/* NULL-safe; closes every scraper connection and the listening socket (a Unix socket's file is
 * removed). */
void kvt_metrics_destroy(struct kvt_metrics *m);
void kvt_metrics_stats(const struct kvt_metrics *m, struct kvt_metrics_stats *out);

#endif
