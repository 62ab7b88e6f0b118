/* Three cluster nodes in one process, each with its own database and Raft log on disk, talking
 * over real TCP on 127.0.0.1: bootstrap and join, collection changes through followers, a
 * duplicate refused everywhere, ReadIndex before a lookup, leader loss and restart with catch-up,
 * payload index declarations on every node (and adopted at bootstrap), removal of a node. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <pthread.h>
#include <cmocka.h>

#define N 3

#include "unit/cluster_fixture.h"

/* Members whose clock offset node i has estimated, within 100 ms of its own (one process, one
 * clock: every estimate is its round trip's error). */
static int offsets_near(int i)
{
    cJSON *j = status(i);
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(j, "nodes"))
    {
        const cJSON *off = cJSON_GetObjectItem(it, "clock_offset_ms");
        n += cJSON_IsNumber(off) && off->valuedouble > -100 && off->valuedouble < 100;
    }
    cJSON_Delete(j);
    return n;
}

static int create(int i, const char *name)
{
    return create_coll(i, name, VD_METRIC_COSINE, 1);
}

static int delete (int i, const char *name)
{
    struct vd_err e;
    assert_int_equal(vd_cluster_delete_collection(nodes[i].c, name, on_done, &W, &e), 0);
    return wait_for(&W);
}

/* The local payload indexes of collection name on node i as "field:type,..." ("-" when the
 * collection is missing). */
static void idx_text(int i, const char *name, char *out, size_t cap)
{
    struct vd_coll *c;
    snprintf(out, cap, "-");
    if (vd_db_coll_get(nodes[i].db, name, &c))
        return;
    struct vd_db_pindex_info *v;
    size_t n, k = 0;
    assert_int_equal(vd_db_pindex_list(c, &v, &n), 0);
    vd_db_coll_put(c);
    out[0] = 0;
    for (size_t j = 0; j < n; j++)
        k += (size_t)snprintf(out + k, cap - k, "%s%s:%s", j ? "," : "", v[j].field,
                              vd_db_pindex_type_name(v[j].type));
    vd_db_pindex_list_free(v, n);
}

static void expect_idx(int i, const char *name, const char *want)
{
    char got[512];
    idx_text(i, name, got, sizeof got);
    if (strcmp(got, want))
        fail_msg("node %d, collection '%s': indexes '%s', expected '%s'", i, name, got, want);
}

static int set_idx(int i, const char *coll, const char *field, enum vd_db_pindex_type t)
{
    struct vd_err e;
    assert_int_equal(vd_cluster_set_payload_index(nodes[i].c, coll, field, t, on_done, &W, &e), 0);
    return wait_for(&W);
}

static int drop_idx(int i, const char *coll, const char *field)
{
    struct vd_err e;
    assert_int_equal(vd_cluster_drop_payload_index(nodes[i].c, coll, field, on_done, &W, &e), 0);
    return wait_for(&W);
}

static void test_form_create_failover(void **state)
{
    (void)state;
    char join[32];
    snprintf(join, sizeof join, "127.0.0.1:%u", nodes[0].port);
    start(0, NULL);
    start(1, join);
    start(2, join);
    for (int i = 0; i < N; i++)
        POLL(voters_up(i) == N && leader_of(i) != 0, 15000, "three voters up");
    uint64_t l = leader_of(0);
    for (int i = 1; i < N; i++)
        assert_true(leader_of(i) == l);
    /* pings measure every member's clock; none is skewed, so each node takes data writes (the
     * check reads what the loop thread publishes) */
    for (int i = 0; i < N; i++) {
        POLL(offsets_near(i) == N, 5000, "clock offsets of every member");
        struct vd_err e;
        assert_int_equal(vd_cluster_clock_check(nodes[i].c, &e), 0);
    }

    /* through a follower: visible there when the call returns, and everywhere after a sync */
    int f = index_of_leader() == 1 ? 2 : 1;
    assert_int_equal(create(f, "docs"), 0);
    assert_true(has_coll(f, "docs"));
    for (int i = 0; i < N; i++) {
        assert_int_equal(sync_node(i), 0);
        assert_true(has_coll(i, "docs"));
        /* the published view other threads read has it too, on the same ring everywhere */
        struct vd_meta_view *v = vd__cluster_view_acquire(nodes[i].c);
        assert_non_null(v);
        const struct vd_meta *st = vd_meta_view_state(v);
        assert_non_null(vd_meta_collection(st, "docs"));
        assert_int_equal(vd_meta_n_members(st), N);
        assert_true(vd_meta_ring_version(st) > 0);
        vd_meta_view_release(v);
    }
    /* a duplicate through any node is refused with the same answer */
    assert_int_equal(create((f + 1) % N, "docs"), VD_EEXIST);
    assert_int_equal(create(0, "gone"), 0);
    assert_int_equal(delete (2, "gone"), 0);
    assert_int_equal(delete (1, "gone"), VD_ENOTFOUND);
    for (int i = 0; i < N; i++) {
        assert_int_equal(sync_node(i), 0);
        assert_false(has_coll(i, "gone"));
    }

    /* the leader stops: the others elect a new one and keep taking changes */
    int old = index_of_leader();
    assert_true(old >= 0);
    stop(old);
    int a = (old + 1) % N, b = (old + 2) % N;
    uint64_t took = POLL(leader_of(a) != 0 && leader_of(a) != l && leader_of(a) == leader_of(b),
                         5000, "a new leader");
    print_message("new leader after %llu ms (election timeout 300 ms)\n", (unsigned long long)took);
    assert_int_equal(create(a, "while_down"), 0);

    /* the old leader restarts from its directory and catches up */
    start(old, NULL);
    POLL(has_coll(old, "while_down"), 10000, "catch-up of the restarted node");
    assert_true(has_coll(old, "docs"));
    assert_int_equal(sync_node(old), 0);
}

/* Index declarations through any node reach every node's database, and a node that was down
 * meanwhile catches up when it restarts. */
static void test_payload_indexes(void **state)
{
    (void)state;
    for (int i = 0; i < N; i++)
        POLL(leader_of(i) != 0 && leader_of(i) == leader_of((i + 1) % N), 10000, "a leader");
    int l = index_of_leader();
    assert_true(l >= 0);
    int f = (l + 1) % N, g = (l + 2) % N;

    /* through a follower: present there when the call returns, everywhere after a sync */
    assert_int_equal(set_idx(f, "docs", "tag", VD_DB_PINDEX_KEYWORD), 0);
    expect_idx(f, "docs", "tag:keyword");
    assert_int_equal(set_idx(g, "docs", "n", VD_DB_PINDEX_FLOAT), 0);
    expect_idx(g, "docs", "n:float,tag:keyword");
    for (int i = 0; i < N; i++) {
        assert_int_equal(sync_node(i), 0);
        expect_idx(i, "docs", "n:float,tag:keyword");
    }
    /* retype through the leader; the same declaration again is fine */
    assert_int_equal(set_idx(l, "docs", "tag", VD_DB_PINDEX_INTEGER), 0);
    assert_int_equal(set_idx(f, "docs", "tag", VD_DB_PINDEX_INTEGER), 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(sync_node(i), 0);
        expect_idx(i, "docs", "n:float,tag:integer");
    }
    /* errors are decided once, for every node alike */
    assert_int_equal(set_idx(f, "nope", "tag", VD_DB_PINDEX_KEYWORD), VD_ENOTFOUND);
    assert_int_equal(drop_idx(g, "docs", "absent"), VD_ENOTFOUND);
    assert_int_equal(drop_idx(f, "nope", "tag"), VD_ENOTFOUND);

    /* dropped through one node: gone everywhere */
    assert_int_equal(drop_idx(g, "docs", "n"), 0);
    expect_idx(g, "docs", "tag:integer");
    for (int i = 0; i < N; i++) {
        assert_int_equal(sync_node(i), 0);
        expect_idx(i, "docs", "tag:integer");
    }

    /* a follower is down while indexes change; it restarts and converges */
    stop(g);
    assert_int_equal(set_idx(l, "docs", "k", VD_DB_PINDEX_BOOL), 0);
    assert_int_equal(drop_idx(f, "docs", "tag"), 0);
    start(g, NULL);
    POLL(leader_of(g) != 0, 10000, "the restarted node sees a leader");
    assert_int_equal(sync_node(g), 0);
    expect_idx(g, "docs", "k:bool");
    /* and its indexes survive another restart as they are */
    stop(g);
    start(g, NULL);
    POLL(leader_of(g) != 0, 10000, "the restarted node sees a leader");
    assert_int_equal(sync_node(g), 0);
    expect_idx(g, "docs", "k:bool");
    for (int i = 0; i < N; i++)
        expect_idx(i, "docs", "k:bool");
    /* a collection deleted and created again starts without indexes */
    assert_int_equal(delete (f, "docs"), 0);
    assert_int_equal(create(g, "docs"), 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(sync_node(i), 0);
        expect_idx(i, "docs", "");
    }
}

/* A node that bootstraps a cluster over a database that already has collections adopts their
 * payload indexes: reconciliation keeps them, and they reach a node that joins. */
static void test_bootstrap_adopts_indexes(void **state)
{
    (void)state;
    int a = N + 3;
    struct node *n = &nodes[a];
    struct vd_err e;
    struct vd_db_opts o = {.data_dir = n->dir, .no_sync = true, .index_threads = 1};
    assert_int_equal(vd_db_open(&o, &n->db, &e), 0);
    struct vd_coll_schema s = {.dim = 4,
                               .metric = VD_METRIC_DOT,
                               .hnsw_m = 16,
                               .hnsw_ef_construct = 64,
                               .replication_factor = 1,
                               .write_consistency_factor = 1};
    snprintf(s.name, sizeof s.name, "old");
    assert_int_equal(vd_db_coll_create(n->db, &s, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    struct vd_coll *c;
    assert_int_equal(vd_db_coll_get(n->db, "old", &c), 0);
    assert_int_equal(vd_db_pindex_create(c, "city", VD_DB_PINDEX_KEYWORD, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    assert_int_equal(vd_db_pindex_create(c, "a.b", VD_DB_PINDEX_INTEGER, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    vd_db_coll_put(c);
    vd_db_close(n->db);
    n->db = NULL;

    start(a, NULL);
    POLL(leader_of(a) != 0, 10000, "the bootstrapped node leads");
    assert_int_equal(sync_node(a), 0);
    expect_idx(a, "old", "a.b:integer,city:keyword");
    /* the adopted declarations are the cluster's: a drop through it works */
    assert_int_equal(drop_idx(a, "old", "a.b"), 0);
    expect_idx(a, "old", "city:keyword");
    stop(a);
}

static void test_remove_and_add(void **state)
{
    (void)state;
    /* a fourth node joins, then one of the first three is removed */
    char join[32];
    snprintf(join, sizeof join, "127.0.0.1:%u", nodes[1].port);
    start(N, join);
    POLL(voters_up(0) == N + 1, 15000, "four voters");
    assert_int_equal(sync_node(N), 0);
    assert_true(has_coll(N, "docs"));
    int victim = index_of_leader() == 2 ? 1 : 2;
    uint64_t vid = vd_cluster_node_id(nodes[victim].c);
    struct vd_err e;
    int asker = victim == 0 ? 1 : 0;
    assert_int_equal(vd_cluster_remove_node(nodes[asker].c, vid, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    POLL(voters_up(asker) == N, 10000, "three voters after the removal");
    assert_int_equal(vd_cluster_remove_node(nodes[asker].c, vid, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), VD_ENOTFOUND);
    stop(victim);
    assert_int_equal(create(N, "after_removal"), 0);
}

/* With the log compacted every 8 entries, a node that joins late gets the state machine as an
 * InstallSnapshot, and restarts load it from the Raft log's snapshot. */
static void test_snapshots(void **state)
{
    (void)state;
    for (int i = 0; i < N + 1; i++)
        if (nodes[i].c)
            stop(i);
    snap_every = 8;
    int a = N + 1, b = N + 2;
    start(a, NULL);
    char name[32];
    for (int i = 0; i < 30; i++) {
        snprintf(name, sizeof name, "s%d", i);
        assert_int_equal(create(a, name), 0);
    }
    assert_int_equal(delete (a, "s3"), 0);
    char join[32];
    snprintf(join, sizeof join, "127.0.0.1:%u", nodes[a].port);
    start(b, join);
    POLL(voters_up(a) == 2 && voters_up(b) == 2, 15000, "two voters");
    assert_int_equal(sync_node(b), 0);
    for (int i = 0; i < 30; i++) {
        snprintf(name, sizeof name, "s%d", i);
        assert_true(has_coll(b, name) == (i != 3));
    }
    /* restarts read the snapshot back from the Raft log and keep every collection */
    assert_int_equal(delete (b, "s4"), 0);
    for (int k = 0; k < 2; k++) {
        int who = k ? a : b;
        stop(who);
        start(who, NULL);
        POLL(leader_of(a) != 0 && leader_of(a) == leader_of(b), 15000, "a leader again");
        assert_int_equal(sync_node(who), 0);
        for (int i = 0; i < 30; i++) {
            snprintf(name, sizeof name, "s%d", i);
            assert_true(has_coll(who, name) == (i != 3 && i != 4));
        }
    }
    assert_int_equal(create(b, "after"), 0);
    snap_every = 0;
}

/* The cluster address node i lists for itself in GET /cluster; false while it is not listed. */
static bool self_address(int i, char *out, size_t cap)
{
    cJSON *j = status(i);
    const cJSON *it;
    bool found = false;
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(j, "nodes"))
    {
        uint64_t id = 0;
        const char *a = cJSON_GetStringValue(cJSON_GetObjectItem(it, "address"));
        if (!vd_json_get_u64(cJSON_GetObjectItem(it, "id"), &id) &&
            id == vd_cluster_node_id(nodes[i].c) && a) {
            snprintf(out, cap, "%s", a);
            found = true;
        }
    }
    cJSON_Delete(j);
    return found;
}

/* With port 0 (an ephemeral port) and no advertise address, the node advertises the port it
 * really listens on, and something answers there. */
static void test_ephemeral_port_advertised(void **state)
{
    (void)state;
    int a = N + 3;
    snprintf(nodes[a].dir, sizeof nodes[a].dir, "%s/ephemeral", root);
    nodes[a].port = 0;
    start(a, NULL);
    uint16_t port = vd_cluster_port(nodes[a].c);
    assert_true(port != 0);
    char want[32], got[300] = "";
    snprintf(want, sizeof want, "127.0.0.1:%u", port);
    POLL(self_address(a, got, sizeof got), 5000, "the node listed as a member");
    if (strcmp(got, want))
        fail_msg("node advertises '%s', listens on %s", got, want);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    close(fd);
    stop(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_form_create_failover),
        cmocka_unit_test(test_payload_indexes),
        cmocka_unit_test(test_bootstrap_adopts_indexes),
        cmocka_unit_test(test_remove_and_add),
        cmocka_unit_test(test_snapshots),
        cmocka_unit_test(test_ephemeral_port_advertised),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
