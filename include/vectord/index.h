/*
 * vectord index: distance kernels, an HNSW graph (Malkov & Yashunin, 2016) with an exact scan of
 * the not-yet-linked tail, and persistence of the graph.
 *
 * Thread rules: one struct vd_index may be used from any number of threads at once. Searches take
 * no global exclusive lock; upserts and deletes are cheap (memcpy + bookkeeping) and are meant to
 * be called in commit order from the storage writer thread; vd_index_link_pending() is called by
 * background workers, several at once. The only exclusive section is the periodic repair of
 * deleted slots (inside vd_index_link_pending) and vd_index_save(); both are short compared with
 * a build.
 */
#ifndef VECTORD_INDEX_H
#define VECTORD_INDEX_H

#include "vectord/core.h"

/* Scalar int8 quantization, as Qdrant's "scalar" quantization of type int8: every value is
 * clipped to one range [lo, hi] shared by all dimensions, holding the `quantile` share of the
 * values seen when training, and mapped to 256 levels. The graph is walked on these codes (a
 * quarter of the float bytes) and the best candidates are rescored with the float vectors. */
struct vd_index_quant {
    bool enabled;
    float quantile;  /* 0.5..1; 0 = 0.99 */
    /* false: once the codes are trained the float vectors leave memory and are read from the
     * index's source (struct vd_index_source) for rescoring and exact scans; the graph is then
     * linked on the codes. Takes effect only for an index created (or loaded) with it and a
     * source; a change to false on a live index that holds its floats in its blocks applies at
     * the next load. */
    bool always_ram;
};

/* Where an index whose float vectors stay out of memory (quantized with always_ram false) reads
 * them: a storage snapshot per begin..end. begin opens one for the calling thread (*rd is handed
 * back to get and end); get points *out at the vector of id (dim floats, float-aligned), valid
 * until the next get or end, or returns VD_ENOTFOUND when the point is gone (deleted: the index
 * leaves it out of results); end closes the snapshot. The snapshot may be newer than the index
 * (a write not yet applied to it): the index then scores the point's newest vector. The index
 * opens a read holding at most its search gate shared, never its mutex (so a thread that holds a
 * storage read while it applies a write never waits for one that waits for storage), reads the
 * points it needs (the rescored candidates; every point for an exact scan or to bring the floats
 * back) and ends before returning; callbacks must be thread-safe. */
struct vd_index_source {
    int (*begin)(void *ctx, void **rd);
    int (*get)(void *ctx, void *rd, const struct vd_pid *id, const float **out);
    void (*end)(void *ctx, void *rd);
    void *ctx; /* owned by the caller; must outlive the index */
};

/* Points needed before the range is trained; below that (and until the first training) the graph
 * is walked on the float vectors. The range is trained again, and every code rewritten, when the
 * index has grown to 4 times the points it was last trained on. */
#define VD_INDEX_QUANT_TRAIN_MIN 1024

struct vd_index_params {
    uint32_t dim;
    enum vd_metric metric;
    uint32_t m;                      /* default 16 (0 = default) */
    uint32_t ef_construct;           /* default 100, Qdrant's default (0 = default) */
    /* Below this many KiB of live vectors, searches are exact (Qdrant semantics). 0 means never
     * switch to exact automatically; vd_index_params_init() fills Qdrant's default, 10000. */
    uint32_t full_scan_threshold_kb;
    uint64_t seed;                   /* levels are drawn from this seed */
    struct vd_index_quant quant;     /* disabled by default */
    struct vd_index_source src;      /* begin NULL = none: the floats always stay in memory */
};

/* Fills p with the defaults above for a dim-dimensional index of the given metric. */
void vd_index_params_init(struct vd_index_params *p, uint32_t dim, enum vd_metric metric);

struct vd_index; /* opaque, thread-safe */

/* Allocates an empty index. Returns 0, VD_ERANGE (dim outside 1..65536, m outside 2..128, unknown
 * metric) or VD_ENOMEM. The caller owns *out and releases it with vd_index_free(). */
int vd_index_new(const struct vd_index_params *p, struct vd_index **out);
/* Frees the index and everything it holds; no other call may be in flight. NULL is a no-op. */
void vd_index_free(struct vd_index *ix);

/* Normalises v[dim] in place (for cosine). Returns VD_ERANGE for a zero or non-finite vector.
 * A vector whose squared norm is already 1 within a few ulps is left bit-for-bit unchanged so
 * that export -> import is exact. */
int vd_vec_normalize(float *v, uint32_t dim);

/* Stores (or replaces) the vector of `id` (vec[dim], already normalised for cosine; copied).
 * Visible to searches at once (the unlinked tail is scanned exactly) and linked into the graph
 * later by vd_index_link_pending(). Replacing an id marks its old slot deleted; deleted slots are
 * reused after the links that point at them are repaired. `seq` is the storage change counter of
 * this write; the index remembers the highest applied. Returns 0 or VD_ENOMEM. */
int vd_index_upsert(struct vd_index *ix, const struct vd_pid *id, const float *vec, uint64_t seq);
/* Tests only: the n-th vd_index_upsert from now (on any index) fails with VD_ENOMEM before it
 * changes anything, as an allocation failure would; 0 turns the countdown off. */
void vd_index_test_fail_upsert_after(unsigned n);
/* Removes id from results at once. Returns 0 or VD_ENOTFOUND (safe to ignore); seq is recorded
 * either way. */
int vd_index_delete(struct vd_index *ix, const struct vd_pid *id, uint64_t seq);
/* Links up to `max` pending points into the graph and, when enough slots are deleted, repairs the
 * links around them so the slots can be reused. Safe from several threads at once. Returns how
 * many points it linked (0 when none are pending). */
size_t vd_index_link_pending(struct vd_index *ix, size_t max);
size_t vd_index_pending(const struct vd_index *ix);   /* stored but not yet linked */
size_t vd_index_count(const struct vd_index *ix);     /* live points */
uint64_t vd_index_applied_seq(const struct vd_index *ix);
uint32_t vd_index_dim(const struct vd_index *ix);
/* Copies the stored vector of id into out[dim] (out NULL: only says whether id is stored).
 * Returns 0 or VD_ENOTFOUND. */
int vd_index_get_vector(const struct vd_index *ix, const struct vd_pid *id, float *out);

/* Filter predicate evaluated during graph traversal (filtered points are still traversed for
 * connectivity but not returned) and in exact scans. Called from the searching thread; must be
 * thread-safe. `id` is only valid during the call. */
typedef bool (*vd_index_filter_fn)(const struct vd_pid *id, uint32_t slot, void *ctx);

struct vd_search_req {
    const float *query;        /* dim floats; for cosine the caller normalises it */
    uint32_t k;                /* results wanted (limit + offset) */
    uint32_t ef;               /* 0 = max(k, 64); values below k are raised to k */
    bool exact;                /* force an exact scan */
    vd_index_filter_fn filter; /* NULL = all points */
    void *filter_ctx;
    /* Optional estimate of how many points pass the filter (0 = unknown); when that many vectors
     * are below full_scan_threshold_kb, the search is exact. */
    uint32_t filter_estimate;
    /* Optional candidate list (NULL = none): when set, the search scores exactly the points with
     * these ids instead of walking the graph or scanning every point, whatever `exact`, `ef` and
     * `filter_estimate` say. The filter, if set, is still asked about each. Ids that are not in
     * the index (never stored, or deleted or replaced before the search reads them) are skipped,
     * an id listed more than once counts once, and pending (not yet linked) points are scored
     * like linked ones. Scores and order are those of the exact scan over the same points. The
     * list is read only during the call and stays owned by the caller. */
    const struct vd_pid *candidates;
    uint32_t n_candidates;
    /* Quantized indexes only (Qdrant's params.quantization). The graph walk uses the int8 codes
     * unless quant_ignore; then, unless quant_no_rescore (scores are then the codes' estimate),
     * candidates are rescored with the float vectors: the best ceil(k * oversampling) when
     * oversampling is set (ef is raised to at least that many), else every candidate of the
     * beam (ef of them). Exact scans, candidate lists and the unlinked tail always score the
     * float vectors, except that with the floats on disk (always_ram false) the unlinked tail is
     * scored on its codes and rescored with the rest, and quant_ignore walks the codes too (there
     * is no float walk without floats in memory). */
    bool quant_ignore;
    bool quant_no_rescore;
    float oversampling; /* >= 1, or 0 = rescore the whole beam */
};

struct vd_search_hit {
    struct vd_pid id;
    float score;
};

/* Writes up to k hits best-first into out[k]; *n_out = count. Scores as Qdrant reports them:
 * cosine -> cosine similarity, dot -> dot product (higher first), euclid -> Euclidean distance
 * (lower first), manhattan -> L1 distance (lower first). Allocates nothing in steady state (search
 * contexts are pooled). Returns 0, VD_EINVAL (NULL query) or VD_ENOMEM (first use of a context). */
int vd_index_search(struct vd_index *ix, const struct vd_search_req *r, struct vd_search_hit *out,
                    uint32_t *n_out);

/* Persistence. vd_index_save writes the graph, the id map and the applied seq to `path`
 * (format versioned, CRC32C-checked; written to "<path>.tmp", fsynced, renamed, directory
 * fsynced). Vectors are not in the file: they live in storage, and load asks fetch(id, out, ctx)
 * for each stored point (return 0, or VD_ENOTFOUND when the point no longer exists: it is dropped
 * and the links around it repaired). Points that were still pending when saved come back pending.
 * vd_index_load returns VD_ENOTFOUND (no file), VD_ECORRUPT (truncated, bad checksum, or params
 * that do not match p: dim, metric, m), VD_EIO, VD_ENOMEM or a fetch error; the caller rebuilds.
 * Saving blocks searches and linking for the time it takes to serialise the graph. A quantized
 * index also saves its trained range; load quantizes the fetched vectors with it when p asks for
 * quantization (the codes themselves are not in the file, as the vectors are not). */
typedef int (*vd_index_fetch_fn)(const struct vd_pid *id, float *out, void *ctx);
int vd_index_save(struct vd_index *ix, const char *path);
int vd_index_load(const char *path, const struct vd_index_params *p, vd_index_fetch_fn fetch,
                  void *ctx, struct vd_index **out);

/* Bytes held by the index (vectors, codes, links, id map, search contexts). */
size_t vd_index_memory(const struct vd_index *ix);
/* Bytes of vector data held in memory: the float vectors (none once a quantized index keeps
 * them on disk) plus, when quantized, the codes. */
size_t vd_index_vector_memory(const struct vd_index *ix);

/* Changes the quantization of a live index (PATCH of a collection): enabling it allocates the
 * codes and, when the index holds at least VD_INDEX_QUANT_TRAIN_MIN points, trains the range and
 * quantizes every stored point before returning; disabling it frees the codes; a new quantile
 * retrains. Blocks searches and linking for the time it takes (a pass over the vectors). An index
 * keeping its floats on disk first reads them all back from its source when the new config is
 * always_ram true or unquantized, drops them again when it is always_ram false, and re-encodes
 * its codes from the old ones for a new quantile. Returns 0, VD_ERANGE (quantile outside
 * 0.5..1), VD_ENOMEM (the index is left unquantized) or the source's error (nothing changed). */
int vd_index_set_quant(struct vd_index *ix, const struct vd_index_quant *q);
/* Whether the graph is currently walked on codes (quantization enabled and trained). */
bool vd_index_quant_ready(const struct vd_index *ix);

/* Name of the code kernel set chosen at start ("avx512vnni", "avx512bw", "avx2" or "scalar"). */
const char *vd_index_code_kernel_name(void);

/* Name of the distance kernel set chosen at start ("avx512", "avx2" or "scalar"). Static. */
const char *vd_index_kernel_name(void);

#endif
