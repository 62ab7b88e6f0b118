/*
 * Reconciliation: the local database follows the state machine. After entries are applied, the
 * node compares its collections (then their payload indexes) with the state machine's and makes
 * the changes one at a time through the database's own write path.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "node_int.h"

/* ---- reconciliation of the local database ------------------------------------------------- */

/* Runs on the storage writer thread: hand the outcome to the loop. */
static void rec_done(int status, const struct vd_err *err, uint64_t op_id, void *ctx)
{
    struct vd_cluster *c = ctx;
    struct ev *e = calloc(1, sizeof *e);
    if (e) {
        e->status = status;
        if (status && err)
            snprintf(e->msg, sizeof e->msg, "%s", err->msg);
    }
    pthread_mutex_lock(&c->mu);
    if (e) {
        if (c->q_tail)
            c->q_tail->next = e;
        else
            c->q_head = e;
        c->q_tail = e;
    }
    c->db_inflight--;
    pthread_cond_broadcast(&c->inflight_cv);
    bool closing = c->stopping;
    pthread_mutex_unlock(&c->mu);
    if (!closing)
        uv_async_send(&c->async);
}

static void rec_finish(struct vd_cluster *c, bool ok)
{
    free(c->rec.acts);
    c->rec.acts = NULL;
    free(c->rec.iacts);
    c->rec.iacts = NULL;
    c->rec.idx_phase = false;
    c->rec.running = false;
    if (ok) {
        c->synced = c->rec.target;
        c->rec.retry_at = 0;
    } else {
        c->rec.retry_at = vd__cluster_now_ms() + 1000;
    }
}

/* Appends one index action to *v (growing it); VD_ENOMEM. */
static int idx_push(struct idx_action **v, size_t *n, size_t *cap, const char *coll,
                    const char *field, uint8_t type)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 8;
        struct idx_action *p = realloc(*v, nc * sizeof *p);
        if (!p)
            return VD_ENOMEM;
        *v = p;
        *cap = nc;
    }
    struct idx_action *a = &(*v)[(*n)++];
    snprintf(a->coll, sizeof a->coll, "%s", coll);
    snprintf(a->field, sizeof a->field, "%s", field);
    a->type = type;
    return 0;
}

/*
 * The payload index changes that make every local collection's indexes those the state machine
 * lists for it: creates of missing ones, retypes, drops of extra ones. Only a local collection
 * of the state machine's incarnation is looked at; any other is the collection actions' business
 * (or, created by an entry not applied yet, waits for the log). Errors: VD_ENOMEM.
 */
static int idx_plan(struct vd_cluster *c, struct idx_action **out, size_t *n_out)
{
    struct idx_action *v = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    size_t nc = vd_meta_n_collections(c->meta);
    for (size_t i = 0; i < nc && !rc; i++) {
        const struct vd_coll_schema *s = vd_meta_collection_at(c->meta, i);
        struct vd_coll *coll;
        if (vd_db_coll_get(c->db, s->name, &coll))
            continue;
        struct vd_db_pindex_info *loc = NULL;
        size_t nl = 0;
        if (vd_db_coll_schema(coll)->incarnation != s->incarnation) {
            vd_db_coll_put(coll);
            continue;
        }
        rc = vd_db_pindex_list(coll, &loc, &nl);
        vd_db_coll_put(coll);
        if (rc)
            break;
        const struct vd_meta_pindex *want;
        size_t nw = vd_meta_payload_indexes(c->meta, s->name, &want);
        /* both lists are sorted by field (strcmp): one merge pass */
        size_t a = 0, b = 0;
        while (!rc && (a < nw || b < nl)) {
            int cmp = a == nw ? 1 : b == nl ? -1 : strcmp(want[a].field, loc[b].field);
            if (cmp < 0) {
                rc = idx_push(&v, &n, &cap, s->name, want[a].field, want[a].type);
                a++;
            } else if (cmp > 0) {
                rc = idx_push(&v, &n, &cap, s->name, loc[b].field, 0);
                b++;
            } else {
                if (want[a].type != (uint8_t)loc[b].type)
                    rc = idx_push(&v, &n, &cap, s->name, want[a].field, want[a].type);
                a++;
                b++;
            }
        }
        vd_db_pindex_list_free(loc, nl);
    }
    if (rc) {
        free(v);
        return rc;
    }
    *out = v;
    *n_out = n;
    return 0;
}

/* Starts payload index actions from rec.ii on until one is in flight (rec keeps running) or
 * all are done or one failed (rec finished). */
static void rec_step_idx(struct vd_cluster *c)
{
    while (c->rec.ii < c->rec.in) {
        struct idx_action *a = &c->rec.iacts[c->rec.ii];
        struct vd_err err = {0};
        struct vd_coll *coll;
        int rc = vd_db_coll_get(c->db, a->coll, &coll);
        if (rc == 0) {
            pthread_mutex_lock(&c->mu);
            c->db_inflight++;
            pthread_mutex_unlock(&c->mu);
            if (a->type) {
                vd_log_info("cluster: collection '%s': payload index on '%s' (%s)", a->coll,
                            a->field, vd_db_pindex_type_name((enum vd_db_pindex_type)a->type));
                rc = vd_db_pindex_create(coll, a->field, (enum vd_db_pindex_type)a->type, rec_done,
                                         c, &err);
            } else {
                vd_log_info("cluster: collection '%s': dropping payload index on '%s'", a->coll,
                            a->field);
                rc = vd_db_pindex_delete(coll, a->field, rec_done, c, &err);
            }
            vd_db_coll_put(coll);
            if (rc == 0)
                return;
            pthread_mutex_lock(&c->mu);
            c->db_inflight--;
            pthread_mutex_unlock(&c->mu);
        }
        /* a collection or index that went away meanwhile: the next pass sees the new state */
        if (rc != VD_ENOTFOUND) {
            vd_log_error("cluster: cannot apply a payload index change locally: %s", err.msg);
            rec_finish(c, false);
            return;
        }
        c->rec.ii++;
    }
    rec_finish(c, true);
}

/* Starts actions from rec.i on until one is in flight or all are done: first the collection
 * actions, then the payload index actions planned once the collections match. */
static void rec_step(struct vd_cluster *c)
{
    if (c->rec.idx_phase) {
        rec_step_idx(c);
        return;
    }
    while (c->rec.i < c->rec.n) {
        struct vd_meta_action *a = &c->rec.acts[c->rec.i];
        struct vd_err err = {0};
        pthread_mutex_lock(&c->mu);
        c->db_inflight++;
        pthread_mutex_unlock(&c->mu);
        int rc;
        if (a->create) {
            vd_log_info("cluster: creating collection '%s' (incarnation %llx)", a->name,
                        (unsigned long long)a->schema.incarnation);
            rc = vd_db_coll_create(c->db, &a->schema, rec_done, c, &err);
        } else if (a->update) {
            vd_log_info("cluster: collection '%s': quantization %s", a->name,
                        a->schema.quant_enabled ? "int8" : "off");
            rc = vd_db_coll_update(c->db, &a->schema, rec_done, c, &err);
        } else {
            vd_log_info("cluster: deleting collection '%s' (incarnation %llx)", a->name,
                        (unsigned long long)a->incarnation);
            rc = vd_db_coll_delete(c->db, a->name, rec_done, c, &err);
        }
        if (rc == 0)
            return;
        pthread_mutex_lock(&c->mu);
        c->db_inflight--;
        pthread_mutex_unlock(&c->mu);
        if (rc != VD_EEXIST && rc != VD_ENOTFOUND) {
            vd_log_error("cluster: cannot apply a collection change locally: %s", err.msg);
            rec_finish(c, false);
            return;
        }
        c->rec.i++;
    }
    c->rec.idx_phase = true;
    c->rec.ii = c->rec.in = 0;
    if (idx_plan(c, &c->rec.iacts, &c->rec.in)) {
        rec_finish(c, false);
        return;
    }
    rec_step_idx(c);
}

void vd__cluster_rec_event(struct vd_cluster *c, int status, const char *msg)
{
    if (!c->rec.running)
        return;
    if (status && status != VD_EEXIST && status != VD_ENOTFOUND) {
        vd_log_error("cluster: cannot apply a %s change locally: %s",
                     c->rec.idx_phase ? "payload index" : "collection", msg);
        rec_finish(c, false);
        return;
    }
    if (c->rec.idx_phase)
        c->rec.ii++;
    else
        c->rec.i++;
    rec_step(c);
}

void vd__cluster_reconcile_kick(struct vd_cluster *c)
{
    if (c->rec.running || c->broken)
        return;
    uint64_t applied = vd_meta_applied(c->meta);
    if (applied < c->catchup || applied == c->synced)
        return;
    if (c->rec.retry_at && vd__cluster_now_ms() < c->rec.retry_at)
        return;
    char **names = NULL;
    size_t n = 0;
    if (vd_db_coll_names(c->db, &names, &n))
        return;
    struct vd_meta_local *loc = calloc(n ? n : 1, sizeof *loc);
    struct vd_coll_schema *sch = calloc(n ? n : 1, sizeof *sch);
    size_t k = 0;
    for (size_t i = 0; loc && sch && i < n; i++) {
        struct vd_coll *coll;
        if (vd_db_coll_get(c->db, names[i], &coll))
            continue;
        vd_db_coll_schema_copy(coll, &sch[k]);
        loc[k].name = names[i];
        loc[k].incarnation = sch[k].incarnation;
        loc[k].schema = &sch[k];
        k++;
        vd_db_coll_put(coll);
    }
    struct vd_meta_action *acts = NULL;
    size_t na = 0;
    int rc = loc && sch ? vd_meta_plan(c->meta, loc, k, &acts, &na) : VD_ENOMEM;
    free(loc);
    free(sch);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (rc)
        return;
    c->rec.running = true;
    c->rec.acts = acts;
    c->rec.n = na;
    c->rec.i = 0;
    c->rec.idx_phase = false;
    c->rec.target = applied;
    rec_step(c);
}
