/*
 * Data chunk reassembly: the input is a sequence of chunks, each a length byte pair (u16 BE)
 * then that many bytes, the first input byte picking the message limit and which chunks count
 * as refused for their clock. Whatever the sequence, the reassembler either asks for more, hands
 * on a message of exactly the announced length within the limit, or fails with a reason and
 * consumes nothing further; it never reads past a chunk. ASan checks reads and leaks.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint32_t max = (uint32_t)(data[0] & 0x3f) << 6; /* 0 .. 4032 bytes */
    uint8_t refuse_mask = data[0] >> 6;
    size_t off = 1;
    unsigned k = 0;
    struct vd__reasm r = {0};
    while (off + 2 <= size) {
        size_t n = ((size_t)data[off] << 8) | data[off + 1];
        off += 2;
        if (n > size - off)
            n = size - off;
        /* a copy of exactly n bytes, so ASan sees any read past the chunk */
        uint8_t *c = malloc(n ? n : 1);
        if (!c)
            abort();
        memcpy(c, data + off, n);
        off += n;
        bool refused = (refuse_mask >> (k++ % 2)) & 1 && k % 3 == 0;
        uint64_t id;
        struct vd__reasm_msg m;
        struct vd_err err;
        int rc = vd__reasm_feed(&r, c, n, max, refused, &id, &m, &err);
        free(c);
        if (rc < 0) {
            if (rc != VD_ECORRUPT && rc != VD_ETOOBIG && rc != VD_ENOMEM)
                abort();
            if (!err.msg[0])
                abort();
            break;
        }
        if (rc == VD_REASM_DONE) {
            if (m.len > max || (m.len && !m.buf) || r.open)
                abort();
            free(m.buf);
        } else if (rc == VD_REASM_DROPPED) {
            if (r.open)
                abort();
        } else if (rc != VD_REASM_MORE || !r.open || r.have > r.total) {
            abort();
        }
    }
    vd__reasm_release(&r);
    return 0;
}
