/* /collections/{name}/points: upsert, retrieve, delete, payload edits, scroll, count. */
#include <stdlib.h>
#include <string.h>

#include "api_int.h"

/* ---- upsert ---- */

struct upsert {
    struct vd_db_point *pts;
    float *vecs;
    size_t n;
};

static void upsert_release(struct upsert *u)
{
    free(u->pts);
    free(u->vecs);
}

static int alloc_points(struct upsert *u, size_t n, uint32_t dim, struct vd_err *err)
{
    if (n == 0)
        return vd_errf(err, VD_EINVAL, "no points given");
    u->n = n;
    u->pts = calloc(n, sizeof *u->pts);
    u->vecs = malloc(sizeof(float) * dim * n);
    if (!u->pts || !u->vecs)
        return vd_errf(err, VD_ENOMEM, "out of memory for %zu points", n);
    return 0;
}

static int read_vector(const cJSON *v, uint32_t dim, float *dst, struct vd_err *err)
{
    if (cJSON_IsObject(v))
        return vd_errf(err, VD_EINVAL, "named vectors are not supported: 'vector' must be an "
                                       "array of numbers");
    if (!v)
        return vd_errf(err, VD_EINVAL, "missing field 'vector'");
    float *out;
    uint32_t got;
    return vd_json_get_floats(v, dim, dst, &out, &got, err);
}

static int read_payload(const cJSON *p, const cJSON **out, struct vd_err *err)
{
    if (!p || cJSON_IsNull(p)) {
        *out = NULL;
        return 0;
    }
    if (!cJSON_IsObject(p))
        return vd_errf(err, VD_EINVAL, "'payload' must be a JSON object or null");
    *out = p;
    return 0;
}

static int parse_list(const cJSON *points, uint32_t dim, struct upsert *u, struct vd_err *err)
{
    if (!cJSON_IsArray(points))
        return vd_errf(err, VD_EINVAL, "'points' must be an array");
    int rc = alloc_points(u, (size_t)cJSON_GetArraySize(points), dim, err);
    if (rc)
        return rc;
    size_t i = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, points)
    {
        struct vd_db_point *dp = &u->pts[i];
        dp->vec = u->vecs + i * dim;
        if (!cJSON_IsObject(p)) {
            rc = vd_errf(err, VD_EINVAL, "must be an object {\"id\", \"vector\", \"payload\"}");
        } else {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(p, "id");
            const cJSON *vec = cJSON_GetObjectItemCaseSensitive(p, "vector");
            if (!id)
                rc = vd_errf(err, VD_EINVAL, "missing field 'id'");
            else if (!(rc = vd_json_get_pid(id, &dp->id, err)) &&
                     !(rc = read_vector(vec, dim, u->vecs + i * dim, err)))
                rc = read_payload(cJSON_GetObjectItemCaseSensitive(p, "payload"), &dp->payload,
                                  err);
        }
        if (rc) {
            vd_err_prefix(err, "points[%zu]", i);
            return rc;
        }
        i++;
    }
    return 0;
}

static int parse_batch(const cJSON *batch, uint32_t dim, struct upsert *u, struct vd_err *err)
{
    if (!cJSON_IsObject(batch))
        return vd_errf(err, VD_EINVAL, "'batch' must be an object {\"ids\", \"vectors\", \"payloads\"}");
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(batch, "ids");
    const cJSON *vecs = cJSON_GetObjectItemCaseSensitive(batch, "vectors");
    const cJSON *pls = cJSON_GetObjectItemCaseSensitive(batch, "payloads");
    if (!cJSON_IsArray(ids))
        return vd_errf(err, VD_EINVAL, "'batch.ids' must be an array of point ids");
    if (cJSON_IsObject(vecs))
        return vd_errf(err, VD_EINVAL, "named vectors are not supported: 'batch.vectors' must be "
                                       "an array of vectors");
    if (!cJSON_IsArray(vecs))
        return vd_errf(err, VD_EINVAL, "'batch.vectors' must be an array of vectors");
    if (pls && !cJSON_IsNull(pls) && !cJSON_IsArray(pls))
        return vd_errf(err, VD_EINVAL, "'batch.payloads' must be an array");
    size_t n = (size_t)cJSON_GetArraySize(ids);
    if ((size_t)cJSON_GetArraySize(vecs) != n)
        return vd_errf(err, VD_EINVAL, "'batch.vectors' has %d entries but 'batch.ids' has %zu",
                       cJSON_GetArraySize(vecs), n);
    if (cJSON_IsArray(pls) && (size_t)cJSON_GetArraySize(pls) != n)
        return vd_errf(err, VD_EINVAL, "'batch.payloads' has %d entries but 'batch.ids' has %zu",
                       cJSON_GetArraySize(pls), n);
    int rc = alloc_points(u, n, dim, err);
    if (rc)
        return rc;
    const cJSON *id = ids->child, *v = vecs->child, *pl = cJSON_IsArray(pls) ? pls->child : NULL;
    for (size_t i = 0; i < n; i++) {
        struct vd_db_point *dp = &u->pts[i];
        dp->vec = u->vecs + i * dim;
        if ((rc = vd_json_get_pid(id, &dp->id, err))) {
            vd_err_prefix(err, "batch.ids[%zu]", i);
            return rc;
        }
        if ((rc = read_vector(v, dim, u->vecs + i * dim, err))) {
            vd_err_prefix(err, "batch.vectors[%zu]", i);
            return rc;
        }
        if (pl && (rc = read_payload(pl, &dp->payload, err))) {
            vd_err_prefix(err, "batch.payloads[%zu]", i);
            return rc;
        }
        id = id->next;
        v = v->next;
        pl = pl ? pl->next : NULL;
    }
    return 0;
}

static void upsert(struct vd_http_req *r, void *ctx)
{
    if (vd__api_write_refused(r))
        return;
    cJSON *body;
    struct vd_coll *c = vd__api_coll_body(r, false, &body);
    if (!c)
        return;
    uint32_t dim = vd_db_coll_schema(c)->dim;
    struct upsert u = {0};
    struct vd_err e;
    int rc;
    struct vd_data_req o;
    const cJSON *points = cJSON_GetObjectItemCaseSensitive(body, "points");
    const cJSON *batch = cJSON_GetObjectItemCaseSensitive(body, "batch");
    if ((rc = vd__api_data_req(r, c, &o, &e)) == 0) {
        if (points)
            rc = parse_list(points, dim, &u, &e);
        else if (batch)
            rc = parse_batch(batch, dim, &u, &e);
        else
            rc = vd_errf(&e, VD_EINVAL, "expected 'points' (a list of points) or 'batch'");
    }
    if (rc == 0)
        rc = vd__api.data.upsert(vd__api.data.impl, c, &o, u.pts, u.n, vd__api_write_done_for(&o),
                                 r, &e);
    if (rc)
        vd_http_reply_err(r, &e);
    upsert_release(&u);
    cJSON_Delete(body);
    vd_db_coll_put(c);
}

/* ---- reads: retrieve, get by id, scroll, count ----
 * Each builds a read context, runs its data operation and replies from the result through
 * read_reply: at once for a synchronous operation, or from the completion of an asynchronous one
 * (vd_data_ops' *_async: no pool thread waits for other nodes meanwhile), which then owns the
 * context. */

enum read_kind { READ_IDS, READ_ONE, READ_SCROLL, READ_COUNT };

struct read {
    struct vd_http_req *r;
    enum read_kind kind;
    struct vd_coll *c;     /* referenced */
    cJSON *body;           /* w's key arrays point into it */
    struct vd_pid *ids;    /* READ_IDS */
    struct vd_filter *f;   /* READ_SCROLL, READ_COUNT */
    struct vd_api_with w;
    struct vd_data_req o;
};

static void read_free(struct read *rd);

/* The start of every read: the collection named by the path and, for a body_mode other than
 * READ_NO_BODY, the request's body (READ_BODY_OR_EMPTY: an empty one is {}). NULL once a
 * reply was sent (or the handler is to run again after a catch-up). */
enum { READ_NO_BODY, READ_BODY, READ_BODY_OR_EMPTY };
static struct read *read_begin(struct vd_http_req *r, enum read_kind kind, int body_mode)
{
    struct vd_coll *c = vd__api_coll(r);
    if (!c)
        return NULL;
    struct read *rd = calloc(1, sizeof *rd);
    if (!rd) {
        vd_db_coll_put(c);
        vd_http_reply_error(r, 500, "out of memory");
        return NULL;
    }
    rd->r = r;
    rd->kind = kind;
    rd->c = c;
    if (body_mode != READ_NO_BODY &&
        !(rd->body = vd__api_body(r, body_mode == READ_BODY_OR_EMPTY))) {
        read_free(rd);
        return NULL;
    }
    return rd;
}

static void read_free(struct read *rd)
{
    free(rd->ids);
    vd_filter_free(rd->f);
    cJSON_Delete(rd->body);
    if (rd->c)
        vd_db_coll_put(rd->c);
    free(rd);
}

/* Replies to rd's request with res (or the error) and frees rd. */
static void read_reply(int status, const struct vd_err *err, const struct vd_data_result *res,
                       void *arg)
{
    struct read *rd = arg;
    struct vd_http_req *r = rd->r;
    struct vd_buf b;
    vd_buf_init(&b);
    if (status) {
        if (err && err->msg[0])
            vd_http_reply_err(r, err);
        else
            vd_http_reply_error(r, vd_err_http_status(status), "%s", vd_strerror(status));
        goto out;
    }
    switch (rd->kind) {
    case READ_IDS:
        vd__api_points_json(&b, res->recs, res->n, &rd->w, VD_API_POINT_RECORD);
        break;
    case READ_ONE:
        if (res->n == 0) {
            vd_http_reply_error(r, 404, "point %s not found", vd_http_param(r, "id"));
            goto out;
        }
        vd__api_point_json(&b, &res->recs[0], &rd->w, VD_API_POINT_RECORD);
        break;
    case READ_SCROLL:
        vd_buf_puts(&b, "{\"points\":");
        vd__api_points_json(&b, res->recs, res->n, &rd->w, VD_API_POINT_RECORD);
        vd_buf_puts(&b, ",\"next_page_offset\":");
        if (res->next)
            vd_buf_json_pid(&b, res->next);
        else
            vd_buf_puts(&b, "null");
        vd_buf_puts(&b, "}");
        break;
    case READ_COUNT:
        vd_buf_printf(&b, "{\"count\":%llu}", (unsigned long long)res->count);
        break;
    }
    vd__api_reply_buf(r, &b);
out:
    vd_buf_release(&b);
    read_free(rd);
}

/* The result of a synchronous read, answered through read_reply. */
static void read_reply_now(struct read *rd, int rc, const struct vd_err *e,
                           struct vd_db_record *recs, size_t n, const struct vd_pid *next,
                           uint64_t count)
{
    struct vd_data_result res = {.recs = recs, .n = n, .next = next, .count = count};
    read_reply(rc, e, rc ? NULL : &res, rd);
    vd_db_records_free(recs, n);
}

static void retrieve(struct vd_http_req *r, void *ctx)
{
    struct read *rd = read_begin(r, READ_IDS, READ_BODY);
    if (!rd)
        return;
    struct vd_coll *c = rd->c;
    const struct vd_data_ops *d = &vd__api.data;
    size_t n = 0;
    struct vd_err e;
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(rd->body, "ids");
    int rc = vd__api_data_req(r, c, &rd->o, &e);
    if (!rc && !arr)
        rc = vd_errf(&e, VD_EINVAL, "missing field 'ids'");
    if (!rc && !(rc = vd__api_get_ids(arr, "ids", &rd->ids, &n, &e)))
        rc = vd__api_get_with(rd->body, true, &rd->w, &e);
    if (!rc && d->retrieve_async) {
        rc = d->retrieve_async(d->impl, c, &rd->o, rd->ids, n, rd->w.vector, read_reply, rd, &e);
        if (!rc)
            return; /* rd is the completion's */
    }
    struct vd_db_record *recs = NULL;
    size_t nr = 0;
    if (!rc)
        rc = d->retrieve(d->impl, c, &rd->o, rd->ids, n, rd->w.vector, &recs, &nr, &e);
    read_reply_now(rd, rc, &e, recs, nr, NULL, 0);
}

/* A point id written in a path: digits or a UUID. */
static int path_pid(const char *s, struct vd_pid *out, struct vd_err *err)
{
    size_t len = strlen(s);
    if (vd_pid_parse_u64(s, len, &out->u.num) == 0) {
        out->type = VD_PID_NUM;
        return 0;
    }
    if (vd_pid_parse_uuid(s, len, out) == 0)
        return 0;
    return vd_errf(err, VD_EINVAL, "'%s' is not a valid point id (an unsigned integer or a UUID)",
                   s);
}

static void get_one(struct vd_http_req *r, void *ctx)
{
    struct read *rd = read_begin(r, READ_ONE, READ_NO_BODY);
    if (!rd)
        return;
    struct vd_coll *c = rd->c;
    rd->w = (struct vd_api_with){.payload = true, .vector = true};
    const struct vd_data_ops *d = &vd__api.data;
    struct vd_pid id;
    struct vd_err e;
    int rc = vd__api_data_req(r, c, &rd->o, &e);
    if (!rc)
        rc = path_pid(vd_http_param(r, "id"), &id, &e);
    if (!rc && d->retrieve_async) {
        rc = d->retrieve_async(d->impl, c, &rd->o, &id, 1, true, read_reply, rd, &e);
        if (!rc)
            return;
    }
    struct vd_db_record *recs = NULL;
    size_t nr = 0;
    if (!rc)
        rc = d->retrieve(d->impl, c, &rd->o, &id, 1, true, &recs, &nr, &e);
    read_reply_now(rd, rc, &e, recs, nr, NULL, 0);
}

/* ---- delete, payload edits: by "points" ids or by "filter" ---- */

struct selector {
    struct vd_pid *ids;
    size_t n;
    struct vd_filter *filter;
};

static int read_selector(const cJSON *body, struct selector *s, struct vd_err *err)
{
    memset(s, 0, sizeof *s);
    const cJSON *pts = cJSON_GetObjectItemCaseSensitive(body, "points");
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(body, "filter");
    if (pts && !cJSON_IsNull(pts))
        return vd__api_get_ids(pts, "points", &s->ids, &s->n, err);
    if (f && !cJSON_IsNull(f))
        return vd_filter_parse(f, &s->filter, err);
    return vd_errf(err, VD_EINVAL, "expected 'points' (a list of point ids) or 'filter'");
}

static void selector_release(struct selector *s)
{
    free(s->ids);
    vd_filter_free(s->filter);
}

static void delete_points(struct vd_http_req *r, void *ctx)
{
    if (vd__api_write_refused(r))
        return;
    struct vd_coll *c = vd__api_coll(r);
    if (!c)
        return;
    cJSON *body = vd__api_body(r, false);
    struct selector s = {0};
    struct vd_err e;
    struct vd_data_req o;
    if (body) {
        int rc = vd__api_data_req(r, c, &o, &e);
        if (!rc)
            rc = read_selector(body, &s, &e);
        o.filter = cJSON_GetObjectItemCaseSensitive(body, "filter");
        if (rc == 0) {
            if (!s.filter && s.n == 0)
                vd__api_write_done_for(&o)(0, NULL, 0, r);
            else
                rc = vd__api.data.delete_points(vd__api.data.impl, c, &o, s.ids, s.n, s.filter,
                                                vd__api_write_done_for(&o), r, &e);
        }
        if (rc)
            vd_http_reply_err(r, &e);
    }
    selector_release(&s);
    cJSON_Delete(body);
    vd_db_coll_put(c);
}

static void payload_edit(struct vd_http_req *r, enum vd_db_payload_op op)
{
    if (vd__api_write_refused(r))
        return;
    struct vd_coll *c = vd__api_coll(r);
    if (!c)
        return;
    cJSON *body = vd__api_body(r, false);
    struct selector s = {0};
    struct vd_err e;
    struct vd_data_req o;
    int rc = 0;
    if (!body)
        goto out;
    const cJSON *arg = NULL;
    if ((rc = vd__api_data_req(r, c, &o, &e)))
        goto reply;
    if (op == VD_DB_PAYLOAD_SET || op == VD_DB_PAYLOAD_OVERWRITE) {
        arg = cJSON_GetObjectItemCaseSensitive(body, "payload");
        if (!cJSON_IsObject(arg))
            rc = vd_errf(&e, VD_EINVAL, "'payload' must be a JSON object");
    } else if (op == VD_DB_PAYLOAD_DELETE_KEYS) {
        arg = cJSON_GetObjectItemCaseSensitive(body, "keys");
        bool ok = cJSON_IsArray(arg);
        const cJSON *it;
        cJSON_ArrayForEach(it, arg) ok = ok && cJSON_IsString(it);
        if (!ok)
            rc = vd_errf(&e, VD_EINVAL, "'keys' must be an array of payload keys");
    }
    if (!rc)
        rc = read_selector(body, &s, &e);
    o.filter = cJSON_GetObjectItemCaseSensitive(body, "filter");
    if (!rc)
        rc = vd__api.data.payload_edit(vd__api.data.impl, c, &o, op, arg,
                                       s.filter ? NULL : s.ids, s.n, s.filter,
                                       vd__api_write_done_for(&o), r, &e);
reply:
    if (rc)
        vd_http_reply_err(r, &e);
out:
    selector_release(&s);
    cJSON_Delete(body);
    vd_db_coll_put(c);
}

static void payload_set(struct vd_http_req *r, void *ctx)
{
    payload_edit(r, VD_DB_PAYLOAD_SET);
}
static void payload_overwrite(struct vd_http_req *r, void *ctx)
{
    payload_edit(r, VD_DB_PAYLOAD_OVERWRITE);
}
static void payload_delete(struct vd_http_req *r, void *ctx)
{
    payload_edit(r, VD_DB_PAYLOAD_DELETE_KEYS);
}
static void payload_clear(struct vd_http_req *r, void *ctx)
{
    payload_edit(r, VD_DB_PAYLOAD_CLEAR);
}

static void scroll(struct vd_http_req *r, void *ctx)
{
    struct read *rd = read_begin(r, READ_SCROLL, READ_BODY_OR_EMPTY);
    if (!rd)
        return;
    struct vd_coll *c = rd->c;
    const struct vd_data_ops *d = &vd__api.data;
    cJSON *body = rd->body;
    struct vd_err e;
    uint32_t limit;
    struct vd_pid from;
    bool has_from = false;
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(body, "offset");
    int rc = vd__api_data_req(r, c, &rd->o, &e);
    if (!rc)
        rc = vd__api_get_u32(body, "limit", 10, 1, VD_API_MAX_LIMIT, &limit, &e);
    if (!rc)
        rc = vd__api_refuse(body, "order_by", "order_by", "scroll returns points in id order", &e);
    if (!rc && off && !cJSON_IsNull(off)) {
        rc = vd_json_get_pid(off, &from, &e);
        if (rc)
            vd_err_prefix(&e, "offset");
        has_from = true;
    }
    if (!rc)
        rc = vd__api_get_with(body, true, &rd->w, &e);
    if (!rc)
        rc = vd__api_get_filter(body, &rd->f, &e);
    rd->o.filter = cJSON_GetObjectItemCaseSensitive(body, "filter");
    rd->o.with_payload = rd->w.payload;
    if (!rc && d->scroll_async) {
        rc = d->scroll_async(d->impl, c, &rd->o, has_from ? &from : NULL, limit, rd->f,
                             rd->w.vector, read_reply, rd, &e);
        if (!rc)
            return;
    }
    struct vd_db_record *recs = NULL;
    size_t nr = 0;
    struct vd_pid next;
    bool has_next = false;
    if (!rc)
        rc = d->scroll(d->impl, c, &rd->o, has_from ? &from : NULL, limit, rd->f, rd->w.vector,
                       &recs, &nr, &next, &has_next, &e);
    read_reply_now(rd, rc, &e, recs, nr, has_next ? &next : NULL, 0);
}

static void count(struct vd_http_req *r, void *ctx)
{
    struct read *rd = read_begin(r, READ_COUNT, READ_BODY_OR_EMPTY);
    if (!rd)
        return;
    struct vd_coll *c = rd->c;
    const struct vd_data_ops *d = &vd__api.data;
    struct vd_err e;
    bool exact;
    int rc = vd__api_data_req(r, c, &rd->o, &e);
    if (!rc)
        rc = vd__api_get_bool(rd->body, "exact", true, &exact, &e);
    if (!rc)
        rc = vd__api_get_filter(rd->body, &rd->f, &e);
    rd->o.filter = cJSON_GetObjectItemCaseSensitive(rd->body, "filter");
    if (!rc && d->count_async) {
        rc = d->count_async(d->impl, c, &rd->o, rd->f, read_reply, rd, &e);
        if (!rc)
            return;
    }
    uint64_t n = 0;
    if (!rc)
        rc = d->count(d->impl, c, &rd->o, rd->f, &n, &e);
    read_reply_now(rd, rc, &e, NULL, 0, NULL, n);
}

int vd__api_points_routes(struct vd_http *h)
{
    static const struct {
        const char *method, *pattern;
        enum vd_role role;
        vd_http_handler fn;
    } t[] = {
        {"PUT", "/collections/{name}/points", VD_ROLE_RW, upsert},
        {"POST", "/collections/{name}/points", VD_ROLE_RO, retrieve},
        {"GET", "/collections/{name}/points/{id}", VD_ROLE_RO, get_one},
        {"POST", "/collections/{name}/points/delete", VD_ROLE_RW, delete_points},
        {"POST", "/collections/{name}/points/payload", VD_ROLE_RW, payload_set},
        {"PUT", "/collections/{name}/points/payload", VD_ROLE_RW, payload_overwrite},
        {"POST", "/collections/{name}/points/payload/delete", VD_ROLE_RW, payload_delete},
        {"POST", "/collections/{name}/points/payload/clear", VD_ROLE_RW, payload_clear},
        {"POST", "/collections/{name}/points/scroll", VD_ROLE_RO, scroll},
        {"POST", "/collections/{name}/points/count", VD_ROLE_RO, count},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        int rc = vd_http_route(h, t[i].method, t[i].pattern, t[i].role, t[i].fn, NULL);
        if (rc)
            return rc;
    }
    return 0;
}
