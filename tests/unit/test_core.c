#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "vectord/core.h"

static void test_pid_roundtrip(void **state)
{
    struct vd_pid a = {.type = VD_PID_NUM, .u.num = UINT64_MAX}, b;
    uint8_t k[VD_PID_KEY_MAX];
    char s[VD_PID_STR_MAX];
    size_t n = vd_pid_encode(&a, k);
    assert_int_equal(n, 9);
    assert_int_equal(vd_pid_decode(k, n, &b), 0);
    assert_true(vd_pid_eq(&a, &b));
    vd_pid_format(&a, s);
    assert_string_equal(s, "18446744073709551615");
    uint64_t v;
    assert_int_equal(vd_pid_parse_u64("18446744073709551615", 20, &v), 0);
    assert_true(v == UINT64_MAX);
    assert_int_equal(vd_pid_parse_u64("18446744073709551616", 20, &v), VD_ERANGE);
    assert_int_equal(vd_pid_parse_u64("012", 3, &v), VD_EINVAL);
    assert_int_equal(vd_pid_parse_u64("-1", 2, &v), VD_EINVAL);

    const char *u = "550E8400-e29b-41d4-a716-446655440000";
    assert_int_equal(vd_pid_parse_uuid(u, strlen(u), &a), 0);
    vd_pid_format(&a, s);
    assert_string_equal(s, "550e8400-e29b-41d4-a716-446655440000");
    assert_int_equal(vd_pid_parse_uuid("550e8400e29b41d4a716446655440000", 32, &b), 0);
    assert_true(vd_pid_eq(&a, &b));
    assert_int_equal(vd_pid_parse_uuid("550e8400-e29b-41d4-a716-44665544000g", 36, &b), VD_EINVAL);
    assert_int_equal(vd_pid_parse_uuid("not-a-uuid", 10, &b), VD_EINVAL);
    struct vd_pid num = {.type = VD_PID_NUM, .u.num = UINT64_MAX};
    assert_true(vd_pid_cmp(&num, &a) < 0); /* integers sort before UUIDs */
}

static void test_hlc(void **state)
{
    struct vd_hlc c = {0};
    uint64_t t1 = vd_hlc_tick(&c, 1000);
    uint64_t t2 = vd_hlc_tick(&c, 1000);
    uint64_t t3 = vd_hlc_tick(&c, 999); /* clock went backwards */
    assert_true(t1 < t2 && t2 < t3);
    assert_int_equal(VD_HLC_PHYS(t3), 1000);
    uint64_t t4 = vd_hlc_recv(&c, VD_HLC_MAKE(5000, 7), 1001);
    assert_true(t4 > VD_HLC_MAKE(5000, 7));
    uint64_t g1 = vd_hlc_now(), g2 = vd_hlc_now();
    assert_true(g2 > g1);
}

static void test_errors(void **state)
{
    struct vd_err e;
    assert_int_equal(vd_errf(&e, VD_EINVAL, "vector has %d values, expected %d", 3, 4), VD_EINVAL);
    vd_err_prefix(&e, "collection '%s'", "docs");
    assert_string_equal(e.msg, "collection 'docs': vector has 3 values, expected 4");
    assert_int_equal(vd_err_http_status(VD_ERANGE), 422);
    assert_int_equal(vd_err_http_status(VD_EEXIST), 409);
    assert_string_equal(vd_strerror(1), "unknown error");
}

static void test_crc(void **state)
{
    /* RFC 3720 test vector: 32 bytes of zeros */
    uint8_t z[32] = {0};
    assert_int_equal(vd_crc32c(0, z, 32), 0x8a9136aa);
    assert_int_equal(vd_crc32c(0, "123456789", 9), 0xe3069283);
    assert_true(vd_hash64("a", 1, 0) != vd_hash64("b", 1, 0));
}

/* The placement hash is part of the on-disk and on-wire contract: pinned values catch any change
 * that would move every point to other replicas. */
static void test_place_hash(void **state)
{
    struct vd_pid a = {.type = VD_PID_NUM, .u.num = 42}, b = {.type = VD_PID_NUM, .u.num = 43};
    uint8_t ka[VD_PID_KEY_MAX], kb[VD_PID_KEY_MAX];
    size_t na = vd_pid_encode(&a, ka), nb = vd_pid_encode(&b, kb);
    assert_true(vd_place_hash("docs", ka, na) == UINT64_C(0x4384dfb0b67c9110));
    assert_true(vd_place_hash("", ka, na) == UINT64_C(0x991f8232c686e6a3));
    /* the collection and the key both matter */
    assert_true(vd_place_hash("docs", ka, na) != vd_place_hash("docs2", ka, na));
    assert_true(vd_place_hash("docs", ka, na) != vd_place_hash("docs", kb, nb));
    /* one hash: the id alone is not what places a point */
    assert_true(vd_place_hash("docs", ka, na) != vd_pid_hash(&a));
    /* a UUID whose bytes end like an integer key hashes elsewhere (the type byte is hashed) */
    struct vd_pid u = {.type = VD_PID_UUID};
    memcpy(u.u.uuid + 8, ka + 1, 8);
    uint8_t ku[VD_PID_KEY_MAX];
    size_t nu = vd_pid_encode(&u, ku);
    assert_true(vd_place_hash("docs", ku, nu) != vd_place_hash("docs", ka, na));
}

/* (start, end] with the wrapping arc split, at every edge: both ends, both sides of each end, and
 * the extremes of the hash space. */
static void test_ring_contains(void **state)
{
    /* a plain arc */
    assert_false(vd_ring_contains(10, 20, 10));
    assert_true(vd_ring_contains(10, 20, 11));
    assert_true(vd_ring_contains(10, 20, 20));
    assert_false(vd_ring_contains(10, 20, 21));
    assert_false(vd_ring_contains(10, 20, 0));
    assert_false(vd_ring_contains(10, 20, UINT64_MAX));
    /* the arc that wraps past 2^64-1 */
    assert_true(vd_ring_contains(UINT64_MAX - 5, 5, UINT64_MAX));
    assert_true(vd_ring_contains(UINT64_MAX - 5, 5, 0));
    assert_true(vd_ring_contains(UINT64_MAX - 5, 5, 5));
    assert_true(vd_ring_contains(UINT64_MAX - 5, 5, UINT64_MAX - 4));
    assert_false(vd_ring_contains(UINT64_MAX - 5, 5, UINT64_MAX - 5));
    assert_false(vd_ring_contains(UINT64_MAX - 5, 5, 6));
    /* arcs ending at the extremes: (x, UINT64_MAX] does not wrap, (x, 0] holds only the top and 0 */
    assert_true(vd_ring_contains(7, UINT64_MAX, UINT64_MAX));
    assert_false(vd_ring_contains(7, UINT64_MAX, 0));
    assert_true(vd_ring_contains(7, 0, 0));
    assert_true(vd_ring_contains(7, 0, UINT64_MAX));
    assert_false(vd_ring_contains(7, 0, 1));
    assert_false(vd_ring_contains(7, 0, 7));
    /* (UINT64_MAX, x] starts at 0 */
    assert_true(vd_ring_contains(UINT64_MAX, 3, 0));
    assert_false(vd_ring_contains(UINT64_MAX, 3, UINT64_MAX));
    /* a single-token ring: the whole ring */
    assert_true(vd_ring_contains(9, 9, 9));
    assert_true(vd_ring_contains(9, 9, 0));
    assert_true(vd_ring_contains(9, 9, UINT64_MAX));
    /* consecutive arcs of a ring cover each hash exactly once */
    const uint64_t tok[] = {0, 5, UINT64_MAX / 2, UINT64_MAX - 1};
    const size_t nt = sizeof tok / sizeof tok[0];
    const uint64_t probes[] = {0, 1, 4, 5, 6, UINT64_MAX / 2, UINT64_MAX / 2 + 1, UINT64_MAX - 1,
                               UINT64_MAX};
    for (size_t p = 0; p < sizeof probes / sizeof probes[0]; p++) {
        int n = 0;
        for (size_t i = 0; i < nt; i++)
            n += vd_ring_contains(tok[(i + nt - 1) % nt], tok[i], probes[p]);
        assert_int_equal(n, 1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pid_roundtrip),
        cmocka_unit_test(test_hlc),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_crc),
        cmocka_unit_test(test_place_hash),
        cmocka_unit_test(test_ring_contains),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
