/*
 * The coordinator's decisions for one request: a write, a read or a two-phase search. Contract in
 * include/vectord/coord.h. Every operation keeps one slot per replica it may ask; a slot's answer
 * counts only for the attempt it was asked in, so a duplicated or late reply never counts twice
 * and a rerouted operation never mixes answers from two rings.
 */
#include <assert.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "vectord/coord.h"

enum { OP_WRITE = 1, OP_READ, OP_SEARCH };

enum slot_state {
    S_IDLE = 0, /* not asked (yet) */
    S_ASKED,    /* request outstanding */
    S_RETRY,    /* behind on the ring: ask again at retry_at */
    S_OK,       /* answered (write: durable ack) */
    S_FAILED    /* refused or closed: not asked again in this attempt */
};

struct slot {
    uint64_t node;
    uint8_t st;
    uint32_t gen; /* attempt of the outstanding request */
    uint64_t retry_at;
    bool hint_asked, hinted;
    /* reads */
    struct vd_coord_copy copy;
    bool has_newest;     /* counted toward the repair quorum */
    uint32_t repair_gen; /* 0: no repair sent */
    /* searches */
    struct vd_coord_cand *list;
    size_t n_list;
    bool complete;
};

/* A search candidate of one range, after phase 1 and while it is verified. */
struct rcand {
    struct vd_pid id;
    struct vd_version newest;
    float score;
    bool live;        /* the newest version is no tombstone and matches */
    uint64_t holder;  /* a replica holding the newest version */
    uint32_t pending; /* slots whose verify answer is awaited */
    uint32_t stale;   /* slots known to hold an older version or nothing */
};

struct arc {
    uint64_t start, end;
    uint32_t range;
};

struct range {
    struct slot s[VD_COORD_MAX_RF];
    unsigned n, ok;
    uint32_t k, round, gen;
    uint64_t spec_at;
    bool listed;   /* phase 1 done for this round */
    bool verified; /* phase 2 done */
    struct rcand *cands;
    size_t n_cands;
    uint32_t n_pending;
};

struct vd_coord_op {
    uint8_t kind;
    struct vd_coord_params p;
    uint64_t now, deadline;
    uint64_t ring_version;
    uint64_t hash;
    struct vd_version version; /* writes */
    uint32_t gen;
    bool need_ring; /* a NEED_RING is outstanding */
    bool replied, finished;
    bool deleted; /* a replica answered VD_COORD_GONE */
    int result;
    struct vd_err err;

    /* writes and reads: one replica set */
    struct slot s[VD_COORD_MAX_RF];
    unsigned n;
    unsigned acks; /* writes: durable acks counted; reads: OK answers */
    uint64_t spec_at;

    /* reads */
    bool merged;
    struct vd_coord_copy newest;
    uint64_t newest_node;
    unsigned have; /* replicas known to hold the newest version */

    /* searches */
    uint32_t offset, limit;
    struct arc *arcs;
    size_t n_arcs;
    struct range *ranges;
    uint32_t n_ranges;
    struct vd_coord_item *items;
    size_t n_items, first_item;
    bool complete;

    /* actions */
    struct vd_coord_action *out;
    size_t n_out, cap_out;
    bool oom;
};

static const char *const bug_names[VD_COORD__BUG_COUNT] = {
    [VD_COORD_BUG_NONE] = "none",
    [VD_COORD_BUG_ACK_AT_W_MINUS_1] = "ack-at-w-minus-1",
    [VD_COORD_BUG_DUP_ACK] = "dup-ack",
    [VD_COORD_BUG_HINT_AS_ACK] = "hint-as-ack",
    [VD_COORD_BUG_NO_NODE_TIEBREAK] = "no-node-tiebreak",
    [VD_COORD_BUG_REPAIR_NEW_VERSION] = "repair-new-version",
    [VD_COORD_BUG_SEARCH_NO_VERIFY] = "search-no-verify",
    [VD_COORD_BUG_IGNORE_WRONG_RING] = "ignore-wrong-ring",
};

const char *vd_coord_bug_name(enum vd_coord_bug bug)
{
    return (unsigned)bug < VD_COORD__BUG_COUNT ? bug_names[bug] : "unknown";
}

int vd_coord_version_cmp(const struct vd_coord_op *op, struct vd_version a, struct vd_version b)
{
    if (op->p.bug == VD_COORD_BUG_NO_NODE_TIEBREAK)
        return a.hlc < b.hlc ? -1 : a.hlc > b.hlc;
    return vd_version_cmp(a, b);
}

/* A copy's place in the version order: absent sorts below every version. */
static int copy_cmp(const struct vd_coord_op *op, const struct vd_coord_copy *a,
                    const struct vd_coord_copy *b)
{
    if (a->present != b->present)
        return a->present ? 1 : -1;
    if (!a->present)
        return 0;
    return vd_coord_version_cmp(op, a->version, b->version);
}

/* ---- actions ----------------------------------------------------------------------------- */

/* Appends an action. The array keeps one spare slot, so the REPLY that reports an allocation
 * failure always fits. */
static struct vd_coord_action *push(struct vd_coord_op *op, uint8_t type, uint64_t node)
{
    if (op->n_out + 2 > op->cap_out) {
        size_t cap = op->cap_out * 2;
        struct vd_coord_action *a = realloc(op->out, cap * sizeof(*a));
        if (!a) {
            op->oom = true;
            if (op->n_out + 1 > op->cap_out)
                return NULL;
        } else {
            op->out = a;
            op->cap_out = cap;
        }
    }
    struct vd_coord_action *a = &op->out[op->n_out++];
    memset(a, 0, sizeof(*a));
    a->type = type;
    a->node = node;
    a->ring_version = op->ring_version;
    return a;
}

static void reply(struct vd_coord_op *op, int result)
{
    if (op->replied)
        return;
    op->replied = true;
    op->result = result;
    if (!result)
        vd_err_clear(&op->err);
    push(op, VD_COORD_REPLY, 0);
}

/* Answers the client with VD_EUNAVAIL and the numbers (a macro: the message is formatted by
 * vd_errf, so the core needs no stdio of its own). */
#define FAIL(op, ...)                                                                              \
    do {                                                                                           \
        if (!(op)->replied) {                                                                      \
            vd_errf(&(op)->err, VD_EUNAVAIL, __VA_ARGS__);                                         \
            reply((op), VD_EUNAVAIL);                                                              \
        }                                                                                          \
    } while (0)

static void fail_oom(struct vd_coord_op *op)
{
    if (op->replied) {
        op->finished = true;
        return;
    }
    vd_errf(&op->err, VD_ENOMEM, "coordinator out of memory");
    reply(op, VD_ENOMEM);
    op->finished = true;
}

/* A replica applied the deletion of the collection incarnation. Raft orders the deletion before
 * anything that could bring the incarnation back, so one such answer is final: the client hears
 * "not found" (never a 503 for a collection that no longer exists), and the operation ends with
 * no hint or repair for data that every node purges. */
static void gone(struct vd_coord_op *op)
{
    if (!op->replied) {
        vd_errf(&op->err, VD_ENOTFOUND, "the collection was deleted");
        reply(op, VD_ENOTFOUND);
    }
    op->deleted = true;
    op->finished = true;
}

/* The status an answer is taken with: a wrong-ring answer taken as an ordinary one is a planted
 * bug, which the simulator's checker must catch. */
static uint8_t answer_status(const struct vd_coord_op *op, const struct vd_coord_reply *r)
{
    if (r->status == VD_COORD_WRONG_RING && op->p.bug == VD_COORD_BUG_IGNORE_WRONG_RING)
        return VD_COORD_OK;
    return r->status;
}

/* Sends the operation's request to a slot's replica; gen 0 starts a new attempt. */
static void ask(struct vd_coord_op *op, struct slot *s, uint32_t range, uint32_t k, uint32_t gen)
{
    s->st = S_ASKED;
    s->gen = gen ? gen : ++op->gen;
    struct vd_coord_action *a = push(op, VD_COORD_SEND, s->node);
    if (a) {
        a->attempt = s->gen;
        a->range = range;
        a->k = k;
    }
}

/* Asks the first slot of s[0..n) not asked yet, if any (as ask does). */
static void ask_next(struct vd_coord_op *op, struct slot *s, unsigned n, uint32_t range, uint32_t k,
                     uint32_t gen)
{
    for (unsigned i = 0; i < n; i++)
        if (s[i].st == S_IDLE) {
            ask(op, &s[i], range, k, gen);
            return;
        }
}

/* When a read or a search asks one more replica if those asked in s[0..n) have not all
 * answered: after the longest speculative delay among the replicas still awaited (a replica is
 * late once it exceeds its own usual round trip, spec_of), at least spec_ms; never when spec_ms
 * is 0. */
static uint64_t spec_deadline(const struct vd_coord_op *op, const struct slot *s, unsigned n)
{
    if (!op->p.spec_ms)
        return UINT64_MAX;
    uint64_t d = op->p.spec_ms;
    for (unsigned i = 0; op->p.spec_of && i < n; i++)
        if (s[i].st == S_ASKED) {
            uint64_t x = op->p.spec_of(op->p.spec_ctx, s[i].node);
            d = x > d ? x : d;
        }
    return op->now + d;
}

static void ask_hint(struct vd_coord_op *op, struct slot *s)
{
    if (s->hint_asked)
        return;
    s->hint_asked = true;
    push(op, VD_COORD_HINT, s->node);
}

/* A wrong-ring answer: catch up when the replica is ahead, ask it again later when behind. */
static void wrong_ring(struct vd_coord_op *op, struct slot *s, uint64_t their_version)
{
    if (their_version > op->ring_version) {
        s->st = S_FAILED;
        if (!op->need_ring) {
            op->need_ring = true;
            push(op, VD_COORD_NEED_RING, s->node);
        }
        return;
    }
    s->st = S_RETRY;
    s->retry_at = op->now + (op->p.retry_ms ? op->p.retry_ms : 1);
}

/* Asks again every replica that was behind on the ring once its retry time has come. */
static void retry_due(struct vd_coord_op *op)
{
    for (unsigned i = 0; i < op->n; i++)
        if (op->s[i].st == S_RETRY && op->now >= op->s[i].retry_at)
            ask(op, &op->s[i], 0, 0, 0);
}

/* The order replicas are asked in: the preferred one (the coordinator itself) first, so a read or
 * a search at one is local; those held down last, each group in ring order. */
static void prefer_first(const struct vd_coord_op *op, uint64_t *ids, size_t n)
{
    for (size_t i = 1; i < n && op->p.prefer; i++)
        if (ids[i] == op->p.prefer) {
            memmove(ids + 1, ids, i * sizeof(ids[0]));
            ids[0] = op->p.prefer;
        }
    if (!op->p.down)
        return;
    uint64_t up[VD_COORD_MAX_RF], down[VD_COORD_MAX_RF];
    size_t nu = 0, nd = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] != op->p.prefer && op->p.down(op->p.down_ctx, ids[i]))
            down[nd++] = ids[i];
        else
            up[nu++] = ids[i];
    }
    memcpy(ids, up, nu * sizeof(ids[0]));
    memcpy(ids + nu, down, nd * sizeof(ids[0]));
}

static int place(struct vd_coord_op *op, const struct vd_coord_ring *ring)
{
    uint64_t ids[VD_COORD_MAX_RF];
    size_t n = vd_coord_ring_replicas(ring, op->hash, op->p.rf, ids);
    prefer_first(op, ids, n);
    memset(op->s, 0, sizeof(op->s));
    for (size_t i = 0; i < n; i++)
        op->s[i].node = ids[i];
    op->n = (unsigned)n;
    op->ring_version = ring->version;
    return 0;
}

static struct slot *find_slot(struct slot *s, unsigned n, uint64_t node)
{
    for (unsigned i = 0; i < n; i++)
        if (s[i].node == node)
            return &s[i];
    return NULL;
}

static const char *kind_name(const struct vd_coord_op *op)
{
    return op->kind == OP_WRITE ? "write" : op->kind == OP_READ ? "read" : "search";
}

/* A write or read at its deadline with fewer than `need` answers (acks) fails with the numbers. */
static void fail_unanswered(struct vd_coord_op *op)
{
    FAIL(op, "%s needs %u of %u replicas, %u answered within %" PRIu64 " ms", kind_name(op),
         op->p.need, op->p.rf, op->acks, op->p.timeout_ms);
}

/* ---- writes ------------------------------------------------------------------------------ */

static unsigned write_need(const struct vd_coord_op *op)
{
    if (op->p.bug == VD_COORD_BUG_ACK_AT_W_MINUS_1 && op->p.need > 1)
        return op->p.need - 1;
    return op->p.need;
}

static void write_start(struct vd_coord_op *op)
{
    op->acks = 0;
    for (unsigned i = 0; i < op->n; i++)
        ask(op, &op->s[i], 0, 0, 0);
}

/* Replies at W acks, fails once W cannot be reached before the deadline, finishes once every
 * replica acknowledged or was handed to a hint. */
static void write_check(struct vd_coord_op *op)
{
    unsigned open = 0, settled = 0, failed = 0;
    for (unsigned i = 0; i < op->n; i++) {
        const struct slot *s = &op->s[i];
        open += s->st == S_ASKED || s->st == S_RETRY || s->st == S_IDLE;
        failed += s->st == S_FAILED;
        settled += s->st == S_OK || s->hint_asked;
    }
    if (!op->replied && op->acks >= write_need(op))
        reply(op, 0);
    if (!op->replied && op->acks + open < op->p.need && !op->need_ring)
        FAIL(op, "write needs %u of %u replicas, %u answered and %u refused", op->p.need, op->p.rf,
             op->acks, failed);
    if (op->replied && settled == op->n)
        op->finished = true;
}

static int write_step(struct vd_coord_op *op, const struct vd_coord_reply *r, struct slot *s)
{
    if (r->type != VD_COORD_R_WRITE)
        return VD_EINVAL;
    uint8_t status = answer_status(op, r);
    switch (status) {
    case VD_COORD_OK:
        if (s->st == S_OK) {
            if (op->p.bug == VD_COORD_BUG_DUP_ACK)
                op->acks++;
            break;
        }
        if (s->st != S_ASKED)
            break;
        s->st = S_OK;
        op->acks++;
        break;
    case VD_COORD_WRONG_RING:
        if (s->st == S_ASKED)
            wrong_ring(op, s, r->ring_version);
        break;
    default:
        if (s->st != S_ASKED)
            break;
        /* The replica cannot hold the record from this request: hint it now, not at the
         * deadline, so a coordinator that dies soon after still left the hint behind. */
        s->st = S_FAILED;
        ask_hint(op, s);
        break;
    }
    write_check(op);
    return 0;
}

static void write_tick(struct vd_coord_op *op)
{
    if (op->now >= op->deadline) {
        fail_unanswered(op);
        for (unsigned i = 0; i < op->n; i++)
            if (op->s[i].st != S_OK)
                ask_hint(op, &op->s[i]);
        write_check(op);
        op->finished = true;
        return;
    }
    retry_due(op);
}

void vd_coord_hinted(struct vd_coord_op *op, uint64_t node)
{
    if (op->kind != OP_WRITE)
        return;
    struct slot *s = find_slot(op->s, op->n, node);
    if (!s || s->hinted || !s->hint_asked)
        return;
    s->hinted = true;
    /* A hint is a promise to deliver later, not a copy on a replica: it never counts toward W. */
    if (op->p.bug == VD_COORD_BUG_HINT_AS_ACK) {
        op->acks++;
        write_check(op);
    }
}

/* ---- reads ------------------------------------------------------------------------------- */

static void read_ask_next(struct vd_coord_op *op)
{
    ask_next(op, op->s, op->n, 0, 0, 0);
}

static void read_start(struct vd_coord_op *op)
{
    op->acks = 0;
    op->merged = false;
    op->have = 0;
    for (unsigned i = 0; i < op->n && i < op->p.need; i++)
        ask(op, &op->s[i], 0, 0, 0);
    op->spec_at = spec_deadline(op, op->s, op->n);
}

static bool read_blocking(const struct vd_coord_op *op)
{
    return op->p.need >= vd_coord_quorum(op->p.rf);
}

/* Sends the newest copy to a replica that answered an older one: the same record under the
 * same version, so every replica ends with identical bytes for it. */
static void repair(struct vd_coord_op *op, struct slot *s)
{
    if (s->repair_gen)
        return;
    s->repair_gen = ++op->gen;
    struct vd_coord_action *a = push(op, VD_COORD_REPAIR, s->node);
    if (!a)
        return;
    a->attempt = s->repair_gen;
    a->src = op->newest_node;
    a->version = op->newest.version;
    if (op->p.bug == VD_COORD_BUG_REPAIR_NEW_VERSION)
        a->version.hlc++;
}

/* A replica holds the newest version (it answered it, or acknowledged its repair): it counts
 * once toward the repair quorum. */
static void read_has_newest(struct vd_coord_op *op, struct slot *s)
{
    if (s->has_newest)
        return;
    s->has_newest = true;
    op->have++;
}

/* Weighs one answer against the merged newest: counts it or repairs it. */
static void read_weigh(struct vd_coord_op *op, struct slot *s)
{
    if (copy_cmp(op, &s->copy, &op->newest) >= 0)
        read_has_newest(op, s);
    else
        repair(op, s);
}

static void read_check(struct vd_coord_op *op)
{
    if (!op->merged && op->acks >= op->p.need) {
        op->merged = true;
        const struct slot *best = NULL;
        for (unsigned i = 0; i < op->n; i++)
            if (op->s[i].st == S_OK && (!best || copy_cmp(op, &op->s[i].copy, &best->copy) > 0))
                best = &op->s[i];
        op->newest = best->copy;
        op->newest_node = best->node;
        for (unsigned i = 0; i < op->n; i++)
            if (op->s[i].st == S_OK)
                read_weigh(op, &op->s[i]);
    }
    if (!op->merged)
        return;
    unsigned q = vd_coord_quorum(op->p.rf);
    if (!read_blocking(op) || op->have >= q || !op->newest.present)
        reply(op, 0);
    /* After the answer the operation stays until every replica asked has answered and every
     * repair is acknowledged (or the deadline passed), so a slow replica is repaired too. */
    bool open = false;
    for (unsigned i = 0; i < op->n; i++)
        open |= (op->s[i].repair_gen && !op->s[i].has_newest) || op->s[i].st == S_ASKED ||
                op->s[i].st == S_RETRY;
    if (op->replied && !open)
        op->finished = true;
}

static int read_step(struct vd_coord_op *op, const struct vd_coord_reply *r, struct slot *s)
{
    uint8_t status = answer_status(op, r);
    if (r->type == VD_COORD_R_REPAIR) {
        if (!s->repair_gen || r->attempt != s->repair_gen)
            return 0;
        if (status == VD_COORD_OK)
            read_has_newest(op, s);
        read_check(op);
        return 0;
    }
    if (r->type != VD_COORD_R_READ)
        return VD_EINVAL;
    if (s->st != S_ASKED)
        return 0;
    switch (status) {
    case VD_COORD_OK:
        s->st = S_OK;
        /* A wrong-ring answer taken as an answer (a planted bug) says "nothing here". */
        s->copy = r->status == VD_COORD_OK ? r->copy : (struct vd_coord_copy){0};
        op->acks++;
        if (op->merged)
            read_weigh(op, s);
        break;
    case VD_COORD_WRONG_RING:
        wrong_ring(op, s, r->ring_version);
        break;
    default:
        s->st = S_FAILED;
        if (!op->merged)
            read_ask_next(op);
        break;
    }
    read_check(op);
    return 0;
}

static void read_tick(struct vd_coord_op *op)
{
    if (op->now >= op->deadline) {
        if (!op->merged)
            fail_unanswered(op);
        else
            FAIL(op,
                 "read repair needs the newest version on %u of %u replicas, %u held it within "
                 "%" PRIu64 " ms",
                 vd_coord_quorum(op->p.rf), op->p.rf, op->have, op->p.timeout_ms);
        op->finished = true;
        return;
    }
    retry_due(op);
    if (!op->merged && op->now >= op->spec_at) {
        /* A silent replica (stopped process, cut link: no reset) must not turn reads into
         * 503s: after the speculative delay one more replica is asked. */
        read_ask_next(op);
        op->spec_at = spec_deadline(op, op->s, op->n);
    }
}

/* ---- searches ---------------------------------------------------------------------------- */

/* Result order: higher score first, then lower id, so every replica and the merge agree. */
static int rank_cmp(float sa, const struct vd_pid *a, float sb, const struct vd_pid *b)
{
    if (sa != sb)
        return sa > sb ? -1 : 1;
    return vd_pid_cmp(a, b);
}

static void range_clear(struct range *g)
{
    for (unsigned i = 0; i < g->n; i++) {
        free(g->s[i].list);
        g->s[i].list = NULL;
        g->s[i].n_list = 0;
    }
    free(g->cands);
    g->cands = NULL;
    g->n_cands = 0;
    g->n_pending = 0;
}

static void search_free_ranges(struct vd_coord_op *op)
{
    for (uint32_t r = 0; r < op->n_ranges; r++)
        range_clear(&op->ranges[r]);
    free(op->ranges);
    free(op->arcs);
    free(op->items);
    op->ranges = NULL;
    op->arcs = NULL;
    op->items = NULL;
    op->n_ranges = 0;
    op->n_arcs = 0;
    op->n_items = 0;
}

/* Every request of a round shares the round's attempt. */
static void range_ask_next(struct vd_coord_op *op, struct range *g, uint32_t r)
{
    ask_next(op, g->s, g->n, r, g->k, g->gen);
}

/* Starts a round of phase 1 for range r: the first R replicas that have not failed are asked
 * for their top k. All requests of a round share one attempt, which verify replies echo too. */
static void range_start(struct vd_coord_op *op, uint32_t r)
{
    struct range *g = &op->ranges[r];
    range_clear(g);
    g->gen = ++op->gen;
    g->ok = 0;
    g->listed = g->verified = false;
    unsigned asked = 0;
    for (unsigned i = 0; i < g->n; i++) {
        if (g->s[i].st != S_FAILED)
            g->s[i].st = S_IDLE;
        g->s[i].complete = false;
    }
    for (unsigned i = 0; i < g->n && asked < op->p.need; i++)
        if (g->s[i].st == S_IDLE) {
            range_ask_next(op, g, r);
            asked++;
        }
    g->spec_at = spec_deadline(op, g->s, g->n);
}

static int cand_cmp(const void *pa, const void *pb)
{
    const struct rcand *a = pa, *b = pb;
    return vd_pid_cmp(&a->id, &b->id);
}

/* Phase 2 for one range: the union of the lists, each candidate's newest returned version,
 * and a verify request to every answering replica that did not return it at that version. */
static int range_verify(struct vd_coord_op *op, uint32_t r)
{
    struct range *g = &op->ranges[r];
    size_t total = 0;
    for (unsigned i = 0; i < g->n; i++)
        if (g->s[i].st == S_OK)
            total += g->s[i].n_list;
    g->cands = total ? calloc(total, sizeof(*g->cands)) : NULL;
    if (total && !g->cands)
        return VD_ENOMEM;
    size_t n = 0;
    for (unsigned i = 0; i < g->n; i++)
        for (size_t j = 0; g->s[i].st == S_OK && j < g->s[i].n_list; j++)
            g->cands[n++].id = g->s[i].list[j].id;
    if (n)
        qsort(g->cands, n, sizeof(*g->cands), cand_cmp);
    size_t u = 0;
    for (size_t j = 0; j < n; j++)
        if (u == 0 || !vd_pid_eq(&g->cands[u - 1].id, &g->cands[j].id))
            g->cands[u++] = g->cands[j];
    g->n_cands = u;
    /* Returned versions: a replica's index holds only live, matching points. */
    uint32_t *returned = u ? calloc(u, sizeof(*returned)) : NULL;
    if (u && !returned)
        return VD_ENOMEM;
    for (unsigned i = 0; i < g->n; i++) {
        for (size_t j = 0; g->s[i].st == S_OK && j < g->s[i].n_list; j++) {
            const struct vd_coord_cand *c = &g->s[i].list[j];
            struct rcand key = {.id = c->id};
            struct rcand *rc = bsearch(&key, g->cands, u, sizeof(*g->cands), cand_cmp);
            assert(rc);
            size_t at = (size_t)(rc - g->cands);
            int cmp = returned[at] ? vd_coord_version_cmp(op, c->version, rc->newest) : 1;
            if (cmp > 0) {
                rc->stale |= returned[at]; /* everyone who returned an older one */
                rc->newest = c->version;
                rc->score = c->score;
                rc->holder = g->s[i].node;
                rc->live = true;
            } else if (cmp < 0) {
                rc->stale |= 1u << i;
            }
            returned[at] |= 1u << i;
        }
    }
    g->n_pending = 0;
    for (size_t j = 0; j < u; j++) {
        struct rcand *rc = &g->cands[j];
        for (unsigned i = 0; i < g->n; i++) {
            if (g->s[i].st != S_OK || (returned[j] >> i & 1))
                continue;
            if (op->p.bug == VD_COORD_BUG_SEARCH_NO_VERIFY)
                continue;
            rc->pending |= 1u << i;
            g->n_pending++;
            struct vd_coord_action *a = push(op, VD_COORD_VERIFY, g->s[i].node);
            if (a) {
                a->attempt = g->gen;
                a->range = r;
                a->id = rc->id;
            }
        }
    }
    free(returned);
    g->verified = g->n_pending == 0;
    return 0;
}

static int item_cmp(const void *pa, const void *pb)
{
    const struct vd_coord_item *a = pa, *b = pb;
    return rank_cmp(a->score, &a->id, b->score, &b->id);
}

/* The best-ranking last item of a truncated list in range g: below it, a replica may hold
 * points it did not return. false when every list was complete. */
static bool range_floor(const struct range *g, float *score, struct vd_pid *id)
{
    bool any = false;
    for (unsigned i = 0; i < g->n; i++) {
        const struct slot *s = &g->s[i];
        if (s->st != S_OK || s->complete || s->n_list == 0)
            continue;
        const struct vd_coord_cand *last = &s->list[s->n_list - 1];
        if (!any || rank_cmp(last->score, &last->id, *score, id) < 0) {
            *score = last->score;
            *id = last->id;
            any = true;
        }
    }
    return any;
}

/* All ranges verified: merge, ask again where the result reaches below a floor, or answer. */
static int search_merge(struct vd_coord_op *op)
{
    size_t total = 0;
    for (uint32_t r = 0; r < op->n_ranges; r++)
        total += op->ranges[r].n_cands;
    free(op->items);
    op->items = total ? malloc(total * sizeof(*op->items)) : NULL;
    if (total && !op->items)
        return VD_ENOMEM;
    size_t n = 0;
    for (uint32_t r = 0; r < op->n_ranges; r++)
        for (size_t j = 0; j < op->ranges[r].n_cands; j++) {
            const struct rcand *rc = &op->ranges[r].cands[j];
            if (rc->live)
                op->items[n++] = (struct vd_coord_item){rc->id, rc->newest, rc->score, rc->holder};
        }
    if (n)
        qsort(op->items, n, sizeof(*op->items), item_cmp);
    size_t want = (size_t)op->offset + op->limit;
    bool again = false, short_any = false;
    for (uint32_t r = 0; r < op->n_ranges; r++) {
        struct range *g = &op->ranges[r];
        float fs = 0;
        struct vd_pid fid = {0};
        if (!range_floor(g, &fs, &fid))
            continue;
        bool needs =
            n < want || rank_cmp(op->items[want - 1].score, &op->items[want - 1].id, fs, &fid) > 0;
        if (!needs)
            continue;
        if (g->round >= VD_COORD_MAX_ROUNDS) {
            short_any = true;
            continue;
        }
        g->round++;
        g->k = g->k > UINT32_MAX / 2 ? UINT32_MAX : g->k * 2;
        range_start(op, r);
        again = true;
    }
    if (again)
        return 0;
    /* Background repair of every stale replica seen, with the newest version's record. */
    for (uint32_t r = 0; r < op->n_ranges; r++) {
        struct range *g = &op->ranges[r];
        for (size_t j = 0; j < g->n_cands; j++) {
            const struct rcand *rc = &g->cands[j];
            for (unsigned i = 0; i < g->n; i++) {
                if (!(rc->stale >> i & 1) || g->s[i].node == rc->holder || !rc->holder)
                    continue;
                struct vd_coord_action *a = push(op, VD_COORD_REPAIR, g->s[i].node);
                if (a) {
                    a->id = rc->id;
                    a->src = rc->holder;
                    a->version = rc->newest;
                    a->range = r;
                }
            }
        }
    }
    op->complete = !short_any;
    op->n_items = n < want ? n : want;
    op->first_item = op->offset < op->n_items ? op->offset : op->n_items;
    reply(op, 0);
    op->finished = true;
    return 0;
}

static int search_check(struct vd_coord_op *op)
{
    for (uint32_t r = 0; r < op->n_ranges; r++) {
        struct range *g = &op->ranges[r];
        if (!g->listed && g->ok >= op->p.need) {
            g->listed = true;
            int rc = range_verify(op, r);
            if (rc)
                return rc;
        }
    }
    for (uint32_t r = 0; r < op->n_ranges; r++)
        if (!op->ranges[r].verified)
            return 0;
    if (op->replied)
        return 0;
    return search_merge(op);
}

static int search_phase1(struct vd_coord_op *op, const struct vd_coord_reply *r, struct range *g,
                         struct slot *s)
{
    uint8_t status = answer_status(op, r);
    if (s->st != S_ASKED || r->attempt != g->gen || g->listed)
        return 0;
    switch (status) {
    case VD_COORD_OK: {
        size_t n = r->status == VD_COORD_OK ? r->n_cands : 0;
        if (n > g->k)
            return VD_EINVAL;
        s->list = n ? malloc(n * sizeof(*s->list)) : NULL;
        if (n && !s->list)
            return VD_ENOMEM;
        if (n)
            memcpy(s->list, r->cands, n * sizeof(*s->list));
        s->n_list = n;
        s->complete = r->status != VD_COORD_OK || r->complete || n < g->k;
        s->st = S_OK;
        g->ok++;
        break;
    }
    case VD_COORD_WRONG_RING:
        wrong_ring(op, s, r->ring_version);
        break;
    default:
        s->st = S_FAILED;
        range_ask_next(op, g, r->range);
        break;
    }
    return search_check(op);
}

static int search_verify(struct vd_coord_op *op, const struct vd_coord_reply *r, struct range *g,
                         struct slot *s)
{
    if (r->attempt != g->gen || !g->listed || g->verified)
        return 0;
    unsigned i = (unsigned)(s - g->s);
    struct rcand key = {.id = r->id};
    struct rcand *rc =
        g->n_cands ? bsearch(&key, g->cands, g->n_cands, sizeof(*g->cands), cand_cmp) : NULL;
    if (!rc || !(rc->pending >> i & 1))
        return 0;
    uint8_t status = answer_status(op, r);
    if (status != VD_COORD_OK) {
        /* The range cannot be verified with this replica: run its round again, without it
         * when it refused, after catching up when the ring moved. */
        if (status == VD_COORD_WRONG_RING) {
            wrong_ring(op, s, r->ring_version); /* the tick or the reroute starts it again */
            return 0;
        }
        s->st = S_FAILED;
        range_start(op, (uint32_t)(g - op->ranges));
        return 0;
    }
    rc->pending &= ~(1u << i);
    g->n_pending--;
    struct vd_coord_copy c = r->status == VD_COORD_OK ? r->copy : (struct vd_coord_copy){0};
    struct vd_coord_copy cur = {.present = true, .version = rc->newest};
    int cmp = copy_cmp(op, &c, &cur);
    if (cmp > 0) {
        /* Newer than anything listed: it wins, and may drop the point (tombstone, no match). */
        for (unsigned j = 0; j < g->n; j++)
            if (g->s[j].node == rc->holder)
                rc->stale |= 1u << j;
        rc->newest = c.version;
        rc->live = !c.tombstone && r->match;
        rc->score = r->score;
        rc->holder = s->node;
    } else if (cmp < 0) {
        rc->stale |= 1u << i;
    }
    if (g->n_pending == 0)
        g->verified = true;
    return search_check(op);
}

/* The range whose replicas are those of the arc ending at token end, added when no range has
 * that replica set yet. */
static uint32_t range_of(struct vd_coord_op *op, const struct vd_coord_ring *ring, uint64_t end)
{
    uint64_t ids[VD_COORD_MAX_RF];
    size_t n = vd_coord_ring_replicas(ring, end, op->p.rf, ids);
    for (uint32_t r = 0; r < op->n_ranges; r++) {
        struct range *g = &op->ranges[r];
        bool same = g->n == n;
        for (size_t a = 0; a < n && same; a++)
            same = find_slot(g->s, g->n, ids[a]) != NULL;
        if (same)
            return r;
    }
    struct range *g = &op->ranges[op->n_ranges];
    prefer_first(op, ids, n);
    for (size_t a = 0; a < n; a++)
        g->s[a].node = ids[a];
    g->n = (unsigned)n;
    g->k = op->offset + op->limit;
    g->round = 1;
    return op->n_ranges++;
}

/* Splits the ring into arcs and groups the arcs by replica set: one phase-1 request per replica
 * per group rather than per token. */
static int search_place(struct vd_coord_op *op, const struct vd_coord_ring *ring)
{
    search_free_ranges(op);
    size_t nt = ring->n_tokens;
    op->arcs = calloc(nt, sizeof(*op->arcs));
    op->ranges = calloc(nt, sizeof(*op->ranges));
    uint64_t(*split)[2] = calloc(nt ? nt : 1, sizeof(*split));
    if (!op->arcs || !op->ranges || !split) {
        free(split);
        return VD_ENOMEM;
    }
    size_t n = vd_coord_ring_arcs(ring, split);
    for (size_t i = 0; i < n; i++)
        op->arcs[op->n_arcs++] =
            (struct arc){split[i][0], split[i][1], range_of(op, ring, split[i][1])};
    free(split);
    op->ring_version = ring->version;
    return 0;
}

static void search_tick(struct vd_coord_op *op)
{
    if (op->now >= op->deadline) {
        uint32_t listed = 0;
        for (uint32_t r = 0; r < op->n_ranges; r++)
            listed += op->ranges[r].verified;
        FAIL(op,
             "search needs %u of %u replicas of every range, %u of %u ranges answered within "
             "%" PRIu64 " ms",
             op->p.need, op->p.rf, listed, op->n_ranges, op->p.timeout_ms);
        op->finished = true;
        return;
    }
    for (uint32_t r = 0; r < op->n_ranges; r++) {
        struct range *g = &op->ranges[r];
        bool restart = false;
        for (unsigned i = 0; i < g->n; i++)
            if (g->s[i].st == S_RETRY && op->now >= g->s[i].retry_at) {
                if (g->listed)
                    restart = true;
                else {
                    g->s[i].st = S_IDLE;
                    range_ask_next(op, g, r);
                }
            }
        if (restart) {
            for (unsigned i = 0; i < g->n; i++)
                if (g->s[i].st == S_RETRY)
                    g->s[i].st = S_IDLE;
            range_start(op, r);
        }
        if (!g->listed && op->now >= g->spec_at) {
            range_ask_next(op, g, r);
            g->spec_at = spec_deadline(op, g->s, g->n);
        }
    }
}

uint32_t vd_coord_search_n_ranges(const struct vd_coord_op *op)
{
    return op->kind == OP_SEARCH ? op->n_ranges : 0;
}

bool vd_coord_search_in_range(const struct vd_coord_op *op, uint32_t range, uint64_t hash)
{
    for (size_t i = 0; i < op->n_arcs; i++)
        if (op->arcs[i].range == range &&
            vd_ring_contains(op->arcs[i].start, op->arcs[i].end, hash))
            return true;
    return false;
}

size_t vd_coord_search_arcs(const struct vd_coord_op *op, uint32_t range, uint64_t (*out)[2],
                            size_t max)
{
    size_t n = 0;
    for (size_t i = 0; op->kind == OP_SEARCH && i < op->n_arcs; i++)
        if (op->arcs[i].range == range) {
            if (n < max) {
                out[n][0] = op->arcs[i].start;
                out[n][1] = op->arcs[i].end;
            }
            n++;
        }
    return n;
}

void vd_coord_search_items(const struct vd_coord_op *op, const struct vd_coord_item **items,
                           size_t *n, bool *complete)
{
    *items = op->items ? op->items + op->first_item : NULL;
    *n = op->kind == OP_SEARCH && op->replied && !op->result ? op->n_items - op->first_item : 0;
    *complete = op->complete;
}

/* ---- common ------------------------------------------------------------------------------ */

static int op_new(const struct vd_coord_params *p, const struct vd_coord_ring *ring, uint8_t kind,
                  struct vd_coord_op **out)
{
    *out = NULL;
    if (p->rf == 0 || p->rf > VD_COORD_MAX_RF || p->need == 0 || p->need > p->rf ||
        ring->n_tokens == 0 || (unsigned)p->bug >= VD_COORD__BUG_COUNT)
        return VD_EINVAL;
    struct vd_coord_op *op = calloc(1, sizeof(*op));
    if (!op)
        return VD_ENOMEM;
    op->cap_out = 4 * VD_COORD_MAX_RF + 4;
    op->out = malloc(op->cap_out * sizeof(*op->out));
    if (!op->out) {
        free(op);
        return VD_ENOMEM;
    }
    op->kind = kind;
    op->p = *p;
    op->now = p->now_ms;
    op->deadline = p->now_ms + p->timeout_ms;
    op->result = VD_EBUSY;
    *out = op;
    return 0;
}

/* Fails at once when the ring cannot supply `need` replicas: waiting would not help. */
static bool enough_replicas(struct vd_coord_op *op, unsigned have)
{
    if (have >= op->p.need)
        return true;
    FAIL(op, "%s needs %u of %u replicas, the ring has %u", kind_name(op), op->p.need, op->p.rf,
         have);
    op->finished = true;
    return false;
}

/* A write or a read of one hash: placed, and its first replicas asked. */
static int point_new(const struct vd_coord_params *p, const struct vd_coord_ring *ring,
                     uint8_t kind, uint64_t hash, struct vd_version version,
                     struct vd_coord_op **out)
{
    int rc = op_new(p, ring, kind, out);
    if (rc)
        return rc;
    struct vd_coord_op *op = *out;
    op->hash = hash;
    op->version = version;
    place(op, ring);
    if (!enough_replicas(op, op->n))
        return 0;
    if (kind == OP_WRITE)
        write_start(op);
    else
        read_start(op);
    return 0;
}

int vd_coord_write_new(const struct vd_coord_params *p, const struct vd_coord_ring *ring,
                       uint64_t hash, struct vd_version version, struct vd_coord_op **out)
{
    return point_new(p, ring, OP_WRITE, hash, version, out);
}

int vd_coord_read_new(const struct vd_coord_params *p, const struct vd_coord_ring *ring,
                      uint64_t hash, struct vd_coord_op **out)
{
    return point_new(p, ring, OP_READ, hash, (struct vd_version){0}, out);
}

int vd_coord_search_new(const struct vd_coord_params *p, const struct vd_coord_ring *ring,
                        uint32_t offset, uint32_t limit, struct vd_coord_op **out)
{
    if (limit == 0 || (uint64_t)offset + limit > UINT32_MAX / 8)
        return VD_EINVAL;
    int rc = op_new(p, ring, OP_SEARCH, out);
    if (rc)
        return rc;
    struct vd_coord_op *op = *out;
    op->offset = offset;
    op->limit = limit;
    rc = search_place(op, ring);
    if (rc) {
        vd_coord_op_free(op);
        *out = NULL;
        return rc;
    }
    unsigned least = VD_COORD_MAX_RF;
    for (uint32_t r = 0; r < op->n_ranges; r++)
        least = op->ranges[r].n < least ? op->ranges[r].n : least;
    if (enough_replicas(op, least))
        for (uint32_t r = 0; r < op->n_ranges; r++)
            range_start(op, r);
    return 0;
}

void vd_coord_op_free(struct vd_coord_op *op)
{
    if (!op)
        return;
    search_free_ranges(op);
    free(op->out);
    free(op);
}

int vd_coord_step(struct vd_coord_op *op, const struct vd_coord_reply *r)
{
    /* a finished write still counts late acks; after a deletion nothing counts */
    if (op->finished && (op->kind != OP_WRITE || op->deleted))
        return 0;
    int rc = 0;
    if (op->kind == OP_SEARCH) {
        if (r->type != VD_COORD_R_SEARCH && r->type != VD_COORD_R_VERIFY)
            return VD_EINVAL;
        if (r->range >= op->n_ranges)
            return VD_EINVAL;
        struct range *g = &op->ranges[r->range];
        struct slot *s = find_slot(g->s, g->n, r->from);
        if (!s || op->replied)
            return 0;
        if (r->status == VD_COORD_GONE) {
            gone(op);
            return 0;
        }
        rc = r->type == VD_COORD_R_SEARCH ? search_phase1(op, r, g, s) : search_verify(op, r, g, s);
    } else {
        struct slot *s = find_slot(op->s, op->n, r->from);
        if (!s)
            return 0;
        if (r->type != VD_COORD_R_REPAIR && r->attempt != s->gen)
            return 0;
        if (r->status == VD_COORD_GONE) {
            gone(op);
            return 0;
        }
        rc = op->kind == OP_WRITE ? write_step(op, r, s) : read_step(op, r, s);
    }
    if (rc == VD_ENOMEM || op->oom) {
        fail_oom(op);
        return VD_ENOMEM;
    }
    return rc;
}

void vd_coord_tick(struct vd_coord_op *op, uint64_t now_ms)
{
    if (now_ms > op->now)
        op->now = now_ms;
    if (op->finished)
        return;
    if (op->kind == OP_WRITE)
        write_tick(op);
    else if (op->kind == OP_READ)
        read_tick(op);
    else
        search_tick(op);
    if (op->oom)
        fail_oom(op);
}

int vd_coord_reroute(struct vd_coord_op *op, const struct vd_coord_ring *ring)
{
    if (ring->version <= op->ring_version || ring->n_tokens == 0)
        return 0;
    op->need_ring = false;
    if (op->finished)
        return 0;
    if (op->kind == OP_SEARCH) {
        if (op->replied)
            return 0;
        int rc = search_place(op, ring);
        if (rc) {
            fail_oom(op);
            return rc;
        }
        for (uint32_t r = 0; r < op->n_ranges; r++)
            range_start(op, r);
    } else if (op->kind == OP_WRITE) {
        place(op, ring);
        write_start(op);
        write_check(op);
    } else {
        if (op->replied) {
            /* Only background repair was left; the next read repairs what this one could not. */
            op->finished = true;
            return 0;
        }
        place(op, ring);
        read_start(op);
    }
    if (op->oom) {
        fail_oom(op);
        return VD_ENOMEM;
    }
    return 0;
}

/* The earlier of t and the first retry time among s[0..n). */
static uint64_t first_retry(const struct slot *s, unsigned n, uint64_t t)
{
    for (unsigned i = 0; i < n; i++)
        if (s[i].st == S_RETRY && s[i].retry_at < t)
            t = s[i].retry_at;
    return t;
}

uint64_t vd_coord_next_deadline(const struct vd_coord_op *op)
{
    if (op->finished)
        return UINT64_MAX;
    uint64_t t = op->deadline;
    if (op->kind == OP_READ && !op->merged && op->spec_at < t)
        t = op->spec_at;
    if (op->kind != OP_SEARCH)
        t = first_retry(op->s, op->n, t);
    for (uint32_t r = 0; op->kind == OP_SEARCH && r < op->n_ranges; r++) {
        const struct range *g = &op->ranges[r];
        if (!g->listed && g->spec_at < t)
            t = g->spec_at;
        t = first_retry(g->s, g->n, t);
    }
    return t;
}

bool vd_coord_ready(struct vd_coord_op *op, const struct vd_coord_action **acts, size_t *n)
{
    *acts = op->out;
    *n = op->n_out;
    return op->n_out > 0;
}

void vd_coord_advance(struct vd_coord_op *op)
{
    op->n_out = 0;
}

bool vd_coord_done(const struct vd_coord_op *op)
{
    return op->finished && op->n_out == 0;
}

int vd_coord_result(const struct vd_coord_op *op, struct vd_err *err)
{
    if (!op->replied)
        return VD_EBUSY;
    if (err)
        *err = op->err;
    return op->result;
}

void vd_coord_read_newest(const struct vd_coord_op *op, struct vd_coord_copy *copy, uint64_t *node)
{
    *copy = op->merged ? op->newest : (struct vd_coord_copy){0};
    *node = op->merged ? op->newest_node : 0;
}
