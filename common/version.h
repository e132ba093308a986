/* kvtier's version, reported by Hello and --version. */
#ifndef KVT_COMMON_VERSION_H
#define KVT_COMMON_VERSION_H

#define KVT_VERSION_STRING "0.1.0"

#endif
