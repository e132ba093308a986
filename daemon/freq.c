/*
 * Read-frequency sketch. See freq.h.
 */
#include <string.h>

#include "common/alloc.h"
#include "daemon/freq.h"
#include "kvtier/errors.h"

static const uint64_t row_mul[KVT_FREQ_ROWS] = {0x9e3779b97f4a7c15ull, 0xc2b2ae3d27d4eb4full,
                                                0x165667b19e3779f9ull, 0xd6e8feb86659fd93ull};

static uint32_t slot(const struct kvt_freq *f, uint64_t h, int row)
{
    return (uint32_t)((h * row_mul[row]) >> 32) & f->mask;
}

int kvt_freq_init(struct kvt_freq *f, uint32_t objects)
{
    uint32_t width = 64;
    while (width < objects && width < (1u << 28))
        width <<= 1;
    memset(f, 0, sizeof(*f));
    f->count = kvt_calloc(KVT_ALLOC_TIER, KVT_FREQ_ROWS, width);
    if (!f->count)
        return KVT_E_NOMEM;
    f->mask = width - 1;
    f->halve_at = 10ull * width;
    return 0;
}

void kvt_freq_deinit(struct kvt_freq *f)
{
    kvt_free(KVT_ALLOC_TIER, f->count);
    f->count = NULL;
}

static void halve(struct kvt_freq *f)
{
    size_t n = (size_t)KVT_FREQ_ROWS * (f->mask + 1);
    for (size_t i = 0; i < n; i++)
        f->count[i] >>= 1;
    f->adds /= 2;
    f->halvings++;
}

void kvt_freq_add(struct kvt_freq *f, uint64_t h)
{
    /* Conservative update: only the smallest counters grow, which keeps collisions' inflation
     * down without ever letting the estimate fall below the true count. */
    uint32_t low = kvt_freq_estimate(f, h);
    if (low < UINT8_MAX) {
        for (int r = 0; r < KVT_FREQ_ROWS; r++) {
            uint8_t *c = &f->count[(size_t)r * (f->mask + 1) + slot(f, h, r)];
            if (*c == low)
                (*c)++;
        }
    }
    if (++f->adds >= f->halve_at)
        halve(f);
}

uint32_t kvt_freq_estimate(const struct kvt_freq *f, uint64_t h)
{
    uint32_t low = UINT8_MAX;
    for (int r = 0; r < KVT_FREQ_ROWS; r++) {
        uint8_t c = f->count[(size_t)r * (f->mask + 1) + slot(f, h, r)];
        low = c < low ? c : low;
    }
    return low;
}
