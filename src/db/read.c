/* The read paths: search, retrieve, scroll and count, with Qdrant-shaped JSON output. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "db_int.h"
#include "vectord/json.h"

static bool key_listed(const cJSON *list, const char *key)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, list)
    {
        if (cJSON_IsString(it) && !strcmp(it->valuestring, key))
            return true;
    }
    return false;
}

/* Appends the payload: stored text as is, or a selection of its top-level keys. */
static void put_payload(struct vd_buf *out, const struct vd_point_view *v, const struct vd_db_with *w)
{
    if (!v->payload || !v->payload_len) {
        vd_buf_puts(out, "{}");
        return;
    }
    if (!w->payload_keys && !w->payload_exclude) {
        vd_buf_append(out, v->payload, v->payload_len);
        return;
    }
    cJSON *j = NULL;
    struct vd_err e;
    if (vd_json_parse(v->payload, v->payload_len, VD_JSON_MAX_DEPTH, &j, &e)) {
        vd_buf_puts(out, "{}");
        return;
    }
    vd_buf_puts(out, "{");
    bool first = true;
    const cJSON *it;
    cJSON_ArrayForEach(it, j)
    {
        if (w->payload_keys && !key_listed(w->payload_keys, it->string))
            continue;
        if (w->payload_exclude && key_listed(w->payload_exclude, it->string))
            continue;
        if (!first)
            vd_buf_puts(out, ",");
        first = false;
        vd_buf_json_string(out, it->string, strlen(it->string));
        vd_buf_puts(out, ":");
        vd_buf_json(out, it);
    }
    vd_buf_puts(out, "}");
    cJSON_Delete(j);
}

static void put_with(struct vd_buf *out, const struct vd_point_view *v, const struct vd_db_with *w)
{
    vd_buf_puts(out, ",\"payload\":");
    if (w->payload)
        put_payload(out, v, w);
    else
        vd_buf_puts(out, "null");
    vd_buf_puts(out, ",\"vector\":");
    if (w->vector && v->vec)
        vd_buf_json_floats(out, v->vec, v->dim);
    else
        vd_buf_puts(out, "null");
}

struct filter_ctx {
    struct vd_coll *c;
    const struct vd_filter *f;
    const uint64_t (*ranges)[2];
    size_t n_ranges;
    const struct vd_pid *exclude;
};

static bool in_ranges(const struct filter_ctx *fc, const struct vd_pid *id)
{
    if (!fc->n_ranges)
        return true;
    uint64_t h = vd_pid_hash(id);
    for (size_t i = 0; i < fc->n_ranges; i++)
        if (h >= fc->ranges[i][0] && h < fc->ranges[i][1])
            return true;
    return false;
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
    return e && vd_filter_match_bin(fc->f, id, e->bin, e->len);
}

/* How many live points pass the filter: exact for small collections, else from a sample of
 * about 4096 map slots. The index uses it to choose an exact scan of the few matching points
 * over a graph walk that would have to skip almost everything. Called with plock held. */
static uint32_t filter_estimate(struct vd_coll *c, const struct filter_ctx *fc)
{
    const struct pmap *m = &c->pm;
    if (!fc->f || m->count == 0)
        return 0;
    size_t step = m->cap > 4096 ? m->cap / 4096 : 1;
    size_t seen = 0, hit = 0;
    for (size_t i = 0; i < m->cap; i += step) {
        const struct pmap_entry *e = &m->slots[i];
        if (!e->used)
            continue;
        seen++;
        if (in_ranges(fc, &e->id) && vd_filter_match_bin(fc->f, &e->id, e->bin, e->len))
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

int vd_db_search_json(struct vd_coll *c, const struct vd_db_search *s, const struct vd_db_with *w,
                      struct vd_buf *out, struct vd_err *err)
{
    uint32_t dim = c->schema.dim;
    uint32_t k = s->limit + s->offset;
    if (k == 0) {
        vd_buf_puts(out, "[]");
        return 0;
    }
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
    struct filter_ctx fc = {.c = c, .f = s->filter, .ranges = s->ranges, .n_ranges = s->n_ranges,
                            .exclude = s->exclude};
    bool filtered = s->filter || s->n_ranges || s->exclude;
    struct vd_search_req r = {
        .query = q,
        .k = k,
        .ef = s->ef ? (s->ef > k ? s->ef : k) : 0,
        .exact = s->exact,
        .filter = filtered ? filter_cb : NULL,
        .filter_ctx = &fc,
    };
    uint32_t nh = 0;
    if (s->filter) {
        pthread_rwlock_rdlock(&c->plock);
        r.filter_estimate = filter_estimate(c, &fc);
    }
    rc = vd_index_search(c->ix, &r, hits, &nh);
    if (s->filter)
        pthread_rwlock_unlock(&c->plock);
    if (rc) {
        vd_errf(err, rc, "search failed: %s", vd_strerror(rc));
        goto out_free;
    }
    struct vd_rtxn *t;
    if ((rc = vd_store_read_begin(c->db->store, &t))) {
        vd_errf(err, rc, "cannot read: %s", vd_strerror(rc));
        goto out_free;
    }
    vd_buf_puts(out, "[");
    bool first = true;
    for (uint32_t i = s->offset; i < nh; i++) {
        if (s->has_threshold && !passes(c->schema.metric, hits[i].score, s->score_threshold))
            break; /* hits are best first */
        struct vd_point_view v;
        if (vd_store_point_get(t, c->schema.incarnation, &hits[i].id, &v) || v.tombstone)
            continue; /* deleted after the search ran */
        if (!first)
            vd_buf_puts(out, ",");
        first = false;
        vd_buf_puts(out, "{\"id\":");
        vd_buf_json_pid(out, &hits[i].id);
        vd_buf_printf(out, ",\"version\":%llu,\"score\":", (unsigned long long)v.seq);
        char num[32];
        vd_json_fmt_float(hits[i].score, num);
        vd_buf_puts(out, num);
        put_with(out, &v, w);
        vd_buf_puts(out, "}");
    }
    vd_buf_puts(out, "]");
    vd_store_read_end(t);
out_free:
    if (q != qbuf)
        free(q);
    if (hits != hbuf)
        free(hits);
    if (rc == 0 && !vd_buf_ok(out))
        rc = vd_errf(err, VD_ENOMEM, "out of memory building the reply");
    return rc;
}

static void put_record(struct vd_buf *out, const struct vd_point_view *v, const struct vd_db_with *w)
{
    vd_buf_puts(out, "{\"id\":");
    vd_buf_json_pid(out, &v->id);
    put_with(out, v, w);
    vd_buf_puts(out, "}");
}

int vd_db_retrieve_json(struct vd_coll *c, const struct vd_pid *ids, size_t n,
                        const struct vd_db_with *w, struct vd_buf *out, struct vd_err *err)
{
    struct vd_rtxn *t;
    int rc = vd_store_read_begin(c->db->store, &t);
    if (rc)
        return vd_errf(err, rc, "cannot read: %s", vd_strerror(rc));
    vd_buf_puts(out, "[");
    bool first = true;
    for (size_t i = 0; i < n; i++) {
        struct vd_point_view v;
        if (vd_store_point_get(t, c->schema.incarnation, &ids[i], &v) || v.tombstone)
            continue;
        /* the same id twice in a request is answered once, as Qdrant does */
        bool dup = false;
        for (size_t j = 0; j < i && !dup; j++)
            dup = vd_pid_eq(&ids[j], &ids[i]);
        if (dup)
            continue;
        if (!first)
            vd_buf_puts(out, ",");
        first = false;
        put_record(out, &v, w);
    }
    vd_buf_puts(out, "]");
    vd_store_read_end(t);
    if (!vd_buf_ok(out))
        return vd_errf(err, VD_ENOMEM, "out of memory building the reply");
    return 0;
}

int vd_db_get_vector(struct vd_coll *c, const struct vd_pid *id, float *out)
{
    struct vd_rtxn *t;
    int rc = vd_store_read_begin(c->db->store, &t);
    if (rc)
        return rc;
    struct vd_point_view v;
    rc = vd_store_point_get(t, c->schema.incarnation, id, &v);
    if (rc == 0 && (v.tombstone || v.dim != c->schema.dim))
        rc = VD_ENOTFOUND;
    if (rc == 0)
        memcpy(out, v.vec, sizeof(float) * v.dim);
    vd_store_read_end(t);
    return rc;
}

struct scroll_ctx {
    struct vd_coll *c;
    const struct vd_filter *f;
    const struct vd_db_with *w;
    struct vd_buf *out;
    uint32_t limit, emitted;
    struct vd_pid *next;
    bool *has_next;
    bool ndjson; /* export lines instead of a JSON array of records */
};

static int scroll_cb(const struct vd_point_view *v, void *arg)
{
    struct scroll_ctx *s = arg;
    if (s->f) {
        const struct pmap_entry *e = pmap_get(&s->c->pm, &v->id);
        if (!e || !vd_filter_match_bin(s->f, &v->id, e->bin, e->len))
            return 0;
    }
    if (s->emitted == s->limit) {
        *s->next = v->id;
        *s->has_next = true;
        return 1;
    }
    if (s->ndjson) {
        vd_buf_puts(s->out, "{\"id\":");
        vd_buf_json_pid(s->out, &v->id);
        vd_buf_puts(s->out, ",\"vector\":");
        vd_buf_json_floats(s->out, v->vec, v->dim);
        if (v->payload && v->payload_len) {
            vd_buf_puts(s->out, ",\"payload\":");
            vd_buf_append(s->out, v->payload, v->payload_len);
        }
        vd_buf_puts(s->out, "}\n");
    } else {
        if (s->emitted)
            vd_buf_puts(s->out, ",");
        put_record(s->out, v, s->w);
    }
    s->emitted++;
    return 0;
}

static int scroll(struct vd_coll *c, const struct vd_pid *from, uint32_t limit,
                  const struct vd_filter *f, const struct vd_db_with *w, struct vd_buf *out,
                  struct vd_pid *next, bool *has_next, bool ndjson, struct vd_err *err)
{
    struct vd_rtxn *t;
    int rc = vd_store_read_begin(c->db->store, &t);
    if (rc)
        return vd_errf(err, rc, "cannot read: %s", vd_strerror(rc));
    *has_next = false;
    struct scroll_ctx s = {c, f, w, out, limit, 0, next, has_next, ndjson};
    if (!ndjson)
        vd_buf_puts(out, "[");
    if (f)
        pthread_rwlock_rdlock(&c->plock);
    rc = vd_store_scan(t, c->schema.incarnation, from, false, scroll_cb, &s);
    if (f)
        pthread_rwlock_unlock(&c->plock);
    if (!ndjson)
        vd_buf_puts(out, "]");
    vd_store_read_end(t);
    if (rc < 0)
        return vd_errf(err, rc, "scroll failed: %s", vd_strerror(rc));
    if (!vd_buf_ok(out))
        return vd_errf(err, VD_ENOMEM, "out of memory building the reply");
    return 0;
}

int vd_db_scroll_json(struct vd_coll *c, const struct vd_pid *from, uint32_t limit,
                      const struct vd_filter *f, const struct vd_db_with *w, struct vd_buf *out,
                      struct vd_pid *next, bool *has_next, struct vd_err *err)
{
    return scroll(c, from, limit, f, w, out, next, has_next, false, err);
}

int vd_db_export_ndjson(struct vd_coll *c, const struct vd_pid *from, uint32_t limit,
                        const struct vd_filter *f, struct vd_buf *out, struct vd_pid *next,
                        bool *has_next, struct vd_err *err)
{
    struct vd_db_with w = {.payload = true, .vector = true};
    return scroll(c, from, limit, f, &w, out, next, has_next, true, err);
}

int vd_db_count(struct vd_coll *c, const struct vd_filter *f, uint64_t *out)
{
    pthread_rwlock_rdlock(&c->plock);
    uint64_t n = 0;
    if (!f) {
        n = c->pm.count;
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
