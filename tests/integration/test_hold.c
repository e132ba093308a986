/*
 * Lookup holds (kvt_lookup_hold, kvt_hold_release) through a real kvtierd with a small CPU tier:
 * held chunks survive a flood of Puts that evicts everything else, and are evicted like any other
 * once released or once their lease ends; a hold belongs to its tenant (another session of it
 * may release it, another tenant may not), its id is unknown after release or expiry; held
 * chunks cannot be deleted; hold.max / hold.pins_max are enforced with E_FULL and change
 * nothing; hold_ms is cut to hold.ttl_ms; the stats count it all.
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

/* 4 layers x 2 heads x 64 dims x fp16 x (k, v) x 16 tokens: 32 KiB chunks; a 4 MiB CPU tier
 * holds about a hundred. */
static const struct kvt_ns_spec spec = {.model_id = "hold-test",
                                        .layers = 4,
                                        .kv_heads = 2,
                                        .head_dim = 64,
                                        .dtype = KVT_DTYPE_FP16,
                                        .tokens_per_chunk = 16};
#define CHUNK (4u * 2u * 2u * 64u * 2u * 16u)
#define HELD 8
#define FLOOD 400

static struct kvt_test_daemon d;
static uint8_t buf[CHUNK];

static struct kvt_key key_of(size_t i)
{
    return (struct kvt_key){0x5000 + i, 0x77};
}

static struct kvt_client *connect_as(const char *tenant, struct kvt_ns_info *ns)
{
    struct kvt_connect_opts o = {
        .socket_path = d.socket_path, .tenant = tenant, .arena_bytes = 1 << 20, .timeout_ms = 5000};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &spec, ns), 0);
    return c;
}

static void put_range(struct kvt_client *c, uint32_t ns, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++) {
        kvt_test_fill(buf, CHUNK, i);
        struct kvt_key k = key_of(i);
        assert_int_equal(kvt_put(c, ns, &k, buf, CHUNK, 0), 0);
    }
}

/* Whether chunk i is stored with its own bytes. */
static int stored(struct kvt_client *c, uint32_t ns, size_t i)
{
    static uint8_t got[CHUNK], want[CHUNK];
    struct kvt_key k = key_of(i);
    size_t len = 0;
    if (kvt_get(c, ns, &k, got, sizeof(got), &len, NULL))
        return 0;
    kvt_test_fill(want, CHUNK, i);
    assert_int_equal(len, CHUNK);
    assert_memory_equal(got, want, CHUNK);
    return 1;
}

static uint64_t hold_first(struct kvt_client *c, uint32_t ns, size_t first, uint32_t ms)
{
    struct kvt_key keys[HELD];
    enum kvt_tier_id tiers[HELD];
    for (size_t i = 0; i < HELD; i++)
        keys[i] = key_of(first + i);
    size_t hits = 0;
    uint64_t h = 0;
    assert_int_equal(kvt_lookup_hold(c, ns, keys, NULL, HELD, ms, &hits, tiers, &h), 0);
    assert_int_equal(hits, HELD);
    assert_true(h != 0);
    for (size_t i = 0; i < HELD; i++)
        assert_int_equal(tiers[i], KVT_TIER_CPU);
    return h;
}

static void test_held_chunks_survive_eviction(void **state)
{
    (void)state;
    struct kvt_ns_info ns;
    struct kvt_client *c = connect_as(NULL, &ns);
    put_range(c, ns.handle, 0, HELD);
    uint64_t h = hold_first(c, ns.handle, 0, 30000);
    assert_int_equal(kvt_test_stat(c, "holds"), 1);
    assert_int_equal(kvt_test_stat(c, "hold_pins"), HELD);

    /* Held chunks cannot be deleted. */
    struct kvt_key k0 = key_of(0);
    int st = 0;
    assert_int_equal(kvt_delete(c, ns.handle, &k0, 1, &st), 0);
    assert_int_equal(st, KVT_E_INUSE);

    /* A flood far past the tier: everything unheld goes, the held stay. */
    put_range(c, ns.handle, 1000, 1000 + FLOOD);
    assert_true(kvt_test_stat(c, "index_objects") < FLOOD);
    for (size_t i = 0; i < HELD; i++)
        assert_true(stored(c, ns.handle, i));
    assert_false(stored(c, ns.handle, 1000)); /* the first of the flood was evicted */

    /* Another tenant cannot release it; another session of the same tenant can. */
    struct kvt_ns_info ns2;
    struct kvt_client *other = connect_as("other", &ns2);
    assert_int_equal(kvt_hold_release(other, h, NULL), KVT_E_ACCESS);
    kvt_close(other);
    struct kvt_ns_info ns3;
    struct kvt_client *same = connect_as(NULL, &ns3);
    uint32_t released = 0;
    assert_int_equal(kvt_hold_release(same, h, &released), 0);
    assert_int_equal(released, HELD);
    assert_int_equal(kvt_hold_release(same, h, NULL), KVT_E_NOHOLD);
    assert_int_equal(kvt_hold_release(same, 12345, NULL), KVT_E_NOHOLD);
    assert_int_equal(kvt_hold_release(same, 0, NULL), KVT_E_INVAL);
    kvt_close(same);
    assert_int_equal(kvt_test_stat(c, "holds"), 0);
    assert_int_equal(kvt_test_stat(c, "hold_pins"), 0);

    /* Released, they are evicted like the rest. */
    put_range(c, ns.handle, 2000, 2000 + FLOOD);
    size_t left = 0;
    for (size_t i = 0; i < HELD; i++)
        left += stored(c, ns.handle, i);
    assert_int_equal(left, 0);
    assert_int_equal(kvt_test_stat(c, "holds_made"), 1);
    assert_int_equal(kvt_test_stat(c, "holds_released"), 1);
    kvt_close(c);
}

static void test_hold_expires(void **state)
{
    (void)state;
    struct kvt_ns_info ns;
    struct kvt_client *c = connect_as(NULL, &ns);
    put_range(c, ns.handle, 100, 100 + HELD);
    uint64_t expired_before = kvt_test_stat(c, "holds_expired");
    uint64_t h = hold_first(c, ns.handle, 100, 150);
    usleep(400 * 1000);
    assert_int_equal(kvt_test_stat(c, "holds_expired"), expired_before + 1);
    assert_int_equal(kvt_test_stat(c, "hold_pins"), 0);
    assert_int_equal(kvt_hold_release(c, h, NULL), KVT_E_NOHOLD);
    put_range(c, ns.handle, 3000, 3000 + FLOOD);
    size_t left = 0;
    for (size_t i = 100; i < 100 + HELD; i++)
        left += stored(c, ns.handle, i);
    assert_int_equal(left, 0);

    /* A miss holds nothing: no id. */
    struct kvt_key miss = {1, 2};
    size_t hits = 9;
    uint64_t none = 9;
    assert_int_equal(kvt_lookup_hold(c, ns.handle, &miss, NULL, 1, 1000, &hits, NULL, &none), 0);
    assert_int_equal(hits, 0);
    assert_int_equal(none, 0);
    assert_int_equal(kvt_lookup_hold(c, ns.handle, &miss, NULL, 1, 0, &hits, NULL, &none),
                     KVT_E_INVAL);
    assert_int_equal(kvt_lookup_hold(c, ns.handle, &miss, NULL, 1, 10, &hits, NULL, NULL),
                     KVT_E_INVAL);
    kvt_close(c);
}

/* hold.max 2 and hold.pins_max 12: the third hold, or one past the pins, is E_FULL and pins
 * nothing; hold.ttl_ms 200 cuts a 60 s hold. */
static void test_limits(void **state)
{
    (void)state;
    struct kvt_test_daemon d2 = {0};
    const char *args[] = {"--cpu.arena_bytes=4M", "--cpu.page_bytes=1M", "--hold.max=2",
                          "--hold.pins_max=12",   "--hold.ttl_ms=200",   NULL};
    assert_int_equal(kvt_test_daemon_start(&d2, args), 0);
    struct kvt_test_daemon saved = d;
    d = d2;
    struct kvt_ns_info ns;
    struct kvt_client *c = connect_as(NULL, &ns);
    put_range(c, ns.handle, 0, 3 * HELD);
    struct kvt_key keys[HELD];
    for (size_t i = 0; i < HELD; i++)
        keys[i] = key_of(i);
    size_t hits = 0;
    uint64_t h1 = 0, h2 = 0, h3 = 9;
    assert_int_equal(kvt_lookup_hold(c, ns.handle, keys, NULL, HELD, 60000, &hits, NULL, &h1), 0);
    assert_int_equal(kvt_lookup_hold(c, ns.handle, keys, NULL, HELD, 60000, &hits, NULL, &h3),
                     KVT_E_FULL); /* 16 pins > 12 */
    assert_int_equal(hits, 0);
    assert_int_equal(h3, 0);
    assert_int_equal(kvt_lookup_hold(c, ns.handle, keys, NULL, 2, 60000, &hits, NULL, &h2), 0);
    assert_int_equal(kvt_lookup_hold(c, ns.handle, keys, NULL, 1, 60000, &hits, NULL, &h3),
                     KVT_E_FULL); /* a third hold */
    int code = 0;
    assert_non_null(strstr(kvt_last_error(c, &code), "hold.max"));
    assert_int_equal(code, KVT_E_FULL);
    assert_int_equal(kvt_test_stat(c, "hold_pins"), HELD + 2);
    /* A plain lookup is unaffected. */
    assert_int_equal(kvt_lookup(c, ns.handle, keys, HELD, &hits, NULL), 0);
    assert_int_equal(hits, HELD);
    usleep(500 * 1000); /* past hold.ttl_ms, far before the 60 s asked */
    assert_int_equal(kvt_test_stat(c, "holds"), 0);
    assert_int_equal(kvt_test_stat(c, "holds_expired"), 2);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d2), 0);
    kvt_test_daemon_cleanup(&d2);
    d = saved;
}

static int setup(void **state)
{
    (void)state;
    static char tenants[96];
    snprintf(tenants, sizeof(tenants), "--tenants=other=uid:%u", getuid());
    const char *args[] = {tenants, "--cpu.arena_bytes=4M", "--cpu.page_bytes=1M", NULL};
    return kvt_test_daemon_start(&d, args);
}

static int teardown(void **state)
{
    (void)state;
    int rc = kvt_test_daemon_stop(&d);
    kvt_test_daemon_cleanup(&d);
    return rc;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_held_chunks_survive_eviction),
        cmocka_unit_test(test_hold_expires),
        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
