/* vectord's bulk endpoints: streamed NDJSON import and export.
 *
 * Import reads the body as it arrives, parses it line by line into batches of points and commits
 * each batch through the normal write path. While batches are committing the connection is
 * paused, so memory stays bounded by one batch plus the longest line however large the body. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "api_int.h"

#define IMPORT_BATCH 256
#define IMPORT_MAX_ERRORS 1000

struct import {
    struct vd_coll *c;
    struct vd_http_req *r;
    struct vd_ndjson *nd;
    uint32_t dim;
    struct vd_data_req o; /* the request's consistency and deadline, for every batch */
    bool abort_on_error;
    bool stopped;        /* abort mode hit a bad line: the rest is read and ignored */
    /* the batch being filled */
    struct vd_db_point pts[IMPORT_BATCH];
    float *vecs;         /* IMPORT_BATCH * dim */
    cJSON *docs[IMPORT_BATCH];
    size_t n;
    /* commit state, shared with write completions on the storage thread */
    pthread_mutex_t mu;
    unsigned inflight;
    bool paused;
    uint64_t imported, failed, batches, last_op;
    int commit_error;
    struct vd_err commit_err;
    struct vd_buf errors; /* JSON array body of the first IMPORT_MAX_ERRORS line errors */
    bool ended;
    bool aborted; /* the client went away: the request is gone, nothing may reply */
};

static void import_free(struct import *im)
{
    for (size_t i = 0; i < im->n; i++)
        cJSON_Delete(im->docs[i]);
    vd_ndjson_free(im->nd);
    free(im->vecs);
    vd_buf_release(&im->errors);
    pthread_mutex_destroy(&im->mu);
    vd_db_coll_put(im->c);
    free(im);
}

static int flush(struct import *im);

static void line_error(struct import *im, uint64_t line, const char *msg)
{
    if (im->failed < IMPORT_MAX_ERRORS) {
        vd_buf_printf(&im->errors, "%s{\"line\":%llu,\"error\":", im->failed ? "," : "",
                      (unsigned long long)line);
        vd_buf_json_string(&im->errors, msg, strlen(msg));
        vd_buf_puts(&im->errors, "}");
    }
    im->failed++;
    if (im->abort_on_error) {
        /* every good line before the first bad one is committed; nothing after it */
        flush(im);
        im->stopped = true;
    }
}

/* Replies once the body has ended and every batch has committed. Called with mu held. */
static bool finish_ready(struct import *im)
{
    return im->ended && im->inflight == 0;
}

static void reply(struct import *im)
{
    struct vd_http_req *r = im->r;
    if (im->commit_error) {
        vd_err_prefix(&im->commit_err, "import stopped after %llu points",
                      (unsigned long long)im->imported);
        vd_http_reply_err(r, &im->commit_err);
        import_free(im);
        return;
    }
    struct vd_buf b;
    vd_buf_init(&b);
    vd_buf_printf(&b,
                  "{\"imported\":%llu,\"failed\":%llu,\"batches_committed\":%llu,"
                  "\"aborted\":%s,\"operation_id\":%llu,\"errors\":[",
                  (unsigned long long)im->imported, (unsigned long long)im->failed,
                  (unsigned long long)im->batches, im->stopped ? "true" : "false",
                  (unsigned long long)im->last_op);
    if (im->errors.len)
        vd_buf_append(&b, im->errors.data, im->errors.len);
    vd_buf_puts(&b, "]}");
    import_free(im);
    vd__api_reply_buf(r, &b);
}

/* Records the first failure of the import (mu held); later ones add nothing the user needs. */
static void set_error(struct import *im, int status, const struct vd_err *err)
{
    if (im->commit_error)
        return;
    im->commit_error = status;
    if (err)
        im->commit_err = *err;
    else
        vd_errf(&im->commit_err, status, "%s", vd_strerror(status));
}

/* Whether a batch or the body failed; commits report on the storage thread, hence the lock. */
static bool has_failed(struct import *im)
{
    pthread_mutex_lock(&im->mu);
    bool f = im->commit_error != 0;
    pthread_mutex_unlock(&im->mu);
    return f;
}

/* One submitted batch: its size is counted as imported only once it has committed. */
struct batch {
    struct import *im;
    size_t n;
};

static void batch_done(int status, const struct vd_err *err, uint64_t op_id, void *ctx)
{
    struct batch *bt = ctx;
    struct import *im = bt->im;
    size_t n = bt->n;
    free(bt);
    pthread_mutex_lock(&im->mu);
    im->inflight--;
    if (status) {
        set_error(im, status, err);
    } else {
        im->imported += n;
        im->batches++;
    }
    if (op_id > im->last_op)
        im->last_op = op_id;
    bool done = finish_ready(im);
    bool aborted = im->aborted;
    bool resume = !done && !aborted && im->paused && im->inflight == 0;
    if (resume)
        im->paused = false;
    pthread_mutex_unlock(&im->mu);
    if (done && aborted)
        import_free(im); /* the last commit of an abandoned import lets go of it */
    else if (done)
        reply(im);
    else if (resume)
        vd_http_resume_body(im->r);
}

/* Submits the filled batch. The parsed documents are freed right after: the write path copies
 * vectors and serialises payloads before returning. */
static int flush(struct import *im)
{
    if (im->n == 0)
        return 0;
    struct vd_err e;
    size_t n = im->n;
    int rc;
    struct batch *bt = malloc(sizeof *bt);
    if (!bt) {
        rc = vd_errf(&e, VD_ENOMEM, "out of memory");
    } else {
        bt->im = im;
        bt->n = n;
        pthread_mutex_lock(&im->mu);
        im->inflight++;
        pthread_mutex_unlock(&im->mu);
        rc = vd__api.data.upsert(vd__api.data.impl, im->c, &im->o, im->pts, n, batch_done, bt, &e);
    }
    for (size_t i = 0; i < n; i++)
        cJSON_Delete(im->docs[i]);
    im->n = 0;
    if (rc) {
        free(bt);
        pthread_mutex_lock(&im->mu);
        if (bt)
            im->inflight--;
        set_error(im, rc, &e);
        pthread_mutex_unlock(&im->mu);
    }
    return rc;
}

static int on_line(const char *line, size_t len, uint64_t lineno, void *ctx)
{
    struct import *im = ctx;
    if (im->stopped || has_failed(im))
        return 0;
    if (!line) {
        char msg[128];
        snprintf(msg, sizeof msg, "line is %zu bytes, over the limit of %zu", len,
                 vd__api.max_import_line);
        line_error(im, lineno, msg);
        return 0;
    }
    size_t k = 0;
    while (k < len && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r'))
        k++;
    if (k == len)
        return 0; /* blank lines are allowed */
    cJSON *doc = NULL;
    struct vd_err e;
    if (vd_json_parse(line, len, VD_JSON_MAX_DEPTH, &doc, &e)) {
        line_error(im, lineno, e.msg);
        return 0;
    }
    struct vd_db_point *p = &im->pts[im->n];
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(doc, "id");
    const cJSON *vec = cJSON_GetObjectItemCaseSensitive(doc, "vector");
    const cJSON *pl = cJSON_GetObjectItemCaseSensitive(doc, "payload");
    float *out;
    uint32_t got;
    int rc = 0;
    if (!cJSON_IsObject(doc))
        rc = vd_errf(&e, VD_EINVAL, "a line must be a JSON object {\"id\", \"vector\", \"payload\"}");
    else if (!id)
        rc = vd_errf(&e, VD_EINVAL, "missing field 'id'");
    else if (!vec)
        rc = vd_errf(&e, VD_EINVAL, "missing field 'vector'");
    else if (pl && !cJSON_IsNull(pl) && !cJSON_IsObject(pl))
        rc = vd_errf(&e, VD_EINVAL, "'payload' must be a JSON object or null");
    if (!rc)
        rc = vd_json_get_pid(id, &p->id, &e);
    if (!rc) {
        float *dst = im->vecs + im->n * im->dim;
        rc = vd_json_get_floats(vec, im->dim, dst, &out, &got, &e);
        p->vec = dst;
    }
    if (!rc && vd_db_coll_schema(im->c)->metric == VD_METRIC_COSINE) {
        bool zero = true;
        for (uint32_t i = 0; i < im->dim && zero; i++)
            zero = p->vec[i] == 0.0f;
        if (zero)
            rc = vd_errf(&e, VD_EINVAL, "a zero vector cannot be used with Cosine distance");
    }
    if (rc) {
        cJSON_Delete(doc);
        line_error(im, lineno, e.msg);
        return 0;
    }
    p->payload = cJSON_IsObject(pl) ? pl : NULL;
    im->docs[im->n++] = doc;
    if (im->n == IMPORT_BATCH)
        flush(im);
    return 0;
}

static void import_begin(struct vd_http_req *r, void *ctx)
{
    if (vd__api_write_refused(r))
        return;
    /* A stream's begin cannot run again from a completion: on a miss in a cluster this lookup
     * blocks the pool thread for the catch-up (up to VD__API_CATCH_UP_MS), unlike other routes'. */
    const char *name = vd_http_param(r, "name");
    struct vd_err e;
    struct vd_coll *c;
    if (!name || vd_db_check_name(name, &e) || vd__api_coll_lookup(name, &c, &e)) {
        vd_http_reply_err(r, &e);
        return;
    }
    struct vd_data_req o;
    if (vd__api_data_req(r, c, &o, &e)) {
        vd_http_reply_err(r, &e);
        vd_db_coll_put(c);
        return;
    }
    const char *oe = vd_http_query(r, "on_error");
    if (oe && strcmp(oe, "skip") && strcmp(oe, "abort")) {
        vd_http_reply_error(r, 400, "on_error must be 'skip' or 'abort'");
        vd_db_coll_put(c);
        return;
    }
    struct import *im = calloc(1, sizeof *im);
    if (im) {
        im->dim = vd_db_coll_schema(c)->dim;
        im->vecs = malloc(sizeof(float) * IMPORT_BATCH * im->dim);
    }
    if (!im || !im->vecs ||
        vd_ndjson_new(vd__api.max_import_line, on_line, im, &im->nd)) {
        if (im)
            free(im->vecs);
        free(im);
        vd_db_coll_put(c);
        vd_http_reply_error(r, 500, "out of memory");
        return;
    }
    im->c = c;
    im->r = r;
    im->o = o;
    im->abort_on_error = oe && !strcmp(oe, "abort");
    pthread_mutex_init(&im->mu, NULL);
    vd_buf_init(&im->errors);
    vd_http_set_user(r, im);
}

static int import_chunk(struct vd_http_req *r, const char *data, size_t len, void *ctx)
{
    struct import *im = vd_http_user(r);
    if (!im)
        return -1;
    int frc = vd_ndjson_feed(im->nd, data, len);
    pthread_mutex_lock(&im->mu);
    if (frc) /* the splitter is stuck: no later line can be read, so the import stops here */
        set_error(im, frc, NULL);
    /* wait for every batch of this chunk before reading more: bounded memory, and the
     * client sees backpressure instead of a growing queue */
    int ret = 0;
    if (im->inflight > 0) {
        im->paused = true;
        ret = VD_HTTP_PAUSE;
    }
    pthread_mutex_unlock(&im->mu);
    return ret;
}

static void import_end(struct vd_http_req *r, void *ctx)
{
    struct import *im = vd_http_user(r);
    if (!im)
        return;
    int frc = vd_ndjson_finish(im->nd);
    if (!im->stopped && !has_failed(im))
        flush(im);
    pthread_mutex_lock(&im->mu);
    if (frc)
        set_error(im, frc, NULL);
    im->ended = true;
    bool done = finish_ready(im);
    pthread_mutex_unlock(&im->mu);
    if (done)
        reply(im);
}

static void import_abort(struct vd_http_req *r, void *ctx)
{
    struct import *im = vd_http_user(r);
    if (!im)
        return;
    /* batches still committing finish on their own; the last one frees */
    pthread_mutex_lock(&im->mu);
    bool free_now = im->inflight == 0;
    im->ended = true;
    im->aborted = true;
    pthread_mutex_unlock(&im->mu);
    if (free_now)
        import_free(im);
}

/* ---- export ---- */

struct export {
    struct vd_coll *c;
    struct vd_data_req o; /* o.filter points into body */
    cJSON *body;          /* the request's, or NULL */
    struct vd_filter *filter;
    struct vd_buf page;
    size_t pos;
    struct vd_pid next;
    bool started, has_next, failed;
};

static void export_free(void *arg)
{
    struct export *x = arg;
    vd_buf_release(&x->page);
    vd_filter_free(x->filter);
    cJSON_Delete(x->body);
    vd_db_coll_put(x->c);
    free(x);
}

static long export_fill(void *arg, char *buf, size_t max)
{
    struct export *x = arg;
    if (x->pos == x->page.len) {
        if (x->started && !x->has_next)
            return 0;
        x->page.len = 0;
        x->pos = 0;
        struct vd_err e;
        bool from = x->started;
        x->started = true;
        struct vd_pid start = x->next;
        struct vd_db_record *recs;
        size_t n;
        if (vd__api.data.scroll(vd__api.data.impl, x->c, &x->o, from ? &start : NULL, 128,
                                x->filter, true, &recs, &n, &x->next, &x->has_next, &e)) {
            vd_log_error("export of '%s' failed: %s", vd_db_coll_schema(x->c)->name, e.msg);
            return -1;
        }
        /* every point as it is stored: its whole payload and its vector */
        static const struct vd_api_with all = {.payload = true, .vector = true};
        for (size_t i = 0; i < n; i++) {
            vd__api_point_json(&x->page, &recs[i], &all, VD_API_POINT_EXPORT);
            vd_buf_puts(&x->page, "\n");
        }
        vd_db_records_free(recs, n);
        if (!vd_buf_ok(&x->page)) {
            vd_log_error("export of '%s' failed: out of memory", vd_db_coll_schema(x->c)->name);
            return -1;
        }
        if (x->page.len == 0)
            return 0;
    }
    size_t n = x->page.len - x->pos;
    if (n > max)
        n = max;
    memcpy(buf, x->page.data + x->pos, n);
    x->pos += n;
    return (long)n;
}

static void export_points(struct vd_http_req *r, void *ctx)
{
    struct vd_coll *c = vd__api_coll(r);
    if (!c)
        return;
    struct vd_filter *f = NULL;
    struct vd_data_req o;
    struct vd_err oe;
    if (vd__api_data_req(r, c, &o, &oe)) {
        vd_http_reply_err(r, &oe);
        vd_db_coll_put(c);
        return;
    }
    size_t len;
    const char *body = vd_http_body(r, &len);
    cJSON *j = NULL;
    if (body && len) {
        if (!(j = vd__api_body(r, false))) {
            vd_db_coll_put(c);
            return;
        }
        struct vd_err e;
        int rc = vd__api_get_filter(j, &f, &e);
        if (rc) {
            cJSON_Delete(j);
            vd_http_reply_err(r, &e);
            vd_db_coll_put(c);
            return;
        }
    }
    struct export *x = calloc(1, sizeof *x);
    if (!x) {
        cJSON_Delete(j);
        vd_filter_free(f);
        vd_db_coll_put(c);
        vd_http_reply_error(r, 500, "out of memory");
        return;
    }
    x->c = c;
    x->body = j;
    x->o = o;
    x->o.filter = cJSON_GetObjectItemCaseSensitive(j, "filter");
    x->filter = f;
    vd_buf_init(&x->page);
    vd_http_reply_stream(r, 200, "application/x-ndjson", export_fill, export_free, x);
}

static const struct vd_http_stream_ops import_ops = {
    .chunk = import_chunk,
    .end = import_end,
    .abort = import_abort,
};

int vd__api_bulk_routes(struct vd_http *h)
{
    int rc;
    if ((rc = vd_http_route_stream(h, "POST", "/collections/{name}/points/import", VD_ROLE_RW,
                                   import_begin, &import_ops, NULL)) ||
        (rc = vd_http_route(h, "GET", "/collections/{name}/points/export", VD_ROLE_RO,
                            export_points, NULL)) ||
        (rc = vd_http_route(h, "POST", "/collections/{name}/points/export", VD_ROLE_RO,
                            export_points, NULL)))
        return rc;
    return 0;
}
