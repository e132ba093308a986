/*
 * The daemon's config table. Each entry documents itself; --dump-config prints them all.
 * Limits keep every value in a range the daemon is tested with.
 */
#include <stddef.h>
#include <stdio.h>
#include <sys/resource.h>

#include "daemon/auth.h"
#include "daemon/config.h"
#include "daemon/metrics.h"
#include "kvtier/errors.h"

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
static const char *const evictions[] = {"lru", "cost", NULL};
static const char *const checksum_policies[] = {"required", "optional", NULL};
static const char *const span_kinds[] = {"none", "fixed", "variable", NULL};
static const char *const forms[] = {"fp16", "q8", "q4", NULL};
static const char *const cold_forms[] = {"same", "fp16", "q8", "q4", NULL};

#define ADMIN (KVT_CFG_RUNTIME | KVT_CFG_ADMIN)
#define FAULT (KVT_CFG_RUNTIME | KVT_CFG_ADMIN | KVT_CFG_FAULT)

#define KIB 1024.0
#define GIB (1024.0 * 1024.0 * 1024.0)

static const struct kvt_cfg_entry entries[] = {
    STR("socket", socket, "", 0,
        "Unix socket path the daemon listens on; empty = /run/kvtier/kvtier.sock as root, else "
        "$XDG_RUNTIME_DIR/kvtier/kvtier.sock, else /tmp/kvtier-<uid>/kvtier.sock (the daemon "
        "creates the directory and refuses one that others could write to)"),
    STR("socket_mode", socket_mode, "0660", 0,
        "Permissions of the socket file (octal); the directory's permissions also apply"),
    STR("allowed_uids", allowed_uids, "", ADMIN,
        "Comma-separated uids allowed to connect (checked with SO_PEERCRED); empty = any uid "
        "that can open the socket"),
    STR("admin_uids", admin_uids, "", 0,
        "Comma-separated uids that may change admin keys at run time; empty = root and the "
        "daemon's own uid"),
    STR("tenants", tenants, "", ADMIN,
        "Which peers may act for which tenant: 'name=uid:N,gid:N;name2=uid:N'. Every "
        "connection may act for its own uid's tenant 'uid-<uid>' (the default at Hello)"),
    BOOL("fault_injection", fault_injection, "false", 0,
         "Enable the fault-injection keys (disk.fault_*): for tests only"),
    ENUM("put_checksum", put_checksum, "required", checksum_policies, ADMIN,
         "Puts from the transfer arena must carry their payload checksum (required) or may omit "
         "it (optional); a checksum that is sent is always verified"),
    U64("quota.namespaces_per_tenant", quota_namespaces, "64", 1, 65536, ADMIN,
        "Most namespaces one tenant may hold registered at once; namespaces that no connection "
        "holds and that store no chunk are reclaimed when the table or the quota is full"),
    DOUBLE("quota.objects_share", quota_objects_share, "1.0", 0.001, 1.0, ADMIN,
           "Largest share of index.max_objects one tenant's chunks may take; beyond it its Puts "
           "get E_QUOTA (1.0 = no per-tenant limit)"),
    DOUBLE("quota.cpu_share", quota_cpu_share, "1.0", 0.001, 1.0, ADMIN,
           "Largest share of the CPU tier one tenant's chunks may hold; a Put beyond it first "
           "evicts that tenant's own coldest chunks, and gets E_QUOTA only when none can go "
           "(1.0 = no per-tenant limit)"),
    STR("data_dir", data_dir, "/tmp/kvtier-data", 0,
        "Directory for the daemon's persistent state (disk tier files, checkpoints)"),
    {"log_level", KVT_CFG_ENUM, offsetof(struct kvt_dconfig, log_level),
     sizeof(((struct kvt_dconfig *)0)->log_level), "info", 1, 0, log_levels, ADMIN,
     "Log verbosity: error, warn, info or debug"},
    STR("log_file", log_file, "", 0,
        "Log to this file (appended; reopened on SIGHUP, for logrotate) instead of stderr; "
        "empty = stderr. Lines are written by a log thread and dropped (counted in "
        "log_lines_dropped) rather than block the daemon when the output cannot keep up"),
    U64("max_clients", max_clients, "256", 1, 65536, ADMIN,
        "Most client connections at once; further ones get E_CONNLIMIT and are closed (must fit "
        "RLIMIT_NOFILE, which the daemon raises to its hard limit when needed)"),
    BYTES("max_frame_bytes", max_frame_bytes, "1M", 64 * KIB, 64 * 1024 * KIB, 0,
          "Largest protocol frame accepted; a longer one gets E_TOOBIG and closes the connection "
          "(at least 64K: a Stats answer needs that much)"),
    BYTES("inline_max_bytes", inline_max_bytes, "256K", 0, 32 * 1024 * KIB, ADMIN,
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
        "Most chunks the index tracks across all tiers (about 128 bytes each, allocated at start)"),
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
    ENUM("disk.form", disk_form, "fp16", forms, ADMIN,
         "Form the disk tier keeps chunks of lossy-allowed fp16 namespaces in: fp16 (as stored), "
         "q8 or q4 (group quantization along head_dim, docs/lossy.md); never applies to "
         "namespaces registered without allow_lossy"),
    ENUM("disk.form_cold", disk_form_cold, "same", cold_forms, ADMIN,
         "Form for chunks that recent Selects ranked low (none of their tokens returned by the "
         "last Selects that scored them, docs/lossy.md): same = disk.form, or fp16, q8, q4"),
    DOUBLE("disk.high_watermark", disk_high_watermark, "0.95", 0.1, 1.0, KVT_CFG_RUNTIME,
           "Above this fraction of the disk tier in use, chunks only on disk are evicted, "
           "coldest first"),
    DOUBLE("disk.min_saving", disk_min_saving, "0.1", 0, 0.99, 0,
           "Keep the compressed form only when it saves at least this fraction"),
    BOOL("disk.allow_buffered", disk_allow_buffered, "false", 0,
         "Allow buffered I/O where O_DIRECT is refused (it fills the page cache)"),
    U64("disk.io_errors_max", disk_io_errors_max, "8", 1, 1000000, 0,
        "Consecutive failed disk I/Os that latch the disk tier failed"),
    BOOL("disk.required", disk_required, "false", 0,
         "When the kernel refuses io_uring (a seccomp profile, the kernel.io_uring_disabled "
         "sysctl, an old kernel): false = start without the disk tier and report it in the log, "
         "the stats (disk.serving) and /healthz; true = refuse to start"),
    U64("disk.fault_fail_next_io", disk_fault_fail_next_io, "0", 0, 1000000, FAULT,
        "Fault injection for tests: fail the next N disk I/Os"),
    U64("disk.fault_errno", disk_fault_errno, "0", 0, 4095, FAULT,
        "Fault injection for tests: errno of injected failures (0 = EIO; 28 = ENOSPC)"),
    ENUM("tier.write_policy", write_policy, "write-back", write_policies, 0,
         "write-back: a Put is answered once in DRAM and written to disk under pressure; "
         "write-through: a Put is answered once durable on disk"),
    ENUM("tier.eviction", eviction, "lru", evictions, 0,
         "Which chunk goes when a tier is full: lru (least recently used; CLOCK on disk) or cost "
         "(of the few least recently used, the one worth least: reads x tokens / bytes)"),
    ENUM("tier.disk_admission", disk_admission, "on-evict", admissions, ADMIN,
         "Which chunks leaving DRAM are written to disk: on-evict (all) or second-access (only "
         "chunks read at least once)"),
    ENUM("tier.dirty_full", dirty_full, "drop", dirty_full_policies, ADMIN,
         "Write-back, DRAM full of chunks not yet on disk: drop the coldest of them (counted in "
         "tier.dropped_dirty) or reject the Put with E_DIRTYFULL until the disk catches up"),
    BOOL("tier.select_promote", select_promote, "true", 0,
         "Learn from selections (docs/sparse.md): a chunk on disk whose rows Selects keep "
         "choosing (or GetRange keeps reading) is promoted into DRAM in the background, taking "
         "only free memory or clean chunks less often selected"),
    DOUBLE("tier.select_promote_ratio", select_promote_ratio, "1.0", 0.01, 64.0, 0,
           "Promote once the rows of a chunk chosen from disk within tier.select_window_ms add "
           "up to this many times the chunk's size (1.0: when reading it whole would have cost "
           "no more)"),
    U64("tier.select_window_ms", select_window_ms, "10000", 10, 3600000, 0,
        "Window of the selection evidence; the previous window's counts at half weight"),
    U64("tier.select_promote_inflight", select_promote_inflight, "2", 1, 16, 0,
        "Most background selection promotions reading from disk at once (client reads go "
        "first)"),
    BYTES("abstract.bytes_max", abstract_bytes_max, "256M", 0, 1024.0 * GIB, ADMIN,
          "DRAM for span abstracts (docs/sparse.md), kept for chunks in every tier; a chunk "
          "whose abstract does not fit has none (Select keeps it whole); 0 = no abstracts"),
    ENUM("abstract.spans", abstract_spans, "fixed", span_kinds, ADMIN,
         "How a Put cuts each layer into spans for Select, unless its namespace says: none, "
         "fixed (blocks of abstract.block_tokens) or variable (blocks merged while the key bound "
         "stays tight)"),
    U64("abstract.block_tokens", abstract_block_tokens, "16", 1, 32768, ADMIN,
        "Tokens per base span (the disk tier reads whole blocks of 16 tokens)"),
    U64("abstract.max_tokens", abstract_max_tokens, "128", 1, 32768, ADMIN,
        "Variable spans: most tokens a merged span may hold"),
    DOUBLE("abstract.merge_tol", abstract_merge_tol, "0.1", 0.0, 100.0, ADMIN,
           "Variable spans: merge two neighbours while the merged key width is at most (1 + "
           "tol) times the wider one's"),
    U64("abstract.fine_layers", abstract_fine_layers, "2", 0, 65536, ADMIN,
        "Variable spans: the first layers keep base spans (their attention is spread thin)"),
    U64("reuse.versions_max", reuse_versions_max, "4", 1, 32, 0,
        "Most versions (variants with version info) one passage key keeps; reporting one more "
        "deletes the least recently planned"),
    DOUBLE("reuse.alpha", reuse_alpha, "1.0", 0.0, 100.0, 0,
           "Scale of the recompute share a reuse plan asks for: cfo = clamp(alpha * cci * (1 - "
           "beta')), docs/reuse.md"),
    BYTES("reuse.bytes_max", reuse_bytes_max, "64M", 0, 64.0 * GIB, ADMIN,
          "DRAM for version info (prefix keys and attention statistics); past it VersionSet "
          "answers E_FULL"),
    BYTES("reuse.log_bytes_max", reuse_log_bytes_max, "1G", 1024.0 * KIB, 4.0 * GIB, 0,
          "Size limit of the version log (data_dir/kvtier-versions.log: version info of chunks "
          "on disk), compacted at start and when it reaches half of this; past it new records "
          "are dropped (version_log_dropped) and kept in DRAM only"),
    U64("hold.max", hold_max, "4096", 1, 1u << 20, 0,
        "Most Lookup holds open at once (a Lookup asking for one past it answers E_FULL)"),
    U64("hold.pins_max", hold_pins_max, "262144", 1, 1u << 26, 0,
        "Most chunks pinned by all Lookup holds together"),
    U64("hold.ttl_ms", hold_ttl_ms, "30000", 10, 3600000, ADMIN,
        "Longest a Lookup hold pins its hits (a longer hold_ms is cut to this); released "
        "sooner by ReleaseHold"),
    U64("context.max", context_max, "1024", 1, 1u << 20, 0,
        "Most contexts open at once (OpenContext answers E_FULL past it)"),
    U64("context.chunks_max", context_chunks_max, "65536", 1, 1u << 24, ADMIN,
        "Most chunks one context may hold"),
    U64("context.ttl_ms", context_ttl_ms, "60000", 10, 86400000, ADMIN,
        "Lease of a context whose OpenContext names none: closed when no request names it for "
        "this long"),
    STR("metrics.listen", metrics_listen, "", 0,
        "Prometheus endpoint (/metrics, /healthz): host:port, a bare port (on 127.0.0.1) or "
        "unix:/path; empty = off (docs/metrics.md)"),
    BOOL("metrics.allow_remote", metrics_allow_remote, "false", 0,
         "Let metrics.listen name an address that is not loopback (the endpoint has no "
         "authentication: anyone who reaches it reads every stat)"),
    U64("metrics.connections_max", metrics_connections_max, "8", 1, 256, 0,
        "Most scrapers connected to the metrics endpoint at once; more wait in the listen "
        "backlog until one leaves"),
    U64("metrics.idle_timeout_s", metrics_idle_timeout_s, "10", 1, 600, 0,
        "A metrics connection that makes no progress this long (an unfinished request, a "
        "scraper that stops reading) is closed"),
};

const struct kvt_cfg_table kvt_dconfig_table = {entries, sizeof(entries) / sizeof(entries[0])};

int kvt_dconfig_check(const struct kvt_dconfig *cfg, char *why, size_t why_cap)
{
    if (cfg->inline_max_bytes + 4096 > cfg->max_frame_bytes) {
        snprintf(why, why_cap, "inline_max_bytes must stay at least 4K below max_frame_bytes");
        return KVT_E_BADCONFIG;
    }
    if (!kvt_uid_list_valid(cfg->allowed_uids, why, why_cap) ||
        !kvt_uid_list_valid(cfg->admin_uids, why, why_cap) ||
        !kvt_tenant_map_valid(cfg->tenants, why, why_cap))
        return KVT_E_BADCONFIG;
    if (!cfg->fault_injection && (cfg->disk_fault_fail_next_io || cfg->disk_fault_errno)) {
        snprintf(why, why_cap,
                 "fault injection is off: start kvtierd with --fault_injection=true to use the "
                 "disk.fault_* keys");
        return KVT_E_BADCONFIG;
    }
    if (cfg->metrics_listen[0] &&
        kvt_metrics_parse_listen(cfg->metrics_listen, cfg->metrics_allow_remote, NULL, NULL, why,
                                 why_cap))
        return KVT_E_BADCONFIG;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        KVT_FDS_NEEDED(cfg->max_clients) > rl.rlim_cur) {
        snprintf(why, why_cap,
                 "max_clients %llu needs %llu descriptors but RLIMIT_NOFILE is %llu: raise the "
                 "limit (ulimit -n) or lower max_clients",
                 (unsigned long long)cfg->max_clients,
                 (unsigned long long)KVT_FDS_NEEDED(cfg->max_clients),
                 (unsigned long long)rl.rlim_cur);
        return KVT_E_BADCONFIG;
    }
    return 0;
}
