/*
 * Strict JSON reader producing cJSON trees (RFC 8259 and nothing more).
 *
 * Recursive descent with an explicit depth bound, so the C stack is bounded by max_depth. Nodes
 * are linked the way cJSON links them (parent->child is the first element, first->prev is the
 * last one, last->next is NULL) without cJSON_AddItemToArray's walk to the end, which is
 * quadratic on long arrays in older cJSON releases.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vectord/json.h"
#include "json_int.h"

struct parser {
    const unsigned char *p;   /* start of body */
    const unsigned char *end; /* one past the last byte */
    const unsigned char *cur;
    int max_depth;
    struct vd_err *err;
    int rc; /* first error code (VD_EINVAL or VD_ENOMEM) */
};

static int fail(struct parser *ps, const unsigned char *at, const char *what)
{
    if (ps->rc == 0) {
        ps->rc = VD_EINVAL;
        vd_errf(ps->err, VD_EINVAL, "invalid JSON at byte %zu: %s", (size_t)(at - ps->p), what);
    }
    return VD_EINVAL;
}

static int fail_nomem(struct parser *ps)
{
    if (ps->rc == 0) {
        ps->rc = VD_ENOMEM;
        vd_errf(ps->err, VD_ENOMEM, "out of memory while parsing JSON");
    }
    return VD_ENOMEM;
}

static void skip_ws(struct parser *ps)
{
    const unsigned char *c = ps->cur, *e = ps->end;
    while (c < e && (*c == ' ' || *c == '\n' || *c == '\r' || *c == '\t'))
        c++;
    ps->cur = c;
}

static cJSON *new_node(struct parser *ps, int type)
{
    cJSON *n = cJSON_malloc(sizeof(*n));
    if (!n) {
        fail_nomem(ps);
        return NULL;
    }
    memset(n, 0, sizeof(*n));
    n->type = type;
    return n;
}

/* ---- numbers ----------------------------------------------------------------------------- */

/* Exact powers of ten representable in a double (10^22 is the last one). */
static const double pow10_exact[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                       1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                       1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/*
 * Eisel-Lemire: the double nearest to w * 10^q (w != 0), as IEEE bits in *bits, or false when
 * this method cannot decide (the product is too close to a rounding boundary for the 128-bit
 * approximation of 5^q to tell, a possible exact halfway case, a subnormal or infinite result,
 * or q outside the table) and the caller must use an exact method.
 *
 * 10^q = 5^q * 2^q, and the table holds 5^q's top 128 bits, so the top bits of w * 5^q come from
 * one 64x64 multiply (a second one when the first leaves the bits that decide rounding uncertain)
 * and the power of two only moves the binary exponent. The product is within w units of the
 * lowest word of the exact value, so when the 9 bits below the 54 kept ones are all ones and
 * adding w to the low word would carry, the carry might change the kept bits: look at the next
 * 64 bits of 5^q, and give up if even that leaves a possible carry.
 */
static bool eisel_lemire(uint64_t w, int q, uint64_t *bits)
{
    if (q < VD__P5_MIN || q > VD__P5_MAX)
        return false;
    int lz = __builtin_clzll(w);
    w <<= lz;
    const uint64_t *p5 = vd__json_pow5[q - VD__P5_MIN];
    unsigned __int128 x = (unsigned __int128)w * p5[0];
    uint64_t hi = (uint64_t)(x >> 64), lo = (uint64_t)x;
    if ((hi & 0x1FF) == 0x1FF && lo + w < w) {
        unsigned __int128 y = (unsigned __int128)w * p5[1];
        uint64_t yhi = (uint64_t)(y >> 64), ylo = (uint64_t)y;
        uint64_t mlo = lo + yhi, mhi = hi + (mlo < lo);
        if ((mhi & 0x1FF) == 0x1FF && mlo + 1 == 0 && ylo + w < w)
            return false;
        hi = mhi;
        lo = mlo;
    }
    /* 54 bits: the 53 of the result and one for rounding. */
    uint64_t msb = hi >> 63;
    uint64_t mant = hi >> (msb + 9);
    /* floor(q * log2(10)) + 64 + bias - lz, exact for |q| < 1500; the shift is arithmetic with
     * gcc and clang. */
    int64_t e2 = ((217706 * (int64_t)q) >> 16) + 64 + 1023 - lz - (int64_t)(1 ^ msb);
    /* Exactly halfway, as far as these bits show: ties-to-even needs the exact value. */
    if (lo == 0 && (hi & 0x1FF) == 0 && (mant & 3) == 1)
        return false;
    mant += mant & 1;
    mant >>= 1;
    if (mant >> 53) {
        mant >>= 1;
        e2++;
    }
    if (e2 <= 0 || e2 >= 0x7FF)
        return false;
    *bits = ((uint64_t)e2 << 52) | (mant & ((UINT64_C(1) << 52) - 1));
    return true;
}

/* A number literal as decimal significand and exponent: the value is (-1)^neg * w * 10^q, with
 * w holding at most 19 significant digits; dropped says nonzero digits did not fit in w. */
struct decimal {
    uint64_t w;
    int64_t q;
    bool neg, dropped;
};

/*
 * Correctly rounded double of d, the literal s[0,n). With w <= 2^53 and |q| <= 22 both w and
 * 10^|q| are exact doubles and one IEEE multiply or divide rounds once (Clinger). Otherwise
 * Eisel-Lemire decides almost always; when it cannot, strtod reads the text. Beyond 19 digits w
 * is truncated: if w * 10^q and (w + 1) * 10^q round to the same double, so does everything
 * between them, the literal included.
 */
static double decimal_to_double(const struct decimal *d, const char *s, size_t n)
{
    if (d->w == 0)
        return d->neg ? -0.0 : 0.0;
    if (!d->dropped && d->w <= (UINT64_C(1) << 53) && d->q >= -22 && d->q <= 22) {
        double v = (double)d->w;
        v = d->q < 0 ? v / pow10_exact[-d->q] : v * pow10_exact[d->q];
        return d->neg ? -v : v;
    }
    if (d->q >= VD__P5_MIN && d->q <= VD__P5_MAX) {
        uint64_t bits, bits_up;
        if (eisel_lemire(d->w, (int)d->q, &bits) &&
            (!d->dropped || (eisel_lemire(d->w + 1, (int)d->q, &bits_up) && bits_up == bits))) {
            bits |= (uint64_t)d->neg << 63;
            double v;
            memcpy(&v, &bits, sizeof(v));
            return v;
        }
    }
    /* strtod needs a NUL-terminated string; number texts are short unless someone sends
     * thousands of digits, which we copy to the heap. */
    char small[128];
    char *tmp = n < sizeof(small) ? small : malloc(n + 1);
    if (!tmp)
        return NAN; /* treated as invalid by the caller; only on allocation failure */
    memcpy(tmp, s, n);
    tmp[n] = 0;
    double v = strtod(tmp, NULL);
    if (tmp != small)
        free(tmp);
    return v;
}

/* Appends the digits at c to d (fraction digits also lower the exponent); returns the first
 * byte that is not a digit. */
static const unsigned char *scan_digits(const unsigned char *c, const unsigned char *e,
                                        struct decimal *d, bool fraction)
{
    uint64_t w = d->w;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    /* Eight digits at a time while they still fit in 19: vector texts have 9 to 17 digits, and
     * the one-at-a-time loop is a chain of dependent multiplies. */
    while (e - c >= 8 && w < UINT64_C(100000000000)) {
        uint64_t v;
        memcpy(&v, c, 8);
        /* Every byte in '0'..'9': high nibble 3, and adding 6 must not carry into it. */
        if (((v & UINT64_C(0xF0F0F0F0F0F0F0F0)) |
             (((v + UINT64_C(0x0606060606060606)) & UINT64_C(0xF0F0F0F0F0F0F0F0)) >> 4)) !=
            UINT64_C(0x3333333333333333))
            break;
        v -= UINT64_C(0x3030303030303030);
        /* Pairs, then quads, then the whole: the first byte is the most significant digit. */
        v = (v * 10) + (v >> 8); /* bytes 0,2,4,6 hold 2-digit values */
        v = (((v & UINT64_C(0x000000FF000000FF)) * (100 + (UINT64_C(1000000) << 32))) +
             (((v >> 16) & UINT64_C(0x000000FF000000FF)) * (1 + (UINT64_C(10000) << 32)))) >>
            32;
        w = w * 100000000 + (uint32_t)v;
        d->q -= fraction ? 8 : 0;
        c += 8;
    }
#endif
    while (c < e && *c >= '0' && *c <= '9') {
        unsigned dig = (unsigned)(*c - '0');
        if (w < UINT64_C(1000000000000000000)) { /* fewer than 19 digits so far */
            w = w * 10 + dig;
            d->q -= fraction;
        } else {
            d->q += !fraction;
            d->dropped |= dig != 0;
        }
        c++;
    }
    d->w = w;
    return c;
}

/* Reads the exponent digits at c into *ex, saturating (larger exponents all mean 0 or
 * infinity); returns the first byte that is not a digit. */
static const unsigned char *scan_exponent(const unsigned char *c, const unsigned char *e,
                                          int64_t *ex)
{
    int64_t v = 0;
    while (c < e && *c >= '0' && *c <= '9') {
        if (v < 100000)
            v = v * 10 + (*c - '0');
        c++;
    }
    *ex = v;
    return c;
}

double vd__json_text_to_double(const char *s, size_t n)
{
    const unsigned char *c = (const unsigned char *)s, *e = c + n, *p;
    struct decimal d = {0};
    if (c < e && *c == '-') {
        d.neg = true;
        c++;
    }
    p = c;
    c = scan_digits(c, e, &d, false);
    if (c == p)
        goto slow;
    if (c < e && *c == '.') {
        p = ++c;
        c = scan_digits(c, e, &d, true);
        if (c == p)
            goto slow;
    }
    if (c < e && (*c == 'e' || *c == 'E')) {
        bool eneg = false;
        int64_t ex;
        c++;
        if (c < e && (*c == '-' || *c == '+'))
            eneg = *c++ == '-';
        p = c;
        c = scan_exponent(c, e, &ex);
        if (c == p)
            goto slow;
        d.q += eneg ? -ex : ex;
    }
    if (c != e)
        goto slow;
    return decimal_to_double(&d, s, n);
slow:
    d = (struct decimal){.w = 1, .q = VD__P5_MAX + 1}; /* out of every fast range */
    return decimal_to_double(&d, s, n);
}

/*
 * Number nodes carry their literal in the same allocation, right after the cJSON struct, and are
 * flagged cJSON_IsReference so cJSON_Delete frees the block once instead of also freeing
 * valuestring (the flag means nothing else for an item without children; cJSON_Duplicate
 * clears it and copies the text). A 1536-float vector thus costs 1536 allocations, not 3072.
 */
static int parse_number(struct parser *ps, cJSON **out)
{
    const unsigned char *start = ps->cur, *c = ps->cur, *e = ps->end;
    struct decimal d = {0};
    if (*c == '-') {
        d.neg = true;
        c++;
    }
    if (c >= e)
        return fail(ps, c, "truncated number");
    if (*c == '0') {
        c++;
        if (c < e && *c >= '0' && *c <= '9')
            return fail(ps, c - 1, "leading zero in number");
    } else if (*c >= '1' && *c <= '9') {
        c = scan_digits(c, e, &d, false);
    } else if (*c == 'I' || *c == 'N' || *c == 'i' || *c == 'n') {
        return fail(ps, start, "NaN and Infinity are not JSON");
    } else {
        return fail(ps, c, "expected a digit");
    }
    if (c < e && *c == '.') {
        c++;
        if (c >= e || *c < '0' || *c > '9')
            return fail(ps, c, "expected a digit after the decimal point");
        c = scan_digits(c, e, &d, true);
    }
    if (c < e && (*c == 'e' || *c == 'E')) {
        bool eneg = false;
        int64_t ex;
        c++;
        if (c < e && (*c == '+' || *c == '-'))
            eneg = *c++ == '-';
        if (c >= e || *c < '0' || *c > '9')
            return fail(ps, c, "expected a digit in the exponent");
        c = scan_exponent(c, e, &ex);
        d.q += eneg ? -ex : ex;
    }
    size_t n = (size_t)(c - start);
    double v = decimal_to_double(&d, (const char *)start, n);
    if (isnan(v)) /* only from a failed temporary allocation: the grammar admits no NaN */
        return fail_nomem(ps);
    if (!isfinite(v))
        return fail(ps, start, "number is out of range (not a finite double)");
    cJSON *node = cJSON_malloc(sizeof(*node) + n + 1);
    if (!node)
        return fail_nomem(ps);
    memset(node, 0, sizeof(*node));
    node->type = cJSON_Number | cJSON_IsReference;
    node->valuestring = (char *)(node + 1);
    memcpy(node->valuestring, start, n);
    node->valuestring[n] = 0;
    node->valuedouble = v;
    if (v >= 2147483647.0)
        node->valueint = 2147483647;
    else if (v <= -2147483648.0)
        node->valueint = -2147483647 - 1;
    else
        node->valueint = (int)v;
    ps->cur = c;
    *out = node;
    return 0;
}

/* ---- strings ----------------------------------------------------------------------------- */

static int hex4(const unsigned char *c, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char h = c[i];
        v <<= 4;
        if (h >= '0' && h <= '9')
            v |= (uint32_t)(h - '0');
        else if (h >= 'a' && h <= 'f')
            v |= (uint32_t)(h - 'a' + 10);
        else if (h >= 'A' && h <= 'F')
            v |= (uint32_t)(h - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/*
 * Length of the valid UTF-8 sequence starting at c (lead byte >= 0x80), or 0 if it is invalid
 * (overlong forms, UTF-16 surrogates, code points above U+10FFFF, truncated). Follows the
 * well-formed byte sequence table of Unicode 15 §3.9 (table 3-7).
 */
size_t vd__json_utf8_len(const unsigned char *c, const unsigned char *e)
{
    unsigned char b0 = c[0];
    size_t avail = (size_t)(e - c);
    unsigned char lo = 0x80, hi = 0xBF;
    size_t n;
    if (b0 >= 0xC2 && b0 <= 0xDF)
        n = 2;
    else if (b0 >= 0xE0 && b0 <= 0xEF) {
        n = 3;
        if (b0 == 0xE0)
            lo = 0xA0;
        else if (b0 == 0xED)
            hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        n = 4;
        if (b0 == 0xF0)
            lo = 0x90;
        else if (b0 == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (avail < n)
        return 0;
    if (c[1] < lo || c[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (c[i] < 0x80 || c[i] > 0xBF)
            return 0;
    return n;
}

static size_t put_utf8(unsigned char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/*
 * Reads a string starting at the opening quote into a cJSON_malloc'd NUL-terminated buffer.
 * Two passes: the first validates and finds the closing quote, the second copies and decodes
 * escapes into a buffer of the raw length (escapes only ever shrink).
 */
static int parse_string_raw(struct parser *ps, char **out)
{
    const unsigned char *c = ps->cur + 1, *e = ps->end, *start = c;
    bool escapes = false;
    for (;;) {
        if (c >= e)
            return fail(ps, c, "unterminated string");
        unsigned char ch = *c;
        if (ch == '"')
            break;
        if (ch < 0x20)
            return fail(ps, c, "control character in string (must be escaped)");
        if (ch == '\\') {
            escapes = true;
            if (c + 1 >= e)
                return fail(ps, c, "unterminated string");
            unsigned char x = c[1];
            if (x == 'u') {
                uint32_t cp;
                if (e - c < 6 || hex4(c + 2, &cp))
                    return fail(ps, c, "bad \\u escape (needs 4 hex digits)");
                if (cp == 0)
                    return fail(ps, c, "\\u0000 is not supported in strings");
                if (cp >= 0xDC00 && cp <= 0xDFFF)
                    return fail(ps, c, "unpaired low surrogate in \\u escape");
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    uint32_t lo;
                    if (e - c < 12 || c[6] != '\\' || c[7] != 'u' || hex4(c + 8, &lo) ||
                        lo < 0xDC00 || lo > 0xDFFF)
                        return fail(ps, c, "unpaired high surrogate in \\u escape");
                    c += 12;
                } else {
                    c += 6;
                }
                continue;
            }
            if (x != '"' && x != '\\' && x != '/' && x != 'b' && x != 'f' && x != 'n' &&
                x != 'r' && x != 't')
                return fail(ps, c, "bad escape in string");
            c += 2;
            continue;
        }
        if (ch >= 0x80) {
            size_t n = vd__json_utf8_len(c, e);
            if (!n)
                return fail(ps, c, "invalid UTF-8 in string");
            c += n;
            continue;
        }
        c++;
    }
    size_t raw = (size_t)(c - start);
    char *s = cJSON_malloc(raw + 1);
    if (!s)
        return fail_nomem(ps);
    if (!escapes) {
        memcpy(s, start, raw);
        s[raw] = 0;
    } else {
        unsigned char *o = (unsigned char *)s;
        const unsigned char *r = start;
        while (r < c) {
            if (*r != '\\') {
                *o++ = *r++;
                continue;
            }
            unsigned char x = r[1];
            switch (x) {
            case 'b': *o++ = '\b'; r += 2; break;
            case 'f': *o++ = '\f'; r += 2; break;
            case 'n': *o++ = '\n'; r += 2; break;
            case 'r': *o++ = '\r'; r += 2; break;
            case 't': *o++ = '\t'; r += 2; break;
            case 'u': {
                uint32_t cp = 0, lo = 0;
                hex4(r + 2, &cp);
                r += 6;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    hex4(r + 2, &lo);
                    r += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                o += put_utf8(o, cp);
                break;
            }
            default: *o++ = x; r += 2; break; /* " \ / */
            }
        }
        *o = 0;
    }
    ps->cur = c + 1;
    *out = s;
    return 0;
}

/* ---- containers -------------------------------------------------------------------------- */

static int parse_value(struct parser *ps, int depth, cJSON **out);

static void link_child(cJSON *parent, cJSON **last, cJSON *item)
{
    if (!*last) {
        parent->child = item;
    } else {
        (*last)->next = item;
        item->prev = *last;
    }
    *last = item;
    parent->child->prev = item;
}

static int parse_array(struct parser *ps, int depth, cJSON **out)
{
    const unsigned char *open = ps->cur;
    if (depth > ps->max_depth) {
        char m[96];
        snprintf(m, sizeof(m), "nesting deeper than the limit of %d levels", ps->max_depth);
        return fail(ps, open, m);
    }
    cJSON *arr = new_node(ps, cJSON_Array), *last = NULL;
    if (!arr)
        return VD_ENOMEM;
    ps->cur++;
    skip_ws(ps);
    if (ps->cur < ps->end && *ps->cur == ']') {
        ps->cur++;
        *out = arr;
        return 0;
    }
    for (;;) {
        cJSON *item = NULL;
        int rc = parse_value(ps, depth, &item);
        if (rc)
            goto out_delete_array;
        link_child(arr, &last, item);
        skip_ws(ps);
        if (ps->cur >= ps->end) {
            rc = fail(ps, ps->cur, "unterminated array");
            goto out_delete_array;
        }
        if (*ps->cur == ',') {
            ps->cur++;
            continue;
        }
        if (*ps->cur == ']') {
            ps->cur++;
            break;
        }
        rc = fail(ps, ps->cur, "expected ',' or ']' in array");
        goto out_delete_array;
    }
    *out = arr;
    return 0;

out_delete_array:
    cJSON_Delete(arr);
    return ps->rc;
}

struct member_ref {
    cJSON *item;
    size_t pos;
};

static int member_cmp(const void *a, const void *b)
{
    const struct member_ref *x = a, *y = b;
    int c = strcmp(x->item->string, y->item->string);
    if (c)
        return c;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static void unlink_member(cJSON *obj, cJSON *item)
{
    if (item == obj->child) {
        obj->child = item->next;
        if (item->next)
            item->next->prev = item->prev; /* keep first->prev == last */
    } else {
        item->prev->next = item->next;
        if (item->next)
            item->next->prev = item->prev;
        else
            obj->child->prev = item->prev;
    }
    item->next = item->prev = NULL;
    cJSON_Delete(item);
}

/*
 * Drops all but the last member of each key, in place. Small objects compare pairwise; large
 * ones sort references so a hostile object with many keys costs O(n log n), not O(n^2).
 */
static int dedupe_members(struct parser *ps, cJSON *obj, size_t count)
{
    if (count < 2)
        return 0;
    if (count <= 16) {
        cJSON *a = obj->child;
        while (a) {
            cJSON *next = a->next;
            for (cJSON *b = a->next; b; b = b->next) {
                if (strcmp(a->string, b->string) == 0) {
                    unlink_member(obj, a);
                    break;
                }
            }
            a = next;
        }
        return 0;
    }
    struct member_ref *refs = malloc(count * sizeof(*refs));
    if (!refs)
        return fail_nomem(ps);
    size_t i = 0;
    for (cJSON *a = obj->child; a; a = a->next, i++)
        refs[i] = (struct member_ref){a, i};
    qsort(refs, count, sizeof(*refs), member_cmp);
    for (i = 0; i + 1 < count; i++)
        if (strcmp(refs[i].item->string, refs[i + 1].item->string) == 0)
            unlink_member(obj, refs[i].item);
    free(refs);
    return 0;
}

static int parse_object(struct parser *ps, int depth, cJSON **out)
{
    const unsigned char *open = ps->cur;
    if (depth > ps->max_depth) {
        char m[96];
        snprintf(m, sizeof(m), "nesting deeper than the limit of %d levels", ps->max_depth);
        return fail(ps, open, m);
    }
    cJSON *obj = new_node(ps, cJSON_Object), *last = NULL;
    size_t count = 0;
    int rc;
    if (!obj)
        return VD_ENOMEM;
    ps->cur++;
    skip_ws(ps);
    if (ps->cur < ps->end && *ps->cur == '}') {
        ps->cur++;
        *out = obj;
        return 0;
    }
    for (;;) {
        char *key = NULL;
        cJSON *item = NULL;
        if (ps->cur >= ps->end) {
            rc = fail(ps, ps->cur, "unterminated object");
            goto out_delete_object;
        }
        if (*ps->cur != '"') {
            rc = fail(ps, ps->cur, "expected a string key in object");
            goto out_delete_object;
        }
        rc = parse_string_raw(ps, &key);
        if (rc)
            goto out_delete_object;
        skip_ws(ps);
        if (ps->cur >= ps->end || *ps->cur != ':') {
            cJSON_free(key);
            rc = fail(ps, ps->cur, "expected ':' after object key");
            goto out_delete_object;
        }
        ps->cur++;
        rc = parse_value(ps, depth, &item);
        if (rc) {
            cJSON_free(key);
            goto out_delete_object;
        }
        item->string = key;
        link_child(obj, &last, item);
        count++;
        skip_ws(ps);
        if (ps->cur >= ps->end) {
            rc = fail(ps, ps->cur, "unterminated object");
            goto out_delete_object;
        }
        if (*ps->cur == ',') {
            ps->cur++;
            skip_ws(ps);
            continue;
        }
        if (*ps->cur == '}') {
            ps->cur++;
            break;
        }
        rc = fail(ps, ps->cur, "expected ',' or '}' in object");
        goto out_delete_object;
    }
    rc = dedupe_members(ps, obj, count);
    if (rc)
        goto out_delete_object;
    *out = obj;
    return 0;

out_delete_object:
    cJSON_Delete(obj);
    return ps->rc;
}

static int parse_literal(struct parser *ps, const char *word, size_t n, int type, cJSON **out)
{
    if ((size_t)(ps->end - ps->cur) < n || memcmp(ps->cur, word, n) != 0)
        return fail(ps, ps->cur, "unexpected character");
    cJSON *node = new_node(ps, type);
    if (!node)
        return VD_ENOMEM;
    if (type == cJSON_True)
        node->valueint = 1, node->valuedouble = 1;
    ps->cur += n;
    *out = node;
    return 0;
}

static int parse_value(struct parser *ps, int depth, cJSON **out)
{
    skip_ws(ps);
    if (ps->cur >= ps->end)
        return fail(ps, ps->cur, "unexpected end of input");
    unsigned char ch = *ps->cur;
    switch (ch) {
    case '{':
        return parse_object(ps, depth + 1, out);
    case '[':
        return parse_array(ps, depth + 1, out);
    case '"': {
        char *s;
        int rc = parse_string_raw(ps, &s);
        if (rc)
            return rc;
        cJSON *node = new_node(ps, cJSON_String);
        if (!node) {
            cJSON_free(s);
            return VD_ENOMEM;
        }
        node->valuestring = s;
        *out = node;
        return 0;
    }
    case 't':
        return parse_literal(ps, "true", 4, cJSON_True, out);
    case 'f':
        return parse_literal(ps, "false", 5, cJSON_False, out);
    case 'n':
        if (ps->end - ps->cur >= 3 && memcmp(ps->cur, "nan", 3) == 0)
            return fail(ps, ps->cur, "NaN and Infinity are not JSON");
        return parse_literal(ps, "null", 4, cJSON_NULL, out);
    case 'N':
    case 'I':
    case 'i':
        return fail(ps, ps->cur, "NaN and Infinity are not JSON");
    case '+':
        return fail(ps, ps->cur, "'+' sign is not allowed in numbers");
    case '.':
        return fail(ps, ps->cur, "number must start with a digit");
    case '-':
        if (ps->end - ps->cur >= 2 && (ps->cur[1] == 'I' || ps->cur[1] == 'i' || ps->cur[1] == 'N'))
            return fail(ps, ps->cur, "NaN and Infinity are not JSON");
        return parse_number(ps, out);
    default:
        if (ch >= '0' && ch <= '9')
            return parse_number(ps, out);
        if (ch == ']' || ch == '}')
            return fail(ps, ps->cur, "expected a value");
        return fail(ps, ps->cur, "unexpected character");
    }
}

int vd_json_parse(const char *body, size_t len, int max_depth, cJSON **out, struct vd_err *err)
{
    cJSON *root = NULL;
    *out = NULL;
    if (!body && len)
        return vd_errf(err, VD_EINVAL, "invalid JSON at byte 0: no body");
    if (!body)
        body = "";
    struct parser ps = {
        .p = (const unsigned char *)body,
        .end = (const unsigned char *)body + len,
        .cur = (const unsigned char *)body,
        /* Each level costs a few C stack frames; the clamp keeps a careless limit from turning
         * a hostile body into a stack overflow. */
        .max_depth = max_depth <= 0 ? VD_JSON_MAX_DEPTH
                                    : max_depth > VD_JSON_DEPTH_CLAMP ? VD_JSON_DEPTH_CLAMP
                                                                      : max_depth,
        .err = err,
    };
    skip_ws(&ps);
    if (ps.cur >= ps.end)
        return vd_errf(err, VD_EINVAL, "invalid JSON at byte %zu: empty body", len);
    if (parse_value(&ps, 0, &root))
        return ps.rc;
    skip_ws(&ps);
    if (ps.cur < ps.end) {
        cJSON_Delete(root);
        return fail(&ps, ps.cur, "trailing characters after the JSON value");
    }
    *out = root;
    return 0;
}

void vd_json_set_number(cJSON *item, double v)
{
    if (!item)
        return;
    if (item->valuestring && !(item->type & cJSON_IsReference))
        cJSON_free(item->valuestring);
    else if (cJSON_IsNumber(item))
        item->type &= ~cJSON_IsReference; /* the literal was part of the node (parse_number) */
    item->valuestring = NULL;
    cJSON_SetNumberHelper(item, v);
}
