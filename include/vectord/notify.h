/*
 * Readiness and state notifications to a service manager (systemd's Type=notify), spoken over the
 * plain datagram protocol: one AF_UNIX datagram of newline-separated VAR=value lines sent to the
 * socket named by $NOTIFY_SOCKET. No libsystemd needed; without $NOTIFY_SOCKET nothing is sent.
 */
#ifndef VECTORD_NOTIFY_H
#define VECTORD_NOTIFY_H

#include "vectord/core.h"

/* Sends `state` (e.g. "READY=1\nSTATUS=serving") as one datagram to the socket `socket_name`
 * names: a filesystem path ("/run/systemd/notify") or an abstract name ("@name", the '@'
 * standing for the leading NUL byte). socket_name NULL or empty: nothing is sent, *sent = false,
 * returns 0. Both strings are borrowed for the call only. Errors: VD_EINVAL (a name that is
 * neither form, or too long for an AF_UNIX address), VD_EIO (the socket could not be created or
 * the datagram not sent; err says why). `sent` may be NULL. */
int vd_notify_send_to(const char *socket_name, const char *state, bool *sent, struct vd_err *err);

/* vd_notify_send_to with the socket $NOTIFY_SOCKET names (read at each call). */
int vd_notify_send(const char *state, bool *sent, struct vd_err *err);

/* The two states vectord reports: READY=1 (with a STATUS= line naming the REST address `where`,
 * borrowed) once the node answers /readyz with 200, STOPPING=1 when shutdown begins. A failure is
 * logged as a warning and otherwise ignored: a service manager that never hears READY=1 fails
 * the start by its own timeout, which says more than stopping here would. */
void vd_notify_ready(const char *where);
void vd_notify_stopping(void);

#endif
