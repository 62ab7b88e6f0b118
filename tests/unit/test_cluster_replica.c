/*
 * The replica side of the data plane on a real database: writes of whole records are held
 * durably with last-write-wins, reads answer versions, tombstones and the very record bytes, and
 * a request on another ring, for a deleted or not yet applied incarnation, or for a point this
 * node does not hold, is answered so without touching data.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <unistd.h>
#include <cmocka.h>

#include "cluster_int.h"
#include "dmsg.h"
#include "unit/db_fixture.h"
#include "vectord/index.h"
#include "vectord/record.h"

#define SELF 1

struct fx {
    struct vd_db *db;
    struct vd_meta *m;
    struct vd_coll_schema s; /* "c" as the metadata made it */
    struct vd_pid mine[8], other;
    size_t n_mine;
};

static void apply_cmd(struct vd_meta *m, struct vd_buf *b)
{
    assert_true(vd_buf_ok(b));
    struct vd_err e = {0};
    assert_int_equal(vd_meta_apply(m, vd_meta_applied(m) + 1, (const uint8_t *)b->data, b->len, &e),
                     0);
    vd_buf_release(b);
}

static bool holds(const struct vd_meta *m, const struct vd_pid *id)
{
    uint8_t key[VD_PID_KEY_MAX];
    size_t kl = vd_pid_encode(id, key);
    struct vd_placement pl;
    assert_int_equal(vd_meta_place_point(m, "c", key, kl, &pl), 0);
    for (size_t i = 0; i < pl.n_natural; i++)
        if (pl.natural[i] == SELF)
            return true;
    return false;
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    fixture_mkdir();
    f->db = open_db();
    assert_int_equal(vd_meta_new(&f->m), 0);
    struct vd_buf b = {0};
    for (uint64_t id = 1; id <= 3; id++) {
        char addr[32];
        snprintf(addr, sizeof addr, "127.0.0.%llu:6335", (unsigned long long)id);
        vd_meta_cmd_add_member(id, addr, "", &b);
        apply_cmd(f->m, &b);
        vd_meta_cmd_set_member(id, VD_MEMBER_UP, NULL, NULL, &b);
        apply_cmd(f->m, &b);
    }
    struct vd_coll_schema s = {.dim = 3,
                               .metric = VD_METRIC_DOT,
                               .hnsw_m = 16,
                               .hnsw_ef_construct = 64,
                               .replication_factor = 2,
                               .write_consistency_factor = 2,
                               .created_hlc = 1};
    strcpy(s.name, "c");
    vd_meta_cmd_create_collection(&s, &b);
    apply_cmd(f->m, &b);
    f->s = *vd_meta_collection(f->m, "c");
    /* the database as the node applies the metadata: the same incarnation */
    struct vd_err e;
    assert_int_equal(vd_db_coll_create(f->db, &f->s, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    /* points this node holds on the ring, and one it does not */
    bool have_other = false;
    for (uint64_t i = 1; i < 1000 && (f->n_mine < 8 || !have_other); i++) {
        struct vd_pid id = {.type = VD_PID_NUM, .u.num = i};
        if (holds(f->m, &id)) {
            if (f->n_mine < 8)
                f->mine[f->n_mine++] = id;
        } else if (!have_other) {
            f->other = id;
            have_other = true;
        }
    }
    assert_int_equal(f->n_mine, 8);
    assert_true(have_other);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    vd_meta_free(f->m);
    vd_db_close(f->db);
    fixture_rmdir();
    free(f);
    return 0;
}

static struct vd_dmsg_req req(const struct fx *f, uint8_t kind)
{
    struct vd_dmsg_req q = {.kind = kind,
                            .attempt = 5,
                            .incarnation = f->s.incarnation,
                            .ring_version = vd_meta_ring_version(f->m)};
    strcpy(q.coll, "c");
    return q;
}

/* Serves q and decodes the reply into *rp, whose arrays point into *raw (free both). */
static void serve(const struct fx *f, const struct vd_dmsg_req *q, struct vd_buf *raw,
                  struct vd_dmsg_reply *rp)
{
    struct vd_buf b;
    vd_buf_init(&b);
    assert_int_equal(vd_dmsg_req_encode(q, &b), 0);
    vd_buf_init(raw);
    assert_int_equal(vd__replica_serve(f->db, f->m, SELF, (const uint8_t *)b.data, b.len, raw), 0);
    vd_buf_release(&b);
    assert_int_equal(vd_dmsg_reply_decode((const uint8_t *)raw->data, raw->len, rp), 0);
    assert_int_equal(rp->kind, q->kind);
    assert_int_equal(rp->attempt, q->attempt);
    assert_true(rp->ring_version == vd_meta_ring_version(f->m));
}

static size_t rec_of(const struct fx *f, const struct vd_pid *id, uint64_t hlc, float x, bool tomb,
                     uint8_t *buf)
{
    float v[3] = {x, x + 1, x + 2};
    struct vd_rvec rv = {.kind = VD_RVEC_DENSE, .n = 3, .values = v};
    char pl[32];
    int pn = snprintf(pl, sizeof pl, "{\"x\":%d}", (int)x);
    struct vd_record r = {.id = *id,
                          .incarnation = f->s.incarnation,
                          .version = {hlc, 2},
                          .tombstone = tomb,
                          .n_vectors = tomb ? 0 : 1,
                          .vectors = tomb ? NULL : &rv,
                          .payload = tomb ? NULL : pl,
                          .payload_len = tomb ? 0 : (size_t)pn};
    size_t len;
    assert_int_equal(vd_record_encode(&r, buf, 256, &len), 0);
    return len;
}

static void write_recs(const struct fx *f, uint8_t (*bufs)[256], const size_t *lens, uint32_t n)
{
    struct vd_dmsg_blob blobs[8];
    for (uint32_t i = 0; i < n; i++)
        blobs[i] = (struct vd_dmsg_blob){bufs[i], (uint32_t)lens[i]};
    struct vd_dmsg_req q = req(f, VD_DMSG_WRITE);
    q.recs = blobs;
    q.n_recs = n;
    struct vd_buf raw;
    struct vd_dmsg_reply rp;
    serve(f, &q, &raw, &rp);
    assert_int_equal(rp.status, VD_DMSG_OK);
    assert_int_equal(rp.n_items, n);
    for (uint32_t i = 0; i < n; i++)
        assert_int_equal(rp.results[i], VD_DMSG_HELD);
    vd_dmsg_reply_free(&rp);
    vd_buf_release(&raw);
}

static void test_write_then_read(void **state)
{
    struct fx *f = *state;
    uint8_t bufs[3][256];
    size_t lens[3];
    for (int i = 0; i < 3; i++)
        lens[i] = rec_of(f, &f->mine[i], 100 + (uint64_t)i, (float)i, false, bufs[i]);
    write_recs(f, bufs, lens, 3);
    /* an older version of mine[0] is held too (the newer stays), a tombstone of mine[1] wins */
    uint8_t more[2][256];
    size_t ml[2] = {rec_of(f, &f->mine[0], 50, 9, false, more[0]),
                    rec_of(f, &f->mine[1], 200, 0, true, more[1])};
    write_recs(f, more, ml, 2);

    struct vd_pid ids[4] = {f->mine[0], f->mine[1], f->mine[2], f->mine[3]};
    struct vd_dmsg_req q = req(f, VD_DMSG_READ);
    q.ids = ids;
    q.n_ids = 4;
    q.with_record = true;
    struct vd_buf raw;
    struct vd_dmsg_reply rp;
    serve(f, &q, &raw, &rp);
    assert_int_equal(rp.status, VD_DMSG_OK);
    assert_int_equal(rp.n_items, 4);
    /* mine[0]: version 100 and exactly the bytes written */
    assert_true(rp.reads[0].copy.present && !rp.reads[0].copy.tombstone);
    assert_true(rp.reads[0].copy.version.hlc == 100 && rp.reads[0].copy.version.node == 2);
    assert_int_equal(rp.reads[0].rec.len, lens[0]);
    assert_memory_equal(rp.reads[0].rec.p, bufs[0], lens[0]);
    /* mine[1]: the tombstone, and its record (what read repair sends to a replica that missed
     * the delete) */
    assert_true(rp.reads[1].copy.present && rp.reads[1].copy.tombstone);
    assert_true(rp.reads[1].copy.version.hlc == 200);
    assert_int_equal(rp.reads[1].rec.len, ml[1]);
    assert_memory_equal(rp.reads[1].rec.p, more[1], ml[1]);
    assert_memory_equal(rp.reads[2].rec.p, bufs[2], lens[2]);
    /* mine[3]: never written */
    assert_false(rp.reads[3].copy.present);
    vd_dmsg_reply_free(&rp);
    vd_buf_release(&raw);

    /* versions only */
    q.with_record = false;
    serve(f, &q, &raw, &rp);
    assert_true(rp.reads[0].copy.present);
    assert_int_equal(rp.reads[0].rec.len, 0);
    vd_dmsg_reply_free(&rp);
    vd_buf_release(&raw);
}

/* Phase 1 lists and phase 2 answers agree: a listed score is bit for bit the score a verify
 * gives the same version, a tombstone is never listed and verifies as one, a filter drops a
 * point in both, and a scroll page is in id order from its start. */
static void test_search_scroll_verify(void **state)
{
    struct fx *f = *state;
    uint8_t bufs[8][256];
    size_t lens[8];
    for (int i = 0; i < 8; i++)
        lens[i] = rec_of(f, &f->mine[i], 100 + (uint64_t)i, (float)i * 0.5f - 1.0f, false, bufs[i]);
    write_recs(f, bufs, lens, 8);
    uint8_t tomb[1][256];
    size_t tl[1] = {rec_of(f, &f->mine[3], 300, 0, true, tomb[0])};
    write_recs(f, tomb, tl, 1);

    float qv[3] = {0.25f, -0.5f, 1.0f};
    struct vd_dmsg_req q = req(f, VD_DMSG_SEARCH);
    q.k = 10;
    q.query = qv;
    q.dim = 3;
    struct vd_buf raw;
    struct vd_dmsg_reply rp;
    serve(f, &q, &raw, &rp);
    assert_int_equal(rp.status, VD_DMSG_OK);
    assert_int_equal(rp.n_items, 7); /* eight written, one deleted */
    assert_true(rp.complete);
    struct vd_coord_cand listed[7];
    memcpy(listed, rp.cands, sizeof listed);
    for (uint32_t i = 0; i < 7; i++) {
        assert_false(vd_pid_eq(&listed[i].id, &f->mine[3]));
        if (i)
            assert_true(listed[i - 1].score >= listed[i].score);
    }
    vd_dmsg_reply_free(&rp);
    vd_buf_release(&raw);
    /* two fewer than held: not complete */
    q.k = 5;
    serve(f, &q, &raw, &rp);
    assert_int_equal(rp.n_items, 5);
    assert_false(rp.complete);
    vd_dmsg_reply_free(&rp);
    vd_buf_release(&raw);

    /* verify every point written: the same scores, the tombstone as such */
    struct vd_dmsg_req v = req(f, VD_DMSG_VERIFY);
    v.ids = f->mine;
    v.n_ids = 8;
    v.query = qv;
    v.dim = 3;
    serve(f, &v, &raw, &rp);
    assert_int_equal(rp.status, VD_DMSG_OK);
    assert_int_equal(rp.n_items, 8);
    for (uint32_t i = 0; i < 8; i++) {
        const struct vd_dmsg_verify_item *it = &rp.verifies[i];
        assert_true(it->copy.present);
        if (i == 3) {
            assert_true(it->copy.tombstone);
            assert_false(it->match);
            assert_true(it->copy.version.hlc == 300);
            continue;
        }
        assert_true(it->match && !it->copy.tombstone);
        assert_true(it->copy.version.hlc == 100 + i);
        bool found = false;
        for (uint32_t j = 0; j < 7; j++)
            if (vd_pid_eq(&listed[j].id, &f->mine[i])) {
                assert_memory_equal(&listed[j].score, &it->score, sizeof(float));
                found = true;
            }
        assert_true(found);
    }
    vd_dmsg_reply_free(&rp);
    vd_buf_release(&raw);

    /* a filter on the payload ({"x": i * 0.5 - 1 truncated}): x == 0 for mine[1], [2] and [3]
     * only, and mine[3] is deleted */
    static const char *flt = "{\"must\":[{\"key\":\"x\",\"match\":{\"value\":0}}]}";
    v.filter = flt;
    v.filter_len = (uint32_t)strlen(flt);
    serve(f, &v, &raw, &rp);
    for (uint32_t i = 0; i < 8; i++)
        assert_int_equal(rp.verifies[i].match, i == 1 || i == 2);
    vd_dmsg_reply_free(&rp);
    vd_buf_release(&raw);
    q.filter = flt;
    q.filter_len = (uint32_t)strlen(flt);
    q.k = 10;
    serve(f, &q, &raw, &rp);
    assert_int_equal(rp.n_items, 2);
    vd_dmsg_reply_free(&rp);
    vd_buf_release(&raw);

    /* a scroll page: ids in order from its start, the tombstone left out */
    struct vd_dmsg_req sc = req(f, VD_DMSG_SCROLL);
    sc.k = 3;
    sc.has_from = true;
    sc.from = f->mine[2];
    serve(f, &sc, &raw, &rp);
    assert_int_equal(rp.status, VD_DMSG_OK);
    assert_int_equal(rp.n_items, 3);
    assert_false(rp.complete);
    assert_true(vd_pid_eq(&rp.cands[0].id, &f->mine[2]));
    assert_true(vd_pid_eq(&rp.cands[1].id, &f->mine[4])); /* mine[3] is deleted */
    assert_true(vd_pid_eq(&rp.cands[2].id, &f->mine[5]));
    assert_true(rp.cands[0].score == 0 && rp.cands[0].version.hlc == 102);
    vd_dmsg_reply_free(&rp);
    vd_buf_release(&raw);
    sc.k = 10;
    serve(f, &sc, &raw, &rp);
    assert_int_equal(rp.n_items, 5);
    assert_true(rp.complete);
    vd_dmsg_reply_free(&rp);
    vd_buf_release(&raw);
}

/* An int8-quantized collection walks its graph on the codes and rescores the candidates with
 * the float vectors (the default): the scores listed are then bit for bit the ones a verify
 * gives, so the coordinator compares like with like. */
static void test_quantized_scores_agree(void **state)
{
    struct fx *f = *state;
    struct vd_coll_schema s = {.dim = 8,
                               .metric = VD_METRIC_COSINE,
                               .hnsw_m = 16,
                               .hnsw_ef_construct = 64,
                               .full_scan_threshold_kb = 0,
                               .replication_factor = 2,
                               .write_consistency_factor = 2,
                               .quant_enabled = true,
                               .created_hlc = 1};
    strcpy(s.name, "q");
    struct vd_buf b = {0};
    vd_meta_cmd_create_collection(&s, &b);
    apply_cmd(f->m, &b);
    s = *vd_meta_collection(f->m, "q");
    struct vd_err e;
    assert_int_equal(vd_db_coll_create(f->db, &s, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    /* 1500 points this node holds: enough to train the codes */
    enum { NQ = 1500 };
    static uint8_t recs[NQ][128];
    static struct vd_dmsg_blob blobs[NQ];
    uint64_t rng = 12345;
    uint32_t n = 0;
    for (uint64_t i = 1; n < NQ; i++) {
        struct vd_pid id = {.type = VD_PID_NUM, .u.num = i};
        uint8_t key[VD_PID_KEY_MAX];
        struct vd_placement pl;
        assert_int_equal(vd_meta_place_point(f->m, "q", key, vd_pid_encode(&id, key), &pl), 0);
        if (pl.natural[0] != SELF && pl.natural[1] != SELF)
            continue;
        float v[8];
        for (int d = 0; d < 8; d++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            v[d] = (float)(rng >> 40) / (float)(1u << 24) - 0.5f;
        }
        vd_vec_normalize(v, 8);
        struct vd_rvec rv = {.kind = VD_RVEC_DENSE, .n = 8, .values = v};
        struct vd_record r = {.id = id,
                              .incarnation = s.incarnation,
                              .version = {10, 2},
                              .n_vectors = 1,
                              .vectors = &rv};
        size_t len;
        assert_int_equal(vd_record_encode(&r, recs[n], sizeof recs[n], &len), 0);
        blobs[n] = (struct vd_dmsg_blob){recs[n], (uint32_t)len};
        n++;
    }
    struct vd_dmsg_req q = req(f, VD_DMSG_WRITE);
    strcpy(q.coll, "q");
    q.incarnation = s.incarnation;
    q.recs = blobs;
    q.n_recs = NQ;
    struct vd_buf raw;
    struct vd_dmsg_reply rp;
    serve(f, &q, &raw, &rp);
    assert_int_equal(rp.status, VD_DMSG_OK);
    vd_dmsg_reply_free(&rp);
    vd_buf_release(&raw);
    struct vd_coll *c;
    assert_int_equal(vd_db_coll_get(f->db, "q", &c), 0);
    for (int tries = 0; tries < 3000; tries++) { /* every point linked: the graph is walked */
        struct vd_coll_stats st;
        vd_db_coll_stats(c, &st);
        if (st.pending == 0)
            break;
        usleep(10000);
    }
    struct vd_coll_stats st;
    vd_db_coll_stats(c, &st);
    vd_db_coll_put(c);
    assert_int_equal(st.pending, 0);

    float qv[8] = {0.3f, -0.2f, 0.9f, 0.1f, -0.4f, 0.25f, 0.5f, -0.1f}; /* not normalised */
    q = req(f, VD_DMSG_SEARCH);
    strcpy(q.coll, "q");
    q.incarnation = s.incarnation;
    q.k = 20;
    q.query = qv;
    q.dim = 8;
    serve(f, &q, &raw, &rp);
    assert_int_equal(rp.status, VD_DMSG_OK);
    assert_int_equal(rp.n_items, 20);
    struct vd_coord_cand listed[20];
    memcpy(listed, rp.cands, sizeof listed);
    vd_dmsg_reply_free(&rp);
    vd_buf_release(&raw);
    struct vd_pid vids[20];
    for (int i = 0; i < 20; i++)
        vids[i] = listed[i].id;
    struct vd_dmsg_req v = req(f, VD_DMSG_VERIFY);
    strcpy(v.coll, "q");
    v.incarnation = s.incarnation;
    v.ids = vids;
    v.n_ids = 20;
    v.query = qv;
    v.dim = 8;
    serve(f, &v, &raw, &rp);
    assert_int_equal(rp.status, VD_DMSG_OK);
    for (int i = 0; i < 20; i++) {
        assert_true(rp.verifies[i].match);
        if (memcmp(&rp.verifies[i].score, &listed[i].score, sizeof(float)))
            fail_msg("point %d: listed %.9g, verified %.9g", i, (double)listed[i].score,
                     (double)rp.verifies[i].score);
    }
    vd_dmsg_reply_free(&rp);
    vd_buf_release(&raw);
    /* the codes are in use: without rescoring, the listed scores are their estimates, which
     * differ from the exact ones (the coordinator then trusts whichever replica listed) */
    q.quant_no_rescore = true;
    serve(f, &q, &raw, &rp);
    assert_int_equal(rp.n_items, 20);
    int differ = 0;
    for (uint32_t i = 0; i < 20; i++)
        for (int j = 0; j < 20; j++)
            if (vd_pid_eq(&rp.cands[i].id, &listed[j].id))
                differ += rp.cands[i].score != listed[j].score;
    assert_true(differ > 0);
    vd_dmsg_reply_free(&rp);
    vd_buf_release(&raw);
}

static void expect_status(const struct fx *f, const struct vd_dmsg_req *q, uint8_t status,
                          const char *msg)
{
    struct vd_buf raw;
    struct vd_dmsg_reply rp;
    serve(f, q, &raw, &rp);
    assert_int_equal(rp.status, status);
    if (msg) {
        char text[300];
        snprintf(text, sizeof text, "%.*s", (int)rp.msg_len, rp.msg);
        if (!strstr(text, msg))
            fail_msg("reply '%s' lacks '%s'", text, msg);
    }
    vd_dmsg_reply_free(&rp);
    vd_buf_release(&raw);
}

static void test_refusals_touch_nothing(void **state)
{
    struct fx *f = *state;
    uint8_t buf[1][256];
    size_t len[1] = {rec_of(f, &f->mine[4], 100, 1, false, buf[0])};
    struct vd_dmsg_blob blob = {buf[0], (uint32_t)len[0]};
    struct vd_dmsg_req q = req(f, VD_DMSG_WRITE);
    q.recs = &blob;
    q.n_recs = 1;

    q.ring_version++;
    expect_status(f, &q, VD_DMSG_WRONG_RING, NULL);
    q.ring_version = vd_meta_ring_version(f->m);
    q.incarnation = f->s.incarnation + 1000; /* made by an index not applied here */
    expect_status(f, &q, VD_DMSG_NOT_YET, NULL);
    q.incarnation = f->s.incarnation - 1; /* an earlier, deleted one */
    expect_status(f, &q, VD_DMSG_GONE, NULL);
    q.incarnation = f->s.incarnation;
    strcpy(q.coll, "nope");
    expect_status(f, &q, VD_DMSG_GONE, NULL);
    strcpy(q.coll, "c");

    /* a point of another replica set, in a write and in a read */
    uint8_t ob[256];
    struct vd_dmsg_blob oblob = {ob, (uint32_t)rec_of(f, &f->other, 100, 1, false, ob)};
    q.recs = &oblob;
    expect_status(f, &q, VD_DMSG_ERROR, "is not a replica of point");
    struct vd_dmsg_req r = req(f, VD_DMSG_READ);
    r.ids = &f->other;
    r.n_ids = 1;
    expect_status(f, &r, VD_DMSG_ERROR, "is not a replica of point");

    /* a record of another incarnation inside a request for this one */
    struct vd_coll_schema old = f->s;
    f->s.incarnation = 77;
    uint8_t xb[256];
    struct vd_dmsg_blob xblob = {xb, (uint32_t)rec_of(f, &f->mine[4], 100, 1, false, xb)};
    f->s = old;
    q.recs = &xblob;
    expect_status(f, &q, VD_DMSG_ERROR, "is not the request's");

    /* nothing of the above was written */
    r.ids = &f->mine[4];
    struct vd_buf raw;
    struct vd_dmsg_reply rp;
    serve(f, &r, &raw, &rp);
    assert_false(rp.reads[0].copy.present);
    vd_dmsg_reply_free(&rp);
    vd_buf_release(&raw);

    /* the metadata has a collection the database has not created yet */
    struct vd_coll_schema s2 = f->s;
    strcpy(s2.name, "later");
    s2.incarnation = 0;
    struct vd_buf b = {0};
    vd_meta_cmd_create_collection(&s2, &b);
    assert_int_equal(
        vd_meta_apply(f->m, vd_meta_applied(f->m) + 1, (const uint8_t *)b.data, b.len, NULL), 0);
    vd_buf_release(&b);
    r = req(f, VD_DMSG_READ);
    strcpy(r.coll, "later");
    r.incarnation = vd_meta_collection(f->m, "later")->incarnation;
    struct vd_pid any = {.type = VD_PID_NUM, .u.num = 1};
    r.ids = &any;
    r.n_ids = 1;
    /* (the id may not be this node's on the new collection: find one that is) */
    for (uint64_t i = 1; i < 1000; i++) {
        any.u.num = i;
        uint8_t key[VD_PID_KEY_MAX];
        struct vd_placement pl;
        assert_int_equal(vd_meta_place_point(f->m, "later", key, vd_pid_encode(&any, key), &pl), 0);
        if (pl.natural[0] == SELF || pl.natural[1] == SELF)
            break;
    }
    expect_status(f, &r, VD_DMSG_NOT_YET, NULL);

    /* a search whose query does not have the collection's size, or whose filter does not
     * parse, is refused naming it */
    float qv[3] = {1, 0, 0};
    struct vd_dmsg_req s = req(f, VD_DMSG_SEARCH);
    s.k = 3;
    s.query = qv;
    s.dim = 2;
    expect_status(f, &s, VD_DMSG_ERROR, "the query has 2 values");
    s.dim = 3;
    s.filter = "{\"must\": 5}";
    s.filter_len = (uint32_t)strlen(s.filter);
    expect_status(f, &s, VD_DMSG_ERROR, "filter");

    /* a malformed request is refused with nothing written to out */
    vd_buf_init(&raw);
    uint8_t junk[5] = {1, 2, 3, 4, 5};
    assert_int_equal(vd__replica_serve(f->db, f->m, SELF, junk, sizeof junk, &raw), VD_ECORRUPT);
    assert_int_equal(raw.len, 0);
    vd_buf_release(&raw);
}

/* ---- TREE and LEAF: what a repair compares ---- */

static bool self_owns(const struct fx *f, uint64_t end)
{
    struct vd_placement pl;
    vd_meta_place(f->m, end, f->s.replication_factor, &pl);
    for (size_t i = 0; i < pl.n_natural; i++)
        if (pl.natural[i] == SELF)
            return true;
    return false;
}

static uint64_t hash_of(const struct vd_pid *id)
{
    uint8_t key[VD_PID_KEY_MAX];
    size_t kl = vd_pid_encode(id, key);
    return vd_place_hash("c", key, kl);
}

static bool on_arc(uint64_t h, uint64_t s, uint64_t e)
{
    return s == e || h - s - 1 < e - s;
}

/* Every arc this node is a replica of summarises exactly the records written to it, byte for
 * byte (the tree a peer holding the same records builds), and lists their versions and
 * tombstones; an arc it is not a replica of is refused. */
static void test_tree_and_leaf(void **state)
{
    struct fx *f = *state;
    uint8_t bufs[8][256];
    size_t lens[8];
    for (int i = 0; i < 8; i++)
        lens[i] = rec_of(f, &f->mine[i], 100 + (uint64_t)i, (float)i, i == 5, bufs[i]);
    write_recs(f, bufs, lens, 8);

    size_t n_arcs = vd_meta_ring_size(f->m), listed = 0, foreign = 0;
    uint64_t(*arcs)[2] = calloc(n_arcs, sizeof *arcs);
    n_arcs = vd_meta_arcs(f->m, arcs);
    static struct vd_merkle want, got;
    for (size_t a = 0; a < n_arcs; a++) {
        struct vd_dmsg_req q = req(f, VD_DMSG_TREE);
        q.range[0] = arcs[a][0];
        q.range[1] = arcs[a][1];
        q.depth = 2;
        q.with_leaves = true;
        if (!self_owns(f, arcs[a][1])) {
            if (foreign++ == 0)
                expect_status(f, &q, VD_DMSG_ERROR, "is not a replica of the arc");
            continue;
        }
        /* the tree expected: the records written on this arc, in hash order */
        assert_int_equal(vd_merkle_init(&want, arcs[a][0], arcs[a][1], 2), 0);
        int order[8], n = 0;
        for (int i = 0; i < 8; i++)
            if (on_arc(hash_of(&f->mine[i]), arcs[a][0], arcs[a][1]))
                order[n++] = i;
        for (int x = 0; x < n; x++) /* by offset on the arc: few, so a plain selection sort */
            for (int y = x + 1; y < n; y++)
                if (hash_of(&f->mine[order[y]]) - arcs[a][0] <
                    hash_of(&f->mine[order[x]]) - arcs[a][0]) {
                    int t = order[x];
                    order[x] = order[y];
                    order[y] = t;
                }
        for (int x = 0; x < n; x++) {
            int i = order[x];
            struct vd_version v = {100 + (uint64_t)i, 2};
            assert_int_equal(vd_merkle_add(&want, hash_of(&f->mine[i]), v,
                                           vd_hash64(bufs[i], lens[i], 0)),
                             0);
        }
        vd_merkle_finish(&want);
        struct vd_buf raw;
        struct vd_dmsg_reply rp;
        serve(f, &q, &raw, &rp);
        assert_int_equal(rp.status, VD_DMSG_OK);
        assert_int_equal(rp.tree_count, n);
        assert_true(rp.tree_root == vd_merkle_root(&want));
        assert_int_equal(rp.n_leaves, 256);
        assert_int_equal(vd_merkle_init(&got, arcs[a][0], arcs[a][1], 2), 0);
        assert_int_equal(vd_merkle_set_leaves(&got, rp.leaves, rp.n_leaves), 0);
        assert_true(vd_merkle_root(&got) == rp.tree_root);
        vd_dmsg_reply_free(&rp);
        vd_buf_release(&raw);
        if (n == 0)
            continue;
        /* the listing of the arc: each record's version and tombstone */
        q = req(f, VD_DMSG_LEAF);
        q.range[0] = arcs[a][0];
        q.range[1] = arcs[a][1];
        q.k = 100;
        serve(f, &q, &raw, &rp);
        assert_int_equal(rp.status, VD_DMSG_OK);
        assert_true(rp.complete);
        assert_int_equal(rp.n_items, n);
        for (int x = 0; x < n; x++) {
            int i = order[x];
            assert_int_equal(vd_pid_cmp(&rp.listing[x].id, &f->mine[i]), 0);
            assert_true(rp.listing[x].copy.present);
            assert_int_equal(rp.listing[x].copy.tombstone, i == 5);
            assert_true(rp.listing[x].copy.version.hlc == 100 + (uint64_t)i);
        }
        listed += n;
        vd_dmsg_reply_free(&rp);
        vd_buf_release(&raw);
        if (n > 1) { /* a listing cut at k says so */
            q.k = 1;
            serve(f, &q, &raw, &rp);
            assert_int_equal(rp.n_items, 1);
            assert_false(rp.complete);
            vd_dmsg_reply_free(&rp);
            vd_buf_release(&raw);
        }
    }
    assert_int_equal(listed, 8);
    assert_true(foreign > 0);
    free(arcs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_write_then_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusals_touch_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_search_scroll_verify, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quantized_scores_agree, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tree_and_leaf, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
