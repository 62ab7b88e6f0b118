/*
 * Internals of the cluster module, shared by its files and its unit tests:
 *   - frames and the peer transport (transport.c): framed binary messages over libuv TCP;
 *   - the metadata state machine (meta.c): members, ring tokens and collection schemas, pure;
 *   - the node (node*.c, internals in node_int.h): the loop thread that drives Raft, the
 *     transport and the state machine.
 */
#ifndef VECTORD_CLUSTER_INT_H
#define VECTORD_CLUSTER_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vectord/coord.h"
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
    /* data channel only, not gated: the receiver's credit, body VD_DATA_CREDIT_LEN bytes
     * (data transport below) */
    VD_FRAME_CREDIT = 22,
    /* body: n x u64 BE, the members the sender has marked needs-repair (node_hints.c), resent
     * every second while any is marked; a node that does not know the type ignores it */
    VD_FRAME_MARKS = 23,
    VD_FRAME_DATA = 32,
    VD_FRAME_DATA_REQ = 32,   /* data channel: one chunk of a request (data transport below) */
    VD_FRAME_DATA_REPLY = 33, /* data channel: one chunk of a reply */
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

/* The largest body of a frame on a data connection (HLC and MAC not counted); a larger message
 * travels as chunks (data transport below). */
#define VD_DATA_FRAME_MAX (1u << 20)

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
 *
 * Channels: a pair of nodes keeps two connections, so that Raft never waits behind data. The
 * control connection (everything above) and a data connection, asked for by a channel byte in
 * the HELLO (covered by its proof; a HELLO without one asks for control, as before). A data
 * connection is authenticated, numbered and MAC'd exactly like a control one, carries frames of
 * at most VD_DATA_FRAME_MAX bytes, and hands every frame to the data transport registered with
 * vd_transport_set_data (refused for clock skew or not); without one, data connections are
 * refused. Its queue is never trimmed: the data transport sends only under the credit the
 * receiver granted on that connection, so what is queued is bounded, and when the connection
 * closes its queue is dropped (the requests it carried fail) and it is redialed with backoff.
 * Data-type frames that arrive on a control connection keep the old behaviour (gate, then
 * on_frame).
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

/* A frame that came on the data connection of node `from`; body excludes HLC and MAC and is
 * valid during the call only. gate is 0, or VD_EUNAVAIL when the frame was refused for its
 * clock (the VD_FRAME_SKEW answer is already queued; the frame must not be applied). A non-zero
 * return closes the connection, logging err->msg as the reason. */
typedef int (*vd_transport_data_fn)(void *ctx, uint64_t from, uint8_t type, uint64_t hlc,
                                    const uint8_t *body, size_t len, int gate,
                                    struct vd_err *err);
/* The data connection to `peer` opened (up) or closed. Every up is followed by one down before
 * the next up; frames sent before a down that were not yet written are dropped. */
typedef void (*vd_transport_link_fn)(void *ctx, uint64_t peer, bool up);
/* Registers the data transport (NULL callbacks: none). Must be cleared before ctx dies; the
 * callbacks run on the loop thread, also from inside vd_transport_* calls and while closing. */
void vd_transport_set_data(struct vd_transport *t, vd_transport_data_fn on_data,
                           vd_transport_link_fn on_link, void *ctx);
/* Keeps a data connection to node `to` open (dials it now, redials it when lost), at the
 * address known for its control connection. VD_ENOTFOUND when none is known. */
int vd_transport_data_open(struct vd_transport *t, uint64_t to);
/* Queues one frame on the open data connection to `to` (body copied, never dropped while that
 * connection lives). VD_ECLOSED when no data connection is open; VD_ETOOBIG above
 * VD_DATA_FRAME_MAX. */
int vd_transport_send_data(struct vd_transport *t, uint64_t to, uint8_t type, const void *body,
                           size_t len);
bool vd_transport_data_connected(const struct vd_transport *t, uint64_t id);

/* ---- data transport ---------------------------------------------------------------------------
 * Requests between replicas (data.c) on the data connections above, so that however much data
 * is waiting, Raft and metadata never queue behind it.
 *
 * A node sends a request to node X with (collection incarnation, ring_version, deadline) and a
 * body; X hands the whole body to a handler on one of its worker threads (never the loop
 * thread), and the handler's status and reply bytes come back to the sender's callback.
 *
 * Flow control, by credit: on each new data connection each end grants the other a window of
 * request bytes and frames (VD_FRAME_CREDIT: cumulative totals on that connection, so a grant is
 * idempotent). A sender writes a request chunk only while it fits in the credit granted, and
 * holds the rest in its own queue, never dropping one; the receiver grants more as its workers
 * finish requests. A receiver whose workers stall therefore holds at most one window per peer,
 * the sender's queue grows instead, and vd_data_send reports it (queued bytes), so a coordinator
 * can stop reading requests rather than buffer without bound. Replies are not credited: each
 * answers a request the requester chose to send.
 *
 * Chunks: a message (request or reply body) of up to max_message bytes travels as numbered chunk
 * frames of at most VD_DATA_FRAME_MAX bytes, in order and back to back on the connection:
 *   request id u64 ‖ chunk number u32 ‖ flags u8 (VD_CHUNK_LAST) ‖
 *   [chunk 0 only: total length u32 ‖ w0 u64 ‖ w1 u64 ‖ w2 u64] ‖ bytes
 * with (w0, w1, w2) = (incarnation, ring_version, deadline in wall-clock ms) for a request and
 * (status as a signed 64-bit VD_E* code, 0, 0) for a reply. A message is handed on only whole;
 * any other sequence (a gap, an interleaved message, more bytes than announced, a length above
 * the limit, a request beyond the credit) closes the connection with a log line.
 *
 * Outcomes: a request ends exactly once, by its reply, by its deadline (no credit, no reply),
 * when the connection that carried any of it closes (at once, not at the deadline), when either
 * clock is refused (VD_FRAME_SKEW), or at vd_data_close.
 */
#define VD_CHUNK_HDR 13
#define VD_CHUNK_HEAD 28 /* the extra fields of chunk 0 */
#define VD_CHUNK_LAST 0x01
#define VD_DATA_CREDIT_LEN 16 /* granted bytes u64 ‖ granted frames u64 */

/* One message being reassembled from its chunks (pure: frame.c; a fuzzer drives it). Zero-filled
 * is empty; vd__reasm_release frees what it holds. */
struct vd__reasm {
    bool open;          /* a message is in progress */
    bool discard;       /* its chunks are being dropped (one was refused for clock skew) */
    uint64_t id;
    uint32_t next;      /* the chunk number expected */
    uint32_t total;     /* announced length */
    uint64_t w[3];      /* chunk 0's fields */
    uint8_t *buf;       /* malloc'd, have of total bytes */
    size_t have, cap;
};
/* A message reassembled whole: buf (malloc'd, len bytes; may be NULL when len is 0) passes to
 * the caller. */
struct vd__reasm_msg {
    uint64_t id;
    uint64_t w[3];
    uint8_t *buf;
    size_t len;
};
enum { VD_REASM_MORE = 0, VD_REASM_DONE = 1, VD_REASM_DROPPED = 2 };
/*
 * Feeds one chunk body b[0..n). `refused`: the chunk was refused for its clock, so the message
 * is dropped (its id still names it). Returns VD_REASM_MORE, VD_REASM_DONE (out filled), or
 * VD_REASM_DROPPED (a dropped message ended) ; or VD_ECORRUPT / VD_ETOOBIG (a total above
 * max_message) / VD_ENOMEM with err saying what was wrong: the caller closes the connection and
 * releases r. *id gets the chunk's request id whenever it could be read (else 0).
 */
int vd__reasm_feed(struct vd__reasm *r, const uint8_t *b, size_t n, uint32_t max_message,
                   bool refused, uint64_t *id, struct vd__reasm_msg *out, struct vd_err *err);
void vd__reasm_release(struct vd__reasm *r);
/* Writes the header of chunk `seq` of message id (first: with total and w) into out (room for
 * VD_CHUNK_HDR + VD_CHUNK_HEAD); returns its length. */
size_t vd__chunk_header(uint64_t id, uint32_t seq, bool last, uint32_t total, const uint64_t w[3],
                        uint8_t *out);

struct vd_data;

/* A request as its sender addressed it. deadline_ms is wall-clock ms (vd_wall_ms), on both
 * nodes: their clocks agree within the maximum clock offset. */
struct vd_data_hdr {
    uint64_t incarnation;
    uint64_t ring_version;
    uint64_t deadline_ms;
};

enum vd_data_outcome {
    VD_DATA_REPLIED = 0, /* the handler answered: its status and reply bytes */
    VD_DATA_TIMEOUT,     /* no reply by the deadline (no credit, slow or silent replica) */
    VD_DATA_CLOSED,      /* the data connection closed while the request was in flight */
    VD_DATA_SKEW,        /* refused: a clock is beyond the maximum offset (either direction) */
    VD_DATA_SHUTDOWN,    /* vd_data_close ran first */
};

/* The end of one request, on the loop thread; called exactly once per accepted vd_data_send,
 * never from inside vd_data_send. status: the handler's (0 or VD_E*) when REPLIED, else 0.
 * reply is valid during the call only (NULL unless REPLIED). */
typedef void (*vd_data_done_fn)(void *arg, enum vd_data_outcome outcome, int status,
                                const uint8_t *reply, size_t len);
/* Serves one whole request from node `from`, on a worker thread (several run at once): appends
 * the reply to *reply (an empty buffer the transport owns) and returns the status the sender
 * sees. req is valid during the call only. Not called for a request past its deadline (the
 * sender has given up: it gets nothing, as for a timeout). */
typedef int (*vd_data_handler_fn)(void *ctx, uint64_t from, const struct vd_data_hdr *h,
                                  const uint8_t *req, size_t len, struct vd_buf *reply);

struct vd_data_opts {
    void *loop;                 /* uv_loop_t * of the transport's loop */
    struct vd_transport *tp;    /* carries the data connections; outlives the vd_data */
    vd_data_handler_fn handler; /* NULL: requests are answered VD_ENOTFOUND */
    void *ctx;                  /* handler's */
    unsigned workers;           /* 0 = 2 */
    uint32_t window;            /* request bytes granted per peer; 0 = 64 MiB; at least
                                   max_message + one chunk */
    uint32_t window_frames;     /* request chunks granted per peer; 0 = 4096 */
    uint32_t max_message;       /* largest request or reply body; 0 = 32 MiB */
};

/* Starts the worker threads and registers with opts->tp. Errors: VD_EINVAL, VD_ENOMEM. On the
 * loop thread, like every vd_data_* call below except vd_data_pause_workers. */
int vd_data_start(const struct vd_data_opts *o, struct vd_data **out, struct vd_err *err);
/*
 * Sends one request (body copied) to node `to`; done(arg, ...) reports its end. Returns 0 (done
 * will be called), or without calling done: VD_ENOTFOUND (no address known for `to`),
 * VD_ETOOBIG (len above max_message), VD_ECLOSED (closing). *queued (may be NULL) gets the
 * bytes now waiting for credit to `to`, this request's included once it cannot go at once:
 * the caller's backpressure signal.
 */
int vd_data_send(struct vd_data *d, uint64_t to, const struct vd_data_hdr *h, const void *body,
                 size_t len, vd_data_done_fn done, void *arg, size_t *queued);
/* Bytes of requests to `to` waiting for credit (0 for an unknown node). */
size_t vd_data_queued(const struct vd_data *d, uint64_t to);
/* Tests: holds every worker before its next request (true) or lets them go (false). Any
 * thread. */
void vd_data_pause_workers(struct vd_data *d, bool pause);
struct vd_data_stats {
    uint64_t served;        /* requests handed to the handler (or answered past deadline) */
    uint64_t held_bytes;    /* request bytes received and not yet finished, all peers */
    uint64_t held_max;      /* the most held_bytes ever was */
};
void vd_data_stats(const struct vd_data *d, struct vd_data_stats *out);
/* Fails every request still pending with VD_DATA_SHUTDOWN (callbacks run before it returns),
 * stops and joins the workers (waiting for handlers running now), unregisters from the
 * transport and frees d once its handles have closed (the loop keeps running). Call before
 * vd_transport_close. NULL ignored. */
void vd_data_close(struct vd_data *d);

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
/* Command setting the quantization config of collection s->name, incarnation s->incarnation, to
 * s's (its other fields are not changed). */
void vd_meta_cmd_update_collection(const struct vd_coll_schema *s, struct vd_buf *out);
void vd_meta_cmd_delete_collection(const char *name, struct vd_buf *out);
/* Marks collection name (of that incarnation) as having held points: sticky until the collection
 * is deleted. A node proposes it once its own copy holds a point. */
void vd_meta_cmd_collection_has_points(const char *name, uint64_t incarnation, struct vd_buf *out);
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
/* m's ring as the coordinator core takes it (pointing into m: valid until the next apply). */
void vd_meta_coord_ring(const struct vd_meta *m, struct vd_coord_ring *out);
/* True when incarnation was made by a collection create this state machine has not applied yet
 * (a fresh incarnation is (1 << 63) | its Raft index): a peer that knows it is ahead of us. */
bool vd_meta_incarnation_ahead(const struct vd_meta *m, uint64_t incarnation);

/* Whole state as JSON (snapshot), and back. Restore replaces m's state; VD_ECORRUPT on bad input
 * (m unchanged). */
int vd_meta_snapshot(const struct vd_meta *m, struct vd_buf *out);
int vd_meta_restore(struct vd_meta *m, const uint8_t *data, size_t len, struct vd_err *err);

/* Lookups. Returned pointers point into m and stay valid until the next apply/restore. */
const struct vd_coll_schema *vd_meta_collection(const struct vd_meta *m, const char *name);
/*
 * Membership and points: until data streams to new owners when members change, adding a member
 * (other than the first) or marking an up one leaving is refused with VD_EEXIST while a collection has
 * held points (vd_meta_cmd_collection_has_points): ownership would move with no data, and
 * acknowledged points would become invisible. The message is VD_META_POINTS_REFUSAL with what
 * was asked and the collection's name. Deleting the collection lifts the refusal.
 */
#define VD_META_POINTS_REFUSAL                                                                     \
    "cannot %s while collection '%s' holds points: vectord does not move points to their new "   \
    "owners when members change yet, so acknowledged points would become unreachable; add and "  \
    "remove nodes before writing points, or delete the collections first"
/* The name of a collection that has held points (the first by name), or NULL: valid until the
 * next apply. */
const char *vd_meta_collection_with_points(const struct vd_meta *m);
bool vd_meta_collection_has_points(const struct vd_meta *m, const char *name);
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
/* True when node is a natural or pending replica of point id of collection on m's ring (false
 * for an unknown collection). */
bool vd_meta_is_replica(const struct vd_meta *m, const char *collection, const struct vd_pid *id,
                        uint64_t node);
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
    /* the local schema, or NULL: when given, a kept collection whose quantization config differs
     * from the state machine's gets an update action */
    const struct vd_coll_schema *schema;
};
struct vd_meta_action {
    bool create;                   /* else delete, or update */
    bool update;                   /* the quantization config of schema */
    char name[256];
    struct vd_coll_schema schema;  /* create: the schema to create with */
    uint64_t incarnation;          /* delete: the incarnation to delete */
};
/* Fills out (caller frees *out). Errors: VD_ENOMEM. */
int vd_meta_plan(const struct vd_meta *m, const struct vd_meta_local *local, size_t n_local,
                 struct vd_meta_action **out, size_t *n_out);

/* ---- waiting for a completion (wait.c) ---- */

/* A database or cluster completion waited for by the calling thread: init with
 * VD_CLUSTER_WAIT_INIT, pass vd__wait_done and &w as the callback and its ctx, then vd__wait. */
struct vd_cluster_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    int status;
    struct vd_err err; /* the completion's message, when it gave one */
};
#define VD_CLUSTER_WAIT_INIT {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER}
/* A vd_db_done_fn (and vd_cluster_done_fn). */
void vd__wait_done(int status, const struct vd_err *err, uint64_t op_id, void *ctx);
/* Blocks until the completion ran; returns its status. */
int vd__wait(struct vd_cluster_wait *w);

#endif
