/* Data environment: open/close, directory lock, node identity, encodings and the read side. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store_int.h"
#include "vectord/record.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
/* Vectors are handed out as pointers into the map, which needs the host order to match the
 * little-endian file format. A big-endian port would convert on read. */
#error "vectord storage assumes a little-endian host"
#endif

#define DEFAULT_MAP_SIZE (1ULL << 40)
#define MIN_DEFAULT_MAP (1ULL << 30)
#define MAX_READERS 1024
#define RTXN_KEEP_FLOATS 16384
/* 1: vector header + float32 in `points`, payload text in `payloads`. 2: one point record
 * (record.h) per point, a points_by_hash table and an HLC floor in meta. */
#define FORMAT_VERSION 2

/* ---- encodings ----------------------------------------------------------------------------- */

void vd__store_le64_put(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

uint64_t vd__store_le64_get(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

void vd__store_le32_put(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

uint32_t vd__store_le32_get(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int vd__store_mdb_err(int rc)
{
    switch (rc) {
    case 0:
        return 0;
    case MDB_NOTFOUND:
        return VD_ENOTFOUND;
    case MDB_MAP_FULL:
        return VD_EFULL;
    case MDB_READERS_FULL:
        return VD_EBUSY;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
        return VD_ECORRUPT;
    case ENOMEM:
        return VD_ENOMEM;
    case ENOSPC:
        return VD_EFULL;
    default:
        return VD_EIO;
    }
}

size_t vd__store_pt_key(uint64_t inc, const struct vd_pid *id, uint8_t *key)
{
    vd_be64_put(key, inc);
    return 8 + vd_pid_encode(id, key + 8);
}

int vd__store_pt_decode(const MDB_val *v, struct vd_point_view *out)
{
    const uint8_t *p = v->mv_data;
    struct vd_record r;
    struct vd_rvec vecs[VD_RECORD_MAX_VECTORS];
    if (v->mv_size < VD__PT_SEQ)
        return VD_ECORRUPT;
    out->seq = vd__store_le64_get(p);
    out->rec = p + VD__PT_SEQ;
    out->rec_len = v->mv_size - VD__PT_SEQ;
    if (vd_record_decode(out->rec, out->rec_len, &r, vecs))
        return VD_ECORRUPT;
    out->id = r.id;
    out->version = r.version.hlc;
    out->node = r.version.node;
    out->tombstone = r.tombstone;
    const struct vd_rvec *u = vd_record_vector(&r, "", 0);
    bool dense = u && u->kind == VD_RVEC_DENSE;
    out->vec = dense ? u->values : NULL;
    out->dim = dense ? u->n : 0;
    out->payload = r.payload;
    out->payload_len = r.payload_len;
    return 0;
}

int vd__store_pt_version(const MDB_val *v, struct vd_version *ver, bool *tomb)
{
    const uint8_t *p = v->mv_data;
    if (v->mv_size < VD__PT_SEQ + 3)
        return VD_ECORRUPT;
    size_t off = VD__PT_SEQ + 3 + p[VD__PT_SEQ + 2] + 8; /* past the key and incarnation */
    if (v->mv_size < off + 16 || p[VD__PT_SEQ] != VD_RECORD_FORMAT)
        return VD_ECORRUPT;
    ver->hlc = vd__store_le64_get(p + off);
    ver->node = vd__store_le64_get(p + off + 8);
    *tomb = (p[VD__PT_SEQ + 1] & VD_RECORD_FLAG_TOMB) != 0;
    return 0;
}

size_t vd__store_hash_key(uint64_t inc, const char *name, const struct vd_pid *id, uint8_t *key)
{
    size_t kl = vd_pid_encode(id, key + 16);
    vd_be64_put(key, inc);
    vd_be64_put(key + 8, vd_place_hash(name, key + 16, kl));
    return 16 + kl;
}

int vd__store_live_get(struct vd_store *s, MDB_txn *txn, uint64_t inc, uint32_t *dim, char *name)
{
    uint8_t kb[9];
    kb[0] = VD__META_LIVE;
    vd_be64_put(kb + 1, inc);
    MDB_val k = {9, kb}, v;
    int rc = mdb_get(txn, s->dbi_meta, &k, &v);
    if (rc)
        return vd__store_mdb_err(rc);
    if (v.mv_size < 4 || v.mv_size > 4 + 255)
        return VD_ECORRUPT;
    if (dim)
        *dim = vd__store_le32_get(v.mv_data);
    if (name) {
        memcpy(name, (const char *)v.mv_data + 4, v.mv_size - 4);
        name[v.mv_size - 4] = 0;
    }
    return 0;
}

size_t vd__store_schema_encode(const struct vd_coll_schema *c, uint8_t *buf)
{
    uint8_t *p = buf;
    size_t nl = strnlen(c->name, sizeof c->name - 1);
    /* format 2 adds the quantization config; an unquantized schema stays format 1 */
    *p++ = c->quant_enabled ? 2 : 1;
    vd__store_le32_put(p, c->dim), p += 4;
    *p++ = (uint8_t)c->metric;
    vd__store_le32_put(p, c->hnsw_m), p += 4;
    vd__store_le32_put(p, c->hnsw_ef_construct), p += 4;
    vd__store_le32_put(p, c->full_scan_threshold_kb), p += 4;
    vd__store_le32_put(p, c->replication_factor), p += 4;
    vd__store_le32_put(p, c->write_consistency_factor), p += 4;
    vd__store_le64_put(p, c->incarnation), p += 8;
    vd__store_le64_put(p, c->created_hlc), p += 8;
    if (c->quant_enabled) {
        uint32_t qbits;
        memcpy(&qbits, &c->quant_quantile, 4);
        *p++ = c->quant_always_ram;
        vd__store_le32_put(p, qbits), p += 4;
    }
    memcpy(p, c->name, nl), p += nl;
    return (size_t)(p - buf);
}

int vd__store_schema_decode(const MDB_val *v, struct vd_coll_schema *out)
{
    const uint8_t *p = v->mv_data;
    const size_t fixed = 1 + 4 + 1 + 5 * 4 + 8 + 8 + (v->mv_size && p[0] == 2 ? 5 : 0);
    if (v->mv_size < fixed + 1 || v->mv_size > fixed + 255 || (p[0] != 1 && p[0] != 2))
        return VD_ECORRUPT;
    bool quant = p[0] == 2;
    memset(out, 0, sizeof *out);
    p++;
    out->dim = vd__store_le32_get(p), p += 4;
    out->metric = (enum vd_metric) * p++;
    out->hnsw_m = vd__store_le32_get(p), p += 4;
    out->hnsw_ef_construct = vd__store_le32_get(p), p += 4;
    out->full_scan_threshold_kb = vd__store_le32_get(p), p += 4;
    out->replication_factor = vd__store_le32_get(p), p += 4;
    out->write_consistency_factor = vd__store_le32_get(p), p += 4;
    out->incarnation = vd__store_le64_get(p), p += 8;
    out->created_hlc = vd__store_le64_get(p), p += 8;
    if (quant) {
        uint32_t qbits;
        out->quant_enabled = true;
        out->quant_always_ram = *p++;
        qbits = vd__store_le32_get(p), p += 4;
        memcpy(&out->quant_quantile, &qbits, 4);
        if (out->quant_always_ram > 2 ||
            (out->quant_quantile != 0.0f &&
             !(out->quant_quantile >= 0.5f && out->quant_quantile <= 1.0f)))
            return VD_ECORRUPT;
    }
    memcpy(out->name, p, v->mv_size - fixed);
    return 0;
}

/* ---- open / close -------------------------------------------------------------------------- */

int vd__store_mkdir_p(const char *dir, struct vd_err *err)
{
    char buf[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof buf)
        return vd_errf(err, VD_EINVAL, "directory path is empty or too long");
    memcpy(buf, dir, n + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(buf, 0700) != 0 && errno != EEXIST)
            return vd_errf(err, VD_EIO, "cannot create directory '%s': %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0700) != 0 && errno != EEXIST)
        return vd_errf(err, VD_EIO, "cannot create directory '%s': %s", buf, strerror(errno));
    return 0;
}

static int lock_dir(struct vd_store *s, struct vd_err *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/LOCK", s->dir);
    s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (s->lock_fd < 0)
        return vd_errf(err, VD_EIO, "cannot open '%s': %s", path, strerror(errno));
    /* flock locks belong to the open file description, so a second open in this same process
     * conflicts too; LMDB itself must never be opened twice in one process. */
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(s->lock_fd);
        s->lock_fd = -1;
        if (e == EWOULDBLOCK)
            return vd_errf(err, VD_EBUSY,
                           "data directory '%s' is in use by another vectord process (lock on %s)",
                           s->dir, path);
        return vd_errf(err, VD_EIO, "cannot lock '%s': %s", path, strerror(e));
    }
    return 0;
}

static int meta_get_u64(struct vd_store *s, MDB_txn *txn, const char *key, uint64_t *out)
{
    MDB_val k = {strlen(key), (void *)key}, v;
    int rc = mdb_get(txn, s->dbi_meta, &k, &v);
    if (rc)
        return vd__store_mdb_err(rc);
    if (v.mv_size != 8)
        return VD_ECORRUPT;
    *out = vd__store_le64_get(v.mv_data);
    return 0;
}

static int meta_put_u64(struct vd_store *s, MDB_txn *txn, const char *key, uint64_t val)
{
    uint8_t b[8];
    vd__store_le64_put(b, val);
    MDB_val k = {strlen(key), (void *)key}, v = {8, b};
    return vd__store_mdb_err(mdb_put(txn, s->dbi_meta, &k, &v, 0));
}

/* Opens the tables, reads or creates the node id and format marker, and recovers counters;
 * *migrate tells whether the points are still in format 1. */
static int init_tables(struct vd_store *s, bool *migrate, struct vd_err *err)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc)
        return vd_errf(err, vd__store_mdb_err(rc), "begin: %s", mdb_strerror(rc));
    struct {
        const char *name;
        MDB_dbi *dbi;
    } t[] = {{"meta", &s->dbi_meta},
             {"collections", &s->dbi_colls},
             {"points", &s->dbi_points},
             {"payloads", &s->dbi_payloads},
             {"changes", &s->dbi_changes},
             {"hints", &s->dbi_hints},
             {"payload_indexes", &s->dbi_pindex},
             {"points_by_hash", &s->dbi_hash}};
    int r;
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        rc = mdb_dbi_open(txn, t[i].name, MDB_CREATE, t[i].dbi);
        if (rc) {
            r = vd_errf(err, vd__store_mdb_err(rc), "table %s: %s", t[i].name, mdb_strerror(rc));
            goto out_abort;
        }
    }
    uint64_t fmt;
    r = meta_get_u64(s, txn, VD__META_FORMAT, &fmt);
    if (r == VD_ENOTFOUND) {
        /* a new environment, or one of format 1 from before the marker existed: the points
         * table tells which */
        MDB_stat st;
        if ((rc = mdb_stat(txn, s->dbi_points, &st))) {
            r = vd_errf(err, vd__store_mdb_err(rc), "points: %s", mdb_strerror(rc));
            goto out_abort;
        }
        *migrate = st.ms_entries > 0;
        r = meta_put_u64(s, txn, VD__META_FORMAT, *migrate ? 1 : FORMAT_VERSION);
    } else if (r == 0 && fmt == 1) {
        *migrate = true;
    } else if (r == 0 && fmt != FORMAT_VERSION) {
        r = vd_errf(err, VD_ECORRUPT, "storage format %llu is not supported (expected %d)",
                    (unsigned long long)fmt, FORMAT_VERSION);
        goto out_abort;
    }
    if (r)
        goto out_meta_err;
    r = meta_get_u64(s, txn, VD__META_NODE, &s->node_id);
    if (r == VD_ENOTFOUND) {
        do {
            if (getrandom(&s->node_id, sizeof s->node_id, 0) != sizeof s->node_id) {
                r = vd_errf(err, VD_EIO, "getrandom: %s", strerror(errno));
                goto out_abort;
            }
        } while (s->node_id == 0);
        r = meta_put_u64(s, txn, VD__META_NODE, s->node_id);
    }
    if (r)
        goto out_meta_err;
    r = meta_get_u64(s, txn, VD__META_SEQ, &s->last_seq);
    if (r == VD_ENOTFOUND)
        s->last_seq = 0, r = 0;
    if (r)
        goto out_meta_err;
    r = meta_get_u64(s, txn, VD__META_INC, &s->last_inc);
    if (r == VD_ENOTFOUND)
        s->last_inc = 0, r = 0;
    if (r)
        goto out_meta_err;
    r = meta_get_u64(s, txn, VD__META_HLC, &s->hlc_floor);
    if (r == VD_ENOTFOUND)
        s->hlc_floor = 0, r = 0;
    if (r)
        goto out_meta_err;
    r = vd__store_count_purges(s, txn, &s->ctr.purges_pending);
    if (r)
        goto out_meta_err;
    rc = mdb_txn_commit(txn);
    if (rc)
        return vd_errf(err, vd__store_mdb_err(rc), "commit: %s", mdb_strerror(rc));
    s->next_seq = s->last_seq;
    return 0;

out_meta_err:
    vd_errf(err, r, "reading storage metadata: %s", vd_strerror(r));
out_abort:
    mdb_txn_abort(txn);
    return r;
}

int vd_store_open(const struct vd_store_opts *o, struct vd_store **out, struct vd_err *err)
{
    int r, rc;
    char path[4200];
    if (!o || !o->dir || !*o->dir)
        return vd_errf(err, VD_EINVAL, "no data directory given");
    struct vd_store *s = calloc(1, sizeof *s);
    if (!s)
        return vd_errf(err, VD_ENOMEM, "out of memory");
    s->lock_fd = -1;
    s->no_sync = o->no_sync;
    vd__store_hint_caps(s, o);
    s->dir = strdup(o->dir);
    if (!s->dir) {
        r = vd_errf(err, VD_ENOMEM, "out of memory");
        goto out_free;
    }
    if ((r = vd__store_mkdir_p(s->dir, err)))
        goto out_free;
    if ((r = lock_dir(s, err)))
        goto out_free;
    snprintf(path, sizeof path, "%s/data", s->dir);
    if ((r = vd__store_mkdir_p(path, err)))
        goto out_unlock;

    /* NOTLS: HTTP threads serve many connections, and a read may end on another thread.
     * NORDAHEAD: random point reads should not pull neighbouring pages into the cache.
     * No WRITEMAP: a stray write through a pointer must not corrupt the file, and the file
     * stays sparse. */
    unsigned flags = MDB_NOTLS | MDB_NORDAHEAD | (o->no_sync ? MDB_NOSYNC : 0);
    s->map_size = o->map_size ? o->map_size : DEFAULT_MAP_SIZE;
    for (;;) {
        if ((rc = mdb_env_create(&s->env))) {
            r = vd_errf(err, vd__store_mdb_err(rc), "mdb_env_create: %s", mdb_strerror(rc));
            goto out_unlock;
        }
        mdb_env_set_mapsize(s->env, s->map_size);
        mdb_env_set_maxdbs(s->env, 12);
        mdb_env_set_maxreaders(s->env, MAX_READERS);
        rc = mdb_env_open(s->env, path, flags, 0600);
        /* The default map is only reserved address space; where less is available (a
         * sanitizer's layout, a ulimit -v) start smaller: the map grows on demand. */
        if (rc == ENOMEM && !o->map_size && s->map_size > MIN_DEFAULT_MAP) {
            mdb_env_close(s->env);
            s->map_size /= 4;
            continue;
        }
        if (rc) {
            r = vd_errf(err, vd__store_mdb_err(rc), "cannot open storage in '%s': %s", path,
                        mdb_strerror(rc));
            goto out_env;
        }
        break;
    }
    int dead = 0;
    mdb_reader_check(s->env, &dead);
    if (dead)
        vd_log_info("storage: cleared %d stale reader slots", dead);
    /* LMDB may have adopted a larger size written by an earlier run. */
    MDB_envinfo info;
    mdb_env_info(s->env, &info);
    s->map_size = info.me_mapsize;
    s->ctr.map_size = s->map_size;

    bool migrate = false;
    if ((r = init_tables(s, &migrate, err)))
        goto out_env;
    if (migrate && (r = vd__store_migrate(s, err)))
        goto out_env;
    /* A restarted node must never stamp a version at or below one it already made durable,
     * even when its wall clock went back (or ran ahead before the restart). */
    if (s->hlc_floor)
        vd_hlc_observe(s->hlc_floor);

    pthread_mutex_init(&s->rd_mu, NULL);
    pthread_cond_init(&s->rd_cv, NULL);
    pthread_mutex_init(&s->mu, NULL);
    /* Timed waits (the writer's sweep schedule and retry pauses, waiting for purges) use the
     * monotonic clock. */
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_cond_init(&s->idle_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&s->writer, NULL, vd__store_writer_main, s) != 0) {
        r = vd_errf(err, VD_ENOMEM, "cannot start the storage writer thread");
        goto out_sync;
    }
    s->writer_started = true;
    vd_log_info("storage: opened '%s' (node id %016llx, last change %llu)", path,
                (unsigned long long)s->node_id, (unsigned long long)s->last_seq);
    *out = s;
    return 0;

out_sync:
    pthread_cond_destroy(&s->idle_cv);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->rd_cv);
    pthread_mutex_destroy(&s->rd_mu);
out_env:
    mdb_env_close(s->env);
out_unlock:
    close(s->lock_fd); /* releases the flock */
out_free:
    free(s->dir);
    free(s);
    return r;
}

void vd_store_close(struct vd_store *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->closing = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (s->writer_started)
        pthread_join(s->writer, NULL);
    if (s->readers)
        vd_log_error("storage: closing with %u read transactions still open", s->readers);
    for (unsigned i = 0; i < s->pool_n; i++) {
        mdb_txn_abort(s->pool[i]->txn);
        free(s->pool[i]->chunks);
        free(s->pool[i]->scan_buf);
        free(s->pool[i]);
    }
    mdb_env_close(s->env);
    close(s->lock_fd);
    pthread_cond_destroy(&s->idle_cv);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->rd_cv);
    pthread_mutex_destroy(&s->rd_mu);
    free(s->q);
    free(s->group);
    free(s->dir);
    free(s);
}

uint64_t vd_store_node_id(const struct vd_store *s)
{
    return s->node_id;
}

uint64_t vd_store_last_seq(const struct vd_store *s)
{
    struct vd_store *m = (struct vd_store *)s; /* the lock is not part of the logical state */
    pthread_mutex_lock(&m->mu);
    uint64_t v = m->last_seq;
    pthread_mutex_unlock(&m->mu);
    return v;
}

int vd_store_stats(struct vd_store *s, struct vd_store_space *out)
{
    char path[4200];
    struct stat st;
    snprintf(path, sizeof path, "%s/data/data.mdb", s->dir);
    if (stat(path, &st) != 0)
        return VD_EIO;
    MDB_envinfo info;
    MDB_stat mst;
    mdb_env_info(s->env, &info);
    mdb_env_stat(s->env, &mst);
    out->file_bytes = (uint64_t)st.st_size;
    out->page_size = mst.ms_psize;
    out->used_bytes = ((uint64_t)info.me_last_pgno + 1) * mst.ms_psize;
    /* The free list is table 0: each record is a list of page numbers, its count first. */
    struct vd_rtxn *t;
    int r = vd_store_read_begin(s, &t);
    if (r)
        return r;
    MDB_cursor *cur;
    MDB_val k, v;
    uint64_t pages = 0;
    int rc = mdb_cursor_open(t->txn, 0, &cur);
    if (rc == 0) {
        while ((rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
            size_t n;
            if (v.mv_size < sizeof n) {
                rc = MDB_CORRUPTED;
                break;
            }
            memcpy(&n, v.mv_data, sizeof n);
            pages += n;
        }
        mdb_cursor_close(cur);
    }
    vd_store_read_end(t);
    if (rc != MDB_NOTFOUND)
        return vd__store_mdb_err(rc);
    out->free_bytes = pages * mst.ms_psize;
    return 0;
}

void vd_store_counters(struct vd_store *s, struct vd_store_counters *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->ctr;
    pthread_mutex_unlock(&s->mu);
}

int vd_store_purge_wait(struct vd_store *s, uint64_t timeout_ms)
{
    struct timespec dl;
    vd_mono_deadline(&dl, timeout_ms > UINT32_MAX ? UINT32_MAX : (unsigned)timeout_ms);
    int r = 0;
    pthread_mutex_lock(&s->mu);
    while (s->ctr.purges_pending > 0 && !s->failed) {
        if (pthread_cond_timedwait(&s->idle_cv, &s->mu, &dl) != 0) {
            r = s->ctr.purges_pending ? VD_ETIMEOUT : 0;
            break;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return r;
}

/* ---- reads --------------------------------------------------------------------------------- */

/* Slab of aligned copies of vectors returned by point_get; bump-allocated so a read that
 * fetches many small vectors makes few allocations, and one slab stays with a pooled
 * transaction so steady-state reads make none. */
struct vd__chunk {
    struct vd__chunk *next;
    size_t used, cap; /* in floats */
    float v[];
};
#define SLAB_FLOATS 16384

static float *slab_alloc(struct vd_rtxn *t, size_t n)
{
    struct vd__chunk *c = t->chunks;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > SLAB_FLOATS ? n : SLAB_FLOATS;
        c = malloc(sizeof *c + cap * sizeof(float));
        if (!c)
            return NULL;
        c->used = 0;
        c->cap = cap;
        c->next = t->chunks;
        t->chunks = c;
    }
    float *p = c->v + c->used;
    c->used += n;
    return p;
}

/* Frees the slabs except one standard slab, kept empty for reuse. */
static void slab_reset(struct vd_rtxn *t)
{
    struct vd__chunk *keep = NULL;
    for (struct vd__chunk *c = t->chunks, *n; c; c = n) {
        n = c->next;
        if (!keep && c->cap == SLAB_FLOATS) {
            keep = c;
            continue;
        }
        free(c);
    }
    if (keep) {
        keep->used = 0;
        keep->next = NULL;
    }
    t->chunks = keep;
}

void vd_store_read_release_views(struct vd_rtxn *t)
{
    slab_reset(t);
}

int vd_store_read_begin(struct vd_store *s, struct vd_rtxn **out)
{
    pthread_mutex_lock(&s->rd_mu);
    while (s->resizing)
        pthread_cond_wait(&s->rd_cv, &s->rd_mu);
    s->readers++;
    struct vd_rtxn *t = s->pool_n ? s->pool[--s->pool_n] : NULL;
    pthread_mutex_unlock(&s->rd_mu);
    int rc;
    if (t) {
        /* A reset transaction keeps its reader slot: renewing skips LMDB's reader-table lock. */
        if ((rc = mdb_txn_renew(t->txn)) == 0) {
            *out = t;
            return 0;
        }
        mdb_txn_abort(t->txn);
        free(t->chunks);
        free(t->scan_buf);
        free(t);
        goto out_unread;
    }
    t = calloc(1, sizeof *t);
    if (!t) {
        rc = ENOMEM;
        goto out_unread;
    }
    t->s = s;
    if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &t->txn))) {
        free(t);
        goto out_unread;
    }
    *out = t;
    return 0;

out_unread:
    pthread_mutex_lock(&s->rd_mu);
    if (--s->readers == 0)
        pthread_cond_broadcast(&s->rd_cv);
    pthread_mutex_unlock(&s->rd_mu);
    vd_log_error("storage: read transaction: %s", mdb_strerror(rc));
    return vd__store_mdb_err(rc);
}

void vd_store_read_end(struct vd_rtxn *t)
{
    if (!t)
        return;
    struct vd_store *s = t->s;
    slab_reset(t);
    if (t->scan_cap > RTXN_KEEP_FLOATS) { /* do not park big buffers in the pool */
        free(t->scan_buf);
        t->scan_buf = NULL;
        t->scan_cap = 0;
    }
    mdb_txn_reset(t->txn);
    pthread_mutex_lock(&s->rd_mu);
    if (--s->readers == 0)
        pthread_cond_broadcast(&s->rd_cv);
    if (s->pool_n < VD__RTXN_POOL) {
        s->pool[s->pool_n++] = t;
        t = NULL;
    }
    pthread_mutex_unlock(&s->rd_mu);
    if (t) {
        mdb_txn_abort(t->txn);
        free(t->chunks);
        free(t->scan_buf);
        free(t);
    }
}

/* Makes p->vec safe to dereference as float: LMDB aligns values only to 2 bytes inside a page
 * (large values on overflow pages are page-aligned and used in place). */
static int align_vec(struct vd_rtxn *t, struct vd_point_view *p, bool for_scan)
{
    if (!p->vec || ((uintptr_t)p->vec & (sizeof(float) - 1)) == 0)
        return 0;
    size_t bytes = (size_t)p->dim * sizeof(float);
    float *dst;
    if (for_scan) {
        if (t->scan_cap < p->dim) {
            float *nb = realloc(t->scan_buf, bytes);
            if (!nb)
                return VD_ENOMEM;
            t->scan_buf = nb;
            t->scan_cap = p->dim;
        }
        dst = t->scan_buf;
    } else {
        if (!(dst = slab_alloc(t, p->dim)))
            return VD_ENOMEM;
    }
    memcpy(dst, p->vec, bytes);
    p->vec = dst;
    return 0;
}

int vd_store_point_get(struct vd_rtxn *t, uint64_t incarnation, const struct vd_pid *id,
                       struct vd_point_view *out)
{
    uint8_t kb[VD__PT_KEY_MAX];
    MDB_val k = {vd__store_pt_key(incarnation, id, kb), kb}, v;
    int rc = mdb_get(t->txn, t->s->dbi_points, &k, &v);
    if (rc)
        return vd__store_mdb_err(rc);
    int r = vd__store_pt_decode(&v, out);
    if (r)
        return r;
    if (!vd_pid_eq(&out->id, id))
        return VD_ECORRUPT;
    return align_vec(t, out, false);
}

/* Decodes the value under points key k and passes it to fn; VD_ECORRUPT when the record does
 * not belong to the key. */
static int visit(struct vd_rtxn *t, const MDB_val *k, const MDB_val *v, bool with_tombstones,
                 vd_store_point_fn fn, void *ctx)
{
    struct vd_point_view p;
    struct vd_pid id;
    int r;
    if ((r = vd__store_pt_decode(v, &p)) ||
        (r = vd_pid_decode((const uint8_t *)k->mv_data + 8, k->mv_size - 8, &id)))
        return r;
    if (!vd_pid_eq(&p.id, &id))
        return VD_ECORRUPT;
    if (p.tombstone && !with_tombstones)
        return 0;
    if ((r = align_vec(t, &p, true)))
        return r;
    return fn(&p, ctx);
}

int vd_store_scan(struct vd_rtxn *t, uint64_t incarnation, const struct vd_pid *from,
                  bool with_tombstones, vd_store_point_fn fn, void *ctx)
{
    uint8_t kb[VD__PT_KEY_MAX];
    MDB_val k, v;
    MDB_cursor *cur;
    if (from) {
        k.mv_size = vd__store_pt_key(incarnation, from, kb);
    } else {
        vd_be64_put(kb, incarnation);
        k.mv_size = 8;
    }
    k.mv_data = kb;
    int rc = mdb_cursor_open(t->txn, t->s->dbi_points, &cur);
    if (rc)
        return vd__store_mdb_err(rc);
    int r = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < 9 || vd_be64_get(k.mv_data) != incarnation)
            break;
        if ((r = visit(t, &k, &v, with_tombstones, fn, ctx)))
            break;
    }
    if (r == 0 && rc != 0 && rc != MDB_NOTFOUND)
        r = vd__store_mdb_err(rc);
    mdb_cursor_close(cur);
    return r;
}

/* Visits the points of inc whose hash is in [lo, hi] in hash order. */
static int scan_hash_seg(struct vd_rtxn *t, MDB_cursor *cur, uint64_t inc, uint64_t lo,
                         uint64_t hi, bool with_tombstones, vd_store_point_fn fn, void *ctx)
{
    uint8_t kb[16];
    vd_be64_put(kb, inc);
    vd_be64_put(kb + 8, lo);
    MDB_val k = {16, kb}, v;
    int rc, r = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        const uint8_t *hk = k.mv_data;
        if (k.mv_size < 17 || vd_be64_get(hk) != inc || vd_be64_get(hk + 8) > hi)
            break;
        uint8_t pk[VD__PT_KEY_MAX];
        if (k.mv_size - 16 > VD_PID_KEY_MAX)
            return VD_ECORRUPT;
        memcpy(pk, hk, 8);
        memcpy(pk + 8, hk + 16, k.mv_size - 16);
        MDB_val ptk = {k.mv_size - 8, pk}, ptv;
        int grc = mdb_get(t->txn, t->s->dbi_points, &ptk, &ptv);
        if (grc) /* every hash entry has its point, in the same transaction */
            return grc == MDB_NOTFOUND ? VD_ECORRUPT : vd__store_mdb_err(grc);
        if ((r = visit(t, &ptk, &ptv, with_tombstones, fn, ctx)))
            return r;
    }
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : vd__store_mdb_err(rc);
}

int vd_store_scan_hash_range(struct vd_rtxn *t, uint64_t incarnation, uint64_t start,
                             uint64_t end, bool with_tombstones, vd_store_point_fn fn, void *ctx)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(t->txn, t->s->dbi_hash, &cur);
    if (rc)
        return vd__store_mdb_err(rc);
    int r;
    if (start < end) {
        r = scan_hash_seg(t, cur, incarnation, start + 1, end, with_tombstones, fn, ctx);
    } else if (start > end) { /* the arc wraps: (start, 2^64-1] then [0, end] */
        r = start == UINT64_MAX ? 0
                                : scan_hash_seg(t, cur, incarnation, start + 1, UINT64_MAX,
                                                with_tombstones, fn, ctx);
        if (r == 0)
            r = scan_hash_seg(t, cur, incarnation, 0, end, with_tombstones, fn, ctx);
    } else {
        r = scan_hash_seg(t, cur, incarnation, 0, UINT64_MAX, with_tombstones, fn, ctx);
    }
    mdb_cursor_close(cur);
    return r;
}

int vd_store_coll_list(struct vd_rtxn *t, vd_store_coll_fn fn, void *ctx)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(t->txn, t->s->dbi_colls, &cur);
    if (rc)
        return vd__store_mdb_err(rc);
    int r = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        struct vd_coll_schema c;
        if ((r = vd__store_schema_decode(&v, &c)) || (r = fn(&c, ctx)))
            break;
    }
    if (r == 0 && rc != 0 && rc != MDB_NOTFOUND)
        r = vd__store_mdb_err(rc);
    mdb_cursor_close(cur);
    return r;
}

int vd_store_coll_get(struct vd_rtxn *t, const char *name, struct vd_coll_schema *out)
{
    size_t n = strlen(name);
    if (n == 0 || n > 255)
        return VD_ENOTFOUND;
    MDB_val k = {n, (void *)name}, v;
    int rc = mdb_get(t->txn, t->s->dbi_colls, &k, &v);
    if (rc)
        return vd__store_mdb_err(rc);
    return vd__store_schema_decode(&v, out);
}

int vd_store_pindex_list(struct vd_rtxn *t, uint64_t incarnation, vd_store_pindex_fn fn, void *ctx)
{
    uint8_t kb[8];
    vd_be64_put(kb, incarnation);
    MDB_val k = {8, kb}, v;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(t->txn, t->s->dbi_pindex, &cur);
    if (rc)
        return vd__store_mdb_err(rc);
    int r = 0;
    char name[VD_STORE_PINDEX_NAME_MAX + 1];
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < 8 || memcmp(k.mv_data, kb, 8) != 0)
            break;
        size_t nl = k.mv_size - 8;
        if (nl == 0 || nl > VD_STORE_PINDEX_NAME_MAX || v.mv_size < 2 ||
            ((const uint8_t *)v.mv_data)[0] != 1) {
            r = VD_ECORRUPT;
            break;
        }
        memcpy(name, (const char *)k.mv_data + 8, nl);
        name[nl] = 0;
        if ((r = fn(name, ((const uint8_t *)v.mv_data)[1], ctx)))
            break;
    }
    if (r == 0 && rc != 0 && rc != MDB_NOTFOUND)
        r = vd__store_mdb_err(rc);
    mdb_cursor_close(cur);
    return r;
}

int vd_store_changes_since(struct vd_rtxn *t, uint64_t after, vd_store_change_fn fn, void *ctx)
{
    if (after == UINT64_MAX)
        return 0;
    uint8_t kb[8];
    vd_be64_put(kb, after + 1);
    MDB_val k = {8, kb}, v;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(t->txn, t->s->dbi_changes, &cur);
    if (rc)
        return vd__store_mdb_err(rc);
    int r = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        struct vd_pid id;
        if (k.mv_size != 8 || v.mv_size < 9) {
            r = VD_ECORRUPT;
            break;
        }
        const uint8_t *p = v.mv_data;
        if ((r = vd_pid_decode(p + 8, v.mv_size - 8, &id)))
            break;
        if ((r = fn(vd_be64_get(p), &id, vd_be64_get(k.mv_data), ctx)))
            break;
    }
    if (r == 0 && rc != 0 && rc != MDB_NOTFOUND)
        r = vd__store_mdb_err(rc);
    mdb_cursor_close(cur);
    return r;
}

int vd_store_changes_stat(struct vd_rtxn *t, uint64_t *entries, uint64_t *first)
{
    MDB_stat st;
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_stat(t->txn, t->s->dbi_changes, &st);
    if (rc || (rc = mdb_cursor_open(t->txn, t->s->dbi_changes, &cur)))
        return vd__store_mdb_err(rc);
    rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        return vd__store_mdb_err(rc);
    *entries = st.ms_entries;
    *first = rc == 0 && k.mv_size == 8 ? vd_be64_get(k.mv_data) : 0;
    return 0;
}
