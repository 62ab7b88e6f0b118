/*
 * Pure Raft core. See include/vectord/raft.h for the contract; section numbers refer to the Raft
 * dissertation (Ongaro 2014). No I/O, clock or global state: everything enters through the API.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "vectord/core.h"
#include "vectord/raft.h"

enum { PR_PROBE = 0, PR_REPLICATE, PR_SNAPSHOT };

struct progress {
    uint64_t id;
    uint64_t match, next;
    uint8_t state;
    bool paused;        /* probe: one APPEND in flight until a reply or the next heartbeat */
    bool recent_active; /* heard from since the last check-quorum round (§6.2) */
    uint64_t snap_off;  /* snapshot: bytes the follower confirmed */
    uint64_t sent_at;   /* snapshot: when the current chunk was sent */
    uint64_t read_ack;  /* highest read sequence the follower echoed */
};

struct pending_read {
    uint64_t ctx, index, seq, from; /* seq 0: waits for the first commit of the leader's term */
};

struct vd_raft {
    struct vd_raft_config cfg;
    uint64_t now;
    uint64_t rng;

    /* persistent state */
    uint64_t term, vote;
    bool hs_dirty;

    /* log: entries hold indexes snap_index+1 .. snap_index+n_ents */
    uint64_t snap_index, snap_term;
    struct vd_raft_conf snap_conf;
    uint8_t *snap_data;
    size_t snap_len;
    struct vd_raft_entry *ents;
    size_t n_ents, cap_ents;
    uint64_t stable;        /* last index durable on this node */
    uint64_t unstable_from; /* lowest index rewritten since the last update; 0 = none */
    bool snap_unsent;       /* a received snapshot the host has not yet installed */
    uint64_t commit, applied;

    struct vd_raft_conf conf;
    uint64_t conf_index; /* index of the entry holding conf; snap_index if from the snapshot */

    /* incoming snapshot being assembled */
    uint8_t *rx_buf;
    size_t rx_len, rx_cap;
    uint64_t rx_index, rx_term;
    struct vd_raft_conf rx_conf;

    /* roles and timers */
    enum vd_raft_role role;
    uint64_t leader;
    uint64_t election_deadline;
    uint64_t heartbeat_deadline;
    uint64_t quorum_deadline;
    uint64_t leader_contact; /* last time we heard the current leader */
    uint64_t granted[VD_RAFT_MAX_NODES], rejected[VD_RAFT_MAX_NODES];
    uint32_t n_granted, n_rejected;

    /* leader state */
    struct progress prs[VD_RAFT_MAX_NODES];
    uint32_t n_prs;
    uint64_t transfer_to, transfer_deadline;
    struct pending_read *preads;
    size_t n_preads, cap_preads;
    uint64_t read_seq;

    /* outputs */
    struct vd_raft_msg *out;
    size_t n_out, cap_out;
    struct vd_raft_read *reads;
    size_t n_reads, cap_reads;
    struct vd_raft_snapshot snap_out;

    /* what the last update handed out, settled by advance */
    bool in_update;
    uint64_t upd_stable, upd_applied;
};

/* ---- log and configuration lookups -------------------------------------------------------- */

static uint64_t rng_next(struct vd_raft *r)
{
    /* xorshift64*: a tiny deterministic stream; quality is ample for jitter. */
    uint64_t x = r->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static void reset_election_timer(struct vd_raft *r)
{
    uint64_t et = r->cfg.election_timeout_ms;
    r->election_deadline = r->now + et + rng_next(r) % et;
}

static uint64_t last_index(const struct vd_raft *r)
{
    return r->snap_index + r->n_ents;
}

static uint64_t term_at(const struct vd_raft *r, uint64_t i)
{
    if (i == r->snap_index)
        return r->snap_term;
    if (i < r->snap_index || i > last_index(r))
        return 0;
    return r->ents[i - r->snap_index - 1].term;
}

static struct vd_raft_entry *entry(struct vd_raft *r, uint64_t i)
{
    return &r->ents[i - r->snap_index - 1];
}

static uint64_t last_term(const struct vd_raft *r)
{
    return term_at(r, last_index(r));
}

int vd_raft_conf_role(const struct vd_raft_conf *c, uint64_t id)
{
    for (uint32_t i = 0; i < c->n; i++)
        if (c->nodes[i].id == id)
            return c->nodes[i].role;
    return 0;
}

static bool is_voter(const struct vd_raft *r, uint64_t id)
{
    return vd_raft_conf_role(&r->conf, id) == VD_RAFT_VOTER;
}

static uint32_t n_voters(const struct vd_raft *r)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < r->conf.n; i++)
        n += r->conf.nodes[i].role == VD_RAFT_VOTER;
    return n;
}

static uint32_t quorum(const struct vd_raft *r)
{
    return n_voters(r) / 2 + 1;
}

static struct progress *progress(struct vd_raft *r, uint64_t id)
{
    for (uint32_t i = 0; i < r->n_prs; i++)
        if (r->prs[i].id == id)
            return &r->prs[i];
    return NULL;
}

/* ---- configuration encoding -------------------------------------------------------------- */

size_t vd_raft_conf_size(const struct vd_raft_conf *c)
{
    return 4 + 9 * (size_t)c->n;
}

size_t vd_raft_conf_encode(const struct vd_raft_conf *c, uint8_t *buf)
{
    vd_be32_put(buf, c->n);
    for (uint32_t i = 0; i < c->n; i++) {
        vd_be64_put(buf + 4 + 9 * i, c->nodes[i].id);
        buf[4 + 9 * i + 8] = c->nodes[i].role;
    }
    return vd_raft_conf_size(c);
}

int vd_raft_conf_decode(const uint8_t *buf, size_t len, struct vd_raft_conf *out)
{
    if (len < 4)
        return VD_ECORRUPT;
    uint32_t n = vd_be32_get(buf);
    if (n > VD_RAFT_MAX_NODES || len != 4 + 9 * (size_t)n)
        return VD_ECORRUPT;
    memset(out, 0, sizeof(*out));
    out->n = n;
    for (uint32_t i = 0; i < n; i++) {
        out->nodes[i].id = vd_be64_get(buf + 4 + 9 * i);
        out->nodes[i].role = buf[4 + 9 * i + 8];
        if (out->nodes[i].id == 0 ||
            (out->nodes[i].role != VD_RAFT_VOTER && out->nodes[i].role != VD_RAFT_LEARNER))
            return VD_ECORRUPT;
        for (uint32_t j = 0; j < i; j++)
            if (out->nodes[j].id == out->nodes[i].id)
                return VD_ECORRUPT;
    }
    return 0;
}

void vd_raft_bootstrap_entry(const struct vd_raft_conf *conf, uint8_t *buf,
                             struct vd_raft_entry *out)
{
    out->term = 1;
    out->index = 1;
    out->type = VD_RAFT_ENTRY_CONF;
    out->len = vd_raft_conf_encode(conf, buf);
    out->data = buf;
}

/* ---- outbox ------------------------------------------------------------------------------ */

static struct vd_raft_msg *msg_new(struct vd_raft *r, uint8_t type, uint64_t to)
{
    if (r->n_out == r->cap_out) {
        size_t cap = r->cap_out ? r->cap_out * 2 : 16;
        struct vd_raft_msg *p = realloc(r->out, cap * sizeof(*p));
        if (!p)
            abort(); /* control-plane queue of a few dozen messages: treat as fatal */
        r->out = p;
        r->cap_out = cap;
    }
    struct vd_raft_msg *m = &r->out[r->n_out++];
    memset(m, 0, sizeof(*m));
    m->type = type;
    m->from = r->cfg.id;
    m->to = to;
    m->term = r->term;
    return m;
}

/*
 * Queued APPEND and SNAP messages point into the log and snapshot. When either is rewritten
 * (truncation, compaction, a new snapshot) those messages are dropped: the network may lose
 * messages anyway, and the next heartbeat round resends what is still wanted.
 */
static void outbox_drop_refs(struct vd_raft *r)
{
    size_t w = 0;
    for (size_t i = 0; i < r->n_out; i++) {
        struct vd_raft_msg *m = &r->out[i];
        if ((m->type == VD_RAFT_MSG_APPEND && m->n_entries) || m->type == VD_RAFT_MSG_SNAP)
            continue;
        r->out[w++] = *m;
    }
    r->n_out = w;
}

/* ---- log --------------------------------------------------------------------------------- */

static void mark_unstable(struct vd_raft *r, uint64_t from)
{
    if (r->unstable_from == 0 || from < r->unstable_from)
        r->unstable_from = from;
    if (r->stable >= from)
        r->stable = from - 1;
}

static void conf_recompute(struct vd_raft *r)
{
    for (size_t i = r->n_ents; i > 0; i--) {
        struct vd_raft_entry *e = &r->ents[i - 1];
        if (e->type == VD_RAFT_ENTRY_CONF && vd_raft_conf_decode(e->data, e->len, &r->conf) == 0) {
            r->conf_index = e->index;
            return;
        }
    }
    r->conf = r->snap_conf;
    r->conf_index = r->snap_index;
}

static void progress_sync(struct vd_raft *r);

/* Removes entries with index >= from (a conflict with the leader's log). */
static void log_truncate(struct vd_raft *r, uint64_t from)
{
    assert(from > r->snap_index);
    bool had_conf = false;
    while (last_index(r) >= from) {
        struct vd_raft_entry *e = &r->ents[r->n_ents - 1];
        had_conf |= e->type == VD_RAFT_ENTRY_CONF;
        free(e->data);
        r->n_ents--;
    }
    mark_unstable(r, from);
    outbox_drop_refs(r);
    if (had_conf) {
        /* A configuration takes effect when appended, so dropping it rolls back (§4.1). */
        conf_recompute(r);
        progress_sync(r);
    }
}

static int log_append(struct vd_raft *r, uint64_t term, uint8_t type, const void *data, size_t len)
{
    if (r->n_ents == r->cap_ents) {
        size_t cap = r->cap_ents ? r->cap_ents * 2 : 64;
        struct vd_raft_entry *p = realloc(r->ents, cap * sizeof(*p));
        if (!p)
            return VD_ENOMEM;
        r->ents = p;
        r->cap_ents = cap;
    }
    uint8_t *copy = NULL;
    if (len) {
        copy = malloc(len);
        if (!copy)
            return VD_ENOMEM;
        memcpy(copy, data, len);
    }
    struct vd_raft_entry *e = &r->ents[r->n_ents++];
    e->term = term;
    e->index = last_index(r);
    e->type = type;
    e->data = copy;
    e->len = len;
    mark_unstable(r, e->index);
    if (type == VD_RAFT_ENTRY_CONF) {
        struct vd_raft_conf c;
        if (vd_raft_conf_decode(copy, len, &c) == 0) {
            r->conf = c;
            r->conf_index = e->index;
            progress_sync(r);
        }
    }
    return 0;
}

/* Drops entries up to and including index (they are covered by the snapshot). */
static void log_compact(struct vd_raft *r, uint64_t index, uint64_t term)
{
    size_t drop = 0;
    if (index > r->snap_index)
        drop = index - r->snap_index;
    if (drop > r->n_ents)
        drop = r->n_ents;
    for (size_t i = 0; i < drop; i++)
        free(r->ents[i].data);
    if (drop)
        memmove(r->ents, r->ents + drop, (r->n_ents - drop) * sizeof(*r->ents));
    r->n_ents -= drop;
    r->snap_index = index;
    r->snap_term = term;
    outbox_drop_refs(r);
}

/* ---- roles ------------------------------------------------------------------------------- */

static void progress_reset(struct progress *p, uint64_t id, uint64_t next)
{
    memset(p, 0, sizeof(*p));
    p->id = id;
    p->next = next;
    p->state = PR_PROBE;
    p->recent_active = true;
}

/* Keeps one progress record per member of the current configuration. */
static void progress_sync(struct vd_raft *r)
{
    struct progress old[VD_RAFT_MAX_NODES];
    uint32_t n_old = r->n_prs;
    memcpy(old, r->prs, sizeof(old));
    r->n_prs = 0;
    for (uint32_t i = 0; i < r->conf.n; i++) {
        uint64_t id = r->conf.nodes[i].id;
        struct progress *p = &r->prs[r->n_prs++];
        progress_reset(p, id, last_index(r) + 1);
        for (uint32_t j = 0; j < n_old; j++)
            if (old[j].id == id)
                *p = old[j];
        if (id == r->cfg.id)
            p->match = r->stable;
    }
}

static void become_follower(struct vd_raft *r, uint64_t term, uint64_t leader)
{
    if (term != r->term) {
        r->term = term;
        r->vote = 0;
        r->hs_dirty = true;
    }
    if (r->role == VD_RAFT_LEADER)
        r->n_preads = 0; /* their hosts time out; a new leader confirms afresh */
    /* A follower that merely learns a higher term (from a candidate it may well reject) keeps
     * its timer: only a leader's message or a granted vote restarts it (Figure 3.1). Otherwise
     * two candidates with stale logs, or a removed server, could keep the up-to-date servers
     * from ever timing out. */
    bool restart = r->role != VD_RAFT_FOLLOWER || leader != 0;
    r->role = VD_RAFT_FOLLOWER;
    r->leader = leader;
    r->transfer_to = 0;
    if (leader)
        r->leader_contact = r->now;
    if (restart)
        reset_election_timer(r);
}

static void send_append(struct vd_raft *r, struct progress *p);
static void bcast_append(struct vd_raft *r);
static void bcast_heartbeat(struct vd_raft *r, uint64_t ctx);

/* Takes office for the current term (votes were counted by the caller): every follower is probed
 * from our last index, and a no-op of the new term is appended at once. */
static void become_leader(struct vd_raft *r)
{
    r->role = VD_RAFT_LEADER;
    r->leader = r->cfg.id;
    r->transfer_to = 0;
    r->n_preads = 0;
    r->heartbeat_deadline = r->now; /* fire at once */
    r->quorum_deadline = r->now + r->cfg.election_timeout_ms;
    for (uint32_t i = 0; i < r->n_prs; i++)
        progress_reset(&r->prs[i], r->prs[i].id, last_index(r) + 1);
    struct progress *self = progress(r, r->cfg.id);
    if (self)
        self->match = r->stable;
    /* §6.4 / §3.6.2: a no-op of the new term lets earlier entries commit and reads start. */
    if (log_append(r, r->term, VD_RAFT_ENTRY_NOOP, NULL, 0) != 0)
        abort();
    bcast_append(r);
}

/* Starts an election round. A pre-vote round (§9.6) asks whether a real election could be won,
 * at term + 1, without bumping our term, so a node that merely lost contact cannot force the
 * cluster into a new term when it returns. `transfer` marks a round requested by the leader
 * (TimeoutNow): voters then ignore their leader lease. */
static void campaign(struct vd_raft *r, bool pre, bool transfer)
{
    r->n_granted = r->n_rejected = 0;
    if (pre) {
        r->role = VD_RAFT_PRECANDIDATE;
    } else {
        r->role = VD_RAFT_CANDIDATE;
        r->term++;
        r->vote = r->cfg.id;
        r->hs_dirty = true;
    }
    r->leader = 0;
    reset_election_timer(r);
    r->granted[r->n_granted++] = r->cfg.id;
    if (r->n_granted >= quorum(r)) {
        if (pre)
            campaign(r, false, transfer);
        else
            become_leader(r);
        return;
    }
    for (uint32_t i = 0; i < r->conf.n; i++) {
        uint64_t id = r->conf.nodes[i].id;
        if (id == r->cfg.id || r->conf.nodes[i].role != VD_RAFT_VOTER)
            continue;
        struct vd_raft_msg *m = msg_new(r, pre ? VD_RAFT_MSG_PREVOTE : VD_RAFT_MSG_VOTE, id);
        m->term = pre ? r->term + 1 : r->term;
        m->index = last_index(r);
        m->log_term = last_term(r);
        m->transfer = transfer;
    }
}

/* ---- leader: replication and commitment -------------------------------------------------- */

static void send_snapshot_chunk(struct vd_raft *r, struct progress *p)
{
    if (p->snap_off > r->snap_len)
        p->snap_off = 0;
    size_t n = r->snap_len - p->snap_off;
    if (n > r->cfg.snapshot_chunk)
        n = r->cfg.snapshot_chunk;
    struct vd_raft_msg *m = msg_new(r, VD_RAFT_MSG_SNAP, p->id);
    m->index = r->snap_index;
    m->log_term = r->snap_term;
    m->conf = r->snap_conf;
    m->offset = p->snap_off;
    m->data = r->snap_data ? r->snap_data + p->snap_off : NULL;
    m->len = n;
    m->done = p->snap_off + n == r->snap_len;
    p->sent_at = r->now;
}

/* Sends the next APPEND (or snapshot chunk) to one follower according to its progress state:
 * probe sends one message and pauses until an answer or the next heartbeat; replicate streams
 * optimistically and advances next at once. */
static void send_append(struct vd_raft *r, struct progress *p)
{
    if (p->id == r->cfg.id)
        return;
    if (p->next <= r->snap_index) {
        /* The entries it needs are compacted away: ship the snapshot (§5.3). */
        if (p->state != PR_SNAPSHOT) {
            p->state = PR_SNAPSHOT;
            p->snap_off = 0;
        }
        send_snapshot_chunk(r, p);
        p->paused = true;
        return;
    }
    if (p->next > last_index(r) + 1)
        p->next = last_index(r) + 1;
    uint64_t prev = p->next - 1;
    struct vd_raft_msg *m = msg_new(r, VD_RAFT_MSG_APPEND, p->id);
    m->index = prev;
    m->log_term = term_at(r, prev);
    m->commit = r->commit;
    uint64_t n = last_index(r) - prev;
    if (n > r->cfg.max_append_entries)
        n = r->cfg.max_append_entries;
    /* entries stays NULL until vd_raft_ready: the log array may move before then */
    m->n_entries = n;
    if (p->state == PR_REPLICATE)
        p->next += n; /* optimistic pipelining */
    else
        p->paused = true;
}

static void bcast_append(struct vd_raft *r)
{
    for (uint32_t i = 0; i < r->n_prs; i++) {
        struct progress *p = &r->prs[i];
        if (p->id == r->cfg.id || p->paused || p->state == PR_SNAPSHOT)
            continue;
        if (p->next <= last_index(r) || p->state == PR_PROBE)
            send_append(r, p);
    }
}

static void bcast_heartbeat(struct vd_raft *r, uint64_t ctx)
{
    for (uint32_t i = 0; i < r->n_prs; i++) {
        struct progress *p = &r->prs[i];
        if (p->id == r->cfg.id)
            continue;
        struct vd_raft_msg *m = msg_new(r, VD_RAFT_MSG_HEARTBEAT, p->id);
        /* Never more than the follower is known to hold: its log may still diverge beyond. */
        m->commit = p->match < r->commit ? p->match : r->commit;
        m->ctx = ctx;
    }
}

static void release_reads(struct vd_raft *r);
static void assign_reads(struct vd_raft *r);

/* Advances the leader's commit index to the highest index stored on a majority of voters (this
 * node counting only what it has made durable), subject to §3.6.2. */
static void maybe_commit(struct vd_raft *r)
{
    uint64_t m[VD_RAFT_MAX_NODES];
    uint32_t n = 0;
    for (uint32_t i = 0; i < r->n_prs; i++) {
        if (!is_voter(r, r->prs[i].id))
            continue;
        m[n++] = r->prs[i].id == r->cfg.id ? r->stable : r->prs[i].match;
    }
    if (n == 0)
        return;
    /* sort descending; the quorum-th highest match is replicated on a majority */
    for (uint32_t i = 1; i < n; i++)
        for (uint32_t j = i; j > 0 && m[j] > m[j - 1]; j--) {
            uint64_t t = m[j];
            m[j] = m[j - 1];
            m[j - 1] = t;
        }
    uint64_t q = m[quorum(r) - 1];
    if (q <= r->commit)
        return;
    /* §3.6.2: count replicas only for an entry of the current term; earlier ones follow. */
    if (term_at(r, q) != r->term && r->cfg.bug != VD_RAFT_BUG_COMMIT_OLD_TERM)
        return;
    r->commit = q;
    assign_reads(r);
    release_reads(r);
    /* §4.2.2: a leader that removed itself steps down once the change is committed. */
    if (r->conf_index <= r->commit && !is_voter(r, r->cfg.id))
        become_follower(r, r->term, 0);
    else
        bcast_append(r); /* followers learn the new commit index promptly */
}

/* ---- reads (§6.4) ------------------------------------------------------------------------ */

static void push_read(struct vd_raft *r, uint64_t ctx, uint64_t index)
{
    if (r->n_reads == r->cap_reads) {
        size_t cap = r->cap_reads ? r->cap_reads * 2 : 8;
        struct vd_raft_read *p = realloc(r->reads, cap * sizeof(*p));
        if (!p)
            abort();
        r->reads = p;
        r->cap_reads = cap;
    }
    r->reads[r->n_reads++] = (struct vd_raft_read){.ctx = ctx, .index = index};
}

static void answer_read(struct vd_raft *r, const struct pending_read *pr)
{
    if (pr->from == r->cfg.id) {
        push_read(r, pr->ctx, pr->index);
    } else {
        struct vd_raft_msg *m = msg_new(r, VD_RAFT_MSG_READ_INDEX_RESP, pr->from);
        m->ctx = pr->ctx;
        m->index = pr->index;
    }
}

/* Releases pending reads whose heartbeat round a majority of voters echoed. */
static void release_reads(struct vd_raft *r)
{
    size_t done = 0;
    for (; done < r->n_preads; done++) {
        struct pending_read *pr = &r->preads[done];
        if (pr->seq == 0)
            break;
        uint32_t acks = 0;
        for (uint32_t i = 0; i < r->n_prs; i++) {
            struct progress *p = &r->prs[i];
            if (!is_voter(r, p->id))
                continue;
            if (p->id == r->cfg.id || p->read_ack >= pr->seq)
                acks++;
        }
        if (acks < quorum(r))
            break;
        answer_read(r, pr);
    }
    if (done == 0)
        return;
    memmove(r->preads, r->preads + done, (r->n_preads - done) * sizeof(*r->preads));
    r->n_preads -= done;
}

/* Gives reads that waited for the first commit of this term their index and a heartbeat round. */
static void assign_reads(struct vd_raft *r)
{
    if (term_at(r, r->commit) != r->term)
        return;
    bool any = false;
    for (size_t i = 0; i < r->n_preads; i++)
        if (r->preads[i].seq == 0) {
            r->preads[i].index = r->commit;
            r->preads[i].seq = ++r->read_seq;
            any = true;
        }
    if (any)
        bcast_heartbeat(r, r->read_seq);
}

/* §6.4: the read index is the commit index once it is known to be current (an entry of this
 * term committed), confirmed by a heartbeat round that a majority answers. */
static int leader_read(struct vd_raft *r, uint64_t ctx, uint64_t from)
{
    struct pending_read pr = {.ctx = ctx, .from = from};
    bool current = term_at(r, r->commit) == r->term;
    if (current) {
        pr.index = r->commit;
        pr.seq = ++r->read_seq;
        if (n_voters(r) == 1 && is_voter(r, r->cfg.id)) {
            answer_read(r, &pr);
            return 0;
        }
    }
    if (r->n_preads == r->cap_preads) {
        size_t cap = r->cap_preads ? r->cap_preads * 2 : 8;
        struct pending_read *p = realloc(r->preads, cap * sizeof(*p));
        if (!p)
            return VD_ENOMEM;
        r->preads = p;
        r->cap_preads = cap;
    }
    r->preads[r->n_preads++] = pr;
    if (current)
        bcast_heartbeat(r, pr.seq);
    return 0;
}

int vd_raft_read_index(struct vd_raft *r, uint64_t ctx)
{
    if (r->role == VD_RAFT_LEADER)
        return leader_read(r, ctx, r->cfg.id);
    if (!r->leader)
        return VD_ENOTLEADER;
    struct vd_raft_msg *m = msg_new(r, VD_RAFT_MSG_READ_INDEX, r->leader);
    m->ctx = ctx;
    return 0;
}

/* ---- snapshots --------------------------------------------------------------------------- */

static int snap_set(struct vd_raft *r, uint64_t index, uint64_t term,
                    const struct vd_raft_conf *conf, uint8_t *owned_data, size_t len)
{
    free(r->snap_data);
    r->snap_data = owned_data;
    r->snap_len = len;
    r->snap_conf = *conf;
    log_compact(r, index, term);
    for (uint32_t i = 0; i < r->n_prs; i++)
        if (r->prs[i].state == PR_SNAPSHOT)
            r->prs[i].snap_off = 0; /* a new snapshot restarts any transfer */
    return 0;
}

/* The configuration in force at index (latest conf entry at or before it). */
static void conf_at(struct vd_raft *r, uint64_t index, struct vd_raft_conf *out)
{
    *out = r->snap_conf;
    for (uint64_t i = index; i > r->snap_index; i--) {
        struct vd_raft_entry *e = entry(r, i);
        if (e->type == VD_RAFT_ENTRY_CONF && vd_raft_conf_decode(e->data, e->len, out) == 0)
            return;
    }
}

int vd_raft_snapshot(struct vd_raft *r, uint64_t index, const void *data, size_t len)
{
    if (index <= r->snap_index || index > r->applied || index > r->stable)
        return VD_EINVAL;
    uint8_t *copy = NULL;
    if (len) {
        copy = malloc(len);
        if (!copy)
            return VD_ENOMEM;
        memcpy(copy, data, len);
    }
    struct vd_raft_conf c;
    conf_at(r, index, &c);
    return snap_set(r, index, term_at(r, index), &c, copy, len);
}

void vd_raft_current_snapshot(const struct vd_raft *r, struct vd_raft_snapshot *out)
{
    *out = (struct vd_raft_snapshot){.index = r->snap_index,
                                     .term = r->snap_term,
                                     .conf = r->snap_conf,
                                     .data = r->snap_data,
                                     .len = r->snap_len};
}

/* Follower side of a finished InstallSnapshot (§5.3). */
static void snap_install(struct vd_raft *r)
{
    uint64_t index = r->rx_index, term = r->rx_term;
    uint8_t *data = r->rx_buf;
    size_t len = r->rx_len;
    r->rx_buf = NULL;
    r->rx_len = r->rx_cap = 0;
    r->rx_index = 0;
    if (term_at(r, index) == term && index <= last_index(r)) {
        /* Our log agrees at the snapshot point: keep what follows. */
        snap_set(r, index, term, &r->rx_conf, data, len);
    } else {
        /* The snapshot conflicts with (or is ahead of) our log: it replaces the log. */
        while (r->n_ents) {
            free(r->ents[r->n_ents - 1].data);
            r->n_ents--;
        }
        snap_set(r, index, term, &r->rx_conf, data, len);
        r->unstable_from = index + 1; /* host: delete every stored entry after the snapshot */
        r->stable = index;
    }
    if (r->stable < index)
        r->stable = index;
    if (r->unstable_from && r->unstable_from <= index)
        r->unstable_from = index + 1;
    if (r->commit < index)
        r->commit = index;
    r->applied = index;
    r->snap_unsent = true;
    conf_recompute(r);
    progress_sync(r);
}

/* ---- message handling -------------------------------------------------------------------- */

/* Follower side of AppendEntries. Always answers: success with the last index now known to
 * match the leader, or a rejection carrying a hint for fast backoff (the first index of our
 * conflicting term, or our last index + 1 when our log is too short). Entries already held with
 * the same term are skipped rather than rewritten, so a delayed duplicate cannot truncate. */
static void handle_append(struct vd_raft *r, const struct vd_raft_msg *m)
{
    struct vd_raft_msg *resp;
    if (m->index < r->commit) {
        resp = msg_new(r, VD_RAFT_MSG_APPEND_RESP, m->from);
        resp->index = r->commit;
        return;
    }
    if (term_at(r, m->index) != m->log_term || m->index > last_index(r)) {
        resp = msg_new(r, VD_RAFT_MSG_APPEND_RESP, m->from);
        resp->reject = true;
        resp->index = m->index;
        if (m->index > last_index(r)) {
            resp->hint = last_index(r) + 1;
            resp->log_term = 0;
        } else {
            /* Fast backoff: skip the whole conflicting term in one round trip. */
            uint64_t t = term_at(r, m->index), i = m->index;
            while (i - 1 > r->commit && term_at(r, i - 1) == t)
                i--;
            resp->hint = i;
            resp->log_term = t;
        }
        return;
    }
    uint64_t idx = m->index;
    for (size_t k = 0; k < m->n_entries; k++) {
        const struct vd_raft_entry *e = &m->entries[k];
        idx = m->index + 1 + k;
        if (idx <= last_index(r)) {
            if (term_at(r, idx) == e->term)
                continue;
            if (idx <= r->commit)
                return; /* would rewrite a committed entry: a broken leader, refuse */
            log_truncate(r, idx);
        }
        if (log_append(r, e->term, e->type, e->data, e->len) != 0)
            return; /* out of memory: no reply, the leader retries */
    }
    uint64_t last_new = m->index + m->n_entries;
    uint64_t c = m->commit < last_new ? m->commit : last_new;
    if (c > r->commit)
        r->commit = c;
    resp = msg_new(r, VD_RAFT_MSG_APPEND_RESP, m->from);
    resp->index = last_new;
}

/* Leader side of an APPEND answer: a success raises match (and maybe commit); a rejection jumps
 * next back past the whole conflicting term in one round trip. Stale answers (reordered or
 * duplicated) are recognised by their index and ignored. */
static void handle_append_resp(struct vd_raft *r, const struct vd_raft_msg *m)
{
    struct progress *p = progress(r, m->from);
    if (!p || m->index > last_index(r))
        return; /* an index we never sent: not from a correct follower of this term */
    p->recent_active = true;
    if (m->reject) {
        if (p->state == PR_REPLICATE && m->index <= p->match)
            return; /* stale */
        if (p->state == PR_PROBE && m->index != p->next - 1)
            return; /* stale */
        if (p->state == PR_SNAPSHOT)
            return;
        uint64_t next = m->hint;
        if (m->log_term) {
            /* If we hold entries of the follower's conflicting term, resume after our last one. */
            uint64_t j = m->index < last_index(r) ? m->index : last_index(r);
            while (j > r->snap_index && term_at(r, j) > m->log_term)
                j--;
            if (j > r->snap_index && term_at(r, j) == m->log_term)
                next = j + 1;
        }
        if (next > m->index)
            next = m->index;
        if (next <= p->match)
            next = p->match + 1;
        if (next < 1)
            next = 1;
        uint64_t old = p->next;
        p->next = next;
        p->state = PR_PROBE;
        p->paused = false;
        /* A rejection that moves nothing (it contradicts what the follower acknowledged) must
         * not be answered at once, or the two would echo each other; the heartbeat retries. */
        if (next < old)
            send_append(r, p);
        else
            p->paused = true;
        return;
    }
    if (m->index > p->match)
        p->match = m->index;
    if (p->state == PR_PROBE) {
        /* The follower matches up to match: stream from there. Resending only when there is
         * something new keeps a duplicated or stale acknowledgement from echoing forever. */
        p->state = PR_REPLICATE;
        p->next = p->match + 1;
    } else if (p->next <= m->index) {
        p->next = m->index + 1;
    }
    p->paused = false;
    if (p->state == PR_SNAPSHOT && p->match >= r->snap_index) {
        p->state = PR_PROBE;
        p->next = p->match + 1;
    }
    maybe_commit(r);
    if (r->role != VD_RAFT_LEADER)
        return;
    if (r->transfer_to == p->id && p->match == last_index(r))
        msg_new(r, VD_RAFT_MSG_TIMEOUT_NOW, p->id);
    if (p->next <= last_index(r) && p->state != PR_SNAPSHOT)
        send_append(r, p);
}

/* Follower side of InstallSnapshot: chunks must arrive in order (offset == bytes held); anything
 * else is answered with what we hold so the leader resumes from there. The last chunk installs. */
static void handle_snap(struct vd_raft *r, const struct vd_raft_msg *m)
{
    struct vd_raft_msg *resp = msg_new(r, VD_RAFT_MSG_SNAP_RESP, m->from);
    resp->index = m->index;
    resp->ctx = m->offset;
    if (m->index <= r->commit) {
        /* Already have everything it covers. */
        resp->done = true;
        resp->offset = m->offset + m->len;
        return;
    }
    if (m->offset == 0) {
        r->rx_len = 0;
        r->rx_index = m->index;
        r->rx_term = m->log_term;
        r->rx_conf = m->conf;
    }
    if (r->rx_index != m->index || m->offset != r->rx_len) {
        resp->offset = r->rx_index == m->index ? r->rx_len : 0;
        return;
    }
    if (r->rx_len + m->len > r->rx_cap) {
        size_t cap = r->rx_cap ? r->rx_cap : 4096;
        while (cap < r->rx_len + m->len)
            cap *= 2;
        uint8_t *p = realloc(r->rx_buf, cap);
        if (!p) {
            resp->offset = r->rx_len;
            return;
        }
        r->rx_buf = p;
        r->rx_cap = cap;
    }
    if (m->len)
        memcpy(r->rx_buf + r->rx_len, m->data, m->len);
    r->rx_len += m->len;
    resp->offset = r->rx_len;
    if (m->done) {
        resp->done = true;
        snap_install(r);
    }
}

static void handle_snap_resp(struct vd_raft *r, const struct vd_raft_msg *m)
{
    struct progress *p = progress(r, m->from);
    if (!p)
        return;
    p->recent_active = true;
    if (p->state != PR_SNAPSHOT || m->index != r->snap_index)
        return; /* about an older snapshot of ours: the retransmit timer restarts the transfer */
    if (m->done) {
        if (m->index > p->match)
            p->match = m->index;
        p->state = PR_PROBE;
        p->next = p->match + 1;
        p->paused = false;
        maybe_commit(r);
        if (r->role != VD_RAFT_LEADER)
            return;
        send_append(r, p);
        return;
    }
    /* Only the answer to the chunk we consider current moves the transfer on: duplicated or
     * reordered answers would otherwise start parallel chains of chunks. */
    if (m->ctx != p->snap_off)
        return;
    p->snap_off = m->offset;
    send_snapshot_chunk(r, p);
}

/* Answers VOTE and PREVOTE (terms already reconciled by vd_raft_step). One vote per term, only
 * for a candidate whose log is at least as up to date as ours (§3.6.1); a pre-vote is granted
 * without recording anything. */
static void handle_vote(struct vd_raft *r, const struct vd_raft_msg *m)
{
    bool pre = m->type == VD_RAFT_MSG_PREVOTE;
    bool can_vote =
        r->vote == m->from || (r->vote == 0 && r->leader == 0) || (pre && m->term > r->term);
    if (!pre && r->cfg.bug == VD_RAFT_BUG_DOUBLE_VOTE && m->term == r->term &&
        r->role == VD_RAFT_FOLLOWER)
        can_vote = true;
    bool up_to_date =
        m->log_term > last_term(r) || (m->log_term == last_term(r) && m->index >= last_index(r));
    struct vd_raft_msg *resp =
        msg_new(r, pre ? VD_RAFT_MSG_PREVOTE_RESP : VD_RAFT_MSG_VOTE_RESP, m->from);
    if (can_vote && up_to_date) {
        /* A granted pre-vote carries the proposed term so the candidate does not drop it. */
        resp->term = m->term;
        if (!pre) {
            r->vote = m->from;
            r->hs_dirty = true;
            reset_election_timer(r);
        }
    } else {
        resp->reject = true;
    }
}

static void handle_vote_resp(struct vd_raft *r, const struct vd_raft_msg *m)
{
    bool pre = m->type == VD_RAFT_MSG_PREVOTE_RESP;
    if ((pre && r->role != VD_RAFT_PRECANDIDATE) || (!pre && r->role != VD_RAFT_CANDIDATE))
        return;
    if (!is_voter(r, m->from))
        return;
    for (uint32_t i = 0; i < r->n_granted; i++)
        if (r->granted[i] == m->from)
            return;
    for (uint32_t i = 0; i < r->n_rejected; i++)
        if (r->rejected[i] == m->from)
            return;
    if (m->reject)
        r->rejected[r->n_rejected++] = m->from;
    else
        r->granted[r->n_granted++] = m->from;
    if (r->n_granted >= quorum(r)) {
        if (pre)
            campaign(r, false, false);
        else
            become_leader(r);
    } else if (r->n_rejected >= quorum(r)) {
        become_follower(r, r->term, 0);
    }
}

static void handle_heartbeat(struct vd_raft *r, const struct vd_raft_msg *m)
{
    uint64_t c = m->commit < last_index(r) ? m->commit : last_index(r);
    if (c > r->commit)
        r->commit = c;
    struct vd_raft_msg *resp = msg_new(r, VD_RAFT_MSG_HEARTBEAT_RESP, m->from);
    resp->ctx = m->ctx;
}

static void handle_heartbeat_resp(struct vd_raft *r, const struct vd_raft_msg *m)
{
    struct progress *p = progress(r, m->from);
    if (!p)
        return;
    p->recent_active = true;
    p->paused = false;
    if (m->ctx > p->read_ack)
        p->read_ack = m->ctx;
    if (p->state == PR_SNAPSHOT) {
        if (r->now >= p->sent_at + 2 * (uint64_t)r->cfg.heartbeat_ms)
            send_snapshot_chunk(r, p); /* the chunk or its answer was probably lost */
    } else if (p->match < last_index(r))
        send_append(r, p);
    release_reads(r);
}

static bool in_lease(const struct vd_raft *r)
{
    /* §4.2.3: while a leader is heard from, vote requests are disruptions, not elections. */
    if (!r->cfg.check_quorum)
        return false;
    if (r->role == VD_RAFT_LEADER)
        return true;
    return r->leader != 0 && r->now < r->leader_contact + r->cfg.election_timeout_ms;
}

static bool valid_msg(const struct vd_raft_msg *m)
{
    if (m->type < VD_RAFT_MSG_APPEND || m->type >= VD_RAFT__MSG_COUNT || m->from == 0)
        return false;
    if (m->n_entries && !m->entries)
        return false;
    for (size_t i = 0; i < m->n_entries; i++) {
        const struct vd_raft_entry *e = &m->entries[i];
        if (e->index != m->index + 1 + i || e->term == 0 || e->term > m->term)
            return false;
        if (e->type < VD_RAFT_ENTRY_NORMAL || e->type > VD_RAFT_ENTRY_CONF || (e->len && !e->data))
            return false;
        if (i > 0 && e->term < m->entries[i - 1].term)
            return false;
    }
    if (m->type == VD_RAFT_MSG_SNAP && ((m->len && !m->data) || m->conf.n > VD_RAFT_MAX_NODES))
        return false;
    return true;
}

/* Reconciles terms first (§3.3), with the exceptions that make pre-vote and the leader lease
 * work: pre-vote traffic never changes terms, and vote requests inside the lease are dropped
 * unanswered. Then dispatches on the message type. */
int vd_raft_step(struct vd_raft *r, const struct vd_raft_msg *m)
{
    assert(!r->in_update);
    if (!valid_msg(m))
        return VD_EINVAL;
    if (m->to != r->cfg.id)
        return VD_EINVAL;
    bool is_vote = m->type == VD_RAFT_MSG_VOTE || m->type == VD_RAFT_MSG_PREVOTE;
    if (m->term > r->term) {
        if (is_vote && !m->transfer && in_lease(r))
            return 0;
        bool keep_term =
            m->type == VD_RAFT_MSG_PREVOTE || (m->type == VD_RAFT_MSG_PREVOTE_RESP && !m->reject);
        if (!keep_term) {
            bool from_leader = m->type == VD_RAFT_MSG_APPEND || m->type == VD_RAFT_MSG_HEARTBEAT ||
                               m->type == VD_RAFT_MSG_SNAP;
            become_follower(r, m->term, from_leader ? m->from : 0);
        }
    } else if (m->term < r->term) {
        if (m->type == VD_RAFT_MSG_APPEND || m->type == VD_RAFT_MSG_HEARTBEAT ||
            m->type == VD_RAFT_MSG_SNAP) {
            /* A deposed leader learns our term from the reply and steps down. */
            msg_new(r, VD_RAFT_MSG_APPEND_RESP, m->from);
        } else if (m->type == VD_RAFT_MSG_PREVOTE) {
            struct vd_raft_msg *resp = msg_new(r, VD_RAFT_MSG_PREVOTE_RESP, m->from);
            resp->reject = true;
        }
        return 0;
    }

    switch (m->type) {
    case VD_RAFT_MSG_APPEND:
    case VD_RAFT_MSG_HEARTBEAT:
    case VD_RAFT_MSG_SNAP:
        if (r->role == VD_RAFT_LEADER)
            return 0; /* same term, another leader: impossible unless votes were doubled */
        if (r->role != VD_RAFT_FOLLOWER)
            become_follower(r, r->term, m->from);
        r->leader = m->from;
        r->leader_contact = r->now;
        reset_election_timer(r);
        if (m->type == VD_RAFT_MSG_APPEND)
            handle_append(r, m);
        else if (m->type == VD_RAFT_MSG_HEARTBEAT)
            handle_heartbeat(r, m);
        else
            handle_snap(r, m);
        break;
    case VD_RAFT_MSG_APPEND_RESP:
        if (r->role == VD_RAFT_LEADER)
            handle_append_resp(r, m);
        break;
    case VD_RAFT_MSG_HEARTBEAT_RESP:
        if (r->role == VD_RAFT_LEADER)
            handle_heartbeat_resp(r, m);
        break;
    case VD_RAFT_MSG_SNAP_RESP:
        if (r->role == VD_RAFT_LEADER)
            handle_snap_resp(r, m);
        break;
    case VD_RAFT_MSG_VOTE:
    case VD_RAFT_MSG_PREVOTE:
        handle_vote(r, m);
        break;
    case VD_RAFT_MSG_VOTE_RESP:
    case VD_RAFT_MSG_PREVOTE_RESP:
        handle_vote_resp(r, m);
        break;
    case VD_RAFT_MSG_TIMEOUT_NOW:
        if (r->role == VD_RAFT_FOLLOWER && is_voter(r, r->cfg.id) && m->from == r->leader)
            campaign(r, false, true); /* §3.10: skip pre-vote, the leader asked for it */
        break;
    case VD_RAFT_MSG_READ_INDEX:
        if (r->role == VD_RAFT_LEADER && leader_read(r, m->ctx, m->from) != 0) {
            struct vd_raft_msg *resp = msg_new(r, VD_RAFT_MSG_READ_INDEX_RESP, m->from);
            resp->ctx = m->ctx;
            resp->reject = true;
        }
        break;
    case VD_RAFT_MSG_READ_INDEX_RESP:
        if (!m->reject && m->from == r->leader)
            push_read(r, m->ctx, m->index);
        break;
    default:
        break;
    }
    return 0;
}

/* ---- time -------------------------------------------------------------------------------- */

static void check_quorum(struct vd_raft *r)
{
    uint32_t active = 0;
    for (uint32_t i = 0; i < r->n_prs; i++) {
        struct progress *p = &r->prs[i];
        if (is_voter(r, p->id) && (p->id == r->cfg.id || p->recent_active))
            active++;
        p->recent_active = false;
    }
    if (active < quorum(r))
        become_follower(r, r->term, 0); /* §6.2: we may be the stale side of a partition */
}

void vd_raft_tick(struct vd_raft *r, uint64_t now_ms)
{
    assert(!r->in_update);
    if (now_ms > r->now)
        r->now = now_ms;
    if (r->role == VD_RAFT_LEADER) {
        if (r->transfer_to && r->now >= r->transfer_deadline)
            r->transfer_to = 0;
        if (r->cfg.check_quorum && r->now >= r->quorum_deadline) {
            r->quorum_deadline = r->now + r->cfg.election_timeout_ms;
            check_quorum(r);
            if (r->role != VD_RAFT_LEADER)
                return;
        }
        if (r->now >= r->heartbeat_deadline) {
            r->heartbeat_deadline = r->now + r->cfg.heartbeat_ms;
            bcast_heartbeat(r, r->read_seq);
        }
        return;
    }
    if (r->now >= r->election_deadline) {
        if (is_voter(r, r->cfg.id))
            campaign(r, r->cfg.pre_vote, false);
        else
            reset_election_timer(r); /* learners and strangers never campaign */
    }
}

uint64_t vd_raft_next_deadline(const struct vd_raft *r)
{
    if (r->role != VD_RAFT_LEADER)
        return r->election_deadline;
    uint64_t d = r->heartbeat_deadline;
    if (r->cfg.check_quorum && r->quorum_deadline < d)
        d = r->quorum_deadline;
    if (r->transfer_to && r->transfer_deadline < d)
        d = r->transfer_deadline;
    return d;
}

/* ---- client requests --------------------------------------------------------------------- */

int vd_raft_propose(struct vd_raft *r, const void *data, size_t len, uint64_t *index,
                    uint64_t *term)
{
    assert(!r->in_update);
    if (r->role != VD_RAFT_LEADER)
        return VD_ENOTLEADER;
    if (r->transfer_to)
        return VD_EBUSY;
    int rc = log_append(r, r->term, VD_RAFT_ENTRY_NORMAL, data, len);
    if (rc)
        return rc;
    if (index)
        *index = last_index(r);
    if (term)
        *term = r->term;
    bcast_append(r);
    return 0;
}

int vd_raft_change(struct vd_raft *r, enum vd_raft_change_op op, uint64_t id, uint64_t *index)
{
    assert(!r->in_update);
    if (r->role != VD_RAFT_LEADER)
        return VD_ENOTLEADER;
    /* §4.1 / the 2015 single-server bug fix: only after an entry of this term committed, and
     * one change at a time. */
    if (term_at(r, r->commit) != r->term || r->conf_index > r->commit || r->transfer_to)
        return VD_EBUSY;
    struct vd_raft_conf c = r->conf;
    int role = vd_raft_conf_role(&c, id);
    uint32_t pos = 0;
    while (pos < c.n && c.nodes[pos].id != id)
        pos++;
    switch (op) {
    case VD_RAFT_ADD_LEARNER:
        if (role)
            return VD_EEXIST;
        if (id == 0)
            return VD_EINVAL;
        if (c.n == VD_RAFT_MAX_NODES)
            return VD_ERANGE;
        c.nodes[c.n].id = id;
        c.nodes[c.n].role = VD_RAFT_LEARNER;
        c.n++;
        break;
    case VD_RAFT_PROMOTE: {
        if (role != VD_RAFT_LEARNER)
            return role ? VD_EEXIST : VD_ENOTFOUND;
        struct progress *p = progress(r, id);
        if (!p || p->match < r->commit)
            return VD_EBUSY; /* §4.2.1: let it catch up first so availability is not lost */
        c.nodes[pos].role = VD_RAFT_VOTER;
        break;
    }
    case VD_RAFT_REMOVE:
        if (!role)
            return VD_ENOTFOUND;
        if (role == VD_RAFT_VOTER && n_voters(r) == 1)
            return VD_EINVAL;
        c.nodes[pos] = c.nodes[c.n - 1];
        c.n--;
        break;
    default:
        return VD_EINVAL;
    }
    uint8_t buf[4 + 9 * VD_RAFT_MAX_NODES];
    size_t len = vd_raft_conf_encode(&c, buf);
    int rc = log_append(r, r->term, VD_RAFT_ENTRY_CONF, buf, len);
    if (rc)
        return rc;
    if (index)
        *index = last_index(r);
    bcast_append(r);
    maybe_commit(r);
    return 0;
}

int vd_raft_transfer(struct vd_raft *r, uint64_t id)
{
    assert(!r->in_update);
    if (r->role != VD_RAFT_LEADER)
        return VD_ENOTLEADER;
    if (id == r->cfg.id)
        return VD_EINVAL;
    if (!is_voter(r, id))
        return VD_ENOTFOUND;
    struct progress *p = progress(r, id);
    r->transfer_to = id;
    r->transfer_deadline = r->now + r->cfg.election_timeout_ms;
    if (p->match == last_index(r))
        msg_new(r, VD_RAFT_MSG_TIMEOUT_NOW, id);
    else if (!p->paused && p->state != PR_SNAPSHOT)
        send_append(r, p);
    return 0;
}

/* ---- updates ----------------------------------------------------------------------------- */

static uint64_t apply_limit(const struct vd_raft *r)
{
    /* Entries this update persists count as durable for applying: the host persists first. */
    return r->commit < last_index(r) ? r->commit : last_index(r);
}

bool vd_raft_has_ready(const struct vd_raft *r)
{
    return r->hs_dirty || r->unstable_from || r->snap_unsent || r->n_out || r->n_reads ||
           apply_limit(r) > r->applied;
}

/* Collects everything pending into *u without changing state; vd_raft_advance settles it. APPEND
 * messages get their entry pointers only here, because the log array may have moved since they
 * were queued. */
bool vd_raft_ready(struct vd_raft *r, struct vd_raft_update *u)
{
    memset(u, 0, sizeof(*u));
    if (!vd_raft_has_ready(r))
        return false;
    r->in_update = true;
    if (r->hs_dirty) {
        u->hard_state = true;
        u->term = r->term;
        u->vote = r->vote;
    }
    if (r->snap_unsent) {
        r->snap_out = (struct vd_raft_snapshot){.index = r->snap_index,
                                                .term = r->snap_term,
                                                .conf = r->snap_conf,
                                                .data = r->snap_data,
                                                .len = r->snap_len};
        u->snapshot = &r->snap_out;
    }
    if (r->unstable_from) {
        u->first_index = r->unstable_from;
        u->n_entries = last_index(r) >= r->unstable_from ? last_index(r) - r->unstable_from + 1 : 0;
        u->entries = u->n_entries ? entry(r, r->unstable_from) : NULL;
    }
    r->upd_stable = last_index(r);
    for (size_t i = 0; i < r->n_out; i++) {
        struct vd_raft_msg *m = &r->out[i];
        if (m->type == VD_RAFT_MSG_APPEND && m->n_entries)
            m->entries = entry(r, m->index + 1);
    }
    u->msgs = r->out;
    u->n_msgs = r->n_out;
    uint64_t lim = apply_limit(r);
    r->upd_applied = r->applied;
    if (lim > r->applied) {
        u->committed = entry(r, r->applied + 1);
        u->n_committed = lim - r->applied;
        r->upd_applied = lim;
    }
    u->reads = r->reads;
    u->n_reads = r->n_reads;
    u->deadline = vd_raft_next_deadline(r);
    return true;
}

void vd_raft_advance(struct vd_raft *r)
{
    assert(r->in_update);
    r->in_update = false;
    r->hs_dirty = false;
    r->snap_unsent = false;
    r->unstable_from = 0;
    r->stable = r->upd_stable;
    r->applied = r->upd_applied;
    r->n_out = 0;
    r->n_reads = 0;
    if (r->role == VD_RAFT_LEADER) {
        struct progress *self = progress(r, r->cfg.id);
        if (self)
            self->match = r->stable;
        maybe_commit(r); /* our own durable copy may complete a majority */
    }
}

/* ---- lifecycle --------------------------------------------------------------------------- */

void vd_raft_config_default(struct vd_raft_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->election_timeout_ms = 1000;
    cfg->heartbeat_ms = 100;
    cfg->max_append_entries = 64;
    cfg->snapshot_chunk = 64 * 1024;
    cfg->pre_vote = true;
    cfg->check_quorum = true;
}

int vd_raft_new(const struct vd_raft_config *cfg, const struct vd_raft_state *st, uint64_t now_ms,
                struct vd_raft **out)
{
    if (cfg->id == 0 || cfg->election_timeout_ms == 0 || cfg->heartbeat_ms == 0 ||
        cfg->max_append_entries == 0 || cfg->snapshot_chunk == 0)
        return VD_EINVAL;
    struct vd_raft *r = calloc(1, sizeof(*r));
    if (!r)
        return VD_ENOMEM;
    r->cfg = *cfg;
    r->now = now_ms;
    r->rng = cfg->seed ^ (cfg->id * 0x9E3779B97F4A7C15ULL);
    if (r->rng == 0)
        r->rng = 0x853c49e6748fea9bULL;
    r->role = VD_RAFT_FOLLOWER;
    int rc = VD_EINVAL;
    if (st) {
        r->term = st->term;
        r->vote = st->vote;
        if (st->snapshot) {
            const struct vd_raft_snapshot *s = st->snapshot;
            uint8_t *copy = NULL;
            if (s->len) {
                copy = malloc(s->len);
                if (!copy) {
                    rc = VD_ENOMEM;
                    goto out_free_core;
                }
                memcpy(copy, s->data, s->len);
            }
            r->snap_data = copy;
            r->snap_len = s->len;
            r->snap_index = s->index;
            r->snap_term = s->term;
            r->snap_conf = s->conf;
        }
        for (size_t i = 0; i < st->n_entries; i++) {
            const struct vd_raft_entry *e = &st->entries[i];
            if (e->index != last_index(r) + 1 || e->term < last_term(r) || e->term > r->term + 1 ||
                e->term == 0)
                goto out_free_core;
            if (e->term > r->term) {
                /* A bootstrap entry may precede any hard state. */
                r->term = e->term;
            }
            rc = log_append(r, e->term, e->type, e->data, e->len);
            if (rc)
                goto out_free_core;
            rc = VD_EINVAL;
        }
    }
    r->stable = last_index(r);
    r->unstable_from = 0;
    r->commit = r->applied = r->snap_index;
    conf_recompute(r);
    progress_sync(r);
    reset_election_timer(r);
    *out = r;
    return 0;

out_free_core:
    vd_raft_free(r);
    return rc;
}

void vd_raft_free(struct vd_raft *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_ents; i++)
        free(r->ents[i].data);
    free(r->ents);
    free(r->snap_data);
    free(r->rx_buf);
    free(r->preads);
    free(r->out);
    free(r->reads);
    free(r);
}

/* ---- accessors --------------------------------------------------------------------------- */

uint64_t vd_raft_id(const struct vd_raft *r)
{
    return r->cfg.id;
}
enum vd_raft_role vd_raft_role(const struct vd_raft *r)
{
    return r->role;
}
uint64_t vd_raft_term(const struct vd_raft *r)
{
    return r->term;
}
uint64_t vd_raft_leader(const struct vd_raft *r)
{
    return r->leader;
}
uint64_t vd_raft_commit(const struct vd_raft *r)
{
    return r->commit;
}
uint64_t vd_raft_applied(const struct vd_raft *r)
{
    return r->applied;
}
uint64_t vd_raft_first_index(const struct vd_raft *r)
{
    return r->snap_index + 1;
}
uint64_t vd_raft_last_index(const struct vd_raft *r)
{
    return last_index(r);
}
uint64_t vd_raft_snapshot_index(const struct vd_raft *r)
{
    return r->snap_index;
}
uint64_t vd_raft_term_at(const struct vd_raft *r, uint64_t index)
{
    return term_at(r, index);
}
const struct vd_raft_conf *vd_raft_conf(const struct vd_raft *r)
{
    return &r->conf;
}

const struct vd_raft_entry *vd_raft_entry_at(const struct vd_raft *r, uint64_t index)
{
    if (index <= r->snap_index || index > last_index(r))
        return NULL;
    return &r->ents[index - r->snap_index - 1];
}

uint64_t vd_raft_match(const struct vd_raft *r, uint64_t id)
{
    if (r->role != VD_RAFT_LEADER)
        return 0;
    for (uint32_t i = 0; i < r->n_prs; i++)
        if (r->prs[i].id == id)
            return r->prs[i].id == r->cfg.id ? r->stable : r->prs[i].match;
    return 0;
}

const char *vd_raft_role_name(enum vd_raft_role role)
{
    switch (role) {
    case VD_RAFT_FOLLOWER:
        return "follower";
    case VD_RAFT_PRECANDIDATE:
        return "precandidate";
    case VD_RAFT_CANDIDATE:
        return "candidate";
    case VD_RAFT_LEADER:
        return "leader";
    }
    return "unknown";
}
