/* The point record's binary encoding (format described in include/vectord/record.h). */
#include <string.h>

#include "vectord/record.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
/* Values are copied as host floats; a big-endian port would swap them here. */
#error "the record encoding assumes a little-endian host"
#endif

static size_t pad4(size_t off)
{
    return (4 - (off & 3)) & 3;
}

static int name_cmp(const struct vd_rvec *a, const struct vd_rvec *b)
{
    size_t n = a->name_len < b->name_len ? a->name_len : b->name_len;
    int c = n ? memcmp(a->name, b->name, n) : 0;
    if (c)
        return c;
    return (int)a->name_len - (int)b->name_len;
}

/* Offset just past vector v when it starts at off. */
static size_t vec_end(const struct vd_rvec *v, size_t off)
{
    off += 1 + v->name_len + 1 + 4;
    off += pad4(off);
    return off + (size_t)v->n * 4 * (v->kind == VD_RVEC_SPARSE ? 2 : 1);
}

size_t vd_record_size(const struct vd_record *r)
{
    size_t off = 3 + (r->id.type == VD_PID_UUID ? 17 : 9) + 24 + 2;
    for (uint16_t i = 0; i < r->n_vectors; i++)
        off = vec_end(&r->vectors[i], off);
    return off + 4 + r->payload_len;
}

static bool finite_all(const void *p, uint32_t n)
{
    const uint8_t *b = p;
    uint32_t bad = 0, i = 0;
    /* Branch-free so it vectorises: an all-ones exponent (Inf, NaN) plus one exponent step
     * carries into the sign bit. Blocks of 8 keep the compiler's cheap cost model willing. */
    for (; i + 8 <= n; i += 8) {
        uint32_t x[8];
        memcpy(x, b + (size_t)i * 4, sizeof x);
        for (int k = 0; k < 8; k++)
            bad |= ((x[k] & 0x7f800000u) + 0x00800000u) & 0x80000000u;
    }
    for (; i < n; i++) {
        uint32_t x;
        memcpy(&x, b + (size_t)i * 4, 4);
        bad |= ((x & 0x7f800000u) + 0x00800000u) & 0x80000000u;
    }
    return bad == 0;
}

static bool increasing_u32(const void *p, uint32_t n)
{
    const uint8_t *b = p;
    uint32_t prev = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t x;
        memcpy(&x, b + (size_t)i * 4, 4);
        if (i && x <= prev)
            return false;
        prev = x;
    }
    return true;
}

/* The checks encode and decode share: one record has one valid form. */
static bool vec_valid(const struct vd_rvec *v)
{
    if (v->kind == VD_RVEC_DENSE)
        return v->n >= 1 && finite_all(v->values, v->n);
    if (v->kind == VD_RVEC_SPARSE)
        return increasing_u32(v->indices, v->n) && finite_all(v->values, v->n);
    return false;
}

int vd_record_encode(const struct vd_record *r, uint8_t *buf, size_t cap, size_t *len)
{
    if (r->n_vectors > VD_RECORD_MAX_VECTORS ||
        (r->tombstone && (r->n_vectors || r->payload_len)) ||
        (r->id.type != VD_PID_NUM && r->id.type != VD_PID_UUID))
        return VD_EINVAL;
    for (uint16_t i = 0; i < r->n_vectors; i++) {
        if (!vec_valid(&r->vectors[i]) || (i && name_cmp(&r->vectors[i - 1], &r->vectors[i]) >= 0))
            return VD_EINVAL;
    }
    size_t need = vd_record_size(r);
    if (need > cap)
        return VD_ETOOBIG;
    uint8_t *p = buf;
    *p++ = VD_RECORD_FORMAT;
    *p++ = r->tombstone ? VD_RECORD_FLAG_TOMB : 0;
    size_t kl = vd_pid_encode(&r->id, p + 1);
    *p = (uint8_t)kl;
    p += 1 + kl;
    const uint64_t u[3] = {r->incarnation, r->version.hlc, r->version.node};
    for (int i = 0; i < 3; i++)
        for (int b = 0; b < 8; b++)
            *p++ = (uint8_t)(u[i] >> (8 * b));
    *p++ = (uint8_t)r->n_vectors;
    *p++ = (uint8_t)(r->n_vectors >> 8);
    for (uint16_t i = 0; i < r->n_vectors; i++) {
        const struct vd_rvec *v = &r->vectors[i];
        *p++ = v->name_len;
        if (v->name_len)
            memcpy(p, v->name, v->name_len);
        p += v->name_len;
        *p++ = v->kind;
        for (int b = 0; b < 4; b++)
            *p++ = (uint8_t)(v->n >> (8 * b));
        size_t pad = pad4((size_t)(p - buf));
        memset(p, 0, pad);
        p += pad;
        if (v->kind == VD_RVEC_SPARSE && v->n) {
            memcpy(p, v->indices, (size_t)v->n * 4);
            p += (size_t)v->n * 4;
        }
        if (v->n)
            memcpy(p, v->values, (size_t)v->n * 4);
        p += (size_t)v->n * 4;
    }
    uint32_t pl = (uint32_t)r->payload_len;
    for (int b = 0; b < 4; b++)
        *p++ = (uint8_t)(pl >> (8 * b));
    if (pl)
        memcpy(p, r->payload, pl);
    p += pl;
    *len = (size_t)(p - buf);
    return 0;
}

/* Bounds-checked reader: every take fails once, and stays failed, when bytes run out. */
struct rd {
    const uint8_t *b;
    size_t len, off;
    bool bad;
};

static const uint8_t *take(struct rd *r, size_t n)
{
    if (r->bad || n > r->len - r->off) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *p = r->b + r->off;
    r->off += n;
    return p;
}

static uint64_t take_le(struct rd *r, int bytes)
{
    const uint8_t *p = take(r, (size_t)bytes);
    uint64_t v = 0;
    for (int i = bytes - 1; p && i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

int vd_record_decode(const uint8_t *buf, size_t len, struct vd_record *out,
                     struct vd_rvec *vecs)
{
    struct rd r = {.b = buf, .len = len};
    memset(out, 0, sizeof *out);
    const uint8_t *h = take(&r, 3);
    if (!h || h[0] != VD_RECORD_FORMAT || (h[1] & ~VD_RECORD_FLAG_TOMB))
        return VD_ECORRUPT;
    out->tombstone = (h[1] & VD_RECORD_FLAG_TOMB) != 0;
    const uint8_t *key = take(&r, h[2]);
    if (!key || vd_pid_decode(key, h[2], &out->id))
        return VD_ECORRUPT;
    out->incarnation = take_le(&r, 8);
    out->version.hlc = take_le(&r, 8);
    out->version.node = take_le(&r, 8);
    out->n_vectors = (uint16_t)take_le(&r, 2);
    if (r.bad || out->n_vectors > VD_RECORD_MAX_VECTORS || (out->tombstone && out->n_vectors))
        return VD_ECORRUPT;
    for (uint16_t i = 0; i < out->n_vectors; i++) {
        struct vd_rvec *v = &vecs[i];
        v->name_len = (uint8_t)take_le(&r, 1);
        v->name = (const char *)take(&r, v->name_len);
        v->kind = (uint8_t)take_le(&r, 1);
        v->n = (uint32_t)take_le(&r, 4);
        size_t npad = pad4(r.off);
        const uint8_t *pad = take(&r, npad);
        if (r.bad)
            return VD_ECORRUPT;
        for (size_t k = 0; k < npad; k++)
            if (pad[k])
                return VD_ECORRUPT;
        v->indices = NULL;
        /* n comes from input: divide instead of multiplying so a huge n cannot wrap */
        if (v->kind == VD_RVEC_SPARSE) {
            if (v->n > (len - r.off) / 8)
                return VD_ECORRUPT;
            v->indices = take(&r, (size_t)v->n * 4);
        } else if (v->n > (len - r.off) / 4) {
            return VD_ECORRUPT;
        }
        v->values = take(&r, (size_t)v->n * 4);
        if (r.bad || !vec_valid(v) || (i && name_cmp(&vecs[i - 1], v) >= 0))
            return VD_ECORRUPT;
    }
    out->vectors = vecs;
    uint32_t pl = (uint32_t)take_le(&r, 4);
    if (r.bad || pl != len - r.off || (out->tombstone && pl))
        return VD_ECORRUPT;
    out->payload = pl ? (const char *)take(&r, pl) : NULL;
    out->payload_len = pl;
    return 0;
}

const struct vd_rvec *vd_record_vector(const struct vd_record *r, const char *name,
                                       size_t name_len)
{
    for (uint16_t i = 0; i < r->n_vectors; i++) {
        const struct vd_rvec *v = &r->vectors[i];
        if (v->name_len == name_len && (!name_len || memcmp(v->name, name, name_len) == 0))
            return v;
    }
    return NULL;
}

void vd_record_copy_values(const struct vd_rvec *v, float *out)
{
    if (v->n)
        memcpy(out, v->values, (size_t)v->n * 4);
}
