/*
 * The disk tier through a real kvtierd: eviction to disk and promotion back, restart with data
 * intact (graceful, with the write-back flush), a corrupted object answered as a miss and counted,
 * injected I/O errors and ENOSPC, the latch after repeated errors, a kill -9 loop during writes,
 * and the restart time of a disk tier holding 10,000 chunks.
 */
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

/* 1 layer x 1 head x 64 dims x fp16 x (k, v) = 256 bytes per token; 128 tokens = 32 KiB. */
static const struct kvt_ns_spec spec = {.model_id = "disk-test",
                                        .layers = 1,
                                        .kv_heads = 1,
                                        .head_dim = 64,
                                        .dtype = KVT_DTYPE_FP16,
                                        .tokens_per_chunk = 128};
#define CHUNK (128 * 256)

static struct kvt_client *connect_ns(const struct kvt_test_daemon *d, struct kvt_ns_info *ns)
{
    struct kvt_connect_opts o = {
        .socket_path = d->socket_path, .arena_bytes = 8 << 20, .timeout_ms = 5000};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &spec, ns), 0);
    return c;
}

static struct kvt_client *start_connect(struct kvt_test_daemon *d, const char **args,
                                        struct kvt_ns_info *ns)
{
    assert_int_equal(kvt_test_daemon_start(d, args), 0);
    return connect_ns(d, ns);
}

/* Closes the client, stops the daemon (a clean exit) and removes its directory. */
static void close_stop(struct kvt_test_daemon *d, struct kvt_client *c)
{
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(d), 0);
    kvt_test_daemon_cleanup(d);
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
    return (struct kvt_key){i, 0xd15c};
}

/* Gets chunk i and checks its bytes; returns the get status. */
static int check_chunk(struct kvt_client *c, uint32_t ns, uint64_t i, enum kvt_tier_id *tier)
{
    static uint8_t got[CHUNK], want[CHUNK];
    struct kvt_key k = key_of(i);
    size_t len = 0;
    int rc = kvt_get(c, ns, &k, got, sizeof(got), &len, tier);
    if (rc == 0) {
        assert_int_equal(len, CHUNK);
        kvt_test_fill(want, CHUNK, i);
        if (memcmp(got, want, CHUNK) != 0)
            fail_msg("chunk %llu served with wrong bytes", (unsigned long long)i);
    }
    return rc;
}

static int put_chunk(struct kvt_client *c, uint32_t ns, uint64_t i)
{
    static uint8_t buf[CHUNK];
    kvt_test_fill(buf, CHUNK, i);
    struct kvt_key k = key_of(i);
    return kvt_put(c, ns, &k, buf, CHUNK, 0);
}

/* put_chunk, retried while the daemon answers E_DIRTYFULL (tier.dirty_full = reject); *busy
 * counts the refusals. */
static int put_chunk_retry(struct kvt_client *c, uint32_t ns, uint64_t i, uint64_t *busy)
{
    int rc, tries = 0;
    while ((rc = put_chunk(c, ns, i)) == KVT_E_DIRTYFULL && tries++ < 20000) {
        (*busy)++;
        usleep(1000);
    }
    return rc;
}

static const char *small_cpu[] = {
    "--cpu.arena_bytes=1M",    "--cpu.page_bytes=256K",        "--disk.bytes=128M",
    "--disk.staging_bytes=4M", "--disk.object_bytes_max=256K", NULL};

static const char *small_cpu_wt[] = {"--cpu.arena_bytes=1M",
                                     "--cpu.page_bytes=256K",
                                     "--disk.bytes=128M",
                                     "--disk.staging_bytes=4M",
                                     "--disk.object_bytes_max=256K",
                                     "--tier.write_policy=write-through",
                                     NULL};

static void test_write_back_under_pressure(void **state)
{
    (void)state;
    /* Write-back cannot always keep up with a client that writes faster than the disk: then it
     * drops dirty chunks rather than fail Puts. Whatever it keeps must be intact, and every miss
     * must be one it counted as dropped. */
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct kvt_client *c = start_connect(&d, small_cpu, &ns);
    for (uint64_t i = 0; i < 200; i++)
        assert_int_equal(put_chunk(c, ns.handle, 500 + i), 0);
    /* Write-back goes on after the Puts: on a loaded machine none of its writes may have finished
     * yet (bounded wait). */
    for (int i = 0; i < 500 && stat_of(c, "tier.demotions") == 0; i++)
        usleep(10 * 1000);
    assert_true(stat_of(c, "tier.demotions") > 0);
    uint64_t dropped = stat_of(c, "tier.dropped_dirty"), misses = 0;
    enum kvt_tier_id t;
    for (uint64_t i = 0; i < 200; i++) {
        int rc = check_chunk(c, ns.handle, 500 + i, &t);
        assert_true(rc == 0 || rc == KVT_E_NOTFOUND);
        misses += rc != 0;
    }
    assert_int_equal(misses, dropped);
    close_stop(&d, c);
}

static void test_write_back_reject_when_dirty_full(void **state)
{
    (void)state;
    /* tier.dirty_full = reject: while the disk cannot take the chunks (its first writes fail),
     * DRAM fills with dirty chunks and Puts get E_DIRTYFULL instead of dropping any; retried, every
     * chunk is kept, intact. */
    const char *args[] = {"--cpu.arena_bytes=1M",
                          "--cpu.page_bytes=256K",
                          "--disk.bytes=128M",
                          "--disk.staging_bytes=4M",
                          "--disk.object_bytes_max=256K",
                          "--disk.io_errors_max=1000000",
                          "--disk.fault_fail_next_io=300",
                          "--tier.dirty_full=reject",
                          NULL};
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct kvt_client *c = start_connect(&d, args, &ns);
    uint64_t busy = 0;
    for (uint64_t i = 0; i < 100; i++)
        assert_int_equal(put_chunk_retry(c, ns.handle, 700 + i, &busy), 0);
    assert_true(busy > 0);
    assert_int_equal(stat_of(c, "tier.rejected_dirty_full"), busy);
    assert_int_equal(stat_of(c, "tier.dropped_dirty"), 0);
    assert_true(stat_of(c, "tier.demotion_failures") > 0);
    enum kvt_tier_id t;
    for (uint64_t i = 0; i < 100; i++)
        assert_int_equal(check_chunk(c, ns.handle, 700 + i, &t), 0);
    close_stop(&d, c);
}

static void test_disk_full_evicts_coldest(void **state)
{
    (void)state;
    /* A 4 MiB disk tier behind a 1 MiB CPU tier takes 400 chunks of 32 KiB (12.5 MiB): the disk
     * evicts chunks that are only on disk, coldest first, so demotion never stops. Every chunk is
     * then intact or a miss, every miss is a counted disk eviction (no Put is dropped under
     * tier.dirty_full = reject), and the chunk read back at every step is still there. */
    const char *args[] = {"--cpu.arena_bytes=1M",
                          "--cpu.page_bytes=256K",
                          "--disk.bytes=4M",
                          "--disk.staging_bytes=1M",
                          "--disk.object_bytes_max=64K",
                          "--tier.dirty_full=reject",
                          NULL};
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct kvt_client *c = start_connect(&d, args, &ns);
    enum kvt_tier_id t;
    uint64_t busy = 0;
    for (uint64_t i = 0; i < 400; i++) {
        assert_int_equal(put_chunk_retry(c, ns.handle, 3000 + i, &busy), 0);
        /* Chunk 3000 is read all along: CLOCK keeps it (on disk or in DRAM). */
        assert_int_equal(check_chunk(c, ns.handle, 3000, &t), 0);
    }
    uint64_t evicted = stat_of(c, "tier.disk_evictions");
    assert_true(evicted > 0);
    assert_true(stat_of(c, "disk.bytes_used") <= stat_of(c, "disk.bytes_capacity"));
    assert_int_equal(stat_of(c, "tier.dropped_dirty"), 0);
    uint64_t misses = 0;
    for (uint64_t i = 0; i < 400; i++) {
        int rc = check_chunk(c, ns.handle, 3000 + i, &t);
        assert_true(rc == 0 || rc == KVT_E_NOTFOUND);
        misses += rc != 0;
    }
    /* Reading promotes chunks into DRAM, which pushes the last dirty ones to disk, which may
     * evict more: every miss is an eviction counted before the reads or during them. */
    assert_true(misses >= evicted);
    assert_true(misses <= stat_of(c, "tier.disk_evictions"));
    for (uint64_t i = 390; i < 400; i++) /* the newest are kept */
        assert_int_equal(check_chunk(c, ns.handle, 3000 + i, &t), 0);
    close_stop(&d, c);
}

static void test_evict_to_disk_and_back(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct kvt_client *c = start_connect(&d, small_cpu_wt, &ns);
    /* 1 MiB of DRAM holds about 24 chunks of 32 KiB: 200 must go through the disk. */
    for (uint64_t i = 0; i < 200; i++)
        assert_int_equal(put_chunk(c, ns.handle, i), 0);
    assert_true(stat_of(c, "tier.demotions") >= 200);
    assert_int_equal(stat_of(c, "tier.dropped_dirty"), 0);
    struct kvt_key keys[200];
    enum kvt_tier_id tiers[200];
    for (uint64_t i = 0; i < 200; i++)
        keys[i] = key_of(i);
    size_t hits = 0;
    assert_int_equal(kvt_lookup(c, ns.handle, keys, 200, &hits, tiers), 0);
    assert_int_equal(hits, 200);
    assert_int_equal(tiers[0], KVT_TIER_DISK);
    assert_int_equal(tiers[199], KVT_TIER_CPU);
    enum kvt_tier_id t;
    for (uint64_t i = 0; i < 200; i++)
        assert_int_equal(check_chunk(c, ns.handle, i, &t), 0);
    assert_true(stat_of(c, "tier.promotions") > 0);
    /* Per-tier counters: DRAM evicted and demoted, the disk was read and written. */
    assert_true(stat_of(c, "cpu.evictions") > 0);
    assert_int_equal(stat_of(c, "cpu.demotions"), stat_of(c, "tier.demotions"));
    assert_int_equal(stat_of(c, "cpu.promotions"), stat_of(c, "tier.promotions"));
    assert_true(stat_of(c, "disk.hits") > 0);
    assert_true(stat_of(c, "disk.objects") >= 190);
    /* A promoted chunk is now in DRAM. */
    assert_int_equal(check_chunk(c, ns.handle, 199, &t), 0);
    assert_int_equal(check_chunk(c, ns.handle, 0, &t), 0);
    assert_int_equal(t, KVT_TIER_DISK);
    assert_int_equal(check_chunk(c, ns.handle, 0, &t), 0);
    assert_int_equal(t, KVT_TIER_CPU);
    /* Delete removes it from every tier. */
    int st;
    struct kvt_key k0 = key_of(5);
    assert_int_equal(kvt_delete(c, ns.handle, &k0, 1, &st), 0);
    assert_int_equal(st, 0);
    assert_int_equal(check_chunk(c, ns.handle, 5, &t), KVT_E_NOTFOUND);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);

    /* Restart: everything but the deleted chunk is back. */
    assert_int_equal(kvt_test_daemon_start(&d, small_cpu_wt), 0);
    c = connect_ns(&d, &ns);
    assert_true(stat_of(c, "tier.recovered_objects") >= 190);
    for (uint64_t i = 0; i < 200; i++)
        assert_int_equal(check_chunk(c, ns.handle, i, &t), i == 5 ? KVT_E_NOTFOUND : 0);
    close_stop(&d, c);
}

static void test_shutdown_flushes_dram(void **state)
{
    (void)state;
    /* Chunks that fit in DRAM are never under pressure; a clean stop writes them back. */
    const char *args[] = {"--disk.bytes=64M", "--disk.object_bytes_max=256K", NULL};
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct kvt_client *c = start_connect(&d, args, &ns);
    for (uint64_t i = 0; i < 50; i++)
        assert_int_equal(put_chunk(c, ns.handle, 1000 + i), 0);
    assert_int_equal(stat_of(c, "disk.objects"), 0);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    c = connect_ns(&d, &ns);
    enum kvt_tier_id t;
    for (uint64_t i = 0; i < 50; i++) {
        assert_int_equal(check_chunk(c, ns.handle, 1000 + i, &t), 0);
        assert_int_equal(t, KVT_TIER_DISK);
    }
    close_stop(&d, c);
}

/* A raw block device as the disk tier: a loop device over a sparse file, when the test runs as
 * root with losetup; skipped otherwise. */
struct blockdev {
    char img[64];
    char dev[64];
};

static int blockdev_setup(void **state)
{
    static struct blockdev b;
    *state = NULL;
    memset(&b, 0, sizeof(b));
    snprintf(b.img, sizeof(b.img), "/tmp/kvtier-blk-XXXXXX");
    int fd = mkstemp(b.img);
    if (fd < 0)
        return 0;
    int ok = ftruncate(fd, 64 << 20) == 0;
    close(fd);
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "losetup -f --show %s 2>/dev/null", b.img);
    FILE *p = geteuid() == 0 && ok ? popen(cmd, "r") : NULL;
    if (p) {
        if (!fgets(b.dev, sizeof(b.dev), p))
            b.dev[0] = '\0';
        b.dev[strcspn(b.dev, "\n")] = '\0';
        pclose(p);
    }
    if (strncmp(b.dev, "/dev/", 5) != 0) {
        unlink(b.img);
        return 0;
    }
    *state = &b;
    return 0;
}

static int blockdev_teardown(void **state)
{
    struct blockdev *b = *state;
    if (b) {
        char cmd[160];
        snprintf(cmd, sizeof(cmd), "losetup -d %s", b->dev);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot detach %s\n", b->dev);
        unlink(b->img);
    }
    return 0;
}

static void test_block_device(void **state)
{
    struct blockdev *b = *state;
    if (!b) {
        print_message("no loop device (needs root and losetup): skipped\n");
        skip();
    }
    char paths[96];
    snprintf(paths, sizeof(paths), "--disk.paths=%s", b->dev);
    const char *args[] = {"--cpu.arena_bytes=1M",
                          "--cpu.page_bytes=256K",
                          "--disk.bytes=32M",
                          "--disk.object_bytes_max=256K",
                          paths,
                          NULL};
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct kvt_client *c = start_connect(&d, args, &ns);
    for (uint64_t i = 0; i < 100; i++)
        assert_int_equal(put_chunk(c, ns.handle, 9000 + i), 0);
    /* Write-back is asynchronous: on a loaded machine the first may land a moment later. */
    for (int i = 0; i < 500 && stat_of(c, "tier.demotions") == 0; i++)
        usleep(10000);
    assert_true(stat_of(c, "tier.demotions") > 0);
    assert_int_equal(stat_of(c, "disk.bytes_capacity"), 32u << 20);
    uint64_t dropped = stat_of(c, "tier.dropped_dirty");
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    /* Restarted with nothing in DRAM: every chunk comes back from the device. */
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    c = connect_ns(&d, &ns);
    enum kvt_tier_id t;
    uint64_t misses = 0;
    for (uint64_t i = 0; i < 100; i++) {
        int rc = check_chunk(c, ns.handle, 9000 + i, &t);
        assert_true(rc == 0 || rc == KVT_E_NOTFOUND);
        misses += rc != 0;
        assert_true(rc != 0 || t == KVT_TIER_DISK);
    }
    assert_int_equal(misses, dropped); /* the stop wrote back every chunk it still had */
    close_stop(&d, c);
}

static const char *write_through[] = {"--tier.write_policy=write-through", "--disk.bytes=64M",
                                      "--disk.object_bytes_max=256K", "--disk.io_errors_max=4",
                                      NULL};

/* Flips a payload byte of the n-th object found in the data file. Returns 0 when done. */
static int corrupt_object(const char *dir, int n)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/disk.0", dir);
    int fd = open(path, O_RDWR);
    if (fd < 0)
        return -1;
    uint8_t blk[4096];
    int seen = 0;
    for (off_t off = 4096; pread(fd, blk, sizeof(blk), off) == (ssize_t)sizeof(blk); off += 4096) {
        if (memcmp(blk, "KVTO", 4) != 0 || seen++ < n)
            continue;
        blk[128 + 77] ^= 0x5a;
        int ok = pwrite(fd, blk, sizeof(blk), off) == (ssize_t)sizeof(blk);
        close(fd);
        return ok ? 0 : -1;
    }
    close(fd);
    return -1;
}

static void test_corrupt_object_is_a_miss(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct kvt_client *c = start_connect(&d, write_through, &ns);
    for (uint64_t i = 0; i < 10; i++)
        assert_int_equal(put_chunk(c, ns.handle, 2000 + i), 0);
    assert_int_equal(stat_of(c, "disk.writes_durable"), 10);
    kvt_close(c);
    kvt_test_daemon_kill(&d); /* DRAM is gone: only the disk can answer */
    assert_int_equal(corrupt_object(d.dir, 3), 0);
    assert_int_equal(kvt_test_daemon_start(&d, write_through), 0);
    c = connect_ns(&d, &ns);
    int misses = 0;
    enum kvt_tier_id t;
    for (uint64_t i = 0; i < 10; i++) {
        int rc = check_chunk(c, ns.handle, 2000 + i, &t); /* never wrong bytes */
        assert_true(rc == 0 || rc == KVT_E_NOTFOUND);
        misses += rc == KVT_E_NOTFOUND;
    }
    assert_int_equal(misses, 1);
    assert_int_equal(stat_of(c, "disk.checksum_failures"), 1);
    /* The bad object is gone for good: a second read is a plain miss, no new failure. */
    for (uint64_t i = 0; i < 10; i++)
        check_chunk(c, ns.handle, 2000 + i, &t);
    assert_int_equal(stat_of(c, "disk.checksum_failures"), 1);
    close_stop(&d, c);
}

static void test_io_errors_enospc_and_latch(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct kvt_client *c = start_connect(&d, write_through, &ns);
    static uint8_t buf[CHUNK];
    struct kvt_item it = {.buf = buf, .len = CHUNK};

    /* Healthy: a write-through Put is answered durable. */
    kvt_test_fill(buf, CHUNK, 3000);
    it.key = key_of(3000);
    assert_int_equal(kvt_put_batch(c, ns.handle, &it, 1), 0);
    assert_int_equal(it.status, 0);
    assert_int_equal(it.tier, KVT_TIER_DISK);

    /* One injected EIO: the Put still succeeds, from DRAM, and says it is not durable. */
    assert_int_equal(kvt_config_set(c, "disk.fault_fail_next_io", "1"), 0);
    kvt_test_fill(buf, CHUNK, 3001);
    it.key = key_of(3001);
    assert_int_equal(kvt_put_batch(c, ns.handle, &it, 1), 0);
    assert_int_equal(it.status, 0);
    assert_int_equal(it.tier, KVT_TIER_CPU);
    assert_true(stat_of(c, "disk.io_errors") >= 1);
    enum kvt_tier_id t;
    assert_int_equal(check_chunk(c, ns.handle, 3001, &t), 0);

    /* ENOSPC: counted as a full disk, the chunk stays in DRAM. */
    assert_int_equal(kvt_config_set(c, "disk.fault_errno", "28"), 0);
    assert_int_equal(kvt_config_set(c, "disk.fault_fail_next_io", "1"), 0);
    kvt_test_fill(buf, CHUNK, 3002);
    it.key = key_of(3002);
    assert_int_equal(kvt_put_batch(c, ns.handle, &it, 1), 0);
    assert_int_equal(it.status, 0);
    assert_int_equal(it.tier, KVT_TIER_CPU);
    assert_true(stat_of(c, "disk.enospc") >= 1);
    assert_int_equal(check_chunk(c, ns.handle, 3002, &t), 0);

    /* Repeated EIO latches the disk tier failed; the daemon keeps serving from DRAM. */
    assert_int_equal(kvt_config_set(c, "disk.fault_errno", "5"), 0);
    assert_int_equal(kvt_config_set(c, "disk.fault_fail_next_io", "100"), 0);
    for (uint64_t i = 0; i < 8; i++)
        assert_int_equal(put_chunk(c, ns.handle, 3100 + i), 0);
    assert_int_equal(stat_of(c, "disk.failed"), 1);
    for (uint64_t i = 0; i < 8; i++)
        assert_int_equal(check_chunk(c, ns.handle, 3100 + i, &t), 0);
    assert_int_equal(put_chunk(c, ns.handle, 3200), 0);
    assert_int_equal(kvt_ping(c), 0);
    close_stop(&d, c);
}

struct killer {
    struct kvt_test_daemon *d;
    int delay_ms;
};

static void *killer_main(void *p)
{
    struct killer *k = p;
    struct timespec ts = {k->delay_ms / 1000, (long)(k->delay_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    kvt_test_daemon_kill(k->d);
    return NULL;
}

static void test_kill9_loop(void **state)
{
    (void)state;
    enum { ROUNDS = 20, BATCH = 8, KEYS_MAX = 40000 };
    struct kvt_test_daemon d = {0};
    const char *args[] = {"--tier.write_policy=write-through",
                          "--disk.bytes=512M",
                          "--disk.object_bytes_max=256K",
                          "--cpu.arena_bytes=2M",
                          "--cpu.page_bytes=256K",
                          NULL};
    static uint8_t durable[KEYS_MAX];
    uint64_t next = 10000, attempted_from = next;
    srand(12345);
    static uint8_t bufs[BATCH][CHUNK];
    for (int round = 0; round < ROUNDS; round++) {
        assert_int_equal(kvt_test_daemon_start(&d, args), 0);
        struct kvt_ns_info ns;
        struct kvt_client *c = connect_ns(&d, &ns);
        /* Everything acknowledged durable so far is back, with the right bytes; anything else
         * that is served is right too. */
        enum kvt_tier_id t;
        for (uint64_t i = attempted_from; i < next; i++) {
            int rc = check_chunk(c, ns.handle, i, &t);
            if (durable[i - attempted_from] && rc != 0)
                fail_msg("round %d: durable chunk %llu lost (%s)", round, (unsigned long long)i,
                         kvt_strerror(rc));
        }
        struct killer k = {&d, 20 + rand() % 200};
        pthread_t th;
        pthread_create(&th, NULL, killer_main, &k);
        for (;;) {
            struct kvt_item items[BATCH];
            if (next + BATCH - attempted_from >= KEYS_MAX)
                break;
            for (int b = 0; b < BATCH; b++) {
                kvt_test_fill(bufs[b], CHUNK, next + (uint64_t)b);
                items[b] = (struct kvt_item){
                    .key = key_of(next + (uint64_t)b), .buf = bufs[b], .len = CHUNK};
            }
            int rc = kvt_put_batch(c, ns.handle, items, BATCH);
            for (int b = 0; b < BATCH; b++)
                if (items[b].status == 0 && items[b].tier == KVT_TIER_DISK)
                    durable[next + (uint64_t)b - attempted_from] = 1;
            next += BATCH;
            if (rc)
                break; /* killed */
        }
        pthread_join(th, NULL);
        kvt_close(c);
    }
    size_t n_durable = 0;
    for (uint64_t i = attempted_from; i < next; i++)
        n_durable += durable[i - attempted_from];
    print_message("kill -9 loop: %d kills, %llu chunks attempted, %zu acknowledged durable, all "
                  "durable ones found after restart\n",
                  ROUNDS, (unsigned long long)(next - attempted_from), n_durable);
    assert_true(n_durable > 0);
    /* A last restart, checked the same way. */
    struct kvt_ns_info ns;
    struct kvt_client *c = start_connect(&d, args, &ns);
    enum kvt_tier_id t;
    for (uint64_t i = attempted_from; i < next; i++) {
        int rc = check_chunk(c, ns.handle, i, &t);
        if (durable[i - attempted_from])
            assert_int_equal(rc, 0);
    }
    close_stop(&d, c);
}

static void test_restart_10000_chunks(void **state)
{
    (void)state;
    enum { N = 10000, BATCH = 64 };
    const char *args[] = {"--tier.write_policy=write-through", "--disk.bytes=1G",
                          "--disk.object_bytes_max=64K", "--cpu.arena_bytes=64M", NULL};
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct kvt_client *c = start_connect(&d, args, &ns);
    static uint8_t bufs[BATCH][CHUNK];
    for (uint64_t i = 0; i < N; i += BATCH) {
        struct kvt_item items[BATCH];
        for (int b = 0; b < BATCH; b++) {
            kvt_test_fill(bufs[b], CHUNK, 50000 + i + (uint64_t)b);
            items[b] = (struct kvt_item){
                .key = key_of(50000 + i + (uint64_t)b), .buf = bufs[b], .len = CHUNK};
        }
        assert_int_equal(kvt_put_batch(c, ns.handle, items, BATCH), 0);
        for (int b = 0; b < BATCH; b++)
            assert_int_equal(items[b].tier, KVT_TIER_DISK);
    }
    kvt_close(c);
    kvt_test_daemon_kill(&d); /* the hard case: no checkpoint at exit */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    c = connect_ns(&d, &ns);
    uint64_t recovered = stat_of(c, "tier.recovered_objects");
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    print_message("restart after kill -9 with %llu chunks on disk: serving after %.0f ms "
                  "(disk recovery %llu ms)\n",
                  (unsigned long long)recovered, ms,
                  (unsigned long long)stat_of(c, "tier.recovery_ms"));
    assert_int_equal(recovered, N + BATCH * ((N + BATCH - 1) / BATCH) - N);
    enum kvt_tier_id t;
    for (uint64_t i = 0; i < N; i += 97)
        assert_int_equal(check_chunk(c, ns.handle, 50000 + i, &t), 0);
    close_stop(&d, c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_evict_to_disk_and_back),
        cmocka_unit_test(test_write_back_under_pressure),
        cmocka_unit_test(test_write_back_reject_when_dirty_full),
        cmocka_unit_test(test_disk_full_evicts_coldest),
        cmocka_unit_test(test_shutdown_flushes_dram),
        cmocka_unit_test_setup_teardown(test_block_device, blockdev_setup, blockdev_teardown),
        cmocka_unit_test(test_corrupt_object_is_a_miss),
        cmocka_unit_test(test_io_errors_enospc_and_latch),
        cmocka_unit_test(test_kill9_loop),
        cmocka_unit_test(test_restart_10000_chunks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
