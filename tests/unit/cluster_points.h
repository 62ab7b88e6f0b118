/* Points in the in-process cluster tests: whole records written through a node's coordinator
 * into collection "pts", and what each node's database and hints table hold. Header only, for
 * tests; include it after unit/cluster_fixture.h. */
#ifndef VD_TEST_CLUSTER_POINTS_H
#define VD_TEST_CLUSTER_POINTS_H

#include "vectord/record.h"

#ifndef NPTS
#define NPTS 24
#endif

struct rec {
    uint8_t b[128];
    size_t len;
};

static inline void make_rec(struct rec *r, uint64_t id, uint64_t node, float x, bool tomb,
                            uint64_t incarnation)
{
    float v[4] = {x, x + 1, x + 2, x + 3};
    struct vd_rvec rv = {.kind = VD_RVEC_DENSE, .n = 4, .values = v};
    char pl[32];
    int pn = snprintf(pl, sizeof pl, "{\"x\":%d}", (int)x);
    struct vd_record rec = {.id = {.type = VD_PID_NUM, .u.num = id},
                            .incarnation = incarnation,
                            .version = {vd_hlc_now(), node},
                            .tombstone = tomb,
                            .n_vectors = tomb ? 0 : 1,
                            .vectors = tomb ? NULL : &rv,
                            .payload = tomb ? NULL : pl,
                            .payload_len = tomb ? 0 : (size_t)pn};
    assert_int_equal(vd_record_encode(&rec, r->b, sizeof r->b, &r->len), 0);
}

static inline uint64_t incarnation_of(int i, const char *coll)
{
    struct vd_coll *c;
    assert_int_equal(vd_db_coll_get(nodes[i].db, coll, &c), 0);
    uint64_t inc = vd_db_coll_schema(c)->incarnation;
    vd_db_coll_put(c);
    return inc;
}

/* Writes recs[0..n) through node i at w; returns the outcome, its message in msg. */
static inline int write_through(int i, const struct rec *recs, size_t n, unsigned w, uint64_t inc,
                                char *msg, size_t cap)
{
    const uint8_t *p[NPTS];
    size_t lens[NPTS];
    for (size_t k = 0; k < n; k++) {
        p[k] = recs[k].b;
        lens[k] = recs[k].len;
    }
    struct vd_err e;
    assert_int_equal(vd_cluster_write(nodes[i].c, "pts", inc, p, lens, n, w, 2000, on_done, &W, &e),
                     0);
    int rc = wait_for(&W);
    if (msg)
        snprintf(msg, cap, "%s", W.msg);
    return rc;
}

/* How many of ids[0..n) node i's database holds at exactly the versions of recs. */
static inline size_t held_at(int i, const struct rec *recs, size_t n)
{
    struct vd_coll *c;
    if (vd_db_coll_get(nodes[i].db, "pts", &c))
        return 0;
    size_t got = 0;
    for (size_t k = 0; k < n; k++) {
        struct vd_rvec vecs[VD_RECORD_MAX_VECTORS];
        struct vd_record want;
        assert_int_equal(vd_record_decode(recs[k].b, recs[k].len, &want, vecs), 0);
        struct vd_db_record *r = NULL;
        size_t nr = 0;
        struct vd_err e;
        assert_int_equal(vd_db_retrieve(c, &want.id, 1, false, true, &r, &nr, &e), 0);
        got += nr == 1 && vd_version_cmp(r[0].version, want.version) == 0;
        vd_db_records_free(r, nr);
    }
    vd_db_coll_put(c);
    return got;
}

struct hint_count {
    uint64_t target, count;
};

static inline int count_hints(uint64_t target, uint64_t count, uint64_t bytes, void *ctx)
{
    (void)bytes;
    struct hint_count *h = ctx;
    if (target == h->target)
        h->count = count;
    return 0;
}

/* How many hints node i keeps for target. */
static inline uint64_t hints_for(int i, uint64_t target)
{
    struct hint_count h = {target, 0};
    assert_int_equal(vd_db_hint_totals(nodes[i].db, count_hints, &h), 0);
    return h.count;
}

/* Starts the N nodes (the others joining node 0), waits until all are voters and up, creates
 * collection "pts" (replication factor rf) through node 0 and waits until every node holds it;
 * returns its incarnation. */
static inline uint64_t start_with_pts(uint32_t rf)
{
    char join[32];
    snprintf(join, sizeof join, "127.0.0.1:%u", nodes[0].port);
    start(0, NULL);
    for (int i = 1; i < N; i++)
        start(i, join);
    for (int i = 0; i < N; i++)
        POLL(voters_up(i) == N && leader_of(i) != 0, 15000, "every node a voter and up");
    assert_int_equal(create_coll(0, "pts", VD_METRIC_DOT, rf), 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(sync_node(i), 0);
        POLL(has_coll(i, "pts"), 5000, "the collection on every node");
    }
    return incarnation_of(0, "pts");
}

#endif
