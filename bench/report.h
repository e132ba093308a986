/* Internal to kvtier-bench: the report's storage and its renderings. */
#ifndef KVT_BENCH_REPORT_H
#define KVT_BENCH_REPORT_H

#include <stdio.h>

#include "bench/bench.h"

#define KVT_BENCH_ROWS_MAX 128
#define KVT_BENCH_FIELDS_MAX 24
#define KVT_BENCH_RATIOS_MAX 48

enum kvt_bench_kind { KVT_BENCH_NUM, KVT_BENCH_STR, KVT_BENCH_NULL };

struct kvt_bench_field {
    char name[48];
    enum kvt_bench_kind kind;
    double num;
    char str[128];
};

struct kvt_bench_row {
    char label[64];
    struct kvt_bench_field fields[KVT_BENCH_FIELDS_MAX];
    uint32_t n_fields;
};

struct kvt_bench_report {
    char name[32];
    struct kvt_bench_row rows[KVT_BENCH_ROWS_MAX];
    uint32_t n_rows;
    struct {
        char name[64];
        double value;
    } ratios[KVT_BENCH_RATIOS_MAX];
    uint32_t n_ratios;
};

void kvt_bench_print(const struct kvt_bench_report *r, FILE *out);
int kvt_bench_write_json(const struct kvt_bench_report *r, const char *path);
int kvt_bench_write_csv(const struct kvt_bench_report *r, const char *path);

#endif
