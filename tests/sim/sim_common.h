/*
 * What the deterministic simulators (sim_raft, sim_coord) share: the seeded generator every
 * random choice comes from, growing arrays, and the event queue of virtual time. A run is a pure
 * function of its seed only if every simulator draws from the one generator in the same order
 * and pops events in one total order, so both take them from here.
 */
#ifndef SIM_COMMON_H
#define SIM_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- deterministic randomness (splitmix64) ------------------------------------------------ */

static uint64_t sim_rng_state;

/* Starts the generator for one seed. */
static inline void sim_seed(uint64_t seed)
{
    sim_rng_state = seed * 0x2545F4914F6CDD1DULL + 1;
}

static inline uint64_t rnd(void)
{
    uint64_t z = (sim_rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, n); 0 when n is 0. */
static inline uint64_t rnd_below(uint64_t n)
{
    return n ? rnd() % n : 0;
}

/* True with probability p (53 random bits against p). */
static inline bool chance(double p)
{
    return (double)(rnd() >> 11) / 9007199254740992.0 < p;
}

/* ---- arrays -------------------------------------------------------------------------------- */

/* Grows an array to hold need elements (doubling from 64), the new elements zeroed; aborts when
 * memory runs out (a simulator has nothing to fall back on). */
static inline void *sim_grow(void *p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return p;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    uint8_t *q = realloc(p, c * elem);
    if (!q)
        abort();
    memset(q + *cap * elem, 0, (c - *cap) * elem);
    *cap = c;
    return q;
}

/* ---- the event queue ----------------------------------------------------------------------- */

/* Every event type begins with these fields: its due time, then a number the simulator gives
 * each event it queues, in order, so events due in one millisecond pop in the order they were
 * queued, on every machine. */
struct sim_when {
    uint64_t at, seq;
};

/* A binary min-heap of events of `elem` bytes each. All zero is an empty queue. */
struct sim_heap {
    uint8_t *a;
    size_t n, cap, elem;
};

static inline struct sim_when sim_heap_when(const struct sim_heap *h, size_t i)
{
    struct sim_when w;
    memcpy(&w, h->a + i * h->elem, sizeof(w));
    return w;
}

static inline bool sim_heap_less(const struct sim_heap *h, size_t i, size_t j)
{
    struct sim_when a = sim_heap_when(h, i), b = sim_heap_when(h, j);
    return a.at < b.at || (a.at == b.at && a.seq < b.seq);
}

static inline void sim_heap_swap(struct sim_heap *h, size_t i, size_t j)
{
    uint8_t t[64], *x = h->a + i * h->elem, *y = h->a + j * h->elem;
    for (size_t off = 0; off < h->elem; off += sizeof(t)) {
        size_t k = h->elem - off < sizeof(t) ? h->elem - off : sizeof(t);
        memcpy(t, x + off, k);
        memcpy(x + off, y + off, k);
        memcpy(y + off, t, k);
    }
}

/* The event at index i (0 is the next due); valid until the next push or pop. */
static inline void *sim_heap_at(const struct sim_heap *h, size_t i)
{
    return h->a + i * h->elem;
}

/* Queues a copy of the elem-byte event e, which begins with its struct sim_when. */
static inline void sim_heap_push(struct sim_heap *h, const void *e, size_t elem)
{
    h->elem = elem;
    h->a = sim_grow(h->a, &h->cap, h->n + 1, elem);
    size_t i = h->n++;
    memcpy(h->a + i * elem, e, elem);
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!sim_heap_less(h, i, p))
            break;
        sim_heap_swap(h, i, p);
        i = p;
    }
}

/* Due time of the next event; UINT64_MAX when the queue is empty. */
static inline uint64_t sim_heap_next(const struct sim_heap *h)
{
    return h->n ? sim_heap_when(h, 0).at : UINT64_MAX;
}

/* Moves the next due event into out (elem bytes); the queue must not be empty. */
static inline void sim_heap_pop(struct sim_heap *h, void *out)
{
    memcpy(out, h->a, h->elem);
    h->n--;
    memmove(h->a, h->a + h->n * h->elem, h->elem);
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n && sim_heap_less(h, l, m))
            m = l;
        if (r < h->n && sim_heap_less(h, r, m))
            m = r;
        if (m == i)
            break;
        sim_heap_swap(h, i, m);
        i = m;
    }
}

/* Frees the queue's memory (the caller frees what its events own first) and empties it. */
static inline void sim_heap_free(struct sim_heap *h)
{
    free(h->a);
    memset(h, 0, sizeof(*h));
}

#endif
