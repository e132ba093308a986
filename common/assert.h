/*
 * Always-on assertions, for programmer errors only (STYLE.md): environmental failures are
 * returned and counted, never asserted. A failed assertion names the expression and the place,
 * then aborts (a core for the post-mortem).
 */
#ifndef KVT_COMMON_ASSERT_H
#define KVT_COMMON_ASSERT_H

#include <stdio.h>
#include <stdlib.h>

#define KVT_ASSERT(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "kvtier: assertion failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);  \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
