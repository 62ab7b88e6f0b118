/*
 * HNSW graph (Malkov & Yashunin, "Efficient and robust approximate nearest neighbor search using
 * Hierarchical Navigable Small World graphs", 2016/2018), exact scan and the unlinked tail.
 * Layout and locking rules are described in hnsw_int.h.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hnsw_int.h"

#define MAP_EMPTY UINT32_MAX
#define MAP_TOMB (UINT32_MAX - 1)

/* ---- small utilities --------------------------------------------------------------------- */

static inline float dist(const struct vd_index *ix, const float *a, const float *b)
{
    float d = ix->raw(a, b, ix->p.dim);
    return ix->negate ? -d : d;
}

static float to_score(const struct vd_index *ix, float d)
{
    switch (ix->p.metric) {
    case VD_METRIC_COSINE:
    case VD_METRIC_DOT:
        return -d;
    case VD_METRIC_EUCLID:
        return sqrtf(d > 0.0f ? d : 0.0f);
    default:
        return d;
    }
}

static inline void spin_lock(atomic_flag *f)
{
    while (atomic_flag_test_and_set_explicit(f, memory_order_acquire))
        __builtin_ia32_pause();
}
static inline void spin_unlock(atomic_flag *f)
{
    atomic_flag_clear_explicit(f, memory_order_release);
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static inline struct vd__tabs *tabs_get(const struct vd_index *ix)
{
    return atomic_load_explicit(&((struct vd_index *)ix)->tabs, memory_order_acquire);
}

static inline const float *vec_of(const struct vd_index *ix, const struct vd__tabs *t, uint32_t s)
{
    return vd__vec(ix, t, s);
}

/* Distance between two stored slots: on the floats when they are in memory, else on the codes
 * (a lean index without its floats links and repairs its graph on the codes). */
static inline float slot_dist(const struct vd_index *ix, const struct vd__tabs *t, uint32_t a,
                              uint32_t b)
{
    if (vd__floats(ix))
        return dist(ix, vec_of(ix, t, a), vec_of(ix, t, b));
    return vd__code_dist(ix, vd__code(ix, t, a), vd__code(ix, t, b));
}

/* Distance from q to the float vector of slot s: in memory when rd is NULL, else read through
 * the open source read rd. Returns 0, VD_ENOTFOUND (the point is gone from storage: leave it
 * out) or the source's error. */
static inline int float_dist(const struct vd_index *ix, const struct vd__tabs *t, void *rd,
                             const float *q, uint32_t s, float *d)
{
    if (!rd) {
        *d = dist(ix, q, vec_of(ix, t, s));
        return 0;
    }
    const float *v;
    int rc = ix->p.src.get(ix->p.src.ctx, rd, &vd__meta(ix, t, s)->id, &v);
    if (rc == 0)
        *d = dist(ix, q, v);
    return rc;
}

/* Neighbour list of slot s on layer l: word 0 count, then links. */
static inline _Atomic uint32_t *links_of(const struct vd_index *ix, const struct vd__tabs *t,
                                         uint32_t s, uint32_t l)
{
    if (l == 0)
        return vd__l0(ix, vd__blk(ix, t, s));
    return vd__meta(ix, t, s)->upper + (size_t)(l - 1) * (ix->m + 1);
}

static inline uint8_t state_of(const struct vd_index *ix, const struct vd__tabs *t, uint32_t s)
{
    return atomic_load_explicit(vd__state(ix, vd__blk(ix, t, s)), memory_order_acquire);
}

static inline void state_set(const struct vd_index *ix, const struct vd__tabs *t, uint32_t s,
                             uint8_t st)
{
    atomic_store_explicit(vd__state(ix, vd__blk(ix, t, s)), st, memory_order_release);
}

static inline bool visible(uint8_t st)
{
    return st == ST_PENDING || st == ST_LINKING || st == ST_LIVE;
}

/* ---- heaps (min-heap of candidates, max-heap of results) --------------------------------- */

static inline void minheap_push(struct vd__cand *h, uint32_t *n, struct vd__cand c)
{
    uint32_t i = (*n)++;
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (h[p].d <= c.d)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static inline struct vd__cand minheap_pop(struct vd__cand *h, uint32_t *n)
{
    struct vd__cand top = h[0], last = h[--(*n)];
    uint32_t i = 0, cnt = *n;
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= cnt)
            break;
        if (c + 1 < cnt && h[c + 1].d < h[c].d)
            c++;
        if (last.d <= h[c].d)
            break;
        h[i] = h[c];
        i = c;
    }
    if (cnt)
        h[i] = last;
    return top;
}

static inline void maxheap_push(struct vd__cand *h, uint32_t *n, struct vd__cand c)
{
    uint32_t i = (*n)++;
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (h[p].d >= c.d)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static inline struct vd__cand maxheap_pop(struct vd__cand *h, uint32_t *n)
{
    struct vd__cand top = h[0], last = h[--(*n)];
    uint32_t i = 0, cnt = *n;
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= cnt)
            break;
        if (c + 1 < cnt && h[c + 1].d > h[c].d)
            c++;
        if (last.d >= h[c].d)
            break;
        h[i] = h[c];
        i = c;
    }
    if (cnt)
        h[i] = last;
    return top;
}

static int cand_cmp(const void *a, const void *b)
{
    const struct vd__cand *x = a, *y = b;
    return x->d < y->d ? -1 : x->d > y->d ? 1 : (x->id > y->id) - (x->id < y->id);
}

/* ---- search contexts (pooled) ------------------------------------------------------------- */

static int grow_cands(struct vd__cand **arr, uint32_t *cap, uint32_t need)
{
    if (need <= *cap)
        return 0;
    uint32_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    struct vd__cand *p = realloc(*arr, (size_t)n * sizeof(*p));
    if (!p)
        return VD_ENOMEM;
    *arr = p;
    *cap = n;
    return 0;
}

static int ctx_tags_fit(struct vd__sctx *c, uint32_t need)
{
    if (need <= c->tag_cap)
        return 0;
    uint32_t n = c->tag_cap ? c->tag_cap : 1024;
    while (n < need)
        n *= 2;
    uint16_t *p = realloc(c->tags, (size_t)n * sizeof(*p));
    if (!p)
        return VD_ENOMEM;
    memset(p + c->tag_cap, 0, (size_t)(n - c->tag_cap) * sizeof(*p));
    c->tags = p;
    c->tag_cap = n;
    return 0;
}

static void ctx_free(struct vd__sctx *c)
{
    if (!c)
        return;
    free(c->tags);
    free(c->cand);
    free(c->top);
    free(c->tmp);
    free(c->ids);
    free(c->qcode);
    free(c);
}

/* Takes a context from the pool (or makes one) sized for the current table and ef. */
static struct vd__sctx *ctx_get(struct vd_index *ix, const struct vd__tabs *t, uint32_t ef)
{
    struct vd__sctx *c = NULL;
    pthread_mutex_lock(&ix->pool_mu);
    if (ix->npool)
        c = ix->pool[--ix->npool];
    pthread_mutex_unlock(&ix->pool_mu);
    if (!c) {
        c = calloc(1, sizeof(*c));
        if (!c)
            return NULL;
        pthread_mutex_lock(&ix->pool_mu);
        ix->nctx++;
        pthread_mutex_unlock(&ix->pool_mu);
    }
    uint32_t slots = t->cap << ix->chunk_shift;
    if (ctx_tags_fit(c, slots) || grow_cands(&c->top, &c->top_cap, ef + 2) ||
        grow_cands(&c->cand, &c->cand_cap, ef + ix->m0 + 2) ||
        grow_cands(&c->tmp, &c->tmp_cap, 4 * ix->m0 + 8)) {
        ctx_free(c);
        pthread_mutex_lock(&ix->pool_mu);
        ix->nctx--;
        pthread_mutex_unlock(&ix->pool_mu);
        return NULL;
    }
    c->lim = slots;
    return c;
}

static void ctx_put(struct vd_index *ix, struct vd__sctx *c)
{
    pthread_mutex_lock(&ix->pool_mu);
    if (ix->npool == ix->pool_cap) {
        size_t n = ix->pool_cap ? ix->pool_cap * 2 : 8;
        struct vd__sctx **p = realloc(ix->pool, n * sizeof(*p));
        if (!p) {
            ix->nctx--;
            pthread_mutex_unlock(&ix->pool_mu);
            ctx_free(c);
            return;
        }
        ix->pool = p;
        ix->pool_cap = n;
    }
    ix->pool[ix->npool++] = c;
    pthread_mutex_unlock(&ix->pool_mu);
}

static inline void ctx_new_epoch(struct vd__sctx *c)
{
    if (++c->epoch == 0) {
        memset(c->tags, 0, (size_t)c->tag_cap * sizeof(*c->tags));
        c->epoch = 1;
    }
}

/* A link to a slot beyond the caller's table snapshot: the table grew since the search began.
 * Reloads it and widens the visited tags. Returns false only on allocation failure. */
static bool refresh_tabs(struct vd_index *ix, struct vd__sctx *c, const struct vd__tabs **t,
                         uint32_t v)
{
    *t = tabs_get(ix);
    uint32_t slots = (*t)->cap << ix->chunk_shift;
    if (v >= slots || ctx_tags_fit(c, slots))
        return false;
    c->lim = slots;
    return true;
}

/* ---- core searches ----------------------------------------------------------------------- */

/* Cache lines of the next vector asked for ahead of its distance computation. One line (what
 * hnswlib does) leaves a 1536-d vector (96 lines, crossing pages where the hardware prefetcher
 * stops) mostly to demand misses; the whole vector floods the load queue and measured slower.
 * 16 measured best on 100k x 1536 (in-process, interleaved with the one-line loop: +3-5 %
 * queries per CPU second, about the noise of this machine). */
#define PREFETCH_LINES 16

/* Asks for the first cache lines of a vector ahead of its distance computation. */
static inline void prefetch_vec(const struct vd_index *ix, const float *v)
{
    const char *p = (const char *)v;
    size_t lines = (ix->vec_bytes + 63) / 64;
    if (lines > PREFETCH_LINES)
        lines = PREFETCH_LINES;
    for (size_t i = 0; i < lines; i++)
        __builtin_prefetch(p + 64 * i);
}

/* Prefetches what the distance to slot v reads: its code row when walking on codes (qc set),
 * else its vector. */
static inline void prefetch_node(const struct vd_index *ix, const struct vd__tabs *t,
                                 const uint8_t *qc, uint32_t v)
{
    if (!qc) {
        prefetch_vec(ix, vec_of(ix, t, v));
        return;
    }
    const char *p = (const char *)vd__code(ix, t, v);
    size_t lines = ix->code_size / 64;
    if (lines > PREFETCH_LINES)
        lines = PREFETCH_LINES;
    for (size_t i = 0; i < lines; i++)
        __builtin_prefetch(p + 64 * i);
}

/* Distance from the query to slot v: on codes when qc (the query's code row) is given. */
static inline float node_dist(const struct vd_index *ix, const struct vd__tabs *t, const float *q,
                              const uint8_t *qc, uint32_t v)
{
    return qc ? vd__code_dist(ix, qc, vd__code(ix, t, v)) : dist(ix, q, vec_of(ix, t, v));
}

/* Greedy walk on upper layer l (paper, Alg. 5 with ef = 1): returns the closest node found. */
static uint32_t greedy_layer(struct vd_index *ix, struct vd__sctx *c, const struct vd__tabs **tp,
                             const float *q, const uint8_t *qc, uint32_t cur, float *curd,
                             uint32_t l)
{
    bool changed = true;
    while (changed) {
        changed = false;
        _Atomic uint32_t *ll = links_of(ix, *tp, cur, l);
        uint32_t n = atomic_load_explicit(&ll[0], memory_order_acquire);
        if (n > ix->m)
            n = ix->m;
        for (uint32_t j = 1; j <= n; j++) {
            uint32_t v = atomic_load_explicit(&ll[j], memory_order_acquire);
            if (v >= c->lim && !refresh_tabs(ix, c, tp, v))
                continue;
            float d = node_dist(ix, *tp, q, qc, v);
            if (d < *curd) {
                *curd = d;
                cur = v;
                changed = true;
            }
        }
    }
    return cur;
}

/*
 * Beam search on layer l from ep (paper, Alg. 2; the stop rule of hnswlib's searchBaseLayerST).
 * Leaves up to ef accepted nodes in c->top (max-heap). Accepted = visible state and, when given,
 * filter() true; other nodes are still expanded so a filter or deletions do not cut the graph.
 * When `filtering`, the search keeps going until ef accepted nodes are found or the reachable
 * graph is exhausted.
 */
static void search_layer(struct vd_index *ix, struct vd__sctx *c, const struct vd__tabs **tp,
                         const float *q, const uint8_t *qc, uint32_t ep, float epd, uint32_t ef,
                         uint32_t l, vd_index_filter_fn filter, void *fctx, bool filtering)
{
    const struct vd__tabs *t = *tp;
    ctx_new_epoch(c);
    uint16_t *tags = c->tags;
    const uint16_t epoch = c->epoch;
    const uint32_t cap = l == 0 ? ix->m0 : ix->m;
    c->ncand = c->ntop = 0;
    float lower = INFINITY;
    uint8_t st = state_of(ix, t, ep);
    if (visible(st) && (!filter || filter(&vd__meta(ix, t, ep)->id, ep, fctx))) {
        maxheap_push(c->top, &c->ntop, (struct vd__cand){epd, ep});
        lower = epd;
    }
    minheap_push(c->cand, &c->ncand, (struct vd__cand){epd, ep});
    tags[ep] = epoch;

    while (c->ncand) {
        struct vd__cand cur = c->cand[0];
        if (cur.d > lower && (c->ntop >= ef || !filtering))
            break;
        minheap_pop(c->cand, &c->ncand);
        _Atomic uint32_t *ll = links_of(ix, t, cur.id, l);
        uint32_t n = atomic_load_explicit(&ll[0], memory_order_acquire);
        if (n > cap)
            n = cap;
        /* Pass 1: the unvisited neighbours, marked at once. Their visited tags sit in one small
         * array, so this pass is cheap; it lets pass 2 know which vector comes next. */
        uint32_t todo[2 * 128], k = 0;
        for (uint32_t j = 1; j <= n; j++) {
            uint32_t v = atomic_load_explicit(&ll[j], memory_order_acquire);
            if (__builtin_expect(v >= c->lim, 0)) {
                if (!refresh_tabs(ix, c, tp, v))
                    continue;
                t = *tp;
                tags = c->tags;
            }
            if (tags[v] == epoch)
                continue;
            tags[v] = epoch;
            todo[k++] = v;
        }
        if (k)
            prefetch_node(ix, t, qc, todo[0]);
        /* Pass 2: distances, each vector fetched while the previous one is being summed. */
        for (uint32_t i = 0; i < k; i++) {
            uint32_t v = todo[i];
            if (i + 1 < k)
                prefetch_node(ix, t, qc, todo[i + 1]);
            const uint8_t *vb = vd__blk(ix, t, v);
            float d = qc ? vd__code_dist(ix, qc, vd__code(ix, t, v)) : dist(ix, q, vec_of(ix, t, v));
            if (c->ntop < ef || d < lower) {
                if (c->ncand + 1 >= c->cand_cap && grow_cands(&c->cand, &c->cand_cap, c->ncand + 2))
                    continue;
                minheap_push(c->cand, &c->ncand, (struct vd__cand){d, v});
                uint8_t vs = atomic_load_explicit(vd__state(ix, (uint8_t *)vb), memory_order_acquire);
                if (visible(vs) && (!filter || filter(&vd__meta(ix, t, v)->id, v, fctx))) {
                    maxheap_push(c->top, &c->ntop, (struct vd__cand){d, v});
                    if (c->ntop > ef)
                        maxheap_pop(c->top, &c->ntop);
                    lower = c->top[0].d;
                }
            }
        }
    }
}

/*
 * Neighbour selection heuristic (paper, Alg. 4 without extension or kept-pruned; as hnswlib's
 * getNeighborsByHeuristic2): walk candidates closest-first and keep one only if it is closer to
 * the base than to every one kept so far. cands[n] must be sorted ascending; writes kept ids to
 * out and returns their count (<= max).
 */
static uint32_t select_heuristic(struct vd_index *ix, const struct vd__tabs *t,
                                 const struct vd__cand *cands, uint32_t n, uint32_t max,
                                 uint32_t *out)
{
    if (n <= max) {
        for (uint32_t i = 0; i < n; i++)
            out[i] = cands[i].id;
        return n;
    }
    uint32_t kept = 0;
    for (uint32_t i = 0; i < n && kept < max; i++) {
        bool good = true;
        for (uint32_t j = 0; j < kept; j++) {
            if (slot_dist(ix, t, cands[i].id, out[j]) < cands[i].d) {
                good = false;
                break;
            }
        }
        if (good)
            out[kept++] = cands[i].id;
    }
    return kept;
}

/* Drains the max-heap c->top into c->tmp sorted ascending; returns the count. */
static uint32_t drain_sorted(struct vd__sctx *c)
{
    uint32_t n = c->ntop;
    if (grow_cands(&c->tmp, &c->tmp_cap, n + 1))
        n = 0;
    for (uint32_t i = n; i > 0; i--)
        c->tmp[i - 1] = maxheap_pop(c->top, &c->ntop);
    c->ntop = 0;
    return n;
}

/* ---- linking ----------------------------------------------------------------------------- */

static uint32_t random_level(struct vd_index *ix)
{
    uint64_t r = splitmix64(ix->p.seed ^ splitmix64(atomic_fetch_add(&ix->level_ctr, 1)));
    double u = ((double)(r >> 11) + 1.0) / 9007199254740993.0; /* (0, 1] */
    double lv = -log(u) * ix->ml;
    return lv >= VD_HNSW_MAX_LEVEL ? VD_HNSW_MAX_LEVEL : (uint32_t)lv;
}

/* Adds `s` to the layer-l list of `nb`, pruning with the heuristic when the list is full
 * (hnswlib's mutuallyConnectNewElement, neighbour side). */
static void add_link(struct vd_index *ix, const struct vd__tabs *t, struct vd__sctx *c,
                     uint32_t nb, uint32_t s, float d_s, uint32_t l)
{
    const uint32_t cap = l == 0 ? ix->m0 : ix->m;
    struct vd__meta *mt = vd__meta(ix, t, nb);
    spin_lock(&mt->lock);
    _Atomic uint32_t *ll = links_of(ix, t, nb, l);
    uint32_t n = atomic_load_explicit(&ll[0], memory_order_relaxed);
    if (n > cap)
        n = cap;
    for (uint32_t j = 1; j <= n; j++)
        if (atomic_load_explicit(&ll[j], memory_order_relaxed) == s)
            goto out_unlock;
    if (n < cap) {
        atomic_store_explicit(&ll[n + 1], s, memory_order_release);
        atomic_store_explicit(&ll[0], n + 1, memory_order_release);
        goto out_unlock;
    }
    /* Full: re-select among the old links plus s. c->tmp is free here (caller copied out). */
    struct vd__cand *cs = c->tmp + ix->m0 + 1;
    uint32_t k = 0;
    cs[k++] = (struct vd__cand){d_s, s};
    for (uint32_t j = 1; j <= n; j++) {
        uint32_t v = atomic_load_explicit(&ll[j], memory_order_relaxed);
        cs[k++] = (struct vd__cand){slot_dist(ix, t, nb, v), v};
    }
    qsort(cs, k, sizeof(*cs), cand_cmp);
    uint32_t *sel = c->ids;
    uint32_t kept = select_heuristic(ix, t, cs, k, cap, sel);
    for (uint32_t j = 0; j < kept; j++)
        atomic_store_explicit(&ll[j + 1], sel[j], memory_order_release);
    atomic_store_explicit(&ll[0], kept, memory_order_release);
out_unlock:
    spin_unlock(&mt->lock);
}

/* Links slot s into the graph (paper, Alg. 1). Called with gate held shared. */
static int link_one(struct vd_index *ix, struct vd__sctx *c, uint32_t s)
{
    const struct vd__tabs *t = tabs_get(ix);
    struct vd__meta *mt = vd__meta(ix, t, s);
    /* without floats in memory the new point is placed by its code row (its own query) */
    const float *q = vd__floats(ix) ? vec_of(ix, t, s) : NULL;
    const uint8_t *qc = q ? NULL : vd__code(ix, t, s);
    uint32_t level = random_level(ix);
    if (level > 0) {
        _Atomic uint32_t *up = calloc((size_t)level * (ix->m + 1), sizeof(*up));
        if (!up)
            return VD_ENOMEM;
        mt->upper = up;
        atomic_fetch_add_explicit(&ix->upper_bytes, (size_t)level * (ix->m + 1) * sizeof(*up),
                                  memory_order_relaxed);
    }
    mt->level = (uint8_t)level;

    pthread_mutex_lock(&ix->ep_mu);
    uint64_t epv = atomic_load(&ix->ep);
    if (epv == VD_EP_NONE) {
        atomic_store(&ix->ep, ((uint64_t)level << 32) | s);
        pthread_mutex_unlock(&ix->ep_mu);
        return 0;
    }
    uint32_t maxl = (uint32_t)(epv >> 32);
    bool hold = level > maxl; /* keep new entry points serialised, as hnswlib does */
    if (!hold)
        pthread_mutex_unlock(&ix->ep_mu);

    /* the entry point may be newer than our table snapshot */
    t = tabs_get(ix);
    int rc = 0;
    if (ctx_tags_fit(c, t->cap << ix->chunk_shift)) {
        rc = VD_ENOMEM;
        goto out_release_ep;
    }
    c->lim = t->cap << ix->chunk_shift;
    uint32_t cur = (uint32_t)epv;
    float curd = node_dist(ix, t, q, qc, cur);
    for (uint32_t l = maxl; l > level; l--)
        cur = greedy_layer(ix, c, &t, q, qc, cur, &curd, l);

    for (int l = (int)(level < maxl ? level : maxl); l >= 0; l--) {
        search_layer(ix, c, &t, q, qc, cur, curd, ix->p.ef_construct, (uint32_t)l, NULL, NULL,
                     atomic_load_explicit(&ix->tomb, memory_order_relaxed) > 0);
        uint32_t n = drain_sorted(c);
        /* never link to ourselves (s can be reached while LINKING through a racing linker) */
        uint32_t w = 0;
        for (uint32_t i = 0; i < n; i++)
            if (c->tmp[i].id != s)
                c->tmp[w++] = c->tmp[i];
        n = w;
        if (n == 0)
            continue;
        if (c->ids_cap < ix->m0 + 1) {
            uint32_t *p = realloc(c->ids, (ix->m0 + 1) * sizeof(*p));
            if (!p)
                break;
            c->ids = p;
            c->ids_cap = ix->m0 + 1;
        }
        uint32_t sel[VD_HNSW_MAX_LEVEL + 256];
        uint32_t nsel = select_heuristic(ix, t, c->tmp, n, ix->m, sel);
        float seld[VD_HNSW_MAX_LEVEL + 256];
        for (uint32_t i = 0, j = 0; i < n && j < nsel; i++)
            if (c->tmp[i].id == sel[j])
                seld[j++] = c->tmp[i].d;
        /* next layer starts from the closest candidate */
        cur = c->tmp[0].id;
        curd = c->tmp[0].d;

        _Atomic uint32_t *own = links_of(ix, t, s, (uint32_t)l);
        spin_lock(&mt->lock);
        for (uint32_t j = 0; j < nsel; j++)
            atomic_store_explicit(&own[j + 1], sel[j], memory_order_release);
        atomic_store_explicit(&own[0], nsel, memory_order_release);
        spin_unlock(&mt->lock);
        if (grow_cands(&c->tmp, &c->tmp_cap, 2 * ix->m0 + 4) == 0)
            for (uint32_t j = 0; j < nsel; j++)
                add_link(ix, t, c, sel[j], s, seld[j], (uint32_t)l);
    }

    if (hold)
        atomic_store(&ix->ep, ((uint64_t)level << 32) | s);
out_release_ep:
    if (hold)
        pthread_mutex_unlock(&ix->ep_mu);
    if (rc && mt->upper) {
        /* s goes back to pending and draws a new level when retried; no link names it yet */
        atomic_fetch_sub_explicit(&ix->upper_bytes, (size_t)level * (ix->m + 1) * sizeof(uint32_t),
                                  memory_order_relaxed);
        free(mt->upper);
        mt->upper = NULL;
        mt->level = 0;
    }
    return rc;
}

/* ---- repair of deleted slots -------------------------------------------------------------- */

static bool repair_due(const struct vd_index *ix)
{
    size_t tomb = atomic_load_explicit(&((struct vd_index *)ix)->tomb, memory_order_relaxed);
    size_t live = atomic_load_explicit(&((struct vd_index *)ix)->live, memory_order_relaxed);
    return tomb > 0 && (tomb * 8 >= live + tomb || tomb >= (1u << 16));
}

/* True for a slot in the graph that a repair keeps. The state is read first: an upsert (under
 * ix->mu, which a repair does not hold) fills the meta of a free slot before it publishes the
 * slot as pending with a release store, so the meta of a slot seen free must not be read. */
static bool linked_survivor(const struct vd_index *ix, const struct vd__tabs *t, uint32_t s)
{
    uint8_t st = state_of(ix, t, s);
    return st != ST_FREE && st != ST_RECLAIM && vd__meta(ix, t, s)->in_graph;
}

/*
 * Removes every link to slots deleted so far and returns those slots to the free list. A node
 * that lost links gets, as replacement candidates, the neighbours of the deleted nodes it pointed
 * to (one hop, as in FreshDiskANN's delete consolidation), re-selected with the heuristic.
 * Holds gate exclusively: no search or linker runs meanwhile, which is also the grace period
 * after which a freed slot can no longer be held by any reader.
 */
void vd__index_repair(struct vd_index *ix, bool force)
{
    pthread_rwlock_wrlock(&ix->gate);
    if (!force && !repair_due(ix))
        goto out_unlock_gate;
    pthread_mutex_lock(&ix->mu);
    const struct vd__tabs *t = tabs_get(ix);
    uint32_t n0 = atomic_load(&ix->nslots);
    size_t nr = 0;
    for (uint32_t s = 0; s < n0; s++)
        if (state_of(ix, t, s) == ST_DELETED) {
            state_set(ix, t, s, ST_RECLAIM);
            nr++;
        }
    pthread_mutex_unlock(&ix->mu);
    if (!nr)
        goto out_unlock_gate;

    struct vd__sctx *c = ctx_get(ix, t, ix->p.ef_construct);
    if (!c)
        goto out_free_slots; /* links stay; next repair retries the graph part */
    uint32_t maxc = 4 * ix->m0;
    uint32_t *ids = c->ids_cap > maxc ? c->ids : realloc(c->ids, (maxc + 1) * sizeof(*ids));
    if (ids) {
        c->ids = ids;
        c->ids_cap = maxc + 1 > c->ids_cap ? maxc + 1 : c->ids_cap;
    }
    if (!ids || grow_cands(&c->tmp, &c->tmp_cap, maxc + 1)) {
        ctx_put(ix, c);
        c = NULL;
        goto out_free_slots;
    }
    for (uint32_t s = 0; s < n0; s++) {
        if (!linked_survivor(ix, t, s))
            continue;
        struct vd__meta *mt = vd__meta(ix, t, s);
        for (uint32_t l = 0; l <= mt->level; l++) {
            const uint32_t cap = l == 0 ? ix->m0 : ix->m;
            _Atomic uint32_t *ll = links_of(ix, t, s, l);
            uint32_t n = atomic_load(&ll[0]);
            bool hit = false;
            for (uint32_t j = 1; j <= n && !hit; j++)
                hit = state_of(ix, t, atomic_load(&ll[j])) == ST_RECLAIM;
            if (!hit)
                continue;
            ctx_new_epoch(c);
            c->tags[s] = c->epoch;
            uint32_t k = 0;
            for (uint32_t j = 1; j <= n; j++) {
                uint32_t v = atomic_load(&ll[j]);
                if (state_of(ix, t, v) != ST_RECLAIM && c->tags[v] != c->epoch) {
                    c->tags[v] = c->epoch;
                    c->tmp[k++] = (struct vd__cand){0, v};
                }
            }
            for (uint32_t j = 1; j <= n; j++) {
                uint32_t r = atomic_load(&ll[j]);
                if (state_of(ix, t, r) != ST_RECLAIM)
                    continue;
                _Atomic uint32_t *rl = links_of(ix, t, r, l);
                uint32_t rn = atomic_load(&rl[0]);
                for (uint32_t i = 1; i <= rn && k < maxc; i++) {
                    uint32_t v = atomic_load(&rl[i]);
                    if (state_of(ix, t, v) != ST_RECLAIM && c->tags[v] != c->epoch) {
                        c->tags[v] = c->epoch;
                        c->tmp[k++] = (struct vd__cand){0, v};
                    }
                }
            }
            uint32_t kept;
            if (k <= cap) {
                for (uint32_t i = 0; i < k; i++)
                    c->ids[i] = c->tmp[i].id;
                kept = k;
            } else {
                for (uint32_t i = 0; i < k; i++)
                    c->tmp[i].d = slot_dist(ix, t, s, c->tmp[i].id);
                qsort(c->tmp, k, sizeof(*c->tmp), cand_cmp);
                kept = select_heuristic(ix, t, c->tmp, k, cap, c->ids);
            }
            for (uint32_t i = 0; i < kept; i++)
                atomic_store(&ll[i + 1], c->ids[i]);
            atomic_store(&ll[0], kept);
        }
    }
    ctx_put(ix, c);

    /* A new entry point if the old one goes: the highest remaining node. */
    pthread_mutex_lock(&ix->ep_mu);
    uint64_t epv = atomic_load(&ix->ep);
    if (epv != VD_EP_NONE && state_of(ix, t, (uint32_t)epv) == ST_RECLAIM) {
        uint64_t best = VD_EP_NONE;
        for (uint32_t s = 0; s < n0; s++) {
            struct vd__meta *mt = vd__meta(ix, t, s);
            if (linked_survivor(ix, t, s) && (best == VD_EP_NONE || mt->level > (best >> 32)))
                best = ((uint64_t)mt->level << 32) | s;
        }
        atomic_store(&ix->ep, best);
    }
    pthread_mutex_unlock(&ix->ep_mu);

out_free_slots:
    pthread_mutex_lock(&ix->mu);
    for (uint32_t s = 0; s < n0; s++) {
        if (state_of(ix, t, s) != ST_RECLAIM)
            continue;
        struct vd__meta *mt = vd__meta(ix, t, s);
        if (mt->in_graph && c == NULL)
            continue; /* could not repair: keep it as a tombstone */
        if (mt->upper)
            atomic_fetch_sub(&ix->upper_bytes, (size_t)mt->level * (ix->m + 1) * sizeof(uint32_t));
        free(mt->upper);
        mt->upper = NULL;
        mt->level = 0;
        mt->in_graph = 0;
        atomic_store(&vd__l0(ix, vd__blk(ix, t, s))[0], 0);
        state_set(ix, t, s, ST_FREE);
        if (vd__index_free_push(ix, s) == 0)
            atomic_fetch_sub(&ix->tomb, 1);
    }
    /* slots kept as tombstones above go back to DELETED */
    for (uint32_t s = 0; s < n0; s++)
        if (state_of(ix, t, s) == ST_RECLAIM)
            state_set(ix, t, s, ST_DELETED);
    pthread_mutex_unlock(&ix->mu);
out_unlock_gate:
    pthread_rwlock_unlock(&ix->gate);
}

/* ---- slot allocation, id map, queues (ix->mu held) ---------------------------------------- */

static int tabs_grow(struct vd_index *ix)
{
    struct vd__tabs *old = tabs_get(ix);
    uint32_t cap = old ? old->cap * 2 : 8;
    struct vd__tabs *nt = calloc(1, sizeof(*nt));
    if (!nt)
        return VD_ENOMEM;
    nt->blk = calloc(cap, sizeof(*nt->blk));
    nt->meta = calloc(cap, sizeof(*nt->meta));
    nt->code = calloc(cap, sizeof(*nt->code));
    nt->fvec = calloc(cap, sizeof(*nt->fvec));
    if (!nt->blk || !nt->meta || !nt->code || !nt->fvec) {
        free(nt->blk);
        free(nt->meta);
        free(nt->code);
        free(nt->fvec);
        free(nt);
        return VD_ENOMEM;
    }
    nt->cap = cap;
    if (old) {
        memcpy(nt->blk, old->blk, old->cap * sizeof(*nt->blk));
        memcpy(nt->meta, old->meta, old->cap * sizeof(*nt->meta));
        memcpy(nt->code, old->code, old->cap * sizeof(*nt->code));
        memcpy(nt->fvec, old->fvec, old->cap * sizeof(*nt->fvec));
    }
    nt->prev = old;
    atomic_store_explicit(&ix->tabs, nt, memory_order_release);
    return 0;
}

int vd__index_alloc_slot(struct vd_index *ix, uint32_t *out)
{
    if (ix->nfree) {
        *out = ix->freel[--ix->nfree];
        return 0;
    }
    uint32_t s = atomic_load_explicit(&ix->nslots, memory_order_relaxed);
    if (s >= VD_SLOT_NONE - 2)
        return VD_ENOMEM;
    if ((s >> ix->chunk_shift) >= ix->nchunks) {
        struct vd__tabs *t = tabs_get(ix);
        if (ix->nchunks == t->cap && tabs_grow(ix))
            return VD_ENOMEM;
        t = tabs_get(ix);
        size_t bytes = ((size_t)1 << ix->chunk_shift) * ix->slot_size;
        uint8_t *b = aligned_alloc(64, bytes);
        struct vd__meta *m = calloc((size_t)1 << ix->chunk_shift, sizeof(*m));
        size_t cbytes = ((size_t)1 << ix->chunk_shift) * ix->code_size;
        uint8_t *cc = ix->q.enabled ? aligned_alloc(64, cbytes) : NULL;
        bool fv = ix->lean && (ix->fheld || ix->fcollect);
        float *fc = fv ? aligned_alloc(64, ((size_t)1 << ix->chunk_shift) * ix->vec_bytes) : NULL;
        if (!b || !m || (ix->q.enabled && !cc) || (fv && !fc)) {
            free(b);
            free(m);
            free(cc);
            free(fc);
            return VD_ENOMEM;
        }
        if (cc)
            memset(cc, 0, cbytes);
        if (fc)
            memset(fc, 0, ((size_t)1 << ix->chunk_shift) * ix->vec_bytes);
        t->code[ix->nchunks] = cc;
        t->fvec[ix->nchunks] = fc;
        memset(b, 0, bytes);
        for (uint32_t i = 0; i < (1u << ix->chunk_shift); i++) {
            atomic_flag_clear(&m[i].lock);
            m[i].pend_pos = VD_SLOT_NONE;
        }
        t->blk[ix->nchunks] = b;
        t->meta[ix->nchunks] = m;
        ix->nchunks++;
    }
    atomic_store_explicit(&ix->nslots, s + 1, memory_order_release);
    *out = s;
    return 0;
}

static int push_u32(uint32_t **arr, size_t *n, size_t *cap, uint32_t v)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        uint32_t *p = realloc(*arr, nc * sizeof(*p));
        if (!p)
            return VD_ENOMEM;
        *arr = p;
        *cap = nc;
    }
    (*arr)[(*n)++] = v;
    return 0;
}

int vd__index_free_push(struct vd_index *ix, uint32_t slot)
{
    return push_u32(&ix->freel, &ix->nfree, &ix->free_cap, slot);
}

static int todo_push(struct vd_index *ix, uint32_t slot)
{
    if (ix->todo_len == ix->todo_cap) {
        size_t nc = ix->todo_cap ? ix->todo_cap * 2 : 64;
        uint32_t *p = malloc(nc * sizeof(*p));
        if (!p)
            return VD_ENOMEM;
        for (size_t i = 0; i < ix->todo_len; i++)
            p[i] = ix->todo[(ix->todo_head + i) % ix->todo_cap];
        free(ix->todo);
        ix->todo = p;
        ix->todo_cap = nc;
        ix->todo_head = 0;
    }
    ix->todo[(ix->todo_head + ix->todo_len++) % ix->todo_cap] = slot;
    return 0;
}

int vd__index_pend_push(struct vd_index *ix, uint32_t slot)
{
    const struct vd__tabs *t = tabs_get(ix);
    if (todo_push(ix, slot))
        return VD_ENOMEM;
    size_t pos = ix->npend;
    if (push_u32(&ix->pend, &ix->npend, &ix->pend_cap, slot))
        return VD_ENOMEM;
    vd__meta(ix, t, slot)->pend_pos = (uint32_t)pos;
    return 0;
}

static void pend_remove(struct vd_index *ix, const struct vd__tabs *t, uint32_t slot)
{
    struct vd__meta *mt = vd__meta(ix, t, slot);
    uint32_t pos = mt->pend_pos;
    if (pos == VD_SLOT_NONE)
        return;
    uint32_t last = ix->pend[--ix->npend];
    ix->pend[pos] = last;
    vd__meta(ix, t, last)->pend_pos = pos;
    mt->pend_pos = VD_SLOT_NONE;
}

static size_t map_find(const struct vd_index *ix, const struct vd__tabs *t,
                       const struct vd_pid *id, bool *found)
{
    size_t mask = ix->map_cap - 1, i = vd_pid_hash(id) & mask, tomb = SIZE_MAX;
    for (;;) {
        uint32_t v = ix->map[i];
        if (v == MAP_EMPTY) {
            *found = false;
            return tomb != SIZE_MAX ? tomb : i;
        }
        if (v == MAP_TOMB) {
            if (tomb == SIZE_MAX)
                tomb = i;
        } else if (vd_pid_eq(&vd__meta(ix, t, v)->id, id)) {
            *found = true;
            return i;
        }
        i = (i + 1) & mask;
    }
}

static int map_rehash(struct vd_index *ix, size_t ncap)
{
    uint32_t *old = ix->map;
    size_t ocap = ix->map_cap;
    uint32_t *nm = malloc(ncap * sizeof(*nm));
    if (!nm)
        return VD_ENOMEM;
    memset(nm, 0xff, ncap * sizeof(*nm));
    ix->map = nm;
    ix->map_cap = ncap;
    ix->map_used = 0;
    const struct vd__tabs *t = tabs_get(ix);
    for (size_t i = 0; i < ocap; i++) {
        if (old[i] >= MAP_TOMB)
            continue;
        bool f;
        size_t pos = map_find(ix, t, &vd__meta(ix, t, old[i])->id, &f);
        nm[pos] = old[i];
        ix->map_used++;
    }
    free(old);
    return 0;
}

/* Inserts slot's id (already stored in its meta); VD_EEXIST if the id is mapped already. */
int vd__index_map_put(struct vd_index *ix, uint32_t slot)
{
    if ((ix->map_used + 1) * 4 >= ix->map_cap * 3) {
        size_t live = atomic_load(&ix->live) + 1;
        size_t ncap = ix->map_cap;
        while (live * 2 >= ncap)
            ncap *= 2;
        if (map_rehash(ix, ncap))
            return VD_ENOMEM;
    }
    const struct vd__tabs *t = tabs_get(ix);
    bool f;
    size_t pos = map_find(ix, t, &vd__meta(ix, t, slot)->id, &f);
    if (f)
        return VD_EEXIST;
    if (ix->map[pos] == MAP_EMPTY)
        ix->map_used++;
    ix->map[pos] = slot;
    return 0;
}

/* Marks a visible slot deleted; ix->mu held. */
static void mark_deleted(struct vd_index *ix, const struct vd__tabs *t, uint32_t slot)
{
    uint8_t st = state_of(ix, t, slot);
    if (st == ST_PENDING || st == ST_LINKING) {
        pend_remove(ix, t, slot);
        atomic_fetch_sub(&ix->pending, 1);
    }
    state_set(ix, t, slot, ST_DELETED);
    atomic_fetch_sub(&ix->live, 1);
    atomic_fetch_add(&ix->tomb, 1);
}

static void seq_note(struct vd_index *ix, uint64_t seq)
{
    uint64_t cur = atomic_load(&ix->seq);
    while (seq > cur && !atomic_compare_exchange_weak(&ix->seq, &cur, seq))
        ;
}

/* ---- floats of a lean index ----------------------------------------------------------------- */

int vd__index_alloc_fvec(struct vd_index *ix)
{
    struct vd__tabs *t = tabs_get(ix);
    size_t bytes = ((size_t)1 << ix->chunk_shift) * ix->vec_bytes;
    for (uint32_t c = 0; c < ix->nchunks; c++) {
        if (t->fvec[c])
            continue;
        float *p = aligned_alloc(64, bytes);
        if (!p)
            return VD_ENOMEM;
        memset(p, 0, bytes);
        t->fvec[c] = p;
    }
    return 0;
}

void vd__index_drop_floats(struct vd_index *ix)
{
    struct vd__tabs *t = tabs_get(ix);
    for (uint32_t c = 0; c < ix->nchunks; c++) {
        free(t->fvec[c]);
        t->fvec[c] = NULL;
    }
    /* older tables hold copies of the freed pointers; nothing reads them (a reader loads the
     * current table under the gate), but they must not be freed twice either */
    for (struct vd__tabs *o = t->prev; o; o = o->prev)
        memset(o->fvec, 0, o->cap * sizeof(*o->fvec));
    ix->fheld = false;
}

/*
 * Brings the floats of a lean index back into memory (the config now wants them there, or the
 * quantization goes). The reads from the source run with the gate held shared only (searches go
 * on; no repair can free and reuse a slot meanwhile) and without mu, since a storage read must
 * not wait for a thread that applies a write; upserts meanwhile copy their own floats (fcollect).
 * A slot whose point storage no longer has is being deleted and keeps zeros. Returns 0, VD_ENOMEM
 * or the source's error (the floats then stay on disk).
 */
int vd__index_restore_floats(struct vd_index *ix)
{
    pthread_rwlock_rdlock(&ix->gate);
    pthread_mutex_lock(&ix->mu);
    if (vd__floats(ix)) {
        pthread_mutex_unlock(&ix->mu);
        pthread_rwlock_unlock(&ix->gate);
        return 0;
    }
    const struct vd__tabs *t = tabs_get(ix);
    uint32_t n = atomic_load(&ix->nslots);
    int rc = vd__index_alloc_fvec(ix);
    uint32_t *slots = rc ? NULL : malloc(((size_t)n + 1) * sizeof(*slots));
    uint32_t ns = 0;
    if (!rc && !slots)
        rc = VD_ENOMEM;
    for (uint32_t s = 0; !rc && s < n; s++)
        if (visible(state_of(ix, t, s)))
            slots[ns++] = s;
    if (!rc)
        ix->fcollect = true;
    pthread_mutex_unlock(&ix->mu);
    void *rd = NULL;
    if (!rc)
        rc = ix->p.src.begin(ix->p.src.ctx, &rd);
    for (uint32_t i = 0; !rc && i < ns; i++) {
        const float *v;
        int g = ix->p.src.get(ix->p.src.ctx, rd, &vd__meta(ix, t, slots[i])->id, &v);
        if (g == 0)
            memcpy(vd__vec(ix, t, slots[i]), v, ix->vec_bytes);
        else if (g != VD_ENOTFOUND)
            rc = g;
    }
    if (rd)
        ix->p.src.end(ix->p.src.ctx, rd);
    free(slots);
    pthread_rwlock_unlock(&ix->gate);
    pthread_rwlock_wrlock(&ix->gate);
    pthread_mutex_lock(&ix->mu);
    ix->fcollect = false;
    if (rc)
        vd__index_drop_floats(ix);
    else
        ix->fheld = true;
    pthread_mutex_unlock(&ix->mu);
    pthread_rwlock_unlock(&ix->gate);
    return rc;
}

/* ---- public API -------------------------------------------------------------------------- */

void vd_index_params_init(struct vd_index_params *p, uint32_t dim, enum vd_metric metric)
{
    memset(p, 0, sizeof(*p));
    p->dim = dim;
    p->metric = metric;
    p->m = 16;
    p->ef_construct = 100;
    p->full_scan_threshold_kb = 10000;
    p->seed = 0x5eed;
}

int vd_index_new(const struct vd_index_params *p, struct vd_index **out)
{
    if (!p || p->dim < 1 || p->dim > 65536)
        return VD_ERANGE;
    if (p->metric < VD_METRIC_COSINE || p->metric > VD_METRIC_MANHATTAN)
        return VD_ERANGE;
    uint32_t m = p->m ? p->m : 16;
    if (m < 2 || m > 128)
        return VD_ERANGE;
    if (p->quant.enabled && p->quant.quantile != 0.0f &&
        !(p->quant.quantile >= 0.5f && p->quant.quantile <= 1.0f))
        return VD_ERANGE;
    struct vd_index *ix = calloc(1, sizeof(*ix));
    if (!ix)
        return VD_ENOMEM;
    ix->p = *p;
    ix->p.m = m;
    if (!ix->p.ef_construct)
        ix->p.ef_construct = 100;
    ix->m = m;
    ix->m0 = 2 * m;
    ix->ml = 1.0 / log((double)m);
    ix->k = vd__index_kernels();
    ix->ck = vd__index_code_kernels();
    ix->q = p->quant;
    ix->code_size = (16 + (size_t)p->dim + 63) / 64 * 64;
    atomic_flag_clear(&ix->qtraining);
    ix->raw = p->metric == VD_METRIC_EUCLID ? ix->k->l2
              : p->metric == VD_METRIC_MANHATTAN ? ix->k->l1 : ix->k->dot;
    ix->negate = p->metric == VD_METRIC_COSINE || p->metric == VD_METRIC_DOT;
    ix->vec_bytes = (size_t)p->dim * sizeof(float);
    /* Quantized: blocks without a vector, so that the walk on codes reads links and states from
     * small dense blocks (in a block behind a 1536-d vector each expanded node costs a cache and
     * TLB miss of its own). The floats sit in side chunks, for good with always_ram, else until
     * the codes are trained (and whenever the config asks for them in memory again). */
    ix->lean = p->quant.enabled;
    ix->fheld = ix->lean;
    ix->has_src = p->src.begin && p->src.get && p->src.end;
    ix->link_off = ix->lean ? 0 : ix->vec_bytes;
    size_t raw = ix->link_off + 4 + 4 * (1 + (size_t)ix->m0);
    /* Cache-line aligned slots save split loads, but only when the padding costs little (at most
     * 1/32 of the slot): the memory budget is 1.25 x the vector bytes plus layer-0 links. */
    size_t padded = (raw + 63) / 64 * 64;
    ix->slot_size = padded - raw <= raw / 32 ? padded : (raw + 7) / 8 * 8;
    /* chunks of at most about 4 MiB of blocks, codes and side floats together: whole chunks are
     * allocated at once, and a lean block is a small share of a slot's bytes */
    size_t per_slot = ix->slot_size + (ix->lean ? ix->code_size + ix->vec_bytes : 0);
    uint32_t shift = 6;
    while (shift < 14 && ((size_t)2 << shift) * per_slot <= ((size_t)4 << 20))
        shift++;
    ix->chunk_shift = shift;
    ix->chunk_mask = (1u << shift) - 1;
    atomic_init(&ix->ep, VD_EP_NONE);
    ix->map_cap = 64;
    ix->map = malloc(ix->map_cap * sizeof(*ix->map));
    if (!ix->map || tabs_grow(ix)) {
        free(ix->map);
        free(ix);
        return VD_ENOMEM;
    }
    memset(ix->map, 0xff, ix->map_cap * sizeof(*ix->map));
    pthread_mutex_init(&ix->mu, NULL);
    pthread_mutex_init(&ix->ep_mu, NULL);
    pthread_mutex_init(&ix->pool_mu, NULL);
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    /* repair must not starve behind a steady stream of searches */
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&ix->gate, &ra);
    pthread_rwlockattr_destroy(&ra);
    *out = ix;
    return 0;
}

void vd_index_free(struct vd_index *ix)
{
    if (!ix)
        return;
    struct vd__tabs *t = tabs_get(ix);
    uint32_t n = atomic_load(&ix->nslots);
    for (uint32_t s = 0; s < n; s++)
        free(vd__meta(ix, t, s)->upper);
    for (uint32_t c = 0; c < ix->nchunks; c++) {
        free(t->blk[c]);
        free(t->meta[c]);
        free(t->code[c]);
        free(t->fvec[c]);
    }
    while (t) {
        struct vd__tabs *prev = t->prev;
        free(t->blk);
        free(t->meta);
        free(t->code);
        free(t->fvec);
        free(t);
        t = prev;
    }
    for (size_t i = 0; i < ix->npool; i++)
        ctx_free(ix->pool[i]);
    free(ix->pool);
    free(ix->freel);
    free(ix->pend);
    free(ix->todo);
    free(ix->map);
    pthread_mutex_destroy(&ix->mu);
    pthread_mutex_destroy(&ix->ep_mu);
    pthread_mutex_destroy(&ix->pool_mu);
    pthread_rwlock_destroy(&ix->gate);
    free(ix);
}

int vd_vec_normalize(float *v, uint32_t dim)
{
    double n2 = 0.0;
    for (uint32_t i = 0; i < dim; i++)
        n2 += (double)v[i] * v[i];
    if (!(n2 > 0.0) || !isfinite(n2))
        return VD_ERANGE;
    /* about eight float ulps of 1.0: what rounding leaves on an already normalised vector */
    if (fabs(n2 - 1.0) <= 1e-6)
        return 0;
    double inv = 1.0 / sqrt(n2);
    for (uint32_t i = 0; i < dim; i++)
        v[i] = (float)(v[i] * inv);
    return 0;
}

/* Test hook: the countdown of upserts before one fails as if out of memory (0 = off). */
static atomic_uint fail_countdown;

void vd_index_test_fail_upsert_after(unsigned n)
{
    atomic_store(&fail_countdown, n);
}

/* True when the test hook says this upsert's allocation fails. */
static bool injected_failure(void)
{
    unsigned n = atomic_load(&fail_countdown);
    while (n) {
        if (atomic_compare_exchange_weak(&fail_countdown, &n, n - 1))
            return n == 1;
    }
    return false;
}

int vd_index_upsert(struct vd_index *ix, const struct vd_pid *id, const float *vec, uint64_t seq)
{
    int rc;
    if (injected_failure())
        return VD_ENOMEM;
    pthread_mutex_lock(&ix->mu);
    const struct vd__tabs *t = tabs_get(ix);
    bool found;
    size_t pos = map_find(ix, t, id, &found);
    uint32_t old = found ? ix->map[pos] : VD_SLOT_NONE;
    uint32_t s;
    rc = vd__index_alloc_slot(ix, &s);
    if (rc)
        goto out_unlock;
    t = tabs_get(ix);
    uint8_t *b = vd__blk(ix, t, s);
    struct vd__meta *mt = vd__meta(ix, t, s);
    if (vd__floats(ix) || ix->fcollect)
        memcpy(vd__vec(ix, t, s), vec, ix->vec_bytes);
    if (atomic_load_explicit(&ix->qready, memory_order_relaxed))
        vd__quant_encode(ix, vec, vd__code(ix, t, s));
    atomic_store_explicit(&vd__l0(ix, b)[0], 0, memory_order_relaxed);
    mt->id = *id;
    mt->level = 0;
    mt->in_graph = 0;
    rc = vd__index_pend_push(ix, s);
    if (rc) {
        vd__index_free_push(ix, s);
        goto out_unlock;
    }
    if (old != VD_SLOT_NONE) {
        ix->map[pos] = s; /* same id, same hash position */
        mark_deleted(ix, t, old);
    } else if ((rc = vd__index_map_put(ix, s)) != 0) {
        pend_remove(ix, t, s);
        vd__index_free_push(ix, s);
        goto out_unlock;
    }
    atomic_fetch_add(&ix->live, 1);
    atomic_fetch_add(&ix->pending, 1);
    state_set(ix, t, s, ST_PENDING);
    seq_note(ix, seq);
out_unlock:
    pthread_mutex_unlock(&ix->mu);
    return rc;
}

int vd_index_delete(struct vd_index *ix, const struct vd_pid *id, uint64_t seq)
{
    pthread_mutex_lock(&ix->mu);
    const struct vd__tabs *t = tabs_get(ix);
    bool found;
    size_t pos = map_find(ix, t, id, &found);
    if (found) {
        mark_deleted(ix, t, ix->map[pos]);
        ix->map[pos] = MAP_TOMB;
    }
    seq_note(ix, seq);
    pthread_mutex_unlock(&ix->mu);
    return found ? 0 : VD_ENOTFOUND;
}

/* Whether the quantization range should be (re)trained: enough points and none trained yet, or
 * the index has grown fourfold since. */
static bool train_due(struct vd_index *ix)
{
    pthread_mutex_lock(&ix->mu);
    size_t live = atomic_load_explicit(&ix->live, memory_order_relaxed);
    bool due = ix->q.enabled && live >= VD_INDEX_QUANT_TRAIN_MIN &&
               (!atomic_load_explicit(&ix->qready, memory_order_relaxed) ||
                live >= 4 * ix->qtrained_n);
    pthread_mutex_unlock(&ix->mu);
    return due;
}

size_t vd_index_link_pending(struct vd_index *ix, size_t max)
{
    if (repair_due(ix))
        vd__index_repair(ix, false);
    if (train_due(ix))
        (void)vd__quant_train(ix); /* out of memory: the walk stays on floats; retried later */
    size_t done = 0;
    while (done < max) {
        pthread_rwlock_rdlock(&ix->gate);
        uint32_t s = VD_SLOT_NONE;
        pthread_mutex_lock(&ix->mu);
        const struct vd__tabs *t = tabs_get(ix);
        while (ix->todo_len) {
            uint32_t v = ix->todo[ix->todo_head];
            ix->todo_head = (ix->todo_head + 1) % ix->todo_cap;
            ix->todo_len--;
            if (state_of(ix, t, v) == ST_PENDING) {
                state_set(ix, t, v, ST_LINKING);
                s = v;
                break;
            }
        }
        pthread_mutex_unlock(&ix->mu);
        if (s == VD_SLOT_NONE) {
            pthread_rwlock_unlock(&ix->gate);
            break;
        }
        struct vd__sctx *c = ctx_get(ix, t, ix->p.ef_construct);
        int rc = c ? link_one(ix, c, s) : VD_ENOMEM;
        if (c)
            ctx_put(ix, c);
        pthread_mutex_lock(&ix->mu);
        t = tabs_get(ix);
        if (rc) {
            /* out of memory: leave it pending (still found by the exact tail scan) */
            if (state_of(ix, t, s) == ST_LINKING)
                state_set(ix, t, s, ST_PENDING);
            todo_push(ix, s);
            pthread_mutex_unlock(&ix->mu);
            pthread_rwlock_unlock(&ix->gate);
            break;
        }
        vd__meta(ix, t, s)->in_graph = 1;
        if (state_of(ix, t, s) == ST_LINKING) {
            pend_remove(ix, t, s);
            atomic_fetch_sub(&ix->pending, 1);
            state_set(ix, t, s, ST_LIVE);
        }
        pthread_mutex_unlock(&ix->mu);
        pthread_rwlock_unlock(&ix->gate);
        done++;
    }
    return done;
}

size_t vd_index_pending(const struct vd_index *ix)
{
    return atomic_load(&((struct vd_index *)ix)->pending);
}

size_t vd_index_count(const struct vd_index *ix)
{
    return atomic_load(&((struct vd_index *)ix)->live);
}

uint64_t vd_index_applied_seq(const struct vd_index *ix)
{
    return atomic_load(&((struct vd_index *)ix)->seq);
}

uint32_t vd_index_dim(const struct vd_index *ix)
{
    return ix->p.dim;
}

int vd_index_get_vector(const struct vd_index *ix, const struct vd_pid *id, float *out)
{
    struct vd_index *mix = (struct vd_index *)ix;
    pthread_mutex_lock(&mix->mu);
    const struct vd__tabs *t = tabs_get(ix);
    bool found;
    size_t pos = map_find(ix, t, id, &found);
    bool in_ram = vd__floats(ix);
    if (found && out && in_ram)
        memcpy(out, vec_of(ix, t, ix->map[pos]), ix->vec_bytes);
    pthread_mutex_unlock(&mix->mu);
    if (!found || !out || in_ram)
        return found ? 0 : VD_ENOTFOUND;
    /* floats on disk: storage's copy (no lock held while reading it) */
    void *rd;
    const float *v;
    int rc = ix->p.src.begin(ix->p.src.ctx, &rd);
    if (rc)
        return rc;
    if ((rc = ix->p.src.get(ix->p.src.ctx, rd, id, &v)) == 0)
        memcpy(out, v, ix->vec_bytes);
    ix->p.src.end(ix->p.src.ctx, rd);
    return rc;
}

/* Opens a source read when the floats are not in memory (*rd NULL otherwise, or already open). */
static int src_open(struct vd_index *ix, void **rd)
{
    if (*rd || vd__floats(ix))
        return 0;
    return ix->p.src.begin(ix->p.src.ctx, rd);
}

static void src_close(struct vd_index *ix, void *rd)
{
    if (rd)
        ix->p.src.end(ix->p.src.ctx, rd);
}

/* Keeps s with distance d in the max-heap c->top of at most k; returns the new bound. */
static inline float top_offer(struct vd__sctx *c, uint32_t k, float d, uint32_t s)
{
    if (c->ntop < k) {
        maxheap_push(c->top, &c->ntop, (struct vd__cand){d, s});
    } else if (d < c->top[0].d) {
        maxheap_pop(c->top, &c->ntop);
        maxheap_push(c->top, &c->ntop, (struct vd__cand){d, s});
    }
    return c->top[0].d;
}

/* Exact top-k over every visible slot (c->top holds the result); the floats come from memory, or
 * through the source read rd. Returns 0 or the source's error. */
static int exact_scan(struct vd_index *ix, struct vd__sctx *c, const struct vd__tabs *t,
                      const float *q, uint32_t k, vd_index_filter_fn filter, void *fctx, void *rd)
{
    uint32_t n = atomic_load_explicit(&ix->nslots, memory_order_acquire);
    c->ntop = 0;
    float lower = INFINITY;
    if (n > (t->cap << ix->chunk_shift))
        t = tabs_get(ix);
    for (uint32_t chunk = 0; (chunk << ix->chunk_shift) < n; chunk++) {
        const uint8_t *b = t->blk[chunk];
        uint32_t lim = n - (chunk << ix->chunk_shift);
        if (lim > (1u << ix->chunk_shift))
            lim = 1u << ix->chunk_shift;
        for (uint32_t i = 0; i < lim; i++, b += ix->slot_size) {
            if (i + 4 < lim)
                __builtin_prefetch(b + 4 * ix->slot_size);
            uint8_t st = atomic_load_explicit(vd__state(ix, (uint8_t *)b), memory_order_acquire);
            if (!visible(st))
                continue;
            uint32_t s = (chunk << ix->chunk_shift) | i;
            if (filter && !filter(&t->meta[chunk][i].id, s, fctx))
                continue;
            float d;
            if (!rd) {
                d = dist(ix, q, vec_of(ix, t, s));
            } else {
                int rc = float_dist(ix, t, rd, q, s, &d);
                if (rc == VD_ENOTFOUND)
                    continue;
                if (rc)
                    return rc;
            }
            if (c->ntop < k || d < lower)
                lower = top_offer(c, k, d, s);
        }
    }
    return 0;
}

/* Sorts a[n] ascending in place (heapsort: no allocation, unlike qsort). */
static void sort_u32(uint32_t *a, uint32_t n)
{
    for (uint32_t end = n, start = n / 2; end > 1;) {
        uint32_t root;
        if (start > 0) {
            root = --start;
        } else {
            uint32_t x = a[0];
            a[0] = a[--end];
            a[end] = x;
            root = 0;
        }
        for (uint32_t ch; (ch = 2 * root + 1) < end; root = ch) {
            if (ch + 1 < end && a[ch + 1] > a[ch])
                ch++;
            if (a[root] >= a[ch])
                break;
            uint32_t x = a[root];
            a[root] = a[ch];
            a[ch] = x;
        }
    }
}

/* Top-k over the slots of the listed ids only (c->top holds the result; *tp becomes a table that
 * covers every slot kept). The id map is read under mu, as upserts change it; the slots are
 * copied into the pooled c->ids so that scoring runs without mu and concurrent candidate searches
 * do not queue behind each other. A slot found under mu stays readable after mu is released: it
 * is reused only after repair, which needs the gate this search holds shared; if it was deleted
 * since, its state says so and it is skipped. Ids listed twice are scored once (visited tags).
 * Returns 0 or VD_ENOMEM (growing the pooled scratch). */
static int candidate_scan(struct vd_index *ix, struct vd__sctx *c, const struct vd__tabs **tp,
                          const struct vd_search_req *r, void *rd)
{
    c->ntop = 0;
    pthread_mutex_lock(&ix->mu);
    const struct vd__tabs *t = tabs_get(ix);
    uint32_t slots = t->cap << ix->chunk_shift;
    if (ctx_tags_fit(c, slots)) {
        pthread_mutex_unlock(&ix->mu);
        return VD_ENOMEM;
    }
    c->lim = slots;
    if (c->ids_cap < r->n_candidates) {
        uint32_t *p = realloc(c->ids, (size_t)r->n_candidates * sizeof(*p));
        if (!p) {
            pthread_mutex_unlock(&ix->mu);
            return VD_ENOMEM;
        }
        c->ids = p;
        c->ids_cap = r->n_candidates;
    }
    ctx_new_epoch(c);
    uint32_t n = 0;
    for (uint32_t i = 0; i < r->n_candidates; i++) {
        bool found;
        size_t pos = map_find(ix, t, &r->candidates[i], &found);
        if (!found)
            continue;
        uint32_t s = ix->map[pos];
        if (c->tags[s] == c->epoch)
            continue;
        c->tags[s] = c->epoch;
        c->ids[n++] = s;
    }
    pthread_mutex_unlock(&ix->mu);
    /* Slot order, as the exact scan visits them, so that equal scores resolve the same way and
     * neighbouring vectors are read in memory order. */
    sort_u32(c->ids, n);
    float lower = INFINITY;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t s = c->ids[i];
        if (i + 2 < n && !rd)
            prefetch_vec(ix, vec_of(ix, t, c->ids[i + 2]));
        if (!visible(state_of(ix, t, s)))
            continue;
        if (r->filter && !r->filter(&vd__meta(ix, t, s)->id, s, r->filter_ctx))
            continue;
        float d;
        int rc = float_dist(ix, t, rd, r->query, s, &d);
        if (rc == VD_ENOTFOUND)
            continue;
        if (rc)
            return rc;
        if (c->ntop < r->k || d < lower)
            lower = top_offer(c, r->k, d, s);
    }
    *tp = t;
    return 0;
}

/* Keeps the best n of c->top (scored on codes, or exactly for the unlinked tail) and scores them
 * again with the float vectors (from memory, or through the source read rd: only these n are
 * read): the order the caller sees is the exact one among them; a point storage no longer has is
 * left out. t covers every slot in c->top. Returns 0, VD_ENOMEM (growing the pooled scratch) or
 * the source's error. */
static int rescore_top(struct vd_index *ix, struct vd__sctx *c, const struct vd__tabs *t,
                       const float *q, uint32_t n, void *rd)
{
    while (c->ntop > n)
        maxheap_pop(c->top, &c->ntop);
    n = c->ntop;
    if (grow_cands(&c->tmp, &c->tmp_cap, n + 1))
        return VD_ENOMEM;
    memcpy(c->tmp, c->top, (size_t)n * sizeof(*c->tmp));
    c->ntop = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t s = c->tmp[i].id;
        if (i + 1 < n && !rd)
            prefetch_vec(ix, vec_of(ix, t, c->tmp[i + 1].id));
        float d;
        int rc = float_dist(ix, t, rd, q, s, &d);
        if (rc == VD_ENOTFOUND)
            continue;
        if (rc)
            return rc;
        maxheap_push(c->top, &c->ntop, (struct vd__cand){d, s});
    }
    return 0;
}

int vd_index_search(struct vd_index *ix, const struct vd_search_req *r, struct vd_search_hit *out,
                    uint32_t *n_out)
{
    *n_out = 0;
    if (!r || !r->query)
        return VD_EINVAL;
    if (r->k == 0)
        return 0;
    uint32_t ef = r->ef ? r->ef : (r->k > 64 ? r->k : 64);
    if (ef < r->k)
        ef = r->k;
    pthread_rwlock_rdlock(&ix->gate);
    /* Walk on codes. Rescored: ceil(k * oversampling) candidates when asked (ef covers them),
     * else the whole beam, whose float distances cost a small share of the walk's and bring the
     * recall back to the float walk's at the same ef. Without floats in memory there is no float
     * walk: "ignore" walks the codes too, and the floats are read from the source only for the
     * rescored candidates. */
    bool qready = atomic_load_explicit(&ix->qready, memory_order_acquire);
    bool qz = qready && (!r->quant_ignore || !vd__floats(ix));
    bool rescore = qz && !r->quant_no_rescore;
    uint32_t nres = ef;
    if (rescore && r->oversampling > 0.0f) {
        double want = ceil((double)r->k * r->oversampling);
        nres = want >= 100000.0 ? 100000 : (uint32_t)want;
        if (nres < r->k)
            nres = r->k;
        if (ef < nres)
            ef = nres;
    }
    /* entry point first: the table loaded after it covers its slot */
    uint64_t epv = atomic_load_explicit(&ix->ep, memory_order_acquire);
    const struct vd__tabs *t = tabs_get(ix);
    struct vd__sctx *c = ctx_get(ix, t, ef > r->k ? ef : r->k);
    if (!c) {
        pthread_rwlock_unlock(&ix->gate);
        return VD_ENOMEM;
    }
    uint64_t thr = (uint64_t)ix->p.full_scan_threshold_kb * 1024;
    uint64_t live = atomic_load_explicit(&ix->live, memory_order_relaxed);
    bool exact = r->exact || epv == VD_EP_NONE || live * ix->vec_bytes < thr ||
                 (r->filter && r->filter_estimate &&
                  (uint64_t)r->filter_estimate * ix->vec_bytes < thr);
    uint32_t keep = r->k;
    void *rd = NULL; /* source read (floats on disk), opened after the last use of mu */
    int rc = 0;
    if (r->candidates) {
        if ((rc = src_open(ix, &rd)) == 0)
            rc = candidate_scan(ix, c, &t, r, rd);
    } else if (exact) {
        if ((rc = src_open(ix, &rd)) == 0)
            rc = exact_scan(ix, c, t, r->query, r->k, r->filter, r->filter_ctx, rd);
    } else {
        const uint8_t *qc = NULL;
        if (qz) {
            if (!c->qcode && !(c->qcode = aligned_alloc(64, ix->code_size))) {
                rc = VD_ENOMEM;
                goto out_put;
            }
            vd__quant_encode(ix, r->query, c->qcode);
            qc = c->qcode;
        }
        uint32_t cur = (uint32_t)epv;
        float curd = node_dist(ix, t, r->query, qc, cur);
        for (uint32_t l = (uint32_t)(epv >> 32); l > 0; l--)
            cur = greedy_layer(ix, c, &t, r->query, qc, cur, &curd, l);
        bool filtering = r->filter || atomic_load_explicit(&ix->tomb, memory_order_relaxed) > 0;
        search_layer(ix, c, &t, r->query, qc, cur, curd, ef, 0, r->filter, r->filter_ctx,
                     filtering);
        /* The unlinked tail, exactly (on the codes when the floats are on disk: the rescoring
         * below reads the floats of the best). The counter is read first so that searches do
         * not all take mu when nothing is pending; an upsert that returned before this search
         * began has already raised it. */
        bool tail = atomic_load(&ix->pending) > 0;
        if (tail)
            pthread_mutex_lock(&ix->mu);
        if (tail && ix->npend) {
            const struct vd__tabs *tn = tabs_get(ix);
            bool on_codes = !vd__floats(ix);
            if (ctx_tags_fit(c, tn->cap << ix->chunk_shift) == 0) {
                float lower = c->ntop ? c->top[0].d : INFINITY;
                for (size_t i = 0; i < ix->npend; i++) {
                    uint32_t s = ix->pend[i];
                    if (c->tags[s] == c->epoch || !visible(state_of(ix, tn, s)))
                        continue;
                    if (r->filter && !r->filter(&vd__meta(ix, tn, s)->id, s, r->filter_ctx))
                        continue;
                    float d = on_codes ? vd__code_dist(ix, qc, vd__code(ix, tn, s))
                                       : dist(ix, r->query, vec_of(ix, tn, s));
                    if (c->ntop < ef || d < lower)
                        lower = top_offer(c, ef, d, s);
                }
            }
            t = tn;
        }
        if (tail)
            pthread_mutex_unlock(&ix->mu);
        if (rescore && (rc = src_open(ix, &rd)) == 0)
            rc = rescore_top(ix, c, t, r->query, nres, rd);
    }
    src_close(ix, rd);
    if (rc)
        goto out_put;
    while (c->ntop > keep)
        maxheap_pop(c->top, &c->ntop);
    uint32_t n = c->ntop;
    for (uint32_t i = n; i > 0; i--) {
        struct vd__cand h = maxheap_pop(c->top, &c->ntop);
        out[i - 1].id = vd__meta(ix, t, h.id)->id;
        out[i - 1].score = to_score(ix, h.d);
    }
    *n_out = n;
out_put:
    ctx_put(ix, c);
    pthread_rwlock_unlock(&ix->gate);
    return rc;
}

size_t vd_index_memory(const struct vd_index *ix)
{
    struct vd_index *mix = (struct vd_index *)ix;
    pthread_mutex_lock(&mix->mu);
    const struct vd__tabs *t = tabs_get(ix);
    size_t chunk_slots = (size_t)1 << ix->chunk_shift;
    size_t b = sizeof(*ix) + ix->nchunks * chunk_slots * (ix->slot_size + sizeof(struct vd__meta));
    for (const struct vd__tabs *x = t; x; x = x->prev)
        b += sizeof(*x) + x->cap * (sizeof(*x->blk) + sizeof(*x->meta));
    b += atomic_load_explicit(&mix->upper_bytes, memory_order_relaxed);
    for (uint32_t c = 0; c < ix->nchunks; c++)
        b += (t->code[c] ? chunk_slots * ix->code_size : 0) +
             (t->fvec[c] ? chunk_slots * ix->vec_bytes : 0);
    for (const struct vd__tabs *x = t; x; x = x->prev)
        b += x->cap * (sizeof(*x->code) + sizeof(*x->fvec));
    b += (ix->free_cap + ix->pend_cap + ix->todo_cap + ix->map_cap) * sizeof(uint32_t);
    pthread_mutex_unlock(&mix->mu);
    pthread_mutex_lock(&mix->pool_mu);
    for (size_t i = 0; i < ix->npool; i++) {
        const struct vd__sctx *c = ix->pool[i];
        b += sizeof(*c) + c->tag_cap * 2 + (c->cand_cap + c->top_cap + c->tmp_cap) * 8 + c->ids_cap * 4 +
             (c->qcode ? ix->code_size : 0);
    }
    pthread_mutex_unlock(&mix->pool_mu);
    return b;
}

size_t vd_index_vector_memory(const struct vd_index *ix)
{
    struct vd_index *mix = (struct vd_index *)ix;
    pthread_mutex_lock(&mix->mu);
    const struct vd__tabs *t = tabs_get(ix);
    size_t chunk_slots = (size_t)1 << ix->chunk_shift;
    size_t b = ix->lean ? 0 : ix->nchunks * chunk_slots * ix->vec_bytes;
    for (uint32_t c = 0; c < ix->nchunks; c++)
        b += (t->code[c] ? chunk_slots * ix->code_size : 0) +
             (t->fvec[c] ? chunk_slots * ix->vec_bytes : 0);
    pthread_mutex_unlock(&mix->mu);
    return b;
}
