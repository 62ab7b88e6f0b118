/*
 * Layout and internal API of the HNSW index, shared by hnsw.c (graph, search, upsert) and
 * persist.c (save/load).
 *
 * Memory layout. Slots are numbered from 0. Each slot owns one fixed-size block:
 *     [vector: dim floats][state u8, 3 pad][count u32][2M links u32]   (padded to 64 bytes)
 * so a distance computation and the neighbour list of a node share cache lines, as in hnswlib's
 * level-0 block. A quantized index ("lean", chosen at creation) has blocks without the vector
 * (the walk reads code rows, kept in their own chunks) and its floats in side chunks. Blocks live in chunks of 2^chunk_shift slots; the chunk table grows by copying
 * into a bigger table (old tables stay allocated until vd_index_free), so a reader holding any
 * table can use it for every slot below that table's capacity without locks. Per-slot metadata
 * that the hot loop does not need (id, level, upper-layer links) lives in parallel chunks.
 *
 * Concurrency. Link words and the state byte are atomics: writers change a neighbour list under
 * the node's spin lock with release stores; searches read without locks with acquire loads and
 * may see a list mid-rewrite, which only ever holds valid slot numbers. A slot's vector is never
 * overwritten while it can be reached: replacing a point writes a new slot, and a deleted slot is
 * reused only after repair() removed every link to it while holding `gate` exclusively (searches
 * and linkers hold it shared), which is the grace period for readers that still held the slot.
 */
#ifndef VD_HNSW_INT_H
#define VD_HNSW_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "index_int.h"
#include "vectord/index.h"

#define VD_HNSW_MAX_LEVEL 31
#define VD_SLOT_NONE UINT32_MAX
#define VD_EP_NONE UINT64_MAX

/* Slot states (byte in the block). Visible to searches: PENDING, LINKING, LIVE. */
enum { ST_FREE = 0, ST_PENDING, ST_LINKING, ST_LIVE, ST_DELETED, ST_RECLAIM };

struct vd__meta {
    struct vd_pid id;
    _Atomic uint32_t *upper; /* level * (1 + m) words: count then m links, per upper layer */
    uint32_t pend_pos;       /* index in ix->pend, or VD_SLOT_NONE */
    uint8_t level;
    uint8_t in_graph;        /* has been linked (links may point at it) */
    atomic_flag lock;        /* guards writes of this node's neighbour lists */
};

struct vd__tabs {
    uint32_t cap;             /* entries in blk and meta */
    uint8_t **blk;
    struct vd__meta **meta;
    uint8_t **code;           /* int8 code chunks (NULL entries when not quantized) */
    float **fvec;             /* float chunks of a lean index while it holds its floats */
    struct vd__tabs *prev;    /* older, smaller table; freed with the index */
};

struct vd__cand {
    float d;
    uint32_t id;
};

/* Per-search scratch, pooled: visited tags with an epoch, two heaps and a scratch array. */
struct vd__sctx {
    uint16_t *tags;
    uint32_t tag_cap;
    uint16_t epoch;
    uint32_t lim; /* slots covered by both the tags and the caller's table snapshot */
    struct vd__cand *cand; /* min-heap of candidates to expand */
    uint32_t ncand, cand_cap;
    struct vd__cand *top;  /* max-heap of the best found */
    uint32_t ntop, top_cap;
    struct vd__cand *tmp;
    uint32_t tmp_cap;
    uint32_t *ids;
    uint32_t ids_cap;
    uint8_t *qcode; /* the query's code row (quantized indexes), code_size bytes */
};

struct vd_index {
    struct vd_index_params p;
    const struct vd__kernels *k;
    vd__dist_fn raw;      /* kernel behind dist() */
    bool negate;          /* internal distance = -dot (cosine, dot) */
    uint32_t m, m0;       /* links per upper layer, on layer 0 */
    size_t vec_bytes, slot_size, link_off;
    /* Lean layout (quantized at creation): blocks hold no vector, only [state][count][links];
     * the floats live in t->fvec chunks while `fheld`: always with always_ram (or without a
     * source), else until the codes are trained and again when the config asks for the floats
     * in memory. Without them every float is read from p.src. fheld changes with gate held
     * exclusively and mu held; `fcollect` (mu) makes upserts fill fvec while floats are being
     * read back from the source. */
    bool lean, fheld, fcollect;
    bool has_src; /* p.src is set: the floats can be left on disk */
    uint32_t chunk_shift, chunk_mask;
    double ml;

    _Atomic(struct vd__tabs *) tabs;

    /* mu guards slot allocation, state changes, pend, todo, free list and the id map. */
    pthread_mutex_t mu;
    _Atomic uint32_t nslots; /* slots ever handed out (high-water mark) */
    uint32_t nchunks;
    uint32_t *freel;
    size_t nfree, free_cap;
    uint32_t *pend; /* visible slots not yet fully linked; scanned exactly by searches */
    size_t npend, pend_cap;
    uint32_t *todo; /* FIFO ring of slots to link (may hold stale entries; checked on pop) */
    size_t todo_head, todo_len, todo_cap;
    uint32_t *map;  /* open-addressing id -> slot */
    size_t map_cap, map_used;

    _Atomic size_t live, pending, tomb;
    _Atomic size_t upper_bytes; /* bytes of upper-layer link arrays (for vd_index_memory) */
    _Atomic uint64_t seq;
    _Atomic uint64_t level_ctr;

    pthread_rwlock_t gate; /* shared: search, link; exclusive: repair, save */
    pthread_mutex_t ep_mu; /* serialises entry-point changes */
    _Atomic uint64_t ep;   /* (max level << 32) | slot, or VD_EP_NONE */

    pthread_mutex_t pool_mu;
    struct vd__sctx **pool;
    size_t npool, pool_cap, nctx;

    /* int8 quantization. A code row per slot, in chunks parallel to the blocks:
     *     [sum of codes u32][pad u32][sum of squared codes u64][dim codes]  (padded to 64)
     * so that dot products and squared distances of codes need one integer kernel each.
     * q, the range and the codes change only with gate held exclusively and mu held (upserts
     * encode their own row under mu); searches read them under gate shared once qready. */
    struct vd_index_quant q;
    const struct vd__code_kernels *ck;
    size_t code_size;
    _Atomic bool qready;    /* range trained and every slot's row written */
    float qlo, qalpha;      /* value = qlo + qalpha * code */
    float qc0, qc1, qc2;    /* dim * lo^2, lo * alpha, alpha^2 */
    size_t qtrained_n;      /* live points when last trained */
    float qtrained_q;       /* the quantile the range was trained for */
    atomic_flag qtraining;  /* one training at a time */
};

static inline uint8_t *vd__code(const struct vd_index *ix, const struct vd__tabs *t, uint32_t s)
{
    return t->code[s >> ix->chunk_shift] + (size_t)(s & ix->chunk_mask) * ix->code_size;
}

/* The float vector of slot s: in its block, or in the lean index's float chunks (only while
 * vd__floats()). */
static inline float *vd__vec(const struct vd_index *ix, const struct vd__tabs *t, uint32_t s)
{
    if (ix->lean)
        return t->fvec[s >> ix->chunk_shift] + (size_t)(s & ix->chunk_mask) * ix->p.dim;
    return (float *)(t->blk[s >> ix->chunk_shift] + (size_t)(s & ix->chunk_mask) * ix->slot_size);
}
/* Whether the float vectors are in memory (else they are read from p.src and the graph is
 * walked and linked on the codes). Stable while gate or mu is held. */
static inline bool vd__floats(const struct vd_index *ix)
{
    return !ix->lean || ix->fheld;
}

static inline uint8_t *vd__blk(const struct vd_index *ix, const struct vd__tabs *t, uint32_t s)
{
    return t->blk[s >> ix->chunk_shift] + (size_t)(s & ix->chunk_mask) * ix->slot_size;
}
static inline struct vd__meta *vd__meta(const struct vd_index *ix, const struct vd__tabs *t,
                                        uint32_t s)
{
    return &t->meta[s >> ix->chunk_shift][s & ix->chunk_mask];
}
static inline _Atomic uint8_t *vd__state(const struct vd_index *ix, uint8_t *blk)
{
    return (_Atomic uint8_t *)(blk + ix->link_off);
}
/* Layer-0 list: word 0 is the count, then m0 links. */
static inline _Atomic uint32_t *vd__l0(const struct vd_index *ix, uint8_t *blk)
{
    return (_Atomic uint32_t *)(blk + ix->link_off + 4);
}

/* Internal helpers used by persist.c. All require ix->mu held unless stated. */
int vd__index_alloc_slot(struct vd_index *ix, uint32_t *out);
int vd__index_map_put(struct vd_index *ix, uint32_t slot); /* VD_EEXIST on a duplicate id */
int vd__index_pend_push(struct vd_index *ix, uint32_t slot);
int vd__index_free_push(struct vd_index *ix, uint32_t slot);
/* Quantization helpers (quant.c). */
/* Allocates the code chunk of every slot chunk that lacks one (mu held, or no concurrency). */
int vd__quant_alloc_chunks(struct vd_index *ix);
/* Writes the code row of v with the current range. */
void vd__quant_encode(const struct vd_index *ix, const float *v, uint8_t *row);
/* Sets the range (value = lo + alpha * code, alpha > 0) without touching any code row. */
void vd__quant_set_range(struct vd_index *ix, float lo, float alpha);
/* Sets the range and writes every slot's code row (from the floats, or, when they are out of
 * memory, from the old codes decoded), publishes qready, and drops the floats of a lean index
 * that keeps them on disk. gate exclusive and mu held. */
void vd__quant_apply_range(struct vd_index *ix, float lo, float alpha);
/* Frees the float chunks of a lean index (gate exclusive and mu held). */
void vd__index_drop_floats(struct vd_index *ix);
/* Allocates the float chunk of every slot chunk that lacks one (mu held). */
int vd__index_alloc_fvec(struct vd_index *ix);
/* Reads the floats of a lean index back from its source into memory; takes gate and mu itself
 * (neither may be held). Returns 0, VD_ENOMEM or the source's error. */
int vd__index_restore_floats(struct vd_index *ix);
/* Whether the config keeps the floats of this lean index out of memory. */
static inline bool vd__floats_on_disk(const struct vd_index *ix)
{
    return ix->lean && ix->has_src && ix->q.enabled && !ix->q.always_ram;
}
/* Trains the range from a sample of the stored vectors and quantizes every slot; takes gate and
 * mu itself. Returns 0, VD_EBUSY (another training runs) or VD_ENOMEM. */
int vd__quant_train(struct vd_index *ix);
/* The quantile a config asks for (0 = the default, 0.99). */
static inline float vd__quant_quantile(const struct vd_index_quant *q)
{
    return q->quantile > 0.0f ? q->quantile : 0.99f;
}

/* Distance of two code rows, in the index's internal units (as dist()). */
static inline float vd__code_dist(const struct vd_index *ix, const uint8_t *a, const uint8_t *b)
{
    uint32_t dim = ix->p.dim;
    uint32_t sa, sb;
    uint64_t qa, qb;
    switch (ix->p.metric) {
    case VD_METRIC_COSINE:
    case VD_METRIC_DOT: {
        __builtin_memcpy(&sa, a, 4);
        __builtin_memcpy(&sb, b, 4);
        float d = (float)ix->ck->dot(a + 16, b + 16, dim);
        return -(ix->qc0 + ix->qc1 * (float)(sa + sb) + ix->qc2 * d);
    }
    case VD_METRIC_EUCLID: {
        __builtin_memcpy(&qa, a + 8, 8);
        __builtin_memcpy(&qb, b + 8, 8);
        int64_t d = (int64_t)(qa + qb) - 2 * (int64_t)ix->ck->dot(a + 16, b + 16, dim);
        return ix->qc2 * (float)d;
    }
    default:
        return ix->qalpha * (float)ix->ck->l1(a + 16, b + 16, dim);
    }
}

/* Repairs links around deleted slots and frees them; takes gate and mu itself. force ignores
 * the threshold. */
void vd__index_repair(struct vd_index *ix, bool force);

#endif
