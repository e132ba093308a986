/*
 * tier.eviction through a real kvtierd with a small CPU tier: chunks read several times survive a
 * flood of chunks read never under `cost` (reads x tokens / bytes among the coldest few), and are
 * evicted like the rest under `lru`, the default; every Get of a kept chunk returns its bytes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

static const struct kvt_ns_spec spec = {.model_id = "eviction-test",
                                        .layers = 4,
                                        .kv_heads = 2,
                                        .head_dim = 64,
                                        .dtype = KVT_DTYPE_FP16,
                                        .tokens_per_chunk = 16};
#define CHUNK (4u * 2u * 2u * 64u * 2u * 16u) /* 32 KiB */
#define HOT 6 /* fewer than the 8 least recently used a cost-aware eviction compares */
#define FLOOD 400

static uint8_t buf[CHUNK], got[CHUNK];

static struct kvt_key key_of(size_t i)
{
    return (struct kvt_key){0x9000 + i, 0x33};
}

/* Puts HOT chunks, reads each 4 times, floods FLOOD chunks nobody reads; returns how many of the
 * hot chunks are still stored (each checked byte for byte). */
static size_t hot_left(const char *policy)
{
    struct kvt_test_daemon d = {0};
    char arg[64];
    snprintf(arg, sizeof(arg), "--tier.eviction=%s", policy);
    const char *args[] = {"--cpu.arena_bytes=4M", "--cpu.page_bytes=1M", arg, NULL};
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_connect_opts o = {.socket_path = d.socket_path, .timeout_ms = 5000};
    struct kvt_client *c = NULL;
    struct kvt_ns_info ns;
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &spec, &ns), 0);
    for (size_t i = 0; i < HOT; i++) {
        kvt_test_fill(buf, CHUNK, i);
        struct kvt_key k = key_of(i);
        assert_int_equal(kvt_put(c, ns.handle, &k, buf, CHUNK, 0), 0);
    }
    for (int r = 0; r < 4; r++)
        for (size_t i = 0; i < HOT; i++) {
            struct kvt_key k = key_of(i);
            assert_int_equal(kvt_get(c, ns.handle, &k, got, CHUNK, NULL, NULL), 0);
        }
    for (size_t i = 1000; i < 1000 + FLOOD; i++) {
        kvt_test_fill(buf, CHUNK, i);
        struct kvt_key k = key_of(i);
        assert_int_equal(kvt_put(c, ns.handle, &k, buf, CHUNK, 0), 0);
    }
    assert_true(kvt_test_stat(c, "index_objects") < FLOOD); /* the flood did evict */
    size_t left = 0;
    for (size_t i = 0; i < HOT; i++) {
        struct kvt_key k = key_of(i);
        if (kvt_get(c, ns.handle, &k, got, CHUNK, NULL, NULL) == 0) {
            kvt_test_fill(buf, CHUNK, i);
            assert_memory_equal(got, buf, CHUNK);
            left++;
        }
    }
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
    return left;
}

static void test_cost_keeps_what_is_read(void **state)
{
    (void)state;
    size_t lru = hot_left("lru"), cost = hot_left("cost");
    print_message("hot chunks left after the flood: lru %zu, cost %zu of %d\n", lru, cost, HOT);
    assert_int_equal(lru, 0);
    assert_int_equal(cost, HOT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_cost_keeps_what_is_read)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
