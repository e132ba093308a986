/*
 * The library's own release. It is compiled into libkvtier from the header's KVT_VERSION_*
 * macros, so a program that calls kvt_version() learns which build it actually runs against,
 * whatever header it was compiled with.
 */
#include "kvtier/kvtier.h"

#define STR2(x) #x
#define STR(x) STR2(x)

const char *kvt_version(void)
{
    return STR(KVT_VERSION_MAJOR) "." STR(KVT_VERSION_MINOR) "." STR(KVT_VERSION_PATCH);
}
