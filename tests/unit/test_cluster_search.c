/*
 * Searches, scroll and count over the ring, three nodes in one process (real databases, real
 * TCP): an exact search through every node equals a brute force over the points written; a
 * point deleted on two replicas while the third keeps a stale copy never shows in a search, a
 * scroll or a count; a newer version that no longer matches a filter is not returned although
 * the stale replica's old one matches; offset and limit page the merged result; scroll pages
 * cover every live id once; count is exact; a graph search keeps recall@10 >= 0.95.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <math.h>
#include <pthread.h>
#include <cmocka.h>

#define N 3

#include "unit/cluster_fixture.h"
#include "node_int.h"
#include "vectord/record.h"

#define DIM 8
#define NPTS 300
#define MAXPTS 3000

/* The points as the test wrote them: what every answer is checked against. */
struct pt {
    uint64_t id;
    float v[32];
    int g; /* payload {"g": g} */
    bool live;
};
static struct pt pts[MAXPTS + 64];
static size_t n_pts;
static uint64_t inc;
static uint32_t dim = DIM;

static uint64_t rng = 88172645463325252ull;
static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)(rng >> 40) / (float)(1u << 24) * 2.0f - 1.0f;
}

static size_t encode(const struct pt *p, bool tomb, uint64_t node, uint8_t *out, size_t cap)
{
    struct vd_rvec rv = {.kind = VD_RVEC_DENSE, .n = dim, .values = p->v};
    char pl[32];
    int pn = snprintf(pl, sizeof pl, "{\"g\":%d}", p->g);
    struct vd_record rec = {.id = {.type = VD_PID_NUM, .u.num = p->id},
                            .incarnation = inc,
                            .version = {vd_hlc_now(), node},
                            .tombstone = tomb,
                            .n_vectors = tomb ? 0 : 1,
                            .vectors = tomb ? NULL : &rv,
                            .payload = tomb ? NULL : pl,
                            .payload_len = tomb ? 0 : (size_t)pn};
    size_t len;
    assert_int_equal(vd_record_encode(&rec, out, cap, &len), 0);
    return len;
}

static uint8_t bufs[512][256];

/* Writes pts[from..to) through node i at the collection's W. */
static void write_pts(int i, const char *coll, size_t from, size_t to)
{
    for (size_t at = from; at < to; at += 512) {
        size_t n = to - at < 512 ? to - at : 512;
        const uint8_t *p[512];
        size_t lens[512];
        for (size_t k = 0; k < n; k++) {
            lens[k] = encode(&pts[at + k], false, vd_cluster_node_id(nodes[i].c), bufs[k],
                             sizeof bufs[k]);
            p[k] = bufs[k];
        }
        struct vd_err e;
        assert_int_equal(
            vd_cluster_write(nodes[i].c, coll, inc, p, lens, n, 0, 5000, on_done, &W, &e), 0);
        if (wait_for(&W))
            fail_msg("write: %s", W.msg);
    }
}

/* Applies one record of p directly to node i's database (the replica path), so that the test
 * decides exactly which replicas hold which version. */
static void apply_on(int i, const char *coll, const uint8_t *rec, size_t len)
{
    struct vd_coll *c;
    assert_int_equal(vd_db_coll_get(nodes[i].db, coll, &c), 0);
    struct vd_err e;
    const uint8_t *p[1] = {rec};
    assert_int_equal(vd_db_apply(c, p, &len, 1, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    vd_db_coll_put(c);
}

static uint64_t count_local(int i, const char *coll)
{
    struct vd_coll *c;
    if (vd_db_coll_get(nodes[i].db, coll, &c))
        return 0;
    uint64_t n = 0;
    vd_db_count(c, NULL, &n);
    vd_db_coll_put(c);
    return n;
}

static uint64_t pending_local(int i, const char *coll)
{
    struct vd_coll *c;
    if (vd_db_coll_get(nodes[i].db, coll, &c))
        return UINT64_MAX;
    struct vd_coll_stats st;
    vd_db_coll_stats(c, &st);
    vd_db_coll_put(c);
    return st.pending;
}

/* ---- answers ---- */

struct got {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    int status;
    char msg[512];
    size_t n;
    uint64_t ids[MAXPTS + 64];
    float scores[MAXPTS + 64];
    char payload[64][32];
    float vec[64][32];
    uint32_t vdim[64];
    bool has_next;
    uint64_t next;
    uint64_t count;
};
static struct got G;

static void got_reset(void)
{
    pthread_mutex_lock(&G.mu);
    G.done = false;
    G.n = 0;
    G.has_next = false;
    G.msg[0] = 0;
    pthread_mutex_unlock(&G.mu);
}

static void got_wait(void)
{
    pthread_mutex_lock(&G.mu);
    while (!G.done)
        pthread_cond_wait(&G.cv, &G.mu);
    pthread_mutex_unlock(&G.mu);
}

static void got_records(int status, const struct vd_err *err, const struct vd_db_record *recs,
                        size_t n, const struct vd_pid *next)
{
    pthread_mutex_lock(&G.mu);
    G.status = status;
    snprintf(G.msg, sizeof G.msg, "%s", err ? err->msg : "");
    for (size_t k = 0; k < n && k < MAXPTS + 64; k++) {
        G.ids[k] = recs[k].id.u.num;
        G.scores[k] = recs[k].score;
        if (k < 64) {
            snprintf(G.payload[k], sizeof G.payload[k], "%.*s", (int)recs[k].payload_len,
                     recs[k].payload ? recs[k].payload : "");
            G.vdim[k] = recs[k].vec && recs[k].dim <= 32 ? recs[k].dim : 0;
            if (G.vdim[k])
                memcpy(G.vec[k], recs[k].vec, sizeof(float) * recs[k].dim);
        }
    }
    G.n = n;
    G.has_next = next != NULL;
    G.next = next ? next->u.num : 0;
    G.done = true;
    pthread_cond_signal(&G.cv);
    pthread_mutex_unlock(&G.mu);
}

static void on_search(int status, const struct vd_err *err, const struct vd_db_record *recs,
                      size_t n, void *ctx)
{
    (void)ctx;
    got_records(status, err, recs, n, NULL);
}

static void on_scroll(int status, const struct vd_err *err, const struct vd_db_record *recs,
                      size_t n, const struct vd_pid *next, void *ctx)
{
    (void)ctx;
    got_records(status, err, recs, n, next);
}

static void on_count(int status, const struct vd_err *err, uint64_t count, void *ctx)
{
    (void)ctx;
    pthread_mutex_lock(&G.mu);
    G.status = status;
    snprintf(G.msg, sizeof G.msg, "%s", err ? err->msg : "");
    G.count = count;
    G.done = true;
    pthread_cond_signal(&G.cv);
    pthread_mutex_unlock(&G.mu);
}

static cJSON *filter_g(int g)
{
    char txt[96];
    snprintf(txt, sizeof txt, "{\"must\":[{\"key\":\"g\",\"match\":{\"value\":%d}}]}", g);
    return cJSON_Parse(txt);
}

struct sq {
    const float *q;
    uint32_t limit, offset;
    bool exact, with_payload, with_vector, has_thr;
    float thr;
    int g; /* filter g == g, or -1 */
    unsigned r;
    uint32_t timeout_ms; /* 0: 5000 */
};

static int search_through(int i, const char *coll, const struct sq *s)
{
    struct vd_db_search d = {.query = s->q,
                             .limit = s->limit,
                             .offset = s->offset,
                             .exact = s->exact,
                             .has_threshold = s->has_thr,
                             .score_threshold = s->thr};
    cJSON *f = s->g >= 0 ? filter_g(s->g) : NULL;
    struct vd_cluster_search q = {.s = &d,
                                  .dim = dim,
                                  .filter = f,
                                  .with_payload = s->with_payload,
                                  .with_vector = s->with_vector,
                                  .r = s->r,
                                  .timeout_ms = s->timeout_ms ? s->timeout_ms : 5000};
    got_reset();
    struct vd_err e;
    assert_int_equal(vd_cluster_search(nodes[i].c, coll, inc, &q, on_search, NULL, &e), 0);
    cJSON_Delete(f);
    got_wait();
    return G.status;
}

static int scroll_through(int i, const char *coll, const uint64_t *from, uint32_t limit, int g,
                          unsigned r)
{
    struct vd_pid fp = {.type = VD_PID_NUM, .u.num = from ? *from : 0};
    cJSON *f = g >= 0 ? filter_g(g) : NULL;
    struct vd_cluster_scroll q = {.from = from ? &fp : NULL,
                                  .limit = limit,
                                  .filter = f,
                                  .with_payload = true,
                                  .r = r,
                                  .timeout_ms = 5000};
    got_reset();
    struct vd_err e;
    assert_int_equal(vd_cluster_scroll(nodes[i].c, coll, inc, &q, on_scroll, NULL, &e), 0);
    cJSON_Delete(f);
    got_wait();
    return G.status;
}

static int count_through(int i, const char *coll, int g, unsigned r)
{
    cJSON *f = g >= 0 ? filter_g(g) : NULL;
    got_reset();
    struct vd_err e;
    assert_int_equal(vd_cluster_count(nodes[i].c, coll, inc, f, r, 5000, on_count, NULL, &e), 0);
    cJSON_Delete(f);
    got_wait();
    return G.status;
}

/* ---- brute force ---- */

static float euclid(const float *a, const float *b)
{
    double s = 0;
    for (uint32_t k = 0; k < dim; k++)
        s += ((double)a[k] - b[k]) * ((double)a[k] - b[k]);
    return (float)sqrt(s);
}

struct ranked {
    uint64_t id;
    float d;
};

static int ranked_cmp(const void *pa, const void *pb)
{
    const struct ranked *a = pa, *b = pb;
    if (a->d != b->d)
        return a->d < b->d ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

/* The live points matching g (-1: all) by distance to q, nearest first; returns how many. */
static size_t brute(const float *q, int g, struct ranked *out)
{
    size_t n = 0;
    for (size_t k = 0; k < n_pts; k++)
        if (pts[k].live && (g < 0 || pts[k].g == g))
            out[n++] = (struct ranked){pts[k].id, euclid(q, pts[k].v)};
    qsort(out, n, sizeof *out, ranked_cmp);
    return n;
}

static struct ranked bf[MAXPTS + 64];

/* The search result G equals the brute force bf[off..off+n): the same ids in order, allowing a
 * swap of two whose distances are within float noise. */
static void expect_brute(size_t off, size_t n, const char *what)
{
    if (G.n != n)
        fail_msg("%s: %zu results, brute force %zu (%s)", what, G.n, n, G.msg);
    for (size_t k = 0; k < n; k++) {
        if (fabsf(G.scores[k] - bf[off + k].d) > 1e-4f)
            fail_msg("%s: result %zu scores %g, brute force %g", what, k, (double)G.scores[k],
                     (double)bf[off + k].d);
        if (G.ids[k] != bf[off + k].id) {
            bool tie = fabsf(bf[off + k].d - G.scores[k]) <= 1e-5f;
            if (!tie)
                fail_msg("%s: result %zu is %llu, brute force %llu", what, k,
                         (unsigned long long)G.ids[k], (unsigned long long)bf[off + k].id);
        }
    }
}

static void start_cluster(void)
{
    char join[32];
    snprintf(join, sizeof join, "127.0.0.1:%u", nodes[0].port);
    start(0, NULL);
    start(1, join);
    start(2, join);
    for (int i = 0; i < N; i++)
        POLL(voters_up(i) == N && leader_of(i) != 0, 15000, "three voters up");
}

static void create(const char *name, uint32_t d, uint32_t rf, uint32_t scan_kb)
{
    struct vd_coll_schema s = {.dim = d,
                               .metric = VD_METRIC_EUCLID,
                               .hnsw_m = 16,
                               .hnsw_ef_construct = 100,
                               .full_scan_threshold_kb = scan_kb,
                               .replication_factor = rf,
                               .write_consistency_factor = rf / 2 + 1};
    snprintf(s.name, sizeof s.name, "%s", name);
    struct vd_err e;
    assert_int_equal(vd_cluster_create_collection(nodes[0].c, &s, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(sync_node(i), 0);
        POLL(has_coll(i, name), 5000, "the collection on every node");
    }
    struct vd_coll *c;
    assert_int_equal(vd_db_coll_get(nodes[0].db, name, &c), 0);
    inc = vd_db_coll_schema(c)->incarnation;
    vd_db_coll_put(c);
}

/* A new point near q (its nearest by far), live on every replica, then deleted (tomb) or
 * rewritten with payload g = new_g on nodes 0 and 1 only: node 2 keeps the stale copy. */
static uint64_t stale_point(const float *q, int g, bool tomb, int new_g)
{
    struct pt *p = &pts[n_pts++];
    p->id = 100000 + n_pts;
    for (uint32_t k = 0; k < dim; k++)
        p->v[k] = q[k] + 1e-3f * (float)(k + 1);
    p->g = g;
    p->live = true;
    uint8_t b[160];
    size_t len = encode(p, false, vd_cluster_node_id(nodes[2].c), b, sizeof b);
    for (int i = 0; i < N; i++)
        apply_on(i, "pts", b, len);
    p->g = new_g;
    p->live = !tomb;
    len = encode(p, tomb, vd_cluster_node_id(nodes[0].c), b, sizeof b);
    apply_on(0, "pts", b, len);
    apply_on(1, "pts", b, len);
    return p->id;
}

/* A new point near q held by nodes 0 and 1 only: node 2 missed its write. */
static uint64_t missed_point(const float *q, int g)
{
    struct pt *p = &pts[n_pts++];
    p->id = 200000 + n_pts;
    for (uint32_t k = 0; k < dim; k++)
        p->v[k] = q[k] - 1e-3f * (float)(k + 1);
    p->g = g;
    p->live = true;
    uint8_t b[160];
    size_t len = encode(p, false, vd_cluster_node_id(nodes[0].c), b, sizeof b);
    apply_on(0, "pts", b, len);
    apply_on(1, "pts", b, len);
    return p->id;
}

static bool in_result(uint64_t id)
{
    for (size_t k = 0; k < G.n; k++)
        if (G.ids[k] == id)
            return true;
    return false;
}

static void test_exact_stale_paging_scroll_count(void **state)
{
    (void)state;
    start_cluster();
    create("pts", DIM, 3, 0);
    dim = DIM;
    n_pts = NPTS;
    for (size_t k = 0; k < NPTS; k++) {
        pts[k].id = 1 + k * 7;
        for (uint32_t d = 0; d < DIM; d++)
            pts[k].v[d] = frand();
        pts[k].g = (int)(k % 3);
        pts[k].live = true;
    }
    write_pts(0, "pts", 0, 150);
    write_pts(1, "pts", 150, NPTS);
    for (int i = 0; i < N; i++)
        POLL(count_local(i, "pts") == NPTS, 10000, "every point on every replica");

    /* exact search through every node, with and without a filter, equals the brute force */
    float q[DIM];
    for (int round = 0; round < 4; round++) {
        for (uint32_t d = 0; d < DIM; d++)
            q[d] = frand();
        for (int i = 0; i < N; i++) {
            int g = round % 2 ? i : -1;
            size_t nb = brute(q, g, bf);
            struct sq s = {.q = q, .limit = 10, .exact = true, .g = g};
            if (search_through(i, "pts", &s))
                fail_msg("search through node %d: %s", i, G.msg);
            expect_brute(0, nb < 10 ? nb : 10, "exact search");
            /* offset and limit page the merged result */
            s.offset = 10;
            s.limit = 7;
            assert_int_equal(search_through(i, "pts", &s), 0);
            expect_brute(10, 7, "the second page");
            /* score_threshold for Euclid is a maximum distance */
            s.offset = 0;
            s.limit = 50;
            s.has_thr = true;
            s.thr = bf[5].d;
            assert_int_equal(search_through(i, "pts", &s), 0);
            expect_brute(0, 6, "search under a distance threshold");
        }
    }
    /* with_payload and with_vector read the records of the result; without them, none */
    struct sq s = {.q = q, .limit = 3, .exact = true, .with_payload = true, .g = -1};
    brute(q, -1, bf);
    assert_int_equal(search_through(1, "pts", &s), 0);
    expect_brute(0, 3, "search with payload");
    for (size_t k = 0; k < 3; k++) {
        char want[32];
        for (size_t j = 0; j < n_pts; j++)
            if (pts[j].id == G.ids[k])
                snprintf(want, sizeof want, "{\"g\":%d}", pts[j].g);
        assert_string_equal(G.payload[k], want);
        assert_int_equal(G.vdim[k], 0);
    }
    s.with_payload = false;
    s.with_vector = true;
    assert_int_equal(search_through(2, "pts", &s), 0);
    expect_brute(0, 3, "search with vector");
    for (size_t k = 0; k < 3; k++) {
        assert_string_equal(G.payload[k], "");
        assert_int_equal(G.vdim[k], DIM);
        for (size_t j = 0; j < n_pts; j++)
            if (pts[j].id == G.ids[k])
                assert_memory_equal(G.vec[k], pts[j].v, sizeof(float) * DIM);
    }
    s.with_vector = false;
    assert_int_equal(search_through(0, "pts", &s), 0);
    assert_int_equal(G.n, 3);
    assert_true(G.vdim[0] == 0 && G.payload[0][0] == 0);

    /* a point deleted on nodes 0 and 1 while node 2 keeps a stale copy, nearest to the query:
     * never a result, whichever replicas answer (node 2 is asked first through itself) */
    for (int i = 0; i < N; i++)
        for (unsigned r = 2; r <= 3; r++) {
            for (uint32_t d = 0; d < DIM; d++)
                q[d] = frand();
            uint64_t dead = stale_point(q, 0, true, 0);
            struct sq st = {.q = q, .limit = 5, .exact = true, .g = -1, .r = r};
            assert_int_equal(search_through(i, "pts", &st), 0);
            if (in_result(dead))
                fail_msg("a deleted point came back from a search through node %d at R %u", i, r);
            size_t nb = brute(q, -1, bf);
            expect_brute(0, nb < 5 ? nb : 5, "search beside a stale copy");
        }
    /* a newer version that no longer matches the filter is not returned although node 2's old
     * version matches */
    for (int i = 0; i < N; i++) {
        for (uint32_t d = 0; d < DIM; d++)
            q[d] = frand();
        uint64_t moved = stale_point(q, 1, false, 2);
        struct sq st = {.q = q, .limit = 5, .exact = true, .g = 1, .r = 2};
        assert_int_equal(search_through(i, "pts", &st), 0);
        if (in_result(moved))
            fail_msg("a point whose newest version does not match came back through node %d", i);
        brute(q, 1, bf);
        expect_brute(0, 5, "filtered search beside a stale copy");
        st.g = 2; /* and it is found under the filter its newest version matches */
        assert_int_equal(search_through(i, "pts", &st), 0);
        assert_true(G.n > 0 && G.ids[0] == moved);
    }

    /* scroll: pages through every node cover every live id exactly once, in id order, with a
     * stale deleted copy on node 2 */
    for (int i = 0; i < N; i++) {
        for (uint32_t d = 0; d < DIM; d++)
            q[d] = frand();
        uint64_t dead = stale_point(q, 0, true, 0);
        uint64_t moved = stale_point(q, 0, false, 1);
        missed_point(q, 0); /* found although node 2 lacks it */
        for (int g = -1; g <= 0; g++) {
            static uint64_t seen[MAXPTS + 64];
            size_t n_seen = 0;
            uint64_t from = 0;
            bool first = true;
            for (int page = 0; page < 1000; page++) {
                if (scroll_through(i, "pts", first ? NULL : &from, 7, g, 2))
                    fail_msg("scroll through node %d: %s", i, G.msg);
                first = false;
                for (size_t k = 0; k < G.n; k++) {
                    if (n_seen)
                        assert_true(G.ids[k] > seen[n_seen - 1]);
                    seen[n_seen++] = G.ids[k];
                }
                if (!G.has_next)
                    break;
                assert_int_equal(G.n, 7);
                from = G.next;
            }
            size_t want = 0;
            for (size_t k = 0; k < n_pts; k++)
                if (pts[k].live && (g < 0 || pts[k].g == g)) {
                    bool found = false;
                    for (size_t j = 0; j < n_seen && !found; j++)
                        found = seen[j] == pts[k].id;
                    if (!found)
                        fail_msg("scroll through node %d missed id %llu", i,
                                 (unsigned long long)pts[k].id);
                    want++;
                }
            if (n_seen != want)
                fail_msg("scroll through node %d (filter %d): %zu ids, %zu live", i, g, n_seen,
                         want);
            for (size_t j = 0; j < n_seen; j++)
                assert_true(seen[j] != dead && (g < 0 || seen[j] != moved));
        }
    }

    /* count: exact, with a stale deleted copy and a stale match on node 2 */
    for (int i = 0; i < N; i++) {
        for (uint32_t d = 0; d < DIM; d++)
            q[d] = frand();
        stale_point(q, 0, true, 0);
        stale_point(q, 2, false, 1);
        missed_point(q, 1);
        for (int g = -1; g <= 2; g++) {
            uint64_t want = 0;
            for (size_t k = 0; k < n_pts; k++)
                want += pts[k].live && (g < 0 || pts[k].g == g);
            if (count_through(i, "pts", g, 2))
                fail_msg("count through node %d: %s", i, G.msg);
            if (G.count != want)
                fail_msg("count through node %d (filter %d): %llu, want %llu", i, g,
                         (unsigned long long)G.count, (unsigned long long)want);
        }
    }

    /* a silent replica (its data workers held: no answer, no reset) costs a search at R 2 one
     * speculative ask of the third after 50 ms, not a failure; each coordinator asks itself and
     * one other first, so silencing each other node in turn meets that case */
    uint64_t slowest = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            if (j == i)
                continue;
            vd_data_pause_workers(nodes[j].c->data, true);
            for (uint32_t d = 0; d < DIM; d++)
                q[d] = frand();
            size_t nb = brute(q, -1, bf);
            struct sq st = {.q = q, .limit = 5, .exact = true, .g = -1, .r = 2};
            uint64_t t0 = ms();
            if (search_through(i, "pts", &st))
                fail_msg("search through node %d with node %d silent: %s", i, j, G.msg);
            uint64_t took = ms() - t0;
            slowest = took > slowest ? took : slowest;
            vd_data_pause_workers(nodes[j].c->data, false);
            assert_true(took < 1000);
            expect_brute(0, nb < 5 ? nb : 5, "search with a silent replica");
        }
    print_message("search at R 2 with a silent replica: at most %llu ms\n",
                  (unsigned long long)slowest);
    assert_true(slowest >= 40); /* the silent replica was asked at least once */
    /* node 2 stopped: R 2 still answers, R 3 fails naming the numbers */
    stop(2);
    {
        brute(q, -1, bf);
        struct sq st = {.q = q, .limit = 5, .exact = true, .g = -1, .r = 2};
        assert_int_equal(search_through(0, "pts", &st), 0);
        expect_brute(0, 5, "search with a replica down");
        st.r = 3;
        st.timeout_ms = 500;
        assert_int_equal(search_through(1, "pts", &st), VD_EUNAVAIL);
        if (!strstr(G.msg, "needs 3 of 3"))
            fail_msg("the message does not name the numbers: %s", G.msg);
    }

    /* an unknown incarnation is not found; a bad filter is refused at the call */
    inc++;
    struct sq bad = {.q = q, .limit = 3, .exact = true, .g = -1};
    assert_int_equal(search_through(0, "pts", &bad), VD_ENOTFOUND);
    inc--;
    cJSON *f = cJSON_Parse("{\"must\":[{\"key\":\"g\",\"match\":{\"nope\":1}}]}");
    struct vd_db_search d = {.query = q, .limit = 3};
    struct vd_cluster_search cq = {.s = &d, .dim = dim, .filter = f};
    struct vd_err e;
    assert_int_not_equal(vd_cluster_search(nodes[0].c, "pts", inc, &cq, on_search, NULL, &e), 0);
    cJSON_Delete(f);
}

/* Graph mode (a scan threshold of 0: never an exact scan; every point linked first) on RF 2,
 * where each replica is asked only for the arcs of one replica set: recall@10 against the brute
 * force, and every match of a rare filter. */
static void test_graph_recall(void **state)
{
    (void)state;
    start_cluster();
    dim = 32;
    create("pts", dim, 2, 0);
    n_pts = MAXPTS;
    for (size_t k = 0; k < MAXPTS; k++) {
        pts[k].id = 1 + k;
        for (uint32_t d = 0; d < dim; d++)
            pts[k].v[d] = frand();
        pts[k].g = k % 100 == 0 ? 7 : (int)(k % 3); /* 7: a rare value */
        pts[k].live = true;
    }
    write_pts(0, "pts", 0, MAXPTS);
    POLL(count_local(0, "pts") + count_local(1, "pts") + count_local(2, "pts") == 2 * MAXPTS, 20000,
         "every point on its two replicas");
    /* every point linked into the graphs: no exact scan of an unlinked tail */
    for (int i = 0; i < N; i++)
        POLL(pending_local(i, "pts") == 0, 60000, "every point linked");
    size_t hit = 0, total = 0;
    for (int qn = 0; qn < 60; qn++) {
        float q[32];
        for (uint32_t d = 0; d < dim; d++)
            q[d] = frand();
        brute(q, -1, bf);
        struct sq s = {.q = q, .limit = 10, .g = -1};
        if (search_through(qn % N, "pts", &s))
            fail_msg("search: %s", G.msg);
        assert_int_equal(G.n, 10);
        for (size_t k = 0; k < 10; k++) {
            total++;
            for (size_t j = 0; j < 10; j++)
                if (G.ids[j] == bf[k].id) {
                    hit++;
                    break;
                }
        }
    }
    /* a filter that 1 % of the points match (the graph is walked, skipping almost every point;
     * fewer than limit found must mean no more): every match, in brute-force order */
    for (int i = 0; i < N; i++) {
        float q[32];
        for (uint32_t d = 0; d < dim; d++)
            q[d] = frand();
        size_t nb = brute(q, 7, bf);
        assert_int_equal(nb, MAXPTS / 100);
        struct sq s = {.q = q, .limit = 40, .g = 7};
        if (search_through(i, "pts", &s))
            fail_msg("search: %s", G.msg);
        expect_brute(0, nb, "a graph search under a rare filter");
    }
    double recall = (double)hit / (double)total;
    print_message("graph search over the ring: recall@10 %.3f over %zu queries\n", recall,
                  total / 10);
    assert_true(recall >= 0.95);
}

int main(void)
{
    pthread_mutex_init(&G.mu, NULL);
    pthread_cond_init(&G.cv, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_exact_stale_paging_scroll_count, setup, teardown),
        cmocka_unit_test_setup_teardown(test_graph_recall, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
