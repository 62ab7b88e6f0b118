/*
 * Driving the Raft core of the metadata group: its updates are persisted, its messages sent, its
 * committed entries applied to the state machine, snapshots taken; and the leader's membership
 * plan, one step at a time.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "node_int.h"

static void remember_applied(struct vd_cluster *c, uint64_t origin, uint64_t seq)
{
    c->applied[c->applied_pos].origin = origin;
    c->applied[c->applied_pos].seq = seq;
    c->applied_pos = (c->applied_pos + 1) % APPLIED_MEMORY;
}

bool vd__cluster_recently_applied(const struct vd_cluster *c, uint64_t origin, uint64_t seq)
{
    for (size_t i = 0; i < APPLIED_MEMORY; i++)
        if (c->applied[i].seq == seq && c->applied[i].origin == origin)
            return true;
    return false;
}

/* True when an entry with this header sits in the log after the applied index (a leader must
 * not propose a retried request again: it commits with the log it already has). */
bool vd__cluster_in_log_unapplied(struct vd_cluster *c, uint64_t origin, uint64_t seq)
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
    bool dup = seq && vd__cluster_recently_applied(c, origin, seq);
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
void vd__cluster_drive(struct vd_cluster *c)
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
            vd__cluster_peers_refresh(c);
        if (members_changed && vd_meta_publish(&c->meta_pub, c->meta))
            vd_log_warn("cluster: out of memory publishing the metadata; readers see older");
        if (!c->broken)
            take_snapshot(c);
        vd__cluster_reconcile_kick(c);
        vd__cluster_ops_progress(c);
    } while (c->need_drive && !c->broken);
    c->driving = false;
    /* a new term or leader shows in GET /cluster at once, not at the next periodic refresh */
    uint64_t term = vd_raft_term(c->raft), leader = vd_raft_leader(c->raft);
    if (term != c->seen_term || leader != c->seen_leader) {
        c->seen_term = term;
        c->seen_leader = leader;
        vd__cluster_status_refresh(c);
    }
    vd__cluster_arm_raft_timer(c);
}

static void on_raft_timer(uv_timer_t *t)
{
    struct vd_cluster *c = t->data;
    vd_raft_tick(c->raft, vd__cluster_now_ms());
    vd__cluster_drive(c);
}

void vd__cluster_arm_raft_timer(struct vd_cluster *c)
{
    if (uv_is_closing((uv_handle_t *)&c->raft_timer))
        return;
    uint64_t now = vd__cluster_now_ms(), dl = vd_raft_next_deadline(c->raft);
    uv_timer_start(&c->raft_timer, on_raft_timer, dl > now ? dl - now : 0, 0);
}

/* Proposes a change of the leader's own making (membership steps, joins): no operation waits for
 * it, the next housekeeping pass looks at the state again. */
void vd__cluster_propose_internal(struct vd_cluster *c, const struct vd_buf *cmd)
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

/* ---- membership (leader) ----------------------------------------------------------------------
 */

/* One step of the membership plan, level-triggered from the state machine and the Raft
 * configuration, so that a new leader continues whatever an old one started: a JOINING member
 * becomes a learner, is promoted once it has caught up (§4.2.1), then is marked UP; a LEAVING
 * member is removed from the configuration (a leader first hands over leadership, §3.10), then
 * from the state machine. */
void vd__cluster_membership_step(struct vd_cluster *c, uint64_t now)
{
    if (vd_raft_role(c->raft) != VD_RAFT_LEADER)
        return;
    const struct vd_raft_conf *conf = vd_raft_conf(c->raft);
    size_t n = vd_meta_n_members(c->meta);
    for (size_t i = 0; i < n; i++) {
        const struct vd_meta_member *m = vd_meta_member_at(c->meta, i);
        struct member_clock *mc = vd__cluster_clock_of(c, m->id);
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
                vd__cluster_propose_internal(c, &cmd);
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
                vd__cluster_propose_internal(c, &cmd);
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
