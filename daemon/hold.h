/*
 * Holds: the hits of a Lookup pinned against eviction until the engine has loaded them (vLLM's
 * scheduler commits to external blocks in update_state_after_alloc; its worker reads them a step
 * later, perhaps from another process). docs/connectors.md.
 *
 * A hold belongs to the tenant whose Lookup made it; any connection of that tenant may release
 * it, another tenant gets KVT_E_ACCESS. It lives at most ttl_ms, after which the table's one loop
 * timer releases it, so a crashed engine pins nothing for long. Each pinned entry holds one
 * reference through the caller's pin callbacks, with the entry's generation, so a release never
 * touches a slot reused for another chunk. Ids carry a generation too: a released hold's id is
 * unknown (KVT_E_NOHOLD), never another hold. The table is sized at start: cap holds, at most
 * pins_max entries pinned by all of them together.
 */
#ifndef KVT_DAEMON_HOLD_H
#define KVT_DAEMON_HOLD_H

#include <stdint.h>

#include "common/loop.h"
#include "kvtier/kvtier.h"

/* How a hold takes and gives back its references (the tier manager's entry refs). */
struct kvt_hold_pins {
    void (*pin)(void *arg, uint32_t entry);
    void (*unpin)(void *arg, uint32_t entry, uint32_t gen); /* only when gen still matches */
    void *arg;
};

struct kvt_hold {
    uint64_t id; /* generation << 32 | (slot + 1); 0 = free slot */
    uint64_t tenant_hash;
    char tenant[KVT_TENANT_MAX];
    uint32_t *entries, *gens; /* n of each, one allocation */
    uint32_t n;
    uint64_t expires_ms;
};

struct kvt_hold_table {
    struct kvt_hold *v;
    uint32_t cap;
    uint32_t n; /* holds open */
    uint32_t gen;
    uint64_t pins, pins_max; /* entries pinned now, and the bound */
    struct kvt_hold_pins cb;
    struct kvt_loop *loop;
    struct kvt_timer timer; /* armed at the earliest expiry while any hold is open */
    uint64_t made, released, expired;
};

int kvt_hold_table_init(struct kvt_hold_table *t, uint32_t cap, uint64_t pins_max,
                        const struct kvt_hold_pins *cb, struct kvt_loop *loop);
/* Releases every hold. */
void kvt_hold_table_deinit(struct kvt_hold_table *t);

/* Pins entries[0..n) (with their generations gens[]) for tenant under ttl_ms, and writes the
 * hold's id. KVT_E_FULL when the table has no free slot or the pins would pass pins_max (nothing
 * pinned), KVT_E_NOMEM, KVT_E_INVAL for n 0. */
int kvt_hold_make(struct kvt_hold_table *t, const char *tenant, const uint32_t *entries,
                  const uint32_t *gens, uint32_t n, uint32_t ttl_ms, uint64_t *id_out);
/* Releases hold id of tenant; *n_out (may be NULL) gets the entries it pinned. KVT_E_NOHOLD when
 * the id is unknown (released, expired, never made), KVT_E_ACCESS for another tenant's. */
int kvt_hold_end(struct kvt_hold_table *t, uint64_t id, const char *tenant, uint32_t *n_out);

#endif
