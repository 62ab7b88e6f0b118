/*
 * NDJSON splitter: the lines delivered must not depend on how the body is cut into chunks. The
 * first input byte picks the line limit and the next ones the chunk sizes; the lines from the
 * chunked feed are compared with a one-shot feed of the same body.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vectord/json.h"

struct sink {
    struct vd_buf out;
    size_t max_line;
};

static int on_line(const char *line, size_t len, uint64_t lineno, void *ctx)
{
    struct sink *s = ctx;
    if (line) {
        if (len == 0 || len > s->max_line || memchr(line, '\n', len))
            abort();
        vd_buf_printf(&s->out, "%llu:", (unsigned long long)lineno);
        vd_buf_append(&s->out, line, len);
        vd_buf_append(&s->out, "\n", 1);
    } else {
        if (len <= s->max_line)
            abort();
        vd_buf_printf(&s->out, "%llu:long %zu\n", (unsigned long long)lineno, len);
    }
    return 0;
}

static void run(const uint8_t *body, size_t n, const uint8_t *cuts, size_t ncuts, size_t max_line,
                struct sink *s)
{
    struct vd_ndjson *sp;
    s->max_line = max_line;
    vd_buf_init(&s->out);
    if (vd_ndjson_new(max_line, on_line, s, &sp) != 0)
        abort();
    size_t off = 0, c = 0;
    while (off < n) {
        size_t step = ncuts ? 1 + (size_t)cuts[c++ % ncuts] % 17 : n;
        if (step > n - off)
            step = n - off;
        if (vd_ndjson_feed(sp, (const char *)body + off, step) != 0)
            abort();
        off += step;
    }
    if (vd_ndjson_finish(sp) != 0)
        abort();
    vd_ndjson_free(sp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    size_t max_line = 1 + data[0] % 64;
    size_t ncuts = data[1] % 8;
    if (size < 2 + ncuts)
        return 0;
    const uint8_t *cuts = data + 2, *body = data + 2 + ncuts;
    size_t n = size - 2 - ncuts;
    struct sink a, b;
    run(body, n, cuts, ncuts, max_line, &a);
    run(body, n, NULL, 0, max_line, &b);
    if (a.out.len != b.out.len || (a.out.len && memcmp(a.out.data, b.out.data, a.out.len) != 0))
        abort();
    vd_buf_release(&a.out);
    vd_buf_release(&b.out);
    return 0;
}
