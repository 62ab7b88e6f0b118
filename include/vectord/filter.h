/*
 * vectord payload filters: Qdrant's filter language (must / should / must_not / min_should,
 * match value|any|except|text, range, is_empty, is_null, has_id) compiled once per request and
 * evaluated per point, either against a cJSON payload or against the compact binary payload
 * form that the store keeps in memory for every point.
 *
 * The user-facing semantics (missing keys, nulls, arrays, integer vs float) are described in
 * docs/filters.md; the tests in tests/unit/test_filter.c pin each of them.
 */
#ifndef VECTORD_FILTER_H
#define VECTORD_FILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "vectord/core.h"

/* A compiled filter. Opaque and immutable after vd_filter_parse: any number of threads may call
 * vd_filter_match* and vd_filter_keys on one filter at the same time without locking. */
struct vd_filter;

/* Deepest nesting of filters inside filters that vd_filter_parse accepts. */
#define VD_FILTER_MAX_DEPTH 32

/* Compiles a filter object. `json` is borrowed for the duration of the call only (the filter
 * copies what it needs). A NULL `json` or a JSON null compiles to a filter that matches every
 * point. On success *out owns a new filter the caller releases with vd_filter_free.
 * Errors: VD_EINVAL with a message naming the offending clause, e.g.
 * "filter.must[1].range: expected an object with gt/gte/lt/lte numbers"; VD_ENOMEM. */
int vd_filter_parse(const cJSON *json, struct vd_filter **out, struct vd_err *err);

/* Frees a filter and everything it owns; NULL is a no-op. */
void vd_filter_free(struct vd_filter *f);

/* Evaluates f against a point: its id (may be NULL: has_id then never matches) and its payload
 * (a cJSON object, or NULL for no payload). Both are borrowed. Allocation-free. */
bool vd_filter_match(const struct vd_filter *f, const struct vd_pid *id, const cJSON *payload);

/* Compact binary payload: encoded once when a point is written, kept in memory per point so
 * that filtered search evaluates conditions without parsing JSON. Layout: a version byte, then
 * one value; objects carry a key table sorted by key so a dotted key is found by binary search
 * without allocating (format in src/filter/payload.c).
 *
 * Encodes `payload` (a cJSON object, or NULL / JSON null for no payload) into a new malloc'd
 * buffer the caller owns and frees with free(). Numbers read by the strict parser
 * (vd_json_parse, literal text in valuestring) are integers when the literal has no fraction or
 * exponent and fits int64; numbers from plain cJSON are integers when their value is integral.
 * Errors: VD_EINVAL (payload not an object), VD_ETOOBIG (over 4 GiB encoded), VD_ENOMEM. */
int vd_payload_encode(const cJSON *payload, uint8_t **out, size_t *out_len);

/* Checks that bin/len is a well-formed binary payload (every length and offset in bounds):
 * call it on bytes that come from disk or the network before handing them to
 * vd_filter_match_bin, which trusts its input. Returns 0 or VD_ECORRUPT. */
int vd_payload_validate(const uint8_t *bin, size_t len);

/* Rebuilds a cJSON object from a binary payload (a new tree the caller frees with
 * cJSON_Delete; NULL input gives an empty object). Object keys come back sorted by length, then
 * bytes; numbers carry literal text in valuestring as vd_json_parse trees do (integers exact,
 * floats with a fraction or exponent), so encoding the result gives the same bytes again.
 * Errors: VD_ECORRUPT, VD_ENOMEM. */
int vd_payload_decode(const uint8_t *bin, size_t len, cJSON **out);

/* Same result as vd_filter_match on the payload bin was encoded from. bin NULL or len 0 means
 * no payload. bin must come from vd_payload_encode or have passed vd_payload_validate.
 * Allocation-free; both buffers are borrowed. */
bool vd_filter_match_bin(const struct vd_filter *f, const struct vd_pid *id, const uint8_t *bin,
                         size_t len);

/* Keys the filter reads (for the planner and payload indexes): calls fn once for each distinct
 * key, as written in the filter (e.g. "a.b", "tags[]"). The string passed to fn is owned by the
 * filter and lives as long as it. */
void vd_filter_keys(const struct vd_filter *f, void (*fn)(const char *key, void *ctx), void *ctx);

/* True if the filter matches every point whatever its payload (no conditions). */
bool vd_filter_is_empty(const struct vd_filter *f);

/* ---- with_payload: include / exclude ------------------------------------------------------------
 * Qdrant's payload selector. include keeps the parts of a payload a listed key leads to: the
 * objects on the way with just the keys on the way, everything below the key whole; exclude
 * drops everything at and below a listed key. Keys use the filter syntax ("a.b", "a[].b",
 * "\"x.y\""); a plain name does not reach into the elements of an array (write "a[].b").
 * docs/api.md gives examples. */

/* Checks that keys (what names it in messages, e.g. "with_payload.include") is an array of
 * well-formed payload keys. Returns 0 or VD_EINVAL naming the bad element. */
int vd_payload_keys_check(const cJSON *keys, const char *what, struct vd_err *err);

/* Prunes payload (a cJSON object, changed in place) to what the lists select: include NULL
 * keeps everything, exclude NULL drops nothing; both are borrowed arrays of key strings that
 * passed vd_payload_keys_check (a malformed key selects nothing). Allocation-free (the removed
 * items are freed). */
void vd_payload_select(cJSON *payload, const cJSON *include, const cJSON *exclude);

/* ---- payload indexes ---------------------------------------------------------------------------
 * A payload index keeps, for one key, the values every point yields under that key; the planner
 * asks it for the points satisfying a condition. Both sides use the same walk as evaluation, so an
 * index answers a condition exactly as vd_filter_match_bin would. */

/* A compiled key (e.g. "meta.tags[]"): immutable, shareable between threads like a filter. */
struct vd_filter_key;

/* Compiles a key with the syntax filters use (docs/filters.md, "Keys"). *out is owned by the
 * caller and released with vd_filter_key_free. Errors: VD_EINVAL naming the key, VD_ENOMEM. */
int vd_filter_key_parse(const char *key, struct vd_filter_key **out, struct vd_err *err);
void vd_filter_key_free(struct vd_filter_key *k);

/* One scalar payload value. Strings are borrowed from the payload and live as long as it. */
enum vd_filter_vtype { VD_FILTER_V_BOOL, VD_FILTER_V_INT, VD_FILTER_V_DBL, VD_FILTER_V_STR };
struct vd_filter_value {
    enum vd_filter_vtype t;
    bool b;
    int64_t i;
    double d; /* DBL; also INT converted to double, as range compares */
    const char *s;
    uint32_t slen;
};

/* Calls fn for every scalar value key yields in a binary payload (NULL / len 0: none), walking as a
 * field condition does: arrays on the path fan out, and a value that is an array yields its
 * elements (one level). null, objects and arrays inside arrays are skipped; a value may come more
 * than once. bin must be well formed (see vd_filter_match_bin). Allocation-free. */
void vd_filter_key_values(const struct vd_filter_key *k, const uint8_t *bin, size_t len,
                          void (*fn)(const struct vd_filter_value *v, void *ctx), void *ctx);

struct vd_filter_str {
    const char *s;
    uint32_t len;
};

/* One field condition (or has_id) as a payload index sees it, for vd_filter_bound. The condition
 * holds for a point when its match part or its range part holds for some value the key yields. */
enum vd_filter_match {
    VD_FILTER_MATCH_NONE,  /* no match part */
    VD_FILTER_MATCH_STR,   /* value or any: the value equals one of strs[n] */
    VD_FILTER_MATCH_INT,   /* value or any: an integer value (not a float) equals one of ints[n] */
    VD_FILTER_MATCH_BOOL,  /* value: the bool b */
    VD_FILTER_MATCH_OTHER, /* except, text, is_empty, is_null: no value index answers it */
};
struct vd_filter_field {
    const char *key; /* as written in the filter; NULL for has_id */
    enum vd_filter_match match;
    uint32_t n;
    const struct vd_filter_str *strs;
    const int64_t *ints;
    bool b;
    bool has_range; /* some number x (integers as doubles) within every bound given */
    bool gt_set, gte_set, lt_set, lte_set;
    double gt, gte, lt, lte;
    const struct vd_pid *ids; /* has_id: the listed ids (key NULL) */
    uint32_t n_ids;
};

/* Set operations of the caller's point-set type, for vd_filter_bound. */
struct vd_filter_sets {
    /* A new set holding at least the points satisfying c; *exact is set true when it holds
     * exactly those. NULL when no index answers c (or out of memory): no bound. */
    void *(*field)(const struct vd_filter_field *c, bool *exact, void *ctx);
    void (*intersect)(void *acc, const void *other, void *ctx); /* acc = acc AND other */
    void (*unite)(void *acc, const void *other, void *ctx);     /* acc = acc OR other */
    void (*free)(void *set, void *ctx);
    void *ctx;
};

/* Bounds the points f matches with the sets that ops->field gives for its conditions: must
 * intersects, should unites (only when every one of its conditions is answered), must_not and
 * min_should give no bound. Returns a new set (caller frees with ops->free) that holds every
 * matching point, *exact true when it holds only those; or NULL when nothing bounds f. */
void *vd_filter_bound(const struct vd_filter *f, const struct vd_filter_sets *ops, bool *exact);

#endif
