/* Point ids: parsing, formatting and the stored key form. */
#include <stdio.h>
#include <string.h>

#include "vectord/core.h"

size_t vd_pid_encode(const struct vd_pid *id, uint8_t *buf)
{
    buf[0] = id->type;
    if (id->type == VD_PID_NUM) {
        vd_be64_put(buf + 1, id->u.num);
        return 9;
    }
    memcpy(buf + 1, id->u.uuid, 16);
    return 17;
}

int vd_pid_decode(const uint8_t *buf, size_t len, struct vd_pid *out)
{
    if (len == 9 && buf[0] == VD_PID_NUM) {
        out->type = VD_PID_NUM;
        out->u.num = vd_be64_get(buf + 1);
        return 0;
    }
    if (len == 17 && buf[0] == VD_PID_UUID) {
        out->type = VD_PID_UUID;
        memcpy(out->u.uuid, buf + 1, 16);
        return 0;
    }
    return VD_ECORRUPT;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int vd_pid_parse_uuid(const char *s, size_t len, struct vd_pid *out)
{
    uint8_t b[16];
    size_t j = 0;
    if (len == 36) {
        if (s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-')
            return VD_EINVAL;
    } else if (len != 32) {
        return VD_EINVAL;
    }
    for (size_t i = 0; i < len; i++) {
        if (len == 36 && (i == 8 || i == 13 || i == 18 || i == 23))
            continue;
        int h = hexval(s[i]), l;
        if (h < 0 || i + 1 >= len || (l = hexval(s[i + 1])) < 0)
            return VD_EINVAL;
        b[j++] = (uint8_t)(h << 4 | l);
        i++;
    }
    if (j != 16)
        return VD_EINVAL;
    out->type = VD_PID_UUID;
    memcpy(out->u.uuid, b, 16);
    return 0;
}

int vd_pid_parse_u64(const char *s, size_t len, uint64_t *out)
{
    if (len == 0 || len > 20 || (len > 1 && s[0] == '0'))
        return VD_EINVAL;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return VD_EINVAL;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return VD_ERANGE;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

void vd_pid_format(const struct vd_pid *id, char *buf)
{
    if (id->type == VD_PID_NUM) {
        snprintf(buf, VD_PID_STR_MAX, "%llu", (unsigned long long)id->u.num);
        return;
    }
    static const char hx[] = "0123456789abcdef";
    char *p = buf;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *p++ = '-';
        *p++ = hx[id->u.uuid[i] >> 4];
        *p++ = hx[id->u.uuid[i] & 15];
    }
    *p = 0;
}

int vd_pid_cmp(const struct vd_pid *a, const struct vd_pid *b)
{
    if (a->type != b->type)
        return a->type < b->type ? -1 : 1;
    if (a->type == VD_PID_NUM)
        return a->u.num < b->u.num ? -1 : a->u.num > b->u.num;
    return memcmp(a->u.uuid, b->u.uuid, 16);
}

bool vd_pid_eq(const struct vd_pid *a, const struct vd_pid *b)
{
    return vd_pid_cmp(a, b) == 0;
}

uint64_t vd_pid_hash(const struct vd_pid *id)
{
    uint8_t k[VD_PID_KEY_MAX];
    size_t n = vd_pid_encode(id, k);
    return vd_hash64(k, n, 0);
}
