/*
 * capacity benchmark: a load generator for sizing kvtier as an inference server's sidecar. Many
 * clients (threads, each with its own kvt connection) run sessions: a session is one prompt made
 * of a shared prefix (a system prompt or few-shot block many sessions share), the body of a
 * conversation or document (reused by later sessions of it) and a suffix of its own, in chunks
 * with chained keys, as an engine would send them. A session Looks its chain up, Gets the hits,
 * "recomputes" the misses (a stated cost model, no model runs) and Puts them. Prefix and body
 * lengths are lognormal (long-tailed), conversations are drawn from a Zipf law, and the tiers are
 * far smaller than the working set (DRAM 10 %, disk 50 % of it by default).
 *
 * Every Get is checked against the bytes derived from its key; a wrong byte fails the run. The
 * daemon's RSS is sampled once a second and checked against the bound computed from its config
 * (docs/benchmarks.md, "capacity": the memory bound); a sample over it fails the run.
 *
 * Arms on the same trace (every client replays the same sessions, in the same order): kvtier with
 * its CPU and disk tiers; the same daemon with DRAM only (prefix caching in host memory, LRU);
 * the same with cost-aware eviction (tier.eviction=cost: reads x tokens / bytes among the coldest
 * few); no cache (every token recomputed, from the cost model). LMCache is reported null with the
 * reason.
 *
 * Options (after `kvtier-bench capacity`): --socket PATH (run against a running daemon: one arm,
 * its tiers as they are), --clients N, --processes P (the clients spread over P processes, as
 * engines' workers are; 1: threads of this one), --duration S, --working-set BYTES, --dram BYTES,
 * --disk BYTES, --seed N, --abstract-bytes BYTES, --prefill-tokens-per-s N, --zipf S,
 * --daemon-opt KEY=VALUE (a kvtierd setting for the daemons it starts, e.g.
 * tier.dirty_full=reject; up to 8), --bound-scale F (tests: check RSS against F times the
 * bound, to see the check fail, or to leave room for a sanitizer's shadow memory). --only
 * kvtier, kvtier_cost or dram_lru (or a list) runs those arms.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"
#include "bench/util.h"
#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

#define MIB (1024ull * 1024ull)
#define CLIENTS_MAX 64
#define PREFIXES_MAX 256
#define PREFIX_CHUNKS_MAX 32
#define BODY_CHUNKS_MAX 256
#define SUFFIX_CHUNKS_MAX 16
#define SESSION_CHUNKS_MAX (PREFIX_CHUNKS_MAX + BODY_CHUNKS_MAX + SUFFIX_CHUNKS_MAX)
#define CONVS_MAX (1u << 22)
#define SAMPLES_MAX 8192
#define PUT_TRIES_MAX 200

/* Geometry: 4 layers x 2 KV heads x 64 dims x fp16 x (k, v) = 2 KiB per token, 64 tokens per
 * chunk: 128 KiB chunks. Small enough that a 2-core VM moves a working set many times its DRAM
 * tier in seconds; the daemon's work per chunk (index, slab, disk extent, abstract) is the same
 * as for a large model's chunk. */
#define LAYERS 4
#define KV_HEADS 2
#define HEAD_DIM 64
#define CHUNK_TOKENS 64

/* ---- latency histograms: log-linear, 32 sub-buckets per power of two (3 % resolution) ------ */
#define HSUB 32
#define HBUCKETS (42 * HSUB)
enum { OP_LOOKUP, OP_GET, OP_PUT, OP_COUNT };
static const char *const op_names[OP_COUNT] = {"lookup", "get", "put"};

struct hist {
    uint64_t n[HBUCKETS];
    uint64_t count;
};

static unsigned hist_index(uint64_t ns)
{
    if (ns < HSUB)
        return (unsigned)ns;
    unsigned e = 63u - (unsigned)__builtin_clzll(ns); /* >= 5 */
    unsigned i = (e - 4) * HSUB + (unsigned)((ns >> (e - 5)) & (HSUB - 1));
    return i < HBUCKETS ? i : HBUCKETS - 1;
}

/* The middle of bucket i, in ns. */
static double hist_value(unsigned i)
{
    if (i < HSUB)
        return i;
    unsigned e = i / HSUB + 4, sub = i % HSUB;
    double lo = ldexp(1.0, (int)e) + (double)sub * ldexp(1.0, (int)e - 5);
    return lo + ldexp(1.0, (int)e - 6);
}

static void hist_add(struct hist *h, uint64_t ns)
{
    h->n[hist_index(ns)]++;
    h->count++;
}

static double hist_pct_us(const struct hist *h, double p)
{
    if (!h->count)
        return NAN;
    uint64_t want = (uint64_t)ceil(p / 100.0 * (double)h->count), seen = 0;
    for (unsigned i = 0; i < HBUCKETS; i++) {
        seen += h->n[i];
        if (seen >= want && h->n[i])
            return hist_value(i) / 1000.0;
    }
    return hist_value(HBUCKETS - 1) / 1000.0;
}

/* ---- the trace ------------------------------------------------------------------------------ */

struct trace {
    uint64_t seed;
    double zipf_s;
    uint32_t n_prefixes;
    uint8_t prefix_chunks[PREFIXES_MAX];
    uint32_t n_convs;
    uint16_t *body_chunks; /* per conversation */
    uint8_t *conv_prefix;  /* per conversation */
    double *conv_cdf;      /* Zipf CDF over conversations (rank = id) */
    uint64_t reusable_chunks;
};

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

struct rng {
    uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
    r->s += 0x9e3779b97f4a7c15ull;
    return mix64(r->s);
}

static double rng_unit(struct rng *r) /* (0, 1) */
{
    return ((double)(rng_next(r) >> 11) + 0.5) / 9007199254740992.0;
}

static double rng_normal(struct rng *r)
{
    return sqrt(-2.0 * log(rng_unit(r))) * cos(6.283185307179586 * rng_unit(r));
}

/* Lognormal with median `median` and shape sigma, clamped to [lo, hi]. */
static uint32_t rng_lognormal(struct rng *r, double median, double sigma, uint32_t lo, uint32_t hi)
{
    double v = median * exp(sigma * rng_normal(r));
    if (v < lo)
        return lo;
    if (v > hi)
        return hi;
    return (uint32_t)v;
}

static uint32_t zipf_draw(const double *cdf, uint32_t n, struct rng *r)
{
    double u = rng_unit(r);
    uint32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static double *zipf_cdf(uint32_t n, double s)
{
    double *cdf = malloc(sizeof(double) * n), sum = 0;
    if (!cdf)
        return NULL;
    for (uint32_t i = 0; i < n; i++) {
        sum += 1.0 / pow((double)(i + 1), s);
        cdf[i] = sum;
    }
    for (uint32_t i = 0; i < n; i++)
        cdf[i] /= sum;
    return cdf;
}

/* Builds the conversations until their distinct chunks (prefixes included) reach ws_chunks. */
static int trace_build(struct trace *t, uint64_t seed, double zipf_s, uint64_t ws_chunks)
{
    memset(t, 0, sizeof(*t));
    t->seed = seed;
    t->zipf_s = zipf_s;
    struct rng r = {mix64(seed ^ 0x7072656669780000ull)};
    t->n_prefixes = ws_chunks / 64 < 8 ? 8 : ws_chunks / 64 > 64 ? 64 : (uint32_t)(ws_chunks / 64);
    uint64_t total = 0;
    for (uint32_t p = 0; p < t->n_prefixes; p++) {
        t->prefix_chunks[p] = (uint8_t)rng_lognormal(&r, 4, 0.8, 1, PREFIX_CHUNKS_MAX);
        total += t->prefix_chunks[p];
    }
    double *pcdf = zipf_cdf(t->n_prefixes, 1.0);
    t->body_chunks = malloc(sizeof(uint16_t) * CONVS_MAX);
    t->conv_prefix = malloc(CONVS_MAX);
    if (!pcdf || !t->body_chunks || !t->conv_prefix) {
        free(pcdf);
        return -1;
    }
    while (total < ws_chunks && t->n_convs < CONVS_MAX) {
        uint32_t c = t->n_convs++;
        t->body_chunks[c] = (uint16_t)rng_lognormal(&r, 8, 1.0, 1, BODY_CHUNKS_MAX);
        t->conv_prefix[c] = (uint8_t)zipf_draw(pcdf, t->n_prefixes, &r);
        total += t->body_chunks[c];
    }
    free(pcdf);
    t->reusable_chunks = total;
    t->conv_cdf = zipf_cdf(t->n_convs, zipf_s);
    return t->conv_cdf ? 0 : -1;
}

static void trace_free(struct trace *t)
{
    free(t->body_chunks);
    free(t->conv_prefix);
    free(t->conv_cdf);
}

/* Token ids of chunk k of segment (kind, id): a pure function, so the chained keys of equal
 * prefixes are equal across clients and runs. */
static void segment_tokens(int32_t *out, uint64_t kind, uint64_t id, uint32_t chunk)
{
    uint64_t base = mix64(kind * 0x100000001b3ull ^ mix64(id) ^ ((uint64_t)chunk << 40));
    for (uint32_t t = 0; t < CHUNK_TOKENS; t++)
        out[t] = (int32_t)(mix64(base + t) & 0x1ffff);
}

/* The tokens of session j of client i: prefix, body, own suffix. Returns the token count. */
static size_t session_tokens(const struct trace *t, uint32_t client, uint64_t j, int32_t *tok)
{
    struct rng r = {mix64(t->seed ^ mix64(((uint64_t)client << 40) ^ j))};
    uint32_t c = zipf_draw(t->conv_cdf, t->n_convs, &r);
    uint32_t p = t->conv_prefix[c];
    uint32_t ns = rng_lognormal(&r, 2, 0.7, 0, SUFFIX_CHUNKS_MAX);
    size_t n = 0;
    for (uint32_t k = 0; k < t->prefix_chunks[p]; k++, n += CHUNK_TOKENS)
        segment_tokens(tok + n, 1, p, k);
    for (uint32_t k = 0; k < t->body_chunks[c]; k++, n += CHUNK_TOKENS)
        segment_tokens(tok + n, 2, c, k);
    for (uint32_t k = 0; k < ns; k++, n += CHUNK_TOKENS)
        segment_tokens(tok + n, 3, ((uint64_t)client << 40) ^ j, k);
    return n;
}

/* ---- chunk content: a function of the key -----------------------------------------------------
 */

/* Valid fp16 values only (bit 14 clear: |x| < 2, never Inf or NaN), so the daemon's abstracts see
 * what a model's KV looks like to them. */
#define FP16_MASK 0xbfffbfffbfffbfffull

static void content_fill(uint64_t *w, size_t words, const struct kvt_key *k)
{
    uint64_t x = mix64(k->lo ^ mix64(k->hi)) | 1;
    for (size_t i = 0; i < words; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w[i] = x & FP16_MASK;
    }
}

/* Bytes of w that differ from the content of k. */
static uint64_t content_check(const uint64_t *w, size_t words, const struct kvt_key *k)
{
    uint64_t x = mix64(k->lo ^ mix64(k->hi)) | 1, bad = 0;
    for (size_t i = 0; i < words; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint64_t d = w[i] ^ (x & FP16_MASK);
        if (d)
            for (int b = 0; b < 8; b++)
                bad += ((d >> (8 * b)) & 0xff) != 0;
    }
    return bad;
}

/* ---- clients -------------------------------------------------------------------------------- */

struct counters {
    _Atomic uint64_t sessions, ops, chunks, hit_cpu, hit_disk, tokens_recomputed;
};

struct client {
    pthread_t th;
    uint32_t id;
    const struct trace *trace;
    const char *sock;
    uint64_t arena_bytes;
    uint64_t sessions_target; /* 0: until stop */
    _Atomic int *stop;
    struct counters ctr;
    struct hist h[OP_COUNT];
    /* Totals, written by the thread only. */
    uint64_t sessions, chunks, hit_cpu, hit_disk, lookup_cpu, lookup_disk, tokens_total,
        tokens_saved, get_races, put_retries, errors, wrong_bytes, wrong_chunks, bytes_moved;
    uint64_t fetch_ns; /* time in Lookup and Get calls */
    int first_error;
};

static int open_session(struct client *cl, struct kvt_client **out, struct kvt_ns_info *ns)
{
    struct kvt_connect_opts o = {
        .socket_path = cl->sock, .arena_bytes = cl->arena_bytes, .timeout_ms = 30000};
    struct kvt_ns_spec spec = {.model_id = "bench-capacity",
                               .layers = LAYERS,
                               .kv_heads = KV_HEADS,
                               .head_dim = HEAD_DIM,
                               .dtype = KVT_DTYPE_FP16,
                               .tokens_per_chunk = CHUNK_TOKENS};
    int rc = kvt_connect(&o, out);
    if (rc)
        return rc;
    rc = kvt_register(*out, &spec, ns);
    if (rc) {
        kvt_close(*out);
        *out = NULL;
    }
    return rc;
}

static void note_error(struct client *cl, int rc)
{
    cl->errors++;
    if (!cl->first_error)
        cl->first_error = rc;
}

static void *client_main(void *p)
{
    struct client *cl = p;
    struct kvt_client *c = NULL;
    struct kvt_ns_info ns;
    int32_t *tok = malloc(sizeof(int32_t) * SESSION_CHUNKS_MAX * CHUNK_TOKENS);
    struct kvt_key keys[SESSION_CHUNKS_MAX];
    enum kvt_tier_id tiers[SESSION_CHUNKS_MAX];
    int rc = tok ? open_session(cl, &c, &ns) : KVT_E_NOMEM;
    uint8_t *buf = rc ? NULL : kvt_arena_alloc(c, (size_t)ns.chunk_bytes);
    if (rc || !buf) {
        note_error(cl, rc ? rc : KVT_E_NOMEM);
        atomic_store(cl->stop, 1);
        goto out;
    }
    const size_t chunk = (size_t)ns.chunk_bytes, words = chunk / 8;
    for (uint64_t j = 0; !atomic_load_explicit(cl->stop, memory_order_relaxed); j++) {
        if (cl->sessions_target && j >= cl->sessions_target)
            break;
        size_t nt = session_tokens(cl->trace, cl->id, j, tok);
        size_t n = kvt_chunk_keys(&ns, NULL, tok, nt, keys, SESSION_CHUNKS_MAX);
        size_t hits = 0, len = 0;
        uint64_t t0 = kvt_bench_now_ns();
        rc = kvt_lookup(c, ns.handle, keys, n, &hits, tiers);
        uint64_t t1 = kvt_bench_now_ns();
        hist_add(&cl->h[OP_LOOKUP], t1 - t0);
        cl->fetch_ns += t1 - t0;
        if (rc)
            note_error(cl, rc);
        for (size_t i = 0; i < hits; i++) {
            cl->lookup_cpu += tiers[i] == KVT_TIER_CPU;
            cl->lookup_disk += tiers[i] == KVT_TIER_DISK;
        }
        size_t got = 0;
        for (; got < hits; got++) {
            enum kvt_tier_id from = KVT_TIER_NONE;
            t0 = kvt_bench_now_ns();
            rc = kvt_get(c, ns.handle, &keys[got], buf, chunk, &len, &from);
            t1 = kvt_bench_now_ns();
            hist_add(&cl->h[OP_GET], t1 - t0);
            cl->fetch_ns += t1 - t0;
            if (rc == KVT_E_NOTFOUND) {
                /* Evicted between the Lookup and the Get: the engine recomputes from here. */
                cl->get_races++;
                break;
            }
            if (rc == KVT_E_TIMEOUT || rc == KVT_E_DISCONNECTED || rc == KVT_E_PROTO) {
                /* The daemon may still write buf (kvtier.h, "After a timeout"): it is no longer
                 * ours, and this client ends (the run fails on its error). */
                note_error(cl, rc);
                buf = NULL;
                goto out;
            }
            if (rc || len != chunk) {
                note_error(cl, rc ? rc : KVT_E_PROTO);
                break;
            }
            uint64_t bad = content_check((const uint64_t *)buf, words, &keys[got]);
            if (bad) {
                cl->wrong_bytes += bad;
                cl->wrong_chunks++;
            }
            cl->hit_cpu += from == KVT_TIER_CPU;
            cl->hit_disk += from == KVT_TIER_DISK;
            cl->bytes_moved += chunk;
        }
        /* "Recompute" the rest (their bytes are derived from their keys) and store them. */
        for (size_t i = got; i < n; i++) {
            content_fill((uint64_t *)buf, words, &keys[i]);
            for (int tries = 0;; tries++) {
                t0 = kvt_bench_now_ns();
                rc = kvt_put(c, ns.handle, &keys[i], buf, chunk, 0);
                hist_add(&cl->h[OP_PUT], kvt_bench_now_ns() - t0);
                if ((rc == KVT_E_BUSY || rc == KVT_E_DIRTYFULL) && tries < PUT_TRIES_MAX) {
                    cl->put_retries++;
                    struct timespec ts = {0, 200000};
                    nanosleep(&ts, NULL);
                    continue;
                }
                break;
            }
            if (rc)
                note_error(cl, rc);
            else
                cl->bytes_moved += chunk;
        }
        cl->sessions++;
        cl->chunks += n;
        cl->tokens_total += n * CHUNK_TOKENS;
        cl->tokens_saved += got * CHUNK_TOKENS;
        atomic_fetch_add_explicit(&cl->ctr.sessions, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&cl->ctr.ops, 1 + got + (hits > got) + (n - got),
                                  memory_order_relaxed);
        atomic_fetch_add_explicit(&cl->ctr.chunks, n, memory_order_relaxed);
        atomic_store_explicit(&cl->ctr.hit_cpu, cl->hit_cpu, memory_order_relaxed);
        atomic_store_explicit(&cl->ctr.hit_disk, cl->hit_disk, memory_order_relaxed);
        atomic_fetch_add_explicit(&cl->ctr.tokens_recomputed, (n - got) * CHUNK_TOKENS,
                                  memory_order_relaxed);
    }
out:
    if (c && buf)
        kvt_arena_free(c, buf);
    kvt_close(c);
    free(tok);
    return NULL;
}

/* ---- the daemon's memory: RSS and its bound ---------------------------------------------------
 */

struct rss {
    uint64_t total, anon, file, shmem;
};

static int read_rss(pid_t pid, struct rss *out)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    memset(out, 0, sizeof(*out));
    unsigned long long v;
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "VmRSS: %llu kB", &v) == 1)
            out->total = v * 1024;
        else if (sscanf(line, "RssAnon: %llu kB", &v) == 1)
            out->anon = v * 1024;
        else if (sscanf(line, "RssFile: %llu kB", &v) == 1)
            out->file = v * 1024;
        else if (sscanf(line, "RssShmem: %llu kB", &v) == 1)
            out->shmem = v * 1024;
    }
    fclose(f);
    return out->total ? 0 : -1;
}

/* The config keys the bound is computed from, read from the daemon itself. */
struct mem_cfg {
    uint64_t cpu_arena, disk_bytes, disk_staging, disk_objects, index_objects, abstract_max,
        frame_max, arena_max, inflight, workers;
};

static uint64_t cfg_u64(struct kvt_client *c, const char *key, int *bad)
{
    char buf[64];
    if (kvt_config_get(c, key, buf, sizeof(buf))) {
        *bad = 1;
        return 0;
    }
    char *end;
    double v = strtod(buf, &end);
    switch (*end) {
    case 'K':
    case 'k':
        v *= 1024;
        break;
    case 'M':
    case 'm':
        v *= 1024 * 1024;
        break;
    case 'G':
    case 'g':
        v *= 1024.0 * 1024 * 1024;
        break;
    case 'T':
    case 't':
        v *= 1024.0 * 1024 * 1024 * 1024;
        break;
    default:
        break;
    }
    return (uint64_t)v;
}

static int mem_cfg_read(struct kvt_client *c, struct mem_cfg *m)
{
    int bad = 0;
    m->cpu_arena = cfg_u64(c, "cpu.arena_bytes", &bad);
    m->disk_bytes = cfg_u64(c, "disk.bytes", &bad);
    m->disk_staging = cfg_u64(c, "disk.staging_bytes", &bad);
    m->disk_objects = cfg_u64(c, "disk.objects_max", &bad);
    m->index_objects = cfg_u64(c, "index.max_objects", &bad);
    m->abstract_max = cfg_u64(c, "abstract.bytes_max", &bad);
    m->frame_max = cfg_u64(c, "max_frame_bytes", &bad);
    m->arena_max = cfg_u64(c, "max_arena_bytes", &bad);
    m->inflight = cfg_u64(c, "max_inflight_per_conn", &bad);
    return bad ? -1 : 0;
}

/* Per-unit costs of the bound (docs/benchmarks.md): measured from the daemon's own allocation
 * tags (mem.*_bytes) at two index sizes, rounded up. */
#define BOUND_INDEX_ENTRY_BYTES 128u /* index entry, bucket and abstract slot: 120 measured */
#define BOUND_DISK_ENTRY_BYTES 448u  /* disk index, checkpoint snapshot, journal: 408 measured */
#define BOUND_DISK_FIXED_BYTES (12 * MIB)    /* journal and checkpoint buffers: 8.8 MiB measured */
#define BOUND_CONN_FIXED_BYTES (256 * 1024u) /* scratch and the connection itself */
#define BOUND_OP_BYTES 256u                  /* one in-flight op slot */
#define BOUND_BASE_BYTES                                                                           \
    (16 * MIB)                 /* text, libraries, the loop's stack, malloc slack: 8 measured */
#define BOUND_THREAD_BYTES MIB /* per thread (workers, and 4 for the loop, disk, log, tier) */

/* The most RSS the daemon may have with conns connections whose arenas add up to arenas bytes:
 * the CPU arena and the clients' arenas (shared memory, RssShmem once touched), the disk tier's
 * staging buffers and index, the index, the abstracts' cap, each connection's frame buffers,
 * each worker thread, and a fixed base. */
static uint64_t mem_bound(const struct mem_cfg *m, uint64_t conns, uint64_t arenas)
{
    uint64_t b = m->cpu_arena + arenas + BOUND_BASE_BYTES + (m->workers + 4) * BOUND_THREAD_BYTES;
    b += m->index_objects * BOUND_INDEX_ENTRY_BYTES + m->abstract_max;
    if (m->disk_bytes)
        b += m->disk_staging + m->disk_objects * BOUND_DISK_ENTRY_BYTES + BOUND_DISK_FIXED_BYTES;
    b += conns * (2 * m->frame_max + BOUND_CONN_FIXED_BYTES + m->inflight * BOUND_OP_BYTES);
    return b;
}

static uint64_t stat_of(const struct kvt_stat *s, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(s[i].name, name))
            return s[i].value;
    return 0;
}

/* ---- one arm -------------------------------------------------------------------------------- */

struct sample {
    double t_s, ops_per_s, sessions_per_s, hit_ratio, cpu_hit_ratio, disk_hit_ratio;
    struct rss rss;
    uint64_t bound, cpu_bytes, disk_bytes, cpu_objects, disk_objects, heap;
};

struct arm {
    const char *name;
    pid_t pid;
    struct mem_cfg mem;
    double elapsed_s;
    struct sample *samples;
    uint32_t n_samples;
    uint64_t rss_max, bound_min, bound_violations, rss_unreadable;
    struct hist h[OP_COUNT];
    struct client tot; /* summed totals */
    uint64_t sessions_per_client[CLIENTS_MAX];
    uint64_t end_stats[12];
};

static const char *const end_stat_names[12] = {"cpu.evictions",      "cpu.bytes_capacity",
                                               "disk.evictions",     "disk.bytes_capacity",
                                               "tier.demotions",     "tier.promotions",
                                               "tier.dropped_dirty", "tier.index_evictions",
                                               "tier_full",          "errors",
                                               "abstracts",          "abstracts_dropped"};

struct cap_cfg {
    const char *socket;
    uint32_t clients;
    uint32_t processes; /* 1: the clients are threads of this process */
    double duration_s;
    uint64_t ws_bytes, dram_bytes, disk_bytes, abstract_bytes;
    uint64_t seed;
    double zipf_s, prefill_tps;
    double bound_scale; /* tests: the bound is multiplied by this, to see a violation fail (or,
                           under a sanitizer, to leave room for its shadow memory) */
    const char *daemon_opts[8]; /* --daemon-opt KEY=VALUE: more kvtierd options, in order */
    int n_daemon_opts;
};

/* The clients and the stop flag, in memory shared with the client processes (--processes):
 * their counters are read live and their totals after they exit. */
struct shared {
    _Atomic int stop;
    struct client cl[CLIENTS_MAX];
};

/* Runs the clients given to process p of n (i % n == p) as threads and waits for them. */
static void run_clients(struct client *cl, uint32_t n_clients, uint32_t p, uint32_t n,
                        const uint64_t *targets)
{
    for (uint32_t i = p; i < n_clients; i += n)
        if (!(targets && !targets[i]))
            pthread_create(&cl[i].th, NULL, client_main, &cl[i]);
    for (uint32_t i = p; i < n_clients; i += n)
        if (!(targets && !targets[i]))
            pthread_join(cl[i].th, NULL);
}

struct runner {
    struct client *cl;
    uint32_t n_clients;
    const uint64_t *targets;
};

static void *run_clients_main(void *p)
{
    struct runner *r = p;
    run_clients(r->cl, r->n_clients, 0, 1, r->targets);
    return NULL;
}

static int run_arm(const struct cap_cfg *cfg, const struct trace *t, struct arm *a,
                   const char *sock, pid_t pid, const uint64_t *targets)
{
    static struct shared *sh;
    if (!sh) {
        sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (sh == MAP_FAILED) {
            sh = NULL;
            return -1;
        }
    }
    struct client *cl = sh->cl;
    atomic_store(&sh->stop, 0);
    struct kvt_connect_opts mo = {.socket_path = sock, .arena_bytes = MIB, .timeout_ms = 10000};
    struct kvt_client *mon = NULL;
    int rc = kvt_connect(&mo, &mon);
    if (rc || mem_cfg_read(mon, &a->mem)) {
        fprintf(stderr, "capacity: cannot read the daemon's config: %s\n", kvt_strerror(rc));
        kvt_close(mon);
        return -1;
    }
    a->pid = pid;
    a->samples = calloc(SAMPLES_MAX, sizeof(*a->samples));
    a->bound_min = UINT64_MAX;
    const uint64_t arena = 2 * 128 * 1024 + 2 * MIB;
    for (uint32_t i = 0; i < cfg->clients; i++) {
        memset(&cl[i], 0, sizeof(cl[i]));
        cl[i].id = i;
        cl[i].trace = t;
        cl[i].sock = sock;
        cl[i].arena_bytes = arena;
        cl[i].sessions_target = targets ? targets[i] : 0;
        cl[i].stop = &sh->stop;
        if (targets && !targets[i])
            cl[i].sessions_target = UINT64_MAX; /* never ran in the first arm: run none */
    }
    uint64_t t0 = kvt_bench_now_ns();
    /* Threads of this process, or that many processes each with its share of the clients. */
    pid_t kids[CLIENTS_MAX];
    uint32_t n_kids = 0;
    pthread_t runner_th;
    struct runner runner = {cl, cfg->clients, targets};
    if (cfg->processes > 1) {
        fflush(NULL);
        for (uint32_t p = 0; p < cfg->processes; p++) {
            pid_t k = fork();
            if (k == 0) {
                run_clients(cl, cfg->clients, p, cfg->processes, targets);
                _exit(0);
            }
            if (k < 0) {
                fprintf(stderr, "capacity: fork: %s\n", strerror(errno));
                atomic_store(&sh->stop, 1);
                break;
            }
            kids[n_kids++] = k;
        }
    } else {
        pthread_create(&runner_th, NULL, run_clients_main, &runner);
    }
    /* A replay runs until every client has done its sessions, at most 4x the duration. */
    double limit_s = targets ? 4 * cfg->duration_s : cfg->duration_s;
    uint64_t last_ops = 0, last_sess = 0, last_chunks = 0, last_cpu = 0, last_disk = 0;
    uint64_t last_ns = t0;
    for (;;) {
        struct timespec ts = {1, 0};
        nanosleep(&ts, NULL);
        uint64_t now = kvt_bench_now_ns();
        double el = (double)(now - t0) / 1e9, dt = (double)(now - last_ns) / 1e9;
        uint64_t ops = 0, sess = 0, chunks = 0, hc = 0, hd = 0;
        uint32_t done = 0;
        for (uint32_t i = 0; i < cfg->clients; i++) {
            ops += atomic_load(&cl[i].ctr.ops);
            uint64_t s = atomic_load(&cl[i].ctr.sessions);
            sess += s;
            chunks += atomic_load(&cl[i].ctr.chunks);
            hc += atomic_load(&cl[i].ctr.hit_cpu);
            hd += atomic_load(&cl[i].ctr.hit_disk);
            done += targets && s >= targets[i];
        }
        struct sample *sm = a->n_samples < SAMPLES_MAX ? &a->samples[a->n_samples++] : NULL;
        struct sample tmp;
        if (!sm)
            sm = &tmp;
        memset(sm, 0, sizeof(*sm));
        sm->t_s = el;
        sm->ops_per_s = (double)(ops - last_ops) / dt;
        sm->sessions_per_s = (double)(sess - last_sess) / dt;
        double dch = (double)(chunks - last_chunks);
        sm->cpu_hit_ratio = dch > 0 ? (double)(hc - last_cpu) / dch : 0;
        sm->disk_hit_ratio = dch > 0 ? (double)(hd - last_disk) / dch : 0;
        sm->hit_ratio = sm->cpu_hit_ratio + sm->disk_hit_ratio;
        struct kvt_stat *st = NULL;
        size_t nst = 0;
        uint64_t conns = 1;
        if (kvt_stats(mon, &st, &nst) == 0) {
            sm->cpu_bytes = stat_of(st, nst, "cpu.bytes_used");
            sm->disk_bytes = stat_of(st, nst, "disk.bytes_used");
            sm->cpu_objects = stat_of(st, nst, "cpu.objects");
            sm->disk_objects = stat_of(st, nst, "disk.objects");
            conns = stat_of(st, nst, "connections");
            a->mem.workers = stat_of(st, nst, "workers");
            for (size_t i = 0; i < nst; i++)
                if (!strncmp(st[i].name, "mem.", 4))
                    sm->heap += st[i].value;
            kvt_stats_free(st, nst);
        }
        /* Our clients' arenas plus the monitor's; connections that are not ours (--socket) are
         * counted at max_arena_bytes, the most a client may share. */
        uint64_t ours = cfg->clients + 1;
        uint64_t arenas = (uint64_t)cfg->clients * arena + MIB;
        if (conns > ours)
            arenas += (conns - ours) * a->mem.arena_max;
        sm->bound = (uint64_t)((double)mem_bound(&a->mem, conns > ours ? conns : ours, arenas) *
                               cfg->bound_scale);
        if (read_rss(pid, &sm->rss) == 0) {
            if (sm->rss.total > a->rss_max)
                a->rss_max = sm->rss.total;
            if (sm->rss.total > sm->bound) {
                a->bound_violations++;
                fprintf(stderr, "capacity: daemon RSS %llu over its bound %llu\n",
                        (unsigned long long)sm->rss.total, (unsigned long long)sm->bound);
            }
        } else {
            a->rss_unreadable++;
        }
        if (sm->bound < a->bound_min)
            a->bound_min = sm->bound;
        kvt_bench_progress("%s %5.0fs %8.0f ops/s %6.0f sessions/s hit %.2f (cpu %.2f disk %.2f) "
                           "rss %.0f MiB / bound %.0f MiB",
                           a->name, el, sm->ops_per_s, sm->sessions_per_s, sm->hit_ratio,
                           sm->cpu_hit_ratio, sm->disk_hit_ratio, (double)sm->rss.total / MIB,
                           (double)sm->bound / MIB);
        last_ops = ops, last_sess = sess, last_chunks = chunks, last_cpu = hc, last_disk = hd;
        last_ns = now;
        int all_done = targets && done == cfg->clients;
        if (el >= limit_s || all_done || atomic_load(&sh->stop))
            break;
    }
    atomic_store(&sh->stop, 1);
    int kids_failed = 0;
    if (cfg->processes > 1) {
        for (uint32_t k = 0; k < n_kids; k++) {
            int status = 0;
            if (waitpid(kids[k], &status, 0) != kids[k] || !WIFEXITED(status) ||
                WEXITSTATUS(status))
                kids_failed++;
        }
        if (kids_failed || n_kids < cfg->processes)
            fprintf(stderr, "capacity: %u of %u client processes failed\n",
                    kids_failed + cfg->processes - n_kids, cfg->processes);
    } else {
        pthread_join(runner_th, NULL);
    }
    a->elapsed_s = (double)(kvt_bench_now_ns() - t0) / 1e9;
    struct kvt_stat *st = NULL;
    size_t nst = 0;
    if (kvt_stats(mon, &st, &nst) == 0) {
        for (int i = 0; i < 12; i++)
            a->end_stats[i] = stat_of(st, nst, end_stat_names[i]);
        kvt_stats_free(st, nst);
    }
    kvt_close(mon);
    struct client *s = &a->tot;
    memset(s, 0, sizeof(*s));
    for (uint32_t i = 0; i < cfg->clients; i++) {
        struct client *c = &cl[i];
        for (int o = 0; o < OP_COUNT; o++) {
            for (unsigned b = 0; b < HBUCKETS; b++)
                a->h[o].n[b] += c->h[o].n[b];
            a->h[o].count += c->h[o].count;
        }
        a->sessions_per_client[i] = c->sessions;
        s->sessions += c->sessions, s->chunks += c->chunks, s->hit_cpu += c->hit_cpu;
        s->hit_disk += c->hit_disk, s->lookup_cpu += c->lookup_cpu;
        s->lookup_disk += c->lookup_disk, s->tokens_total += c->tokens_total;
        s->tokens_saved += c->tokens_saved, s->get_races += c->get_races;
        s->put_retries += c->put_retries, s->errors += c->errors;
        s->wrong_bytes += c->wrong_bytes, s->wrong_chunks += c->wrong_chunks;
        s->bytes_moved += c->bytes_moved, s->fetch_ns += c->fetch_ns;
        if (c->first_error && !s->first_error)
            s->first_error = c->first_error;
    }
    s->errors += (uint64_t)kids_failed + (cfg->processes > 1 ? cfg->processes - n_kids : 0);
    if (s->first_error)
        fprintf(stderr, "capacity: %s: %llu errors, the first: %s\n", a->name,
                (unsigned long long)s->errors, kvt_strerror(s->first_error));
    return 0;
}

/* ---- reports -------------------------------------------------------------------------------- */

static void report_arm(struct kvt_bench_report *r, const struct cap_cfg *cfg, const struct arm *a)
{
    const struct client *s = &a->tot;
    char label[64];
    double ops = 0;
    for (int o = 0; o < OP_COUNT; o++)
        ops += (double)a->h[o].count;
    snprintf(label, sizeof(label), "%s throughput", a->name);
    kvt_bench_row(r, label);
    kvt_bench_num(r, "elapsed_s", a->elapsed_s);
    kvt_bench_num(r, "sessions", (double)s->sessions);
    kvt_bench_num(r, "sessions_per_s", (double)s->sessions / a->elapsed_s);
    kvt_bench_num(r, "total_ops_per_s", ops / a->elapsed_s);
    for (int o = 0; o < OP_COUNT; o++) {
        char f[48];
        snprintf(f, sizeof(f), "%s_ops_per_s", op_names[o]);
        kvt_bench_num(r, f, (double)a->h[o].count / a->elapsed_s);
    }
    kvt_bench_num(r, "moved_gbps", (double)s->bytes_moved / a->elapsed_s / 1e9);
    kvt_bench_num(r, "errors", (double)s->errors);
    kvt_bench_num(r, "wrong_bytes", (double)s->wrong_bytes);
    kvt_bench_num(r, "wrong_chunks", (double)s->wrong_chunks);
    kvt_bench_num(r, "get_races", (double)s->get_races);
    kvt_bench_num(r, "put_retries", (double)s->put_retries);

    snprintf(label, sizeof(label), "%s latency", a->name);
    kvt_bench_row(r, label);
    for (int o = 0; o < OP_COUNT; o++) {
        char f[48];
        snprintf(f, sizeof(f), "%s_p50_us", op_names[o]);
        kvt_bench_num(r, f, hist_pct_us(&a->h[o], 50));
        snprintf(f, sizeof(f), "%s_p99_us", op_names[o]);
        kvt_bench_num(r, f, hist_pct_us(&a->h[o], 99));
        snprintf(f, sizeof(f), "%s_p999_us", op_names[o]);
        kvt_bench_num(r, f, hist_pct_us(&a->h[o], 99.9));
    }

    snprintf(label, sizeof(label), "%s hits", a->name);
    kvt_bench_row(r, label);
    double ch = s->chunks ? (double)s->chunks : NAN;
    kvt_bench_num(r, "chunks", (double)s->chunks);
    kvt_bench_num(r, "hit_ratio", (double)(s->hit_cpu + s->hit_disk) / ch);
    kvt_bench_num(r, "cpu_hit_ratio", (double)s->hit_cpu / ch);
    kvt_bench_num(r, "disk_hit_ratio", (double)s->hit_disk / ch);
    kvt_bench_num(r, "lookup_cpu_ratio", (double)s->lookup_cpu / ch);
    kvt_bench_num(r, "lookup_disk_ratio", (double)s->lookup_disk / ch);
    kvt_bench_num(r, "tokens", (double)s->tokens_total);
    kvt_bench_num(r, "tokens_recomputed", (double)(s->tokens_total - s->tokens_saved));
    kvt_bench_num(r, "tokens_saved", (double)s->tokens_saved);
    kvt_bench_num(r, "tokens_saved_ratio", (double)s->tokens_saved / (double)s->tokens_total);
    /* Modelled prefill: recompute at the stated rate plus the measured fetch time. */
    double recompute_s = (double)(s->tokens_total - s->tokens_saved) / cfg->prefill_tps;
    kvt_bench_num(r, "modelled_prefill_s", recompute_s + (double)s->fetch_ns / 1e9);
    kvt_bench_num(r, "fetch_s", (double)s->fetch_ns / 1e9);

    snprintf(label, sizeof(label), "%s memory", a->name);
    kvt_bench_row(r, label);
    kvt_bench_num(r, "rss_max_bytes", (double)a->rss_max);
    kvt_bench_num(r, "rss_bound_bytes", (double)a->bound_min);
    kvt_bench_num(r, "rss_bound_violations", (double)a->bound_violations);
    kvt_bench_num(r, "cpu_arena_bytes", (double)a->mem.cpu_arena);
    kvt_bench_num(r, "disk_bytes", (double)a->mem.disk_bytes);
    kvt_bench_num(r, "abstract_bytes_max", (double)a->mem.abstract_max);
    for (int i = 0; i < 12; i++) {
        char f[48];
        snprintf(f, sizeof(f), "%s", end_stat_names[i]);
        for (char *p = f; *p; p++)
            if (*p == '.')
                *p = '_';
        kvt_bench_num(r, f, (double)a->end_stats[i]);
    }
}

static void write_series(FILE *f, const struct arm *a)
{
    for (uint32_t i = 0; i < a->n_samples; i++) {
        const struct sample *s = &a->samples[i];
        fprintf(f,
                "%s,%.2f,%.0f,%.1f,%.4f,%.4f,%.4f,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,"
                "%llu\n",
                a->name, s->t_s, s->ops_per_s, s->sessions_per_s, s->hit_ratio, s->cpu_hit_ratio,
                s->disk_hit_ratio, (unsigned long long)s->rss.total,
                (unsigned long long)s->rss.anon, (unsigned long long)s->rss.shmem,
                (unsigned long long)s->bound, (unsigned long long)s->cpu_bytes,
                (unsigned long long)s->disk_bytes, (unsigned long long)s->cpu_objects,
                (unsigned long long)s->disk_objects, (unsigned long long)s->heap,
                (unsigned long long)s->rss.file);
    }
}

static void write_cdf(FILE *f, const struct arm *a)
{
    for (int o = 0; o < OP_COUNT; o++) {
        uint64_t seen = 0;
        for (unsigned b = 0; b < HBUCKETS; b++) {
            if (!a->h[o].n[b])
                continue;
            seen += a->h[o].n[b];
            fprintf(f, "%s,%s,%.3f,%.6f\n", a->name, op_names[o], hist_value(b) / 1000.0,
                    (double)seen / (double)a->h[o].count);
        }
    }
}

static int write_files(const char *dir, struct arm *arms, int n)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/capacity_timeseries.csv", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "arm,t_s,ops_per_s,sessions_per_s,hit_ratio,cpu_hit_ratio,disk_hit_ratio,"
               "rss_bytes,rss_anon_bytes,rss_shmem_bytes,rss_bound_bytes,cpu_bytes_used,"
               "disk_bytes_used,cpu_objects,disk_objects,heap_bytes,rss_file_bytes\n");
    for (int i = 0; i < n; i++)
        write_series(f, &arms[i]);
    if (fclose(f))
        return -1;
    snprintf(path, sizeof(path), "%s/capacity_latency_cdf.csv", dir);
    f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "arm,op,latency_us,cdf\n");
    for (int i = 0; i < n; i++)
        write_cdf(f, &arms[i]);
    fprintf(stderr, "wrote %s/capacity_timeseries.csv and capacity_latency_cdf.csv\n", dir);
    return fclose(f);
}

/* ---- options -------------------------------------------------------------------------------- */

static int parse_bytes(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0)
        return -1;
    if (*end == 'K' || *end == 'k')
        v *= 1024, end++;
    else if (*end == 'M' || *end == 'm')
        v *= 1024 * 1024, end++;
    else if (*end == 'G' || *end == 'g')
        v *= 1024.0 * 1024 * 1024, end++;
    if (*end == 'i' && end[1] == 'B')
        end += 2;
    if (*end)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

static int parse_opts(const struct kvt_bench_opts *opts, struct cap_cfg *c)
{
    for (int i = 0; i < opts->argc; i++) {
        const char *a = opts->argv[i], *v = i + 1 < opts->argc ? opts->argv[i + 1] : NULL;
        const char *eq = strchr(a, '=');
        char name[64];
        size_t nl = eq ? (size_t)(eq - a) : strlen(a);
        if (nl >= sizeof(name))
            nl = sizeof(name) - 1;
        memcpy(name, a, nl);
        name[nl] = '\0';
        if (eq)
            v = eq + 1;
        else
            i++;
        if (!v) {
            fprintf(stderr, "capacity: %s needs a value\n", name);
            return -1;
        }
        char *end = NULL;
        int bad = 0;
        if (!strcmp(name, "--socket")) {
            c->socket = v;
        } else if (!strcmp(name, "--clients")) {
            unsigned long n = strtoul(v, &end, 10);
            bad = *end || n < 1 || n > CLIENTS_MAX;
            c->clients = (uint32_t)n;
        } else if (!strcmp(name, "--processes")) {
            unsigned long n = strtoul(v, &end, 10);
            bad = *end || n < 1 || n > CLIENTS_MAX;
            c->processes = (uint32_t)n;
        } else if (!strcmp(name, "--duration")) {
            c->duration_s = strtod(v, &end);
            bad = *end || !(c->duration_s >= 1 && c->duration_s <= 86400);
        } else if (!strcmp(name, "--working-set")) {
            bad = parse_bytes(v, &c->ws_bytes) || c->ws_bytes < 16 * MIB;
        } else if (!strcmp(name, "--dram")) {
            bad = parse_bytes(v, &c->dram_bytes) || c->dram_bytes < 4 * MIB;
        } else if (!strcmp(name, "--disk")) {
            bad = parse_bytes(v, &c->disk_bytes);
        } else if (!strcmp(name, "--abstract-bytes")) {
            bad = parse_bytes(v, &c->abstract_bytes);
        } else if (!strcmp(name, "--seed")) {
            c->seed = strtoull(v, &end, 0);
            bad = *end != '\0';
        } else if (!strcmp(name, "--zipf")) {
            c->zipf_s = strtod(v, &end);
            bad = *end || !(c->zipf_s > 0 && c->zipf_s < 4);
        } else if (!strcmp(name, "--daemon-opt")) {
            /* No quote, backslash or comma: the value is written into the JSON and CSV. */
            bad = c->n_daemon_opts == 8 || !strchr(v, '=') || strlen(v) > 200 ||
                  strpbrk(v, "\"\\,\n");
            if (!bad)
                c->daemon_opts[c->n_daemon_opts++] = v;
        } else if (!strcmp(name, "--bound-scale")) {
            c->bound_scale = strtod(v, &end);
            bad = *end || !(c->bound_scale > 0 && c->bound_scale <= 1000);
        } else if (!strcmp(name, "--prefill-tokens-per-s")) {
            c->prefill_tps = strtod(v, &end);
            bad = *end || !(c->prefill_tps > 0);
        } else {
            fprintf(stderr, "capacity: unknown option %s\n", name);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "capacity: bad value for %s: %s\n", name, v);
            return -1;
        }
    }
    return 0;
}

/* with_disk: the disk tier too; cost: tier.eviction=cost (before the caller's own settings). */
static int start_daemon(const struct cap_cfg *cfg, struct kvt_test_daemon *d, int with_disk,
                        int cost)
{
    static char a[20][224];
    const char *args[21];
    int n = 0;
    uint64_t objects = (cfg->dram_bytes + cfg->disk_bytes) / (64 * 1024) + 4096;
    snprintf(a[n++], sizeof(a[0]), "--cpu.arena_bytes=%llu", (unsigned long long)cfg->dram_bytes);
    snprintf(a[n++], sizeof(a[0]), "--cpu.page_bytes=1M");
    snprintf(a[n++], sizeof(a[0]), "--index.max_objects=%llu", (unsigned long long)objects);
    snprintf(a[n++], sizeof(a[0]), "--abstract.bytes_max=%llu",
             (unsigned long long)cfg->abstract_bytes);
    snprintf(a[n++], sizeof(a[0]), "--log_level=warn");
    if (with_disk && cfg->disk_bytes) {
        snprintf(a[n++], sizeof(a[0]), "--disk.bytes=%llu", (unsigned long long)cfg->disk_bytes);
        /* Staging is cut into buffers of disk.object_bytes_max, and background writes take at
         * most half of them: objects of at most 256K let 16M stage 32 writes at once (with the
         * default 8M, it would be one at a time). */
        snprintf(a[n++], sizeof(a[0]), "--disk.staging_bytes=16M");
        snprintf(a[n++], sizeof(a[0]), "--disk.object_bytes_max=256K");
        snprintf(a[n++], sizeof(a[0]), "--disk.objects_max=%llu", (unsigned long long)objects);
    }
    if (cost)
        snprintf(a[n++], sizeof(a[0]), "--tier.eviction=cost");
    /* The caller's own settings come last, so they override the ones above. */
    for (int i = 0; i < cfg->n_daemon_opts; i++)
        snprintf(a[n++], sizeof(a[0]), "--%s", cfg->daemon_opts[i]);
    for (int i = 0; i < n; i++)
        args[i] = a[i];
    args[n] = NULL;
    d->no_fault_injection = 1;
    return kvt_test_daemon_start(d, args);
}

/* The pid serving a socket (SO_PEERCRED), for its RSS when the daemon is not ours. */
static pid_t peer_pid(const char *sock)
{
    int fd = kvt_test_raw_connect(sock);
    if (fd < 0)
        return -1;
    struct ucred cr;
    socklen_t len = sizeof(cr);
    pid_t pid = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) ? -1 : cr.pid;
    close(fd);
    return pid;
}

int kvt_bench_capacity(const struct kvt_bench_opts *opts, struct kvt_bench_report *r)
{
    struct cap_cfg cfg = {.clients = 4,
                          .processes = 1,
                          .duration_s = opts->quick ? 10 : 600,
                          .ws_bytes = (opts->quick ? 384 : 4096) * MIB,
                          .abstract_bytes = 8 * MIB,
                          .seed = 1,
                          .zipf_s = 0.9,
                          .prefill_tps = 10000,
                          .bound_scale = 1.0};
    if (parse_opts(opts, &cfg))
        return KVT_BENCH_USAGE;
    if (cfg.processes > cfg.clients) {
        fprintf(stderr, "capacity: --processes %u is more than --clients %u\n", cfg.processes,
                cfg.clients);
        return KVT_BENCH_USAGE;
    }
    if (!cfg.dram_bytes)
        cfg.dram_bytes = cfg.ws_bytes / 10;
    if (!cfg.disk_bytes)
        cfg.disk_bytes = cfg.ws_bytes / 2;
    static struct trace t;
    const uint64_t chunk_bytes = (uint64_t)LAYERS * 2 * KV_HEADS * HEAD_DIM * 2 * CHUNK_TOKENS;
    if (trace_build(&t, cfg.seed, cfg.zipf_s, cfg.ws_bytes / chunk_bytes)) {
        fprintf(stderr, "capacity: out of memory for the trace\n");
        return 1;
    }
    kvt_bench_progress("trace: %u prefixes, %u conversations, %llu reusable chunks of %llu KiB "
                       "(%.0f MiB); %u clients, %.0f s per arm",
                       t.n_prefixes, t.n_convs, (unsigned long long)t.reusable_chunks,
                       (unsigned long long)chunk_bytes / 1024,
                       (double)(t.reusable_chunks * chunk_bytes) / MIB, cfg.clients,
                       cfg.duration_s);
    kvt_bench_row(r, "config");
    kvt_bench_num(r, "clients", cfg.clients);
    kvt_bench_num(r, "processes", cfg.processes);
    kvt_bench_num(r, "duration_s", cfg.duration_s);
    kvt_bench_num(r, "working_set_bytes", (double)(t.reusable_chunks * chunk_bytes));
    kvt_bench_num(r, "chunk_bytes", (double)chunk_bytes);
    kvt_bench_num(r, "tokens_per_chunk", CHUNK_TOKENS);
    kvt_bench_num(r, "prefixes", t.n_prefixes);
    kvt_bench_num(r, "conversations", t.n_convs);
    kvt_bench_num(r, "zipf_s", cfg.zipf_s);
    kvt_bench_num(r, "seed", (double)cfg.seed);
    kvt_bench_num(r, "prefill_tokens_per_s", cfg.prefill_tps);
    kvt_bench_str(r, "policy",
                  "kvtier and dram_lru: LRU (CLOCK on disk); kvtier_cost: tier.eviction=cost");
    if (cfg.socket) {
        kvt_bench_str(r, "daemon", "external (--socket): its tiers as configured");
    } else {
        kvt_bench_num(r, "dram_bytes", (double)cfg.dram_bytes);
        kvt_bench_num(r, "disk_bytes", (double)cfg.disk_bytes);
        kvt_bench_num(r, "abstract_bytes_max", (double)cfg.abstract_bytes);
        char extra[128] = "";
        for (int i = 0; i < cfg.n_daemon_opts; i++)
            snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra), "%s%s", i ? " " : "",
                     cfg.daemon_opts[i]);
        kvt_bench_str(r, "daemon_opts", extra);
    }

    static struct arm arms[3];
    memset(arms, 0, sizeof(arms));
    int n_arms = 0, rc = 0;
    if (cfg.socket) {
        pid_t pid = peer_pid(cfg.socket);
        arms[0].name = "kvtier";
        if (run_arm(&cfg, &t, &arms[0], cfg.socket, pid, NULL))
            rc = 1;
        else
            n_arms = 1;
    } else {
        /* kvtier (LRU), the same with cost-aware eviction, DRAM only (LRU). */
        const char *names[3] = {"kvtier", "kvtier_cost", "dram_lru"};
        for (int i = 0; i < 3 && !rc; i++) {
            if (!kvt_bench_part(opts, names[i]))
                continue;
            struct kvt_test_daemon d = {0};
            if (start_daemon(&cfg, &d, i < 2, i == 1)) {
                fprintf(stderr, "capacity: cannot start kvtierd\n");
                rc = 1;
                break;
            }
            struct arm *a = &arms[n_arms];
            a->name = names[i];
            /* The later arms replay the sessions the first arm did, when it ran. */
            const uint64_t *targets = n_arms ? arms[0].sessions_per_client : NULL;
            if (run_arm(&cfg, &t, a, d.socket_path, d.pid, targets))
                rc = 1;
            else
                n_arms++;
            if (kvt_test_daemon_stop(&d) != 0) {
                fprintf(stderr, "capacity: kvtierd did not stop cleanly (log %s)\n", d.log_path);
                rc = 1;
            }
            kvt_test_daemon_cleanup(&d);
        }
    }
    for (int i = 0; i < n_arms; i++) {
        report_arm(r, &cfg, &arms[i]);
        const struct client *s = &arms[i].tot;
        if (s->errors || s->wrong_bytes || arms[i].bound_violations || arms[i].rss_unreadable ||
            !s->sessions) {
            fprintf(stderr,
                    "capacity: %s failed: %llu errors, %llu wrong bytes, %llu samples over the "
                    "RSS bound, %llu unreadable, %llu sessions\n",
                    arms[i].name, (unsigned long long)s->errors, (unsigned long long)s->wrong_bytes,
                    (unsigned long long)arms[i].bound_violations,
                    (unsigned long long)arms[i].rss_unreadable, (unsigned long long)s->sessions);
            rc = 1;
        }
    }
    if (n_arms >= 1) {
        /* No cache: the first arm's trace with every token recomputed. */
        const struct client *s = &arms[0].tot;
        kvt_bench_row(r, "no_cache");
        kvt_bench_num(r, "tokens_recomputed", (double)s->tokens_total);
        kvt_bench_num(r, "modelled_prefill_s", (double)s->tokens_total / cfg.prefill_tps);
        kvt_bench_num(r, "hit_ratio", 0);
        double kv_recompute = (double)(s->tokens_total - s->tokens_saved);
        double kv_s = kv_recompute / cfg.prefill_tps + (double)s->fetch_ns / 1e9;
        char rn[64];
        snprintf(rn, sizeof(rn), "%s_vs_no_cache_prefill_time_ratio", arms[0].name);
        kvt_bench_ratio(r, rn, kv_s / ((double)s->tokens_total / cfg.prefill_tps));
        snprintf(rn, sizeof(rn), "%s_tokens_saved_ratio", arms[0].name);
        kvt_bench_ratio(r, rn, (double)s->tokens_saved / (double)s->tokens_total);
        for (int i = 1; i < n_arms; i++) {
            if (strcmp(arms[0].name, "kvtier"))
                break;
            const struct client *b = &arms[i].tot;
            double br = (double)(b->tokens_total - b->tokens_saved);
            double b_s = br / cfg.prefill_tps + (double)b->fetch_ns / 1e9;
            double ha = (double)(s->hit_cpu + s->hit_disk) / (double)s->chunks;
            double hb = (double)(b->hit_cpu + b->hit_disk) / (double)b->chunks;
            snprintf(rn, sizeof(rn), "kvtier_vs_%s_prefill_time_ratio", arms[i].name);
            kvt_bench_ratio(r, rn, kv_s / b_s);
            snprintf(rn, sizeof(rn), "kvtier_vs_%s_recompute_ratio", arms[i].name);
            kvt_bench_ratio(r, rn, kv_recompute / br);
            snprintf(rn, sizeof(rn), "kvtier_vs_%s_hit_ratio", arms[i].name);
            kvt_bench_ratio(r, rn, ha / hb);
        }
    }
    if (cfg.socket) {
        kvt_bench_row(r, "dram_lru");
        kvt_bench_null(r, "hit_ratio", "--socket: the daemon is the operator's; not restarted");
    }
    kvt_bench_row(r, "lmcache");
    kvt_bench_null(
        r, "hit_ratio",
        "not run: pip resolves lmcache 0.5.6 to 108 packages with torch and CUDA 13 wheels; "
        "no GPU or client for it here");
    if (n_arms && write_files(opts->out_dir, arms, n_arms))
        fprintf(stderr, "capacity: cannot write the time series in %s\n", opts->out_dir);
    for (int i = 0; i < 2; i++)
        free(arms[i].samples);
    trace_free(&t);
    return rc;
}
