/* Helpers shared by the API handlers. */
#ifndef VD_API_INT_H
#define VD_API_INT_H

#include <pthread.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "vectord/api.h"
#include "vectord/json.h"

extern struct vd_api_opts vd__api;

#define VD_API_MAX_LIMIT 10000

/* Parses the request body as a JSON object; on failure replies 400 and returns NULL. An empty
 * body is an empty object when allow_empty. */
cJSON *vd__api_body(struct vd_http_req *r, bool allow_empty);
/* Opens the collection named by the {name} path parameter; replies 404/422/503 and returns
 * NULL, or returns NULL without a reply when the handler is to run again after a catch-up (see
 * vd__api_coll_find); callers return at once on NULL either way. For non-stream routes only. */
struct vd_coll *vd__api_coll(struct vd_http_req *r);
/* Both of the above: the collection and its request's JSON body (*body, freed by the caller with
 * cJSON_Delete), or NULL once a reply was sent. */
struct vd_coll *vd__api_coll_body(struct vd_http_req *r, bool allow_empty, cJSON **body);
/* Returned by vd__api_coll_find when the handler must return at once without replying: it runs
 * again from the start, on a pool thread, once the wait is over. */
#define VD__API_PENDING 1
/* Looks a collection up by (valid) name for request r (a non-stream route) without blocking. On
 * a miss in a cluster, starts a catch-up with the cluster (vd__api_cluster_catch_up_start) and
 * returns VD__API_PENDING; the handler then runs again (vd_http_redispatch) and this call looks
 * again, giving VD_ENOTFOUND, or VD_EUNAVAIL when the cluster could not confirm the miss within
 * VD__API_CATCH_UP_MS. Returns 0 (*out referenced: vd_db_coll_put it); errors name the
 * collection in err. */
int vd__api_coll_find(struct vd_http_req *r, const char *name, struct vd_coll **out,
                      struct vd_err *err);
/* vd__api_coll_find for the streamed import's `begin`, which cannot run twice: on a miss in a
 * cluster it blocks the calling pool thread for the catch-up (vd__api_cluster_catch_up), up to
 * VD__API_CATCH_UP_MS. Same results. */
int vd__api_coll_lookup(const char *name, struct vd_coll **out, struct vd_err *err);

/* How long a lookup miss in a cluster waits for this node to catch up (ReadIndex) before it
 * answers 503 instead of 404. It covers a leader election with the default timeouts (a new
 * leader within 3 s) and stays under the 5 s that Qdrant's Python client waits by default, so
 * the client reads a 503 rather than its own timeout; the cluster's 10 s request deadline would
 * not. */
#define VD__API_CATCH_UP_MS 3000u
/* Starts a catch-up with the cluster for request r's lookup of collection `name`; its completion
 * runs r's handler again (vd_http_redispatch) with the catch-up's status as the note (0 or a
 * VD_E* code, see vd__api_cluster_unconfirmed). Returns 0 (r's handler must return at once
 * without replying), or VD_EUNAVAIL with err naming the collection (nothing started). */
int vd__api_cluster_catch_up_start(struct vd_http_req *r, const char *name, struct vd_err *err);
/* Blocks the calling thread until the catch-up completes, up to VD__API_CATCH_UP_MS. 0, or
 * VD_EUNAVAIL with err naming the collection. */
int vd__api_cluster_catch_up(const char *name, struct vd_err *err);
/* The 503 for a miss the cluster could not confirm: catch-up `status` (a VD_E* code) said in
 * words, naming the collection. Returns VD_EUNAVAIL. */
int vd__api_cluster_unconfirmed(const char *name, int status, struct vd_err *err);
/* Payload index declarations through vd__api.cluster (which must be set), so every node gets
 * them: done runs once the change is applied on this node, with a cluster timeout turned into
 * VD_EUNAVAIL (503). Returns 0 (done will run) or an error (done will not run). */
int vd__api_cluster_set_pindex(const char *coll, const char *field, enum vd_db_pindex_type type,
                               vd_db_done_fn done, void *ctx, struct vd_err *err);
int vd__api_cluster_drop_pindex(const char *coll, const char *field, vd_db_done_fn done, void *ctx,
                                struct vd_err *err);
/* The shared check of every data write (upsert, delete, payload edits, import) before it starts:
 * true, with a 503 already sent, while this node's clock is skewed from the cluster's
 * (vd_cluster_clock_check); false (nothing sent) otherwise and without a cluster. */
bool vd__api_write_refused(struct vd_http_req *r);
/* The options of data request r on collection c from its query string (vd_api_data_req_parse,
 * with the collection's replication factor in a cluster and 1 without one). 0, or VD_EINVAL
 * with err naming the parameter (nothing sent: the caller replies). */
int vd__api_data_req(struct vd_http_req *r, struct vd_coll *c, struct vd_data_req *out,
                     struct vd_err *err);
/* The done callback of a write made with options o: vd__api_write_done, or, for wait=false in
 * a cluster, one that answers Qdrant's status "acknowledged". */
vd_db_done_fn vd__api_write_done_for(const struct vd_data_req *o);
/* Initialises a mutex and a condition variable whose timed waits take CLOCK_MONOTONIC
 * deadlines (vd_mono_deadline), for a thread that waits for a cluster's completion. */
void vd__api_wait_init(pthread_mutex_t *mu, pthread_cond_t *cv);
/* Reply helpers. */
void vd__api_reply_buf(struct vd_http_req *r, struct vd_buf *b); /* {"result": <b>} */
void vd__api_reply_true(struct vd_http_req *r);
/* Done callback for writes: replies {"operation_id": N, "status": "completed"} or the error. */
void vd__api_write_done(int status, const struct vd_err *err, uint64_t op_id, void *ctx);
/* Done callback for collection changes: replies true or the error. */
void vd__api_meta_done(int status, const struct vd_err *err, uint64_t op_id, void *ctx);

/* A request field vectord does not implement and that would change results if ignored: present
 * and neither null nor an empty object/array -> VD_EINVAL "'<path>' is not supported: <why>"
 * (path: the field's place in the body, e.g. "vectors.multivector_config"); else 0. */
int vd__api_refuse(const cJSON *obj, const char *key, const char *path, const char *why,
                   struct vd_err *err);

/* Field readers: absent -> default and 0; wrong type -> VD_EINVAL; out of range -> VD_ERANGE;
 * messages name the field. */
int vd__api_get_bool(const cJSON *obj, const char *key, bool dflt, bool *out, struct vd_err *err);
int vd__api_get_u32(const cJSON *obj, const char *key, uint32_t dflt, uint32_t min, uint32_t max,
                    uint32_t *out, struct vd_err *err);
/* The same for obj[key] where obj sits at `path` in the body (e.g. "hnsw_config"; NULL: at the
 * top): messages name the field as "path.key". A value out of range is a 422 worded as Qdrant
 * words it: "Validation error in JSON body: [path.key: value V invalid, must be from A to B]"
 * ("must be A or larger" when max is UINT32_MAX). */
int vd__api_get_u32_at(const cJSON *obj, const char *path, const char *key, uint32_t dflt,
                       uint32_t min, uint32_t max, uint32_t *out, struct vd_err *err);
int vd__api_get_float(const cJSON *obj, const char *key, bool *present, float *out,
                      struct vd_err *err);
/* What a reply shows of each point: the payload (all keys, only those listed in payload_keys,
 * and without those in payload_exclude) and the vector. */
struct vd_api_with {
    bool payload;
    const cJSON *payload_keys;    /* array of key strings, or NULL for all */
    const cJSON *payload_exclude; /* array of key strings to drop, or NULL */
    bool vector;
};
/* with_payload (bool, list of keys, {"include": [...]}, {"exclude": [...]}) and with_vector. The
 * key arrays in *w point into obj. */
int vd__api_get_with(const cJSON *obj, bool payload_dflt, struct vd_api_with *w,
                     struct vd_err *err);

/* The JSON forms of a point. Every reply that shows points renders them through
 * vd__api_point_json, so with_payload and with_vector mean the same in each. */
enum vd_api_point_form {
    VD_API_POINT_RECORD, /* retrieve, scroll, query without a query: {"id","payload","vector"} */
    VD_API_POINT_SCORED, /* search, query: {"id","version","score","payload","vector"} */
    VD_API_POINT_EXPORT, /* an export line: {"id","vector","payload"}, payload left out when the
                            point has none or w does not ask for it */
};
/* Appends record r as form says; payload and vector are shown as w asks (null when not asked
 * for, or when r holds no vector). A payload is copied as stored unless w selects keys. */
void vd__api_point_json(struct vd_buf *out, const struct vd_db_record *r,
                        const struct vd_api_with *w, enum vd_api_point_form form);
/* Appends the JSON array of r[n], each by vd__api_point_json. */
void vd__api_points_json(struct vd_buf *out, const struct vd_db_record *r, size_t n,
                         const struct vd_api_with *w, enum vd_api_point_form form);
/* "filter" (absent or null -> NULL). Caller frees with vd_filter_free. */
int vd__api_get_filter(const cJSON *obj, struct vd_filter **out, struct vd_err *err);
/* Array of point ids under key (required). *ids malloc'd. */
int vd__api_get_ids(const cJSON *arr, const char *what, struct vd_pid **ids, size_t *n,
                    struct vd_err *err);

/* Qdrant's point update operations (src/api/updates.c): every write endpoint is one, and
 * POST .../points/batch a list of them. */
enum vd__api_upd_kind {
    VD__API_UPD_UPSERT,
    VD__API_UPD_DELETE,
    VD__API_UPD_SET_PAYLOAD,
    VD__API_UPD_OVERWRITE_PAYLOAD,
    VD__API_UPD_DELETE_PAYLOAD,
    VD__API_UPD_CLEAR_PAYLOAD,
    VD__API_UPD_UPDATE_VECTORS,
    VD__API_UPD_DELETE_VECTORS,
    VD__API_UPD_N
};
/* One parsed operation. Pointers into the JSON it was parsed from (payloads, arg, filter_json)
 * are borrowed: that JSON must outlive it. */
struct vd__api_upd {
    enum vd__api_upd_kind kind;
    /* UPSERT, UPDATE_VECTORS: the points (the payloads are UPSERT's); vecs holds their vectors
     * as given (not normalised) */
    struct vd_db_point *pts;
    float *vecs;
    size_t n_pts;
    /* the other kinds: the points selected, by ids, or by filter (then filter_json is the
     * filter object as sent) */
    struct vd_pid *ids;
    size_t n_ids;
    struct vd_filter *filter;
    const cJSON *filter_json;
    const cJSON *arg; /* SET/OVERWRITE_PAYLOAD: the payload object; DELETE_PAYLOAD: the keys */
};
/* Parses the operation of `kind` from obj (its body: Qdrant's PointInsertOperations,
 * PointsSelector, SetPayload, DeletePayload, UpdateVectors or DeleteVectors) against collection
 * c: every id, vector (c's dimension, finite, not zero under Cosine), filter and payload is
 * checked, so that nothing is refused once writing began. 0, or VD_EINVAL / VD_ERANGE /
 * VD_ENOMEM with err naming the field (e.g. "points[2]: Vector dimension error: …") and *u
 * empty. DELETE_VECTORS, once well-formed, is refused (VD_EINVAL): a point cannot lose its one
 * vector. Release *u with vd__api_upd_release. */
int vd__api_upd_parse(enum vd__api_upd_kind kind, const cJSON *obj, struct vd_coll *c,
                      struct vd__api_upd *u, struct vd_err *err);
void vd__api_upd_release(struct vd__api_upd *u);
/* Qdrant's name of the operation ("upsert", "set_payload", …); a static string. */
const char *vd__api_upd_name(enum vd__api_upd_kind kind);
/* Appends Qdrant's UpdateResult {"operation_id": op_id, "status": status}. */
void vd__api_update_result_json(struct vd_buf *out, uint64_t op_id, const char *status);

/* Route registration per resource file. */
int vd__api_collections_routes(struct vd_http *h);
int vd__api_points_routes(struct vd_http *h); /* with vd__api_update_routes' */
int vd__api_update_routes(struct vd_http *h);
int vd__api_search_routes(struct vd_http *h);
int vd__api_bulk_routes(struct vd_http *h);
int vd__api_payload_index_routes(struct vd_http *h);
int vd__api_cluster_routes(struct vd_http *h); /* only with vd__api.cluster set */

#endif
