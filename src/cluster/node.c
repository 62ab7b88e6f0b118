/*
 * The cluster node: one libuv loop thread owns the Raft core, its LMDB log, the peer transport
 * and the metadata state machine; HTTP threads hand it operations through a locked queue and a
 * uv_async_t, and it answers through their completions.
 *
 * Raft entries of the metadata group carry a 16-byte header before the state machine's command:
 * the id of the node that asked for the change and a sequence number unique on that node. The
 * asking node learns the outcome from its own stream of applied entries (the first entry with
 * its header decides; duplicates of a retried request apply as harmless no-ops and a leader
 * checks its recent and uncommitted entries before proposing a retry), so a request survives a
 * leader change without being applied twice with different outcomes.
 *
 * The local database follows the state machine by reconciliation: after entries are applied,
 * the node compares its collections with the state machine's (vd_meta_plan) and creates or
 * deletes collections one at a time through the database's own write path. Until the node has
 * applied everything its log held at start-up it does not reconcile, so a restart never deletes
 * data because the state machine is briefly behind.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "cluster_int.h"
#include "vectord/cluster.h"
#include "vectord/raft.h"
#include "vectord/raftlog.h"

#define REQ_HDR 16
#define HOUSEKEEPING_MS 50
#define PING_MS 500
#define DOWN_AFTER_MS 2500
#define RETRY_MS 3000      /* a forwarded proposal not applied by then is sent again */
#define READ_RETRY_MS 1000 /* a ReadIndex not answered by then is asked again */
#define JOIN_RETRY_MS 500
#define APPLIED_MEMORY 4096 /* recent request headers remembered against duplicates */
#define MAX_MEMBERS VD_RAFT_MAX_NODES
#define ADD_NODE_TIMEOUT_MS 60000
#define INVITE_ANSWER_MS 10000 /* an invited node must answer by then */

enum call_op { CALL_PROPOSE = 1, CALL_JOIN = 2, CALL_INVITE = 3 };
enum { FRAME_PING = 19 };

enum op_kind {
    OP_CREATE = 1,
    OP_DELETE,
    OP_SYNC,
    OP_ADD_NODE,
    OP_REMOVE_NODE,
    OP_INTERNAL,
    OP_PINDEX, /* payload index set or drop */
};
enum op_state {
    ST_NEW = 1,     /* to propose (or forward), or to ask a read index for */
    ST_SENT,        /* proposed here or forwarded to try_leader at last_try */
    ST_WAIT_APPLY,  /* applied in the state machine at index; waits for the database */
    ST_READ,        /* read index asked with read_ctx */
    ST_WAIT_SYNC,   /* read index known (index); waits for the database */
    ST_INVITE,      /* add node: invitation sent, waiting for the reply */
    ST_WAIT_MEMBER, /* add node: waiting for node_id to be UP; remove: to be gone */
};

struct op {
    struct op *next;
    enum op_kind kind;
    enum op_state state;
    uint64_t seq;
    uint8_t *data; /* entry data: header and command (proposals) */
    size_t len;
    uint64_t deadline, last_try, first_try, try_leader, read_ctx, call_id, index, node_id;
    int result;
    struct vd_err err;
    char addr[256];
    vd_cluster_done_fn done;
    void *ctx;
};

/* An event from another thread: a new operation, or the completion of a database change. */
struct ev {
    struct ev *next;
    struct op *op;
    int status;
    char msg[256];
};

struct applied_req {
    uint64_t origin, seq;
};

/* One change to a local payload index that reconciliation makes (type 0: drop). */
struct idx_action {
    char coll[256];
    char field[VD_STORE_PINDEX_NAME_MAX + 1];
    uint8_t type;
};

struct member_clock {
    uint64_t id;
    uint64_t heard;       /* last frame from it (monotonic ms) */
    uint64_t last_action; /* leader: last membership step taken for it */
};

struct vd_cluster {
    /* set at start, read-only afterwards */
    struct vd_db *db;
    char *data_dir, *advertise, *http_advertise, *bind, *secret;
    uint64_t id;
    uint16_t port;
    uint32_t election_ms, heartbeat_ms, request_ms, snapshot_every;
    bool no_sync;

    /* shared with other threads, under mu */
    pthread_mutex_t mu;
    struct ev *q_head, *q_tail;
    bool stopping;
    char *status;    /* cached GET /cluster result */
    int db_inflight; /* database changes started by reconciliation, not yet completed */
    pthread_cond_t inflight_cv;
    uint64_t next_seq;

    /* loop thread only */
    pthread_t thread;
    uv_loop_t loop;
    uv_async_t async;
    uv_timer_t raft_timer, house_timer;
    struct vd_transport *tp;
    struct vd_raftlog *log;
    struct vd_raft *raft;
    struct vd_meta *meta;
    bool broken; /* the Raft log failed: nothing more is promised */
    bool driving, need_drive;
    struct op *ops; /* pending operations */
    uint64_t next_ctx, next_call;
    uint64_t catchup; /* last log index at start-up: reconcile once applied reaches it */
    uint64_t synced;  /* the database reflects the state machine up to this index */
    uint64_t last_ping, last_join, last_status;
    uint64_t seen_term, seen_leader, last_addr_fix;
    char *join; /* where to send join requests (NULL once a member) */
    bool was_member;
    struct {
        bool running;
        struct vd_meta_action *acts;
        size_t n, i;
        /* second phase, once the collections match: their payload indexes */
        bool idx_phase;
        struct idx_action *iacts;
        size_t in, ii;
        uint64_t target, retry_at;
    } rec;
    struct applied_req applied[APPLIED_MEMORY];
    size_t applied_pos;
    struct member_clock clocks[MAX_MEMBERS * 2];
    size_t n_clocks;
};

static uint64_t now_ms(void)
{
    return vd_mono_ns() / 1000000u;
}

/* ---- small binary codec for CALL bodies ------------------------------------------------------ */

struct rd {
    const uint8_t *p;
    size_t n;
    bool bad;
};

static uint64_t rd_u64(struct rd *r)
{
    if (r->n < 8) {
        r->bad = true;
        return 0;
    }
    uint64_t v = vd_be64_get(r->p);
    r->p += 8;
    r->n -= 8;
    return v;
}

static uint8_t rd_u8(struct rd *r)
{
    if (r->n < 1) {
        r->bad = true;
        return 0;
    }
    uint8_t v = r->p[0];
    r->p++;
    r->n--;
    return v;
}

/* A length-prefixed string (u16) copied into out[cap] with a NUL; too long is bad input. */
static void rd_str(struct rd *r, char *out, size_t cap)
{
    out[0] = 0;
    if (r->n < 2) {
        r->bad = true;
        return;
    }
    size_t l = ((size_t)r->p[0] << 8) | r->p[1];
    if (l + 2 > r->n || l >= cap || memchr(r->p + 2, 0, l)) {
        r->bad = true;
        return;
    }
    memcpy(out, r->p + 2, l);
    out[l] = 0;
    r->p += 2 + l;
    r->n -= 2 + l;
}

static void wr_u64(struct vd_buf *b, uint64_t v)
{
    uint8_t x[8];
    vd_be64_put(x, v);
    vd_buf_append(b, x, 8);
}

static void wr_str(struct vd_buf *b, const char *s)
{
    size_t l = s ? strlen(s) : 0;
    if (l > 65535)
        l = 65535;
    uint8_t x[2] = {(uint8_t)(l >> 8), (uint8_t)l};
    vd_buf_append(b, x, 2);
    vd_buf_append(b, s ? s : "", l);
}

/* ---- completion of operations ---------------------------------------------------------------- */

static void op_free(struct op *o)
{
    free(o->data);
    free(o);
}

/* Unlinks o from the pending list, calls its completion and frees it. */
static void op_finish(struct vd_cluster *c, struct op *o, int status, const struct vd_err *err)
{
    for (struct op **pp = &c->ops; *pp; pp = &(*pp)->next)
        if (*pp == o) {
            *pp = o->next;
            break;
        }
    if (o->done)
        o->done(status, status ? err : NULL, o->index, o->ctx);
    op_free(o);
}

static void op_fail(struct vd_cluster *c, struct op *o, int code, const char *fmt, const char *arg)
{
    struct vd_err e;
    vd_errf(&e, code, fmt, arg);
    op_finish(c, o, code, &e);
}

/* ---- status ---------------------------------------------------------------------------------- */

static struct member_clock *clock_of(struct vd_cluster *c, uint64_t id)
{
    for (size_t i = 0; i < c->n_clocks; i++)
        if (c->clocks[i].id == id)
            return &c->clocks[i];
    if (c->n_clocks == sizeof c->clocks / sizeof c->clocks[0]) {
        /* forget the one heard from least recently */
        size_t old = 0;
        for (size_t i = 1; i < c->n_clocks; i++)
            if (c->clocks[i].heard < c->clocks[old].heard)
                old = i;
        c->clocks[old] = c->clocks[--c->n_clocks];
    }
    struct member_clock *m = &c->clocks[c->n_clocks++];
    memset(m, 0, sizeof *m);
    m->id = id;
    return m;
}

static bool member_up(struct vd_cluster *c, uint64_t id, uint64_t now)
{
    if (id == c->id)
        return true;
    struct member_clock *m = clock_of(c, id);
    return m->heard && now - m->heard < DOWN_AFTER_MS;
}

static const char *raft_role_name(enum vd_raft_role r)
{
    switch (r) {
    case VD_RAFT_LEADER:
        return "Leader";
    case VD_RAFT_CANDIDATE:
        return "Candidate";
    case VD_RAFT_PRECANDIDATE:
        return "PreCandidate";
    default:
        return "Follower";
    }
}

/* Rebuilds the cached GET /cluster result. */
static void status_refresh(struct vd_cluster *c)
{
    uint64_t now = now_ms();
    struct vd_buf b;
    vd_buf_init(&b);
    const struct vd_raft_conf *conf = vd_raft_conf(c->raft);
    uint64_t leader = vd_raft_leader(c->raft);
    size_t pending = 0;
    for (struct op *o = c->ops; o; o = o->next)
        pending++;
    vd_buf_printf(&b, "{\"status\":\"enabled\",\"peer_id\":%llu,\"peers\":{",
                  (unsigned long long)c->id);
    size_t n = vd_meta_n_members(c->meta);
    bool self_listed = false;
    for (size_t i = 0; i < n; i++) {
        const struct vd_meta_member *m = vd_meta_member_at(c->meta, i);
        self_listed |= m->id == c->id;
        vd_buf_printf(&b, "%s\"%llu\":{\"uri\":", i ? "," : "", (unsigned long long)m->id);
        char uri[300];
        snprintf(uri, sizeof uri, "http://%s/", m->addr);
        vd_buf_json_string(&b, uri, strlen(uri));
        vd_buf_puts(&b, "}");
    }
    if (!self_listed) {
        vd_buf_printf(&b, "%s\"%llu\":{\"uri\":", n ? "," : "", (unsigned long long)c->id);
        char uri[300];
        snprintf(uri, sizeof uri, "http://%s/", c->advertise);
        vd_buf_json_string(&b, uri, strlen(uri));
        vd_buf_puts(&b, "}");
    }
    vd_buf_printf(&b,
                  "},\"raft_info\":{\"term\":%llu,\"commit\":%llu,\"pending_operations\":%zu,"
                  "\"leader\":",
                  (unsigned long long)vd_raft_term(c->raft),
                  (unsigned long long)vd_raft_commit(c->raft), pending);
    if (leader)
        vd_buf_printf(&b, "%llu", (unsigned long long)leader);
    else
        vd_buf_puts(&b, "null");
    vd_buf_printf(&b, ",\"role\":\"%s\",\"is_voter\":%s},", raft_role_name(vd_raft_role(c->raft)),
                  vd_raft_conf_role(conf, c->id) == VD_RAFT_VOTER ? "true" : "false");
    vd_buf_printf(&b,
                  "\"consensus_thread_status\":{\"consensus_thread_status\":\"%s\"},"
                  "\"message_send_failures\":{},\"nodes\":[",
                  c->broken ? "stopped" : "working");
    for (size_t i = 0; i < n; i++) {
        const struct vd_meta_member *m = vd_meta_member_at(c->meta, i);
        int role = vd_raft_conf_role(conf, m->id);
        const char *state = m->state == VD_MEMBER_JOINING   ? "joining"
                            : m->state == VD_MEMBER_LEAVING ? "leaving"
                            : member_up(c, m->id, now)      ? "up"
                                                            : "down";
        vd_buf_printf(&b, "%s{\"id\":%llu,\"address\":", i ? "," : "", (unsigned long long)m->id);
        vd_buf_json_string(&b, m->addr, strlen(m->addr));
        vd_buf_puts(&b, ",\"rest_address\":");
        vd_buf_json_string(&b, m->http_addr, strlen(m->http_addr));
        vd_buf_printf(&b, ",\"state\":\"%s\",\"role\":\"%s\",\"leader\":%s}", state,
                      role == VD_RAFT_VOTER     ? "voter"
                      : role == VD_RAFT_LEARNER ? "learner"
                                                : "none",
                      m->id == leader ? "true" : "false");
    }
    vd_buf_puts(&b, "]}");
    if (!vd_buf_ok(&b)) {
        vd_buf_release(&b);
        return;
    }
    char *s = vd_buf_steal(&b, NULL);
    pthread_mutex_lock(&c->mu);
    char *old = c->status;
    c->status = s;
    pthread_mutex_unlock(&c->mu);
    free(old);
    c->last_status = now;
}

/* ---- peers ----------------------------------------------------------------------------------- */

/* Tells the transport the address of every member (the state machine is the directory). */
static void peers_refresh(struct vd_cluster *c)
{
    size_t n = vd_meta_n_members(c->meta);
    for (size_t i = 0; i < n; i++) {
        const struct vd_meta_member *m = vd_meta_member_at(c->meta, i);
        if (m->id != c->id && m->addr[0])
            vd_transport_set_peer(c->tp, m->id, m->addr);
    }
}

static void send_call(struct vd_cluster *c, uint64_t to, const char *addr, uint64_t call_id,
                      uint8_t op, const struct vd_buf *args)
{
    struct vd_buf b;
    vd_buf_init(&b);
    wr_u64(&b, call_id);
    vd_buf_append(&b, &op, 1);
    if (args && args->len)
        vd_buf_append(&b, args->data, args->len);
    if (vd_buf_ok(&b)) {
        if (addr)
            vd_transport_send_addr(c->tp, addr, VD_FRAME_CALL, b.data, b.len);
        else
            vd_transport_send(c->tp, to, VD_FRAME_CALL, b.data, b.len);
    }
    vd_buf_release(&b);
}

/* Reply: call id, status (as u64 of the negative code), node id, message, address. */
static void send_reply(struct vd_cluster *c, uint64_t to, uint64_t call_id, int status,
                       uint64_t node, const char *msg, const char *addr)
{
    struct vd_buf b;
    vd_buf_init(&b);
    wr_u64(&b, call_id);
    wr_u64(&b, (uint64_t)(int64_t)status);
    wr_u64(&b, node);
    wr_str(&b, msg);
    wr_str(&b, addr);
    if (vd_buf_ok(&b))
        vd_transport_send(c->tp, to, VD_FRAME_CALL_REPLY, b.data, b.len);
    vd_buf_release(&b);
}

/* ---- Raft driving ---------------------------------------------------------------------------- */

static void drive(struct vd_cluster *c);
static void arm_raft_timer(struct vd_cluster *c);
static void reconcile_kick(struct vd_cluster *c);
static void ops_progress(struct vd_cluster *c);

static void remember_applied(struct vd_cluster *c, uint64_t origin, uint64_t seq)
{
    c->applied[c->applied_pos].origin = origin;
    c->applied[c->applied_pos].seq = seq;
    c->applied_pos = (c->applied_pos + 1) % APPLIED_MEMORY;
}

static bool recently_applied(const struct vd_cluster *c, uint64_t origin, uint64_t seq)
{
    for (size_t i = 0; i < APPLIED_MEMORY; i++)
        if (c->applied[i].seq == seq && c->applied[i].origin == origin)
            return true;
    return false;
}

/* True when an entry with this header sits in the log after the applied index (a leader must
 * not propose a retried request again: it commits with the log it already has). */
static bool in_log_unapplied(struct vd_cluster *c, uint64_t origin, uint64_t seq)
{
    uint64_t last = vd_raft_last_index(c->raft);
    for (uint64_t i = vd_raft_applied(c->raft) + 1; i <= last; i++) {
        const struct vd_raft_entry *e = vd_raft_entry_at(c->raft, i);
        if (e && e->type == VD_RAFT_ENTRY_NORMAL && e->len >= REQ_HDR &&
            vd_be64_get(e->data) == origin && vd_be64_get(e->data + 8) == seq)
            return true;
    }
    return false;
}

static void apply_entry(struct vd_cluster *c, const struct vd_raft_entry *e)
{
    if (e->type != VD_RAFT_ENTRY_NORMAL || e->len < REQ_HDR) {
        vd_meta_skip(c->meta, e->index);
        return;
    }
    uint64_t origin = vd_be64_get(e->data), seq = vd_be64_get(e->data + 8);
    struct vd_err res = {0};
    bool dup = seq && recently_applied(c, origin, seq);
    int rc;
    if (dup) {
        vd_meta_skip(c->meta, e->index);
        return;
    }
    rc = vd_meta_apply(c->meta, e->index, e->data + REQ_HDR, e->len - REQ_HDR, &res);
    if (seq)
        remember_applied(c, origin, seq);
    if (rc == VD_EINVAL)
        vd_log_warn("cluster: entry %llu rejected by the state machine: %s",
                    (unsigned long long)e->index, res.msg);
    if (origin != c->id || !seq)
        return;
    for (struct op *o = c->ops; o; o = o->next)
        if (o->seq == seq && (o->state == ST_SENT || o->state == ST_NEW)) {
            o->result = rc;
            o->err = res;
            o->index = e->index;
            o->state = ST_WAIT_APPLY;
            break;
        }
}

static void send_msg(struct vd_cluster *c, const struct vd_raft_msg *m)
{
    size_t n = vd_raft_msg_size(m);
    uint8_t *buf = malloc(n);
    if (!buf)
        return; /* Raft retransmits */
    vd_raft_msg_encode(m, buf);
    vd_transport_send(c->tp, m->to, VD_FRAME_RAFT, buf, n);
    free(buf);
}

static void take_snapshot(struct vd_cluster *c)
{
    uint64_t applied = vd_raft_applied(c->raft);
    if (applied < vd_raft_snapshot_index(c->raft) + c->snapshot_every ||
        vd_meta_applied(c->meta) != applied)
        return;
    struct vd_buf b;
    vd_buf_init(&b);
    if (vd_meta_snapshot(c->meta, &b) || !vd_buf_ok(&b)) {
        vd_buf_release(&b);
        return;
    }
    struct vd_err err = {0};
    if (vd_raft_snapshot(c->raft, applied, b.data, b.len) == 0) {
        struct vd_raft_snapshot s;
        vd_raft_current_snapshot(c->raft, &s);
        if (vd_raftlog_save_snapshot(c->log, &s, &err)) {
            vd_log_error("cluster: cannot store a snapshot: %s", err.msg);
            c->broken = true;
        }
    }
    vd_buf_release(&b);
}

/* Runs the Raft core's updates until it has none: persist, send, apply, advance. */
static void drive(struct vd_cluster *c)
{
    if (c->driving || c->broken)
        return;
    c->driving = true;
    do {
        c->need_drive = false;
        struct vd_raft_update u;
        bool members_changed = false;
        while (!c->broken && vd_raft_ready(c->raft, &u)) {
            struct vd_err err = {0};
            if (vd_raftlog_save(c->log, &u, &err)) {
                /* The promises of this update cannot be kept: stop taking part rather than risk
                 * voting or acknowledging twice. */
                vd_log_error(
                    "cluster: cannot persist the Raft log: %s; this node stops taking part "
                    "in the cluster",
                    err.msg);
                c->broken = true;
                break;
            }
            for (size_t i = 0; i < u.n_msgs; i++)
                send_msg(c, &u.msgs[i]);
            if (u.snapshot) {
                if (vd_meta_restore(c->meta, u.snapshot->data, u.snapshot->len, &err))
                    vd_log_error("cluster: snapshot at %llu does not restore: %s",
                                 (unsigned long long)u.snapshot->index, err.msg);
                else
                    vd_log_info("cluster: installed the leader's metadata snapshot at index %llu",
                                (unsigned long long)u.snapshot->index);
                members_changed = true;
            }
            for (size_t i = 0; i < u.n_committed; i++) {
                apply_entry(c, &u.committed[i]);
                members_changed = true;
            }
            for (size_t i = 0; i < u.n_reads; i++)
                for (struct op *o = c->ops; o; o = o->next)
                    if (o->state == ST_READ && o->read_ctx == u.reads[i].ctx) {
                        o->index = u.reads[i].index;
                        o->state = ST_WAIT_SYNC;
                    }
            vd_raft_advance(c->raft);
        }
        if (members_changed)
            peers_refresh(c);
        if (!c->broken)
            take_snapshot(c);
        reconcile_kick(c);
        ops_progress(c);
    } while (c->need_drive && !c->broken);
    c->driving = false;
    /* a new term or leader shows in GET /cluster at once, not at the next periodic refresh */
    uint64_t term = vd_raft_term(c->raft), leader = vd_raft_leader(c->raft);
    if (term != c->seen_term || leader != c->seen_leader) {
        c->seen_term = term;
        c->seen_leader = leader;
        status_refresh(c);
    }
    arm_raft_timer(c);
}

static void on_raft_timer(uv_timer_t *t)
{
    struct vd_cluster *c = t->data;
    vd_raft_tick(c->raft, now_ms());
    drive(c);
}

static void arm_raft_timer(struct vd_cluster *c)
{
    if (uv_is_closing((uv_handle_t *)&c->raft_timer))
        return;
    uint64_t now = now_ms(), dl = vd_raft_next_deadline(c->raft);
    uv_timer_start(&c->raft_timer, on_raft_timer, dl > now ? dl - now : 0, 0);
}

/* Proposes a change of the leader's own making (membership steps, joins): no operation waits for
 * it, the next housekeeping pass looks at the state again. */
static void propose_internal(struct vd_cluster *c, const struct vd_buf *cmd)
{
    if (!vd_buf_ok(cmd))
        return;
    size_t n = REQ_HDR + cmd->len;
    uint8_t *d = malloc(n);
    if (!d)
        return;
    vd_be64_put(d, c->id);
    pthread_mutex_lock(&c->mu);
    vd_be64_put(d + 8, c->next_seq++);
    pthread_mutex_unlock(&c->mu);
    memcpy(d + REQ_HDR, cmd->data, cmd->len);
    vd_raft_propose(c->raft, d, n, NULL, NULL); /* not leader: the next pass tries again */
    free(d);
    c->need_drive = true;
}

/* ---- reconciliation of the local database ------------------------------------------------- */

/* Runs on the storage writer thread: hand the outcome to the loop. */
static void rec_done(int status, const struct vd_err *err, uint64_t op_id, void *ctx)
{
    struct vd_cluster *c = ctx;
    struct ev *e = calloc(1, sizeof *e);
    if (e) {
        e->status = status;
        if (status && err)
            snprintf(e->msg, sizeof e->msg, "%s", err->msg);
    }
    pthread_mutex_lock(&c->mu);
    if (e) {
        if (c->q_tail)
            c->q_tail->next = e;
        else
            c->q_head = e;
        c->q_tail = e;
    }
    c->db_inflight--;
    pthread_cond_broadcast(&c->inflight_cv);
    bool closing = c->stopping;
    pthread_mutex_unlock(&c->mu);
    if (!closing)
        uv_async_send(&c->async);
}

static void rec_finish(struct vd_cluster *c, bool ok)
{
    free(c->rec.acts);
    c->rec.acts = NULL;
    free(c->rec.iacts);
    c->rec.iacts = NULL;
    c->rec.idx_phase = false;
    c->rec.running = false;
    if (ok) {
        c->synced = c->rec.target;
        c->rec.retry_at = 0;
    } else {
        c->rec.retry_at = now_ms() + 1000;
    }
}

/* Appends one index action to *v (growing it); VD_ENOMEM. */
static int idx_push(struct idx_action **v, size_t *n, size_t *cap, const char *coll,
                    const char *field, uint8_t type)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 8;
        struct idx_action *p = realloc(*v, nc * sizeof *p);
        if (!p)
            return VD_ENOMEM;
        *v = p;
        *cap = nc;
    }
    struct idx_action *a = &(*v)[(*n)++];
    snprintf(a->coll, sizeof a->coll, "%s", coll);
    snprintf(a->field, sizeof a->field, "%s", field);
    a->type = type;
    return 0;
}

/*
 * The payload index changes that make every local collection's indexes those the state machine
 * lists for it: creates of missing ones, retypes, drops of extra ones. Only a local collection
 * of the state machine's incarnation is looked at; any other is the collection actions' business
 * (or, created by an entry not applied yet, waits for the log). Errors: VD_ENOMEM.
 */
static int idx_plan(struct vd_cluster *c, struct idx_action **out, size_t *n_out)
{
    struct idx_action *v = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    size_t nc = vd_meta_n_collections(c->meta);
    for (size_t i = 0; i < nc && !rc; i++) {
        const struct vd_coll_schema *s = vd_meta_collection_at(c->meta, i);
        struct vd_coll *coll;
        if (vd_db_coll_get(c->db, s->name, &coll))
            continue;
        struct vd_db_pindex_info *loc = NULL;
        size_t nl = 0;
        if (vd_db_coll_schema(coll)->incarnation != s->incarnation) {
            vd_db_coll_put(coll);
            continue;
        }
        rc = vd_db_pindex_list(coll, &loc, &nl);
        vd_db_coll_put(coll);
        if (rc)
            break;
        const struct vd_meta_pindex *want;
        size_t nw = vd_meta_payload_indexes(c->meta, s->name, &want);
        /* both lists are sorted by field (strcmp): one merge pass */
        size_t a = 0, b = 0;
        while (!rc && (a < nw || b < nl)) {
            int cmp = a == nw ? 1 : b == nl ? -1 : strcmp(want[a].field, loc[b].field);
            if (cmp < 0) {
                rc = idx_push(&v, &n, &cap, s->name, want[a].field, want[a].type);
                a++;
            } else if (cmp > 0) {
                rc = idx_push(&v, &n, &cap, s->name, loc[b].field, 0);
                b++;
            } else {
                if (want[a].type != (uint8_t)loc[b].type)
                    rc = idx_push(&v, &n, &cap, s->name, want[a].field, want[a].type);
                a++;
                b++;
            }
        }
        vd_db_pindex_list_free(loc, nl);
    }
    if (rc) {
        free(v);
        return rc;
    }
    *out = v;
    *n_out = n;
    return 0;
}

/* Starts payload index actions from rec.ii on until one is in flight (rec keeps running) or
 * all are done or one failed (rec finished). */
static void rec_step_idx(struct vd_cluster *c)
{
    while (c->rec.ii < c->rec.in) {
        struct idx_action *a = &c->rec.iacts[c->rec.ii];
        struct vd_err err = {0};
        struct vd_coll *coll;
        int rc = vd_db_coll_get(c->db, a->coll, &coll);
        if (rc == 0) {
            pthread_mutex_lock(&c->mu);
            c->db_inflight++;
            pthread_mutex_unlock(&c->mu);
            if (a->type) {
                vd_log_info("cluster: collection '%s': payload index on '%s' (%s)", a->coll,
                            a->field, vd_db_pindex_type_name((enum vd_db_pindex_type)a->type));
                rc = vd_db_pindex_create(coll, a->field, (enum vd_db_pindex_type)a->type, rec_done,
                                         c, &err);
            } else {
                vd_log_info("cluster: collection '%s': dropping payload index on '%s'", a->coll,
                            a->field);
                rc = vd_db_pindex_delete(coll, a->field, rec_done, c, &err);
            }
            vd_db_coll_put(coll);
            if (rc == 0)
                return;
            pthread_mutex_lock(&c->mu);
            c->db_inflight--;
            pthread_mutex_unlock(&c->mu);
        }
        /* a collection or index that went away meanwhile: the next pass sees the new state */
        if (rc != VD_ENOTFOUND) {
            vd_log_error("cluster: cannot apply a payload index change locally: %s", err.msg);
            rec_finish(c, false);
            return;
        }
        c->rec.ii++;
    }
    rec_finish(c, true);
}

/* Starts actions from rec.i on until one is in flight or all are done: first the collection
 * actions, then the payload index actions planned once the collections match. */
static void rec_step(struct vd_cluster *c)
{
    if (c->rec.idx_phase) {
        rec_step_idx(c);
        return;
    }
    while (c->rec.i < c->rec.n) {
        struct vd_meta_action *a = &c->rec.acts[c->rec.i];
        struct vd_err err = {0};
        pthread_mutex_lock(&c->mu);
        c->db_inflight++;
        pthread_mutex_unlock(&c->mu);
        int rc;
        if (a->create) {
            vd_log_info("cluster: creating collection '%s' (incarnation %llx)", a->name,
                        (unsigned long long)a->schema.incarnation);
            rc = vd_db_coll_create(c->db, &a->schema, rec_done, c, &err);
        } else {
            vd_log_info("cluster: deleting collection '%s' (incarnation %llx)", a->name,
                        (unsigned long long)a->incarnation);
            rc = vd_db_coll_delete(c->db, a->name, rec_done, c, &err);
        }
        if (rc == 0)
            return;
        pthread_mutex_lock(&c->mu);
        c->db_inflight--;
        pthread_mutex_unlock(&c->mu);
        if (rc != VD_EEXIST && rc != VD_ENOTFOUND) {
            vd_log_error("cluster: cannot apply a collection change locally: %s", err.msg);
            rec_finish(c, false);
            return;
        }
        c->rec.i++;
    }
    c->rec.idx_phase = true;
    c->rec.ii = c->rec.in = 0;
    if (idx_plan(c, &c->rec.iacts, &c->rec.in)) {
        rec_finish(c, false);
        return;
    }
    rec_step_idx(c);
}

static void rec_event(struct vd_cluster *c, int status, const char *msg)
{
    if (!c->rec.running)
        return;
    if (status && status != VD_EEXIST && status != VD_ENOTFOUND) {
        vd_log_error("cluster: cannot apply a %s change locally: %s",
                     c->rec.idx_phase ? "payload index" : "collection", msg);
        rec_finish(c, false);
        return;
    }
    if (c->rec.idx_phase)
        c->rec.ii++;
    else
        c->rec.i++;
    rec_step(c);
}

static void reconcile_kick(struct vd_cluster *c)
{
    if (c->rec.running || c->broken)
        return;
    uint64_t applied = vd_meta_applied(c->meta);
    if (applied < c->catchup || applied == c->synced)
        return;
    if (c->rec.retry_at && now_ms() < c->rec.retry_at)
        return;
    char **names = NULL;
    size_t n = 0;
    if (vd_db_coll_names(c->db, &names, &n))
        return;
    struct vd_meta_local *loc = calloc(n ? n : 1, sizeof *loc);
    size_t k = 0;
    for (size_t i = 0; loc && i < n; i++) {
        struct vd_coll *coll;
        if (vd_db_coll_get(c->db, names[i], &coll))
            continue;
        loc[k].name = names[i];
        loc[k].incarnation = vd_db_coll_schema(coll)->incarnation;
        k++;
        vd_db_coll_put(coll);
    }
    struct vd_meta_action *acts = NULL;
    size_t na = 0;
    int rc = loc ? vd_meta_plan(c->meta, loc, k, &acts, &na) : VD_ENOMEM;
    free(loc);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (rc)
        return;
    c->rec.running = true;
    c->rec.acts = acts;
    c->rec.n = na;
    c->rec.i = 0;
    c->rec.idx_phase = false;
    c->rec.target = applied;
    rec_step(c);
}

/* ---- operations ------------------------------------------------------------------------------ */

static void propose_or_forward(struct vd_cluster *c, struct op *o, uint64_t leader, uint64_t now)
{
    if (!leader)
        return;
    if (leader == c->id) {
        uint64_t origin = vd_be64_get(o->data), seq = vd_be64_get(o->data + 8);
        if (!recently_applied(c, origin, seq) && !in_log_unapplied(c, origin, seq)) {
            if (vd_raft_propose(c->raft, o->data, o->len, NULL, NULL))
                return; /* not leader any more, or a transfer: next pass */
            c->need_drive = true;
        }
    } else {
        struct vd_buf args = {0};
        vd_buf_append(&args, o->data, o->len);
        o->call_id = ++c->next_call;
        send_call(c, leader, NULL, o->call_id, CALL_PROPOSE, &args);
        vd_buf_release(&args);
    }
    o->state = ST_SENT;
    o->try_leader = leader;
    o->last_try = now;
}

/* Returns true when the op was finished (and freed) here. */
static bool op_start(struct vd_cluster *c, struct op *o, uint64_t leader, uint64_t now)
{
    switch (o->kind) {
    case OP_SYNC:
        if (!leader)
            return false;
        o->read_ctx = ++c->next_ctx;
        if (vd_raft_read_index(c->raft, o->read_ctx) == 0) {
            o->state = ST_READ;
            o->try_leader = leader;
            o->last_try = now;
            c->need_drive = true;
        }
        return false;
    case OP_ADD_NODE: {
        size_t n = vd_meta_n_members(c->meta);
        for (size_t i = 0; i < n; i++)
            if (!strcmp(vd_meta_member_at(c->meta, i)->addr, o->addr)) {
                op_fail(c, o, VD_EEXIST, "node %s is already a member of this cluster", o->addr);
                return true;
            }
        struct vd_buf args = {0};
        wr_str(&args, c->advertise);
        o->call_id = ++c->next_call;
        send_call(c, 0, o->addr, o->call_id, CALL_INVITE, &args);
        vd_buf_release(&args);
        o->state = ST_INVITE;
        o->last_try = now;
        if (!o->first_try)
            o->first_try = now;
        return false;
    }
    case OP_REMOVE_NODE: {
        const struct vd_meta_member *m = vd_meta_member(c->meta, o->node_id);
        if (m && vd_meta_n_members(c->meta) <= 1) {
            op_fail(c, o, VD_EINVAL, "%s", "cannot remove the last node of a cluster");
            return true;
        }
        propose_or_forward(c, o, leader, now);
        return false;
    }
    default:
        propose_or_forward(c, o, leader, now);
    }
    return false;
}

/* Moves every pending operation on as far as it can go; called after anything changed. */
static void ops_progress(struct vd_cluster *c)
{
    uint64_t now = now_ms(), leader = vd_raft_leader(c->raft);
    struct op *next;
    for (struct op *o = c->ops; o; o = next) {
        next = o->next;
        if (c->broken) {
            op_fail(c, o, VD_EIO, "%s", "the cluster log failed on this node; see its log");
            continue;
        }
        const struct vd_meta_member *m;
        switch (o->state) {
        case ST_WAIT_APPLY:
            if (o->result) {
                op_finish(c, o, o->result, &o->err);
                continue;
            }
            if (o->kind == OP_REMOVE_NODE) {
                o->state = ST_WAIT_MEMBER;
                break;
            }
            if (c->synced >= o->index) {
                op_finish(c, o, 0, NULL);
                continue;
            }
            break;
        case ST_WAIT_SYNC:
            if (c->synced >= o->index && vd_meta_applied(c->meta) >= o->index) {
                o->index = 0;
                op_finish(c, o, 0, NULL);
                continue;
            }
            break;
        case ST_SENT:
            if (leader != o->try_leader || now - o->last_try >= RETRY_MS)
                o->state = ST_NEW;
            break;
        case ST_READ:
            /* lost with a leader change or a dropped message: ask again */
            if (now - o->last_try >= READ_RETRY_MS)
                o->state = ST_NEW;
            break;
        case ST_INVITE:
            if (now - o->first_try >= INVITE_ANSWER_MS) {
                /* a node that does not answer at all is most likely not running there, or
                 * refuses our handshake: say so now rather than at the end of the deadline */
                char msg[400];
                snprintf(msg, sizeof msg,
                         "node at '%s' did not answer within %u s: check that it runs, that this "
                         "is its cluster port and that it uses the same cluster secret",
                         o->addr, INVITE_ANSWER_MS / 1000);
                op_fail(c, o, VD_EUNAVAIL, "%s", msg);
                continue;
            }
            if (now - o->last_try >= RETRY_MS)
                o->state = ST_NEW;
            break;
        default:
            break;
        }
        if (o->state == ST_WAIT_MEMBER) {
            m = vd_meta_member(c->meta, o->node_id);
            if (o->kind == OP_ADD_NODE && m && m->state == VD_MEMBER_UP) {
                o->index = vd_meta_applied(c->meta);
                op_finish(c, o, 0, NULL);
                continue;
            }
            if (o->kind == OP_REMOVE_NODE &&
                (!m || (o->node_id == c->id && m->state == VD_MEMBER_LEAVING))) {
                op_finish(c, o, 0, NULL);
                continue;
            }
        }
        if (o->state == ST_NEW && op_start(c, o, leader, now))
            continue;
        if (now >= o->deadline) {
            bool waiting_leader = o->state == ST_NEW || o->state == ST_SENT || o->state == ST_READ;
            char msg[160];
            if (waiting_leader)
                snprintf(msg, sizeof msg,
                         "no cluster leader could be reached within %u ms; try again later",
                         o->kind == OP_ADD_NODE ? ADD_NODE_TIMEOUT_MS : c->request_ms);
            else if (o->state == ST_INVITE)
                snprintf(msg, sizeof msg, "no answer from '%s' within the deadline", o->addr);
            else
                snprintf(msg, sizeof msg,
                         "the change was not completed on this node within the deadline");
            op_fail(c, o, VD_ETIMEOUT, "%s", msg);
            continue;
        }
    }
}

/* ---- membership (leader) ----------------------------------------------------------------------
 */

/* One step of the membership plan, level-triggered from the state machine and the Raft
 * configuration, so that a new leader continues whatever an old one started: a JOINING member
 * becomes a learner, is promoted once it has caught up (§4.2.1), then is marked UP; a LEAVING
 * member is removed from the configuration (a leader first hands over leadership, §3.10), then
 * from the state machine. */
static void membership_step(struct vd_cluster *c, uint64_t now)
{
    if (vd_raft_role(c->raft) != VD_RAFT_LEADER)
        return;
    const struct vd_raft_conf *conf = vd_raft_conf(c->raft);
    size_t n = vd_meta_n_members(c->meta);
    for (size_t i = 0; i < n; i++) {
        const struct vd_meta_member *m = vd_meta_member_at(c->meta, i);
        struct member_clock *mc = clock_of(c, m->id);
        if (mc->last_action && now - mc->last_action < 500)
            continue;
        int role = vd_raft_conf_role(conf, m->id);
        struct vd_buf cmd = {0};
        int rc = 1;
        if (m->state == VD_MEMBER_JOINING) {
            if (role == 0) {
                rc = vd_raft_change(c->raft, VD_RAFT_ADD_LEARNER, m->id, NULL);
                if (rc == 0)
                    vd_log_info("cluster: adding node %llu (%s) as a learner",
                                (unsigned long long)m->id, m->addr);
            } else if (role == VD_RAFT_LEARNER) {
                if (vd_raft_match(c->raft, m->id) >= vd_raft_commit(c->raft)) {
                    rc = vd_raft_change(c->raft, VD_RAFT_PROMOTE, m->id, NULL);
                    if (rc == 0)
                        vd_log_info("cluster: node %llu caught up; promoting it to voter",
                                    (unsigned long long)m->id);
                }
            } else {
                vd_meta_cmd_set_member(m->id, VD_MEMBER_UP, m->addr, m->http_addr, &cmd);
                propose_internal(c, &cmd);
                rc = 0;
            }
        } else if (m->state == VD_MEMBER_LEAVING) {
            if (role != 0 && m->id == c->id) {
                /* hand leadership to the voter that is furthest along */
                uint64_t best = 0, best_match = 0;
                for (uint32_t k = 0; k < conf->n; k++) {
                    uint64_t id = conf->nodes[k].id;
                    if (id == c->id || conf->nodes[k].role != VD_RAFT_VOTER)
                        continue;
                    const struct vd_meta_member *o = vd_meta_member(c->meta, id);
                    if (o && o->state == VD_MEMBER_LEAVING)
                        continue;
                    uint64_t mt = vd_raft_match(c->raft, id);
                    if (!best || mt > best_match) {
                        best = id;
                        best_match = mt;
                    }
                }
                if (best) {
                    rc = vd_raft_transfer(c->raft, best);
                    if (rc == 0)
                        vd_log_info("cluster: this node is leaving; handing leadership to %llu",
                                    (unsigned long long)best);
                }
            } else if (role != 0) {
                rc = vd_raft_change(c->raft, VD_RAFT_REMOVE, m->id, NULL);
                if (rc == 0)
                    vd_log_info("cluster: removing node %llu from the configuration",
                                (unsigned long long)m->id);
            } else {
                vd_meta_cmd_remove_member(m->id, &cmd);
                propose_internal(c, &cmd);
                rc = 0;
            }
        }
        vd_buf_release(&cmd);
        if (rc == 0) {
            mc->last_action = now;
            c->need_drive = true;
        }
    }
}

/* ---- calls between nodes --------------------------------------------------------------------- */

/* Number of collections in the local database. */
static size_t local_collections(struct vd_cluster *c)
{
    char **names = NULL;
    size_t n = 0;
    if (vd_db_coll_names(c->db, &names, &n))
        return 0;
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return n;
}

static void raft_config(const struct vd_cluster *c, struct vd_raft_config *cfg)
{
    vd_raft_config_default(cfg);
    cfg->id = c->id;
    cfg->seed = c->id ^ vd_mono_ns();
    cfg->election_timeout_ms = c->election_ms;
    cfg->heartbeat_ms = c->heartbeat_ms;
}

static bool node_is_fresh(struct vd_cluster *c, char *why, size_t cap)
{
    const struct vd_raft_conf *conf = vd_raft_conf(c->raft);
    if (conf->n > 1 || (conf->n == 1 && conf->nodes[0].id != c->id) ||
        vd_meta_n_members(c->meta) > 1) {
        snprintf(why, cap, "node %llu already belongs to a cluster of %u nodes",
                 (unsigned long long)c->id, conf->n);
        return false;
    }
    if (local_collections(c) || vd_meta_n_collections(c->meta)) {
        snprintf(why, cap, "node %llu holds collections; only an empty node can join a cluster",
                 (unsigned long long)c->id);
        return false;
    }
    return true;
}

/* Forgets this node's own one-node cluster so that it can join another: only done for a fresh
 * node (no collections, no other member), so nothing of value is dropped. */
static int reset_raft(struct vd_cluster *c, struct vd_err *err)
{
    vd_raft_free(c->raft);
    c->raft = NULL;
    vd_raftlog_close(c->log);
    c->log = NULL;
    char p[4096];
    const char *files[] = {"data.mdb", "lock.mdb"};
    for (size_t i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/raft/%s", c->data_dir, files[i]);
        if (unlink(p) && errno != ENOENT)
            return vd_errf(err, VD_EIO, "removing '%s': %s", p, strerror(errno));
    }
    struct vd_raftlog_opts lo = {.dir = c->data_dir, .no_sync = c->no_sync};
    int rc = vd_raftlog_open(&lo, &c->log, err);
    if (rc)
        return rc;
    struct vd_raft_config cfg;
    raft_config(c, &cfg);
    if ((rc = vd_raft_new(&cfg, NULL, now_ms(), &c->raft)))
        return vd_errf(err, rc, "cannot start Raft");
    vd_meta_free(c->meta);
    c->meta = NULL;
    if ((rc = vd_meta_new(&c->meta)))
        return vd_errf(err, rc, "out of memory");
    c->catchup = 0;
    c->synced = 0;
    c->was_member = false;
    return 0;
}

static void on_call(struct vd_cluster *c, uint64_t from, const uint8_t *body, size_t len)
{
    struct rd r = {body, len, false};
    uint64_t call_id = rd_u64(&r);
    uint8_t op = rd_u8(&r);
    if (r.bad)
        return;
    uint64_t leader = vd_raft_leader(c->raft);
    const struct vd_meta_member *lm = leader ? vd_meta_member(c->meta, leader) : NULL;
    switch (op) {
    case CALL_PROPOSE: {
        if (r.n < REQ_HDR)
            return;
        if (leader != c->id) {
            send_reply(c, from, call_id, VD_ENOTLEADER, leader, "not the leader",
                       lm ? lm->addr : "");
            return;
        }
        uint64_t origin = vd_be64_get(r.p), seq = vd_be64_get(r.p + 8);
        int rc = 0;
        if (!recently_applied(c, origin, seq) && !in_log_unapplied(c, origin, seq))
            rc = vd_raft_propose(c->raft, r.p, r.n, NULL, NULL);
        send_reply(c, from, call_id, rc, leader, rc ? vd_strerror(rc) : "", "");
        c->need_drive = true;
        return;
    }
    case CALL_JOIN: {
        uint64_t id = rd_u64(&r);
        char addr[256], http[256];
        rd_str(&r, addr, sizeof addr);
        rd_str(&r, http, sizeof http);
        if (r.bad || !id || !addr[0])
            return;
        if (leader != c->id) {
            send_reply(c, from, call_id, leader ? VD_ENOTLEADER : VD_EUNAVAIL, leader,
                       leader ? "not the leader" : "no leader yet", lm ? lm->addr : "");
            return;
        }
        const struct vd_meta_member *m = vd_meta_member(c->meta, id);
        struct member_clock *mc = clock_of(c, id);
        uint64_t now = now_ms();
        struct vd_buf cmd = {0};
        if (m) {
            if ((strcmp(m->addr, addr) || strcmp(m->http_addr, http)) &&
                (!mc->last_action || now - mc->last_action >= 1000)) {
                vd_meta_cmd_set_member(id, (enum vd_meta_state)m->state, addr, http, &cmd);
                propose_internal(c, &cmd);
                mc->last_action = now;
            }
        } else if (vd_meta_n_members(c->meta) >= MAX_MEMBERS) {
            send_reply(c, from, call_id, VD_ERANGE, leader, "the cluster is full", "");
            return;
        } else if (!mc->last_action || now - mc->last_action >= 1000) {
            vd_log_info("cluster: node %llu (%s) asks to join", (unsigned long long)id, addr);
            vd_meta_cmd_add_member(id, addr, http, &cmd);
            propose_internal(c, &cmd);
            mc->last_action = now;
        }
        vd_buf_release(&cmd);
        send_reply(c, from, call_id, 0, leader, "", "");
        return;
    }
    case CALL_INVITE: {
        char join[256];
        rd_str(&r, join, sizeof join);
        if (r.bad || !join[0])
            return;
        char why[200];
        if (!node_is_fresh(c, why, sizeof why)) {
            send_reply(c, from, call_id, VD_EINVAL, 0, why, "");
            return;
        }
        struct vd_err err = {0};
        if (!c->join && vd_raft_conf(c->raft)->n) {
            vd_log_info("cluster: invited to join the cluster at %s; leaving this node's own "
                        "one-node cluster",
                        join);
            if (reset_raft(c, &err)) {
                vd_log_error("cluster: cannot reset the Raft state: %s", err.msg);
                c->broken = true;
                send_reply(c, from, call_id, VD_EIO, 0, err.msg, "");
                return;
            }
        }
        free(c->join);
        c->join = vd_xstrdup(join);
        c->last_join = 0;
        send_reply(c, from, call_id, 0, c->id, "", "");
        return;
    }
    default:
        return;
    }
}

static void on_reply(struct vd_cluster *c, const uint8_t *body, size_t len)
{
    struct rd r = {body, len, false};
    uint64_t call_id = rd_u64(&r);
    int status = (int)(int64_t)rd_u64(&r);
    uint64_t node = rd_u64(&r);
    char msg[256], addr[256];
    rd_str(&r, msg, sizeof msg);
    rd_str(&r, addr, sizeof addr);
    if (r.bad)
        return;
    for (struct op *o = c->ops; o; o = o->next) {
        if (o->call_id != call_id)
            continue;
        if (o->state == ST_SENT && status) {
            o->state = ST_NEW; /* not the leader (any more): ask again */
        } else if (o->state == ST_INVITE) {
            if (status) {
                op_fail(c, o, status, "%s", msg);
                return;
            }
            o->node_id = node;
            o->state = ST_WAIT_MEMBER;
        }
        c->need_drive = true;
        return;
    }
    /* an answer to a join request */
    if (c->join && status == VD_ENOTLEADER && addr[0]) {
        free(c->join);
        c->join = vd_xstrdup(addr);
        c->last_join = 0;
    } else if (c->join && status && status != VD_EUNAVAIL && status != VD_ENOTLEADER) {
        vd_log_warn("cluster: join refused: %s", msg);
    }
}

static void on_frame(void *ctx, uint64_t from, const char *from_addr, uint8_t type,
                     const uint8_t *body, size_t len)
{
    struct vd_cluster *c = ctx;
    (void)from_addr;
    if (c->broken)
        return;
    uint64_t now = now_ms();
    clock_of(c, from)->heard = now;
    switch (type) {
    case VD_FRAME_RAFT: {
        struct vd_raft_entry ents[256];
        struct vd_raft_msg m;
        if (vd_raft_msg_decode(body, len, &m, ents, 256))
            return;
        if (m.from != from)
            return; /* a peer speaks only for itself */
        vd_raft_tick(c->raft, now);
        vd_raft_step(c->raft, &m);
        break;
    }
    case VD_FRAME_CALL:
        on_call(c, from, body, len);
        break;
    case VD_FRAME_CALL_REPLY:
        on_reply(c, body, len);
        break;
    default:
        return;
    }
    drive(c);
}

/* ---- housekeeping ---------------------------------------------------------------------------- */

static int entry_data(uint64_t origin, uint64_t seq, const struct vd_buf *cmd, uint8_t **out,
                      size_t *len);

/* A node restarted with another --advertise or REST address tells the cluster, so that peers
 * and GET /cluster use the new one. */
static void address_check(struct vd_cluster *c, uint64_t now)
{
    const struct vd_meta_member *m = vd_meta_member(c->meta, c->id);
    if (!m || !vd_raft_leader(c->raft) || now - c->last_addr_fix < 5000 ||
        (!strcmp(m->addr, c->advertise) && !strcmp(m->http_addr, c->http_advertise)))
        return;
    for (struct op *o = c->ops; o; o = o->next)
        if (o->kind == OP_INTERNAL)
            return;
    c->last_addr_fix = now;
    struct op *o = calloc(1, sizeof *o);
    if (!o)
        return;
    struct vd_buf cmd = {0};
    vd_meta_cmd_set_member(c->id, (enum vd_meta_state)m->state, c->advertise, c->http_advertise,
                           &cmd);
    o->kind = OP_INTERNAL;
    o->state = ST_NEW;
    o->deadline = now + c->request_ms;
    pthread_mutex_lock(&c->mu);
    o->seq = c->next_seq++;
    pthread_mutex_unlock(&c->mu);
    int rc = entry_data(c->id, o->seq, &cmd, &o->data, &o->len);
    vd_buf_release(&cmd);
    if (rc) {
        free(o);
        return;
    }
    vd_log_info("cluster: this node's address changed to %s (REST %s); telling the cluster",
                c->advertise, c->http_advertise);
    o->next = c->ops;
    c->ops = o;
}

static void on_house(uv_timer_t *t)
{
    struct vd_cluster *c = t->data;
    if (c->broken) {
        ops_progress(c);
        return;
    }
    uint64_t now = now_ms();
    if (now - c->last_ping >= PING_MS) {
        c->last_ping = now;
        size_t n = vd_meta_n_members(c->meta);
        for (size_t i = 0; i < n; i++) {
            const struct vd_meta_member *m = vd_meta_member_at(c->meta, i);
            if (m->id != c->id)
                vd_transport_send(c->tp, m->id, FRAME_PING, NULL, 0);
        }
    }
    if (c->join) {
        if (vd_meta_member(c->meta, c->id) && vd_raft_leader(c->raft)) {
            vd_log_info("cluster: joined; leader is node %llu",
                        (unsigned long long)vd_raft_leader(c->raft));
            free(c->join);
            c->join = NULL;
        } else if (now - c->last_join >= JOIN_RETRY_MS) {
            struct vd_buf args = {0};
            wr_u64(&args, c->id);
            wr_str(&args, c->advertise);
            wr_str(&args, c->http_advertise);
            send_call(c, 0, c->join, ++c->next_call, CALL_JOIN, &args);
            vd_buf_release(&args);
            c->last_join = now;
        }
    }
    int self_role = vd_raft_conf_role(vd_raft_conf(c->raft), c->id);
    if (self_role)
        c->was_member = true;
    else if (c->was_member && vd_raft_conf(c->raft)->n) {
        vd_log_warn("cluster: this node was removed from the cluster");
        c->was_member = false;
    }
    membership_step(c, now);
    address_check(c, now);
    ops_progress(c);
    if (now - c->last_status >= 200)
        status_refresh(c);
    drive(c);
}

/* ---- the loop thread ------------------------------------------------------------------------- */

static void on_closed(uv_handle_t *h)
{
    (void)h;
}

static void shutdown_loop(struct vd_cluster *c)
{
    while (c->ops)
        op_fail(c, c->ops, VD_ECLOSED, "%s", "the node is shutting down");
    uv_close((uv_handle_t *)&c->async, on_closed);
    uv_close((uv_handle_t *)&c->raft_timer, on_closed);
    uv_close((uv_handle_t *)&c->house_timer, on_closed);
    vd_transport_close(c->tp);
    c->tp = NULL;
}

static void on_async(uv_async_t *a)
{
    struct vd_cluster *c = a->data;
    pthread_mutex_lock(&c->mu);
    struct ev *e = c->q_head;
    c->q_head = c->q_tail = NULL;
    bool stopping = c->stopping;
    pthread_mutex_unlock(&c->mu);
    while (e) {
        struct ev *next = e->next;
        if (e->op) {
            if (stopping) {
                if (e->op->done)
                    e->op->done(VD_ECLOSED, NULL, 0, e->op->ctx);
                op_free(e->op);
            } else {
                e->op->next = c->ops;
                c->ops = e->op;
            }
        } else {
            rec_event(c, e->status, e->msg);
        }
        free(e);
        e = next;
    }
    if (stopping) {
        if (!uv_is_closing((uv_handle_t *)&c->async))
            shutdown_loop(c);
        return;
    }
    drive(c);
}

static void *loop_main(void *arg)
{
    struct vd_cluster *c = arg;
    uv_run(&c->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* ---- start and stop -------------------------------------------------------------------------- */

static bool wildcard(const char *a)
{
    return !a || !a[0] || !strcmp(a, "0.0.0.0") || !strcmp(a, "::") || !strcmp(a, "[::]");
}

/* Entry data: header (origin, seq) then the command. */
static int entry_data(uint64_t origin, uint64_t seq, const struct vd_buf *cmd, uint8_t **out,
                      size_t *len)
{
    if (!vd_buf_ok(cmd))
        return VD_ENOMEM;
    uint8_t *d = malloc(REQ_HDR + cmd->len);
    if (!d)
        return VD_ENOMEM;
    vd_be64_put(d, origin);
    vd_be64_put(d + 8, seq);
    memcpy(d + REQ_HDR, cmd->data, cmd->len);
    *out = d;
    *len = REQ_HDR + cmd->len;
    return 0;
}

/*
 * A brand-new cluster of this one node: the configuration entry, then the node itself as a
 * member and the collections it already holds (adopted with their incarnations), all stored in
 * one transaction so that a crash cannot leave a cluster that forgot the node's collections.
 */
static int bootstrap(struct vd_cluster *c, struct vd_err *err)
{
    char **names = NULL;
    size_t n = 0;
    int rc = vd_db_coll_names(c->db, &names, &n);
    if (rc)
        return vd_errf(err, rc, "listing collections");
    size_t cap = n + 3, ne = 0;
    struct vd_raft_entry *ents = calloc(cap, sizeof *ents);
    struct vd_db_pindex_info *idx = NULL;
    size_t n_idx = 0;
    struct vd_raft_conf conf = {.n = 1};
    conf.nodes[0].id = c->id;
    conf.nodes[0].role = VD_RAFT_VOTER;
    uint8_t confbuf[64];
    if (!ents) {
        rc = vd_errf(err, VD_ENOMEM, "out of memory");
        goto out;
    }
    vd_raft_bootstrap_entry(&conf, confbuf, &ents[ne++]);
    struct vd_buf cmd = {0};
    vd_meta_cmd_add_member(c->id, c->advertise, c->http_advertise, &cmd);
    rc = entry_data(0, 0, &cmd, &ents[ne].data, &ents[ne].len);
    vd_buf_release(&cmd);
    if (rc)
        goto out_nomem;
    ne++;
    vd_buf_init(&cmd);
    vd_meta_cmd_set_member(c->id, VD_MEMBER_UP, c->advertise, c->http_advertise, &cmd);
    rc = entry_data(0, 0, &cmd, &ents[ne].data, &ents[ne].len);
    vd_buf_release(&cmd);
    if (rc)
        goto out_nomem;
    ne++;
    for (size_t i = 0; i < n; i++) {
        struct vd_coll *coll;
        if (vd_db_coll_get(c->db, names[i], &coll))
            continue;
        vd_buf_init(&cmd);
        vd_meta_cmd_create_collection(vd_db_coll_schema(coll), &cmd);
        rc = vd_db_pindex_list(coll, &idx, &n_idx);
        vd_db_coll_put(coll);
        if (rc) {
            vd_buf_release(&cmd);
            goto out_nomem;
        }
        rc = entry_data(0, 0, &cmd, &ents[ne].data, &ents[ne].len);
        vd_buf_release(&cmd);
        if (rc)
            goto out_nomem;
        ne++;
        vd_log_info("cluster: adopting collection '%s'", names[i]);
        /* its payload indexes too, or the first reconciliation would drop them */
        if (n_idx) {
            struct vd_raft_entry *p = realloc(ents, (cap + n_idx) * sizeof *ents);
            if (!p)
                goto out_nomem;
            memset(p + cap, 0, n_idx * sizeof *p);
            ents = p;
            cap += n_idx;
        }
        for (size_t k = 0; k < n_idx; k++) {
            vd_buf_init(&cmd);
            vd_meta_cmd_set_payload_index(names[i], idx[k].field, idx[k].type, &cmd);
            rc = entry_data(0, 0, &cmd, &ents[ne].data, &ents[ne].len);
            vd_buf_release(&cmd);
            if (rc)
                goto out_nomem;
            ne++;
            vd_log_info("cluster: adopting payload index '%s' of collection '%s'", idx[k].field,
                        names[i]);
        }
        vd_db_pindex_list_free(idx, n_idx);
        idx = NULL;
        n_idx = 0;
    }
    for (size_t i = 1; i < ne; i++) {
        ents[i].term = 1;
        ents[i].index = i + 1;
        ents[i].type = VD_RAFT_ENTRY_NORMAL;
    }
    struct vd_raft_update u = {.first_index = 1, .entries = ents, .n_entries = ne};
    rc = vd_raftlog_save(c->log, &u, err);
    if (rc == 0)
        vd_log_info("cluster: bootstrapped a new one-node cluster (node %llu)",
                    (unsigned long long)c->id);
    goto out;
out_nomem:
    rc = vd_errf(err, VD_ENOMEM, "out of memory");
out:
    vd_db_pindex_list_free(idx, n_idx);
    for (size_t i = 1; ents && i < ne; i++)
        free(ents[i].data);
    free(ents);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

static void cluster_free(struct vd_cluster *c)
{
    if (!c)
        return;
    vd_raft_free(c->raft);
    vd_raftlog_close(c->log);
    vd_meta_free(c->meta);
    free(c->data_dir);
    free(c->advertise);
    free(c->http_advertise);
    free(c->bind);
    free(c->secret);
    free(c->join);
    free(c->status);
    free(c->rec.acts);
    free(c->rec.iacts);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->inflight_cv);
    free(c);
}

int vd_cluster_start(const struct vd_cluster_opts *o, struct vd_cluster **out, struct vd_err *err)
{
    if (!o->db || !o->data_dir)
        return vd_errf(err, VD_EINVAL, "cluster: database and data directory are required");
    struct vd_cluster *c = calloc(1, sizeof *c);
    if (!c)
        return vd_errf(err, VD_ENOMEM, "out of memory");
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->inflight_cv, NULL);
    c->db = o->db;
    c->id = vd_db_node_id(o->db);
    c->port = o->port ? o->port : 6335;
    c->election_ms = o->election_timeout_ms ? o->election_timeout_ms : 1000;
    c->heartbeat_ms = o->heartbeat_ms ? o->heartbeat_ms : 100;
    c->request_ms = o->request_timeout_ms ? o->request_timeout_ms : 10000;
    c->snapshot_every = o->snapshot_every ? o->snapshot_every : 1024;
    c->no_sync = o->no_sync;
    c->data_dir = vd_xstrdup(o->data_dir);
    c->bind = vd_xstrdup(o->bind ? o->bind : "127.0.0.1");
    c->secret = o->secret && o->secret[0] ? vd_xstrdup(o->secret) : NULL;
    if (o->advertise && o->advertise[0]) {
        c->advertise = vd_xstrdup(o->advertise);
    } else {
        char a[300];
        snprintf(a, sizeof a, "%s:%u", wildcard(c->bind) ? "127.0.0.1" : c->bind, c->port);
        c->advertise = vd_xstrdup(a);
    }
    c->http_advertise = vd_xstrdup(o->http_advertise ? o->http_advertise : "");
    c->next_seq = vd_wall_ms() << 16; /* unique across restarts of this node */
    int rc;

    struct vd_raftlog_opts lo = {.dir = c->data_dir, .no_sync = c->no_sync};
    if ((rc = vd_raftlog_open(&lo, &c->log, err)))
        goto fail;
    struct vd_raft_state st;
    if ((rc = vd_raftlog_load(c->log, &st, err)))
        goto fail;
    bool fresh = !st.snapshot && st.n_entries == 0 && st.term == 0;
    if (fresh && o->join && o->join[0]) {
        size_t n = local_collections(c);
        if (n) {
            rc = vd_errf(err, VD_EINVAL,
                         "--join: this node holds %zu collection(s); only an empty node can join "
                         "a cluster",
                         n);
            goto fail;
        }
        c->join = vd_xstrdup(o->join);
        vd_log_info("cluster: node %llu joining the cluster at %s", (unsigned long long)c->id,
                    c->join);
    } else if (fresh) {
        if ((rc = bootstrap(c, err)) || (rc = vd_raftlog_load(c->log, &st, err)))
            goto fail;
    } else if (o->join && o->join[0]) {
        vd_log_info("cluster: node %llu already belongs to a cluster; --join %s ignored",
                    (unsigned long long)c->id, o->join);
    }
    if ((rc = vd_meta_new(&c->meta))) {
        rc = vd_errf(err, rc, "out of memory");
        goto fail;
    }
    if (st.snapshot && (rc = vd_meta_restore(c->meta, st.snapshot->data, st.snapshot->len, err)))
        goto fail;
    c->catchup = st.n_entries  ? st.entries[st.n_entries - 1].index
                 : st.snapshot ? st.snapshot->index
                               : 0;
    struct vd_raft_config cfg;
    raft_config(c, &cfg);
    if ((rc = vd_raft_new(&cfg, c->join ? NULL : &st, now_ms(), &c->raft))) {
        rc = vd_errf(err, rc, "cluster: the stored Raft state does not load");
        goto fail;
    }
    const struct vd_raft_conf *conf = vd_raft_conf(c->raft);
    if (conf->n == 1 && conf->nodes[0].id == c->id) {
        /* The only voter need not wait an election timeout for peers that do not exist: start
         * its clock two timeouts in the past so that the first tick elects it. */
        vd_raft_free(c->raft);
        c->raft = NULL;
        uint64_t now = now_ms(), back = 2 * (uint64_t)c->election_ms;
        if ((rc = vd_raft_new(&cfg, &st, now > back ? now - back : 0, &c->raft))) {
            rc = vd_errf(err, rc, "cluster: the stored Raft state does not load");
            goto fail;
        }
        vd_raft_tick(c->raft, now);
    }

    if (uv_loop_init(&c->loop)) {
        rc = vd_errf(err, VD_EIO, "cluster: cannot start the event loop");
        goto fail;
    }
    struct vd_transport_opts to = {
        .loop = &c->loop,
        .self_id = c->id,
        .bind = c->bind,
        .port = o->port,
        .advertise = c->advertise,
        .secret = c->secret,
        .on_frame = on_frame,
        .ctx = c,
    };
    if ((rc = vd_transport_start(&to, &c->tp, err))) {
        uv_loop_close(&c->loop);
        goto fail;
    }
    uv_async_init(&c->loop, &c->async, on_async);
    c->async.data = c;
    uv_timer_init(&c->loop, &c->raft_timer);
    c->raft_timer.data = c;
    uv_timer_init(&c->loop, &c->house_timer);
    c->house_timer.data = c;
    uv_timer_start(&c->house_timer, on_house, HOUSEKEEPING_MS, HOUSEKEEPING_MS);
    peers_refresh(c);
    status_refresh(c);
    arm_raft_timer(c);
    if (pthread_create(&c->thread, NULL, loop_main, c)) {
        shutdown_loop(c);
        uv_run(&c->loop, UV_RUN_DEFAULT);
        uv_loop_close(&c->loop);
        rc = vd_errf(err, VD_ENOMEM, "cluster: cannot start the loop thread");
        goto fail;
    }
    vd_log_info("cluster: node %llu listening for peers on %s:%u (advertised as %s)%s",
                (unsigned long long)c->id, c->bind, vd_transport_port(c->tp), c->advertise,
                c->secret ? "" : "; no cluster secret: only loopback peers are accepted");
    *out = c;
    return 0;
fail:
    cluster_free(c);
    return rc;
}

void vd_cluster_stop(struct vd_cluster *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    c->stopping = true;
    pthread_mutex_unlock(&c->mu);
    uv_async_send(&c->async);
    pthread_join(c->thread, NULL);
    uv_loop_close(&c->loop);
    /* a collection change handed to the database must complete before c goes away */
    pthread_mutex_lock(&c->mu);
    while (c->db_inflight > 0)
        pthread_cond_wait(&c->inflight_cv, &c->mu);
    struct ev *e = c->q_head;
    c->q_head = c->q_tail = NULL;
    pthread_mutex_unlock(&c->mu);
    while (e) {
        struct ev *next = e->next;
        if (e->op) {
            if (e->op->done)
                e->op->done(VD_ECLOSED, NULL, 0, e->op->ctx);
            op_free(e->op);
        }
        free(e);
        e = next;
    }
    cluster_free(c);
}

/* ---- requests from other threads --------------------------------------------------------------
 */

static struct op *op_new(struct vd_cluster *c, enum op_kind kind, uint32_t timeout_ms,
                         vd_cluster_done_fn done, void *ctx)
{
    struct op *o = calloc(1, sizeof *o);
    if (!o)
        return NULL;
    o->kind = kind;
    o->state = ST_NEW;
    o->deadline = now_ms() + timeout_ms;
    o->done = done;
    o->ctx = ctx;
    return o;
}

static int op_submit(struct vd_cluster *c, struct op *o, struct vd_err *err)
{
    struct ev *e = calloc(1, sizeof *e);
    if (!e) {
        op_free(o);
        return vd_errf(err, VD_ENOMEM, "out of memory");
    }
    e->op = o;
    pthread_mutex_lock(&c->mu);
    if (c->stopping) {
        pthread_mutex_unlock(&c->mu);
        free(e);
        op_free(o);
        return vd_errf(err, VD_ECLOSED, "the node is shutting down");
    }
    if (c->q_tail)
        c->q_tail->next = e;
    else
        c->q_head = e;
    c->q_tail = e;
    pthread_mutex_unlock(&c->mu);
    uv_async_send(&c->async);
    return 0;
}

/* A proposal operation: the command behind this node's header and a fresh sequence number. */
static int submit_change(struct vd_cluster *c, enum op_kind kind, struct vd_buf *cmd,
                         uint64_t node_id, vd_cluster_done_fn done, void *ctx, struct vd_err *err)
{
    struct op *o = op_new(c, kind, c->request_ms, done, ctx);
    if (!o) {
        vd_buf_release(cmd);
        return vd_errf(err, VD_ENOMEM, "out of memory");
    }
    pthread_mutex_lock(&c->mu);
    o->seq = c->next_seq++;
    pthread_mutex_unlock(&c->mu);
    o->node_id = node_id;
    int rc = entry_data(c->id, o->seq, cmd, &o->data, &o->len);
    vd_buf_release(cmd);
    if (rc) {
        op_free(o);
        return vd_errf(err, rc, "out of memory");
    }
    return op_submit(c, o, err);
}

int vd_cluster_create_collection(struct vd_cluster *c, const struct vd_coll_schema *s,
                                 vd_cluster_done_fn done, void *ctx, struct vd_err *err)
{
    struct vd_coll_schema sc = *s;
    sc.incarnation = 0; /* the state machine assigns it from the entry's index */
    if (!sc.created_hlc)
        sc.created_hlc = vd_hlc_now();
    struct vd_buf cmd = {0};
    vd_meta_cmd_create_collection(&sc, &cmd);
    return submit_change(c, OP_CREATE, &cmd, 0, done, ctx, err);
}

int vd_cluster_delete_collection(struct vd_cluster *c, const char *name, vd_cluster_done_fn done,
                                 void *ctx, struct vd_err *err)
{
    struct vd_buf cmd = {0};
    vd_meta_cmd_delete_collection(name, &cmd);
    return submit_change(c, OP_DELETE, &cmd, 0, done, ctx, err);
}

int vd_cluster_set_payload_index(struct vd_cluster *c, const char *coll, const char *field,
                                 enum vd_db_pindex_type type, vd_cluster_done_fn done, void *ctx,
                                 struct vd_err *err)
{
    struct vd_buf cmd = {0};
    vd_meta_cmd_set_payload_index(coll, field, type, &cmd);
    return submit_change(c, OP_PINDEX, &cmd, 0, done, ctx, err);
}

int vd_cluster_drop_payload_index(struct vd_cluster *c, const char *coll, const char *field,
                                  vd_cluster_done_fn done, void *ctx, struct vd_err *err)
{
    struct vd_buf cmd = {0};
    vd_meta_cmd_drop_payload_index(coll, field, &cmd);
    return submit_change(c, OP_PINDEX, &cmd, 0, done, ctx, err);
}

int vd_cluster_sync(struct vd_cluster *c, vd_cluster_done_fn done, void *ctx, struct vd_err *err)
{
    struct op *o = op_new(c, OP_SYNC, c->request_ms, done, ctx);
    if (!o)
        return vd_errf(err, VD_ENOMEM, "out of memory");
    return op_submit(c, o, err);
}

int vd_cluster_add_node(struct vd_cluster *c, const char *addr, vd_cluster_done_fn done, void *ctx,
                        struct vd_err *err)
{
    if (!addr || !addr[0] || strlen(addr) >= sizeof(((struct op *)0)->addr))
        return vd_errf(err, VD_EINVAL, "'address' must be host:port");
    struct op *o = op_new(c, OP_ADD_NODE, ADD_NODE_TIMEOUT_MS, done, ctx);
    if (!o)
        return vd_errf(err, VD_ENOMEM, "out of memory");
    snprintf(o->addr, sizeof o->addr, "%s", addr);
    return op_submit(c, o, err);
}

int vd_cluster_remove_node(struct vd_cluster *c, uint64_t id, vd_cluster_done_fn done, void *ctx,
                           struct vd_err *err)
{
    struct vd_buf cmd = {0};
    vd_meta_cmd_set_member(id, VD_MEMBER_LEAVING, NULL, NULL, &cmd);
    return submit_change(c, OP_REMOVE_NODE, &cmd, id, done, ctx, err);
}

void vd_cluster_status_json(struct vd_cluster *c, struct vd_buf *out)
{
    pthread_mutex_lock(&c->mu);
    if (c->status)
        vd_buf_puts(out, c->status);
    else
        vd_buf_puts(out, "{\"status\":\"enabled\"}");
    pthread_mutex_unlock(&c->mu);
}

uint64_t vd_cluster_node_id(const struct vd_cluster *c)
{
    return c->id;
}
