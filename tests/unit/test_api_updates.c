/* The parse half of the point updates (vd__api_upd_parse): what each of Qdrant's update
 * operations reads from its body, and every refusal, with the field it names, before anything
 * could be written. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "api_int.h"

#include "unit/db_fixture.h"

static struct vd_db *db;
static struct vd_coll *dot, *cos;

static int setup(void **state)
{
    fixture_mkdir();
    db = open_db();
    dot = create_coll(db, "dot", 3, VD_METRIC_DOT, 64, 0);
    cos = create_coll(db, "cos", 3, VD_METRIC_COSINE, 64, 0);
    return 0;
}

static int teardown(void **state)
{
    vd_db_coll_put(dot);
    vd_db_coll_put(cos);
    vd_db_close(db);
    fixture_rmdir();
    return 0;
}

static cJSON *json(const char *text)
{
    cJSON *j = NULL;
    struct vd_err e;
    if (vd_json_parse(text, strlen(text), VD_JSON_MAX_DEPTH, &j, &e))
        fail_msg("bad test JSON %s: %s", text, e.msg);
    return j;
}

/* Parses text as an operation of kind on c: 0 with *u filled, or the error (message in err). */
static int parse(enum vd__api_upd_kind kind, struct vd_coll *c, const char *text, cJSON **j,
                 struct vd__api_upd *u, struct vd_err *err)
{
    *j = json(text);
    vd_err_clear(err);
    return vd__api_upd_parse(kind, *j, c, u, err);
}

static void test_parse_reads_each_operation(void **state)
{
    struct vd__api_upd u;
    struct vd_err e;
    cJSON *j;

    assert_int_equal(parse(VD__API_UPD_UPSERT, dot,
                           "{\"points\":[{\"id\":1,\"vector\":[1,2,3],\"payload\":{\"a\":1}},"
                           "{\"id\":\"5C56C793-69F3-4FBF-87E6-C4BF54C28C26\",\"vector\":[4,5,6]}],"
                           "\"update_mode\":\"upsert\",\"update_filter\":null}",
                           &j, &u, &e), 0);
    assert_int_equal(u.kind, VD__API_UPD_UPSERT);
    assert_int_equal(u.n_pts, 2);
    assert_int_equal(u.pts[0].id.u.num, 1);
    assert_true(u.pts[0].vec[2] == 3.0f);
    assert_non_null(u.pts[0].payload);
    assert_int_equal(u.pts[1].id.type, VD_PID_UUID);
    assert_null(u.pts[1].payload);
    vd__api_upd_release(&u);
    cJSON_Delete(j);

    assert_int_equal(parse(VD__API_UPD_UPSERT, dot,
                           "{\"batch\":{\"ids\":[7,8],\"vectors\":[[1,1,1],[2,2,2]],"
                           "\"payloads\":[null,{\"b\":2}]}}", &j, &u, &e), 0);
    assert_int_equal(u.n_pts, 2);
    assert_true(u.pts[1].vec[0] == 2.0f);
    assert_null(u.pts[0].payload);
    assert_non_null(u.pts[1].payload);
    vd__api_upd_release(&u);
    cJSON_Delete(j);

    /* vectors are kept as given: normalising is the write's */
    assert_int_equal(parse(VD__API_UPD_UPDATE_VECTORS, cos,
                           "{\"points\":[{\"id\":3,\"vector\":[0,3,4],\"payload\":{\"x\":1}}]}",
                           &j, &u, &e), 0);
    assert_int_equal(u.n_pts, 1);
    assert_true(u.pts[0].vec[1] == 3.0f);
    assert_null(u.pts[0].payload); /* update_vectors carries no payload */
    vd__api_upd_release(&u);
    cJSON_Delete(j);

    assert_int_equal(parse(VD__API_UPD_DELETE, dot, "{\"points\":[1,2,3]}", &j, &u, &e), 0);
    assert_int_equal(u.n_ids, 3);
    assert_null(u.filter);
    vd__api_upd_release(&u);
    cJSON_Delete(j);

    assert_int_equal(parse(VD__API_UPD_CLEAR_PAYLOAD, dot,
                           "{\"filter\":{\"must\":[{\"key\":\"a\",\"match\":{\"value\":1}}]}}",
                           &j, &u, &e), 0);
    assert_non_null(u.filter);
    assert_ptr_equal(u.filter_json, cJSON_GetObjectItemCaseSensitive(j, "filter"));
    assert_int_equal(u.n_ids, 0);
    vd__api_upd_release(&u);
    cJSON_Delete(j);

    assert_int_equal(parse(VD__API_UPD_SET_PAYLOAD, dot,
                           "{\"payload\":{\"k\":\"v\"},\"points\":[4],\"key\":null}", &j, &u, &e),
                     0);
    assert_ptr_equal(u.arg, cJSON_GetObjectItemCaseSensitive(j, "payload"));
    assert_int_equal(u.n_ids, 1);
    vd__api_upd_release(&u);
    cJSON_Delete(j);

    assert_int_equal(parse(VD__API_UPD_DELETE_PAYLOAD, dot, "{\"keys\":[\"a\",\"b.c\"],"
                                                             "\"points\":[]}", &j, &u, &e), 0);
    assert_true(cJSON_IsArray(u.arg));
    assert_int_equal(u.n_ids, 0);
    vd__api_upd_release(&u);
    cJSON_Delete(j);
}

static void test_parse_refusals_name_the_field(void **state)
{
    static const struct {
        enum vd__api_upd_kind kind;
        bool cosine;
        const char *body, *want;
        int code;
    } t[] = {
        {VD__API_UPD_UPSERT, false, "[]", "must be a JSON object", VD_EINVAL},
        {VD__API_UPD_UPSERT, false, "{}", "expected 'points'", VD_EINVAL},
        {VD__API_UPD_UPSERT, false, "{\"points\":[]}", "no points given", VD_EINVAL},
        {VD__API_UPD_UPSERT, false, "{\"points\":[{\"id\":1,\"vector\":[1,2]}]}",
         "points[0]: Vector dimension error: expected dim: 3, got 2", VD_EINVAL},
        {VD__API_UPD_UPSERT, false,
         "{\"points\":[{\"id\":1,\"vector\":[1,2,3]},{\"id\":-2,\"vector\":[1,2,3]}]}",
         "points[1]: point id must be", VD_EINVAL},
        {VD__API_UPD_UPSERT, false, "{\"points\":[{\"id\":1,\"vector\":[1,2,3],\"payload\":3}]}",
         "points[0]: 'payload' must be", VD_EINVAL},
        {VD__API_UPD_UPSERT, true, "{\"points\":[{\"id\":1,\"vector\":[0,0,0]}]}",
         "points[0]: a zero vector cannot be used with Cosine distance", VD_EINVAL},
        {VD__API_UPD_UPSERT, true, "{\"batch\":{\"ids\":[1],\"vectors\":[[0,0,0]]}}",
         "batch.vectors[0]: a zero vector", VD_EINVAL},
        {VD__API_UPD_UPSERT, false, "{\"batch\":{\"ids\":[1,2],\"vectors\":[[1,2,3]]}}",
         "'batch.vectors' has 1 entries but 'batch.ids' has 2", VD_EINVAL},
        {VD__API_UPD_UPSERT, false,
         "{\"points\":[{\"id\":1,\"vector\":[1,2,3]}],\"update_filter\":{\"must\":[]}}",
         "'update_filter' is not supported", VD_EINVAL},
        {VD__API_UPD_UPSERT, false,
         "{\"points\":[{\"id\":1,\"vector\":[1,2,3]}],\"update_mode\":\"insert_only\"}",
         "'update_mode' is not supported", VD_EINVAL},
        {VD__API_UPD_DELETE, false, "{\"points\":null}", "expected 'points'", VD_EINVAL},
        {VD__API_UPD_DELETE, false, "{\"points\":[\"x\"]}", "points[0]", VD_EINVAL},
        {VD__API_UPD_DELETE, false, "{\"filter\":{\"must\":[{\"key\":\"a\"}]}}",
         "filter.must[0]", VD_ERANGE},
        {VD__API_UPD_SET_PAYLOAD, false, "{\"points\":[1]}", "'payload' must be a JSON object",
         VD_EINVAL},
        {VD__API_UPD_SET_PAYLOAD, false, "{\"payload\":{},\"points\":[1],\"key\":\"a.b\"}",
         "'key' is not supported", VD_EINVAL},
        {VD__API_UPD_OVERWRITE_PAYLOAD, false, "{\"payload\":{\"a\":1}}", "expected 'points'",
         VD_EINVAL},
        {VD__API_UPD_DELETE_PAYLOAD, false, "{\"keys\":[1],\"points\":[1]}",
         "'keys' must be an array of payload keys", VD_EINVAL},
        {VD__API_UPD_CLEAR_PAYLOAD, false, "{}", "expected 'points'", VD_EINVAL},
        {VD__API_UPD_UPDATE_VECTORS, false, "{}", "missing field 'points'", VD_EINVAL},
        {VD__API_UPD_UPDATE_VECTORS, false, "{\"points\":[{\"id\":1}]}",
         "points[0]: missing field 'vector'", VD_EINVAL},
        {VD__API_UPD_UPDATE_VECTORS, false, "{\"points\":[{\"id\":1,\"vector\":{\"a\":[1,2,3]}}]}",
         "points[0]: named vectors are not supported", VD_EINVAL},
        {VD__API_UPD_UPDATE_VECTORS, true, "{\"points\":[{\"id\":1,\"vector\":[0,0,0]}]}",
         "points[0]: a zero vector", VD_EINVAL},
        {VD__API_UPD_UPDATE_VECTORS, false,
         "{\"points\":[{\"id\":1,\"vector\":[1,2,3]}],\"update_filter\":{\"must\":[{\"has_id\":[1]}]}}",
         "'update_filter' is not supported", VD_EINVAL},
        {VD__API_UPD_DELETE_VECTORS, false, "{\"points\":[1]}", "'vector' must be", VD_EINVAL},
        {VD__API_UPD_DELETE_VECTORS, false, "{\"points\":[1],\"vector\":[]}", "'vector' must be",
         VD_EINVAL},
        {VD__API_UPD_DELETE_VECTORS, false, "{\"vector\":[\"\"]}", "expected 'points'",
         VD_EINVAL},
        {VD__API_UPD_DELETE_VECTORS, false, "{\"points\":[1],\"vector\":[\"img\"]}",
         "Not existing vector name error: img", VD_EINVAL},
        {VD__API_UPD_DELETE_VECTORS, false, "{\"points\":[1],\"vector\":[\"\"]}",
         "vectorless points are not supported yet", VD_EINVAL},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        struct vd__api_upd u;
        struct vd_err e;
        cJSON *j;
        int rc = parse(t[i].kind, t[i].cosine ? cos : dot, t[i].body, &j, &u, &e);
        if (rc != t[i].code || !strstr(e.msg, t[i].want))
            fail_msg("%s %s: %d '%s', expected %d with '%s'", vd__api_upd_name(t[i].kind),
                     t[i].body, rc, e.msg, t[i].code, t[i].want);
        /* a refused operation holds nothing */
        assert_null(u.pts);
        assert_null(u.ids);
        assert_null(u.filter);
        cJSON_Delete(j);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_reads_each_operation),
        cmocka_unit_test(test_parse_refusals_name_the_field),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
