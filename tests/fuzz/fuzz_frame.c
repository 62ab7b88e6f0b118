/*
 * Frame decoder over a stream: the first input byte picks the body limit, the rest is read as
 * back-to-back frames. Each decoded frame must account for exactly its header and body, point
 * into the input, respect the limit and re-encode to the same header; a frame is never decoded
 * from fewer bytes than it consumes; errors consume nothing. ASan checks that no read goes past
 * the bytes given.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    /* limits from 0 to 64 KiB, so both complete frames and VD_ETOOBIG are reachable */
    uint32_t max = (uint32_t)data[0] << 8;
    const uint8_t *p = data + 1;
    size_t n = size - 1, off = 0;
    while (off < n) {
        struct vd_frame f;
        size_t used = 1;
        int r = vd__frame_decode(p + off, n - off, max, &f, &used);
        if (r) {
            if ((r != VD_ECORRUPT && r != VD_ETOOBIG) || used != 0)
                abort();
            break;
        }
        if (used == 0)
            break; /* incomplete tail */
        if (used != VD_FRAME_HDR + (size_t)f.len || used > n - off || f.len > max ||
            f.body != p + off + VD_FRAME_HDR)
            abort();
        uint8_t hdr[VD_FRAME_HDR];
        vd__frame_header(f.type, f.body, f.len, hdr);
        if (memcmp(hdr, p + off, VD_FRAME_HDR) != 0)
            abort();
        /* one byte short is never a frame: at most a request for more */
        struct vd_frame g;
        size_t u2 = 1;
        r = vd__frame_decode(p + off, used - 1, max, &g, &u2);
        if (r != 0 || u2 != 0)
            abort();
        off += used;
    }
    return 0;
}
