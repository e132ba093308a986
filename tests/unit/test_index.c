/* Unit tests for the daemon's chunk index and namespace table, and for the client's transfer-arena
 * allocator: limits, reuse of freed entries, tenant checks, geometry validation, coalescing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "client/lib/arena.h"
#include "daemon/index.h"
#include "daemon/ns.h"

#define OID(seed, k) (&(struct kvt_obj_id){.ns_seed = (seed), .key = (k)})

static void test_index_insert_find_remove(void **state)
{
    (void)state;
    struct kvt_index idx;
    assert_int_equal(kvt_index_init(&idx, 64), 0);
    uint32_t ids[64];
    for (uint32_t i = 0; i < 64; i++) {
        struct kvt_key k = {i * 7919u, i};
        assert_int_equal(kvt_index_insert(&idx, OID(1 + i % 2, k), &ids[i]), 0);
        assert_int_equal(kvt_index_at(&idx, ids[i])->state, KVT_ENTRY_PENDING);
    }
    struct kvt_key extra = {1, 1};
    uint32_t id;
    assert_int_equal(kvt_index_insert(&idx, OID(1, extra), &id), KVT_E_INDEXFULL);
    for (uint32_t i = 0; i < 64; i++) {
        struct kvt_key k = {i * 7919u, i};
        assert_int_equal(kvt_index_find(&idx, OID(1 + i % 2, k)), ids[i]);
        /* The namespace is part of the identity. */
        assert_int_equal(kvt_index_find(&idx, OID(3, k)), KVT_INDEX_NIL);
    }
    for (uint32_t i = 0; i < 64; i += 2) {
        kvt_index_remove(&idx, ids[i]);
        struct kvt_key k = {i * 7919u, i};
        assert_int_equal(kvt_index_find(&idx, OID(1, k)), KVT_INDEX_NIL);
    }
    assert_int_equal(idx.n, 32);
    for (uint32_t i = 1; i < 64; i += 2) {
        struct kvt_key k = {i * 7919u, i};
        assert_int_equal(kvt_index_find(&idx, OID(2, k)), ids[i]);
    }
    /* Freed entries are reused. */
    assert_int_equal(kvt_index_insert(&idx, OID(1, extra), &id), 0);
    kvt_index_deinit(&idx);
}

/* The variant is part of the identity: versions of one chunk are separate entries, found and
 * removed independently. */
static void test_index_variants(void **state)
{
    (void)state;
    struct kvt_index idx;
    assert_int_equal(kvt_index_init(&idx, 16), 0);
    struct kvt_obj_id v[4];
    uint32_t ids[4];
    for (uint32_t i = 0; i < 4; i++) {
        v[i] = (struct kvt_obj_id){.ns_seed = 9, .key = {5, 6}, .variant = i * 1000u};
        assert_int_equal(kvt_index_insert(&idx, &v[i], &ids[i]), 0);
    }
    for (uint32_t i = 0; i < 4; i++)
        assert_int_equal(kvt_index_find(&idx, &v[i]), ids[i]);
    struct kvt_obj_id other = {.ns_seed = 9, .key = {5, 6}, .variant = 7};
    assert_int_equal(kvt_index_find(&idx, &other), KVT_INDEX_NIL);
    kvt_index_remove(&idx, ids[1]);
    assert_int_equal(kvt_index_find(&idx, &v[1]), KVT_INDEX_NIL);
    assert_int_equal(kvt_index_find(&idx, &v[0]), ids[0]);
    assert_int_equal(kvt_index_find(&idx, &v[2]), ids[2]);
    assert_int_equal(kvt_index_find(&idx, &v[3]), ids[3]);
    kvt_index_deinit(&idx);
}

static const struct kvt_ns_def def = {.model_id = "m",
                                      .layers = 2,
                                      .kv_heads = 4,
                                      .head_dim = 64,
                                      .dtype = KVT_DTYPE_BF16,
                                      .tokens_per_chunk = 16};

static void test_ns_register_and_resolve(void **state)
{
    (void)state;
    struct kvt_ns_table t;
    assert_int_equal(kvt_ns_table_init(&t, 2), 0);
    const struct kvt_ns *a, *a2, *b, *r;
    const char *why = NULL;
    assert_int_equal(kvt_ns_register(&t, "alice", &def, 64, &a, &why), 0);
    assert_int_equal(a->bytes_per_token, 2 * 2 * 4 * 64 * 2);
    assert_int_equal(a->chunk_bytes, a->bytes_per_token * 16);
    assert_int_equal(kvt_ns_register(&t, "alice", &def, 64, &a2, &why), 0);
    assert_ptr_equal(a, a2); /* idempotent */
    assert_int_equal(kvt_ns_register(&t, "bob", &def, 64, &b, &why), 0);
    assert_true(a->seed != b->seed);
    assert_int_equal(kvt_ns_resolve(&t, a->id, "alice", &r), 0);
    assert_int_equal(kvt_ns_resolve(&t, a->id, "bob", &r), KVT_E_ACCESS);
    assert_int_equal(kvt_ns_resolve(&t, 0, "alice", &r), KVT_E_NONS);
    assert_int_equal(kvt_ns_resolve(&t, 99, "alice", &r), KVT_E_NONS);
    struct kvt_ns_def other = def;
    other.layers = 3;
    /* Both slots are held by connections: the table is full. */
    kvt_ns_hold(&t, kvt_ns_slot(a));
    kvt_ns_hold(&t, kvt_ns_slot(b));
    assert_int_equal(kvt_ns_register(&t, "alice", &other, 64, &r, &why), KVT_E_FULL);
    /* Once bob's connection lets go and bob stores nothing, his slot is reclaimed, under a new
     * id: the old one is unknown, never the new namespace. */
    uint32_t old_b = b->id;
    kvt_ns_release(&t, kvt_ns_slot(b));
    assert_int_equal(kvt_ns_register(&t, "alice", &other, 64, &r, &why), 0);
    assert_int_equal(kvt_ns_slot(r), 1);
    assert_true(r->id != old_b);
    assert_int_equal(kvt_ns_resolve(&t, old_b, "bob", &r), KVT_E_NONS);
    assert_int_equal(t.reclaimed, 1);
    kvt_ns_table_deinit(&t);
}

static void test_ns_quota_and_objects(void **state)
{
    (void)state;
    struct kvt_ns_table t;
    assert_int_equal(kvt_ns_table_init(&t, 8), 0);
    const struct kvt_ns *a, *b, *r;
    const char *why = NULL;
    struct kvt_ns_def d2 = def, d3 = def;
    d2.layers = 3;
    d3.layers = 4;
    assert_int_equal(kvt_ns_register(&t, "alice", &def, 2, &a, &why), 0);
    assert_int_equal(kvt_ns_register(&t, "alice", &d2, 2, &b, &why), 0);
    kvt_ns_hold(&t, kvt_ns_slot(a));
    t.objects[kvt_ns_slot(b)] = 5; /* b stores chunks: not idle either */
    assert_int_equal(kvt_ns_register(&t, "alice", &d3, 2, &r, &why), KVT_E_QUOTA);
    assert_non_null(why);
    /* Another tenant is not limited by alice's quota. */
    assert_int_equal(kvt_ns_register(&t, "bob", &d3, 2, &r, &why), 0);
    t.objects[kvt_ns_slot(a)] = 3;
    assert_int_equal(kvt_ns_tenant_objects(&t, a), 8);
    assert_int_equal(kvt_ns_tenant_objects(&t, r), 0);
    kvt_ns_table_deinit(&t);
}

static void test_ns_chunk_size_overflow(void **state)
{
    (void)state;
    struct kvt_ns_table t;
    assert_int_equal(kvt_ns_table_init(&t, 8), 0);
    const struct kvt_ns *r;
    const char *why = NULL;
    /* layers 43691 x kv_heads 52232 x head_dim 45712 used to wrap to an 8,192-byte chunk. */
    struct kvt_ns_def d = def;
    d.layers = 43691;
    d.kv_heads = 52232;
    d.head_dim = 45712;
    d.tokens_per_chunk = 256;
    assert_int_equal(kvt_ns_register(&t, "x", &d, 64, &r, &why), KVT_E_INVAL);
    assert_non_null(why);
    d.tokens_per_chunk = 1 << 16;
    assert_int_equal(kvt_ns_register(&t, "x", &d, 64, &r, &why), KVT_E_INVAL);
    assert_int_equal(t.n, 0);
    kvt_ns_table_deinit(&t);
}

static void test_ns_rejects_bad_geometry(void **state)
{
    (void)state;
    struct kvt_ns_table t;
    assert_int_equal(kvt_ns_table_init(&t, 8), 0);
    const struct kvt_ns *r;
    const char *why = NULL;
    struct kvt_ns_def d;
    d = def;
    d.layers = 0;
    assert_int_equal(kvt_ns_register(&t, "x", &d, 64, &r, &why), KVT_E_INVAL);
    assert_non_null(why);
    d = def;
    d.dtype = 7;
    assert_int_equal(kvt_ns_register(&t, "x", &d, 64, &r, &why), KVT_E_INVAL);
    d = def;
    d.head_dim = 1u << 20;
    assert_int_equal(kvt_ns_register(&t, "x", &d, 64, &r, &why), KVT_E_INVAL);
    d = def;
    d.model_id = "";
    assert_int_equal(kvt_ns_register(&t, "x", &d, 64, &r, &why), KVT_E_INVAL);
    d = def;
    d.rotary_dims = 65;
    assert_int_equal(kvt_ns_register(&t, "x", &d, 64, &r, &why), KVT_E_INVAL);
    assert_int_equal(t.n, 0);
    kvt_ns_table_deinit(&t);
}

static void test_arena_allocator(void **state)
{
    (void)state;
    struct kvt_arena_alloc a;
    assert_int_equal(kvt_arena_alloc_init(&a, 64 * 1024), 0);
    uint64_t o1, o2, o3, o4;
    assert_int_equal(kvt_arena_alloc_get(&a, 1, &o1), 0);
    assert_int_equal(kvt_arena_alloc_get(&a, 4097, &o2), 0);
    assert_int_equal(o1 % 4096, 0);
    assert_int_equal(o2, 4096); /* sizes round up to 4 KiB */
    assert_int_equal(kvt_arena_alloc_get(&a, 52 * 1024, &o3), 0);
    assert_int_equal(kvt_arena_alloc_get(&a, 4096, &o4), KVT_E_NOMEM);
    assert_int_equal(kvt_arena_alloc_get(&a, 0, &o4), KVT_E_NOMEM);
    /* Freeing all three coalesces back to one extent that fits the whole arena. */
    kvt_arena_alloc_put(&a, o2);
    kvt_arena_alloc_put(&a, o1);
    kvt_arena_alloc_put(&a, o3);
    kvt_arena_alloc_put(&a, 12345); /* unknown: ignored */
    assert_int_equal(a.n_free, 1);
    assert_int_equal(kvt_arena_alloc_get(&a, 64 * 1024, &o4), 0);
    assert_int_equal(o4, 0);
    kvt_arena_alloc_deinit(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_index_insert_find_remove),
        cmocka_unit_test(test_index_variants),
        cmocka_unit_test(test_ns_register_and_resolve),
        cmocka_unit_test(test_ns_rejects_bad_geometry),
        cmocka_unit_test(test_ns_quota_and_objects),
        cmocka_unit_test(test_ns_chunk_size_overflow),
        cmocka_unit_test(test_arena_allocator),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
