/*
 * Point updates: Qdrant's update operations (upsert, delete, set, overwrite, delete and clear
 * payload, update and delete vectors). Each write endpoint is one operation and
 * POST /collections/{name}/points/batch a list of them; all go through the same two halves:
 *
 * - parse (vd__api_upd_parse): the operation read and validated whole against its collection
 *   (ids, vectors and their dimension, zero vectors under Cosine, filters, payloads), so that a
 *   batch with one bad operation is refused before anything is written;
 * - run: the operations applied in order through the data operations (struct vd_data_ops), each
 *   started once the one before it completed, so a later operation sees what an earlier one
 *   wrote, on one node and in a cluster alike.
 *
 * A run never waits on a thread: each step is started from the completion of the one before
 * (the storage writer's or the cluster loop's thread) and only calls that return at once. An
 * implementation with asynchronous reads (a cluster's) would block the calling thread to find
 * the points a filter selects, so a run finds them itself first through the asynchronous scroll
 * and hands the write their ids. Updating a vector is a whole-record write, like a payload edit
 * in a cluster: the point is read (at a level that sees every write this request acknowledged),
 * given its new vector, and written whole under a newer version.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "api_int.h"
#include "vectord/record.h"

static const char *const upd_names[VD__API_UPD_N] = {
    [VD__API_UPD_UPSERT] = "upsert",
    [VD__API_UPD_DELETE] = "delete",
    [VD__API_UPD_SET_PAYLOAD] = "set_payload",
    [VD__API_UPD_OVERWRITE_PAYLOAD] = "overwrite_payload",
    [VD__API_UPD_DELETE_PAYLOAD] = "delete_payload",
    [VD__API_UPD_CLEAR_PAYLOAD] = "clear_payload",
    [VD__API_UPD_UPDATE_VECTORS] = "update_vectors",
    [VD__API_UPD_DELETE_VECTORS] = "delete_vectors",
};

const char *vd__api_upd_name(enum vd__api_upd_kind kind)
{
    return kind < VD__API_UPD_N ? upd_names[kind] : "?";
}

/* ---- parsing -------------------------------------------------------------------------------- */

void vd__api_upd_release(struct vd__api_upd *u)
{
    free(u->pts);
    free(u->vecs);
    free(u->ids);
    vd_filter_free(u->filter);
    memset(u, 0, sizeof *u);
}

static int alloc_points(struct vd__api_upd *u, size_t n, uint32_t dim, struct vd_err *err)
{
    if (n == 0)
        return vd_errf(err, VD_EINVAL, "no points given");
    u->n_pts = n;
    u->pts = calloc(n, sizeof *u->pts);
    u->vecs = malloc(sizeof(float) * dim * n);
    if (!u->pts || !u->vecs)
        return vd_errf(err, VD_ENOMEM, "out of memory for %zu points", n);
    return 0;
}

/* The vector v of a point of c into dst (the collection's dim values). A zero vector under
 * Cosine is refused here (scratch: dim floats), not when the write comes to it: by then the
 * operations before it in a batch would be written. */
static int read_vector(const cJSON *v, struct vd_coll *c, float *dst, float *scratch,
                       struct vd_err *err)
{
    if (cJSON_IsObject(v))
        return vd_errf(err, VD_EINVAL, "named vectors are not supported: 'vector' must be an "
                                       "array of numbers");
    if (!v)
        return vd_errf(err, VD_EINVAL, "missing field 'vector'");
    float *out;
    uint32_t got;
    int rc = vd_json_get_floats(v, vd_db_coll_schema(c)->dim, dst, &out, &got, err);
    if (rc == 0)
        rc = vd_db_prepare_vector(c, dst, scratch, err);
    return rc;
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

/* "points": [{"id", "vector", "payload"}] (the payload only when with_payload). */
static int parse_list(const cJSON *points, struct vd_coll *c, bool with_payload,
                      struct vd__api_upd *u, float *scratch, struct vd_err *err)
{
    uint32_t dim = vd_db_coll_schema(c)->dim;
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
            rc = vd_errf(err, VD_EINVAL, with_payload
                                             ? "must be an object {\"id\", \"vector\", \"payload\"}"
                                             : "must be an object {\"id\", \"vector\"}");
        } else {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(p, "id");
            const cJSON *vec = cJSON_GetObjectItemCaseSensitive(p, "vector");
            if (!id)
                rc = vd_errf(err, VD_EINVAL, "missing field 'id'");
            else if (!(rc = vd_json_get_pid(id, &dp->id, err)) &&
                     !(rc = read_vector(vec, c, u->vecs + i * dim, scratch, err)) && with_payload)
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

/* "batch": {"ids", "vectors", "payloads"}. */
static int parse_batch(const cJSON *batch, struct vd_coll *c, struct vd__api_upd *u,
                       float *scratch, struct vd_err *err)
{
    uint32_t dim = vd_db_coll_schema(c)->dim;
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
        if ((rc = read_vector(v, c, u->vecs + i * dim, scratch, err))) {
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

/* The points an operation acts on: "points" (ids) or "filter". */
static int parse_selector(const cJSON *obj, struct vd__api_upd *u, struct vd_err *err)
{
    const cJSON *pts = cJSON_GetObjectItemCaseSensitive(obj, "points");
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(obj, "filter");
    if (pts && !cJSON_IsNull(pts))
        return vd__api_get_ids(pts, "points", &u->ids, &u->n_ids, err);
    if (f && !cJSON_IsNull(f)) {
        u->filter_json = f;
        return vd_filter_parse(f, &u->filter, err);
    }
    return vd_errf(err, VD_EINVAL, "expected 'points' (a list of point ids) or 'filter'");
}

static int parse_upsert(const cJSON *obj, struct vd_coll *c, struct vd__api_upd *u,
                        float *scratch, struct vd_err *err)
{
    const cJSON *points = cJSON_GetObjectItemCaseSensitive(obj, "points");
    const cJSON *batch = cJSON_GetObjectItemCaseSensitive(obj, "batch");
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(obj, "update_mode");
    int rc;
    if ((rc = vd__api_refuse(obj, "update_filter", "update_filter",
                             "conditional updates are not implemented", err)))
        return rc;
    if (mode && !cJSON_IsNull(mode) &&
        !(cJSON_IsString(mode) && !strcmp(mode->valuestring, "upsert")))
        return vd_errf(err, VD_EINVAL, "'update_mode' is not supported: only \"upsert\" (the "
                                       "default) is implemented");
    if (points)
        return parse_list(points, c, true, u, scratch, err);
    if (batch)
        return parse_batch(batch, c, u, scratch, err);
    return vd_errf(err, VD_EINVAL, "expected 'points' (a list of points) or 'batch'");
}

static int parse_payload_arg(enum vd__api_upd_kind kind, const cJSON *obj, struct vd__api_upd *u,
                             struct vd_err *err)
{
    if (kind == VD__API_UPD_SET_PAYLOAD || kind == VD__API_UPD_OVERWRITE_PAYLOAD) {
        int rc = vd__api_refuse(obj, "key", "key",
                                "setting the payload under a nested key is not implemented", err);
        if (rc)
            return rc;
        u->arg = cJSON_GetObjectItemCaseSensitive(obj, "payload");
        if (!cJSON_IsObject(u->arg))
            return vd_errf(err, VD_EINVAL, "'payload' must be a JSON object");
    } else if (kind == VD__API_UPD_DELETE_PAYLOAD) {
        u->arg = cJSON_GetObjectItemCaseSensitive(obj, "keys");
        bool ok = cJSON_IsArray(u->arg);
        const cJSON *it;
        cJSON_ArrayForEach(it, u->arg) ok = ok && cJSON_IsString(it);
        if (!ok)
            return vd_errf(err, VD_EINVAL, "'keys' must be an array of payload keys");
    }
    return 0;
}

/* Qdrant's update_vectors: {"points": [{"id", "vector"}]} over the collection's one vector. */
static int parse_update_vectors(const cJSON *obj, struct vd_coll *c, struct vd__api_upd *u,
                                float *scratch, struct vd_err *err)
{
    int rc = vd__api_refuse(obj, "update_filter", "update_filter",
                            "conditional updates are not implemented", err);
    if (rc)
        return rc;
    const cJSON *points = cJSON_GetObjectItemCaseSensitive(obj, "points");
    if (!points)
        return vd_errf(err, VD_EINVAL, "missing field 'points'");
    return parse_list(points, c, false, u, scratch, err);
}

/* Qdrant's delete_vectors: {"vector": [names], "points" | "filter"}. Checked whole, then refused:
 * the point record holds every point with the collection's one vector, so there is no point
 * without one to leave behind. */
static int parse_delete_vectors(const cJSON *obj, struct vd__api_upd *u, struct vd_err *err)
{
    const cJSON *names = cJSON_GetObjectItemCaseSensitive(obj, "vector");
    bool ok = cJSON_IsArray(names) && cJSON_GetArraySize(names) > 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, names) ok = ok && cJSON_IsString(it);
    if (!ok)
        return vd_errf(err, VD_EINVAL, "'vector' must be a non-empty array of vector names");
    int rc = parse_selector(obj, u, err);
    if (rc)
        return rc;
    cJSON_ArrayForEach(it, names)
    {
        if (it->valuestring[0])
            return vd_errf(err, VD_EINVAL,
                           "Wrong input: Not existing vector name error: %s (the collection has "
                           "one unnamed vector, \"\")",
                           it->valuestring);
    }
    return vd_errf(err, VD_EINVAL,
                   "deleting the vector of a point is not supported: vectorless points are not "
                   "supported yet (every point keeps its collection's one vector; delete the "
                   "point instead)");
}

int vd__api_upd_parse(enum vd__api_upd_kind kind, const cJSON *obj, struct vd_coll *c,
                      struct vd__api_upd *u, struct vd_err *err)
{
    memset(u, 0, sizeof *u);
    u->kind = kind;
    if (!cJSON_IsObject(obj))
        return vd_errf(err, VD_EINVAL, "must be a JSON object");
    float *scratch = NULL;
    if (kind == VD__API_UPD_UPSERT || kind == VD__API_UPD_UPDATE_VECTORS) {
        if (!(scratch = malloc(sizeof(float) * vd_db_coll_schema(c)->dim)))
            return vd_errf(err, VD_ENOMEM, "out of memory");
    }
    int rc;
    switch (kind) {
    case VD__API_UPD_UPSERT:
        rc = parse_upsert(obj, c, u, scratch, err);
        break;
    case VD__API_UPD_UPDATE_VECTORS:
        rc = parse_update_vectors(obj, c, u, scratch, err);
        break;
    case VD__API_UPD_DELETE_VECTORS:
        rc = parse_delete_vectors(obj, u, err);
        break;
    case VD__API_UPD_DELETE:
    case VD__API_UPD_CLEAR_PAYLOAD:
        rc = parse_selector(obj, u, err);
        break;
    case VD__API_UPD_SET_PAYLOAD:
    case VD__API_UPD_OVERWRITE_PAYLOAD:
    case VD__API_UPD_DELETE_PAYLOAD:
        if (!(rc = parse_payload_arg(kind, obj, u, err)))
            rc = parse_selector(obj, u, err);
        break;
    default:
        rc = vd_errf(err, VD_EINVAL, "unknown update operation");
        break;
    }
    free(scratch);
    if (rc)
        vd__api_upd_release(u);
    return rc;
}

/* The operations[] of a batch into ops (n of them, each released by the caller whatever
 * happened; *ops malloc'd). An error names the operation: "operations[2].upsert: points[0]: …". */
static int parse_batch_ops(const cJSON *body, struct vd_coll *c, struct vd__api_upd **ops,
                           size_t *n, struct vd_err *err)
{
    *ops = NULL;
    *n = 0;
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(body, "operations");
    if (!arr)
        return vd_errf(err, VD_EINVAL, "missing field 'operations'");
    if (!cJSON_IsArray(arr))
        return vd_errf(err, VD_EINVAL, "'operations' must be an array of update operations");
    size_t cnt = (size_t)cJSON_GetArraySize(arr);
    if (!(*ops = calloc(cnt ? cnt : 1, sizeof **ops)))
        return vd_errf(err, VD_ENOMEM, "out of memory");
    const cJSON *op;
    cJSON_ArrayForEach(op, arr)
    {
        size_t i = (*n)++;
        int rc = 0;
        const cJSON *arg = NULL;
        enum vd__api_upd_kind kind = VD__API_UPD_N;
        if (!cJSON_IsObject(op)) {
            rc = vd_errf(err, VD_EINVAL, "must be an object with one of the keys 'upsert', "
                                         "'delete', 'set_payload', 'overwrite_payload', "
                                         "'delete_payload', 'clear_payload', 'update_vectors', "
                                         "'delete_vectors'");
        } else {
            for (int k = 0; k < VD__API_UPD_N; k++) {
                const cJSON *it = cJSON_GetObjectItemCaseSensitive(op, upd_names[k]);
                if (!it)
                    continue;
                if (arg) {
                    rc = vd_errf(err, VD_EINVAL, "holds both '%s' and '%s': one operation each",
                                 upd_names[kind], upd_names[k]);
                    break;
                }
                arg = it;
                kind = (enum vd__api_upd_kind)k;
            }
            if (!rc && !arg)
                rc = vd_errf(err, VD_EINVAL,
                             "unknown update operation '%s': expected one of 'upsert', 'delete', "
                             "'set_payload', 'overwrite_payload', 'delete_payload', "
                             "'clear_payload', 'update_vectors', 'delete_vectors'",
                             op->child ? op->child->string : "");
        }
        if (rc) {
            vd_err_prefix(err, "operations[%zu]", i);
            return rc;
        }
        if ((rc = vd__api_upd_parse(kind, arg, c, &(*ops)[i], err))) {
            vd_err_prefix(err, "operations[%zu].%s", i, upd_names[kind]);
            return rc;
        }
    }
    return 0;
}

/* ---- running -------------------------------------------------------------------------------- */

/* Where a run stands within its current operation. */
enum phase {
    PH_BEGIN, /* nothing asked yet */
    PH_FIND,  /* a page of the points the filter selects was asked for */
    PH_READ,  /* update_vectors: the points were asked for */
    PH_WRITE, /* the write was started */
};

struct run {
    struct vd_http_req *r;
    struct vd_coll *c; /* referenced */
    struct vd_coll_schema s;
    cJSON *body;       /* the operations point into it */
    struct vd__api_upd *ops;
    size_t n;
    bool batch;        /* the reply is a list of results */
    struct vd_data_req o;  /* the writes' options */
    struct vd_data_req ro; /* the reads' */
    size_t i;          /* the operation running */
    enum phase ph;
    uint64_t *op_ids;  /* each operation's result */
    /* Each asynchronous call has two parties: the caller once the call returned, and the
     * completion. The second to arrive continues the run, so a completion that runs during the
     * call does not start the next step from inside it. */
    atomic_int arrivals;
    int status;        /* the first failure */
    struct vd_err err;
    size_t failed_at;  /* the operation it names */
    bool checked;      /* the points of update_vectors were looked up (check_points) */
    /* PH_FIND: the ids found so far and where the next page starts */
    struct vd_pid *found;
    size_t n_found, cap_found;
    struct vd_pid from;
    bool more;
    /* PH_READ -> PH_WRITE: the records to write (update_vectors) */
    uint8_t **recs;
    size_t *lens, n_recs;
};

static void recs_free(uint8_t **recs, size_t *lens, size_t n)
{
    for (size_t k = 0; k < n; k++)
        free(recs[k]);
    free(recs);
    free(lens);
}

static void recs_clear(struct run *u)
{
    recs_free(u->recs, u->lens, u->n_recs);
    u->recs = NULL;
    u->lens = NULL;
    u->n_recs = 0;
}

static void run_free(struct run *u)
{
    for (size_t k = 0; k < u->n; k++)
        vd__api_upd_release(&u->ops[k]);
    free(u->ops);
    free(u->op_ids);
    free(u->found);
    recs_clear(u);
    cJSON_Delete(u->body);
    vd_db_coll_put(u->c);
    free(u);
}

static bool second(struct run *u)
{
    return atomic_fetch_add(&u->arrivals, 1) == 1;
}

static void advance(struct run *u);

/* Records a failure of the current operation (the first one counts). */
static void fail(struct run *u, int status, const struct vd_err *err)
{
    if (u->status)
        return;
    u->status = status;
    u->failed_at = u->i;
    if (err && err->msg[0])
        u->err = *err;
    else
        vd_errf(&u->err, status, "write failed: %s", vd_strerror(status));
}

/* The completion of a write: the operation is done. */
static void write_done(int status, const struct vd_err *err, uint64_t op_id, void *ctx)
{
    struct run *u = ctx;
    if (status) {
        fail(u, status, err);
    } else {
        u->op_ids[u->i++] = op_id;
        u->ph = PH_BEGIN;
    }
    if (second(u))
        advance(u);
}

static int grow_found(struct run *u, size_t need)
{
    size_t cap = need * 2;
    struct vd_pid *p = realloc(u->found, cap * sizeof *p);
    if (!p)
        return VD_ENOMEM;
    u->found = p;
    u->cap_found = cap;
    return 0;
}

/* The completion of a page of the points a filter selects. */
static void found_page(int status, const struct vd_err *err, const struct vd_data_result *res,
                       void *ctx)
{
    struct run *u = ctx;
    if (status) {
        fail(u, status, err);
    } else if (u->n_found + res->n > u->cap_found && grow_found(u, u->n_found + res->n)) {
        fail(u, VD_ENOMEM, NULL);
    } else {
        for (size_t k = 0; k < res->n; k++)
            u->found[u->n_found++] = res->recs[k].id;
        u->more = res->next != NULL;
        if (res->next)
            u->from = *res->next;
    }
    if (second(u))
        advance(u);
}

/* Asks for the next page of the points the current operation's filter selects. */
static int find_page(struct run *u, const struct vd__api_upd *op)
{
    const struct vd_data_ops *d = &vd__api.data;
    struct vd_data_req ro = u->ro;
    ro.filter = op->filter_json;
    ro.with_payload = false;
    const struct vd_pid *from = u->more ? &u->from : NULL;
    return d->scroll_async(d->impl, u->c, &ro, from, 1024, op->filter, false, found_page, u,
                           &u->err);
}

/* A point of update_vectors with its place in the request. */
struct keyed {
    const struct vd_db_point *p;
    size_t k;
    bool seen; /* read: the point exists */
};

/* By id, then by place in the request. */
static int keyed_cmp(const void *a, const void *b)
{
    const struct keyed *x = a, *y = b;
    int c = vd_pid_cmp(&x->p->id, &y->p->id);
    return c ? c : (x->k > y->k) - (x->k < y->k);
}

static int keyed_id_cmp(const void *key, const void *b)
{
    return vd_pid_cmp(key, &((const struct keyed *)b)->p->id);
}

/* The record of point p (its vector given, prepared here) in place of the stored record old:
 * the payload kept, a version newer than old's. */
static int new_record(struct run *u, const struct vd_db_point *p, const struct vd_db_record *old,
                      float *vec)
{
    int rc = vd_db_prepare_vector(u->c, p->vec, vec, &u->err);
    if (rc)
        return rc;
    struct vd_version v = {vd_hlc_now(), vd_db_node_id(vd__api.db)};
    /* newer than what it replaces even if that came from a clock ahead of this node's */
    if (v.hlc <= old->version.hlc)
        v.hlc = old->version.hlc + 1;
    struct vd_rvec rv = {.kind = VD_RVEC_DENSE, .n = u->s.dim, .values = vec};
    struct vd_record rec = {.id = p->id,
                            .incarnation = u->s.incarnation,
                            .version = v,
                            .n_vectors = 1,
                            .vectors = &rv,
                            .payload = old->payload,
                            .payload_len = old->payload ? old->payload_len : 0};
    size_t size = vd_record_size(&rec), len;
    uint8_t *b = malloc(size);
    if (!b)
        return vd_errf(&u->err, VD_ENOMEM, "out of memory for a record of %zu bytes", size);
    if ((rc = vd_record_encode(&rec, b, size, &len))) {
        free(b);
        return vd_errf(&u->err, rc, "cannot encode the point record: %s", vd_strerror(rc));
    }
    u->recs[u->n_recs] = b;
    u->lens[u->n_recs++] = len;
    return 0;
}

/* The records update_vectors writes: each point read (recs[n]) with its new vector (of equal
 * ids in the request, the last one, as a sequence of updates would leave it). A point not read
 * does not exist, which fails the operation as Qdrant's 404 does. */
static int build_updates(struct run *u, const struct vd__api_upd *op,
                         const struct vd_db_record *recs, size_t n)
{
    struct keyed *v = malloc(sizeof *v * op->n_pts);
    float *vec = malloc(sizeof(float) * u->s.dim);
    u->recs = calloc(op->n_pts, sizeof *u->recs);
    u->lens = calloc(op->n_pts, sizeof *u->lens);
    int rc = 0;
    if (!v || !vec || !u->recs || !u->lens) {
        rc = vd_errf(&u->err, VD_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t k = 0; k < op->n_pts; k++)
        v[k] = (struct keyed){.p = &op->pts[k], .k = k};
    qsort(v, op->n_pts, sizeof *v, keyed_cmp);
    size_t w = 0;
    for (size_t k = 0; k < op->n_pts; k++) {
        if (w && vd_pid_eq(&v[w - 1].p->id, &v[k].p->id))
            w--; /* a later one of the same id replaces it */
        v[w++] = v[k];
    }
    for (size_t k = 0; rc == 0 && k < n; k++) {
        struct keyed *p = bsearch(&recs[k].id, v, w, sizeof *v, keyed_id_cmp);
        if (!p || p->seen || recs[k].tombstone)
            continue;
        p->seen = true;
        rc = new_record(u, p->p, &recs[k], vec);
    }
    for (size_t k = 0; rc == 0 && k < w; k++) {
        if (!v[k].seen) {
            char id[VD_PID_STR_MAX];
            vd_pid_format(&v[k].p->id, id);
            rc = vd_errf(&u->err, VD_ENOTFOUND, "No point with id %s found", id);
        }
    }
out:
    free(v);
    free(vec);
    return rc;
}

static void read_done(int status, const struct vd_err *err, const struct vd_data_result *res,
                      void *ctx)
{
    struct run *u = ctx;
    int rc = status;
    if (rc)
        fail(u, rc, err);
    else if ((rc = build_updates(u, &u->ops[u->i], res->recs, res->n)))
        fail(u, rc, &u->err);
    if (second(u))
        advance(u);
}

static int read_ids(struct run *u, const struct vd_pid *ids, size_t n, vd_data_read_fn done);

/* Reads the points of the current update_vectors: their payloads and versions. */
static int read_points(struct run *u, struct vd__api_upd *op)
{
    struct vd_pid *ids = malloc(sizeof *ids * op->n_pts);
    if (!ids)
        return vd_errf(&u->err, VD_ENOMEM, "out of memory");
    for (size_t k = 0; k < op->n_pts; k++)
        ids[k] = op->pts[k].id;
    int rc = read_ids(u, ids, op->n_pts, read_done);
    free(ids);
    return rc;
}

/* ---- the points update_vectors needs, checked before anything is written ----
 * A batch that updates the vector of a point that does not exist fails with a 404, and as any
 * refused batch it writes nothing: so before its first operation, the points every
 * update_vectors after the first operation names are read once, and the batch is followed
 * through on them (an upsert makes a point exist, a delete by ids makes it absent). A delete by
 * filter leaves unknown which points it removes: an update after it finds a point it removed
 * missing only when it comes to it, with the operations before it written. */

struct known {
    struct vd_pid id;
    bool exists, unsure;
};

static int known_cmp(const void *a, const void *b)
{
    return vd_pid_cmp(&((const struct known *)a)->id, &((const struct known *)b)->id);
}

static struct known *known_find(struct known *k, size_t n, const struct vd_pid *id)
{
    struct known key = {.id = *id};
    return bsearch(&key, k, n, sizeof *k, known_cmp);
}

/* Is op one whose points check_points looks up? */
static bool checked_op(const struct run *u, size_t i)
{
    return i > 0 && u->ops[i].kind == VD__API_UPD_UPDATE_VECTORS;
}

/* The ids to look up, sorted and unique, into *out (malloc'd; *n of them). */
static int check_ids(const struct run *u, struct known **out, size_t *n)
{
    size_t cnt = 0;
    for (size_t i = 0; i < u->n; i++)
        if (checked_op(u, i))
            cnt += u->ops[i].n_pts;
    struct known *k = calloc(cnt ? cnt : 1, sizeof *k);
    if (!k)
        return VD_ENOMEM;
    size_t w = 0;
    for (size_t i = 0; i < u->n; i++)
        for (size_t j = 0; checked_op(u, i) && j < u->ops[i].n_pts; j++)
            k[w++].id = u->ops[i].pts[j].id;
    qsort(k, w, sizeof *k, known_cmp);
    size_t m = 0;
    for (size_t j = 0; j < w; j++)
        if (m == 0 || !vd_pid_eq(&k[m - 1].id, &k[j].id))
            k[m++] = k[j];
    *out = k;
    *n = m;
    return 0;
}

/* Follows the batch through on k[n] (exists: as read): fails the run naming the first
 * update_vectors of a point that will not exist. */
static void follow_through(struct run *u, struct known *k, size_t n)
{
    for (size_t i = 0; i < u->n; i++) {
        const struct vd__api_upd *op = &u->ops[i];
        struct known *p;
        if (op->kind == VD__API_UPD_UPSERT) {
            for (size_t j = 0; j < op->n_pts; j++)
                if ((p = known_find(k, n, &op->pts[j].id)))
                    *p = (struct known){.id = p->id, .exists = true};
        } else if (op->kind == VD__API_UPD_DELETE && op->filter) {
            for (size_t j = 0; j < n; j++)
                k[j].unsure = true;
        } else if (op->kind == VD__API_UPD_DELETE) {
            for (size_t j = 0; j < op->n_ids; j++)
                if ((p = known_find(k, n, &op->ids[j])))
                    *p = (struct known){.id = p->id};
        } else if (checked_op(u, i)) {
            for (size_t j = 0; j < op->n_pts; j++) {
                p = known_find(k, n, &op->pts[j].id);
                if (p->exists || p->unsure)
                    continue;
                char id[VD_PID_STR_MAX];
                vd_pid_format(&p->id, id);
                struct vd_err e;
                vd_errf(&e, VD_ENOTFOUND, "No point with id %s found", id);
                fail(u, VD_ENOTFOUND, &e);
                u->failed_at = i;
                return;
            }
        }
    }
}

static void check_done(int status, const struct vd_err *err, const struct vd_data_result *res,
                       void *ctx)
{
    struct run *u = ctx;
    struct known *k = NULL;
    size_t n = 0;
    if (status) {
        fail(u, status, err);
    } else if (check_ids(u, &k, &n)) {
        fail(u, VD_ENOMEM, NULL);
    } else {
        for (size_t j = 0; j < res->n; j++) {
            struct known *p = known_find(k, n, &res->recs[j].id);
            if (p && !res->recs[j].tombstone)
                p->exists = true;
        }
        follow_through(u, k, n);
    }
    free(k);
    if (second(u))
        advance(u);
}

/* Reads ids[n] (their records without vectors), answering done. */
static int read_ids(struct run *u, const struct vd_pid *ids, size_t n, vd_data_read_fn done)
{
    const struct vd_data_ops *d = &vd__api.data;
    if (d->retrieve_async)
        return d->retrieve_async(d->impl, u->c, &u->ro, ids, n, false, done, u, &u->err);
    struct vd_db_record *recs = NULL;
    size_t got = 0;
    int rc = d->retrieve(d->impl, u->c, &u->ro, ids, n, false, &recs, &got, &u->err);
    if (rc == 0) {
        struct vd_data_result res = {.recs = recs, .n = got};
        done(0, NULL, &res, u);
    }
    vd_db_records_free(recs, got);
    return rc;
}

/* Looks the points up for check_done, when an update_vectors follows another operation;
 * otherwise calls check_done's continuation at once. */
static int check_points(struct run *u)
{
    u->checked = true;
    struct known *k;
    size_t n;
    if (check_ids(u, &k, &n))
        return vd_errf(&u->err, VD_ENOMEM, "out of memory");
    int rc = 0;
    struct vd_pid *ids = malloc(sizeof *ids * (n ? n : 1));
    if (!ids) {
        rc = vd_errf(&u->err, VD_ENOMEM, "out of memory");
    } else if (n == 0) {
        second(u); /* nothing to look up: this call is its own completion */
    } else {
        for (size_t j = 0; j < n; j++)
            ids[j] = k[j].id;
        rc = read_ids(u, ids, n, check_done);
    }
    free(ids);
    free(k);
    return rc;
}

/* Starts the write of the current operation; its completion is write_done. */
static int start_write(struct run *u, struct vd__api_upd *op)
{
    const struct vd_data_ops *d = &vd__api.data;
    struct vd_data_req o = u->o;
    const struct vd_pid *ids = op->ids;
    size_t n = op->n_ids;
    const struct vd_filter *f = op->filter;
    if (op->filter && d->scroll_async) {
        ids = u->found; /* found by the run: the write gets the ids */
        n = u->n_found;
        f = NULL;
    }
    o.filter = f ? op->filter_json : NULL;
    if (!f && n == 0 && op->kind != VD__API_UPD_UPSERT && op->kind != VD__API_UPD_UPDATE_VECTORS) {
        write_done(0, NULL, 0, u); /* nothing to write */
        return 0;
    }
    switch (op->kind) {
    case VD__API_UPD_UPSERT:
        return d->upsert(d->impl, u->c, &o, op->pts, op->n_pts, write_done, u, &u->err);
    case VD__API_UPD_DELETE:
        return d->delete_points(d->impl, u->c, &o, ids, n, f, write_done, u, &u->err);
    case VD__API_UPD_SET_PAYLOAD:
    case VD__API_UPD_OVERWRITE_PAYLOAD:
    case VD__API_UPD_DELETE_PAYLOAD:
    case VD__API_UPD_CLEAR_PAYLOAD: {
        static const enum vd_db_payload_op pop[] = {
            [VD__API_UPD_SET_PAYLOAD] = VD_DB_PAYLOAD_SET,
            [VD__API_UPD_OVERWRITE_PAYLOAD] = VD_DB_PAYLOAD_OVERWRITE,
            [VD__API_UPD_DELETE_PAYLOAD] = VD_DB_PAYLOAD_DELETE_KEYS,
            [VD__API_UPD_CLEAR_PAYLOAD] = VD_DB_PAYLOAD_CLEAR,
        };
        return d->payload_edit(d->impl, u->c, &o, pop[op->kind], op->arg, f ? NULL : ids, n, f,
                               write_done, u, &u->err);
    }
    case VD__API_UPD_UPDATE_VECTORS: {
        /* taken from the run first: its completion may start the next operation's before the
         * call returns; the implementation copies them */
        uint8_t **recs = u->recs;
        size_t *lens = u->lens, nr = u->n_recs;
        u->recs = NULL;
        u->lens = NULL;
        u->n_recs = 0;
        int rc = d->apply(d->impl, u->c, &o, (const uint8_t *const *)recs, lens, nr, write_done,
                          u, &u->err);
        recs_free(recs, lens, nr);
        return rc;
    }
    default:
        return vd_errf(&u->err, VD_EINVAL, "this update operation cannot be applied");
    }
}

/* Asks for the current operation's next step. 0: a completion will continue the run. */
static int step(struct run *u)
{
    struct vd__api_upd *op = &u->ops[u->i];
    switch (u->ph) {
    case PH_BEGIN:
        if (!u->checked)
            return check_points(u);
        u->n_found = 0;
        u->more = false;
        if (op->filter && vd__api.data.scroll_async) {
            u->ph = PH_FIND;
            return find_page(u, op);
        }
        if (op->kind == VD__API_UPD_UPDATE_VECTORS) {
            u->ph = PH_READ;
            return read_points(u, op);
        }
        u->ph = PH_WRITE;
        return start_write(u, op);
    case PH_FIND:
        if (u->more)
            return find_page(u, op);
        u->ph = PH_WRITE;
        return start_write(u, op);
    case PH_READ:
        u->ph = PH_WRITE;
        return start_write(u, op);
    default:
        return vd_errf(&u->err, VD_EINVAL, "update run in an impossible state");
    }
}

/* Replies to the run's request and frees it. */
static void finish(struct run *u)
{
    struct vd_http_req *r = u->r;
    if (u->status) {
        if (u->batch && u->failed_at < u->n)
            vd_err_prefix(&u->err, "operations[%zu].%s", u->failed_at,
                          upd_names[u->ops[u->failed_at].kind]);
        vd_http_reply_err(r, &u->err);
        run_free(u);
        return;
    }
    /* Qdrant's "acknowledged" tells a write that did not wait (as vd__api_write_done_for says
     * it): every write is durable on the replicas asked for before the answer all the same, and
     * a database without a cluster answers completed */
    const char *word = vd__api.cluster && !u->o.wait ? "acknowledged" : "completed";
    struct vd_buf b;
    vd_buf_init(&b);
    if (u->batch)
        vd_buf_puts(&b, "[");
    for (size_t k = 0; k < u->n; k++) {
        if (k)
            vd_buf_puts(&b, ",");
        vd__api_update_result_json(&b, u->op_ids[k], word);
    }
    if (u->batch)
        vd_buf_puts(&b, "]");
    vd__api_reply_buf(r, &b);
    run_free(u);
}

/* Runs steps until one waits for its completion (which calls this again) or the run ends. */
static void advance(struct run *u)
{
    for (;;) {
        if (u->status || u->i == u->n) {
            finish(u);
            return;
        }
        atomic_store(&u->arrivals, 0);
        int rc = step(u);
        if (rc) {
            /* the completion will not run: this thread is its second party */
            fail(u, rc, &u->err);
            continue;
        }
        if (!second(u))
            return;
    }
}

/* ---- the routes ------------------------------------------------------------------------------ */

/* Qdrant's `ordering` (weak, medium or strong): accepted, and met by every write alike. */
static int check_ordering(struct vd_http_req *r, struct vd_err *err)
{
    const char *v = vd_http_query(r, "ordering");
    if (!v || !strcmp(v, "weak") || !strcmp(v, "medium") || !strcmp(v, "strong"))
        return 0;
    return vd_errf(err, VD_EINVAL,
                   "query parameter 'ordering': '%.64s' is not allowed; expected 'weak', "
                   "'medium' or 'strong'",
                   v);
}

/* The level of the reads a run makes in a cluster (0: a quorum): for a batch, at least enough
 * replicas that every read overlaps the W replicas each earlier write of the batch was
 * acknowledged by. A single operation reads at a quorum, as it always did: nothing before it in
 * the request needs seeing, and a write at a low W keeps working with replicas down. */
static unsigned read_level(const struct run *u, const struct vd_coll_schema *s,
                           const struct vd_data_req *o)
{
    if (!vd__api.cluster || u->n < 2)
        return 0;
    unsigned rf = s->replication_factor ? s->replication_factor : 1;
    unsigned w = o->consistency ? o->consistency : s->write_consistency_factor;
    unsigned q = rf / 2 + 1;
    if (w == 0 || w > rf)
        w = q;
    return rf - w + 1 > q ? rf - w + 1 : q;
}

/* A write endpoint: kind for one operation (the body is the operation), VD__API_UPD_N for the
 * batch. */
static void update(struct vd_http_req *r, enum vd__api_upd_kind kind)
{
    if (vd__api_write_refused(r))
        return;
    cJSON *body;
    struct vd_coll *c = vd__api_coll_body(r, false, &body);
    if (!c)
        return;
    struct vd_err e;
    struct run *u = calloc(1, sizeof *u);
    if (!u) {
        cJSON_Delete(body);
        vd_db_coll_put(c);
        vd_http_reply_error(r, 500, "out of memory");
        return;
    }
    u->r = r;
    u->c = c;
    u->body = body;
    u->batch = kind == VD__API_UPD_N;
    vd_db_coll_schema_copy(c, &u->s);
    int rc = vd__api_data_req(r, c, &u->o, &e);
    if (rc == 0)
        rc = check_ordering(r, &e);
    if (rc == 0 && u->batch) {
        rc = parse_batch_ops(body, c, &u->ops, &u->n, &e);
    } else if (rc == 0) {
        if (!(u->ops = calloc(1, sizeof *u->ops)))
            rc = vd_errf(&e, VD_ENOMEM, "out of memory");
        else if ((rc = vd__api_upd_parse(kind, body, c, u->ops, &e)) == 0)
            u->n = 1;
    }
    if (rc == 0 && !(u->op_ids = calloc(u->n ? u->n : 1, sizeof *u->op_ids)))
        rc = vd_errf(&e, VD_ENOMEM, "out of memory");
    if (rc) {
        vd_http_reply_err(r, &e);
        run_free(u);
        return;
    }
    u->o.read_consistency = read_level(u, &u->s, &u->o);
    u->ro = u->o;
    u->ro.consistency = u->o.read_consistency;
    advance(u); /* u is the run's from here on */
}

static void upsert(struct vd_http_req *r, void *ctx)
{
    update(r, VD__API_UPD_UPSERT);
}
static void delete_points(struct vd_http_req *r, void *ctx)
{
    update(r, VD__API_UPD_DELETE);
}
static void payload_set(struct vd_http_req *r, void *ctx)
{
    update(r, VD__API_UPD_SET_PAYLOAD);
}
static void payload_overwrite(struct vd_http_req *r, void *ctx)
{
    update(r, VD__API_UPD_OVERWRITE_PAYLOAD);
}
static void payload_delete(struct vd_http_req *r, void *ctx)
{
    update(r, VD__API_UPD_DELETE_PAYLOAD);
}
static void payload_clear(struct vd_http_req *r, void *ctx)
{
    update(r, VD__API_UPD_CLEAR_PAYLOAD);
}
static void vectors_update(struct vd_http_req *r, void *ctx)
{
    update(r, VD__API_UPD_UPDATE_VECTORS);
}
static void vectors_delete(struct vd_http_req *r, void *ctx)
{
    update(r, VD__API_UPD_DELETE_VECTORS);
}
static void batch(struct vd_http_req *r, void *ctx)
{
    update(r, VD__API_UPD_N);
}

int vd__api_update_routes(struct vd_http *h)
{
    static const struct {
        const char *method, *pattern;
        vd_http_handler fn;
    } t[] = {
        {"PUT", "/collections/{name}/points", upsert},
        {"POST", "/collections/{name}/points/delete", delete_points},
        {"POST", "/collections/{name}/points/payload", payload_set},
        {"PUT", "/collections/{name}/points/payload", payload_overwrite},
        {"POST", "/collections/{name}/points/payload/delete", payload_delete},
        {"POST", "/collections/{name}/points/payload/clear", payload_clear},
        {"PUT", "/collections/{name}/points/vectors", vectors_update},
        {"POST", "/collections/{name}/points/vectors/delete", vectors_delete},
        {"POST", "/collections/{name}/points/batch", batch},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        int rc = vd_http_route(h, t[i].method, t[i].pattern, VD_ROLE_RW, t[i].fn, NULL);
        if (rc)
            return rc;
    }
    return 0;
}
