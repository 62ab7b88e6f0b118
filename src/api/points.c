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

/* ---- retrieve ---- */

static void retrieve(struct vd_http_req *r, void *ctx)
{
    struct vd_coll *c = vd__api_coll(r);
    if (!c)
        return;
    cJSON *body = vd__api_body(r, false);
    struct vd_pid *ids = NULL;
    size_t n = 0;
    struct vd_err e;
    struct vd_api_with w;
    struct vd_data_req o;
    struct vd_db_record *recs = NULL;
    size_t nr = 0;
    struct vd_buf b;
    vd_buf_init(&b);
    int rc = 0;
    if (!body)
        goto out;
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(body, "ids");
    rc = vd__api_data_req(r, c, &o, &e);
    if (!rc && !arr)
        rc = vd_errf(&e, VD_EINVAL, "missing field 'ids'");
    if (!rc && !(rc = vd__api_get_ids(arr, "ids", &ids, &n, &e)) &&
        !(rc = vd__api_get_with(body, true, &w, &e)))
        rc = vd__api.data.retrieve(vd__api.data.impl, c, &o, ids, n, w.vector, &recs, &nr, &e);
    if (rc) {
        vd_http_reply_err(r, &e);
    } else {
        vd__api_points_json(&b, recs, nr, &w, VD_API_POINT_RECORD);
        vd__api_reply_buf(r, &b);
    }
out:
    vd_db_records_free(recs, nr);
    vd_buf_release(&b);
    free(ids);
    cJSON_Delete(body);
    vd_db_coll_put(c);
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
    struct vd_coll *c = vd__api_coll(r);
    if (!c)
        return;
    struct vd_pid id;
    struct vd_err e;
    struct vd_buf b;
    vd_buf_init(&b);
    struct vd_api_with w = {.payload = true, .vector = true};
    struct vd_db_record *recs = NULL;
    size_t nr = 0;
    struct vd_data_req o;
    if (vd__api_data_req(r, c, &o, &e) || path_pid(vd_http_param(r, "id"), &id, &e) ||
        vd__api.data.retrieve(vd__api.data.impl, c, &o, &id, 1, true, &recs, &nr, &e)) {
        vd_http_reply_err(r, &e);
    } else if (nr == 0) {
        vd_http_reply_error(r, 404, "point %s not found", vd_http_param(r, "id"));
    } else {
        vd__api_point_json(&b, &recs[0], &w, VD_API_POINT_RECORD);
        vd__api_reply_buf(r, &b);
    }
    vd_db_records_free(recs, nr);
    vd_buf_release(&b);
    vd_db_coll_put(c);
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

/* ---- scroll and count ---- */

static void scroll(struct vd_http_req *r, void *ctx)
{
    struct vd_coll *c = vd__api_coll(r);
    if (!c)
        return;
    cJSON *body = vd__api_body(r, true);
    struct vd_filter *f = NULL;
    struct vd_db_record *recs = NULL;
    size_t nr = 0;
    struct vd_err e;
    struct vd_buf b;
    vd_buf_init(&b);
    if (!body)
        goto out;
    uint32_t limit;
    struct vd_api_with w;
    struct vd_pid from, next;
    bool has_from = false, has_next = false;
    struct vd_data_req o;
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(body, "offset");
    int rc = vd__api_data_req(r, c, &o, &e);
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
        rc = vd__api_get_with(body, true, &w, &e);
    if (!rc)
        rc = vd__api_get_filter(body, &f, &e);
    o.filter = cJSON_GetObjectItemCaseSensitive(body, "filter");
    o.with_payload = w.payload;
    if (!rc)
        rc = vd__api.data.scroll(vd__api.data.impl, c, &o, has_from ? &from : NULL, limit, f,
                                 w.vector, &recs, &nr, &next, &has_next, &e);
    if (rc) {
        vd_http_reply_err(r, &e);
        goto out;
    }
    vd_buf_puts(&b, "{\"points\":");
    vd__api_points_json(&b, recs, nr, &w, VD_API_POINT_RECORD);
    vd_buf_puts(&b, ",\"next_page_offset\":");
    if (has_next)
        vd_buf_json_pid(&b, &next);
    else
        vd_buf_puts(&b, "null");
    vd_buf_puts(&b, "}");
    vd__api_reply_buf(r, &b);
out:
    vd_db_records_free(recs, nr);
    vd_buf_release(&b);
    vd_filter_free(f);
    cJSON_Delete(body);
    vd_db_coll_put(c);
}

static void count(struct vd_http_req *r, void *ctx)
{
    struct vd_coll *c = vd__api_coll(r);
    if (!c)
        return;
    cJSON *body = vd__api_body(r, true);
    struct vd_filter *f = NULL;
    struct vd_err e;
    bool exact;
    struct vd_data_req o;
    if (!body)
        goto out;
    if (vd__api_data_req(r, c, &o, &e) || vd__api_get_bool(body, "exact", true, &exact, &e) ||
        vd__api_get_filter(body, &f, &e)) {
        vd_http_reply_err(r, &e);
        goto out;
    }
    uint64_t n = 0;
    o.filter = cJSON_GetObjectItemCaseSensitive(body, "filter");
    if (vd__api.data.count(vd__api.data.impl, c, &o, f, &n, &e)) {
        vd_http_reply_err(r, &e);
        goto out;
    }
    char buf[64];
    int len = snprintf(buf, sizeof buf, "{\"count\":%llu}", (unsigned long long)n);
    vd_http_reply_ok(r, buf, (size_t)len);
out:
    vd_filter_free(f);
    cJSON_Delete(body);
    vd_db_coll_put(c);
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
