/*
 * NDJSON line splitter for bodies that arrive in pieces. A line that arrives whole inside one
 * chunk is handed out straight from the chunk; only a line split across chunks is copied, into a
 * buffer that never grows past max_line + 1 bytes (the extra byte holds a possible '\r').
 */
#include <stdlib.h>
#include <string.h>

#include "vectord/json.h"

struct vd_ndjson {
    size_t max_line;
    vd_ndjson_line_fn fn;
    void *ctx;
    char *buf; /* partial line carried between chunks */
    size_t len, cap;
    bool skipping;   /* inside a line already known to be too long */
    size_t skip_len; /* bytes of that line seen so far */
    char skip_last;  /* its last byte so far, to leave a final '\r' out of the length */
    uint64_t lineno;
    uint64_t overlong;
    int stopped; /* the callback's nonzero value, sticky */
    bool finished;
};

int vd_ndjson_new(size_t max_line, vd_ndjson_line_fn fn, void *ctx, struct vd_ndjson **out)
{
    *out = NULL;
    if (max_line == 0 || max_line == SIZE_MAX || !fn)
        return VD_EINVAL;
    struct vd_ndjson *s = calloc(1, sizeof(*s));
    if (!s)
        return VD_ENOMEM;
    s->max_line = max_line;
    s->fn = fn;
    s->ctx = ctx;
    *out = s;
    return 0;
}

void vd_ndjson_free(struct vd_ndjson *s)
{
    if (!s)
        return;
    free(s->buf);
    free(s);
}

uint64_t vd_ndjson_overlong(const struct vd_ndjson *s)
{
    return s->overlong;
}

uint64_t vd_ndjson_lines(const struct vd_ndjson *s)
{
    return s->lineno;
}

/* Hands one complete line (newline removed) to the callback. */
static int emit(struct vd_ndjson *s, const char *line, size_t len)
{
    s->lineno++;
    if (len && line[len - 1] == '\r')
        len--;
    int rc = 0;
    if (len > s->max_line) {
        s->overlong++;
        rc = s->fn(NULL, len, s->lineno, s->ctx);
    } else if (len) {
        rc = s->fn(line, len, s->lineno, s->ctx);
    }
    if (rc)
        s->stopped = rc;
    return rc;
}

static int emit_overlong(struct vd_ndjson *s, size_t len)
{
    s->lineno++;
    s->overlong++;
    s->skipping = false;
    s->skip_len = 0;
    int rc = s->fn(NULL, len, s->lineno, s->ctx);
    if (rc)
        s->stopped = rc;
    return rc;
}

/* Appends to the carried partial line, or switches to skipping if it would pass the limit. */
static int carry(struct vd_ndjson *s, const char *data, size_t len)
{
    if (s->skipping) {
        s->skip_len += len;
        if (len)
            s->skip_last = data[len - 1];
        return 0;
    }
    if (len > s->max_line + 1 - s->len) {
        s->skipping = true;
        s->skip_len = s->len + len;
        s->skip_last = data[len - 1];
        s->len = 0;
        return 0;
    }
    if (s->len + len > s->cap) {
        size_t cap = s->cap ? s->cap : 256;
        while (cap < s->len + len)
            cap *= 2;
        if (cap > s->max_line + 1)
            cap = s->max_line + 1;
        char *b = realloc(s->buf, cap);
        if (!b)
            return VD_ENOMEM;
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, data, len);
    s->len += len;
    return 0;
}

int vd_ndjson_feed(struct vd_ndjson *s, const char *data, size_t len)
{
    if (s->stopped)
        return s->stopped;
    if (s->finished)
        return 0;
    while (len) {
        const char *nl = memchr(data, '\n', len);
        if (!nl)
            return carry(s, data, len);
        size_t chunk = (size_t)(nl - data);
        int rc;
        if (s->skipping || s->len) {
            rc = carry(s, data, chunk);
            if (rc)
                return rc;
            if (s->skipping) {
                rc = emit_overlong(s, s->skip_len - (s->skip_last == '\r'));
            } else {
                rc = emit(s, s->buf, s->len);
                s->len = 0;
            }
        } else {
            rc = emit(s, data, chunk);
        }
        if (rc)
            return rc;
        data = nl + 1;
        len -= chunk + 1;
    }
    return 0;
}

int vd_ndjson_finish(struct vd_ndjson *s)
{
    if (s->stopped)
        return s->stopped;
    if (s->finished)
        return 0;
    s->finished = true;
    if (s->skipping)
        return emit_overlong(s, s->skip_len - (s->skip_last == '\r'));
    if (s->len) {
        int rc = emit(s, s->buf, s->len);
        s->len = 0;
        return rc;
    }
    return 0;
}
