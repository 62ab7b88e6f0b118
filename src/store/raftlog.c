/*
 * Raft state in its own LMDB environment. See include/vectord/raftlog.h for layout and contract.
 */
#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "store_int.h"
#include "vectord/raftlog.h"

#define FORMAT 1
#define ENT_HDR (1 + 8 + 1 + 4)
#define SNAP_HDR (1 + 8 + 8 + 4)
#define DEFAULT_MAP (1ULL << 30)

struct vd_raftlog {
    MDB_env *env;
    MDB_dbi dbi_meta, dbi_log;
    uint64_t map_size;
    bool no_sync;
    int failed; /* sticky error after a failed commit */
    char *path;

    /* what the last load returned */
    struct vd_raft_entry *ents;
    size_t n_ents;
    uint8_t *snap_data;
    struct vd_raft_snapshot snap;
};

static int mdb_to_vd(int rc)
{
    switch (rc) {
    case 0:
        return 0;
    case MDB_NOTFOUND:
        return VD_ENOTFOUND;
    case MDB_MAP_FULL:
    case ENOSPC:
        return VD_EFULL;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
        return VD_ECORRUPT;
    case ENOMEM:
        return VD_ENOMEM;
    default:
        return VD_EIO;
    }
}

/* ---- encodings --------------------------------------------------------------------------- */

static size_t conf_encode(const struct vd_raft_conf *c, uint8_t *buf)
{
    vd_be32_put(buf, c->n);
    for (uint32_t i = 0; i < c->n; i++) {
        vd_be64_put(buf + 4 + 9 * i, c->nodes[i].id);
        buf[4 + 9 * i + 8] = c->nodes[i].role;
    }
    return 4 + 9 * (size_t)c->n;
}

static int conf_decode(const uint8_t *buf, size_t len, struct vd_raft_conf *c)
{
    if (len < 4)
        return VD_ECORRUPT;
    uint32_t n = vd_be32_get(buf);
    if (n > VD_RAFT_MAX_NODES || len != 4 + 9 * (size_t)n)
        return VD_ECORRUPT;
    memset(c, 0, sizeof(*c));
    c->n = n;
    for (uint32_t i = 0; i < n; i++) {
        c->nodes[i].id = vd_be64_get(buf + 4 + 9 * i);
        c->nodes[i].role = buf[4 + 9 * i + 8];
    }
    return 0;
}

/* ---- open / close ------------------------------------------------------------------------ */

int vd_raftlog_open(const struct vd_raftlog_opts *o, struct vd_raftlog **out, struct vd_err *err)
{
    if (!o || !o->dir || !o->dir[0])
        return vd_errf(err, VD_EINVAL, "raft log: no directory given");
    struct vd_raftlog *l = calloc(1, sizeof(*l));
    if (!l)
        return vd_errf(err, VD_ENOMEM, "raft log: out of memory");
    int rc;
    size_t plen = strlen(o->dir) + sizeof("/raft");
    l->path = malloc(plen);
    if (!l->path) {
        rc = vd_errf(err, VD_ENOMEM, "raft log: out of memory");
        goto out_free_log;
    }
    snprintf(l->path, plen, "%s/raft", o->dir);
    if ((rc = vd__store_mkdir_p(l->path, err)))
        goto out_free_log;
    l->no_sync = o->no_sync;
    l->map_size = o->map_size ? o->map_size : DEFAULT_MAP;
    int mrc = mdb_env_create(&l->env);
    if (mrc) {
        rc = vd_errf(err, mdb_to_vd(mrc), "raft log '%s': %s", l->path, mdb_strerror(mrc));
        goto out_free_log;
    }
    mdb_env_set_mapsize(l->env, l->map_size);
    mdb_env_set_maxdbs(l->env, 4);
    unsigned flags = MDB_NOTLS | (l->no_sync ? MDB_NOSYNC : 0);
    if ((mrc = mdb_env_open(l->env, l->path, flags, 0600))) {
        rc = vd_errf(err, mdb_to_vd(mrc), "raft log '%s': %s", l->path, mdb_strerror(mrc));
        goto out_close_env;
    }
    int dead = 0;
    mdb_reader_check(l->env, &dead);
    MDB_txn *txn;
    if ((mrc = mdb_txn_begin(l->env, NULL, 0, &txn))) {
        rc = vd_errf(err, mdb_to_vd(mrc), "raft log '%s': %s", l->path, mdb_strerror(mrc));
        goto out_close_env;
    }
    if ((mrc = mdb_dbi_open(txn, "meta", MDB_CREATE, &l->dbi_meta)) ||
        (mrc = mdb_dbi_open(txn, "log", MDB_CREATE, &l->dbi_log))) {
        mdb_txn_abort(txn);
        rc = vd_errf(err, mdb_to_vd(mrc), "raft log '%s': %s", l->path, mdb_strerror(mrc));
        goto out_close_env;
    }
    if ((mrc = mdb_txn_commit(txn))) {
        rc = vd_errf(err, mdb_to_vd(mrc), "raft log '%s': %s", l->path, mdb_strerror(mrc));
        goto out_close_env;
    }
    *out = l;
    return 0;

out_close_env:
    mdb_env_close(l->env);
out_free_log:
    free(l->path);
    free(l);
    return rc;
}

static void free_loaded(struct vd_raftlog *l)
{
    for (size_t i = 0; i < l->n_ents; i++)
        free(l->ents[i].data);
    free(l->ents);
    l->ents = NULL;
    l->n_ents = 0;
    free(l->snap_data);
    l->snap_data = NULL;
}

void vd_raftlog_close(struct vd_raftlog *l)
{
    if (!l)
        return;
    free_loaded(l);
    mdb_env_close(l->env);
    free(l->path);
    free(l);
}

/* ---- load -------------------------------------------------------------------------------- */

static int get_u64(MDB_txn *txn, MDB_dbi dbi, const char *key, uint64_t *out)
{
    MDB_val k = {strlen(key), (void *)key}, v;
    int rc = mdb_get(txn, dbi, &k, &v);
    if (rc == MDB_NOTFOUND) {
        *out = 0;
        return 0;
    }
    if (rc)
        return mdb_to_vd(rc);
    if (v.mv_size != 8)
        return VD_ECORRUPT;
    *out = vd_be64_get(v.mv_data);
    return 0;
}

int vd_raftlog_load(struct vd_raftlog *l, struct vd_raft_state *out, struct vd_err *err)
{
    free_loaded(l);
    memset(out, 0, sizeof(*out));
    MDB_txn *txn;
    MDB_cursor *cur = NULL;
    int mrc = mdb_txn_begin(l->env, NULL, MDB_RDONLY, &txn), rc;
    if (mrc)
        return vd_errf(err, mdb_to_vd(mrc), "raft log '%s': %s", l->path, mdb_strerror(mrc));
    if ((rc = get_u64(txn, l->dbi_meta, "term", &out->term)) ||
        (rc = get_u64(txn, l->dbi_meta, "vote", &out->vote))) {
        vd_errf(err, rc, "raft log '%s': bad term or vote record", l->path);
        goto out_abort;
    }

    MDB_val k = {4, "snap"}, v;
    mrc = mdb_get(txn, l->dbi_meta, &k, &v);
    if (mrc && mrc != MDB_NOTFOUND) {
        rc = vd_errf(err, mdb_to_vd(mrc), "raft log '%s': %s", l->path, mdb_strerror(mrc));
        goto out_abort;
    }
    if (mrc == 0) {
        const uint8_t *p = v.mv_data;
        if (v.mv_size < SNAP_HDR || p[0] != FORMAT ||
            conf_decode(p + SNAP_HDR, v.mv_size - SNAP_HDR, &l->snap.conf) != 0) {
            rc = vd_errf(err, VD_ECORRUPT, "raft log '%s': snapshot header is malformed", l->path);
            goto out_abort;
        }
        l->snap.index = vd_be64_get(p + 1);
        l->snap.term = vd_be64_get(p + 9);
        uint32_t crc = vd_be32_get(p + 17);
        MDB_val dk = {8, "snapdata"}, dv;
        mrc = mdb_get(txn, l->dbi_meta, &dk, &dv);
        if (mrc == MDB_NOTFOUND)
            dv.mv_size = 0;
        else if (mrc) {
            rc = vd_errf(err, mdb_to_vd(mrc), "raft log '%s': %s", l->path, mdb_strerror(mrc));
            goto out_abort;
        }
        if (vd_crc32c(0, dv.mv_size ? dv.mv_data : "", dv.mv_size) != crc) {
            rc = vd_errf(err, VD_ECORRUPT,
                         "raft log '%s': snapshot at index %llu fails its checksum", l->path,
                         (unsigned long long)l->snap.index);
            goto out_abort;
        }
        if (dv.mv_size) {
            l->snap_data = malloc(dv.mv_size);
            if (!l->snap_data) {
                rc = vd_errf(err, VD_ENOMEM, "raft log: out of memory for the snapshot");
                goto out_abort;
            }
            memcpy(l->snap_data, dv.mv_data, dv.mv_size);
        }
        l->snap.data = l->snap_data;
        l->snap.len = dv.mv_size;
        out->snapshot = &l->snap;
    }

    MDB_stat st;
    if ((mrc = mdb_stat(txn, l->dbi_log, &st)) || (mrc = mdb_cursor_open(txn, l->dbi_log, &cur))) {
        rc = vd_errf(err, mdb_to_vd(mrc), "raft log '%s': %s", l->path, mdb_strerror(mrc));
        goto out_abort;
    }
    if (st.ms_entries) {
        l->ents = calloc(st.ms_entries, sizeof(*l->ents));
        if (!l->ents) {
            rc = vd_errf(err, VD_ENOMEM, "raft log: out of memory for %zu entries", st.ms_entries);
            goto out_abort;
        }
    }
    uint64_t expect = (out->snapshot ? l->snap.index : 0) + 1;
    for (mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0;
         mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 8) {
            rc = vd_errf(err, VD_ECORRUPT, "raft log '%s': malformed key", l->path);
            goto out_abort;
        }
        uint64_t idx = vd_be64_get(k.mv_data);
        const uint8_t *p = v.mv_data;
        if (idx != expect || l->n_ents >= st.ms_entries) {
            rc = vd_errf(err, VD_ECORRUPT, "raft log '%s': entry %llu where %llu was expected",
                         l->path, (unsigned long long)idx, (unsigned long long)expect);
            goto out_abort;
        }
        if (v.mv_size < ENT_HDR || p[0] != FORMAT ||
            vd_crc32c(0, p + ENT_HDR, v.mv_size - ENT_HDR) != vd_be32_get(p + 10)) {
            rc = vd_errf(err, VD_ECORRUPT, "raft log '%s': entry %llu fails its checksum", l->path,
                         (unsigned long long)idx);
            goto out_abort;
        }
        struct vd_raft_entry *e = &l->ents[l->n_ents++];
        e->index = idx;
        e->term = vd_be64_get(p + 1);
        e->type = p[9];
        e->len = v.mv_size - ENT_HDR;
        if (e->len) {
            e->data = malloc(e->len);
            if (!e->data) {
                rc = vd_errf(err, VD_ENOMEM, "raft log: out of memory for entry %llu",
                             (unsigned long long)idx);
                goto out_abort;
            }
            memcpy(e->data, p + ENT_HDR, e->len);
        }
        expect++;
    }
    if (mrc != MDB_NOTFOUND) {
        rc = vd_errf(err, mdb_to_vd(mrc), "raft log '%s': %s", l->path, mdb_strerror(mrc));
        goto out_abort;
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    out->entries = l->ents;
    out->n_entries = l->n_ents;
    return 0;

out_abort:
    if (cur)
        mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    free_loaded(l);
    memset(out, 0, sizeof(*out));
    return rc;
}

/* ---- save -------------------------------------------------------------------------------- */

static int put_u64(MDB_txn *txn, MDB_dbi dbi, const char *key, uint64_t val)
{
    uint8_t b[8];
    vd_be64_put(b, val);
    MDB_val k = {strlen(key), (void *)key}, v = {8, b};
    return mdb_put(txn, dbi, &k, &v, 0);
}

/* Deletes log entries with index <= bound (upto_le) or >= bound. Repositions after every delete
 * rather than trusting the cursor's position after mdb_cursor_del. */
static int del_range(MDB_txn *txn, MDB_dbi dbi, uint64_t bound, bool upto_le)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc)
        return rc;
    uint8_t kb[8];
    for (;;) {
        vd_be64_put(kb, bound);
        MDB_val k = {8, kb}, v;
        rc = mdb_cursor_get(cur, &k, &v, upto_le ? MDB_FIRST : MDB_SET_RANGE);
        if (rc)
            break;
        if (upto_le && (k.mv_size != 8 || vd_be64_get(k.mv_data) > bound))
            break;
        if ((rc = mdb_cursor_del(cur, 0)))
            break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int put_snapshot(struct vd_raftlog *l, MDB_txn *txn, const struct vd_raft_snapshot *s)
{
    uint8_t hdr[SNAP_HDR + 4 + 9 * VD_RAFT_MAX_NODES];
    hdr[0] = FORMAT;
    vd_be64_put(hdr + 1, s->index);
    vd_be64_put(hdr + 9, s->term);
    vd_be32_put(hdr + 17, vd_crc32c(0, s->len ? (const void *)s->data : "", s->len));
    size_t n = SNAP_HDR + conf_encode(&s->conf, hdr + SNAP_HDR);
    MDB_val k = {4, "snap"}, v = {n, hdr};
    int rc = mdb_put(txn, l->dbi_meta, &k, &v, 0);
    if (rc)
        return rc;
    MDB_val dk = {8, "snapdata"}, dv = {s->len, (void *)s->data};
    if ((rc = mdb_put(txn, l->dbi_meta, &dk, &dv, 0)))
        return rc;
    return del_range(txn, l->dbi_log, s->index, true);
}

static int put_entry(struct vd_raftlog *l, MDB_txn *txn, const struct vd_raft_entry *e)
{
    uint8_t kb[8];
    vd_be64_put(kb, e->index);
    MDB_val k = {8, kb}, v = {ENT_HDR + e->len, NULL};
    /* MDB_RESERVE writes the record in place: no staging copy of large entries */
    int rc = mdb_put(txn, l->dbi_log, &k, &v, MDB_RESERVE);
    if (rc)
        return rc;
    uint8_t *p = v.mv_data;
    p[0] = FORMAT;
    vd_be64_put(p + 1, e->term);
    p[9] = e->type;
    vd_be32_put(p + 10, vd_crc32c(0, e->len ? (const void *)e->data : "", e->len));
    if (e->len)
        memcpy(p + ENT_HDR, e->data, e->len);
    return 0;
}

typedef int (*txn_fn)(struct vd_raftlog *l, MDB_txn *txn, const void *arg);

/* Runs fn in a write transaction and commits it durably; grows the map when it is full. */
static int run_txn(struct vd_raftlog *l, txn_fn fn, const void *arg, struct vd_err *err)
{
    if (l->failed)
        return vd_errf(err, l->failed, "raft log '%s': an earlier commit failed; refusing writes",
                       l->path);
    for (;;) {
        MDB_txn *txn;
        int rc = mdb_txn_begin(l->env, NULL, 0, &txn);
        if (rc)
            return vd_errf(err, mdb_to_vd(rc), "raft log '%s': %s", l->path, mdb_strerror(rc));
        rc = fn(l, txn, arg);
        if (rc) {
            mdb_txn_abort(txn);
        } else {
            rc = mdb_txn_commit(txn);
            if (rc && rc != MDB_MAP_FULL) {
                /* The disk may or may not hold this commit: never acknowledge, never retry. */
                l->failed = mdb_to_vd(rc) == VD_EFULL ? VD_EFULL : VD_EIO;
                return vd_errf(err, l->failed, "raft log '%s': commit failed: %s", l->path,
                               mdb_strerror(rc));
            }
        }
        if (rc == MDB_MAP_FULL) {
            /* Single-threaded use: no transaction is open now, so the map may grow. */
            uint64_t size = l->map_size * 2;
            int src = mdb_env_set_mapsize(l->env, size);
            if (src)
                return vd_errf(err, VD_EFULL,
                               "raft log '%s': cannot grow the map to %llu bytes: %s", l->path,
                               (unsigned long long)size, mdb_strerror(src));
            l->map_size = size;
            continue;
        }
        if (rc)
            return vd_errf(err, mdb_to_vd(rc), "raft log '%s': %s", l->path, mdb_strerror(rc));
        return 0;
    }
}

static int save_update(struct vd_raftlog *l, MDB_txn *txn, const void *arg)
{
    const struct vd_raft_update *u = arg;
    int rc;
    if (u->hard_state && ((rc = put_u64(txn, l->dbi_meta, "term", u->term)) ||
                          (rc = put_u64(txn, l->dbi_meta, "vote", u->vote))))
        return rc;
    if (u->snapshot && (rc = put_snapshot(l, txn, u->snapshot)))
        return rc;
    if (u->first_index) {
        if ((rc = del_range(txn, l->dbi_log, u->first_index, false)))
            return rc;
        for (size_t i = 0; i < u->n_entries; i++)
            if ((rc = put_entry(l, txn, &u->entries[i])))
                return rc;
    }
    return 0;
}

int vd_raftlog_save(struct vd_raftlog *l, const struct vd_raft_update *u, struct vd_err *err)
{
    if (!u->hard_state && !u->snapshot && !u->first_index)
        return 0;
    return run_txn(l, save_update, u, err);
}

static int save_snap(struct vd_raftlog *l, MDB_txn *txn, const void *arg)
{
    return put_snapshot(l, txn, arg);
}

int vd_raftlog_save_snapshot(struct vd_raftlog *l, const struct vd_raft_snapshot *s,
                             struct vd_err *err)
{
    return run_txn(l, save_snap, s, err);
}

int vd_raftlog_bounds(struct vd_raftlog *l, uint64_t *first, uint64_t *last, struct vd_err *err)
{
    *first = *last = 0;
    MDB_txn *txn;
    MDB_cursor *cur;
    int rc = mdb_txn_begin(l->env, NULL, MDB_RDONLY, &txn);
    if (rc)
        return vd_errf(err, mdb_to_vd(rc), "raft log '%s': %s", l->path, mdb_strerror(rc));
    if ((rc = mdb_cursor_open(txn, l->dbi_log, &cur))) {
        mdb_txn_abort(txn);
        return vd_errf(err, mdb_to_vd(rc), "raft log '%s': %s", l->path, mdb_strerror(rc));
    }
    MDB_val k, v;
    if (mdb_cursor_get(cur, &k, &v, MDB_FIRST) == 0 && k.mv_size == 8)
        *first = vd_be64_get(k.mv_data);
    if (mdb_cursor_get(cur, &k, &v, MDB_LAST) == 0 && k.mv_size == 8)
        *last = vd_be64_get(k.mv_data);
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return 0;
}
