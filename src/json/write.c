/*
 * Output side of the json module: shortest float/double text, the growable buffer and the JSON
 * writers built on it.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vectord/json.h"
#include "json_int.h"

/* ---- shortest float text ----------------------------------------------------------------- */

/*
 * Writes digits d[0,n) with decimal exponent x (value = d0.d1d2... * 10^x) as a JSON number that
 * reads as a float: positional with ".0" when integral for -4 <= x < 16, exponent form otherwise.
 * o has room for at least 24 bytes. Returns the length.
 */
static int place_digits(char *o, const char *d, int n, int x)
{
    char *p = o;
    if (x >= 0 && x < 16) {
        if (n <= x + 1) {
            memcpy(p, d, (size_t)n);
            p += n;
            for (int i = n; i <= x; i++)
                *p++ = '0';
            *p++ = '.';
            *p++ = '0';
        } else {
            memcpy(p, d, (size_t)x + 1);
            p += x + 1;
            *p++ = '.';
            memcpy(p, d + x + 1, (size_t)(n - x - 1));
            p += n - x - 1;
        }
    } else if (x < 0 && x >= -4) {
        *p++ = '0';
        *p++ = '.';
        for (int i = -1; i > x; i--)
            *p++ = '0';
        memcpy(p, d, (size_t)n);
        p += n;
    } else {
        *p++ = d[0];
        if (n > 1) {
            *p++ = '.';
            memcpy(p, d + 1, (size_t)n - 1);
            p += n - 1;
        }
        p += sprintf(p, "e%d", x);
    }
    *p = 0;
    return (int)(p - o);
}

/* Formats candidate integer c (p significant digits at scale 10^-s) into o; returns length. */
static int place_candidate(char *o, uint64_t c, int s)
{
    char d[24];
    int n = 0;
    char tmp[24];
    do {
        tmp[n++] = (char)('0' + c % 10);
        c /= 10;
    } while (c);
    for (int i = 0; i < n; i++)
        d[i] = tmp[n - 1 - i];
    int x = n - 1 - s; /* exponent of the first digit */
    while (n > 1 && d[n - 1] == '0')
        n--;
    return place_digits(o, d, n, x);
}

/* f's rounding interval and decimal exponent, shared by the candidate tries below. */
struct fmt_ctx {
    float f;
    double a;                    /* |f| */
    double lo_in, hi_in;         /* candidates strictly between these surely read back as f */
    double lo_out, hi_out;       /* candidates outside these surely do not */
    int E;                       /* 10^E <= a < 10^(E+1) */
};

/*
 * Finds the p-significant-digit decimal nearest to f, or its neighbour on the other side, that
 * reads back as f: returns its digits as an integer (value c * 10^-*s), or 0 if there is none.
 * o is scratch space for the rare strtof confirmation.
 */
static int64_t try_digits(const struct fmt_ctx *x, int p, int *s_out, char *o)
{
    int s = p - 1 - x->E;
    double sc = x->a * VD__P10(s);
    double nr = floor(sc + 0.5);
    int64_t cands[2] = {(int64_t)nr, sc > nr ? (int64_t)nr + 1 : (int64_t)nr - 1};
    *s_out = s;
    for (int k = 0; k < 2; k++) {
        int64_t c = cands[k];
        if (c <= 0)
            continue;
        double v = (double)c * VD__P10(-s);
        if (v < x->lo_out || v > x->hi_out)
            continue;
        if (v > x->lo_in && v < x->hi_in)
            return c;
        place_candidate(o, (uint64_t)c, s);
        if (strtof(o, NULL) == x->f)
            return c;
    }
    return 0;
}

/*
 * Shortest text: the smallest p in 1..9 for which a p-digit decimal lies inside f's rounding
 * interval (lo, hi); every decimal there reads back as f. The interval test is done in double
 * arithmetic, whose error (a few 1e-16 relative) is far below the interval's width (about 6e-8
 * relative); only a candidate within that error of an end point is confirmed with strtof.
 *
 * "Some p-digit decimal fits" is monotone in p (a p-digit decimal is also a (p+1)-digit one, and
 * trying the nearest candidate on each side of f finds one if any exists), so the search starts
 * at 8 digits, where most floats of real vectors land, and walks down or up from there instead of
 * trying nine lengths. Nine digits always suffice for float32.
 */
int vd_json_fmt_float(float f, char *buf)
{
    if (!isfinite(f)) {
        memcpy(buf, "null", 5);
        return 4;
    }
    char *o = buf;
    if (signbit(f)) {
        *o++ = '-';
        f = -f;
    }
    if (f == 0.0f) {
        memcpy(o, "0.0", 4);
        return (int)(o - buf) + 3;
    }
    struct fmt_ctx x;
    x.f = f;
    x.a = f;
    float prev = nextafterf(f, 0.0f), next = nextafterf(f, INFINITY);
    double lo = (x.a + (double)prev) * 0.5;
    double hi = isinf(next) ? x.a + (x.a - (double)prev) * 0.5 : (x.a + (double)next) * 0.5;
    const double tol = 1e-12;
    x.lo_in = lo + x.a * tol;
    x.hi_in = hi - x.a * tol;
    x.lo_out = lo - x.a * tol;
    x.hi_out = hi + x.a * tol;
    int e2;
    frexp(x.a, &e2);
    int E = (int)floor((e2 - 1) * 0.30102999566398120);
    while (E + 1 <= VD__P10_MAX && VD__P10(E + 1) <= x.a)
        E++;
    while (E > VD__P10_MIN && VD__P10(E) > x.a)
        E--;
    x.E = E;

    char tmp[VD_JSON_FLOAT_MAX];
    int s, best_s;
    int64_t best = try_digits(&x, 8, &best_s, tmp), c;
    if (best) {
        for (int p = 7; p >= 1 && (c = try_digits(&x, p, &s, tmp)) != 0; p--) {
            best = c;
            best_s = s;
        }
    } else {
        best = try_digits(&x, 9, &best_s, tmp);
    }
    if (best)
        return (int)(o - buf) + place_candidate(o, (uint64_t)best, best_s);
    int n;
    /* Not reached for finite floats; kept so a mistake above degrades to a longer text rather
     * than a wrong one. */
    for (int p = 1; p <= 9; p++) {
        n = snprintf(o, 24, "%.*g", p, (double)f);
        if (strtof(o, NULL) == f)
            return (int)(o - buf) + n;
    }
    return (int)(o - buf) + snprintf(o, 24, "%.9g", (double)f);
}

int vd_json_fmt_double(double d, char *buf)
{
    if (!isfinite(d)) {
        memcpy(buf, "null", 5);
        return 4;
    }
    int n = 0;
    for (int p = 15; p <= 17; p++) {
        n = snprintf(buf, VD_JSON_DOUBLE_MAX, "%.*g", p, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    return n;
}

/* ---- buffer ------------------------------------------------------------------------------ */

void vd_buf_init(struct vd_buf *b)
{
    memset(b, 0, sizeof(*b));
}

void vd_buf_release(struct vd_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

char *vd_buf_steal(struct vd_buf *b, size_t *len)
{
    char *d = b->data;
    size_t n = b->len;
    if (b->oom) {
        free(d);
        d = NULL;
        n = 0;
    } else if (!d) {
        d = calloc(1, 1);
    }
    memset(b, 0, sizeof(*b));
    if (len)
        *len = n;
    return d;
}

bool vd_buf_ok(const struct vd_buf *b)
{
    return !b->oom;
}

bool vd_buf_reserve(struct vd_buf *b, size_t n)
{
    if (b->oom)
        return false;
    if (b->cap - b->len > n) /* keep one byte for the NUL */
        return true;
    size_t need = b->len + n + 1;
    if (need < n) {
        b->oom = 1;
        return false;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    char *d = realloc(b->data, cap);
    if (!d) {
        b->oom = 1;
        return false;
    }
    b->data = d;
    b->cap = cap;
    return true;
}

void vd_buf_append(struct vd_buf *b, const void *p, size_t n)
{
    if (!vd_buf_reserve(b, n))
        return;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
}

void vd_buf_puts(struct vd_buf *b, const char *s)
{
    vd_buf_append(b, s, strlen(s));
}

void vd_buf_printf(struct vd_buf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = 1;
        return;
    }
    if ((size_t)n < sizeof(small)) {
        vd_buf_append(b, small, (size_t)n);
        return;
    }
    if (!vd_buf_reserve(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* ---- JSON writers ------------------------------------------------------------------------ */

void vd_buf_json_string(struct vd_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *c = (const unsigned char *)s, *e = c + n;
    /* Worst case is 6 output bytes per input byte (\u00XX); reserve a likely size and let the
     * slow path grow it. */
    if (!vd_buf_reserve(b, n + 2))
        return;
    b->data[b->len++] = '"';
    while (c < e) {
        const unsigned char *run = c;
        while (c < e && *c >= 0x20 && *c < 0x80 && *c != '"' && *c != '\\')
            c++;
        if (c > run)
            vd_buf_append(b, run, (size_t)(c - run));
        if (c >= e)
            break;
        unsigned char ch = *c;
        char esc[8];
        if (ch == '"' || ch == '\\') {
            esc[0] = '\\', esc[1] = (char)ch;
            vd_buf_append(b, esc, 2);
            c++;
        } else if (ch < 0x20) {
            esc[0] = '\\';
            switch (ch) {
            case '\b': esc[1] = 'b'; vd_buf_append(b, esc, 2); break;
            case '\f': esc[1] = 'f'; vd_buf_append(b, esc, 2); break;
            case '\n': esc[1] = 'n'; vd_buf_append(b, esc, 2); break;
            case '\r': esc[1] = 'r'; vd_buf_append(b, esc, 2); break;
            case '\t': esc[1] = 't'; vd_buf_append(b, esc, 2); break;
            default:
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[ch >> 4];
                esc[5] = hex[ch & 15];
                vd_buf_append(b, esc, 6);
            }
            c++;
        } else {
            size_t l = vd__json_utf8_len(c, e);
            if (l) {
                vd_buf_append(b, c, l);
                c += l;
            } else {
                vd_buf_append(b, "\xEF\xBF\xBD", 3); /* U+FFFD for a byte that is not UTF-8 */
                c++;
            }
        }
    }
    vd_buf_append(b, "\"", 1);
}

void vd_buf_json_floats(struct vd_buf *b, const float *v, size_t n)
{
    /* Room for a block of the longest possible texts is reserved up front so the inner loop
     * writes without checks; blocks keep the over-reservation small for long vectors. */
    enum { BLOCK = 256 };
    if (!vd_buf_reserve(b, 2))
        return;
    b->data[b->len++] = '[';
    for (size_t i = 0; i < n; i += BLOCK) {
        size_t end = n - i < BLOCK ? n : i + BLOCK;
        if (!vd_buf_reserve(b, (end - i) * (VD_JSON_FLOAT_MAX + 1)))
            return;
        char *o = b->data + b->len;
        for (size_t k = i; k < end; k++) {
            if (k)
                *o++ = ',';
            o += vd_json_fmt_float(v[k], o);
        }
        b->len = (size_t)(o - b->data);
    }
    vd_buf_append(b, "]", 1);
}

void vd_buf_json_pid(struct vd_buf *b, const struct vd_pid *id)
{
    char s[VD_PID_STR_MAX + 2];
    vd_pid_format(id, s + 1);
    if (id->type == VD_PID_NUM) {
        vd_buf_puts(b, s + 1);
        return;
    }
    size_t n = strlen(s + 1);
    s[0] = '"';
    s[n + 1] = '"';
    vd_buf_append(b, s, n + 2);
}

void vd_buf_json(struct vd_buf *b, const cJSON *item)
{
    char num[VD_JSON_DOUBLE_MAX];
    if (!item) {
        vd_buf_append(b, "null", 4);
        return;
    }
    switch (item->type & 0xFF) {
    case cJSON_False:
        vd_buf_append(b, "false", 5);
        return;
    case cJSON_True:
        vd_buf_append(b, "true", 4);
        return;
    case cJSON_Number:
        if (item->valuestring)
            vd_buf_puts(b, item->valuestring);
        else
            vd_buf_append(b, num, (size_t)vd_json_fmt_double(item->valuedouble, num));
        return;
    case cJSON_String:
        if (item->valuestring)
            vd_buf_json_string(b, item->valuestring, strlen(item->valuestring));
        else
            vd_buf_append(b, "\"\"", 2);
        return;
    case cJSON_Raw:
        if (item->valuestring)
            vd_buf_puts(b, item->valuestring);
        else
            vd_buf_append(b, "null", 4);
        return;
    case cJSON_Array:
        vd_buf_append(b, "[", 1);
        for (const cJSON *c = item->child; c; c = c->next) {
            if (c != item->child)
                vd_buf_append(b, ",", 1);
            vd_buf_json(b, c);
        }
        vd_buf_append(b, "]", 1);
        return;
    case cJSON_Object:
        vd_buf_append(b, "{", 1);
        for (const cJSON *c = item->child; c; c = c->next) {
            if (c != item->child)
                vd_buf_append(b, ",", 1);
            const char *k = c->string ? c->string : "";
            vd_buf_json_string(b, k, strlen(k));
            vd_buf_append(b, ":", 1);
            vd_buf_json(b, c);
        }
        vd_buf_append(b, "}", 1);
        return;
    default: /* cJSON_NULL and cJSON_Invalid */
        vd_buf_append(b, "null", 4);
        return;
    }
}
