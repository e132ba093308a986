/* Helpers shared by benchmarks: a private redis-server, percentiles, a memcpy baseline. */
#ifndef KVT_BENCH_UTIL_H
#define KVT_BENCH_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct kvt_bench_redis {
    pid_t pid;
    char socket_path[300];
};

/* Starts redis-server on a Unix socket inside dir (no TCP port, no persistence). Returns 0, or
 * -1 with a reason when redis-server is not installed or does not start. */
int kvt_bench_redis_start(struct kvt_bench_redis *r, const char *dir, const char **why);
void kvt_bench_redis_stop(struct kvt_bench_redis *r);

/* Sorts v in place and returns the p-th percentile (0..100). */
double kvt_bench_percentile(double *v, size_t n, double p);

/* GB/s of libc memcpy of bytes from n_src rotating sources into n_dst rotating destinations
 * (all touched first), best of three rounds: the same data movement as the kvtier measurement it
 * is compared with. */
double kvt_bench_memcpy_gbps(size_t bytes, int iters, int n_src, int n_dst);

/* The first numeric field "key": of a JSON text (top-level fields come first), searched after the
 * first occurrence of `after` when it is not NULL. 0, or -1 when absent or not a number. */
int kvt_bench_json_num(const char *text, const char *after, const char *key, double *out);
/* The first MiB of a file, NUL-terminated (malloc'd: free it), or NULL. */
char *kvt_bench_slurp(const char *path);
/* Fills a buffer with non-trivial bytes. */
void kvt_bench_fill(void *buf, size_t n, uint32_t seed);

#endif
