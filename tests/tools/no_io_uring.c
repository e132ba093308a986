/*
 * no_io_uring: runs a command under a seccomp filter that refuses io_uring_setup,
 * io_uring_enter and io_uring_register with EPERM, as the default seccomp profiles of container
 * runtimes do. Needs no privilege (PR_SET_NO_NEW_PRIVS). The test of the disk tier's graceful
 * degradation starts kvtierd under it: the refusal is the kernel's, not a simulation.
 *
 *   no_io_uring [--register-only] COMMAND [ARGS...]
 *
 * --register-only refuses io_uring_register alone (a ring can be made, nothing registered with
 * it), as some hand-written profiles do.
 */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#define __NR_io_uring_enter 426
#define __NR_io_uring_register 427
#endif

#if defined(__x86_64__)
#define ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH AUDIT_ARCH_AARCH64
#else
#error "no_io_uring: add this architecture's AUDIT_ARCH"
#endif

#define REFUSE(nr)                                                                                 \
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1),                                               \
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA))

int main(int argc, char **argv)
{
    int register_only = argc > 1 && !strcmp(argv[1], "--register-only");
    argv += register_only;
    argc -= register_only;
    if (argc < 2) {
        fprintf(stderr, "usage: no_io_uring [--register-only] COMMAND [ARGS...]\n");
        return 2;
    }
    /* Refused syscall numbers; a number no syscall has stands in for the ones left alone. */
    unsigned setup = register_only ? 0xffffffffu : __NR_io_uring_setup;
    unsigned enter = register_only ? 0xffffffffu : __NR_io_uring_enter;
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        REFUSE(setup),
        REFUSE(enter),
        REFUSE(__NR_io_uring_register),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof(filter) / sizeof(filter[0]), .filter = filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
        fprintf(stderr, "no_io_uring: seccomp: %s\n", strerror(errno));
        return 1;
    }
    execvp(argv[1], argv + 1);
    fprintf(stderr, "no_io_uring: %s: %s\n", argv[1], strerror(errno));
    return 127;
}
