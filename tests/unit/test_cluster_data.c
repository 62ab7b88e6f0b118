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
#include "vectord/record.h"

#define NPTS 24

struct rec {
    uint8_t b[128];
    size_t len;
};

static void make_rec(struct rec *r, uint64_t id, uint64_t node, float x, bool tomb,
                     uint64_t incarnation)
{
    float v[4] = {x, x + 1, x + 2, x + 3};
    struct vd_rvec rv = {.kind = VD_RVEC_DENSE, .n = 4, .values = v};
    char pl[32];
    int pn = snprintf(pl, sizeof pl, "{\"x\":%d}", (int)x);
    struct vd_record rec = {.id = {.type = VD_PID_NUM, .u.num = id},
                            .incarnation = incarnation,
                            .version = {vd_hlc_now(), node},
                            .tombstone = tomb,
                            .n_vectors = tomb ? 0 : 1,
                            .vectors = tomb ? NULL : &rv,
                            .payload = tomb ? NULL : pl,
                            .payload_len = tomb ? 0 : (size_t)pn};
    assert_int_equal(vd_record_encode(&rec, r->b, sizeof r->b, &r->len), 0);
}

static uint64_t incarnation_of(int i, const char *coll)
{
    struct vd_coll *c;
    assert_int_equal(vd_db_coll_get(nodes[i].db, coll, &c), 0);
    uint64_t inc = vd_db_coll_schema(c)->incarnation;
    vd_db_coll_put(c);
    return inc;
}

/* Writes recs[0..n) through node i at w; returns the outcome, its message in msg. */
static int write_through(int i, const struct rec *recs, size_t n, unsigned w, uint64_t inc,
                         char *msg, size_t cap)
{
    const uint8_t *p[NPTS];
    size_t lens[NPTS];
    for (size_t k = 0; k < n; k++) {
        p[k] = recs[k].b;
        lens[k] = recs[k].len;
    }
    struct vd_err e;
    assert_int_equal(vd_cluster_write(nodes[i].c, "pts", inc, p, lens, n, w, 2000, on_done, &W,
                                      &e),
                     0);
    int rc = wait_for(&W);
    if (msg)
        snprintf(msg, cap, "%s", W.msg);
    return rc;
}

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

/* How many of ids[0..n) node i's database holds at exactly the versions of recs. */
static size_t held_at(int i, const struct rec *recs, size_t n)
{
    struct vd_coll *c;
    if (vd_db_coll_get(nodes[i].db, "pts", &c))
        return 0;
    size_t got = 0;
    for (size_t k = 0; k < n; k++) {
        struct vd_rvec vecs[VD_RECORD_MAX_VECTORS];
        struct vd_record want;
        assert_int_equal(vd_record_decode(recs[k].b, recs[k].len, &want, vecs), 0);
        struct vd_db_record *r = NULL;
        size_t nr = 0;
        struct vd_err e;
        assert_int_equal(vd_db_retrieve(c, &want.id, 1, false, true, &r, &nr, &e), 0);
        got += nr == 1 && vd_version_cmp(r[0].version, want.version) == 0;
        vd_db_records_free(r, nr);
    }
    vd_db_coll_put(c);
    return got;
}

struct hint_count {
    uint64_t target, count;
};

static int count_hints(uint64_t target, uint64_t count, uint64_t bytes, void *ctx)
{
    (void)bytes;
    struct hint_count *h = ctx;
    if (target == h->target)
        h->count = count;
    return 0;
}

/* How many hints node i keeps for target. */
static uint64_t hints_for(int i, uint64_t target)
{
    struct hint_count h = {target, 0};
    assert_int_equal(vd_db_hint_totals(nodes[i].db, count_hints, &h), 0);
    return h.count;
}

static void test_replicated_writes_and_reads(void **state)
{
    (void)state;
    char join[32];
    snprintf(join, sizeof join, "127.0.0.1:%u", nodes[0].port);
    start(0, NULL);
    start(1, join);
    start(2, join);
    for (int i = 0; i < N; i++)
        POLL(voters_up(i) == N && leader_of(i) != 0, 15000, "three voters up");
    assert_int_equal(create_coll(0, "pts", VD_METRIC_DOT, 3), 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(sync_node(i), 0);
        POLL(has_coll(i, "pts"), 5000, "the collection on every node");
    }
    uint64_t inc = incarnation_of(0, "pts");
    uint64_t id0 = vd_cluster_node_id(nodes[0].c);

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

    /* node 2 stops: W 2 and R 2 still succeed, W 3 and R 3 fail naming the numbers; the
     * coordinator keeps a hint for each write the stopped replica did not acknowledge */
    stop(2);
    static struct rec later[4];
    for (size_t k = 0; k < 4; k++)
        make_rec(&later[k], 200 + k, id0, (float)k, false, inc);
    assert_int_equal(write_through(0, later, 4, 2, inc, msg, sizeof msg), 0);
    POLL(hints_for(0, id2) == 5, 5000, "a hint on node 0 for each write node 2 missed");
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
