/*
 * Point record decoder on untrusted bytes: anything it accepts must re-encode to exactly the
 * input (one valid form per record), with every pointer inside the input; anything else is
 * VD_ECORRUPT. ASan checks that no read goes past the bytes given.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vectord/record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a copy of exactly size bytes, so a read past the end is caught */
    uint8_t *in = malloc(size ? size : 1);
    if (!in)
        return 0;
    memcpy(in, data, size);
    struct vd_record r;
    struct vd_rvec v[VD_RECORD_MAX_VECTORS];
    int rc = vd_record_decode(in, size, &r, v);
    if (rc != 0 && rc != VD_ECORRUPT)
        abort();
    if (rc == 0) {
        for (uint16_t i = 0; i < r.n_vectors; i++) {
            const uint8_t *p = v[i].values;
            if (p < in || p + (size_t)v[i].n * 4 > in + size)
                abort();
        }
        if (vd_record_size(&r) != size)
            abort();
        uint8_t *out = malloc(size);
        size_t len = 0;
        if (!out || vd_record_encode(&r, out, size, &len) != 0 || len != size ||
            memcmp(out, in, size) != 0)
            abort();
        free(out);
    }
    free(in);
    return 0;
}
