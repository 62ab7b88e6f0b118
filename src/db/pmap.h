/* Hash map from point id to its compact binary payload: the in-memory set of live points of a
 * collection. Each live point also holds a small dense number, its slot, that payload indexes
 * use for their sets (a slot is reused only after its point is deleted). Not thread-safe: the
 * collection guards it with a reader/writer lock. */
#ifndef VD_DB_PMAP_H
#define VD_DB_PMAP_H

#include "vectord/core.h"

struct pmap_entry {
    struct vd_pid id;
    uint8_t used;
    uint32_t len;
    uint32_t slot;
    uint8_t *bin; /* owned; NULL when the point has no payload */
};

struct pmap {
    struct pmap_entry *slots;
    size_t cap; /* power of two */
    size_t count;
    struct vd_pid *sid; /* slot -> id (type 0 for a free slot) */
    uint32_t *free;     /* free slots, a stack */
    uint32_t nslots, nfree, slot_cap;
};

void pmap_init(struct pmap *m);
void pmap_release(struct pmap *m);
/* Inserts or replaces; takes ownership of bin (frees the old one). VD_ENOMEM leaves m unchanged
 * and frees nothing. */
int pmap_set(struct pmap *m, const struct vd_pid *id, uint8_t *bin, uint32_t len);
/* Removes id if present; frees its payload and frees its slot. */
void pmap_del(struct pmap *m, const struct vd_pid *id);
const struct pmap_entry *pmap_get(const struct pmap *m, const struct vd_pid *id);

#endif
