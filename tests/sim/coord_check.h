/*
 * The checker of sim_coord: the promises of quorum last-write-wins (I1-I7), kept apart from the
 * simulator. It builds its own model from the events the simulator reports (a write stamped or
 * answered, a copy made durable on a replica, a read or search begun or answered) and never
 * looks into the simulator's state, so a bookkeeping slip in the simulator cannot hide a
 * violation. The first violation is kept as a sentence in chk_violation.
 */
#ifndef SIM_COORD_CHECK_H
#define SIM_COORD_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vectord/coord.h"

#define CHK_MAX_NODES 8
#define CHK_MAX_KEYS 16

/* One write's bytes: what a record of (key, version) must be everywhere. */
struct chk_rec {
    bool tomb;
    float vec[2];
    uint8_t tag;
};

/* A copy on a replica or in an answer: which write's bytes, under which version. */
struct chk_copy {
    bool present;
    struct vd_version v;
    uint32_t wid; /* the write whose bytes these are */
};

void chk_reset(unsigned n_nodes, unsigned n_keys, unsigned rf, uint64_t max_offset,
               bool clocks_within, const struct vd_coord_ring *ring);
void chk_free(void);
extern char chk_violation[512];
extern uint64_t chk_checks; /* invariant checks made */

void chk_write_begin(uint32_t wid, unsigned key, struct vd_version v, const struct chk_rec *rec,
                     unsigned w, uint64_t now);
void chk_write_end(uint32_t wid, bool acked, uint64_t now);
void chk_apply(unsigned node, unsigned key, const struct chk_copy *c);
void chk_read_begin(uint32_t rid, unsigned key, unsigned r, uint64_t now);
void chk_read_end(uint32_t rid, const struct chk_copy *c, uint64_t now);
void chk_search_begin(uint32_t sid, unsigned r, const float q[2], int filter, uint32_t offset,
                      uint32_t limit, uint64_t now);
/* keys[i] is the key of items[i]. */
void chk_search_end(uint32_t sid, const struct vd_coord_item *items, const unsigned *keys, size_t n,
                    bool complete, uint64_t now);
/* I6, after healing, hint drain and one read-all sweep. */
void chk_final(void);

/* The score replicas and the checker both use: negated squared distance (higher is better). */
static inline float chk_score(const float q[2], const float v[2])
{
    float dx = q[0] - v[0], dy = q[1] - v[1];
    return -(dx * dx + dy * dy);
}

#endif
