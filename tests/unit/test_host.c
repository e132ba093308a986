/* Unit tests for the CPU tier's size-class allocator: classes, LRU eviction, pinning, page
 * reassignment between classes, memory kept useful under mixed sizes, the pressure signal, and
 * its limits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
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

/* Cost-aware: a cookie's value is its own number. */
static double value_cb(void *owner, uint32_t cookie)
{
    (void)owner;
    return (double)cookie;
}

static void test_cost_aware_eviction(void **state)
{
    (void)state;
    struct owner o;
    struct kvt_host *h = make(&o, 2 * MIB, MIB);
    uint64_t slot = kvt_host_slot_bytes(h, 200 * 1024);
    uint32_t n = (uint32_t)(2 * (MIB / slot));
    assert_true(n >= 8 && n <= 16); /* a full sample of 8 */
    uint64_t off[16];
    /* Oldest first: values 50, 40, 30, 3, 20, ...: the lowest of the LRU sample goes. */
    const uint32_t cookies[] = {50, 40, 30, 3, 20, 10, 60, 70, 80, 90, 91, 92, 93, 94, 95, 96};
    for (uint32_t i = 0; i < n; i++)
        assert_int_equal(kvt_host_alloc(h, 200 * 1024, cookies[i], &off[i]), 0);
    kvt_host_set_value(h, value_cb, &o);
    uint64_t x;
    assert_int_equal(kvt_host_alloc(h, 200 * 1024, 100, &x), 0);
    assert_int_equal(o.n_evicted, 1);
    assert_int_equal(o.evicted[0], 3); /* not 50, the least recently used */
    assert_int_equal(x, off[3]);
    /* A refusal moves on to the next lowest of the sample: 10 is pinned, so 20 goes. */
    o.pinned_cookie = 10;
    assert_int_equal(kvt_host_alloc(h, 200 * 1024, 101, &x), 0);
    assert_int_equal(o.n_evicted, 2);
    assert_int_equal(o.evicted[1], 20);
    /* Back to LRU: the oldest goes. */
    kvt_host_set_value(h, NULL, NULL);
    assert_int_equal(kvt_host_alloc(h, 200 * 1024, 102, &x), 0);
    assert_int_equal(o.evicted[2], 50);
    kvt_host_destroy(h);
}

/* A page moved to another class under cost-aware eviction is the one whose objects are worth
 * least together, not the least recently used: two classes of two pages each, the older one
 * worth more (cookies are values here). With LRU the older page goes. */
static void page_move_victims(int cost, uint32_t *lo_out, uint32_t *hi_out)
{
    struct owner o;
    struct kvt_host *h = make(&o, 4 * MIB, MIB);
    uint32_t per_a = (uint32_t)(MIB / kvt_host_slot_bytes(h, 64 * 1024));
    uint32_t per_b = (uint32_t)(MIB / kvt_host_slot_bytes(h, 200 * 1024));
    uint64_t off;
    for (uint32_t i = 0; i < 2 * per_a; i++) /* older, worth much */
        assert_int_equal(kvt_host_alloc(h, 64 * 1024, 10000 + i, &off), 0);
    for (uint32_t i = 0; i < 2 * per_b; i++) /* newer, worth little */
        assert_int_equal(kvt_host_alloc(h, 200 * 1024, 1 + i, &off), 0);
    assert_int_equal(o.n_evicted, 0);
    if (cost)
        kvt_host_set_value(h, value_cb, &o);
    assert_int_equal(kvt_host_alloc(h, MIB, 50000, &off), 0);
    assert_true(o.n_evicted > 0);
    *lo_out = UINT32_MAX;
    *hi_out = 0;
    for (uint32_t i = 0; i < o.n_evicted; i++) {
        *lo_out = o.evicted[i] < *lo_out ? o.evicted[i] : *lo_out;
        *hi_out = o.evicted[i] > *hi_out ? o.evicted[i] : *hi_out;
    }
    kvt_host_destroy(h);
}

static void test_cost_aware_page_move(void **state)
{
    (void)state;
    uint32_t lo, hi;
    page_move_victims(1, &lo, &hi);
    assert_true(hi < 10000); /* only the cheap class's objects went */
    page_move_victims(0, &lo, &hi);
    assert_true(lo >= 10000); /* LRU: the older page, whatever it was worth */
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

/* An owner that tracks which of many objects are live, and their sizes. */
#define FILL_OBJECTS_MAX 40000
struct fill_owner {
    uint8_t live[FILL_OBJECTS_MAX];
    uint32_t bytes[FILL_OBJECTS_MAX];
    uint32_t refuse_below; /* refuse cookies below this (dirty, say) */
    uint64_t evicted;
};

static int fill_evict_cb(void *owner, uint32_t cookie, uint64_t off)
{
    struct fill_owner *o = owner;
    (void)off;
    if (cookie < o->refuse_below)
        return 1;
    assert_true(o->live[cookie]);
    o->live[cookie] = 0;
    o->evicted++;
    return 0;
}

/* 512 B .. 64 KiB, spread by a hash as several models and partial chunks would be. */
static uint64_t mixed_bytes(uint32_t i)
{
    uint64_t x = (i + 1) * 0x9e3779b97f4a7c15ull;
    x ^= x >> 31;
    return 256 * (2 + x % 255);
}

static struct kvt_host *make_fill(struct fill_owner *o, uint64_t arena, uint64_t page)
{
    struct kvt_host_config cfg = {.arena_bytes = arena, .page_bytes = page};
    struct kvt_host *h = NULL;
    memset(o, 0, sizeof(*o));
    assert_int_equal(kvt_host_create(&cfg, fill_evict_cb, o, &h), 0);
    return h;
}

static void put(struct kvt_host *h, struct fill_owner *o, uint32_t i, uint64_t bytes)
{
    uint64_t off;
    assert_true(i < FILL_OBJECTS_MAX);
    assert_int_equal(kvt_host_alloc(h, bytes, i, &off), 0);
    o->live[i] = 1;
    o->bytes[i] = (uint32_t)bytes;
}

/* Fills arena with mixed sizes, five times over, and checks that at least 80% of it holds live
 * objects, that bytes_payload is the sum of their sizes, and that the newest are all kept. */
static void check_mixed_fill(uint64_t arena, uint64_t page)
{
    struct fill_owner *o = calloc(1, sizeof(*o));
    assert_non_null(o);
    struct kvt_host *h = make_fill(o, arena, page);
    uint64_t written = 0;
    uint32_t n = 0;
    while (written < 5 * arena) {
        put(h, o, n, mixed_bytes(n));
        written += mixed_bytes(n++);
    }
    struct kvt_tier_stats st;
    kvt_host_tier_ops.stats(h, &st);
    uint64_t payload = 0, objects = 0;
    for (uint32_t i = 0; i < n; i++)
        if (o->live[i]) {
            payload += o->bytes[i];
            objects++;
        }
    assert_int_equal(st.objects, objects);
    assert_int_equal(st.bytes_payload, payload);
    assert_true(st.bytes_used >= arena / 10 * 8);
    assert_true(st.bytes_used <= arena);
    assert_true(payload >= arena / 10 * 6);
    for (uint32_t i = n - 64; i < n; i++)
        assert_true(o->live[i]);
    kvt_host_destroy(h);
    free(o);
}

static void test_mixed_fill_keeps_arena_live(void **state)
{
    (void)state;
    /* Eight pages for ten size classes (the default 32 MiB pages of a 256 MiB tier, scaled
     * down), then many small pages. */
    check_mixed_fill(32 * MIB, 4 * MIB);
    check_mixed_fill(32 * MIB, 256 * 1024);
}

static void test_miss_evicts_within_its_class(void **state)
{
    (void)state;
    /* Two sizes asked for in turn, past capacity: an allocation that misses evicts one object of
     * its own class, except when a page moves (rate-limited); it never wipes pages of the other
     * class to make room. */
    struct fill_owner *o = calloc(1, sizeof(*o));
    assert_non_null(o);
    struct kvt_host *h = make_fill(o, 8 * MIB, MIB);
    uint64_t sizes[2] = {60 * 1024, 100 * 1024};
    for (uint32_t n = 0; n < 6000; n++) {
        uint64_t moves = kvt_host_page_moves(h), evicted = o->evicted;
        put(h, o, n, sizes[n % 2]);
        if (kvt_host_page_moves(h) == moves)
            assert_true(o->evicted - evicted <= 1);
    }
    /* 1 MiB pages hold 16 slots of 60 KiB: at most one move per 16 allocations. */
    assert_true(kvt_host_page_moves(h) <= 6000 / 16);
    assert_true(kvt_host_class_pages(h, sizes[0]) >= 1);
    assert_true(kvt_host_class_pages(h, sizes[1]) >= 1);
    kvt_host_destroy(h);
    free(o);
}

static void test_class_with_demand_gets_page(void **state)
{
    (void)state;
    /* Every page holds 64 KiB objects. A size that no class can hold (200 KiB) gets a page at
     * once; a smaller size in demand (16 KiB) is first served by the 64 KiB class's slots, then
     * gets pages of its own; the 64 KiB class keeps pages too. */
    struct fill_owner *o = calloc(1, sizeof(*o));
    assert_non_null(o);
    struct kvt_host *h = make_fill(o, 8 * MIB, MIB);
    uint32_t n = 0;
    for (uint32_t i = 0; i < 128; i++)
        put(h, o, n++, 64 * 1024);
    assert_int_equal(kvt_host_class_pages(h, 64 * 1024), 8);
    put(h, o, n++, 200 * 1024);
    assert_int_equal(kvt_host_class_pages(h, 200 * 1024), 1);
    for (uint32_t i = 0; i < 2000; i++)
        put(h, o, n++, (i % 4) ? 16 * 1024 : 64 * 1024);
    assert_true(kvt_host_class_pages(h, 16 * 1024) >= 2);
    assert_true(kvt_host_class_pages(h, 64 * 1024) >= 1);
    for (uint32_t i = n - 16; i < n; i++)
        assert_true(o->live[i]);
    kvt_host_destroy(h);
    free(o);
}

static void test_page_moves_bounded(void **state)
{
    (void)state;
    /* A steady mix settles: once the classes have their pages, pages stop moving. A mix that
     * keeps changing moves pages, but at most one per page's worth of allocations. */
    struct fill_owner *o = calloc(1, sizeof(*o));
    assert_non_null(o);
    struct kvt_host *h = make_fill(o, 32 * MIB, 4 * MIB);
    uint32_t n = 0;
    for (; n < 10000; n++)
        put(h, o, n, mixed_bytes(n));
    uint64_t settled = kvt_host_page_moves(h);
    for (; n < 20000; n++)
        put(h, o, n, mixed_bytes(n));
    assert_true(kvt_host_page_moves(h) - settled <= 1);
    kvt_host_destroy(h);

    h = make_fill(o, 32 * MIB, 4 * MIB);
    /* Phases of one size each, alternating between 8 KiB and 60 KiB. */
    for (n = 0; n < 40000; n++)
        put(h, o, n, (n / 2000) % 2 ? 60 * 1024 : 8 * 1024);
    uint64_t moves = kvt_host_page_moves(h);
    assert_true(moves > 0);
    /* A 4 MiB page holds 68 slots of 60 KiB: one move per 68 allocations at most. */
    assert_true(moves <= 40000 / 68 + 1);
    kvt_host_destroy(h);
    free(o);
}

static void test_pressure_from_classes_in_demand(void **state)
{
    (void)state;
    struct fill_owner *o = calloc(1, sizeof(*o));
    assert_non_null(o);
    struct kvt_host *h = make_fill(o, 8 * MIB, MIB);
    assert_false(kvt_host_pressure(h, 0.1));
    /* One 4 KiB object takes a page: plenty of room. */
    put(h, o, 0, 4096);
    assert_false(kvt_host_pressure(h, 0.1));
    /* 64 KiB objects fill the other seven pages: that class is out of room while the 4 KiB
     * page's free slots look like 1 MiB of free bytes. */
    uint32_t n = 1;
    for (uint32_t i = 0; i < 7 * 16; i++)
        put(h, o, n++, 64 * 1024);
    assert_true(kvt_host_free_bytes(h) >= MIB - 4096);
    assert_true(kvt_host_pressure(h, 0.1));
    kvt_host_destroy(h);

    /* Refusals are pressure too: everything evictable is dirty. */
    h = make_fill(o, 2 * MIB, MIB);
    for (n = 0; n < 32; n++)
        put(h, o, n, 64 * 1024);
    o->refuse_below = 32;
    uint64_t off;
    assert_int_equal(kvt_host_alloc(h, 4096, 100, &off), KVT_E_FULL);
    assert_true(kvt_host_pressure(h, 0.0));
    kvt_host_destroy(h);
    free(o);
}

static void test_refused_class_lets_colder_objects_go(void **state)
{
    (void)state;
    /* Class A (64 KiB) is full of objects the owner refuses (dirty, say); class B (200 KiB)
     * holds older objects the owner lets go. For an A allocation, B's objects colder than A's
     * coldest go, as one LRU would have it (the write-back front moves on to A's objects), and
     * B's page, empty, moves to A. */
    struct fill_owner *o = calloc(1, sizeof(*o));
    assert_non_null(o);
    struct kvt_host *h = make_fill(o, 4 * MIB, MIB);
    uint32_t b_n = (uint32_t)(MIB / kvt_host_slot_bytes(h, 200 * 1024));
    uint32_t a_n = 3 * (uint32_t)(MIB / kvt_host_slot_bytes(h, 64 * 1024));
    for (uint32_t i = 0; i < b_n; i++)
        put(h, o, 1000 + i, 200 * 1024);
    for (uint32_t i = 0; i < a_n; i++)
        put(h, o, i, 64 * 1024);
    assert_int_equal(o->evicted, 0);
    o->refuse_below = 1000;
    uint64_t off;
    assert_int_equal(kvt_host_alloc(h, 64 * 1024, 2000, &off), 0);
    for (uint32_t i = 0; i < b_n; i++)
        assert_false(o->live[1000 + i]);
    assert_int_equal(kvt_host_class_pages(h, 64 * 1024), 4);
    for (uint32_t i = 0; i < a_n; i++)
        assert_true(o->live[i]);
    kvt_host_destroy(h);
    free(o);
}

static void test_coldest_across_classes(void **state)
{
    (void)state;
    struct fill_owner *o = calloc(1, sizeof(*o));
    assert_non_null(o);
    struct kvt_host *h = make_fill(o, 8 * MIB, MIB);
    uint64_t off[6];
    for (uint32_t i = 0; i < 6; i++)
        assert_int_equal(kvt_host_alloc(h, (i % 2) ? 4096 : 64 * 1024, i, &off[i]), 0);
    kvt_host_touch(h, off[0]);
    uint32_t cookies[8];
    assert_int_equal(kvt_host_coldest(h, cookies, 8), 6);
    const uint32_t want[6] = {1, 2, 3, 4, 5, 0};
    for (uint32_t i = 0; i < 6; i++)
        assert_int_equal(cookies[i], want[i]);
    assert_int_equal(kvt_host_coldest(h, cookies, 2), 2);
    kvt_host_destroy(h);
    free(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_rejects_bad_config),
        cmocka_unit_test(test_alloc_write_read),
        cmocka_unit_test(test_lru_eviction_order),
        cmocka_unit_test(test_cost_aware_eviction),
        cmocka_unit_test(test_cost_aware_page_move),
        cmocka_unit_test(test_pinned_never_evicted),
        cmocka_unit_test(test_page_moves_between_classes),
        cmocka_unit_test(test_new_size_takes_memory_of_old_size),
        cmocka_unit_test(test_mixed_fill_keeps_arena_live),
        cmocka_unit_test(test_miss_evicts_within_its_class),
        cmocka_unit_test(test_class_with_demand_gets_page),
        cmocka_unit_test(test_page_moves_bounded),
        cmocka_unit_test(test_pressure_from_classes_in_demand),
        cmocka_unit_test(test_refused_class_lets_colder_objects_go),
        cmocka_unit_test(test_coldest_across_classes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
