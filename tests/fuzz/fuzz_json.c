/*
 * Strict reader and writer: whatever vd_json_parse accepts, vd_buf_json prints as JSON that
 * parses again and prints identically (a fixed point after one round). Accepted vectors also
 * survive the float reader and the shortest float printer bit-exactly.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vectord/json.h"

static void check_floats(const cJSON *item)
{
    float *v;
    uint32_t n;
    if (vd_json_get_floats(item, 0, NULL, &v, &n, NULL) != 0)
        return;
    struct vd_buf b;
    vd_buf_init(&b);
    vd_buf_json_floats(&b, v, n);
    cJSON *j;
    if (vd_json_parse(b.data, b.len, 0, &j, NULL) != 0)
        abort();
    float *w;
    uint32_t m;
    if (vd_json_get_floats(j, n, NULL, &w, &m, NULL) != 0 || m != n ||
        memcmp(v, w, n * sizeof(float)) != 0)
        abort();
    free(w);
    cJSON_Delete(j);
    vd_buf_release(&b);
    free(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cJSON *a = NULL, *b = NULL;
    struct vd_err err;
    if (vd_json_parse((const char *)data, size, 16, &a, &err) != 0) {
        if (strncmp(err.msg, "invalid JSON at byte ", 21) != 0 && err.code != VD_ENOMEM)
            abort();
        return 0;
    }
    struct vd_buf p1, p2;
    vd_buf_init(&p1);
    vd_buf_init(&p2);
    vd_buf_json(&p1, a);
    if (!vd_buf_ok(&p1))
        abort();
    if (vd_json_parse(p1.data, p1.len, 16, &b, &err) != 0)
        abort(); /* the printer produced something the reader refuses */
    vd_buf_json(&p2, b);
    if (p1.len != p2.len || memcmp(p1.data, p2.data, p1.len) != 0)
        abort();

    struct vd_pid id;
    uint64_t u;
    int64_t i;
    (void)vd_json_get_pid(a, &id, NULL);
    (void)vd_json_get_u64(a, &u);
    (void)vd_json_get_i64(a, &i);
    check_floats(a);

    cJSON_Delete(a);
    cJSON_Delete(b);
    vd_buf_release(&p1);
    vd_buf_release(&p2);
    return 0;
}
