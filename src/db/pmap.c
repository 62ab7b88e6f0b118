/* Open addressing, linear probing, backward-shift deletion (no tombstones to pile up). */
#include <stdlib.h>
#include <string.h>

#include "pmap.h"

void pmap_init(struct pmap *m)
{
    memset(m, 0, sizeof *m);
}

void pmap_release(struct pmap *m)
{
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].used)
            free(m->slots[i].bin);
    free(m->slots);
    free(m->sid);
    free(m->free);
    memset(m, 0, sizeof *m);
}

static size_t home(const struct pmap *m, const struct vd_pid *id)
{
    uint64_t h = id->type == VD_PID_NUM ? id->u.num * 0x9e3779b97f4a7c15ull : vd_pid_hash(id);
    return (size_t)(h ^ (h >> 29)) & (m->cap - 1);
}

static struct pmap_entry *find(const struct pmap *m, const struct vd_pid *id)
{
    if (!m->cap)
        return NULL;
    for (size_t i = home(m, id);; i = (i + 1) & (m->cap - 1)) {
        struct pmap_entry *e = &m->slots[i];
        if (!e->used)
            return NULL;
        if (vd_pid_eq(&e->id, id))
            return e;
    }
}

static int grow(struct pmap *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 64;
    struct pmap_entry *ns = calloc(ncap, sizeof *ns);
    if (!ns)
        return VD_ENOMEM;
    struct pmap old = *m;
    m->slots = ns;
    m->cap = ncap;
    for (size_t i = 0; i < old.cap; i++) {
        if (!old.slots[i].used)
            continue;
        size_t j = home(m, &old.slots[i].id);
        while (m->slots[j].used)
            j = (j + 1) & (ncap - 1);
        m->slots[j] = old.slots[i];
    }
    free(old.slots);
    return 0;
}

/* Makes room for one more slot; the free stack is as large as the slot table so that pmap_del
 * never allocates. */
static int slots_reserve(struct pmap *m)
{
    if (m->nfree || m->nslots < m->slot_cap)
        return 0;
    if (m->slot_cap >= UINT32_MAX / 2)
        return VD_ENOMEM;
    uint32_t ncap = m->slot_cap ? m->slot_cap * 2 : 64;
    struct vd_pid *ns = realloc(m->sid, sizeof *ns * ncap);
    if (!ns)
        return VD_ENOMEM;
    m->sid = ns;
    uint32_t *nf = realloc(m->free, sizeof *nf * ncap);
    if (!nf)
        return VD_ENOMEM;
    m->free = nf;
    m->slot_cap = ncap;
    return 0;
}

int pmap_set(struct pmap *m, const struct vd_pid *id, uint8_t *bin, uint32_t len)
{
    struct pmap_entry *e = find(m, id);
    if (e) {
        free(e->bin);
        e->bin = bin;
        e->len = len;
        return 0;
    }
    if ((m->count + 1) * 4 > m->cap * 3 && grow(m))
        return VD_ENOMEM;
    if (slots_reserve(m))
        return VD_ENOMEM;
    uint32_t slot = m->nfree ? m->free[--m->nfree] : m->nslots++;
    m->sid[slot] = *id;
    size_t i = home(m, id);
    while (m->slots[i].used)
        i = (i + 1) & (m->cap - 1);
    m->slots[i] = (struct pmap_entry){.id = *id, .used = 1, .len = len, .slot = slot, .bin = bin};
    m->count++;
    return 0;
}

void pmap_del(struct pmap *m, const struct vd_pid *id)
{
    struct pmap_entry *e = find(m, id);
    if (!e)
        return;
    free(e->bin);
    m->sid[e->slot].type = 0;
    m->free[m->nfree++] = e->slot;
    size_t i = (size_t)(e - m->slots), mask = m->cap - 1;
    /* shift back every following entry that would be unreachable across the hole */
    for (size_t j = (i + 1) & mask; m->slots[j].used; j = (j + 1) & mask) {
        size_t h = home(m, &m->slots[j].id);
        if (((j - h) & mask) >= ((j - i) & mask)) {
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    memset(&m->slots[i], 0, sizeof m->slots[i]);
    m->count--;
}

const struct pmap_entry *pmap_get(const struct pmap *m, const struct vd_pid *id)
{
    return find(m, id);
}
