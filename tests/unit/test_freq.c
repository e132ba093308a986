/*
 * The read-frequency sketch (daemon/freq.c): an estimate is never below the true count since the
 * last halving and is exact for few objects; counters saturate at 255; every 10 x width
 * additions everything halves, so old popularity fades; a failed allocation is reported.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "daemon/freq.h"
#include "kvtier/errors.h"

static uint64_t h_of(uint64_t i)
{
    uint64_t x = i * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
    x ^= x >> 31;
    return x * 0xbf58476d1ce4e5b9ull;
}

static void test_never_under_and_exact_when_sparse(void **state)
{
    (void)state;
    struct kvt_freq f;
    assert_int_equal(kvt_freq_init(&f, 4096), 0);
    assert_int_equal(f.mask + 1, 4096);
    static uint32_t truth[3000];
    uint64_t x = 5;
    for (int n = 0; n < 30000; n++) { /* below 10 x width: no halving */
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t i = (uint32_t)((x >> 33) % 3000);
        i = i % 7 ? i : i % 50; /* some much hotter */
        if (truth[i] < 255) {
            kvt_freq_add(&f, h_of(i));
            truth[i]++;
        }
    }
    assert_int_equal(f.halvings, 0);
    uint32_t exact = 0;
    for (uint32_t i = 0; i < 3000; i++) {
        uint32_t est = kvt_freq_estimate(&f, h_of(i));
        assert_true(est >= truth[i]);
        exact += est == truth[i];
    }
    assert_true(exact > 2700); /* collisions on 4 rows are rare at this load */
    kvt_freq_deinit(&f);
}

static void test_saturates_and_halves(void **state)
{
    (void)state;
    struct kvt_freq f;
    assert_int_equal(kvt_freq_init(&f, 1), 0);
    assert_int_equal(f.mask + 1, 64);
    for (int i = 0; i < 300; i++)
        kvt_freq_add(&f, h_of(1));
    assert_int_equal(kvt_freq_estimate(&f, h_of(1)), 255);
    /* 640 additions in all halve every counter: old popularity fades. */
    for (int i = 300; i < 639; i++)
        kvt_freq_add(&f, h_of(2));
    assert_int_equal(f.halvings, 0);
    uint32_t before = kvt_freq_estimate(&f, h_of(1));
    kvt_freq_add(&f, h_of(3));
    assert_int_equal(f.halvings, 1);
    assert_int_equal(kvt_freq_estimate(&f, h_of(1)), before / 2);
    kvt_freq_deinit(&f);
    kvt_freq_deinit(&f); /* safe twice */
}

static void test_allocation_failure(void **state)
{
    (void)state;
    struct kvt_freq f;
    kvt_alloc_fail_nth(1);
    assert_int_equal(kvt_freq_init(&f, 1024), KVT_E_NOMEM);
    kvt_alloc_fail_nth(0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_never_under_and_exact_when_sparse),
        cmocka_unit_test(test_saturates_and_halves),
        cmocka_unit_test(test_allocation_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
