/* Unit tests for the CPU tier's size-class allocator: classes, LRU eviction, pinning, page
 * reassignment between classes, and its limits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "tiers/host/host.h"

#define MIB (1024ull * 1024ull)

struct owner {
    uint32_t pinned_cookie; /* refuse eviction of this cookie */
    uint32_t evicted[1024];
    uint32_t n_evicted;
};

static int evict_cb(void *owner, uint32_t cookie, uint64_t off)
{
    struct owner *o = owner;
    (void)off;
    if (cookie == o->pinned_cookie)
        return 1;
    if (o->n_evicted < 1024)
        o->evicted[o->n_evicted++] = cookie;
    return 0;
}

static struct kvt_host *make(struct owner *o, uint64_t arena, uint64_t page)
{
    struct kvt_host_config cfg = {.arena_bytes = arena, .page_bytes = page};
    struct kvt_host *h = NULL;
    memset(o, 0, sizeof(*o));
    o->pinned_cookie = UINT32_MAX;
    assert_int_equal(kvt_host_create(&cfg, evict_cb, o, &h), 0);
    return h;
}

static void test_create_rejects_bad_config(void **state)
{
    (void)state;
    struct kvt_host *h = NULL;
    struct owner o = {0};
    struct kvt_host_config bad = {.arena_bytes = MIB, .page_bytes = 1000};
    assert_int_equal(kvt_host_create(&bad, evict_cb, &o, &h), KVT_E_INVAL);
    bad = (struct kvt_host_config){.arena_bytes = MIB, .page_bytes = 4 * MIB};
    assert_int_equal(kvt_host_create(&bad, evict_cb, &o, &h), KVT_E_INVAL);
    assert_null(h);
}

static void test_alloc_write_read(void **state)
{
    (void)state;
    struct owner o;
    struct kvt_host *h = make(&o, 16 * MIB, 4 * MIB);
    uint64_t a, b;
    assert_int_equal(kvt_host_alloc(h, 5000, 1, &a), 0);
    assert_int_equal(kvt_host_alloc(h, 5000, 2, &b), 0);
    assert_int_not_equal(a, b);
    assert_int_equal(a % 4096, 0);
    assert_true(kvt_host_slot_bytes(h, 5000) >= 5000);
    memset(kvt_host_ptr(h, a), 0xab, 5000);
    memset(kvt_host_ptr(h, b), 0xcd, 5000);
    assert_int_equal(((uint8_t *)kvt_host_ptr(h, a))[4999], 0xab);
    assert_int_equal(kvt_host_alloc(h, 4 * MIB + 1, 3, &a), KVT_E_TOOBIG);
    assert_int_equal(kvt_host_alloc(h, 0, 3, &a), KVT_E_INVAL);
    struct kvt_tier_stats st;
    kvt_host_tier_ops.stats(h, &st);
    assert_int_equal(st.objects, 2);
    kvt_host_destroy(h);
}

static void test_lru_eviction_order(void **state)
{
    (void)state;
    struct owner o;
    struct kvt_host *h = make(&o, 2 * MIB, MIB);
    /* 2 pages of 1 MiB; n slots in all for 200 KiB objects. */
    uint64_t slot = kvt_host_slot_bytes(h, 200 * 1024);
    uint32_t n = (uint32_t)(2 * (MIB / slot));
    assert_true(n >= 4 && n <= 16);
    uint64_t off[17];
    for (uint32_t i = 0; i < n; i++)
        assert_int_equal(kvt_host_alloc(h, 200 * 1024, i, &off[i]), 0);
    assert_int_equal(o.n_evicted, 0);
    kvt_host_touch(h, off[0]); /* 0 becomes most recent: 1 is now the oldest */
    assert_int_equal(kvt_host_alloc(h, 200 * 1024, n, &off[n]), 0);
    assert_int_equal(o.n_evicted, 1);
    assert_int_equal(o.evicted[0], 1);
    assert_int_equal(off[n], off[1]);
    kvt_host_destroy(h);
}

static void test_pinned_never_evicted(void **state)
{
    (void)state;
    struct owner o;
    struct kvt_host *h = make(&o, MIB, MIB);
    uint64_t off;
    assert_int_equal(kvt_host_alloc(h, MIB, 7, &off), 0);
    o.pinned_cookie = 7;
    assert_int_equal(kvt_host_alloc(h, MIB, 8, &off), KVT_E_FULL);
    assert_int_equal(o.n_evicted, 0);
    o.pinned_cookie = UINT32_MAX;
    assert_int_equal(kvt_host_alloc(h, MIB, 8, &off), 0);
    assert_int_equal(o.evicted[0], 7);
    kvt_host_destroy(h);
}

static void test_page_moves_between_classes(void **state)
{
    (void)state;
    struct owner o;
    struct kvt_host *h = make(&o, 2 * MIB, MIB);
    uint64_t off;
    /* Fill both pages with small objects, then ask for a page-sized one: a page is emptied. */
    uint32_t n = 0;
    while (o.n_evicted == 0 && n < 1000)
        assert_int_equal(kvt_host_alloc(h, 64 * 1024, n++, &off), 0);
    uint32_t before = o.n_evicted;
    assert_int_equal(kvt_host_alloc(h, MIB, 5000, &off), 0);
    assert_true(o.n_evicted > before);
    struct kvt_tier_stats st;
    kvt_host_tier_ops.stats(h, &st);
    assert_true(st.bytes_used <= 2 * MIB);
    kvt_host_free(h, off);
    kvt_host_tier_ops.stats(h, &st);
    assert_true(st.bytes_used < 2 * MIB);
    kvt_host_destroy(h);
}

static void test_new_size_takes_memory_of_old_size(void **state)
{
    (void)state;
    struct owner o;
    /* 4 pages of 1 MiB filled with 64 KiB objects (cookies < 1000), then a workload of 256 KiB
     * objects (cookies >= 1000) that needs 3 pages: it must take the old pages rather than cycle
     * through the one page it gets first. */
    struct kvt_host *h = make(&o, 4 * MIB, MIB);
    uint64_t off;
    for (uint32_t i = 0; i < 64; i++)
        assert_int_equal(kvt_host_alloc(h, 64 * 1024, i, &off), 0);
    uint64_t slot = kvt_host_slot_bytes(h, 200 * 1024);
    uint32_t per_page = (uint32_t)(MIB / slot);
    for (uint32_t i = 0; i < 3 * per_page; i++)
        assert_int_equal(kvt_host_alloc(h, 200 * 1024, 1000 + i, &off), 0);
    for (uint32_t i = 0; i < o.n_evicted; i++)
        assert_true(o.evicted[i] < 1000);
    kvt_host_destroy(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_rejects_bad_config),
        cmocka_unit_test(test_alloc_write_read),
        cmocka_unit_test(test_lru_eviction_order),
        cmocka_unit_test(test_pinned_never_evicted),
        cmocka_unit_test(test_page_moves_between_classes),
        cmocka_unit_test(test_new_size_takes_memory_of_old_size),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
