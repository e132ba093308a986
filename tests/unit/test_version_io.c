/*
 * The serialized form of reuse version info and the version log's records (daemon/version_io.h):
 * round trips (with and without passages before the version), every header field's check, every
 * single-byte change of a form and of a record refused, every truncation refused, shares outside
 * [0, 1] or layers summing past 1 refused even under a valid checksum, a failed allocation, and
 * the log itself (daemon/version_log.h): records replayed in order, a damaged record skipped and
 * counted while the ones after it are still read, a torn tail counted, the rewrite.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <xxhash.h>

#include "common/alloc.h"
#include "daemon/version_io.h"
#include "daemon/version_log.h"
#include "kvtier/errors.h"

#define LAYERS 3u
#define NP 2u
#define TOK 5u

static struct kvt_version *make(uint32_t np, uint64_t start, float scale)
{
    struct kvt_version *v = kvt_version_alloc(np, LAYERS, TOK);
    assert_non_null(v);
    v->start_pos = start;
    for (uint32_t i = 0; i < np; i++)
        v->prefix[i] = (struct kvt_key){.lo = 0x1000 + i, .hi = 0xbeef00 + i};
    for (uint32_t l = 0; l < LAYERS; l++)
        for (uint32_t j = 0; j <= np; j++)
            v->layer_mass[l * (np + 1) + j] = scale * (float)(l + j + 1) / 20.0f;
    for (uint32_t i = 0; i < TOK; i++)
        v->token_mass[i] = scale * (float)i / 8.0f;
    return v;
}

static void assert_same(const struct kvt_version *a, const struct kvt_version *b)
{
    assert_int_equal(a->start_pos, b->start_pos);
    assert_int_equal(a->n_prefix, b->n_prefix);
    assert_int_equal(a->layers, b->layers);
    assert_int_equal(a->n_tokens, b->n_tokens);
    assert_int_equal(a->bytes, b->bytes);
    assert_memory_equal(a->prefix, b->prefix, a->n_prefix * sizeof(struct kvt_key));
    assert_memory_equal(a->layer_mass, b->layer_mass,
                        (size_t)a->layers * (a->n_prefix + 1) * sizeof(float));
    assert_memory_equal(a->token_mass, b->token_mass, a->n_tokens * sizeof(float));
}

static void put_le(unsigned char *p, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Recomputes the form's check after an edit, so that the field checks behind it are reached. */
static void reseal(unsigned char *p, size_t len)
{
    put_le(p + 48, XXH3_64bits_withSeed(p + 64, len - 64, XXH3_64bits(p, 48)), 8);
}

static void test_round_trip(void **state)
{
    (void)state;
    for (uint32_t np = 0; np <= NP; np += NP) {
        struct kvt_version *v = make(np, 12345678901ull, 1.0f);
        size_t n = kvt_version_io_bytes(v);
        assert_int_equal(n, 64 + np * 16 + (LAYERS * (np + 1) + TOK) * 4);
        unsigned char *buf = malloc(n);
        kvt_version_io_write(v, buf);
        assert_memory_equal(buf, "KVTV", 4);
        struct kvt_version *got = NULL;
        assert_int_equal(kvt_version_io_read(buf, n, &got), 0);
        assert_same(v, got);
        assert_int_equal(got->logged_stamp, 0);
        kvt_free(KVT_ALLOC_INDEX, got);
        kvt_free(KVT_ALLOC_INDEX, v);
        free(buf);
    }
}

static void test_every_byte_and_truncation(void **state)
{
    (void)state;
    struct kvt_version *v = make(NP, 77, 1.0f), *got;
    size_t n = kvt_version_io_bytes(v);
    unsigned char *buf = malloc(n), *bad = malloc(n);
    kvt_version_io_write(v, buf);
    for (size_t i = 0; i < n; i++) {
        for (unsigned bit = 0; bit < 8; bit += 3) {
            memcpy(bad, buf, n);
            bad[i] ^= (unsigned char)(1u << bit);
            got = NULL;
            assert_int_equal(kvt_version_io_read(bad, n, &got), KVT_E_CORRUPT);
            assert_null(got);
        }
    }
    for (size_t len = 0; len < n; len++)
        assert_int_equal(kvt_version_io_read(buf, len, &got), KVT_E_CORRUPT);
    /* A longer buffer is not this form either (the total says how long it is). */
    unsigned char *longer = calloc(1, n + 8);
    memcpy(longer, buf, n);
    assert_int_equal(kvt_version_io_read(longer, n + 8, &got), KVT_E_CORRUPT);
    free(longer);
    free(bad);
    free(buf);
    kvt_free(KVT_ALLOC_INDEX, v);
}

/* Each header field out of range, the checksum made right again: still refused. */
static void test_fields_checked(void **state)
{
    (void)state;
    struct kvt_version *v = make(NP, 5, 1.0f), *got;
    size_t n = kvt_version_io_bytes(v);
    unsigned char *buf = malloc(n), *bad = malloc(n);
    kvt_version_io_write(v, buf);
    struct {
        unsigned off, bytes;
        uint64_t value;
    } edits[] = {
        {0, 4, 0x5654564cu},                 /* magic */
        {4, 2, 2},                           /* version */
        {6, 2, 32},                          /* header bytes */
        {8, 4, 0},                           /* total */
        {12, 4, 1},                          /* reserved */
        {24, 4, KVT_VERSION_PREFIX_MAX + 1}, /* n_prefix */
        {24, 4, NP - 1},                     /* n_prefix that disagrees with the total */
        {28, 4, 0},                          /* layers */
        {28, 4, KVT_VERSION_LAYERS_MAX + 1},
        {32, 4, 0}, /* n_tokens */
        {32, 4, 65537},
        {36, 1, 1}, /* reserved */
        {47, 1, 1},
        {56, 1, 1}, /* reserved */
        {63, 1, 1},
    };
    for (size_t i = 0; i < sizeof(edits) / sizeof(edits[0]); i++) {
        memcpy(bad, buf, n);
        put_le(bad + edits[i].off, edits[i].value, edits[i].bytes);
        reseal(bad, n);
        assert_int_equal(kvt_version_io_read(bad, n, &got), KVT_E_CORRUPT);
    }
    /* Shares: NaN, negative, above 1, a layer summing past 1. */
    size_t lm = 64 + NP * 16, tm = lm + LAYERS * (NP + 1) * 4;
    float vals[] = {NAN, -0.25f, 1.5f, INFINITY};
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        size_t at[] = {lm, lm + 4 * (LAYERS * (NP + 1) - 1), tm, tm + 4 * (TOK - 1)};
        for (size_t k = 0; k < 4; k++) {
            memcpy(bad, buf, n);
            memcpy(bad + at[k], &vals[i], 4);
            reseal(bad, n);
            assert_int_equal(kvt_version_io_read(bad, n, &got), KVT_E_CORRUPT);
        }
    }
    memcpy(bad, buf, n);
    float most = 0.6f;
    memcpy(bad + lm, &most, 4);
    memcpy(bad + lm + 4, &most, 4); /* 0.6 + 0.6 + ... > 1 */
    reseal(bad, n);
    assert_int_equal(kvt_version_io_read(bad, n, &got), KVT_E_CORRUPT);
    /* Resealed without edits: accepted (the edits, not the reseal, were refused). */
    memcpy(bad, buf, n);
    reseal(bad, n);
    assert_int_equal(kvt_version_io_read(bad, n, &got), 0);
    kvt_free(KVT_ALLOC_INDEX, got);
    /* An allocation that fails: nothing leaks, the error is said. */
    kvt_alloc_fail_nth(1);
    assert_int_equal(kvt_version_io_read(buf, n, &got), KVT_E_NOMEM);
    kvt_alloc_fail_nth(0);
    free(bad);
    free(buf);
    kvt_free(KVT_ALLOC_INDEX, v);
}

static void test_record(void **state)
{
    (void)state;
    struct kvt_version *v = make(1, 99, 0.5f);
    struct kvt_obj_id id = {.ns_seed = 0x1122, .key = {.lo = 3, .hi = 4}, .variant = 7}, got_id;
    size_t n = kvt_version_log_record_bytes(v);
    assert_int_equal(n % 8, 0);
    unsigned char *buf = calloc(1, n + 64), *bad = malloc(n);
    kvt_version_log_record_write(v, &id, 4242, buf);
    uint64_t stamp;
    const void *form;
    size_t form_len, step;
    assert_int_equal(
        kvt_version_log_record_read(buf, n + 64, &got_id, &stamp, &form, &form_len, &step), 0);
    assert_true(kvt_obj_id_eq(&id, &got_id));
    assert_int_equal(stamp, 4242);
    assert_int_equal(step, n);
    assert_ptr_equal(form, buf + 64);
    struct kvt_version *got = NULL;
    assert_int_equal(kvt_version_io_read(form, form_len, &got), 0);
    assert_same(v, got);
    kvt_free(KVT_ALLOC_INDEX, got);
    for (size_t i = 0; i < n; i++) {
        memcpy(bad, buf, n);
        bad[i] ^= 0x10;
        assert_int_equal(
            kvt_version_log_record_read(bad, n, &got_id, &stamp, &form, &form_len, &step),
            KVT_E_CORRUPT);
    }
    for (size_t len = 0; len < n; len++)
        assert_int_equal(
            kvt_version_log_record_read(buf, len, &got_id, &stamp, &form, &form_len, &step),
            KVT_E_CORRUPT);
    /* Stamp 0 (no copy) is never written by the daemon: refused. */
    kvt_version_log_record_write(v, &id, 0, bad);
    assert_int_equal(kvt_version_log_record_read(bad, n, &got_id, &stamp, &form, &form_len, &step),
                     KVT_E_CORRUPT);
    free(bad);
    free(buf);
    kvt_free(KVT_ALLOC_INDEX, v);
}

struct seen {
    uint64_t stamps[16];
    uint32_t n;
};

static void on_record(void *arg, const struct kvt_obj_id *id, uint64_t stamp, const void *form,
                      size_t form_len)
{
    struct seen *s = arg;
    struct kvt_version *v = NULL;
    assert_int_equal(id->variant, (uint32_t)stamp);
    assert_int_equal(kvt_version_io_read(form, form_len, &v), 0);
    assert_int_equal(v->start_pos, stamp * 10);
    kvt_free(KVT_ALLOC_INDEX, v);
    s->stamps[s->n++] = stamp;
}

static void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

/* Five records, the second damaged and the file torn in the fifth: 1, 3, 4 come back, two
 * damaged stretches are counted; the rewrite then holds exactly what was given to it. */
static void test_log_replay(void **state)
{
    (void)state;
    char dir[] = "/tmp/kvt-vlog-XXXXXX", path[600];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/%s", dir, KVT_VERSION_LOG_NAME);
    unsigned char *file = calloc(1, 1 << 16);
    size_t len = 0, at[6];
    struct kvt_version *vs[6];
    for (uint32_t i = 1; i <= 5; i++) {
        vs[i] = make(i % 3, (uint64_t)i * 10, 1.0f);
        struct kvt_obj_id id = {.ns_seed = 9, .key = {.lo = i, .hi = 0}, .variant = i};
        at[i] = len;
        kvt_version_log_record_write(vs[i], &id, i, file + len);
        len += kvt_version_log_record_bytes(vs[i]);
    }
    file[at[2] + 100] ^= 1;
    write_file(path, file, len - 12);

    struct kvt_vlog l;
    struct kvt_vlog_config cfg = {.dir = dir, .buffer_bytes = 1 << 16, .bytes_max = 1 << 20};
    struct seen s = {0};
    assert_int_equal(kvt_vlog_open(&l, &cfg), 0);
    kvt_vlog_replay(&l, on_record, &s);
    assert_int_equal(s.n, 3);
    assert_int_equal(s.stamps[0], 1);
    assert_int_equal(s.stamps[1], 3);
    assert_int_equal(s.stamps[2], 4);
    assert_int_equal(l.corrupt, 2);
    assert_int_equal(l.replayed, 3);
    assert_int_equal(kvt_vlog_rewrite_begin(&l), 0);
    struct kvt_obj_id id4 = {.ns_seed = 9, .key = {.lo = 4, .hi = 0}, .variant = 4};
    assert_int_equal(kvt_vlog_rewrite_add(&l, vs[4], &id4, 4), 0);
    assert_int_equal(kvt_vlog_rewrite_end(&l), 0);
    kvt_vlog_close(&l);

    memset(&s, 0, sizeof(s));
    assert_int_equal(kvt_vlog_open(&l, &cfg), 0);
    kvt_vlog_replay(&l, on_record, &s);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.stamps[0], 4);
    assert_int_equal(l.corrupt, 0);
    kvt_vlog_close(&l);
    kvt_vlog_close(&l); /* idempotent */

    for (uint32_t i = 1; i <= 5; i++)
        kvt_free(KVT_ALLOC_INDEX, vs[i]);
    free(file);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),     cmocka_unit_test(test_every_byte_and_truncation),
        cmocka_unit_test(test_fields_checked), cmocka_unit_test(test_record),
        cmocka_unit_test(test_log_replay),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
