/*
 * The daemon's tiers, built from its config: the CPU arena (tier 0) and, when disk.bytes > 0, the
 * disk store (tier 1), handed in that order to the tier manager with the policies the config
 * names. The only place in the daemon that knows which tiers exist.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/time.h"
#include "daemon/ops.h"
#include "daemon/server.h"

#define WRITES_WARN 4

static int split_paths(char *list, const char **paths, uint32_t max)
{
    uint32_t n = 0;
    for (char *save = NULL, *p = strtok_r(list, ",", &save); p && n < max;
         p = strtok_r(NULL, ",", &save))
        if (*p)
            paths[n++] = p;
    return (int)n;
}

/* What usually makes io_uring_setup fail, by its errno. */
static const char *likely_cause(int err)
{
    switch (err) {
    case EPERM:
        return "a seccomp profile that blocks io_uring (the container runtime's default one) or "
               "the kernel.io_uring_disabled sysctl";
    case ENOSYS:
        return "a kernel without io_uring (older than 5.1, or built without it) or a seccomp "
               "profile that hides it";
    case ENOMEM:
        return "no memory for the ring: RLIMIT_MEMLOCK on kernels older than 5.12";
    default:
        return "see io_uring_setup(2)";
    }
}

static int disk_open(struct kvt_server *s)
{
    const struct kvt_dconfig *cfg = s->cfg;
    char path_buf[sizeof(cfg->disk_paths)], default_path[300];
    const char *paths[KVT_DISK_PATHS_MAX];
    snprintf(path_buf, sizeof(path_buf), "%s", cfg->disk_paths);
    int n = split_paths(path_buf, paths, KVT_DISK_PATHS_MAX);
    if (n == 0) {
        snprintf(default_path, sizeof(default_path), "%s/disk.0", cfg->data_dir);
        paths[0] = default_path;
        n = 1;
    }
    struct kvt_disk_config dc;
    kvt_disk_config_init(&dc);
    for (int i = 0; i < n; i++)
        dc.paths[i] = paths[i];
    dc.n_paths = (uint32_t)n;
    dc.file_bytes = cfg->disk_bytes / (uint64_t)n / 4096 * 4096;
    dc.meta_dir = cfg->data_dir;
    dc.queue_depth = (uint32_t)cfg->disk_queue_depth;
    dc.staging_bytes = cfg->disk_staging_bytes;
    dc.object_bytes_max = cfg->disk_object_bytes_max;
    dc.objects_max = (uint32_t)cfg->disk_objects_max;
    dc.io_errors_max = (uint32_t)cfg->disk_io_errors_max;
    dc.allow_buffered = cfg->disk_allow_buffered;
    kvt_codec_config_init(&dc.codec);
    dc.codec.algo = !strcmp(cfg->disk_codec, "zstd")  ? KVT_CODEC_ZSTD
                    : !strcmp(cfg->disk_codec, "lz4") ? KVT_CODEC_LZ4
                                                      : KVT_CODEC_NONE;
    dc.codec.level = (int)cfg->disk_codec_level;
    dc.codec.min_saving_ratio = cfg->disk_min_saving;
    dc.codec.input_bytes_max = cfg->disk_object_bytes_max;
    dc.faults = &s->disk_faults;
    char why[256] = "";
    int ring_errno = 0;
    dc.err_buf = why;
    dc.err_buf_bytes = sizeof(why);
    dc.ring_errno_out = &ring_errno;
    int rc = kvt_disk_create(&dc, &s->disk);
    if (rc && ring_errno && !cfg->disk_required) {
        /* io_uring itself is refused: nothing in the config can fix it, and DRAM alone still
         * serves. Any other failure (a path, the lock, recovery) is the operator's to fix and
         * still stops the start, as does disk.required. */
        s->disk = NULL;
        s->disk_start_errno = ring_errno;
        snprintf(s->disk_start_why, sizeof(s->disk_start_why),
                 "the kernel refused io_uring: %s (errno %d, %s): %s", strerror(ring_errno),
                 ring_errno, why, likely_cause(ring_errno));
        KVT_ERR("tier",
                "disk tier OFF, running on DRAM only: %s; set disk.required=true to "
                "refuse to start instead",
                s->disk_start_why);
        return rc;
    }
    if (rc) {
        KVT_ERR("tier", "disk tier cannot start on %s: %s (%s)", paths[0], kvt_strerror(rc), why);
        s->disk = NULL;
        return rc;
    }
    kvt_disk_tier_init(&s->disk_tier, s->disk, &dc.codec);
    KVT_INFO("tier", "disk tier open paths=%d bytes=%llu", n, (unsigned long long)cfg->disk_bytes);
    return 0;
}

int kvt__server_tiers_open(struct kvt_server *s)
{
    const struct kvt_dconfig *cfg = s->cfg;
    struct kvt_host_config hc = {.arena_bytes = cfg->cpu_arena_bytes,
                                 .page_bytes = cfg->cpu_page_bytes,
                                 .hugepages = cfg->cpu_hugepages,
                                 .prefault = cfg->cpu_prefault};
    int rc = kvt_host_create(&hc, NULL, NULL, &s->host);
    if (rc) {
        KVT_ERR("server", "cpu tier: %s (arena_bytes must be at least page_bytes, a 4K multiple)",
                kvt_strerror(rc));
        return rc;
    }
    kvt_host_set_owners(s->host, s->ns.dram_bytes, s->ns.cap); /* per-tenant DRAM quotas */
    struct kvt_tier tiers[2] = {{&kvt_host_tier_ops, s->host}};
    uint32_t n = 1;
    if (cfg->disk_bytes == 0) {
        KVT_INFO("tier", "disk tier off (disk.bytes = 0)");
    } else {
        rc = disk_open(s);
        if (rc && !s->disk_start_errno)
            return rc;
        if (s->disk)
            tiers[n++] = (struct kvt_tier){&kvt_disk_tier_ops, &s->disk_tier};
    }
    struct kvt_tm_config tc = {
        .write_through = strcmp(cfg->write_policy, "write-through") == 0,
        .admit_second_access = strcmp(cfg->disk_admission, "second-access") == 0,
        .dirty_reject = strcmp(cfg->dirty_full, "reject") == 0,
        .eviction_cost = strcmp(cfg->eviction, "cost") == 0,
        .select_promote = cfg->select_promote,
        .select_promote_ratio = cfg->select_promote_ratio,
        .select_window_ms = cfg->select_window_ms,
        .select_promote_inflight = (uint32_t)cfg->select_promote_inflight,
        .tier = {{.high_watermark = cfg->cpu_high_watermark},
                 {.high_watermark = cfg->disk_high_watermark,
                  .objects_max = cfg->disk_objects_max,
                  .object_bytes_max = cfg->disk_object_bytes_max}},
    };
    /* Background writes may use at most half the staging buffers: reads must find one. Fewer
     * than WRITES_WARN in flight is said at start (docs/benchmarks.md, capacity: one write in
     * flight made write-back drop most chunks leaving DRAM). */
    uint64_t buffers = cfg->disk_staging_bytes / cfg->disk_object_bytes_max;
    tc.writes_max =
        (uint32_t)(buffers / 2 < cfg->disk_queue_depth ? buffers / 2 : cfg->disk_queue_depth);
    if (tc.writes_max == 0)
        tc.writes_max = 1;
    if (s->disk && tc.writes_max < WRITES_WARN && tc.writes_max < cfg->disk_queue_depth)
        KVT_WARN("tier",
                 "disk: only %u background writes can be in flight (disk.staging_bytes %llu / "
                 "disk.object_bytes_max %llu = %llu staging buffers, half for writes): under load "
                 "DRAM fills faster than the disk drains; raise disk.staging_bytes or lower "
                 "disk.object_bytes_max",
                 tc.writes_max, (unsigned long long)cfg->disk_staging_bytes,
                 (unsigned long long)cfg->disk_object_bytes_max, (unsigned long long)buffers);
    if ((rc = kvt_tm_create(&tc, &s->idx, tiers, n, s->workers, s->loop, &kvt__ops_tm_callbacks, s,
                            &s->tm))) {
        KVT_ERR("tier", "tier manager: %s", kvt_strerror(rc));
        return rc;
    }
    if (s->disk) {
        kvt__server_abstracts_restore(s);
        kvt__server_versions_restore(s);
    }
    /* Injected faults given at start count from the first I/O after recovery. */
    kvt__server_tiers_config_changed(s);
    if (s->disk) {
        struct kvt_tm_stats st;
        kvt_tm_stats(s->tm, &st);
        KVT_INFO("tier", "disk tier ready objects=%llu start_ms=%llu policy=%s",
                 (unsigned long long)st.recovered_objects, (unsigned long long)st.recovery_ms,
                 cfg->write_policy);
    }
    return 0;
}

void kvt__server_tiers_config_changed(struct kvt_server *s)
{
    s->disk_faults.fail_next_io = (uint32_t)s->cfg->disk_fault_fail_next_io;
    s->disk_faults.fail_errno = (int)s->cfg->disk_fault_errno;
}

void kvt__server_tiers_close(struct kvt_server *s)
{
    if (s->tm)
        kvt_tm_stop(s->tm);
    if (s->disk)
        kvt_disk_destroy(s->disk); /* runs the last callbacks: they only release what they hold */
    s->disk = NULL;
    kvt_tm_destroy(s->tm);
    s->tm = NULL;
    kvt_host_destroy(s->host);
    s->host = NULL;
}

int kvt__server_tiers_health(struct kvt_server *s, char *why, size_t cap)
{
    if (s->cfg->disk_bytes > 0 && !s->disk) {
        snprintf(why, cap, "disk tier not started: %s", s->disk_start_why);
        return 1;
    }
    if (s->disk) {
        struct kvt_disk_stats ds;
        kvt_disk_stats(s->disk, &ds);
        if (ds.tier.failed) {
            snprintf(why, cap,
                     "disk tier latched failed after %llu I/O errors (disk.io_errors_max in a "
                     "row); serving from DRAM only",
                     (unsigned long long)ds.tier.io_errors);
            return 1;
        }
    }
    snprintf(why, cap, "ok");
    return 0;
}
