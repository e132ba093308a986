/*
 * kvtier: the command-line client. Health checks, stats (table, JSON or Prometheus), put/get of a
 * file as a chunk, lookup, delete and runtime config, all through libkvtier.
 *
 * Chunks live in a namespace; the CLI registers one from its geometry flags. The defaults describe
 * a "blob" geometry (1 layer, 1 KV head, head_dim 2048, fp8: 4096 bytes per token), so any file
 * whose size is a multiple of 4 KiB can be stored as a chunk.
 *
 * Numbers on the command line are decimal digits only, checked against a range: a typo must not
 * turn into a different value ("abc" into 0, 4294967424 into 128), so anything else is refused
 * with exit status 2.
 */
#define XXH_STATIC_LINKING_ONLY
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "common/paths.h"
#include "common/prom.h"
#include "common/stats.h"
#include "common/version.h"
#include "kvtier/kvtier.h"

/* Ranges of the numeric options. The geometry bounds keep the chunk size computable; the chunk
 * itself must also stay below CLI_CHUNK_BYTES_MAX, since the CLI maps an arena that large. */
#define CLI_TIMEOUT_MS_MAX 3600000u
#define CLI_LAYERS_MAX 4096u
#define CLI_KV_HEADS_MAX 4096u
#define CLI_HEAD_DIM_MAX 65536u
#define CLI_TOKENS_PER_CHUNK_MAX (1u << 24)
#define CLI_CHUNK_BYTES_MAX (64ull << 30)

struct cli {
    const char *socket;
    const char *tenant;
    int json;
    uint32_t timeout_ms;
    struct kvt_ns_spec spec;
};

static void usage(FILE *out)
{
    char def[KVT_SOCKET_PATH_MAX];
    if (kvt_socket_default(def, sizeof(def)))
        snprintf(def, sizeof(def), "(none)");
    fprintf(out,
            "usage: kvtier [OPTIONS] COMMAND [ARGS]\n"
            "commands:\n"
            "  ping                         check that the daemon answers (prints round-trip)\n"
            "  stats [--json|--prometheus]  daemon statistics with type and help; --prometheus:\n"
            "                               the Prometheus text format (docs/stats.md)\n"
            "  put FILE [KEY]               store FILE as one chunk (KEY: 32 hex digits; default:\n"
            "                               a hash of the content); prints the key\n"
            "  get KEY FILE                 write the chunk KEY to FILE ('-' = stdout)\n"
            "  lookup KEY...                how many leading keys are cached, and where\n"
            "  delete KEY...                remove chunks\n"
            "  a KEY may name a variant of the chunk as KEY:N (decimal; KEY alone is variant 0)\n"
            "  config get KEY               read a runtime setting\n"
            "  config set KEY VALUE         change a runtime setting\n"
            "options:\n"
            "  --socket PATH     daemon socket (default $KVTIER_SOCKET or %s)\n"
            "  --tenant NAME     tenant (default \"default\")\n"
            "  --timeout-ms N    per-call timeout, 1..%u (default 5000)\n"
            "  --json            machine-readable output\n"
            "  namespace geometry for put/get/lookup/delete:\n"
            "  --model ID (cli-blob) --layers N (1) --kv-heads N (1) --head-dim N (2048)\n"
            "  --dtype fp16|bf16|fp32|fp8 (fp8) --tokens-per-chunk N (65536)\n"
            "  numbers are decimal digits only; out-of-range values are refused (exit 2)\n",
            def, CLI_TIMEOUT_MS_MAX);
}

static int die(const char *what, int rc)
{
    fprintf(stderr, "kvtier: %s: %s (%s)\n", what, kvt_strerror(rc), kvt_strerror_name(rc));
    return 1;
}

/* Parses the value of option opt as a decimal number in [min, max] into *out. Digits only: no
 * sign, space, suffix or base prefix. Prints why and returns -1 otherwise. */
static int parse_num(const char *opt, const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
    char *end = NULL;
    unsigned long long v = 0;
    int ok = s[0] >= '0' && s[0] <= '9';
    if (ok) {
        errno = 0;
        v = strtoull(s, &end, 10);
        ok = *end == '\0';
        if (ok && (errno == ERANGE || v < min || v > max)) {
            fprintf(stderr, "kvtier: %s: %s is out of range (%u..%u)\n", opt, s, min, max);
            return -1;
        }
    }
    if (!ok) {
        fprintf(stderr, "kvtier: %s: '%s' is not a number (decimal digits, %u..%u)\n", opt, s, min,
                max);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

static int parse_dtype(const char *s, enum kvt_dtype *out)
{
    static const char *const names[] = {"fp16", "bf16", "fp32", "fp8"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i])) {
            *out = (enum kvt_dtype)i;
            return 0;
        }
    return -1;
}

static int open_client(const struct cli *o, struct kvt_client **c, uint64_t arena_bytes)
{
    struct kvt_connect_opts co = {.socket_path = o->socket,
                                  .tenant = o->tenant,
                                  .arena_bytes = arena_bytes,
                                  .timeout_ms = o->timeout_ms};
    int rc = kvt_connect(&co, c);
    if (rc)
        return die("connect", rc);
    return 0;
}

static int cmd_ping(const struct cli *o)
{
    struct kvt_client *c;
    if (open_client(o, &c, 4096))
        return 1;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int rc = kvt_ping(c);
    clock_gettime(CLOCK_MONOTONIC, &b);
    char sock[KVT_SOCKET_PATH_MAX];
    snprintf(sock, sizeof(sock), "%s", kvt_socket_path(c));
    kvt_close(c);
    if (rc)
        return die("ping", rc);
    double us = (double)(b.tv_sec - a.tv_sec) * 1e6 + (double)(b.tv_nsec - a.tv_nsec) / 1e3;
    if (o->json)
        printf("{\"ok\": true, \"rtt_us\": %.1f}\n", us);
    else
        printf("pong from %s in %.1f us\n", sock, us);
    return 0;
}

/* JSON string: the stat strings are ASCII from the daemon, but a quote, backslash or control
 * character must still not break the document. */
static void json_str(const char *v)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

/* {"name": value, ...} as before (scripts read d["puts"]), a histogram as {"count", "sum",
 * "buckets": [{"le", "count"}...]} (not cumulative; the last le is "+Inf"), and the type, unit
 * and help of every stat under "_meta" (no stat name starts with '_'). */
static void stats_json(const struct kvt_stat *st, size_t n)
{
    printf("{");
    for (size_t i = 0; i < n; i++) {
        printf("%s", i ? ", " : "");
        json_str(st[i].name);
        if (st[i].type != KVT_STAT_HISTOGRAM) {
            printf(": %" PRIu64, st[i].value);
            continue;
        }
        printf(": {\"count\": %" PRIu64 ", \"sum\": %" PRIu64 ", \"buckets\": [", st[i].value,
               st[i].sum);
        for (size_t b = 0; b < st[i].n_buckets; b++) {
            printf("%s{\"le\": ", b ? ", " : "");
            if (st[i].bucket_le[b] == UINT64_MAX)
                printf("\"+Inf\"");
            else
                printf("%" PRIu64, st[i].bucket_le[b]);
            printf(", \"count\": %" PRIu64 "}", st[i].bucket_counts[b]);
        }
        printf("]}");
    }
    printf("%s\"_meta\": {", n ? ", " : "");
    for (size_t i = 0; i < n; i++) {
        printf("%s", i ? ", " : "");
        json_str(st[i].name);
        printf(": {\"type\": \"%s\", \"unit\": ", kvt_stat_type_name(st[i].type));
        json_str(st[i].unit);
        printf(", \"help\": ");
        json_str(st[i].help);
        printf("}");
    }
    printf("}}\n");
}

/* The Prometheus text exposition format, from the renderer the daemon's /metrics endpoint uses
 * (common/prom.h: tier and tenant labels, HELP, TYPE, cumulative buckets). Returns nonzero when
 * the stats make no valid exposition. */
static int stats_prometheus(const struct kvt_stat *st, size_t n)
{
    for (size_t cap = 64 * 1024; cap <= 64u << 20; cap *= 2) {
        char *buf = malloc(cap);
        if (!buf)
            break;
        struct kvt_prom_out out = {.buf = buf, .cap = cap};
        int rc = kvt_prom_render(st, n, &out);
        if (rc != KVT_E_SMALLBUF) {
            if (rc)
                fprintf(stderr, "kvtier: stats cannot be shown as Prometheus text: %s\n",
                        kvt_strerror(rc));
            else
                fwrite(buf, 1, out.len, stdout);
            free(buf);
            return rc ? 1 : 0;
        }
        free(buf);
    }
    fprintf(stderr, "kvtier: stats too large to render\n");
    return 1;
}

/* One row per stat: name, type, value (a histogram's count), unit and help; a histogram adds a
 * row of its non-empty buckets and its sum. */
static void stats_table(const struct kvt_stat *st, size_t n)
{
    printf("%-34s %-9s %20s %-5s %s\n", "stat", "type", "value", "unit", "help");
    for (size_t i = 0; i < n; i++) {
        printf("%-34s %-9s %20" PRIu64 " %-5s %s\n", st[i].name, kvt_stat_type_name(st[i].type),
               st[i].value, st[i].unit, st[i].help);
        if (st[i].type != KVT_STAT_HISTOGRAM)
            continue;
        printf("%-34s", "");
        for (size_t b = 0; b < st[i].n_buckets; b++) {
            if (!st[i].bucket_counts[b])
                continue;
            if (st[i].bucket_le[b] == UINT64_MAX)
                printf(" +Inf:%" PRIu64, st[i].bucket_counts[b]);
            else
                printf(" <=%" PRIu64 ":%" PRIu64, st[i].bucket_le[b], st[i].bucket_counts[b]);
        }
        printf(" sum:%" PRIu64 "\n", st[i].sum);
    }
}

static int cmd_stats(const struct cli *o, char **args, int n_args)
{
    int prometheus = 0;
    for (int a = 0; a < n_args; a++) {
        if (strcmp(args[a], "--prometheus")) {
            fprintf(stderr, "kvtier: stats takes --json or --prometheus, not %s\n", args[a]);
            return 2;
        }
        prometheus = 1;
    }
    struct kvt_client *c;
    if (open_client(o, &c, 4096))
        return 1;
    struct kvt_stat *st;
    size_t n;
    int rc = kvt_stats(c, &st, &n);
    kvt_close(c);
    if (rc)
        return die("stats", rc);
    int ret = 0;
    if (prometheus)
        ret = stats_prometheus(st, n);
    else if (o->json)
        stats_json(st, n);
    else
        stats_table(st, n);
    kvt_stats_free(st, n);
    return ret;
}

/* Parses KEY or KEY:VARIANT arguments into keys and variants (n entries each). */
static int parse_keys(char **args, int n, struct kvt_key *keys, uint32_t *variants)
{
    for (int i = 0; i < n; i++) {
        char hex[33];
        const char *colon = strchr(args[i], ':');
        size_t len = colon ? (size_t)(colon - args[i]) : strlen(args[i]);
        variants[i] = 0;
        if (len < sizeof(hex)) {
            memcpy(hex, args[i], len);
            hex[len] = '\0';
        }
        if (len >= sizeof(hex) || kvt_key_parse(hex, &keys[i])) {
            fprintf(stderr, "kvtier: '%s' is not a key (32 hex digits, then :VARIANT or not)\n",
                    args[i]);
            return -1;
        }
        if (colon && parse_num("variant", colon + 1, 0, UINT32_MAX, &variants[i]))
            return -1;
    }
    return 0;
}

/* KEY, or KEY:VARIANT for a variant other than 0, into buf (at least 44 bytes). */
static const char *key_text(const struct kvt_key *key, uint32_t variant, char *buf)
{
    kvt_key_format(key, buf);
    if (variant)
        snprintf(buf + 32, 12, ":%" PRIu32, variant);
    return buf;
}

static int register_ns(const struct cli *o, struct kvt_client *c, struct kvt_ns_info *ns)
{
    int rc = kvt_register(c, &o->spec, ns);
    if (rc)
        return die("register namespace", rc);
    return 0;
}

static int cmd_put(const struct cli *o, char **args, int n)
{
    if (n < 1 || n > 2) {
        usage(stderr);
        return 2;
    }
    FILE *f = fopen(args[0], "rb");
    if (!f) {
        fprintf(stderr, "kvtier: %s: %s\n", args[0], strerror(errno));
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    struct kvt_client *c;
    if (size <= 0 || open_client(o, &c, (uint64_t)size + 4096)) {
        if (size <= 0)
            fprintf(stderr, "kvtier: %s is empty\n", args[0]);
        fclose(f);
        return 1;
    }
    struct kvt_ns_info ns;
    uint8_t *buf = kvt_arena_alloc(c, (size_t)size);
    int ok = buf && fread(buf, 1, (size_t)size, f) == (size_t)size;
    fclose(f);
    if (!ok || register_ns(o, c, &ns)) {
        if (!ok)
            fprintf(stderr, "kvtier: cannot read %s\n", args[0]);
        kvt_close(c);
        return 1;
    }
    if ((uint64_t)size % ns.bytes_per_token ||
        (uint64_t)size / ns.bytes_per_token > ns.tokens_per_chunk) {
        fprintf(stderr,
                "kvtier: %s is %ld bytes; this geometry needs a multiple of %" PRIu64
                " bytes, at most %" PRIu64 "\n",
                args[0], size, ns.bytes_per_token, ns.chunk_bytes);
        kvt_close(c);
        return 1;
    }
    struct kvt_key key;
    uint32_t variant = 0;
    if (n == 2) {
        if (parse_keys(&args[1], 1, &key, &variant)) {
            kvt_close(c);
            return 2;
        }
    } else {
        XXH128_hash_t h = XXH3_128bits_withSeed(buf, (size_t)size, ns.seed);
        key = (struct kvt_key){h.low64, h.high64};
    }
    int rc = kvt_put_v(c, ns.handle, &key, variant, buf, (size_t)size,
                       (uint32_t)((uint64_t)size / ns.bytes_per_token));
    kvt_close(c);
    if (rc)
        return die("put", rc);
    char hex[44];
    if (o->json)
        printf("{\"key\": \"%s\", \"variant\": %" PRIu32 ", \"bytes\": %ld}\n",
               kvt_key_format(&key, hex), variant, size);
    else
        printf("%s\n", key_text(&key, variant, hex));
    return 0;
}

static const char *tier_name(enum kvt_tier_id t)
{
    static const char *const names[] = {"none", "gpu", "cpu", "disk", "remote"};
    return (unsigned)t < 5 ? names[t] : "?";
}

static int cmd_get(const struct cli *o, char **args, int n)
{
    struct kvt_key key;
    uint32_t variant;
    if (n != 2) {
        usage(stderr);
        return 2;
    }
    if (parse_keys(args, 1, &key, &variant))
        return 2;
    struct kvt_client *c;
    struct kvt_ns_info ns;
    uint64_t arena = (o->spec.tokens_per_chunk * (uint64_t)o->spec.layers * 2 * o->spec.kv_heads *
                      o->spec.head_dim * kvt_dtype_size(o->spec.dtype)) +
                     4096; /* bounded in main() */
    if (open_client(o, &c, arena))
        return 1;
    if (register_ns(o, c, &ns)) {
        kvt_close(c);
        return 1;
    }
    uint8_t *buf = kvt_arena_alloc(c, ns.chunk_bytes);
    size_t len = 0;
    enum kvt_tier_id tier;
    int rc = buf ? kvt_get_v(c, ns.handle, &key, variant, buf, ns.chunk_bytes, &len, &tier)
                 : KVT_E_NOMEM;
    if (rc) {
        kvt_close(c);
        return die("get", rc);
    }
    FILE *f = strcmp(args[1], "-") ? fopen(args[1], "wb") : stdout;
    int ok = f && fwrite(buf, 1, len, f) == len;
    if (f && f != stdout)
        ok &= fclose(f) == 0;
    kvt_close(c);
    if (!ok) {
        fprintf(stderr, "kvtier: cannot write %s\n", args[1]);
        return 1;
    }
    if (f != stdout)
        fprintf(stderr, "%zu bytes from the %s tier\n", len, tier_name(tier));
    return 0;
}

static int cmd_keys(const struct cli *o, char **args, int n, int is_delete)
{
    if (n < 1) {
        usage(stderr);
        return 2;
    }
    struct kvt_key *keys = calloc((size_t)n, sizeof(*keys));
    uint32_t *variants = calloc((size_t)n, sizeof(*variants));
    enum kvt_tier_id *tiers = calloc((size_t)n, sizeof(*tiers));
    int *status = calloc((size_t)n, sizeof(*status));
    struct kvt_client *c = NULL;
    struct kvt_ns_info ns;
    int ret = 1;
    if (!keys || !variants || !tiers || !status || parse_keys(args, n, keys, variants))
        goto out;
    if (open_client(o, &c, 4096) || register_ns(o, c, &ns))
        goto out;
    int rc;
    if (is_delete) {
        rc = kvt_delete_v(c, ns.handle, keys, variants, (size_t)n, status);
        if (rc) {
            die("delete", rc);
            goto out;
        }
        ret = 0;
        for (int i = 0; i < n; i++) {
            printf("%s %s\n", args[i], status[i] ? kvt_strerror_name(status[i]) : "deleted");
            ret |= status[i] != 0;
        }
    } else {
        size_t hits = 0;
        rc = kvt_lookup_v(c, ns.handle, keys, variants, (size_t)n, &hits, tiers);
        if (rc) {
            die("lookup", rc);
            goto out;
        }
        if (o->json) {
            printf("{\"hits\": %zu, \"tiers\": [", hits);
            for (size_t i = 0; i < hits; i++)
                printf("%s\"%s\"", i ? ", " : "", tier_name(tiers[i]));
            printf("]}\n");
        } else {
            printf("%zu of %d leading chunks cached\n", hits, n);
            for (size_t i = 0; i < hits; i++)
                printf("%s %s\n", args[i], tier_name(tiers[i]));
        }
        ret = 0;
    }
out:
    kvt_close(c);
    free(keys);
    free(variants);
    free(tiers);
    free(status);
    return ret;
}

static int cmd_config(const struct cli *o, char **args, int n)
{
    struct kvt_client *c;
    int is_get = n == 2 && !strcmp(args[0], "get");
    int is_set = n == 3 && !strcmp(args[0], "set");
    if (!is_get && !is_set) {
        usage(stderr);
        return 2;
    }
    if (open_client(o, &c, 4096))
        return 1;
    char val[512];
    int rc = is_set ? kvt_config_set(c, args[1], args[2]) : 0;
    if (!rc)
        rc = kvt_config_get(c, args[1], val, sizeof(val));
    kvt_close(c);
    if (rc)
        return die(args[1], rc);
    if (o->json)
        printf("{\"%s\": \"%s\"}\n", args[1], val);
    else
        printf("%s = %s\n", args[1], val);
    return 0;
}

int main(int argc, char **argv)
{
    struct cli o = {.timeout_ms = 5000,
                    .spec = {.model_id = "cli-blob",
                             .layers = 1,
                             .kv_heads = 1,
                             .head_dim = 2048,
                             .dtype = KVT_DTYPE_FP8,
                             .tokens_per_chunk = 65536}};
    int i = 1;
    for (; i < argc && !strncmp(argv[i], "--", 2); i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--json")) {
            o.json = 1;
            continue;
        }
        if (!strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--version")) {
            printf("kvtier %s\n", KVT_VERSION_STRING);
            return 0;
        }
        if (!v) {
            fprintf(stderr, "kvtier: %s needs a value\n", a);
            return 2;
        }
        i++;
        int bad = 0;
        if (!strcmp(a, "--socket"))
            o.socket = v;
        else if (!strcmp(a, "--tenant"))
            o.tenant = v;
        else if (!strcmp(a, "--timeout-ms"))
            bad = parse_num(a, v, 1, CLI_TIMEOUT_MS_MAX, &o.timeout_ms);
        else if (!strcmp(a, "--model"))
            o.spec.model_id = v;
        else if (!strcmp(a, "--layers"))
            bad = parse_num(a, v, 1, CLI_LAYERS_MAX, &o.spec.layers);
        else if (!strcmp(a, "--kv-heads"))
            bad = parse_num(a, v, 1, CLI_KV_HEADS_MAX, &o.spec.kv_heads);
        else if (!strcmp(a, "--head-dim"))
            bad = parse_num(a, v, 1, CLI_HEAD_DIM_MAX, &o.spec.head_dim);
        else if (!strcmp(a, "--tokens-per-chunk"))
            bad = parse_num(a, v, 1, CLI_TOKENS_PER_CHUNK_MAX, &o.spec.tokens_per_chunk);
        else if (!strcmp(a, "--dtype")) {
            if (parse_dtype(v, &o.spec.dtype)) {
                fprintf(stderr, "kvtier: unknown dtype %s\n", v);
                return 2;
            }
        } else {
            fprintf(stderr, "kvtier: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        if (bad)
            return 2;
    }
    /* The chunk size, multiplied out without overflowing: each factor is at least 1. */
    const uint32_t factors[] = {o.spec.layers, o.spec.kv_heads, o.spec.head_dim,
                                o.spec.tokens_per_chunk};
    uint64_t chunk_bytes = 2 * kvt_dtype_size(o.spec.dtype); /* K and V */
    for (size_t f = 0; f < sizeof(factors) / sizeof(factors[0]); f++) {
        if (chunk_bytes > CLI_CHUNK_BYTES_MAX / factors[f]) {
            fprintf(stderr, "kvtier: this geometry makes chunks larger than %llu bytes (64 GiB)\n",
                    CLI_CHUNK_BYTES_MAX);
            return 2;
        }
        chunk_bytes *= factors[f];
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[i++];
    char **args = argv + i;
    int n = argc - i;
    /* Options may also follow the command (e.g. "stats --json"). */
    if (n > 0 && !strcmp(args[n - 1], "--json")) {
        o.json = 1;
        n--;
    }
    if (!strcmp(cmd, "ping"))
        return cmd_ping(&o);
    if (!strcmp(cmd, "stats"))
        return cmd_stats(&o, args, n);
    if (!strcmp(cmd, "put"))
        return cmd_put(&o, args, n);
    if (!strcmp(cmd, "get"))
        return cmd_get(&o, args, n);
    if (!strcmp(cmd, "lookup"))
        return cmd_keys(&o, args, n, 0);
    if (!strcmp(cmd, "delete"))
        return cmd_keys(&o, args, n, 1);
    if (!strcmp(cmd, "config"))
        return cmd_config(&o, args, n);
    fprintf(stderr, "kvtier: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
