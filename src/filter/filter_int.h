/*
 * Internals of the filter module shared by filter.c (compiling), eval.c (evaluating) and
 * payload.c (the binary payload form). Nothing outside src/filter includes this.
 */
#ifndef VECTORD_FILTER_INT_H
#define VECTORD_FILTER_INT_H

#include <string.h>

#include "vectord/filter.h"

/* ---- binary payload format ------------------------------------------------------------------
 * All integers little-endian. A buffer is VD__PAYLOAD_VERSION then one value (the payload
 * object). A value is a tag byte followed by:
 *   NULL, FALSE, TRUE   nothing
 *   INT                 int64
 *   DBL                 float64 (IEEE bits)
 *   STR                 u32 length, bytes (not NUL-terminated)
 *   ARR                 u32 count, u32 body length, the elements back to back
 *   OBJ                 u32 count, u32 body length, then the body: a table of `count` entries
 *                       {u32 key offset, u32 key length, u32 value offset} (offsets from the
 *                       body start) sorted by key length, then key bytes (memcmp); then
 *                       the keys and then the values, each in table order and back to back
 *                       (the only layout vd_payload_validate accepts). Duplicate keys are
 *                       dropped by the encoder: the first one wins, as for cJSON lookups.
 * Containers record their body length so a reader skips one in O(1); a key lookup is a binary
 * search of the table, comparing lengths before bytes. */
#define VD__PAYLOAD_VERSION 1
enum {
    VD__PT_NULL = 0,
    VD__PT_FALSE = 1,
    VD__PT_TRUE = 2,
    VD__PT_INT = 3,
    VD__PT_DBL = 4,
    VD__PT_STR = 5,
    VD__PT_ARR = 6,
    VD__PT_OBJ = 7,
};
#define VD__OBJ_ENTRY 12u

static inline uint32_t vd__filter_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t vd__filter_le64(const uint8_t *p)
{
    return (uint64_t)vd__filter_le32(p) | ((uint64_t)vd__filter_le32(p + 4) << 32);
}

/* ---- a payload value seen through either backend (cJSON tree or binary form) ---------------- */
enum { VD__FV_NULL, VD__FV_BOOL, VD__FV_INT, VD__FV_DBL, VD__FV_STR, VD__FV_ARR, VD__FV_OBJ };

struct vd__filter_fv {
    uint8_t t;     /* VD__FV_* */
    bool b;        /* BOOL */
    int64_t i;     /* INT */
    double d;      /* DBL (and INT converted, for ranges) */
    const char *s; /* STR bytes, borrowed */
    uint32_t slen;
    uint32_t n;          /* ARR / OBJ element count */
    const cJSON *cj;     /* ARR / OBJ node when the backend is cJSON, else NULL */
    const uint8_t *body; /* ARR / OBJ body when the backend is binary, else NULL */
};

/* Classifies a cJSON number: true and *i set when it is an integer (see vd_payload_encode for
 * the rule), false otherwise; *d always gets its double value. */
bool vd__filter_num_is_int(const cJSON *n, int64_t *i, double *d);

/* Views of values; decoding a scalar is done eagerly (it is cheap), containers lazily. */
void vd__filter_fv_cjson(const cJSON *c, struct vd__filter_fv *out);
/* p points at a tag byte of a well-formed buffer; returns the pointer just past the value. */
const uint8_t *vd__filter_fv_bin(const uint8_t *p, struct vd__filter_fv *out);

struct vd__filter_iter {
    const cJSON *c;
    const uint8_t *p;
    uint32_t left;
};
static inline void vd__filter_iter_init(const struct vd__filter_fv *arr, struct vd__filter_iter *it)
{
    it->c = arr->cj ? arr->cj->child : NULL;
    it->p = arr->body;
    it->left = arr->n;
}
static inline bool vd__filter_iter_next(struct vd__filter_iter *it, struct vd__filter_fv *out)
{
    if (it->p) {
        if (it->left == 0)
            return false;
        it->left--;
        it->p = vd__filter_fv_bin(it->p, out);
        return true;
    }
    if (!it->c)
        return false;
    vd__filter_fv_cjson(it->c, out);
    it->c = it->c->next;
    return true;
}
/* Finds key (len bytes; key[len] must be NUL for the cJSON backend) in an object view. */
bool vd__filter_fv_find(const struct vd__filter_fv *obj, const char *key, uint32_t len,
                        struct vd__filter_fv *out);

/* ---- compiled filters ------------------------------------------------------------------------ */
enum { VD__SEG_KEY, VD__SEG_ALL, VD__SEG_INDEX };
struct vd__filter_seg {
    uint8_t kind;
    uint32_t len; /* KEY: name length */
    uint32_t idx; /* INDEX */
    char *name;   /* KEY: NUL-terminated copy */
};
/* One segment of a key as written, borrowed from the key text. */
struct vd__filter_segv {
    uint8_t kind;     /* VD__SEG_* */
    const char *name; /* KEY: the name, without quotes (not NUL-terminated) */
    uint32_t len;     /* KEY: name length */
    uint32_t idx;     /* INDEX */
};
/* Reads the segment of key s (n bytes) at *pos and moves *pos past it. Syntax: a name first,
 * then ".name", "[]" or "[index]" any number of times; a name is bare (stops at '.', '[', ']'
 * and '"') or double-quoted (may hold anything but '"'). Returns 1 (*out filled), 0 at the end,
 * -1 when the key is malformed there. Allocation-free. */
int vd__filter_seg_next(const char *s, size_t n, size_t *pos, struct vd__filter_segv *out);

struct vd__filter_path {
    const char *text; /* the key as written (owned by the filter's key list) */
    uint32_t nseg;
    struct vd__filter_seg *segs;
};

enum {
    VD__C_FILTER,   /* nested must/should/must_not/min_should */
    VD__C_FIELD,    /* key + match / range / is_empty / is_null */
    VD__C_IS_EMPTY, /* {"is_empty": {"key": k}} */
    VD__C_IS_NULL,  /* {"is_null": {"key": k}} */
    VD__C_HAS_ID,
};
enum {
    VD__M_NONE,
    VD__M_STR,
    VD__M_INT,
    VD__M_BOOL,
    VD__M_ANY_STR,
    VD__M_ANY_INT,
    VD__M_EXCEPT_STR,
    VD__M_EXCEPT_INT,
    VD__M_TEXT,
};

struct vd__filter_cond;
struct vd__filter_clause {
    bool present;
    uint32_t n;
    struct vd__filter_cond **c;
};

struct vd__filter_cond {
    uint8_t kind;
    union {
        struct {
            struct vd__filter_clause must, should, must_not, min_should;
            uint32_t min_count;
        } f;
        struct {
            struct vd__filter_path path;
            uint8_t match;   /* VD__M_* */
            int8_t is_empty; /* -1 absent, else 0/1 */
            int8_t is_null;
            bool has_range;
            bool gt_set, gte_set, lt_set, lte_set;
            double gt, gte, lt, lte;
            /* match operands: one string / int / bool, or a sorted set */
            struct vd_filter_str str;
            int64_t ival;
            bool bval;
            uint32_t nset;
            struct vd_filter_str *strs; /* sorted by (len, bytes) */
            int64_t *ints;               /* sorted */
            char *strbuf;                /* owns the bytes of str / strs */
        } fc;
        struct {
            struct vd__filter_path path;
        } k;
        struct {
            uint32_t n;
            struct vd_pid *ids; /* sorted by vd_pid_cmp */
        } ids;
    } u;
};

struct vd_filter {
    struct vd__filter_cond *root; /* a VD__C_FILTER */
    uint32_t nkeys;
    char **keys; /* distinct keys in first-seen order */
};

struct vd_filter_key {
    struct vd_filter *owner; /* holds the key text */
    struct vd__filter_path path;
};

bool vd__filter_eval(const struct vd__filter_cond *c, const struct vd_pid *id,
                     const struct vd__filter_fv *root);

#endif
