/* Payload indexes of one collection: for each indexed key, the values its points hold, so that a
 * filter's conditions on that key are answered as sets of point slots (pmap.h) without reading
 * payloads. keyword and bool map a value to the set of slots holding it; integer and float keep
 * (number, slot) pairs sorted for ranges. Not thread-safe: the collection's payload lock guards
 * the indexes together with the payload map they describe. */
#ifndef VD_DB_PIDX_H
#define VD_DB_PIDX_H

#include "pmap.h"
#include "vectord/db.h"

struct pidx_field; /* one indexed key */

struct pidx {
    struct pidx_field **v;
    size_t n;
};

void pidx_init(struct pidx *x);
void pidx_release(struct pidx *x);

/* Builds the index of key `name` of the given type over every point of m. *out is owned by the
 * caller (pidx_put hands it to a set). Errors: VD_EINVAL for a key filters cannot read (message
 * names it), VD_ENOMEM. */
int pidx_build(const char *name, enum vd_db_pindex_type type, const struct pmap *m,
               struct pidx_field **out, struct vd_err *err);
void pidx_field_free(struct pidx_field *f);
/* Adds f to x, replacing and freeing an index of the same name; takes f. VD_ENOMEM: nothing
 * changes and f is still the caller's. */
int pidx_put(struct pidx *x, struct pidx_field *f);
/* Removes and frees the index named name: 0 or VD_ENOTFOUND. */
int pidx_drop(struct pidx *x, const char *name);

const char *pidx_field_name(const struct pidx_field *f);
enum vd_db_pindex_type pidx_field_type(const struct pidx_field *f);
/* Points holding at least one value of the index's type under its key. */
uint64_t pidx_field_points(const struct pidx_field *f);

/* Keeps every index of x in step with a point's payload: call remove with the payload the slot
 * had before a change and add with the one it has after (bin NULL: none). An allocation failure
 * marks the affected index unusable (logged; the planner then ignores it until it is rebuilt at
 * the next start or by creating it again), so a search never trusts an incomplete index. */
void pidx_point_add(struct pidx *x, uint32_t slot, const uint8_t *bin, uint32_t len);
void pidx_point_remove(struct pidx *x, uint32_t slot, const uint8_t *bin, uint32_t len);

/* A set of point slots (bit i = slot i), sized to the map's slot table when made. */
struct pidx_bits {
    uint64_t *w;
    size_t nw;
};

/* Bounds the points of m that f matches with the indexes of x (vd_filter_bound): *out is a new
 * set holding every matching point (only those when *exact), or NULL when no index bounds f (or
 * memory ran out: the caller then evaluates f on every point, which is always correct). */
void pidx_plan(const struct pidx *x, const struct pmap *m, const struct vd_filter *f,
               struct pidx_bits **out, bool *exact);
void pidx_bits_free(struct pidx_bits *b);
uint64_t pidx_bits_count(const struct pidx_bits *b);
/* Clears the slots of b whose point does not match f (making b exact). */
void pidx_bits_refine(struct pidx_bits *b, const struct pmap *m, const struct vd_filter *f);

#endif
