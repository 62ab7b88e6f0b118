/* Payload indexes: value -> slot sets for keyword and bool keys, sorted (number, slot) pairs for
 * integer and float keys, and the planner's bitmaps. The values of a point under a key come from
 * vd_filter_key_values, the walk filters use, so an index and an evaluated filter agree on
 * arrays, nested paths, nulls and types by construction. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pidx.h"

/* ---- a set of slots: open addressing, linear probing, backward-shift deletion ---- */

#define SLOT_NONE UINT32_MAX

struct slotset {
    uint32_t *t;
    uint32_t cap, n; /* cap a power of two, or 0 */
};

static uint32_t slot_home(uint32_t s, uint32_t cap)
{
    return (uint32_t)(((uint64_t)s * 0x9e3779b97f4a7c15ull) >> 32) & (cap - 1);
}

static int slotset_grow(struct slotset *x)
{
    uint32_t ncap = x->cap ? x->cap * 2 : 8;
    uint32_t *nt = malloc(sizeof *nt * ncap);
    if (!nt)
        return VD_ENOMEM;
    memset(nt, 0xff, sizeof *nt * ncap);
    for (uint32_t i = 0; i < x->cap; i++) {
        if (x->t[i] == SLOT_NONE)
            continue;
        uint32_t j = slot_home(x->t[i], ncap);
        while (nt[j] != SLOT_NONE)
            j = (j + 1) & (ncap - 1);
        nt[j] = x->t[i];
    }
    free(x->t);
    x->t = nt;
    x->cap = ncap;
    return 0;
}

static int slotset_add(struct slotset *x, uint32_t s)
{
    if ((x->n + 1) * 2 > x->cap && slotset_grow(x))
        return VD_ENOMEM;
    uint32_t i = slot_home(s, x->cap);
    for (; x->t[i] != SLOT_NONE; i = (i + 1) & (x->cap - 1))
        if (x->t[i] == s)
            return 0;
    x->t[i] = s;
    x->n++;
    return 0;
}

static void slotset_del(struct slotset *x, uint32_t s)
{
    if (!x->cap)
        return;
    uint32_t mask = x->cap - 1, i = slot_home(s, x->cap);
    for (; x->t[i] != s; i = (i + 1) & mask)
        if (x->t[i] == SLOT_NONE)
            return;
    for (uint32_t j = (i + 1) & mask; x->t[j] != SLOT_NONE; j = (j + 1) & mask) {
        uint32_t h = slot_home(x->t[j], x->cap);
        if (((j - h) & mask) >= ((j - i) & mask)) {
            x->t[i] = x->t[j];
            i = j;
        }
    }
    x->t[i] = SLOT_NONE;
    x->n--;
}

/* ---- keyword: string value -> slot set ---- */

struct kwent {
    char *s; /* NULL: empty entry */
    uint32_t len;
    uint64_t hash;
    struct slotset set;
};

struct kwmap {
    struct kwent *t;
    uint32_t cap, n;
};

static struct kwent *kw_find(const struct kwmap *m, const char *s, uint32_t len, uint64_t h)
{
    if (!m->cap)
        return NULL;
    for (uint32_t i = (uint32_t)h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        struct kwent *e = &m->t[i];
        if (!e->s)
            return NULL;
        if (e->hash == h && e->len == len && memcmp(e->s, s, len) == 0)
            return e;
    }
}

static int kw_grow(struct kwmap *m)
{
    uint32_t ncap = m->cap ? m->cap * 2 : 16;
    struct kwent *nt = calloc(ncap, sizeof *nt);
    if (!nt)
        return VD_ENOMEM;
    for (uint32_t i = 0; i < m->cap; i++) {
        if (!m->t[i].s)
            continue;
        uint32_t j = (uint32_t)m->t[i].hash & (ncap - 1);
        while (nt[j].s)
            j = (j + 1) & (ncap - 1);
        nt[j] = m->t[i];
    }
    free(m->t);
    m->t = nt;
    m->cap = ncap;
    return 0;
}

static struct kwent *kw_get_or_add(struct kwmap *m, const char *s, uint32_t len, uint64_t h)
{
    struct kwent *e = kw_find(m, s, len, h);
    if (e)
        return e;
    if ((m->n + 1) * 4 > m->cap * 3 && kw_grow(m))
        return NULL;
    char *copy = malloc(len ? len : 1);
    if (!copy)
        return NULL;
    memcpy(copy, s, len);
    uint32_t i = (uint32_t)h & (m->cap - 1);
    while (m->t[i].s)
        i = (i + 1) & (m->cap - 1);
    m->t[i] = (struct kwent){.s = copy, .len = len, .hash = h};
    m->n++;
    return &m->t[i];
}

/* Drops an entry whose set became empty, so values that no point holds any more cost nothing. */
static void kw_del(struct kwmap *m, struct kwent *e)
{
    free(e->s);
    free(e->set.t);
    uint32_t mask = m->cap - 1, i = (uint32_t)(e - m->t);
    for (uint32_t j = (i + 1) & mask; m->t[j].s; j = (j + 1) & mask) {
        uint32_t h = (uint32_t)m->t[j].hash & mask;
        if (((j - h) & mask) >= ((j - i) & mask)) {
            m->t[i] = m->t[j];
            i = j;
        }
    }
    memset(&m->t[i], 0, sizeof m->t[i]);
    m->n--;
}

static void kw_release(struct kwmap *m)
{
    for (uint32_t i = 0; i < m->cap; i++) {
        free(m->t[i].s);
        free(m->t[i].set.t);
    }
    free(m->t);
}

/* ---- numbers: (value, slot) pairs, a sorted run plus a small unsorted tail ----
 * Inserting into one big sorted array would move half of it per write; instead new pairs go to a
 * tail that is sorted and merged in when it grows past an eighth of the run, and removed pairs in
 * the run are only marked until that merge. Queries binary-search the run and scan the tail. */

struct nument {
    double d;  /* the number as range compares it */
    int64_t i; /* exact value when is_int */
    uint32_t slot;
    uint8_t is_int;
    uint8_t dead; /* removed; dropped at the next merge */
};

struct numidx {
    struct nument *run;
    size_t nrun, ndead;
    struct nument *tail;
    size_t ntail, tail_cap;
};

static int num_cmp(const struct nument *a, const struct nument *b)
{
    if (a->d != b->d)
        return a->d < b->d ? -1 : 1;
    if (a->slot != b->slot)
        return a->slot < b->slot ? -1 : 1;
    if (a->is_int != b->is_int)
        return a->is_int < b->is_int ? -1 : 1;
    if (a->i != b->i)
        return a->i < b->i ? -1 : 1;
    return 0;
}

static int num_qcmp(const void *a, const void *b)
{
    return num_cmp(a, b);
}

static int num_merge(struct numidx *x)
{
    qsort(x->tail, x->ntail, sizeof *x->tail, num_qcmp);
    size_t n = x->nrun - x->ndead + x->ntail;
    struct nument *nr = malloc(sizeof *nr * (n ? n : 1));
    if (!nr)
        return VD_ENOMEM;
    size_t a = 0, b = 0, k = 0;
    while (a < x->nrun || b < x->ntail) {
        if (a < x->nrun && x->run[a].dead) {
            a++;
        } else if (b == x->ntail || (a < x->nrun && num_cmp(&x->run[a], &x->tail[b]) <= 0)) {
            nr[k++] = x->run[a++];
        } else {
            nr[k++] = x->tail[b++];
        }
    }
    free(x->run);
    x->run = nr;
    x->nrun = k;
    x->ndead = 0;
    x->ntail = 0;
    return 0;
}

static int num_add(struct numidx *x, const struct nument *e)
{
    if (x->ntail == x->tail_cap) {
        size_t ncap = x->tail_cap ? x->tail_cap * 2 : 64;
        struct nument *nt = realloc(x->tail, sizeof *nt * ncap);
        if (!nt)
            return VD_ENOMEM;
        x->tail = nt;
        x->tail_cap = ncap;
    }
    x->tail[x->ntail++] = *e;
    size_t limit = x->nrun / 8 > 1024 ? x->nrun / 8 : 1024;
    if (x->ntail >= limit || x->ndead > limit)
        return num_merge(x);
    return 0;
}

/* First index of the run whose entry is not below key (the full order of num_cmp). */
static size_t num_lower(const struct numidx *x, const struct nument *key)
{
    size_t lo = 0, hi = x->nrun;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (num_cmp(&x->run[mid], key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void num_del(struct numidx *x, const struct nument *e)
{
    for (size_t k = num_lower(x, e); k < x->nrun && num_cmp(&x->run[k], e) == 0; k++) {
        if (!x->run[k].dead) {
            x->run[k].dead = 1;
            x->ndead++;
            return;
        }
    }
    for (size_t k = 0; k < x->ntail; k++) {
        if (num_cmp(&x->tail[k], e) == 0) {
            x->tail[k] = x->tail[--x->ntail];
            return;
        }
    }
}

static void num_release(struct numidx *x)
{
    free(x->run);
    free(x->tail);
}

/* ---- one indexed key ---- */

struct pidx_field {
    char *name;
    struct vd_filter_key *key;
    enum vd_db_pindex_type type;
    bool broken; /* an update failed: the index no longer describes the points */
    uint64_t points;
    struct kwmap kw;
    struct slotset bools[2];
    struct numidx num;
};

const char *pidx_field_name(const struct pidx_field *f)
{
    return f->name;
}

enum vd_db_pindex_type pidx_field_type(const struct pidx_field *f)
{
    return f->type;
}

uint64_t pidx_field_points(const struct pidx_field *f)
{
    return f->points;
}

void pidx_field_free(struct pidx_field *f)
{
    if (!f)
        return;
    free(f->name);
    vd_filter_key_free(f->key);
    kw_release(&f->kw);
    free(f->bools[0].t);
    free(f->bools[1].t);
    num_release(&f->num);
    free(f);
}

/* The values of one point that an index keeps, deduplicated (a point holding "a" twice is in
 * the set of "a" once, and its pairs are removed exactly as they were added). */
struct collect {
    const struct pidx_field *f;
    struct vd_filter_value *v;
    size_t n, cap;
    bool oom;
    struct vd_filter_value stack[16];
};

static void collect_fn(const struct vd_filter_value *v, void *arg)
{
    struct collect *c = arg;
    switch (c->f->type) {
    case VD_DB_PINDEX_KEYWORD:
        if (v->t != VD_FILTER_V_STR)
            return;
        break;
    case VD_DB_PINDEX_BOOL:
        if (v->t != VD_FILTER_V_BOOL)
            return;
        break;
    default:
        /* Both number types keep integers and floats: a range reads either, so an index
         * holding only one kind could not answer it. NaN satisfies no range. */
        if ((v->t != VD_FILTER_V_INT && v->t != VD_FILTER_V_DBL) || isnan(v->d))
            return;
        break;
    }
    if (c->n == c->cap) {
        size_t ncap = c->cap * 2;
        struct vd_filter_value *nv = malloc(sizeof *nv * ncap);
        if (!nv) {
            c->oom = true;
            return;
        }
        memcpy(nv, c->v, sizeof *nv * c->n);
        if (c->v != c->stack)
            free(c->v);
        c->v = nv;
        c->cap = ncap;
    }
    c->v[c->n++] = *v;
}

static int value_cmp(const void *pa, const void *pb)
{
    const struct vd_filter_value *a = pa, *b = pb;
    if (a->t != b->t)
        return a->t < b->t ? -1 : 1;
    switch (a->t) {
    case VD_FILTER_V_BOOL:
        return (int)a->b - (int)b->b;
    case VD_FILTER_V_INT:
        return a->i < b->i ? -1 : a->i > b->i;
    case VD_FILTER_V_DBL:
        return a->d < b->d ? -1 : a->d > b->d;
    default:
        if (a->slen != b->slen)
            return a->slen < b->slen ? -1 : 1;
        return memcmp(a->s, b->s, a->slen);
    }
}

static void collect_values(const struct pidx_field *f, const uint8_t *bin, uint32_t len,
                           struct collect *c)
{
    c->f = f;
    c->v = c->stack;
    c->n = 0;
    c->cap = sizeof c->stack / sizeof c->stack[0];
    c->oom = false;
    vd_filter_key_values(f->key, bin, len, collect_fn, c);
    if (c->n > 1) {
        qsort(c->v, c->n, sizeof *c->v, value_cmp);
        size_t k = 1;
        for (size_t i = 1; i < c->n; i++)
            if (value_cmp(&c->v[i], &c->v[k - 1]) != 0)
                c->v[k++] = c->v[i];
        c->n = k;
    }
}

static void collect_release(struct collect *c)
{
    if (c->v != c->stack)
        free(c->v);
}

static struct nument num_entry(const struct vd_filter_value *v, uint32_t slot)
{
    return (struct nument){.d = v->d,
                           .i = v->t == VD_FILTER_V_INT ? v->i : 0,
                           .slot = slot,
                           .is_int = v->t == VD_FILTER_V_INT};
}

static void mark_broken(struct pidx_field *f)
{
    if (!f->broken)
        vd_log_error("payload index '%s': out of memory updating it; searches ignore it until "
                     "it is created again or the server restarts",
                     f->name);
    f->broken = true;
}

static void field_add(struct pidx_field *f, uint32_t slot, const uint8_t *bin, uint32_t len)
{
    if (f->broken || !bin)
        return;
    struct collect c;
    collect_values(f, bin, len, &c);
    int rc = c.oom ? VD_ENOMEM : 0;
    for (size_t i = 0; i < c.n && !rc; i++) {
        const struct vd_filter_value *v = &c.v[i];
        if (f->type == VD_DB_PINDEX_KEYWORD) {
            struct kwent *e = kw_get_or_add(&f->kw, v->s, v->slen, vd_hash64(v->s, v->slen, 0));
            rc = e ? slotset_add(&e->set, slot) : VD_ENOMEM;
        } else if (f->type == VD_DB_PINDEX_BOOL) {
            rc = slotset_add(&f->bools[v->b], slot);
        } else {
            struct nument e = num_entry(v, slot);
            rc = num_add(&f->num, &e);
        }
    }
    if (c.n && !rc)
        f->points++;
    collect_release(&c);
    if (rc)
        mark_broken(f);
}

static void field_remove(struct pidx_field *f, uint32_t slot, const uint8_t *bin, uint32_t len)
{
    if (f->broken || !bin)
        return;
    struct collect c;
    collect_values(f, bin, len, &c);
    if (c.oom) {
        collect_release(&c);
        mark_broken(f);
        return;
    }
    for (size_t i = 0; i < c.n; i++) {
        const struct vd_filter_value *v = &c.v[i];
        if (f->type == VD_DB_PINDEX_KEYWORD) {
            struct kwent *e = kw_find(&f->kw, v->s, v->slen, vd_hash64(v->s, v->slen, 0));
            if (e) {
                slotset_del(&e->set, slot);
                if (e->set.n == 0)
                    kw_del(&f->kw, e);
            }
        } else if (f->type == VD_DB_PINDEX_BOOL) {
            slotset_del(&f->bools[v->b], slot);
        } else {
            struct nument e = num_entry(v, slot);
            num_del(&f->num, &e);
        }
    }
    if (c.n)
        f->points--;
    collect_release(&c);
}

int pidx_build(const char *name, enum vd_db_pindex_type type, const struct pmap *m,
               struct pidx_field **out, struct vd_err *err)
{
    if (!vd_db_pindex_type_name(type))
        return vd_errf(err, VD_EINVAL, "unknown payload index type %d", (int)type);
    struct pidx_field *f = calloc(1, sizeof *f);
    if (!f || !(f->name = strdup(name))) {
        free(f);
        return vd_errf(err, VD_ENOMEM, "out of memory");
    }
    f->type = type;
    int rc = vd_filter_key_parse(name, &f->key, err);
    if (rc) {
        pidx_field_free(f);
        return rc;
    }
    for (size_t i = 0; i < m->cap; i++) {
        const struct pmap_entry *e = &m->slots[i];
        if (e->used)
            field_add(f, e->slot, e->bin, e->len);
    }
    if (!f->broken && f->num.ntail && num_merge(&f->num))
        f->broken = true;
    if (f->broken) {
        pidx_field_free(f);
        return vd_errf(err, VD_ENOMEM, "out of memory building the index of '%s'", name);
    }
    *out = f;
    return 0;
}

/* ---- the set of indexes ---- */

void pidx_init(struct pidx *x)
{
    memset(x, 0, sizeof *x);
}

void pidx_release(struct pidx *x)
{
    for (size_t i = 0; i < x->n; i++)
        pidx_field_free(x->v[i]);
    free(x->v);
    memset(x, 0, sizeof *x);
}

static struct pidx_field **find_field(const struct pidx *x, const char *name)
{
    for (size_t i = 0; i < x->n; i++)
        if (!strcmp(x->v[i]->name, name))
            return &x->v[i];
    return NULL;
}

int pidx_put(struct pidx *x, struct pidx_field *f)
{
    struct pidx_field **old = find_field(x, f->name);
    if (old) {
        pidx_field_free(*old);
        *old = f;
        return 0;
    }
    struct pidx_field **nv = realloc(x->v, sizeof *nv * (x->n + 1));
    if (!nv)
        return VD_ENOMEM;
    x->v = nv;
    x->v[x->n++] = f;
    return 0;
}

int pidx_drop(struct pidx *x, const char *name)
{
    struct pidx_field **f = find_field(x, name);
    if (!f)
        return VD_ENOTFOUND;
    pidx_field_free(*f);
    *f = x->v[--x->n];
    return 0;
}

void pidx_point_add(struct pidx *x, uint32_t slot, const uint8_t *bin, uint32_t len)
{
    for (size_t i = 0; i < x->n; i++)
        field_add(x->v[i], slot, bin, len);
}

void pidx_point_remove(struct pidx *x, uint32_t slot, const uint8_t *bin, uint32_t len)
{
    for (size_t i = 0; i < x->n; i++)
        field_remove(x->v[i], slot, bin, len);
}

/* ---- planning ---- */

struct plan_ctx {
    const struct pidx *x;
    const struct pmap *m;
};

static struct pidx_bits *bits_new(const struct pmap *m)
{
    struct pidx_bits *b = malloc(sizeof *b);
    if (!b)
        return NULL;
    b->nw = ((size_t)m->nslots + 63) / 64;
    b->w = calloc(b->nw ? b->nw : 1, sizeof *b->w);
    if (!b->w) {
        free(b);
        return NULL;
    }
    return b;
}

static void bit_set(struct pidx_bits *b, uint32_t s)
{
    if (s / 64 < b->nw)
        b->w[s / 64] |= 1ull << (s % 64);
}

static void bits_or_set(struct pidx_bits *b, const struct slotset *x)
{
    for (uint32_t i = 0; i < x->cap; i++)
        if (x->t[i] != SLOT_NONE)
            bit_set(b, x->t[i]);
}

static bool below_lower(const struct vd_filter_field *c, double d)
{
    return (c->gt_set && !(d > c->gt)) || (c->gte_set && !(d >= c->gte));
}

static bool above_upper(const struct vd_filter_field *c, double d)
{
    return (c->lt_set && !(d < c->lt)) || (c->lte_set && !(d <= c->lte));
}

static void num_range(const struct numidx *x, const struct vd_filter_field *c, struct pidx_bits *b)
{
    /* below_lower is true on a prefix of the run and above_upper on a suffix */
    size_t lo = 0, hi = x->nrun;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (below_lower(c, x->run[mid].d))
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t k = lo; k < x->nrun && !above_upper(c, x->run[k].d); k++)
        if (!x->run[k].dead)
            bit_set(b, x->run[k].slot);
    for (size_t k = 0; k < x->ntail; k++)
        if (!below_lower(c, x->tail[k].d) && !above_upper(c, x->tail[k].d))
            bit_set(b, x->tail[k].slot);
}

static void num_match_int(const struct numidx *x, int64_t v, struct pidx_bits *b)
{
    struct nument key = {.d = (double)v};
    size_t lo = 0, hi = x->nrun;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (x->run[mid].d < key.d)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t k = lo; k < x->nrun && x->run[k].d == key.d; k++)
        if (!x->run[k].dead && x->run[k].is_int && x->run[k].i == v)
            bit_set(b, x->run[k].slot);
    for (size_t k = 0; k < x->ntail; k++)
        if (x->tail[k].is_int && x->tail[k].i == v)
            bit_set(b, x->tail[k].slot);
}

static const struct pidx_field *usable(const struct pidx *x, const char *key,
                                       enum vd_db_pindex_type a, enum vd_db_pindex_type b)
{
    for (size_t i = 0; i < x->n; i++) {
        const struct pidx_field *f = x->v[i];
        if (!f->broken && (f->type == a || f->type == b) && !strcmp(f->name, key))
            return f;
    }
    return NULL;
}

static void *plan_field(const struct vd_filter_field *c, bool *exact, void *arg)
{
    struct plan_ctx *p = arg;
    if (!c->key) { /* has_id */
        struct pidx_bits *b = bits_new(p->m);
        if (!b)
            return NULL;
        for (uint32_t i = 0; i < c->n_ids; i++) {
            const struct pmap_entry *e = pmap_get(p->m, &c->ids[i]);
            if (e)
                bit_set(b, e->slot);
        }
        *exact = true;
        return b;
    }
    /* every part of the condition must be answerable, or its union is no bound */
    const struct pidx_field *fm = NULL, *fr = NULL;
    switch (c->match) {
    case VD_FILTER_MATCH_NONE:
        break;
    case VD_FILTER_MATCH_STR:
        fm = usable(p->x, c->key, VD_DB_PINDEX_KEYWORD, VD_DB_PINDEX_KEYWORD);
        break;
    case VD_FILTER_MATCH_INT:
        fm = usable(p->x, c->key, VD_DB_PINDEX_INTEGER, VD_DB_PINDEX_FLOAT);
        break;
    case VD_FILTER_MATCH_BOOL:
        fm = usable(p->x, c->key, VD_DB_PINDEX_BOOL, VD_DB_PINDEX_BOOL);
        break;
    default:
        return NULL;
    }
    if (c->match != VD_FILTER_MATCH_NONE && !fm)
        return NULL;
    if (c->has_range && !(fr = usable(p->x, c->key, VD_DB_PINDEX_INTEGER, VD_DB_PINDEX_FLOAT)))
        return NULL;
    struct pidx_bits *b = bits_new(p->m);
    if (!b)
        return NULL;
    if (fm) {
        for (uint32_t i = 0; c->match == VD_FILTER_MATCH_STR && i < c->n; i++) {
            const struct vd_filter_str *s = &c->strs[i];
            const struct kwent *e = kw_find(&fm->kw, s->s, s->len, vd_hash64(s->s, s->len, 0));
            if (e)
                bits_or_set(b, &e->set);
        }
        for (uint32_t i = 0; c->match == VD_FILTER_MATCH_INT && i < c->n; i++)
            num_match_int(&fm->num, c->ints[i], b);
        if (c->match == VD_FILTER_MATCH_BOOL)
            bits_or_set(b, &fm->bools[c->b]);
    }
    if (fr)
        num_range(&fr->num, c, b);
    *exact = true;
    return b;
}

static void plan_and(void *acc, const void *other, void *arg)
{
    struct pidx_bits *a = acc;
    const struct pidx_bits *o = other;
    for (size_t i = 0; i < a->nw; i++)
        a->w[i] &= i < o->nw ? o->w[i] : 0;
}

static void plan_or(void *acc, const void *other, void *arg)
{
    struct pidx_bits *a = acc;
    const struct pidx_bits *o = other;
    for (size_t i = 0; i < a->nw && i < o->nw; i++)
        a->w[i] |= o->w[i];
}

static void plan_free(void *set, void *arg)
{
    pidx_bits_free(set);
}

void pidx_plan(const struct pidx *x, const struct pmap *m, const struct vd_filter *f,
               struct pidx_bits **out, bool *exact)
{
    struct plan_ctx p = {x, m};
    struct vd_filter_sets ops = {plan_field, plan_and, plan_or, plan_free, &p};
    *exact = false;
    *out = f ? vd_filter_bound(f, &ops, exact) : NULL;
}

void pidx_bits_free(struct pidx_bits *b)
{
    if (!b)
        return;
    free(b->w);
    free(b);
}

uint64_t pidx_bits_count(const struct pidx_bits *b)
{
    uint64_t n = 0;
    for (size_t i = 0; i < b->nw; i++)
        n += (uint64_t)__builtin_popcountll(b->w[i]);
    return n;
}

void pidx_bits_refine(struct pidx_bits *b, const struct pmap *m, const struct vd_filter *f)
{
    for (size_t i = 0; i < b->nw; i++) {
        for (uint64_t w = b->w[i]; w; w &= w - 1) {
            uint32_t s = (uint32_t)(i * 64 + (size_t)__builtin_ctzll(w));
            const struct pmap_entry *e =
                s < m->nslots && m->sid[s].type ? pmap_get(m, &m->sid[s]) : NULL;
            if (!e || !vd_filter_match_bin(f, &e->id, e->bin, e->len))
                b->w[i] &= ~(1ull << (s % 64));
        }
    }
}

/* ---- type names ---- */

const char *vd_db_pindex_type_name(enum vd_db_pindex_type t)
{
    switch (t) {
    case VD_DB_PINDEX_KEYWORD:
        return "keyword";
    case VD_DB_PINDEX_INTEGER:
        return "integer";
    case VD_DB_PINDEX_FLOAT:
        return "float";
    case VD_DB_PINDEX_BOOL:
        return "bool";
    }
    return NULL;
}

int vd_db_pindex_type_parse(const char *name, enum vd_db_pindex_type *out)
{
    for (int t = VD_DB_PINDEX_KEYWORD; t <= VD_DB_PINDEX_BOOL; t++) {
        if (!strcmp(name, vd_db_pindex_type_name((enum vd_db_pindex_type)t))) {
            *out = (enum vd_db_pindex_type)t;
            return 0;
        }
    }
    return VD_EINVAL;
}
