/*
 * Tests of the disk tier as a library: write then read back through io_uring, restart with data
 * intact, corruption answered as a counted miss, injected EIO and ENOSPC, latching after repeated
 * errors, the O_DIRECT policy, the owner lock, and a crash test that SIGKILLs a writing child at
 * random moments and checks that every acknowledged write survives and nothing wrong is served.
 * Every test works in its own mkdtemp directory under /tmp and removes it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "kvtier/errors.h"
#include "tiers/disk/disk.h"

#include <xxhash.h>

#define NS 0x5eed5eed12345678ull
#define MAX_OBJ (256u * 1024u)
#define REC_BYTES 96 /* journal and checkpoint record (tiers/disk/disk_internal.h) */

struct env {
    char dir[64];
    char path[96];
    struct kvt_disk_config cfg;
    struct kvt_disk_faults faults;
    char err[256];
};

static struct kvt_obj_id obj_id(uint64_t k)
{
    struct kvt_obj_id id = {.ns_seed = NS, .key = {.lo = k * 0x9e3779b97f4a7c15ull, .hi = k}};
    return id;
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

/* Length and bytes of object k are a function of k, so any reader can check what it got. Even
 * keys get fp16-like (compressible) data, odd keys random bytes (stored raw). */
static size_t obj_len(uint64_t k)
{
    return 1 + (size_t)(mix(k + 1) % MAX_OBJ);
}

static void obj_fill(uint64_t k, unsigned char *b, size_t len)
{
    uint64_t s = mix(k) | 1;
    for (size_t i = 0; i < len; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        b[i] = (k & 1)   ? (unsigned char)s
               : (i & 1) ? (unsigned char)(0x30 + (s & 3))
                         : (unsigned char)s;
    }
}

static void env_init(struct env *e)
{
    memset(e, 0, sizeof(*e));
    snprintf(e->dir, sizeof(e->dir), "/tmp/kvt-disk-XXXXXX");
    assert_non_null(mkdtemp(e->dir));
    snprintf(e->path, sizeof(e->path), "%s/data0", e->dir);
    kvt_disk_config_init(&e->cfg);
    e->cfg.paths[0] = e->path;
    e->cfg.n_paths = 1;
    e->cfg.file_bytes = 64u << 20;
    e->cfg.object_bytes_max = MAX_OBJ;
    e->cfg.staging_bytes = 16u * (MAX_OBJ + 4096u);
    e->cfg.queue_depth = 16;
    e->cfg.objects_max = 4096;
    e->cfg.io_errors_max = 3;
    e->cfg.faults = &e->faults;
    e->cfg.err_buf = e->err;
    e->cfg.err_buf_bytes = sizeof(e->err);
}

static void env_cleanup(struct env *e)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", e->dir);
    assert_int_equal(system(cmd), 0);
}

static struct kvt_disk *open_store(struct env *e)
{
    struct kvt_disk *d = NULL;
    int rc = kvt_disk_create(&e->cfg, &d);
    if (rc)
        fprintf(stderr, "create: %d %s\n", rc, e->err);
    assert_int_equal(rc, 0);
    return d;
}

struct result {
    int done;
    int res;
};

static void on_done(void *arg, int res)
{
    struct result *r = arg;
    r->done++;
    r->res = res;
}

static void wait_for(struct kvt_disk *d, struct result *r)
{
    for (int i = 0; i < 10000 && !r->done; i++)
        kvt_disk_wait(d, 100);
    assert_int_equal(r->done, 1);
}

static int write_sync(struct kvt_disk *d, uint64_t k)
{
    static unsigned char buf[MAX_OBJ];
    struct kvt_obj_id id = obj_id(k);
    struct result r = {0, 0};
    size_t len = obj_len(k);
    int rc;

    obj_fill(k, buf, len);
    rc = kvt_disk_write(d, &id, buf, len, 16, 2, on_done, &r);
    if (rc)
        return rc;
    wait_for(d, &r);
    return r.res;
}

/* Reads object k and checks its bytes when found; returns the callback's result or the call's. */
static int read_check(struct kvt_disk *d, uint64_t k)
{
    static unsigned char buf[MAX_OBJ], want[MAX_OBJ];
    struct kvt_obj_id id = obj_id(k);
    struct result r = {0, 0};
    size_t len = obj_len(k);
    int rc;

    memset(buf, 0xcc, len);
    rc = kvt_disk_read(d, &id, buf, sizeof(buf), on_done, &r);
    if (rc)
        return rc;
    wait_for(d, &r);
    if (r.res >= 0) {
        assert_int_equal(r.res, (int)len);
        obj_fill(k, want, len);
        assert_memory_equal(buf, want, len);
    }
    return r.res;
}

static void test_write_read(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;
    struct kvt_obj_id id = obj_id(3);
    struct result r = {0, 0};
    unsigned char small[16];

    env_init(&e);
    d = open_store(&e);
    for (uint64_t k = 0; k < 40; k++)
        assert_int_equal(write_sync(d, k), 0);
    for (uint64_t k = 0; k < 40; k++)
        assert_int_equal(read_check(d, k), (int)obj_len(k));
    assert_int_equal(read_check(d, 1000), KVT_E_NOTFOUND);
    assert_int_equal(write_sync(d, 5), KVT_E_EXISTS);
    assert_int_equal(kvt_disk_read(d, &id, small, sizeof(small), on_done, &r), KVT_E_SMALLBUF);
    assert_int_equal(kvt_disk_remove(d, &id), 0);
    assert_int_equal(kvt_disk_remove(d, &id), KVT_E_NOTFOUND);
    assert_int_equal(read_check(d, 3), KVT_E_NOTFOUND);
    assert_int_equal(kvt_disk_lookup(d, &id, NULL), KVT_E_NOTFOUND);
    id = obj_id(4);
    assert_int_equal(kvt_disk_lookup(d, &id, NULL), 0);

    /* An empty object is a valid object. */
    id = obj_id(77777);
    memset(&r, 0, sizeof(r));
    assert_int_equal(kvt_disk_write(d, &id, NULL, 0, 0, 0, on_done, &r), 0);
    wait_for(d, &r);
    assert_int_equal(r.res, 0);
    memset(&r, 0, sizeof(r));
    assert_int_equal(kvt_disk_read(d, &id, NULL, 0, on_done, &r), 0);
    wait_for(d, &r);
    assert_int_equal(r.res, 0);
    assert_int_equal(kvt_disk_remove(d, &id), 0);

    kvt_disk_stats(d, &st);
    assert_int_equal(st.tier.objects, 39);
    assert_int_equal(st.tier.hits, 41);
    assert_int_equal(st.tier.misses, 2);
    assert_int_equal(st.writes_durable, 41);
    assert_true(st.compressed_objects > 0 && st.compressed_objects < 40);
    assert_true(st.tier.bytes_used > 0 && st.tier.bytes_used <= st.tier.bytes_capacity);
    assert_int_equal(st.tier.failed, 0);
    assert_true(kvt_disk_event_fd(d) >= 0);
    assert_int_equal(kvt_disk_inflight(d), 0);
    kvt_disk_destroy(d);
    kvt_disk_destroy(NULL);
    env_cleanup(&e);
}

/* Many writes submitted together (plugged) share group commits. */
static void test_batched_writes(void **state)
{
    (void)state;
    static unsigned char buf[MAX_OBJ];
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;
    struct result r[16];

    env_init(&e);
    d = open_store(&e);
    memset(r, 0, sizeof(r));
    kvt_disk_plug(d);
    for (uint64_t k = 0; k < 16; k++) {
        struct kvt_obj_id id = obj_id(100 + k);
        obj_fill(100 + k, buf, obj_len(100 + k));
        assert_int_equal(kvt_disk_write(d, &id, buf, obj_len(100 + k), 16, 2, on_done, &r[k]), 0);
    }
    {
        struct kvt_obj_id id = obj_id(999);
        assert_int_equal(kvt_disk_write(d, &id, buf, 10, 1, 2, on_done, &r[0]), KVT_E_BUSY);
    }
    kvt_disk_unplug(d);
    for (int k = 0; k < 16; k++) {
        wait_for(d, &r[k]);
        assert_int_equal(r[k].res, 0);
    }
    kvt_disk_stats(d, &st);
    assert_true(st.commits < 16);
    assert_int_equal(st.busy_rejects, 1);
    for (uint64_t k = 0; k < 16; k++)
        assert_int_equal(read_check(d, 100 + k), (int)obj_len(100 + k));
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

struct encode_job {
    struct kvt_disk_wslot *ws;
    size_t n;
    int rc;
};

/* A worker thread with its own codec encodes reservations the owner thread made. */
static void *encode_worker(void *arg)
{
    static unsigned char buf[MAX_OBJ];
    struct encode_job *job = arg;
    struct kvt_codec_config cfg;
    struct kvt_codec *c = NULL;

    kvt_codec_config_init(&cfg);
    cfg.algo = KVT_CODEC_ZSTD;
    cfg.input_bytes_max = MAX_OBJ;
    job->rc = kvt_codec_create(&cfg, &c);
    for (size_t i = 0; i < job->n && job->rc == 0; i++) {
        uint64_t k = job->ws[i].id.key.hi;
        obj_fill(k, buf, obj_len(k));
        job->rc = kvt_disk_encode(c, &job->ws[i], buf, 2);
    }
    kvt_codec_destroy(c);
    return NULL;
}

static void test_two_phase_write_on_worker(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_wslot ws[8], extra;
    struct result r[8];
    struct encode_job job = {ws, 8, 0};
    pthread_t t;
    struct kvt_obj_id id;

    env_init(&e);
    d = open_store(&e);
    memset(r, 0, sizeof(r));
    for (uint64_t k = 0; k < 8; k++) {
        id = obj_id(200 + k);
        assert_int_equal(kvt_disk_write_reserve(d, &id, obj_len(200 + k), 16, &ws[k]), 0);
    }
    assert_int_equal(pthread_create(&t, NULL, encode_worker, &job), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(job.rc, 0);
    kvt_disk_plug(d);
    for (int k = 0; k < 8; k++)
        assert_int_equal(kvt_disk_write_submit(d, &ws[k], on_done, &r[k]), 0);
    kvt_disk_unplug(d);
    for (int k = 0; k < 8; k++) {
        wait_for(d, &r[k]);
        assert_int_equal(r[k].res, 0);
    }
    for (uint64_t k = 0; k < 8; k++)
        assert_int_equal(read_check(d, 200 + k), (int)obj_len(200 + k));
    /* A cancelled reservation gives its buffer back and writes nothing. */
    id = obj_id(300);
    assert_int_equal(kvt_disk_write_reserve(d, &id, 100, 1, &extra), 0);
    kvt_disk_write_cancel(d, &extra);
    assert_int_equal(kvt_disk_inflight(d), 0);
    assert_int_equal(read_check(d, 300), KVT_E_NOTFOUND);
    /* Submitting an unsealed reservation is refused and releases it. */
    assert_int_equal(kvt_disk_write_reserve(d, &id, 100, 1, &extra), 0);
    assert_int_equal(kvt_disk_write_submit(d, &extra, on_done, &r[0]), KVT_E_INVAL);
    assert_int_equal(kvt_disk_inflight(d), 0);
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

static void corrupt_file(const char *path, off_t off);

struct lend_result {
    int done;
    int res;
    struct kvt_disk_lent lent;
};

static void on_lent(void *arg, int res, const struct kvt_disk_lent *lent)
{
    struct lend_result *r = arg;
    r->done++;
    r->res = res;
    if (lent)
        r->lent = *lent;
}

struct decode_job {
    struct lend_result *r;
    size_t n;
    int status[8];
};

static void *decode_worker(void *arg)
{
    static unsigned char buf[MAX_OBJ], want[MAX_OBJ];
    struct decode_job *job = arg;
    struct kvt_codec_config cfg;
    struct kvt_codec *c = NULL;

    kvt_codec_config_init(&cfg);
    cfg.input_bytes_max = MAX_OBJ;
    if (kvt_codec_create(&cfg, &c) != 0)
        return NULL;
    for (size_t i = 0; i < job->n; i++) {
        uint64_t k = job->r[i].lent.id.key.hi;
        job->status[i] = kvt_disk_decode(c, &job->r[i].lent, buf, sizeof(buf));
        obj_fill(k, want, obj_len(k));
        if (job->status[i] == 0 && memcmp(buf, want, obj_len(k)) != 0)
            job->status[i] = -1;
    }
    kvt_codec_destroy(c);
    return NULL;
}

/* Reads whose verification and decoding run on a worker; a corrupt object found there is
 * dropped on release exactly as an ordinary read would drop it. */
static void test_lending_read_on_worker(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;
    struct lend_result r[8];
    struct decode_job job;
    struct kvt_obj_id id;
    pthread_t t;

    env_init(&e);
    d = open_store(&e);
    for (uint64_t k = 0; k < 8; k++)
        assert_int_equal(write_sync(d, k), 0);
    kvt_disk_destroy(d);
    corrupt_file(e.path, 4096 + KVT_OBJECT_HEADER_BYTES + 5); /* object 0's body */
    d = open_store(&e);

    memset(r, 0, sizeof(r));
    for (uint64_t k = 0; k < 8; k++) {
        id = obj_id(k);
        assert_int_equal(kvt_disk_read_lend(d, &id, on_lent, &r[k]), 0);
    }
    for (int k = 0; k < 8; k++) {
        for (int i = 0; i < 1000 && !r[k].done; i++)
            kvt_disk_wait(d, 100);
        assert_int_equal(r[k].res, (int)obj_len((uint64_t)k));
    }
    job.r = r;
    job.n = 8;
    assert_int_equal(pthread_create(&t, NULL, decode_worker, &job), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(job.status[0], KVT_E_CORRUPT);
    for (int k = 1; k < 8; k++)
        assert_int_equal(job.status[k], 0);
    for (int k = 0; k < 8; k++)
        kvt_disk_read_release(d, &r[k].lent, job.status[k]);
    assert_int_equal(kvt_disk_inflight(d), 0);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.tier.checksum_failures, 1);
    assert_int_equal(st.tier.hits, 7);
    id = obj_id(0);
    assert_int_equal(kvt_disk_lookup(d, &id, NULL), KVT_E_NOTFOUND);

    /* An I/O error reaches the lending callback with no loan. */
    e.faults.fail_next_io = 1;
    memset(r, 0, sizeof(r));
    id = obj_id(1);
    assert_int_equal(kvt_disk_read_lend(d, &id, on_lent, &r[0]), 0);
    while (!r[0].done)
        kvt_disk_wait(d, 100);
    assert_int_equal(r[0].res, KVT_E_IO);
    assert_int_equal(kvt_disk_inflight(d), 0);
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

struct enum_ctx {
    uint64_t seen;
    int bad;
};

static int enum_cb(void *arg, const struct kvt_disk_obj_info *info)
{
    struct enum_ctx *c = arg;
    uint64_t k = info->id.key.hi;
    struct kvt_obj_id id = obj_id(k);
    if (info->id.ns_seed != NS || info->id.key.lo != id.key.lo || info->raw_len != obj_len(k) ||
        info->n_tokens != 16)
        c->bad++;
    c->seen++;
    return 0;
}

static void test_restart(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;
    struct enum_ctx c = {0, 0};

    env_init(&e);
    /* A small checkpoint interval so that the restart reads a checkpoint and a journal. */
    e.cfg.checkpoint_records = 16;
    d = open_store(&e);
    for (uint64_t k = 0; k < 60; k++)
        assert_int_equal(write_sync(d, k), 0);
    for (uint64_t k = 0; k < 60; k += 7) {
        struct kvt_obj_id id = obj_id(k);
        assert_int_equal(kvt_disk_remove(d, &id), 0);
    }
    /* The journal was folded into checkpoints while writing (start + every 16 records). They
     * are written by a background thread, so under load fewer of them may have finished when
     * the writes do: wait for the folds (bounded), then require at least one beside the start. */
    kvt_disk_stats(d, &st);
    for (int i = 0; i < 500 && st.checkpoints < 4; i++) {
        usleep(10 * 1000);
        kvt_disk_poll(d);
        kvt_disk_stats(d, &st);
    }
    assert_true(st.checkpoints >= 2);
    kvt_disk_destroy(d);

    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.recovered_objects, 60 - 9);
    assert_int_equal(st.recovery_dropped, 0);
    assert_int_equal(kvt_disk_enumerate(d, enum_cb, &c), 60 - 9);
    assert_int_equal(c.seen, 60 - 9);
    assert_int_equal(c.bad, 0);
    for (uint64_t k = 0; k < 60; k++)
        assert_int_equal(read_check(d, k), k % 7 == 0 ? KVT_E_NOTFOUND : (int)obj_len(k));
    /* Space of removed objects is reusable and new writes get fresh sequence numbers. */
    for (uint64_t k = 60; k < 80; k++)
        assert_int_equal(write_sync(d, k), 0);
    kvt_disk_destroy(d);
    d = open_store(&e);
    for (uint64_t k = 60; k < 80; k++)
        assert_int_equal(read_check(d, k), (int)obj_len(k));
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

/* Objects spread over two files survive a restart; the same files given in another order (or
 * replaced) are recognised as foreign and formatted instead of being misread. */
static void test_two_files_and_identity(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;
    char path1[128];

    env_init(&e);
    snprintf(path1, sizeof(path1), "%s/data1", e.dir);
    e.cfg.paths[1] = path1;
    e.cfg.n_paths = 2;
    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.formats, 1);
    assert_int_equal(st.tier.bytes_capacity, 2 * e.cfg.file_bytes);
    for (uint64_t k = 0; k < 20; k++)
        assert_int_equal(write_sync(d, k), 0);
    kvt_disk_destroy(d);

    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.formats, 0);
    assert_int_equal(st.tier.objects, 20);
    for (uint64_t k = 0; k < 20; k++)
        assert_int_equal(read_check(d, k), (int)obj_len(k));
    kvt_disk_destroy(d);

    e.cfg.paths[0] = path1;
    e.cfg.paths[1] = e.path;
    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.formats, 1);
    assert_int_equal(st.tier.objects, 0);
    assert_int_equal(read_check(d, 3), KVT_E_NOTFOUND);
    assert_int_equal(write_sync(d, 3), 0);
    assert_int_equal(read_check(d, 3), (int)obj_len(3));
    kvt_disk_stats(d, &st);
    assert_int_equal(st.tier.checksum_failures, 0);
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

static void corrupt_file(const char *path, off_t off)
{
    int fd = open(path, O_RDWR);
    unsigned char b;
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, &b, 1, off), 1);
    b ^= 0x40;
    assert_int_equal(pwrite(fd, &b, 1, off), 1);
    assert_int_equal(fsync(fd), 0);
    close(fd);
}

static void test_corruption_is_a_miss(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;
    struct kvt_disk_obj_info info;
    struct kvt_obj_id id = obj_id(0);

    env_init(&e);
    d = open_store(&e);
    for (uint64_t k = 0; k < 4; k++)
        assert_int_equal(write_sync(d, k), 0);
    kvt_disk_destroy(d);
    /* Block 0 is the superblock and first fit puts object 0 right after it: flip one body
     * byte of it (after its 4 KiB header block). */
    corrupt_file(e.path, 4096 + KVT_OBJECT_HEADER_BYTES + 77);

    d = open_store(&e);
    assert_int_equal(kvt_disk_lookup(d, &id, &info), 0);
    assert_int_equal(read_check(d, 0), KVT_E_NOTFOUND);
    assert_int_equal(kvt_disk_lookup(d, &id, &info), KVT_E_NOTFOUND);
    assert_int_equal(read_check(d, 0), KVT_E_NOTFOUND);
    for (uint64_t k = 1; k < 4; k++)
        assert_int_equal(read_check(d, k), (int)obj_len(k));
    kvt_disk_stats(d, &st);
    assert_int_equal(st.tier.checksum_failures, 1);
    assert_int_equal(st.tier.misses, 2);
    assert_int_equal(st.tier.objects, 3);
    assert_int_equal(st.tier.failed, 0);
    /* The object can be written again and is then served. */
    assert_int_equal(write_sync(d, 0), 0);
    assert_int_equal(read_check(d, 0), (int)obj_len(0));
    kvt_disk_destroy(d);

    /* A header corruption is caught the same way. */
    corrupt_file(e.path, 4096 + 20);
    d = open_store(&e);
    {
        int rc0 = read_check(d, 0), rc1 = read_check(d, 1);
        assert_true(rc0 == KVT_E_NOTFOUND || rc1 == KVT_E_NOTFOUND);
    }
    kvt_disk_stats(d, &st);
    assert_int_equal(st.tier.checksum_failures, 1);
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

static void test_injected_eio(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;

    env_init(&e);
    d = open_store(&e);
    e.faults.fail_next_io = 1;
    assert_int_equal(write_sync(d, 1), KVT_E_IO);
    assert_int_equal(read_check(d, 1), KVT_E_NOTFOUND);
    assert_int_equal(write_sync(d, 1), 0);
    e.faults.fail_next_io = 1;
    assert_int_equal(read_check(d, 1), KVT_E_IO);
    assert_int_equal(read_check(d, 1), (int)obj_len(1));
    kvt_disk_stats(d, &st);
    assert_int_equal(st.tier.io_errors, 2);
    assert_int_equal(st.tier.failed, 0);
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

static void test_enospc_and_full(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;
    int rc = 0;
    uint64_t k;

    env_init(&e);
    e.cfg.file_bytes = 2u << 20;
    d = open_store(&e);
    e.faults.fail_next_io = 1;
    e.faults.fail_errno = ENOSPC;
    assert_int_equal(write_sync(d, 2), KVT_E_FULL);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.enospc, 1);
    assert_int_equal(st.tier.io_errors, 0);
    /* Fill the 2 MiB file: the allocator then refuses synchronously with KVT_E_FULL. */
    for (k = 10; k < 200 && rc == 0; k++)
        rc = write_sync(d, k);
    assert_int_equal(rc, KVT_E_FULL);
    kvt_disk_stats(d, &st);
    assert_true(st.full_rejects >= 1);
    assert_int_equal(st.tier.failed, 0);
    /* Removing makes room again (after the tombstone commit). */
    for (uint64_t j = 10; j < k - 1; j++) {
        struct kvt_obj_id id = obj_id(j);
        assert_int_equal(kvt_disk_remove(d, &id), 0);
    }
    for (int i = 0; i < 100 && kvt_disk_inflight(d) == 0; i++)
        if (kvt_disk_wait(d, 10) == 0 && write_sync(d, 500) == 0)
            break;
    assert_int_equal(read_check(d, 500), (int)obj_len(500));
    kvt_disk_destroy(d);

    /* Files that cannot be allocated at all fail create with KVT_E_FULL. */
    e.cfg.file_bytes = 1ull << 46;
    {
        struct kvt_disk *d2 = NULL;
        char path2[128];
        snprintf(path2, sizeof(path2), "%s/huge", e.dir);
        e.cfg.paths[0] = path2;
        assert_int_equal(kvt_disk_create(&e.cfg, &d2), KVT_E_FULL);
        assert_null(d2);
        e.cfg.paths[0] = e.path;
    }
    env_cleanup(&e);
}

static void test_latch_after_repeated_errors(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;
    struct kvt_obj_id id = obj_id(1);
    unsigned char b[8] = {0};
    struct result r = {0, 0};

    env_init(&e);
    d = open_store(&e);
    assert_int_equal(write_sync(d, 1), 0);
    e.faults.fail_next_io = 1000;
    assert_int_equal(write_sync(d, 2), KVT_E_IO);
    assert_int_equal(read_check(d, 1), KVT_E_IO);
    assert_int_equal(write_sync(d, 3), KVT_E_TIERFAILED);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.tier.failed, 1);
    assert_int_equal(st.tier.io_errors, 3);
    assert_int_equal(kvt_disk_write(d, &id, b, 8, 1, 0, on_done, &r), KVT_E_TIERFAILED);
    assert_int_equal(kvt_disk_read(d, &id, b, 8, on_done, &r), KVT_E_TIERFAILED);
    assert_int_equal(kvt_disk_remove(d, &id), KVT_E_TIERFAILED);
    assert_int_equal(r.done, 0);
    kvt_disk_destroy(d);
    /* A latched store is healthy again after a restart with a working device. */
    e.faults.fail_next_io = 0;
    d = open_store(&e);
    assert_int_equal(read_check(d, 1), (int)obj_len(1));
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

static void test_odirect_policy(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d = NULL;

    env_init(&e);
    e.faults.odirect_einval = 1;
    assert_int_equal(kvt_disk_create(&e.cfg, &d), KVT_E_BADCONFIG);
    assert_null(d);
    assert_non_null(strstr(e.err, "O_DIRECT"));
    e.cfg.allow_buffered = 1;
    d = open_store(&e);
    assert_int_equal(write_sync(d, 8), 0);
    assert_int_equal(read_check(d, 8), (int)obj_len(8));
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

static void test_owner_lock(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d, *d2 = NULL;

    env_init(&e);
    d = open_store(&e);
    e.cfg.lock_wait_ms = 50;
    assert_int_equal(kvt_disk_create(&e.cfg, &d2), KVT_E_BUSY);
    kvt_disk_destroy(d);
    d = open_store(&e);
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

/* Runs fn in a child that leaves without shutting the store down (no checkpoint), as a crash
 * would after its last acknowledged write. */
static void run_and_abandon(struct env *e, void (*fn)(struct kvt_disk *d))
{
    pid_t pid = fork();
    int status;

    assert_true(pid >= 0);
    if (pid == 0) {
        struct kvt_disk *d = NULL;
        if (kvt_disk_create(&e->cfg, &d) != 0)
            _exit(2);
        fn(d);
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void write_30(struct kvt_disk *d)
{
    for (uint64_t k = 0; k < 30; k++)
        if (write_sync(d, k) != 0)
            _exit(3);
}

/* A journal cut inside its last record loses exactly that record's object. */
static void test_torn_journal_tail(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;
    char jpath[128];
    int fd;
    off_t size;

    env_init(&e);
    e.cfg.checkpoint_records = 100000;
    run_and_abandon(&e, write_30);
    snprintf(jpath, sizeof(jpath), "%s/kvtier-disk.journal", e.dir);
    fd = open(jpath, O_RDWR);
    assert_true(fd >= 0);
    size = lseek(fd, 0, SEEK_END);
    assert_int_equal(size, 30 * REC_BYTES);
    assert_int_equal(ftruncate(fd, size - 40), 0);
    close(fd);

    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.recovered_objects, 29);
    assert_int_equal(st.recovery_dropped, 0);
    for (uint64_t k = 0; k < 29; k++)
        assert_int_equal(read_check(d, k), (int)obj_len(k));
    assert_int_equal(read_check(d, 29), KVT_E_NOTFOUND);
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

/* A journal record whose data never reached the disk (here: the extent zeroed behind the
 * store's back) is dropped at recovery by the header check, not served. */
static void test_unwritten_extent_dropped(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;
    static unsigned char zero[4096];
    int fd;

    env_init(&e);
    e.cfg.checkpoint_records = 100000;
    run_and_abandon(&e, write_30);
    fd = open(e.path, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, zero, sizeof(zero), 4096), (ssize_t)sizeof(zero));
    close(fd);

    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.recovered_objects, 29);
    assert_int_equal(st.recovery_dropped, 1);
    assert_int_equal(read_check(d, 0), KVT_E_NOTFOUND);
    for (uint64_t k = 1; k < 30; k++)
        assert_int_equal(read_check(d, k), (int)obj_len(k));
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

static void remove_then_reuse(struct kvt_disk *d)
{
    struct kvt_obj_id id;

    for (uint64_t k = 0; k < 30; k++)
        if (write_sync(d, k) != 0)
            _exit(3);
    for (uint64_t k = 0; k < 30; k += 2) {
        id = obj_id(k);
        if (kvt_disk_remove(d, &id) != 0)
            _exit(4);
    }
    /* New objects may reuse the freed extents once the tombstones are durable. */
    for (uint64_t k = 100; k < 130; k++)
        if (write_sync(d, k) != 0)
            _exit(5);
}

/* Removed objects stay removed after a crash and their reused extents serve the new objects. */
static void test_remove_and_reuse_across_crash(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;

    env_init(&e);
    e.cfg.checkpoint_records = 100000;
    e.cfg.file_bytes = 8u << 20;
    run_and_abandon(&e, remove_then_reuse);
    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.recovery_dropped, 0);
    assert_int_equal(st.recovered_objects, 15 + 30);
    for (uint64_t k = 0; k < 30; k++)
        assert_int_equal(read_check(d, k), k % 2 ? (int)obj_len(k) : KVT_E_NOTFOUND);
    for (uint64_t k = 100; k < 130; k++)
        assert_int_equal(read_check(d, k), (int)obj_len(k));
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

static void flip_byte(const char *path, off_t off)
{
    unsigned char b;
    int fd = open(path, O_RDWR);

    assert_true(fd >= 0);
    assert_int_equal(pread(fd, &b, 1, off), 1);
    b ^= 0x5a;
    assert_int_equal(pwrite(fd, &b, 1, off), 1);
    close(fd);
}

/* Waits for a durability barrier; the callback never runs inside kvt_disk_sync itself. */
static int sync_wait(struct kvt_disk *d)
{
    struct kvt_disk_sync sy;
    struct result r = {0, 0};
    int rc = kvt_disk_sync(d, &sy, on_done, &r);

    if (rc)
        return rc;
    if (r.done)
        return -1;
    for (int i = 0; i < 10000 && !r.done; i++)
        kvt_disk_wait(d, 100);
    return r.done == 1 ? r.res : -2;
}

/* One flipped byte in the checkpoint (in a record, in the header) or a missing checkpoint no
 * longer costs the store: the data files are scanned and every object comes back intact, and the
 * next start is an ordinary one again. */
static void test_scan_after_damaged_checkpoint(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;
    char ckpt[128];
    const off_t where[] = {64 + REC_BYTES * 50 + 20, 10, -1};

    env_init(&e);
    e.cfg.checkpoint_records = 16;
    d = open_store(&e);
    for (uint64_t k = 0; k < 100; k++)
        assert_int_equal(write_sync(d, k), 0);
    kvt_disk_destroy(d);
    snprintf(ckpt, sizeof(ckpt), "%s/kvtier-disk.ckpt", e.dir);
    for (size_t w = 0; w < sizeof(where) / sizeof(where[0]); w++) {
        if (where[w] >= 0)
            flip_byte(ckpt, where[w]);
        else
            assert_int_equal(unlink(ckpt), 0);
        d = open_store(&e);
        kvt_disk_stats(d, &st);
        assert_int_equal(st.scans, 1);
        assert_int_equal(st.recovered_by_scan, 100);
        assert_int_equal(st.recovered_objects, 100);
        assert_int_equal(st.scan_dropped, 0);
        for (uint64_t k = 0; k < 100; k++)
            assert_int_equal(read_check(d, k), (int)obj_len(k));
        kvt_disk_destroy(d);
        d = open_store(&e);
        kvt_disk_stats(d, &st);
        assert_int_equal(st.scans, 0);
        assert_int_equal(st.recovered_objects, 100);
        kvt_disk_destroy(d);
    }
    env_cleanup(&e);
}

static void write_30_remove_5(struct kvt_disk *d)
{
    write_30(d);
    for (uint64_t k = 5; k < 10; k++) {
        struct kvt_obj_id id = obj_id(k);
        if (kvt_disk_remove(d, &id) != 0)
            _exit(4);
    }
    if (sync_wait(d) != 0)
        _exit(5);
}

/* A flipped byte inside the journal (a sound record after a bad one: damage, not a torn tail)
 * falls back to the scan: the object whose record was hit comes back from its own header, and
 * removals recorded in the rest of the journal stay removed. */
static void test_scan_after_damaged_journal(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;
    char jpath[128];

    env_init(&e);
    e.cfg.checkpoint_records = 100000;
    run_and_abandon(&e, write_30_remove_5);
    snprintf(jpath, sizeof(jpath), "%s/kvtier-disk.journal", e.dir);
    flip_byte(jpath, 3 * REC_BYTES + 30);
    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.scans, 1);
    assert_int_equal(st.recovered_by_scan, 25);
    assert_int_equal(st.recovered_objects, 25);
    for (uint64_t k = 0; k < 30; k++)
        assert_int_equal(read_check(d, k), k >= 5 && k < 10 ? KVT_E_NOTFOUND : (int)obj_len(k));
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

/* An object whose payload was damaged on disk is dropped by the scan (counted) and its space is
 * reused; the others come back. */
static void test_scan_drops_corrupt_object(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;
    struct kvt_disk_obj_info info;
    struct kvt_obj_id id = obj_id(7);
    char ckpt[128];

    env_init(&e);
    d = open_store(&e);
    for (uint64_t k = 0; k < 20; k++)
        assert_int_equal(write_sync(d, k), 0);
    assert_int_equal(kvt_disk_lookup(d, &id, &info), 0);
    kvt_disk_destroy(d);
    /* Object 7's body starts right after its 4 KiB header block; find its extent by reading
     * the checkpoint would need internals, so damage it through the scan's own view: flip a
     * payload byte of the block where the store put it (enumerated order is not extent order,
     * so search the file for its header). */
    {
        int fd = open(e.path, O_RDWR);
        static unsigned char blk[4096];
        off_t found = -1;
        assert_true(fd >= 0);
        for (off_t off = 4096; off < (off_t)e.cfg.file_bytes && found < 0; off += 4096) {
            assert_int_equal(pread(fd, blk, sizeof(blk), off), (ssize_t)sizeof(blk));
            uint64_t lo = 0, hi = 0;
            memcpy(&lo, blk + 24, 8);
            memcpy(&hi, blk + 32, 8);
            if (memcmp(blk, "KVTO", 4) == 0 && lo == id.key.lo && hi == id.key.hi)
                found = off;
        }
        close(fd);
        assert_true(found > 0);
        flip_byte(e.path, found + KVT_OBJECT_HEADER_BYTES + 200);
    }
    snprintf(ckpt, sizeof(ckpt), "%s/kvtier-disk.ckpt", e.dir);
    flip_byte(ckpt, 20);
    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.scans, 1);
    assert_int_equal(st.recovered_by_scan, 19);
    assert_true(st.scan_dropped >= 1);
    for (uint64_t k = 0; k < 20; k++)
        assert_int_equal(read_check(d, k), k == 7 ? KVT_E_NOTFOUND : (int)obj_len(k));
    for (uint64_t k = 100; k < 120; k++)
        assert_int_equal(write_sync(d, k), 0);
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

/* kvt_disk_sync calls back, from poll only, once the removals before it are durable; a removal
 * so acknowledged survives a crash right after. */
static void test_sync_barrier(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;
    struct kvt_disk_sync sy;
    struct result r = {0, 0};

    env_init(&e);
    e.cfg.checkpoint_records = 100000;
    d = open_store(&e);
    /* Nothing pending: still called back from poll, not from the call. */
    assert_int_equal(kvt_disk_sync(d, &sy, on_done, &r), 0);
    assert_int_equal(r.done, 0);
    kvt_disk_poll(d);
    assert_int_equal(r.done, 1);
    assert_int_equal(r.res, 0);
    kvt_disk_destroy(d);
    run_and_abandon(&e, write_30_remove_5);
    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.scans, 0);
    assert_int_equal(st.recovered_objects, 25);
    for (uint64_t k = 0; k < 30; k++)
        assert_int_equal(read_check(d, k), k >= 5 && k < 10 ? KVT_E_NOTFOUND : (int)obj_len(k));
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

static uint64_t ckpt_round_base;

static void write_200_small_ckpt(struct kvt_disk *d)
{
    struct kvt_disk_stats st;

    for (uint64_t k = ckpt_round_base; k < ckpt_round_base + 200; k++)
        if (write_sync(d, k) != 0)
            _exit(3);
    /* Checkpoints run on the store's thread, one at a time: while one runs the records go on
     * piling up for the next, so how many there are depends on how fast the machine syncs (on a
     * loaded one a few cover all 200 records; waiting for 10 failed there). At least two must
     * have run, the second while commits went on in the other journal (bounded wait: 30 s). */
    kvt_disk_stats(d, &st);
    for (int i = 0; i < 3000 && st.checkpoints < 2; i++) {
        usleep(10 * 1000);
        kvt_disk_poll(d);
        kvt_disk_stats(d, &st);
    }
    if (st.checkpoints < 2)
        _exit(4);
}

/* Checkpoints every 8 records run on the store's thread while commits go on in the other journal;
 * abandoned at any point (likely in the middle of one), the store comes back with every
 * acknowledged object. */
static void test_checkpoints_off_loop(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;

    env_init(&e);
    e.cfg.checkpoint_records = 8;
    e.cfg.file_bytes = 160u << 20;
    for (int round = 0; round < 3; round++) {
        ckpt_round_base = (uint64_t)round * 200;
        run_and_abandon(&e, write_200_small_ckpt);
        d = open_store(&e);
        kvt_disk_stats(d, &st);
        assert_int_equal(st.scans, 0);
        assert_int_equal(st.recovery_dropped, 0);
        assert_int_equal(st.recovered_objects, 200 * (uint64_t)(round + 1));
        for (uint64_t k = 0; k < ckpt_round_base + 200; k++)
            assert_int_equal(read_check(d, k), (int)obj_len(k));
        kvt_disk_destroy(d);
    }
    env_cleanup(&e);
}

/* ---- crash test ------------------------------------------------------------------------------ */

#define CRASH_ROUNDS 24
#define KEYS_PER_ROUND 100000u

struct child_ctx {
    int fd;
    uint64_t k;
};

static void child_done(void *arg, int res)
{
    struct child_ctx *c = arg;
    if (res == 0 && write(c->fd, &c->k, sizeof(c->k)) != (ssize_t)sizeof(c->k))
        _exit(3);
    free(c);
}

struct collect {
    struct kvt_obj_id *ids;
    size_t n, cap;
};

static int collect_cb(void *arg, const struct kvt_disk_obj_info *info)
{
    struct collect *c = arg;
    if (c->n >= c->cap)
        return 1;
    c->ids[c->n++] = info->id;
    return 0;
}

/* Writes objects round*KEYS_PER_ROUND, +1, ... as fast as it can, with several in flight, and
 * reports each key on the pipe once its write is acknowledged durable. Removes a few older keys
 * to exercise tombstones. Never returns: the parent kills it. */
static void crash_child(struct env *e, int round, int fd)
{
    static unsigned char buf[MAX_OBJ];
    struct kvt_disk *d = NULL;
    uint64_t k = (uint64_t)round * KEYS_PER_ROUND;

    if (kvt_disk_create(&e->cfg, &d) != 0)
        _exit(2);
    for (;;) {
        struct kvt_obj_id id = obj_id(k);
        struct child_ctx *c = malloc(sizeof(*c));
        size_t len = obj_len(k) / 4 + 1;
        int rc;

        c->fd = fd;
        c->k = k;
        obj_fill(k, buf, obj_len(k));
        rc = kvt_disk_write(d, &id, buf, len, 16, 2, child_done, c);
        if (rc == KVT_E_BUSY || rc == KVT_E_FULL) {
            free(c);
            kvt_disk_wait(d, 10);
            if (rc == KVT_E_FULL) {
                /* Make room by removing everything stored, then tell the parent: it requires
                 * only the keys acknowledged after the last such mark. */
                static struct kvt_obj_id ids[4096];
                struct collect cl = {ids, 0, 4096};
                uint64_t mark = UINT64_MAX - k;
                kvt_disk_enumerate(d, collect_cb, &cl);
                for (size_t j = 0; j < cl.n; j++)
                    kvt_disk_remove(d, &ids[j]);
                if (write(fd, &mark, sizeof(mark)) != (ssize_t)sizeof(mark))
                    _exit(3);
            }
            continue;
        }
        if (rc != 0)
            _exit(4);
        k++;
        kvt_disk_poll(d);
    }
}

static uint64_t crash_len(uint64_t k)
{
    return obj_len(k) / 4 + 1;
}

static void crash_read_check(struct kvt_disk *d, uint64_t k, int must_exist)
{
    static unsigned char buf[MAX_OBJ], want[MAX_OBJ];
    struct kvt_obj_id id = obj_id(k);
    struct result r = {0, 0};
    size_t len = crash_len(k);
    int rc = kvt_disk_read(d, &id, buf, sizeof(buf), on_done, &r);

    if (rc == KVT_E_NOTFOUND) {
        if (must_exist)
            fprintf(stderr, "acknowledged key %llu missing\n", (unsigned long long)k);
        assert_false(must_exist);
        return;
    }
    assert_int_equal(rc, 0);
    wait_for(d, &r);
    assert_int_equal(r.res, (int)len);
    obj_fill(k, want, obj_len(k));
    assert_memory_equal(buf, want, len);
}

struct served_ctx {
    struct kvt_disk *d;
    uint64_t n;
};

static void test_crash_recovery(void **state)
{
    (void)state;
    struct env e;
    uint64_t rng = (uint64_t)time(NULL) | 1, total_acked = 0;
    uint64_t *acked = malloc(sizeof(uint64_t) * 200000);

    env_init(&e);
    e.cfg.file_bytes = 32u << 20;
    e.cfg.checkpoint_records = 64;
    assert_non_null(acked);
    fprintf(stderr, "crash test seed %llu\n", (unsigned long long)rng);
    for (int round = 0; round < CRASH_ROUNDS; round++) {
        int p[2];
        pid_t pid;
        size_t n_acked = 0, base = 0;
        uint64_t v;
        struct kvt_disk *d;
        uint64_t listed = 0;

        assert_int_equal(pipe(p), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(p[0]);
            crash_child(&e, round, p[1]);
        }
        close(p[1]);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        /* Let it write for 20..220 ms, draining the pipe, then kill it wherever it is. */
        {
            struct timespec t0, t;
            long ms = 20 + (long)(rng % 200);
            clock_gettime(CLOCK_MONOTONIC, &t0);
            for (;;) {
                struct pollfd pfd = {.fd = p[0], .events = POLLIN};
                clock_gettime(CLOCK_MONOTONIC, &t);
                long el = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
                if (el >= ms)
                    break;
                if (poll(&pfd, 1, (int)(ms - el)) > 0) {
                    if (read(p[0], &v, sizeof(v)) != (ssize_t)sizeof(v))
                        break;
                    if (v > UINT64_MAX / 2)
                        base = n_acked;
                    else if (n_acked < 200000)
                        acked[n_acked++] = v;
                }
            }
        }
        kill(pid, SIGKILL);
        {
            int status;
            assert_int_equal(waitpid(pid, &status, 0), pid);
            assert_true(WIFSIGNALED(status));
        }
        while (read(p[0], &v, sizeof(v)) == (ssize_t)sizeof(v)) {
            if (v > UINT64_MAX / 2)
                base = n_acked;
            else if (n_acked < 200000)
                acked[n_acked++] = v;
        }
        close(p[0]);

        d = open_store(&e);
        /* Every acknowledged write since the child last removed keys must be there and right. */
        for (size_t i = base; i < n_acked; i++)
            crash_read_check(d, acked[i], 1);
        /* Everything the store lists is served with exactly the bytes that were written. */
        {
            static struct kvt_obj_id ids[4096];
            struct collect cl = {ids, 0, 4096};
            listed = kvt_disk_enumerate(d, collect_cb, &cl);
            assert_int_equal(listed, cl.n);
            for (size_t i = 0; i < cl.n; i++)
                crash_read_check(d, ids[i].key.hi, 1);
        }
        total_acked += n_acked;
        kvt_disk_destroy(d);
    }
    fprintf(stderr, "crash test: %d kills, %llu acknowledged writes checked\n", CRASH_ROUNDS,
            (unsigned long long)total_acked);
    assert_true(total_acked > 0);
    free(acked);
    env_cleanup(&e);
}

/* Every allocation of kvt_disk_create, recovery included, fails in turn: each failure is a clean
 * KVT_E_NOMEM that holds no memory and no lock, and the store then opens with every object. */
static void test_alloc_failures(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    int opened = 0;

    env_init(&e);
    d = open_store(&e);
    for (uint64_t k = 0; k < 20; k++)
        assert_int_equal(write_sync(d, k), 0);
    kvt_disk_destroy(d);
    uint64_t base = kvt_alloc_bytes(KVT_ALLOC_DISK);
    for (uint64_t nth = 1; nth < 1000 && !opened; nth++) {
        d = NULL;
        kvt_alloc_fail_nth(nth);
        int rc = kvt_disk_create(&e.cfg, &d);
        kvt_alloc_fail_nth(0);
        if (rc == 0) {
            opened = 1;
            assert_true(nth > 5); /* the store does allocate, and every one was tried */
            for (uint64_t k = 0; k < 20; k++)
                assert_int_equal(read_check(d, k), (int)obj_len(k));
            kvt_disk_destroy(d);
        } else {
            assert_int_equal(rc, KVT_E_NOMEM);
            assert_null(d);
        }
        assert_int_equal(kvt_alloc_bytes(KVT_ALLOC_DISK), base);
    }
    assert_true(opened);
    env_cleanup(&e);
}

/* SmolLM2-135M geometry: 30 layers, 3 KV heads, head_dim 64, fp16; 768 bytes per token-layer. */
#define SL_LAYERS 30u
#define SL_TOKENS 64u
#define SL_ROW (2u * 3u * 64u * 2u)
#define SL_BYTES (SL_LAYERS * SL_TOKENS * SL_ROW)

static void range_env(struct env *e)
{
    env_init(e);
    e->cfg.object_bytes_max = 2u << 20;
    e->cfg.staging_bytes = 8u << 20;
}

static struct kvt_disk_geom sl_geom(int sparse)
{
    struct kvt_disk_geom g;
    memset(&g, 0, sizeof(g));
    g.g.n_layers = SL_LAYERS;
    g.g.n_kv_heads = 3;
    g.g.head_dim = 64;
    g.g.elem_bytes = 2;
    g.g.start_pos = 128;
    g.sparse = sparse;
    return g;
}

static int write_geom(struct kvt_disk *d, uint64_t k, const unsigned char *src, int sparse)
{
    struct kvt_disk_geom g = sl_geom(sparse);
    struct kvt_obj_id id = obj_id(k);
    struct result r = {0, 0};
    int rc = kvt_disk_write_geom(d, &id, src, SL_BYTES, SL_TOKENS, &g, 2, on_done, &r);
    if (rc)
        return rc;
    wait_for(d, &r);
    return r.res;
}

/* Range read of object k; on success checks the rows against src. */
static int range_check(struct kvt_disk *d, uint64_t k, const unsigned char *src, uint32_t layer,
                       uint32_t t0, uint32_t n)
{
    static unsigned char out[SL_TOKENS * SL_ROW];
    struct kvt_obj_id id = obj_id(k);
    struct result r = {0, 0};
    int rc;

    memset(out, 0xcc, sizeof(out));
    rc = kvt_disk_read_range(d, &id, layer, t0, n, out, sizeof(out), on_done, &r);
    if (rc)
        return rc;
    wait_for(d, &r);
    if (r.res >= 0) {
        assert_int_equal(r.res, (int)(n * SL_ROW));
        assert_memory_equal(out, src + ((size_t)layer * SL_TOKENS + t0) * SL_ROW, n * SL_ROW);
    }
    return r.res;
}

/* File offset of object k's header block (searching the data file for it). */
static off_t find_object(const char *path, uint64_t k, uint64_t file_bytes)
{
    static unsigned char blk[4096];
    struct kvt_obj_id id = obj_id(k);
    int fd = open(path, O_RDONLY);
    off_t found = -1;

    assert_true(fd >= 0);
    for (off_t off = 4096; off < (off_t)file_bytes && found < 0; off += 4096) {
        uint64_t lo = 0, hi = 0;
        assert_int_equal(pread(fd, blk, sizeof(blk), off), (ssize_t)sizeof(blk));
        memcpy(&lo, blk + 24, 8);
        memcpy(&hi, blk + 32, 8);
        if (memcmp(blk, "KVTO", 4) == 0 && lo == id.key.lo && hi == id.key.hi)
            found = off;
    }
    close(fd);
    assert_true(found > 0);
    return found;
}

static void fill_rows(unsigned char *b, size_t len, uint64_t seed)
{
    uint64_t s = mix(seed) | 1;
    for (size_t i = 0; i < len; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        b[i] = (unsigned char)s;
    }
}

/* The test: a 16-token range of one layer of a 64-token chunk reads at most the blocks
 * covering it plus alignment (the bytes_read counter), returns exactly those rows, and is a
 * counted miss (KVT_E_CORRUPT), never wrong bytes, when any byte of its blocks is flipped. */
static void test_range_reads(void **state)
{
    (void)state;
    static unsigned char src[SL_BYTES];
    const uint32_t block = 16u * SL_ROW + 8u; /* a block and its trailer on disk */
    const uint32_t stride = (4u * block + 4095u) / 4096u * 4096u;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats s0, s1;
    struct kvt_obj_id id = obj_id(1);

    fill_rows(src, sizeof(src), 1);
    range_env(&e);
    d = open_store(&e);
    assert_int_equal(write_geom(d, 1, src, 1), 0);
    for (uint32_t layer = 0; layer < SL_LAYERS; layer += 7) {
        for (uint32_t t0 = 0; t0 + 16 <= SL_TOKENS; t0 += 16) {
            kvt_disk_stats(d, &s0);
            assert_int_equal(range_check(d, 1, src, layer, t0, 16), 16 * SL_ROW);
            kvt_disk_stats(d, &s1);
            /* One block of 12,296 bytes spans at most 4 pages. */
            assert_true(s1.bytes_read - s0.bytes_read <= 4u * 4096u);
            assert_true(s1.bytes_read - s0.bytes_read >= 16u * SL_ROW);
            assert_int_equal(s1.range_reads - s0.range_reads, 1);
        }
        /* Unaligned: tokens 5..20 cover blocks 0 and 1: at most their bytes plus alignment. */
        kvt_disk_stats(d, &s0);
        assert_int_equal(range_check(d, 1, src, layer, 5, 16), 16 * SL_ROW);
        assert_int_equal(range_check(d, 1, src, layer, 63, 1), SL_ROW);
        assert_int_equal(range_check(d, 1, src, layer, 0, 64), 64 * SL_ROW);
        kvt_disk_stats(d, &s1);
        assert_true(s1.bytes_read - s0.bytes_read <=
                    (2u * block + 2u * 4096u) + (block + 2u * 4096u) + stride);
    }
    /* Arguments outside the object. */
    {
        unsigned char small[16];
        struct result r = {0, 0};
        assert_int_equal(
            kvt_disk_read_range(d, &id, SL_LAYERS, 0, 16, src, sizeof(src), on_done, &r),
            KVT_E_INVAL);
        assert_int_equal(kvt_disk_read_range(d, &id, 0, 60, 16, src, sizeof(src), on_done, &r),
                         KVT_E_INVAL);
        assert_int_equal(kvt_disk_read_range(d, &id, 0, 0, 16, small, sizeof(small), on_done, &r),
                         KVT_E_SMALLBUF);
        id = obj_id(999);
        assert_int_equal(kvt_disk_read_range(d, &id, 0, 0, 16, src, sizeof(src), on_done, &r),
                         KVT_E_NOTFOUND);
    }
    kvt_disk_destroy(d);

    /* Flip one byte of layer 9's block 2 (tokens 32..47): its first, a middle and its last data
     * byte, and its trailer. Ranges in other blocks still verify (only covering blocks are
     * read and checked); the range over the damaged block is a counted miss and drops the object,
     * which is then written again (first fit puts it back in the same extent). */
    {
        const uint32_t where[] = {0, 6000, 16u * SL_ROW - 1u, 16u * SL_ROW + 3u};
        for (unsigned w = 0; w < sizeof(where) / sizeof(where[0]); w++) {
            off_t obj = find_object(e.path, 1, e.cfg.file_bytes);
            corrupt_file(e.path, obj + 4096 + 9 * stride + 2 * block + where[w]);
            d = open_store(&e);
            assert_int_equal(range_check(d, 1, src, 9, 0, 16), 16 * SL_ROW);
            assert_int_equal(range_check(d, 1, src, 8, 32, 16), 16 * SL_ROW);
            kvt_disk_stats(d, &s0);
            assert_int_equal(range_check(d, 1, src, 9, 32, 16), KVT_E_CORRUPT);
            kvt_disk_stats(d, &s1);
            assert_int_equal(s1.tier.checksum_failures - s0.tier.checksum_failures, 1);
            assert_int_equal(s1.tier.misses - s0.tier.misses, 1);
            id = obj_id(1);
            assert_int_equal(kvt_disk_lookup(d, &id, NULL), KVT_E_NOTFOUND);
            assert_int_equal(range_check(d, 1, src, 9, 32, 16), KVT_E_NOTFOUND);
            assert_int_equal(write_geom(d, 1, src, 1), 0);
            kvt_disk_destroy(d);
        }
    }
    env_cleanup(&e);
}

/* Geometry survives a restart (checkpoint records), whole reads of a blocked object return the
 * canonical layout, a compressible chunk is stored packed and its ranges still come back right,
 * and a geometry that does not describe the bytes is refused. */
static void test_geometry_whole_and_packed(void **state)
{
    (void)state;
    static unsigned char src[SL_BYTES], zeros[SL_BYTES], out[SL_BYTES];
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_obj_info info;
    struct kvt_obj_id id = obj_id(2);
    struct kvt_disk_geom g = sl_geom(0);
    struct result r = {0, 0};

    fill_rows(src, sizeof(src), 2);
    for (size_t i = 0; i < sizeof(zeros); i++)
        zeros[i] = (unsigned char)(i % 7 == 0);
    range_env(&e);
    d = open_store(&e);
    assert_int_equal(write_geom(d, 2, src, 0), 0);   /* noise: lz4 does not pay, blocked */
    assert_int_equal(write_geom(d, 3, zeros, 0), 0); /* compressible: packed */
    assert_int_equal(kvt_disk_lookup(d, &id, &info), 0);
    assert_int_equal(info.codec, KVT_CODEC_RAW);
    id = obj_id(3);
    assert_int_equal(kvt_disk_lookup(d, &id, &info), 0);
    assert_true(info.codec != KVT_CODEC_RAW && info.stored_len < SL_BYTES / 2);
    assert_int_equal(kvt_disk_write_geom(d, &id, src, SL_BYTES - 1, SL_TOKENS, &g, 2, on_done, &r),
                     KVT_E_INVAL);
    kvt_disk_destroy(d);

    d = open_store(&e);
    id = obj_id(2);
    assert_int_equal(kvt_disk_read(d, &id, out, sizeof(out), on_done, &r), 0);
    wait_for(d, &r);
    assert_int_equal(r.res, (int)SL_BYTES);
    assert_memory_equal(out, src, SL_BYTES);
    assert_int_equal(range_check(d, 2, src, 29, 48, 16), 16 * SL_ROW);
    assert_int_equal(range_check(d, 3, zeros, 17, 5, 16), 16 * SL_ROW);
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

/* A store written by a format v1 build is refused at start with a message that says so, and
 * nothing on it is changed. */
static void test_v1_store_refused(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d = NULL;
    unsigned char sb[4096], after[4096];
    uint64_t h;
    int fd;

    env_init(&e);
    d = open_store(&e);
    assert_int_equal(write_sync(d, 1), 0);
    kvt_disk_destroy(d);
    d = NULL;
    fd = open(e.path, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, sb, sizeof(sb), 0), (ssize_t)sizeof(sb));
    sb[4] = 1; /* superblock version 1, resealed */
    h = XXH3_64bits(sb, 32);
    memcpy(sb + 32, &h, 8);
    assert_int_equal(pwrite(fd, sb, sizeof(sb), 0), (ssize_t)sizeof(sb));
    assert_int_equal(kvt_disk_create(&e.cfg, &d), KVT_E_BADCONFIG);
    assert_null(d);
    assert_non_null(strstr(e.err, "format v1"));
    assert_int_equal(pread(fd, after, sizeof(after), 0), (ssize_t)sizeof(after));
    assert_memory_equal(sb, after, sizeof(sb));
    close(fd);
    env_cleanup(&e);
}

/* ---- variants -------------------------------------------------------------------------------- */

#define N_VAR_KEYS 12u

static struct kvt_obj_id var_id(uint64_t k, uint32_t v)
{
    struct kvt_obj_id id = obj_id(k);
    id.variant = v;
    return id;
}

/* Variant v of key k holds the bytes (and length) of object k + v * 1000003: every variant of a
 * key differs from the others. */
static uint64_t var_obj(uint64_t k, uint32_t v)
{
    return k + (uint64_t)v * 1000003u;
}

static int write_var(struct kvt_disk *d, uint64_t k, uint32_t v)
{
    static unsigned char buf[MAX_OBJ];
    struct kvt_obj_id id = var_id(k, v);
    struct result r = {0, 0};
    size_t len = obj_len(var_obj(k, v));
    int rc;

    obj_fill(var_obj(k, v), buf, len);
    rc = kvt_disk_write(d, &id, buf, len, 16, 2, on_done, &r);
    if (rc)
        return rc;
    wait_for(d, &r);
    return r.res;
}

/* Reads variant v of key k and checks that it holds that variant's bytes. */
static int read_var(struct kvt_disk *d, uint64_t k, uint32_t v)
{
    static unsigned char buf[MAX_OBJ], want[MAX_OBJ];
    struct kvt_obj_id id = var_id(k, v);
    struct result r = {0, 0};
    size_t len = obj_len(var_obj(k, v));
    int rc;

    memset(buf, 0xcc, sizeof(buf));
    rc = kvt_disk_read(d, &id, buf, sizeof(buf), on_done, &r);
    if (rc)
        return rc;
    wait_for(d, &r);
    if (r.res >= 0) {
        assert_int_equal(r.res, (int)len);
        obj_fill(var_obj(k, v), want, len);
        assert_memory_equal(buf, want, len);
    }
    return r.res;
}

struct var_count {
    uint32_t per_variant[4];
    uint32_t bad;
};

static int var_enum_cb(void *arg, const struct kvt_disk_obj_info *info)
{
    struct var_count *c = arg;
    if (info->id.variant < 4 &&
        info->raw_len == obj_len(var_obj(info->id.key.hi, info->id.variant)))
        c->per_variant[info->id.variant]++;
    else
        c->bad++;
    return 0;
}

/* Keys 0..N_VAR_KEYS-1 hold variants 0 and 1, keys 0..3 variant 2 too, and variant 1 of the odd
 * keys is removed again. */
static void write_variants(struct kvt_disk *d)
{
    for (uint64_t k = 0; k < N_VAR_KEYS; k++)
        for (uint32_t v = 0; v < (k < 4 ? 3u : 2u); v++)
            if (write_var(d, k, v) != 0)
                _exit(3);
    for (uint64_t k = 1; k < N_VAR_KEYS; k += 2) {
        struct kvt_obj_id id = var_id(k, 1);
        if (kvt_disk_remove(d, &id) != 0)
            _exit(4);
    }
    if (sync_wait(d) != 0)
        _exit(5);
}

/* removals_hold: 0 after a scan that had no sound checkpoint, which may bring removed objects
 * back (with their own variant and bytes: read_var checks them). */
static void check_variants(struct kvt_disk *d, int removals_hold)
{
    struct var_count c;
    struct kvt_disk_obj_info info;
    uint32_t back = 0;

    for (uint64_t k = 0; k < N_VAR_KEYS; k++) {
        int rc = read_var(d, k, 1);
        assert_int_equal(read_var(d, k, 0), (int)obj_len(var_obj(k, 0)));
        if (k % 2 && !removals_hold && rc != KVT_E_NOTFOUND) {
            assert_int_equal(rc, (int)obj_len(var_obj(k, 1)));
            back++;
        } else {
            assert_int_equal(rc, k % 2 ? KVT_E_NOTFOUND : (int)obj_len(var_obj(k, 1)));
        }
        assert_int_equal(read_var(d, k, 2), k < 4 ? (int)obj_len(var_obj(k, 2)) : KVT_E_NOTFOUND);
        struct kvt_obj_id id = var_id(k, 2);
        assert_int_equal(kvt_disk_lookup(d, &id, &info), k < 4 ? 0 : KVT_E_NOTFOUND);
        if (k < 4) {
            assert_int_equal(info.id.variant, 2);
            assert_int_equal(info.id.key.hi, k);
            assert_int_equal(info.raw_len, obj_len(var_obj(k, 2)));
        }
    }
    memset(&c, 0, sizeof(c));
    assert_int_equal(kvt_disk_enumerate(d, var_enum_cb, &c),
                     2 * N_VAR_KEYS - N_VAR_KEYS / 2 + 4 + back);
    assert_int_equal(c.per_variant[0], N_VAR_KEYS);
    assert_int_equal(c.per_variant[1], N_VAR_KEYS / 2 + back);
    assert_int_equal(c.per_variant[2], 4);
    assert_int_equal(c.bad, 0);
}

/* Variants of one key are separate objects in the store: each is read back with its own bytes,
 * looked up and enumerated with its variant, removed alone, and all of that holds after a clean
 * restart, after a crash (journal replay), and after a scan (damaged checkpoint: the variant
 * comes from each object's header; a removed variant may come back, as any removed object can
 * when the checkpoint is lost, but with its own bytes) and the restart that follows it. */
static void test_variants_are_separate_objects(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;
    char ckpt[128];

    env_init(&e);
    e.cfg.checkpoint_records = 100000;
    d = open_store(&e);
    write_variants(d);
    check_variants(d, 1);
    /* Same key, same length, another variant: a new object, not "already stored". */
    {
        static unsigned char b[64];
        struct kvt_obj_id id = var_id(500, 0);
        struct result r = {0, 0};
        assert_int_equal(kvt_disk_write(d, &id, b, sizeof(b), 1, 1, on_done, &r), 0);
        wait_for(d, &r);
        assert_int_equal(kvt_disk_write(d, &id, b, sizeof(b), 1, 1, on_done, &r), KVT_E_EXISTS);
        id.variant = 7;
        r.done = 0;
        assert_int_equal(kvt_disk_write(d, &id, b, sizeof(b), 1, 1, on_done, &r), 0);
        wait_for(d, &r);
        assert_int_equal(r.res, 0);
        assert_int_equal(kvt_disk_remove(d, &id), 0);
        id.variant = 0;
        assert_int_equal(kvt_disk_remove(d, &id), 0);
    }
    kvt_disk_destroy(d);
    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.recovery_dropped, 0);
    check_variants(d, 1);
    kvt_disk_destroy(d);
    env_cleanup(&e);

    /* Crash after the removals were made durable: rebuilt from the journal. */
    env_init(&e);
    e.cfg.checkpoint_records = 100000;
    run_and_abandon(&e, write_variants);
    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.scans, 0);
    assert_int_equal(st.recovery_dropped, 0);
    check_variants(d, 1);
    kvt_disk_destroy(d);

    /* Damaged checkpoint: rebuilt by the scan of the data files. */
    snprintf(ckpt, sizeof(ckpt), "%s/kvtier-disk.ckpt", e.dir);
    flip_byte(ckpt, 64 + REC_BYTES * 3 + 20);
    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.scans, 1);
    assert_int_equal(st.scan_dropped, 0);
    check_variants(d, 0);
    kvt_disk_destroy(d);
    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.scans, 0);
    check_variants(d, 0);
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

static uint64_t get_le_at(const unsigned char *p, unsigned bytes)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < bytes; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void put_le_at(unsigned char *p, uint64_t v, unsigned bytes)
{
    for (unsigned i = 0; i < bytes; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Rewrites count records at p as version 1 records ("KVTJ", resealed), as the build before
 * variants wrote them; they must all be of variant 0. */
static void recs_to_v1(unsigned char *p, size_t count)
{
    for (size_t i = 0; i < count; i++, p += REC_BYTES) {
        assert_int_equal(get_le_at(p, 4), 0x324a564bu); /* "KVJ2" */
        assert_int_equal(get_le_at(p + 60, 4), 0);
        memcpy(p, "KVTJ", 4);
        put_le_at(p + 88, XXH3_64bits(p, 88), 8);
    }
}

/* Returns the file's bytes (malloc'd) and its size. */
static unsigned char *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    off_t size;
    unsigned char *b;

    assert_true(fd >= 0);
    size = lseek(fd, 0, SEEK_END);
    assert_true(size >= 0);
    b = malloc((size_t)size + 1);
    assert_non_null(b);
    assert_int_equal(pread(fd, b, (size_t)size, 0), (ssize_t)size);
    close(fd);
    *len = (size_t)size;
    return b;
}

static void spill(const char *path, const unsigned char *b, size_t len)
{
    int fd = open(path, O_WRONLY | O_TRUNC);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, b, len), (ssize_t)len);
    close(fd);
}

/* Turns the store in e into what the build before variants left: a version 2 checkpoint of
 * version 1 records, version 1 journal records, and every object header in format v2. Returns
 * how many object headers were rewritten. */
static unsigned store_to_pre_variant(struct env *e)
{
    char path[128];
    unsigned char *b, blk[4096];
    size_t len;
    unsigned n_obj = 0;
    int fd;

    snprintf(path, sizeof(path), "%s/kvtier-disk.ckpt", e->dir);
    b = slurp(path, &len);
    assert_int_equal(get_le_at(b + 4, 4), 3);
    assert_int_equal((len - 64) % REC_BYTES, 0);
    recs_to_v1(b + 64, (len - 64) / REC_BYTES);
    put_le_at(b + 4, 2, 4);
    put_le_at(b + 40, XXH3_64bits(b + 64, len - 64), 8);
    put_le_at(b + 56, XXH3_64bits(b, 56), 8);
    spill(path, b, len);
    free(b);
    for (int j = 0; j < 2; j++) {
        snprintf(path, sizeof(path), j ? "%s/kvtier-disk.journal.1" : "%s/kvtier-disk.journal",
                 e->dir);
        b = slurp(path, &len);
        recs_to_v1(b, len / REC_BYTES);
        spill(path, b, len);
        free(b);
    }
    fd = open(e->path, O_RDWR);
    assert_true(fd >= 0);
    for (off_t off = 4096; off < (off_t)e->cfg.file_bytes; off += 4096) {
        assert_int_equal(pread(fd, blk, sizeof(blk), off), (ssize_t)sizeof(blk));
        if (memcmp(blk, "KVTO", 4) != 0 || get_le_at(blk + 4, 2) != 4 ||
            get_le_at(blk + 128, 8) != XXH3_64bits(blk, 128))
            continue;
        assert_int_equal(get_le_at(blk + 120, 4), 0);
        assert_int_equal(get_le_at(blk + 124, 4), 0); /* no metadata section */
        put_le_at(blk + 4, 2, 2);
        memset(blk + 120, 0, 16);
        put_le_at(blk + 120, XXH3_64bits(blk, 120), 8);
        put_le_at(blk + 4088, XXH3_64bits(blk, 4088), 8);
        assert_int_equal(pwrite(fd, blk, sizeof(blk), off), (ssize_t)sizeof(blk));
        n_obj++;
    }
    close(fd);
    return n_obj;
}

static void write_20_to_30(struct kvt_disk *d)
{
    for (uint64_t k = 20; k < 30; k++)
        if (write_sync(d, k) != 0)
            _exit(3);
}

static unsigned count_v2_headers(const struct env *e)
{
    unsigned char blk[4096];
    unsigned n = 0;
    int fd = open(e->path, O_RDONLY);

    assert_true(fd >= 0);
    for (off_t off = 4096; off < (off_t)e->cfg.file_bytes; off += 4096) {
        assert_int_equal(pread(fd, blk, sizeof(blk), off), (ssize_t)sizeof(blk));
        n += memcmp(blk, "KVTO", 4) == 0 && get_le_at(blk + 4, 2) == 2;
    }
    close(fd);
    return n;
}

/* A store the build before variants left (checkpoint version 2 and journal records version 1,
 * objects in format v2) is upgraded in place at start: every object comes back as variant 0
 * without a scan, the checkpoint is rewritten in the current version and the journals emptied,
 * the v2 objects stay where they are and keep being served, and new variants of their keys are
 * stored beside them; a later scan reads both object formats. */
static void test_pre_variant_store_upgraded(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;
    struct kvt_disk_obj_info info;
    struct kvt_obj_id id;
    char path[128];
    unsigned char *b;
    size_t len;

    env_init(&e);
    e.cfg.checkpoint_records = 100000;
    d = open_store(&e);
    for (uint64_t k = 0; k < 20; k++)
        assert_int_equal(write_sync(d, k), 0);
    kvt_disk_destroy(d);
    /* 20 objects in the checkpoint, 10 in the journal only. */
    run_and_abandon(&e, write_20_to_30);
    assert_int_equal(store_to_pre_variant(&e), 30);

    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.scans, 0);
    assert_int_equal(st.recovery_dropped, 0);
    assert_int_equal(st.recovered_objects, 30);
    for (uint64_t k = 0; k < 30; k++) {
        assert_int_equal(read_check(d, k), (int)obj_len(k));
        id = obj_id(k);
        assert_int_equal(kvt_disk_lookup(d, &id, &info), 0);
        assert_int_equal(info.id.variant, 0);
    }
    /* Upgraded: the checkpoint is version 3 with version 2 records, the journals are empty. */
    snprintf(path, sizeof(path), "%s/kvtier-disk.ckpt", e.dir);
    b = slurp(path, &len);
    assert_int_equal(get_le_at(b + 4, 4), 3);
    assert_int_equal(len, 64 + 30 * REC_BYTES);
    for (size_t i = 0; i < 30; i++)
        assert_memory_equal(b + 64 + i * REC_BYTES, "KVJ2", 4);
    free(b);
    snprintf(path, sizeof(path), "%s/kvtier-disk.journal", e.dir);
    b = slurp(path, &len);
    assert_int_equal(len, 0);
    free(b);
    assert_int_equal(count_v2_headers(&e), 30);
    /* New variants beside the old objects. */
    assert_int_equal(write_var(d, 3, 1), 0);
    assert_int_equal(write_var(d, 25, 1), 0);
    assert_int_equal(read_check(d, 3), (int)obj_len(3));
    assert_int_equal(read_var(d, 3, 1), (int)obj_len(var_obj(3, 1)));
    kvt_disk_destroy(d);

    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.recovered_objects, 32);
    kvt_disk_destroy(d);
    snprintf(path, sizeof(path), "%s/kvtier-disk.ckpt", e.dir);
    flip_byte(path, 10);
    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.scans, 1);
    assert_int_equal(st.recovered_by_scan, 32);
    assert_int_equal(st.scan_dropped, 0);
    for (uint64_t k = 0; k < 30; k++)
        assert_int_equal(read_check(d, k), (int)obj_len(k));
    assert_int_equal(read_var(d, 3, 1), (int)obj_len(var_obj(3, 1)));
    assert_int_equal(read_var(d, 25, 1), (int)obj_len(var_obj(25, 1)));
    assert_int_equal(read_var(d, 4, 1), KVT_E_NOTFOUND);
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

/* Object 1 is removed while the commit that makes the journal reach checkpoint_records is in
 * flight, so its tombstone is staged when that commit's checkpoint switches journals and is
 * re-sealed with the new generation; two more writes follow it in the new journal. */
static void remove_across_checkpoint_switch(struct kvt_disk *d)
{
    static unsigned char buf[MAX_OBJ];
    struct kvt_disk_stats st;
    struct kvt_obj_id id = obj_id(3);
    struct result r = {0, 0};
    uint64_t commits;

    for (uint64_t k = 0; k < 3; k++)
        if (write_sync(d, k) != 0)
            _exit(3);
    obj_fill(3, buf, obj_len(3));
    if (kvt_disk_write(d, &id, buf, obj_len(3), 16, 2, on_done, &r) != 0)
        _exit(4);
    kvt_disk_stats(d, &st);
    commits = st.commits;
    /* A poll that starts a commit cannot also reap it: the commit is in flight on return. */
    for (int i = 0; i < 10000 && st.commits == commits; i++) {
        kvt_disk_wait(d, 10);
        kvt_disk_stats(d, &st);
    }
    if (st.commits != commits + 1 || r.done)
        _exit(5);
    id = obj_id(1);
    if (kvt_disk_remove(d, &id) != 0)
        _exit(6);
    wait_for(d, &r);
    if (r.res != 0 || sync_wait(d) != 0)
        _exit(7);
    for (uint64_t k = 4; k < 6; k++)
        if (write_sync(d, k) != 0)
            _exit(8);
    /* The checkpoint thread has put the new checkpoint in place (and emptied the old journal),
     * so the new journal is all that holds the tombstone. */
    kvt_disk_stats(d, &st);
    for (int i = 0; i < 10000 && st.checkpoints < 2; i++) {
        kvt_disk_wait(d, 10);
        kvt_disk_stats(d, &st);
    }
    if (st.checkpoints != 2)
        _exit(9);
}

/* A tombstone re-sealed at a journal switch keeps a sound check: after a crash the journal is
 * read without damage (no scan) and the removed object stays removed. */
static void test_tombstone_staged_across_checkpoint_switch(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;

    env_init(&e);
    e.cfg.checkpoint_records = 4;
    run_and_abandon(&e, remove_across_checkpoint_switch);
    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.scans, 0);
    assert_int_equal(st.recovery_dropped, 0);
    assert_int_equal(st.recovered_objects, 5);
    for (uint64_t k = 0; k < 6; k++)
        assert_int_equal(read_check(d, k), k == 1 ? KVT_E_NOTFOUND : (int)obj_len(k));
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

/* ---- metadata sections ------------------------------------------------------------------- */

/* Object k's metadata: MD_LEN(k) bytes that are a function of k. */
#define MD_LEN(k) (100u + (uint32_t)((k)*977u % 9000u))

static void md_fill(void *ctx, void *dst, size_t len)
{
    uint64_t k = *(const uint64_t *)ctx;
    unsigned char *p = dst;
    for (size_t i = 0; i < len; i++)
        p[i] = (unsigned char)(mix(k * 131 + i) >> 7);
}

static struct kvt_codec *md_codec(void)
{
    static struct kvt_codec *c;
    struct kvt_codec_config cfg;
    if (!c) {
        kvt_codec_config_init(&cfg);
        cfg.input_bytes_max = 2u << 20;
        assert_int_equal(kvt_codec_create(&cfg, &c), 0);
    }
    return c;
}

/* Writes object k (its obj_fill bytes, or len bytes of src with the SL geometry) with meta_len
 * bytes of metadata through the two-phase write, and waits until it is durable. */
static int write_meta(struct kvt_disk *d, uint64_t k, const unsigned char *src, size_t len,
                      uint32_t meta_len)
{
    static unsigned char buf[MAX_OBJ];
    struct kvt_disk_geom g = sl_geom(1);
    struct kvt_obj_id id = obj_id(k);
    struct kvt_disk_wslot ws;
    struct result r = {0, 0};
    int rc;

    if (!src) {
        len = obj_len(k);
        obj_fill(k, buf, len);
    }
    rc = kvt_disk_write_reserve_meta(d, &id, len, src ? SL_TOKENS : 16, src ? &g : NULL, meta_len,
                                     &ws);
    if (rc)
        return rc;
    ws.meta_write = md_fill;
    ws.meta_ctx = &k;
    rc = kvt_disk_encode(md_codec(), &ws, src ? src : buf, 2);
    if (rc) {
        kvt_disk_write_cancel(d, &ws);
        return rc;
    }
    rc = kvt_disk_write_submit(d, &ws, on_done, &r);
    if (rc)
        return rc;
    wait_for(d, &r);
    return r.res;
}

static void write_20_to_30_meta(struct kvt_disk *d);

/* Reads object k's metadata alone; on success checks it is MD_LEN(k) bytes of md_fill. */
static int read_meta_check(struct kvt_disk *d, uint64_t k)
{
    static unsigned char got[16384], want[16384];
    struct kvt_obj_id id = obj_id(k);
    struct result r = {0, 0};
    int rc = kvt_disk_read_meta(d, &id, got, sizeof(got), on_done, &r);
    if (rc)
        return rc;
    assert_int_equal(r.done, 0); /* never inside the call */
    wait_for(d, &r);
    if (r.res >= 0) {
        assert_int_equal(r.res, (int)MD_LEN(k));
        md_fill(&k, want, MD_LEN(k));
        assert_memory_equal(got, want, MD_LEN(k));
    }
    return r.res;
}

/* Objects written with metadata: it is read back alone (counted apart from object reads, which
 * never read it), across a clean restart, a crash (journal) and a scan; whole reads, lending
 * reads and range reads of the same objects are unchanged, packed and blocked alike. */
static void test_metadata_written_and_read_alone(void **state)
{
    (void)state;
    static unsigned char rows[SL_BYTES];
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st, st0;
    struct kvt_disk_obj_info info;
    struct kvt_obj_id id;
    char ckpt[128];

    range_env(&e);
    e.cfg.checkpoint_records = 100000;
    d = open_store(&e);
    for (uint64_t k = 0; k < 20; k++)
        assert_int_equal(write_meta(d, k, NULL, 0, MD_LEN(k)), 0);
    fill_rows(rows, SL_BYTES, 99);
    assert_int_equal(write_meta(d, 100, rows, SL_BYTES, MD_LEN(100)), 0);
    assert_int_equal(write_sync(d, 50), 0); /* one without metadata */
    kvt_disk_stats(d, &st);
    assert_int_equal(st.meta_writes, 21);
    assert_true(st.compressed_objects > 0 && st.compressed_objects < 21);

    kvt_disk_stats(d, &st0);
    for (uint64_t k = 0; k < 20; k++)
        assert_int_equal(read_meta_check(d, k), (int)MD_LEN(k));
    assert_int_equal(read_meta_check(d, 100), (int)MD_LEN(100));
    kvt_disk_stats(d, &st);
    assert_int_equal(st.meta_reads - st0.meta_reads, 21);
    assert_int_equal(st.reads, st0.reads);
    assert_int_equal(st.bytes_read, st0.bytes_read);
    assert_int_equal(st.range_reads, st0.range_reads);
    assert_int_equal(st.tier.hits, st0.tier.hits);
    uint64_t per = 0;
    for (uint64_t k = 0; k < 20; k++)
        per += (KVT_OBJECT_SECTION_HEAD_BYTES + MD_LEN(k) + 4095) / 4096 * 4096;
    per += (KVT_OBJECT_SECTION_HEAD_BYTES + MD_LEN(100) + 4095) / 4096 * 4096;
    assert_int_equal(st.meta_bytes_read - st0.meta_bytes_read, per);

    /* An object without metadata has none to read; one that is not stored neither. */
    assert_int_equal(read_meta_check(d, 50), KVT_E_NOTFOUND);
    assert_int_equal(read_meta_check(d, 999), KVT_E_NOTFOUND);
    id = obj_id(3);
    assert_int_equal(kvt_disk_lookup(d, &id, &info), 0);
    assert_true(info.meta_bytes_max >= MD_LEN(3) && info.meta_bytes_max < MD_LEN(3) + 4096);
    unsigned char small[64];
    struct result r = {0, 0};
    assert_int_equal(kvt_disk_read_meta(d, &id, small, sizeof(small), on_done, &r), KVT_E_SMALLBUF);
    id = obj_id(50);
    assert_int_equal(kvt_disk_lookup(d, &id, &info), 0);
    assert_int_equal(info.meta_bytes_max, 0);

    /* Whole reads read the header and the body, never the section. */
    kvt_disk_stats(d, &st0);
    for (uint64_t k = 0; k < 20; k++)
        assert_int_equal(read_check(d, k), (int)obj_len(k));
    kvt_disk_stats(d, &st);
    uint64_t body = 0;
    for (uint64_t k = 0; k < 20; k++) {
        id = obj_id(k);
        assert_int_equal(kvt_disk_lookup(d, &id, &info), 0);
        body += (4096 + info.stored_len + 4095) / 4096 * 4096;
    }
    assert_int_equal(st.bytes_read - st0.bytes_read, body);
    assert_int_equal(range_check(d, 100, rows, 7, 16, 16), 16 * SL_ROW);
    kvt_disk_destroy(d);

    /* A clean restart (checkpoint), then a crash with objects in the journal only. */
    d = open_store(&e);
    for (uint64_t k = 0; k < 20; k++)
        assert_int_equal(read_meta_check(d, k), (int)MD_LEN(k));
    kvt_disk_destroy(d);
    run_and_abandon(&e, write_20_to_30_meta);
    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.recovery_dropped, 0);
    for (uint64_t k = 0; k < 30; k++) {
        assert_int_equal(read_meta_check(d, k), (int)MD_LEN(k));
        assert_int_equal(read_check(d, k), (int)obj_len(k));
    }
    kvt_disk_destroy(d);

    /* A scan (damaged checkpoint) finds every object, with its section. */
    snprintf(ckpt, sizeof(ckpt), "%s/kvtier-disk.ckpt", e.dir);
    flip_byte(ckpt, 10);
    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.scans, 1);
    assert_int_equal(st.scan_dropped, 0);
    assert_int_equal(st.recovered_by_scan, 32);
    for (uint64_t k = 0; k < 30; k++) {
        assert_int_equal(read_meta_check(d, k), (int)MD_LEN(k));
        assert_int_equal(read_check(d, k), (int)obj_len(k));
    }
    assert_int_equal(read_meta_check(d, 100), (int)MD_LEN(100));
    assert_int_equal(range_check(d, 100, rows, 29, 0, 64), 64 * SL_ROW);
    assert_int_equal(read_meta_check(d, 50), KVT_E_NOTFOUND);
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

static void write_20_to_30_meta(struct kvt_disk *d)
{
    for (uint64_t k = 20; k < 30; k++)
        assert_int_equal(write_meta(d, k, NULL, 0, MD_LEN(k)), 0);
}

/* A flipped byte in an object's section is a counted failure of its metadata read; the object
 * keeps being served, and a scan keeps it too. */
static void test_corrupt_metadata_keeps_object(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;
    struct kvt_disk_obj_info info;
    struct kvt_obj_id id = obj_id(7);
    char ckpt[128];

    env_init(&e);
    d = open_store(&e);
    for (uint64_t k = 0; k < 10; k++)
        assert_int_equal(write_meta(d, k, NULL, 0, MD_LEN(k)), 0);
    assert_int_equal(kvt_disk_lookup(d, &id, &info), 0);
    kvt_disk_destroy(d);
    off_t sec = (off_t)(info.offset_bytes + (4096 + info.stored_len + 4095) / 4096 * 4096);
    flip_byte(e.path, sec + KVT_OBJECT_SECTION_HEAD_BYTES + 33);

    d = open_store(&e);
    assert_int_equal(read_meta_check(d, 7), KVT_E_CORRUPT);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.meta_checksum_failures, 1);
    assert_int_equal(st.tier.checksum_failures, 0);
    assert_int_equal(read_check(d, 7), (int)obj_len(7));
    assert_int_equal(read_meta_check(d, 6), (int)MD_LEN(6));
    kvt_disk_destroy(d);
    /* The section's head too, and through a scan. */
    flip_byte(e.path, sec + 41);
    snprintf(ckpt, sizeof(ckpt), "%s/kvtier-disk.ckpt", e.dir);
    flip_byte(ckpt, 10);
    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.scans, 1);
    assert_int_equal(st.recovered_by_scan, 10);
    assert_int_equal(read_meta_check(d, 7), KVT_E_CORRUPT);
    assert_int_equal(read_check(d, 7), (int)obj_len(7));
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

/* Metadata that would make an object too big for the staging area is left out (counted), never
 * the object; metadata past the format's bound, or a reservation with metadata and no writer, is
 * refused. */
static void test_metadata_that_does_not_fit(void **state)
{
    (void)state;
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;
    struct kvt_disk_wslot ws;
    struct kvt_obj_id id = obj_id(1);
    static unsigned char buf[MAX_OBJ];

    env_init(&e);
    e.cfg.staging_bytes = 2u * MAX_OBJ;
    d = open_store(&e);
    assert_int_equal(write_meta(d, 1, NULL, 0, (uint32_t)MAX_OBJ + 100000u), 0);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.meta_skipped, 1);
    assert_int_equal(st.meta_writes, 0);
    assert_int_equal(read_check(d, 1), (int)obj_len(1));
    assert_int_equal(read_meta_check(d, 1), KVT_E_NOTFOUND);
    id = obj_id(2);
    assert_int_equal(
        kvt_disk_write_reserve_meta(d, &id, 100, 1, NULL, KVT_OBJECT_SECTION_BYTES_MAX + 1u, &ws),
        KVT_E_INVAL);
    assert_int_equal(kvt_disk_write_reserve_meta(d, &id, 100, 1, NULL, 10, &ws), 0);
    assert_int_equal(kvt_disk_encode(md_codec(), &ws, buf, 2), KVT_E_INVAL);
    kvt_disk_write_cancel(d, &ws);
    assert_int_equal(kvt_disk_inflight(d), 0);
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

/* Rewrites every v4 object header without a section in e's data file as the v3 build wrote it;
 * returns how many. */
static unsigned store_to_v3(struct env *e)
{
    unsigned char blk[4096];
    unsigned n = 0;
    int fd = open(e->path, O_RDWR);

    assert_true(fd >= 0);
    for (off_t off = 4096; off < (off_t)e->cfg.file_bytes; off += 4096) {
        assert_int_equal(pread(fd, blk, sizeof(blk), off), (ssize_t)sizeof(blk));
        if (memcmp(blk, "KVTO", 4) != 0 || get_le_at(blk + 4, 2) != 4 ||
            get_le_at(blk + 128, 8) != XXH3_64bits(blk, 128) || get_le_at(blk + 124, 4) != 0)
            continue;
        put_le_at(blk + 4, 3, 2);
        put_le_at(blk + 128, XXH3_64bits(blk, 128), 8);
        put_le_at(blk + 4088, XXH3_64bits(blk, 4088), 8);
        assert_int_equal(pwrite(fd, blk, sizeof(blk), off), (ssize_t)sizeof(blk));
        n++;
    }
    close(fd);
    return n;
}

/* Objects the v3 build wrote are read as before (whole, by range, by a scan) and have no
 * metadata; objects written since carry theirs beside them. */
static void test_v3_objects_still_read(void **state)
{
    (void)state;
    static unsigned char rows[SL_BYTES];
    struct env e;
    struct kvt_disk *d;
    struct kvt_disk_stats st;
    char ckpt[128];

    range_env(&e);
    d = open_store(&e);
    for (uint64_t k = 0; k < 12; k++)
        assert_int_equal(write_sync(d, k), 0);
    fill_rows(rows, SL_BYTES, 5);
    assert_int_equal(write_geom(d, 100, rows, 1), 0);
    kvt_disk_destroy(d);
    assert_int_equal(store_to_v3(&e), 13);

    d = open_store(&e);
    for (uint64_t k = 0; k < 12; k++) {
        assert_int_equal(read_check(d, k), (int)obj_len(k));
        assert_int_equal(read_meta_check(d, k), KVT_E_NOTFOUND);
    }
    assert_int_equal(range_check(d, 100, rows, 3, 20, 30), 30 * SL_ROW);
    assert_int_equal(write_meta(d, 20, NULL, 0, MD_LEN(20)), 0);
    kvt_disk_destroy(d);
    snprintf(ckpt, sizeof(ckpt), "%s/kvtier-disk.ckpt", e.dir);
    flip_byte(ckpt, 10);
    d = open_store(&e);
    kvt_disk_stats(d, &st);
    assert_int_equal(st.scans, 1);
    assert_int_equal(st.recovered_by_scan, 14);
    assert_int_equal(st.scan_dropped, 0);
    for (uint64_t k = 0; k < 12; k++)
        assert_int_equal(read_check(d, k), (int)obj_len(k));
    assert_int_equal(range_check(d, 100, rows, 3, 20, 30), 30 * SL_ROW);
    assert_int_equal(read_meta_check(d, 20), (int)MD_LEN(20));
    kvt_disk_destroy(d);
    env_cleanup(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_read),
        cmocka_unit_test(test_batched_writes),
        cmocka_unit_test(test_two_phase_write_on_worker),
        cmocka_unit_test(test_lending_read_on_worker),
        cmocka_unit_test(test_restart),
        cmocka_unit_test(test_two_files_and_identity),
        cmocka_unit_test(test_corruption_is_a_miss),
        cmocka_unit_test(test_injected_eio),
        cmocka_unit_test(test_enospc_and_full),
        cmocka_unit_test(test_latch_after_repeated_errors),
        cmocka_unit_test(test_odirect_policy),
        cmocka_unit_test(test_owner_lock),
        cmocka_unit_test(test_torn_journal_tail),
        cmocka_unit_test(test_unwritten_extent_dropped),
        cmocka_unit_test(test_remove_and_reuse_across_crash),
        cmocka_unit_test(test_scan_after_damaged_checkpoint),
        cmocka_unit_test(test_scan_after_damaged_journal),
        cmocka_unit_test(test_scan_drops_corrupt_object),
        cmocka_unit_test(test_sync_barrier),
        cmocka_unit_test(test_checkpoints_off_loop),
        cmocka_unit_test(test_crash_recovery),
        cmocka_unit_test(test_alloc_failures),
        cmocka_unit_test(test_range_reads),
        cmocka_unit_test(test_geometry_whole_and_packed),
        cmocka_unit_test(test_v1_store_refused),
        cmocka_unit_test(test_variants_are_separate_objects),
        cmocka_unit_test(test_pre_variant_store_upgraded),
        cmocka_unit_test(test_tombstone_staged_across_checkpoint_switch),
        cmocka_unit_test(test_metadata_written_and_read_alone),
        cmocka_unit_test(test_corrupt_metadata_keeps_object),
        cmocka_unit_test(test_metadata_that_does_not_fit),
        cmocka_unit_test(test_v3_objects_still_read),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
