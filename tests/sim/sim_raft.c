/*
 * Deterministic simulator for the Raft core.
 *
 * One seed fixes everything: cluster size, timeouts, the network (loss, duplication, delay and
 * therefore reordering, symmetric and one-way partitions, leader isolation), crashes that lose
 * every write not yet durable, restarts from what was durable, slow disks, client proposals,
 * membership changes, leadership transfers and ReadIndex reads, all in virtual time. After every
 * step the checker verifies election safety, leader append-only, log matching, leader
 * completeness and state-machine safety; after the faults heal it requires a leader within a
 * bounded time and every acknowledged command applied on every live member.
 *
 *   sim_raft [--seed N] [--seeds COUNT] [--verbose] [--bug double-vote|commit-old-term]
 *            [--expect-violation]
 * VD_TEST_SCALE=small divides the default seed count by ten.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sim_common.h"
#include "vectord/core.h"
#include "vectord/raft.h"

#define MAX_NODES 16  /* nodes ever created in one run (ids 1..16) */
#define MAX_MEMBERS 7 /* size of the configuration */
#define MAX_CMDS 4096 /* client commands per run; the state machine is a bitset of them */
#define SNAP_EVERY 24 /* applied entries between snapshots */

/* ---- state ------------------------------------------------------------------------------- */

struct disk {
    uint64_t term, vote;
    bool has_snap;
    uint64_t snap_index, snap_term;
    struct vd_raft_conf snap_conf;
    uint8_t *snap_data;
    size_t snap_len;
    struct vd_raft_entry *ents; /* indexes snap_index+1 .. */
    size_t n_ents, cap;
};

/* The replicated state machine: which commands it has applied, and a hash chain over them. */
struct sm {
    uint64_t index, hash;
    uint8_t seen[MAX_CMDS / 8];
};

struct qmsg {
    struct vd_raft_msg m;
    struct vd_raft_entry *ents;
    uint8_t *data;
};

struct node {
    uint64_t id;
    bool created, alive;
    struct vd_raft *r;
    struct disk disk;
    struct sm sm;
    struct vd_raft_conf applied_conf; /* membership as of sm.index, as a real host tracks it */
    bool busy;
    uint64_t busy_until;
    struct vd_raft_update upd;
    uint32_t disk_max_ms;
    struct qmsg *inbox;
    size_t n_inbox, cap_inbox, inbox_head;
    /* leader append-only check: the log terms seen while leader of lead_term */
    uint64_t lead_term, lead_first;
    int last_role;
    uint64_t last_term;
    uint64_t sent_term; /* highest term this node has put on the wire (pre-vote aside) */
    uint64_t *lead_terms;
    size_t n_lead_terms, cap_lead_terms;
};

struct event {
    uint64_t at, seq; /* struct sim_when */
    int to;
    struct qmsg q;
};

struct read_req {
    uint64_t ctx;
    uint64_t min_index; /* highest index acknowledged to any client before the read began */
    bool pending;
};

struct sim {
    uint64_t seed;
    bool verbose, trace;
    enum vd_raft_bug bug;
    uint64_t now, steps, seq;
    int n_nodes;
    struct node nodes[MAX_NODES];
    bool blocked[MAX_NODES][MAX_NODES];
    double loss, dup;
    uint32_t delay_max;
    struct vd_raft_config cfg;
    struct sim_heap events;
    uint64_t next_action, next_client;
    uint64_t crash_leader_at; /* a leader crash in the middle of its work; 0 = none */
    /* checker */
    uint64_t *leader_of_term;
    size_t cap_lot;
    uint64_t *committed_term;
    size_t cap_ct;
    uint64_t max_committed;
    uint64_t *commit_seen_term;
    size_t cap_cst; /* lowest term in which index was seen committed */
    uint64_t *chain;
    size_t cap_chain; /* state-machine hash after applying index i */
    struct kv {
        uint64_t index, term, hash, prev_term;
    } * logmap;
    size_t cap_logmap, n_logmap;
    uint64_t next_cmd;
    uint8_t acked[MAX_CMDS / 8];
    uint64_t max_acked_index;
    struct read_req reads[64];
    uint64_t n_reads_ok;
    char violation[512];
    bool faults;
};

static struct sim S;

/* Totals over all seeds, to show the faults and features were exercised. */
static struct {
    uint64_t acked, reads, installs, confs, elections, crashes;
    uint64_t heals, leader_ms_sum, leader_ms_max, converge_ms_sum, converge_ms_max;
} T;

static void vlog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void vlog(const char *fmt, ...)
{
    if (!S.verbose)
        return;
    va_list ap;
    va_start(ap, fmt);
    printf("[%8" PRIu64 " ms] ", S.now);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

static void violation(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void violation(const char *fmt, ...)
{
    if (S.violation[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(S.violation, sizeof(S.violation), fmt, ap);
    va_end(ap);
}

static uint8_t *dup_bytes(const void *p, size_t n)
{
    if (!n)
        return NULL;
    uint8_t *q = malloc(n);
    if (!q)
        abort();
    memcpy(q, p, n);
    return q;
}

static void qmsg_copy(struct qmsg *q, const struct vd_raft_msg *m)
{
    q->m = *m;
    q->ents = NULL;
    q->data = NULL;
    if (m->n_entries) {
        q->ents = malloc(m->n_entries * sizeof(*q->ents));
        if (!q->ents)
            abort();
        for (size_t i = 0; i < m->n_entries; i++) {
            q->ents[i] = m->entries[i];
            q->ents[i].data = dup_bytes(m->entries[i].data, m->entries[i].len);
        }
    }
    q->m.entries = q->ents;
    if (m->len) {
        q->data = dup_bytes(m->data, m->len);
    }
    q->m.data = q->data;
}

static void qmsg_free(struct qmsg *q)
{
    for (size_t i = 0; i < q->m.n_entries; i++)
        free(q->ents[i].data);
    free(q->ents);
    free(q->data);
}

/* ---- nodes ------------------------------------------------------------------------------- */

static int node_index(uint64_t id)
{
    return id >= 1 && id <= (uint64_t)S.n_nodes ? (int)(id - 1) : -1;
}

static void disk_truncate_from(struct disk *d, uint64_t from)
{
    while (d->n_ents && d->snap_index + d->n_ents >= from) {
        free(d->ents[d->n_ents - 1].data);
        d->n_ents--;
    }
}

static void disk_append(struct disk *d, const struct vd_raft_entry *e)
{
    if (e->index != d->snap_index + d->n_ents + 1) {
        violation("host: non-contiguous entry %" PRIu64 " after %" PRIu64, e->index,
                  d->snap_index + d->n_ents);
        return;
    }
    d->ents = sim_grow(d->ents, &d->cap, d->n_ents + 1, sizeof(*d->ents));
    d->ents[d->n_ents] = *e;
    d->ents[d->n_ents].data = dup_bytes(e->data, e->len);
    d->n_ents++;
}

static void disk_set_snapshot(struct disk *d, uint64_t index, uint64_t term,
                              const struct vd_raft_conf *conf, const void *data, size_t len)
{
    size_t drop = 0;
    if (index > d->snap_index)
        drop = index - d->snap_index;
    if (drop > d->n_ents)
        drop = d->n_ents;
    for (size_t i = 0; i < drop; i++)
        free(d->ents[i].data);
    if (drop)
        memmove(d->ents, d->ents + drop, (d->n_ents - drop) * sizeof(*d->ents));
    d->n_ents -= drop;
    if (d->n_ents && d->ents[0].index != index + 1) {
        for (size_t i = 0; i < d->n_ents; i++)
            free(d->ents[i].data);
        d->n_ents = 0;
    }
    free(d->snap_data);
    d->snap_data = dup_bytes(data, len);
    d->snap_len = len;
    d->snap_index = index;
    d->snap_term = term;
    d->snap_conf = *conf;
    d->has_snap = true;
}

static void disk_free(struct disk *d)
{
    for (size_t i = 0; i < d->n_ents; i++)
        free(d->ents[i].data);
    free(d->ents);
    free(d->snap_data);
    memset(d, 0, sizeof(*d));
}

static bool conf_equal(const struct vd_raft_conf *a, const struct vd_raft_conf *b)
{
    if (a->n != b->n)
        return false;
    for (uint32_t i = 0; i < a->n; i++)
        if (a->nodes[i].id != b->nodes[i].id || a->nodes[i].role != b->nodes[i].role)
            return false;
    return true;
}

/* The state machine serialises as index, hash, bitset. */
static size_t sm_encode(const struct sm *s, uint8_t *buf)
{
    vd_be64_put(buf, s->index);
    vd_be64_put(buf + 8, s->hash);
    memcpy(buf + 16, s->seen, sizeof(s->seen));
    return 16 + sizeof(s->seen);
}

static void sm_decode(struct sm *s, const uint8_t *buf, size_t len)
{
    memset(s, 0, sizeof(*s));
    if (len != 16 + sizeof(s->seen)) {
        violation("snapshot of %zu bytes does not decode", len);
        return;
    }
    s->index = vd_be64_get(buf);
    s->hash = vd_be64_get(buf + 8);
    memcpy(s->seen, buf + 16, sizeof(s->seen));
}

static void check_chain(struct node *n)
{
    S.chain = sim_grow(S.chain, &S.cap_chain, n->sm.index + 1, sizeof(*S.chain));
    if (S.chain[n->sm.index] == 0)
        S.chain[n->sm.index] = n->sm.hash;
    else if (S.chain[n->sm.index] != n->sm.hash)
        violation("state-machine safety: node %" PRIu64 " state after index %" PRIu64
                  " differs from another node's",
                  n->id, n->sm.index);
}

static void sm_apply(struct node *n, const struct vd_raft_entry *e)
{
    if (e->index != n->sm.index + 1) {
        violation("node %" PRIu64 " applies index %" PRIu64 " after %" PRIu64, n->id, e->index,
                  n->sm.index);
        return;
    }
    uint8_t mix[24];
    vd_be64_put(mix, e->index);
    vd_be64_put(mix + 8, e->term);
    vd_be64_put(mix + 16, vd_hash64(e->data, e->len, e->type));
    n->sm.hash = vd_hash64(mix, sizeof(mix), n->sm.hash);
    n->sm.index = e->index;
    if (e->type == VD_RAFT_ENTRY_NORMAL && e->len == 8) {
        uint64_t cmd = vd_be64_get(e->data);
        if (cmd < MAX_CMDS) {
            n->sm.seen[cmd / 8] |= (uint8_t)(1u << (cmd % 8));
            if (!(S.acked[cmd / 8] & (1u << (cmd % 8)))) {
                S.acked[cmd / 8] |= (uint8_t)(1u << (cmd % 8));
                T.acked++;
                vlog("cmd %" PRIu64 " committed at %" PRIu64, cmd, e->index);
            }
        }
        if (e->index > S.max_acked_index)
            S.max_acked_index = e->index;
    }
    S.chain = sim_grow(S.chain, &S.cap_chain, e->index + 1, sizeof(*S.chain));
    if (e->type == VD_RAFT_ENTRY_CONF && S.chain[e->index] == 0 && e->index > 1)
        T.confs++;
    if (e->type == VD_RAFT_ENTRY_CONF &&
        vd_raft_conf_decode(e->data, e->len, &n->applied_conf) != 0)
        violation("node %" PRIu64 " applied an undecodable configuration", n->id);
    check_chain(n);
}

static void node_start(struct node *n)
{
    struct vd_raft_config cfg = S.cfg;
    cfg.id = n->id;
    cfg.seed = S.seed * 131 + n->id + S.now;
    struct vd_raft_snapshot snap;
    struct vd_raft_state st = {.term = n->disk.term,
                               .vote = n->disk.vote,
                               .entries = n->disk.ents,
                               .n_entries = n->disk.n_ents};
    memset(&n->sm, 0, sizeof(n->sm));
    if (n->disk.has_snap) {
        snap = (struct vd_raft_snapshot){.index = n->disk.snap_index,
                                         .term = n->disk.snap_term,
                                         .conf = n->disk.snap_conf,
                                         .data = n->disk.snap_data,
                                         .len = n->disk.snap_len};
        st.snapshot = &snap;
        sm_decode(&n->sm, snap.data, snap.len);
        n->applied_conf = snap.conf;
    }
    int rc = vd_raft_new(&cfg, &st, S.now, &n->r);
    if (rc) {
        violation("node %" PRIu64 " cannot restart from its disk: %s", n->id, vd_strerror(rc));
        n->alive = false;
        return;
    }
    n->alive = true;
    n->busy = false;
    n->lead_term = 0;
    n->n_inbox = n->inbox_head = 0;
}

static void node_crash(struct node *n)
{
    vlog("crash node %" PRIu64 "%s", n->id, n->busy ? " (losing an unfinished write)" : "");
    T.crashes++;
    vd_raft_free(n->r);
    n->r = NULL;
    n->alive = false;
    n->busy = false;
    for (size_t i = n->inbox_head; i < n->n_inbox; i++)
        qmsg_free(&n->inbox[i]);
    n->n_inbox = n->inbox_head = 0;
    n->lead_term = 0;
}

static struct node *node_create(void)
{
    if (S.n_nodes == MAX_NODES)
        return NULL;
    struct node *n = &S.nodes[S.n_nodes++];
    memset(n, 0, sizeof(*n));
    n->id = (uint64_t)S.n_nodes;
    n->created = true;
    n->disk_max_ms = 5;
    return n;
}

/* ---- network ----------------------------------------------------------------------------- */

static void net_send(const struct vd_raft_msg *m)
{
    int from = node_index(m->from), to = node_index(m->to);
    if (from < 0 || to < 0 || !S.nodes[to].created)
        return;
    if (S.blocked[from][to] || chance(S.loss))
        return;
    /* Every message crosses the wire encoding, as it would between processes. */
    static uint8_t *wire;
    static size_t wire_cap;
    static struct vd_raft_entry ents[4096];
    size_t need = vd_raft_msg_size(m);
    wire = sim_grow(wire, &wire_cap, need, 1);
    size_t n = vd_raft_msg_encode(m, wire);
    struct vd_raft_msg dm;
    if (n != need || vd_raft_msg_decode(wire, n, &dm, ents, 4096) != 0) {
        violation("wire: message type %u does not survive encode/decode", m->type);
        return;
    }
    int copies = chance(S.dup) ? 2 : 1;
    for (int c = 0; c < copies; c++) {
        struct event e = {.at = S.now + 1 + rnd_below(S.delay_max), .seq = S.seq++, .to = to};
        qmsg_copy(&e.q, &dm);
        sim_heap_push(&S.events, &e, sizeof(e));
    }
}

/* ---- updates ----------------------------------------------------------------------------- */

static void finish_update(struct node *n)
{
    struct vd_raft_update *u = &n->upd;
    struct disk *d = &n->disk;
    /* 1. durable state */
    if (u->hard_state) {
        d->term = u->term;
        d->vote = u->vote;
    }
    if (u->snapshot)
        disk_set_snapshot(d, u->snapshot->index, u->snapshot->term, &u->snapshot->conf,
                          u->snapshot->data, u->snapshot->len);
    if (u->first_index) {
        disk_truncate_from(d, u->first_index);
        for (size_t i = 0; i < u->n_entries; i++)
            disk_append(d, &u->entries[i]);
    }
    /* 2. messages, only now that what they promise is durable */
    for (size_t i = 0; i < u->n_msgs; i++) {
        uint8_t t = u->msgs[i].type;
        if (t != VD_RAFT_MSG_PREVOTE && t != VD_RAFT_MSG_PREVOTE_RESP &&
            u->msgs[i].term > n->sent_term)
            n->sent_term = u->msgs[i].term;
        net_send(&u->msgs[i]);
    }
    /* 3. state machine */
    if (u->snapshot) {
        T.installs++;
        sm_decode(&n->sm, u->snapshot->data, u->snapshot->len);
        n->applied_conf = u->snapshot->conf;
        check_chain(n);
    }
    for (size_t i = 0; i < u->n_committed; i++)
        sm_apply(n, &u->committed[i]);
    for (size_t i = 0; i < u->n_reads; i++) {
        struct read_req *rr = NULL;
        for (size_t k = 0; k < sizeof(S.reads) / sizeof(S.reads[0]); k++)
            if (S.reads[k].pending && S.reads[k].ctx == u->reads[i].ctx)
                rr = &S.reads[k];
        if (!rr)
            continue;
        rr->pending = false;
        /* Linearizability of ReadIndex: the read must reflect every write acknowledged before
         * it started. */
        if (u->reads[i].index < rr->min_index)
            violation("ReadIndex: read %" PRIu64 " on node %" PRIu64 " got index %" PRIu64
                      " but index %" PRIu64 " was acknowledged before it began",
                      rr->ctx, n->id, u->reads[i].index, rr->min_index);
        S.n_reads_ok++;
        T.reads++;
    }
    vd_raft_advance(n->r);
    n->busy = false;
    /* 4. compaction, as a real host would do from time to time */
    if (n->sm.index >= vd_raft_snapshot_index(n->r) + SNAP_EVERY &&
        n->sm.index == vd_raft_applied(n->r)) {
        uint8_t buf[16 + MAX_CMDS / 8];
        size_t len = sm_encode(&n->sm, buf);
        uint64_t idx = n->sm.index, term = vd_raft_term_at(n->r, idx);
        if (vd_raft_snapshot(n->r, idx, buf, len) == 0) {
            struct vd_raft_snapshot cs;
            vd_raft_current_snapshot(n->r, &cs);
            /* the core's idea of the membership at idx must match what the host applied */
            if (cs.index != idx || cs.term != term || cs.len != len ||
                !conf_equal(&cs.conf, &n->applied_conf))
                violation("node %" PRIu64 ": snapshot at %" PRIu64 " disagrees with the applied "
                          "state (configuration or term)",
                          n->id, idx);
            disk_set_snapshot(d, idx, term, &cs.conf, cs.data, cs.len);
            vlog("node %" PRIu64 " snapshot at %" PRIu64, n->id, idx);
        }
    }
}

static void start_update(struct node *n)
{
    if (!n->alive || n->busy || !vd_raft_has_ready(n->r))
        return;
    vd_raft_ready(n->r, &n->upd);
    bool io = n->upd.hard_state || n->upd.snapshot || n->upd.first_index;
    uint64_t lat = io ? rnd_below(n->disk_max_ms + 1) : 0;
    if (lat == 0) {
        finish_update(n);
        start_update(n);
        return;
    }
    n->busy = true;
    n->busy_until = S.now + lat;
}

/* ---- checker ----------------------------------------------------------------------------- */

static struct kv *logmap_slot(uint64_t index, uint64_t term)
{
    if ((S.n_logmap + 1) * 2 > S.cap_logmap) {
        size_t oc = S.cap_logmap;
        struct kv *old = S.logmap;
        S.cap_logmap = oc ? oc * 2 : 4096;
        S.logmap = calloc(S.cap_logmap, sizeof(*S.logmap));
        if (!S.logmap)
            abort();
        S.n_logmap = 0;
        for (size_t i = 0; i < oc; i++)
            if (old[i].term) {
                struct kv *s = logmap_slot(old[i].index, old[i].term);
                *s = old[i];
                S.n_logmap++;
            }
        free(old);
    }
    size_t mask = S.cap_logmap - 1;
    size_t h = (size_t)((index * 0x9E3779B97F4A7C15ULL) ^ (term * 0xC2B2AE3D27D4EB4FULL)) & mask;
    while (S.logmap[h].term && (S.logmap[h].index != index || S.logmap[h].term != term))
        h = (h + 1) & mask;
    return &S.logmap[h];
}

static void check_node(struct node *n)
{
    if (!n->alive)
        return;
    struct vd_raft *r = n->r;
    uint64_t first = vd_raft_first_index(r), last = vd_raft_last_index(r);
    uint64_t term = vd_raft_term(r);
    if (S.verbose && ((int)vd_raft_role(r) != n->last_role || term != n->last_term)) {
        vlog("node %" PRIu64 " now %s in term %" PRIu64 " (leader %" PRIu64 ")", n->id,
             vd_raft_role_name(vd_raft_role(r)), term, vd_raft_leader(r));
        n->last_role = (int)vd_raft_role(r);
        n->last_term = term;
    }

    /* Durable terms: a term once announced survives any crash. */
    if (term < n->sent_term)
        violation("node %" PRIu64 " is at term %" PRIu64 " after sending messages of term %" PRIu64,
                  n->id, term, n->sent_term);

    /* Election safety: at most one leader per term. */
    if (vd_raft_role(r) == VD_RAFT_LEADER) {
        S.leader_of_term = sim_grow(S.leader_of_term, &S.cap_lot, term + 1, sizeof(uint64_t));
        if (S.leader_of_term[term] == 0) {
            S.leader_of_term[term] = n->id;
            T.elections++;
            vlog("node %" PRIu64 " is leader of term %" PRIu64, n->id, term);
        } else if (S.leader_of_term[term] != n->id) {
            violation("election safety: nodes %" PRIu64 " and %" PRIu64 " both lead term %" PRIu64,
                      S.leader_of_term[term], n->id, term);
        }
    }

    /* Log matching: an (index, term) pair names one entry and one predecessor term. */
    for (uint64_t i = first; i <= last; i++) {
        const struct vd_raft_entry *e = vd_raft_entry_at(r, i);
        uint64_t h = vd_hash64(e->data, e->len, e->type), pt = vd_raft_term_at(r, i - 1);
        struct kv *s = logmap_slot(i, e->term);
        if (!s->term) {
            *s = (struct kv){.index = i, .term = e->term, .hash = h, .prev_term = pt};
            S.n_logmap++;
        } else if (s->hash != h || s->prev_term != pt) {
            violation("log matching: node %" PRIu64 " entry %" PRIu64 " of term %" PRIu64
                      " differs from another node's",
                      n->id, i, e->term);
        }
    }

    /* Committed entries: one term per index, ever. */
    uint64_t commit = vd_raft_commit(r);
    S.committed_term = sim_grow(S.committed_term, &S.cap_ct, commit + 1, sizeof(uint64_t));
    S.commit_seen_term = sim_grow(S.commit_seen_term, &S.cap_cst, commit + 1, sizeof(uint64_t));
    for (uint64_t i = first; i <= commit && i <= last; i++) {
        uint64_t t = vd_raft_term_at(r, i);
        if (S.commit_seen_term[i] == 0 || term < S.commit_seen_term[i])
            S.commit_seen_term[i] = term;
        if (S.committed_term[i] == 0)
            S.committed_term[i] = t;
        else if (S.committed_term[i] != t)
            violation("commit safety: node %" PRIu64 " committed term %" PRIu64 " at index %" PRIu64
                      ", another node term %" PRIu64,
                      n->id, t, i, S.committed_term[i]);
    }
    if (commit > S.max_committed)
        S.max_committed = commit;

    if (vd_raft_role(r) != VD_RAFT_LEADER) {
        n->lead_term = 0;
        return;
    }
    /* Leader completeness: a leader holds every entry committed in an earlier term. The term
     * in which the checker first saw an index committed bounds the real one from above. */
    for (uint64_t i = first; i <= S.max_committed; i++) {
        if (S.committed_term[i] == 0 || S.commit_seen_term[i] >= term)
            continue; /* known committed only through a snapshot, or not before this term */
        if (i > last || vd_raft_term_at(r, i) != S.committed_term[i]) {
            violation("leader completeness: leader %" PRIu64 " of term %" PRIu64
                      " lacks committed entry %" PRIu64,
                      n->id, term, i);
            break;
        }
    }
    /* Leader append-only: while it leads a term, it never rewrites or removes entries. */
    if (n->lead_term == term) {
        uint64_t prev_last = n->lead_first + n->n_lead_terms - 1;
        if (last < prev_last)
            violation("leader append-only: leader %" PRIu64 " log shrank from %" PRIu64
                      " to %" PRIu64,
                      n->id, prev_last, last);
        for (uint64_t i = first > n->lead_first ? first : n->lead_first;
             i <= prev_last && i <= last; i++)
            if (vd_raft_term_at(r, i) != n->lead_terms[i - n->lead_first])
                violation("leader append-only: leader %" PRIu64 " rewrote entry %" PRIu64, n->id,
                          i);
    }
    n->lead_term = term;
    n->lead_first = first;
    n->n_lead_terms = 0;
    n->lead_terms = sim_grow(n->lead_terms, &n->cap_lead_terms, last - first + 2, sizeof(uint64_t));
    for (uint64_t i = first; i <= last; i++)
        n->lead_terms[n->n_lead_terms++] = vd_raft_term_at(r, i);
    if (n->n_lead_terms == 0) { /* empty log after a snapshot: remember the snapshot point */
        n->lead_first = last + 1;
    }
}

/* ---- actions ----------------------------------------------------------------------------- */

static struct node *find_leader(void)
{
    struct node *best = NULL;
    for (int i = 0; i < S.n_nodes; i++) {
        struct node *n = &S.nodes[i];
        if (n->alive && vd_raft_role(n->r) == VD_RAFT_LEADER &&
            (!best || vd_raft_term(n->r) > vd_raft_term(best->r)))
            best = n;
    }
    return best;
}

static struct node *random_alive(void)
{
    int idx[MAX_NODES], k = 0;
    for (int i = 0; i < S.n_nodes; i++)
        if (S.nodes[i].alive)
            idx[k++] = i;
    return k ? &S.nodes[idx[rnd_below(k)]] : NULL;
}

static void heal_network(void)
{
    memset(S.blocked, 0, sizeof(S.blocked));
}

static void client_propose(void)
{
    struct node *l = find_leader();
    if (!l || l->busy || S.next_cmd >= MAX_CMDS)
        return;
    uint8_t buf[8];
    vd_be64_put(buf, S.next_cmd);
    uint64_t idx;
    if (vd_raft_propose(l->r, buf, 8, &idx, NULL) == 0) {
        vlog("propose cmd %" PRIu64 " on node %" PRIu64 " at index %" PRIu64, S.next_cmd, l->id,
             idx);
        S.next_cmd++;
        start_update(l);
    }
}

static void fault_action(void)
{
    struct node *n;
    struct node *l = find_leader();
    switch (rnd_below(15)) {
    case 0: /* crash */
        n = random_alive();
        if (n)
            node_crash(n);
        break;
    case 1: /* restart */
        for (int i = 0; i < S.n_nodes; i++)
            if (!S.nodes[i].alive && chance(0.5)) {
                vlog("restart node %" PRIu64, S.nodes[i].id);
                node_start(&S.nodes[i]);
                break;
            }
        break;
    case 2: { /* symmetric partition into two random sides */
        heal_network();
        uint32_t side = (uint32_t)rnd();
        for (int a = 0; a < S.n_nodes; a++)
            for (int b = 0; b < S.n_nodes; b++)
                if (((side >> a) & 1) != ((side >> b) & 1))
                    S.blocked[a][b] = true;
        vlog("partition mask %x", side & ((1u << S.n_nodes) - 1));
        break;
    }
    case 3: { /* one-way link failures */
        int a = (int)rnd_below(S.n_nodes), b = (int)rnd_below(S.n_nodes);
        if (a != b) {
            S.blocked[a][b] = true;
            vlog("block %d -> %d", a + 1, b + 1);
        }
        break;
    }
    case 4: /* isolate the leader */
        if (l) {
            int a = (int)l->id - 1;
            for (int b = 0; b < S.n_nodes; b++)
                S.blocked[a][b] = S.blocked[b][a] = a != b;
            vlog("isolate leader %" PRIu64, l->id);
        }
        break;
    case 5:
        heal_network();
        vlog("heal network");
        break;
    case 6: /* network quality */
        S.loss = chance(0.5) ? 0 : (double)rnd_below(30) / 100;
        S.dup = chance(0.5) ? 0 : (double)rnd_below(20) / 100;
        S.delay_max = 1 + (uint32_t)rnd_below(chance(0.2) ? 400 : 40);
        vlog("network loss %.2f dup %.2f delay<=%u", S.loss, S.dup, S.delay_max);
        break;
    case 7: /* slow disk */
        n = &S.nodes[rnd_below(S.n_nodes)];
        n->disk_max_ms = chance(0.5) ? 5 : (uint32_t)rnd_below(300);
        vlog("node %" PRIu64 " disk latency <= %u ms", n->id, n->disk_max_ms);
        break;
    case 8: /* add a learner */
        if (l && !l->busy && vd_raft_conf(l->r)->n < MAX_MEMBERS && S.n_nodes < MAX_NODES) {
            uint64_t id = (uint64_t)S.n_nodes + 1;
            if (vd_raft_change(l->r, VD_RAFT_ADD_LEARNER, id, NULL) == 0) {
                struct node *nn = node_create();
                node_start(nn);
                vlog("add learner %" PRIu64, id);
                start_update(l);
            }
        }
        break;
    case 9: /* promote a caught-up learner */
        if (l && !l->busy) {
            const struct vd_raft_conf *c = vd_raft_conf(l->r);
            for (uint32_t i = 0; i < c->n; i++)
                if (c->nodes[i].role == VD_RAFT_LEARNER) {
                    uint64_t id = c->nodes[i].id;
                    if (vd_raft_change(l->r, VD_RAFT_PROMOTE, id, NULL) == 0) {
                        vlog("promote %" PRIu64, id);
                        start_update(l);
                    }
                    break;
                }
        }
        break;
    case 10: /* remove a member, keeping at least three voters */
        if (l && !l->busy) {
            const struct vd_raft_conf *c = vd_raft_conf(l->r);
            uint32_t voters = 0;
            for (uint32_t i = 0; i < c->n; i++)
                voters += c->nodes[i].role == VD_RAFT_VOTER;
            uint32_t k = (uint32_t)rnd_below(c->n);
            uint64_t id = c->nodes[k].id;
            if (c->nodes[k].role == VD_RAFT_VOTER && voters <= 3)
                break;
            if (vd_raft_change(l->r, VD_RAFT_REMOVE, id, NULL) == 0) {
                vlog("remove %" PRIu64, id);
                start_update(l);
            }
        }
        break;
    case 11: /* leadership transfer */
        if (l && !l->busy) {
            const struct vd_raft_conf *c = vd_raft_conf(l->r);
            uint64_t id = c->nodes[rnd_below(c->n)].id;
            if (vd_raft_transfer(l->r, id) == 0) {
                vlog("transfer leadership %" PRIu64 " -> %" PRIu64, l->id, id);
                start_update(l);
            }
        }
        break;
    case 12: /* crash whoever leads a few milliseconds from now, mid-replication */
        S.crash_leader_at = S.now + 1 + rnd_below(2 * S.delay_max + 10);
        break;
    default: { /* linearizable read on any node */
        n = random_alive();
        if (!n || n->busy)
            break;
        size_t k = 0;
        while (k < 64 && S.reads[k].pending)
            k++;
        if (k == 64)
            break;
        uint64_t ctx = ((uint64_t)k << 32) | (S.seq & 0xffffffff);
        if (vd_raft_read_index(n->r, ctx) == 0) {
            S.reads[k] =
                (struct read_req){.ctx = ctx, .min_index = S.max_acked_index, .pending = true};
            start_update(n);
        }
        break;
    }
    }
}

/* ---- main loop --------------------------------------------------------------------------- */

/* Runs one event; returns false when there is nothing left before `until`. */
static bool step(uint64_t until)
{
    /* Earliest of: a node's work (inbox, disk completion, timer), a message, an action. */
    uint64_t best = UINT64_MAX;
    int who = -1, kind = 0;
    for (int i = 0; i < S.n_nodes; i++) {
        struct node *n = &S.nodes[i];
        if (!n->alive)
            continue;
        uint64_t t;
        int k;
        if (n->busy) {
            t = n->busy_until;
            k = 1;
        } else if (n->inbox_head < n->n_inbox) {
            t = S.now;
            k = 2;
        } else {
            t = vd_raft_next_deadline(n->r);
            if (t < S.now)
                t = S.now;
            k = 3;
        }
        if (t < best) {
            best = t;
            who = i;
            kind = k;
        }
    }
    if (sim_heap_next(&S.events) < best) {
        best = sim_heap_next(&S.events);
        kind = 4;
    }
    if (S.faults && S.next_action < best) {
        best = S.next_action;
        kind = 5;
    }
    if (S.faults && S.crash_leader_at && S.crash_leader_at < best) {
        best = S.crash_leader_at;
        kind = 7;
    }
    if (S.next_client < best) {
        best = S.next_client;
        kind = 6;
    }
    if (best > until)
        return false;
    S.now = best;
    S.steps++;
    struct node *n = who >= 0 ? &S.nodes[who] : NULL;
    switch (kind) {
    case 1:
        finish_update(n);
        start_update(n);
        check_node(n);
        break;
    case 2: {
        struct qmsg *q = &n->inbox[n->inbox_head++];
        if (S.trace)
            vlog("deliver %u %" PRIu64 "->%" PRIu64 " term %" PRIu64 " index %" PRIu64
                 " logterm %" PRIu64 " commit %" PRIu64 " n %zu reject %d hint %" PRIu64,
                 q->m.type, q->m.from, q->m.to, q->m.term, q->m.index, q->m.log_term, q->m.commit,
                 q->m.n_entries, q->m.reject, q->m.hint);
        vd_raft_tick(n->r, S.now); /* the core's clock must be current for its timers */
        vd_raft_step(n->r, &q->m);
        qmsg_free(q);
        if (n->inbox_head == n->n_inbox)
            n->inbox_head = n->n_inbox = 0;
        start_update(n);
        check_node(n);
        break;
    }
    case 3:
        vd_raft_tick(n->r, S.now);
        start_update(n);
        check_node(n);
        break;
    case 4: {
        struct event e;
        sim_heap_pop(&S.events, &e);
        struct node *d = &S.nodes[e.to];
        if (!d->alive) {
            qmsg_free(&e.q);
            break;
        }
        d->inbox = sim_grow(d->inbox, &d->cap_inbox, d->n_inbox + 1, sizeof(*d->inbox));
        d->inbox[d->n_inbox++] = e.q;
        break;
    }
    case 5:
        fault_action();
        S.next_action = S.now + 20 + rnd_below(300);
        for (int i = 0; i < S.n_nodes; i++)
            check_node(&S.nodes[i]);
        break;
    case 7: {
        S.crash_leader_at = 0;
        struct node *l = find_leader();
        if (l)
            node_crash(l);
        break;
    }
    case 6:
        client_propose();
        S.next_client = S.now + 5 + rnd_below(60);
        break;
    }
    return !S.violation[0];
}

static void sim_reset(void)
{
    for (int i = 0; i < S.n_nodes; i++) {
        struct node *n = &S.nodes[i];
        if (n->alive)
            vd_raft_free(n->r);
        for (size_t k = n->inbox_head; k < n->n_inbox; k++)
            qmsg_free(&n->inbox[k]);
        free(n->inbox);
        free(n->lead_terms);
        disk_free(&n->disk);
    }
    for (size_t i = 0; i < S.events.n; i++)
        qmsg_free(&((struct event *)sim_heap_at(&S.events, i))->q);
    sim_heap_free(&S.events);
    free(S.leader_of_term);
    free(S.committed_term);
    free(S.commit_seen_term);
    free(S.chain);
    free(S.logmap);
    bool verbose = S.verbose, trace = S.trace;
    enum vd_raft_bug bug = S.bug;
    memset(&S, 0, sizeof(S));
    S.verbose = verbose;
    S.trace = trace;
    S.bug = bug;
}

/* Runs one seed; returns true if every check passed. */
static bool run_seed(uint64_t seed, uint64_t *steps)
{
    sim_reset();
    S.seed = seed;
    sim_seed(seed);
    vd_raft_config_default(&S.cfg);
    S.cfg.election_timeout_ms = 150 + (uint32_t)rnd_below(150);
    S.cfg.heartbeat_ms = 30 + (uint32_t)rnd_below(20);
    S.cfg.max_append_entries = chance(0.3) ? 1 : 1 + (uint32_t)rnd_below(16);
    S.cfg.snapshot_chunk = 64 + (uint32_t)rnd_below(256);
    S.cfg.bug = S.bug;
    /* Safety must not depend on the optional protections: some seeds run without them. */
    S.cfg.pre_vote = !chance(0.1);
    S.cfg.check_quorum = !chance(0.1);
    S.delay_max = 10;
    S.faults = true;

    int n0 = 3 + (int)rnd_below(5);
    struct vd_raft_conf conf = {0};
    for (int i = 0; i < n0; i++) {
        conf.nodes[i].id = (uint64_t)i + 1;
        conf.nodes[i].role = VD_RAFT_VOTER;
    }
    conf.n = (uint32_t)n0;
    uint8_t buf[4 + 9 * VD_RAFT_MAX_NODES];
    struct vd_raft_entry boot;
    vd_raft_bootstrap_entry(&conf, buf, &boot);
    for (int i = 0; i < n0; i++) {
        struct node *n = node_create();
        disk_append(&n->disk, &boot);
        node_start(n);
    }
    vlog("seed %" PRIu64 ": %d voters, election timeout %u ms, heartbeat %u ms", seed, n0,
         S.cfg.election_timeout_ms, S.cfg.heartbeat_ms);

    /* Phase 1: faults. */
    uint64_t chaos_end = 10000 + rnd_below(20000);
    S.next_action = 100;
    S.next_client = 50;
    while (step(chaos_end))
        ;
    if (S.violation[0])
        goto out;

    /* Phase 2: heal, restart everyone, and demand progress within a bound. */
    S.faults = false;
    heal_network();
    S.loss = S.dup = 0;
    S.delay_max = 10;
    for (int i = 0; i < S.n_nodes; i++) {
        S.nodes[i].disk_max_ms = 5;
        if (!S.nodes[i].alive) {
            vlog("restart node %" PRIu64 " (heal)", S.nodes[i].id);
            node_start(&S.nodes[i]);
        }
    }
    vlog("faults healed");
    uint64_t deadline = S.now + (uint64_t)20 * S.cfg.election_timeout_ms;
    uint64_t probe_cmd = UINT64_MAX, probe_at = 0, healed_at = S.now, leader_ms = UINT64_MAX;
    S.next_client = UINT64_MAX; /* only the probe command from now on */
    for (;;) {
        if (!step(S.now + 10)) {
            if (S.violation[0])
                goto out;
            S.now += 10;
        }
        struct node *l = find_leader();
        if (l && leader_ms == UINT64_MAX)
            leader_ms = S.now - healed_at;
        /* A probe lost with a deposed leader's log is proposed again after a while. */
        bool probe_done =
            probe_cmd != UINT64_MAX && (S.acked[probe_cmd / 8] & (1u << (probe_cmd % 8)));
        if (!probe_done && S.now >= probe_at && l && !l->busy && S.next_cmd < MAX_CMDS) {
            uint8_t b[8];
            vd_be64_put(b, S.next_cmd);
            if (vd_raft_propose(l->r, b, 8, NULL, NULL) == 0) {
                probe_cmd = S.next_cmd++;
                probe_at = S.now + 2 * S.cfg.election_timeout_ms;
                start_update(l);
            }
        }
        if (probe_cmd != UINT64_MAX && (S.acked[probe_cmd / 8] & (1u << (probe_cmd % 8))) && l) {
            /* Every live member must have applied every acknowledged command. */
            const struct vd_raft_conf *c = vd_raft_conf(l->r);
            bool all = true;
            for (uint32_t k = 0; k < c->n && all; k++) {
                int i = node_index(c->nodes[k].id);
                if (i < 0 || !S.nodes[i].alive) {
                    all = false;
                    break;
                }
                for (uint64_t cmd = 0; cmd < S.next_cmd; cmd++)
                    if ((S.acked[cmd / 8] & (1u << (cmd % 8))) &&
                        !(S.nodes[i].sm.seen[cmd / 8] & (1u << (cmd % 8)))) {
                        all = false;
                        break;
                    }
            }
            if (all) {
                uint64_t conv = S.now - healed_at;
                T.heals++;
                T.leader_ms_sum += leader_ms;
                T.converge_ms_sum += conv;
                if (leader_ms > T.leader_ms_max)
                    T.leader_ms_max = leader_ms;
                if (conv > T.converge_ms_max)
                    T.converge_ms_max = conv;
                break;
            }
        }
        if (S.now > deadline) {
            for (int i = 0; i < S.n_nodes; i++) {
                struct node *n = &S.nodes[i];
                if (!n->alive)
                    continue;
                const struct vd_raft_conf *c = vd_raft_conf(n->r);
                char roles[128] = "";
                size_t o = 0;
                for (uint32_t k = 0; k < c->n && o < sizeof(roles) - 24; k++)
                    o += (size_t)snprintf(roles + o, sizeof(roles) - o, " %" PRIu64 "%s",
                                          c->nodes[k].id,
                                          c->nodes[k].role == VD_RAFT_VOTER ? "" : "L");
                vlog("node %" PRIu64 ": %s term %" PRIu64 " leader %" PRIu64 " first %" PRIu64
                     " last %" PRIu64 " commit %" PRIu64 " applied %" PRIu64 " match %" PRIu64
                     " busy %d conf[%s ]",
                     n->id, vd_raft_role_name(vd_raft_role(n->r)), vd_raft_term(n->r),
                     vd_raft_leader(n->r), vd_raft_first_index(n->r), vd_raft_last_index(n->r),
                     vd_raft_commit(n->r), n->sm.index, l ? vd_raft_match(l->r, n->id) : 0, n->busy,
                     roles);
            }
            if (!l)
                violation("liveness: no leader %" PRIu64 " ms after the faults healed",
                          (uint64_t)20 * S.cfg.election_timeout_ms);
            else
                violation("liveness: leader %" PRIu64 " but acknowledged commands are missing on a"
                          " live member %" PRIu64 " ms after the faults healed",
                          l->id, (uint64_t)20 * S.cfg.election_timeout_ms);
            goto out;
        }
    }
out:
    *steps = S.steps;
    vlog("seed %" PRIu64 " done: %" PRIu64 " steps, %" PRIu64 " commands, %" PRIu64 " reads", seed,
         S.steps, S.next_cmd, S.n_reads_ok);
    return S.violation[0] == 0;
}

int main(int argc, char **argv)
{
    uint64_t first = 1, count = 0;
    bool expect_violation = false, one = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            first = strtoull(argv[++i], NULL, 10);
            one = true;
        } else if (!strcmp(argv[i], "--seeds") && i + 1 < argc) {
            count = strtoull(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--verbose")) {
            S.verbose = true;
        } else if (!strcmp(argv[i], "--trace")) {
            S.verbose = S.trace = true;
        } else if (!strcmp(argv[i], "--expect-violation")) {
            expect_violation = true;
        } else if (!strcmp(argv[i], "--bug") && i + 1 < argc) {
            i++;
            if (!strcmp(argv[i], "double-vote"))
                S.bug = VD_RAFT_BUG_DOUBLE_VOTE;
            else if (!strcmp(argv[i], "commit-old-term"))
                S.bug = VD_RAFT_BUG_COMMIT_OLD_TERM;
            else {
                fprintf(stderr, "sim_raft: unknown bug '%s'\n", argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "usage: sim_raft [--seed N] [--seeds COUNT] [--verbose] "
                            "[--bug double-vote|commit-old-term] [--expect-violation]\n");
            return 2;
        }
    }
    if (count == 0) {
        const char *scale = getenv("VD_TEST_SCALE");
        count = one ? 1 : 2000;
        if (!one && scale && !strcmp(scale, "small"))
            count = 200;
    }
    const char *bugname = S.bug == VD_RAFT_BUG_DOUBLE_VOTE       ? " --bug double-vote"
                          : S.bug == VD_RAFT_BUG_COMMIT_OLD_TERM ? " --bug commit-old-term"
                                                                 : "";
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
                   expect_violation ? "caught:" : "FAIL", s, steps, S.now, S.violation);
            printf("  replay: sim_raft --seed %" PRIu64 "%s --verbose\n", s, bugname);
            if (expect_violation)
                break;
        }
    }
    sim_reset();
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double wall = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("sim_raft: seeds %" PRIu64 "..%" PRIu64 " (%" PRIu64 " run), %" PRIu64
           " steps (%.0f per seed), "
           "%" PRIu64 " failed, %.2f s\n",
           first, first + ran - 1, ran, total_steps, ran ? (double)total_steps / (double)ran : 0.0,
           failed, wall);
    printf("sim_raft: %" PRIu64 " commands committed, %" PRIu64 " elections, %" PRIu64
           " crashes, %" PRIu64 " snapshots installed from a leader, %" PRIu64
           " membership changes applied, %" PRIu64 " linearizable reads\n",
           T.acked, T.elections, T.crashes, T.installs, T.confs, T.reads);
    if (T.heals)
        printf("sim_raft: after healing, a leader within %.0f ms on average (max %" PRIu64
               " ms), every live member caught up within %.0f ms (max %" PRIu64 " ms)\n",
               (double)T.leader_ms_sum / (double)T.heals, T.leader_ms_max,
               (double)T.converge_ms_sum / (double)T.heals, T.converge_ms_max);
    if (expect_violation) {
        if (failed) {
            printf("sim_raft: the planted bug was caught\n");
            return 0;
        }
        printf("sim_raft: the planted bug was NOT caught in %" PRIu64 " seeds\n", ran);
        return 1;
    }
    return failed ? 1 : 0;
}
