/*
 * Filter tests: a table of filters x payloads for every operator and edge case (checked on the
 * cJSON and the binary backend), malformed filters with their messages, a randomized comparison
 * against a brute-force evaluator written here from the documented rules, the binary payload
 * format (round trip, corruption), and a benchmark print.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "vectord/filter.h"
#include "vectord/json.h"

/* Request and payload JSON goes through the strict parser, whose numbers keep their literal
 * text: "1.0" stays a float, big integers stay exact. */
static cJSON *parse_lit(const char *s)
{
    cJSON *j = NULL;
    struct vd_err err = {0};
    if (vd_json_parse(s, strlen(s), 0, &j, &err))
        fail_msg("test JSON %s: %s", s, err.msg);
    return j;
}

static struct vd_filter *compile(const char *json)
{
    /* deep enough for VD_FILTER_MAX_DEPTH filters (two JSON levels each) */
    cJSON *j = NULL;
    struct vd_err perr = {0};
    if (vd_json_parse(json, strlen(json), 4 * VD_FILTER_MAX_DEPTH, &j, &perr))
        fail_msg("test JSON %s: %s", json, perr.msg);
    struct vd_filter *f = NULL;
    struct vd_err err = {0};
    int rc = vd_filter_parse(j, &f, &err);
    if (rc)
        fail_msg("filter %s: %s", json, err.msg);
    cJSON_Delete(j);
    return f;
}

/* Evaluates with both backends and insists they agree. */
static bool eval2(const struct vd_filter *f, const struct vd_pid *id, const cJSON *payload)
{
    bool a = vd_filter_match(f, id, payload);
    uint8_t *bin = NULL;
    size_t len = 0;
    assert_int_equal(vd_payload_encode(payload, &bin, &len), 0);
    assert_int_equal(vd_payload_validate(bin, len), 0);
    bool b = vd_filter_match_bin(f, id, bin, len);
    free(bin);
    if (a != b) {
        char *p = payload ? cJSON_PrintUnformatted(payload) : strdup("null");
        fail_msg("backends disagree on %s: cjson %d bin %d", p, a, b);
    }
    return a;
}

struct row {
    const char *filter;
    const char *payload; /* NULL: no payload */
    bool expect;
};

/* Payload literals: numbers written with ".0" are turned into floats by the fixups below. */
static const struct row rows[] = {
    /* match.value: strings, integers, bools; arrays match if any element does */
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"value\":\"red\"}}]}", "{\"c\":\"red\"}", true},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"value\":\"red\"}}]}", "{\"c\":\"Red\"}", false},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"value\":\"red\"}}]}", "{\"c\":[\"b\",\"red\"]}", true},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"value\":\"red\"}}]}", "{\"c\":[[\"red\"]]}", false},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"value\":\"red\"}}]}", "{}", false},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"value\":\"red\"}}]}", NULL, false},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"value\":\"red\"}}]}", "{\"c\":null}", false},
    {"{\"must\":[{\"key\":\"n\",\"match\":{\"value\":1}}]}", "{\"n\":1}", true},
    {"{\"must\":[{\"key\":\"n\",\"match\":{\"value\":1}}]}", "{\"n\":1.5}", false},
    {"{\"must\":[{\"key\":\"n\",\"match\":{\"value\":1}}]}", "{\"n\":\"1\"}", false},
    {"{\"must\":[{\"key\":\"n\",\"match\":{\"value\":1}}]}", "{\"n\":true}", false},
    {"{\"must\":[{\"key\":\"n\",\"match\":{\"value\":-7}}]}", "{\"n\":[3,-7]}", true},
    {"{\"must\":[{\"key\":\"b\",\"match\":{\"value\":true}}]}", "{\"b\":true}", true},
    {"{\"must\":[{\"key\":\"b\",\"match\":{\"value\":true}}]}", "{\"b\":1}", false},
    {"{\"must\":[{\"key\":\"b\",\"match\":{\"value\":false}}]}", "{\"b\":[true,false]}", true},
    /* dotted keys, fan-out over arrays (only with []: a plain name does not look inside the
     * elements of an array, as in Qdrant), indexes, quoted names */
    {"{\"must\":[{\"key\":\"a.b\",\"match\":{\"value\":2}}]}", "{\"a\":{\"b\":2}}", true},
    {"{\"must\":[{\"key\":\"a.b\",\"match\":{\"value\":2}}]}", "{\"a\":{\"c\":2}}", false},
    {"{\"must\":[{\"key\":\"a.b\",\"match\":{\"value\":2}}]}", "{\"a\":2}", false},
    {"{\"must\":[{\"key\":\"a.b\",\"match\":{\"value\":2}}]}", "{\"a\":[{\"b\":1},{\"b\":2}]}",
     false},
    {"{\"must\":[{\"key\":\"a.b\",\"range\":{\"gte\":9}}]}", "{\"a\":[{\"b\":3},{\"b\":10}]}",
     false},
    {"{\"must\":[{\"key\":\"a[].b\",\"range\":{\"gte\":9}}]}", "{\"a\":[{\"b\":3},{\"b\":10}]}",
     true},
    {"{\"must\":[{\"is_empty\":{\"key\":\"a.b\"}}]}", "{\"a\":[{\"b\":3}]}", true},
    {"{\"must\":[{\"key\":\"a.b[]\",\"match\":{\"value\":2}}]}", "{\"a\":{\"b\":[1,2]}}", true},
    {"{\"must\":[{\"key\":\"a[].b\",\"match\":{\"value\":2}}]}", "{\"a\":[{\"b\":1},{\"b\":2}]}",
     true},
    {"{\"must\":[{\"key\":\"a[].b\",\"match\":{\"value\":2}}]}", "{\"a\":{\"b\":2}}", false},
    {"{\"must\":[{\"key\":\"a[1].b\",\"match\":{\"value\":2}}]}", "{\"a\":[{\"b\":1},{\"b\":2}]}",
     true},
    {"{\"must\":[{\"key\":\"a[0].b\",\"match\":{\"value\":2}}]}", "{\"a\":[{\"b\":1},{\"b\":2}]}",
     false},
    {"{\"must\":[{\"key\":\"a[5]\",\"match\":{\"value\":2}}]}", "{\"a\":[2]}", false},
    {"{\"must\":[{\"key\":\"a.b.c\",\"match\":{\"value\":\"x\"}}]}",
     "{\"a\":[{\"b\":[{\"c\":\"y\"},{\"c\":[\"x\"]}]}]}", false},
    {"{\"must\":[{\"key\":\"a[].b[].c\",\"match\":{\"value\":\"x\"}}]}",
     "{\"a\":[{\"b\":[{\"c\":\"y\"},{\"c\":[\"x\"]}]}]}", true},
    {"{\"must\":[{\"key\":\"a[].b.c\",\"match\":{\"value\":\"x\"}}]}",
     "{\"a\":[{\"b\":[{\"c\":\"y\"},{\"c\":[\"x\"]}]}]}", false},
    {"{\"must\":[{\"key\":\"\\\"x.y\\\".z\",\"match\":{\"value\":1}}]}", "{\"x.y\":{\"z\":1}}",
     true},
    {"{\"must\":[{\"key\":\"x.y\",\"match\":{\"value\":1}}]}", "{\"x.y\":1}", false},
    /* match.any */
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"any\":[\"a\",\"b\"]}}]}", "{\"c\":\"b\"}", true},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"any\":[\"a\",\"b\"]}}]}", "{\"c\":\"z\"}", false},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"any\":[\"a\",\"b\"]}}]}", "{\"c\":[\"z\",\"a\"]}",
     true},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"any\":[\"a\",\"b\"]}}]}", "{}", false},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"any\":[1,2]}}]}", "{\"c\":2}", true},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"any\":[1,2]}}]}", "{\"c\":\"2\"}", false},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"any\":[]}}]}", "{\"c\":\"a\"}", false},
    /* match.except: missing, null and [] never match; other types do */
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"except\":[\"a\",\"b\"]}}]}", "{\"c\":\"z\"}", true},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"except\":[\"a\",\"b\"]}}]}", "{\"c\":\"a\"}", false},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"except\":[\"a\",\"b\"]}}]}", "{\"c\":[\"a\",\"z\"]}",
     true},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"except\":[\"a\",\"b\"]}}]}", "{\"c\":[\"a\",\"b\"]}",
     false},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"except\":[\"a\",\"b\"]}}]}", "{}", false},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"except\":[\"a\",\"b\"]}}]}", NULL, false},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"except\":[\"a\",\"b\"]}}]}", "{\"c\":null}", false},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"except\":[\"a\",\"b\"]}}]}", "{\"c\":[]}", false},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"except\":[\"a\",\"b\"]}}]}", "{\"c\":[null]}", false},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"except\":[\"a\",\"b\"]}}]}", "{\"c\":5}", true},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"except\":[\"a\",\"b\"]}}]}", "{\"c\":true}", true},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"except\":[\"a\",\"b\"]}}]}", "{\"c\":{\"d\":1}}",
     true},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"except\":[\"a\"]}}]}", "{\"c\":[[\"a\"]]}", true},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"except\":[1,2]}}]}", "{\"c\":3}", true},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"except\":[1,2]}}]}", "{\"c\":2}", false},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"except\":[1,2]}}]}", "{\"c\":1.5}", true},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"except\":[1,2]}}]}", "{\"c\":\"1\"}", true},
    {"{\"must\":[{\"key\":\"c\",\"match\":{\"except\":[]}}]}", "{\"c\":1}", true},
    {"{\"must_not\":[{\"key\":\"c\",\"match\":{\"any\":[\"a\"]}}]}", "{}", true},
    {"{\"must_not\":[{\"key\":\"c\",\"match\":{\"any\":[\"a\"]}}]}", "{\"c\":\"a\"}", false},
    {"{\"must_not\":[{\"key\":\"c\",\"match\":{\"any\":[\"a\"]}}]}", "{\"c\":[\"a\",\"b\"]}",
     false},
    /* match.text: substring */
    {"{\"must\":[{\"key\":\"t\",\"match\":{\"text\":\"ell\"}}]}", "{\"t\":\"hello\"}", true},
    {"{\"must\":[{\"key\":\"t\",\"match\":{\"text\":\"elk\"}}]}", "{\"t\":\"hello\"}", false},
    /* range: numbers (ints and floats), any element of an array; never strings */
    {"{\"must\":[{\"key\":\"p\",\"range\":{\"gt\":1,\"lte\":2.5}}]}", "{\"p\":2.5}", true},
    {"{\"must\":[{\"key\":\"p\",\"range\":{\"gt\":1,\"lte\":2.5}}]}", "{\"p\":1}", false},
    {"{\"must\":[{\"key\":\"p\",\"range\":{\"gte\":1}}]}", "{\"p\":1}", true},
    {"{\"must\":[{\"key\":\"p\",\"range\":{\"lt\":0}}]}", "{\"p\":[5,-1]}", true},
    {"{\"must\":[{\"key\":\"p\",\"range\":{\"lt\":0}}]}", "{\"p\":\"-1\"}", false},
    {"{\"must\":[{\"key\":\"p\",\"range\":{\"lt\":0}}]}", "{}", false},
    {"{\"must\":[{\"key\":\"p\",\"range\":{}}]}", "{\"p\":3}", true},
    {"{\"must\":[{\"key\":\"p\",\"range\":{\"gte\":null,\"lt\":4}}]}", "{\"p\":3}", true},
    /* is_empty: missing, null, [] */
    {"{\"must\":[{\"is_empty\":{\"key\":\"e\"}}]}", "{}", true},
    {"{\"must\":[{\"is_empty\":{\"key\":\"e\"}}]}", NULL, true},
    {"{\"must\":[{\"is_empty\":{\"key\":\"e\"}}]}", "{\"e\":null}", true},
    {"{\"must\":[{\"is_empty\":{\"key\":\"e\"}}]}", "{\"e\":[]}", true},
    {"{\"must\":[{\"is_empty\":{\"key\":\"e\"}}]}", "{\"e\":[null]}", false},
    {"{\"must\":[{\"is_empty\":{\"key\":\"e\"}}]}", "{\"e\":{}}", false},
    {"{\"must\":[{\"is_empty\":{\"key\":\"e\"}}]}", "{\"e\":\"\"}", false},
    {"{\"must\":[{\"is_empty\":{\"key\":\"e\"}}]}", "{\"e\":0}", false},
    {"{\"must\":[{\"is_empty\":{\"key\":\"a[].e\"}}]}", "{\"a\":[{\"e\":[]},{\"e\":null}]}", true},
    {"{\"must\":[{\"is_empty\":{\"key\":\"a[].e\"}}]}", "{\"a\":[{\"e\":[]},{\"e\":1}]}", false},
    {"{\"must\":[{\"key\":\"e\",\"is_empty\":true}]}", "{}", true},
    {"{\"must\":[{\"key\":\"e\",\"is_empty\":true}]}", "{\"e\":[1]}", false},
    {"{\"must\":[{\"key\":\"e\",\"is_empty\":false}]}", "{\"e\":[1]}", true},
    {"{\"must\":[{\"key\":\"e\",\"is_empty\":false}]}", "{}", false},
    {"{\"must_not\":[{\"is_empty\":{\"key\":\"e\"}}]}", "{\"e\":\"x\"}", true},
    /* is_null: null or an array holding a null; missing is not null */
    {"{\"must\":[{\"is_null\":{\"key\":\"e\"}}]}", "{\"e\":null}", true},
    {"{\"must\":[{\"is_null\":{\"key\":\"e\"}}]}", "{}", false},
    {"{\"must\":[{\"is_null\":{\"key\":\"e\"}}]}", NULL, false},
    {"{\"must\":[{\"is_null\":{\"key\":\"e\"}}]}", "{\"e\":[]}", false},
    {"{\"must\":[{\"is_null\":{\"key\":\"e\"}}]}", "{\"e\":[1,null]}", true},
    {"{\"must\":[{\"is_null\":{\"key\":\"e\"}}]}", "{\"e\":0}", false},
    {"{\"must\":[{\"key\":\"e\",\"is_null\":true}]}", "{\"e\":null}", true},
    {"{\"must\":[{\"key\":\"e\",\"is_null\":false}]}", "{}", true},
    {"{\"must\":[{\"key\":\"e\",\"is_null\":false}]}", "{\"e\":null}", false},
    {"{\"must_not\":[{\"is_null\":{\"key\":\"e\"}}]}", "{}", true},
    /* boolean structure */
    {"{}", "{}", true},
    {"{\"must\":[]}", "{}", true},
    {"{\"must_not\":[]}", "{}", true},
    {"{\"should\":[]}", "{\"a\":1}", false},
    {"{\"should\":null}", "{\"a\":1}", true},
    {"{\"should\":[{\"key\":\"a\",\"match\":{\"value\":1}},{\"key\":\"a\",\"match\":{\"value\":2}}]"
     "}",
     "{\"a\":2}", true},
    {"{\"should\":[{\"key\":\"a\",\"match\":{\"value\":1}},{\"key\":\"a\",\"match\":{\"value\":2}}]"
     "}",
     "{\"a\":3}", false},
    {"{\"must\":{\"key\":\"a\",\"match\":{\"value\":1}}}", "{\"a\":1}", true},
    {"{\"must\":[{\"key\":\"a\",\"match\":{\"value\":1}},{\"key\":\"b\",\"match\":{\"value\":1}}]}",
     "{\"a\":1}", false},
    {"{\"must\":[{\"should\":[{\"key\":\"a\",\"match\":{\"value\":1}}]},"
     "{\"must_not\":[{\"key\":\"b\",\"match\":{\"value\":1}}]}]}",
     "{\"a\":1,\"b\":2}", true},
    {"{\"must\":[{}]}", "{}", true},
    {"{\"min_should\":{\"conditions\":[{\"key\":\"a\",\"match\":{\"value\":1}},"
     "{\"key\":\"b\",\"match\":{\"value\":1}},{\"key\":\"c\",\"match\":{\"value\":1}}],"
     "\"min_count\":2}}",
     "{\"a\":1,\"c\":1}", true},
    {"{\"min_should\":{\"conditions\":[{\"key\":\"a\",\"match\":{\"value\":1}},"
     "{\"key\":\"b\",\"match\":{\"value\":1}},{\"key\":\"c\",\"match\":{\"value\":1}}],"
     "\"min_count\":2}}",
     "{\"a\":1,\"c\":2}", false},
    /* a field condition with match and range holds if either does (Qdrant ORs them) */
    {"{\"must\":[{\"key\":\"a\",\"match\":{\"value\":\"x\"},\"range\":{\"gt\":5}}]}", "{\"a\":9}",
     true},
};

static void test_table(void **state)
{
    struct vd_pid id = {.type = VD_PID_NUM, .u.num = 1};
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        struct vd_filter *f = compile(rows[i].filter);
        cJSON *p = rows[i].payload ? parse_lit(rows[i].payload) : NULL;
        bool got = eval2(f, &id, p);
        if (got != rows[i].expect)
            fail_msg("row %zu: filter %s payload %s: got %d", i, rows[i].filter,
                     rows[i].payload ? rows[i].payload : "(none)", got);
        cJSON_Delete(p);
        vd_filter_free(f);
    }
}

/* 1 does not match 1.0 (a float in the payload), as in Qdrant; range treats both as numbers. */
static void test_int_vs_float(void **state)
{
    struct vd_filter *f = compile("{\"must\":[{\"key\":\"n\",\"match\":{\"value\":1}}]}");
    struct vd_filter *r = compile("{\"must\":[{\"key\":\"n\",\"range\":{\"gte\":1,\"lte\":1}}]}");
    static const struct {
        const char *payload;
        bool match, range;
    } cases[] = {
        {"{\"n\":1}", true, true},       {"{\"n\":1.0}", false, true},
        {"{\"n\":1e0}", false, true},    {"{\"n\":[1.0,1]}", true, true},
        {"{\"n\":-0}", false, false},    {"{\"n\":[-0,0]}", false, false},
        {"{\"n\":\"1\"}", false, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cJSON *p = parse_lit(cases[i].payload);
        if (eval2(f, NULL, p) != cases[i].match || eval2(r, NULL, p) != cases[i].range)
            fail_msg("int vs float case %s", cases[i].payload);
        cJSON_Delete(p);
    }
    /* a tree from plain cJSON has no literal text: an integral value counts as an integer */
    cJSON *p = cJSON_Parse("{\"n\":1.0}");
    assert_true(eval2(f, NULL, p));
    cJSON_Delete(p);
    vd_filter_free(f);
    vd_filter_free(r);

    /* "-0" is the float -0.0 (Qdrant reads it so): it does not match the integer 0, and a
     * filter cannot ask for it as an integer */
    f = compile("{\"must\":[{\"key\":\"n\",\"match\":{\"value\":0}}]}");
    p = parse_lit("{\"n\":-0}");
    assert_false(eval2(f, NULL, p));
    cJSON_Delete(p);
    p = parse_lit("{\"n\":[-0,0]}");
    assert_true(eval2(f, NULL, p));
    cJSON_Delete(p);
    vd_filter_free(f);
    cJSON *mz = parse_lit("{\"must\":[{\"key\":\"n\",\"match\":{\"value\":-0}}]}");
    struct vd_err err = {0};
    f = NULL;
    assert_int_equal(vd_filter_parse(mz, &f, &err), VD_EINVAL);
    cJSON_Delete(mz);

    /* integers beyond 2^53 compare exactly */
    f = compile(
        "{\"must\":[{\"key\":\"n\",\"match\":{\"any\":[9007199254740993,-9223372036854775808]}}]}");
    p = parse_lit("{\"n\":9007199254740992}");
    assert_false(eval2(f, NULL, p));
    cJSON_Delete(p);
    p = parse_lit("{\"n\":[9007199254740993]}");
    assert_true(eval2(f, NULL, p));
    cJSON_Delete(p);
    p = parse_lit("{\"n\":-9223372036854775808}");
    assert_true(eval2(f, NULL, p));
    cJSON_Delete(p);
    /* beyond int64 a payload number is a float: no integer match, still in ranges */
    p = parse_lit("{\"n\":18446744073709551615}");
    assert_false(eval2(f, NULL, p));
    cJSON_Delete(p);
    vd_filter_free(f);
}

static void test_has_id(void **state)
{
    struct vd_filter *f = compile("{\"must\":[{\"has_id\":[5, 18446744073709551615, "
                                  "\"550E8400-e29b-41d4-a716-446655440000\"]}]}");
    struct vd_pid a = {.type = VD_PID_NUM, .u.num = 5},
                  b = {.type = VD_PID_NUM, .u.num = UINT64_MAX},
                  c = {.type = VD_PID_NUM, .u.num = UINT64_MAX - 1}, u;
    assert_int_equal(vd_pid_parse_uuid("550e8400e29b41d4a716446655440000", 32, &u), 0);
    assert_true(vd_filter_match(f, &a, NULL));
    assert_true(vd_filter_match(f, &b, NULL));
    assert_false(vd_filter_match(f, &c, NULL));
    assert_true(vd_filter_match_bin(f, &u, NULL, 0));
    assert_false(vd_filter_match(f, NULL, NULL));
    vd_filter_free(f);

    f = compile("{\"must_not\":[{\"has_id\":[]}]}");
    assert_true(vd_filter_match(f, &a, NULL));
    vd_filter_free(f);
}

struct bad {
    const char *filter;
    const char *fragment;
};

static const struct bad bads[] = {
    {"[]", "filter: expected an object"},
    {"{\"mustt\":[]}", "filter: unknown field \"mustt\" (a filter has must, should"},
    {"{\"must\":[{\"should\":[],\"foo\":1}]}", "filter.must[0]: unknown field \"foo\""},
    {"{\"must\":5}", "filter.must: expected an array of conditions or a condition object"},
    {"{\"must\":[5]}", "filter.must[0]: expected a condition object"},
    {"{\"must\":[{\"key\":\"a\",\"match\":{\"value\":1}},{\"key\":\"p\",\"range\":{\"gt\":\"x\"}}]"
     "}",
     "filter.must[1].range: expected an object with gt/gte/lt/lte numbers"},
    {"{\"must\":[{\"key\":\"p\",\"range\":5}]}", "filter.must[0].range: expected an object"},
    {"{\"should\":[{\"key\":\"a\",\"match\":{\"value\":1.5}}]}",
     "filter.should[0].match.value: expected a string, an integer or a bool"},
    {"{\"must\":[{\"key\":\"a\",\"match\":{\"value\":[1]}}]}", "match.value: expected a string"},
    {"{\"must\":[{\"key\":\"a\",\"match\":{}}]}",
     "filter.must[0].match: expected an object with value"},
    {"{\"must\":[{\"key\":\"a\",\"match\":{\"any\":[\"x\",1]}}]}",
     "filter.must[0].match.any[1]: expected a string"},
    {"{\"must\":[{\"key\":\"a\",\"match\":{\"any\":[1,\"x\"]}}]}",
     "filter.must[0].match.any[1]: expected an integer"},
    {"{\"must\":[{\"key\":\"a\",\"match\":{\"except\":\"x\"}}]}",
     "match.except: expected an array"},
    {"{\"must\":[{\"key\":\"a\",\"match\":{\"any\":[true]}}]}", "match.any[0]: expected a string"},
    {"{\"must\":[{\"key\":\"\",\"match\":{\"value\":1}}]}",
     "filter.must[0].key: expected a non-empty string"},
    {"{\"must\":[{\"key\":5,\"match\":{\"value\":1}}]}",
     "filter.must[0].key: expected a non-empty string"},
    {"{\"must\":[{\"key\":\"a..b\",\"match\":{\"value\":1}}]}",
     "filter.must[0].key: invalid key \"a..b\""},
    {"{\"must\":[{\"key\":\"a.\",\"match\":{\"value\":1}}]}", "invalid key"},
    {"{\"must\":[{\"key\":\"[]\",\"match\":{\"value\":1}}]}", "invalid key"},
    {"{\"must\":[{\"key\":\"a[x]\",\"match\":{\"value\":1}}]}", "invalid key"},
    {"{\"must\":[{\"key\":\"a[]b\",\"match\":{\"value\":1}}]}", "invalid key"},
    {"{\"must\":[{\"key\":\"a\\\"b\",\"match\":{\"value\":1}}]}", "invalid key"},
    {"{\"must\":[{\"key\":\"a\",\"is_empty\":1}]}",
     "filter.must[0].is_empty: expected true or false"},
    {"{\"must\":[{\"is_empty\":{}}]}", "filter.must[0].is_empty: expected an object with a key"},
    {"{\"must\":[{\"is_null\":\"a\"}]}", "filter.must[0].is_null: expected an object with a key"},
    {"{\"must\":[{\"has_id\":5}]}", "filter.must[0].has_id: expected an array of point ids"},
    {"{\"must\":[{\"has_id\":[1,-2]}]}",
     "filter.must[0].has_id[1]: expected an unsigned integer or a UUID"},
    {"{\"must\":[{\"has_id\":[\"nope\"]}]}", "filter.must[0].has_id[0]"},
    {"{\"must\":[{\"has_id\":[1.5]}]}", "filter.must[0].has_id[0]"},
    {"{\"must\":[{\"nested\":{\"key\":\"a\",\"filter\":{}}}]}",
     "filter.must[0].nested: condition not supported"},
    {"{\"must\":[{\"key\":\"a\",\"geo_radius\":{}}]}", "geo_radius: condition not supported"},
    {"{\"must\":[{\"mach\":{\"value\":1}}]}", "filter.must[0]: unknown condition"},
    {"{\"must\":[{\"must_not\":[{\"should\":[{\"key\":\"a\",\"range\":[]}]}]}]}",
     "filter.must[0].must_not[0].should[0].range: expected an object"},
    {"{\"min_should\":{\"conditions\":[],\"min_count\":-1}}",
     "filter.min_should.min_count: expected a non-negative integer"},
    {"{\"min_should\":{\"conditions\":5,\"min_count\":1}}",
     "filter.min_should: expected an object with conditions"},
    {"{\"min_should\":{\"conditions\":[5],\"min_count\":1}}",
     "filter.min_should.conditions[0]: expected a condition object"},
};

static void test_malformed(void **state)
{
    for (size_t i = 0; i < sizeof bads / sizeof *bads; i++) {
        cJSON *j = cJSON_Parse(bads[i].filter);
        assert_non_null(j);
        struct vd_filter *f = NULL;
        struct vd_err err = {0};
        int rc = vd_filter_parse(j, &f, &err);
        if (rc != VD_EINVAL || !strstr(err.msg, bads[i].fragment))
            fail_msg("bad filter %zu %s: rc %d msg \"%s\", expected \"%s\"", i, bads[i].filter, rc,
                     err.msg, bads[i].fragment);
        assert_null(f);
        cJSON_Delete(j);
    }
    /* min_count 0 is a value out of range (422), not a malformed body */
    cJSON *j = cJSON_Parse("{\"min_should\":{\"conditions\":[],\"min_count\":0}}");
    struct vd_filter *f = NULL;
    struct vd_err err = {0};
    assert_int_equal(vd_filter_parse(j, &f, &err), VD_ERANGE);
    cJSON_Delete(j);
    /* a key without a condition: Qdrant's 422 and the words its clients look for */
    j = cJSON_Parse("{\"must\":[{\"key\":\"city\"}]}");
    assert_int_equal(vd_filter_parse(j, &f, &err), VD_ERANGE);
    assert_non_null(strstr(err.msg, "Validation error in JSON body: [filter.must[0]: At least one "
                                    "field condition must be specified"));
    assert_non_null(strstr(err.msg, "\"city\""));
    assert_null(f);
    cJSON_Delete(j);
}

/* Builds {"must":[{"must":[ ... {"key":"a","match":{"value":1}} ...]}]} with `levels` filters. */
static char *nested_filter(int levels)
{
    size_t cap = (size_t)levels * 24 + 64;
    char *s = malloc(cap), *p = s;
    for (int i = 0; i < levels; i++)
        p += sprintf(p, "{\"must\":[");
    p += sprintf(p, "{\"key\":\"a\",\"match\":{\"value\":1}}");
    for (int i = 0; i < levels; i++)
        p += sprintf(p, "]}");
    return s;
}

static void test_depth_limit(void **state)
{
    char *ok = nested_filter(VD_FILTER_MAX_DEPTH), *deep = nested_filter(VD_FILTER_MAX_DEPTH + 1);
    struct vd_filter *f = compile(ok);
    cJSON *p = parse_lit("{\"a\":1}");
    assert_true(eval2(f, NULL, p));
    vd_filter_free(f);
    cJSON *j = NULL;
    struct vd_err err = {0};
    assert_int_equal(vd_json_parse(deep, strlen(deep), 4 * VD_FILTER_MAX_DEPTH, &j, &err), 0);
    f = NULL;
    assert_int_equal(vd_filter_parse(j, &f, &err), VD_EINVAL);
    assert_non_null(strstr(err.msg, "filters nested deeper than 32 levels"));
    assert_non_null(strstr(err.msg, "filter.must[0].must[0]"));
    cJSON_Delete(j);
    cJSON_Delete(p);
    free(ok);
    free(deep);
}

struct keyset {
    int n;
    char keys[16][32];
};

static void collect_key(const char *key, void *ctx)
{
    struct keyset *ks = ctx;
    assert_true(ks->n < 16);
    snprintf(ks->keys[ks->n++], 32, "%s", key);
}

static void test_keys(void **state)
{
    struct vd_filter *f = compile(
        "{\"must\":[{\"key\":\"a.b\",\"match\":{\"value\":1}},{\"is_null\":{\"key\":\"c\"}}],"
        "\"should\":[{\"key\":\"a.b\",\"range\":{\"gt\":1}},{\"must_not\":{\"is_empty\":{\"key\":"
        "\"d[]\"}}}]}");
    struct keyset ks = {0};
    vd_filter_keys(f, collect_key, &ks);
    assert_int_equal(ks.n, 3);
    assert_string_equal(ks.keys[0], "a.b");
    assert_string_equal(ks.keys[1], "c");
    assert_string_equal(ks.keys[2], "d[]");
    assert_false(vd_filter_is_empty(f));
    vd_filter_free(f);
    f = compile("{\"must\":[]}");
    assert_true(vd_filter_is_empty(f));
    vd_filter_free(f);
    assert_int_equal(vd_filter_parse(NULL, &f, NULL), 0);
    assert_true(vd_filter_is_empty(f));
    assert_true(vd_filter_match(f, NULL, NULL));
    vd_filter_free(f);
}

static void test_payload_format(void **state)
{
    /* plain cJSON keeps duplicate keys (the strict parser drops all but the last) */
    cJSON *p =
        cJSON_Parse("{\"z\":[1,2.5,\"s\",null,true,false,{\"k\":[]}],\"a\":{\"b\":{\"c\":\"d\"}},"
                    "\"m\":-9007199254740993,\"e\":{},\"dup\":1,\"dup\":2}");
    uint8_t *bin;
    size_t len;
    assert_int_equal(vd_payload_encode(p, &bin, &len), 0);
    assert_int_equal(vd_payload_validate(bin, len), 0);
    /* the first of duplicate keys wins on both backends */
    struct vd_filter *f = compile("{\"must\":[{\"key\":\"dup\",\"match\":{\"value\":1}}]}");
    assert_true(vd_filter_match(f, NULL, p));
    assert_true(vd_filter_match_bin(f, NULL, bin, len));
    vd_filter_free(f);
    cJSON *back;
    assert_int_equal(vd_payload_decode(bin, len, &back), 0);
    assert_string_equal(
        cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(back, "a"), "b"), "c")
            ->valuestring,
        "d");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(back, "z")), 7);
    assert_int_equal(cJSON_GetArraySize(back), 5);
    cJSON_Delete(back);
    /* every truncation and many single-byte corruptions are caught (or decode to a valid
     * buffer: a flipped byte inside a string is still well-formed) */
    for (size_t cut = 0; cut < len; cut++)
        assert_int_equal(vd_payload_validate(bin, cut ? cut : 1) == 0 && cut > 1, 0);
    uint8_t *copy = malloc(len);
    int caught = 0;
    for (size_t i = 0; i < len; i++) {
        memcpy(copy, bin, len);
        copy[i] ^= 0xA5;
        if (vd_payload_validate(copy, len) != 0)
            caught++;
        else { /* still well-formed: evaluation must not crash */
            cJSON *x;
            assert_int_equal(vd_payload_decode(copy, len, &x), 0);
            cJSON_Delete(x);
        }
    }
    assert_true(caught > (int)len / 4);
    free(copy);
    free(bin);
    /* numbers come back with exact literal text */
    cJSON *nums = parse_lit("{\"i\":-9223372036854775808,\"f\":2.0,\"g\":0.1}");
    assert_int_equal(vd_payload_encode(nums, &bin, &len), 0);
    assert_int_equal(vd_payload_decode(bin, len, &back), 0);
    assert_string_equal(cJSON_GetObjectItem(back, "i")->valuestring, "-9223372036854775808");
    assert_string_equal(cJSON_GetObjectItem(back, "f")->valuestring, "2.0");
    assert_string_equal(cJSON_GetObjectItem(back, "g")->valuestring, "0.1");
    cJSON_Delete(back);
    cJSON_Delete(nums);
    free(bin);
    /* no payload */
    assert_int_equal(vd_payload_encode(NULL, &bin, &len), 0);
    assert_int_equal(vd_payload_validate(bin, len), 0);
    free(bin);
    cJSON *arr = cJSON_Parse("[1]");
    assert_int_equal(vd_payload_encode(arr, &bin, &len), VD_EINVAL);
    cJSON_Delete(arr);
    cJSON_Delete(p);
}

/* ---- randomized comparison with a brute-force evaluator -------------------------------------- */

static uint64_t rng_state;
static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

static const char *const NAMES[] = {"a", "b", "c"};
static const char *const STRS[] = {"x", "y", "z"};

static cJSON *num_lit(const char *text, double v)
{
    cJSON *n = cJSON_CreateNumber(v);
    n->valuestring = strdup(text);
    return n;
}

static cJSON *rand_value(int depth)
{
    switch (rnd(depth > 2 ? 6 : 8)) {
    case 0:
        return cJSON_CreateNull();
    case 1:
        return cJSON_CreateBool(rnd(2));
    case 2: {
        int v = (int)rnd(7) - 3;
        char t[8];
        snprintf(t, sizeof t, "%d", v);
        return num_lit(t, v);
    }
    case 3: {
        static const char *fl[] = {"-1.5", "0.5", "2.0", "1.0"};
        static const double fv[] = {-1.5, 0.5, 2.0, 1.0};
        int k = (int)rnd(4);
        return num_lit(fl[k], fv[k]);
    }
    case 4:
    case 5:
        return cJSON_CreateString(STRS[rnd(3)]);
    case 6: {
        cJSON *a = cJSON_CreateArray();
        for (int i = (int)rnd(4); i > 0; i--)
            cJSON_AddItemToArray(a, rand_value(depth + 1));
        return a;
    }
    default: {
        cJSON *o = cJSON_CreateObject();
        for (int i = 0; i < 3; i++)
            if (rnd(2))
                cJSON_AddItemToObject(o, NAMES[i], rand_value(depth + 1));
        return o;
    }
    }
}

static const char *const KEYS[] = {"a",   "b",     "c",   "a.b",   "a.c",
                                   "b.a", "a[].b", "c[]", "a.b.c", "b[0]"};

static cJSON *rand_cond(int depth);

static cJSON *rand_filter(int depth)
{
    static const char *cl[] = {"must", "should", "must_not"};
    cJSON *f = cJSON_CreateObject();
    for (int i = 0; i < 3; i++) {
        if (rnd(3) == 0)
            continue;
        cJSON *arr = cJSON_CreateArray();
        for (int k = (int)rnd(3); k > 0; k--)
            cJSON_AddItemToArray(arr, rand_cond(depth));
        cJSON_AddItemToObject(f, cl[i], arr);
    }
    return f;
}

static cJSON *rand_list(bool ints)
{
    cJSON *a = cJSON_CreateArray();
    for (int k = (int)rnd(3) + (ints ? 1 : 0); k > 0; k--) {
        if (ints) {
            int v = (int)rnd(7) - 3;
            char t[8];
            snprintf(t, sizeof t, "%d", v);
            cJSON_AddItemToArray(a, num_lit(t, v));
        } else {
            cJSON_AddItemToArray(a, cJSON_CreateString(STRS[rnd(3)]));
        }
    }
    return a;
}

static cJSON *rand_cond(int depth)
{
    cJSON *c = cJSON_CreateObject();
    uint32_t kind = rnd(depth < 4 ? 10 : 8);
    const char *key = KEYS[rnd(sizeof KEYS / sizeof *KEYS)];
    if (kind == 5) {
        cJSON *k = cJSON_CreateObject();
        cJSON_AddStringToObject(k, "key", key);
        const char *which = rnd(2) ? "is_empty" : "is_null";
        cJSON_AddItemToObject(c, which, k);
        return c;
    }
    if (kind == 6) {
        cJSON *ids = cJSON_CreateArray();
        cJSON_AddItemToArray(ids, num_lit("1", 1));
        cJSON_AddItemToArray(ids, num_lit("3", 3));
        cJSON_AddItemToObject(c, "has_id", ids);
        return c;
    }
    if (kind >= 8) {
        cJSON_Delete(c);
        return rand_filter(depth + 1);
    }
    cJSON_AddStringToObject(c, "key", key);
    cJSON *m = cJSON_CreateObject();
    switch (kind) {
    case 0:
        switch (rnd(3)) {
        case 0:
            cJSON_AddStringToObject(m, "value", STRS[rnd(3)]);
            break;
        case 1: {
            int v = (int)rnd(7) - 3;
            char t[8];
            snprintf(t, sizeof t, "%d", v);
            cJSON_AddItemToObject(m, "value", num_lit(t, v));
            break;
        }
        default:
            cJSON_AddBoolToObject(m, "value", rnd(2));
        }
        cJSON_AddItemToObject(c, "match", m);
        break;
    case 1:
        cJSON_AddItemToObject(m, "any", rand_list(rnd(2)));
        cJSON_AddItemToObject(c, "match", m);
        break;
    case 2:
        cJSON_AddItemToObject(m, "except", rand_list(rnd(2)));
        cJSON_AddItemToObject(c, "match", m);
        break;
    case 3: {
        static const char *ops[] = {"gt", "gte", "lt", "lte"};
        for (int i = 0; i < 4; i++)
            if (rnd(2))
                cJSON_AddNumberToObject(m, ops[i], (double)((int)rnd(7) - 3) / 2);
        cJSON_AddItemToObject(c, "range", m);
        break;
    }
    default:
        cJSON_Delete(m);
        /* one rnd() per statement: argument evaluation order differs between compilers */
        const char *which = rnd(2) ? "is_empty" : "is_null";
        cJSON_AddBoolToObject(c, which, rnd(2));
    }
    return c;
}

/* -- brute force: values of a key collected into a list, then the rules applied to the list -- */

#define MAXV 256
struct vals {
    int n;
    const cJSON *v[MAXV];
};

static void bf_collect(const cJSON *v, char **tok, int ntok, int i, struct vals *out)
{
    if (i == ntok) {
        assert_true(out->n < MAXV);
        out->v[out->n++] = v;
        return;
    }
    const char *t = tok[i];
    if (strcmp(t, "[]") == 0) {
        if (cJSON_IsArray(v))
            for (const cJSON *e = v->child; e; e = e->next)
                bf_collect(e, tok, ntok, i + 1, out);
    } else if (t[0] == '[') {
        int idx = atoi(t + 1);
        if (cJSON_IsArray(v) && idx < cJSON_GetArraySize(v))
            bf_collect(cJSON_GetArrayItem(v, idx), tok, ntok, i + 1, out);
    } else if (cJSON_IsObject(v)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, t);
        if (c)
            bf_collect(c, tok, ntok, i + 1, out);
    }
    /* a name over anything but an object (an array of objects included) yields nothing */
}

static void bf_values(const cJSON *payload, const char *key, struct vals *out)
{
    /* tokens: names split on '.', and "[]" / "[N]" as tokens of their own */
    char tok[16][32], *tp[16];
    int ntok = 0, k = 0;
    for (const char *p = key;; p++) {
        if (*p == '.' || *p == '[' || *p == 0) {
            if (k) {
                tok[ntok][k] = 0;
                ntok++;
                k = 0;
            }
            if (*p == 0)
                break;
            if (*p == '[') {
                while (*p != ']')
                    tok[ntok][k++] = *p++;
                tok[ntok][k++] = ']';
                tok[ntok][k] = 0;
                ntok++;
                k = 0;
            }
            continue;
        }
        tok[ntok][k++] = *p;
    }
    for (int i = 0; i < ntok; i++)
        tp[i] = tok[i];
    out->n = 0;
    if (payload)
        bf_collect(payload, tp, ntok, 0, out);
}

static bool bf_is_int(const cJSON *n)
{
    return cJSON_IsNumber(n) && !strchr(n->valuestring, '.');
}

static bool bf_in_list(const cJSON *list, const cJSON *v)
{
    for (const cJSON *e = list->child; e; e = e->next) {
        if (cJSON_IsString(e) && cJSON_IsString(v) && strcmp(e->valuestring, v->valuestring) == 0)
            return true;
        if (cJSON_IsNumber(e) && bf_is_int(v) && e->valuedouble == v->valuedouble)
            return true;
    }
    return false;
}

static bool bf_list_is_ints(const cJSON *list)
{
    return list->child && cJSON_IsNumber(list->child);
}

static bool bf_scalar(const cJSON *c, const cJSON *v)
{
    const cJSON *m = cJSON_GetObjectItem(c, "match"), *r = cJSON_GetObjectItem(c, "range");
    if (m) {
        const cJSON *x;
        if ((x = cJSON_GetObjectItem(m, "value"))) {
            if (cJSON_IsString(x) && cJSON_IsString(v) &&
                strcmp(x->valuestring, v->valuestring) == 0)
                return true;
            if (cJSON_IsBool(x) && cJSON_IsBool(v) && cJSON_IsTrue(x) == cJSON_IsTrue(v))
                return true;
            if (cJSON_IsNumber(x) && bf_is_int(v) && x->valuedouble == v->valuedouble)
                return true;
            return false;
        }
        if ((x = cJSON_GetObjectItem(m, "any")))
            return bf_in_list(x, v);
        x = cJSON_GetObjectItem(m, "except");
        if (cJSON_IsNull(v))
            return false;
        bool ints = bf_list_is_ints(x);
        if (ints ? bf_is_int(v) : cJSON_IsString(v))
            return !bf_in_list(x, v);
        return true;
    }
    if (!cJSON_IsNumber(v))
        return false;
    double d = v->valuedouble;
    const cJSON *b;
    if ((b = cJSON_GetObjectItem(r, "gt")) && !(d > b->valuedouble))
        return false;
    if ((b = cJSON_GetObjectItem(r, "gte")) && !(d >= b->valuedouble))
        return false;
    if ((b = cJSON_GetObjectItem(r, "lt")) && !(d < b->valuedouble))
        return false;
    if ((b = cJSON_GetObjectItem(r, "lte")) && !(d <= b->valuedouble))
        return false;
    return true;
}

static bool bf_empty(const cJSON *v)
{
    return cJSON_IsNull(v) || (cJSON_IsArray(v) && !v->child);
}

static bool bf_null(const cJSON *v)
{
    if (cJSON_IsNull(v))
        return true;
    if (cJSON_IsArray(v))
        for (const cJSON *e = v->child; e; e = e->next)
            if (cJSON_IsNull(e))
                return true;
    return false;
}

static bool bf_eval(const cJSON *c, uint64_t id, const cJSON *payload)
{
    const cJSON *x;
    if ((x = cJSON_GetObjectItem(c, "key"))) {
        struct vals vs;
        bf_values(payload, x->valuestring, &vs);
        const cJSON *ie = cJSON_GetObjectItem(c, "is_empty"),
                    *in = cJSON_GetObjectItem(c, "is_null");
        if (vs.n == 0)
            return ie ? cJSON_IsTrue(ie) : in ? !cJSON_IsTrue(in) : false;
        for (int i = 0; i < vs.n; i++) {
            const cJSON *v = vs.v[i];
            bool ok = false;
            if (ie)
                ok = bf_empty(v) == cJSON_IsTrue(ie);
            else if (in)
                ok = bf_null(v) == cJSON_IsTrue(in);
            else if (cJSON_IsArray(v)) {
                for (const cJSON *e = v->child; e && !ok; e = e->next)
                    ok = bf_scalar(c, e);
            } else
                ok = bf_scalar(c, v);
            if (ok)
                return true;
        }
        return false;
    }
    if ((x = cJSON_GetObjectItem(c, "is_empty"))) {
        struct vals vs;
        bf_values(payload, cJSON_GetObjectItem(x, "key")->valuestring, &vs);
        for (int i = 0; i < vs.n; i++)
            if (!bf_empty(vs.v[i]))
                return false;
        return true;
    }
    if ((x = cJSON_GetObjectItem(c, "is_null"))) {
        struct vals vs;
        bf_values(payload, cJSON_GetObjectItem(x, "key")->valuestring, &vs);
        for (int i = 0; i < vs.n; i++)
            if (bf_null(vs.v[i]))
                return true;
        return false;
    }
    if ((x = cJSON_GetObjectItem(c, "has_id"))) {
        for (const cJSON *e = x->child; e; e = e->next)
            if ((uint64_t)e->valuedouble == id)
                return true;
        return false;
    }
    /* a filter */
    if ((x = cJSON_GetObjectItem(c, "must")))
        for (const cJSON *e = x->child; e; e = e->next)
            if (!bf_eval(e, id, payload))
                return false;
    if ((x = cJSON_GetObjectItem(c, "must_not")))
        for (const cJSON *e = x->child; e; e = e->next)
            if (bf_eval(e, id, payload))
                return false;
    if ((x = cJSON_GetObjectItem(c, "should"))) {
        for (const cJSON *e = x->child; e; e = e->next)
            if (bf_eval(e, id, payload))
                return true;
        return false;
    }
    return true;
}

static void test_random(void **state)
{
    const char *scale = getenv("VD_TEST_SCALE");
    int iters = scale && strcmp(scale, "small") == 0 ? 3000 : 30000;
    rng_state = 0x9E3779B97F4A7C15ull;
    int matched = 0;
    for (int it = 0; it < iters; it++) {
        cJSON *payload = NULL;
        if (rnd(10)) {
            payload = cJSON_CreateObject();
            for (int i = 0; i < 3; i++)
                if (rnd(3))
                    cJSON_AddItemToObject(payload, NAMES[i], rand_value(0));
        }
        cJSON *fj = rand_filter(1);
        struct vd_filter *f;
        struct vd_err err;
        if (vd_filter_parse(fj, &f, &err)) {
            char *s = cJSON_PrintUnformatted(fj);
            fail_msg("random filter rejected: %s: %s", s, err.msg);
        }
        uint64_t idn = rnd(4);
        struct vd_pid id = {.type = VD_PID_NUM, .u.num = idn};
        bool want = bf_eval(fj, idn, payload);
        bool got = eval2(f, &id, payload);
        if (want != got) {
            char *s = cJSON_PrintUnformatted(fj);
            char *p = payload ? cJSON_PrintUnformatted(payload) : strdup("(none)");
            fail_msg("iteration %d: filter %s payload %s: brute force %d, filter %d", it, s, p,
                     want, got);
        }
        matched += got;
        if (payload) { /* decode then encode gives the same bytes */
            uint8_t *b1, *b2;
            size_t l1, l2;
            cJSON *back;
            assert_int_equal(vd_payload_encode(payload, &b1, &l1), 0);
            assert_int_equal(vd_payload_decode(b1, l1, &back), 0);
            assert_int_equal(vd_payload_encode(back, &b2, &l2), 0);
            assert_int_equal(l1, l2);
            assert_memory_equal(b1, b2, l1);
            free(b1);
            free(b2);
            cJSON_Delete(back);
        }
        vd_filter_free(f);
        cJSON_Delete(fj);
        cJSON_Delete(payload);
    }
    /* both outcomes must be well represented or the comparison proves little */
    assert_true(matched > iters / 10 && matched < iters * 9 / 10);
    printf("random: %d filters x payloads, %d matched\n", iters, matched);
}

/* Damaged binary payloads: validation rejects them or they are safe to read (ASan watches). */
static void test_payload_mutations(void **state)
{
    const char *scale = getenv("VD_TEST_SCALE");
    int iters = scale && strcmp(scale, "small") == 0 ? 500 : 5000;
    rng_state = 0xD1B54A32D192ED03ull;
    int still_valid = 0;
    for (int it = 0; it < iters; it++) {
        cJSON *p = cJSON_CreateObject();
        for (int i = 0; i < 3; i++)
            cJSON_AddItemToObject(p, NAMES[i], rand_value(0));
        uint8_t *bin;
        size_t len;
        assert_int_equal(vd_payload_encode(p, &bin, &len), 0);
        size_t mlen = len;
        for (int m = (int)rnd(4) + 1; m > 0; m--) {
            if (rnd(5) == 0)
                mlen = 1 + rnd((uint32_t)mlen);
            else
                bin[rnd((uint32_t)mlen)] ^= (uint8_t)(1 + rnd(255));
        }
        /* a private copy of exactly mlen bytes, so ASan flags any read past the end */
        uint8_t *cut = malloc(mlen);
        memcpy(cut, bin, mlen);
        if (vd_payload_validate(cut, mlen) == 0) {
            still_valid++;
            cJSON *back;
            assert_int_equal(vd_payload_decode(cut, mlen, &back), 0);
            cJSON_Delete(back);
            for (int k = 0; k < 3; k++) {
                cJSON *fj = rand_filter(1);
                struct vd_filter *f;
                assert_int_equal(vd_filter_parse(fj, &f, NULL), 0);
                struct vd_pid id = {.type = VD_PID_NUM, .u.num = 1};
                (void)vd_filter_match_bin(f, &id, cut, mlen);
                vd_filter_free(f);
                cJSON_Delete(fj);
            }
        }
        free(cut);
        free(bin);
        cJSON_Delete(p);
    }
    printf("mutations: %d of %d damaged payloads still well-formed\n", still_valid, iters);
    assert_true(still_valid < iters / 2);
}

static void test_bench(void **state)
{
    struct vd_filter *f = compile(
        "{\"must\":[{\"key\":\"category\",\"match\":{\"any\":[\"books\",\"music\",\"film\"]}},"
        "{\"key\":\"meta.price\",\"range\":{\"gte\":10,\"lt\":50}}],"
        "\"must_not\":[{\"key\":\"tags\",\"match\":{\"value\":\"archived\"}}]}");
    enum { NP = 1024 };
    uint8_t *bins[NP];
    size_t lens[NP];
    cJSON *trees[NP];
    static const char *cats[] = {"books", "music", "games", "film", "tools"};
    for (int i = 0; i < NP; i++) {
        char s[512];
        snprintf(
            s, sizeof s,
            "{\"title\":\"item %d\",\"category\":\"%s\",\"year\":%d,\"meta\":{\"price\":%d,"
            "\"stock\":%d,\"vendor\":\"v%d\"},\"tags\":[\"t%d\",\"%s\",\"new\"],\"rating\":%d.5}",
            i, cats[i % 5], 1990 + i % 30, i % 80, i % 7, i % 13, i % 9,
            i % 11 == 0 ? "archived" : "fresh", i % 5);
        trees[i] = parse_lit(s);
        assert_int_equal(vd_payload_encode(trees[i], &bins[i], &lens[i]), 0);
    }
    const char *scale = getenv("VD_TEST_SCALE");
    long rounds = scale && strcmp(scale, "small") == 0 ? 200 : 3000;
    struct vd_pid id = {.type = VD_PID_NUM, .u.num = 1};
    long hits = 0;
    uint64_t t0 = vd_mono_ns();
    for (long r = 0; r < rounds; r++)
        for (int i = 0; i < NP; i++)
            hits += vd_filter_match_bin(f, &id, bins[i], lens[i]);
    uint64_t t1 = vd_mono_ns();
    double n = (double)rounds * NP;
    printf("bench: 3-clause filter on binary payloads: %.1f M evaluations/s (%.0f ns each, "
           "%ld matched of %.0f)\n",
           n / ((double)(t1 - t0) / 1e9) / 1e6, (double)(t1 - t0) / n, hits, n);
    assert_true(hits > 0 && hits < (long)n);
    /* the same on the cJSON trees, for comparison */
    long jhits = 0, jrounds = rounds / 4 + 1;
    t0 = vd_mono_ns();
    for (long r = 0; r < jrounds; r++)
        for (int i = 0; i < NP; i++)
            jhits += vd_filter_match(f, &id, trees[i]);
    t1 = vd_mono_ns();
    double jn = (double)jrounds * NP;
    printf("bench: same filter on cJSON payloads: %.1f M evaluations/s (%.0f ns each)\n",
           jn / ((double)(t1 - t0) / 1e9) / 1e6, (double)(t1 - t0) / jn);
    assert_true(jhits * rounds == hits * jrounds);
    for (int i = 0; i < NP; i++) {
        free(bins[i]);
        cJSON_Delete(trees[i]);
    }
    vd_filter_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_int_vs_float),
        cmocka_unit_test(test_has_id),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_payload_format),
        cmocka_unit_test(test_random),
        cmocka_unit_test(test_payload_mutations),
        cmocka_unit_test(test_bench),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
