/*
 * Anti-entropy repair: the replicas of each ring arc this node replicates compare hash trees of
 * what they hold (replica.c, TREE; coord.h, vd_merkle) and exchange only what differs.
 *
 * A run (asked with vd_cluster_repair, or every --repair-interval) lists the arcs of every
 * collection (or of one) whose replicas include this node, those with a replica marked
 * needs-repair (node_hints.c) first, and repairs them one at a time on the loop thread:
 *   1. TREE   every replica answers the tree of the arc (REPAIR_DEPTH: 256 leaves) with its leaves;
 *             equal trees end the arc there: identical replicas exchange no point data.
 *   2. LEAF   for the leaves that differ between any two trees (adjacent ones merged into one
 *             sub-arc), every replica lists (id, version, tombstone) of what it holds there.
 *   3. READ   for each id, the newest version (last-write-wins by (HLC, node), tombstones
 *             included) is read whole from a replica that holds it,
 *   4. WRITE  and written to every replica that lacks it or holds an older one: the same WRITE
 *             data message hint replay sends, so a replica applies a repaired record exactly as a
 *             replayed or a coordinated one (vd_db_apply, newest wins).
 * An arc whose replicas do not all answer (down, another ring, a listing cut short) is counted
 * failed and left for the next run. Once a run over every collection repaired every arc of a
 * replica marked needs-repair, and no new mark came meanwhile, the mark is cleared: it serves
 * consistency-1 reads again.
 *
 * Each arc is logged (info when it differed, debug when identical), the run's totals too; GET
 * /cluster shows the run's state and progress, /metrics the totals.
 */
#include <stdlib.h>
#include <string.h>

#include "dmsg.h"
#include "node_int.h"

#define REPAIR_DEPTH 2                    /* 256 leaves per arc */
#define REPAIR_LEAVES 256                 /* VD_MERKLE_FANOUT ^ REPAIR_DEPTH */
#define REPAIR_BATCH 512                  /* ids per READ, records per WRITE */
#define REPAIR_BATCH_BYTES (4u << 20)     /* record bytes per WRITE */
#define REPAIR_MAX_REP 64                 /* replicas per arc (VD_PLACE_MAX_RF) */

enum phase { PH_NONE = 0, PH_TREE, PH_LEAF, PH_READ, PH_WRITE };

struct rcoll {
    char name[256];
    uint64_t inc;
};

struct rrange {
    uint32_t coll; /* index in run->colls */
    uint64_t start, end;
    unsigned n_rep;
    uint64_t rep[REPAIR_MAX_REP];
    bool urgent; /* a replica is marked needs-repair */
};

/* What one replica listed of one id. */
struct lent {
    struct vd_pid id;
    unsigned rep;
    struct vd_coord_copy copy;
};

/* One record to carry: the replica holding its newest version, the replicas lacking it. */
struct xfer {
    struct vd_pid id;
    unsigned src;
    uint64_t lack; /* bit i: replica i */
    bool have;     /* read: off, len in run->recs */
    size_t off, len;
};

struct rwaiter {
    struct rwaiter *next;
    uint64_t id;
    vd_cluster_repair_fn done;
    void *ctx;
};

/* A node marked needs-repair when the run began, with the mark's count then. */
struct rmark {
    uint64_t id, marks;
    bool failed; /* one of its arcs was not repaired */
};

struct rrun {
    uint64_t id;
    bool all; /* every collection: only then are marks cleared */
    struct rcoll *colls;
    size_t n_colls;
    struct rrange *r;
    size_t n, i;
    struct rmark marks[MAX_MEMBERS];
    size_t n_marks;
    /* the arc in progress */
    enum phase ph;
    unsigned pending;
    uint32_t attempt; /* of the phase's messages: a late reply of another phase is ignored */
    bool failed;
    bool down;       /* failed for a replica known to be down */
    const char *why; /* the first failure's reason */
    struct vd_merkle *trees; /* n_rep of them */
    bool got_tree[REPAIR_MAX_REP];
    uint32_t n_diff;
    struct lent *ents;
    size_t n_ents, cap_ents;
    struct xfer *x;
    size_t n_x;
    struct vd_buf recs;
    uint64_t arc_sent;
    /* totals of the run */
    struct vd_cluster_repair_report rep;
};

struct vd_repair {
    /* under mu: what other threads ask and read */
    pthread_mutex_t mu;
    bool asked, asked_all;
    char asked_coll[256];
    uint64_t asked_id, next_id;
    struct rwaiter *waiters; /* of the asked run and of the running one */
    bool running;
    uint64_t run_id, ranges_done, ranges_total, last_finished_ms, last_id;
    struct vd_cluster_repair_report last;
    uint64_t runs_total, ranges_total_all, ranges_failed_all, leaves_all, sent_all;
    /* loop thread only */
    uint64_t interval_ms, next_at;
    struct rrun *run;
    bool closing;
};

struct rcall {
    struct vd_cluster *c;
    struct rrun *run;
    unsigned rep;
    uint32_t attempt;
    size_t *xi; /* WRITE: the transfers carried, n_xi of them */
    size_t n_xi;
};

static void advance(struct vd_cluster *c, struct rrun *run);

/* ---- the end of an arc and of a run -------------------------------------------------------- */

static void fail(struct rrun *run, const char *why)
{
    if (!run->failed)
        run->why = why;
    run->failed = true;
}

static void arc_reset(struct rrun *run)
{
    free(run->trees);
    free(run->ents);
    free(run->x);
    run->trees = NULL;
    run->ents = NULL;
    run->x = NULL;
    run->n_ents = run->cap_ents = run->n_x = 0;
    run->recs.len = 0;
    memset(run->got_tree, 0, sizeof run->got_tree);
    run->ph = PH_NONE;
    run->failed = false;
    run->down = false;
    run->why = NULL;
    run->n_diff = 0;
    run->arc_sent = 0;
}

static void arc_end(struct vd_cluster *c, struct rrun *run)
{
    struct rrange *a = &run->r[run->i];
    const char *coll = run->colls[a->coll].name;
    run->rep.ranges++;
    if (run->failed) {
        run->rep.ranges_failed++;
        for (size_t m = 0; m < run->n_marks; m++)
            for (unsigned k = 0; k < a->n_rep; k++)
                if (a->rep[k] == run->marks[m].id)
                    run->marks[m].failed = true;
        /* a replica down fails each of its arcs: the run's summary says how many */
        vd_log(run->down ? VD_LOG_DEBUG : VD_LOG_WARN,
               "cluster: repair %llu: collection '%s' arc (%llu, %llu]: not repaired (%s); %u "
               "differing leaves, %llu points sent",
               (unsigned long long)run->id, coll, (unsigned long long)a->start,
               (unsigned long long)a->end, run->why ? run->why : "failed", run->n_diff,
               (unsigned long long)run->arc_sent);
    } else {
        vd_log(run->n_diff ? VD_LOG_INFO : VD_LOG_DEBUG,
               "cluster: repair %llu: collection '%s' arc (%llu, %llu]: %u replicas compared, "
               "%u differing leaves, %llu points sent",
               (unsigned long long)run->id, coll, (unsigned long long)a->start,
               (unsigned long long)a->end, a->n_rep, run->n_diff,
               (unsigned long long)run->arc_sent);
    }
    run->rep.leaves_differing += run->n_diff;
    run->rep.points_sent += run->arc_sent;
    struct vd_repair *r = c->repair;
    pthread_mutex_lock(&r->mu);
    r->ranges_done = run->i + 1;
    r->ranges_total_all++;
    r->ranges_failed_all += run->failed;
    r->leaves_all += run->n_diff;
    r->sent_all += run->arc_sent;
    pthread_mutex_unlock(&r->mu);
    arc_reset(run);
    run->i++;
}

static void run_free(struct rrun *run)
{
    arc_reset(run);
    vd_buf_release(&run->recs);
    free(run->colls);
    free(run->r);
    free(run);
}

/* Calls the waiters of run id (all of them when id is 0) with status and report. */
static void waiters_call(struct vd_repair *r, uint64_t id, int status, const struct vd_err *err,
                         const struct vd_cluster_repair_report *rep)
{
    pthread_mutex_lock(&r->mu);
    struct rwaiter *mine = NULL, **p = &r->waiters;
    while (*p) {
        struct rwaiter *w = *p;
        if (id == 0 || w->id == id) {
            *p = w->next;
            w->next = mine;
            mine = w;
        } else {
            p = &w->next;
        }
    }
    pthread_mutex_unlock(&r->mu);
    while (mine) {
        struct rwaiter *w = mine;
        mine = w->next;
        w->done(status, err, rep, w->ctx);
        free(w);
    }
}

static void run_finish(struct vd_cluster *c, struct rrun *run)
{
    struct vd_repair *r = c->repair;
    if (run->all)
        for (size_t m = 0; m < run->n_marks; m++)
            if (!run->marks[m].failed &&
                vd__cluster_hints_repair_clear(c, run->marks[m].id, run->marks[m].marks))
                vd_log_info("cluster: repair %llu: node %llu is repaired; it serves "
                            "consistency-1 reads again",
                            (unsigned long long)run->id, (unsigned long long)run->marks[m].id);
    vd_log_info("cluster: repair %llu finished: %llu ranges compared (%llu not repaired), %llu "
                "differing leaves, %llu points sent",
                (unsigned long long)run->id, (unsigned long long)run->rep.ranges,
                (unsigned long long)run->rep.ranges_failed,
                (unsigned long long)run->rep.leaves_differing,
                (unsigned long long)run->rep.points_sent);
    pthread_mutex_lock(&r->mu);
    r->running = false;
    r->last = run->rep;
    r->last_id = run->id;
    r->last_finished_ms = vd_wall_ms();
    r->runs_total++;
    pthread_mutex_unlock(&r->mu);
    r->run = NULL;
    r->next_at = r->interval_ms ? vd__cluster_now_ms() + r->interval_ms : 0;
    struct vd_cluster_repair_report rep = run->rep;
    uint64_t id = run->id;
    run_free(run);
    waiters_call(r, id, 0, NULL, &rep);
}

/* ---- sending ------------------------------------------------------------------------------- */

/* Sends q (its collection, incarnation and ring filled in here) to replica k of the arc; fn gets
 * an rcall. False when it could not be sent (the arc fails). */
static bool send_to(struct vd_cluster *c, struct rrun *run, unsigned k, struct vd_dmsg_req *q,
                    vd__dcall_fn fn, size_t *xi, size_t n_xi)
{
    struct rrange *a = &run->r[run->i];
    struct rcoll *co = &run->colls[a->coll];
    uint64_t rv = vd_meta_ring_version(c->meta);
    q->attempt = run->attempt;
    q->incarnation = co->inc;
    q->ring_version = rv;
    snprintf(q->coll, sizeof q->coll, "%s", co->name);
    struct vd_buf body;
    vd_buf_init(&body);
    struct rcall *rc = calloc(1, sizeof *rc);
    if (!rc || vd_dmsg_req_encode(q, &body) || !vd_buf_ok(&body)) {
        free(rc);
        vd_buf_release(&body);
        free(xi);
        fail(run, "out of memory");
        return false;
    }
    *rc = (struct rcall){c, run, k, run->attempt, xi, n_xi};
    struct vd_data_hdr h = {co->inc, rv, vd_wall_ms() + c->request_ms};
    size_t len;
    uint8_t *msg = (uint8_t *)vd_buf_steal(&body, &len);
    if (!msg || vd__cluster_dcall(c, a->rep[k], &h, msg, len, fn, rc)) {
        free(rc);
        free(xi);
        fail(run, "a replica could not be sent to");
        return false;
    }
    run->pending++;
    return true;
}

/* The reply of a call, decoded, when it is an OK one of kind; else the arc fails (saying why)
 * and false. */
static bool take_reply(struct rcall *rc, enum vd_data_outcome outcome, const uint8_t *reply,
                       size_t len, uint8_t kind, struct vd_dmsg_reply *rp)
{
    struct rrun *run = rc->run;
    uint8_t st;
    uint64_t node = run->r[run->i].rep[rc->rep];
    if (!vd__dcall_reply(node, outcome, reply, len, kind, rc->attempt, rp, &st)) {
        fail(run, outcome == VD_DATA_TIMEOUT ? "a replica did not answer in time"
                                             : "a replica could not be reached");
        return false;
    }
    if (rp->status != VD_DMSG_OK) {
        if (rp->status == VD_DMSG_ERROR)
            vd_log_warn("cluster: repair %llu: node %llu refused: %.*s",
                        (unsigned long long)run->id, (unsigned long long)node, (int)rp->msg_len,
                        rp->msg ? rp->msg : "");
        fail(run, rp->status == VD_DMSG_WRONG_RING ? "a replica is on another ring version"
                  : rp->status == VD_DMSG_ERROR    ? "a replica refused"
                                                   : "a replica does not hold the collection");
        return false;
    }
    return true;
}

/* Common end of every call: the phase goes on once its last call ended. */
static void call_end(struct rcall *rc, enum vd_data_outcome outcome)
{
    struct vd_cluster *c = rc->c;
    struct rrun *run = rc->run;
    free(rc->xi);
    free(rc);
    if (outcome == VD_DATA_SHUTDOWN || c->repair->closing) {
        run->pending--;
        if (run->pending == 0 && c->repair->run != run)
            run_free(run); /* abandoned at close */
        return;
    }
    if (--run->pending == 0)
        advance(c, run); /* never inside vd__cluster_dcall: no recursion through send_to */
}

/* ---- 1. trees ------------------------------------------------------------------------------ */

static void on_tree(void *arg, enum vd_data_outcome outcome, const uint8_t *reply, size_t len)
{
    struct rcall *rc = arg;
    struct rrun *run = rc->run;
    struct vd_dmsg_reply rp = {0};
    if (outcome != VD_DATA_SHUTDOWN && take_reply(rc, outcome, reply, len, VD_DMSG_TREE, &rp)) {
        struct rrange *a = &run->r[run->i];
        struct vd_merkle *t = &run->trees[rc->rep];
        if (rp.depth != REPAIR_DEPTH || vd_merkle_init(t, a->start, a->end, REPAIR_DEPTH) ||
            vd_merkle_set_leaves(t, rp.leaves, rp.n_leaves))
            fail(run, "a replica answered a tree of another shape");
        else
            run->got_tree[rc->rep] = true;
    }
    vd_dmsg_reply_free(&rp);
    call_end(rc, outcome);
}

/* A replica not heard from lately would hold the arc until the request deadline: the arc is
 * counted failed at once instead (it is repaired by a later run). */
static bool replica_up(struct vd_cluster *c, uint64_t id, uint64_t now)
{
    const struct member_clock *m = id == c->id ? NULL : vd__cluster_clock_find(c, id);
    return id == c->id || (m && m->heard && now - m->heard < DOWN_AFTER_MS);
}

static void start_trees(struct vd_cluster *c, struct rrun *run)
{
    struct rrange *a = &run->r[run->i];
    run->ph = PH_TREE;
    run->attempt++;
    uint64_t now = vd__cluster_now_ms();
    for (unsigned k = 0; k < a->n_rep; k++)
        if (!replica_up(c, a->rep[k], now)) {
            fail(run, "a replica is down");
            run->down = true;
            return;
        }
    run->trees = malloc(a->n_rep * sizeof *run->trees);
    if (!run->trees) {
        fail(run, "out of memory");
        return;
    }
    for (unsigned k = 0; k < a->n_rep; k++) {
        struct vd_dmsg_req q = {.kind = VD_DMSG_TREE,
                                .range = {a->start, a->end},
                                .depth = REPAIR_DEPTH,
                                .with_leaves = true};
        if (!send_to(c, run, k, &q, on_tree, NULL, 0))
            return;
    }
}

/* ---- 2. listings of the differing leaves --------------------------------------------------- */

static void on_leaf(void *arg, enum vd_data_outcome outcome, const uint8_t *reply, size_t len)
{
    struct rcall *rc = arg;
    struct rrun *run = rc->run;
    struct vd_dmsg_reply rp = {0};
    if (outcome != VD_DATA_SHUTDOWN && take_reply(rc, outcome, reply, len, VD_DMSG_LEAF, &rp)) {
        if (!rp.complete)
            fail(run, "a leaf holds more points than one listing carries");
        if (run->n_ents + rp.n_items > run->cap_ents) {
            size_t nc = (run->n_ents + rp.n_items) * 2;
            struct lent *ne = realloc(run->ents, nc * sizeof *ne);
            if (!ne)
                fail(run, "out of memory");
            else
                run->ents = ne, run->cap_ents = nc;
        }
        for (uint32_t i = 0; i < rp.n_items && run->n_ents < run->cap_ents; i++)
            run->ents[run->n_ents++] = (struct lent){rp.listing[i].id, rc->rep, rp.listing[i].copy};
    }
    vd_dmsg_reply_free(&rp);
    call_end(rc, outcome);
}

static void start_leaves(struct vd_cluster *c, struct rrun *run)
{
    struct rrange *a = &run->r[run->i];
    uint32_t diff[REPAIR_LEAVES], one[REPAIR_LEAVES];
    bool differs[REPAIR_LEAVES] = {0};
    uint32_t n_leaves = REPAIR_LEAVES;
    for (unsigned k = 1; k < a->n_rep; k++) {
        uint32_t n;
        vd_merkle_diff(&run->trees[0], &run->trees[k], one, &n); /* same arc and depth */
        for (uint32_t i = 0; i < n; i++)
            differs[one[i]] = true;
    }
    run->n_diff = 0;
    for (uint32_t i = 0; i < n_leaves; i++)
        if (differs[i])
            diff[run->n_diff++] = i;
    if (run->n_diff == 0)
        return; /* identical replicas: nothing more to exchange */
    run->ph = PH_LEAF;
    run->attempt++;
    /* adjacent differing leaves make one sub-arc: fewer listings */
    for (uint32_t i = 0; i < run->n_diff;) {
        uint32_t j = i;
        while (j + 1 < run->n_diff && diff[j + 1] == diff[j] + 1)
            j++;
        uint64_t s, e, s2, e2;
        bool ok = vd_merkle_leaf_arc(&run->trees[0], diff[i], &s, &e) &&
                  vd_merkle_leaf_arc(&run->trees[0], diff[j], &s2, &e2);
        i = j + 1;
        if (!ok)
            continue; /* a leaf holding no hash cannot differ; nothing to list */
        for (unsigned k = 0; k < a->n_rep; k++) {
            struct vd_dmsg_req q = {.kind = VD_DMSG_LEAF, .range = {s, e2}, .k = VD_DMSG_MAX_ITEMS};
            if (!send_to(c, run, k, &q, on_leaf, NULL, 0))
                return;
        }
    }
}

/* ---- 3. reading the newest versions -------------------------------------------------------- */

static int lent_cmp(const void *pa, const void *pb)
{
    const struct lent *a = pa, *b = pb;
    int r = vd_pid_cmp(&a->id, &b->id);
    return r ? r : (a->rep > b->rep) - (a->rep < b->rep);
}

/* From the listings, the records to carry: per id the newest version and who lacks it. */
static int plan_transfers(struct rrun *run)
{
    struct rrange *a = &run->r[run->i];
    qsort(run->ents, run->n_ents, sizeof *run->ents, lent_cmp);
    run->x = calloc(run->n_ents ? run->n_ents : 1, sizeof *run->x);
    if (!run->x)
        return VD_ENOMEM;
    for (size_t i = 0; i < run->n_ents;) {
        size_t j = i;
        unsigned src = run->ents[i].rep;
        struct vd_version newest = run->ents[i].copy.version;
        uint64_t held = 0; /* replicas holding the newest version */
        for (; j < run->n_ents && vd_pid_cmp(&run->ents[j].id, &run->ents[i].id) == 0; j++) {
            int cmp = vd_version_cmp(run->ents[j].copy.version, newest);
            if (cmp > 0) {
                newest = run->ents[j].copy.version;
                src = run->ents[j].rep;
                held = 0;
            }
            if (cmp >= 0)
                held |= UINT64_C(1) << run->ents[j].rep;
        }
        uint64_t all = a->n_rep == 64 ? UINT64_MAX : (UINT64_C(1) << a->n_rep) - 1;
        if (held != all)
            run->x[run->n_x++] = (struct xfer){.id = run->ents[i].id, .src = src,
                                               .lack = all & ~held};
        i = j;
    }
    return 0;
}

/* Sends each replica k the transfers that concern it, in batches: READ those it holds the newest
 * version of (their records), WRITE those it lacks (the records read). */
static void send_batches(struct vd_cluster *c, struct rrun *run, uint8_t kind, vd__dcall_fn fn)
{
    struct rrange *a = &run->r[run->i];
    for (unsigned k = 0; k < a->n_rep; k++) {
        for (size_t i = 0; i < run->n_x;) {
            size_t *xi = malloc(REPAIR_BATCH * sizeof *xi);
            struct vd_pid *ids = malloc(REPAIR_BATCH * sizeof *ids);
            struct vd_dmsg_blob *blobs = malloc(REPAIR_BATCH * sizeof *blobs);
            bool ok = xi && ids && blobs, sent = true;
            size_t n = 0, bytes = 0;
            for (; ok && i < run->n_x && n < REPAIR_BATCH && bytes < REPAIR_BATCH_BYTES; i++) {
                struct xfer *x = &run->x[i];
                if (kind == VD_DMSG_READ ? x->src != k : !((x->lack >> k) & 1) || !x->have)
                    continue;
                xi[n] = i;
                ids[n] = x->id;
                if (kind == VD_DMSG_WRITE) {
                    blobs[n] = (struct vd_dmsg_blob){(const uint8_t *)run->recs.data + x->off,
                                                     (uint32_t)x->len};
                    bytes += x->len;
                }
                n++;
            }
            if (!ok) {
                fail(run, "out of memory");
                sent = false;
            } else if (n) {
                struct vd_dmsg_req q = {.kind = kind,
                                        .ids = kind == VD_DMSG_READ ? ids : NULL,
                                        .n_ids = kind == VD_DMSG_READ ? (uint32_t)n : 0,
                                        .with_record = kind == VD_DMSG_READ,
                                        .recs = kind == VD_DMSG_WRITE ? blobs : NULL,
                                        .n_recs = kind == VD_DMSG_WRITE ? (uint32_t)n : 0};
                sent = send_to(c, run, k, &q, fn, xi, n);
                xi = NULL; /* send_to's, sent or not */
            }
            free(xi);
            free(ids);
            free(blobs);
            if (!sent)
                return;
        }
    }
}

static void on_read(void *arg, enum vd_data_outcome outcome, const uint8_t *reply, size_t len)
{
    struct rcall *rc = arg;
    struct rrun *run = rc->run;
    struct vd_dmsg_reply rp = {0};
    if (outcome != VD_DATA_SHUTDOWN && take_reply(rc, outcome, reply, len, VD_DMSG_READ, &rp)) {
        for (uint32_t i = 0; i < rp.n_items && i < rc->n_xi; i++) {
            struct xfer *x = &run->x[rc->xi[i]];
            /* what the replica holds now: the version listed, or a newer one written since */
            if (!rp.reads[i].rec.len)
                continue;
            x->off = run->recs.len;
            x->len = rp.reads[i].rec.len;
            vd_buf_append(&run->recs, rp.reads[i].rec.p, rp.reads[i].rec.len);
            x->have = vd_buf_ok(&run->recs);
        }
    }
    vd_dmsg_reply_free(&rp);
    call_end(rc, outcome);
}

static void start_reads(struct vd_cluster *c, struct rrun *run)
{
    if (plan_transfers(run)) {
        fail(run, "out of memory");
        return;
    }
    if (run->n_x == 0)
        return; /* the leaves differ in bytes only, under equal versions: nothing newer */
    run->ph = PH_READ;
    run->attempt++;
    send_batches(c, run, VD_DMSG_READ, on_read);
}

/* ---- 4. writing them where they lack ------------------------------------------------------- */

static void on_written(void *arg, enum vd_data_outcome outcome, const uint8_t *reply, size_t len)
{
    struct rcall *rc = arg;
    struct rrun *run = rc->run;
    struct vd_dmsg_reply rp = {0};
    if (outcome != VD_DATA_SHUTDOWN && take_reply(rc, outcome, reply, len, VD_DMSG_WRITE, &rp))
        for (uint32_t i = 0; i < rp.n_items; i++)
            run->arc_sent += rp.results[i] == VD_DMSG_HELD;
    vd_dmsg_reply_free(&rp);
    call_end(rc, outcome);
}

static void start_writes(struct vd_cluster *c, struct rrun *run)
{
    run->ph = PH_WRITE;
    run->attempt++;
    for (size_t i = 0; i < run->n_x; i++)
        if (!run->x[i].have)
            fail(run, "a record listed could not be read back");
    send_batches(c, run, VD_DMSG_WRITE, on_written);
}

/* ---- the arc's steps ----------------------------------------------------------------------- */

/* The phase in progress ended (every call answered, or none could be sent): the next step, or
 * the arc's end when it failed, wrote, or a step found nothing to exchange. */
static void phase_done(struct vd_cluster *c, struct rrun *run)
{
    while (run->pending == 0) {
        enum phase was = run->ph;
        if (run->failed || was == PH_WRITE) {
            arc_end(c, run);
            return;
        }
        if (was == PH_NONE)
            start_trees(c, run);
        else if (was == PH_TREE)
            start_leaves(c, run);
        else if (was == PH_LEAF)
            start_reads(c, run);
        else
            start_writes(c, run);
        if (run->pending == 0 && run->ph == was) {
            arc_end(c, run); /* nothing more to exchange */
            return;
        }
    }
}

/* Runs arcs until one waits for replies; finishes the run after the last. */
static void advance(struct vd_cluster *c, struct rrun *run)
{
    while (run->pending == 0) {
        if (run->i == run->n) {
            run_finish(c, run);
            return;
        }
        phase_done(c, run);
    }
}

/* ---- starting a run ------------------------------------------------------------------------ */

static int urgent_first(const void *pa, const void *pb)
{
    const struct rrange *a = pa, *b = pb;
    if (a->urgent != b->urgent)
        return a->urgent ? -1 : 1;
    if (a->coll != b->coll)
        return a->coll < b->coll ? -1 : 1;
    return (a->start > b->start) - (a->start < b->start);
}

/* The arcs of collection `only` (NULL: all) that this node replicates, urgent ones first. */
static int plan_run(struct vd_cluster *c, struct rrun *run, const char *only)
{
    const struct vd_meta *m = c->meta;
    size_t ring = vd_meta_ring_size(m), n_colls = vd_meta_n_collections(m);
    uint64_t(*arcs)[2] = malloc((ring ? ring : 1) * sizeof *arcs);
    run->colls = calloc(n_colls ? n_colls : 1, sizeof *run->colls);
    run->r = calloc((ring ? ring : 1) * (n_colls ? n_colls : 1), sizeof *run->r);
    if (!arcs || !run->colls || !run->r) {
        free(arcs);
        return VD_ENOMEM;
    }
    size_t n_arcs = vd_meta_arcs(m, arcs);
    for (size_t i = 0; i < vd_meta_n_members(m); i++) {
        uint64_t id = vd_meta_member_at(m, i)->id, marks;
        if (run->n_marks < MAX_MEMBERS && vd__cluster_hints_repair_mark(c, id, &marks))
            run->marks[run->n_marks++] = (struct rmark){id, marks, false};
    }
    for (size_t ci = 0; ci < n_colls; ci++) {
        const struct vd_coll_schema *s = vd_meta_collection_at(m, ci);
        if (only && strcmp(only, s->name))
            continue;
        struct rcoll *co = &run->colls[run->n_colls];
        snprintf(co->name, sizeof co->name, "%s", s->name);
        co->inc = s->incarnation;
        for (size_t k = 0; k < n_arcs; k++) {
            struct vd_placement p;
            vd_meta_place(m, arcs[k][1], s->replication_factor, &p);
            bool mine = false, urgent = false;
            for (size_t j = 0; j < p.n_natural; j++) {
                mine |= p.natural[j] == c->id;
                urgent |= vd__cluster_hints_needs_repair(c, p.natural[j]); /* others' marks too */
            }
            if (!mine || p.n_natural < 2)
                continue; /* one replica has no one to compare with */
            struct rrange *a = &run->r[run->n++];
            *a = (struct rrange){.coll = (uint32_t)run->n_colls,
                                 .start = arcs[k][0],
                                 .end = arcs[k][1],
                                 .n_rep = (unsigned)p.n_natural,
                                 .urgent = urgent};
            memcpy(a->rep, p.natural, p.n_natural * sizeof *a->rep);
        }
        run->n_colls++;
    }
    free(arcs);
    qsort(run->r, run->n, sizeof *run->r, urgent_first);
    return 0;
}

static void run_start(struct vd_cluster *c, uint64_t id, const char *only)
{
    struct vd_repair *r = c->repair;
    struct rrun *run = calloc(1, sizeof *run);
    if (run) {
        vd_buf_init(&run->recs);
        run->id = id;
        run->all = only == NULL;
    }
    if (!run || plan_run(c, run, only)) {
        struct vd_err e;
        vd_errf(&e, VD_ENOMEM, "repair %llu: out of memory", (unsigned long long)id);
        vd_log_warn("cluster: %s", e.msg);
        if (run)
            run_free(run);
        waiters_call(r, id, VD_ENOMEM, &e, NULL);
        return;
    }
    run->rep.id = id;
    vd_log_info("cluster: repair %llu started: %zu ranges of %s%s%s to compare", (unsigned long long)id,
                run->n, only ? "collection '" : "every collection", only ? only : "",
                only ? "'" : "");
    pthread_mutex_lock(&r->mu);
    r->running = true;
    r->run_id = id;
    r->ranges_done = 0;
    r->ranges_total = run->n;
    pthread_mutex_unlock(&r->mu);
    r->run = run;
}

void vd__cluster_repair_tick(struct vd_cluster *c)
{
    struct vd_repair *r = c->repair;
    if (!r || r->closing)
        return;
    if (!r->run) {
        uint64_t now = vd__cluster_now_ms();
        /* as for hints: only a member that applied what its log held knows its arcs */
        if (c->broken || c->join || vd_meta_applied(c->meta) < c->catchup ||
            !vd_meta_member(c->meta, c->id))
            return;
        pthread_mutex_lock(&r->mu);
        bool asked = r->asked, all = r->asked_all;
        char coll[256];
        snprintf(coll, sizeof coll, "%s", r->asked_coll);
        uint64_t id = r->asked_id;
        if (!asked && r->interval_ms && now >= r->next_at) {
            asked = all = true;
            id = ++r->next_id;
        }
        r->asked = false;
        pthread_mutex_unlock(&r->mu);
        if (!asked)
            return;
        run_start(c, id, all ? NULL : coll);
        if (!r->run)
            return;
    }
    advance(c, r->run);
}

/* ---- the API ------------------------------------------------------------------------------- */

int vd_cluster_repair(struct vd_cluster *c, const char *coll, vd_cluster_repair_fn done, void *ctx,
                      uint64_t *id, struct vd_err *err)
{
    struct vd_repair *r = c->repair;
    if (coll) {
        struct vd_meta_view *v = vd__cluster_view_acquire(c);
        bool known = v && vd_meta_collection(vd_meta_view_state(v), coll);
        vd_meta_view_release(v);
        if (!known)
            return vd_errf(err, VD_ENOTFOUND, "collection '%s' not found", coll);
    }
    struct rwaiter *w = NULL;
    if (done && !(w = calloc(1, sizeof *w)))
        return vd_errf(err, VD_ENOMEM, "out of memory");
    pthread_mutex_lock(&r->mu);
    if (r->closing) {
        pthread_mutex_unlock(&r->mu);
        free(w);
        return vd_errf(err, VD_ECLOSED, "the node is shutting down");
    }
    /* one run waits at a time: a second ask joins it, widened to every collection when the two
     * name different ones */
    if (!r->asked) {
        r->asked = true;
        r->asked_all = coll == NULL;
        snprintf(r->asked_coll, sizeof r->asked_coll, "%s", coll ? coll : "");
        r->asked_id = ++r->next_id;
    } else if (!coll || strcmp(coll, r->asked_coll)) {
        r->asked_all = true;
    }
    *id = r->asked_id;
    if (w) {
        *w = (struct rwaiter){r->waiters, r->asked_id, done, ctx};
        r->waiters = w;
    }
    pthread_mutex_unlock(&r->mu);
    return 0;
}

void vd__cluster_repair_status_json(struct vd_cluster *c, struct vd_buf *b)
{
    struct vd_repair *r = c->repair;
    pthread_mutex_lock(&r->mu);
    vd_buf_printf(b,
                  "\"repair\":{\"state\":\"%s\",\"interval_seconds\":%llu,\"id\":%llu,"
                  "\"ranges_done\":%llu,\"ranges_total\":%llu,\"last_finished\":",
                  r->running ? "running" : "idle", (unsigned long long)(r->interval_ms / 1000),
                  (unsigned long long)(r->running ? r->run_id : r->last_id),
                  (unsigned long long)(r->running ? r->ranges_done : r->last.ranges),
                  (unsigned long long)(r->running ? r->ranges_total : r->last.ranges));
    if (r->last_finished_ms)
        vd_buf_printf(b,
                      "{\"id\":%llu,\"at_ms\":%llu,\"ranges\":%llu,\"ranges_failed\":%llu,"
                      "\"leaves_differing\":%llu,\"points_sent\":%llu}}",
                      (unsigned long long)r->last_id, (unsigned long long)r->last_finished_ms,
                      (unsigned long long)r->last.ranges,
                      (unsigned long long)r->last.ranges_failed,
                      (unsigned long long)r->last.leaves_differing,
                      (unsigned long long)r->last.points_sent);
    else
        vd_buf_puts(b, "null}");
    pthread_mutex_unlock(&r->mu);
}

void vd__cluster_repair_metrics(struct vd_cluster *c, struct vd_buf *out)
{
    struct vd_repair *r = c->repair;
    pthread_mutex_lock(&r->mu);
    vd_buf_printf(
        out,
        "# HELP vectord_repair_runs_total Anti-entropy repair runs finished on this node.\n"
        "# TYPE vectord_repair_runs_total counter\n"
        "vectord_repair_runs_total %llu\n"
        "# HELP vectord_repair_ranges_total Ring ranges compared by repair (with their replicas).\n"
        "# TYPE vectord_repair_ranges_total counter\n"
        "vectord_repair_ranges_total %llu\n"
        "# HELP vectord_repair_ranges_failed_total Ranges repair could not finish (a replica "
        "did not answer).\n"
        "# TYPE vectord_repair_ranges_failed_total counter\n"
        "vectord_repair_ranges_failed_total %llu\n"
        "# HELP vectord_repair_leaves_differing_total Hash tree leaves that differed between "
        "replicas.\n"
        "# TYPE vectord_repair_leaves_differing_total counter\n"
        "vectord_repair_leaves_differing_total %llu\n"
        "# HELP vectord_repair_points_sent_total Records repair wrote to replicas that lacked "
        "them.\n"
        "# TYPE vectord_repair_points_sent_total counter\n"
        "vectord_repair_points_sent_total %llu\n"
        "# HELP vectord_repair_running 1 while a repair run is in progress.\n"
        "# TYPE vectord_repair_running gauge\n"
        "vectord_repair_running %d\n"
        "# HELP vectord_repair_ranges_done Ranges done of the run in progress (or of the last).\n"
        "# TYPE vectord_repair_ranges_done gauge\n"
        "vectord_repair_ranges_done %llu\n",
        (unsigned long long)r->runs_total, (unsigned long long)r->ranges_total_all,
        (unsigned long long)r->ranges_failed_all, (unsigned long long)r->leaves_all,
        (unsigned long long)r->sent_all, r->running ? 1 : 0,
        (unsigned long long)(r->running ? r->ranges_done : r->last.ranges));
    pthread_mutex_unlock(&r->mu);
}

int vd__cluster_repair_new(struct vd_cluster *c, uint64_t interval_ms)
{
    struct vd_repair *r = calloc(1, sizeof *r);
    if (!r)
        return VD_ENOMEM;
    pthread_mutex_init(&r->mu, NULL);
    r->interval_ms = interval_ms;
    r->next_at = interval_ms ? vd__cluster_now_ms() + interval_ms : 0;
    c->repair = r;
    return 0;
}

void vd__cluster_repair_close(struct vd_cluster *c)
{
    struct vd_repair *r = c->repair;
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    r->closing = true;
    r->asked = false;
    r->running = false;
    pthread_mutex_unlock(&r->mu);
    struct rrun *run = r->run;
    r->run = NULL;
    if (run && run->pending == 0)
        run_free(run); /* else the last call's end frees it (call_end) */
    struct vd_err e;
    vd_errf(&e, VD_ECLOSED, "the node is shutting down");
    waiters_call(r, 0, VD_ECLOSED, &e, NULL);
}

void vd__cluster_repair_free(struct vd_cluster *c)
{
    struct vd_repair *r = c->repair;
    if (!r)
        return;
    waiters_call(r, 0, VD_ECLOSED, NULL, NULL); /* none left after close; a start that failed */
    pthread_mutex_destroy(&r->mu);
    free(r);
    c->repair = NULL;
}
