/*
 * The test tier (test_tier.h). Objects live in a fixed table with a checksum each; operations
 * wait in a FIFO of fixed size and complete in order when the tier is waited on or its eventfd
 * fires. Writes are visible only once their commit completed; a removal is durable at once, so a
 * barrier completes with the next completion round.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <xxhash.h>

#include "common/loop.h"
#include "kvtier/errors.h"
#include "tests/lib/test_tier.h"

#define PENDING_MAX 256

enum { OBJ_FREE = 0, OBJ_RESERVED, OBJ_READY };

struct tobj {
    struct kvt_obj_id id;
    uint8_t state;
    uint64_t len;
    uint64_t sum;
    uint8_t *bytes;
    uint32_t meta_len; /* metadata stored beside the object, with its own checksum */
    uint64_t meta_sum;
    uint8_t *meta;
};

struct pending {
    kvt_tier_done_fn done;
    void *arg;
    int res;
    struct tobj *commit; /* a commit to make visible when it succeeds */
};

struct kvt_test_tier {
    struct tobj *o;
    uint32_t n;
    uint64_t max_bytes;
    struct pending q[PENDING_MAX];
    uint32_t q_head, q_n;
    uint32_t fail_skip, fail_n;
    int fail_err;
    int hold;
    uint64_t completed;
    int efd;
    struct kvt_watch watch;
    int attached;
    struct kvt_tier_stats st;
};

struct twrite {
    struct kvt_test_tier *t;
    struct tobj *o;
    kvt_tier_meta_fn meta_write;
    void *meta_ctx;
};

int kvt_test_tier_create(uint32_t objects_max, uint64_t object_bytes_max,
                         struct kvt_test_tier **out)
{
    struct kvt_test_tier *t = calloc(1, sizeof(*t));
    if (!t)
        return KVT_E_NOMEM;
    t->o = calloc(objects_max, sizeof(*t->o));
    t->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!t->o || t->efd < 0) {
        kvt_test_tier_destroy(t);
        return KVT_E_NOMEM;
    }
    t->n = objects_max;
    t->max_bytes = object_bytes_max;
    t->st.bytes_capacity = (uint64_t)objects_max * object_bytes_max;
    *out = t;
    return 0;
}

static int run_pending(struct kvt_test_tier *t);

void kvt_test_tier_destroy(struct kvt_test_tier *t)
{
    if (!t)
        return;
    t->hold = 0;
    while (t->q_n)
        run_pending(t);
    for (uint32_t i = 0; t->o && i < t->n; i++) {
        free(t->o[i].bytes);
        free(t->o[i].meta);
    }
    free(t->o);
    if (t->efd >= 0)
        close(t->efd);
    free(t);
}

void kvt_test_tier_fail_next(struct kvt_test_tier *t, uint32_t n, int err)
{
    kvt_test_tier_fail_after(t, 0, n, err);
}

void kvt_test_tier_fail_after(struct kvt_test_tier *t, uint32_t skip, uint32_t n, int err)
{
    t->fail_skip = skip;
    t->fail_n = n;
    t->fail_err = err;
}

void kvt_test_tier_hold(struct kvt_test_tier *t, int hold)
{
    t->hold = hold;
    if (!hold && t->q_n) {
        uint64_t one = 1;
        (void)!write(t->efd, &one, sizeof(one));
    }
}

uint64_t kvt_test_tier_completed(const struct kvt_test_tier *t)
{
    return t->completed;
}

static struct tobj *find(struct kvt_test_tier *t, const struct kvt_obj_id *id)
{
    for (uint32_t i = 0; i < t->n; i++)
        if (t->o[i].state == OBJ_READY && kvt_obj_id_eq(&t->o[i].id, id))
            return &t->o[i];
    return NULL;
}

int kvt_test_tier_corrupt(struct kvt_test_tier *t, const struct kvt_obj_id *id)
{
    struct tobj *o = find(t, id);
    if (!o || !o->len)
        return KVT_E_NOTFOUND;
    o->bytes[o->len / 2] ^= 0x40;
    return 0;
}

int kvt_test_tier_corrupt_meta(struct kvt_test_tier *t, const struct kvt_obj_id *id)
{
    struct tobj *o = find(t, id);
    if (!o || !o->meta_len)
        return KVT_E_NOTFOUND;
    o->meta[o->meta_len / 2] ^= 0x40;
    return 0;
}

static int queue(struct kvt_test_tier *t, kvt_tier_done_fn done, void *arg, int res,
                 struct tobj *commit)
{
    if (t->q_n == PENDING_MAX)
        return KVT_E_BUSY;
    struct pending *p = &t->q[(t->q_head + t->q_n++) % PENDING_MAX];
    *p = (struct pending){.done = done, .arg = arg, .res = res, .commit = commit};
    uint64_t one = 1;
    if (!t->hold)
        (void)!write(t->efd, &one, sizeof(one));
    return KVT_TIER_LATER;
}

static void drop(struct kvt_test_tier *t, struct tobj *o)
{
    if (o->state == OBJ_READY) {
        t->st.objects--;
        t->st.bytes_used -= o->len;
        t->st.bytes_payload -= o->len;
    }
    free(o->bytes);
    free(o->meta);
    memset(o, 0, sizeof(*o));
}

/* Completes what is queued now (not what its callbacks queue). */
static int run_pending(struct kvt_test_tier *t)
{
    if (t->hold)
        return 0;
    uint64_t v;
    (void)!read(t->efd, &v, sizeof(v));
    uint32_t n = t->q_n, ran = 0;
    for (; ran < n; ran++) {
        struct pending p = t->q[t->q_head];
        t->q_head = (t->q_head + 1) % PENDING_MAX;
        t->q_n--;
        if (t->fail_skip && p.res >= 0) {
            t->fail_skip--;
        } else if (t->fail_n && p.res >= 0) {
            t->fail_n--;
            p.res = t->fail_err;
            t->st.io_errors++;
        }
        if (p.commit) {
            if (p.res == 0) {
                p.commit->state = OBJ_READY;
                t->st.objects++;
                t->st.bytes_used += p.commit->len;
                t->st.bytes_payload += p.commit->len;
            } else {
                drop(t, p.commit);
            }
        }
        t->completed++;
        p.done(p.arg, p.res);
    }
    return (int)ran;
}

static int tt_reserve(void *tier, const struct kvt_tier_obj *obj, struct kvt_tier_write *w)
{
    struct kvt_test_tier *t = tier;
    if (obj->length > t->max_bytes)
        return KVT_E_TOOBIG;
    if (find(t, &obj->id))
        return KVT_E_EXISTS;
    for (uint32_t i = 0; i < t->n; i++) {
        struct tobj *o = &t->o[i];
        if (o->state != OBJ_FREE)
            continue;
        o->bytes = malloc(obj->length ? obj->length : 1);
        uint32_t meta_len = obj->meta_write ? obj->meta_len : 0;
        o->meta = meta_len ? malloc(meta_len) : NULL;
        if (!o->bytes || (meta_len && !o->meta)) {
            free(o->bytes);
            free(o->meta);
            memset(o, 0, sizeof(*o));
            return KVT_E_NOMEM;
        }
        o->state = OBJ_RESERVED;
        o->id = obj->id;
        o->len = obj->length;
        o->meta_len = meta_len;
        struct twrite *tw = (struct twrite *)w->priv.bytes;
        tw->t = t;
        tw->o = o;
        tw->meta_write = obj->meta_write;
        tw->meta_ctx = obj->meta_ctx;
        w->loc = i;
        w->length = obj->length;
        return 0;
    }
    return KVT_E_FULL;
}

static int tt_fill(struct kvt_tier_write *w, const void *src)
{
    struct twrite *tw = (struct twrite *)w->priv.bytes;
    memcpy(tw->o->bytes, src, w->length);
    tw->o->sum = XXH3_64bits(src, w->length);
    if (tw->o->meta_len) {
        tw->meta_write(tw->meta_ctx, tw->o->meta, tw->o->meta_len);
        tw->o->meta_sum = XXH3_64bits(tw->o->meta, tw->o->meta_len);
    }
    return 0;
}

static int tt_commit(void *tier, struct kvt_tier_write *w, kvt_tier_done_fn done, void *arg)
{
    struct twrite *tw = (struct twrite *)w->priv.bytes;
    return queue(tier, done, arg, 0, tw->o);
}

static void tt_cancel(void *tier, struct kvt_tier_write *w)
{
    drop(tier, ((struct twrite *)w->priv.bytes)->o);
}

static int read_common(struct kvt_test_tier *t, const struct kvt_obj_id *id, uint64_t at,
                       uint64_t bytes, void *dst, size_t cap, kvt_tier_done_fn done, void *arg)
{
    struct tobj *o = find(t, id);
    if (!o) {
        t->st.misses++;
        return KVT_E_NOTFOUND;
    }
    if (at + bytes > o->len)
        return KVT_E_INVAL;
    if (bytes > cap)
        return KVT_E_SMALLBUF;
    if (XXH3_64bits(o->bytes, o->len) != o->sum) {
        /* Reported at completion, as a real tier finds it after the I/O. */
        t->st.checksum_failures++;
        t->st.misses++;
        drop(t, o);
        return queue(t, done, arg, KVT_E_CORRUPT, NULL);
    }
    memcpy(dst, o->bytes + at, bytes);
    t->st.hits++;
    return queue(t, done, arg, (int)bytes, NULL);
}

static int tt_read(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc, void *dst, size_t cap,
                   kvt_tier_done_fn done, void *arg)
{
    struct kvt_test_tier *t = tier;
    (void)loc;
    struct tobj *o = find(t, id);
    return read_common(t, id, 0, o ? o->len : 0, dst, cap, done, arg);
}

static int tt_read_range(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc,
                         const struct kvt_tier_range *r, void *dst, size_t cap,
                         kvt_tier_done_fn done, void *arg)
{
    (void)loc;
    if (!r->n || !r->row_bytes || (uint64_t)r->first + r->n > r->n_tokens)
        return KVT_E_INVAL;
    uint64_t at = ((uint64_t)r->layer * r->n_tokens + r->first) * r->row_bytes;
    return read_common(tier, id, at, (uint64_t)r->n * r->row_bytes, dst, cap, done, arg);
}

static int tt_read_meta(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc, void *dst,
                        size_t cap, kvt_tier_done_fn done, void *arg)
{
    struct kvt_test_tier *t = tier;
    (void)loc;
    struct tobj *o = find(t, id);
    if (!o || !o->meta_len)
        return KVT_E_NOTFOUND;
    if (cap < o->meta_len)
        return KVT_E_SMALLBUF;
    /* Metadata that fails its checksum is reported; the object keeps its bytes. */
    if (XXH3_64bits(o->meta, o->meta_len) != o->meta_sum)
        return queue(t, done, arg, KVT_E_CORRUPT, NULL);
    memcpy(dst, o->meta, o->meta_len);
    return queue(t, done, arg, (int)o->meta_len, NULL);
}

static int tt_remove(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc)
{
    struct kvt_test_tier *t = tier;
    (void)loc;
    struct tobj *o = find(t, id);
    if (!o)
        return KVT_E_NOTFOUND;
    drop(t, o);
    t->st.evictions++;
    return 0;
}

static void tt_sync_done(void *arg, int res)
{
    struct kvt_tier_sync *s = arg;
    s->done(s->arg, res);
}

static int tt_sync(void *tier, struct kvt_tier_sync *sync)
{
    return queue(tier, tt_sync_done, sync, 0, NULL);
}

static size_t tt_enumerate(void *tier, kvt_tier_enum_fn fn, void *arg)
{
    struct kvt_test_tier *t = tier;
    size_t n = 0;
    for (uint32_t i = 0; i < t->n; i++) {
        if (t->o[i].state != OBJ_READY)
            continue;
        struct kvt_tier_obj o = {
            .id = t->o[i].id, .length = t->o[i].len, .meta_len = t->o[i].meta_len};
        n++;
        if (fn(arg, &o, i))
            break;
    }
    return n;
}

static void tt_stats(void *tier, struct kvt_tier_stats *out)
{
    *out = ((struct kvt_test_tier *)tier)->st;
}

static void tt_on_event(void *arg, uint32_t events)
{
    (void)events;
    run_pending(arg);
}

static int tt_attach(void *tier, struct kvt_loop *loop)
{
    struct kvt_test_tier *t = tier;
    int rc = kvt_loop_watch(loop, &t->watch, t->efd, EPOLLIN, tt_on_event, t);
    t->attached = rc == 0;
    return rc;
}

static void tt_detach(void *tier, struct kvt_loop *loop)
{
    struct kvt_test_tier *t = tier;
    if (t->attached)
        kvt_loop_unwatch(loop, &t->watch);
    t->attached = 0;
}

static uint32_t tt_inflight(void *tier)
{
    return ((struct kvt_test_tier *)tier)->q_n;
}

static int tt_wait(void *tier, int timeout_ms)
{
    (void)timeout_ms;
    return run_pending(tier);
}

const struct kvt_tier_ops kvt_test_tier_ops = {
    .name = "test",
    .id = KVT_TIER_REMOTE,
    /* lists what it holds, but nothing survives destroy */
    .caps = KVT_TIER_CAP_RANGE | KVT_TIER_CAP_META,
    .reserve = tt_reserve,
    .fill = tt_fill,
    .commit = tt_commit,
    .cancel = tt_cancel,
    .read = tt_read,
    .read_range = tt_read_range,
    .read_meta = tt_read_meta,
    .remove = tt_remove,
    .sync = tt_sync,
    .enumerate = tt_enumerate,
    .stats = tt_stats,
    .attach = tt_attach,
    .detach = tt_detach,
    .inflight = tt_inflight,
    .wait = tt_wait,
};
