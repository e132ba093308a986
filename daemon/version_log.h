/*
 * The version log (docs/reuse.md, "Across restarts"): an append-only file in data_dir
 * (kvtier-versions.log) of checksummed records (daemon/version_io.h): one for each version info
 * and each disk copy of its chunk, written when the copy is durable, or when the info is set on
 * a chunk whose copy already is. A record names its object (namespace
 * seed, key, variant) and the stamp of that disk copy (the disk tier's sequence number), so that
 * a restart matches it to that copy only: a chunk deleted, evicted or written again never picks up
 * a record of an older copy, and nothing has to be logged when a version goes.
 *
 * Appends are serialized into a bounded buffer on the loop thread and written by one worker job
 * at a time (write, then fdatasync), in order; the loop never blocks on the file. The log is read
 * back and rewritten with only the records that still match (compacted) at start, before the
 * loop runs, where blocking I/O is allowed, and while running when it reaches half of
 * reuse.log_bytes_max (from a snapshot the loop serializes, written by a worker); shutdown writes
 * what is still buffered.
 */
#ifndef KVT_DAEMON_VERSION_LOG_H
#define KVT_DAEMON_VERSION_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/version.h"
#include "daemon/workers.h"
#include "tiers/tier.h"

#define KVT_VERSION_LOG_NAME "kvtier-versions.log"
/* Each of the two append buffers: a record larger than this is never logged (dropped). */
#define KVT_VERSION_LOG_BUFFER_BYTES (4u << 20)

struct kvt_vlog {
    struct kvt_job job; /* the write in flight (first member: the job's done finds the log) */
    struct kvt_workers *workers;
    int fd;     /* open for appends after kvt_vlog_rewrite_end; -1 before and when failed */
    int tmp_fd; /* the rewrite in progress */
    char path[512], tmp_path[520], dir[480];
    unsigned char *buf[2]; /* buf[cur] collects records; the other one is being written */
    size_t len[2], cap;
    uint64_t records[2], batch_records; /* records in each buffer; in the write in flight */
    uint32_t cur;
    int opened, inflight, stopping, failed;
    /* Compaction while running (kvt_vlog_compact): the snapshot being written, the new file's
     * descriptor the worker opened, the log's size after the last compaction. */
    unsigned char *snap;
    size_t snap_len;
    int new_fd, compact_failed, compact_renamed;
    uint64_t compacted_bytes, compactions;
    void (*snapshot)(void *arg); /* asked for a compaction's snapshot (kvt_vlog_compact) */
    void *snapshot_arg;
    uint64_t file_bytes, bytes_max;
    /* Start: the file read back (until kvt_vlog_replay). */
    unsigned char *loaded;
    size_t loaded_len;
    /* Counters (the server's stats copy them). */
    uint64_t appended, synced, dropped, write_errors, corrupt, replayed;
};

struct kvt_vlog_config {
    const char *dir;             /* data_dir (borrowed for the call) */
    struct kvt_workers *workers; /* borrowed until kvt_vlog_close */
    size_t buffer_bytes;         /* each of the two append buffers */
    uint64_t bytes_max;          /* the file's size limit between starts */
    /* Called on the loop thread when a compaction is due and no write is in flight: the owner
     * serializes the live records and hands them to kvt_vlog_compact (or does nothing). */
    void (*snapshot)(void *arg);
    void *snapshot_arg;
};

/* Start: reads the log back into memory (blocking). 0 (also when there is no log), KVT_E_NOMEM,
 * KVT_E_IO (unreadable: the log is then ignored and rewritten). */
int kvt_vlog_open(struct kvt_vlog *l, const struct kvt_vlog_config *cfg);
/* Start: hands every record that passes its checks to fn, oldest first, and frees what was read.
 * A damaged stretch is skipped to the next record that verifies (resynchronized on 8-byte
 * boundaries) and counted once in corrupt; a torn tail the same. */
typedef void (*kvt_vlog_record_fn)(void *arg, const struct kvt_obj_id *id, uint64_t stamp,
                                   const void *form, size_t form_len);
void kvt_vlog_replay(struct kvt_vlog *l, kvt_vlog_record_fn fn, void *arg);
/* Start, after the replay: writes a new log of the records given to kvt_vlog_rewrite_add (to a
 * temporary file: fdatasync, rename, directory fsync), then opens it for appends. Any failure
 * removes the log (no stale record stays) and latches the log failed: versions are then kept in
 * DRAM and in new disk copies' metadata only. 0 or the error. */
int kvt_vlog_rewrite_begin(struct kvt_vlog *l);
int kvt_vlog_rewrite_add(struct kvt_vlog *l, const struct kvt_version *v,
                         const struct kvt_obj_id *id, uint64_t stamp);
int kvt_vlog_rewrite_end(struct kvt_vlog *l);
/* Loop thread: logs v for the disk copy of stamp of object id. 0 (queued; durable once the worker
 * wrote it), KVT_E_FULL (the buffer or the file is full: counted in dropped, v stays in DRAM),
 * KVT_E_TIERFAILED (the log is failed or closed). */
int kvt_vlog_append(struct kvt_vlog *l, const struct kvt_version *v, const struct kvt_obj_id *id,
                    uint64_t stamp);
/* Loop thread: whether the log should be compacted now (it reached half of its limit and
 * doubled since it was last compacted, and no write is in flight). */
int kvt_vlog_compact_due(const struct kvt_vlog *l);
/* Loop thread: replaces the log with the len bytes of records at snap (transferred: freed when
 * done), a worker writing them to a temporary file (fdatasync, rename, directory fsync) that then
 * takes the appends; records appended meanwhile wait in the buffer and go to the new file. A
 * compaction that fails leaves the old log as it was (counted, logged; no further attempt). */
void kvt_vlog_compact(struct kvt_vlog *l, unsigned char *snap, size_t len);
/* Shutdown, after the workers stopped: writes what is still buffered (blocking), closes the file
 * and frees the buffers. NULL-safe and idempotent. */
void kvt_vlog_close(struct kvt_vlog *l);

#endif
