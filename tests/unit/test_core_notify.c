/* Service manager notifications: real AF_UNIX datagram sockets (a path and an abstract name)
 * receive exactly what vectord sends, and nothing is sent without NOTIFY_SOCKET. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <cmocka.h>

#include "vectord/notify.h"

struct listener {
    int fd;
    char name[sizeof(((struct sockaddr_un *)0)->sun_path) + 1]; /* as NOTIFY_SOCKET spells it */
    char dir[64];
};

/* A datagram socket bound to a fresh path (abstract == false) or abstract name. */
static void listen_on(struct listener *l, bool abstract)
{
    memset(l, 0, sizeof *l);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    socklen_t alen;
    if (abstract) {
        snprintf(l->name, sizeof l->name, "@vectord-test-notify-%ld", (long)getpid());
        memcpy(sa.sun_path + 1, l->name + 1, strlen(l->name) - 1);
        alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(l->name));
    } else {
        snprintf(l->dir, sizeof l->dir, "/tmp/vd-notify-XXXXXX");
        assert_non_null(mkdtemp(l->dir));
        snprintf(l->name, sizeof l->name, "%s/notify", l->dir);
        strcpy(sa.sun_path, l->name);
        alen = sizeof sa;
    }
    l->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(l->fd >= 0);
    assert_int_equal(bind(l->fd, (struct sockaddr *)&sa, alen), 0);
}

static void listener_close(struct listener *l)
{
    close(l->fd);
    if (l->dir[0]) {
        unlink(l->name);
        rmdir(l->dir);
    }
}

/* The next datagram, which must already be queued (sendto on AF_UNIX delivers before it
 * returns), as a string. */
static void next_datagram(struct listener *l, char *buf, size_t cap)
{
    ssize_t n = recv(l->fd, buf, cap - 1, MSG_DONTWAIT);
    assert_true(n >= 0);
    buf[n] = 0;
}

static void assert_queue_empty(struct listener *l)
{
    char c;
    assert_true(recv(l->fd, &c, 1, MSG_DONTWAIT) < 0);
}

static void test_path_socket(void **state)
{
    (void)state;
    struct listener l;
    listen_on(&l, false);
    struct vd_err err = {0};
    bool sent = false;
    assert_int_equal(vd_notify_send_to(l.name, "READY=1", &sent, &err), 0);
    assert_true(sent);
    char buf[256];
    next_datagram(&l, buf, sizeof buf);
    assert_string_equal(buf, "READY=1");
    assert_queue_empty(&l);
    listener_close(&l);
}

static void test_abstract_socket(void **state)
{
    (void)state;
    struct listener l;
    listen_on(&l, true);
    struct vd_err err = {0};
    bool sent = false;
    assert_int_equal(vd_notify_send_to(l.name, "STOPPING=1", &sent, &err), 0);
    assert_true(sent);
    char buf[256];
    next_datagram(&l, buf, sizeof buf);
    assert_string_equal(buf, "STOPPING=1");
    listener_close(&l);
}

/* The hooks vectord calls read NOTIFY_SOCKET; without it they send nothing and do not fail. */
static void test_hooks_follow_the_environment(void **state)
{
    (void)state;
    struct listener l;
    listen_on(&l, false);
    unsetenv("NOTIFY_SOCKET");
    struct vd_err err = {0};
    bool sent = true;
    assert_int_equal(vd_notify_send("READY=1", &sent, &err), 0);
    assert_false(sent);
    vd_notify_ready("10.0.0.1:6333");
    assert_queue_empty(&l);

    setenv("NOTIFY_SOCKET", "", 1);
    assert_int_equal(vd_notify_send("READY=1", &sent, &err), 0);
    assert_false(sent);

    setenv("NOTIFY_SOCKET", l.name, 1);
    char buf[256];
    vd_notify_ready("10.0.0.1:6333");
    next_datagram(&l, buf, sizeof buf);
    assert_string_equal(buf, "READY=1\nSTATUS=serving REST on 10.0.0.1:6333");
    vd_notify_stopping();
    next_datagram(&l, buf, sizeof buf);
    assert_string_equal(buf, "STOPPING=1\nSTATUS=shutting down");
    assert_queue_empty(&l);
    unsetenv("NOTIFY_SOCKET");
    listener_close(&l);
}

static void test_bad_names(void **state)
{
    (void)state;
    struct vd_err err = {0};
    bool sent = true;
    assert_int_equal(vd_notify_send_to("run/notify", "READY=1", &sent, &err), VD_EINVAL);
    assert_false(sent);
    assert_non_null(strstr(err.msg, "NOTIFY_SOCKET"));
    char longname[200];
    memset(longname, 'a', sizeof longname - 1);
    longname[0] = '/';
    longname[sizeof longname - 1] = 0;
    assert_int_equal(vd_notify_send_to(longname, "READY=1", &sent, &err), VD_EINVAL);
    assert_non_null(strstr(err.msg, "too long"));
    /* the longest abstract name fits (107 bytes after the '@'), one more does not */
    longname[0] = '@';
    longname[108] = 0;
    int rc = vd_notify_send_to(longname, "READY=1", &sent, &err);
    assert_int_equal(rc, VD_EIO); /* valid, but nobody listens there */
    longname[108] = 'a';
    longname[109] = 0;
    assert_int_equal(vd_notify_send_to(longname, "READY=1", &sent, &err), VD_EINVAL);
}

/* A socket nobody listens on is an error the caller hears about (and vectord logs). */
static void test_nobody_listening(void **state)
{
    (void)state;
    struct listener l;
    listen_on(&l, false);
    listener_close(&l); /* the path is gone */
    struct vd_err err = {0};
    bool sent = true;
    assert_int_equal(vd_notify_send_to(l.name, "READY=1", &sent, &err), VD_EIO);
    assert_false(sent);
    assert_non_null(strstr(err.msg, "cannot send"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_path_socket),
        cmocka_unit_test(test_abstract_socket),
        cmocka_unit_test(test_hooks_follow_the_environment),
        cmocka_unit_test(test_bad_names),
        cmocka_unit_test(test_nobody_listening),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
