/* Service manager notifications over $NOTIFY_SOCKET (see vectord/notify.h). */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "vectord/notify.h"

int vd_notify_send_to(const char *socket_name, const char *state, bool *sent, struct vd_err *err)
{
    if (sent)
        *sent = false;
    if (!socket_name || !socket_name[0])
        return 0;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t len = strlen(socket_name);
    if (socket_name[0] != '/' && socket_name[0] != '@')
        return vd_errf(err, VD_EINVAL,
                       "NOTIFY_SOCKET: '%s' is neither a path nor an abstract socket name (@name)",
                       socket_name);
    if (len > sizeof sa.sun_path - (socket_name[0] == '/'))
        return vd_errf(err, VD_EINVAL, "NOTIFY_SOCKET: '%s' is too long for a socket address",
                       socket_name);
    memcpy(sa.sun_path, socket_name, len);
    /* An abstract name is its bytes after a NUL, with no terminator: the address length, not a
     * NUL, says where it ends, so the length must not count the path's trailing zero either. */
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = 0;
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);

    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return vd_errf(err, VD_EIO, "NOTIFY_SOCKET: cannot create a socket: %s", strerror(errno));
    int rc = 0;
    size_t n = strlen(state);
    ssize_t w;
    do {
        w = sendto(fd, state, n, MSG_NOSIGNAL, (struct sockaddr *)&sa, alen);
    } while (w < 0 && errno == EINTR);
    if (w < 0)
        rc = vd_errf(err, VD_EIO, "NOTIFY_SOCKET: cannot send to '%s': %s", socket_name,
                     strerror(errno));
    else if ((size_t)w != n)
        rc = vd_errf(err, VD_EIO, "NOTIFY_SOCKET: '%s' took %zd of %zu bytes", socket_name, w, n);
    else if (sent)
        *sent = true;
    close(fd);
    return rc;
}

int vd_notify_send(const char *state, bool *sent, struct vd_err *err)
{
    return vd_notify_send_to(getenv("NOTIFY_SOCKET"), state, sent, err);
}

static void notify_logged(const char *state, const char *what)
{
    struct vd_err err = {0};
    bool sent = false;
    if (vd_notify_send(state, &sent, &err))
        vd_log_warn("cannot tell the service manager that vectord is %s: %s", what, err.msg);
    else if (sent)
        vd_log_debug("told the service manager that vectord is %s", what);
}

void vd_notify_ready(const char *where)
{
    char state[512];
    snprintf(state, sizeof state, "READY=1\nSTATUS=serving REST on %s", where ? where : "?");
    notify_logged(state, "ready");
}

void vd_notify_stopping(void)
{
    notify_logged("STOPPING=1\nSTATUS=shutting down", "stopping");
}
