/*
 * Benchmark helpers. The redis-server baseline runs as a child on a Unix socket in the
 * benchmark's temporary directory, so it never touches the network.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "bench/bench.h"
#include "bench/util.h"

int kvt_bench_redis_start(struct kvt_bench_redis *r, const char *dir, const char **why)
{
    const char *bin = "/usr/bin/redis-server";
    if (access(bin, X_OK) != 0) {
        *why = "redis-server not installed";
        return -1;
    }
    snprintf(r->socket_path, sizeof(r->socket_path), "%s/redis.sock", dir);
    pid_t pid = fork();
    if (pid < 0) {
        *why = "fork failed";
        return -1;
    }
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, STDOUT_FILENO);
            dup2(null, STDERR_FILENO);
        }
        execl(bin, bin, "--port", "0", "--unixsocket", r->socket_path, "--unixsocketperm", "700",
              "--save", "", "--appendonly", "no", "--dir", dir, "--proto-max-bulk-len", "1gb",
              "--client-query-buffer-limit", "1gb", (char *)NULL);
        _exit(127);
    }
    r->pid = pid;
    for (int i = 0; i < 500; i++) {
        redisContext *c = redisConnectUnix(r->socket_path);
        if (c && !c->err) {
            redisReply *rep = redisCommand(c, "PING");
            int ok = rep && rep->type == REDIS_REPLY_STATUS;
            freeReplyObject(rep);
            redisFree(c);
            if (ok)
                return 0;
        } else if (c) {
            redisFree(c);
        }
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    kvt_bench_redis_stop(r);
    *why = "redis-server did not start";
    return -1;
}

void kvt_bench_redis_stop(struct kvt_bench_redis *r)
{
    if (r->pid <= 0)
        return;
    kill(r->pid, SIGTERM);
    waitpid(r->pid, NULL, 0);
    r->pid = 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double kvt_bench_percentile(double *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof(*v), cmp_double);
    size_t i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

void kvt_bench_fill(void *buf, size_t n, uint32_t seed)
{
    uint64_t x = 0x9e3779b97f4a7c15ull ^ seed;
    uint64_t *p = buf;
    for (size_t i = 0; i < n / 8; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = x;
    }
    memset((uint8_t *)buf + n / 8 * 8, (int)seed, n % 8);
}

double kvt_bench_memcpy_gbps(size_t bytes, int iters, int n_src, int n_dst)
{
    uint8_t *src = malloc(bytes * (size_t)n_src), *dst = malloc(bytes * (size_t)n_dst);
    if (!src || !dst) {
        free(src);
        free(dst);
        return 0;
    }
    kvt_bench_fill(src, bytes * (size_t)n_src, 1);
    memset(dst, 0, bytes * (size_t)n_dst);
    double best = 0;
    for (int round = 0; round < 3; round++) {
        uint64_t t0 = kvt_bench_now_ns();
        for (int i = 0; i < iters; i++) {
            uint8_t *d = dst + (size_t)(i % n_dst) * bytes;
            memcpy(d, src + (size_t)(i % n_src) * bytes, bytes);
            /* Keep the compiler from dropping copies whose result is never read. */
            __asm__ volatile("" : : "r"(d) : "memory");
        }
        double gbps = (double)bytes * iters / (double)(kvt_bench_now_ns() - t0);
        best = gbps > best ? gbps : best;
    }
    free(src);
    free(dst);
    return best;
}

int kvt_bench_part(const struct kvt_bench_opts *opts, const char *part)
{
    size_t n = strlen(part);

    if (!opts->only)
        return 1;
    for (const char *p = opts->only; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && !strncmp(p, part, n))
            return 1;
        p += len + (end != NULL);
    }
    return 0;
}

int kvt_bench_json_num(const char *text, const char *after, const char *key, double *out)
{
    const char *p = text;
    if (after && !(p = strstr(text, after)))
        return -1;
    char pat[80];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    if (!(p = strstr(p, pat)))
        return -1;
    char *end;
    *out = strtod(p + strlen(pat), &end);
    return end == p + strlen(pat) ? -1 : 0;
}

char *kvt_bench_slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (buf)
        buf[n] = 0;
    return buf;
}
