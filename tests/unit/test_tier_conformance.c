/*
 * The tier conformance suite: the same cases, through the operations table only, on every tier
 * (CPU DRAM, disk, and the test tier the tier manager's unit tests drive). A new tier (GPU,
 * remote) joins by adding a fixture. Cases: write then read back at several sizes, cancelled and
 * failed writes leave nothing readable, token-range reads return exactly their rows and refuse
 * rows the object does not have, too small a buffer, removal and its barrier, counters, variants
 * of one key as separate objects, a corrupted object as a miss, for persistent tiers that
 * objects survive a reopen and are listed, and for tiers that store metadata beside objects
 * (KVT_TIER_CAP_META) that it is read back alone, survives a reopen, and when corrupted is
 * refused while the object stays.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvtier/errors.h"
#include "tests/lib/test_tier.h"
#include "tiers/disk/disk.h"
#include "tiers/host/host.h"

#define OBJ_MAX (256u * 1024u)

struct fixture {
    const char *name;
    struct kvt_tier tier;
    /* state behind tier.t */
    struct kvt_host *host;
    struct kvt_disk *disk;
    struct kvt_disk_tier dt;
    struct kvt_test_tier *tt;
    char dir[64], path[96];
    int (*open)(struct fixture *f);
    void (*close)(struct fixture *f);
    int (*corrupt)(struct fixture *f, const struct kvt_obj_id *id);      /* NULL: no checksums */
    int (*corrupt_meta)(struct fixture *f, const struct kvt_obj_id *id); /* NULL: no metadata */
};

/* ---- fixtures ------------------------------------------------------------------------------ */

static int host_open(struct fixture *f)
{
    struct kvt_host_config hc = {.arena_bytes = 16u << 20, .page_bytes = 1u << 20};
    if (kvt_host_create(&hc, NULL, NULL, &f->host))
        return -1;
    f->tier = (struct kvt_tier){&kvt_host_tier_ops, f->host};
    return 0;
}

static void host_close(struct fixture *f)
{
    kvt_host_destroy(f->host);
}

static int disk_open(struct fixture *f)
{
    if (!f->dir[0]) {
        snprintf(f->dir, sizeof(f->dir), "/tmp/kvt-conf-XXXXXX");
        if (!mkdtemp(f->dir))
            return -1;
        snprintf(f->path, sizeof(f->path), "%s/data0", f->dir);
    }
    struct kvt_disk_config dc;
    kvt_disk_config_init(&dc);
    dc.paths[0] = f->path;
    dc.n_paths = 1;
    dc.file_bytes = 32u << 20;
    dc.object_bytes_max = OBJ_MAX;
    dc.staging_bytes = 8u * (OBJ_MAX + 8192u);
    dc.queue_depth = 8;
    dc.objects_max = 1024;
    dc.allow_buffered = 1; /* tmpfs under /tmp refuses O_DIRECT on some machines */
    if (kvt_disk_create(&dc, &f->disk))
        return -1;
    kvt_disk_tier_init(&f->dt, f->disk, &dc.codec);
    f->tier = (struct kvt_tier){&kvt_disk_tier_ops, &f->dt};
    return 0;
}

static void disk_close(struct fixture *f)
{
    kvt_disk_destroy(f->disk);
}

/* Flips a byte of the object's body in the data file, behind the store's back. */
static int disk_corrupt(struct fixture *f, const struct kvt_obj_id *id)
{
    struct kvt_disk_obj_info info;
    if (kvt_disk_lookup(f->disk, id, &info))
        return -1;
    FILE *fp = fopen(f->path, "r+b");
    if (!fp)
        return -1;
    long at = (long)(info.offset_bytes + 4096 + 100);
    int c = fseek(fp, at, SEEK_SET) == 0 ? fgetc(fp) : EOF;
    int rc = c == EOF || fseek(fp, at, SEEK_SET) || fputc(c ^ 0x10, fp) == EOF ? -1 : 0;
    fclose(fp);
    return rc;
}

/* Flips a byte of the object's metadata section (after its body, 4 KiB-aligned). */
static int disk_corrupt_meta(struct fixture *f, const struct kvt_obj_id *id)
{
    struct kvt_disk_obj_info info;
    if (kvt_disk_lookup(f->disk, id, &info) || !info.meta_bytes_max)
        return -1;
    FILE *fp = fopen(f->path, "r+b");
    if (!fp)
        return -1;
    long at = (long)(info.offset_bytes + (4096 + info.stored_len + 4095) / 4096 * 4096 + 64 + 10);
    int c = fseek(fp, at, SEEK_SET) == 0 ? fgetc(fp) : EOF;
    int rc = c == EOF || fseek(fp, at, SEEK_SET) || fputc(c ^ 0x10, fp) == EOF ? -1 : 0;
    fclose(fp);
    return rc;
}

static int test_tier_corrupt_meta_op(struct fixture *f, const struct kvt_obj_id *id)
{
    return kvt_test_tier_corrupt_meta(f->tt, id);
}

static int test_tier_corrupt_op(struct fixture *f, const struct kvt_obj_id *id)
{
    return kvt_test_tier_corrupt(f->tt, id);
}

static int test_tier_open(struct fixture *f)
{
    if (kvt_test_tier_create(64, OBJ_MAX, &f->tt))
        return -1;
    f->tier = (struct kvt_tier){&kvt_test_tier_ops, f->tt};
    return 0;
}

static void test_tier_close(struct fixture *f)
{
    kvt_test_tier_destroy(f->tt);
}

static int setup(void **state, struct fixture *proto)
{
    struct fixture *f = calloc(1, sizeof(*f));
    *f = *proto;
    if (f->open(f)) {
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    f->close(f);
    if (f->dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
        if (system(cmd) != 0)
            return -1;
    }
    free(f);
    return 0;
}

static int setup_host(void **state)
{
    struct fixture p = {.name = "cpu", .open = host_open, .close = host_close};
    return setup(state, &p);
}

static int setup_disk(void **state)
{
    struct fixture p = {.name = "disk",
                        .open = disk_open,
                        .close = disk_close,
                        .corrupt = disk_corrupt,
                        .corrupt_meta = disk_corrupt_meta};
    return setup(state, &p);
}

static int setup_test_tier(void **state)
{
    struct fixture p = {.name = "test",
                        .open = test_tier_open,
                        .close = test_tier_close,
                        .corrupt = test_tier_corrupt_op,
                        .corrupt_meta = test_tier_corrupt_meta_op};
    return setup(state, &p);
}

/* ---- helpers ------------------------------------------------------------------------------- */

struct result {
    int done;
    int res;
};

static void on_done(void *arg, int res)
{
    struct result *r = arg;
    r->done++;
    r->res = res;
}

/* The outcome of a call that may complete later: its return, or its callback's result. */
static int settle(struct fixture *f, int rc, struct result *r)
{
    if (rc != KVT_TIER_LATER)
        return rc;
    for (int i = 0; i < 2000 && !r->done; i++)
        f->tier.ops->wait(f->tier.t, 10);
    assert_int_equal(r->done, 1);
    return r->res;
}

static struct kvt_obj_id oid(uint64_t k)
{
    return (struct kvt_obj_id){.ns_seed = 0xc0ffee, .key = {k * 0x9e3779b97f4a7c15ull, k}};
}

static void pattern(uint64_t k, uint8_t *b, size_t n)
{
    uint64_t s = k * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        b[i] = (uint8_t)(s >> 56);
    }
}

/* Writes object k of len bytes (with geometry g, may be NULL); returns its location. */
static kvt_tier_loc put(struct fixture *f, uint64_t k, const uint8_t *src, size_t len,
                        uint32_t n_tokens, const struct kvt_chunk_geom *g)
{
    struct kvt_tier_obj o = {
        .id = oid(k), .length = len, .n_tokens = n_tokens, .elem_bytes = 2, .geom = g};
    struct kvt_tier_write w;
    assert_int_equal(f->tier.ops->reserve(f->tier.t, &o, &w), 0);
    assert_int_equal(f->tier.ops->fill(&w, src), 0);
    struct result r = {0};
    assert_int_equal(settle(f, f->tier.ops->commit(f->tier.t, &w, on_done, &r), &r), 0);
    return w.loc;
}

static int get(struct fixture *f, uint64_t k, kvt_tier_loc loc, uint8_t *dst, size_t cap)
{
    struct kvt_obj_id id = oid(k);
    struct result r = {0};
    return settle(f, f->tier.ops->read(f->tier.t, &id, loc, dst, cap, on_done, &r), &r);
}

/* ---- cases --------------------------------------------------------------------------------- */

static void test_write_read_sizes(void **state)
{
    struct fixture *f = *state;
    static const size_t sizes[] = {1, 4095, 4096, 12288, 100001, OBJ_MAX};
    uint8_t *src = malloc(OBJ_MAX), *dst = malloc(OBJ_MAX);
    kvt_tier_loc loc[6];
    for (size_t i = 0; i < 6; i++) {
        pattern(i, src, sizes[i]);
        loc[i] = put(f, i, src, sizes[i], 1, NULL);
    }
    for (size_t i = 0; i < 6; i++) {
        pattern(i, src, sizes[i]);
        memset(dst, 0, OBJ_MAX);
        int rc = get(f, i, loc[i], dst, OBJ_MAX);
        /* A memory tier may round a payload up to its slot: what was written comes back. */
        assert_true(rc == 0 || rc == (int)sizes[i]);
        assert_memory_equal(dst, src, sizes[i]);
    }
    struct kvt_tier_stats st;
    f->tier.ops->stats(f->tier.t, &st);
    assert_int_equal(st.objects, 6);
    free(src);
    free(dst);
}

static void test_cancel_leaves_nothing(void **state)
{
    struct fixture *f = *state;
    uint8_t buf[8192];
    pattern(7, buf, sizeof(buf));
    struct kvt_tier_obj o = {.id = oid(7), .length = sizeof(buf), .n_tokens = 1};
    struct kvt_tier_write w;
    assert_int_equal(f->tier.ops->reserve(f->tier.t, &o, &w), 0);
    assert_int_equal(f->tier.ops->fill(&w, buf), 0);
    f->tier.ops->cancel(f->tier.t, &w);
    struct kvt_tier_stats st;
    f->tier.ops->stats(f->tier.t, &st);
    assert_int_equal(st.objects, 0);
    if (!(f->tier.ops->caps & KVT_TIER_CAP_MEMORY))
        assert_int_equal(get(f, 7, w.loc, buf, sizeof(buf)), KVT_E_NOTFOUND);
    /* The space came back: the same object can be written and read. */
    kvt_tier_loc loc = put(f, 7, buf, sizeof(buf), 1, NULL);
    uint8_t back[8192];
    int rc = get(f, 7, loc, back, sizeof(back));
    assert_true(rc >= 0);
    assert_memory_equal(back, buf, sizeof(buf));
}

static void test_write_existing(void **state)
{
    struct fixture *f = *state;
    uint8_t buf[4096] = {1};
    put(f, 3, buf, sizeof(buf), 1, NULL);
    struct kvt_tier_obj o = {.id = oid(3), .length = sizeof(buf), .n_tokens = 1};
    struct kvt_tier_write w;
    int rc = f->tier.ops->reserve(f->tier.t, &o, &w);
    if (f->tier.ops->caps & KVT_TIER_CAP_MEMORY) {
        /* A memory tier names objects by location: a second copy is a second slot. */
        assert_int_equal(rc, 0);
        f->tier.ops->cancel(f->tier.t, &w);
    } else {
        assert_int_equal(rc, KVT_E_EXISTS);
    }
}

static void test_read_range_rows(void **state)
{
    struct fixture *f = *state;
    /* 3 layers, 2 KV heads, head_dim 8, fp16: 64 bytes a row; 40 tokens. */
    struct kvt_chunk_geom g = {
        .n_layers = 3, .n_kv_heads = 2, .head_dim = 8, .elem_bytes = 2, .dtype = 1, .sparse = 1};
    const uint32_t tokens = 40, row = 2 * 2 * 8 * 2;
    size_t len = (size_t)g.n_layers * tokens * row;
    uint8_t *src = malloc(len), *dst = malloc(len);
    pattern(11, src, len);
    kvt_tier_loc loc = put(f, 11, src, len, tokens, &g);
    struct kvt_obj_id id = oid(11);
    const uint32_t cases[][3] = {{0, 0, 1}, {1, 5, 16}, {2, 24, 16}, {2, 0, 40}, {1, 39, 1}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct kvt_tier_range r = {.layer = cases[i][0],
                                   .first = cases[i][1],
                                   .n = cases[i][2],
                                   .n_tokens = tokens,
                                   .row_bytes = row};
        memset(dst, 0xee, len);
        struct result res = {0};
        int rc = settle(
            f, f->tier.ops->read_range(f->tier.t, &id, loc, &r, dst, len, on_done, &res), &res);
        assert_true(rc == 0 || rc == (int)(r.n * row));
        size_t at = ((size_t)r.layer * tokens + r.first) * row;
        assert_memory_equal(dst, src + at, (size_t)r.n * row);
    }
    /* Rows the object does not have. */
    struct kvt_tier_range bad = {
        .layer = 1, .first = 30, .n = 16, .n_tokens = tokens, .row_bytes = row};
    struct result res = {0};
    assert_int_equal(f->tier.ops->read_range(f->tier.t, &id, loc, &bad, dst, len, on_done, &res),
                     KVT_E_INVAL);
    struct kvt_tier_range small = {
        .layer = 0, .first = 0, .n = 4, .n_tokens = tokens, .row_bytes = row};
    assert_int_equal(
        f->tier.ops->read_range(f->tier.t, &id, loc, &small, dst, 4 * row - 1, on_done, &res),
        KVT_E_SMALLBUF);
    assert_int_equal(res.done, 0); /* no callback after an error */
    free(src);
    free(dst);
}

static void test_small_buffer(void **state)
{
    struct fixture *f = *state;
    uint8_t buf[20000];
    pattern(5, buf, sizeof(buf));
    kvt_tier_loc loc = put(f, 5, buf, sizeof(buf), 1, NULL);
    struct kvt_obj_id id = oid(5);
    struct result r = {0};
    assert_int_equal(f->tier.ops->read(f->tier.t, &id, loc, buf, 100, on_done, &r), KVT_E_SMALLBUF);
    assert_int_equal(r.done, 0);
}

static void test_remove_and_barrier(void **state)
{
    struct fixture *f = *state;
    uint8_t buf[6000];
    pattern(9, buf, sizeof(buf));
    kvt_tier_loc loc = put(f, 9, buf, sizeof(buf), 1, NULL);
    struct kvt_obj_id id = oid(9);
    assert_int_equal(f->tier.ops->remove(f->tier.t, &id, loc), 0);
    struct result r = {0};
    struct kvt_tier_sync sync = {.done = on_done, .arg = &r};
    assert_int_equal(settle(f, f->tier.ops->sync(f->tier.t, &sync), &r), 0);
    struct kvt_tier_stats st;
    f->tier.ops->stats(f->tier.t, &st);
    assert_int_equal(st.objects, 0);
    if (!(f->tier.ops->caps & KVT_TIER_CAP_MEMORY)) {
        assert_int_equal(get(f, 9, loc, buf, sizeof(buf)), KVT_E_NOTFOUND);
        assert_int_equal(f->tier.ops->remove(f->tier.t, &id, loc), KVT_E_NOTFOUND);
    }
    assert_int_equal(f->tier.ops->inflight(f->tier.t), 0);
}

struct listed {
    uint32_t n;
    uint64_t bytes;
};

static int count_listed(void *arg, const struct kvt_tier_obj *o, kvt_tier_loc loc)
{
    struct listed *l = arg;
    (void)loc;
    l->n++;
    l->bytes += o->length;
    return 0;
}

static void test_persistent_reopen(void **state)
{
    struct fixture *f = *state;
    uint8_t buf[30000];
    for (uint64_t k = 0; k < 5; k++) {
        pattern(k + 100, buf, sizeof(buf) - k);
        put(f, k + 100, buf, sizeof(buf) - k, 1, NULL);
    }
    if (f->tier.ops->enumerate) {
        struct listed l = {0};
        f->tier.ops->enumerate(f->tier.t, count_listed, &l);
        assert_int_equal(l.n, 5);
    }
    if (!(f->tier.ops->caps & KVT_TIER_CAP_PERSISTENT))
        return;
    f->close(f);
    assert_int_equal(f->open(f), 0);
    struct listed l = {0};
    f->tier.ops->enumerate(f->tier.t, count_listed, &l);
    assert_int_equal(l.n, 5);
    assert_int_equal(l.bytes, 5 * sizeof(buf) - 10);
    for (uint64_t k = 0; k < 5; k++) {
        uint8_t want[30000];
        pattern(k + 100, want, sizeof(buf) - k);
        assert_int_equal(get(f, k + 100, 0, buf, sizeof(buf)), (int)(sizeof(buf) - k));
        assert_memory_equal(buf, want, sizeof(buf) - k);
    }
}

/* Two variants of one key are two objects: each reads back its own bytes, and removing one
 * leaves the other. (A memory tier names objects by location: nothing to check there.) */
static void test_variants_separate(void **state)
{
    struct fixture *f = *state;
    if (f->tier.ops->caps & KVT_TIER_CAP_MEMORY)
        skip();
    uint8_t a[9000], b[7000], back[9000];
    pattern(40, a, sizeof(a));
    pattern(41, b, sizeof(b));
    struct kvt_obj_id v0 = oid(31), v1 = oid(31);
    v1.variant = 7;
    struct kvt_tier_write w;
    struct result r = {0};
    struct kvt_tier_obj o0 = {.id = v0, .length = sizeof(a), .n_tokens = 1};
    struct kvt_tier_obj o1 = {.id = v1, .length = sizeof(b), .n_tokens = 1};
    assert_int_equal(f->tier.ops->reserve(f->tier.t, &o0, &w), 0);
    assert_int_equal(f->tier.ops->fill(&w, a), 0);
    assert_int_equal(settle(f, f->tier.ops->commit(f->tier.t, &w, on_done, &r), &r), 0);
    memset(&r, 0, sizeof(r));
    assert_int_equal(f->tier.ops->reserve(f->tier.t, &o1, &w), 0);
    assert_int_equal(f->tier.ops->fill(&w, b), 0);
    assert_int_equal(settle(f, f->tier.ops->commit(f->tier.t, &w, on_done, &r), &r), 0);
    memset(&r, 0, sizeof(r));
    assert_int_equal(
        settle(f, f->tier.ops->read(f->tier.t, &v1, 0, back, sizeof(back), on_done, &r), &r),
        (int)sizeof(b));
    assert_memory_equal(back, b, sizeof(b));
    assert_int_equal(f->tier.ops->remove(f->tier.t, &v1, 0), 0);
    memset(&r, 0, sizeof(r));
    assert_int_equal(
        settle(f, f->tier.ops->read(f->tier.t, &v0, 0, back, sizeof(back), on_done, &r), &r),
        (int)sizeof(a));
    assert_memory_equal(back, a, sizeof(a));
    memset(&r, 0, sizeof(r));
    assert_int_equal(f->tier.ops->read(f->tier.t, &v1, 0, back, sizeof(back), on_done, &r),
                     KVT_E_NOTFOUND);
}

/* A stored object whose bytes changed is a miss, never its bytes; it is gone afterwards. */
static void test_corrupt_is_a_miss(void **state)
{
    struct fixture *f = *state;
    if (!f->corrupt)
        skip();
    uint8_t buf[50000], back[50000];
    pattern(21, buf, sizeof(buf));
    put(f, 21, buf, sizeof(buf), 1, NULL);
    struct kvt_obj_id id = oid(21);
    assert_int_equal(f->corrupt(f, &id), 0);
    memset(back, 0, sizeof(back));
    int rc = get(f, 21, 0, back, sizeof(back));
    assert_true(rc == KVT_E_CORRUPT || rc == KVT_E_NOTFOUND);
    assert_int_equal(get(f, 21, 0, back, sizeof(back)), KVT_E_NOTFOUND);
    struct kvt_tier_stats st;
    f->tier.ops->stats(f->tier.t, &st);
    assert_int_equal(st.checksum_failures, 1);
}

/* Metadata of object k: len bytes that are a function of k. */
struct meta_src {
    uint64_t k;
    int calls;
};

static void meta_write(void *ctx, void *dst, size_t len)
{
    struct meta_src *m = ctx;
    m->calls++;
    pattern(m->k + 1000, dst, len);
}

static void put_meta(struct fixture *f, uint64_t k, const uint8_t *src, size_t len,
                     uint32_t meta_len)
{
    struct meta_src ms = {.k = k};
    struct kvt_tier_obj o = {.id = oid(k),
                             .length = len,
                             .n_tokens = 1,
                             .meta_len = meta_len,
                             .meta_write = meta_write,
                             .meta_ctx = &ms};
    struct kvt_tier_write w;
    assert_int_equal(f->tier.ops->reserve(f->tier.t, &o, &w), 0);
    assert_int_equal(f->tier.ops->fill(&w, src), 0);
    assert_int_equal(ms.calls, 1); /* written by fill, not later */
    struct result r = {0};
    assert_int_equal(settle(f, f->tier.ops->commit(f->tier.t, &w, on_done, &r), &r), 0);
}

static int get_meta(struct fixture *f, uint64_t k, uint8_t *dst, size_t cap)
{
    struct kvt_obj_id id = oid(k);
    struct result r = {0};
    int rc = f->tier.ops->read_meta(f->tier.t, &id, 0, dst, cap, on_done, &r);
    if (rc == KVT_TIER_LATER)
        assert_int_equal(r.done, 0); /* never inside the call */
    return settle(f, rc, &r);
}

struct meta_listed {
    uint64_t key_hi;
    uint32_t meta_len;
};

static int find_listed(void *arg, const struct kvt_tier_obj *o, kvt_tier_loc loc)
{
    struct meta_listed *l = arg;
    (void)loc;
    if (o->id.key.hi == l->key_hi)
        l->meta_len = o->meta_len;
    return 0;
}

/* Metadata written with an object is read back alone, exactly, without counting a read of the
 * object; objects without any have none; enumerate says how much a buffer needs; a persistent
 * tier keeps it across a reopen. */
static void test_metadata_read_alone(void **state)
{
    struct fixture *f = *state;
    if (!(f->tier.ops->caps & KVT_TIER_CAP_META))
        skip();
    static uint8_t src[40000], back[40000], want[20000], got[20000];
    static const uint32_t lens[] = {1, 63, 4000, 4032, 4033, 12345};
    for (size_t i = 0; i < 6; i++) {
        pattern(i + 60, src, sizeof(src) - i);
        put_meta(f, i + 60, src, sizeof(src) - i, lens[i]);
    }
    put(f, 70, src, 5000, 1, NULL); /* none */
    for (int round = 0; round < 2; round++) {
        struct kvt_tier_stats st0, st;
        f->tier.ops->stats(f->tier.t, &st0);
        for (size_t i = 0; i < 6; i++) {
            struct meta_listed l = {.key_hi = i + 60};
            f->tier.ops->enumerate(f->tier.t, find_listed, &l);
            assert_true(l.meta_len >= lens[i] && l.meta_len <= sizeof(got));
            memset(got, 0, sizeof(got));
            assert_int_equal(get_meta(f, i + 60, got, l.meta_len), (int)lens[i]);
            struct meta_src ms = {.k = i + 60};
            meta_write(&ms, want, lens[i]);
            assert_memory_equal(got, want, lens[i]);
            if (l.meta_len > 1)
                assert_int_equal(get_meta(f, i + 60, got, lens[i] - 1), KVT_E_SMALLBUF);
        }
        f->tier.ops->stats(f->tier.t, &st);
        assert_int_equal(st.hits, st0.hits);
        assert_int_equal(st.misses, st0.misses);
        assert_int_equal(get_meta(f, 70, got, sizeof(got)), KVT_E_NOTFOUND);
        assert_int_equal(get_meta(f, 999, got, sizeof(got)), KVT_E_NOTFOUND);
        /* The objects themselves read back as ever. */
        for (size_t i = 0; i < 6; i++) {
            pattern(i + 60, src, sizeof(src) - i);
            assert_int_equal(get(f, i + 60, 0, back, sizeof(back)), (int)(sizeof(src) - i));
            assert_memory_equal(back, src, sizeof(src) - i);
        }
        if (!(f->tier.ops->caps & KVT_TIER_CAP_PERSISTENT))
            break;
        f->close(f);
        assert_int_equal(f->open(f), 0);
    }
}

/* Corrupted metadata is refused, never handed over, and costs the object nothing. */
static void test_corrupt_metadata(void **state)
{
    struct fixture *f = *state;
    if (!(f->tier.ops->caps & KVT_TIER_CAP_META) || !f->corrupt_meta)
        skip();
    static uint8_t src[30000], back[30000], got[8192];
    pattern(80, src, sizeof(src));
    put_meta(f, 80, src, sizeof(src), 3000);
    put_meta(f, 81, src, sizeof(src), 3000);
    struct kvt_obj_id id = oid(80);
    assert_int_equal(f->corrupt_meta(f, &id), 0);
    assert_int_equal(get_meta(f, 80, got, sizeof(got)), KVT_E_CORRUPT);
    assert_int_equal(get(f, 80, 0, back, sizeof(back)), (int)sizeof(src));
    assert_memory_equal(back, src, sizeof(src));
    assert_int_equal(get_meta(f, 81, got, sizeof(got)), 3000);
    struct kvt_tier_stats st;
    f->tier.ops->stats(f->tier.t, &st);
    assert_int_equal(st.checksum_failures, 0);
    assert_int_equal(st.objects, 2);
}

#define ON_EVERY_TIER(fn)                                                                          \
    cmocka_unit_test_setup_teardown(fn, setup_host, teardown),                                     \
        cmocka_unit_test_setup_teardown(fn, setup_disk, teardown),                                 \
        cmocka_unit_test_setup_teardown(fn, setup_test_tier, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        ON_EVERY_TIER(test_write_read_sizes),  ON_EVERY_TIER(test_cancel_leaves_nothing),
        ON_EVERY_TIER(test_write_existing),    ON_EVERY_TIER(test_read_range_rows),
        ON_EVERY_TIER(test_small_buffer),      ON_EVERY_TIER(test_remove_and_barrier),
        ON_EVERY_TIER(test_persistent_reopen), ON_EVERY_TIER(test_corrupt_is_a_miss),
        ON_EVERY_TIER(test_variants_separate), ON_EVERY_TIER(test_metadata_read_alone),
        ON_EVERY_TIER(test_corrupt_metadata),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
