/* Opening and closing the local database, the collection table and the background index work. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "db_int.h"
#include "vectord/json.h"

/* ---- collection objects ---- */

/* The source of a quantized index that keeps its float vectors on disk (always_ram false): the
 * point records in storage, read through a short read transaction per search (the vectors of
 * 1536-d points sit on overflow pages and are used in place, in LMDB's map). */
static int src_begin(void *ctx, void **rd)
{
    struct vd_coll *c = ctx;
    struct vd_rtxn *t;
    int rc = vd_store_read_begin(c->db->store, &t);
    *rd = rc ? NULL : t;
    return rc;
}

static int src_get(void *ctx, void *rd, const struct vd_pid *id, const float **out)
{
    struct vd_coll *c = ctx;
    struct vd_point_view v;
    /* the index uses each vector before asking for the next: aligned copies of small vectors
     * are not kept for the whole read (an exact scan reads every point) */
    vd_store_read_release_views(rd);
    int rc = vd_store_point_get(rd, c->schema.incarnation, id, &v);
    if (rc)
        return rc;
    if (v.tombstone || !v.vec || v.dim != c->schema.dim)
        return VD_ENOTFOUND;
    *out = v.vec;
    return 0;
}

static void src_end(void *ctx, void *rd)
{
    (void)ctx;
    vd_store_read_end(rd);
}

static struct vd_index_params index_params(struct vd_coll *c, const struct vd_coll_schema *s)
{
    return (struct vd_index_params){
        .dim = s->dim,
        .metric = s->metric,
        .m = s->hnsw_m,
        .ef_construct = s->hnsw_ef_construct,
        .full_scan_threshold_kb = s->full_scan_threshold_kb,
        .seed = s->incarnation,
        .quant = {.enabled = s->quant_enabled,
                  .quantile = s->quant_quantile,
                  .always_ram = s->quant_always_ram != 1},
        .src = {.begin = src_begin, .get = src_get, .end = src_end, .ctx = c},
    };
}

static char *index_path(const struct vd_db *db, uint64_t incarnation)
{
    char *p = NULL;
    if (asprintf(&p, "%s/index/%016llx.hnsw", db->dir, (unsigned long long)incarnation) < 0)
        return NULL;
    return p;
}

static struct vd_coll *coll_alloc(struct vd_db *db, const struct vd_coll_schema *s)
{
    struct vd_coll *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->db = db;
    atomic_init(&c->refs, 1);
    c->schema = *s;
    pthread_rwlockattr_t a;
    pthread_rwlockattr_init(&a);
    /* searches hold the read side for a whole query; the writer thread must not starve */
    pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&c->plock, &a);
    pthread_rwlockattr_destroy(&a);
    pmap_init(&c->pm);
    pidx_init(&c->px);
    c->index_path = index_path(db, s->incarnation);
    c->last_save_ns = vd_mono_ns();
    if (!c->index_path) {
        free(c);
        return NULL;
    }
    return c;
}

void vd__db_coll_unref(struct vd_coll *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    if (atomic_load(&c->dropped))
        unlink(c->index_path);
    vd_index_free(c->ix);
    pidx_release(&c->px);
    pmap_release(&c->pm);
    pthread_rwlock_destroy(&c->plock);
    free(c->index_path);
    free(c);
}

void vd_db_coll_put(struct vd_coll *c)
{
    vd__db_coll_unref(c);
}

const struct vd_coll_schema *vd_db_coll_schema(const struct vd_coll *c)
{
    return &c->schema;
}

int vd_db_coll_get(struct vd_db *db, const char *name, struct vd_coll **out)
{
    int rc = VD_ENOTFOUND;
    pthread_mutex_lock(&db->mu);
    for (size_t i = 0; i < db->n_colls; i++) {
        if (!strcmp(db->colls[i]->schema.name, name)) {
            atomic_fetch_add(&db->colls[i]->refs, 1);
            *out = db->colls[i];
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&db->mu);
    return rc;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int vd_db_coll_names(struct vd_db *db, char ***names, size_t *n)
{
    pthread_mutex_lock(&db->mu);
    char **v = calloc(db->n_colls + 1, sizeof *v);
    size_t k = 0;
    for (size_t i = 0; v && i < db->n_colls; i++)
        if ((v[k] = strdup(db->colls[i]->schema.name)))
            k++;
    pthread_mutex_unlock(&db->mu);
    if (!v)
        return VD_ENOMEM;
    qsort(v, k, sizeof *v, name_cmp);
    *names = v;
    *n = k;
    return 0;
}

void vd_db_coll_stats(struct vd_coll *c, struct vd_coll_stats *out)
{
    pthread_rwlock_rdlock(&c->plock);
    out->points = c->pm.count;
    pthread_rwlock_unlock(&c->plock);
    out->pending = vd_index_pending(c->ix);
    size_t cnt = vd_index_count(c->ix);
    out->indexed = cnt > out->pending ? cnt - out->pending : 0;
    out->index_bytes = vd_index_memory(c->ix);
    out->vector_bytes = vd_index_vector_memory(c->ix);
}

int vd_db_check_name(const char *name, struct vd_err *err)
{
    size_t n = strlen(name);
    if (n == 0 || n > 255)
        return vd_errf(err, VD_ERANGE, "collection name must be 1 to 255 characters, got %zu", n);
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '-'))
            return vd_errf(err, VD_ERANGE,
                           "collection name may contain only letters, digits, '_' and '-'");
    }
    return 0;
}

/* Adds an open collection to the table (the table takes the caller's reference). */
static int table_add(struct vd_db *db, struct vd_coll *c)
{
    pthread_mutex_lock(&db->mu);
    struct vd_coll **nv = realloc(db->colls, (db->n_colls + 1) * sizeof *nv);
    if (nv) {
        db->colls = nv;
        db->colls[db->n_colls++] = c;
    }
    pthread_mutex_unlock(&db->mu);
    return nv ? 0 : VD_ENOMEM;
}

/* A referenced copy of the table, for work done without holding mu; release with
 * snapshot_put. NULL with *n = 0 when empty or out of memory. */
static struct vd_coll **snapshot(struct vd_db *db, size_t *n)
{
    pthread_mutex_lock(&db->mu);
    struct vd_coll **v = db->n_colls ? calloc(db->n_colls, sizeof *v) : NULL;
    *n = v ? db->n_colls : 0;
    for (size_t i = 0; i < *n; i++) {
        v[i] = db->colls[i];
        atomic_fetch_add(&v[i]->refs, 1);
    }
    pthread_mutex_unlock(&db->mu);
    return v;
}

static void snapshot_put(struct vd_coll **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        vd__db_coll_unref(v[i]);
    free(v);
}

/* ---- loading at start ---- */

struct load_ctx {
    struct vd_coll *c;
    struct vd_rtxn *t;
    uint64_t applied;  /* change counter of the saved graph */
    bool graph_loaded; /* a saved graph was loaded (else every point is inserted) */
    int rc;
};

static int fetch_vector(const struct vd_pid *id, float *out, void *arg)
{
    struct load_ctx *l = arg;
    struct vd_point_view v;
    int rc = vd_store_point_get(l->t, l->c->schema.incarnation, id, &v);
    if (rc || v.tombstone || v.dim != l->c->schema.dim)
        return VD_ENOTFOUND;
    memcpy(out, v.vec, sizeof(float) * v.dim);
    return 0;
}

static int encode_payload_text(const char *text, size_t len, uint8_t **bin, size_t *blen)
{
    *bin = NULL;
    *blen = 0;
    if (!text || !len)
        return 0;
    cJSON *j = NULL;
    struct vd_err e;
    int rc = vd_json_parse(text, len, VD_JSON_MAX_DEPTH, &j, &e);
    if (rc)
        return VD_ECORRUPT;
    rc = vd_payload_encode(j, bin, blen);
    cJSON_Delete(j);
    return rc;
}

static int load_point(const struct vd_point_view *p, void *arg)
{
    struct load_ctx *l = arg;
    uint8_t *bin;
    size_t blen;
    int rc = encode_payload_text(p->payload, p->payload_len, &bin, &blen);
    if (rc) {
        char s[VD_PID_STR_MAX];
        vd_pid_format(&p->id, s);
        vd_log_warn("collection '%s': point %s has an unreadable payload; serving it without",
                    l->c->schema.name, s);
        bin = NULL;
        blen = 0;
    }
    if ((rc = pmap_set(&l->c->pm, &p->id, bin, (uint32_t)blen))) {
        free(bin);
        return l->rc = rc;
    }
    if (p->dim != l->c->schema.dim)
        return 0;
    /* The saved graph holds every write up to its change counter (l->applied) and nothing
     * after. A point written later is re-inserted whatever its vector looks like: the graph's
     * slot was filled from storage by fetch_vector, so comparing vectors would always find them
     * equal and keep the links of the vector the point had when the graph was saved. */
    if (l->graph_loaded && p->seq <= l->applied && vd_index_get_vector(l->c->ix, &p->id, NULL) == 0)
        return 0;
    if ((rc = vd_index_upsert(l->c->ix, &p->id, p->vec, p->seq)))
        return l->rc = rc;
    return 0;
}

/* Rebuilds one declared payload index from the payloads just loaded. A declaration that cannot
 * be built (a key this version cannot read) is logged and skipped rather than failing the start:
 * searches stay correct without it. */
static int load_pindex(const char *field, uint8_t type, void *arg)
{
    struct load_ctx *l = arg;
    struct pidx_field *f;
    struct vd_err e;
    int rc = pidx_build(field, (enum vd_db_pindex_type)type, &l->c->pm, &f, &e);
    if (rc == 0 && (rc = pidx_put(&l->c->px, f)))
        pidx_field_free(f);
    if (rc == VD_ENOMEM)
        return rc;
    if (rc)
        vd_log_warn("collection '%s': payload index '%s' skipped: %s", l->c->schema.name, field,
                    e.msg);
    return 0;
}

static int load_collection(const struct vd_coll_schema *s, void *arg)
{
    struct vd_db *db = arg;
    struct vd_coll *c = coll_alloc(db, s);
    if (!c)
        return VD_ENOMEM;
    struct vd_index_params p = index_params(c, s);
    struct load_ctx l = {.c = c};
    uint64_t t0 = vd_mono_ns();
    int rc = vd_store_read_begin(db->store, &l.t);
    if (rc)
        goto out_free;
    rc = vd_index_load(c->index_path, &p, fetch_vector, &l, &c->ix);
    if (rc == 0) {
        l.applied = vd_index_applied_seq(c->ix);
        c->saved_seq = l.applied;
        l.graph_loaded = true;
        vd_log_info("collection '%s': loaded saved graph (%zu points, change %llu)", s->name,
                    vd_index_count(c->ix), (unsigned long long)l.applied);
    } else {
        if (rc != VD_ENOTFOUND)
            vd_log_warn("collection '%s': saved graph unusable (%s); rebuilding from storage",
                        s->name, vd_strerror(rc));
        if ((rc = vd_index_new(&p, &c->ix)))
            goto out_end;
    }
    rc = vd_store_scan(l.t, s->incarnation, NULL, false, load_point, &l);
    if (rc == 0)
        rc = l.rc;
    if (rc == 0 &&
        (rc = vd_store_pindex_list(l.t, s->incarnation, load_pindex, &l)) == VD_ECORRUPT) {
        /* the points are intact; serve them, filtered without the indexes not yet read */
        vd_log_warn("collection '%s': a payload index declaration is unreadable; skipped", s->name);
        rc = 0;
    }
    if (rc)
        goto out_end;
    vd_store_read_end(l.t);
    vd_log_info("collection '%s': %zu points ready in %.1f s (%zu to link in the background)",
                s->name, c->pm.count, (double)(vd_mono_ns() - t0) / 1e9, vd_index_pending(c->ix));
    if (table_add(db, c)) {
        vd__db_coll_unref(c);
        return VD_ENOMEM;
    }
    return 0;
out_end:
    vd_store_read_end(l.t);
out_free:
    vd__db_coll_unref(c);
    return rc;
}

/* ---- catching up after a write that could not be applied in memory ---- */

void vd__db_note_lag(struct vd_coll *c, uint64_t seq)
{
    uint64_t cur = atomic_load(&c->catchup_from);
    if (seq && (!cur || seq < cur))
        atomic_store(&c->catchup_from, seq);
}

struct catchup_ctx {
    struct vd_coll *c;
    struct vd_rtxn *t;
    int rc;
};

/* Re-applies one change from the log: the point as storage holds it now. */
static int catchup_change(uint64_t incarnation, const struct vd_pid *id, uint64_t seq, void *arg)
{
    struct catchup_ctx *k = arg;
    struct vd_coll *c = k->c;
    if (incarnation != c->schema.incarnation)
        return 0;
    struct vd_point_view v;
    int rc = vd_store_point_get(k->t, incarnation, id, &v);
    if (rc == 0 && v.seq != seq)
        return 0; /* a later change of this point comes up further on */
    if (rc == VD_ENOTFOUND || (rc == 0 && v.tombstone)) {
        vd_index_delete(c->ix, id, seq);
        vd__db_drop_payload(c, id);
        return 0;
    }
    if (rc)
        return k->rc = rc;
    uint8_t *bin;
    size_t blen;
    if (encode_payload_text(v.payload, v.payload_len, &bin, &blen) == VD_ENOMEM)
        return k->rc = VD_ENOMEM;
    if (v.dim == c->schema.dim && (rc = vd_index_upsert(c->ix, id, v.vec, v.seq)))
        goto out_free;
    if ((rc = vd__db_set_payload(c, id, bin, (uint32_t)blen)))
        goto out_free;
    vd_store_read_release_views(k->t);
    return 0;
out_free:
    free(bin);
    return k->rc = rc;
}

/* Re-applies the change log from the first write that failed to reach memory, under plock so
 * no newer write is applied in between; the write completions that wait meanwhile re-apply only
 * what storage already holds. On failure the point stays where it was and is retried later. */
static void catch_up(struct vd_coll *c)
{
    pthread_rwlock_wrlock(&c->plock);
    uint64_t from = atomic_load(&c->catchup_from);
    if (!from || atomic_load(&c->dropped)) {
        pthread_rwlock_unlock(&c->plock);
        return;
    }
    struct catchup_ctx k = {.c = c};
    int rc = vd_store_read_begin(c->db->store, &k.t);
    if (rc == 0) {
        rc = vd_store_changes_since(k.t, from - 1, catchup_change, &k);
        vd_store_read_end(k.t);
        if (rc == 0)
            rc = k.rc;
    }
    if (rc == 0)
        atomic_store(&c->catchup_from, 0);
    else
        atomic_store(&c->catchup_next_ns, vd_mono_ns() + 1000000000ull);
    pthread_rwlock_unlock(&c->plock);
    if (rc)
        vd_log_warn("collection '%s': catching up the index failed (%s); retrying",
                    c->schema.name, vd_strerror(rc));
    else
        vd_log_info("collection '%s': index caught up from change %llu", c->schema.name,
                    (unsigned long long)from);
}

static bool catchup_due(struct vd_coll *c)
{
    return atomic_load(&c->catchup_from) && vd_mono_ns() >= atomic_load(&c->catchup_next_ns);
}

/* ---- background index work ---- */

static atomic_bool linking_paused;

void vd_db_test_pause_linking(bool paused)
{
    atomic_store(&linking_paused, paused);
}

static struct vd_coll *next_work(struct vd_db *db, size_t *cursor)
{
    bool link = !atomic_load(&linking_paused);
    for (size_t k = 0; k < db->n_colls; k++) {
        struct vd_coll *c = db->colls[(*cursor + k) % db->n_colls];
        if ((link && vd_index_pending(c->ix) > 0) || catchup_due(c)) {
            *cursor = (*cursor + k + 1) % db->n_colls;
            atomic_fetch_add(&c->refs, 1);
            return c;
        }
    }
    return NULL;
}

/* Saves the graph of c if it changed since its last save, and moves c->durable_through up to
 * what the saved graph now holds. */
static void save_one(struct vd_coll *c)
{
    /* Read first: every change up to `through` reached the index (or catchup_from) before the
     * reads below, so the graph saved after them holds all of c's changes up to it. */
    uint64_t through = atomic_load(&c->db->applied_through);
    uint64_t seq = vd_index_applied_seq(c->ix);
    /* while catching up, the index's counter is past a write it lacks */
    if (atomic_load(&c->dropped) || atomic_load(&c->catchup_from))
        return;
    if (seq == c->saved_seq) {
        /* nothing since the last save: the file already holds every change of c up to now */
        c->durable_through = through;
        return;
    }
    uint64_t t0 = vd_mono_ns();
    int rc = vd_index_save(c->ix, c->index_path);
    if (rc) {
        vd_log_warn("collection '%s': saving the graph failed: %s", c->schema.name,
                    vd_strerror(rc));
        return;
    }
    c->saved_seq = seq;
    c->durable_through = through;
    c->last_save_ns = vd_mono_ns();
    vd_log_info("collection '%s': graph saved (%zu points) in %.2f s", c->schema.name,
                vd_index_count(c->ix), (double)(c->last_save_ns - t0) / 1e9);
}

/* Saves graphs that changed and were last saved long enough ago, then lets storage trim the
 * change log up to what every saved graph holds. A graph with points still unlinked waits for
 * them one more period at most: under steady writes the linkers may never catch up, and an
 * unsaved graph would keep the change log (and the file) growing; the points are saved as
 * pending and linked after a restart. Only worker 0 does this, so saves of one collection never
 * overlap. */
static void periodic_save(struct vd_db *db)
{
    if (!db->save_seconds)
        return;
    uint64_t now = vd_mono_ns(), period = (uint64_t)db->save_seconds * 1000000000ull;
    /* with no collection left, every entry belongs to a deleted one */
    uint64_t trim = atomic_load(&db->applied_through);
    size_t n;
    struct vd_coll **v = snapshot(db, &n);
    for (size_t i = 0; i < n; i++) {
        uint64_t age = now - v[i]->last_save_ns;
        if (age >= period && (vd_index_pending(v[i]->ix) == 0 || age >= 2 * period))
            save_one(v[i]);
        /* the log is shared by all collections: it can go only as far as the least saved */
        if (v[i]->durable_through < trim)
            trim = v[i]->durable_through;
    }
    snapshot_put(v, n);
    if (trim)
        vd_store_changes_trim(db->store, trim);
}

struct worker_arg {
    struct vd_db *db;
    unsigned idx;
};

static void *worker_main(void *arg)
{
    struct worker_arg *wa = arg;
    struct vd_db *db = wa->db;
    unsigned idx = wa->idx;
    free(wa);
    size_t cursor = idx;
    uint64_t last_check = vd_mono_ns();
    pthread_mutex_lock(&db->mu);
    while (!db->stopping) {
        struct vd_coll *c = next_work(db, &cursor);
        if (!c) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&db->work, &db->mu, &ts);
        } else {
            pthread_mutex_unlock(&db->mu);
            if (catchup_due(c))
                catch_up(c);
            if (!atomic_load(&c->dropped))
                vd_index_link_pending(c->ix, 32);
            vd__db_coll_unref(c);
            pthread_mutex_lock(&db->mu);
        }
        if (idx == 0 && vd_mono_ns() - last_check > 1000000000ull) {
            pthread_mutex_unlock(&db->mu);
            periodic_save(db);
            last_check = vd_mono_ns();
            pthread_mutex_lock(&db->mu);
        }
    }
    pthread_mutex_unlock(&db->mu);
    return NULL;
}

void vd__db_kick(struct vd_db *db)
{
    pthread_cond_signal(&db->work);
}

/* ---- open / close ---- */

int vd_db_open(const struct vd_db_opts *o, struct vd_db **out, struct vd_err *err)
{
    struct vd_db *db = calloc(1, sizeof *db);
    if (!db)
        return vd_errf(err, VD_ENOMEM, "out of memory");
    pthread_mutex_init(&db->mu, NULL);
    pthread_mutex_init(&db->hint_mu, NULL);
    pthread_cond_init(&db->work, NULL);
    db->dir = strdup(o->data_dir);
    db->save_seconds = o->index_save_seconds;
    atomic_init(&db->ready, false);
    int rc;
    if (!db->dir) {
        rc = vd_errf(err, VD_ENOMEM, "out of memory");
        goto out_free;
    }
    struct vd_store_opts so = {.dir = o->data_dir,
                               .no_sync = o->no_sync,
                               .hint_target_bytes = o->hint_target_bytes,
                               .hint_total_bytes = o->hint_total_bytes};
    if ((rc = vd_store_open(&so, &db->store, err)))
        goto out_free;
    db->node_id = vd_store_node_id(db->store);
    char *idir = NULL;
    if (asprintf(&idir, "%s/index", db->dir) < 0) {
        rc = vd_errf(err, VD_ENOMEM, "out of memory");
        goto out_close;
    }
    if (mkdir(idir, 0755) && errno != EEXIST) {
        rc = vd_errf(err, VD_EIO, "cannot create '%s': %s", idir, strerror(errno));
        free(idir);
        goto out_close;
    }
    free(idir);
    struct vd_rtxn *t;
    if ((rc = vd_store_read_begin(db->store, &t))) {
        vd_errf(err, rc, "cannot read storage: %s", vd_strerror(rc));
        goto out_close;
    }
    /* collect schemas first: loading opens its own read transactions */
    rc = vd_store_coll_list(t, load_collection, db);
    vd_store_read_end(t);
    if (rc) {
        vd_errf(err, rc, "loading collections failed: %s", vd_strerror(rc));
        goto out_colls;
    }
    unsigned nw = o->index_threads;
    if (!nw) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        nw = cpus > 2 ? (unsigned)cpus - 1 : 1;
    }
    db->workers = calloc(nw, sizeof *db->workers);
    for (unsigned i = 0; db->workers && i < nw; i++) {
        struct worker_arg *wa = malloc(sizeof *wa);
        if (!wa)
            break;
        wa->db = db;
        wa->idx = i;
        if (pthread_create(&db->workers[i], NULL, worker_main, wa)) {
            free(wa);
            break;
        }
        db->n_workers++;
    }
    if (db->n_workers == 0) {
        rc = vd_errf(err, VD_ENOMEM, "cannot start index threads");
        goto out_colls;
    }
    /* loading read every committed point into memory */
    atomic_store(&db->applied_through, vd_store_last_seq(db->store));
    atomic_store(&db->ready, true);
    *out = db;
    return 0;
out_colls:
    for (size_t i = 0; i < db->n_colls; i++)
        vd__db_coll_unref(db->colls[i]);
    free(db->colls);
    free(db->workers);
out_close:
    vd_store_close(db->store);
out_free:
    free(db->dir);
    free(db);
    return rc;
}

void vd_db_close(struct vd_db *db)
{
    if (!db)
        return;
    pthread_mutex_lock(&db->mu);
    db->stopping = true;
    pthread_cond_broadcast(&db->work);
    pthread_mutex_unlock(&db->mu);
    for (unsigned i = 0; i < db->n_workers; i++)
        pthread_join(db->workers[i], NULL);
    free(db->workers);
    /* storage first: its last write completions still touch the collections */
    vd_store_close(db->store);
    for (size_t i = 0; i < db->n_colls; i++) {
        /* Points still unlinked are not waited for: the saved graph keeps them as pending and
         * the next start links them. */
        save_one(db->colls[i]);
        vd__db_coll_unref(db->colls[i]);
    }
    free(db->colls);
    pthread_cond_destroy(&db->work);
    pthread_mutex_destroy(&db->mu);
    pthread_mutex_destroy(&db->hint_mu);
    free(db->dir);
    free(db);
}

bool vd_db_ready(const struct vd_db *db)
{
    return atomic_load(&db->ready);
}

uint64_t vd_db_node_id(const struct vd_db *db)
{
    return db->node_id;
}

/* ---- hints ---- */

struct hint_put {
    struct vd_wbatch b;
    struct vd_wop op;
    struct vd_db *db;
    uint64_t target;
    uint8_t rec[];
};

/* Counts a hint for target that was not stored: the target has missed a write for good, which
 * the cluster turns into "needs repair". */
static void hint_refused(struct vd_db *db, uint64_t target)
{
    pthread_mutex_lock(&db->hint_mu);
    size_t cap = sizeof db->refused / sizeof db->refused[0], i = 0;
    while (i < db->n_refused && db->refused[i].target != target)
        i++;
    if (i == db->n_refused && i < cap - 1) {
        db->refused[db->n_refused++].target = target;
    } else if (i == db->n_refused) { /* full: the last slot counts every other target */
        i = cap - 1;
        db->refused[i].target = 0;
        db->n_refused = cap;
    }
    db->refused[i].count++;
    pthread_mutex_unlock(&db->hint_mu);
}

void vd_db_hints_refused(struct vd_db *db, vd_db_hint_refused_fn fn, void *ctx)
{
    pthread_mutex_lock(&db->hint_mu);
    size_t n = db->n_refused;
    uint64_t t[64], k[64];
    for (size_t i = 0; i < n; i++) {
        t[i] = db->refused[i].target;
        k[i] = db->refused[i].count;
    }
    pthread_mutex_unlock(&db->hint_mu);
    for (size_t i = 0; i < n; i++)
        fn(t[i], k[i], ctx);
}

static void hint_done(struct vd_wbatch *b, int status, void *ctx)
{
    struct hint_put *h = ctx;
    if (status || h->op.over_cap)
        hint_refused(h->db, h->target);
    if (status)
        vd_log_warn("storage: a hint for node %llu was not stored: %s",
                    (unsigned long long)h->target, b->err.msg);
    else if (h->op.over_cap)
        vd_log_warn("storage: a hint for node %llu was dropped: the hint cap is reached",
                    (unsigned long long)h->target);
    free(h);
}

int vd_db_hint_put(struct vd_db *db, uint64_t target, const uint8_t *rec, size_t len,
                   struct vd_err *err)
{
    struct hint_put *h = malloc(sizeof *h + len);
    if (!h)
        return vd_errf(err, VD_ENOMEM, "out of memory");
    memcpy(h->rec, rec, len);
    h->db = db;
    h->target = target;
    h->op = (struct vd_wop){.kind = VD_WOP_HINT_PUT, .target = target, .rec = h->rec,
                            .rec_len = len};
    h->b = (struct vd_wbatch){.ops = &h->op, .n = 1, .done = hint_done, .ctx = h};
    int rc = vd_store_submit(db->store, &h->b);
    if (rc) {
        free(h);
        return vd_errf(err, rc, "storage is closed");
    }
    return 0;
}

int vd_db_hints_scan(struct vd_db *db, uint64_t target, const struct vd_hint_pos *after,
                     vd_store_hint_fn fn, void *ctx)
{
    struct vd_rtxn *t;
    int rc = vd_store_read_begin(db->store, &t);
    if (rc)
        return rc;
    rc = vd_store_hints_scan(t, target, after, fn, ctx);
    vd_store_read_end(t);
    return rc;
}

int vd_db_hint_totals(struct vd_db *db, vd_store_hint_total_fn fn, void *ctx)
{
    struct vd_rtxn *t;
    int rc = vd_store_read_begin(db->store, &t);
    if (rc)
        return rc;
    rc = vd_store_hint_totals(t, fn, ctx);
    vd_store_read_end(t);
    return rc;
}

struct rec_scan {
    vd_db_rec_fn fn;
    void *ctx;
};

static int rec_scan_cb(const struct vd_point_view *p, void *ctx)
{
    struct rec_scan *s = ctx;
    return s->fn(&p->id, p->rec, p->rec_len, s->ctx);
}

int vd_db_scan_records(struct vd_coll *c, const struct vd_pid *from, vd_db_rec_fn fn, void *ctx)
{
    struct vd_rtxn *t;
    int rc = vd_store_read_begin(c->db->store, &t);
    if (rc)
        return rc;
    struct rec_scan s = {fn, ctx};
    rc = vd_store_scan(t, c->schema.incarnation, from, true, rec_scan_cb, &s);
    vd_store_read_end(t);
    return rc;
}

struct hash_scan {
    const char *name;
    vd_db_hrec_fn fn;
    void *ctx;
};

static int hash_scan_cb(const struct vd_point_view *p, void *ctx)
{
    struct hash_scan *s = ctx;
    uint8_t key[VD_PID_KEY_MAX];
    size_t kl = vd_pid_encode(&p->id, key);
    return s->fn(&p->id, vd_place_hash(s->name, key, kl), (struct vd_version){p->version, p->node},
                 p->tombstone, p->rec, p->rec_len, s->ctx);
}

int vd_db_scan_hash(struct vd_coll *c, uint64_t start, uint64_t end, vd_db_hrec_fn fn, void *ctx)
{
    struct vd_rtxn *t;
    int rc = vd_store_read_begin(c->db->store, &t);
    if (rc)
        return rc;
    struct hash_scan s = {c->schema.name, fn, ctx};
    rc = vd_store_scan_hash_range(t, c->schema.incarnation, start, end, true, hash_scan_cb, &s);
    vd_store_read_end(t);
    return rc;
}

int vd_db_hints_delete(struct vd_db *db, uint64_t target, const struct vd_hint_pos *pos,
                       size_t n, struct vd_err *err)
{
    if (n == 0)
        return 0;
    struct vd_wop *ops = calloc(n, sizeof *ops);
    if (!ops)
        return vd_errf(err, VD_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        ops[i] = (struct vd_wop){.kind = VD_WOP_HINT_DELETE, .target = target,
                                 .incarnation = pos[i].incarnation, .hint_id = pos[i].id};
    struct vd_wbatch b = {.ops = ops, .n = n};
    int rc = vd_store_write(db->store, &b);
    if (rc)
        vd_errf(err, rc, "%s", b.err.msg);
    free(ops);
    return rc;
}

/* ---- collection create / delete ---- */

struct meta_op {
    struct vd_db *db;
    struct vd_wop op;
    struct vd_wbatch b;
    struct vd_coll_schema schema;
    char name[256];
    vd_db_done_fn done;
    void *ctx;
};

/* Submits m's one operation (kind and schema or name filled in) with fin as its completion, which
 * calls done and frees m. On failure frees m and returns the error. */
static int meta_submit(struct vd_db *db, struct meta_op *m,
                       void (*fin)(struct vd_wbatch *b, int status, void *arg), vd_db_done_fn done,
                       void *ctx, struct vd_err *err)
{
    m->db = db;
    m->b.ops = &m->op;
    m->b.n = 1;
    m->b.done = fin;
    m->b.ctx = m;
    m->done = done;
    m->ctx = ctx;
    int rc = vd_store_submit(db->store, &m->b);
    if (rc) {
        free(m);
        return vd_errf(err, rc, "cannot write: %s", vd_strerror(rc));
    }
    return 0;
}

static void create_done(struct vd_wbatch *b, int status, void *arg)
{
    struct meta_op *m = arg;
    struct vd_db *db = m->db;
    if (status == 0) {
        struct vd_coll *c = coll_alloc(db, &m->schema);
        struct vd_index_params p = index_params(c, &m->schema);
        if (!c || vd_index_new(&p, &c->ix)) {
            if (c)
                vd__db_coll_unref(c);
            status = vd_errf(&b->err, VD_ENOMEM, "out of memory creating collection");
        } else {
            unlink(c->index_path); /* a stale file of an older incarnation id: never trust it */
            if (table_add(db, c)) {
                vd__db_coll_unref(c);
                status = vd_errf(&b->err, VD_ENOMEM, "out of memory creating collection");
            }
        }
    }
    m->done(status, status ? &b->err : NULL, m->op.seq, m->ctx);
    free(m);
}

int vd_db_coll_create(struct vd_db *db, const struct vd_coll_schema *schema, vd_db_done_fn done,
                      void *ctx, struct vd_err *err)
{
    int rc = vd_db_check_name(schema->name, err);
    if (rc)
        return rc;
    struct vd_coll *existing;
    if (vd_db_coll_get(db, schema->name, &existing) == 0) {
        vd_db_coll_put(existing);
        return vd_errf(err, VD_EEXIST, "collection '%s' already exists", schema->name);
    }
    struct meta_op *m = calloc(1, sizeof *m);
    if (!m)
        return vd_errf(err, VD_ENOMEM, "out of memory");
    m->db = db;
    m->schema = *schema;
    /* A cluster passes the incarnation and creation time its state machine assigned, so every
     * node stores the same; a single node leaves them 0 and the store assigns them. */
    if (!m->schema.created_hlc)
        m->schema.created_hlc = vd_hlc_now();
    m->op.kind = VD_WOP_COLL_CREATE;
    m->op.schema = &m->schema;
    return meta_submit(db, m, create_done, done, ctx, err);
}

void vd_db_coll_schema_copy(struct vd_coll *c, struct vd_coll_schema *out)
{
    pthread_mutex_lock(&c->db->mu);
    *out = c->schema;
    pthread_mutex_unlock(&c->db->mu);
}

static void update_done(struct vd_wbatch *b, int status, void *arg)
{
    struct meta_op *m = arg;
    struct vd_coll *c;
    if (status == 0 && vd_db_coll_get(m->db, m->schema.name, &c) == 0) {
        if (c->schema.incarnation == m->schema.incarnation) {
            pthread_mutex_lock(&m->db->mu);
            c->schema.quant_enabled = m->schema.quant_enabled;
            c->schema.quant_quantile = m->schema.quant_quantile;
            c->schema.quant_always_ram = m->schema.quant_always_ram;
            pthread_mutex_unlock(&m->db->mu);
            struct vd_index_params p = index_params(c, &m->schema);
            int rc = vd_index_set_quant(c->ix, &p.quant);
            if (rc)
                status = vd_errf(&b->err, rc, "collection '%s': cannot quantize the index: %s",
                                 m->schema.name, vd_strerror(rc));
        }
        vd_db_coll_put(c);
    }
    m->done(status, status ? &b->err : NULL, m->op.seq, m->ctx);
    free(m);
}

int vd_db_coll_update(struct vd_db *db, const struct vd_coll_schema *schema, vd_db_done_fn done,
                      void *ctx, struct vd_err *err)
{
    struct vd_coll *c;
    if (vd_db_coll_get(db, schema->name, &c))
        return vd_errf(err, VD_ENOTFOUND, "collection '%s' not found", schema->name);
    vd_db_coll_put(c);
    struct meta_op *m = calloc(1, sizeof *m);
    if (!m)
        return vd_errf(err, VD_ENOMEM, "out of memory");
    m->db = db;
    m->schema = *schema;
    m->op.kind = VD_WOP_COLL_UPDATE;
    m->op.schema = &m->schema;
    return meta_submit(db, m, update_done, done, ctx, err);
}

static void delete_done(struct vd_wbatch *b, int status, void *arg)
{
    struct meta_op *m = arg;
    struct vd_db *db = m->db;
    if (status == 0) {
        struct vd_coll *gone = NULL;
        pthread_mutex_lock(&db->mu);
        for (size_t i = 0; i < db->n_colls; i++) {
            if (!strcmp(db->colls[i]->schema.name, m->name)) {
                gone = db->colls[i];
                db->colls[i] = db->colls[--db->n_colls];
                break;
            }
        }
        pthread_mutex_unlock(&db->mu);
        if (gone) {
            atomic_store(&gone->dropped, true);
            vd__db_coll_unref(gone);
        }
    }
    m->done(status, status ? &b->err : NULL, m->op.seq, m->ctx);
    free(m);
}

int vd_db_coll_delete(struct vd_db *db, const char *name, vd_db_done_fn done, void *ctx,
                      struct vd_err *err)
{
    struct vd_coll *c;
    if (vd_db_coll_get(db, name, &c))
        return vd_errf(err, VD_ENOTFOUND, "collection '%s' not found", name);
    vd_db_coll_put(c);
    struct meta_op *m = calloc(1, sizeof *m);
    if (!m)
        return vd_errf(err, VD_ENOMEM, "out of memory");
    m->db = db;
    snprintf(m->name, sizeof m->name, "%s", name);
    m->op.kind = VD_WOP_COLL_DELETE;
    m->op.coll_name = m->name;
    return meta_submit(db, m, delete_done, done, ctx, err);
}

void vd_db_metrics(struct vd_db *db, struct vd_buf *out)
{
    uint64_t ce = 0, cf = 0;
    struct vd_rtxn *t;
    if (vd_store_read_begin(db->store, &t) == 0) {
        int rc = vd_store_changes_stat(t, &ce, &cf);
        vd_store_read_end(t);
        if (rc == 0) {
            vd_buf_puts(out, "# HELP vectord_storage_change_log_entries Changes kept for the "
                             "index to catch up from (trimmed once the graphs are saved).\n"
                             "# TYPE vectord_storage_change_log_entries gauge\n");
            vd_buf_printf(out, "vectord_storage_change_log_entries %llu\n",
                          (unsigned long long)ce);
        }
    }
    struct vd_store_space sp;
    if (vd_store_stats(db->store, &sp) == 0) {
        vd_buf_puts(out, "# HELP vectord_storage_file_bytes Size of the data file.\n"
                         "# TYPE vectord_storage_file_bytes gauge\n");
        vd_buf_printf(out, "vectord_storage_file_bytes %llu\n", (unsigned long long)sp.file_bytes);
        vd_buf_puts(out, "# HELP vectord_storage_used_bytes Bytes of the data file in use (up to "
                         "the highest page written, free pages included).\n"
                         "# TYPE vectord_storage_used_bytes gauge\n");
        vd_buf_printf(out, "vectord_storage_used_bytes %llu\n", (unsigned long long)sp.used_bytes);
        vd_buf_puts(out, "# HELP vectord_storage_free_bytes Bytes of used pages on the free list, "
                         "reused for new writes before the file grows.\n"
                         "# TYPE vectord_storage_free_bytes gauge\n");
        vd_buf_printf(out, "vectord_storage_free_bytes %llu\n", (unsigned long long)sp.free_bytes);
    }
    /* each family in one group under its TYPE: exposition parsers refuse interleaved ones */
    static const char *const fams[3][2] = {
        {"vectord_collection_points", "Live points per collection."},
        {"vectord_collection_index_pending", "Points written and not yet linked into the graph."},
        {"vectord_collection_index_bytes", "Memory of the collection's index (vectors and links)."}};
    size_t n;
    struct vd_coll **v = snapshot(db, &n);
    struct vd_coll_stats *st = n ? calloc(n, sizeof *st) : NULL;
    for (size_t i = 0; st && i < n; i++)
        vd_db_coll_stats(v[i], &st[i]);
    for (int f = 0; f < 3; f++) {
        vd_buf_printf(out, "# HELP %s %s\n# TYPE %s gauge\n", fams[f][0], fams[f][1], fams[f][0]);
        for (size_t i = 0; st && i < n; i++) {
            unsigned long long x = f == 0   ? (unsigned long long)st[i].points
                                   : f == 1 ? (unsigned long long)st[i].pending
                                            : (unsigned long long)st[i].index_bytes;
            vd_buf_printf(out, "%s{collection=\"%s\"} %llu\n", fams[f][0], v[i]->schema.name, x);
        }
    }
    free(st);
    snapshot_put(v, n);
}
