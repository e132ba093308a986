/*
 * The tier manager alone: a CPU arena as tier 0 and the test tier (tests/lib/test_tier.h) below
 * it, real workers, no server and no requests. Write-back and write-through, promotion on a read,
 * range reads straight to the caller, a corrupt lower copy answered as a miss, a failed write
 * that keeps the chunk dirty in DRAM, Deletes answered only after the lower tier's barrier,
 * recovery of what a lower tier lists at start, and no Delete while a write is in flight. Every
 * write to the lower tier carries the chunk's metadata (pinned while the fill runs, released
 * exactly once whatever became of the write), and a tier manager started over the same lower tier
 * reads it back without reading any chunk, a corrupt one reported as such, as much as the caller
 * wants.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/tiermgr.h"
#include "kvtier/errors.h"
#include "tests/lib/test_tier.h"
#include "tiers/host/host.h"

#define CHUNK (64u * 1024u)

struct env {
    struct kvt_index idx;
    struct kvt_host *host;
    struct kvt_test_tier *tt;
    struct kvt_workers *workers;
    struct kvt_tm *tm;
    struct kvt_tm_config cfg;
    /* what the callbacks saw */
    int put_done, get_failed, in_dram, direct, deleted, abandoned;
    int last_status;
    enum kvt_tier_id last_tier;
    /* metadata */
    int meta_pins, meta_releases, meta_wants, meta_want_max, meta_ok, meta_failed, copied;
    uint64_t meta_failed_key; /* the key and status of the last failure */
    int meta_failed_status;
    uint64_t meta_ctx[256]; /* by entry id: the key whose metadata a pinned write writes */
};

/* A chunk's metadata: some bytes that are a function of its key. */
static uint32_t meta_len_of(uint64_t k)
{
    return 100 + (uint32_t)(k % 50);
}

static void meta_bytes(uint64_t k, uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(k * 13 + i * 3);
}

static void cb_put_done(void *arg, struct kvt_tm_io *io, enum kvt_tier_id tier)
{
    struct env *e = arg;
    (void)io;
    e->put_done++;
    e->last_tier = tier;
}

static void cb_get_failed(void *arg, struct kvt_tm_io *io, int status)
{
    struct env *e = arg;
    (void)io;
    e->get_failed++;
    e->last_status = status;
}

static void cb_in_dram(void *arg, struct kvt_tm_io *io)
{
    struct env *e = arg;
    e->in_dram++;
    e->last_tier = io->tier;
    kvt_tm_release(e->tm, io->entry);
}

static void cb_direct(void *arg, struct kvt_tm_io *io, const struct kvt_entry *en)
{
    struct env *e = arg;
    (void)en;
    e->direct++;
    e->last_tier = io->tier;
}

static void cb_deleted(void *arg, void *ctx, const int32_t *status, uint32_t n)
{
    struct env *e = arg;
    (void)ctx;
    e->deleted++;
    e->last_status = n ? status[0] : 1;
}

static void cb_abandoned(void *arg, struct kvt_tm_io *io)
{
    (void)io;
    ((struct env *)arg)->abandoned++;
}

static int cb_geom(void *arg, const struct kvt_entry *en, struct kvt_chunk_geom *g)
{
    (void)arg;
    /* 4 layers, 2 heads, head_dim 64, fp16: 512 bytes a row; 32 tokens = 64 KiB. */
    if (en->n_tokens != 32)
        return -1;
    *g = (struct kvt_chunk_geom){.n_layers = 4, .n_kv_heads = 2, .head_dim = 64, .elem_bytes = 2};
    return 0;
}

static void meta_write(void *ctx, void *dst, size_t len)
{
    meta_bytes(*(const uint64_t *)ctx, dst, len);
}

static int cb_meta_pin(void *arg, uint32_t id, struct kvt_tm_meta *out)
{
    struct env *e = arg;
    uint64_t k = kvt_index_at(&e->idx, id)->id.key.lo;
    e->meta_pins++;
    e->meta_ctx[id] = k;
    *out =
        (struct kvt_tm_meta){.len = meta_len_of(k), .write = meta_write, .ctx = &e->meta_ctx[id]};
    return 0;
}

static void cb_meta_release(void *arg, struct kvt_tm_meta *m)
{
    struct env *e = arg;
    assert_non_null(m->ctx);
    e->meta_releases++;
}

static int cb_meta_want(void *arg, uint32_t id, uint32_t want_len)
{
    struct env *e = arg;
    uint64_t k = kvt_index_at(&e->idx, id)->id.key.lo;
    assert_true(want_len >= meta_len_of(k));
    if (e->meta_wants >= e->meta_want_max)
        return 0;
    e->meta_wants++;
    return 1;
}

static void cb_meta_loaded(void *arg, uint32_t id, uint32_t want_len, const void *bytes, size_t len,
                           int status)
{
    struct env *e = arg;
    uint64_t k = kvt_index_at(&e->idx, id)->id.key.lo;
    uint8_t want[256];
    (void)want_len;
    if (status) {
        e->meta_failed_status = status;
        assert_null(bytes);
        e->meta_failed++;
        e->meta_failed_key = k;
        return;
    }
    assert_int_equal(len, meta_len_of(k));
    meta_bytes(k, want, len);
    assert_memory_equal(bytes, want, len);
    e->meta_ok++;
}

/* A lower-tier copy landed: it is readable there, at the place the tier gave. */
static void cb_copied(void *arg, uint32_t id, uint32_t tier)
{
    struct env *e = arg;
    assert_true(tier > 0);
    assert_int_equal(kvt_index_at(&e->idx, id)->at[tier], KVT_AT_READY);
    e->copied++;
}

static const struct kvt_tm_callbacks cbs = {
    .put_done = cb_put_done,
    .get_failed = cb_get_failed,
    .get_in_dram = cb_in_dram,
    .get_read_direct = cb_direct,
    .delete_done = cb_deleted,
    .abandoned = cb_abandoned,
    .geom = cb_geom,
    .meta_pin = cb_meta_pin,
    .meta_release = cb_meta_release,
    .meta_want = cb_meta_want,
    .meta_loaded = cb_meta_loaded,
    .copied = cb_copied,
};

static int open_tm(struct env *e)
{
    struct kvt_tier tiers[2] = {{&kvt_host_tier_ops, e->host}, {&kvt_test_tier_ops, e->tt}};
    return kvt_tm_create(&e->cfg, &e->idx, tiers, 2, e->workers, NULL, &cbs, e, &e->tm);
}

static int setup(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    struct kvt_host_config hc = {.arena_bytes = 2u << 20, .page_bytes = 256u << 10};
    if (kvt_index_init(&e->idx, 256) || kvt_host_create(&hc, NULL, NULL, &e->host) ||
        kvt_test_tier_create(64, 1u << 20, &e->tt) || kvt_workers_create(1, &e->workers))
        return -1;
    e->cfg.writes_max = 4;
    e->cfg.tier[0].high_watermark = 0.9;
    e->cfg.tier[1].high_watermark = 0.9;
    e->meta_want_max = 1 << 30;
    if (open_tm(e))
        return -1;
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    struct env *e = *state;
    kvt_tm_stop(e->tm);
    kvt_workers_stop(e->workers);
    for (struct kvt_job *j = kvt_workers_reap(e->workers), *next; j; j = next) {
        next = j->next;
        j->done(j);
    }
    kvt_workers_destroy(e->workers);
    /* Every pinned metadata was given back once its fill returned. */
    assert_int_equal(e->meta_releases, e->meta_pins);
    kvt_test_tier_destroy(e->tt);
    kvt_tm_destroy(e->tm);
    kvt_host_destroy(e->host);
    kvt_index_deinit(&e->idx);
    free(e);
    return 0;
}

/* Runs the workers' finished jobs, the lower tier's completions and the background work, until
 * nothing is left in flight (or a second passed). */
static void pump(struct env *e)
{
    for (int i = 0; i < 1000; i++) {
        struct pollfd p = {.fd = kvt_workers_fd(e->workers), .events = POLLIN};
        poll(&p, 1, 1);
        for (struct kvt_job *j = kvt_workers_reap(e->workers), *next; j; j = next) {
            next = j->next;
            j->done(j);
        }
        kvt_test_tier_ops.wait(e->tt, 0);
        kvt_tm_tick(e->tm);
        if (!kvt_tm_busy(e->tm))
            return;
    }
}

static void fill(uint32_t k, uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(k * 31 + i * 7 + (i >> 9));
}

static struct kvt_obj_id oid(uint32_t k, uint32_t variant)
{
    return (struct kvt_obj_id){.ns_seed = 1, .key = {k, k * 3u}, .variant = variant};
}

/* Stores chunk k (32 tokens) as a Put does; returns its entry, and *later when the tier manager
 * answers it (write-through). */
static uint32_t put(struct env *e, uint32_t k, uint32_t variant, struct kvt_tm_io *io, int *later)
{
    uint32_t id;
    struct kvt_obj_id o = oid(k, variant);
    assert_int_equal(kvt_tm_index_insert(e->tm, &o, &id), 0);
    struct kvt_entry *en = kvt_index_at(&e->idx, id);
    en->length = CHUNK;
    en->n_tokens = 32;
    en->elem_bytes = 2;
    void *dst;
    assert_int_equal(kvt_tm_reserve(e->tm, id, &dst), 0);
    fill(k + variant, dst, CHUNK);
    enum kvt_tier_id now;
    *later = kvt_tm_put_committed(e->tm, io, id, &now);
    if (!*later)
        assert_true(now == KVT_TIER_CPU || now == KVT_TIER_REMOTE);
    return id;
}

/* Lets DRAM forget every chunk it may (clean ones stay readable below). */
static size_t evict_all(struct env *e)
{
    return kvt_tm_evict_coldest(e->tm, NULL, NULL, 64, 4096);
}

static void test_write_back_then_promote(void **state)
{
    struct env *e = *state;
    struct kvt_tm_io io = {0};
    int later;
    uint32_t id = put(e, 1, 0, &io, &later);
    assert_int_equal(later, 0); /* write-back: answered at once */
    assert_int_equal(kvt_tm_tier_of(e->tm, kvt_index_at(&e->idx, id)), KVT_TIER_CPU);
    /* Dirty: DRAM cannot let it go yet. */
    assert_int_equal(evict_all(e), 0);
    kvt_tm_flush(e->tm);
    pump(e);
    struct kvt_tm_stats st;
    kvt_tm_stats(e->tm, &st);
    assert_int_equal(st.demotions, 1);
    assert_int_equal(evict_all(e), 1);
    struct kvt_entry *en = kvt_index_at(&e->idx, id);
    assert_int_equal(kvt_tm_tier_of(e->tm, en), KVT_TIER_REMOTE); /* the test tier's id */
    assert_null(kvt_tm_memory_ptr(e->tm, en));
    /* A read promotes it into DRAM. */
    uint8_t want[CHUNK];
    fill(1, want, CHUNK);
    struct kvt_tm_io rd = {.cap = CHUNK};
    assert_int_equal(kvt_tm_read(e->tm, &rd, id), 0);
    pump(e);
    assert_int_equal(e->in_dram, 1);
    assert_int_equal(e->last_tier, KVT_TIER_REMOTE);
    assert_memory_equal(kvt_tm_memory_ptr(e->tm, en), want, CHUNK);
    assert_int_equal(kvt_tm_tier_of(e->tm, en), KVT_TIER_CPU);
    assert_int_equal(en->refs, 0);
}

static void test_write_through_answers_when_durable(void **state)
{
    struct env *e = *state;
    kvt_tm_stop(e->tm);
    kvt_tm_destroy(e->tm);
    e->cfg.write_through = 1;
    assert_int_equal(open_tm(e), 0);
    struct kvt_tm_io io = {0};
    int later;
    put(e, 2, 0, &io, &later);
    assert_int_equal(later, 1);
    assert_int_equal(e->put_done, 0);
    pump(e);
    assert_int_equal(e->put_done, 1);
    assert_int_equal(e->last_tier, KVT_TIER_REMOTE);
}

static void test_range_read_direct_and_corrupt(void **state)
{
    struct env *e = *state;
    struct kvt_tm_io io = {0};
    int later;
    uint32_t id = put(e, 3, 0, &io, &later);
    kvt_tm_flush(e->tm);
    pump(e);
    assert_int_equal(evict_all(e), 1);
    /* Rows 8..23 of layer 2, straight into the caller's buffer. */
    uint8_t rows[16 * 512], want[CHUNK];
    fill(3, want, CHUNK);
    struct kvt_tm_io rd = {
        .dst = rows,
        .cap = sizeof(rows),
        .range = 1,
        .r = {.layer = 2, .first = 8, .n = 16, .n_tokens = 32, .row_bytes = 512}};
    assert_int_equal(kvt_tm_read(e->tm, &rd, id), 0);
    pump(e);
    assert_int_equal(e->direct, 1);
    assert_memory_equal(rows, want + (2 * 32 + 8) * 512, sizeof(rows));
    assert_null(kvt_tm_memory_ptr(e->tm, kvt_index_at(&e->idx, id))); /* rows do not promote */
    /* The lower copy goes bad: a miss, never its bytes, and the chunk leaves the index. */
    struct kvt_obj_id o = oid(3, 0);
    assert_int_equal(kvt_test_tier_corrupt(e->tt, &o), 0);
    struct kvt_tm_io rd2 = {.cap = CHUNK, .dst = want};
    assert_int_equal(kvt_tm_read(e->tm, &rd2, id), 0);
    pump(e);
    assert_int_equal(e->get_failed, 1);
    assert_int_equal(e->last_status, KVT_E_NOTFOUND);
    assert_int_equal(kvt_index_find(&e->idx, &o), KVT_INDEX_NIL);
}

static void test_failed_write_keeps_chunk_dirty(void **state)
{
    struct env *e = *state;
    kvt_test_tier_fail_next(e->tt, 1, KVT_E_IO);
    struct kvt_tm_io io = {0};
    int later;
    uint32_t id = put(e, 4, 0, &io, &later);
    kvt_tm_flush(e->tm);
    pump(e);
    struct kvt_tm_stats st;
    kvt_tm_stats(e->tm, &st);
    assert_true(st.demotion_failures >= 1);
    struct kvt_entry *en = kvt_index_at(&e->idx, id);
    assert_int_equal(kvt_tm_tier_of(e->tm, en), KVT_TIER_CPU);
    assert_non_null(kvt_tm_memory_ptr(e->tm, en));
}

static void test_delete_waits_for_barrier_and_variants(void **state)
{
    struct env *e = *state;
    struct kvt_tm_io io = {0};
    int later;
    uint32_t v0 = put(e, 5, 0, &io, &later);
    uint32_t v1 = put(e, 5, 1, &io, &later);
    assert_int_not_equal(v0, v1);
    kvt_tm_flush(e->tm);
    pump(e);
    kvt_test_tier_hold(e->tt, 1);
    int32_t *status = kvt_tm_delete_begin(e->tm, 1);
    assert_non_null(status);
    status[0] = kvt_tm_delete(e->tm, v1);
    assert_int_equal(status[0], 0);
    assert_int_equal(kvt_tm_delete_end(e->tm, e, status, 1), 1);
    pump(e);
    assert_int_equal(e->deleted, 0); /* the barrier has not completed */
    kvt_test_tier_hold(e->tt, 0);
    pump(e);
    assert_int_equal(e->deleted, 1);
    assert_int_equal(e->last_status, 0);
    /* The other variant is still there, in DRAM and below. */
    struct kvt_obj_id o0 = oid(5, 0), o1 = oid(5, 1);
    assert_int_equal(kvt_index_find(&e->idx, &o0), v0);
    assert_int_equal(kvt_index_find(&e->idx, &o1), KVT_INDEX_NIL);
    struct kvt_tier_stats ts;
    kvt_test_tier_ops.stats(e->tt, &ts);
    assert_int_equal(ts.objects, 1);
}

static void test_no_delete_while_writing(void **state)
{
    struct env *e = *state;
    struct kvt_tm_io io = {0};
    int later;
    kvt_test_tier_hold(e->tt, 1);
    uint32_t id = put(e, 6, 0, &io, &later);
    kvt_tm_flush(e->tm);
    for (int i = 0; i < 50; i++) {
        kvt_tm_tick(e->tm);
        struct pollfd p = {.fd = kvt_workers_fd(e->workers), .events = POLLIN};
        poll(&p, 1, 2);
        for (struct kvt_job *j = kvt_workers_reap(e->workers), *next; j; j = next) {
            next = j->next;
            j->done(j);
        }
    }
    assert_true(kvt_tm_busy(e->tm));
    assert_int_equal(kvt_tm_delete(e->tm, id), KVT_E_INUSE);
    kvt_test_tier_hold(e->tt, 0);
    pump(e);
    assert_int_equal(kvt_tm_delete(e->tm, id), 0);
}

static void test_recovery_indexes_lower_tier(void **state)
{
    struct env *e = *state;
    struct kvt_tm_io io = {0};
    int later;
    for (uint32_t k = 10; k < 14; k++)
        put(e, k, 0, &io, &later);
    kvt_tm_flush(e->tm);
    pump(e);
    /* A new index and tier manager over the same lower tier: its objects are served again. */
    kvt_tm_stop(e->tm);
    kvt_tm_destroy(e->tm);
    kvt_host_destroy(e->host);
    kvt_index_deinit(&e->idx);
    struct kvt_host_config hc = {.arena_bytes = 2u << 20, .page_bytes = 256u << 10};
    assert_int_equal(kvt_index_init(&e->idx, 256), 0);
    assert_int_equal(kvt_host_create(&hc, NULL, NULL, &e->host), 0);
    assert_int_equal(open_tm(e), 0);
    struct kvt_tm_stats st;
    kvt_tm_stats(e->tm, &st);
    assert_int_equal(st.recovered_objects, 4);
    for (uint32_t k = 10; k < 14; k++) {
        struct kvt_obj_id o = oid(k, 0);
        uint32_t id = kvt_index_find(&e->idx, &o);
        assert_int_not_equal(id, KVT_INDEX_NIL);
        assert_int_equal(kvt_tm_tier_of(e->tm, kvt_index_at(&e->idx, id)), KVT_TIER_REMOTE);
    }
}

/* A new index and tier manager over the same lower tier, as at a restart. */
static void reopen(struct env *e)
{
    kvt_tm_stop(e->tm);
    kvt_tm_destroy(e->tm);
    kvt_host_destroy(e->host);
    kvt_index_deinit(&e->idx);
    struct kvt_host_config hc = {.arena_bytes = 2u << 20, .page_bytes = 256u << 10};
    assert_int_equal(kvt_index_init(&e->idx, 256), 0);
    assert_int_equal(kvt_host_create(&hc, NULL, NULL, &e->host), 0);
    assert_int_equal(open_tm(e), 0);
}

/* The metadata written with each chunk comes back at start, read alone: no chunk is read, a
 * corrupt one is reported (the chunk stays indexed), and no more is read than the caller wants. */
static void test_metadata_written_and_loaded(void **state)
{
    struct env *e = *state;
    struct kvt_tm_io io = {0};
    int later;
    for (uint32_t k = 20; k < 26; k++)
        put(e, k, 0, &io, &later);
    kvt_tm_flush(e->tm);
    pump(e);
    assert_int_equal(e->meta_pins, 6);
    assert_int_equal(e->meta_releases, 6);
    assert_int_equal(e->copied, 6);
    struct kvt_obj_id bad = oid(21, 0);
    assert_int_equal(kvt_test_tier_corrupt_meta(e->tt, &bad), 0);

    reopen(e);
    struct kvt_tier_stats ts0, ts;
    kvt_test_tier_ops.stats(e->tt, &ts0);
    uint64_t completed = kvt_test_tier_completed(e->tt);
    assert_int_equal(kvt_tm_load_meta(e->tm), 0);
    kvt_test_tier_ops.stats(e->tt, &ts);
    assert_int_equal(ts.hits, ts0.hits); /* no chunk was read */
    assert_int_equal(kvt_test_tier_completed(e->tt) - completed, 6);
    assert_int_equal(e->meta_ok, 5);
    assert_int_equal(e->meta_failed, 1);
    assert_int_equal(e->meta_failed_status, KVT_E_CORRUPT);
    assert_int_equal(e->meta_failed_key, 21);
    struct kvt_tm_stats st;
    kvt_tm_stats(e->tm, &st);
    assert_int_equal(st.meta_loaded, 5);
    assert_int_equal(st.meta_load_failures, 1);
    uint64_t bytes = 0;
    for (uint32_t k = 20; k < 26; k++)
        bytes += k == 21 ? 0 : meta_len_of(k);
    assert_int_equal(st.meta_load_bytes, bytes);
    /* The chunk whose metadata was bad is served as ever. */
    assert_int_not_equal(kvt_index_find(&e->idx, &bad), KVT_INDEX_NIL);

    /* A caller that wants two gets two read. */
    reopen(e);
    e->meta_ok = e->meta_failed = e->meta_wants = 0;
    e->meta_want_max = 2;
    completed = kvt_test_tier_completed(e->tt);
    assert_int_equal(kvt_tm_load_meta(e->tm), 0);
    assert_int_equal(e->meta_wants, 2);
    assert_int_equal(e->meta_ok + e->meta_failed, 2);
    assert_int_equal(kvt_test_tier_completed(e->tt) - completed, 2);
}

/* A promotion and two direct reads of one chunk in flight: the promotion lands, then both direct
 * reads fail as corrupt. The second failure finds no lower copy left; it must not take the DRAM
 * copy the promotion made with it (the slot would leak under a freed entry). */
static void test_failed_reads_keep_promoted_copy(void **state)
{
    struct env *e = *state;
    struct kvt_tm_io io = {0};
    int later;
    uint32_t id = put(e, 7, 0, &io, &later);
    kvt_tm_flush(e->tm);
    pump(e);
    assert_int_equal(evict_all(e), 1);
    static uint8_t b1[CHUNK], b2[CHUNK];
    kvt_test_tier_hold(e->tt, 1);
    struct kvt_tm_io a = {.cap = CHUNK}, b = {.dst = b1, .cap = CHUNK},
                     c = {.dst = b2, .cap = CHUNK};
    assert_int_equal(kvt_tm_read(e->tm, &a, id), 0); /* promotes */
    assert_int_equal(kvt_tm_read(e->tm, &b, id), 0); /* a promotion runs: straight to b1 */
    assert_int_equal(kvt_tm_read(e->tm, &c, id), 0);
    kvt_test_tier_fail_after(e->tt, 1, 2, KVT_E_CORRUPT);
    kvt_test_tier_hold(e->tt, 0);
    pump(e);
    assert_int_equal(e->in_dram, 1);
    assert_int_equal(e->get_failed, 2);
    struct kvt_obj_id o = oid(7, 0);
    assert_int_equal(kvt_index_find(&e->idx, &o), id);
    struct kvt_entry *en = kvt_index_at(&e->idx, id);
    assert_int_equal(kvt_tm_tier_of(e->tm, en), KVT_TIER_CPU);
    uint8_t want[CHUNK];
    fill(7, want, CHUNK);
    assert_non_null(kvt_tm_memory_ptr(e->tm, en));
    assert_memory_equal(kvt_tm_memory_ptr(e->tm, en), want, CHUNK);
    assert_int_equal(en->refs, 0);
    struct kvt_tier_stats hs;
    kvt_host_tier_ops.stats(e->host, &hs);
    assert_int_equal(hs.objects, 1); /* one slot, owned by the live entry */
}

/* Stop hands back what waits in the tier manager's queues. */
static void test_stop_abandons_queued(void **state)
{
    struct env *e = *state;
    kvt_tm_stop(e->tm);
    kvt_tm_destroy(e->tm);
    e->cfg.write_through = 1;
    e->cfg.writes_max = 1;
    assert_int_equal(open_tm(e), 0);
    kvt_test_tier_hold(e->tt, 1);
    struct kvt_tm_io io1 = {0}, io2 = {0};
    int later1, later2;
    put(e, 8, 0, &io1, &later1);
    put(e, 9, 0, &io2, &later2); /* the one writer is busy: queued */
    assert_int_equal(later1, 1);
    assert_int_equal(later2, 1);
    kvt_tm_stop(e->tm);
    assert_int_equal(e->abandoned, 1); /* the queued Put; the other waits for its write */
    kvt_test_tier_hold(e->tt, 0);
    pump(e);
    assert_int_equal(e->put_done, 0);
}

/* Twelve chunks written back and dropped from DRAM, so only the lower tier holds them, past its
 * objects limit (10 x 0.9): its eviction removes 3. Chunks 0, 3 and 6 were read often. Under
 * CLOCK the hand, which starts at the first entry, takes a hot one; cost-aware it takes cold ones
 * only. Returns how many of the hot chunks are left. */
static int hot_left_lower(struct env *e, int cost)
{
    kvt_tm_stop(e->tm);
    kvt_tm_destroy(e->tm);
    e->cfg.eviction_cost = cost;
    e->cfg.tier[1].objects_max = 10;
    assert_int_equal(open_tm(e), 0);
    struct kvt_tm_io io = {0};
    int later;
    uint32_t ids[12];
    for (uint32_t k = 0; k < 12; k++)
        ids[k] = put(e, 100 + k, 0, &io, &later);
    kvt_tm_flush(e->tm);
    pump(e); /* all written back; still in DRAM, so none is a lower-tier candidate yet */
    assert_int_equal(evict_all(e), 12);
    for (uint32_t j = 0; j < 12; j++) {
        kvt_index_at(&e->idx, ids[j])->referenced = 0;
        for (int r = 0; r < (j % 3 == 0 && j < 9 ? 9 : 0); r++) /* read 9 times: hot */
            kvt_tm_note_read(e->tm, &kvt_index_at(&e->idx, ids[j])->id);
    }
    pump(e);
    struct kvt_tm_stats st;
    kvt_tm_stats(e->tm, &st);
    assert_int_equal(st.disk_evictions, 3);
    int left = 0;
    for (uint32_t j = 0; j < 9; j += 3) {
        struct kvt_entry *en = kvt_index_at(&e->idx, ids[j]);
        left += en->state == KVT_ENTRY_READY && en->id.key.lo == 100 + j &&
                kvt_tm_tier_of(e->tm, en) != KVT_TIER_NONE;
    }
    return left;
}

static void test_cost_aware_lower_eviction(void **state)
{
    struct env *e = *state;
    assert_int_equal(hot_left_lower(e, 1), 3);
}

static void test_clock_lower_eviction(void **state)
{
    struct env *e = *state;
    assert_true(hot_left_lower(e, 0) < 3);
}

/* ---- learning from selections ---- */

static uint64_t fake_now_ms;
static uint64_t fake_clock(void *arg)
{
    (void)arg;
    return fake_now_ms;
}

/* A tier manager that learns from selections: promotion at 1.0 chunk's worth of rows within
 * windows of 1000 ms of the injected clock. */
static void reopen_sel(struct env *e, int on, int write_through)
{
    kvt_tm_stop(e->tm);
    kvt_tm_destroy(e->tm);
    e->cfg.select_promote = on;
    e->cfg.select_promote_ratio = 1.0;
    e->cfg.select_window_ms = 1000;
    e->cfg.select_promote_inflight = 2;
    e->cfg.write_through = write_through;
    e->cfg.clock = fake_clock;
    fake_now_ms = 5000;
    assert_int_equal(open_tm(e), 0);
}

static int in_dram(struct env *e, uint32_t id)
{
    return kvt_tm_in_memory(kvt_index_at(&e->idx, id));
}

/* Chunk k stored (write-through: durable once pumped) and let go of by DRAM: only the lower
 * tier has it. */
static uint32_t put_lower(struct env *e, uint32_t k)
{
    struct kvt_tm_io io = {0};
    int later;
    uint32_t id = put(e, k, 0, &io, &later);
    pump(e);
    evict_all(e);
    assert_false(in_dram(e, id));
    return id;
}

static void test_selection_promotes_after_threshold(void **state)
{
    struct env *e = *state;
    reopen_sel(e, 1, 1); /* write-through: every chunk is clean once stored */
    uint32_t a = put_lower(e, 200), b = put_lower(e, 201);
    struct kvt_tm_stats st;
    /* Three quarters of A's rows chosen: below the threshold. */
    for (int i = 0; i < 3; i++)
        kvt_tm_note_rows(e->tm, a, CHUNK / 4, 1);
    pump(e);
    assert_false(in_dram(e, a));
    assert_true(kvt_tm_sel_heat(e->tm, kvt_index_at(&e->idx, a)) == 0.75);
    /* The GetRanges of the same rows are the same evidence, not more. */
    for (int i = 0; i < 3; i++)
        kvt_tm_note_rows(e->tm, a, CHUNK / 4, 0);
    pump(e);
    assert_false(in_dram(e, a));
    kvt_tm_stats(e->tm, &st);
    assert_int_equal(st.sel_promotes_queued, 0);
    /* One more quarter: a chunk's worth, promoted in the background, whole and unpinned. */
    kvt_tm_note_rows(e->tm, a, CHUNK / 4, 1);
    pump(e);
    kvt_tm_stats(e->tm, &st);
    assert_int_equal(st.sel_promotes_queued, 1);
    assert_int_equal(st.sel_promotions, 1);
    assert_int_equal(st.promotions, 1);
    assert_true(in_dram(e, a));
    uint8_t want[CHUNK];
    fill(200, want, CHUNK);
    assert_memory_equal(kvt_tm_memory_ptr(e->tm, kvt_index_at(&e->idx, a)), want, CHUNK);
    assert_int_equal(kvt_index_at(&e->idx, a)->refs, 0);
    assert_int_equal(kvt_index_at(&e->idx, a)->promoting, 0);
    assert_int_equal(e->in_dram + e->direct + e->get_failed, 0); /* nobody was answered */
    assert_false(in_dram(e, b));                                 /* never selected: stays below */

    /* Evidence fades: half of B two windows ago counts nothing... */
    kvt_tm_note_rows(e->tm, b, CHUNK / 2, 1);
    fake_now_ms += 2000;
    kvt_tm_note_rows(e->tm, b, CHUNK / 2, 1);
    pump(e);
    assert_false(in_dram(e, b));
    /* ...and the previous window's counts half: 1/4 + 3/4 reaches a chunk's worth. */
    fake_now_ms += 1000;
    assert_true(kvt_tm_sel_heat(e->tm, kvt_index_at(&e->idx, b)) == 0.25);
    kvt_tm_note_rows(e->tm, b, 3 * CHUNK / 4, 1);
    pump(e);
    assert_true(in_dram(e, b));
    kvt_tm_stats(e->tm, &st);
    assert_int_equal(st.sel_promotions, 2);
}

static void test_selection_off_promotes_nothing(void **state)
{
    struct env *e = *state;
    reopen_sel(e, 0, 1);
    uint32_t a = put_lower(e, 210);
    for (int i = 0; i < 64; i++) {
        kvt_tm_note_rows(e->tm, a, CHUNK, 1);
        kvt_tm_note_rows(e->tm, a, CHUNK, 0);
    }
    pump(e);
    assert_false(in_dram(e, a));
    assert_true(kvt_tm_sel_heat(e->tm, kvt_index_at(&e->idx, a)) == 0);
    struct kvt_tm_stats st;
    kvt_tm_stats(e->tm, &st);
    assert_int_equal(st.sel_promotes_queued + st.sel_promotions + st.promotions, 0);
}

/* DRAM full of clean chunks hotter than the candidate: nothing is evicted for it, and it is not
 * tried again before it crossed the next multiple of the threshold; then it is the hotter one and
 * takes one slot. */
static void test_selection_never_evicts_hotter(void **state)
{
    struct env *e = *state;
    reopen_sel(e, 1, 1);
    enum { N = 40 };
    uint32_t ids[N];
    struct kvt_tm_io io[N];
    memset(io, 0, sizeof(io));
    for (uint32_t k = 0; k < N; k++) {
        int later;
        ids[k] = put(e, 300 + k, 0, &io[k], &later);
        pump(e); /* durable, so clean: the next Puts may evict it */
    }
    assert_false(in_dram(e, ids[0])); /* the arena holds fewer than N */
    int resident = 0;
    for (uint32_t k = 0; k < N; k++)
        if (in_dram(e, ids[k])) {
            kvt_tm_note_rows(e->tm, ids[k], 2 * CHUNK, 1);
            resident++;
        }
    assert_true(resident > 8);
    kvt_tm_note_rows(e->tm, ids[0], 3 * CHUNK / 2, 1);
    pump(e);
    struct kvt_tm_stats st;
    kvt_tm_stats(e->tm, &st);
    assert_int_equal(st.sel_promotes_queued, 1);
    assert_int_equal(st.sel_promote_no_room, 1);
    assert_int_equal(st.sel_promotions, 0);
    assert_false(in_dram(e, ids[0]));
    int now = 0;
    for (uint32_t k = 0; k < N; k++)
        now += in_dram(e, ids[k]);
    assert_int_equal(now, resident);
    /* A little hotter (1.75): not tried again before its next multiple of the threshold. */
    kvt_tm_note_rows(e->tm, ids[0], CHUNK / 4, 1);
    pump(e);
    kvt_tm_stats(e->tm, &st);
    assert_int_equal(st.sel_promotes_queued, 1);
    /* 2.25 crosses 2, and is hotter than the residents: it takes one slot. */
    kvt_tm_note_rows(e->tm, ids[0], CHUNK / 2, 1);
    pump(e);
    kvt_tm_stats(e->tm, &st);
    assert_int_equal(st.sel_promotes_queued, 2);
    assert_int_equal(st.sel_promote_no_room, 1);
    assert_int_equal(st.sel_promotions, 1);
    assert_true(in_dram(e, ids[0]));
    now = 0;
    for (uint32_t k = 0; k < N; k++)
        now += in_dram(e, ids[k]);
    assert_int_equal(now, resident); /* one resident went for it: capacity held */
}

/* DRAM full of chunks not yet written back: a selection promotion never drops one. */
static void test_selection_never_evicts_dirty(void **state)
{
    struct env *e = *state;
    reopen_sel(e, 1, 1);
    struct kvt_obj_id co = oid(400, 0);
    put_lower(e, 400);
    /* Write-back from now on, and no write-back under pressure: DRAM stays dirty. The chunk on
     * the lower tier is indexed again at start. */
    kvt_tm_stop(e->tm);
    kvt_tm_destroy(e->tm);
    e->cfg.write_through = 0;
    e->cfg.tier[0].high_watermark = 1.0;
    assert_int_equal(open_tm(e), 0);
    uint32_t c = kvt_index_find(&e->idx, &co);
    assert_int_not_equal(c, KVT_INDEX_NIL);
    for (uint32_t k = 0; k < 48; k++) {
        struct kvt_tm_io io = {0};
        int later;
        put(e, 500 + k, 0, &io, &later);
    }
    /* (No pump: the write-back would start once a Put found DRAM short of chunks that can go.) */
    int dirty = 0;
    for (uint32_t i = 0; i < e->idx.cap; i++) {
        const struct kvt_entry *en = kvt_index_at(&e->idx, i);
        dirty += en->state == KVT_ENTRY_READY && kvt_tm_in_memory(en) && en->at[1] == KVT_AT_NONE;
    }
    assert_true(dirty > 8);
    struct kvt_tm_stats st0, st;
    kvt_tm_stats(e->tm, &st0);
    kvt_tm_note_rows(e->tm, c, 4 * CHUNK, 1);
    pump(e);
    kvt_tm_stats(e->tm, &st);
    assert_int_equal(st.sel_promotes_queued, 1);
    assert_int_equal(st.sel_promote_no_room, 1);
    assert_int_equal(st.dropped_dirty, st0.dropped_dirty);
    assert_int_equal(st.sel_promotions, 0);
    assert_false(in_dram(e, c));
}

static void test_create_refuses_bad_lists(void **state)
{
    struct env *e = *state;
    struct kvt_tm *tm;
    struct kvt_tier not_memory_first[2] = {{&kvt_test_tier_ops, e->tt},
                                           {&kvt_host_tier_ops, e->host}};
    assert_int_equal(
        kvt_tm_create(&e->cfg, &e->idx, not_memory_first, 2, e->workers, NULL, &cbs, e, &tm),
        KVT_E_INVAL);
    assert_int_equal(
        kvt_tm_create(&e->cfg, &e->idx, not_memory_first, 5, e->workers, NULL, &cbs, e, &tm),
        KVT_E_INVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_write_back_then_promote, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cost_aware_lower_eviction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clock_lower_eviction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_through_answers_when_durable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_range_read_direct_and_corrupt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_write_keeps_chunk_dirty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_waits_for_barrier_and_variants, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_no_delete_while_writing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recovery_indexes_lower_tier, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_reads_keep_promoted_copy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_abandons_queued, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_refuses_bad_lists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metadata_written_and_loaded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_selection_promotes_after_threshold, setup, teardown),
        cmocka_unit_test_setup_teardown(test_selection_off_promotes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_selection_never_evicts_hotter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_selection_never_evicts_dirty, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
