/*
 * Holds and their leases. See hold.h.
 */
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "daemon/hold.h"
#include "kvtier/errors.h"

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static void timer_fired(void *arg);

/* Arms the timer at the earliest expiry among open holds (or disarms it). */
static void rearm(struct kvt_hold_table *t)
{
    uint64_t first = UINT64_MAX;
    for (uint32_t i = 0; i < t->cap; i++)
        if (t->v[i].id && t->v[i].expires_ms < first)
            first = t->v[i].expires_ms;
    if (first == UINT64_MAX) {
        kvt_loop_timer_stop(t->loop, &t->timer);
        return;
    }
    uint64_t now = kvt_loop_now_ms(t->loop);
    /* Timers are bounded in number; the table uses one, which exists while the loop does. */
    (void)kvt_loop_timer_start(t->loop, &t->timer, first > now ? first - now : 0, timer_fired, t);
}

static void drop(struct kvt_hold_table *t, struct kvt_hold *h)
{
    for (uint32_t i = 0; i < h->n; i++)
        t->cb.unpin(t->cb.arg, h->entries[i], h->gens[i]);
    t->pins -= h->n;
    kvt_free(KVT_ALLOC_INDEX, h->entries);
    memset(h, 0, sizeof(*h));
    t->n--;
}

static void timer_fired(void *arg)
{
    struct kvt_hold_table *t = arg;
    uint64_t now = kvt_loop_now_ms(t->loop);
    for (uint32_t i = 0; i < t->cap; i++) {
        if (t->v[i].id && t->v[i].expires_ms <= now) {
            t->expired++;
            drop(t, &t->v[i]);
        }
    }
    rearm(t);
}

int kvt_hold_table_init(struct kvt_hold_table *t, uint32_t cap, uint64_t pins_max,
                        const struct kvt_hold_pins *cb, struct kvt_loop *loop)
{
    memset(t, 0, sizeof(*t));
    t->v = kvt_calloc(KVT_ALLOC_INDEX, cap, sizeof(*t->v));
    if (!t->v)
        return KVT_E_NOMEM;
    t->cap = cap;
    t->pins_max = pins_max;
    t->cb = *cb;
    t->loop = loop;
    return 0;
}

void kvt_hold_table_deinit(struct kvt_hold_table *t)
{
    for (uint32_t i = 0; t->v && i < t->cap; i++)
        if (t->v[i].id)
            drop(t, &t->v[i]);
    if (t->loop)
        kvt_loop_timer_stop(t->loop, &t->timer);
    kvt_free(KVT_ALLOC_INDEX, t->v);
    memset(t, 0, sizeof(*t));
}

int kvt_hold_make(struct kvt_hold_table *t, const char *tenant, const uint32_t *entries,
                  const uint32_t *gens, uint32_t n, uint32_t ttl_ms, uint64_t *id_out)
{
    if (!n)
        return KVT_E_INVAL;
    if (n > t->pins_max - t->pins)
        return KVT_E_FULL;
    uint32_t slot = UINT32_MAX;
    for (uint32_t i = 0; i < t->cap && slot == UINT32_MAX; i++)
        if (!t->v[i].id)
            slot = i;
    if (slot == UINT32_MAX)
        return KVT_E_FULL;
    uint32_t *mem = kvt_malloc(KVT_ALLOC_INDEX, (size_t)n * 2 * sizeof(uint32_t));
    if (!mem)
        return KVT_E_NOMEM;
    struct kvt_hold *h = &t->v[slot];
    memset(h, 0, sizeof(*h));
    if (++t->gen == 0)
        t->gen = 1;
    h->id = (uint64_t)t->gen << 32 | (slot + 1u);
    snprintf(h->tenant, sizeof(h->tenant), "%s", tenant);
    h->tenant_hash = hash_str(h->tenant);
    h->entries = mem;
    h->gens = mem + n;
    memcpy(h->entries, entries, (size_t)n * sizeof(uint32_t));
    memcpy(h->gens, gens, (size_t)n * sizeof(uint32_t));
    h->n = n;
    for (uint32_t i = 0; i < n; i++)
        t->cb.pin(t->cb.arg, entries[i]);
    t->pins += n;
    h->expires_ms = kvt_loop_now_ms(t->loop) + ttl_ms;
    t->n++;
    t->made++;
    if (!kvt_loop_timer_armed(&t->timer) || t->timer.due_ms > h->expires_ms)
        rearm(t);
    *id_out = h->id;
    return 0;
}

int kvt_hold_end(struct kvt_hold_table *t, uint64_t id, const char *tenant, uint32_t *n_out)
{
    if (n_out)
        *n_out = 0;
    uint32_t slot = (uint32_t)id;
    if (!slot || slot > t->cap || t->v[slot - 1].id != id)
        return KVT_E_NOHOLD;
    struct kvt_hold *h = &t->v[slot - 1];
    if (h->tenant_hash != hash_str(tenant) || strcmp(h->tenant, tenant))
        return KVT_E_ACCESS;
    if (n_out)
        *n_out = h->n;
    t->released++;
    drop(t, h);
    rearm(t);
    return 0;
}
