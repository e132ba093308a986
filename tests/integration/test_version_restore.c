/*
 * Reuse version info across restarts, through a real kvtierd with a disk tier (docs/reuse.md,
 * "Across restarts"): versions reported while their chunks were only in DRAM (written back by
 * the SIGTERM flush) and after their chunks were durable (write-through, then kill -9) come back
 * with the same ChunkLookup plans (version, CFO, beta, gamma, the token indices, the namespace's
 * prior), restored from the version log alone: no payload byte is read. A deleted version, one
 * evicted by reuse.versions_max and one whose chunk was Put again stay gone. A flipped byte in a
 * log record costs that chunk its version only (refused and counted; the chunk is still served).
 * The log is compacted while running; a full one drops (and counts) what does not fit, never a
 * VersionSet.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "kernels/half.h"
#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

#define LAYERS 2
#define HEADS 2
#define DIM 16
#define T_MAX 64
#define ROW (2 * HEADS * DIM)
#define N_P 4

static const struct kvt_ns_spec spec = {.model_id = "version-restore",
                                        .layers = LAYERS,
                                        .kv_heads = HEADS,
                                        .head_dim = DIM,
                                        .dtype = KVT_DTYPE_FP16,
                                        .tokens_per_chunk = T_MAX,
                                        .rope_theta = 10000.0f};

struct passage {
    int32_t tokens[T_MAX];
    uint32_t n;
    struct kvt_key key;
    uint16_t kv[LAYERS * T_MAX * ROW];
};

static struct passage P[N_P];
static const uint32_t lens[N_P] = {20, 37, 16, 64};

static const char *wb_args[] = {"--disk.bytes=64M", "--disk.staging_bytes=8M",
                                "--disk.object_bytes_max=1M", NULL};
static const char *wt_args[] = {"--tier.write_policy=write-through", "--disk.bytes=64M",
                                "--disk.staging_bytes=8M", "--disk.object_bytes_max=1M", NULL};

static uint64_t stat_of(struct kvt_client *c, const char *name)
{
    uint64_t v = kvt_test_stat(c, name);
    if (v == UINT64_MAX)
        fail_msg("no stat %s", name);
    return v;
}

static struct kvt_client *connect_ns(struct kvt_test_daemon *d, struct kvt_ns_info *ns)
{
    struct kvt_connect_opts o = {
        .socket_path = d->socket_path, .arena_bytes = 4 << 20, .timeout_ms = 10000};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &spec, ns), 0);
    for (uint32_t i = 0; i < N_P; i++) {
        P[i].n = lens[i];
        for (uint32_t t = 0; t < lens[i]; t++)
            P[i].tokens[t] = (int32_t)(i * 1000 + t);
        assert_int_equal(kvt_passage_key(ns, P[i].tokens, lens[i], &P[i].key), 0);
        kvt_test_fill(P[i].kv, sizeof(P[i].kv), i + 1);
        for (size_t k = 0; k < (size_t)LAYERS * lens[i] * ROW; k++)
            P[i].kv[k] = kvt_f32_to_f16((float)((P[i].kv[k] % 4096) / 1024.0 - 2.0));
    }
    return c;
}

static size_t bytes_of(const struct passage *p)
{
    return (size_t)LAYERS * p->n * ROW * sizeof(uint16_t);
}

/* Version of passage i after the passages in prefix: per layer each prefix passage gets pm (a bit
 * more in layer 1), the passage itself intra; token t's mass is a permutation, so that the
 * recompute indices are a fixed, checkable choice. */
static int set_version(struct kvt_client *c, uint32_t ns, uint32_t i, uint32_t variant,
                       uint64_t start, const uint32_t *prefix, uint32_t np, float pm, float intra)
{
    struct kvt_key pk[N_P];
    float rows[LAYERS * (N_P + 1)], tm[T_MAX];
    for (uint32_t j = 0; j < np; j++)
        pk[j] = P[prefix[j]].key;
    for (uint32_t l = 0; l < LAYERS; l++) {
        for (uint32_t j = 0; j < np; j++)
            rows[l * (np + 1) + j] = pm * (1.0f + 0.25f * (float)l) / (float)(j + 1);
        rows[l * (np + 1) + np] = intra;
    }
    for (uint32_t t = 0; t < P[i].n; t++)
        tm[t] = (float)((t * 7 + i) % P[i].n) / (float)P[i].n;
    struct kvt_version_info vi = {.start_pos = start,
                                  .prefix = pk,
                                  .n_prefix = np,
                                  .layers = LAYERS,
                                  .n_tokens = P[i].n,
                                  .layer_mass = rows,
                                  .token_mass = tm};
    return kvt_version_set(c, ns, &P[i].key, variant, &vi);
}

static void put_all(struct kvt_client *c, uint32_t ns, uint32_t variant)
{
    for (uint32_t i = 0; i < N_P; i++)
        assert_int_equal(kvt_put_v(c, ns, &P[i].key, variant, P[i].kv, bytes_of(&P[i]), P[i].n), 0);
}

/* Three versions: passage 0 alone first (no passage before it: the prior applies to it), 1
 * after 0, 2 after 0 and 1; passage 3 has none. */
static void set_versions(struct kvt_client *c, uint32_t ns)
{
    const uint32_t p01[] = {0, 1};
    assert_int_equal(set_version(c, ns, 0, 0, 10, NULL, 0, 0, 0.8f), 0);
    assert_int_equal(set_version(c, ns, 1, 0, 30, p01, 1, 0.4f, 0.4f), 0);
    assert_int_equal(set_version(c, ns, 2, 0, 67, p01, 2, 0.3f, 0.3f), 0);
}

#define REQS 3
struct plans {
    struct kvt_reuse_plan p[REQS][N_P];
    uint32_t idx[REQS][N_P][T_MAX];
};

/* Requests that exercise every part of the plan: the stored order (nothing to recompute), a new
 * order (gamma), a new passage in front (N, the prior for passage 0). */
static void plan_all(struct kvt_client *c, uint32_t ns, struct plans *out)
{
    static const uint32_t order[REQS][N_P] = {{0, 1, 2, 3}, {1, 0, 2, 3}, {3, 2, 1, 0}};
    memset(out, 0, sizeof(*out));
    for (int r = 0; r < REQS; r++) {
        struct kvt_key keys[N_P];
        uint64_t pos[N_P], at = 10;
        for (int i = 0; i < N_P; i++) {
            keys[i] = P[order[r][i]].key;
            pos[i] = at;
            at += P[order[r][i]].n;
            out->p[r][i].recompute = out->idx[r][i];
            out->p[r][i].recompute_cap = T_MAX;
        }
        assert_int_equal(kvt_chunk_lookup(c, ns, keys, pos, N_P, 0, out->p[r]), 0);
    }
}

static void assert_same_plans(const struct plans *a, const struct plans *b, int found)
{
    int n_found = 0, n_recompute = 0;
    for (int r = 0; r < REQS; r++) {
        for (int i = 0; i < N_P; i++) {
            const struct kvt_reuse_plan *x = &a->p[r][i], *y = &b->p[r][i];
            assert_int_equal(x->found, y->found);
            n_found += x->found;
            if (!x->found)
                continue;
            assert_int_equal(x->variant, y->variant);
            assert_int_equal(x->old_start, y->old_start);
            assert_int_equal(x->n_tokens, y->n_tokens);
            assert_true(x->beta == y->beta);
            assert_true(x->gamma == y->gamma);
            assert_true(x->beta_prime == y->beta_prime);
            assert_true(x->cci == y->cci);
            assert_true(x->cfo == y->cfo);
            assert_int_equal(x->n_recompute, y->n_recompute);
            assert_memory_equal(x->recompute, y->recompute, x->n_recompute * sizeof(uint32_t));
            assert_int_equal(x->next_variant, y->next_variant);
            n_recompute += x->n_recompute > 0;
        }
    }
    assert_int_equal(n_found, found);
    assert_true(n_recompute >= 2); /* the plans are not all trivial */
}

/* Before any Get after a restart: the versions came back without a payload read. */
static void assert_restored_without_payload(struct kvt_client *c, uint64_t n)
{
    assert_int_equal(stat_of(c, "versions_restored"), n);
    assert_int_equal(stat_of(c, "versions"), n);
    assert_int_equal(stat_of(c, "version_records_corrupt"), 0);
    assert_int_equal(stat_of(c, "disk.reads"), 0);
    assert_int_equal(stat_of(c, "disk.range_reads"), 0);
    assert_int_equal(stat_of(c, "disk.bytes_read"), 0);
}

/* Every logged record is on disk (the log is written by a worker). */
/* Bounded at 30 s: the log's worker shares a loaded machine's cores with other test runs. */
static void wait_synced(struct kvt_client *c)
{
    for (int i = 0; i < 3000; i++) {
        if (stat_of(c, "version_log_synced") == stat_of(c, "version_log_appends"))
            return;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fail_msg("version log not synced");
}

static void restart_and_check(const char **args, int hard)
{
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    static struct plans before, after;
    int write_through = hard;

    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_client *c = connect_ns(&d, &ns);
    put_all(c, ns.handle, 0);
    set_versions(c, ns.handle);
    /* Write-through: every chunk was durable before its version, which was logged at once.
     * Write-back: nothing is on disk yet; the shutdown flush logs them. */
    assert_int_equal(stat_of(c, "version_log_appends"), write_through ? 3 : 0);
    plan_all(c, ns.handle, &before);
    if (hard)
        wait_synced(c);
    kvt_close(c);
    if (hard)
        kvt_test_daemon_kill(&d);
    else
        assert_int_equal(kvt_test_daemon_stop(&d), 0);

    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    c = connect_ns(&d, &ns);
    assert_restored_without_payload(c, 3);
    plan_all(c, ns.handle, &after);
    assert_same_plans(&before, &after, 3 * REQS);
    assert_int_equal(after.p[0][0].tier, KVT_TIER_DISK);
    assert_int_equal(stat_of(c, "disk.bytes_read"), 0); /* planning reads no payload either */
    assert_true(stat_of(c, "version_log_bytes") > 0);   /* the compacted log holds all three */
    kvt_close(c);

    /* A second restart restores the same from the compacted log. */
    if (hard)
        kvt_test_daemon_kill(&d);
    else
        assert_int_equal(kvt_test_daemon_stop(&d), 0);
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    c = connect_ns(&d, &ns);
    assert_restored_without_payload(c, 3);
    assert_int_equal(stat_of(c, "version_records_stale"), 0);
    plan_all(c, ns.handle, &after);
    assert_same_plans(&before, &after, 3 * REQS);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

static void test_set_before_writeback_sigterm(void **state)
{
    (void)state;
    restart_and_check(wb_args, 0);
}

static void test_set_after_write_kill9(void **state)
{
    (void)state;
    restart_and_check(wt_args, 1);
}

/* A version replaced after its chunk was on disk: the newer one comes back. */
static void test_replaced_version(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    assert_int_equal(kvt_test_daemon_start(&d, wt_args), 0);
    struct kvt_client *c = connect_ns(&d, &ns);
    put_all(c, ns.handle, 0);
    set_versions(c, ns.handle);
    assert_int_equal(set_version(c, ns.handle, 0, 0, 444, NULL, 0, 0, 0.5f), 0);
    wait_synced(c);
    kvt_close(c);
    kvt_test_daemon_kill(&d);
    assert_int_equal(kvt_test_daemon_start(&d, wt_args), 0);
    c = connect_ns(&d, &ns);
    assert_int_equal(stat_of(c, "versions_restored"), 3);
    uint64_t at = 444;
    struct kvt_reuse_plan plan = {0};
    assert_int_equal(kvt_chunk_lookup(c, ns.handle, &P[0].key, &at, 1, 0, &plan), 0);
    assert_true(plan.found);
    assert_int_equal(plan.old_start, 444);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* Deleted, evicted by reuse.versions_max, Put again after a delete: none comes back. */
static void test_gone_stays_gone(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    const char *args[] = {wt_args[0], wt_args[1], wt_args[2], wt_args[3], "--reuse.versions_max=2",
                          NULL};
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_client *c = connect_ns(&d, &ns);
    /* Passage 0: versions 0 and 1; planned at 0's place, so 1 is the least recently planned and
     * goes when version 2 is reported. */
    for (uint32_t v = 0; v < 2; v++) {
        assert_int_equal(kvt_put_v(c, ns.handle, &P[0].key, v, P[0].kv, bytes_of(&P[0]), P[0].n),
                         0);
        assert_int_equal(set_version(c, ns.handle, 0, v, 100 * v, NULL, 0, 0, 0.5f), 0);
    }
    uint64_t at0 = 0;
    struct kvt_reuse_plan plan = {0};
    assert_int_equal(kvt_chunk_lookup(c, ns.handle, &P[0].key, &at0, 1, 0, &plan), 0);
    assert_int_equal(plan.variant, 0);
    assert_int_equal(kvt_put_v(c, ns.handle, &P[0].key, 2, P[0].kv, bytes_of(&P[0]), P[0].n), 0);
    assert_int_equal(set_version(c, ns.handle, 0, 2, 200, NULL, 0, 0, 0.5f), 0);
    assert_int_equal(stat_of(c, "versions_evicted"), 1);
    /* Passage 1: version 0 deleted. Passage 2: version 0 deleted and Put again, plain. */
    const uint32_t v0 = 0;
    int st = 1;
    for (uint32_t i = 1; i <= 2; i++) {
        assert_int_equal(kvt_put_v(c, ns.handle, &P[i].key, 0, P[i].kv, bytes_of(&P[i]), P[i].n),
                         0);
        assert_int_equal(set_version(c, ns.handle, i, 0, 7, NULL, 0, 0, 0.5f), 0);
        assert_int_equal(kvt_delete_v(c, ns.handle, &P[i].key, &v0, 1, &st), 0);
        assert_int_equal(st, 0);
    }
    assert_int_equal(kvt_put_v(c, ns.handle, &P[2].key, 0, P[2].kv, bytes_of(&P[2]), P[2].n), 0);
    assert_int_equal(stat_of(c, "versions"), 2);
    wait_synced(c);
    kvt_close(c);
    kvt_test_daemon_kill(&d);

    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    c = connect_ns(&d, &ns);
    assert_int_equal(stat_of(c, "versions_restored"), 2);
    assert_int_equal(stat_of(c, "versions"), 2);
    /* The log held five records: the evicted, the two deleted copies' are stale now. */
    assert_int_equal(stat_of(c, "version_records_stale"), 3);
    struct kvt_reuse_plan plans[3] = {{0}};
    struct kvt_key keys[3] = {P[0].key, P[1].key, P[2].key};
    uint64_t pos[3] = {100, 200, 300};
    assert_int_equal(kvt_chunk_lookup(c, ns.handle, keys, pos, 3, 0, plans), 0);
    assert_true(plans[0].found);
    /* Not version 1, which was at 100 and would win the tie; of 0 and 2 the later one. */
    assert_int_equal(plans[0].variant, 2);
    assert_int_equal(plans[0].next_variant, 1);
    assert_false(plans[1].found);
    assert_false(plans[2].found); /* the chunk is back, without the old copy's version */
    size_t hits = 0;
    assert_int_equal(kvt_lookup_v(c, ns.handle, &P[2].key, &v0, 1, &hits, NULL), 0);
    assert_int_equal(hits, 1);
    kvt_close(c);
    /* Compacted: the next start finds nothing stale. */
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    c = connect_ns(&d, &ns);
    assert_int_equal(stat_of(c, "versions_restored"), 2);
    assert_int_equal(stat_of(c, "version_records_stale"), 0);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* A flipped byte in the middle of the second record of the log: refused and counted, its chunk
 * served as a plain chunk, the other records restored. */
static void test_corrupt_record(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    assert_int_equal(kvt_test_daemon_start(&d, wt_args), 0);
    struct kvt_client *c = connect_ns(&d, &ns);
    put_all(c, ns.handle, 0);
    set_versions(c, ns.handle);
    wait_synced(c);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);

    char path[400];
    snprintf(path, sizeof(path), "%s/kvtier-versions.log", d.dir);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    struct stat sb;
    assert_int_equal(fstat(fd, &sb), 0);
    unsigned char *log = malloc((size_t)sb.st_size);
    assert_int_equal(pread(fd, log, (size_t)sb.st_size, 0), sb.st_size);
    /* Records start with "KVTR" and their length (head + form) at byte 8, padded to 8. */
    size_t off = 0, second = 0, second_len = 0;
    for (int r = 0; r < 2; r++) {
        assert_memory_equal(log + off, "KVTR", 4);
        size_t n = (size_t)log[8] | (size_t)log[9] << 8 | (size_t)log[10] << 16;
        second = off;
        second_len = n;
        off += (n + 7) & ~(size_t)7;
    }
    /* Which passage it is: the key at 24 (the replay order is the VersionSet order). */
    uint64_t key_lo = 0;
    for (int i = 0; i < 8; i++)
        key_lo |= (uint64_t)log[second + 24 + i] << (8 * i);
    assert_true(key_lo == P[1].key.lo);
    unsigned char b = log[second + second_len / 2] ^ 0x08;
    assert_int_equal(pwrite(fd, &b, 1, (off_t)(second + second_len / 2)), 1);
    close(fd);
    free(log);

    assert_int_equal(kvt_test_daemon_start(&d, wt_args), 0);
    c = connect_ns(&d, &ns);
    assert_int_equal(stat_of(c, "versions_restored"), 2);
    assert_int_equal(stat_of(c, "version_records_corrupt"), 1);
    assert_int_equal(stat_of(c, "disk.bytes_read"), 0);
    struct kvt_reuse_plan plans[3] = {{0}};
    struct kvt_key keys[3] = {P[0].key, P[1].key, P[2].key};
    uint64_t pos[3] = {10, 30, 67};
    assert_int_equal(kvt_chunk_lookup(c, ns.handle, keys, pos, 3, 0, plans), 0);
    assert_true(plans[0].found);
    assert_false(plans[1].found);
    assert_true(plans[2].found);
    static uint16_t got[LAYERS * T_MAX * ROW];
    size_t len = 0;
    enum kvt_tier_id tier;
    assert_int_equal(kvt_get(c, ns.handle, &P[1].key, got, sizeof(got), &len, &tier), 0);
    assert_int_equal(len, bytes_of(&P[1]));
    assert_memory_equal(got, P[1].kv, len);
    /* The engine may report it again. */
    const uint32_t p0[] = {0};
    assert_int_equal(set_version(c, ns.handle, 1, 0, 30, p0, 1, 0.4f, 0.4f), 0);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* One version replaced 3,000 times on a chunk on disk (a record each, 1.2 MB in all) under
 * reuse.log_bytes_max=1M: the log is compacted while running, nothing is dropped, and the restart
 * restores the last one. */
static void test_log_compacted_while_running(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    const char *args[] = {
        wt_args[0], wt_args[1], wt_args[2], wt_args[3], "--reuse.log_bytes_max=1M", NULL};
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_client *c = connect_ns(&d, &ns);
    assert_int_equal(kvt_put_v(c, ns.handle, &P[3].key, 0, P[3].kv, bytes_of(&P[3]), P[3].n), 0);
    enum { SETS = 3000 };
    for (uint32_t i = 0; i < SETS; i++)
        assert_int_equal(set_version(c, ns.handle, 3, 0, 1000 + i, NULL, 0, 0, 0.5f), 0);
    assert_int_equal(stat_of(c, "version_log_appends"), SETS);
    assert_int_equal(stat_of(c, "version_log_dropped"), 0);
    wait_synced(c);
    /* The compaction starts when a write lands past half the limit and runs on a worker: it may
     * still be running when the last VersionSet is answered (bounded wait: 30 s). */
    for (int i = 0; i < 3000 && stat_of(c, "version_log_compactions") < 1; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_true(stat_of(c, "version_log_compactions") >= 1);
    assert_true(stat_of(c, "version_log_bytes") < 1u << 20);
    wait_synced(c);
    kvt_close(c);
    kvt_test_daemon_kill(&d);

    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    c = connect_ns(&d, &ns);
    assert_int_equal(stat_of(c, "versions_restored"), 1);
    assert_int_equal(stat_of(c, "version_records_corrupt"), 0);
    assert_true(stat_of(c, "version_log_bytes") < 1024); /* compacted to one record */
    uint64_t at = 0;
    struct kvt_reuse_plan plan = {0};
    assert_int_equal(kvt_chunk_lookup(c, ns.handle, &P[3].key, &at, 1, 0, &plan), 0);
    assert_true(plan.found);
    assert_int_equal(plan.old_start, 1000 + SETS - 1);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* More live version info than reuse.log_bytes_max holds (200 versions after 256 passages, 6 KB
 * each): VersionSets are still answered (DRAM), the records past the limit are dropped and
 * counted, and the restart restores exactly the ones logged. */
static void test_log_full(void **state)
{
    (void)state;
    enum { N = 200, NPRE = 256, TOK = 16 };
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    const char *args[] = {
        wt_args[0], wt_args[1], wt_args[2], wt_args[3], "--reuse.log_bytes_max=1M", NULL};
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_client *c = connect_ns(&d, &ns);
    static struct kvt_key pre[NPRE];
    static float rows[LAYERS * (NPRE + 1)];
    float tm[TOK] = {0};
    for (uint32_t j = 0; j < NPRE; j++)
        pre[j] = (struct kvt_key){.lo = 0x77000 + j, .hi = 5};
    for (uint32_t k = 0; k < LAYERS * (NPRE + 1); k++)
        rows[k] = 0.001f;
    for (uint32_t i = 0; i < N; i++) {
        int32_t toks[TOK];
        struct kvt_key key;
        for (uint32_t t = 0; t < TOK; t++)
            toks[t] = (int32_t)(500000 + i * TOK + t);
        assert_int_equal(kvt_passage_key(&ns, toks, TOK, &key), 0);
        assert_int_equal(kvt_put_v(c, ns.handle, &key, 0, P[0].kv,
                                   (size_t)LAYERS * TOK * ROW * sizeof(uint16_t), TOK),
                         0);
        struct kvt_version_info vi = {.start_pos = 9,
                                      .prefix = pre,
                                      .n_prefix = NPRE,
                                      .layers = LAYERS,
                                      .n_tokens = TOK,
                                      .layer_mass = rows,
                                      .token_mass = tm};
        assert_int_equal(kvt_version_set(c, ns.handle, &key, 0, &vi), 0);
    }
    uint64_t logged = stat_of(c, "version_log_appends");
    assert_int_equal(stat_of(c, "versions"), N);
    assert_true(stat_of(c, "version_log_dropped") > 0);
    assert_int_equal(logged + stat_of(c, "version_log_dropped"), N);
    assert_true(stat_of(c, "version_log_bytes") <= 1u << 20);
    wait_synced(c);
    kvt_close(c);
    kvt_test_daemon_kill(&d);

    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    c = connect_ns(&d, &ns);
    assert_int_equal(stat_of(c, "versions_restored"), logged);
    assert_int_equal(stat_of(c, "version_records_corrupt"), 0);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* 2,000 versions (after 4 passages each) written back by the SIGTERM flush and restored: the
 * time of the restore as the daemon logs it, printed. */
static void test_restore_2000_versions(void **state)
{
    (void)state;
    enum { N = 2000, TOK = 16 };
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    assert_int_equal(kvt_test_daemon_start(&d, wb_args), 0);
    struct kvt_client *c = connect_ns(&d, &ns);
    static struct kvt_key keys[N];
    float rows[LAYERS * 5], tm[TOK];
    for (uint32_t l = 0; l < LAYERS; l++)
        for (uint32_t j = 0; j < 5; j++)
            rows[l * 5 + j] = 0.15f;
    for (uint32_t t = 0; t < TOK; t++)
        tm[t] = (float)t / TOK;
    for (uint32_t i = 0; i < N; i++) {
        int32_t toks[TOK];
        for (uint32_t t = 0; t < TOK; t++)
            toks[t] = (int32_t)(100000 + i * TOK + t);
        assert_int_equal(kvt_passage_key(&ns, toks, TOK, &keys[i]), 0);
        assert_int_equal(kvt_put_v(c, ns.handle, &keys[i], 0, P[0].kv,
                                   (size_t)LAYERS * TOK * ROW * sizeof(uint16_t), TOK),
                         0);
        struct kvt_version_info vi = {.start_pos = 16u * (i % 5),
                                      .prefix = i >= 4 ? &keys[i - 4] : keys,
                                      .n_prefix = i >= 4 ? 4 : 0,
                                      .layers = LAYERS,
                                      .n_tokens = TOK,
                                      .layer_mass = rows,
                                      .token_mass = tm};
        assert_int_equal(kvt_version_set(c, ns.handle, &keys[i], 0, &vi), 0);
    }
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);

    assert_int_equal(kvt_test_daemon_start(&d, wb_args), 0);
    c = connect_ns(&d, &ns);
    assert_int_equal(stat_of(c, "versions_restored"), N);
    assert_int_equal(stat_of(c, "disk.bytes_read"), 0);
    uint64_t log_bytes = stat_of(c, "version_log_bytes");
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    FILE *f = fopen(d.log_path, "r");
    assert_non_null(f);
    char line[512], last[512] = "";
    while (fgets(line, sizeof(line), f))
        if (strstr(line, "versions restored="))
            snprintf(last, sizeof(last), "%s", line);
    fclose(f);
    assert_true(last[0] != 0);
    printf("restore of %d versions (log %llu bytes): %s", N, (unsigned long long)log_bytes,
           strstr(last, "versions restored="));
    kvt_test_daemon_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_before_writeback_sigterm),
        cmocka_unit_test(test_set_after_write_kill9),
        cmocka_unit_test(test_replaced_version),
        cmocka_unit_test(test_gone_stays_gone),
        cmocka_unit_test(test_corrupt_record),
        cmocka_unit_test(test_log_compacted_while_running),
        cmocka_unit_test(test_log_full),
        cmocka_unit_test(test_restore_2000_versions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
