/*
 * Internals of the cluster module, shared by its files and its unit tests:
 *   - frames and the peer transport (transport.c): framed binary messages over libuv TCP;
 *   - the metadata state machine (meta.c): members, ring tokens and collection schemas, pure;
 *   - the node (node*.c, internals in node_int.h): the loop thread that drives Raft, the
 *     transport and the state machine.
 */
#ifndef VECTORD_CLUSTER_INT_H
#define VECTORD_CLUSTER_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vectord/core.h"
#include "vectord/db.h"
#include "vectord/json.h"
#include "vectord/store.h"

/* ---- frames ---------------------------------------------------------------------------------
 * Every message between nodes is one frame:
 *   magic u16 BE 0x7664 ("vd") ‖ version u8 ‖ type u8 ‖ length u32 BE of the body ‖
 *   crc32c u32 BE over the 8 header bytes before it and the body ‖ body
 * A frame with a bad magic, version, checksum or a length above the receiver's limit closes the
 * connection (nothing of it is trusted). A peer of another frame version fails at the handshake,
 * and the log says which version it speaks.
 *
 * Version 2: the body of every frame after the handshake begins with the sender's hybrid logical
 * clock (u64 BE, VD_FRAME_HLC bytes), stamped with vd_hlc_now() as the frame is handed to the
 * socket; with a cluster secret the frame's MAC covers it. The transport takes it off and hands
 * it to the receiver beside the rest of the body. */
#define VD_FRAME_MAGIC 0x7664u
#define VD_FRAME_VERSION 2
#define VD_FRAME_HDR 12
#define VD_FRAME_HLC 8
#define VD_FRAME_MAX_DEFAULT (64u << 20)

/*
 * Frame types 1..15 belong to the transport (handshake); 16 and up are delivered to the user.
 * Of those, 16..31 are control frames: Raft, metadata calls (forwarded proposals, joins,
 * invitations) and clock pings. Their HLC is neither checked nor observed, so one fast clock
 * can neither stall metadata nor hide its own offset. Types from VD_FRAME_DATA up are data
 * frames: the transport refuses one whose HLC is more than the maximum clock offset ahead of
 * this node's wall clock (vd_hlc_check_skew) and answers VD_FRAME_SKEW, else observes its HLC
 * (vd_hlc_observe) and delivers it. A data frame's body begins with a u64 BE request id, so a
 * refusal names what it refuses.
 */
enum vd_frame_type {
    VD_FRAME_CHALLENGE = 1, /* acceptor -> dialer: nonce */
    VD_FRAME_HELLO = 2,     /* dialer -> acceptor: id, advertised address, nonce, proof */
    VD_FRAME_WELCOME = 3,   /* acceptor -> dialer: id, advertised address, proof */
    VD_FRAME_USER = 16,
    VD_FRAME_RAFT = 16,       /* body: vd_raft_msg_encode */
    VD_FRAME_CALL = 17,       /* body: call id u64 BE ‖ JSON request (forwarded to the leader) */
    VD_FRAME_CALL_REPLY = 18, /* body: call id u64 BE ‖ JSON reply */
    VD_FRAME_PING = 19,       /* body: the sender's wall clock u64 BE (ms), echoed by the PONG */
    VD_FRAME_PONG = 20,       /* body: the PING's body; the frame's HLC is the answerer's clock */
    /* body: refused type u8 ‖ its request id u64 ‖ how far ahead its HLC was (ms) u64 ‖ the
     * refuser's max clock offset (ms) u64 */
    VD_FRAME_SKEW = 21,
    VD_FRAME_DATA = 32,
};
#define VD_FRAME_SKEW_LEN 25

/* True for the frame types whose HLC is checked against the clock offset and observed. */
static inline bool vd__frame_is_data(uint8_t type)
{
    return type >= VD_FRAME_DATA;
}

struct vd_frame {
    uint8_t type;
    const uint8_t *body; /* points into the decoded buffer */
    uint32_t len;
};

/* Writes the 12-byte header for a body of len bytes into hdr. */
void vd__frame_header(uint8_t type, const void *body, uint32_t len, uint8_t hdr[VD_FRAME_HDR]);
/*
 * Decodes one frame at the start of buf[0..n). Returns 0 with *used = 0 when more bytes are
 * needed, 0 with *used = header + body and *out filled when a whole frame is there (out->body
 * points into buf), or VD_ECORRUPT (bad magic, version or checksum) / VD_ETOOBIG (length above
 * max_body). Never reads past buf[n).
 */
int vd__frame_decode(const uint8_t *buf, size_t n, uint32_t max_body, struct vd_frame *out,
                     size_t *used);

/* ---- peer transport -------------------------------------------------------------------------
 * One libuv TCP listener plus one connection per peer, all on the caller's loop; every function
 * is called on the loop thread and every callback runs there.
 *
 * Handshake, with a cluster secret: the acceptor sends CHALLENGE (random nonce); the dialer
 * answers HELLO with its id, advertised address, its own nonce and HMAC-SHA256(secret, ...) over
 * both nonces and its fields; the acceptor checks it and answers WELCOME with its id, address and
 * an HMAC over the dialer's nonce, which the dialer checks (mutual authentication; a replayed
 * HELLO fails because the nonce is fresh). Without a secret the same exchange runs with empty
 * proofs, and both ends accept only peers whose socket address is loopback. A peer that fails the
 * handshake is logged (once per address per minute) and closed.
 *
 * With a secret, each end then derives one session key per direction from the secret and both
 * nonces, and every frame after the handshake ends with an HMAC-SHA256 tag (inside the frame's
 * body, so the frame codec does not change) over the frame's number in its direction, its type
 * and its body (the sender's HLC included): an altered, replayed or reordered frame fails, and
 * the connection is closed. Without a secret frames carry their CRC only.
 *
 * Clock gate (see enum vd_frame_type): a data frame stamped more than max_clock_offset_ms ahead of
 * this node's wall clock is not delivered; the transport answers it with VD_FRAME_SKEW and logs
 * the peer and the offset (once a minute per peer). Control frames are always delivered.
 *
 * After the handshake a connection carries frames both ways, whichever end dialed. Sending to a
 * peer id uses an established connection to it, else dials its known address; frames queued
 * while a peer is unreachable are kept up to a bounded number of bytes (older ones are dropped:
 * Raft retransmits), and redialing backs off from 50 ms to 2 s.
 */
struct vd_transport;

/* A user frame from node `from` (at from_addr, as it advertised itself), stamped `hlc` by its
 * sender; body excludes the HLC and the MAC and is valid during the call only. */
typedef void (*vd_transport_frame_fn)(void *ctx, uint64_t from, const char *from_addr, uint8_t type,
                                      uint64_t hlc, const uint8_t *body, size_t len);

struct vd_transport_opts {
    void *loop;            /* uv_loop_t * of the caller's loop thread */
    uint64_t self_id;      /* non-zero */
    const char *bind;      /* address to listen on */
    uint16_t port;         /* 0 = ephemeral (tests) */
    const char *advertise; /* host:port sent to peers; NULL = bind:port as listened on (a
                              wildcard bind: 127.0.0.1:port) */
    const char *secret;    /* NULL or "": loopback peers only */
    bool refuse_all;       /* keep no connection at all (API keys but no secret: cluster.h) */
    uint32_t max_frame;    /* 0 = VD_FRAME_MAX_DEFAULT */
    size_t max_queue;      /* bytes queued per unreachable peer; 0 = 64 MiB */
    uint64_t max_clock_offset_ms;   /* data frames further ahead are refused; 0 = the default,
                                       VD_MAX_CLOCK_OFFSET_MS_DEFAULT */
    vd_transport_frame_fn on_frame; /* user frames (type >= VD_FRAME_USER) */
    void *ctx;
};

/* Starts listening. Strings are copied. Errors: VD_EINVAL (bad address), VD_EIO (bind failed:
 * err names address and reason), VD_ENOMEM. */
int vd_transport_start(const struct vd_transport_opts *o, struct vd_transport **out,
                       struct vd_err *err);
/* The port listened on (useful with port 0). */
uint16_t vd_transport_port(const struct vd_transport *t);
/* The address sent to peers (owned by t, lives as long as t). */
const char *vd_transport_advertise(const struct vd_transport *t);
/* Sets or changes the address of peer id (copied). */
void vd_transport_set_peer(struct vd_transport *t, uint64_t id, const char *addr);
/* Forgets a peer: closes its connections and drops its queue. */
void vd_transport_remove_peer(struct vd_transport *t, uint64_t id);
/* Queues one frame for peer id (body copied). VD_ENOTFOUND when neither a connection nor an
 * address is known for id. */
int vd_transport_send(struct vd_transport *t, uint64_t to, uint8_t type, const void *body,
                      size_t len);
/* Queues one frame for whoever listens at addr (used to join before the peer's id is known; the
 * connection is registered under the id learnt in the handshake, so replies find their way). */
int vd_transport_send_addr(struct vd_transport *t, const char *addr, uint8_t type,
                           const void *body, size_t len);
/* True when a handshaken connection to id is open. */
bool vd_transport_connected(const struct vd_transport *t, uint64_t id);
/* Closes the listener and every connection; frees t once the handles have closed (the caller
 * keeps running its loop until uv_run returns). */
void vd_transport_close(struct vd_transport *t);

/* ---- metadata state machine -----------------------------------------------------------------
 * Pure: no I/O, no clock, no randomness; every node applies the same committed commands in the
 * same order and ends with the same state. Commands and snapshots are JSON text (small, rare,
 * readable in a debugger); apply never trusts them (they come from disk and network). */

enum vd_meta_state { VD_MEMBER_JOINING = 1, VD_MEMBER_UP, VD_MEMBER_LEAVING };

#define VD_META_TOKENS 64 /* virtual nodes per member on the ring */

struct vd_meta_member {
    uint64_t id;
    char addr[256];       /* cluster address host:port */
    char http_addr[256];  /* REST address host:port ("" when unknown) */
    uint8_t state;        /* enum vd_meta_state */
    uint64_t tokens[VD_META_TOKENS]; /* ring positions, derived from id at add time */
};

/* A payload index declared on a collection. Every node makes its local indexes match these once
 * its collections match (the node's reconciliation, after the collection actions planned below).
 * Fields are validated as vd_db_pindex_check_field does. */
#define VD_META_MAX_PINDEXES 64 /* per collection */
struct vd_meta_pindex {
    char field[VD_STORE_PINDEX_NAME_MAX + 1];
    uint8_t type; /* enum vd_db_pindex_type */
};

struct vd_meta; /* opaque */

int vd_meta_new(struct vd_meta **out);
void vd_meta_free(struct vd_meta *m);

/* Command builders: append the JSON text of one command to out. */
void vd_meta_cmd_create_collection(const struct vd_coll_schema *s, struct vd_buf *out);
void vd_meta_cmd_delete_collection(const char *name, struct vd_buf *out);
void vd_meta_cmd_add_member(uint64_t id, const char *addr, const char *http_addr,
                            struct vd_buf *out);
void vd_meta_cmd_set_member(uint64_t id, enum vd_meta_state state, const char *addr,
                            const char *http_addr, struct vd_buf *out);
void vd_meta_cmd_remove_member(uint64_t id, struct vd_buf *out);
/* Declares (or retypes) the payload index on `field` of collection `coll`, and drops it. */
void vd_meta_cmd_set_payload_index(const char *coll, const char *field, enum vd_db_pindex_type type,
                                   struct vd_buf *out);
void vd_meta_cmd_drop_payload_index(const char *coll, const char *field, struct vd_buf *out);

/*
 * Applies the command committed at raft index `index`. Returns the command's outcome, identical
 * on every node: 0; VD_EEXIST (collection or member exists); VD_ENOTFOUND (collection, member,
 * or payload index to drop); VD_ERANGE (a collection already has VD_META_MAX_PINDEXES payload
 * indexes and one more is declared); VD_EINVAL (malformed command: nothing changes).
 * Declaring a payload index that exists with the same type changes nothing and succeeds. res (may be NULL) gets the message a user reads. A created
 * collection whose schema has incarnation 0 gets incarnation (1 << 63) | index, so every node
 * stores the same incarnation for it. m's applied index becomes `index` in every case.
 */
int vd_meta_apply(struct vd_meta *m, uint64_t index, const uint8_t *cmd, size_t len,
                  struct vd_err *res);
/* Marks index as applied without a command (no-op and configuration entries). */
void vd_meta_skip(struct vd_meta *m, uint64_t index);
uint64_t vd_meta_applied(const struct vd_meta *m);
/* True when incarnation was made by a collection create this state machine has not applied yet
 * (a fresh incarnation is (1 << 63) | its Raft index): a peer that knows it is ahead of us. */
bool vd_meta_incarnation_ahead(const struct vd_meta *m, uint64_t incarnation);

/* Whole state as JSON (snapshot), and back. Restore replaces m's state; VD_ECORRUPT on bad input
 * (m unchanged). */
int vd_meta_snapshot(const struct vd_meta *m, struct vd_buf *out);
int vd_meta_restore(struct vd_meta *m, const uint8_t *data, size_t len, struct vd_err *err);

/* Lookups. Returned pointers point into m and stay valid until the next apply/restore. */
const struct vd_coll_schema *vd_meta_collection(const struct vd_meta *m, const char *name);
size_t vd_meta_n_collections(const struct vd_meta *m);
const struct vd_coll_schema *vd_meta_collection_at(const struct vd_meta *m, size_t i); /* by name */
/* The payload indexes of collection name, sorted by field (*out points into m, NULL when there
 * are none or no such collection); returns how many. */
size_t vd_meta_payload_indexes(const struct vd_meta *m, const char *name,
                               const struct vd_meta_pindex **out);
const struct vd_meta_member *vd_meta_member(const struct vd_meta *m, uint64_t id);
size_t vd_meta_n_members(const struct vd_meta *m);
const struct vd_meta_member *vd_meta_member_at(const struct vd_meta *m, size_t i); /* by id */

/* The ring: up to rf distinct member ids, clockwise from hash (members in state UP or LEAVING
 * own tokens; JOINING ones do not yet). Returns how many were written to out. */
size_t vd_meta_replicas(const struct vd_meta *m, uint64_t hash, unsigned rf, uint64_t *out);

/* Placement of one hash (vd_place_hash of collection and stored key) on the ring of
 * `ring_version`, the Raft index of the command that last changed the ring (0 before any did):
 * the natural replicas clockwise from the hash, and the pending ones that will own it once
 * ranges in motion have moved (none yet: members take ranges at once). A data request carries
 * the ring version, so a replica can tell it was placed on another ring. */
#define VD_PLACE_MAX_RF 64 /* the largest replication_factor a schema may have */
struct vd_placement {
    uint64_t ring_version;
    size_t n_natural, n_pending;
    uint64_t natural[VD_PLACE_MAX_RF];
    uint64_t pending[VD_PLACE_MAX_RF];
};
/* Pure function of m's ring; rf above VD_PLACE_MAX_RF is taken as VD_PLACE_MAX_RF. */
void vd_meta_place(const struct vd_meta *m, uint64_t hash, unsigned rf, struct vd_placement *out);
/* The same for the point of stored key `key` in `collection`, with the collection's
 * replication factor. VD_ENOTFOUND when m has no such collection (out untouched). */
int vd_meta_place_point(const struct vd_meta *m, const char *collection, const uint8_t *key,
                        size_t key_len, struct vd_placement *out);
uint64_t vd_meta_ring_version(const struct vd_meta *m);
/* Number of tokens on the ring (members UP or LEAVING times VD_META_TOKENS). */
size_t vd_meta_ring_size(const struct vd_meta *m);
/* The ring's arcs, as vd_coord_ring_arcs splits them, into out (room for vd_meta_ring_size
 * entries); returns how many. */
size_t vd_meta_arcs(const struct vd_meta *m, uint64_t (*out)[2]);

/* ---- replica side of the data plane (replica.c) ---- */

struct vd_db;
/* Serves one data request (dmsg.h) on db as node self of metadata view m, appending the encoded
 * reply to out: wrong ring, gone or not yet when the request does not match m and db (see
 * replica.c), an error reply for a request it refuses (naming why), else the answer. Writes are
 * answered once durable; this blocks the calling thread (a data worker, never the loop) until
 * then. Returns 0, VD_ECORRUPT for a malformed request (nothing appended: drop the peer), or
 * VD_ENOMEM. */
int vd__replica_serve(struct vd_db *db, const struct vd_meta *m, uint64_t self,
                      const uint8_t *req, size_t len, struct vd_buf *out);

/* ---- published views ------------------------------------------------------------------------
 * The loop thread owns struct vd_meta and changes it with every applied command; other threads
 * (HTTP handlers, the coordinator) read an immutable copy of it instead, a view: a reference-
 * counted deep copy that the loop publishes after each change. A reader acquires the current
 * view, reads it (every const vd_meta_* lookup and placement works on vd_meta_view_state), and
 * releases it; a view lives until its last reference is released, however many newer views were
 * published meanwhile. */
struct vd_meta_view;
/* A view of m's state now, holding one reference. Errors: VD_ENOMEM. */
int vd_meta_view_new(const struct vd_meta *m, struct vd_meta_view **out);
/* The state the view holds: valid while the caller holds a reference; never changes. */
const struct vd_meta *vd_meta_view_state(const struct vd_meta_view *v);
/* Takes one more reference (any thread); returns v. */
struct vd_meta_view *vd_meta_view_ref(struct vd_meta_view *v);
/* Drops one reference (any thread); the last one frees the view. NULL ignored. */
void vd_meta_view_release(struct vd_meta_view *v);

/* The publish point: one current view. Readers on any thread; vd_meta_pub_set, vd_meta_publish
 * and vd_meta_pub_release from one thread at a time (the loop). Fields are private. */
struct vd_meta_pub {
    _Atomic(struct vd_meta_view *) cur;
    atomic_uint epoch;
    atomic_size_t pins[2];
};
/* An empty publish point (acquire gives NULL until the first publish). */
void vd_meta_pub_init(struct vd_meta_pub *p);
/* A reference to the current view (the caller releases it), or NULL when none was published.
 * Lock-free for readers. */
struct vd_meta_view *vd_meta_pub_acquire(struct vd_meta_pub *p);
/* Makes v (its reference passes to p; may be NULL) the current view and releases the previous
 * one once no reader can be taking a reference to it: waits, spinning, at most for readers that
 * are between loading the pointer and taking their reference. */
void vd_meta_pub_set(struct vd_meta_pub *p, struct vd_meta_view *v);
/* Builds a view of m and publishes it: the call after every applied command or restore. VD_ENOMEM
 * keeps the previous view published. */
int vd_meta_publish(struct vd_meta_pub *p, const struct vd_meta *m);
/* Drops the current view (shutdown: no reader may acquire afterwards). */
void vd_meta_pub_release(struct vd_meta_pub *p);
/* The node's current metadata view (any thread; the caller releases it with
 * vd_meta_view_release): published once the node has opened its state, then after every batch
 * of applied entries or installed snapshot. NULL only after vd_cluster_stop began. */
struct vd_cluster;
struct vd_meta_view *vd__cluster_view_acquire(struct vd_cluster *c);

/*
 * Reconciliation of the local database with the state machine. Given what the node holds
 * (local[i] = name and incarnation), lists the actions that make it match: first deletes of local
 * collections that the state machine does not have (or has under another incarnation), then
 * creates of collections it has that are missing locally (or were just deleted for having another
 * incarnation). One exception keeps a lagging state machine from destroying newer data: a local
 * collection whose incarnation has the top bit set and whose creation index (incarnation without
 * the top bit) is above the applied index is left alone. Incarnations without the top bit come
 * from collections created before the node was in a cluster; the node adopts those into the
 * state machine before it reconciles, so they are treated like any other.
 */
struct vd_meta_local {
    const char *name;
    uint64_t incarnation;
};
struct vd_meta_action {
    bool create;                   /* else delete */
    char name[256];
    struct vd_coll_schema schema;  /* create: the schema to create with */
    uint64_t incarnation;          /* delete: the incarnation to delete */
};
/* Fills out (caller frees *out). Errors: VD_ENOMEM. */
int vd_meta_plan(const struct vd_meta *m, const struct vd_meta_local *local, size_t n_local,
                 struct vd_meta_action **out, size_t *n_out);

#endif
