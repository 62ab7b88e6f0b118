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
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "node_int.h"

/* ---- status ---------------------------------------------------------------------------------- */

struct member_clock *vd__cluster_clock_find(struct vd_cluster *c, uint64_t id)
{
    for (size_t i = 0; i < c->n_clocks; i++)
        if (c->clocks[i].id == id)
            return &c->clocks[i];
    return NULL;
}

struct member_clock *vd__cluster_clock_of(struct vd_cluster *c, uint64_t id)
{
    struct member_clock *found = vd__cluster_clock_find(c, id);
    if (found)
        return found;
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
    vd_clock_peer_init(&m->est);
    return m;
}

static bool member_up(struct vd_cluster *c, uint64_t id, uint64_t now)
{
    if (id == c->id)
        return true;
    struct member_clock *m = vd__cluster_clock_of(c, id);
    return m->heard && now - m->heard < DOWN_AFTER_MS;
}

uint64_t vd__cluster_spec_of(void *ctx, uint64_t id)
{
    struct vd_cluster *c = ctx;
    const struct member_clock *mc = id == c->id ? NULL : vd__cluster_clock_find(c, id);
    if (!mc)
        return 0; /* this node (no network) or one never heard from: the floor */
    uint64_t us = vd_rtt_window_p99(&mc->data_rtt);
    /* before its first data reply, its pings say how slow it usually is */
    uint64_t ms = us ? (us + 999) / 1000 : vd_clock_peer_rtt_max(&mc->est);
    return ms < SPEC_MAX_MS ? ms : SPEC_MAX_MS;
}

void vd__cluster_data_rtt(struct vd_cluster *c, uint64_t id, uint64_t rtt_us)
{
    struct member_clock *mc = vd__cluster_clock_find(c, id);
    if (mc)
        vd_rtt_window_add(&mc->data_rtt, rtt_us);
}

bool vd__cluster_member_down(void *ctx, uint64_t id)
{
    struct vd_cluster *c = ctx;
    if (id == c->id)
        return false;
    /* missed writes no hint will bring: a read that one replica answers must not be its */
    if (vd__cluster_hints_needs_repair(c, id))
        return true;
    const struct member_clock *m = vd__cluster_clock_find(c, id);
    return !m || !m->heard || vd__cluster_now_ms() - m->heard >= DOWN_AFTER_MS;
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

/* ---- metrics --------------------------------------------------------------------------------- */

static const char *const outcome_names[VD__OUTCOMES] = {"ok", "unavailable", "timeout",
                                                        "not_found", "error"};

void vd__cluster_request_end(struct vd_cluster *c, enum vd__req_kind kind, int status,
                             bool timed_out, const char *coll, const char *rid,
                             const struct vd_err *e)
{
    static const char *const kind_names[VD__REQ_KINDS] = {"write", "read", "search"};
    enum vd__req_outcome o = status == 0                            ? VD__OUT_OK
                             : status == VD_EUNAVAIL && timed_out   ? VD__OUT_TIMEOUT
                             : status == VD_EUNAVAIL                ? VD__OUT_UNAVAILABLE
                             : status == VD_ENOTFOUND               ? VD__OUT_NOT_FOUND
                                                                    : VD__OUT_ERROR;
    atomic_fetch_add_explicit(&c->outcomes[kind][o], 1, memory_order_relaxed);
    /* a failure is what an operator greps for; a success only when asked (--log-level debug) */
    vd_log(status ? VD_LOG_INFO : VD_LOG_DEBUG, "cluster: %s of collection '%s': %s%s%s rid=%s",
           kind_names[kind], coll, outcome_names[o], status ? ": " : "",
           status ? (e && e->msg[0] ? e->msg : vd_strerror(status)) : "", rid[0] ? rid : "-");
}

/*
 * The series only the loop can read (Raft state, members as this node sees them, peers' round
 * trips), rendered into *b once per status refresh: a scrape copies the text instead of asking
 * the loop. st[i] is the state of member i as GET /cluster shows it.
 */
static void metrics_build(struct vd_cluster *c, const enum vd_cluster_member_state *st,
                          uint64_t now, struct vd_buf *b)
{
    const struct vd_raft_conf *conf = vd_raft_conf(c->raft);
    uint64_t term = vd_raft_term(c->raft), leader = vd_raft_leader(c->raft);
    if (leader && term != c->leader_counted_term) {
        c->leader_counted_term = term;
        c->leader_changes++;
    }
    enum vd_raft_role role = vd_raft_role(c->raft);
    vd_buf_printf(b,
                  "# HELP vectord_cluster_node_info This node's id.\n"
                  "# TYPE vectord_cluster_node_info gauge\n"
                  "vectord_cluster_node_info{node=\"%llu\"} 1\n"
                  "# HELP vectord_raft_term The Raft term this node is in.\n"
                  "# TYPE vectord_raft_term gauge\n"
                  "vectord_raft_term %llu\n"
                  "# HELP vectord_raft_commit_index The highest Raft log index known committed.\n"
                  "# TYPE vectord_raft_commit_index gauge\n"
                  "vectord_raft_commit_index %llu\n"
                  "# HELP vectord_raft_applied_index The highest Raft log index applied to the "
                  "cluster's metadata on this node.\n"
                  "# TYPE vectord_raft_applied_index gauge\n"
                  "vectord_raft_applied_index %llu\n"
                  "# HELP vectord_raft_has_leader 1 when this node knows a leader for its term.\n"
                  "# TYPE vectord_raft_has_leader gauge\n"
                  "vectord_raft_has_leader %d\n",
                  (unsigned long long)c->id, (unsigned long long)term,
                  (unsigned long long)vd_raft_commit(c->raft),
                  (unsigned long long)vd_raft_applied(c->raft), leader ? 1 : 0);
    vd_buf_puts(b, "# HELP vectord_raft_leader_info The leader this node knows (label node).\n"
                   "# TYPE vectord_raft_leader_info gauge\n");
    if (leader)
        vd_buf_printf(b, "vectord_raft_leader_info{node=\"%llu\"} 1\n", (unsigned long long)leader);
    static const struct {
        enum vd_raft_role r;
        const char *name;
    } roles[] = {{VD_RAFT_LEADER, "leader"},
                 {VD_RAFT_CANDIDATE, "candidate"},
                 {VD_RAFT_PRECANDIDATE, "precandidate"},
                 {VD_RAFT_FOLLOWER, "follower"}};
    vd_buf_puts(b, "# HELP vectord_raft_role This node's Raft role (1 for the one it has).\n"
                   "# TYPE vectord_raft_role gauge\n");
    for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++)
        vd_buf_printf(b, "vectord_raft_role{role=\"%s\"} %d\n", roles[i].name,
                      roles[i].r == role ? 1 : 0);
    vd_buf_printf(b,
                  "# HELP vectord_raft_leader_changes_total Terms in which this node learned of a "
                  "leader.\n"
                  "# TYPE vectord_raft_leader_changes_total counter\n"
                  "vectord_raft_leader_changes_total %llu\n",
                  (unsigned long long)c->leader_changes);
    size_t n = vd_meta_n_members(c->meta), by_state[4] = {0}, voters = 0;
    for (size_t i = 0; i < n; i++) {
        by_state[st[i]]++;
        voters += vd_raft_conf_role(conf, vd_meta_member_at(c->meta, i)->id) == VD_RAFT_VOTER;
    }
    static const char *const state_names[] = {"up", "down", "joining", "leaving"};
    vd_buf_puts(b, "# HELP vectord_cluster_members Members by state, as this node sees them.\n"
                   "# TYPE vectord_cluster_members gauge\n");
    for (int i = 0; i < 4; i++)
        vd_buf_printf(b, "vectord_cluster_members{state=\"%s\"} %zu\n", state_names[i],
                      by_state[i]);
    vd_buf_printf(b,
                  "# HELP vectord_cluster_members_by_role Members by Raft role (a joining node is "
                  "a non-voter until caught up).\n"
                  "# TYPE vectord_cluster_members_by_role gauge\n"
                  "vectord_cluster_members_by_role{role=\"voter\"} %zu\n"
                  "vectord_cluster_members_by_role{role=\"non_voter\"} %zu\n",
                  voters, n - voters);
    vd_buf_puts(b, "# HELP vectord_peer_up 1 when the member was heard from within the last "
                   "2.5 s (pings go out every 250 ms).\n"
                   "# TYPE vectord_peer_up gauge\n");
    for (size_t i = 0; i < n; i++) {
        uint64_t id = vd_meta_member_at(c->meta, i)->id;
        const struct member_clock *mc = vd__cluster_clock_find(c, id);
        if (id != c->id)
            vd_buf_printf(b, "vectord_peer_up{peer=\"%llu\"} %d\n", (unsigned long long)id,
                          mc && mc->heard && now - mc->heard < DOWN_AFTER_MS ? 1 : 0);
    }
    static const char *const rtt_names[] = {"vectord_peer_rtt_seconds",
                                            "vectord_peer_rtt_max_seconds"};
    static const char *const rtt_help[] = {"The last ping round trip to the member.",
                                           "The longest of the member's last 8 ping round trips."};
    for (int k = 0; k < 2; k++) {
        vd_buf_printf(b, "# HELP %s %s\n# TYPE %s gauge\n", rtt_names[k], rtt_help[k],
                      rtt_names[k]);
        for (size_t i = 0; i < n; i++) {
            uint64_t id = vd_meta_member_at(c->meta, i)->id, rtt[2];
            const struct member_clock *mc = vd__cluster_clock_find(c, id);
            if (id != c->id && mc && vd_clock_peer_rtt_us(&mc->est, &rtt[0], &rtt[1]) == 0)
                vd_buf_printf(b, "%s{peer=\"%llu\"} %.6f\n", rtt_names[k],
                              (unsigned long long)id, (double)rtt[k] / 1e6);
        }
    }
}

void vd_cluster_metrics(struct vd_cluster *c, struct vd_buf *out)
{
    pthread_mutex_lock(&c->mu);
    if (c->metrics)
        vd_buf_puts(out, c->metrics);
    pthread_mutex_unlock(&c->mu);
    static const char *const kinds[VD__REQ_KINDS][2] = {
        {"vectord_cluster_writes_total", "Writes this node coordinated, by outcome."},
        {"vectord_cluster_reads_total", "Reads by id this node coordinated (those a search makes "
                                        "included), by outcome."},
        {"vectord_cluster_searches_total", "Searches, scrolls and counts this node coordinated, "
                                           "by outcome."}};
    for (int k = 0; k < VD__REQ_KINDS; k++) {
        vd_buf_printf(out, "# HELP %s %s\n# TYPE %s counter\n", kinds[k][0], kinds[k][1],
                      kinds[k][0]);
        for (int o = 0; o < VD__OUTCOMES; o++)
            vd_buf_printf(out, "%s{outcome=\"%s\"} %llu\n", kinds[k][0], outcome_names[o],
                          (unsigned long long)atomic_load_explicit(&c->outcomes[k][o],
                                                                   memory_order_relaxed));
    }
    vd_buf_printf(out,
                  "# HELP vectord_cluster_read_repairs_total Stale replica copies a read sent the "
                  "newest version to.\n"
                  "# TYPE vectord_cluster_read_repairs_total counter\n"
                  "vectord_cluster_read_repairs_total %llu\n",
                  (unsigned long long)atomic_load_explicit(&c->read_repairs,
                                                           memory_order_relaxed));
    vd__cluster_hints_metrics(c, out);
    vd__cluster_repair_metrics(c, out);
}

/* Rebuilds the cached GET /cluster result. */
void vd__cluster_status_refresh(struct vd_cluster *c)
{
    uint64_t now = vd__cluster_now_ms();
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
    if (c->broken) {
        vd_buf_puts(&b, "\"consensus_thread_status\":{\"consensus_thread_status\":\"stopped\"},");
    } else {
        /* Qdrant's "working" state carries the time the loop last went round (RFC 3339, UTC):
         * this cache is rebuilt by the loop, so a stalled loop shows as an old time */
        uint64_t wall = vd_wall_ms();
        time_t secs = (time_t)(wall / 1000);
        struct tm tm;
        char when[40] = "1970-01-01T00:00:00";
        if (gmtime_r(&secs, &tm))
            strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
        vd_buf_printf(&b,
                      "\"consensus_thread_status\":{\"consensus_thread_status\":\"working\","
                      "\"last_update\":\"%s.%03uZ\"},",
                      when, (unsigned)(wall % 1000));
    }
    /* why a membership change would be refused now (see vd_meta_collection_with_points) */
    const char *held = vd_meta_collection_with_points(c->meta);
    vd_buf_printf(&b, "\"membership_changes\":{\"allowed\":%s,\"blocked_by\":",
                  held ? "false" : "true");
    if (held)
        vd_buf_json_string(&b, held, strlen(held));
    else
        vd_buf_puts(&b, "null");
    vd_buf_puts(&b, "},\"message_send_failures\":{},\"nodes\":[");
    static const char *const state_names[] = {"up", "down", "joining", "leaving"};
    struct vd_cluster_member *seen = n ? malloc(n * sizeof *seen) : NULL;
    enum vd_cluster_member_state *states = n ? malloc(n * sizeof *states) : NULL;
    for (size_t i = 0; i < n; i++) {
        const struct vd_meta_member *m = vd_meta_member_at(c->meta, i);
        int role = vd_raft_conf_role(conf, m->id);
        enum vd_cluster_member_state st = m->state == VD_MEMBER_JOINING   ? VD_CLUSTER_JOINING
                                          : m->state == VD_MEMBER_LEAVING ? VD_CLUSTER_LEAVING
                                          : member_up(c, m->id, now)      ? VD_CLUSTER_UP
                                                                          : VD_CLUSTER_DOWN;
        const char *state = state_names[st];
        if (seen)
            seen[i] = (struct vd_cluster_member){m->id, st};
        if (states)
            states[i] = st;
        vd_buf_printf(&b, "%s{\"id\":%llu,\"address\":", i ? "," : "", (unsigned long long)m->id);
        vd_buf_json_string(&b, m->addr, strlen(m->addr));
        vd_buf_puts(&b, ",\"rest_address\":");
        vd_buf_json_string(&b, m->http_addr, strlen(m->http_addr));
        vd_buf_printf(&b, ",\"state\":\"%s\",\"role\":\"%s\",\"leader\":%s", state,
                      role == VD_RAFT_VOTER     ? "voter"
                      : role == VD_RAFT_LEARNER ? "learner"
                                                : "none",
                      m->id == leader ? "true" : "false");
        /* the member's clock minus ours, as estimated from pings (null before the first) */
        int64_t off = 0;
        const struct member_clock *mc = vd__cluster_clock_find(c, m->id);
        if (m->id == c->id || (mc && vd_clock_peer_offset(&mc->est, &off, NULL) == 0))
            vd_buf_printf(&b, ",\"clock_offset_ms\":%lld", (long long)off);
        else
            vd_buf_puts(&b, ",\"clock_offset_ms\":null");
        vd_buf_printf(&b, ",\"needs_repair\":%s}",
                      vd__cluster_hints_needs_repair(c, m->id) ? "true" : "false");
    }
    /* a data directory written before replication has its points placed on the ring once */
    vd_buf_printf(&b,
                  "],\"points_placement\":{\"state\":\"%s\",\"records_placed\":%llu,"
                  "\"copies_dropped\":%llu},",
                  vd__cluster_place_state_name(c),
                  (unsigned long long)atomic_load(&c->place_points),
                  (unsigned long long)atomic_load(&c->place_dropped));
    vd__cluster_repair_status_json(c, &b);
    vd_buf_puts(&b, "}");
    struct vd_buf mb;
    vd_buf_init(&mb);
    if (!n || states)
        metrics_build(c, states, now, &mb);
    free(states);
    char *mtext = vd_buf_ok(&mb) && mb.len ? vd_buf_steal(&mb, NULL) : NULL;
    vd_buf_release(&mb);
    if (!vd_buf_ok(&b) || (n && !seen)) {
        vd_buf_release(&b);
        free(seen);
        free(mtext);
        return;
    }
    char *s = vd_buf_steal(&b, NULL);
    pthread_mutex_lock(&c->mu);
    char *old = c->status;
    struct vd_cluster_member *old_seen = c->members_seen;
    char *old_metrics = c->metrics;
    c->status = s;
    c->members_seen = seen;
    c->n_seen = n;
    if (mtext)
        c->metrics = mtext;
    else
        old_metrics = NULL; /* out of memory: the last series stay */
    pthread_mutex_unlock(&c->mu);
    free(old);
    free(old_seen);
    free(old_metrics);
    c->last_status = now;
}

/* ---- housekeeping ---------------------------------------------------------------------------- */

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
    struct vd_buf cmd = {0};
    vd_meta_cmd_set_member(c->id, (enum vd_meta_state)m->state, c->advertise, c->http_advertise,
                           &cmd);
    int rc = vd__cluster_op_internal(c, OP_INTERNAL, &cmd);
    vd_buf_release(&cmd);
    if (rc)
        return;
    vd_log_info("cluster: this node's address changed to %s (REST %s); telling the cluster",
                c->advertise, c->http_advertise);
}

/*
 * The write rule (vd_clock_skewed in core.h) over the members heard from recently: a member that
 * is down has no fresh samples, one never heard from none at all, and neither is taken as a
 * witness. Publishes the outcome for vd_cluster_clock_check and logs each change.
 */
static void clock_refresh(struct vd_cluster *c, uint64_t now)
{
    const struct vd_clock_peer *peers[MAX_MEMBERS * 2];
    size_t np = 0, n = vd_meta_n_members(c->meta);
    uint64_t nearest = UINT64_MAX;
    int64_t ours = 0; /* our clock minus the nearest far member's */
    for (size_t i = 0; i < n && np < sizeof peers / sizeof peers[0]; i++) {
        const struct vd_meta_member *m = vd_meta_member_at(c->meta, i);
        const struct member_clock *mc = vd__cluster_clock_find(c, m->id);
        if (m->id == c->id || !mc || !mc->heard || now - mc->heard >= DOWN_AFTER_MS)
            continue;
        peers[np++] = &mc->est;
        int64_t off;
        if (vd_clock_peer_far(&mc->est, c->max_offset_ms) &&
            vd_clock_peer_offset(&mc->est, &off, NULL) == 0) {
            uint64_t mag = off < 0 ? (uint64_t)0 - (uint64_t)off : (uint64_t)off;
            if (mag < nearest) {
                nearest = mag;
                ours = -off;
            }
        }
    }
    int64_t skew = vd_clock_skewed(peers, np, n, c->max_offset_ms) ? (ours ? ours : 1) : 0;
    int64_t was = atomic_exchange(&c->skew_ms, skew);
    if (skew && !was)
        vd_log_warn("cluster: this node's clock is %lld ms %s a majority of the members "
                    "(max-clock-offset %llu ms): data writes are refused until it is back",
                    (long long)(skew < 0 ? -skew : skew), skew < 0 ? "behind" : "ahead of",
                    (unsigned long long)c->max_offset_ms);
    else if (!skew && was)
        vd_log_info("cluster: this node's clock is back within max-clock-offset of a majority of "
                    "the members: data writes are accepted again");
}

int vd_cluster_clock_check(struct vd_cluster *c, struct vd_err *err)
{
    int64_t skew = atomic_load(&c->skew_ms);
    if (!skew)
        return 0;
    return vd_errf(err, VD_EUNAVAIL,
                   "clock skew: this node's clock is %lld ms from the majority of members "
                   "(max-clock-offset %llu ms)",
                   (long long)(skew < 0 ? -skew : skew), (unsigned long long)c->max_offset_ms);
}

static void on_house(uv_timer_t *t)
{
    struct vd_cluster *c = t->data;
    vd__cluster_data_tick(c);
    vd__cluster_hints_tick(c);
    vd__cluster_repair_tick(c);
    if (c->broken) {
        vd__cluster_ops_progress(c);
        return;
    }
    uint64_t now = vd__cluster_now_ms();
    if (now - c->last_ping >= PING_MS) {
        c->last_ping = now;
        /* wall time for the clock offset; monotonic time for the round trip in /metrics (a
         * peer echoes the body whatever its length, so an older one answers these too) */
        uint8_t sent[16];
        vd_be64_put(sent, vd_wall_ms());
        vd_be64_put(sent + 8, vd_mono_ns());
        size_t n = vd_meta_n_members(c->meta);
        for (size_t i = 0; i < n; i++) {
            const struct vd_meta_member *m = vd_meta_member_at(c->meta, i);
            if (m->id != c->id)
                vd_transport_send(c->tp, m->id, VD_FRAME_PING, sent, sizeof sent);
        }
    }
    clock_refresh(c, now);
    if (c->join) {
        if (vd_meta_member(c->meta, c->id) && vd_raft_leader(c->raft)) {
            vd_log_info("cluster: joined; leader is node %llu",
                        (unsigned long long)vd_raft_leader(c->raft));
            free(c->join);
            c->join = NULL;
        } else if (now - c->last_join >= JOIN_RETRY_MS) {
            struct vd_buf args = {0};
            vd__cluster_wr_u64(&args, c->id);
            vd__cluster_wr_str(&args, c->advertise);
            vd__cluster_wr_str(&args, c->http_advertise);
            vd__cluster_send_call(c, 0, c->join, ++c->next_call, CALL_JOIN, &args);
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
    vd__cluster_membership_step(c, now);
    address_check(c, now);
    vd__cluster_points_watch(c, now);
    vd__cluster_ops_progress(c);
    if (now - c->last_status >= 200)
        vd__cluster_status_refresh(c);
    vd__cluster_drive(c);
}

/* ---- the loop thread ------------------------------------------------------------------------- */

static void on_closed(uv_handle_t *h)
{
    (void)h;
}

static void shutdown_loop(struct vd_cluster *c)
{
    while (c->ops)
        vd__cluster_op_fail(c, c->ops, VD_ECLOSED, "%s", "the node is shutting down");
    vd__cluster_hints_close(c);
    vd__cluster_repair_close(c);
    vd__cluster_data_stop(c);
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
                vd__cluster_op_free(e->op);
            } else {
                e->op->next = c->ops;
                c->ops = e->op;
            }
        } else {
            vd__cluster_rec_event(c, e->status, e->msg);
        }
        free(e);
        e = next;
    }
    if (stopping) {
        if (!uv_is_closing((uv_handle_t *)&c->async))
            shutdown_loop(c);
        return;
    }
    vd__cluster_data_events(c);
    vd__cluster_drive(c);
}

static void *loop_main(void *arg)
{
    struct vd_cluster *c = arg;
    uv_run(&c->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* ---- start and stop -------------------------------------------------------------------------- */

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
    rc = vd__cluster_entry_data(0, 0, &cmd, &ents[ne].data, &ents[ne].len);
    vd_buf_release(&cmd);
    if (rc)
        goto out_nomem;
    ne++;
    vd_buf_init(&cmd);
    vd_meta_cmd_set_member(c->id, VD_MEMBER_UP, c->advertise, c->http_advertise, &cmd);
    rc = vd__cluster_entry_data(0, 0, &cmd, &ents[ne].data, &ents[ne].len);
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
        rc = vd__cluster_entry_data(0, 0, &cmd, &ents[ne].data, &ents[ne].len);
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
            rc = vd__cluster_entry_data(0, 0, &cmd, &ents[ne].data, &ents[ne].len);
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
    vd_meta_pub_release(&c->meta_pub);
    vd_meta_free(c->meta);
    free(c->data_dir);
    free(c->advertise);
    free(c->http_advertise);
    free(c->bind);
    free(c->secret);
    free(c->join);
    free(c->status);
    free(c->metrics);
    free(c->members_seen);
    free(c->rec.acts);
    free(c->rec.iacts);
    vd__cluster_hints_free(c);
    vd__cluster_repair_free(c);
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
    c->election_ms = o->election_timeout_ms ? o->election_timeout_ms : 1000;
    c->heartbeat_ms = o->heartbeat_ms ? o->heartbeat_ms : 100;
    c->request_ms = o->request_timeout_ms ? o->request_timeout_ms : 10000;
    c->snapshot_every = o->snapshot_every ? o->snapshot_every : 1024;
    c->max_offset_ms =
        o->max_clock_offset_ms ? o->max_clock_offset_ms : VD_MAX_CLOCK_OFFSET_MS_DEFAULT;
    c->no_sync = o->no_sync;
    c->on_fatal = o->on_fatal;
    c->fatal_ctx = o->fatal_ctx;
    if (vd__cluster_hints_new(c, o->hint_window_ms ? o->hint_window_ms
                                                   : VD_HINT_WINDOW_MS_DEFAULT) ||
        vd__cluster_repair_new(c, o->repair_interval_ms)) {
        vd__cluster_hints_free(c);
        pthread_mutex_destroy(&c->mu);
        pthread_cond_destroy(&c->inflight_cv);
        free(c);
        return vd_errf(err, VD_ENOMEM, "out of memory");
    }
    c->data_dir = vd_xstrdup(o->data_dir);
    c->bind = vd_xstrdup(o->bind ? o->bind : "127.0.0.1");
    c->secret = o->secret && o->secret[0] ? vd_xstrdup(o->secret) : NULL;
    c->http_advertise = vd_xstrdup(o->http_advertise ? o->http_advertise : "");
    c->next_seq = vd_wall_ms() << 16; /* unique across restarts of this node */
    int rc;

    /* Listen first: with port 0 the port is known only once bound, and the node's own member
     * entry (bootstrap) must carry the address it really listens on. The loop does not run
     * before the thread starts, so no frame arrives before the node is ready. */
    if (uv_loop_init(&c->loop)) {
        rc = vd_errf(err, VD_EIO, "cluster: cannot start the event loop");
        goto fail_free;
    }
    struct vd_transport_opts to = {
        .loop = &c->loop,
        .self_id = c->id,
        .bind = c->bind,
        .port = o->port,
        .advertise = o->advertise && o->advertise[0] ? o->advertise : NULL,
        .secret = c->secret,
        .refuse_all = o->refuse_peers,
        .max_clock_offset_ms = c->max_offset_ms,
        .on_frame = vd__cluster_on_frame,
        .ctx = c,
    };
    if ((rc = vd_transport_start(&to, &c->tp, err))) {
        uv_loop_close(&c->loop);
        goto fail_free;
    }
    c->port = vd_transport_port(c->tp);
    c->advertise = vd_xstrdup(vd_transport_advertise(c->tp));
    if ((rc = vd__cluster_data_start(c, err)))
        goto fail;

    struct vd_raftlog_opts lo = {.dir = c->data_dir, .no_sync = c->no_sync};
    if ((rc = vd_raftlog_open(&lo, &c->log, err)))
        goto fail;
    struct vd_raft_state st;
    if ((rc = vd_raftlog_load(c->log, &st, err)))
        goto fail;
    bool fresh = !st.snapshot && st.n_entries == 0 && st.term == 0;
    if (fresh && o->join && o->join[0]) {
        size_t n = vd__cluster_local_collections(c);
        if (n) {
            rc = vd_errf(err, VD_EINVAL,
                         "--join: this node holds %zu collection(s); only an empty node can join "
                         "a cluster",
                         n);
            goto fail;
        }
        c->join = vd_xstrdup(o->join);
        c->join_asked = true;
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
    if ((rc = vd_meta_publish(&c->meta_pub, c->meta))) {
        rc = vd_errf(err, rc, "out of memory");
        goto fail;
    }
    c->catchup = st.n_entries  ? st.entries[st.n_entries - 1].index
                 : st.snapshot ? st.snapshot->index
                               : 0;
    struct vd_raft_config cfg;
    vd__cluster_raft_config(c, &cfg);
    if ((rc = vd_raft_new(&cfg, c->join ? NULL : &st, vd__cluster_now_ms(), &c->raft))) {
        rc = vd_errf(err, rc, "cluster: the stored Raft state does not load");
        goto fail;
    }
    const struct vd_raft_conf *conf = vd_raft_conf(c->raft);
    if (conf->n == 1 && conf->nodes[0].id == c->id) {
        /* The only voter need not wait an election timeout for peers that do not exist: start
         * its clock two timeouts in the past so that the first tick elects it. */
        vd_raft_free(c->raft);
        c->raft = NULL;
        uint64_t now = vd__cluster_now_ms(), back = 2 * (uint64_t)c->election_ms;
        if ((rc = vd_raft_new(&cfg, &st, now > back ? now - back : 0, &c->raft))) {
            rc = vd_errf(err, rc, "cluster: the stored Raft state does not load");
            goto fail;
        }
        vd_raft_tick(c->raft, now);
    }

    uv_async_init(&c->loop, &c->async, on_async);
    c->async.data = c;
    uv_timer_init(&c->loop, &c->raft_timer);
    c->raft_timer.data = c;
    uv_timer_init(&c->loop, &c->house_timer);
    c->house_timer.data = c;
    uv_timer_start(&c->house_timer, on_house, HOUSEKEEPING_MS, HOUSEKEEPING_MS);
    vd__cluster_peers_refresh(c);
    vd__cluster_peers_from_log(c, &st);
    vd__cluster_status_refresh(c);
    vd__cluster_arm_raft_timer(c);
    if (pthread_create(&c->thread, NULL, loop_main, c)) {
        shutdown_loop(c);
        uv_run(&c->loop, UV_RUN_DEFAULT);
        uv_loop_close(&c->loop);
        rc = vd_errf(err, VD_ENOMEM, "cluster: cannot start the loop thread");
        goto fail_free;
    }
    if (vd__cluster_place_start(c))
        vd_log_warn("cluster: cannot start placing this data directory's points on the ring");
    vd_log_info("cluster: node %llu listening for peers on %s:%u (advertised as %s)%s",
                (unsigned long long)c->id, c->bind, vd_transport_port(c->tp), c->advertise,
                c->secret ? "" : "; no cluster secret: only loopback peers are accepted");
    *out = c;
    return 0;
fail:
    /* the transports' handles close through the loop, which has not run yet */
    vd__cluster_data_stop(c);
    vd_transport_close(c->tp);
    c->tp = NULL;
    uv_run(&c->loop, UV_RUN_DEFAULT);
    uv_loop_close(&c->loop);
fail_free:
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
            vd__cluster_op_free(e->op);
        }
        free(e);
        e = next;
    }
    vd__cluster_place_stop(c);
    cluster_free(c);
}

struct vd_meta_view *vd__cluster_view_acquire(struct vd_cluster *c)
{
    return vd_meta_pub_acquire(&c->meta_pub);
}
