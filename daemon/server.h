/*
 * kvtierd's event loop: one thread owns the listening socket, every connection, the namespace
 * table and the chunk index (no locks on them, like Redis). It reads length-prefixed protobuf
 * frames, validates each request completely before changing anything, answers small requests at
 * once and hands large copies to the worker pool, answering when the worker is done.
 *
 * server.c holds the loop, connections and framing; ops*.c the request handlers. Both see the
 * structures below; nothing outside the daemon does.
 */
#ifndef KVT_DAEMON_SERVER_H
#define KVT_DAEMON_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/loop.h"
#include "daemon/config.h"
#include "daemon/index.h"
#include "daemon/abstract.h"
#include "daemon/context.h"
#include "daemon/hold.h"
#include "daemon/ns.h"
#include "daemon/select.h"
#include "daemon/version.h"
#include "daemon/version_log.h"
#include "daemon/tiermgr.h"
#include "daemon/workers.h"
#include "kvtier.pb-c.h"
#include "tiers/disk/disk.h"
#include "tiers/host/host.h"

#define KVT_PROTO_VERSION 1
#define KVT_CONN_NS_MAX 64          /* namespaces one connection may hold */
#define KVT_ERROR_RESERVE_BYTES 512 /* output reserved for an answer that is only an error */
#define KVT_PRIOR_PENDING_MAX 64    /* namespaces whose restored versions wait to be registered */

/* Daemon counters; every rejection has one. */
/* name, type, unit, help: see common/stats.h. The help is one line of docs/stats.md. */
#define KVT_DAEMON_STATS_DEF(X, A)                                                                 \
    X(A, connections_accepted, KVT_STAT_COUNTER, "", "client connections accepted")                \
    X(A, connections_rejected_busy, KVT_STAT_COUNTER, "",                                          \
      "connections refused because max_clients clients were connected")                            \
    X(A, connections_rejected_uid, KVT_STAT_COUNTER, "",                                           \
      "connections refused because the peer uid is not allowed")                                   \
    X(A, connections_rejected_nofile, KVT_STAT_COUNTER, "",                                        \
      "connections refused for lack of file descriptors")                                          \
    X(A, requests_dropped_eof, KVT_STAT_COUNTER, "",                                               \
      "requests buffered but never served because the client hung up")                             \
    X(A, requests_too_big, KVT_STAT_COUNTER, "",                                                   \
      "requests refused because their answer would exceed max_frame_bytes")                        \
    X(A, tenant_denied, KVT_STAT_COUNTER, "",                                                      \
      "Hellos refused because the peer may not act for the tenant it named")                       \
    X(A, config_denied, KVT_STAT_COUNTER, "",                                                      \
      "config sets of admin keys refused to a uid that is not an admin")                           \
    X(A, put_checksum_missing, KVT_STAT_COUNTER, "",                                               \
      "Puts refused for lack of a checksum (put_checksum = required)")                             \
    X(A, put_checksum_errors, KVT_STAT_COUNTER, "",                                                \
      "Puts whose bytes did not match the client checksum")                                        \
    X(A, client_memory_faults, KVT_STAT_COUNTER, "",                                               \
      "copies from client memory that faulted (arena truncated or unmapped)")                      \
    X(A, quota_rejections, KVT_STAT_COUNTER, "",                                                   \
      "Puts refused because the tenant was at its quota")                                          \
    X(A, quota_evictions, KVT_STAT_COUNTER, "",                                                    \
      "chunks evicted because their tenant was past its CPU share")                                \
    X(A, reloads, KVT_STAT_COUNTER, "", "configuration reloads (SIGHUP)")                          \
    X(A, reload_failures, KVT_STAT_COUNTER, "",                                                    \
      "configuration reloads that failed and kept the old settings")                               \
    X(A, requests, KVT_STAT_COUNTER, "", "requests read from client frames")                       \
    X(A, puts, KVT_STAT_COUNTER, "", "Put requests that passed validation")                        \
    X(A, puts_existed, KVT_STAT_COUNTER, "", "Puts of a key that was already stored")              \
    X(A, put_bytes, KVT_STAT_COUNTER, "bytes", "bytes stored by Puts")                             \
    X(A, gets, KVT_STAT_COUNTER, "", "Get requests")                                               \
    X(A, get_hits, KVT_STAT_COUNTER, "", "Gets that found their chunk")                            \
    X(A, get_misses, KVT_STAT_COUNTER, "", "Gets of a key that is not stored")                     \
    X(A, get_bytes, KVT_STAT_COUNTER, "bytes", "bytes returned by Gets")                           \
    X(A, gets_range, KVT_STAT_COUNTER, "", "GetRange requests that passed validation")             \
    X(A, get_range_bytes, KVT_STAT_COUNTER, "bytes", "bytes returned by GetRanges")                \
    X(A, gets_range_dram, KVT_STAT_COUNTER, "", "GetRanges served from a chunk in DRAM")           \
    X(A, gets_range_disk, KVT_STAT_COUNTER, "",                                                    \
      "GetRanges read from disk (a range read of the blocks that cover the rows)")                 \
    X(A, lookups, KVT_STAT_COUNTER, "", "Lookup requests")                                         \
    X(A, lookup_keys, KVT_STAT_COUNTER, "", "keys named by Lookups")                               \
    X(A, lookup_hits, KVT_STAT_COUNTER, "", "leading keys Lookups found cached")                   \
    X(A, deletes, KVT_STAT_COUNTER, "", "chunks removed by Deletes")                               \
    X(A, errors, KVT_STAT_COUNTER, "", "answers with an error status")                             \
    X(A, bad_frames, KVT_STAT_COUNTER, "", "frames that were not a valid protobuf Request")        \
    X(A, truncated_frames, KVT_STAT_COUNTER, "", "connections that ended inside a frame")          \
    X(A, oversized_frames, KVT_STAT_COUNTER, "", "frames longer than max_frame_bytes")             \
    X(A, unknown_ops, KVT_STAT_COUNTER, "", "requests with an op this daemon does not know")       \
    X(A, range_errors, KVT_STAT_COUNTER, "", "requests naming bytes outside the client arena")     \
    X(A, geometry_errors, KVT_STAT_COUNTER, "",                                                    \
      "requests whose length does not match the namespace geometry")                               \
    X(A, unknown_namespace, KVT_STAT_COUNTER, "",                                                  \
      "requests naming a namespace handle that does not exist")                                    \
    X(A, access_denied, KVT_STAT_COUNTER, "", "requests for a namespace of another tenant")        \
    X(A, index_full, KVT_STAT_COUNTER, "",                                                         \
      "Puts refused because the index was full and nothing could be evicted")                      \
    X(A, tier_full, KVT_STAT_COUNTER, "", "Puts refused because the CPU tier was full")            \
    X(A, worker_jobs, KVT_STAT_COUNTER, "", "copies handed to the worker threads")                 \
    X(A, abstracts_restored, KVT_STAT_COUNTER, "",                                                 \
      "span abstracts read back from disk at start (no payload read)")                             \
    X(A, abstracts_restore_failed, KVT_STAT_COUNTER, "",                                           \
      "span abstracts on disk not restored: corrupt or unreadable (the chunk is kept whole)")      \
    X(A, contexts_opened, KVT_STAT_COUNTER, "", "contexts opened")                                 \
    X(A, context_chunks_appended, KVT_STAT_COUNTER, "", "chunks appended to contexts")             \
    X(A, context_chunks_without_abstract, KVT_STAT_COUNTER, "",                                    \
      "chunks appended to contexts without an abstract (always selected whole)")                   \
    X(A, selects, KVT_STAT_COUNTER, "", "Select requests answered")                                \
    X(A, select_spans_scored, KVT_STAT_COUNTER, "", "spans Selects scored by their key bound")     \
    X(A, select_tokens_considered, KVT_STAT_COUNTER, "", "context tokens Selects chose from")      \
    X(A, select_tokens_selected, KVT_STAT_COUNTER, "", "tokens Selects returned")                  \
    X(A, select_disk_tokens_considered, KVT_STAT_COUNTER, "",                                      \
      "context tokens on disk when Selects ranked them")                                           \
    X(A, select_disk_tokens_selected, KVT_STAT_COUNTER, "",                                        \
      "tokens on disk that Selects chose (the rest were never read)")                              \
    X(A, select_runs_dram, KVT_STAT_COUNTER, "",                                                   \
      "runs Selects returned from chunks in DRAM (their rows are read without the disk)")          \
    X(A, select_runs_disk, KVT_STAT_COUNTER, "",                                                   \
      "runs Selects returned from chunks only on disk (each a range read when fetched)")           \
    X(A, chunk_lookups, KVT_STAT_COUNTER, "", "ChunkLookup requests answered")                     \
    X(A, chunk_lookup_passages, KVT_STAT_COUNTER, "", "passages ChunkLookups planned")             \
    X(A, chunk_lookup_found, KVT_STAT_COUNTER, "", "passages ChunkLookups found a version of")     \
    X(A, chunk_lookups_budgeted, KVT_STAT_COUNTER, "",                                             \
      "ChunkLookups whose recompute budget lowered alpha")                                         \
    X(A, reuse_tokens_planned, KVT_STAT_COUNTER, "", "tokens of the versions ChunkLookups chose")  \
    X(A, reuse_tokens_recompute, KVT_STAT_COUNTER, "",                                             \
      "tokens ChunkLookups told the engine to recompute")                                          \
    X(A, versions_evicted, KVT_STAT_COUNTER, "",                                                   \
      "versions deleted to keep a key within reuse.versions_max")                                  \
    X(A, versions_restored, KVT_STAT_COUNTER, "",                                                  \
      "version info read back at start from disk copies' metadata and the version log")            \
    X(A, version_records_corrupt, KVT_STAT_COUNTER, "",                                            \
      "version records refused at start (a check failed; the chunk is served as a plain chunk)")   \
    X(A, version_records_stale, KVT_STAT_COUNTER, "",                                              \
      "version log records at start whose disk copy is gone (deleted, evicted or rewritten)")      \
    X(A, versions_not_restored, KVT_STAT_COUNTER, "",                                              \
      "version records at start that did not fit in reuse.bytes_max")                              \
    X(A, version_log_appends, KVT_STAT_COUNTER, "",                                                \
      "version info logged for chunks already on disk (daemon/version_log.h)")                     \
    X(A, version_log_dropped, KVT_STAT_COUNTER, "",                                                \
      "version info of chunks on disk not logged (log full or failed): kept in DRAM only")         \
    X(A, gets_rotated, KVT_STAT_COUNTER, "", "Gets whose keys were re-rotated to a new position")  \
    X(A, lossy_refused, KVT_STAT_COUNTER, "",                                                      \
      "Puts and Gets asking for a lossy form in a namespace without allow_lossy (E_LOSSY)")        \
    X(A, lossy_forms_asked, KVT_STAT_COUNTER, "",                                                  \
      "lower-tier copies of lossy-allowed chunks asked to be kept in q8 or q4")                    \
    X(A, lossy_cold_forms, KVT_STAT_COUNTER, "",                                                   \
      "of those, copies given disk.form_cold because recent Selects ranked the chunk low")         \
    X(A, gets_dequantized, KVT_STAT_COUNTER, "",                                                   \
      "Gets answered with fp16 bytes dequantized from a lossy copy (with their own checksum)")     \
    X(A, get_ranges_dequantized, KVT_STAT_COUNTER, "",                                             \
      "GetRanges answered with fp16 rows dequantized from a lossy copy (with their own checksum)") \
    X(A, get_ranges_stored_form, KVT_STAT_COUNTER, "",                                             \
      "GetRanges asking for the stored form that were answered with quantized rows")               \
    X(A, gets_stored_form, KVT_STAT_COUNTER, "",                                                   \
      "Gets asking for the stored form that were answered with a lossy block")                     \
    X(A, cluster_puts, KVT_STAT_COUNTER, "", "clustered variants stored (merged entries, counts)") \
    X(A, cluster_counts_refused, KVT_STAT_COUNTER, "",                                             \
      "clustered variants refused because their counts did not add up to their tokens")
#define KVT_DAEMON_STATS(A) KVT_DAEMON_STATS_DEF(KVT_STAT_NAME_ONLY, A)

/* Latency histograms (name, unit, help): a request taken from its frame to its answer queued. */
#define KVT_DAEMON_HISTS(X)                                                                        \
    X(put_latency_us, "us", "Put requests, taken from the frame to answered")                      \
    X(get_latency_us, "us", "Get and GetRange requests, taken from the frame to answered")         \
    X(lookup_latency_us, "us", "Lookup requests, taken from the frame to answered")                \
    X(select_latency_us, "us", "Select requests, taken from the frame to answered")

struct kvt_dstats {
#define KVT__DSTAT_FIELD(name) uint64_t name;
    KVT_DAEMON_STATS(KVT__DSTAT_FIELD)
#undef KVT__DSTAT_FIELD
#define KVT__DHIST_FIELD(name, unit, help) struct kvt_hist name;
    KVT_DAEMON_HISTS(KVT__DHIST_FIELD)
#undef KVT__DHIST_FIELD
};

/* Per-tenant counters (name, type, unit, help), in the stats as tenant.<name>.<stat> and in
 * /metrics as kvtier_tenant_<stat>{tenant="<name>"}. The first KVT_TENANT_STATS_MAX tenants that
 * say Hello get their own; any later one counts under the tenant "_other", so the number of
 * series stays bounded whatever clients do. */
#define KVT_TENANT_STATS_MAX 8
#define KVT_TENANT_STATS_DEF(X, A)                                                                 \
    X(A, puts, KVT_STAT_COUNTER, "", "Put requests of the tenant that passed validation")          \
    X(A, put_bytes, KVT_STAT_COUNTER, "bytes", "bytes the tenant's Puts stored")                   \
    X(A, gets, KVT_STAT_COUNTER, "", "Get requests of the tenant")                                 \
    X(A, get_hits, KVT_STAT_COUNTER, "", "Gets of the tenant that found their chunk")              \
    X(A, get_misses, KVT_STAT_COUNTER, "", "Gets of the tenant for a key that is not stored")
#define KVT_TENANT_STATS(A) KVT_TENANT_STATS_DEF(KVT_STAT_NAME_ONLY, A)

struct kvt_tenant_stats {
    char name[KVT_TENANT_MAX];
#define KVT__TSTAT_FIELD(name) uint64_t name;
    KVT_TENANT_STATS(KVT__TSTAT_FIELD)
#undef KVT__TSTAT_FIELD
};

struct kvt_conn;
struct kvt_metrics;

/* One request being served. Ops are preallocated per connection (max_inflight_per_conn). */
#define KVT_STRIPES_MAX 4 /* parts a large copy is split into: the loop's and up to 3 workers' */

struct kvt_op {
    struct kvt_job job;                         /* first: a reaped job is its op */
    struct kvt_job stripe[KVT_STRIPES_MAX - 1]; /* the workers' parts of a striped copy */
    uint32_t stripes_left;                      /* parts of the copy not yet reaped */
    int copy_res;                               /* first failure of a part (KVT_E_FAULT) */
    uint64_t sum;                               /* Put: checksum of what the parts stored */
    uint64_t checksum;                          /* Put: the client's, when has_checksum */
    int has_checksum;
    struct kvt_conn *conn;
    struct kvt_op *next_free;
    uint64_t req_id;
    size_t reserve; /* output bytes reserved for the response */
    uint32_t kind;  /* Kvtier__Request__OpCase */
    uint32_t entry;
    uint32_t gen; /* of the entry, for answers that come after other requests ran */
    uint64_t length;
    uint32_t n_tokens;    /* GetRange: rows asked for */
    uint32_t layer;       /* GetRange: the layer they are in */
    uint32_t token_first; /* GetRange: the first of them */
    uint64_t range_off;   /* GetRange: where those rows start in the chunk, in bytes */
    uint32_t tier;        /* where a Get was served from */
    int want_inline;      /* Get: answer with the bytes in the response */
    struct kvt_tm_io io;  /* what the tier manager does for it (Gets from lower tiers, Puts
                             waiting for durability) */
    struct kvt_abs *abs;  /* Put: the abstract being built for the chunk (owned until stored) */
    struct kvt_span_policy abs_policy;
    int abs_stage; /* Put: the copy is verified and the abstract job runs */
    struct {       /* a rotated Get (docs/reuse.md): keys re-rotated at the destination */
        int on, style;
        uint32_t rows, heads, head_dim, rotary_dims, stride;
        int64_t delta;
        double theta;
    } rope;
    uint64_t start_ns; /* when the request was taken from its frame (latency stats) */
    /* Lossy forms (docs/lossy.md). lossy_sum: a Get of bytes dequantized from a lossy copy,
     * answered with the checksum (sum) of what it returned; stored: a Get of the stored form,
     * read straight from a lower tier, of form `form` (the answer's). */
    uint8_t lossy_sum;
    uint8_t stored;
    uint32_t form;
    /* A clustered variant (form 3): its entries; a Put's counts are checked once copied. */
    uint8_t cluster;
    uint32_t n_entries;
};

/* Bump allocator for unpacking one request without touching the heap in the common case. */
struct kvt_scratch {
    uint8_t *buf;
    size_t cap;
    size_t used;
};

struct kvt_conn {
    struct kvt_watch w; /* its socket in the loop (conn_arm) */
    struct kvt_server *server;
    int fd;
    uint64_t id;
    uid_t uid; /* peer credentials (SO_PEERCRED) at accept */
    gid_t gid;
    pid_t pid;
    int admin; /* uid is in admin_uids: may change security and fault settings */
    char tenant[KVT_TENANT_MAX];
    int hello_done;
    struct kvt_tenant_stats *tstats; /* its tenant's counters (in the server), from Hello on */
    uint8_t *arena;
    uint64_t arena_bytes;
    int pending_fd; /* fd received with SCM_RIGHTS, waiting for Hello */

    uint8_t *in;
    size_t in_len, in_cap;
    uint8_t *out;
    size_t out_off, out_len, out_cap, out_reserved;

    struct kvt_op *ops;
    struct kvt_op *free_ops;
    uint32_t inflight;
    struct kvt_scratch scratch;

    int read_eof; /* peer finished sending */
    int closing;  /* no more requests: close once responses are out and ops done */
    int dead;     /* socket closed; freed when inflight reaches 0 */
    int queued;   /* on the server's ready list */
    uint32_t ns_held[KVT_CONN_NS_MAX]; /* slots of the namespaces it registered */
    uint32_t n_ns_held;
    struct kvt_conn *ready_next;
    struct kvt_conn *prev, *next;
};

struct kvt_server {
    struct kvt_dconfig *cfg; /* borrowed from main; runtime Config set edits it */
    struct kvt_loop *loop;
    int listen_fd;
    int signal_fd;
    struct kvt_watch listen_w, signal_w, workers_w;
    struct kvt_hook ready_hook, sweep_hook;
    struct kvt_timer accept_retry; /* out of descriptors and no spare: listen again later */
    volatile int stop;
    int destroying; /* job completions only release what they hold */
    uint64_t stop_deadline_ms;
    struct kvt_ns_table ns;
    struct kvt_index idx;
    struct kvt_host *host; /* tier 0 */
    struct kvt_disk *disk; /* tier 1, or NULL when disk.bytes = 0 */
    struct kvt_disk_tier disk_tier;
    struct kvt_disk_faults disk_faults; /* fault_injection: the disk.fault_* keys */
    /* disk.bytes > 0 but the kernel refused io_uring and disk.required = false: the daemon runs
     * without the disk tier (s->disk NULL). The errno and the line the log gave. */
    int disk_start_errno;
    char disk_start_why[512];
    struct kvt_metrics *metrics; /* the metrics endpoint, or NULL (metrics.listen empty) */
    struct kvt_tm *tm;
    struct kvt_workers *workers;
    uint32_t n_workers;
    struct kvt_conn *conns;  /* open connections */
    struct kvt_conn *closed; /* closed, freed once their in-flight ops are back */
    struct kvt_conn *ready;  /* to resume before the loop sleeps (conn_queue) */
    int spare_fd;            /* kept open to accept-and-refuse when out of descriptors */
    const char *config_path; /* borrowed from main: reread on SIGHUP; NULL when none */
    uint32_t n_conns;
    uint64_t next_conn_id;
    uint64_t start_ms;
    struct kvt_abs_store abs;          /* span abstracts, by index entry */
    uint64_t abs_restore_pending;      /* start: bytes of abstracts being read back from disk */
    struct kvt_ctx_table ctx;          /* open contexts */
    struct kvt_hold_table holds;       /* Lookup hits pinned until loaded */
    struct kvt_version_store versions; /* reuse: version info by index entry */
    struct kvt_vlog vlog;              /* reuse: version info of chunks already on disk */
    uint32_t vlog_tier;                /* tier position the log's stamps are of; 0: no log */
    /* Start: what the restored versions say about their namespaces' priors (daemon/reuse.h),
     * added to a namespace when it is registered again. */
    struct kvt_prior_pending {
        uint64_t seed;
        double cci_sum, passage_mass_sum;
        uint64_t n;
    } prior_pending[KVT_PRIOR_PENDING_MAX];
    uint32_t n_prior_pending;
    struct kvt_sel_scratch sel;       /* Select's working memory */
    struct kvt_span_policy span_dflt; /* abstract.* settings */
    struct kvt_dstats st;
    /* Tenants with counters of their own, and [KVT_TENANT_STATS_MAX]: "_other". */
    struct kvt_tenant_stats tenants[KVT_TENANT_STATS_MAX + 1];
    uint32_t n_tenants;
};

/* Builds every subsystem from cfg and binds the socket. */
int kvt_server_create(struct kvt_dconfig *cfg, struct kvt_server **out);
/* Runs the loop until SIGTERM/SIGINT; returns 0 after a graceful shutdown. */
int kvt_server_run(struct kvt_server *s);
/* One iteration of the loop: waits up to timeout_ms for events, handles them, then the tier
 * manager's background work and the queued connections. Events handled, or -errno. (The loop
 * itself, and harnesses such as the fuzz target, call it.) */
int kvt_server_run_once(struct kvt_server *s, int timeout_ms);
/* Takes a connected socket as a client connection with these peer credentials (accept's second
 * half; the fuzz harness feeds socketpairs through it). Closes fd on failure. */
struct ucred;
int kvt__server_adopt(struct kvt_server *s, int fd, const struct ucred *cred);
void kvt_server_destroy(struct kvt_server *s);

/* --- shared between server.c and the ops*.c files --- */

/* Handles one unpacked request. Either answers at once (kvt__server_respond) and returns 0, or
 * keeps op in flight and returns 1; it answers later from kvt__server_job_done. */
int kvt__ops_dispatch(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                      const Kvtier__Request *req);
/* Finishes an op whose worker job completed. */
void kvt__ops_complete(struct kvt_server *s, struct kvt_op *op);
/* Bytes of output to reserve for the response to req. */
size_t kvt__ops_reserve(const struct kvt_server *s, const Kvtier__Request *req);
/* The tier manager's completions, answered by the request handlers (ops_data.c). */
extern const struct kvt_tm_callbacks kvt__ops_tm_callbacks;
/* Its metadata callbacks (ops_meta.c): a chunk's span abstract and version info, serialized,
 * beside its disk copy, and back into the abstract and version stores at start. */
int kvt__ops_meta_pin(void *arg, uint32_t id, struct kvt_tm_meta *out);
void kvt__ops_meta_release(void *arg, struct kvt_tm_meta *m);
int kvt__ops_meta_want(void *arg, uint32_t id, uint32_t want_len);
void kvt__ops_meta_loaded(void *arg, uint32_t id, uint32_t want_len, const void *bytes, size_t len,
                          int status);
/* Start, after the tiers opened: the abstracts of the chunks on disk, read without their
 * payloads (kvt_tm_load_meta), bounded by abstract.bytes_max; logs what it restored. */
void kvt__server_abstracts_restore(struct kvt_server *s);
/* A durable lower-tier copy landed (ops_meta.c): version info set after its write started is
 * logged for it. */
void kvt__ops_copied(void *arg, uint32_t id, uint32_t tier);
/* Reuse versions across restarts (ops_meta.c). Start, after kvt__server_abstracts_restore: opens
 * the version log, restores its records over what the metadata gave, rewrites it, and computes
 * the namespaces' pending priors. */
void kvt__server_versions_restore(struct kvt_server *s);
/* VersionSet: entry id's new record goes to its disk copy (now, through the log, when the copy
 * is already written; else with the write to come). */
void kvt__server_version_to_disk(struct kvt_server *s, uint32_t id);
/* Register: a namespace gets what its restored versions say about the prior. */
void kvt__server_prior_apply(struct kvt_server *s, const struct kvt_ns *ns);

/* The counters of tenant (found or added; "_other" when the table is full): ops_admin.c. */
struct kvt_tenant_stats *kvt__server_tenant_stats(struct kvt_server *s, const char *tenant);
/* Every stat, as the Stats op sends them (ops_admin.c): an array owned by the server, valid until
 * the next call or Stats request, on the loop thread. */
size_t kvt__server_stats_snapshot(struct kvt_server *s, const struct kvt_stat **out);
/* 0 while every configured tier serves; 1 with the reason in why when one cannot (tierset.c). */
int kvt__server_tiers_health(struct kvt_server *s, char *why, size_t cap);

/* The tiers and the tier manager over them (tierset.c): open after the index, the namespace
 * table, the workers and the loop; close after the workers stopped. */
int kvt__server_tiers_open(struct kvt_server *s);
void kvt__server_tiers_close(struct kvt_server *s);
/* Applies the runtime keys that concern the tiers (fault injection). */
void kvt__server_tiers_config_changed(struct kvt_server *s);
/* Answers a Put (op) that the tier manager held until its chunk was durable or not. */
void kvt__ops_put_reply(struct kvt_server *s, struct kvt_op *op, enum kvt_tier_id tier);
/* Answers a Get with an error (the tier manager could not read the chunk). */
void kvt__ops_get_fail(struct kvt_server *s, struct kvt_op *op, int status);
/* A Get's chunk has just been promoted into DRAM: deliver it from there. */
void kvt__ops_get_deliver(struct kvt_server *s, struct kvt_op *op);
/* Importance for lossy forms (docs/lossy.md): a Select scored entry id's chunk and returned some
 * of its tokens (selected) or none. */
void kvt__ops_sel_note(struct kvt_server *s, uint32_t id, int selected);
/* Answers a Get whose bytes are already at the client's destination. */
void kvt__ops_get_reply_entry(struct kvt_server *s, struct kvt_op *op, const struct kvt_entry *e);

/* Packs resp into the connection's output and releases op (which may be NULL for errors that
 * belong to no op). status != 0 sets resp->status and the error text. */
void kvt__server_respond(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                         Kvtier__Response *resp, int status, const char *detail);
/* A rotated Get's copy job: copy, then rotate the keys of the part's rows (ops_data.c). */
void kvt__ops_copy_rotate(struct kvt_job *job);
/* Hands a copy to a worker (or runs it inline when small); the op completes later. */
void kvt__server_submit(struct kvt_server *s, struct kvt_op *op);
/* Hands op's job, with fn as its work, to a worker (inline without workers); op completes
 * through kvt__ops_complete like a copy. */
void kvt__server_compute(struct kvt_server *s, struct kvt_op *op, kvt_job_fn fn);
/* The abstract.* settings changed (start, Config set, reload): refreshes s->span_dflt. */
void kvt__server_spans_config(struct kvt_server *s);
/* A runtime config change (Config set or SIGHUP) was committed to s->cfg: apply it. */
void kvt__server_config_applied(struct kvt_server *s);
/* After an op of c finished outside the worker path: queues c to resume its buffered frames and
 * flush before the loop sleeps (never dispatches anything itself). */
void kvt__server_after_ops(struct kvt_server *s, struct kvt_conn *c);

#endif
