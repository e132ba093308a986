/*
 * common/paths: the default socket path for root, for a user with and without $XDG_RUNTIME_DIR
 * (checked in a child that drops to uid 65534 when the test runs as root), and the daemon's check
 * of the socket's directory: created when missing, refused when another user owns it, when group
 * or others may write it (/tmp included), or when it is a symlink.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/paths.h"
#include "kvtier/errors.h"

#define OTHER_UID 65534

/* Expectations for a non-root euid; returns the number of mismatches (printed). */
static int check_user_defaults(void)
{
    char buf[KVT_SOCKET_PATH_MAX], want[KVT_SOCKET_PATH_MAX];
    int bad = 0;
    unsigned uid = (unsigned)geteuid();

    unsetenv("XDG_RUNTIME_DIR");
    snprintf(want, sizeof(want), "/tmp/kvtier-%u/kvtier.sock", uid);
    if (kvt_socket_default(buf, sizeof(buf)) || strcmp(buf, want))
        bad++, fprintf(stderr, "no XDG: got %s want %s\n", buf, want);

    setenv("XDG_RUNTIME_DIR", "/run/user/4242", 1);
    if (kvt_socket_default(buf, sizeof(buf)) || strcmp(buf, "/run/user/4242/kvtier/kvtier.sock"))
        bad++, fprintf(stderr, "XDG: got %s\n", buf);

    setenv("XDG_RUNTIME_DIR", "relative/dir", 1); /* not absolute: ignored */
    if (kvt_socket_default(buf, sizeof(buf)) || strcmp(buf, want))
        bad++, fprintf(stderr, "relative XDG: got %s\n", buf);

    char longdir[KVT_SOCKET_PATH_MAX];
    memset(longdir, 'x', sizeof(longdir) - 1);
    longdir[0] = '/';
    longdir[sizeof(longdir) - 1] = '\0';
    setenv("XDG_RUNTIME_DIR", longdir, 1); /* the socket would not fit sun_path */
    if (kvt_socket_default(buf, sizeof(buf)) || strcmp(buf, want))
        bad++, fprintf(stderr, "long XDG: got %s\n", buf);
    unsetenv("XDG_RUNTIME_DIR");
    return bad;
}

static void test_socket_default(void **state)
{
    (void)state;
    char buf[KVT_SOCKET_PATH_MAX];
    if (geteuid() != 0) {
        assert_int_equal(check_user_defaults(), 0);
    } else {
        setenv("XDG_RUNTIME_DIR", "/run/user/0", 1); /* root ignores it */
        assert_int_equal(kvt_socket_default(buf, sizeof(buf)), 0);
        assert_string_equal(buf, "/run/kvtier/kvtier.sock");
        unsetenv("XDG_RUNTIME_DIR");
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            if (setgid(OTHER_UID) || setuid(OTHER_UID))
                _exit(100);
            _exit(check_user_defaults());
        }
        int st = 0;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
    }
    /* Too small a buffer is an error, never a truncated path. */
    memset(buf, 'z', sizeof(buf));
    assert_int_equal(kvt_socket_default(buf, 8), KVT_E_TOOBIG);
    assert_string_equal(buf, "");
    assert_int_equal(kvt_socket_default(NULL, 8), KVT_E_INVAL);
}

struct tmp {
    char dir[48];
    char sock[128];
    char sub[96];
};

static int tmp_setup(void **state)
{
    static struct tmp t;
    snprintf(t.dir, sizeof(t.dir), "/tmp/kvt-paths-XXXXXX");
    if (!mkdtemp(t.dir))
        return -1;
    snprintf(t.sub, sizeof(t.sub), "%s/run", t.dir);
    snprintf(t.sock, sizeof(t.sock), "%s/kvtier.sock", t.sub);
    *state = &t;
    return 0;
}

static int tmp_teardown(void **state)
{
    struct tmp *t = *state;
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", t->dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_dir_created_and_trusted(void **state)
{
    struct tmp *t = *state;
    char why[256];
    mode_t old = umask(0);
    int rc = kvt_socket_dir_prepare(t->sock, why, sizeof(why));
    umask(old);
    assert_int_equal(rc, 0);
    struct stat st;
    assert_int_equal(lstat(t->sub, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0755);
    assert_int_equal(st.st_uid, geteuid());
    /* Again, now that it exists. */
    assert_int_equal(kvt_socket_dir_prepare(t->sock, why, sizeof(why)), 0);
}

static void test_dir_writable_refused(void **state)
{
    struct tmp *t = *state;
    char why[256];
    assert_int_equal(mkdir(t->sub, 0700), 0);
    assert_int_equal(chmod(t->sub, 0777), 0);
    assert_int_equal(kvt_socket_dir_prepare(t->sock, why, sizeof(why)), -EACCES);
    assert_non_null(strstr(why, "writable by others"));
    assert_int_equal(chmod(t->sub, 01777), 0); /* sticky does not help: anyone may bind first */
    assert_int_equal(kvt_socket_dir_prepare(t->sock, why, sizeof(why)), -EACCES);
    assert_int_equal(chmod(t->sub, 0770), 0);
    assert_int_equal(kvt_socket_dir_prepare(t->sock, why, sizeof(why)), -EACCES);
    assert_non_null(strstr(why, "its group"));
    assert_int_equal(chmod(t->sub, 0750), 0);
    assert_int_equal(kvt_socket_dir_prepare(t->sock, NULL, 0), 0);
    /* The squatting case of the issue: a socket straight in /tmp. */
    assert_int_equal(kvt_socket_dir_prepare("/tmp/kvtier.sock", why, sizeof(why)), -EACCES);
}

static void test_dir_other_owner_refused(void **state)
{
    struct tmp *t = *state;
    char why[256];
    if (geteuid() != 0) {
        skip(); /* needs chown */
        return;
    }
    assert_int_equal(mkdir(t->sub, 0755), 0);
    assert_int_equal(chown(t->sub, OTHER_UID, OTHER_UID), 0);
    assert_int_equal(kvt_socket_dir_prepare(t->sock, why, sizeof(why)), -EACCES);
    assert_non_null(strstr(why, "owned by uid 65534"));
}

static void test_dir_symlink_and_missing(void **state)
{
    struct tmp *t = *state;
    char why[256], target[160], deep[192];
    snprintf(target, sizeof(target), "%s/real", t->dir);
    assert_int_equal(mkdir(target, 0755), 0);
    assert_int_equal(symlink(target, t->sub), 0);
    assert_int_equal(kvt_socket_dir_prepare(t->sock, why, sizeof(why)), -ELOOP);
    assert_non_null(strstr(why, "symlink"));
    /* One level only: a missing grandparent is an error, not a tree of directories. */
    snprintf(deep, sizeof(deep), "%s/a/b/kvtier.sock", t->dir);
    assert_int_equal(kvt_socket_dir_prepare(deep, why, sizeof(why)), -ENOENT);
    assert_int_equal(kvt_socket_dir_prepare("", why, sizeof(why)), KVT_E_INVAL);
    assert_int_equal(kvt_socket_dir_prepare(NULL, why, sizeof(why)), KVT_E_INVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_socket_default),
        cmocka_unit_test_setup_teardown(test_dir_created_and_trusted, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_dir_writable_refused, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_dir_other_owner_refused, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_dir_symlink_and_missing, tmp_setup, tmp_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
