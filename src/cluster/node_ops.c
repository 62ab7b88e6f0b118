/*
 * Operations: changes and reads asked by other threads (HTTP handlers), queued to the loop and
 * carried there to completion: proposed or forwarded to the leader, retried through leader
 * changes, finished once the local database reflects them.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "node_int.h"

/* ---- completion of operations ---------------------------------------------------------------- */

void vd__cluster_op_free(struct op *o)
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
    vd__cluster_op_free(o);
}

void vd__cluster_op_fail(struct vd_cluster *c, struct op *o, int code, const char *fmt,
                         const char *arg)
{
    struct vd_err e;
    vd_errf(&e, code, fmt, arg);
    op_finish(c, o, code, &e);
}

/* Entry data: header (origin, seq) then the command. */
int vd__cluster_entry_data(uint64_t origin, uint64_t seq, const struct vd_buf *cmd, uint8_t **out,
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

/* ---- operations ------------------------------------------------------------------------------ */

static void propose_or_forward(struct vd_cluster *c, struct op *o, uint64_t leader, uint64_t now)
{
    if (!leader)
        return;
    if (leader == c->id) {
        uint64_t origin = vd_be64_get(o->data), seq = vd_be64_get(o->data + 8);
        if (!vd__cluster_recently_applied(c, origin, seq) &&
            !vd__cluster_in_log_unapplied(c, origin, seq)) {
            if (vd_raft_propose(c->raft, o->data, o->len, NULL, NULL))
                return; /* not leader any more, or a transfer: next pass */
            c->need_drive = true;
        }
    } else {
        struct vd_buf args = {0};
        vd_buf_append(&args, o->data, o->len);
        o->call_id = ++c->next_call;
        vd__cluster_send_call(c, leader, NULL, o->call_id, CALL_PROPOSE, &args);
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
                vd__cluster_op_fail(c, o, VD_EEXIST, "node %s is already a member of this cluster",
                                    o->addr);
                return true;
            }
        struct vd_err e;
        if (vd__cluster_points_refusal(c, "add a node", &e)) {
            op_finish(c, o, e.code, &e);
            return true;
        }
        struct vd_buf args = {0};
        vd__cluster_wr_str(&args, c->advertise);
        o->call_id = ++c->next_call;
        vd__cluster_send_call(c, 0, o->addr, o->call_id, CALL_INVITE, &args);
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
            vd__cluster_op_fail(c, o, VD_EINVAL, "%s", "cannot remove the last node of a cluster");
            return true;
        }
        struct vd_err e;
        if (m && m->state == VD_MEMBER_UP && vd__cluster_points_refusal(c, "remove a node", &e)) {
            op_finish(c, o, e.code, &e);
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
void vd__cluster_ops_progress(struct vd_cluster *c)
{
    uint64_t now = vd__cluster_now_ms(), leader = vd_raft_leader(c->raft);
    struct op *next;
    for (struct op *o = c->ops; o; o = next) {
        next = o->next;
        if (c->broken) {
            vd__cluster_op_fail(c, o, VD_EIO, "%s",
                                "the cluster log failed on this node; see its log");
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
                vd__cluster_op_fail(c, o, VD_EUNAVAIL, "%s", msg);
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
                         o->timeout_ms);
            else if (o->state == ST_INVITE)
                snprintf(msg, sizeof msg, "no answer from '%s' within the deadline", o->addr);
            else
                snprintf(msg, sizeof msg,
                         "the change was not completed on this node within the deadline");
            vd__cluster_op_fail(c, o, VD_ETIMEOUT, "%s", msg);
            continue;
        }
    }
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
    o->timeout_ms = timeout_ms;
    o->deadline = vd__cluster_now_ms() + timeout_ms;
    o->done = done;
    o->ctx = ctx;
    return o;
}

static int op_submit(struct vd_cluster *c, struct op *o, struct vd_err *err)
{
    struct ev *e = calloc(1, sizeof *e);
    if (!e) {
        vd__cluster_op_free(o);
        return vd_errf(err, VD_ENOMEM, "out of memory");
    }
    e->op = o;
    pthread_mutex_lock(&c->mu);
    if (c->stopping) {
        pthread_mutex_unlock(&c->mu);
        free(e);
        vd__cluster_op_free(o);
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

int vd__cluster_op_internal(struct vd_cluster *c, enum op_kind kind, const struct vd_buf *cmd)
{
    struct op *o = op_new(c, kind, c->request_ms, NULL, NULL);
    if (!o)
        return VD_ENOMEM;
    pthread_mutex_lock(&c->mu);
    o->seq = c->next_seq++;
    pthread_mutex_unlock(&c->mu);
    int rc = vd__cluster_entry_data(c->id, o->seq, cmd, &o->data, &o->len);
    if (rc) {
        vd__cluster_op_free(o);
        return rc;
    }
    o->next = c->ops;
    c->ops = o;
    return 0;
}

/* ---- membership while collections hold points -------------------------------------------------
 * Until points stream to their new owners when members change, membership changes are refused
 * while any collection holds points (VD_META_POINTS_REFUSAL). "Holds points" is cluster-wide: a
 * node with a replication factor below the member count may hold none of a collection's points
 * while others do, so each node watches its own copies and, the first time one holds a point,
 * proposes a sticky flag on the collection in the state machine; the state machine refuses an
 * added or leaving member once any collection carries it (decided in log order, identically on
 * every node), and the node asked refuses at once on the flags it has applied plus its own
 * copies. A point written in the last moments before the change, on another node whose flag is
 * not committed yet, is the one case this cannot see; every write acknowledged before the flag's
 * commit plus the watch period is. */

#define POINTS_WATCH_MS 100

/* True when this node's copy of collection s (that incarnation) holds a live point now. */
static bool local_points(struct vd_cluster *c, const struct vd_coll_schema *s)
{
    struct vd_coll *coll;
    if (vd_db_coll_get(c->db, s->name, &coll))
        return false;
    struct vd_coll_stats st = {0};
    if (vd_db_coll_schema(coll)->incarnation == s->incarnation)
        vd_db_coll_stats(coll, &st);
    vd_db_coll_put(coll);
    return st.points > 0;
}

int vd__cluster_points_refusal(struct vd_cluster *c, const char *what, struct vd_err *err)
{
    const char *name = vd_meta_collection_with_points(c->meta);
    size_t n = vd_meta_n_collections(c->meta);
    for (size_t i = 0; !name && i < n; i++) {
        const struct vd_coll_schema *s = vd_meta_collection_at(c->meta, i);
        if (local_points(c, s))
            name = s->name;
    }
    return name ? vd_errf(err, VD_EEXIST, VD_META_POINTS_REFUSAL, what, name) : 0;
}

void vd__cluster_points_watch(struct vd_cluster *c, uint64_t now)
{
    if (now - c->last_points_watch < POINTS_WATCH_MS || !vd_meta_member(c->meta, c->id))
        return;
    c->last_points_watch = now;
    for (struct op *o = c->ops; o; o = o->next)
        if (o->kind == OP_POINTS)
            return; /* one flag at a time: each takes a commit */
    size_t n = vd_meta_n_collections(c->meta);
    for (size_t i = 0; i < n; i++) {
        const struct vd_coll_schema *s = vd_meta_collection_at(c->meta, i);
        if (vd_meta_collection_has_points(c->meta, s->name) || !local_points(c, s))
            continue;
        struct vd_buf cmd = {0};
        vd_meta_cmd_collection_has_points(s->name, s->incarnation, &cmd);
        vd__cluster_op_internal(c, OP_POINTS, &cmd);
        vd_buf_release(&cmd);
        return;
    }
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
    int rc = vd__cluster_entry_data(c->id, o->seq, cmd, &o->data, &o->len);
    vd_buf_release(cmd);
    if (rc) {
        vd__cluster_op_free(o);
        return vd_errf(err, rc, "out of memory");
    }
    return op_submit(c, o, err);
}

int vd_cluster_create_collection(struct vd_cluster *c, const struct vd_coll_schema *s,
                                 vd_cluster_done_fn done, void *ctx, struct vd_err *err)
{
    /* Checked against this node's view rather than in the state machine: a member joining
     * meanwhile may make a replica count valid a moment later, and Qdrant decides it at
     * creation too. Once created, a collection is served with the members that exist. */
    struct vd_meta_view *v = vd__cluster_view_acquire(c);
    if (v) {
        const struct vd_meta *m = vd_meta_view_state(v);
        size_t members = 0;
        for (size_t i = 0; i < vd_meta_n_members(m); i++)
            members += vd_meta_member_at(m, i)->state != VD_MEMBER_JOINING;
        vd_meta_view_release(v);
        if (members && s->replication_factor > members)
            return vd_errf(err, VD_ERANGE,
                           "Validation error in JSON body: [replication_factor: value %u invalid, "
                           "the cluster has %zu member%s]",
                           (unsigned)s->replication_factor, members, members == 1 ? "" : "s");
    }
    struct vd_coll_schema sc = *s;
    sc.incarnation = 0; /* the state machine assigns it from the entry's index */
    if (!sc.created_hlc)
        sc.created_hlc = vd_hlc_now();
    struct vd_buf cmd = {0};
    vd_meta_cmd_create_collection(&sc, &cmd);
    return submit_change(c, OP_CREATE, &cmd, 0, done, ctx, err);
}

int vd_cluster_update_collection(struct vd_cluster *c, const struct vd_coll_schema *s,
                                 vd_cluster_done_fn done, void *ctx, struct vd_err *err)
{
    struct vd_buf cmd = {0};
    vd_meta_cmd_update_collection(s, &cmd);
    return submit_change(c, OP_UPDATE, &cmd, 0, done, ctx, err);
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

int vd_cluster_sync(struct vd_cluster *c, uint32_t timeout_ms, vd_cluster_done_fn done, void *ctx,
                    struct vd_err *err)
{
    struct op *o = op_new(c, OP_SYNC, timeout_ms ? timeout_ms : c->request_ms, done, ctx);
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

size_t vd_cluster_members(struct vd_cluster *c, struct vd_cluster_member *out, size_t max)
{
    pthread_mutex_lock(&c->mu);
    size_t n = c->n_seen;
    if (c->members_seen)
        memcpy(out, c->members_seen, (n < max ? n : max) * sizeof *out);
    pthread_mutex_unlock(&c->mu);
    return n;
}

bool vd_cluster_alone(struct vd_cluster *c)
{
    struct vd_meta_view *v = vd__cluster_view_acquire(c);
    if (!v)
        return false;
    const struct vd_meta *m = vd_meta_view_state(v);
    size_t n = vd_meta_n_members(m);
    /* no members yet: a restarted node has not applied its stored log again */
    bool alone = n == 1 ? vd_meta_member_at(m, 0)->id == c->id : n == 0 && c->log_alone;
    vd_meta_view_release(v);
    return alone;
}

double vd_cluster_ring_share(struct vd_cluster *c, unsigned rf)
{
    struct vd_meta_view *v = vd__cluster_view_acquire(c);
    if (!v)
        return 1.0;
    struct vd_coord_ring ring;
    vd_meta_coord_ring(vd_meta_view_state(v), &ring);
    if (rf > VD_COORD_MAX_RF)
        rf = VD_COORD_MAX_RF;
    uint64_t(*arcs)[2] = ring.n_tokens ? malloc(ring.n_tokens * sizeof *arcs) : NULL;
    size_t n = arcs ? vd_coord_ring_arcs(&ring, arcs) : 0;
    double share = n ? 0.0 : 1.0;
    for (size_t i = 0; i < n; i++) {
        uint64_t ids[VD_COORD_MAX_RF];
        size_t k = vd_coord_ring_replicas(&ring, arcs[i][1], rf, ids);
        for (size_t j = 0; j < k; j++)
            if (ids[j] == c->id) {
                /* (start, end], the whole ring when start == end; unsigned wrap does the rest */
                uint64_t len = arcs[i][1] - arcs[i][0];
                share += len ? (double)len / 18446744073709551616.0 : 1.0;
                break;
            }
    }
    free(arcs);
    vd_meta_view_release(v);
    return share;
}

bool vd_cluster_holds_all(struct vd_cluster *c, unsigned rf)
{
    struct vd_meta_view *v = vd__cluster_view_acquire(c);
    if (!v)
        return false;
    struct vd_coord_ring ring;
    vd_meta_coord_ring(vd_meta_view_state(v), &ring);
    if (rf > VD_COORD_MAX_RF)
        rf = VD_COORD_MAX_RF;
    /* the replicas of a hash are the next rf distinct members: with no more than rf members in
     * the ring, every member replicates every hash */
    uint64_t seen[VD_COORD_MAX_RF];
    size_t n = 0;
    bool self = false, all = ring.n_tokens > 0;
    for (size_t i = 0; i < ring.n_tokens && all; i++) {
        uint64_t id = ring.tokens[i].node;
        self |= id == c->id;
        size_t j = 0;
        while (j < n && seen[j] != id)
            j++;
        if (j == n) {
            if (n == rf)
                all = false;
            else
                seen[n++] = id;
        }
    }
    vd_meta_view_release(v);
    return all && self;
}

uint64_t vd_cluster_node_id(const struct vd_cluster *c)
{
    return c->id;
}

uint16_t vd_cluster_port(const struct vd_cluster *c)
{
    return c->port;
}
