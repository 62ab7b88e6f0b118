/*
 * Internals of the cluster node, shared by its files:
 *   node.c           the loop thread, housekeeping, GET /cluster status, start and stop;
 *   node_raft.c      driving the Raft core: persist, send, apply, snapshots; membership steps;
 *   node_reconcile.c making the local database follow the state machine;
 *   node_ops.c       operations asked by other threads, carried to completion on the loop;
 *   node_call.c      calls between nodes (forwarded proposals, joins, invitations) and their codec.
 * Everything here is used on the loop thread only, except where a field says otherwise.
 */
#ifndef VECTORD_NODE_INT_H
#define VECTORD_NODE_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "cluster_int.h"
#include "vectord/cluster.h"
#include "vectord/raft.h"
#include "vectord/raftlog.h"

#define REQ_HDR 16
#define HOUSEKEEPING_MS 50
#define PING_MS 250 /* liveness and clock offsets (vd_clock_peer): a few samples a second */
#define DOWN_AFTER_MS 2500
/* A peer's speculative delay never exceeds this: trips that waited out a stall (a stopped
 * process resumed) must not teach the coordinator to wait seconds before asking another. */
#define SPEC_MAX_MS 500
#define RETRY_MS 3000      /* a forwarded proposal not applied by then is sent again */
#define READ_RETRY_MS 1000 /* a ReadIndex not answered by then is asked again */
#define JOIN_RETRY_MS 500
#define APPLIED_MEMORY 4096 /* recent request headers remembered against duplicates */
#define MAX_MEMBERS VD_RAFT_MAX_NODES
#define ADD_NODE_TIMEOUT_MS 60000
#define INVITE_ANSWER_MS 10000 /* an invited node must answer by then */

enum call_op { CALL_PROPOSE = 1, CALL_JOIN = 2, CALL_INVITE = 3 };

enum op_kind {
    OP_CREATE = 1,
    OP_DELETE,
    OP_SYNC,
    OP_ADD_NODE,
    OP_REMOVE_NODE,
    OP_INTERNAL,
    OP_PINDEX, /* payload index set or drop */
    OP_UPDATE, /* collection quantization config */
    OP_POINTS, /* a collection's flag "has held points", of this node's making */
};
enum op_state {
    ST_NEW = 1,     /* to propose (or forward), or to ask a read index for */
    ST_SENT,        /* proposed here or forwarded to try_leader at last_try */
    ST_WAIT_APPLY,  /* applied in the state machine at index; waits for the database */
    ST_READ,        /* read index asked with read_ctx */
    ST_WAIT_SYNC,   /* read index known (index); waits for the database */
    ST_INVITE,      /* add node: invitation sent, waiting for the reply */
    ST_WAIT_MEMBER, /* add node: waiting for node_id to be UP; remove: to be gone */
};

struct op {
    struct op *next;
    enum op_kind kind;
    enum op_state state;
    uint64_t seq;
    uint8_t *data; /* entry data: header and command (proposals) */
    size_t len;
    uint32_t timeout_ms; /* the deadline's distance from the start, for messages */
    uint64_t deadline, last_try, first_try, try_leader, read_ctx, call_id, index, node_id;
    int result;
    struct vd_err err;
    char addr[256];
    vd_cluster_done_fn done;
    void *ctx;
};

/* An event from another thread: a new operation, or the completion of a database change. */
struct ev {
    struct ev *next;
    struct op *op;
    int status;
    char msg[256];
};

struct applied_req {
    uint64_t origin, seq;
};

/* One change to a local payload index that reconciliation makes (type 0: drop). */
struct idx_action {
    char coll[256];
    char field[VD_STORE_PINDEX_NAME_MAX + 1];
    uint8_t type;
};

struct member_clock {
    uint64_t id;
    uint64_t heard;       /* last frame from it (monotonic ms) */
    uint64_t last_action; /* leader: last membership step taken for it */
    struct vd_clock_peer est; /* its wall clock's offset from ours, from ping round trips */
    struct vd_rtt_window data_rtt; /* its recent read, search and verify round trips */
};

/* What a coordinated request was, and how it ended, as GET /metrics counts them. */
enum vd__req_kind { VD__REQ_WRITE, VD__REQ_READ, VD__REQ_SEARCH, VD__REQ_KINDS };
enum vd__req_outcome {
    VD__OUT_OK,
    VD__OUT_UNAVAILABLE, /* too few replicas answered (or could), before the deadline */
    VD__OUT_TIMEOUT,     /* too few replicas answered by the deadline */
    VD__OUT_NOT_FOUND,   /* the collection (incarnation) is gone */
    VD__OUT_ERROR,       /* anything else: shutdown, out of memory, a malformed request */
    VD__OUTCOMES
};

struct vd_cluster {
    /* set at start, read-only afterwards */
    struct vd_db *db;
    char *data_dir, *advertise, *http_advertise, *bind, *secret;
    uint64_t id;
    uint16_t port;
    uint32_t election_ms, heartbeat_ms, request_ms, snapshot_every;
    uint64_t max_offset_ms; /* --max-clock-offset */
    bool no_sync;
    /* the stored Raft log names this node as the only member: until the log is applied again
     * after a restart, the published view is empty and this answers vd_cluster_alone */
    bool log_alone;

    /* written by the loop, read by any thread: 0 while this node's clock is within max_offset_ms
     * of a majority of the members, else its offset from them in ms (vd_cluster_clock_check) */
    _Atomic int64_t skew_ms;

    /* GET /metrics counters: written by the loop, read by any thread */
    _Atomic uint64_t outcomes[VD__REQ_KINDS][VD__OUTCOMES];
    _Atomic uint64_t read_repairs; /* stale copies a read sent the newest version to */

    /* shared with other threads, under mu */
    pthread_mutex_t mu;
    struct ev *q_head, *q_tail;
    bool stopping;
    struct dreq *dq_head; /* data requests queued for the loop (node_data.c) */
    struct sreq *sq_head; /* searches, scrolls and counts queued for the loop (node_search.c) */
    char *status;    /* cached GET /cluster result */
    char *metrics;   /* cached Raft, member and peer series of GET /metrics, rebuilt with it */
    struct vd_cluster_member *members_seen; /* cached with it (n_seen), for vd_cluster_members */
    size_t n_seen;
    int db_inflight; /* database changes started by reconciliation, not yet completed */
    pthread_cond_t inflight_cv;
    uint64_t next_seq;

    /* loop thread only */
    pthread_t thread;
    uv_loop_t loop;
    uv_async_t async;
    uv_timer_t raft_timer, house_timer;
    struct vd_transport *tp;
    struct vd_raftlog *log;
    struct vd_raft *raft;
    struct vd_meta *meta;
    struct vd_meta_pub meta_pub; /* a copy of meta for other threads, published after changes */
    bool broken; /* the Raft log failed: nothing more is promised */
    bool driving, need_drive;
    struct op *ops; /* pending operations */
    struct vd_data *data;  /* the data transport */
    struct dreq *dreqs;    /* data requests under way */
    struct sreq *sreqs;    /* searches, scrolls and counts under way */
    bool dreqs_open;       /* false once vd__cluster_data_stop ran */
    uint64_t next_ctx, next_call;
    uint64_t catchup; /* last log index at start-up: reconcile once applied reaches it */
    uint64_t synced;  /* the database reflects the state machine up to this index */
    uint64_t last_ping, last_join, last_status, last_points_watch;
    uint64_t seen_term, seen_leader, last_addr_fix;
    uint64_t leader_changes, leader_counted_term; /* terms in which a leader became known */
    char *join; /* where to send join requests (NULL once a member) */
    bool join_asked; /* join came from the start options (--join), not an invitation */
    void (*on_fatal)(const char *msg, void *ctx); /* set at start (vd_cluster_opts) */
    void *fatal_ctx;
    bool was_member;
    struct {
        bool running;
        struct vd_meta_action *acts;
        size_t n, i;
        /* second phase, once the collections match: their payload indexes */
        bool idx_phase;
        struct idx_action *iacts;
        size_t in, ii;
        uint64_t target, retry_at;
    } rec;
    struct vd_hints *hints; /* hint replay (node_hints.c) */
    struct vd_repair *repair; /* anti-entropy repair (node_repair.c) */
    /* placing a data directory's points on the ring (node_place.c): its thread and progress */
    pthread_t place_thread;
    bool place_running;
    pthread_mutex_t place_mu;
    pthread_cond_t place_cv;
    bool place_stop;                 /* under place_mu */
    _Atomic int place_state;         /* enum vd_place_state, read by any thread */
    _Atomic uint64_t place_points;   /* records placed so far */
    _Atomic uint64_t place_dropped;  /* of those, copies dropped (no replica of them) */
    struct applied_req applied[APPLIED_MEMORY];
    size_t applied_pos;
    struct member_clock clocks[MAX_MEMBERS * 2];
    size_t n_clocks;
};

static inline uint64_t vd__cluster_now_ms(void)
{
    return vd_mono_ns() / 1000000u;
}

/* ---- node_call.c: the codec of CALL bodies (big-endian integers, u16-prefixed strings) ---- */
struct rd {
    const uint8_t *p;
    size_t n;
    bool bad; /* a read ran past the end or met bad input: everything read is to be dropped */
};
uint64_t vd__cluster_rd_u64(struct rd *r);
uint8_t vd__cluster_rd_u8(struct rd *r);
/* A length-prefixed string (u16) copied into out[cap] with a NUL; too long is bad input. */
void vd__cluster_rd_str(struct rd *r, char *out, size_t cap);
void vd__cluster_wr_u64(struct vd_buf *b, uint64_t v);
void vd__cluster_wr_str(struct vd_buf *b, const char *s);

/* ---- node_call.c: calls between nodes ---- */
/* Tells the transport the address of every member (the state machine is the directory). */
void vd__cluster_peers_refresh(struct vd_cluster *c);
/* At start, before the log is committed again: the addresses of the members its entries name,
 * stored ones included that were not yet applied (an entry not committed only adds a peer to
 * dial). Without them a cluster restarted whole would never elect a leader: the addresses live in
 * the state the log builds, and nothing is applied before a leader says what is committed. Also
 * sets c->log_alone. */
void vd__cluster_peers_from_log(struct vd_cluster *c, const struct vd_raft_state *st);
/* Sends a CALL with op and args to node `to`, or to whoever listens at addr when addr is set. */
void vd__cluster_send_call(struct vd_cluster *c, uint64_t to, const char *addr, uint64_t call_id,
                           uint8_t op, const struct vd_buf *args);
/* Number of collections in the local database. */
size_t vd__cluster_local_collections(struct vd_cluster *c);
void vd__cluster_raft_config(const struct vd_cluster *c, struct vd_raft_config *cfg);
/* The transport's frame callback (vd_transport_frame_fn). */
void vd__cluster_on_frame(void *ctx, uint64_t from, const char *from_addr, uint8_t type,
                          uint64_t hlc, const uint8_t *body, size_t len);

/* ---- node_raft.c ---- */
/* Runs the Raft core's updates until it has none: persist, send, apply, advance. */
void vd__cluster_drive(struct vd_cluster *c);
void vd__cluster_arm_raft_timer(struct vd_cluster *c);
bool vd__cluster_recently_applied(const struct vd_cluster *c, uint64_t origin, uint64_t seq);
/* True when an entry with this header sits in the log after the applied index. */
bool vd__cluster_in_log_unapplied(struct vd_cluster *c, uint64_t origin, uint64_t seq);
/* Proposes a change of the leader's own making; no operation waits for it. */
void vd__cluster_propose_internal(struct vd_cluster *c, const struct vd_buf *cmd);
/* One step of the leader's membership plan. */
void vd__cluster_membership_step(struct vd_cluster *c, uint64_t now);

/* ---- node_reconcile.c ---- */
/* Starts a reconciliation when the state machine moved past what the database reflects. */
void vd__cluster_reconcile_kick(struct vd_cluster *c);
/* The completion of a database change that reconciliation started (from the queue). */
void vd__cluster_rec_event(struct vd_cluster *c, int status, const char *msg);

/* ---- node_ops.c ---- */
/* Queues an operation of this node's own making (nobody waits for it) proposing cmd (copied).
 * VD_ENOMEM. */
int vd__cluster_op_internal(struct vd_cluster *c, enum op_kind kind, const struct vd_buf *cmd);
/* Proposes the "has held points" flag of a collection whose local copy holds a point; from
 * housekeeping. */
void vd__cluster_points_watch(struct vd_cluster *c, uint64_t now);
/* VD_EEXIST with VD_META_POINTS_REFUSAL ("cannot <what> while collection ... holds points") when
 * a collection has held points as far as this node knows (flags applied, its own copies); else
 * 0. */
int vd__cluster_points_refusal(struct vd_cluster *c, const char *what, struct vd_err *err);
void vd__cluster_op_free(struct op *o);
/* Unlinks o from the pending list, calls its completion with an error and frees it. */
void vd__cluster_op_fail(struct vd_cluster *c, struct op *o, int code, const char *fmt,
                         const char *arg);
/* Moves every pending operation on as far as it can go; called after anything changed. */
void vd__cluster_ops_progress(struct vd_cluster *c);
/* Entry data: header (origin, seq) then the command (*out: caller frees). VD_ENOMEM. */
int vd__cluster_entry_data(uint64_t origin, uint64_t seq, const struct vd_buf *cmd, uint8_t **out,
                           size_t *len);

/* ---- node_data.c: the coordinator side of the data plane ---- */
struct dreq;
/* Starts the data transport with the replica side as its handler (dreqs open). */
int vd__cluster_data_start(struct vd_cluster *c, struct vd_err *err);
/* Takes the data requests other threads queued. */
void vd__cluster_data_events(struct vd_cluster *c);
/* Deadlines, retries and rerouting after a ring change; from housekeeping. */
void vd__cluster_data_tick(struct vd_cluster *c);
/* Fails every data request (shutdown), then closes the data transport. */
void vd__cluster_data_stop(struct vd_cluster *c);

/* ---- node_hints.c: hint replay ---- */
struct vd_hints;
/* Sets up hint replay with its window (0: hints never expire). VD_ENOMEM. */
int vd__cluster_hints_new(struct vd_cluster *c, uint64_t window_ms);
/* Replays, expires and drops hints as they are due; from housekeeping. */
void vd__cluster_hints_tick(struct vd_cluster *c);
/* Shutdown: batches still in flight end without deleting anything, and none starts. */
void vd__cluster_hints_close(struct vd_cluster *c);
/* Frees the replay state (after the loop stopped). */
void vd__cluster_hints_free(struct vd_cluster *c);
/* Appends the vectord_hints_* series of GET /metrics. Any thread. */
void vd__cluster_hints_metrics(struct vd_cluster *c, struct vd_buf *out);
/* True when node id missed writes that no hint will bring (expired, or over a cap), as this node
 * marked it or as a member heard from lately says it marked it (VD_FRAME_MARKS). Any thread. */
bool vd__cluster_hints_needs_repair(struct vd_cluster *c, uint64_t id);
/* The marks member `from` says it holds (a VD_FRAME_MARKS body). Loop thread. */
void vd__cluster_hints_on_marks(struct vd_cluster *c, uint64_t from, const uint8_t *body,
                                size_t len);

/* Whether node id is marked needs-repair here, and how many times it was marked (*marks): a repair
 * clears the mark only if no new one came since it began. Any thread. */
bool vd__cluster_hints_repair_mark(struct vd_cluster *c, uint64_t id, uint64_t *marks);
/* Clears node id's needs-repair mark unless it was marked again since *marks was read; true when
 * it cleared one. Loop thread. */
bool vd__cluster_hints_repair_clear(struct vd_cluster *c, uint64_t id, uint64_t marks);

/* ---- node_repair.c: anti-entropy repair ---- */
struct vd_repair;
/* Sets up repair, run every interval_ms (0: only when asked). VD_ENOMEM. */
int vd__cluster_repair_new(struct vd_cluster *c, uint64_t interval_ms);
/* Starts a run when one is asked or due, and moves it on; from housekeeping. */
void vd__cluster_repair_tick(struct vd_cluster *c);
/* Shutdown: the run stops, waiters get VD_ECLOSED. Before the data transport closes. */
void vd__cluster_repair_close(struct vd_cluster *c);
/* Frees the repair state (after the loop stopped). */
void vd__cluster_repair_free(struct vd_cluster *c);
/* Appends the "repair" member of GET /cluster's result ("repair":{...}). Any thread. */
void vd__cluster_repair_status_json(struct vd_cluster *c, struct vd_buf *b);
/* Appends the vectord_repair_* series. Any thread. */
void vd__cluster_repair_metrics(struct vd_cluster *c, struct vd_buf *out);

/* ---- node_place.c: placing the points of a data directory written before replication ---- */
enum vd_place_state { VD_PLACE_STARTING = 0, VD_PLACE_WAITING, VD_PLACE_RUNNING, VD_PLACE_DONE };
/* Starts the placing thread unless this data directory's points are placed already. After the
 * loop started. VD_ENOMEM. */
int vd__cluster_place_start(struct vd_cluster *c);
/* Stops the thread (a pass cut short goes on at the next start). After the loop thread ended and
 * its requests were failed. */
void vd__cluster_place_stop(struct vd_cluster *c);
/* "starting", "waiting" (for the cluster's state), "placing" or "done". Any thread. */
const char *vd__cluster_place_state_name(const struct vd_cluster *c);

/* ---- node.c ---- */
/* The member's liveness record (created on first use; the least recently heard is forgotten
 * when the table is full). */
struct member_clock *vd__cluster_clock_of(struct vd_cluster *c, uint64_t id);
/* The member's record if there is one (never creates or evicts: pointers stay valid). */
struct member_clock *vd__cluster_clock_find(struct vd_cluster *c, uint64_t id);
/* The speculative delay of member id (ctx: the cluster; vd_coord_params.spec_of): the p99 of
 * its recent data round trips (before any, its slowest recent ping), in ms rounded up, at most
 * SPEC_MAX_MS; 0 for this node. A replica slower than its usual slowest trip is likely stalled,
 * and a read then asks one more. Loop thread. */
uint64_t vd__cluster_spec_of(void *ctx, uint64_t id);
/* One data round trip to member id (a read, a search, a scroll or a verify that was answered),
 * in µs, into its window. Loop thread. */
void vd__cluster_data_rtt(struct vd_cluster *c, uint64_t id, uint64_t rtt_us);
/* True when member id (ctx: the cluster) has not been heard from for DOWN_AFTER_MS, as GET
 * /cluster shows it down, or this node marked it needs-repair: data reads ask it last
 * (vd_coord_params.down), so a read at consistency 1 is not served by a replica known to have
 * missed writes while another can serve it. Loop thread. */
bool vd__cluster_member_down(void *ctx, uint64_t id);
/* Rebuilds the cached GET /cluster result and the cluster's series of GET /metrics. */
void vd__cluster_status_refresh(struct vd_cluster *c);
/* A coordinated request's end: counted for GET /metrics (status 0 or its error code; timed_out
 * when its deadline had passed) and logged with the client request's id rid ("" for none) and
 * the error e: at info when it failed, at debug when it succeeded. Loop thread. */
void vd__cluster_request_end(struct vd_cluster *c, enum vd__req_kind kind, int status,
                             bool timed_out, const char *coll, const char *rid,
                             const struct vd_err *e);

/* ---- node_dcall.c: one data message to one replica ---- */
/* The end of a message: REPLIED with the reply's bytes (valid during the call; NULL when the
 * replica failed to answer), TIMEOUT, CLOSED or SKEW (vd_data_outcome), or SHUTDOWN: the node is
 * stopping (vd__cluster_data_stop ran), and the caller's requests are gone. Loop thread. */
typedef void (*vd__dcall_fn)(void *arg, enum vd_data_outcome outcome, const uint8_t *reply,
                             size_t len);
/* Sends the data message body[len] (taken: freed here) to node: this node's is served on the
 * thread pool as a peer's would be, a peer's goes over the data transport with header h. Returns
 * 0 (fn will run once, never inside this call) or an error (fn will not run): VD_ENOMEM,
 * VD_ECLOSED, or vd_data_send's. Loop thread. */
int vd__cluster_dcall(struct vd_cluster *c, uint64_t node, const struct vd_data_hdr *h,
                      uint8_t *body, size_t len, vd__dcall_fn fn, void *arg);
struct vd_dmsg_reply;
/* What a message's end (not SHUTDOWN) tells the coordinator core: true with the reply decoded
 * into *rp (of that kind and attempt, *status VD_COORD_OK), or false with *status its reading of
 * no answer (VD_COORD_CLOSED, VD_COORD_REFUSED; a malformed reply is logged). Release *rp with
 * vd_dmsg_reply_free either way. */
bool vd__dcall_reply(uint64_t node, enum vd_data_outcome outcome, const uint8_t *reply,
                     size_t len, uint8_t kind, uint32_t attempt, struct vd_dmsg_reply *rp,
                     uint8_t *status);
/* Fills e with the client's answer (VD_ENOTFOUND, Qdrant's words) for a data request on
 * collection `coll` that does not exist: deleted before the request began, or while it was on
 * its way (a replica answered gone). Returns VD_ENOTFOUND. */
int vd__cluster_coll_gone(struct vd_err *e, const char *coll);

/* ---- node_search.c: searches, scroll and count over the ring ---- */
struct sreq;
/* Starts the searches other threads queued (called with the data requests' events). */
void vd__cluster_search_events(struct vd_cluster *c);
/* Deadlines, speculative asks and reroutes (housekeeping). */
void vd__cluster_search_tick(struct vd_cluster *c);
/* Fails every search at shutdown, before the data transport closes (dreqs_open is false). */
void vd__cluster_search_stop(struct vd_cluster *c);

#endif
