/* The streaming copy kernel against its reference, over sizes and misalignments of both sides. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kernels/copy.h"

static void test_matches_reference(void **state)
{
    (void)state;
    const size_t sizes[] = {0, 1, 15, 16, 63, 64, 4095, 4096, 4097, 65536 + 13, 1 << 20};
    const size_t max = (1 << 20) + 64;
    uint8_t *src = malloc(max), *a = malloc(max), *b = malloc(max);
    assert_non_null(src);
    for (size_t i = 0; i < max; i++)
        src[i] = (uint8_t)(i * 131 + (i >> 9));
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        for (size_t so = 0; so < 3; so++) {
            for (size_t doff = 0; doff < 17; doff += 7) {
                size_t n = sizes[s];
                memset(a, 0xee, max);
                memset(b, 0xee, max);
                kvt_copy_ref(a + doff, src + so, n);
                kvt_copy_stream(b + doff, src + so, n);
                /* Same bytes copied, and nothing written outside the destination. */
                assert_memory_equal(a, b, max);
            }
        }
    }
    free(src);
    free(a);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_matches_reference)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
