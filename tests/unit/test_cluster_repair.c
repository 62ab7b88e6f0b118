/*
 * Anti-entropy repair, three nodes in one process (real databases, real TCP): replicas that
 * hold the same records compare equal and exchange no point data; drift made by writing to one
 * replica's database alone (newer versions, a delete, points the others never saw) is carried,
 * newest version first, to every replica that lacks it, after which the three databases hold the
 * same bytes and a second repair sends nothing; a replica marked needs-repair (its hints expired
 * while it was stopped) is repaired and its mark cleared; the schedule repairs on its own.
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

struct repair_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    int status;
    struct vd_cluster_repair_report rep;
};

static void on_repaired(int status, const struct vd_err *err,
                        const struct vd_cluster_repair_report *rep, void *ctx)
{
    (void)err;
    struct repair_wait *w = ctx;
    pthread_mutex_lock(&w->mu);
    w->status = status;
    if (rep)
        w->rep = *rep;
    w->done = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Runs a repair of "pts" (or of every collection) through node i and waits for its report. */
static struct vd_cluster_repair_report repair_through(int i, const char *coll)
{
    static struct repair_wait w = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    w.done = false;
    uint64_t id = 0;
    struct vd_err e;
    assert_int_equal(vd_cluster_repair(nodes[i].c, coll, on_repaired, &w, &id, &e), 0);
    assert_true(id > 0);
    pthread_mutex_lock(&w.mu);
    while (!w.done)
        pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    assert_int_equal(w.status, 0);
    assert_true(w.rep.id == id);
    return w.rep;
}

/* Every record node i stores (tombstones included), in id order, as one text: id and bytes. */
struct dump {
    struct vd_buf b;
    size_t n;
};

static int dump_one(const struct vd_pid *id, const uint8_t *rec, size_t len, void *ctx)
{
    struct dump *d = ctx;
    char s[VD_PID_STR_MAX];
    vd_pid_format(id, s);
    vd_buf_printf(&d->b, "%s:%zu:", s, len);
    vd_buf_append(&d->b, rec, len);
    d->n++;
    return 0;
}

static size_t dump_node(int i, struct vd_buf *out)
{
    struct vd_coll *c;
    assert_int_equal(vd_db_coll_get(nodes[i].db, "pts", &c), 0);
    struct dump d = {.n = 0};
    vd_buf_init(&d.b);
    assert_int_equal(vd_db_scan_records(c, NULL, dump_one, &d), 0);
    vd_db_coll_put(c);
    assert_true(vd_buf_ok(&d.b));
    *out = d.b;
    return d.n;
}

/* The three databases hold the same records, byte for byte; returns how many. */
static size_t same_everywhere(void)
{
    struct vd_buf b[N];
    size_t n = dump_node(0, &b[0]);
    for (int i = 1; i < N; i++) {
        assert_int_equal(dump_node(i, &b[i]), n);
        assert_int_equal(b[i].len, b[0].len);
        assert_memory_equal(b[i].data, b[0].data, b[0].len);
    }
    for (int i = 0; i < N; i++)
        vd_buf_release(&b[i]);
    return n;
}

static bool differs_somewhere(void)
{
    struct vd_buf b[N];
    bool d = false;
    for (int i = 0; i < N; i++)
        dump_node(i, &b[i]);
    for (int i = 1; i < N; i++)
        d |= b[i].len != b[0].len || memcmp(b[i].data, b[0].data, b[0].len) != 0;
    for (int i = 0; i < N; i++)
        vd_buf_release(&b[i]);
    return d;
}

/* Applies recs to node i's database alone, as if the others had missed the writes. */
static void apply_at(int i, const struct rec *recs, size_t n)
{
    struct vd_coll *c;
    assert_int_equal(vd_db_coll_get(nodes[i].db, "pts", &c), 0);
    const uint8_t *p[8];
    size_t lens[8];
    for (size_t k = 0; k < n; k++) {
        p[k] = recs[k].b;
        lens[k] = recs[k].len;
    }
    struct vd_err e;
    assert_int_equal(vd_db_apply(c, p, lens, n, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    vd_db_coll_put(c);
}

static void test_repair_converges(void **state)
{
    (void)state;
    hint_window_ms = 1000; /* hints for a stopped node expire fast: it is marked needs-repair */
    uint64_t inc = start_with_pts(3);
    uint64_t id0 = vd_cluster_node_id(nodes[0].c), id2 = vd_cluster_node_id(nodes[2].c);

    static struct rec recs[NPTS];
    for (size_t k = 0; k < NPTS; k++)
        make_rec(&recs[k], 100 + k, id0, (float)k, false, inc);
    assert_int_equal(write_through(0, recs, NPTS, 3, inc, NULL, 0), 0);
    for (int i = 0; i < N; i++)
        POLL(held_at(i, recs, NPTS) == NPTS, 5000, "every record on every replica");
    assert_int_equal(same_everywhere(), NPTS);

    /* identical replicas: every range compared, no leaf differs, no point data moves */
    struct vd_cluster_repair_report r = repair_through(0, "pts");
    assert_int_equal(r.ranges, 64 * N); /* RF 3 of 3: this node replicates every arc */
    assert_int_equal(r.ranges_failed, 0);
    assert_int_equal(r.leaves_differing, 0);
    assert_int_equal(r.points_sent, 0);

    /* drift: node 2 alone gets a newer version, a delete and a new point; node 1 alone a newer
     * version of another; node 0 alone a new point */
    static struct rec d2[3], d1[1], d0[1];
    make_rec(&d2[0], 100, id2, 50, false, inc);
    make_rec(&d2[1], 101, id2, 0, true, inc);
    make_rec(&d2[2], 900, id2, 9, false, inc);
    make_rec(&d1[0], 102, vd_cluster_node_id(nodes[1].c), 60, false, inc);
    make_rec(&d0[0], 901, id0, 7, false, inc);
    apply_at(2, d2, 3);
    apply_at(1, d1, 1);
    apply_at(0, d0, 1);
    /* and an older version on node 1 of what node 2 changed: the newer must win there too */
    static struct rec old[1];
    old[0] = recs[3];
    apply_at(1, old, 1); /* the same version: held, nothing changes */
    assert_true(differs_somewhere());

    /* repaired through node 1: each of the five records reaches the two replicas lacking it */
    r = repair_through(1, NULL);
    assert_int_equal(r.ranges_failed, 0);
    assert_true(r.leaves_differing >= 4 && r.leaves_differing <= 5 * N);
    assert_int_equal(r.points_sent, 10);
    assert_int_equal(same_everywhere(), NPTS + 2);
    for (int i = 0; i < N; i++) {
        assert_int_equal(held_at(i, d2, 3), 3);
        assert_int_equal(held_at(i, d1, 1), 1);
        assert_int_equal(held_at(i, d0, 1), 1);
    }
    r = repair_through(2, "pts");
    assert_int_equal(r.leaves_differing, 0);
    assert_int_equal(r.points_sent, 0);

    /* node 2 stops; writes through node 0 leave hints for it that expire: marked needs-repair */
    stop(2);
    static struct rec missed[4];
    for (size_t k = 0; k < 4; k++)
        make_rec(&missed[k], 300 + k, id0, (float)k, k == 3, inc);
    assert_int_equal(write_through(0, missed, 4, 2, inc, NULL, 0), 0);
    POLL(needs_repair(0, id2), 15000, "node 2 marked needs-repair on node 0");
    /* node 0 tells the others: node 1 too asks node 2 last */
    POLL(needs_repair(1, id2), 5000, "node 0's mark known on node 1");
    assert_int_equal(hints_for(0, id2), 0);
    /* while it is down its ranges cannot be repaired, and the mark stays */
    r = repair_through(0, NULL);
    assert_int_equal(r.ranges_failed, r.ranges);
    assert_true(needs_repair(0, id2));
    start(2, NULL);
    POLL(voters_up(0) == N, 15000, "node 2 back");
    assert_int_equal(held_at(2, missed, 4), 0);
    r = repair_through(0, NULL);
    assert_int_equal(r.ranges_failed, 0);
    assert_int_equal(r.points_sent, 4);
    POLL(!needs_repair(0, id2), 2000, "node 2's mark cleared in GET /cluster");
    POLL(!needs_repair(1, id2), 6000, "the cleared mark forgotten on node 1");
    assert_int_equal(held_at(2, missed, 4), 4);
    assert_int_equal(same_everywhere(), NPTS + 2 + 4);

    /* GET /cluster and /metrics report it */
    cJSON *j = status(0);
    const cJSON *rj = cJSON_GetObjectItem(j, "repair");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(rj, "state")), "idle");
    const cJSON *last = cJSON_GetObjectItem(rj, "last_finished");
    assert_int_equal(cJSON_GetObjectItem(last, "points_sent")->valueint, 4);
    assert_int_equal(cJSON_GetObjectItem(rj, "ranges_done")->valueint, 64 * N);
    cJSON_Delete(j);
    struct vd_buf m = {0};
    vd_cluster_metrics(nodes[0].c, &m);
    assert_true(vd_buf_ok(&m));
    vd_buf_puts(&m, "");
    assert_non_null(strstr(m.data, "vectord_repair_points_sent_total 4\n"));
    assert_non_null(strstr(m.data, "vectord_repair_runs_total 3\n"));
    vd_buf_release(&m);

    struct vd_err e;
    uint64_t id;
    assert_int_equal(vd_cluster_repair(nodes[0].c, "nope", NULL, NULL, &id, &e), VD_ENOTFOUND);
    hint_window_ms = 0;
}

/* --repair-interval: a node repairs on its own. */
static void test_repair_scheduled(void **state)
{
    (void)state;
    repair_interval_ms = 300;
    uint64_t inc = start_with_pts(3);
    static struct rec d[2];
    make_rec(&d[0], 7, vd_cluster_node_id(nodes[1].c), 1, false, inc);
    make_rec(&d[1], 8, vd_cluster_node_id(nodes[1].c), 2, true, inc);
    apply_at(1, d, 2);
    for (int i = 0; i < N; i++)
        POLL(held_at(i, d, 2) == 2, 20000, "the drift repaired without being asked");
    assert_int_equal(same_everywhere(), 2);
    repair_interval_ms = 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_repair_converges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_repair_scheduled, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
