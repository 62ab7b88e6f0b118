/* /collections: create, info, list, exists, delete. */
#include <stdlib.h>
#include <string.h>

#include "api_int.h"
#include "vectord/cluster.h"

/* Reads Qdrant's quantization_config found at `path` ({"scalar": {"type": "int8", "quantile":
 * 0.5..1, "always_ram": bool}}, or null for none) into s. vectord quantizes to int8 only:
 * product and binary quantization, and other scalar types, are refused by name. */
static int parse_quant(const cJSON *q, const char *path, struct vd_coll_schema *s,
                       struct vd_err *err)
{
    s->quant_enabled = false;
    s->quant_quantile = 0.0f;
    s->quant_always_ram = 0;
    if (!q || cJSON_IsNull(q))
        return 0;
    if (!cJSON_IsObject(q))
        return vd_errf(err, VD_EINVAL,
                       "'%s' must be an object ({\"scalar\": {\"type\": \"int8\"}}) or null", path);
    static const char *const other[] = {"product", "binary"};
    for (size_t i = 0; i < 2; i++)
        if (cJSON_GetObjectItemCaseSensitive(q, other[i]))
            return vd_errf(err, VD_EINVAL,
                           "'%s.%s': %s quantization is not supported; vectord offers scalar int8 "
                           "quantization ({\"scalar\": {\"type\": \"int8\"}})",
                           path, other[i], other[i]);
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(q, "scalar");
    if (!cJSON_IsObject(sc))
        return vd_errf(err, VD_EINVAL,
                       "'%s' must be {\"scalar\": {\"type\": \"int8\", \"quantile\": ..., "
                       "\"always_ram\": ...}}",
                       path);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(sc, "type");
    if (!type)
        return vd_errf(err, VD_EINVAL, "missing field '%s.scalar.type' (\"int8\")", path);
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "int8") != 0)
        return vd_errf(err, VD_EINVAL,
                       "'%s.scalar.type': unknown scalar quantization type%s%s%s; the only type "
                       "is \"int8\"",
                       path, cJSON_IsString(type) ? " \"" : "",
                       cJSON_IsString(type) ? type->valuestring : "",
                       cJSON_IsString(type) ? "\"" : "");
    const cJSON *qt = cJSON_GetObjectItemCaseSensitive(sc, "quantile");
    if (qt && !cJSON_IsNull(qt)) {
        if (!cJSON_IsNumber(qt))
            return vd_errf(err, VD_EINVAL, "'%s.scalar.quantile' must be a number", path);
        if (!(qt->valuedouble >= 0.5 && qt->valuedouble <= 1.0))
            return vd_errf(err, VD_ERANGE,
                           "Validation error in JSON body: [%s.scalar.quantile: value %g invalid, "
                           "must be from 0.5 to 1]",
                           path, qt->valuedouble);
        s->quant_quantile = (float)qt->valuedouble;
    }
    const cJSON *ar = cJSON_GetObjectItemCaseSensitive(sc, "always_ram");
    if (ar && !cJSON_IsNull(ar)) {
        if (!cJSON_IsBool(ar))
            return vd_errf(err, VD_EINVAL, "'%s.scalar.always_ram' must be a boolean", path);
        s->quant_always_ram = cJSON_IsTrue(ar) ? 2 : 1;
    }
    s->quant_enabled = true;
    return 0;
}

/* Qdrant's "quantization_config" of a collection: null, or the scalar config as it was given. */
static void put_quant(struct vd_buf *b, const struct vd_coll_schema *s)
{
    if (!s->quant_enabled) {
        vd_buf_puts(b, "null");
        return;
    }
    vd_buf_puts(b, "{\"scalar\":{\"type\":\"int8\"");
    if (s->quant_quantile != 0.0f) {
        char f[32];
        vd_json_fmt_float(s->quant_quantile, f);
        vd_buf_printf(b, ",\"quantile\":%s", f);
    }
    if (s->quant_always_ram)
        vd_buf_puts(b, s->quant_always_ram == 2 ? ",\"always_ram\":true" : ",\"always_ram\":false");
    vd_buf_puts(b, "}}");
}

/* Reads the body of PUT /collections/{name} into a schema. */
static int parse_schema(const cJSON *body, struct vd_coll_schema *s, struct vd_err *err)
{
    const cJSON *vec = cJSON_GetObjectItemCaseSensitive(body, "vectors");
    if (!vec)
        return vd_errf(err, VD_EINVAL,
                       "missing field 'vectors' ({\"size\": N, \"distance\": ...})");
    if (!cJSON_IsObject(vec))
        return vd_errf(err, VD_EINVAL,
                       "'vectors' must be an object {\"size\": N, \"distance\": ...}");
    if (!cJSON_GetObjectItemCaseSensitive(vec, "size") &&
        !cJSON_GetObjectItemCaseSensitive(vec, "distance") && cJSON_GetArraySize(vec) > 0)
        return vd_errf(err, VD_EINVAL,
                       "named vectors are not supported: 'vectors' must be {\"size\": N, "
                       "\"distance\": ...}");
    int rc;
    if ((rc = vd__api_refuse(body, "sparse_vectors", "sparse_vectors",
                             "vectord stores one dense vector per point", err)) ||
        (rc = vd__api_refuse(vec, "multivector_config", "vectors.multivector_config",
                             "vectord stores one vector per point", err)))
        return rc;
    const cJSON *size = cJSON_GetObjectItemCaseSensitive(vec, "size");
    if (!size || cJSON_IsNull(size))
        return vd_errf(err, VD_EINVAL, "missing field 'vectors.size'");
    if ((rc = vd__api_get_u32_at(vec, "vectors", "size", 0, 1, 65536, &s->dim, err)))
        return rc;
    const cJSON *dist = cJSON_GetObjectItemCaseSensitive(vec, "distance");
    if (!dist)
        return vd_errf(err, VD_EINVAL, "missing field 'vectors.distance'");
    if (!cJSON_IsString(dist) || vd_metric_parse(dist->valuestring, &s->metric))
        return vd_errf(err, VD_EINVAL,
                       "'vectors.distance' must be one of \"Cosine\", \"Dot\", \"Euclid\", "
                       "\"Manhattan\"");
    const char *hpath = "hnsw_config";
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(body, "hnsw_config");
    if (!h || cJSON_IsNull(h)) {
        h = cJSON_GetObjectItemCaseSensitive(vec, "hnsw_config");
        hpath = "vectors.hnsw_config";
    }
    if (h && !cJSON_IsNull(h) && !cJSON_IsObject(h))
        return vd_errf(err, VD_EINVAL, "'%s' must be an object", hpath);
    if ((rc = vd__api_get_u32_at(h, hpath, "m", 16, 2, 512, &s->hnsw_m, err)) ||
        (rc = vd__api_get_u32_at(h, hpath, "ef_construct", 100, 4, 4096, &s->hnsw_ef_construct,
                                 err)) ||
        (rc = vd__api_get_u32_at(h, hpath, "full_scan_threshold", 10000, 0, UINT32_MAX,
                                 &s->full_scan_threshold_kb, err)))
        return rc;
    const char *qpath = "quantization_config";
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(body, qpath);
    if (!q || cJSON_IsNull(q)) {
        q = cJSON_GetObjectItemCaseSensitive(vec, "quantization_config");
        qpath = "vectors.quantization_config";
    }
    if ((rc = parse_quant(q, qpath, s, err)))
        return rc;
    uint32_t rdef = vd__api.replication_factor ? vd__api.replication_factor : 1;
    if ((rc = vd__api_get_u32(body, "replication_factor", rdef, 1, 64, &s->replication_factor,
                              err)))
        return rc;
    uint32_t wdef = s->replication_factor / 2 + 1;
    if ((rc = vd__api_get_u32(body, "write_consistency_factor", wdef, 1, s->replication_factor,
                              &s->write_consistency_factor, err)))
        return rc;
    return 0;
}

static void create(struct vd_http_req *r, void *ctx)
{
    const char *name = vd_http_param(r, "name");
    struct vd_err e;
    if (vd_db_check_name(name, &e)) {
        vd_http_reply_err(r, &e);
        return;
    }
    cJSON *body = vd__api_body(r, false);
    if (!body)
        return;
    struct vd_coll_schema s;
    memset(&s, 0, sizeof s);
    snprintf(s.name, sizeof s.name, "%s", name);
    int rc = parse_schema(body, &s, &e);
    cJSON_Delete(body);
    if (rc) {
        vd_http_reply_err(r, &e);
        return;
    }
    if (vd__api.meta.create_collection(vd__api.meta.impl, &s, vd__api_meta_done, r, &e))
        vd_http_reply_err(r, &e);
}

/* DELETE of a collection that does not exist answers 200 {"result": false}, as Qdrant does: its
 * clients (and test fixtures) drop a collection before creating it and treat only an error as
 * a failure. */
static void drop_done(int status, const struct vd_err *err, uint64_t op_id, void *ctx)
{
    if (status == VD_ENOTFOUND) {
        vd_http_reply_ok(ctx, "false", 5);
        return;
    }
    vd__api_meta_done(status, err, op_id, ctx);
}

static void drop(struct vd_http_req *r, void *ctx)
{
    const char *name = vd_http_param(r, "name");
    struct vd_err e;
    if (vd_db_check_name(name, &e)) {
        vd_http_reply_err(r, &e);
        return;
    }
    int rc = vd__api.meta.delete_collection(vd__api.meta.impl, name, drop_done, r, &e);
    if (rc == VD_ENOTFOUND)
        vd_http_reply_ok(r, "false", 5);
    else if (rc)
        vd_http_reply_err(r, &e);
}

/* PATCH /collections/{name}: Qdrant's collection update. vectord changes the quantization config
 * ({"scalar": …} sets it, "Disabled" removes it, null or absent leaves it); the optimizer
 * settings are accepted and ignored (vectord has no optimizer), and the other parts, which would
 * change how the collection answers, are refused by name. */
static void patch(struct vd_http_req *r, void *ctx)
{
    struct vd_coll *c = vd__api_coll(r);
    if (!c)
        return;
    struct vd_coll_schema s;
    vd_db_coll_schema_copy(c, &s);
    vd_db_coll_put(c);
    struct vd_err e;
    cJSON *body = vd__api_body(r, false);
    if (!body)
        return;
    int rc = 0;
    static const char *const fixed[] = {"vectors", "hnsw_config", "params", "sparse_vectors",
                                        "strict_mode_config"};
    for (size_t i = 0; !rc && i < sizeof fixed / sizeof *fixed; i++) {
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(body, fixed[i]);
        if (it && !cJSON_IsNull(it))
            rc = vd_errf(&e, VD_EINVAL,
                         "'%s' cannot be changed on an existing collection; only "
                         "'quantization_config' can",
                         fixed[i]);
    }
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(body, "quantization_config");
    bool change = q && !cJSON_IsNull(q);
    if (!rc && cJSON_IsString(q) && strcmp(q->valuestring, "Disabled") == 0) {
        s.quant_enabled = false;
        s.quant_quantile = 0.0f;
        s.quant_always_ram = 0;
    } else if (!rc && change) {
        rc = parse_quant(q, "quantization_config", &s, &e);
    }
    cJSON_Delete(body);
    if (rc) {
        vd_http_reply_err(r, &e);
        return;
    }
    if (!change) {
        vd_http_reply_ok(r, "true", 4);
        return;
    }
    if (!vd__api.meta.update_collection) {
        vd_errf(&e, VD_EINVAL, "the quantization config cannot be changed on this node");
        vd_http_reply_err(r, &e);
        return;
    }
    if (vd__api.meta.update_collection(vd__api.meta.impl, &s, vd__api_meta_done, r, &e))
        vd_http_reply_err(r, &e);
}

static void list(struct vd_http_req *r, void *ctx)
{
    char **names;
    size_t n;
    if (vd_db_coll_names(vd__api.db, &names, &n)) {
        vd_http_reply_error(r, 500, "out of memory");
        return;
    }
    struct vd_buf b;
    vd_buf_init(&b);
    vd_buf_puts(&b, "{\"collections\":[");
    for (size_t i = 0; i < n; i++) {
        vd_buf_puts(&b, i ? ",{\"name\":" : "{\"name\":");
        vd_buf_json_string(&b, names[i], strlen(names[i]));
        vd_buf_puts(&b, "}");
        free(names[i]);
    }
    free(names);
    vd_buf_puts(&b, "]}");
    vd__api_reply_buf(r, &b);
}

static void exists(struct vd_http_req *r, void *ctx)
{
    const char *name = vd_http_param(r, "name");
    struct vd_err e;
    if (vd_db_check_name(name, &e)) {
        vd_http_reply_err(r, &e);
        return;
    }
    struct vd_coll *c;
    int rc = vd__api_coll_find(r, name, &c, &e);
    if (rc == VD__API_PENDING)
        return;
    if (rc && rc != VD_ENOTFOUND) {
        vd_http_reply_err(r, &e);
        return;
    }
    bool yes = rc == 0;
    if (yes)
        vd_db_coll_put(c);
    const char *res = yes ? "{\"exists\":true}" : "{\"exists\":false}";
    vd_http_reply_ok(r, res, strlen(res));
}

/* {"<field>": {"data_type": "keyword", "points": N}, …}, as Qdrant reports payload indexes. */
static void put_payload_schema(struct vd_buf *b, struct vd_coll *c)
{
    struct vd_db_pindex_info *v;
    size_t n;
    vd_buf_puts(b, "{");
    if (vd_db_pindex_list(c, &v, &n) == 0) {
        for (size_t i = 0; i < n; i++) {
            if (i)
                vd_buf_puts(b, ",");
            vd_buf_json_string(b, v[i].field, strlen(v[i].field));
            vd_buf_printf(b, ":{\"data_type\":\"%s\",\"points\":%llu}",
                          vd_db_pindex_type_name(v[i].type), (unsigned long long)v[i].points);
        }
        vd_db_pindex_list_free(v, n);
    }
    vd_buf_puts(b, "}");
}

static void info(struct vd_http_req *r, void *ctx)
{
    struct vd_coll *c = vd__api_coll(r);
    if (!c)
        return;
    struct vd_coll_schema sc;
    vd_db_coll_schema_copy(c, &sc);
    const struct vd_coll_schema *s = &sc;
    struct vd_coll_stats st;
    vd_db_coll_stats(c, &st);
    /* In a cluster, points_count is the collection's, approximately (as Qdrant says it is): this
     * node's points scaled by the share of the ring it replicates; the vector counts stay this
     * node's, the index it searches. */
    uint64_t points = st.points;
    if (vd__api.cluster) {
        double share = vd_cluster_ring_share(vd__api.cluster, s->replication_factor);
        if (share > 0.0 && share < 1.0)
            points = (uint64_t)((double)st.points / share + 0.5);
    }
    struct vd_buf b;
    vd_buf_init(&b);
    /* green: fully indexed; yellow: background linking in progress (Qdrant's meaning) */
    vd_buf_printf(
        &b,
        "{\"status\":\"%s\",\"optimizer_status\":\"ok\",\"vectors_count\":%llu,"
        "\"indexed_vectors_count\":%llu,\"points_count\":%llu,\"segments_count\":1,"
        "\"config\":{\"params\":{\"vectors\":{\"size\":%u,\"distance\":\"%s\"},"
        "\"shard_number\":1,\"replication_factor\":%u,\"write_consistency_factor\":%u,"
        "\"on_disk_payload\":false},"
        "\"hnsw_config\":{\"m\":%u,\"ef_construct\":%u,\"full_scan_threshold\":%u,"
        "\"max_indexing_threads\":0,\"on_disk\":false},"
        "\"optimizer_config\":{\"deleted_threshold\":0.2,\"vacuum_min_vector_number\":1000,"
        "\"default_segment_number\":0,\"max_segment_size\":null,\"memmap_threshold\":null,"
        "\"indexing_threshold\":20000,\"flush_interval_sec\":5,"
        "\"max_optimization_threads\":null},"
        "\"wal_config\":{\"wal_capacity_mb\":32,\"wal_segments_ahead\":0},"
        "\"quantization_config\":",
        st.pending ? "yellow" : "green", (unsigned long long)st.points,
        (unsigned long long)st.indexed, (unsigned long long)points, s->dim,
        vd_metric_name(s->metric), s->replication_factor, s->write_consistency_factor, s->hnsw_m,
        s->hnsw_ef_construct, s->full_scan_threshold_kb);
    put_quant(&b, s);
    vd_buf_puts(&b, "},\"payload_schema\":");
    put_payload_schema(&b, c);
    vd_buf_puts(&b, "}");
    vd_db_coll_put(c);
    vd__api_reply_buf(r, &b);
}

int vd__api_collections_routes(struct vd_http *h)
{
    int rc;
    if ((rc = vd_http_route(h, "GET", "/collections", VD_ROLE_RO, list, NULL)) ||
        (rc = vd_http_route(h, "PUT", "/collections/{name}", VD_ROLE_ADMIN, create, NULL)) ||
        (rc = vd_http_route(h, "GET", "/collections/{name}", VD_ROLE_RO, info, NULL)) ||
        (rc = vd_http_route(h, "PATCH", "/collections/{name}", VD_ROLE_ADMIN, patch, NULL)) ||
        (rc = vd_http_route(h, "DELETE", "/collections/{name}", VD_ROLE_ADMIN, drop, NULL)) ||
        (rc = vd_http_route(h, "GET", "/collections/{name}/exists", VD_ROLE_RO, exists, NULL)))
        return rc;
    return 0;
}
