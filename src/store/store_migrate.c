/* Conversion of a format 1 data environment (a vector header in `points`, payload text in
 * `payloads`) to format 2 (one point record per point, the points_by_hash table, an HLC floor).
 * Runs at open, before the writer starts, in transactions of at most vd__store_migrate_chunk
 * points; each one records in meta the key the next starts from, so a conversion cut short
 * resumes there and converts nothing twice. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "store_int.h"
#include "vectord/record.h"

unsigned vd__store_migrate_chunk = 1024;
unsigned vd__store_migrate_stop_after;

/* Builds the format 2 value of one format 1 point (key k, value v) into *out (malloc'd). */
static int convert(struct vd_store *s, MDB_txn *txn, const MDB_val *k, const MDB_val *v,
                   uint8_t **out, size_t *out_len, struct vd_record *r)
{
    const uint8_t *p = v->mv_data;
    if (v->mv_size < VD__PT1_HDR || k->mv_size < 9)
        return VD_ECORRUPT;
    uint32_t dim = vd__store_le32_get(p + 25);
    bool tomb = (p[24] & VD__PT1_TOMB) != 0;
    if (v->mv_size != VD__PT1_HDR + (size_t)dim * 4 || (tomb ? dim != 0 : dim == 0))
        return VD_ECORRUPT;
    memset(r, 0, sizeof *r);
    if (vd_pid_decode((const uint8_t *)k->mv_data + 8, k->mv_size - 8, &r->id))
        return VD_ECORRUPT;
    r->incarnation = vd_be64_get(k->mv_data);
    r->version.hlc = vd__store_le64_get(p);
    r->version.node = vd__store_le64_get(p + 8);
    r->tombstone = tomb;
    struct vd_rvec vec = {.kind = VD_RVEC_DENSE, .n = dim, .values = p + VD__PT1_HDR};
    if (!tomb) {
        r->n_vectors = 1;
        r->vectors = &vec;
        MDB_val pv;
        int rc = mdb_get(txn, s->dbi_payloads, (MDB_val *)k, &pv);
        if (rc && rc != MDB_NOTFOUND)
            return vd__store_mdb_err(rc);
        if (rc == 0 && pv.mv_size) {
            r->payload = pv.mv_data;
            r->payload_len = pv.mv_size;
        }
    }
    size_t len = vd_record_size(r);
    uint8_t *b = malloc(VD__PT_SEQ + len);
    if (!b)
        return VD_ENOMEM;
    memcpy(b, p + 16, 8); /* the change counter, little-endian in both formats */
    if (vd_record_encode(r, b + VD__PT_SEQ, len, &len)) {
        free(b);
        return VD_ECORRUPT; /* a non-finite value: format 1 never accepted one */
    }
    r->vectors = NULL; /* pointed at this frame */
    *out = b;
    *out_len = VD__PT_SEQ + len;
    return 0;
}

static int meta_put(struct vd_store *s, MDB_txn *txn, const char *key, const void *val, size_t n)
{
    MDB_val k = {strlen(key), (void *)key}, v = {n, (void *)val};
    return mdb_put(txn, s->dbi_meta, &k, &v, 0);
}

/* One transaction: converts up to the chunk size of points from the saved position on. Sets
 * *done when none is left (and then marks the environment format 2). */
static int step(struct vd_store *s, bool *done, uint64_t *converted)
{
    MDB_txn *txn;
    MDB_cursor *cur = NULL;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc)
        return rc;
    uint8_t pos[VD__PT_KEY_MAX];
    MDB_val k = {strlen(VD__META_MIGRATE), VD__META_MIGRATE}, v;
    size_t pos_len = 0;
    rc = mdb_get(txn, s->dbi_meta, &k, &v);
    if (rc == 0 && v.mv_size <= sizeof pos) {
        memcpy(pos, v.mv_data, v.mv_size);
        pos_len = v.mv_size;
    } else if (rc != MDB_NOTFOUND) {
        rc = rc ? rc : MDB_CORRUPTED;
        goto out_abort;
    }
    uint64_t floor = s->hlc_floor;
    unsigned n = 0;
    bool more = false;
    char name[256];
    uint64_t name_inc = 0;
    int name_rc = VD_ENOTFOUND;
    if ((rc = mdb_cursor_open(txn, s->dbi_points, &cur)))
        goto out_abort;
    k.mv_size = pos_len;
    k.mv_data = pos;
    rc = mdb_cursor_get(cur, &k, &v, pos_len ? MDB_SET_RANGE : MDB_FIRST);
    while (rc == 0) {
        if (n == vd__store_migrate_chunk) {
            more = true;
            memcpy(pos, k.mv_data, k.mv_size < sizeof pos ? k.mv_size : sizeof pos);
            pos_len = k.mv_size < sizeof pos ? k.mv_size : sizeof pos;
            break;
        }
        uint8_t kb[VD__PT_KEY_MAX];
        if (k.mv_size > sizeof kb) {
            rc = MDB_CORRUPTED;
            break;
        }
        size_t kl = k.mv_size;
        memcpy(kb, k.mv_data, kl);
        MDB_val key = {kl, kb};
        struct vd_record r;
        uint8_t *nv = NULL;
        size_t nvl = 0;
        int r2 = convert(s, txn, &key, &v, &nv, &nvl, &r);
        if (r2) {
            vd_log_error("storage: format 1 point record (%zu bytes) cannot be converted: %s",
                         v.mv_size, vd_strerror(r2));
            rc = r2 == VD_ENOMEM ? ENOMEM : MDB_CORRUPTED;
            break;
        }
        MDB_val val = {nvl, nv};
        rc = mdb_put(txn, s->dbi_points, &key, &val, 0);
        free(nv);
        if (!rc && !r.tombstone) {
            rc = mdb_del(txn, s->dbi_payloads, &key, NULL);
            rc = rc == MDB_NOTFOUND ? 0 : rc;
        }
        if (rc)
            break;
        if (r.incarnation != name_inc) {
            name_inc = r.incarnation;
            name_rc = vd__store_live_get(s, txn, name_inc, NULL, name);
            if (name_rc && name_rc != VD_ENOTFOUND) {
                rc = MDB_CORRUPTED;
                break;
            }
        }
        if (name_rc == 0) { /* a deleted collection's points are purged, not placed */
            uint8_t hk[VD__HK_MAX];
            MDB_val hkv = {vd__store_hash_key(r.incarnation, name, &r.id, hk), hk},
                    empty = {0, NULL};
            if ((rc = mdb_put(txn, s->dbi_hash, &hkv, &empty, 0)))
                break;
        }
        if (r.version.hlc > floor)
            floor = r.version.hlc;
        n++;
        /* the put may have moved the cursor: find the key after this one again */
        key.mv_data = kb;
        key.mv_size = kl;
        if ((rc = mdb_cursor_get(cur, &key, &v, MDB_SET_RANGE)) == 0)
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        goto out_abort;
    uint8_t f8[8];
    vd__store_le64_put(f8, floor);
    if ((rc = meta_put(s, txn, VD__META_HLC, f8, 8)))
        goto out_abort;
    if (more) {
        rc = meta_put(s, txn, VD__META_MIGRATE, pos, pos_len);
    } else {
        /* leftover payloads of points that no longer exist (none are expected) go too */
        if ((rc = mdb_drop(txn, s->dbi_payloads, 0)))
            goto out_abort;
        k.mv_size = strlen(VD__META_MIGRATE);
        k.mv_data = VD__META_MIGRATE;
        rc = mdb_del(txn, s->dbi_meta, &k, NULL);
        rc = rc == MDB_NOTFOUND ? 0 : rc;
        vd__store_le64_put(f8, 2);
        if (!rc)
            rc = meta_put(s, txn, VD__META_FORMAT, f8, 8);
    }
    if (rc)
        goto out_abort;
    if ((rc = mdb_txn_commit(txn)))
        return rc;
    s->hlc_floor = floor;
    *converted += n;
    *done = !more;
    return 0;

out_abort:
    mdb_txn_abort(txn);
    return rc;
}

int vd__store_migrate(struct vd_store *s, struct vd_err *err)
{
    uint64_t converted = 0;
    unsigned steps = 0;
    vd_log_info("storage: converting the data of '%s' from format 1 to format 2", s->dir);
    for (bool done = false; !done;) {
        if (vd__store_migrate_stop_after && steps == vd__store_migrate_stop_after)
            return vd_errf(err, VD_EIO, "storage conversion stopped (test)");
        int rc = step(s, &done, &converted);
        if (rc == MDB_MAP_FULL) {
            /* nothing else uses the environment yet: grow without waiting for readers */
            if ((rc = mdb_env_set_mapsize(s->env, s->map_size * 2)) == 0) {
                s->map_size *= 2;
                s->ctr.map_size = s->map_size;
                continue;
            }
        }
        if (rc)
            return vd_errf(err, vd__store_mdb_err(rc),
                           "converting storage to format 2 (after %llu points): %s",
                           (unsigned long long)converted,
                           rc == MDB_CORRUPTED ? "a stored point is malformed" : mdb_strerror(rc));
        steps++;
    }
    vd_log_info("storage: converted %llu points to format 2", (unsigned long long)converted);
    return 0;
}
