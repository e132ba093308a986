/* Unit tests for common/: the error list, the config table engine, chunk keys and key text, and
 * the allocation wrapper's accounting and injected failures. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/config.h"
#include "kvtier/kvtier.h"

static void test_errors(void **state)
{
    (void)state;
    assert_string_equal(kvt_strerror(0), "success");
    assert_string_equal(kvt_strerror_name(KVT_E_RANGE), "E_RANGE");
    assert_string_equal(kvt_strerror(KVT_E_NOTFOUND), "key not found");
    /* System errors pass through as -errno. */
    assert_string_equal(kvt_strerror_name(-2), "ENOENT");
    assert_non_null(kvt_strerror(-99999));
    assert_string_equal(kvt_strerror_name(12345), "UNKNOWN");
}

struct cfg {
    uint64_t n;
    uint64_t size;
    int flag;
    double ratio;
    char name[8];
    char mode[8];
};

static const char *const modes[] = {"lru", "cost", NULL};
static const struct kvt_cfg_entry entries[] = {
    {"n", KVT_CFG_U64, offsetof(struct cfg, n), 0, "5", 1, 10, NULL, KVT_CFG_RUNTIME, "a count"},
    {"size", KVT_CFG_BYTES, offsetof(struct cfg, size), 0, "4K", 0, 1e12, NULL, 0, "a size"},
    {"flag", KVT_CFG_BOOL, offsetof(struct cfg, flag), 0, "off", 1, 0, NULL, 0, "a flag"},
    {"ratio", KVT_CFG_DOUBLE, offsetof(struct cfg, ratio), 0, "0.5", 0, 1, NULL, 0, "a ratio"},
    {"name", KVT_CFG_STR, offsetof(struct cfg, name), 8, "abc", 1, 0, NULL, 0, "a name"},
    {"mode", KVT_CFG_ENUM, offsetof(struct cfg, mode), 8, "lru", 1, 0, modes, 0, "a mode"},
};
static const struct kvt_cfg_table table = {entries, sizeof(entries) / sizeof(entries[0])};

static void test_config_values(void **state)
{
    (void)state;
    struct cfg c;
    char err[128], v[64];
    assert_int_equal(kvt_cfg_defaults(&table, &c), 0);
    assert_int_equal(c.n, 5);
    assert_int_equal(c.size, 4096);
    assert_int_equal(c.flag, 0);
    assert_string_equal(c.mode, "lru");
    assert_int_equal(kvt_cfg_set(&table, &c, "size", "2MiB", 0, err, sizeof(err)), 0);
    assert_int_equal(c.size, 2u << 20);
    assert_int_equal(kvt_cfg_set(&table, &c, "size", "1G", 0, err, sizeof(err)), 0);
    assert_int_equal(c.size, 1u << 30);
    assert_int_equal(kvt_cfg_set(&table, &c, "flag", "yes", 0, err, sizeof(err)), 0);
    assert_int_equal(c.flag, 1);
    assert_int_equal(kvt_cfg_set(&table, &c, "mode", "cost", 0, err, sizeof(err)), 0);
    kvt_cfg_get(&table, &c, "mode", v, sizeof(v));
    assert_string_equal(v, "cost");

    /* Rejections change nothing. */
    struct cfg before = c;
    const char *bad[][2] = {{"n", "11"},        {"n", "0"},
                            {"n", "-1"},        {"n", "3x"},
                            {"size", "12Q"},    {"size", ""},
                            {"flag", "maybe"},  {"ratio", "1.5"},
                            {"ratio", "nan"},   {"name", "toolongname"},
                            {"mode", "random"}, {"nokey", "1"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(kvt_cfg_set(&table, &c, bad[i][0], bad[i][1], 0, err, sizeof(err)),
                         KVT_E_BADCONFIG);
        assert_true(strlen(err) > 0);
        assert_memory_equal(&c, &before, sizeof(c));
    }
    /* Only runtime keys may change at run time. */
    assert_int_equal(kvt_cfg_set(&table, &c, "size", "8K", 1, err, sizeof(err)), KVT_E_READONLY);
    assert_int_equal(kvt_cfg_set(&table, &c, "n", "7", 1, err, sizeof(err)), 0);
    assert_int_equal(c.n, 7);
}

static void test_config_file_and_dump(void **state)
{
    (void)state;
    char path[] = "/tmp/kvt-cfg-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "# comment\n\nn = 9   # trailing comment\n  name=xyz\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    struct cfg c;
    char err[256];
    memset(&c, 0, sizeof(c));
    kvt_cfg_defaults(&table, &c);
    assert_int_equal(kvt_cfg_load_file(&table, &c, path, err, sizeof(err)), 0);
    assert_int_equal(c.n, 9);
    assert_string_equal(c.name, "xyz");

    FILE *f = fopen(path, "w");
    fputs("n = 3\nbogus line\n", f);
    fclose(f);
    assert_int_equal(kvt_cfg_load_file(&table, &c, path, err, sizeof(err)), KVT_E_BADCONFIG);
    assert_non_null(strstr(err, ":2:"));

    /* A dump reloads to the same values. */
    f = fopen(path, "w");
    kvt_cfg_dump(&table, &c, f);
    fclose(f);
    struct cfg d;
    memset(&d, 0, sizeof(d));
    kvt_cfg_defaults(&table, &d);
    assert_int_equal(kvt_cfg_load_file(&table, &d, path, err, sizeof(err)), 0);
    assert_memory_equal(&c, &d, sizeof(c));
    unlink(path);
    assert_true(kvt_cfg_load_file(&table, &d, "/nonexistent/x.conf", err, sizeof(err)) < 0);
}

static void test_chunk_keys_chain(void **state)
{
    (void)state;
    struct kvt_ns_info ns = {.seed = 42, .tokens_per_chunk = 4};
    int32_t t[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    struct kvt_key k[3], k2[3], tail[1];
    assert_int_equal(kvt_chunk_keys(&ns, NULL, t, 12, k, 3), 3);
    /* Only full chunks get keys; max_keys bounds the output. */
    assert_int_equal(kvt_chunk_keys(&ns, NULL, t, 11, k2, 3), 2);
    assert_int_equal(kvt_chunk_keys(&ns, NULL, t, 12, k2, 1), 1);
    assert_memory_equal(&k2[0], &k[0], sizeof(k[0]));
    /* Continuing a chain from a parent gives the same keys as hashing it whole. */
    assert_int_equal(kvt_chunk_keys(&ns, &k[1], t + 8, 4, tail, 1), 1);
    assert_memory_equal(&tail[0], &k[2], sizeof(k[0]));
    /* The same tokens after a different prefix get a different key. */
    int32_t u[8] = {99, 2, 3, 4, 5, 6, 7, 8};
    assert_int_equal(kvt_chunk_keys(&ns, NULL, u, 8, k2, 2), 2);
    assert_memory_not_equal(&k2[1], &k[1], sizeof(k[0]));
    /* Another namespace seed gives other keys. */
    struct kvt_ns_info ns2 = ns;
    ns2.seed = 43;
    kvt_chunk_keys(&ns2, NULL, t, 4, k2, 1);
    assert_memory_not_equal(&k2[0], &k[0], sizeof(k[0]));
    assert_int_equal(kvt_chunk_keys(NULL, NULL, t, 12, k2, 3), 0);
}

static void test_key_text(void **state)
{
    (void)state;
    struct kvt_key k = {0x0123456789abcdefull, 0xfedcba9876543210ull}, back;
    char buf[33];
    assert_string_equal(kvt_key_format(&k, buf), "fedcba98765432100123456789abcdef");
    assert_int_equal(kvt_key_parse(buf, &back), 0);
    assert_memory_equal(&k, &back, sizeof(k));
    assert_int_equal(kvt_key_parse("xyz", &back), KVT_E_INVAL);
    assert_int_equal(kvt_key_parse("fedcba98765432100123456789abcdeg", &back), KVT_E_INVAL);
    assert_int_equal(kvt_dtype_size(KVT_DTYPE_BF16), 2);
    assert_int_equal(kvt_dtype_size(KVT_DTYPE_FP32), 4);
    assert_int_equal(kvt_dtype_size((enum kvt_dtype)9), 0);
}

static void test_alloc_accounting_and_failure(void **state)
{
    (void)state;
    uint64_t before = kvt_alloc_bytes(KVT_ALLOC_MISC);
    void *p = kvt_malloc(KVT_ALLOC_MISC, 1000);
    assert_non_null(p);
    assert_int_equal(kvt_alloc_bytes(KVT_ALLOC_MISC), before + 1000);
    kvt_free(KVT_ALLOC_MISC, p);
    assert_int_equal(kvt_alloc_bytes(KVT_ALLOC_MISC), before);
    kvt_alloc_fail_nth(2);
    void *a = kvt_calloc(KVT_ALLOC_MISC, 1, 8);
    void *b = kvt_calloc(KVT_ALLOC_MISC, 1, 8);
    void *c = kvt_calloc(KVT_ALLOC_MISC, 1, 8);
    assert_non_null(a);
    assert_null(b);
    assert_non_null(c);
    kvt_free(KVT_ALLOC_MISC, a);
    kvt_free(KVT_ALLOC_MISC, c);
    assert_null(kvt_calloc(KVT_ALLOC_MISC, SIZE_MAX / 2, 4)); /* overflow refused */
    assert_string_equal(kvt_alloc_tag_name(KVT_ALLOC_INDEX), "INDEX");
    /* Aligned blocks: aligned, accounted, freed like the others. */
    for (size_t align = 16; align <= 8192; align *= 2) {
        uint8_t *q = kvt_aligned_alloc(KVT_ALLOC_MISC, align, 12345);
        assert_non_null(q);
        assert_int_equal((uintptr_t)q % align, 0);
        memset(q, 0xab, 12345);
        assert_int_equal(kvt_alloc_bytes(KVT_ALLOC_MISC), before + 12345);
        kvt_free(KVT_ALLOC_MISC, q);
        assert_int_equal(kvt_alloc_bytes(KVT_ALLOC_MISC), before);
    }
    assert_null(kvt_aligned_alloc(KVT_ALLOC_MISC, 24, 100)); /* not a power of two */
    /* kvt_malloc blocks stay 16-byte aligned (SIMD code relies on it). */
    void *m = kvt_malloc(KVT_ALLOC_MISC, 3);
    assert_int_equal((uintptr_t)m % 16, 0);
    kvt_free(KVT_ALLOC_MISC, m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_config_values),
        cmocka_unit_test(test_config_file_and_dump),
        cmocka_unit_test(test_chunk_keys_chain),
        cmocka_unit_test(test_key_text),
        cmocka_unit_test(test_alloc_accounting_and_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
