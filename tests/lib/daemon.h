/*
 * Test and benchmark harness: starts a real kvtierd on a temporary socket and directory, waits
 * until it answers, and stops it (gracefully or with SIGKILL). The binary is found through
 * $KVT_BUILD (default "build").
 */
#ifndef KVT_TESTS_LIB_DAEMON_H
#define KVT_TESTS_LIB_DAEMON_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct kvt_test_daemon {
    pid_t pid;
    char dir[256];          /* temporary directory, also --data-dir */
    char socket_path[320];  /* dir/kvtier.sock */
    char log_path[320];     /* dir/kvtierd.log: the daemon's stderr */
    int no_fault_injection; /* start without --fault_injection=true (the production default) */
};

/* Creates a temp dir (unless d->dir is already set, to restart on the same data) and starts
 * kvtierd with --socket and --data-dir plus extra_args (NULL-terminated "--key=value" strings, may
 * be NULL). Waits up to 10 s for the socket to answer a ping. Returns 0 or -1. */
int kvt_test_daemon_start(struct kvt_test_daemon *d, const char *const *extra_args);
/* SIGTERM, wait for exit; returns the exit status (0 on a clean shutdown) or -1. */
int kvt_test_daemon_stop(struct kvt_test_daemon *d);
/* SIGKILL and reap, keeping the directory so the daemon can be restarted on the same data. */
void kvt_test_daemon_kill(struct kvt_test_daemon *d);
/* Removes the temporary directory (after stop/kill). */
void kvt_test_daemon_cleanup(struct kvt_test_daemon *d);

struct kvt_client;
/* The daemon statistic called name, read through c; UINT64_MAX when the call fails or no stat has
 * that name. */
uint64_t kvt_test_stat(struct kvt_client *c, const char *name);
/* Fills n bytes with a pattern of seed: half the bytes random, half repeating (so lz4 has
 * something to compress). */
void kvt_test_fill(void *buf, size_t n, uint64_t seed);
/* Sends n bytes (a whole frame) on a connected Unix socket, passing pass_fd (-1: none) with them as
 * SCM_RIGHTS, the way a client shares its arena. 0, or -1 when not everything was sent. */
int kvt_test_send_with_fd(int sock, const void *buf, size_t n, int pass_fd);
/* Reads one length-prefixed response frame of at most max_frame bytes from a raw socket (5 s per
 * read); NULL when the connection ended, timed out or the frame did not decode. Free it with
 * kvtier__response__free_unpacked(resp, NULL). */
struct Kvtier__Response;
struct Kvtier__Response *kvt_test_read_response(int fd, size_t max_frame);

/* The same for pipelined requests, whose answers arrive together: bytes of the frames after the
 * one returned are kept for the next call on the same fd (one connection at a time; a call on
 * another fd forgets them). Frames up to 64 KiB. */
struct Kvtier__Response *kvt_test_read_pipelined(int fd);

/* Raw protocol sessions, for tests that send frames themselves. */
struct Kvtier__Request;
struct kvt_ns_spec;
/* A connected Unix socket, or -errno. */
int kvt_test_raw_connect(const char *socket_path);
/* Sends req as one length-prefixed frame (with pass_fd as SCM_RIGHTS when >= 0): 0 or -1. */
int kvt_test_send_request(int fd, const struct Kvtier__Request *req, int pass_fd);
/* Connects, says Hello as tenant (NULL: the uid's own) with a sealed memfd arena of arena_bytes
 * (0: none; mapped at *arena_out when arena_out is not NULL) and registers spec: returns the fd
 * and *ns_out the daemon's namespace id, or -1 when any step failed. */
int kvt_test_raw_session(const char *socket_path, const char *tenant,
                         const struct kvt_ns_spec *spec, uint64_t arena_bytes, uint8_t **arena_out,
                         uint32_t *ns_out);

#endif
