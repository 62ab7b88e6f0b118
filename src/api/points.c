/* /collections/{name}/points: retrieve, get by id, scroll, count (the writes: updates.c). */
#include <stdlib.h>
#include <string.h>

#include "api_int.h"

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
        {"POST", "/collections/{name}/points", VD_ROLE_RO, retrieve},
        {"GET", "/collections/{name}/points/{id}", VD_ROLE_RO, get_one},
        {"POST", "/collections/{name}/points/scroll", VD_ROLE_RO, scroll},
        {"POST", "/collections/{name}/points/count", VD_ROLE_RO, count},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        int rc = vd_http_route(h, t[i].method, t[i].pattern, t[i].role, t[i].fn, NULL);
        if (rc)
            return rc;
    }
    return vd__api_update_routes(h);
}
