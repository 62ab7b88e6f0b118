/*
 * vectord coord: the replication coordinator's decisions, as a pure state machine.
 *
 * The node that receives a data request coordinates it: it places the key on the ring, sends the
 * request to the replicas, counts their answers against the consistency asked for, merges what
 * they hold by version, repairs stale replicas, stores hints for replicas that did not
 * acknowledge, and answers the client. This module decides all of that and does nothing else:
 * no I/O, no clock, no randomness, no locks. The host (the cluster glue, or the simulator in
 * tests/sim) feeds it replies and the time and carries out the actions it asks for:
 *
 *     vd_coord_write_new(&p, &ring, hash, version, &op);      (or _read_new, _search_new)
 *     loop:
 *         while (vd_coord_ready(op, &acts, &n)) { carry out acts[0..n); vd_coord_advance(op); }
 *         if (vd_coord_done(op)) break;
 *         wait for a reply (vd_coord_step), a stored hint (vd_coord_hinted), a newer ring
 *         (vd_coord_reroute) or the time vd_coord_next_deadline(op) (vd_coord_tick);
 *     vd_coord_op_free(op);
 * The client's answer is ready when an action VD_COORD_REPLY comes out (vd_coord_result and the
 * per-kind accessors then hold it); the operation may go on after that, to store hints and finish
 * background repair, until vd_coord_done.
 *
 * Rules the core enforces (DESIGN §6):
 *   - Placement: the replicas of a hash are the next rf distinct members clockwise on the ring of
 *     one ring_version. A token owns the arc (previous token, token] (vd_ring_contains).
 *   - A write succeeds at W durable acknowledgements from distinct replicas; a duplicated ack
 *     counts once, a stored hint counts zero, a replica answering wrong-ring counts nothing and
 *     makes the operation catch up with the ring and try again. At the deadline it fails with the
 *     numbers. Every replica that did not acknowledge gets a hint, whether or not W was met.
 *   - A read asks R replicas (the preferred one, usually the coordinator itself, first), asks one
 *     more after the speculative delay, merges by vd_version_cmp, hides tombstones and repairs
 *     stale replicas with the same record under the same version. The repair blocks the answer
 *     only when R >= quorum(rf), until the newest version is on quorum(rf) replicas.
 *   - A search is two-phase: each of R replicas of every range returns its top offset+limit
 *     (id, version, score); every candidate not returned at one version by all of them is
 *     verified with the others; the newest version wins, a tombstone or a filter non-match drops
 *     it. A list is trusted down to its last item; when the result needs items below that floor
 *     the range is asked again with twice the limit, at most three rounds.
 *
 * Thread rules: an operation is used by one thread at a time; the core takes no locks.
 */
#ifndef VECTORD_COORD_H
#define VECTORD_COORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vectord/core.h"

#define VD_COORD_MAX_RF 8
#define VD_COORD_MAX_ROUNDS 3 /* phase-1 rounds of a search range */

/* ---- the ring ------------------------------------------------------------------------------ */

/* One virtual node: a position on the ring and the member that owns the arc ending there. */
struct vd_coord_token {
    uint64_t token;
    uint64_t node;
};

/* A ring snapshot. tokens are sorted by (token, node) and stay owned by the caller for as long as
 * any call that takes the ring runs (operations copy what they keep). version is the Raft index
 * that produced the ring; every replica request carries it. */
struct vd_coord_ring {
    uint64_t version;
    const struct vd_coord_token *tokens;
    size_t n_tokens;
};

/* Sorts tokens in place by (token, node), the order struct vd_coord_ring requires. Equal tokens
 * (two members hashing to one position) are ordered by node, so every node breaks the tie alike. */
void vd_coord_ring_sort(struct vd_coord_token *tokens, size_t n);

/* The natural replicas of hash: up to rf distinct nodes clockwise from the arc containing hash,
 * the arc being (previous token, token] as vd_ring_contains reads it. This is the one placement
 * walk: the metadata state machine (vd_meta_replicas) places by it too. out holds rf ids;
 * returns how many were found (fewer when the ring has fewer members). */
size_t vd_coord_ring_replicas(const struct vd_coord_ring *ring, uint64_t hash, unsigned rf,
                              uint64_t *out);

/* The ring's arcs (start, end], one per distinct token `end`, in token order, into out (room for
 * n_tokens entries); returns how many. Every hash lies on exactly one arc (vd_ring_contains) and
 * is placed as the arc's end is; equal tokens make one arc, and a ring with one distinct token has
 * the single arc (t, t], the whole ring. The one arc walk: range-restricted search, streaming and
 * the metadata state machine (vd_meta_arcs) all split the ring by it. */
size_t vd_coord_ring_arcs(const struct vd_coord_ring *ring, uint64_t (*out)[2]);

/* floor(rf / 2) + 1: what "quorum" and "majority" mean. */
static inline unsigned vd_coord_quorum(unsigned rf)
{
    return rf / 2 + 1;
}

/* ---- operations ---------------------------------------------------------------------------- */

/* Deliberate faults, only for proving that the simulator's checker catches them. */
enum vd_coord_bug {
    VD_COORD_BUG_NONE = 0,
    VD_COORD_BUG_ACK_AT_W_MINUS_1,   /* a write succeeds one ack early */
    VD_COORD_BUG_DUP_ACK,            /* a duplicated ack counts again */
    VD_COORD_BUG_HINT_AS_ACK,        /* a stored hint counts toward W */
    VD_COORD_BUG_NO_NODE_TIEBREAK,   /* versions compared by HLC only */
    VD_COORD_BUG_REPAIR_NEW_VERSION, /* read repair writes the record under a newer version */
    VD_COORD_BUG_SEARCH_NO_VERIFY,   /* search merges phase-1 lists without verification */
    VD_COORD_BUG_IGNORE_WRONG_RING,  /* a wrong-ring answer is taken as an ordinary answer */
    VD_COORD__BUG_COUNT
};

struct vd_coord_params {
    unsigned rf;           /* replication factor, 1..VD_COORD_MAX_RF */
    unsigned need;         /* W for a write, R for a read or a search; 1..rf */
    uint64_t now_ms;       /* the time the operation starts */
    uint64_t timeout_ms;   /* the request deadline is now_ms + timeout_ms */
    uint64_t spec_ms;      /* reads and searches: ask one more replica when R have not answered
                              after this long (0: never), at least */
    /* The speculative delay of one replica: its usual slowest round trip (the host's p99 of its
     * recent ones), so a replica is deemed late only past what it normally takes. A read or a
     * search asks one more replica once the slowest of those it awaits is past its delay (and
     * spec_ms). NULL: spec_ms for every replica. Called when replicas are asked. */
    uint64_t (*spec_of)(void *spec_ctx, uint64_t node);
    void *spec_ctx;
    uint64_t retry_ms;     /* a replica behind on the ring is asked again after this (>= 1) */
    uint64_t prefer;       /* a node to ask first when it is a replica (the coordinator), or 0 */
    /* Replicas for which down(down_ctx, node) is true (the host's failure detector holds them
     * down) are asked after the others, so a read or a search does not wait a speculative delay
     * on a dead or silent one before asking the next; NULL: none is. Called while placing (at
     * creation and vd_coord_reroute) only. */
    bool (*down)(void *down_ctx, uint64_t node);
    void *down_ctx;
    enum vd_coord_bug bug; /* VD_COORD_BUG_NONE outside the simulator's planted-bug tests */
};

/* What one replica holds for one key. */
struct vd_coord_copy {
    bool present; /* false: nothing at all (the version is then zero) */
    bool tombstone;
    struct vd_version version;
};

/* A phase-1 search candidate; replicas list them best first: by score, higher first, then by id.
 * The host maps its metric to "higher is better" (a distance is negated). */
struct vd_coord_cand {
    struct vd_pid id;
    struct vd_version version;
    float score;
};

/* A verified search result. node is a replica holding that version (for fetching the record). */
struct vd_coord_item {
    struct vd_pid id;
    struct vd_version version;
    float score;
    uint64_t node;
};

enum vd_coord_status {
    VD_COORD_OK = 1,
    VD_COORD_WRONG_RING, /* the replica is on another ring version (ring_version says which) */
    VD_COORD_REFUSED,    /* refused (clock skew, overload, an error): it holds nothing new */
    VD_COORD_CLOSED,     /* the connection closed before an answer */
    VD_COORD_GONE        /* the replica applied the deletion of the collection incarnation: the
                            operation answers VD_ENOTFOUND and ends (no hint, no repair: the
                            deleted data is purged everywhere) */
};

enum vd_coord_reply_type {
    VD_COORD_R_WRITE = 1, /* a write's durable ack */
    VD_COORD_R_READ,      /* copy */
    VD_COORD_R_REPAIR,    /* a repair's durable ack */
    VD_COORD_R_SEARCH,    /* phase 1: range, cands, complete */
    VD_COORD_R_VERIFY     /* phase 2: id, copy, match, score */
};

/* One answer from a replica. Pointers stay owned by the caller; the core copies what it keeps. */
struct vd_coord_reply {
    uint8_t type;   /* enum vd_coord_reply_type */
    uint8_t status; /* enum vd_coord_status */
    uint64_t from;
    uint32_t attempt;      /* echoed from the action that asked */
    uint64_t ring_version; /* WRONG_RING: the replica's ring version */
    struct vd_coord_copy copy;
    uint32_t range; /* SEARCH */
    const struct vd_coord_cand *cands;
    size_t n_cands;
    bool complete;    /* SEARCH: the replica has no more matching points in the range */
    struct vd_pid id; /* VERIFY */
    bool match;       /* VERIFY: the held version is live and matches the filter */
    float score;      /* VERIFY: its score when match */
};

enum vd_coord_action_type {
    VD_COORD_SEND = 1,  /* write: the record to node; read: a read; search: phase 1 of range, k */
    VD_COORD_VERIFY,    /* search: ask node about id (version, tombstone, match, score) */
    VD_COORD_REPAIR,    /* send node the record `src` holds at `version` (id for searches) */
    VD_COORD_HINT,      /* store a hint of the record for node, then call vd_coord_hinted */
    VD_COORD_NEED_RING, /* catch up to a ring newer than ring_version, then vd_coord_reroute */
    VD_COORD_REPLY      /* the client's answer is ready (vd_coord_result) */
};

struct vd_coord_action {
    uint8_t type;              /* enum vd_coord_action_type */
    uint64_t node;             /* the replica (SEND, VERIFY, REPAIR, HINT) */
    uint32_t attempt;          /* echo it in the reply */
    uint64_t ring_version;     /* every request carries it */
    uint32_t range, k;         /* search SEND: the range and how many candidates */
    struct vd_pid id;          /* VERIFY; REPAIR of a search */
    uint64_t src;              /* REPAIR: the replica whose copy is sent */
    struct vd_version version; /* REPAIR: the version sent, the one src answered */
};

struct vd_coord_op; /* opaque */

/*
 * Creates an operation; its first actions (the sends) wait in vd_coord_ready. hash is the
 * placement hash of (collection, key). version is the write's, stamped by the host (the
 * coordinator's HLC and node id). Returns 0, VD_EINVAL (bad parameters, an empty ring) or
 * VD_ENOMEM. A ring with fewer than rf members places on what it has; the operation then fails
 * with the numbers if fewer than `need` replicas exist. *out is freed with vd_coord_op_free.
 */
int vd_coord_write_new(const struct vd_coord_params *p, const struct vd_coord_ring *ring,
                       uint64_t hash, struct vd_version version, struct vd_coord_op **out);
int vd_coord_read_new(const struct vd_coord_params *p, const struct vd_coord_ring *ring,
                      uint64_t hash, struct vd_coord_op **out);
/* A search over the whole ring; the answer is the verified top offset..offset+limit. */
int vd_coord_search_new(const struct vd_coord_params *p, const struct vd_coord_ring *ring,
                        uint32_t offset, uint32_t limit, struct vd_coord_op **out);
void vd_coord_op_free(struct vd_coord_op *op);

/* Feeds one reply. Replies to an older attempt, from a node not asked, or for a finished
 * operation are ignored. Returns 0, VD_EINVAL (malformed: wrong type for the operation, a range
 * out of bounds) or VD_ENOMEM (the reply is then not taken). */
int vd_coord_step(struct vd_coord_op *op, const struct vd_coord_reply *r);
/* Advances the clock (never backwards): deadlines, speculative reads and retries. */
void vd_coord_tick(struct vd_coord_op *op, uint64_t now_ms);
/* The host stored the hint a VD_COORD_HINT action asked for. */
void vd_coord_hinted(struct vd_coord_op *op, uint64_t node);
/* A newer ring after VD_COORD_NEED_RING: placement is redone and every replica asked again
 * (records are idempotent). A ring not newer than the operation's changes nothing. Returns 0,
 * VD_ENOMEM. */
int vd_coord_reroute(struct vd_coord_op *op, const struct vd_coord_ring *ring);
/* When vd_coord_tick next has work (UINT64_MAX: none). */
uint64_t vd_coord_next_deadline(const struct vd_coord_op *op);

/* The actions to carry out; they point into op and stay valid until vd_coord_advance. Returns
 * true if there are any. */
bool vd_coord_ready(struct vd_coord_op *op, const struct vd_coord_action **acts, size_t *n);
void vd_coord_advance(struct vd_coord_op *op);
/* Nothing more will happen: the client was answered and every replica acknowledged, was hinted
 * or ran out of time, and background repair is over. */
bool vd_coord_done(const struct vd_coord_op *op);

/* The client's answer once VD_COORD_REPLY came out: 0, VD_EUNAVAIL with the sentence a user
 * reads in err (e.g. "write needs 2 of 3 replicas, 1 answered within 2000 ms"), or VD_ENOTFOUND
 * when a replica answered VD_COORD_GONE (the host names the collection). VD_EBUSY before. */
int vd_coord_result(const struct vd_coord_op *op, struct vd_err *err);
/* A read's answer: the newest copy the replicas hold (present false, or tombstone: not found)
 * and a node holding it. */
void vd_coord_read_newest(const struct vd_coord_op *op, struct vd_coord_copy *copy, uint64_t *node);
/* A search's answer: the verified items, best first, offset already skipped; points into op.
 * *complete is false when a range still needed items below its floor after the last round. */
void vd_coord_search_items(const struct vd_coord_op *op, const struct vd_coord_item **items,
                           size_t *n, bool *complete);
/* A search's ranges: replicas filter their points with vd_coord_search_in_range. */
uint32_t vd_coord_search_n_ranges(const struct vd_coord_op *op);
bool vd_coord_search_in_range(const struct vd_coord_op *op, uint32_t range, uint64_t hash);
/* The arcs (start, end] of range, in ring order, into out (room for max of them): what a SEND of
 * that range asks the replica to search. Returns how many the range has (which may be more than
 * max). */
size_t vd_coord_search_arcs(const struct vd_coord_op *op, uint32_t range, uint64_t (*out)[2],
                            size_t max);

/* The version order the operation uses (vd_version_cmp, unless a planted bug changes it). */
int vd_coord_version_cmp(const struct vd_coord_op *op, struct vd_version a, struct vd_version b);

const char *vd_coord_bug_name(enum vd_coord_bug bug);

/* ---- hash trees for anti-entropy repair (merkle.c) -------------------------------------------
 * A replica summarises what it holds of one ring arc (start, end] as a hash tree: the arc is cut
 * into VD_MERKLE_FANOUT^depth leaves of equal width (by placement hash), each leaf hashes the
 * entries (placement hash, version, hash of the record bytes) that fall in it, in hash order, and
 * each inner node hashes its VD_MERKLE_FANOUT children. Two replicas that hold the same versions
 * of the same points, byte for byte, build the same tree; comparing two trees from the root down
 * names the leaves (hash sub-arcs) that differ, so only those need their records listed. An empty
 * leaf or subtree hashes to 0. The memory is fixed (the struct), whatever the arc holds. */
#define VD_MERKLE_FANOUT 16
#define VD_MERKLE_MAX_DEPTH 3
#define VD_MERKLE_MAX_LEAVES 4096 /* VD_MERKLE_FANOUT ^ VD_MERKLE_MAX_DEPTH */
#define VD_MERKLE_MAX_NODES 4369  /* 1 + 16 + 256 + 4096 */

struct vd_merkle {
    uint64_t start, end; /* the arc (start, end]; start == end: the whole ring */
    unsigned depth;      /* 1..VD_MERKLE_MAX_DEPTH */
    uint64_t width;      /* placement hashes per leaf (the last leaf may hold fewer) */
    uint64_t count;      /* entries added */
    uint64_t last_off;   /* offset in the arc of the last entry added (hash order check) */
    bool finished;
    /* level by level from the root: level k holds FANOUT^k nodes from (FANOUT^k - 1) / 15 */
    uint64_t node[VD_MERKLE_MAX_NODES];
};

/* An empty tree over the arc (start, end] with FANOUT^depth leaves. VD_EINVAL for a depth out of
 * 1..VD_MERKLE_MAX_DEPTH. */
int vd_merkle_init(struct vd_merkle *t, uint64_t start, uint64_t end, unsigned depth);
/* Number of leaves of a tree of that depth (FANOUT^depth). */
uint32_t vd_merkle_n_leaves(unsigned depth);
/* The leaf whose sub-arc holds placement hash h, or -1 when h is not on the tree's arc. */
int64_t vd_merkle_leaf_of(const struct vd_merkle *t, uint64_t h);
/* Adds one entry: a point's placement hash, its version and a hash of its stored record bytes
 * (vd_hash64). Entries come in hash order along the arc (equal hashes in one order on every
 * replica: the hash-ordered table's). VD_EINVAL for a hash off the arc or out of order, or after
 * vd_merkle_finish (t unchanged). */
int vd_merkle_add(struct vd_merkle *t, uint64_t h, struct vd_version v, uint64_t rec_hash);
/* Computes the inner nodes from the leaves; the tree can then be compared. */
void vd_merkle_finish(struct vd_merkle *t);
uint64_t vd_merkle_root(const struct vd_merkle *t);
/* The leaf hashes (n_leaves of them, in arc order), to send them; points into t. */
const uint64_t *vd_merkle_leaves(const struct vd_merkle *t);
/* Sets the leaves of a tree received from a peer (init'd with the same arc and depth) and
 * finishes it. VD_EINVAL when n differs from the tree's leaf count. */
int vd_merkle_set_leaves(struct vd_merkle *t, const uint64_t *leaves, uint32_t n);
/* The leaves where two finished trees differ, in arc order, into out (room for n_leaves); *n gets
 * how many. Walks from the root and descends only into differing nodes. VD_EINVAL when the trees
 * cover other arcs or depths. */
int vd_merkle_diff(const struct vd_merkle *a, const struct vd_merkle *b, uint32_t *out,
                   uint32_t *n);
/* The sub-arc (*s, *e] of leaf i. False (and nothing written) for a leaf out of range or one
 * that holds no hash at all (an arc narrower than its leaf count). */
bool vd_merkle_leaf_arc(const struct vd_merkle *t, uint32_t i, uint64_t *s, uint64_t *e);

#endif
