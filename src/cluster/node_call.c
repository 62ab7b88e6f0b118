/*
 * Calls between nodes: a CALL frame carries a call id and an op (forward a proposal to the
 * leader, ask to join, invite a fresh node), a CALL_REPLY the outcome; and the frame callback
 * that hands Raft messages to the core.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "node_int.h"

/* ---- small binary codec for CALL bodies ------------------------------------------------------ */

uint64_t vd__cluster_rd_u64(struct rd *r)
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

uint8_t vd__cluster_rd_u8(struct rd *r)
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

void vd__cluster_rd_str(struct rd *r, char *out, size_t cap)
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

void vd__cluster_wr_u64(struct vd_buf *b, uint64_t v)
{
    uint8_t x[8];
    vd_be64_put(x, v);
    vd_buf_append(b, x, 8);
}

void vd__cluster_wr_str(struct vd_buf *b, const char *s)
{
    size_t l = s ? strlen(s) : 0;
    if (l > 65535)
        l = 65535;
    uint8_t x[2] = {(uint8_t)(l >> 8), (uint8_t)l};
    vd_buf_append(b, x, 2);
    vd_buf_append(b, s ? s : "", l);
}

/* ---- peers ----------------------------------------------------------------------------------- */

/* Tells the transport the address of every member (the state machine is the directory). */
void vd__cluster_peers_refresh(struct vd_cluster *c)
{
    size_t n = vd_meta_n_members(c->meta);
    for (size_t i = 0; i < n; i++) {
        const struct vd_meta_member *m = vd_meta_member_at(c->meta, i);
        if (m->id != c->id && m->addr[0])
            vd_transport_set_peer(c->tp, m->id, m->addr);
    }
}

void vd__cluster_peers_from_log(struct vd_cluster *c, const struct vd_raft_state *st)
{
    if (st->n_entries == 0)
        return;
    struct vd_meta *m;
    if (vd_meta_new(&m))
        return;
    struct vd_err e;
    if (st->snapshot && vd_meta_restore(m, st->snapshot->data, st->snapshot->len, &e)) {
        vd_meta_free(m);
        return;
    }
    for (size_t i = 0; i < st->n_entries; i++) {
        const struct vd_raft_entry *en = &st->entries[i];
        if (en->type == VD_RAFT_ENTRY_NORMAL && en->len >= REQ_HDR)
            vd_meta_apply(m, en->index, en->data + REQ_HDR, en->len - REQ_HDR, NULL);
        else
            vd_meta_skip(m, en->index);
    }
    size_t n = vd_meta_n_members(m);
    c->log_alone = n == 1 && vd_meta_member_at(m, 0)->id == c->id;
    for (size_t i = 0; i < n; i++) {
        const struct vd_meta_member *mb = vd_meta_member_at(m, i);
        if (mb->id != c->id && mb->addr[0] && !vd_meta_member(c->meta, mb->id))
            vd_transport_set_peer(c->tp, mb->id, mb->addr);
    }
    vd_meta_free(m);
}

void vd__cluster_send_call(struct vd_cluster *c, uint64_t to, const char *addr, uint64_t call_id,
                           uint8_t op, const struct vd_buf *args)
{
    struct vd_buf b;
    vd_buf_init(&b);
    vd__cluster_wr_u64(&b, call_id);
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
    vd__cluster_wr_u64(&b, call_id);
    vd__cluster_wr_u64(&b, (uint64_t)(int64_t)status);
    vd__cluster_wr_u64(&b, node);
    vd__cluster_wr_str(&b, msg);
    vd__cluster_wr_str(&b, addr);
    if (vd_buf_ok(&b))
        vd_transport_send(c->tp, to, VD_FRAME_CALL_REPLY, b.data, b.len);
    vd_buf_release(&b);
}

/* ---- calls between nodes --------------------------------------------------------------------- */

/* Number of collections in the local database. */
size_t vd__cluster_local_collections(struct vd_cluster *c)
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

void vd__cluster_raft_config(const struct vd_cluster *c, struct vd_raft_config *cfg)
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
    if (vd__cluster_local_collections(c) || vd_meta_n_collections(c->meta)) {
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
    vd__cluster_raft_config(c, &cfg);
    if ((rc = vd_raft_new(&cfg, NULL, vd__cluster_now_ms(), &c->raft)))
        return vd_errf(err, rc, "cannot start Raft");
    vd_meta_free(c->meta);
    c->meta = NULL;
    if ((rc = vd_meta_new(&c->meta)) || (rc = vd_meta_publish(&c->meta_pub, c->meta)))
        return vd_errf(err, rc, "out of memory");
    c->catchup = 0;
    c->synced = 0;
    c->was_member = false;
    return 0;
}

static void on_call(struct vd_cluster *c, uint64_t from, const uint8_t *body, size_t len)
{
    struct rd r = {body, len, false};
    uint64_t call_id = vd__cluster_rd_u64(&r);
    uint8_t op = vd__cluster_rd_u8(&r);
    if (r.bad)
        return;
    uint64_t leader = vd_raft_leader(c->raft);
    const struct vd_meta_member *lm = leader ? vd_meta_member(c->meta, leader) : NULL;
    switch (op) {
    case CALL_PROPOSE: {
        if (r.n < REQ_HDR)
            return;
        uint64_t origin = vd_be64_get(r.p), seq = vd_be64_get(r.p + 8);
        /* Only a member proposes, and only in its own name: the handshake proved who the sender
         * is, the entry header says on whose behalf it asks (and who learns the outcome). */
        if (!vd_meta_member(c->meta, from) || origin != from) {
            vd_log_warn("cluster: proposal from node %llu refused: %s", (unsigned long long)from,
                        origin != from ? "it names another node as its origin"
                                       : "it is not a member");
            send_reply(c, from, call_id, VD_EPERM, leader,
                       origin != from ? "origin is not the sender" : "not a member", "");
            return;
        }
        if (leader != c->id) {
            send_reply(c, from, call_id, VD_ENOTLEADER, leader, "not the leader",
                       lm ? lm->addr : "");
            return;
        }
        int rc = 0;
        if (!vd__cluster_recently_applied(c, origin, seq) &&
            !vd__cluster_in_log_unapplied(c, origin, seq))
            rc = vd_raft_propose(c->raft, r.p, r.n, NULL, NULL);
        send_reply(c, from, call_id, rc, leader, rc ? vd_strerror(rc) : "", "");
        c->need_drive = true;
        return;
    }
    case CALL_JOIN: {
        uint64_t id = vd__cluster_rd_u64(&r);
        char addr[256], http[256];
        vd__cluster_rd_str(&r, addr, sizeof addr);
        vd__cluster_rd_str(&r, http, sizeof http);
        if (r.bad || !id || !addr[0])
            return;
        if (id != from) {
            /* a node asks to join for itself only: its id is the one its handshake proved */
            vd_log_warn("cluster: node %llu asked to join as node %llu: refused",
                        (unsigned long long)from, (unsigned long long)id);
            send_reply(c, from, call_id, VD_EPERM, leader, "a node joins only as itself", "");
            return;
        }
        if (leader != c->id) {
            send_reply(c, from, call_id, leader ? VD_ENOTLEADER : VD_EUNAVAIL, leader,
                       leader ? "not the leader" : "no leader yet", lm ? lm->addr : "");
            return;
        }
        const struct vd_meta_member *m = vd_meta_member(c->meta, id);
        struct member_clock *mc = vd__cluster_clock_of(c, id);
        struct vd_err pe;
        uint64_t now = vd__cluster_now_ms();
        struct vd_buf cmd = {0};
        if (m) {
            if ((strcmp(m->addr, addr) || strcmp(m->http_addr, http)) &&
                (!mc->last_action || now - mc->last_action >= 1000)) {
                vd_meta_cmd_set_member(id, (enum vd_meta_state)m->state, addr, http, &cmd);
                vd__cluster_propose_internal(c, &cmd);
                mc->last_action = now;
            }
        } else if (vd_meta_n_members(c->meta) >= MAX_MEMBERS) {
            send_reply(c, from, call_id, VD_ERANGE, leader, "the cluster is full", "");
            return;
        } else if (vd__cluster_points_refusal(c, "add a node", &pe)) {
            vd_log_warn("cluster: node %llu (%s) asks to join: refused: %s",
                        (unsigned long long)id, addr, pe.msg);
            send_reply(c, from, call_id, VD_EEXIST, leader, pe.msg, "");
            return;
        } else if (!mc->last_action || now - mc->last_action >= 1000) {
            vd_log_info("cluster: node %llu (%s) asks to join", (unsigned long long)id, addr);
            vd_meta_cmd_add_member(id, addr, http, &cmd);
            vd__cluster_propose_internal(c, &cmd);
            mc->last_action = now;
        }
        vd_buf_release(&cmd);
        send_reply(c, from, call_id, 0, leader, "", "");
        return;
    }
    case CALL_INVITE: {
        char join[256];
        vd__cluster_rd_str(&r, join, sizeof join);
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
        c->join_asked = false; /* invited: a refusal is the inviter's to report */
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
    uint64_t call_id = vd__cluster_rd_u64(&r);
    int status = (int)(int64_t)vd__cluster_rd_u64(&r);
    uint64_t node = vd__cluster_rd_u64(&r);
    char msg[sizeof(struct vd_err){0}.msg], addr[256];
    vd__cluster_rd_str(&r, msg, sizeof msg);
    vd__cluster_rd_str(&r, addr, sizeof addr);
    if (r.bad)
        return;
    for (struct op *o = c->ops; o; o = o->next) {
        if (o->call_id != call_id)
            continue;
        if (o->state == ST_SENT && status) {
            o->state = ST_NEW; /* not the leader (any more): ask again */
        } else if (o->state == ST_INVITE) {
            if (status) {
                vd__cluster_op_fail(c, o, status, "%s", msg);
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
    } else if (c->join && status == VD_EEXIST && c->join_asked) {
        /* refused for good (collections hold points): retrying cannot succeed */
        vd_log_error("cluster: join refused: %s", msg);
        free(c->join);
        c->join = NULL;
        if (c->on_fatal)
            c->on_fatal(msg, c->fatal_ctx);
    } else if (c->join && status && status != VD_EUNAVAIL && status != VD_ENOTLEADER) {
        vd_log_warn("cluster: join refused: %s", msg);
    }
}

/*
 * Raft frames and metadata calls never look at the sender's HLC (the transport neither checks nor
 * observes it for control frames): a member with a fast clock still votes, replicates and asks
 * for metadata changes. Pings measure the clock offsets the write rule needs.
 */
void vd__cluster_on_frame(void *ctx, uint64_t from, const char *from_addr, uint8_t type,
                          uint64_t hlc, const uint8_t *body, size_t len)
{
    struct vd_cluster *c = ctx;
    (void)from_addr;
    if (c->broken)
        return;
    uint64_t now = vd__cluster_now_ms();
    struct member_clock *mc = vd__cluster_clock_of(c, from);
    mc->heard = now;
    switch (type) {
    case VD_FRAME_PING:
        /* the answer's own HLC, stamped as it leaves, is what the pinger measures */
        vd_transport_send(c->tp, from, VD_FRAME_PONG, body, len);
        return;
    case VD_FRAME_PONG:
        /* refused (VD_EINVAL) when our wall clock stepped back during the trip */
        if (len == 8 || len == 16) {
            uint64_t mono = len == 16 ? vd_be64_get(body + 8) : 0, now_ns = vd_mono_ns();
            uint64_t rtt_us = mono && mono <= now_ns ? (now_ns - mono) / 1000 : 0;
            vd_clock_peer_sample_us(&mc->est, vd_be64_get(body), hlc, vd_wall_ms(),
                                    rtt_us ? rtt_us : (mono ? 1 : 0));
        }
        return;
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
    case VD_FRAME_MARKS:
        vd__cluster_hints_on_marks(c, from, body, len);
        return;
    default:
        return;
    }
    vd__cluster_drive(c);
}
