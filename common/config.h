/*
 * Declarative configuration tables. A component describes its settings once (key, type, field
 * offset, default, limits, documentation, whether it may change at run time); the same table then
 * drives the config file, command-line overrides, runtime get/set and --dump-config, so they can
 * never disagree. Values live in a plain struct owned by the caller; strings are fixed-size arrays
 * inside it, so setting a value never allocates.
 */
#ifndef KVT_COMMON_CONFIG_H
#define KVT_COMMON_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum kvt_cfg_type {
    KVT_CFG_U64,   /* unsigned integer */
    KVT_CFG_BYTES, /* unsigned integer with optional K, M, G, T suffix (binary units) */
    KVT_CFG_BOOL,  /* true/false, yes/no, on/off, 1/0 */
    KVT_CFG_DOUBLE,
    KVT_CFG_STR, /* fixed-size char array of str_cap bytes */
    KVT_CFG_ENUM /* string that must be one of choices; stored as a char array too */
};

#define KVT_CFG_RUNTIME 0x1u /* may be changed with Config set while running */
#define KVT_CFG_ADMIN 0x2u   /* changing it at run time needs an admin uid (admin_uids) */
#define KVT_CFG_FAULT 0x4u   /* fault injection: settable only when fault_injection is on */

struct kvt_cfg_entry {
    const char *key;
    enum kvt_cfg_type type;
    size_t offset;  /* of the field inside the config struct */
    size_t str_cap; /* STR/ENUM: size of the char array */
    const char *def;
    double min, max;            /* numeric limits (inclusive); ignored when min > max */
    const char *const *choices; /* ENUM: NULL-terminated */
    unsigned flags;
    const char *doc;
};

struct kvt_cfg_table {
    const struct kvt_cfg_entry *entries;
    size_t n;
};

/* Applies every default. Returns 0, or KVT_E_BADCONFIG when a default itself is invalid. */
int kvt_cfg_defaults(const struct kvt_cfg_table *t, void *obj);

/* Sets key to the textual value. runtime != 0 refuses keys without KVT_CFG_RUNTIME
 * (KVT_E_READONLY). Unknown key or bad value: KVT_E_BADCONFIG, with a reason in err. On error
 * nothing changes. */
int kvt_cfg_set(const struct kvt_cfg_table *t, void *obj, const char *key, const char *value,
                int runtime, char *err, size_t err_cap);

/* The entry of key, or NULL. */
const struct kvt_cfg_entry *kvt_cfg_find(const struct kvt_cfg_table *t, const char *key);

/* Writes the current value of key as text into buf. KVT_E_BADCONFIG for an unknown key. */
int kvt_cfg_get(const struct kvt_cfg_table *t, const void *obj, const char *key, char *buf,
                size_t cap);

/* Loads "key = value" lines ('#' starts a comment). Stops at the first bad line and reports
 * "path:line: reason" in err. */
int kvt_cfg_load_file(const struct kvt_cfg_table *t, void *obj, const char *path, char *err,
                      size_t err_cap);

/* Writes every key with its documentation and current value, in config-file syntax. */
void kvt_cfg_dump(const struct kvt_cfg_table *t, const void *obj, FILE *out);

/* Parses a size like "64M" or "4096". Returns 0 or KVT_E_BADCONFIG. */
int kvt_cfg_parse_bytes(const char *text, uint64_t *out);

#endif
