/*
 * vectord json: a strict JSON reader that keeps the literal text of every number, exact readers
 * for ids, integers and float32 vectors, a shortest-round-trip float printer, a growable output
 * buffer with JSON writers, and an NDJSON line splitter for streamed bodies.
 *
 * Why not plain cJSON_Parse: cJSON keeps numbers only as double (u64 ids above 2^53 lose digits,
 * 1e999 becomes inf) and accepts inputs that are not JSON. The reader here builds ordinary cJSON
 * trees, so the rest of the code walks them with the cJSON API, but each number also carries its
 * source text in item->valuestring.
 *
 * Thread safety: every function works on its arguments only; distinct objects may be used from
 * different threads at once.
 */
#ifndef VECTORD_JSON_H
#define VECTORD_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "vectord/core.h"

/* ---- strict reader ----------------------------------------------------------------------- */

#define VD_JSON_MAX_DEPTH 64
#define VD_JSON_DEPTH_CLAMP 1024 /* larger max_depth values are lowered to this */

/*
 * Parses body[0,len) (RFC 8259, nothing more) into a cJSON tree. On success *out is owned by the
 * caller and freed with cJSON_Delete. body need not be NUL-terminated.
 *
 * Every cJSON_Number item keeps its literal source text in item->valuestring (allocated with
 * cJSON_malloc, freed by cJSON_Delete); valuedouble is the correctly rounded double and valueint
 * is clamped to int as cJSON does. Code that changes a parsed number must use
 * vd_json_set_number() so the stale text is dropped.
 *
 * Choices where JSON leaves room:
 *  - duplicate object keys: the LAST occurrence wins and earlier ones are removed from the tree,
 *    which is what serde_json-based servers effectively do;
 *  - "\u0000" inside a string is rejected (cJSON strings are NUL-terminated, it would truncate);
 *  - numbers that underflow (1e-400) read as 0 and are accepted; numbers whose value is not a
 *    finite double (1e999) are rejected;
 *  - max_depth <= 0 means VD_JSON_MAX_DEPTH, values above VD_JSON_DEPTH_CLAMP are lowered to
 *    it (the reader recurses); an array or object at the top is depth 1.
 *
 * Errors: VD_EINVAL with err->msg "invalid JSON at byte N: <what>" (N counted from 0) for any
 * syntax error, invalid UTF-8 (overlong forms, surrogates, code points above U+10FFFF), bad or
 * unpaired \u escapes, raw control characters in strings, leading zeros, '+' signs, '.5' / '5.',
 * non-finite numbers, NaN/Infinity literals, trailing garbage, truncated or empty input, and
 * nesting deeper than max_depth; VD_ENOMEM if an allocation fails. *out is NULL on error.
 */
int vd_json_parse(const char *body, size_t len, int max_depth, cJSON **out, struct vd_err *err);

/* Sets a number item to v and frees its literal text, so writers print v. */
void vd_json_set_number(cJSON *item, double v);

/*
 * Point id from an item: a JSON integer read from its literal text (full u64 range) or a UUID
 * string (hyphenated or 32 hex digits, any case). Anything else -- negative, fractional or
 * exponent forms, values above 2^64-1, other types -- gives VD_EINVAL with
 * "point id must be an unsigned integer or a UUID string".
 */
int vd_json_get_pid(const cJSON *item, struct vd_pid *out, struct vd_err *err);

/*
 * Float32 vector from an array of numbers. Each value is the float nearest to its literal text
 * (as strtof reads it, never double-rounded), so the shortest float text round-trips bit-exactly.
 * Values that overflow float32 give VD_EINVAL "vector[3] is not a finite float32"; values below
 * the float32 range round to zero or a subnormal as strtof does. A non-number element gives
 * "vector[3] is not a number". An empty array gives "vector is empty". If expect_dim != 0 and the
 * length differs: "vector has N values, expected M".
 *
 * If dst is NULL, *out is malloc'd and owned by the caller (free()); otherwise the values are
 * written to dst (which must hold expect_dim floats, so expect_dim must be nonzero) and *out is
 * set to dst. *n_out (may be NULL) receives the count. VD_ENOMEM if the allocation fails.
 */
int vd_json_get_floats(const cJSON *item, uint32_t expect_dim, float *dst, float **out,
                       uint32_t *n_out, struct vd_err *err);

/*
 * Integers from the literal text: exact. VD_EINVAL if item is not a number or its text is not an
 * integer literal (fraction or exponent present: "1.0" and "1e3" are refused); VD_ERANGE if it is
 * an integer outside the type's range (for u64 that includes negative values other than -0). Numbers built in code (no text) are accepted when their double is an
 * exact integer in range.
 */
int vd_json_get_u64(const cJSON *item, uint64_t *out);
int vd_json_get_i64(const cJSON *item, int64_t *out);

/* ---- writers ----------------------------------------------------------------------------- */

/*
 * Shortest decimal text that strtof() reads back as exactly f, written into buf (at least
 * VD_JSON_FLOAT_MAX bytes), NUL-terminated; returns the length. The text is a JSON number that
 * still reads as a float: integral values get ".0" ("1.0", "-0.0"), large and small magnitudes
 * use exponent form ("1.5e-7", "3.4028235e38"). f must be finite (NaN/inf print as "null").
 */
#define VD_JSON_FLOAT_MAX 32
int vd_json_fmt_float(float f, char *buf);

/*
 * Shortest text that strtod() reads back as exactly d; integral values print without ".0"
 * ("42", "1e+20"). Non-finite values print as "null". buf holds at least VD_JSON_DOUBLE_MAX.
 */
#define VD_JSON_DOUBLE_MAX 32
int vd_json_fmt_double(double d, char *buf);

/*
 * Growable byte buffer for building responses. data is NUL-terminated whenever it is not NULL
 * (the NUL is not counted in len). oom is sticky: after a failed allocation every append is a
 * no-op and vd_buf_ok() is false. Zero-filling the struct is the same as vd_buf_init().
 */
struct vd_buf {
    char *data;
    size_t len, cap;
    int oom;
};
void vd_buf_init(struct vd_buf *b);
/* Frees data and leaves b empty and usable (oom cleared). */
void vd_buf_release(struct vd_buf *b);
/* Hands data to the caller (free()) and leaves b empty. Returns a NUL-terminated string ("" for
 * an empty buffer), or NULL if the buffer hit an allocation failure (*len = 0 then). len may be
 * NULL. */
char *vd_buf_steal(struct vd_buf *b, size_t *len);
bool vd_buf_ok(const struct vd_buf *b);
/* Makes room for n more bytes; false (and oom set) if that fails. */
bool vd_buf_reserve(struct vd_buf *b, size_t n);
void vd_buf_append(struct vd_buf *b, const void *p, size_t n);
void vd_buf_puts(struct vd_buf *b, const char *s);
void vd_buf_printf(struct vd_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* s[0,n) as a quoted JSON string. Quotes, backslashes and control characters are escaped; bytes
 * that are not valid UTF-8 are replaced by U+FFFD so the output is always valid JSON. */
void vd_buf_json_string(struct vd_buf *b, const char *s, size_t n);
/* "[1.5,2.0]" with each value in vd_json_fmt_float form (non-finite values as null). */
void vd_buf_json_floats(struct vd_buf *b, const float *v, size_t n);
/* 42 or "550e8400-e29b-41d4-a716-446655440000". */
void vd_buf_json_pid(struct vd_buf *b, const struct vd_pid *id);
/*
 * Compact JSON of a cJSON tree (NULL prints null). Numbers that carry literal text (valuestring,
 * from vd_json_parse) are printed from it, so big integers and exact decimals survive; numbers
 * without text print as vd_json_fmt_double. cJSON_Raw items are copied verbatim (the caller
 * vouches they are JSON). Key order and array order are kept.
 */
void vd_buf_json(struct vd_buf *b, const cJSON *item);

/* ---- NDJSON line splitter ---------------------------------------------------------------- */

/*
 * Splits a streamed body into lines. Feed chunks of any size; each complete line is passed to
 * the callback with its 1-based line number, without the "\n" and without a "\r" before it.
 * Empty lines are not passed (they still count in the numbering). A line longer than max_line
 * bytes is not buffered: the callback receives line == NULL with len = the line's full length,
 * so the caller can report "line N is too long", and vd_ndjson_overlong() counts it. Memory stays
 * below about max_line bytes whatever the input.
 *
 * line points into the splitter or the caller's chunk and is valid only during the callback. It
 * is not NUL-terminated. A nonzero return from the callback stops the splitter: feed and finish
 * return that value, now and on every later call.
 */
struct vd_ndjson; /* opaque */
typedef int (*vd_ndjson_line_fn)(const char *line, size_t len, uint64_t lineno, void *ctx);
/* *out is owned by the caller (vd_ndjson_free). VD_EINVAL if max_line == 0 or fn is NULL. */
int vd_ndjson_new(size_t max_line, vd_ndjson_line_fn fn, void *ctx, struct vd_ndjson **out);
/* 0, the callback's nonzero value, or VD_ENOMEM. */
int vd_ndjson_feed(struct vd_ndjson *s, const char *data, size_t len);
/* Passes a last line that has no newline; 0 or the callback's value. Later feeds are ignored. */
int vd_ndjson_finish(struct vd_ndjson *s);
/* Count of lines dropped for length so far. */
uint64_t vd_ndjson_overlong(const struct vd_ndjson *s);
/* Number of lines seen so far (complete or, after finish, the last partial one). */
uint64_t vd_ndjson_lines(const struct vd_ndjson *s);
void vd_ndjson_free(struct vd_ndjson *s);

#endif
