/* /collections/{name}/index: payload indexes as Qdrant declares them (PUT with field_name and
 * field_schema, DELETE by field name), and the payload_schema part of collection info. In a
 * cluster a declaration goes through the cluster's Raft group, so that every node holds the same
 * indexes; the reply comes once this node's own index is built (or dropped). */
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
    cJSON *body;
    struct vd_coll *c = vd__api_coll_body(r, false, &body);
    if (!c)
        return;
    struct vd_err e;
    int rc;
    enum vd_db_pindex_type type;
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(body, "field_name");
    const cJSON *fs = cJSON_GetObjectItemCaseSensitive(body, "field_schema");
    if (!name)
        rc = vd_errf(&e, VD_EINVAL, "missing field 'field_name'");
    else if (!cJSON_IsString(name))
        rc = vd_errf(&e, VD_EINVAL, "'field_name' must be a string");
    else
        rc = parse_schema(fs, &type, &e);
    if (rc == 0 && !vd__api.cluster)
        rc = vd_db_pindex_create(c, name->valuestring, type, vd__api_write_done, r, &e);
    /* the database's own check first, so that a cluster refuses a key with the same answer */
    else if (rc == 0 && !(rc = vd_db_pindex_check_field(name->valuestring, &e)))
        rc = vd__api_cluster_set_pindex(vd_db_coll_schema(c)->name, name->valuestring, type,
                                        vd__api_write_done, r, &e);
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
    const char *field = vd_http_param(r, "field");
    int rc;
    if (!vd__api.cluster)
        rc = vd_db_pindex_delete(c, field, vd__api_write_done, r, &e);
    else if (vd_db_pindex_check_field(field, &e))
        /* no index can have that key: the answer a single node gives */
        rc = vd_errf(&e, VD_ENOTFOUND, "collection '%s' has no payload index on '%s'",
                     vd_db_coll_schema(c)->name, field ? field : "");
    else
        rc = vd__api_cluster_drop_pindex(vd_db_coll_schema(c)->name, field, vd__api_write_done, r,
                                         &e);
    if (rc)
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
