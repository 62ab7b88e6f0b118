/*
 * Placement on the consistent-hash ring, pure: the one replica walk that the coordinator and the
 * metadata state machine (vd_meta_replicas) both place by. A token owns the arc (previous token,
 * token] (vd_ring_contains), so the first replica of a hash is the member of the first token at or
 * after it, wrapping past the top; the others are the next distinct members clockwise.
 */
#include <stdlib.h>

#include "vectord/coord.h"

/* Equal tokens (two members hashing to one position) are ordered by node, so every node that
 * sorts the same tokens walks them alike. */
static int token_cmp(const void *a, const void *b)
{
    const struct vd_coord_token *x = a, *y = b;
    if (x->token != y->token)
        return x->token < y->token ? -1 : 1;
    return x->node < y->node ? -1 : x->node > y->node;
}

void vd_coord_ring_sort(struct vd_coord_token *tokens, size_t n)
{
    if (n > 1)
        qsort(tokens, n, sizeof(*tokens), token_cmp);
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

size_t vd_coord_ring_arcs(const struct vd_coord_ring *ring, uint64_t (*out)[2])
{
    size_t n = 0;
    for (size_t i = 0; i < ring->n_tokens; i++) {
        if (n && out[n - 1][1] == ring->tokens[i].token)
            continue;
        out[n++][1] = ring->tokens[i].token;
    }
    for (size_t i = 0; i < n; i++)
        out[i][0] = out[(i + n - 1) % n][1];
    return n;
}
