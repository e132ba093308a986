/*
 * GGUF reader for the reference engine. The file is mapped read-only; metadata values and tensor
 * data are returned as pointers into that mapping, so they stay valid until kvt_eng_gguf_close().
 * Every length and offset read from the file is checked against the file size before use, because
 * a model file is input like any other.
 */
#ifndef KVT_ENGINE_GGUF_H
#define KVT_ENGINE_GGUF_H

#include <stddef.h>
#include <stdint.h>

/* Tensor element types, numbered as in the GGUF format. Only the ones the engine can compute with
 * are named; others are rejected by kvt_eng_gguf_open with -EPROTONOSUPPORT. */
enum kvt_eng_type {
    KVT_ENG_TYPE_F32 = 0,
    KVT_ENG_TYPE_F16 = 1,
    KVT_ENG_TYPE_Q4_1 = 3,
    KVT_ENG_TYPE_Q8_0 = 8,
};

/* Metadata value types, numbered as in the GGUF format. */
enum kvt_eng_gguf_vtype {
    KVT_GGUF_U8 = 0,
    KVT_GGUF_I8 = 1,
    KVT_GGUF_U16 = 2,
    KVT_GGUF_I16 = 3,
    KVT_GGUF_U32 = 4,
    KVT_GGUF_I32 = 5,
    KVT_GGUF_F32 = 6,
    KVT_GGUF_BOOL = 7,
    KVT_GGUF_STRING = 8,
    KVT_GGUF_ARRAY = 9,
    KVT_GGUF_U64 = 10,
    KVT_GGUF_I64 = 11,
    KVT_GGUF_F64 = 12,
};

struct kvt_eng_str {
    const char *ptr; /* not NUL-terminated; points into the mapping */
    size_t len;
};

struct kvt_eng_gguf_kv {
    struct kvt_eng_str key;
    enum kvt_eng_gguf_vtype type;
    enum kvt_eng_gguf_vtype elem_type; /* arrays only */
    uint64_t count;                    /* arrays only */
    const uint8_t *data;               /* the value (or the first array element) in the mapping */
};

#define KVT_ENG_MAX_DIMS 4

struct kvt_eng_tensor {
    struct kvt_eng_str name;
    uint32_t n_dims;
    uint64_t ne[KVT_ENG_MAX_DIMS]; /* ne[0] is the contiguous (row) dimension; unused dims are 1 */
    enum kvt_eng_type type;
    const void *data; /* in the mapping */
    size_t nbytes;
    size_t row_bytes; /* bytes of one row of ne[0] elements */
};

struct kvt_eng_gguf {
    int fd;
    const uint8_t *map;
    size_t map_bytes;
    uint32_t version;
    struct kvt_eng_gguf_kv *kvs;
    size_t n_kvs;
    struct kvt_eng_tensor *tensors;
    size_t n_tensors;
};

/* Block geometry of a type: elements per block and bytes per block; 0 for an unknown type. */
size_t kvt_eng_type_block_elems(enum kvt_eng_type type);
size_t kvt_eng_type_block_bytes(enum kvt_eng_type type);
const char *kvt_eng_type_name(enum kvt_eng_type type);

/* Maps and parses path. On success *out owns the mapping. Errors: -errno from open/mmap, -EINVAL
 * for a malformed file, -EPROTONOSUPPORT for a version or tensor type the engine cannot use. */
int kvt_eng_gguf_open(const char *path, struct kvt_eng_gguf **out);
/* Parses an in-memory image instead of a file (tests); buf is borrowed and must outlive *out. */
int kvt_eng_gguf_parse(const void *buf, size_t len, struct kvt_eng_gguf **out);
void kvt_eng_gguf_close(struct kvt_eng_gguf *g);

const struct kvt_eng_gguf_kv *kvt_eng_gguf_find(const struct kvt_eng_gguf *g, const char *key);
const struct kvt_eng_tensor *kvt_eng_gguf_tensor(const struct kvt_eng_gguf *g, const char *name);

/* Typed getters: 0 on success, -ENOENT when missing, -EINVAL on a type mismatch. Integer getters
 * accept any integer type whose value fits. */
int kvt_eng_gguf_u32(const struct kvt_eng_gguf *g, const char *key, uint32_t *out);
int kvt_eng_gguf_f32(const struct kvt_eng_gguf *g, const char *key, float *out);
int kvt_eng_gguf_bool(const struct kvt_eng_gguf *g, const char *key, int *out);
int kvt_eng_gguf_str(const struct kvt_eng_gguf *g, const char *key, struct kvt_eng_str *out);

/* Fills out[0..count) with the strings of a string array (pointers into the mapping). out must
 * hold kv->count entries. 0 or -EINVAL. */
int kvt_eng_gguf_str_array(const struct kvt_eng_gguf *g, const struct kvt_eng_gguf_kv *kv,
                           struct kvt_eng_str *out);

#endif
