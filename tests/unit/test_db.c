/* The local database over real LMDB and the real index: writes through group commit, search,
 * filters, token ranges, scroll, payload edits, delete, restart with and without a saved graph. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vectord/db.h"
#include "vectord/json.h"
#include "vectord/record.h"

#include "unit/db_fixture.h"

static void upsert_grid(struct vd_coll *c, int n)
{
    float *v = malloc(sizeof(float) * 2 * n);
    struct vd_db_point *p = calloc(n, sizeof *p);
    cJSON **pl = calloc(n, sizeof *pl);
    for (int i = 0; i < n; i++) {
        v[2 * i] = (float)i;
        v[2 * i + 1] = 0;
        p[i].id = (struct vd_pid){.type = VD_PID_NUM, .u.num = (uint64_t)i};
        p[i].vec = v + 2 * i;
        pl[i] = cJSON_CreateObject();
        cJSON_AddNumberToObject(pl[i], "i", i);
        cJSON_AddStringToObject(pl[i], "parity", i % 2 ? "odd" : "even");
        p[i].payload = pl[i];
    }
    struct vd_err e;
    assert_int_equal(vd_db_upsert(c, p, n, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    for (int i = 0; i < n; i++)
        cJSON_Delete(pl[i]);
    free(pl);
    free(p);
    free(v);
}

static void test_write_search_restart(void **state)
{
    fixture_mkdir();
    struct vd_db *db = open_db();
    struct vd_coll *c = create_coll(db, "g", 2, VD_METRIC_EUCLID, 64, 0);
    struct vd_err e;
    struct vd_coll_schema dup = {.dim = 2, .metric = VD_METRIC_EUCLID};
    strcpy(dup.name, "g");
    assert_int_equal(vd_db_coll_create(db, &dup, on_done, &W, &e), VD_EEXIST);
    strcpy(dup.name, "bad/name");
    assert_int_equal(vd_db_coll_create(db, &dup, on_done, &W, &e), VD_ERANGE);

    upsert_grid(c, 500);
    uint64_t n;
    vd_db_count(c, NULL, &n);
    assert_int_equal(n, 500);

    float q[2] = {100.2f, 0};
    struct vd_db_search s = {.query = q, .limit = 3};
    cJSON *r = search(c, &s);
    assert_int_equal(cJSON_GetArraySize(r), 3);
    assert_int_equal(hit_id(r, 0), 100);
    assert_int_equal(hit_id(r, 1), 101);
    cJSON_Delete(r);

    /* filter during the search: nearest odd point */
    cJSON *fj = cJSON_Parse("{\"must\":[{\"key\":\"parity\",\"match\":{\"value\":\"odd\"}}]}");
    struct vd_filter *f;
    assert_int_equal(vd_filter_parse(fj, &f, &e), 0);
    s.filter = f;
    s.limit = 5;
    r = search(c, &s);
    assert_int_equal(cJSON_GetArraySize(r), 5);
    cJSON *it;
    cJSON_ArrayForEach(it, r) assert_int_equal((int)cJSON_GetObjectItem(it, "id")->valuedouble % 2, 1);
    cJSON_Delete(r);
    vd_db_count(c, f, &n);
    assert_int_equal(n, 250);

    /* token ranges: only points hashing into the arc (UINT64_MAX / 2, UINT64_MAX / 4], which
     * wraps past the top of the ring */
    const uint64_t half[1][2] = {{UINT64_MAX / 2, UINT64_MAX / 4}};
    s.filter = NULL;
    s.ranges = half;
    s.n_ranges = 1;
    s.limit = 50;
    r = search(c, &s);
    assert_int_equal(cJSON_GetArraySize(r), 50);
    cJSON_ArrayForEach(it, r)
    {
        struct vd_pid id = {.type = VD_PID_NUM, .u.num = (uint64_t)cJSON_GetObjectItem(it, "id")->valuedouble};
        uint8_t key[VD_PID_KEY_MAX];
        size_t kn = vd_pid_encode(&id, key);
        uint64_t h = vd_place_hash(vd_db_coll_schema(c)->name, key, kn);
        assert_true(vd_ring_contains(UINT64_MAX / 2, UINT64_MAX / 4, h));
    }
    cJSON_Delete(r);
    s.n_ranges = 0;

    /* delete by filter, then by id */
    assert_int_equal(vd_db_delete_filter(c, f, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    vd_db_count(c, NULL, &n);
    assert_int_equal(n, 250);
    struct vd_pid id100 = {.type = VD_PID_NUM, .u.num = 100};
    assert_int_equal(vd_db_delete(c, &id100, 1, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    s.limit = 1;
    assert_int_not_equal(first_id(c, &s), 100);

    /* payload edit by id */
    struct vd_pid id2 = {.type = VD_PID_NUM, .u.num = 2};
    cJSON *set = cJSON_Parse("{\"color\":\"red\"}");
    assert_int_equal(vd_db_payload_edit(c, VD_DB_PAYLOAD_SET, set, &id2, 1, NULL, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    cJSON_Delete(set);
    struct vd_buf b;
    vd_buf_init(&b);
    struct vd_db_record *rr;
    size_t nr;
    assert_int_equal(vd_db_retrieve(c, &id2, 1, false, false, &rr, &nr, &e), 0);
    records_text(&b, rr, nr, false);
    vd_db_records_free(rr, nr);
    assert_non_null(strstr(b.data, "\"color\":\"red\""));
    assert_non_null(strstr(b.data, "\"parity\":\"even\""));
    vd_buf_release(&b);
    vd_filter_free(f);
    cJSON_Delete(fj);

    /* restart: everything back, graph loaded from its file */
    reopen(&db, &c, "g");
    vd_db_count(c, NULL, &n);
    assert_int_equal(n, 249);
    q[0] = 100.4f;
    s.limit = 1;
    s.exact = true; /* the point is what storage and the loaded graph hold, not graph recall */
    /* 100 deleted, odd ids deleted by the filter: 102 is nearest */
    assert_int_equal(first_id(c, &s), 102);
    vd_db_coll_put(c);

    /* delete and re-create: empty */
    assert_int_equal(vd_db_coll_delete(db, "g", on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    assert_int_equal(vd_db_coll_get(db, "g", &c), VD_ENOTFOUND);
    c = create_coll(db, "g", 2, VD_METRIC_EUCLID, 64, 0);
    vd_db_count(c, NULL, &n);
    assert_int_equal(n, 0);
    vd_db_coll_put(c);
    vd_db_close(db);
    fixture_rmdir();
}

static void test_cosine_zero_vector_rejected(void **state)
{
    fixture_mkdir();
    struct vd_db *db = open_db();
    struct vd_coll *c = create_coll(db, "c", 3, VD_METRIC_COSINE, 64, 0);
    float good[3] = {1, 2, 3}, zero[3] = {0, 0, 0};
    struct vd_db_point p[2] = {{.id = {.type = VD_PID_NUM, .u.num = 1}, .vec = good},
                               {.id = {.type = VD_PID_NUM, .u.num = 2}, .vec = zero}};
    struct vd_err e;
    assert_int_equal(vd_db_upsert(c, p, 2, on_done, &W, &e), VD_EINVAL);
    assert_non_null(strstr(e.msg, "points[1]"));
    uint64_t n;
    vd_db_count(c, NULL, &n);
    assert_int_equal(n, 0); /* nothing of the rejected batch */
    vd_db_coll_put(c);
    vd_db_close(db);
    fixture_rmdir();
}

static char *retrieve(struct vd_coll *c, uint64_t id)
{
    struct vd_pid p = {.type = VD_PID_NUM, .u.num = id};
    struct vd_db_record *r;
    size_t nr;
    struct vd_buf b;
    struct vd_err e;
    vd_buf_init(&b);
    assert_int_equal(vd_db_retrieve(c, &p, 1, true, false, &r, &nr, &e), 0);
    records_text(&b, r, nr, false);
    vd_db_records_free(r, nr);
    size_t n;
    return vd_buf_steal(&b, &n);
}

/* Encodes a record of collection c for id (tombstone when vec is NULL), applies it and waits on
 * wt for its status. */
static int apply_with(struct vd_coll *c, uint64_t id, struct vd_version ver, const float *vec,
                      const char *payload, struct waiter *wt, int *status)
{
    struct vd_rvec rv = {.kind = VD_RVEC_DENSE, .n = 2, .values = vec};
    struct vd_record r = {.id = {.type = VD_PID_NUM, .u.num = id},
                          .incarnation = vd_db_coll_schema(c)->incarnation,
                          .version = ver,
                          .tombstone = vec == NULL,
                          .n_vectors = vec ? 1 : 0,
                          .vectors = &rv,
                          .payload = payload,
                          .payload_len = payload ? strlen(payload) : 0};
    uint8_t buf[256];
    size_t len;
    assert_int_equal(vd_record_encode(&r, buf, sizeof buf, &len), 0);
    const uint8_t *recs[1] = {buf};
    struct vd_err e;
    int rc = vd_db_apply(c, recs, &len, 1, on_done, wt, &e);
    if (rc == 0)
        *status = wait_for(wt);
    return rc;
}

static int apply_rec(struct vd_coll *c, uint64_t id, struct vd_version ver, const float *vec,
                     const char *payload, int *status)
{
    return apply_with(c, id, ver, vec, payload, &W, status);
}

/* The replica entry applies whole records under the versions they carry (older ones skipped,
 * tombstones for unknown ids kept) and the index follows; a payload edit writes the whole point
 * and skips absent ids. */
static void test_apply_records(void **state)
{
    fixture_mkdir();
    struct vd_db *db = open_db();
    struct vd_coll *c = create_coll(db, "r", 2, VD_METRIC_EUCLID, 64, 0);
    float v1[2] = {1, 0};
    cJSON *pl = cJSON_Parse("{\"a\":1}");
    struct vd_db_point p = {.id = {.type = VD_PID_NUM, .u.num = 1}, .vec = v1, .payload = pl};
    struct vd_err e;
    assert_int_equal(vd_db_upsert(c, &p, 1, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    cJSON_Delete(pl);

    /* payload edit: id 99 does not exist and is skipped, id 1 keeps its vector */
    cJSON *set = cJSON_Parse("{\"b\":2}");
    struct vd_pid ids[2] = {{.type = VD_PID_NUM, .u.num = 99}, {.type = VD_PID_NUM, .u.num = 1}};
    assert_int_equal(vd_db_payload_edit(c, VD_DB_PAYLOAD_SET, set, ids, 2, NULL, on_done, &W, &e),
                     0);
    assert_int_equal(wait_for(&W), 0);
    cJSON_Delete(set);
    char *j = retrieve(c, 1);
    assert_string_equal(j, "[{\"id\":1,\"payload\":{\"a\":1,\"b\":2},\"vector\":[1.0,0.0]}]");
    free(j);

    int st;
    float v2[2] = {3, 4};
    /* older than the stored version: skipped */
    assert_int_equal(apply_rec(c, 1, (struct vd_version){1, 1}, v2, NULL, &st), 0);
    assert_int_equal(st, 0);
    j = retrieve(c, 1);
    assert_non_null(strstr(j, "[1.0,0.0]"));
    free(j);
    /* newer: the whole record replaces the point, and search finds its vector */
    uint64_t now = vd_hlc_now();
    assert_int_equal(apply_rec(c, 1, (struct vd_version){now + 10, 7}, v2, "{\"z\":true}", &st), 0);
    assert_int_equal(st, 0);
    j = retrieve(c, 1);
    assert_string_equal(j, "[{\"id\":1,\"payload\":{\"z\":true},\"vector\":[3.0,4.0]}]");
    free(j);
    /* structured reads carry the version the record was written with */
    struct vd_db_record *rr;
    size_t nr;
    struct vd_pid one_and_500[3] = {{.type = VD_PID_NUM, .u.num = 1},
                                    {.type = VD_PID_NUM, .u.num = 77},
                                    {.type = VD_PID_NUM, .u.num = 1}};
    assert_int_equal(vd_db_retrieve(c, one_and_500, 3, true, false, &rr, &nr, &e), 0);
    assert_int_equal(nr, 1);
    assert_true(rr[0].version.hlc == now + 10 && rr[0].version.node == 7);
    assert_true(rr[0].dim == 2 && rr[0].vec[0] == 3 && rr[0].vec[1] == 4);
    assert_int_equal(rr[0].payload_len, 10);
    assert_memory_equal(rr[0].payload, "{\"z\":true}", 10);
    vd_db_records_free(rr, nr);
    struct vd_db_search s = {.query = v2, .limit = 1, .exact = true};
    cJSON *r = search(c, &s);
    assert_int_equal(cJSON_GetArraySize(r), 1);
    assert_true(cJSON_GetObjectItem(cJSON_GetArrayItem(r, 0), "score")->valuedouble == 0);
    cJSON_Delete(r);
    /* a tombstone for an id this node never had is stored, not an error */
    assert_int_equal(apply_rec(c, 500, (struct vd_version){now + 11, 7}, NULL, NULL, &st), 0);
    assert_int_equal(st, 0);
    uint64_t n;
    vd_db_count(c, NULL, &n);
    assert_int_equal(n, 1);
    /* and an older upsert of that id cannot bring it back */
    assert_int_equal(apply_rec(c, 500, (struct vd_version){now + 5, 9}, v1, NULL, &st), 0);
    vd_db_count(c, NULL, &n);
    assert_int_equal(n, 1);
    /* a newer tombstone deletes */
    assert_int_equal(apply_rec(c, 1, (struct vd_version){now + 12, 7}, NULL, NULL, &st), 0);
    vd_db_count(c, NULL, &n);
    assert_int_equal(n, 0);
    assert_int_equal(vd_db_retrieve(c, one_and_500, 1, true, true, &rr, &nr, &e), 0);
    assert_true(nr == 1 && rr[0].tombstone && !rr[0].vec && rr[0].version.hlc == now + 12);
    vd_db_records_free(rr, nr);
    assert_int_equal(vd_db_retrieve(c, one_and_500, 1, true, false, &rr, &nr, &e), 0);
    assert_int_equal(nr, 0);
    vd_db_records_free(rr, nr);
    r = search(c, &s);
    assert_int_equal(cJSON_GetArraySize(r), 0);
    cJSON_Delete(r);

    /* malformed bytes and another incarnation's records are refused before anything is written */
    uint8_t junk[5] = {1, 0, 9, 0, 0};
    const uint8_t *recs[1] = {junk};
    size_t len = sizeof junk;
    assert_int_equal(vd_db_apply(c, recs, &len, 1, on_done, &W, &e), VD_EINVAL);
    struct vd_rvec rv = {.kind = VD_RVEC_DENSE, .n = 2, .values = v1};
    struct vd_record other = {.id = {.type = VD_PID_NUM, .u.num = 3}, .incarnation = 12345,
                              .version = {now + 20, 1}, .n_vectors = 1, .vectors = &rv};
    uint8_t buf[128];
    assert_int_equal(vd_record_encode(&other, buf, sizeof buf, &len), 0);
    recs[0] = buf;
    assert_int_equal(vd_db_apply(c, recs, &len, 1, on_done, &W, &e), VD_EINVAL);

    /* all of it survives a restart */
    reopen(&db, &c, "r");
    vd_db_count(c, NULL, &n);
    assert_int_equal(n, 0);
    assert_int_equal(apply_rec(c, 500, (struct vd_version){now + 6, 9}, v1, NULL, &st), 0);
    vd_db_count(c, NULL, &n);
    assert_int_equal(n, 0);
    vd_db_coll_put(c);
    vd_db_close(db);
    fixture_rmdir();
}

/* ---- a payload edit racing other writes of its points ---- */

static struct waiter W2 = WAITER_INIT;

struct race {
    struct vd_coll *c;
    uint64_t id;
    bool edit; /* edit the point's payload (else delete it) */
};

/* Runs between the edit's read of its points and its write. The delete carries a version older
 * than the edit's and newer than the one read: stamped before the edit read the point (a
 * delete still on its way to storage, or one a replica receives late), committed after. */
static void race_write(void *arg)
{
    struct race *r = arg;
    struct vd_pid id = {.type = VD_PID_NUM, .u.num = r->id};
    struct vd_err e;
    if (r->edit) {
        cJSON *set = cJSON_Parse("{\"other\":true}");
        assert_int_equal(
            vd_db_payload_edit(r->c, VD_DB_PAYLOAD_SET, set, &id, 1, NULL, on_done, &W2, &e), 0);
        cJSON_Delete(set);
        assert_int_equal(wait_for(&W2), 0);
    } else {
        struct vd_db_record *rr;
        size_t nr;
        int st;
        assert_int_equal(vd_db_retrieve(r->c, &id, 1, false, false, &rr, &nr, &e), 0);
        assert_int_equal(nr, 1);
        struct vd_version v = {rr[0].version.hlc + 1, rr[0].version.node};
        vd_db_records_free(rr, nr);
        assert_int_equal(apply_with(r->c, r->id, v, NULL, NULL, &W2, &st), 0);
        assert_int_equal(st, 0);
    }
}

/* Edits {"b":2} into points (by ids, or by a has_id filter of the same ids) while race_write
 * runs between the edit's read and its write; returns the edit's status. */
static int edit_raced(struct vd_coll *c, const uint64_t *idv, size_t n, bool by_filter,
                      struct race *r)
{
    struct vd_pid ids[8];
    char fs[256] = "{\"must\":[{\"has_id\":[";
    for (size_t i = 0; i < n; i++) {
        ids[i] = (struct vd_pid){.type = VD_PID_NUM, .u.num = idv[i]};
        snprintf(fs + strlen(fs), sizeof fs - strlen(fs), "%s%llu", i ? "," : "",
                 (unsigned long long)idv[i]);
    }
    strcat(fs, "]}]}");
    cJSON *fj = cJSON_Parse(fs), *set = cJSON_Parse("{\"b\":2}");
    struct vd_filter *f = NULL;
    struct vd_err e;
    if (by_filter)
        assert_int_equal(vd_filter_parse(fj, &f, &e), 0);
    vd_db_test_after_edit_read(race_write, r);
    int rc = vd_db_payload_edit(c, VD_DB_PAYLOAD_SET, set, by_filter ? NULL : ids, n, f, on_done,
                                &W, &e);
    vd_db_test_after_edit_read(NULL, NULL);
    if (rc == 0)
        rc = wait_for(&W);
    vd_filter_free(f);
    cJSON_Delete(fj);
    cJSON_Delete(set);
    return rc;
}

/* Field-by-field check of one record read back: id, the version it was applied with, a vector
 * when one was asked for, and the payload's exact bytes. */
static void assert_record(const struct vd_db_record *r, uint64_t id, struct vd_version v,
                          const float *vec, const char *payload)
{
    assert_int_equal(r->id.u.num, id);
    assert_false(r->tombstone);
    assert_true(r->version.hlc == v.hlc && r->version.node == v.node);
    if (vec) {
        assert_true(r->vec && r->dim == 2 && r->vec[0] == vec[0] && r->vec[1] == vec[1]);
    } else {
        assert_null(r->vec);
    }
    assert_int_equal(r->payload_len, payload ? strlen(payload) : 0);
    if (payload)
        assert_memory_equal(r->payload, payload, strlen(payload));
    else
        assert_null(r->payload);
}

/* Search and scroll return records like retrieve does: each with the version it was written
 * under and its payload byte for byte as stored; tombstones never, whether deleted by a
 * replica's tombstone or by a local delete, and whatever the page size. */
static void test_structured_reads(void **state)
{
    fixture_mkdir();
    struct vd_db *db = open_db();
    struct vd_coll *c = create_coll(db, "s", 2, VD_METRIC_EUCLID, 64, 0);
    /* payload text the database must not rewrite: spacing, key order, number spelling */
    static const char *payloads[6] = {NULL, "{ \"b\":1.50, \"a\" : \"\\u00e9\" }", NULL,
                                      "{\"k\":[1,2,{\"x\":null}]}", "{}", "{\"n\":1e3}"};
    float vecs[6][2];
    uint64_t now = vd_hlc_now();
    int st;
    for (uint64_t id = 1; id <= 5; id++) {
        vecs[id][0] = (float)id;
        vecs[id][1] = 0.5f;
        struct vd_version v = {now + id, 100 + id};
        assert_int_equal(apply_rec(c, id, v, vecs[id], payloads[id], &st), 0);
        assert_int_equal(st, 0);
    }
    /* 2 by a replica's tombstone, 4 by a delete on this node (a version stamped here) */
    assert_int_equal(apply_rec(c, 2, (struct vd_version){now + 20, 9}, NULL, NULL, &st), 0);
    assert_int_equal(st, 0);
    struct vd_pid four = {.type = VD_PID_NUM, .u.num = 4};
    struct vd_err e;
    assert_int_equal(vd_db_delete(c, &four, 1, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    static const uint64_t live[3] = {1, 3, 5};

    /* search, exact and through the graph: best first, live points only, scores and versions */
    for (int exact = 0; exact < 2; exact++) {
        float q[2] = {3, 0.5f};
        struct vd_db_search s = {.query = q, .limit = 10, .exact = exact};
        struct vd_db_record *r;
        size_t n;
        assert_int_equal(vd_db_search(c, &s, exact, &r, &n, &e), 0);
        assert_int_equal(n, 3);
        assert_record(&r[0], 3, (struct vd_version){now + 3, 103}, exact ? vecs[3] : NULL,
                      payloads[3]);
        assert_true(r[0].score == 0);
        for (size_t i = 1; i < n; i++) {
            uint64_t id = r[i].id.u.num;
            assert_true(id == 1 || id == 5);
            assert_record(&r[i], id, (struct vd_version){now + id, 100 + id},
                          exact ? vecs[id] : NULL, payloads[id]);
            assert_true(r[i].score == 2); /* both 2 away on the first axis */
        }
        vd_db_records_free(r, n);
        /* offset past every live point: an empty, freeable result */
        s.offset = 3;
        assert_int_equal(vd_db_search(c, &s, false, &r, &n, &e), 0);
        assert_int_equal(n, 0);
        assert_non_null(r);
        vd_db_records_free(r, n);
    }

    /* scroll in pages of 1 and 2, with and without a filter: id order, no tombstone */
    struct vd_filter *f;
    cJSON *fj = cJSON_Parse("{\"must_not\":[{\"has_id\":[5]}]}");
    assert_int_equal(vd_filter_parse(fj, &f, &e), 0);
    for (uint32_t page = 1; page <= 2; page++) {
        for (int filtered = 0; filtered < 2; filtered++) {
            struct vd_pid from, next;
            bool has_next = true, first = true;
            size_t seen = 0;
            while (has_next) {
                struct vd_db_record *r;
                size_t n;
                assert_int_equal(vd_db_scroll(c, first ? NULL : &from, page,
                                              filtered ? f : NULL, page == 2, &r, &n, &next,
                                              &has_next, &e),
                                 0);
                assert_true(n <= page);
                for (size_t i = 0; i < n; i++, seen++) {
                    uint64_t id = live[seen];
                    assert_record(&r[i], id, (struct vd_version){now + id, 100 + id},
                                  page == 2 ? vecs[id] : NULL, payloads[id]);
                }
                vd_db_records_free(r, n);
                from = next;
                first = false;
            }
            assert_int_equal(seen, filtered ? 2 : 3);
        }
    }
    vd_filter_free(f);
    cJSON_Delete(fj);

    /* retrieve agrees; the local delete left a tombstone stamped by this node */
    struct vd_pid all[5];
    for (int i = 0; i < 5; i++)
        all[i] = (struct vd_pid){.type = VD_PID_NUM, .u.num = (uint64_t)i + 1};
    struct vd_db_record *r;
    size_t n;
    assert_int_equal(vd_db_retrieve(c, all, 5, false, false, &r, &n, &e), 0);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < n; i++)
        assert_record(&r[i], live[i], (struct vd_version){now + live[i], 100 + live[i]}, NULL,
                      payloads[live[i]]);
    vd_db_records_free(r, n);
    assert_int_equal(vd_db_retrieve(c, &four, 1, false, true, &r, &n, &e), 0);
    assert_true(n == 1 && r[0].tombstone && !r[0].payload && !r[0].vec);
    assert_true(r[0].version.node == vd_db_node_id(db) && r[0].version.hlc > now + 5);
    vd_db_records_free(r, n);
    vd_db_coll_put(c);
    vd_db_close(db);
    fixture_rmdir();
}

/* A point deleted between a payload edit's read and its write stays deleted (in storage, in
 * counts and in searches) and does not fail the edit, by ids and by filter alike; a point
 * another edit changed in between gets both edits, not only the later one. */
static void test_edit_races(void **state)
{
    fixture_mkdir();
    struct vd_db *db = open_db();
    struct vd_coll *c = create_coll(db, "e", 2, VD_METRIC_EUCLID, 64, 0);
    upsert_grid(c, 10);
    float q[2] = {1, 0};
    struct vd_db_search s = {.query = q, .limit = 1, .exact = true};
    for (int by_filter = 0; by_filter < 2; by_filter++) {
        uint64_t gone = by_filter ? 3 : 1, kept = gone + 1, idv[2] = {gone, kept};
        struct race r = {.c = c, .id = gone};
        assert_int_equal(edit_raced(c, idv, 2, by_filter, &r), 0);
        char *j = retrieve(c, gone);
        assert_string_equal(j, "[]");
        free(j);
        j = retrieve(c, kept);
        assert_non_null(strstr(j, "\"b\":2"));
        free(j);
        q[0] = (float)gone;
        assert_int_not_equal(first_id(c, &s), (int)gone);
    }
    uint64_t n;
    vd_db_count(c, NULL, &n);
    assert_int_equal(n, 8);

    /* only raced points: nothing is left to write, still a success */
    uint64_t five = 5;
    struct race r = {.c = c, .id = 5};
    assert_int_equal(edit_raced(c, &five, 1, true, &r), 0);
    vd_db_count(c, NULL, &n);
    assert_int_equal(n, 7);

    /* another edit in between: the edit is redone over it */
    uint64_t six = 6;
    r = (struct race){.c = c, .id = 6, .edit = true};
    assert_int_equal(edit_raced(c, &six, 1, false, &r), 0);
    char *j = retrieve(c, 6);
    assert_non_null(strstr(j, "\"other\":true"));
    assert_non_null(strstr(j, "\"b\":2"));
    assert_non_null(strstr(j, "\"parity\":\"even\""));
    free(j);

    /* and all of it is what storage holds after a restart */
    reopen(&db, &c, "e");
    vd_db_count(c, NULL, &n);
    assert_int_equal(n, 7);
    j = retrieve(c, 1);
    assert_string_equal(j, "[]");
    free(j);
    vd_db_coll_put(c);
    vd_db_close(db);
    fixture_rmdir();
}

/* Forgetting copies: the version named goes from storage, the index and the payload columns (and
 * stays gone after a restart), while a copy at another version is kept. */
static void test_forget_copies(void **state)
{
    (void)state;
    fixture_mkdir();
    struct vd_db *db = open_db();
    struct vd_coll *c = create_coll(db, "f", 2, VD_METRIC_EUCLID, 64, 0);
    float v[2] = {1, 2};
    int st;
    for (uint64_t id = 1; id <= 3; id++) {
        assert_int_equal(apply_rec(c, id, (struct vd_version){100 + id, 7}, v, "{\"k\":1}", &st),
                         0);
        assert_int_equal(st, 0);
    }
    reopen(&db, &c, "f"); /* the saved graph holds all three */
    struct vd_pid ids[2] = {{.type = VD_PID_NUM, .u.num = 1}, {.type = VD_PID_NUM, .u.num = 2}};
    struct vd_version vers[2] = {{101, 7}, {999, 7}}; /* 2: not the version stored */
    struct vd_err e;
    assert_int_equal(vd_db_forget(c, ids, vers, 0, on_done, &W, &e), VD_EINVAL);
    assert_int_equal(vd_db_forget(c, ids, vers, 2, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    for (int round = 0; round < 2; round++) {
        uint64_t n = 0;
        assert_int_equal(vd_db_count(c, NULL, &n), 0);
        assert_int_equal(n, 2);
        struct vd_coll_stats cs;
        vd_db_coll_stats(c, &cs);
        assert_int_equal(cs.points, 2);
        char *j = retrieve(c, 1);
        assert_string_equal(j, "[]");
        free(j);
        j = retrieve(c, 2);
        assert_non_null(strstr(j, "\"k\":1"));
        free(j);
        reopen(&db, &c, "f");
    }
    vd_db_coll_put(c);
    vd_db_close(db);
    fixture_rmdir();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_search_restart),
        cmocka_unit_test(test_cosine_zero_vector_rejected),
        cmocka_unit_test(test_apply_records),
        cmocka_unit_test(test_forget_copies),
        cmocka_unit_test(test_structured_reads),
        cmocka_unit_test(test_edit_races),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
