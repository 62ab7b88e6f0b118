/* Data messages: every kind round-trips exactly; every prefix of a valid message, a trailing
 * byte, and each broken rule is refused; the encoder refuses what it could not send. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dmsg.h"
#include "vectord/record.h"

static const float QUERY[3] = {0.5f, -1.25f, 3.0f};
static const char FILTER[] = "{\"must\":[{\"key\":\"a\",\"match\":{\"value\":1}}]}";

static struct vd_pid num(uint64_t n)
{
    return (struct vd_pid){.type = VD_PID_NUM, .u.num = n};
}

static struct vd_pid uuid(uint8_t fill)
{
    struct vd_pid p = {.type = VD_PID_UUID};
    memset(p.u.uuid, fill, 16);
    return p;
}

static size_t record(uint64_t id, uint64_t hlc, bool tomb, uint8_t *buf, size_t cap)
{
    float v[3] = {1, 2, 3};
    struct vd_rvec rv = {.kind = VD_RVEC_DENSE, .n = 3, .values = v};
    struct vd_record r = {.id = num(id), .incarnation = 9, .version = {hlc, 2},
                          .tombstone = tomb, .n_vectors = tomb ? 0 : 1,
                          .vectors = tomb ? NULL : &rv, .payload = tomb ? NULL : "{\"a\":1}",
                          .payload_len = tomb ? 0 : 7};
    size_t len;
    assert_int_equal(vd_record_encode(&r, buf, cap, &len), 0);
    return len;
}

/* Field by field: structs carry padding that encoding does not keep. */
static void same_copy(const struct vd_coord_copy *a, const struct vd_coord_copy *b)
{
    assert_int_equal(a->present, b->present);
    assert_int_equal(a->tombstone, b->tombstone);
    assert_true(vd_version_cmp(a->version, b->version) == 0);
}

static void same_pid(const struct vd_pid *a, const struct vd_pid *b)
{
    assert_int_equal(vd_pid_cmp(a, b), 0);
}

static void base(struct vd_dmsg_req *r, uint8_t kind)
{
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->attempt = 7;
    r->incarnation = 0x8000000000000011ULL;
    r->ring_version = 42;
    strcpy(r->coll, "docs"); /* and no request id: one byte, its length 0 */
}

/* Encodes r, checks that every proper prefix and one trailing byte are refused, decodes it. */
static void req_roundtrip(const struct vd_dmsg_req *r, struct vd_buf *b, struct vd_dmsg_req *out)
{
    vd_buf_init(b);
    assert_int_equal(vd_dmsg_req_encode(r, b), 0);
    assert_true(vd_buf_ok(b));
    for (size_t n = 0; n < b->len; n++) {
        struct vd_dmsg_req x;
        assert_int_equal(vd_dmsg_req_decode((const uint8_t *)b->data, n, &x), VD_ECORRUPT);
        vd_dmsg_req_free(&x);
    }
    vd_buf_append(b, "", 1);
    assert_int_equal(vd_dmsg_req_decode((const uint8_t *)b->data, b->len, out), VD_ECORRUPT);
    vd_dmsg_req_free(out);
    b->len--;
    assert_int_equal(vd_dmsg_req_decode((const uint8_t *)b->data, b->len, out), 0);
    assert_int_equal(out->kind, r->kind);
    assert_int_equal(out->attempt, r->attempt);
    assert_true(out->incarnation == r->incarnation);
    assert_true(out->ring_version == r->ring_version);
    assert_string_equal(out->coll, r->coll);
    assert_string_equal(out->rid, r->rid);
}

static void test_requests_roundtrip(void **state)
{
    (void)state;
    struct vd_dmsg_req r, d;
    struct vd_buf b;

    uint8_t r1[256], r2[256];
    struct vd_dmsg_blob recs[2] = {{r1, (uint32_t)record(1, 100, false, r1, sizeof r1)},
                                   {r2, (uint32_t)record(2, 101, true, r2, sizeof r2)}};
    base(&r, VD_DMSG_WRITE);
    strcpy(r.rid, "abc-123");
    r.recs = recs;
    r.n_recs = 2;
    req_roundtrip(&r, &b, &d);
    assert_int_equal(d.n_recs, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(d.recs[i].len, recs[i].len);
        assert_memory_equal(d.recs[i].p, recs[i].p, recs[i].len);
    }
    vd_dmsg_req_free(&d);
    vd_buf_release(&b);

    struct vd_pid ids[3] = {num(0), num(UINT64_MAX), uuid(0xab)};
    base(&r, VD_DMSG_READ);
    r.ids = ids;
    r.n_ids = 3;
    r.with_record = true;
    req_roundtrip(&r, &b, &d);
    assert_int_equal(d.n_ids, 3);
    assert_true(d.with_record);
    for (int i = 0; i < 3; i++)
        same_pid(&d.ids[i], &ids[i]);
    vd_dmsg_req_free(&d);
    vd_buf_release(&b);

    uint64_t arcs[2][2] = {{UINT64_MAX - 5, 10}, {10, 10}};
    base(&r, VD_DMSG_SEARCH);
    strcpy(r.rid, "0123456789abcdef");
    r.k = 20;
    r.ef = 64;
    r.exact = true;
    r.arcs = (const uint64_t(*)[2])arcs;
    r.n_arcs = 2;
    r.query = QUERY;
    r.dim = 3;
    r.filter = FILTER;
    r.filter_len = (uint32_t)strlen(FILTER);
    req_roundtrip(&r, &b, &d);
    assert_int_equal(d.k, 20);
    assert_int_equal(d.ef, 64);
    assert_true(d.exact);
    assert_int_equal(d.n_arcs, 2);
    assert_memory_equal(d.arcs, arcs, sizeof arcs);
    assert_int_equal(d.dim, 3);
    assert_memory_equal(d.query, QUERY, sizeof QUERY);
    assert_int_equal(d.filter_len, strlen(FILTER));
    assert_memory_equal(d.filter, FILTER, strlen(FILTER));
    vd_dmsg_req_free(&d);
    vd_buf_release(&b);

    /* the whole ring and no filter */
    r.n_arcs = 0;
    r.arcs = NULL;
    r.filter = NULL;
    r.filter_len = 0;
    req_roundtrip(&r, &b, &d);
    assert_int_equal(d.n_arcs, 0);
    assert_null(d.filter);
    vd_dmsg_req_free(&d);
    vd_buf_release(&b);

    /* the quantization parameters of a search */
    base(&r, VD_DMSG_SEARCH);
    r.k = 5;
    r.query = QUERY;
    r.dim = 3;
    r.quant_no_rescore = true;
    r.oversampling = 2.5f;
    req_roundtrip(&r, &b, &d);
    assert_false(d.quant_ignore);
    assert_true(d.quant_no_rescore);
    assert_true(d.oversampling == 2.5f);
    vd_dmsg_req_free(&d);
    vd_buf_release(&b);

    base(&r, VD_DMSG_VERIFY);
    r.ids = ids;
    r.n_ids = 1;
    r.query = QUERY;
    r.dim = 3;
    req_roundtrip(&r, &b, &d);
    assert_int_equal(d.n_ids, 1);
    assert_int_equal(d.dim, 3);
    vd_dmsg_req_free(&d);
    vd_buf_release(&b);

    /* a scroll's verification has no query */
    r.query = NULL;
    r.dim = 0;
    r.filter = FILTER;
    r.filter_len = (uint32_t)strlen(FILTER);
    req_roundtrip(&r, &b, &d);
    assert_int_equal(d.dim, 0);
    assert_null(d.query);
    assert_int_equal(d.filter_len, strlen(FILTER));
    vd_dmsg_req_free(&d);
    vd_buf_release(&b);

    /* a scroll page from an id, and from the start */
    base(&r, VD_DMSG_SCROLL);
    r.k = 8;
    r.has_from = true;
    r.from = uuid(0x42);
    r.arcs = (const uint64_t(*)[2])arcs;
    r.n_arcs = 2;
    r.filter = FILTER;
    r.filter_len = (uint32_t)strlen(FILTER);
    req_roundtrip(&r, &b, &d);
    assert_int_equal(d.k, 8);
    assert_true(d.has_from);
    same_pid(&d.from, &r.from);
    assert_int_equal(d.n_arcs, 2);
    assert_memory_equal(d.arcs, arcs, sizeof arcs);
    assert_int_equal(d.filter_len, strlen(FILTER));
    vd_dmsg_req_free(&d);
    vd_buf_release(&b);
    r.has_from = false;
    r.n_arcs = 0;
    r.arcs = NULL;
    req_roundtrip(&r, &b, &d);
    assert_false(d.has_from);
    vd_dmsg_req_free(&d);
    vd_buf_release(&b);
}

static void reply_roundtrip(const struct vd_dmsg_reply *r, struct vd_buf *b,
                            struct vd_dmsg_reply *out)
{
    vd_buf_init(b);
    assert_int_equal(vd_dmsg_reply_encode(r, b), 0);
    for (size_t n = 0; n < b->len; n++) {
        struct vd_dmsg_reply x;
        assert_int_equal(vd_dmsg_reply_decode((const uint8_t *)b->data, n, &x), VD_ECORRUPT);
        vd_dmsg_reply_free(&x);
    }
    vd_buf_append(b, "", 1);
    assert_int_equal(vd_dmsg_reply_decode((const uint8_t *)b->data, b->len, out), VD_ECORRUPT);
    vd_dmsg_reply_free(out);
    b->len--;
    assert_int_equal(vd_dmsg_reply_decode((const uint8_t *)b->data, b->len, out), 0);
    assert_int_equal(out->kind, r->kind);
    assert_int_equal(out->status, r->status);
    assert_int_equal(out->attempt, r->attempt);
    assert_true(out->ring_version == r->ring_version);
    assert_int_equal(out->n_items, r->n_items);
}

static void test_replies_roundtrip(void **state)
{
    (void)state;
    struct vd_dmsg_reply r, d;
    struct vd_buf b;

    uint8_t res[3] = {VD_DMSG_HELD, VD_DMSG_HELD, VD_DMSG_HELD};
    r = (struct vd_dmsg_reply){.kind = VD_DMSG_WRITE, .status = VD_DMSG_OK, .attempt = 3,
                               .ring_version = 9, .results = res, .n_items = 3};
    reply_roundtrip(&r, &b, &d);
    assert_memory_equal(d.results, res, 3);
    vd_dmsg_reply_free(&d);
    vd_buf_release(&b);

    uint8_t rec[256];
    uint32_t rl = (uint32_t)record(5, 100, false, rec, sizeof rec);
    struct vd_dmsg_read_item reads[3] = {
        {.copy = {true, false, {100, 2}}, .rec = {rec, rl}},
        {.copy = {true, true, {101, 3}}},
        {.copy = {false, false, {0, 0}}},
    };
    r = (struct vd_dmsg_reply){.kind = VD_DMSG_READ, .status = VD_DMSG_OK, .attempt = 1,
                               .ring_version = 9, .reads = reads, .n_items = 3};
    reply_roundtrip(&r, &b, &d);
    for (int i = 0; i < 3; i++) {
        same_copy(&d.reads[i].copy, &reads[i].copy);
        assert_int_equal(d.reads[i].rec.len, reads[i].rec.len);
    }
    assert_memory_equal(d.reads[0].rec.p, rec, rl);
    vd_dmsg_reply_free(&d);
    vd_buf_release(&b);

    struct vd_coord_cand cands[2] = {{num(1), {100, 2}, 0.75f}, {uuid(7), {99, 1}, -3.5f}};
    r = (struct vd_dmsg_reply){.kind = VD_DMSG_SEARCH, .status = VD_DMSG_OK, .attempt = 2,
                               .ring_version = 9, .complete = true, .cands = cands,
                               .n_items = 2};
    reply_roundtrip(&r, &b, &d);
    assert_true(d.complete);
    for (int i = 0; i < 2; i++) {
        same_pid(&d.cands[i].id, &cands[i].id);
        assert_true(vd_version_cmp(d.cands[i].version, cands[i].version) == 0);
        assert_true(d.cands[i].score == cands[i].score);
    }
    vd_dmsg_reply_free(&d);
    vd_buf_release(&b);

    /* a scroll page: the same list, scores 0, in id order */
    struct vd_coord_cand page[2] = {{num(1), {100, 2}, 0}, {num(9), {99, 1}, 0}};
    r = (struct vd_dmsg_reply){.kind = VD_DMSG_SCROLL, .status = VD_DMSG_OK, .attempt = 2,
                               .ring_version = 9, .complete = false, .cands = page,
                               .n_items = 2};
    reply_roundtrip(&r, &b, &d);
    assert_false(d.complete);
    same_pid(&d.cands[1].id, &page[1].id);
    vd_dmsg_reply_free(&d);
    vd_buf_release(&b);

    struct vd_dmsg_verify_item ver[2] = {{{true, false, {100, 2}}, true, 0.5f},
                                         {{false, false, {0, 0}}, false, 0}};
    r = (struct vd_dmsg_reply){.kind = VD_DMSG_VERIFY, .status = VD_DMSG_OK, .attempt = 2,
                               .ring_version = 9, .verifies = ver, .n_items = 2};
    reply_roundtrip(&r, &b, &d);
    for (int i = 0; i < 2; i++) {
        same_copy(&d.verifies[i].copy, &ver[i].copy);
        assert_int_equal(d.verifies[i].match, ver[i].match);
        assert_true(d.verifies[i].score == ver[i].score);
    }
    vd_dmsg_reply_free(&d);
    vd_buf_release(&b);

    r = (struct vd_dmsg_reply){.kind = VD_DMSG_SEARCH, .status = VD_DMSG_ERROR, .attempt = 2,
                               .ring_version = 9, .msg = "clock skew", .msg_len = 10};
    reply_roundtrip(&r, &b, &d);
    assert_int_equal(d.msg_len, 10);
    assert_memory_equal(d.msg, "clock skew", 10);
    vd_buf_release(&b);

    for (uint8_t st = VD_DMSG_WRONG_RING; st <= VD_DMSG_NOT_YET; st++) {
        r = (struct vd_dmsg_reply){.kind = VD_DMSG_WRITE, .status = st, .attempt = 2,
                                   .ring_version = 77};
        reply_roundtrip(&r, &b, &d);
        vd_buf_release(&b);
    }
}

/* Overwrites byte `at` of a valid encoding with v and expects the decoder to refuse it. */
static void expect_bad_req(const struct vd_buf *b, size_t at, uint8_t v)
{
    uint8_t *copy = malloc(b->len);
    memcpy(copy, b->data, b->len);
    copy[at] = v;
    struct vd_dmsg_req d;
    assert_int_equal(vd_dmsg_req_decode(copy, b->len, &d), VD_ECORRUPT);
    vd_dmsg_req_free(&d);
    free(copy);
}

static void test_broken_rules_refused(void **state)
{
    (void)state;
    struct vd_dmsg_req r;
    struct vd_buf b;
    struct vd_pid ids[1] = {num(5)};
    base(&r, VD_DMSG_VERIFY);
    r.ids = ids;
    r.n_ids = 1;
    r.query = QUERY;
    r.dim = 3;
    vd_buf_init(&b);
    assert_int_equal(vd_dmsg_req_encode(&r, &b), 0);
    /* header: version 0, kind 1, attempt 2-5, incarnation 6-13, ring 14-21, name len 22,
     * "docs" 23-26, request id len 27 (none), n 28-31, key len 32, key 33-41, dim 42-45, floats
     * 46-57, filter len */
    expect_bad_req(&b, 0, 1);  /* the version before TREE and LEAF */
    expect_bad_req(&b, 0, 2);  /* the version before request ids */
    expect_bad_req(&b, 1, 9);  /* unknown kind */
    expect_bad_req(&b, 22, 0); /* empty name */
    expect_bad_req(&b, 24, 0); /* a NUL inside the name */
    expect_bad_req(&b, 27, 4); /* a request id that takes the count's bytes: not visible ASCII */
    expect_bad_req(&b, 28, 0xff); /* a count the message cannot hold */
    expect_bad_req(&b, 31, 0); /* n = 0 */
    expect_bad_req(&b, 32, 8); /* key length */
    expect_bad_req(&b, 33, 9); /* key type */
    expect_bad_req(&b, 42, 1); /* dim beyond what is there */
    ((uint8_t *)b.data)[46] = 0x7f; /* 0.5 is 3f 00 00 00; 7f 80 00 00 is infinity */
    expect_bad_req(&b, 47, 0x80);
    vd_buf_release(&b);

    /* a write carrying a damaged record */
    uint8_t rec[256];
    struct vd_dmsg_blob blob = {rec, (uint32_t)record(1, 100, false, rec, sizeof rec)};
    base(&r, VD_DMSG_WRITE);
    r.recs = &blob;
    r.n_recs = 1;
    vd_buf_init(&b);
    assert_int_equal(vd_dmsg_req_encode(&r, &b), 0);
    expect_bad_req(&b, 32, 0xee); /* the record's format byte */
    vd_buf_release(&b);

    /* the encoder refuses what it must not send, leaving the buffer as it was */
    vd_buf_init(&b);
    vd_buf_append(&b, "x", 1);
    rec[0] = 0xee;
    assert_int_equal(vd_dmsg_req_encode(&r, &b), VD_EINVAL);
    r.n_recs = 0;
    assert_int_equal(vd_dmsg_req_encode(&r, &b), VD_EINVAL);
    base(&r, VD_DMSG_SEARCH);
    r.k = 0;
    r.query = QUERY;
    r.dim = 3;
    assert_int_equal(vd_dmsg_req_encode(&r, &b), VD_EINVAL);
    r.k = 5;
    r.dim = 0; /* only a verify goes without a query */
    assert_int_equal(vd_dmsg_req_encode(&r, &b), VD_EINVAL);
    r.dim = 3;
    r.oversampling = 0.5f; /* Qdrant's oversampling is 1 or more */
    assert_int_equal(vd_dmsg_req_encode(&r, &b), VD_EINVAL);
    r.oversampling = 0;
    float nan_q[1] = {NAN};
    r.query = nan_q;
    r.dim = 1;
    assert_int_equal(vd_dmsg_req_encode(&r, &b), VD_EINVAL);
    r.query = QUERY;
    r.coll[0] = 0;
    assert_int_equal(vd_dmsg_req_encode(&r, &b), VD_EINVAL);
    r.coll[0] = 'd';
    r.kind = 0;
    assert_int_equal(vd_dmsg_req_encode(&r, &b), VD_EINVAL);
    assert_int_equal(b.len, 1);
    vd_buf_release(&b);

    /* replies: an absent copy with a version, a record beside a tombstone, a bad write result */
    struct vd_dmsg_reply rp;
    struct vd_dmsg_read_item rd = {.copy = {true, false, {100, 2}}};
    rp = (struct vd_dmsg_reply){.kind = VD_DMSG_READ, .status = VD_DMSG_OK, .reads = &rd,
                                .n_items = 1};
    vd_buf_init(&b);
    assert_int_equal(vd_dmsg_reply_encode(&rp, &b), 0);
    /* version 0, kind 1, status 2, attempt 3-6, ring 7-14, n 15-18, flags 19 */
    uint8_t *c = (uint8_t *)b.data;
    struct vd_dmsg_reply d;
    c[19] = 0; /* absent, yet a version */
    assert_int_equal(vd_dmsg_reply_decode(c, b.len, &d), VD_ECORRUPT);
    vd_dmsg_reply_free(&d);
    c[19] = 4; /* unknown flag */
    assert_int_equal(vd_dmsg_reply_decode(c, b.len, &d), VD_ECORRUPT);
    vd_dmsg_reply_free(&d);
    c[2] = 9; /* unknown status */
    assert_int_equal(vd_dmsg_reply_decode(c, b.len, &d), VD_ECORRUPT);
    vd_buf_release(&b);
    uint8_t bad_res = 2;
    rp = (struct vd_dmsg_reply){.kind = VD_DMSG_WRITE, .status = VD_DMSG_OK, .results = &bad_res,
                                .n_items = 1};
    vd_buf_init(&b);
    assert_int_equal(vd_dmsg_reply_encode(&rp, &b), VD_EINVAL);
    assert_int_equal(b.len, 0);
    vd_buf_release(&b);
}

/* TREE and LEAF (anti-entropy repair): round trips, and what the codec refuses. */
static void test_repair_messages(void **state)
{
    (void)state;
    struct vd_dmsg_req r, d;
    struct vd_buf b;
    base(&r, VD_DMSG_TREE);
    r.range[0] = UINT64_MAX - 5;
    r.range[1] = 77;
    r.depth = 2;
    r.with_leaves = true;
    req_roundtrip(&r, &b, &d);
    assert_true(d.range[0] == UINT64_MAX - 5 && d.range[1] == 77);
    assert_int_equal(d.depth, 2);
    assert_true(d.with_leaves);
    /* after the name (23-26) and the request id's length (27): start 28-35, end 36-43, depth
     * 44, with_leaves 45 */
    expect_bad_req(&b, 44, 0);
    expect_bad_req(&b, 44, VD_MERKLE_MAX_DEPTH + 1);
    expect_bad_req(&b, 45, 2);
    vd_dmsg_req_free(&d);
    vd_buf_release(&b);
    base(&r, VD_DMSG_LEAF);
    r.range[0] = 5;
    r.range[1] = 9;
    r.k = 1000;
    req_roundtrip(&r, &b, &d);
    assert_true(d.range[0] == 5 && d.range[1] == 9);
    assert_int_equal(d.k, 1000);
    expect_bad_req(&b, 44, 0xff); /* k above VD_DMSG_MAX_ITEMS */
    vd_dmsg_req_free(&d);
    vd_buf_release(&b);
    vd_buf_init(&b);
    r.k = 0;
    assert_int_equal(vd_dmsg_req_encode(&r, &b), VD_EINVAL);
    base(&r, VD_DMSG_TREE);
    r.depth = 0;
    assert_int_equal(vd_dmsg_req_encode(&r, &b), VD_EINVAL);
    assert_int_equal(b.len, 0);
    vd_buf_release(&b);

    struct vd_dmsg_reply rp, rd;
    uint64_t leaves[256];
    for (int i = 0; i < 256; i++)
        leaves[i] = (uint64_t)i * 0x9e3779b97f4a7c15ULL;
    rp = (struct vd_dmsg_reply){.kind = VD_DMSG_TREE, .status = VD_DMSG_OK, .attempt = 4,
                                .ring_version = 9, .tree_count = 12345, .tree_root = 99,
                                .depth = 2, .leaves = leaves, .n_leaves = 256};
    reply_roundtrip(&rp, &b, &rd);
    assert_true(rd.tree_count == 12345 && rd.tree_root == 99);
    assert_int_equal(rd.depth, 2);
    assert_int_equal(rd.n_leaves, 256);
    assert_memory_equal(rd.leaves, leaves, sizeof leaves);
    vd_dmsg_reply_free(&rd);
    vd_buf_release(&b);
    rp.n_leaves = 0; /* the root alone */
    reply_roundtrip(&rp, &b, &rd);
    assert_int_equal(rd.n_leaves, 0);
    assert_null(rd.leaves);
    vd_dmsg_reply_free(&rd);
    vd_buf_release(&b);
    vd_buf_init(&b);
    rp.n_leaves = 255; /* leaves travel whole */
    assert_int_equal(vd_dmsg_reply_encode(&rp, &b), VD_EINVAL);
    rp.n_leaves = 0;
    rp.depth = VD_MERKLE_MAX_DEPTH + 1;
    assert_int_equal(vd_dmsg_reply_encode(&rp, &b), VD_EINVAL);
    assert_int_equal(b.len, 0);
    rp.depth = 1;
    assert_int_equal(vd_dmsg_reply_encode(&rp, &b), 0);
    /* version 0, kind 1, status 2, attempt 3-6, ring 7-14, count 15-22, root 23-30, depth 31,
     * n 32-35 */
    uint8_t *c = (uint8_t *)b.data;
    c[35] = 16; /* 16 leaves announced, none there */
    assert_int_equal(vd_dmsg_reply_decode(c, b.len, &rd), VD_ECORRUPT);
    vd_dmsg_reply_free(&rd);
    vd_buf_release(&b);

    struct vd_dmsg_leaf_item items[2] = {{num(3), {true, false, {100, 2}}},
                                         {uuid(0xab), {true, true, {101, 1}}}};
    rp = (struct vd_dmsg_reply){.kind = VD_DMSG_LEAF, .status = VD_DMSG_OK, .attempt = 1,
                                .ring_version = 9, .listing = items, .n_items = 2};
    reply_roundtrip(&rp, &b, &rd);
    assert_false(rd.complete);
    for (int i = 0; i < 2; i++) {
        same_pid(&rd.listing[i].id, &items[i].id);
        same_copy(&rd.listing[i].copy, &items[i].copy);
    }
    vd_dmsg_reply_free(&rd);
    vd_buf_release(&b);
    rp.complete = true;
    reply_roundtrip(&rp, &b, &rd);
    assert_true(rd.complete);
    vd_dmsg_reply_free(&rd);
    /* ... n 16-19, key len 20, key 21-29, flags 30: a listed point is present */
    c = (uint8_t *)b.data;
    c[30] = 0;
    assert_int_equal(vd_dmsg_reply_decode(c, b.len, &rd), VD_ECORRUPT);
    vd_dmsg_reply_free(&rd);
    vd_buf_release(&b);
    vd_buf_init(&b);
    items[0].copy.present = false;
    assert_int_equal(vd_dmsg_reply_encode(&rp, &b), VD_EINVAL);
    vd_buf_release(&b);
}

/* The client request's id travels with every request kind: any visible ASCII up to 64 bytes, or
 * none; a control byte, a space or a longer id is refused by the encoder and the decoder. */
static void test_request_id(void **state)
{
    (void)state;
    struct vd_dmsg_req r, d;
    struct vd_buf b;
    struct vd_pid ids[1] = {num(5)};
    base(&r, VD_DMSG_READ);
    r.ids = ids;
    r.n_ids = 1;
    memset(r.rid, '~', VD_REQID_MAX);
    r.rid[0] = '!';
    r.rid[VD_REQID_MAX] = 0;
    req_roundtrip(&r, &b, &d);
    assert_int_equal(strlen(d.rid), VD_REQID_MAX);
    vd_dmsg_req_free(&d);
    vd_buf_release(&b);
    r.rid[0] = 0; /* none: hint replay, repair */
    req_roundtrip(&r, &b, &d);
    assert_string_equal(d.rid, "");
    vd_dmsg_req_free(&d);

    /* where the id sits: after the name (base: "docs") */
    const size_t at = 1 + 1 + 4 + 8 + 8 + 1 + 4;
    strcpy(r.rid, "abc-123");
    vd_buf_release(&b);
    assert_int_equal(vd_dmsg_req_encode(&r, &b), 0);
    assert_int_equal((uint8_t)b.data[at], 7);
    assert_memory_equal(b.data + at + 1, "abc-123", 7);
    const char bad[] = {'\n', '\r', ' ', 0x7f, (char)0xc3, 0x01};
    for (size_t i = 0; i < sizeof bad; i++) {
        b.data[at + 4] = bad[i];
        assert_int_equal(vd_dmsg_req_decode((const uint8_t *)b.data, b.len, &d), VD_ECORRUPT);
        vd_dmsg_req_free(&d);
        struct vd_buf e = {0};
        r.rid[3] = bad[i];
        assert_int_equal(vd_dmsg_req_encode(&r, &e), VD_EINVAL);
        assert_int_equal(e.len, 0);
        vd_buf_release(&e);
        r.rid[3] = '-';
    }
    b.data[at + 4] = '1';
    assert_int_equal(vd_dmsg_req_decode((const uint8_t *)b.data, b.len, &d), 0);
    vd_dmsg_req_free(&d);
    /* a length past 64 is refused even when the bytes are there */
    vd_buf_release(&b);
    memset(r.rid, 'x', VD_REQID_MAX);
    r.rid[VD_REQID_MAX] = 0;
    assert_int_equal(vd_dmsg_req_encode(&r, &b), 0);
    b.data[at] = VD_REQID_MAX + 1;
    assert_int_equal(vd_dmsg_req_decode((const uint8_t *)b.data, b.len, &d), VD_ECORRUPT);
    vd_dmsg_req_free(&d);
    vd_buf_release(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_requests_roundtrip),
        cmocka_unit_test(test_request_id),
        cmocka_unit_test(test_replies_roundtrip),
        cmocka_unit_test(test_broken_rules_refused),
        cmocka_unit_test(test_repair_messages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
