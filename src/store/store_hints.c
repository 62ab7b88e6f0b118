/*
 * Hinted handoff storage: whole point records kept for a replica that did not acknowledge them,
 * until they are replayed to it, expire, or their collection is deleted.
 *
 * Table `hints`: target node u64 BE ‖ incarnation u64 BE ‖ hint id u64 BE -> created wall ms
 * u64 LE ‖ point record. Keys group a target's hints by collection incarnation, so deleting a
 * collection drops its hints with one range delete per target. Per-target totals live in `meta`
 * ('H' ‖ target BE -> count u64 LE ‖ bytes u64 LE) and change in the same transaction as the
 * hints they count, so a cap is decided on committed figures and survives a restart exactly.
 * The hint id counter is in `meta` too (VD__META_HINT_ID).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "store_int.h"
#include "vectord/record.h"

#define HINT_KEY 24
#define HINT_HDR 8 /* created ms */
#define TOT_KEY 9
#define DEFAULT_TARGET_BYTES (256ULL << 20)
#define DEFAULT_TOTAL_BYTES (1ULL << 30)

static void tot_key(uint8_t *k, uint64_t target)
{
    k[0] = VD__META_HINT_TOT;
    vd_be64_put(k + 1, target);
}

/* Reads the totals of target (0, 0 when it has none). */
static int tot_get(struct vd_store *s, MDB_txn *txn, uint64_t target, uint64_t *count,
                   uint64_t *bytes)
{
    uint8_t kb[TOT_KEY];
    tot_key(kb, target);
    MDB_val k = {TOT_KEY, kb}, v;
    int rc = mdb_get(txn, s->dbi_meta, &k, &v);
    *count = *bytes = 0;
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return rc;
    if (v.mv_size != 16)
        return MDB_CORRUPTED;
    *count = vd__store_le64_get(v.mv_data);
    *bytes = vd__store_le64_get((const uint8_t *)v.mv_data + 8);
    return 0;
}

/* Writes target's totals; a target left with no hints has no totals key. */
static int tot_put(struct vd_store *s, MDB_txn *txn, uint64_t target, uint64_t count,
                   uint64_t bytes)
{
    uint8_t kb[TOT_KEY], vb[16];
    tot_key(kb, target);
    MDB_val k = {TOT_KEY, kb}, v = {16, vb};
    if (count == 0) {
        int rc = mdb_del(txn, s->dbi_meta, &k, NULL);
        return rc == MDB_NOTFOUND ? 0 : rc;
    }
    vd__store_le64_put(vb, count);
    vd__store_le64_put(vb + 8, bytes);
    return mdb_put(txn, s->dbi_meta, &k, &v, 0);
}

/* Visits every target with hints: fn(target, count, bytes, ctx); nonzero from fn stops. Returns
 * an LMDB code (or fn's value). */
static int tot_each(struct vd_store *s, MDB_txn *txn,
                    int (*fn)(uint64_t, uint64_t, uint64_t, void *), void *ctx)
{
    MDB_cursor *cur;
    uint8_t kb[1] = {VD__META_HINT_TOT};
    MDB_val k = {1, kb}, v;
    int rc = mdb_cursor_open(txn, s->dbi_meta, &cur);
    if (rc)
        return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        const uint8_t *kp = k.mv_data;
        if (k.mv_size != TOT_KEY || kp[0] != VD__META_HINT_TOT)
            break;
        if (v.mv_size != 16) {
            rc = MDB_CORRUPTED;
            break;
        }
        int r = fn(vd_be64_get(kp + 1), vd__store_le64_get(v.mv_data),
                   vd__store_le64_get((const uint8_t *)v.mv_data + 8), ctx);
        if (r) {
            mdb_cursor_close(cur);
            return r;
        }
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int sum_bytes(uint64_t target, uint64_t count, uint64_t bytes, void *ctx)
{
    (void)target, (void)count;
    *(uint64_t *)ctx += bytes;
    return 0;
}

static int put_hint(struct vd_store *s, MDB_txn *txn, struct vd_wop *op, struct vd_err *err)
{
    struct vd_rvec vecs[VD_RECORD_MAX_VECTORS];
    struct vd_record r;
    if (!op->rec || vd_record_decode(op->rec, op->rec_len, &r, vecs))
        return vd_errf(err, VD_EINVAL, "hint: malformed point record");
    if (op->target == 0)
        return vd_errf(err, VD_EINVAL, "hint: no target node");
    uint64_t count, bytes, total = 0, size = HINT_KEY + HINT_HDR + op->rec_len;
    int rc = tot_get(s, txn, op->target, &count, &bytes);
    if (rc == 0)
        rc = tot_each(s, txn, sum_bytes, &total);
    if (rc)
        return vd_errf(err, vd__store_mdb_err(rc), "hint: reading totals: %s", mdb_strerror(rc));
    if (bytes + size > s->hint_target_max || total + size > s->hint_total_max) {
        op->over_cap = true; /* not stored: the caller counts it dropped */
        return 0;
    }
    uint8_t idk[] = VD__META_HINT_ID, kb[HINT_KEY];
    MDB_val ik = {sizeof idk - 1, idk}, iv;
    uint64_t id = 0;
    rc = mdb_get(txn, s->dbi_meta, &ik, &iv);
    if (rc == 0 && iv.mv_size == 8)
        id = vd__store_le64_get(iv.mv_data);
    else if (rc != MDB_NOTFOUND)
        return vd_errf(err, rc ? vd__store_mdb_err(rc) : VD_ECORRUPT, "hint: reading id");
    id++;
    uint8_t idv[8];
    vd__store_le64_put(idv, id);
    iv = (MDB_val){8, idv};
    vd_be64_put(kb, op->target);
    vd_be64_put(kb + 8, r.incarnation);
    vd_be64_put(kb + 16, id);
    MDB_val k = {HINT_KEY, kb}, v = {HINT_HDR + op->rec_len, NULL};
    if ((rc = mdb_put(txn, s->dbi_meta, &ik, &iv, 0)) ||
        (rc = mdb_put(txn, s->dbi_hints, &k, &v, MDB_RESERVE)) ||
        (rc = tot_put(s, txn, op->target, count + 1, bytes + size)))
        return vd_errf(err, vd__store_mdb_err(rc), "hint: writing: %s", mdb_strerror(rc));
    vd__store_le64_put(v.mv_data, vd_wall_ms());
    memcpy((uint8_t *)v.mv_data + HINT_HDR, op->rec, op->rec_len);
    op->incarnation = r.incarnation;
    op->hint_id = id;
    op->applied = true;
    return 0;
}

static int del_hint(struct vd_store *s, MDB_txn *txn, struct vd_wop *op, struct vd_err *err)
{
    uint8_t kb[HINT_KEY];
    vd_be64_put(kb, op->target);
    vd_be64_put(kb + 8, op->incarnation);
    vd_be64_put(kb + 16, op->hint_id);
    MDB_val k = {HINT_KEY, kb}, v;
    int rc = mdb_get(txn, s->dbi_hints, &k, &v);
    if (rc == MDB_NOTFOUND)
        return 0; /* already gone (replayed twice, or its collection purged): not an error */
    uint64_t count, bytes;
    if (rc || (rc = tot_get(s, txn, op->target, &count, &bytes)))
        return vd_errf(err, vd__store_mdb_err(rc), "hint: reading: %s", mdb_strerror(rc));
    uint64_t size = HINT_KEY + v.mv_size;
    if ((rc = mdb_del(txn, s->dbi_hints, &k, NULL)) ||
        (rc = tot_put(s, txn, op->target, count ? count - 1 : 0,
                      bytes > size ? bytes - size : 0)))
        return vd_errf(err, vd__store_mdb_err(rc), "hint: deleting: %s", mdb_strerror(rc));
    op->applied = true;
    return 0;
}

int vd__store_hint_op(struct vd_store *s, MDB_txn *txn, struct vd_wop *op, struct vd_err *err)
{
    return op->kind == VD_WOP_HINT_PUT ? put_hint(s, txn, op, err) : del_hint(s, txn, op, err);
}

void vd__store_hint_caps(struct vd_store *s, const struct vd_store_opts *o)
{
    s->hint_target_max = o->hint_target_bytes ? o->hint_target_bytes : DEFAULT_TARGET_BYTES;
    s->hint_total_max = o->hint_total_bytes ? o->hint_total_bytes : DEFAULT_TOTAL_BYTES;
}

/* ---- purge of a deleted collection's hints ---- */

struct purge_ctx {
    struct vd_store *s;
    MDB_txn *txn;
    uint64_t inc;
    long max, n;
    int rc;
};

static int purge_target(uint64_t target, uint64_t count, uint64_t bytes, void *arg)
{
    struct purge_ctx *p = arg;
    uint8_t pre[16], kb[HINT_KEY];
    vd_be64_put(pre, target);
    vd_be64_put(pre + 8, p->inc);
    memcpy(kb, pre, 16);
    MDB_cursor *cur;
    int rc = mdb_cursor_open(p->txn, p->s->dbi_hints, &cur);
    if (rc)
        return p->rc = rc;
    MDB_val k = {16, kb}, v;
    uint64_t gone = 0, gone_bytes = 0;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && p->n < p->max && k.mv_size == HINT_KEY && memcmp(k.mv_data, pre, 16) == 0) {
        gone_bytes += HINT_KEY + v.mv_size;
        if ((rc = mdb_cursor_del(cur, 0)))
            break;
        gone++, p->n++;
        k = (MDB_val){16, kb};
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    }
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        return p->rc = rc;
    if (gone && (rc = tot_put(p->s, p->txn, target, count > gone ? count - gone : 0,
                              bytes > gone_bytes ? bytes - gone_bytes : 0)))
        return p->rc = rc;
    return p->n >= p->max; /* stop once the chunk is used up */
}

struct targets {
    uint64_t *id;
    size_t n, cap;
};

static int collect_target(uint64_t target, uint64_t count, uint64_t bytes, void *ctx)
{
    (void)count, (void)bytes;
    struct targets *t = ctx;
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 16;
        uint64_t *id = realloc(t->id, cap * sizeof *id);
        if (!id)
            return ENOMEM; /* the purge step fails and is retried later */
        t->id = id, t->cap = cap;
    }
    t->id[t->n++] = target;
    return 0;
}

long vd__store_hints_purge(struct vd_store *s, MDB_txn *txn, uint64_t inc, long max, int *err)
{
    struct purge_ctx p = {s, txn, inc, max, 0, 0};
    /* the totals change while they are walked: take the targets first */
    struct targets t = {0};
    int rc = tot_each(s, txn, collect_target, &t);
    for (size_t i = 0; rc == 0 && i < t.n && p.n < max; i++) {
        uint64_t count, bytes;
        if ((rc = tot_get(s, txn, t.id[i], &count, &bytes)) == 0) {
            purge_target(t.id[i], count, bytes, &p);
            rc = p.rc;
        }
    }
    free(t.id);
    if (rc)
        return *err = rc, -1;
    return p.n;
}

/* ---- reads ---- */

int vd_store_hint_totals(struct vd_rtxn *t, vd_store_hint_total_fn fn, void *ctx)
{
    int rc = tot_each(t->s, t->txn, fn, ctx);
    return rc > 0 ? vd__store_mdb_err(rc) : rc;
}

int vd_store_hints_scan(struct vd_rtxn *t, uint64_t target, const struct vd_hint_pos *after,
                        vd_store_hint_fn fn, void *ctx)
{
    uint8_t kb[HINT_KEY];
    vd_be64_put(kb, target);
    vd_be64_put(kb + 8, after ? after->incarnation : 0);
    vd_be64_put(kb + 16, after ? after->id : 0);
    MDB_cursor *cur;
    MDB_val k = {HINT_KEY, kb}, v;
    int rc = mdb_cursor_open(t->txn, t->s->dbi_hints, &cur);
    if (rc)
        return vd__store_mdb_err(rc);
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    if (rc == 0 && after && k.mv_size == HINT_KEY && memcmp(k.mv_data, kb, HINT_KEY) == 0)
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT); /* strictly after */
    int out = 0;
    for (; rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        const uint8_t *kp = k.mv_data;
        if (k.mv_size != HINT_KEY || vd_be64_get(kp) != target)
            break;
        if (v.mv_size < HINT_HDR) {
            out = VD_ECORRUPT;
            break;
        }
        struct vd_hint_view h = {
            .target = target,
            .pos = {vd_be64_get(kp + 8), vd_be64_get(kp + 16)},
            .created_ms = vd__store_le64_get(v.mv_data),
            .rec = (const uint8_t *)v.mv_data + HINT_HDR,
            .rec_len = v.mv_size - HINT_HDR,
        };
        if ((out = fn(&h, ctx)))
            break;
    }
    mdb_cursor_close(cur);
    if (out)
        return out;
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : vd__store_mdb_err(rc);
}
