/*
 * vectord cluster: the node's membership in a cluster. A loop thread (libuv) drives the Raft core
 * (include/vectord/raft.h) with its log in LMDB (include/vectord/raftlog.h), talks to peers over
 * the framed TCP transport, and applies the metadata state machine (members, ring tokens,
 * collection schemas and their payload indexes) to the local database. HTTP threads call the
 * functions below; they never block: each takes a completion that runs later, on the loop thread
 * or on the storage writer thread, and must not block either.
 *
 * Lifecycle: a node with no Raft state and no join address bootstraps a one-node cluster with
 * itself as the only voter, adopting the collections it already holds. With a join address it
 * starts empty and asks that member to add it; the leader adds it as a non-voter, promotes it
 * once it has caught up, and every node learns its address through the state machine. Node
 * identity (the data environment's node id) and membership survive restarts.
 *
 * Metadata changes (collections, members) may be asked of any node: a follower forwards them to
 * the leader and waits through elections up to the request deadline; the completion runs once
 * the change is applied on this node, so a client that got 200 from node A finds the collection
 * on A at once.
 */
#ifndef VECTORD_CLUSTER_H
#define VECTORD_CLUSTER_H

#include "vectord/core.h"
#include "vectord/db.h"
#include "vectord/json.h"

struct vd_cluster_opts {
    struct vd_db *db;           /* not owned; outlives the cluster */
    const char *data_dir;       /* the Raft environment is <data_dir>/raft */
    const char *bind;           /* address to listen on for peers */
    uint16_t port;              /* cluster port (0 = ephemeral, tests) */
    const char *advertise;      /* host:port peers use to reach this node; NULL = bind:port
                                   (or 127.0.0.1:port when bind is a wildcard) */
    const char *http_advertise; /* host:port of this node's REST API, shown in GET /cluster */
    const char *join;           /* cluster address of a member, or NULL */
    const char *secret;         /* cluster secret, or NULL (loopback peers only) */
    bool refuse_peers;          /* accept no peer at all (API keys but no secret to use) */
    uint32_t election_timeout_ms; /* 0 = 1000 */
    uint32_t heartbeat_ms;        /* 0 = 100 */
    uint32_t request_timeout_ms;  /* deadline of a metadata change or sync; 0 = 10000 */
    uint32_t snapshot_every;      /* applied entries between log compactions; 0 = 1024 */
    uint64_t max_clock_offset_ms; /* --max-clock-offset; 0 = VD_MAX_CLOCK_OFFSET_MS_DEFAULT */
    uint64_t hint_window_ms;      /* --hint-window: older hints are dropped as expired and their
                                     target marked needs-repair; 0 = VD_HINT_WINDOW_MS_DEFAULT */
    uint64_t repair_interval_ms;  /* --repair-interval: an anti-entropy repair of every
                                     collection this often; 0 = only when asked */
    bool no_sync;                 /* tests only */
    /* Called at most once, on the loop thread, when this node cannot go on as started: a --join
     * that the cluster refuses for good (its collections hold points), msg saying why (valid
     * during the call). The process should exit with the message. NULL: logged only. */
    void (*on_fatal)(const char *msg, void *ctx);
    void *fatal_ctx;
};

struct vd_cluster; /* opaque; thread-safe */

#define VD_HINT_WINDOW_MS_DEFAULT (3ULL * 3600 * 1000) /* three hours */

/* Hex length of a secret from vd_cluster_derive_secret. */
#define VD_CLUSTER_DERIVED_SECRET_LEN 64
/*
 * The cluster secret of a node that has API keys but no --cluster-secret: BLAKE2b-256 keyed with
 * SHA-256(admin_key) over the fixed context "vectord cluster secret v1", as lowercase hex, so that
 * peers prove knowledge of the admin key (never the key itself) and the cluster port is no weaker
 * than the REST port. admin_key is the configured text: a plain key, or "sha256:<hex>" (its
 * digest), which derive the same secret. Writes out (NUL-terminated). VD_EINVAL for a malformed
 * digest form, VD_EINTERNAL when libsodium cannot start.
 */
int vd_cluster_derive_secret(const char *admin_key, char out[VD_CLUSTER_DERIVED_SECRET_LEN + 1]);

/* Opens the Raft log, starts the transport and the loop thread, bootstraps or joins as above.
 * Returns once the loop runs (joining continues in the background). Errors: VD_EIO (cannot
 * listen, storage), VD_EINVAL (bad address; a join asked of a node that already belongs to a
 * cluster of more than itself or holds collections: err says which), VD_ENOMEM. */
int vd_cluster_start(const struct vd_cluster_opts *o, struct vd_cluster **out, struct vd_err *err);
/* Stops the loop thread, fails pending requests with VD_ECLOSED, closes the log. NULL ignored. */
void vd_cluster_stop(struct vd_cluster *c);

/* Completion of the asynchronous calls: the same shape as the database's. status 0 or a VD_E*
 * code with err's message; op_id is the Raft index of the change (0 for sync). */
typedef vd_db_done_fn vd_cluster_done_fn;

/* Collection create and delete through Raft. Outcomes: 0; VD_EEXIST / VD_ENOTFOUND as decided
 * when the leader applied the change; VD_ETIMEOUT (no leader within the deadline: HTTP 503 is
 * the caller's choice); VD_ECLOSED. The schema is copied. Returns VD_ENOMEM (done not called)
 * or 0 (done will be called exactly once). */
int vd_cluster_create_collection(struct vd_cluster *c, const struct vd_coll_schema *s,
                                 vd_cluster_done_fn done, void *ctx, struct vd_err *err);
/* Sets the quantization config of collection s->name (incarnation s->incarnation) to s's through
 * the state machine; done once applied locally, as for create. */
int vd_cluster_update_collection(struct vd_cluster *c, const struct vd_coll_schema *s,
                                 vd_cluster_done_fn done, void *ctx, struct vd_err *err);
int vd_cluster_delete_collection(struct vd_cluster *c, const char *name, vd_cluster_done_fn done,
                                 void *ctx, struct vd_err *err);
/* Payload index declarations through Raft, so every node holds the same indexes: set declares
 * (or retypes) the index on `field` of collection `coll`, drop removes it. Done runs once the
 * change is applied on this node, its local index included (built or dropped). Outcomes: 0;
 * VD_ENOTFOUND (no such collection; drop: no such index, naming it); VD_ERANGE (the collection
 * already has 64 indexes); VD_EINVAL (a key the database refuses: check it first with
 * vd_db_pindex_check_field); VD_ETIMEOUT; VD_ECLOSED. Strings are copied. Returns VD_ENOMEM
 * (done not called) or 0 (done will be called exactly once). */
int vd_cluster_set_payload_index(struct vd_cluster *c, const char *coll, const char *field,
                                 enum vd_db_pindex_type type, vd_cluster_done_fn done, void *ctx,
                                 struct vd_err *err);
int vd_cluster_drop_payload_index(struct vd_cluster *c, const char *coll, const char *field,
                                  vd_cluster_done_fn done, void *ctx, struct vd_err *err);
/* Linearizable barrier (ReadIndex): done once this node has applied everything committed before
 * the call, so a collection created anywhere before is visible here. Waits for a leader at most
 * timeout_ms (0 = the request deadline), then VD_ETIMEOUT. */
int vd_cluster_sync(struct vd_cluster *c, uint32_t timeout_ms, vd_cluster_done_fn done, void *ctx,
                    struct vd_err *err);
/* Adds the node listening at addr (its cluster address): the leader contacts it, and the node
 * joins if it is fresh (no collections, alone in its own cluster). Done once it is a voter.
 * Errors through done: VD_EINVAL (not reachable or not fresh: err says which), VD_EEXIST (a
 * member already, or a collection holds points: ownership would move without the points, so
 * membership changes wait until points stream to new owners; err says which). */
int vd_cluster_add_node(struct vd_cluster *c, const char *addr, vd_cluster_done_fn done, void *ctx,
                        struct vd_err *err);
/* Removes member id (a leader hands leadership over first). VD_ENOTFOUND for an unknown id,
 * VD_EINVAL for the last voter, VD_EEXIST while a collection holds points (as for add). */
int vd_cluster_remove_node(struct vd_cluster *c, uint64_t id, vd_cluster_done_fn done, void *ctx,
                           struct vd_err *err);

/* ---- the data plane: points over the ring ----
 * A coordinator stamps nothing: the caller builds whole point records (vectord/record.h) under
 * a version (vd_hlc_now(), this node's id) and this node carries them to the replicas of each
 * point on its current ring. */

/* Writes n records of collection coll (of that incarnation), each to its replicas; done runs once
 * w replicas of every point hold it durably (w 0: the collection's write_consistency_factor),
 * or with VD_EUNAVAIL and the numbers ("write needs 2 of 3 replicas, 1 answered within 2000
 * ms") when some point could not get them by timeout_ms (0: the node's request timeout); what
 * reached replicas stays and converges (hints). VD_ENOTFOUND when the collection is not that
 * incarnation here. Records are copied. done runs on the loop thread. Errors returned (done not
 * called): VD_EINVAL, VD_ENOMEM, VD_ECLOSED. */
int vd_cluster_write(struct vd_cluster *c, const char *coll, uint64_t incarnation,
                     const uint8_t *const *recs, const size_t *lens, size_t n, unsigned w,
                     uint32_t timeout_ms, vd_cluster_done_fn done, void *ctx, struct vd_err *err);

/* A record a read returns: p[len] is the encoded record, p NULL when the point is absent or
 * deleted. Valid during the callback only. */
struct vd_cluster_rec {
    const uint8_t *p;
    uint32_t len;
};
typedef void (*vd_cluster_read_fn)(int status, const struct vd_err *err,
                                   const struct vd_cluster_rec *recs, size_t n, void *ctx);
/* Reads ids of collection coll at r replicas per point (0: a quorum of its replication factor)
 * and answers the newest version of each, in request order (recs NULL unless status is 0);
 * stale replicas are repaired (blocking when r is a quorum). Errors and threads as
 * vd_cluster_write. */
int vd_cluster_read(struct vd_cluster *c, const char *coll, uint64_t incarnation,
                    const struct vd_pid *ids, size_t n, unsigned r, uint32_t timeout_ms,
                    vd_cluster_read_fn done, void *ctx, struct vd_err *err);

/* ---- searches, scroll and count over the ring ----
 * Two-phase (DESIGN §6, docs/cluster.md): r replicas of every range of the ring list their best
 * candidates as (id, version, score); every candidate not listed at one version by all of them is
 * verified with the others (newest version, tombstone, filter match, score), so a deleted point,
 * or a stale copy that matches a filter the newest version does not, is never an answer. A range
 * whose list ends above what the merged result needs is asked again with twice the limit (at
 * most three rounds). Then the records of the result are read at r (only when a payload or a
 * vector is asked for). Stale replicas met on the way are repaired in the background.
 *
 * Answers are struct vd_db_record arrays shaped as the local reads' (id, version, score,
 * payload, vector), so one renderer serves both: score is in the metric's own sense (similarity;
 * distance for Euclid and Manhattan), seq is 0 (a change counter is one node's), tombstone is
 * false, payload is set only with with_payload and vec only with with_vector. The array is valid
 * during the callback only. Callbacks run on the loop thread and must not block. Errors
 * returned (the callback then never runs): VD_EINVAL (bad arguments, a filter that does not
 * parse), VD_ENOMEM, VD_ECLOSED. Through the callback: VD_ENOTFOUND (the collection is not that
 * incarnation here), VD_EUNAVAIL with the numbers ("search needs 2 of 3 replicas of every range,
 * ..."), VD_EINVAL / storage errors a replica reported (err says which), VD_ECLOSED. */
typedef void (*vd_cluster_records_fn)(int status, const struct vd_err *err,
                                      const struct vd_db_record *recs, size_t n, void *ctx);

struct vd_cluster_search {
    /* query (the collection's dim values, raw: replicas normalise it for Cosine), limit (>= 1),
     * offset, ef, exact, quant_ignore, quant_no_rescore, oversampling, has_threshold and
     * score_threshold (applied to the merged result) and exclude, as for vd_db_search; its
     * filter and ranges are not read. Copied at the call. */
    const struct vd_db_search *s;
    uint32_t dim;         /* values in s->query: the collection's size */
    const cJSON *filter;  /* the request's "filter" object (Qdrant's syntax), or NULL (or a JSON
                             null) for none; copied as text at the call */
    bool with_payload;    /* answer each record's payload */
    bool with_vector;     /* answer each record's vector */
    unsigned r;           /* replicas per range: 0 = a quorum of the replication factor */
    uint32_t timeout_ms;  /* 0 = the node's request timeout */
};
/* The verified top s->offset .. s->offset + s->limit of the whole collection, best first. */
int vd_cluster_search(struct vd_cluster *c, const char *coll, uint64_t incarnation,
                      const struct vd_cluster_search *q, vd_cluster_records_fn done, void *ctx,
                      struct vd_err *err);

struct vd_cluster_scroll {
    const struct vd_pid *from; /* first id of the page (inclusive), NULL = the first; copied */
    uint32_t limit;            /* >= 1 */
    const cJSON *filter;       /* as for vd_cluster_search */
    bool with_payload, with_vector;
    unsigned r;
    uint32_t timeout_ms;
};
/* next: the id the next page starts from, NULL after the last page; valid during the call. */
typedef void (*vd_cluster_scroll_fn)(int status, const struct vd_err *err,
                                     const struct vd_db_record *recs, size_t n,
                                     const struct vd_pid *next, void *ctx);
/* One page of the live points matching the filter in id order (Qdrant's scroll order) over the
 * whole ring, each id once, tombstones and stale matches verified away. */
int vd_cluster_scroll(struct vd_cluster *c, const char *coll, uint64_t incarnation,
                      const struct vd_cluster_scroll *q, vd_cluster_scroll_fn done, void *ctx,
                      struct vd_err *err);

typedef void (*vd_cluster_count_fn)(int status, const struct vd_err *err, uint64_t count,
                                    void *ctx);
/* The exact number of live points matching filter (NULL: all) at r replicas per range: the ids
 * are scrolled through and verified as for vd_cluster_scroll, so it costs a pass over the
 * matching ids (Qdrant's approximate count, exact: false, is the caller's to serve otherwise). */
int vd_cluster_count(struct vd_cluster *c, const char *coll, uint64_t incarnation,
                     const cJSON *filter, unsigned r, uint32_t timeout_ms, vd_cluster_count_fn done,
                     void *ctx, struct vd_err *err);

/* The clock rule for data writes (docs/cluster.md, "The clock guarantee"): 0 while this node's
 * clock is within max_clock_offset_ms of a majority of the members, as estimated from pings to
 * the members heard from in the last few seconds; else VD_EUNAVAIL (HTTP 503) with err saying
 * "clock skew: ..." and the offset. Any thread; does not block. A node alone is never skewed. */
int vd_cluster_clock_check(struct vd_cluster *c, struct vd_err *err);

/* Hinted handoff as this node sees it: hints stored and not yet replayed (all targets), and
 * since start the hints replayed (delivered, or rewritten to the point's current replicas),
 * expired (past the hint window) and dropped (over a cap, for a deleted collection or for a
 * node that left). Any thread. */
struct vd_cluster_hint_stats {
    uint64_t pending, replayed, expired, dropped;
};
void vd_cluster_hint_stats(struct vd_cluster *c, struct vd_cluster_hint_stats *out);
/* Anti-entropy repair (docs/cluster.md, "Repair"): the replicas of every ring range this node
 * replicates compare hash trees of what they hold and exchange only the records that differ, the
 * newest version (tombstones included) going to every replica that lacks it. A run covers one
 * collection (coll) or all (NULL); runs go one at a time, and an ask while one is queued joins it
 * (widened to every collection when the two differ). *id gets the run's id. With done, done runs
 * once on the loop thread when that run ended: status 0 with its report (ranges that could not be
 * repaired, a replica being down, are counted in it, not an error), or VD_ECLOSED / VD_ENOMEM
 * with report NULL. Errors returned (done not called): VD_ENOTFOUND (no such collection),
 * VD_ECLOSED, VD_ENOMEM. Any thread; does not block. */
struct vd_cluster_repair_report {
    uint64_t id;
    uint64_t ranges;           /* ranges compared */
    uint64_t ranges_failed;    /* of those, not repaired (a replica did not answer) */
    uint64_t leaves_differing; /* hash tree leaves that differed */
    uint64_t points_sent;      /* records written to replicas that lacked them */
};
typedef void (*vd_cluster_repair_fn)(int status, const struct vd_err *err,
                                     const struct vd_cluster_repair_report *report, void *ctx);
int vd_cluster_repair(struct vd_cluster *c, const char *coll, vd_cluster_repair_fn done, void *ctx,
                      uint64_t *id, struct vd_err *err);

/* Appends the cluster's Prometheus series for GET /metrics (Raft state, members, peers' round
 * trips, coordinated requests by outcome, read repairs, hints, anti-entropy repair;
 * docs/operations.md lists them). Any thread. */
void vd_cluster_metrics(struct vd_cluster *c, struct vd_buf *out);

/* Appends the `result` object of GET /cluster (Qdrant's shape plus `nodes`, see
 * docs/cluster.md) as seen by this node right now. */
void vd_cluster_status_json(struct vd_cluster *c, struct vd_buf *out);
/* A member as this node last saw it (refreshed with GET /cluster's cache, about every 250 ms). */
enum vd_cluster_member_state {
    VD_CLUSTER_UP,      /* in the ring and heard from lately (this node always is) */
    VD_CLUSTER_DOWN,    /* in the ring, not heard from for a while */
    VD_CLUSTER_JOINING, /* catching up; holds no range yet */
    VD_CLUSTER_LEAVING, /* still in the ring until its removal commits */
};
struct vd_cluster_member {
    uint64_t id;
    enum vd_cluster_member_state state;
};
/* Copies up to max members, in id order, into out; returns how many there are (which may be more
 * than max). Any thread. */
size_t vd_cluster_members(struct vd_cluster *c, struct vd_cluster_member *out, size_t max);
/* The share of the ring's hash space (0..1) this node replicates at replication factor rf, from
 * the published ring: the sum of the arcs it is one of the rf replicas of. Points hash evenly, so
 * a collection's points number about (this node's points) / share. 1 without a ring. Any
 * thread. */
double vd_cluster_ring_share(struct vd_cluster *c, unsigned rf);
/* True when this node is one of the rf replicas of every hash of the published ring (the ring
 * has at most rf members, this node among them): a read that needs one replica per range is
 * answered by this node's own database. Any thread. */
bool vd_cluster_holds_all(struct vd_cluster *c, unsigned rf);
/* True when this node is the cluster's only member (none joining or leaving): every point is
 * here and nowhere else. Any thread. */
bool vd_cluster_alone(struct vd_cluster *c);
uint64_t vd_cluster_node_id(const struct vd_cluster *c);
/* The cluster port this node listens on (the kernel's choice when opts.port was 0). */
uint16_t vd_cluster_port(const struct vd_cluster *c);

#endif
