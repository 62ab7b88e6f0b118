/*
 * The metadata state machine: collection schemas, members and their ring tokens. Every node
 * applies the same committed commands in the same order and must end in the same state, so this
 * file is pure (no I/O, clock, randomness or threads) and every iteration order is a sorted one:
 * collections by name, members by id, ring tokens by (token, id).
 *
 * Commands and snapshots arrive from disk and the network; each is parsed with the strict JSON
 * reader and validated completely before anything changes, so a bad one leaves the state as it
 * was. u64 fields (ids, incarnations, tokens, indexes) are read from the number's literal text,
 * never through a double, so values near 2^64 survive.
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"
#include "vectord/coord.h"
#include "vectord/db.h"

#define TOP_BIT (UINT64_C(1) << 63)
#define SNAPSHOT_VERSION 1
#define CMD_MAX_DEPTH 8
#define TOKEN_SEED UINT64_C(0x7664746f6b656e73) /* "vdtokens": changing it moves every key */

/* A collection: its schema and its payload indexes (sorted by field). */
struct coll {
    struct vd_coll_schema s;
    struct vd_meta_pindex *idx; /* owned; NULL when n_idx is 0 */
    size_t n_idx;
    bool has_points; /* some node held a point of this incarnation once (sticky) */
};

struct vd_meta {
    uint64_t applied;
    uint64_t ring_version; /* the index of the command that last changed the ring */
    struct coll *colls; /* sorted by name */
    size_t n_colls, cap_colls;
    struct vd_meta_member *members; /* sorted by id */
    size_t n_members, cap_members;
    struct vd_coord_token *ring; /* tokens of UP and LEAVING members, sorted by (token, id) */
    size_t n_ring;
};

/* ---- names of enums in JSON ----------------------------------------------------------------- */

static const char *state_name(unsigned st)
{
    switch (st) {
    case VD_MEMBER_JOINING:
        return "joining";
    case VD_MEMBER_UP:
        return "up";
    case VD_MEMBER_LEAVING:
        return "leaving";
    }
    return "unknown";
}

static int state_parse(const char *s, uint8_t *out)
{
    for (unsigned st = VD_MEMBER_JOINING; st <= VD_MEMBER_LEAVING; st++)
        if (!strcmp(s, state_name(st))) {
            *out = (uint8_t)st;
            return 0;
        }
    return VD_EINVAL;
}

/* ---- JSON writers -----------------------------------------------------------------------------
 */

static void put_u64(struct vd_buf *b, uint64_t v)
{
    vd_buf_printf(b, "%llu", (unsigned long long)v);
}

static void put_str(struct vd_buf *b, const char *s)
{
    vd_buf_json_string(b, s, strlen(s));
}

/* Every schema field, so a command or snapshot carries the whole schema and no node fills in a
 * default of its own. */
static void put_schema_fields(struct vd_buf *b, const struct vd_coll_schema *s)
{
    vd_buf_puts(b, "{\"name\":");
    put_str(b, s->name);
    vd_buf_printf(b,
                  ",\"dim\":%u,\"metric\":\"%s\",\"hnsw_m\":%u,\"hnsw_ef_construct\":%u,"
                  "\"full_scan_threshold_kb\":%u,\"replication_factor\":%u,"
                  "\"write_consistency_factor\":%u,\"incarnation\":",
                  s->dim, vd_metric_name(s->metric), s->hnsw_m, s->hnsw_ef_construct,
                  s->full_scan_threshold_kb, s->replication_factor, s->write_consistency_factor);
    put_u64(b, s->incarnation);
    vd_buf_puts(b, ",\"created_hlc\":");
    put_u64(b, s->created_hlc);
    /* only when set, so that commands and snapshots without quantization read as before */
    if (s->quant_enabled)
        vd_buf_printf(b, ",\"quant\":{\"quantile\":%.9g,\"always_ram\":%u}",
                      (double)s->quant_quantile, (unsigned)s->quant_always_ram);
}

static void put_schema(struct vd_buf *b, const struct vd_coll_schema *s)
{
    put_schema_fields(b, s);
    vd_buf_puts(b, "}");
}

/* A collection in a snapshot: its schema fields, then its payload indexes in field order (left
 * out when there are none, which is also how snapshots written before indexes read). */
static void put_coll(struct vd_buf *b, const struct coll *c)
{
    put_schema_fields(b, &c->s);
    if (c->n_idx) {
        vd_buf_puts(b, ",\"payload_indexes\":[");
        for (size_t i = 0; i < c->n_idx; i++) {
            vd_buf_puts(b, i ? ",{\"field\":" : "{\"field\":");
            put_str(b, c->idx[i].field);
            vd_buf_printf(b, ",\"type\":\"%s\"}", vd_db_pindex_type_name(c->idx[i].type));
        }
        vd_buf_puts(b, "]");
    }
    if (c->has_points)
        vd_buf_puts(b, ",\"has_points\":true");
    vd_buf_puts(b, "}");
}

static void put_member(struct vd_buf *b, const struct vd_meta_member *mb)
{
    vd_buf_puts(b, "{\"id\":");
    put_u64(b, mb->id);
    vd_buf_puts(b, ",\"addr\":");
    put_str(b, mb->addr);
    vd_buf_puts(b, ",\"http_addr\":");
    put_str(b, mb->http_addr);
    vd_buf_printf(b, ",\"state\":\"%s\",\"tokens\":[", state_name(mb->state));
    for (int t = 0; t < VD_META_TOKENS; t++) {
        if (t)
            vd_buf_puts(b, ",");
        put_u64(b, mb->tokens[t]);
    }
    vd_buf_puts(b, "]}");
}

void vd_meta_cmd_update_collection(const struct vd_coll_schema *s, struct vd_buf *out)
{
    vd_buf_puts(out, "{\"op\":\"update_collection\",\"schema\":");
    put_schema(out, s);
    vd_buf_puts(out, "}");
}

void vd_meta_cmd_create_collection(const struct vd_coll_schema *s, struct vd_buf *out)
{
    vd_buf_puts(out, "{\"op\":\"create_collection\",\"schema\":");
    put_schema(out, s);
    vd_buf_puts(out, "}");
}

void vd_meta_cmd_collection_has_points(const char *name, uint64_t incarnation, struct vd_buf *out)
{
    vd_buf_puts(out, "{\"op\":\"collection_has_points\",\"name\":");
    put_str(out, name);
    vd_buf_puts(out, ",\"incarnation\":");
    put_u64(out, incarnation);
    vd_buf_puts(out, "}");
}

void vd_meta_cmd_delete_collection(const char *name, struct vd_buf *out)
{
    vd_buf_puts(out, "{\"op\":\"delete_collection\",\"name\":");
    put_str(out, name);
    vd_buf_puts(out, "}");
}

void vd_meta_cmd_set_payload_index(const char *coll, const char *field, enum vd_db_pindex_type type,
                                   struct vd_buf *out)
{
    const char *tn = vd_db_pindex_type_name(type);
    vd_buf_puts(out, "{\"op\":\"set_payload_index\",\"collection\":");
    put_str(out, coll);
    vd_buf_puts(out, ",\"field\":");
    put_str(out, field);
    vd_buf_puts(out, ",\"type\":");
    put_str(out, tn ? tn : "");
    vd_buf_puts(out, "}");
}

void vd_meta_cmd_drop_payload_index(const char *coll, const char *field, struct vd_buf *out)
{
    vd_buf_puts(out, "{\"op\":\"drop_payload_index\",\"collection\":");
    put_str(out, coll);
    vd_buf_puts(out, ",\"field\":");
    put_str(out, field);
    vd_buf_puts(out, "}");
}

void vd_meta_cmd_add_member(uint64_t id, const char *addr, const char *http_addr,
                            struct vd_buf *out)
{
    vd_buf_puts(out, "{\"op\":\"add_member\",\"id\":");
    put_u64(out, id);
    vd_buf_puts(out, ",\"addr\":");
    put_str(out, addr ? addr : "");
    vd_buf_puts(out, ",\"http_addr\":");
    put_str(out, http_addr ? http_addr : "");
    vd_buf_puts(out, "}");
}

/* state 0 and NULL addresses are left out of the command: the member keeps what it has. */
void vd_meta_cmd_set_member(uint64_t id, enum vd_meta_state state, const char *addr,
                            const char *http_addr, struct vd_buf *out)
{
    vd_buf_puts(out, "{\"op\":\"set_member\",\"id\":");
    put_u64(out, id);
    if (state)
        vd_buf_printf(out, ",\"state\":\"%s\"", state_name(state));
    if (addr) {
        vd_buf_puts(out, ",\"addr\":");
        put_str(out, addr);
    }
    if (http_addr) {
        vd_buf_puts(out, ",\"http_addr\":");
        put_str(out, http_addr);
    }
    vd_buf_puts(out, "}");
}

void vd_meta_cmd_remove_member(uint64_t id, struct vd_buf *out)
{
    vd_buf_puts(out, "{\"op\":\"remove_member\",\"id\":");
    put_u64(out, id);
    vd_buf_puts(out, "}");
}

/* ---- JSON readers -----------------------------------------------------------------------------
 */

/* Required u64 field `key` of object o, exact from its literal text. */
static int get_u64(const cJSON *o, const char *key, uint64_t *out, struct vd_err *e)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!it)
        return vd_errf(e, VD_EINVAL, "missing field '%s'", key);
    /* "-0" reads as 0 through vd_json_get_u64; a sign has no business in these fields. */
    if (!cJSON_IsNumber(it) || (it->valuestring && it->valuestring[0] == '-') ||
        vd_json_get_u64(it, out))
        return vd_errf(e, VD_EINVAL, "'%s' must be an unsigned 64-bit integer", key);
    return 0;
}

static int get_u32_range(const cJSON *o, const char *key, uint64_t lo, uint64_t hi, uint32_t *out,
                         struct vd_err *e)
{
    uint64_t v;
    int rc = get_u64(o, key, &v, e);
    if (rc)
        return rc;
    if (v < lo || v > hi)
        return vd_errf(e, VD_EINVAL, "'%s' must be between %llu and %llu, got %llu", key,
                       (unsigned long long)lo, (unsigned long long)hi, (unsigned long long)v);
    *out = (uint32_t)v;
    return 0;
}

/* String field: *out is NULL when absent and the field is optional. */
static int get_str(const cJSON *o, const char *key, bool required, const char **out,
                   struct vd_err *e)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    *out = NULL;
    if (!it) {
        if (required)
            return vd_errf(e, VD_EINVAL, "missing field '%s'", key);
        return 0;
    }
    if (!cJSON_IsString(it) || !it->valuestring)
        return vd_errf(e, VD_EINVAL, "'%s' must be a string", key);
    *out = it->valuestring;
    return 0;
}

/* Addresses are host:port text that ends up in logs, replies and dial calls: printable ASCII
 * without spaces, and short enough for the member's fixed fields. */
static int check_addr(const char *key, const char *s, bool allow_empty, struct vd_err *e)
{
    size_t n = strlen(s);
    if (n == 0 && !allow_empty)
        return vd_errf(e, VD_EINVAL, "'%s' must not be empty", key);
    if (n > 255)
        return vd_errf(e, VD_EINVAL, "'%s' is %zu bytes long, at most 255 allowed", key, n);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return vd_errf(e, VD_EINVAL, "'%s' may contain only printable ASCII without spaces",
                           key);
    return 0;
}

/*
 * Reads and validates a whole schema object: the same ranges the REST API enforces on create,
 * so anything the API accepts passes and nothing else does. The incarnation may be 0 here (the
 * caller decides whether that is allowed). Errors: VD_EINVAL naming the field.
 */
/* The optional "quant" object of a schema: {"quantile": 0 or 0.5..1, "always_ram": 0..2}. */
static int parse_quant(const cJSON *o, struct vd_coll_schema *s, struct vd_err *e)
{
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(o, "quant");
    if (!q)
        return 0;
    const cJSON *qt = cJSON_GetObjectItemCaseSensitive(q, "quantile");
    const cJSON *ar = cJSON_GetObjectItemCaseSensitive(q, "always_ram");
    if (!cJSON_IsObject(q) || !cJSON_IsNumber(qt) || !cJSON_IsNumber(ar) ||
        !(qt->valuedouble == 0.0 || (qt->valuedouble >= 0.5 && qt->valuedouble <= 1.0)) ||
        ar->valuedouble < 0 || ar->valuedouble > 2 || ar->valuedouble != (int)ar->valuedouble)
        return vd_errf(e, VD_EINVAL, "'quant' must be {\"quantile\": 0 or 0.5..1, "
                                     "\"always_ram\": 0..2}");
    s->quant_enabled = true;
    s->quant_quantile = (float)qt->valuedouble;
    s->quant_always_ram = (uint8_t)ar->valuedouble;
    return 0;
}

static int parse_schema(const cJSON *o, struct vd_coll_schema *s, struct vd_err *e)
{
    memset(s, 0, sizeof *s);
    if (!cJSON_IsObject(o))
        return vd_errf(e, VD_EINVAL, "'schema' must be an object");
    const char *name, *metric;
    int rc;
    if ((rc = get_str(o, "name", true, &name, e)))
        return rc;
    if (vd_db_check_name(name, e))
        return e->code = VD_EINVAL;
    memcpy(s->name, name, strlen(name) + 1);
    uint32_t rf;
    if ((rc = get_u32_range(o, "dim", 1, 65536, &s->dim, e)) ||
        (rc = get_str(o, "metric", true, &metric, e)))
        return rc;
    if (vd_metric_parse(metric, &s->metric))
        return vd_errf(e, VD_EINVAL,
                       "'metric' must be one of \"Cosine\", \"Dot\", \"Euclid\", \"Manhattan\"");
    if ((rc = get_u32_range(o, "hnsw_m", 2, 512, &s->hnsw_m, e)) ||
        (rc = get_u32_range(o, "hnsw_ef_construct", 4, 4096, &s->hnsw_ef_construct, e)) ||
        (rc = get_u32_range(o, "full_scan_threshold_kb", 0, UINT32_MAX, &s->full_scan_threshold_kb,
                            e)) ||
        (rc = get_u32_range(o, "replication_factor", 1, 64, &rf, e)))
        return rc;
    s->replication_factor = rf;
    if ((rc = get_u32_range(o, "write_consistency_factor", 1, rf, &s->write_consistency_factor,
                            e)) ||
        (rc = get_u64(o, "incarnation", &s->incarnation, e)) ||
        (rc = get_u64(o, "created_hlc", &s->created_hlc, e)))
        return rc;
    return parse_quant(o, s, e);
}

/* ---- tables -----------------------------------------------------------------------------------
 */

/* Index of name in the sorted collections, or where it would go (*found false). */
static size_t coll_find(const struct vd_meta *m, const char *name, bool *found)
{
    size_t lo = 0, hi = m->n_colls;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(m->colls[mid].s.name, name);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

static size_t member_find(const struct vd_meta *m, uint64_t id, bool *found)
{
    size_t lo = 0, hi = m->n_members;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->members[mid].id == id) {
            *found = true;
            return mid;
        }
        if (m->members[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

/* Makes room for one more element in a growable array; VD_ENOMEM leaves it as it was. */
static int grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return 0;
    size_t nc = *cap ? *cap * 2 : 8;
    void *p = realloc(*arr, nc * elem);
    if (!p)
        return VD_ENOMEM;
    *arr = p;
    *cap = nc;
    return 0;
}

/* Ring positions of a member: a function of its id alone, so every node computes the same
 * tokens without coordination and a member's tokens never depend on who else is there. */
static void derive_tokens(uint64_t id, uint64_t tokens[VD_META_TOKENS])
{
    uint8_t key[12];
    vd_be64_put(key, id);
    for (uint32_t t = 0; t < VD_META_TOKENS; t++) {
        vd_be32_put(key + 8, t);
        tokens[t] = vd_hash64(key, sizeof key, TOKEN_SEED);
    }
}

/* Rebuilds the sorted token array from the members. VD_ENOMEM leaves the old ring in place. */
static int ring_rebuild(struct vd_meta *m)
{
    size_t n = 0;
    for (size_t i = 0; i < m->n_members; i++)
        if (m->members[i].state != VD_MEMBER_JOINING)
            n += VD_META_TOKENS;
    struct vd_coord_token *r = NULL;
    if (n) {
        r = malloc(n * sizeof *r);
        if (!r)
            return VD_ENOMEM;
    }
    size_t k = 0;
    for (size_t i = 0; i < m->n_members; i++) {
        const struct vd_meta_member *mb = &m->members[i];
        if (mb->state == VD_MEMBER_JOINING)
            continue;
        for (int t = 0; t < VD_META_TOKENS; t++)
            r[k++] = (struct vd_coord_token){mb->tokens[t], mb->id};
    }
    vd_coord_ring_sort(r, n);
    free(m->ring);
    m->ring = r;
    m->n_ring = n;
    return 0;
}

static void state_release(struct vd_meta *m)
{
    for (size_t i = 0; i < m->n_colls; i++)
        free(m->colls[i].idx);
    free(m->colls);
    free(m->members);
    free(m->ring);
    memset(m, 0, sizeof *m);
}

int vd_meta_new(struct vd_meta **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? 0 : VD_ENOMEM;
}

void vd_meta_free(struct vd_meta *m)
{
    if (!m)
        return;
    state_release(m);
    free(m);
}

/* ---- commands ---------------------------------------------------------------------------------
 */

/* The collection, if any, that already uses incarnation inc. */
static const struct vd_coll_schema *coll_by_incarnation(const struct vd_meta *m, uint64_t inc)
{
    for (size_t i = 0; i < m->n_colls; i++)
        if (m->colls[i].s.incarnation == inc)
            return &m->colls[i].s;
    return NULL;
}

/* The "schema" object of a command. */
static int cmd_schema(const cJSON *cmd, struct vd_coll_schema *s, struct vd_err *e)
{
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(cmd, "schema");
    if (!so)
        return vd_errf(e, VD_EINVAL, "missing field 'schema'");
    int rc = parse_schema(so, s, e);
    if (rc)
        vd_err_prefix(e, "schema");
    return rc;
}

static int op_create_collection(struct vd_meta *m, uint64_t index, const cJSON *cmd,
                                struct vd_err *e)
{
    struct vd_coll_schema s;
    int rc = cmd_schema(cmd, &s, e);
    if (rc)
        return rc;
    bool found;
    size_t at = coll_find(m, s.name, &found);
    if (found)
        return vd_errf(e, VD_EEXIST, "collection '%s' already exists", s.name);
    /* A fresh collection takes its creation index as incarnation, marked by the top bit so that
     * reconciliation can tell it from one adopted from before the node joined a cluster (those
     * arrive here with the store's own incarnation, kept as is). */
    if (s.incarnation == 0)
        s.incarnation = TOP_BIT | index;
    const struct vd_coll_schema *dup = coll_by_incarnation(m, s.incarnation);
    if (dup)
        return vd_errf(e, VD_EEXIST, "collection '%s': incarnation %llu is already used by '%s'",
                       s.name, (unsigned long long)s.incarnation, dup->name);
    if (grow((void **)&m->colls, &m->cap_colls, m->n_colls, sizeof *m->colls))
        return vd_errf(e, VD_ENOMEM, "out of memory");
    memmove(&m->colls[at + 1], &m->colls[at], (m->n_colls - at) * sizeof *m->colls);
    m->colls[at] = (struct coll){.s = s};
    m->n_colls++;
    return 0;
}

/* Replaces the quantization config of a collection; the command names its incarnation, so a
 * change meant for a collection since deleted and re-created does not touch the new one. */
static int op_update_collection(struct vd_meta *m, const cJSON *cmd, struct vd_err *e)
{
    struct vd_coll_schema s;
    int rc = cmd_schema(cmd, &s, e);
    if (rc)
        return rc;
    bool found;
    size_t at = coll_find(m, s.name, &found);
    if (!found || m->colls[at].s.incarnation != s.incarnation)
        return vd_errf(e, VD_ENOTFOUND, "collection '%s' not found", s.name);
    struct vd_coll_schema *cur = &m->colls[at].s;
    cur->quant_enabled = s.quant_enabled;
    cur->quant_quantile = s.quant_quantile;
    cur->quant_always_ram = s.quant_always_ram;
    return 0;
}

static int op_delete_collection(struct vd_meta *m, const cJSON *cmd, struct vd_err *e)
{
    const char *name;
    int rc = get_str(cmd, "name", true, &name, e);
    if (rc)
        return rc;
    if (vd_db_check_name(name, e))
        return e->code = VD_EINVAL;
    bool found;
    size_t at = coll_find(m, name, &found);
    if (!found)
        return vd_errf(e, VD_ENOTFOUND, "collection '%s' not found", name);
    free(m->colls[at].idx);
    memmove(&m->colls[at], &m->colls[at + 1], (m->n_colls - at - 1) * sizeof *m->colls);
    m->n_colls--;
    return 0;
}

static int op_collection_has_points(struct vd_meta *m, const cJSON *cmd, struct vd_err *e)
{
    const char *name;
    uint64_t inc;
    int rc;
    if ((rc = get_str(cmd, "name", true, &name, e)) || (rc = get_u64(cmd, "incarnation", &inc, e)))
        return rc;
    bool found;
    size_t at = coll_find(m, name, &found);
    if (!found || m->colls[at].s.incarnation != inc)
        return vd_errf(e, VD_ENOTFOUND, "collection '%s' incarnation %llu not found", name,
                       (unsigned long long)inc);
    m->colls[at].has_points = true;
    return 0;
}

const char *vd_meta_collection_with_points(const struct vd_meta *m)
{
    for (size_t i = 0; i < m->n_colls; i++)
        if (m->colls[i].has_points)
            return m->colls[i].s.name;
    return NULL;
}

bool vd_meta_collection_has_points(const struct vd_meta *m, const char *name)
{
    bool found;
    size_t at = coll_find(m, name, &found);
    return found && m->colls[at].has_points;
}

/* The refusal of a membership change while collections hold points (see cluster_int.h). */
static int refuse_while_points(const struct vd_meta *m, const char *what, struct vd_err *e)
{
    const char *name = vd_meta_collection_with_points(m);
    if (!name)
        return 0;
    return vd_errf(e, VD_EEXIST, VD_META_POINTS_REFUSAL, what, name);
}

/* Index of field in c's sorted payload indexes, or where it would go (*found false). */
static size_t idx_find(const struct coll *c, const char *field, bool *found)
{
    size_t lo = 0, hi = c->n_idx;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int r = strcmp(c->idx[mid].field, field);
        if (r == 0) {
            *found = true;
            return mid;
        }
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

/* The collection and field of a payload index command, validated; *c is NULL (with
 * VD_ENOTFOUND) when the collection does not exist. */
static int get_pindex_target(struct vd_meta *m, const cJSON *cmd, struct coll **c,
                             const char **field, struct vd_err *e)
{
    const char *name;
    int rc;
    *c = NULL;
    if ((rc = get_str(cmd, "collection", true, &name, e)) ||
        (rc = get_str(cmd, "field", true, field, e)))
        return rc;
    if (vd_db_check_name(name, e))
        return e->code = VD_EINVAL;
    /* the database refuses these keys, so the state machine must too or reconciliation would
     * retry a change it can never make */
    if (vd_db_pindex_check_field(*field, e))
        return e->code = VD_EINVAL;
    bool found;
    size_t at = coll_find(m, name, &found);
    if (!found)
        return vd_errf(e, VD_ENOTFOUND, "collection '%s' not found", name);
    *c = &m->colls[at];
    return 0;
}

static int op_set_payload_index(struct vd_meta *m, const cJSON *cmd, struct vd_err *e)
{
    struct coll *c;
    const char *field, *tn;
    int rc;
    if ((rc = get_str(cmd, "type", true, &tn, e)))
        return rc;
    enum vd_db_pindex_type type;
    if (vd_db_pindex_type_parse(tn, &type))
        return vd_errf(e, VD_EINVAL,
                       "'type' must be one of \"keyword\", \"integer\", \"float\", \"bool\"");
    if ((rc = get_pindex_target(m, cmd, &c, &field, e)))
        return rc;
    bool found;
    size_t at = idx_find(c, field, &found);
    if (found) {
        c->idx[at].type = (uint8_t)type; /* retype, or the same type again: nothing to do */
        return 0;
    }
    if (c->n_idx >= VD_META_MAX_PINDEXES)
        return vd_errf(e, VD_ERANGE,
                       "collection '%s' already has %d payload indexes, at most %d allowed",
                       c->s.name, VD_META_MAX_PINDEXES, VD_META_MAX_PINDEXES);
    struct vd_meta_pindex *v = realloc(c->idx, (c->n_idx + 1) * sizeof *v);
    if (!v)
        return vd_errf(e, VD_ENOMEM, "out of memory");
    c->idx = v;
    memmove(&v[at + 1], &v[at], (c->n_idx - at) * sizeof *v);
    memset(&v[at], 0, sizeof v[at]);
    memcpy(v[at].field, field, strlen(field) + 1); /* length checked against the field's size */
    v[at].type = (uint8_t)type;
    c->n_idx++;
    return 0;
}

static int op_drop_payload_index(struct vd_meta *m, const cJSON *cmd, struct vd_err *e)
{
    struct coll *c;
    const char *field;
    int rc = get_pindex_target(m, cmd, &c, &field, e);
    if (rc)
        return rc;
    bool found;
    size_t at = idx_find(c, field, &found);
    if (!found)
        return vd_errf(e, VD_ENOTFOUND, "collection '%s' has no payload index on '%s'", c->s.name,
                       field);
    memmove(&c->idx[at], &c->idx[at + 1], (c->n_idx - at - 1) * sizeof *c->idx);
    if (--c->n_idx == 0) {
        free(c->idx);
        c->idx = NULL;
    }
    return 0;
}

static int get_member_id(const cJSON *cmd, uint64_t *id, struct vd_err *e)
{
    int rc = get_u64(cmd, "id", id, e);
    if (rc)
        return rc;
    if (*id == 0)
        return vd_errf(e, VD_EINVAL, "member id must not be 0");
    return 0;
}

static int op_add_member(struct vd_meta *m, const cJSON *cmd, struct vd_err *e)
{
    uint64_t id;
    const char *addr, *http;
    int rc;
    if ((rc = get_member_id(cmd, &id, e)) || (rc = get_str(cmd, "addr", true, &addr, e)) ||
        (rc = get_str(cmd, "http_addr", false, &http, e)))
        return rc;
    if (!http)
        http = "";
    if ((rc = check_addr("addr", addr, false, e)) || (rc = check_addr("http_addr", http, true, e)))
        return rc;
    bool found;
    size_t at = member_find(m, id, &found);
    if (found)
        return vd_errf(e, VD_EEXIST, "member %llu already exists", (unsigned long long)id);
    /* the first member (bootstrap) owns everything already: nothing moves */
    if (m->n_members && (rc = refuse_while_points(m, "add a node", e)))
        return rc;
    if (grow((void **)&m->members, &m->cap_members, m->n_members, sizeof *m->members))
        return vd_errf(e, VD_ENOMEM, "out of memory");
    struct vd_meta_member mb;
    memset(&mb, 0, sizeof mb);
    mb.id = id;
    memcpy(mb.addr, addr, strlen(addr) + 1);
    memcpy(mb.http_addr, http, strlen(http) + 1);
    mb.state = VD_MEMBER_JOINING;
    derive_tokens(id, mb.tokens);
    memmove(&m->members[at + 1], &m->members[at], (m->n_members - at) * sizeof *m->members);
    m->members[at] = mb;
    m->n_members++;
    /* A joining member owns no tokens, so the ring is unchanged: no rebuild, nothing to undo. */
    return 0;
}

static int op_set_member(struct vd_meta *m, uint64_t index, const cJSON *cmd, struct vd_err *e)
{
    uint64_t id;
    const char *st, *addr, *http;
    int rc;
    if ((rc = get_member_id(cmd, &id, e)) || (rc = get_str(cmd, "state", false, &st, e)) ||
        (rc = get_str(cmd, "addr", false, &addr, e)) ||
        (rc = get_str(cmd, "http_addr", false, &http, e)))
        return rc;
    uint8_t state = 0;
    if (st && state_parse(st, &state))
        return vd_errf(e, VD_EINVAL, "'state' must be one of \"joining\", \"up\", \"leaving\"");
    if ((addr && (rc = check_addr("addr", addr, false, e))) ||
        (http && (rc = check_addr("http_addr", http, true, e))))
        return rc;
    bool found;
    size_t at = member_find(m, id, &found);
    if (!found)
        return vd_errf(e, VD_ENOTFOUND, "member %llu not found", (unsigned long long)id);
    struct vd_meta_member *mb = &m->members[at], old = *mb;
    /* a joining member owns nothing yet: it may go */
    if (state == VD_MEMBER_LEAVING && old.state == VD_MEMBER_UP &&
        (rc = refuse_while_points(m, "remove a node", e)))
        return rc;
    if (state)
        mb->state = state;
    if (addr)
        memcpy(mb->addr, addr, strlen(addr) + 1);
    if (http)
        memcpy(mb->http_addr, http, strlen(http) + 1);
    if ((old.state == VD_MEMBER_JOINING) != (mb->state == VD_MEMBER_JOINING)) {
        if (ring_rebuild(m)) {
            *mb = old;
            return vd_errf(e, VD_ENOMEM, "out of memory");
        }
        m->ring_version = index;
    }
    return 0;
}

static int op_remove_member(struct vd_meta *m, uint64_t index, const cJSON *cmd,
                            struct vd_err *e)
{
    uint64_t id;
    int rc = get_member_id(cmd, &id, e);
    if (rc)
        return rc;
    bool found;
    size_t at = member_find(m, id, &found);
    if (!found)
        return vd_errf(e, VD_ENOTFOUND, "member %llu not found", (unsigned long long)id);
    struct vd_meta_member old = m->members[at];
    memmove(&m->members[at], &m->members[at + 1], (m->n_members - at - 1) * sizeof *m->members);
    m->n_members--;
    if (old.state != VD_MEMBER_JOINING && ring_rebuild(m)) {
        /* Put it back: the array kept its capacity, so this cannot fail. */
        memmove(&m->members[at + 1], &m->members[at], (m->n_members - at) * sizeof *m->members);
        m->members[at] = old;
        m->n_members++;
        return vd_errf(e, VD_ENOMEM, "out of memory");
    }
    if (old.state != VD_MEMBER_JOINING)
        m->ring_version = index;
    return 0;
}

/*
 * Contract in cluster_int.h. Besides the outcomes listed there, VD_ENOMEM (state unchanged) when
 * an allocation fails: that outcome is local to this node, so the caller must not treat it as the
 * command's decided result (retry or stop).
 */
int vd_meta_apply(struct vd_meta *m, uint64_t index, const uint8_t *cmd, size_t len,
                  struct vd_err *res)
{
    struct vd_err e;
    vd_err_clear(&e);
    cJSON *root = NULL;
    int rc = vd_json_parse((const char *)cmd, len, CMD_MAX_DEPTH, &root, &e);
    if (rc) {
        if (rc != VD_ENOMEM)
            e.code = rc = VD_EINVAL;
        goto out;
    }
    const char *op;
    if (!cJSON_IsObject(root)) {
        rc = vd_errf(&e, VD_EINVAL, "a command must be a JSON object");
        goto out_free_root;
    }
    if ((rc = get_str(root, "op", true, &op, &e)))
        goto out_free_root;
    if (!strcmp(op, "create_collection"))
        rc = op_create_collection(m, index, root, &e);
    else if (!strcmp(op, "update_collection"))
        rc = op_update_collection(m, root, &e);
    else if (!strcmp(op, "delete_collection"))
        rc = op_delete_collection(m, root, &e);
    else if (!strcmp(op, "collection_has_points"))
        rc = op_collection_has_points(m, root, &e);
    else if (!strcmp(op, "set_payload_index"))
        rc = op_set_payload_index(m, root, &e);
    else if (!strcmp(op, "drop_payload_index"))
        rc = op_drop_payload_index(m, root, &e);
    else if (!strcmp(op, "add_member"))
        rc = op_add_member(m, root, &e);
    else if (!strcmp(op, "set_member"))
        rc = op_set_member(m, index, root, &e);
    else if (!strcmp(op, "remove_member"))
        rc = op_remove_member(m, index, root, &e);
    else
        rc = vd_errf(&e, VD_EINVAL, "unknown operation");
out_free_root:
    cJSON_Delete(root);
out:
    if (rc == VD_EINVAL)
        vd_err_prefix(&e, "malformed metadata command");
    e.code = rc;
    if (rc == 0)
        vd_err_clear(&e);
    if (res)
        *res = e;
    m->applied = index;
    return rc;
}

void vd_meta_skip(struct vd_meta *m, uint64_t index)
{
    m->applied = index;
}

uint64_t vd_meta_applied(const struct vd_meta *m)
{
    return m->applied;
}

/* ---- snapshot and restore ---------------------------------------------------------------------
 */

/* Deterministic text: fixed key order, collections by name, members by id, so two nodes with the
 * same state produce the same bytes. */
int vd_meta_snapshot(const struct vd_meta *m, struct vd_buf *out)
{
    vd_buf_printf(out, "{\"version\":%d,\"applied\":", SNAPSHOT_VERSION);
    put_u64(out, m->applied);
    vd_buf_puts(out, ",\"ring_version\":");
    put_u64(out, m->ring_version);
    vd_buf_puts(out, ",\"collections\":[");
    for (size_t i = 0; i < m->n_colls; i++) {
        if (i)
            vd_buf_puts(out, ",");
        put_coll(out, &m->colls[i]);
    }
    vd_buf_puts(out, "],\"members\":[");
    for (size_t i = 0; i < m->n_members; i++) {
        if (i)
            vd_buf_puts(out, ",");
        put_member(out, &m->members[i]);
    }
    vd_buf_puts(out, "]}");
    return vd_buf_ok(out) ? 0 : VD_ENOMEM;
}

static int coll_cmp(const void *a, const void *b)
{
    return strcmp(((const struct coll *)a)->s.name, ((const struct coll *)b)->s.name);
}

static int pindex_cmp(const void *a, const void *b)
{
    return strcmp(((const struct vd_meta_pindex *)a)->field,
                  ((const struct vd_meta_pindex *)b)->field);
}

/* The optional payload_indexes of a collection in a snapshot, into c (allocated; the caller
 * releases it with the rest of the state on error). */
static int restore_pindexes(const cJSON *o, struct coll *c, struct vd_err *e)
{
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(o, "payload_indexes");
    if (!arr)
        return 0;
    if (!cJSON_IsArray(arr))
        return vd_errf(e, VD_EINVAL, "'payload_indexes' must be an array");
    size_t n = (size_t)cJSON_GetArraySize(arr);
    if (n > VD_META_MAX_PINDEXES)
        return vd_errf(e, VD_EINVAL, "%zu payload indexes, at most %d allowed", n,
                       VD_META_MAX_PINDEXES);
    if (n == 0)
        return 0;
    if (!(c->idx = calloc(n, sizeof *c->idx)))
        return vd_errf(e, VD_ENOMEM, "out of memory");
    for (const cJSON *it = arr->child; it; it = it->next) {
        struct vd_meta_pindex *p = &c->idx[c->n_idx];
        const char *field, *tn;
        enum vd_db_pindex_type type;
        int rc;
        if (!cJSON_IsObject(it))
            return vd_errf(e, VD_EINVAL, "payload_indexes[%zu] must be an object", c->n_idx);
        if ((rc = get_str(it, "field", true, &field, e)) ||
            (rc = get_str(it, "type", true, &tn, e))) {
            vd_err_prefix(e, "payload_indexes[%zu]", c->n_idx);
            return rc;
        }
        if (vd_db_pindex_check_field(field, e)) {
            vd_err_prefix(e, "payload_indexes[%zu]", c->n_idx);
            return e->code = VD_EINVAL;
        }
        if (vd_db_pindex_type_parse(tn, &type))
            return vd_errf(e, VD_EINVAL, "payload_indexes[%zu]: unknown type", c->n_idx);
        memcpy(p->field, field, strlen(field) + 1);
        p->type = (uint8_t)type;
        c->n_idx++;
    }
    if (c->n_idx > 1)
        qsort(c->idx, c->n_idx, sizeof *c->idx, pindex_cmp);
    for (size_t i = 1; i < c->n_idx; i++)
        if (!strcmp(c->idx[i - 1].field, c->idx[i].field))
            return vd_errf(e, VD_EINVAL, "payload index '%s' appears twice", c->idx[i].field);
    return 0;
}

static int member_cmp(const void *a, const void *b)
{
    uint64_t x = ((const struct vd_meta_member *)a)->id, y = ((const struct vd_meta_member *)b)->id;
    return x < y ? -1 : x > y;
}

static int inc_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int restore_member(const cJSON *o, struct vd_meta_member *mb, struct vd_err *e)
{
    memset(mb, 0, sizeof *mb);
    if (!cJSON_IsObject(o))
        return vd_errf(e, VD_EINVAL, "a member must be an object");
    const char *addr, *http, *st;
    int rc;
    if ((rc = get_member_id(o, &mb->id, e)) || (rc = get_str(o, "addr", true, &addr, e)) ||
        (rc = get_str(o, "http_addr", true, &http, e)) ||
        (rc = get_str(o, "state", true, &st, e)) || (rc = check_addr("addr", addr, false, e)) ||
        (rc = check_addr("http_addr", http, true, e)))
        return rc;
    if (state_parse(st, &mb->state))
        return vd_errf(e, VD_EINVAL, "'state' must be one of \"joining\", \"up\", \"leaving\"");
    memcpy(mb->addr, addr, strlen(addr) + 1);
    memcpy(mb->http_addr, http, strlen(http) + 1);
    /* Tokens are taken as stored rather than derived again: they were fixed when the member was
     * added, and a snapshot must reproduce the ring that its log produced. */
    const cJSON *toks = cJSON_GetObjectItemCaseSensitive(o, "tokens");
    if (!cJSON_IsArray(toks) || cJSON_GetArraySize(toks) != VD_META_TOKENS)
        return vd_errf(e, VD_EINVAL, "'tokens' must be an array of %d integers", VD_META_TOKENS);
    int t = 0;
    for (const cJSON *it = toks->child; it; it = it->next, t++)
        if (!cJSON_IsNumber(it) || (it->valuestring && it->valuestring[0] == '-') ||
            vd_json_get_u64(it, &mb->tokens[t]))
            return vd_errf(e, VD_EINVAL, "'tokens[%d]' must be an unsigned 64-bit integer", t);
    return 0;
}

/*
 * Reads a whole snapshot into the empty state s (allocating its arrays); validates everything a
 * command would, plus uniqueness of names, ids and incarnations. Errors: VD_EINVAL (message names
 * what is wrong; s holds partial contents the caller releases), VD_ENOMEM.
 */
static int restore_into(struct vd_meta *s, const cJSON *root, struct vd_err *e)
{
    if (!cJSON_IsObject(root))
        return vd_errf(e, VD_EINVAL, "a snapshot must be a JSON object");
    uint64_t version;
    int rc;
    if ((rc = get_u64(root, "version", &version, e)))
        return rc;
    if (version != SNAPSHOT_VERSION)
        return vd_errf(e, VD_EINVAL, "unknown snapshot version %llu", (unsigned long long)version);
    if ((rc = get_u64(root, "applied", &s->applied, e)))
        return rc;
    /* Snapshots written before rings were versioned lack it: 0, a version no ring change ever
     * gets, until the next change of members gives every node the same one again. */
    if (cJSON_GetObjectItemCaseSensitive(root, "ring_version") &&
        (rc = get_u64(root, "ring_version", &s->ring_version, e)))
        return rc;
    if (s->ring_version > s->applied)
        return vd_errf(e, VD_EINVAL, "'ring_version' is above 'applied'");
    const cJSON *colls = cJSON_GetObjectItemCaseSensitive(root, "collections");
    const cJSON *members = cJSON_GetObjectItemCaseSensitive(root, "members");
    if (!cJSON_IsArray(colls))
        return vd_errf(e, VD_EINVAL, "'collections' must be an array");
    if (!cJSON_IsArray(members))
        return vd_errf(e, VD_EINVAL, "'members' must be an array");

    size_t nc = (size_t)cJSON_GetArraySize(colls), nm = (size_t)cJSON_GetArraySize(members);
    if (nc) {
        s->colls = calloc(nc, sizeof *s->colls);
        if (!s->colls)
            return vd_errf(e, VD_ENOMEM, "out of memory");
        s->cap_colls = nc;
    }
    if (nm) {
        s->members = calloc(nm, sizeof *s->members);
        if (!s->members)
            return vd_errf(e, VD_ENOMEM, "out of memory");
        s->cap_members = nm;
    }
    for (const cJSON *it = colls->child; it; it = it->next) {
        /* counted before its indexes are read, so that a failure releases them */
        struct coll *c = &s->colls[s->n_colls++];
        if ((rc = parse_schema(it, &c->s, e)) || (rc = restore_pindexes(it, c, e))) {
            vd_err_prefix(e, "collections[%zu]", s->n_colls - 1);
            return rc;
        }
        c->has_points = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "has_points"));
        /* Only a create assigns an incarnation; a stored collection always has one. */
        if (c->s.incarnation == 0)
            return vd_errf(e, VD_EINVAL, "collections[%zu]: incarnation 0", s->n_colls - 1);
    }
    for (const cJSON *it = members->child; it; it = it->next) {
        if ((rc = restore_member(it, &s->members[s->n_members], e))) {
            vd_err_prefix(e, "members[%zu]", s->n_members);
            return rc;
        }
        s->n_members++;
    }

    if (s->n_colls > 1)
        qsort(s->colls, s->n_colls, sizeof *s->colls, coll_cmp);
    for (size_t i = 1; i < s->n_colls; i++)
        if (!strcmp(s->colls[i - 1].s.name, s->colls[i].s.name))
            return vd_errf(e, VD_EINVAL, "collection '%s' appears twice", s->colls[i].s.name);
    if (s->n_colls > 1) {
        uint64_t *incs = malloc(s->n_colls * sizeof *incs);
        if (!incs)
            return vd_errf(e, VD_ENOMEM, "out of memory");
        for (size_t i = 0; i < s->n_colls; i++)
            incs[i] = s->colls[i].s.incarnation;
        qsort(incs, s->n_colls, sizeof *incs, inc_cmp);
        uint64_t dup = 0;
        for (size_t i = 1; i < s->n_colls && !dup; i++)
            if (incs[i - 1] == incs[i])
                dup = incs[i];
        free(incs);
        if (dup)
            return vd_errf(e, VD_EINVAL, "incarnation %llu appears twice", (unsigned long long)dup);
    }
    if (s->n_members > 1) /* qsort's base must not be NULL, even for no elements */
        qsort(s->members, s->n_members, sizeof *s->members, member_cmp);
    for (size_t i = 1; i < s->n_members; i++)
        if (s->members[i - 1].id == s->members[i].id)
            return vd_errf(e, VD_EINVAL, "member %llu appears twice",
                           (unsigned long long)s->members[i].id);
    if (ring_rebuild(s))
        return vd_errf(e, VD_ENOMEM, "out of memory");
    return 0;
}

/* Contract in cluster_int.h; also VD_ENOMEM (m unchanged). */
int vd_meta_restore(struct vd_meta *m, const uint8_t *data, size_t len, struct vd_err *err)
{
    struct vd_err e;
    vd_err_clear(&e);
    struct vd_meta s;
    memset(&s, 0, sizeof s);
    cJSON *root = NULL;
    int rc = vd_json_parse((const char *)data, len, CMD_MAX_DEPTH, &root, &e);
    if (rc == 0) {
        rc = restore_into(&s, root, &e);
        cJSON_Delete(root);
    }
    if (rc) {
        state_release(&s);
        if (rc != VD_ENOMEM)
            rc = VD_ECORRUPT;
        e.code = rc;
        vd_err_prefix(&e, "metadata snapshot");
        if (err)
            *err = e;
        return rc;
    }
    state_release(m);
    *m = s;
    vd_err_clear(err);
    return 0;
}

/* ---- lookups ----------------------------------------------------------------------------------
 */

const struct vd_coll_schema *vd_meta_collection(const struct vd_meta *m, const char *name)
{
    bool found;
    size_t at = coll_find(m, name, &found);
    return found ? &m->colls[at].s : NULL;
}

size_t vd_meta_payload_indexes(const struct vd_meta *m, const char *name,
                               const struct vd_meta_pindex **out)
{
    bool found;
    size_t at = coll_find(m, name, &found);
    *out = found ? m->colls[at].idx : NULL;
    return found ? m->colls[at].n_idx : 0;
}

size_t vd_meta_n_collections(const struct vd_meta *m)
{
    return m->n_colls;
}

const struct vd_coll_schema *vd_meta_collection_at(const struct vd_meta *m, size_t i)
{
    return i < m->n_colls ? &m->colls[i].s : NULL;
}

const struct vd_meta_member *vd_meta_member(const struct vd_meta *m, uint64_t id)
{
    bool found;
    size_t at = member_find(m, id, &found);
    return found ? &m->members[at] : NULL;
}

size_t vd_meta_n_members(const struct vd_meta *m)
{
    return m->n_members;
}

const struct vd_meta_member *vd_meta_member_at(const struct vd_meta *m, size_t i)
{
    return i < m->n_members ? &m->members[i] : NULL;
}

/*
 * Owners of hash, by the coordinator's placement walk (vd_coord_ring_replicas), so the cluster
 * and the coordinator cannot disagree on a replica: the member of the first token at or after
 * hash (wrapping past the top), then the next distinct members clockwise. A token owns the arc
 * ending at it, (previous token, token], which is what vd_ring_contains tests, so a new member
 * takes keys only from the arcs its tokens split. out holds at least rf ids.
 */
void vd_meta_coord_ring(const struct vd_meta *m, struct vd_coord_ring *out)
{
    *out = (struct vd_coord_ring){
        .version = m->ring_version, .tokens = m->ring, .n_tokens = m->n_ring};
}

size_t vd_meta_replicas(const struct vd_meta *m, uint64_t hash, unsigned rf, uint64_t *out)
{
    struct vd_coord_ring ring;
    vd_meta_coord_ring(m, &ring);
    return vd_coord_ring_replicas(&ring, hash, rf, out);
}

/* Contract in cluster_int.h. Pending replicas stay empty until ranges move between members. */
void vd_meta_place(const struct vd_meta *m, uint64_t hash, unsigned rf, struct vd_placement *out)
{
    out->ring_version = m->ring_version;
    out->n_pending = 0;
    out->n_natural =
        vd_meta_replicas(m, hash, rf > VD_PLACE_MAX_RF ? VD_PLACE_MAX_RF : rf, out->natural);
}

int vd_meta_place_point(const struct vd_meta *m, const char *collection, const uint8_t *key,
                        size_t key_len, struct vd_placement *out)
{
    const struct vd_coll_schema *s = vd_meta_collection(m, collection);
    if (!s)
        return VD_ENOTFOUND;
    vd_meta_place(m, vd_place_hash(collection, key, key_len), s->replication_factor, out);
    return 0;
}

bool vd_meta_is_replica(const struct vd_meta *m, const char *collection, const struct vd_pid *id,
                        uint64_t node)
{
    uint8_t key[VD_PID_KEY_MAX];
    size_t kl = vd_pid_encode(id, key);
    struct vd_placement pl;
    if (vd_meta_place_point(m, collection, key, kl, &pl))
        return false;
    for (size_t i = 0; i < pl.n_natural; i++)
        if (pl.natural[i] == node)
            return true;
    for (size_t i = 0; i < pl.n_pending; i++)
        if (pl.pending[i] == node)
            return true;
    return false;
}

bool vd_meta_incarnation_ahead(const struct vd_meta *m, uint64_t incarnation)
{
    return (incarnation & TOP_BIT) && (incarnation & ~TOP_BIT) > m->applied;
}

uint64_t vd_meta_ring_version(const struct vd_meta *m)
{
    return m->ring_version;
}

size_t vd_meta_ring_size(const struct vd_meta *m)
{
    return m->n_ring;
}

size_t vd_meta_arcs(const struct vd_meta *m, uint64_t (*out)[2])
{
    struct vd_coord_ring ring;
    vd_meta_coord_ring(m, &ring);
    return vd_coord_ring_arcs(&ring, out);
}

/* ---- published views ------------------------------------------------------------------------
 */

struct vd_meta_view {
    atomic_size_t refs;
    struct vd_meta st; /* a deep copy, never changed after vd_meta_view_new */
};

/* Copies src's state into the empty dst. VD_ENOMEM leaves partial contents to state_release. */
static int state_copy(struct vd_meta *dst, const struct vd_meta *src)
{
    dst->applied = src->applied;
    dst->ring_version = src->ring_version;
    if (src->n_colls) {
        if (!(dst->colls = calloc(src->n_colls, sizeof *dst->colls)))
            return VD_ENOMEM;
        dst->cap_colls = src->n_colls;
        for (size_t i = 0; i < src->n_colls; i++) {
            const struct coll *c = &src->colls[i];
            dst->colls[i].s = c->s;
            dst->colls[i].has_points = c->has_points;
            dst->n_colls++;
            if (c->n_idx) {
                if (!(dst->colls[i].idx = malloc(c->n_idx * sizeof *c->idx)))
                    return VD_ENOMEM;
                memcpy(dst->colls[i].idx, c->idx, c->n_idx * sizeof *c->idx);
                dst->colls[i].n_idx = c->n_idx;
            }
        }
    }
    if (src->n_members) {
        if (!(dst->members = malloc(src->n_members * sizeof *dst->members)))
            return VD_ENOMEM;
        memcpy(dst->members, src->members, src->n_members * sizeof *dst->members);
        dst->n_members = dst->cap_members = src->n_members;
    }
    if (src->n_ring) {
        if (!(dst->ring = malloc(src->n_ring * sizeof *dst->ring)))
            return VD_ENOMEM;
        memcpy(dst->ring, src->ring, src->n_ring * sizeof *dst->ring);
        dst->n_ring = src->n_ring;
    }
    return 0;
}

int vd_meta_view_new(const struct vd_meta *m, struct vd_meta_view **out)
{
    struct vd_meta_view *v = calloc(1, sizeof *v);
    if (!v)
        return VD_ENOMEM;
    if (state_copy(&v->st, m)) {
        state_release(&v->st);
        free(v);
        return VD_ENOMEM;
    }
    atomic_init(&v->refs, 1);
    *out = v;
    return 0;
}

const struct vd_meta *vd_meta_view_state(const struct vd_meta_view *v)
{
    return &v->st;
}

struct vd_meta_view *vd_meta_view_ref(struct vd_meta_view *v)
{
    atomic_fetch_add_explicit(&v->refs, 1, memory_order_relaxed);
    return v;
}

void vd_meta_view_release(struct vd_meta_view *v)
{
    if (!v)
        return;
    /* acq_rel: every reader's use of the view happens before the last one frees it */
    if (atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) != 1)
        return;
    state_release(&v->st);
    free(v);
}

void vd_meta_pub_init(struct vd_meta_pub *p)
{
    atomic_init(&p->cur, NULL);
    atomic_init(&p->epoch, 0);
    atomic_init(&p->pins[0], 0);
    atomic_init(&p->pins[1], 0);
}

/*
 * A reader pins the epoch it saw for the few instructions between loading the pointer and taking
 * its reference, so the publisher knows when no reader can still be about to reference the view
 * it replaced. The publisher flips the epoch after swapping the pointer and waits only for the
 * old epoch's pins: a reader that pins after the flip loads the new pointer, so a steady stream
 * of readers cannot keep the publisher waiting. Every operation on cur, epoch and pins is
 * sequentially consistent, which the argument needs: a reader that loaded the old pointer pinned
 * before the publisher read the pins.
 */
struct vd_meta_view *vd_meta_pub_acquire(struct vd_meta_pub *p)
{
    unsigned e = atomic_load(&p->epoch) & 1;
    atomic_fetch_add(&p->pins[e], 1);
    struct vd_meta_view *v = atomic_load(&p->cur);
    if (v)
        vd_meta_view_ref(v);
    atomic_fetch_sub(&p->pins[e], 1);
    return v;
}

void vd_meta_pub_set(struct vd_meta_pub *p, struct vd_meta_view *v)
{
    struct vd_meta_view *old = atomic_exchange(&p->cur, v);
    unsigned e = atomic_fetch_add(&p->epoch, 1) & 1;
    while (atomic_load(&p->pins[e]))
        ; /* a pinned reader is a handful of instructions from unpinning */
    vd_meta_view_release(old);
}

int vd_meta_publish(struct vd_meta_pub *p, const struct vd_meta *m)
{
    struct vd_meta_view *v;
    int rc = vd_meta_view_new(m, &v);
    if (rc)
        return rc;
    vd_meta_pub_set(p, v);
    return 0;
}

void vd_meta_pub_release(struct vd_meta_pub *p)
{
    vd_meta_pub_set(p, NULL);
}

/* ---- reconciliation ---------------------------------------------------------------------------
 */

static int local_cmp(const void *a, const void *b)
{
    return strcmp((*(const struct vd_meta_local *const *)a)->name,
                  (*(const struct vd_meta_local *const *)b)->name);
}

static bool quant_differs(const struct vd_coll_schema *a, const struct vd_coll_schema *b)
{
    return a->quant_enabled != b->quant_enabled ||
           (a->quant_enabled && (a->quant_quantile != b->quant_quantile ||
                                 a->quant_always_ram != b->quant_always_ram));
}

/* Contract in cluster_int.h. Deletes and updates come in the order of local[], creates in name
 * order. */
int vd_meta_plan(const struct vd_meta *m, const struct vd_meta_local *local, size_t n_local,
                 struct vd_meta_action **out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    /* Local collections that stay: their names are taken and must not be created. */
    const struct vd_meta_local **kept = n_local ? malloc(n_local * sizeof *kept) : NULL;
    struct vd_meta_action *acts =
        (n_local + m->n_colls) ? calloc(n_local + m->n_colls, sizeof *acts) : NULL;
    if ((n_local && !kept) || ((n_local + m->n_colls) && !acts)) {
        free(kept);
        free(acts);
        return VD_ENOMEM;
    }
    size_t n = 0, n_kept = 0;
    for (size_t i = 0; i < n_local; i++) {
        const struct vd_meta_local *l = &local[i];
        const struct vd_coll_schema *s = vd_meta_collection(m, l->name);
        /* Created by a command this node has not applied yet: its state machine lags the node's
         * own data (e.g. a snapshot older than the database), and deleting it would destroy a
         * collection the cluster has; it is settled once the log catches up. */
        bool ahead = vd_meta_incarnation_ahead(m, l->incarnation);
        if ((s && s->incarnation == l->incarnation) || ahead) {
            kept[n_kept++] = l;
            if (s && l->schema && quant_differs(s, l->schema)) {
                struct vd_meta_action *a = &acts[n++];
                a->update = true;
                memcpy(a->name, s->name, sizeof a->name);
                a->schema = *s;
                a->incarnation = s->incarnation;
            }
            continue;
        }
        struct vd_meta_action *a = &acts[n++];
        a->create = false;
        size_t len = strlen(l->name);
        if (len >= sizeof a->name)
            len = sizeof a->name - 1;
        memcpy(a->name, l->name, len);
        a->name[len] = 0;
        a->incarnation = l->incarnation;
    }
    if (n_kept > 1)
        qsort(kept, n_kept, sizeof *kept, local_cmp);
    for (size_t i = 0; i < m->n_colls; i++) {
        const struct vd_coll_schema *s = &m->colls[i].s;
        struct vd_meta_local key = {.name = s->name};
        const struct vd_meta_local *kp = &key;
        if (n_kept && bsearch(&kp, kept, n_kept, sizeof *kept, local_cmp))
            continue;
        struct vd_meta_action *a = &acts[n++];
        a->create = true;
        memcpy(a->name, s->name, sizeof a->name);
        a->schema = *s;
        a->incarnation = s->incarnation;
    }
    free(kept);
    if (n == 0) {
        free(acts);
        acts = NULL;
    }
    *out = acts;
    *n_out = n;
    return 0;
}
