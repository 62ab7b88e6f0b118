/*
 * Hint replay, three nodes in one process (real databases, real TCP): the hints a coordinator
 * keeps for a replica that missed writes reach it once it answers again (a paused replica, a
 * stopped one that returns), and are forgotten, counted, when they pass the hint window (the
 * replica then needs repair) or their collection is deleted; a hint for a node that no longer
 * owns the point reaches the point's replica instead.
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

static struct vd_cluster_hint_stats stats_of(int i)
{
    struct vd_cluster_hint_stats st;
    vd_cluster_hint_stats(nodes[i].c, &st);
    return st;
}


/* Writes n records (ids first, first + 1, ...) through node i at W 2 while node 2 (id2) misses
 * them (stopped, or its workers paused); returns once node i keeps a hint of each for it. */
static void write_missed(int i, uint64_t id2, struct rec *recs, size_t n, uint64_t first,
                         uint64_t inc)
{
    uint64_t writer = vd_cluster_node_id(nodes[i].c);
    for (size_t k = 0; k < n; k++)
        make_rec(&recs[k], first + k, writer, (float)k, false, inc);
    char msg[256];
    if (write_through(i, recs, n, 2, inc, msg, sizeof msg))
        fail_msg("write at W 2 with node 2 away: %s", msg);
    POLL(hints_for(i, id2) == n, 5000, "a hint for each write node 2 missed");
}

static void test_paused_replica_gets_its_hints(void **state)
{
    (void)state;
    hint_window_ms = 0;
    uint64_t inc = start_with_pts(3);
    uint64_t id2 = vd_cluster_node_id(nodes[2].c);
    static struct rec recs[8];
    /* node 2 silent: the writes are acknowledged by the other two and node 2 gets hints; its
     * workers are held past the write's deadline, so the write itself never reaches it */
    vd_data_pause_workers(nodes[2].c->data, true);
    write_missed(0, id2, recs, 8, 400, inc);
    POLL(stats_of(0).pending == 8, 5000, "eight hints pending on node 0");
    assert_int_equal(held_at(2, recs, 8), 0);
    vd_data_pause_workers(nodes[2].c->data, false);
    POLL(held_at(2, recs, 8) == 8, 30000, "the hinted records on node 2");
    POLL(stats_of(0).pending == 0, 5000, "no hint pending on node 0");
    assert_int_equal(hints_for(0, id2), 0);
    assert_int_equal(stats_of(0).replayed, 8);
    assert_int_equal(stats_of(0).expired, 0);
    assert_false(needs_repair(0, id2));
}

static void test_stopped_node_gets_its_hints_when_back(void **state)
{
    (void)state;
    hint_window_ms = 0;
    uint64_t inc = start_with_pts(3);
    uint64_t id2 = vd_cluster_node_id(nodes[2].c);
    stop(2);
    static struct rec recs[6];
    write_missed(1, id2, recs, 6, 500, inc);
    /* a down target keeps its hints: nothing is sent while it is away */
    POLL(stats_of(1).pending == 6, 5000, "six hints pending on node 1");
    assert_int_equal(stats_of(1).replayed, 0);
    start(2, NULL);
    POLL(held_at(2, recs, 6) == 6, 30000, "the hinted records on node 2 once back");
    POLL(stats_of(1).pending == 0, 5000, "no hint pending on node 1");
    assert_int_equal(stats_of(1).replayed, 6);
}

static void test_expired_hints_dropped_and_counted(void **state)
{
    (void)state;
    hint_window_ms = 1500;
    uint64_t inc = start_with_pts(3);
    uint64_t id2 = vd_cluster_node_id(nodes[2].c);
    stop(2);
    static struct rec recs[3];
    write_missed(0, id2, recs, 3, 600, inc);
    assert_false(needs_repair(0, id2));
    /* past the window, with node 2 still away: dropped, counted, node 2 marked */
    POLL(stats_of(0).expired == 3, 30000, "three hints expired on node 0");
    assert_int_equal(hints_for(0, id2), 0);
    POLL(stats_of(0).pending == 0, 5000, "no hint pending on node 0");
    assert_int_equal(stats_of(0).replayed, 0);
    POLL(needs_repair(0, id2), 5000, "node 2 marked needs-repair in node 0's GET /cluster");
    assert_false(needs_repair(0, vd_cluster_node_id(nodes[1].c)));
}

static void test_deleted_collection_hints_vanish(void **state)
{
    (void)state;
    hint_window_ms = 0;
    uint64_t inc = start_with_pts(3);
    uint64_t id2 = vd_cluster_node_id(nodes[2].c);
    stop(2);
    static struct rec recs[4];
    write_missed(0, id2, recs, 4, 700, inc);
    struct vd_err e;
    assert_int_equal(vd_cluster_delete_collection(nodes[0].c, "pts", on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    POLL(hints_for(0, id2) == 0, 15000, "the deleted collection's hints gone");
    POLL(stats_of(0).pending == 0, 5000, "no hint pending on node 0");
    assert_int_equal(stats_of(0).replayed, 0);
    /* node 2 returns to nothing: it deletes the collection too, and no record reaches it */
    start(2, NULL);
    POLL(voters_up(0) == N, 15000, "node 2 back");
    assert_int_equal(sync_node(2), 0);
    POLL(!has_coll(2, "pts"), 5000, "the collection gone on node 2");
    assert_int_equal(stats_of(0).replayed, 0);
}

/* Hints that cannot go to their target as they are: for a node that owns the point no more
 * (rewritten to the point's replica, counted replayed), for a node that is not a member and
 * for a collection incarnation that does not exist (both dropped, counted). */
static void test_hints_rewritten_or_dropped(void **state)
{
    (void)state;
    hint_window_ms = 0;
    uint64_t inc = start_with_pts(1);
    uint64_t ids[N];
    for (int i = 0; i < N; i++)
        ids[i] = vd_cluster_node_id(nodes[i].c);
    /* a point at replication factor 1 and a member that is not its replica */
    static struct rec recs[3];
    make_rec(&recs[0], 900, ids[0], 1, false, inc);
    struct vd_rvec vecs[VD_RECORD_MAX_VECTORS];
    struct vd_record r;
    assert_int_equal(vd_record_decode(recs[0].b, recs[0].len, &r, vecs), 0);
    struct vd_meta_view *v = vd__cluster_view_acquire(nodes[0].c);
    int owner = -1, other = -1;
    for (int i = 0; i < N; i++) {
        if (vd_meta_is_replica(vd_meta_view_state(v), "pts", &r.id, ids[i]))
            owner = i;
        else
            other = i;
    }
    vd_meta_view_release(v);
    assert_true(owner >= 0 && other >= 0);
    make_rec(&recs[1], 901, ids[0], 2, false, inc);
    make_rec(&recs[2], 902, ids[0], 3, false, 77); /* no such incarnation */
    struct vd_err e;
    uint64_t stranger = 0x5eed5eed5eedULL;
    assert_int_equal(vd_db_hint_put(nodes[0].db, ids[other], recs[0].b, recs[0].len, &e), 0);
    assert_int_equal(vd_db_hint_put(nodes[0].db, stranger, recs[1].b, recs[1].len, &e), 0);
    assert_int_equal(vd_db_hint_put(nodes[0].db, ids[1], recs[2].b, recs[2].len, &e), 0);
    POLL(held_at(owner, recs, 1) == 1, 15000, "the record rewritten to its replica");
    POLL(hints_for(0, ids[other]) == 0 && hints_for(0, stranger) == 0 && hints_for(0, ids[1]) == 0,
         15000, "every hint gone");
    POLL(stats_of(0).dropped == 2 && stats_of(0).replayed == 1, 5000,
         "one hint replayed and two dropped");
    assert_int_equal(held_at(other, recs, 1), 0);
    assert_int_equal(stats_of(0).expired, 0);
}

/* Past the hint cap for a target, a write it misses is not hinted: counted dropped, and the
 * target marked needs-repair; what was kept under the cap is still replayed when it returns. */
static void test_hint_cap_marks_needs_repair(void **state)
{
    (void)state;
    hint_window_ms = 0;
    hint_node_bytes = 1024; /* room for a few hints of these small records */
    uint64_t inc = start_with_pts(3);
    uint64_t id2 = vd_cluster_node_id(nodes[2].c);
    stop(2);
    static struct rec recs[NPTS];
    uint64_t writer = vd_cluster_node_id(nodes[0].c);
    for (size_t k = 0; k < NPTS; k++)
        make_rec(&recs[k], 1000 + k, writer, (float)k, false, inc);
    char msg[256];
    if (write_through(0, recs, NPTS, 2, inc, msg, sizeof msg))
        fail_msg("write at W 2 with node 2 away: %s", msg);
    /* every missed write is either kept or counted dropped */
    POLL(hints_for(0, id2) + stats_of(0).dropped == NPTS, 5000,
         "each missed write hinted or dropped");
    uint64_t kept = hints_for(0, id2);
    assert_true(kept > 0 && kept < NPTS);
    POLL(needs_repair(0, id2), 5000, "node 2 marked needs-repair");
    hint_node_bytes = 0;
    start(2, NULL);
    POLL(stats_of(0).replayed == kept, 30000, "the hints kept replayed to node 2");
    POLL(held_at(2, recs, NPTS) == kept, 5000, "node 2 holds what was hinted, no more");
    assert_true(needs_repair(0, id2));
}

struct one_read {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done, present;
    int status;
};

static void on_one_read(int status, const struct vd_err *err, const struct vd_cluster_rec *recs,
                        size_t n, void *ctx)
{
    (void)err;
    struct one_read *r = ctx;
    pthread_mutex_lock(&r->mu);
    r->status = status;
    r->present = status == 0 && n == 1 && recs[0].p != NULL;
    r->done = true;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Whether a read of id at consistency 1 through node i finds the point. */
static bool found_at_one(int i, uint64_t id, uint64_t inc)
{
    struct one_read r = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    struct vd_pid pid = {.type = VD_PID_NUM, .u.num = id};
    struct vd_err e;
    assert_int_equal(vd_cluster_read(nodes[i].c, "pts", inc, &pid, 1, 1, 2000, on_one_read, &r, &e),
                     0);
    pthread_mutex_lock(&r.mu);
    while (!r.done)
        pthread_cond_wait(&r.cv, &r.mu);
    pthread_mutex_unlock(&r.mu);
    assert_int_equal(r.status, 0);
    return r.present;
}

/* A replica a coordinator marked needs-repair serves none of its reads at consistency 1 while
 * another replica can: points placed on (node 2, node 1) in that order, written through node 0
 * (no replica of them) while node 2 is away and every hint for it is refused by the cap, are
 * found through node 0 at consistency 1 once node 2 is back without them. */
static void test_needs_repair_replica_serves_no_one_replica_reads(void **state)
{
    (void)state;
    hint_window_ms = 0;
    hint_node_bytes = 1; /* no hint fits: node 2 will need repair */
    uint64_t inc = start_with_pts(2);
    uint64_t id1 = vd_cluster_node_id(nodes[1].c), id2 = vd_cluster_node_id(nodes[2].c);
    /* ids whose replicas are node 2 then node 1; the last one probes that node 2 answers */
    uint64_t ids[5];
    size_t n = 0;
    struct vd_meta_view *v = vd__cluster_view_acquire(nodes[0].c);
    for (uint64_t id = 1; id < 100000 && n < 5; id++) {
        struct vd_pid pid = {.type = VD_PID_NUM, .u.num = id};
        uint8_t key[VD_PID_KEY_MAX];
        size_t kl = vd_pid_encode(&pid, key);
        struct vd_placement pl;
        assert_int_equal(vd_meta_place_point(vd_meta_view_state(v), "pts", key, kl, &pl), 0);
        if (pl.n_natural == 2 && pl.natural[0] == id2 && pl.natural[1] == id1)
            ids[n++] = id;
    }
    vd_meta_view_release(v);
    assert_int_equal(n, 5);
    n = 4;
    stop(2);
    static struct rec recs[4];
    uint64_t writer = vd_cluster_node_id(nodes[0].c);
    for (size_t k = 0; k < n; k++)
        make_rec(&recs[k], ids[k], writer, (float)k, false, inc);
    char msg[256];
    if (write_through(0, recs, n, 1, inc, msg, sizeof msg))
        fail_msg("write at W 1 with node 2 away: %s", msg);
    POLL(needs_repair(0, id2), 5000, "node 2 marked needs-repair by node 0");
    hint_node_bytes = 0;
    start(2, NULL);
    POLL(voters_up(0) == N, 15000, "node 2 back and up");
    /* node 0 reaches node 2 again: a write of the probe needs both replicas */
    static struct rec probe[1];
    make_rec(&probe[0], ids[4], writer, 9, false, inc);
    POLL(write_through(0, probe, 1, 2, inc, NULL, 0) == 0, 15000,
         "a write through node 0 acknowledged by node 2");
    assert_int_equal(held_at(2, recs, n), 0);
    for (size_t k = 0; k < n; k++)
        if (!found_at_one(0, ids[k], inc))
            fail_msg("point %llu not found at consistency 1: asked the replica needing repair",
                     (unsigned long long)ids[k]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_paused_replica_gets_its_hints, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stopped_node_gets_its_hints_when_back, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_expired_hints_dropped_and_counted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deleted_collection_hints_vanish, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hints_rewritten_or_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hint_cap_marks_needs_repair, setup, teardown),
        cmocka_unit_test_setup_teardown(test_needs_repair_replica_serves_no_one_replica_reads,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
