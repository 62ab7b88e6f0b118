/*
 * Hint replay (hinted handoff): the records a replica did not acknowledge, kept in the hints
 * table by the coordinator (node_data.c), are carried to it once it is back.
 *
 * Driven from housekeeping on the loop thread. Every HINT_SCAN_MS the node reads the per-target
 * totals (one short read) and, for each target with hints and no batch of its own in flight,
 * reads one batch: hints of one collection incarnation, at most HINT_BATCH_BYTES of records. Each
 * hint of the batch gets a fate:
 *   send     the target is a member, reachable, and a replica of the point on this node's ring:
 *            the batch's records go to it as one WRITE data message on that ring version (this
 *            node's own through the same path as a peer's), and are forgotten once it answers
 *            that it holds them;
 *   rewrite  the target no longer owns the point (the ring moved): the record is written
 *            through the coordinator to the point's current replicas at W 1, keeping its
 *            version, and forgotten once that write is acknowledged;
 *   expired  older than the hint window: forgotten, and the target marked needs-repair;
 *   dropped  its collection incarnation was deleted, or the target left the cluster: forgotten.
 * Deleting hints blocks on the storage writer, so it runs on libuv's thread pool. A target whose
 * replica answers wrong-ring, not-yet or nothing is tried again later with the current ring;
 * records are idempotent (newest version wins), so sending one twice is harmless.
 *
 * Targets that are down get an expiry pass only, less often. At most HINT_MAX_INFLIGHT batches
 * are in flight at once over all targets.
 */
#include <stdlib.h>
#include <string.h>

#include "dmsg.h"
#include "node_int.h"
#include "vectord/db.h"
#include "vectord/record.h"

#define HINT_SCAN_MS 100         /* how often the totals are read */
#define HINT_EXPIRE_SCAN_MS 2000 /* expiry pass of a target that is down */
#define HINT_BATCH_BYTES (1u << 20)
#define HINT_BATCH_MAX 1024    /* hints per batch */
#define HINT_MAX_INFLIGHT 4    /* batches in flight over all targets */
#define HINT_RETRY_MS 1000     /* a batch not delivered: its target waits this long */
#define HINT_RETRY_RING_MS 100 /* wrong ring or not yet: the ring catches up soon */
#define HINT_TARGETS 64        /* targets tracked at once */
/* needs-repair marks told to the other members while any is held, and trusted from a member for
 * a few of its sends: a mark cleared (or a member gone silent) is forgotten within MARKS_TTL_MS */
#define MARKS_SEND_MS 1000
#define MARKS_TTL_MS 3500
/* a batch's deadline: a target that went silent (not marked down yet) holds its batch no longer,
 * so expiry and the next try come soon; a live replica stores a 1 MiB batch well within it */
#define HINT_SEND_MS 3000

enum fate { F_SEND = 1, F_REWRITE, F_EXPIRED, F_DROPPED };

struct htarget {
    uint64_t id;
    bool busy;          /* a batch in flight */
    uint64_t retry_at;  /* not before (monotonic ms) */
    uint64_t expire_at; /* next expiry pass while down */
    uint64_t count;     /* hints stored, at the last scan */
    uint64_t refused;   /* hints not stored, as last counted */
    bool needs_repair;
    uint64_t marks; /* times marked needs-repair (node_repair.c clears a mark not renewed) */
    bool seen; /* in the last totals */
};

/* The marks another member said it holds. */
struct reporter {
    uint64_t from, heard; /* heard: monotonic ms of its last VD_FRAME_MARKS */
    uint32_t n;
    uint64_t ids[HINT_TARGETS];
};

struct vd_hints {
    /* under mu: what other threads read (metrics, GET /cluster) */
    pthread_mutex_t mu;
    struct htarget t[HINT_TARGETS];
    size_t n_t;
    struct reporter rep[MAX_MEMBERS];
    size_t n_rep;
    uint64_t replayed, expired, dropped, refused;
    uint64_t refused_other; /* refused hints the database counts under target 0 */
    /* loop thread only */
    uint64_t window_ms;
    unsigned inflight;
    uint64_t last_scan, last_marks;
    bool closing;
};

struct hent {
    struct vd_hint_pos pos;
    uint8_t fate;
    bool done;
    size_t off, len; /* send and rewrite: the record in recs */
};

struct hbatch {
    struct vd_cluster *c;
    uint64_t target;
    char coll[256];
    uint64_t incarnation;
    struct hent *e;
    size_t n, cap;
    struct vd_buf recs;
    size_t bytes;
    bool removed, expire_only, wait; /* wait: a later incarnation not applied here yet */
    bool stopped;                    /* expiry pass: stopped at stop, inside the window */
    struct vd_hint_pos stop;
    unsigned parts;
    uint64_t retry_ms; /* the longest back-off a part asked for */
    struct vd_hint_pos *del;
    size_t n_del;
    int del_rc;
    uv_work_t work;
};

/* ---- targets ------------------------------------------------------------------------------- */

static struct htarget *target_of(struct vd_hints *h, uint64_t id, bool create)
{
    for (size_t i = 0; i < h->n_t; i++)
        if (h->t[i].id == id)
            return &h->t[i];
    if (!create)
        return NULL;
    if (h->n_t == HINT_TARGETS) {
        /* forget one with no hints and nothing in flight, never one needing repair */
        size_t i = 0;
        while (i < h->n_t && (h->t[i].busy || h->t[i].count || h->t[i].needs_repair))
            i++;
        if (i == h->n_t)
            return NULL;
        h->t[i] = h->t[--h->n_t];
    }
    struct htarget *t = &h->t[h->n_t++];
    memset(t, 0, sizeof *t);
    t->id = id;
    return t;
}

static void mark_repair(struct vd_cluster *c, struct htarget *t, const char *why)
{
    pthread_mutex_lock(&c->hints->mu);
    t->marks++; /* a repair under way does not cover what this mark is for */
    bool was = t->needs_repair;
    t->needs_repair = true;
    pthread_mutex_unlock(&c->hints->mu);
    if (was)
        return;
    vd_log_warn("cluster: node %llu needs repair: %s; it serves no consistency-1 reads until "
                "repaired",
                (unsigned long long)t->id, why);
}

static bool target_up(struct vd_cluster *c, uint64_t id, uint64_t now)
{
    if (id == c->id)
        return true;
    const struct member_clock *m = vd__cluster_clock_find(c, id);
    return m && m->heard && now - m->heard < DOWN_AFTER_MS;
}

/* ---- the end of a batch -------------------------------------------------------------------- */

static void batch_free(struct hbatch *b)
{
    vd_buf_release(&b->recs);
    free(b->e);
    free(b->del);
    free(b);
}

static void batch_finish(struct hbatch *b, bool deleted)
{
    struct vd_cluster *c = b->c;
    struct vd_hints *h = c->hints;
    struct htarget *t = target_of(h, b->target, false);
    pthread_mutex_lock(&h->mu);
    if (deleted)
        for (size_t i = 0; i < b->n; i++) {
            if (!b->e[i].done)
                continue;
            if (b->e[i].fate == F_SEND || b->e[i].fate == F_REWRITE)
                h->replayed++;
            else if (b->e[i].fate == F_EXPIRED)
                h->expired++;
            else
                h->dropped++;
        }
    if (t) {
        t->busy = false;
        uint64_t now = vd__cluster_now_ms();
        t->retry_at = b->retry_ms ? now + b->retry_ms : 0;
        if (b->expire_only)
            t->expire_at = now + HINT_EXPIRE_SCAN_MS;
    }
    pthread_mutex_unlock(&h->mu);
    h->inflight--;
    batch_free(b);
}

static void del_work(uv_work_t *w)
{
    struct hbatch *b = w->data;
    struct vd_err e = {0};
    b->del_rc = vd_db_hints_delete(b->c->db, b->target, b->del, b->n_del, &e);
    if (b->del_rc)
        vd_log_warn("cluster: hints for node %llu not deleted: %s", (unsigned long long)b->target,
                    e.msg);
}

static void del_after(uv_work_t *w, int status)
{
    struct hbatch *b = w->data;
    if (status || b->del_rc)
        b->retry_ms = HINT_RETRY_MS;
    batch_finish(b, status == 0 && b->del_rc == 0);
}

/* Every part of b has settled: forgets the hints that are done with. */
static void batch_settle(struct hbatch *b)
{
    if (--b->parts)
        return;
    if (b->c->hints->closing) {
        batch_finish(b, false);
        return;
    }
    b->del = malloc((b->n ? b->n : 1) * sizeof *b->del);
    if (!b->del) {
        b->retry_ms = HINT_RETRY_MS;
        batch_finish(b, false);
        return;
    }
    for (size_t i = 0; i < b->n; i++)
        if (b->e[i].done)
            b->del[b->n_del++] = b->e[i].pos;
    if (b->n_del == 0) {
        batch_finish(b, false);
        return;
    }
    b->work.data = b;
    if (uv_queue_work(&b->c->loop, &b->work, del_work, del_after)) {
        b->retry_ms = HINT_RETRY_MS;
        batch_finish(b, false);
    }
}

static void settle_fate(struct hbatch *b, uint8_t fate, bool done, uint64_t retry_ms)
{
    for (size_t i = 0; i < b->n; i++)
        if (b->e[i].fate == fate)
            b->e[i].done = done;
    if (retry_ms > b->retry_ms)
        b->retry_ms = retry_ms;
}

/* ---- sending --------------------------------------------------------------------------------- */

static void on_sent(void *arg, enum vd_data_outcome outcome, const uint8_t *reply, size_t len)
{
    struct hbatch *b = arg;
    struct vd_dmsg_reply rp;
    memset(&rp, 0, sizeof rp);
    if (outcome == VD_DATA_SHUTDOWN) {
        settle_fate(b, F_SEND, false, 0);
    } else if (outcome != VD_DATA_REPLIED || !reply || vd_dmsg_reply_decode(reply, len, &rp) ||
               rp.kind != VD_DMSG_WRITE) {
        settle_fate(b, F_SEND, false, HINT_RETRY_MS);
    } else if (rp.status == VD_DMSG_OK) {
        size_t k = 0;
        for (size_t i = 0; i < b->n; i++)
            if (b->e[i].fate == F_SEND)
                b->e[i].done = k < rp.n_items && rp.results[k++] == VD_DMSG_HELD;
    } else if (rp.status == VD_DMSG_GONE) {
        /* the incarnation was deleted: nothing to deliver any more */
        for (size_t i = 0; i < b->n; i++)
            if (b->e[i].fate == F_SEND) {
                b->e[i].fate = F_DROPPED;
                b->e[i].done = true;
            }
    } else if (rp.status == VD_DMSG_WRONG_RING || rp.status == VD_DMSG_NOT_YET) {
        settle_fate(b, F_SEND, false, HINT_RETRY_RING_MS);
    } else {
        vd_log_warn("cluster: node %llu refused replayed hints of collection '%s': %.*s",
                    (unsigned long long)b->target, b->coll, (int)rp.msg_len, rp.msg ? rp.msg : "");
        settle_fate(b, F_SEND, false, HINT_RETRY_MS);
    }
    vd_dmsg_reply_free(&rp);
    batch_settle(b);
}

static void on_rewritten(int status, const struct vd_err *err, uint64_t op_id, void *ctx)
{
    (void)op_id;
    struct hbatch *b = ctx;
    if (status && status != VD_ECLOSED)
        vd_log_info("cluster: rewriting hints of node %llu through the coordinator: %s",
                    (unsigned long long)b->target, err ? err->msg : vd_strerror(status));
    /* a failed write keeps the hints for a later try; one of a collection deleted meanwhile
     * keeps them until its purge takes them */
    settle_fate(b, F_REWRITE, status == 0, status ? HINT_RETRY_MS : 0);
    batch_settle(b);
}

/* Collects pointers to the records of fate f; returns how many. */
static size_t records_of(struct hbatch *b, uint8_t f, const uint8_t **p, size_t *lens,
                         struct vd_dmsg_blob *blobs)
{
    size_t k = 0;
    for (size_t i = 0; i < b->n; i++) {
        if (b->e[i].fate != f)
            continue;
        const uint8_t *r = (const uint8_t *)b->recs.data + b->e[i].off;
        if (p) {
            p[k] = r;
            lens[k] = b->e[i].len;
        }
        if (blobs)
            blobs[k] = (struct vd_dmsg_blob){r, (uint32_t)b->e[i].len};
        k++;
    }
    return k;
}

static void send_part(struct vd_cluster *c, struct hbatch *b, size_t n)
{
    struct vd_dmsg_blob *blobs = calloc(n, sizeof *blobs);
    struct vd_buf body;
    vd_buf_init(&body);
    uint64_t rv = vd_meta_ring_version(c->meta);
    b->parts++;
    if (!blobs)
        goto fail;
    records_of(b, F_SEND, NULL, NULL, blobs);
    struct vd_dmsg_req q = {.kind = VD_DMSG_WRITE,
                            .attempt = 1,
                            .incarnation = b->incarnation,
                            .ring_version = rv,
                            .recs = blobs,
                            .n_recs = (uint32_t)n};
    snprintf(q.coll, sizeof q.coll, "%s", b->coll);
    if (vd_dmsg_req_encode(&q, &body) || !vd_buf_ok(&body))
        goto fail;
    uint64_t wait = c->request_ms < HINT_SEND_MS ? c->request_ms : HINT_SEND_MS;
    struct vd_data_hdr hdr = {b->incarnation, rv, vd_wall_ms() + wait};
    size_t len;
    uint8_t *msg = (uint8_t *)vd_buf_steal(&body, &len);
    free(blobs);
    blobs = NULL;
    if (!msg || vd__cluster_dcall(c, b->target, &hdr, msg, len, on_sent, b))
        goto fail;
    return;
fail:
    free(blobs);
    vd_buf_release(&body);
    settle_fate(b, F_SEND, false, HINT_RETRY_MS);
    b->parts--; /* settled here: the caller's own part keeps b alive */
}

static void rewrite_part(struct vd_cluster *c, struct hbatch *b, size_t n)
{
    const uint8_t **p = calloc(n, sizeof *p);
    size_t *lens = calloc(n, sizeof *lens);
    struct vd_err e;
    b->parts++;
    if (p && lens) {
        records_of(b, F_REWRITE, p, lens, NULL);
        if (vd_cluster_write(c, b->coll, b->incarnation, p, lens, n, 1, 0, on_rewritten, b, &e) ==
            0) {
            free(p);
            free(lens);
            return;
        }
    }
    free(p);
    free(lens);
    settle_fate(b, F_REWRITE, false, HINT_RETRY_MS);
    b->parts--;
}

/* ---- reading a batch ----------------------------------------------------------------------- */

static const struct vd_coll_schema *coll_by_incarnation(const struct vd_meta *m, uint64_t inc)
{
    size_t n = vd_meta_n_collections(m);
    for (size_t i = 0; i < n; i++) {
        const struct vd_coll_schema *s = vd_meta_collection_at(m, i);
        if (s->incarnation == inc)
            return s;
    }
    return NULL;
}

static struct hent *add(struct hbatch *b, const struct vd_hint_view *v, uint8_t fate)
{
    if (b->n == b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 64;
        struct hent *ne = realloc(b->e, nc * sizeof *ne);
        if (!ne)
            return NULL;
        b->e = ne;
        b->cap = nc;
    }
    struct hent *e = &b->e[b->n++];
    *e = (struct hent){.pos = v->pos, .fate = fate, .done = fate >= F_EXPIRED};
    return e;
}

static int scan_one(const struct vd_hint_view *v, void *ctx)
{
    struct hbatch *b = ctx;
    struct vd_cluster *c = b->c;
    if (b->n >= HINT_BATCH_MAX || b->bytes >= HINT_BATCH_BYTES)
        return 1;
    if (b->removed)
        return add(b, v, F_DROPPED) ? 0 : 1;
    uint64_t window = c->hints->window_ms;
    if (window && v->created_ms + window < vd_wall_ms())
        return add(b, v, F_EXPIRED) ? 0 : 1;
    if (b->expire_only) {
        /* hints of one incarnation are in creation order: the rest of it is younger */
        b->stopped = true;
        b->stop = v->pos;
        return 1;
    }
    const struct vd_coll_schema *s = coll_by_incarnation(c->meta, v->pos.incarnation);
    if (!s) {
        if (vd_meta_incarnation_ahead(c->meta, v->pos.incarnation)) {
            b->wait = true; /* created on a node ahead of this one: ours catches up */
            return 1;
        }
        return add(b, v, F_DROPPED) ? 0 : 1;
    }
    if (b->incarnation && b->incarnation != v->pos.incarnation)
        return 1; /* one incarnation per batch: one data message names one */
    struct vd_record r;
    struct vd_rvec vecs[VD_RECORD_MAX_VECTORS];
    if (vd_record_decode(v->rec, v->rec_len, &r, vecs) || r.incarnation != v->pos.incarnation)
        return add(b, v, F_DROPPED) ? 0 : 1;
    b->incarnation = v->pos.incarnation;
    snprintf(b->coll, sizeof b->coll, "%s", s->name);
    uint8_t fate = vd_meta_is_replica(c->meta, s->name, &r.id, b->target) ? F_SEND : F_REWRITE;
    struct hent *e = add(b, v, fate);
    if (!e)
        return 1;
    e->off = b->recs.len;
    e->len = v->rec_len;
    vd_buf_append(&b->recs, v->rec, v->rec_len);
    b->bytes += v->rec_len;
    return vd_buf_ok(&b->recs) ? 0 : 1;
}

/* Reads and starts one batch for t. */
static void batch_start(struct vd_cluster *c, struct htarget *t, bool removed, bool expire_only)
{
    struct hbatch *b = calloc(1, sizeof *b);
    if (!b)
        return;
    b->c = c;
    b->target = t->id;
    b->removed = removed;
    b->expire_only = expire_only;
    vd_buf_init(&b->recs);
    if (expire_only) {
        /* one pass per incarnation: each stops at its first hint still inside the window, and
         * the next goes on after that incarnation's last possible id */
        struct vd_hint_pos from;
        const struct vd_hint_pos *after = NULL;
        for (int pass = 0; pass < 4096 && b->n < HINT_BATCH_MAX; pass++) {
            b->stopped = false;
            if (vd_db_hints_scan(c->db, t->id, after, scan_one, b) < 0 || !b->stopped ||
                b->stop.incarnation == UINT64_MAX)
                break;
            from = (struct vd_hint_pos){b->stop.incarnation, UINT64_MAX};
            after = &from;
        }
    } else {
        vd_db_hints_scan(c->db, t->id, NULL, scan_one, b);
    }
    if (b->n == 0 || !vd_buf_ok(&b->recs)) {
        if (b->wait || !vd_buf_ok(&b->recs))
            t->retry_at = vd__cluster_now_ms() + HINT_RETRY_MS;
        if (expire_only)
            t->expire_at = vd__cluster_now_ms() + HINT_EXPIRE_SCAN_MS;
        batch_free(b);
        return;
    }
    for (size_t i = 0; i < b->n; i++)
        if (b->e[i].fate == F_EXPIRED) {
            mark_repair(c, t, "hints for it passed the hint window");
            break;
        }
    t->busy = true;
    c->hints->inflight++;
    b->parts = 1; /* this function's own, so that no part settles b before all started */
    size_t n_send = records_of(b, F_SEND, NULL, NULL, NULL);
    size_t n_rw = records_of(b, F_REWRITE, NULL, NULL, NULL);
    if (n_send)
        send_part(c, b, n_send);
    if (n_rw)
        rewrite_part(c, b, n_rw);
    batch_settle(b);
}

/* ---- housekeeping ---------------------------------------------------------------------------- */

static int on_total(uint64_t target, uint64_t count, uint64_t bytes, void *ctx)
{
    (void)bytes;
    struct vd_hints *h = ctx;
    struct htarget *t = target_of(h, target, true);
    if (t) {
        t->count = count;
        t->seen = true;
    }
    return 0;
}

static void on_refused(uint64_t target, uint64_t count, void *ctx)
{
    struct vd_cluster *c = ctx;
    struct vd_hints *h = c->hints;
    pthread_mutex_lock(&h->mu);
    struct htarget *t = target ? target_of(h, target, true) : NULL;
    uint64_t *seen = t ? &t->refused : &h->refused_other;
    bool more = count > *seen;
    if (more) {
        h->refused += count - *seen;
        *seen = count;
    }
    pthread_mutex_unlock(&h->mu);
    if (more && t)
        mark_repair(c, t, "a hint for it was not stored (a hint cap was reached)");
}

/* Tells every other member which members this node has marked needs-repair, so that they too
 * ask them last (a mark is this node's knowledge: the hints were dropped here). */
static void marks_send(struct vd_cluster *c, uint64_t now)
{
    struct vd_hints *h = c->hints;
    if (now - h->last_marks < MARKS_SEND_MS)
        return;
    h->last_marks = now;
    uint8_t body[HINT_TARGETS * 8];
    size_t n = 0;
    pthread_mutex_lock(&h->mu);
    for (size_t i = 0; i < h->n_t; i++)
        if (h->t[i].needs_repair)
            vd_be64_put(body + 8 * n++, h->t[i].id);
    pthread_mutex_unlock(&h->mu);
    if (n == 0)
        return; /* a cleared mark is forgotten by the others after MARKS_TTL_MS */
    for (size_t i = 0; i < vd_meta_n_members(c->meta); i++) {
        uint64_t id = vd_meta_member_at(c->meta, i)->id;
        if (id != c->id)
            vd_transport_send(c->tp, id, VD_FRAME_MARKS, body, 8 * n);
    }
}

void vd__cluster_hints_on_marks(struct vd_cluster *c, uint64_t from, const uint8_t *body,
                                size_t len)
{
    struct vd_hints *h = c->hints;
    if (!h || len % 8 || len / 8 > HINT_TARGETS || !vd_meta_member(c->meta, from))
        return;
    uint64_t now = vd__cluster_now_ms();
    pthread_mutex_lock(&h->mu);
    struct reporter *r = NULL;
    for (size_t i = 0; i < h->n_rep && !r; i++)
        if (h->rep[i].from == from)
            r = &h->rep[i];
    for (size_t i = 0; i < h->n_rep && !r; i++) /* reuse one gone silent */
        if (now - h->rep[i].heard >= MARKS_TTL_MS)
            r = &h->rep[i];
    if (!r && h->n_rep < MAX_MEMBERS)
        r = &h->rep[h->n_rep++];
    if (r) {
        r->from = from;
        r->heard = now;
        r->n = (uint32_t)(len / 8);
        for (uint32_t k = 0; k < r->n; k++)
            r->ids[k] = vd_be64_get(body + 8 * k);
    }
    pthread_mutex_unlock(&h->mu);
}

void vd__cluster_hints_tick(struct vd_cluster *c)
{
    struct vd_hints *h = c->hints;
    uint64_t now = vd__cluster_now_ms();
    if (!h || h->closing || now - h->last_scan < HINT_SCAN_MS)
        return;
    h->last_scan = now;
    pthread_mutex_lock(&h->mu);
    for (size_t i = 0; i < h->n_t; i++)
        h->t[i].seen = false;
    vd_db_hint_totals(c->db, on_total, h);
    for (size_t i = 0; i < h->n_t; i++)
        if (!h->t[i].seen)
            h->t[i].count = 0;
    pthread_mutex_unlock(&h->mu);
    vd_db_hints_refused(c->db, on_refused, c);
    marks_send(c, now);
    /* a node deciding what to drop must know the cluster as it is: not before it applied what
     * its log held at start, and not while it is still joining */
    if (c->broken || c->join || vd_meta_applied(c->meta) < c->catchup ||
        !vd_meta_member(c->meta, c->id))
        return;
    for (size_t i = 0; i < h->n_t && h->inflight < HINT_MAX_INFLIGHT; i++) {
        struct htarget *t = &h->t[i];
        if (!t->count || t->busy || now < t->retry_at)
            continue;
        bool member = vd_meta_member(c->meta, t->id) != NULL || t->id == c->id;
        if (!member)
            batch_start(c, t, true, false);
        else if (target_up(c, t->id, now))
            batch_start(c, t, false, false);
        else if (now >= t->expire_at)
            batch_start(c, t, false, true);
    }
}

int vd__cluster_hints_new(struct vd_cluster *c, uint64_t window_ms)
{
    struct vd_hints *h = calloc(1, sizeof *h);
    if (!h)
        return VD_ENOMEM;
    pthread_mutex_init(&h->mu, NULL);
    h->window_ms = window_ms;
    c->hints = h;
    return 0;
}

void vd__cluster_hints_close(struct vd_cluster *c)
{
    if (c->hints)
        c->hints->closing = true;
}

void vd__cluster_hints_free(struct vd_cluster *c)
{
    if (!c->hints)
        return;
    pthread_mutex_destroy(&c->hints->mu);
    free(c->hints);
    c->hints = NULL;
}

bool vd__cluster_hints_needs_repair(struct vd_cluster *c, uint64_t id)
{
    struct vd_hints *h = c->hints;
    if (!h)
        return false;
    uint64_t now = vd__cluster_now_ms();
    pthread_mutex_lock(&h->mu);
    const struct htarget *t = target_of(h, id, false);
    bool r = t && t->needs_repair;
    for (size_t i = 0; i < h->n_rep && !r; i++)
        if (h->rep[i].from != id && now - h->rep[i].heard < MARKS_TTL_MS)
            for (uint32_t k = 0; k < h->rep[i].n && !r; k++)
                r = h->rep[i].ids[k] == id;
    pthread_mutex_unlock(&h->mu);
    return r;
}

bool vd__cluster_hints_repair_mark(struct vd_cluster *c, uint64_t id, uint64_t *marks)
{
    struct vd_hints *h = c->hints;
    pthread_mutex_lock(&h->mu);
    const struct htarget *t = target_of(h, id, false);
    bool r = t && t->needs_repair;
    *marks = t ? t->marks : 0;
    pthread_mutex_unlock(&h->mu);
    return r;
}

bool vd__cluster_hints_repair_clear(struct vd_cluster *c, uint64_t id, uint64_t marks)
{
    struct vd_hints *h = c->hints;
    pthread_mutex_lock(&h->mu);
    struct htarget *t = target_of(h, id, false);
    bool cleared = t && t->needs_repair && t->marks == marks;
    if (cleared)
        t->needs_repair = false;
    pthread_mutex_unlock(&h->mu);
    return cleared;
}

void vd_cluster_hint_stats(struct vd_cluster *c, struct vd_cluster_hint_stats *out)
{
    struct vd_hints *h = c->hints;
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&h->mu);
    for (size_t i = 0; i < h->n_t; i++)
        out->pending += h->t[i].count;
    out->replayed = h->replayed;
    out->expired = h->expired;
    out->dropped = h->dropped + h->refused;
    pthread_mutex_unlock(&h->mu);
}

void vd__cluster_hints_metrics(struct vd_cluster *c, struct vd_buf *out)
{
    struct vd_hints *h = c->hints;
    struct vd_cluster_hint_stats st;
    vd_cluster_hint_stats(c, &st);
    vd_buf_puts(out,
                "# HELP vectord_hints_pending Hints stored for a replica and not yet replayed, "
                "by target node.\n"
                "# TYPE vectord_hints_pending gauge\n");
    pthread_mutex_lock(&h->mu);
    for (size_t i = 0; i < h->n_t; i++)
        vd_buf_printf(out, "vectord_hints_pending{target=\"%llu\"} %llu\n",
                      (unsigned long long)h->t[i].id, (unsigned long long)h->t[i].count);
    pthread_mutex_unlock(&h->mu);
    vd_buf_printf(
        out,
        "# HELP vectord_hints_replayed_total Hints delivered to their replica (or "
        "rewritten to the point's current replicas) and forgotten.\n"
        "# TYPE vectord_hints_replayed_total counter\n"
        "vectord_hints_replayed_total %llu\n"
        "# HELP vectord_hints_expired_total Hints forgotten for passing the hint window.\n"
        "# TYPE vectord_hints_expired_total counter\n"
        "vectord_hints_expired_total %llu\n"
        "# HELP vectord_hints_dropped_total Hints not kept: over a hint cap, for a "
        "deleted collection, or for a node that left the cluster.\n"
        "# TYPE vectord_hints_dropped_total counter\n"
        "vectord_hints_dropped_total %llu\n",
        (unsigned long long)st.replayed, (unsigned long long)st.expired,
        (unsigned long long)st.dropped);
}
