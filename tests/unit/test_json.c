#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vectord/json.h"
#include "json_int.h"

static bool small_scale(void)
{
    const char *s = getenv("VD_TEST_SCALE");
    return s && strcmp(s, "small") == 0;
}

/* xorshift64*: fixed seed so failures reproduce. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

/* Parses s and prints it back compactly; returns malloc'd text or NULL on a parse error. */
static char *roundtrip(const char *s, size_t n, struct vd_err *err)
{
    cJSON *j = NULL;
    if (vd_json_parse(s, n, VD_JSON_MAX_DEPTH, &j, err) != 0)
        return NULL;
    struct vd_buf b;
    vd_buf_init(&b);
    vd_buf_json(&b, j);
    cJSON_Delete(j);
    assert_true(vd_buf_ok(&b));
    return vd_buf_steal(&b, NULL);
}

/* ---- documents --------------------------------------------------------------------------- */

static void test_valid_documents(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"0", "0"},
        {"-0", "-0"},
        {" \t\r\n1 \n", "1"},
        {"true", "true"},
        {"false", "false"},
        {"null", "null"},
        {"\"\"", "\"\""},
        {"[]", "[]"},
        {"{}", "{}"},
        {"[ 1 , 2 ,3]", "[1,2,3]"},
        {"-1.5e+10", "-1.5e+10"},
        {"1E-7", "1E-7"},
        {"0.000", "0.000"},
        {"18446744073709551616", "18446744073709551616"},
        {"1e308", "1e308"},
        {"1e-400", "1e-400"}, /* underflow reads as 0 and is kept as text */
        {"123456789012345678901234567890", "123456789012345678901234567890"},
        {"{\"a\":{\"b\":[true,false,null]},\"c\":\"d\"}", "{\"a\":{\"b\":[true,false,null]},\"c\":\"d\"}"},
        {"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\\"\\\\/\\b\\f\\n\\r\\t\""},
        {"\"\\u0041\\u00e9\\u20AC\\ud834\\udd1e\"", "\"A\xc3\xa9\xe2\x82\xac\xf0\x9d\x84\x9e\""},
        {"\"\\u001f\"", "\"\\u001f\""},
        {"{\"a\":1,\"b\":2,\"a\":3}", "{\"b\":2,\"a\":3}"}, /* last duplicate wins */
        {"{\"a\":1,\"a\":2,\"a\":3}", "{\"a\":3}"},
        {"[[[[[]]]]]", "[[[[[]]]]]"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct vd_err err = {0};
        char *out = roundtrip(cases[i].in, strlen(cases[i].in), &err);
        if (!out)
            fail_msg("case %zu '%s' rejected: %s", i, cases[i].in, err.msg);
        if (strcmp(out, cases[i].out) != 0)
            fail_msg("case %zu '%s' printed '%s', expected '%s'", i, cases[i].in, out, cases[i].out);
        free(out);
    }
}

static void test_invalid_documents(void **state)
{
    static const struct {
        const char *in;
        size_t at;          /* expected byte offset */
        const char *reason; /* substring of the message */
    } cases[] = {
        {"", 0, "empty body"},
        {"   ", 3, "empty body"},
        {"[1,2", 4, "unterminated array"},
        {"[1,2,", 5, "unexpected end of input"},
        {"{\"a\":1", 6, "unterminated object"},
        {"{\"a\"", 4, "expected ':'"},
        {"{\"a\":}", 5, "expected a value"},
        {"{a:1}", 1, "expected a string key"},
        {"{\"a\":1,}", 7, "expected a string key"},
        {"[1,]", 3, "expected a value"},
        {"[1 2]", 3, "expected ',' or ']'"},
        {"\"abc", 4, "unterminated string"},
        {"\"a\\x\"", 2, "bad escape"},
        {"\"\\u12\"", 1, "bad \\u escape"},
        {"\"\\u12g4\"", 1, "bad \\u escape"},
        {"\"\\ud800\"", 1, "unpaired high surrogate"},
        {"\"\\ud800\\u0041\"", 1, "unpaired high surrogate"},
        {"\"\\udc00\"", 1, "unpaired low surrogate"},
        {"\"\\u0000\"", 1, "\\u0000"},
        {"\"a\tb\"", 2, "control character"},
        {"\"a\nb\"", 2, "control character"},
        {"01", 0, "leading zero"},
        {"-01", 1, "leading zero"},
        {"[00]", 1, "leading zero"},
        {"+1", 0, "'+' sign"},
        {".5", 0, "must start with a digit"},
        {"5.", 2, "after the decimal point"},
        {"-.5", 1, "expected a digit"},
        {"1e", 2, "in the exponent"},
        {"1e+", 3, "in the exponent"},
        {"-", 1, "truncated number"},
        {"1e999", 0, "not a finite double"},
        {"-1e400", 0, "not a finite double"},
        {"[1,1.8e308]", 3, "not a finite double"},
        {"NaN", 0, "NaN and Infinity"},
        {"nan", 0, "NaN and Infinity"},
        {"Infinity", 0, "NaN and Infinity"},
        {"-Infinity", 0, "NaN and Infinity"},
        {"[1] x", 4, "trailing characters"},
        {"1 2", 2, "trailing characters"},
        {"{} {}", 3, "trailing characters"},
        {"tru", 0, "unexpected character"},
        {"nul", 0, "unexpected character"},
        {"True", 0, "unexpected character"},
        {"'a'", 0, "unexpected character"},
        {"/*c*/1", 0, "unexpected character"},
        {"\xef\xbb\xbf{}", 0, "unexpected character"}, /* BOM */
        {"\"\xc0\x80\"", 1, "invalid UTF-8"},             /* overlong NUL */
        {"\"\xc1\xbf\"", 1, "invalid UTF-8"},             /* overlong */
        {"\"\xe0\x80\xaf\"", 1, "invalid UTF-8"},         /* overlong 3-byte */
        {"\"\xf0\x80\x80\xaf\"", 1, "invalid UTF-8"},     /* overlong 4-byte */
        {"\"\xed\xa0\x80\"", 1, "invalid UTF-8"},         /* U+D800 encoded */
        {"\"\xed\xbf\xbf\"", 1, "invalid UTF-8"},         /* U+DFFF encoded */
        {"\"\xf4\x90\x80\x80\"", 1, "invalid UTF-8"},     /* U+110000 */
        {"\"\xf5\x80\x80\x80\"", 1, "invalid UTF-8"},
        {"\"\xff\"", 1, "invalid UTF-8"},
        {"\"\x80\"", 1, "invalid UTF-8"},                 /* lone continuation */
        {"\"a\xc3\"", 2, "invalid UTF-8"},                /* truncated sequence */
        {"\"\xe2\x82\"", 1, "invalid UTF-8"},
        {"\"\xe2\x82x\"", 1, "invalid UTF-8"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct vd_err err = {0};
        cJSON *j = (cJSON *)1;
        int rc = vd_json_parse(cases[i].in, strlen(cases[i].in), VD_JSON_MAX_DEPTH, &j, &err);
        if (rc != VD_EINVAL)
            fail_msg("case %zu '%s' returned %d", i, cases[i].in, rc);
        assert_null(j);
        char want[64];
        snprintf(want, sizeof(want), "invalid JSON at byte %zu: ", cases[i].at);
        if (strncmp(err.msg, want, strlen(want)) != 0 || !strstr(err.msg, cases[i].reason))
            fail_msg("case %zu '%s': message '%s', expected '%s%s'", i, cases[i].in, err.msg, want,
                     cases[i].reason);
    }
    /* Input is a byte range, not a C string: a NUL inside is an error, bytes past len unseen. */
    struct vd_err err;
    cJSON *j;
    assert_int_equal(vd_json_parse("[1]\0", 4, 0, &j, &err), VD_EINVAL);
    assert_int_equal(vd_json_parse("[1]xyz", 3, 0, &j, &err), 0);
    cJSON_Delete(j);
    assert_int_equal(vd_json_parse(NULL, 0, 0, &j, &err), VD_EINVAL);
}

static char *nested(int depth, char open, char close)
{
    char *s = malloc((size_t)depth * 2 + 1);
    for (int i = 0; i < depth; i++) {
        s[i] = open;
        s[depth * 2 - 1 - i] = close;
    }
    s[depth * 2] = 0;
    return s;
}

static void test_depth_limit(void **state)
{
    struct vd_err err;
    cJSON *j;
    char *ok = nested(VD_JSON_MAX_DEPTH, '[', ']');
    assert_int_equal(vd_json_parse(ok, strlen(ok), VD_JSON_MAX_DEPTH, &j, &err), 0);
    cJSON_Delete(j);
    free(ok);
    char *deep = nested(VD_JSON_MAX_DEPTH + 1, '[', ']');
    assert_int_equal(vd_json_parse(deep, strlen(deep), VD_JSON_MAX_DEPTH, &j, &err), VD_EINVAL);
    assert_non_null(strstr(err.msg, "limit of 64 levels"));
    assert_non_null(strstr(err.msg, "at byte 64:"));
    free(deep);
    /* Objects count the same way; a custom limit is honoured. */
    assert_int_equal(vd_json_parse("{\"a\":{\"b\":{}}}", 14, 3, &j, &err), 0);
    cJSON_Delete(j);
    assert_int_equal(vd_json_parse("{\"a\":{\"b\":{}}}", 14, 2, &j, &err), VD_EINVAL);
    assert_non_null(strstr(err.msg, "limit of 2 levels"));
    /* A very deep hostile body fails fast without exhausting the stack. */
    char *huge = nested(1000000, '[', ']');
    assert_int_equal(vd_json_parse(huge, strlen(huge), VD_JSON_MAX_DEPTH, &j, &err), VD_EINVAL);
    assert_int_equal(vd_json_parse(huge, strlen(huge), 1 << 30, &j, &err), VD_EINVAL);
    assert_non_null(strstr(err.msg, "limit of 1024 levels"));
    free(huge);
}

static void test_duplicate_keys_large_object(void **state)
{
    /* 2000 members over 500 distinct keys: the sorted path must keep only the last of each. */
    struct vd_buf b;
    vd_buf_init(&b);
    vd_buf_puts(&b, "{");
    for (int i = 0; i < 2000; i++)
        vd_buf_printf(&b, "%s\"k%d\":%d", i ? "," : "", i % 500, i);
    vd_buf_puts(&b, "}");
    cJSON *j;
    struct vd_err err;
    assert_int_equal(vd_json_parse(b.data, b.len, 0, &j, &err), 0);
    assert_int_equal(cJSON_GetArraySize(j), 500);
    int idx = 0;
    for (cJSON *c = j->child; c; c = c->next, idx++) {
        char k[16];
        snprintf(k, sizeof(k), "k%d", idx);
        assert_string_equal(c->string, k);
        assert_int_equal(c->valueint, 1500 + idx);
    }
    assert_ptr_equal(j->child->prev, cJSON_GetArrayItem(j, 499)); /* cJSON's last-pointer */
    /* The tree stays usable with the cJSON API. */
    cJSON_AddItemToObject(j, "extra", cJSON_CreateTrue());
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "extra")));
    cJSON_Delete(j);
    vd_buf_release(&b);
}

/* ---- ids and integers -------------------------------------------------------------------- */

static int pid_of(const char *text, struct vd_pid *id, struct vd_err *err)
{
    cJSON *j;
    int rc = vd_json_parse(text, strlen(text), 0, &j, err);
    assert_int_equal(rc, 0);
    rc = vd_json_get_pid(j, id, err);
    cJSON_Delete(j);
    return rc;
}

static void test_point_ids(void **state)
{
    struct vd_pid id;
    struct vd_err err;
    assert_int_equal(pid_of("0", &id, &err), 0);
    assert_int_equal(id.type, VD_PID_NUM);
    assert_true(id.u.num == 0);
    assert_int_equal(pid_of("9007199254740993", &id, &err), 0); /* 2^53 + 1 */
    assert_true(id.u.num == 9007199254740993ull);
    assert_int_equal(pid_of("18446744073709551615", &id, &err), 0);
    assert_true(id.u.num == UINT64_MAX);
    struct vd_buf b;
    vd_buf_init(&b);
    vd_buf_json_pid(&b, &id);
    assert_string_equal(b.data, "18446744073709551615");
    vd_buf_release(&b);

    static const char *bad[] = {"18446744073709551616", "-1", "-0", "-0.0", "1.0", "1e3", "1.5",
                                "99999999999999999999999", "true", "null", "[1]", "{}",
                                "\"42\"", "\"not-a-uuid\"", "\"\""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&err, 0, sizeof(err));
        if (pid_of(bad[i], &id, &err) != VD_EINVAL)
            fail_msg("id %s accepted", bad[i]);
        assert_string_equal(err.msg, "point id must be an unsigned integer or a UUID string");
    }

    assert_int_equal(pid_of("\"550E8400-e29b-41d4-a716-446655440000\"", &id, &err), 0);
    assert_int_equal(id.type, VD_PID_UUID);
    vd_buf_init(&b);
    vd_buf_json_pid(&b, &id);
    assert_string_equal(b.data, "\"550e8400-e29b-41d4-a716-446655440000\"");
    vd_buf_release(&b);
    struct vd_pid id2;
    assert_int_equal(pid_of("\"550e8400e29b41d4a716446655440000\"", &id2, &err), 0);
    assert_true(vd_pid_eq(&id, &id2));

    /* Numbers built in code carry no text: exact integers only. */
    cJSON *n = cJSON_CreateNumber(42);
    assert_int_equal(vd_json_get_pid(n, &id, &err), 0);
    assert_true(id.u.num == 42);
    cJSON_SetNumberValue(n, 4.5);
    assert_int_equal(vd_json_get_pid(n, &id, &err), VD_EINVAL);
    cJSON_Delete(n);
}

static void test_integers(void **state)
{
    static const struct {
        const char *text;
        int rc_u, rc_i;
        uint64_t u;
        int64_t i;
    } cases[] = {
        {"0", 0, 0, 0, 0},
        {"-0", 0, 0, 0, 0},
        {"42", 0, 0, 42, 42},
        {"-42", VD_ERANGE, 0, 0, -42},
        {"9223372036854775807", 0, 0, 9223372036854775807ull, INT64_MAX},
        {"9223372036854775808", 0, VD_ERANGE, 9223372036854775808ull, 0},
        {"-9223372036854775808", VD_ERANGE, 0, 0, INT64_MIN},
        {"-9223372036854775809", VD_ERANGE, VD_ERANGE, 0, 0},
        {"18446744073709551615", 0, VD_ERANGE, UINT64_MAX, 0},
        {"18446744073709551616", VD_ERANGE, VD_ERANGE, 0, 0},
        {"1.0", VD_EINVAL, VD_EINVAL, 0, 0},
        {"1e2", VD_EINVAL, VD_EINVAL, 0, 0},
        {"\"1\"", VD_EINVAL, VD_EINVAL, 0, 0},
        {"null", VD_EINVAL, VD_EINVAL, 0, 0},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        cJSON *j;
        struct vd_err err;
        assert_int_equal(vd_json_parse(cases[k].text, strlen(cases[k].text), 0, &j, &err), 0);
        uint64_t u = 7;
        int64_t i = 7;
        int ru = vd_json_get_u64(j, &u), ri = vd_json_get_i64(j, &i);
        if (ru != cases[k].rc_u || ri != cases[k].rc_i)
            fail_msg("%s: u64 rc %d i64 rc %d", cases[k].text, ru, ri);
        if (ru == 0)
            assert_true(u == cases[k].u);
        if (ri == 0)
            assert_true(i == cases[k].i);
        cJSON_Delete(j);
    }
}

/* ---- floats ------------------------------------------------------------------------------ */

static float bits_to_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t float_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static int sig_digits(const char *s)
{
    int n = 0, started = 0, trailing = 0;
    for (; *s && *s != 'e' && *s != 'E'; s++) {
        if (*s < '0' || *s > '9')
            continue;
        if (*s != '0')
            started = 1;
        if (!started)
            continue;
        n++;
        trailing = *s == '0' ? trailing + 1 : 0;
    }
    return n - trailing;
}

static void test_fmt_float_known(void **state)
{
    static const struct {
        float f;
        const char *s;
    } cases[] = {
        {0.0f, "0.0"},
        {-0.0f, "-0.0"},
        {1.0f, "1.0"},
        {-2.0f, "-2.0"},
        {0.1f, "0.1"},
        {1.5f, "1.5"},
        {0.3f, "0.3"},
        {123.456f, "123.456"},
        {16777216.0f, "16777216.0"},
        {1e10f, "10000000000.0"},
        {1e16f, "1e16"},
        {0.0001f, "0.0001"},
        {0.00001f, "1e-5"},
        {1.5e-7f, "1.5e-7"},
        {3.4028235e38f, "3.4028235e38"},
        {1.17549435e-38f, "1.1754944e-38"},
    };
    char buf[VD_JSON_FLOAT_MAX];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int n = vd_json_fmt_float(cases[i].f, buf);
        assert_int_equal(n, (int)strlen(buf));
        if (strcmp(buf, cases[i].s) != 0)
            fail_msg("%.9g printed '%s', expected '%s'", (double)cases[i].f, buf, cases[i].s);
    }
    vd_json_fmt_float(bits_to_float(1), buf); /* smallest subnormal */
    assert_string_equal(buf, "1e-45");
    vd_json_fmt_float(bits_to_float(0x7f7fffff), buf);
    assert_string_equal(buf, "3.4028235e38");
}

static void test_fmt_float_roundtrip_random(void **state)
{
    size_t iters = small_scale() ? 200000 : 4000000;
    char buf[VD_JSON_FLOAT_MAX], ref[64];
    size_t checked_short = 0;
    uint64_t t0 = vd_mono_ns();
    for (size_t i = 0; i < iters; i++) {
        uint32_t u = (uint32_t)rng();
        /* Half the draws from the range embeddings live in, half from all finite patterns. */
        if (i & 1)
            u = (u & 0x807fffffu) | ((uint32_t)(110 + (u >> 23) % 20) << 23);
        float f = bits_to_float(u);
        if (!isfinite(f))
            continue;
        int n = vd_json_fmt_float(f, buf);
        assert_true(n > 0 && n < VD_JSON_FLOAT_MAX && (size_t)n == strlen(buf));
        float g = strtof(buf, NULL);
        if (float_bits(g) != u)
            fail_msg("bits %08x printed '%s' reads back as %08x", u, buf, float_bits(g));
        /* The text is a JSON number that reads as a float (has '.' or an exponent). */
        assert_true(strchr(buf, '.') || strchr(buf, 'e'));
        if (i % 16 == 0) {
            /* Shortest: no fewer digits can round-trip than we printed. */
            int p;
            for (p = 1; p <= 9; p++) {
                snprintf(ref, sizeof(ref), "%.*g", p, (double)f);
                if (strtof(ref, NULL) == f)
                    break;
            }
            if (f != 0.0f && sig_digits(buf) != p)
                fail_msg("bits %08x printed '%s' (%d digits), shortest has %d ('%s')", u, buf,
                         sig_digits(buf), p, ref);
            checked_short++;
        }
    }
    double secs = (double)(vd_mono_ns() - t0) / 1e9;
    printf("# fmt_float: %zu random floats round-tripped (%zu checked shortest) in %.2f s\n", iters,
           checked_short, secs);
}

static void test_fmt_float_speed(void **state)
{
    size_t n = small_scale() ? 100000 : 1000000;
    float *v = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        v[i] = (float)((double)(int64_t)rng() / 9.2233720368547758e18 * 0.2);
    struct vd_buf b;
    vd_buf_init(&b);
    uint64_t t0 = vd_mono_ns();
    vd_buf_json_floats(&b, v, n);
    uint64_t ns = vd_mono_ns() - t0;
    assert_true(vd_buf_ok(&b));
    printf("# vd_buf_json_floats: %zu floats in %.1f ms (%.0f ns/float, %zu bytes)\n", n,
           (double)ns / 1e6, (double)ns / (double)n, b.len);
    /* The printed array reads back bit-exactly. */
    cJSON *j;
    struct vd_err err;
    assert_int_equal(vd_json_parse(b.data, b.len, 0, &j, &err), 0);
    float *back;
    uint32_t m;
    assert_int_equal(vd_json_get_floats(j, 0, NULL, &back, &m, &err), 0);
    assert_int_equal(m, n);
    assert_memory_equal(back, v, n * sizeof(float));
    free(back);
    cJSON_Delete(j);
    vd_buf_release(&b);
    free(v);
}

static void test_get_floats(void **state)
{
    cJSON *j;
    struct vd_err err;
    float *v;
    uint32_t n;
    const char *doc = "[1, -0.5, 3.4028235e38, 1e-50, 0.1, 1.0000000596046447753906250001,"
                      " 1.000000059604644775390625, 3.40282356e38]";
    assert_int_equal(vd_json_parse(doc, strlen(doc), 0, &j, &err), 0);
    assert_int_equal(vd_json_get_floats(j, 0, NULL, &v, &n, &err), 0);
    assert_int_equal(n, 8);
    assert_true(v[0] == 1.0f && v[1] == -0.5f && v[2] == FLT_MAX && v[3] == 0.0f);
    assert_true(v[4] == 0.1f);
    /* Just above a midpoint: rounding via double would land on the midpoint and tie to even. */
    assert_true(v[5] == strtof("1.0000000596046447753906250001", NULL));
    assert_true(v[5] == nextafterf(1.0f, 2.0f));
    assert_true(v[6] == 1.0f); /* the exact midpoint ties to even */
    assert_true(v[7] == FLT_MAX);
    free(v);
    float dst[8];
    float *got;
    assert_int_equal(vd_json_get_floats(j, 8, dst, &got, NULL, &err), 0);
    assert_ptr_equal(got, dst);
    assert_int_equal(vd_json_get_floats(j, 4, NULL, &v, &n, &err), VD_EINVAL);
    assert_string_equal(err.msg, "Vector dimension error: expected dim: 4, got 8");
    cJSON_Delete(j);

    static const struct {
        const char *doc, *msg;
    } bad[] = {
        {"[]", "vector is empty"},
        {"{}", "vector must be an array of numbers"},
        {"[1,2,\"3\"]", "vector[2] is not a number"},
        {"[1,2,3,3.5e38]", "vector[3] is not a finite float32"},
        {"[1e39]", "vector[0] is not a finite float32"},
        {"[-1e300]", "vector[0] is not a finite float32"},
        {"[1,[2]]", "vector[1] is not a number"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(vd_json_parse(bad[i].doc, strlen(bad[i].doc), 0, &j, &err), 0);
        assert_int_equal(vd_json_get_floats(j, 0, NULL, &v, &n, &err), VD_EINVAL);
        assert_string_equal(err.msg, bad[i].msg);
        cJSON_Delete(j);
    }
}

/* ---- decimal to double ------------------------------------------------------------------ */

static uint64_t double_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof(u));
    return u;
}

static double bits_double(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof(d));
    return d;
}

struct d2d_check {
    size_t n;
    size_t via_parse;
};

/* The reader's double for text must be strtod's, bit for bit; every 61st text also goes through
 * vd_json_parse, which must keep the literal and the same value. */
static void d2d_check(struct d2d_check *st, const char *text)
{
    size_t len = strlen(text);
    double want = strtod(text, NULL);
    double got = vd__json_text_to_double(text, len);
    if (double_bits(got) != double_bits(want))
        fail_msg("'%s': got %a (%016llx), strtod gives %a (%016llx)", text, got,
                 (unsigned long long)double_bits(got), want,
                 (unsigned long long)double_bits(want));
    st->n++;
    if (st->n % 61 == 0) {
        cJSON *j;
        struct vd_err err;
        int rc = vd_json_parse(text, len, 0, &j, &err);
        if (!isfinite(want)) {
            assert_int_equal(rc, VD_EINVAL);
            return;
        }
        if (rc)
            fail_msg("'%s' does not parse: %s", text, err.msg);
        assert_true(cJSON_IsNumber(j));
        assert_string_equal(j->valuestring, text);
        assert_true(double_bits(j->valuedouble) == double_bits(want));
        cJSON_Delete(j);
        st->via_parse++;
    }
}

/* Digits of u (nonzero) with a decimal point inserted after `point` digits (0 = none). */
static void d2d_digits(char *o, size_t cap, bool neg, unsigned __int128 u, int point, int exp10)
{
    char dig[48];
    int nd = 0;
    do {
        dig[nd++] = (char)('0' + (int)(u % 10));
        u /= 10;
    } while (u);
    size_t k = 0;
    if (neg)
        o[k++] = '-';
    for (int i = nd - 1; i >= 0; i--) {
        o[k++] = dig[i];
        if (point && nd - i == point && i > 0)
            o[k++] = '.';
    }
    snprintf(o + k, cap - k, "e%d", exp10);
}

/*
 * Millions of decimal texts against strtod: random doubles printed with 17, 16 and 9 digits,
 * float32 values printed as the shortest float64 text (what clients send), random digit strings
 * of 1..25 digits with random exponents, exact halfway cases between doubles and their
 * neighbours, subnormals, and the limits of the double range.
 */
static void test_text_to_double_matches_strtod(void **state)
{
    (void)state;
    struct d2d_check st = {0};
    char t[96];
    uint64_t t0 = vd_mono_ns();

    static const char *fixed[] = {
        "0", "-0", "0.0", "-0.0e5", "0e999999", "1", "-1", "9007199254740992", "9007199254740993",
        "9007199254740994", "9007199254740995", "18014398509481985", "1e22", "1e23", "1e-22",
        "1e-23", "8.98846567431158e307", "1.7976931348623157e308", "1.7976931348623158e308",
        "1.7976931348623159e308", "1.797693134862315807e308", "1e308", "1e309", "1e400",
        "-1e400", "2.2250738585072014e-308", "2.2250738585072011e-308", "2.225073858507201e-308",
        "4.9406564584124654e-324", "4.9e-324", "5e-324", "2.4703282292062327e-324",
        "2.4703282292062328e-324", "2.47032822920623272e-324", "1e-324", "1e-400", "1e-99999",
        "1e99999", "0.000000000000000000000000000000000000001",
        "123456789012345678901234567890", "1234567890123456789", "12345678901234567890",
        "9999999999999999999", "99999999999999999999", "10000000000000000000000",
        "0.1", "0.2", "0.3", "0.012345678901234567", "-1.2345678901234567e-05",
        "2.0000000000000004", "2.00000000000000044408920985006", "1.00000000000000011102230246251565404236316680908203125",
        "1.00000000000000011102230246251565404236316680908203124",
        "1.00000000000000011102230246251565404236316680908203126",
        "7.3177701707893310e+15", "3.4028234663852886e+38", "1.1754943508222875e-38",
        "1.401298464324817e-45", "4.35679388e-316", "1.8446744073709552e19",
    };
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        d2d_check(&st, fixed[i]);

    size_t iters = small_scale() ? 50000 : 400000;
    for (size_t it = 0; it < iters; it++) {
        /* Random finite doubles, any exponent. */
        uint64_t u = rng();
        double d = bits_double(u);
        if (!isfinite(d))
            d = bits_double(u & ~(UINT64_C(1) << 62));
        snprintf(t, sizeof(t), "%.17g", d);
        d2d_check(&st, t);
        snprintf(t, sizeof(t), "%.16g", d);
        d2d_check(&st, t);
        snprintf(t, sizeof(t), "%.9g", d);
        d2d_check(&st, t);

        /* Subnormals. */
        double sub = bits_double((rng() & ((UINT64_C(1) << 52) - 1)) >> (rng() % 52));
        snprintf(t, sizeof(t), "%.17g", sub);
        d2d_check(&st, t);
        snprintf(t, sizeof(t), "%.*e", (int)(rng() % 20), sub);
        d2d_check(&st, t);

        /* float32 vector values as the shortest float64 text, small and ordinary magnitudes. */
        float f = (float)((double)(int64_t)rng() / 9.2233720368547758e18 *
                          (it & 1 ? 1.0 : 1e-3 * (double)(rng() % 1000)));
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(t, sizeof(t), "%.*g", prec, (double)f);
            if (strtod(t, NULL) == (double)f)
                break;
        }
        d2d_check(&st, t);

        /* Random digit strings: 1..25 digits, a point somewhere, exponent in [-360, 330]. */
        {
            int nd = 1 + (int)(rng() % 25);
            unsigned __int128 v = 0;
            for (int i = 0; i < nd; i++)
                v = v * 10 + rng() % 10;
            if (v == 0)
                v = 1;
            int ex = (int)(rng() % 691) - 360;
            bool neg = rng() & 1;
            int point = rng() % 4 == 0 ? 0 : 1;
            d2d_digits(t, sizeof(t), neg, v, point, ex);
            d2d_check(&st, t);
        }

        /* Exact halfway points between neighbouring doubles, m * 2^e with m odd in (2^53, 2^54),
         * written exactly (m * 5^k e-k for e = -k < 0), and one unit off in the last digit. */
        {
            uint64_t m = ((UINT64_C(1) << 53) | (rng() & ((UINT64_C(1) << 53) - 1))) | 1;
            int e = (int)(rng() % 16) - 5; /* -5..10 */
            unsigned __int128 v = m;
            int ex = 0;
            if (e >= 0)
                v <<= e;
            else
                for (int k = 0; k < -e; k++)
                    v *= 5, ex--;
            d2d_digits(t, sizeof(t), false, v, 0, ex);
            d2d_check(&st, t);
            d2d_digits(t, sizeof(t), false, v + 1, 0, ex);
            d2d_check(&st, t);
            d2d_digits(t, sizeof(t), true, v - 1, 0, ex);
            d2d_check(&st, t);
            /* Append zeros so the literal has more than 19 digits but the same value. */
            d2d_digits(t, sizeof(t), false, v * 10000, 0, ex - 4);
            d2d_check(&st, t);
        }

        /* Near the midpoint of a random double and its successor, with 17..25 digits. */
        {
            double a = bits_double(rng() >> 2);
            double b = nextafter(a, INFINITY);
            long double mid = ((long double)a + (long double)b) / 2;
            snprintf(t, sizeof(t), "%.*Le", 16 + (int)(rng() % 9), mid);
            d2d_check(&st, t);
        }
    }
    /* Powers of ten across the whole range, and their neighbours in the 17th digit. */
    for (int ex = -345; ex <= 310; ex++) {
        snprintf(t, sizeof(t), "1e%d", ex);
        d2d_check(&st, t);
        snprintf(t, sizeof(t), "1.0000000000000001e%d", ex);
        d2d_check(&st, t);
        snprintf(t, sizeof(t), "9.9999999999999999e%d", ex);
        d2d_check(&st, t);
    }
    printf("# text_to_double: %zu texts matched strtod (%zu also through vd_json_parse) in %.2f s\n",
           st.n, st.via_parse, (double)(vd_mono_ns() - t0) / 1e9);
}

/* A parsed number keeps its literal inside its own node: setting, duplicating, detaching and
 * moving it must neither leak nor free the text twice (the sanitizer build checks both). */
static void test_number_node_ownership(void **state)
{
    (void)state;
    const char *doc = "{\"a\":0.012345678901234567,\"b\":[1e-5,18446744073709551615],\"c\":\"s\"}";
    cJSON *j, *a, *b, *dup;
    struct vd_err err;
    assert_int_equal(vd_json_parse(doc, strlen(doc), 0, &j, &err), 0);
    a = cJSON_GetObjectItemCaseSensitive(j, "a");
    assert_true(cJSON_IsNumber(a));
    assert_string_equal(a->valuestring, "0.012345678901234567");
    assert_true(a->valuedouble == 0.012345678901234567);

    dup = cJSON_Duplicate(a, true);
    assert_non_null(dup);
    assert_true(cJSON_IsNumber(dup));
    assert_string_equal(dup->valuestring, "0.012345678901234567");
    assert_ptr_not_equal(dup->valuestring, a->valuestring);

    vd_json_set_number(a, 2.5);
    assert_null(a->valuestring);
    struct vd_buf out;
    vd_buf_init(&out);
    vd_buf_json(&out, j);
    assert_string_equal(out.data, "{\"a\":2.5,\"b\":[1e-5,18446744073709551615],\"c\":\"s\"}");
    vd_buf_release(&out);

    /* Moved to another tree, the number keeps its text and is freed with that tree. */
    b = cJSON_DetachItemFromArray(cJSON_GetObjectItemCaseSensitive(j, "b"), 1);
    cJSON *other = cJSON_CreateArray();
    cJSON_AddItemToArray(other, b);
    cJSON_AddItemToArray(other, dup);
    cJSON_Delete(j);
    vd_buf_init(&out);
    vd_buf_json(&out, other);
    assert_string_equal(out.data, "[18446744073709551615,0.012345678901234567]");
    vd_buf_release(&out);
    cJSON_Delete(other);
}

/* Values near midpoints of random floats, written with many digits, must match strtof. */
static void test_get_floats_matches_strtof(void **state)
{
    size_t iters = small_scale() ? 20000 : 300000;
    char text[128];
    for (size_t i = 0; i < iters; i++) {
        uint32_t u = ((uint32_t)rng() & 0x807fffffu) | ((uint32_t)(rng() % 255) << 23); /* subnormals too */
        float f = bits_to_float(u), g = nextafterf(f, INFINITY);
        if (isinf(g))
            continue;
        double mid = ((double)f + (double)g) / 2;
        /* exact midpoint, and a hair either side of it, and a random double */
        double which[4] = {mid, nextafter(mid, INFINITY), nextafter(mid, -INFINITY), (double)f};
        for (int k = 0; k < 4; k++) {
            snprintf(text, sizeof(text), "[%.40g]", which[k]);
            cJSON *j;
            struct vd_err err;
            assert_int_equal(vd_json_parse(text, strlen(text), 0, &j, &err), 0);
            float *v;
            uint32_t n;
            int rc = vd_json_get_floats(j, 1, NULL, &v, &n, &err);
            float want = strtof(text + 1, NULL);
            if (isinf(want)) {
                assert_int_equal(rc, VD_EINVAL);
            } else {
                assert_int_equal(rc, 0);
                if (float_bits(v[0]) != float_bits(want))
                    fail_msg("%s read as %08x, strtof says %08x", text, float_bits(v[0]),
                             float_bits(want));
                free(v);
            }
            cJSON_Delete(j);
        }
    }
}

/* ---- writers ----------------------------------------------------------------------------- */

static void test_payload_numbers_exact(void **state)
{
    const char *doc = "{\"big\":18446744073709551615,\"neg\":-9223372036854775808,"
                      "\"dec\":0.1000000000000000055511151231257827,\"z\":-0,\"e\":1.5E-7,"
                      "\"arr\":[1,2.50,3e2,1e-400],\"s\":\"\\u00e9\\\"x\\\\\"}";
    struct vd_err err;
    char *out = roundtrip(doc, strlen(doc), &err);
    assert_non_null(out);
    assert_string_equal(out, "{\"big\":18446744073709551615,\"neg\":-9223372036854775808,"
                             "\"dec\":0.1000000000000000055511151231257827,\"z\":-0,\"e\":1.5E-7,"
                             "\"arr\":[1,2.50,3e2,1e-400],\"s\":\"\xc3\xa9\\\"x\\\\\"}");
    free(out);

    /* Numbers built in code print shortest round-trip, integers without ".0". */
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "i", 42);
    cJSON_AddNumberToObject(o, "d", 0.1);
    cJSON_AddNumberToObject(o, "t", 1.0 / 3.0);
    cJSON_AddNumberToObject(o, "big", 1e20);
    cJSON_AddNumberToObject(o, "inf", INFINITY);
    cJSON_AddRawToObject(o, "raw", "[1,2]");
    cJSON_AddNullToObject(o, "n");
    struct vd_buf b;
    vd_buf_init(&b);
    vd_buf_json(&b, o);
    assert_string_equal(b.data, "{\"i\":42,\"d\":0.1,\"t\":0.3333333333333333,\"big\":1e+20,"
                                "\"inf\":null,\"raw\":[1,2],\"n\":null}");
    vd_buf_release(&b);
    cJSON_Delete(o);

    /* Changing a parsed number drops its text. */
    cJSON *j;
    assert_int_equal(vd_json_parse("[12345678901234567890]", 22, 0, &j, &err), 0);
    vd_json_set_number(j->child, 7);
    vd_buf_init(&b);
    vd_buf_json(&b, j);
    assert_string_equal(b.data, "[7]");
    vd_buf_release(&b);
    /* cJSON_Duplicate keeps the text (it copies valuestring). */
    cJSON_Delete(j);
    assert_int_equal(vd_json_parse("[12345678901234567890]", 22, 0, &j, &err), 0);
    cJSON *dup = cJSON_Duplicate(j, 1);
    vd_buf_init(&b);
    vd_buf_json(&b, dup);
    assert_string_equal(b.data, "[12345678901234567890]");
    vd_buf_release(&b);
    cJSON_Delete(dup);
    cJSON_Delete(j);
}

static void test_json_string_escaping(void **state)
{
    struct vd_buf b;
    vd_buf_init(&b);
    const char in[] = "a\"b\\c\x01\x1f\n\t\x7f \xc3\xa9 \xff \xed\xa0\x80 \xf0\x9f\x98\x80";
    vd_buf_json_string(&b, in, sizeof(in) - 1);
    assert_string_equal(b.data, "\"a\\\"b\\\\c\\u0001\\u001f\\n\\t\x7f \xc3\xa9 \xef\xbf\xbd "
                                "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd \xf0\x9f\x98\x80\"");
    /* Whatever the bytes, the output parses back. */
    cJSON *j;
    struct vd_err err;
    assert_int_equal(vd_json_parse(b.data, b.len, 0, &j, &err), 0);
    cJSON_Delete(j);
    vd_buf_release(&b);
    for (int round = 0; round < 2000; round++) {
        unsigned char raw[32];
        for (size_t i = 0; i < sizeof(raw); i++)
            raw[i] = (unsigned char)(rng() | 1); /* no NUL */
        vd_buf_init(&b);
        vd_buf_json_string(&b, (const char *)raw, sizeof(raw));
        assert_int_equal(vd_json_parse(b.data, b.len, 0, &j, &err), 0);
        cJSON_Delete(j);
        vd_buf_release(&b);
    }
}

static void test_buf(void **state)
{
    struct vd_buf b;
    vd_buf_init(&b);
    size_t n;
    char *s = vd_buf_steal(&b, &n);
    assert_string_equal(s, "");
    assert_int_equal(n, 0);
    free(s);
    for (int i = 0; i < 1000; i++)
        vd_buf_printf(&b, "%d,", i);
    vd_buf_printf(&b, "%s", "");
    char big[1000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    vd_buf_printf(&b, "<%s>", big);
    assert_true(vd_buf_ok(&b));
    assert_int_equal(b.len, strlen(b.data));
    assert_memory_equal(b.data, "0,1,2,", 6);
    assert_memory_equal(b.data + b.len - 3, "xx>", 3);
    s = vd_buf_steal(&b, &n);
    assert_int_equal(n, strlen(s));
    assert_null(b.data);
    free(s);
    /* Sticky failure: an impossible reservation poisons the buffer. */
    vd_buf_puts(&b, "abc");
    assert_false(vd_buf_reserve(&b, SIZE_MAX - 2));
    assert_false(vd_buf_ok(&b));
    vd_buf_puts(&b, "def");
    assert_null(vd_buf_steal(&b, &n));
    assert_int_equal(n, 0);
    assert_true(vd_buf_ok(&b));
    vd_buf_puts(&b, "x");
    vd_buf_release(&b);
    assert_null(b.data);
}

/* ---- NDJSON ------------------------------------------------------------------------------ */

struct collect {
    struct vd_buf out; /* "lineno:text|" per line, "lineno:TOOLONG(len)|" for dropped ones */
    uint64_t stop_at;  /* stop at this line number (0 = never) */
};

static int collect_line(const char *line, size_t len, uint64_t lineno, void *ctx)
{
    struct collect *c = ctx;
    if (line)
        vd_buf_printf(&c->out, "%llu:%.*s|", (unsigned long long)lineno, (int)len, line);
    else
        vd_buf_printf(&c->out, "%llu:TOOLONG(%zu)|", (unsigned long long)lineno, len);
    return c->stop_at && lineno == c->stop_at ? 42 : 0;
}

static void test_ndjson_every_split(void **state)
{
    const char doc[] = "{\"id\":1}\n"
                       "{\"id\":2}\r\n"
                       "\n"
                       "0123456789abcdef-too-long\n"
                       "{\"id\":3}\n"
                       "1234567890123456\r\n" /* exactly max_line before the \r */
                       "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n"
                       "last";
    const char want[] = "1:{\"id\":1}|2:{\"id\":2}|4:TOOLONG(25)|5:{\"id\":3}|"
                        "6:1234567890123456|7:TOOLONG(40)|8:last|";
    size_t n = sizeof(doc) - 1;
    for (size_t i = 0; i <= n; i++) {
        for (size_t j = i; j <= n; j++) {
            struct collect c = {.stop_at = 0};
            vd_buf_init(&c.out);
            struct vd_ndjson *s;
            assert_int_equal(vd_ndjson_new(16, collect_line, &c, &s), 0);
            assert_int_equal(vd_ndjson_feed(s, doc, i), 0);
            assert_int_equal(vd_ndjson_feed(s, doc + i, j - i), 0);
            assert_int_equal(vd_ndjson_feed(s, doc + j, n - j), 0);
            assert_int_equal(vd_ndjson_finish(s), 0);
            if (strcmp(c.out.data, want) != 0)
                fail_msg("split at %zu,%zu: got '%s'", i, j, c.out.data);
            assert_true(vd_ndjson_overlong(s) == 2);
            assert_true(vd_ndjson_lines(s) == 8);
            vd_ndjson_free(s);
            vd_buf_release(&c.out);
        }
    }
    /* One byte at a time. */
    struct collect c = {.stop_at = 0};
    vd_buf_init(&c.out);
    struct vd_ndjson *s;
    assert_int_equal(vd_ndjson_new(16, collect_line, &c, &s), 0);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(vd_ndjson_feed(s, doc + i, 1), 0);
    assert_int_equal(vd_ndjson_finish(s), 0);
    assert_string_equal(c.out.data, want);
    vd_ndjson_free(s);
    vd_buf_release(&c.out);
}

static void test_ndjson_stop_and_errors(void **state)
{
    struct collect c = {.stop_at = 2};
    vd_buf_init(&c.out);
    struct vd_ndjson *s;
    assert_int_equal(vd_ndjson_new(0, collect_line, &c, &s), VD_EINVAL);
    assert_int_equal(vd_ndjson_new(8, NULL, &c, &s), VD_EINVAL);
    assert_int_equal(vd_ndjson_new(8, collect_line, &c, &s), 0);
    assert_int_equal(vd_ndjson_feed(s, "a\nb\nc\n", 6), 42);
    assert_int_equal(vd_ndjson_feed(s, "d\n", 2), 42); /* sticky */
    assert_int_equal(vd_ndjson_finish(s), 42);
    assert_string_equal(c.out.data, "1:a|2:b|");
    vd_ndjson_free(s);
    vd_buf_release(&c.out);

    /* A huge line in many chunks is counted, not buffered, and the next line still arrives. */
    c = (struct collect){.stop_at = 0};
    vd_buf_init(&c.out);
    assert_int_equal(vd_ndjson_new(100, collect_line, &c, &s), 0);
    char chunk[4096];
    memset(chunk, 'x', sizeof(chunk));
    for (int i = 0; i < 256; i++)
        assert_int_equal(vd_ndjson_feed(s, chunk, sizeof(chunk)), 0);
    assert_int_equal(vd_ndjson_feed(s, "\nok", 3), 0);
    assert_int_equal(vd_ndjson_finish(s), 0);
    assert_int_equal(vd_ndjson_feed(s, "late\n", 5), 0); /* ignored after finish */
    assert_string_equal(c.out.data, "1:TOOLONG(1048576)|2:ok|");
    vd_ndjson_free(s);
    vd_buf_release(&c.out);
}

/* ---- allocation failures ----------------------------------------------------------------- */

static long alloc_countdown = -1; /* allocations left before failing; -1 = never fail */

static void *failing_malloc(size_t n)
{
    if (alloc_countdown == 0)
        return NULL;
    if (alloc_countdown > 0)
        alloc_countdown--;
    return malloc(n);
}

/* Every cJSON allocation the parser makes fails in turn: the result is VD_ENOMEM with nothing
 * leaked (the sanitizer build checks leaks), or success once the countdown outlasts the parse. */
static void test_parse_allocation_failures(void **state)
{
    const char *doc = "{\"points\":[{\"id\":1,\"vector\":[0.5,1e-3],\"payload\":{\"a\":\"x\\u00e9\","
                      "\"a\":[true,null,\"y\"]}},{\"id\":\"550e8400e29b41d4a716446655440000\"}]}";
    cJSON_Hooks hooks = {.malloc_fn = failing_malloc, .free_fn = free};
    cJSON_InitHooks(&hooks);
    int failures = 0;
    for (long k = 0;; k++) {
        cJSON *j;
        struct vd_err err;
        alloc_countdown = k;
        int rc = vd_json_parse(doc, strlen(doc), 0, &j, &err);
        alloc_countdown = -1;
        if (rc == 0) {
            struct vd_buf b;
            vd_buf_init(&b);
            vd_buf_json(&b, j);
            assert_string_equal(b.data, "{\"points\":[{\"id\":1,\"vector\":[0.5,1e-3],\"payload\":"
                                        "{\"a\":[true,null,\"y\"]}},{\"id\":"
                                        "\"550e8400e29b41d4a716446655440000\"}]}");
            vd_buf_release(&b);
            cJSON_Delete(j);
            break;
        }
        assert_int_equal(rc, VD_ENOMEM);
        assert_null(j);
        assert_int_equal(err.code, VD_ENOMEM);
        failures++;
    }
    cJSON_InitHooks(NULL);
    assert_true(failures > 20);
}

/* ---- performance ------------------------------------------------------------------------- */

/*
 * A 256 x 1536 upsert body. digits17 = false prints the vectors as shortest float32 text (what
 * vectord itself writes); true prints each float32 widened to double as shortest float64 text,
 * 16-17 significant digits, which is what clients holding float32 arrays in float64 lists send.
 */
static void parse_big_batch(bool digits17)
{
    const int points = 256, dim = 1536;
    struct vd_buf b;
    vd_buf_init(&b);
    float *vec = malloc(sizeof(float) * dim);
    vd_buf_puts(&b, "{\"points\":[");
    for (int p = 0; p < points; p++) {
        for (int d = 0; d < dim; d++)
            vec[d] = (float)((double)(int64_t)rng() / 9.2233720368547758e18 * 0.1);
        vd_buf_printf(&b, "%s{\"id\":%d,\"vector\":", p ? "," : "", p);
        if (!digits17) {
            vd_buf_json_floats(&b, vec, (size_t)dim);
        } else {
            for (int d = 0; d < dim; d++) {
                char t[32];
                for (int prec = 15; prec <= 17; prec++) {
                    snprintf(t, sizeof(t), "%.*g", prec, (double)vec[d]);
                    if (strtod(t, NULL) == (double)vec[d])
                        break;
                }
                vd_buf_printf(&b, "%s%s", d ? "," : "[", t);
            }
            vd_buf_puts(&b, "]");
        }
        vd_buf_puts(&b, ",\"payload\":{\"text\":\"chunk of a document\",\"n\":1}}");
    }
    vd_buf_puts(&b, "]}");
    assert_true(vd_buf_ok(&b));

    int reps = small_scale() ? 1 : 5;
    uint64_t best_parse = UINT64_MAX, best_floats = UINT64_MAX, best_delete = UINT64_MAX;
    for (int r = 0; r < reps; r++) {
        cJSON *j;
        struct vd_err err;
        uint64_t t0 = vd_mono_ns();
        assert_int_equal(vd_json_parse(b.data, b.len, VD_JSON_MAX_DEPTH, &j, &err), 0);
        uint64_t t1 = vd_mono_ns();
        float *all = malloc(sizeof(float) * (size_t)dim * (size_t)points);
        int p = 0;
        cJSON *pt;
        cJSON_ArrayForEach(pt, cJSON_GetObjectItemCaseSensitive(j, "points"))
        {
            float *got;
            assert_int_equal(vd_json_get_floats(cJSON_GetObjectItemCaseSensitive(pt, "vector"),
                                                (uint32_t)dim, all + (size_t)p * dim, &got, NULL,
                                                &err),
                             0);
            p++;
        }
        uint64_t t2 = vd_mono_ns();
        assert_int_equal(p, points);
        assert_memory_equal(all + (size_t)(points - 1) * dim, vec, sizeof(float) * dim);
        if (t1 - t0 < best_parse)
            best_parse = t1 - t0;
        if (t2 - t1 < best_floats)
            best_floats = t2 - t1;
        free(all);
        uint64_t t3 = vd_mono_ns();
        cJSON_Delete(j);
        uint64_t t4 = vd_mono_ns();
        if (t4 - t3 < best_delete)
            best_delete = t4 - t3;
    }
    printf("# parse of %d x %d floats as %s (%.2f MB): %.1f ms parse, %.1f ms to float arrays, "
           "%.1f ms cJSON_Delete (best of %d)\n",
           points, dim, digits17 ? "float64 text" : "float32 text", (double)b.len / 1e6,
           (double)best_parse / 1e6, (double)best_floats / 1e6, (double)best_delete / 1e6, reps);
    free(vec);
    vd_buf_release(&b);
}

static void test_parse_big_batch(void **state)
{
    (void)state;
    parse_big_batch(false);
}

static void test_parse_big_batch_17_digits(void **state)
{
    (void)state;
    parse_big_batch(true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_documents),
        cmocka_unit_test(test_invalid_documents),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_duplicate_keys_large_object),
        cmocka_unit_test(test_point_ids),
        cmocka_unit_test(test_integers),
        cmocka_unit_test(test_fmt_float_known),
        cmocka_unit_test(test_fmt_float_roundtrip_random),
        cmocka_unit_test(test_fmt_float_speed),
        cmocka_unit_test(test_get_floats),
        cmocka_unit_test(test_get_floats_matches_strtof),
        cmocka_unit_test(test_text_to_double_matches_strtod),
        cmocka_unit_test(test_number_node_ownership),
        cmocka_unit_test(test_payload_numbers_exact),
        cmocka_unit_test(test_json_string_escaping),
        cmocka_unit_test(test_buf),
        cmocka_unit_test(test_ndjson_every_split),
        cmocka_unit_test(test_ndjson_stop_and_errors),
        cmocka_unit_test(test_parse_allocation_failures),
        cmocka_unit_test(test_parse_big_batch),
        cmocka_unit_test(test_parse_big_batch_17_digits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
