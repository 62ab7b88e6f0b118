#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "vectord/config.h"

static int parse(struct vd_config *c, struct vd_err *e, int argc, char **argv)
{
    vd_config_init(c);
    int rc = vd_config_from_args(c, argc, argv, e);
    if (rc == 0)
        rc = vd_config_validate(c, e);
    return rc;
}

static void test_defaults(void **state)
{
    struct vd_config c;
    struct vd_err e = {0};
    unsetenv("VECTORD_API_KEY");
    char *argv[] = {"vectord"};
    assert_int_equal(parse(&c, &e, 1, argv), 0);
    assert_string_equal(c.data_dir, "./data");
    assert_string_equal(c.bind, "127.0.0.1");
    assert_int_equal(c.port, 6333);
    assert_int_equal(c.cluster_port, 6335);
    assert_int_equal(c.n_keys, 0);
    vd_config_release(&c);
}

static void test_flags(void **state)
{
    struct vd_config c;
    struct vd_err e = {0};
    char *argv[] = {"vectord", "--port", "7000", "--data-dir=/x", "--api-key", "abcdefgh12",
                    "--bind", "0.0.0.0", "--log-level", "debug", "--join", "10.0.0.1:6335"};
    assert_int_equal(parse(&c, &e, 12, argv), 0);
    assert_int_equal(c.port, 7000);
    assert_string_equal(c.data_dir, "/x");
    assert_int_equal(c.n_keys, 1);
    assert_int_equal(c.keys[0].role, 3);
    assert_int_equal(c.log_level, VD_LOG_DEBUG);
    assert_string_equal(c.join, "10.0.0.1:6335");
    vd_config_release(&c);
}

static void expect_error(int argc, char **argv, const char *fragment)
{
    struct vd_config c;
    struct vd_err e = {0};
    assert_int_not_equal(parse(&c, &e, argc, argv), 0);
    if (!strstr(e.msg, fragment))
        fail_msg("error '%s' does not mention '%s'", e.msg, fragment);
    vd_config_release(&c);
}

static void test_bad_flags(void **state)
{
    char *a1[] = {"vectord", "--port", "0"};
    expect_error(3, a1, "--port");
    char *a2[] = {"vectord", "--port", "65536"};
    expect_error(3, a2, "--port");
    char *a3[] = {"vectord", "--nope", "1"};
    expect_error(3, a3, "--nope");
    char *a4[] = {"vectord", "--bind", "0.0.0.0"};
    expect_error(3, a4, "--bind");
    char *a5[] = {"vectord", "--port"};
    expect_error(2, a5, "needs a value");
    char *a6[] = {"vectord", "--api-key", "short"};
    expect_error(3, a6, "--api-key");
    char *a7[] = {"vectord", "--join", "nohost"};
    expect_error(3, a7, "--join");
    char *a8[] = {"vectord", "stray"};
    expect_error(2, a8, "stray");
    char *a9[] = {"vectord", "--port", "7000", "--cluster-port", "7000"};
    expect_error(5, a9, "--cluster-port");
}

static char *write_tmp(const char *text)
{
    static char path[64];
    strcpy(path, "/tmp/vdcfgXXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void test_config_file(void **state)
{
    struct vd_config c;
    struct vd_err e = {0};
    char *p = write_tmp("{\"port\": 7100, \"data_dir\": \"/d\", \"insecure\": true, \"bind\": \"0.0.0.0\","
                        "\"api_keys\": [{\"key\": \"ro-key-12345\", \"role\": \"ro\"},"
                        "{\"key\": \"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\","
                        " \"role\": \"rw\"}]}");
    char *argv[] = {"vectord", "--port", "7200", "--config", p};
    assert_int_equal(parse(&c, &e, 5, argv), 0);
    assert_int_equal(c.port, 7200); /* the flag wins wherever it stands */
    assert_string_equal(c.data_dir, "/d");
    assert_true(c.insecure);
    assert_int_equal(c.n_keys, 2);
    assert_int_equal(c.keys[0].role, 1);
    assert_int_equal(c.keys[1].role, 2);
    vd_config_release(&c);
    unlink(p);

    const char *bad[][2] = {
        {"{\"prot\": 1}", "'prot'"},
        {"{\"port\": \"x\"}", "'port'"},
        {"{\"port\": 1.5}", "'port'"},
        {"{\"insecure\": 1}", "'insecure'"},
        {"{\"api_keys\": [{\"key\": \"abcdefghij\", \"role\": \"god\"}]}", "api_keys[0]"},
        {"{\"api_keys\": [{\"key\": \"sha256:zz\", \"role\": \"ro\"}]}", "sha256"},
        {"[1]", "not a JSON object"},
        {"{", "not a JSON object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        p = write_tmp(bad[i][0]);
        char *a[] = {"vectord", "--config", p};
        expect_error(3, a, bad[i][1]);
        unlink(p);
    }
    char *missing[] = {"vectord", "--config", "/nonexistent/vectord.json"};
    expect_error(3, missing, "cannot open");
}

static void test_env_key(void **state)
{
    struct vd_config c;
    struct vd_err e = {0};
    setenv("VECTORD_API_KEY", "env-key-123456", 1);
    char *argv[] = {"vectord", "--bind", "0.0.0.0"};
    assert_int_equal(parse(&c, &e, 3, argv), 0);
    assert_int_equal(c.n_keys, 1);
    assert_string_equal(c.keys[0].key, "env-key-123456");
    vd_config_release(&c);
    unsetenv("VECTORD_API_KEY");
    assert_true(vd_config_is_loopback("127.0.0.5"));
    assert_true(vd_config_is_loopback("::1"));
    assert_false(vd_config_is_loopback("10.1.1.1"));
}

static void test_clock_options(void **state)
{
    struct vd_config c;
    struct vd_err e = {0};
    unsetenv("VECTORD_TEST_CLOCK_OFFSET_MS");
    char *a0[] = {"vectord"};
    assert_int_equal(parse(&c, &e, 1, a0), 0);
    assert_true(c.max_clock_offset_ms == 500);
    assert_true(c.test_clock_offset_ms == 0);
    vd_config_release(&c);
    char *a1[] = {"vectord", "--max-clock-offset", "250"};
    assert_int_equal(parse(&c, &e, 3, a1), 0);
    assert_true(c.max_clock_offset_ms == 250);
    vd_config_release(&c);
    char *p = write_tmp("{\"max_clock_offset\": 1500}");
    char *a2[] = {"vectord", "--config", p};
    assert_int_equal(parse(&c, &e, 3, a2), 0);
    assert_true(c.max_clock_offset_ms == 1500);
    vd_config_release(&c);
    unlink(p);
    assert_int_equal(parse(&c, &e, 1, a0), 0);
    assert_int_equal(c.replication_factor, 1);
    vd_config_release(&c);
    char *r1[] = {"vectord", "--replication-factor", "3"};
    assert_int_equal(parse(&c, &e, 3, r1), 0);
    assert_int_equal(c.replication_factor, 3);
    vd_config_release(&c);
    char *pr = write_tmp("{\"replication_factor\": 2}");
    char *r2[] = {"vectord", "--config", pr};
    assert_int_equal(parse(&c, &e, 3, r2), 0);
    assert_int_equal(c.replication_factor, 2);
    vd_config_release(&c);
    unlink(pr);
    char *rb1[] = {"vectord", "--replication-factor", "0"};
    expect_error(3, rb1, "--replication-factor");
    char *rb2[] = {"vectord", "--replication-factor", "65"};
    expect_error(3, rb2, "--replication-factor");
    assert_non_null(strstr(vd_config_usage(), "--replication-factor"));
    char *b1[] = {"vectord", "--max-clock-offset", "0"};
    expect_error(3, b1, "--max-clock-offset");
    char *b2[] = {"vectord", "--max-clock-offset", "1s"};
    expect_error(3, b2, "--max-clock-offset");
    assert_non_null(strstr(vd_config_usage(), "--max-clock-offset"));
    /* the hidden skew of tests, from the environment only, and not in --help */
    setenv("VECTORD_TEST_CLOCK_OFFSET_MS", "-3600000", 1);
    assert_int_equal(parse(&c, &e, 1, a0), 0);
    assert_true(c.test_clock_offset_ms == -3600000);
    vd_config_release(&c);
    setenv("VECTORD_TEST_CLOCK_OFFSET_MS", "700", 1);
    assert_int_equal(parse(&c, &e, 1, a0), 0);
    assert_true(c.test_clock_offset_ms == 700);
    vd_config_release(&c);
    setenv("VECTORD_TEST_CLOCK_OFFSET_MS", "soon", 1);
    expect_error(1, a0, "VECTORD_TEST_CLOCK_OFFSET_MS");
    setenv("VECTORD_TEST_CLOCK_OFFSET_MS", "--5", 1);
    expect_error(1, a0, "VECTORD_TEST_CLOCK_OFFSET_MS");
    unsetenv("VECTORD_TEST_CLOCK_OFFSET_MS");
    assert_null(strstr(vd_config_usage(), "CLOCK_OFFSET"));
}

/* The HTTP server's limits: defaults left to the server (0), accepted values from flags and the
 * config file, and every bad value refused with an error naming the option. */
static void test_http_limit_options(void **state)
{
    struct vd_config c;
    struct vd_err e = {0};
    char *a0[] = {"vectord"};
    assert_int_equal(parse(&c, &e, 1, a0), 0);
    assert_int_equal(c.max_connections, 0);
    assert_true(c.max_inflight_body_bytes == 0);
    assert_int_equal(c.header_timeout_seconds, 0);
    vd_config_release(&c);
    char *a1[] = {"vectord", "--max-connections", "16", "--max-inflight-body-bytes=1048576",
                  "--header-timeout-seconds", "5"};
    assert_int_equal(parse(&c, &e, 6, a1), 0);
    assert_int_equal(c.max_connections, 16);
    assert_true(c.max_inflight_body_bytes == 1048576);
    assert_int_equal(c.header_timeout_seconds, 5);
    vd_config_release(&c);
    char *p = write_tmp("{\"max_connections\": 2000, \"max_inflight_body_bytes\": 4096,"
                        " \"header_timeout_seconds\": 3600}");
    char *a2[] = {"vectord", "--config", p};
    assert_int_equal(parse(&c, &e, 3, a2), 0);
    assert_int_equal(c.max_connections, 2000);
    assert_true(c.max_inflight_body_bytes == 4096);
    assert_int_equal(c.header_timeout_seconds, 3600);
    vd_config_release(&c);
    unlink(p);

    static const char *const flags[] = {"--max-connections", "--max-inflight-body-bytes",
                                        "--header-timeout-seconds"};
    /* zero, negative, not a number, a unit, and one past each maximum */
    static const char *const bad[][6] = {
        {"0", "-1", "many", "10k", "", "1000001"},
        {"0", "-1", "lots", "1MiB", "1023", "1099511627777"},
        {"0", "-1", "soon", "5s", "", "3601"},
    };
    for (size_t f = 0; f < 3; f++) {
        for (size_t i = 0; i < 6; i++) {
            char *b[] = {"vectord", (char *)flags[f], (char *)bad[f][i]};
            expect_error(3, b, flags[f]);
        }
        assert_non_null(strstr(vd_config_usage(), flags[f]));
    }
    char *pb = write_tmp("{\"max_connections\": 0}");
    char *b1[] = {"vectord", "--config", pb};
    expect_error(3, b1, "max_connections");
    unlink(pb);
}

static void test_hint_options(void **state)
{
    (void)state;
    struct vd_config c;
    struct vd_err e = {0};
    char *none[] = {"vectord"};
    assert_int_equal(parse(&c, &e, 1, none), 0);
    assert_int_equal(c.hint_window_seconds, 10800);
    assert_int_equal(c.hint_node_bytes, 256ULL << 20);
    assert_int_equal(c.hint_total_bytes, 1ULL << 30);
    vd_config_release(&c);
    char *argv[] = {"vectord", "--hint-window", "60", "--hint-node-bytes", "4096",
                    "--hint-total-bytes=8192"};
    assert_int_equal(parse(&c, &e, 6, argv), 0);
    assert_int_equal(c.hint_window_seconds, 60);
    assert_int_equal(c.hint_node_bytes, 4096);
    assert_int_equal(c.hint_total_bytes, 8192);
    vd_config_release(&c);
    char *w0[] = {"vectord", "--hint-window", "0"};
    expect_error(3, w0, "--hint-window: '0' is not a number of seconds");
    char *wx[] = {"vectord", "--hint-window", "3h"};
    expect_error(3, wx, "--hint-window");
    char *nb[] = {"vectord", "--hint-node-bytes", "10"};
    expect_error(3, nb, "--hint-node-bytes: '10' is not a size in bytes");
    char *tb[] = {"vectord", "--hint-total-bytes", "-1"};
    expect_error(3, tb, "--hint-total-bytes");
    assert_non_null(strstr(vd_config_usage(), "--hint-window"));
}

/* --repair-interval: daily by default, 0 turns the schedule off, anything else not a count of
 * seconds up to a year is a start-up error naming the flag. */
static void test_repair_interval(void **state)
{
    (void)state;
    struct vd_config c;
    struct vd_err e = {0};
    char *none[] = {"vectord"};
    assert_int_equal(parse(&c, &e, 1, none), 0);
    assert_int_equal(c.repair_interval_seconds, 86400);
    vd_config_release(&c);
    char *off[] = {"vectord", "--repair-interval", "0"};
    assert_int_equal(parse(&c, &e, 3, off), 0);
    assert_int_equal(c.repair_interval_seconds, 0);
    vd_config_release(&c);
    char *hour[] = {"vectord", "--repair-interval=3600"};
    assert_int_equal(parse(&c, &e, 2, hour), 0);
    assert_int_equal(c.repair_interval_seconds, 3600);
    vd_config_release(&c);
    char *neg[] = {"vectord", "--repair-interval", "-1"};
    expect_error(3, neg, "--repair-interval: '-1' is not a number of seconds");
    char *word[] = {"vectord", "--repair-interval", "daily"};
    expect_error(3, word, "--repair-interval: 'daily'");
    char *big[] = {"vectord", "--repair-interval", "31536001"};
    expect_error(3, big, "--repair-interval");
    char *empty[] = {"vectord", "--repair-interval="};
    expect_error(2, empty, "--repair-interval");
    assert_non_null(strstr(vd_config_usage(), "--repair-interval"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),   cmocka_unit_test(test_flags),
        cmocka_unit_test(test_bad_flags),  cmocka_unit_test(test_config_file),
        cmocka_unit_test(test_env_key),    cmocka_unit_test(test_clock_options),
        cmocka_unit_test(test_http_limit_options), cmocka_unit_test(test_hint_options),
        cmocka_unit_test(test_repair_interval),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
