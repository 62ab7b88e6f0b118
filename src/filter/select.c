/*
 * with_payload's include / exclude lists: which parts of a payload a read returns. The rules are
 * Qdrant's payload selector, so that a client sees the same shape from both:
 *   - every value of the payload sits at a path of names and array steps ("country.cities[]");
 *   - include keeps a value when its path and some listed key agree segment by segment as far as
 *     the shorter of the two goes: the objects leading to a listed key are kept with just the
 *     keys on the way, and everything below a listed key is kept whole; a scalar met before the
 *     listed key ends is kept too, and an array keeps only the elements the key reaches (with
 *     "a.b", the elements of an array "a" are dropped: the key needs "a[].b" to reach into them);
 *   - exclude drops a value when some listed key is a prefix of its path.
 * "[index]" in a listed key never agrees with an array step (so it selects nothing below it).
 * Paths are compared against the key text directly, so nothing is compiled or allocated.
 */
#include <string.h>

#include "filter_int.h"

/* One step from the payload root down to the value being decided, linked child to parent. */
struct frame {
    const struct frame *parent;
    const char *name; /* the object key; NULL for an array element */
};

enum { SEL_MISMATCH, SEL_MORE, SEL_ENDED };

/* Compares the listed key at *pos with the path from the root to f. SEL_ENDED: the key ended at
 * or above f (it is a prefix of f's path); SEL_MORE: the path so far is a prefix of the key;
 * SEL_MISMATCH: they part. */
static int follow(const char *key, size_t n, size_t *pos, const struct frame *f)
{
    if (f->parent) {
        int r = follow(key, n, pos, f->parent);
        if (r != SEL_MORE)
            return r;
    }
    struct vd__filter_segv sv;
    int r = vd__filter_seg_next(key, n, pos, &sv);
    if (r == 0)
        return SEL_ENDED;
    if (r < 0)
        return SEL_MISMATCH; /* checked by vd_payload_keys_check; never selects */
    if (f->name)
        return sv.kind == VD__SEG_KEY && sv.len == strlen(f->name) &&
                       memcmp(sv.name, f->name, sv.len) == 0
                   ? SEL_MORE
                   : SEL_MISMATCH;
    return sv.kind == VD__SEG_ALL ? SEL_MORE : SEL_MISMATCH;
}

/* The best agreement between f's path and any key of the list: ENDED over MORE over MISMATCH. */
static int agree(const cJSON *keys, const struct frame *f)
{
    int best = SEL_MISMATCH;
    const cJSON *k;
    cJSON_ArrayForEach(k, keys)
    {
        if (!cJSON_IsString(k))
            continue;
        size_t pos = 0;
        int r = follow(k->valuestring, strlen(k->valuestring), &pos, f);
        if (r == SEL_MORE) {
            /* the key must also end exactly at f to be a prefix of f's path */
            struct vd__filter_segv sv;
            if (vd__filter_seg_next(k->valuestring, strlen(k->valuestring), &pos, &sv) == 0)
                r = SEL_ENDED;
        }
        if (r > best)
            best = r;
        if (best == SEL_ENDED)
            break;
    }
    return best;
}

/* Prunes the children of container v (at path `at`, NULL for the payload itself). */
static void prune(cJSON *v, const struct frame *at, const cJSON *include, const cJSON *exclude)
{
    cJSON *c = v->child;
    while (c) {
        cJSON *next = c->next;
        struct frame f = {.parent = at, .name = cJSON_IsArray(v) ? NULL : c->string};
        int in = include ? agree(include, &f) : SEL_ENDED;
        int ex = exclude ? agree(exclude, &f) : SEL_MISMATCH;
        if (in == SEL_MISMATCH || ex == SEL_ENDED) {
            cJSON_Delete(cJSON_DetachItemViaPointer(v, c));
        } else if ((cJSON_IsObject(c) || cJSON_IsArray(c)) &&
                   (in == SEL_MORE || ex == SEL_MORE)) {
            prune(c, &f, in == SEL_MORE ? include : NULL, ex == SEL_MORE ? exclude : NULL);
        }
        c = next;
    }
}

void vd_payload_select(cJSON *payload, const cJSON *include, const cJSON *exclude)
{
    if (!cJSON_IsObject(payload) || (!include && !exclude))
        return;
    prune(payload, NULL, include, exclude);
}

int vd_payload_keys_check(const cJSON *keys, const char *what, struct vd_err *err)
{
    if (!cJSON_IsArray(keys))
        return vd_errf(err, VD_EINVAL, "'%s' must be a list of payload keys", what);
    size_t i = 0;
    const cJSON *k;
    cJSON_ArrayForEach(k, keys)
    {
        if (!cJSON_IsString(k))
            return vd_errf(err, VD_EINVAL, "%s[%zu]: expected a payload key (a string)", what, i);
        const char *s = k->valuestring;
        size_t n = strlen(s), pos = 0;
        struct vd__filter_segv sv;
        int r, nseg = 0;
        while ((r = vd__filter_seg_next(s, n, &pos, &sv)) == 1)
            nseg++;
        if (r < 0 || nseg == 0)
            return vd_errf(err, VD_EINVAL,
                           "%s[%zu]: invalid key \"%.100s\" (expected names joined by '.', "
                           "optionally followed by [] or [index])",
                           what, i, s);
        i++;
    }
    return 0;
}
