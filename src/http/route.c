/* Routing (pattern segments with captures), URL decoding, API keys and JSON string escaping. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "http_int.h"

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

long vd_http_url_decode(const char *src, size_t len, char *dst, bool plus_space)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = src[i];
        if (c == '%') {
            if (i + 2 >= len)
                return VD_EINVAL;
            int hi = hexval((unsigned char)src[i + 1]);
            int lo = hexval((unsigned char)src[i + 2]);
            if (hi < 0 || lo < 0)
                return VD_EINVAL;
            c = (char)(hi * 16 + lo);
            if (c == '\0') /* would cut the string short: a classic path-smuggling trick */
                return VD_EINVAL;
            i += 2;
        } else if (c == '+' && plus_space) {
            c = ' ';
        } else if (c == '\0') {
            return VD_EINVAL;
        }
        dst[o++] = c;
    }
    dst[o] = '\0';
    return (long)o;
}

int vd__http_route_add(struct vd_http *h, const char *method, const char *pattern,
                       enum vd_role min_role, vd_http_handler fn,
                       const struct vd_http_stream_ops *ops, void *ctx)
{
    if (h->started || !method || !pattern || pattern[0] != '/' || !fn ||
        strlen(method) >= sizeof(((struct vd_http_route *)0)->method) || min_role < VD_ROLE_NONE ||
        min_role > VD_ROLE_ADMIN)
        return VD_EINVAL;
    if (ops && (!ops->chunk || !ops->end || !ops->abort))
        return VD_EINVAL;
    struct vd_http_route *rt = calloc(1, sizeof(*rt));
    if (!rt)
        return VD_ENOMEM;
    rt->text = strdup(pattern + 1);
    if (!rt->text) {
        free(rt);
        return VD_ENOMEM;
    }
    strcpy(rt->method, method);
    rt->pattern = pattern;
    rt->min_role = min_role;
    rt->fn = fn;
    rt->ops = ops;
    rt->ctx = ctx;
    unsigned n_cap = 0;
    char *p = rt->text;
    if (*p) {
        for (;;) {
            char *slash = strchr(p, '/');
            size_t len = slash ? (size_t)(slash - p) : strlen(p);
            if (rt->n_segs == VD_HTTP_MAX_SEGS || len == 0)
                goto out_free_route;
            bool cap = len >= 3 && p[0] == '{' && p[len - 1] == '}';
            if (cap) {
                if (++n_cap > VD_HTTP_MAX_PARAMS)
                    goto out_free_route;
                rt->segs[rt->n_segs].s = p + 1;
                rt->segs[rt->n_segs].len = len - 2;
                p[len - 1] = '\0';
            } else {
                rt->segs[rt->n_segs].s = p;
                rt->segs[rt->n_segs].len = len;
            }
            rt->segs[rt->n_segs].capture = cap;
            rt->n_segs++;
            if (!slash)
                break;
            *slash = '\0';
            p = slash + 1;
        }
    }
    *h->routes_tail = rt;
    h->routes_tail = &rt->next;
    return 0;

out_free_route:
    free(rt->text);
    free(rt);
    return VD_EINVAL;
}

void vd__http_routes_free(struct vd_http *h)
{
    struct vd_http_route *rt = h->routes, *next;
    for (; rt; rt = next) {
        next = rt->next;
        free(rt->text);
        free(rt);
    }
    h->routes = NULL;
    h->routes_tail = &h->routes;
}

static bool method_matches(const struct vd_http_route *rt, const char *method)
{
    if (strcmp(rt->method, method) == 0)
        return true;
    return strcmp(method, "HEAD") == 0 && strcmp(rt->method, "GET") == 0;
}

/*
 * Finds the route for (method, raw_path). Segments are split on the raw text first and decoded
 * one by one, so an escaped "%2F" stays inside its segment. On a match the captures are stored in
 * r. *path_known tells whether some route has this path under another method (405, not 404);
 * *bad_path is set for a malformed escape (400).
 */
struct vd_http_route *vd__http_match(struct vd_http *h, const char *method, const char *raw_path,
                                     struct vd_http_req *r, bool *path_known, bool *bad_path)
{
    *path_known = false;
    *bad_path = false;
    if (raw_path[0] != '/') {
        *bad_path = true;
        return NULL;
    }
    size_t plen = strlen(raw_path + 1);
    char *dec = malloc(plen + 1);
    if (!dec)
        return NULL;
    const char *seg_s[VD_HTTP_MAX_SEGS];
    size_t seg_len[VD_HTTP_MAX_SEGS];
    unsigned n = 0;
    size_t o = 0;
    const char *p = raw_path + 1;
    if (*p) {
        for (;;) {
            const char *slash = strchr(p, '/');
            size_t len = slash ? (size_t)(slash - p) : strlen(p);
            if (n == VD_HTTP_MAX_SEGS) /* longer than any route */
                goto out_free_dec;
            long dl = vd_http_url_decode(p, len, dec + o, false);
            if (dl < 0) {
                *bad_path = true;
                goto out_free_dec;
            }
            seg_s[n] = dec + o;
            seg_len[n] = (size_t)dl;
            n++;
            o += (size_t)dl + 1;
            if (!slash)
                break;
            p = slash + 1;
        }
    }
    struct vd_http_route *found = NULL;
    for (struct vd_http_route *rt = h->routes; rt; rt = rt->next) {
        if (rt->n_segs != n)
            continue;
        bool ok = true;
        for (unsigned i = 0; i < n && ok; i++) {
            if (rt->segs[i].capture)
                ok = seg_len[i] > 0;
            else
                ok = rt->segs[i].len == seg_len[i] && memcmp(rt->segs[i].s, seg_s[i], seg_len[i]) == 0;
        }
        if (!ok)
            continue;
        if (!method_matches(rt, method)) {
            *path_known = true;
            continue;
        }
        found = rt;
        break;
    }
    if (found && r) {
        unsigned k = 0;
        for (unsigned i = 0; i < n; i++) {
            if (!found->segs[i].capture)
                continue;
            char *v = strndup(seg_s[i], seg_len[i]);
            if (!v) {
                found = NULL;
                break;
            }
            vd__http_req_set_param(r, k++, found->segs[i].s, v);
        }
    }
    free(dec);
    return found;

out_free_dec:
    free(dec);
    return NULL;
}

/* ---- API keys ---------------------------------------------------------------------------- */

int vd__http_keys_load(struct vd_http *h, const struct vd_http_key *keys, size_t n, struct vd_err *err)
{
    if (n == 0)
        return 0;
    h->keys = calloc(n, sizeof(*h->keys));
    if (!h->keys)
        return vd_errf(err, VD_ENOMEM, "api keys: out of memory");
    for (size_t i = 0; i < n; i++) {
        const char *k = keys[i].key;
        if (!k || !*k)
            return vd_errf(err, VD_EINVAL, "api key %zu: empty", i);
        if (keys[i].role < VD_ROLE_RO || keys[i].role > VD_ROLE_ADMIN)
            return vd_errf(err, VD_EINVAL, "api key %zu: invalid role %d", i, (int)keys[i].role);
        if (strncmp(k, "sha256:", 7) == 0) {
            const char *hex = k + 7;
            size_t bin_len = 0;
            if (strlen(hex) != 64 ||
                sodium_hex2bin(h->keys[i].digest, 32, hex, 64, NULL, &bin_len, NULL) != 0 || bin_len != 32)
                return vd_errf(err, VD_EINVAL, "api key %zu: \"sha256:\" must be followed by 64 hex digits", i);
        } else {
            crypto_hash_sha256(h->keys[i].digest, (const unsigned char *)k, strlen(k));
        }
        h->keys[i].role = keys[i].role;
    }
    h->n_keys = n;
    return 0;
}

enum vd_role vd__http_key_role(const struct vd_http *h, const char *presented, bool *known)
{
    uint8_t d[32];
    enum vd_role role = VD_ROLE_NONE;
    *known = false;
    if (!presented)
        return VD_ROLE_NONE;
    crypto_hash_sha256(d, (const unsigned char *)presented, strlen(presented));
    /* Compare against every key, no early exit: timing says nothing about which key matched. */
    for (size_t i = 0; i < h->n_keys; i++) {
        int eq = sodium_memcmp(d, h->keys[i].digest, 32) == 0;
        if (eq && h->keys[i].role > role)
            role = h->keys[i].role;
        *known |= eq;
    }
    return role;
}

/* ---- JSON strings ------------------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at p (lead byte >= 0x80), 0 when invalid. */
static size_t utf8_seq_len(const unsigned char *p)
{
    size_t n;
    uint32_t cp;
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        n = 2;
        cp = p[0] & 0x1f;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        n = 3;
        cp = p[0] & 0x0f;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        n = 4;
        cp = p[0] & 0x07;
    } else {
        return 0;
    }
    for (size_t k = 1; k < n; k++) {
        if ((p[k] & 0xc0) != 0x80) /* also stops at the NUL */
            return 0;
        cp = (cp << 6) | (p[k] & 0x3f);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

size_t vd__http_json_escape(char *dst, size_t cap, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
#define PUT(ch)                \
    do {                       \
        if (o < cap)           \
            dst[o] = (char)(ch); \
        o++;                   \
    } while (0)
    PUT('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = *p;
        if (c == '"' || c == '\\') {
            PUT('\\');
            PUT(c);
        } else if (c == '\n') {
            PUT('\\');
            PUT('n');
        } else if (c == '\t') {
            PUT('\\');
            PUT('t');
        } else if (c == '\r') {
            PUT('\\');
            PUT('r');
        } else if (c < 0x20 || c == 0x7f) {
            PUT('\\');
            PUT('u');
            PUT('0');
            PUT('0');
            PUT(hex[c >> 4]);
            PUT(hex[c & 15]);
        } else if (c < 0x80) {
            PUT(c);
        } else {
            /* Messages may quote user input: invalid UTF-8 becomes U+FFFD so the reply stays
             * valid JSON for strict clients. */
            size_t n = utf8_seq_len(p);
            if (n == 0) {
                PUT('\\');
                PUT('u');
                PUT('f');
                PUT('f');
                PUT('f');
                PUT('d');
            } else {
                for (size_t k = 0; k < n; k++)
                    PUT(p[k]);
                p += n - 1;
            }
        }
    }
    PUT('"');
#undef PUT
    if (o < cap)
        dst[o] = '\0';
    return o;
}
