/*
 * GGUF reader: maps a model file, walks its header, metadata and tensor table with a bounds-checked
 * cursor, and exposes pointers into the mapping. Nothing is copied except the two index arrays, so
 * opening a 100 MB model costs a page-table walk, not a read.
 */
#include "engine/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
/* Limits that no sane model reaches; they stop a corrupt count from allocating the machine. */
#define GGUF_MAX_KVS (1u << 20)
#define GGUF_MAX_TENSORS (1u << 20)
#define GGUF_MAX_ARRAY_DEPTH 4

struct cursor {
    const uint8_t *base;
    size_t len;
    size_t pos;
};

static int cur_take(struct cursor *c, size_t n, const uint8_t **out)
{
    if (n > c->len - c->pos)
        return -EINVAL;
    *out = c->base + c->pos;
    c->pos += n;
    return 0;
}

static int cur_u32(struct cursor *c, uint32_t *v)
{
    const uint8_t *p;
    int rc = cur_take(c, 4, &p);
    if (rc == 0)
        memcpy(v, p, 4);
    return rc;
}

static int cur_u64(struct cursor *c, uint64_t *v)
{
    const uint8_t *p;
    int rc = cur_take(c, 8, &p);
    if (rc == 0)
        memcpy(v, p, 8);
    return rc;
}

static int cur_str(struct cursor *c, struct kvt_eng_str *s)
{
    uint64_t n;
    const uint8_t *p;
    int rc = cur_u64(c, &n);
    if (rc)
        return rc;
    if (n > c->len - c->pos)
        return -EINVAL;
    rc = cur_take(c, (size_t)n, &p);
    if (rc)
        return rc;
    s->ptr = (const char *)p;
    s->len = (size_t)n;
    return 0;
}

static size_t scalar_bytes(uint32_t t)
{
    switch (t) {
    case KVT_GGUF_U8:
    case KVT_GGUF_I8:
    case KVT_GGUF_BOOL:
        return 1;
    case KVT_GGUF_U16:
    case KVT_GGUF_I16:
        return 2;
    case KVT_GGUF_U32:
    case KVT_GGUF_I32:
    case KVT_GGUF_F32:
        return 4;
    case KVT_GGUF_U64:
    case KVT_GGUF_I64:
    case KVT_GGUF_F64:
        return 8;
    default:
        return 0;
    }
}

/* Skips one value of type t, recursing into arrays up to a fixed depth. */
static int skip_value(struct cursor *c, uint32_t t, int depth)
{
    const uint8_t *p;
    if (t == KVT_GGUF_STRING) {
        struct kvt_eng_str s;
        return cur_str(c, &s);
    }
    if (t == KVT_GGUF_ARRAY) {
        uint32_t et;
        uint64_t n;
        int rc;
        if (depth >= GGUF_MAX_ARRAY_DEPTH)
            return -EINVAL;
        if ((rc = cur_u32(c, &et)) || (rc = cur_u64(c, &n)))
            return rc;
        size_t sb = scalar_bytes(et);
        if (sb) {
            if (n > (c->len - c->pos) / sb)
                return -EINVAL;
            return cur_take(c, (size_t)(n * sb), &p);
        }
        for (uint64_t i = 0; i < n; i++) {
            rc = skip_value(c, et, depth + 1);
            if (rc)
                return rc;
        }
        return 0;
    }
    size_t sb = scalar_bytes(t);
    if (!sb)
        return -EINVAL;
    return cur_take(c, sb, &p);
}

size_t kvt_eng_type_block_elems(enum kvt_eng_type type)
{
    switch (type) {
    case KVT_ENG_TYPE_F32:
    case KVT_ENG_TYPE_F16:
        return 1;
    case KVT_ENG_TYPE_Q4_1:
    case KVT_ENG_TYPE_Q8_0:
        return 32;
    }
    return 0;
}

size_t kvt_eng_type_block_bytes(enum kvt_eng_type type)
{
    switch (type) {
    case KVT_ENG_TYPE_F32:
        return 4;
    case KVT_ENG_TYPE_F16:
        return 2;
    case KVT_ENG_TYPE_Q4_1:
        return 20;
    case KVT_ENG_TYPE_Q8_0:
        return 34;
    }
    return 0;
}

const char *kvt_eng_type_name(enum kvt_eng_type type)
{
    switch (type) {
    case KVT_ENG_TYPE_F32:
        return "f32";
    case KVT_ENG_TYPE_F16:
        return "f16";
    case KVT_ENG_TYPE_Q4_1:
        return "q4_1";
    case KVT_ENG_TYPE_Q8_0:
        return "q8_0";
    }
    return "unknown";
}

static int parse_kvs(struct kvt_eng_gguf *g, struct cursor *c, uint64_t n_kv)
{
    g->kvs = calloc(n_kv ? n_kv : 1, sizeof(*g->kvs));
    if (!g->kvs)
        return -ENOMEM;
    for (uint64_t i = 0; i < n_kv; i++) {
        struct kvt_eng_gguf_kv *kv = &g->kvs[i];
        uint32_t t;
        int rc;
        if ((rc = cur_str(c, &kv->key)) || (rc = cur_u32(c, &t)))
            return rc;
        kv->type = (enum kvt_eng_gguf_vtype)t;
        if (t == KVT_GGUF_ARRAY) {
            uint32_t et;
            uint64_t n;
            size_t start = c->pos;
            if ((rc = cur_u32(c, &et)) || (rc = cur_u64(c, &n)))
                return rc;
            kv->elem_type = (enum kvt_eng_gguf_vtype)et;
            kv->count = n;
            kv->data = c->base + c->pos;
            c->pos = start;
        } else {
            kv->data = c->base + c->pos;
        }
        rc = skip_value(c, t, 0);
        if (rc)
            return rc;
        g->n_kvs++;
    }
    return 0;
}

static int parse_tensors(struct kvt_eng_gguf *g, struct cursor *c, uint64_t n_tensors,
                         uint64_t **offsets_out)
{
    uint64_t *offs = calloc(n_tensors ? n_tensors : 1, sizeof(*offs));
    g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof(*g->tensors));
    *offsets_out = offs;
    if (!g->tensors || !offs)
        return -ENOMEM;
    for (uint64_t i = 0; i < n_tensors; i++) {
        struct kvt_eng_tensor *t = &g->tensors[i];
        uint32_t type;
        int rc;
        if ((rc = cur_str(c, &t->name)) || (rc = cur_u32(c, &t->n_dims)))
            return rc;
        if (t->n_dims == 0 || t->n_dims > KVT_ENG_MAX_DIMS)
            return -EINVAL;
        for (uint32_t d = 0; d < KVT_ENG_MAX_DIMS; d++)
            t->ne[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            if ((rc = cur_u64(c, &t->ne[d])))
                return rc;
            if (t->ne[d] == 0 || t->ne[d] > (1ull << 40))
                return -EINVAL;
        }
        if ((rc = cur_u32(c, &type)) || (rc = cur_u64(c, &offs[i])))
            return rc;
        t->type = (enum kvt_eng_type)type;
        size_t be = kvt_eng_type_block_elems(t->type);
        if (!be)
            return -EPROTONOSUPPORT;
        if (t->ne[0] % be)
            return -EINVAL;
        t->row_bytes = (size_t)(t->ne[0] / be) * kvt_eng_type_block_bytes(t->type);
        uint64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
        if (rows > (1ull << 40) / t->row_bytes)
            return -EINVAL;
        t->nbytes = (size_t)(rows * t->row_bytes);
        g->n_tensors++;
    }
    return 0;
}

int kvt_eng_gguf_parse(const void *buf, size_t len, struct kvt_eng_gguf **out)
{
    struct cursor c = {.base = buf, .len = len, .pos = 0};
    const uint8_t *magic;
    uint64_t n_tensors, n_kv, *offs = NULL;
    uint32_t align = GGUF_DEFAULT_ALIGNMENT;
    int rc;

    struct kvt_eng_gguf *g = calloc(1, sizeof(*g));
    if (!g)
        return -ENOMEM;
    g->fd = -1;
    g->map = buf;
    g->map_bytes = len;

    if ((rc = cur_take(&c, 4, &magic)))
        goto err_free;
    if (memcmp(magic, GGUF_MAGIC, 4) != 0) {
        rc = -EINVAL;
        goto err_free;
    }
    if ((rc = cur_u32(&c, &g->version)))
        goto err_free;
    if (g->version < 2 || g->version > 3) {
        rc = -EPROTONOSUPPORT;
        goto err_free;
    }
    if ((rc = cur_u64(&c, &n_tensors)) || (rc = cur_u64(&c, &n_kv)))
        goto err_free;
    if (n_kv > GGUF_MAX_KVS || n_tensors > GGUF_MAX_TENSORS) {
        rc = -EINVAL;
        goto err_free;
    }
    if ((rc = parse_kvs(g, &c, n_kv)))
        goto err_free;
    if ((rc = parse_tensors(g, &c, n_tensors, &offs)))
        goto err_free;

    const struct kvt_eng_gguf_kv *akv = kvt_eng_gguf_find(g, "general.alignment");
    if (akv) {
        if (akv->type != KVT_GGUF_U32) {
            rc = -EINVAL;
            goto err_free;
        }
        memcpy(&align, akv->data, 4);
        if (align == 0 || (align & (align - 1))) {
            rc = -EINVAL;
            goto err_free;
        }
    }
    size_t data_start = (c.pos + align - 1) / align * align;
    for (size_t i = 0; i < g->n_tensors; i++) {
        struct kvt_eng_tensor *t = &g->tensors[i];
        if (data_start > len || offs[i] > len - data_start ||
            t->nbytes > len - data_start - offs[i]) {
            rc = -EINVAL;
            goto err_free;
        }
        t->data = (const uint8_t *)buf + data_start + offs[i];
    }
    free(offs);
    *out = g;
    return 0;

err_free:
    free(offs);
    free(g->kvs);
    free(g->tensors);
    free(g);
    return rc;
}

int kvt_eng_gguf_open(const char *path, struct kvt_eng_gguf **out)
{
    struct stat st;
    int rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) != 0) {
        rc = -errno;
        goto err_close_fd;
    }
    if (st.st_size <= 0) {
        rc = -EINVAL;
        goto err_close_fd;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        rc = -errno;
        goto err_close_fd;
    }
    rc = kvt_eng_gguf_parse(map, (size_t)st.st_size, out);
    if (rc)
        goto err_unmap;
    (*out)->fd = fd;
    return 0;

err_unmap:
    munmap(map, (size_t)st.st_size);
err_close_fd:
    close(fd);
    return rc;
}

void kvt_eng_gguf_close(struct kvt_eng_gguf *g)
{
    if (!g)
        return;
    if (g->fd >= 0) {
        munmap((void *)g->map, g->map_bytes);
        close(g->fd);
    }
    free(g->kvs);
    free(g->tensors);
    free(g);
}

static int str_eq(struct kvt_eng_str s, const char *z)
{
    size_t n = strlen(z);
    return s.len == n && memcmp(s.ptr, z, n) == 0;
}

const struct kvt_eng_gguf_kv *kvt_eng_gguf_find(const struct kvt_eng_gguf *g, const char *key)
{
    for (size_t i = 0; i < g->n_kvs; i++)
        if (str_eq(g->kvs[i].key, key))
            return &g->kvs[i];
    return NULL;
}

const struct kvt_eng_tensor *kvt_eng_gguf_tensor(const struct kvt_eng_gguf *g, const char *name)
{
    for (size_t i = 0; i < g->n_tensors; i++)
        if (str_eq(g->tensors[i].name, name))
            return &g->tensors[i];
    return NULL;
}

int kvt_eng_gguf_u32(const struct kvt_eng_gguf *g, const char *key, uint32_t *out)
{
    const struct kvt_eng_gguf_kv *kv = kvt_eng_gguf_find(g, key);
    if (!kv)
        return -ENOENT;
    uint64_t u = 0;
    int64_t s = 0;
    int is_signed = 0;
    switch (kv->type) {
    case KVT_GGUF_U8:
        u = kv->data[0];
        break;
    case KVT_GGUF_U16: {
        uint16_t v;
        memcpy(&v, kv->data, 2);
        u = v;
        break;
    }
    case KVT_GGUF_U32: {
        uint32_t v;
        memcpy(&v, kv->data, 4);
        u = v;
        break;
    }
    case KVT_GGUF_U64:
        memcpy(&u, kv->data, 8);
        break;
    case KVT_GGUF_I32: {
        int32_t v;
        memcpy(&v, kv->data, 4);
        s = v;
        is_signed = 1;
        break;
    }
    case KVT_GGUF_I64:
        memcpy(&s, kv->data, 8);
        is_signed = 1;
        break;
    default:
        return -EINVAL;
    }
    if (is_signed) {
        if (s < 0)
            return -EINVAL;
        u = (uint64_t)s;
    }
    if (u > UINT32_MAX)
        return -EINVAL;
    *out = (uint32_t)u;
    return 0;
}

int kvt_eng_gguf_f32(const struct kvt_eng_gguf *g, const char *key, float *out)
{
    const struct kvt_eng_gguf_kv *kv = kvt_eng_gguf_find(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type == KVT_GGUF_F32) {
        memcpy(out, kv->data, 4);
        return 0;
    }
    if (kv->type == KVT_GGUF_F64) {
        double d;
        memcpy(&d, kv->data, 8);
        *out = (float)d;
        return 0;
    }
    return -EINVAL;
}

int kvt_eng_gguf_bool(const struct kvt_eng_gguf *g, const char *key, int *out)
{
    const struct kvt_eng_gguf_kv *kv = kvt_eng_gguf_find(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != KVT_GGUF_BOOL)
        return -EINVAL;
    *out = kv->data[0] != 0;
    return 0;
}

int kvt_eng_gguf_str(const struct kvt_eng_gguf *g, const char *key, struct kvt_eng_str *out)
{
    const struct kvt_eng_gguf_kv *kv = kvt_eng_gguf_find(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != KVT_GGUF_STRING)
        return -EINVAL;
    struct cursor c = {.base = g->map, .len = g->map_bytes, .pos = (size_t)(kv->data - g->map)};
    return cur_str(&c, out);
}

int kvt_eng_gguf_str_array(const struct kvt_eng_gguf *g, const struct kvt_eng_gguf_kv *kv,
                           struct kvt_eng_str *out)
{
    if (kv->type != KVT_GGUF_ARRAY || kv->elem_type != KVT_GGUF_STRING)
        return -EINVAL;
    struct cursor c = {.base = g->map, .len = g->map_bytes, .pos = (size_t)(kv->data - g->map)};
    for (uint64_t i = 0; i < kv->count; i++) {
        int rc = cur_str(&c, &out[i]);
        if (rc)
            return rc;
    }
    return 0;
}
