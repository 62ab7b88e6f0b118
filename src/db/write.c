/* The write path: validate, commit durably through the storage writer (group commit), then apply
 * to the in-memory index and payload columns in commit order, then tell the caller. */
#include <stdlib.h>
#include <string.h>

#include "db_int.h"
#include "vectord/json.h"
#include "vectord/record.h"

struct edit;

struct wreq {
    struct vd_coll *c;
    struct edit *ed; /* a round of a payload edit: the edit goes on when this write is done */
    struct vd_wbatch b;
    struct vd_wop *ops;
    size_t n;
    float *vecs;    /* n * dim: the vector of each UPSERT and live APPLY op */
    uint8_t *recs;  /* APPLY: the records, back to back (the store reads them until done) */
    bool payload_only; /* payload edits: the vector is the stored one, the index keeps it */
    char **texts;   /* payload JSON text per op, or NULL */
    uint8_t **bins; /* binary payload per op (ownership moves to the payload map) */
    size_t *bin_lens;
    vd_db_done_fn done;
    void *ctx;
};

static void wreq_free(struct wreq *w)
{
    for (size_t i = 0; i < w->n; i++) {
        if (w->texts)
            free(w->texts[i]);
        if (w->bins)
            free(w->bins[i]);
    }
    free(w->texts);
    free(w->bins);
    free(w->bin_lens);
    free(w->vecs);
    free(w->recs);
    free(w->ops);
    vd__db_coll_unref(w->c);
    free(w);
}

static struct wreq *wreq_new(struct vd_coll *c, size_t n, bool payloads, vd_db_done_fn done,
                             void *ctx)
{
    struct wreq *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->ops = calloc(n ? n : 1, sizeof *w->ops);
    if (payloads) {
        w->texts = calloc(n ? n : 1, sizeof *w->texts);
        w->bins = calloc(n ? n : 1, sizeof *w->bins);
        w->bin_lens = calloc(n ? n : 1, sizeof *w->bin_lens);
    }
    if (!w->ops || (payloads && (!w->texts || !w->bins || !w->bin_lens))) {
        free(w->ops);
        free(w->texts);
        free(w->bins);
        free(w->bin_lens);
        free(w);
        return NULL;
    }
    atomic_fetch_add(&c->refs, 1);
    w->c = c;
    w->n = n;
    w->done = done;
    w->ctx = ctx;
    return w;
}

/* A request of n ops with room for their payloads and n vectors, or NULL with err set. */
static struct wreq *wreq_with_vecs(struct vd_coll *c, size_t n, vd_db_done_fn done, void *ctx,
                                   struct vd_err *err)
{
    struct wreq *w = wreq_new(c, n, true, done, ctx);
    if (w && !(w->vecs = malloc(sizeof(float) * c->schema.dim * (n ? n : 1)))) {
        wreq_free(w);
        w = NULL;
    }
    if (!w)
        vd_errf(err, VD_ENOMEM, "out of memory for %zu points", n);
    return w;
}

/* Replaces a point's payload in the map and the payload indexes (plock held for writing); takes
 * bin on success. VD_ENOMEM changes nothing. */
int vd__db_set_payload(struct vd_coll *c, const struct vd_pid *id, uint8_t *bin, uint32_t len)
{
    const struct pmap_entry *e = pmap_get(&c->pm, id);
    if (e) {
        /* the old payload is freed by pmap_set: take its values out of the indexes first */
        pidx_point_remove(&c->px, e->slot, e->bin, e->len);
        uint32_t slot = e->slot;
        pmap_set(&c->pm, id, bin, len); /* replacing never allocates */
        pidx_point_add(&c->px, slot, bin, len);
        return 0;
    }
    int rc = pmap_set(&c->pm, id, bin, len);
    if (rc)
        return rc;
    pidx_point_add(&c->px, pmap_get(&c->pm, id)->slot, bin, len);
    return 0;
}

void vd__db_drop_payload(struct vd_coll *c, const struct vd_pid *id)
{
    const struct pmap_entry *e = pmap_get(&c->pm, id);
    if (e)
        pidx_point_remove(&c->px, e->slot, e->bin, e->len);
    pmap_del(&c->pm, id);
}

static void edit_continue(struct wreq *w, int status, const struct vd_err *err, uint64_t last);

/* Runs on the storage writer thread, in commit order: so the index sees writes in the same order
 * storage does, and a later write to an id never loses to an earlier one. */
static void write_done(struct vd_wbatch *b, int status, void *arg)
{
    struct wreq *w = arg;
    struct vd_coll *c = w->c;
    uint64_t last = 0;
    if (status == 0 && !atomic_load(&c->dropped)) {
        pthread_rwlock_wrlock(&c->plock);
        for (size_t i = 0; i < w->n; i++) {
            struct vd_wop *op = &w->ops[i];
            if (op->seq > last)
                last = op->seq;
            if (!op->applied)
                continue;
            bool live = op->kind == VD_WOP_UPSERT || (op->kind == VD_WOP_APPLY && op->vec);
            if (live && w->payload_only && pmap_get(&c->pm, &op->id)) {
                /* same vector: only the payload changes */
                if (vd__db_set_payload(c, &op->id, w->bins[i], (uint32_t)w->bin_lens[i]) == 0) {
                    w->bins[i] = NULL;
                } else {
                    vd_log_error("collection '%s': out of memory applying a payload edit; "
                                 "catching up from the change log",
                                 c->schema.name);
                    vd__db_note_lag(c, op->seq);
                }
                continue;
            }
            switch (live ? VD_WOP_UPSERT : VD_WOP_DELETE) {
            case VD_WOP_UPSERT:
                /* (a payload edit comes here only when an earlier write of its point failed
                 * to reach the payload columns: the edit wrote over the live version it read) */
                if (vd_index_upsert(c->ix, &op->id, op->vec, op->seq) ||
                    vd__db_set_payload(c, &op->id, w->bins ? w->bins[i] : NULL,
                                       w->bin_lens ? (uint32_t)w->bin_lens[i] : 0)) {
                    /* the write is durable: it must become searchable without a restart */
                    vd_log_error("collection '%s': out of memory applying a write to the index; "
                                 "catching up from the change log",
                                 c->schema.name);
                    vd__db_note_lag(c, op->seq);
                    break;
                }
                if (w->bins)
                    w->bins[i] = NULL; /* the map owns it now */
                break;
            case VD_WOP_DELETE:
                vd_index_delete(c->ix, &op->id, op->seq);
                vd__db_drop_payload(c, &op->id);
                break;
            default:
                break;
            }
        }
        pthread_rwlock_unlock(&c->plock);
        /* completions run in commit order, so every change up to `last` has been through one */
        if (last > atomic_load(&c->db->applied_through))
            atomic_store(&c->db->applied_through, last);
        vd__db_kick(c->db);
    }
    if (status == 0 && atomic_load(&c->dropped))
        status = vd_errf(&b->err, VD_ENOTFOUND, "collection '%s' was deleted", c->schema.name);
    if (w->ed)
        edit_continue(w, status, &b->err, last);
    else
        w->done(status, status ? &b->err : NULL, last, w->ctx);
    wreq_free(w);
}

static int submit(struct wreq *w, struct vd_err *err)
{
    w->b.ops = w->ops;
    w->b.n = w->n;
    w->b.done = write_done;
    w->b.ctx = w;
    int rc = vd_store_submit(w->c->db->store, &w->b);
    if (rc) {
        wreq_free(w);
        return vd_errf(err, rc, "cannot write: %s", vd_strerror(rc));
    }
    return 0;
}

/* Serialises and encodes one payload; NULL payload = none. */
static int prepare_payload(struct wreq *w, size_t i, const cJSON *payload, struct vd_err *err)
{
    if (!payload)
        return 0;
    struct vd_buf b;
    vd_buf_init(&b);
    vd_buf_json(&b, payload);
    if (!vd_buf_ok(&b)) {
        vd_buf_release(&b);
        return vd_errf(err, VD_ENOMEM, "out of memory");
    }
    size_t len;
    w->texts[i] = vd_buf_steal(&b, &len);
    w->ops[i].payload = w->texts[i];
    w->ops[i].payload_len = len;
    if (vd_payload_encode(payload, &w->bins[i], &w->bin_lens[i]))
        return vd_errf(err, VD_ENOMEM, "out of memory");
    return 0;
}

int vd_db_prepare_vector(const struct vd_coll *c, const float *src, float *dst,
                         struct vd_err *err)
{
    uint32_t dim = c->schema.dim;
    memcpy(dst, src, sizeof(float) * dim);
    if (c->schema.metric == VD_METRIC_COSINE && vd_vec_normalize(dst, dim))
        return vd_errf(err, VD_EINVAL, "a zero vector cannot be used with Cosine distance");
    return 0;
}

int vd_db_upsert(struct vd_coll *c, const struct vd_db_point *pts, size_t n, vd_db_done_fn done,
                 void *ctx, struct vd_err *err)
{
    uint32_t dim = c->schema.dim;
    if (n == 0)
        return vd_errf(err, VD_EINVAL, "no points given");
    struct wreq *w = wreq_with_vecs(c, n, done, ctx, err);
    if (!w)
        return VD_ENOMEM;
    int rc;
    for (size_t i = 0; i < n; i++) {
        float *v = w->vecs + i * dim;
        if ((rc = vd_db_prepare_vector(c, pts[i].vec, v, err))) {
            vd_err_prefix(err, "points[%zu]", i);
            goto out_free;
        }
        struct vd_wop *op = &w->ops[i];
        op->kind = VD_WOP_UPSERT;
        op->incarnation = c->schema.incarnation;
        op->id = pts[i].id;
        op->version = vd_hlc_now();
        op->node = c->db->node_id;
        op->vec = v;
        op->dim = dim;
        if ((rc = prepare_payload(w, i, pts[i].payload, err)))
            goto out_free;
    }
    return submit(w, err);
out_free:
    wreq_free(w);
    return rc;
}

int vd_db_delete(struct vd_coll *c, const struct vd_pid *ids, size_t n, vd_db_done_fn done,
                 void *ctx, struct vd_err *err)
{
    struct wreq *w = wreq_new(c, n, false, done, ctx);
    if (!w)
        return vd_errf(err, VD_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        struct vd_wop *op = &w->ops[i];
        op->kind = VD_WOP_DELETE;
        op->incarnation = c->schema.incarnation;
        op->id = ids[i];
        op->version = vd_hlc_now();
        op->node = c->db->node_id;
    }
    return submit(w, err);
}

/* Ids of live points matching f (all when f is NULL), in no particular order. */
static int matching_ids(struct vd_coll *c, const struct vd_filter *f, struct vd_pid **out,
                        size_t *n)
{
    pthread_rwlock_rdlock(&c->plock);
    struct vd_pid *v = malloc(sizeof *v * (c->pm.count ? c->pm.count : 1));
    size_t k = 0;
    struct pidx_bits *bits = NULL;
    bool exact;
    if (f)
        pidx_plan(&c->px, &c->pm, f, &bits, &exact);
    bool planned = bits != NULL;
    if (bits) {
        /* only the points the payload indexes leave are read */
        if (!exact)
            pidx_bits_refine(bits, &c->pm, f);
        for (size_t i = 0; v && i < bits->nw; i++)
            for (uint64_t w = bits->w[i]; w; w &= w - 1) {
                uint32_t s = (uint32_t)(i * 64 + (size_t)__builtin_ctzll(w));
                if (s < c->pm.nslots && c->pm.sid[s].type)
                    v[k++] = c->pm.sid[s];
            }
        pidx_bits_free(bits);
    }
    for (size_t i = 0; v && !planned && i < c->pm.cap; i++) {
        const struct pmap_entry *e = &c->pm.slots[i];
        if (e->used && (!f || vd_filter_match_bin(f, &e->id, e->bin, e->len)))
            v[k++] = e->id;
    }
    pthread_rwlock_unlock(&c->plock);
    if (!v)
        return VD_ENOMEM;
    *out = v;
    *n = k;
    return 0;
}

static void noop_done_now(vd_db_done_fn done, void *ctx)
{
    done(0, NULL, 0, ctx);
}

int vd_db_delete_filter(struct vd_coll *c, const struct vd_filter *f, vd_db_done_fn done, void *ctx,
                        struct vd_err *err)
{
    struct vd_pid *ids;
    size_t n;
    if (matching_ids(c, f, &ids, &n))
        return vd_errf(err, VD_ENOMEM, "out of memory");
    int rc;
    if (n == 0) {
        noop_done_now(done, ctx);
        rc = 0;
    } else {
        rc = vd_db_delete(c, ids, n, done, ctx, err);
    }
    free(ids);
    return rc;
}

cJSON *vd_db_payload_edited(enum vd_db_payload_op op, const cJSON *arg, const char *text,
                            size_t len, struct vd_err *err)
{
    cJSON *cur = NULL;
    if (op != VD_DB_PAYLOAD_OVERWRITE && op != VD_DB_PAYLOAD_CLEAR && text && len) {
        if (vd_json_parse(text, len, VD_JSON_MAX_DEPTH, &cur, err))
            return NULL;
    }
    if (!cur)
        cur = cJSON_CreateObject();
    if (!cur)
        goto oom;
    const cJSON *it;
    switch (op) {
    case VD_DB_PAYLOAD_SET:
        cJSON_ArrayForEach(it, arg)
        {
            cJSON *dup = cJSON_Duplicate(it, true);
            if (!dup)
                goto oom;
            cJSON_DeleteItemFromObjectCaseSensitive(cur, it->string);
            cJSON_AddItemToObject(cur, it->string, dup);
        }
        break;
    case VD_DB_PAYLOAD_OVERWRITE:
        cJSON_Delete(cur);
        cur = cJSON_Duplicate(arg, true);
        if (!cur)
            goto oom;
        break;
    case VD_DB_PAYLOAD_DELETE_KEYS:
        cJSON_ArrayForEach(it, arg) cJSON_DeleteItemFromObjectCaseSensitive(cur, it->valuestring);
        break;
    case VD_DB_PAYLOAD_CLEAR:
        break;
    }
    return cur;
oom:
    cJSON_Delete(cur);
    vd_errf(err, VD_ENOMEM, "out of memory");
    return NULL;
}

/* A payload edit in flight. Each round reads the points still to edit and writes each one whole
 * on the condition that the store still holds the version it read (vd_wop.if_version): a point
 * another write changed in between comes back as a conflict and is read again in the next
 * round, where one deleted meanwhile is skipped like any absent id. So an edit never brings a
 * deleted point back and never undoes a write it did not see. Rounds after the first run on the
 * storage writer thread, in the completion of the round before. */
struct edit {
    struct vd_coll *c; /* referenced */
    enum vd_db_payload_op op;
    cJSON *arg;      /* owned copy: later rounds run after the caller has returned */
    unsigned rounds; /* rounds done */
    uint64_t last;   /* highest change counter the rounds wrote */
    vd_db_done_fn done;
    void *ctx;
};

/* Rounds before an edit whose points keep changing under it gives up (VD_EBUSY). */
#define EDIT_ROUNDS_MAX 64

static vd_db_test_fn _Atomic edit_read_hook;
static void *edit_read_hook_arg;

void vd_db_test_after_edit_read(vd_db_test_fn fn, void *arg)
{
    edit_read_hook_arg = arg;
    atomic_store(&edit_read_hook, fn);
}

static void edit_free(struct edit *ed)
{
    vd__db_coll_unref(ed->c);
    cJSON_Delete(ed->arg);
    free(ed);
}

static void edit_finish(struct edit *ed, int status, const struct vd_err *err)
{
    ed->done(status, status ? err : NULL, status ? 0 : ed->last, ed->ctx);
    edit_free(ed);
}

/* A version newer than `read` from this node's clock: the conditional write of an edit must
 * win over the version it replaces even when that came from a node whose clock is ahead. */
static uint64_t version_after(uint64_t read)
{
    uint64_t v = vd_hlc_now();
    if (v <= read) {
        vd_hlc_observe(read);
        v = vd_hlc_now();
    }
    return v;
}

/* One round: reads ids[n], submits the edited records of those live now, or finishes the edit
 * when none is. On an error nothing was submitted and ed still belongs to the caller. */
static int edit_round(struct edit *ed, const struct vd_pid *ids, size_t n, struct vd_err *err)
{
    struct vd_coll *c = ed->c;
    uint32_t dim = c->schema.dim;
    int rc;
    struct wreq *w = wreq_with_vecs(c, n, NULL, NULL, err);
    if (!w)
        return VD_ENOMEM;
    w->payload_only = true;
    struct vd_rtxn *t;
    if ((rc = vd_store_read_begin(c->db->store, &t))) {
        vd_errf(err, rc, "cannot read: %s", vd_strerror(rc));
        goto out_free;
    }
    /* Each edited point is written whole: the stored vector, the edited payload, a new
     * version. The store never combines a write with what it holds, so every copy of one
     * version is the same record. */
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        struct vd_point_view v;
        if (vd_store_point_get(t, c->schema.incarnation, &ids[i], &v) || v.tombstone ||
            v.dim != dim)
            continue; /* Qdrant skips ids that do not exist */
        cJSON *np = vd_db_payload_edited(ed->op, ed->arg, v.payload, v.payload_len, err);
        if (!np) {
            rc = err ? err->code : VD_ENOMEM;
            vd_store_read_end(t);
            goto out_free;
        }
        struct vd_wop *o = &w->ops[k];
        float *vec = w->vecs + k * dim;
        memcpy(vec, v.vec, sizeof(float) * dim);
        vd_store_read_release_views(t);
        o->kind = VD_WOP_UPSERT;
        o->incarnation = c->schema.incarnation;
        o->id = ids[i];
        o->if_version = true;
        o->expect = (struct vd_version){v.version, v.node};
        o->version = version_after(v.version);
        o->node = c->db->node_id;
        o->vec = vec;
        o->dim = dim;
        rc = prepare_payload(w, k, np, err);
        cJSON_Delete(np);
        if (rc) {
            vd_store_read_end(t);
            goto out_free;
        }
        k++;
    }
    vd_store_read_end(t);
    vd_db_test_fn hook = atomic_exchange(&edit_read_hook, NULL);
    if (hook)
        hook(edit_read_hook_arg);
    if (k == 0) {
        wreq_free(w);
        edit_finish(ed, 0, NULL);
        return 0;
    }
    w->n = k;
    w->ed = ed;
    return submit(w, err);
out_free:
    wreq_free(w);
    return rc;
}

/* The completion of an edit round (writer thread): the points written under a version other
 * than the one read are read and edited again; the edit finishes when none is left. */
static void edit_continue(struct wreq *w, int status, const struct vd_err *err, uint64_t last)
{
    struct edit *ed = w->ed;
    w->ed = NULL;
    if (status) {
        edit_finish(ed, status, err);
        return;
    }
    if (last > ed->last)
        ed->last = last;
    size_t nc = 0;
    for (size_t i = 0; i < w->n; i++)
        nc += w->ops[i].conflict;
    if (nc == 0) {
        edit_finish(ed, 0, NULL);
        return;
    }
    struct vd_err e;
    vd_err_clear(&e);
    struct vd_pid *again = NULL;
    int rc;
    if (++ed->rounds >= EDIT_ROUNDS_MAX) {
        rc = vd_errf(&e, VD_EBUSY,
                     "payload edit: %zu points were changed by other writes %u times while "
                     "being edited; retry",
                     nc, ed->rounds);
    } else if (!(again = malloc(nc * sizeof *again))) {
        rc = vd_errf(&e, VD_ENOMEM, "out of memory");
    } else {
        size_t k = 0;
        for (size_t i = 0; i < w->n; i++)
            if (w->ops[i].conflict)
                again[k++] = w->ops[i].id;
        rc = edit_round(ed, again, nc, &e);
    }
    free(again);
    if (rc)
        edit_finish(ed, rc, &e);
}

int vd_db_payload_edit(struct vd_coll *c, enum vd_db_payload_op op, const cJSON *arg,
                       const struct vd_pid *ids, size_t n, const struct vd_filter *f,
                       vd_db_done_fn done, void *ctx, struct vd_err *err)
{
    struct vd_pid *found = NULL;
    int rc;
    if (!ids) {
        if (matching_ids(c, f, &found, &n))
            return vd_errf(err, VD_ENOMEM, "out of memory");
        ids = found;
    }
    struct edit *ed = calloc(1, sizeof *ed);
    if (!ed || (arg && !(ed->arg = cJSON_Duplicate(arg, true)))) {
        free(ed);
        free(found);
        return vd_errf(err, VD_ENOMEM, "out of memory");
    }
    atomic_fetch_add(&c->refs, 1);
    ed->c = c;
    ed->op = op;
    ed->done = done;
    ed->ctx = ctx;
    if ((rc = edit_round(ed, ids, n, err)))
        edit_free(ed);
    free(found);
    return rc;
}

int vd_db_apply(struct vd_coll *c, const uint8_t *const *recs, const size_t *lens, size_t n,
                vd_db_done_fn done, void *ctx, struct vd_err *err)
{
    uint32_t dim = c->schema.dim;
    if (n == 0)
        return vd_errf(err, VD_EINVAL, "no records given");
    struct wreq *w = wreq_with_vecs(c, n, done, ctx, err);
    if (!w)
        return VD_ENOMEM;
    int rc;
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += lens[i];
    if (!(w->recs = malloc(total ? total : 1))) {
        rc = vd_errf(err, VD_ENOMEM, "out of memory for %zu records", n);
        goto out_free;
    }
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        struct vd_record r;
        struct vd_rvec vecs[VD_RECORD_MAX_VECTORS];
        uint8_t *b = w->recs + off;
        memcpy(b, recs[i], lens[i]);
        off += lens[i];
        if (vd_record_decode(b, lens[i], &r, vecs)) {
            rc = vd_errf(err, VD_EINVAL, "records[%zu]: malformed point record", i);
            goto out_free;
        }
        if (r.incarnation != c->schema.incarnation) {
            rc = vd_errf(err, VD_EINVAL, "records[%zu]: incarnation %llu is not the collection's",
                         i, (unsigned long long)r.incarnation);
            goto out_free;
        }
        struct vd_wop *op = &w->ops[i];
        op->kind = VD_WOP_APPLY;
        op->rec = b;
        op->rec_len = lens[i];
        op->id = r.id; /* the store fills these too; set now for the index */
        if (r.tombstone)
            continue;
        const struct vd_rvec *u = vd_record_vector(&r, "", 0);
        if (!u || u->kind != VD_RVEC_DENSE || u->n != dim) {
            rc = vd_errf(err, VD_EINVAL,
                         "records[%zu]: Vector dimension error: expected dim: %u, got %u", i, dim,
                         u ? u->n : 0);
            goto out_free;
        }
        float *v = w->vecs + i * dim;
        vd_record_copy_values(u, v);
        op->vec = v;
        op->dim = dim;
        if (r.payload_len) {
            cJSON *j = NULL;
            if (vd_json_parse(r.payload, r.payload_len, VD_JSON_MAX_DEPTH, &j, err) == 0 &&
                !cJSON_IsObject(j)) {
                cJSON_Delete(j);
                j = NULL;
                vd_errf(err, VD_EINVAL, "payload is not a JSON object");
            }
            if (!j) {
                vd_err_prefix(err, "records[%zu]", i);
                rc = VD_EINVAL;
                goto out_free;
            }
            rc = vd_payload_encode(j, &w->bins[i], &w->bin_lens[i]);
            cJSON_Delete(j);
            if (rc) {
                rc = vd_errf(err, rc, "records[%zu]: payload: %s", i, vd_strerror(rc));
                goto out_free;
            }
        }
    }
    return submit(w, err);
out_free:
    wreq_free(w);
    return rc;
}

int vd_db_forget(struct vd_coll *c, const struct vd_pid *ids, const struct vd_version *versions,
                 size_t n, vd_db_done_fn done, void *ctx, struct vd_err *err)
{
    if (n == 0)
        return vd_errf(err, VD_EINVAL, "no points given");
    struct wreq *w = wreq_new(c, n, false, done, ctx);
    if (!w)
        return vd_errf(err, VD_ENOMEM, "out of memory for %zu points", n);
    for (size_t i = 0; i < n; i++)
        w->ops[i] = (struct vd_wop){.kind = VD_WOP_FORGET,
                                    .incarnation = c->schema.incarnation,
                                    .id = ids[i],
                                    .version = versions[i].hlc,
                                    .node = versions[i].node};
    return submit(w, err);
}
