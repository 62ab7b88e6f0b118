/*
 * The REST API: Qdrant-compatible collection, point and search endpoints plus vectord's own bulk
 * endpoints, registered on an HTTP server and served from a local database.
 */
#ifndef VECTORD_API_H
#define VECTORD_API_H

#include "vectord/db.h"
#include "vectord/http.h"

/* Collection metadata changes (create, delete) go through this interface so that a cluster can
 * put consensus behind them without touching the handlers. The done callback runs once the
 * change is applied on this node (any thread). */
struct vd_meta_ops {
    int (*create_collection)(void *impl, const struct vd_coll_schema *s, vd_db_done_fn done,
                             void *ctx, struct vd_err *err);
    int (*delete_collection)(void *impl, const char *name, vd_db_done_fn done, void *ctx,
                             struct vd_err *err);
    /* sets the quantization config of s->name (incarnation s->incarnation) to s's; NULL: a
     * PATCH of the quantization config answers that it cannot be changed */
    int (*update_collection)(void *impl, const struct vd_coll_schema *s, vd_db_done_fn done,
                             void *ctx, struct vd_err *err);
    void *impl;
};

/* Single-node metadata: applied directly to the local database. */
void vd_api_local_meta(struct vd_db *db, struct vd_meta_ops *out);

/* Per-request options of a data operation, read from the query string by vd_api_data_req_parse
 * (Qdrant's `consistency` and `timeout`, and `wait`). */
struct vd_data_req {
    /* Replicas of each point that must answer, already resolved against the collection's
     * replication factor (1..RF); 0 = the default: a quorum for reads, the collection's
     * write_consistency_factor for writes. Ignored on a node without a cluster. */
    unsigned consistency;
    uint32_t timeout_ms; /* the request's deadline; 0 = the node's default */
    /* writes: false answers Qdrant's "acknowledged" (in a cluster) instead of "completed"; the
     * write is durable on the replicas asked for either way */
    bool wait;
    /* Set by the handler for an operation given a filter: the request's "filter" object as
     * sent (NULL: none; borrowed for the call), beside the parsed struct vd_filter, for an
     * implementation that sends the filter on to other nodes. */
    const cJSON *filter;
    /* searches and scroll: whether the reply shows payloads (false: they need not be read) */
    bool with_payload;
    /* A write that reads first (a payload edit): the replicas to read, as `consistency` for a
     * read; 0 = a quorum. An update batch reads enough of them to see its own earlier writes
     * whatever their W. */
    unsigned read_consistency;
};

/* Reads the query parameters `consistency` (an integer 1..rf, "majority", "quorum" (both
 * floor(rf/2)+1) or "all" (rf)), `timeout` (whole seconds, 1..3600) and `wait` ("true" or
 * "false"); each NULL when absent. rf is the collection's replication factor, 1 on a node
 * without a cluster. Fills *out (defaults for what is absent). VD_EINVAL (HTTP 400) with err
 * naming the parameter and its allowed values; *out is then unspecified. Pure; thread-safe. */
int vd_api_data_req_parse(const char *consistency, const char *timeout, const char *wait,
                          unsigned rf, struct vd_data_req *out, struct vd_err *err);

/* What an asynchronous read answers: recs[n] (retrieve, scroll; owned by the callee, valid
 * during the callback), next (a scroll page with more after it: where the next starts, else
 * NULL) and count (count). */
struct vd_data_result {
    const struct vd_db_record *recs;
    size_t n;
    const struct vd_pid *next;
    uint64_t count;
};
/* status 0 with res, or a VD_E* code with err saying why (res NULL). */
typedef void (*vd_data_read_fn)(int status, const struct vd_err *err,
                                const struct vd_data_result *res, void *ctx);

/* Point reads and writes go through this interface, the data counterpart of vd_meta_ops, so the
 * handlers are the same on one node and in a cluster (where an implementation routes each
 * request through the coordinator to the replicas). c is the collection the handler looked up
 * (borrowed for the call); o the request's options (borrowed for the call). Writes follow
 * vd_db's contracts: 0 means done will run once (any thread), an error means it will not and
 * err says why. Reads return records (vectord/db.h) that the caller frees with
 * vd_db_records_free; they never return tombstones. A read may block the calling thread until
 * the replicas answered or o's deadline passed. */
struct vd_data_ops {
    /* Stamps a new version on each point and writes it whole (vd_db_upsert). */
    int (*upsert)(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                  const struct vd_db_point *pts, size_t n, vd_db_done_fn done, void *ctx,
                  struct vd_err *err);
    /* Applies encoded whole records under the versions they carry (vd_db_apply). */
    int (*apply)(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                 const uint8_t *const *recs, const size_t *lens, size_t n, vd_db_done_fn done,
                 void *ctx, struct vd_err *err);
    /* Deletes ids[n], or every point matching f when f is set. */
    int (*delete_points)(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                         const struct vd_pid *ids, size_t n, const struct vd_filter *f,
                         vd_db_done_fn done, void *ctx, struct vd_err *err);
    /* A payload edit of ids[n], or of the points matching f when f is set (vd_db_payload_edit). */
    int (*payload_edit)(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                        enum vd_db_payload_op op, const cJSON *payload_or_keys,
                        const struct vd_pid *ids, size_t n, const struct vd_filter *f,
                        vd_db_done_fn done, void *ctx, struct vd_err *err);
    /* Live records of ids, in request order, each once (vd_db_retrieve). */
    int (*retrieve)(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                    const struct vd_pid *ids, size_t n, bool with_vector,
                    struct vd_db_record **out, size_t *n_out, struct vd_err *err);
    /* Scored records, best first (vd_db_search). */
    int (*search)(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                  const struct vd_db_search *s, bool with_vector, struct vd_db_record **out,
                  size_t *n_out, struct vd_err *err);
    /* A page of records in id order (vd_db_scroll). */
    int (*scroll)(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                  const struct vd_pid *from, uint32_t limit, const struct vd_filter *f,
                  bool with_vector, struct vd_db_record **out, size_t *n_out,
                  struct vd_pid *next, bool *has_next, struct vd_err *err);
    /* Live points matching f (NULL = all). */
    int (*count)(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                 const struct vd_filter *f, uint64_t *out, struct vd_err *err);
    /* Optional asynchronous forms of retrieve, search, scroll and count, for an implementation
     * whose reads wait on other nodes: a handler that can use them holds no thread meanwhile.
     * Same arguments and results as above (s and its query are read during the call only),
     * delivered to done (once, any thread); an error returned means done will not run. NULL:
     * the synchronous forms are used. */
    int (*search_async)(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                        const struct vd_db_search *s, bool with_vector, vd_data_read_fn done,
                        void *ctx, struct vd_err *err);
    int (*retrieve_async)(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                          const struct vd_pid *ids, size_t n, bool with_vector,
                          vd_data_read_fn done, void *ctx, struct vd_err *err);
    int (*scroll_async)(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                        const struct vd_pid *from, uint32_t limit, const struct vd_filter *f,
                        bool with_vector, vd_data_read_fn done, void *ctx, struct vd_err *err);
    int (*count_async)(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                       const struct vd_filter *f, vd_data_read_fn done, void *ctx,
                       struct vd_err *err);
    void *impl;
};

/* Point reads and writes served by the local database (impl is db, borrowed). */
void vd_api_local_data(struct vd_db *db, struct vd_data_ops *out);

struct vd_cluster;

/* Point reads and writes coordinated by cluster node c over the ring (c borrowed; outlives the
 * server): writes as whole records under versions this node stamps, at the request's
 * consistency or the collection's write_consistency_factor; retrieve by id at the request's
 * consistency or a quorum (the calling thread waits for the replicas, up to the deadline); a
 * payload edit reads at a quorum and writes the edited record whole under a new version; a
 * search, scroll or count is two-phase over the ring at the request's consistency (default a
 * quorum), and a delete or payload edit by filter acts on the ids such a scroll finds. A 503
 * carries the coordinator's numbers. */
void vd_api_cluster_data(struct vd_cluster *c, struct vd_data_ops *out);

/* Cluster metadata: create and delete go through the cluster's Raft group (any node may take
 * them; a follower forwards to the leader). A change that finds no leader within the cluster's
 * deadline completes with VD_EUNAVAIL (HTTP 503) saying so. c is borrowed and must outlive the
 * server. */
void vd_api_cluster_meta(struct vd_cluster *c, struct vd_meta_ops *out);

struct vd_api_opts {
    struct vd_db *db;            /* not owned; outlives the server */
    /* Collection changes. Ignored when `cluster` is set (the cluster's are used); when neither
     * is set, changes go straight to `db`. */
    struct vd_meta_ops meta;
    /* Point reads and writes; when unset (upsert NULL), served by `db` (vd_api_local_data).
     * A cluster node sets vd_api_cluster_data's. */
    struct vd_data_ops data;
    /* Not owned; outlives the server. NULL = a database without a cluster (unit tests): no
     * /cluster routes, and a lookup miss answers 404 at once. When set: the /cluster routes,
     * collection changes through Raft, and a lookup miss first waits (up to 2 s) for this node
     * to catch up with the cluster, so a collection created through another node is never
     * reported missing. */
    struct vd_cluster *cluster;
    size_t max_import_line;      /* longest NDJSON line accepted by import (0 = 64 MiB) */
    /* replication_factor of a collection created without one (--replication-factor); 0 = 1 */
    unsigned replication_factor;
};

/* Registers every route on h. The options are copied. */
int vd_api_register(struct vd_http *h, const struct vd_api_opts *o);

#endif
