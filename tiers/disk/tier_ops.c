/*
 * The disk store behind the tier operations table (tiers/tier.h): a persistent tier that names
 * objects by id. Writes are the store's two-phase write, with fill (the encoding) on whatever
 * thread calls it, each thread keeping an encoder of its own, and the metadata a write carries in
 * the object's section after the body; reads, metadata reads and removals are the store's.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include "tiers/disk/disk.h"

/* A reservation: the store's staging slot and what fill needs. */
struct disk_write {
    struct kvt_disk_wslot ws;
    const struct kvt_codec_config *codec;
    uint32_t elem_bytes;
    kvt_tier_meta_fn meta_write; /* with meta_ctx: the caller's, until fill returned */
    void *meta_ctx;
    uint32_t form; /* the form asked for (enum kvt_form) */
};
_Static_assert(sizeof(struct disk_write) <= KVT_TIER_WRITE_PRIV_BYTES, "disk write state");
_Static_assert(sizeof(struct kvt_disk_sync) <= KVT_TIER_SYNC_PRIV_BYTES, "disk sync state");

void kvt_disk_tier_init(struct kvt_disk_tier *dt, struct kvt_disk *d,
                        const struct kvt_codec_config *codec)
{
    memset(dt, 0, sizeof(*dt));
    dt->d = d;
    if (codec)
        dt->codec = *codec;
    else
        kvt_codec_config_init(&dt->codec);
}

/* ---- per-thread encoders ----------------------------------------------------------------------
 */

struct tl_codec {
    struct kvt_codec *codec;
    struct kvt_codec_config cfg;
};

static pthread_key_t codec_key;
static pthread_once_t codec_key_once = PTHREAD_ONCE_INIT;

static void codec_key_free(void *p)
{
    struct tl_codec *t = p;
    kvt_codec_destroy(t->codec);
    free(t);
}

static void codec_key_make(void)
{
    pthread_key_create(&codec_key, codec_key_free);
}

/* This thread's encoder for cfg (made again when a store with another config asks). */
static struct kvt_codec *thread_codec(const struct kvt_codec_config *cfg)
{
    pthread_once(&codec_key_once, codec_key_make);
    struct tl_codec *t = pthread_getspecific(codec_key);
    if (t && !memcmp(&t->cfg, cfg, sizeof(*cfg)))
        return t->codec;
    if (!t) {
        t = calloc(1, sizeof(*t));
        if (!t)
            return NULL;
        pthread_setspecific(codec_key, t);
    }
    kvt_codec_destroy(t->codec);
    t->codec = NULL;
    if (kvt_codec_create(cfg, &t->codec))
        return NULL;
    t->cfg = *cfg;
    return t->codec;
}

/* ---- the table ------------------------------------------------------------------------------- */

static int dt_reserve(void *tier, const struct kvt_tier_obj *o, struct kvt_tier_write *w)
{
    struct kvt_disk_tier *dt = tier;
    struct disk_write *dw = (struct disk_write *)w->priv.bytes;
    struct kvt_disk_geom g, *gp = NULL;
    if (o->geom) {
        memset(&g, 0, sizeof(g));
        g.g.n_layers = o->geom->n_layers;
        g.g.n_kv_heads = o->geom->n_kv_heads;
        g.g.head_dim = o->geom->head_dim;
        g.g.elem_bytes = o->geom->elem_bytes;
        g.g.dtype = o->geom->dtype;
        g.sparse = o->geom->sparse;
        gp = &g;
    }
    uint32_t meta_len = o->meta_write ? o->meta_len : 0;
    int rc =
        kvt_disk_write_reserve_meta(dt->d, &o->id, o->length, o->n_tokens, gp, meta_len, &dw->ws);
    if (rc == KVT_E_EXISTS) {
        /* The copy there is the caller's: its stamp, as below. */
        struct kvt_disk_obj_info info;
        w->loc = kvt_disk_lookup(dt->d, &o->id, &info) == 0 ? info.seq : 0;
    }
    if (rc)
        return rc;
    dw->meta_write = o->meta_write;
    dw->meta_ctx = o->meta_ctx;
    dw->form = o->form; /* q8/q4 apply only where the geometry is known (kvt_disk_encode) */
    dw->codec = &dt->codec;
    dw->elem_bytes = o->elem_bytes ? o->elem_bytes : 1;
    /* The store names objects by id; the handle it gives is the copy's sequence number, a
     * stamp no other copy of any object in this store has, so that what the caller keeps about
     * this copy elsewhere is matched to it alone after a restart (enumerate gives it back). */
    w->loc = dw->ws.seq;
    w->length = o->length;
    w->form = 0;
    return 0;
}

static int dt_fill(struct kvt_tier_write *w, const void *src)
{
    struct disk_write *dw = (struct disk_write *)w->priv.bytes;
    struct kvt_codec *codec = thread_codec(dw->codec);
    if (!codec)
        return KVT_E_NOMEM;
    dw->ws.meta_write = dw->meta_write;
    dw->ws.meta_ctx = dw->meta_ctx;
    dw->ws.form = dw->form;
    int rc = kvt_disk_encode(codec, &dw->ws, src, dw->elem_bytes);
    w->form = rc == 0 ? KVT_CODEC_ID_FORM(dw->ws.codec) : 0;
    return rc;
}

static int dt_commit(void *tier, struct kvt_tier_write *w, kvt_tier_done_fn done, void *arg)
{
    struct kvt_disk_tier *dt = tier;
    struct disk_write *dw = (struct disk_write *)w->priv.bytes;
    int rc = kvt_disk_write_submit(dt->d, &dw->ws, done, arg);
    return rc ? rc : KVT_TIER_LATER;
}

static void dt_cancel(void *tier, struct kvt_tier_write *w)
{
    struct kvt_disk_tier *dt = tier;
    kvt_disk_write_cancel(dt->d, &((struct disk_write *)w->priv.bytes)->ws);
}

static int dt_read(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc, void *dst, size_t cap,
                   kvt_tier_done_fn done, void *arg)
{
    struct kvt_disk_tier *dt = tier;
    (void)loc;
    int rc = kvt_disk_read(dt->d, id, dst, cap, done, arg);
    return rc ? rc : KVT_TIER_LATER;
}

static int dt_read_stored(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc, void *dst,
                          size_t cap, uint32_t *form_out, kvt_tier_done_fn done, void *arg)
{
    struct kvt_disk_tier *dt = tier;
    (void)loc;
    int rc = kvt_disk_read_stored(dt->d, id, dst, cap, form_out, done, arg);
    return rc ? rc : KVT_TIER_LATER;
}

/* A loan of the store's, with what decode needs off the loop (the codec's config). */
struct disk_loan {
    struct kvt_disk_lent lent;
    const struct kvt_codec_config *codec;
};
_Static_assert(sizeof(struct disk_loan) <= KVT_TIER_LOAN_PRIV_BYTES, "disk loan state");

static void dt_lent(void *arg, int res, const struct kvt_disk_lent *lent)
{
    struct kvt_tier_loan *loan = arg;
    if (res >= 0 && lent) {
        ((struct disk_loan *)loan->priv.bytes)->lent = *lent;
        res = 0;
    } else if (res >= 0) {
        res = KVT_E_IO; /* a loan without its object: never reported by the store */
    }
    loan->done(loan->arg, res);
}

static int dt_read_lend(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc,
                        struct kvt_tier_loan *loan, kvt_tier_done_fn done, void *arg)
{
    struct kvt_disk_tier *dt = tier;
    struct disk_loan *dl = (struct disk_loan *)loan->priv.bytes;
    (void)loc;
    memset(dl, 0, sizeof(*dl));
    dl->codec = &dt->codec;
    loan->done = done;
    loan->arg = arg;
    int rc = kvt_disk_read_lend(dt->d, id, dt_lent, loan);
    return rc ? rc : KVT_TIER_LATER;
}

static int dt_decode(struct kvt_tier_loan *loan, void *dst, size_t cap, int stored,
                     uint32_t *form_out)
{
    struct disk_loan *dl = (struct disk_loan *)loan->priv.bytes;
    struct kvt_codec *codec = thread_codec(dl->codec);
    if (!codec)
        return KVT_E_NOMEM;
    dl->lent.stored = (uint8_t)(stored != 0);
    if (stored) {
        size_t len = 0;
        int rc = kvt_disk_decode_stored(codec, &dl->lent, dst, cap, form_out, &len);
        return rc ? rc : (int)len;
    }
    int rc = kvt_disk_decode(codec, &dl->lent, dst, cap);
    return rc ? rc : (int)dl->lent.raw_len;
}

static void dt_release(void *tier, struct kvt_tier_loan *loan, int status)
{
    struct kvt_disk_tier *dt = tier;
    kvt_disk_read_release(dt->d, &((struct disk_loan *)loan->priv.bytes)->lent, status);
}

static int dt_read_range(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc,
                         const struct kvt_tier_range *r, void *dst, size_t cap,
                         kvt_tier_done_fn done, void *arg)
{
    struct kvt_disk_tier *dt = tier;
    (void)loc;
    int rc = kvt_disk_read_range(dt->d, id, r->layer, r->first, r->n, dst, cap, done, arg);
    return rc ? rc : KVT_TIER_LATER;
}

static int dt_read_range_stored(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc,
                                const struct kvt_tier_range *r, void *dst, size_t cap,
                                uint32_t *form_out, kvt_tier_done_fn done, void *arg)
{
    struct kvt_disk_tier *dt = tier;
    (void)loc;
    int rc = kvt_disk_read_range_stored(dt->d, id, r->layer, r->first, r->n, r->head_dim, dst, cap,
                                        form_out, done, arg);
    return rc ? rc : KVT_TIER_LATER;
}

static int dt_read_meta(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc, void *dst,
                        size_t cap, kvt_tier_done_fn done, void *arg)
{
    struct kvt_disk_tier *dt = tier;
    (void)loc;
    int rc = kvt_disk_read_meta(dt->d, id, dst, cap, done, arg);
    return rc ? rc : KVT_TIER_LATER;
}

static int dt_remove(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc)
{
    struct kvt_disk_tier *dt = tier;
    (void)loc;
    return kvt_disk_remove(dt->d, id);
}

static void dt_sync_done(void *arg, int res)
{
    struct kvt_tier_sync *sync = arg;
    sync->done(sync->arg, res);
}

static int dt_sync(void *tier, struct kvt_tier_sync *sync)
{
    struct kvt_disk_tier *dt = tier;
    int rc = kvt_disk_sync(dt->d, (struct kvt_disk_sync *)sync->priv.bytes, dt_sync_done, sync);
    return rc ? rc : KVT_TIER_LATER;
}

struct enum_ctx {
    kvt_tier_enum_fn fn;
    void *arg;
};

static int dt_enum_one(void *arg, const struct kvt_disk_obj_info *info)
{
    struct enum_ctx *ec = arg;
    struct kvt_tier_obj o = {.id = info->id,
                             .length = info->raw_len,
                             .n_tokens = info->n_tokens,
                             .meta_len = info->meta_bytes_max,
                             .form = KVT_CODEC_ID_FORM(info->codec)};
    return ec->fn(ec->arg, &o, info->seq);
}

static size_t dt_enumerate(void *tier, kvt_tier_enum_fn fn, void *arg)
{
    struct kvt_disk_tier *dt = tier;
    struct enum_ctx ec = {.fn = fn, .arg = arg};
    return kvt_disk_enumerate(dt->d, dt_enum_one, &ec);
}

static void dt_stats(void *tier, struct kvt_tier_stats *out)
{
    kvt_disk_tier_stats(((struct kvt_disk_tier *)tier)->d, out);
}

static void dt_on_event(void *arg, uint32_t events)
{
    struct kvt_disk_tier *dt = arg;
    (void)events;
    kvt_disk_poll(dt->d);
}

static int dt_attach(void *tier, struct kvt_loop *loop)
{
    struct kvt_disk_tier *dt = tier;
    int rc = kvt_loop_watch(loop, &dt->watch, kvt_disk_event_fd(dt->d), EPOLLIN, dt_on_event, dt);
    if (rc == 0)
        dt->attached = 1;
    return rc;
}

static void dt_detach(void *tier, struct kvt_loop *loop)
{
    struct kvt_disk_tier *dt = tier;
    if (dt->attached)
        kvt_loop_unwatch(loop, &dt->watch);
    dt->attached = 0;
}

static uint32_t dt_inflight(void *tier)
{
    return kvt_disk_inflight(((struct kvt_disk_tier *)tier)->d);
}

static int dt_wait(void *tier, int timeout_ms)
{
    return kvt_disk_wait(((struct kvt_disk_tier *)tier)->d, timeout_ms);
}

const struct kvt_tier_ops kvt_disk_tier_ops = {
    .name = "disk",
    .id = KVT_TIER_DISK,
    .caps = KVT_TIER_CAP_PERSISTENT | KVT_TIER_CAP_RANGE | KVT_TIER_CAP_META,
    .reserve = dt_reserve,
    .fill = dt_fill,
    .commit = dt_commit,
    .cancel = dt_cancel,
    .read = dt_read,
    .read_range = dt_read_range,
    .read_meta = dt_read_meta,
    .read_stored = dt_read_stored,
    .read_range_stored = dt_read_range_stored,
    .read_lend = dt_read_lend,
    .decode = dt_decode,
    .release = dt_release,
    .remove = dt_remove,
    .sync = dt_sync,
    .enumerate = dt_enumerate,
    .stats = dt_stats,
    .attach = dt_attach,
    .detach = dt_detach,
    .inflight = dt_inflight,
    .wait = dt_wait,
};
