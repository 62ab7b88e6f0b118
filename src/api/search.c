/* Search and query: /points/search, /points/search/batch, /points/query, /points/query/batch. */
#include <stdlib.h>
#include <string.h>

#include "api_int.h"

struct sargs {
    struct vd_db_search s;
    struct vd_api_with w;
    float *vec;            /* owned */
    struct vd_filter *filter;
    const cJSON *filter_json; /* the request's "filter", in its body */
    bool scroll;           /* query without a query: scroll order */
    struct vd_pid exclude; /* query by point id: that point (s.exclude points here) */
};

static void sargs_release(struct sargs *a)
{
    free(a->vec);
    vd_filter_free(a->filter);
    memset(a, 0, sizeof *a);
}

/* A vector given as an array, or in the named form {"name": "", "vector": [...]}. */
static int read_query_vector(struct vd_coll *c, const cJSON *v, const char *field, float **out,
                             struct vd_err *err)
{
    uint32_t dim = vd_db_coll_schema(c)->dim, got;
    if (cJSON_IsObject(v)) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(v, "name");
        if (cJSON_IsString(name) && name->valuestring[0])
            return vd_errf(err, VD_EINVAL, "'%s': named vector '%s' does not exist (collections "
                                           "have one unnamed vector)",
                           field, name->valuestring);
        v = cJSON_GetObjectItemCaseSensitive(v, "vector");
    }
    if (!v)
        return vd_errf(err, VD_EINVAL, "missing field '%s'", field);
    int rc = vd_json_get_floats(v, dim, NULL, out, &got, err);
    if (rc)
        vd_err_prefix(err, "%s", field);
    return rc;
}

/* params.quantization: {"ignore": bool, "rescore": bool, "oversampling": >= 1}, each optional
 * (null is absent). Collections without quantization accept and ignore it, as Qdrant does. */
static int read_quant_params(const cJSON *q, const char *ppath, struct vd_db_search *s,
                             struct vd_err *err)
{
    if (!q || cJSON_IsNull(q))
        return 0;
    if (!cJSON_IsObject(q))
        return vd_errf(err, VD_EINVAL, "'params.quantization' must be an object");
    bool rescore, present;
    int rc;
    if ((rc = vd__api_get_bool(q, "ignore", false, &s->quant_ignore, err)) ||
        (rc = vd__api_get_bool(q, "rescore", true, &rescore, err)) ||
        (rc = vd__api_get_float(q, "oversampling", &present, &s->oversampling, err))) {
        vd_err_prefix(err, "params.quantization");
        return rc;
    }
    s->quant_no_rescore = !rescore;
    if (present && !(s->oversampling >= 1.0f))
        return vd_errf(err, VD_ERANGE,
                       "Validation error in JSON body: [%s.quantization.oversampling: value %g "
                       "invalid, must be 1 or larger]",
                       ppath, (double)s->oversampling);
    if (!present)
        s->oversampling = 0.0f;
    return 0;
}

/* vpath: where Qdrant's validation messages place the request's fields ("search_request" for a
 * search, "internal" for a query), so that a limit of 0 reads as Qdrant's does. */
static int read_common(struct vd_coll *c, const cJSON *b, struct sargs *a, bool payload_dflt,
                       const char *vpath, struct vd_err *err)
{
    int rc;
    if ((rc = vd__api_get_u32_at(b, vpath, "limit", 10, 1, UINT32_MAX, &a->s.limit, err)))
        return rc;
    if (a->s.limit > VD_API_MAX_LIMIT)
        return vd_errf(err, VD_ERANGE,
                       "Validation error in JSON body: [%s.limit: value %u invalid, must be %u or "
                       "smaller]",
                       vpath, a->s.limit, VD_API_MAX_LIMIT);
    if ((rc = vd__api_get_u32(b, "offset", 0, 0, VD_API_MAX_LIMIT, &a->s.offset, err)) ||
        (rc = vd__api_get_with(b, payload_dflt, &a->w, err)) ||
        (rc = vd__api_get_filter(b, &a->filter, err)) ||
        (rc = vd__api_get_float(b, "score_threshold", &a->s.has_threshold,
                                &a->s.score_threshold, err)))
        return rc;
    a->s.filter = a->filter;
    a->filter_json = cJSON_GetObjectItemCaseSensitive(b, "filter");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(b, "params");
    if (p && !cJSON_IsNull(p)) {
        if (!cJSON_IsObject(p))
            return vd_errf(err, VD_EINVAL, "'params' must be an object");
        char ppath[64];
        snprintf(ppath, sizeof ppath, "%s.params", vpath);
        if ((rc = vd__api_get_u32_at(p, ppath, "hnsw_ef", 0, 1, 100000, &a->s.ef, err)))
            return rc;
        if ((rc = vd__api_get_bool(p, "exact", false, &a->s.exact, err))) {
            vd_err_prefix(err, "params");
            return rc;
        }
        if ((rc = read_quant_params(cJSON_GetObjectItemCaseSensitive(p, "quantization"), ppath,
                                    &a->s, err)))
            return rc;
    }
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(b, "using");
    if (cJSON_IsString(u) && u->valuestring[0])
        return vd_errf(err, VD_EINVAL, "'using': named vector '%s' does not exist", u->valuestring);
    return 0;
}

static int parse_search(struct vd_coll *c, const struct vd_data_req *o, const cJSON *b,
                        struct sargs *a, struct vd_err *err)
{
    memset(a, 0, sizeof *a);
    if (!cJSON_IsObject(b))
        return vd_errf(err, VD_EINVAL, "a search request must be a JSON object");
    int rc = read_common(c, b, a, false, "search_request", err);
    if (rc)
        return rc;
    if (!cJSON_GetObjectItemCaseSensitive(b, "limit"))
        return vd_errf(err, VD_EINVAL, "missing field 'limit'");
    if ((rc = read_query_vector(c, cJSON_GetObjectItemCaseSensitive(b, "vector"), "vector",
                                &a->vec, err)))
        return rc;
    a->s.query = a->vec;
    return 0;
}

/* The stored vector of point id, for a query by point id: *out malloc'd (dim floats). */
static int point_vector(struct vd_coll *c, const struct vd_data_req *o, const struct vd_pid *id,
                        float **out,
                        struct vd_err *err)
{
    uint32_t dim = vd_db_coll_schema(c)->dim;
    struct vd_db_record *rec;
    size_t n;
    int rc = vd__api.data.retrieve(vd__api.data.impl, c, o, id, 1, true, &rec, &n, err);
    if (rc)
        return rc;
    if (n == 1 && rec[0].vec && rec[0].dim == dim) {
        *out = rec[0].vec;
        rec[0].vec = NULL; /* taken */
    } else {
        char s[VD_PID_STR_MAX];
        vd_pid_format(id, s);
        /* Qdrant's words for a query by an id that is not stored */
        rc = vd_errf(err, VD_ENOTFOUND, "Not found: No point with id %s found", s);
    }
    vd_db_records_free(rec, n);
    return rc;
}

static int parse_query(struct vd_coll *c, const struct vd_data_req *o, const cJSON *b,
                       struct sargs *a, struct vd_err *err)
{
    memset(a, 0, sizeof *a);
    if (!cJSON_IsObject(b))
        return vd_errf(err, VD_EINVAL, "a query request must be a JSON object");
    int rc = read_common(c, b, a, false, "internal", err);
    if (rc)
        return rc;
    if (cJSON_GetObjectItemCaseSensitive(b, "prefetch"))
        return vd_errf(err, VD_EINVAL, "'prefetch' is not supported");
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(b, "query");
    if (cJSON_IsObject(q)) {
        const cJSON *near = cJSON_GetObjectItemCaseSensitive(q, "nearest");
        if (!near)
            return vd_errf(err, VD_EINVAL, "'query' object must be {\"nearest\": vector or point "
                                           "id}; other query kinds are not supported");
        q = near;
    }
    if (!q || cJSON_IsNull(q)) {
        a->scroll = true;
        return 0;
    }
    if (cJSON_IsNumber(q) || cJSON_IsString(q)) {
        if ((rc = vd_json_get_pid(q, &a->exclude, err))) {
            vd_err_prefix(err, "query");
            return rc;
        }
        if ((rc = point_vector(c, o, &a->exclude, &a->vec, err)))
            return rc;
        a->s.exclude = &a->exclude;
    } else if ((rc = read_query_vector(c, q, "query", &a->vec, err))) {
        return rc;
    }
    a->s.query = a->vec;
    return 0;
}

/* Runs one search or query and appends its points (a JSON array) to out. */
/* The options of a's data operations: the request's, with a's filter and payload choice. */
static struct vd_data_req search_req(const struct vd_data_req *req, const struct sargs *a)
{
    struct vd_data_req ro = *req;
    ro.filter = a->filter_json;
    ro.with_payload = a->w.payload;
    return ro;
}

static int run(struct vd_coll *c, const struct vd_data_req *req, struct sargs *a,
               struct vd_buf *out, struct vd_err *err)
{
    struct vd_data_req ro = search_req(req, a);
    const struct vd_data_req *o = &ro;
    const struct vd_data_ops *d = &vd__api.data;
    struct vd_db_record *recs = NULL;
    size_t n = 0;
    int rc;
    if (!a->scroll) {
        if ((rc = d->search(d->impl, c, o, &a->s, a->w.vector, &recs, &n, err)))
            return rc;
        vd__api_points_json(out, recs, n, &a->w, VD_API_POINT_SCORED);
        vd_db_records_free(recs, n);
        return 0;
    }
    struct vd_pid from, next;
    bool has_from = false, has_next;
    if (a->s.offset) {
        /* skip `offset` points in scroll order: their records are read and thrown away */
        if ((rc = d->scroll(d->impl, c, o, NULL, a->s.offset, a->filter, false, &recs, &n, &from,
                            &has_from, err)))
            return rc;
        vd_db_records_free(recs, n);
        if (!has_from) {
            vd_buf_puts(out, "[]");
            return 0;
        }
    }
    if (a->s.limit == 0) {
        vd_buf_puts(out, "[]");
        return 0;
    }
    if ((rc = d->scroll(d->impl, c, o, has_from ? &from : NULL, a->s.limit, a->filter, a->w.vector,
                        &recs, &n, &next, &has_next, err)))
        return rc;
    vd__api_points_json(out, recs, n, &a->w, VD_API_POINT_RECORD);
    vd_db_records_free(recs, n);
    return 0;
}

typedef int (*parse_fn)(struct vd_coll *, const struct vd_data_req *, const cJSON *,
                        struct sargs *, struct vd_err *);

/* One search or query in flight: answered from the completion of the asynchronous search
 * (vd_data_ops.search_async), which then owns it, or at once. */
struct single {
    struct vd_http_req *r;
    struct vd_coll *c; /* referenced */
    cJSON *body;       /* a.w's key arrays point into it */
    struct sargs a;
    bool wrap_points;
};

static void single_free(struct single *q)
{
    sargs_release(&q->a);
    cJSON_Delete(q->body);
    vd_db_coll_put(q->c);
    free(q);
}

static void single_reply(int status, const struct vd_err *err, const struct vd_data_result *res,
                         void *arg)
{
    struct single *q = arg;
    if (status) {
        if (err && err->msg[0])
            vd_http_reply_err(q->r, err);
        else
            vd_http_reply_error(q->r, vd_err_http_status(status), "%s", vd_strerror(status));
    } else {
        struct vd_buf b;
        vd_buf_init(&b);
        if (q->wrap_points)
            vd_buf_puts(&b, "{\"points\":");
        vd__api_points_json(&b, res->recs, res->n, &q->a.w, VD_API_POINT_SCORED);
        if (q->wrap_points)
            vd_buf_puts(&b, "}");
        vd__api_reply_buf(q->r, &b);
    }
    single_free(q);
}

static void single(struct vd_http_req *r, parse_fn parse, bool wrap_points)
{
    struct vd_coll *c = vd__api_coll(r);
    if (!c)
        return;
    struct single *q = calloc(1, sizeof *q);
    if (!q) {
        vd_db_coll_put(c);
        vd_http_reply_error(r, 500, "out of memory");
        return;
    }
    q->r = r;
    q->c = c;
    q->wrap_points = wrap_points;
    if (!(q->body = vd__api_body(r, false))) {
        single_free(q);
        return;
    }
    const struct vd_data_ops *d = &vd__api.data;
    struct vd_err e;
    struct vd_data_req o;
    int rc = vd__api_data_req(r, c, &o, &e);
    if (!rc)
        rc = parse(c, &o, q->body, &q->a, &e);
    if (!rc && !q->a.scroll && d->search_async) {
        struct vd_data_req so = search_req(&o, &q->a);
        rc = d->search_async(d->impl, c, &so, &q->a.s, q->a.w.vector, single_reply, q, &e);
        if (!rc)
            return; /* q is the completion's */
    }
    struct vd_buf b;
    vd_buf_init(&b);
    if (wrap_points)
        vd_buf_puts(&b, "{\"points\":");
    if (!rc)
        rc = run(c, &o, &q->a, &b, &e);
    if (rc) {
        vd_http_reply_err(r, &e);
    } else {
        if (wrap_points)
            vd_buf_puts(&b, "}");
        vd__api_reply_buf(r, &b);
    }
    vd_buf_release(&b);
    single_free(q);
}

static void batch(struct vd_http_req *r, parse_fn parse, bool wrap_points)
{
    struct vd_coll *c = vd__api_coll(r);
    if (!c)
        return;
    cJSON *body = vd__api_body(r, false);
    struct vd_err e;
    struct vd_buf b;
    vd_buf_init(&b);
    if (!body)
        goto out;
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(body, "searches");
    struct vd_data_req o;
    if (vd__api_data_req(r, c, &o, &e)) {
        vd_http_reply_err(r, &e);
        goto out;
    }
    if (!cJSON_IsArray(list)) {
        vd_http_reply_error(r, 400, "'searches' must be an array of requests");
        goto out;
    }
    vd_buf_puts(&b, "[");
    size_t i = 0;
    const cJSON *q;
    cJSON_ArrayForEach(q, list)
    {
        struct sargs a = {0};
        if (i)
            vd_buf_puts(&b, ",");
        if (wrap_points)
            vd_buf_puts(&b, "{\"points\":");
        int rc = parse(c, &o, q, &a, &e);
        if (!rc)
            rc = run(c, &o, &a, &b, &e);
        sargs_release(&a);
        if (rc) {
            vd_err_prefix(&e, "searches[%zu]", i);
            vd_http_reply_err(r, &e);
            goto out;
        }
        if (wrap_points)
            vd_buf_puts(&b, "}");
        i++;
    }
    vd_buf_puts(&b, "]");
    vd__api_reply_buf(r, &b);
out:
    vd_buf_release(&b);
    cJSON_Delete(body);
    vd_db_coll_put(c);
}

static void search(struct vd_http_req *r, void *ctx)
{
    single(r, parse_search, false);
}
static void search_batch(struct vd_http_req *r, void *ctx)
{
    batch(r, parse_search, false);
}
static void query(struct vd_http_req *r, void *ctx)
{
    single(r, parse_query, true);
}
static void query_batch(struct vd_http_req *r, void *ctx)
{
    batch(r, parse_query, true);
}

int vd__api_search_routes(struct vd_http *h)
{
    int rc;
    if ((rc = vd_http_route(h, "POST", "/collections/{name}/points/search", VD_ROLE_RO, search,
                            NULL)) ||
        (rc = vd_http_route(h, "POST", "/collections/{name}/points/search/batch", VD_ROLE_RO,
                            search_batch, NULL)) ||
        (rc = vd_http_route(h, "POST", "/collections/{name}/points/query", VD_ROLE_RO, query,
                            NULL)) ||
        (rc = vd_http_route(h, "POST", "/collections/{name}/points/query/batch", VD_ROLE_RO,
                            query_batch, NULL)))
        return rc;
    return 0;
}
