/*
 * The coordinator side of the data plane: a client's writes and reads carried over the ring.
 *
 * A request from another thread (vd_cluster_write, vd_cluster_read) is queued to the loop, where
 * every point gets an operation of the pure coordinator core (vectord/coord.h) on the ring of the
 * loop's state machine. The core's actions are carried out here and its replies fed back:
 *   SEND/REPAIR  batched per (replica, attempt) into one data message (dmsg.h); to a peer over the
 *                data transport (data.c), to this node on libuv's thread pool, where the replica
 *                side (replica.c) serves it exactly as for a peer;
 *   HINT         stored in the hints table for the replica (it never counts toward W);
 *   NEED_RING    rerouted on the loop's ring when that is newer (after the next apply);
 *   REPLY        the point's answer; the client's comes once every point has one.
 * An operation lives on after the client's answer until the core says it is done (late acks,
 * hints, background repair); the request is freed then.
 */
#include <stdlib.h>
#include <string.h>

#include "dmsg.h"
#include "node_int.h"
#include "vectord/db.h"
#include "vectord/record.h"

#define DATA_SPEC_MS 20 /* the least speculative delay of a read (a replica's p99 may be more) */
#define DATA_RETRY_MS 50 /* a replica behind on the ring is asked again after this */

/* What one replica answered for a read: its copy and, when live, its record bytes. */
struct held {
    uint64_t node;
    struct vd_coord_copy copy;
    uint8_t *rec;
    uint32_t len;
};

struct dop {
    struct vd_coord_op *op;
    struct vd_pid id;
    bool replied, done, need_ring;
    struct held held[VD_COORD_MAX_RF + 2];
    size_t n_held;
};

struct dreq {
    struct dreq *next;
    struct vd_cluster *c;
    uint8_t kind; /* VD_DMSG_WRITE or VD_DMSG_READ */
    char coll[256];
    char rid[VD_REQID_MAX + 1]; /* the client request's id, sent to the replicas */
    uint64_t incarnation;
    unsigned rf, need;
    uint32_t timeout_ms;
    uint64_t deadline_ms; /* monotonic, from the start on the loop: tells a timeout (metrics) */
    uint8_t *recs; /* writes: the records back to back */
    size_t *off, *len;
    struct dop *ops;
    size_t n, n_replied, n_done;
    unsigned inflight; /* messages sent and not yet settled or dropped */
    bool answered, driving, again;
    char refusal[160]; /* the last replica's reason for refusing, told to the client */
    vd_cluster_done_fn done;
    vd_cluster_read_fn read_done;
    void *ctx;
};

/* One data message in flight: which operations it carries. */
struct dsend {
    struct vd_cluster *c;
    struct dreq *r;
    uint64_t node;
    uint32_t attempt;
    uint8_t kind; /* of the message */
    size_t *ops;  /* indexes into r->ops, in message order */
    size_t n;
};

static void dreq_drive(struct vd_cluster *c, struct dreq *r);
static void drive_rounds(struct vd_cluster *c, struct dreq *r);

/* ---- the end of a request -------------------------------------------------------------------- */

static void dreq_free(struct dreq *r)
{
    for (size_t i = 0; i < r->n; i++) {
        vd_coord_op_free(r->ops[i].op);
        for (size_t k = 0; k < r->ops[i].n_held; k++)
            free(r->ops[i].held[k].rec);
    }
    free(r->ops);
    free(r->recs);
    free(r->off);
    free(r->len);
    free(r);
}

static void dreq_unlink(struct vd_cluster *c, struct dreq *r)
{
    for (struct dreq **p = &c->dreqs; *p; p = &(*p)->next)
        if (*p == r) {
            *p = r->next;
            return;
        }
}

/* The client's answer, once every point has one: the first failure, else success. */
static void dreq_answer(struct dreq *r)
{
    struct vd_err e = {0};
    int status = 0;
    for (size_t i = 0; i < r->n && !status; i++)
        status = vd_coord_result(r->ops[i].op, &e);
    r->answered = true;
    if (status == VD_ENOTFOUND)
        vd__cluster_coll_gone(&e, r->coll);
    else if (status && r->refusal[0]) {
        /* the numbers alone do not say why (a full disk, a skewed clock) */
        size_t l = strlen(e.msg);
        snprintf(e.msg + l, sizeof e.msg - l, " (%s)", r->refusal);
    }
    vd__cluster_request_end(r->c, r->kind == VD_DMSG_WRITE ? VD__REQ_WRITE : VD__REQ_READ, status,
                            vd__cluster_now_ms() >= r->deadline_ms, r->coll, r->rid,
                            status ? &e : NULL);
    vd_reqid_set(r->rid); /* a request the completion starts (read-modify-write) carries it too */
    if (r->kind == VD_DMSG_WRITE) {
        if (r->done)
            r->done(status, status ? &e : NULL, 0, r->ctx);
        vd_reqid_set(NULL);
        return;
    }
    struct vd_cluster_rec *out = calloc(r->n ? r->n : 1, sizeof *out);
    if (!status && !out)
        status = vd_errf(&e, VD_ENOMEM, "out of memory");
    for (size_t i = 0; !status && i < r->n; i++) {
        struct vd_coord_copy copy;
        uint64_t node;
        vd_coord_read_newest(r->ops[i].op, &copy, &node);
        if (!copy.present || copy.tombstone)
            continue;
        for (size_t k = 0; k < r->ops[i].n_held; k++) {
            const struct held *h = &r->ops[i].held[k];
            if (h->node == node && vd_version_cmp(h->copy.version, copy.version) == 0)
                out[i] = (struct vd_cluster_rec){h->rec, h->len};
        }
    }
    r->read_done(status, status ? &e : NULL, status ? NULL : out, r->n, r->ctx);
    vd_reqid_set(NULL);
    free(out);
}

/* ---- replies ---------------------------------------------------------------------------------- */

static struct held *held_slot(struct dop *o, uint64_t node)
{
    for (size_t k = 0; k < o->n_held; k++)
        if (o->held[k].node == node)
            return &o->held[k];
    if (o->n_held == sizeof o->held / sizeof o->held[0])
        return NULL;
    struct held *h = &o->held[o->n_held++];
    memset(h, 0, sizeof *h);
    h->node = node;
    return h;
}

/* Feeds the core what a message's reply says for each of its operations. rp is NULL when there
 * was none (status then says why: VD_COORD_CLOSED or VD_COORD_REFUSED). */
static void dsend_settle(struct dsend *s, const struct vd_dmsg_reply *rp, uint8_t status)
{
    struct dreq *r = s->r;
    if (rp && rp->status == VD_DMSG_WRONG_RING)
        status = VD_COORD_WRONG_RING;
    else if (rp && rp->status == VD_DMSG_GONE)
        status = VD_COORD_GONE; /* deleted while the request was on its way: a 404 */
    else if (rp && rp->status == VD_DMSG_NOT_YET)
        /* the replica has not applied the collection yet (a create that just committed): on
         * the same ring (else it would answer wrong-ring), so it is asked again shortly, up to
         * the deadline, as a replica behind on the ring is */
        status = VD_COORD_WRONG_RING;
    else if (rp && rp->status != VD_DMSG_OK)
        status = VD_COORD_REFUSED; /* an error: it holds nothing new */
    else if (rp && rp->n_items != s->n)
        status = VD_COORD_REFUSED; /* a reply that does not match the request */
    if (rp && rp->status == VD_DMSG_ERROR) {
        vd_log_warn("cluster: node %llu refused a %s of collection '%s': %.*s",
                    (unsigned long long)s->node, s->kind == VD_DMSG_READ ? "read" : "write",
                    r->coll, (int)rp->msg_len, rp->msg);
        snprintf(r->refusal, sizeof r->refusal, "node %llu: %.*s", (unsigned long long)s->node,
                 (int)rp->msg_len, rp->msg);
    }
    for (size_t i = 0; i < s->n; i++) {
        struct dop *o = &r->ops[s->ops[i]];
        if (o->done)
            continue;
        struct vd_coord_reply cr = {.type = s->kind == VD_DMSG_READ ? VD_COORD_R_READ
                                                                    : VD_COORD_R_WRITE,
                                    .status = status,
                                    .from = s->node,
                                    .attempt = s->attempt,
                                    .ring_version = rp ? rp->ring_version : 0};
        if (status == VD_COORD_OK && s->kind == VD_DMSG_READ) {
            const struct vd_dmsg_read_item *it = &rp->reads[i];
            cr.copy = it->copy;
            struct held *h = held_slot(o, s->node);
            if (h) {
                free(h->rec);
                h->copy = it->copy;
                h->rec = NULL;
                h->len = 0;
                if (it->rec.len && (h->rec = malloc(it->rec.len))) {
                    memcpy(h->rec, it->rec.p, it->rec.len);
                    h->len = it->rec.len;
                }
            }
        }
        /* a repair is a write of a read: its ack is a repair's */
        if (s->kind == VD_DMSG_WRITE && r->kind == VD_DMSG_READ)
            cr.type = VD_COORD_R_REPAIR;
        vd_coord_tick(o->op, vd__cluster_now_ms());
        vd_coord_step(o->op, &cr);
    }
    dreq_drive(s->c, r);
}

/* Frees r once nothing more can happen to it: answered, every operation done, no message of it
 * in flight (a late reply must find it). */
static void dreq_maybe_free(struct vd_cluster *c, struct dreq *r)
{
    if (r->answered && r->n_done == r->n && r->inflight == 0 && !r->driving) {
        dreq_unlink(c, r);
        dreq_free(r);
    }
}

static void dsend_free(struct dsend *s)
{
    free(s->ops);
    free(s);
}

/* A sent message is over: settled (or dropped at shutdown, r then gone). */
static void dsend_end(struct dsend *s, bool settled)
{
    struct vd_cluster *c = s->c;
    struct dreq *r = s->r;
    dsend_free(s);
    if (settled) {
        r->inflight--;
        dreq_maybe_free(c, r);
    }
}

/* A message's end (node_dcall.c, loop thread). */
static void on_dcall(void *arg, enum vd_data_outcome outcome, const uint8_t *reply, size_t len)
{
    struct dsend *s = arg;
    if (outcome == VD_DATA_SHUTDOWN) {
        dsend_free(s); /* the requests were failed and freed by vd__cluster_data_stop */
        return;
    }
    struct vd_dmsg_reply rp;
    uint8_t status;
    bool got = vd__dcall_reply(s->node, outcome, reply, len, s->kind, s->attempt, &rp, &status);
    dsend_settle(s, got ? &rp : NULL, status);
    vd_dmsg_reply_free(&rp);
    dsend_end(s, true);
}

/* ---- actions ----------------------------------------------------------------------------------- */

/* The record an operation sends: the write's own, or for a repair the one src answered. */
static bool record_of(struct dreq *r, size_t i, const struct vd_coord_action *a,
                      struct vd_dmsg_blob *out)
{
    if (r->kind == VD_DMSG_WRITE) {
        *out = (struct vd_dmsg_blob){r->recs + r->off[i], (uint32_t)r->len[i]};
        return true;
    }
    struct dop *o = &r->ops[i];
    for (size_t k = 0; k < o->n_held; k++) {
        const struct held *h = &o->held[k];
        if (h->node == a->src && h->rec && vd_version_cmp(h->copy.version, a->version) == 0) {
            *out = (struct vd_dmsg_blob){h->rec, h->len};
            return true;
        }
    }
    return false;
}

/* Sends one message of the operations idx[0..n) of r to node. */
static void dsend_start(struct vd_cluster *c, struct dreq *r, uint64_t node, uint32_t attempt,
                        uint64_t ring_version, uint8_t kind, const size_t *idx,
                        const struct vd_coord_action *const *acts, size_t n)
{
    struct dsend *s = calloc(1, sizeof *s);
    struct vd_dmsg_blob *blobs = calloc(n, sizeof *blobs);
    struct vd_pid *ids = calloc(n, sizeof *ids);
    if (!s || !blobs || !ids || !(s->ops = malloc(n * sizeof *s->ops)))
        goto fail;
    s->c = c;
    s->r = r;
    s->node = node;
    s->attempt = attempt;
    s->kind = kind;
    struct vd_dmsg_req q = {.kind = kind,
                            .attempt = attempt,
                            .incarnation = r->incarnation,
                            .ring_version = ring_version,
                            .with_record = true};
    snprintf(q.coll, sizeof q.coll, "%s", r->coll);
    memcpy(q.rid, r->rid, sizeof q.rid);
    for (size_t i = 0; i < n; i++) {
        s->ops[s->n] = idx[i];
        if (kind == VD_DMSG_WRITE && !record_of(r, idx[i], acts[i], &blobs[s->n]))
            continue; /* the source's record is gone: nothing to repair with */
        ids[s->n] = r->ops[idx[i]].id;
        s->n++;
    }
    if (s->n == 0) {
        free(blobs);
        free(ids);
        dsend_free(s);
        return;
    }
    q.recs = blobs;
    q.n_recs = kind == VD_DMSG_WRITE ? (uint32_t)s->n : 0;
    q.ids = ids;
    q.n_ids = kind == VD_DMSG_READ ? (uint32_t)s->n : 0;
    struct vd_buf b;
    vd_buf_init(&b);
    int rc = vd_dmsg_req_encode(&q, &b);
    free(blobs);
    free(ids);
    blobs = NULL;
    ids = NULL;
    if (rc || !vd_buf_ok(&b)) {
        vd_buf_release(&b);
        r->inflight++;
        goto fail_settle;
    }
    size_t len;
    uint8_t *body = (uint8_t *)vd_buf_steal(&b, &len);
    r->inflight++;
    struct vd_data_hdr h = {r->incarnation, ring_version,
                            vd_wall_ms() + (r->timeout_ms ? r->timeout_ms : c->request_ms)};
    if (vd__cluster_dcall(c, node, &h, body, len, on_dcall, s) == 0)
        return;
fail_settle:
    /* not sent: the replica holds nothing new from it (a hint covers it later) */
    dsend_settle(s, NULL, VD_COORD_REFUSED);
    dsend_end(s, true);
    return;
fail:
    free(blobs);
    free(ids);
    if (s) {
        s->n = 0;
        dsend_free(s);
    }
}

static void hint_store(struct vd_cluster *c, struct dreq *r, size_t i,
                       const struct vd_coord_action *a)
{
    struct vd_dmsg_blob rec;
    if (!record_of(r, i, a, &rec))
        return;
    uint64_t node = a->node;
    struct vd_err e;
    if (vd_db_hint_put(c->db, node, rec.p, rec.len, &e))
        vd_log_warn("cluster: a hint for node %llu was not stored: %s", (unsigned long long)node,
                    e.msg);
}

/* Carries out what the core asks of r's operations until it asks nothing more. */
static void dreq_drive(struct vd_cluster *c, struct dreq *r)
{
    if (r->driving) { /* a settle inside a send: the outer drive goes round again */
        r->again = true;
        return;
    }
    r->driving = true;
    do {
        r->again = false;
        drive_rounds(c, r);
    } while (r->again);
    r->driving = false;
    for (size_t i = 0; i < r->n; i++) {
        struct dop *o = &r->ops[i];
        if (!o->done && vd_coord_done(o->op)) {
            o->done = true;
            r->n_done++;
        }
    }
    if (!r->answered && r->n_replied == r->n)
        dreq_answer(r);
    dreq_maybe_free(c, r);
}

static void drive_rounds(struct vd_cluster *c, struct dreq *r)
{
    for (int round = 0; round < 64; round++) {
        /* gather every send of this round, to batch them per (node, attempt, kind) */
        size_t cap = 0, n = 0;
        struct pend {
            size_t op;
            struct vd_coord_action a;
        } *p = NULL;
        for (size_t i = 0; i < r->n; i++) {
            struct dop *o = &r->ops[i];
            const struct vd_coord_action *acts;
            size_t na;
            while (!o->done && vd_coord_ready(o->op, &acts, &na)) {
                if (n + na > cap) {
                    size_t nc = (n + na) * 2;
                    struct pend *np = realloc(p, nc * sizeof *np);
                    if (!np)
                        break;
                    p = np;
                    cap = nc;
                }
                for (size_t k = 0; k < na; k++)
                    p[n++] = (struct pend){i, acts[k]};
                vd_coord_advance(o->op);
            }
        }
        if (n == 0) {
            free(p);
            break;
        }
        for (size_t k = 0; k < n; k++) {
            struct dop *o = &r->ops[p[k].op];
            const struct vd_coord_action *a = &p[k].a;
            switch (a->type) {
            case VD_COORD_HINT:
                hint_store(c, r, p[k].op, a);
                vd_coord_hinted(o->op, a->node);
                break;
            case VD_COORD_NEED_RING:
                o->need_ring = true;
                break;
            case VD_COORD_REPAIR:
                atomic_fetch_add_explicit(&c->read_repairs, 1, memory_order_relaxed);
                break;
            case VD_COORD_REPLY:
                if (!o->replied) {
                    o->replied = true;
                    r->n_replied++;
                }
                break;
            default:
                break;
            }
        }
        /* SEND and REPAIR, one message per (node, attempt, kind) */
        for (size_t k = 0; k < n; k++) {
            const struct vd_coord_action *a = &p[k].a;
            if (a->type != VD_COORD_SEND && a->type != VD_COORD_REPAIR)
                continue;
            uint8_t kind = a->type == VD_COORD_REPAIR ? VD_DMSG_WRITE : r->kind;
            size_t *idx = malloc(n * sizeof *idx);
            const struct vd_coord_action **acts = malloc(n * sizeof *acts);
            size_t m = 0;
            for (size_t j = k; idx && acts && j < n; j++) {
                const struct vd_coord_action *b = &p[j].a;
                uint8_t bk = b->type == VD_COORD_REPAIR ? VD_DMSG_WRITE : r->kind;
                if ((b->type == VD_COORD_SEND || b->type == VD_COORD_REPAIR) &&
                    b->node == a->node && b->attempt == a->attempt && bk == kind) {
                    idx[m] = p[j].op;
                    acts[m++] = b;
                    if (j != k)
                        p[j].a.type = 0; /* taken */
                }
            }
            if (m)
                dsend_start(c, r, a->node, a->attempt, a->ring_version, kind, idx, acts, m);
            free(idx);
            free(acts);
        }
        free(p);
    }
}

/* ---- the loop's side -------------------------------------------------------------------------- */

/* Fails r before it started (the collection is gone, the ring is empty, no memory). */
static void dreq_fail(struct dreq *r, int code, const char *msg)
{
    struct vd_err e;
    vd_errf(&e, code, "%s", msg);
    vd__cluster_request_end(r->c, r->kind == VD_DMSG_WRITE ? VD__REQ_WRITE : VD__REQ_READ, code,
                            false, r->coll, r->rid, &e);
    if (r->kind == VD_DMSG_WRITE) {
        if (r->done)
            r->done(code, &e, 0, r->ctx);
    } else {
        r->read_done(code, &e, NULL, 0, r->ctx);
    }
    dreq_free(r);
}

static void dreq_begin(struct vd_cluster *c, struct dreq *r)
{
    const struct vd_coll_schema *s = vd_meta_collection(c->meta, r->coll);
    if (!s || s->incarnation != r->incarnation) {
        struct vd_err e;
        vd__cluster_coll_gone(&e, r->coll);
        dreq_fail(r, VD_ENOTFOUND, e.msg);
        return;
    }
    r->rf = s->replication_factor > VD_COORD_MAX_RF ? VD_COORD_MAX_RF : s->replication_factor;
    if (r->need == 0)
        r->need = r->kind == VD_DMSG_WRITE ? s->write_consistency_factor : vd_coord_quorum(r->rf);
    if (r->need > r->rf)
        r->need = r->rf;
    struct vd_coord_ring ring;
    vd_meta_coord_ring(c->meta, &ring);
    uint64_t spec_ms = r->kind == VD_DMSG_READ ? DATA_SPEC_MS : 0;
    r->deadline_ms = vd__cluster_now_ms() + (r->timeout_ms ? r->timeout_ms : c->request_ms);
    struct vd_coord_params p = {.rf = r->rf,
                                .need = r->need,
                                .now_ms = vd__cluster_now_ms(),
                                .timeout_ms = r->timeout_ms ? r->timeout_ms : c->request_ms,
                                .spec_ms = spec_ms,
                                .spec_of = vd__cluster_spec_of,
                                .spec_ctx = c,
                                .retry_ms = DATA_RETRY_MS,
                                .prefer = c->id,
                                .down = vd__cluster_member_down,
                                .down_ctx = c};
    for (size_t i = 0; i < r->n; i++) {
        struct dop *o = &r->ops[i];
        uint8_t key[VD_PID_KEY_MAX];
        size_t kl;
        if (r->kind == VD_DMSG_WRITE) {
            struct vd_record rec;
            struct vd_rvec vecs[VD_RECORD_MAX_VECTORS];
            if (vd_record_decode(r->recs + r->off[i], r->len[i], &rec, vecs)) {
                dreq_fail(r, VD_EINVAL, "a malformed point record");
                return;
            }
            o->id = rec.id;
            kl = vd_pid_encode(&o->id, key);
            if (vd_coord_write_new(&p, &ring, vd_place_hash(r->coll, key, kl), rec.version,
                                   &o->op)) {
                dreq_fail(r, VD_EUNAVAIL, "the ring has no members to write to");
                return;
            }
        } else {
            kl = vd_pid_encode(&o->id, key);
            if (vd_coord_read_new(&p, &ring, vd_place_hash(r->coll, key, kl), &o->op)) {
                dreq_fail(r, VD_EUNAVAIL, "the ring has no members to read from");
                return;
            }
        }
    }
    r->next = c->dreqs;
    c->dreqs = r;
    dreq_drive(c, r);
}

/* Takes the requests other threads queued (on_async). */
void vd__cluster_data_events(struct vd_cluster *c)
{
    pthread_mutex_lock(&c->mu);
    struct dreq *r = c->dq_head;
    c->dq_head = NULL;
    pthread_mutex_unlock(&c->mu);
    while (r) {
        struct dreq *next = r->next;
        r->next = NULL;
        dreq_begin(c, r);
        r = next;
    }
    vd__cluster_search_events(c);
}

/* Deadlines, speculative reads and retries; reroutes after a ring change (housekeeping). */
void vd__cluster_data_tick(struct vd_cluster *c)
{
    uint64_t now = vd__cluster_now_ms();
    struct vd_coord_ring ring;
    vd_meta_coord_ring(c->meta, &ring);
    for (struct dreq *r = c->dreqs, *next; r; r = next) {
        next = r->next;
        for (size_t i = 0; i < r->n; i++) {
            struct dop *o = &r->ops[i];
            if (o->done)
                continue;
            if (o->need_ring) {
                o->need_ring = false;
                vd_coord_reroute(o->op, &ring);
            }
            if (vd_coord_next_deadline(o->op) <= now)
                vd_coord_tick(o->op, now);
        }
        dreq_drive(c, r); /* may free r */
    }
    vd__cluster_search_tick(c);
}

/* Fails every request at shutdown (their replies will never be fed), then closes the transport,
 * which drops what is still in flight without touching the requests. */
void vd__cluster_data_stop(struct vd_cluster *c)
{
    c->dreqs_open = false;
    pthread_mutex_lock(&c->mu);
    struct dreq *q = c->dq_head;
    c->dq_head = NULL;
    pthread_mutex_unlock(&c->mu);
    while (q) {
        struct dreq *next = q->next;
        dreq_fail(q, VD_ECLOSED, "the node is shutting down");
        q = next;
    }
    /* messages still out find dreqs_open false and touch none of these */
    while (c->dreqs) {
        struct dreq *r = c->dreqs;
        c->dreqs = r->next;
        if (!r->answered)
            dreq_fail(r, VD_ECLOSED, "the node is shutting down");
        else
            dreq_free(r);
    }
    vd__cluster_search_stop(c); /* after the reads it may wait for have answered */
    vd_data_close(c->data);
    c->data = NULL;
}

/* ---- requests from other threads -------------------------------------------------------------- */

static int enqueue(struct vd_cluster *c, struct dreq *r, struct vd_err *err)
{
    pthread_mutex_lock(&c->mu);
    if (c->stopping) {
        pthread_mutex_unlock(&c->mu);
        dreq_free(r);
        return vd_errf(err, VD_ECLOSED, "the node is shutting down");
    }
    r->next = c->dq_head;
    c->dq_head = r;
    pthread_mutex_unlock(&c->mu);
    uv_async_send(&c->async);
    return 0;
}

static struct dreq *dreq_new(struct vd_cluster *c, uint8_t kind, const char *coll,
                             uint64_t incarnation, size_t n, unsigned need, uint32_t timeout_ms)
{
    struct dreq *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->c = c;
    r->kind = kind;
    snprintf(r->coll, sizeof r->coll, "%s", coll);
    snprintf(r->rid, sizeof r->rid, "%s", vd_reqid_current());
    r->incarnation = incarnation;
    r->n = n;
    r->need = need;
    r->timeout_ms = timeout_ms;
    if (!(r->ops = calloc(n ? n : 1, sizeof *r->ops))) {
        free(r);
        return NULL;
    }
    return r;
}

int vd_cluster_write(struct vd_cluster *c, const char *coll, uint64_t incarnation,
                     const uint8_t *const *recs, const size_t *lens, size_t n, unsigned w,
                     uint32_t timeout_ms, vd_cluster_done_fn done, void *ctx, struct vd_err *err)
{
    if (n == 0)
        return vd_errf(err, VD_EINVAL, "no records to write");
    struct dreq *r = dreq_new(c, VD_DMSG_WRITE, coll, incarnation, n, w, timeout_ms);
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += lens[i];
    if (!r || !(r->recs = malloc(total ? total : 1)) || !(r->off = malloc(n * sizeof *r->off)) ||
        !(r->len = malloc(n * sizeof *r->len))) {
        if (r)
            dreq_free(r);
        return vd_errf(err, VD_ENOMEM, "out of memory for %zu records", n);
    }
    for (size_t i = 0, at = 0; i < n; i++) {
        memcpy(r->recs + at, recs[i], lens[i]);
        r->off[i] = at;
        r->len[i] = lens[i];
        at += lens[i];
    }
    r->done = done;
    r->ctx = ctx;
    return enqueue(c, r, err);
}

int vd_cluster_read(struct vd_cluster *c, const char *coll, uint64_t incarnation,
                    const struct vd_pid *ids, size_t n, unsigned rc_need, uint32_t timeout_ms,
                    vd_cluster_read_fn done, void *ctx, struct vd_err *err)
{
    if (n == 0)
        return vd_errf(err, VD_EINVAL, "no ids to read");
    struct dreq *r = dreq_new(c, VD_DMSG_READ, coll, incarnation, n, rc_need, timeout_ms);
    if (!r)
        return vd_errf(err, VD_ENOMEM, "out of memory for %zu ids", n);
    for (size_t i = 0; i < n; i++)
        r->ops[i].id = ids[i];
    r->read_done = done;
    r->ctx = ctx;
    return enqueue(c, r, err);
}

/* ---- the data transport ----------------------------------------------------------------------- */

/* A peer's data request, on a data worker thread: served by members only. */
static int serve_peer(void *ctx, uint64_t from, const struct vd_data_hdr *h, const uint8_t *req,
                      size_t len, struct vd_buf *reply)
{
    (void)h; /* the message repeats the incarnation and ring version, and is checked on them */
    struct vd_cluster *c = ctx;
    struct vd_meta_view *v = vd__cluster_view_acquire(c);
    if (!v)
        return VD_EUNAVAIL;
    const struct vd_meta *m = vd_meta_view_state(v);
    int rc = vd_meta_member(m, from) ? vd__replica_serve(c->db, m, c->id, req, len, reply)
                                     : VD_EPERM;
    vd_meta_view_release(v);
    if (rc == VD_EPERM)
        vd_log_warn("cluster: a data request from node %llu, not a member, refused",
                    (unsigned long long)from);
    return rc;
}

int vd__cluster_data_start(struct vd_cluster *c, struct vd_err *err)
{
    struct vd_data_opts o = {.loop = &c->loop, .tp = c->tp, .handler = serve_peer, .ctx = c};
    int rc = vd_data_start(&o, &c->data, err);
    if (rc == 0)
        c->dreqs_open = true;
    return rc;
}
