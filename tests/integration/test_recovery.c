/*
 * Recovery and bounds through a real kvtierd: a damaged checkpoint or journal falls back to a scan
 * of the data files and loses nothing; a Delete answered before kill -9 stays deleted; a full
 * index evicts the coldest chunks instead of refusing Puts; disk objects that no longer fit in the
 * index after a restart are removed from disk instead of holding space forever.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "kvtier/kvtier.h"
#include "tiers/disk/disk.h"
#include "tests/lib/daemon.h"

/* 1 layer x 1 head x 64 dims x fp16 x (k, v) = 256 bytes per token; 64 tokens = 16 KiB. */
static const struct kvt_ns_spec spec = {.model_id = "recovery-test",
                                        .layers = 1,
                                        .kv_heads = 1,
                                        .head_dim = 64,
                                        .dtype = KVT_DTYPE_FP16,
                                        .tokens_per_chunk = 64};
#define CHUNK (64 * 256)

static struct kvt_client *connect_ns(const struct kvt_test_daemon *d, struct kvt_ns_info *ns)
{
    struct kvt_connect_opts o = {
        .socket_path = d->socket_path, .arena_bytes = 4 << 20, .timeout_ms = 5000};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &spec, ns), 0);
    return c;
}

static uint64_t stat_of(struct kvt_client *c, const char *name)
{
    uint64_t v = kvt_test_stat(c, name);
    if (v == UINT64_MAX)
        fail_msg("no stat %s", name);
    return v;
}

static struct kvt_key key_of(uint64_t i)
{
    return (struct kvt_key){i, 0x5ca7};
}

static int put_chunk(struct kvt_client *c, uint32_t ns, uint64_t i)
{
    static uint8_t buf[CHUNK];
    kvt_test_fill(buf, CHUNK, i);
    struct kvt_key k = key_of(i);
    return kvt_put(c, ns, &k, buf, CHUNK, 0);
}

/* Gets chunk i and checks its bytes; returns the Get's status. */
static int check_chunk(struct kvt_client *c, uint32_t ns, uint64_t i)
{
    static uint8_t got[CHUNK], want[CHUNK];
    struct kvt_key k = key_of(i);
    enum kvt_tier_id tier;
    size_t len = 0;
    int rc = kvt_get(c, ns, &k, got, sizeof(got), &len, &tier);
    if (rc == 0) {
        assert_int_equal(len, CHUNK);
        kvt_test_fill(want, CHUNK, i);
        if (memcmp(got, want, CHUNK) != 0)
            fail_msg("chunk %llu served with wrong bytes", (unsigned long long)i);
    }
    return rc;
}

static void flip_byte(const struct kvt_test_daemon *d, const char *name, off_t off)
{
    char path[400];
    unsigned char b;
    snprintf(path, sizeof(path), "%s/%s", d->dir, name);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, &b, 1, off), 1);
    b ^= 0x20;
    assert_int_equal(pwrite(fd, &b, 1, off), 1);
    close(fd);
}

static const char *wt_args[] = {"--tier.write_policy=write-through",
                                "--disk.bytes=64M",
                                "--disk.object_bytes_max=64K",
                                "--cpu.arena_bytes=4M",
                                "--cpu.page_bytes=256K",
                                NULL};

#define N_CHUNKS 200

/* Write-through Puts are answered when durable; then the daemon stops (gracefully: the checkpoint
 * holds everything) or is killed (the journal does). */
static struct kvt_client *put_all(struct kvt_test_daemon *d, struct kvt_ns_info *ns)
{
    assert_int_equal(kvt_test_daemon_start(d, wt_args), 0);
    struct kvt_client *c = connect_ns(d, ns);
    for (uint64_t i = 0; i < N_CHUNKS; i++)
        assert_int_equal(put_chunk(c, ns->handle, i), 0);
    return c;
}

static void restart_check_all(struct kvt_test_daemon *d, uint64_t want_scanned)
{
    struct kvt_ns_info ns;
    assert_int_equal(kvt_test_daemon_start(d, wt_args), 0);
    struct kvt_client *c = connect_ns(d, &ns);
    assert_int_equal(stat_of(c, "disk.scans"), 1);
    assert_int_equal(stat_of(c, "disk.recovered_by_scan"), want_scanned);
    assert_int_equal(stat_of(c, "tier.recovered_objects"), N_CHUNKS);
    for (uint64_t i = 0; i < N_CHUNKS; i++)
        assert_int_equal(check_chunk(c, ns.handle, i), 0);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(d), 0);
    kvt_test_daemon_cleanup(d);
}

static void test_damaged_checkpoint_is_scanned(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct kvt_client *c = put_all(&d, &ns);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    /* A byte in the middle of the records (64-byte header, 88-byte records). */
    flip_byte(&d, "kvtier-disk.ckpt", 64 + 88 * (N_CHUNKS / 2) + 17);
    restart_check_all(&d, N_CHUNKS);
}

static void test_damaged_journal_is_scanned(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct kvt_client *c = put_all(&d, &ns);
    kvt_close(c);
    /* Killed: the chunks are known only from the journal (well under disk checkpoint interval). */
    kvt_test_daemon_kill(&d);
    flip_byte(&d, "kvtier-disk.journal", 88 * 3 + 40);
    restart_check_all(&d, N_CHUNKS);
}

static void test_delete_survives_kill(void **state)
{
    (void)state;
    /* The Delete's answer comes only once its tombstone is durable: killed right after it, the
     * daemon never brings the chunks back. */
    for (int round = 0; round < 5; round++) {
        struct kvt_test_daemon d = {0};
        struct kvt_ns_info ns;
        assert_int_equal(kvt_test_daemon_start(&d, wt_args), 0);
        struct kvt_client *c = connect_ns(&d, &ns);
        struct kvt_key keys[20];
        int st[20];
        for (uint64_t i = 0; i < 40; i++)
            assert_int_equal(put_chunk(c, ns.handle, i), 0);
        for (uint64_t i = 0; i < 20; i++)
            keys[i] = key_of(i * 2);
        assert_int_equal(kvt_delete(c, ns.handle, keys, 20, st), 0);
        for (int i = 0; i < 20; i++)
            assert_int_equal(st[i], 0);
        kvt_test_daemon_kill(&d);
        kvt_close(c);
        assert_int_equal(kvt_test_daemon_start(&d, wt_args), 0);
        c = connect_ns(&d, &ns);
        for (uint64_t i = 0; i < 40; i++)
            assert_int_equal(check_chunk(c, ns.handle, i), i % 2 ? 0 : KVT_E_NOTFOUND);
        assert_true(stat_of(c, "tier.recovered_objects") == 20);
        kvt_close(c);
        assert_int_equal(kvt_test_daemon_stop(&d), 0);
        kvt_test_daemon_cleanup(&d);
    }
}

static void index_full_keeps_putting(const char *const *args, int disk)
{
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_client *c = connect_ns(&d, &ns);
    for (uint64_t i = 0; i < 300; i++)
        assert_int_equal(put_chunk(c, ns.handle, 1000 + i), 0);
    assert_true(stat_of(c, "index_objects") <= 64);
    assert_true(stat_of(c, "tier.index_evictions") >= 300 - 64);
    assert_int_equal(stat_of(c, "tier.index_full"), 0);
    /* The newest chunks are the ones kept. */
    for (uint64_t i = 290; i < 300; i++)
        assert_int_equal(check_chunk(c, ns.handle, 1000 + i), 0);
    if (disk)
        assert_true(stat_of(c, "disk.objects") <= 64);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

static void test_index_full_evicts_coldest(void **state)
{
    (void)state;
    const char *cpu_only[] = {"--index.max_objects=64", "--cpu.arena_bytes=4M",
                              "--cpu.page_bytes=256K", NULL};
    const char *with_disk[] = {"--index.max_objects=64",
                               "--tier.write_policy=write-through",
                               "--disk.bytes=64M",
                               "--disk.object_bytes_max=64K",
                               "--cpu.arena_bytes=4M",
                               "--cpu.page_bytes=256K",
                               NULL};
    index_full_keeps_putting(cpu_only, 0);
    index_full_keeps_putting(with_disk, 1);
}

static void test_objects_beyond_index_are_removed(void **state)
{
    (void)state;
    /* The disk holds 200 chunks; restarted with room for 64 in the index, the other 136 would be
     * unreachable: they are removed from disk (and counted), not left holding space. */
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct kvt_client *c = put_all(&d, &ns);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    const char *small[] = {"--index.max_objects=64",
                           "--tier.write_policy=write-through",
                           "--disk.bytes=64M",
                           "--disk.object_bytes_max=64K",
                           "--cpu.arena_bytes=4M",
                           "--cpu.page_bytes=256K",
                           NULL};
    assert_int_equal(kvt_test_daemon_start(&d, small), 0);
    c = connect_ns(&d, &ns);
    assert_int_equal(stat_of(c, "tier.recovered_objects"), 64);
    assert_int_equal(stat_of(c, "tier.recovery_removed"), N_CHUNKS - 64);
    assert_int_equal(stat_of(c, "disk.objects"), 64);
    uint64_t found = 0;
    for (uint64_t i = 0; i < N_CHUNKS; i++)
        found += check_chunk(c, ns.handle, i) == 0;
    assert_int_equal(found, 64);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

struct range_result {
    int done;
    int res;
};

static void range_done(void *arg, int res)
{
    struct range_result *r = arg;
    r->done = 1;
    r->res = res;
}

/* A chunk the daemon wrote carries its namespace's geometry on disk: one layer's token range can
 * be read by itself (only its blocks) straight from the store the daemon left. */
static void test_daemon_objects_have_geometry(void **state)
{
    (void)state;
    static const struct kvt_ns_spec two = {.model_id = "geometry-on-disk",
                                           .layers = 2,
                                           .kv_heads = 1,
                                           .head_dim = 64,
                                           .dtype = KVT_DTYPE_FP16,
                                           .tokens_per_chunk = 64};
    enum { ROW = 2 * 1 * 64 * 2, TOKENS = 64, BYTES = 2 * TOKENS * ROW }; /* 32 KiB */
    const char *args[] = {"--tier.write_policy=write-through", "--disk.bytes=64M",
                          "--disk.object_bytes_max=64K", "--disk.codec=none", NULL};
    struct kvt_test_daemon d = {0};
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_connect_opts o = {.socket_path = d.socket_path, .arena_bytes = 1 << 20};
    struct kvt_client *c;
    struct kvt_ns_info ns;
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &two, &ns), 0);
    static uint8_t chunk[BYTES], got[16 * ROW];
    kvt_test_fill(chunk, BYTES, 77);
    struct kvt_key k = {0x9e0, 0x3e7};
    enum kvt_tier_id tier = KVT_TIER_NONE;
    assert_int_equal(kvt_put(c, ns.handle, &k, chunk, BYTES, 0), 0);
    size_t len;
    assert_int_equal(kvt_get(c, ns.handle, &k, got, 16, &len, &tier), KVT_E_SMALLBUF);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);

    /* Open the store the daemon left, as the daemon does. */
    char path[400];
    snprintf(path, sizeof(path), "%s/disk.0", d.dir);
    struct kvt_disk_config dc;
    kvt_disk_config_init(&dc);
    dc.paths[0] = path;
    dc.n_paths = 1;
    dc.file_bytes = 64u << 20;
    dc.meta_dir = d.dir;
    dc.object_bytes_max = 64u << 10;
    struct kvt_disk *disk = NULL;
    assert_int_equal(kvt_disk_create(&dc, &disk), 0);
    struct kvt_obj_id id = {.ns_seed = ns.seed, .key = k};
    struct kvt_disk_stats before, after;
    kvt_disk_stats(disk, &before);
    struct range_result r = {0};
    /* Tokens 16..31 of layer 1. */
    assert_int_equal(kvt_disk_read_range(disk, &id, 1, 16, 16, got, sizeof(got), range_done, &r),
                     0);
    for (int i = 0; i < 1000 && !r.done; i++)
        kvt_disk_wait(disk, 10);
    assert_int_equal(r.done, 1);
    assert_true(r.res >= 0);
    assert_memory_equal(got, chunk + (size_t)TOKENS * ROW + 16u * ROW, 16u * ROW);
    kvt_disk_stats(disk, &after);
    uint64_t read = after.bytes_read - before.bytes_read;
    printf("a 4 KiB range of one layer of a 32 KiB chunk read %llu bytes from disk\n",
           (unsigned long long)read);
    assert_true(read <= 8192); /* its blocks and their checksums, 4 KiB aligned: not the chunk */
    kvt_disk_destroy(disk);
    kvt_test_daemon_cleanup(&d);
}

/* Variants of one key come back from a scan of the data files (the checkpoint's header damaged,
 * the journal empty after a clean stop) each with its own bytes, and no variant that was never
 * stored appears: the variant is read from every object's header. */
static void test_variants_come_back_from_scan(void **state)
{
    (void)state;
    static uint8_t buf[CHUNK], got[CHUNK];
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    assert_int_equal(kvt_test_daemon_start(&d, wt_args), 0);
    struct kvt_client *c = connect_ns(&d, &ns);
    for (uint64_t i = 0; i < 20; i++) {
        struct kvt_key k = key_of(5000 + i);
        for (uint32_t v = 0; v < 2; v++) {
            kvt_test_fill(buf, CHUNK, (5000 + i) * 10 + v);
            assert_int_equal(kvt_put_v(c, ns.handle, &k, v, buf, CHUNK, 0), 0);
        }
    }
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    flip_byte(&d, "kvtier-disk.ckpt", 20); /* the header: nothing of it is trusted */
    assert_int_equal(kvt_test_daemon_start(&d, wt_args), 0);
    c = connect_ns(&d, &ns);
    assert_int_equal(stat_of(c, "disk.scans"), 1);
    assert_int_equal(stat_of(c, "disk.recovered_by_scan"), 40);
    for (uint64_t i = 0; i < 20; i++) {
        struct kvt_key k = key_of(5000 + i);
        for (uint32_t v = 0; v < 3; v++) {
            size_t len = 0;
            int rc = kvt_get_v(c, ns.handle, &k, v, got, sizeof(got), &len, NULL);
            assert_int_equal(rc, v < 2 ? 0 : KVT_E_NOTFOUND);
            if (rc)
                continue;
            kvt_test_fill(buf, CHUNK, (5000 + i) * 10 + v);
            assert_int_equal(len, CHUNK);
            if (memcmp(got, buf, CHUNK) != 0)
                fail_msg("chunk %llu variant %u wrong after the scan", (unsigned long long)i, v);
        }
    }
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_daemon_objects_have_geometry),
        cmocka_unit_test(test_damaged_checkpoint_is_scanned),
        cmocka_unit_test(test_damaged_journal_is_scanned),
        cmocka_unit_test(test_delete_survives_kill),
        cmocka_unit_test(test_index_full_evicts_coldest),
        cmocka_unit_test(test_objects_beyond_index_are_removed),
        cmocka_unit_test(test_variants_come_back_from_scan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
