/*
 * Points over the ring, three nodes in one process (real databases, real TCP): writes through
 * one node reach every replica and are acknowledged at W; reads through another return the very
 * records written, the newest version winning; with a replica stopped, writes at W 2 and reads at
 * R 2 still succeed while W 3 and R 3 fail with the numbers, and nothing is lost when it returns.
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

struct read_result {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    int status;
    char msg[256];
    struct rec recs[NPTS];
    bool present[NPTS];
};

static void on_read(int status, const struct vd_err *err, const struct vd_cluster_rec *recs,
                    size_t n, void *ctx)
{
    struct read_result *r = ctx;
    pthread_mutex_lock(&r->mu);
    r->status = status;
    snprintf(r->msg, sizeof r->msg, "%s", err ? err->msg : "");
    for (size_t k = 0; recs && k < n && k < NPTS; k++) {
        r->present[k] = recs[k].p != NULL;
        if (recs[k].p && recs[k].len <= sizeof r->recs[k].b) {
            memcpy(r->recs[k].b, recs[k].p, recs[k].len);
            r->recs[k].len = recs[k].len;
        }
    }
    r->done = true;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static int read_through(int i, const uint64_t *idv, size_t n, unsigned r_need, uint64_t inc,
                        struct read_result *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_init(&out->mu, NULL);
    pthread_cond_init(&out->cv, NULL);
    struct vd_pid ids[NPTS];
    for (size_t k = 0; k < n; k++)
        ids[k] = (struct vd_pid){.type = VD_PID_NUM, .u.num = idv[k]};
    struct vd_err e;
    assert_int_equal(
        vd_cluster_read(nodes[i].c, "pts", inc, ids, n, r_need, 2000, on_read, out, &e), 0);
    pthread_mutex_lock(&out->mu);
    while (!out->done)
        pthread_cond_wait(&out->cv, &out->mu);
    pthread_mutex_unlock(&out->mu);
    return out->status;
}

static void test_replicated_writes_and_reads(void **state)
{
    (void)state;
    uint64_t inc = start_with_pts(3);
    uint64_t id0 = vd_cluster_node_id(nodes[0].c);

    /* at RF 3 on three members each holds every range: consistency-1 reads stay local */
    for (int i = 0; i < N; i++) {
        assert_true(vd_cluster_holds_all(nodes[i].c, 3));
        assert_true(vd_cluster_holds_all(nodes[i].c, 5));
        assert_false(vd_cluster_holds_all(nodes[i].c, 2));
        assert_false(vd_cluster_holds_all(nodes[i].c, 1));
    }

    /* written through node 0 at the collection's W (2 of 3): every replica ends with them */
    static struct rec recs[NPTS];
    uint64_t ids[NPTS];
    for (size_t k = 0; k < NPTS; k++) {
        ids[k] = 100 + k;
        make_rec(&recs[k], ids[k], id0, (float)k, false, inc);
    }
    char msg[256];
    assert_int_equal(write_through(0, recs, NPTS, 0, inc, msg, sizeof msg), 0);
    for (int i = 0; i < N; i++)
        POLL(held_at(i, recs, NPTS) == NPTS, 5000, "every record on every replica");

    /* read through node 1 from all three: the very bytes written */
    static struct read_result rr;
    assert_int_equal(read_through(1, ids, NPTS, 3, inc, &rr), 0);
    for (size_t k = 0; k < NPTS; k++) {
        assert_true(rr.present[k]);
        assert_int_equal(rr.recs[k].len, recs[k].len);
        assert_memory_equal(rr.recs[k].b, recs[k].b, recs[k].len);
    }

    /* a newer version through node 2 wins everywhere; a delete hides the point */
    static struct rec newer[2];
    make_rec(&newer[0], ids[0], vd_cluster_node_id(nodes[2].c), 500, false, inc);
    make_rec(&newer[1], ids[1], vd_cluster_node_id(nodes[2].c), 0, true, inc);
    assert_int_equal(write_through(2, newer, 2, 0, inc, NULL, 0), 0);
    if (read_through(0, ids, 3, 0, inc, &rr) != 0)
        fail_msg("read at quorum failed: %s", rr.msg);
    assert_memory_equal(rr.recs[0].b, newer[0].b, newer[0].len);
    assert_false(rr.present[1]);
    assert_true(rr.present[2]);

    /* an unknown incarnation is not found */
    assert_int_equal(write_through(0, recs, 1, 0, inc + 1, msg, sizeof msg), VD_ENOTFOUND);

    /* node 2's workers pause (no reply, no reset: a silent replica): a write at W 2 is
     * acknowledged by the other two, and node 2's missing answer by the deadline leaves a hint */
    uint64_t id2 = vd_cluster_node_id(nodes[2].c);
    assert_int_equal(hints_for(0, id2), 0);
    vd_data_pause_workers(nodes[2].c->data, true);
    static struct rec slow[1];
    make_rec(&slow[0], 300, id0, 7, false, inc);
    assert_int_equal(write_through(0, slow, 1, 2, inc, msg, sizeof msg), 0);
    POLL(hints_for(0, id2) == 1, 5000, "a hint on node 0 for the write node 2 did not answer");
    vd_data_pause_workers(nodes[2].c->data, false);
    /* once node 2 answers again the hint is replayed to it (test_cluster_hints shows more) */
    POLL(hints_for(0, id2) == 0, 30000, "the hint replayed to node 2");

    /* node 2 stops: W 2 and R 2 still succeed, W 3 and R 3 fail naming the numbers; the
     * coordinator keeps a hint for each write the stopped replica did not acknowledge */
    stop(2);
    static struct rec later[4];
    for (size_t k = 0; k < 4; k++)
        make_rec(&later[k], 200 + k, id0, (float)k, false, inc);
    assert_int_equal(write_through(0, later, 4, 2, inc, msg, sizeof msg), 0);
    POLL(hints_for(0, id2) == 4, 5000, "a hint on node 0 for each write node 2 missed");
    uint64_t lids[4] = {200, 201, 202, 203};
    assert_int_equal(read_through(1, lids, 4, 2, inc, &rr), 0);
    for (size_t k = 0; k < 4; k++)
        assert_memory_equal(rr.recs[k].b, later[k].b, later[k].len);
    assert_int_equal(write_through(0, later, 1, 3, inc, msg, sizeof msg), VD_EUNAVAIL);
    if (!strstr(msg, "3 replicas"))
        fail_msg("the message does not name the numbers: %s", msg);
    assert_int_equal(read_through(1, lids, 1, 3, inc, &rr), VD_EUNAVAIL);

    /* back: what it missed reaches it by read repair at R 3 */
    start(2, NULL);
    POLL(voters_up(0) == N, 15000, "the stopped node back");
    POLL(read_through(0, lids, 4, 3, inc, &rr) == 0, 15000, "reads at R 3 again");
    POLL(held_at(2, later, 4) == 4, 5000, "the missed writes repaired on the returning node");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_replicated_writes_and_reads, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
