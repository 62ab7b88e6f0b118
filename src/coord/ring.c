/*
 * Placement on the consistent-hash ring, pure. A token owns the arc (previous token, token], so
 * the first replica of a hash is the member of the first token at or after it, wrapping past the
 * top; the others are the next distinct members clockwise.
 */
#include "vectord/coord.h"

bool vd_coord_ring_contains(uint64_t start, uint64_t end, uint64_t h)
{
    if (start == end)
        return true;
    if (start < end)
        return h > start && h <= end;
    /* The arc wraps past UINT64_MAX: (start, UINT64_MAX] then [0, end]. */
    return h > start || h <= end;
}

/* Index of the token whose arc holds hash: the first token >= hash, or 0 past the last one. */
static size_t arc_of(const struct vd_coord_ring *ring, uint64_t hash)
{
    size_t lo = 0, hi = ring->n_tokens;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ring->tokens[mid].token < hash)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo == ring->n_tokens ? 0 : lo;
}

size_t vd_coord_ring_replicas(const struct vd_coord_ring *ring, uint64_t hash, unsigned rf,
                              uint64_t *out)
{
    if (rf == 0 || ring->n_tokens == 0)
        return 0;
    size_t first = arc_of(ring, hash), n = 0;
    for (size_t step = 0; step < ring->n_tokens && n < rf; step++) {
        uint64_t id = ring->tokens[(first + step) % ring->n_tokens].node;
        bool seen = false;
        for (size_t k = 0; k < n && !seen; k++)
            seen = out[k] == id;
        if (!seen)
            out[n++] = id;
    }
    return n;
}
