/*
 * The local database of one node: collections opened from storage with their in-memory index
 * and payload columns, the write path (storage group commit, then index), and the read and search
 * paths. The HTTP layer and, later, the cluster coordinator call this; nothing here does network
 * I/O.
 *
 * Threads: every function is thread-safe. Write completions run on the storage writer thread and
 * must not block.
 */
#ifndef VECTORD_DB_H
#define VECTORD_DB_H

#include <cjson/cJSON.h>

#include "vectord/core.h"
#include "vectord/filter.h"
#include "vectord/json.h"
#include "vectord/store.h"

struct vd_db_opts {
    const char *data_dir;
    bool no_sync;                /* tests only */
    unsigned index_threads;      /* background graph-linking threads (0 = automatic) */
    unsigned index_save_seconds; /* periodic graph save when changed (0 = only at close) */
    uint64_t hint_target_bytes;  /* hint caps (vd_store_opts); 0 = the store's defaults */
    uint64_t hint_total_bytes;
};

struct vd_db;
struct vd_coll; /* an open collection; reference counted */

/* Opens storage, loads every collection (graph from its saved file plus the changes after it, or
 * a rebuild), starts the background index threads. */
int vd_db_open(const struct vd_db_opts *o, struct vd_db **out, struct vd_err *err);
/* Stops the background threads, saves the graphs, closes storage. No request may be running. */
void vd_db_close(struct vd_db *db);
bool vd_db_ready(const struct vd_db *db);
uint64_t vd_db_node_id(const struct vd_db *db);

/* Validates a collection name ([A-Za-z0-9_-]{1,255}); VD_ERANGE with a message otherwise. */
int vd_db_check_name(const char *name, struct vd_err *err);

typedef void (*vd_db_done_fn)(int status, const struct vd_err *err, uint64_t op_id, void *ctx);

/* Collection create and delete, applied on this node. Done runs after the change is durable. */
int vd_db_coll_create(struct vd_db *db, const struct vd_coll_schema *schema, vd_db_done_fn done,
                      void *ctx, struct vd_err *err);
int vd_db_coll_delete(struct vd_db *db, const char *name, vd_db_done_fn done, void *ctx,
                      struct vd_err *err);

/* Looks a collection up; *out holds a reference released with vd_db_coll_put. VD_ENOTFOUND. */
int vd_db_coll_get(struct vd_db *db, const char *name, struct vd_coll **out);
void vd_db_coll_put(struct vd_coll *c);
const struct vd_coll_schema *vd_db_coll_schema(const struct vd_coll *c);
/* Copies the schema of c; unlike reading through vd_db_coll_schema, safe against a concurrent
 * vd_db_coll_update (which changes the quantization fields only). */
void vd_db_coll_schema_copy(struct vd_coll *c, struct vd_coll_schema *out);
/* Sets the quantization config of the collection schema->name to schema's: schema must be the
 * collection's own (same incarnation and other fields) but for the quant_* fields. Stores it,
 * then quantizes the index (every stored point, when there are enough to train on), unquantizes
 * it or retrains it for a new quantile; that pass blocks the collection's searches and runs on
 * the storage writer's completion thread. done as for vd_db_coll_create. Errors (returned or
 * given to done): VD_ENOTFOUND, VD_EINVAL (other fields differ), VD_ERANGE, VD_ENOMEM, storage
 * errors. */
int vd_db_coll_update(struct vd_db *db, const struct vd_coll_schema *schema, vd_db_done_fn done,
                      void *ctx, struct vd_err *err);
/* Names of all collections, sorted; caller frees the array and each name. */
int vd_db_coll_names(struct vd_db *db, char ***names, size_t *n);

struct vd_coll_stats {
    uint64_t points;  /* live points */
    uint64_t indexed; /* linked into the graph */
    uint64_t pending; /* stored, searchable by exact scan, not yet linked */
    size_t index_bytes;
    size_t vector_bytes; /* of index_bytes, the vectors held in memory (floats and/or codes) */
};
void vd_db_coll_stats(struct vd_coll *c, struct vd_coll_stats *out);

/* ---- writes ---- */

/* One point of an upsert. The vector is copied; for cosine collections it is normalised (a zero
 * vector is VD_ERANGE). payload: JSON object text, or NULL for none. */
struct vd_db_point {
    struct vd_pid id;
    const float *vec;
    const cJSON *payload; /* object or NULL */
};
/* Prepares the vector of a point for c as every write stores it: copies src (the collection's
 * dim values) into dst (dim floats) and normalises it for Cosine. VD_EINVAL ("a zero vector
 * cannot be used with Cosine distance"). A coordinator building records (vectord/record.h)
 * calls this so they hold exactly what vd_db_upsert would store. */
int vd_db_prepare_vector(const struct vd_coll *c, const float *src, float *dst,
                         struct vd_err *err);
/* Validates every point first (nothing is written when one is bad), then commits the batch
 * atomically and durably, applies it to the index and calls done. */
int vd_db_upsert(struct vd_coll *c, const struct vd_db_point *pts, size_t n, vd_db_done_fn done,
                 void *ctx, struct vd_err *err);
/* Deletes ids (absent ids are fine). */
int vd_db_delete(struct vd_coll *c, const struct vd_pid *ids, size_t n, vd_db_done_fn done,
                 void *ctx, struct vd_err *err);
/* Deletes every point matching f. */
int vd_db_delete_filter(struct vd_coll *c, const struct vd_filter *f, vd_db_done_fn done, void *ctx,
                        struct vd_err *err);

/* The entries above serve a local client: each stamps a new version (vd_hlc_now(), this node)
 * on what it writes. A payload edit reads the stored point and writes it whole (its vector,
 * the edited payload) under a new version; ids that are absent or deleted are skipped. */

/* Applies whole point records as they are, each under the version it carries (the replica
 * path: replication, hints, repair), stamping nothing. recs[i] is an encoded record
 * (vectord/record.h) of lens[i] bytes, copied here; it must belong to this collection's
 * incarnation and, when live, hold the unnamed dense vector of the collection's size (already
 * normalised for Cosine) and a JSON object payload or none. Per id, the newer version by
 * vd_version_cmp is kept: an older one is skipped (not an error), and a tombstone for an id
 * never seen is stored. Errors: VD_EINVAL naming the record, VD_ENOMEM, storage errors. */
int vd_db_apply(struct vd_coll *c, const uint8_t *const *recs, const size_t *lens, size_t n,
                vd_db_done_fn done, void *ctx, struct vd_err *err);

/* Drops this node's copies of points ids[0..n) outright, each only while it is still exactly
 * versions[i] (a newer copy is kept): no tombstone and nothing another node will ever see; the
 * points leave the index and the payload columns as a delete's do. For copies the node should
 * not hold (not a replica of them) once their replicas hold them. done runs once durable, with
 * op_id the last change counter used. Errors: VD_EINVAL (n is 0), VD_ENOMEM, storage errors
 * (VD_ENOTFOUND: the collection was deleted). */
int vd_db_forget(struct vd_coll *c, const struct vd_pid *ids, const struct vd_version *versions,
                 size_t n, vd_db_done_fn done, void *ctx, struct vd_err *err);

/* Keeps the encoded record rec[len] as a hint for node target (hinted handoff): queued to
 * storage and returns at once; a failure or a full hint cap is logged (a hint is best effort: it
 * never counts as a replica's ack). Errors: VD_ENOMEM, VD_ECLOSED. */
int vd_db_hint_put(struct vd_db *db, uint64_t target, const uint8_t *rec, size_t len,
                   struct vd_err *err);

/* Visits every target for which a hint was not stored since the database opened (a hint cap
 * was reached, or storage failed), with how many: fn(target, count, ctx), on the calling thread.
 * The first 63 targets are told apart; later ones are counted under target 0. Any thread. */
typedef void (*vd_db_hint_refused_fn)(uint64_t target, uint64_t count, void *ctx);
void vd_db_hints_refused(struct vd_db *db, vd_db_hint_refused_fn fn, void *ctx);

/* The hints kept for target, from just after `after` (vd_store_hints_scan), and the totals of
 * every target (vd_store_hint_totals), each in one short read. */
int vd_db_hints_scan(struct vd_db *db, uint64_t target, const struct vd_hint_pos *after,
                     vd_store_hint_fn fn, void *ctx);
int vd_db_hint_totals(struct vd_db *db, vd_store_hint_total_fn fn, void *ctx);
/* Visits the records c stores, tombstones included, in id order from `from` (inclusive, NULL =
 * the first), each as its encoded bytes (include/vectord/record.h: the very bytes replicas
 * exchange), in one read snapshot; id and rec are valid during the call only. fn returns nonzero
 * to stop (that value is returned, unless negative errors of the read itself). */
typedef int (*vd_db_rec_fn)(const struct vd_pid *id, const uint8_t *rec, size_t len, void *ctx);
int vd_db_scan_records(struct vd_coll *c, const struct vd_pid *from, vd_db_rec_fn fn, void *ctx);
/* Visits the records c stores whose placement hash (vd_place_hash of the collection name and the
 * stored key) lies on the ring arc (start, end], tombstones included, in hash order (the
 * hash-ordered table's: vd_store_scan_hash_range), in one read snapshot: the id, the hash, the
 * version, the tombstone flag and the encoded record bytes (valid during the call only). fn
 * returns nonzero to stop (that value is returned). Anti-entropy repair summarises and lists an
 * arc with it. */
typedef int (*vd_db_hrec_fn)(const struct vd_pid *id, uint64_t hash, struct vd_version v,
                             bool tombstone, const uint8_t *rec, size_t len, void *ctx);
int vd_db_scan_hash(struct vd_coll *c, uint64_t start, uint64_t end, vd_db_hrec_fn fn, void *ctx);
/* Forgets the hints at pos[0..n) of target (replayed, or expired), durably; blocks until then
 * (not from a storage callback). */
int vd_db_hints_delete(struct vd_db *db, uint64_t target, const struct vd_hint_pos *pos,
                       size_t n, struct vd_err *err);

/* Payload edits (by ids, or by filter when ids is NULL). */
enum vd_db_payload_op {
    VD_DB_PAYLOAD_SET,       /* merge keys into the payload */
    VD_DB_PAYLOAD_OVERWRITE, /* replace the whole payload */
    VD_DB_PAYLOAD_DELETE_KEYS,
    VD_DB_PAYLOAD_CLEAR,
};
/* The payload a payload edit gives a point whose payload is text[len] (JSON object text; NULL or
 * len 0: none): a new cJSON object the caller deletes, or NULL with err set (VD_ENOMEM, or the
 * stored text does not parse). arg is the edit's payload object (SET, OVERWRITE) or array of
 * keys (DELETE_KEYS), borrowed. A coordinator editing records over the ring uses it, so an edit
 * means the same on one node and in a cluster. */
cJSON *vd_db_payload_edited(enum vd_db_payload_op op, const cJSON *arg, const char *text,
                            size_t len, struct vd_err *err);
/* Each point is read and written whole on the condition that it is still the version read
 * (vd_wop.if_version): one changed in between is read and edited again, one deleted in between
 * is skipped like an absent id, so an edit never resurrects a point nor undoes a write it did not
 * see. The filter is evaluated once, when the edit begins; payload_or_keys is copied. Errors:
 * returned (nothing written), or through done: storage errors, VD_EBUSY when points kept being
 * rewritten by other writes through many rounds. */
int vd_db_payload_edit(struct vd_coll *c, enum vd_db_payload_op op, const cJSON *payload_or_keys,
                       const struct vd_pid *ids, size_t n, const struct vd_filter *f,
                       vd_db_done_fn done, void *ctx, struct vd_err *err);
/* Tests only: fn(arg) runs once, in the next payload edit round that has read its points, just
 * before it submits their writes (from the caller's thread in a first round). */
typedef void (*vd_db_test_fn)(void *arg);
void vd_db_test_after_edit_read(vd_db_test_fn fn, void *arg);
/* Tests only: while paused, the background threads link no point into any graph (pending
 * points stay pending, as under writes faster than linking). */
void vd_db_test_pause_linking(bool paused);

/* ---- payload indexes ----
 * An index on a payload key answers filter conditions on that key from memory (see
 * docs/filters.md, "Payload indexes"). The declaration is durable; the index is rebuilt from the
 * payloads at every start and kept in step with every write. Results never depend on whether a
 * key is indexed, only their speed does. */
enum vd_db_pindex_type {
    VD_DB_PINDEX_KEYWORD = 1, /* string values: match value / any */
    VD_DB_PINDEX_INTEGER = 2, /* numbers: match value / any on integers, range */
    VD_DB_PINDEX_FLOAT = 3,   /* numbers: range (and integer match) */
    VD_DB_PINDEX_BOOL = 4,    /* bool values: match value */
};
/* "keyword", "integer", "float", "bool"; NULL for an unknown code. Static strings. */
const char *vd_db_pindex_type_name(enum vd_db_pindex_type t);
/* Parses one of the names above: 0 or VD_EINVAL. */
int vd_db_pindex_type_parse(const char *name, enum vd_db_pindex_type *out);

/* Declares (or retypes) the index on key `field` (filter key syntax, 1 to
 * VD_STORE_PINDEX_NAME_MAX bytes) durably, then builds it and calls done with the store's last
 * change counter as op id. Creating an index that exists with the same type is a no-op that
 * still succeeds. Errors (returned, or through done): VD_EINVAL (bad key or type, naming it),
 * VD_ERANGE (name too long), VD_ENOTFOUND (collection deleted), VD_ENOMEM, storage errors. */
int vd_db_pindex_create(struct vd_coll *c, const char *field, enum vd_db_pindex_type type,
                        vd_db_done_fn done, void *ctx, struct vd_err *err);
/* Checks a payload index key as vd_db_pindex_create does, without touching any collection:
 * 0, VD_EINVAL (empty or not a filter key, naming it) or VD_ERANGE (over
 * VD_STORE_PINDEX_NAME_MAX bytes). Lets a caller that declares indexes elsewhere first (the
 * cluster) refuse exactly what the database would refuse. */
int vd_db_pindex_check_field(const char *field, struct vd_err *err);
/* Drops the index on `field`: VD_ENOTFOUND (naming it) when there is none. */
int vd_db_pindex_delete(struct vd_coll *c, const char *field, vd_db_done_fn done, void *ctx,
                        struct vd_err *err);

struct vd_db_pindex_info {
    char *field; /* owned by the array */
    enum vd_db_pindex_type type;
    uint64_t points; /* points holding at least one indexed value */
};
/* The indexes of c sorted by field name; free with vd_db_pindex_list_free. VD_ENOMEM. */
int vd_db_pindex_list(struct vd_coll *c, struct vd_db_pindex_info **out, size_t *n);
void vd_db_pindex_list_free(struct vd_db_pindex_info *v, size_t n);

/* ---- reads ---- */

struct vd_db_search {
    const float *query; /* raw query (normalised here for cosine) */
    uint32_t limit, offset;
    uint32_t ef; /* 0 = automatic */
    bool exact;
    /* params.quantization (quantized collections; see struct vd_search_req) */
    bool quant_ignore, quant_no_rescore;
    float oversampling; /* 0 = not given */
    const struct vd_filter *filter; /* or NULL */
    bool has_threshold;
    float score_threshold;
    /* Optional subset of the hash ring: only points whose vd_place_hash() (collection name,
     * stored key) falls in one of the ring arcs (start, end] are candidates, as vd_ring_contains
     * decides (end < start wraps past 2^64-1; start == end is the whole ring), so a replica is
     * asked for exactly the arcs it owns. n_ranges 0 = all points. */
    const uint64_t (*ranges)[2];
    size_t n_ranges;
    /* A point that is never a result (a query by point id does not answer with that point), or
     * NULL. */
    const struct vd_pid *exclude;
};

/* A point as stored, with its version: what every read (retrieve, search, scroll) returns. JSON
 * is made of it at the edge (the API), so one point reads the same whichever read found it. */
struct vd_db_record {
    struct vd_pid id;
    struct vd_version version; /* (HLC, node) of the write that made this record */
    uint64_t seq;              /* this node's change counter of it */
    bool tombstone;            /* only from vd_db_retrieve with_tombstones */
    float score;               /* search results: the similarity (distance for Euclid and
                                  Manhattan); 0 for the other reads */
    float *vec;        /* dim values; NULL when not asked for, and for tombstones */
    uint32_t dim;
    char *payload;     /* JSON object text, payload_len bytes as stored, not NUL-terminated;
                          NULL if none */
    size_t payload_len;
};
/* Frees an array of n records from any read below (NULL is fine). */
void vd_db_records_free(struct vd_db_record *r, size_t n);

/* Runs a search: the live points found, best first, after s->offset of them, each with its
 * score, payload and (with_vector) vector. Points deleted while the search ran are left out
 * (never a tombstone). *out (n_out records) is the caller's, freed with vd_db_records_free, and
 * set (possibly empty) whenever 0 is returned. Errors: VD_EINVAL (zero query for Cosine),
 * VD_ENOMEM, index or storage errors; err says which. */
int vd_db_search(struct vd_coll *c, const struct vd_db_search *s, bool with_vector,
                 struct vd_db_record **out, size_t *n_out, struct vd_err *err);
/* The records of ids in request order, each id once; ids never written are skipped, and deleted
 * ones unless with_tombstones. *out (n_out records) is the caller's, freed with
 * vd_db_records_free. Errors: VD_ENOMEM, storage errors. */
int vd_db_retrieve(struct vd_coll *c, const struct vd_pid *ids, size_t n, bool with_vector,
                   bool with_tombstones, struct vd_db_record **out, size_t *n_out,
                   struct vd_err *err);

/* Scroll: up to limit live points in id order from `from` (inclusive; NULL = first) matching f
 * (NULL = all), never a tombstone, each with its payload and (with_vector) vector. *next is the
 * id to start the next page from when *has_next (false at the end). *out as for vd_db_search.
 * Errors: VD_ENOMEM, storage errors. */
int vd_db_scroll(struct vd_coll *c, const struct vd_pid *from, uint32_t limit,
                 const struct vd_filter *f, bool with_vector, struct vd_db_record **out,
                 size_t *n_out, struct vd_pid *next, bool *has_next, struct vd_err *err);
/* vd_db_scroll restricted to the points whose placement hash lies on one of the ring arcs
 * ranges[0..n_ranges) (as vd_db_search's ranges; 0 arcs = every point): a replica's page of
 * the ranges it is asked for. */
int vd_db_scroll_arcs(struct vd_coll *c, const struct vd_pid *from, uint32_t limit,
                      const struct vd_filter *f, const uint64_t (*ranges)[2], size_t n_ranges,
                      bool with_vector, struct vd_db_record **out, size_t *n_out,
                      struct vd_pid *next, bool *has_next, struct vd_err *err);

/* What this node holds of one id, for the verification of a search or scroll candidate. */
struct vd_db_check {
    bool present;              /* stored at all (a tombstone is) */
    bool tombstone;
    struct vd_version version; /* of what is stored (zero when absent) */
    bool match;                /* live, searchable here, and matching the filter */
    float score;               /* match and a query: the score vd_db_search gives that vector
                                  (similarity, distance for Euclid and Manhattan) */
};
/* Checks ids[0..n) into out[0..n) against filter f (NULL = all) and, when query is not NULL,
 * scores the matching ones with the exact kernel over the float vectors: the score an exact or
 * a rescored search gives (an unrescored int8 search gives an estimate instead). Errors:
 * VD_EINVAL (zero query for Cosine), VD_ENOMEM, storage errors. */
int vd_db_check(struct vd_coll *c, const float *query, const struct vd_filter *f,
                const struct vd_pid *ids, size_t n, struct vd_db_check *out, struct vd_err *err);

/* Exact number of live points matching f (NULL = all). */
int vd_db_count(struct vd_coll *c, const struct vd_filter *f, uint64_t *out);

/* Prometheus text for collections and storage. */
void vd_db_metrics(struct vd_db *db, struct vd_buf *out);

#endif
