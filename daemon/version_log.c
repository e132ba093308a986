/*
 * The version log. See version_log.h. Two append buffers: the loop serializes records into one
 * while a worker writes the other; when the write is reaped the buffers swap and the next batch
 * goes out, so at most one write is in flight and records reach the file in the order they were
 * appended.
 */
#include "daemon/version_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "daemon/version_io.h"
#include "kvtier/errors.h"

/* A log larger than this at start is not read: reuse.log_bytes_max (at most 4G) keeps this code
 * from writing one between two starts (plus one buffer); a larger file is not ours. */
#define LOADED_MAX ((1ull << 32) + 2u * KVT_VERSION_LOG_BUFFER_BYTES)

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? -errno : KVT_E_IO;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) ? -errno : 0;
    close(fd);
    return rc;
}

int kvt_vlog_open(struct kvt_vlog *l, const struct kvt_vlog_config *cfg)
{
    memset(l, 0, sizeof(*l));
    l->fd = l->tmp_fd = l->new_fd = -1;
    l->opened = 1;
    l->workers = cfg->workers;
    l->snapshot = cfg->snapshot;
    l->snapshot_arg = cfg->snapshot_arg;
    l->bytes_max = cfg->bytes_max;
    l->cap = cfg->buffer_bytes;
    if (snprintf(l->dir, sizeof(l->dir), "%s", cfg->dir) >= (int)sizeof(l->dir))
        return KVT_E_INVAL;
    snprintf(l->path, sizeof(l->path), "%s/%s", l->dir, KVT_VERSION_LOG_NAME);
    snprintf(l->tmp_path, sizeof(l->tmp_path), "%s.tmp", l->path);
    for (int i = 0; i < 2; i++) {
        l->buf[i] = kvt_malloc(KVT_ALLOC_INDEX, l->cap);
        if (!l->buf[i])
            return KVT_E_NOMEM;
    }
    int fd = open(l->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : KVT_E_IO;
    struct stat sb;
    int rc = 0;
    if (fstat(fd, &sb) || (uint64_t)sb.st_size > LOADED_MAX) {
        rc = KVT_E_IO;
        goto out_close;
    }
    if (sb.st_size == 0)
        goto out_close;
    l->loaded = kvt_malloc(KVT_ALLOC_INDEX, (size_t)sb.st_size);
    if (!l->loaded) {
        rc = KVT_E_NOMEM;
        goto out_close;
    }
    size_t got = 0;
    while (got < (size_t)sb.st_size) {
        ssize_t r = read(fd, l->loaded + got, (size_t)sb.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break; /* shorter than it said: what was read is replayed */
        got += (size_t)r;
    }
    l->loaded_len = got;
out_close:
    close(fd);
    return rc;
}

void kvt_vlog_replay(struct kvt_vlog *l, kvt_vlog_record_fn fn, void *arg)
{
    size_t pos = 0;
    int in_damage = 0;
    while (pos < l->loaded_len) {
        struct kvt_obj_id id;
        uint64_t stamp;
        const void *form;
        size_t form_len, step;
        if (kvt_version_log_record_read(l->loaded + pos, l->loaded_len - pos, &id, &stamp, &form,
                                        &form_len, &step) == 0) {
            in_damage = 0;
            l->replayed++;
            fn(arg, &id, stamp, form, form_len);
            pos += step;
            continue;
        }
        if (!in_damage)
            l->corrupt++;
        in_damage = 1;
        pos += 8; /* records start on 8-byte boundaries: look for the next one that verifies */
    }
    kvt_free(KVT_ALLOC_INDEX, l->loaded);
    l->loaded = NULL;
    l->loaded_len = 0;
}

static void latch_failed(struct kvt_vlog *l, const char *what, int rc)
{
    KVT_ERR("reuse",
            "version log %s: %s %s; version info is kept in DRAM and in new disk copies "
            "only until the next start",
            l->path, what, kvt_strerror(rc));
    l->failed = 1;
    if (l->tmp_fd >= 0)
        close(l->tmp_fd);
    l->tmp_fd = -1;
    unlink(l->tmp_path);
    /* An old log must not outlive a failed rewrite: its records would still match by stamp, but
     * the next start would replay versions this one dropped for want of room. */
    if (unlink(l->path) && errno != ENOENT)
        KVT_ERR("reuse", "cannot remove %s: %s", l->path, strerror(errno));
}

int kvt_vlog_rewrite_begin(struct kvt_vlog *l)
{
    l->tmp_fd = open(l->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (l->tmp_fd < 0) {
        int rc = -errno;
        latch_failed(l, "cannot be rewritten:", rc);
        return rc;
    }
    l->file_bytes = 0;
    return 0;
}

int kvt_vlog_rewrite_add(struct kvt_vlog *l, const struct kvt_version *v,
                         const struct kvt_obj_id *id, uint64_t stamp)
{
    if (l->failed || l->tmp_fd < 0)
        return KVT_E_TIERFAILED;
    size_t n = kvt_version_log_record_bytes(v);
    if (n > l->cap)
        return KVT_E_TOOBIG;
    kvt_version_log_record_write(v, id, stamp, l->buf[0]);
    int rc = write_all(l->tmp_fd, l->buf[0], n);
    if (rc) {
        latch_failed(l, "cannot be rewritten:", rc);
        return rc;
    }
    l->file_bytes += n;
    return 0;
}

int kvt_vlog_rewrite_end(struct kvt_vlog *l)
{
    if (l->failed || l->tmp_fd < 0)
        return KVT_E_TIERFAILED;
    int rc = fdatasync(l->tmp_fd) ? -errno : 0;
    close(l->tmp_fd);
    l->tmp_fd = -1;
    if (rc == 0 && rename(l->tmp_path, l->path))
        rc = -errno;
    if (rc == 0)
        rc = fsync_dir(l->dir);
    if (rc == 0) {
        l->fd = open(l->path, O_WRONLY | O_APPEND | O_CLOEXEC);
        if (l->fd < 0)
            rc = -errno;
    }
    if (rc)
        latch_failed(l, "cannot be rewritten:", rc);
    l->compacted_bytes = l->file_bytes;
    return rc;
}

/* Worker: writes the batch that is not collecting. */
static void vlog_write_job(struct kvt_job *job)
{
    struct kvt_vlog *l = (struct kvt_vlog *)job;
    uint32_t w = l->cur ^ 1u;
    job->res = write_all(l->fd, l->buf[w], l->len[w]);
    if (job->res == 0 && fdatasync(l->fd))
        job->res = -errno;
}

static void vlog_write_done(struct kvt_job *job);

static void vlog_kick(struct kvt_vlog *l)
{
    if (l->inflight || l->stopping || l->failed || !l->len[l->cur] || !l->workers)
        return;
    l->job.fn = vlog_write_job;
    l->job.done = vlog_write_done;
    l->cur ^= 1u;
    l->batch_records = l->records[l->cur ^ 1u];
    l->records[l->cur ^ 1u] = 0;
    l->inflight = 1;
    l->job.ctx = l;
    kvt_workers_submit(l->workers, &l->job);
}

/* Loop: the batch is written; the next one goes. A failed write latches the log: what it held may
 * be half on disk (the replay's checks refuse a torn record), and nothing after it is written. */
static void vlog_write_done(struct kvt_job *job)
{
    struct kvt_vlog *l = (struct kvt_vlog *)job;
    l->inflight = 0;
    uint64_t records = l->batch_records;
    l->batch_records = 0;
    l->len[l->cur ^ 1u] = 0;
    if (job->res) {
        l->write_errors++;
        KVT_ERR("reuse", "version log %s: write failed: %s; no more version info is logged",
                l->path, kvt_strerror(job->res));
        l->failed = 1;
        return;
    }
    l->synced += records;
    /* Between two writes: the one moment a compaction can start under a steady stream. */
    if (kvt_vlog_compact_due(l) && l->snapshot)
        l->snapshot(l->snapshot_arg);
    vlog_kick(l);
}

int kvt_vlog_append(struct kvt_vlog *l, const struct kvt_version *v, const struct kvt_obj_id *id,
                    uint64_t stamp)
{
    if (l->failed || l->fd < 0)
        return KVT_E_TIERFAILED;
    size_t n = kvt_version_log_record_bytes(v);
    uint32_t c = l->cur;
    if (l->len[c] + n > l->cap || l->file_bytes + n > l->bytes_max) {
        l->dropped++;
        KVT_LOG_RATELIMITED(KVT_LOG_WARN, "reuse",
                            "version log %s full (buffer %zu bytes, file %llu of %llu): version "
                            "info of a chunk on disk kept in DRAM only",
                            l->path, l->cap, (unsigned long long)l->file_bytes,
                            (unsigned long long)l->bytes_max);
        return KVT_E_FULL;
    }
    kvt_version_log_record_write(v, id, stamp, l->buf[c] + l->len[c]);
    l->len[c] += n;
    l->records[c]++;
    l->file_bytes += n;
    l->appended++;
    vlog_kick(l);
    return 0;
}

int kvt_vlog_compact_due(const struct kvt_vlog *l)
{
    return l->opened && !l->failed && !l->compact_failed && !l->inflight && !l->stopping &&
           l->workers && l->fd >= 0 && l->file_bytes >= l->bytes_max / 2 &&
           l->file_bytes >= 2 * l->compacted_bytes;
}

/* Worker: the snapshot becomes the new log; the loop swaps the descriptors when it is reaped. */
static void vlog_compact_job(struct kvt_job *job)
{
    struct kvt_vlog *l = (struct kvt_vlog *)job;
    int fd = open(l->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int rc = fd < 0 ? -errno : write_all(fd, l->snap, l->snap_len);
    if (rc == 0 && fdatasync(fd))
        rc = -errno;
    if (fd >= 0)
        close(fd);
    l->compact_renamed = 0;
    if (rc == 0 && rename(l->tmp_path, l->path))
        rc = -errno;
    if (rc == 0) {
        l->compact_renamed = 1;
        rc = fsync_dir(l->dir);
    }
    l->new_fd = -1;
    if (rc == 0) {
        l->new_fd = open(l->path, O_WRONLY | O_APPEND | O_CLOEXEC);
        if (l->new_fd < 0)
            rc = -errno;
    }
    if (rc && !l->compact_renamed)
        unlink(l->tmp_path);
    job->res = rc;
}

static void vlog_compact_done(struct kvt_job *job)
{
    struct kvt_vlog *l = (struct kvt_vlog *)job;
    l->inflight = 0;
    kvt_free(KVT_ALLOC_INDEX, l->snap);
    l->snap = NULL;
    if (job->res == 0) {
        close(l->fd);
        l->fd = l->new_fd;
        l->new_fd = -1;
        l->file_bytes = l->snap_len + l->len[l->cur];
        l->compacted_bytes = l->snap_len;
        l->compactions++;
    } else {
        if (l->new_fd >= 0)
            close(l->new_fd);
        l->new_fd = -1;
        /* Renamed: the old descriptor appends to a file that is gone. */
        if (l->compact_renamed) {
            l->failed = 1;
            KVT_ERR("reuse",
                    "version log %s: compacted but not reopened: %s; no more version "
                    "info is logged",
                    l->path, kvt_strerror(job->res));
        } else {
            l->compact_failed = 1;
            KVT_WARN("reuse",
                     "version log %s: compaction failed: %s; the log grows to "
                     "reuse.log_bytes_max",
                     l->path, kvt_strerror(job->res));
        }
    }
    vlog_kick(l);
}

void kvt_vlog_compact(struct kvt_vlog *l, unsigned char *snap, size_t len)
{
    if (!kvt_vlog_compact_due(l)) {
        kvt_free(KVT_ALLOC_INDEX, snap);
        return;
    }
    l->snap = snap;
    l->snap_len = len;
    l->inflight = 1;
    l->job.fn = vlog_compact_job;
    l->job.done = vlog_compact_done;
    l->job.ctx = l;
    kvt_workers_submit(l->workers, &l->job);
}

void kvt_vlog_close(struct kvt_vlog *l)
{
    if (!l || !l->opened)
        return;
    l->opened = 0;
    l->stopping = 1;
    /* The workers are stopped and their jobs reaped: nothing is in flight. What the last batch
     * did not take is written here. */
    if (!l->inflight && !l->failed && l->fd >= 0 && l->len[l->cur]) {
        int rc = write_all(l->fd, l->buf[l->cur], l->len[l->cur]);
        if (rc == 0 && fdatasync(l->fd))
            rc = -errno;
        if (rc) {
            l->write_errors++;
            KVT_ERR("reuse", "version log %s: last write failed: %s", l->path, kvt_strerror(rc));
        } else {
            l->synced += l->records[l->cur];
        }
        l->len[l->cur] = 0;
    }
    if (l->fd >= 0)
        close(l->fd);
    l->fd = -1;
    if (l->tmp_fd >= 0)
        close(l->tmp_fd);
    l->tmp_fd = -1;
    for (int i = 0; i < 2; i++) {
        kvt_free(KVT_ALLOC_INDEX, l->buf[i]);
        l->buf[i] = NULL;
    }
    kvt_free(KVT_ALLOC_INDEX, l->loaded);
    l->loaded = NULL;
    kvt_free(KVT_ALLOC_INDEX, l->snap);
    l->snap = NULL;
}
