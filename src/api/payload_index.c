/* /collections/{name}/index: payload indexes as Qdrant declares them (PUT with field_name and
 * field_schema, DELETE by field name), and the payload_schema part of collection info. */
#include <stdlib.h>
#include <string.h>

#include "api_int.h"

/* field_schema: "keyword" or {"type": "keyword", ...} (Qdrant's two forms; the parameters of the
 * object form, such as is_tenant or range, are accepted and ignored). */
static int parse_schema(const cJSON *fs, enum vd_db_pindex_type *out, struct vd_err *err)
{
    if (!fs)
        return vd_errf(err, VD_EINVAL,
                       "missing field 'field_schema' (\"keyword\", \"integer\", \"float\" or "
                       "\"bool\")");
    const cJSON *t = fs;
    if (cJSON_IsObject(fs)) {
        t = cJSON_GetObjectItemCaseSensitive(fs, "type");
        if (!t)
            return vd_errf(err, VD_EINVAL, "missing field 'field_schema.type'");
    }
    if (!cJSON_IsString(t))
        return vd_errf(err, VD_EINVAL,
                       "'field_schema' must be a string or an object with a string 'type'");
    if (vd_db_pindex_type_parse(t->valuestring, out))
        return vd_errf(err, VD_EINVAL,
                       "field_schema: unknown or unsupported type \"%.64s\" (supported: "
                       "\"keyword\", \"integer\", \"float\", \"bool\")",
                       t->valuestring);
    return 0;
}

static void create_index(struct vd_http_req *r, void *ctx)
{
    struct vd_coll *c = vd__api_coll(r);
    if (!c)
        return;
    cJSON *body = vd__api_body(r, false);
    if (!body) {
        vd_db_coll_put(c);
        return;
    }
    struct vd_err e;
    int rc;
    enum vd_db_pindex_type type;
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(body, "field_name");
    if (!name)
        rc = vd_errf(&e, VD_EINVAL, "missing field 'field_name'");
    else if (!cJSON_IsString(name))
        rc = vd_errf(&e, VD_EINVAL, "'field_name' must be a string");
    else if (!(rc =
                   parse_schema(cJSON_GetObjectItemCaseSensitive(body, "field_schema"), &type, &e)))
        rc = vd_db_pindex_create(c, name->valuestring, type, vd__api_write_done, r, &e);
    if (rc)
        vd_http_reply_err(r, &e);
    cJSON_Delete(body);
    vd_db_coll_put(c);
}

static void delete_index(struct vd_http_req *r, void *ctx)
{
    struct vd_coll *c = vd__api_coll(r);
    if (!c)
        return;
    struct vd_err e;
    if (vd_db_pindex_delete(c, vd_http_param(r, "field"), vd__api_write_done, r, &e))
        vd_http_reply_err(r, &e);
    vd_db_coll_put(c);
}

int vd__api_payload_index_routes(struct vd_http *h)
{
    int rc;
    if ((rc = vd_http_route(h, "PUT", "/collections/{name}/index", VD_ROLE_RW, create_index,
                            NULL)) ||
        (rc = vd_http_route(h, "DELETE", "/collections/{name}/index/{field}", VD_ROLE_RW,
                            delete_index, NULL)))
        return rc;
    return 0;
}
