/*
 * Compiling a filter from its JSON form: validation with messages that name the clause
 * ("filter.must[1].range: ..."), key paths split into segments once, match sets sorted for
 * binary search, and the list of distinct keys for the planner.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "filter_int.h"
#include "vectord/json.h"

struct ctx {
    struct vd_filter *f;
    struct vd_err *err;
    char where[400]; /* clause path for messages, e.g. "filter.must[1]" */
};

static int fail(struct ctx *x, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct ctx *x, int code, const char *fmt, ...)
{
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* "range: expected ..." names a field of the clause: join it as "filter.must[1].range" */
    size_t k = 0;
    while ((msg[k] >= 'a' && msg[k] <= 'z') || msg[k] == '_')
        k++;
    bool field = k > 0 && (msg[k] == ':' || msg[k] == '.' || msg[k] == '[');
    return vd_errf(x->err, code, "%s%s%s", x->where, field ? "." : ": ", msg);
}

/* Appends to the clause path; returns the old length to restore with where_pop. */
static size_t where_push(struct ctx *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static size_t where_push(struct ctx *x, const char *fmt, ...)
{
    size_t len = strlen(x->where);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->where + len, sizeof x->where - len, fmt, ap);
    va_end(ap);
    return len;
}

static void where_pop(struct ctx *x, size_t len)
{
    x->where[len] = 0;
}

/* ---- freeing --------------------------------------------------------------------------------- */

static void path_release(struct vd__filter_path *p)
{
    for (uint32_t i = 0; i < p->nseg; i++)
        free(p->segs[i].name);
    free(p->segs);
}

static void cond_free(struct vd__filter_cond *c);

static void clause_release(struct vd__filter_clause *cl)
{
    for (uint32_t i = 0; i < cl->n; i++)
        cond_free(cl->c[i]);
    free(cl->c);
}

static void cond_free(struct vd__filter_cond *c)
{
    if (!c)
        return;
    switch (c->kind) {
    case VD__C_FILTER:
        clause_release(&c->u.f.must);
        clause_release(&c->u.f.should);
        clause_release(&c->u.f.must_not);
        clause_release(&c->u.f.min_should);
        break;
    case VD__C_FIELD:
        path_release(&c->u.fc.path);
        free(c->u.fc.strs);
        free(c->u.fc.ints);
        free(c->u.fc.strbuf);
        break;
    case VD__C_IS_EMPTY:
    case VD__C_IS_NULL:
        path_release(&c->u.k.path);
        break;
    case VD__C_HAS_ID:
        free(c->u.ids.ids);
        break;
    }
    free(c);
}

void vd_filter_free(struct vd_filter *f)
{
    if (!f)
        return;
    cond_free(f->root);
    for (uint32_t i = 0; i < f->nkeys; i++)
        free(f->keys[i]);
    free(f->keys);
    free(f);
}

/* ---- keys ------------------------------------------------------------------------------------ */

/* Registers a key in the filter's distinct key list; returns the stored copy or NULL. */
static const char *key_intern(struct ctx *x, const char *key)
{
    struct vd_filter *f = x->f;
    for (uint32_t i = 0; i < f->nkeys; i++)
        if (strcmp(f->keys[i], key) == 0)
            return f->keys[i];
    char **k = realloc(f->keys, sizeof *k * (f->nkeys + 1));
    if (!k)
        return NULL;
    f->keys = k;
    if (!(k[f->nkeys] = strdup(key)))
        return NULL;
    return k[f->nkeys++];
}

int vd__filter_seg_next(const char *s, size_t n, size_t *pos, struct vd__filter_segv *out)
{
    size_t i = *pos;
    if (i == n)
        return 0;
    if (i > 0 && s[i] == '[') {
        size_t j = i + 1;
        if (j < n && s[j] == ']') {
            out->kind = VD__SEG_ALL;
        } else {
            uint64_t v = 0;
            while (j < n && s[j] >= '0' && s[j] <= '9' && v <= UINT32_MAX)
                v = v * 10 + (uint64_t)(s[j++] - '0');
            if (j == i + 1 || j == n || s[j] != ']' || v > UINT32_MAX)
                return -1;
            out->kind = VD__SEG_INDEX;
            out->idx = (uint32_t)v;
        }
        *pos = j + 1;
        return 1;
    }
    if (i > 0) {
        /* after a segment only ".name" or "[...]" may follow (e.g. not "a[]b") */
        if (s[i] != '.')
            return -1;
        i++;
    }
    size_t start, end;
    if (i < n && s[i] == '"') {
        start = i + 1;
        end = start;
        while (end < n && s[end] != '"')
            end++;
        if (end == n)
            return -1;
        i = end + 1;
    } else {
        start = i;
        end = i;
        while (end < n && s[end] != '.' && s[end] != '[' && s[end] != ']' && s[end] != '"')
            end++;
        if (end == start)
            return -1;
        i = end;
    }
    out->kind = VD__SEG_KEY;
    out->name = s + start;
    out->len = (uint32_t)(end - start);
    *pos = i;
    return 1;
}

/* Splits "a.b[].c[2]" or "a.\"x.y\"" into segments (syntax: vd__filter_seg_next). */
static int parse_path_str(struct ctx *x, const char *s, struct vd__filter_path *out)
{
    size_t n = strlen(s), pos = 0;
    memset(out, 0, sizeof *out);
    /* at most one segment per character: size the array once */
    out->segs = calloc(n ? n : 1, sizeof *out->segs);
    if (!out->segs)
        return vd_errf(x->err, VD_ENOMEM, "out of memory");
    struct vd__filter_segv sv = {0}; /* gcc -O3 cannot see the scanner sets idx */
    int r;
    while ((r = vd__filter_seg_next(s, n, &pos, &sv)) == 1) {
        struct vd__filter_seg *sg = &out->segs[out->nseg++];
        sg->kind = sv.kind;
        sg->idx = sv.idx;
        if (sv.kind == VD__SEG_KEY) {
            sg->len = sv.len;
            if (!(sg->name = strndup(sv.name, sv.len)))
                return vd_errf(x->err, VD_ENOMEM, "out of memory");
        }
    }
    if (r < 0 || out->nseg == 0)
        return fail(x, VD_EINVAL,
                    "key: invalid key \"%.100s\" (expected names joined by '.', "
                    "optionally followed by [] or [index])",
                    s);
    if (!(out->text = key_intern(x, s)))
        return vd_errf(x->err, VD_ENOMEM, "out of memory");
    return 0;
}

static int parse_path(struct ctx *x, const cJSON *key, struct vd__filter_path *out)
{
    if (!cJSON_IsString(key) || !key->valuestring || !*key->valuestring)
        return fail(x, VD_EINVAL, "key: expected a non-empty string");
    return parse_path_str(x, key->valuestring, out);
}

int vd_filter_key_parse(const char *key, struct vd_filter_key **out, struct vd_err *err)
{
    struct vd_filter_key *k = calloc(1, sizeof *k);
    struct ctx x = {.err = err, .where = "key"};
    if (!k || !(x.f = calloc(1, sizeof *x.f))) {
        free(k);
        return vd_errf(err, VD_ENOMEM, "out of memory");
    }
    k->owner = x.f;
    if (!key || !*key) {
        vd_filter_key_free(k);
        return vd_errf(err, VD_EINVAL, "key: expected a non-empty string");
    }
    int rc = parse_path_str(&x, key, &k->path);
    if (rc) {
        vd_filter_key_free(k);
        if (rc == VD_EINVAL) /* the clause-path prefix of filter messages means nothing here */
            vd_errf(err, rc,
                    "invalid key \"%.100s\" (expected names joined by '.', optionally followed "
                    "by [] or [index])",
                    key);
        return rc;
    }
    *out = k;
    return 0;
}

void vd_filter_key_free(struct vd_filter_key *k)
{
    if (!k)
        return;
    path_release(&k->path);
    vd_filter_free(k->owner);
    free(k);
}

/* ---- values ---------------------------------------------------------------------------------- */

/* An integer filter operand: exact from the literal text; "1.0", 1.5 and "-0" are not one. */
static bool read_int(const cJSON *n, int64_t *out)
{
    double d;
    return cJSON_IsNumber(n) && vd__filter_num_is_int(n, out, &d);
}

static int cmp_str(const void *a, const void *b)
{
    const struct vd_filter_str *x = a, *y = b;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return memcmp(x->s, y->s, x->len);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* "any" / "except": all strings or all integers (Qdrant has no other list types). */
static int parse_set(struct ctx *x, struct vd__filter_cond *c, const cJSON *arr, const char *name,
                     bool except)
{
    if (!cJSON_IsArray(arr))
        return fail(x, VD_EINVAL, "match.%s: expected an array of strings or an array of integers",
                    name);
    uint32_t n = (uint32_t)cJSON_GetArraySize(arr);
    bool ints = n > 0 && cJSON_IsNumber(arr->child);
    c->u.fc.match = ints ? (except ? VD__M_EXCEPT_INT : VD__M_ANY_INT)
                         : (except ? VD__M_EXCEPT_STR : VD__M_ANY_STR);
    c->u.fc.nset = n;
    if (n == 0)
        return 0; /* "any": [] matches nothing; "except": [] matches any value */
    size_t bytes = 0;
    uint32_t i = 0;
    for (const cJSON *e = arr->child; e; e = e->next, i++) {
        if (ints) {
            int64_t v;
            if (!read_int(e, &v))
                return fail(x, VD_EINVAL,
                            "match.%s[%u]: expected an integer like the list's first element", name,
                            i);
        } else {
            if (!cJSON_IsString(e))
                return fail(x, VD_EINVAL,
                            "match.%s[%u]: expected a string like the list's first element "
                            "(lists hold strings or integers)",
                            name, i);
            bytes += strlen(e->valuestring) + 1;
        }
    }
    if (ints) {
        if (!(c->u.fc.ints = malloc(sizeof(int64_t) * n)))
            return vd_errf(x->err, VD_ENOMEM, "out of memory");
        i = 0;
        for (const cJSON *e = arr->child; e; e = e->next)
            read_int(e, &c->u.fc.ints[i++]);
        qsort(c->u.fc.ints, n, sizeof(int64_t), cmp_i64);
        return 0;
    }
    c->u.fc.strs = malloc(sizeof(struct vd_filter_str) * n);
    c->u.fc.strbuf = malloc(bytes);
    if (!c->u.fc.strs || !c->u.fc.strbuf)
        return vd_errf(x->err, VD_ENOMEM, "out of memory");
    char *p = c->u.fc.strbuf;
    i = 0;
    for (const cJSON *e = arr->child; e; e = e->next, i++) {
        size_t l = strlen(e->valuestring);
        memcpy(p, e->valuestring, l + 1);
        c->u.fc.strs[i].s = p;
        c->u.fc.strs[i].len = (uint32_t)l;
        p += l + 1;
    }
    qsort(c->u.fc.strs, n, sizeof(struct vd_filter_str), cmp_str);
    return 0;
}

static int copy_str(struct ctx *x, struct vd__filter_cond *c, const char *s)
{
    size_t l = strlen(s);
    if (!(c->u.fc.strbuf = malloc(l + 1)))
        return vd_errf(x->err, VD_ENOMEM, "out of memory");
    memcpy(c->u.fc.strbuf, s, l + 1);
    c->u.fc.str.s = c->u.fc.strbuf;
    c->u.fc.str.len = (uint32_t)l;
    return 0;
}

static int parse_match(struct ctx *x, struct vd__filter_cond *c, const cJSON *m)
{
    const cJSON *v;
    if (!cJSON_IsObject(m))
        goto bad;
    if ((v = cJSON_GetObjectItemCaseSensitive(m, "value")) && !cJSON_IsNull(v)) {
        if (cJSON_IsString(v)) {
            c->u.fc.match = VD__M_STR;
            return copy_str(x, c, v->valuestring);
        }
        if (cJSON_IsBool(v)) {
            c->u.fc.match = VD__M_BOOL;
            c->u.fc.bval = cJSON_IsTrue(v);
            return 0;
        }
        if (read_int(v, &c->u.fc.ival)) {
            c->u.fc.match = VD__M_INT;
            return 0;
        }
        return fail(x, VD_EINVAL,
                    "match.value: expected a string, an integer or a bool "
                    "(use range for floats)");
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(m, "any")) && !cJSON_IsNull(v))
        return parse_set(x, c, v, "any", false);
    if ((v = cJSON_GetObjectItemCaseSensitive(m, "except")) && !cJSON_IsNull(v))
        return parse_set(x, c, v, "except", true);
    if ((v = cJSON_GetObjectItemCaseSensitive(m, "text")) && !cJSON_IsNull(v)) {
        if (!cJSON_IsString(v))
            return fail(x, VD_EINVAL, "match.text: expected a string");
        c->u.fc.match = VD__M_TEXT;
        return copy_str(x, c, v->valuestring);
    }
bad:
    return fail(x, VD_EINVAL, "match: expected an object with value, any, except or text");
}

static int parse_range(struct ctx *x, struct vd__filter_cond *c, const cJSON *r)
{
    static const char *names[4] = {"gt", "gte", "lt", "lte"};
    bool *set[4] = {&c->u.fc.gt_set, &c->u.fc.gte_set, &c->u.fc.lt_set, &c->u.fc.lte_set};
    double *val[4] = {&c->u.fc.gt, &c->u.fc.gte, &c->u.fc.lt, &c->u.fc.lte};
    if (!cJSON_IsObject(r))
        goto bad;
    for (int i = 0; i < 4; i++) {
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(r, names[i]);
        if (!b || cJSON_IsNull(b))
            continue;
        if (!cJSON_IsNumber(b) || !isfinite(b->valuedouble))
            goto bad;
        *set[i] = true;
        *val[i] = b->valuedouble;
    }
    c->u.fc.has_range = true;
    return 0;
bad:
    return fail(x, VD_EINVAL, "range: expected an object with gt/gte/lt/lte numbers");
}

/* {"key": k, "is_empty": {"key": k}} style: the object holding the key. */
static int parse_key_cond(struct ctx *x, struct vd__filter_cond *c, const cJSON *o,
                          const char *name)
{
    size_t w = where_push(x, ".%s", name);
    if (!cJSON_IsObject(o) || !cJSON_GetObjectItemCaseSensitive(o, "key")) {
        int rc = fail(x, VD_EINVAL, "expected an object with a key");
        where_pop(x, w);
        return rc;
    }
    int rc = parse_path(x, cJSON_GetObjectItemCaseSensitive(o, "key"), &c->u.k.path);
    where_pop(x, w);
    return rc;
}

static int cmp_pid(const void *a, const void *b)
{
    return vd_pid_cmp(a, b);
}

static int parse_has_id(struct ctx *x, struct vd__filter_cond *c, const cJSON *a)
{
    if (!cJSON_IsArray(a))
        return fail(x, VD_EINVAL, "has_id: expected an array of point ids");
    uint32_t n = (uint32_t)cJSON_GetArraySize(a);
    c->u.ids.ids = n ? malloc(sizeof(struct vd_pid) * n) : NULL;
    if (n && !c->u.ids.ids)
        return vd_errf(x->err, VD_ENOMEM, "out of memory");
    uint32_t i = 0;
    for (const cJSON *e = a->child; e; e = e->next, i++)
        if (vd_json_get_pid(e, &c->u.ids.ids[i], NULL))
            return fail(x, VD_EINVAL, "has_id[%u]: expected an unsigned integer or a UUID string",
                        i);
    c->u.ids.n = n;
    if (n > 1)
        qsort(c->u.ids.ids, n, sizeof(struct vd_pid), cmp_pid);
    return 0;
}

static int parse_filter(struct ctx *x, const cJSON *o, int depth, struct vd__filter_cond **out);

static int parse_field(struct ctx *x, struct vd__filter_cond *c, const cJSON *o)
{
    static const char *unsupported[] = {"geo_radius", "geo_bounding_box", "geo_polygon",
                                        "values_count"};
    int rc = parse_path(x, cJSON_GetObjectItemCaseSensitive(o, "key"), &c->u.fc.path);
    if (rc)
        return rc;
    c->u.fc.is_empty = -1;
    c->u.fc.is_null = -1;
    for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++) {
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(o, unsupported[i]);
        if (u && !cJSON_IsNull(u))
            return fail(x, VD_EINVAL, "%s: condition not supported by vectord", unsupported[i]);
    }
    const cJSON *v;
    bool any = false;
    if ((v = cJSON_GetObjectItemCaseSensitive(o, "match")) && !cJSON_IsNull(v)) {
        if ((rc = parse_match(x, c, v)))
            return rc;
        any = true;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(o, "range")) && !cJSON_IsNull(v)) {
        if ((rc = parse_range(x, c, v)))
            return rc;
        any = true;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(o, "is_empty")) && !cJSON_IsNull(v)) {
        if (!cJSON_IsBool(v))
            return fail(x, VD_EINVAL, "is_empty: expected true or false");
        c->u.fc.is_empty = cJSON_IsTrue(v);
        any = true;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(o, "is_null")) && !cJSON_IsNull(v)) {
        if (!cJSON_IsBool(v))
            return fail(x, VD_EINVAL, "is_null: expected true or false");
        c->u.fc.is_null = cJSON_IsTrue(v);
        any = true;
    }
    if (!any) /* a 422 in Qdrant's words, which its clients match on */
        return vd_errf(x->err, VD_ERANGE,
                       "Validation error in JSON body: [%s: At least one field condition must be "
                       "specified (the condition on \"%.100s\" needs match, range, is_empty or "
                       "is_null)]",
                       x->where, c->u.fc.path.text);
    return 0;
}

static bool is_filter_object(const cJSON *o)
{
    return cJSON_GetObjectItemCaseSensitive(o, "must") ||
           cJSON_GetObjectItemCaseSensitive(o, "should") ||
           cJSON_GetObjectItemCaseSensitive(o, "must_not") ||
           cJSON_GetObjectItemCaseSensitive(o, "min_should") || !o->child;
}

static int parse_cond(struct ctx *x, const cJSON *o, int depth, struct vd__filter_cond **out)
{
    if (!cJSON_IsObject(o))
        return fail(x, VD_EINVAL, "expected a condition object");
    if (!cJSON_GetObjectItemCaseSensitive(o, "key") && is_filter_object(o))
        return parse_filter(x, o, depth + 1, out);
    struct vd__filter_cond *c = calloc(1, sizeof *c);
    if (!c)
        return vd_errf(x->err, VD_ENOMEM, "out of memory");
    int rc;
    const cJSON *v;
    if (cJSON_GetObjectItemCaseSensitive(o, "key")) {
        c->kind = VD__C_FIELD;
        rc = parse_field(x, c, o);
    } else if ((v = cJSON_GetObjectItemCaseSensitive(o, "is_empty"))) {
        c->kind = VD__C_IS_EMPTY;
        rc = parse_key_cond(x, c, v, "is_empty");
    } else if ((v = cJSON_GetObjectItemCaseSensitive(o, "is_null"))) {
        c->kind = VD__C_IS_NULL;
        rc = parse_key_cond(x, c, v, "is_null");
    } else if ((v = cJSON_GetObjectItemCaseSensitive(o, "has_id"))) {
        c->kind = VD__C_HAS_ID;
        rc = parse_has_id(x, c, v);
    } else if (cJSON_GetObjectItemCaseSensitive(o, "nested") ||
               cJSON_GetObjectItemCaseSensitive(o, "has_vector")) {
        c->kind = VD__C_HAS_ID;
        rc = fail(x, VD_EINVAL, "%s: condition not supported by vectord",
                  cJSON_GetObjectItemCaseSensitive(o, "nested") ? "nested" : "has_vector");
    } else {
        c->kind = VD__C_HAS_ID;
        rc = fail(x, VD_EINVAL,
                  "unknown condition (expected key, is_empty, is_null, has_id or "
                  "a nested filter with must/should/must_not)");
    }
    if (rc) {
        cond_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

/* A clause is an array of conditions, a single condition object, or null (absent). */
static int parse_clause(struct ctx *x, const cJSON *v, int depth, struct vd__filter_clause *cl)
{
    if (!v || cJSON_IsNull(v))
        return 0;
    cl->present = true;
    if (cJSON_IsObject(v)) {
        if (!(cl->c = malloc(sizeof *cl->c)))
            return vd_errf(x->err, VD_ENOMEM, "out of memory");
        int rc = parse_cond(x, v, depth, &cl->c[0]);
        if (rc == 0)
            cl->n = 1;
        return rc;
    }
    if (!cJSON_IsArray(v))
        return fail(x, VD_EINVAL, "expected an array of conditions or a condition object");
    uint32_t n = (uint32_t)cJSON_GetArraySize(v);
    if (n && !(cl->c = calloc(n, sizeof *cl->c)))
        return vd_errf(x->err, VD_ENOMEM, "out of memory");
    uint32_t i = 0;
    for (const cJSON *e = v->child; e; e = e->next, i++) {
        size_t w = where_push(x, "[%u]", i);
        int rc = parse_cond(x, e, depth, &cl->c[i]);
        where_pop(x, w);
        if (rc)
            return rc;
        cl->n = i + 1;
    }
    return 0;
}

static int parse_filter(struct ctx *x, const cJSON *o, int depth, struct vd__filter_cond **out)
{
    if (depth > VD_FILTER_MAX_DEPTH)
        return fail(x, VD_EINVAL, "filters nested deeper than %d levels", VD_FILTER_MAX_DEPTH);
    if (!cJSON_IsObject(o))
        return fail(x, VD_EINVAL, "expected an object with must, should or must_not");
    /* Qdrant refuses unknown fields in a filter: a misspelt "mustt" must not match everything */
    for (const cJSON *k = o->child; k; k = k->next)
        if (strcmp(k->string, "must") && strcmp(k->string, "should") &&
            strcmp(k->string, "must_not") && strcmp(k->string, "min_should"))
            return fail(x, VD_EINVAL,
                        "unknown field \"%.60s\" (a filter has must, should, "
                        "must_not and min_should)",
                        k->string);
    struct vd__filter_cond *c = calloc(1, sizeof *c);
    if (!c)
        return vd_errf(x->err, VD_ENOMEM, "out of memory");
    c->kind = VD__C_FILTER;
    static const char *names[3] = {"must", "should", "must_not"};
    struct vd__filter_clause *cls[3] = {&c->u.f.must, &c->u.f.should, &c->u.f.must_not};
    int rc = 0;
    for (int i = 0; i < 3 && !rc; i++) {
        size_t w = where_push(x, ".%s", names[i]);
        rc = parse_clause(x, cJSON_GetObjectItemCaseSensitive(o, names[i]), depth, cls[i]);
        where_pop(x, w);
    }
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(o, "min_should");
    if (!rc && ms && !cJSON_IsNull(ms)) {
        size_t w = where_push(x, ".min_should");
        const cJSON *conds = cJSON_GetObjectItemCaseSensitive(ms, "conditions");
        const cJSON *cnt = cJSON_GetObjectItemCaseSensitive(ms, "min_count");
        int64_t k;
        if (!cJSON_IsObject(ms) || !cJSON_IsArray(conds)) {
            rc = fail(x, VD_EINVAL, "expected an object with conditions (an array) and min_count");
        } else if (!cnt || !read_int(cnt, &k) || k < 0) {
            rc = fail(x, VD_EINVAL, "min_count: expected a non-negative integer");
        } else if (k == 0 || k > UINT32_MAX) {
            rc = fail(x, VD_ERANGE, "min_count: must be at least 1");
        } else {
            c->u.f.min_count = (uint32_t)k;
            size_t w2 = where_push(x, ".conditions");
            rc = parse_clause(x, conds, depth, &c->u.f.min_should);
            where_pop(x, w2);
        }
        where_pop(x, w);
    }
    if (rc) {
        cond_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

int vd_filter_parse(const cJSON *json, struct vd_filter **out, struct vd_err *err)
{
    struct ctx x = {.err = err, .where = "filter"};
    if (!(x.f = calloc(1, sizeof *x.f)))
        return vd_errf(err, VD_ENOMEM, "out of memory");
    int rc;
    if (!json || cJSON_IsNull(json)) {
        rc = (x.f->root = calloc(1, sizeof *x.f->root)) ? 0
                                                        : vd_errf(err, VD_ENOMEM, "out of memory");
        if (x.f->root)
            x.f->root->kind = VD__C_FILTER;
    } else {
        rc = parse_filter(&x, json, 1, &x.f->root);
    }
    if (rc) {
        vd_filter_free(x.f);
        return rc;
    }
    *out = x.f;
    return 0;
}

void vd_filter_keys(const struct vd_filter *f, void (*fn)(const char *key, void *ctx), void *ctx)
{
    for (uint32_t i = 0; i < f->nkeys; i++)
        fn(f->keys[i], ctx);
}

bool vd_filter_is_empty(const struct vd_filter *f)
{
    const struct vd__filter_cond *r = f->root;
    /* must: [] and must_not: [] hold for every point; should: [] holds for none */
    return r->u.f.must.n == 0 && r->u.f.must_not.n == 0 && !r->u.f.should.present &&
           !r->u.f.min_should.present;
}

/* ---- bounds from payload indexes ------------------------------------------------------------- */

static void *bound_cond(const struct vd__filter_cond *c, const struct vd_filter_sets *ops,
                        bool *exact);

/* The field condition as an index sees it. */
static void *bound_field(const struct vd__filter_cond *c, const struct vd_filter_sets *ops,
                         bool *exact)
{
    struct vd_filter_field v = {.key = c->u.fc.path.text};
    if (c->u.fc.is_empty >= 0 || c->u.fc.is_null >= 0)
        return NULL;
    switch (c->u.fc.match) {
    case VD__M_NONE:
        v.match = VD_FILTER_MATCH_NONE;
        break;
    case VD__M_STR:
        v.match = VD_FILTER_MATCH_STR;
        v.n = 1;
        v.strs = &c->u.fc.str;
        break;
    case VD__M_ANY_STR:
        v.match = VD_FILTER_MATCH_STR;
        v.n = c->u.fc.nset;
        v.strs = c->u.fc.strs;
        break;
    case VD__M_INT:
        v.match = VD_FILTER_MATCH_INT;
        v.n = 1;
        v.ints = &c->u.fc.ival;
        break;
    case VD__M_ANY_INT:
        v.match = VD_FILTER_MATCH_INT;
        v.n = c->u.fc.nset;
        v.ints = c->u.fc.ints;
        break;
    case VD__M_BOOL:
        v.match = VD_FILTER_MATCH_BOOL;
        v.b = c->u.fc.bval;
        break;
    default:
        return NULL; /* except holds on values of any other type; text is a substring test */
    }
    v.has_range = c->u.fc.has_range;
    v.gt_set = c->u.fc.gt_set;
    v.gte_set = c->u.fc.gte_set;
    v.lt_set = c->u.fc.lt_set;
    v.lte_set = c->u.fc.lte_set;
    v.gt = c->u.fc.gt;
    v.gte = c->u.fc.gte;
    v.lt = c->u.fc.lt;
    v.lte = c->u.fc.lte;
    if (v.match == VD_FILTER_MATCH_NONE && !v.has_range)
        return NULL;
    return ops->field(&v, exact, ops->ctx);
}

static void *bound_filter(const struct vd__filter_cond *c, const struct vd_filter_sets *ops,
                          bool *exact)
{
    void *acc = NULL;
    bool ex = true, e;
    const struct vd__filter_clause *cl = &c->u.f.should;
    if (cl->present) {
        /* a union bounds only when every alternative is bounded */
        void *u = NULL;
        for (uint32_t i = 0; i < cl->n; i++) {
            e = false;
            void *s = bound_cond(cl->c[i], ops, &e);
            if (!s) {
                if (u)
                    ops->free(u, ops->ctx);
                u = NULL;
                break;
            }
            ex = ex && e;
            if (!u) {
                u = s;
            } else {
                ops->unite(u, s, ops->ctx);
                ops->free(s, ops->ctx);
            }
        }
        if (!u)
            ex = false; /* should: [] (matches nothing) is left to evaluation too */
        acc = u;
    }
    if (c->u.f.min_should.present || c->u.f.must_not.n > 0)
        ex = false;
    cl = &c->u.f.must;
    for (uint32_t i = 0; i < cl->n; i++) {
        e = false;
        void *s = bound_cond(cl->c[i], ops, &e);
        if (!s) {
            ex = false;
            continue;
        }
        ex = ex && e;
        if (!acc) {
            acc = s;
        } else {
            ops->intersect(acc, s, ops->ctx);
            ops->free(s, ops->ctx);
        }
    }
    *exact = acc && ex;
    return acc;
}

static void *bound_cond(const struct vd__filter_cond *c, const struct vd_filter_sets *ops,
                        bool *exact)
{
    *exact = false;
    switch (c->kind) {
    case VD__C_FILTER:
        return bound_filter(c, ops, exact);
    case VD__C_FIELD:
        return bound_field(c, ops, exact);
    case VD__C_HAS_ID: {
        struct vd_filter_field v = {.ids = c->u.ids.ids, .n_ids = c->u.ids.n};
        return ops->field(&v, exact, ops->ctx);
    }
    default:
        return NULL;
    }
}

void *vd_filter_bound(const struct vd_filter *f, const struct vd_filter_sets *ops, bool *exact)
{
    return bound_cond(f->root, ops, exact);
}
