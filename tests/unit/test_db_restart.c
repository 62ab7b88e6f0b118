/* The in-memory index against storage: after a restart on a saved graph, points whose vector
 * changed after the graph was saved must be re-linked at load, or graph search (not the exact
 * scan) misses them; and a committed write the index failed to take (out of memory) must become
 * searchable without a restart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "vectord/db.h"
#include "vectord/index.h"
#include "vectord/json.h"
#include "vectord/store.h"

#include "unit/db_fixture.h"

#define N_POINTS 5000
#define N_MOVED 1000
#define DIM 48

/* Deterministic pseudo-random floats in [0, 1). */
static float rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (float)(*s >> 40) / (float)(1ull << 24);
}

/* Vector of point i: near the origin before the move, shifted far away (and spread) after it. */
static void vec_of(int i, bool moved, float *v)
{
    uint64_t s = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1) + (moved ? 77 : 0);
    for (int d = 0; d < DIM; d++)
        v[d] = moved ? 50.0f + 10.0f * rnd(&s) : rnd(&s);
}

static void upsert_range(struct vd_coll *c, int from, int to, bool moved)
{
    int n = to - from;
    float *v = malloc(sizeof(float) * DIM * (size_t)n);
    struct vd_db_point *p = calloc((size_t)n, sizeof *p);
    assert_non_null(v);
    assert_non_null(p);
    for (int i = 0; i < n; i++) {
        vec_of(from + i, moved, v + (size_t)i * DIM);
        p[i].id = (struct vd_pid){.type = VD_PID_NUM, .u.num = (uint64_t)(from + i)};
        p[i].vec = v + (size_t)i * DIM;
    }
    struct vd_err e;
    assert_int_equal(vd_db_upsert(c, p, (size_t)n, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    free(p);
    free(v);
}

/* Polls until the background threads linked every point, so searches walk the graph rather than
 * scanning the unlinked tail exactly. */
static void wait_linked(struct vd_coll *c)
{
    for (int i = 0; i < 6000; i++) {
        struct vd_coll_stats st;
        vd_db_coll_stats(c, &st);
        if (st.pending == 0)
            return;
        usleep(10000);
    }
    fail_msg("points still unlinked after 60 s");
}

/* How many of the moved points are not the first hit of a graph search by their own vector. */
static int moved_not_first(struct vd_coll *c)
{
    int missed = 0;
    float q[DIM];
    for (int i = 0; i < N_MOVED; i++) {
        vec_of(i, true, q);
        struct vd_db_search s = {.query = q, .limit = 1, .ef = 64};
        missed += first_id(c, &s) != i;
    }
    return missed;
}

/* A child process opens the database, moves the first N_MOVED points of collection `name` far
 * away and dies without closing, as kill -9 would: the saved graph still holds their old links. */
static void crash_after_moving(const char *name)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct vd_db *cdb;
        struct vd_err e;
        struct vd_db_opts o = {.data_dir = dir, .no_sync = true, .index_threads = 1};
        struct vd_coll *cc;
        if (vd_db_open(&o, &cdb, &e) || vd_db_coll_get(cdb, name, &cc))
            _exit(2);
        upsert_range(cc, 0, N_MOVED, true);
        _exit(0);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* Reopens the database after crash_after_moving: all n points are there and graph search finds
 * the moved ones where they are now. */
static void check_moved_after_restart(const char *name, uint64_t n_points)
{
    struct vd_db *db = open_db();
    struct vd_coll *c;
    assert_int_equal(vd_db_coll_get(db, name, &c), 0);
    uint64_t n;
    assert_int_equal(vd_db_count(c, NULL, &n), 0);
    assert_int_equal(n, n_points);
    wait_linked(c);
    int missed = moved_not_first(c);
    print_message("moved points not found first by graph search after the restart: %d of %d\n",
                  missed, N_MOVED);
    assert_true(missed <= N_MOVED / 100);
    vd_db_coll_put(c);
    vd_db_close(db);
}

static void test_moved_points_relinked_after_crash(void **state)
{
    fixture_mkdir();
    struct vd_db *db = open_db();
    struct vd_coll *c = create_coll(db, "r", DIM, VD_METRIC_EUCLID, 100, 10);
    upsert_range(c, 0, N_POINTS, false);
    wait_linked(c);
    vd_db_coll_put(c);
    vd_db_close(db); /* clean stop: the graph is saved with every point linked */
    crash_after_moving("r");
    check_moved_after_restart("r", N_POINTS);
    fixture_rmdir();
}

/* First hit of an exact search for (x, 0), or -1 when there is none. */
static int nearest_exact(struct vd_coll *c, float x)
{
    float q[2] = {x, 0};
    struct vd_db_search s = {.query = q, .limit = 1, .exact = true};
    return first_id(c, &s);
}

static void test_index_catches_up_after_failed_apply(void **state)
{
    fixture_mkdir();
    struct vd_db *db = open_db();
    struct vd_coll *c = create_coll(db, "oom", 2, VD_METRIC_EUCLID, 64, 0);
    struct vd_err e;

    float v[5][2];
    struct vd_db_point p[5];
    for (int i = 0; i < 5; i++) {
        v[i][0] = 1000.0f + (float)i;
        v[i][1] = 0;
        p[i] = (struct vd_db_point){.id = {.type = VD_PID_NUM, .u.num = 100 + (uint64_t)i},
                                    .vec = v[i]};
    }
    /* the third point of the batch cannot be applied to the index */
    vd_index_test_fail_upsert_after(3);
    assert_int_equal(vd_db_upsert(c, p, 5, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0); /* durable: the reply says success */
    vd_index_test_fail_upsert_after(0);
    int found = -1;
    for (int i = 0; i < 1000 && found != 102; i++) {
        found = nearest_exact(c, 1002.0f);
        if (found != 102)
            usleep(10000);
    }
    assert_int_equal(found, 102);
    for (int i = 0; i < 5; i++)
        assert_int_equal(nearest_exact(c, 1000.0f + (float)i), 100 + i);
    uint64_t n;
    assert_int_equal(vd_db_count(c, NULL, &n), 0);
    assert_int_equal(n, 5);
    vd_db_coll_put(c);
    vd_db_close(db);
    fixture_rmdir();
}

/* Value of the metric line `name` in the database's metrics, or -1 when absent. */
static long long metric(struct vd_db *db, const char *name)
{
    struct vd_buf b;
    vd_buf_init(&b);
    vd_db_metrics(db, &b);
    long long v = -1;
    size_t nl = strlen(name);
    for (const char *p = b.data; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, name, nl) && p[nl] == ' ')
            v = atoll(p + nl + 1);
    vd_buf_release(&b);
    return v;
}

struct changes {
    uint64_t n, min;
};

static int count_change(uint64_t incarnation, const struct vd_pid *id, uint64_t seq, void *arg)
{
    struct changes *k = arg;
    k->n++;
    if (!k->min || seq < k->min)
        k->min = seq;
    return 0;
}

/* Under steady overwrites the change log must not grow without bound: once the graph is saved
 * (also while the linkers lag behind, so points stay pending) the entries it holds are trimmed,
 * and a crash after that still restarts into the right graph from storage. */
static void test_change_log_trimmed_after_save(void **state)
{
    enum { N = 1000, ROUNDS = 3 };
    fixture_mkdir();
    /* the linkers never catch up while the points are written: a save must not wait for them */
    vd_db_test_pause_linking(true);
    struct vd_db *db = open_db_saving(1);
    struct vd_coll *c = create_coll(db, "t", DIM, VD_METRIC_EUCLID, 100, 10);
    for (int r = 0; r < ROUNDS; r++)
        upsert_range(c, 0, N, false);
    uint64_t last = W.op; /* the change counter of the last overwrite */
    assert_true(last >= (uint64_t)N * ROUNDS);
    long long left = -1;
    for (int i = 0; i < 3000 && left != 0; i++) {
        if ((left = metric(db, "vectord_storage_change_log_entries")) != 0)
            usleep(10000);
    }
    struct vd_coll_stats st;
    vd_db_coll_stats(c, &st);
    print_message("change log entries after %d overwrites and a save: %lld (%llu points pending)\n",
                  N * ROUNDS, left, (unsigned long long)st.pending);
    assert_true(st.pending > 0); /* the save did not wait for the linkers */
    assert_int_equal(left, 0);
    vd_db_coll_put(c);
    vd_db_close(db);
    vd_db_test_pause_linking(false);

    crash_after_moving("t");

    /* the log holds the crashed process's writes only, nothing the saved graph holds */
    struct vd_store *store;
    struct vd_store_opts so = {.dir = dir, .no_sync = true};
    struct vd_err e;
    assert_int_equal(vd_store_open(&so, &store, &e), 0);
    struct vd_rtxn *t;
    struct changes k = {0};
    assert_int_equal(vd_store_read_begin(store, &t), 0);
    assert_int_equal(vd_store_changes_since(t, 0, count_change, &k), 0);
    vd_store_read_end(t);
    vd_store_close(store);
    print_message("change log after the crash: %llu entries from %llu (last saved write %llu)\n",
                  (unsigned long long)k.n, (unsigned long long)k.min, (unsigned long long)last);
    assert_int_equal(k.n, N_MOVED);
    assert_true(k.min > last);

    /* and the restart replays them: the moved points are found where they are now */
    check_moved_after_restart("t", N);
    fixture_rmdir();
}

/* Vector of point i, before and after a move, both drawn from [0, 1) (the range the codes were
 * trained on: a point moved outside it would clip to codes that no walk can tell apart). */
static void inrange_vec(int i, bool moved, float *v)
{
    uint64_t s = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1) + (moved ? 77 : 0);
    for (int d = 0; d < DIM; d++)
        v[d] = rnd(&s);
}

static void upsert_vecs(struct vd_coll *c, int from, int to, bool moved)
{
    int n = to - from;
    float *v = malloc(sizeof(float) * DIM * (size_t)n);
    struct vd_db_point *p = calloc((size_t)n, sizeof *p);
    assert_non_null(v);
    assert_non_null(p);
    for (int i = 0; i < n; i++) {
        inrange_vec(from + i, moved, v + (size_t)i * DIM);
        p[i].id = (struct vd_pid){.type = VD_PID_NUM, .u.num = (uint64_t)(from + i)};
        p[i].vec = v + (size_t)i * DIM;
    }
    struct vd_err e;
    assert_int_equal(vd_db_upsert(c, p, (size_t)n, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    free(p);
    free(v);
}

/* A collection quantized with always_ram false keeps only the codes in memory and reads the
 * floats from storage: graph and exact searches find every point by its own vector, an
 * overwritten point is found where it is now, a deleted one never, and all of it again after a
 * restart on the saved graph (loaded without reading the floats into memory). */
static void test_quant_floats_on_disk(void **state)
{
    (void)state;
    fixture_mkdir();
    struct vd_db *db = open_db();
    struct vd_coll_schema s = {.dim = DIM, .metric = VD_METRIC_EUCLID, .hnsw_m = 16,
                               .hnsw_ef_construct = 64, .replication_factor = 1,
                               .write_consistency_factor = 1, .quant_enabled = true,
                               .quant_quantile = 0.99f, .quant_always_ram = 1};
    snprintf(s.name, sizeof s.name, "ondisk");
    struct vd_err e;
    assert_int_equal(vd_db_coll_create(db, &s, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    /* the same points with the floats in memory (always_ram true), for the memory figure */
    snprintf(s.name, sizeof s.name, "inram");
    s.quant_always_ram = 2;
    assert_int_equal(vd_db_coll_create(db, &s, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    struct vd_coll *c;
    assert_int_equal(vd_db_coll_get(db, "inram", &c), 0);
    upsert_vecs(c, 0, N_POINTS, false);
    wait_linked(c);
    struct vd_coll_stats ram;
    vd_db_coll_stats(c, &ram);
    vd_db_coll_put(c);
    assert_int_equal(vd_db_coll_get(db, "ondisk", &c), 0);
    upsert_vecs(c, 0, N_POINTS, false);
    wait_linked(c);
    float q[DIM];
    for (int round = 0; round < 2; round++) {
        struct vd_coll_stats st;
        vd_db_coll_stats(c, &st);
        /* codes (a byte per value and a header) but no float: a quarter of the other's bytes
         * per point, less after the rounding to whole chunks (of more slots for the smaller
         * blocks); with the floats it would hold more than the other */
        print_message("round %d: vector bytes in memory %zu, with the floats in memory %zu\n",
                      round, st.vector_bytes, ram.vector_bytes);
        assert_true(st.vector_bytes > 0 && st.vector_bytes * 3 / 2 <= ram.vector_bytes);
        if (round == 0) {
            upsert_vecs(c, 0, N_MOVED, true); /* the first N_MOVED get new vectors */
            struct vd_pid gone[10];
            for (int i = 0; i < 10; i++)
                gone[i] = (struct vd_pid){.type = VD_PID_NUM, .u.num = (uint64_t)(N_MOVED + i)};
            assert_int_equal(vd_db_delete(c, gone, 10, on_done, &W, &e), 0);
            assert_int_equal(wait_for(&W), 0);
            wait_linked(c);
        }
        int missed = 0, missed_exact = 0;
        for (int i = 0; i < N_POINTS; i += 7) {
            inrange_vec(i, i < N_MOVED, q);
            struct vd_db_search sr = {.query = q, .limit = 3, .ef = 64};
            struct vd_db_search sx = {.query = q, .limit = 3, .exact = true};
            int want = i >= N_MOVED && i < N_MOVED + 10 ? -1 : i;
            cJSON *hits = search(c, &sr);
            for (int j = 0; j < 3; j++)
                assert_true(hit_id(hits, j) < N_MOVED || hit_id(hits, j) >= N_MOVED + 10);
            missed += want >= 0 && hit_id(hits, 0) != want;
            cJSON_Delete(hits);
            hits = search(c, &sx);
            for (int j = 0; j < 3; j++)
                assert_true(hit_id(hits, j) < N_MOVED || hit_id(hits, j) >= N_MOVED + 10);
            missed_exact += want >= 0 && hit_id(hits, 0) != want;
            cJSON_Delete(hits);
        }
        print_message("round %d: points not found first: graph %d, exact %d of %d\n", round,
                      missed, missed_exact, N_POINTS / 7 + 1);
        assert_int_equal(missed_exact, 0);
        assert_true(missed <= N_POINTS / 7 / 100);
        if (round == 0)
            reopen(&db, &c, "ondisk"); /* saves the graph at close, loads it at open */
    }
    vd_db_coll_put(c);
    vd_db_close(db);
    fixture_rmdir();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_moved_points_relinked_after_crash),
        cmocka_unit_test(test_index_catches_up_after_failed_apply),
        cmocka_unit_test(test_change_log_trimmed_after_save),
        cmocka_unit_test(test_quant_floats_on_disk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
