/*
 * Unit tests for the extent allocator: first fit, coalescing back to a single run, the extents_max
 * bound, reserve at start-up, and a randomized run checked block by block against a bitmap model.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kvtier/errors.h"
#include "tiers/disk/extent.h"

static struct kvt_extent *make(uint64_t blocks, uint32_t extents_max)
{
    struct kvt_extent_config cfg = {.blocks = blocks, .extents_max = extents_max};
    struct kvt_extent *a = NULL;
    assert_int_equal(kvt_extent_create(&cfg, &a), 0);
    return a;
}

static void test_basic_and_coalesce(void **state)
{
    (void)state;
    struct kvt_extent *a = make(100, 10);
    uint64_t s[4];

    assert_int_equal(kvt_extent_alloc(a, 10, &s[0]), 0);
    assert_int_equal(kvt_extent_alloc(a, 20, &s[1]), 0);
    assert_int_equal(kvt_extent_alloc(a, 30, &s[2]), 0);
    assert_int_equal(s[0], 0);
    assert_int_equal(s[1], 10);
    assert_int_equal(s[2], 30);
    assert_int_equal(kvt_extent_free_blocks(a), 40);
    assert_int_equal(kvt_extent_alloc(a, 41, &s[3]), KVT_E_FULL);

    /* Free the middle one: a hole that first fit reuses. */
    kvt_extent_free(a, s[1], 20);
    assert_int_equal(kvt_extent_free_runs(a), 2);
    assert_int_equal(kvt_extent_alloc(a, 15, &s[3]), 0);
    assert_int_equal(s[3], 10);
    kvt_extent_free(a, s[3], 15);

    /* Free in an order that exercises merge with previous, next and both. */
    kvt_extent_free(a, s[0], 10);
    assert_int_equal(kvt_extent_free_runs(a), 2);
    kvt_extent_free(a, s[2], 30);
    assert_int_equal(kvt_extent_free_runs(a), 1);
    assert_int_equal(kvt_extent_largest_free(a), 100);
    assert_int_equal(kvt_extent_allocated(a), 0);
    assert_int_equal(kvt_extent_alloc(a, 0, &s[0]), KVT_E_INVAL);
    kvt_extent_destroy(a);
    kvt_extent_destroy(NULL);
}

static void test_extents_max(void **state)
{
    (void)state;
    struct kvt_extent *a = make(1000, 4);
    uint64_t s;

    for (int i = 0; i < 4; i++)
        assert_int_equal(kvt_extent_alloc(a, 1, &s), 0);
    assert_int_equal(kvt_extent_alloc(a, 1, &s), KVT_E_FULL);
    assert_int_equal(kvt_extent_reserve(a, 500, 1), KVT_E_FULL);
    kvt_extent_free(a, 2, 1);
    assert_int_equal(kvt_extent_alloc(a, 1, &s), 0);
    assert_int_equal(s, 2);
    kvt_extent_destroy(a);
}

static void test_reserve(void **state)
{
    (void)state;
    struct kvt_extent *a = make(64, 16);
    uint64_t s;

    assert_int_equal(kvt_extent_reserve(a, 10, 5), 0);
    assert_int_equal(kvt_extent_reserve(a, 12, 1), KVT_E_EXISTS);
    assert_int_equal(kvt_extent_reserve(a, 8, 3), KVT_E_EXISTS);
    assert_int_equal(kvt_extent_reserve(a, 60, 5), KVT_E_EXISTS);
    assert_int_equal(kvt_extent_reserve(a, 64, 1), KVT_E_EXISTS);
    assert_int_equal(kvt_extent_reserve(a, 0, 10), 0);
    assert_int_equal(kvt_extent_reserve(a, 63, 1), 0);
    assert_int_equal(kvt_extent_alloc(a, 48, &s), 0);
    assert_int_equal(s, 15);
    assert_int_equal(kvt_extent_free_blocks(a), 0);
    kvt_extent_free(a, 10, 5);
    kvt_extent_free(a, 0, 10);
    assert_int_equal(kvt_extent_largest_free(a), 15);
    kvt_extent_destroy(a);
}

struct live {
    uint64_t start, blocks;
};

static void test_random_against_bitmap(void **state)
{
    (void)state;
    enum { BLOCKS = 4096, MAXEXT = 512, STEPS = 200000 };
    struct kvt_extent *a = make(BLOCKS, MAXEXT);
    unsigned char *map = calloc(BLOCKS, 1);
    struct live *live = calloc(MAXEXT, sizeof(*live));
    uint64_t rng = 88172645463325252ull, used = 0;
    uint32_t n = 0;

    for (int step = 0; step < STEPS; step++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if (n > 0 && (rng % 2 == 0 || n == MAXEXT)) {
            uint32_t i = (uint32_t)((rng >> 8) % n);
            kvt_extent_free(a, live[i].start, live[i].blocks);
            memset(map + live[i].start, 0, live[i].blocks);
            used -= live[i].blocks;
            live[i] = live[--n];
        } else {
            uint64_t b = 1 + (rng >> 16) % 64, s;
            int rc = kvt_extent_alloc(a, b, &s);
            if (rc == 0) {
                for (uint64_t k = s; k < s + b; k++) {
                    assert_int_equal(map[k], 0);
                    map[k] = 1;
                }
                live[n].start = s;
                live[n].blocks = b;
                n++;
                used += b;
            } else {
                assert_int_equal(rc, KVT_E_FULL);
                assert_true(kvt_extent_largest_free(a) < b);
            }
        }
        assert_int_equal(kvt_extent_free_blocks(a), BLOCKS - used);
        assert_true(kvt_extent_free_runs(a) <= n + 1);
    }
    while (n > 0) {
        n--;
        kvt_extent_free(a, live[n].start, live[n].blocks);
    }
    assert_int_equal(kvt_extent_free_runs(a), 1);
    assert_int_equal(kvt_extent_largest_free(a), BLOCKS);
    free(map);
    free(live);
    kvt_extent_destroy(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic_and_coalesce),
        cmocka_unit_test(test_extents_max),
        cmocka_unit_test(test_reserve),
        cmocka_unit_test(test_random_against_bitmap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
