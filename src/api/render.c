/* Points as JSON: the one place where a record read from the database becomes reply text; and
 * the results of updates. */
#include "api_int.h"

/* Appends the payload: the stored text as is, or the parts with_payload's include / exclude keys
 * select (vd_payload_select). A point without a payload shows {} as Qdrant's does. */
static void put_payload(struct vd_buf *out, const struct vd_db_record *r,
                        const struct vd_api_with *w)
{
    if (!r->payload || !r->payload_len) {
        vd_buf_puts(out, "{}");
        return;
    }
    if (!w->payload_keys && !w->payload_exclude) {
        vd_buf_append(out, r->payload, r->payload_len);
        return;
    }
    cJSON *j = NULL;
    struct vd_err e;
    if (vd_json_parse(r->payload, r->payload_len, VD_JSON_MAX_DEPTH, &j, &e)) {
        vd_buf_puts(out, "{}");
        return;
    }
    vd_payload_select(j, w->payload_keys, w->payload_exclude);
    vd_buf_json(out, j);
    cJSON_Delete(j);
}

static void put_vector(struct vd_buf *out, const struct vd_db_record *r,
                       const struct vd_api_with *w)
{
    vd_buf_puts(out, ",\"vector\":");
    if (w->vector && r->vec)
        vd_buf_json_floats(out, r->vec, r->dim);
    else
        vd_buf_puts(out, "null");
}

void vd__api_point_json(struct vd_buf *out, const struct vd_db_record *r,
                        const struct vd_api_with *w, enum vd_api_point_form form)
{
    vd_buf_puts(out, "{\"id\":");
    vd_buf_json_pid(out, &r->id);
    if (form == VD_API_POINT_EXPORT) {
        /* an import line: the vector first, and no payload key for a point without one, so
         * that import(export(x)) == x */
        put_vector(out, r, w);
        if (w->payload && r->payload && r->payload_len) {
            vd_buf_puts(out, ",\"payload\":");
            put_payload(out, r, w);
        }
        vd_buf_puts(out, "}");
        return;
    }
    if (form == VD_API_POINT_SCORED) {
        /* Qdrant's "version" is the point's change counter on the node that answers */
        vd_buf_printf(out, ",\"version\":%llu,\"score\":", (unsigned long long)r->seq);
        char num[32];
        vd_json_fmt_float(r->score, num);
        vd_buf_puts(out, num);
    }
    vd_buf_puts(out, ",\"payload\":");
    if (w->payload)
        put_payload(out, r, w);
    else
        vd_buf_puts(out, "null");
    put_vector(out, r, w);
    vd_buf_puts(out, "}");
}

void vd__api_points_json(struct vd_buf *out, const struct vd_db_record *r, size_t n,
                         const struct vd_api_with *w, enum vd_api_point_form form)
{
    vd_buf_puts(out, "[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            vd_buf_puts(out, ",");
        vd__api_point_json(out, &r[i], w, form);
    }
    vd_buf_puts(out, "]");
}

void vd__api_update_result_json(struct vd_buf *out, uint64_t op_id, const char *status)
{
    vd_buf_printf(out, "{\"operation_id\":%llu,\"status\":\"%s\"}", (unsigned long long)op_id,
                  status);
}
