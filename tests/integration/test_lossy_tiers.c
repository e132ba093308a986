/*
 * Lossy forms of the disk tier through a real kvtierd (docs/lossy.md): q8 and q4 round trips
 * within the format's per-group error bound and bit-identical to the kernels' quantization, a
 * restart keeping every object's form and bytes, a corrupted quantized object detected and never
 * served, the stored block returned to an engine that asks for it, the daemon's checksum of the
 * dequantized bytes, refusal (E_LOSSY) in a namespace registered without allow_lossy with nothing
 * changed, fp16 namespaces untouched bit for bit under a lossy disk.form, chunks ranked low by
 * Select kept in disk.form_cold, and bad inputs. test_bytes_per_token prints the disk bytes per
 * token of fp16, q8 and q4 for a Llama-3-8B-shaped chunk (the figures of docs/lossy.md).
 */
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/checksum.h"
#include "kernels/half.h"
#include "kernels/quant.h"
#include "kvtier.pb-c.h"
#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

/* 2 layers x 2 KV heads x 64 dims, fp16, 64-token chunks: 512 bytes a row, 64 KiB a chunk. */
#define LAYERS 2u
#define HEADS 2u
#define HD 64u
#define TOKENS 64u
#define ROW_HALFS (2u * HEADS * HD)
#define CHUNK_HALFS (LAYERS * TOKENS * ROW_HALFS)
#define CHUNK_BYTES (CHUNK_HALFS * 2u)
#define N_CHUNKS 6u

static struct kvt_ns_spec spec(int lossy)
{
    return (struct kvt_ns_spec){.model_id = "lossy-test",
                                .layers = LAYERS,
                                .kv_heads = HEADS,
                                .head_dim = HD,
                                .dtype = KVT_DTYPE_FP16,
                                .tokens_per_chunk = TOKENS,
                                .allow_lossy = lossy};
}

static uint16_t data[N_CHUNKS][CHUNK_HALFS];

static float rnd(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return (float)((*x >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* KV-like values: mostly small, a few channels with outliers (as real keys have). */
static void make_data(void)
{
    uint64_t x = 0x1055f;
    for (uint32_t c = 0; c < N_CHUNKS; c++)
        for (size_t i = 0; i < CHUNK_HALFS; i++) {
            float v = rnd(&x) * (i % HD == 7 ? 12.0f : 1.5f);
            data[c][i] = kvt_f32_to_f16(v);
        }
}

static struct kvt_key key_of(uint32_t i)
{
    return (struct kvt_key){0x4000 + i, 0x1055};
}

static struct kvt_quant_chunk chunk_fmt(uint32_t bits, uint32_t head_dim, uint32_t layers,
                                        uint32_t heads)
{
    struct kvt_quant_fmt f = {bits, KVT_QUANT_AXIS_TOKEN, kvt_form_group(head_dim), head_dim};
    return (struct kvt_quant_chunk){layers, heads, f, f};
}

static uint32_t bits_of(enum kvt_form f)
{
    return f == KVT_FORM_Q8 ? 8u : 4u;
}

/* Body bytes of a quantized object (docs/lossy.md): every token row quantized on its own
 * (2 x heads x (head_dim x bits / 8 codes + head_dim / G x 4 parameter bytes)), in 16-token
 * blocks with an 8-byte trailer each, layer after layer. */
static uint64_t q_body_bytes(uint32_t bits, uint32_t layers, uint32_t heads, uint32_t head_dim,
                             uint32_t tokens)
{
    uint64_t row = 2ull * heads * (head_dim * bits / 8 + head_dim / kvt_form_group(head_dim) * 4);
    return layers * (tokens * row + (tokens + 15) / 16 * 8);
}

static uint64_t stat_of(struct kvt_client *c, const char *name)
{
    uint64_t v = kvt_test_stat(c, name);
    if (v == UINT64_MAX)
        fail_msg("no stat %s", name);
    return v;
}

static struct kvt_client *connect_ns(const struct kvt_test_daemon *d, int lossy,
                                     struct kvt_ns_info *ns)
{
    struct kvt_connect_opts o = {
        .socket_path = d->socket_path, .arena_bytes = 8 << 20, .timeout_ms = 10000};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    struct kvt_ns_spec sp = spec(lossy);
    assert_int_equal(kvt_register(c, &sp, ns), 0);
    return c;
}

/* Every element of got within the format's bound of want: |x - x'| <= s/2 (the group's scale)
 * plus one fp16 step at x' (the read-back rounding, docs/kernels.md "Error bound"). Returns the
 * largest error seen in units of s. */
static double check_bound(const uint16_t *want, const uint16_t *got, size_t rows, uint32_t bits)
{
    uint32_t g = kvt_form_group(HD);
    double worst = 0;
    for (size_t r = 0; r < rows * (2u * HEADS); r++)
        for (uint32_t c0 = 0; c0 < HD; c0 += g) {
            const uint16_t *x = want + r * HD + c0, *y = got + r * HD + c0;
            uint16_t lo = x[0], hi = x[0];
            for (uint32_t i = 1; i < g; i++) {
                if (kvt_f16_to_f32(x[i]) < kvt_f16_to_f32(lo))
                    lo = x[i];
                if (kvt_f16_to_f32(x[i]) > kvt_f16_to_f32(hi))
                    hi = x[i];
            }
            double s = kvt_f16_to_f32(kvt_quant_scale_f16(lo, hi, bits));
            for (uint32_t i = 0; i < g; i++) {
                double a = kvt_f16_to_f32(x[i]), b = kvt_f16_to_f32(y[i]);
                int e;
                frexp(b, &e);
                double ulp = ldexp(1.0, (e - 1 > -14 ? e - 1 : -14) - 10);
                double err = fabs(a - b);
                if (err > s / 2 + ulp)
                    fail_msg("row %zu channel %u: %g read back as %g, scale %g", r, c0 + i, a, b,
                             s);
                if (s > 0 && err / s > worst)
                    worst = err / s;
            }
        }
    return worst;
}

/* ---- raw protocol helpers ---------------------------------------------------------------- */

struct raw {
    int fd;
    uint32_t ns;
    uint8_t *arena;
    uint64_t next;
};

static void raw_open(struct raw *r, const struct kvt_test_daemon *d, int lossy)
{
    struct kvt_ns_spec sp = spec(lossy);
    r->fd = kvt_test_raw_session(d->socket_path, NULL, &sp, 4 << 20, &r->arena, &r->ns);
    assert_true(r->fd >= 0);
    r->next = 100;
}

static void raw_close(struct raw *r)
{
    close(r->fd);
    munmap(r->arena, 4 << 20);
}

static Kvtier__Response *raw_call(struct raw *r, Kvtier__Request *rq)
{
    rq->id = ++r->next;
    assert_int_equal(kvt_test_send_request(r->fd, rq, -1), 0);
    Kvtier__Response *resp = kvt_test_read_response(r->fd, 1 << 20);
    assert_non_null(resp);
    assert_int_equal(resp->id, rq->id);
    return resp;
}

/* A Put of chunk bytes (inline) with form; returns the status. */
static int raw_put(struct raw *r, uint32_t i, const uint16_t *bytes, size_t len, uint32_t form)
{
    struct kvt_key key = key_of(i);
    Kvtier__Key k = KVTIER__KEY__INIT;
    k.lo = key.lo;
    k.hi = key.hi;
    Kvtier__PutReq p = KVTIER__PUT_REQ__INIT;
    p.ns = r->ns;
    p.key = &k;
    p.inline_data.data = (uint8_t *)bytes;
    p.inline_data.len = len;
    p.form = form;
    Kvtier__Request rq = KVTIER__REQUEST__INIT;
    rq.op_case = KVTIER__REQUEST__OP_PUT;
    rq.put = &p;
    Kvtier__Response *resp = raw_call(r, &rq);
    int st = resp->status;
    assert_true(st == 0 || (resp->error && *resp->error)); /* every error says why */
    kvtier__response__free_unpacked(resp, NULL);
    return st;
}

/* A Get into the arena at 0 (capacity cap): the response, to be freed. */
static Kvtier__Response *raw_get(struct raw *r, uint32_t i, uint64_t cap, int stored, int inl,
                                 int rotate)
{
    struct kvt_key key = key_of(i);
    Kvtier__Key k = KVTIER__KEY__INIT;
    k.lo = key.lo;
    k.hi = key.hi;
    Kvtier__GetReq g = KVTIER__GET_REQ__INIT;
    g.ns = r->ns;
    g.key = &k;
    g.capacity = cap;
    g.stored_form = stored;
    g.want_inline = inl;
    g.rotate = rotate;
    Kvtier__Request rq = KVTIER__REQUEST__INIT;
    rq.op_case = KVTIER__REQUEST__OP_GET;
    rq.get = &g;
    return raw_call(r, &rq);
}

static int raw_get_status(struct raw *r, uint32_t i, uint64_t cap, int stored, int inl, int rotate,
                          uint64_t *len_out)
{
    Kvtier__Response *resp = raw_get(r, i, cap, stored, inl, rotate);
    int st = resp->status;
    assert_true(st == 0 || (resp->error && *resp->error) || st == KVT_E_SMALLBUF);
    if (len_out)
        *len_out = resp->result_case == KVTIER__RESPONSE__RESULT_GET ? resp->get->length : 0;
    kvtier__response__free_unpacked(resp, NULL);
    return st;
}

/* ---- tests ------------------------------------------------------------------------------- */

/* Write-through (a Put is answered once durable on disk), with disk.form = f, plus extra. */
static void args_for(enum kvt_form f, const char **buf, const char *extra)
{
    int n = 0;
    buf[n++] = "--tier.write_policy=write-through";
    buf[n++] = "--disk.bytes=64M";
    buf[n++] = "--cpu.arena_bytes=16M";
    buf[n++] = "--cpu.page_bytes=1M";
    buf[n++] = f == KVT_FORM_Q8 ? "--disk.form=q8" : f == KVT_FORM_Q4 ? "--disk.form=q4" : NULL;
    if (!buf[n - 1])
        n--;
    if (extra)
        buf[n++] = extra;
    buf[n] = NULL;
}

/* q8 and q4: Put, restart (DRAM empty), the stored block equals the kernels' quantization of
 * the Put's bytes, a plain Get is its dequantization (within the bound of the original) with
 * the daemon's checksum of it, and the form and gauges survive the restart. */
static void round_trip(enum kvt_form form)
{
    const char *args[10];
    args_for(form, args, NULL);
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_client *c = connect_ns(&d, 1, &ns);
    for (uint32_t i = 0; i < N_CHUNKS; i++) {
        struct kvt_key k = key_of(i);
        assert_int_equal(kvt_put(c, ns.handle, &k, data[i], CHUNK_BYTES, 0), 0);
    }
    struct kvt_quant_chunk qc = chunk_fmt(bits_of(form), HD, LAYERS, HEADS);
    size_t qbytes = kvt_quant_chunk_bytes(&qc, TOKENS);
    const char *objs = form == KVT_FORM_Q8 ? "disk.q8_objects" : "disk.q4_objects";
    const char *saved = form == KVT_FORM_Q8 ? "disk.q8_bytes_saved" : "disk.q4_bytes_saved";
    assert_int_equal(stat_of(c, "disk.writes_durable"), N_CHUNKS);
    assert_int_equal(stat_of(c, "disk.lossy_writes"), N_CHUNKS);
    assert_int_equal(stat_of(c, objs), N_CHUNKS);
    uint64_t body = q_body_bytes(bits_of(form), LAYERS, HEADS, HD, TOKENS);
    assert_int_equal(stat_of(c, saved), (uint64_t)N_CHUNKS * (CHUNK_BYTES - body));
    assert_int_equal(stat_of(c, "lossy_forms_asked"), N_CHUNKS);
    /* The DRAM copy is the Put's, bit for bit. */
    static uint16_t got[CHUNK_HALFS], block[CHUNK_HALFS], want_block[CHUNK_HALFS], deq[CHUNK_HALFS];
    size_t len = 0;
    enum kvt_tier_id tier;
    struct kvt_key k0 = key_of(0);
    assert_int_equal(kvt_get(c, ns.handle, &k0, got, sizeof(got), &len, &tier), 0);
    assert_int_equal(tier, KVT_TIER_CPU);
    assert_memory_equal(got, data[0], CHUNK_BYTES);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);

    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    c = connect_ns(&d, 1, &ns);
    assert_int_equal(stat_of(c, objs), N_CHUNKS);
    assert_int_equal(stat_of(c, saved), (uint64_t)N_CHUNKS * (CHUNK_BYTES - body));
    double worst = 0;
    for (uint32_t i = 0; i < N_CHUNKS; i++) {
        struct kvt_key k = key_of(i);
        assert_int_equal(kvt_quant_chunk_f16(NULL, &qc, data[i], TOKENS, (uint8_t *)want_block,
                                             sizeof(want_block)),
                         0);
        assert_int_equal(
            kvt_dequant_chunk_f16(NULL, &qc, (const uint8_t *)want_block, qbytes, TOKENS, deq), 0);
        /* Rows 5..39 of layer 1 from disk: only their blocks read, verified, dequantized. */
        static uint16_t rows[35 * ROW_HALFS];
        uint64_t read0 = stat_of(c, "disk.bytes_read");
        assert_int_equal(kvt_get_range(c, ns.handle, &k, 1, 5, 35, rows, sizeof(rows), &len, &tier),
                         0);
        assert_int_equal(tier, KVT_TIER_DISK);
        assert_int_equal(len, sizeof(rows));
        assert_memory_equal(rows, deq + ((size_t)TOKENS + 5) * ROW_HALFS, sizeof(rows));
        assert_true(stat_of(c, "disk.bytes_read") - read0 <
                    q_body_bytes(bits_of(form), LAYERS, HEADS, HD, TOKENS));
        enum kvt_form f = KVT_FORM_FP16;
        if (i % 2 == 0) {
            /* The stored block, undecoded, straight from disk. */
            assert_int_equal(
                kvt_get_form(c, ns.handle, &k, 0, block, sizeof(block), &len, &f, &tier), 0);
            assert_int_equal(f, form);
            assert_int_equal(len, qbytes);
            assert_int_equal(tier, KVT_TIER_DISK);
            assert_memory_equal(block, want_block, qbytes);
        }
        /* fp16, dequantized (the library verified the daemon's checksum of it). */
        assert_int_equal(kvt_get(c, ns.handle, &k, got, sizeof(got), &len, &tier), 0);
        assert_int_equal(len, CHUNK_BYTES);
        assert_int_equal(tier, KVT_TIER_DISK);
        assert_memory_equal(got, deq, CHUNK_BYTES);
        double w = check_bound(data[i], got, (size_t)LAYERS * TOKENS, bits_of(form));
        worst = w > worst ? w : worst;
        assert_true(memcmp(got, data[i], CHUNK_BYTES) != 0); /* it really is lossy */
        /* In DRAM now: a Get of the stored form answers fp16, what DRAM keeps. */
        assert_int_equal(kvt_get_form(c, ns.handle, &k, 0, block, sizeof(block), &len, &f, &tier),
                         0);
        assert_int_equal(f, KVT_FORM_FP16);
        assert_int_equal(len, CHUNK_BYTES);
        assert_memory_equal(block, deq, CHUNK_BYTES);
    }
    printf("  %s: largest error %.3f of a group's scale\n", form == KVT_FORM_Q8 ? "q8" : "q4",
           worst);
    assert_true(stat_of(c, "gets_dequantized") >= N_CHUNKS);
    assert_int_equal(stat_of(c, "gets_stored_form"), N_CHUNKS / 2);
    /* Every whole read (the stored blocks and the promotions) was verified and decoded on a
     * worker, not on the loop; the bytes above are the kernels' to the bit all the same. */
    assert_int_equal(stat_of(c, "tier.reads_decoded_on_workers"), N_CHUNKS + N_CHUNKS / 2);

    /* The checksum on the wire is kvt_payload_checksum of the bytes returned. */
    struct raw r;
    raw_open(&r, &d, 1);
    Kvtier__Response *resp = raw_get(&r, 1, CHUNK_BYTES, 0, 0, 0);
    assert_int_equal(resp->status, 0);
    assert_non_null(resp->get->checksum);
    assert_int_equal(resp->get->form, KVT_FORM_FP16);
    assert_int_equal(resp->get->checksum->value, kvt_payload_checksum(r.arena, CHUNK_BYTES));
    kvtier__response__free_unpacked(resp, NULL);
    resp = raw_get(&r, 1, 0, 0, 1, 0); /* inline: summed on the loop, the same value */
    assert_int_equal(resp->status, 0);
    assert_non_null(resp->get->checksum);
    assert_int_equal(resp->get->checksum->value,
                     kvt_payload_checksum(resp->get->inline_data.data, CHUNK_BYTES));
    kvtier__response__free_unpacked(resp, NULL);
    raw_close(&r);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* CPU time of the daemon's loop thread (its main thread: tid = pid) so far, in ns. */
static uint64_t loop_cpu_ns(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/task/%d/schedstat", (int)pid, (int)pid);
    FILE *f = fopen(path, "r");
    unsigned long long ns = 0;
    if (!f || fscanf(f, "%llu", &ns) != 1)
        fail_msg("cannot read %s", path);
    fclose(f);
    return ns;
}

/* 1 MiB q8 chunks (8 layers x 8 KV heads x 128 dims, 32 tokens) promoted from disk after a
 * restart: the bytes are the kernels' dequantization, every promotion is decoded on a worker,
 * and the loop thread's CPU time per promotion is printed against a Get of the same chunk from
 * DRAM (the figures of docs/lossy.md; KVT_BUILD may name another daemon to compare). */
#define MIB_LAYERS 8u
#define MIB_HEADS 8u
#define MIB_HD 128u
#define MIB_TOKENS 32u
#define MIB_HALFS (MIB_LAYERS * MIB_TOKENS * 2u * MIB_HEADS * MIB_HD)
#define MIB_CHUNKS 24u
static void test_promotions_on_workers(void **state)
{
    (void)state;
    const char *args[] = {"--tier.write_policy=write-through",
                          "--disk.bytes=256M",
                          "--cpu.arena_bytes=64M",
                          "--cpu.page_bytes=2M",
                          "--disk.form=q8",
                          "--busy_poll_us=0", /* the loop's CPU time is its work, not spinning */
                          NULL};
    struct kvt_test_daemon d = {0};
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_connect_opts o = {
        .socket_path = d.socket_path, .arena_bytes = 8 << 20, .timeout_ms = 10000};
    struct kvt_ns_spec sp = {.model_id = "lossy-mib",
                             .layers = MIB_LAYERS,
                             .kv_heads = MIB_HEADS,
                             .head_dim = MIB_HD,
                             .dtype = KVT_DTYPE_FP16,
                             .tokens_per_chunk = MIB_TOKENS,
                             .allow_lossy = 1};
    struct kvt_client *c = NULL;
    struct kvt_ns_info ns;
    static uint16_t src[MIB_HALFS], got[MIB_HALFS], deq[MIB_HALFS];
    static uint8_t q[MIB_HALFS * 2];
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &sp, &ns), 0);
    for (uint32_t i = 0; i < MIB_CHUNKS; i++) {
        kvt_test_fill(src, sizeof(src), 0x3b + i);
        for (size_t j = 0; j < MIB_HALFS; j++) /* finite values: random bits make NaN groups */
            src[j] = kvt_f32_to_f16((float)(src[j] % 2001) / 1000.0f - 1.0f);
        struct kvt_key k = key_of(100 + i);
        assert_int_equal(kvt_put(c, ns.handle, &k, src, sizeof(src), 0), 0);
    }
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &sp, &ns), 0);
    uint8_t *buf = kvt_arena_alloc(c, sizeof(got));
    assert_non_null(buf);
    struct kvt_quant_chunk qc = chunk_fmt(8, MIB_HD, MIB_LAYERS, MIB_HEADS);
    size_t qbytes = kvt_quant_chunk_bytes(&qc, MIB_TOKENS);
    uint64_t ns_disk = 0, ns_dram = 0;
    for (int pass = 0; pass < 2; pass++) {
        uint64_t t0 = loop_cpu_ns(d.pid);
        for (uint32_t i = 0; i < MIB_CHUNKS; i++) {
            struct kvt_key k = key_of(100 + i);
            size_t len = 0;
            enum kvt_tier_id tier;
            assert_int_equal(kvt_get(c, ns.handle, &k, buf, sizeof(got), &len, &tier), 0);
            assert_int_equal(len, sizeof(got));
            assert_int_equal(tier, pass == 0 ? KVT_TIER_DISK : KVT_TIER_CPU);
        }
        uint64_t spent = loop_cpu_ns(d.pid) - t0;
        *(pass == 0 ? &ns_disk : &ns_dram) = spent / MIB_CHUNKS;
    }
    /* The bytes: the kernels' dequantization of the kernels' quantization of the Put's. */
    struct kvt_key k = key_of(100 + MIB_CHUNKS - 1);
    size_t len = 0;
    enum kvt_tier_id tier;
    kvt_test_fill(src, sizeof(src), 0x3b + MIB_CHUNKS - 1);
    for (size_t j = 0; j < MIB_HALFS; j++)
        src[j] = kvt_f32_to_f16((float)(src[j] % 2001) / 1000.0f - 1.0f);
    assert_int_equal(kvt_quant_chunk_f16(NULL, &qc, src, MIB_TOKENS, q, sizeof(q)), 0);
    assert_int_equal(kvt_dequant_chunk_f16(NULL, &qc, q, qbytes, MIB_TOKENS, deq), 0);
    assert_int_equal(kvt_get(c, ns.handle, &k, got, sizeof(got), &len, &tier), 0);
    assert_memory_equal(got, deq, sizeof(got));
    kvt_arena_free(c, buf);
    uint64_t on_workers = kvt_test_stat(c, "tier.reads_decoded_on_workers");
    printf("  1 MiB q8 Gets: loop thread CPU %.1f us per promotion from disk, %.1f us per Get "
           "from DRAM; %llu of %u promotions decoded on workers\n",
           ns_disk / 1e3, ns_dram / 1e3,
           (unsigned long long)(on_workers == UINT64_MAX ? 0 : on_workers), MIB_CHUNKS);
    if (!getenv("KVT_BUILD"))
        assert_int_equal(on_workers, MIB_CHUNKS);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

static void test_q8_round_trip_restart(void **state)
{
    (void)state;
    round_trip(KVT_FORM_Q8);
}

static void test_q4_round_trip_restart(void **state)
{
    (void)state;
    round_trip(KVT_FORM_Q4);
}

/* A namespace registered without allow_lossy stays fp16, bit for bit, under disk.form = q4. */
static void test_fp16_namespace_untouched(void **state)
{
    (void)state;
    const char *args[10];
    args_for(KVT_FORM_Q4, args, "--disk.codec=none");
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_client *c = connect_ns(&d, 0, &ns);
    for (uint32_t i = 0; i < N_CHUNKS; i++) {
        struct kvt_key k = key_of(i);
        assert_int_equal(kvt_put(c, ns.handle, &k, data[i], CHUNK_BYTES, 0), 0);
    }
    assert_int_equal(stat_of(c, "disk.lossy_writes"), 0);
    assert_int_equal(stat_of(c, "lossy_forms_asked"), 0);
    kvt_close(c);
    kvt_test_daemon_kill(&d); /* DRAM is gone: only the disk can answer */
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    c = connect_ns(&d, 0, &ns);
    assert_int_equal(stat_of(c, "disk.q4_objects"), 0);
    static uint16_t got[CHUNK_HALFS];
    for (uint32_t i = 0; i < N_CHUNKS; i++) {
        struct kvt_key k = key_of(i);
        size_t len = 0;
        enum kvt_tier_id tier;
        enum kvt_form f;
        assert_int_equal(kvt_get_form(c, ns.handle, &k, 0, got, sizeof(got), &len, &f, &tier),
                         KVT_E_LOSSY);
        assert_int_equal(kvt_get(c, ns.handle, &k, got, sizeof(got), &len, &tier), 0);
        assert_int_equal(tier, KVT_TIER_DISK);
        assert_int_equal(len, CHUNK_BYTES);
        assert_memory_equal(got, data[i], CHUNK_BYTES);
    }
    assert_int_equal(stat_of(c, "gets_dequantized"), 0);
    assert_int_equal(stat_of(c, "lossy_refused"), N_CHUNKS);
    /* Over the wire: fp16, and no checksum of the daemon's (the client has the Put's). */
    struct raw r;
    raw_open(&r, &d, 0);
    Kvtier__Response *resp = raw_get(&r, 2, CHUNK_BYTES, 0, 0, 0);
    assert_int_equal(resp->status, 0);
    assert_null(resp->get->checksum);
    assert_int_equal(resp->get->form, 0);
    assert_memory_equal(r.arena, data[2], CHUNK_BYTES);
    kvtier__response__free_unpacked(resp, NULL);
    raw_close(&r);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* Lossy requests in a namespace without allow_lossy are refused with E_LOSSY and change nothing;
 * bad forms and combinations are E_INVAL; a Put's own form overrides disk.form. */
static void test_refusal_and_bad_input(void **state)
{
    (void)state;
    const char *args[10];
    args_for(KVT_FORM_Q8, args, NULL);
    struct kvt_test_daemon d = {0};
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_ns_info ns;
    struct kvt_client *c = connect_ns(&d, 1, &ns);
    struct raw plain, lossy;
    raw_open(&plain, &d, 0);
    raw_open(&lossy, &d, 1);
    uint64_t puts0 = stat_of(c, "puts"), objects0 = stat_of(c, "cpu.objects");
    assert_int_equal(raw_put(&plain, 0, data[0], CHUNK_BYTES, KVT_FORM_Q8), KVT_E_LOSSY);
    assert_int_equal(raw_put(&plain, 0, data[0], CHUNK_BYTES, KVT_FORM_Q4), KVT_E_LOSSY);
    assert_int_equal(raw_get_status(&plain, 0, CHUNK_BYTES, 1, 0, 0, NULL), KVT_E_LOSSY);
    /* Nothing was stored: the key is unknown, no Put counted, no object anywhere. */
    assert_int_equal(raw_get_status(&plain, 0, CHUNK_BYTES, 0, 0, 0, NULL), KVT_E_NOTFOUND);
    assert_int_equal(stat_of(c, "puts"), puts0);
    assert_int_equal(stat_of(c, "cpu.objects"), objects0);
    assert_int_equal(stat_of(c, "disk.writes"), 0);
    assert_int_equal(stat_of(c, "lossy_refused"), 3);
    /* Unknown forms, wrong sizes, and stored-form Gets inline or rotated. */
    assert_int_equal(raw_put(&lossy, 0, data[0], CHUNK_BYTES, 4), KVT_E_INVAL);
    /* Form 3 is a clustered variant: an fp16 chunk's length is not whole entries. */
    assert_int_equal(raw_put(&lossy, 0, data[0], CHUNK_BYTES, KVT_FORM_CLUSTER), KVT_E_GEOMETRY);
    assert_int_equal(raw_put(&lossy, 0, data[0], CHUNK_BYTES, 0xffffffffu), KVT_E_INVAL);
    assert_int_equal(raw_put(&lossy, 0, data[0], CHUNK_BYTES - 2, KVT_FORM_Q8), KVT_E_GEOMETRY);
    assert_int_equal(stat_of(c, "puts"), puts0);
    /* A Put's form over disk.form: chunk 1 asks for q4, chunk 2 takes the policy (q8). */
    assert_int_equal(raw_put(&lossy, 1, data[1], CHUNK_BYTES, KVT_FORM_Q4), 0);
    assert_int_equal(raw_put(&lossy, 2, data[2], CHUNK_BYTES, 0), 0);
    /* The same through the library: kvt_put_form. */
    struct kvt_ns_info pns;
    struct kvt_client *pc = connect_ns(&d, 0, &pns);
    struct kvt_key k3 = key_of(3);
    assert_int_equal(kvt_put_form(pc, pns.handle, &k3, 0, KVT_FORM_Q4, data[3], CHUNK_BYTES, 0),
                     KVT_E_LOSSY);
    assert_int_equal(kvt_put_form(c, ns.handle, &k3, 0, (enum kvt_form)7, data[3], CHUNK_BYTES, 0),
                     KVT_E_INVAL);
    assert_int_equal(kvt_put_form(c, ns.handle, &k3, 0, KVT_FORM_Q4, data[3], CHUNK_BYTES, 0), 0);
    kvt_close(pc);
    assert_int_equal(raw_get_status(&lossy, 1, CHUNK_BYTES, 1, 1, 0, NULL), KVT_E_INVAL);
    assert_int_equal(raw_get_status(&lossy, 1, CHUNK_BYTES, 1, 0, 1, NULL), KVT_E_INVAL);
    assert_int_equal(stat_of(c, "disk.q4_objects"), 2);
    assert_int_equal(stat_of(c, "disk.q8_objects"), 1);
    raw_close(&plain);
    raw_close(&lossy);
    kvt_close(c);
    kvt_test_daemon_kill(&d);

    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    raw_open(&lossy, &d, 1);
    struct kvt_quant_chunk q4 = chunk_fmt(4, HD, LAYERS, HEADS),
                           q8 = chunk_fmt(8, HD, LAYERS, HEADS);
    uint64_t len = 0;
    /* Too small for the stored block: E_SMALLBUF says how much it needs. */
    assert_int_equal(raw_get_status(&lossy, 1, 100, 1, 0, 0, &len), KVT_E_SMALLBUF);
    assert_int_equal(len, kvt_quant_chunk_bytes(&q4, TOKENS));
    assert_int_equal(raw_get_status(&lossy, 2, 100, 1, 0, 0, &len), KVT_E_SMALLBUF);
    assert_int_equal(len, kvt_quant_chunk_bytes(&q8, TOKENS));
    Kvtier__Response *resp = raw_get(&lossy, 1, kvt_quant_chunk_bytes(&q4, TOKENS), 1, 0, 0);
    assert_int_equal(resp->status, 0);
    assert_int_equal(resp->get->form, KVT_FORM_Q4);
    assert_int_equal(resp->get->length, kvt_quant_chunk_bytes(&q4, TOKENS));
    assert_int_equal(resp->get->tier, KVT_TIER_DISK);
    assert_null(resp->get->checksum);
    kvtier__response__free_unpacked(resp, NULL);
    /* A plain Get still needs room for fp16. */
    assert_int_equal(raw_get_status(&lossy, 2, CHUNK_BYTES - 1, 0, 0, 0, &len), KVT_E_SMALLBUF);
    assert_int_equal(len, CHUNK_BYTES);
    raw_close(&lossy);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* Flips a byte of the body (past the header block) of the n-th object of the data file. */
static int corrupt_body(const char *dir, int n, size_t at)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/disk.0", dir);
    int fd = open(path, O_RDWR);
    if (fd < 0)
        return -1;
    uint8_t blk[4096], b;
    int seen = 0;
    for (off_t off = 4096; pread(fd, blk, sizeof(blk), off) == (ssize_t)sizeof(blk); off += 4096) {
        if (memcmp(blk, "KVTO", 4) != 0 || seen++ < n)
            continue;
        off_t p = off + 4096 + (off_t)at;
        int ok = pread(fd, &b, 1, p) == 1;
        b ^= 0x21;
        ok = ok && pwrite(fd, &b, 1, p) == 1;
        close(fd);
        return ok ? 0 : -1;
    }
    close(fd);
    return -1;
}

/* A quantized object whose stored bytes were damaged is never served, neither as its block nor
 * dequantized: the read drops it (counted) and answers a miss. */
static void test_corrupt_quantized_object(void **state)
{
    (void)state;
    const char *args[10];
    args_for(KVT_FORM_Q8, args, NULL);
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_client *c = connect_ns(&d, 1, &ns);
    for (uint32_t i = 0; i < 4; i++) {
        struct kvt_key k = key_of(i);
        assert_int_equal(kvt_put(c, ns.handle, &k, data[i], CHUNK_BYTES, 0), 0);
    }
    kvt_close(c);
    kvt_test_daemon_kill(&d);
    assert_int_equal(corrupt_body(d.dir, 1, 1000), 0);
    assert_int_equal(corrupt_body(d.dir, 2, 20000), 0);
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    c = connect_ns(&d, 1, &ns);
    static uint16_t got[CHUNK_HALFS];
    int misses = 0, stored_misses = 0;
    for (uint32_t i = 0; i < 4; i++) {
        struct kvt_key k = key_of(i);
        size_t len;
        enum kvt_tier_id tier;
        enum kvt_form f;
        /* Chunks 0 and 1 as their block, 2 and 3 dequantized: each path meets one bad object. */
        int rc = i < 2 ? kvt_get_form(c, ns.handle, &k, 0, got, sizeof(got), &len, &f, &tier)
                       : kvt_get(c, ns.handle, &k, got, sizeof(got), &len, &tier);
        assert_true(rc == 0 || rc == KVT_E_NOTFOUND);
        misses += rc == KVT_E_NOTFOUND;
        stored_misses += i < 2 && rc == KVT_E_NOTFOUND;
        if (rc == 0 && i >= 2)
            check_bound(data[i], got, (size_t)LAYERS * TOKENS, 8);
    }
    assert_int_equal(misses, 2);
    assert_int_equal(stored_misses, 1);
    assert_int_equal(stat_of(c, "disk.checksum_failures"), 2);
    assert_int_equal(stat_of(c, "disk.q8_objects"), 2);
    /* Gone for good: a second read is a plain miss, no new failure. */
    for (uint32_t i = 0; i < 4; i++) {
        struct kvt_key k = key_of(i);
        size_t len;
        kvt_get(c, ns.handle, &k, got, sizeof(got), &len, NULL);
    }
    assert_int_equal(stat_of(c, "disk.checksum_failures"), 2);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* A raw GetRange of rows [5, 40) of layer 1 into the arena at 0: the response, to be freed. */
static Kvtier__Response *raw_range(struct raw *r, uint32_t i, uint64_t cap, int stored)
{
    struct kvt_key key = key_of(i);
    Kvtier__Key k = KVTIER__KEY__INIT;
    k.lo = key.lo;
    k.hi = key.hi;
    Kvtier__GetRangeReq g = KVTIER__GET_RANGE_REQ__INIT;
    g.ns = r->ns;
    g.key = &k;
    g.layer = 1;
    g.token_first = 5;
    g.n_tokens = 35;
    g.capacity = cap;
    g.stored_form = stored;
    Kvtier__Request rq = KVTIER__REQUEST__INIT;
    rq.op_case = KVTIER__REQUEST__OP_GET_RANGE;
    rq.get_range = &g;
    return raw_call(r, &rq);
}

/* Ranges of q8 and q4 chunks from disk after a restart: stored-form rows are the kernels'
 * quantization of those rows alone (groups never span tokens), kvt_form_dequant of them is the
 * kernels' dequantization and a plain GetRange's rows, which carry the daemon's checksum (from
 * disk and from a dequantized DRAM copy); a capacity below the rows is E_SMALLBUF with their
 * size; a flipped byte in a covering block is a counted miss. */
static void stored_ranges(enum kvt_form form)
{
    const char *args[10];
    args_for(form, args, NULL);
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_client *c = connect_ns(&d, 1, &ns);
    for (uint32_t i = 0; i < 4; i++) {
        struct kvt_key k = key_of(i);
        assert_int_equal(kvt_put(c, ns.handle, &k, data[i], CHUNK_BYTES, 0), 0);
    }
    kvt_close(c);
    kvt_test_daemon_kill(&d);
    /* Chunk 3, layer 1's first block (rows 0..15): past layer 0's stride in either form. */
    uint64_t layer_stride = q_body_bytes(bits_of(form), 1, HEADS, HD, TOKENS);
    assert_int_equal(corrupt_body(d.dir, 3, layer_stride + 100), 0);
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    c = connect_ns(&d, 1, &ns);
    const uint32_t bits = bits_of(form), n = 35;
    struct kvt_quant_chunk q1 = chunk_fmt(bits, HD, 1, HEADS);
    const size_t qbytes = kvt_quant_chunk_bytes(&q1, n), fbytes = (size_t)n * ROW_HALFS * 2;
    static uint16_t rows[35 * ROW_HALFS], want_q[35 * ROW_HALFS], deq[35 * ROW_HALFS];
    static uint16_t mine[35 * ROW_HALFS], plain[35 * ROW_HALFS];
    for (uint32_t i = 0; i < 3; i++) {
        struct kvt_key k = key_of(i);
        const uint16_t *src = data[i] + ((size_t)TOKENS + 5) * ROW_HALFS; /* layer 1, row 5 */
        assert_int_equal(kvt_quant_chunk_f16(NULL, &q1, src, n, (uint8_t *)want_q, sizeof(want_q)),
                         0);
        assert_int_equal(kvt_dequant_chunk_f16(NULL, &q1, (const uint8_t *)want_q, qbytes, n, deq),
                         0);
        size_t len = 0;
        enum kvt_form f = KVT_FORM_FP16;
        enum kvt_tier_id tier;
        /* Too small a buffer: E_SMALLBUF with the quantized rows' size, nothing read. */
        assert_int_equal(
            kvt_get_range_form(c, ns.handle, &k, 0, 1, 5, n, rows, qbytes - 1, &len, &f, &tier),
            KVT_E_SMALLBUF);
        assert_int_equal(len, qbytes);
        assert_int_equal(
            kvt_get_range_form(c, ns.handle, &k, 0, 1, 5, n, rows, sizeof(rows), &len, &f, &tier),
            0);
        assert_int_equal(f, form);
        assert_int_equal(tier, KVT_TIER_DISK);
        assert_int_equal(len, qbytes);
        assert_memory_equal(rows, want_q, qbytes);
        /* The library's C reference gives the kernels' bytes, and a plain GetRange's. */
        assert_int_equal(kvt_form_dequant(form, HEADS, HD, n, rows, len, mine, sizeof(mine)), 0);
        assert_memory_equal(mine, deq, fbytes);
        assert_int_equal(kvt_form_dequant(form, HEADS, HD, n, rows, len - 1, mine, sizeof(mine)),
                         KVT_E_INVAL);
        assert_int_equal(kvt_form_dequant(form, HEADS, HD, n, rows, len, mine, fbytes - 1),
                         KVT_E_SMALLBUF);
        assert_int_equal(
            kvt_get_range(c, ns.handle, &k, 1, 5, n, plain, sizeof(plain), &len, &tier), 0);
        assert_memory_equal(plain, deq, fbytes);
    }
    assert_int_equal(stat_of(c, "get_ranges_stored_form"), 3);
    assert_int_equal(stat_of(c, "get_ranges_dequantized"), 3);
    /* Over the wire: the daemon's checksum of dequantized rows, from disk and from DRAM. */
    struct raw r;
    raw_open(&r, &d, 1);
    Kvtier__Response *resp = raw_range(&r, 0, fbytes, 0);
    assert_int_equal(resp->status, 0);
    assert_int_equal(resp->get_range->form, KVT_FORM_FP16);
    assert_non_null(resp->get_range->checksum);
    assert_int_equal(resp->get_range->checksum->value, kvt_payload_checksum(r.arena, fbytes));
    kvtier__response__free_unpacked(resp, NULL);
    static uint16_t whole[CHUNK_HALFS];
    struct kvt_key k0 = key_of(0);
    size_t len = 0;
    enum kvt_tier_id tier;
    enum kvt_form f;
    assert_int_equal(kvt_get(c, ns.handle, &k0, whole, sizeof(whole), &len, &tier), 0);
    resp = raw_range(&r, 0, fbytes, 0); /* from the dequantized DRAM copy now */
    assert_int_equal(resp->status, 0);
    assert_int_equal(resp->get_range->tier, KVT_TIER_CPU);
    assert_non_null(resp->get_range->checksum);
    assert_int_equal(resp->get_range->checksum->value, kvt_payload_checksum(r.arena, fbytes));
    kvtier__response__free_unpacked(resp, NULL);
    /* In DRAM: the stored form of its rows is fp16, what DRAM keeps (and needs fp16 room). */
    assert_int_equal(
        kvt_get_range_form(c, ns.handle, &k0, 0, 1, 5, n, rows, qbytes, &len, &f, &tier),
        KVT_E_SMALLBUF);
    assert_int_equal(len, fbytes);
    assert_int_equal(
        kvt_get_range_form(c, ns.handle, &k0, 0, 1, 5, n, rows, sizeof(rows), &len, &f, &tier), 0);
    assert_int_equal(f, KVT_FORM_FP16);
    assert_int_equal(tier, KVT_TIER_CPU);
    assert_int_equal(kvt_get_range(c, ns.handle, &k0, 1, 5, n, plain, sizeof(plain), &len, &tier),
                     0);
    assert_memory_equal(rows, plain, fbytes);
    /* The flipped byte: a counted miss, never rows, and the object is gone. */
    uint64_t fails = stat_of(c, "disk.checksum_failures");
    struct kvt_key k3 = key_of(3);
    memset(rows, 0, sizeof(rows));
    assert_int_equal(
        kvt_get_range_form(c, ns.handle, &k3, 0, 1, 5, n, rows, sizeof(rows), &len, &f, &tier),
        KVT_E_NOTFOUND);
    assert_int_equal(stat_of(c, "disk.checksum_failures"), fails + 1);
    assert_int_equal(kvt_get_range(c, ns.handle, &k3, 1, 5, n, plain, sizeof(plain), &len, &tier),
                     KVT_E_NOTFOUND);
    assert_int_equal(stat_of(c, "disk.checksum_failures"), fails + 1);
    raw_close(&r);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

static void test_q8_stored_ranges(void **state)
{
    (void)state;
    stored_ranges(KVT_FORM_Q8);
}

static void test_q4_stored_ranges(void **state)
{
    (void)state;
    stored_ranges(KVT_FORM_Q4);
}

/* Importance: under write-back, disk.form = q8 and disk.form_cold = q4, the chunk a Select left
 * out is written back (at shutdown) in q4, the chunks it returned in q8. The data follow
 * test_select's: a needle in chunk 2, the sink in chunk 0, the recent window in chunk 3. */
#define SHD 16u
#define SCHUNKS 4u
#define SROW (2u * HEADS * SHD)
static uint16_t sdata[SCHUNKS][LAYERS * TOKENS * SROW];

static void test_cold_chunks_get_form_cold(void **state)
{
    (void)state;
    uint64_t x = 0x5eed;
    float query[4 * SHD];
    for (uint32_t c = 0; c < SCHUNKS; c++)
        for (size_t i = 0; i < LAYERS * TOKENS * SROW; i++)
            sdata[c][i] = kvt_f32_to_f16(0.1f * rnd(&x));
    for (size_t i = 0; i < 4 * SHD; i++)
        query[i] = rnd(&x);
    for (uint32_t i = 0; i < SHD; i++) {
        float dir = i % 2 ? 1.0f : -1.0f;
        query[i] = query[SHD + i] = dir;
        sdata[2][((size_t)1 * TOKENS + 37) * SROW + i] = kvt_f32_to_f16(3.0f * dir);
    }
    const char *args[] = {"--disk.bytes=64M", "--cpu.arena_bytes=16M", "--cpu.page_bytes=1M",
                          "--disk.form=q8",   "--disk.form_cold=q4",   NULL};
    struct kvt_test_daemon d = {0};
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_ns_spec sp = {.model_id = "lossy-select",
                             .layers = LAYERS,
                             .kv_heads = HEADS,
                             .head_dim = SHD,
                             .dtype = KVT_DTYPE_FP16,
                             .tokens_per_chunk = TOKENS,
                             .allow_lossy = 1};
    struct kvt_connect_opts o = {
        .socket_path = d.socket_path, .arena_bytes = 1 << 20, .timeout_ms = 10000};
    struct kvt_client *c = NULL;
    struct kvt_ns_info ns;
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &sp, &ns), 0);
    struct kvt_key keys[SCHUNKS];
    uint64_t starts[SCHUNKS];
    for (uint32_t i = 0; i < SCHUNKS; i++) {
        keys[i] = key_of(100 + i);
        starts[i] = (uint64_t)i * TOKENS;
        assert_int_equal(kvt_put(c, ns.handle, &keys[i], sdata[i], sizeof(sdata[i]), 0), 0);
    }
    uint64_t ctx;
    assert_int_equal(kvt_context_open(c, ns.handle, 0, &ctx), 0);
    assert_int_equal(kvt_context_append(c, ctx, keys, NULL, starts, SCHUNKS, NULL), 0);
    struct kvt_select_req q = {.layer = 1,
                               .n_query_heads = 4,
                               .head_dim = SHD,
                               .query = query,
                               .budget_tokens = 48,
                               .recent_tokens = 16};
    struct kvt_span_sel spans[64];
    struct kvt_select_info si;
    int picked[SCHUNKS] = {0};
    for (int round = 0; round < 2; round++) {
        assert_int_equal(kvt_select(c, ctx, &q, spans, 64, &si), 0);
        for (size_t i = 0; i < si.n_spans; i++)
            picked[spans[i].chunk] = 1;
    }
    int cold = 0;
    for (uint32_t i = 0; i < SCHUNKS; i++)
        cold += !picked[i];
    assert_true(cold >= 1 && cold < (int)SCHUNKS);
    assert_int_equal(stat_of(c, "disk.writes"), 0); /* nothing written back yet */
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0); /* the flush writes every chunk back */

    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &sp, &ns), 0);
    assert_int_equal(stat_of(c, "disk.q4_objects"), (uint64_t)cold);
    assert_int_equal(stat_of(c, "disk.q8_objects"), (uint64_t)(SCHUNKS - cold));
    static uint16_t blk[LAYERS * TOKENS * SROW];
    for (uint32_t i = 0; i < SCHUNKS; i++) {
        size_t len;
        enum kvt_form f;
        assert_int_equal(kvt_get_form(c, ns.handle, &keys[i], 0, blk, sizeof(blk), &len, &f, NULL),
                         0);
        assert_int_equal(f, picked[i] ? KVT_FORM_Q8 : KVT_FORM_Q4);
    }
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* Disk bytes per token of a Llama-3-8B-shaped chunk (32 layers x 8 KV heads x 128 dims, fp16:
 * 128 KiB a token) in 16-token chunks, fp16 (shuffle + lz4 where it pays) against q8 and q4: the
 * stored payload (disk.stored_bytes_written: the body, after compression or quantization) and
 * everything the objects occupy (disk.bytes_used: header block, 4 KiB-aligned layer rows of the
 * fp16 layout, the span-abstract section, rounding), over the tokens stored. The lossy sizes do
 * not depend on the data; fp16 + lz4 does (random-like data here, which lz4 does not shrink). */
static void test_bytes_per_token(void **state)
{
    (void)state;
    enum { L = 32, H = 8, D = 128, T = 16, N = 8 };
    const size_t chunk = (size_t)L * T * 2 * H * D * 2;
    uint16_t *buf = malloc(chunk);
    assert_non_null(buf);
    struct kvt_ns_spec sp = {.model_id = "llama3-8b-shape",
                             .layers = L,
                             .kv_heads = H,
                             .head_dim = D,
                             .dtype = KVT_DTYPE_FP16,
                             .tokens_per_chunk = T,
                             .allow_lossy = 1};
    double stored[3], used[3], range[3];
    static const char *const names[3] = {"fp16", "q8", "q4"};
    for (int form = 0; form < 3; form++) {
        char fa[32];
        snprintf(fa, sizeof(fa), "--disk.form=%s", names[form]);
        const char *args[] = {"--tier.write_policy=write-through", "--disk.bytes=256M",
                              "--cpu.arena_bytes=64M", fa, NULL};
        struct kvt_test_daemon d = {0};
        assert_int_equal(kvt_test_daemon_start(&d, args), 0);
        struct kvt_connect_opts o = {
            .socket_path = d.socket_path, .arena_bytes = 16 << 20, .timeout_ms = 20000};
        struct kvt_client *c = NULL;
        struct kvt_ns_info ns;
        assert_int_equal(kvt_connect(&o, &c), 0);
        assert_int_equal(kvt_register(c, &sp, &ns), 0);
        uint64_t x = 0xb17e5;
        for (int i = 0; i < N; i++) {
            for (size_t j = 0; j < chunk / 2; j++)
                buf[j] = kvt_f32_to_f16(rnd(&x) * 2.0f);
            struct kvt_key k = key_of(900 + (uint32_t)i);
            assert_int_equal(kvt_put(c, ns.handle, &k, buf, chunk, 0), 0);
        }
        stored[form] = (double)stat_of(c, "disk.stored_bytes_written") / (N * T);
        used[form] = (double)stat_of(c, "disk.bytes_used") / (N * T);
        kvt_close(c);
        assert_int_equal(kvt_test_daemon_stop(&d), 0);
        /* Sparse retrieval from disk: after a restart (DRAM empty), the 16 rows of one layer of
         * every chunk, as a Select's span would be read. */
        assert_int_equal(kvt_test_daemon_start(&d, args), 0);
        assert_int_equal(kvt_connect(&o, &c), 0);
        assert_int_equal(kvt_register(c, &sp, &ns), 0);
        uint64_t read0 = stat_of(c, "disk.bytes_read");
        for (int i = 0; i < N; i++) {
            struct kvt_key k = key_of(900 + (uint32_t)i);
            size_t len;
            assert_int_equal(kvt_get_range(c, ns.handle, &k, 5, 0, T, buf, chunk, &len, NULL), 0);
            assert_int_equal(len, (size_t)T * 2 * H * D * 2);
        }
        range[form] = (double)(stat_of(c, "disk.bytes_read") - read0) / (N * T);
        printf("  %-4s bytes a token on disk: payload %.0f, objects %.0f (fp16 in DRAM %zu); "
               "one layer's rows read from disk: %.0f bytes a token (the rows: %d)\n",
               names[form], stored[form], used[form], chunk / T, range[form], 2 * H * D * 2);
        kvt_close(c);
        assert_int_equal(kvt_test_daemon_stop(&d), 0);
        kvt_test_daemon_cleanup(&d);
    }
    printf("  against fp16: payload q8 %.4f q4 %.4f; objects q8 %.4f q4 %.4f\n",
           stored[1] / stored[0], stored[2] / stored[0], used[1] / used[0], used[2] / used[0]);
    /* The formats' sizes exactly: 144 and 80 bytes a row of 128 dims, against 256, and a
     * trailer a 16-token block. */
    assert_true(stored[1] == (double)q_body_bytes(8, L, H, D, T) / T &&
                stored[2] == (double)q_body_bytes(4, L, H, D, T) / T);
    assert_true(used[1] < used[0] && used[2] < used[1]);
    /* A range reads only its covering blocks of quantized rows: less than fp16's. */
    assert_true(range[1] < range[0] && range[2] < range[1]);
    free(buf);
}

/* A clustered variant (form 3): 40 merged entries standing for 64 tokens, with their counts,
 * beside the chunk's fp16 variant 0: stored and returned bit for bit with its counts and entry
 * count, in DRAM and from disk after a restart; counts that do not add up, sizes that are not
 * entries, a plain namespace, GetRange and rotation refused. */
#define ENTRIES 40u
#define CL_BYTES (ENTRIES * ROW_HALFS * 2u * LAYERS + LAYERS * HEADS * ENTRIES * 4u)
static uint8_t cl[CL_BYTES];

static void make_cluster(uint8_t *p)
{
    uint64_t x = 0xc1;
    uint16_t *rows = (uint16_t *)p;
    for (size_t i = 0; i < (size_t)ENTRIES * ROW_HALFS * LAYERS; i++)
        rows[i] = kvt_f32_to_f16(rnd(&x));
    uint8_t *counts = p + (size_t)ENTRIES * ROW_HALFS * 2u * LAYERS;
    for (uint32_t lh = 0; lh < LAYERS * HEADS; lh++)
        for (uint32_t e = 0; e < ENTRIES; e++) {
            /* 24 merged pairs and 16 single tokens: 64 in all, in a different order per head. */
            uint32_t n = (e + lh) % 5 < 3 ? 2 : 1;
            memcpy(counts + ((size_t)lh * ENTRIES + e) * 4, &n, 4);
        }
    /* The pattern above gives 24 twos only when ENTRIES is 40: check it adds up. */
    for (uint32_t lh = 0; lh < LAYERS * HEADS; lh++) {
        uint32_t sum = 0, n;
        for (uint32_t e = 0; e < ENTRIES; e++) {
            memcpy(&n, counts + ((size_t)lh * ENTRIES + e) * 4, 4);
            sum += n;
        }
        assert_int_equal(sum, TOKENS);
    }
}

static void test_clustered_variant(void **state)
{
    (void)state;
    const char *args[10];
    args_for(KVT_FORM_FP16, args, NULL);
    struct kvt_test_daemon d = {0};
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_ns_info ns, pns;
    struct kvt_client *c = connect_ns(&d, 1, &ns);
    struct kvt_client *pc = connect_ns(&d, 0, &pns);
    make_cluster(cl);
    struct kvt_key k = key_of(50);
    assert_int_equal(kvt_put(c, ns.handle, &k, data[0], CHUNK_BYTES, 0), 0);
    assert_int_equal(kvt_put_form(pc, pns.handle, &k, 1, KVT_FORM_CLUSTER, cl, CL_BYTES, TOKENS),
                     KVT_E_LOSSY);
    /* Sizes that are not whole entries, or as many entries as tokens. */
    assert_int_equal(kvt_put_form(c, ns.handle, &k, 1, KVT_FORM_CLUSTER, cl, CL_BYTES - 4, TOKENS),
                     KVT_E_GEOMETRY);
    static uint8_t big[TOKENS * (ROW_HALFS * 2u * LAYERS + LAYERS * HEADS * 4u)];
    assert_int_equal(kvt_put_form(c, ns.handle, &k, 1, KVT_FORM_CLUSTER, big, sizeof(big), TOKENS),
                     KVT_E_GEOMETRY);
    /* Counts that do not add up, or a zero count: refused once copied, nothing stored. */
    static uint8_t bad[CL_BYTES];
    uint8_t *counts = bad + (size_t)ENTRIES * ROW_HALFS * 2u * LAYERS;
    memcpy(bad, cl, CL_BYTES);
    counts[(3 * ENTRIES + 7) * 4] += 1; /* (layer 1, head 1) sums to 65 */
    assert_int_equal(kvt_put_form(c, ns.handle, &k, 1, KVT_FORM_CLUSTER, bad, CL_BYTES, TOKENS),
                     KVT_E_INVAL);
    memcpy(bad, cl, CL_BYTES);
    uint32_t c0, c1, zero = 0;
    memcpy(&c0, counts, 4);
    memcpy(&c1, counts + 4, 4);
    c1 += c0; /* entry 1 takes entry 0's tokens: the sum stays 64, entry 0 counts none */
    memcpy(counts, &zero, 4);
    memcpy(counts + 4, &c1, 4);
    assert_int_equal(kvt_put_form(c, ns.handle, &k, 1, KVT_FORM_CLUSTER, bad, CL_BYTES, TOKENS),
                     KVT_E_INVAL);
    static uint8_t got[CL_BYTES + CHUNK_BYTES];
    size_t len = 0;
    enum kvt_form f;
    enum kvt_tier_id tier;
    assert_int_equal(kvt_get_v(c, ns.handle, &k, 1, got, sizeof(got), &len, &tier), KVT_E_NOTFOUND);
    assert_int_equal(stat_of(c, "cluster_counts_refused"), 2);
    assert_int_equal(kvt_put_form(c, ns.handle, &k, 1, KVT_FORM_CLUSTER, cl, CL_BYTES, TOKENS), 0);
    assert_int_equal(stat_of(c, "cluster_puts"), 1);
    for (int round = 0; round < 2; round++) {
        /* round 0: from DRAM; round 1: after a restart, from disk. */
        assert_int_equal(kvt_get_form(c, ns.handle, &k, 1, got, sizeof(got), &len, &f, &tier), 0);
        assert_int_equal(f, KVT_FORM_CLUSTER);
        assert_int_equal(len, CL_BYTES);
        assert_int_equal(tier, round ? KVT_TIER_DISK : KVT_TIER_CPU);
        assert_memory_equal(got, cl, CL_BYTES);
        assert_int_equal(kvt_get_v(c, ns.handle, &k, 1, got, sizeof(got), &len, &tier), 0);
        assert_int_equal(len, CL_BYTES);
        assert_memory_equal(got, cl, CL_BYTES);
        assert_int_equal(kvt_get_v(c, ns.handle, &k, 0, got, sizeof(got), &len, &tier), 0);
        assert_int_equal(len, CHUNK_BYTES);
        assert_memory_equal(got, data[0], CHUNK_BYTES);
        assert_int_equal(
            kvt_get_range_v(c, ns.handle, &k, 1, 0, 0, 8, got, sizeof(got), &len, &tier),
            KVT_E_INVAL);
        struct raw r;
        raw_open(&r, &d, 1);
        Kvtier__Key rk = KVTIER__KEY__INIT;
        rk.lo = k.lo;
        rk.hi = k.hi;
        rk.variant = 1;
        Kvtier__GetReq g = KVTIER__GET_REQ__INIT;
        g.ns = r.ns;
        g.key = &rk;
        g.capacity = CL_BYTES;
        Kvtier__Request rq = KVTIER__REQUEST__INIT;
        rq.op_case = KVTIER__REQUEST__OP_GET;
        rq.get = &g;
        Kvtier__Response *resp = raw_call(&r, &rq);
        assert_int_equal(resp->status, 0);
        assert_int_equal(resp->get->form, KVT_FORM_CLUSTER);
        assert_int_equal(resp->get->n_entries, ENTRIES);
        assert_int_equal(resp->get->n_tokens, TOKENS);
        assert_int_equal(resp->get->length, CL_BYTES);
        assert_null(resp->get->checksum); /* the bytes are the Put's */
        assert_memory_equal(r.arena, cl, CL_BYTES);
        kvtier__response__free_unpacked(resp, NULL);
        raw_close(&r);
        if (round == 0) {
            kvt_close(c);
            kvt_close(pc);
            assert_int_equal(kvt_test_daemon_stop(&d), 0);
            assert_int_equal(kvt_test_daemon_start(&d, args), 0);
            c = connect_ns(&d, 1, &ns);
            pc = NULL;
        }
    }
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

int main(void)
{
    make_data();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_q8_round_trip_restart),
        cmocka_unit_test(test_q4_round_trip_restart),
        cmocka_unit_test(test_fp16_namespace_untouched),
        cmocka_unit_test(test_refusal_and_bad_input),
        cmocka_unit_test(test_corrupt_quantized_object),
        cmocka_unit_test(test_cold_chunks_get_form_cold),
        cmocka_unit_test(test_clustered_variant),
        cmocka_unit_test(test_bytes_per_token),
        cmocka_unit_test(test_promotions_on_workers),
        cmocka_unit_test(test_q8_stored_ranges),
        cmocka_unit_test(test_q4_stored_ranges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
