/*
 * A tier for tests: objects named by id in process memory, with every operation completed later
 * (from wait, or from its eventfd on a loop), so that the tier manager's asynchronous paths can be
 * driven one completion at a time, with failures injected on demand. It implements the whole
 * operations table (metadata beside objects included) and passes the conformance suite
 * (tests/unit/test_tier_conformance.c) like the real tiers do. Single-threaded except fill.
 */
#ifndef KVT_TESTS_LIB_TEST_TIER_H
#define KVT_TESTS_LIB_TEST_TIER_H

#include "tiers/tier.h"

struct kvt_test_tier;

/* objects_max objects of up to object_bytes_max bytes each. */
int kvt_test_tier_create(uint32_t objects_max, uint64_t object_bytes_max,
                         struct kvt_test_tier **out);
void kvt_test_tier_destroy(struct kvt_test_tier *t);

/* The next n completions report err instead (reads, commits). */
void kvt_test_tier_fail_next(struct kvt_test_tier *t, uint32_t n, int err);
/* The same, after the next skip completions went through as they are. */
void kvt_test_tier_fail_after(struct kvt_test_tier *t, uint32_t skip, uint32_t n, int err);
/* While held, nothing completes (wait and the eventfd do nothing). */
void kvt_test_tier_hold(struct kvt_test_tier *t, int hold);
/* Completions run so far; operations waiting. */
uint64_t kvt_test_tier_completed(const struct kvt_test_tier *t);
/* Flips one byte of a stored object: its next read reports KVT_E_CORRUPT and drops it. */
int kvt_test_tier_corrupt(struct kvt_test_tier *t, const struct kvt_obj_id *id);
/* Flips one byte of a stored object's metadata: read_meta reports KVT_E_CORRUPT, the object
 * stays. */
int kvt_test_tier_corrupt_meta(struct kvt_test_tier *t, const struct kvt_obj_id *id);

extern const struct kvt_tier_ops kvt_test_tier_ops;

#endif
