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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pid_roundtrip),
        cmocka_unit_test(test_hlc),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_crc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
