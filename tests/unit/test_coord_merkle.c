/*
 * Hash trees for anti-entropy repair (src/coord/merkle.c): identical sets give identical trees,
 * one changed, missing or extra record gives exactly the leaf that holds it, the leaves cut the
 * arc without gap or overlap (wrapping arcs and the whole ring included), and bad input is
 * refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vectord/coord.h"

struct ent {
    uint64_t h;
    struct vd_version v;
    uint64_t rec;
};

static uint64_t rng(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Offsets on the arc order the entries (hash order along the arc, wrap included). */
static uint64_t g_start;
static int ent_cmp(const void *pa, const void *pb)
{
    const struct ent *a = pa, *b = pb;
    uint64_t x = a->h - g_start - 1, y = b->h - g_start - 1;
    return x < y ? -1 : x > y;
}

/* n entries with hashes on the arc (start, end], sorted along it. */
static struct ent *make_set(uint64_t seed, uint64_t start, uint64_t end, size_t n)
{
    struct ent *e = calloc(n, sizeof *e);
    assert_non_null(e);
    uint64_t len = end - start;
    for (size_t i = 0; i < n; i++) {
        uint64_t off = rng(&seed);
        if (len)
            off %= len;
        e[i].h = start + 1 + off;
        e[i].v = (struct vd_version){rng(&seed) >> 16, 1 + i % 3};
        e[i].rec = rng(&seed);
    }
    g_start = start;
    qsort(e, n, sizeof *e, ent_cmp);
    return e;
}

static void build(struct vd_merkle *t, uint64_t start, uint64_t end, unsigned depth,
                  const struct ent *e, size_t n, size_t skip)
{
    assert_int_equal(vd_merkle_init(t, start, end, depth), 0);
    for (size_t i = 0; i < n; i++)
        if (i != skip)
            assert_int_equal(vd_merkle_add(t, e[i].h, e[i].v, e[i].rec), 0);
    vd_merkle_finish(t);
}

static uint32_t diff(const struct vd_merkle *a, const struct vd_merkle *b, uint32_t *out)
{
    uint32_t n = 99999;
    assert_int_equal(vd_merkle_diff(a, b, out, &n), 0);
    return n;
}

/* The arcs a repair meets: an ordinary one, one that wraps past 2^64 - 1, the whole ring. */
static const uint64_t arcs[][2] = {
    {UINT64_C(0x1000000000000000), UINT64_C(0x3000000000000000)},
    {UINT64_C(0xf000000000000000), UINT64_C(0x0800000000000000)},
    {UINT64_C(0x5555555555555555), UINT64_C(0x5555555555555555)},
};

static void test_identical_sets_agree(void **state)
{
    (void)state;
    static struct vd_merkle a, b;
    static uint32_t out[VD_MERKLE_MAX_LEAVES];
    for (size_t k = 0; k < 3; k++)
        for (unsigned d = 1; d <= VD_MERKLE_MAX_DEPTH; d++) {
            struct ent *e = make_set(42 + k, arcs[k][0], arcs[k][1], 5000);
            build(&a, arcs[k][0], arcs[k][1], d, e, 5000, SIZE_MAX);
            build(&b, arcs[k][0], arcs[k][1], d, e, 5000, SIZE_MAX);
            assert_int_equal(a.count, 5000);
            assert_int_not_equal(vd_merkle_root(&a), 0);
            assert_true(vd_merkle_root(&a) == vd_merkle_root(&b));
            assert_int_equal(diff(&a, &b, out), 0);
            free(e);
        }
    /* empty trees agree, and their root is 0 */
    build(&a, 1, 2, 2, NULL, 0, SIZE_MAX);
    build(&b, 1, 2, 2, NULL, 0, SIZE_MAX);
    assert_true(vd_merkle_root(&a) == 0);
    assert_int_equal(diff(&a, &b, out), 0);
}

/* One record changed (its version, or its bytes at the same version), missing or extra: exactly
 * its leaf differs, whichever tree is the first. */
static void test_one_difference_one_leaf(void **state)
{
    (void)state;
    static struct vd_merkle a, b;
    static uint32_t out[VD_MERKLE_MAX_LEAVES];
    for (size_t k = 0; k < 3; k++)
        for (unsigned d = 1; d <= VD_MERKLE_MAX_DEPTH; d++) {
            const size_t n = 3000;
            struct ent *e = make_set(7 + k * 3 + d, arcs[k][0], arcs[k][1], n);
            build(&a, arcs[k][0], arcs[k][1], d, e, n, SIZE_MAX);
            for (size_t trial = 0; trial < 4; trial++) {
                size_t at = (trial * 997 + d * 31) % n;
                int64_t leaf = vd_merkle_leaf_of(&a, e[at].h);
                assert_true(leaf >= 0);
                struct ent saved = e[at];
                if (trial == 0)
                    e[at].v.hlc++; /* a newer version */
                else if (trial == 1)
                    e[at].rec ^= 1; /* other bytes */
                if (trial == 2) /* missing on b */
                    build(&b, arcs[k][0], arcs[k][1], d, e, n, at);
                else
                    build(&b, arcs[k][0], arcs[k][1], d, e, n, SIZE_MAX);
                e[at] = saved;
                if (trial == 3) { /* extra on a: b lacks it, a rebuilt without it is the base */
                    build(&b, arcs[k][0], arcs[k][1], d, e, n, at);
                    build(&a, arcs[k][0], arcs[k][1], d, e, n, SIZE_MAX);
                }
                assert_int_equal(diff(&a, &b, out), 1);
                assert_int_equal(out[0], leaf);
                assert_int_equal(diff(&b, &a, out), 1);
                assert_int_equal(out[0], leaf);
                /* the leaf's arc holds the record's hash */
                uint64_t s, en;
                assert_true(vd_merkle_leaf_arc(&a, out[0], &s, &en));
                assert_true(s == en || e[at].h - s - 1 < en - s);
            }
            free(e);
        }
}

/* The leaves cut the arc in order, contiguous, first from start and last to end; a hash at
 * either end of a leaf's arc falls in that leaf. */
static void test_leaf_arcs_partition(void **state)
{
    (void)state;
    static struct vd_merkle t;
    const uint64_t more[][2] = {{0, 5}, {UINT64_MAX - 2, 3}, {100, 100 + 4096 * 3 + 7}};
    for (size_t k = 0; k < 6; k++) {
        const uint64_t *a = k < 3 ? arcs[k] : more[k - 3];
        for (unsigned d = 1; d <= VD_MERKLE_MAX_DEPTH; d++) {
            assert_int_equal(vd_merkle_init(&t, a[0], a[1], d), 0);
            uint64_t prev = a[0], s, e;
            uint32_t used = 0;
            for (uint32_t i = 0; i < vd_merkle_n_leaves(d); i++) {
                if (!vd_merkle_leaf_arc(&t, i, &s, &e))
                    continue;
                assert_true(s == prev);
                assert_true(s != e || a[0] == a[1]);
                assert_int_equal(vd_merkle_leaf_of(&t, s + 1), i);
                assert_int_equal(vd_merkle_leaf_of(&t, e), i);
                prev = e;
                used = i + 1;
            }
            assert_true(prev == a[1]);
            /* an arc of 5 hashes uses 5 leaves; the others none */
            if (a[1] - a[0] && a[1] - a[0] < vd_merkle_n_leaves(d))
                assert_int_equal(used, a[1] - a[0]);
            assert_false(vd_merkle_leaf_arc(&t, vd_merkle_n_leaves(d), &s, &e));
        }
    }
}

static void test_leaves_travel(void **state)
{
    (void)state;
    static struct vd_merkle a, b;
    static uint32_t out[VD_MERKLE_MAX_LEAVES];
    struct ent *e = make_set(3, arcs[1][0], arcs[1][1], 800);
    build(&a, arcs[1][0], arcs[1][1], 2, e, 800, SIZE_MAX);
    assert_int_equal(vd_merkle_init(&b, arcs[1][0], arcs[1][1], 2), 0);
    assert_int_equal(vd_merkle_set_leaves(&b, vd_merkle_leaves(&a), 255), VD_EINVAL);
    assert_int_equal(vd_merkle_set_leaves(&b, vd_merkle_leaves(&a), 256), 0);
    assert_true(vd_merkle_root(&a) == vd_merkle_root(&b));
    assert_int_equal(diff(&a, &b, out), 0);
    free(e);
}

static void test_bad_input(void **state)
{
    (void)state;
    static struct vd_merkle a, b;
    uint32_t out[VD_MERKLE_MAX_LEAVES], n;
    struct vd_version v = {1, 1};
    assert_int_equal(vd_merkle_init(&a, 0, 10, 0), VD_EINVAL);
    assert_int_equal(vd_merkle_init(&a, 0, 10, VD_MERKLE_MAX_DEPTH + 1), VD_EINVAL);
    assert_int_equal(vd_merkle_init(&a, 100, 200, 1), 0);
    assert_int_equal(vd_merkle_add(&a, 100, v, 1), VD_EINVAL); /* start is not on (start, end] */
    assert_int_equal(vd_merkle_add(&a, 201, v, 1), VD_EINVAL);
    assert_int_equal(vd_merkle_add(&a, 150, v, 1), 0);
    assert_int_equal(vd_merkle_add(&a, 150, v, 2), 0); /* equal hashes: two keys, one hash */
    assert_int_equal(vd_merkle_add(&a, 149, v, 1), VD_EINVAL); /* out of order */
    assert_int_equal(a.count, 2);
    assert_int_equal(vd_merkle_leaf_of(&a, 99), -1);
    vd_merkle_finish(&a);
    assert_int_equal(vd_merkle_add(&a, 180, v, 1), VD_EINVAL);
    assert_int_equal(vd_merkle_init(&b, 100, 201, 1), 0);
    vd_merkle_finish(&b);
    assert_int_equal(vd_merkle_diff(&a, &b, out, &n), VD_EINVAL);
    assert_int_equal(vd_merkle_init(&b, 100, 200, 2), 0);
    vd_merkle_finish(&b);
    assert_int_equal(vd_merkle_diff(&a, &b, out, &n), VD_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identical_sets_agree),
        cmocka_unit_test(test_one_difference_one_leaf),
        cmocka_unit_test(test_leaf_arcs_partition),
        cmocka_unit_test(test_leaves_travel),
        cmocka_unit_test(test_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
