/*
 * Frame codec of the peer transport: a fixed 12-byte header (magic, version, type, body length,
 * CRC-32C) in front of each message. Pure: no I/O, no allocation, so a fuzzer drives it alone.
 */
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
