/* Declaring and dropping payload indexes: the declaration is committed through the storage writer
 * like any write, and the in-memory index is built or dropped in its completion, which runs in
 * commit order with the point writes: an index built there has seen exactly the writes committed
 * before it, and every later write maintains it. */
#include <stdlib.h>
#include <string.h>

#include "db_int.h"

struct pindex_op {
    struct vd_coll *c;
    struct vd_wop op;
    struct vd_wbatch b;
    char *field;
    enum vd_db_pindex_type type;
    vd_db_done_fn done;
    void *ctx;
};

static void pindex_op_free(struct pindex_op *p)
{
    vd__db_coll_unref(p->c);
    free(p->field);
    free(p);
}

static bool has_same(struct vd_coll *c, const char *field, enum vd_db_pindex_type type)
{
    for (size_t i = 0; i < c->px.n; i++)
        if (!strcmp(pidx_field_name(c->px.v[i]), field))
            return pidx_field_type(c->px.v[i]) == type;
    return false;
}

static void pindex_done(struct vd_wbatch *b, int status, void *arg)
{
    struct pindex_op *p = arg;
    struct vd_coll *c = p->c;
    if (status == 0 && atomic_load(&c->dropped))
        status = vd_errf(&b->err, VD_ENOTFOUND, "collection '%s' was deleted", c->schema.name);
    if (status == 0) {
        pthread_rwlock_wrlock(&c->plock);
        if (p->op.kind == VD_WOP_PINDEX_DELETE) {
            pidx_drop(&c->px, p->field);
        } else if (!has_same(c, p->field, p->type)) {
            /* Searches wait while the index is built; the build is one pass over the payloads
             * in memory (tens of milliseconds per 100k points). */
            uint64_t t0 = vd_mono_ns();
            struct pidx_field *f;
            status = pidx_build(p->field, p->type, &c->pm, &f, &b->err);
            if (status == 0 && (status = pidx_put(&c->px, f))) {
                pidx_field_free(f);
                vd_errf(&b->err, status, "out of memory");
            }
            if (status == 0)
                vd_log_info("collection '%s': payload index '%s' (%s) built over %zu points in "
                            "%.1f ms",
                            c->schema.name, p->field, vd_db_pindex_type_name(p->type), c->pm.count,
                            (double)(vd_mono_ns() - t0) / 1e6);
        }
        pthread_rwlock_unlock(&c->plock);
    }
    p->done(status, status ? &b->err : NULL, vd_store_last_seq(c->db->store), p->ctx);
    pindex_op_free(p);
}

static int submit(struct vd_coll *c, enum vd_wop_kind kind, const char *field,
                  enum vd_db_pindex_type type, vd_db_done_fn done, void *ctx, struct vd_err *err)
{
    struct pindex_op *p = calloc(1, sizeof *p);
    if (!p || !(p->field = strdup(field))) {
        free(p);
        return vd_errf(err, VD_ENOMEM, "out of memory");
    }
    atomic_fetch_add(&c->refs, 1);
    p->c = c;
    p->type = type;
    p->done = done;
    p->ctx = ctx;
    p->op.kind = kind;
    p->op.incarnation = c->schema.incarnation;
    p->op.field = p->field;
    p->op.field_type = (uint8_t)type;
    p->b.ops = &p->op;
    p->b.n = 1;
    p->b.done = pindex_done;
    p->b.ctx = p;
    int rc = vd_store_submit(c->db->store, &p->b);
    if (rc) {
        pindex_op_free(p);
        return vd_errf(err, rc, "cannot write: %s", vd_strerror(rc));
    }
    return 0;
}

int vd_db_pindex_check_field(const char *field, struct vd_err *err)
{
    size_t n = field ? strlen(field) : 0;
    if (n == 0)
        return vd_errf(err, VD_EINVAL, "field_name: expected a non-empty string");
    if (n > VD_STORE_PINDEX_NAME_MAX)
        return vd_errf(err, VD_ERANGE, "field_name: at most %d bytes, got %zu",
                       VD_STORE_PINDEX_NAME_MAX, n);
    struct vd_filter_key *k;
    int rc = vd_filter_key_parse(field, &k, err);
    if (rc) {
        vd_err_prefix(err, "field_name");
        return rc;
    }
    vd_filter_key_free(k);
    return 0;
}

int vd_db_pindex_create(struct vd_coll *c, const char *field, enum vd_db_pindex_type type,
                        vd_db_done_fn done, void *ctx, struct vd_err *err)
{
    if (!vd_db_pindex_type_name(type))
        return vd_errf(err, VD_EINVAL, "unknown payload index type %d", (int)type);
    int rc = vd_db_pindex_check_field(field, err);
    if (rc)
        return rc;
    return submit(c, VD_WOP_PINDEX_PUT, field, type, done, ctx, err);
}

int vd_db_pindex_delete(struct vd_coll *c, const char *field, vd_db_done_fn done, void *ctx,
                        struct vd_err *err)
{
    pthread_rwlock_rdlock(&c->plock);
    bool found = false;
    for (size_t i = 0; i < c->px.n && !found; i++)
        found = !strcmp(pidx_field_name(c->px.v[i]), field);
    pthread_rwlock_unlock(&c->plock);
    if (!found)
        return vd_errf(err, VD_ENOTFOUND, "collection '%s' has no payload index on '%s'",
                       c->schema.name, field);
    return submit(c, VD_WOP_PINDEX_DELETE, field, 0, done, ctx, err);
}

static int info_cmp(const void *a, const void *b)
{
    return strcmp(((const struct vd_db_pindex_info *)a)->field,
                  ((const struct vd_db_pindex_info *)b)->field);
}

int vd_db_pindex_list(struct vd_coll *c, struct vd_db_pindex_info **out, size_t *n)
{
    pthread_rwlock_rdlock(&c->plock);
    size_t k = c->px.n;
    struct vd_db_pindex_info *v = calloc(k ? k : 1, sizeof *v);
    size_t got = 0;
    for (size_t i = 0; v && i < k; i++, got++) {
        const struct pidx_field *f = c->px.v[i];
        if (!(v[i].field = strdup(pidx_field_name(f))))
            break;
        v[i].type = pidx_field_type(f);
        v[i].points = pidx_field_points(f);
    }
    pthread_rwlock_unlock(&c->plock);
    if (!v || got < k) {
        vd_db_pindex_list_free(v, got);
        return VD_ENOMEM;
    }
    qsort(v, k, sizeof *v, info_cmp);
    *out = v;
    *n = k;
    return 0;
}

void vd_db_pindex_list_free(struct vd_db_pindex_info *v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        free(v[i].field);
    free(v);
}
