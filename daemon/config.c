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

#define DOUBLE(k, f, d, lo, hi, fl, doc)                                                           \
    {                                                                                              \
        k, KVT_CFG_DOUBLE, offsetof(struct kvt_dconfig, f), 0, d, lo, hi, NULL, fl, doc            \
    }
#define ENUM(k, f, d, choices, fl, doc)                                                            \
    {                                                                                              \
        k, KVT_CFG_ENUM, offsetof(struct kvt_dconfig, f), sizeof(((struct kvt_dconfig *)0)->f), d, \
            1, 0, choices, fl, doc                                                                 \
    }

static const char *const log_levels[] = {"error", "warn", "info", "debug", NULL};
static const char *const codecs[] = {"none", "lz4", "zstd", NULL};
static const char *const write_policies[] = {"write-back", "write-through", NULL};
static const char *const admissions[] = {"on-evict", "second-access", NULL};
static const char *const dirty_full_policies[] = {"drop", "reject", NULL};

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
    BYTES("copy_offload_bytes", copy_offload_bytes, "512K", 0, 1024 * GIB, KVT_CFG_RUNTIME,
          "Copies at least this large are split into stripes copied in parallel by the workers "
          "and the event loop; smaller ones are done on the loop"),
    BYTES("copy_stripe_bytes", copy_stripe_bytes, "256K", 4 * KIB, 1024 * GIB, KVT_CFG_RUNTIME,
          "Smallest stripe of a split copy (a copy of less than two stripes goes to one worker)"),
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
    DOUBLE("cpu.high_watermark", cpu_high_watermark, "0.9", 0.1, 1.0, KVT_CFG_RUNTIME,
           "When less than (1 - this) of the CPU tier is free for new chunks, its coldest chunks "
           "are written back to disk ahead of eviction"),
    BYTES("disk.bytes", disk_bytes, "0", 0, 1e15, 0,
          "Capacity of the disk tier, split over disk.paths; 0 = no disk tier"),
    STR("disk.paths", disk_paths, "", 0,
        "Comma-separated data files or block devices of the disk tier; empty = "
        "data_dir/disk.0"),
    U64("disk.queue_depth", disk_queue_depth, "64", 1, 4096, 0,
        "io_uring entries and most disk I/Os in flight"),
    BYTES("disk.staging_bytes", disk_staging_bytes, "128M", 64 * KIB, 64 * GIB, 0,
          "Registered staging buffers for disk I/O (at least one disk.object_bytes_max)"),
    BYTES("disk.object_bytes_max", disk_object_bytes_max, "8M", 4 * KIB, 4 * GIB, 0,
          "Largest chunk the disk tier stores; larger ones stay in DRAM only"),
    U64("disk.objects_max", disk_objects_max, "262144", 16, 1u << 30, 0,
        "Most objects on disk (sizes the disk index at start)"),
    ENUM("disk.codec", disk_codec, "lz4", codecs, 0,
         "Lossless compression on disk after byte-shuffle: none, lz4 or zstd"),
    U64("disk.codec_level", disk_codec_level, "1", 1, 19, 0, "zstd level, or lz4 acceleration"),
    DOUBLE("disk.high_watermark", disk_high_watermark, "0.95", 0.1, 1.0, KVT_CFG_RUNTIME,
           "Above this fraction of the disk tier in use, chunks only on disk are evicted, "
           "coldest first"),
    DOUBLE("disk.min_saving", disk_min_saving, "0.1", 0, 0.99, 0,
           "Keep the compressed form only when it saves at least this fraction"),
    BOOL("disk.allow_buffered", disk_allow_buffered, "false", 0,
         "Allow buffered I/O where O_DIRECT is refused (it fills the page cache)"),
    U64("disk.io_errors_max", disk_io_errors_max, "8", 1, 1000000, 0,
        "Consecutive failed disk I/Os that latch the disk tier failed"),
    U64("disk.fault_fail_next_io", disk_fault_fail_next_io, "0", 0, 1000000, KVT_CFG_RUNTIME,
        "Fault injection for tests: fail the next N disk I/Os"),
    U64("disk.fault_errno", disk_fault_errno, "0", 0, 4095, KVT_CFG_RUNTIME,
        "Fault injection for tests: errno of injected failures (0 = EIO; 28 = ENOSPC)"),
    ENUM("tier.write_policy", write_policy, "write-back", write_policies, 0,
         "write-back: a Put is answered once in DRAM and written to disk under pressure; "
         "write-through: a Put is answered once durable on disk"),
    ENUM("tier.disk_admission", disk_admission, "on-evict", admissions, KVT_CFG_RUNTIME,
         "Which chunks leaving DRAM are written to disk: on-evict (all) or second-access (only "
         "chunks read at least once)"),
    ENUM("tier.dirty_full", dirty_full, "drop", dirty_full_policies, KVT_CFG_RUNTIME,
         "Write-back, DRAM full of chunks not yet on disk: drop the coldest of them (counted in "
         "tier.dropped_dirty) or reject the Put with E_BUSY until the disk catches up"),
};

const struct kvt_cfg_table kvt_dconfig_table = {entries, sizeof(entries) / sizeof(entries[0])};
