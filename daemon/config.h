/*
 * kvtierd's settings: one struct and the one table that describes it. The table drives the config
 * file, command-line overrides, runtime Config get/set and --dump-config; deploy/kvtier.conf is the
 * output of --dump-config with the defaults.
 */
#ifndef KVT_DAEMON_CONFIG_H
#define KVT_DAEMON_CONFIG_H

#include <stdint.h>

#include "common/config.h"

/* Descriptors the daemon needs: two per client (its socket, and a descriptor it passed that waits
 * for Hello; an arena's is closed once mapped), plus the daemon's own: epoll, signalfd, eventfds,
 * the listening socket, the spare for refusing connections, disk files and journals, logs. */
#define KVT_FDS_PER_CLIENT 2
#define KVT_FDS_RESERVED 64
#define KVT_FDS_NEEDED(max_clients) ((max_clients)*KVT_FDS_PER_CLIENT + KVT_FDS_RESERVED)

struct kvt_dconfig {
    char socket[256];
    char socket_mode[8];
    char allowed_uids[256];
    char admin_uids[256];
    char tenants[1024];
    int fault_injection;
    char put_checksum[12];
    uint64_t quota_namespaces;
    double quota_objects_share;
    double quota_cpu_share;
    char data_dir[256];
    char log_level[8];
    char log_file[256];
    uint64_t max_clients;
    uint64_t max_frame_bytes;
    uint64_t inline_max_bytes;
    uint64_t max_arena_bytes;
    uint64_t max_inflight_per_conn;
    uint64_t workers;
    uint64_t copy_offload_bytes;
    uint64_t copy_stripe_bytes;
    uint64_t busy_poll_us;
    uint64_t max_namespaces;
    uint64_t index_max_objects;
    uint64_t cpu_arena_bytes;
    uint64_t cpu_page_bytes;
    int cpu_hugepages;
    int cpu_prefault;
    double cpu_high_watermark;
    uint64_t disk_bytes;
    char disk_paths[512];
    uint64_t disk_queue_depth;
    uint64_t disk_staging_bytes;
    uint64_t disk_object_bytes_max;
    uint64_t disk_objects_max;
    char disk_codec[8];
    char disk_form[8];
    char disk_form_cold[8];
    uint64_t disk_codec_level;
    double disk_min_saving;
    double disk_high_watermark;
    int disk_allow_buffered;
    uint64_t disk_io_errors_max;
    int disk_required;
    uint64_t disk_fault_fail_next_io;
    uint64_t disk_fault_errno;
    char write_policy[16];
    char disk_admission[16];
    char eviction[8];
    char dirty_full[8];
    int select_promote;
    double select_promote_ratio;
    uint64_t select_window_ms;
    uint64_t select_promote_inflight;
    uint64_t abstract_bytes_max;
    char abstract_spans[12];
    uint64_t abstract_block_tokens;
    uint64_t abstract_max_tokens;
    double abstract_merge_tol;
    uint64_t abstract_fine_layers;
    uint64_t reuse_versions_max;
    double reuse_alpha;
    uint64_t reuse_bytes_max;
    uint64_t reuse_log_bytes_max;
    uint64_t hold_max;
    uint64_t hold_pins_max;
    uint64_t hold_ttl_ms;
    uint64_t context_max;
    uint64_t context_chunks_max;
    uint64_t context_ttl_ms;
    char metrics_listen[256];
    int metrics_allow_remote;
    uint64_t metrics_connections_max;
    uint64_t metrics_idle_timeout_s;
};

extern const struct kvt_cfg_table kvt_dconfig_table;

/* Checks what no single key can: cross-key limits, uid lists and the tenant map, fault keys
 * without fault_injection, max_clients against the descriptor limit. 0, or KVT_E_BADCONFIG with
 * the reason in why. Runs at start, on every runtime change and on reload. */
int kvt_dconfig_check(const struct kvt_dconfig *cfg, char *why, size_t why_cap);

#endif
