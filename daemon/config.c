/*
 * The daemon's config table. Each entry documents itself; --dump-config prints them all.
 * Limits keep every value in a range the daemon is tested with.
 */
#include <stddef.h>

#include "daemon/config.h"

#define U64(k, f, d, lo, hi, fl, doc)                                                              \
    {                                                                                              \
        k, KVT_CFG_U64, offsetof(struct kvt_dconfig, f), 0, d, lo, hi, NULL, fl, doc               \
    }
#define BYTES(k, f, d, lo, hi, fl, doc)                                                            \
    {                                                                                              \
        k, KVT_CFG_BYTES, offsetof(struct kvt_dconfig, f), 0, d, lo, hi, NULL, fl, doc             \
    }
#define STR(k, f, d, fl, doc)                                                                      \
    {                                                                                              \
        k, KVT_CFG_STR, offsetof(struct kvt_dconfig, f), sizeof(((struct kvt_dconfig *)0)->f), d,  \
            1, 0, NULL, fl, doc                                                                    \
    }
#define BOOL(k, f, d, fl, doc)                                                                     \
    {                                                                                              \
        k, KVT_CFG_BOOL, offsetof(struct kvt_dconfig, f), 0, d, 1, 0, NULL, fl, doc                \
    }

static const char *const log_levels[] = {"error", "warn", "info", "debug", NULL};

#define KIB 1024.0
#define GIB (1024.0 * 1024.0 * 1024.0)

static const struct kvt_cfg_entry entries[] = {
    STR("socket", socket, "/tmp/kvtier.sock", 0, "Unix socket path the daemon listens on"),
    STR("socket_mode", socket_mode, "0660", 0,
        "Permissions of the socket file (octal); the directory's permissions also apply"),
    STR("allowed_uids", allowed_uids, "", KVT_CFG_RUNTIME,
        "Comma-separated uids allowed to connect (checked with SO_PEERCRED); empty = any uid "
        "that can open the socket"),
    STR("data_dir", data_dir, "/tmp/kvtier-data", 0,
        "Directory for the daemon's persistent state (disk tier files, checkpoints)"),
    {"log_level", KVT_CFG_ENUM, offsetof(struct kvt_dconfig, log_level),
     sizeof(((struct kvt_dconfig *)0)->log_level), "info", 1, 0, log_levels, KVT_CFG_RUNTIME,
     "Log verbosity: error, warn, info or debug"},
    U64("max_clients", max_clients, "256", 1, 65536, KVT_CFG_RUNTIME,
        "Most client connections at once; further ones get E_BUSY and are closed"),
    BYTES("max_frame_bytes", max_frame_bytes, "1M", 4 * KIB, 64 * 1024 * KIB, 0,
          "Largest protocol frame accepted; a longer one gets E_TOOBIG and closes the connection"),
    BYTES("inline_max_bytes", inline_max_bytes, "256K", 0, 32 * 1024 * KIB, KVT_CFG_RUNTIME,
          "Largest chunk that may travel inline in a frame (must stay below max_frame_bytes)"),
    BYTES("max_arena_bytes", max_arena_bytes, "16G", 4 * KIB, 1024 * GIB, 0,
          "Largest transfer arena a client may share at Hello"),
    U64("max_inflight_per_conn", max_inflight_per_conn, "128", 1, 4096, 0,
        "Requests of one connection being served at once; more wait in the socket"),
    U64("workers", workers, "0", 0, 64, 0,
        "Copy worker threads; 0 = one per core minus one (min 1)"),
    BYTES("copy_offload_bytes", copy_offload_bytes, "2M", 0, 1024 * GIB, KVT_CFG_RUNTIME,
          "Copies at least this large run on a worker instead of the event loop"),
    U64("busy_poll_us", busy_poll_us, "50", 0, 100000, KVT_CFG_RUNTIME,
        "After handling events, the loop polls without sleeping this long before it blocks "
        "(lower latency for busy clients; 0 = always block)"),
    U64("max_namespaces", max_namespaces, "256", 1, 65536, 0, "Most registered namespaces"),
    U64("index.max_objects", index_max_objects, "262144", 16, 1u << 30, 0,
        "Most chunks the index tracks across all tiers (about 80 bytes each, allocated at start)"),
    BYTES("cpu.arena_bytes", cpu_arena_bytes, "1G", 64 * KIB, 4096 * GIB, 0,
          "Size of the CPU tier's shared-memory arena"),
    BYTES("cpu.page_bytes", cpu_page_bytes, "32M", 4 * KIB, 4 * GIB, 0,
          "Slab page size of the CPU tier: also the largest chunk it stores (multiple of 4K)"),
    BOOL("cpu.hugepages", cpu_hugepages, "true", 0,
         "Back the CPU arena with huge pages when the system has them reserved"),
    BOOL("cpu.prefault", cpu_prefault, "false", 0,
         "Touch the whole CPU arena at start (slower start, no page faults later)"),
};

const struct kvt_cfg_table kvt_dconfig_table = {entries, sizeof(entries) / sizeof(entries[0])};
