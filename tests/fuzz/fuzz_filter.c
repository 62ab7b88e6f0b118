/* Filter parser and binary payload codec under libFuzzer: any document is parsed strictly; if it
 * compiles as a filter, it is evaluated against itself encoded as a payload, and the cJSON and
 * binary evaluations must agree; any object must survive encode -> validate -> decode -> encode. */
#include <stdlib.h>
#include <string.h>

#include "vectord/filter.h"
#include "vectord/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cJSON *doc = NULL;
    struct vd_err err;
    if (vd_json_parse((const char *)data, size, VD_JSON_MAX_DEPTH, &doc, &err))
        return 0;
    if (cJSON_IsObject(doc)) {
        uint8_t *bin = NULL, *bin2 = NULL;
        size_t len = 0, len2 = 0;
        if (vd_payload_encode(doc, &bin, &len) == 0) {
            if (vd_payload_validate(bin, len) != 0)
                abort();
            cJSON *back = NULL;
            if (vd_payload_decode(bin, len, &back) == 0) {
                if (vd_payload_encode(back, &bin2, &len2) == 0 &&
                    (len2 != len || memcmp(bin, bin2, len) != 0))
                    abort();
                cJSON_Delete(back);
            }
            struct vd_filter *f = NULL;
            if (vd_filter_parse(doc, &f, &err) == 0) {
                struct vd_pid id = {.type = VD_PID_NUM, .u.num = size};
                bool a = vd_filter_match(f, &id, doc);
                bool b = vd_filter_match_bin(f, &id, bin, len);
                if (a != b)
                    abort();
                vd_filter_free(f);
            }
        }
        free(bin);
        free(bin2);
    }
    cJSON_Delete(doc);
    return 0;
}
