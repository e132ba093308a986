/*
 * The disk tier's in-memory object index and the bookkeeping of extents across its files. The
 * index is an open-addressing hash table (linear probing, backward-shift deletion) keyed by
 * (namespace seed, key, variant), with one bit per slot so that a checkpoint snapshot visits only
 * used slots. Extents are allocated round-robin over the data files; an extent a commit replaces is
 * held back (pending free) until no read in flight still uses it and the removal is durable.
 */

#include "tiers/disk/disk_internal.h"

#include <assert.h>
#include <string.h>

#include "kvtier/errors.h"
#include "tiers/disk/extent.h"

/* ---- index: open addressing, linear probing, backward-shift deletion ----------------------- */

/* The variant is hashed too: unlike the daemon's index, nothing here walks the variants of one
 * key, so they need not share a probe run. */
static uint64_t id_hash(uint64_t ns, uint64_t lo, uint64_t hi, uint32_t variant)
{
    uint64_t h = ns * 0x9e3779b97f4a7c15ull ^ lo ^ (hi * 0xc2b2ae3d27d4eb4full) ^
                 ((uint64_t)variant * 0x94d049bb133111ebull);
    h ^= h >> 31;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29;
    return h;
}

static void slot_mark(struct kvt_disk *d, uint64_t i, int used)
{
    d->index[i].used = (uint8_t)used;
    if (used)
        d->used_bits[i / 64] |= 1ull << (i % 64);
    else
        d->used_bits[i / 64] &= ~(1ull << (i % 64));
}

static int ient_is(const struct ient *e, const struct kvt_obj_id *id)
{
    return e->ns_seed == id->ns_seed && e->key_lo == id->key.lo && e->key_hi == id->key.hi &&
           e->variant == id->variant;
}

struct ient *kvt__disk_index_find(struct kvt_disk *d, const struct kvt_obj_id *id)
{
    uint64_t i = id_hash(id->ns_seed, id->key.lo, id->key.hi, id->variant) & d->index_mask;

    for (uint64_t n = 0; n <= d->index_mask; n++, i = (i + 1) & d->index_mask) {
        struct ient *e = &d->index[i];
        if (!e->used)
            return NULL;
        if (ient_is(e, id))
            return e;
    }
    return NULL;
}

/* Returns the entry for id, claiming an empty slot when absent; NULL when the index holds
 * objects_max objects already. A tombstone (recovery only) may take any slot but the last free
 * one, which keeps every probe run finite. */
struct ient *kvt__disk_index_claim_as(struct kvt_disk *d, const struct kvt_obj_id *id, int dead)
{
    uint64_t i = id_hash(id->ns_seed, id->key.lo, id->key.hi, id->variant) & d->index_mask;

    for (uint64_t n = 0; n <= d->index_mask; n++, i = (i + 1) & d->index_mask) {
        struct ient *e = &d->index[i];
        if (!e->used) {
            if (d->index_count >= d->index_mask ||
                (!dead && d->index_count - d->index_dead >= d->cfg.objects_max))
                return NULL;
            memset(e, 0, sizeof(*e));
            slot_mark(d, i, 1);
            e->ns_seed = id->ns_seed;
            e->key_lo = id->key.lo;
            e->key_hi = id->key.hi;
            e->variant = id->variant;
            e->dead = (uint8_t)dead;
            d->index_count++;
            d->index_dead += (uint32_t)dead;
            return e;
        }
        if (ient_is(e, id))
            return e;
    }
    return NULL;
}

struct ient *kvt__disk_index_claim(struct kvt_disk *d, const struct kvt_obj_id *id)
{
    return kvt__disk_index_claim_as(d, id, 0);
}

/* Recovery's entry for id: e when it is live, e again when it was removed and is written again
 * (its write was in flight when it was removed) and there is room, a new entry when there was
 * none; NULL when the index is full. */
struct ient *kvt__disk_claim_or_revive(struct kvt_disk *d, const struct kvt_obj_id *id,
                                       struct ient *e)
{
    if (!e)
        return kvt__disk_index_claim(d, id);
    if (e->dead) {
        if (d->index_count - d->index_dead >= d->cfg.objects_max)
            return NULL;
        e->dead = 0;
        d->index_dead--;
    }
    return e;
}

void kvt__disk_form_account(struct kvt_disk *d, const struct ient *e, int sign)
{
    uint32_t form = KVT_CODEC_ID_FORM(e->codec);
    uint64_t saved = e->raw_len > e->stored_len ? e->raw_len - e->stored_len : 0;

    if (e->dead || (form != KVT_FORM_Q8 && form != KVT_FORM_Q4))
        return;
    uint64_t *n = form == KVT_FORM_Q8 ? &d->st.q8_objects : &d->st.q4_objects;
    uint64_t *b = form == KVT_FORM_Q8 ? &d->st.q8_bytes_saved : &d->st.q4_bytes_saved;
    if (sign > 0) {
        *n += 1;
        *b += saved;
    } else {
        *n -= *n ? 1 : 0;
        *b -= *b >= saved ? saved : *b;
    }
}

void kvt__disk_form_recount(struct kvt_disk *d)
{
    d->st.q8_objects = d->st.q4_objects = 0;
    d->st.q8_bytes_saved = d->st.q4_bytes_saved = 0;
    for (uint64_t i = 0; i <= d->index_mask; i++)
        if (d->index[i].used)
            kvt__disk_form_account(d, &d->index[i], 1);
}

void kvt__disk_index_delete(struct kvt_disk *d, struct ient *e)
{
    uint64_t i = (uint64_t)(e - d->index), j = i;

    assert(e->used && d->index_count > 0);
    kvt__disk_form_account(d, e, -1);
    slot_mark(d, i, 0);
    d->index_count--;
    if (e->dead)
        d->index_dead--;
    /* Shift later members of the probe run back so lookups never stop at the hole early. */
    for (uint64_t n = 0; n < d->index_mask; n++) {
        j = (j + 1) & d->index_mask;
        struct ient *f = &d->index[j];
        if (!f->used)
            break;
        uint64_t home = id_hash(f->ns_seed, f->key_lo, f->key_hi, f->variant) & d->index_mask;
        /* f may move to i when its home is not cyclically within (i, j]. */
        if (((j - home) & d->index_mask) >= ((j - i) & d->index_mask)) {
            d->index[i] = *f;
            slot_mark(d, i, 1);
            slot_mark(d, j, 0);
            i = j;
        }
    }
}

void kvt__disk_ient_info(const struct ient *e, struct kvt_disk_obj_info *out)
{
    out->id.ns_seed = e->ns_seed;
    out->id.key.lo = e->key_lo;
    out->id.key.hi = e->key_hi;
    out->id.variant = e->variant;
    out->n_tokens = e->n_tokens;
    out->codec = e->codec;
    out->raw_len = e->raw_len;
    out->stored_len = e->stored_len;
    out->seq = e->seq;
    out->n_layers = e->n_layers;
    out->row_bytes = e->row_bytes;
    out->block_tokens = e->block_tokens;
    out->file = e->file;
    out->offset_bytes = e->start * BLOCK;
    uint64_t sec = kvt__disk_section_bytes(e);
    out->meta_bytes_max = sec ? (uint32_t)(sec - KVT_OBJECT_SECTION_HEAD_BYTES) : 0;
}

/* ---- extents across files ------------------------------------------------------------------- */

int kvt__disk_extent_alloc(struct kvt_disk *d, uint64_t blocks, uint8_t *file, uint64_t *start)
{
    if (d->allocated >= d->cfg.objects_max)
        return KVT_E_FULL;
    /* Round-robin over files so that several devices share the load. */
    for (uint32_t k = 0; k < d->n_files; k++) {
        uint32_t f = (d->next_file + k) % d->n_files;
        if (kvt_extent_alloc(d->files[f].ext, blocks, start) == 0) {
            *file = (uint8_t)f;
            d->next_file = (f + 1) % d->n_files;
            d->allocated++;
            return 0;
        }
    }
    return KVT_E_FULL;
}

static int extent_being_read(struct kvt_disk *d, uint8_t file, uint64_t start)
{
    for (uint32_t i = 0; i < d->n_ops; i++) {
        const struct op *o = &d->ops[i];
        if (o->state == ST_INFLIGHT && o->kind == OP_READ && o->file == file && o->start == start)
            return 1;
    }
    return 0;
}

/* Returns an extent to its allocator once generation gen is durable and no read targets it;
 * until then it waits in the pending list, which cannot overflow because every entry is an
 * allocated extent and those are bounded by objects_max. */
void kvt__disk_extent_release(struct kvt_disk *d, uint8_t file, uint64_t start, uint64_t blocks,
                              uint64_t gen)
{
    if (gen <= d->gen_durable && !extent_being_read(d, file, start)) {
        kvt_extent_free(d->files[file].ext, start, blocks);
        d->allocated--;
        return;
    }
    assert(d->n_pfree < d->pfree_max);
    d->pfree[d->n_pfree++] =
        (struct pfree){.start = start, .blocks = blocks, .gen = gen, .file = file};
}

void kvt__disk_pfree_sweep(struct kvt_disk *d)
{
    uint32_t keep = 0;

    for (uint32_t i = 0; i < d->n_pfree; i++) {
        struct pfree *p = &d->pfree[i];
        if (p->gen <= d->gen_durable && !extent_being_read(d, p->file, p->start)) {
            kvt_extent_free(d->files[p->file].ext, p->start, p->blocks);
            d->allocated--;
        } else {
            d->pfree[keep++] = *p;
        }
    }
    d->n_pfree = keep;
}
