/*
 * Data message decoders on untrusted bytes (a peer's request or reply): anything accepted must
 * encode back to exactly the input (one valid form per message); anything else is VD_ECORRUPT.
 * ASan checks that no read goes past the bytes given and that nothing leaks.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dmsg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *in = malloc(size ? size : 1); /* exactly size bytes: a read past them is caught */
    if (!in)
        return 0;
    memcpy(in, data, size);
    struct vd_buf b;
    vd_buf_init(&b);
    struct vd_dmsg_req q;
    int rc = vd_dmsg_req_decode(in, size, &q);
    if (rc != 0 && rc != VD_ECORRUPT && rc != VD_ENOMEM)
        abort();
    if (rc == 0 && (vd_dmsg_req_encode(&q, &b) != 0 || !vd_buf_ok(&b) || b.len != size ||
                    memcmp(b.data, in, size) != 0))
        abort();
    vd_dmsg_req_free(&q);
    b.len = 0;
    struct vd_dmsg_reply r;
    rc = vd_dmsg_reply_decode(in, size, &r);
    if (rc != 0 && rc != VD_ECORRUPT && rc != VD_ENOMEM)
        abort();
    if (rc == 0 && (vd_dmsg_reply_encode(&r, &b) != 0 || !vd_buf_ok(&b) || b.len != size ||
                    memcmp(b.data, in, size) != 0))
        abort();
    vd_dmsg_reply_free(&r);
    vd_buf_release(&b);
    free(in);
    return 0;
}
