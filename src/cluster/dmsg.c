/* Codec of the data messages (format in dmsg.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dmsg.h"
#include "vectord/record.h"

const char *vd_dmsg_kind_name(uint8_t kind)
{
    static const char *const names[] = {"write",  "read", "search", "verify",
                                        "scroll", "tree", "leaf"};
    _Static_assert(sizeof names / sizeof names[0] == VD_DMSG_KIND_LAST, "a name per kind");
    return kind >= VD_DMSG_WRITE && kind <= VD_DMSG_KIND_LAST ? names[kind - VD_DMSG_WRITE]
                                                              : "unknown";
}

const char *vd_dmsg_status_name(uint8_t status)
{
    static const char *const names[] = {"ok", "wrong ring", "gone", "not yet", "error"};
    _Static_assert(sizeof names / sizeof names[0] == VD_DMSG_ERROR, "a name per status");
    return status >= VD_DMSG_OK && status <= VD_DMSG_ERROR ? names[status - VD_DMSG_OK]
                                                           : "unknown";
}

/* ---- writing ---- */

static void put_u8(struct vd_buf *b, uint8_t v)
{
    vd_buf_append(b, &v, 1);
}

static void put_u16(struct vd_buf *b, uint16_t v)
{
    uint8_t x[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    vd_buf_append(b, x, 2);
}

static void put_u32(struct vd_buf *b, uint32_t v)
{
    uint8_t x[4];
    vd_be32_put(x, v);
    vd_buf_append(b, x, 4);
}

static void put_u64(struct vd_buf *b, uint64_t v)
{
    uint8_t x[8];
    vd_be64_put(x, v);
    vd_buf_append(b, x, 8);
}

static void put_f32(struct vd_buf *b, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    put_u32(b, u);
}

static void put_key(struct vd_buf *b, const struct vd_pid *id)
{
    uint8_t k[VD_PID_KEY_MAX];
    size_t n = vd_pid_encode(id, k);
    put_u8(b, (uint8_t)n);
    vd_buf_append(b, k, n);
}

static void put_copy(struct vd_buf *b, const struct vd_coord_copy *c)
{
    put_u8(b, (uint8_t)((c->present ? 1 : 0) | (c->tombstone ? 2 : 0)));
    put_u64(b, c->version.hlc);
    put_u64(b, c->version.node);
}

static bool finite_all(const float *v, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return false;
    return true;
}

static bool count_ok(uint32_t n, uint32_t min, uint32_t max)
{
    return n >= min && n <= max;
}

/* Qdrant's oversampling: absent (0) or at least 1. */
static bool oversampling_ok(float f)
{
    return f == 0.0f || (isfinite(f) && f >= 1.0f);
}

static bool depth_ok(uint8_t d)
{
    return d >= 1 && d <= VD_MERKLE_MAX_DEPTH;
}

/* A tree's leaves travel whole or not at all. */
static bool n_leaves_ok(uint8_t depth, uint32_t n)
{
    return n == 0 || n == vd_merkle_n_leaves(depth);
}

static int put_tree(struct vd_buf *b, const struct vd_dmsg_reply *r)
{
    if (!depth_ok(r->depth) || !n_leaves_ok(r->depth, r->n_leaves) || (r->n_leaves && !r->leaves))
        return VD_EINVAL;
    put_u64(b, r->tree_count);
    put_u64(b, r->tree_root);
    put_u8(b, r->depth);
    put_u32(b, r->n_leaves);
    for (uint32_t i = 0; i < r->n_leaves; i++)
        put_u64(b, r->leaves[i]);
    return 0;
}

static int put_filter(struct vd_buf *b, const struct vd_dmsg_req *r)
{
    if (r->filter_len && !r->filter)
        return VD_EINVAL;
    put_u32(b, r->filter ? r->filter_len : 0);
    if (r->filter)
        vd_buf_append(b, r->filter, r->filter_len);
    return 0;
}

static int put_arcs(struct vd_buf *b, const struct vd_dmsg_req *r)
{
    if (r->n_arcs > VD_DMSG_MAX_ARCS || (r->n_arcs && !r->arcs))
        return VD_EINVAL;
    put_u32(b, r->n_arcs);
    for (uint32_t i = 0; i < r->n_arcs; i++) {
        put_u64(b, r->arcs[i][0]);
        put_u64(b, r->arcs[i][1]);
    }
    return 0;
}

/* A verify without a query (dim 0) serves a scroll: nothing to score. */
static int put_query_filter(struct vd_buf *b, const struct vd_dmsg_req *r)
{
    uint32_t min = r->kind == VD_DMSG_VERIFY ? 0 : 1;
    if ((r->dim && !r->query) || !count_ok(r->dim, min, VD_DMSG_MAX_DIM) ||
        !finite_all(r->query, r->dim))
        return VD_EINVAL;
    put_u32(b, r->dim);
    for (uint32_t i = 0; i < r->dim; i++)
        put_f32(b, r->query[i]);
    return put_filter(b, r);
}

static int req_body(const struct vd_dmsg_req *r, struct vd_buf *b)
{
    size_t nl = strnlen(r->coll, sizeof r->coll);
    if (nl == 0 || nl >= sizeof r->coll)
        return VD_EINVAL;
    put_u8(b, VD_DMSG_VERSION);
    put_u8(b, r->kind);
    put_u32(b, r->attempt);
    put_u64(b, r->incarnation);
    put_u64(b, r->ring_version);
    put_u8(b, (uint8_t)nl);
    vd_buf_append(b, r->coll, nl);
    size_t il = strnlen(r->rid, sizeof r->rid);
    if (il >= sizeof r->rid || (il && !vd_reqid_valid(r->rid, il)))
        return VD_EINVAL;
    put_u8(b, (uint8_t)il);
    vd_buf_append(b, r->rid, il);
    switch (r->kind) {
    case VD_DMSG_WRITE:
        if (!count_ok(r->n_recs, 1, VD_DMSG_MAX_ITEMS))
            return VD_EINVAL;
        put_u32(b, r->n_recs);
        for (uint32_t i = 0; i < r->n_recs; i++) {
            struct vd_record rec;
            struct vd_rvec vecs[VD_RECORD_MAX_VECTORS];
            if (vd_record_decode(r->recs[i].p, r->recs[i].len, &rec, vecs))
                return VD_EINVAL;
            put_u32(b, r->recs[i].len);
            vd_buf_append(b, r->recs[i].p, r->recs[i].len);
        }
        return 0;
    case VD_DMSG_READ:
    case VD_DMSG_VERIFY:
        if (!count_ok(r->n_ids, 1, VD_DMSG_MAX_ITEMS))
            return VD_EINVAL;
        put_u32(b, r->n_ids);
        for (uint32_t i = 0; i < r->n_ids; i++)
            put_key(b, &r->ids[i]);
        if (r->kind == VD_DMSG_READ) {
            put_u8(b, r->with_record);
            return 0;
        }
        return put_query_filter(b, r);
    case VD_DMSG_SEARCH: {
        if (!count_ok(r->k, 1, VD_DMSG_MAX_ITEMS) || !oversampling_ok(r->oversampling))
            return VD_EINVAL;
        put_u32(b, r->k);
        put_u32(b, r->ef);
        put_u8(b, r->exact);
        put_u8(b, (uint8_t)((r->quant_ignore ? 1 : 0) | (r->quant_no_rescore ? 2 : 0)));
        put_f32(b, r->oversampling);
        int rc = put_arcs(b, r);
        return rc ? rc : put_query_filter(b, r);
    }
    case VD_DMSG_SCROLL: {
        if (!count_ok(r->k, 1, VD_DMSG_MAX_ITEMS))
            return VD_EINVAL;
        put_u32(b, r->k);
        put_u8(b, r->has_from);
        if (r->has_from)
            put_key(b, &r->from);
        int rc = put_arcs(b, r);
        return rc ? rc : put_filter(b, r);
    }
    case VD_DMSG_TREE:
        if (!depth_ok(r->depth))
            return VD_EINVAL;
        put_u64(b, r->range[0]);
        put_u64(b, r->range[1]);
        put_u8(b, r->depth);
        put_u8(b, r->with_leaves);
        return 0;
    case VD_DMSG_LEAF:
        if (!count_ok(r->k, 1, VD_DMSG_MAX_ITEMS))
            return VD_EINVAL;
        put_u64(b, r->range[0]);
        put_u64(b, r->range[1]);
        put_u32(b, r->k);
        return 0;
    default:
        return VD_EINVAL;
    }
}

int vd_dmsg_req_encode(const struct vd_dmsg_req *r, struct vd_buf *out)
{
    size_t at = out->len;
    int rc = req_body(r, out);
    if (rc)
        out->len = at;
    return rc;
}

static int reply_body(const struct vd_dmsg_reply *r, struct vd_buf *b)
{
    if (r->kind < VD_DMSG_WRITE || r->kind > VD_DMSG_KIND_LAST || r->status < VD_DMSG_OK ||
        r->status > VD_DMSG_ERROR)
        return VD_EINVAL;
    put_u8(b, VD_DMSG_VERSION);
    put_u8(b, r->kind);
    put_u8(b, r->status);
    put_u32(b, r->attempt);
    put_u64(b, r->ring_version);
    if (r->status == VD_DMSG_ERROR) {
        if (r->msg_len && !r->msg)
            return VD_EINVAL;
        put_u16(b, r->msg_len);
        vd_buf_append(b, r->msg, r->msg_len);
        return 0;
    }
    if (r->status != VD_DMSG_OK)
        return 0;
    if (r->kind == VD_DMSG_TREE)
        return put_tree(b, r);
    if (r->n_items > VD_DMSG_MAX_ITEMS)
        return VD_EINVAL;
    if (r->kind == VD_DMSG_SEARCH || r->kind == VD_DMSG_SCROLL || r->kind == VD_DMSG_LEAF)
        put_u8(b, r->complete);
    put_u32(b, r->n_items);
    for (uint32_t i = 0; i < r->n_items; i++) {
        switch (r->kind) {
        case VD_DMSG_WRITE:
            if (r->results[i] != VD_DMSG_HELD)
                return VD_EINVAL;
            put_u8(b, r->results[i]);
            break;
        case VD_DMSG_READ:
            put_copy(b, &r->reads[i].copy);
            put_u32(b, r->reads[i].rec.len);
            vd_buf_append(b, r->reads[i].rec.p, r->reads[i].rec.len);
            break;
        case VD_DMSG_SEARCH:
        case VD_DMSG_SCROLL:
            if (!isfinite(r->cands[i].score))
                return VD_EINVAL;
            put_key(b, &r->cands[i].id);
            put_u64(b, r->cands[i].version.hlc);
            put_u64(b, r->cands[i].version.node);
            put_f32(b, r->cands[i].score);
            break;
        case VD_DMSG_LEAF:
            if (!r->listing[i].copy.present)
                return VD_EINVAL;
            put_key(b, &r->listing[i].id);
            put_copy(b, &r->listing[i].copy);
            break;
        default:
            if (!isfinite(r->verifies[i].score))
                return VD_EINVAL;
            put_copy(b, &r->verifies[i].copy);
            put_u8(b, r->verifies[i].match);
            put_f32(b, r->verifies[i].score);
        }
    }
    return 0;
}

int vd_dmsg_reply_encode(const struct vd_dmsg_reply *r, struct vd_buf *out)
{
    size_t at = out->len;
    int rc = reply_body(r, out);
    if (rc)
        out->len = at;
    return rc;
}

/* ---- reading ---- */

struct rd {
    const uint8_t *p;
    size_t n;
    bool bad;
};

static const uint8_t *take(struct rd *r, size_t n)
{
    if (r->bad || r->n < n) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *p = r->p;
    r->p += n;
    r->n -= n;
    return p;
}

static uint8_t get_u8(struct rd *r)
{
    const uint8_t *p = take(r, 1);
    return p ? p[0] : 0;
}

static uint16_t get_u16(struct rd *r)
{
    const uint8_t *p = take(r, 2);
    return p ? (uint16_t)(p[0] << 8 | p[1]) : 0;
}

static uint32_t get_u32(struct rd *r)
{
    const uint8_t *p = take(r, 4);
    return p ? vd_be32_get(p) : 0;
}

static uint64_t get_u64(struct rd *r)
{
    const uint8_t *p = take(r, 8);
    return p ? vd_be64_get(p) : 0;
}

static float get_f32(struct rd *r)
{
    uint32_t u = get_u32(r);
    float f;
    memcpy(&f, &u, 4);
    if (!isfinite(f))
        r->bad = true;
    return f;
}

static bool get_bool(struct rd *r)
{
    uint8_t v = get_u8(r);
    if (v > 1)
        r->bad = true;
    return v == 1;
}

static void get_key(struct rd *r, struct vd_pid *id)
{
    uint8_t n = get_u8(r);
    const uint8_t *k = take(r, n);
    if (k && vd_pid_decode(k, n, id))
        r->bad = true;
}

static void get_copy(struct rd *r, struct vd_coord_copy *c)
{
    uint8_t f = get_u8(r);
    c->present = f & 1;
    c->tombstone = f & 2;
    c->version.hlc = get_u64(r);
    c->version.node = get_u64(r);
    /* absent means nothing at all: no flags, no version; a tombstone is present */
    if (f > 3 || (!c->present && (f || c->version.hlc || c->version.node)))
        r->bad = true;
}

/* A count in [min, max] whose items take at least `each` bytes of what is left: a forged count
 * cannot make the decoder allocate more than the message could describe. */
static uint32_t get_count(struct rd *r, uint32_t min, uint32_t max, size_t each)
{
    uint32_t n = get_u32(r);
    if (n < min || n > max || (size_t)n * each > r->n)
        r->bad = true;
    return r->bad ? 0 : n;
}

static void *alloc_n(struct rd *r, size_t n, size_t size, bool *oom)
{
    if (r->bad || n == 0)
        return NULL;
    void *p = calloc(n, size);
    if (!p)
        *oom = true, r->bad = true;
    return p;
}

/* A decoder's verdict: out of memory, or every byte read and every rule kept. */
static int finish(const struct rd *r, bool oom)
{
    if (oom)
        return VD_ENOMEM;
    return r->bad || r->n ? VD_ECORRUPT : 0;
}

static void get_filter(struct rd *r, struct vd_dmsg_req *q)
{
    q->filter_len = get_u32(r);
    const uint8_t *f = take(r, q->filter_len);
    q->filter = q->filter_len ? (const char *)f : NULL;
}

static void get_arcs(struct rd *r, struct vd_dmsg_req *q, bool *oom)
{
    q->n_arcs = get_count(r, 0, VD_DMSG_MAX_ARCS, 16);
    uint64_t(*arcs)[2] = alloc_n(r, q->n_arcs, sizeof *arcs, oom);
    q->arcs = (const uint64_t(*)[2])arcs;
    for (uint32_t i = 0; arcs && i < q->n_arcs; i++) {
        arcs[i][0] = get_u64(r);
        arcs[i][1] = get_u64(r);
    }
}

static void get_query_filter(struct rd *r, struct vd_dmsg_req *q, bool *oom)
{
    q->dim = get_count(r, q->kind == VD_DMSG_VERIFY ? 0 : 1, VD_DMSG_MAX_DIM, 4);
    float *v = alloc_n(r, q->dim, sizeof *v, oom);
    for (uint32_t i = 0; v && i < q->dim; i++)
        v[i] = get_f32(r);
    q->query = v;
    get_filter(r, q);
}

int vd_dmsg_req_decode(const uint8_t *buf, size_t len, struct vd_dmsg_req *out)
{
    memset(out, 0, sizeof *out);
    struct rd r = {buf, len, false};
    bool oom = false;
    if (get_u8(&r) != VD_DMSG_VERSION)
        return VD_ECORRUPT;
    out->kind = get_u8(&r);
    out->attempt = get_u32(&r);
    out->incarnation = get_u64(&r);
    out->ring_version = get_u64(&r);
    uint8_t nl = get_u8(&r);
    const uint8_t *name = take(&r, nl);
    if (!name || nl == 0)
        return VD_ECORRUPT;
    memcpy(out->coll, name, nl);
    out->coll[nl] = 0;
    if (memchr(out->coll, 0, nl))
        return VD_ECORRUPT;
    uint8_t il = get_u8(&r);
    const uint8_t *rid = take(&r, il);
    if (r.bad || il > VD_REQID_MAX || (il && !vd_reqid_valid((const char *)rid, il)))
        return VD_ECORRUPT;
    memcpy(out->rid, rid, il);
    out->rid[il] = 0;
    switch (out->kind) {
    case VD_DMSG_WRITE: {
        out->n_recs = get_count(&r, 1, VD_DMSG_MAX_ITEMS, 4);
        struct vd_dmsg_blob *recs = alloc_n(&r, out->n_recs, sizeof *recs, &oom);
        out->recs = recs;
        for (uint32_t i = 0; recs && i < out->n_recs && !r.bad; i++) {
            recs[i].len = get_u32(&r);
            recs[i].p = take(&r, recs[i].len);
            struct vd_record rec;
            struct vd_rvec vecs[VD_RECORD_MAX_VECTORS];
            if (recs[i].p && vd_record_decode(recs[i].p, recs[i].len, &rec, vecs))
                r.bad = true;
        }
        break;
    }
    case VD_DMSG_READ:
    case VD_DMSG_VERIFY: {
        out->n_ids = get_count(&r, 1, VD_DMSG_MAX_ITEMS, 1 + 9);
        struct vd_pid *ids = alloc_n(&r, out->n_ids, sizeof *ids, &oom);
        out->ids = ids;
        for (uint32_t i = 0; ids && i < out->n_ids; i++)
            get_key(&r, &ids[i]);
        if (out->kind == VD_DMSG_READ)
            out->with_record = get_bool(&r);
        else
            get_query_filter(&r, out, &oom);
        break;
    }
    case VD_DMSG_SEARCH: {
        out->k = get_u32(&r);
        if (out->k < 1 || out->k > VD_DMSG_MAX_ITEMS)
            r.bad = true;
        out->ef = get_u32(&r);
        out->exact = get_bool(&r);
        uint8_t quant = get_u8(&r);
        if (quant > 3)
            r.bad = true;
        out->quant_ignore = quant & 1;
        out->quant_no_rescore = quant & 2;
        out->oversampling = get_f32(&r);
        if (!oversampling_ok(out->oversampling))
            r.bad = true;
        get_arcs(&r, out, &oom);
        get_query_filter(&r, out, &oom);
        break;
    }
    case VD_DMSG_SCROLL: {
        out->k = get_u32(&r);
        if (out->k < 1 || out->k > VD_DMSG_MAX_ITEMS)
            r.bad = true;
        out->has_from = get_bool(&r);
        if (out->has_from)
            get_key(&r, &out->from);
        get_arcs(&r, out, &oom);
        get_filter(&r, out);
        break;
    }
    case VD_DMSG_TREE:
        out->range[0] = get_u64(&r);
        out->range[1] = get_u64(&r);
        out->depth = get_u8(&r);
        if (!depth_ok(out->depth))
            r.bad = true;
        out->with_leaves = get_bool(&r);
        break;
    case VD_DMSG_LEAF:
        out->range[0] = get_u64(&r);
        out->range[1] = get_u64(&r);
        out->k = get_u32(&r);
        if (out->k < 1 || out->k > VD_DMSG_MAX_ITEMS)
            r.bad = true;
        break;
    default:
        return VD_ECORRUPT;
    }
    return finish(&r, oom);
}

void vd_dmsg_req_free(struct vd_dmsg_req *r)
{
    free((void *)r->recs);
    free((void *)r->ids);
    free((void *)r->arcs);
    free((void *)r->query);
    r->recs = NULL;
    r->ids = NULL;
    r->arcs = NULL;
    r->query = NULL;
}

int vd_dmsg_reply_decode(const uint8_t *buf, size_t len, struct vd_dmsg_reply *out)
{
    memset(out, 0, sizeof *out);
    struct rd r = {buf, len, false};
    bool oom = false;
    if (get_u8(&r) != VD_DMSG_VERSION)
        return VD_ECORRUPT;
    out->kind = get_u8(&r);
    out->status = get_u8(&r);
    out->attempt = get_u32(&r);
    out->ring_version = get_u64(&r);
    if (r.bad || out->kind < VD_DMSG_WRITE || out->kind > VD_DMSG_KIND_LAST ||
        out->status < VD_DMSG_OK || out->status > VD_DMSG_ERROR)
        return VD_ECORRUPT;
    if (out->status == VD_DMSG_ERROR) {
        out->msg_len = get_u16(&r);
        out->msg = (const char *)take(&r, out->msg_len);
    } else if (out->status == VD_DMSG_OK && out->kind == VD_DMSG_TREE) {
        out->tree_count = get_u64(&r);
        out->tree_root = get_u64(&r);
        out->depth = get_u8(&r);
        out->n_leaves = get_u32(&r);
        if (!depth_ok(out->depth) || !n_leaves_ok(out->depth, out->n_leaves) ||
            (size_t)out->n_leaves * 8 > r.n)
            r.bad = true;
        uint64_t *lv = alloc_n(&r, out->n_leaves, sizeof *lv, &oom);
        for (uint32_t i = 0; lv && i < out->n_leaves; i++)
            lv[i] = get_u64(&r);
        out->leaves = lv;
    } else if (out->status == VD_DMSG_OK) {
        if (out->kind == VD_DMSG_SEARCH || out->kind == VD_DMSG_SCROLL ||
            out->kind == VD_DMSG_LEAF)
            out->complete = get_bool(&r);
        /* the fewest bytes an item of each kind takes (TREE has none) */
        static const size_t least[] = {0, 1, 17 + 4, 1 + 9 + 16 + 4, 17 + 1 + 4, 1 + 9 + 16 + 4,
                                       0, 1 + 9 + 17};
        uint32_t n = out->n_items = get_count(&r, 0, VD_DMSG_MAX_ITEMS, least[out->kind]);
        switch (out->kind) {
        case VD_DMSG_WRITE: {
            const uint8_t *res = take(&r, n);
            for (uint32_t i = 0; res && i < n; i++)
                if (res[i] != VD_DMSG_HELD)
                    r.bad = true;
            out->results = res;
            break;
        }
        case VD_DMSG_READ: {
            struct vd_dmsg_read_item *it = alloc_n(&r, n, sizeof *it, &oom);
            out->reads = it;
            for (uint32_t i = 0; it && i < n && !r.bad; i++) {
                get_copy(&r, &it[i].copy);
                it[i].rec.len = get_u32(&r);
                it[i].rec.p = take(&r, it[i].rec.len);
                if (it[i].rec.len && !it[i].copy.present)
                    r.bad = true; /* a record only with a copy (a tombstone's too) */
            }
            break;
        }
        case VD_DMSG_SEARCH:
        case VD_DMSG_SCROLL: {
            struct vd_coord_cand *c = alloc_n(&r, n, sizeof *c, &oom);
            out->cands = c;
            for (uint32_t i = 0; c && i < n; i++) {
                get_key(&r, &c[i].id);
                c[i].version.hlc = get_u64(&r);
                c[i].version.node = get_u64(&r);
                c[i].score = get_f32(&r);
            }
            break;
        }
        case VD_DMSG_LEAF: {
            struct vd_dmsg_leaf_item *it = alloc_n(&r, n, sizeof *it, &oom);
            out->listing = it;
            for (uint32_t i = 0; it && i < n; i++) {
                get_key(&r, &it[i].id);
                get_copy(&r, &it[i].copy);
                if (!it[i].copy.present)
                    r.bad = true;
            }
            break;
        }
        default: {
            struct vd_dmsg_verify_item *v = alloc_n(&r, n, sizeof *v, &oom);
            out->verifies = v;
            for (uint32_t i = 0; v && i < n; i++) {
                get_copy(&r, &v[i].copy);
                v[i].match = get_bool(&r);
                v[i].score = get_f32(&r);
            }
        }
        }
    }
    return finish(&r, oom);
}

void vd_dmsg_reply_free(struct vd_dmsg_reply *r)
{
    free((void *)r->reads);
    free((void *)r->cands);
    free((void *)r->verifies);
    free((void *)r->listing);
    free((void *)r->leaves);
    r->reads = NULL;
    r->cands = NULL;
    r->verifies = NULL;
    r->listing = NULL;
    r->leaves = NULL;
}
