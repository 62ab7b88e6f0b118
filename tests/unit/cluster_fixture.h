/* What the in-process cluster tests share: N nodes (N defined before inclusion, room for 4
 * more), each with its own database and Raft log in a temporary directory, talking over real TCP
 * on 127.0.0.1; starting and stopping them, reading GET /cluster, polling, collections. Header
 * only, for tests; include it after cmocka.h. */
#ifndef VD_TEST_CLUSTER_FIXTURE_H
#define VD_TEST_CLUSTER_FIXTURE_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cluster_int.h"
#include "unit/waiter.h"
#include "vectord/cluster.h"
#include "vectord/db.h"

static struct waiter W = WAITER_INIT;

struct node {
    char dir[64];
    uint16_t port;
    struct vd_db *db;
    struct vd_cluster *c;
};
static struct node nodes[N + 4];
static uint32_t snap_every __attribute__((unused)); /* 0 = the default */
static uint64_t hint_window_ms __attribute__((unused)); /* 0 = the default */
static uint64_t hint_node_bytes __attribute__((unused)); /* hint cap per target; 0 = default */
static uint64_t repair_interval_ms __attribute__((unused)); /* 0 = repair only when asked */
static char root[64];

static inline void start(int i, const char *join)
{
    struct node *n = &nodes[i];
    struct vd_err e;
    struct vd_db_opts o = {.data_dir = n->dir,
                           .no_sync = true,
                           .index_threads = 1,
                           .hint_target_bytes = hint_node_bytes};
    if (vd_db_open(&o, &n->db, &e))
        fail_msg("open %d: %s", i, e.msg);
    char http[32];
    snprintf(http, sizeof http, "127.0.0.1:%u", 7000 + i);
    struct vd_cluster_opts co = {
        .db = n->db,
        .data_dir = n->dir,
        .bind = "127.0.0.1",
        .port = n->port,
        .http_advertise = http,
        .join = join,
        .election_timeout_ms = 300,
        .heartbeat_ms = 50,
        .request_timeout_ms = 10000,
        .snapshot_every = snap_every,
        .hint_window_ms = hint_window_ms,
        .repair_interval_ms = repair_interval_ms,
        .no_sync = true,
    };
    if (vd_cluster_start(&co, &n->c, &e))
        fail_msg("cluster start %d: %s", i, e.msg);
}

static inline void stop(int i)
{
    vd_cluster_stop(nodes[i].c);
    nodes[i].c = NULL;
    vd_db_close(nodes[i].db);
    nodes[i].db = NULL;
}

static inline cJSON *status(int i)
{
    struct vd_buf b = {0};
    vd_cluster_status_json(nodes[i].c, &b);
    cJSON *j = NULL;
    struct vd_err e;
    /* the strict parser keeps the number text: node ids are above 2^53 */
    if (vd_json_parse(b.data, b.len, 0, &j, &e))
        fail_msg("GET /cluster result does not parse: %s", e.msg);
    vd_buf_release(&b);
    return j;
}

/* Leader id as node i sees it (0 if none). */
static inline uint64_t leader_of(int i)
{
    cJSON *j = status(i);
    const cJSON *l = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "raft_info"), "leader");
    uint64_t id = 0;
    if (l && !cJSON_IsNull(l) && vd_json_get_u64(l, &id))
        fail_msg("raft_info.leader is not a u64");
    cJSON_Delete(j);
    return id;
}

/* Number of voters in state up that node i sees. */
static inline int voters_up(int i)
{
    cJSON *j = status(i);
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(j, "nodes"))
    {
        const char *st = cJSON_GetStringValue(cJSON_GetObjectItem(it, "state"));
        const char *role = cJSON_GetStringValue(cJSON_GetObjectItem(it, "role"));
        if (st && role && !strcmp(st, "up") && !strcmp(role, "voter"))
            n++;
    }
    cJSON_Delete(j);
    return n;
}

/* needs_repair of member id in node i's GET /cluster. */
static inline bool needs_repair(int i, uint64_t id)
{
    cJSON *j = status(i);
    bool r = false;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(j, "nodes"))
    {
        uint64_t mid = 0;
        if (vd_json_get_u64(cJSON_GetObjectItem(it, "id"), &mid) == 0 && mid == id)
            r = cJSON_IsTrue(cJSON_GetObjectItem(it, "needs_repair"));
    }
    cJSON_Delete(j);
    return r;
}

static inline uint64_t ms(void)
{
    return vd_mono_ns() / 1000000u;
}

/* Polls cond for up to limit_ms; returns the time it took, or fails the test. */
#define POLL(cond, limit_ms, what)                                                                 \
    ({                                                                                             \
        uint64_t t0_ = ms();                                                                       \
        while (!(cond)) {                                                                          \
            if (ms() - t0_ > (limit_ms))                                                           \
                fail_msg("timed out after %u ms waiting for %s", (unsigned)(limit_ms), what);      \
            usleep(10000);                                                                         \
        }                                                                                          \
        ms() - t0_;                                                                                \
    })

static inline bool has_coll(int i, const char *name)
{
    struct vd_coll *c;
    if (vd_db_coll_get(nodes[i].db, name, &c))
        return false;
    vd_db_coll_put(c);
    return true;
}

/* Creates collection name (4 dimensions, metric, replication factor rf, W its majority) through
 * node i; returns the outcome. */
static inline int create_coll(int i, const char *name, enum vd_metric metric, uint32_t rf)
{
    struct vd_coll_schema s = {.dim = 4,
                               .metric = metric,
                               .hnsw_m = 16,
                               .hnsw_ef_construct = 64,
                               .replication_factor = rf,
                               .write_consistency_factor = rf / 2 + 1};
    snprintf(s.name, sizeof s.name, "%s", name);
    struct vd_err e;
    assert_int_equal(vd_cluster_create_collection(nodes[i].c, &s, on_done, &W, &e), 0);
    return wait_for(&W);
}


static inline int sync_node(int i)
{
    struct vd_err e;
    assert_int_equal(vd_cluster_sync(nodes[i].c, 0, on_done, &W, &e), 0);
    return wait_for(&W);
}

static inline int index_of_leader(void)
{
    for (int i = 0; i < N; i++)
        if (nodes[i].c && leader_of(i) == vd_cluster_node_id(nodes[i].c))
            return i;
    return -1;
}

/* A port nobody listens on now: the kernel picks it for a socket bound to port 0. */
static inline uint16_t free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static inline int setup(void **state)
{
    (void)state;
    snprintf(root, sizeof root, "/tmp/vd_cluster_node_XXXXXX");
    assert_non_null(mkdtemp(root));
    for (int i = 0; i < N + 4; i++) {
        snprintf(nodes[i].dir, sizeof nodes[i].dir, "%s/n%d", root, i);
        nodes[i].port = free_port();
    }
    return 0;
}

static inline int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < N + 4; i++)
        if (nodes[i].c)
            stop(i);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    return system(cmd) == 0 ? 0 : -1;
}

#endif
