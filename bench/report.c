/*
 * Report sink for kvtier-bench: rows of named fields, headline ratios, and their three renderings
 * (a human table on stdout, one JSON object, one CSV). Fixed-size tables: a benchmark that
 * records more than the limits is told so on stderr and the extra fields are dropped.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"
#include "bench/report.h"

uint64_t kvt_bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void kvt_bench_progress(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "  .. ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

static struct kvt_bench_field *add_field(struct kvt_bench_report *r, const char *name)
{
    if (r->n_rows == 0)
        kvt_bench_row(r, "(unnamed)");
    struct kvt_bench_row *row = &r->rows[r->n_rows - 1];
    if (row->n_fields == KVT_BENCH_FIELDS_MAX) {
        fprintf(stderr, "bench: too many fields in row %s\n", row->label);
        return NULL;
    }
    struct kvt_bench_field *f = &row->fields[row->n_fields++];
    memset(f, 0, sizeof(*f));
    snprintf(f->name, sizeof(f->name), "%s", name);
    return f;
}

void kvt_bench_row(struct kvt_bench_report *r, const char *label)
{
    if (r->n_rows == KVT_BENCH_ROWS_MAX) {
        fprintf(stderr, "bench: too many rows\n");
        r->n_rows--; /* overwrite the last one rather than write out of bounds */
    }
    struct kvt_bench_row *row = &r->rows[r->n_rows++];
    memset(row, 0, sizeof(*row));
    snprintf(row->label, sizeof(row->label), "%s", label);
}

void kvt_bench_num(struct kvt_bench_report *r, const char *name, double value)
{
    struct kvt_bench_field *f = add_field(r, name);
    if (f) {
        f->kind = KVT_BENCH_NUM;
        f->num = value;
    }
}

void kvt_bench_str(struct kvt_bench_report *r, const char *name, const char *value)
{
    struct kvt_bench_field *f = add_field(r, name);
    if (f) {
        f->kind = KVT_BENCH_STR;
        snprintf(f->str, sizeof(f->str), "%s", value);
    }
}

void kvt_bench_null(struct kvt_bench_report *r, const char *name, const char *reason)
{
    struct kvt_bench_field *f = add_field(r, name);
    if (f) {
        f->kind = KVT_BENCH_NULL;
        snprintf(f->str, sizeof(f->str), "%s", reason);
    }
}

void kvt_bench_ratio(struct kvt_bench_report *r, const char *name, double value)
{
    if (r->n_ratios == KVT_BENCH_RATIOS_MAX)
        return;
    snprintf(r->ratios[r->n_ratios].name, sizeof(r->ratios[0].name), "%s", name);
    r->ratios[r->n_ratios].value = value;
    r->n_ratios++;
}

static void json_num(FILE *f, double v)
{
    if (isfinite(v))
        fprintf(f, "%.6g", v);
    else
        fprintf(f, "null");
}

void kvt_bench_print(const struct kvt_bench_report *r, FILE *out)
{
    fprintf(out, "\n== kvtier-bench %s ==\n", r->name);
    for (uint32_t i = 0; i < r->n_rows; i++) {
        const struct kvt_bench_row *row = &r->rows[i];
        fprintf(out, "%-30s", row->label);
        for (uint32_t k = 0; k < row->n_fields; k++) {
            const struct kvt_bench_field *f = &row->fields[k];
            if (f->kind == KVT_BENCH_NUM)
                fprintf(out, "  %s=%.4g", f->name, f->num);
            else if (f->kind == KVT_BENCH_STR)
                fprintf(out, "  %s=%s", f->name, f->str);
            else
                fprintf(out, "  %s=null (%s)", f->name, f->str);
        }
        fprintf(out, "\n");
    }
    if (r->n_ratios) {
        fprintf(out, "ratios:\n");
        for (uint32_t i = 0; i < r->n_ratios; i++)
            fprintf(out, "  %-44s %.3f\n", r->ratios[i].name, r->ratios[i].value);
    }
}

static void machine_json(FILE *f)
{
    struct utsname u;
    uname(&u);
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    char model[256] = "unknown";
    FILE *ci = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (ci && fgets(line, sizeof(line), ci)) {
        if (!strncmp(line, "model name", 10)) {
            char *c = strchr(line, ':');
            if (c) {
                snprintf(model, sizeof(model), "%s", c + 2);
                model[strcspn(model, "\n\"")] = '\0';
            }
            break;
        }
    }
    if (ci)
        fclose(ci);
    fprintf(f, "{\"cores\": %ld, \"memory_bytes\": %lld, \"kernel\": \"%s %s\", \"cpu\": \"%s\"}",
            sysconf(_SC_NPROCESSORS_ONLN), (long long)pages * psz, u.sysname, u.release, model);
}

int kvt_bench_write_json(const struct kvt_bench_report *r, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "{\"bench\": \"%s\", \"machine\": ", r->name);
    machine_json(f);
    fprintf(f, ", \"results\": [");
    for (uint32_t i = 0; i < r->n_rows; i++) {
        const struct kvt_bench_row *row = &r->rows[i];
        fprintf(f, "%s\n  {\"label\": \"%s\"", i ? "," : "", row->label);
        for (uint32_t k = 0; k < row->n_fields; k++) {
            const struct kvt_bench_field *fl = &row->fields[k];
            fprintf(f, ", \"%s\": ", fl->name);
            if (fl->kind == KVT_BENCH_NUM) {
                json_num(f, fl->num);
            } else if (fl->kind == KVT_BENCH_STR) {
                fprintf(f, "\"%s\"", fl->str);
            } else {
                fprintf(f, "null, \"%s_null_reason\": \"%s\"", fl->name, fl->str);
            }
        }
        fprintf(f, "}");
    }
    fprintf(f, "\n], \"ratios\": {");
    for (uint32_t i = 0; i < r->n_ratios; i++) {
        fprintf(f, "%s\"%s\": ", i ? ", " : "", r->ratios[i].name);
        json_num(f, r->ratios[i].value);
    }
    fprintf(f, "}}\n");
    return fclose(f);
}

int kvt_bench_write_csv(const struct kvt_bench_report *r, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    /* Long format (label, field, value) so rows with different fields share one file. */
    fprintf(f, "bench,label,field,value\n");
    for (uint32_t i = 0; i < r->n_rows; i++) {
        const struct kvt_bench_row *row = &r->rows[i];
        for (uint32_t k = 0; k < row->n_fields; k++) {
            const struct kvt_bench_field *fl = &row->fields[k];
            if (fl->kind == KVT_BENCH_NUM)
                fprintf(f, "%s,%s,%s,%.6g\n", r->name, row->label, fl->name, fl->num);
            else if (fl->kind == KVT_BENCH_STR)
                fprintf(f, "%s,%s,%s,%s\n", r->name, row->label, fl->name, fl->str);
            else
                fprintf(f, "%s,%s,%s,\n", r->name, row->label, fl->name);
        }
    }
    return fclose(f);
}
