/*
 * The coordinator side of searches, scroll and count over the ring (contract in
 * include/vectord/cluster.h, DESIGN §6).
 *
 * A request from another thread is queued to the loop, where it becomes one search operation of
 * the pure coordinator core (vectord/coord.h) over the loop's ring. The core splits the ring into
 * ranges (arcs sharing one replica set) and asks for:
 *   SEND     phase 1 of one range from one replica: a SEARCH (top k by score) or a SCROLL (first
 *            k ids from the page start) data message naming the range's arcs;
 *   VERIFY   phase 2: what a replica holds of a candidate (version, tombstone, filter match,
 *            score), batched per (replica, attempt) into one VERIFY message;
 *   REPAIR   a stale replica seen on the way: the id is read again at every replica, which the
 *            read path repairs (in the background: the answer does not wait for it);
 *   REPLY    the verified top. A search then applies exclude, score_threshold, offset and limit
 *            and reads the records of the result when a payload or a vector is asked for.
 * A scroll is the same operation with every score 0: the core's order (score, then id) is then
 * id order, and its floor rule (a replica's list is trusted down to its last id) keeps a page
 * whole. It asks for limit + 1 ids, the last one being where the next page starts. A count
 * scrolls through every matching id in pages and counts the verified ones.
 *
 * Messages go to peers over the data transport and to this node on libuv's thread pool, where
 * the replica side (replica.c) serves them as it serves a peer.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dmsg.h"
#include "node_int.h"
#include "vectord/db.h"
#include "vectord/filter.h"
#include "vectord/record.h"

/* A range slower than this on one replica asks one more (a search costs a replica more than a
 * read: a longer delay than a read's). */
#define SEARCH_SPEC_MS 50
#define SEARCH_RETRY_MS 50 /* a replica behind on the ring is asked again after this */
#define COUNT_PAGE 4096    /* ids per page when counting */

enum sreq_kind { SR_SEARCH = 1, SR_SCROLL, SR_COUNT };

struct sreq {
    struct sreq *next;
    struct vd_cluster *c;
    uint8_t kind; /* enum sreq_kind */
    char coll[256];
    char rid[VD_REQID_MAX + 1]; /* the client request's id, sent to the replicas */
    uint64_t incarnation;
    unsigned need, rf;
    uint32_t timeout_ms;
    uint64_t deadline_ms; /* monotonic: a count's pages share it */
    enum vd_metric metric;
    /* the search */
    float *query;
    uint32_t dim, ef, limit, offset;
    bool exact, quant_ignore, quant_no_rescore, has_threshold, has_exclude;
    float oversampling, threshold;
    struct vd_pid exclude;
    char *filter; /* JSON text or NULL */
    uint32_t filter_len;
    bool with_payload, with_vector;
    /* scroll and count: where the page starts */
    bool has_from;
    struct vd_pid from;
    uint64_t counted;
    /* the operation of the current page; messages of an older one (gen) are ignored */
    struct vd_coord_op *op;
    uint32_t gen;
    bool need_ring, answered, driving, again, fetching;
    unsigned inflight;
    /* after the operation's answer */
    struct vd_db_record *recs;
    size_t n_recs;
    bool has_next;
    struct vd_pid next_id;
    vd_cluster_records_fn search_done;
    vd_cluster_scroll_fn scroll_done;
    vd_cluster_count_fn count_done;
    void *ctx;
};

/* One data message in flight. */
struct ssend {
    struct vd_cluster *c;
    struct sreq *r;
    uint32_t gen;
    uint64_t node;
    uint32_t attempt;
    uint8_t kind;     /* of the message */
    uint32_t range;   /* SEARCH, SCROLL */
    uint32_t *ranges; /* VERIFY: the range of each id */
    struct vd_pid *ids;
    uint32_t n;
};

static void sreq_drive(struct vd_cluster *c, struct sreq *r);

/* ---- the end of a request -------------------------------------------------------------------- */

static void sreq_free(struct sreq *r)
{
    vd_coord_op_free(r->op);
    vd_db_records_free(r->recs, r->n_recs);
    free(r->query);
    free(r->filter);
    free(r);
}

static void sreq_unlink(struct vd_cluster *c, struct sreq *r)
{
    for (struct sreq **p = &c->sreqs; *p; p = &(*p)->next)
        if (*p == r) {
            *p = r->next;
            return;
        }
}

/* Answers the client once: status 0 with what r holds, or the error. */
static void sreq_answer(struct sreq *r, int status, const struct vd_err *e)
{
    if (r->answered)
        return;
    r->answered = true;
    vd__cluster_request_end(r->c, VD__REQ_SEARCH, status, vd__cluster_now_ms() >= r->deadline_ms,
                            r->coll, r->rid, status ? e : NULL);
    vd_reqid_set(r->rid); /* a request the completion starts carries it too */
    const struct vd_err *err = status ? e : NULL;
    switch (r->kind) {
    case SR_SEARCH:
        r->search_done(status, err, status ? NULL : r->recs, status ? 0 : r->n_recs, r->ctx);
        break;
    case SR_SCROLL:
        r->scroll_done(status, err, status ? NULL : r->recs, status ? 0 : r->n_recs,
                       !status && r->has_next ? &r->next_id : NULL, r->ctx);
        break;
    default:
        r->count_done(status, err, status ? 0 : r->counted, r->ctx);
    }
    vd_reqid_set(NULL);
}

static void sreq_fail(struct sreq *r, int code, const char *msg)
{
    struct vd_err e;
    vd_errf(&e, code, "%s", msg);
    sreq_answer(r, code, &e);
}

/* Frees r once nothing more can happen to it. */
static void sreq_maybe_free(struct vd_cluster *c, struct sreq *r)
{
    if (r->answered && r->inflight == 0 && !r->driving && !r->fetching &&
        (!r->op || vd_coord_done(r->op))) {
        sreq_unlink(c, r);
        sreq_free(r);
    }
}

/* ---- replies --------------------------------------------------------------------------------- */

static void ssend_free(struct ssend *s)
{
    free(s->ranges);
    free(s->ids);
    free(s);
}

/* Feeds the core what a message's reply says (rp NULL: none; status says why). */
static void ssend_settle(struct ssend *s, const struct vd_dmsg_reply *rp, uint8_t status)
{
    struct sreq *r = s->r;
    if (s->gen != r->gen || !r->op)
        return; /* an earlier page's message */
    if (rp && rp->status == VD_DMSG_WRONG_RING)
        status = VD_COORD_WRONG_RING;
    else if (rp && rp->status == VD_DMSG_GONE)
        status = VD_COORD_GONE; /* deleted while the request was on its way: a 404 */
    else if (rp && rp->status != VD_DMSG_OK)
        status = VD_COORD_REFUSED;
    else if (rp && s->kind == VD_DMSG_VERIFY && rp->n_items != s->n)
        status = VD_COORD_REFUSED; /* a reply that does not match the request */
    if (rp && rp->status == VD_DMSG_ERROR)
        vd_log_warn("cluster: node %llu refused a %s of collection '%s': %.*s",
                    (unsigned long long)s->node,
                    s->kind == VD_DMSG_VERIFY   ? "verification"
                    : s->kind == VD_DMSG_SCROLL ? "scroll"
                                                : "search",
                    r->coll, (int)rp->msg_len, rp->msg);
    vd_coord_tick(r->op, vd__cluster_now_ms());
    if (s->kind != VD_DMSG_VERIFY) {
        struct vd_coord_reply cr = {.type = VD_COORD_R_SEARCH,
                                    .status = status,
                                    .from = s->node,
                                    .attempt = s->attempt,
                                    .ring_version = rp ? rp->ring_version : 0,
                                    .range = s->range};
        if (status == VD_COORD_OK) {
            cr.cands = rp->cands;
            cr.n_cands = rp->n_items;
            cr.complete = rp->complete;
        }
        if (vd_coord_step(r->op, &cr) == VD_EINVAL)
            vd_log_warn("cluster: node %llu answered a search with a list the request did not "
                        "ask for",
                        (unsigned long long)s->node);
    } else {
        for (uint32_t i = 0; i < s->n; i++) {
            struct vd_coord_reply cr = {.type = VD_COORD_R_VERIFY,
                                        .status = status,
                                        .from = s->node,
                                        .attempt = s->attempt,
                                        .ring_version = rp ? rp->ring_version : 0,
                                        .range = s->ranges[i],
                                        .id = s->ids[i]};
            if (status == VD_COORD_OK) {
                cr.copy = rp->verifies[i].copy;
                cr.match = rp->verifies[i].match;
                cr.score = rp->verifies[i].score;
            }
            vd_coord_step(r->op, &cr);
        }
    }
    sreq_drive(s->c, r);
}

static void ssend_end(struct ssend *s)
{
    struct vd_cluster *c = s->c;
    struct sreq *r = s->r;
    ssend_free(s);
    r->inflight--;
    sreq_maybe_free(c, r);
}

/* A message's end (node_dcall.c, loop thread). */
static void on_dcall(void *arg, enum vd_data_outcome outcome, const uint8_t *reply, size_t len)
{
    struct ssend *s = arg;
    if (outcome == VD_DATA_SHUTDOWN) {
        ssend_free(s); /* the requests were failed and freed by vd__cluster_search_stop */
        return;
    }
    struct vd_dmsg_reply rp;
    uint8_t status;
    bool got = vd__dcall_reply(s->node, outcome, reply, len, s->kind, s->attempt, &rp, &status);
    ssend_settle(s, got ? &rp : NULL, status);
    vd_dmsg_reply_free(&rp);
    ssend_end(s);
}

/* ---- messages -------------------------------------------------------------------------------- */

/* Sends s (its request q encoded) to its node; on any failure the core hears a refusal. */
static void ssend_start(struct vd_cluster *c, struct ssend *s, const struct vd_dmsg_req *q)
{
    struct sreq *r = s->r;
    struct vd_buf b;
    vd_buf_init(&b);
    r->inflight++;
    if (vd_dmsg_req_encode(q, &b) || !vd_buf_ok(&b)) {
        vd_buf_release(&b);
        goto fail_settle;
    }
    size_t len;
    uint8_t *body = (uint8_t *)vd_buf_steal(&b, &len);
    struct vd_data_hdr h = {r->incarnation, q->ring_version, vd_wall_ms() + r->timeout_ms};
    if (vd__cluster_dcall(c, s->node, &h, body, len, on_dcall, s) == 0)
        return;
fail_settle:
    ssend_settle(s, NULL, VD_COORD_REFUSED);
    ssend_end(s);
}

static struct ssend *ssend_new(struct vd_cluster *c, struct sreq *r, uint64_t node,
                               uint32_t attempt, uint8_t kind)
{
    struct ssend *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    *s = (struct ssend){
        .c = c, .r = r, .gen = r->gen, .node = node, .attempt = attempt, .kind = kind};
    return s;
}

static void req_base(const struct sreq *r, uint8_t kind, uint32_t attempt, uint64_t ring_version,
                     struct vd_dmsg_req *q)
{
    *q = (struct vd_dmsg_req){.kind = kind,
                              .attempt = attempt,
                              .incarnation = r->incarnation,
                              .ring_version = ring_version,
                              .filter = r->filter,
                              .filter_len = r->filter_len};
    snprintf(q->coll, sizeof q->coll, "%s", r->coll);
    memcpy(q->rid, r->rid, sizeof q->rid);
}

/* Phase 1 of range a->range from a->node. */
static void send_list(struct vd_cluster *c, struct sreq *r, const struct vd_coord_action *a)
{
    uint8_t kind = r->kind == SR_SEARCH ? VD_DMSG_SEARCH : VD_DMSG_SCROLL;
    struct ssend *s = ssend_new(c, r, a->node, a->attempt, kind);
    size_t na = vd_coord_search_arcs(r->op, a->range, NULL, 0);
    uint64_t(*arcs)[2] = calloc(na ? na : 1, sizeof *arcs);
    if (!s || !arcs) {
        free(s);
        free(arcs);
        /* the range's deadline fails the search with the numbers */
        return;
    }
    s->range = a->range;
    vd_coord_search_arcs(r->op, a->range, arcs, na);
    struct vd_dmsg_req q;
    req_base(r, kind, a->attempt, a->ring_version, &q);
    q.k = a->k > VD_DMSG_MAX_ITEMS ? VD_DMSG_MAX_ITEMS : a->k;
    q.arcs = (const uint64_t(*)[2])arcs;
    q.n_arcs = (uint32_t)na;
    if (kind == VD_DMSG_SEARCH) {
        q.ef = r->ef;
        q.exact = r->exact;
        q.quant_ignore = r->quant_ignore;
        q.quant_no_rescore = r->quant_no_rescore;
        q.oversampling = r->oversampling;
        q.query = r->query;
        q.dim = r->dim;
    } else {
        q.has_from = r->has_from;
        q.from = r->from;
    }
    ssend_start(c, s, &q);
    free(arcs);
}

/* Phase 2: the verify actions acts[0..n) of one (node, attempt), in one message. */
static void send_verify(struct vd_cluster *c, struct sreq *r, const struct vd_coord_action *acts,
                        size_t n, uint64_t ring_version)
{
    struct ssend *s = ssend_new(c, r, acts[0].node, acts[0].attempt, VD_DMSG_VERIFY);
    if (!s || !(s->ids = malloc(n * sizeof *s->ids)) ||
        !(s->ranges = malloc(n * sizeof *s->ranges))) {
        if (s)
            ssend_free(s);
        return;
    }
    s->n = (uint32_t)n;
    for (size_t i = 0; i < n; i++) {
        s->ids[i] = acts[i].id;
        s->ranges[i] = acts[i].range;
    }
    struct vd_dmsg_req q;
    req_base(r, VD_DMSG_VERIFY, acts[0].attempt, ring_version, &q);
    q.ids = s->ids;
    q.n_ids = s->n;
    if (r->kind == SR_SEARCH) {
        q.query = r->query;
        q.dim = r->dim;
    }
    ssend_start(c, s, &q);
}

static void repair_done(int status, const struct vd_err *err, const struct vd_cluster_rec *recs,
                        size_t n, void *ctx)
{
    (void)status, (void)err, (void)recs, (void)n, (void)ctx;
}

/* Stale replicas seen by the search: each id is read again at all its replicas, and the read
 * path repairs those that answer an older version. Best effort, in the background. */
static void send_repairs(struct vd_cluster *c, struct sreq *r, const struct vd_pid *ids, size_t n)
{
    struct vd_err e;
    vd_reqid_set(r->rid);
    int rc = n ? vd_cluster_read(c, r->coll, r->incarnation, ids, n, r->rf, r->timeout_ms,
                                 repair_done, NULL, &e)
               : 0;
    vd_reqid_set(NULL);
    if (rc)
        vd_log_warn("cluster: a repair of %zu points of collection '%s' was not started: %s", n,
                    r->coll, e.msg);
}

/* ---- the answer ------------------------------------------------------------------------------ */

/* A metric's score from the core's "higher is better" one. */
static float metric_score(enum vd_metric m, float hb)
{
    return m == VD_METRIC_EUCLID || m == VD_METRIC_MANHATTAN ? -hb : hb;
}

/* The records of the result read at r: the payload and vector of the version read (normally the
 * verified one; a write that landed since gives its own). A point deleted since is left out. */
static void fetch_done(int status, const struct vd_err *err, const struct vd_cluster_rec *recs,
                       size_t n, void *ctx)
{
    struct sreq *r = ctx;
    struct vd_cluster *c = r->c;
    r->fetching = false;
    if (status) {
        sreq_answer(r, status, err);
        sreq_maybe_free(c, r);
        return;
    }
    size_t k = 0;
    int rc = 0;
    for (size_t i = 0; i < n && i < r->n_recs; i++) {
        struct vd_db_record *d = &r->recs[i];
        struct vd_record rec;
        struct vd_rvec vecs[VD_RECORD_MAX_VECTORS];
        if (!recs[i].p || vd_record_decode(recs[i].p, recs[i].len, &rec, vecs) || rec.tombstone)
            continue;
        struct vd_db_record o = {.id = d->id, .version = rec.version, .score = d->score};
        if (r->with_payload && rec.payload && !(o.payload = malloc(rec.payload_len + 1)))
            rc = VD_ENOMEM;
        if (o.payload) {
            memcpy(o.payload, rec.payload, rec.payload_len);
            o.payload_len = rec.payload_len;
        }
        if (r->with_vector && rec.n_vectors && vecs[0].kind == VD_RVEC_DENSE) {
            if (!(o.vec = malloc(sizeof(float) * (vecs[0].n ? vecs[0].n : 1))))
                rc = VD_ENOMEM;
            else {
                memcpy(o.vec, vecs[0].values, sizeof(float) * vecs[0].n);
                o.dim = vecs[0].n;
            }
        }
        r->recs[k++] = o; /* k <= i: the slot read was copied out above */
    }
    for (size_t i = k; i < r->n_recs; i++)
        r->recs[i] = (struct vd_db_record){0};
    r->n_recs = k;
    if (rc) {
        struct vd_err e;
        vd_errf(&e, rc, "out of memory for the records of a search");
        sreq_answer(r, rc, &e);
    } else {
        sreq_answer(r, 0, NULL);
    }
    sreq_maybe_free(c, r);
}

static int sreq_start_op(struct vd_cluster *c, struct sreq *r, struct vd_err *e);

/* The core's answer for the current page: cut it to what the client asked for, then fetch the
 * records or answer (a count goes on with the next page). */
static void sreq_result(struct vd_cluster *c, struct sreq *r)
{
    struct vd_err e = {0};
    int status = vd_coord_result(r->op, &e);
    if (status == VD_ENOTFOUND)
        vd__cluster_coll_gone(&e, r->coll);
    if (status) {
        sreq_answer(r, status, &e);
        return;
    }
    const struct vd_coord_item *items;
    size_t n;
    bool complete;
    vd_coord_search_items(r->op, &items, &n, &complete);
    if (r->kind == SR_COUNT) {
        r->counted += n > COUNT_PAGE ? COUNT_PAGE : n;
        if (n <= COUNT_PAGE) {
            sreq_answer(r, 0, NULL);
            return;
        }
        r->has_from = true;
        r->from = items[COUNT_PAGE].id;
        if (sreq_start_op(c, r, &e))
            sreq_answer(r, e.code ? e.code : VD_ENOMEM, &e);
        return;
    }
    size_t cap = r->limit;
    if (!(r->recs = calloc(cap ? cap : 1, sizeof *r->recs))) {
        sreq_fail(r, VD_ENOMEM, "out of memory for the result of a search");
        return;
    }
    float thr_hb = metric_score(r->metric, r->threshold);
    size_t skip = r->kind == SR_SEARCH ? r->offset : 0;
    for (size_t i = 0; i < n; i++) {
        const struct vd_coord_item *it = &items[i];
        if (r->has_exclude && vd_pid_eq(&it->id, &r->exclude))
            continue;
        if (r->kind == SR_SEARCH && r->has_threshold && it->score < thr_hb)
            break; /* best first: the rest score lower */
        if (skip) {
            skip--;
            continue;
        }
        if (r->n_recs == cap) {
            /* a scroll asked for one more: where the next page starts */
            r->has_next = r->kind == SR_SCROLL;
            r->next_id = it->id;
            break;
        }
        r->recs[r->n_recs++] = (struct vd_db_record){
            .id = it->id,
            .version = it->version,
            .score = r->kind == SR_SEARCH ? metric_score(r->metric, it->score) : 0.0f};
    }
    if (!(r->with_payload || r->with_vector) || r->n_recs == 0) {
        sreq_answer(r, 0, NULL);
        return;
    }
    struct vd_pid *ids = malloc(r->n_recs * sizeof *ids);
    if (!ids) {
        sreq_fail(r, VD_ENOMEM, "out of memory for the result of a search");
        return;
    }
    for (size_t i = 0; i < r->n_recs; i++)
        ids[i] = r->recs[i].id;
    r->fetching = true;
    uint64_t now = vd__cluster_now_ms();
    uint32_t left = r->deadline_ms > now ? (uint32_t)(r->deadline_ms - now) : 1;
    vd_reqid_set(r->rid);
    int rc = vd_cluster_read(c, r->coll, r->incarnation, ids, r->n_recs, r->need, left, fetch_done,
                             r, &e);
    vd_reqid_set(NULL);
    if (rc) {
        r->fetching = false;
        sreq_answer(r, e.code ? e.code : VD_ENOMEM, &e);
    }
    free(ids);
}

/* ---- driving the core ------------------------------------------------------------------------ */

static int action_order(const void *pa, const void *pb)
{
    const struct vd_coord_action *a = pa, *b = pb;
    if (a->type != b->type)
        return a->type < b->type ? -1 : 1;
    if (a->node != b->node)
        return a->node < b->node ? -1 : 1;
    return a->attempt < b->attempt ? -1 : a->attempt > b->attempt;
}

/* Carries out one batch of actions (copied out of the core). */
static void run_actions(struct vd_cluster *c, struct sreq *r, struct vd_coord_action *acts,
                        size_t n)
{
    qsort(acts, n, sizeof *acts, action_order);
    struct vd_pid *repair = NULL;
    size_t n_repair = 0;
    bool replied = false;
    uint64_t ring_version = 0;
    for (size_t i = 0; i < n; i++)
        if (acts[i].type == VD_COORD_SEND)
            ring_version = acts[i].ring_version;
    for (size_t i = 0; i < n;) {
        const struct vd_coord_action *a = &acts[i];
        size_t j = i + 1;
        switch (a->type) {
        case VD_COORD_SEND:
            send_list(c, r, a);
            break;
        case VD_COORD_VERIFY:
            while (j < n && acts[j].type == VD_COORD_VERIFY && acts[j].node == a->node &&
                   acts[j].attempt == a->attempt)
                j++;
            send_verify(c, r, a, j - i, a->ring_version ? a->ring_version : ring_version);
            break;
        case VD_COORD_REPAIR:
            if (!repair)
                repair = malloc(n * sizeof *repair);
            if (repair)
                repair[n_repair++] = a->id;
            break;
        case VD_COORD_NEED_RING:
            r->need_ring = true;
            break;
        case VD_COORD_REPLY:
            replied = true;
            break;
        default:
            break;
        }
        i = j;
    }
    send_repairs(c, r, repair, n_repair);
    free(repair);
    if (replied && !r->answered)
        sreq_result(c, r);
}

static void sreq_drive(struct vd_cluster *c, struct sreq *r)
{
    if (r->driving) {
        r->again = true;
        return;
    }
    r->driving = true;
    do {
        r->again = false;
        const struct vd_coord_action *acts;
        size_t n;
        while (r->op && vd_coord_ready(r->op, &acts, &n)) {
            struct vd_coord_action *copy = malloc((n ? n : 1) * sizeof *copy);
            if (!copy)
                break;
            memcpy(copy, acts, n * sizeof *copy);
            vd_coord_advance(r->op);
            struct vd_coord_op *op = r->op;
            run_actions(c, r, copy, n);
            free(copy);
            if (r->op != op)
                r->again = true; /* a count's next page */
        }
    } while (r->again);
    r->driving = false;
    sreq_maybe_free(c, r);
}

/* (Re)starts the operation of the current page on the loop's ring. */
static int sreq_start_op(struct vd_cluster *c, struct sreq *r, struct vd_err *e)
{
    vd_coord_op_free(r->op);
    r->op = NULL;
    r->gen++;
    struct vd_coord_ring ring;
    vd_meta_coord_ring(c->meta, &ring);
    uint64_t now = vd__cluster_now_ms();
    if (now >= r->deadline_ms)
        return vd_errf(e, VD_EUNAVAIL, "%s of collection '%s' ran out of time after %u ms",
                       r->kind == SR_COUNT ? "count" : "scroll", r->coll, r->timeout_ms);
    struct vd_coord_params p = {.rf = r->rf,
                                .need = r->need,
                                .now_ms = now,
                                .timeout_ms = r->deadline_ms - now,
                                .spec_ms = SEARCH_SPEC_MS,
                                .spec_of = vd__cluster_spec_of,
                                .spec_ctx = c,
                                .retry_ms = SEARCH_RETRY_MS,
                                .prefer = c->id,
                                .down = vd__cluster_member_down,
                                .down_ctx = c};
    /* the core keeps offset + limit; exclude, threshold and offset are applied to its answer */
    uint64_t want;
    if (r->kind == SR_SEARCH)
        want = (uint64_t)r->offset + r->limit + (r->has_exclude ? 1 : 0);
    else if (r->kind == SR_SCROLL)
        want = (uint64_t)r->limit + 1;
    else
        want = COUNT_PAGE + 1;
    if (want > VD_DMSG_MAX_ITEMS)
        want = VD_DMSG_MAX_ITEMS;
    int rc = vd_coord_search_new(&p, &ring, 0, (uint32_t)want, &r->op);
    if (rc)
        return vd_errf(e, rc == VD_ENOMEM ? VD_ENOMEM : VD_EUNAVAIL,
                       rc == VD_ENOMEM ? "out of memory" : "the ring has no members to search");
    return 0;
}

static void sreq_begin(struct vd_cluster *c, struct sreq *r)
{
    const struct vd_coll_schema *s = vd_meta_collection(c->meta, r->coll);
    if (!s || s->incarnation != r->incarnation) {
        struct vd_err e;
        vd__cluster_coll_gone(&e, r->coll);
        sreq_fail(r, VD_ENOTFOUND, e.msg);
        sreq_free(r);
        return;
    }
    if (r->kind == SR_SEARCH && r->dim != s->dim) {
        char msg[300];
        snprintf(msg, sizeof msg, "Wrong input: Vector dimension error: expected dim: %u, got %u",
                 s->dim, r->dim);
        sreq_fail(r, VD_EINVAL, msg);
        sreq_free(r);
        return;
    }
    r->metric = s->metric;
    r->rf = s->replication_factor > VD_COORD_MAX_RF ? VD_COORD_MAX_RF : s->replication_factor;
    if (r->rf == 0)
        r->rf = 1;
    if (r->need == 0)
        r->need = vd_coord_quorum(r->rf);
    if (r->need > r->rf)
        r->need = r->rf;
    if (r->timeout_ms == 0)
        r->timeout_ms = c->request_ms;
    r->deadline_ms = vd__cluster_now_ms() + r->timeout_ms;
    struct vd_err e = {0};
    if (sreq_start_op(c, r, &e)) {
        sreq_answer(r, e.code, &e);
        sreq_free(r);
        return;
    }
    r->next = c->sreqs;
    c->sreqs = r;
    sreq_drive(c, r);
}

void vd__cluster_search_events(struct vd_cluster *c)
{
    pthread_mutex_lock(&c->mu);
    struct sreq *r = c->sq_head;
    c->sq_head = NULL;
    pthread_mutex_unlock(&c->mu);
    while (r) {
        struct sreq *next = r->next;
        r->next = NULL;
        sreq_begin(c, r);
        r = next;
    }
}

void vd__cluster_search_tick(struct vd_cluster *c)
{
    uint64_t now = vd__cluster_now_ms();
    struct vd_coord_ring ring;
    vd_meta_coord_ring(c->meta, &ring);
    for (struct sreq *r = c->sreqs, *next; r; r = next) {
        next = r->next;
        if (r->op && !vd_coord_done(r->op)) {
            if (r->need_ring) {
                r->need_ring = false;
                vd_coord_reroute(r->op, &ring);
            }
            if (vd_coord_next_deadline(r->op) <= now)
                vd_coord_tick(r->op, now);
        }
        sreq_drive(c, r); /* may free r */
    }
}

void vd__cluster_search_stop(struct vd_cluster *c)
{
    pthread_mutex_lock(&c->mu);
    struct sreq *q = c->sq_head;
    c->sq_head = NULL;
    pthread_mutex_unlock(&c->mu);
    while (q) {
        struct sreq *next = q->next;
        sreq_fail(q, VD_ECLOSED, "the node is shutting down");
        sreq_free(q);
        q = next;
    }
    /* messages still out find dreqs_open false and touch none of these */
    while (c->sreqs) {
        struct sreq *r = c->sreqs;
        c->sreqs = r->next;
        sreq_fail(r, VD_ECLOSED, "the node is shutting down");
        sreq_free(r);
    }
}

/* ---- requests from other threads ------------------------------------------------------------- */

static int enqueue(struct vd_cluster *c, struct sreq *r, struct vd_err *err)
{
    pthread_mutex_lock(&c->mu);
    if (c->stopping) {
        pthread_mutex_unlock(&c->mu);
        sreq_free(r);
        return vd_errf(err, VD_ECLOSED, "the node is shutting down");
    }
    r->next = c->sq_head;
    c->sq_head = r;
    pthread_mutex_unlock(&c->mu);
    uv_async_send(&c->async);
    return 0;
}

/* A request of kind for coll with the filter checked and kept as text. */
static struct sreq *sreq_new(struct vd_cluster *c, uint8_t kind, const char *coll,
                             uint64_t incarnation, const cJSON *filter, unsigned need,
                             uint32_t timeout_ms, struct vd_err *err)
{
    if (!coll || !coll[0] || strlen(coll) >= 256) {
        vd_errf(err, VD_EINVAL, "a collection name of 1 to 255 bytes is needed");
        return NULL;
    }
    struct sreq *r = calloc(1, sizeof *r);
    if (!r) {
        vd_errf(err, VD_ENOMEM, "out of memory");
        return NULL;
    }
    r->c = c;
    r->kind = kind;
    snprintf(r->coll, sizeof r->coll, "%s", coll);
    snprintf(r->rid, sizeof r->rid, "%s", vd_reqid_current());
    r->incarnation = incarnation;
    r->need = need;
    r->timeout_ms = timeout_ms;
    if (filter && !cJSON_IsNull(filter)) {
        /* checked here so a bad filter is the caller's 400, not every replica's error */
        struct vd_filter *f = NULL;
        if (vd_filter_parse(filter, &f, err)) {
            free(r);
            return NULL;
        }
        vd_filter_free(f);
        if (!(r->filter = cJSON_PrintUnformatted(filter))) {
            free(r);
            vd_errf(err, VD_ENOMEM, "out of memory");
            return NULL;
        }
        r->filter_len = (uint32_t)strlen(r->filter);
    }
    return r;
}

int vd_cluster_search(struct vd_cluster *c, const char *coll, uint64_t incarnation,
                      const struct vd_cluster_search *q, vd_cluster_records_fn done, void *ctx,
                      struct vd_err *err)
{
    const struct vd_db_search *s = q->s;
    if (!s || !s->query || q->dim == 0 || q->dim > VD_DMSG_MAX_DIM || s->limit == 0 || !done)
        return vd_errf(err, VD_EINVAL, "a search needs a query vector and a limit of 1 or more");
    if ((uint64_t)s->offset + s->limit >= VD_DMSG_MAX_ITEMS)
        return vd_errf(err, VD_ERANGE, "offset + limit must be below %u", VD_DMSG_MAX_ITEMS);
    for (uint32_t i = 0; i < q->dim; i++)
        if (!isfinite(s->query[i]))
            return vd_errf(err, VD_EINVAL, "the query vector holds a non-finite value");
    struct sreq *r = sreq_new(c, SR_SEARCH, coll, incarnation, q->filter, q->r, q->timeout_ms, err);
    if (!r)
        return err->code;
    if (!(r->query = malloc(sizeof(float) * q->dim))) {
        sreq_free(r);
        return vd_errf(err, VD_ENOMEM, "out of memory");
    }
    memcpy(r->query, s->query, sizeof(float) * q->dim);
    r->dim = q->dim;
    r->limit = s->limit;
    r->offset = s->offset;
    r->ef = s->ef;
    r->exact = s->exact;
    r->quant_ignore = s->quant_ignore;
    r->quant_no_rescore = s->quant_no_rescore;
    r->oversampling = s->oversampling;
    r->has_threshold = s->has_threshold;
    r->threshold = s->score_threshold;
    if (s->exclude) {
        r->has_exclude = true;
        r->exclude = *s->exclude;
    }
    r->with_payload = q->with_payload;
    r->with_vector = q->with_vector;
    r->search_done = done;
    r->ctx = ctx;
    return enqueue(c, r, err);
}

int vd_cluster_scroll(struct vd_cluster *c, const char *coll, uint64_t incarnation,
                      const struct vd_cluster_scroll *q, vd_cluster_scroll_fn done, void *ctx,
                      struct vd_err *err)
{
    if (q->limit == 0 || !done)
        return vd_errf(err, VD_EINVAL, "a scroll needs a limit of 1 or more");
    if (q->limit >= VD_DMSG_MAX_ITEMS)
        return vd_errf(err, VD_ERANGE, "limit must be below %u", VD_DMSG_MAX_ITEMS);
    struct sreq *r = sreq_new(c, SR_SCROLL, coll, incarnation, q->filter, q->r, q->timeout_ms, err);
    if (!r)
        return err->code;
    r->limit = q->limit;
    if (q->from) {
        r->has_from = true;
        r->from = *q->from;
    }
    r->with_payload = q->with_payload;
    r->with_vector = q->with_vector;
    r->scroll_done = done;
    r->ctx = ctx;
    return enqueue(c, r, err);
}

int vd_cluster_count(struct vd_cluster *c, const char *coll, uint64_t incarnation,
                     const cJSON *filter, unsigned rc_need, uint32_t timeout_ms,
                     vd_cluster_count_fn done, void *ctx, struct vd_err *err)
{
    if (!done)
        return vd_errf(err, VD_EINVAL, "a count needs a completion");
    struct sreq *r = sreq_new(c, SR_COUNT, coll, incarnation, filter, rc_need, timeout_ms, err);
    if (!r)
        return err->code;
    r->count_done = done;
    r->ctx = ctx;
    return enqueue(c, r, err);
}
