/*
 * kvtier._kvtier: the CPython extension over libkvtier (linked statically). It is the whole
 * binding: kvtier/__init__.py only adds the error classes and enums around it.
 *
 * Lifetimes, the reason this is an extension rather than ctypes:
 *   - An ArenaBuffer holds a strong reference to its Client, and every view of it (memoryview,
 *     numpy array) holds the ArenaBuffer, so the arena stays mapped while any view exists.
 *     Client.close() ends the session at once when no view is exported; otherwise it marks the
 *     client closed (every call raises) and the session ends with the release of the last view.
 *     A buffer whose client was closed raises on any new access: its memory is never read
 *     after the arena is unmapped.
 *   - A Get that failed with a session error (timeout, disconnect) may still be written by the
 *     daemon (kvtier.h, "After a timeout"): the ArenaBuffers it named are tainted and never given
 *     back to the library's allocator, which could otherwise hand the space out as a staging
 *     buffer while the late write lands.
 *
 * Threads: every call into the library releases the GIL. A struct kvt_client is not thread-safe,
 * so a Client is marked busy (under the GIL) for the length of a call; a second thread that uses
 * it meanwhile gets RuntimeError instead of corrupting it. Arena frees that come from another
 * thread during a call (a buffer collected there) are queued and done when the call returns.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "kvtier/kvtier.h"

PyMODINIT_FUNC PyInit__kvtier(void);

#define KEYS_STACK 64          /* keys converted without a heap allocation */
#define TOKENS_NOGIL_MIN 8192u /* chunk_keys releases the GIL from this many tokens on */

/* ---- errors --------------------------------------------------------------------------------- */

/* Set by kvtier/errors.py through _set_errors(): the base class, a dict code -> class, and the
 * class of -errno codes. */
static PyObject *error_base;
static PyObject *error_classes;
static PyObject *error_os;

/* Raises the KvtierError subclass of rc with (code, name, text), text being the code's own
 * words followed by the daemon's detail when it sent one that says more; returns NULL. */
static PyObject *raise_kvt_detail(int rc, const char *detail)
{
    PyObject *cls = NULL;
    if (error_classes) {
        PyObject *k = PyLong_FromLong(rc);
        if (!k)
            return NULL;
        cls = PyDict_GetItemWithError(error_classes, k);
        Py_DECREF(k);
        if (!cls && PyErr_Occurred())
            return NULL;
    }
    if (!cls && rc < 0 && rc >= -4095)
        cls = error_os;
    if (!cls)
        cls = error_base ? error_base : PyExc_RuntimeError;
    PyObject *exc;
    if (detail && *detail && strcmp(detail, kvt_strerror(rc)))
        exc = PyObject_CallFunction(cls, "isN", rc, kvt_strerror_name(rc),
                                    PyUnicode_FromFormat("%s: %s", kvt_strerror(rc), detail));
    else
        exc = PyObject_CallFunction(cls, "iss", rc, kvt_strerror_name(rc), kvt_strerror(rc));
    if (!exc)
        return NULL;
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return NULL;
}

static PyObject *raise_kvt(int rc)
{
    return raise_kvt_detail(rc, NULL);
}

static int is_session_error(int rc)
{
    return rc == KVT_E_TIMEOUT || rc == KVT_E_DISCONNECTED || rc == KVT_E_PROTO;
}

/* ---- object layouts ------------------------------------------------------------------------- */

struct arena_node {
    struct arena_node *prev, *next;
};

typedef struct {
    PyObject ob_base;          /* PyObject_HEAD */
    struct kvt_client *c;      /* NULL once the session ended */
    uint64_t serial;           /* tells Namespaces of this client from others */
    int closing;               /* close() was called: every call raises */
    int busy;                  /* a call runs with the GIL released */
    Py_ssize_t exports;        /* views of this client's arena buffers alive */
    struct arena_node buffers; /* live ArenaBuffers (list head) */
    void **deferred;           /* arena frees queued while busy */
    size_t n_deferred, cap_deferred;
    PyObject *subs; /* ticket -> capsule of a submission with items open (submit_*) */
    Py_buffer pool; /* arena=(fd, buffer, ...): the caller's mapping, held until the end */
    PyObject *weakreflist;
} ClientObject;

typedef struct {
    PyObject ob_base;
    struct arena_node node;
    ClientObject *client; /* strong reference */
    uint8_t *p;
    Py_ssize_t len;
    Py_ssize_t exports;
    int freed;   /* given back (or set aside) already: no access */
    int tainted; /* a failed Get named it: never given back to the allocator */
} ArenaBufferObject;

typedef struct {
    PyObject ob_base;
    struct kvt_ns_info info;
    uint64_t owner; /* serial of the client that registered it */
    PyObject *model_id;
    uint32_t layers, kv_heads, head_dim, dtype;
} NamespaceObject;

static PyTypeObject ClientType;
static PyTypeObject ArenaBufferType;
static PyTypeObject NamespaceType;
static uint64_t client_serial_next = 1;

/* raise_kvt with the daemon's words when its last error answer on this client was rc. */
static PyObject *raise_client(ClientObject *self, int rc)
{
    int code = 0;
    const char *text = self->c ? kvt_last_error(self->c, &code) : "";
    return raise_kvt_detail(rc, code == rc ? text : NULL);
}

static ArenaBufferObject *buf_of_node(struct arena_node *n)
{
    return (ArenaBufferObject *)((char *)n - offsetof(ArenaBufferObject, node));
}

/* ---- client state: busy, deferred frees, deferred close ------------------------------------ */

static void arena_give_back(ClientObject *self, void *p)
{
    if (!self->c)
        return;
    if (!self->busy) {
        kvt_arena_free(self->c, p);
        return;
    }
    if (self->n_deferred == self->cap_deferred) {
        size_t cap = self->cap_deferred ? self->cap_deferred * 2 : 16;
        void **d = PyMem_Realloc(self->deferred, cap * sizeof(*d));
        if (!d)
            return; /* the space stays taken until close: a leak, never a race */
        self->deferred = d;
        self->cap_deferred = cap;
    }
    self->deferred[self->n_deferred++] = p;
}

/* Ends the session when close() was asked for and nothing still needs the arena. */
static void client_maybe_finish(ClientObject *self)
{
    if (!self->c || self->busy)
        return;
    for (size_t i = 0; i < self->n_deferred; i++)
        kvt_arena_free(self->c, self->deferred[i]);
    self->n_deferred = 0;
    if (!self->closing || self->exports > 0)
        return;
    kvt_close(self->c);
    self->c = NULL;
    if (self->pool.obj)
        PyBuffer_Release(&self->pool); /* the daemon is done with the caller's arena */
}

static int client_enter(ClientObject *self)
{
    if (!self->c || self->closing) {
        PyErr_SetString(PyExc_ValueError, "operation on a closed kvtier.Client");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError,
                        "kvtier.Client is in use by another thread (use one client per thread, "
                        "or a lock)");
        return -1;
    }
    self->busy = 1;
    return 0;
}

static void client_leave(ClientObject *self)
{
    self->busy = 0;
    client_maybe_finish(self);
}

/* After a session error: the daemon may still write into arena memory that a Get named. */
static void taint_range(ClientObject *self, const void *p, size_t len)
{
    const uint8_t *a = p;
    for (struct arena_node *n = self->buffers.next; n != &self->buffers; n = n->next) {
        ArenaBufferObject *b = buf_of_node(n);
        if (a < b->p + b->len && b->p < a + len)
            b->tainted = 1;
    }
}

/* ---- argument conversion -------------------------------------------------------------------- */

static int key_from_obj(PyObject *o, struct kvt_key *out)
{
    if (PyBytes_Check(o) && PyBytes_GET_SIZE(o) == 16) {
        memcpy(out, PyBytes_AS_STRING(o), 16);
        return 0;
    }
    Py_buffer v;
    if (!PyObject_CheckBuffer(o) || PyObject_GetBuffer(o, &v, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "a chunk key is 16 bytes (from chunk_keys), not %.80s",
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    int ok = v.len == 16;
    if (ok)
        memcpy(out, v.buf, 16);
    PyBuffer_Release(&v);
    if (!ok)
        PyErr_Format(PyExc_ValueError, "a chunk key is 16 bytes, not %zd", v.len);
    return ok ? 0 : -1;
}

/* Keys from a list/tuple of 16-byte keys, or one buffer of n x 16 bytes. *out is stack when it
 * fits, else PyMem (free with keys_free). */
static int keys_from_obj(PyObject *o, struct kvt_key *stack, struct kvt_key **out, size_t *n_out)
{
    *out = stack;
    *n_out = 0;
    if (!PyList_Check(o) && !PyTuple_Check(o) && PyObject_CheckBuffer(o)) {
        Py_buffer v;
        if (PyObject_GetBuffer(o, &v, PyBUF_C_CONTIGUOUS) < 0)
            return -1;
        if (v.len % 16) {
            PyBuffer_Release(&v);
            PyErr_SetString(PyExc_ValueError, "packed keys must be a multiple of 16 bytes");
            return -1;
        }
        size_t n = (size_t)v.len / 16;
        if (n > KEYS_STACK && !(*out = PyMem_Malloc(n * sizeof(**out)))) {
            PyBuffer_Release(&v);
            PyErr_NoMemory();
            return -1;
        }
        if (n)
            memcpy(*out, v.buf, (size_t)v.len);
        PyBuffer_Release(&v);
        *n_out = n;
        return 0;
    }
    PyObject *seq = PySequence_Fast(o, "keys must be a sequence of 16-byte keys");
    if (!seq)
        return -1;
    size_t n = (size_t)PySequence_Fast_GET_SIZE(seq);
    if (n > KEYS_STACK && !(*out = PyMem_Malloc(n * sizeof(**out)))) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (size_t i = 0; i < n; i++) {
        if (key_from_obj(items[i], &(*out)[i]) < 0) {
            Py_DECREF(seq);
            if (*out != stack)
                PyMem_Free(*out);
            *out = stack;
            return -1;
        }
    }
    Py_DECREF(seq);
    *n_out = n;
    return 0;
}

static void keys_free(struct kvt_key *keys, struct kvt_key *stack)
{
    if (keys != stack)
        PyMem_Free(keys);
}

static int u32_from_obj(PyObject *o, const char *what, uint32_t *out)
{
    unsigned long v = PyLong_AsUnsignedLong(o);
    if (v == (unsigned long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError) ||
            PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s must be an integer in 0 .. 4294967295", what);
        }
        return -1;
    }
    if (v > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s must be an integer in 0 .. 4294967295", what);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

/* PyArg "O&" converters: unlike "I" and "K" they refuse negative and too-large values. */
static int conv_u32(PyObject *o, void *out)
{
    return u32_from_obj(o, "an argument", out) < 0 ? 0 : 1;
}

static int conv_u64(PyObject *o, void *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "an argument must be a non-negative 64-bit integer");
        return 0;
    }
    *(uint64_t *)out = v;
    return 1;
}

/* variants: None (all 0) or a sequence of n ints. *out is NULL for None, else PyMem. */
static int variants_from_obj(PyObject *o, size_t n, uint32_t **out)
{
    *out = NULL;
    if (!o || o == Py_None)
        return 0;
    PyObject *seq = PySequence_Fast(o, "variants must be a sequence of integers");
    if (!seq)
        return -1;
    if ((size_t)PySequence_Fast_GET_SIZE(seq) != n) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "%zu keys but %zd variants", n, PySequence_Size(o));
        return -1;
    }
    uint32_t *v = PyMem_Malloc((n ? n : 1) * sizeof(*v));
    if (!v) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (u32_from_obj(PySequence_Fast_GET_ITEM(seq, (Py_ssize_t)i), "a variant", &v[i]) < 0) {
            PyMem_Free(v);
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    *out = v;
    return 0;
}

/* Token ids as int32: a C-contiguous buffer of int32 is used in place (numpy int32,
 * array('i')); other integer buffers and sequences of ints are converted, every value checked
 * against the int32 range. *owned is what to PyMem_Free (NULL when borrowed from *view). */
static int tokens_from_obj(PyObject *o, Py_buffer *view, const int32_t **tokens, size_t *n,
                           int32_t **owned)
{
    *owned = NULL;
    view->obj = NULL;
    if (!PyList_Check(o) && !PyTuple_Check(o) && PyObject_CheckBuffer(o)) {
        if (PyObject_GetBuffer(o, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
            return -1;
        const char *f = view->format ? view->format : "B";
        if (*f == '@' || *f == '=' || *f == '<')
            f++;
        char fc = f[0] && !f[1] ? f[0] : '?';
        size_t count = view->itemsize ? (size_t)(view->len / view->itemsize) : 0;
        int is_signed = strchr("bhilq", fc) != NULL;
        int is_unsigned = strchr("BHILQ", fc) != NULL;
        if ((!is_signed && !is_unsigned) || view->ndim > 1) {
            PyErr_Format(PyExc_TypeError,
                         "tokens must be a 1-d buffer of integers (format '%s', %d dims)",
                         view->format ? view->format : "B", view->ndim);
            goto err_release;
        }
        if (is_signed && view->itemsize == 4) {
            *tokens = view->buf;
            *n = count;
            return 0;
        }
        int32_t *t = PyMem_Malloc((count ? count : 1) * sizeof(*t));
        if (!t) {
            PyErr_NoMemory();
            goto err_release;
        }
        const uint8_t *src = view->buf;
        for (size_t i = 0; i < count; i++) {
            long long v = 0;
            unsigned long long u = 0;
            const uint8_t *e = src + i * (size_t)view->itemsize;
            switch (view->itemsize) {
            case 1:
                v = is_signed ? *(const int8_t *)e : *e;
                break;
            case 2: {
                int16_t s;
                uint16_t w;
                memcpy(&s, e, 2);
                memcpy(&w, e, 2);
                v = is_signed ? s : w;
                break;
            }
            case 4: { /* unsigned only: signed 4-byte items were used in place */
                uint32_t w;
                memcpy(&w, e, 4);
                v = w;
                break;
            }
            case 8:
                if (is_signed) {
                    int64_t s;
                    memcpy(&s, e, 8);
                    v = s;
                } else {
                    memcpy(&u, e, 8);
                    v = u > (unsigned long long)INT32_MAX ? (long long)INT32_MAX + 1 : (long long)u;
                }
                break;
            default:
                PyMem_Free(t);
                PyErr_SetString(PyExc_TypeError, "tokens: unsupported integer size");
                goto err_release;
            }
            if (v < INT32_MIN || v > INT32_MAX) {
                PyMem_Free(t);
                PyErr_Format(PyExc_OverflowError, "token %zu does not fit in int32", i);
                goto err_release;
            }
            t[i] = (int32_t)v;
        }
        PyBuffer_Release(view);
        *tokens = t;
        *owned = t;
        *n = count;
        return 0;
    err_release:
        PyBuffer_Release(view);
        return -1;
    }
    PyObject *seq = PySequence_Fast(o, "tokens must be a sequence or a buffer of integers");
    if (!seq)
        return -1;
    size_t count = (size_t)PySequence_Fast_GET_SIZE(seq);
    int32_t *t = PyMem_Malloc((count ? count : 1) * sizeof(*t));
    if (!t) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (size_t i = 0; i < count; i++) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(items[i], &overflow);
        if (v == -1 && PyErr_Occurred()) {
            PyErr_Format(PyExc_TypeError, "token %zu is not an integer", i);
            goto err_free;
        }
        if (overflow || v < INT32_MIN || v > INT32_MAX) {
            PyErr_Format(PyExc_OverflowError, "token %zu does not fit in int32", i);
            goto err_free;
        }
        t[i] = (int32_t)v;
    }
    Py_DECREF(seq);
    *tokens = t;
    *owned = t;
    *n = count;
    return 0;
err_free:
    PyMem_Free(t);
    Py_DECREF(seq);
    return -1;
}

/* The namespace handle a call names: a Namespace this client registered, or a plain handle. */
static int ns_from_obj(ClientObject *self, PyObject *o, uint32_t *handle,
                       const NamespaceObject **ns)
{
    *ns = NULL;
    if (PyObject_TypeCheck(o, &NamespaceType)) {
        const NamespaceObject *n = (const NamespaceObject *)o;
        if (n->owner != self->serial) {
            PyErr_SetString(PyExc_ValueError,
                            "namespace was registered on another client: register it on this one");
            return -1;
        }
        *handle = n->info.handle;
        *ns = n;
        return 0;
    }
    return u32_from_obj(o, "a namespace handle", handle);
}

/* ---- Namespace ------------------------------------------------------------------------------ */

static void ns_dealloc(NamespaceObject *self)
{
    Py_XDECREF(self->model_id);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *ns_repr(NamespaceObject *self)
{
    return PyUnicode_FromFormat("<kvtier.Namespace %R handle=%u tokens_per_chunk=%u "
                                "chunk_bytes=%llu>",
                                self->model_id, self->info.handle, self->info.tokens_per_chunk,
                                (unsigned long long)self->info.chunk_bytes);
}

static PyObject *chunk_keys_impl(const struct kvt_ns_info *info, PyObject *tokens_obj,
                                 PyObject *parent_obj)
{
    struct kvt_key parent, *pp = NULL;
    if (parent_obj && parent_obj != Py_None) {
        if (key_from_obj(parent_obj, &parent) < 0)
            return NULL;
        pp = &parent;
    }
    Py_buffer view;
    const int32_t *tokens;
    int32_t *owned;
    size_t n_tokens;
    if (tokens_from_obj(tokens_obj, &view, &tokens, &n_tokens, &owned) < 0)
        return NULL;
    size_t max = info->tokens_per_chunk ? n_tokens / info->tokens_per_chunk : 0;
    struct kvt_key stack[KEYS_STACK], *keys = stack;
    PyObject *list = NULL;
    if (max > KEYS_STACK && !(keys = PyMem_Malloc(max * sizeof(*keys)))) {
        PyErr_NoMemory();
        goto out;
    }
    size_t n;
    if (n_tokens >= TOKENS_NOGIL_MIN) {
        PyThreadState *ts = PyEval_SaveThread();
        n = kvt_chunk_keys(info, pp, tokens, n_tokens, keys, max);
        PyEval_RestoreThread(ts);
    } else {
        n = kvt_chunk_keys(info, pp, tokens, n_tokens, keys, max);
    }
    list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list && i < n; i++) {
        PyObject *k = PyBytes_FromStringAndSize((const char *)&keys[i], 16);
        if (!k) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, k);
    }
out:
    if (keys != stack)
        PyMem_Free(keys);
    if (owned)
        PyMem_Free(owned);
    if (view.obj)
        PyBuffer_Release(&view);
    return list;
}

static PyObject *ns_chunk_keys(NamespaceObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"tokens", "parent", NULL};
    PyObject *tokens, *parent = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:chunk_keys", kwlist, &tokens, &parent))
        return NULL;
    return chunk_keys_impl(&self->info, tokens, parent);
}

static PyObject *ns_get_u64(NamespaceObject *self, void *which)
{
    switch ((intptr_t)which) {
    case 0:
        return PyLong_FromUnsignedLong(self->info.handle);
    case 1:
        return PyLong_FromUnsignedLongLong(self->info.seed);
    case 2:
        return PyLong_FromUnsignedLong(self->info.tokens_per_chunk);
    case 3:
        return PyLong_FromUnsignedLongLong(self->info.bytes_per_token);
    case 4:
        return PyLong_FromUnsignedLongLong(self->info.chunk_bytes);
    case 5:
        return PyLong_FromUnsignedLong(self->layers);
    case 6:
        return PyLong_FromUnsignedLong(self->kv_heads);
    case 7:
        return PyLong_FromUnsignedLong(self->head_dim);
    case 8:
        return PyLong_FromUnsignedLong(self->dtype);
    default:
        Py_INCREF(self->model_id);
        return self->model_id;
    }
}

static PyGetSetDef ns_getset[] = {
    {"handle", (getter)ns_get_u64, NULL, "handle of the namespace on its client", (void *)0},
    {"seed", (getter)ns_get_u64, NULL, "seed mixed into every chunk key", (void *)1},
    {"tokens_per_chunk", (getter)ns_get_u64, NULL, "tokens of one chunk", (void *)2},
    {"bytes_per_token", (getter)ns_get_u64, NULL, "layers x 2 x kv_heads x head_dim x dtype size",
     (void *)3},
    {"chunk_bytes", (getter)ns_get_u64, NULL, "bytes of one full chunk", (void *)4},
    {"layers", (getter)ns_get_u64, NULL, NULL, (void *)5},
    {"kv_heads", (getter)ns_get_u64, NULL, NULL, (void *)6},
    {"head_dim", (getter)ns_get_u64, NULL, NULL, (void *)7},
    {"dtype", (getter)ns_get_u64, NULL, "enum kvt_dtype", (void *)8},
    {"model_id", (getter)ns_get_u64, NULL, NULL, (void *)9},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef ns_methods[] = {
    {"chunk_keys", (PyCFunction)(void (*)(void))ns_chunk_keys, METH_VARARGS | METH_KEYWORDS,
     "chunk_keys(tokens, parent=None) -> list of 16-byte keys, one per full chunk"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject NamespaceType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kvtier.Namespace",
    .tp_basicsize = sizeof(NamespaceObject),
    .tp_dealloc = (destructor)ns_dealloc,
    .tp_repr = (reprfunc)ns_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A registered namespace (Client.register): its handle and geometry.",
    .tp_methods = ns_methods,
    .tp_getset = ns_getset,
};

/* ---- ArenaBuffer ---------------------------------------------------------------------------- */

static void ab_release_space(ArenaBufferObject *self)
{
    if (self->freed)
        return;
    self->freed = 1;
    if (!self->tainted)
        arena_give_back(self->client, self->p);
}

static void ab_dealloc(ArenaBufferObject *self)
{
    ab_release_space(self);
    self->node.prev->next = self->node.next;
    self->node.next->prev = self->node.prev;
    Py_DECREF(self->client);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ab_check_alive(ArenaBufferObject *self)
{
    if (!self->client->c || self->client->closing) {
        PyErr_SetString(PyExc_ValueError, "arena buffer of a closed kvtier.Client");
        return -1;
    }
    if (self->freed) {
        PyErr_SetString(PyExc_ValueError, "arena buffer was freed");
        return -1;
    }
    return 0;
}

static int ab_getbuffer(ArenaBufferObject *self, Py_buffer *view, int flags)
{
    if (ab_check_alive(self) < 0) {
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->p, self->len, 0, flags) < 0)
        return -1;
    self->exports++;
    self->client->exports++;
    return 0;
}

static void ab_releasebuffer(ArenaBufferObject *self, Py_buffer *view)
{
    (void)view;
    self->exports--;
    self->client->exports--;
    client_maybe_finish(self->client);
}

static PyBufferProcs ab_as_buffer = {
    .bf_getbuffer = (getbufferproc)ab_getbuffer,
    .bf_releasebuffer = (releasebufferproc)ab_releasebuffer,
};

static Py_ssize_t ab_length(ArenaBufferObject *self)
{
    return self->len;
}

static PySequenceMethods ab_as_sequence = {.sq_length = (lenfunc)ab_length};

static PyObject *ab_free(ArenaBufferObject *self, PyObject *unused)
{
    (void)unused;
    if (self->freed || !self->client->c)
        Py_RETURN_NONE;
    if (self->exports > 0) {
        PyErr_Format(PyExc_BufferError, "arena buffer has %zd exported views: release them first",
                     self->exports);
        return NULL;
    }
    ab_release_space(self);
    Py_RETURN_NONE;
}

static PyObject *ab_get_address(ArenaBufferObject *self, void *unused)
{
    (void)unused;
    if (ab_check_alive(self) < 0)
        return NULL;
    return PyLong_FromVoidPtr(self->p);
}

static PyObject *ab_get_tainted(ArenaBufferObject *self, void *unused)
{
    (void)unused;
    return PyBool_FromLong(self->tainted);
}

static PyObject *ab_repr(ArenaBufferObject *self)
{
    return PyUnicode_FromFormat("<kvtier.ArenaBuffer %zd bytes%s>", self->len,
                                self->freed || !self->client->c ? " (gone)" : "");
}

static PyObject *ab_enter(PyObject *self, PyObject *unused)
{
    (void)unused;
    Py_INCREF(self);
    return self;
}

static PyObject *ab_exit(ArenaBufferObject *self, PyObject *args)
{
    (void)args;
    return ab_free(self, NULL);
}

static PyGetSetDef ab_getset[] = {
    {"address", (getter)ab_get_address, NULL, "address of the first byte in this process", NULL},
    {"tainted", (getter)ab_get_tainted, NULL,
     "a Get into it failed with a session error: its space is never reused", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef ab_methods[] = {
    {"free", (PyCFunction)ab_free, METH_NOARGS,
     "Gives the space back to the arena (also done when the buffer is collected)."},
    {"__enter__", ab_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)ab_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ArenaBufferType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kvtier.ArenaBuffer",
    .tp_basicsize = sizeof(ArenaBufferObject),
    .tp_dealloc = (destructor)ab_dealloc,
    .tp_repr = (reprfunc)ab_repr,
    .tp_as_sequence = &ab_as_sequence,
    .tp_as_buffer = &ab_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A 4 KiB-aligned buffer in the client's transfer arena (Client.arena_alloc). Puts "
              "from it and Gets into it are zero-copy; it exposes the buffer protocol "
              "(memoryview, numpy.frombuffer) and keeps its client alive.",
    .tp_methods = ab_methods,
    .tp_getset = ab_getset,
};

/* ---- Client: session ------------------------------------------------------------------------ */

static int client_init(ClientObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"socket",     "tenant",       "timeout", "arena_bytes", "spin_us",
                             "daemon_uid", "batch_window", "arena",   NULL};
    const char *socket = NULL, *tenant = NULL;
    PyObject *timeout = Py_None, *arena = Py_None;
    uint64_t arena_bytes = 0;
    uint32_t spin_us = 0, batch_window = 0;
    long long daemon_uid = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|zzOO&O&LO&O:Client", kwlist, &socket, &tenant,
                                     &timeout, conv_u64, &arena_bytes, conv_u32, &spin_us,
                                     &daemon_uid, conv_u32, &batch_window, &arena))
        return -1;
    if (self->c) {
        PyErr_SetString(PyExc_RuntimeError, "kvtier.Client is already connected");
        return -1;
    }
    uint32_t timeout_ms = 0;
    if (timeout != Py_None) {
        double s = PyFloat_AsDouble(timeout);
        if (s == -1.0 && PyErr_Occurred())
            return -1;
        if (!(s > 0) || s > 4294967.0) {
            PyErr_SetString(PyExc_ValueError, "timeout must be seconds, above 0");
            return -1;
        }
        double ms = s * 1000.0;
        timeout_ms = ms < 1.0 ? 1u : (uint32_t)(ms + 0.5);
    }
    struct kvt_connect_opts o = {
        .socket_path = socket,
        .tenant = tenant,
        .arena_bytes = arena_bytes,
        .timeout_ms = timeout_ms,
        .spin_us = spin_us,
        .daemon_uid = daemon_uid,
        .batch_window = batch_window,
    };
    struct kvt_arena_spec spec = {0};
    if (arena != Py_None) {
        /* (fd, buffer[, stage_offset, stage_bytes]): the buffer (an mmap of fd, say) stays
         * exported, so it cannot be closed or resized under the daemon, until the client ends. */
        int fd = -1;
        PyObject *buf = NULL;
        unsigned long long so = 0, sb = 0;
        if (!PyArg_ParseTuple(arena, "iO|KK:arena", &fd, &buf, &so, &sb))
            return -1;
        if (PyObject_GetBuffer(buf, &self->pool, PyBUF_WRITABLE) < 0)
            return -1;
        spec = (struct kvt_arena_spec){.fd = fd,
                                       .base = self->pool.buf,
                                       .bytes = (uint64_t)self->pool.len,
                                       .stage_offset = so,
                                       .stage_bytes = sb};
    }
    struct kvt_client *c = NULL;
    int rc;
    PyThreadState *ts = PyEval_SaveThread();
    rc = arena != Py_None ? kvt_connect_arena(&o, &spec, &c) : kvt_connect(&o, &c);
    PyEval_RestoreThread(ts);
    if (rc) {
        if (self->pool.obj)
            PyBuffer_Release(&self->pool);
        raise_kvt(rc);
        return -1;
    }
    self->c = c;
    return 0;
}

static PyObject *client_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    (void)args;
    (void)kw;
    ClientObject *self = (ClientObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->serial = client_serial_next++;
    self->buffers.prev = self->buffers.next = &self->buffers;
    return (PyObject *)self;
}

static void client_dealloc(ClientObject *self)
{
    /* No ArenaBuffer (each holds a reference) and so no view remains: the arena can go. */
    if (self->weakreflist)
        PyObject_ClearWeakRefs((PyObject *)self);
    if (self->c)
        kvt_close(self->c);
    Py_CLEAR(self->subs); /* kvt_close wrote the last into their buffers */
    if (self->pool.obj)
        PyBuffer_Release(&self->pool); /* after kvt_close: the daemon is done with it */
    PyMem_Free(self->deferred);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static void subs_drain(ClientObject *self);

static PyObject *client_close(ClientObject *self, PyObject *unused)
{
    (void)unused;
    subs_drain(self);
    self->closing = 1;
    client_maybe_finish(self);
    Py_RETURN_NONE;
}

static PyObject *client_enter_ctx(ClientObject *self, PyObject *unused)
{
    (void)unused;
    if (!self->c || self->closing) {
        PyErr_SetString(PyExc_ValueError, "operation on a closed kvtier.Client");
        return NULL;
    }
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *client_exit_ctx(ClientObject *self, PyObject *args)
{
    (void)args;
    return client_close(self, NULL);
}

static PyObject *client_get_closed(ClientObject *self, void *unused)
{
    (void)unused;
    return PyBool_FromLong(!self->c || self->closing);
}

static PyObject *client_get_busy(ClientObject *self, void *unused)
{
    (void)unused;
    return PyBool_FromLong(self->busy);
}

static PyObject *client_get_socket_path(ClientObject *self, void *unused)
{
    (void)unused;
    if (!self->c) {
        PyErr_SetString(PyExc_ValueError, "operation on a closed kvtier.Client");
        return NULL;
    }
    return PyUnicode_DecodeFSDefault(kvt_socket_path(self->c));
}

static PyObject *client_repr(ClientObject *self)
{
    if (!self->c || self->closing)
        return PyUnicode_FromString("<kvtier.Client closed>");
    return PyUnicode_FromFormat("<kvtier.Client socket=%s>", kvt_socket_path(self->c));
}

/* ---- Client: namespaces and the arena ------------------------------------------------------- */

static int dtype_from_obj(PyObject *o, uint32_t *out)
{
    static const char *const names[] = {"fp16", "bf16", "fp32", "fp8"};
    if (PyUnicode_Check(o)) {
        const char *s = PyUnicode_AsUTF8(o);
        if (!s)
            return -1;
        for (uint32_t i = 0; i < 4; i++) {
            if (!strcmp(s, names[i])) {
                *out = i;
                return 0;
            }
        }
        PyErr_Format(PyExc_ValueError, "dtype must be fp16, bf16, fp32 or fp8, not %R", o);
        return -1;
    }
    if (u32_from_obj(o, "dtype", out) < 0)
        return -1;
    if (*out > KVT_DTYPE_FP8) {
        PyErr_Format(PyExc_ValueError, "unknown dtype %u", *out);
        return -1;
    }
    return 0;
}

/* spans={"kind": "default"|"none"|"fixed"|"variable", "block_tokens": n, "max_tokens": n,
 * "merge_tol": x, "fine_layers": n}: a SpanPolicy (docs/sparse.md); missing keys take the
 * daemon's defaults. */
static int spans_from_obj(PyObject *o, struct kvt_span_policy *p)
{
    static const char *const kinds[] = {"default", "none", "fixed", "variable"};
    static const char *const keys[] = {"kind", "block_tokens", "max_tokens", "merge_tol",
                                       "fine_layers"};
    if (!PyDict_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "spans must be a dict (kind, block_tokens, ...)");
        return -1;
    }
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(o, &pos, &k, &v)) {
        const char *name = PyUnicode_Check(k) ? PyUnicode_AsUTF8(k) : NULL;
        size_t which = 0;
        while (name && which < 5 && strcmp(name, keys[which]))
            which++;
        if (!name || which == 5) {
            PyErr_Format(PyExc_ValueError, "spans: unknown key %R", k);
            return -1;
        }
        if (which == 0) {
            const char *kind = PyUnicode_Check(v) ? PyUnicode_AsUTF8(v) : NULL;
            uint32_t i = 0;
            while (kind && i < 4 && strcmp(kind, kinds[i]))
                i++;
            if (!kind || i == 4) {
                PyErr_SetString(PyExc_ValueError,
                                "spans kind is 'default', 'none', 'fixed' or 'variable'");
                return -1;
            }
            p->kind = i;
        } else if (which == 3) {
            double t = PyFloat_AsDouble(v);
            if (t == -1.0 && PyErr_Occurred())
                return -1;
            p->merge_tol = (float)t;
        } else {
            uint32_t *dst = which == 1   ? &p->block_tokens
                            : which == 2 ? &p->max_tokens
                                         : &p->fine_layers;
            if (u32_from_obj(v, keys[which], dst) < 0)
                return -1;
        }
    }
    return 0;
}

static PyObject *client_register(ClientObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"model_id",   "layers",           "kv_heads",   "head_dim",
                             "dtype",      "tokens_per_chunk", "rope_theta", "rotary_dims",
                             "rope_style", "allow_lossy",      "spans",      NULL};
    PyObject *model_id, *dtype_obj = NULL, *spans_obj = Py_None;
    uint32_t layers, kv_heads, head_dim, tokens_per_chunk = 256, rotary_dims = 0, rope_style = 0;
    float rope_theta = 0.0f;
    int allow_lossy = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "UO&O&O&|OO&fO&O&pO:register", kwlist, &model_id,
                                     conv_u32, &layers, conv_u32, &kv_heads, conv_u32, &head_dim,
                                     &dtype_obj, conv_u32, &tokens_per_chunk, &rope_theta, conv_u32,
                                     &rotary_dims, conv_u32, &rope_style, &allow_lossy, &spans_obj))
        return NULL;
    struct kvt_span_policy spans = {.fine_layers = KVT_SPANS_FINE_DEFAULT};
    if (spans_obj != Py_None && spans_from_obj(spans_obj, &spans) < 0)
        return NULL;
    uint32_t dtype = KVT_DTYPE_FP16;
    if (dtype_obj && dtype_from_obj(dtype_obj, &dtype) < 0)
        return NULL;
    Py_ssize_t id_len;
    const char *id = PyUnicode_AsUTF8AndSize(model_id, &id_len);
    if (!id)
        return NULL;
    if ((size_t)id_len != strlen(id) || id_len >= KVT_MODEL_ID_MAX) {
        PyErr_Format(PyExc_ValueError, "model_id must be at most %d bytes without NUL",
                     KVT_MODEL_ID_MAX - 1);
        return NULL;
    }
    struct kvt_ns_spec spec = {
        .model_id = id,
        .layers = layers,
        .kv_heads = kv_heads,
        .head_dim = head_dim,
        .dtype = (enum kvt_dtype)dtype,
        .tokens_per_chunk = tokens_per_chunk,
        .rope_theta = rope_theta,
        .rotary_dims = rotary_dims,
        .rope_style = rope_style,
        .allow_lossy = allow_lossy,
    };
    NamespaceObject *ns = PyObject_New(NamespaceObject, &NamespaceType);
    if (!ns)
        return NULL;
    ns->model_id = NULL;
    if (client_enter(self) < 0) {
        Py_DECREF(ns);
        return NULL;
    }
    int rc;
    PyThreadState *ts = PyEval_SaveThread();
    rc = kvt_register_spans(self->c, &spec, spans_obj != Py_None ? &spans : NULL, &ns->info);
    PyEval_RestoreThread(ts);
    client_leave(self);
    if (rc) {
        Py_DECREF(ns);
        return raise_client(self, rc);
    }
    ns->owner = self->serial;
    ns->layers = layers;
    ns->kv_heads = kv_heads;
    ns->head_dim = head_dim;
    ns->dtype = dtype;
    Py_INCREF(model_id);
    ns->model_id = model_id;
    return (PyObject *)ns;
}

static PyObject *client_arena_alloc(ClientObject *self, PyObject *args)
{
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n:arena_alloc", &n))
        return NULL;
    if (n <= 0) {
        PyErr_SetString(PyExc_ValueError, "arena_alloc needs a size above 0");
        return NULL;
    }
    if (client_enter(self) < 0)
        return NULL;
    void *p = kvt_arena_alloc(self->c, (size_t)n);
    client_leave(self);
    if (!p)
        return raise_kvt(KVT_E_NOMEM);
    ArenaBufferObject *b = PyObject_New(ArenaBufferObject, &ArenaBufferType);
    if (!b) {
        kvt_arena_free(self->c, p);
        return NULL;
    }
    Py_INCREF(self);
    b->client = self;
    b->p = p;
    b->len = n;
    b->exports = 0;
    b->freed = 0;
    b->tainted = 0;
    b->node.next = &self->buffers;
    b->node.prev = self->buffers.prev;
    self->buffers.prev->next = &b->node;
    self->buffers.prev = &b->node;
    return (PyObject *)b;
}

/* ---- Client: data calls --------------------------------------------------------------------- */

static PyObject *client_put(ClientObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"ns", "key", "buf", "n_tokens", "variant", NULL};
    PyObject *ns_obj, *key_obj;
    Py_buffer buf;
    uint32_t n_tokens = 0, variant = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOy*|O&O&:put", kwlist, &ns_obj, &key_obj, &buf,
                                     conv_u32, &n_tokens, conv_u32, &variant))
        return NULL;
    uint32_t h;
    const NamespaceObject *ns;
    struct kvt_key key;
    PyObject *ret = NULL;
    if (ns_from_obj(self, ns_obj, &h, &ns) < 0 || key_from_obj(key_obj, &key) < 0 ||
        client_enter(self) < 0)
        goto out;
    int rc;
    PyThreadState *ts = PyEval_SaveThread();
    rc = kvt_put_v(self->c, h, &key, variant, buf.buf, (size_t)buf.len, n_tokens);
    PyEval_RestoreThread(ts);
    client_leave(self);
    if (rc)
        raise_client(self, rc);
    else
        ret = Py_NewRef(Py_None);
out:
    PyBuffer_Release(&buf);
    return ret;
}

/* The bytes object a Get without `out` fills, or NULL with an error set. */
static PyObject *new_bytes_for(const NamespaceObject *ns, size_t cap, const char *what)
{
    if (!ns) {
        PyErr_Format(PyExc_TypeError,
                     "%s without out= needs the Namespace (not a handle) to size the result", what);
        return NULL;
    }
    return PyBytes_FromStringAndSize(NULL, (Py_ssize_t)cap);
}

static PyObject *client_get(ClientObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"ns", "key", "out", "variant", NULL};
    PyObject *ns_obj, *key_obj, *out_obj = Py_None;
    uint32_t variant = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OO&:get", kwlist, &ns_obj, &key_obj, &out_obj,
                                     conv_u32, &variant))
        return NULL;
    uint32_t h;
    const NamespaceObject *ns;
    struct kvt_key key;
    if (ns_from_obj(self, ns_obj, &h, &ns) < 0 || key_from_obj(key_obj, &key) < 0)
        return NULL;
    Py_buffer view = {.obj = NULL};
    PyObject *result = NULL;
    void *dst;
    size_t cap;
    if (out_obj == Py_None) {
        if (!ns)
            return new_bytes_for(NULL, 0, "get");
        cap = ns->info.chunk_bytes;
        if (!(result = new_bytes_for(ns, cap, "get")))
            return NULL;
        dst = PyBytes_AS_STRING(result);
    } else {
        if (PyObject_GetBuffer(out_obj, &view, PyBUF_WRITABLE) < 0)
            return NULL;
        dst = view.buf;
        cap = (size_t)view.len;
    }
    size_t len = 0;
    int rc = 0;
    if (client_enter(self) < 0) {
        rc = 1;
    } else {
        PyThreadState *ts = PyEval_SaveThread();
        rc = kvt_get_v(self->c, h, &key, variant, dst, cap, &len, NULL);
        PyEval_RestoreThread(ts);
        if (is_session_error(rc))
            taint_range(self, dst, cap);
        client_leave(self);
        if (rc)
            raise_client(self, rc);
    }
    if (view.obj)
        PyBuffer_Release(&view);
    if (rc) {
        Py_XDECREF(result);
        return NULL;
    }
    if (!result)
        return PyLong_FromSize_t(len);
    if (len != cap && _PyBytes_Resize(&result, (Py_ssize_t)len) < 0)
        return NULL;
    return result;
}

static PyObject *client_get_range(ClientObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"ns",       "key", "layer",   "token_first",
                             "n_tokens", "out", "variant", NULL};
    PyObject *ns_obj, *key_obj, *out_obj = Py_None;
    uint32_t layer, token_first, n_tokens, variant = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO&O&O&|OO&:get_range", kwlist, &ns_obj, &key_obj,
                                     conv_u32, &layer, conv_u32, &token_first, conv_u32, &n_tokens,
                                     &out_obj, conv_u32, &variant))
        return NULL;
    uint32_t h;
    const NamespaceObject *ns;
    struct kvt_key key;
    if (ns_from_obj(self, ns_obj, &h, &ns) < 0 || key_from_obj(key_obj, &key) < 0)
        return NULL;
    Py_buffer view = {.obj = NULL};
    PyObject *result = NULL;
    void *dst;
    size_t cap;
    if (out_obj == Py_None) {
        if (!ns)
            return new_bytes_for(NULL, 0, "get_range");
        cap = (size_t)(ns->info.bytes_per_token / (ns->layers ? ns->layers : 1)) * n_tokens;
        if (!(result = new_bytes_for(ns, cap, "get_range")))
            return NULL;
        dst = PyBytes_AS_STRING(result);
    } else {
        if (PyObject_GetBuffer(out_obj, &view, PyBUF_WRITABLE) < 0)
            return NULL;
        dst = view.buf;
        cap = (size_t)view.len;
    }
    size_t len = 0;
    int rc = 0;
    if (client_enter(self) < 0) {
        rc = 1;
    } else {
        PyThreadState *ts = PyEval_SaveThread();
        rc = kvt_get_range_v(self->c, h, &key, variant, layer, token_first, n_tokens, dst, cap,
                             &len, NULL);
        PyEval_RestoreThread(ts);
        if (is_session_error(rc))
            taint_range(self, dst, cap);
        client_leave(self);
        if (rc)
            raise_client(self, rc);
    }
    if (view.obj)
        PyBuffer_Release(&view);
    if (rc) {
        Py_XDECREF(result);
        return NULL;
    }
    if (!result)
        return PyLong_FromSize_t(len);
    if (len != cap && _PyBytes_Resize(&result, (Py_ssize_t)len) < 0)
        return NULL;
    return result;
}

/* Items of a batch: the C items and the views that keep their buffers pinned. */
struct batch {
    struct kvt_item *items;
    Py_buffer *views;
    size_t n;
};

static void batch_free(struct batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        if (b->views[i].obj)
            PyBuffer_Release(&b->views[i]);
    PyMem_Free(b->items);
    PyMem_Free(b->views);
}

enum batch_kind { BATCH_PUT, BATCH_GET, BATCH_RANGE };

/* Each item is a tuple: BATCH_PUT (key, buf[, n_tokens[, variant]]), BATCH_GET (key, out[,
 * variant]), BATCH_RANGE (key, layer, token_first, n_tokens, out[, variant]). */
static int batch_from_obj(PyObject *o, enum batch_kind kind, struct batch *b)
{
    static const char *const shapes[] = {"(key, buf[, n_tokens[, variant]])",
                                         "(key, out[, variant])",
                                         "(key, layer, token_first, n_tokens, out[, variant])"};
    const Py_ssize_t kmin[] = {2, 2, 5}, kmax[] = {4, 3, 6};
    b->n = 0;
    b->items = NULL;
    b->views = NULL;
    PyObject *seq = PySequence_Fast(o, "items must be a sequence of tuples");
    if (!seq)
        return -1;
    size_t n = (size_t)PySequence_Fast_GET_SIZE(seq);
    b->items = PyMem_Calloc(n ? n : 1, sizeof(*b->items));
    b->views = PyMem_Calloc(n ? n : 1, sizeof(*b->views));
    if (!b->items || !b->views) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *it = PySequence_Fast_GET_ITEM(seq, (Py_ssize_t)i);
        Py_ssize_t k = PyTuple_Check(it) ? PyTuple_GET_SIZE(it) : -1;
        if (k < kmin[kind] || k > kmax[kind]) {
            PyErr_Format(PyExc_TypeError, "item %zu must be a tuple %s", i, shapes[kind]);
            goto err;
        }
        struct kvt_item *item = &b->items[i];
        if (key_from_obj(PyTuple_GET_ITEM(it, 0), &item->key) < 0)
            goto err;
        Py_ssize_t at_buf = kind == BATCH_RANGE ? 4 : 1;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(it, at_buf), &b->views[i],
                               kind == BATCH_PUT ? PyBUF_SIMPLE : PyBUF_WRITABLE) < 0)
            goto err;
        b->n = i + 1;
        item->buf = b->views[i].buf;
        item->len = (size_t)b->views[i].len;
        switch (kind) {
        case BATCH_PUT:
            if (k >= 3 && u32_from_obj(PyTuple_GET_ITEM(it, 2), "n_tokens", &item->n_tokens) < 0)
                goto err;
            if (k == 4 && u32_from_obj(PyTuple_GET_ITEM(it, 3), "a variant", &item->variant) < 0)
                goto err;
            break;
        case BATCH_GET:
            if (k == 3 && u32_from_obj(PyTuple_GET_ITEM(it, 2), "a variant", &item->variant) < 0)
                goto err;
            break;
        case BATCH_RANGE:
            if (u32_from_obj(PyTuple_GET_ITEM(it, 1), "layer", &item->layer) < 0 ||
                u32_from_obj(PyTuple_GET_ITEM(it, 2), "token_first", &item->token_first) < 0 ||
                u32_from_obj(PyTuple_GET_ITEM(it, 3), "n_tokens", &item->n_tokens) < 0)
                goto err;
            if (k == 6 && u32_from_obj(PyTuple_GET_ITEM(it, 5), "a variant", &item->variant) < 0)
                goto err;
            break;
        }
    }
    Py_DECREF(seq);
    return 0;
err:
    Py_DECREF(seq);
    batch_free(b);
    b->n = 0;
    return -1;
}

static PyObject *client_put_batch(ClientObject *self, PyObject *args)
{
    PyObject *ns_obj, *items_obj;
    if (!PyArg_ParseTuple(args, "OO:put_batch", &ns_obj, &items_obj))
        return NULL;
    uint32_t h;
    const NamespaceObject *ns;
    if (ns_from_obj(self, ns_obj, &h, &ns) < 0)
        return NULL;
    struct batch b;
    if (batch_from_obj(items_obj, BATCH_PUT, &b) < 0)
        return NULL;
    PyObject *ret = NULL;
    if (client_enter(self) == 0) {
        int rc;
        PyThreadState *ts = PyEval_SaveThread();
        rc = kvt_put_batch(self->c, h, b.items, b.n);
        PyEval_RestoreThread(ts);
        client_leave(self);
        if (rc) {
            raise_client(self, rc);
        } else if ((ret = PyList_New((Py_ssize_t)b.n))) {
            for (size_t i = 0; i < b.n; i++)
                PyList_SET_ITEM(ret, (Py_ssize_t)i, PyLong_FromLong(b.items[i].status));
        }
    }
    batch_free(&b);
    return ret;
}

/* get_batch and get_range_batch: per item (status, length, tier); with E_SMALLBUF the length is
 * the capacity needed, otherwise 0 for a failed item. */
static PyObject *read_batch(ClientObject *self, PyObject *args, enum batch_kind kind)
{
    PyObject *ns_obj, *items_obj;
    if (!PyArg_ParseTuple(args, kind == BATCH_GET ? "OO:get_batch" : "OO:get_range_batch", &ns_obj,
                          &items_obj))
        return NULL;
    uint32_t h;
    const NamespaceObject *ns;
    if (ns_from_obj(self, ns_obj, &h, &ns) < 0)
        return NULL;
    struct batch b;
    if (batch_from_obj(items_obj, kind, &b) < 0)
        return NULL;
    PyObject *ret = NULL;
    if (client_enter(self) == 0) {
        int rc;
        PyThreadState *ts = PyEval_SaveThread();
        if (kind == BATCH_GET)
            rc = kvt_get_batch(self->c, h, b.items, b.n);
        else
            rc = kvt_get_range_batch(self->c, h, b.items, b.n);
        PyEval_RestoreThread(ts);
        for (size_t i = 0; i < b.n; i++) {
            if (is_session_error(b.items[i].status))
                taint_range(self, b.views[i].buf, (size_t)b.views[i].len);
        }
        client_leave(self);
        if (rc) {
            raise_client(self, rc);
        } else if ((ret = PyList_New((Py_ssize_t)b.n))) {
            for (size_t i = 0; i < b.n; i++) {
                const struct kvt_item *it = &b.items[i];
                int has_len = !it->status || it->status == KVT_E_SMALLBUF;
                PyObject *t = Py_BuildValue("(inI)", it->status,
                                            has_len ? (Py_ssize_t)it->len : (Py_ssize_t)0,
                                            (unsigned int)it->tier);
                if (!t) {
                    Py_CLEAR(ret);
                    break;
                }
                PyList_SET_ITEM(ret, (Py_ssize_t)i, t);
            }
        }
    }
    batch_free(&b);
    return ret;
}

static PyObject *client_get_batch(ClientObject *self, PyObject *args)
{
    return read_batch(self, args, BATCH_GET);
}

static PyObject *client_get_range_batch(ClientObject *self, PyObject *args)
{
    return read_batch(self, args, BATCH_RANGE);
}

enum lookup_mode { LOOKUP_COUNT, LOOKUP_TIERS, LOOKUP_HOLD };

/* lookup -> hits; lookup_tiers -> [tier, ...]; lookup_hold -> (hits, hold id). */
static PyObject *lookup_common(ClientObject *self, PyObject *args, PyObject *kw,
                               enum lookup_mode mode)
{
    static char *kwlist[] = {"ns", "keys", "variants", NULL};
    static char *kwlist_hold[] = {"ns", "keys", "hold_ms", "variants", NULL};
    PyObject *ns_obj, *keys_obj, *variants_obj = Py_None;
    uint32_t hold_ms = 0;
    int want_tiers = mode == LOOKUP_TIERS;
    if (mode == LOOKUP_HOLD
            ? !PyArg_ParseTupleAndKeywords(args, kw, "OOO&|O:lookup_hold", kwlist_hold, &ns_obj,
                                           &keys_obj, conv_u32, &hold_ms, &variants_obj)
            : !PyArg_ParseTupleAndKeywords(args, kw,
                                           want_tiers ? "OO|O:lookup_tiers" : "OO|O:lookup", kwlist,
                                           &ns_obj, &keys_obj, &variants_obj))
        return NULL;
    uint32_t h;
    const NamespaceObject *ns;
    if (ns_from_obj(self, ns_obj, &h, &ns) < 0)
        return NULL;
    struct kvt_key stack[KEYS_STACK], *keys;
    size_t n;
    if (keys_from_obj(keys_obj, stack, &keys, &n) < 0)
        return NULL;
    uint32_t *variants = NULL;
    enum kvt_tier_id tstack[KEYS_STACK], *tiers = NULL;
    PyObject *ret = NULL;
    if (variants_from_obj(variants_obj, n, &variants) < 0)
        goto out;
    if (want_tiers) {
        tiers = n > KEYS_STACK ? PyMem_Malloc(n * sizeof(*tiers)) : tstack;
        if (!tiers) {
            PyErr_NoMemory();
            goto out;
        }
    }
    if (client_enter(self) < 0)
        goto out;
    size_t hits = 0;
    uint64_t hold = 0;
    int rc;
    PyThreadState *ts = PyEval_SaveThread();
    if (mode == LOOKUP_HOLD)
        rc = kvt_lookup_hold(self->c, h, keys, variants, n, hold_ms, &hits, NULL, &hold);
    else
        rc = kvt_lookup_v(self->c, h, keys, variants, n, &hits, tiers);
    PyEval_RestoreThread(ts);
    client_leave(self);
    if (rc) {
        raise_client(self, rc);
        goto out;
    }
    if (mode == LOOKUP_HOLD) {
        ret = Py_BuildValue("(nK)", (Py_ssize_t)hits, (unsigned long long)hold);
        goto out;
    }
    if (!want_tiers) {
        ret = PyLong_FromSize_t(hits);
        goto out;
    }
    if (!(ret = PyList_New((Py_ssize_t)hits)))
        goto out;
    for (size_t i = 0; i < hits; i++)
        PyList_SET_ITEM(ret, (Py_ssize_t)i, PyLong_FromLong(tiers[i]));
out:
    if (tiers && tiers != tstack)
        PyMem_Free(tiers);
    PyMem_Free(variants);
    keys_free(keys, stack);
    return ret;
}

static PyObject *client_lookup(ClientObject *self, PyObject *args, PyObject *kw)
{
    return lookup_common(self, args, kw, LOOKUP_COUNT);
}

static PyObject *client_lookup_tiers(ClientObject *self, PyObject *args, PyObject *kw)
{
    return lookup_common(self, args, kw, LOOKUP_TIERS);
}

static PyObject *client_lookup_hold(ClientObject *self, PyObject *args, PyObject *kw)
{
    return lookup_common(self, args, kw, LOOKUP_HOLD);
}

static PyObject *client_release_hold(ClientObject *self, PyObject *args)
{
    unsigned long long hold;
    if (!PyArg_ParseTuple(args, "K:release_hold", &hold))
        return NULL;
    if (client_enter(self) < 0)
        return NULL;
    uint32_t n = 0;
    PyThreadState *ts = PyEval_SaveThread();
    int rc = kvt_hold_release(self->c, hold, &n);
    PyEval_RestoreThread(ts);
    client_leave(self);
    if (rc)
        return raise_client(self, rc);
    return PyLong_FromUnsignedLong(n);
}

static PyObject *client_delete(ClientObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"ns", "keys", "variants", NULL};
    PyObject *ns_obj, *keys_obj, *variants_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O:delete", kwlist, &ns_obj, &keys_obj,
                                     &variants_obj))
        return NULL;
    uint32_t h;
    const NamespaceObject *ns;
    if (ns_from_obj(self, ns_obj, &h, &ns) < 0)
        return NULL;
    struct kvt_key stack[KEYS_STACK], *keys;
    size_t n;
    if (keys_from_obj(keys_obj, stack, &keys, &n) < 0)
        return NULL;
    uint32_t *variants = NULL;
    int *status = NULL;
    PyObject *ret = NULL;
    if (variants_from_obj(variants_obj, n, &variants) < 0)
        goto out;
    if (!(status = PyMem_Calloc(n ? n : 1, sizeof(*status)))) {
        PyErr_NoMemory();
        goto out;
    }
    if (client_enter(self) < 0)
        goto out;
    int rc;
    PyThreadState *ts = PyEval_SaveThread();
    rc = kvt_delete_v(self->c, h, keys, variants, n, status);
    PyEval_RestoreThread(ts);
    client_leave(self);
    if (rc) {
        raise_client(self, rc);
        goto out;
    }
    if (!(ret = PyList_New((Py_ssize_t)n)))
        goto out;
    for (size_t i = 0; i < n; i++)
        PyList_SET_ITEM(ret, (Py_ssize_t)i, PyLong_FromLong(status[i]));
out:
    PyMem_Free(status);
    PyMem_Free(variants);
    keys_free(keys, stack);
    return ret;
}

/* ---- Client: control calls ------------------------------------------------------------------ */

static PyObject *client_ping(ClientObject *self, PyObject *unused)
{
    (void)unused;
    if (client_enter(self) < 0)
        return NULL;
    int rc;
    PyThreadState *ts = PyEval_SaveThread();
    rc = kvt_ping(self->c);
    PyEval_RestoreThread(ts);
    client_leave(self);
    if (rc)
        return raise_client(self, rc);
    Py_RETURN_NONE;
}

static PyObject *client_stats(ClientObject *self, PyObject *unused)
{
    (void)unused;
    if (client_enter(self) < 0)
        return NULL;
    struct kvt_stat *st = NULL;
    size_t n = 0;
    int rc;
    PyThreadState *ts = PyEval_SaveThread();
    rc = kvt_stats(self->c, &st, &n);
    PyEval_RestoreThread(ts);
    client_leave(self);
    if (rc)
        return raise_client(self, rc);
    PyObject *d = PyDict_New();
    for (size_t i = 0; d && i < n; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(st[i].value);
        if (!v || PyDict_SetItemString(d, st[i].name, v) < 0)
            Py_CLEAR(d);
        Py_XDECREF(v);
    }
    kvt_stats_free(st, n);
    return d;
}

static PyObject *client_config_get(ClientObject *self, PyObject *args)
{
    const char *key;
    if (!PyArg_ParseTuple(args, "s:config_get", &key))
        return NULL;
    if (client_enter(self) < 0)
        return NULL;
    char buf[4096];
    int rc;
    PyThreadState *ts = PyEval_SaveThread();
    rc = kvt_config_get(self->c, key, buf, sizeof(buf));
    PyEval_RestoreThread(ts);
    client_leave(self);
    if (rc)
        return raise_client(self, rc);
    return PyUnicode_FromString(buf);
}

static PyObject *client_config_set(ClientObject *self, PyObject *args)
{
    const char *key, *value;
    if (!PyArg_ParseTuple(args, "ss:config_set", &key, &value))
        return NULL;
    if (client_enter(self) < 0)
        return NULL;
    int rc;
    PyThreadState *ts = PyEval_SaveThread();
    rc = kvt_config_set(self->c, key, value);
    PyEval_RestoreThread(ts);
    client_leave(self);
    if (rc)
        return raise_client(self, rc);
    Py_RETURN_NONE;
}

/* ---- Client: contexts and Select (docs/sparse.md) ----------------------------------------- */

static PyObject *client_context_open(ClientObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"ns", "ttl_ms", NULL};
    PyObject *ns_obj;
    uint32_t ttl_ms = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O&:context_open", kwlist, &ns_obj, conv_u32,
                                     &ttl_ms))
        return NULL;
    uint32_t h;
    const NamespaceObject *ns;
    if (ns_from_obj(self, ns_obj, &h, &ns) < 0 || client_enter(self) < 0)
        return NULL;
    uint64_t ctx = 0;
    PyThreadState *ts = PyEval_SaveThread();
    int rc = kvt_context_open(self->c, h, ttl_ms, &ctx);
    PyEval_RestoreThread(ts);
    client_leave(self);
    if (rc)
        return raise_client(self, rc);
    return PyLong_FromUnsignedLongLong(ctx);
}

static PyObject *client_context_append(ClientObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"ctx", "keys", "start_pos", "variants", NULL};
    unsigned long long ctx;
    PyObject *keys_obj, *pos_obj, *variants_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KOO|O:context_append", kwlist, &ctx, &keys_obj,
                                     &pos_obj, &variants_obj))
        return NULL;
    struct kvt_key stack[KEYS_STACK], *keys;
    size_t n;
    if (keys_from_obj(keys_obj, stack, &keys, &n) < 0)
        return NULL;
    uint32_t *variants = NULL;
    uint64_t *pos = NULL;
    PyObject *ret = NULL, *seq = NULL;
    if (variants_from_obj(variants_obj, n, &variants) < 0)
        goto out;
    if (!(seq = PySequence_Fast(pos_obj, "start_pos must be a sequence of integers")))
        goto out;
    if ((size_t)PySequence_Fast_GET_SIZE(seq) != n) {
        PyErr_Format(PyExc_ValueError, "%zu keys but %zd start positions", n,
                     PySequence_Fast_GET_SIZE(seq));
        goto out;
    }
    if (!(pos = PyMem_Malloc((n ? n : 1) * sizeof(*pos)))) {
        PyErr_NoMemory();
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (!conv_u64(PySequence_Fast_GET_ITEM(seq, (Py_ssize_t)i), &pos[i]))
            goto out;
    if (client_enter(self) < 0)
        goto out;
    struct kvt_context_info info = {0};
    PyThreadState *ts = PyEval_SaveThread();
    int rc = kvt_context_append(self->c, ctx, keys, variants, pos, n, &info);
    PyEval_RestoreThread(ts);
    client_leave(self);
    if (rc)
        raise_client(self, rc);
    else
        ret = Py_BuildValue("(IKI)", info.chunks, (unsigned long long)info.tokens,
                            info.without_abstract);
out:
    Py_XDECREF(seq);
    PyMem_Free(pos);
    PyMem_Free(variants);
    keys_free(keys, stack);
    return ret;
}

static PyObject *client_context_close(ClientObject *self, PyObject *args)
{
    unsigned long long ctx;
    if (!PyArg_ParseTuple(args, "K:context_close", &ctx) || client_enter(self) < 0)
        return NULL;
    PyThreadState *ts = PyEval_SaveThread();
    int rc = kvt_context_close(self->c, ctx);
    PyEval_RestoreThread(ts);
    client_leave(self);
    if (rc)
        return raise_client(self, rc);
    Py_RETURN_NONE;
}

/* select(ctx, layer, query, ...) and select_fetch(ns, ctx, layer, query, out, ...): query is a
 * C-contiguous float32 array of shape (n_query_heads, head_dim). Returns (spans, info): spans a
 * list of (chunk, token_first, n_tokens, tier, mass, key, variant), with select_fetch also
 * (dst_off, status, served_from) per run; info a dict of kvt_select_info. */
static PyObject *select_common(ClientObject *self, PyObject *args, PyObject *kw, int fetch)
{
    static char *kwlist[] = {
        "ctx",   "layer",       "query",         "budget_tokens", "budget_fraction",
        "top_p", "sink_tokens", "recent_tokens", "max_spans",     NULL};
    static char *kwlist_fetch[] = {"ns",          "ctx",           "layer",           "query",
                                   "out",         "budget_tokens", "budget_fraction", "top_p",
                                   "sink_tokens", "recent_tokens", "max_spans",       NULL};
    PyObject *ns_obj = NULL, *query_obj, *out_obj = NULL;
    unsigned long long ctx;
    uint32_t layer, budget = 0, sink = 0, recent = 0, max_spans = 1024;
    float fraction = 0.0f, top_p = 0.0f;
    int ok = fetch ? PyArg_ParseTupleAndKeywords(
                         args, kw, "OKO&OO|O&ffO&O&O&:select_fetch", kwlist_fetch, &ns_obj, &ctx,
                         conv_u32, &layer, &query_obj, &out_obj, conv_u32, &budget, &fraction,
                         &top_p, conv_u32, &sink, conv_u32, &recent, conv_u32, &max_spans)
                   : PyArg_ParseTupleAndKeywords(args, kw, "KO&O|O&ffO&O&O&:select", kwlist, &ctx,
                                                 conv_u32, &layer, &query_obj, conv_u32, &budget,
                                                 &fraction, &top_p, conv_u32, &sink, conv_u32,
                                                 &recent, conv_u32, &max_spans);
    if (!ok)
        return NULL;
    if (max_spans == 0 || max_spans > 65536) {
        PyErr_SetString(PyExc_ValueError, "max_spans must be 1 .. 65536");
        return NULL;
    }
    uint32_t h = 0;
    const NamespaceObject *ns;
    if (fetch && ns_from_obj(self, ns_obj, &h, &ns) < 0)
        return NULL;
    Py_buffer q, out = {0};
    if (PyObject_GetBuffer(query_obj, &q, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return NULL;
    PyObject *ret = NULL;
    struct kvt_span_sel *spans = NULL;
    if (q.ndim != 2 || !q.format || strcmp(q.format, "f") || q.shape[0] < 1 || q.shape[1] < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "query must be a float32 array of shape (n_query_heads, head_dim)");
        goto done;
    }
    if (fetch && PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE) < 0)
        goto done;
    if (!(spans = PyMem_Calloc(max_spans, sizeof(*spans)))) {
        PyErr_NoMemory();
        goto done;
    }
    struct kvt_select_req req = {.layer = layer,
                                 .n_query_heads = (uint32_t)q.shape[0],
                                 .head_dim = (uint32_t)q.shape[1],
                                 .query = q.buf,
                                 .budget_tokens = budget,
                                 .budget_fraction = fraction,
                                 .top_p = top_p,
                                 .sink_tokens = sink,
                                 .recent_tokens = recent};
    if (client_enter(self) < 0)
        goto done;
    struct kvt_select_info info = {0};
    PyThreadState *ts = PyEval_SaveThread();
    int rc = fetch ? kvt_select_fetch(self->c, h, ctx, &req, spans, max_spans, out.buf,
                                      (size_t)out.len, &info)
                   : kvt_select(self->c, ctx, &req, spans, max_spans, &info);
    PyEval_RestoreThread(ts);
    if (fetch)
        for (size_t i = 0; i < info.n_spans; i++)
            if (is_session_error(spans[i].status))
                taint_range(self, out.buf, (size_t)out.len);
    client_leave(self);
    /* select_fetch answers per run: a run that failed has its own status in the list. */
    if (rc && !(fetch && info.n_spans)) {
        raise_client(self, rc);
        goto done;
    }
    PyObject *list = PyList_New((Py_ssize_t)info.n_spans);
    for (size_t i = 0; list && i < info.n_spans; i++) {
        const struct kvt_span_sel *s = &spans[i];
        PyObject *key = PyBytes_FromStringAndSize((const char *)&s->key, 16);
        PyObject *t =
            !key    ? NULL
            : fetch ? Py_BuildValue("(IIIIdNInII)", s->chunk, s->token_first, s->n_tokens,
                                    (unsigned)s->tier, (double)s->mass, key, s->variant,
                                    (Py_ssize_t)s->dst_off, s->status, (unsigned)s->served_from)
                    : Py_BuildValue("(IIIIdNI)", s->chunk, s->token_first, s->n_tokens,
                                    (unsigned)s->tier, (double)s->mass, key, s->variant);
        if (!t) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    if (list)
        ret = Py_BuildValue("(N{sIsKsKsd})", list, "spans_scored", info.spans_scored,
                            "tokens_selected", (unsigned long long)info.tokens_selected,
                            "context_tokens", (unsigned long long)info.context_tokens,
                            "mass_selected", (double)info.mass_selected);
done:
    PyMem_Free(spans);
    if (out.obj)
        PyBuffer_Release(&out);
    PyBuffer_Release(&q);
    return ret;
}

static PyObject *client_select(ClientObject *self, PyObject *args, PyObject *kw)
{
    return select_common(self, args, kw, 0);
}

static PyObject *client_select_fetch(ClientObject *self, PyObject *args, PyObject *kw)
{
    return select_common(self, args, kw, 1);
}

/* ---- Client: asynchronous submission ------------------------------------------------------- */

/* A submission's items and the views that pin their buffers until every item completed. */
struct py_sub {
    struct batch b;
    enum batch_kind kind;
    size_t open;
};

static void sub_capsule_free(PyObject *cap)
{
    struct py_sub *s = PyCapsule_GetPointer(cap, "kvtier.submission");
    if (!s)
        return;
    batch_free(&s->b);
    PyMem_Free(s);
}

static PyObject *submit_common(ClientObject *self, PyObject *args, enum batch_kind kind)
{
    static const char *const fmt[] = {"OO:submit_put", "OO:submit_get", "OO:submit_get_range"};
    static const enum kvt_submit_op ops[] = {KVT_SUBMIT_PUT, KVT_SUBMIT_GET, KVT_SUBMIT_GET_RANGE};
    PyObject *ns_obj, *items_obj;
    if (!PyArg_ParseTuple(args, fmt[kind], &ns_obj, &items_obj))
        return NULL;
    uint32_t h;
    const NamespaceObject *ns;
    if (ns_from_obj(self, ns_obj, &h, &ns) < 0)
        return NULL;
    if (!self->subs && !(self->subs = PyDict_New()))
        return NULL;
    struct py_sub *s = PyMem_Calloc(1, sizeof(*s));
    if (!s)
        return PyErr_NoMemory();
    if (batch_from_obj(items_obj, kind, &s->b) < 0) {
        PyMem_Free(s);
        return NULL;
    }
    s->kind = kind;
    s->open = s->b.n;
    PyObject *cap = PyCapsule_New(s, "kvtier.submission", sub_capsule_free);
    if (!cap) {
        batch_free(&s->b);
        PyMem_Free(s);
        return NULL;
    }
    if (client_enter(self) < 0) {
        Py_DECREF(cap);
        return NULL;
    }
    uint64_t ticket = 0;
    PyThreadState *ts = PyEval_SaveThread();
    int rc = kvt_submit(self->c, h, ops[kind], s->b.items, s->b.n, &ticket);
    PyEval_RestoreThread(ts);
    PyObject *key = NULL;
    if (!rc) {
        /* The items are pinned from here on: if the ticket cannot be recorded, the capsule is
         * leaked rather than freed under the library. */
        key = PyLong_FromUnsignedLongLong(ticket);
        if (!key || PyDict_SetItem(self->subs, key, cap) < 0)
            Py_CLEAR(key);
        else
            Py_DECREF(cap);
    } else {
        Py_DECREF(cap);
    }
    client_leave(self);
    if (rc)
        return raise_client(self, rc);
    return key;
}

static PyObject *client_submit_put(ClientObject *self, PyObject *args)
{
    return submit_common(self, args, BATCH_PUT);
}

static PyObject *client_submit_get(ClientObject *self, PyObject *args)
{
    return submit_common(self, args, BATCH_GET);
}

static PyObject *client_submit_get_range(ClientObject *self, PyObject *args)
{
    return submit_common(self, args, BATCH_RANGE);
}

/* One poll (GIL released); completions are turned into tuples, and submissions whose items all
 * completed release their buffers. max is 1..4096. */
static PyObject *poll_once(ClientObject *self, uint32_t timeout_ms, size_t max)
{
    struct kvt_completion *cq = PyMem_Malloc(max * sizeof(*cq));
    if (!cq)
        return PyErr_NoMemory();
    size_t n = 0;
    PyThreadState *ts = PyEval_SaveThread();
    int rc = kvt_poll(self->c, cq, max, timeout_ms, &n);
    PyEval_RestoreThread(ts);
    PyObject *ret = rc ? NULL : PyList_New((Py_ssize_t)n);
    for (size_t i = 0; i < n; i++) {
        PyObject *key = PyLong_FromUnsignedLongLong(cq[i].ticket);
        PyObject *cap = key && self->subs ? PyDict_GetItemWithError(self->subs, key) : NULL;
        struct py_sub *s = cap ? PyCapsule_GetPointer(cap, "kvtier.submission") : NULL;
        const struct kvt_item *it = cq[i].item;
        if (s && s->kind != BATCH_PUT && is_session_error(it->status))
            taint_range(self, s->b.views[cq[i].index].buf, (size_t)s->b.views[cq[i].index].len);
        int has_len = s && s->kind != BATCH_PUT && (!it->status || it->status == KVT_E_SMALLBUF);
        if (ret) {
            PyObject *t = Py_BuildValue(
                "(KniKI)", (unsigned long long)cq[i].ticket, (Py_ssize_t)cq[i].index, it->status,
                has_len ? (unsigned long long)it->len : 0ull, (unsigned int)it->tier);
            if (t)
                PyList_SET_ITEM(ret, (Py_ssize_t)i, t);
            else
                Py_CLEAR(ret);
        }
        if (s && --s->open == 0 && PyDict_DelItem(self->subs, key) < 0)
            Py_CLEAR(ret);
        Py_XDECREF(key);
    }
    PyMem_Free(cq);
    if (rc)
        return raise_client(self, rc);
    return ret;
}

static PyObject *client_poll(ClientObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"timeout", "max", NULL};
    double timeout = 0.0;
    Py_ssize_t max = 64;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|dn:poll", kwlist, &timeout, &max))
        return NULL;
    if (!(timeout >= 0) || timeout > 4294967.0 || max < 1 || max > 4096) {
        PyErr_SetString(PyExc_ValueError, "poll: timeout is seconds >= 0, max 1..4096");
        return NULL;
    }
    if (client_enter(self) < 0)
        return NULL;
    PyObject *ret = poll_once(self, (uint32_t)(timeout * 1000.0 + 0.5), (size_t)max);
    client_leave(self);
    return ret;
}

static PyObject *client_cancel(ClientObject *self, PyObject *args)
{
    unsigned long long ticket;
    if (!PyArg_ParseTuple(args, "K:cancel", &ticket))
        return NULL;
    if (client_enter(self) < 0)
        return NULL;
    size_t n = 0;
    int rc = kvt_cancel(self->c, ticket, &n);
    client_leave(self);
    if (rc)
        return raise_client(self, rc);
    return PyLong_FromSize_t(n);
}

static PyObject *client_fileno(ClientObject *self, PyObject *unused)
{
    (void)unused;
    if (client_enter(self) < 0)
        return NULL;
    int fd = kvt_fd(self->c);
    client_leave(self);
    return PyLong_FromLong(fd);
}

static PyObject *client_get_pending(ClientObject *self, void *unused)
{
    (void)unused;
    return PyLong_FromSize_t(self->c ? kvt_pending(self->c) : 0);
}

/* close(): unsent items are canceled and the sent ones waited for (at most about one session
 * timeout), so that no buffer is released while the daemon could still fill it. */
static void subs_drain(ClientObject *self)
{
    if (!self->subs || !self->c || self->busy || self->closing)
        return;
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    Py_ssize_t pos = 0;
    PyObject *key, *val;
    while (PyDict_Next(self->subs, &pos, &key, &val))
        kvt_cancel(self->c, PyLong_AsUnsignedLongLong(key), NULL);
    PyErr_Clear();
    self->busy = 1;
    while (kvt_pending(self->c) > 0) {
        PyObject *r = poll_once(self, 1000, 256);
        if (!r) {
            PyErr_Clear();
            break;
        }
        Py_DECREF(r);
    }
    self->busy = 0;
    PyErr_Restore(et, ev, etb);
}

static PyMethodDef client_methods[] = {
    {"close", (PyCFunction)client_close, METH_NOARGS,
     "Ends the session; the arena stays mapped while views of its buffers exist."},
    {"__enter__", (PyCFunction)client_enter_ctx, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)client_exit_ctx, METH_VARARGS, NULL},
    {"register", (PyCFunction)(void (*)(void))client_register, METH_VARARGS | METH_KEYWORDS,
     "register(model_id, layers, kv_heads, head_dim, dtype='fp16', tokens_per_chunk=256, "
     "rope_theta=0.0, rotary_dims=0, rope_style=0, allow_lossy=False) -> Namespace"},
    {"arena_alloc", (PyCFunction)client_arena_alloc, METH_VARARGS,
     "arena_alloc(nbytes) -> ArenaBuffer (zero-copy Put source and Get destination)"},
    {"put", (PyCFunction)(void (*)(void))client_put, METH_VARARGS | METH_KEYWORDS,
     "put(ns, key, buf, n_tokens=0, variant=0): stores one chunk"},
    {"get", (PyCFunction)(void (*)(void))client_get, METH_VARARGS | METH_KEYWORDS,
     "get(ns, key, out=None, variant=0) -> bytes, or the length written into out"},
    {"get_range", (PyCFunction)(void (*)(void))client_get_range, METH_VARARGS | METH_KEYWORDS,
     "get_range(ns, key, layer, token_first, n_tokens, out=None, variant=0) -> bytes or length"},
    {"put_batch", (PyCFunction)client_put_batch, METH_VARARGS,
     "put_batch(ns, [(key, buf[, n_tokens[, variant]]), ...]) -> list of statuses"},
    {"get_batch", (PyCFunction)client_get_batch, METH_VARARGS,
     "get_batch(ns, [(key, out[, variant]), ...]) -> list of (status, length, tier)"},
    {"get_range_batch", (PyCFunction)client_get_range_batch, METH_VARARGS,
     "get_range_batch(ns, [(key, layer, token_first, n_tokens, out[, variant]), ...]) -> list "
     "of (status, length, tier)"},
    {"lookup", (PyCFunction)(void (*)(void))client_lookup, METH_VARARGS | METH_KEYWORDS,
     "lookup(ns, keys, variants=None) -> number of leading keys cached"},
    {"lookup_tiers", (PyCFunction)(void (*)(void))client_lookup_tiers, METH_VARARGS | METH_KEYWORDS,
     "lookup_tiers(ns, keys, variants=None) -> tier of each leading key cached"},
    {"lookup_hold", (PyCFunction)(void (*)(void))client_lookup_hold, METH_VARARGS | METH_KEYWORDS,
     "lookup_hold(ns, keys, hold_ms, variants=None) -> (hits, hold): the leading hits pinned "
     "against eviction for hold_ms (release_hold lets go sooner; 0 when no hit)"},
    {"release_hold", (PyCFunction)client_release_hold, METH_VARARGS,
     "release_hold(hold) -> chunks it pinned (any client of the tenant may release it)"},
    {"delete", (PyCFunction)(void (*)(void))client_delete, METH_VARARGS | METH_KEYWORDS,
     "delete(ns, keys, variants=None) -> list of statuses (0, E_NOTFOUND, E_INUSE)"},
    {"context_open", (PyCFunction)(void (*)(void))client_context_open, METH_VARARGS | METH_KEYWORDS,
     "context_open(ns, ttl_ms=0) -> ctx: the chunks of one running sequence, for select"},
    {"context_append", (PyCFunction)(void (*)(void))client_context_append,
     METH_VARARGS | METH_KEYWORDS,
     "context_append(ctx, keys, start_pos, variants=None) -> (chunks, tokens, "
     "without_abstract): all or nothing"},
    {"context_close", (PyCFunction)client_context_close, METH_VARARGS, "context_close(ctx)"},
    {"select", (PyCFunction)(void (*)(void))client_select, METH_VARARGS | METH_KEYWORDS,
     "select(ctx, layer, query, budget_tokens=0, budget_fraction=0.0, top_p=0.0, "
     "sink_tokens=0, recent_tokens=0, max_spans=1024) -> (spans, info): the spans of one layer "
     "worth reading for a float32 query of shape (n_query_heads, head_dim); spans are "
     "(chunk, token_first, n_tokens, tier, mass, key, variant)"},
    {"select_fetch", (PyCFunction)(void (*)(void))client_select_fetch, METH_VARARGS | METH_KEYWORDS,
     "select_fetch(ns, ctx, layer, query, out, ...) -> (spans, info): select, then the rows of "
     "every run into out; spans also carry (dst_off, status, served_from)"},
    {"submit_put", (PyCFunction)client_submit_put, METH_VARARGS,
     "submit_put(ns, [(key, buf[, n_tokens[, variant]]), ...]) -> ticket: starts the Puts and "
     "returns; the buffers stay pinned until poll() returned every item"},
    {"submit_get", (PyCFunction)client_submit_get, METH_VARARGS,
     "submit_get(ns, [(key, out[, variant]), ...]) -> ticket"},
    {"submit_get_range", (PyCFunction)client_submit_get_range, METH_VARARGS,
     "submit_get_range(ns, [(key, layer, token_first, n_tokens, out[, variant]), ...]) -> ticket"},
    {"poll", (PyCFunction)(void (*)(void))client_poll, METH_VARARGS | METH_KEYWORDS,
     "poll(timeout=0.0, max=64) -> list of (ticket, index, status, length, tier) of finished "
     "items, waiting up to timeout seconds for the first"},
    {"cancel", (PyCFunction)client_cancel, METH_VARARGS,
     "cancel(ticket) -> items not sent yet, which complete with E_CANCELED"},
    {"fileno", (PyCFunction)client_fileno, METH_NOARGS,
     "fileno() -> the session socket, readable when answers arrived (valid until the next call)"},
    {"ping", (PyCFunction)client_ping, METH_NOARGS, "A round trip to the daemon."},
    {"stats", (PyCFunction)client_stats, METH_NOARGS, "stats() -> dict of name: value"},
    {"config_get", (PyCFunction)client_config_get, METH_VARARGS, "config_get(key) -> str"},
    {"config_set", (PyCFunction)client_config_set, METH_VARARGS, "config_set(key, value)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef client_getset[] = {
    {"closed", (getter)client_get_closed, NULL, "True after close()", NULL},
    {"busy", (getter)client_get_busy, NULL, "a call is running (in another thread)", NULL},
    {"pending", (getter)client_get_pending, NULL,
     "items submitted whose completion poll() has not returned", NULL},
    {"socket_path", (getter)client_get_socket_path, NULL, "the socket the session uses", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ClientType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kvtier.Client",
    .tp_basicsize = sizeof(ClientObject),
    .tp_dealloc = (destructor)client_dealloc,
    .tp_repr = (reprfunc)client_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Client(socket=None, tenant=None, timeout=5.0, arena_bytes=0, spin_us=0, "
              "daemon_uid=-1, batch_window=0, arena=None): a session with kvtierd. arena=(fd, "
              "buffer[, stage_offset, stage_bytes]) makes the caller's own sealed memfd (mapped "
              "as buffer, e.g. mmap.mmap(fd, size)) the transfer arena. Not thread-safe: one "
              "client per thread, or a lock.",
    .tp_weaklistoffset = offsetof(ClientObject, weakreflist),
    .tp_methods = client_methods,
    .tp_getset = client_getset,
    .tp_init = (initproc)client_init,
    .tp_new = client_new,
};

/* ---- module functions ----------------------------------------------------------------------- */

static PyObject *mod_chunk_keys(PyObject *mod, PyObject *args, PyObject *kw)
{
    (void)mod;
    static char *kwlist[] = {"ns", "tokens", "parent", NULL};
    PyObject *ns, *tokens, *parent = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O|O:chunk_keys", kwlist, &NamespaceType, &ns,
                                     &tokens, &parent))
        return NULL;
    return chunk_keys_impl(&((NamespaceObject *)ns)->info, tokens, parent);
}

static PyObject *mod_key_format(PyObject *mod, PyObject *key_obj)
{
    (void)mod;
    struct kvt_key key;
    if (key_from_obj(key_obj, &key) < 0)
        return NULL;
    char buf[33];
    return PyUnicode_FromString(kvt_key_format(&key, buf));
}

static PyObject *mod_key_parse(PyObject *mod, PyObject *args)
{
    (void)mod;
    const char *text;
    if (!PyArg_ParseTuple(args, "s:key_parse", &text))
        return NULL;
    struct kvt_key key;
    int rc = kvt_key_parse(text, &key);
    if (rc)
        return raise_kvt(rc);
    return PyBytes_FromStringAndSize((const char *)&key, 16);
}

static PyObject *mod_strerror(PyObject *mod, PyObject *args)
{
    (void)mod;
    int code;
    if (!PyArg_ParseTuple(args, "i:strerror", &code))
        return NULL;
    return PyUnicode_FromString(kvt_strerror(code));
}

static PyObject *mod_error_name(PyObject *mod, PyObject *args)
{
    (void)mod;
    int code;
    if (!PyArg_ParseTuple(args, "i:error_name", &code))
        return NULL;
    return PyUnicode_FromString(kvt_strerror_name(code));
}

/* The error list of include/kvtier/errors.h as [(name, code, text)], generated from the same
 * X-macro, so the Python classes can never miss a code. */
static PyObject *mod_error_list(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
    PyObject *l = PyList_New(0);
#define KVT__PY_ERR(name, code, text)                                                              \
    if (l) {                                                                                       \
        PyObject *t = Py_BuildValue("(sis)", #name, code, text);                                   \
        if (!t || PyList_Append(l, t) < 0)                                                         \
            Py_CLEAR(l);                                                                           \
        Py_XDECREF(t);                                                                             \
    }
    KVT_ERRORS(KVT__PY_ERR)
#undef KVT__PY_ERR
    return l;
}

static PyObject *mod_set_errors(PyObject *mod, PyObject *args)
{
    (void)mod;
    PyObject *base, *classes, *os;
    if (!PyArg_ParseTuple(args, "OO!O:_set_errors", &base, &PyDict_Type, &classes, &os))
        return NULL;
    if (!PyExceptionClass_Check(base) || !PyExceptionClass_Check(os)) {
        PyErr_SetString(PyExc_TypeError, "_set_errors needs an exception class");
        return NULL;
    }
    Py_INCREF(base);
    Py_INCREF(classes);
    Py_INCREF(os);
    Py_XSETREF(error_base, base);
    Py_XSETREF(error_classes, classes);
    Py_XSETREF(error_os, os);
    Py_RETURN_NONE;
}

static PyObject *mod_dtype_size(PyObject *mod, PyObject *arg)
{
    (void)mod;
    uint32_t d;
    if (dtype_from_obj(arg, &d) < 0)
        return NULL;
    return PyLong_FromSize_t(kvt_dtype_size((enum kvt_dtype)d));
}

static PyObject *mod_version(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
    return PyUnicode_FromString(kvt_version());
}

static PyMethodDef mod_methods[] = {
    {"chunk_keys", (PyCFunction)(void (*)(void))mod_chunk_keys, METH_VARARGS | METH_KEYWORDS,
     "chunk_keys(ns, tokens, parent=None) -> list of 16-byte chained keys"},
    {"key_format", mod_key_format, METH_O, "key_format(key) -> 32 hex digits (hi, then lo)"},
    {"key_parse", mod_key_parse, METH_VARARGS, "key_parse(text) -> 16-byte key"},
    {"strerror", mod_strerror, METH_VARARGS, "strerror(code) -> text"},
    {"error_name", mod_error_name, METH_VARARGS, "error_name(code) -> 'E_...'"},
    {"error_list", mod_error_list, METH_NOARGS, "[(name, code, text)] of every kvtier error"},
    {"_set_errors", mod_set_errors, METH_VARARGS, NULL},
    {"dtype_size", mod_dtype_size, METH_O, "dtype_size(dtype) -> bytes per element"},
    {"version", mod_version, METH_NOARGS, "release of the libkvtier linked in"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kvtier._kvtier",
    .m_doc = "C extension over libkvtier; use the kvtier package.",
    .m_size = -1,
    .m_methods = mod_methods,
};

PyMODINIT_FUNC PyInit__kvtier(void)
{
    if (PyType_Ready(&ClientType) < 0 || PyType_Ready(&ArenaBufferType) < 0 ||
        PyType_Ready(&NamespaceType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Client", (PyObject *)&ClientType) < 0 ||
        PyModule_AddObjectRef(m, "ArenaBuffer", (PyObject *)&ArenaBufferType) < 0 ||
        PyModule_AddObjectRef(m, "Namespace", (PyObject *)&NamespaceType) < 0 ||
        PyModule_AddIntConstant(m, "ABI_VERSION", KVT_ABI_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "TENANT_MAX", KVT_TENANT_MAX) < 0 ||
        PyModule_AddIntConstant(m, "MODEL_ID_MAX", KVT_MODEL_ID_MAX) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
