/* Shared request helpers and route registration. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api_int.h"

struct vd_api_opts vd__api;

static int local_create(void *impl, const struct vd_coll_schema *s, vd_db_done_fn done, void *ctx,
                        struct vd_err *err)
{
    return vd_db_coll_create(impl, s, done, ctx, err);
}

static int local_update(void *impl, const struct vd_coll_schema *s, vd_db_done_fn done,
                        void *ctx, struct vd_err *err)
{
    return vd_db_coll_update(impl, s, done, ctx, err);
}

static int local_delete(void *impl, const char *name, vd_db_done_fn done, void *ctx,
                        struct vd_err *err)
{
    return vd_db_coll_delete(impl, name, done, ctx, err);
}

void vd_api_local_meta(struct vd_db *db, struct vd_meta_ops *out)
{
    out->create_collection = local_create;
    out->delete_collection = local_delete;
    out->update_collection = local_update;
    out->impl = db;
}

static int local_upsert(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                        const struct vd_db_point *pts, size_t n, vd_db_done_fn done, void *ctx,
                        struct vd_err *err)
{
    return vd_db_upsert(c, pts, n, done, ctx, err);
}

static int local_apply(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                       const uint8_t *const *recs, const size_t *lens, size_t n,
                       vd_db_done_fn done, void *ctx, struct vd_err *err)
{
    return vd_db_apply(c, recs, lens, n, done, ctx, err);
}

static int local_delete_points(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                               const struct vd_pid *ids, size_t n, const struct vd_filter *f,
                               vd_db_done_fn done, void *ctx, struct vd_err *err)
{
    if (f)
        return vd_db_delete_filter(c, f, done, ctx, err);
    return vd_db_delete(c, ids, n, done, ctx, err);
}

static int local_payload_edit(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                              enum vd_db_payload_op op, const cJSON *payload_or_keys,
                              const struct vd_pid *ids, size_t n, const struct vd_filter *f,
                              vd_db_done_fn done, void *ctx, struct vd_err *err)
{
    return vd_db_payload_edit(c, op, payload_or_keys, f ? NULL : ids, n, f, done, ctx, err);
}

static int local_retrieve(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                          const struct vd_pid *ids, size_t n, bool with_vector,
                          struct vd_db_record **out, size_t *n_out, struct vd_err *err)
{
    return vd_db_retrieve(c, ids, n, with_vector, false, out, n_out, err);
}

static int local_search(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                        const struct vd_db_search *s, bool with_vector,
                        struct vd_db_record **out, size_t *n_out, struct vd_err *err)
{
    return vd_db_search(c, s, with_vector, out, n_out, err);
}

static int local_scroll(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                        const struct vd_pid *from, uint32_t limit, const struct vd_filter *f,
                        bool with_vector, struct vd_db_record **out, size_t *n_out,
                        struct vd_pid *next, bool *has_next, struct vd_err *err)
{
    return vd_db_scroll(c, from, limit, f, with_vector, out, n_out, next, has_next, err);
}

static int local_count(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                       const struct vd_filter *f, uint64_t *out, struct vd_err *err)
{
    return vd_db_count(c, f, out);
}

void vd_api_local_data(struct vd_db *db, struct vd_data_ops *out)
{
    *out = (struct vd_data_ops){
        .upsert = local_upsert,
        .apply = local_apply,
        .delete_points = local_delete_points,
        .payload_edit = local_payload_edit,
        .retrieve = local_retrieve,
        .search = local_search,
        .scroll = local_scroll,
        .count = local_count,
        .impl = db,
    };
}

/* An unsigned decimal of at most 9 digits (so it fits without overflow), or -1. */
static long small_uint(const char *s)
{
    size_t len = strlen(s);
    if (len == 0 || len > 9)
        return -1;
    long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

int vd_api_data_req_parse(const char *consistency, const char *timeout, const char *wait,
                          unsigned rf, struct vd_data_req *out, struct vd_err *err)
{
    *out = (struct vd_data_req){.wait = true, .with_payload = true};
    if (rf == 0)
        rf = 1;
    if (consistency) {
        long v = small_uint(consistency);
        if (!strcmp(consistency, "majority") || !strcmp(consistency, "quorum"))
            out->consistency = rf / 2 + 1;
        else if (!strcmp(consistency, "all"))
            out->consistency = rf;
        else if (v >= 1 && v <= (long)rf)
            out->consistency = (unsigned)v;
        else
            return vd_errf(err, VD_EINVAL,
                           "query parameter 'consistency': '%.64s' is not allowed; expected an "
                           "integer from 1 to %u (the collection's replication_factor), "
                           "'majority', 'quorum' or 'all'",
                           consistency, rf);
    }
    if (timeout) {
        long v = small_uint(timeout);
        if (v < 1 || v > 3600)
            return vd_errf(err, VD_EINVAL,
                           "query parameter 'timeout': '%.64s' is not allowed; expected whole "
                           "seconds from 1 to 3600",
                           timeout);
        out->timeout_ms = (uint32_t)v * 1000u;
    }
    if (wait) {
        if (!strcmp(wait, "true") || !wait[0])
            out->wait = true;
        else if (!strcmp(wait, "false"))
            out->wait = false;
        else
            return vd_errf(err, VD_EINVAL,
                           "query parameter 'wait': '%.64s' is not allowed; expected 'true' or "
                           "'false'",
                           wait);
    }
    return 0;
}

int vd__api_data_req(struct vd_http_req *r, struct vd_coll *c, struct vd_data_req *out,
                     struct vd_err *err)
{
    unsigned rf = 1;
    if (vd__api.cluster) {
        struct vd_coll_schema s;
        vd_db_coll_schema_copy(c, &s);
        rf = s.replication_factor;
    }
    return vd_api_data_req_parse(vd_http_query(r, "consistency"), vd_http_query(r, "timeout"),
                                 vd_http_query(r, "wait"), rf, out, err);
}

void vd__api_wait_init(pthread_mutex_t *mu, pthread_cond_t *cv)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(mu, NULL);
    pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
}

int vd_api_register(struct vd_http *h, const struct vd_api_opts *o)
{
    vd__api = *o;
    if (!vd__api.max_import_line)
        vd__api.max_import_line = 64u << 20;
    /* with a cluster, every collection change must go through Raft or nodes would diverge */
    if (vd__api.cluster)
        vd_api_cluster_meta(vd__api.cluster, &vd__api.meta);
    else if (!vd__api.meta.create_collection)
        vd_api_local_meta(vd__api.db, &vd__api.meta);
    /* a cluster node serves points from its own database too, until a coordinator's
     * implementation routes them to their replicas */
    if (!vd__api.data.upsert)
        vd_api_local_data(vd__api.db, &vd__api.data);
    int rc;
    /* literal paths before captures: GET .../points/export before GET .../points/{id} */
    if ((rc = vd__api_bulk_routes(h)) || (rc = vd__api_collections_routes(h)) ||
        (rc = vd__api_points_routes(h)) || (rc = vd__api_search_routes(h)) ||
        (rc = vd__api_payload_index_routes(h)))
        return rc;
    if (vd__api.cluster && (rc = vd__api_cluster_routes(h)))
        return rc;
    return 0;
}

cJSON *vd__api_body(struct vd_http_req *r, bool allow_empty)
{
    size_t len;
    const char *body = vd_http_body(r, &len);
    if ((!body || len == 0) && allow_empty)
        return cJSON_CreateObject();
    cJSON *j = NULL;
    struct vd_err e;
    if (!body || len == 0) {
        vd_http_reply_error(r, 400, "request body is empty; expected a JSON object");
        return NULL;
    }
    if (vd_json_parse(body, len, VD_JSON_MAX_DEPTH, &j, &e)) {
        vd_http_reply_err(r, &e);
        return NULL;
    }
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        vd_http_reply_error(r, 400, "request body must be a JSON object");
        return NULL;
    }
    return j;
}

struct vd_coll *vd__api_coll(struct vd_http_req *r)
{
    const char *name = vd_http_param(r, "name");
    struct vd_err e;
    if (!name || vd_db_check_name(name, &e)) {
        vd_http_reply_err(r, &e);
        return NULL;
    }
    struct vd_coll *c;
    int rc = vd__api_coll_find(r, name, &c, &e);
    if (rc == VD__API_PENDING)
        return NULL;
    if (rc) {
        vd_http_reply_err(r, &e);
        return NULL;
    }
    return c;
}

/* The collection may have been created through another node and not be applied here yet: in a
 * cluster a 404 is only given once this node has caught up, and the wait for that holds no pool
 * thread (the handler returns and runs again from the catch-up's completion). */
int vd__api_coll_find(struct vd_http_req *r, const char *name, struct vd_coll **out,
                      struct vd_err *err)
{
    if (vd_db_coll_get(vd__api.db, name, out) == 0)
        return 0;
    if (vd__api.cluster) {
        int status;
        if (!vd_http_redispatched(r, &status)) {
            int rc = vd__api_cluster_catch_up_start(r, name, err);
            return rc ? rc : VD__API_PENDING;
        }
        if (status)
            return vd__api_cluster_unconfirmed(name, status, err);
        if (vd_db_coll_get(vd__api.db, name, out) == 0)
            return 0;
    }
    return vd_errf(err, VD_ENOTFOUND, "collection '%s' not found", name);
}

int vd__api_coll_lookup(const char *name, struct vd_coll **out, struct vd_err *err)
{
    if (vd_db_coll_get(vd__api.db, name, out) == 0)
        return 0;
    if (vd__api.cluster) {
        int rc = vd__api_cluster_catch_up(name, err);
        if (rc)
            return rc;
        if (vd_db_coll_get(vd__api.db, name, out) == 0)
            return 0;
    }
    return vd_errf(err, VD_ENOTFOUND, "collection '%s' not found", name);
}

struct vd_coll *vd__api_coll_body(struct vd_http_req *r, bool allow_empty, cJSON **body)
{
    struct vd_coll *c = vd__api_coll(r);
    if (!c)
        return NULL;
    if (!(*body = vd__api_body(r, allow_empty))) {
        vd_db_coll_put(c);
        return NULL;
    }
    return c;
}

void vd__api_reply_buf(struct vd_http_req *r, struct vd_buf *b)
{
    if (!vd_buf_ok(b)) {
        vd_buf_release(b);
        vd_http_reply_error(r, 500, "out of memory building the reply");
        return;
    }
    vd_http_reply_ok(r, b->data ? b->data : "null", b->data ? b->len : 4);
    vd_buf_release(b);
}

void vd__api_reply_true(struct vd_http_req *r)
{
    vd_http_reply_ok(r, "true", 4);
}

static void write_reply(int status, const struct vd_err *err, uint64_t op_id, void *ctx,
                        const char *word)
{
    struct vd_http_req *r = ctx;
    if (status) {
        if (err && err->msg[0])
            vd_http_reply_err(r, err);
        else
            vd_http_reply_error(r, vd_err_http_status(status), "write failed: %s",
                                vd_strerror(status));
        return;
    }
    char buf[96];
    int n = snprintf(buf, sizeof buf, "{\"operation_id\":%llu,\"status\":\"%s\"}",
                     (unsigned long long)op_id, word);
    vd_http_reply_ok(r, buf, (size_t)n);
}

void vd__api_write_done(int status, const struct vd_err *err, uint64_t op_id, void *ctx)
{
    write_reply(status, err, op_id, ctx, "completed");
}

static void write_acked(int status, const struct vd_err *err, uint64_t op_id, void *ctx)
{
    write_reply(status, err, op_id, ctx, "acknowledged");
}

vd_db_done_fn vd__api_write_done_for(const struct vd_data_req *o)
{
    return vd__api.cluster && !o->wait ? write_acked : vd__api_write_done;
}

void vd__api_meta_done(int status, const struct vd_err *err, uint64_t op_id, void *ctx)
{
    struct vd_http_req *r = ctx;
    if (status) {
        if (err && err->msg[0])
            vd_http_reply_err(r, err);
        else
            vd_http_reply_error(r, vd_err_http_status(status), "%s", vd_strerror(status));
        return;
    }
    vd__api_reply_true(r);
}

int vd__api_refuse(const cJSON *obj, const char *key, const char *path, const char *why,
                   struct vd_err *err)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it) || ((cJSON_IsObject(it) || cJSON_IsArray(it)) && !it->child))
        return 0;
    return vd_errf(err, VD_EINVAL, "'%s' is not supported: %s", path, why);
}

int vd__api_get_bool(const cJSON *obj, const char *key, bool dflt, bool *out, struct vd_err *err)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it)) {
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsBool(it))
        return vd_errf(err, VD_EINVAL, "'%s' must be true or false", key);
    *out = cJSON_IsTrue(it);
    return 0;
}

int vd__api_get_u32(const cJSON *obj, const char *key, uint32_t dflt, uint32_t min, uint32_t max,
                    uint32_t *out, struct vd_err *err)
{
    return vd__api_get_u32_at(obj, NULL, key, dflt, min, max, out, err);
}

int vd__api_get_u32_at(const cJSON *obj, const char *path, const char *key, uint32_t dflt,
                       uint32_t min, uint32_t max, uint32_t *out, struct vd_err *err)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it)) {
        *out = dflt;
        return 0;
    }
    const char *dot = path ? "." : "";
    path = path ? path : "";
    uint64_t v;
    if (!cJSON_IsNumber(it) || vd_json_get_u64(it, &v))
        return vd_errf(err, VD_EINVAL, "'%s%s%s' must be a non-negative integer", path, dot, key);
    if (v >= min && v <= max) {
        *out = (uint32_t)v;
        return 0;
    }
    /* Qdrant's wording for a value out of range, which clients and its tests match on */
    if (max == UINT32_MAX)
        return vd_errf(err, VD_ERANGE,
                       "Validation error in JSON body: [%s%s%s: value %llu invalid, must be %u or "
                       "larger]",
                       path, dot, key, (unsigned long long)v, min);
    return vd_errf(err, VD_ERANGE,
                   "Validation error in JSON body: [%s%s%s: value %llu invalid, must be from %u to "
                   "%u]",
                   path, dot, key, (unsigned long long)v, min, max);
}

int vd__api_get_float(const cJSON *obj, const char *key, bool *present, float *out,
                      struct vd_err *err)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    *present = false;
    if (!it || cJSON_IsNull(it))
        return 0;
    if (!cJSON_IsNumber(it) || !isfinite((float)it->valuedouble))
        return vd_errf(err, VD_EINVAL, "'%s' must be a finite number", key);
    *out = (float)it->valuedouble;
    *present = true;
    return 0;
}

static bool all_strings(const cJSON *a)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, a)
    {
        if (!cJSON_IsString(it))
            return false;
    }
    return true;
}

int vd__api_get_with(const cJSON *obj, bool payload_dflt, struct vd_api_with *w,
                     struct vd_err *err)
{
    memset(w, 0, sizeof *w);
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(obj, "with_payload");
    if (!p || cJSON_IsNull(p)) {
        w->payload = payload_dflt;
    } else if (cJSON_IsBool(p)) {
        w->payload = cJSON_IsTrue(p);
    } else if (cJSON_IsArray(p) && all_strings(p)) {
        int rc = vd_payload_keys_check(p, "with_payload", err);
        if (rc)
            return rc;
        w->payload = true;
        w->payload_keys = p;
    } else if (cJSON_IsObject(p)) {
        const cJSON *inc = cJSON_GetObjectItemCaseSensitive(p, "include");
        const cJSON *exc = cJSON_GetObjectItemCaseSensitive(p, "exclude");
        if ((inc && !(cJSON_IsArray(inc) && all_strings(inc))) ||
            (exc && !(cJSON_IsArray(exc) && all_strings(exc))) || (!inc && !exc))
            return vd_errf(err, VD_EINVAL,
                           "'with_payload' object must have 'include' or 'exclude': a list of "
                           "payload keys");
        int rc;
        if ((inc && (rc = vd_payload_keys_check(inc, "with_payload.include", err))) ||
            (exc && (rc = vd_payload_keys_check(exc, "with_payload.exclude", err))))
            return rc;
        w->payload = true;
        w->payload_keys = inc;
        w->payload_exclude = exc;
    } else {
        return vd_errf(err, VD_EINVAL,
                       "'with_payload' must be true, false, a list of keys, or {\"include\"|"
                       "\"exclude\": [...]}");
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, "with_vector");
    if (!v)
        v = cJSON_GetObjectItemCaseSensitive(obj, "with_vectors");
    if (!v || cJSON_IsNull(v))
        w->vector = false;
    else if (cJSON_IsBool(v))
        w->vector = cJSON_IsTrue(v);
    else if (cJSON_IsArray(v) && all_strings(v))
        w->vector = cJSON_GetArraySize(v) > 0;
    else
        return vd_errf(err, VD_EINVAL, "'with_vector' must be true or false");
    return 0;
}

int vd__api_get_filter(const cJSON *obj, struct vd_filter **out, struct vd_err *err)
{
    *out = NULL;
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(obj, "filter");
    if (!f || cJSON_IsNull(f))
        return 0;
    return vd_filter_parse(f, out, err);
}

int vd__api_get_ids(const cJSON *arr, const char *what, struct vd_pid **ids, size_t *n,
                    struct vd_err *err)
{
    if (!cJSON_IsArray(arr))
        return vd_errf(err, VD_EINVAL, "'%s' must be an array of point ids", what);
    size_t cnt = (size_t)cJSON_GetArraySize(arr);
    struct vd_pid *v = malloc(sizeof *v * (cnt ? cnt : 1));
    if (!v)
        return vd_errf(err, VD_ENOMEM, "out of memory");
    size_t i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        int rc = vd_json_get_pid(it, &v[i], err);
        if (rc) {
            vd_err_prefix(err, "%s[%zu]", what, i);
            free(v);
            return rc;
        }
        i++;
    }
    *ids = v;
    *n = i;
    return 0;
}
