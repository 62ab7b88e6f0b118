/*
 * Wire encoding of Raft messages. Pure: the transport frames, checksums and sends the bytes.
 * Decoding trusts nothing: every length is checked against what remains before it is used.
 */
#include <string.h>

#include "vectord/core.h"
#include "vectord/raft.h"

#define FIXED (3 + 10 * 8)
enum { F_REJECT = 1, F_TRANSFER = 2, F_DONE = 4 };

size_t vd_raft_msg_size(const struct vd_raft_msg *m)
{
    size_t n = FIXED + 4 + 9 * (size_t)m->conf.n + 4;
    for (size_t i = 0; i < m->n_entries; i++)
        n += 8 + 8 + 1 + 4 + m->entries[i].len;
    return n + 4 + m->len;
}

size_t vd_raft_msg_encode(const struct vd_raft_msg *m, uint8_t *buf)
{
    uint8_t *p = buf;
    *p++ = VD_RAFT_WIRE_VERSION;
    *p++ = m->type;
    *p++ = (uint8_t)((m->reject ? F_REJECT : 0) | (m->transfer ? F_TRANSFER : 0) |
                     (m->done ? F_DONE : 0));
    const uint64_t fixed[10] = {m->from,   m->to,   m->term, m->index,  m->log_term,
                                m->commit, m->hint, m->ctx,  m->offset, 0};
    for (int i = 0; i < 10; i++, p += 8)
        vd_be64_put(p, fixed[i]);
    p += vd_raft_conf_encode(&m->conf, p);
    vd_be32_put(p, (uint32_t)m->n_entries);
    p += 4;
    for (size_t i = 0; i < m->n_entries; i++) {
        const struct vd_raft_entry *e = &m->entries[i];
        vd_be64_put(p, e->term);
        vd_be64_put(p + 8, e->index);
        p[16] = e->type;
        vd_be32_put(p + 17, (uint32_t)e->len);
        p += 21;
        if (e->len)
            memcpy(p, e->data, e->len);
        p += e->len;
    }
    vd_be32_put(p, (uint32_t)m->len);
    p += 4;
    if (m->len)
        memcpy(p, m->data, m->len);
    p += m->len;
    return (size_t)(p - buf);
}

int vd_raft_msg_decode(const uint8_t *buf, size_t len, struct vd_raft_msg *out,
                       struct vd_raft_entry *ents, size_t max_ents)
{
    memset(out, 0, sizeof(*out));
    const uint8_t *p = buf, *end = buf + len;
    if (len < FIXED + 4 || p[0] != VD_RAFT_WIRE_VERSION || p[1] < VD_RAFT_MSG_APPEND ||
        p[1] >= VD_RAFT__MSG_COUNT || (p[2] & ~(F_REJECT | F_TRANSFER | F_DONE)))
        return VD_ECORRUPT;
    out->type = p[1];
    out->reject = p[2] & F_REJECT;
    out->transfer = p[2] & F_TRANSFER;
    out->done = p[2] & F_DONE;
    p += 3;
    uint64_t *fixed[10] = {&out->from,   &out->to,   &out->term, &out->index,  &out->log_term,
                           &out->commit, &out->hint, &out->ctx,  &out->offset, NULL};
    for (int i = 0; i < 10; i++, p += 8)
        if (fixed[i])
            *fixed[i] = vd_be64_get(p);
    uint32_t nc = vd_be32_get(p);
    if (nc > VD_RAFT_MAX_NODES || (size_t)(end - p) < 4 + 9 * (size_t)nc + 4)
        return VD_ECORRUPT;
    if (vd_raft_conf_decode(p, 4 + 9 * (size_t)nc, &out->conf) != 0)
        return VD_ECORRUPT;
    p += 4 + 9 * (size_t)nc;
    uint32_t ne = vd_be32_get(p);
    p += 4;
    if (ne > max_ents)
        return VD_ETOOBIG;
    for (uint32_t i = 0; i < ne; i++) {
        if (end - p < 21)
            return VD_ECORRUPT;
        struct vd_raft_entry *e = &ents[i];
        e->term = vd_be64_get(p);
        e->index = vd_be64_get(p + 8);
        e->type = p[16];
        e->len = vd_be32_get(p + 17);
        p += 21;
        if ((size_t)(end - p) < e->len)
            return VD_ECORRUPT;
        e->data = e->len ? (uint8_t *)p : NULL; /* points into the caller's buffer */
        p += e->len;
    }
    out->entries = ne ? ents : NULL;
    out->n_entries = ne;
    if (end - p < 4)
        return VD_ECORRUPT;
    out->len = vd_be32_get(p);
    p += 4;
    if ((size_t)(end - p) != out->len)
        return VD_ECORRUPT;
    out->data = out->len ? p : NULL;
    return 0;
}
