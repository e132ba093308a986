/*
 * Asynchronous submission (kvt_submit, kvt_poll, kvt_cancel) through a real kvtierd: more items
 * than one window, from arena, heap and inline-sized buffers, complete exactly once each with the
 * right bytes and per-item errors (a miss is that item's E_NOTFOUND); synchronous calls mixed in
 * take nothing from the submissions; cancel drops exactly the unsent items; a daemon that stops
 * answering (SIGSTOP) or dies (SIGKILL) completes every open item with the session error, and the
 * next submission works on a new connection. Also kvt_fd, the limits and bad arguments, and
 * kvt_last_error carrying the daemon's own words.
 */
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

/* 2 layers x 1 head x 16 dims x fp16 x (k, v), 16 tokens: rows of 64 bytes, 2 KiB chunks. */
static const struct kvt_ns_spec spec = {.model_id = "async-test",
                                        .layers = 2,
                                        .kv_heads = 1,
                                        .head_dim = 16,
                                        .dtype = KVT_DTYPE_FP16,
                                        .tokens_per_chunk = 16};
#define ROW 64u
#define CHUNK (2u * 16u * ROW)
#define N 300 /* items per submission: more than the 64-request window */

static struct kvt_key key_of(size_t i)
{
    return (struct kvt_key){0x1000 + i, 0xa5a5};
}

static struct kvt_client *connect_ns(const struct kvt_test_daemon *d, uint32_t timeout_ms,
                                     struct kvt_ns_info *ns)
{
    struct kvt_connect_opts o = {
        .socket_path = d->socket_path, .arena_bytes = 4 << 20, .timeout_ms = timeout_ms};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &spec, ns), 0);
    return c;
}

/* Polls until nothing is open; every item must complete exactly once. Returns how many
 * completions had status want_status (the rest are counted in *other). */
static size_t drain(struct kvt_client *c, uint64_t ticket, struct kvt_item *items, size_t n,
                    int want_status, size_t *other)
{
    char *seen = calloc(n, 1);
    assert_non_null(seen);
    size_t got = 0, match = 0;
    *other = 0;
    while (kvt_pending(c) > 0) {
        struct kvt_completion cq[16];
        size_t k = 0;
        assert_int_equal(kvt_poll(c, cq, 16, 5000, &k), 0);
        assert_true(k > 0);
        for (size_t j = 0; j < k; j++) {
            if (cq[j].ticket != ticket)
                continue;
            assert_true(cq[j].index < n);
            assert_ptr_equal(cq[j].item, &items[cq[j].index]);
            assert_int_equal(cq[j].status, items[cq[j].index].status);
            assert_int_not_equal(cq[j].status, KVT_ITEM_PENDING);
            assert_false(seen[cq[j].index]);
            seen[cq[j].index] = 1;
            got++;
            if (cq[j].status == want_status)
                match++;
            else
                (*other)++;
        }
    }
    assert_int_equal(got, n);
    free(seen);
    return match;
}

/* Item i's buffer: arena for i % 3 == 0, heap otherwise (staged); i % 7 == 0 puts a quarter-chunk
 * (inline-sized) chunk of 4 tokens. */
static size_t item_len(size_t i)
{
    return i % 7 == 0 ? CHUNK / 4 : CHUNK;
}

static void test_submit_put_get(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    assert_int_equal(kvt_test_daemon_start(&d, NULL), 0);
    struct kvt_client *c = connect_ns(&d, 5000, &ns);

    static struct kvt_item items[N];
    static uint8_t *bufs[N];
    for (size_t i = 0; i < N; i++) {
        bufs[i] = i % 3 == 0 ? kvt_arena_alloc(c, CHUNK) : malloc(CHUNK);
        assert_non_null(bufs[i]);
        kvt_test_fill(bufs[i], CHUNK, i + 1);
        items[i] = (struct kvt_item){.key = key_of(i),
                                     .buf = bufs[i],
                                     .len = item_len(i),
                                     .n_tokens = (uint32_t)(item_len(i) / (2 * ROW))};
    }
    uint64_t t = 0;
    assert_int_equal(kvt_submit(c, ns.handle, KVT_SUBMIT_PUT, items, N, &t), 0);
    assert_true(t != 0);
    assert_int_equal(kvt_pending(c), N);
    size_t other;
    assert_int_equal(drain(c, t, items, N, 0, &other), N);
    assert_int_equal(kvt_pending(c), 0);

    /* Gets into zeroed buffers, plus one key never stored: that item alone misses. */
    static struct kvt_item gets[N + 1];
    for (size_t i = 0; i < N; i++) {
        memset(bufs[i], 0, CHUNK);
        gets[i] = (struct kvt_item){.key = key_of(i), .buf = bufs[i], .len = CHUNK};
    }
    uint8_t miss_buf[64];
    gets[N] = (struct kvt_item){.key = {7, 7}, .buf = miss_buf, .len = sizeof(miss_buf)};
    assert_int_equal(kvt_submit(c, ns.handle, KVT_SUBMIT_GET, gets, N + 1, &t), 0);
    assert_int_equal(gets[N].status, KVT_ITEM_PENDING);
    assert_int_equal(drain(c, t, gets, N + 1, 0, &other), N);
    assert_int_equal(other, 1);
    assert_int_equal(gets[N].status, KVT_E_NOTFOUND);
    uint8_t *want = malloc(CHUNK);
    for (size_t i = 0; i < N; i++) {
        kvt_test_fill(want, CHUNK, i + 1);
        assert_int_equal(gets[i].len, item_len(i));
        assert_int_equal(gets[i].tier, KVT_TIER_CPU);
        assert_memory_equal(bufs[i], want, item_len(i));
    }

    /* Range reads: layer 1, rows 3..8 of the full chunks. */
    static struct kvt_item ranges[N];
    size_t nr = 0;
    for (size_t i = 0; i < N; i++) {
        if (item_len(i) != CHUNK)
            continue;
        memset(bufs[i], 0, CHUNK);
        ranges[nr++] = (struct kvt_item){.key = key_of(i),
                                         .buf = bufs[i],
                                         .len = CHUNK,
                                         .layer = 1,
                                         .token_first = 3,
                                         .n_tokens = 6};
    }
    assert_int_equal(kvt_submit(c, ns.handle, KVT_SUBMIT_GET_RANGE, ranges, nr, &t), 0);
    assert_int_equal(drain(c, t, ranges, nr, 0, &other), nr);
    for (size_t r = 0; r < nr; r++) {
        size_t i = ranges[r].key.lo - 0x1000;
        kvt_test_fill(want, CHUNK, i + 1);
        assert_int_equal(ranges[r].len, 6 * ROW);
        assert_memory_equal(bufs[i], want + (16 + 3) * ROW, 6 * ROW);
    }
    free(want);
    for (size_t i = 0; i < N; i++)
        i % 3 == 0 ? kvt_arena_free(c, bufs[i]) : free(bufs[i]);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* Two submissions in flight, synchronous calls in between (which read the submissions' answers
 * while waiting for their own), then both drained: nothing lost, nothing stolen. */
static void test_mixed_with_sync(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    assert_int_equal(kvt_test_daemon_start(&d, NULL), 0);
    struct kvt_client *c = connect_ns(&d, 5000, &ns);
    static uint8_t src[N][CHUNK], dst[N][CHUNK];
    static struct kvt_item puts[N], gets[N];
    for (size_t i = 0; i < N; i++) {
        kvt_test_fill(src[i], CHUNK, 100 + i);
        puts[i] = (struct kvt_item){.key = key_of(i), .buf = src[i], .len = CHUNK};
    }
    uint64_t tp = 0, tg = 0;
    assert_int_equal(kvt_submit(c, ns.handle, KVT_SUBMIT_PUT, puts, N / 2, &tp), 0);
    uint8_t one[CHUNK];
    kvt_test_fill(one, CHUNK, 9);
    struct kvt_key k9 = {9, 9};
    assert_int_equal(kvt_put(c, ns.handle, &k9, one, CHUNK, 0), 0);
    assert_int_equal(kvt_ping(c), 0);
    size_t other;
    assert_int_equal(drain(c, tp, puts, N / 2, 0, &other), N / 2);
    assert_int_equal(kvt_submit(c, ns.handle, KVT_SUBMIT_PUT, puts + N / 2, N - N / 2, &tp), 0);
    for (size_t i = 0; i < N / 2; i++)
        gets[i] = (struct kvt_item){.key = key_of(i), .buf = dst[i], .len = CHUNK};
    assert_int_equal(kvt_submit(c, ns.handle, KVT_SUBMIT_GET, gets, N / 2, &tg), 0);
    assert_true(tg > tp);
    uint8_t back[CHUNK];
    size_t len = 0;
    assert_int_equal(kvt_get(c, ns.handle, &k9, back, sizeof(back), &len, NULL), 0);
    assert_memory_equal(back, one, CHUNK);
    size_t hits = 0;
    assert_int_equal(kvt_lookup(c, ns.handle, &k9, 1, &hits, NULL), 0);
    assert_int_equal(hits, 1);
    /* Both submissions complete: count by ticket. */
    size_t done_p = 0, done_g = 0;
    while (kvt_pending(c)) {
        struct kvt_completion cq[32];
        size_t k = 0;
        assert_int_equal(kvt_poll(c, cq, 32, 5000, &k), 0);
        assert_true(k > 0);
        for (size_t j = 0; j < k; j++) {
            assert_int_equal(cq[j].status, 0);
            if (cq[j].ticket == tp)
                done_p++;
            else if (cq[j].ticket == tg)
                done_g++;
            else
                fail_msg("completion of an unknown ticket %llu", (unsigned long long)cq[j].ticket);
        }
    }
    assert_int_equal(done_p, N - N / 2);
    assert_int_equal(done_g, N / 2);
    for (size_t i = 0; i < N / 2; i++)
        assert_memory_equal(dst[i], src[i], CHUNK);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

static void test_cancel_and_limits(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    assert_int_equal(kvt_test_daemon_start(&d, NULL), 0);
    struct kvt_client *c = connect_ns(&d, 5000, &ns);
    enum { M = 2000 };
    static uint8_t buf[CHUNK];
    kvt_test_fill(buf, CHUNK, 5);
    static struct kvt_item items[M + 4096];
    for (size_t i = 0; i < M; i++)
        items[i] = (struct kvt_item){.key = key_of(i), .buf = buf, .len = CHUNK};
    uint64_t t = 0;
    assert_int_equal(kvt_submit(c, ns.handle, KVT_SUBMIT_PUT, items, M, &t), 0);
    size_t canceled = 0;
    assert_int_equal(kvt_cancel(c, t, &canceled), 0);
    assert_true(canceled >= M - 64); /* at most one window was sent */
    assert_true(canceled < M);
    size_t other;
    assert_int_equal(drain(c, t, items, M, KVT_E_CANCELED, &other), canceled);
    assert_int_equal(other, M - canceled);
    for (size_t i = 0; i < M; i++) {
        int s = items[i].status;
        assert_true(s == 0 || s == KVT_E_CANCELED);
        size_t hits = 0;
        assert_int_equal(kvt_lookup(c, ns.handle, &items[i].key, 1, &hits, NULL), 0);
        assert_int_equal(hits, s == 0); /* a canceled Put stored nothing */
    }
    assert_int_equal(kvt_cancel(c, t, NULL), KVT_E_NOTFOUND);
    assert_int_equal(kvt_cancel(c, 0, NULL), KVT_E_INVAL);

    /* Limits and bad arguments: nothing submitted. */
    for (size_t i = 0; i < 4097; i++)
        items[i] = (struct kvt_item){.key = key_of(i), .buf = buf, .len = CHUNK};
    assert_int_equal(kvt_submit(c, ns.handle, KVT_SUBMIT_GET, items, 4097, &t), KVT_E_FULL);
    assert_int_equal(kvt_submit(c, ns.handle, KVT_SUBMIT_GET, items, 0, &t), KVT_E_INVAL);
    assert_int_equal(kvt_submit(c, ns.handle, (enum kvt_submit_op)9, items, 1, &t), KVT_E_INVAL);
    assert_int_equal(kvt_submit(c, ns.handle + 5, KVT_SUBMIT_GET, items, 1, &t), KVT_E_NONS);
    items[0].n_tokens = 0;
    assert_int_equal(kvt_submit(c, ns.handle, KVT_SUBMIT_GET_RANGE, items, 1, &t), KVT_E_INVAL);
    items[0].buf = NULL;
    assert_int_equal(kvt_submit(c, ns.handle, KVT_SUBMIT_GET, items, 1, &t), KVT_E_INVAL);
    assert_int_equal(kvt_pending(c), 0);
    struct kvt_completion cq[4];
    size_t k = 9;
    assert_int_equal(kvt_poll(c, cq, 4, 0, &k), 0);
    assert_int_equal(k, 0);
    assert_int_equal(kvt_poll(c, cq, 0, 0, &k), KVT_E_INVAL);
    assert_int_equal(kvt_poll(c, NULL, 4, 0, &k), KVT_E_INVAL);

    /* 256 submissions open at once, then the 257th is refused. */
    static struct kvt_item one[257];
    uint64_t tk;
    for (size_t i = 0; i < 256; i++) {
        one[i] = (struct kvt_item){.key = key_of(i), .buf = buf, .len = CHUNK};
        assert_int_equal(kvt_submit(c, ns.handle, KVT_SUBMIT_GET, &one[i], 1, &tk), 0);
    }
    one[256] = one[0];
    assert_int_equal(kvt_submit(c, ns.handle, KVT_SUBMIT_GET, &one[256], 1, &tk), KVT_E_FULL);
    size_t total = 0;
    while (kvt_pending(c)) {
        assert_int_equal(kvt_poll(c, cq, 4, 5000, &k), 0);
        total += k;
    }
    assert_int_equal(total, 256);

    /* The daemon's own words for an error it answered. */
    char v[64];
    int code = 0;
    assert_int_equal(kvt_config_get(c, "no.such.key", v, sizeof(v)), KVT_E_BADCONFIG);
    const char *text = kvt_last_error(c, &code);
    assert_int_equal(code, KVT_E_BADCONFIG);
    assert_non_null(strstr(text, "unknown config key"));
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* Submits N gets of stored keys; returns the ticket. */
static uint64_t submit_gets(struct kvt_client *c, uint32_t ns, struct kvt_item *items,
                            uint8_t (*dst)[CHUNK])
{
    for (size_t i = 0; i < N; i++)
        items[i] = (struct kvt_item){.key = key_of(i), .buf = dst[i], .len = CHUNK};
    uint64_t t = 0;
    assert_int_equal(kvt_submit(c, ns, KVT_SUBMIT_GET, items, N, &t), 0);
    return t;
}

static void put_all(struct kvt_client *c, uint32_t ns)
{
    static uint8_t src[CHUNK];
    for (size_t i = 0; i < N; i++) {
        kvt_test_fill(src, CHUNK, 100 + i);
        struct kvt_key k = key_of(i);
        assert_int_equal(kvt_put(c, ns, &k, src, CHUNK, 0), 0);
    }
}

/* A daemon that stops answering: every open item completes with E_TIMEOUT within about one
 * timeout, and once it answers again the next submission works on a new connection. Then a
 * daemon killed with items open: they complete with a session error, and after a restart the
 * library reconnects for the next submission. kvt_fd becomes readable when answers arrive. */
static void test_daemon_stalls_and_dies(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    assert_int_equal(kvt_test_daemon_start(&d, NULL), 0);
    struct kvt_client *c = connect_ns(&d, 400, &ns);
    put_all(c, ns.handle);
    static uint8_t dst[N][CHUNK];
    static struct kvt_item items[N];

    /* kvt_fd: readable once the daemon answered. */
    uint64_t t = submit_gets(c, ns.handle, items, dst);
    struct pollfd pf = {kvt_fd(c), POLLIN, 0};
    assert_true(pf.fd >= 0);
    assert_int_equal(poll(&pf, 1, 2000), 1);
    size_t other;
    assert_int_equal(drain(c, t, items, N, 0, &other), N);

    assert_int_equal(kill(d.pid, SIGSTOP), 0);
    uint64_t t0 = (uint64_t)time(NULL);
    t = submit_gets(c, ns.handle, items, dst);
    assert_int_equal(drain(c, t, items, N, KVT_E_TIMEOUT, &other), N);
    assert_true((uint64_t)time(NULL) - t0 <= 3);
    assert_int_equal(kill(d.pid, SIGCONT), 0);
    t = submit_gets(c, ns.handle, items, dst);
    assert_int_equal(drain(c, t, items, N, 0, &other), N);

    t = submit_gets(c, ns.handle, items, dst);
    kvt_test_daemon_kill(&d);
    size_t lost = N - drain(c, t, items, N, 0, &other);
    assert_int_equal(lost, other);
    for (size_t i = 0; i < N; i++) {
        int s = items[i].status;
        assert_true(s == 0 || s == KVT_E_DISCONNECTED || s == KVT_E_TIMEOUT);
    }
    assert_int_equal(kvt_test_daemon_start(&d, NULL), 0); /* same data dir: the CPU tier is empty */
    int rc = KVT_E_DISCONNECTED;
    for (int tries = 0; tries < 50 && rc; tries++) {
        rc = kvt_ping(c);
        if (rc)
            usleep(20000);
    }
    assert_int_equal(rc, 0);
    put_all(c, ns.handle);
    t = submit_gets(c, ns.handle, items, dst);
    assert_int_equal(drain(c, t, items, N, 0, &other), N);
    static uint8_t want[CHUNK];
    kvt_test_fill(want, CHUNK, 100 + N - 1);
    assert_memory_equal(dst[N - 1], want, CHUNK);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* An arena the caller made: zero-copy both ways at the caller's own addresses, staging only in
 * the range it lends, never unmapped by kvt_close, shared again after a daemon restart; specs
 * that break the rules are refused. */
static void test_caller_arena(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    assert_int_equal(kvt_test_daemon_start(&d, NULL), 0);
    const uint64_t bytes = 1 << 20, stage_off = 768 << 10;
    int fd = memfd_create("engine-pool", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)bytes), 0);
    uint8_t *base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(base != MAP_FAILED);
    struct kvt_connect_opts o = {.socket_path = d.socket_path, .timeout_ms = 2000};
    struct kvt_arena_spec a = {.fd = fd,
                               .base = base,
                               .bytes = bytes,
                               .stage_offset = stage_off,
                               .stage_bytes = 256 << 10};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect_arena(&o, &a, &c), KVT_E_INVAL); /* not sealed yet */
    assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
    struct kvt_arena_spec bad = a;
    bad.bytes = bytes / 2;
    assert_int_equal(kvt_connect_arena(&o, &bad, &c), KVT_E_INVAL); /* not its size */
    bad = a;
    bad.base = base + 64;
    assert_int_equal(kvt_connect_arena(&o, &bad, &c), KVT_E_INVAL);
    bad = a;
    bad.stage_bytes = bytes;
    assert_int_equal(kvt_connect_arena(&o, &bad, &c), KVT_E_INVAL); /* past the end */
    assert_int_equal(kvt_connect_arena(&o, NULL, &c), KVT_E_INVAL);
    assert_null(c);
    assert_int_equal(kvt_connect_arena(&o, &a, &c), 0);
    struct kvt_ns_info ns;
    assert_int_equal(kvt_register(c, &spec, &ns), 0);

    /* Library buffers come from the lent range only. */
    uint8_t *lent = kvt_arena_alloc(c, CHUNK);
    assert_true(lent >= base + stage_off && lent + CHUNK <= base + stage_off + (256 << 10));
    kvt_arena_free(c, lent);

    /* A Put from the engine's pool and a Get into it, at the engine's own addresses. */
    kvt_test_fill(base, CHUNK, 42);
    struct kvt_key k = key_of(1);
    assert_int_equal(kvt_put(c, ns.handle, &k, base, CHUNK, 0), 0);
    memset(base + 4 * CHUNK, 0, CHUNK);
    size_t len = 0;
    assert_int_equal(kvt_get(c, ns.handle, &k, base + 4 * CHUNK, CHUNK, &len, NULL), 0);
    assert_memory_equal(base + 4 * CHUNK, base, CHUNK);
    assert_int_equal(kvt_test_stat(c, "get_bytes"), CHUNK);

    /* The daemon restarts: the same pool is shared again and still works. */
    kvt_test_daemon_kill(&d);
    assert_int_equal(kvt_test_daemon_start(&d, NULL), 0);
    int rc = KVT_E_DISCONNECTED;
    for (int tries = 0; tries < 50 && rc; tries++)
        if ((rc = kvt_put(c, ns.handle, &k, base, CHUNK, 0)))
            usleep(20000);
    assert_int_equal(rc, 0);
    memset(base + 8 * CHUNK, 0, CHUNK);
    assert_int_equal(kvt_get(c, ns.handle, &k, base + 8 * CHUNK, CHUNK, &len, NULL), 0);
    assert_memory_equal(base + 8 * CHUNK, base, CHUNK);
    kvt_close(c);
    base[0] ^= 1; /* still mapped: the pool is the engine's */
    munmap(base, bytes);
    close(fd);

    /* No lent range: small buffers outside the arena travel inline, larger ones cannot. */
    fd = memfd_create("engine-pool-2", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    assert_int_equal(ftruncate(fd, (off_t)bytes), 0);
    assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
    base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    a = (struct kvt_arena_spec){.fd = fd, .base = base, .bytes = bytes};
    assert_int_equal(kvt_connect_arena(&o, &a, &c), 0);
    assert_int_equal(kvt_register(c, &spec, &ns), 0);
    assert_null(kvt_arena_alloc(c, 4096));
    static uint8_t big[8 << 20];
    struct kvt_ns_spec big_spec = spec;
    big_spec.model_id = "async-big";
    big_spec.tokens_per_chunk = 4096; /* 512 KiB chunks: more than travels inline */
    struct kvt_ns_info bns;
    assert_int_equal(kvt_register(c, &big_spec, &bns), 0);
    assert_int_equal(kvt_put(c, bns.handle, &k, big, bns.chunk_bytes, 0), KVT_E_NOMEM);
    kvt_close(c);
    munmap(base, bytes);
    close(fd);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_submit_put_get),    cmocka_unit_test(test_mixed_with_sync),
        cmocka_unit_test(test_cancel_and_limits), cmocka_unit_test(test_daemon_stalls_and_dies),
        cmocka_unit_test(test_caller_arena),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
