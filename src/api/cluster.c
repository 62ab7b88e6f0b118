/* /cluster: status, node addition and removal; collection changes and lookups through the
 * cluster's Raft group. */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "vectord/cluster.h"
#include "vectord/record.h"

#include "api_int.h"

/* ---- completions ------------------------------------------------------------------------- */

/* A cluster completion carried to the caller's own, with VD_ETIMEOUT (no leader within the
 * cluster's deadline) turned into VD_EUNAVAIL: HTTP 503, the status Qdrant's clients expect for
 * "try again later", rather than the generic 504. */
struct relay {
    vd_db_done_fn done;
    void *ctx;
};

static void relay_done(int status, const struct vd_err *err, uint64_t op_id, void *p)
{
    struct relay rl = *(struct relay *)p;
    free(p);
    if (status == VD_ETIMEOUT) {
        /* the cluster's own message says which wait ran out (leader, invited node, apply) */
        struct vd_err e;
        if (err && err->msg[0])
            vd_errf(&e, VD_EUNAVAIL, "%s", err->msg);
        else
            vd_errf(&e, VD_EUNAVAIL,
                    "no cluster leader was reachable within the request deadline; try again "
                    "later");
        rl.done(VD_EUNAVAIL, &e, op_id, rl.ctx);
        return;
    }
    rl.done(status, err, op_id, rl.ctx);
}

static struct relay *relay_new(vd_db_done_fn done, void *ctx, struct vd_err *err)
{
    struct relay *rl = malloc(sizeof *rl);
    if (!rl) {
        vd_errf(err, VD_ENOMEM, "out of memory");
        return NULL;
    }
    rl->done = done;
    rl->ctx = ctx;
    return rl;
}

/* ---- data writes ------------------------------------------------------------------------- */

/* A skewed clock would stamp versions that order wrongly against the other members' writes;
 * metadata changes go through Raft and carry no such version, so they are not checked. */
bool vd__api_write_refused(struct vd_http_req *r)
{
    struct vd_err e;
    if (!vd__api.cluster || vd_cluster_clock_check(vd__api.cluster, &e) == 0)
        return false;
    vd_http_reply_err(r, &e);
    return true;
}

/* ---- metadata adapter -------------------------------------------------------------------- */

static int cluster_create(void *impl, const struct vd_coll_schema *s, vd_db_done_fn done, void *ctx,
                          struct vd_err *err)
{
    struct relay *rl = relay_new(done, ctx, err);
    if (!rl)
        return VD_ENOMEM;
    int rc = vd_cluster_create_collection(impl, s, relay_done, rl, err);
    if (rc)
        free(rl);
    return rc;
}

static int cluster_update(void *impl, const struct vd_coll_schema *s, vd_db_done_fn done, void *ctx,
                          struct vd_err *err)
{
    struct relay *rl = relay_new(done, ctx, err);
    if (!rl)
        return VD_ENOMEM;
    int rc = vd_cluster_update_collection(impl, s, relay_done, rl, err);
    if (rc)
        free(rl);
    return rc;
}

static int cluster_delete(void *impl, const char *name, vd_db_done_fn done, void *ctx,
                          struct vd_err *err)
{
    struct relay *rl = relay_new(done, ctx, err);
    if (!rl)
        return VD_ENOMEM;
    int rc = vd_cluster_delete_collection(impl, name, relay_done, rl, err);
    if (rc)
        free(rl);
    return rc;
}

int vd__api_cluster_set_pindex(const char *coll, const char *field, enum vd_db_pindex_type type,
                               vd_db_done_fn done, void *ctx, struct vd_err *err)
{
    struct relay *rl = relay_new(done, ctx, err);
    if (!rl)
        return VD_ENOMEM;
    int rc = vd_cluster_set_payload_index(vd__api.cluster, coll, field, type, relay_done, rl, err);
    if (rc)
        free(rl);
    return rc;
}

int vd__api_cluster_drop_pindex(const char *coll, const char *field, vd_db_done_fn done, void *ctx,
                                struct vd_err *err)
{
    struct relay *rl = relay_new(done, ctx, err);
    if (!rl)
        return VD_ENOMEM;
    int rc = vd_cluster_drop_payload_index(vd__api.cluster, coll, field, relay_done, rl, err);
    if (rc)
        free(rl);
    return rc;
}

void vd_api_cluster_meta(struct vd_cluster *c, struct vd_meta_ops *out)
{
    out->create_collection = cluster_create;
    out->delete_collection = cluster_delete;
    out->update_collection = cluster_update;
    out->impl = c;
}

/* ---- catching up before a 404 ------------------------------------------------------------ */

int vd__api_cluster_unconfirmed(const char *name, int status, struct vd_err *err)
{
    char why[96];
    if (status == VD_ETIMEOUT)
        snprintf(why, sizeof why, "no cluster leader answered within %u ms; try again later",
                 VD__API_CATCH_UP_MS);
    else if (status == VD_ECLOSED)
        snprintf(why, sizeof why, "the node is shutting down");
    else
        snprintf(why, sizeof why, "%s", vd_strerror(status));
    return vd_errf(err, VD_EUNAVAIL,
                   "collection '%s' is not on this node and the cluster could not confirm it is "
                   "missing: %s",
                   name, why);
}

static void caught_up(int status, const struct vd_err *err, uint64_t op_id, void *r)
{
    vd_http_redispatch(r, status);
}

int vd__api_cluster_catch_up_start(struct vd_http_req *r, const char *name, struct vd_err *err)
{
    struct vd_err e;
    int rc = vd_cluster_sync(vd__api.cluster, VD__API_CATCH_UP_MS, caught_up, r, &e);
    return rc ? vd__api_cluster_unconfirmed(name, rc, err) : 0;
}

/* Shared by the waiting thread and the sync completion; whichever lets go last frees it, so a
 * completion that arrives after the wait gave up touches live memory. */
struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    bool done;
    int status;
};

static void waiter_unref_locked(struct waiter *w)
{
    bool last = --w->refs == 0;
    pthread_mutex_unlock(&w->mu);
    if (last) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        free(w);
    }
}

static void sync_done(int status, const struct vd_err *err, uint64_t op_id, void *p)
{
    struct waiter *w = p;
    pthread_mutex_lock(&w->mu);
    w->done = true;
    w->status = status;
    pthread_cond_signal(&w->cv);
    waiter_unref_locked(w);
}

/*
 * The streamed import's `begin` runs once, on the pool thread that read the request's headers,
 * and its body follows at once, so it cannot be run again from a completion as other handlers
 * are: on a miss it blocks that pool thread for the catch-up, at most VD__API_CATCH_UP_MS (the
 * sync's own deadline; the wait's deadline, a little later, only guards against a completion
 * that never comes). Other connections of that thread wait meanwhile.
 */
int vd__api_cluster_catch_up(const char *name, struct vd_err *err)
{
    struct waiter *w = calloc(1, sizeof *w);
    if (!w)
        return vd__api_cluster_unconfirmed(name, VD_ENOMEM, err);
    vd__api_wait_init(&w->mu, &w->cv);
    w->refs = 2;
    struct vd_err e;
    int rc = vd_cluster_sync(vd__api.cluster, VD__API_CATCH_UP_MS, sync_done, w, &e);
    if (rc) {
        pthread_mutex_lock(&w->mu);
        w->refs--; /* the completion will never run */
        waiter_unref_locked(w);
        return vd__api_cluster_unconfirmed(name, rc, err);
    }
    struct timespec until;
    vd_mono_deadline(&until, VD__API_CATCH_UP_MS + 500u);
    pthread_mutex_lock(&w->mu);
    while (!w->done) {
        if (pthread_cond_timedwait(&w->cv, &w->mu, &until) == ETIMEDOUT)
            break;
    }
    int status = w->done ? w->status : VD_ETIMEOUT;
    waiter_unref_locked(w);
    return status ? vd__api_cluster_unconfirmed(name, status, err) : 0;
}

/* ---- routes ------------------------------------------------------------------------------ */

static void status(struct vd_http_req *r, void *ctx)
{
    struct vd_buf b;
    vd_buf_init(&b);
    vd_cluster_status_json(vd__api.cluster, &b);
    vd__api_reply_buf(r, &b);
}

/*
 * Checks a cluster address "host:port": host is an IPv4 address, a DNS name, or an IPv6 address
 * in brackets; port is 1-65535. Returns 0 or VD_EINVAL with err naming what is wrong.
 */
static int check_hostport(const char *a, struct vd_err *err)
{
    size_t n = strlen(a);
    if (n == 0 || n > 261)
        return vd_errf(err, VD_EINVAL, "'address' must be \"host:port\" (1-261 characters)");
    const char *colon, *host = a;
    size_t hlen;
    if (a[0] == '[') {
        const char *close = strchr(a, ']');
        if (!close || close[1] != ':')
            return vd_errf(err, VD_EINVAL,
                           "'address' '%s': an IPv6 address must be written [addr]:port", a);
        char ip[64];
        hlen = (size_t)(close - a - 1);
        if (hlen == 0 || hlen >= sizeof ip)
            return vd_errf(err, VD_EINVAL, "'address' '%s': bad IPv6 address", a);
        memcpy(ip, a + 1, hlen);
        ip[hlen] = 0;
        struct in6_addr a6;
        if (inet_pton(AF_INET6, ip, &a6) != 1)
            return vd_errf(err, VD_EINVAL, "'address' '%s': bad IPv6 address", a);
        colon = close + 1;
    } else {
        colon = strrchr(a, ':');
        if (!colon)
            return vd_errf(err, VD_EINVAL, "'address' '%s' has no port: expected \"host:port\"", a);
        hlen = (size_t)(colon - a);
        if (memchr(a, ':', hlen))
            return vd_errf(err, VD_EINVAL,
                           "'address' '%s': an IPv6 address must be written [addr]:port", a);
        if (hlen == 0 || hlen > 253)
            return vd_errf(err, VD_EINVAL, "'address' '%s' has no host: expected \"host:port\"", a);
        for (size_t i = 0; i < hlen; i++) {
            char ch = host[i];
            bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                      (ch >= '0' && ch <= '9') || ch == '.' || ch == '-';
            if (!ok || (i == 0 && ch == '-'))
                return vd_errf(err, VD_EINVAL,
                               "'address' '%s': the host must be an IP address or a DNS name", a);
        }
    }
    const char *port = colon + 1;
    uint64_t p;
    if (vd_pid_parse_u64(port, strlen(port), &p) || p < 1 || p > 65535)
        return vd_errf(err, VD_EINVAL, "'address' '%s': the port must be a number 1-65535", a);
    return 0;
}

static void add_node(struct vd_http_req *r, void *ctx)
{
    cJSON *body = vd__api_body(r, false);
    if (!body)
        return;
    struct vd_err e;
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(body, "address");
    if (!a || cJSON_IsNull(a)) {
        vd_errf(&e, VD_EINVAL,
                "missing field 'address' (the new node's cluster address, "
                "\"host:port\")");
        goto out_reply_err;
    }
    if (!cJSON_IsString(a)) {
        vd_errf(&e, VD_EINVAL, "'address' must be a string \"host:port\"");
        goto out_reply_err;
    }
    if (check_hostport(a->valuestring, &e))
        goto out_reply_err;
    struct relay *rl = relay_new(vd__api_meta_done, r, &e);
    if (!rl)
        goto out_reply_err;
    if (vd_cluster_add_node(vd__api.cluster, a->valuestring, relay_done, rl, &e)) {
        free(rl);
        goto out_reply_err;
    }
    cJSON_Delete(body);
    return;
out_reply_err:
    cJSON_Delete(body);
    vd_http_reply_err(r, &e);
}

static void remove_node(struct vd_http_req *r, void *ctx)
{
    const char *s = vd_http_param(r, "id");
    uint64_t id;
    if (!s || vd_pid_parse_u64(s, strlen(s), &id)) {
        vd_http_reply_error(r, 400, "node id '%s' is not a decimal unsigned 64-bit integer",
                            s ? s : "");
        return;
    }
    struct vd_err e;
    struct relay *rl = relay_new(vd__api_meta_done, r, &e);
    if (!rl) {
        vd_http_reply_err(r, &e);
        return;
    }
    if (vd_cluster_remove_node(vd__api.cluster, id, relay_done, rl, &e)) {
        free(rl);
        vd_http_reply_err(r, &e);
    }
}

/* ---- anti-entropy repair ---------------------------------------------------------------- */

static void repair_report_json(struct vd_buf *b, const struct vd_cluster_repair_report *rep)
{
    vd_buf_printf(b,
                  "{\"repair_id\":%llu,\"ranges\":%llu,\"ranges_failed\":%llu,"
                  "\"leaves_differing\":%llu,\"points_sent\":%llu}",
                  (unsigned long long)rep->id, (unsigned long long)rep->ranges,
                  (unsigned long long)rep->ranges_failed,
                  (unsigned long long)rep->leaves_differing,
                  (unsigned long long)rep->points_sent);
}

static void repair_done(int status, const struct vd_err *err,
                        const struct vd_cluster_repair_report *rep, void *ctx)
{
    struct vd_http_req *r = ctx;
    if (status) {
        vd__api_meta_done(status, err, 0, r); /* the error reply */
        return;
    }
    struct vd_buf b;
    vd_buf_init(&b);
    repair_report_json(&b, rep);
    vd__api_reply_buf(r, &b);
}

/*
 * POST /cluster/repair[?wait=true], body optional: {"collection": "name"}. Without wait the run
 * is queued and the answer is 202 with its id (GET /cluster shows its progress); with wait the
 * answer comes once that run ended, with its report.
 */
static void repair(struct vd_http_req *r, void *ctx)
{
    struct vd_err e;
    const char *wq = vd_http_query(r, "wait");
    bool wait = false;
    if (wq && (!strcmp(wq, "true") || !wq[0]))
        wait = true;
    else if (wq && strcmp(wq, "false")) {
        vd_http_reply_error(r, 400,
                            "query parameter 'wait': '%.64s' is not allowed; expected 'true' or "
                            "'false'",
                            wq);
        return;
    }
    cJSON *body = vd__api_body(r, true);
    if (!body)
        return;
    const char *coll = NULL;
    for (const cJSON *it = body->child; it; it = it->next) {
        if (strcmp(it->string, "collection")) {
            vd_errf(&e, VD_EINVAL, "unknown field '%.64s': the body takes only 'collection'",
                    it->string);
            goto out_reply_err;
        }
        if (cJSON_IsNull(it))
            continue;
        if (!cJSON_IsString(it)) {
            vd_errf(&e, VD_EINVAL, "'collection' must be a collection name (a string)");
            goto out_reply_err;
        }
        if (vd_db_check_name(it->valuestring, &e))
            goto out_reply_err;
        coll = it->valuestring;
    }
    uint64_t id;
    if (vd_cluster_repair(vd__api.cluster, coll, wait ? repair_done : NULL, r, &id, &e))
        goto out_reply_err;
    cJSON_Delete(body);
    if (!wait) {
        struct vd_buf b;
        vd_buf_init(&b);
        vd_buf_printf(&b, "{\"result\":{\"repair_id\":%llu},\"status\":\"accepted\",\"time\":0}",
                      (unsigned long long)id);
        vd_http_reply_raw(r, 202, "application/json", &b);
        vd_buf_release(&b);
    }
    return;
out_reply_err:
    cJSON_Delete(body);
    vd_http_reply_err(r, &e);
}

/*
 * GET /collections/{name}/cluster/local[?records=true]: what this node itself stores of the
 * collection, read from its own database and from no other node: live points, tombstones, and a
 * BLAKE2b-256 digest over every stored record (id and the record's bytes, in id order, tombstones
 * included). Two replicas holding the same records byte for byte show the same digest, so an
 * operator (or a test) can check that replicas converged, e.g. after a repair. With records=true
 * the answer lists each record (id, version, tombstone, the first 16 bytes of its BLAKE2b-256) to
 * find where two differ; it reads the whole collection in one read snapshot and answers it in one
 * reply, so it is for inspection, not for large collections.
 */
struct local_scan {
    crypto_generichash_state all;
    struct vd_buf *list; /* NULL unless records=true */
    uint64_t points, tombstones;
    bool first;
};

static int local_one(const struct vd_pid *id, const uint8_t *rec, size_t len, void *ctx)
{
    struct local_scan *ls = ctx;
    struct vd_record r;
    struct vd_rvec vecs[VD_RECORD_MAX_VECTORS];
    if (vd_record_decode(rec, len, &r, vecs))
        return VD_ECORRUPT;
    char ids[VD_PID_STR_MAX];
    vd_pid_format(id, ids);
    uint8_t n[8];
    vd_be64_put(n, len);
    /* the id's text and the length frame each record: no two sequences hash alike */
    crypto_generichash_update(&ls->all, (const uint8_t *)ids, strlen(ids) + 1);
    crypto_generichash_update(&ls->all, n, sizeof n);
    crypto_generichash_update(&ls->all, rec, len);
    if (r.tombstone)
        ls->tombstones++;
    else
        ls->points++;
    if (ls->list) {
        uint8_t h[32];
        char hex[33];
        crypto_generichash(h, sizeof h, rec, len, NULL, 0);
        sodium_bin2hex(hex, sizeof hex, h, 16);
        vd_buf_printf(ls->list,
                      "%s{\"id\":\"%s\",\"version\":{\"hlc\":%llu,\"node\":%llu},"
                      "\"tombstone\":%s,\"hash\":\"%s\"}",
                      ls->first ? "" : ",", ids, (unsigned long long)r.version.hlc,
                      (unsigned long long)r.version.node, r.tombstone ? "true" : "false", hex);
        ls->first = false;
    }
    return 0;
}

static void coll_local(struct vd_http_req *r, void *ctx)
{
    const char *rq = vd_http_query(r, "records");
    bool list = rq && (!strcmp(rq, "true") || !rq[0]);
    if (rq && !list && strcmp(rq, "false")) {
        vd_http_reply_error(r, 400,
                            "query parameter 'records': '%.64s' is not allowed; expected 'true' "
                            "or 'false'",
                            rq);
        return;
    }
    struct vd_coll *c = vd__api_coll(r);
    if (!c)
        return;
    struct vd_buf recs, b;
    vd_buf_init(&recs);
    vd_buf_init(&b);
    struct local_scan ls = {.list = list ? &recs : NULL, .first = true};
    crypto_generichash_init(&ls.all, NULL, 0, 32);
    int rc = vd_db_scan_records(c, NULL, local_one, &ls);
    vd_db_coll_put(c);
    if (rc) {
        vd_buf_release(&recs);
        vd_http_reply_error(r, rc == VD_ECORRUPT ? 500 : vd_err_http_status(rc),
                            "reading this node's records failed: %s", vd_strerror(rc));
        return;
    }
    uint8_t d[32];
    char hex[65];
    crypto_generichash_final(&ls.all, d, sizeof d);
    sodium_bin2hex(hex, sizeof hex, d, sizeof d);
    vd_buf_printf(&b, "{\"peer_id\":%llu,\"points\":%llu,\"tombstones\":%llu,\"digest\":\"%s\"",
                  (unsigned long long)vd_cluster_node_id(vd__api.cluster),
                  (unsigned long long)ls.points, (unsigned long long)ls.tombstones, hex);
    if (list) {
        vd_buf_puts(&b, ",\"records\":[");
        vd_buf_append(&b, recs.data, recs.len);
        vd_buf_puts(&b, "]");
        if (!vd_buf_ok(&recs))
            b.oom = true;
    }
    vd_buf_puts(&b, "}");
    vd_buf_release(&recs);
    vd__api_reply_buf(r, &b);
}

/*
 * GET /collections/{name}/cluster in Qdrant's shape. vectord spreads a collection over the ring
 * rather than over numbered shards, so it reports one shard, 0: this node's copy (the points it
 * stores) as the local shard and every other member of the ring as a remote replica with its
 * state (Active: heard from lately; Dead: not; joining members hold no range and are left out).
 */
static void coll_cluster(struct vd_http_req *r, void *ctx)
{
    struct vd_coll *c = vd__api_coll(r);
    if (!c)
        return;
    struct vd_coll_stats st;
    vd_db_coll_stats(c, &st);
    vd_db_coll_put(c);
    uint64_t self = vd_cluster_node_id(vd__api.cluster);
    struct vd_buf b;
    vd_buf_init(&b);
    vd_buf_printf(&b,
                  "{\"peer_id\":%llu,\"shard_count\":1,\"local_shards\":[{\"shard_id\":0,"
                  "\"points_count\":%llu,\"state\":\"Active\"}],\"remote_shards\":[",
                  (unsigned long long)self, (unsigned long long)st.points);
    /* a cluster has at most VD_RAFT_MAX_NODES (16) members */
    struct vd_cluster_member m[64];
    size_t n = vd_cluster_members(vd__api.cluster, m, 64);
    n = n < 64 ? n : 64;
    bool first = true;
    for (size_t i = 0; i < n; i++) {
        if (m[i].id == self || m[i].state == VD_CLUSTER_JOINING)
            continue;
        vd_buf_printf(&b, "%s{\"shard_id\":0,\"peer_id\":%llu,\"state\":\"%s\"}",
                      first ? "" : ",", (unsigned long long)m[i].id,
                      m[i].state == VD_CLUSTER_DOWN ? "Dead" : "Active");
        first = false;
    }
    vd_buf_puts(&b, "],\"shard_transfers\":[]}");
    vd__api_reply_buf(r, &b);
}

int vd__api_cluster_routes(struct vd_http *h)
{
    int rc;
    if ((rc = vd_http_route(h, "GET", "/cluster", VD_ROLE_RO, status, NULL)) ||
        (rc = vd_http_route(h, "POST", "/cluster/nodes", VD_ROLE_ADMIN, add_node, NULL)) ||
        (rc = vd_http_route(h, "DELETE", "/cluster/nodes/{id}", VD_ROLE_ADMIN, remove_node, NULL)) ||
        (rc = vd_http_route(h, "POST", "/cluster/repair", VD_ROLE_ADMIN, repair, NULL)) ||
        (rc = vd_http_route(h, "GET", "/collections/{name}/cluster/local", VD_ROLE_RO,
                            coll_local, NULL)) ||
        (rc = vd_http_route(h, "GET", "/collections/{name}/cluster", VD_ROLE_RO, coll_cluster,
                            NULL)))
        return rc;
    return 0;
}
