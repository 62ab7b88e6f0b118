/*
 * Membership changes while collections hold points: the state machine's sticky "has held points"
 * flag, and the refusal that follows from it, first on the state machine alone (outcomes decided
 * in log order, kept through a snapshot), then on three nodes in one process where the node asked
 * to add or remove a member holds none of the points itself (replication factor 1).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <pthread.h>
#include <cmocka.h>

#define N 3

#include "unit/cluster_fixture.h"
#include "node_int.h"
#include "unit/cluster_points.h"

/* ---- the state machine ------------------------------------------------------------------------
 */

static uint64_t idx;

static int apply(struct vd_meta *m, struct vd_buf *cmd, struct vd_err *res)
{
    assert_true(vd_buf_ok(cmd));
    int rc = vd_meta_apply(m, ++idx, (const uint8_t *)cmd->data, cmd->len, res);
    vd_buf_release(cmd);
    return rc;
}

static void add_member(struct vd_meta *m, uint64_t id, int want)
{
    struct vd_buf b = {0};
    struct vd_err e;
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)(7000 + id));
    vd_meta_cmd_add_member(id, addr, "", &b);
    int rc = apply(m, &b, &e);
    if (rc != want)
        fail_msg("add member %llu: %d (%s), expected %d", (unsigned long long)id, rc, e.msg, want);
}

static int set_state(struct vd_meta *m, uint64_t id, enum vd_meta_state st, struct vd_err *e)
{
    struct vd_buf b = {0};
    vd_meta_cmd_set_member(id, st, NULL, NULL, &b);
    return apply(m, &b, e);
}

static void test_flag_refuses_membership_changes(void **state)
{
    (void)state;
    struct vd_meta *m;
    assert_int_equal(vd_meta_new(&m), 0);
    struct vd_err e;
    add_member(m, 1, 0); /* the first member: nothing can move */
    assert_int_equal(set_state(m, 1, VD_MEMBER_UP, &e), 0);
    add_member(m, 2, 0);
    assert_int_equal(set_state(m, 2, VD_MEMBER_UP, &e), 0);
    struct vd_coll_schema s = {.dim = 4,
                               .metric = VD_METRIC_DOT,
                               .hnsw_m = 16,
                               .hnsw_ef_construct = 64,
                               .replication_factor = 1,
                               .write_consistency_factor = 1};
    snprintf(s.name, sizeof s.name, "docs");
    struct vd_buf b = {0};
    vd_meta_cmd_create_collection(&s, &b);
    assert_int_equal(apply(m, &b, &e), 0);
    uint64_t inc = vd_meta_collection(m, "docs")->incarnation;
    assert_null(vd_meta_collection_with_points(m));

    /* another incarnation's flag does not count */
    vd_meta_cmd_collection_has_points("docs", inc + 1, &b);
    assert_int_equal(apply(m, &b, &e), VD_ENOTFOUND);
    assert_false(vd_meta_collection_has_points(m, "docs"));

    /* a joining member may still be added before any point exists */
    add_member(m, 3, 0);
    vd_meta_cmd_collection_has_points("docs", inc, &b);
    assert_int_equal(apply(m, &b, &e), 0);
    assert_string_equal(vd_meta_collection_with_points(m), "docs");

    /* now: no member added, no up member leaves; the message names the collection */
    add_member(m, 4, VD_EEXIST);
    assert_null(vd_meta_member(m, 4));
    assert_int_equal(set_state(m, 2, VD_MEMBER_LEAVING, &e), VD_EEXIST);
    if (!strstr(e.msg, "cannot remove a node while collection 'docs' holds points"))
        fail_msg("unexpected message: %s", e.msg);
    assert_int_equal(vd_meta_member(m, 2)->state, VD_MEMBER_UP);
    /* a member still joining owned nothing: it may go */
    assert_int_equal(set_state(m, 3, VD_MEMBER_LEAVING, &e), 0);

    /* sticky through a snapshot, and in a published view */
    assert_int_equal(vd_meta_snapshot(m, &b), 0);
    struct vd_meta *r;
    assert_int_equal(vd_meta_new(&r), 0);
    assert_int_equal(vd_meta_restore(r, (const uint8_t *)b.data, b.len, &e), 0);
    vd_buf_release(&b);
    assert_true(vd_meta_collection_has_points(r, "docs"));
    struct vd_meta_view *v;
    assert_int_equal(vd_meta_view_new(r, &v), 0);
    assert_true(vd_meta_collection_has_points(vd_meta_view_state(v), "docs"));
    vd_meta_view_release(v);
    vd_meta_free(r);

    /* deleting the collection lifts it; a new incarnation starts without the flag */
    vd_meta_cmd_delete_collection("docs", &b);
    assert_int_equal(apply(m, &b, &e), 0);
    vd_meta_cmd_create_collection(&s, &b);
    assert_int_equal(apply(m, &b, &e), 0);
    assert_null(vd_meta_collection_with_points(m));
    add_member(m, 4, 0);
    vd_meta_free(m);
}

/* ---- three nodes ------------------------------------------------------------------------------
 */

static bool flagged(int i, const char *coll)
{
    struct vd_meta_view *v = vd__cluster_view_acquire(nodes[i].c);
    bool r = v && vd_meta_collection_has_points(vd_meta_view_state(v), coll);
    vd_meta_view_release(v);
    return r;
}

static size_t members_of(int i)
{
    struct vd_meta_view *v = vd__cluster_view_acquire(nodes[i].c);
    size_t n = v ? vd_meta_n_members(vd_meta_view_state(v)) : 0;
    vd_meta_view_release(v);
    return n;
}

static void test_nodes_refuse_while_points(void **state)
{
    (void)state;
    uint64_t inc = start_with_pts(1);

    /* one point at replication factor 1: exactly one node holds it */
    static struct rec rec[1];
    make_rec(&rec[0], 42, vd_cluster_node_id(nodes[0].c), 1, false, inc);
    assert_int_equal(write_through(0, rec, 1, 1, inc, NULL, 0), 0);
    int holder = -1, other = -1;
    for (int i = 0; i < N; i++)
        if (held_at(i, rec, 1))
            holder = i;
    assert_true(holder >= 0);
    for (int i = 0; i < N && other < 0; i++)
        if (i != holder && held_at(i, rec, 1) == 0)
            other = i;
    assert_true(other >= 0);
    POLL(flagged(other, "pts"), 10000, "the flag applied on a node that holds no point");

    /* asked of the node without points: refused, with the reason, nothing changed */
    struct vd_err e;
    uint64_t victim = vd_cluster_node_id(nodes[holder].c);
    assert_int_equal(vd_cluster_remove_node(nodes[other].c, victim, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), VD_EEXIST);
    if (!strstr(W.msg, "cannot remove a node while collection 'pts' holds points"))
        fail_msg("unexpected message: %s", W.msg);
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", nodes[3].port);
    assert_int_equal(vd_cluster_add_node(nodes[other].c, addr, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), VD_EEXIST);
    if (!strstr(W.msg, "cannot add a node while collection 'pts' holds points"))
        fail_msg("unexpected message: %s", W.msg);
    for (int i = 0; i < N; i++) {
        assert_int_equal(sync_node(i), 0);
        assert_int_equal(members_of(i), N);
        assert_int_equal(voters_up(i), N);
    }

    /* without the collection, membership changes go through again */
    assert_int_equal(vd_cluster_delete_collection(nodes[other].c, "pts", on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    start(3, NULL);
    assert_int_equal(vd_cluster_add_node(nodes[other].c, addr, on_done, &W, &e), 0);
    if (wait_for(&W) != 0)
        fail_msg("add node after the delete: %s", W.msg);
    POLL(members_of(0) == N + 1, 15000, "four members");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flag_refuses_membership_changes),
        cmocka_unit_test_setup_teardown(test_nodes_refuse_while_points, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
