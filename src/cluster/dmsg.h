/*
 * Data messages between a coordinator and the replicas of a collection: the bodies the data
 * transport carries (which adds its own message id and the deadline). Each request names the
 * collection by name and incarnation and carries the ring version the coordinator placed it on,
 * so a replica on another ring answers wrong-ring and never applies or denies what it does not
 * own; each answer echoes the attempt it is for (struct vd_coord_action.attempt).
 *
 * Encoding (integers big-endian; floats as their IEEE-754 binary32 bits, big-endian):
 *   request: u8 VD_DMSG_VERSION, u8 kind, u32 attempt, u64 incarnation, u64 ring_version,
 *            u8 name_len, name bytes (1..255), u8 rid_len (0..VD_REQID_MAX), rid bytes (the
 *            client request's id, visible ASCII: core.h; 0 bytes for work of the node's own,
 *            such as hint replay), then by kind:
 *     WRITE   u32 n (1..VD_DMSG_MAX_ITEMS), n x (u32 len, a point record: record.h)
 *     READ    u32 n (1..VD_DMSG_MAX_ITEMS), n x key; u8 with_record (0/1)
 *     SEARCH  u32 k (1..VD_DMSG_MAX_ITEMS), u32 ef, u8 exact (0/1), u8 quant (bit 0 ignore the
 *             int8 codes, bit 1 no rescoring), f32 oversampling (0, or 1 and more), u32 n_arcs
 *             (0..VD_DMSG_MAX_ARCS; 0 = the whole ring), n_arcs x (u64 start, u64 end), query,
 *             filter
 *     SCROLL  u32 k (1..VD_DMSG_MAX_ITEMS), u8 has_from (0/1), [key: the first id], u32 n_arcs,
 *             n_arcs x (u64 start, u64 end), filter
 *     VERIFY  u32 n (1..VD_DMSG_MAX_ITEMS), n x key, query (dim 0 allowed: no score, as for a
 *             scroll), filter
 *     TREE    u64 start, u64 end (the ring arc (start, end]), u8 depth (1..VD_MERKLE_MAX_DEPTH),
 *             u8 with_leaves (0/1)
 *     LEAF    u64 start, u64 end (a sub-arc), u32 k (1..VD_DMSG_MAX_ITEMS)
 *   key:    u8 key_len (9 or 17), the stored key (vd_pid_encode)
 *   query:  u32 dim (1..65536; VERIFY 0..65536), dim x f32
 *   filter: u32 len (0: none), the filter's JSON text
 *   reply:  u8 VD_DMSG_VERSION, u8 kind (the request's), u8 status, u32 attempt, u64 ring_version
 *           (the replica's), then by status:
 *     ERROR   u16 len, the message (what went wrong, for the log and the client)
 *     OK      by kind:
 *       WRITE   u32 n, n x u8 VD_DMSG_HELD: the record, or a newer version of its point, is
 *               durable on the replica (last-write-wins keeps the newer; both are an ack)
 *       READ    u32 n, n x copy, each followed by u32 len and the record when asked for and
 *               present (else len 0)
 *       SEARCH  u8 complete, u32 n, n x (key, u64 hlc, u64 node, f32 score), best first
 *       SCROLL  as SEARCH, the score 0, in id order
 *       VERIFY  u32 n, n x (copy, u8 match, f32 score)
 *       TREE    u64 count, u64 root, u8 depth (1..VD_MERKLE_MAX_DEPTH), u32 n (0, or
 *               16^depth when asked with_leaves), n x u64 leaf hash (coord.h, vd_merkle)
 *       LEAF    u8 complete, u32 n, n x (key, copy: present), in placement-hash order; at most
 *               k, complete when the sub-arc holds no more
 *     others  nothing
 *   copy:   u8 flags (bit 0 present, bit 1 tombstone), u64 hlc, u64 node
 * Nothing may follow the last field. Every rule is checked when decoding, so input from a peer is
 * never trusted; decoded pointers point into the buffer (floats are copied out, aligned).
 *
 * Pure: no I/O; thread-safe.
 */
#ifndef VECTORD_CLUSTER_DMSG_H
#define VECTORD_CLUSTER_DMSG_H

#include "vectord/coord.h"
#include "vectord/json.h"

/* 2: TREE and LEAF (anti-entropy repair); 3: requests carry the client request's id. A peer of
 * another version is refused as malformed. */
#define VD_DMSG_VERSION 3
#define VD_DMSG_MAX_ITEMS 65536
#define VD_DMSG_MAX_ARCS 65536
#define VD_DMSG_MAX_DIM 65536

enum vd_dmsg_kind {
    VD_DMSG_WRITE = 1,
    VD_DMSG_READ,
    VD_DMSG_SEARCH,
    VD_DMSG_VERIFY,
    VD_DMSG_SCROLL,
    VD_DMSG_TREE, /* the hash tree of what a replica holds of a ring arc */
    VD_DMSG_LEAF, /* (id, version, tombstone) of every point a replica holds in a sub-arc */
};
#define VD_DMSG_KIND_LAST VD_DMSG_LEAF

enum vd_dmsg_status {
    VD_DMSG_OK = 1,
    VD_DMSG_WRONG_RING, /* the replica is on another ring version (the reply's ring_version) */
    VD_DMSG_GONE,       /* the collection incarnation was deleted: the coordinator answers 404 */
    VD_DMSG_NOT_YET,    /* the incarnation was not applied here before the deadline */
    VD_DMSG_ERROR,      /* refused or failed (clock skew, storage full, malformed): message */
};

enum { VD_DMSG_HELD = 1 };

struct vd_dmsg_blob {
    const uint8_t *p;
    uint32_t len;
};

struct vd_dmsg_req {
    uint8_t kind; /* enum vd_dmsg_kind */
    uint32_t attempt;
    uint64_t incarnation, ring_version;
    char coll[256]; /* NUL-terminated */
    /* the client request's id (NUL-terminated; "" for none), logged by the replica so that one
     * grep over every node's log follows a request */
    char rid[VD_REQID_MAX + 1];
    /* WRITE */
    const struct vd_dmsg_blob *recs;
    uint32_t n_recs;
    /* READ, VERIFY */
    const struct vd_pid *ids;
    uint32_t n_ids;
    bool with_record; /* READ */
    /* SEARCH (k, arcs: SCROLL too) */
    uint32_t k, ef;
    bool exact, quant_ignore, quant_no_rescore;
    float oversampling;
    const uint64_t (*arcs)[2];
    uint32_t n_arcs;
    /* SCROLL: the first id when has_from */
    bool has_from;
    struct vd_pid from;
    /* SEARCH, VERIFY (filter: SCROLL too); VERIFY dim 0: no query */
    const float *query;
    uint32_t dim;
    const char *filter; /* JSON text, filter_len bytes, not NUL-terminated; NULL: none */
    uint32_t filter_len;
    /* TREE, LEAF (k: LEAF too): the arc (range[0], range[1]] */
    uint64_t range[2];
    uint8_t depth;     /* TREE */
    bool with_leaves;  /* TREE */
};

struct vd_dmsg_read_item {
    struct vd_coord_copy copy;
    struct vd_dmsg_blob rec; /* len 0: not asked for, or absent */
};

struct vd_dmsg_verify_item {
    struct vd_coord_copy copy;
    bool match;
    float score;
};

struct vd_dmsg_leaf_item {
    struct vd_pid id;
    struct vd_coord_copy copy; /* present */
};

struct vd_dmsg_reply {
    uint8_t kind, status;
    uint32_t attempt;
    uint64_t ring_version;
    const char *msg; /* ERROR: msg_len bytes, not NUL-terminated */
    uint16_t msg_len;
    /* OK, by kind: */
    const uint8_t *results; /* WRITE: n_items VD_DMSG_HELD */
    const struct vd_dmsg_read_item *reads;
    bool complete; /* SEARCH, SCROLL */
    const struct vd_coord_cand *cands;
    const struct vd_dmsg_verify_item *verifies;
    const struct vd_dmsg_leaf_item *listing; /* LEAF (complete too) */
    uint32_t n_items;
    /* TREE */
    uint64_t tree_count, tree_root;
    uint8_t depth;
    const uint64_t *leaves; /* n_leaves of them */
    uint32_t n_leaves;
};

/* "write", "read", ... ("unknown" for another value); for logs. */
const char *vd_dmsg_kind_name(uint8_t kind);
/* "ok", "wrong ring", "gone", "not yet", "error" ("unknown" for another value); for logs. */
const char *vd_dmsg_status_name(uint8_t status);

/* Appends the encoding of r to out (check vd_buf_ok). VD_EINVAL when r breaks a rule above (an
 * unknown kind, a count out of range, a name that is empty or too long, a record not decodable,
 * a non-finite query value); out is then unchanged. */
int vd_dmsg_req_encode(const struct vd_dmsg_req *r, struct vd_buf *out);
int vd_dmsg_reply_encode(const struct vd_dmsg_reply *r, struct vd_buf *out);

/* Decodes and checks buf[len]. Arrays are allocated (released with vd_dmsg_req_free /
 * vd_dmsg_reply_free, also after a failure); other pointers point into buf, which must outlive
 * *out. VD_ECORRUPT for anything but a valid message, VD_ENOMEM. */
int vd_dmsg_req_decode(const uint8_t *buf, size_t len, struct vd_dmsg_req *out);
void vd_dmsg_req_free(struct vd_dmsg_req *r);
int vd_dmsg_reply_decode(const uint8_t *buf, size_t len, struct vd_dmsg_reply *out);
void vd_dmsg_reply_free(struct vd_dmsg_reply *r);

#endif
