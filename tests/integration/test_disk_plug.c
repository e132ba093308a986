/*
 * Submission batching through a real kvtierd: range reads that one loop iteration dispatches (here
 * N GetRange frames that arrive in one send, for a chunk that is only on disk) reach the kernel in
 * one io_uring_enter, not one each, because the server plugs the disk tier for the iteration. The
 * system calls are counted on the daemon's loop thread with a perf tracepoint counter
 * (syscalls:sys_enter_io_uring_enter); where the kernel does not let this process open one (no
 * tracefs, perf_event_paranoid) the test says so and skips. Every range is still answered with its
 * own rows.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "kvtier.pb-c.h"
#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

/* 2 layers x 1 head x 64 dims x fp16 x (k, v): rows of 256 bytes, 64 tokens, 32 KiB chunks. */
static const struct kvt_ns_spec spec = {.model_id = "plug-test",
                                        .layers = 2,
                                        .kv_heads = 1,
                                        .head_dim = 64,
                                        .dtype = KVT_DTYPE_FP16,
                                        .tokens_per_chunk = 64};
#define ROW 256u
#define TOKENS 64u
#define CHUNK (2u * TOKENS * ROW)
#define N 8u         /* range reads sent together */
#define RANGE_TOK 16 /* one 16-token block each */

static const struct kvt_key key = {0x9106, 0x51ab};
static uint8_t chunk[CHUNK];

static const char *const args[] = {"--disk.bytes=64M", "--disk.codec=none",
                                   "--tier.write_policy=write-through", "--disk.queue_depth=16",
                                   NULL};

/* A counter of io_uring_enter calls by thread tid, or -1 when the kernel refuses one. */
static int uring_enter_counter(pid_t tid)
{
    const char *paths[] = {"/sys/kernel/tracing/events/syscalls/sys_enter_io_uring_enter/id",
                           "/sys/kernel/debug/tracing/events/syscalls/sys_enter_io_uring_enter/id"};
    unsigned long long id = 0;
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]) && !id; i++) {
        FILE *f = fopen(paths[i], "r");
        if (!f)
            continue;
        if (fscanf(f, "%llu", &id) != 1)
            id = 0;
        fclose(f);
    }
    if (!id)
        return -1;
    struct perf_event_attr a;
    memset(&a, 0, sizeof(a));
    a.type = PERF_TYPE_TRACEPOINT;
    a.size = sizeof(a);
    a.config = id;
    a.disabled = 1;
    return (int)syscall(SYS_perf_event_open, &a, tid, -1, -1, 0);
}

/* Appends req as one frame to buf at *len. */
static void frame(uint8_t *buf, size_t cap, size_t *len, Kvtier__Request *req)
{
    size_t n = kvtier__request__get_packed_size(req);
    assert_true(*len + 4 + n <= cap);
    uint8_t *p = buf + *len;
    p[0] = (uint8_t)n;
    p[1] = (uint8_t)(n >> 8);
    p[2] = p[3] = 0;
    kvtier__request__pack(req, p + 4);
    *len += 4 + n;
}

/* Reads one response frame; bytes of the next frames that came with it are kept for the next call
 * (the answers to pipelined requests arrive together). One connection per test. */
static Kvtier__Response *answer(int fd)
{
    Kvtier__Response *r = kvt_test_read_pipelined(fd);
    assert_non_null(r);
    return r;
}

/* Range i: layer i % 2, tokens [16 * (i / 2 % 4), +16), answered at i * RANGE_TOK * ROW. */
static uint32_t range_layer(uint32_t i)
{
    return i % 2;
}

static uint32_t range_first(uint32_t i)
{
    return (i / 2 % (TOKENS / RANGE_TOK)) * RANGE_TOK;
}

static void test_ranges_one_submit(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_connect_opts o = {.arena_bytes = 1 << 20, .timeout_ms = 5000};
    struct kvt_client *c = NULL;
    struct kvt_ns_info ns;
    enum kvt_tier_id tier;
    size_t hits = 0;

    /* The chunk is written through, then the daemon restarts on the same data: only on disk. */
    for (size_t i = 0; i < CHUNK; i++)
        chunk[i] = (uint8_t)(i * 131 + (i >> 8) * 7 + 1);
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    o.socket_path = d.socket_path;
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &spec, &ns), 0);
    assert_int_equal(kvt_put(c, ns.handle, &key, chunk, CHUNK, 0), 0);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    o.socket_path = d.socket_path;
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &spec, &ns), 0);
    assert_int_equal(kvt_lookup(c, ns.handle, &key, 1, &hits, &tier), 0);
    assert_int_equal(hits, 1);
    assert_int_equal(tier, KVT_TIER_DISK);
    uint64_t ranges0 = kvt_test_stat(c, "disk.range_reads");

    const uint64_t slot = (uint64_t)RANGE_TOK * ROW, arena = N * slot;
    uint8_t *a = NULL;
    uint32_t rns;
    int fd = kvt_test_raw_session(d.socket_path, NULL, &spec, arena, &a, &rns);
    assert_true(fd >= 0);
    memset(a, 0x5a, arena);
    uint8_t buf[N * 128];
    size_t len = 0;
    for (uint32_t i = 0; i < N; i++) {
        Kvtier__Request req = KVTIER__REQUEST__INIT;
        Kvtier__GetRangeReq g = KVTIER__GET_RANGE_REQ__INIT;
        Kvtier__Key k = KVTIER__KEY__INIT;
        k.lo = key.lo;
        k.hi = key.hi;
        g.ns = rns;
        g.key = &k;
        g.layer = range_layer(i);
        g.token_first = range_first(i);
        g.n_tokens = RANGE_TOK;
        g.offset = i * slot;
        g.capacity = slot;
        req.id = 100 + i;
        req.op_case = KVTIER__REQUEST__OP_GET_RANGE;
        req.get_range = &g;
        frame(buf, sizeof(buf), &len, &req);
    }

    int ctr = uring_enter_counter(d.pid);
    if (ctr < 0) {
        fprintf(stderr, "test_disk_plug: no perf tracepoint counter here (%s): skipped\n",
                strerror(errno));
        close(fd);
        kvt_close(c);
        assert_int_equal(kvt_test_daemon_stop(&d), 0);
        kvt_test_daemon_cleanup(&d);
        skip();
    }
    assert_int_equal(ioctl(ctr, PERF_EVENT_IOC_RESET, 0), 0);
    assert_int_equal(ioctl(ctr, PERF_EVENT_IOC_ENABLE, 0), 0);
    /* One send: the daemon reads every frame in one go and dispatches them in one iteration. */
    assert_int_equal(send(fd, buf, len, 0), (ssize_t)len);
    for (uint32_t k = 0; k < N; k++) {
        Kvtier__Response *r = answer(fd);
        assert_int_equal(r->status, 0);
        assert_true(r->id >= 100 && r->id < 100 + N);
        uint32_t i = (uint32_t)(r->id - 100);
        assert_int_equal(r->result_case, KVTIER__RESPONSE__RESULT_GET_RANGE);
        assert_int_equal(r->get_range->length, slot);
        assert_memory_equal(a + i * slot,
                            chunk + ((size_t)range_layer(i) * TOKENS + range_first(i)) * ROW, slot);
        kvtier__response__free_unpacked(r, NULL);
    }
    assert_int_equal(ioctl(ctr, PERF_EVENT_IOC_DISABLE, 0), 0);
    uint64_t enters = 0;
    assert_int_equal(read(ctr, &enters, sizeof(enters)), (ssize_t)sizeof(enters));
    close(ctr);
    /* Every range was read from disk, and N reads took at most two submissions (one if all
     * frames came in one read of the socket; unplugged it is one each, N at least). */
    assert_int_equal(kvt_test_stat(c, "disk.range_reads") - ranges0, N);
    fprintf(stderr, "test_disk_plug: %u range reads, %llu io_uring_enter\n", N,
            (unsigned long long)enters);
    assert_true(enters >= 1);
    assert_true(enters <= 2);

    close(fd);
    munmap(a, arena);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ranges_one_submit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
