/* Error table and contextual error messages. */
#include <stdio.h>
#include <string.h>

#include "vectord/core.h"

static const struct {
    const char *text;
    int http;
} table[VD__ECOUNT] = {
    [0] = {"ok", 200},
    [-VD_EINVAL] = {"invalid input", 400},
    [-VD_ERANGE] = {"value out of range", 422},
    [-VD_ENOTFOUND] = {"not found", 404},
    [-VD_EEXIST] = {"already exists", 409},
    [-VD_ENOMEM] = {"out of memory", 500},
    [-VD_EIO] = {"I/O error", 500},
    [-VD_ETOOBIG] = {"too large", 413},
    [-VD_EAUTH] = {"missing or wrong API key", 401},
    [-VD_EPERM] = {"API key lacks the required role", 403},
    [-VD_EUNAVAIL] = {"service unavailable", 503},
    [-VD_ECORRUPT] = {"data corrupt", 500},
    [-VD_EFULL] = {"storage full", 507},
    [-VD_EBUSY] = {"resource busy", 503},
    [-VD_ECLOSED] = {"shutting down", 503},
    [-VD_ETIMEOUT] = {"timed out", 504},
    [-VD_ENOTLEADER] = {"not the leader", 503},
    [-VD_EINTERNAL] = {"internal error", 500},
};

const char *vd_strerror(int code)
{
    if (code > 0 || -code >= VD__ECOUNT || !table[-code].text)
        return "unknown error";
    return table[-code].text;
}

int vd_err_http_status(int code)
{
    if (code > 0 || -code >= VD__ECOUNT || !table[-code].text)
        return 500;
    return table[-code].http;
}

int vd_errf(struct vd_err *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

void vd_err_prefix(struct vd_err *err, const char *fmt, ...)
{
    if (!err)
        return;
    char pre[256], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    snprintf(err->msg, sizeof err->msg, "%s: %s", pre, old);
}

void vd_err_clear(struct vd_err *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = 0;
    }
}
