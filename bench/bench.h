/*
 * kvtier-bench framework: each benchmark is one function that measures kvtier and its baselines in
 * the same run and records rows and ratios into a report; the framework prints the human table and
 * writes the JSON object and CSV that BENCHMARKS.md specifies. Every figure carries its unit in its
 * name (_gbps, _us, _ms, _bytes, _ratio).
 */
#ifndef KVT_BENCH_BENCH_H
#define KVT_BENCH_BENCH_H

#include <stddef.h>
#include <stdint.h>

struct kvt_bench_opts {
    int quick;            /* quick mode: under 60 s on a 2-core machine */
    const char *work_dir; /* temporary directory for this run (removed afterwards) */
    const char *bin_dir;  /* where kvtierd lives */
    const char *only;     /* NULL: every part; else a comma-separated list of the parts to run */
    const char *out_dir;  /* where the JSON and CSV go: extra files of a benchmark go there too */
    int argc;             /* options for the benchmark itself (only one that takes options) */
    char **argv;
};

/* Whether the part named part of a benchmark is to run (--only). */
int kvt_bench_part(const struct kvt_bench_opts *opts, const char *part);

struct kvt_bench_report;

/* Starts a new row (one configuration measured, e.g. "get 4MiB kvtier"). */
void kvt_bench_row(struct kvt_bench_report *r, const char *label);
/* Adds a numeric field to the current row. */
void kvt_bench_num(struct kvt_bench_report *r, const char *name, double value);
/* Adds a text field to the current row. */
void kvt_bench_str(struct kvt_bench_report *r, const char *name, const char *value);
/* Adds a null field with the reason a baseline could not run. */
void kvt_bench_null(struct kvt_bench_report *r, const char *name, const char *reason);
/* Records a headline ratio (kvtier / baseline), printed under the table and in "ratios". */
void kvt_bench_ratio(struct kvt_bench_report *r, const char *name, double value);
/* A progress line on stderr for long runs. */
void kvt_bench_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Monotonic clock in nanoseconds. */
uint64_t kvt_bench_now_ns(void);

/* What a benchmark returns for options it does not accept (it has printed why): nothing is
 * written. Other results: 0, or nonzero when a measurement failed. */
#define KVT_BENCH_USAGE 2

typedef int (*kvt_bench_fn)(const struct kvt_bench_opts *opts, struct kvt_bench_report *r);

/* Benchmarks; each lives in its own bench/<name>.c. Declared weak so that a benchmark whose file
 * is not built yet is reported as missing rather than breaking the link. */
int kvt_bench_host(const struct kvt_bench_opts *opts, struct kvt_bench_report *r);
int kvt_bench_lookup(const struct kvt_bench_opts *opts, struct kvt_bench_report *r);
int kvt_bench_disk(const struct kvt_bench_opts *opts, struct kvt_bench_report *r);
int kvt_bench_codec(const struct kvt_bench_opts *opts, struct kvt_bench_report *r);
int kvt_bench_sparse(const struct kvt_bench_opts *opts, struct kvt_bench_report *r);
int kvt_bench_select(const struct kvt_bench_opts *opts, struct kvt_bench_report *r);
int kvt_bench_capacity(const struct kvt_bench_opts *opts, struct kvt_bench_report *r);
int kvt_bench_lossy(const struct kvt_bench_opts *opts, struct kvt_bench_report *r);
int kvt_bench_rotate(const struct kvt_bench_opts *opts, struct kvt_bench_report *r);
int kvt_bench_evict(const struct kvt_bench_opts *opts, struct kvt_bench_report *r);

#endif
