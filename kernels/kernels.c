/*
 * Kernel variant selection (see kernels.h). The active table is one atomic pointer: the first
 * kvt_kernels() call selects it, kvt_kernels_force() replaces it. Selection is idempotent, so
 * two threads racing through the first call store the same table.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/internal.h"
#include "kvtier/errors.h"

#if defined(__x86_64__)
#include <cpuid.h>

/* F16C (CPUID.1:ECX bit 29). Asked of cpuid directly: clang's __builtin_cpu_supports does not
 * know the name (the fuzz build uses clang). */
static int has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}
#endif

static _Atomic(const struct kvt_kernels *) g_active;

static const char *const g_names[KVT_KERNELS_VARIANT_COUNT] = {
    [KVT_KERNELS_AUTO] = "auto",
    [KVT_KERNELS_REF] = "ref",
    [KVT_KERNELS_AVX2] = "avx2",
    [KVT_KERNELS_AVX512] = "avx512",
};

/* The table of v if the build has it and the CPU can run it. */
static const struct kvt_kernels *table_of(enum kvt_kernels_variant v)
{
    switch (v) {
    case KVT_KERNELS_REF:
        return &kvt__kernels_ref;
#if defined(__x86_64__)
    case KVT_KERNELS_AVX2:
        /* F16C converts the fp16 vectors of the sums and the bound (every AVX2 CPU has it). */
        return __builtin_cpu_supports("avx2") && has_f16c() ? &kvt__kernels_avx2 : NULL;
    case KVT_KERNELS_AVX512:
        /* The 16-bit lane operations of the shuffles and the min/max need BW besides F. */
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
                   ? &kvt__kernels_avx512
                   : NULL;
#endif
    default:
        return NULL;
    }
}

static const struct kvt_kernels *best(void)
{
    for (int v = KVT_KERNELS_VARIANT_COUNT - 1; v > KVT_KERNELS_AUTO; v--) {
        const struct kvt_kernels *t = table_of((enum kvt_kernels_variant)v);
        if (t)
            return t;
    }
    return &kvt__kernels_ref;
}

/* What start-up picks: KVT_KERNELS when it names a variant this CPU has, else the best. *rc is
 * KVT_E_INVAL when KVT_KERNELS is set to something unusable. */
static const struct kvt_kernels *startup_choice(int *rc)
{
    const char *env = getenv("KVT_KERNELS");
    enum kvt_kernels_variant v;
    *rc = 0;
    if (!env || !*env)
        return best();
    if (kvt_kernels_parse(env, &v) == 0 && table_of(v))
        return table_of(v);
    *rc = KVT_E_INVAL;
    return best();
}

const struct kvt_kernels *kvt_kernels(void)
{
    const struct kvt_kernels *t = atomic_load_explicit(&g_active, memory_order_acquire);
    if (t)
        return t;
    int rc;
    t = startup_choice(&rc);
    const struct kvt_kernels *expected = NULL;
    /* A concurrent force wins over the implicit first selection. */
    if (!atomic_compare_exchange_strong(&g_active, &expected, t))
        return expected;
    return t;
}

const struct kvt_kernels *kvt_kernels_variant(enum kvt_kernels_variant v)
{
    int rc;
    if (v == KVT_KERNELS_AUTO)
        return startup_choice(&rc);
    return table_of(v);
}

int kvt_kernels_force(enum kvt_kernels_variant v)
{
    const struct kvt_kernels *t;
    int rc = 0;
    if ((int)v < 0 || v >= KVT_KERNELS_VARIANT_COUNT)
        return KVT_E_INVAL;
    if (v == KVT_KERNELS_AUTO) {
        t = startup_choice(&rc);
    } else {
        t = table_of(v);
        if (!t)
            return -ENOTSUP;
    }
    atomic_store_explicit(&g_active, t, memory_order_release);
    return rc;
}

int kvt_kernels_parse(const char *name, enum kvt_kernels_variant *out)
{
    if (!name || !out)
        return KVT_E_INVAL;
    for (int v = KVT_KERNELS_REF; v < KVT_KERNELS_VARIANT_COUNT; v++) {
        if (strcmp(name, g_names[v]) == 0) {
            *out = (enum kvt_kernels_variant)v;
            return 0;
        }
    }
    return KVT_E_INVAL;
}

const char *kvt_kernels_variant_name(enum kvt_kernels_variant v)
{
    if ((int)v < 0 || v >= KVT_KERNELS_VARIANT_COUNT)
        return "unknown";
    return g_names[v];
}
