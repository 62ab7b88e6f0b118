/*
 * Frame codec of the peer transport: a fixed 12-byte header (magic, version, type, body length,
 * CRC-32C) in front of each message; and the data transport's chunk headers and reassembly.
 * Pure: no I/O (the frame codec allocates nothing either), so a fuzzer drives it alone.
 */
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"

static uint32_t frame_crc(const uint8_t *hdr8, const void *body, uint32_t len)
{
    return vd_crc32c(vd_crc32c(0, hdr8, 8), body, len);
}

void vd__frame_header(uint8_t type, const void *body, uint32_t len, uint8_t hdr[VD_FRAME_HDR])
{
    hdr[0] = (uint8_t)(VD_FRAME_MAGIC >> 8);
    hdr[1] = (uint8_t)VD_FRAME_MAGIC;
    hdr[2] = VD_FRAME_VERSION;
    hdr[3] = type;
    vd_be32_put(hdr + 4, len);
    vd_be32_put(hdr + 8, frame_crc(hdr, body, len));
}

/*
 * The magic and version are checked on whatever prefix has arrived, and the length as soon as
 * the header is complete, so a stream of garbage or an oversized length is refused after at most
 * 12 bytes instead of after buffering a body that will never be trusted.
 */
int vd__frame_decode(const uint8_t *buf, size_t n, uint32_t max_body, struct vd_frame *out,
                     size_t *used)
{
    static const uint8_t lead[3] = {(uint8_t)(VD_FRAME_MAGIC >> 8), (uint8_t)VD_FRAME_MAGIC,
                                    VD_FRAME_VERSION};
    *used = 0;
    for (size_t i = 0; i < 3 && i < n; i++)
        if (buf[i] != lead[i])
            return VD_ECORRUPT;
    if (n < VD_FRAME_HDR)
        return 0;
    uint32_t len = vd_be32_get(buf + 4);
    if (len > max_body)
        return VD_ETOOBIG;
    if (n - VD_FRAME_HDR < len)
        return 0;
    if (frame_crc(buf, buf + VD_FRAME_HDR, len) != vd_be32_get(buf + 8))
        return VD_ECORRUPT;
    out->type = buf[3];
    out->body = buf + VD_FRAME_HDR;
    out->len = len;
    *used = VD_FRAME_HDR + (size_t)len;
    return 0;
}

/* ---- data chunks ------------------------------------------------------------------------------
 * Pure too: the loop feeds what the data connection delivers, the fuzzer whatever it likes. */

size_t vd__chunk_header(uint64_t id, uint32_t seq, bool last, uint32_t total, const uint64_t w[3],
                        uint8_t *out)
{
    vd_be64_put(out, id);
    vd_be32_put(out + 8, seq);
    out[12] = last ? VD_CHUNK_LAST : 0;
    if (seq)
        return VD_CHUNK_HDR;
    vd_be32_put(out + 13, total);
    for (int i = 0; i < 3; i++)
        vd_be64_put(out + 17 + 8 * i, w[i]);
    return VD_CHUNK_HDR + VD_CHUNK_HEAD;
}

void vd__reasm_release(struct vd__reasm *r)
{
    free(r->buf);
    memset(r, 0, sizeof(*r));
}

/* Ends the message in progress; the buffer goes to out (or is freed when out is NULL). */
static void reasm_end(struct vd__reasm *r, struct vd__reasm_msg *out)
{
    if (out) {
        out->id = r->id;
        memcpy(out->w, r->w, sizeof(out->w));
        out->buf = r->buf;
        out->len = r->have;
        r->buf = NULL;
    }
    vd__reasm_release(r);
}

/*
 * The buffer grows with the bytes that arrived rather than being sized from the announced total,
 * so a peer cannot make this node hold max_message bytes with a one-chunk lie (it is also held
 * to its credit, which counts what arrived).
 */
int vd__reasm_feed(struct vd__reasm *r, const uint8_t *b, size_t n, uint32_t max_message,
                   bool refused, uint64_t *id, struct vd__reasm_msg *out, struct vd_err *err)
{
    *id = 0;
    if (n < VD_CHUNK_HDR)
        return vd_errf(err, VD_ECORRUPT, "data chunk of %zu bytes is shorter than its header", n);
    uint64_t cid = vd_be64_get(b);
    uint32_t seq = vd_be32_get(b + 8);
    uint8_t flags = b[12];
    *id = cid;
    if (flags & ~VD_CHUNK_LAST)
        return vd_errf(err, VD_ECORRUPT, "data chunk %u of message %llu has unknown flags 0x%x",
                       seq, (unsigned long long)cid, flags);
    const uint8_t *p = b + VD_CHUNK_HDR;
    size_t pl = n - VD_CHUNK_HDR;
    if (!r->open) {
        if (seq != 0)
            return vd_errf(err, VD_ECORRUPT,
                           "data chunk %u of message %llu arrived without its chunk 0", seq,
                           (unsigned long long)cid);
        if (pl < VD_CHUNK_HEAD)
            return vd_errf(err, VD_ECORRUPT, "first data chunk of message %llu is truncated",
                           (unsigned long long)cid);
        uint32_t total = vd_be32_get(p);
        if (total > max_message)
            return vd_errf(err, VD_ETOOBIG,
                           "data message %llu of %u bytes is over the limit of %u bytes",
                           (unsigned long long)cid, total, max_message);
        r->open = true;
        r->id = cid;
        r->total = total;
        for (int i = 0; i < 3; i++)
            r->w[i] = vd_be64_get(p + 4 + 8 * i);
        p += VD_CHUNK_HEAD;
        pl -= VD_CHUNK_HEAD;
    } else if (cid != r->id || seq != r->next) {
        return vd_errf(err, VD_ECORRUPT,
                       "data chunk %u of message %llu arrived where chunk %u of message %llu "
                       "was expected",
                       seq, (unsigned long long)cid, r->next, (unsigned long long)r->id);
    }
    if (seq == UINT32_MAX || pl > (size_t)r->total - r->have)
        return vd_errf(err, VD_ECORRUPT, "data message %llu is longer than the %u bytes announced",
                       (unsigned long long)cid, r->total);
    r->next = seq + 1;
    if (refused && !r->discard) {
        r->discard = true;
        free(r->buf);
        r->buf = NULL;
        r->cap = 0;
    }
    if (!r->discard && pl) {
        if (r->have + pl > r->cap) {
            size_t cap = r->cap ? r->cap : 4096;
            while (cap < r->have + pl)
                cap *= 2;
            if (cap > r->total)
                cap = r->total;
            uint8_t *nb = realloc(r->buf, cap);
            if (!nb)
                return vd_errf(err, VD_ENOMEM, "out of memory reassembling data message %llu",
                               (unsigned long long)cid);
            r->buf = nb;
            r->cap = cap;
        }
        memcpy(r->buf + r->have, p, pl);
    }
    r->have += pl;
    if (!(flags & VD_CHUNK_LAST))
        return VD_REASM_MORE;
    if (r->have != r->total)
        return vd_errf(err, VD_ECORRUPT, "data message %llu ended after %zu of %u bytes",
                       (unsigned long long)cid, r->have, r->total);
    if (r->discard) {
        reasm_end(r, NULL);
        return VD_REASM_DROPPED;
    }
    reasm_end(r, out);
    return VD_REASM_DONE;
}
