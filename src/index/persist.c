/*
 * Saving and loading the graph.
 *
 * File format, version 1 (integers little-endian):
 *   header  "VDHNSW\0\1" u32 version, u32 dim, u32 metric, u32 m, u64 applied_seq,
 *           u32 nslots, u32 ep_slot (UINT32_MAX: none), u32 ep_level, u32 reserved
 *   nslots records: u8 kind (0 free, 1 linked, 2 pending, 3 linked but deleted);
 *           kinds 1..3: u8 key length, key (vd_pid_encode); kinds 1 and 3: u8 level, then for
 *           each layer 0..level: u32 count, count x u32 links
 *   trailer u64 total length of everything before it, u32 CRC-32C of everything before it
 * Version 2 (written only by a quantized index whose range is trained) adds, right after the
 * header, f32 lo, f32 alpha of the int8 range (value = lo + alpha * code) and f32 the quantile
 * it was trained for; the codes are made again from the fetched vectors.
 * Vectors are not stored: storage has them, and asking it for them (fetch) keeps one source of
 * truth and the file about 1/10 of the vector bytes. Deleted-but-linked slots keep their links so
 * the graph stays connected; load repairs around them at once.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hnsw_int.h"

#define MAGIC "VDHNSW\0\1"
#define VERSION 1u
#define VERSION_QUANT 2u
#define HDR_LEN 48

enum { K_FREE = 0, K_LINKED = 1, K_PENDING = 2, K_TOMB = 3 };

struct wbuf {
    uint8_t *p;
    size_t n, cap;
    bool oom;
};

static void put(struct wbuf *w, const void *d, size_t n)
{
    if (w->oom)
        return;
    if (w->n + n > w->cap) {
        size_t nc = w->cap ? w->cap : 1 << 16;
        while (nc < w->n + n)
            nc *= 2;
        uint8_t *q = realloc(w->p, nc);
        if (!q) {
            w->oom = true;
            return;
        }
        w->p = q;
        w->cap = nc;
    }
    memcpy(w->p + w->n, d, n);
    w->n += n;
}
static void put_u8(struct wbuf *w, uint8_t v)
{
    put(w, &v, 1);
}
static void put_u32(struct wbuf *w, uint32_t v)
{
    put(w, &v, 4);
}
static void put_u64(struct wbuf *w, uint64_t v)
{
    put(w, &v, 8);
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return VD_EIO;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int fsync_dir_of(const char *path)
{
    char *dup = strdup(path);
    if (!dup)
        return VD_ENOMEM;
    int fd = open(dirname(dup), O_RDONLY | O_DIRECTORY);
    free(dup);
    if (fd < 0)
        return VD_EIO;
    int rc = fsync(fd) == 0 ? 0 : VD_EIO;
    close(fd);
    return rc;
}

int vd_index_save(struct vd_index *ix, const char *path)
{
    struct wbuf w = {0};
    int rc;
    /* exclusive gate: no linker changes links while we copy them; mu: no slot changes state */
    pthread_rwlock_wrlock(&ix->gate);
    pthread_mutex_lock(&ix->mu);
    const struct vd__tabs *t = atomic_load(&ix->tabs);
    uint32_t n = atomic_load(&ix->nslots);
    uint64_t epv = atomic_load(&ix->ep);
    bool quant = ix->q.enabled && atomic_load(&ix->qready);
    put(&w, MAGIC, 8);
    put_u32(&w, quant ? VERSION_QUANT : VERSION);
    put_u32(&w, ix->p.dim);
    put_u32(&w, (uint32_t)ix->p.metric);
    put_u32(&w, ix->m);
    put_u64(&w, atomic_load(&ix->seq));
    put_u32(&w, n);
    put_u32(&w, epv == VD_EP_NONE ? UINT32_MAX : (uint32_t)epv);
    put_u32(&w, epv == VD_EP_NONE ? 0 : (uint32_t)(epv >> 32));
    put_u32(&w, 0);
    if (quant) {
        put(&w, &ix->qlo, 4);
        put(&w, &ix->qalpha, 4);
        put(&w, &ix->qtrained_q, 4);
    }
    for (uint32_t s = 0; s < n; s++) {
        uint8_t *b = vd__blk(ix, t, s);
        struct vd__meta *mt = vd__meta(ix, t, s);
        uint8_t st = atomic_load(vd__state(ix, b));
        uint8_t kind;
        if (mt->in_graph)
            kind = (st == ST_LIVE || st == ST_LINKING) ? K_LINKED : K_TOMB;
        else
            kind = (st == ST_PENDING || st == ST_LINKING) ? K_PENDING : K_FREE;
        /* an unlinked deleted slot carries nothing worth keeping */
        put_u8(&w, kind);
        if (kind == K_FREE)
            continue;
        uint8_t key[VD_PID_KEY_MAX];
        size_t kl = vd_pid_encode(&mt->id, key);
        put_u8(&w, (uint8_t)kl);
        put(&w, key, kl);
        if (kind == K_PENDING)
            continue;
        put_u8(&w, mt->level);
        for (uint32_t l = 0; l <= mt->level; l++) {
            _Atomic uint32_t *ll = l == 0 ? vd__l0(ix, b) : mt->upper + (size_t)(l - 1) * (ix->m + 1);
            uint32_t cnt = atomic_load(&ll[0]);
            put_u32(&w, cnt);
            for (uint32_t j = 1; j <= cnt; j++)
                put_u32(&w, atomic_load(&ll[j]));
        }
    }
    pthread_mutex_unlock(&ix->mu);
    pthread_rwlock_unlock(&ix->gate);
    put_u64(&w, w.n);
    put_u32(&w, vd_crc32c(0, w.p, w.n));
    if (w.oom) {
        rc = VD_ENOMEM;
        goto out_free_buf;
    }

    size_t pl = strlen(path);
    char *tmp = malloc(pl + 5);
    if (!tmp) {
        rc = VD_ENOMEM;
        goto out_free_buf;
    }
    memcpy(tmp, path, pl);
    memcpy(tmp + pl, ".tmp", 5);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = VD_EIO;
        goto out_free_tmp;
    }
    rc = write_all(fd, w.p, w.n);
    if (!rc && fsync(fd) != 0)
        rc = VD_EIO;
    if (close(fd) != 0 && !rc)
        rc = VD_EIO;
    if (!rc && rename(tmp, path) != 0)
        rc = VD_EIO;
    if (!rc)
        rc = fsync_dir_of(path);
    if (rc)
        unlink(tmp);
out_free_tmp:
    free(tmp);
out_free_buf:
    free(w.p);
    return rc;
}

struct rbuf {
    const uint8_t *p;
    size_t n, off;
    bool bad;
};

static const uint8_t *get(struct rbuf *r, size_t n)
{
    if (r->bad || r->n - r->off < n) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *q = r->p + r->off;
    r->off += n;
    return q;
}
static uint8_t get_u8(struct rbuf *r)
{
    const uint8_t *q = get(r, 1);
    return q ? *q : 0;
}
static uint32_t get_u32(struct rbuf *r)
{
    uint32_t v = 0;
    const uint8_t *q = get(r, 4);
    if (q)
        memcpy(&v, q, 4);
    return v;
}
static uint64_t get_u64(struct rbuf *r)
{
    uint64_t v = 0;
    const uint8_t *q = get(r, 8);
    if (q)
        memcpy(&v, q, 8);
    return v;
}

static int read_file(const char *path, uint8_t **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? VD_ENOTFOUND : VD_EIO;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return VD_EIO;
    }
    size_t n = (size_t)st.st_size;
    uint8_t *p = malloc(n ? n : 1);
    if (!p) {
        close(fd);
        return VD_ENOMEM;
    }
    size_t got = 0;
    while (got < n) {
        ssize_t k = read(fd, p + got, n - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    close(fd);
    if (got != n) {
        free(p);
        return VD_EIO;
    }
    *out = p;
    *len = n;
    return 0;
}

/* Reads the layer lists of one linked slot into the index; VD_ECORRUPT on a bad record. */
static int load_links(struct vd_index *ix, struct rbuf *r, uint32_t s, uint32_t nslots)
{
    const struct vd__tabs *t = atomic_load(&ix->tabs);
    struct vd__meta *mt = vd__meta(ix, t, s);
    uint32_t level = get_u8(r);
    if (r->bad || level > VD_HNSW_MAX_LEVEL)
        return VD_ECORRUPT;
    if (level) {
        mt->upper = calloc((size_t)level * (ix->m + 1), sizeof(*mt->upper));
        if (!mt->upper)
            return VD_ENOMEM;
        atomic_fetch_add(&ix->upper_bytes, (size_t)level * (ix->m + 1) * sizeof(uint32_t));
    }
    mt->level = (uint8_t)level;
    mt->in_graph = 1;
    for (uint32_t l = 0; l <= level; l++) {
        _Atomic uint32_t *ll = l == 0 ? vd__l0(ix, vd__blk(ix, t, s))
                                      : mt->upper + (size_t)(l - 1) * (ix->m + 1);
        uint32_t cnt = get_u32(r);
        if (r->bad || cnt > (l == 0 ? ix->m0 : ix->m))
            return VD_ECORRUPT;
        for (uint32_t j = 1; j <= cnt; j++) {
            uint32_t v = get_u32(r);
            if (r->bad || v >= nslots)
                return VD_ECORRUPT;
            atomic_store(&ll[j], v);
        }
        atomic_store(&ll[0], cnt);
    }
    return 0;
}

int vd_index_load(const char *path, const struct vd_index_params *p, vd_index_fetch_fn fetch,
                  void *ctx, struct vd_index **out)
{
    uint8_t *buf;
    size_t len;
    int rc = read_file(path, &buf, &len);
    if (rc)
        return rc;
    struct vd_index *ix = NULL;
    rc = VD_ECORRUPT;
    if (len < HDR_LEN + 12 || memcmp(buf, MAGIC, 8) != 0)
        goto out_free_buf;
    uint64_t body;
    uint32_t crc;
    memcpy(&body, buf + len - 12, 8);
    memcpy(&crc, buf + len - 4, 4);
    if (body != len - 12 || vd_crc32c(0, buf, len - 4) != crc)
        goto out_free_buf;
    struct rbuf r = {buf, len - 12, 8, false};
    uint32_t version = get_u32(&r), dim = get_u32(&r), metric = get_u32(&r), m = get_u32(&r);
    uint64_t seq = get_u64(&r);
    uint32_t nslots = get_u32(&r), ep = get_u32(&r), ep_level = get_u32(&r);
    (void)get_u32(&r);
    float qlo = 0.0f, qalpha = 0.0f, qq = 0.0f;
    if (version == VERSION_QUANT) {
        const uint8_t *qr = get(&r, 12);
        if (!qr)
            goto out_free_buf;
        memcpy(&qlo, qr, 4);
        memcpy(&qalpha, qr + 4, 4);
        memcpy(&qq, qr + 8, 4);
        if (!isfinite(qlo) || !isfinite(qalpha) || !(qalpha > 0.0f) || !(qq >= 0.5f && qq <= 1.0f))
            goto out_free_buf;
    }
    if ((version != VERSION && version != VERSION_QUANT) || dim != p->dim || metric != (uint32_t)p->metric ||
        m != (p->m ? p->m : 16) || nslots >= VD_SLOT_NONE - 2 ||
        (ep != UINT32_MAX && (ep >= nslots || ep_level > VD_HNSW_MAX_LEVEL)))
        goto out_free_buf;
    rc = vd_index_new(p, &ix);
    if (rc)
        goto out_free_buf;
    atomic_store(&ix->seq, seq);
    bool dropped = false;
    /* A lean index that keeps its floats on disk and has its saved range encodes each fetched
     * vector at once and never holds the floats (they pass through one scratch vector). */
    bool direct = version == VERSION_QUANT && qq == vd__quant_quantile(&ix->q) &&
                  vd__floats_on_disk(ix);
    float *scratch = NULL;
    if (direct) {
        if (!(scratch = malloc(ix->vec_bytes))) {
            rc = VD_ENOMEM;
            goto out_free_index;
        }
        vd__quant_set_range(ix, qlo, qalpha);
        ix->fheld = false;
    }
    /* Record s goes to slot s, since links name slots. Free slots join the free list only after
     * the loop: alloc_slot hands out free-list slots first, so pushing them here would give a
     * later record an earlier slot and leave nslots short of the slots actually in use (which
     * then the repair, save, free and the next upserts would not see as taken). */
    for (uint32_t s = 0; s < nslots; s++) {
        uint32_t got;
        if ((rc = vd__index_alloc_slot(ix, &got)) != 0)
            goto out_free_index;
        if (got != s) {
            rc = VD_ECORRUPT; /* cannot happen: the free list is empty while loading */
            goto out_free_index;
        }
        const struct vd__tabs *t = atomic_load(&ix->tabs);
        uint8_t *b = vd__blk(ix, t, s);
        struct vd__meta *mt = vd__meta(ix, t, s);
        rc = VD_ECORRUPT;
        uint8_t kind = get_u8(&r);
        if (r.bad || kind > K_TOMB)
            goto out_free_index;
        if (kind == K_FREE)
            continue;
        uint8_t kl = get_u8(&r);
        const uint8_t *key = get(&r, kl);
        if (!key || vd_pid_decode(key, kl, &mt->id) != 0)
            goto out_free_index;
        if (kind == K_LINKED || kind == K_TOMB) {
            if ((rc = load_links(ix, &r, s, nslots)) != 0)
                goto out_free_index;
        }
        float *dst = direct ? scratch : vd__vec(ix, t, s);
        int fr = kind == K_TOMB ? VD_ENOTFOUND : fetch(&mt->id, dst, ctx);
        if (fr == 0 && direct)
            vd__quant_encode(ix, scratch, vd__code(ix, t, s));
        if (fr == VD_ENOTFOUND) {
            if (kind == K_PENDING)
                continue; /* never linked: simply free, pushed after the loop */
            /* still linked: a tombstone until the repair below */
            if (!direct)
                memset(dst, 0, ix->vec_bytes);
            atomic_store(vd__state(ix, b), ST_DELETED);
            atomic_fetch_add(&ix->tomb, 1);
            dropped = true;
            continue;
        }
        if (fr) {
            rc = fr;
            goto out_free_index;
        }
        if ((rc = vd__index_map_put(ix, s)) != 0) {
            rc = rc == VD_EEXIST ? VD_ECORRUPT : rc;
            goto out_free_index;
        }
        atomic_fetch_add(&ix->live, 1);
        if (kind == K_PENDING) {
            if ((rc = vd__index_pend_push(ix, s)) != 0)
                goto out_free_index;
            atomic_fetch_add(&ix->pending, 1);
            atomic_store(vd__state(ix, b), ST_PENDING);
        } else {
            atomic_store(vd__state(ix, b), ST_LIVE);
        }
    }
    if (r.off != r.n) {
        rc = VD_ECORRUPT;
        goto out_free_index;
    }
    {
        const struct vd__tabs *t = atomic_load(&ix->tabs);
        for (uint32_t s = 0; s < nslots; s++)
            if (atomic_load(vd__state(ix, vd__blk(ix, t, s))) == ST_FREE &&
                (rc = vd__index_free_push(ix, s)) != 0)
                goto out_free_index;
    }
    if (ep != UINT32_MAX) {
        const struct vd__tabs *t = atomic_load(&ix->tabs);
        if (!vd__meta(ix, t, ep)->in_graph || vd__meta(ix, t, ep)->level != ep_level) {
            rc = VD_ECORRUPT;
            goto out_free_index;
        }
        atomic_store(&ix->ep, ((uint64_t)ep_level << 32) | ep);
    }
    if (direct) {
        ix->qtrained_n = atomic_load(&ix->live);
        ix->qtrained_q = qq;
        atomic_store(&ix->qready, true);
    }
    if (dropped)
        vd__index_repair(ix, true);
    if (ix->q.enabled && !direct) {
        /* the saved range when there is one for this quantile (searches answer as before the
         * restart), else a fresh training once there are enough points: the quantile may have
         * changed after the graph was last saved */
        if (version == VERSION_QUANT && qq == vd__quant_quantile(&ix->q)) {
            pthread_rwlock_wrlock(&ix->gate);
            pthread_mutex_lock(&ix->mu);
            vd__quant_apply_range(ix, qlo, qalpha);
            ix->qtrained_q = qq;
            pthread_mutex_unlock(&ix->mu);
            pthread_rwlock_unlock(&ix->gate);
        } else if (atomic_load(&ix->live) >= VD_INDEX_QUANT_TRAIN_MIN &&
                   (rc = vd__quant_train(ix)) != 0) {
            goto out_free_index;
        }
    }
    free(scratch);
    free(buf);
    *out = ix;
    return 0;

out_free_index:
    free(scratch);
    vd_index_free(ix);
out_free_buf:
    free(buf);
    return rc;
}
