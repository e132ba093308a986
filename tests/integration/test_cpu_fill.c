/*
 * The CPU tier keeps its memory useful under mixed chunk sizes, through a real kvtierd: a 256 MiB
 * tier takes Puts of 512 B to 64 KiB (several models, partial chunks) past its capacity, and must
 * end up with at least 80% of its bytes holding live chunks, the newest of them readable. With a
 * write-back disk tier behind it, the same fill must start write-back from real pressure: the disk
 * receives chunks and (almost) no dirty chunk is dropped while the disk has room.
 */
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
#include "tests/lib/daemon.h"

#define MIB (1024ull * 1024ull)
#define BYTES_PER_TOKEN 256u /* 1 layer x 1 head x 64 dims x fp16 x (k, v) */
#define TOKENS_MAX 256u      /* full chunk: 64 KiB */
#define CHUNK_MAX (TOKENS_MAX * BYTES_PER_TOKEN)
#define RECENT 512 /* newest chunks that must still be readable */

static const struct kvt_ns_spec spec = {.model_id = "cpu-fill",
                                        .layers = 1,
                                        .kv_heads = 1,
                                        .head_dim = 64,
                                        .dtype = KVT_DTYPE_FP16,
                                        .tokens_per_chunk = TOKENS_MAX};

/* Tokens of chunk i: 2 .. 256, spread by a hash so sizes interleave as they would with several
 * models and partial chunks. */
static uint32_t tokens_of(uint64_t i)
{
    uint64_t x = (i + 1) * 0x9e3779b97f4a7c15ull;
    x ^= x >> 31;
    return 2 + (uint32_t)(x % (TOKENS_MAX - 1));
}

static struct kvt_key key_of(uint64_t i)
{
    return (struct kvt_key){i, 0xf111};
}

/* Words of chunk i, half of them repeating so that the disk codec has something to compress. */
static void fill(uint64_t *w, size_t bytes, uint64_t i)
{
    for (size_t k = 0; k < bytes / 8; k++)
        w[k] = (k & 1) ? (i << 20 | k) * 0xff51afd7ed558ccdull : i;
}

static struct kvt_client *start_connect(struct kvt_test_daemon *d, const char **args,
                                        struct kvt_ns_info *ns)
{
    assert_int_equal(kvt_test_daemon_start(d, args), 0);
    struct kvt_connect_opts o = {
        .socket_path = d->socket_path, .arena_bytes = 8 * MIB, .timeout_ms = 10000};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &spec, ns), 0);
    assert_int_equal(ns->chunk_bytes, CHUNK_MAX);
    return c;
}

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

/* Puts chunks first .. first+n-1; returns the bytes written. */
static uint64_t put_range(struct kvt_client *c, uint32_t ns, uint64_t first, uint64_t n)
{
    static uint64_t buf[CHUNK_MAX / 8];
    uint64_t bytes = 0;
    for (uint64_t i = first; i < first + n; i++) {
        uint32_t t = tokens_of(i);
        size_t len = (size_t)t * BYTES_PER_TOKEN;
        fill(buf, len, i);
        struct kvt_key k = key_of(i);
        /* E_DIRTYFULL (E_BUSY before that code): the CPU tier is full of dirty chunks
         * (tier.dirty_full = reject); retried for up to 10 s while write-back makes room. */
        int rc, tries = 0;
        while (((rc = kvt_put(c, ns, &k, buf, len, t)) == KVT_E_DIRTYFULL || rc == KVT_E_BUSY) &&
               tries++ < 10000)
            usleep(1000);
        if (rc)
            fail_msg("put %llu (%zu bytes): %d", (unsigned long long)i, len, rc);
        bytes += len;
    }
    return bytes;
}

/* Gets chunks first .. first+n-1 and checks their bytes; returns how many were found. */
static uint64_t get_range(struct kvt_client *c, uint32_t ns, uint64_t first, uint64_t n)
{
    static uint64_t got[CHUNK_MAX / 8], want[CHUNK_MAX / 8];
    uint64_t found = 0;
    for (uint64_t i = first; i < first + n; i++) {
        struct kvt_key k = key_of(i);
        size_t len = 0;
        int rc = kvt_get(c, ns, &k, got, sizeof(got), &len, NULL);
        if (rc == KVT_E_NOTFOUND)
            continue;
        assert_int_equal(rc, 0);
        assert_int_equal(len, (size_t)tokens_of(i) * BYTES_PER_TOKEN);
        fill(want, len, i);
        if (memcmp(got, want, len) != 0)
            fail_msg("chunk %llu served with wrong bytes", (unsigned long long)i);
        found++;
    }
    return found;
}

/* Fills a 256 MiB CPU tier with five times its size and checks what it kept. */
static void fill_and_check(const char *page_arg)
{
    const char *args[] = {page_arg, NULL};
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct kvt_client *c = start_connect(&d, args, &ns);
    uint64_t cap = stat_of(c, "cpu.bytes_capacity");
    assert_int_equal(cap, 256 * MIB);
    uint64_t n = 0, written = 0;
    while (written < 5 * cap) {
        written += put_range(c, ns.handle, n, 1024);
        n += 1024;
    }
    uint64_t used = stat_of(c, "cpu.bytes_used"), payload = stat_of(c, "cpu.bytes_payload");
    uint64_t objects = stat_of(c, "cpu.objects");
    uint64_t recent = get_range(c, ns.handle, n - RECENT, RECENT);
    fprintf(stderr,
            "%s: %llu puts (%llu MiB): cpu used %.1f%% payload %.1f%% of %llu MiB, %llu chunks, "
            "%llu of the newest %u readable, %llu evictions\n",
            page_arg, (unsigned long long)n, (unsigned long long)(written / MIB),
            100.0 * (double)used / (double)cap, 100.0 * (double)payload / (double)cap,
            (unsigned long long)(cap / MIB), (unsigned long long)objects,
            (unsigned long long)recent, RECENT, (unsigned long long)stat_of(c, "cpu.evictions"));
    assert_true(used >= cap / 10 * 8);
    assert_true(payload <= used);
    /* Slots round chunks up by at most ~25% (and 512 B chunks to 4 KiB): most of it is payload. */
    assert_true(payload >= cap / 10 * 6);
    assert_true(recent >= RECENT * 98 / 100);
    close_stop(&d, c);
}

static void test_mixed_sizes_fill_default_pages(void **state)
{
    (void)state;
    fill_and_check("--cpu.page_bytes=32M");
}

static void test_mixed_sizes_fill_small_pages(void **state)
{
    (void)state;
    fill_and_check("--cpu.page_bytes=1M");
}

/* Starts a daemon with a write-back disk tier of 512 MiB behind the 256 MiB CPU tier. */
static struct kvt_client *start_write_back(struct kvt_test_daemon *d, const char *policy,
                                           struct kvt_ns_info *ns)
{
    static char disk_arg[400], policy_arg[64];
    snprintf(d->dir, sizeof(d->dir), "/tmp/kvtier-test-XXXXXX");
    assert_non_null(mkdtemp(d->dir));
    snprintf(disk_arg, sizeof(disk_arg), "--disk.paths=%s/disk.0", d->dir);
    snprintf(policy_arg, sizeof(policy_arg), "--tier.dirty_full=%s", policy);
    const char *args[] = {"--cpu.page_bytes=32M",
                          "--disk.bytes=512M",
                          "--disk.staging_bytes=16M",
                          "--disk.object_bytes_max=64K",
                          "--tier.disk_admission=on-evict",
                          disk_arg,
                          policy_arg,
                          NULL};
    return start_connect(d, args, ns);
}

static void test_write_back_starts_from_pressure(void **state)
{
    (void)state;
    /* An eighth past the CPU tier, with tier.dirty_full = reject: Puts wait (E_BUSY, retried) for
     * write-back rather than drop anything. Write-back must start from the CPU tier's real
     * pressure, so the disk receives chunks and every Put gets through; when it never starts
     * (free slots of other size classes looking like room), DRAM stays full of dirty chunks
     * and the Puts wait forever. */
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct kvt_client *c = start_write_back(&d, "reject", &ns);
    uint64_t cap = stat_of(c, "cpu.bytes_capacity");
    uint64_t n = 0, written = 0;
    while (written < cap + cap / 8) {
        written += put_range(c, ns.handle, n, 256);
        n += 256;
    }
    uint64_t dropped = stat_of(c, "tier.dropped_dirty"), on_disk = stat_of(c, "disk.objects");
    uint64_t used = stat_of(c, "cpu.bytes_used");
    fprintf(stderr,
            "write-back: %llu puts (%llu MiB): %llu on disk, %llu dirty dropped, %llu refused "
            "while dirty, cpu used %.1f%%\n",
            (unsigned long long)n, (unsigned long long)(written / MIB), (unsigned long long)on_disk,
            (unsigned long long)dropped, (unsigned long long)stat_of(c, "tier.rejected_dirty_full"),
            100.0 * (double)used / (double)cap);
    assert_true(on_disk > 0);
    assert_int_equal(dropped, 0);
    /* DRAM use is reported, not checked: while Puts wait for write-back, clean cold chunks of
     * other size classes are let go (host.c make_room, step 5), and their slots wait for their
     * own sizes. */
    /* Every chunk is in DRAM or on disk, intact. */
    assert_int_equal(get_range(c, ns.handle, 0, n), n);
    close_stop(&d, c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixed_sizes_fill_default_pages),
        cmocka_unit_test(test_mixed_sizes_fill_small_pages),
        cmocka_unit_test(test_write_back_starts_from_pressure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
