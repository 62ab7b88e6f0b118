/*
 * The data operations of a cluster node (struct vd_data_ops over vd_cluster_write/read): the
 * node that receives a request coordinates it over the ring.
 *
 * Writes are built here as whole records (vectord/record.h) under a version this node stamps
 * (vd_hlc_now(), its id), so every replica stores the same bytes: an upsert's vectors prepared as
 * the local write path prepares them (vd_db_prepare_vector), a delete as tombstones, a payload
 * edit as read (at a quorum), edit (vd_db_payload_edited), write the whole record again under a
 * new version. W is the request's consistency, else the collection's write_consistency_factor;
 * every acknowledged write is durable on W replicas whatever `wait` says.
 *
 * Reads by id go to R replicas (the request's consistency, else a quorum) and answer the newest
 * version. Searches, scroll and count are two-phase over the ring (vd_cluster_search, _scroll,
 * _count); deletes and payload edits by filter act on the ids such a scroll finds. For every
 * read the calling pool thread waits for the coordinator's answer, which comes by the request's
 * deadline.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api_int.h"
#include "vectord/cluster.h"
#include "vectord/record.h"

/* The wait of a read beyond its deadline: the coordinator answers by the deadline, so this only
 * guards against an answer that never comes. */
#define READ_GRACE_MS 2000u
/* The deadline of a request without a timeout: the cluster's default request timeout. */
#define DEFAULT_TIMEOUT_MS 10000u

/* ---- records ------------------------------------------------------------------------------- */

/* n encoded records, each malloc'd. */
struct recs {
    uint8_t **p;
    size_t *len;
    size_t n;
};

static void recs_release(struct recs *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->p[i]);
    free(r->p);
    free(r->len);
    memset(r, 0, sizeof *r);
}

static int recs_alloc(struct recs *r, size_t cap, struct vd_err *err)
{
    memset(r, 0, sizeof *r);
    r->p = calloc(cap ? cap : 1, sizeof *r->p);
    r->len = calloc(cap ? cap : 1, sizeof *r->len);
    if (!r->p || !r->len) {
        recs_release(r);
        return vd_errf(err, VD_ENOMEM, "out of memory for %zu records", cap);
    }
    return 0;
}

/* Appends the encoding of rec. */
static int recs_add(struct recs *r, const struct vd_record *rec, struct vd_err *err)
{
    size_t size = vd_record_size(rec);
    uint8_t *b = malloc(size);
    if (!b)
        return vd_errf(err, VD_ENOMEM, "out of memory for a record of %zu bytes", size);
    size_t len;
    int rc = vd_record_encode(rec, b, size, &len);
    if (rc) {
        free(b);
        return vd_errf(err, rc, "cannot encode the point record: %s", vd_strerror(rc));
    }
    r->p[r->n] = b;
    r->len[r->n++] = len;
    return 0;
}

/* A new version of this node for a write it coordinates. */
static struct vd_version stamp(struct vd_cluster *d)
{
    return (struct vd_version){vd_hlc_now(), vd_cluster_node_id(d)};
}

/* Writes recs over the ring at o's consistency; done as vd_cluster_write. With no record, done
 * runs at once: there is nothing to write. */
static int write_recs(struct vd_cluster *d, const struct vd_coll_schema *s,
                      const struct vd_data_req *o, struct recs *r, vd_db_done_fn done, void *ctx,
                      struct vd_err *err)
{
    if (r->n == 0) {
        done(0, NULL, 0, ctx);
        return 0;
    }
    return vd_cluster_write(d, s->name, s->incarnation, (const uint8_t *const *)r->p, r->len, r->n,
                            o->consistency, o->timeout_ms, done, ctx, err);
}

/* ---- upsert, apply, delete ------------------------------------------------------------------ */

static int c_upsert(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                    const struct vd_db_point *pts, size_t n, vd_db_done_fn done, void *ctx,
                    struct vd_err *err)
{
    struct vd_cluster *d = impl;
    struct vd_coll_schema s;
    vd_db_coll_schema_copy(c, &s);
    if (n == 0)
        return vd_errf(err, VD_EINVAL, "no points given");
    float *vec = malloc(sizeof(float) * s.dim);
    struct recs r;
    int rc = recs_alloc(&r, n, err);
    if (rc == 0 && !vec)
        rc = vd_errf(err, VD_ENOMEM, "out of memory");
    struct vd_buf pl;
    vd_buf_init(&pl);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if ((rc = vd_db_prepare_vector(c, pts[i].vec, vec, err))) {
            vd_err_prefix(err, "points[%zu]", i);
            break;
        }
        pl.len = 0;
        if (pts[i].payload)
            vd_buf_json(&pl, pts[i].payload);
        if (!vd_buf_ok(&pl)) {
            rc = vd_errf(err, VD_ENOMEM, "out of memory");
            break;
        }
        struct vd_rvec v = {.kind = VD_RVEC_DENSE, .n = s.dim, .values = vec};
        struct vd_record rec = {.id = pts[i].id,
                                .incarnation = s.incarnation,
                                .version = stamp(d),
                                .n_vectors = 1,
                                .vectors = &v,
                                .payload = pts[i].payload ? pl.data : NULL,
                                .payload_len = pts[i].payload ? pl.len : 0};
        if ((rc = recs_add(&r, &rec, err)))
            vd_err_prefix(err, "points[%zu]", i);
    }
    if (rc == 0)
        rc = write_recs(d, &s, o, &r, done, ctx, err);
    vd_buf_release(&pl);
    recs_release(&r);
    free(vec);
    return rc;
}

static int c_apply(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                   const uint8_t *const *recs, const size_t *lens, size_t n, vd_db_done_fn done,
                   void *ctx, struct vd_err *err)
{
    struct vd_cluster *d = impl;
    struct vd_coll_schema s;
    vd_db_coll_schema_copy(c, &s);
    return vd_cluster_write(d, s.name, s.incarnation, recs, lens, n, o->consistency, o->timeout_ms,
                            done, ctx, err);
}

static int scroll_page(struct vd_cluster *d, const struct vd_coll_schema *sc,
                       const struct vd_data_req *o, const struct vd_pid *from, uint32_t limit,
                       bool with_payload, bool with_vector, struct vd_db_record **out,
                       size_t *n_out, struct vd_pid *next, bool *has_next, struct vd_err *err);

/* The live points that match o->filter over the whole ring, in id order (*ids malloc'd): a
 * delete or a payload edit by filter acts on these ids as on ids given. */
static int ring_matches(struct vd_cluster *d, const struct vd_coll_schema *sc,
                        const struct vd_data_req *o, struct vd_pid **ids, size_t *n,
                        struct vd_err *err)
{
    *ids = NULL;
    *n = 0;
    size_t cap = 0;
    struct vd_pid from, next;
    bool has_from = false, has_next = true;
    while (has_next) {
        struct vd_db_record *recs;
        size_t nr;
        int rc = scroll_page(d, sc, o, has_from ? &from : NULL, 1024, false, false, &recs, &nr,
                             &next, &has_next, err);
        if (rc) {
            free(*ids);
            *ids = NULL;
            return rc;
        }
        if (*n + nr > cap) {
            cap = (*n + nr) * 2;
            struct vd_pid *p = realloc(*ids, cap * sizeof *p);
            if (!p) {
                vd_db_records_free(recs, nr);
                free(*ids);
                *ids = NULL;
                return vd_errf(err, VD_ENOMEM, "out of memory");
            }
            *ids = p;
        }
        for (size_t i = 0; i < nr; i++)
            (*ids)[(*n)++] = recs[i].id;
        vd_db_records_free(recs, nr);
        from = next;
        has_from = true;
    }
    return 0;
}

static int c_delete(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                    const struct vd_pid *ids, size_t n, const struct vd_filter *f,
                    vd_db_done_fn done, void *ctx, struct vd_err *err)
{
    struct vd_cluster *d = impl;
    struct vd_coll_schema s;
    vd_db_coll_schema_copy(c, &s);
    struct vd_pid *found = NULL;
    int rc = 0;
    if (f) {
        if ((rc = ring_matches(d, &s, o, &found, &n, err)))
            return rc;
        ids = found;
    }
    struct recs r;
    if ((rc = recs_alloc(&r, n, err)) == 0) {
        for (size_t i = 0; rc == 0 && i < n; i++) {
            struct vd_record rec = {
                .id = ids[i], .incarnation = s.incarnation, .version = stamp(d), .tombstone = true};
            rc = recs_add(&r, &rec, err);
        }
        if (rc == 0)
            rc = write_recs(d, &s, o, &r, done, ctx, err);
        recs_release(&r);
    }
    free(found);
    return rc;
}

/* ---- payload edits: read at a quorum, edit, write whole under a new version ------------------ */

struct edit {
    struct vd_cluster *d;
    struct vd_coll_schema s;
    struct vd_data_req o;
    enum vd_db_payload_op op;
    cJSON *arg; /* owned copy */
    vd_db_done_fn done;
    void *ctx;
};

static void edit_free(struct edit *ed)
{
    cJSON_Delete(ed->arg);
    free(ed);
}

/* Builds the edited record of the live record p[len] into r. */
static int edit_one(struct edit *ed, const uint8_t *p, size_t len, struct recs *r,
                    struct vd_err *err)
{
    struct vd_record old;
    struct vd_rvec vecs[VD_RECORD_MAX_VECTORS];
    if (vd_record_decode(p, len, &old, vecs))
        return vd_errf(err, VD_ECORRUPT, "a replica answered a malformed point record");
    cJSON *np = vd_db_payload_edited(ed->op, ed->arg, old.payload, old.payload_len, err);
    if (!np)
        return err->code ? err->code : VD_ENOMEM;
    struct vd_buf pl;
    vd_buf_init(&pl);
    vd_buf_json(&pl, np);
    cJSON_Delete(np);
    int rc;
    if (!vd_buf_ok(&pl)) {
        rc = vd_errf(err, VD_ENOMEM, "out of memory");
    } else {
        struct vd_record rec = old; /* its vectors, the edited payload, a new version */
        rec.version = stamp(ed->d);
        /* newer than what it edits even if that came from a clock ahead of this node's */
        if (rec.version.hlc <= old.version.hlc)
            rec.version.hlc = old.version.hlc + 1;
        rec.payload = pl.data;
        rec.payload_len = pl.len;
        rc = recs_add(r, &rec, err);
    }
    vd_buf_release(&pl);
    return rc;
}

/* Runs on the loop thread, with the newest version of every id (NULL: absent or deleted,
 * skipped as the local edit skips them). */
static void edit_read_done(int status, const struct vd_err *rerr, const struct vd_cluster_rec *got,
                           size_t n, void *arg)
{
    struct edit *ed = arg;
    struct vd_err e = {0};
    struct recs r = {0};
    int rc = status;
    if (rc) {
        e = *rerr;
    } else if ((rc = recs_alloc(&r, n, &e)) == 0) {
        for (size_t i = 0; rc == 0 && i < n; i++)
            if (got[i].p)
                rc = edit_one(ed, got[i].p, got[i].len, &r, &e);
        if (rc == 0)
            rc = write_recs(ed->d, &ed->s, &ed->o, &r, ed->done, ed->ctx, &e);
    }
    recs_release(&r);
    if (rc)
        ed->done(rc, &e, 0, ed->ctx);
    edit_free(ed);
}

static int c_payload_edit(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                          enum vd_db_payload_op op, const cJSON *arg, const struct vd_pid *ids,
                          size_t n, const struct vd_filter *f, vd_db_done_fn done, void *ctx,
                          struct vd_err *err)
{
    struct vd_cluster *d = impl;
    struct vd_pid *found = NULL;
    int rc;
    if (f) {
        struct vd_coll_schema sc;
        vd_db_coll_schema_copy(c, &sc);
        if ((rc = ring_matches(d, &sc, o, &found, &n, err)))
            return rc;
        ids = found;
    }
    if (n == 0) {
        free(found);
        done(0, NULL, 0, ctx);
        return 0;
    }
    struct edit *ed = calloc(1, sizeof *ed);
    if (!ed || (arg && !(ed->arg = cJSON_Duplicate(arg, true)))) {
        free(ed);
        free(found);
        return vd_errf(err, VD_ENOMEM, "out of memory");
    }
    ed->d = d;
    vd_db_coll_schema_copy(c, &ed->s);
    ed->o = *o;
    ed->op = op;
    ed->done = done;
    ed->ctx = ctx;
    /* read at a quorum (or more when asked) whatever the write asks: the edit must start from
     * the newest version a quorum write left, or it would write an older vector back under a
     * newer version */
    rc = vd_cluster_read(d, ed->s.name, ed->s.incarnation, ids, n, o->read_consistency,
                         o->timeout_ms, edit_read_done, ed, err);
    if (rc)
        edit_free(ed);
    free(found);
    return rc;
}

/* ---- reads: the calling thread waits for the coordinator's answer ---------------------------- */

/* Shared by the waiting pool thread and the completion on the loop thread; whichever lets go
 * last frees it, so an answer that comes after the wait gave up touches live memory. The
 * completion copies what it is given (valid during the callback only) into it. */
struct rwait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    bool done, with_vector;
    int status;
    struct vd_err err;
    struct vd_db_record *recs; /* taken by the waiter */
    size_t n;
    struct vd_pid next; /* scroll: where the next page starts, when has_next */
    bool has_next;
    uint64_t count;
};

static struct rwait *rwait_new(bool with_vector)
{
    struct rwait *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    vd__api_wait_init(&w->mu, &w->cv);
    w->refs = 2;
    w->with_vector = with_vector;
    return w;
}

static void rwait_unref_locked(struct rwait *w)
{
    bool last = --w->refs == 0;
    pthread_mutex_unlock(&w->mu);
    if (last) {
        vd_db_records_free(w->recs, w->n);
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        free(w);
    }
}

/* The completion's end (w->mu held): records status (err's message when it failed), wakes the
 * waiter and lets go. */
static void rwait_finish(struct rwait *w, int status, const struct vd_err *err)
{
    if (status && err && !w->err.msg[0])
        w->err = *err;
    w->status = status;
    w->done = true;
    pthread_cond_signal(&w->cv);
    rwait_unref_locked(w);
}

/* Waits for the completion of a call that returned `started` (0: the completion will run; an
 * error: it will not, and err says why). Then 0, with the records moved to *out (when out is
 * set), or the call's error. `what` names the request for an answer that never came. */
static int rwait_wait(struct rwait *w, int started, const struct vd_data_req *o, const char *what,
                      struct vd_db_record **out, size_t *n_out, struct vd_err *err)
{
    pthread_mutex_lock(&w->mu);
    if (started) {
        w->refs--; /* the completion will never run */
        rwait_unref_locked(w);
        return started;
    }
    struct timespec until;
    vd_mono_deadline(&until, (o->timeout_ms ? o->timeout_ms : DEFAULT_TIMEOUT_MS) + READ_GRACE_MS);
    while (!w->done)
        if (pthread_cond_timedwait(&w->cv, &w->mu, &until) == ETIMEDOUT)
            break;
    int rc = 0;
    if (!w->done)
        rc = vd_errf(err, VD_EUNAVAIL, "%s got no answer from the cluster", what);
    else if (w->status)
        rc = vd_errf(err, w->status, "%s", w->err.msg[0] ? w->err.msg : vd_strerror(w->status));
    else if (out) {
        *out = w->recs;
        *n_out = w->n;
        w->recs = NULL;
        w->n = 0;
    }
    return rc; /* w->mu still held: the caller reads what else it needs, then lets go */
}

/* The API's form of a live encoded record. */
static int decoded_record(const uint8_t *p, size_t len, bool with_vector, struct vd_db_record *out)
{
    struct vd_record rec;
    struct vd_rvec vecs[VD_RECORD_MAX_VECTORS];
    if (vd_record_decode(p, len, &rec, vecs))
        return VD_ECORRUPT;
    memset(out, 0, sizeof *out);
    out->id = rec.id;
    out->version = rec.version;
    const struct vd_rvec *v = vd_record_vector(&rec, "", 0);
    if (with_vector && v && v->kind == VD_RVEC_DENSE) {
        if (!(out->vec = malloc(sizeof(float) * v->n)))
            return VD_ENOMEM;
        vd_record_copy_values(v, out->vec);
        out->dim = v->n;
    }
    if (rec.payload_len) {
        if (!(out->payload = malloc(rec.payload_len)))
            return VD_ENOMEM;
        memcpy(out->payload, rec.payload, rec.payload_len);
        out->payload_len = rec.payload_len;
    }
    return 0;
}

/* A copy of r that owns its vector and payload. */
static int copied_record(const struct vd_db_record *r, struct vd_db_record *out)
{
    *out = *r;
    out->vec = NULL;
    out->payload = NULL;
    if (r->vec && !(out->vec = malloc(sizeof(float) * r->dim)))
        return VD_ENOMEM;
    if (r->vec)
        memcpy(out->vec, r->vec, sizeof(float) * r->dim);
    if (r->payload && !(out->payload = malloc(r->payload_len)))
        return VD_ENOMEM;
    if (r->payload)
        memcpy(out->payload, r->payload, r->payload_len);
    return 0;
}

/* Copies recs[n] into w (w->mu held). */
static int rwait_take(struct rwait *w, const struct vd_db_record *recs, size_t n)
{
    if (!(w->recs = calloc(n ? n : 1, sizeof *w->recs)))
        return vd_errf(&w->err, VD_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        int rc = copied_record(&recs[i], &w->recs[w->n++]);
        if (rc)
            return vd_errf(&w->err, rc, "out of memory");
    }
    return 0;
}

/* The live records among got[n] in the API's form: *out (*n_out of them) the caller's, freed
 * with vd_db_records_free even on an error (err says which). */
static int decoded_records(const struct vd_cluster_rec *got, size_t n, bool with_vector,
                           struct vd_db_record **out, size_t *n_out, struct vd_err *err)
{
    *n_out = 0;
    if (!(*out = calloc(n ? n : 1, sizeof **out)))
        return vd_errf(err, VD_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (!got[i].p)
            continue;
        int rc = decoded_record(got[i].p, got[i].len, with_vector, &(*out)[(*n_out)++]);
        if (rc)
            return vd_errf(err, rc, "cannot read a replica's point record: %s", vd_strerror(rc));
    }
    return 0;
}

static void read_done(int status, const struct vd_err *err, const struct vd_cluster_rec *got,
                      size_t n, void *arg)
{
    struct rwait *w = arg;
    pthread_mutex_lock(&w->mu);
    if (status == 0)
        status = decoded_records(got, n, w->with_vector, &w->recs, &w->n, &w->err);
    rwait_finish(w, status, err);
}

static void records_done(int status, const struct vd_err *err, const struct vd_db_record *recs,
                         size_t n, void *arg)
{
    struct rwait *w = arg;
    pthread_mutex_lock(&w->mu);
    if (status == 0)
        status = rwait_take(w, recs, n);
    rwait_finish(w, status, err);
}

static void scroll_done(int status, const struct vd_err *err, const struct vd_db_record *recs,
                        size_t n, const struct vd_pid *next, void *arg)
{
    struct rwait *w = arg;
    pthread_mutex_lock(&w->mu);
    if (status == 0)
        status = rwait_take(w, recs, n);
    if (status == 0 && next) {
        w->next = *next;
        w->has_next = true;
    }
    rwait_finish(w, status, err);
}

static void count_done(int status, const struct vd_err *err, uint64_t count, void *arg)
{
    struct rwait *w = arg;
    pthread_mutex_lock(&w->mu);
    w->count = count;
    rwait_finish(w, status, err);
}

/* ids without repeats, first occurrence kept (*out malloc'd). */
static int unique_ids(const struct vd_pid *ids, size_t n, struct vd_pid **out, size_t *n_out)
{
    struct vd_pid *u = malloc(sizeof *u * (n ? n : 1));
    if (!u)
        return VD_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        bool seen = false;
        for (size_t j = 0; j < k && !seen; j++)
            seen = vd_pid_eq(&u[j], &ids[i]);
        if (!seen)
            u[k++] = ids[i];
    }
    *out = u;
    *n_out = k;
    return 0;
}

static int c_retrieve(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                      const struct vd_pid *ids, size_t n, bool with_vector,
                      struct vd_db_record **out, size_t *n_out, struct vd_err *err)
{
    struct vd_cluster *d = impl;
    *out = NULL;
    *n_out = 0;
    if (n == 0)
        return 0;
    struct vd_coll_schema s;
    vd_db_coll_schema_copy(c, &s);
    struct vd_pid *u;
    size_t nu;
    struct rwait *w;
    if (unique_ids(ids, n, &u, &nu))
        return vd_errf(err, VD_ENOMEM, "out of memory");
    if (!(w = rwait_new(with_vector))) {
        free(u);
        return vd_errf(err, VD_ENOMEM, "out of memory");
    }
    int rc = vd_cluster_read(d, s.name, s.incarnation, u, nu, o->consistency, o->timeout_ms,
                             read_done, w, err);
    free(u);
    rc = rwait_wait(w, rc, o, "a read by id", out, n_out, err);
    rwait_unref_locked(w);
    return rc;
}

/* The cluster's form of a search or a scroll page with o's filter, consistency and deadline. */
static struct vd_cluster_search search_of(const struct vd_coll_schema *sc,
                                          const struct vd_data_req *o, const struct vd_db_search *s,
                                          bool with_vector)
{
    return (struct vd_cluster_search){.s = s,
                                      .dim = sc->dim,
                                      .filter = o->filter,
                                      .with_payload = o->with_payload,
                                      .with_vector = with_vector,
                                      .r = o->consistency,
                                      .timeout_ms = o->timeout_ms};
}

static struct vd_cluster_scroll scroll_of(const struct vd_data_req *o, const struct vd_pid *from,
                                          uint32_t limit, bool with_payload, bool with_vector)
{
    return (struct vd_cluster_scroll){.from = from,
                                      .limit = limit,
                                      .filter = o->filter,
                                      .with_payload = with_payload,
                                      .with_vector = with_vector,
                                      .r = o->consistency,
                                      .timeout_ms = o->timeout_ms};
}

/* ---- searches, scroll and count: two-phase over the ring ------------------------------------- */

static int c_search(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                    const struct vd_db_search *s, bool with_vector, struct vd_db_record **out,
                    size_t *n_out, struct vd_err *err)
{
    struct vd_cluster *d = impl;
    struct vd_coll_schema sc;
    vd_db_coll_schema_copy(c, &sc);
    struct rwait *w = rwait_new(with_vector);
    if (!w)
        return vd_errf(err, VD_ENOMEM, "out of memory");
    struct vd_cluster_search q = search_of(&sc, o, s, with_vector);
    int rc = vd_cluster_search(d, sc.name, sc.incarnation, &q, records_done, w, err);
    rc = rwait_wait(w, rc, o, "a search", out, n_out, err);
    rwait_unref_locked(w);
    return rc;
}

/* One page of the ring's scroll into out; *next and *has_next as for vd_db_scroll. */
static int scroll_page(struct vd_cluster *d, const struct vd_coll_schema *sc,
                       const struct vd_data_req *o, const struct vd_pid *from, uint32_t limit,
                       bool with_payload, bool with_vector, struct vd_db_record **out,
                       size_t *n_out, struct vd_pid *next, bool *has_next, struct vd_err *err)
{
    struct rwait *w = rwait_new(with_vector);
    if (!w)
        return vd_errf(err, VD_ENOMEM, "out of memory");
    struct vd_cluster_scroll q = scroll_of(o, from, limit, with_payload, with_vector);
    int rc = vd_cluster_scroll(d, sc->name, sc->incarnation, &q, scroll_done, w, err);
    rc = rwait_wait(w, rc, o, "a scroll", out, n_out, err);
    if (rc == 0) {
        *has_next = w->has_next;
        if (w->has_next)
            *next = w->next;
    }
    rwait_unref_locked(w);
    return rc;
}

static int c_scroll(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                    const struct vd_pid *from, uint32_t limit, const struct vd_filter *f,
                    bool with_vector, struct vd_db_record **out, size_t *n_out, struct vd_pid *next,
                    bool *has_next, struct vd_err *err)
{
    struct vd_coll_schema sc;
    vd_db_coll_schema_copy(c, &sc);
    return scroll_page(impl, &sc, o, from, limit, o->with_payload, with_vector, out, n_out, next,
                       has_next, err);
}

static int c_count(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                   const struct vd_filter *f, uint64_t *out, struct vd_err *err)
{
    struct vd_cluster *d = impl;
    struct vd_coll_schema sc;
    vd_db_coll_schema_copy(c, &sc);
    struct rwait *w = rwait_new(false);
    if (!w)
        return vd_errf(err, VD_ENOMEM, "out of memory");
    int rc = vd_cluster_count(d, sc.name, sc.incarnation, o->filter, o->consistency, o->timeout_ms,
                              count_done, w, err);
    rc = rwait_wait(w, rc, o, "a count", NULL, NULL, err);
    if (rc == 0)
        *out = w->count;
    rwait_unref_locked(w);
    return rc;
}

/* ---- the asynchronous reads: the caller's completion runs from the cluster's ---------------- */

struct aread {
    vd_data_read_fn done;
    void *ctx;
    bool with_vector;
};

static struct aread *aread_new(vd_data_read_fn done, void *ctx, bool with_vector,
                               struct vd_err *err)
{
    struct aread *a = malloc(sizeof *a);
    if (!a) {
        vd_errf(err, VD_ENOMEM, "out of memory");
        return NULL;
    }
    *a = (struct aread){done, ctx, with_vector};
    return a;
}

/* Hands the outcome to the caller's completion and frees a. */
static void aread_end(struct aread *a, int status, const struct vd_err *err,
                      const struct vd_data_result *res)
{
    a->done(status, status ? err : NULL, status ? NULL : res, a->ctx);
    free(a);
}

static void aread_read_done(int status, const struct vd_err *err, const struct vd_cluster_rec *got,
                            size_t n, void *arg)
{
    struct aread *a = arg;
    struct vd_err e = {0};
    struct vd_db_record *recs = NULL;
    size_t k = 0;
    if (status == 0 && (status = decoded_records(got, n, a->with_vector, &recs, &k, &e)))
        err = &e;
    struct vd_data_result res = {.recs = recs, .n = k};
    aread_end(a, status, err, &res);
    vd_db_records_free(recs, k);
}

static void aread_scroll_done(int status, const struct vd_err *err, const struct vd_db_record *recs,
                              size_t n, const struct vd_pid *next, void *arg)
{
    struct vd_data_result res = {.recs = recs, .n = n, .next = next};
    aread_end(arg, status, err, &res);
}

static void aread_count_done(int status, const struct vd_err *err, uint64_t count, void *arg)
{
    struct vd_data_result res = {.count = count};
    aread_end(arg, status, err, &res);
}

static int c_retrieve_async(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                            const struct vd_pid *ids, size_t n, bool with_vector,
                            vd_data_read_fn done, void *ctx, struct vd_err *err)
{
    if (n == 0) {
        struct vd_data_result res = {0};
        done(0, NULL, &res, ctx);
        return 0;
    }
    struct vd_coll_schema s;
    vd_db_coll_schema_copy(c, &s);
    struct vd_pid *u;
    size_t nu;
    if (unique_ids(ids, n, &u, &nu))
        return vd_errf(err, VD_ENOMEM, "out of memory");
    struct aread *a = aread_new(done, ctx, with_vector, err);
    int rc = a ? vd_cluster_read(impl, s.name, s.incarnation, u, nu, o->consistency, o->timeout_ms,
                                 aread_read_done, a, err)
               : VD_ENOMEM;
    if (rc)
        free(a);
    free(u);
    return rc;
}

static void aread_records_done(int status, const struct vd_err *err,
                               const struct vd_db_record *recs, size_t n, void *arg)
{
    struct vd_data_result res = {.recs = recs, .n = n};
    aread_end(arg, status, err, &res);
}

static int c_search_async(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                          const struct vd_db_search *s, bool with_vector, vd_data_read_fn done,
                          void *ctx, struct vd_err *err)
{
    struct vd_coll_schema sc;
    vd_db_coll_schema_copy(c, &sc);
    struct aread *a = aread_new(done, ctx, with_vector, err);
    if (!a)
        return VD_ENOMEM;
    struct vd_cluster_search q = search_of(&sc, o, s, with_vector);
    int rc = vd_cluster_search(impl, sc.name, sc.incarnation, &q, aread_records_done, a, err);
    if (rc)
        free(a);
    return rc;
}

static int c_scroll_async(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                          const struct vd_pid *from, uint32_t limit, const struct vd_filter *f,
                          bool with_vector, vd_data_read_fn done, void *ctx, struct vd_err *err)
{
    struct vd_coll_schema s;
    vd_db_coll_schema_copy(c, &s);
    struct aread *a = aread_new(done, ctx, with_vector, err);
    if (!a)
        return VD_ENOMEM;
    struct vd_cluster_scroll q = scroll_of(o, from, limit, o->with_payload, with_vector);
    int rc = vd_cluster_scroll(impl, s.name, s.incarnation, &q, aread_scroll_done, a, err);
    if (rc)
        free(a);
    return rc;
}

static int c_count_async(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                         const struct vd_filter *f, vd_data_read_fn done, void *ctx,
                         struct vd_err *err)
{
    struct vd_coll_schema s;
    vd_db_coll_schema_copy(c, &s);
    struct aread *a = aread_new(done, ctx, false, err);
    if (!a)
        return VD_ENOMEM;
    int rc = vd_cluster_count(impl, s.name, s.incarnation, o->filter, o->consistency, o->timeout_ms,
                              aread_count_done, a, err);
    if (rc)
        free(a);
    return rc;
}

/* ---- a node alone ------------------------------------------------------------------------------
 * A cluster whose only member is this node holds every point here, and nothing could ask for a
 * point elsewhere: its database serves the request as on a node without a cluster, skipping the
 * coordinator's hops (a thread switch to the loop, the thread pool, message encoding), which
 * cost a single node several times the time of a read. Once another member is in the ring,
 * requests go through the coordinator again; the ring cannot gain one while a collection holds
 * points. */

static struct vd_data_ops solo_ops;
static pthread_once_t solo_once = PTHREAD_ONCE_INIT;

static void solo_init(void)
{
    vd_api_local_data(vd__api.db, &solo_ops);
}

/* The database's operations when this node is the cluster's only member, else NULL. */
static const struct vd_data_ops *solo(void *impl)
{
    if (!vd__api.db || !vd_cluster_alone(impl))
        return NULL;
    pthread_once(&solo_once, solo_init);
    return &solo_ops;
}

/* The database's operations for a read that this node answers alone, else NULL: when it is the
 * only member, or when the read needs one replica per range (consistency 1) and this node is a
 * replica of every range. The coordinator would ask this node first and no other, so its answer
 * is the same without the two phases and the hops between threads. */
static const struct vd_data_ops *local_read(void *impl, struct vd_coll *c,
                                            const struct vd_data_req *o)
{
    const struct vd_data_ops *l = solo(impl);
    if (l || !vd__api.db)
        return l;
    struct vd_coll_schema sc;
    vd_db_coll_schema_copy(c, &sc);
    unsigned rf = sc.replication_factor;
    unsigned need = o->consistency ? o->consistency : rf / 2 + 1;
    if (need != 1 || !vd_cluster_holds_all(impl, rf))
        return NULL;
    pthread_once(&solo_once, solo_init);
    return &solo_ops;
}

static int s_upsert(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                    const struct vd_db_point *pts, size_t n, vd_db_done_fn done, void *ctx,
                    struct vd_err *err)
{
    const struct vd_data_ops *l = solo(impl);
    return l ? l->upsert(l->impl, c, o, pts, n, done, ctx, err)
             : c_upsert(impl, c, o, pts, n, done, ctx, err);
}

static int s_apply(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                   const uint8_t *const *recs, const size_t *lens, size_t n, vd_db_done_fn done,
                   void *ctx, struct vd_err *err)
{
    const struct vd_data_ops *l = solo(impl);
    return l ? l->apply(l->impl, c, o, recs, lens, n, done, ctx, err)
             : c_apply(impl, c, o, recs, lens, n, done, ctx, err);
}

static int s_delete(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                    const struct vd_pid *ids, size_t n, const struct vd_filter *f,
                    vd_db_done_fn done, void *ctx, struct vd_err *err)
{
    const struct vd_data_ops *l = solo(impl);
    return l ? l->delete_points(l->impl, c, o, ids, n, f, done, ctx, err)
             : c_delete(impl, c, o, ids, n, f, done, ctx, err);
}

static int s_payload_edit(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                          enum vd_db_payload_op op, const cJSON *arg, const struct vd_pid *ids,
                          size_t n, const struct vd_filter *f, vd_db_done_fn done, void *ctx,
                          struct vd_err *err)
{
    const struct vd_data_ops *l = solo(impl);
    return l ? l->payload_edit(l->impl, c, o, op, arg, ids, n, f, done, ctx, err)
             : c_payload_edit(impl, c, o, op, arg, ids, n, f, done, ctx, err);
}

static int s_retrieve(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                      const struct vd_pid *ids, size_t n, bool with_vector,
                      struct vd_db_record **out, size_t *n_out, struct vd_err *err)
{
    const struct vd_data_ops *l = local_read(impl, c, o);
    return l ? l->retrieve(l->impl, c, o, ids, n, with_vector, out, n_out, err)
             : c_retrieve(impl, c, o, ids, n, with_vector, out, n_out, err);
}

static int s_search(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                    const struct vd_db_search *s, bool with_vector, struct vd_db_record **out,
                    size_t *n_out, struct vd_err *err)
{
    const struct vd_data_ops *l = local_read(impl, c, o);
    return l ? l->search(l->impl, c, o, s, with_vector, out, n_out, err)
             : c_search(impl, c, o, s, with_vector, out, n_out, err);
}

static int s_scroll(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                    const struct vd_pid *from, uint32_t limit, const struct vd_filter *f,
                    bool with_vector, struct vd_db_record **out, size_t *n_out, struct vd_pid *next,
                    bool *has_next, struct vd_err *err)
{
    const struct vd_data_ops *l = local_read(impl, c, o);
    return l ? l->scroll(l->impl, c, o, from, limit, f, with_vector, out, n_out, next, has_next,
                         err)
             : c_scroll(impl, c, o, from, limit, f, with_vector, out, n_out, next, has_next, err);
}

static int s_count(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                   const struct vd_filter *f, uint64_t *out, struct vd_err *err)
{
    const struct vd_data_ops *l = local_read(impl, c, o);
    return l ? l->count(l->impl, c, o, f, out, err) : c_count(impl, c, o, f, out, err);
}

/* The asynchronous forms alone: the database answers during the call, done runs before it
 * returns. */
static void solo_answer(int rc, const struct vd_err *err, struct vd_db_record *recs, size_t n,
                        const struct vd_pid *next, uint64_t count, vd_data_read_fn done,
                        void *ctx)
{
    struct vd_data_result res = {.recs = recs, .n = n, .next = next, .count = count};
    done(rc, rc ? err : NULL, rc ? NULL : &res, ctx);
    vd_db_records_free(recs, n);
}

static int s_retrieve_async(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                            const struct vd_pid *ids, size_t n, bool with_vector,
                            vd_data_read_fn done, void *ctx, struct vd_err *err)
{
    const struct vd_data_ops *l = local_read(impl, c, o);
    if (!l)
        return c_retrieve_async(impl, c, o, ids, n, with_vector, done, ctx, err);
    struct vd_db_record *recs = NULL;
    size_t k = 0;
    int rc = l->retrieve(l->impl, c, o, ids, n, with_vector, &recs, &k, err);
    solo_answer(rc, err, recs, k, NULL, 0, done, ctx);
    return 0;
}

static int s_search_async(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                          const struct vd_db_search *s, bool with_vector, vd_data_read_fn done,
                          void *ctx, struct vd_err *err)
{
    const struct vd_data_ops *l = local_read(impl, c, o);
    if (!l)
        return c_search_async(impl, c, o, s, with_vector, done, ctx, err);
    struct vd_db_record *recs = NULL;
    size_t k = 0;
    int rc = l->search(l->impl, c, o, s, with_vector, &recs, &k, err);
    solo_answer(rc, err, recs, k, NULL, 0, done, ctx);
    return 0;
}

static int s_scroll_async(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                          const struct vd_pid *from, uint32_t limit, const struct vd_filter *f,
                          bool with_vector, vd_data_read_fn done, void *ctx, struct vd_err *err)
{
    const struct vd_data_ops *l = local_read(impl, c, o);
    if (!l)
        return c_scroll_async(impl, c, o, from, limit, f, with_vector, done, ctx, err);
    struct vd_db_record *recs = NULL;
    size_t k = 0;
    struct vd_pid next;
    bool has_next = false;
    int rc = l->scroll(l->impl, c, o, from, limit, f, with_vector, &recs, &k, &next, &has_next,
                       err);
    solo_answer(rc, err, recs, k, has_next ? &next : NULL, 0, done, ctx);
    return 0;
}

static int s_count_async(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                         const struct vd_filter *f, vd_data_read_fn done, void *ctx,
                         struct vd_err *err)
{
    const struct vd_data_ops *l = local_read(impl, c, o);
    if (!l)
        return c_count_async(impl, c, o, f, done, ctx, err);
    uint64_t count = 0;
    int rc = l->count(l->impl, c, o, f, &count, err);
    solo_answer(rc, err, NULL, 0, NULL, count, done, ctx);
    return 0;
}

void vd_api_cluster_data(struct vd_cluster *cluster, struct vd_data_ops *out)
{
    *out = (struct vd_data_ops){
        .upsert = s_upsert,
        .apply = s_apply,
        .delete_points = s_delete,
        .payload_edit = s_payload_edit,
        .retrieve = s_retrieve,
        .search = s_search,
        .scroll = s_scroll,
        .count = s_count,
        .retrieve_async = s_retrieve_async,
        .search_async = s_search_async,
        .scroll_async = s_scroll_async,
        .count_async = s_count_async,
        .impl = cluster,
    };
}
