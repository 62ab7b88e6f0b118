/* Payload indexes: what an index answers must equal evaluating the filter on every point, for
 * random payloads (arrays, nested objects, missing keys, nulls, values of the wrong type) and
 * random filters over every operator; indexes stay right through upserts, overwrites, deletes
 * and payload edits, are rebuilt after a restart, and never change a count, scroll or search. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "pidx.h"
#include "pmap.h"
#include "vectord/db.h"
#include "vectord/json.h"

/* ---- random payloads and filters ---- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

static const char *const STRS[] = {"\"a\"", "\"b\"", "\"c\"", "\"\"", "\"3\""};
static const char *const NUMS[] = {
    "0", "1", "-2", "3", "1.0", "2.5", "-0", "1e0", "-3.5", "7", "9007199254740993"};

static void put_scalar(struct vd_buf *b)
{
    switch (rnd(10)) {
    case 0:
    case 1:
    case 2:
        vd_buf_puts(b, STRS[rnd(5)]);
        break;
    case 3:
    case 4:
    case 5:
    case 6:
        vd_buf_puts(b, NUMS[rnd(11)]);
        break;
    case 7:
        vd_buf_puts(b, rnd(2) ? "true" : "false");
        break;
    case 8:
        vd_buf_puts(b, "null");
        break;
    default:
        vd_buf_puts(b, rnd(2) ? "{}" : "[[\"a\", 1]]"); /* nested: matches nothing */
        break;
    }
}

/* A value for a field: a scalar, or an array of scalars (possibly empty). */
static void put_value(struct vd_buf *b)
{
    if (rnd(3)) {
        put_scalar(b);
        return;
    }
    uint32_t n = rnd(4);
    vd_buf_puts(b, "[");
    for (uint32_t i = 0; i < n; i++) {
        if (i)
            vd_buf_puts(b, ",");
        put_scalar(b);
    }
    vd_buf_puts(b, "]");
}

static void put_obj(struct vd_buf *b)
{
    vd_buf_puts(b, "{");
    bool first = true;
    static const char *const inner[] = {"x", "y"};
    for (int i = 0; i < 2; i++) {
        if (rnd(4) == 0)
            continue;
        vd_buf_printf(b, "%s\"%s\":", first ? "" : ",", inner[i]);
        first = false;
        put_value(b);
    }
    vd_buf_puts(b, "}");
}

/* A payload object (text), or NULL for none. Keys k, n, f, b, u and the object o (or an array of
 * objects) with x and y; each key may be missing. */
static char *rand_payload(void)
{
    if (rnd(12) == 0)
        return NULL;
    struct vd_buf b;
    vd_buf_init(&b);
    vd_buf_puts(&b, "{");
    static const char *const keys[] = {"k", "n", "f", "b", "u"};
    bool first = true;
    for (int i = 0; i < 5; i++) {
        if (rnd(5) == 0)
            continue;
        vd_buf_printf(&b, "%s\"%s\":", first ? "" : ",", keys[i]);
        first = false;
        put_value(&b);
    }
    if (rnd(3)) {
        vd_buf_printf(&b, "%s\"o\":", first ? "" : ",");
        if (rnd(2)) {
            put_obj(&b);
        } else {
            vd_buf_puts(&b, "[");
            uint32_t n = rnd(3);
            for (uint32_t i = 0; i < n; i++) {
                if (i)
                    vd_buf_puts(&b, ",");
                put_obj(&b);
            }
            vd_buf_puts(&b, "]");
        }
    }
    vd_buf_puts(&b, "}");
    size_t len;
    return vd_buf_steal(&b, &len);
}

static const char *const CKEYS[] = {"k", "n", "f", "b", "u", "o.x", "o[].y", "o.y", "o[].x"};

/* A key for a condition: usually one indexed for that kind of condition, so that most filters
 * are answered by an index, sometimes any key. */
static const char *pick_key(int kind)
{
    static const char *const str_keys[] = {"k", "o.x"};
    static const char *const num_keys[] = {"n", "f", "o[].y", "u"};
    if (rnd(10) < 3)
        return CKEYS[rnd(9)];
    switch (kind) {
    case 0:
        return str_keys[rnd(2)];
    case 1:
        return num_keys[rnd(4)];
    default:
        return "b";
    }
}

static void put_range(struct vd_buf *b)
{
    static const char *const ops[] = {"gt", "gte", "lt", "lte"};
    static const char *const vals[] = {"-3", "0", "1", "2.5", "1.0", "3", "-0.5"};
    vd_buf_puts(b, "{");
    bool first = true;
    for (int i = 0; i < 4; i++) {
        if (rnd(2))
            continue;
        vd_buf_printf(b, "%s\"%s\":%s", first ? "" : ",", ops[i], vals[rnd(7)]);
        first = false;
    }
    vd_buf_puts(b, "}");
}

static void put_filter(struct vd_buf *b, int depth);

static void put_cond(struct vd_buf *b, int depth)
{
    static const char *const ints[] = {"0", "1", "-2", "3", "7", "9007199254740993"};
    static const char *const strs[] = {"\"a\"", "\"b\"", "\"c\"", "\"\"", "\"3\""};
    uint32_t kind = rnd(depth < 2 ? 12 : 11);
    const char *k = pick_key(kind <= 1 ? 0 : kind == 4 ? 2 : kind <= 10 ? 1 : 0);
    switch (kind) {
    case 0:
        vd_buf_printf(b, "{\"key\":\"%s\",\"match\":{\"value\":%s}}", k, strs[rnd(5)]);
        break;
    case 1:
        vd_buf_printf(b, "{\"key\":\"%s\",\"match\":{\"any\":[%s,%s]}}", k, strs[rnd(5)],
                      strs[rnd(5)]);
        break;
    case 2:
        vd_buf_printf(b, "{\"key\":\"%s\",\"match\":{\"value\":%s}}", k, ints[rnd(6)]);
        break;
    case 3:
        vd_buf_printf(b, "{\"key\":\"%s\",\"match\":{\"any\":[%s,%s]}}", k, ints[rnd(6)],
                      ints[rnd(6)]);
        break;
    case 4:
        vd_buf_printf(b, "{\"key\":\"%s\",\"match\":{\"value\":%s}}", k, rnd(2) ? "true" : "false");
        break;
    case 5:
    case 6:
        vd_buf_printf(b, "{\"key\":\"%s\",\"range\":", k);
        put_range(b);
        vd_buf_puts(b, "}");
        break;
    case 7:
        vd_buf_printf(b, "{\"key\":\"%s\",\"match\":{\"except\":[%s]}}", k, strs[rnd(5)]);
        break;
    case 8:
        vd_buf_printf(b, "{\"%s\":{\"key\":\"%s\"}}", rnd(2) ? "is_empty" : "is_null", k);
        break;
    case 9:
        vd_buf_printf(b, "{\"has_id\":[%u,%u,%u]}", rnd(64), rnd(64), rnd(64));
        break;
    case 10:
        vd_buf_printf(b, "{\"key\":\"%s\",\"match\":{\"value\":%s},\"range\":", k, ints[rnd(6)]);
        put_range(b);
        vd_buf_puts(b, "}");
        break;
    default:
        put_filter(b, depth + 1);
        break;
    }
}

static void put_filter(struct vd_buf *b, int depth)
{
    static const char *const clauses[] = {"must", "should", "must_not"};
    vd_buf_puts(b, "{");
    bool first = true;
    for (int i = 0; i < 3; i++) {
        /* must most often, so that filters are usually bounded by an index */
        if (rnd(i == 0 ? 5 : 3) == 0 || (i > 0 && rnd(2)))
            continue;
        uint32_t n = 1 + rnd(3);
        vd_buf_printf(b, "%s\"%s\":[", first ? "" : ",", clauses[i]);
        first = false;
        for (uint32_t j = 0; j < n; j++) {
            if (j)
                vd_buf_puts(b, ",");
            put_cond(b, depth);
        }
        vd_buf_puts(b, "]");
    }
    vd_buf_puts(b, "}");
}

static struct vd_filter *rand_filter(char **text)
{
    struct vd_buf b;
    vd_buf_init(&b);
    put_filter(&b, 0);
    size_t len;
    *text = vd_buf_steal(&b, &len);
    cJSON *j = NULL;
    struct vd_err e;
    if (vd_json_parse(*text, len, VD_JSON_MAX_DEPTH, &j, &e))
        fail_msg("filter %s: %s", *text, e.msg);
    struct vd_filter *f;
    if (vd_filter_parse(j, &f, &e))
        fail_msg("filter %s: %s", *text, e.msg);
    cJSON_Delete(j);
    return f;
}

static void encode(const char *text, uint8_t **bin, size_t *len)
{
    *bin = NULL;
    *len = 0;
    if (!text)
        return;
    cJSON *j = NULL;
    struct vd_err e;
    assert_int_equal(vd_json_parse(text, strlen(text), VD_JSON_MAX_DEPTH, &j, &e), 0);
    assert_int_equal(vd_payload_encode(j, bin, len), 0);
    cJSON_Delete(j);
}

static const struct {
    const char *key;
    enum vd_db_pindex_type type;
} INDEXES[] = {{"k", VD_DB_PINDEX_KEYWORD},   {"n", VD_DB_PINDEX_INTEGER},
               {"f", VD_DB_PINDEX_FLOAT},     {"b", VD_DB_PINDEX_BOOL},
               {"o.x", VD_DB_PINDEX_KEYWORD}, {"o[].y", VD_DB_PINDEX_FLOAT},
               {"u", VD_DB_PINDEX_INTEGER}};
#define N_INDEXES (sizeof INDEXES / sizeof INDEXES[0])

/* ---- the index structures against brute force ---- */

#define NPTS 400

/* Replaces a point's payload as the write path does: out of the indexes, into the map, in. */
static void set_point(struct pmap *m, struct pidx *x, uint64_t id, const char *text)
{
    struct vd_pid pid = {.type = VD_PID_NUM, .u.num = id};
    uint8_t *bin;
    size_t len;
    encode(text, &bin, &len);
    const struct pmap_entry *e = pmap_get(m, &pid);
    if (e)
        pidx_point_remove(x, e->slot, e->bin, e->len);
    assert_int_equal(pmap_set(m, &pid, bin, (uint32_t)len), 0);
    pidx_point_add(x, pmap_get(m, &pid)->slot, bin, (uint32_t)len);
}

static void del_point(struct pmap *m, struct pidx *x, uint64_t id)
{
    struct vd_pid pid = {.type = VD_PID_NUM, .u.num = id};
    const struct pmap_entry *e = pmap_get(m, &pid);
    if (e)
        pidx_point_remove(x, e->slot, e->bin, e->len);
    pmap_del(m, &pid);
}

/* Checks every random filter: the plan holds every match, and only matches when exact.
 * Returns how many plans were exact. */
static int check_plans(const struct pmap *m, const struct pidx *x, int nfilters)
{
    int exact_n = 0;
    for (int i = 0; i < nfilters; i++) {
        char *text;
        struct vd_filter *f = rand_filter(&text);
        struct pidx_bits *bits;
        bool exact;
        pidx_plan(x, m, f, &bits, &exact);
        if (bits) {
            exact_n += exact;
            for (size_t s = 0; s < bits->nw * 64; s++) {
                bool bit = (bits->w[s / 64] >> (s % 64)) & 1;
                const struct pmap_entry *e =
                    s < m->nslots && m->sid[s].type ? pmap_get(m, &m->sid[s]) : NULL;
                bool match = e && vd_filter_match_bin(f, &e->id, e->bin, e->len);
                if (match && !bit)
                    fail_msg("filter %s: point %llu matches but the index left it out", text,
                             (unsigned long long)e->id.u.num);
                if (exact && bit && !match)
                    fail_msg("filter %s: exact plan holds slot %zu, which does not match", text, s);
            }
            /* refining a plan leaves exactly the matches */
            uint64_t before = pidx_bits_count(bits);
            pidx_bits_refine(bits, m, f);
            uint64_t want = 0;
            for (size_t j = 0; j < m->cap; j++)
                if (m->slots[j].used &&
                    vd_filter_match_bin(f, &m->slots[j].id, m->slots[j].bin, m->slots[j].len))
                    want++;
            assert_int_equal(pidx_bits_count(bits), want);
            assert_true(before >= want);
            pidx_bits_free(bits);
        }
        vd_filter_free(f);
        free(text);
    }
    return exact_n;
}

static void test_structures_match_brute_force(void **state)
{
    struct pmap m;
    struct pidx x;
    pmap_init(&m);
    pidx_init(&x);
    /* half the points before the indexes exist (built), half after (maintained) */
    for (uint64_t id = 0; id < NPTS / 2; id++) {
        char *t = rand_payload();
        set_point(&m, &x, id, t);
        free(t);
    }
    for (size_t i = 0; i < N_INDEXES; i++) {
        struct pidx_field *f;
        struct vd_err e;
        assert_int_equal(pidx_build(INDEXES[i].key, INDEXES[i].type, &m, &f, &e), 0);
        assert_int_equal(pidx_put(&x, f), 0);
    }
    for (uint64_t id = NPTS / 2; id < NPTS; id++) {
        char *t = rand_payload();
        set_point(&m, &x, id, t);
        free(t);
    }
    int exact = check_plans(&m, &x, 400);
    print_message("%d of 400 plans exact\n", exact);
    /* the generator must exercise the indexes, or this test proves nothing */
    assert_true(exact > 40);
    /* churn: overwrites, deletes, re-inserts into freed slots */
    for (int round = 0; round < 3000; round++) {
        uint64_t id = rnd(NPTS + 50);
        if (rnd(4) == 0) {
            del_point(&m, &x, id);
        } else {
            char *t = rand_payload();
            set_point(&m, &x, id, t);
            free(t);
        }
        if (round % 1000 == 999)
            check_plans(&m, &x, 150);
    }
    /* a rebuilt index answers exactly as the maintained one */
    struct pidx y;
    pidx_init(&y);
    for (size_t i = 0; i < N_INDEXES; i++) {
        struct pidx_field *f;
        struct vd_err e;
        assert_int_equal(pidx_build(INDEXES[i].key, INDEXES[i].type, &m, &f, &e), 0);
        assert_int_equal(pidx_field_points(f), pidx_field_points(x.v[i]));
        assert_int_equal(pidx_put(&y, f), 0);
    }
    check_plans(&m, &y, 200);
    /* dropping an index: its conditions are no longer bounded */
    assert_int_equal(pidx_drop(&y, "k"), 0);
    assert_int_equal(pidx_drop(&y, "k"), VD_ENOTFOUND);
    pidx_release(&y);
    pidx_release(&x);
    pmap_release(&m);
}

/* Type mismatch: a string in an integer index and numbers in a keyword index are not indexed,
 * and conditions of another type on an indexed key are left to evaluation. */
static void test_type_mismatch(void **state)
{
    struct pmap m;
    struct pidx x;
    pmap_init(&m);
    pidx_init(&x);
    set_point(&m, &x, 1, "{\"n\": \"5\", \"k\": 5}");
    set_point(&m, &x, 2, "{\"n\": 5, \"k\": \"5\"}");
    set_point(&m, &x, 3, "{\"n\": [5.0, null], \"k\": [\"5\", 5]}");
    struct pidx_field *f;
    struct vd_err e;
    assert_int_equal(pidx_build("n", VD_DB_PINDEX_INTEGER, &m, &f, &e), 0);
    assert_int_equal(pidx_field_points(f), 2); /* "5" is no number */
    assert_int_equal(pidx_put(&x, f), 0);
    assert_int_equal(pidx_build("k", VD_DB_PINDEX_KEYWORD, &m, &f, &e), 0);
    assert_int_equal(pidx_field_points(f), 2);
    assert_int_equal(pidx_put(&x, f), 0);
    assert_int_equal(pidx_build("a..b", VD_DB_PINDEX_KEYWORD, &m, &f, &e), VD_EINVAL);
    assert_non_null(strstr(e.msg, "a..b"));
    static const struct {
        const char *filter;
        int bounded;    /* plan given */
        uint64_t count; /* matches */
    } cases[] = {
        {"{\"must\":[{\"key\":\"n\",\"match\":{\"value\":5}}]}", 1, 1},
        {"{\"must\":[{\"key\":\"n\",\"range\":{\"gte\":5,\"lte\":5}}]}", 1, 2},
        {"{\"must\":[{\"key\":\"n\",\"match\":{\"value\":\"5\"}}]}", 0, 1},
        {"{\"must\":[{\"key\":\"k\",\"match\":{\"value\":\"5\"}}]}", 1, 2},
        {"{\"must\":[{\"key\":\"k\",\"match\":{\"value\":5}}]}", 0, 2},
        {"{\"must\":[{\"key\":\"k\",\"match\":{\"any\":[\"5\",\"6\"]}},"
         "{\"key\":\"n\",\"match\":{\"value\":\"5\"}}]}",
         1, 0},
        {"{\"should\":[{\"key\":\"k\",\"match\":{\"value\":\"5\"}},{\"is_null\":{\"key\":\"n\"}}]}",
         0, 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cJSON *j = NULL;
        assert_int_equal(vd_json_parse(cases[i].filter, strlen(cases[i].filter), 64, &j, &e), 0);
        struct vd_filter *flt;
        assert_int_equal(vd_filter_parse(j, &flt, &e), 0);
        cJSON_Delete(j);
        struct pidx_bits *bits;
        bool exact;
        pidx_plan(&x, &m, flt, &bits, &exact);
        if ((bits != NULL) != cases[i].bounded)
            fail_msg("case %zu (%s): bounded %d", i, cases[i].filter, bits != NULL);
        if (bits) {
            pidx_bits_refine(bits, &m, flt);
            assert_int_equal(pidx_bits_count(bits), cases[i].count);
        }
        pidx_bits_free(bits);
        vd_filter_free(flt);
    }
    pidx_release(&x);
    pmap_release(&m);
}

/* ---- through the database ---- */

#include "unit/db_fixture.h"

static struct vd_coll *create(struct vd_db *db, const char *name)
{
    return create_coll(db, name, 2, VD_METRIC_EUCLID, 64, 10000);
}

/* The same random write to both collections. */
static void write_both(struct vd_coll *a, struct vd_coll *b, int kind)
{
    struct vd_coll *cs[2] = {a, b};
    uint32_t n = 1 + rnd(20);
    struct vd_db_point p[20];
    cJSON *pl[20] = {0};
    float v[40];
    struct vd_pid ids[20];
    for (uint32_t i = 0; i < n; i++) {
        ids[i] = (struct vd_pid){.type = VD_PID_NUM, .u.num = rnd(300)};
        v[2 * i] = (float)rnd(1000) / 10.0f;
        v[2 * i + 1] = (float)rnd(1000) / 10.0f;
        char *t = rand_payload();
        struct vd_err e;
        if (t)
            assert_int_equal(vd_json_parse(t, strlen(t), 64, &pl[i], &e), 0);
        free(t);
        p[i] = (struct vd_db_point){.id = ids[i], .vec = v + 2 * i, .payload = pl[i]};
    }
    cJSON *keys = cJSON_CreateArray();
    cJSON_AddItemToArray(keys, cJSON_CreateString(rnd(2) ? "k" : "o"));
    char *ftext = NULL;
    struct vd_filter *f = kind == 5 ? rand_filter(&ftext) : NULL;
    bool by_filter_delete = rnd(4) == 0;
    for (int c = 0; c < 2; c++) {
        struct vd_err e;
        int rc;
        switch (kind) {
        case 0: /* upsert (new points and overwrites) */
            rc = vd_db_upsert(cs[c], p, n, on_done, &W, &e);
            break;
        case 1:
            rc = vd_db_delete(cs[c], ids, n, on_done, &W, &e);
            break;
        case 2:
            rc = pl[0] ? vd_db_payload_edit(cs[c], VD_DB_PAYLOAD_SET, pl[0], ids, n, NULL, on_done,
                                            &W, &e)
                       : vd_db_payload_edit(cs[c], VD_DB_PAYLOAD_CLEAR, NULL, ids, n, NULL, on_done,
                                            &W, &e);
            break;
        case 3:
            rc = pl[0] ? vd_db_payload_edit(cs[c], VD_DB_PAYLOAD_OVERWRITE, pl[0], ids, n, NULL,
                                            on_done, &W, &e)
                       : vd_db_payload_edit(cs[c], VD_DB_PAYLOAD_DELETE_KEYS, keys, ids, n, NULL,
                                            on_done, &W, &e);
            break;
        case 4:
            rc = vd_db_payload_edit(cs[c], VD_DB_PAYLOAD_DELETE_KEYS, keys, ids, n, NULL, on_done,
                                    &W, &e);
            break;
        default: /* by filter: matching_ids goes through the plan on the indexed side */
            if (by_filter_delete)
                rc = vd_db_delete_filter(cs[c], f, on_done, &W, &e);
            else
                rc =
                    vd_db_payload_edit(cs[c], pl[0] ? VD_DB_PAYLOAD_SET : VD_DB_PAYLOAD_DELETE_KEYS,
                                       pl[0] ? pl[0] : keys, NULL, 0, f, on_done, &W, &e);
            break;
        }
        if (rc)
            fail_msg("write kind %d: %s", kind, e.msg);
        assert_int_equal(wait_for(&W), 0);
    }
    vd_filter_free(f);
    free(ftext);
    cJSON_Delete(keys);
    for (uint32_t i = 0; i < n; i++)
        cJSON_Delete(pl[i]);
}

static char *scroll_ids(struct vd_coll *c, const struct vd_filter *f)
{
    struct vd_buf b;
    vd_buf_init(&b);
    struct vd_pid next, from;
    bool has_next = true, first = true;
    struct vd_err e;
    /* small pages, so that resuming from `from` is exercised too */
    while (has_next) {
        struct vd_db_record *r;
        size_t n;
        if (vd_db_scroll(c, first ? NULL : &from, 7, f, false, &r, &n, &next, &has_next, &e))
            fail_msg("scroll: %s", e.msg);
        records_text(&b, r, n, false);
        vd_db_records_free(r, n);
        from = next;
        first = false;
    }
    size_t len;
    return vd_buf_steal(&b, &len);
}

static char *search_text(struct vd_coll *c, const struct vd_filter *f, bool exact)
{
    struct vd_buf b;
    vd_buf_init(&b);
    float q[2] = {(float)rnd(100), (float)rnd(100)};
    struct vd_db_search s = {.query = q, .limit = 10, .filter = f, .exact = exact};
    struct vd_err e;
    struct vd_db_record *r;
    size_t n;
    if (vd_db_search(c, &s, false, &r, &n, &e))
        fail_msg("search: %s", e.msg);
    records_text(&b, r, n, true);
    vd_db_records_free(r, n);
    /* ids, scores and payloads: the version differs between the two collections */
    cJSON *j = cJSON_ParseWithLength(b.data, b.len);
    assert_non_null(j);
    const cJSON *it;
    cJSON_ArrayForEach(it, j) cJSON_DeleteItemFromObject((cJSON *)it, "version");
    char *out = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    vd_buf_release(&b);
    return out;
}

/* Counts, scrolls and exact searches agree between the indexed and the plain collection. */
static int compare(struct vd_coll *ix, struct vd_coll *plain, int nfilters)
{
    int differing_before = 0;
    for (int i = 0; i < nfilters; i++) {
        char *text;
        struct vd_filter *f = rand_filter(&text);
        uint64_t n1, n2;
        assert_int_equal(vd_db_count(ix, f, &n1), 0);
        assert_int_equal(vd_db_count(plain, f, &n2), 0);
        if (n1 != n2) {
            uint64_t t1, t2;
            vd_db_count(ix, NULL, &t1);
            vd_db_count(plain, NULL, &t2);
            fail_msg("filter %s: count %llu with indexes, %llu without (of %llu, %llu)", text,
                     (unsigned long long)n1, (unsigned long long)n2, (unsigned long long)t1,
                     (unsigned long long)t2);
        }
        char *s1 = scroll_ids(ix, f), *s2 = scroll_ids(plain, f);
        if (strcmp(s1, s2))
            fail_msg("filter %s: scroll differs:\n%s\n%s", text, s1, s2);
        free(s1);
        free(s2);
        uint64_t seed = rng;
        s1 = search_text(ix, f, i % 2);
        rng = seed;
        s2 = search_text(plain, f, true);
        if (strcmp(s1, s2))
            fail_msg("filter %s: search differs:\n%s\n%s", text, s1, s2);
        differing_before += n1 > 0;
        free(s1);
        free(s2);
        vd_filter_free(f);
        free(text);
    }
    return differing_before;
}

static void create_indexes(struct vd_coll *c)
{
    struct vd_err e;
    for (size_t i = 0; i < N_INDEXES; i++) {
        assert_int_equal(vd_db_pindex_create(c, INDEXES[i].key, INDEXES[i].type, on_done, &W, &e),
                         0);
        assert_int_equal(wait_for(&W), 0);
    }
}

static void test_db_maintains_and_restores(void **state)
{
    fixture_mkdir();
    struct vd_db *db = open_db();
    struct vd_coll *ix = create(db, "ix"), *plain = create(db, "plain");
    for (int i = 0; i < 10; i++)
        write_both(ix, plain, 0);
    uint64_t n1, n2;
    assert_int_equal(vd_db_count(ix, NULL, &n1), 0);
    assert_int_equal(vd_db_count(plain, NULL, &n2), 0);
    assert_int_equal(n1, n2);
    create_indexes(ix);
    assert_int_equal(vd_db_count(ix, NULL, &n1), 0);
    assert_int_equal(n1, n2);
    /* errors: bad key, bad type, missing index */
    struct vd_err e;
    assert_int_equal(vd_db_pindex_create(ix, "a..b", VD_DB_PINDEX_KEYWORD, on_done, &W, &e),
                     VD_EINVAL);
    assert_non_null(strstr(e.msg, "field_name"));
    assert_int_equal(vd_db_pindex_create(ix, "a", (enum vd_db_pindex_type)9, on_done, &W, &e),
                     VD_EINVAL);
    assert_int_equal(vd_db_pindex_delete(ix, "nope", on_done, &W, &e), VD_ENOTFOUND);
    char longname[600];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    assert_int_equal(vd_db_pindex_create(ix, longname, VD_DB_PINDEX_KEYWORD, on_done, &W, &e),
                     VD_ERANGE);
    /* re-creating with the same type is a no-op, another type replaces */
    assert_int_equal(vd_db_pindex_create(ix, "u", VD_DB_PINDEX_INTEGER, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    assert_true(compare(ix, plain, 100) > 10);
    for (int round = 0; round < 200; round++)
        write_both(ix, plain, rnd(6));
    compare(ix, plain, 200);

    struct vd_db_pindex_info *info;
    size_t n;
    assert_int_equal(vd_db_pindex_list(ix, &info, &n), 0);
    assert_int_equal(n, N_INDEXES);
    assert_string_equal(info[0].field, "b"); /* sorted by name */
    uint64_t points_k = 0;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(info[i].field, "k"))
            points_k = info[i].points;
    vd_db_pindex_list_free(info, n);
    /* drop one and check it is gone after the restart too */
    assert_int_equal(vd_db_pindex_delete(ix, "u", on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    vd_db_coll_put(ix);
    vd_db_coll_put(plain);
    vd_db_close(db);

    db = open_db();
    assert_int_equal(vd_db_coll_get(db, "ix", &ix), 0);
    assert_int_equal(vd_db_coll_get(db, "plain", &plain), 0);
    assert_int_equal(vd_db_pindex_list(ix, &info, &n), 0);
    assert_int_equal(n, N_INDEXES - 1);
    for (size_t i = 0; i < n; i++) {
        assert_string_not_equal(info[i].field, "u");
        if (!strcmp(info[i].field, "k"))
            assert_int_equal(info[i].points, points_k);
    }
    vd_db_pindex_list_free(info, n);
    compare(ix, plain, 150);
    for (int round = 0; round < 100; round++)
        write_both(ix, plain, rnd(6));
    compare(ix, plain, 100);

    /* a deleted and re-created collection starts without indexes */
    vd_db_coll_put(ix);
    assert_int_equal(vd_db_coll_delete(db, "ix", on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    ix = create(db, "ix");
    assert_int_equal(vd_db_pindex_list(ix, &info, &n), 0);
    assert_int_equal(n, 0);
    vd_db_pindex_list_free(info, n);
    vd_db_coll_put(plain);
    reopen(&db, &ix, "ix");
    assert_int_equal(vd_db_pindex_list(ix, &info, &n), 0);
    assert_int_equal(n, 0);
    vd_db_pindex_list_free(info, n);
    vd_db_coll_put(ix);
    vd_db_close(db);
    fixture_rmdir();
}

int main(void)
{
    const char *seed = getenv("VD_TEST_SEED");
    if (seed)
        rng = strtoull(seed, NULL, 0) | 1;
    printf("seed %#llx\n", (unsigned long long)rng);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_structures_match_brute_force),
        cmocka_unit_test(test_type_mismatch),
        cmocka_unit_test(test_db_maintains_and_restores),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
