/*
 * kvt_strerror and kvt_strerror_name, generated from the one error list in <kvtier/errors.h>.
 * System errors travel as -errno and are described by the C library.
 */
#include <string.h>

#include "kvtier/errors.h"

const char *kvt_strerror(int err)
{
    switch (err) {
#define KVT__ERR_TEXT(name, code, text)                                                            \
    case code:                                                                                     \
        return text;
        KVT_ERRORS(KVT__ERR_TEXT)
#undef KVT__ERR_TEXT
    default:
        break;
    }
    if (err < 0 && err > -4096)
        return strerror(-err);
    return "unknown error";
}

const char *kvt_strerror_name(int err)
{
    switch (err) {
#define KVT__ERR_NAME(name, code, text)                                                            \
    case code:                                                                                     \
        return #name;
        KVT_ERRORS(KVT__ERR_NAME)
#undef KVT__ERR_NAME
    default:
        break;
    }
    if (err < 0 && err > -4096) {
        const char *n = strerrorname_np(-err);
        return n ? n : "ERRNO";
    }
    return "UNKNOWN";
}
