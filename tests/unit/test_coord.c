/*
 * Unit tests of the coordinator's decision core: placement, W/R accounting, merge by version,
 * read repair, hints and the two-phase search, each driven reply by reply. The seeded fault
 * simulator lives in tests/sim (sim_coord).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vectord/coord.h"
#include "unit/purity.h"

/* ---- purity: convention 8 --------------------------------------------------------------- */

static void test_core_is_pure(void **state)
{
    /* The simulator replays a run from its seed only if time and randomness come in through
     * the API: the core reaches for no I/O, clock or thread (ring.c, coord.c, coord.h). */
    purity_check_module(__FILE__, "coord", 3);
}

/* ---- the ring ---------------------------------------------------------------------------- */

static uint64_t rng = 0x1234567;
static uint64_t rnd(void)
{
    uint64_t z = (rng += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Placement agrees with ownership by (previous token, token] (vd_ring_contains, tested in
 * test_core) for random rings, at every token, next to it, and at 0 and UINT64_MAX; the replicas
 * are distinct and as many as exist. */
static void test_ring_placement_property(void **state)
{
    for (int round = 0; round < 300; round++) {
        size_t n_nodes = 1 + rnd() % 6, per = 1 + rnd() % 8, n = n_nodes * per;
        struct vd_coord_token toks[64];
        for (size_t i = 0; i < n; i++) {
            toks[i].node = 1 + i % n_nodes;
            /* Now and then a token at the edges of the hash space. */
            uint64_t x = rnd();
            toks[i].token = x % 17 == 0 ? UINT64_MAX : x % 19 == 0 ? 0 : x;
        }
        vd_coord_ring_sort(toks, n);
        struct vd_coord_ring ring = {.version = 1, .tokens = toks, .n_tokens = n};
        uint64_t probes[64 * 3 + 2];
        size_t np = 0;
        for (size_t i = 0; i < n; i++) {
            probes[np++] = toks[i].token;
            probes[np++] = toks[i].token + 1;
            probes[np++] = rnd();
        }
        probes[np++] = 0;
        probes[np++] = UINT64_MAX;
        for (size_t p = 0; p < np; p++) {
            uint64_t h = probes[p], out[VD_COORD_MAX_RF];
            unsigned rf = 1 + (unsigned)(rnd() % 4);
            size_t got = vd_coord_ring_replicas(&ring, h, rf, out);
            assert_int_equal(got, rf < n_nodes ? rf : n_nodes);
            for (size_t a = 0; a < got; a++)
                for (size_t b = a + 1; b < got; b++)
                    assert_true(out[a] != out[b]);
            /* The first replica owns the arc holding h; among equal tokens, the first one. */
            size_t owner = SIZE_MAX;
            for (size_t i = 0; i < n && owner == SIZE_MAX; i++) {
                uint64_t start = toks[(i + n - 1) % n].token;
                if (n > 1 && start == toks[i].token)
                    continue;
                if (vd_ring_contains(start, toks[i].token, h))
                    owner = i;
            }
            if (owner == SIZE_MAX) /* every token at one position: the first owns all */
                owner = 0;
            assert_int_equal(out[0], toks[owner].node);
        }
    }
}

/* ---- a small harness ---------------------------------------------------------------------- */

/* Three nodes, one token each: node 1 at 100, node 2 at 200, node 3 at 300. A hash of 150 has
 * replicas 2, 3, 1. */
static const struct vd_coord_token three[] = {{100, 1}, {200, 2}, {300, 3}};
static const struct vd_coord_ring ring3 = {.version = 5, .tokens = three, .n_tokens = 3};

struct acts {
    struct vd_coord_action a[256];
    size_t n;
};

static void drain(struct vd_coord_op *op, struct acts *out)
{
    out->n = 0;
    const struct vd_coord_action *a;
    size_t n;
    while (vd_coord_ready(op, &a, &n)) {
        for (size_t i = 0; i < n && out->n < 256; i++)
            out->a[out->n++] = a[i];
        vd_coord_advance(op);
    }
}

static const struct vd_coord_action *find(const struct acts *x, uint8_t type, uint64_t node)
{
    for (size_t i = 0; i < x->n; i++)
        if (x->a[i].type == type && (node == 0 || x->a[i].node == node))
            return &x->a[i];
    return NULL;
}

static size_t count(const struct acts *x, uint8_t type)
{
    size_t c = 0;
    for (size_t i = 0; i < x->n; i++)
        c += x->a[i].type == type;
    return c;
}

static struct vd_coord_params params(unsigned need)
{
    return (struct vd_coord_params){
        .rf = 3, .need = need, .now_ms = 1000, .timeout_ms = 2000, .spec_ms = 20, .retry_ms = 10};
}

static struct vd_coord_reply ack_of(const struct vd_coord_action *a, uint8_t type, uint8_t status)
{
    return (struct vd_coord_reply){
        .type = type, .status = status, .from = a->node, .attempt = a->attempt};
}

static void step_ok(struct vd_coord_op *op, const struct vd_coord_reply *r)
{
    assert_int_equal(vd_coord_step(op, r), 0);
}

/* A write of hash 150 (replicas 2, 3, 1) at W = need, its first actions drained into x. */
static struct vd_coord_op *write_150(unsigned need, struct acts *x)
{
    struct vd_coord_params p = params(need);
    struct vd_coord_op *op;
    assert_int_equal(vd_coord_write_new(&p, &ring3, 150, (struct vd_version){77, 1}, &op), 0);
    drain(op, x);
    return op;
}

/* A read of hash 150 at R = need, preferring node prefer (0: none), first actions in x. */
static struct vd_coord_op *read_150(unsigned need, uint64_t prefer, struct acts *x)
{
    struct vd_coord_params p = params(need);
    p.prefer = prefer;
    struct vd_coord_op *op;
    assert_int_equal(vd_coord_read_new(&p, &ring3, 150, &op), 0);
    drain(op, x);
    return op;
}

/* A search of ring3 at R = 2 for offset + limit, its first actions drained into x. */
static struct vd_coord_op *search_ring3(uint32_t offset, uint32_t limit, struct acts *x)
{
    struct vd_coord_params p = params(2);
    struct vd_coord_op *op;
    assert_int_equal(vd_coord_search_new(&p, &ring3, offset, limit, &op), 0);
    drain(op, x);
    return op;
}

/* The operation answered the client VD_EUNAVAIL with exactly msg. */
static void assert_unavailable(const struct vd_coord_op *op, const char *msg)
{
    struct vd_err e;
    assert_int_equal(vd_coord_result(op, &e), VD_EUNAVAIL);
    assert_string_equal(e.msg, msg);
}

/* A replica answers phase 1 of a search request a with the list l[0..n). */
static void list_reply(struct vd_coord_op *op, const struct vd_coord_action *a,
                       struct vd_coord_cand *l, size_t n, bool complete)
{
    struct vd_coord_reply r = ack_of(a, VD_COORD_R_SEARCH, VD_COORD_OK);
    r.cands = l;
    r.n_cands = n;
    r.complete = complete;
    step_ok(op, &r);
}

/* A replica answers the verify request a: it holds copy c of the point a names. */
static void verify_reply(struct vd_coord_op *op, const struct vd_coord_action *a,
                         struct vd_coord_copy c)
{
    struct vd_coord_reply r = ack_of(a, VD_COORD_R_VERIFY, VD_COORD_OK);
    r.id = a->id;
    r.copy = c;
    step_ok(op, &r);
}

/* ---- writes ------------------------------------------------------------------------------ */

/* Arcs: equal tokens make one arc owned like its end, one distinct token is the whole ring
 * (t, t], and no tokens make no arcs. */
static void test_ring_arcs(void **state)
{
    (void)state;
    uint64_t out[4][2];
    struct vd_coord_token t[4] = {{10, 1}, {10, 2}, {20, 3}, {UINT64_MAX, 1}};
    struct vd_coord_ring r = {.version = 5, .tokens = t, .n_tokens = 4};
    assert_int_equal(vd_coord_ring_arcs(&r, out), 3);
    assert_true(out[0][0] == UINT64_MAX && out[0][1] == 10);
    assert_true(out[1][0] == 10 && out[1][1] == 20);
    assert_true(out[2][0] == 20 && out[2][1] == UINT64_MAX);
    /* every probe on exactly one arc */
    uint64_t probes[] = {0, 9, 10, 11, 20, 21, UINT64_MAX - 1, UINT64_MAX};
    for (size_t p = 0; p < sizeof probes / sizeof *probes; p++) {
        int hits = 0;
        for (size_t i = 0; i < 3; i++)
            hits += vd_ring_contains(out[i][0], out[i][1], probes[p]);
        assert_int_equal(hits, 1);
    }
    struct vd_coord_token same[2] = {{7, 1}, {7, 2}};
    r = (struct vd_coord_ring){.version = 1, .tokens = same, .n_tokens = 2};
    assert_int_equal(vd_coord_ring_arcs(&r, out), 1);
    assert_true(out[0][0] == 7 && out[0][1] == 7);
    assert_true(vd_ring_contains(7, 7, 0) && vd_ring_contains(7, 7, 7) &&
                vd_ring_contains(7, 7, UINT64_MAX));
    r.n_tokens = 0;
    assert_int_equal(vd_coord_ring_arcs(&r, out), 0);
}

static void test_write_quorum_and_hints(void **state)
{
    struct acts x;
    struct vd_coord_op *op = write_150(2, &x);
    assert_int_equal(count(&x, VD_COORD_SEND), 3);
    assert_int_equal(x.a[0].node, 2);
    assert_int_equal(x.a[0].ring_version, 5);
    struct vd_coord_action s2 = *find(&x, VD_COORD_SEND, 2), s3 = *find(&x, VD_COORD_SEND, 3);
    /* One ack, then the same ack again: a duplicate counts once. */
    struct vd_coord_reply r = ack_of(&s2, VD_COORD_R_WRITE, VD_COORD_OK);
    step_ok(op, &r);
    step_ok(op, &r);
    drain(op, &x);
    assert_null(find(&x, VD_COORD_REPLY, 0));
    assert_int_equal(vd_coord_result(op, NULL), VD_EBUSY);
    /* The second distinct replica makes W. */
    r = ack_of(&s3, VD_COORD_R_WRITE, VD_COORD_OK);
    step_ok(op, &r);
    drain(op, &x);
    assert_non_null(find(&x, VD_COORD_REPLY, 0));
    assert_int_equal(vd_coord_result(op, NULL), 0);
    assert_false(vd_coord_done(op));
    /* Node 1 never answers: at the deadline it gets a hint although W was met. */
    vd_coord_tick(op, 2999);
    drain(op, &x);
    assert_int_equal(x.n, 0);
    vd_coord_tick(op, 3000);
    drain(op, &x);
    assert_int_equal(x.n, 1);
    assert_int_equal(x.a[0].type, VD_COORD_HINT);
    assert_int_equal(x.a[0].node, 1);
    assert_true(vd_coord_done(op));
    vd_coord_op_free(op);
}

static void test_write_fails_at_deadline_with_numbers(void **state)
{
    struct acts x;
    struct vd_coord_op *op = write_150(2, &x);
    struct vd_coord_reply r = ack_of(find(&x, VD_COORD_SEND, 3), VD_COORD_R_WRITE, VD_COORD_OK);
    step_ok(op, &r);
    /* A replica whose connection closed gets its hint at once; the hint is no ack. */
    r = ack_of(find(&x, VD_COORD_SEND, 2), VD_COORD_R_WRITE, VD_COORD_CLOSED);
    step_ok(op, &r);
    drain(op, &x);
    assert_non_null(find(&x, VD_COORD_HINT, 2));
    vd_coord_hinted(op, 2);
    drain(op, &x);
    assert_null(find(&x, VD_COORD_REPLY, 0));
    assert_int_equal(vd_coord_next_deadline(op), 3000);
    vd_coord_tick(op, 3000);
    drain(op, &x);
    assert_non_null(find(&x, VD_COORD_REPLY, 0));
    assert_non_null(find(&x, VD_COORD_HINT, 1));
    assert_null(find(&x, VD_COORD_HINT, 2)); /* hinted once */
    assert_unavailable(op, "write needs 2 of 3 replicas, 1 answered within 2000 ms");
    vd_coord_op_free(op);
}

static void test_write_fails_fast_when_w_unreachable(void **state)
{
    struct acts x;
    struct vd_coord_op *op = write_150(3, &x);
    struct vd_coord_reply r =
        ack_of(find(&x, VD_COORD_SEND, 1), VD_COORD_R_WRITE, VD_COORD_REFUSED);
    step_ok(op, &r);
    drain(op, &x);
    assert_unavailable(op, "write needs 3 of 3 replicas, 0 answered and 1 refused");
    assert_non_null(find(&x, VD_COORD_HINT, 1));
    vd_coord_op_free(op);
}

static void test_write_wrong_ring(void **state)
{
    struct acts x;
    struct vd_coord_op *op = write_150(2, &x);
    struct vd_coord_action s1 = *find(&x, VD_COORD_SEND, 1), s2 = *find(&x, VD_COORD_SEND, 2);
    /* A replica ahead of us: it counts nothing, and the operation catches up. */
    struct vd_coord_reply r = ack_of(&s2, VD_COORD_R_WRITE, VD_COORD_WRONG_RING);
    r.ring_version = 9;
    step_ok(op, &r);
    r = ack_of(&s1, VD_COORD_R_WRITE, VD_COORD_OK);
    step_ok(op, &r);
    drain(op, &x);
    assert_non_null(find(&x, VD_COORD_NEED_RING, 0));
    assert_null(find(&x, VD_COORD_REPLY, 0));
    struct vd_coord_ring newer = ring3;
    newer.version = 9;
    assert_int_equal(vd_coord_reroute(op, &newer), 0);
    drain(op, &x);
    assert_int_equal(count(&x, VD_COORD_SEND), 3);
    assert_int_equal(x.a[0].ring_version, 9);
    /* An ack to the old attempt does not count for the new one. */
    r = ack_of(&s1, VD_COORD_R_WRITE, VD_COORD_OK);
    step_ok(op, &r);
    r = ack_of(find(&x, VD_COORD_SEND, 3), VD_COORD_R_WRITE, VD_COORD_OK);
    step_ok(op, &r);
    drain(op, &x);
    assert_null(find(&x, VD_COORD_REPLY, 0));
    /* A replica behind us is asked again after retry_ms. */
    struct vd_coord_action n2 = x.a[0];
    r = ack_of(&n2, VD_COORD_R_WRITE, VD_COORD_WRONG_RING);
    r.ring_version = 8;
    step_ok(op, &r);
    drain(op, &x);
    assert_int_equal(x.n, 0);
    assert_int_equal(vd_coord_next_deadline(op), 1010);
    vd_coord_tick(op, 1010);
    drain(op, &x);
    assert_int_equal(x.n, 1);
    assert_int_equal(x.a[0].node, n2.node);
    r = ack_of(&x.a[0], VD_COORD_R_WRITE, VD_COORD_OK);
    step_ok(op, &r);
    drain(op, &x);
    assert_non_null(find(&x, VD_COORD_REPLY, 0));
    assert_int_equal(vd_coord_result(op, NULL), 0);
    vd_coord_op_free(op);
}

static void test_bad_params(void **state)
{
    struct vd_coord_params p = params(4);
    struct vd_coord_op *op = (void *)1;
    assert_int_equal(vd_coord_write_new(&p, &ring3, 1, (struct vd_version){1, 1}, &op), VD_EINVAL);
    assert_null(op);
    p.need = 0;
    assert_int_equal(vd_coord_read_new(&p, &ring3, 1, &op), VD_EINVAL);
    p = params(1);
    struct vd_coord_ring empty = {.version = 1};
    assert_int_equal(vd_coord_read_new(&p, &empty, 1, &op), VD_EINVAL);
    assert_int_equal(vd_coord_search_new(&p, &ring3, 0, 0, &op), VD_EINVAL);
    /* A ring with fewer members than W: answered at once with the numbers. */
    static const struct vd_coord_token one[] = {{100, 1}};
    struct vd_coord_ring ring1 = {.version = 1, .tokens = one, .n_tokens = 1};
    p = params(2);
    assert_int_equal(vd_coord_write_new(&p, &ring1, 1, (struct vd_version){1, 1}, &op), 0);
    assert_unavailable(op, "write needs 2 of 3 replicas, the ring has 1");
    assert_true(vd_coord_ready(op, &(const struct vd_coord_action *){0}, &(size_t){0}));
    vd_coord_advance(op);
    assert_true(vd_coord_done(op));
    vd_coord_op_free(op);
}

/* ---- reads ------------------------------------------------------------------------------- */

static struct vd_coord_reply read_reply(const struct vd_coord_action *a, bool present, bool tomb,
                                        uint64_t hlc, uint64_t node)
{
    struct vd_coord_reply r = ack_of(a, VD_COORD_R_READ, VD_COORD_OK);
    r.copy = (struct vd_coord_copy){present, tomb, {hlc, node}};
    return r;
}

static void test_read_blocking_repair(void **state)
{
    struct acts x;
    struct vd_coord_op *op = read_150(2, 1, &x); /* the coordinator is replica 1: asked first */
    assert_int_equal(count(&x, VD_COORD_SEND), 2);
    assert_int_equal(x.a[0].node, 1);
    assert_int_equal(x.a[1].node, 2);
    /* Equal HLCs: the node id breaks the tie, so node 2's write is the newer. */
    struct vd_coord_reply r = read_reply(&x.a[0], true, false, 50, 1);
    step_ok(op, &r);
    r = read_reply(&x.a[1], true, false, 50, 2);
    step_ok(op, &r);
    drain(op, &x);
    struct vd_coord_copy c;
    uint64_t holder;
    vd_coord_read_newest(op, &c, &holder);
    assert_int_equal(c.version.node, 2);
    assert_int_equal(holder, 2);
    /* R = 2 >= quorum(3): the answer waits until the newest is on two replicas. */
    assert_null(find(&x, VD_COORD_REPLY, 0));
    const struct vd_coord_action *rep = find(&x, VD_COORD_REPAIR, 1);
    assert_non_null(rep);
    assert_int_equal(rep->src, 2);
    assert_int_equal(rep->version.hlc, 50); /* the same version, never a new one */
    assert_int_equal(rep->version.node, 2);
    r = ack_of(rep, VD_COORD_R_REPAIR, VD_COORD_OK);
    step_ok(op, &r);
    drain(op, &x);
    assert_non_null(find(&x, VD_COORD_REPLY, 0));
    assert_int_equal(vd_coord_result(op, NULL), 0);
    assert_true(vd_coord_done(op));
    vd_coord_op_free(op);
}

/* Nothing happens to op until time at, when it asks node, alone, speculatively (into x). */
static void assert_spec_asks(struct vd_coord_op *op, uint64_t at, uint64_t node, struct acts *x)
{
    vd_coord_tick(op, at - 1);
    drain(op, x);
    assert_int_equal(x->n, 0);
    vd_coord_tick(op, at);
    drain(op, x);
    assert_int_equal(count(x, VD_COORD_SEND), 1);
    assert_int_equal(x->a[0].node, node);
}

static void test_read_background_repair_and_tombstone(void **state)
{
    struct acts x;
    struct vd_coord_op *op = read_150(1, 0, &x);
    assert_int_equal(count(&x, VD_COORD_SEND), 1);
    /* Silent for the speculative delay: one more replica is asked. */
    assert_spec_asks(op, 1020, 3, &x);
    struct vd_coord_action s3 = x.a[0];
    struct vd_coord_reply r = read_reply(&s3, true, true, 90, 3);
    step_ok(op, &r);
    drain(op, &x);
    /* R = 1 < quorum: answered at once; the newest is a tombstone, so "not found". */
    assert_non_null(find(&x, VD_COORD_REPLY, 0));
    struct vd_coord_copy c;
    uint64_t holder;
    vd_coord_read_newest(op, &c, &holder);
    assert_true(c.present && c.tombstone);
    assert_false(vd_coord_done(op));
    /* The first replica answers late with an older copy: repaired in the background. */
    r = read_reply(&(struct vd_coord_action){.node = 2, .attempt = 1}, true, false, 80, 1);
    step_ok(op, &r);
    drain(op, &x);
    const struct vd_coord_action *rep = find(&x, VD_COORD_REPAIR, 2);
    assert_non_null(rep);
    assert_int_equal(rep->version.hlc, 90);
    r = ack_of(rep, VD_COORD_R_REPAIR, VD_COORD_OK);
    step_ok(op, &r);
    assert_true(vd_coord_done(op));
    vd_coord_op_free(op);
}

static void test_read_timeout(void **state)
{
    struct acts x;
    struct vd_coord_op *op = read_150(3, 0, &x);
    struct vd_coord_reply r = read_reply(&x.a[0], false, false, 0, 0);
    step_ok(op, &r);
    /* A wrong-ring answer from a replica ahead counts nothing. */
    r = ack_of(&x.a[1], VD_COORD_R_READ, VD_COORD_WRONG_RING);
    r.ring_version = 6;
    step_ok(op, &r);
    drain(op, &x);
    assert_non_null(find(&x, VD_COORD_NEED_RING, 0));
    vd_coord_tick(op, 3000);
    drain(op, &x);
    assert_unavailable(op, "read needs 3 of 3 replicas, 1 answered within 2000 ms");
    vd_coord_op_free(op);
}

/* ---- searches ---------------------------------------------------------------------------- */

static struct vd_pid pid(uint64_t n)
{
    return (struct vd_pid){.type = VD_PID_NUM, .u.num = n};
}

/* A search prefers the coordinator as a read does: at R = 1 each range is asked of it alone
 * when it is a replica, so a search at consistency 1 stays local. */
static void test_search_prefers_coordinator(void **state)
{
    (void)state;
    for (uint64_t self = 1; self <= 3; self++) {
        struct vd_coord_params p = params(1);
        p.prefer = self;
        struct vd_coord_op *op;
        assert_int_equal(vd_coord_search_new(&p, &ring3, 0, 5, &op), 0);
        struct acts x;
        drain(op, &x);
        assert_int_equal(count(&x, VD_COORD_SEND), 1);
        assert_int_equal(find(&x, VD_COORD_SEND, 0)->node, self);
        vd_coord_op_free(op);
    }
}

static bool node2_down(void *ctx, uint64_t node)
{
    (void)ctx;
    return node == 2;
}

/* A replica the host holds down is asked last: a read at 2 of 3 asks the coordinator and the
 * other live replica, and a search at 1 from a node that is no replica skips it too. */
static void test_down_replicas_asked_last(void **state)
{
    (void)state;
    struct vd_coord_params p = params(2);
    p.prefer = 1;
    p.down = node2_down;
    struct vd_coord_op *op;
    assert_int_equal(vd_coord_read_new(&p, &ring3, 0, &op), 0);
    struct acts x;
    drain(op, &x);
    assert_int_equal(count(&x, VD_COORD_SEND), 2);
    for (size_t i = 0; i < x.n; i++)
        assert_true(x.a[i].type != VD_COORD_SEND || x.a[i].node != 2);
    vd_coord_op_free(op);
    p = params(1);
    p.prefer = 9;
    p.down = node2_down;
    for (uint64_t h = 50; h < 400; h += 100) {
        assert_int_equal(vd_coord_read_new(&p, &ring3, h, &op), 0);
        drain(op, &x);
        assert_int_equal(count(&x, VD_COORD_SEND), 1);
        assert_true(find(&x, VD_COORD_SEND, 0)->node != 2);
        vd_coord_op_free(op);
    }
    /* without the detector, a key whose arc node 2 owns (150: replicas 2, 3, 1) asks node 2 */
    p.down = NULL;
    assert_int_equal(vd_coord_read_new(&p, &ring3, 150, &op), 0);
    drain(op, &x);
    assert_int_equal(find(&x, VD_COORD_SEND, 0)->node, 2);
    vd_coord_op_free(op);
}

static void test_search_verifies_disagreement(void **state)
{
    /* One range (every arc has replicas {1, 2, 3}), R = 2. */
    struct acts x;
    struct vd_coord_op *op = search_ring3(0, 2, &x);
    assert_int_equal(vd_coord_search_n_ranges(op), 1);
    assert_true(vd_coord_search_in_range(op, 0, 0));
    assert_true(vd_coord_search_in_range(op, 0, UINT64_MAX));
    assert_int_equal(count(&x, VD_COORD_SEND), 2);
    assert_int_equal(x.a[0].k, 2);
    struct vd_coord_action a = x.a[0], b = x.a[1];
    /* a is stale: it still lists point 7 at an old version with a high score; b lists 8, 9. */
    struct vd_coord_cand la[] = {{pid(7), {10, 1}, 0.9f}, {pid(8), {20, 1}, 0.5f}};
    struct vd_coord_cand lb[] = {{pid(8), {20, 1}, 0.5f}, {pid(9), {30, 1}, 0.4f}};
    list_reply(op, &a, la, 2, false);
    list_reply(op, &b, lb, 2, false);
    drain(op, &x);
    /* 8 agreed; 7 is verified with b and 9 with a. */
    assert_int_equal(count(&x, VD_COORD_VERIFY), 2);
    const struct vd_coord_action *v7 = NULL, *v9 = NULL;
    for (size_t i = 0; i < x.n; i++) {
        if (x.a[i].type == VD_COORD_VERIFY && x.a[i].id.u.num == 7)
            v7 = &x.a[i];
        if (x.a[i].type == VD_COORD_VERIFY && x.a[i].id.u.num == 9)
            v9 = &x.a[i];
    }
    assert_non_null(v7);
    assert_non_null(v9);
    assert_int_equal(v7->node, b.node);
    assert_int_equal(v9->node, a.node);
    /* b holds a newer tombstone of 7: dropped. a lacks 9: 9 stands, a is stale. */
    verify_reply(op, v7, (struct vd_coord_copy){true, true, {40, 2}});
    verify_reply(op, v9, (struct vd_coord_copy){false, false, {0, 0}});
    drain(op, &x);
    /* a's list was truncated at 0.5, and the result reaches 0.4 (below it): asked again, twice
     * the limit. */
    assert_null(find(&x, VD_COORD_REPLY, 0));
    assert_int_equal(count(&x, VD_COORD_SEND), 2);
    assert_int_equal(x.a[0].k, 4);
    a = x.a[0];
    b = x.a[1];
    list_reply(op, &a, la, 2, true);
    list_reply(op, &b, lb, 2, true);
    drain(op, &x);
    for (size_t i = 0; i < x.n; i++) {
        if (x.a[i].type != VD_COORD_VERIFY)
            continue;
        verify_reply(op, &x.a[i],
                     x.a[i].id.u.num == 7 ? (struct vd_coord_copy){true, true, {40, 2}}
                                          : (struct vd_coord_copy){false, false, {0, 0}});
    }
    drain(op, &x);
    assert_non_null(find(&x, VD_COORD_REPLY, 0));
    assert_int_equal(vd_coord_result(op, NULL), 0);
    const struct vd_coord_item *it;
    size_t n;
    bool complete;
    vd_coord_search_items(op, &it, &n, &complete);
    assert_true(complete);
    assert_int_equal(n, 2);
    assert_int_equal(it[0].id.u.num, 8);
    assert_int_equal(it[1].id.u.num, 9);
    /* Background repair: a gets 9 from b, and 7's tombstone from b. */
    const struct vd_coord_action *rep = find(&x, VD_COORD_REPAIR, a.node);
    assert_non_null(rep);
    assert_int_equal(count(&x, VD_COORD_REPAIR), 2);
    vd_coord_op_free(op);
}

static void test_search_rounds_capped(void **state)
{
    struct acts x;
    struct vd_coord_op *op = search_ring3(0, 2, &x);
    /* Replica a keeps listing stale points that b holds as newer tombstones, and b lists
     * nothing: every round verifies to an empty result while a's list was truncated, so the
     * range is asked again with 4, then 8, and after the third round the (empty) answer is
     * given as incomplete. */
    uint32_t ks[3] = {0};
    for (int round = 0; round < 3; round++) {
        assert_int_equal(count(&x, VD_COORD_SEND), 2);
        struct vd_coord_action a = x.a[0], b = x.a[1];
        ks[round] = a.k;
        struct vd_coord_cand l[8];
        for (uint32_t i = 0; i < a.k; i++)
            l[i] = (struct vd_coord_cand){pid(i + 1), {1, 1}, 1.0f - (float)i * 0.1f};
        list_reply(op, &a, l, a.k, false);
        list_reply(op, &b, NULL, 0, true);
        drain(op, &x);
        assert_int_equal(count(&x, VD_COORD_VERIFY), a.k);
        struct acts v = x;
        for (size_t i = 0; i < v.n; i++)
            verify_reply(op, &v.a[i], (struct vd_coord_copy){true, true, {2, 2}});
        drain(op, &x);
    }
    assert_int_equal(ks[0], 2);
    assert_int_equal(ks[1], 4);
    assert_int_equal(ks[2], 8);
    assert_non_null(find(&x, VD_COORD_REPLY, 0));
    assert_int_equal(vd_coord_result(op, NULL), 0);
    const struct vd_coord_item *it;
    size_t n;
    bool complete;
    vd_coord_search_items(op, &it, &n, &complete);
    assert_int_equal(n, 0);
    assert_false(complete);
    vd_coord_op_free(op);
}

static void test_search_timeout(void **state)
{
    struct acts x;
    struct vd_coord_op *op = search_ring3(0, 5, &x);
    /* One replica refuses: the next one is asked in its place. */
    struct vd_coord_reply r = ack_of(&x.a[0], VD_COORD_R_SEARCH, VD_COORD_REFUSED);
    step_ok(op, &r);
    drain(op, &x);
    assert_int_equal(count(&x, VD_COORD_SEND), 1);
    vd_coord_tick(op, 3000);
    drain(op, &x);
    assert_unavailable(
        op, "search needs 2 of 3 replicas of every range, 0 of 1 ranges answered within 2000 ms");
    vd_coord_op_free(op);
}

/* After a gone answer was stepped into op: the client heard "not found", nobody more is asked
 * or repaired, and the operation is over; frees op. */
static void assert_gone(struct vd_coord_op *op)
{
    struct acts x;
    drain(op, &x);
    assert_non_null(find(&x, VD_COORD_REPLY, 0));
    assert_int_equal(count(&x, VD_COORD_SEND) + count(&x, VD_COORD_REPAIR) +
                         count(&x, VD_COORD_VERIFY),
                     0);
    assert_int_equal(vd_coord_result(op, NULL), VD_ENOTFOUND);
    assert_true(vd_coord_done(op));
    vd_coord_op_free(op);
}

/* A replica that applied the deletion of the collection incarnation answers gone: a write, a
 * read and a search each answer "not found" (never 503) at once, ask nobody more, store no hint
 * and take nothing that comes after. */
static void test_gone_is_not_found(void **state)
{
    (void)state;
    struct acts x;
    struct vd_err e;
    /* a write with W already met and one replica gone: the client had its answer (0) before */
    struct vd_coord_op *op = write_150(3, &x);
    struct vd_coord_action s1 = *find(&x, VD_COORD_SEND, 1), s2 = *find(&x, VD_COORD_SEND, 2),
                           s3 = *find(&x, VD_COORD_SEND, 3);
    struct vd_coord_reply r = ack_of(&s2, VD_COORD_R_WRITE, VD_COORD_OK);
    step_ok(op, &r);
    r = ack_of(&s3, VD_COORD_R_WRITE, VD_COORD_GONE);
    step_ok(op, &r);
    drain(op, &x);
    assert_non_null(find(&x, VD_COORD_REPLY, 0));
    assert_int_equal(count(&x, VD_COORD_HINT), 0);
    assert_int_equal(vd_coord_result(op, &e), VD_ENOTFOUND);
    assert_true(vd_coord_done(op));
    /* a late refusal or ack changes nothing, and no deadline is left */
    r = ack_of(&s1, VD_COORD_R_WRITE, VD_COORD_REFUSED);
    step_ok(op, &r);
    vd_coord_tick(op, 5000);
    drain(op, &x);
    assert_int_equal(x.n, 0);
    assert_int_equal(vd_coord_next_deadline(op), UINT64_MAX);
    assert_int_equal(vd_coord_result(op, NULL), VD_ENOTFOUND);
    vd_coord_op_free(op);

    /* a read: one replica held the point, the other applied the deletion */
    op = read_150(2, 1, &x);
    struct vd_coord_action a = x.a[0], b = x.a[1];
    r = read_reply(&a, true, false, 50, 1);
    step_ok(op, &r);
    r = ack_of(&b, VD_COORD_R_READ, VD_COORD_GONE);
    step_ok(op, &r);
    assert_gone(op);

    /* a search gone in phase 1, and one gone while verifying */
    op = search_ring3(0, 2, &x);
    r = ack_of(&x.a[1], VD_COORD_R_SEARCH, VD_COORD_GONE);
    step_ok(op, &r);
    assert_gone(op);

    op = search_ring3(0, 2, &x);
    a = x.a[0];
    b = x.a[1];
    struct vd_coord_cand la[] = {{pid(7), {10, 1}, 0.9f}};
    struct vd_coord_cand lb[] = {{pid(8), {20, 1}, 0.5f}};
    list_reply(op, &a, la, 1, true);
    list_reply(op, &b, lb, 1, true);
    drain(op, &x);
    const struct vd_coord_action *v = find(&x, VD_COORD_VERIFY, 0);
    assert_non_null(v);
    r = ack_of(v, VD_COORD_R_VERIFY, VD_COORD_GONE);
    r.id = v->id;
    step_ok(op, &r);
    assert_gone(op);
}

/* Replica 2 usually answers within 100 ms, replica 3 within 5 (their p99s, from the host). */
static uint64_t spec_2_slow(void *ctx, uint64_t node)
{
    (void)ctx;
    return node == 2 ? 100 : node == 3 ? 5 : 0;
}

/* The speculative delay is the awaited replica's own: a read asking replica 2 waits its 100 ms
 * (not the 20 ms floor) before asking one more, and a search range likewise; a replica faster
 * than the floor waits the floor. */
static void test_spec_delay_per_replica(void **state)
{
    (void)state;
    struct vd_coord_params p = params(1);
    p.spec_of = spec_2_slow;
    struct vd_coord_op *op;
    struct acts x;
    /* hash 150: replicas 2, 3, 1; R = 1 asks node 2 */
    assert_int_equal(vd_coord_read_new(&p, &ring3, 150, &op), 0);
    drain(op, &x);
    assert_int_equal(find(&x, VD_COORD_SEND, 0)->node, 2);
    assert_int_equal(vd_coord_next_deadline(op), 1100);
    assert_spec_asks(op, 1100, 3, &x);
    vd_coord_op_free(op);
    /* hash 250: replicas 3, 1, 2; node 3 is fast, so the floor applies */
    assert_int_equal(vd_coord_read_new(&p, &ring3, 250, &op), 0);
    drain(op, &x);
    assert_int_equal(find(&x, VD_COORD_SEND, 0)->node, 3);
    assert_int_equal(vd_coord_next_deadline(op), 1020);
    vd_coord_op_free(op);
    /* a search range asking node 2 at R = 1 */
    p.prefer = 2;
    assert_int_equal(vd_coord_search_new(&p, &ring3, 0, 5, &op), 0);
    drain(op, &x);
    assert_int_equal(find(&x, VD_COORD_SEND, 0)->node, 2);
    assert_int_equal(vd_coord_next_deadline(op), 1100);
    vd_coord_op_free(op);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_core_is_pure),
        cmocka_unit_test(test_ring_placement_property),
        cmocka_unit_test(test_ring_arcs),
        cmocka_unit_test(test_write_quorum_and_hints),
        cmocka_unit_test(test_write_fails_at_deadline_with_numbers),
        cmocka_unit_test(test_write_fails_fast_when_w_unreachable),
        cmocka_unit_test(test_write_wrong_ring),
        cmocka_unit_test(test_bad_params),
        cmocka_unit_test(test_read_blocking_repair),
        cmocka_unit_test(test_read_background_repair_and_tombstone),
        cmocka_unit_test(test_read_timeout),
        cmocka_unit_test(test_search_prefers_coordinator),
        cmocka_unit_test(test_down_replicas_asked_last),
        cmocka_unit_test(test_search_verifies_disagreement),
        cmocka_unit_test(test_search_rounds_capped),
        cmocka_unit_test(test_search_timeout),
        cmocka_unit_test(test_gone_is_not_found),
        cmocka_unit_test(test_spec_delay_per_replica),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
