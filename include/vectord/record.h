/*
 * vectord point record: the one binary form of a stored point version. The same bytes are kept on
 * disk (after the store's local change counter, see store.h) and, later, travel in replica
 * messages, hints, range streams and repair, so one (key, HLC, node) is the same bytes on every
 * replica and a hash over (key, version) sees every difference.
 *
 * Encoding (integers little-endian; floats IEEE-754 binary32 little-endian):
 *   u8  format            VD_RECORD_FORMAT
 *   u8  flags             bit 0: tombstone; the other bits are 0
 *   u8  key_len           9 or 17; then the point id's stored key (vd_pid_encode)
 *   u64 incarnation       of the collection
 *   u64 hlc, u64 node     the version (struct vd_version)
 *   u16 n_vectors         0 for a tombstone
 *   n_vectors times, in strictly increasing byte order of the names (so names are unique):
 *     u8  name_len        0 is the unnamed vector; then the name's bytes
 *     u8  kind            VD_RVEC_DENSE or VD_RVEC_SPARSE
 *     u32 n               dense: dimension (>= 1); sparse: pairs (>= 0)
 *     zero bytes up to the next multiple of 4 from the record's start
 *     sparse: u32 indices[n] (strictly increasing), then f32 values[n]; dense: f32 values[n]
 *   u32 payload_len       0 = no payload (a tombstone has none); then the payload's bytes (JSON
 *                         object text, opaque here)
 *   nothing after it.
 * Floats are finite. Every rule above is checked by vd_record_decode, so exactly one byte string
 * encodes a record and input from disk or a peer is never trusted.
 *
 * Pure code: no I/O, no allocation; thread-safe.
 */
#ifndef VECTORD_RECORD_H
#define VECTORD_RECORD_H

#include "vectord/core.h"

#define VD_RECORD_FORMAT 1
#define VD_RECORD_MAX_VECTORS 64 /* names per point */
#define VD_RECORD_FLAG_TOMB 0x01
/* Fixed part before the vectors: format, flags, key_len, the longest key, incarnation, hlc,
 * node, n_vectors. */
#define VD_RECORD_HDR_MAX (3 + VD_PID_KEY_MAX + 24 + 2)

enum { VD_RVEC_DENSE = 1, VD_RVEC_SPARSE = 2 };

/* One named vector. For vd_record_encode the caller's pointers are read (values: n floats,
 * indices: n u32, both in host order, which must be little-endian); vd_record_decode points them
 * into the decoded buffer: they are 4-byte aligned when the buffer is, else read them with
 * memcpy or vd_record_copy_values. */
struct vd_rvec {
    const char *name; /* name_len bytes, not NUL-terminated; name_len 0: the unnamed vector */
    uint8_t name_len;
    uint8_t kind;        /* VD_RVEC_DENSE or VD_RVEC_SPARSE */
    uint32_t n;          /* dense: dimension; sparse: number of pairs */
    const void *values;  /* n float32 */
    const void *indices; /* sparse: n u32, strictly increasing; NULL for dense */
};

struct vd_record {
    struct vd_pid id;
    uint64_t incarnation;
    struct vd_version version;
    bool tombstone;
    uint16_t n_vectors;
    const struct vd_rvec *vectors; /* n_vectors, sorted by name (encode checks the order) */
    const char *payload;           /* payload_len bytes; NULL (and 0) for none */
    size_t payload_len;
};

/* Bytes vd_record_encode writes for r (r is not checked here). */
size_t vd_record_size(const struct vd_record *r);
/* Writes the encoding of r into buf (cap bytes); *len gets the size. Errors: VD_EINVAL (names
 * not strictly increasing, a vector of an unknown kind or with a zero dimension, sparse indices
 * not strictly increasing, a non-finite value, vectors or payload on a tombstone, more than
 * VD_RECORD_MAX_VECTORS vectors), VD_ETOOBIG (cap too small). buf is not kept. */
int vd_record_encode(const struct vd_record *r, uint8_t *buf, size_t cap, size_t *len);
/* Decodes and fully validates buf[len] into *out. vecs must have room for
 * VD_RECORD_MAX_VECTORS; out->vectors points at it, and every pointer in *out and vecs points
 * into buf (valid while buf is). VD_ECORRUPT for anything but a valid record, with nothing
 * read beyond buf[len]. */
int vd_record_decode(const uint8_t *buf, size_t len, struct vd_record *out,
                     struct vd_rvec *vecs);
/* The vector named name[name_len] of a decoded or to-be-encoded record, or NULL. */
const struct vd_rvec *vd_record_vector(const struct vd_record *r, const char *name,
                                       size_t name_len);
/* Copies the n values of v into out[v->n] (any alignment of the source). */
void vd_record_copy_values(const struct vd_rvec *v, float *out);

#endif
