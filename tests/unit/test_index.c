/*
 * Unit tests of the index module: distance kernels against the scalar reference, recall of the
 * HNSW graph against brute force for every metric, deletes and updates, churn, filtered search,
 * persistence, its corruption checks and slot reuse after a load.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "hnsw_int.h"
#include "index_int.h"
#include "vectord/index.h"

static bool small_scale(void)
{
    const char *s = getenv("VD_TEST_SCALE");
    return s && strcmp(s, "small") == 0;
}

/* xorshift64* with a fixed seed: deterministic data */
static uint64_t rng_state;
static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}
static float frand(void) /* [-1, 1) */
{
    return (float)((double)(rnd() >> 11) / 4503599627370496.0 - 1.0);
}
static float gauss(void)
{
    double u = ((double)(rnd() >> 11) + 1.0) / 9007199254740993.0;
    double v = (double)(rnd() >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

/* n embedding-like vectors: clusters in a 12-d latent space, projected by a fixed random
 * matrix into dim dimensions plus a little noise; normalised when cosine. The projection seed is
 * fixed so that base and query sets share it. */
static float *make_data(size_t n, uint32_t dim, enum vd_metric metric, uint64_t seed)
{
    enum { LAT = 12, NC = 32 };
    rng_state = 0xabcdef;
    float *proj = malloc((size_t)LAT * dim * sizeof(float));
    float cent[NC][LAT];
    assert_non_null(proj);
    for (size_t i = 0; i < (size_t)LAT * dim; i++)
        proj[i] = gauss();
    for (int c = 0; c < NC; c++)
        for (int j = 0; j < LAT; j++)
            cent[c][j] = 2.0f * gauss();
    rng_state = seed;
    float *v = malloc(n * dim * sizeof(float));
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) {
        size_t c = rnd() % NC;
        float lat[LAT];
        for (int j = 0; j < LAT; j++)
            lat[j] = cent[c][j] + gauss();
        for (uint32_t d = 0; d < dim; d++) {
            float x = 0.05f * gauss();
            for (int j = 0; j < LAT; j++)
                x += lat[j] * proj[(size_t)j * dim + d];
            v[i * dim + d] = x;
        }
        if (metric == VD_METRIC_COSINE)
            assert_int_equal(vd_vec_normalize(v + i * dim, dim), 0);
    }
    free(proj);
    return v;
}

static float ref_dist(enum vd_metric m, const float *a, const float *b, uint32_t dim)
{
    double s = 0;
    for (uint32_t i = 0; i < dim; i++) {
        double d = (double)a[i] - b[i];
        if (m == VD_METRIC_EUCLID)
            s += d * d;
        else if (m == VD_METRIC_MANHATTAN)
            s += fabs(d);
        else
            s -= (double)a[i] * b[i];
    }
    return (float)s;
}

/* Brute-force top-k ids (indices into v) of q; skip[i] true excludes point i. */
static void brute_topk(enum vd_metric m, const float *v, size_t n, uint32_t dim, const float *q,
                       uint32_t k, const bool *skip, uint64_t *ids)
{
    float *best = malloc(k * sizeof(float));
    for (uint32_t i = 0; i < k; i++) {
        best[i] = INFINITY;
        ids[i] = UINT64_MAX;
    }
    for (size_t i = 0; i < n; i++) {
        if (skip && skip[i])
            continue;
        float d = ref_dist(m, q, v + i * dim, dim);
        if (d >= best[k - 1])
            continue;
        uint32_t j = k - 1;
        while (j > 0 && best[j - 1] > d) {
            best[j] = best[j - 1];
            ids[j] = ids[j - 1];
            j--;
        }
        best[j] = d;
        ids[j] = i;
    }
    free(best);
}

static struct vd_pid num(uint64_t n)
{
    struct vd_pid p;
    memset(&p, 0, sizeof(p));
    p.type = VD_PID_NUM;
    p.u.num = n;
    return p;
}

static struct vd_index *new_index(uint32_t dim, enum vd_metric m, uint32_t efc)
{
    struct vd_index_params p;
    vd_index_params_init(&p, dim, m);
    p.ef_construct = efc;
    p.full_scan_threshold_kb = 0;
    struct vd_index *ix;
    assert_int_equal(vd_index_new(&p, &ix), 0);
    return ix;
}

static void insert_all(struct vd_index *ix, const float *v, size_t n, uint32_t dim, uint64_t base)
{
    for (size_t i = 0; i < n; i++) {
        struct vd_pid id = num(base + i);
        assert_int_equal(vd_index_upsert(ix, &id, v + i * dim, base + i + 1), 0);
    }
}

/* Mean recall@k of the index over nq queries, each asked as *opts (query, k and ef filled in);
 * ids are base + point index. */
static double recall_opts(struct vd_index *ix, enum vd_metric m, const float *v, size_t n,
                          uint32_t dim, const float *qs, size_t nq, uint32_t k, uint32_t ef,
                          const bool *skip, uint64_t base, const struct vd_search_req *opts)
{
    uint64_t *truth = malloc(k * sizeof(*truth));
    struct vd_search_hit *hits = malloc(k * sizeof(*hits));
    size_t good = 0;
    for (size_t qi = 0; qi < nq; qi++) {
        const float *q = qs + qi * dim;
        brute_topk(m, v, n, dim, q, k, skip, truth);
        struct vd_search_req r = *opts;
        r.query = q;
        r.k = k;
        r.ef = ef;
        uint32_t got;
        assert_int_equal(vd_index_search(ix, &r, hits, &got), 0);
        for (uint32_t i = 0; i < got; i++)
            for (uint32_t j = 0; j < k; j++)
                if (truth[j] != UINT64_MAX && hits[i].id.u.num == truth[j] + base) {
                    good++;
                    break;
                }
    }
    free(truth);
    free(hits);
    return (double)good / (double)(nq * k);
}

static double recall(struct vd_index *ix, enum vd_metric m, const float *v, size_t n, uint32_t dim,
                     const float *qs, size_t nq, uint32_t k, uint32_t ef, const bool *skip,
                     uint64_t base)
{
    struct vd_search_req opts = {0};
    return recall_opts(ix, m, v, n, dim, qs, nq, k, ef, skip, base, &opts);
}

/* ---- kernels ------------------------------------------------------------------------------ */

static void check_kernels(const struct vd__kernels *k)
{
    assert_non_null(k);
    const struct vd__kernels *ref = vd__index_kernels_scalar();
    rng_state = 42;
    float *a = malloc((4096 + 8) * sizeof(float)), *b = malloc((4096 + 8) * sizeof(float));
    for (size_t i = 0; i < 4096 + 8; i++) {
        a[i] = frand() * 3.0f;
        b[i] = frand() * 3.0f;
    }
    size_t dims[] = {301, 383, 511, 512, 513, 768, 784, 1023, 1024, 1536, 2047, 3072, 4095, 4096};
    size_t nd = 300 + sizeof(dims) / sizeof(dims[0]);
    for (size_t di = 0; di < nd; di++) {
        size_t n = di < 300 ? di + 1 : dims[di - 300];
        for (size_t off = 0; off < 4; off++) {
            const float *x = a + off, *y = b + (3 - off);
            double mag_dot = 0, mag_l2 = 0, mag_l1 = 0;
            for (size_t i = 0; i < n; i++) {
                mag_dot += fabs((double)x[i] * y[i]);
                mag_l2 += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
                mag_l1 += fabs((double)x[i] - y[i]);
            }
            float tol_dot = (float)(mag_dot * 1e-5 + 1e-6);
            float tol_l2 = (float)(mag_l2 * 1e-5 + 1e-6);
            float tol_l1 = (float)(mag_l1 * 1e-5 + 1e-6);
            if (fabsf(k->dot(x, y, n) - ref->dot(x, y, n)) > tol_dot ||
                fabsf(k->l2(x, y, n) - ref->l2(x, y, n)) > tol_l2 ||
                fabsf(k->l1(x, y, n) - ref->l1(x, y, n)) > tol_l1)
                fail_msg("%s kernels differ from scalar at dim %zu offset %zu: dot %g/%g l2 %g/%g "
                         "l1 %g/%g",
                         k->name, n, off, k->dot(x, y, n), ref->dot(x, y, n), k->l2(x, y, n),
                         ref->l2(x, y, n), k->l1(x, y, n), ref->l1(x, y, n));
        }
    }
    free(a);
    free(b);
}

/* Whether the "flags" line of /proc/cpuinfo lists every flag of want (space separated): what
 * the CPU offers, read apart from the run-time detection the index uses. */
static bool cpu_has(const char *want)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[8192], flags[8194] = "";
    while (f && fgets(line, sizeof(line), f)) {
        if (strncmp(line, "flags", 5) == 0 && strchr(line, ':')) {
            snprintf(flags, sizeof(flags), " %s", strchr(line, ':') + 1);
            flags[strcspn(flags, "\n")] = 0;
            strcat(flags, " ");
            break;
        }
    }
    if (f)
        fclose(f);
    char w[256], *save = NULL;
    snprintf(w, sizeof(w), "%s", want);
    for (char *t = strtok_r(w, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        char needle[64];
        snprintf(needle, sizeof(needle), " %s ", t);
        if (!strstr(flags, needle))
            return false;
    }
    return true;
}

/* A kernel set is checked wherever the CPU can run it: its absence on a CPU that has the
 * instructions (a detection bug, or kernels compiled out) fails, and so does its presence on one
 * that lacks them. On a CPU without them the set can never be chosen, and the test says so.
 * Returns whether the set is there to be checked. */
static bool kernel_set_testable(bool offered, const char *name, const char *flags)
{
    bool has = cpu_has(flags);
    if (has && !offered)
        fail_msg("the CPU has %s but the %s kernels are not offered, so they go untested", flags,
                 name);
    if (!has && offered)
        fail_msg("the %s kernels are offered but /proc/cpuinfo lacks %s", name, flags);
    if (!has)
        print_message("%s kernels not tested: this CPU lacks %s, so they are never chosen here\n",
                      name, flags);
    return has;
}

static void check_kernel_set(const struct vd__kernels *k, const char *name, const char *flags)
{
    if (!kernel_set_testable(k != NULL, name, flags))
        return;
    check_kernels(k);
    print_message("%s kernels match the scalar ones\n", name);
}

static void test_kernels_avx2(void **state)
{
    (void)state;
    check_kernel_set(vd__index_kernels_avx2(), "avx2", "avx2 fma");
}

static void test_kernels_avx512(void **state)
{
    (void)state;
    check_kernel_set(vd__index_kernels_avx512(), "avx512", "avx512f");
}

static void test_kernels_chosen(void **state)
{
    (void)state;
    assert_non_null(vd__index_kernels());
    assert_string_equal(vd_index_kernel_name(), vd__index_kernels()->name);
    check_kernels(vd__index_kernels());
}

/* ---- normalisation ------------------------------------------------------------------------ */

static void test_normalize(void **state)
{
    (void)state;
    float z[3] = {0, 0, 0};
    assert_int_equal(vd_vec_normalize(z, 3), VD_ERANGE);
    float v[4] = {3, 4, 0, 0};
    assert_int_equal(vd_vec_normalize(v, 4), 0);
    assert_float_equal(v[0], 0.6f, 1e-7);
    assert_float_equal(v[1], 0.8f, 1e-7);
    /* idempotent bit for bit on random vectors */
    rng_state = 7;
    for (int t = 0; t < 1000; t++) {
        float a[100], b[100];
        for (int i = 0; i < 100; i++)
            a[i] = frand();
        assert_int_equal(vd_vec_normalize(a, 100), 0);
        memcpy(b, a, sizeof(a));
        assert_int_equal(vd_vec_normalize(b, 100), 0);
        assert_memory_equal(a, b, sizeof(a));
    }
}

/* ---- recall per metric -------------------------------------------------------------------- */

static void check_recall(enum vd_metric m, uint32_t ef)
{
    size_t n = small_scale() ? 2000 : 10000, nq = small_scale() ? 50 : 200;
    uint32_t dim = small_scale() ? 32 : 128;
    float *v = make_data(n, dim, m, 1234 + (uint64_t)m);
    float *q = make_data(nq, dim, m, 999 + (uint64_t)m);
    struct vd_index *ix = new_index(dim, m, 100);
    insert_all(ix, v, n, dim, 0);
    assert_int_equal(vd_index_pending(ix), n);
    while (vd_index_link_pending(ix, 1000) > 0)
        ;
    assert_int_equal(vd_index_pending(ix), 0);
    assert_int_equal(vd_index_count(ix), n);
    double rc = recall(ix, m, v, n, dim, q, nq, 10, ef, NULL, 0);
    print_message("metric %d: recall@10 = %.4f (ef %u)\n", (int)m, rc, ef);
    assert_true(rc >= 0.95);

    /* exact search is exact */
    struct vd_search_hit hits[10];
    uint64_t truth[10];
    uint32_t got;
    for (size_t i = 0; i < 5; i++) {
        struct vd_search_req r = {.query = q + i * dim, .k = 10, .exact = true};
        assert_int_equal(vd_index_search(ix, &r, hits, &got), 0);
        assert_int_equal(got, 10);
        brute_topk(m, v, n, dim, q + i * dim, 10, NULL, truth);
        for (int j = 0; j < 10; j++) {
            float want = ref_dist(m, q + i * dim, v + truth[j] * dim, dim);
            float got_d = ref_dist(m, q + i * dim, v + hits[j].id.u.num * dim, dim);
            assert_true(fabsf(want - got_d) <= 1e-4f * (fabsf(want) + 1.0f));
        }
        /* score semantics */
        float d0 = ref_dist(m, q + i * dim, v + hits[0].id.u.num * dim, dim);
        float want_score = m == VD_METRIC_EUCLID ? sqrtf(d0) : m == VD_METRIC_MANHATTAN ? d0 : -d0;
        assert_true(fabsf(hits[0].score - want_score) <= 1e-3f * (fabsf(want_score) + 1.0f));
    }
    vd_index_free(ix);
    free(v);
    free(q);
}

static void test_recall_cosine(void **state)
{
    (void)state;
    check_recall(VD_METRIC_COSINE, 64);
}
static void test_recall_euclid(void **state)
{
    (void)state;
    check_recall(VD_METRIC_EUCLID, 64);
}
static void test_recall_dot(void **state)
{
    (void)state;
    check_recall(VD_METRIC_DOT, 128);
}
static void test_recall_manhattan(void **state)
{
    (void)state;
    check_recall(VD_METRIC_MANHATTAN, 64);
}

/* The search gathers a node's unvisited neighbours into a buffer sized for the widest list
 * (m = 128: 256 links on layer 0) and prefetches a window of each next vector: both ends of the
 * shapes must still find the neighbours, a vector shorter than one cache line and one far longer
 * than the prefetch window. */
static void check_shape(uint32_t dim, uint32_t m, size_t n, uint32_t ef)
{
    size_t nq = 50;
    float *v = make_data(n, dim, VD_METRIC_COSINE, 4242);
    float *q = make_data(nq, dim, VD_METRIC_COSINE, 4343);
    struct vd_index_params p;
    vd_index_params_init(&p, dim, VD_METRIC_COSINE);
    p.m = m;
    p.ef_construct = 100;
    p.full_scan_threshold_kb = 0;
    struct vd_index *ix;
    assert_int_equal(vd_index_new(&p, &ix), 0);
    insert_all(ix, v, n, dim, 0);
    while (vd_index_link_pending(ix, 1000) > 0)
        ;
    assert_int_equal(vd_index_pending(ix), 0);
    double rc = recall(ix, VD_METRIC_COSINE, v, n, dim, q, nq, 10, ef, NULL, 0);
    print_message("dim %u, m %u: recall@10 = %.4f (ef %u)\n", dim, m, rc, ef);
    assert_true(rc >= 0.95);
    vd_index_free(ix);
    free(v);
    free(q);
}

static void test_recall_shapes(void **state)
{
    (void)state;
    check_shape(4, 128, small_scale() ? 1500 : 3000, 32);
    check_shape(1536, 16, small_scale() ? 500 : 2000, 32);
}

/* ---- visibility, deletes, updates --------------------------------------------------------- */

static void test_unlinked_tail_and_updates(void **state)
{
    (void)state;
    uint32_t dim = 16;
    size_t n = 500;
    float *v = make_data(n, dim, VD_METRIC_EUCLID, 5);
    struct vd_index *ix = new_index(dim, VD_METRIC_EUCLID, 64);
    insert_all(ix, v, n / 2, dim, 0);
    while (vd_index_link_pending(ix, 100) > 0)
        ;
    /* the second half is stored but not linked: still found, exactly */
    insert_all(ix, v + (n / 2) * dim, n - n / 2, dim, n / 2);
    assert_int_equal(vd_index_pending(ix), n - n / 2);
    struct vd_search_hit hits[5];
    uint32_t got;
    for (size_t i = 0; i < n; i += 37) {
        struct vd_search_req r = {.query = v + i * dim, .k = 5, .ef = 64};
        assert_int_equal(vd_index_search(ix, &r, hits, &got), 0);
        assert_int_equal(got, 5);
        assert_int_equal(hits[0].id.u.num, i);
        assert_float_equal(hits[0].score, 0.0f, 1e-6);
    }
    assert_int_equal(vd_index_applied_seq(ix), n);

    /* delete: gone at once */
    struct vd_pid id7 = num(7), id400 = num(400), none = num(99999);
    assert_int_equal(vd_index_delete(ix, &id7, 1000), 0);
    assert_int_equal(vd_index_delete(ix, &id400, 1001), 0);
    assert_int_equal(vd_index_delete(ix, &none, 1002), VD_ENOTFOUND);
    assert_int_equal(vd_index_applied_seq(ix), 1002);
    assert_int_equal(vd_index_count(ix), n - 2);
    float out[16];
    assert_int_equal(vd_index_get_vector(ix, &id7, out), VD_ENOTFOUND);
    struct vd_search_req r7 = {.query = v + 7 * dim, .k = 5, .ef = 64};
    assert_int_equal(vd_index_search(ix, &r7, hits, &got), 0);
    for (uint32_t i = 0; i < got; i++)
        assert_true(hits[i].id.u.num != 7);
    struct vd_search_req r400 = {.query = v + 400 * dim, .k = 5, .ef = 64};
    assert_int_equal(vd_index_search(ix, &r400, hits, &got), 0);
    for (uint32_t i = 0; i < got; i++)
        assert_true(hits[i].id.u.num != 400);

    /* update: point 3 moves onto point 100's vector */
    struct vd_pid id3 = num(3);
    assert_int_equal(vd_index_upsert(ix, &id3, v + 100 * dim, 1003), 0);
    assert_int_equal(vd_index_count(ix), n - 2);
    assert_int_equal(vd_index_get_vector(ix, &id3, out), 0);
    assert_memory_equal(out, v + 100 * dim, dim * sizeof(float));
    struct vd_search_req r3 = {.query = v + 100 * dim, .k = 2, .ef = 64};
    assert_int_equal(vd_index_search(ix, &r3, hits, &got), 0);
    assert_int_equal(got, 2);
    assert_true((hits[0].id.u.num == 3 && hits[1].id.u.num == 100) ||
                (hits[0].id.u.num == 100 && hits[1].id.u.num == 3));
    while (vd_index_link_pending(ix, 100) > 0)
        ;
    assert_int_equal(vd_index_pending(ix), 0);
    assert_int_equal(vd_index_search(ix, &r3, hits, &got), 0);
    assert_int_equal(got, 2);
    assert_true(hits[0].score == 0.0f && hits[1].score == 0.0f);

    /* re-insert deleted id */
    assert_int_equal(vd_index_upsert(ix, &id7, v + 7 * dim, 1004), 0);
    assert_int_equal(vd_index_search(ix, &r7, hits, &got), 0);
    assert_int_equal(hits[0].id.u.num, 7);
    assert_true(vd_index_memory(ix) > n * dim * sizeof(float));
    vd_index_free(ix);
    free(v);
}

static void test_full_scan_threshold(void **state)
{
    (void)state;
    uint32_t dim = 8;
    struct vd_index_params p;
    vd_index_params_init(&p, dim, VD_METRIC_EUCLID);
    assert_int_equal(p.full_scan_threshold_kb, 10000);
    assert_int_equal(p.m, 16);
    struct vd_index *ix;
    assert_int_equal(vd_index_new(&p, &ix), 0);
    float *v = make_data(300, dim, VD_METRIC_EUCLID, 77);
    insert_all(ix, v, 300, dim, 0);
    while (vd_index_link_pending(ix, 1000))
        ;
    /* below the threshold: exact even with ef = k = 1 */
    for (size_t i = 0; i < 300; i++) {
        struct vd_search_hit h;
        uint32_t got;
        struct vd_search_req r = {.query = v + i * dim, .k = 1, .ef = 1};
        assert_int_equal(vd_index_search(ix, &r, &h, &got), 0);
        assert_int_equal(got, 1);
        assert_int_equal(h.id.u.num, i);
    }
    vd_index_free(ix);
    p.dim = 0;
    assert_int_equal(vd_index_new(&p, &ix), VD_ERANGE);
    p.dim = 4;
    p.metric = (enum vd_metric)9;
    assert_int_equal(vd_index_new(&p, &ix), VD_ERANGE);
    free(v);
}

/* ---- churn ---------------------------------------------------------------------------------- */

static void test_churn_recall(void **state)
{
    (void)state;
    size_t n = small_scale() ? 4000 : 50000, nq = small_scale() ? 50 : 200;
    uint32_t dim = small_scale() ? 16 : 32;
    enum vd_metric m = VD_METRIC_EUCLID;
    size_t total = n + n / 2;
    float *v = make_data(total, dim, m, 31337);
    float *q = make_data(nq, dim, m, 4242);
    bool *gone = calloc(total, sizeof(bool));

    struct vd_index *ix = new_index(dim, m, 100);
    insert_all(ix, v, n, dim, 0);
    while (vd_index_link_pending(ix, 1000))
        ;
    /* delete every other point, then insert n/2 new ones (which reuse the freed slots) */
    for (size_t i = 0; i < n; i += 2) {
        struct vd_pid id = num(i);
        assert_int_equal(vd_index_delete(ix, &id, 0), 0);
        gone[i] = true;
    }
    while (vd_index_link_pending(ix, 1000))
        ;
    insert_all(ix, v + n * dim, n / 2, dim, n);
    while (vd_index_link_pending(ix, 1000))
        ;
    assert_int_equal(vd_index_count(ix), n);
    assert_int_equal(atomic_load(&ix->nslots) <= n + n / 8 + 64, true); /* slots were reused */
    double r_churn = recall(ix, m, v, total, dim, q, nq, 10, 64, gone, 0);

    struct vd_index *fresh = new_index(dim, m, 100);
    for (size_t i = 0; i < total; i++) {
        if (gone[i])
            continue;
        struct vd_pid id = num(i);
        assert_int_equal(vd_index_upsert(fresh, &id, v + i * dim, 1), 0);
    }
    while (vd_index_link_pending(fresh, 1000))
        ;
    double r_fresh = recall(fresh, m, v, total, dim, q, nq, 10, 64, gone, 0);
    print_message("churn recall %.4f, fresh build %.4f\n", r_churn, r_fresh);
    /* relative to a fresh build of the same points, and absolute, so that a change that spoils
     * both builds alike cannot pass (measured: 0.9995 and 1.0000 at both scales) */
    assert_true(r_churn >= r_fresh - 0.01);
    assert_true(r_fresh >= 0.97);
    assert_true(r_churn >= 0.97);
    vd_index_free(ix);
    vd_index_free(fresh);
    free(v);
    free(q);
    free(gone);
}

/* ---- filters ------------------------------------------------------------------------------ */

static bool pass_mod(const struct vd_pid *id, uint32_t slot, void *ctx)
{
    (void)slot;
    return id->u.num % *(uint64_t *)ctx == 0;
}

static void test_filter_traversal(void **state)
{
    (void)state;
    size_t n = small_scale() ? 3000 : 10000;
    uint32_t dim = 24;
    float *v = make_data(n, dim, VD_METRIC_COSINE, 11);
    float *q = make_data(20, dim, VD_METRIC_COSINE, 12);
    struct vd_index *ix = new_index(dim, VD_METRIC_COSINE, 64);
    insert_all(ix, v, n, dim, 0);
    while (vd_index_link_pending(ix, 1000))
        ;
    bool *skip = calloc(n, sizeof(bool));
    uint64_t mods[] = {3, 50, n / 20}; /* the last lets only 20 points pass */
    for (size_t mi = 0; mi < 3; mi++) {
        uint64_t mod = mods[mi];
        for (size_t i = 0; i < n; i++)
            skip[i] = i % mod != 0;
        size_t good = 0;
        for (size_t qi = 0; qi < 20; qi++) {
            struct vd_search_hit hits[10];
            uint64_t truth[10];
            uint32_t got;
            struct vd_search_req r = {.query = q + qi * dim, .k = 10, .ef = 64,
                                      .filter = pass_mod, .filter_ctx = &mod};
            assert_int_equal(vd_index_search(ix, &r, hits, &got), 0);
            assert_int_equal(got, 10); /* >= 10 points pass: always 10 results */
            for (uint32_t i = 0; i < got; i++)
                assert_int_equal(hits[i].id.u.num % mod, 0);
            brute_topk(VD_METRIC_COSINE, v, n, dim, q + qi * dim, 10, skip, truth);
            for (uint32_t i = 0; i < got; i++)
                for (int j = 0; j < 10; j++)
                    good += hits[i].id.u.num == truth[j];
        }
        print_message("filter 1/%lu: recall %.3f\n", (unsigned long)mod, good / 200.0);
        assert_true(good >= 180);
    }
    /* fewer than k pass: all of them */
    uint64_t big = n / 4;
    struct vd_search_hit hits[10];
    uint32_t got;
    struct vd_search_req r = {.query = q, .k = 10, .filter = pass_mod, .filter_ctx = &big};
    assert_int_equal(vd_index_search(ix, &r, hits, &got), 0);
    assert_int_equal(got, 4);
    free(skip);
    vd_index_free(ix);
    free(v);
    free(q);
}

struct count_ctx {
    uint64_t mod;
    size_t calls;
};

static bool count_mod(const struct vd_pid *id, uint32_t slot, void *ctx)
{
    (void)slot;
    struct count_ctx *c = ctx;
    c->calls++;
    return id->u.num % c->mod == 0;
}

/* A small filter_estimate (below full_scan_threshold_kb worth of vectors) makes the search exact:
 * the exact scan asks the filter about every point, the graph search only about those it visits. */
static void test_filter_estimate_exact(void **state)
{
    (void)state;
    uint32_t dim = 128;
    size_t n = 24000; /* 12 MB of vectors: above the 10000 KiB default threshold */
    float *v = make_data(n, dim, VD_METRIC_EUCLID, 3);
    struct vd_index_params p;
    vd_index_params_init(&p, dim, VD_METRIC_EUCLID);
    p.ef_construct = 32;
    struct vd_index *ix;
    assert_int_equal(vd_index_new(&p, &ix), 0);
    insert_all(ix, v, n, dim, 0);
    while (vd_index_link_pending(ix, 1000))
        ;
    struct count_ctx cc = {.mod = 100};
    struct vd_search_hit hits[10];
    uint32_t got;
    struct vd_search_req r = {.query = v, .k = 10, .ef = 32, .filter = count_mod, .filter_ctx = &cc};
    assert_int_equal(vd_index_search(ix, &r, hits, &got), 0);
    assert_int_equal(got, 10);
    assert_true(cc.calls < n / 2);
    cc.calls = 0;
    r.filter_estimate = (uint32_t)(n / 100);
    assert_int_equal(vd_index_search(ix, &r, hits, &got), 0);
    assert_int_equal(got, 10);
    assert_int_equal(cc.calls, n);
    vd_index_free(ix);
    free(v);
}

/* Membership in a candidate list, optionally narrowed to odd ids, counting the calls. */
struct member_ctx {
    const bool *in; /* by id */
    size_t n;
    bool odd_only;
    size_t calls;
};

static bool is_member(const struct vd_pid *id, uint32_t slot, void *ctx)
{
    (void)slot;
    struct member_ctx *m = ctx;
    m->calls++;
    if (m->odd_only && id->u.num % 2 == 0)
        return false;
    return id->u.num < m->n && m->in[id->u.num];
}

/* A candidate list scores exactly the listed points: the same hits, scores and order as the
 * exact scan with a filter that passes just those points, for every metric, with listed ids
 * that were deleted, replaced, never stored or listed twice, and with points still pending. */
static void test_candidates_match_exact(void **state)
{
    (void)state;
    enum vd_metric ms[] = {VD_METRIC_COSINE, VD_METRIC_DOT, VD_METRIC_EUCLID,
                           VD_METRIC_MANHATTAN};
    size_t n = 3000, span = n + 300; /* ids at or above n were never stored */
    uint32_t dim = 40;
    for (size_t mi = 0; mi < 4; mi++) {
        enum vd_metric m = ms[mi];
        float *v = make_data(n, dim, m, 21 + mi);
        float *q = make_data(10, dim, m, 31 + mi);
        struct vd_index *ix = new_index(dim, m, 32);
        insert_all(ix, v, n / 2, dim, 0);
        while (vd_index_link_pending(ix, 1000))
            ;
        /* the second half stays pending (scored by the tail scan, not the graph) */
        for (size_t i = n / 2; i < n; i++) {
            struct vd_pid id = num(i);
            assert_int_equal(vd_index_upsert(ix, &id, v + i * dim, i + 1), 0);
        }
        /* deletes, and replacements that move a point to a new (pending) slot */
        for (size_t i = 0; i < n; i += 7) {
            struct vd_pid id = num(i);
            assert_int_equal(vd_index_delete(ix, &id, n + i), 0);
        }
        for (size_t i = 3; i < n; i += 11) {
            struct vd_pid id = num(i);
            assert_int_equal(vd_index_upsert(ix, &id, v + ((i + 1) % n) * dim, 2 * n + i), 0);
        }
        assert_true(vd_index_pending(ix) > 0);
        bool *in = calloc(span, sizeof(bool));
        struct vd_pid cands[400];
        for (int round = 0; round < 20; round++) {
            memset(in, 0, span * sizeof(bool));
            uint32_t nc = round == 0 ? 5 : (uint32_t)(50 + rnd() % 350);
            for (uint32_t i = 0; i < nc; i++) {
                /* every fifth a repeat of an earlier one */
                uint64_t id = i && i % 5 == 0 ? cands[rnd() % i].u.num : rnd() % span;
                cands[i] = num(id);
                in[id] = true;
            }
            uint32_t k = round == 0 ? 10 : 1 + (uint32_t)(rnd() % 40);
            const float *qv = q + (size_t)(round % 10) * dim;
            for (int odd = 0; odd < 2; odd++) {
                struct member_ctx want_ctx = {.in = in, .n = span, .odd_only = odd};
                struct vd_search_req want_r = {.query = qv, .k = k, .exact = true,
                                               .filter = is_member, .filter_ctx = &want_ctx};
                struct vd_search_hit want[40], got[40];
                uint32_t nwant, ngot;
                assert_int_equal(vd_index_search(ix, &want_r, want, &nwant), 0);
                struct member_ctx got_ctx = {.in = in, .n = span, .odd_only = true};
                struct vd_search_req got_r = {.query = qv, .k = k, .ef = 16,
                                              .filter = odd ? is_member : NULL,
                                              .filter_ctx = &got_ctx,
                                              .candidates = cands, .n_candidates = nc};
                assert_int_equal(vd_index_search(ix, &got_r, got, &ngot), 0);
                assert_int_equal(ngot, nwant);
                for (uint32_t i = 0; i < ngot; i++) {
                    assert_int_equal(got[i].id.u.num, want[i].id.u.num);
                    assert_true(got[i].score == want[i].score);
                }
                /* only the listed points were looked at, each once */
                assert_true(got_ctx.calls <= nc);
                if (round == 0 && !odd)
                    assert_true(nwant > 0 && nwant <= 5);
            }
        }
        /* an empty list finds nothing, even with the graph able to */
        struct vd_search_hit h[4];
        uint32_t nh = 9;
        struct vd_search_req er = {.query = q, .k = 4, .candidates = cands, .n_candidates = 0};
        assert_int_equal(vd_index_search(ix, &er, h, &nh), 0);
        assert_int_equal(nh, 0);
        free(in);
        vd_index_free(ix);
        free(v);
        free(q);
    }
}

/* ---- persistence -------------------------------------------------------------------------- */

struct store {
    const float *v;
    uint32_t dim;
    size_t n;
    uint64_t missing; /* id that fetch reports as gone */
};

static int fetch(const struct vd_pid *id, float *out, void *ctx)
{
    struct store *s = ctx;
    if (id->type != VD_PID_NUM || id->u.num >= s->n || id->u.num == s->missing)
        return VD_ENOTFOUND;
    memcpy(out, s->v + id->u.num * s->dim, s->dim * sizeof(float));
    return 0;
}

static void tmp_path(char *buf, size_t n)
{
    snprintf(buf, n, "/tmp/vd_test_index_%d.bin", (int)getpid());
}

static void test_save_load(void **state)
{
    (void)state;
    size_t n = 3000;
    uint32_t dim = 20;
    float *v = make_data(n, dim, VD_METRIC_EUCLID, 21);
    float *q = make_data(50, dim, VD_METRIC_EUCLID, 22);
    struct vd_index *ix = new_index(dim, VD_METRIC_EUCLID, 64);
    insert_all(ix, v, n - 100, dim, 0);
    while (vd_index_link_pending(ix, 1000))
        ;
    insert_all(ix, v + (n - 100) * dim, 100, dim, n - 100); /* 100 stay pending */
    struct vd_pid d5 = num(5);
    assert_int_equal(vd_index_delete(ix, &d5, 5000), 0);
    char path[128];
    tmp_path(path, sizeof(path));
    assert_int_equal(vd_index_save(ix, path), 0);

    struct vd_index_params p = ix->p;
    struct store st = {v, dim, n, UINT64_MAX};
    struct vd_index *lx;
    assert_int_equal(vd_index_load(path, &p, fetch, &st, &lx), 0);
    assert_int_equal(vd_index_count(lx), n - 1);
    assert_int_equal(vd_index_pending(lx), 100);
    assert_int_equal(vd_index_applied_seq(lx), 5000);
    for (size_t i = 0; i < 50; i++) {
        struct vd_search_hit a[10], b[10];
        uint32_t na, nb;
        struct vd_search_req r = {.query = q + i * dim, .k = 10, .ef = 32};
        assert_int_equal(vd_index_search(ix, &r, a, &na), 0);
        assert_int_equal(vd_index_search(lx, &r, b, &nb), 0);
        assert_int_equal(na, nb);
        for (uint32_t j = 0; j < na; j++) {
            assert_int_equal(a[j].id.u.num, b[j].id.u.num);
            assert_true(a[j].score == b[j].score);
        }
    }
    while (vd_index_link_pending(lx, 1000))
        ;
    assert_int_equal(vd_index_pending(lx), 0);
    vd_index_free(lx);

    /* a point gone from storage is dropped and its links repaired */
    st.missing = 10;
    assert_int_equal(vd_index_load(path, &p, fetch, &st, &lx), 0);
    assert_int_equal(vd_index_count(lx), n - 2);
    struct vd_pid i10 = num(10);
    float out[20];
    assert_int_equal(vd_index_get_vector(lx, &i10, out), VD_ENOTFOUND);
    bool *skip = calloc(n, sizeof(bool));
    skip[5] = skip[10] = true;
    while (vd_index_link_pending(lx, 1000))
        ;
    double rc = recall(lx, VD_METRIC_EUCLID, v, n, dim, q, 50, 10, 64, skip, 0);
    assert_true(rc >= 0.95);
    vd_index_free(lx);
    free(skip);

    /* mismatched params */
    p.dim = 21;
    assert_int_equal(vd_index_load(path, &p, fetch, &st, &lx), VD_ECORRUPT);
    p.dim = dim;
    p.metric = VD_METRIC_COSINE;
    assert_int_equal(vd_index_load(path, &p, fetch, &st, &lx), VD_ECORRUPT);
    p.metric = VD_METRIC_EUCLID;

    /* truncations and flipped bytes */
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)len);
    assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    long cuts[] = {0, 1, 8, 47, 48, 60, len / 2, len - 13, len - 12, len - 4, len - 1};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        f = fopen(path, "wb");
        fwrite(buf, 1, (size_t)cuts[i], f);
        fclose(f);
        assert_int_equal(vd_index_load(path, &p, fetch, &st, &lx), VD_ECORRUPT);
    }
    unlink(path);
    assert_int_equal(vd_index_load(path, &p, fetch, &st, &lx), VD_ENOTFOUND);
    free(buf);
    vd_index_free(ix);
    free(v);
    free(q);
}

static void test_byte_flips(void **state)
{
    (void)state;
    size_t n = 500;
    uint32_t dim = 8;
    float *v = make_data(n, dim, VD_METRIC_DOT, 23);
    struct vd_index *ix = new_index(dim, VD_METRIC_DOT, 32);
    insert_all(ix, v, n, dim, 0);
    while (vd_index_link_pending(ix, 1000))
        ;
    char path[128];
    tmp_path(path, sizeof(path));
    assert_int_equal(vd_index_save(ix, path), 0);
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)len);
    assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    struct store st = {v, dim, n, UINT64_MAX};
    struct vd_index_params p = ix->p;
    rng_state = 1;
    for (int i = 0; i < 300; i++) {
        size_t pos = rnd() % (size_t)len;
        uint8_t bit = (uint8_t)(1u << (rnd() % 8));
        buf[pos] ^= bit;
        f = fopen(path, "wb");
        fwrite(buf, 1, (size_t)len, f);
        fclose(f);
        struct vd_index *lx = NULL;
        int rc = vd_index_load(path, &p, fetch, &st, &lx);
        if (rc != VD_ECORRUPT)
            fail_msg("flip at %zu accepted (rc %d)", pos, rc);
        buf[pos] ^= bit;
    }
    f = fopen(path, "wb");
    fwrite(buf, 1, (size_t)len, f);
    fclose(f);
    struct vd_index *lx;
    assert_int_equal(vd_index_load(path, &p, fetch, &st, &lx), 0);
    assert_int_equal(vd_index_count(lx), n);
    vd_index_free(lx);
    unlink(path);
    free(buf);
    vd_index_free(ix);
    free(v);
}

/* fetch for the reuse test: ids = 10k + 7 are gone from storage */
static int fetch_sparse(const struct vd_pid *id, float *out, void *ctx)
{
    if (id->type == VD_PID_NUM && id->u.num % 10 == 7)
        return VD_ENOTFOUND;
    return fetch(id, out, ctx);
}

/*
 * A saved graph with free slots between linked ones (left by a repair), tombstones and points
 * gone from storage must come back with every slot where the file put it: the free slots go to
 * the free list, and points upserted afterwards take those (or new ones), never a loaded slot.
 * Run under LeakSanitizer this also proves no upper-layer link array is dropped on the way.
 */
static void test_load_free_slots_reuse(void **state)
{
    (void)state;
    size_t n = 600, extra = 300;
    uint32_t dim = 8;
    float *v = make_data(n + extra, dim, VD_METRIC_EUCLID, 31);
    struct vd_index *ix = new_index(dim, VD_METRIC_EUCLID, 32);
    insert_all(ix, v, n, dim, 0);
    while (vd_index_link_pending(ix, 1000))
        ;
    bool *gone = calloc(n + extra, sizeof(bool));
    uint64_t seq = n + 1;
    for (size_t i = 0; i < n; i += 3) { /* a third: the next link pass repairs and frees them */
        struct vd_pid id = num(i);
        assert_int_equal(vd_index_delete(ix, &id, seq++), 0);
        gone[i] = true;
    }
    vd_index_link_pending(ix, 1);
    assert_int_equal(atomic_load(&ix->tomb), 0);
    assert_true(ix->nfree >= n / 3);
    for (size_t i = 1; i < 40; i += 3) { /* too few to repair: saved as tombstones */
        struct vd_pid id = num(i);
        assert_int_equal(vd_index_delete(ix, &id, seq++), 0);
        gone[i] = true;
    }
    assert_true(atomic_load(&ix->tomb) > 0);
    char path[128];
    tmp_path(path, sizeof(path));
    assert_int_equal(vd_index_save(ix, path), 0);

    struct vd_index_params p = ix->p;
    struct store st = {v, dim, n, UINT64_MAX};
    struct vd_index *lx;
    assert_int_equal(vd_index_load(path, &p, fetch_sparse, &st, &lx), 0);
    size_t live = 0;
    for (size_t i = 0; i < n; i++) {
        if (i % 10 == 7)
            gone[i] = true;
        live += !gone[i];
    }
    assert_int_equal(vd_index_count(lx), live);
    /* every slot where the file put it; the dropped ones are all free again */
    assert_int_equal(atomic_load(&lx->nslots), atomic_load(&ix->nslots));
    assert_int_equal(atomic_load(&lx->tomb), 0);
    assert_int_equal(lx->nfree + live, atomic_load(&lx->nslots));

    st.n = n + extra;
    insert_all(lx, v + n * dim, extra, dim, n);
    while (vd_index_link_pending(lx, 1000))
        ;
    assert_int_equal(vd_index_pending(lx), 0);
    assert_int_equal(vd_index_count(lx), live + extra);
    float out[8];
    for (size_t i = 0; i < n + extra; i++) {
        struct vd_pid id = num(i);
        if (gone[i]) {
            assert_int_equal(vd_index_get_vector(lx, &id, out), VD_ENOTFOUND);
            continue;
        }
        assert_int_equal(vd_index_get_vector(lx, &id, out), 0);
        assert_memory_equal(out, v + i * dim, sizeof(out));
    }
    float *q = make_data(50, dim, VD_METRIC_EUCLID, 32);
    double rc = recall(lx, VD_METRIC_EUCLID, v, n + extra, dim, q, 50, 10, 64, gone, 0);
    assert_true(rc >= 0.95);
    vd_index_free(lx);
    unlink(path);
    vd_index_free(ix);
    free(q);
    free(gone);
    free(v);
}


/* ---- int8 quantization -------------------------------------------------------------------- */

/* Code kernels are exact integer sums: every variant must equal the scalar one bit for bit, on
 * every length up to 300 (all tail shapes), long vectors, unaligned starts and the extreme codes
 * 0 and 255 (where a saturating or sign-confused kernel would go wrong). */
static void check_code_kernels(const struct vd__code_kernels *k)
{
    assert_non_null(k);
    const struct vd__code_kernels *ref = vd__index_code_kernels_scalar();
    size_t max = 65536 + 8;
    uint8_t *a = malloc(max), *b = malloc(max);
    assert_non_null(a);
    assert_non_null(b);
    rng_state = 4242;
    for (size_t i = 0; i < max; i++) {
        a[i] = (uint8_t)rnd();
        b[i] = (uint8_t)(rnd() >> 17);
    }
    size_t dims[] = {511, 512, 513, 768, 1023, 1536, 3072, 4099, 65536};
    size_t nd = 300 + sizeof(dims) / sizeof(dims[0]);
    for (int pass = 0; pass < 3; pass++) {
        if (pass == 1) {
            memset(a, 255, max);
            memset(b, 255, max);
        } else if (pass == 2) {
            memset(b, 0, max);
        }
        for (size_t di = 0; di < nd; di++) {
            size_t n = di < 300 ? di + 1 : dims[di - 300];
            for (size_t off = 0; off < 4; off++) {
                const uint8_t *x = a + off, *y = b + (3 - off);
                if (k->dot(x, y, n) != ref->dot(x, y, n) || k->l1(x, y, n) != ref->l1(x, y, n))
                    fail_msg("%s code kernels differ from scalar at n %zu offset %zu pass %d: "
                             "dot %llu/%llu l1 %llu/%llu",
                             k->name, n, off, pass, (unsigned long long)k->dot(x, y, n),
                             (unsigned long long)ref->dot(x, y, n),
                             (unsigned long long)k->l1(x, y, n),
                             (unsigned long long)ref->l1(x, y, n));
            }
        }
    }
    /* the scalar reference itself, on values small enough to check by hand */
    uint8_t x[3] = {255, 0, 7}, y[3] = {255, 9, 2};
    assert_int_equal(ref->dot(x, y, 3), 255 * 255 + 14);
    assert_int_equal(ref->l1(x, y, 3), 14);
    free(a);
    free(b);
}

static void check_code_kernel_set(const struct vd__code_kernels *k, const char *name,
                                  const char *flags)
{
    if (!kernel_set_testable(k != NULL, name, flags))
        return;
    check_code_kernels(k);
    print_message("%s code kernels match the scalar ones\n", name);
}

static void test_code_kernels_avx2(void **state)
{
    (void)state;
    check_code_kernel_set(vd__index_code_kernels_avx2(), "avx2", "avx2 fma");
}

static void test_code_kernels_avx512bw(void **state)
{
    (void)state;
    check_code_kernel_set(vd__index_code_kernels_avx512bw(), "avx512bw", "avx512f avx512bw");
}

static void test_code_kernels_vnni(void **state)
{
    (void)state;
    check_code_kernel_set(vd__index_code_kernels_vnni(), "avx512vnni",
                          "avx512f avx512bw avx512_vnni");
}

static void test_code_kernels_chosen(void **state)
{
    (void)state;
    assert_string_equal(vd_index_code_kernel_name(), vd__index_code_kernels()->name);
    check_code_kernels(vd__index_code_kernels());
}

static struct vd_index *new_quant_index(uint32_t dim, enum vd_metric m, uint32_t efc, float qt)
{
    struct vd_index_params p;
    vd_index_params_init(&p, dim, m);
    p.ef_construct = efc;
    p.full_scan_threshold_kb = 0;
    p.quant.enabled = true;
    p.quant.quantile = qt;
    struct vd_index *ix;
    assert_int_equal(vd_index_new(&p, &ix), 0);
    return ix;
}

/* Recall floors on fixed seeds for the graph walked on int8 codes: rescoring the beam within 0.01
 * of the float walk at the same ef, rescoring 2k candidates and codes alone still useful, and
 * ignore = the float walk. Scores without rescoring are the codes' estimate in the same units as
 * the exact ones (a squared or negated score would be far off). */
static void check_quant_recall(enum vd_metric m, double floor_rescored, double floor_raw,
                               float max_score_err)
{
    size_t n = small_scale() ? 3000 : 10000, nq = small_scale() ? 50 : 200;
    uint32_t dim = small_scale() ? 32 : 128;
    float *v = make_data(n, dim, m, 1234 + (uint64_t)m);
    float *q = make_data(nq, dim, m, 999 + (uint64_t)m);
    struct vd_index *ix = new_quant_index(dim, m, 100, 0.99f);
    insert_all(ix, v, n, dim, 0);
    assert_false(vd_index_quant_ready(ix)); /* trained by the linker, not by the upserts */
    while (vd_index_link_pending(ix, 1000) > 0)
        ;
    assert_true(vd_index_quant_ready(ix));
    struct vd_search_req plain = {0}, raw = {.quant_no_rescore = true},
                         ign = {.quant_ignore = true}, over = {.oversampling = 2.0f};
    double r_float = recall_opts(ix, m, v, n, dim, q, nq, 10, 64, NULL, 0, &ign);
    double r_res = recall_opts(ix, m, v, n, dim, q, nq, 10, 64, NULL, 0, &plain);
    double r_over = recall_opts(ix, m, v, n, dim, q, nq, 10, 64, NULL, 0, &over);
    double r_raw = recall_opts(ix, m, v, n, dim, q, nq, 10, 64, NULL, 0, &raw);
    print_message("metric %d int8 (%s): recall@10 at ef 64: float %.4f, rescored %.4f, "
                  "oversampling 2 %.4f, codes only %.4f\n",
                  (int)m, vd_index_code_kernel_name(), r_float, r_res, r_over, r_raw);
    assert_true(r_float >= 0.95);
    assert_true(r_res >= floor_rescored && r_res >= r_float - 0.01);
    assert_true(r_over >= 0.94);
    assert_true(r_raw >= floor_raw);
    /* rescored scores are exact; code scores are near them */
    struct vd_search_hit h[10];
    uint32_t got;
    float worst = 0.0f;
    for (size_t i = 0; i < 5; i++) {
        const float *qq = q + i * dim;
        struct vd_search_req r = {.query = qq, .k = 10, .ef = 64};
        assert_int_equal(vd_index_search(ix, &r, h, &got), 0);
        assert_int_equal(got, 10);
        for (uint32_t j = 0; j < got; j++) {
            float d = ref_dist(m, qq, v + h[j].id.u.num * dim, dim);
            float want = m == VD_METRIC_EUCLID ? sqrtf(d) : m == VD_METRIC_MANHATTAN ? d : -d;
            assert_true(fabsf(h[j].score - want) <= 1e-3f * (fabsf(want) + 1.0f));
            if (j)
                assert_true(m == VD_METRIC_EUCLID || m == VD_METRIC_MANHATTAN
                                ? h[j].score >= h[j - 1].score
                                : h[j].score <= h[j - 1].score);
        }
        r.quant_no_rescore = true;
        assert_int_equal(vd_index_search(ix, &r, h, &got), 0);
        for (uint32_t j = 0; j < got; j++) {
            float d = ref_dist(m, qq, v + h[j].id.u.num * dim, dim);
            float want = m == VD_METRIC_EUCLID ? sqrtf(d) : m == VD_METRIC_MANHATTAN ? d : -d;
            float err = fabsf(h[j].score - want) / (fabsf(want) + 1.0f);
            if (err > worst)
                worst = err;
        }
    }
    print_message("worst relative error of code scores: %.4f\n", worst);
    assert_true(worst <= max_score_err);
    /* the codes (a byte per value and a 16-byte header) come on top of the floats */
    assert_true(vd_index_vector_memory(ix) >= (size_t)n * (dim * 5 + 16));
    vd_index_free(ix);
    free(v);
    free(q);
}

static void test_quant_recall_cosine(void **state)
{
    (void)state;
    check_quant_recall(VD_METRIC_COSINE, 0.99, 0.82, 0.25f);
}

static void test_quant_recall_euclid(void **state)
{
    (void)state;
    check_quant_recall(VD_METRIC_EUCLID, 0.99, 0.92, 0.25f);
}

static void test_quant_recall_dot(void **state)
{
    (void)state;
    check_quant_recall(VD_METRIC_DOT, 0.95, 0.82, 0.25f);
}

static void test_quant_recall_manhattan(void **state)
{
    (void)state;
    check_quant_recall(VD_METRIC_MANHATTAN, 0.99, 0.92, 0.25f);
}

/* Below VD_INDEX_QUANT_TRAIN_MIN points nothing is trained and searches walk the floats; a
 * quantile outside 0.5..1 is refused at creation and on change. */
static void test_quant_untrained_and_params(void **state)
{
    (void)state;
    uint32_t dim = 16;
    size_t n = VD_INDEX_QUANT_TRAIN_MIN - 1;
    float *v = make_data(n, dim, VD_METRIC_EUCLID, 5);
    struct vd_index *ix = new_quant_index(dim, VD_METRIC_EUCLID, 64, 0.0f);
    insert_all(ix, v, n, dim, 0);
    while (vd_index_link_pending(ix, 1000) > 0)
        ;
    assert_false(vd_index_quant_ready(ix));
    double rc = recall(ix, VD_METRIC_EUCLID, v, n, dim, v, 20, 10, 64, NULL, 0);
    assert_true(rc >= 0.95);
    struct vd_index_quant bad = {.enabled = true, .quantile = 0.3f};
    assert_int_equal(vd_index_set_quant(ix, &bad), VD_ERANGE);
    bad.quantile = 1.5f;
    assert_int_equal(vd_index_set_quant(ix, &bad), VD_ERANGE);
    vd_index_free(ix);
    struct vd_index_params p;
    vd_index_params_init(&p, dim, VD_METRIC_EUCLID);
    p.quant = bad;
    assert_int_equal(vd_index_new(&p, &ix), VD_ERANGE);
    p.quant.quantile = 0.49f;
    assert_int_equal(vd_index_new(&p, &ix), VD_ERANGE);
    p.quant.quantile = 0.5f;
    assert_int_equal(vd_index_new(&p, &ix), 0);
    vd_index_free(ix);
    free(v);
}

/* Enabling quantization on a populated index quantizes every stored point at once; changing the
 * quantile retrains; disabling returns to the float walk with exactly the float results. */
static void test_quant_set_live(void **state)
{
    (void)state;
    size_t n = 4000, nq = 50;
    uint32_t dim = 64;
    float *v = make_data(n, dim, VD_METRIC_COSINE, 31);
    float *q = make_data(nq, dim, VD_METRIC_COSINE, 32);
    struct vd_index *ix = new_index(dim, VD_METRIC_COSINE, 100);
    insert_all(ix, v, n, dim, 0);
    while (vd_index_link_pending(ix, 1000) > 0)
        ;
    struct vd_search_hit before[10], after[10];
    uint32_t nb, na;
    struct vd_search_req r = {.query = q, .k = 10, .ef = 64};
    assert_int_equal(vd_index_search(ix, &r, before, &nb), 0);
    size_t vm_float = vd_index_vector_memory(ix);
    struct vd_index_quant on = {.enabled = true, .quantile = 0.99f};
    assert_int_equal(vd_index_set_quant(ix, &on), 0);
    assert_true(vd_index_quant_ready(ix));
    assert_true(vd_index_vector_memory(ix) > vm_float);
    double r1 = recall(ix, VD_METRIC_COSINE, v, n, dim, q, nq, 10, 64, NULL, 0);
    float lo1 = ix->qlo;
    on.quantile = 0.9f;
    assert_int_equal(vd_index_set_quant(ix, &on), 0);
    assert_true(vd_index_quant_ready(ix));
    assert_true(ix->qlo > lo1); /* a narrower range */
    double r2 = recall(ix, VD_METRIC_COSINE, v, n, dim, q, nq, 10, 64, NULL, 0);
    print_message("enabled on a populated index: recall %.4f (q 0.99), %.4f (q 0.9)\n", r1, r2);
    assert_true(r1 >= 0.97 && r2 >= 0.95);
    /* points upserted while quantized get codes */
    float *extra = make_data(500, dim, VD_METRIC_COSINE, 33);
    insert_all(ix, extra, 500, dim, n);
    while (vd_index_link_pending(ix, 1000) > 0)
        ;
    struct vd_search_req self = {.query = extra + 7 * dim, .k = 1, .ef = 64};
    assert_int_equal(vd_index_search(ix, &self, after, &na), 0);
    assert_int_equal(na, 1);
    assert_int_equal(after[0].id.u.num, n + 7);
    struct vd_index_quant off = {0};
    assert_int_equal(vd_index_set_quant(ix, &off), 0);
    assert_false(vd_index_quant_ready(ix));
    assert_true(vd_index_vector_memory(ix) < vm_float * 2);
    vd_index_free(ix);
    free(v);
    free(q);
    free(extra);
}

/* A quantized index saves its range: the loaded index answers exactly as the saved one, with and
 * without rescoring. A file saved without quantization loads into a quantized index (trained at
 * load) and the other way round. */
static void test_quant_save_load(void **state)
{
    (void)state;
    size_t n = 3000;
    uint32_t dim = 24;
    float *v = make_data(n, dim, VD_METRIC_DOT, 41);
    float *q = make_data(30, dim, VD_METRIC_DOT, 42);
    struct vd_index *ix = new_quant_index(dim, VD_METRIC_DOT, 64, 0.95f);
    insert_all(ix, v, n, dim, 0);
    while (vd_index_link_pending(ix, 1000))
        ;
    assert_true(vd_index_quant_ready(ix));
    char path[128];
    tmp_path(path, sizeof(path));
    assert_int_equal(vd_index_save(ix, path), 0);
    struct vd_index_params p = ix->p;
    struct store st = {v, dim, n, UINT64_MAX};
    struct vd_index *lx;
    assert_int_equal(vd_index_load(path, &p, fetch, &st, &lx), 0);
    assert_true(vd_index_quant_ready(lx));
    assert_true(lx->qlo == ix->qlo && lx->qalpha == ix->qalpha);
    for (int mode = 0; mode < 2; mode++) {
        for (size_t i = 0; i < 30; i++) {
            struct vd_search_hit a[10], b[10];
            uint32_t na, nb;
            struct vd_search_req r = {.query = q + i * dim, .k = 10, .ef = 32,
                                      .quant_no_rescore = mode == 1};
            assert_int_equal(vd_index_search(ix, &r, a, &na), 0);
            assert_int_equal(vd_index_search(lx, &r, b, &nb), 0);
            assert_int_equal(na, nb);
            for (uint32_t j = 0; j < na; j++) {
                assert_int_equal(a[j].id.u.num, b[j].id.u.num);
                assert_true(a[j].score == b[j].score);
            }
        }
    }
    vd_index_free(lx);
    /* a quantile changed since the save: trained again at load, not the saved range */
    p.quant.quantile = 0.9f;
    assert_int_equal(vd_index_load(path, &p, fetch, &st, &lx), 0);
    assert_true(vd_index_quant_ready(lx));
    assert_true(lx->qlo > ix->qlo && lx->qtrained_q == 0.9f);
    vd_index_free(lx);
    p.quant.quantile = 0.95f;
    /* the same file into an unquantized index: floats only */
    p.quant.enabled = false;
    assert_int_equal(vd_index_load(path, &p, fetch, &st, &lx), 0);
    assert_false(vd_index_quant_ready(lx));
    assert_int_equal(vd_index_count(lx), n);
    vd_index_free(lx);
    vd_index_free(ix);
    /* an unquantized file into a quantized index: trained at load */
    struct vd_index *fx = new_index(dim, VD_METRIC_DOT, 64);
    insert_all(fx, v, n, dim, 0);
    while (vd_index_link_pending(fx, 1000))
        ;
    assert_int_equal(vd_index_save(fx, path), 0);
    p.quant.enabled = true;
    assert_int_equal(vd_index_load(path, &p, fetch, &st, &lx), 0);
    assert_true(vd_index_quant_ready(lx));
    double rc = recall(lx, VD_METRIC_DOT, v, n, dim, q, 30, 10, 64, NULL, 0);
    assert_true(rc >= 0.9);
    vd_index_free(lx);
    vd_index_free(fx);
    unlink(path);
    free(v);
    free(q);
}

/* ---- int8 with the floats on disk (always_ram false) -------------------------------------- */

/* The storage stand-in of an index whose floats stay on disk: the vectors of ids 0..n-1 except
 * `missing` (deleted in storage, not yet in the index); counts reads and open snapshots. */
struct disk {
    const float *v;
    uint32_t dim;
    size_t n;
    uint64_t missing;
    size_t gets;
    int open;
};

static int disk_begin(void *ctx, void **rd)
{
    struct disk *d = ctx;
    d->open++;
    *rd = d;
    return 0;
}

static int disk_get(void *ctx, void *rd, const struct vd_pid *id, const float **out)
{
    struct disk *d = ctx;
    assert_ptr_equal(rd, d);
    assert_true(d->open == 1);
    d->gets++;
    if (id->type != VD_PID_NUM || id->u.num >= d->n || id->u.num == d->missing)
        return VD_ENOTFOUND;
    *out = d->v + id->u.num * d->dim;
    return 0;
}

static void disk_end(void *ctx, void *rd)
{
    struct disk *d = ctx;
    (void)rd;
    d->open--;
}

static struct vd_index_params disk_params(uint32_t dim, enum vd_metric m, struct disk *d)
{
    struct vd_index_params p;
    vd_index_params_init(&p, dim, m);
    p.ef_construct = 100;
    p.full_scan_threshold_kb = 0;
    p.quant.enabled = true;
    p.quant.quantile = 0.99f;
    p.quant.always_ram = false;
    p.src = (struct vd_index_source){disk_begin, disk_get, disk_end, d};
    return p;
}

/* Bytes of the code rows of n points (what a disk index holds of its vectors), chunk-rounded. */
static size_t code_bytes(const struct vd_index *ix, size_t n)
{
    size_t chunk = (size_t)1 << ix->chunk_shift;
    return (n + chunk - 1) / chunk * chunk * ix->code_size;
}

/* always_ram false: once trained, the index holds the codes and no float; it is linked on the
 * codes, and rescoring (reading only the rescored candidates from the source) brings recall
 * within 0.01 of a float index at the same ef; exact scans read every point and are exact; a
 * point the source no longer has is left out; the unlinked tail is found; get_vector reads the
 * source. Fixed seeds. */
static void check_quant_disk(enum vd_metric m)
{
    size_t n = small_scale() ? 3000 : 10000, nq = small_scale() ? 50 : 200;
    uint32_t dim = small_scale() ? 32 : 128;
    float *v = make_data(n, dim, m, 2234 + (uint64_t)m);
    float *q = make_data(nq, dim, m, 1999 + (uint64_t)m);
    struct disk d = {v, dim, n, UINT64_MAX, 0, 0};
    struct vd_index_params p = disk_params(dim, m, &d);
    struct vd_index *ix, *fx = new_index(dim, m, 100);
    assert_int_equal(vd_index_new(&p, &ix), 0);
    insert_all(ix, v, n, dim, 0);
    insert_all(fx, v, n, dim, 0);
    while (vd_index_link_pending(ix, 1000) > 0)
        ;
    while (vd_index_link_pending(fx, 1000) > 0)
        ;
    assert_true(vd_index_quant_ready(ix));
    assert_int_equal(d.open, 0);
    /* no float left in memory: the codes are all the vector bytes it holds */
    assert_int_equal(vd_index_vector_memory(ix), code_bytes(ix, n));
    assert_true(ix->link_off == 0); /* blocks without a vector */
    struct vd_search_req plain = {0}, over = {.oversampling = 2.0f}, ign = {.quant_ignore = true};
    double r_float = recall(fx, m, v, n, dim, q, nq, 10, 64, NULL, 0);
    double r_disk = recall_opts(ix, m, v, n, dim, q, nq, 10, 64, NULL, 0, &plain);
    /* at a small ef too, where the recall is below 1 and a worse graph or walk would show */
    double r_float16 = recall(fx, m, v, n, dim, q, nq, 10, 16, NULL, 0);
    double r_disk16 = recall_opts(ix, m, v, n, dim, q, nq, 10, 16, NULL, 0, &plain);
    /* the same walk with the floats in memory (always_ram true): the same recall at small ef,
     * where the codes' walk is below the float walk on these clustered vectors */
    struct vd_index_params pr = p;
    pr.quant.always_ram = true;
    struct vd_index *rx;
    assert_int_equal(vd_index_new(&pr, &rx), 0);
    insert_all(rx, v, n, dim, 0);
    while (vd_index_link_pending(rx, 1000) > 0)
        ;
    double r_ram16 = recall_opts(rx, m, v, n, dim, q, nq, 10, 16, NULL, 0, &plain);
    vd_index_free(rx);
    double r_over = recall_opts(ix, m, v, n, dim, q, nq, 10, 64, NULL, 0, &over);
    double r_ign = recall_opts(ix, m, v, n, dim, q, nq, 10, 64, NULL, 0, &ign);
    print_message("metric %d floats on disk: recall@10 at ef 64: float index %.4f, int8 rescored "
                  "%.4f, oversampling 2 %.4f, ignore %.4f; at ef 16: float %.4f, int8 floats in "
                  "memory %.4f, int8 floats on disk %.4f\n",
                  (int)m, r_float, r_disk, r_over, r_ign, r_float16, r_ram16, r_disk16);
    assert_true(r_disk >= r_float - 0.01);
    assert_true(r_disk16 >= r_ram16 - 0.01);
    assert_true(r_over >= 0.93);
    assert_true(r_ign == r_disk); /* no float walk without floats: ignore walks the codes */
    /* rescoring reads only the rescored candidates, and the scores are exact */
    struct vd_search_hit h[10];
    uint32_t got;
    d.gets = 0;
    struct vd_search_req r = {.query = q, .k = 10, .ef = 64};
    assert_int_equal(vd_index_search(ix, &r, h, &got), 0);
    assert_int_equal(got, 10);
    assert_true(d.gets <= 64 && d.gets >= 10);
    for (uint32_t j = 0; j < got; j++) {
        float dd = ref_dist(m, q, v + h[j].id.u.num * dim, dim);
        float want = m == VD_METRIC_EUCLID ? sqrtf(dd) : m == VD_METRIC_MANHATTAN ? dd : -dd;
        assert_true(fabsf(h[j].score - want) <= 1e-3f * (fabsf(want) + 1.0f));
    }
    d.gets = 0;
    r.oversampling = 2.0f;
    assert_int_equal(vd_index_search(ix, &r, h, &got), 0);
    assert_true(d.gets <= 20);
    /* exact: every point read, the brute-force answer */
    uint64_t truth[10];
    brute_topk(m, v, n, dim, q, 10, NULL, truth);
    struct vd_search_req ex = {.query = q, .k = 10, .exact = true};
    d.gets = 0;
    assert_int_equal(vd_index_search(ix, &ex, h, &got), 0);
    assert_int_equal(d.gets, n);
    assert_int_equal(got, 10);
    for (uint32_t j = 0; j < got; j++)
        assert_int_equal(h[j].id.u.num, truth[j]);
    /* deleted in storage, not yet in the index: never returned */
    d.missing = truth[0];
    assert_int_equal(vd_index_search(ix, &ex, h, &got), 0);
    assert_int_equal(h[0].id.u.num, truth[1]);
    r.oversampling = 0.0f;
    assert_int_equal(vd_index_search(ix, &r, h, &got), 0);
    for (uint32_t j = 0; j < got; j++)
        assert_true(h[j].id.u.num != truth[0]);
    d.missing = UINT64_MAX;
    /* get_vector reads the source */
    float out[128];
    struct vd_pid id5 = num(5);
    assert_int_equal(vd_index_get_vector(ix, &id5, out), 0);
    assert_memory_equal(out, v + 5 * dim, dim * sizeof(float));
    /* the unlinked tail: found at once, scored on its codes and rescored */
    float *extra = make_data(50, dim, m, 77);
    insert_all(ix, extra, 50, dim, n);
    assert_int_equal(vd_index_pending(ix), 50);
    d.v = NULL; /* the extra points are not in the stand-in: give it both sets */
    float *all = malloc((n + 50) * dim * sizeof(float));
    memcpy(all, v, n * dim * sizeof(float));
    memcpy(all + n * dim, extra, 50 * dim * sizeof(float));
    d.v = all;
    d.n = n + 50;
    struct vd_search_req self = {.query = extra + 9 * dim, .k = 1, .ef = 64};
    assert_int_equal(vd_index_search(ix, &self, h, &got), 0);
    assert_int_equal(got, 1);
    assert_int_equal(h[0].id.u.num, n + 9);
    assert_int_equal(vd_index_vector_memory(ix), code_bytes(ix, n + 50));
    assert_int_equal(d.open, 0);
    vd_index_free(ix);
    vd_index_free(fx);
    free(all);
    free(extra);
    free(v);
    free(q);
}

static void test_quant_disk_cosine(void **state)
{
    (void)state;
    check_quant_disk(VD_METRIC_COSINE);
}

static void test_quant_disk_euclid(void **state)
{
    (void)state;
    check_quant_disk(VD_METRIC_EUCLID);
}

/* Saved and loaded with the floats on disk: the load encodes each fetched vector and keeps no
 * float; the loaded index answers as the saved one. Loaded with always_ram true it holds them. */
static void test_quant_disk_save_load(void **state)
{
    (void)state;
    size_t n = 3000;
    uint32_t dim = 32;
    float *v = make_data(n, dim, VD_METRIC_COSINE, 51);
    float *q = make_data(30, dim, VD_METRIC_COSINE, 52);
    struct disk d = {v, dim, n, UINT64_MAX, 0, 0};
    struct vd_index_params p = disk_params(dim, VD_METRIC_COSINE, &d);
    struct vd_index *ix, *lx;
    assert_int_equal(vd_index_new(&p, &ix), 0);
    insert_all(ix, v, n, dim, 0);
    while (vd_index_link_pending(ix, 1000))
        ;
    char path[128];
    tmp_path(path, sizeof(path));
    assert_int_equal(vd_index_save(ix, path), 0);
    struct store st = {v, dim, n, UINT64_MAX};
    assert_int_equal(vd_index_load(path, &p, fetch, &st, &lx), 0);
    assert_true(vd_index_quant_ready(lx));
    assert_int_equal(vd_index_vector_memory(lx), code_bytes(lx, n));
    for (size_t i = 0; i < 30; i++) {
        struct vd_search_hit a[10], b[10];
        uint32_t na, nb;
        struct vd_search_req r = {.query = q + i * dim, .k = 10, .ef = 32};
        assert_int_equal(vd_index_search(ix, &r, a, &na), 0);
        assert_int_equal(vd_index_search(lx, &r, b, &nb), 0);
        assert_int_equal(na, nb);
        for (uint32_t j = 0; j < na; j++) {
            assert_int_equal(a[j].id.u.num, b[j].id.u.num);
            assert_true(a[j].score == b[j].score);
        }
    }
    vd_index_free(lx);
    p.quant.always_ram = true;
    assert_int_equal(vd_index_load(path, &p, fetch, &st, &lx), 0);
    assert_true(vd_index_vector_memory(lx) >= (size_t)n * dim * sizeof(float));
    assert_true(recall(lx, VD_METRIC_COSINE, v, n, dim, q, 30, 10, 64, NULL, 0) >= 0.95);
    vd_index_free(lx);
    vd_index_free(ix);
    assert_int_equal(d.open, 0);
    unlink(path);
    free(v);
    free(q);
}

/* Changing the config of a disk index: always_ram true reads the floats back (then the float walk
 * is there again); false drops them at once; quantization off reads them back and walks floats;
 * on again with always_ram false trains and drops them. */
static void test_quant_disk_set_live(void **state)
{
    (void)state;
    size_t n = 3000, nq = 30;
    uint32_t dim = 32;
    float *v = make_data(n, dim, VD_METRIC_EUCLID, 61);
    float *q = make_data(nq, dim, VD_METRIC_EUCLID, 62);
    struct disk d = {v, dim, n, UINT64_MAX, 0, 0};
    struct vd_index_params p = disk_params(dim, VD_METRIC_EUCLID, &d);
    struct vd_index *ix;
    assert_int_equal(vd_index_new(&p, &ix), 0);
    insert_all(ix, v, n, dim, 0);
    while (vd_index_link_pending(ix, 1000))
        ;
    size_t codes = code_bytes(ix, n), floats = (size_t)n * dim * sizeof(float);
    assert_int_equal(vd_index_vector_memory(ix), codes);
    struct vd_index_quant q_ram = {.enabled = true, .quantile = 0.99f, .always_ram = true};
    assert_int_equal(vd_index_set_quant(ix, &q_ram), 0);
    assert_true(vd_index_vector_memory(ix) >= codes + floats);
    struct vd_search_req ign = {.quant_ignore = true};
    d.gets = 0;
    double r_ram = recall_opts(ix, VD_METRIC_EUCLID, v, n, dim, q, nq, 10, 64, NULL, 0, &ign);
    assert_int_equal(d.gets, 0); /* the floats are in memory: nothing read */
    struct vd_index_quant q_disk = {.enabled = true, .quantile = 0.99f, .always_ram = false};
    assert_int_equal(vd_index_set_quant(ix, &q_disk), 0);
    assert_int_equal(vd_index_vector_memory(ix), codes);
    double r_disk = recall(ix, VD_METRIC_EUCLID, v, n, dim, q, nq, 10, 64, NULL, 0);
    /* a new quantile without floats: re-encoded from the codes */
    q_disk.quantile = 0.9f;
    float lo = ix->qlo;
    assert_int_equal(vd_index_set_quant(ix, &q_disk), 0);
    assert_true(ix->qlo > lo);
    assert_int_equal(vd_index_vector_memory(ix), codes);
    double r_q9 = recall(ix, VD_METRIC_EUCLID, v, n, dim, q, nq, 10, 64, NULL, 0);
    struct vd_index_quant off = {0};
    assert_int_equal(vd_index_set_quant(ix, &off), 0);
    assert_false(vd_index_quant_ready(ix));
    assert_int_equal(vd_index_vector_memory(ix), floats + (code_bytes(ix, n) / ix->code_size *
                                                           dim * sizeof(float) - floats));
    double r_off = recall(ix, VD_METRIC_EUCLID, v, n, dim, q, nq, 10, 64, NULL, 0);
    assert_int_equal(vd_index_set_quant(ix, &q_disk), 0);
    assert_true(vd_index_quant_ready(ix));
    assert_int_equal(vd_index_vector_memory(ix), codes);
    double r_again = recall(ix, VD_METRIC_EUCLID, v, n, dim, q, nq, 10, 64, NULL, 0);
    print_message("disk index changed live: recall ram %.4f, disk %.4f, q 0.9 %.4f, off %.4f, "
                  "disk again %.4f\n", r_ram, r_disk, r_q9, r_off, r_again);
    assert_true(r_ram >= 0.95 && r_disk >= 0.95 && r_q9 >= 0.93 && r_off >= 0.95 &&
                r_again >= 0.95);
    assert_int_equal(d.open, 0);
    vd_index_free(ix);
    free(v);
    free(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernels_avx2),
        cmocka_unit_test(test_kernels_avx512),
        cmocka_unit_test(test_kernels_chosen),
        cmocka_unit_test(test_normalize),
        cmocka_unit_test(test_recall_cosine),
        cmocka_unit_test(test_recall_euclid),
        cmocka_unit_test(test_recall_dot),
        cmocka_unit_test(test_recall_manhattan),
        cmocka_unit_test(test_recall_shapes),
        cmocka_unit_test(test_unlinked_tail_and_updates),
        cmocka_unit_test(test_full_scan_threshold),
        cmocka_unit_test(test_churn_recall),
        cmocka_unit_test(test_filter_traversal),
        cmocka_unit_test(test_filter_estimate_exact),
        cmocka_unit_test(test_candidates_match_exact),
        cmocka_unit_test(test_save_load),
        cmocka_unit_test(test_byte_flips),
        cmocka_unit_test(test_load_free_slots_reuse),
        cmocka_unit_test(test_code_kernels_avx2),
        cmocka_unit_test(test_code_kernels_avx512bw),
        cmocka_unit_test(test_code_kernels_vnni),
        cmocka_unit_test(test_code_kernels_chosen),
        cmocka_unit_test(test_quant_recall_cosine),
        cmocka_unit_test(test_quant_recall_euclid),
        cmocka_unit_test(test_quant_recall_dot),
        cmocka_unit_test(test_quant_recall_manhattan),
        cmocka_unit_test(test_quant_untrained_and_params),
        cmocka_unit_test(test_quant_set_live),
        cmocka_unit_test(test_quant_save_load),
        cmocka_unit_test(test_quant_disk_cosine),
        cmocka_unit_test(test_quant_disk_euclid),
        cmocka_unit_test(test_quant_disk_save_load),
        cmocka_unit_test(test_quant_disk_set_live),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
