/*
 * The binary payload form (layout in filter_int.h): encoding from cJSON, validation of bytes
 * read back from elsewhere, decoding to cJSON, and the value views the evaluator reads through.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "filter_int.h"
#include "vectord/json.h"

/* Integers above 2^53 lose digits in a double, so the integer is read from the literal text the
 * strict parser keeps (vd_json_get_i64); "1.0" and "1e3" are floats, as they are for Qdrant. */
bool vd__filter_num_is_int(const cJSON *n, int64_t *i, double *d)
{
    /* "-0" reads as the float -0.0 in Qdrant (serde_json keeps the sign), not as integer 0 */
    bool minus_zero = n->valuestring && n->valuestring[0] == '-' && n->valuedouble == 0;
    if (!minus_zero && vd_json_get_i64(n, i) == 0) {
        *d = (double)*i;
        return true;
    }
    *d = n->valuedouble;
    return false;
}

void vd__filter_fv_cjson(const cJSON *c, struct vd__filter_fv *out)
{
    out->cj = NULL;
    out->body = NULL;
    switch (c->type & 0xff) {
    case cJSON_False:
    case cJSON_True:
        out->t = VD__FV_BOOL;
        out->b = (c->type & 0xff) == cJSON_True;
        return;
    case cJSON_Number:
        out->t = vd__filter_num_is_int(c, &out->i, &out->d) ? VD__FV_INT : VD__FV_DBL;
        return;
    case cJSON_String:
    case cJSON_Raw:
        out->t = VD__FV_STR;
        out->s = c->valuestring ? c->valuestring : "";
        out->slen = (uint32_t)strlen(out->s);
        return;
    case cJSON_Array:
    case cJSON_Object:
        out->t = (c->type & 0xff) == cJSON_Array ? VD__FV_ARR : VD__FV_OBJ;
        out->cj = c;
        out->n = c->child ? 1 : 0; /* only emptiness is read from n on this backend */
        return;
    default:
        out->t = VD__FV_NULL;
        return;
    }
}

const uint8_t *vd__filter_fv_bin(const uint8_t *p, struct vd__filter_fv *out)
{
    out->cj = NULL;
    out->body = NULL;
    switch (*p) {
    case VD__PT_FALSE:
    case VD__PT_TRUE:
        out->t = VD__FV_BOOL;
        out->b = *p == VD__PT_TRUE;
        return p + 1;
    case VD__PT_INT:
        out->t = VD__FV_INT;
        out->i = (int64_t)vd__filter_le64(p + 1);
        out->d = (double)out->i;
        return p + 9;
    case VD__PT_DBL: {
        uint64_t bits = vd__filter_le64(p + 1);
        out->t = VD__FV_DBL;
        memcpy(&out->d, &bits, sizeof bits);
        return p + 9;
    }
    case VD__PT_STR:
        out->t = VD__FV_STR;
        out->slen = vd__filter_le32(p + 1);
        out->s = (const char *)p + 5;
        return p + 5 + out->slen;
    case VD__PT_ARR:
    case VD__PT_OBJ:
        out->t = *p == VD__PT_ARR ? VD__FV_ARR : VD__FV_OBJ;
        out->n = vd__filter_le32(p + 1);
        out->body = p + 9;
        return p + 9 + vd__filter_le32(p + 5);
    default:
        out->t = VD__FV_NULL;
        return p + 1;
    }
}

/* Key order of object tables: by length, then bytes. Comparing lengths first settles most
 * probes of a lookup without reading key bytes (measured: fewer instructions per lookup than
 * byte order, and than a hashed table, on typical payloads of a few short keys). */
static inline int key_cmp(const char *a, uint32_t alen, const char *b, uint32_t blen)
{
    if (alen != blen)
        return alen < blen ? -1 : 1;
    return memcmp(a, b, alen);
}

bool vd__filter_fv_find(const struct vd__filter_fv *obj, const char *key, uint32_t len,
                        struct vd__filter_fv *out)
{
    if (obj->cj) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(obj->cj, key);
        if (!c)
            return false;
        vd__filter_fv_cjson(c, out);
        return true;
    }
    const uint8_t *body = obj->body;
    uint32_t lo = 0, hi = obj->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const uint8_t *e = body + (size_t)mid * VD__OBJ_ENTRY;
        int c = key_cmp((const char *)body + vd__filter_le32(e), vd__filter_le32(e + 4), key, len);
        if (c == 0) {
            vd__filter_fv_bin(body + vd__filter_le32(e + 8), out);
            return true;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

/* ---- encoding -------------------------------------------------------------------------------- */

struct buf {
    uint8_t *p;
    size_t len, cap;
    int err;
};

static bool buf_reserve(struct buf *b, size_t n)
{
    if (b->err)
        return false;
    if (n > UINT32_MAX - b->len) {
        b->err = VD_ETOOBIG; /* offsets are u32 */
        return false;
    }
    if (b->len + n <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) {
        b->err = VD_ENOMEM;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

static void put_u8(struct buf *b, uint8_t v)
{
    if (buf_reserve(b, 1))
        b->p[b->len++] = v;
}

static void set_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static void put_le32(struct buf *b, uint32_t v)
{
    if (buf_reserve(b, 4)) {
        set_le32(b->p + b->len, v);
        b->len += 4;
    }
}

static void put_le64(struct buf *b, uint64_t v)
{
    if (buf_reserve(b, 8)) {
        set_le32(b->p + b->len, (uint32_t)v);
        set_le32(b->p + b->len + 4, (uint32_t)(v >> 32));
        b->len += 8;
    }
}

static void put_bytes(struct buf *b, const void *s, size_t n)
{
    if (buf_reserve(b, n)) {
        memcpy(b->p + b->len, s, n);
        b->len += n;
    }
}

struct member {
    const char *key;
    uint32_t len;
    uint32_t pos; /* order in the source object: the first of duplicate keys wins */
    const cJSON *val;
};

static int member_cmp(const void *a, const void *b)
{
    const struct member *x = a, *y = b;
    int c = key_cmp(x->key, x->len, y->key, y->len);
    if (c)
        return c;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static void encode_value(struct buf *b, const cJSON *c);

static void encode_object(struct buf *b, const cJSON *c)
{
    uint32_t n = 0;
    for (const cJSON *m = c->child; m; m = m->next)
        n++;
    struct member *ms = n ? malloc(sizeof *ms * n) : NULL;
    if (n && !ms) {
        b->err = VD_ENOMEM;
        return;
    }
    uint32_t k = 0;
    for (const cJSON *m = c->child; m; m = m->next, k++) {
        ms[k].key = m->string ? m->string : "";
        size_t kl = strlen(ms[k].key);
        if (kl > UINT32_MAX) {
            b->err = VD_ETOOBIG;
            goto out_free_members;
        }
        ms[k].len = (uint32_t)kl;
        ms[k].pos = k;
        ms[k].val = m;
    }
    if (n > 1)
        qsort(ms, n, sizeof *ms, member_cmp);
    /* cJSON lookups return the first of duplicate keys; keep only that one so both backends
     * agree. */
    uint32_t u = 0;
    for (uint32_t i = 0; i < n; i++)
        if (u == 0 || key_cmp(ms[u - 1].key, ms[u - 1].len, ms[i].key, ms[i].len) != 0)
            ms[u++] = ms[i];

    put_u8(b, VD__PT_OBJ);
    put_le32(b, u);
    size_t len_at = b->len;
    put_le32(b, 0);
    size_t body = b->len;
    if (!buf_reserve(b, (size_t)u * VD__OBJ_ENTRY))
        goto out_free_members;
    memset(b->p + b->len, 0, (size_t)u * VD__OBJ_ENTRY);
    b->len += (size_t)u * VD__OBJ_ENTRY;
    for (uint32_t i = 0; i < u && !b->err; i++) {
        size_t off = b->len - body;
        put_bytes(b, ms[i].key, ms[i].len);
        if (!b->err) {
            set_le32(b->p + body + (size_t)i * VD__OBJ_ENTRY, (uint32_t)off);
            set_le32(b->p + body + (size_t)i * VD__OBJ_ENTRY + 4, ms[i].len);
        }
    }
    for (uint32_t i = 0; i < u && !b->err; i++) {
        size_t off = b->len - body;
        encode_value(b, ms[i].val);
        if (!b->err)
            set_le32(b->p + body + (size_t)i * VD__OBJ_ENTRY + 8, (uint32_t)off);
    }
    if (!b->err)
        set_le32(b->p + len_at, (uint32_t)(b->len - body));
out_free_members:
    free(ms);
}

static void encode_value(struct buf *b, const cJSON *c)
{
    switch (c->type & 0xff) {
    case cJSON_False:
        put_u8(b, VD__PT_FALSE);
        return;
    case cJSON_True:
        put_u8(b, VD__PT_TRUE);
        return;
    case cJSON_Number: {
        int64_t i;
        double d;
        if (vd__filter_num_is_int(c, &i, &d)) {
            put_u8(b, VD__PT_INT);
            put_le64(b, (uint64_t)i);
        } else {
            uint64_t bits;
            memcpy(&bits, &d, sizeof bits);
            put_u8(b, VD__PT_DBL);
            put_le64(b, bits);
        }
        return;
    }
    case cJSON_String:
    case cJSON_Raw: {
        const char *s = c->valuestring ? c->valuestring : "";
        size_t n = strlen(s);
        if (n > UINT32_MAX) {
            b->err = VD_ETOOBIG;
            return;
        }
        put_u8(b, VD__PT_STR);
        put_le32(b, (uint32_t)n);
        put_bytes(b, s, n);
        return;
    }
    case cJSON_Array: {
        uint32_t n = 0;
        for (const cJSON *m = c->child; m; m = m->next)
            n++;
        put_u8(b, VD__PT_ARR);
        put_le32(b, n);
        size_t len_at = b->len;
        put_le32(b, 0);
        size_t body = b->len;
        for (const cJSON *m = c->child; m && !b->err; m = m->next)
            encode_value(b, m);
        if (!b->err)
            set_le32(b->p + len_at, (uint32_t)(b->len - body));
        return;
    }
    case cJSON_Object:
        encode_object(b, c);
        return;
    default:
        put_u8(b, VD__PT_NULL);
        return;
    }
}

int vd_payload_encode(const cJSON *payload, uint8_t **out, size_t *out_len)
{
    struct buf b = {0};
    if (payload && !cJSON_IsNull(payload) && !cJSON_IsObject(payload))
        return VD_EINVAL;
    put_u8(&b, VD__PAYLOAD_VERSION);
    if (payload && cJSON_IsObject(payload))
        encode_value(&b, payload);
    else
        encode_value(&b, &(cJSON){.type = cJSON_Object});
    if (b.err) {
        free(b.p);
        return b.err;
    }
    *out = b.p;
    *out_len = b.len;
    return 0;
}

/* ---- validation --------------------------------------------------------------------------------
 */

#define VALIDATE_MAX_DEPTH 2048 /* deeper than any parser lets through; bounds our stack */

/* Checks the value at p (within [p, end)); returns the pointer past it or NULL. */
static const uint8_t *validate_value(const uint8_t *p, const uint8_t *end, int depth)
{
    if (p >= end || depth > VALIDATE_MAX_DEPTH)
        return NULL;
    size_t room = (size_t)(end - p);
    switch (*p) {
    case VD__PT_NULL:
    case VD__PT_FALSE:
    case VD__PT_TRUE:
        return p + 1;
    case VD__PT_INT:
    case VD__PT_DBL:
        return room >= 9 ? p + 9 : NULL;
    case VD__PT_STR:
        if (room < 5 || vd__filter_le32(p + 1) > room - 5)
            return NULL;
        return p + 5 + vd__filter_le32(p + 1);
    case VD__PT_ARR:
    case VD__PT_OBJ:
        break;
    default:
        return NULL;
    }
    if (room < 9)
        return NULL;
    uint32_t n = vd__filter_le32(p + 1), blen = vd__filter_le32(p + 5);
    if (blen > room - 9)
        return NULL;
    const uint8_t *body = p + 9, *bend = body + blen;
    if (*p == VD__PT_ARR) {
        const uint8_t *q = body;
        for (uint32_t i = 0; i < n; i++)
            if (!(q = validate_value(q, bend, depth + 1)))
                return NULL;
        return q == bend ? bend : NULL;
    }
    if ((uint64_t)n * VD__OBJ_ENTRY > blen)
        return NULL;
    /* Only the layout the encoder writes is accepted: the table, the keys in table order, then
     * the values in table order, back to back. Each byte then belongs to one value, so
     * validation is linear (a table whose entries all pointed at one big value would make it
     * exponential) and every later read stays inside the value it started in. */
    uint32_t at = n * VD__OBJ_ENTRY;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = body + (size_t)i * VD__OBJ_ENTRY;
        uint32_t ko = vd__filter_le32(e), kl = vd__filter_le32(e + 4);
        if (ko != at || kl > blen - at)
            return NULL;
        if (i > 0) {
            const uint8_t *pe = e - VD__OBJ_ENTRY;
            if (key_cmp((const char *)body + vd__filter_le32(pe), vd__filter_le32(pe + 4),
                        (const char *)body + ko, kl) >= 0)
                return NULL; /* binary search needs strictly sorted keys */
        }
        at += kl;
    }
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = body + (size_t)i * VD__OBJ_ENTRY;
        if (vd__filter_le32(e + 8) != at || at >= blen)
            return NULL;
        const uint8_t *next = validate_value(body + at, bend, depth + 1);
        if (!next)
            return NULL;
        at = (uint32_t)(next - body);
    }
    return at == blen ? bend : NULL;
}

int vd_payload_validate(const uint8_t *bin, size_t len)
{
    if (!bin || len == 0)
        return 0;
    if (len < 2 || bin[0] != VD__PAYLOAD_VERSION || bin[1] != VD__PT_OBJ)
        return VD_ECORRUPT;
    const uint8_t *end = validate_value(bin + 1, bin + len, 0);
    return end == bin + len ? 0 : VD_ECORRUPT;
}

/* ---- decoding -------------------------------------------------------------------------------- */

static cJSON *decode_value(const struct vd__filter_fv *v)
{
    switch (v->t) {
    case VD__FV_BOOL:
        return cJSON_CreateBool(v->b);
    case VD__FV_INT:
    case VD__FV_DBL: {
        /* Numbers carry their text as the strict parser's do, so writers print integers beyond
         * 2^53 exactly and a float such as 2.0 stays a float when read back. */
        char text[VD_JSON_DOUBLE_MAX + 4];
        if (v->t == VD__FV_INT) {
            snprintf(text, sizeof text, "%" PRId64, v->i);
        } else {
            vd_json_fmt_double(v->d, text);
            if (!strpbrk(text, ".eE"))
                strcat(text, ".0");
        }
        cJSON *c = cJSON_CreateNumber(v->d);
        char *lit = c ? cJSON_malloc(strlen(text) + 1) : NULL;
        if (!lit) {
            cJSON_Delete(c);
            return NULL;
        }
        strcpy(lit, text);
        c->valuestring = lit;
        return c;
    }
    case VD__FV_STR: {
        char *s = malloc((size_t)v->slen + 1);
        if (!s)
            return NULL;
        memcpy(s, v->s, v->slen);
        s[v->slen] = 0;
        cJSON *c = cJSON_CreateString(s);
        free(s);
        return c;
    }
    case VD__FV_ARR: {
        cJSON *a = cJSON_CreateArray();
        struct vd__filter_iter it;
        struct vd__filter_fv e;
        vd__filter_iter_init(v, &it);
        while (a && vd__filter_iter_next(&it, &e)) {
            cJSON *c = decode_value(&e);
            if (!c) {
                cJSON_Delete(a);
                return NULL;
            }
            cJSON_AddItemToArray(a, c); /* cannot fail: it only links c in */
        }
        return a;
    }
    case VD__FV_OBJ: {
        cJSON *o = cJSON_CreateObject();
        for (uint32_t i = 0; o && i < v->n; i++) {
            const uint8_t *e = v->body + (size_t)i * VD__OBJ_ENTRY;
            struct vd__filter_fv m;
            vd__filter_fv_bin(v->body + vd__filter_le32(e + 8), &m);
            uint32_t kl = vd__filter_le32(e + 4);
            char *k = malloc((size_t)kl + 1);
            cJSON *c = k ? decode_value(&m) : NULL;
            if (!c) {
                free(k);
                cJSON_Delete(o);
                return NULL;
            }
            memcpy(k, v->body + vd__filter_le32(e), kl);
            k[kl] = 0;
            bool added = cJSON_AddItemToObject(o, k, c);
            free(k);
            if (!added) { /* cJSON could not copy the key; c is still ours */
                cJSON_Delete(c);
                cJSON_Delete(o);
                return NULL;
            }
        }
        return o;
    }
    default:
        return cJSON_CreateNull();
    }
}

int vd_payload_decode(const uint8_t *bin, size_t len, cJSON **out)
{
    if (!bin || len == 0) {
        *out = cJSON_CreateObject();
        return *out ? 0 : VD_ENOMEM;
    }
    if (vd_payload_validate(bin, len))
        return VD_ECORRUPT;
    struct vd__filter_fv v;
    vd__filter_fv_bin(bin + 1, &v);
    *out = decode_value(&v);
    return *out ? 0 : VD_ENOMEM;
}
