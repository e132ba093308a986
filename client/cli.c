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
 * with exit status 2. So is every other usage error: an unknown option, an option without its
 * value, a missing or an extra argument. Options may come before or after the command; "--" ends
 * them (for a file whose name starts with "--").
 *
 * Exit status: 0 success, 1 the operation failed (daemon unreachable, key not found...), 2 usage.
 */
#define XXH_STATIC_LINKING_ONLY
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
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
#define CLI_TOP_FRAMES_MAX 1000000u
#define CLI_TOP_INTERVAL_MS_MIN 10u
#define CLI_TOP_INTERVAL_MS_MAX 60000u

struct cli {
    const char *socket;
    const char *tenant;
    int json;
    int prometheus;       /* stats --prometheus */
    uint32_t frames;      /* top: frames to print; 0 = until interrupted */
    uint32_t interval_ms; /* top: time between frames */
    uint32_t timeout_ms;
    struct kvt_ns_spec spec;
};

static void usage(FILE *out)
{
    char def[KVT_SOCKET_PATH_MAX];
    if (kvt_socket_default(def, sizeof(def)))
        snprintf(def, sizeof(def), "(none)");
    fprintf(
        out,
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
        "  config list                  every setting with its value, default and help\n"
        "  config get KEY               read a setting\n"
        "  config set KEY VALUE         change a runtime setting\n"
        "  top [--once|-n N] [--interval-ms N]\n"
        "                               live per-tier view (bytes, chunks, hit ratio, ops/s),\n"
        "                               refreshed every second until interrupted; --once: one\n"
        "                               frame (after one interval, for the rates); -n N: N frames\n"
        "options (before or after the command; -- ends them):\n"
        "  --socket PATH     daemon socket (default $KVTIER_SOCKET or %s)\n"
        "  --tenant NAME     tenant (default \"default\")\n"
        "  --timeout-ms N    per-call timeout, 1..%u (default 5000)\n"
        "  --json            machine-readable output\n"
        "  namespace geometry for put/get/lookup/delete:\n"
        "  --model ID (cli-blob) --layers N (1) --kv-heads N (1) --head-dim N (2048)\n"
        "  --dtype fp16|bf16|fp32|fp8 (fp8) --tokens-per-chunk N (65536)\n"
        "  numbers are decimal digits only; out-of-range values are refused (exit 2)\n"
        "  an option's value follows it or an '=' (--socket=PATH)\n"
        "exit status: 0 done, 1 the operation failed, 2 usage error\n",
        def, CLI_TIMEOUT_MS_MAX);
}

static int die(const char *what, int rc)
{
    fprintf(stderr, "kvtier: %s: %s (%s)\n", what, kvt_strerror(rc), kvt_strerror_name(rc));
    return 1;
}

/* A usage error: what is wrong, then where the usage is. Returns the exit status 2. */
__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...);
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "kvtier: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n(kvtier --help for the usage)\n");
    return 2;
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

/* The socket the library will try: --socket, else $KVTIER_SOCKET, else the default (the same
 * order as kvt_connect). */
static const char *socket_tried(const struct cli *o, char *buf, size_t cap)
{
    const char *env = getenv("KVTIER_SOCKET");
    if (o->socket && *o->socket)
        return o->socket;
    if (env && *env)
        return env;
    if (kvt_socket_default(buf, cap))
        return "(no default socket)";
    return buf;
}

/* Why nothing answers at path, as errno: kvt_connect says only E_DISCONNECTED, so the CLI asks
 * the kernel itself (one more connect, closed at once). 0 when this attempt did connect. */
static int socket_errno(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return errno;
    if (!S_ISSOCK(st.st_mode))
        return ENOTSOCK;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(a.sun_path))
        return ENAMETOOLONG;
    memcpy(a.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    int e = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0 ? 0 : errno;
    close(fd);
    return e;
}

static int open_client(const struct cli *o, struct kvt_client **c, uint64_t arena_bytes)
{
    struct kvt_connect_opts co = {.socket_path = o->socket,
                                  .tenant = o->tenant,
                                  .arena_bytes = arena_bytes,
                                  .timeout_ms = o->timeout_ms};
    int rc = kvt_connect(&co, c);
    if (!rc)
        return 0;
    char def[KVT_SOCKET_PATH_MAX];
    const char *path = socket_tried(o, def, sizeof(def));
    if (rc == KVT_E_DISCONNECTED) {
        int e = socket_errno(path);
        fprintf(stderr,
                "kvtier: cannot connect to %s: %s (is kvtierd running? --socket or "
                "KVTIER_SOCKET) (%s)\n",
                path, e ? strerror(e) : "the daemon closed the connection", kvt_strerror_name(rc));
    } else if (rc == KVT_E_UNTRUSTED) {
        fprintf(stderr,
                "kvtier: cannot connect to %s: %s; if kvtierd runs as another user, set "
                "KVTIER_DAEMON_UID to its uid (%s)\n",
                path, kvt_strerror(rc), kvt_strerror_name(rc));
    } else {
        fprintf(stderr, "kvtier: cannot connect to %s: %s (%s)\n", path, kvt_strerror(rc),
                kvt_strerror_name(rc));
    }
    return 1;
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

static int cmd_stats(const struct cli *o)
{
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
    if (o->prometheus)
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
    if (n < 1 || n > 2)
        return usage_error("%s takes FILE [KEY]", "put");
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
    if (n != 2)
        return usage_error("%s takes KEY FILE", "get");
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
    if (n < 1)
        return usage_error("%s takes at least one KEY", is_delete ? "delete" : "lookup");
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

/* Prints s in width columns, wrapped at spaces, each line after the first indented by indent. */
static void print_wrapped(const char *s, int indent, int width)
{
    int col = indent;
    while (*s) {
        size_t w = strcspn(s, " ");
        if (col > indent && col + 1 + (int)w > width) {
            printf("\n%*s", indent, "");
            col = indent;
        } else if (col > indent) {
            putchar(' ');
            col++;
        }
        printf("%.*s", (int)w, s);
        col += (int)w;
        s += w;
        s += strspn(s, " ");
    }
    putchar('\n');
}

static int cmd_config_list(const struct cli *o)
{
    struct kvt_client *c;
    if (open_client(o, &c, 4096))
        return 1;
    struct kvt_config_item *it;
    size_t n;
    int rc = kvt_config_list(c, &it, &n);
    kvt_close(c);
    if (rc)
        return die("config list", rc);
    if (o->json) {
        printf("[");
        for (size_t i = 0; i < n; i++) {
            printf("%s{\"key\": ", i ? ", " : "");
            json_str(it[i].key);
            printf(", \"value\": ");
            json_str(it[i].value);
            printf(", \"default\": ");
            json_str(it[i].default_value);
            printf(", \"runtime\": %s, \"admin\": %s, \"help\": ", it[i].runtime ? "true" : "false",
                   it[i].admin ? "true" : "false");
            json_str(it[i].help);
            printf("}");
        }
        printf("]\n");
    } else {
        /* key = value, then the help indented; "runtime" / "runtime, admin" say who may change
         * it while the daemon runs, and the default is shown when the value differs from it. */
        for (size_t i = 0; i < n; i++) {
            printf("%s = %s", it[i].key, it[i].value);
            if (it[i].runtime)
                printf("   [runtime%s]", it[i].admin ? ", admin" : "");
            printf("\n    ");
            print_wrapped(it[i].help, 4, 100);
            printf("    default: %s\n", *it[i].default_value ? it[i].default_value : "(empty)");
        }
    }
    kvt_config_list_free(it, n);
    return 0;
}

static int cmd_config(const struct cli *o, char **args, int n)
{
    struct kvt_client *c;
    const char *sub = n > 0 ? args[0] : "";
    if (!strcmp(sub, "list")) {
        if (n != 1)
            return usage_error("config list takes no argument, not '%s'", args[1]);
        return cmd_config_list(o);
    }
    int is_get = !strcmp(sub, "get"), is_set = !strcmp(sub, "set");
    if (!is_get && !is_set)
        return usage_error("config takes list, get KEY or set KEY VALUE, not '%s'", sub);
    if (is_get && n != 2)
        return usage_error("%s takes one KEY", "config get");
    if (is_set && n != 3)
        return usage_error("%s takes KEY VALUE", "config set");
    if (open_client(o, &c, 4096))
        return 1;
    static char val[1024]; /* the longest string key (tenants) */
    int rc = is_set ? kvt_config_set(c, args[1], args[2]) : 0;
    if (!rc)
        rc = kvt_config_get(c, args[1], val, sizeof(val));
    kvt_close(c);
    if (rc)
        return die(args[1], rc);
    if (o->json) {
        printf("{");
        json_str(args[1]);
        printf(": ");
        json_str(val);
        printf("}\n");
    } else {
        printf("%s = %s\n", args[1], val);
    }
    return 0;
}

/* ---- top ------------------------------------------------------------------------------------ */

/* The value of stat name in st, or -1 when the daemon has no such stat. */
static double stat_value(const struct kvt_stat *st, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(st[i].name, name))
            return (double)st[i].value;
    return -1;
}

static double stat_of(const struct kvt_stat *st, size_t n, const char *tier, const char *what)
{
    char name[64];
    snprintf(name, sizeof(name), "%s.%s", tier, what);
    return stat_value(st, n, name);
}

/* Bytes as "12.3 MiB". */
static const char *human_bytes(double v, char *buf, size_t cap)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    int u = 0;
    for (; v >= 1024 && u < 5; u++)
        v /= 1024;
    snprintf(buf, cap, u ? "%.1f %s" : "%.0f %s", v, units[u]);
    return buf;
}

static const char *const top_tiers[] = {"gpu", "cpu", "disk", "remote"};
static const char *const top_ops[] = {"requests", "puts", "gets", "lookups", "deletes", "errors"};
#define TOP_N_TIERS (sizeof(top_tiers) / sizeof(top_tiers[0]))
#define TOP_N_OPS (sizeof(top_ops) / sizeof(top_ops[0]))

/* One frame from two snapshots taken dt_s apart: per-second rates of the counters, the hit
 * ratio of the interval (hits / (hits + misses), "-" with no reads in it), and the gauges as
 * they are now. A tier is shown when the daemon reports its capacity. */
static void top_frame(const struct cli *o, const char *sock, const struct kvt_stat *a, size_t na,
                      const struct kvt_stat *b, size_t nb, double dt_s)
{
    char b1[32], b2[32];
    double rate[TOP_N_OPS];
    for (size_t i = 0; i < TOP_N_OPS; i++) {
        double x = stat_value(a, na, top_ops[i]), y = stat_value(b, nb, top_ops[i]);
        rate[i] = x < 0 || y < x ? 0 : (y - x) / dt_s;
    }
    double up_s = stat_value(b, nb, "uptime_ms") / 1000;
    double conns = stat_value(b, nb, "connections");
    if (o->json) {
        printf("{\"socket\": ");
        json_str(sock);
        printf(", \"interval_s\": %.3f, \"uptime_s\": %.0f, \"connections\": %.0f, "
               "\"ops_per_s\": {",
               dt_s, up_s, conns);
        for (size_t i = 0; i < TOP_N_OPS; i++)
            printf("%s\"%s\": %.2f", i ? ", " : "", top_ops[i], rate[i]);
        printf("}, \"tiers\": [");
    } else {
        printf("kvtier top  %s  uptime %.0fs  connections %.0f  (every %.1fs)\n", sock, up_s, conns,
               dt_s);
        printf("ops/s:");
        for (size_t i = 0; i < TOP_N_OPS; i++)
            printf("  %s %.1f", top_ops[i], rate[i]);
        printf("\n\n%-6s %12s %12s %6s %10s %9s %9s %6s  %s\n", "TIER", "USED", "CAPACITY", "USE%",
               "CHUNKS", "HITS/s", "MISSES/s", "HIT%", "STATE");
    }
    int shown = 0;
    for (size_t t = 0; t < TOP_N_TIERS; t++) {
        const char *tier = top_tiers[t];
        double cap = stat_of(b, nb, tier, "bytes_capacity");
        if (cap < 0) {
            /* Configured but never started (no stats of its own): a row that says so. */
            if (stat_of(b, nb, tier, "configured") > 0) {
                if (o->json)
                    printf("%s{\"tier\": \"%s\", \"serving\": false}", shown ? ", " : "", tier);
                else
                    printf("%-6s %12s %12s %6s %10s %9s %9s %6s  %s\n", tier, "-", "-", "-", "-",
                           "-", "-", "-", "off");
                shown++;
            }
            continue;
        }
        double used = stat_of(b, nb, tier, "bytes_used");
        double chunks = stat_of(b, nb, tier, "objects");
        double failed = stat_of(b, nb, tier, "failed");
        double dh = stat_of(b, nb, tier, "hits") - stat_of(a, na, tier, "hits");
        double dm = stat_of(b, nb, tier, "misses") - stat_of(a, na, tier, "misses");
        if (dh < 0 || dm < 0) /* the daemon restarted between the snapshots */
            dh = dm = 0;
        double ratio = dh + dm > 0 ? dh / (dh + dm) : NAN;
        /* A tier configured but not serving (the disk tier where io_uring was refused) is
         * "off"; one that latched failed is "FAILED". */
        double serving = stat_of(b, nb, tier, "serving");
        const char *state = failed > 0 ? "FAILED" : serving == 0 ? "off" : "ok";
        if (o->json) {
            printf("%s{\"tier\": \"%s\", \"bytes_used\": %.0f, \"bytes_capacity\": %.0f, "
                   "\"chunks\": %.0f, \"hits_per_s\": %.2f, \"misses_per_s\": %.2f, "
                   "\"hit_ratio\": ",
                   shown ? ", " : "", tier, used, cap, chunks, dh / dt_s, dm / dt_s);
            if (isnan(ratio))
                printf("null");
            else
                printf("%.4f", ratio);
            printf(", \"failed\": %s, \"serving\": %s}", failed > 0 ? "true" : "false",
                   failed > 0 || serving == 0 ? "false" : "true");
        } else {
            char pct[16] = "-";
            if (!isnan(ratio))
                snprintf(pct, sizeof(pct), "%.1f", 100 * ratio);
            printf("%-6s %12s %12s %5.1f%% %10.0f %9.1f %9.1f %6s  %s\n", tier,
                   human_bytes(used, b1, sizeof(b1)), human_bytes(cap, b2, sizeof(b2)),
                   cap > 0 ? 100 * used / cap : 0.0, chunks, dh / dt_s, dm / dt_s, pct, state);
        }
        shown++;
    }
    if (o->json)
        printf("]}\n");
    fflush(stdout);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void sleep_ms(uint32_t ms)
{
    struct timespec t = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {
    }
}

/* Frames every interval until o->frames are printed (0: until interrupted). On a terminal each
 * frame replaces the last (ANSI: cursor home, clear screen); otherwise frames follow each other,
 * separated by a blank line, so that output piped to a file or a test stays readable. With -n or
 * --once a failed Stats call ends the run (exit 1); the live view instead says so and keeps
 * polling, since the library reconnects by itself when the daemon is back (a restart is then a
 * new baseline: the first frame after it waits one interval for its rates). */
static int cmd_top(const struct cli *o)
{
    struct kvt_client *c;
    if (open_client(o, &c, 4096))
        return 1;
    char def[KVT_SOCKET_PATH_MAX];
    const char *sock = socket_tried(o, def, sizeof(def));
    int tty = isatty(STDOUT_FILENO) && !o->json;
    struct kvt_stat *prev = NULL, *cur = NULL;
    size_t n_prev = 0, n_cur = 0;
    int rc = kvt_stats(c, &prev, &n_prev);
    double t_prev = now_s();
    for (uint32_t f = 0; !rc || o->frames == 0;) {
        if (o->frames && f >= o->frames)
            break;
        sleep_ms(o->interval_ms);
        rc = kvt_stats(c, &cur, &n_cur);
        double t = now_s();
        if (rc && o->frames)
            break;
        if (tty)
            printf("\033[H\033[2J");
        else if (f > 0 && !o->json)
            printf("\n");
        if (rc) {
            printf("kvtier top  %s: %s (%s); retrying every %.1fs\n", sock, kvt_strerror(rc),
                   kvt_strerror_name(rc), o->interval_ms / 1000.0);
            fflush(stdout);
            kvt_stats_free(prev, n_prev);
            prev = NULL;
            n_prev = 0;
        } else if (prev) {
            top_frame(o, sock, prev, n_prev, cur, n_cur, t - t_prev);
            kvt_stats_free(prev, n_prev);
            prev = cur;
            n_prev = n_cur;
        } else {
            printf("kvtier top  %s: connected again; rates from the next frame\n", sock);
            fflush(stdout);
            prev = cur;
            n_prev = n_cur;
        }
        t_prev = t;
        f++;
    }
    kvt_stats_free(prev, n_prev);
    kvt_close(c);
    if (rc)
        return die("stats", rc);
    return 0;
}

/* The options that take a value (as the next word or after '='). */
static const char *const value_options[] = {
    "--socket", "--tenant",           "--timeout-ms",  "--model",
    "--layers", "--kv-heads",         "--head-dim",    "--dtype",
    "-n",       "--tokens-per-chunk", "--interval-ms", NULL};

/* Sets option a (one of value_options) to v. Returns 0, or -1 after saying why v is wrong. */
static int parse_option(struct cli *o, const char *a, const char *v)
{
    if (!strcmp(a, "--socket"))
        o->socket = v;
    else if (!strcmp(a, "--tenant"))
        o->tenant = v;
    else if (!strcmp(a, "--timeout-ms"))
        return parse_num(a, v, 1, CLI_TIMEOUT_MS_MAX, &o->timeout_ms);
    else if (!strcmp(a, "--model"))
        o->spec.model_id = v;
    else if (!strcmp(a, "--layers"))
        return parse_num(a, v, 1, CLI_LAYERS_MAX, &o->spec.layers);
    else if (!strcmp(a, "--kv-heads"))
        return parse_num(a, v, 1, CLI_KV_HEADS_MAX, &o->spec.kv_heads);
    else if (!strcmp(a, "--head-dim"))
        return parse_num(a, v, 1, CLI_HEAD_DIM_MAX, &o->spec.head_dim);
    else if (!strcmp(a, "--tokens-per-chunk"))
        return parse_num(a, v, 1, CLI_TOKENS_PER_CHUNK_MAX, &o->spec.tokens_per_chunk);
    else if (!strcmp(a, "-n"))
        return parse_num(a, v, 1, CLI_TOP_FRAMES_MAX, &o->frames);
    else if (!strcmp(a, "--interval-ms"))
        return parse_num(a, v, CLI_TOP_INTERVAL_MS_MIN, CLI_TOP_INTERVAL_MS_MAX, &o->interval_ms);
    else if (!strcmp(a, "--dtype")) {
        if (parse_dtype(v, &o->spec.dtype)) {
            fprintf(stderr, "kvtier: --dtype: unknown dtype '%s' (fp16, bf16, fp32 or fp8)\n", v);
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct cli o = {.timeout_ms = 5000,
                    .interval_ms = 1000,
                    .spec = {.model_id = "cli-blob",
                             .layers = 1,
                             .kv_heads = 1,
                             .head_dim = 2048,
                             .dtype = KVT_DTYPE_FP8,
                             .tokens_per_chunk = 65536}};
    /* One pass over the whole command line: options anywhere (before "--"), the rest are the
     * command and its arguments, in order. */
    char **pos = calloc((size_t)argc + 1, sizeof(*pos));
    int n_pos = 0, once = 0, frames_set = 0, interval_set = 0, options_done = 0;
    if (!pos) {
        fprintf(stderr, "kvtier: out of memory\n");
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (options_done || a[0] != '-' || !strcmp(a, "-")) {
            pos[n_pos++] = argv[i];
            continue;
        }
        if (!strcmp(a, "--")) {
            options_done = 1;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            free(pos);
            return 0;
        }
        if (!strcmp(a, "--version")) {
            printf("kvtier %s\n", KVT_VERSION_STRING);
            free(pos);
            return 0;
        }
        if (!strcmp(a, "--json") || !strcmp(a, "--prometheus") || !strcmp(a, "--once")) {
            o.json |= !strcmp(a, "--json");
            o.prometheus |= !strcmp(a, "--prometheus");
            once |= !strcmp(a, "--once");
            continue;
        }
        /* "--opt=value" or "--opt value"; a value may not look like an option then. */
        const char *eq = a[1] == '-' ? strchr(a, '=') : NULL;
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        const char *name = NULL;
        for (size_t k = 0; value_options[k]; k++)
            if (strlen(value_options[k]) == len && !strncmp(a, value_options[k], len))
                name = value_options[k];
        if (!name) {
            free(pos);
            return usage_error("unknown option %s", a);
        }
        const char *v = eq ? eq + 1 : i + 1 < argc ? argv[++i] : NULL;
        if (!v || (!eq && !strncmp(v, "--", 2))) {
            free(pos);
            return usage_error("%s needs a value", name);
        }
        frames_set |= !strcmp(name, "-n");
        interval_set |= !strcmp(name, "--interval-ms");
        if (parse_option(&o, name, v)) {
            free(pos);
            return 2;
        }
    }
    /* The chunk size, multiplied out without overflowing: each factor is at least 1. */
    const uint32_t factors[] = {o.spec.layers, o.spec.kv_heads, o.spec.head_dim,
                                o.spec.tokens_per_chunk};
    uint64_t chunk_bytes = 2 * kvt_dtype_size(o.spec.dtype); /* K and V */
    for (size_t f = 0; f < sizeof(factors) / sizeof(factors[0]); f++) {
        if (chunk_bytes > CLI_CHUNK_BYTES_MAX / factors[f]) {
            fprintf(stderr, "kvtier: this geometry makes chunks larger than %llu bytes (64 GiB)\n",
                    CLI_CHUNK_BYTES_MAX);
            free(pos);
            return 2;
        }
        chunk_bytes *= factors[f];
    }
    int ret = 2;
    const char *cmd = n_pos ? pos[0] : NULL;
    char **args = pos + 1;
    int n = n_pos - 1;
    int is_top = cmd && !strcmp(cmd, "top");
    if (!cmd) {
        usage(stderr);
    } else if (o.prometheus && strcmp(cmd, "stats")) {
        ret = usage_error("--prometheus is an option of stats, not of %s", cmd);
    } else if ((once || frames_set || interval_set) && !is_top) {
        ret = usage_error("--once, -n and --interval-ms are options of top, not of %s", cmd);
    } else if (once && frames_set) {
        ret = usage_error("%s: --once or -n N, not both", "top");
    } else if (o.prometheus && o.json) {
        ret = usage_error("%s: --json or --prometheus, not both", "stats");
    } else if ((!strcmp(cmd, "ping") || !strcmp(cmd, "stats") || is_top) && n > 0) {
        ret = usage_error("unexpected argument '%s'", args[0]);
    } else if (!strcmp(cmd, "ping")) {
        ret = cmd_ping(&o);
    } else if (!strcmp(cmd, "stats")) {
        ret = cmd_stats(&o);
    } else if (!strcmp(cmd, "put")) {
        ret = cmd_put(&o, args, n);
    } else if (!strcmp(cmd, "get")) {
        ret = cmd_get(&o, args, n);
    } else if (!strcmp(cmd, "lookup")) {
        ret = cmd_keys(&o, args, n, 0);
    } else if (!strcmp(cmd, "delete")) {
        ret = cmd_keys(&o, args, n, 1);
    } else if (!strcmp(cmd, "config")) {
        ret = cmd_config(&o, args, n);
    } else if (is_top) {
        if (once)
            o.frames = 1;
        ret = cmd_top(&o);
    } else {
        ret = usage_error("unknown command '%s'", cmd);
    }
    free(pos);
    return ret;
}
