/*
 * Hash trees over a ring arc, for anti-entropy repair (coord.h). Pure: no I/O, no allocation.
 *
 * A placement hash h lies on the arc (start, end] at offset h - start - 1 (modulo 2^64), in
 * [0, len) with len = end - start (0 standing for the whole ring, 2^64). Leaf i holds the offsets
 * [i * width, (i + 1) * width): equal widths, so two replicas cut an arc identically without
 * agreeing on anything but the arc and the depth.
 */
#include <string.h>

#include "vectord/coord.h"

#define SEED_ENTRY UINT64_C(0x76646d6b656e7472) /* "vdmkentr" */
#define SEED_LEAF UINT64_C(0x76646d6b6c656166)  /* "vdmkleaf" */
#define SEED_NODE UINT64_C(0x76646d6b6e6f6465)  /* "vdmknode" */

/* Index of the first node of level k (FANOUT^k - 1) / (FANOUT - 1). */
static uint32_t level_start(unsigned k)
{
    return (vd_merkle_n_leaves(k) - 1) / (VD_MERKLE_FANOUT - 1);
}

uint32_t vd_merkle_n_leaves(unsigned depth)
{
    return (uint32_t)1 << (4 * depth); /* FANOUT is 16: 4 bits a level */
}

int vd_merkle_init(struct vd_merkle *t, uint64_t start, uint64_t end, unsigned depth)
{
    if (depth < 1 || depth > VD_MERKLE_MAX_DEPTH)
        return VD_EINVAL;
    memset(t, 0, sizeof *t);
    t->start = start;
    t->end = end;
    t->depth = depth;
    uint64_t len = end - start, n = vd_merkle_n_leaves(depth);
    t->width = len == 0 ? UINT64_C(1) << (64 - 4 * depth) : len / n + (len % n ? 1 : 0);
    return 0;
}

/* The offset of h on t's arc; false when h is not on it. */
static bool offset_of(const struct vd_merkle *t, uint64_t h, uint64_t *off)
{
    uint64_t len = t->end - t->start;
    *off = h - t->start - 1;
    return len == 0 || *off < len;
}

int64_t vd_merkle_leaf_of(const struct vd_merkle *t, uint64_t h)
{
    uint64_t off;
    if (!offset_of(t, h, &off))
        return -1;
    return (int64_t)(off / t->width);
}

int vd_merkle_add(struct vd_merkle *t, uint64_t h, struct vd_version v, uint64_t rec_hash)
{
    uint64_t off;
    if (t->finished || !offset_of(t, h, &off) || (t->count && off < t->last_off))
        return VD_EINVAL;
    uint8_t e[32];
    vd_be64_put(e, h);
    vd_be64_put(e + 8, v.hlc);
    vd_be64_put(e + 16, v.node);
    vd_be64_put(e + 24, rec_hash);
    uint64_t *leaf = &t->node[level_start(t->depth) + off / t->width];
    uint8_t chain[16];
    vd_be64_put(chain, *leaf);
    vd_be64_put(chain + 8, vd_hash64(e, sizeof e, SEED_ENTRY));
    *leaf = vd_hash64(chain, sizeof chain, SEED_LEAF);
    t->last_off = off;
    t->count++;
    return 0;
}

void vd_merkle_finish(struct vd_merkle *t)
{
    for (unsigned k = t->depth; k-- > 0;) {
        uint32_t first = level_start(k), below = level_start(k + 1);
        for (uint32_t i = 0; i < vd_merkle_n_leaves(k); i++) {
            const uint64_t *child = &t->node[below + i * VD_MERKLE_FANOUT];
            uint8_t b[VD_MERKLE_FANOUT * 8];
            bool any = false;
            for (unsigned j = 0; j < VD_MERKLE_FANOUT; j++) {
                vd_be64_put(b + 8 * j, child[j]);
                any |= child[j] != 0;
            }
            /* an empty subtree is 0 whatever its shape, like an empty leaf */
            t->node[first + i] = any ? vd_hash64(b, sizeof b, SEED_NODE) : 0;
        }
    }
    t->finished = true;
}

uint64_t vd_merkle_root(const struct vd_merkle *t)
{
    return t->node[0];
}

const uint64_t *vd_merkle_leaves(const struct vd_merkle *t)
{
    return &t->node[level_start(t->depth)];
}

int vd_merkle_set_leaves(struct vd_merkle *t, const uint64_t *leaves, uint32_t n)
{
    if (n != vd_merkle_n_leaves(t->depth) || t->finished)
        return VD_EINVAL;
    memcpy(&t->node[level_start(t->depth)], leaves, n * sizeof *leaves);
    vd_merkle_finish(t);
    return 0;
}

static void diff_at(const struct vd_merkle *a, const struct vd_merkle *b, unsigned k, uint32_t i,
                    uint32_t *out, uint32_t *n)
{
    uint32_t at = level_start(k) + i;
    if (a->node[at] == b->node[at])
        return;
    if (k >= a->depth || k >= VD_MERKLE_MAX_DEPTH) { /* the second: for the compiler's bounds */
        out[(*n)++] = i;
        return;
    }
    for (uint32_t j = 0; j < VD_MERKLE_FANOUT; j++)
        diff_at(a, b, k + 1, i * VD_MERKLE_FANOUT + j, out, n);
}

int vd_merkle_diff(const struct vd_merkle *a, const struct vd_merkle *b, uint32_t *out,
                   uint32_t *n)
{
    *n = 0;
    if (a->start != b->start || a->end != b->end || a->depth != b->depth || !a->finished ||
        !b->finished)
        return VD_EINVAL;
    diff_at(a, b, 0, 0, out, n);
    return 0;
}

bool vd_merkle_leaf_arc(const struct vd_merkle *t, uint32_t i, uint64_t *s, uint64_t *e)
{
    uint32_t n = vd_merkle_n_leaves(t->depth);
    uint64_t len = t->end - t->start;
    if (i >= n)
        return false;
    uint64_t lo = (uint64_t)i * t->width; /* below 2^64: width is at most ceil(2^64 / n) */
    if (len && lo >= len)
        return false;
    *s = t->start + lo;
    if (i == n - 1 || (len && len - lo <= t->width))
        *e = t->end;
    else
        *e = t->start + lo + t->width;
    return true;
}
