/*
 * Filter evaluation, shared by both payload backends through struct vd__filter_fv. The semantics
 * follow Qdrant's condition checker (lib/segment payload_storage): a key yields zero or more values
 * (arrays on the path fan out); a field condition holds if any value satisfies it, and a missing
 * key satisfies nothing except is_empty. docs/filters.md states each rule for users.
 * Nothing here allocates: paths are walked recursively and values are handed to a visitor.
 */
#include <stdlib.h>
#include <string.h>

#include "filter_int.h"

struct visitor {
    /* Returns true to stop the walk early (the answer is known). */
    bool (*fn)(struct visitor *v, const struct vd__filter_fv *val);
    const struct vd__filter_cond *c;
    uint32_t seen; /* number of values visited */
    bool result;
};

/* Walks path segments from i on, starting at value v; returns true if the visitor stopped. */
static bool walk(const struct vd__filter_path *p, uint32_t i, const struct vd__filter_fv *v,
                 struct visitor *vis)
{
    struct vd__filter_fv cur, child;
    /* Descending through objects is the common case: do it in a loop, recursing only where an
     * array fans out. */
    while (i < p->nseg && v->t == VD__FV_OBJ && p->segs[i].kind == VD__SEG_KEY) {
        if (!vd__filter_fv_find(v, p->segs[i].name, p->segs[i].len, &child))
            return false;
        cur = child;
        v = &cur;
        i++;
    }
    if (i == p->nseg) {
        vis->seen++;
        return vis->fn(vis, v);
    }
    const struct vd__filter_seg *s = &p->segs[i];
    switch (s->kind) {
    case VD__SEG_KEY:
        /* v is not an object (the loop above took those): a name reads nothing from it. Over an
         * array of objects too, as in Qdrant: "a.b" does not look inside the elements of an
         * array "a"; "a[].b" does. */
        return false;
    case VD__SEG_ALL:
        if (v->t == VD__FV_ARR) {
            struct vd__filter_iter it;
            vd__filter_iter_init(v, &it);
            while (vd__filter_iter_next(&it, &child))
                if (walk(p, i + 1, &child, vis))
                    return true;
        }
        return false;
    default: /* VD__SEG_INDEX */
        if (v->t == VD__FV_ARR) {
            struct vd__filter_iter it;
            vd__filter_iter_init(v, &it);
            for (uint32_t k = 0; vd__filter_iter_next(&it, &child); k++)
                if (k == s->idx)
                    return walk(p, i + 1, &child, vis);
        }
        return false;
    }
}

static int str_cmp(const char *a, uint32_t alen, const char *b, uint32_t blen)
{
    if (alen != blen)
        return alen < blen ? -1 : 1;
    return memcmp(a, b, alen);
}

static bool set_has_str(const struct vd__filter_cond *c, const char *s, uint32_t len)
{
    uint32_t lo = 0, hi = c->u.fc.nset;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int r = str_cmp(c->u.fc.strs[mid].s, c->u.fc.strs[mid].len, s, len);
        if (r == 0)
            return true;
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

static bool set_has_int(const struct vd__filter_cond *c, int64_t x)
{
    uint32_t lo = 0, hi = c->u.fc.nset;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int64_t m = c->u.fc.ints[mid];
        if (m == x)
            return true;
        if (m < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

static bool match_scalar(const struct vd__filter_cond *c, const struct vd__filter_fv *v)
{
    switch (c->u.fc.match) {
    case VD__M_STR:
        return v->t == VD__FV_STR && v->slen == c->u.fc.str.len &&
               memcmp(v->s, c->u.fc.str.s, v->slen) == 0;
    case VD__M_INT:
        /* Integers only: 1.0 in a payload is a float and does not match 1 (as in Qdrant). */
        return v->t == VD__FV_INT && v->i == c->u.fc.ival;
    case VD__M_BOOL:
        return v->t == VD__FV_BOOL && v->b == c->u.fc.bval;
    case VD__M_ANY_STR:
        return v->t == VD__FV_STR && set_has_str(c, v->s, v->slen);
    case VD__M_ANY_INT:
        return v->t == VD__FV_INT && set_has_int(c, v->i);
    case VD__M_EXCEPT_STR:
        /* A value of another type is "not one of them"; null is absence, not a value. */
        if (v->t == VD__FV_STR)
            return !set_has_str(c, v->s, v->slen);
        return v->t != VD__FV_NULL;
    case VD__M_EXCEPT_INT:
        if (v->t == VD__FV_INT)
            return !set_has_int(c, v->i);
        return v->t != VD__FV_NULL;
    case VD__M_TEXT:
        return v->t == VD__FV_STR && (c->u.fc.str.len == 0 || memmem(v->s, v->slen, c->u.fc.str.s,
                                                                     c->u.fc.str.len) != NULL);
    default:
        return false;
    }
}

static bool range_scalar(const struct vd__filter_cond *c, const struct vd__filter_fv *v)
{
    double x;
    if (v->t == VD__FV_INT)
        x = (double)v->i;
    else if (v->t == VD__FV_DBL)
        x = v->d;
    else
        return false;
    return (!c->u.fc.gt_set || x > c->u.fc.gt) && (!c->u.fc.gte_set || x >= c->u.fc.gte) &&
           (!c->u.fc.lt_set || x < c->u.fc.lt) && (!c->u.fc.lte_set || x <= c->u.fc.lte);
}

static bool check_scalar(const struct vd__filter_cond *c, const struct vd__filter_fv *v)
{
    return (c->u.fc.match != VD__M_NONE && match_scalar(c, v)) ||
           (c->u.fc.has_range && range_scalar(c, v));
}

static bool value_is_empty(const struct vd__filter_fv *v)
{
    return v->t == VD__FV_NULL || (v->t == VD__FV_ARR && v->n == 0);
}

static bool value_is_null(const struct vd__filter_fv *v)
{
    if (v->t == VD__FV_NULL)
        return true;
    if (v->t != VD__FV_ARR)
        return false;
    struct vd__filter_iter it;
    struct vd__filter_fv e;
    vd__filter_iter_init(v, &it);
    while (vd__filter_iter_next(&it, &e))
        if (e.t == VD__FV_NULL)
            return true;
    return false;
}

/* One value of a field condition; an array value matches if any element does (one level:
 * arrays inside arrays are not flattened). */
static bool field_visit(struct visitor *vis, const struct vd__filter_fv *v)
{
    const struct vd__filter_cond *c = vis->c;
    bool ok;
    if (c->u.fc.is_empty >= 0) {
        ok = value_is_empty(v) == (bool)c->u.fc.is_empty;
    } else if (c->u.fc.is_null >= 0) {
        ok = value_is_null(v) == (bool)c->u.fc.is_null;
    } else if (v->t == VD__FV_ARR) {
        ok = false;
        struct vd__filter_iter it;
        struct vd__filter_fv e;
        vd__filter_iter_init(v, &it);
        while (!ok && vd__filter_iter_next(&it, &e))
            ok = check_scalar(c, &e);
    } else {
        ok = check_scalar(c, v);
    }
    if (ok)
        vis->result = true;
    return ok;
}

/* is_empty: every value is null or [] (true when the key is missing). */
static bool is_empty_visit(struct visitor *vis, const struct vd__filter_fv *v)
{
    if (!value_is_empty(v)) {
        vis->result = false;
        return true;
    }
    return false;
}

/* is_null: some value is null or an array holding a null. */
static bool is_null_visit(struct visitor *vis, const struct vd__filter_fv *v)
{
    if (value_is_null(v)) {
        vis->result = true;
        return true;
    }
    return false;
}

static bool has_id(const struct vd__filter_cond *c, const struct vd_pid *id)
{
    if (!id)
        return false;
    uint32_t lo = 0, hi = c->u.ids.n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int r = vd_pid_cmp(&c->u.ids.ids[mid], id);
        if (r == 0)
            return true;
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

bool vd__filter_eval(const struct vd__filter_cond *c, const struct vd_pid *id,
                     const struct vd__filter_fv *root)
{
    struct visitor vis = {.c = c};
    switch (c->kind) {
    case VD__C_FILTER: {
        const struct vd__filter_clause *cl = &c->u.f.should;
        if (cl->present) {
            bool any = false;
            for (uint32_t i = 0; i < cl->n && !any; i++)
                any = vd__filter_eval(cl->c[i], id, root);
            if (!any)
                return false; /* an empty should matches nothing, as in Qdrant */
        }
        cl = &c->u.f.min_should;
        if (cl->present) {
            uint32_t hits = 0;
            for (uint32_t i = 0; i < cl->n && hits < c->u.f.min_count; i++)
                hits += vd__filter_eval(cl->c[i], id, root);
            if (hits < c->u.f.min_count)
                return false;
        }
        cl = &c->u.f.must;
        for (uint32_t i = 0; i < cl->n; i++)
            if (!vd__filter_eval(cl->c[i], id, root))
                return false;
        cl = &c->u.f.must_not;
        for (uint32_t i = 0; i < cl->n; i++)
            if (vd__filter_eval(cl->c[i], id, root))
                return false;
        return true;
    }
    case VD__C_FIELD:
        vis.fn = field_visit;
        vis.result = false;
        if (root)
            walk(&c->u.fc.path, 0, root, &vis);
        if (vis.seen == 0) {
            /* Missing key: only is_empty holds (and is_null: false, like Qdrant). */
            if (c->u.fc.is_empty >= 0)
                return c->u.fc.is_empty;
            if (c->u.fc.is_null >= 0)
                return !c->u.fc.is_null;
            return false;
        }
        return vis.result;
    case VD__C_IS_EMPTY:
        vis.fn = is_empty_visit;
        vis.result = true;
        if (root)
            walk(&c->u.k.path, 0, root, &vis);
        return vis.result;
    case VD__C_IS_NULL:
        vis.fn = is_null_visit;
        vis.result = false;
        if (root)
            walk(&c->u.k.path, 0, root, &vis);
        return vis.result;
    case VD__C_HAS_ID:
        return has_id(c, id);
    default:
        return false;
    }
}

bool vd_filter_match(const struct vd_filter *f, const struct vd_pid *id, const cJSON *payload)
{
    struct vd__filter_fv root;
    if (payload && cJSON_IsObject(payload)) {
        vd__filter_fv_cjson(payload, &root);
        return vd__filter_eval(f->root, id, &root);
    }
    return vd__filter_eval(f->root, id, NULL);
}

bool vd_filter_match_bin(const struct vd_filter *f, const struct vd_pid *id, const uint8_t *bin,
                         size_t len)
{
    struct vd__filter_fv root;
    if (bin && len >= 2) {
        vd__filter_fv_bin(bin + 1, &root);
        return vd__filter_eval(f->root, id, &root);
    }
    return vd__filter_eval(f->root, id, NULL);
}

struct values_visitor {
    struct visitor v; /* first: walk hands this back */
    void (*fn)(const struct vd_filter_value *v, void *ctx);
    void *ctx;
};

static void emit_scalar(struct values_visitor *vv, const struct vd__filter_fv *v)
{
    struct vd_filter_value o = {0};
    switch (v->t) {
    case VD__FV_BOOL:
        o.t = VD_FILTER_V_BOOL;
        o.b = v->b;
        break;
    case VD__FV_INT:
        o.t = VD_FILTER_V_INT;
        o.i = v->i;
        o.d = (double)v->i;
        break;
    case VD__FV_DBL:
        o.t = VD_FILTER_V_DBL;
        o.d = v->d;
        break;
    case VD__FV_STR:
        o.t = VD_FILTER_V_STR;
        o.s = v->s;
        o.slen = v->slen;
        break;
    default:
        return; /* null, objects and nested arrays satisfy no match or range */
    }
    vv->fn(&o, vv->ctx);
}

/* Mirrors field_visit: an array value stands for its elements. */
static bool values_visit(struct visitor *vis, const struct vd__filter_fv *v)
{
    struct values_visitor *vv = (struct values_visitor *)vis;
    if (v->t == VD__FV_ARR) {
        struct vd__filter_iter it;
        struct vd__filter_fv e;
        vd__filter_iter_init(v, &it);
        while (vd__filter_iter_next(&it, &e))
            emit_scalar(vv, &e);
    } else {
        emit_scalar(vv, v);
    }
    return false;
}

void vd_filter_key_values(const struct vd_filter_key *k, const uint8_t *bin, size_t len,
                          void (*fn)(const struct vd_filter_value *v, void *ctx), void *ctx)
{
    if (!bin || len < 2)
        return;
    struct vd__filter_fv root;
    vd__filter_fv_bin(bin + 1, &root);
    struct values_visitor vv = {.v = {.fn = values_visit}, .fn = fn, .ctx = ctx};
    walk(&k->path, 0, &root, &vv.v);
}
