/* The single writer thread: group commit of queued batches, map growth, background purge of
 * deleted collections. */
#include <errno.h>
#include <sys/statvfs.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "store_int.h"
#include "vectord/record.h"

#define PURGE_CHUNK 512         /* points (and payloads) deleted per purge transaction */
#define BG_EVERY_NS 50000000ULL /* under steady load, still run a background step this often */
#define MAP_MAX (1ULL << 46)    /* 64 TiB: beyond this MDB_MAP_FULL is reported as VD_EFULL */
#define GROW_RETRIES 8
#define TRIM_CHUNK 4096            /* change-log entries deleted per trim transaction */
#define SWEEP_CHUNK 2048           /* points examined per tombstone-sweep transaction */
#define SWEEP_INTERVAL_MS 60000ULL /* pause between sweep passes (at most grace / 2) */

/* Writer-thread state of one group transaction. */
struct group_ctx {
    bool map_full;      /* some LMDB call returned MDB_MAP_FULL: abort, grow, retry */
    uint64_t cache_inc; /* last incarnation checked live, its dimension and name */
    uint32_t cache_dim;
    char cache_name[256];
    int32_t purge_delta; /* change to purges_pending once committed */
    uint64_t max_hlc;    /* highest version HLC written in this group */
};

static int mdbck(struct group_ctx *g, int rc)
{
    if (rc == MDB_MAP_FULL)
        g->map_full = true;
    return vd__store_mdb_err(rc);
}

/* ---- submit / write ------------------------------------------------------------------------ */

int vd_store_submit(struct vd_store *s, struct vd_wbatch *b)
{
    vd_err_clear(&b->err);
    /* Outputs double as the writer's bookkeeping (see reset_outputs): start them clean. */
    for (size_t i = 0; i < b->n; i++) {
        b->ops[i].seq = 0;
        b->ops[i].applied = false;
        b->ops[i].conflict = false;
    }
    pthread_mutex_lock(&s->mu);
    if (s->closing) {
        pthread_mutex_unlock(&s->mu);
        return vd_errf(&b->err, VD_ECLOSED, "storage is closing");
    }
    if (s->q_len == s->q_cap) {
        size_t cap = s->q_cap ? s->q_cap * 2 : 64;
        struct vd_wbatch **nq = realloc(s->q, cap * sizeof *nq);
        if (!nq) {
            pthread_mutex_unlock(&s->mu);
            return vd_errf(&b->err, VD_ENOMEM, "out of memory queueing a write");
        }
        s->q = nq;
        s->q_cap = cap;
    }
    s->q[s->q_len++] = b;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

struct waiter {
    void (*user_done)(struct vd_wbatch *b, int status, void *ctx);
    void *user_ctx;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool finished;
    int status;
};

static void waiter_done(struct vd_wbatch *b, int status, void *ctx)
{
    struct waiter *w = ctx;
    b->done = w->user_done;
    b->ctx = w->user_ctx;
    if (b->done)
        b->done(b, status, b->ctx);
    /* Signal under the lock: the waiter cannot return and destroy w before we unlock. */
    pthread_mutex_lock(&w->mu);
    w->status = status;
    w->finished = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

int vd_store_write(struct vd_store *s, struct vd_wbatch *b)
{
    /* From a done callback this would wait for the very thread that runs it. */
    if (s->writer_started && pthread_equal(pthread_self(), s->writer))
        return vd_errf(&b->err, VD_EINTERNAL, "vd_store_write called on the storage writer thread");
    struct waiter w = {.user_done = b->done, .user_ctx = b->ctx};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    b->done = waiter_done;
    b->ctx = &w;
    int r = vd_store_submit(s, b);
    if (r == 0) {
        pthread_mutex_lock(&w.mu);
        while (!w.finished)
            pthread_cond_wait(&w.cv, &w.mu);
        pthread_mutex_unlock(&w.mu);
        r = w.status;
    } else {
        b->done = w.user_done;
        b->ctx = w.user_ctx;
    }
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    return r;
}

/* ---- applying operations ------------------------------------------------------------------- */

static bool valid_name(const char *n)
{
    size_t len = strnlen(n, 256);
    if (len == 0 || len > 255)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = n[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

static void meta_inc_key(uint8_t *k, char kind, uint64_t inc)
{
    k[0] = (uint8_t)kind;
    vd_be64_put(k + 1, inc);
}

/* Looks up the dimension and name of a live incarnation; VD_ENOTFOUND if none (never created,
 * deleted). */
static int live_dim(struct vd_store *s, MDB_txn *txn, struct group_ctx *g, uint64_t inc,
                    uint32_t *dim)
{
    if (inc && g->cache_inc == inc) {
        *dim = g->cache_dim;
        return 0;
    }
    int r = vd__store_live_get(s, txn, inc, dim, g->cache_name);
    if (r)
        return r;
    g->cache_inc = inc;
    g->cache_dim = *dim;
    return 0;
}

/* live_dim for an op of incarnation inc, with the error said for the caller. */
static int live_dim_of(struct vd_store *s, MDB_txn *txn, struct group_ctx *g, uint64_t inc,
                       uint32_t *dim, struct vd_err *err)
{
    int rc = live_dim(s, txn, g, inc, dim);
    if (rc == VD_ENOTFOUND)
        return vd_errf(err, rc, "collection incarnation %llu does not exist",
                       (unsigned long long)inc);
    if (rc)
        return vd_errf(err, rc, "reading collection: %s", vd_strerror(rc));
    return 0;
}

static void max_hlc(struct group_ctx *g, uint64_t hlc)
{
    if (hlc > g->max_hlc)
        g->max_hlc = hlc;
}

/* Deletes the change-log entry seq if it is the one of points key k. The log keeps one entry
 * per point, its latest change: a consumer reads the point's current state, so an older entry
 * would only be skipped, and keeping every write since the last graph save made the file grow
 * with the write rate times the save period instead of with the data. The entry may be gone
 * already (trimmed). */
static int drop_change(struct vd_store *s, MDB_txn *txn, uint64_t seq, const MDB_val *k)
{
    MDB_cursor *cur;
    uint8_t sk[8];
    vd_be64_put(sk, seq);
    MDB_val ck = {8, sk}, v;
    int rc = mdb_cursor_open(txn, s->dbi_changes, &cur);
    if (rc)
        return rc;
    rc = mdb_cursor_get(cur, &ck, &v, MDB_SET_KEY);
    if (rc == 0 && v.mv_size == k->mv_size && memcmp(v.mv_data, k->mv_data, v.mv_size) == 0)
        rc = mdb_cursor_del(cur, 0);
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Writes one whole record under the points key of (op->incarnation, op->id), keeping the newer
 * version; r is the decoded record, enc its encoding when the caller already has it (APPLY) or
 * NULL to encode r here. */
static int put_record(struct vd_store *s, MDB_txn *txn, struct group_ctx *g, struct vd_wop *op,
                      const struct vd_record *r, const uint8_t *enc, size_t enc_len,
                      struct vd_err *err)
{
    uint8_t kb[VD__PT_KEY_MAX];
    MDB_val k = {vd__store_pt_key(op->incarnation, &op->id, kb), kb}, cur;
    int rc = mdb_get(txn, s->dbi_points, &k, &cur);
    bool exists = rc == 0;
    if (rc && rc != MDB_NOTFOUND)
        return vd_errf(err, mdbck(g, rc), "reading point: %s", mdb_strerror(rc));
    struct vd_version old = {0, 0};
    bool tomb = false;
    if (exists && vd__store_pt_version(&cur, &old, &tomb))
        return vd_errf(err, VD_ECORRUPT, "stored point record is malformed");
    /* read now: the put below may move the page cur points into */
    uint64_t old_seq = exists ? vd__store_le64_get(cur.mv_data) : 0;
    if (op->if_version && (!exists || tomb || vd_version_cmp(old, op->expect) != 0)) {
        op->conflict = true; /* changed since it was read: the caller reads it again */
        return 0;
    }
    if (exists && vd_version_cmp(r->version, old) <= 0) {
        /* last-write-wins: the stored version is newer or the same write; a read-modify-write
         * must be newer than what it read, so for it this is a conflict too */
        op->conflict = op->if_version;
        return 0;
    }
    uint64_t seq = s->next_seq + 1;
    size_t len = enc ? enc_len : vd_record_size(r);
    MDB_val v = {VD__PT_SEQ + len, NULL};
    if ((rc = mdb_put(txn, s->dbi_points, &k, &v, MDB_RESERVE)))
        return vd_errf(err, mdbck(g, rc), "writing point: %s", mdb_strerror(rc));
    uint8_t *p = v.mv_data;
    vd__store_le64_put(p, seq);
    if (enc) {
        memcpy(p + VD__PT_SEQ, enc, len);
    } else if (vd_record_encode(r, p + VD__PT_SEQ, len, &len)) {
        /* the nested transaction is aborted with the batch: the reserved space goes too */
        char ids[VD_PID_STR_MAX];
        vd_pid_format(&op->id, ids);
        return vd_errf(err, VD_EINVAL, "point %s: the vector holds a non-finite value", ids);
    }
    if (!exists) { /* the hash of a key never changes: its ring entry is made once */
        uint8_t hk[VD__HK_MAX];
        MDB_val hkv = {vd__store_hash_key(op->incarnation, g->cache_name, &op->id, hk), hk},
                empty = {0, NULL};
        if ((rc = mdb_put(txn, s->dbi_hash, &hkv, &empty, 0)))
            return vd_errf(err, mdbck(g, rc), "writing hash entry: %s", mdb_strerror(rc));
    }
    uint8_t sk[8];
    if (exists && (rc = drop_change(s, txn, old_seq, &k)))
        return vd_errf(err, mdbck(g, rc), "updating change log: %s", mdb_strerror(rc));
    vd_be64_put(sk, seq);
    MDB_val ck = {8, sk};
    /* Keys only grow, so APPEND skips the search and fills pages completely. */
    if ((rc = mdb_put(txn, s->dbi_changes, &ck, &k, MDB_APPEND)))
        return vd_errf(err, mdbck(g, rc), "writing change log: %s", mdb_strerror(rc));
    max_hlc(g, r->version.hlc);
    s->next_seq = seq;
    op->seq = seq;
    op->applied = true;
    return 0;
}

/* VD_WOP_FORGET: removes the points row, its hash entry and its change-log entry, and logs the
 * key again under a new counter, as the change of a point that is now absent: the log keeps one
 * entry per stored point, and a consumer replaying it (a restart's index) finds the key gone and
 * drops it. */
static int forget_point(struct vd_store *s, MDB_txn *txn, struct group_ctx *g, struct vd_wop *op,
                        struct vd_err *err)
{
    uint32_t dim;
    int rc = live_dim_of(s, txn, g, op->incarnation, &dim, err);
    if (rc)
        return rc;
    uint8_t kb[VD__PT_KEY_MAX];
    MDB_val k = {vd__store_pt_key(op->incarnation, &op->id, kb), kb}, cur;
    rc = mdb_get(txn, s->dbi_points, &k, &cur);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return vd_errf(err, mdbck(g, rc), "reading point: %s", mdb_strerror(rc));
    struct vd_version old;
    bool tomb;
    if (vd__store_pt_version(&cur, &old, &tomb))
        return vd_errf(err, VD_ECORRUPT, "stored point record is malformed");
    if (vd_version_cmp(old, (struct vd_version){op->version, op->node}) != 0)
        return 0; /* changed since the caller read it: that version is not the caller's to drop */
    uint64_t old_seq = vd__store_le64_get(cur.mv_data);
    if ((rc = mdb_del(txn, s->dbi_points, &k, NULL)))
        return vd_errf(err, mdbck(g, rc), "deleting point: %s", mdb_strerror(rc));
    uint8_t hk[VD__HK_MAX];
    MDB_val hkv = {vd__store_hash_key(op->incarnation, g->cache_name, &op->id, hk), hk};
    rc = mdb_del(txn, s->dbi_hash, &hkv, NULL);
    if (rc && rc != MDB_NOTFOUND)
        return vd_errf(err, mdbck(g, rc), "deleting hash entry: %s", mdb_strerror(rc));
    if ((rc = drop_change(s, txn, old_seq, &k)))
        return vd_errf(err, mdbck(g, rc), "updating change log: %s", mdb_strerror(rc));
    uint64_t seq = s->next_seq + 1;
    uint8_t sk[8];
    vd_be64_put(sk, seq);
    MDB_val ck = {8, sk};
    if ((rc = mdb_put(txn, s->dbi_changes, &ck, &k, MDB_APPEND)))
        return vd_errf(err, mdbck(g, rc), "writing change log: %s", mdb_strerror(rc));
    s->next_seq = seq;
    op->seq = seq;
    op->applied = true;
    return 0;
}

static int apply_point(struct vd_store *s, MDB_txn *txn, struct group_ctx *g, struct vd_wop *op,
                       struct vd_err *err)
{
    char ids[VD_PID_STR_MAX];
    struct vd_record r;
    struct vd_rvec vecs[VD_RECORD_MAX_VECTORS];
    if (op->kind == VD_WOP_APPLY) {
        if (!op->rec || vd_record_decode(op->rec, op->rec_len, &r, vecs))
            return vd_errf(err, VD_EINVAL, "malformed point record");
        op->incarnation = r.incarnation;
        op->id = r.id;
        op->version = r.version.hlc;
        op->node = r.version.node;
    } else {
        r = (struct vd_record){.id = op->id,
                               .incarnation = op->incarnation,
                               .version = {op->version, op->node},
                               .tombstone = op->kind == VD_WOP_DELETE};
        if (op->kind == VD_WOP_UPSERT) {
            vecs[0] = (struct vd_rvec){.kind = VD_RVEC_DENSE, .n = op->dim, .values = op->vec};
            r.n_vectors = 1;
            r.vectors = vecs;
            r.payload = op->payload;
            r.payload_len = op->payload ? op->payload_len : 0;
        }
    }
    uint32_t dim = 0;
    int rc = live_dim_of(s, txn, g, op->incarnation, &dim, err);
    if (rc)
        return rc;
    if (!r.tombstone) {
        const struct vd_rvec *u = vd_record_vector(&r, "", 0);
        if (!u || u->kind != VD_RVEC_DENSE || u->n != dim || !u->values) {
            vd_pid_format(&op->id, ids);
            return vd_errf(err, VD_EINVAL,
                           "point %s: Vector dimension error: expected dim: %u, got %u", ids, dim,
                           u && u->values ? u->n : 0);
        }
    }
    if (op->kind == VD_WOP_APPLY)
        return put_record(s, txn, g, op, &r, op->rec, op->rec_len, err);
    return put_record(s, txn, g, op, &r, NULL, 0, err);
}

/* Marks on a COLL_CREATE op (kept in op->seq until the group commits) which schema fields the
 * store filled, so a failed or retried group can give the caller back its schema unchanged. */
#define SET_INC 1u
#define SET_HLC 2u

static int coll_create(struct vd_store *s, MDB_txn *txn, struct group_ctx *g, struct vd_wop *op,
                       struct vd_err *err)
{
    struct vd_coll_schema *c = op->schema;
    if (!c)
        return vd_errf(err, VD_EINVAL, "no schema given");
    if (!valid_name(c->name))
        return vd_errf(err, VD_ERANGE, "collection name must be 1 to 255 of [A-Za-z0-9_-]");
    if (c->dim < 1 || c->dim > 65536)
        return vd_errf(err, VD_ERANGE, "collection '%s': vector size %u is not in 1..65536",
                       c->name, c->dim);
    if (c->metric < VD_METRIC_COSINE || c->metric > VD_METRIC_MANHATTAN)
        return vd_errf(err, VD_ERANGE, "collection '%s': unknown distance %d", c->name,
                       (int)c->metric);
    size_t nl = strlen(c->name);
    MDB_val k = {nl, c->name}, v;
    int rc = mdb_get(txn, s->dbi_colls, &k, &v);
    if (rc == 0)
        return vd_errf(err, VD_EEXIST, "collection '%s' already exists", c->name);
    if (rc != MDB_NOTFOUND)
        return vd_errf(err, mdbck(g, rc), "reading collections: %s", mdb_strerror(rc));

    uint8_t mk[9];
    if (c->incarnation == 0) {
        /* Above every earlier one, and seeded from the clock so that two nodes creating a
         * collection independently are unlikely to pick the same number. */
        uint64_t now = vd_hlc_now();
        c->incarnation = s->last_inc + 1 > now ? s->last_inc + 1 : now;
        op->seq |= SET_INC;
    } else {
        for (int kind = 0; kind < 2; kind++) {
            meta_inc_key(mk, kind ? VD__META_PURGE : VD__META_LIVE, c->incarnation);
            MDB_val ik = {9, mk};
            rc = mdb_get(txn, s->dbi_meta, &ik, &v);
            if (rc == 0)
                return vd_errf(err, VD_EEXIST, "collection '%s': incarnation %llu already used",
                               c->name, (unsigned long long)c->incarnation);
            if (rc != MDB_NOTFOUND)
                return vd_errf(err, mdbck(g, rc), "reading meta: %s", mdb_strerror(rc));
        }
    }
    if (c->created_hlc == 0) {
        c->created_hlc = vd_hlc_now();
        op->seq |= SET_HLC;
    }
    max_hlc(g, c->created_hlc);
    uint8_t sb[VD__SCHEMA_MAX];
    v.mv_size = vd__store_schema_encode(c, sb);
    v.mv_data = sb;
    if ((rc = mdb_put(txn, s->dbi_colls, &k, &v, MDB_NOOVERWRITE)))
        return vd_errf(err, mdbck(g, rc), "writing collection: %s", mdb_strerror(rc));
    uint8_t lv[4 + 255];
    vd__store_le32_put(lv, c->dim);
    memcpy(lv + 4, c->name, nl);
    meta_inc_key(mk, VD__META_LIVE, c->incarnation);
    MDB_val ik = {9, mk}, iv = {4 + nl, lv};
    if ((rc = mdb_put(txn, s->dbi_meta, &ik, &iv, 0)))
        return vd_errf(err, mdbck(g, rc), "writing meta: %s", mdb_strerror(rc));
    if (c->incarnation > s->last_inc) {
        uint8_t b[8];
        vd__store_le64_put(b, c->incarnation);
        MDB_val lk = {strlen(VD__META_INC), VD__META_INC}, lvv = {8, b};
        if ((rc = mdb_put(txn, s->dbi_meta, &lk, &lvv, 0)))
            return vd_errf(err, mdbck(g, rc), "writing meta: %s", mdb_strerror(rc));
        s->last_inc = c->incarnation;
    }
    op->applied = true;
    return 0;
}

/* Whether two schemas differ only in their quantization config. */
static bool same_but_quant(const struct vd_coll_schema *a, const struct vd_coll_schema *b)
{
    return strcmp(a->name, b->name) == 0 && a->dim == b->dim && a->metric == b->metric &&
           a->hnsw_m == b->hnsw_m && a->hnsw_ef_construct == b->hnsw_ef_construct &&
           a->full_scan_threshold_kb == b->full_scan_threshold_kb &&
           a->replication_factor == b->replication_factor &&
           a->write_consistency_factor == b->write_consistency_factor &&
           a->incarnation == b->incarnation && a->created_hlc == b->created_hlc;
}

static int coll_update(struct vd_store *s, MDB_txn *txn, struct group_ctx *g, struct vd_wop *op,
                       struct vd_err *err)
{
    const struct vd_coll_schema *c = op->schema;
    if (!c)
        return vd_errf(err, VD_EINVAL, "no schema given");
    size_t nl = strnlen(c->name, sizeof c->name);
    if (nl == 0 || nl > 255)
        return vd_errf(err, VD_ENOTFOUND, "collection '%s' not found", c->name);
    MDB_val k = {nl, (void *)c->name}, v;
    int rc = mdb_get(txn, s->dbi_colls, &k, &v);
    if (rc == MDB_NOTFOUND)
        return vd_errf(err, VD_ENOTFOUND, "collection '%s' not found", c->name);
    if (rc)
        return vd_errf(err, mdbck(g, rc), "reading collections: %s", mdb_strerror(rc));
    struct vd_coll_schema old;
    int r = vd__store_schema_decode(&v, &old);
    if (r)
        return vd_errf(err, r, "collection '%s': stored schema is malformed", c->name);
    if (old.incarnation != c->incarnation)
        return vd_errf(err, VD_ENOTFOUND, "collection '%s' (incarnation %llu) not found", c->name,
                       (unsigned long long)c->incarnation);
    if (!same_but_quant(&old, c))
        return vd_errf(err, VD_EINVAL,
                       "collection '%s': only the quantization config can be changed", c->name);
    if (c->quant_enabled && c->quant_quantile != 0.0f &&
        !(c->quant_quantile >= 0.5f && c->quant_quantile <= 1.0f))
        return vd_errf(err, VD_ERANGE, "collection '%s': quantile %g is not in 0.5..1", c->name,
                       (double)c->quant_quantile);
    uint8_t sb[VD__SCHEMA_MAX];
    MDB_val nv = {vd__store_schema_encode(c, sb), sb};
    if ((rc = mdb_put(txn, s->dbi_colls, &k, &nv, 0)))
        return vd_errf(err, mdbck(g, rc), "writing collection: %s", mdb_strerror(rc));
    op->applied = true;
    return 0;
}

static int coll_delete(struct vd_store *s, MDB_txn *txn, struct group_ctx *g, struct vd_wop *op,
                       struct vd_err *err)
{
    const char *name = op->coll_name ? op->coll_name : "";
    size_t nl = strlen(name);
    if (nl == 0 || nl > 255)
        return vd_errf(err, VD_ENOTFOUND, "collection '%s' not found", name);
    MDB_val k = {nl, (void *)name}, v;
    int rc = mdb_get(txn, s->dbi_colls, &k, &v);
    if (rc == MDB_NOTFOUND)
        return vd_errf(err, VD_ENOTFOUND, "collection '%s' not found", name);
    if (rc)
        return vd_errf(err, mdbck(g, rc), "reading collections: %s", mdb_strerror(rc));
    struct vd_coll_schema c;
    int r = vd__store_schema_decode(&v, &c);
    if (r)
        return vd_errf(err, r, "collection '%s': stored schema is malformed", name);
    if ((rc = mdb_del(txn, s->dbi_colls, &k, NULL)))
        return vd_errf(err, mdbck(g, rc), "deleting collection: %s", mdb_strerror(rc));
    uint8_t mk[9];
    meta_inc_key(mk, VD__META_LIVE, c.incarnation);
    MDB_val ik = {9, mk}, empty = {0, ""};
    rc = mdb_del(txn, s->dbi_meta, &ik, NULL);
    if (rc && rc != MDB_NOTFOUND)
        return vd_errf(err, mdbck(g, rc), "writing meta: %s", mdb_strerror(rc));
    /* The points go later, in small transactions: deleting millions in this one would hold the
     * writer (and every other collection's writes) for a long time and grow the file. */
    meta_inc_key(mk, VD__META_PURGE, c.incarnation);
    if ((rc = mdb_put(txn, s->dbi_meta, &ik, &empty, 0)))
        return vd_errf(err, mdbck(g, rc), "writing meta: %s", mdb_strerror(rc));
    g->purge_delta++;
    /* the few index declarations go now: a re-created name must start without them */
    uint8_t pk[8];
    vd_be64_put(pk, c.incarnation);
    MDB_cursor *cur;
    if ((rc = mdb_cursor_open(txn, s->dbi_pindex, &cur)))
        return vd_errf(err, mdbck(g, rc), "reading payload indexes: %s", mdb_strerror(rc));
    MDB_val xk = {8, pk}, xv;
    for (rc = mdb_cursor_get(cur, &xk, &xv, MDB_SET_RANGE);
         rc == 0 && xk.mv_size >= 8 && memcmp(xk.mv_data, pk, 8) == 0;
         rc = mdb_cursor_get(cur, &xk, &xv, MDB_NEXT))
        if ((rc = mdb_cursor_del(cur, 0)))
            break;
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        return vd_errf(err, mdbck(g, rc), "deleting payload indexes: %s", mdb_strerror(rc));
    op->applied = true;
    return 0;
}

/* PINDEX_PUT and PINDEX_DELETE: one row per declared index, keyed by incarnation and name. */
static int pindex_op(struct vd_store *s, MDB_txn *txn, struct group_ctx *g, struct vd_wop *op,
                     struct vd_err *err)
{
    const char *name = op->field ? op->field : "";
    size_t nl = strlen(name);
    if (nl == 0 || nl > VD_STORE_PINDEX_NAME_MAX)
        return vd_errf(err, VD_ERANGE, "field name must be 1 to %d bytes, got %zu",
                       VD_STORE_PINDEX_NAME_MAX, nl);
    uint32_t dim;
    int r = live_dim_of(s, txn, g, op->incarnation, &dim, err);
    if (r)
        return r;
    uint8_t kb[8 + VD_STORE_PINDEX_NAME_MAX];
    vd_be64_put(kb, op->incarnation);
    memcpy(kb + 8, name, nl);
    MDB_val k = {8 + nl, kb};
    int rc;
    if (op->kind == VD_WOP_PINDEX_PUT) {
        if (op->field_type == 0)
            return vd_errf(err, VD_EINVAL, "payload index '%s': no type given", name);
        uint8_t vb[2] = {1, op->field_type};
        MDB_val v = {2, vb};
        rc = mdb_put(txn, s->dbi_pindex, &k, &v, 0);
    } else {
        rc = mdb_del(txn, s->dbi_pindex, &k, NULL);
        if (rc == MDB_NOTFOUND)
            return vd_errf(err, VD_ENOTFOUND, "payload index '%s' not found", name);
    }
    if (rc)
        return vd_errf(err, mdbck(g, rc), "writing payload index: %s", mdb_strerror(rc));
    op->applied = true;
    return 0;
}

static int apply_batch(struct vd_store *s, MDB_txn *txn, struct group_ctx *g, struct vd_wbatch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        struct vd_wop *op = &b->ops[i];
        int r;
        switch (op->kind) {
        case VD_WOP_UPSERT:
        case VD_WOP_DELETE:
        case VD_WOP_APPLY:
            r = apply_point(s, txn, g, op, &b->err);
            break;
        case VD_WOP_COLL_CREATE:
            g->cache_inc = 0;
            r = coll_create(s, txn, g, op, &b->err);
            break;
        case VD_WOP_COLL_DELETE:
            g->cache_inc = 0;
            r = coll_delete(s, txn, g, op, &b->err);
            break;
        case VD_WOP_COLL_UPDATE:
            r = coll_update(s, txn, g, op, &b->err);
            break;
        case VD_WOP_PINDEX_PUT:
        case VD_WOP_PINDEX_DELETE:
            r = pindex_op(s, txn, g, op, &b->err);
            break;
        case VD_WOP_FORGET:
            r = forget_point(s, txn, g, op, &b->err);
            break;
        case VD_WOP_HINT_PUT:
        case VD_WOP_HINT_DELETE:
            r = vd__store_hint_op(s, txn, op, &b->err);
            if (r == VD_EFULL)
                g->map_full = true; /* the only way a hint op fails full: grow and retry */
            break;
        default:
            r = vd_errf(&b->err, VD_EINVAL, "unknown write operation %d", (int)op->kind);
        }
        if (r) {
            if (b->n > 1)
                vd_err_prefix(&b->err, "operation %zu", i);
            return r;
        }
    }
    return 0;
}

/* Gives the caller back its ops as submitted (outputs cleared, store-filled schema fields
 * reset): after a failed batch, or before retrying a group. */
static void reset_outputs(struct vd_wbatch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        struct vd_wop *op = &b->ops[i];
        if (op->kind == VD_WOP_COLL_CREATE && op->schema) {
            if (op->seq & SET_INC)
                op->schema->incarnation = 0;
            if (op->seq & SET_HLC)
                op->schema->created_hlc = 0;
        }
        if (op->kind == VD_WOP_HINT_PUT)
            op->hint_id = 0;
        op->seq = 0;
        op->applied = false;
        op->conflict = false;
        op->over_cap = false;
    }
}

static void finish_outputs(struct vd_wbatch *b)
{
    for (size_t i = 0; i < b->n; i++)
        if (b->ops[i].kind == VD_WOP_COLL_CREATE || b->ops[i].kind == VD_WOP_COLL_DELETE ||
            b->ops[i].kind == VD_WOP_COLL_UPDATE)
            b->ops[i].seq = 0;
}

/* Doubles the map. Waits until no read transaction is open (mdb_env_set_mapsize requires it)
 * while new readers wait in vd_store_read_begin. */
static int grow_map(struct vd_store *s)
{
    uint64_t want = s->map_size * 2;
    if (want > MAP_MAX || want < s->map_size)
        return VD_EFULL;
    pthread_mutex_lock(&s->rd_mu);
    s->resizing = true;
    while (s->readers > 0)
        pthread_cond_wait(&s->rd_cv, &s->rd_mu);
    int rc = mdb_env_set_mapsize(s->env, want);
    s->resizing = false;
    pthread_cond_broadcast(&s->rd_cv);
    pthread_mutex_unlock(&s->rd_mu);
    if (rc) {
        vd_log_error("storage: cannot grow the map to %llu bytes: %s", (unsigned long long)want,
                     mdb_strerror(rc));
        return VD_EFULL;
    }
    s->map_size = want;
    pthread_mutex_lock(&s->mu);
    s->ctr.map_grows++;
    s->ctr.map_size = want;
    pthread_mutex_unlock(&s->mu);
    vd_log_info("storage: map grown to %llu bytes", (unsigned long long)want);
    return 0;
}

static void fail_all(struct vd_wbatch **bs, size_t n, int code, const char *msg)
{
    for (size_t i = 0; i < n; i++) {
        if (bs[i]->err.code == 0)
            vd_errf(&bs[i]->err, code, "%s", msg);
        reset_outputs(bs[i]);
    }
}

/* Below this much free space a failed commit is taken for a full disk. */
#define FULL_SLACK (1u << 20)

/* Whether the filesystem of the data file is (nearly) out of space. LMDB reports a short write,
 * which is what a disk filling up in the middle of a commit gives, as EIO rather than ENOSPC;
 * a short write is found before the fsync and the meta page, so it leaves nothing behind. */
static bool disk_full(struct vd_store *s)
{
    mdb_filehandle_t fd;
    struct statvfs st;
    if (mdb_env_get_fd(s->env, &fd) || fstatvfs(fd, &st))
        return false;
    return (uint64_t)st.f_bavail * st.f_frsize < FULL_SLACK;
}

/* Writes val (u64 LE) under the meta key `key`; an LMDB code (MDB_MAP_FULL also marks g). */
static int put_meta_u64(struct vd_store *s, MDB_txn *txn, struct group_ctx *g, const char *key,
                        uint64_t val)
{
    uint8_t v8[8];
    vd__store_le64_put(v8, val);
    MDB_val k = {strlen(key), (void *)key}, v = {8, v8};
    int rc = mdb_put(txn, s->dbi_meta, &k, &v, 0);
    mdbck(g, rc);
    return rc;
}

/* Applies a group of batches in one transaction (each in its own nested transaction) and commits
 * once. On return every batch's err.code holds its status. */
static void run_group(struct vd_store *s, struct vd_wbatch **bs, size_t n, int sticky)
{
    const uint64_t committed_seq = s->next_seq, committed_inc = s->last_inc;
    char msg[300];
    int rc = 0;
    if (sticky) {
        fail_all(bs, n, VD_EIO,
                 "storage failed to commit earlier; writes are refused until restart");
        return;
    }
    for (int attempt = 0;; attempt++) {
        struct group_ctx g = {0};
        MDB_txn *txn;
        bool any = false;
        s->next_seq = committed_seq;
        s->last_inc = committed_inc;
        for (size_t i = 0; i < n; i++) {
            vd_err_clear(&bs[i]->err);
            reset_outputs(bs[i]);
        }
        rc = mdb_txn_begin(s->env, NULL, 0, &txn);
        if (rc) {
            snprintf(msg, sizeof msg, "storage: begin write: %s", mdb_strerror(rc));
            goto out_fail;
        }
        for (size_t i = 0; i < n && !g.map_full; i++) {
            struct vd_wbatch *b = bs[i];
            MDB_txn *child;
            uint64_t seq0 = s->next_seq, inc0 = s->last_inc;
            int32_t purge0 = g.purge_delta;
            if ((rc = mdb_txn_begin(s->env, txn, 0, &child))) {
                mdbck(&g, rc);
                vd_errf(&b->err, vd__store_mdb_err(rc), "storage: begin: %s", mdb_strerror(rc));
                continue;
            }
            int r = apply_batch(s, child, &g, b);
            if (r == 0 && (rc = mdb_txn_commit(child)))
                r = vd_errf(&b->err, mdbck(&g, rc), "storage: %s", mdb_strerror(rc));
            else if (r)
                mdb_txn_abort(child);
            if (r) {
                s->next_seq = seq0;
                s->last_inc = inc0;
                g.purge_delta = purge0;
                g.cache_inc = 0;
                reset_outputs(b);
            } else {
                any = true;
            }
        }
        if (!g.map_full && any && s->next_seq != committed_seq &&
            (rc = put_meta_u64(s, txn, &g, VD__META_SEQ, s->next_seq)) && !g.map_full) {
            mdb_txn_abort(txn);
            snprintf(msg, sizeof msg, "storage: writing counter: %s", mdb_strerror(rc));
            goto out_fail;
        }
        /* The floor goes with the versions it covers: in the same commit, so after a restart
         * no version the clock hands out again can be at or below one already on disk. A
         * failed batch's HLC may count too: a floor a little high is harmless. */
        if (!g.map_full && any && g.max_hlc > s->hlc_floor &&
            (rc = put_meta_u64(s, txn, &g, VD__META_HLC, g.max_hlc)) && !g.map_full) {
            mdb_txn_abort(txn);
            snprintf(msg, sizeof msg, "storage: writing HLC floor: %s", mdb_strerror(rc));
            goto out_fail;
        }
        if (!g.map_full) {
            rc = any ? mdb_txn_commit(txn) : (mdb_txn_abort(txn), 0);
            if (rc == 0) {
                if (any && g.max_hlc > s->hlc_floor)
                    s->hlc_floor = g.max_hlc;
                pthread_mutex_lock(&s->mu);
                s->last_seq = s->next_seq;
                if (any)
                    s->ctr.commits++;
                s->ctr.purges_pending += (uint32_t)g.purge_delta;
                pthread_mutex_unlock(&s->mu);
                for (size_t i = 0; i < n; i++)
                    if (bs[i]->err.code == 0)
                        finish_outputs(bs[i]);
                return;
            }
            if (rc == ENOSPC || (rc == EIO && disk_full(s))) {
                rc = ENOSPC;
                /* A full disk refuses the write of a new page before the fsync and before the
                 * meta page that would reference it (the file only grows on writes of new
                 * pages), so the committed state on disk is the previous one and the aborted
                 * transaction left nothing behind: later groups may try again once space is
                 * freed. */
                snprintf(msg, sizeof msg,
                         "storage: the disk is full; the write was not committed (free space "
                         "and retry)");
                vd_log_error("%s", msg);
                pthread_mutex_lock(&s->mu);
                s->ctr.failed_commits++;
                pthread_mutex_unlock(&s->mu);
                goto out_fail;
            }
            if (rc != MDB_MAP_FULL) {
                /* The file may hold pages the kernel failed to write; what the page cache now
                 * says can no longer be trusted to match the disk, so stop writing. */
                snprintf(msg, sizeof msg, "storage: commit failed, write not durable: %s",
                         mdb_strerror(rc));
                vd_log_error("%s; refusing further writes until restart", msg);
                pthread_mutex_lock(&s->mu);
                s->failed = VD_EIO;
                s->ctr.failed_commits++;
                pthread_mutex_unlock(&s->mu);
                goto out_fail;
            }
        } else {
            mdb_txn_abort(txn);
        }
        if (attempt >= GROW_RETRIES || grow_map(s) != 0) {
            snprintf(msg, sizeof msg, "storage is full: the map cannot grow beyond %llu bytes",
                     (unsigned long long)s->map_size);
            rc = MDB_MAP_FULL;
            goto out_fail;
        }
    }

out_fail:
    s->next_seq = committed_seq;
    s->last_inc = committed_inc;
    /* A batch that failed on its own keeps its own error; the rest share the group's. */
    int code = rc == MDB_MAP_FULL || rc == ENOSPC ? VD_EFULL : VD_EIO;
    for (size_t i = 0; i < n; i++) {
        if (bs[i]->err.code == 0 || rc == MDB_MAP_FULL)
            vd_errf(&bs[i]->err, code, "%s", msg);
        reset_outputs(bs[i]);
    }
}

/* ---- purge --------------------------------------------------------------------------------- */

int vd__store_count_purges(struct vd_store *s, MDB_txn *txn, uint32_t *out)
{
    MDB_cursor *cur;
    uint8_t kb[1] = {VD__META_PURGE};
    MDB_val k = {1, kb}, v;
    int rc = mdb_cursor_open(txn, s->dbi_meta, &cur);
    if (rc)
        return vd__store_mdb_err(rc);
    *out = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 9 || ((uint8_t *)k.mv_data)[0] != VD__META_PURGE)
            break;
        (*out)++;
    }
    mdb_cursor_close(cur);
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : vd__store_mdb_err(rc);
}

/* Deletes up to `max` keys of `dbi` starting with the 8-byte prefix; returns how many, or -1 with
 * the LMDB or errno code in *err. */
static long delete_prefix(MDB_txn *txn, MDB_dbi dbi, const uint8_t *prefix, long max, int *err)
{
    MDB_cursor *cur;
    uint8_t kb[8];
    memcpy(kb, prefix, 8);
    MDB_val k = {8, kb}, v;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc)
        return *err = rc, -1;
    long n = 0;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && n < max && k.mv_size >= 8 && memcmp(k.mv_data, prefix, 8) == 0) {
        if ((rc = mdb_cursor_del(cur, 0)))
            break;
        n++;
        /* Seek again rather than rely on where a delete leaves the cursor at a page end. */
        k.mv_size = 8;
        k.mv_data = kb;
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    }
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        return *err = rc, -1;
    return n;
}

/* One purge step: deletes a chunk of the first deleted incarnation's points and hash entries, and
 * forgets the incarnation once nothing is left. */
static int purge_chunk(struct vd_store *s)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc)
        return VD_EIO;
    uint8_t kb[1] = {VD__META_PURGE};
    MDB_val k = {1, kb}, v;
    if ((rc = mdb_cursor_open(txn, s->dbi_meta, &cur)))
        goto out_abort;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    if (rc || k.mv_size != 9 || ((uint8_t *)k.mv_data)[0] != VD__META_PURGE) {
        mdb_cursor_close(cur);
        mdb_txn_abort(txn);
        pthread_mutex_lock(&s->mu); /* nothing left: the counter was off (should not happen) */
        s->ctr.purges_pending = 0;
        pthread_cond_broadcast(&s->idle_cv);
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    uint8_t mk[9];
    memcpy(mk, k.mv_data, 9);
    mdb_cursor_close(cur);
    long np = delete_prefix(txn, s->dbi_points, mk + 1, PURGE_CHUNK, &rc);
    long nl = np < 0 ? -1 : delete_prefix(txn, s->dbi_hash, mk + 1, PURGE_CHUNK, &rc);
    long nh = nl < 0 ? -1 : vd__store_hints_purge(s, txn, vd_be64_get(mk + 1), PURGE_CHUNK, &rc);
    if (np < 0 || nl < 0 || nh < 0)
        goto out_abort;
    bool done = np == 0 && nl == 0 && nh == 0;
    if (done) {
        MDB_val ik = {9, mk};
        if ((rc = mdb_del(txn, s->dbi_meta, &ik, NULL)))
            goto out_abort;
    }
    if ((rc = mdb_txn_commit(txn))) {
        if (rc == MDB_MAP_FULL)
            return grow_map(s);
        vd_log_warn("storage: purge commit failed: %s", mdb_strerror(rc));
        return VD_EIO;
    }
    pthread_mutex_lock(&s->mu);
    s->ctr.purged_points += (uint64_t)np;
    if (done && s->ctr.purges_pending > 0 && --s->ctr.purges_pending == 0)
        pthread_cond_broadcast(&s->idle_cv);
    pthread_mutex_unlock(&s->mu);
    return 0;

out_abort:
    mdb_txn_abort(txn);
    if (rc == MDB_MAP_FULL)
        return grow_map(s);
    vd_log_warn("storage: purge failed: %s", mdb_strerror(rc));
    return VD_EIO;
}

/* ---- change log trim ----------------------------------------------------------------------- */

int vd_store_changes_trim(struct vd_store *s, uint64_t upto)
{
    pthread_mutex_lock(&s->mu);
    if (s->closing) {
        pthread_mutex_unlock(&s->mu);
        return VD_ECLOSED;
    }
    if (upto > s->last_seq)
        upto = s->last_seq;
    if (upto > s->trim_upto) {
        s->trim_upto = upto;
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* Deletes a chunk of change-log entries with seq <= upto. */
static int trim_chunk(struct vd_store *s, uint64_t upto)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    MDB_val k, v;
    long n = 0;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc)
        return VD_EIO;
    if ((rc = mdb_cursor_open(txn, s->dbi_changes, &cur)))
        goto out_abort;
    while ((rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0 && n < TRIM_CHUNK && k.mv_size == 8 &&
           vd_be64_get(k.mv_data) <= upto) {
        if ((rc = mdb_cursor_del(cur, 0)))
            break;
        n++;
    }
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        goto out_abort;
    if ((rc = mdb_txn_commit(txn)))
        return rc == MDB_MAP_FULL ? grow_map(s) : VD_EIO;
    if (n < TRIM_CHUNK) {
        pthread_mutex_lock(&s->mu);
        if (upto > s->trim_done)
            s->trim_done = upto;
        pthread_mutex_unlock(&s->mu);
    }
    return 0;

out_abort:
    mdb_txn_abort(txn);
    if (rc == MDB_MAP_FULL)
        return grow_map(s);
    vd_log_warn("storage: change log trim failed: %s", mdb_strerror(rc));
    return VD_EIO;
}

/* ---- tombstone sweep ----------------------------------------------------------------------- */

void vd_store_set_tombstone_grace(struct vd_store *s, uint64_t grace_ms)
{
    pthread_mutex_lock(&s->mu);
    s->tomb_grace_ms = grace_ms;
    s->sweep_next_ns = 0; /* start a pass now */
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Removes the points_by_hash entry of the points key kb[kl]. Only a live incarnation has a name
 * to hash; a purging one loses its entries with its points. */
static int del_hash_entry(struct vd_store *s, MDB_txn *txn, const uint8_t *kb, size_t kl)
{
    char name[256];
    struct vd_pid id;
    if (vd_pid_decode(kb + 8, kl - 8, &id))
        return 0;
    int r = vd__store_live_get(s, txn, vd_be64_get(kb), NULL, name);
    if (r)
        return r == VD_ENOTFOUND || r == VD_ECORRUPT ? 0 : MDB_PANIC;
    uint8_t hk[VD__HK_MAX];
    MDB_val k = {vd__store_hash_key(vd_be64_get(kb), name, &id, hk), hk};
    int rc = mdb_del(txn, s->dbi_hash, &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* One step of a pass over the points table: deletes tombstones whose HLC time is older than the
 * grace period, resuming where the previous step stopped. A pass ends at the table's end and the
 * next starts after SWEEP_INTERVAL (or half the grace period if shorter). */
static int sweep_chunk(struct vd_store *s, uint64_t grace_ms)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    MDB_val k, v;
    long seen = 0, del = 0;
    uint64_t now_ms = vd_wall_ms(), cutoff = now_ms > grace_ms ? now_ms - grace_ms : 0;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc)
        return VD_EIO;
    if ((rc = mdb_cursor_open(txn, s->dbi_points, &cur)))
        goto out_abort;
    if (s->sweep_klen) {
        k.mv_size = s->sweep_klen;
        k.mv_data = s->sweep_key;
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    } else {
        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    }
    while (rc == 0 && seen < SWEEP_CHUNK) {
        struct vd_version ver;
        bool tomb = false;
        seen++;
        if (vd__store_pt_version(&v, &ver, &tomb) == 0 && tomb &&
            VD_HLC_PHYS(ver.hlc) < cutoff && k.mv_size <= VD__PT_KEY_MAX && k.mv_size > 8) {
            uint8_t kb[VD__PT_KEY_MAX];
            size_t kl = k.mv_size;
            memcpy(kb, k.mv_data, kl);
            if ((rc = mdb_cursor_del(cur, 0)) || (rc = del_hash_entry(s, txn, kb, kl)))
                break;
            del++;
            /* Seek past the deleted key rather than rely on where a delete leaves the cursor. */
            k.mv_size = kl;
            k.mv_data = kb;
            rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        } else {
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
    }
    bool pass_done = rc == MDB_NOTFOUND;
    if (rc == 0 && k.mv_size <= VD__PT_KEY_MAX) {
        memcpy(s->sweep_key, k.mv_data, k.mv_size);
        s->sweep_klen = k.mv_size;
    }
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        goto out_abort;
    if ((rc = del ? mdb_txn_commit(txn) : (mdb_txn_abort(txn), 0)))
        return rc == MDB_MAP_FULL ? grow_map(s) : VD_EIO;
    pthread_mutex_lock(&s->mu);
    s->ctr.tombstones_purged += (uint64_t)del;
    if (pass_done) {
        uint64_t every = grace_ms / 2 < SWEEP_INTERVAL_MS ? grace_ms / 2 : SWEEP_INTERVAL_MS;
        s->sweep_klen = 0;
        s->sweep_active = false;
        s->sweep_next_ns = vd_mono_ns() + (every < 1000 ? 1000 : every) * 1000000ull;
        s->ctr.sweep_passes++;
    }
    pthread_mutex_unlock(&s->mu);
    return 0;

out_abort:
    mdb_txn_abort(txn);
    if (rc == MDB_MAP_FULL)
        return grow_map(s);
    vd_log_warn("storage: tombstone sweep failed: %s", mdb_strerror(rc));
    return VD_EIO;
}

/* ---- the thread ---------------------------------------------------------------------------- */

enum bg_job { BG_NONE, BG_PURGE, BG_TRIM, BG_SWEEP };

/* The background job to run now, if any (mu held). Collection purges come first: they free the
 * most space. */
static enum bg_job bg_ready(struct vd_store *s, uint64_t now_ns)
{
    if (s->failed || s->closing)
        return BG_NONE;
    if (s->ctr.purges_pending > 0)
        return BG_PURGE;
    if (s->trim_upto > s->trim_done)
        return BG_TRIM;
    if (s->tomb_grace_ms && (s->sweep_active || now_ns >= s->sweep_next_ns)) {
        s->sweep_active = true;
        return BG_SWEEP;
    }
    return BG_NONE;
}

static void wait_until(struct vd_store *s, uint64_t deadline_ns)
{
    struct timespec dl = {.tv_sec = (time_t)(deadline_ns / 1000000000ull),
                          .tv_nsec = (long)(deadline_ns % 1000000000ull)};
    pthread_cond_timedwait(&s->cv, &s->mu, &dl); /* s->cv runs on CLOCK_MONOTONIC */
}

void *vd__store_writer_main(void *arg)
{
    struct vd_store *s = arg;
    uint64_t last_bg = vd_mono_ns(), retry_ns = 0;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        enum bg_job job = BG_NONE;
        while (s->q_len == 0 && !s->closing) {
            uint64_t now = vd_mono_ns();
            if (now < retry_ns) { /* a background step failed: pause instead of spinning */
                wait_until(s, retry_ns);
                continue;
            }
            if ((job = bg_ready(s, now)) != BG_NONE)
                break;
            if (s->tomb_grace_ms && !s->failed)
                wait_until(s, s->sweep_next_ns);
            else
                pthread_cond_wait(&s->cv, &s->mu);
        }
        if (s->q_len == 0 && s->closing)
            break;
        /* Take every queued batch at once: swapping arrays keeps submitters off the writer's
         * group while it is being applied. */
        struct vd_wbatch **g = s->q;
        size_t n = s->q_len, cap = s->q_cap;
        s->q = s->group;
        s->q_cap = s->group_cap;
        s->q_len = 0;
        s->group = g;
        s->group_cap = cap;
        int sticky = s->failed;
        uint64_t now = vd_mono_ns();
        if (n && now >= retry_ns && now - last_bg > BG_EVERY_NS)
            job = bg_ready(s, now); /* under steady load, still progress at a bounded pace */
        else if (n)
            job = BG_NONE;
        uint64_t trim = s->trim_upto, grace = s->tomb_grace_ms;
        pthread_mutex_unlock(&s->mu);

        if (n) {
            run_group(s, g, n, sticky);
            for (size_t i = 0; i < n; i++) {
                struct vd_wbatch *b = g[i];
                if (b->done)
                    b->done(b, b->err.code, b->ctx);
            }
        }
        int r = 0;
        switch (job) {
        case BG_PURGE:
            r = purge_chunk(s);
            break;
        case BG_TRIM:
            r = trim_chunk(s, trim);
            break;
        case BG_SWEEP:
            r = sweep_chunk(s, grace);
            break;
        case BG_NONE:
            break;
        }
        if (job != BG_NONE) {
            last_bg = vd_mono_ns();
            retry_ns = r ? last_bg + 1000000000ull : 0;
        }
        pthread_mutex_lock(&s->mu);
        s->ctr.batches += n;
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}
