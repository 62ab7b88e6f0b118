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

#endif
