/*
 * The Raft core over its real storage: three cores whose updates go through vd_raftlog_save in
 * LMDB environments under a temporary directory. They elect a leader, commit commands, compact
 * through snapshots, then every process "restarts" (all in-memory state dropped, cores rebuilt
 * from vd_raftlog_load) and the cluster carries on with the same log. Exit status 0 on success.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vectord/core.h"
#include "vectord/raft.h"
#include "vectord/raftlog.h"

#define N 3

struct node {
    struct vd_raft *r;
    struct vd_raftlog *log;
    uint64_t sum, applied; /* state machine: sum of 8-byte commands */
    char dir[256];
};

static struct node nodes[N + 1];
static uint64_t now;

struct qmsg {
    uint8_t *buf;
    size_t len;
};
static struct qmsg q[65536];
static size_t nq;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "raft_lmdb: %s:%d: ", __FILE__, __LINE__);                             \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static void process(int id)
{
    struct node *n = &nodes[id];
    struct vd_raft_update u;
    struct vd_err err;
    while (vd_raft_ready(n->r, &u)) {
        int rc = vd_raftlog_save(n->log, &u, &err);
        CHECK(rc == 0, "node %d save: %s", id, err.msg);
        for (size_t i = 0; i < u.n_msgs; i++) {
            CHECK(nq < 65536, "queue full");
            size_t len = vd_raft_msg_size(&u.msgs[i]);
            q[nq].buf = malloc(len);
            q[nq].len = vd_raft_msg_encode(&u.msgs[i], q[nq].buf);
            nq++;
        }
        if (u.snapshot) {
            memcpy(&n->sum, u.snapshot->data, 8);
            n->applied = u.snapshot->index;
        }
        for (size_t i = 0; i < u.n_committed; i++) {
            const struct vd_raft_entry *e = &u.committed[i];
            CHECK(e->index == n->applied + 1, "node %d applies %" PRIu64 " after %" PRIu64, id,
                  e->index, n->applied);
            n->applied = e->index;
            if (e->type == VD_RAFT_ENTRY_NORMAL && e->len == 8) {
                uint64_t v;
                memcpy(&v, e->data, 8);
                n->sum += v;
            }
        }
        vd_raft_advance(n->r);
        /* compact every 16 applied entries, storing the snapshot durably first */
        if (n->applied >= vd_raft_snapshot_index(n->r) + 16) {
            if (vd_raft_snapshot(n->r, n->applied, &n->sum, 8) == 0) {
                struct vd_raft_snapshot s;
                vd_raft_current_snapshot(n->r, &s);
                rc = vd_raftlog_save_snapshot(n->log, &s, &err);
                CHECK(rc == 0, "node %d snapshot: %s", id, err.msg);
            }
        }
    }
}

static void deliver(void)
{
    static struct vd_raft_entry ents[1024];
    for (size_t head = 0; head < nq; head++) {
        struct vd_raft_msg m;
        CHECK(vd_raft_msg_decode(q[head].buf, q[head].len, &m, ents, 1024) == 0, "decode");
        int to = (int)m.to;
        if (to >= 1 && to <= N && nodes[to].r) {
            vd_raft_tick(nodes[to].r, now);
            vd_raft_step(nodes[to].r, &m);
            process(to);
        }
        free(q[head].buf);
    }
    nq = 0;
}

static void run(uint64_t ms)
{
    for (uint64_t end = now + ms; now < end;) {
        now += 10;
        for (int id = 1; id <= N; id++) {
            vd_raft_tick(nodes[id].r, now);
            process(id);
        }
        deliver();
    }
}

static int leader(void)
{
    for (int id = 1; id <= N; id++)
        if (vd_raft_role(nodes[id].r) == VD_RAFT_LEADER)
            return id;
    return 0;
}

static void start(int id)
{
    struct node *n = &nodes[id];
    struct vd_raftlog_opts o = {.dir = n->dir, .no_sync = true};
    struct vd_err err;
    CHECK(vd_raftlog_open(&o, &n->log, &err) == 0, "open: %s", err.msg);
    struct vd_raft_state st;
    CHECK(vd_raftlog_load(n->log, &st, &err) == 0, "load: %s", err.msg);
    if (st.n_entries == 0 && !st.snapshot) {
        /* first start: bootstrap the three-voter configuration, durably */
        struct vd_raft_conf c = {.n = N};
        for (int i = 0; i < N; i++) {
            c.nodes[i].id = (uint64_t)i + 1;
            c.nodes[i].role = VD_RAFT_VOTER;
        }
        uint8_t buf[64];
        struct vd_raft_entry boot;
        vd_raft_bootstrap_entry(&c, buf, &boot);
        struct vd_raft_update u = {.first_index = 1, .entries = &boot, .n_entries = 1};
        CHECK(vd_raftlog_save(n->log, &u, &err) == 0, "bootstrap: %s", err.msg);
        CHECK(vd_raftlog_load(n->log, &st, &err) == 0, "load: %s", err.msg);
    }
    struct vd_raft_config cfg;
    vd_raft_config_default(&cfg);
    cfg.id = (uint64_t)id;
    cfg.seed = 42 + now;
    CHECK(vd_raft_new(&cfg, &st, now, &n->r) == 0, "vd_raft_new");
    n->sum = n->applied = 0;
    if (st.snapshot) {
        memcpy(&n->sum, st.snapshot->data, 8);
        n->applied = st.snapshot->index;
    }
}

static void stop(int id)
{
    vd_raft_free(nodes[id].r);
    nodes[id].r = NULL;
    vd_raftlog_close(nodes[id].log);
    nodes[id].log = NULL;
}

int main(void)
{
    char root[] = "/tmp/vd_raft_lmdb_XXXXXX";
    CHECK(mkdtemp(root), "mkdtemp");
    for (int id = 1; id <= N; id++) {
        snprintf(nodes[id].dir, sizeof(nodes[id].dir), "%s/n%d", root, id);
        start(id);
    }
    run(2500);
    int l = leader();
    CHECK(l, "no leader after 2.5 s");
    uint64_t term = vd_raft_term(nodes[l].r);
    for (uint64_t v = 1; v <= 100; v++) {
        CHECK(vd_raft_propose(nodes[l].r, &v, 8, NULL, NULL) == 0, "propose");
        process(l);
        if (v % 10 == 0)
            run(20);
    }
    run(300);
    for (int id = 1; id <= N; id++)
        CHECK(nodes[id].sum == 5050, "node %d sum %" PRIu64 " before restart", id, nodes[id].sum);
    uint64_t last = vd_raft_last_index(nodes[l].r);

    /* every process restarts from its LMDB environment */
    for (int id = 1; id <= N; id++)
        stop(id);
    for (int id = 1; id <= N; id++) {
        start(id);
        CHECK(vd_raft_last_index(nodes[id].r) == last,
              "node %d reloaded last index %" PRIu64 ", expected %" PRIu64, id,
              vd_raft_last_index(nodes[id].r), last);
        CHECK(vd_raft_term(nodes[id].r) >= term, "node %d lost its term", id);
        CHECK(vd_raft_snapshot_index(nodes[id].r) > 0, "node %d has no snapshot", id);
    }
    run(2500);
    l = leader();
    CHECK(l, "no leader after the restart");
    uint64_t v = 1000;
    CHECK(vd_raft_propose(nodes[l].r, &v, 8, NULL, NULL) == 0, "propose after restart");
    process(l);
    run(300);
    for (int id = 1; id <= N; id++)
        CHECK(nodes[id].sum == 6050, "node %d sum %" PRIu64 " after restart", id, nodes[id].sum);
    for (int id = 1; id <= N; id++)
        stop(id);

    /* What a durable save costs on this machine: every vote and append acknowledgement waits
     * for one. */
    char sdir[300];
    snprintf(sdir, sizeof(sdir), "%s/synced", root);
    struct vd_raftlog_opts o = {.dir = sdir};
    struct vd_raftlog *log;
    struct vd_err err;
    CHECK(vd_raftlog_open(&o, &log, &err) == 0, "open: %s", err.msg);
    struct timespec t0, t1;
    uint8_t payload[256] = {0};
    int n_saves = getenv("VD_TEST_SCALE") ? 20 : 100;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 1; i <= n_saves; i++) {
        struct vd_raft_entry e = {.index = (uint64_t)i,
                                  .term = 1,
                                  .type = VD_RAFT_ENTRY_NORMAL,
                                  .data = payload,
                                  .len = sizeof(payload)};
        struct vd_raft_update u = {.hard_state = i == 1,
                                   .term = 1,
                                   .first_index = (uint64_t)i,
                                   .entries = &e,
                                   .n_entries = 1};
        CHECK(vd_raftlog_save(log, &u, &err) == 0, "save: %s", err.msg);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    vd_raftlog_close(log);
    double ms = ((double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
    printf("raft_lmdb: a synced save of one 256-byte entry takes %.2f ms (%d saves)\n",
           ms / n_saves, n_saves);

    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    CHECK(system(cmd) == 0, "cleanup");
    printf("raft_lmdb: 3 nodes committed 101 commands through LMDB, restarted from disk and "
           "agree (last index %" PRIu64 ")\n",
           last);
    return 0;
}
