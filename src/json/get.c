/*
 * Exact readers over parsed items: point ids, integers and float32 vectors, all taken from the
 * literal number text kept by vd_json_parse.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vectord/json.h"
#include "json_int.h"

static const char pid_msg[] = "point id must be an unsigned integer or a UUID string";

int vd_json_get_pid(const cJSON *item, struct vd_pid *out, struct vd_err *err)
{
    if (cJSON_IsString(item) && item->valuestring) {
        if (vd_pid_parse_uuid(item->valuestring, strlen(item->valuestring), out) == 0)
            return 0;
        return vd_errf(err, VD_EINVAL, "%s", pid_msg);
    }
    if (cJSON_IsNumber(item)) {
        uint64_t v;
        /* "-0" is an integer literal that vd_json_get_u64 reads as 0, but a signed id is a
         * client mistake worth reporting. */
        if ((item->valuestring && item->valuestring[0] == '-') || vd_json_get_u64(item, &v) != 0)
            return vd_errf(err, VD_EINVAL, "%s", pid_msg);
        out->type = VD_PID_NUM;
        out->u.num = v;
        return 0;
    }
    return vd_errf(err, VD_EINVAL, "%s", pid_msg);
}

/* Shape of a number literal: sign and digit run, or -1 if it has a fraction or exponent. */
static int integer_text(const char *s, bool *neg, const char **digits, size_t *n)
{
    *neg = s[0] == '-';
    *digits = s + (*neg ? 1 : 0);
    *n = strlen(*digits);
    if (*n == 0)
        return -1;
    for (size_t i = 0; i < *n; i++)
        if ((*digits)[i] < '0' || (*digits)[i] > '9')
            return -1;
    if (*n > 1 && (*digits)[0] == '0')
        return -1;
    return 0;
}

/* Digits to u64; VD_ERANGE on overflow. */
static int digits_u64(const char *d, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t x = (uint64_t)(d[i] - '0');
        if (v > (UINT64_MAX - x) / 10)
            return VD_ERANGE;
        v = v * 10 + x;
    }
    *out = v;
    return 0;
}

int vd_json_get_u64(const cJSON *item, uint64_t *out)
{
    if (!cJSON_IsNumber(item))
        return VD_EINVAL;
    if (!item->valuestring) {
        /* A number built in code: accept exact integers; 2^64 itself is the first double out. */
        double d = item->valuedouble;
        if (d != floor(d) || !isfinite(d))
            return VD_EINVAL;
        if (d < 0 || d >= 18446744073709551616.0)
            return VD_ERANGE;
        *out = (uint64_t)d;
        return 0;
    }
    bool neg;
    const char *d;
    size_t n;
    if (integer_text(item->valuestring, &neg, &d, &n))
        return VD_EINVAL;
    uint64_t v;
    if (digits_u64(d, n, &v))
        return VD_ERANGE;
    if (neg && v != 0)
        return VD_ERANGE;
    *out = v;
    return 0;
}

int vd_json_get_i64(const cJSON *item, int64_t *out)
{
    if (!cJSON_IsNumber(item))
        return VD_EINVAL;
    if (!item->valuestring) {
        double d = item->valuedouble;
        if (d != floor(d) || !isfinite(d))
            return VD_EINVAL;
        if (d < -9223372036854775808.0 || d >= 9223372036854775808.0)
            return VD_ERANGE;
        *out = (int64_t)d;
        return 0;
    }
    bool neg;
    const char *d;
    size_t n;
    if (integer_text(item->valuestring, &neg, &d, &n))
        return VD_EINVAL;
    uint64_t v;
    if (digits_u64(d, n, &v))
        return VD_ERANGE;
    if (neg) {
        if (v > (uint64_t)INT64_MAX + 1)
            return VD_ERANGE;
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    } else {
        if (v > (uint64_t)INT64_MAX)
            return VD_ERANGE;
        *out = (int64_t)v;
    }
    return 0;
}

/*
 * float32 nearest to a number item's literal. The parser already holds the correctly rounded
 * double d of the text. Rounding d to float gives the same result as rounding the text directly
 * unless d lands exactly on a midpoint between two floats (midpoints are doubles, and rounding
 * is monotonic, so the text and d are on the same side of every other midpoint). Only in that
 * rare case, and on overflow, is the text read again with strtof.
 */
static float item_float(const cJSON *item)
{
    double d = item->valuedouble;
    float f = (float)d;
    if (!item->valuestring)
        return f;
    if (isinf(f))
        return strtof(item->valuestring, NULL);
    uint64_t bits;
    memcpy(&bits, &d, sizeof(bits));
    unsigned ex = (unsigned)(bits >> 52) & 0x7FF;
    if (ex >= 1023 - 126 && ex <= 1023 + 127) {
        /* d in the normal float range: a midpoint has the bit just below float precision set
         * and the 28 bits under it clear. */
        if ((bits & 0x1FFFFFFF) == 0x10000000)
            return strtof(item->valuestring, NULL);
        return f;
    }
    if ((double)f != d) {
        float g = nextafterf(f, d > (double)f ? INFINITY : -INFINITY);
        double mid = isinf(g) ? (double)f + ((double)f - (double)nextafterf(f, 0.0f)) * 0.5
                              : ((double)f + (double)g) * 0.5;
        if (mid == d)
            return strtof(item->valuestring, NULL);
    }
    return f;
}

int vd_json_get_floats(const cJSON *item, uint32_t expect_dim, float *dst, float **out,
                       uint32_t *n_out, struct vd_err *err)
{
    if (!cJSON_IsArray(item))
        return vd_errf(err, VD_EINVAL, "vector must be an array of numbers");
    size_t n = 0;
    for (const cJSON *c = item->child; c; c = c->next)
        n++;
    if (n == 0)
        return vd_errf(err, VD_EINVAL, "vector is empty");
    if (n > UINT32_MAX)
        return vd_errf(err, VD_EINVAL, "vector has too many values");
    /* Qdrant's wording: clients and its tests look for it */
    if (expect_dim && n != expect_dim)
        return vd_errf(err, VD_EINVAL, "Vector dimension error: expected dim: %u, got %zu",
                       expect_dim, n);
    if (dst && !expect_dim)
        return vd_errf(err, VD_EINTERNAL, "vector destination given without a dimension");
    float *v = dst ? dst : malloc(n * sizeof(float));
    if (!v)
        return vd_errf(err, VD_ENOMEM, "out of memory for a vector of %zu values", n);
    size_t i = 0;
    for (const cJSON *c = item->child; c; c = c->next, i++) {
        if (!cJSON_IsNumber(c)) {
            vd_errf(err, VD_EINVAL, "vector[%zu] is not a number", i);
            goto out_free_vector;
        }
        float f = item_float(c);
        if (!isfinite(f)) {
            vd_errf(err, VD_EINVAL, "vector[%zu] is not a finite float32", i);
            goto out_free_vector;
        }
        v[i] = f;
    }
    *out = v;
    if (n_out)
        *n_out = (uint32_t)n;
    return 0;

out_free_vector:
    if (v != dst)
        free(v);
    return VD_EINVAL;
}
