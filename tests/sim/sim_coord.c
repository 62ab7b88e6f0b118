/*
 * Deterministic simulator for the replication coordinator (src/coord).
 *
 * One seed fixes everything: 3-5 nodes on a ring (RF 3), a few keys, client writes, deletes,
 * reads and searches at various W and R through any node, and the faults: message loss,
 * duplication, delay (hence reordering), crashes that lose writes not yet durable and hints not
 * yet synced, restarts, partitions and healing, clock offsets within and beyond max-offset (nodes
 * stamp HLCs from their own clocks; a replica refuses a data frame whose HLC is more than
 * max-offset ahead of its wall clock), and ring versions that nodes learn at different times
 * (placement is kept: moving ranges needs streaming, which is not modelled). Replicas keep the
 * newer copy by vd_version_cmp, the store's rule. The checker (coord_check.c) verifies I1-I7
 * after every step; after the faults, the network heals, hints drain, one read-all sweep runs
 * and every replica must hold the newest durable version.
 *
 *   sim_coord [--seed N] [--seeds COUNT] [--verbose] [--bug NAME] [--expect-violation]
 * VD_TEST_SCALE=small divides the default seed count by ten.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coord_check.h"
#include "sim_common.h"
#include "vectord/coord.h"
#include "vectord/core.h"

#define MAX_NODES 5
#define RF 3
#define MAX_OFFSET 500 /* ms: --max-clock-offset */
#define MAX_OPS 256
#define BASE_MS 1000000 /* virtual time starts here so skewed clocks stay positive */

/* ---- deterministic randomness ------------------------------------------------------------ */

static float rnd_unit(void)
{
    return (float)((double)(rnd() >> 40) / (double)(1u << 24)) * 2.0f - 1.0f;
}

/* ---- state ------------------------------------------------------------------------------- */

enum {
    M_WRITE = 1,
    M_READ,
    M_SEARCH,
    M_VERIFY,
    M_REPLY,
    E_DISK,
    E_HINT_SYNC,
    E_RING_LEARN,
    E_RING_FETCH
};
enum { W_CLIENT = 0, W_REPAIR, W_HINT, W_BG_REPAIR }; /* what a M_WRITE carries */

struct msg {
    uint8_t type, sub;
    int from, to; /* node ids */
    uint32_t op, attempt, range, k;
    uint64_t ring_version, hlc, epoch;
    unsigned key;
    struct chk_copy rec;
    struct vd_pid id;
    struct vd_coord_reply r;
    struct vd_coord_cand *cands; /* owned by the message */
};

struct event {
    uint64_t at, seq; /* struct sim_when */
    struct msg m;
};

struct hint {
    uint32_t id;
    int target;
    unsigned key;
    struct chk_copy rec;
    bool durable;
    uint64_t inflight_until;
};

struct node {
    bool alive;
    uint64_t epoch;
    int64_t offset;
    struct vd_hlc hlc;
    uint64_t ring_ver;
    uint32_t disk_ms;
    uint64_t spec_ms; /* its speculative delay (the host's p99 round trip); 0: the floor */
    struct chk_copy store[CHK_MAX_KEYS];
    struct hint *hints;
    size_t n_hints, cap_hints;
};

struct write {
    unsigned key;
    struct chk_rec rec;
};

struct sop {
    bool used;
    uint8_t kind; /* M_WRITE, M_READ, M_SEARCH */
    int coord;
    uint64_t epoch;
    uint32_t id;
    struct vd_coord_op *op;
    unsigned key;
    uint32_t wid;
    float q[2];
    int filter;
    uint32_t want;                         /* searches: offset + limit, the first round's k */
    struct chk_copy ans[MAX_NODES + 1][8]; /* reads: the copies each replica answered */
    unsigned n_ans[MAX_NODES + 1];
};

static struct {
    uint64_t seed;
    bool verbose;
    enum vd_coord_bug bug;
    uint64_t now, steps, seq;
    unsigned n_nodes, n_keys;
    struct node nodes[MAX_NODES + 1];
    bool blocked[MAX_NODES + 1][MAX_NODES + 1];
    double loss, dup;
    uint32_t delay_max;
    bool within; /* clock offsets stay within max-offset for the whole run */
    bool faults, clients;
    struct vd_coord_token tokens[MAX_NODES * 4];
    size_t n_tokens;
    uint64_t ring_ver; /* the newest ring version */
    struct sim_heap events;
    struct write *writes;
    size_t n_writes, cap_writes;
    struct sop ops[MAX_OPS];
    uint32_t next_op, next_hint;
    uint64_t next_client, next_fault, next_hint_replay;
} S;

/* Totals over all seeds. */
static struct {
    uint64_t lost, duplicated, partition_drops, closed, crashes, restarts, partitions, heals,
        skew_within, skew_beyond, refused_skew, ring_bumps, wrong_ring, net_changes;
    uint64_t w_acked, w_503, r_ok, r_503, s_ok, s_503, s_incomplete, s_reasked, repairs, hints,
        hints_replayed;
} T;

static void vlog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void vlog(const char *fmt, ...)
{
    if (!S.verbose)
        return;
    va_list ap;
    va_start(ap, fmt);
    printf("[%8" PRIu64 " ms] ", S.now - BASE_MS);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

/* ---- event queue ------------------------------------------------------------------------- */

static void push_event(uint64_t at, const struct msg *m)
{
    struct event e = {at, S.seq++, *m};
    sim_heap_push(&S.events, &e, sizeof(e));
}

static struct event pop_event(void)
{
    struct event e;
    sim_heap_pop(&S.events, &e);
    return e;
}

/* ---- nodes, ring, network ---------------------------------------------------------------- */

static uint64_t wall(int n)
{
    return (uint64_t)((int64_t)S.now + S.nodes[n].offset);
}

static struct vd_coord_ring ring_at(uint64_t version)
{
    return (struct vd_coord_ring){version, S.tokens, S.n_tokens};
}

static uint64_t key_hash(unsigned key)
{
    struct vd_pid id = {.type = VD_PID_NUM, .u.num = key + 1};
    return vd_pid_hash(&id);
}

static struct sop *find_op(uint32_t id)
{
    struct sop *o = &S.ops[id % MAX_OPS];
    return o->used && o->id == id ? o : NULL;
}

static void free_msg(struct msg *m)
{
    free(m->cands);
    m->cands = NULL;
}

/* Puts a message on the wire: lost, duplicated, delayed as the network is now. A request to a
 * dead node may come back as a closed connection, as a refused TCP connect does. */
static void send(struct msg *m)
{
    if (!S.nodes[m->from].alive) {
        free_msg(m);
        return;
    }
    m->hlc = vd_hlc_tick(&S.nodes[m->from].hlc, wall(m->from));
    bool request = m->type != M_REPLY;
    if (!S.nodes[m->to].alive) {
        if (request && m->op && chance(0.5)) {
            struct msg r = {.type = M_REPLY, .from = m->to, .to = m->from, .op = m->op};
            r.r = (struct vd_coord_reply){.status = VD_COORD_CLOSED,
                                          .from = (uint64_t)m->to,
                                          .attempt = m->attempt,
                                          .range = m->range,
                                          .id = m->id};
            r.r.type = m->type == M_WRITE
                           ? (m->sub == W_REPAIR ? VD_COORD_R_REPAIR : VD_COORD_R_WRITE)
                       : m->type == M_READ   ? VD_COORD_R_READ
                       : m->type == M_SEARCH ? VD_COORD_R_SEARCH
                                             : VD_COORD_R_VERIFY;
            r.sub = m->sub;
            r.hlc = 0;
            push_event(S.now + 1, &r);
            T.closed++;
        }
        free_msg(m);
        return;
    }
    if (S.blocked[m->from][m->to]) {
        T.partition_drops++;
        free_msg(m);
        return;
    }
    if (chance(S.loss)) {
        T.lost++;
        free_msg(m);
        return;
    }
    if (chance(S.dup)) {
        struct msg d = *m;
        if (m->cands) {
            d.cands = malloc(m->r.n_cands * sizeof(*d.cands));
            if (!d.cands)
                abort();
            memcpy(d.cands, m->cands, m->r.n_cands * sizeof(*d.cands));
        }
        push_event(S.now + 1 + rnd_below(S.delay_max), &d);
        T.duplicated++;
    }
    push_event(S.now + 1 + rnd_below(S.delay_max), m);
}

static void reply_to(const struct msg *req, uint8_t type, uint8_t status, struct msg *r)
{
    memset(r, 0, sizeof(*r));
    r->type = M_REPLY;
    r->sub = req->sub;
    r->from = req->to;
    r->to = req->from;
    r->op = req->op;
    r->key = req->key;
    r->r.type = type;
    r->r.status = status;
    r->r.from = (uint64_t)req->to;
    r->r.attempt = req->attempt;
    r->r.range = req->range;
    r->r.id = req->id;
    r->r.ring_version = S.nodes[req->to].ring_ver;
}

static uint8_t reply_type(const struct msg *m)
{
    if (m->type == M_WRITE || m->type == E_DISK)
        return m->sub == W_REPAIR || m->sub == W_BG_REPAIR ? VD_COORD_R_REPAIR : VD_COORD_R_WRITE;
    return m->type == M_READ     ? VD_COORD_R_READ
           : m->type == M_SEARCH ? VD_COORD_R_SEARCH
                                 : VD_COORD_R_VERIFY;
}

static bool rec_matches(const struct chk_copy *c, int filter)
{
    if (!c->present || S.writes[c->wid].rec.tomb)
        return false;
    return filter < 0 || S.writes[c->wid].rec.tag == filter;
}

static int cand_rank(const void *pa, const void *pb)
{
    const struct vd_coord_cand *a = pa, *b = pb;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    return vd_pid_cmp(&a->id, &b->id);
}

/* A replica receives a data request. */
static void replica_receive(struct msg *m)
{
    struct node *n = &S.nodes[m->to];
    struct msg r;
    if (VD_HLC_PHYS(m->hlc) > wall(m->to) + MAX_OFFSET) {
        T.refused_skew++;
        reply_to(m, reply_type(m), VD_COORD_REFUSED, &r);
        send(&r);
        return;
    }
    vd_hlc_recv(&n->hlc, m->hlc, wall(m->to));
    if (m->ring_version != n->ring_ver) {
        T.wrong_ring++;
        reply_to(m, reply_type(m), VD_COORD_WRONG_RING, &r);
        send(&r);
        return;
    }
    const struct chk_copy *c = &n->store[m->key];
    switch (m->type) {
    case M_WRITE: {
        /* Applied and acknowledged once durable; a crash before then loses it. */
        struct msg d = *m;
        d.type = E_DISK;
        d.epoch = n->epoch;
        push_event(S.now + n->disk_ms, &d);
        return;
    }
    case M_READ:
        reply_to(m, VD_COORD_R_READ, VD_COORD_OK, &r);
        r.r.copy =
            (struct vd_coord_copy){c->present, c->present && S.writes[c->wid].rec.tomb, c->v};
        r.rec = *c;
        send(&r);
        return;
    case M_SEARCH: {
        struct sop *o = find_op(m->op);
        if (!o)
            return;
        reply_to(m, VD_COORD_R_SEARCH, VD_COORD_OK, &r);
        struct vd_coord_cand all[CHK_MAX_KEYS];
        size_t na = 0;
        for (unsigned k = 0; k < S.n_keys; k++) {
            const struct chk_copy *x = &n->store[k];
            if (!rec_matches(x, o->filter) ||
                !vd_coord_search_in_range(o->op, m->range, key_hash(k)))
                continue;
            all[na++] = (struct vd_coord_cand){{.type = VD_PID_NUM, .u.num = k + 1},
                                               x->v,
                                               chk_score(o->q, S.writes[x->wid].rec.vec)};
        }
        qsort(all, na, sizeof(all[0]), cand_rank);
        size_t take = na < m->k ? na : m->k;
        r.cands = take ? malloc(take * sizeof(*r.cands)) : NULL;
        if (take && !r.cands)
            abort();
        if (take)
            memcpy(r.cands, all, take * sizeof(*r.cands));
        r.r.n_cands = take;
        r.r.complete = na <= m->k;
        send(&r);
        return;
    }
    case M_VERIFY: {
        struct sop *o = find_op(m->op);
        if (!o)
            return;
        unsigned k = (unsigned)(m->id.u.num - 1);
        c = &n->store[k];
        reply_to(m, VD_COORD_R_VERIFY, VD_COORD_OK, &r);
        r.r.copy =
            (struct vd_coord_copy){c->present, c->present && S.writes[c->wid].rec.tomb, c->v};
        r.r.match = rec_matches(c, o->filter);
        r.r.score = r.r.match ? chk_score(o->q, S.writes[c->wid].rec.vec) : 0;
        send(&r);
        return;
    }
    }
}

/* A write became durable on its replica: keep the newer copy by the store's rule, then ack. */
static void disk_done(struct msg *m)
{
    struct node *n = &S.nodes[m->to];
    if (!n->alive || n->epoch != m->epoch)
        return;
    struct chk_copy *c = &n->store[m->key];
    if (!c->present || vd_version_cmp(m->rec.v, c->v) > 0)
        *c = m->rec;
    vd_hlc_recv(&n->hlc, m->rec.v.hlc, wall(m->to));
    chk_apply((unsigned)m->to, m->key, &m->rec);
    struct msg r;
    reply_to(m, reply_type(m), VD_COORD_OK, &r);
    if (m->sub != W_BG_REPAIR)
        send(&r);
}

/* ---- coordinators ------------------------------------------------------------------------ */

static struct vd_version *wversions; /* each write's version, by write id */
static size_t cap_wversions;

static void op_finish(struct sop *o)
{
    vd_coord_op_free(o->op);
    o->used = false;
}

/* The record a replica answered a read with, at version v; the newest it answered when it
 * answered none at v (a planted bug names a version no replica holds: the record is sent
 * under it all the same, as a glue following the core would). */
static struct chk_copy answered(const struct sop *o, uint64_t node, struct vd_version v)
{
    struct chk_copy best = {0};
    for (unsigned i = 0; i < o->n_ans[node]; i++) {
        const struct chk_copy *c = &o->ans[node][i];
        if (!vd_version_cmp(c->v, v))
            return *c;
        if (!best.present || vd_version_cmp(c->v, best.v) > 0)
            best = *c;
    }
    best.v = v;
    return best;
}

static void op_replied(struct sop *o)
{
    struct vd_err e;
    int rc = vd_coord_result(o->op, &e);
    if (o->kind == M_WRITE) {
        rc ? T.w_503++ : T.w_acked++;
        vlog("write %u of key %u: %s", o->wid, o->key, rc ? e.msg : "acknowledged");
        chk_write_end(o->wid, rc == 0, S.now);
    } else if (o->kind == M_READ) {
        struct vd_coord_copy c;
        uint64_t node;
        vd_coord_read_newest(o->op, &c, &node);
        rc ? T.r_503++ : T.r_ok++;
        if (rc) {
            vlog("read %u of key %u: %s", o->id, o->key, e.msg);
            return;
        }
        struct chk_copy got = c.present ? answered(o, node, c.version) : (struct chk_copy){0};
        vlog("read %u of key %u: %s %" PRIu64 "@%" PRIu64, o->id, o->key,
             !c.present    ? "absent"
             : c.tombstone ? "tombstone"
                           : "found",
             c.version.hlc >> 16, c.version.node);
        chk_read_end(o->id, &got, S.now);
    } else {
        rc ? T.s_503++ : T.s_ok++;
        if (rc) {
            vlog("search %u: %s", o->id, e.msg);
            return;
        }
        const struct vd_coord_item *items;
        size_t n;
        bool complete;
        vd_coord_search_items(o->op, &items, &n, &complete);
        T.s_incomplete += !complete;
        unsigned keys[CHK_MAX_KEYS * 4];
        for (size_t i = 0; i < n; i++)
            keys[i] = (unsigned)(items[i].id.u.num - 1);
        vlog("search %u: %zu items", o->id, n);
        chk_search_end(o->id, items, keys, n, complete, S.now);
    }
}

/* Carries out what the core asks, until it asks nothing more. */
static void op_run(struct sop *o)
{
    const struct vd_coord_action *acts;
    size_t n;
    while (o->used && vd_coord_ready(o->op, &acts, &n)) {
        struct vd_coord_action a[64];
        size_t na = n < 64 ? n : 64;
        memcpy(a, acts, na * sizeof(a[0]));
        vd_coord_advance(o->op);
        for (size_t i = 0; i < na; i++) {
            struct msg m = {.from = o->coord,
                            .to = (int)a[i].node,
                            .op = o->id,
                            .attempt = a[i].attempt,
                            .ring_version = a[i].ring_version,
                            .key = o->key,
                            .range = a[i].range,
                            .k = a[i].k,
                            .id = a[i].id};
            switch (a[i].type) {
            case VD_COORD_SEND:
                m.type = o->kind;
                m.sub = W_CLIENT;
                if (o->kind == M_WRITE)
                    m.rec = (struct chk_copy){true, wversions[o->wid], o->wid};
                if (o->kind == M_SEARCH && a[i].k > o->want)
                    T.s_reasked++;
                send(&m);
                break;
            case VD_COORD_VERIFY:
                m.type = M_VERIFY;
                send(&m);
                break;
            case VD_COORD_REPAIR:
                T.repairs++;
                m.type = M_WRITE;
                if (o->kind == M_READ) {
                    /* The record the source answered, under the version the core names. */
                    m.sub = W_REPAIR;
                    m.rec = answered(o, a[i].src, a[i].version);
                } else {
                    /* Background repair after a search: fetched from the holder if it still
                     * holds that version. */
                    m.sub = W_BG_REPAIR;
                    m.key = (unsigned)(a[i].id.u.num - 1);
                    const struct chk_copy *c = &S.nodes[a[i].src].store[m.key];
                    if (!c->present || vd_version_cmp(c->v, a[i].version) != 0)
                        break;
                    m.rec = *c;
                    m.op = 0;
                }
                send(&m);
                break;
            case VD_COORD_HINT: {
                struct node *c = &S.nodes[o->coord];
                c->hints = sim_grow(c->hints, &c->cap_hints, c->n_hints + 1, sizeof(*c->hints));
                struct hint h = {++S.next_hint, (int)a[i].node,
                                 o->key,        {true, wversions[o->wid], o->wid},
                                 false,         0};
                c->hints[c->n_hints++] = h;
                struct msg d = {.type = E_HINT_SYNC, .to = o->coord, .epoch = c->epoch};
                d.attempt = h.id;
                push_event(S.now + c->disk_ms, &d);
                T.hints++;
                vd_coord_hinted(o->op, a[i].node);
                break;
            }
            case VD_COORD_NEED_RING: {
                struct msg f = {.type = E_RING_FETCH, .to = o->coord, .op = o->id};
                push_event(S.now + 5, &f);
                break;
            }
            case VD_COORD_REPLY:
                op_replied(o);
                break;
            }
        }
    }
    if (o->used && vd_coord_done(o->op))
        op_finish(o);
}

static struct sop *op_slot(void)
{
    for (int tries = 0; tries < MAX_OPS; tries++) {
        uint32_t id = ++S.next_op;
        struct sop *o = &S.ops[id % MAX_OPS];
        if (!o->used) {
            memset(o, 0, sizeof(*o));
            o->used = true;
            o->id = id;
            return o;
        }
    }
    return NULL;
}

/* A new operation of this kind coordinated by node coord, for key (0 for a search); NULL when
 * every slot is taken. */
static struct sop *op_begin(uint8_t kind, int coord, unsigned key)
{
    struct sop *o = op_slot();
    if (!o)
        return NULL;
    o->kind = kind;
    o->coord = coord;
    o->epoch = S.nodes[coord].epoch;
    o->key = key;
    return o;
}

/* A replica's speculative delay, as a host's p99 window gives it (vd_coord_params.spec_of). */
static uint64_t node_spec_ms(void *ctx, uint64_t node)
{
    (void)ctx;
    return node <= MAX_NODES ? S.nodes[node].spec_ms : 0;
}

static struct vd_coord_params op_params(int coord, unsigned need)
{
    return (struct vd_coord_params){.rf = RF,
                                    .need = need,
                                    .now_ms = S.now,
                                    .timeout_ms = 1000 + rnd_below(1001),
                                    .spec_ms = 20 + rnd_below(40),
                                    .spec_of = node_spec_ms,
                                    .retry_ms = 10,
                                    .prefer = (uint64_t)coord,
                                    .bug = S.bug};
}

static unsigned pick_level(void)
{
    /* Mostly quorum, sometimes one or all. */
    uint64_t x = rnd_below(10);
    return x < 6 ? 2 : x < 8 ? 1 : 3;
}

static void start_write(int coord, unsigned key, uint64_t stamp_hlc)
{
    struct sop *o = op_begin(M_WRITE, coord, key);
    if (!o)
        return;
    struct node *n = &S.nodes[coord];
    uint32_t wid = (uint32_t)S.n_writes++;
    S.writes = sim_grow(S.writes, &S.cap_writes, S.n_writes, sizeof(*S.writes));
    wversions = sim_grow(wversions, &cap_wversions, S.n_writes, sizeof(*wversions));
    struct chk_rec rec = {chance(0.15), {rnd_unit(), rnd_unit()}, (uint8_t)rnd_below(2)};
    S.writes[wid] = (struct write){key, rec};
    struct vd_version v = {stamp_hlc ? stamp_hlc : vd_hlc_tick(&n->hlc, wall(coord)),
                           (uint64_t)coord};
    wversions[wid] = v;
    unsigned w = pick_level();
    chk_write_begin(wid, key, v, &rec, w, S.now);
    o->wid = wid;
    struct vd_coord_params p = op_params(coord, w);
    struct vd_coord_ring ring = ring_at(n->ring_ver);
    if (vd_coord_write_new(&p, &ring, key_hash(key), v, &o->op)) {
        o->used = false;
        return;
    }
    vlog("write %u of key %u%s through node %d at W=%u, version %" PRIu64 ".%" PRIu64, wid, key,
         rec.tomb ? " (delete)" : "", coord, w, v.hlc >> 16, v.hlc & 0xffff);
    op_run(o);
}

static void start_read(int coord, unsigned key, unsigned r)
{
    struct sop *o = op_begin(M_READ, coord, key);
    if (!o)
        return;
    struct node *n = &S.nodes[coord];
    struct vd_coord_params p = op_params(coord, r);
    struct vd_coord_ring ring = ring_at(n->ring_ver);
    if (vd_coord_read_new(&p, &ring, key_hash(key), &o->op)) {
        o->used = false;
        return;
    }
    chk_read_begin(o->id, key, r, S.now);
    op_run(o);
}

static void start_search(int coord)
{
    struct sop *o = op_begin(M_SEARCH, coord, 0);
    if (!o)
        return;
    struct node *n = &S.nodes[coord];
    o->q[0] = rnd_unit();
    o->q[1] = rnd_unit();
    o->filter = chance(0.3) ? (int)rnd_below(2) : -1;
    unsigned r = pick_level();
    uint32_t offset = (uint32_t)rnd_below(2), limit = 1 + (uint32_t)rnd_below(3);
    o->want = offset + limit;
    struct vd_coord_params p = op_params(coord, r);
    struct vd_coord_ring ring = ring_at(n->ring_ver);
    if (vd_coord_search_new(&p, &ring, offset, limit, &o->op)) {
        o->used = false;
        return;
    }
    chk_search_begin(o->id, r, o->q, o->filter, offset, limit, S.now);
    op_run(o);
}

/* A reply reaches its coordinator (or a hint's holder). */
static void coord_receive(struct msg *m)
{
    struct node *n = &S.nodes[m->to];
    if (m->hlc)
        vd_hlc_recv(&n->hlc, m->hlc, wall(m->to));
    if (m->sub == W_HINT) {
        for (size_t i = 0; i < n->n_hints; i++)
            if (n->hints[i].id == m->r.attempt) {
                if (m->r.status == VD_COORD_OK) {
                    n->hints[i] = n->hints[--n->n_hints];
                    T.hints_replayed++;
                } else {
                    n->hints[i].inflight_until = 0;
                }
                break;
            }
        return;
    }
    struct sop *o = find_op(m->op);
    if (!o || o->coord != m->to || o->epoch != n->epoch)
        return;
    if (m->r.type == VD_COORD_R_READ && m->r.status == VD_COORD_OK && m->rec.present &&
        o->n_ans[m->r.from] < 8)
        o->ans[m->r.from][o->n_ans[m->r.from]++] = m->rec;
    m->r.cands = m->cands;
    vd_coord_tick(o->op, S.now);
    vd_coord_step(o->op, &m->r);
    op_run(o);
}

static void replay_hints(void)
{
    for (unsigned i = 1; i <= S.n_nodes; i++) {
        struct node *n = &S.nodes[i];
        if (!n->alive)
            continue;
        for (size_t h = 0; h < n->n_hints; h++) {
            struct hint *x = &n->hints[h];
            if (!x->durable || x->inflight_until > S.now)
                continue;
            x->inflight_until = S.now + 300;
            struct msg m = {.type = M_WRITE,
                            .sub = W_HINT,
                            .from = (int)i,
                            .to = x->target,
                            .attempt = x->id,
                            .ring_version = n->ring_ver,
                            .key = x->key,
                            .rec = x->rec};
            send(&m);
        }
    }
}

/* ---- faults and clients ------------------------------------------------------------------ */

static void crash(int i)
{
    struct node *n = &S.nodes[i];
    n->alive = false;
    n->epoch++;
    /* Hints not yet synced are lost with the process; so are its requests in progress. */
    size_t k = 0;
    for (size_t h = 0; h < n->n_hints; h++)
        if (n->hints[h].durable)
            n->hints[k++] = n->hints[h];
    n->n_hints = k;
    for (int o = 0; o < MAX_OPS; o++)
        if (S.ops[o].used && S.ops[o].coord == i)
            op_finish(&S.ops[o]);
    T.crashes++;
    vlog("crash node %d", i);
}

static void restart(int i)
{
    struct node *n = &S.nodes[i];
    n->alive = true;
    n->ring_ver = S.ring_ver; /* it reads the ring from Raft before serving */
    for (size_t h = 0; h < n->n_hints; h++)
        n->hints[h].inflight_until = 0;
    T.restarts++;
    vlog("restart node %d", i);
}

static int alive_node(void)
{
    int c[MAX_NODES], n = 0;
    for (unsigned i = 1; i <= S.n_nodes; i++)
        if (S.nodes[i].alive)
            c[n++] = (int)i;
    return n ? c[rnd_below((uint64_t)n)] : 0;
}

static void fault(void)
{
    switch (rnd_below(10)) {
    case 0: {
        int i = 1 + (int)rnd_below(S.n_nodes), alive = 0;
        for (unsigned j = 1; j <= S.n_nodes; j++)
            alive += S.nodes[j].alive;
        if (S.nodes[i].alive && alive > 1)
            crash(i);
        break;
    }
    case 1:
        for (unsigned i = 1; i <= S.n_nodes; i++)
            if (!S.nodes[i].alive) {
                restart((int)i);
                break;
            }
        break;
    case 2: {
        /* A random split into two sides. */
        uint32_t side = (uint32_t)rnd();
        for (unsigned a = 1; a <= S.n_nodes; a++)
            for (unsigned b = 1; b <= S.n_nodes; b++)
                S.blocked[a][b] = ((side >> a) & 1) != ((side >> b) & 1);
        T.partitions++;
        vlog("partition %x", side);
        break;
    }
    case 3:
        memset(S.blocked, 0, sizeof(S.blocked));
        T.heals++;
        vlog("heal");
        break;
    case 4:
        S.loss = chance(0.5) ? 0 : (double)rnd_below(20) / 100.0;
        S.dup = chance(0.5) ? 0 : (double)rnd_below(20) / 100.0;
        S.delay_max = chance(0.3) ? 200 : chance(0.5) ? 30 : 5;
        T.net_changes++;
        break;
    case 5: {
        int i = 1 + (int)rnd_below(S.n_nodes);
        int64_t span = S.within ? MAX_OFFSET / 2 : 3 * MAX_OFFSET;
        S.nodes[i].offset = (int64_t)rnd_below((uint64_t)(2 * span + 1)) - span;
        if (S.nodes[i].offset > MAX_OFFSET / 2 || S.nodes[i].offset < -MAX_OFFSET / 2)
            T.skew_beyond++;
        else
            T.skew_within++;
        vlog("clock of node %d now %+" PRId64 " ms", i, S.nodes[i].offset);
        break;
    }
    case 6: {
        /* A new ring version (same placement) that nodes learn at different times. */
        S.ring_ver++;
        for (unsigned i = 1; i <= S.n_nodes; i++) {
            struct msg m = {.type = E_RING_LEARN, .to = (int)i, .ring_version = S.ring_ver};
            push_event(S.now + rnd_below(200), &m);
        }
        T.ring_bumps++;
        break;
    }
    default:
        break;
    }
}

static void client(void)
{
    int c = alive_node();
    if (!c)
        return;
    uint64_t x = rnd_below(20);
    unsigned key = (unsigned)rnd_below(S.n_keys);
    if (x < 9) {
        start_write(c, key, 0);
    } else if (x < 10) {
        /* Two coordinators write one key in the same millisecond: with clocks in step their
         * HLCs are equal and only the node id orders them. */
        int d = alive_node();
        if (d && d != c) {
            uint64_t h = VD_HLC_MAKE(S.now, 0);
            if (S.nodes[c].hlc.last < h && S.nodes[d].hlc.last < h && !S.nodes[c].offset &&
                !S.nodes[d].offset) {
                S.nodes[c].hlc.last = S.nodes[d].hlc.last = h;
                start_write(c, key, h);
                start_write(d, key, h);
                return;
            }
        }
        start_write(c, key, 0);
    } else if (x < 17) {
        start_read(c, key, pick_level());
    } else {
        start_search(c);
    }
}

/* ---- main loop --------------------------------------------------------------------------- */

static bool step(uint64_t until)
{
    uint64_t best = UINT64_MAX;
    int kind = 0;
    struct sop *due = NULL;
    for (int i = 0; i < MAX_OPS; i++)
        if (S.ops[i].used) {
            uint64_t t = vd_coord_next_deadline(S.ops[i].op);
            if (t < best) {
                best = t < S.now ? S.now : t;
                due = &S.ops[i];
                kind = 1;
            }
        }
    if (sim_heap_next(&S.events) < best) {
        best = sim_heap_next(&S.events);
        kind = 2;
    }
    if (S.clients && S.next_client < best) {
        best = S.next_client;
        kind = 3;
    }
    if (S.faults && S.next_fault < best) {
        best = S.next_fault;
        kind = 4;
    }
    if (S.next_hint_replay < best) {
        best = S.next_hint_replay;
        kind = 5;
    }
    if (best > until)
        return false;
    S.now = best;
    S.steps++;
    switch (kind) {
    case 1:
        vd_coord_tick(due->op, S.now);
        op_run(due);
        break;
    case 2: {
        struct event e = pop_event();
        struct msg *m = &e.m;
        switch (m->type) {
        case M_WRITE:
        case M_READ:
        case M_SEARCH:
        case M_VERIFY:
            if (S.nodes[m->to].alive)
                replica_receive(m);
            break;
        case M_REPLY:
            if (S.nodes[m->to].alive)
                coord_receive(m);
            break;
        case E_DISK:
            disk_done(m);
            break;
        case E_HINT_SYNC: {
            struct node *n = &S.nodes[m->to];
            for (size_t h = 0; n->epoch == m->epoch && h < n->n_hints; h++)
                if (n->hints[h].id == m->attempt)
                    n->hints[h].durable = true;
            break;
        }
        case E_RING_LEARN:
            if (S.nodes[m->to].ring_ver < m->ring_version)
                S.nodes[m->to].ring_ver = m->ring_version;
            break;
        case E_RING_FETCH: {
            struct sop *o = find_op(m->op);
            if (!o || !S.nodes[o->coord].alive)
                break;
            S.nodes[o->coord].ring_ver = S.ring_ver;
            struct vd_coord_ring ring = ring_at(S.ring_ver);
            vd_coord_tick(o->op, S.now);
            vd_coord_reroute(o->op, &ring);
            op_run(o);
            break;
        }
        }
        free_msg(m);
        break;
    }
    case 3:
        client();
        S.next_client = S.now + 5 + rnd_below(35);
        break;
    case 4:
        fault();
        S.next_fault = S.now + 30 + rnd_below(270);
        break;
    case 5:
        replay_hints();
        S.next_hint_replay = S.now + 50;
        break;
    }
    return true;
}

static void sim_reset(void)
{
    for (int i = 0; i < MAX_OPS; i++)
        if (S.ops[i].used)
            op_finish(&S.ops[i]);
    for (size_t i = 0; i < S.events.n; i++)
        free_msg(&((struct event *)sim_heap_at(&S.events, i))->m);
    for (unsigned i = 0; i <= MAX_NODES; i++)
        free(S.nodes[i].hints);
    sim_heap_free(&S.events);
    free(S.writes);
    bool verbose = S.verbose;
    enum vd_coord_bug bug = S.bug;
    memset(&S, 0, sizeof(S));
    S.verbose = verbose;
    S.bug = bug;
}

static bool ops_idle(void)
{
    for (int i = 0; i < MAX_OPS; i++)
        if (S.ops[i].used)
            return false;
    return true;
}

static bool hints_left(void)
{
    for (unsigned i = 1; i <= S.n_nodes; i++)
        if (S.nodes[i].n_hints)
            return true;
    return false;
}

static bool run_seed(uint64_t seed, uint64_t *steps)
{
    sim_reset();
    S.seed = seed;
    sim_seed(seed);
    S.now = BASE_MS;
    S.n_nodes = 3 + (unsigned)rnd_below(3);
    S.n_keys = 3 + (unsigned)rnd_below(6);
    S.within = chance(0.5);
    unsigned per = 1 + (unsigned)rnd_below(4);
    for (unsigned i = 1; i <= S.n_nodes; i++) {
        S.nodes[i].alive = true;
        S.nodes[i].ring_ver = 1;
        S.nodes[i].disk_ms = 1 + (uint32_t)rnd_below(20);
        /* half the replicas are usually slower than the floor, some far slower */
        S.nodes[i].spec_ms = chance(0.5) ? 0 : rnd_below(chance(0.2) ? 800 : 120);
        for (unsigned t = 0; t < per; t++)
            S.tokens[S.n_tokens++] = (struct vd_coord_token){rnd(), i};
    }
    vd_coord_ring_sort(S.tokens, S.n_tokens);
    S.ring_ver = 1;
    S.delay_max = 5;
    struct vd_coord_ring ring = ring_at(1);
    chk_reset(S.n_nodes, S.n_keys, RF, MAX_OFFSET, S.within, &ring);
    vlog("seed %" PRIu64 ": %u nodes, %u keys, %u tokens each, clocks %s max-offset", seed,
         S.n_nodes, S.n_keys, per, S.within ? "within" : "beyond");

    /* Fault phase. */
    S.faults = S.clients = true;
    S.next_client = S.now + 1;
    S.next_fault = S.now + 20;
    S.next_hint_replay = S.now + 50;
    uint64_t end = S.now + 1500 + rnd_below(2500);
    while (!chk_violation[0] && step(end))
        ;
    /* Heal: network repaired, every node up, clocks in step; wait out any HLC a fast clock
     * left ahead, until requests finish and hints drain. */
    S.faults = S.clients = false;
    memset(S.blocked, 0, sizeof(S.blocked));
    S.loss = S.dup = 0;
    S.delay_max = 5;
    for (unsigned i = 1; i <= S.n_nodes; i++) {
        S.nodes[i].offset = 0;
        if (!S.nodes[i].alive)
            restart((int)i);
        S.nodes[i].ring_ver = S.ring_ver;
    }
    uint64_t heal = S.now;
    while (!chk_violation[0] && step(S.now + 1) && S.now < heal + 4 * MAX_OFFSET)
        ;
    while (!chk_violation[0] && (hints_left() || !ops_idle()) && S.now < heal + 30000)
        if (!step(S.now + 100))
            S.now += 100;
    if (!chk_violation[0] && (hints_left() || !ops_idle()))
        snprintf(chk_violation, sizeof(chk_violation),
                 "hints did not drain within 30 s of healing");
    /* One read-all sweep, then I6. */
    for (unsigned k = 0; k < S.n_keys && !chk_violation[0]; k++) {
        start_read(1 + (int)rnd_below(S.n_nodes), k, RF);
        uint64_t t0 = S.now;
        while (!chk_violation[0] && !ops_idle() && S.now < t0 + 10000)
            if (!step(S.now + 100))
                S.now += 100;
    }
    if (!chk_violation[0])
        chk_final();
    *steps = S.steps;
    return chk_violation[0] == 0;
}

int main(int argc, char **argv)
{
    uint64_t first = 1, count = 0;
    bool expect_violation = false, one = false, verbose = false;
    enum vd_coord_bug bug = VD_COORD_BUG_NONE;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            first = strtoull(argv[++i], NULL, 10);
            one = true;
        } else if (!strcmp(argv[i], "--seeds") && i + 1 < argc) {
            count = strtoull(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--verbose")) {
            verbose = true;
        } else if (!strcmp(argv[i], "--expect-violation")) {
            expect_violation = true;
        } else if (!strcmp(argv[i], "--bug") && i + 1 < argc) {
            i++;
            int b;
            for (b = 1; b < VD_COORD__BUG_COUNT; b++)
                if (!strcmp(argv[i], vd_coord_bug_name((enum vd_coord_bug)b)))
                    break;
            if (b == VD_COORD__BUG_COUNT) {
                fprintf(stderr, "sim_coord: unknown bug '%s'\n", argv[i]);
                return 2;
            }
            bug = (enum vd_coord_bug)b;
        } else {
            fprintf(stderr, "usage: sim_coord [--seed N] [--seeds COUNT] [--verbose] [--bug NAME] "
                            "[--expect-violation]\n");
            return 2;
        }
    }
    if (count == 0) {
        const char *scale = getenv("VD_TEST_SCALE");
        count = one ? 1 : 2000;
        if (!one && scale && !strcmp(scale, "small"))
            count = 200;
    }
    S.verbose = verbose;
    S.bug = bug;
    char bugarg[64] = "";
    if (bug)
        snprintf(bugarg, sizeof(bugarg), " --bug %s", vd_coord_bug_name(bug));
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t total_steps = 0, failed = 0, ran = 0;
    for (uint64_t s = first; s < first + count; s++) {
        uint64_t steps = 0;
        bool ok = run_seed(s, &steps);
        ran++;
        total_steps += steps;
        if (!ok) {
            failed++;
            printf("%s seed %" PRIu64 " after %" PRIu64 " steps at %" PRIu64 " ms: %s\n",
                   expect_violation ? "caught:" : "FAIL", s, steps, S.now - BASE_MS, chk_violation);
            printf("  replay: sim_coord --seed %" PRIu64 "%s --verbose\n", s, bugarg);
            if (expect_violation)
                break;
        }
    }
    sim_reset();
    chk_free();
    free(wversions);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("sim_coord: seeds %" PRIu64 "..%" PRIu64 " (%" PRIu64 " run), %" PRIu64
           " steps, %" PRIu64 " invariant checks, %" PRIu64 " failed, %.2f s\n",
           first, first + ran - 1, ran, total_steps, chk_checks, failed, secs);
    printf("sim_coord: faults: %" PRIu64 " messages lost, %" PRIu64 " duplicated, %" PRIu64
           " dropped by partitions, %" PRIu64 " closed connections, %" PRIu64 " crashes, %" PRIu64
           " restarts, %" PRIu64 " partitions, %" PRIu64 " heals, %" PRIu64
           " network changes, %" PRIu64 " clock offsets within and %" PRIu64
           " beyond max-offset, %" PRIu64 " frames refused for skew, %" PRIu64
           " ring versions, %" PRIu64 " wrong-ring answers\n",
           T.lost, T.duplicated, T.partition_drops, T.closed, T.crashes, T.restarts, T.partitions,
           T.heals, T.net_changes, T.skew_within, T.skew_beyond, T.refused_skew, T.ring_bumps,
           T.wrong_ring);
    printf("sim_coord: writes %" PRIu64 " acknowledged, %" PRIu64 " answered 503; reads %" PRIu64
           " answered, %" PRIu64 " 503; searches %" PRIu64 " answered (%" PRIu64
           " incomplete after 3 rounds, %" PRIu64 " phase-1 requests at twice the limit), %" PRIu64
           " 503; %" PRIu64 " repairs, %" PRIu64 " hints stored, %" PRIu64 " replayed\n",
           T.w_acked, T.w_503, T.r_ok, T.r_503, T.s_ok, T.s_incomplete, T.s_reasked, T.s_503,
           T.repairs, T.hints, T.hints_replayed);
    if (expect_violation) {
        if (failed) {
            printf("sim_coord: the planted bug %s was caught\n", vd_coord_bug_name(bug));
            return 0;
        }
        printf("sim_coord: the planted bug %s was NOT caught in %" PRIu64 " seeds\n",
               vd_coord_bug_name(bug), ran);
        return 1;
    }
    return failed ? 1 : 0;
}
