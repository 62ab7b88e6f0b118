/*
 * Unit tests of the Raft core: a small deterministic harness drives a few cores with a perfect
 * (or selectively lossy) network, and single cores are driven message by message where a test
 * needs an exact situation. The seeded fault simulator lives in tests/sim.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vectord/core.h"
#include "vectord/raft.h"
#include "unit/purity.h"

/* ---- purity: convention 8 --------------------------------------------------------------- */

static void test_core_is_pure(void **state)
{
    /* Convention 8: the core reaches for no I/O, clock or thread; the simulator replays a run
     * from its seed only if time and randomness come in through the API. */
    purity_check_module(__FILE__, "raft", 2);
}

/* ---- harness ----------------------------------------------------------------------------- */

#define H_MAX 6

struct hmsg {
    struct vd_raft_msg m;
    struct vd_raft_entry *ents;
    uint8_t *data;
};

struct hnode {
    struct vd_raft *r;
    uint64_t term, vote;
    struct vd_raft_entry log[512]; /* durable log, index i at log[i - 1 - snap_index] */
    size_t n_log;
    uint64_t snap_index, snap_term;
    struct vd_raft_conf snap_conf;
    uint8_t snap_data[64];
    size_t snap_len;
    uint64_t applied;
    uint64_t sum; /* state machine: sum of applied 8-byte commands */
    struct vd_raft_read reads[16];
    size_t n_reads;
    bool down;
};

struct harness {
    int n;
    uint64_t now;
    struct hnode nodes[H_MAX + 1]; /* by id, 1..n */
    struct hmsg q[4096];
    size_t nq;
    bool cut[H_MAX + 1][H_MAX + 1];
    /* optional: returns true for messages the network loses; may also shorten m->n_entries */
    bool (*drop)(struct vd_raft_msg *m);
    struct vd_raft_config cfg;
};

static void h_copy(struct hmsg *h, const struct vd_raft_msg *m)
{
    h->m = *m;
    h->ents = NULL;
    h->data = NULL;
    if (m->n_entries) {
        h->ents = calloc(m->n_entries, sizeof(*h->ents));
        for (size_t i = 0; i < m->n_entries; i++) {
            h->ents[i] = m->entries[i];
            if (m->entries[i].len) {
                h->ents[i].data = malloc(m->entries[i].len);
                memcpy(h->ents[i].data, m->entries[i].data, m->entries[i].len);
            }
        }
    }
    h->m.entries = h->ents;
    if (m->len) {
        h->data = malloc(m->len);
        memcpy(h->data, m->data, m->len);
    }
    h->m.data = h->data;
}

static void h_free_msg(struct hmsg *h)
{
    for (size_t i = 0; i < h->m.n_entries; i++)
        free(h->ents[i].data);
    free(h->ents);
    free(h->data);
}

static void hnode_persist(struct hnode *n, const struct vd_raft_update *u)
{
    if (u->hard_state) {
        n->term = u->term;
        n->vote = u->vote;
    }
    if (u->snapshot) {
        for (size_t i = 0; i < n->n_log; i++)
            free(n->log[i].data);
        n->n_log = 0;
        n->snap_index = u->snapshot->index;
        n->snap_term = u->snapshot->term;
        n->snap_conf = u->snapshot->conf;
        assert_true(u->snapshot->len <= sizeof(n->snap_data));
        memcpy(n->snap_data, u->snapshot->data, u->snapshot->len);
        n->snap_len = u->snapshot->len;
    }
    if (u->first_index) {
        while (n->n_log && n->snap_index + n->n_log >= u->first_index) {
            free(n->log[n->n_log - 1].data);
            n->n_log--;
        }
        for (size_t i = 0; i < u->n_entries; i++) {
            assert_int_equal(u->entries[i].index, n->snap_index + n->n_log + 1);
            assert_true(n->n_log < 512);
            struct vd_raft_entry *e = &n->log[n->n_log++];
            *e = u->entries[i];
            e->data = NULL;
            if (e->len) {
                e->data = malloc(e->len);
                memcpy(e->data, u->entries[i].data, e->len);
            }
        }
    }
}

static void h_process(struct harness *h, int id)
{
    struct hnode *n = &h->nodes[id];
    struct vd_raft_update u;
    while (!n->down && vd_raft_ready(n->r, &u)) {
        hnode_persist(n, &u);
        for (size_t i = 0; i < u.n_msgs; i++) {
            assert_true(h->nq < 4096);
            h_copy(&h->q[h->nq++], &u.msgs[i]);
        }
        if (u.snapshot) {
            memcpy(&n->sum, u.snapshot->data, sizeof(n->sum));
            n->applied = u.snapshot->index;
        }
        for (size_t i = 0; i < u.n_committed; i++) {
            const struct vd_raft_entry *e = &u.committed[i];
            assert_int_equal(e->index, n->applied + 1);
            n->applied = e->index;
            if (e->type == VD_RAFT_ENTRY_NORMAL && e->len == 8) {
                uint64_t v;
                memcpy(&v, e->data, 8);
                n->sum += v;
            }
        }
        for (size_t i = 0; i < u.n_reads && n->n_reads < 16; i++)
            n->reads[n->n_reads++] = u.reads[i];
        vd_raft_advance(n->r);
    }
}

static void h_start(struct harness *h, int id)
{
    struct hnode *n = &h->nodes[id];
    struct vd_raft_config cfg = h->cfg;
    cfg.id = (uint64_t)id;
    cfg.seed = 1000 + (uint64_t)id * 7 + h->now;
    struct vd_raft_snapshot snap = {.index = n->snap_index,
                                    .term = n->snap_term,
                                    .conf = n->snap_conf,
                                    .data = n->snap_data,
                                    .len = n->snap_len};
    struct vd_raft_state st = {.term = n->term,
                               .vote = n->vote,
                               .entries = n->log,
                               .n_entries = n->n_log,
                               .snapshot = n->snap_index ? &snap : NULL};
    assert_int_equal(vd_raft_new(&cfg, &st, h->now, &n->r), 0);
    n->applied = n->snap_index;
    n->sum = 0;
    if (n->snap_index)
        memcpy(&n->sum, n->snap_data, sizeof(n->sum));
    n->down = false;
}

/* n voters 1..n (plus, with learners > 0, nodes that start empty and are not members). */
static void h_init(struct harness *h, int voters, int extra)
{
    memset(h, 0, sizeof(*h));
    h->n = voters + extra;
    vd_raft_config_default(&h->cfg);
    h->cfg.snapshot_chunk = 3; /* tiny chunks: every InstallSnapshot takes several */
    h->cfg.max_append_entries = 4;
    struct vd_raft_conf c = {0};
    for (int i = 0; i < voters; i++) {
        c.nodes[i].id = (uint64_t)i + 1;
        c.nodes[i].role = VD_RAFT_VOTER;
    }
    c.n = (uint32_t)voters;
    uint8_t buf[4 + 9 * VD_RAFT_MAX_NODES];
    struct vd_raft_entry boot;
    vd_raft_bootstrap_entry(&c, buf, &boot);
    for (int id = 1; id <= h->n; id++) {
        struct hnode *n = &h->nodes[id];
        if (id <= voters) {
            n->log[0] = boot;
            n->log[0].data = malloc(boot.len);
            memcpy(n->log[0].data, buf, boot.len);
            n->n_log = 1;
        }
        h_start(h, id);
    }
}

static void h_crash(struct harness *h, int id)
{
    vd_raft_free(h->nodes[id].r);
    h->nodes[id].r = NULL;
    h->nodes[id].down = true;
}

static void h_release(struct harness *h)
{
    for (int id = 1; id <= h->n; id++) {
        struct hnode *n = &h->nodes[id];
        if (!n->down)
            vd_raft_free(n->r);
        for (size_t i = 0; i < n->n_log; i++)
            free(n->log[i].data);
    }
    for (size_t i = 0; i < h->nq; i++)
        h_free_msg(&h->q[i]);
}

/* Delivers every queued message (and the ones they cause) in FIFO order. */
static void h_deliver(struct harness *h)
{
    for (int id = 1; id <= h->n; id++)
        h_process(h, id);
    size_t head = 0;
    while (head < h->nq) {
        struct hmsg m = h->q[head++];
        if (getenv("H_TRACE"))
            fprintf(stderr,
                    "t=%llu %u %llu->%llu term %llu idx %llu lt %llu n %zu rej %d hint %llu\n",
                    (unsigned long long)h->now, m.m.type, (unsigned long long)m.m.from,
                    (unsigned long long)m.m.to, (unsigned long long)m.m.term,
                    (unsigned long long)m.m.index, (unsigned long long)m.m.log_term, m.m.n_entries,
                    m.m.reject, (unsigned long long)m.m.hint);
        int to = (int)m.m.to, from = (int)m.m.from;
        size_t n_entries = m.m.n_entries;
        if (to >= 1 && to <= h->n && !h->nodes[to].down && !h->cut[from][to] &&
            !(h->drop && h->drop(&m.m))) {
            vd_raft_tick(h->nodes[to].r, h->now);
            vd_raft_step(h->nodes[to].r, &m.m);
            h_process(h, to);
        }
        m.m.n_entries = n_entries;
        h_free_msg(&m);
        if (head == h->nq)
            head = h->nq = 0;
        else if (head > 2048) {
            memmove(h->q, h->q + head, (h->nq - head) * sizeof(*h->q));
            h->nq -= head;
            head = 0;
        }
    }
    h->nq = 0;
}

/* Advances virtual time by ms in 10 ms ticks, delivering everything each tick. */
static void h_run(struct harness *h, uint64_t ms)
{
    uint64_t end = h->now + ms;
    while (h->now < end) {
        h->now += 10;
        for (int id = 1; id <= h->n; id++)
            if (!h->nodes[id].down) {
                vd_raft_tick(h->nodes[id].r, h->now);
                h_process(h, id);
            }
        h_deliver(h);
    }
}

static int h_leader(struct harness *h)
{
    int l = 0;
    for (int id = 1; id <= h->n; id++)
        if (!h->nodes[id].down && vd_raft_role(h->nodes[id].r) == VD_RAFT_LEADER &&
            (!l || vd_raft_term(h->nodes[id].r) > vd_raft_term(h->nodes[l].r)))
            l = id;
    return l;
}

static void h_propose(struct harness *h, int id, uint64_t v)
{
    assert_int_equal(vd_raft_propose(h->nodes[id].r, &v, 8, NULL, NULL), 0);
    h_process(h, id);
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_single_node(void **state)
{
    static struct harness h;
    h_init(&h, 1, 0);
    h_run(&h, 2100);
    assert_int_equal(h_leader(&h), 1);
    h_propose(&h, 1, 5);
    h_propose(&h, 1, 7);
    h_deliver(&h);
    assert_int_equal(h.nodes[1].sum, 12);
    assert_int_equal(vd_raft_commit(h.nodes[1].r), 4); /* conf, no-op, two commands */
    h_release(&h);
}

static void test_three_nodes_elect_and_replicate(void **state)
{
    static struct harness h;
    h_init(&h, 3, 0);
    h_run(&h, 2100);
    int l = h_leader(&h);
    assert_true(l >= 1);
    for (uint64_t v = 1; v <= 100; v++)
        h_propose(&h, l, v);
    h_run(&h, 200);
    for (int id = 1; id <= 3; id++) {
        assert_int_equal(h.nodes[id].sum, 5050);
        assert_int_equal(vd_raft_leader(h.nodes[id].r), (uint64_t)l);
    }
    /* followers refuse proposals */
    int f = l % 3 + 1;
    uint64_t v = 1;
    assert_int_equal(vd_raft_propose(h.nodes[f].r, &v, 8, NULL, NULL), VD_ENOTLEADER);
    h_release(&h);
}

static void test_leader_crash_new_leader_keeps_committed(void **state)
{
    static struct harness h;
    h_init(&h, 5, 0);
    h_run(&h, 2100);
    int l = h_leader(&h);
    assert_true(l >= 1);
    for (uint64_t v = 1; v <= 10; v++)
        h_propose(&h, l, v);
    h_run(&h, 100);
    uint64_t term = vd_raft_term(h.nodes[l].r);
    h_crash(&h, l);
    h_run(&h, 2500);
    int l2 = h_leader(&h);
    assert_true(l2 >= 1 && l2 != l);
    assert_true(vd_raft_term(h.nodes[l2].r) > term);
    h_propose(&h, l2, 1000);
    h_run(&h, 100);
    assert_int_equal(h.nodes[l2].sum, 1055);
    /* the old leader restarts from its durable state and catches up */
    h_start(&h, l);
    h_run(&h, 300);
    assert_int_equal(h.nodes[l].sum, 1055);
    h_release(&h);
}

static void test_prevote_isolated_node_does_not_inflate_term(void **state)
{
    static struct harness h;
    h_init(&h, 3, 0);
    h_run(&h, 2100);
    int l = h_leader(&h);
    int f = l % 3 + 1;
    uint64_t term = vd_raft_term(h.nodes[l].r);
    for (int id = 1; id <= 3; id++)
        h.cut[f][id] = h.cut[id][f] = true;
    h_run(&h, 10000);
    /* without pre-vote the isolated node would be at term + 5 or more by now */
    assert_int_equal(vd_raft_term(h.nodes[f].r), term);
    memset(h.cut, 0, sizeof(h.cut));
    h_run(&h, 500);
    assert_int_equal(h_leader(&h), l); /* rejoining did not depose the leader */
    assert_int_equal(vd_raft_term(h.nodes[l].r), term);
    h_release(&h);
}

static void test_check_quorum_leader_steps_down(void **state)
{
    static struct harness h;
    h_init(&h, 3, 0);
    h_run(&h, 2100);
    int l = h_leader(&h);
    for (int id = 1; id <= 3; id++)
        h.cut[l][id] = h.cut[id][l] = true;
    h_run(&h, 2100);
    assert_int_not_equal(vd_raft_role(h.nodes[l].r), VD_RAFT_LEADER);
    int l2 = h_leader(&h);
    assert_true(l2 >= 1 && l2 != l);
    h_release(&h);
}

/* Drives node 1 of a 3-voter cluster by hand into leadership of term 3 with an entry of term 2
 * at index 2, then acknowledges replication piecewise. */
static struct vd_raft *leader_with_old_entry(enum vd_raft_bug bug)
{
    struct vd_raft_conf c = {.n = 3};
    for (int i = 0; i < 3; i++) {
        c.nodes[i].id = (uint64_t)i + 1;
        c.nodes[i].role = VD_RAFT_VOTER;
    }
    uint8_t buf[64], cmd[8] = {1};
    struct vd_raft_entry ents[2];
    vd_raft_bootstrap_entry(&c, buf, &ents[0]);
    ents[1] = (struct vd_raft_entry){
        .term = 2, .index = 2, .type = VD_RAFT_ENTRY_NORMAL, .data = cmd, .len = 8};
    struct vd_raft_state st = {.term = 2, .vote = 0, .entries = ents, .n_entries = 2};
    struct vd_raft_config cfg;
    vd_raft_config_default(&cfg);
    cfg.id = 1;
    cfg.bug = bug;
    struct vd_raft *r;
    assert_int_equal(vd_raft_new(&cfg, &st, 0, &r), 0);
    vd_raft_tick(r, 2000);
    assert_int_equal(vd_raft_role(r), VD_RAFT_PRECANDIDATE);
    assert_int_equal(vd_raft_term(r), 2); /* pre-vote does not bump the term */
    struct vd_raft_update u;
    assert_true(vd_raft_ready(r, &u));
    vd_raft_advance(r);
    struct vd_raft_msg m = {.type = VD_RAFT_MSG_PREVOTE_RESP, .from = 2, .to = 1, .term = 3};
    assert_int_equal(vd_raft_step(r, &m), 0);
    assert_int_equal(vd_raft_role(r), VD_RAFT_CANDIDATE);
    assert_int_equal(vd_raft_term(r), 3);
    m.type = VD_RAFT_MSG_VOTE_RESP;
    assert_int_equal(vd_raft_step(r, &m), 0);
    assert_int_equal(vd_raft_role(r), VD_RAFT_LEADER);
    assert_int_equal(vd_raft_last_index(r), 3); /* the no-op of term 3 */
    assert_int_equal(vd_raft_term_at(r, 3), 3);
    assert_true(vd_raft_ready(r, &u));
    assert_true(u.hard_state);
    assert_int_equal(u.n_entries, 1);
    vd_raft_advance(r);
    return r;
}

static void test_commit_only_through_current_term(void **state)
{
    struct vd_raft *r = leader_with_old_entry(VD_RAFT_BUG_NONE);
    /* Follower 2 has index 2 (term 2) but not yet the no-op: a majority holds index 2, yet
     * §3.6.2 forbids committing it by counting replicas. */
    struct vd_raft_msg m = {
        .type = VD_RAFT_MSG_APPEND_RESP, .from = 2, .to = 1, .term = 3, .index = 2};
    assert_int_equal(vd_raft_step(r, &m), 0);
    assert_int_equal(vd_raft_commit(r), 0);
    m.index = 3;
    assert_int_equal(vd_raft_step(r, &m), 0);
    assert_int_equal(vd_raft_commit(r), 3);
    vd_raft_free(r);

    /* the planted bug commits it: the simulator's checker has something to find */
    r = leader_with_old_entry(VD_RAFT_BUG_COMMIT_OLD_TERM);
    m.index = 2;
    assert_int_equal(vd_raft_step(r, &m), 0);
    assert_int_equal(vd_raft_commit(r), 2);
    vd_raft_free(r);
}

static void test_vote_rules(void **state)
{
    struct vd_raft *r = leader_with_old_entry(VD_RAFT_BUG_NONE);
    vd_raft_free(r);
    /* A follower grants one vote per term, only to an up-to-date candidate. */
    struct vd_raft_conf c = {.n = 3};
    for (int i = 0; i < 3; i++) {
        c.nodes[i].id = (uint64_t)i + 1;
        c.nodes[i].role = VD_RAFT_VOTER;
    }
    uint8_t buf[64];
    struct vd_raft_entry e;
    vd_raft_bootstrap_entry(&c, buf, &e);
    struct vd_raft_state st = {.term = 1, .entries = &e, .n_entries = 1};
    struct vd_raft_config cfg;
    vd_raft_config_default(&cfg);
    cfg.id = 3;
    assert_int_equal(vd_raft_new(&cfg, &st, 0, &r), 0);
    struct vd_raft_msg v = {
        .type = VD_RAFT_MSG_VOTE, .from = 1, .to = 3, .term = 2, .index = 1, .log_term = 1};
    assert_int_equal(vd_raft_step(r, &v), 0);
    struct vd_raft_update u;
    assert_true(vd_raft_ready(r, &u));
    assert_true(u.hard_state);
    assert_int_equal(u.vote, 1);
    assert_int_equal(u.n_msgs, 1);
    assert_false(u.msgs[0].reject);
    vd_raft_advance(r);
    v.from = 2;
    assert_int_equal(vd_raft_step(r, &v), 0);
    assert_true(vd_raft_ready(r, &u));
    assert_true(u.msgs[0].reject); /* second candidate, same term */
    vd_raft_advance(r);
    /* stale log: term 3 candidate whose last entry is older than ours is refused */
    struct vd_raft_msg a = {.type = VD_RAFT_MSG_APPEND,
                            .from = 1,
                            .to = 3,
                            .term = 2,
                            .index = 1,
                            .log_term = 1,
                            .commit = 1};
    struct vd_raft_entry ne = {.term = 2, .index = 2, .type = VD_RAFT_ENTRY_NOOP};
    a.entries = &ne;
    a.n_entries = 1;
    assert_int_equal(vd_raft_step(r, &a), 0);
    assert_true(vd_raft_ready(r, &u));
    vd_raft_advance(r);
    /* within the lease of leader 1, a vote request of a higher term is ignored (§4.2.3) */
    v = (struct vd_raft_msg){
        .type = VD_RAFT_MSG_VOTE, .from = 2, .to = 3, .term = 9, .index = 5, .log_term = 2};
    assert_int_equal(vd_raft_step(r, &v), 0);
    assert_int_equal(vd_raft_term(r), 2);
    assert_false(vd_raft_has_ready(r));
    /* after the lease, the stale-log candidate is refused but its term is adopted */
    vd_raft_tick(r, 5000);
    v.index = 1;
    v.log_term = 1;
    assert_int_equal(vd_raft_step(r, &v), 0);
    assert_int_equal(vd_raft_term(r), 9);
    assert_true(vd_raft_ready(r, &u));
    assert_int_equal(u.n_msgs >= 1, 1);
    assert_true(u.msgs[u.n_msgs - 1].reject);
    vd_raft_advance(r);
    vd_raft_free(r);
}

static void test_conflicting_follower_log_is_repaired(void **state)
{
    static struct harness h;
    h_init(&h, 3, 0);
    h_run(&h, 2100);
    int l = h_leader(&h);
    int f = l % 3 + 1, g = f % 3 + 1;
    if (g == l)
        g = g % 3 + 1;
    /* the leader writes 30 entries only it holds, then is isolated and crashes */
    for (int id = 1; id <= 3; id++)
        h.cut[l][id] = true;
    for (uint64_t v = 1; v <= 30; v++)
        h_propose(&h, l, 1000);
    h_deliver(&h);
    h_crash(&h, l);
    memset(h.cut, 0, sizeof(h.cut));
    h_run(&h, 2500);
    int l2 = h_leader(&h);
    assert_true(l2 == f || l2 == g);
    for (uint64_t v = 1; v <= 5; v++)
        h_propose(&h, l2, v);
    h_run(&h, 100);
    /* the old leader returns with 30 conflicting entries; fast backoff replaces them */
    h_start(&h, l);
    h_run(&h, 500);
    for (int id = 1; id <= 3; id++) {
        assert_int_equal(h.nodes[id].sum, 15);
        assert_int_equal(vd_raft_last_index(h.nodes[id].r), vd_raft_last_index(h.nodes[l2].r));
    }
    h_release(&h);
}

static void test_snapshot_catch_up_in_chunks(void **state)
{
    static struct harness h;
    h_init(&h, 3, 0);
    h_run(&h, 2100);
    int l = h_leader(&h);
    int f = l % 3 + 1;
    h_crash(&h, f);
    for (uint64_t v = 1; v <= 50; v++)
        h_propose(&h, l, v);
    h_run(&h, 100);
    /* the leader compacts its log: the follower can only catch up by snapshot */
    struct hnode *ln = &h.nodes[l];
    assert_int_equal(ln->applied, vd_raft_last_index(ln->r));
    uint8_t snap[16];
    memcpy(snap, &ln->sum, 8);
    memcpy(snap + 8, "vectord!", 8);
    assert_int_equal(vd_raft_snapshot(ln->r, ln->applied, snap, sizeof(snap)), 0);
    assert_int_equal(vd_raft_first_index(ln->r), ln->applied + 1);
    assert_int_equal(vd_raft_snapshot(ln->r, ln->applied, snap, sizeof(snap)), VD_EINVAL);
    h_start(&h, f);
    h_run(&h, 500);
    assert_int_equal(h.nodes[f].sum, 1275);
    assert_int_equal(h.nodes[f].snap_index, ln->applied);
    assert_memory_equal(h.nodes[f].snap_data, snap, sizeof(snap));
    /* and it restarts from the installed snapshot */
    h_propose(&h, l, 25);
    h_run(&h, 100);
    h_crash(&h, f);
    h_start(&h, f);
    h_run(&h, 300);
    assert_int_equal(h.nodes[f].sum, 1300);
    h_release(&h);
}

static void test_membership_changes(void **state)
{
    static struct harness h;
    h_init(&h, 3, 1); /* node 4 exists but is not a member */
    h_run(&h, 2100);
    int l = h_leader(&h);
    struct vd_raft *lr = h.nodes[l].r;
    for (uint64_t v = 1; v <= 20; v++)
        h_propose(&h, l, v);
    h_run(&h, 100);
    /* a fifth id that does not answer: it can be added as learner but not promoted */
    assert_int_equal(vd_raft_change(lr, VD_RAFT_ADD_LEARNER, 5, NULL), 0);
    assert_int_equal(vd_raft_change(lr, VD_RAFT_ADD_LEARNER, 4, NULL),
                     VD_EBUSY); /* one at a time */
    h_process(&h, l);
    h_run(&h, 100);
    assert_int_equal(vd_raft_change(lr, VD_RAFT_PROMOTE, 5, NULL), VD_EBUSY); /* not caught up */
    assert_int_equal(vd_raft_change(lr, VD_RAFT_REMOVE, 5, NULL), 0);
    h_process(&h, l);
    h_run(&h, 100);
    assert_int_equal(vd_raft_change(lr, VD_RAFT_ADD_LEARNER, 4, NULL), 0);
    h_process(&h, l);
    h_run(&h, 300);
    assert_int_equal(vd_raft_conf_role(vd_raft_conf(lr), 4), VD_RAFT_LEARNER);
    assert_int_equal(h.nodes[4].sum, 210); /* a learner receives the log */
    assert_int_equal(vd_raft_change(lr, VD_RAFT_PROMOTE, 4, NULL), 0);
    h_process(&h, l);
    h_run(&h, 200);
    for (int id = 1; id <= 4; id++)
        assert_int_equal(vd_raft_conf_role(vd_raft_conf(h.nodes[id].r), 4), VD_RAFT_VOTER);
    /* remove a follower; the cluster keeps committing without it */
    int gone = l % 3 + 1;
    assert_int_equal(vd_raft_change(lr, VD_RAFT_REMOVE, (uint64_t)gone, NULL), 0);
    h_process(&h, l);
    h_run(&h, 200);
    h_propose(&h, l, 1);
    h_run(&h, 100);
    for (int id = 1; id <= 4; id++)
        if (id != gone)
            assert_int_equal(h.nodes[id].sum, 211);
    /* the removed server times out but cannot disrupt the cluster (pre-vote + lease) */
    uint64_t term = vd_raft_term(lr);
    h_run(&h, 5000);
    assert_int_equal(h_leader(&h), l);
    assert_int_equal(vd_raft_term(lr), term);
    /* the leader removes itself: it steps down once the change commits */
    assert_int_equal(vd_raft_change(lr, VD_RAFT_REMOVE, (uint64_t)l, NULL), 0);
    h_process(&h, l);
    h_run(&h, 3000);
    assert_int_not_equal(vd_raft_role(lr), VD_RAFT_LEADER);
    int l2 = h_leader(&h);
    assert_true(l2 >= 1 && l2 != l && l2 != gone);
    h_release(&h);
}

/* §4.2.3: a server removed while cut off never learns of its removal, times out and campaigns
 * with ever higher terms. Even without pre-vote the members ignore it while they hear a leader. */
static void test_removed_server_cannot_disrupt(void **state)
{
    static struct harness h;
    h_init(&h, 4, 0);
    h.cfg.pre_vote = false; /* only the lease protects the cluster in this test */
    for (int id = 1; id <= 4; id++) {
        vd_raft_free(h.nodes[id].r);
        h_start(&h, id);
    }
    h_run(&h, 2100);
    int l = h_leader(&h);
    assert_true(l >= 1);
    int gone = l % 4 + 1;
    h_propose(&h, l, 1);
    h_run(&h, 100);
    for (int id = 1; id <= 4; id++)
        h.cut[gone][id] = h.cut[id][gone] = true;
    assert_int_equal(vd_raft_change(h.nodes[l].r, VD_RAFT_REMOVE, (uint64_t)gone, NULL), 0);
    h_process(&h, l);
    h_run(&h, 200);
    assert_int_equal(vd_raft_conf_role(vd_raft_conf(h.nodes[gone].r), (uint64_t)gone),
                     VD_RAFT_VOTER);
    uint64_t term = vd_raft_term(h.nodes[l].r);
    h_run(&h, 3000); /* the removed server campaigns on its own */
    assert_true(vd_raft_term(h.nodes[gone].r) > term);
    memset(h.cut, 0, sizeof(h.cut));
    h_run(&h, 5000);
    assert_int_equal(h_leader(&h), l);
    assert_int_equal(vd_raft_term(h.nodes[l].r), term);
    h_propose(&h, l, 2);
    h_run(&h, 100);
    for (int id = 1; id <= 4; id++)
        if (id != gone)
            assert_int_equal(h.nodes[id].sum, 3);
    h_release(&h);
}

/* ---- Figure 8 of the Raft paper (dissertation §3.6.2), played out step by step ----------- */

static uint64_t f8_index, f8_no_entries_from, f8_no_index_to, f8_no_index;

/* Loses every APPEND carrying entries from one node, and keeps entries from f8_no_index on
 * away from another (the message still arrives, shortened). */
static bool f8_drop(struct vd_raft_msg *m)
{
    if (m->type != VD_RAFT_MSG_APPEND || m->n_entries == 0)
        return false;
    if (m->from == f8_no_entries_from)
        return true;
    if (m->to == f8_no_index_to) {
        while (m->n_entries && m->entries[m->n_entries - 1].index >= f8_no_index)
            m->n_entries--;
    }
    return false;
}

/* Hides from one node that anything reached f8_no_index - 1: as if the leader crashed right
 * after counting its acknowledgement. */
static bool f8_drop_commit(struct vd_raft_msg *m)
{
    if (m->to == f8_no_index_to && m->commit + 1 >= f8_no_index)
        m->commit = f8_no_index - 2;
    return f8_drop(m);
}

static void link_only(struct harness *h, int a, int b, int c)
{
    for (int x = 1; x <= h->n; x++)
        for (int y = 1; y <= h->n; y++)
            h->cut[x][y] = true;
    h->cut[a][b] = h->cut[b][a] = false;
    h->cut[a][c] = h->cut[c][a] = false;
}

static void run_until_leader(struct harness *h, int want)
{
    for (int i = 0; i < 1000 && h_leader(h) != want; i++)
        h_run(h, 10);
    assert_int_equal(h_leader(h), want);
}

/* Returns true if two nodes applied different entries at index f8_index. */
static bool figure8(enum vd_raft_bug bug)
{
    static struct harness h;
    h_init(&h, 5, 0);
    h.cfg.max_append_entries = 1;
    h.cfg.bug = bug;
    for (int id = 1; id <= 5; id++) {
        vd_raft_free(h.nodes[id].r);
        h_start(&h, id);
    }
    h_run(&h, 2100);
    int s1 = h_leader(&h);
    assert_true(s1 >= 1);
    int o[4], k = 0;
    for (int id = 1; id <= 5; id++)
        if (id != s1)
            o[k++] = id;
    int s2 = o[0], s3 = o[1], s4 = o[2], s5 = o[3];
    h_propose(&h, s1, 1);
    h_run(&h, 100);

    /* (a) s1 replicates X only to s2 */
    link_only(&h, s1, s2, s2);
    h_propose(&h, s1, 1000);
    h_run(&h, 50);
    f8_index = vd_raft_last_index(h.nodes[s1].r);
    assert_int_equal(vd_raft_last_index(h.nodes[s2].r), f8_index);
    /* (b) s1 crashes; s5 wins term T2 with s3 and s4 but its no-op at f8_index stays its own */
    h_crash(&h, s1);
    link_only(&h, s5, s3, s4);
    f8_no_entries_from = (uint64_t)s5;
    h.drop = f8_drop;
    run_until_leader(&h, s5);
    assert_int_equal(vd_raft_last_index(h.nodes[s5].r), f8_index);
    uint64_t t2 = vd_raft_term(h.nodes[s5].r);
    /* (c) s5 crashes; s1 returns and wins with s2 and s3, and gets X to s3 but not its no-op */
    h_crash(&h, s5);
    h_start(&h, s1);
    link_only(&h, s1, s2, s3);
    f8_no_entries_from = 0;
    f8_no_index_to = (uint64_t)s3;
    f8_no_index = f8_index + 1;
    h.drop = f8_drop_commit;
    run_until_leader(&h, s1);
    h_run(&h, 300);
    assert_true(vd_raft_term(h.nodes[s1].r) > t2);
    assert_int_equal(vd_raft_term_at(h.nodes[s3].r, f8_index),
                     vd_raft_term_at(h.nodes[s1].r, f8_index));
    /* X is now on a majority (s1, s2, s3), but only the planted bug commits it by counting */
    bool committed_x = vd_raft_commit(h.nodes[s1].r) >= f8_index;
    assert_int_equal(committed_x, bug == VD_RAFT_BUG_COMMIT_OLD_TERM);
    /* (d) s1 crashes before its own entry spreads; s5 returns and wins with s3 and s4 (their last
     * terms are older than T2) and overwrites index f8_index everywhere it reaches */
    h_crash(&h, s1);
    h_start(&h, s5);
    link_only(&h, s5, s3, s4);
    h.drop = NULL;
    run_until_leader(&h, s5);
    h_propose(&h, s5, 7);
    h_run(&h, 300);
    assert_true(vd_raft_commit(h.nodes[s5].r) > f8_index);
    bool diverged = h.nodes[s1].applied >= f8_index && h.nodes[s3].applied >= f8_index &&
                    (h.nodes[s1].sum >= 1000) != (h.nodes[s3].sum >= 1000);
    h_release(&h);
    return diverged;
}

static void test_figure8_old_term_entries(void **state)
{
    assert_false(figure8(VD_RAFT_BUG_NONE));
    /* the same schedule with counting replicas of an old-term entry loses a committed entry */
    assert_true(figure8(VD_RAFT_BUG_COMMIT_OLD_TERM));
}

/* Answers no correct follower could send are ignored, not trusted into out-of-range state. */
static void test_absurd_answers_are_ignored(void **state)
{
    struct vd_raft *r = leader_with_old_entry(VD_RAFT_BUG_COMMIT_OLD_TERM);
    struct vd_raft_msg m = {
        .type = VD_RAFT_MSG_APPEND_RESP, .from = 2, .to = 1, .term = 3, .index = 1000};
    assert_int_equal(vd_raft_step(r, &m), 0);
    m.reject = true;
    m.hint = 5000;
    assert_int_equal(vd_raft_step(r, &m), 0);
    assert_int_equal(vd_raft_match(r, 2), 0);
    assert_int_equal(vd_raft_commit(r), 0);
    m = (struct vd_raft_msg){.type = VD_RAFT_MSG_READ_INDEX_RESP, .from = 3, .to = 1, .term = 3};
    assert_int_equal(vd_raft_step(r, &m), 0);
    struct vd_raft_update u;
    vd_raft_tick(r, 2300); /* heartbeats go out; nothing reads past the log */
    if (vd_raft_ready(r, &u)) {
        assert_int_equal(u.n_reads, 0);
        for (size_t i = 0; i < u.n_msgs; i++)
            assert_true(u.msgs[i].index <= vd_raft_last_index(r));
        vd_raft_advance(r);
    }
    vd_raft_free(r);
}

static void test_change_needs_commit_in_term(void **state)
{
    struct vd_raft *r = leader_with_old_entry(VD_RAFT_BUG_NONE);
    /* nothing of term 3 committed yet */
    assert_int_equal(vd_raft_change(r, VD_RAFT_ADD_LEARNER, 9, NULL), VD_EBUSY);
    /* a read waits for that commit: before it the commit index may lag the true one */
    assert_int_equal(vd_raft_read_index(r, 77), 0);
    struct vd_raft_update u;
    assert_false(vd_raft_has_ready(r));
    struct vd_raft_msg m = {
        .type = VD_RAFT_MSG_APPEND_RESP, .from = 2, .to = 1, .term = 3, .index = 3};
    assert_int_equal(vd_raft_step(r, &m), 0);
    assert_int_equal(vd_raft_commit(r), 3);
    assert_true(vd_raft_ready(r, &u));
    assert_int_equal(u.n_reads, 0);
    uint64_t seq = 0;
    for (size_t i = 0; i < u.n_msgs; i++)
        if (u.msgs[i].type == VD_RAFT_MSG_HEARTBEAT && u.msgs[i].to == 2)
            seq = u.msgs[i].ctx;
    assert_true(seq > 0); /* the confirmation round started with the commit */
    vd_raft_advance(r);
    struct vd_raft_msg hb = {
        .type = VD_RAFT_MSG_HEARTBEAT_RESP, .from = 2, .to = 1, .term = 3, .ctx = seq};
    assert_int_equal(vd_raft_step(r, &hb), 0);
    assert_true(vd_raft_ready(r, &u));
    assert_int_equal(u.n_reads, 1);
    assert_int_equal(u.reads[0].ctx, 77);
    assert_int_equal(u.reads[0].index, 3);
    vd_raft_advance(r);
    assert_int_equal(vd_raft_change(r, VD_RAFT_ADD_LEARNER, 9, NULL), 0);
    assert_int_equal(vd_raft_change(r, VD_RAFT_REMOVE, 9, NULL), VD_EBUSY);
    vd_raft_free(r);
}

static void test_leadership_transfer(void **state)
{
    static struct harness h;
    h_init(&h, 3, 0);
    h_run(&h, 2100);
    int l = h_leader(&h);
    int t = l % 3 + 1;
    h_propose(&h, l, 3);
    assert_int_equal(vd_raft_transfer(h.nodes[l].r, (uint64_t)l), VD_EINVAL);
    assert_int_equal(vd_raft_transfer(h.nodes[l].r, 77), VD_ENOTFOUND);
    assert_int_equal(vd_raft_transfer(h.nodes[l].r, (uint64_t)t), 0);
    uint64_t v = 1;
    assert_int_equal(vd_raft_propose(h.nodes[l].r, &v, 8, NULL, NULL), VD_EBUSY);
    h_process(&h, l);
    h_run(&h, 50); /* far less than an election timeout */
    assert_int_equal(h_leader(&h), t);
    h_propose(&h, t, 4);
    h_run(&h, 100);
    for (int id = 1; id <= 3; id++)
        assert_int_equal(h.nodes[id].sum, 7);
    h_release(&h);
}

static void test_read_index(void **state)
{
    static struct harness h;
    h_init(&h, 3, 0);
    h_run(&h, 2100);
    int l = h_leader(&h);
    int f = l % 3 + 1;
    h_propose(&h, l, 3);
    h_run(&h, 100);
    uint64_t commit = vd_raft_commit(h.nodes[l].r);
    assert_int_equal(vd_raft_read_index(h.nodes[l].r, 42), 0);
    h_process(&h, l);
    assert_int_equal(h.nodes[l].n_reads, 0); /* waits for a heartbeat round */
    h_deliver(&h);
    assert_int_equal(h.nodes[l].n_reads, 1);
    assert_int_equal(h.nodes[l].reads[0].ctx, 42);
    assert_int_equal(h.nodes[l].reads[0].index, commit);
    /* from a follower, through the leader */
    assert_int_equal(vd_raft_read_index(h.nodes[f].r, 43), 0);
    h_process(&h, f);
    h_deliver(&h);
    assert_int_equal(h.nodes[f].n_reads, 1);
    assert_int_equal(h.nodes[f].reads[0].ctx, 43);
    assert_int_equal(h.nodes[f].reads[0].index, commit);
    /* an isolated leader cannot confirm a read */
    for (int id = 1; id <= 3; id++)
        h.cut[l][id] = h.cut[id][l] = true;
    assert_int_equal(vd_raft_read_index(h.nodes[l].r, 44), 0);
    h_process(&h, l);
    h_run(&h, 500);
    assert_int_equal(h.nodes[l].n_reads, 1);
    h_release(&h);
}

static void test_rejects_malformed(void **state)
{
    struct vd_raft_config cfg;
    vd_raft_config_default(&cfg);
    struct vd_raft *r;
    assert_int_equal(vd_raft_new(&cfg, NULL, 0, &r), VD_EINVAL); /* id 0 */
    cfg.id = 1;
    assert_int_equal(vd_raft_new(&cfg, NULL, 0, &r), 0);
    struct vd_raft_msg m = {.type = 99, .from = 2, .to = 1, .term = 1};
    assert_int_equal(vd_raft_step(r, &m), VD_EINVAL);
    m.type = VD_RAFT_MSG_APPEND;
    m.n_entries = 1; /* entries missing */
    assert_int_equal(vd_raft_step(r, &m), VD_EINVAL);
    struct vd_raft_entry e = {.term = 5, .index = 1, .type = VD_RAFT_ENTRY_NORMAL};
    m.entries = &e; /* entry term above the message term */
    assert_int_equal(vd_raft_step(r, &m), VD_EINVAL);
    m.to = 3;
    e.term = 1;
    assert_int_equal(vd_raft_step(r, &m), VD_EINVAL); /* not for us */
    /* a fresh node (no configuration) never campaigns */
    vd_raft_tick(r, 100000);
    assert_int_equal(vd_raft_role(r), VD_RAFT_FOLLOWER);
    assert_int_equal(vd_raft_term(r), 0);
    vd_raft_free(r);

    struct vd_raft_conf c;
    uint8_t bad[13] = {0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7, 3};
    assert_int_equal(vd_raft_conf_decode(bad, sizeof(bad), &c), VD_ECORRUPT); /* role 3 */
    bad[12] = VD_RAFT_VOTER;
    assert_int_equal(vd_raft_conf_decode(bad, sizeof(bad), &c), 0);
    assert_int_equal(c.nodes[0].id, 7);
    assert_int_equal(vd_raft_conf_decode(bad, 12, &c), VD_ECORRUPT);
    bad[3] = 200;
    assert_int_equal(vd_raft_conf_decode(bad, sizeof(bad), &c), VD_ECORRUPT);
}

static void test_wire_roundtrip_and_garbage(void **state)
{
    struct vd_raft_entry ents[3] = {
        {.term = 4,
         .index = 10,
         .type = VD_RAFT_ENTRY_NORMAL,
         .data = (uint8_t *)"hello",
         .len = 5},
        {.term = 4, .index = 11, .type = VD_RAFT_ENTRY_NOOP},
        {.term = 5,
         .index = 12,
         .type = VD_RAFT_ENTRY_CONF,
         .data = (uint8_t *)"\0\0\0\0",
         .len = 4},
    };
    struct vd_raft_msg m = {.type = VD_RAFT_MSG_SNAP,
                            .reject = true,
                            .done = true,
                            .from = 1,
                            .to = UINT64_MAX,
                            .term = 9,
                            .index = 9,
                            .log_term = 8,
                            .commit = 7,
                            .hint = 6,
                            .ctx = 5,
                            .offset = 4,
                            .entries = ents,
                            .n_entries = 3,
                            .data = (const uint8_t *)"chunk",
                            .len = 5};
    m.conf.n = 2;
    m.conf.nodes[0].id = 1;
    m.conf.nodes[0].role = VD_RAFT_VOTER;
    m.conf.nodes[1].id = 2;
    m.conf.nodes[1].role = VD_RAFT_LEARNER;
    uint8_t buf[512];
    size_t n = vd_raft_msg_size(&m);
    assert_true(n <= sizeof(buf));
    assert_int_equal(vd_raft_msg_encode(&m, buf), n);
    struct vd_raft_msg d;
    struct vd_raft_entry de[4];
    assert_int_equal(vd_raft_msg_decode(buf, n, &d, de, 4), 0);
    assert_int_equal(d.type, m.type);
    assert_true(d.reject && d.done && !d.transfer);
    assert_true(d.to == UINT64_MAX);
    assert_int_equal(d.term, 9);
    assert_int_equal(d.hint, 6);
    assert_int_equal(d.offset, 4);
    assert_int_equal(d.conf.n, 2);
    assert_int_equal(d.conf.nodes[1].role, VD_RAFT_LEARNER);
    assert_int_equal(d.n_entries, 3);
    assert_int_equal(d.entries[0].len, 5);
    assert_memory_equal(d.entries[0].data, "hello", 5);
    assert_null(d.entries[1].data);
    assert_int_equal(d.entries[2].index, 12);
    assert_int_equal(d.len, 5);
    assert_memory_equal(d.data, "chunk", 5);
    assert_int_equal(vd_raft_msg_decode(buf, n, &d, de, 2), VD_ETOOBIG);
    /* every truncation is refused */
    for (size_t k = 0; k < n; k++)
        assert_int_equal(vd_raft_msg_decode(buf, k, &d, de, 4), VD_ECORRUPT);
    /* random corruption never reads out of bounds (the sanitizer build watches) and whatever
     * decodes re-encodes to the same length */
    uint64_t x = 88172645463325252ULL;
    int n_small = getenv("VD_TEST_SCALE") ? 2000 : 20000;
    for (int it = 0; it < n_small; it++) {
        uint8_t c[512];
        memcpy(c, buf, n);
        for (int f = 0; f < 3; f++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c[x % n] ^= (uint8_t)(x >> 32);
        }
        size_t len = n - (x >> 40) % 4;
        if (vd_raft_msg_decode(c, len, &d, de, 4) == 0)
            assert_int_equal(vd_raft_msg_size(&d), len);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_core_is_pure),
        cmocka_unit_test(test_single_node),
        cmocka_unit_test(test_three_nodes_elect_and_replicate),
        cmocka_unit_test(test_leader_crash_new_leader_keeps_committed),
        cmocka_unit_test(test_prevote_isolated_node_does_not_inflate_term),
        cmocka_unit_test(test_check_quorum_leader_steps_down),
        cmocka_unit_test(test_commit_only_through_current_term),
        cmocka_unit_test(test_figure8_old_term_entries),
        cmocka_unit_test(test_vote_rules),
        cmocka_unit_test(test_conflicting_follower_log_is_repaired),
        cmocka_unit_test(test_snapshot_catch_up_in_chunks),
        cmocka_unit_test(test_membership_changes),
        cmocka_unit_test(test_removed_server_cannot_disrupt),
        cmocka_unit_test(test_absurd_answers_are_ignored),
        cmocka_unit_test(test_change_needs_commit_in_term),
        cmocka_unit_test(test_leadership_transfer),
        cmocka_unit_test(test_read_index),
        cmocka_unit_test(test_rejects_malformed),
        cmocka_unit_test(test_wire_roundtrip_and_garbage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
