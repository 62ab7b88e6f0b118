/* The read paths: search, retrieve, scroll and count. They return records copied out of
 * storage (struct vd_db_record); JSON is made of them by the API. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "db_int.h"

/* The ids of the map slots set in b, at most n of them, into a new array *out (caller frees) of
 * *n_out ids: the index scores just these, where an exact scan would ask the filter about every
 * stored point. Called with plock held. Returns 0 or VD_ENOMEM. */
static int cands_fill(struct vd_pid **out, uint32_t *n_out, const struct pidx_bits *b, uint64_t n,
                      const struct pmap *m)
{
    *n_out = 0;
    if (!(*out = malloc(sizeof **out * (n ? n : 1))))
        return VD_ENOMEM;
    uint32_t k = 0;
    for (size_t i = 0; i < b->nw; i++) {
        for (uint64_t w = b->w[i]; w && k < n; w &= w - 1) {
            uint32_t s = (uint32_t)(i * 64 + (size_t)__builtin_ctzll(w));
            if (s < m->nslots && m->sid[s].type)
                (*out)[k++] = m->sid[s];
        }
    }
    *n_out = k;
    return 0;
}

struct filter_ctx {
    struct vd_coll *c;
    const struct vd_filter *f;
    const uint64_t (*ranges)[2];
    size_t n_ranges;
    const struct vd_pid *exclude;
    const struct pidx_bits *bits; /* from the payload indexes: the matches, or a superset */
    bool bits_exact;
};

static bool bit_has(const struct pidx_bits *b, uint32_t s)
{
    return s / 64 < b->nw && (b->w[s / 64] >> (s % 64)) & 1;
}

/* Whether id's placement hash lies on one of the ring arcs (none: every id does). */
static bool id_in_arcs(const struct vd_coll *c, const uint64_t (*ranges)[2], size_t n_ranges,
                       const struct vd_pid *id)
{
    if (!n_ranges)
        return true;
    uint8_t key[VD_PID_KEY_MAX];
    size_t n = vd_pid_encode(id, key);
    uint64_t h = vd_place_hash(c->schema.name, key, n);
    for (size_t i = 0; i < n_ranges; i++)
        if (vd_ring_contains(ranges[i][0], ranges[i][1], h))
            return true;
    return false;
}

static bool in_ranges(const struct filter_ctx *fc, const struct vd_pid *id)
{
    return id_in_arcs(fc->c, fc->ranges, fc->n_ranges, id);
}

/* Called during graph traversal with the payload lock held for reading by the searcher. */
static bool filter_cb(const struct vd_pid *id, uint32_t slot, void *arg)
{
    struct filter_ctx *fc = arg;
    if (!in_ranges(fc, id) || (fc->exclude && vd_pid_eq(fc->exclude, id)))
        return false;
    if (!fc->f)
        return true;
    const struct pmap_entry *e = pmap_get(&fc->c->pm, id);
    if (!e)
        return false;
    if (fc->bits) {
        if (!bit_has(fc->bits, e->slot))
            return false;
        if (fc->bits_exact)
            return true;
    }
    return vd_filter_match_bin(fc->f, id, e->bin, e->len);
}

/* Few enough matches that scoring each beats walking the graph: the index's own rule for its
 * full-scan threshold, and at least a couple of hundred points whatever the threshold. */
static bool few(const struct vd_coll *c, uint64_t n)
{
    uint64_t thr = (uint64_t)c->schema.full_scan_threshold_kb * 1024;
    return n <= 256 || n * c->schema.dim * sizeof(float) < thr;
}

/* How many live points pass the filter and lie in the ring arcs: exact for small collections,
 * else from a sample of about 4096 map slots. The index uses it to choose an exact scan of the
 * few matching points over a graph walk that would have to skip almost everything. Called with
 * plock held. */
static uint32_t filter_estimate(struct vd_coll *c, const struct filter_ctx *fc)
{
    const struct pmap *m = &c->pm;
    if ((!fc->f && !fc->n_ranges) || m->count == 0)
        return 0;
    size_t step = m->cap > 4096 ? m->cap / 4096 : 1;
    size_t seen = 0, hit = 0;
    for (size_t i = 0; i < m->cap; i += step) {
        const struct pmap_entry *e = &m->slots[i];
        if (!e->used)
            continue;
        seen++;
        if (in_ranges(fc, &e->id) &&
            (!fc->f || vd_filter_match_bin(fc->f, &e->id, e->bin, e->len)))
            hit++;
    }
    if (!seen)
        return 0;
    uint64_t est = (uint64_t)((double)hit / (double)seen * (double)m->count);
    /* a sample that found nothing still leaves room for a few matches */
    if (est == 0)
        est = 1;
    return est > UINT32_MAX ? UINT32_MAX : (uint32_t)est;
}

static bool passes(enum vd_metric m, float score, float threshold)
{
    if (m == VD_METRIC_EUCLID || m == VD_METRIC_MANHATTAN)
        return score <= threshold;
    return score >= threshold;
}

/* A growing array of records copied out of storage views: what every read returns. */
struct rec_list {
    struct vd_db_record *v;
    size_t n, cap;
};

void vd_db_records_free(struct vd_db_record *r, size_t n)
{
    for (size_t i = 0; r && i < n; i++) {
        free(r[i].vec);
        free(r[i].payload);
    }
    free(r);
}

/* Appends a copy of view v (its vector only when with_vector): the view's memory lives no longer
 * than the read transaction, the record as long as the caller wants. Returns 0 or VD_ENOMEM
 * (nothing appended). */
static int rec_push(struct rec_list *l, const struct vd_point_view *v, bool with_vector,
                    float score)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        struct vd_db_record *nv = realloc(l->v, sizeof *nv * cap);
        if (!nv)
            return VD_ENOMEM;
        l->v = nv;
        l->cap = cap;
    }
    struct vd_db_record *d = &l->v[l->n];
    *d = (struct vd_db_record){.id = v->id, .version = {v->version, v->node}, .seq = v->seq,
                               .tombstone = v->tombstone, .score = score};
    if (v->payload) {
        if (!(d->payload = malloc(v->payload_len ? v->payload_len : 1)))
            return VD_ENOMEM;
        memcpy(d->payload, v->payload, v->payload_len);
        d->payload_len = v->payload_len;
    }
    if (with_vector && v->vec) {
        if (!(d->vec = malloc(sizeof(float) * v->dim))) {
            free(d->payload);
            return VD_ENOMEM;
        }
        memcpy(d->vec, v->vec, sizeof(float) * v->dim);
        d->dim = v->dim;
    }
    l->n++;
    return 0;
}

/* Hands the list to the caller (an empty one as a valid, freeable array). */
static int rec_take(struct rec_list *l, struct vd_db_record **out, size_t *n_out)
{
    if (!l->v && !(l->v = malloc(sizeof *l->v)))
        return VD_ENOMEM;
    *out = l->v;
    *n_out = l->n;
    return 0;
}

int vd_db_search(struct vd_coll *c, const struct vd_db_search *s, bool with_vector,
                 struct vd_db_record **out, size_t *n_out, struct vd_err *err)
{
    *out = NULL;
    *n_out = 0;
    struct rec_list l = {0};
    uint32_t dim = c->schema.dim;
    uint32_t k = s->limit + s->offset;
    if (k == 0)
        return rec_take(&l, out, n_out) ? vd_errf(err, VD_ENOMEM, "out of memory") : 0;
    float qbuf[1024];
    float *q = dim <= 1024 ? qbuf : malloc(sizeof(float) * dim);
    struct vd_search_hit hbuf[128];
    struct vd_search_hit *hits = k <= 128 ? hbuf : malloc(sizeof *hits * k);
    int rc = 0;
    if (!q || !hits) {
        rc = vd_errf(err, VD_ENOMEM, "out of memory");
        goto out_free;
    }
    memcpy(q, s->query, sizeof(float) * dim);
    if (c->schema.metric == VD_METRIC_COSINE && vd_vec_normalize(q, dim)) {
        rc = vd_errf(err, VD_EINVAL, "a zero query vector cannot be used with Cosine distance");
        goto out_free;
    }
    struct filter_ctx fc = {.c = c,
                            .f = s->filter,
                            .ranges = s->ranges,
                            .n_ranges = s->n_ranges,
                            .exclude = s->exclude};
    bool filtered = s->filter || s->n_ranges || s->exclude;
    struct vd_search_req r = {
        .query = q,
        .k = k,
        .ef = s->ef ? (s->ef > k ? s->ef : k) : 0,
        .exact = s->exact,
        .quant_ignore = s->quant_ignore,
        .quant_no_rescore = s->quant_no_rescore,
        .oversampling = s->oversampling,
        .filter = filtered ? filter_cb : NULL,
        .filter_ctx = &fc,
    };
    uint32_t nh = 0;
    struct pidx_bits *bits = NULL;
    struct vd_pid *cands = NULL;
    bool none = false;
    if (!s->filter && s->n_ranges) {
        /* a replica asked for a few of its arcs: few points in them make an exact scan */
        pthread_rwlock_rdlock(&c->plock);
        r.filter_estimate = filter_estimate(c, &fc);
        pthread_rwlock_unlock(&c->plock);
    }
    if (s->filter) {
        pthread_rwlock_rdlock(&c->plock);
        /* Indexed conditions give the matching set (or a superset) at once: its size replaces
         * the sampled estimate, and a small exact set becomes the candidate list. */
        bool exact;
        pidx_plan(&c->px, &c->pm, s->filter, &bits, &exact);
        if (bits) {
            uint64_t n = pidx_bits_count(bits);
            if (!exact && few(c, n)) {
                pidx_bits_refine(bits, &c->pm, s->filter);
                n = pidx_bits_count(bits);
                exact = true;
            }
            fc.bits = bits;
            fc.bits_exact = exact;
            none = exact && n == 0;
            if (!none && exact && few(c, n) && n <= UINT32_MAX &&
                cands_fill(&cands, &r.n_candidates, bits, n, &c->pm) == 0) {
                /* the candidates are exactly the matches: only ranges and exclude remain */
                r.candidates = cands;
                fc.f = NULL;
                if (!s->n_ranges && !s->exclude)
                    r.filter = NULL;
            }
            r.filter_estimate = n == 0 ? 1 : n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
        } else {
            r.filter_estimate = filter_estimate(c, &fc);
        }
    }
    rc = none ? 0 : vd_index_search(c->ix, &r, hits, &nh);
    if (s->filter)
        pthread_rwlock_unlock(&c->plock);
    pidx_bits_free(bits);
    free(cands);
    if (rc) {
        vd_errf(err, rc, "search failed: %s", vd_strerror(rc));
        goto out_free;
    }
    struct vd_rtxn *t;
    if ((rc = vd_store_read_begin(c->db->store, &t))) {
        vd_errf(err, rc, "cannot read: %s", vd_strerror(rc));
        goto out_free;
    }
    for (uint32_t i = s->offset; i < nh; i++) {
        if (s->has_threshold && !passes(c->schema.metric, hits[i].score, s->score_threshold))
            break; /* hits are best first */
        struct vd_point_view v;
        if (vd_store_point_get(t, c->schema.incarnation, &hits[i].id, &v) || v.tombstone)
            continue; /* deleted after the search ran */
        if ((rc = rec_push(&l, &v, with_vector, hits[i].score))) {
            vd_errf(err, rc, "out of memory");
            break;
        }
        vd_store_read_release_views(t);
    }
    vd_store_read_end(t);
    if (rc == 0 && rec_take(&l, out, n_out))
        rc = vd_errf(err, VD_ENOMEM, "out of memory");
out_free:
    if (rc)
        vd_db_records_free(l.v, l.n);
    if (q != qbuf)
        free(q);
    if (hits != hbuf)
        free(hits);
    return rc;
}

int vd_db_retrieve(struct vd_coll *c, const struct vd_pid *ids, size_t n, bool with_vector,
                   bool with_tombstones, struct vd_db_record **out, size_t *n_out,
                   struct vd_err *err)
{
    *out = NULL;
    *n_out = 0;
    struct rec_list l = {0};
    struct vd_rtxn *t;
    int rc = vd_store_read_begin(c->db->store, &t);
    if (rc)
        return vd_errf(err, rc, "cannot read: %s", vd_strerror(rc));
    for (size_t i = 0; i < n; i++) {
        struct vd_point_view v;
        if (vd_store_point_get(t, c->schema.incarnation, &ids[i], &v) ||
            (v.tombstone && !with_tombstones))
            continue;
        /* the same id twice in a request is answered once, as Qdrant does */
        bool dup = false;
        for (size_t j = 0; j < i && !dup; j++)
            dup = vd_pid_eq(&ids[j], &ids[i]);
        if (dup)
            continue;
        if ((rc = rec_push(&l, &v, with_vector, 0))) {
            vd_errf(err, rc, "out of memory");
            break;
        }
        vd_store_read_release_views(t);
    }
    vd_store_read_end(t);
    if (rc == 0 && rec_take(&l, out, n_out))
        rc = vd_errf(err, VD_ENOMEM, "out of memory");
    if (rc)
        vd_db_records_free(l.v, l.n);
    return rc;
}

struct scroll_ctx {
    struct vd_coll *c;
    const struct vd_filter *f;
    const uint64_t (*ranges)[2];
    size_t n_ranges;
    bool with_vector;
    struct rec_list *l;
    uint32_t limit;
    struct vd_pid *next;
    bool *has_next;
};

static int scroll_cb(const struct vd_point_view *v, void *arg)
{
    struct scroll_ctx *s = arg;
    if (!id_in_arcs(s->c, s->ranges, s->n_ranges, &v->id))
        return 0;
    if (s->f) {
        const struct pmap_entry *e = pmap_get(&s->c->pm, &v->id);
        if (!e || !vd_filter_match_bin(s->f, &v->id, e->bin, e->len))
            return 0;
    }
    if (s->l->n == s->limit) {
        *s->next = v->id;
        *s->has_next = true;
        return 1;
    }
    return rec_push(s->l, v, s->with_vector, 0);
}

static int pid_qcmp(const void *a, const void *b)
{
    return vd_pid_cmp(a, b);
}

/* The matching ids from the payload indexes, sorted, when they are few compared with the
 * collection (then reading them one by one beats scanning storage from `from` on). *ids NULL
 * when the indexes do not bound f that tightly. Called with plock held. */
static int scroll_plan(struct vd_coll *c, const struct vd_filter *f, struct vd_pid **ids, size_t *n)
{
    *ids = NULL;
    *n = 0;
    struct pidx_bits *bits;
    bool exact;
    pidx_plan(&c->px, &c->pm, f, &bits, &exact);
    if (!bits)
        return 0;
    uint64_t k = pidx_bits_count(bits);
    if (k * 16 > c->pm.count) {
        pidx_bits_free(bits);
        return 0;
    }
    if (!exact)
        pidx_bits_refine(bits, &c->pm, f);
    struct vd_pid *v = malloc(sizeof *v * (k ? k : 1));
    if (!v) {
        pidx_bits_free(bits);
        return VD_ENOMEM;
    }
    size_t m = 0;
    for (size_t i = 0; i < bits->nw; i++)
        for (uint64_t w = bits->w[i]; w; w &= w - 1) {
            uint32_t s = (uint32_t)(i * 64 + (size_t)__builtin_ctzll(w));
            if (s < c->pm.nslots && c->pm.sid[s].type)
                v[m++] = c->pm.sid[s];
        }
    pidx_bits_free(bits);
    qsort(v, m, sizeof *v, pid_qcmp);
    *ids = v;
    *n = m;
    return 0;
}

int vd_db_scroll(struct vd_coll *c, const struct vd_pid *from, uint32_t limit,
                 const struct vd_filter *f, bool with_vector, struct vd_db_record **out,
                 size_t *n_out, struct vd_pid *next, bool *has_next, struct vd_err *err)
{
    return vd_db_scroll_arcs(c, from, limit, f, NULL, 0, with_vector, out, n_out, next, has_next,
                             err);
}

int vd_db_scroll_arcs(struct vd_coll *c, const struct vd_pid *from, uint32_t limit,
                      const struct vd_filter *f, const uint64_t (*ranges)[2], size_t n_ranges,
                      bool with_vector, struct vd_db_record **out, size_t *n_out,
                      struct vd_pid *next, bool *has_next, struct vd_err *err)
{
    *out = NULL;
    *n_out = 0;
    *has_next = false;
    struct vd_pid *ids = NULL;
    size_t nids = 0;
    int rc;
    if (f) {
        pthread_rwlock_rdlock(&c->plock);
        rc = scroll_plan(c, f, &ids, &nids);
        pthread_rwlock_unlock(&c->plock);
        if (rc)
            return vd_errf(err, rc, "out of memory");
    }
    struct vd_rtxn *t;
    if ((rc = vd_store_read_begin(c->db->store, &t))) {
        free(ids);
        return vd_errf(err, rc, "cannot read: %s", vd_strerror(rc));
    }
    struct rec_list l = {0};
    struct scroll_ctx s = {c, f, ranges, n_ranges, with_vector, &l, limit, next, has_next};
    if (ids) {
        /* the filter was applied by the plan; a point deleted since is skipped */
        s.f = NULL;
        rc = 0;
        for (size_t i = 0; i < nids && rc == 0; i++) {
            struct vd_point_view v;
            if (from && vd_pid_cmp(&ids[i], from) < 0)
                continue;
            if (vd_store_point_get(t, c->schema.incarnation, &ids[i], &v) || v.tombstone)
                continue;
            rc = scroll_cb(&v, &s);
            if (rc == 0 && (i & 255) == 255)
                vd_store_read_release_views(t);
        }
        if (rc > 0)
            rc = 0;
        free(ids);
    } else {
        if (f)
            pthread_rwlock_rdlock(&c->plock);
        rc = vd_store_scan(t, c->schema.incarnation, from, false, scroll_cb, &s);
        if (f)
            pthread_rwlock_unlock(&c->plock);
        if (rc > 0)
            rc = 0;
    }
    vd_store_read_end(t);
    if (rc < 0)
        vd_errf(err, rc, "scroll failed: %s", vd_strerror(rc));
    else if (rec_take(&l, out, n_out))
        rc = vd_errf(err, VD_ENOMEM, "out of memory");
    if (rc)
        vd_db_records_free(l.v, l.n);
    return rc;
}

int vd_db_count(struct vd_coll *c, const struct vd_filter *f, uint64_t *out)
{
    pthread_rwlock_rdlock(&c->plock);
    uint64_t n = 0;
    struct pidx_bits *bits = NULL;
    bool exact = false;
    if (f)
        pidx_plan(&c->px, &c->pm, f, &bits, &exact);
    if (!f) {
        n = c->pm.count;
    } else if (bits) {
        if (!exact)
            pidx_bits_refine(bits, &c->pm, f);
        n = pidx_bits_count(bits);
        pidx_bits_free(bits);
    } else {
        for (size_t i = 0; i < c->pm.cap; i++) {
            const struct pmap_entry *e = &c->pm.slots[i];
            if (e->used && vd_filter_match_bin(f, &e->id, e->bin, e->len))
                n++;
        }
    }
    pthread_rwlock_unlock(&c->plock);
    *out = n;
    return 0;
}

int vd_db_check(struct vd_coll *c, const float *query, const struct vd_filter *f,
                const struct vd_pid *ids, size_t n, struct vd_db_check *out, struct vd_err *err)
{
    memset(out, 0, sizeof *out * n);
    if (n == 0)
        return 0;
    uint32_t dim = c->schema.dim;
    struct vd_pid *live = malloc(sizeof *live * n);
    struct vd_search_hit *hits = malloc(sizeof *hits * n);
    float *q = query ? malloc(sizeof(float) * dim) : NULL;
    int rc = 0;
    if (!live || !hits || (query && !q)) {
        rc = vd_errf(err, VD_ENOMEM, "out of memory");
        goto out_free;
    }
    struct vd_rtxn *t;
    if ((rc = vd_store_read_begin(c->db->store, &t))) {
        vd_errf(err, rc, "cannot read: %s", vd_strerror(rc));
        goto out_free;
    }
    for (size_t i = 0; i < n; i++) {
        struct vd_point_view v;
        if (vd_store_point_get(t, c->schema.incarnation, &ids[i], &v))
            continue;
        out[i].present = true;
        out[i].tombstone = v.tombstone;
        out[i].version = (struct vd_version){v.version, v.node};
        vd_store_read_release_views(t);
    }
    vd_store_read_end(t);
    /* the filter reads the payload columns, as a filtered search does */
    uint32_t nl = 0;
    pthread_rwlock_rdlock(&c->plock);
    for (size_t i = 0; i < n; i++) {
        if (!out[i].present || out[i].tombstone)
            continue;
        const struct pmap_entry *e = pmap_get(&c->pm, &ids[i]);
        out[i].match = !f || (e && vd_filter_match_bin(f, &ids[i], e->bin, e->len));
        if (out[i].match)
            live[nl++] = ids[i];
    }
    pthread_rwlock_unlock(&c->plock);
    if (!query || nl == 0)
        goto out_free;
    memcpy(q, query, sizeof(float) * dim);
    if (c->schema.metric == VD_METRIC_COSINE && vd_vec_normalize(q, dim)) {
        rc = vd_errf(err, VD_EINVAL, "a zero query vector cannot be used with Cosine distance");
        goto out_free;
    }
    /* A candidate list is scored by the exact scan's kernel over the float vectors: the scores
     * an exact search, and a rescored quantized one, give the same vectors. */
    struct vd_search_req r = {
        .query = q, .k = nl, .exact = true, .candidates = live, .n_candidates = nl};
    uint32_t nh = 0;
    if ((rc = vd_index_search(c->ix, &r, hits, &nh))) {
        vd_errf(err, rc, "search failed: %s", vd_strerror(rc));
        goto out_free;
    }
    /* An id stored but not (yet) in the index is not searchable here: no match. */
    for (size_t i = 0; i < n; i++) {
        if (!out[i].match)
            continue;
        out[i].match = false;
        for (uint32_t h = 0; h < nh && !out[i].match; h++)
            if (vd_pid_eq(&hits[h].id, &ids[i])) {
                out[i].match = true;
                out[i].score = hits[h].score;
            }
    }
out_free:
    free(live);
    free(hits);
    free(q);
    return rc;
}
