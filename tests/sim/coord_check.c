/*
 * Checker of sim_coord; see coord_check.h. Each invariant is checked when the state it speaks
 * of changes (a replica's copy, an answer), which after every step is the same as checking the
 * whole state, at a fraction of the cost.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord_check.h"
#include "sim_common.h"

char chk_violation[512];
uint64_t chk_checks;

struct wr {
    unsigned key;
    struct vd_version v;
    struct chk_rec rec;
    unsigned w;
    bool acked;
    uint64_t acked_at;
};

struct rd {
    uint32_t id;
    unsigned key, r;
    struct vd_version floor2, floor3; /* I2 and I3 floors at the start */
    bool has2, has3;
};

struct sr {
    uint32_t id;
    unsigned r;
    float q[2];
    int filter;
    uint32_t offset, limit;
    uint64_t acks_at_start;
    struct vd_version floor[CHK_MAX_KEYS];
    bool has[CHK_MAX_KEYS];
};

static struct {
    unsigned n_nodes, n_keys, rf;
    uint64_t max_offset;
    bool within;
    uint64_t replicas[CHK_MAX_KEYS][VD_COORD_MAX_RF];
    unsigned n_rep[CHK_MAX_KEYS];
    struct wr *w;
    size_t n_w, cap_w;
    struct chk_copy store[CHK_MAX_NODES + 1][CHK_MAX_KEYS]; /* durable copies, by node id */
    struct vd_version max_durable[CHK_MAX_KEYS];
    bool any_durable[CHK_MAX_KEYS];
    struct vd_version quorum_read[CHK_MAX_KEYS]; /* newest returned by an ended quorum read */
    bool has_quorum_read[CHK_MAX_KEYS];
    struct rd *rd;
    size_t n_rd, cap_rd;
    struct sr *sr;
    size_t n_sr, cap_sr;
    uint64_t acks;
} C;

static void violation(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void violation(const char *fmt, ...)
{
    if (chk_violation[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(chk_violation, sizeof(chk_violation), fmt, ap);
    va_end(ap);
}

#define V(v) (v).hlc >> 16, (v).hlc & 0xffff, (v).node

void chk_reset(unsigned n_nodes, unsigned n_keys, unsigned rf, uint64_t max_offset,
               bool clocks_within, const struct vd_coord_ring *ring)
{
    struct wr *w = C.w;
    struct rd *rd = C.rd;
    struct sr *sr = C.sr;
    size_t cw = C.cap_w, cr = C.cap_rd, cs = C.cap_sr;
    memset(&C, 0, sizeof(C));
    C.w = w;
    C.rd = rd;
    C.sr = sr;
    C.cap_w = cw;
    C.cap_rd = cr;
    C.cap_sr = cs;
    C.n_nodes = n_nodes;
    C.n_keys = n_keys;
    C.rf = rf;
    C.max_offset = max_offset;
    C.within = clocks_within;
    for (unsigned k = 0; k < n_keys; k++) {
        struct vd_pid id = {.type = VD_PID_NUM, .u.num = k + 1};
        C.n_rep[k] = (unsigned)vd_coord_ring_replicas(ring, vd_pid_hash(&id), rf, C.replicas[k]);
    }
    chk_violation[0] = 0;
}

void chk_free(void)
{
    free(C.w);
    free(C.rd);
    free(C.sr);
    memset(&C, 0, sizeof(C));
}

static struct wr *find_write(unsigned key, struct vd_version v)
{
    for (size_t i = 0; i < C.n_w; i++)
        if (C.w[i].key == key && !vd_version_cmp(C.w[i].v, v))
            return &C.w[i];
    return NULL;
}

/* Newest version of key among writes acknowledged before now with w + r > rf (or any w when r
 * is 0), for I2 and I5. */
static bool acked_floor(unsigned key, unsigned r, struct vd_version *out)
{
    bool any = false;
    for (size_t i = 0; i < C.n_w; i++) {
        const struct wr *w = &C.w[i];
        if (w->key != key || !w->acked || (r && w->w + r <= C.rf))
            continue;
        if (!any || vd_version_cmp(w->v, *out) > 0)
            *out = w->v;
        any = true;
    }
    return any;
}

void chk_write_begin(uint32_t wid, unsigned key, struct vd_version v, const struct chk_rec *rec,
                     unsigned w, uint64_t now)
{
    C.w = sim_grow(C.w, &C.cap_w, (size_t)wid + 1, sizeof(*C.w));
    while (C.n_w <= wid)
        memset(&C.w[C.n_w++], 0, sizeof(*C.w));
    /* Two writes never share a version: one (key, HLC, node) names one write's bytes (I4). */
    chk_checks++;
    if (find_write(key, v))
        violation("I4: two writes of key %u share version %" PRIu64 ".%" PRIu64 "@%" PRIu64, key,
                  V(v));
    C.w[wid] = (struct wr){key, v, *rec, w, false, 0};
    /* I7: with clocks within max-offset, a write stamped more than max-offset after another
     * write's acknowledgement gets the higher version. */
    if (!C.within)
        return;
    for (size_t i = 0; i < C.n_w; i++) {
        const struct wr *o = &C.w[i];
        if (i == wid || o->key != key || !o->acked || o->acked_at + C.max_offset >= now)
            continue;
        chk_checks++;
        if (vd_version_cmp(v, o->v) <= 0)
            violation("I7: write %u of key %u stamped %" PRIu64 ".%" PRIu64 "@%" PRIu64
                      " at %" PRIu64 " ms is not newer than write %zu acknowledged at %" PRIu64
                      " ms (%" PRIu64 ".%" PRIu64 "@%" PRIu64 ")",
                      wid, key, V(v), now, i, o->acked_at, V(o->v));
    }
}

void chk_write_end(uint32_t wid, bool acked, uint64_t now)
{
    struct wr *w = &C.w[wid];
    if (!acked)
        return;
    w->acked = true;
    w->acked_at = now;
    C.acks++;
    /* I1: W distinct replicas hold it (or a newer version, which supersedes it) durably. */
    unsigned holding = 0;
    for (unsigned i = 0; i < C.n_rep[w->key]; i++) {
        const struct chk_copy *c = &C.store[C.replicas[w->key][i]][w->key];
        holding += c->present && vd_version_cmp(c->v, w->v) >= 0;
    }
    chk_checks++;
    if (holding < w->w)
        violation("I1: write %u of key %u acknowledged with W=%u but %u replicas hold it durably",
                  wid, w->key, w->w, holding);
}

/* I4 for one copy: the bytes of the write that made its version. */
static void check_copy(const char *where, unsigned key, const struct chk_copy *c)
{
    if (!c->present)
        return;
    chk_checks++;
    const struct wr *w = find_write(key, c->v);
    if (!w)
        violation("I4: %s holds key %u at %" PRIu64 ".%" PRIu64 "@%" PRIu64
                  ", a version no write made",
                  where, key, V(c->v));
    else if ((size_t)(w - C.w) != c->wid)
        violation("I4: %s holds key %u at %" PRIu64 ".%" PRIu64 "@%" PRIu64
                  " with the bytes of write %u, not of write %zu",
                  where, key, V(c->v), c->wid, (size_t)(w - C.w));
}

void chk_apply(unsigned node, unsigned key, const struct chk_copy *c)
{
    char where[32];
    snprintf(where, sizeof(where), "node %u", node);
    check_copy(where, key, c);
    struct chk_copy *s = &C.store[node][key];
    /* Replicas keep the newer by the real rule; the model does the same. */
    if (!s->present || vd_version_cmp(c->v, s->v) > 0)
        *s = *c;
    if (!C.any_durable[key] || vd_version_cmp(c->v, C.max_durable[key]) > 0)
        C.max_durable[key] = c->v;
    C.any_durable[key] = true;
}

void chk_read_begin(uint32_t rid, unsigned key, unsigned r, uint64_t now)
{
    C.rd = sim_grow(C.rd, &C.cap_rd, C.n_rd + 1, sizeof(*C.rd));
    struct rd *x = &C.rd[C.n_rd++];
    memset(x, 0, sizeof(*x));
    x->id = rid;
    x->key = key;
    x->r = r;
    x->has2 = acked_floor(key, r, &x->floor2);
    if (r >= vd_coord_quorum(C.rf) && C.has_quorum_read[key]) {
        x->has3 = true;
        x->floor3 = C.quorum_read[key];
    }
}

static struct rd *find_read(uint32_t rid)
{
    for (size_t i = C.n_rd; i-- > 0;)
        if (C.rd[i].id == rid)
            return &C.rd[i];
    return NULL;
}

void chk_read_end(uint32_t rid, const struct chk_copy *c, uint64_t now)
{
    struct rd *x = find_read(rid);
    if (!x)
        return;
    check_copy("a read's answer", x->key, c);
    struct vd_version got = c->present ? c->v : (struct vd_version){0, 0};
    chk_checks++;
    if (x->has2 && (!c->present || vd_version_cmp(got, x->floor2) < 0))
        violation("I2: read %u of key %u (R=%u) returned %" PRIu64 ".%" PRIu64 "@%" PRIu64
                  ", older than %" PRIu64 ".%" PRIu64 "@%" PRIu64 " acknowledged before it began",
                  rid, x->key, x->r, V(got), V(x->floor2));
    chk_checks++;
    if (x->has3 && (!c->present || vd_version_cmp(got, x->floor3) < 0))
        violation("I3: quorum read %u of key %u returned %" PRIu64 ".%" PRIu64 "@%" PRIu64
                  ", older than %" PRIu64 ".%" PRIu64 "@%" PRIu64
                  " returned by a quorum read that ended before it began",
                  rid, x->key, V(got), V(x->floor3));
    if (x->r >= vd_coord_quorum(C.rf) && c->present &&
        (!C.has_quorum_read[x->key] || vd_version_cmp(got, C.quorum_read[x->key]) > 0)) {
        C.quorum_read[x->key] = got;
        C.has_quorum_read[x->key] = true;
    }
    *x = C.rd[--C.n_rd];
}

void chk_search_begin(uint32_t sid, unsigned r, const float q[2], int filter, uint32_t offset,
                      uint32_t limit, uint64_t now)
{
    C.sr = sim_grow(C.sr, &C.cap_sr, C.n_sr + 1, sizeof(*C.sr));
    struct sr *x = &C.sr[C.n_sr++];
    memset(x, 0, sizeof(*x));
    x->id = sid;
    x->r = r;
    x->q[0] = q[0];
    x->q[1] = q[1];
    x->filter = filter;
    x->offset = offset;
    x->limit = limit;
    x->acks_at_start = C.acks;
    for (unsigned k = 0; k < C.n_keys; k++)
        x->has[k] = acked_floor(k, r, &x->floor[k]);
}

static bool matches(const struct sr *x, const struct chk_rec *rec)
{
    return !rec->tomb && (x->filter < 0 || rec->tag == x->filter);
}

struct bf {
    unsigned key;
    float score;
};

static int bf_cmp(const void *pa, const void *pb)
{
    const struct bf *a = pa, *b = pb;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    return a->key < b->key ? -1 : a->key > b->key;
}

void chk_search_end(uint32_t sid, const struct vd_coord_item *items, const unsigned *keys, size_t n,
                    bool complete, uint64_t now)
{
    struct sr *x = NULL;
    for (size_t i = 0; i < C.n_sr; i++)
        if (C.sr[i].id == sid)
            x = &C.sr[i];
    if (!x)
        return;
    /* I5: every item is a live, matching version no older than what was acknowledged before
     * the search began, scored against that version. */
    for (size_t i = 0; i < n; i++) {
        unsigned k = keys[i];
        chk_checks++;
        const struct wr *w = find_write(k, items[i].version);
        if (!w) {
            violation("I5: search %u returned key %u at a version no write made", sid, k);
            break;
        }
        if (!matches(x, &w->rec))
            violation("I5: search %u returned key %u at %" PRIu64 ".%" PRIu64 "@%" PRIu64 ", a %s",
                      sid, k, V(items[i].version), w->rec.tomb ? "tombstone" : "filter non-match");
        else if (chk_score(x->q, w->rec.vec) != items[i].score)
            violation("I5: search %u scored key %u %g, its version scores %g", sid, k,
                      (double)items[i].score, (double)chk_score(x->q, w->rec.vec));
        else if (x->has[k] && vd_version_cmp(items[i].version, x->floor[k]) < 0)
            violation("I5: search %u (R=%u) returned key %u at %" PRIu64 ".%" PRIu64 "@%" PRIu64
                      ", older than %" PRIu64 ".%" PRIu64 "@%" PRIu64
                      " acknowledged before it began",
                      sid, x->r, k, V(items[i].version), V(x->floor[k]));
    }
    /* With no write acknowledged meanwhile and every key's newest durable version one that R
     * is sure to see, the answer equals a brute force over those versions. */
    bool quiet = complete && C.acks == x->acks_at_start;
    struct bf exp[CHK_MAX_KEYS];
    size_t ne = 0;
    for (unsigned k = 0; k < C.n_keys && quiet; k++) {
        if (!C.any_durable[k])
            continue;
        struct vd_version fl;
        if (!acked_floor(k, x->r, &fl) || vd_version_cmp(fl, C.max_durable[k]) != 0) {
            quiet = false;
            break;
        }
        const struct wr *w = find_write(k, fl);
        if (w && matches(x, &w->rec))
            exp[ne++] = (struct bf){k, chk_score(x->q, w->rec.vec)};
    }
    if (quiet) {
        qsort(exp, ne, sizeof(exp[0]), bf_cmp);
        size_t from = x->offset < ne ? x->offset : ne;
        size_t want = ne - from < x->limit ? ne - from : x->limit;
        chk_checks++;
        bool same = want == n;
        for (size_t i = 0; same && i < n; i++)
            same = exp[from + i].key == keys[i] && exp[from + i].score == items[i].score;
        if (!same)
            violation("I5: search %u with no writes running returned %zu items, not the %zu of "
                      "a brute force (first: key %u, expected key %u)",
                      sid, n, want, n ? keys[0] : 0, want ? exp[from].key : 0);
    }
    *x = C.sr[--C.n_sr];
}

void chk_final(void)
{
    /* I6: every replica holds the highest version ever made durable. */
    for (unsigned k = 0; k < C.n_keys; k++) {
        if (!C.any_durable[k])
            continue;
        for (unsigned i = 0; i < C.n_rep[k]; i++) {
            const struct chk_copy *c = &C.store[C.replicas[k][i]][k];
            chk_checks++;
            if (!c->present || vd_version_cmp(c->v, C.max_durable[k]) != 0)
                violation("I6: after healing, node %" PRIu64 " holds key %u at %" PRIu64 ".%" PRIu64
                          "@%" PRIu64 ", not the newest durable %" PRIu64 ".%" PRIu64 "@%" PRIu64,
                          C.replicas[k][i], k, V(c->v), V(C.max_durable[k]));
        }
    }
}
