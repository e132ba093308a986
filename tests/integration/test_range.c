/*
 * Range reads (GetRange, kvt_get_range) through a real kvtierd: the rows of one layer of a chunk
 * come back exactly, from DRAM (tier CPU) and from disk (tier DISK, reading far fewer bytes than
 * the chunk); every bad input gets its exact error, through the library and in raw frames; and a
 * flipped byte in a covering block on disk answers E_NOTFOUND, never wrong rows; and more range
 * reads than the disk's staging holds wait in the read queue and are all answered.
 *
 * Locating the rows on disk: with --disk.codec=none the object is stored in the blocked layout,
 * the canonical rows verbatim, so the test finds the bytes of one row in the stopped daemon's data
 * file (the chunk is filled from a PRNG, so every 256-byte row occurs once) and flips one of them.
 */
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "kvtier.pb-c.h"
#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

/* 2 layers x 1 head x 64 dims x fp16 x (k, v): rows of 256 bytes, 64 tokens, 32 KiB chunks. */
static const struct kvt_ns_spec spec = {.model_id = "range-test",
                                        .layers = 2,
                                        .kv_heads = 1,
                                        .head_dim = 64,
                                        .dtype = KVT_DTYPE_FP16,
                                        .tokens_per_chunk = 64};
#define ROW 256u
#define TOKENS 64u
#define CHUNK (2u * TOKENS * ROW)

static const struct kvt_key key = {0xabc, 0xdef};
static uint8_t chunk[CHUNK];

static void fill_chunk(uint64_t seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < CHUNK; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(chunk + i, &x, 8);
    }
}

/* The rows [first, first + n) of layer l in the canonical layout. */
static const uint8_t *rows_of(uint32_t l, uint32_t first)
{
    return chunk + ((size_t)l * TOKENS + first) * ROW;
}

static struct kvt_client *connect_ns(const struct kvt_test_daemon *d, struct kvt_ns_info *ns)
{
    struct kvt_connect_opts o = {
        .socket_path = d->socket_path, .arena_bytes = 1 << 20, .timeout_ms = 5000};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &spec, ns), 0);
    return c;
}

/* Reads rows through kvt_get_range into an arena buffer and into a heap buffer (staged), checks
 * both against the chunk and returns the tier they came from. */
static enum kvt_tier_id check_range(struct kvt_client *c, uint32_t ns, uint32_t layer,
                                    uint32_t first, uint32_t n)
{
    size_t want = (size_t)n * ROW, len = 0;
    enum kvt_tier_id tier = KVT_TIER_NONE, tier2 = KVT_TIER_NONE;
    uint8_t *a = kvt_arena_alloc(c, want);
    assert_non_null(a);
    memset(a, 0x5a, want);
    assert_int_equal(kvt_get_range(c, ns, &key, layer, first, n, a, want, &len, &tier), 0);
    assert_int_equal(len, want);
    assert_memory_equal(a, rows_of(layer, first), want);
    kvt_arena_free(c, a);
    uint8_t *h = malloc(want + 64);
    assert_non_null(h);
    memset(h, 0x5a, want + 64);
    assert_int_equal(kvt_get_range(c, ns, &key, layer, first, n, h, want + 64, &len, &tier2), 0);
    assert_int_equal(len, want);
    assert_memory_equal(h, rows_of(layer, first), want);
    for (size_t i = want; i < want + 64; i++)
        assert_int_equal(h[i], 0x5a); /* nothing past the rows */
    free(h);
    return tier;
}

static void test_range_from_dram(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    assert_int_equal(kvt_test_daemon_start(&d, NULL), 0);
    struct kvt_client *c = connect_ns(&d, &ns);
    fill_chunk(1);
    assert_int_equal(kvt_put(c, ns.handle, &key, chunk, CHUNK, 0), 0);

    assert_int_equal(check_range(c, ns.handle, 1, 16, 16), KVT_TIER_CPU);
    assert_int_equal(check_range(c, ns.handle, 0, 0, 1), KVT_TIER_CPU);
    assert_int_equal(check_range(c, ns.handle, 1, 63, 1), KVT_TIER_CPU);
    assert_int_equal(check_range(c, ns.handle, 0, 0, TOKENS), KVT_TIER_CPU);
    assert_int_equal(kvt_test_stat(c, "gets_range"), 8);
    assert_int_equal(kvt_test_stat(c, "get_range_bytes"), 2 * (16 + 1 + 1 + TOKENS) * ROW);

    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* ---- bad inputs --------------------------------------------------------------------------- */

static void send_request(int fd, Kvtier__Request *req, int pass_fd)
{
    assert_int_equal(kvt_test_send_request(fd, req, pass_fd), 0);
}

/* Reads one response frame. Bytes of the next frames that came with it are kept for the next
 * call on the same fd (pipelined requests). */
static Kvtier__Response *read_response(int fd)
{
    Kvtier__Response *r = kvt_test_read_pipelined(fd);
    assert_non_null(r);
    return r;
}

/* A raw session of tenant with an arena of arena_bytes (0: none), mapped at *arena_out when not
 * NULL, and the test namespace. */
static int raw_session(const char *path, const char *tenant, uint64_t arena_bytes, uint32_t *ns_out,
                       uint8_t **arena_out)
{
    int fd = kvt_test_raw_session(path, tenant, &spec, arena_bytes, arena_out, ns_out);
    assert_true(fd >= 0);
    return fd;
}

static void raw_send_range(int fd, uint64_t id, uint32_t ns, uint32_t layer, uint32_t first,
                           uint32_t n, uint64_t off, uint64_t cap)
{
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__GetRangeReq g = KVTIER__GET_RANGE_REQ__INIT;
    Kvtier__Key k = KVTIER__KEY__INIT;
    k.lo = key.lo;
    k.hi = key.hi;
    g.ns = ns;
    g.key = &k;
    g.layer = layer;
    g.token_first = first;
    g.n_tokens = n;
    g.offset = off;
    g.capacity = cap;
    req.id = id;
    req.op_case = KVTIER__REQUEST__OP_GET_RANGE;
    req.get_range = &g;
    send_request(fd, &req, -1);
}

/* The next answer: its status, the length answered (*len_out) and its id (*id_out). */
static int raw_recv_range(int fd, uint64_t *id_out, uint64_t *len_out)
{
    Kvtier__Response *r = read_response(fd);
    assert_non_null(r);
    *id_out = r->id;
    int st = r->status;
    assert_true(st == 0 || (r->error && *r->error)); /* every error says why */
    if (len_out)
        *len_out = r->result_case == KVTIER__RESPONSE__RESULT_GET_RANGE ? r->get_range->length
                                                                        : UINT64_MAX;
    kvtier__response__free_unpacked(r, NULL);
    return st;
}

/* A raw GetRange of the test key; returns its status and the length answered (*len_out). */
static int raw_get_range(int fd, uint64_t id, uint32_t ns, uint32_t layer, uint32_t first,
                         uint32_t n, uint64_t off, uint64_t cap, uint64_t *len_out)
{
    raw_send_range(fd, id, ns, layer, first, n, off, cap);
    uint64_t got_id;
    int st = raw_recv_range(fd, &got_id, len_out);
    assert_int_equal(got_id, id);
    return st;
}

static void test_range_bad_input(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    char tenants[128];
    snprintf(tenants, sizeof(tenants), "--tenants=alice=uid:%u;bob=uid:%u", getuid(), getuid());
    const char *args[] = {tenants, NULL};
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_client *c = connect_ns(&d, &ns);
    fill_chunk(2);
    assert_int_equal(kvt_put(c, ns.handle, &key, chunk, CHUNK, 0), 0);
    /* A chunk of 32 tokens: the namespace's rows beyond them are not in it. */
    const struct kvt_key short_key = {0x5, 0x6};
    static uint8_t short_chunk[2 * 32 * ROW];
    memset(short_chunk, 7, sizeof(short_chunk));
    assert_int_equal(kvt_put(c, ns.handle, &short_key, short_chunk, sizeof(short_chunk), 32), 0);

    uint8_t buf[16 * ROW];
    size_t len = 1;
    enum kvt_tier_id tier = KVT_TIER_CPU;
    uint64_t geometry0 = kvt_test_stat(c, "geometry_errors");
    assert_int_equal(kvt_get_range(c, ns.handle, &key, 2, 0, 1, buf, sizeof(buf), &len, &tier),
                     KVT_E_GEOMETRY);
    assert_int_equal(len, 0);
    assert_int_equal(tier, KVT_TIER_NONE);
    assert_int_equal(kvt_get_range(c, ns.handle, &key, 1, 60, 8, buf, sizeof(buf), &len, NULL),
                     KVT_E_GEOMETRY);
    assert_int_equal(
        kvt_get_range(c, ns.handle, &key, 0, UINT32_MAX, 2, buf, sizeof(buf), &len, NULL),
        KVT_E_GEOMETRY);
    assert_int_equal(
        kvt_get_range(c, ns.handle, &short_key, 0, 24, 16, buf, sizeof(buf), &len, NULL),
        KVT_E_GEOMETRY);
    assert_int_equal(kvt_test_stat(c, "geometry_errors"), geometry0 + 4);
    /* In the short chunk, layer 1 starts after its 32 tokens of layer 0. */
    assert_int_equal(
        kvt_get_range(c, ns.handle, &short_key, 1, 16, 16, buf, sizeof(buf), &len, &tier), 0);
    assert_int_equal(len, 16 * ROW);
    assert_int_equal(buf[0], 7);
    assert_int_equal(kvt_get_range(c, ns.handle, &key, 0, 0, 0, buf, sizeof(buf), &len, NULL),
                     KVT_E_INVAL);
    assert_int_equal(kvt_get_range(c, ns.handle, &key, 1, 16, 16, buf, 16 * ROW - 1, &len, NULL),
                     KVT_E_SMALLBUF);
    assert_int_equal(len, 16 * ROW); /* the room it needs */
    const struct kvt_key missing = {0x77, 0x77};
    assert_int_equal(kvt_get_range(c, ns.handle, &missing, 0, 0, 1, buf, sizeof(buf), &len, NULL),
                     KVT_E_NOTFOUND);
    assert_int_equal(kvt_get_range(c, 999, &key, 0, 0, 1, buf, sizeof(buf), &len, NULL),
                     KVT_E_NONS);

    /* Raw frames: what the library never sends. */
    uint32_t ns_a, ns_b, ns_n;
    const uint64_t arena = 64 * 1024;
    int fa = raw_session(d.socket_path, "alice", arena, &ns_a, NULL);
    int fb = raw_session(d.socket_path, "bob", arena, &ns_b, NULL);
    int fn = raw_session(d.socket_path, "alice", 0, &ns_n, NULL);
    uint64_t rlen;
    uint64_t range0 = kvt_test_stat(c, "range_errors");
    assert_int_equal(raw_get_range(fa, 10, ns_a, 0, 0, 1, arena - ROW + 1, ROW, NULL), KVT_E_RANGE);
    assert_int_equal(raw_get_range(fa, 11, ns_a, 0, 0, 1, UINT64_MAX, 2, NULL), KVT_E_RANGE);
    assert_int_equal(kvt_test_stat(c, "range_errors"), range0 + 2);
    assert_int_equal(raw_get_range(fa, 12, ns_a, 0, 0, 0, 0, ROW, NULL), KVT_E_INVAL);
    assert_int_equal(raw_get_range(fa, 13, ns_a, 0, 0, 4, 0, 4 * ROW - 1, &rlen), KVT_E_SMALLBUF);
    assert_int_equal(rlen, 4 * ROW);
    assert_int_equal(raw_get_range(fa, 14, ns_a, 2, 0, 1, 0, ROW, NULL), KVT_E_GEOMETRY);
    assert_int_equal(raw_get_range(fa, 15, ns_a + 7, 0, 0, 1, 0, ROW, NULL), KVT_E_NONS);
    assert_int_equal(raw_get_range(fb, 16, ns_a, 0, 0, 1, 0, ROW, NULL), KVT_E_ACCESS);
    assert_int_equal(raw_get_range(fn, 17, ns_n, 0, 0, 1, 0, ROW, NULL), KVT_E_NOARENA);
    /* alice's namespace is not the default tenant's: the chunk stored there is not hers. */
    assert_int_equal(raw_get_range(fa, 18, ns_a, 0, 0, 1, 0, ROW, &rlen), KVT_E_NOTFOUND);
    close(fa);
    close(fb);
    close(fn);

    /* Nothing above changed the chunk. */
    assert_int_equal(check_range(c, ns.handle, 1, 16, 16), KVT_TIER_CPU);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* ---- from disk ---------------------------------------------------------------------------- */

static const char *disk_args[] = {"--disk.bytes=64M", "--disk.codec=none",
                                  "--tier.write_policy=write-through", NULL};

/* Stores the chunk write-through, then restarts the daemon on the same directory: the chunk is
 * only on disk. flip_row >= 0 flips a byte of that row of layer 1 in the data file meanwhile. */
static struct kvt_client *chunk_only_on_disk(struct kvt_test_daemon *d, struct kvt_ns_info *ns,
                                             int flip_row, const char **args)
{
    assert_int_equal(kvt_test_daemon_start(d, args), 0);
    struct kvt_client *c = connect_ns(d, ns);
    fill_chunk(3);
    enum kvt_tier_id tier;
    assert_int_equal(kvt_put(c, ns->handle, &key, chunk, CHUNK, 0), 0);
    assert_int_equal(kvt_lookup(c, ns->handle, &key, 1, &(size_t){0}, &tier), 0);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(d), 0);
    if (flip_row >= 0) {
        char path[400];
        snprintf(path, sizeof(path), "%s/disk.0", d->dir);
        int fd = open(path, O_RDWR);
        assert_true(fd >= 0);
        struct stat st;
        assert_int_equal(fstat(fd, &st), 0);
        uint8_t *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        assert_true(m != MAP_FAILED);
        const uint8_t *row = rows_of(1, (uint32_t)flip_row);
        uint8_t *at = memmem(m, (size_t)st.st_size, row, ROW);
        assert_non_null(at);
        assert_null(memmem(at + 1, (size_t)(m + st.st_size - at - 1), row, ROW)); /* once */
        off_t off = (off_t)(at - m) + 100;
        munmap(m, (size_t)st.st_size);
        uint8_t b = row[100] ^ 0x01;
        assert_int_equal(pwrite(fd, &b, 1, off), 1);
        assert_int_equal(fsync(fd), 0);
        close(fd);
    }
    assert_int_equal(kvt_test_daemon_start(d, args), 0);
    c = connect_ns(d, ns);
    size_t hits = 0;
    assert_int_equal(kvt_lookup(c, ns->handle, &key, 1, &hits, &tier), 0);
    assert_int_equal(hits, 1);
    assert_int_equal(tier, KVT_TIER_DISK);
    return c;
}

static void test_range_from_disk(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    /* The reads below add up to more than the chunk (137 of its 128 rows): learning from
     * selections would promote it in the background (tests/integration/test_select.c), and this
     * test is about the range reads themselves. */
    const char *args[] = {"--disk.bytes=64M", "--disk.codec=none",
                          "--tier.write_policy=write-through", "--tier.select_promote=false", NULL};
    struct kvt_client *c = chunk_only_on_disk(&d, &ns, -1, args);
    uint64_t read0 = kvt_test_stat(c, "disk.bytes_read");
    uint64_t ranges0 = kvt_test_stat(c, "disk.range_reads");
    uint8_t *a = kvt_arena_alloc(c, 16 * ROW);
    assert_non_null(a);
    size_t got = 0;
    enum kvt_tier_id from = KVT_TIER_NONE;
    assert_int_equal(kvt_get_range(c, ns.handle, &key, 1, 16, 16, a, 16 * ROW, &got, &from), 0);
    assert_int_equal(from, KVT_TIER_DISK);
    assert_int_equal(got, 16 * ROW);
    assert_memory_equal(a, rows_of(1, 16), 16 * ROW);
    kvt_arena_free(c, a);
    uint64_t read1 = kvt_test_stat(c, "disk.bytes_read");
    /* One 16-token block (4,104 bytes with its trailer) straddles two 4 KiB pages: 8 KiB read,
     * against 45,056 bytes for the whole object (header block and two 20 KiB layers). */
    print_message("disk.bytes_read for one 16-token range read: %llu (chunk %u bytes)\n",
                  (unsigned long long)(read1 - read0), CHUNK);
    assert_true(read1 > read0);
    assert_true(read1 - read0 <= 2 * 4096);
    assert_int_equal(kvt_test_stat(c, "disk.range_reads"), ranges0 + 1);
    assert_int_equal(check_range(c, ns.handle, 1, 16, 16), KVT_TIER_DISK);
    /* Across blocks, and the whole of layer 0. */
    assert_int_equal(check_range(c, ns.handle, 1, 10, 40), KVT_TIER_DISK);
    assert_int_equal(check_range(c, ns.handle, 0, 0, TOKENS), KVT_TIER_DISK);
    assert_int_equal(check_range(c, ns.handle, 1, 63, 1), KVT_TIER_DISK);
    /* A range read does not promote the chunk on its own path: it is still served from disk. */
    size_t hits = 0;
    enum kvt_tier_id tier;
    assert_int_equal(kvt_lookup(c, ns.handle, &key, 1, &hits, &tier), 0);
    assert_int_equal(tier, KVT_TIER_DISK);
    /* A whole-chunk Get promotes it; the rows then come from DRAM. */
    static uint8_t whole[CHUNK];
    size_t len = 0;
    assert_int_equal(kvt_get(c, ns.handle, &key, whole, sizeof(whole), &len, NULL), 0);
    assert_memory_equal(whole, chunk, CHUNK);
    assert_int_equal(check_range(c, ns.handle, 1, 16, 16), KVT_TIER_CPU);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

static void test_range_corrupt_block(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct kvt_client *c = chunk_only_on_disk(&d, &ns, 20, disk_args); /* block 1 of layer 1 */
    /* Other blocks still verify: only the covering blocks are read. */
    assert_int_equal(check_range(c, ns.handle, 1, 0, 16), KVT_TIER_DISK);
    assert_int_equal(check_range(c, ns.handle, 0, 16, 16), KVT_TIER_DISK);
    uint8_t *a = kvt_arena_alloc(c, 16 * ROW);
    assert_non_null(a);
    size_t len = 1;
    enum kvt_tier_id tier = KVT_TIER_CPU;
    assert_int_equal(kvt_get_range(c, ns.handle, &key, 1, 16, 16, a, 16 * ROW, &len, &tier),
                     KVT_E_NOTFOUND);
    assert_int_equal(len, 0);
    assert_int_equal(tier, KVT_TIER_NONE);
    /* The chunk was dropped: every read of it is a miss now. */
    assert_int_equal(kvt_get_range(c, ns.handle, &key, 1, 0, 16, a, 16 * ROW, &len, NULL),
                     KVT_E_NOTFOUND);
    static uint8_t whole[CHUNK];
    assert_int_equal(kvt_get(c, ns.handle, &key, whole, sizeof(whole), &len, NULL), KVT_E_NOTFOUND);
    assert_true(kvt_test_stat(c, "disk.checksum_failures") >= 1);
    kvt_arena_free(c, a);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* More range reads pipelined on one connection than the disk's staging area holds at once (64 KiB:
 * three whole-layer reads of 20 KiB): the rest wait in the read queue and every one is answered
 * with its own rows. */
static void test_range_disk_queue(void **state)
{
    (void)state;
    enum { N = 48 };
    static const char *args[] = {"--disk.bytes=64M",
                                 "--disk.codec=none",
                                 "--tier.write_policy=write-through",
                                 "--disk.staging_bytes=64K",
                                 "--disk.object_bytes_max=48K",
                                 NULL};
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct kvt_client *c = chunk_only_on_disk(&d, &ns, -1, args);
    const uint64_t layer_bytes = (uint64_t)TOKENS * ROW;
    const uint64_t arena = N * layer_bytes;
    uint8_t *a = NULL;
    uint32_t rns;
    int fd = raw_session(d.socket_path, NULL, arena, &rns, &a);
    memset(a, 0x5a, arena);
    for (uint64_t i = 0; i < N; i++) {
        uint32_t first = (uint32_t)(i % 4) * 8, n = TOKENS - first;
        raw_send_range(fd, 100 + i, rns, (uint32_t)(i % 2), first, n, i * layer_bytes, layer_bytes);
    }
    for (int k = 0; k < N; k++) {
        uint64_t id, len;
        assert_int_equal(raw_recv_range(fd, &id, &len), 0);
        assert_true(id >= 100 && id < 100 + N);
        uint64_t i = id - 100;
        uint32_t first = (uint32_t)(i % 4) * 8, n = TOKENS - first;
        assert_int_equal(len, (uint64_t)n * ROW);
        assert_memory_equal(a + i * layer_bytes, rows_of((uint32_t)(i % 2), first), len);
    }
    close(fd);
    munmap(a, arena);
    assert_int_equal(kvt_test_stat(c, "disk.range_reads"), N);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* kvt_get_range_batch: a window of range reads from disk, pipelined, each item answered with its
 * own rows or error (one bad layer, one too-small buffer, one heap buffer staged through the
 * arena, among good ones), in one round trip's worth of frames. */
static void test_range_batch(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct kvt_client *c = chunk_only_on_disk(&d, &ns, -1, disk_args);
    enum { N = 24 };
    struct kvt_item it[N];
    uint8_t *bufs[N];
    for (uint32_t i = 0; i < N; i++) {
        uint32_t n = 1 + i % 16, first = (i * 7) % (TOKENS - n + 1);
        bufs[i] = i == 5 ? malloc(n * ROW) : kvt_arena_alloc(c, n * ROW);
        assert_non_null(bufs[i]);
        it[i] = (struct kvt_item){.key = key,
                                  .layer = i % 2,
                                  .token_first = first,
                                  .n_tokens = n,
                                  .buf = bufs[i],
                                  .len = n * ROW};
    }
    it[3].layer = 2;     /* the namespace has two layers */
    it[9].len = ROW - 1; /* too small for its rows */
    assert_int_equal(kvt_get_range_batch(c, ns.handle, it, N), 0);
    for (uint32_t i = 0; i < N; i++) {
        size_t want = (size_t)it[i].n_tokens * ROW;
        if (i == 3) {
            assert_int_equal(it[i].status, KVT_E_GEOMETRY);
        } else if (i == 9) {
            assert_int_equal(it[i].status, KVT_E_SMALLBUF);
            assert_int_equal(it[i].len, want); /* the capacity it needs */
        } else {
            assert_int_equal(it[i].status, 0);
            assert_int_equal(it[i].len, want);
            assert_int_equal(it[i].tier, KVT_TIER_DISK);
            assert_memory_equal(bufs[i], rows_of(it[i].layer, it[i].token_first), want);
        }
        if (i == 5)
            free(bufs[i]);
        else
            kvt_arena_free(c, bufs[i]);
    }
    struct kvt_item bad = {.key = key, .n_tokens = 0, .buf = NULL, .len = 0};
    assert_int_equal(kvt_get_range_batch(c, ns.handle, &bad, 1), KVT_E_INVAL);
    kvt_close(c);
    /* A narrow sliding window (batch_window 3) answers the same, in order. */
    struct kvt_connect_opts o = {.socket_path = d.socket_path,
                                 .arena_bytes = 1 << 20,
                                 .timeout_ms = 5000,
                                 .batch_window = 3};
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &spec, &ns), 0);
    uint8_t *w = kvt_arena_alloc(c, N * ROW);
    assert_non_null(w);
    for (uint32_t i = 0; i < N; i++)
        it[i] = (struct kvt_item){.key = key,
                                  .layer = i % 2,
                                  .token_first = i,
                                  .n_tokens = 1,
                                  .buf = w + i * ROW,
                                  .len = ROW};
    assert_int_equal(kvt_get_range_batch(c, ns.handle, it, N), 0);
    for (uint32_t i = 0; i < N; i++) {
        assert_int_equal(it[i].status, 0);
        assert_memory_equal(w + i * ROW, rows_of(i % 2, i), ROW);
    }
    kvt_arena_free(c, w);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_range_from_dram),  cmocka_unit_test(test_range_bad_input),
        cmocka_unit_test(test_range_from_disk),  cmocka_unit_test(test_range_corrupt_block),
        cmocka_unit_test(test_range_disk_queue), cmocka_unit_test(test_range_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
