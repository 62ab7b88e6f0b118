/*
 * The cluster's series in GET /metrics, three nodes in one process (real databases, real TCP):
 * Raft state agreed on by every node, members and peers up with measured round trips, writes and
 * reads counted by outcome (ok, unavailable, timeout, not found), read repairs counted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <pthread.h>
#include <cmocka.h>

#define N 3

#include "unit/cluster_fixture.h"
#include "node_int.h"
#include "unit/cluster_points.h"

/* The value of the series `series` (name with its labels, exactly as rendered) in node i's
 * metrics; -1 when absent. Fails the test on a line that is not "<series> <number>". */
static double metric(int i, const char *series)
{
    struct vd_buf b = {0};
    vd_cluster_metrics(nodes[i].c, &b);
    assert_true(vd_buf_ok(&b));
    double v = -1;
    size_t sl = strlen(series);
    for (char *line = b.data, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        assert_non_null(next); /* every line ends with a newline */
        *next++ = '\0';
        if (line[0] == '#')
            continue;
        char *sp = strrchr(line, ' ');
        assert_non_null(sp);
        char *end;
        double x = strtod(sp + 1, &end);
        if (*end)
            fail_msg("not a number in '%s'", line);
        if ((size_t)(sp - line) == sl && !strncmp(line, series, sl))
            v = x;
    }
    vd_buf_release(&b);
    return v;
}

static double metricf(int i, const char *fmt, unsigned long long id)
{
    char s[160];
    snprintf(s, sizeof s, fmt, id);
    return metric(i, s);
}

struct read_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    int status;
};

static void on_read(int status, const struct vd_err *err, const struct vd_cluster_rec *recs,
                    size_t n, void *ctx)
{
    (void)err, (void)recs, (void)n;
    struct read_wait *r = ctx;
    pthread_mutex_lock(&r->mu);
    r->status = status;
    r->done = true;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static int read_at(int i, uint64_t id, unsigned r_need, uint64_t inc)
{
    static struct read_wait rw = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0};
    rw.done = false;
    struct vd_pid pid = {.type = VD_PID_NUM, .u.num = id};
    struct vd_err e;
    assert_int_equal(vd_cluster_read(nodes[i].c, "pts", inc, &pid, 1, r_need, 2000, on_read, &rw,
                                     &e),
                     0);
    pthread_mutex_lock(&rw.mu);
    while (!rw.done)
        pthread_cond_wait(&rw.cv, &rw.mu);
    pthread_mutex_unlock(&rw.mu);
    return rw.status;
}

static bool leader_everywhere(uint64_t leader)
{
    for (int i = 0; i < N; i++)
        if (metricf(i, "vectord_raft_leader_info{node=\"%llu\"}", leader) != 1)
            return false;
    return true;
}

static bool peers_measured(int i)
{
    for (int k = 0; k < N; k++) {
        if (k == i)
            continue;
        unsigned long long id = vd_cluster_node_id(nodes[k].c);
        if (metricf(i, "vectord_peer_up{peer=\"%llu\"}", id) != 1 ||
            !(metricf(i, "vectord_peer_rtt_seconds{peer=\"%llu\"}", id) > 0) ||
            metricf(i, "vectord_peer_rtt_max_seconds{peer=\"%llu\"}", id) <
                metricf(i, "vectord_peer_rtt_seconds{peer=\"%llu\"}", id))
            return false;
    }
    return true;
}

static void test_raft_members_and_peers(void **state)
{
    (void)state;
    start_with_pts(3);
    int li = index_of_leader();
    assert_true(li >= 0);
    unsigned long long leader = vd_cluster_node_id(nodes[li].c);
    POLL(leader_everywhere(leader), 5000, "every node naming the one leader");
    int leaders = 0;
    for (int i = 0; i < N; i++) {
        assert_true(metric(i, "vectord_raft_term") >= 1);
        assert_true(metric(i, "vectord_raft_commit_index") >= 1);
        assert_true(metric(i, "vectord_raft_applied_index") >= 1);
        assert_true(metric(i, "vectord_raft_has_leader") == 1);
        assert_true(metric(i, "vectord_raft_leader_changes_total") >= 1);
        leaders += metric(i, "vectord_raft_role{role=\"leader\"}") == 1;
        assert_true(metric(i, "vectord_raft_role{role=\"candidate\"}") == 0);
        assert_true(metricf(i, "vectord_cluster_node_info{node=\"%llu\"}",
                            vd_cluster_node_id(nodes[i].c)) == 1);
        POLL(metric(i, "vectord_cluster_members{state=\"up\"}") == N, 5000, "every member up");
        assert_true(metric(i, "vectord_cluster_members{state=\"down\"}") == 0);
        assert_true(metric(i, "vectord_cluster_members_by_role{role=\"voter\"}") == N);
        assert_true(metric(i, "vectord_cluster_members_by_role{role=\"non_voter\"}") == 0);
        /* a node is no peer of its own */
        assert_true(metricf(i, "vectord_peer_up{peer=\"%llu\"}", vd_cluster_node_id(nodes[i].c)) ==
                    -1);
        POLL(peers_measured(i), 5000, "each peer up with a measured round trip");
        /* the hints' series are still there */
        assert_true(metric(i, "vectord_hints_replayed_total") == 0);
    }
    assert_int_equal(leaders, 1);

    /* a stopped member shows down on the others */
    unsigned long long id2 = vd_cluster_node_id(nodes[2].c);
    stop(2);
    POLL(metricf(0, "vectord_peer_up{peer=\"%llu\"}", id2) == 0, 10000, "node 2 down on node 0");
    POLL(metric(0, "vectord_cluster_members{state=\"down\"}") == 1, 5000, "one member down");
}

static void test_outcomes_and_repairs(void **state)
{
    (void)state;
    uint64_t inc = start_with_pts(3);
    uint64_t id0 = vd_cluster_node_id(nodes[0].c);
    assert_true(metric(0, "vectord_cluster_writes_total{outcome=\"ok\"}") == 0);

    static struct rec r[2];
    make_rec(&r[0], 1, id0, 1, false, inc);
    make_rec(&r[1], 2, id0, 2, false, inc);
    assert_int_equal(write_through(0, r, 2, 3, inc, NULL, 0), 0);
    assert_true(metric(0, "vectord_cluster_writes_total{outcome=\"ok\"}") == 1); /* one request */
    assert_true(metric(1, "vectord_cluster_writes_total{outcome=\"ok\"}") == 0);
    assert_int_equal(read_at(1, 1, 3, inc), 0);
    assert_true(metric(1, "vectord_cluster_reads_total{outcome=\"ok\"}") == 1);
    assert_true(metric(0, "vectord_cluster_read_repairs_total") == 0);

    /* an unknown incarnation */
    assert_int_equal(write_through(0, r, 1, 0, inc + 1, NULL, 0), VD_ENOTFOUND);
    assert_true(metric(0, "vectord_cluster_writes_total{outcome=\"not_found\"}") == 1);

    /* a newer version of point 1 on node 1 only: a read of all three through node 0 sends it
     * to the two stale copies */
    static struct rec newer;
    make_rec(&newer, 1, vd_cluster_node_id(nodes[1].c), 9, false, inc);
    struct vd_coll *coll;
    assert_int_equal(vd_db_coll_get(nodes[1].db, "pts", &coll), 0);
    const uint8_t *p = newer.b;
    struct vd_err e;
    assert_int_equal(vd_db_apply(coll, &p, &newer.len, 1, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    vd_db_coll_put(coll);
    assert_int_equal(read_at(0, 1, 3, inc), 0);
    POLL(metric(0, "vectord_cluster_read_repairs_total") == 2, 5000, "two copies repaired");
    assert_true(metric(0, "vectord_cluster_reads_total{outcome=\"ok\"}") == 1);

    /* node 2 silent (workers paused): a write that needs it fails at its deadline */
    vd_data_pause_workers(nodes[2].c->data, true);
    assert_int_equal(write_through(0, r, 1, 3, inc, NULL, 0), VD_EUNAVAIL);
    assert_true(metric(0, "vectord_cluster_writes_total{outcome=\"timeout\"}") == 1);
    vd_data_pause_workers(nodes[2].c->data, false);

    /* refused before the deadline (too few replicas could answer), and anything else */
    vd__cluster_request_end(nodes[0].c, VD__REQ_WRITE, VD_EUNAVAIL, false, "pts", "", NULL);
    vd__cluster_request_end(nodes[0].c, VD__REQ_SEARCH, VD_ECLOSED, false, "pts", "", NULL);
    assert_true(metric(0, "vectord_cluster_writes_total{outcome=\"unavailable\"}") == 1);
    assert_true(metric(0, "vectord_cluster_searches_total{outcome=\"error\"}") == 1);
    assert_true(metric(0, "vectord_cluster_writes_total{outcome=\"ok\"}") == 1);
    assert_true(metric(0, "vectord_cluster_writes_total{outcome=\"error\"}") == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_raft_members_and_peers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outcomes_and_repairs, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
