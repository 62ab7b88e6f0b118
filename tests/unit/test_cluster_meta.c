/*
 * Unit tests of the metadata state machine and the hash ring (src/cluster/meta.c): every command
 * and every error, determinism across machines, snapshots (round trip, truncation, corruption),
 * u64 values near 2^64, ring balance and stability, reconciliation plans, and a fuzz loop over
 * apply and restore.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <cmocka.h>

#include "cluster_int.h"

#define TOP (UINT64_C(1) << 63)

/* splitmix64: fixed seeds so failures reproduce. */
static uint64_t rng_state;
static uint64_t rng(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* ---- purity: convention 8 --------------------------------------------------------------- */

static void test_meta_is_pure(void **state)
{
    /* The state machine must replay identically on every node: no I/O, clock or thread may
     * reach it except through its arguments. */
    static const char *banned[] = {"uv.h",     "lmdb.h",    "microhttpd.h", "time.h",
                                   "unistd.h", "pthread.h", "sys/",         "stdio.h"};
    char path[1024];
    snprintf(path, sizeof(path), "%s", __FILE__);
    char *cut = strstr(path, "tests/unit/");
    assert_non_null(cut);
    snprintf(cut, sizeof(path) - (size_t)(cut - path), "src/cluster/meta.c");
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[1024];
    int n_includes = 0;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "#include", 8) != 0)
            continue;
        n_includes++;
        for (size_t b = 0; b < sizeof(banned) / sizeof(banned[0]); b++)
            if (strstr(line, banned[b])) {
                print_error("%s: %s", path, line);
                fail();
            }
    }
    fclose(f);
    assert_true(n_includes >= 1);
}

/* ---- helpers ------------------------------------------------------------------------------ */

static struct vd_meta *new_meta(void)
{
    struct vd_meta *m;
    assert_int_equal(vd_meta_new(&m), 0);
    return m;
}

static struct vd_coll_schema schema(const char *name)
{
    struct vd_coll_schema s;
    memset(&s, 0, sizeof s);
    snprintf(s.name, sizeof s.name, "%s", name);
    s.dim = 128;
    s.metric = VD_METRIC_COSINE;
    s.hnsw_m = 16;
    s.hnsw_ef_construct = 100;
    s.full_scan_threshold_kb = 10000;
    s.replication_factor = 3;
    s.write_consistency_factor = 2;
    s.created_hlc = 12345;
    return s;
}

/* Applies text at the next index; returns the outcome. */
static int apply_text(struct vd_meta *m, const char *text, struct vd_err *res)
{
    uint64_t idx = vd_meta_applied(m) + 1;
    int rc = vd_meta_apply(m, idx, (const uint8_t *)text, strlen(text), res);
    assert_int_equal(vd_meta_applied(m), idx);
    return rc;
}

static int apply_buf(struct vd_meta *m, struct vd_buf *b, struct vd_err *res)
{
    assert_true(vd_buf_ok(b));
    int rc = apply_text(m, b->data, res);
    vd_buf_release(b);
    return rc;
}

static int create(struct vd_meta *m, const struct vd_coll_schema *s, struct vd_err *res)
{
    struct vd_buf b = {0};
    vd_meta_cmd_create_collection(s, &b);
    return apply_buf(m, &b, res);
}

static int drop(struct vd_meta *m, const char *name, struct vd_err *res)
{
    struct vd_buf b = {0};
    vd_meta_cmd_delete_collection(name, &b);
    return apply_buf(m, &b, res);
}

static int set_pidx(struct vd_meta *m, const char *coll, const char *field,
                    enum vd_db_pindex_type type, struct vd_err *res)
{
    struct vd_buf b = {0};
    vd_meta_cmd_set_payload_index(coll, field, type, &b);
    return apply_buf(m, &b, res);
}

static int drop_pidx(struct vd_meta *m, const char *coll, const char *field, struct vd_err *res)
{
    struct vd_buf b = {0};
    vd_meta_cmd_drop_payload_index(coll, field, &b);
    return apply_buf(m, &b, res);
}

/* The indexes of coll as "field:type,..." in the state machine's order. */
static void pidx_text(const struct vd_meta *m, const char *coll, char *out, size_t cap)
{
    const struct vd_meta_pindex *v;
    size_t n = vd_meta_payload_indexes(m, coll, &v), k = 0;
    out[0] = 0;
    for (size_t i = 0; i < n; i++)
        k += (size_t)snprintf(out + k, cap - k, "%s%s:%s", i ? "," : "", v[i].field,
                              vd_db_pindex_type_name(v[i].type));
}

static int add(struct vd_meta *m, uint64_t id, const char *addr, const char *http,
               struct vd_err *res)
{
    struct vd_buf b = {0};
    vd_meta_cmd_add_member(id, addr, http, &b);
    return apply_buf(m, &b, res);
}

static int set(struct vd_meta *m, uint64_t id, enum vd_meta_state st, const char *addr,
               const char *http, struct vd_err *res)
{
    struct vd_buf b = {0};
    vd_meta_cmd_set_member(id, st, addr, http, &b);
    return apply_buf(m, &b, res);
}

static int rm(struct vd_meta *m, uint64_t id, struct vd_err *res)
{
    struct vd_buf b = {0};
    vd_meta_cmd_remove_member(id, &b);
    return apply_buf(m, &b, res);
}

static void add_up(struct vd_meta *m, uint64_t id)
{
    char addr[64];
    snprintf(addr, sizeof addr, "10.0.0.%llu:6335", (unsigned long long)(id % 250));
    assert_int_equal(add(m, id, addr, "", NULL), 0);
    assert_int_equal(set(m, id, VD_MEMBER_UP, NULL, NULL, NULL), 0);
}

/* Snapshot text, malloc'd. */
static char *snap(const struct vd_meta *m)
{
    struct vd_buf b = {0};
    assert_int_equal(vd_meta_snapshot(m, &b), 0);
    return vd_buf_steal(&b, NULL);
}

/* Snapshot text without the applied index: the state proper, to check "unchanged". */
static char *state_text(const struct vd_meta *m)
{
    char *s = snap(m);
    char *c = strstr(s, ",\"collections\"");
    assert_non_null(c);
    char *r = strdup(c);
    free(s);
    return r;
}

/* Applies text, expects code, and checks that the state did not change. */
static void expect_reject(struct vd_meta *m, const char *text, int code, const char *msg_part)
{
    char *before = state_text(m);
    struct vd_err res;
    int rc = apply_text(m, text, &res);
    if (rc != code)
        print_error("command %s: got %d (%s), expected %d\n", text, rc, res.msg, code);
    assert_int_equal(rc, code);
    assert_int_equal(res.code, code);
    if (msg_part && !strstr(res.msg, msg_part)) {
        print_error("message '%s' lacks '%s'\n", res.msg, msg_part);
        fail();
    }
    char *after = state_text(m);
    assert_string_equal(before, after);
    free(before);
    free(after);
}

/* Snapshot -> restore into a fresh machine -> snapshot must give the same bytes: whatever state
 * apply or restore produced is one restore accepts, i.e. valid. */
static void check_consistent(const struct vd_meta *m)
{
    char *s = snap(m);
    struct vd_meta *c = new_meta();
    struct vd_err e;
    int rc = vd_meta_restore(c, (const uint8_t *)s, strlen(s), &e);
    if (rc)
        print_error("restore of own snapshot failed: %s\n%s\n", e.msg, s);
    assert_int_equal(rc, 0);
    char *s2 = snap(c);
    assert_string_equal(s, s2);
    /* Same ring answers. */
    for (int i = 0; i < 64; i++) {
        uint64_t h = rng(), a[8], b[8];
        size_t na = vd_meta_replicas(m, h, 3, a), nb = vd_meta_replicas(c, h, 3, b);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, na * sizeof a[0]);
    }
    vd_meta_free(c);
    free(s);
    free(s2);
}

/* ---- collections ----------------------------------------------------------------------------- */

static void test_create_and_delete_collection(void **state)
{
    struct vd_meta *m = new_meta();
    struct vd_err res;
    struct vd_coll_schema s = schema("docs");
    assert_int_equal(create(m, &s, &res), 0);
    assert_int_equal(res.code, 0);
    assert_int_equal(vd_meta_applied(m), 1);
    const struct vd_coll_schema *got = vd_meta_collection(m, "docs");
    assert_non_null(got);
    assert_string_equal(got->name, "docs");
    assert_int_equal(got->dim, 128);
    assert_int_equal(got->metric, VD_METRIC_COSINE);
    assert_int_equal(got->hnsw_m, 16);
    assert_int_equal(got->hnsw_ef_construct, 100);
    assert_int_equal(got->full_scan_threshold_kb, 10000);
    assert_int_equal(got->replication_factor, 3);
    assert_int_equal(got->write_consistency_factor, 2);
    assert_true(got->created_hlc == 12345);
    /* Incarnation 0 in the command: the creation index with the top bit. */
    assert_true(got->incarnation == (TOP | 1));

    /* An explicit incarnation (adoption of a pre-cluster collection) is kept. */
    struct vd_coll_schema a = schema("adopted");
    a.incarnation = 777;
    a.metric = VD_METRIC_MANHATTAN;
    assert_int_equal(create(m, &a, NULL), 0);
    assert_true(vd_meta_collection(m, "adopted")->incarnation == 777);
    assert_int_equal(vd_meta_collection(m, "adopted")->metric, VD_METRIC_MANHATTAN);

    /* Every metric survives. */
    const enum vd_metric metrics[] = {VD_METRIC_DOT, VD_METRIC_EUCLID};
    const char *names[] = {"b-dot", "c_euclid"};
    for (int i = 0; i < 2; i++) {
        struct vd_coll_schema x = schema(names[i]);
        x.metric = metrics[i];
        assert_int_equal(create(m, &x, NULL), 0);
        assert_int_equal(vd_meta_collection(m, names[i])->metric, metrics[i]);
    }

    /* By name order. */
    assert_int_equal(vd_meta_n_collections(m), 4);
    assert_string_equal(vd_meta_collection_at(m, 0)->name, "adopted");
    assert_string_equal(vd_meta_collection_at(m, 1)->name, "b-dot");
    assert_string_equal(vd_meta_collection_at(m, 2)->name, "c_euclid");
    assert_string_equal(vd_meta_collection_at(m, 3)->name, "docs");
    assert_null(vd_meta_collection_at(m, 4));
    assert_null(vd_meta_collection(m, "nope"));

    /* Exists: the message a REST user reads; state unchanged. */
    struct vd_buf b = {0};
    s.dim = 4;
    vd_meta_cmd_create_collection(&s, &b);
    expect_reject(m, b.data, VD_EEXIST, "collection 'docs' already exists");
    vd_buf_release(&b);
    assert_int_equal(vd_meta_collection(m, "docs")->dim, 128);

    /* An incarnation already in use by another name. */
    struct vd_coll_schema d = schema("dup");
    d.incarnation = 777;
    vd_meta_cmd_create_collection(&d, &b);
    expect_reject(m, b.data, VD_EEXIST, "incarnation 777");
    vd_buf_release(&b);

    /* Delete, then delete again. */
    assert_int_equal(drop(m, "docs", &res), 0);
    assert_null(vd_meta_collection(m, "docs"));
    assert_int_equal(vd_meta_n_collections(m), 3);
    vd_meta_cmd_delete_collection("docs", &b);
    expect_reject(m, b.data, VD_ENOTFOUND, "collection 'docs' not found");
    vd_buf_release(&b);

    /* Re-creating the name gives a new incarnation (a new index). */
    uint64_t idx = vd_meta_applied(m) + 1;
    s.dim = 8;
    assert_int_equal(create(m, &s, NULL), 0);
    assert_true(vd_meta_collection(m, "docs")->incarnation == (TOP | idx));
    assert_int_equal(vd_meta_collection(m, "docs")->dim, 8);
    check_consistent(m);
    vd_meta_free(m);
}

static void test_create_validation(void **state)
{
    struct vd_meta *m = new_meta();
    struct vd_coll_schema ok = schema("base");
    assert_int_equal(create(m, &ok, NULL), 0);

    const char *pre = "{\"op\":\"create_collection\",\"schema\":{";
    /* Each case: the schema fields, with one thing wrong. */
    static const struct {
        const char *fields;
        const char *msg;
    } bad[] = {
        {"\"name\":\"a b\",\"dim\":4,\"metric\":\"Dot\",\"hnsw_m\":16,\"hnsw_ef_construct\":100,"
         "\"full_scan_threshold_kb\":0,\"replication_factor\":1,\"write_consistency_factor\":1,"
         "\"incarnation\":0,\"created_hlc\":0",
         "letters"},
        {"\"name\":\"\",\"dim\":4,\"metric\":\"Dot\",\"hnsw_m\":16,\"hnsw_ef_construct\":100,"
         "\"full_scan_threshold_kb\":0,\"replication_factor\":1,\"write_consistency_factor\":1,"
         "\"incarnation\":0,\"created_hlc\":0",
         "1 to 255"},
        {"\"name\":5,\"dim\":4,\"metric\":\"Dot\",\"hnsw_m\":16,\"hnsw_ef_construct\":100,"
         "\"full_scan_threshold_kb\":0,\"replication_factor\":1,\"write_consistency_factor\":1,"
         "\"incarnation\":0,\"created_hlc\":0",
         "'name'"},
        {"\"name\":\"x\",\"dim\":0,\"metric\":\"Dot\",\"hnsw_m\":16,\"hnsw_ef_construct\":100,"
         "\"full_scan_threshold_kb\":0,\"replication_factor\":1,\"write_consistency_factor\":1,"
         "\"incarnation\":0,\"created_hlc\":0",
         "'dim'"},
        {"\"name\":\"x\",\"dim\":65537,\"metric\":\"Dot\",\"hnsw_m\":16,\"hnsw_ef_construct\":100,"
         "\"full_scan_threshold_kb\":0,\"replication_factor\":1,\"write_consistency_factor\":1,"
         "\"incarnation\":0,\"created_hlc\":0",
         "'dim'"},
        {"\"name\":\"x\",\"dim\":4.5,\"metric\":\"Dot\",\"hnsw_m\":16,\"hnsw_ef_construct\":100,"
         "\"full_scan_threshold_kb\":0,\"replication_factor\":1,\"write_consistency_factor\":1,"
         "\"incarnation\":0,\"created_hlc\":0",
         "'dim'"},
        {"\"name\":\"x\",\"dim\":\"4\",\"metric\":\"Dot\",\"hnsw_m\":16,\"hnsw_ef_construct\":100,"
         "\"full_scan_threshold_kb\":0,\"replication_factor\":1,\"write_consistency_factor\":1,"
         "\"incarnation\":0,\"created_hlc\":0",
         "'dim'"},
        {"\"name\":\"x\",\"dim\":4,\"metric\":\"cosine\",\"hnsw_m\":16,\"hnsw_ef_construct\":100,"
         "\"full_scan_threshold_kb\":0,\"replication_factor\":1,\"write_consistency_factor\":1,"
         "\"incarnation\":0,\"created_hlc\":0",
         "'metric'"},
        {"\"name\":\"x\",\"dim\":4,\"metric\":3,\"hnsw_m\":16,\"hnsw_ef_construct\":100,"
         "\"full_scan_threshold_kb\":0,\"replication_factor\":1,\"write_consistency_factor\":1,"
         "\"incarnation\":0,\"created_hlc\":0",
         "'metric'"},
        {"\"name\":\"x\",\"dim\":4,\"metric\":\"Dot\",\"hnsw_m\":1,\"hnsw_ef_construct\":100,"
         "\"full_scan_threshold_kb\":0,\"replication_factor\":1,\"write_consistency_factor\":1,"
         "\"incarnation\":0,\"created_hlc\":0",
         "'hnsw_m'"},
        {"\"name\":\"x\",\"dim\":4,\"metric\":\"Dot\",\"hnsw_m\":16,\"hnsw_ef_construct\":5000,"
         "\"full_scan_threshold_kb\":0,\"replication_factor\":1,\"write_consistency_factor\":1,"
         "\"incarnation\":0,\"created_hlc\":0",
         "'hnsw_ef_construct'"},
        {"\"name\":\"x\",\"dim\":4,\"metric\":\"Dot\",\"hnsw_m\":16,\"hnsw_ef_construct\":100,"
         "\"full_scan_threshold_kb\":4294967296,\"replication_factor\":1,"
         "\"write_consistency_factor\":1,\"incarnation\":0,\"created_hlc\":0",
         "'full_scan_threshold_kb'"},
        {"\"name\":\"x\",\"dim\":4,\"metric\":\"Dot\",\"hnsw_m\":16,\"hnsw_ef_construct\":100,"
         "\"full_scan_threshold_kb\":0,\"replication_factor\":0,\"write_consistency_factor\":1,"
         "\"incarnation\":0,\"created_hlc\":0",
         "'replication_factor'"},
        {"\"name\":\"x\",\"dim\":4,\"metric\":\"Dot\",\"hnsw_m\":16,\"hnsw_ef_construct\":100,"
         "\"full_scan_threshold_kb\":0,\"replication_factor\":2,\"write_consistency_factor\":3,"
         "\"incarnation\":0,\"created_hlc\":0",
         "'write_consistency_factor'"},
        {"\"name\":\"x\",\"dim\":4,\"metric\":\"Dot\",\"hnsw_m\":16,\"hnsw_ef_construct\":100,"
         "\"full_scan_threshold_kb\":0,\"replication_factor\":1,\"write_consistency_factor\":1,"
         "\"incarnation\":-1,\"created_hlc\":0",
         "'incarnation'"},
        {"\"name\":\"x\",\"dim\":4,\"metric\":\"Dot\",\"hnsw_m\":16,\"hnsw_ef_construct\":100,"
         "\"full_scan_threshold_kb\":0,\"replication_factor\":1,\"write_consistency_factor\":1,"
         "\"incarnation\":18446744073709551616,\"created_hlc\":0",
         "'incarnation'"},
        {"\"name\":\"x\",\"dim\":4,\"metric\":\"Dot\",\"hnsw_m\":16,\"hnsw_ef_construct\":100,"
         "\"full_scan_threshold_kb\":0,\"replication_factor\":1,\"write_consistency_factor\":1,"
         "\"incarnation\":1e3,\"created_hlc\":0",
         "'incarnation'"},
        {"\"name\":\"x\",\"dim\":4,\"metric\":\"Dot\",\"hnsw_m\":16,\"hnsw_ef_construct\":100,"
         "\"full_scan_threshold_kb\":0,\"replication_factor\":1,\"write_consistency_factor\":1,"
         "\"incarnation\":0,\"created_hlc\":-0",
         "'created_hlc'"},
        {"\"name\":\"x\",\"dim\":4,\"metric\":\"Dot\",\"hnsw_m\":16,\"hnsw_ef_construct\":100,"
         "\"full_scan_threshold_kb\":0,\"replication_factor\":1,\"write_consistency_factor\":1,"
         "\"incarnation\":0",
         "missing field 'created_hlc'"},
        {"\"dim\":4,\"metric\":\"Dot\",\"hnsw_m\":16,\"hnsw_ef_construct\":100,"
         "\"full_scan_threshold_kb\":0,\"replication_factor\":1,\"write_consistency_factor\":1,"
         "\"incarnation\":0,\"created_hlc\":0",
         "missing field 'name'"},
    };
    char text[1024];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(text, sizeof text, "%s%s}}", pre, bad[i].fields);
        expect_reject(m, text, VD_EINVAL, bad[i].msg);
    }
    /* A 256-character name. */
    char name[300];
    memset(name, 'a', 256);
    name[256] = 0;
    snprintf(text, sizeof text,
             "%s\"name\":\"%s\",\"dim\":4,\"metric\":\"Dot\",\"hnsw_m\":16,"
             "\"hnsw_ef_construct\":100,\"full_scan_threshold_kb\":0,\"replication_factor\":1,"
             "\"write_consistency_factor\":1,\"incarnation\":0,\"created_hlc\":0}}",
             pre, name);
    expect_reject(m, text, VD_EINVAL, "1 to 255");
    /* 255 is fine, and the boundaries of every range are accepted. */
    name[255] = 0;
    snprintf(text, sizeof text,
             "%s\"name\":\"%s\",\"dim\":65536,\"metric\":\"Euclid\",\"hnsw_m\":512,"
             "\"hnsw_ef_construct\":4,\"full_scan_threshold_kb\":4294967295,"
             "\"replication_factor\":64,\"write_consistency_factor\":64,\"incarnation\":0,"
             "\"created_hlc\":0,\"unknown_field\":[1,2]}}",
             pre, name);
    struct vd_err res;
    assert_int_equal(apply_text(m, text, &res), 0);
    assert_int_equal(vd_meta_collection(m, name)->dim, 65536);
    expect_reject(m, "{\"op\":\"create_collection\"}", VD_EINVAL, "missing field 'schema'");
    expect_reject(m, "{\"op\":\"create_collection\",\"schema\":[]}", VD_EINVAL, "object");
    expect_reject(m, "{\"op\":\"delete_collection\"}", VD_EINVAL, "'name'");
    expect_reject(m, "{\"op\":\"delete_collection\",\"name\":\"a/b\"}", VD_EINVAL, "letters");
    expect_reject(m, "{\"op\":\"delete_collection\",\"name\":null}", VD_EINVAL, "'name'");
    check_consistent(m);
    vd_meta_free(m);
}

/* ---- members --------------------------------------------------------------------------------- */

static void test_members(void **state)
{
    struct vd_meta *m = new_meta();
    struct vd_err res;
    assert_int_equal(add(m, 42, "10.0.0.1:6335", "10.0.0.1:6333", &res), 0);
    const struct vd_meta_member *mb = vd_meta_member(m, 42);
    assert_non_null(mb);
    assert_int_equal(mb->state, VD_MEMBER_JOINING);
    assert_string_equal(mb->addr, "10.0.0.1:6335");
    assert_string_equal(mb->http_addr, "10.0.0.1:6333");
    /* Tokens: derived from the id alone (another machine computes the same), all distinct. */
    struct vd_meta *o = new_meta();
    assert_int_equal(add(o, 7, "x:1", NULL, NULL), 0);
    assert_int_equal(add(o, 42, "elsewhere:1", NULL, NULL), 0);
    assert_memory_equal(vd_meta_member(o, 42)->tokens, mb->tokens, sizeof mb->tokens);
    assert_string_equal(vd_meta_member(o, 7)->http_addr, "");
    for (int i = 0; i < VD_META_TOKENS; i++)
        for (int j = i + 1; j < VD_META_TOKENS; j++)
            assert_true(mb->tokens[i] != mb->tokens[j]);
    for (int i = 0; i < VD_META_TOKENS; i++)
        for (int j = 0; j < VD_META_TOKENS; j++)
            assert_true(vd_meta_member(o, 7)->tokens[i] != mb->tokens[j]);
    vd_meta_free(o);

    /* A joining member owns nothing yet. */
    uint64_t out[4];
    assert_int_equal(vd_meta_replicas(m, 123, 3, out), 0);

    struct vd_buf b = {0};
    vd_meta_cmd_add_member(42, "10.0.0.9:1", NULL, &b);
    expect_reject(m, b.data, VD_EEXIST, "member 42 already exists");
    vd_buf_release(&b);

    /* set_member: state only, then addresses only. */
    assert_int_equal(set(m, 42, VD_MEMBER_UP, NULL, NULL, &res), 0);
    mb = vd_meta_member(m, 42);
    assert_int_equal(mb->state, VD_MEMBER_UP);
    assert_string_equal(mb->addr, "10.0.0.1:6335");
    assert_int_equal(vd_meta_replicas(m, 123, 3, out), 1);
    assert_true(out[0] == 42);
    assert_int_equal(set(m, 42, 0, "host-b:7000", "host-b:7001", &res), 0);
    mb = vd_meta_member(m, 42);
    assert_int_equal(mb->state, VD_MEMBER_UP);
    assert_string_equal(mb->addr, "host-b:7000");
    assert_string_equal(mb->http_addr, "host-b:7001");
    assert_int_equal(set(m, 42, 0, NULL, "", &res), 0);
    assert_string_equal(vd_meta_member(m, 42)->http_addr, "");
    /* Leaving members still own their tokens (until streaming hands them over). */
    assert_int_equal(set(m, 42, VD_MEMBER_LEAVING, NULL, NULL, &res), 0);
    assert_int_equal(vd_meta_replicas(m, 123, 3, out), 1);
    /* Back to joining: owns nothing again. */
    assert_int_equal(set(m, 42, VD_MEMBER_JOINING, NULL, NULL, &res), 0);
    assert_int_equal(vd_meta_replicas(m, 123, 3, out), 0);
    assert_int_equal(set(m, 42, VD_MEMBER_UP, NULL, NULL, &res), 0);

    vd_meta_cmd_set_member(43, VD_MEMBER_UP, NULL, NULL, &b);
    expect_reject(m, b.data, VD_ENOTFOUND, "member 43 not found");
    vd_buf_release(&b);

    /* Order by id, including ids near 2^64. */
    assert_int_equal(add(m, UINT64_MAX, "a:1", "", NULL), 0);
    assert_int_equal(add(m, 1, "b:1", "", NULL), 0);
    assert_int_equal(vd_meta_n_members(m), 3);
    assert_true(vd_meta_member_at(m, 0)->id == 1);
    assert_true(vd_meta_member_at(m, 1)->id == 42);
    assert_true(vd_meta_member_at(m, 2)->id == UINT64_MAX);
    assert_null(vd_meta_member_at(m, 3));

    /* Malformed member commands. */
    static const struct {
        const char *text;
        const char *msg;
    } bad[] = {
        {"{\"op\":\"add_member\",\"id\":0,\"addr\":\"a:1\"}", "must not be 0"},
        {"{\"op\":\"add_member\",\"addr\":\"a:1\"}", "missing field 'id'"},
        {"{\"op\":\"add_member\",\"id\":\"5\",\"addr\":\"a:1\"}", "'id'"},
        {"{\"op\":\"add_member\",\"id\":-5,\"addr\":\"a:1\"}", "'id'"},
        {"{\"op\":\"add_member\",\"id\":5}", "missing field 'addr'"},
        {"{\"op\":\"add_member\",\"id\":5,\"addr\":\"\"}", "must not be empty"},
        {"{\"op\":\"add_member\",\"id\":5,\"addr\":\"a b:1\"}", "printable"},
        {"{\"op\":\"add_member\",\"id\":5,\"addr\":\"a\\n:1\"}", "printable"},
        {"{\"op\":\"add_member\",\"id\":5,\"addr\":\"\\u00e9:1\"}", "printable"},
        {"{\"op\":\"add_member\",\"id\":5,\"addr\":\"a:1\",\"http_addr\":7}", "'http_addr'"},
        {"{\"op\":\"add_member\",\"id\":5,\"addr\":\"a:1\",\"http_addr\":\" \"}", "printable"},
        {"{\"op\":\"set_member\",\"id\":42,\"state\":\"down\"}", "'state'"},
        {"{\"op\":\"set_member\",\"id\":42,\"state\":2}", "'state'"},
        {"{\"op\":\"set_member\",\"id\":42,\"addr\":\"\"}", "must not be empty"},
        {"{\"op\":\"set_member\",\"id\":0}", "must not be 0"},
        {"{\"op\":\"remove_member\"}", "missing field 'id'"},
        {"{\"op\":\"remove_member\",\"id\":1.0}", "'id'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_reject(m, bad[i].text, VD_EINVAL, bad[i].msg);
    /* Address length: 255 is fine, 256 is not. */
    char addr[300], text[512];
    memset(addr, 'h', 256);
    addr[256] = 0;
    snprintf(text, sizeof text, "{\"op\":\"add_member\",\"id\":5,\"addr\":\"%s\"}", addr);
    expect_reject(m, text, VD_EINVAL, "at most 255");
    snprintf(text, sizeof text,
             "{\"op\":\"add_member\",\"id\":5,\"addr\":\"a:1\",\"http_addr\":\"%s\"}", addr);
    expect_reject(m, text, VD_EINVAL, "at most 255");
    snprintf(text, sizeof text, "{\"op\":\"set_member\",\"id\":42,\"addr\":\"%s\"}", addr);
    expect_reject(m, text, VD_EINVAL, "at most 255");
    addr[255] = 0;
    assert_int_equal(add(m, 5, addr, addr, NULL), 0);
    assert_string_equal(vd_meta_member(m, 5)->addr, addr);
    assert_string_equal(vd_meta_member(m, 5)->http_addr, addr);

    /* Remove, then remove again. */
    assert_int_equal(rm(m, 42, &res), 0);
    assert_null(vd_meta_member(m, 42));
    assert_int_equal(vd_meta_replicas(m, 123, 3, out), 0);
    vd_meta_cmd_remove_member(42, &b);
    expect_reject(m, b.data, VD_ENOTFOUND, "member 42 not found");
    vd_buf_release(&b);
    /* Removing a joining member. */
    assert_int_equal(rm(m, 5, &res), 0);
    assert_int_equal(vd_meta_n_members(m), 2);
    check_consistent(m);
    vd_meta_free(m);
}

static void test_malformed_commands(void **state)
{
    struct vd_meta *m = new_meta();
    struct vd_coll_schema s = schema("keep");
    assert_int_equal(create(m, &s, NULL), 0);
    add_up(m, 9);
    static const char *bad[] = {
        "",
        "{",
        "null",
        "[]",
        "\"create_collection\"",
        "{}",
        "{\"op\":5}",
        "{\"op\":null}",
        "{\"op\":\"drop_everything\"}",
        "{\"op\":\"create_collection\"} x",
        "{\"op\":\"create_collection\",\"schema\":{\"name\":\"\\u0000\"}}",
        "{\"op\":\"delete_collection\",\"name\":\"keep\",}",
        "{\"op\":\"delete_collection\",\"name\":\"\xff\"}",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"
        "]]"
        "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_reject(m, bad[i], VD_EINVAL, "malformed metadata command");
    expect_reject(m, "{\"op\":\"drop_everything\"}", VD_EINVAL, "unknown operation");
    /* Raw bytes with a NUL inside: not JSON. */
    char res_buf[8] = {'{', 0, '}', 0};
    struct vd_err res;
    uint64_t idx = vd_meta_applied(m) + 1;
    assert_int_equal(vd_meta_apply(m, idx, (const uint8_t *)res_buf, 3, &res), VD_EINVAL);
    assert_int_equal(vd_meta_applied(m), idx);
    /* NULL res is allowed. */
    assert_int_equal(vd_meta_apply(m, idx + 1, (const uint8_t *)"{}", 2, NULL), VD_EINVAL);
    /* skip advances the applied index only. */
    char *before = state_text(m);
    vd_meta_skip(m, idx + 10);
    assert_true(vd_meta_applied(m) == idx + 10);
    char *after = state_text(m);
    assert_string_equal(before, after);
    free(before);
    free(after);
    assert_non_null(vd_meta_collection(m, "keep"));
    vd_meta_free(m);
}

/* ---- determinism ----------------------------------------------------------------------------- */

/* A random command from a small universe of names and ids, so that successes and every error
 * show up often. Appends to b. */
static void random_command(struct vd_buf *b)
{
    static const char *names[] = {"a", "b", "c", "docs", "x-1", "y_2"};
    static const uint64_t ids[] = {1, 2, 3, 1000, UINT64_MAX, UINT64_MAX - 1};
    uint64_t r = rng();
    const char *name = names[r % 6];
    uint64_t id = ids[(r >> 8) % 6];
    static const char *fields[] = {"f", "g.h", "k"};
    const char *field = fields[(r >> 50) % 3];
    switch ((r >> 16) % 8) {
    case 0: {
        struct vd_coll_schema s = schema(name);
        s.dim = (uint32_t)(1 + (r >> 24) % 2048);
        s.metric = (enum vd_metric)(1 + (r >> 40) % 4);
        if ((r >> 44) % 4 == 0)
            s.incarnation = rng(); /* adoption */
        vd_meta_cmd_create_collection(&s, b);
        break;
    }
    case 1:
        vd_meta_cmd_delete_collection(name, b);
        break;
    case 2:
        vd_meta_cmd_add_member(id, "10.1.1.1:6335", (r >> 30) & 1 ? "10.1.1.1:6333" : NULL, b);
        break;
    case 3:
        vd_meta_cmd_set_member(id, (enum vd_meta_state)((r >> 24) % 4),
                               (r >> 30) & 1 ? "10.2.2.2:6335" : NULL,
                               (r >> 31) & 1 ? "10.2.2.2:6333" : NULL, b);
        break;
    case 4:
        vd_meta_cmd_remove_member(id, b);
        break;
    case 5:
        vd_meta_cmd_set_payload_index(name, field, (enum vd_db_pindex_type)(1 + (r >> 24) % 4), b);
        break;
    case 6:
        vd_meta_cmd_drop_payload_index(name, field, b);
        break;
    default:
        vd_buf_puts(b, "{\"op\":\"nonsense\"}");
        break;
    }
}

static void test_determinism(void **state)
{
    struct vd_meta *a = new_meta(), *b = new_meta(), *c = NULL;
    rng_state = 11;
    int outcomes[20] = {0};
    for (int i = 0; i < 3000; i++) {
        struct vd_buf cmd = {0};
        random_command(&cmd);
        assert_true(vd_buf_ok(&cmd));
        struct vd_err ra, rb;
        int x = vd_meta_apply(a, (uint64_t)i + 1, (const uint8_t *)cmd.data, cmd.len, &ra);
        int y = vd_meta_apply(b, (uint64_t)i + 1, (const uint8_t *)cmd.data, cmd.len, &rb);
        assert_int_equal(x, y);
        assert_string_equal(ra.msg, rb.msg);
        outcomes[-x]++;
        /* A third machine joins half-way from a snapshot and applies the rest. */
        if (c)
            assert_int_equal(
                vd_meta_apply(c, (uint64_t)i + 1, (const uint8_t *)cmd.data, cmd.len, NULL), x);
        if (i == 1500) {
            char *sa = snap(a);
            c = new_meta();
            assert_int_equal(vd_meta_restore(c, (const uint8_t *)sa, strlen(sa), NULL), 0);
            free(sa);
        }
        vd_buf_release(&cmd);
        if (i % 100 == 99) {
            char *sa = snap(a), *sb = snap(b);
            assert_string_equal(sa, sb);
            free(sa);
            free(sb);
            check_consistent(a);
        }
    }
    /* The mix exercised every outcome. */
    assert_true(outcomes[0] > 100);
    assert_true(outcomes[-VD_EEXIST] > 50);
    assert_true(outcomes[-VD_ENOTFOUND] > 50);
    assert_true(outcomes[-VD_EINVAL] > 50);
    char *sa = snap(a), *sc = snap(c);
    assert_string_equal(sa, sc);
    free(sa);
    free(sc);
    vd_meta_free(c);
    vd_meta_free(a);
    vd_meta_free(b);
}

/* ---- snapshots ------------------------------------------------------------------------------- */

/* A state with some of everything. */
static struct vd_meta *populated(void)
{
    struct vd_meta *m = new_meta();
    const char *names[] = {"zeta", "alpha", "m-1", "m_2"};
    for (int i = 0; i < 4; i++) {
        struct vd_coll_schema s = schema(names[i]);
        s.dim = (uint32_t)(i + 1) * 100;
        s.metric = (enum vd_metric)(i + 1);
        if (i == 2)
            s.incarnation = 99;
        assert_int_equal(create(m, &s, NULL), 0);
    }
    add_up(m, 3);
    add_up(m, 1);
    add_up(m, UINT64_MAX);
    assert_int_equal(add(m, 77, "j:1", "j:2", NULL), 0);
    assert_int_equal(set(m, 1, VD_MEMBER_LEAVING, NULL, "h:1", NULL), 0);
    return m;
}

static void test_snapshot_roundtrip(void **state)
{
    rng_state = 5;
    struct vd_meta *m = populated();
    vd_meta_skip(m, 1234);
    char *s = snap(m);
    struct vd_meta *r = new_meta();
    /* Restore replaces whatever was there. */
    struct vd_coll_schema junk = schema("junk");
    assert_int_equal(create(r, &junk, NULL), 0);
    add_up(r, 555);
    struct vd_err e;
    assert_int_equal(vd_meta_restore(r, (const uint8_t *)s, strlen(s), &e), 0);
    char *s2 = snap(r);
    assert_string_equal(s, s2);
    assert_true(vd_meta_applied(r) == 1234);
    assert_null(vd_meta_collection(r, "junk"));
    assert_null(vd_meta_member(r, 555));
    assert_int_equal(vd_meta_n_collections(r), 4);
    assert_int_equal(vd_meta_n_members(r), 4);
    for (size_t i = 0; i < 4; i++)
        assert_memory_equal(vd_meta_collection_at(r, i), vd_meta_collection_at(m, i),
                            sizeof(struct vd_coll_schema));
    for (size_t i = 0; i < 4; i++) {
        const struct vd_meta_member *x = vd_meta_member_at(r, i), *y = vd_meta_member_at(m, i);
        assert_true(x->id == y->id);
        assert_int_equal(x->state, y->state);
        assert_string_equal(x->addr, y->addr);
        assert_string_equal(x->http_addr, y->http_addr);
        assert_memory_equal(x->tokens, y->tokens, sizeof x->tokens);
    }
    for (int i = 0; i < 10000; i++) {
        uint64_t h = rng(), a[4], b[4];
        size_t na = vd_meta_replicas(m, h, 4, a), nb = vd_meta_replicas(r, h, 4, b);
        assert_int_equal(na, 3); /* the joining member owns nothing */
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, na * sizeof a[0]);
    }
    /* Both continue identically. */
    struct vd_coll_schema n = schema("after");
    assert_int_equal(vd_meta_apply(m, 1235, (const uint8_t *)"{}", 2, NULL), VD_EINVAL);
    assert_int_equal(vd_meta_apply(r, 1235, (const uint8_t *)"{}", 2, NULL), VD_EINVAL);
    assert_int_equal(create(m, &n, NULL), 0);
    assert_int_equal(create(r, &n, NULL), 0);
    free(s);
    free(s2);
    s = snap(m);
    s2 = snap(r);
    assert_string_equal(s, s2);
    assert_true(vd_meta_collection(r, "after")->incarnation == (TOP | 1236));
    /* Order in the text does not matter: restore sorts (two one-member, one-collection
     * snapshots spliced in the wrong order give the canonical text of both). */
    {
        struct vd_meta *p = new_meta(), *q = new_meta(), *both = new_meta();
        struct vd_coll_schema cp = schema("p"), cq = schema("q");
        cp.incarnation = 1;
        cq.incarnation = 2;
        assert_int_equal(create(p, &cp, NULL), 0);
        assert_int_equal(add(p, 5, "p:1", "", NULL), 0);
        assert_int_equal(create(q, &cq, NULL), 0);
        assert_int_equal(add(q, 3, "q:1", "", NULL), 0);
        assert_int_equal(create(both, &cp, NULL), 0);
        assert_int_equal(create(both, &cq, NULL), 0);
        assert_int_equal(add(both, 5, "p:1", "", NULL), 0);
        assert_int_equal(add(both, 3, "q:1", "", NULL), 0);
        char *tp = snap(p), *tq = snap(q), *tb = snap(both);
        /* Each is {"version":1,"applied":2,"collections":[C],"members":[M]}. */
        char *cpx = strstr(tp, "\"collections\":[") + 15, *mpx = strstr(tp, "],\"members\":[");
        char *cqx = strstr(tq, "\"collections\":[") + 15, *mqx = strstr(tq, "],\"members\":[");
        char spliced[4096];
        snprintf(
            spliced, sizeof spliced,
            "{\"version\":1,\"applied\":4,\"collections\":[%.*s,%.*s],\"members\":[%.*s,%.*s]}",
            (int)(mqx - cqx), cqx, (int)(mpx - cpx), cpx, (int)(strlen(mpx + 13) - 2), mpx + 13,
            (int)(strlen(mqx + 13) - 2), mqx + 13);
        struct vd_meta *r2 = new_meta();
        struct vd_err e2;
        int rc2 = vd_meta_restore(r2, (const uint8_t *)spliced, strlen(spliced), &e2);
        if (rc2)
            print_error("%s: %s\n", spliced, e2.msg);
        assert_int_equal(rc2, 0);
        char *tr = snap(r2);
        assert_string_equal(tr, tb);
        assert_true(strcmp(spliced, tb) != 0);
        free(tp);
        free(tq);
        free(tb);
        free(tr);
        vd_meta_free(p);
        vd_meta_free(q);
        vd_meta_free(both);
        vd_meta_free(r2);
    }
    /* An empty state round-trips too. */
    struct vd_meta *empty = new_meta();
    char *se = snap(empty);
    assert_int_equal(vd_meta_restore(r, (const uint8_t *)se, strlen(se), NULL), 0);
    assert_int_equal(vd_meta_n_collections(r), 0);
    assert_int_equal(vd_meta_n_members(r), 0);
    uint64_t out[3];
    assert_int_equal(vd_meta_replicas(r, 1, 3, out), 0);
    free(se);
    vd_meta_free(empty);
    free(s);
    free(s2);
    vd_meta_free(m);
    vd_meta_free(r);
}

/* Restores text into m expecting VD_ECORRUPT and no change. */
static void expect_restore_fails(struct vd_meta *m, const char *text, size_t len,
                                 const char *msg_part)
{
    char *before = snap(m);
    struct vd_err e;
    int rc = vd_meta_restore(m, (const uint8_t *)text, len, &e);
    if (rc != VD_ECORRUPT)
        print_error("restore of %.*s: %d\n", (int)len, text, rc);
    assert_int_equal(rc, VD_ECORRUPT);
    assert_int_equal(e.code, VD_ECORRUPT);
    if (msg_part && !strstr(e.msg, msg_part)) {
        print_error("message '%s' lacks '%s'\n", e.msg, msg_part);
        fail();
    }
    char *after = snap(m);
    assert_string_equal(before, after);
    free(before);
    free(after);
}

/* Replaces the first occurrence of from by to in s (malloc'd result). */
static char *replace(const char *s, const char *from, const char *to)
{
    const char *p = strstr(s, from);
    assert_non_null(p);
    size_t n = strlen(s) - strlen(from) + strlen(to);
    char *r = malloc(n + 1);
    size_t pre = (size_t)(p - s);
    memcpy(r, s, pre);
    memcpy(r + pre, to, strlen(to));
    strcpy(r + pre + strlen(to), p + strlen(from));
    return r;
}

static void test_restore_rejects_bad_snapshots(void **state)
{
    rng_state = 6;
    struct vd_meta *src = populated();
    char *s = snap(src);
    size_t len = strlen(s);
    struct vd_meta *m = new_meta();
    struct vd_coll_schema k = schema("existing");
    assert_int_equal(create(m, &k, NULL), 0);
    add_up(m, 31337);

    /* Every truncation. */
    for (size_t n = 0; n < len; n++)
        expect_restore_fails(m, s, n, "metadata snapshot");

    /* Specific damage, each must be refused as a whole. */
    static const struct {
        const char *from, *to, *msg;
    } bad[] = {
        {"\"version\":1", "\"version\":2", "version"},
        {"\"version\":1,", "", "'version'"},
        {"\"applied\":", "\"applied\":-", NULL},
        {"\"collections\":[", "\"collections\":{\"x\":[", NULL},
        {"\"members\":[", "\"members\":7,\"m\":[", "'members'"},
        {"\"name\":\"alpha\"", "\"name\":\"m-1\"", "appears twice"},
        {"\"incarnation\":99", "\"incarnation\":0", "incarnation 0"},
        {"\"id\":3,", "\"id\":1,", "member 1 appears twice"},
        {"\"id\":3,", "\"id\":0,", "must not be 0"},
        {"\"state\":\"up\"", "\"state\":\"down\"", "'state'"},
        {"\"tokens\":[", "\"tokens\":[1,", "'tokens'"},
        {"\"tokens\":[", "\"tokens\":[\"1\",", "'tokens'"},
        {"\"addr\":\"", "\"addr\":\" ", "printable"},
        {"\"dim\":100", "\"dim\":0", "'dim'"},
        {"\"metric\":\"Dot\"", "\"metric\":\"dot\"", "'metric'"},
        {"{\"version\"", "[{\"version\"", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *t = replace(s, bad[i].from, bad[i].to);
        expect_restore_fails(m, t, strlen(t), bad[i].msg);
        free(t);
    }
    /* Two collections sharing an incarnation. */
    struct vd_coll_schema a = schema("p"), b = schema("q");
    a.incarnation = b.incarnation = 5;
    char text[2048];
    struct vd_buf sa = {0}, sb = {0};
    vd_meta_cmd_create_collection(&a, &sa);
    vd_meta_cmd_create_collection(&b, &sb);
    /* The schema object is the command's "schema" member; cut it out of the command text. */
    const char *pa = strstr(sa.data, "\"schema\":") + 9, *pb = strstr(sb.data, "\"schema\":") + 9;
    snprintf(text, sizeof text,
             "{\"version\":1,\"applied\":3,\"collections\":[%.*s,%.*s],\"members\":[]}",
             (int)(strlen(pa) - 1), pa, (int)(strlen(pb) - 1), pb);
    expect_restore_fails(m, text, strlen(text), "incarnation 5 appears twice");
    vd_buf_release(&sa);
    vd_buf_release(&sb);

    /* Single byte corruption at every position, several values: refused with no change, or
     * accepted into a state that is itself valid. */
    rng_state = 7;
    size_t accepted = 0, refused = 0;
    static const char subst[] = {'0', '9', '"', '{', ']', ',', 'x', ' ', '-', 0x7f};
    for (size_t pos = 0; pos < len; pos++) {
        for (size_t v = 0; v < sizeof subst; v++) {
            if (s[pos] == subst[v])
                continue;
            char *t = strdup(s);
            t[pos] = subst[v];
            struct vd_meta *c = new_meta();
            assert_int_equal(vd_meta_restore(c, (const uint8_t *)s, len, NULL), 0);
            char *before = snap(c);
            int rc = vd_meta_restore(c, (const uint8_t *)t, len, NULL);
            if (rc == 0) {
                accepted++;
                check_consistent(c);
            } else {
                refused++;
                assert_int_equal(rc, VD_ECORRUPT);
                char *after = snap(c);
                assert_string_equal(before, after);
                free(after);
            }
            free(before);
            vd_meta_free(c);
            free(t);
        }
    }
    assert_true(refused > accepted);
    assert_true(accepted > 0); /* e.g. a digit of a token: still a valid snapshot */
    free(s);
    vd_meta_free(src);
    vd_meta_free(m);
}

static void test_u64_extremes_roundtrip(void **state)
{
    struct vd_meta *m = new_meta();
    struct vd_coll_schema s = schema("big");
    s.incarnation = UINT64_MAX;
    s.created_hlc = UINT64_MAX - 1;
    assert_int_equal(create(m, &s, NULL), 0);
    s = schema("big2");
    s.incarnation = (UINT64_C(1) << 53) + 1; /* not representable as a double */
    assert_int_equal(create(m, &s, NULL), 0);
    /* An index near 2^63: the created incarnation keeps all its bits. */
    s = schema("late");
    uint64_t idx = (UINT64_C(1) << 62) + 12345;
    struct vd_buf b = {0};
    vd_meta_cmd_create_collection(&s, &b);
    assert_int_equal(vd_meta_apply(m, idx, (const uint8_t *)b.data, b.len, NULL), 0);
    vd_buf_release(&b);
    assert_int_equal(add(m, UINT64_MAX, "max:1", "", NULL), 0);
    assert_int_equal(add(m, (UINT64_C(1) << 53) + 1, "odd:1", "", NULL), 0);
    vd_meta_skip(m, UINT64_MAX);

    char *t = snap(m);
    assert_non_null(strstr(t, "\"applied\":18446744073709551615"));
    assert_non_null(strstr(t, "\"incarnation\":18446744073709551615"));
    assert_non_null(strstr(t, "\"created_hlc\":18446744073709551614"));
    assert_non_null(strstr(t, "\"incarnation\":9007199254740993"));
    assert_non_null(strstr(t, "\"id\":9007199254740993"));
    struct vd_meta *r = new_meta();
    assert_int_equal(vd_meta_restore(r, (const uint8_t *)t, strlen(t), NULL), 0);
    assert_true(vd_meta_applied(r) == UINT64_MAX);
    assert_true(vd_meta_collection(r, "big")->incarnation == UINT64_MAX);
    assert_true(vd_meta_collection(r, "big")->created_hlc == UINT64_MAX - 1);
    assert_true(vd_meta_collection(r, "big2")->incarnation == (UINT64_C(1) << 53) + 1);
    assert_true(vd_meta_collection(r, "late")->incarnation == (TOP | idx));
    assert_non_null(vd_meta_member(r, UINT64_MAX));
    assert_non_null(vd_meta_member(r, (UINT64_C(1) << 53) + 1));
    assert_memory_equal(vd_meta_member(r, UINT64_MAX)->tokens,
                        vd_meta_member(m, UINT64_MAX)->tokens, sizeof(uint64_t) * VD_META_TOKENS);
    char *t2 = snap(r);
    assert_string_equal(t, t2);
    free(t2);
    /* Operations by a u64 id near the top find it. */
    assert_int_equal(set(r, (UINT64_C(1) << 53) + 1, VD_MEMBER_UP, NULL, NULL, NULL), 0);
    assert_int_equal(rm(r, UINT64_MAX, NULL), 0);
    assert_null(vd_meta_member(r, UINT64_MAX));
    assert_int_equal(rm(r, (UINT64_C(1) << 53), NULL), VD_ENOTFOUND);
    /* One past the top is refused, in commands and snapshots. */
    expect_reject(r, "{\"op\":\"remove_member\",\"id\":18446744073709551616}", VD_EINVAL, "'id'");
    char *over = replace(t, "\"applied\":18446744073709551615", "\"applied\":18446744073709551616");
    expect_restore_fails(r, over, strlen(over), "'applied'");
    free(over);
    free(t);
    vd_meta_free(m);
    vd_meta_free(r);
}

/* ---- ring ------------------------------------------------------------------------------------ */

/* Exact fraction of the hash space whose primary is each member (arc lengths between sorted
 * tokens), from the member tokens alone: an independent model of the ring. */
static void exact_shares(const struct vd_meta *m, double *share)
{
    size_t nm = vd_meta_n_members(m), n = 0;
    struct {
        uint64_t t;
        size_t owner;
    } toks[64 * VD_META_TOKENS];
    for (size_t i = 0; i < nm; i++) {
        share[i] = 0;
        for (int t = 0; t < VD_META_TOKENS; t++) {
            toks[n].t = vd_meta_member_at(m, i)->tokens[t];
            toks[n++].owner = i;
        }
    }
    for (size_t i = 1; i < n; i++) /* insertion sort: n is small */
        for (size_t j = i; j > 0 && toks[j - 1].t > toks[j].t; j--) {
            __typeof__(toks[0]) x = toks[j];
            toks[j] = toks[j - 1];
            toks[j - 1] = x;
        }
    for (size_t i = 0; i < n; i++) {
        uint64_t prev = toks[(i + n - 1) % n].t;
        uint64_t arc = toks[i].t - prev; /* wraps correctly for i == 0 */
        share[toks[i].owner] += (double)arc / 18446744073709551616.0;
    }
}

/* Primary-ownership shares measured with 100,000 random hashes; returns the worst ratio of a
 * share to the fair share 1/n, as max(share*n, 1/(share*n)). */
static double measured_balance(const struct vd_meta *m, double *share)
{
    size_t nm = vd_meta_n_members(m);
    uint64_t count[64] = {0};
    for (int i = 0; i < 100000; i++) {
        uint64_t h = rng(), out[1];
        assert_int_equal(vd_meta_replicas(m, h, 1, out), 1);
        size_t k = 0;
        while (vd_meta_member_at(m, k)->id != out[0])
            k++;
        count[k]++;
    }
    double worst = 1;
    for (size_t i = 0; i < nm; i++) {
        share[i] = (double)count[i] / 100000.0;
        double r = share[i] * (double)nm;
        assert_true(r > 0);
        if (r > worst)
            worst = r;
        if (1 / r > worst)
            worst = 1 / r;
    }
    return worst;
}

/*
 * Balance. Tokens derived from ids behave like independent uniform positions, so with n members
 * of T tokens each (N = nT points) a member's primary share is a sum of T of the N spacings of
 * the circle: Beta(T, N - T), whose standard deviation relative to the fair share 1/n is
 * sqrt((n - 1) / (nT + 1)): 0.202 for 3 x 16 and 0.222 for 5 x 16. The test checks the exact
 * arc shares of 2,000 random clusters of each size against that model (a broken derivation,
 * e.g. tokens that cluster, shows as a larger spread), bounds the tail (members beyond +-50 % of
 * fair: about 2 sd, so a few percent; asserted below 5 %), and then samples 100,000 random
 * hashes through vd_meta_replicas on one fixed cluster, whose shares must agree with the arc
 * model within sampling error and lie within 0.5x..1.5x of fair (2.5 sd; the fixed ids are
 * deterministic, so this does not flake).
 */
static void ring_balance(size_t n_members, uint64_t seed)
{
    double worst_hi = 0, worst_lo = 10, sum_dev = 0;
    size_t beyond_50 = 0, samples = 0;
    rng_state = seed;
    for (int c = 0; c < 2000; c++) {
        struct vd_meta *m = new_meta();
        for (size_t i = 0; i < n_members; i++)
            add_up(m, rng() | 1);
        double share[8];
        exact_shares(m, share);
        double total = 0;
        for (size_t i = 0; i < n_members; i++) {
            double r = share[i] * (double)n_members;
            total += share[i];
            if (r > worst_hi)
                worst_hi = r;
            if (r < worst_lo)
                worst_lo = r;
            sum_dev += (r - 1) * (r - 1);
            beyond_50 += r > 1.5 || r < 0.5;
            samples++;
        }
        assert_true(total > 0.999999 && total < 1.000001);
        vd_meta_free(m);
    }
    double sd = sqrt(sum_dev / (double)samples);
    double model = sqrt((double)(n_members - 1) / (double)(n_members * VD_META_TOKENS + 1));
    print_message("ring balance, %zu members x %d tokens, 2000 random clusters: relative sd "
                  "%.3f (model %.3f), worst share %.2fx..%.2fx fair, %.2f%% of members beyond "
                  "+-50%%\n",
                  n_members, VD_META_TOKENS, sd, model, worst_lo, worst_hi,
                  100.0 * (double)beyond_50 / (double)samples);
    assert_true(fabs(sd - model) < 0.02);
    assert_true((double)beyond_50 / (double)samples < 0.05);
    assert_true(worst_hi < 2.5 && worst_lo > 0.2);

    /* One cluster, 100,000 random hashes through vd_meta_replicas. */
    struct vd_meta *m = new_meta();
    for (size_t i = 0; i < n_members; i++)
        add_up(m, rng() | 1);
    double share[8], exact[8];
    exact_shares(m, exact);
    double worst = measured_balance(m, share);
    for (size_t i = 0; i < n_members; i++) {
        print_message("  member %zu: sampled %.4f exact %.4f fair %.4f\n", i, share[i], exact[i],
                      1.0 / (double)n_members);
        /* The lookup agrees with the arc model within sampling error (5 sd of a binomial). */
        assert_true(share[i] - exact[i] < 0.008 && exact[i] - share[i] < 0.008);
    }
    assert_true(worst < 1.5);
    vd_meta_free(m);
}

static void test_ring_balance_3(void **state)
{
    ring_balance(3, 1001);
}

static void test_ring_balance_5(void **state)
{
    ring_balance(5, 2002);
}

static void test_ring_rf_covers_all(void **state)
{
    rng_state = 3;
    struct vd_meta *m = new_meta();
    add_up(m, 10);
    add_up(m, 20);
    add_up(m, 30);
    for (int i = 0; i < 100000; i++) {
        uint64_t h = rng(), out[5];
        /* Edge hashes too: exactly on a token, 0 and the top (wrap). */
        if (i == 0)
            h = 0;
        else if (i == 1)
            h = UINT64_MAX;
        else if (i < 2 + VD_META_TOKENS)
            h = vd_meta_member(m, 20)->tokens[i - 2];
        assert_int_equal(vd_meta_replicas(m, h, 3, out), 3);
        assert_true(out[0] != out[1] && out[1] != out[2] && out[0] != out[2]);
        for (int k = 0; k < 3; k++)
            assert_true(out[k] == 10 || out[k] == 20 || out[k] == 30);
        if (i >= 2 && i < 2 + VD_META_TOKENS)
            assert_true(out[0] == 20); /* a token owns the hash equal to it */
        /* Asking for more than exist gives all of them; rf 0 gives none. */
        assert_int_equal(vd_meta_replicas(m, h, 5, out), 3);
        assert_int_equal(vd_meta_replicas(m, h, 0, out), 0);
    }
    /* A hash just above the highest token wraps to the lowest one's owner. */
    uint64_t hi = 0, lo = UINT64_MAX, lo_owner = 0;
    for (size_t i = 0; i < 3; i++)
        for (int t = 0; t < VD_META_TOKENS; t++) {
            const struct vd_meta_member *mb = vd_meta_member_at(m, i);
            if (mb->tokens[t] > hi)
                hi = mb->tokens[t];
            if (mb->tokens[t] < lo) {
                lo = mb->tokens[t];
                lo_owner = mb->id;
            }
        }
    uint64_t out[1];
    if (hi < UINT64_MAX) {
        assert_int_equal(vd_meta_replicas(m, hi + 1, 1, out), 1);
        assert_true(out[0] == lo_owner);
    }
    assert_int_equal(vd_meta_replicas(m, 0, 1, out), 1);
    assert_true(out[0] == lo_owner);
    vd_meta_free(m);
}

static void test_ring_stability(void **state)
{
    rng_state = 4;
    struct vd_meta *m = new_meta();
    add_up(m, 101);
    add_up(m, 202);
    add_up(m, 303);
    enum { N = 100000 };
    uint64_t *hashes = malloc(N * sizeof *hashes), (*before)[3] = malloc(N * sizeof *before);
    for (int i = 0; i < N; i++) {
        hashes[i] = rng();
        assert_int_equal(vd_meta_replicas(m, hashes[i], 3, before[i]), 3);
    }
    /* Joining: nothing moves yet. */
    assert_int_equal(add(m, 404, "n4:1", "", NULL), 0);
    for (int i = 0; i < N; i += 7) {
        uint64_t out[3];
        assert_int_equal(vd_meta_replicas(m, hashes[i], 3, out), 3);
        assert_memory_equal(out, before[i], sizeof out);
    }
    assert_int_equal(set(m, 404, VD_MEMBER_UP, NULL, NULL, NULL), 0);
    size_t moved = 0;
    for (int i = 0; i < N; i++) {
        uint64_t out[3];
        assert_int_equal(vd_meta_replicas(m, hashes[i], 3, out), 3);
        if (out[0] != before[i][0]) {
            /* A key's primary changes only to the new member. */
            assert_true(out[0] == 404);
            moved++;
        }
        /* And its replica set only gains the new member: the old members keep their order and
         * the one dropped is the last. */
        size_t k = 0;
        for (int j = 0; j < 3; j++) {
            if (out[j] == 404)
                continue;
            assert_true(out[j] == before[i][k]);
            k++;
        }
    }
    /* About a quarter of the keys moved (16 tokens: within a wide band). */
    print_message("adding a 4th member moved %.1f%% of primaries\n", 100.0 * (double)moved / N);
    assert_true(moved > N / 10 && moved < N / 2);
    /* Removing it again restores the old placement exactly. */
    assert_int_equal(rm(m, 404, NULL), 0);
    for (int i = 0; i < N; i += 3) {
        uint64_t out[3];
        assert_int_equal(vd_meta_replicas(m, hashes[i], 3, out), 3);
        assert_memory_equal(out, before[i], sizeof out);
    }
    free(hashes);
    free(before);
    vd_meta_free(m);
}

/* ---- ring version, arcs and placement ------------------------------------------------------- */

static void test_ring_version(void **state)
{
    struct vd_meta *m = new_meta();
    assert_true(vd_meta_ring_version(m) == 0);
    assert_int_equal(add(m, 7, "a:1", "", NULL), 0); /* joining: owns nothing yet */
    assert_true(vd_meta_ring_version(m) == 0);
    assert_int_equal(set(m, 7, VD_MEMBER_UP, NULL, NULL, NULL), 0);
    uint64_t v = vd_meta_applied(m);
    assert_true(vd_meta_ring_version(m) == v);
    /* changes that leave the tokens alone keep the version */
    struct vd_coll_schema s = schema("docs");
    assert_int_equal(create(m, &s, NULL), 0);
    assert_int_equal(set(m, 7, VD_MEMBER_LEAVING, "b:2", NULL, NULL), 0);
    assert_int_equal(set(m, 7, VD_MEMBER_UP, NULL, NULL, NULL), 0);
    assert_int_equal(add(m, 9, "c:1", "", NULL), 0);
    assert_true(vd_meta_ring_version(m) == v);
    /* a refused command changes nothing */
    assert_int_equal(set(m, 99, VD_MEMBER_UP, NULL, NULL, NULL), VD_ENOTFOUND);
    assert_true(vd_meta_ring_version(m) == v);
    assert_int_equal(set(m, 9, VD_MEMBER_UP, NULL, NULL, NULL), 0);
    uint64_t v2 = vd_meta_applied(m);
    assert_true(vd_meta_ring_version(m) == v2 && v2 > v);
    /* removing a joining member leaves the ring; removing an owner changes it */
    assert_int_equal(add(m, 11, "d:1", "", NULL), 0);
    assert_int_equal(rm(m, 11, NULL), 0);
    assert_true(vd_meta_ring_version(m) == v2);
    assert_int_equal(rm(m, 9, NULL), 0);
    uint64_t v3 = vd_meta_applied(m);
    assert_true(vd_meta_ring_version(m) == v3);
    /* a snapshot carries it, so a node restored from one agrees with one that applied the log */
    char *t = snap(m);
    assert_non_null(strstr(t, "\"ring_version\":"));
    struct vd_meta *r = new_meta();
    assert_int_equal(vd_meta_restore(r, (const uint8_t *)t, strlen(t), NULL), 0);
    assert_true(vd_meta_ring_version(r) == v3);
    struct vd_placement pa, pb;
    vd_meta_place(m, 12345, 3, &pa);
    vd_meta_place(r, 12345, 3, &pb);
    assert_true(pa.ring_version == v3 && pb.ring_version == v3);
    /* a snapshot from before versioned rings restores as version 0; one above applied is refused */
    const char *old = "{\"version\":1,\"applied\":5,\"collections\":[],\"members\":[]}";
    assert_int_equal(vd_meta_restore(r, (const uint8_t *)old, strlen(old), NULL), 0);
    assert_true(vd_meta_ring_version(r) == 0);
    const char *bad =
        "{\"version\":1,\"applied\":5,\"ring_version\":6,\"collections\":[],\"members\":[]}";
    assert_int_equal(vd_meta_restore(r, (const uint8_t *)bad, strlen(bad), NULL), VD_ECORRUPT);
    free(t);
    vd_meta_free(r);
    vd_meta_free(m);
}

/* Whether two placements name the same natural replicas in the same order. */
static bool same_place(const struct vd_placement *a, const struct vd_placement *b)
{
    return a->n_natural == b->n_natural &&
           !memcmp(a->natural, b->natural, a->n_natural * sizeof a->natural[0]);
}

/*
 * The property that ties range-restricted search to placement: the ring's arcs (start, end]
 * partition the hash space as vd_ring_contains reads them, and every hash on an arc is placed
 * like the arc's end. Probed where an off-by-one or a lost wrap would show: every token, one
 * past every token, one before it, 0 and UINT64_MAX, on rings of 1 to 5 members.
 */
static void test_arcs_match_placement(void **state)
{
    rng_state = 11;
    struct vd_meta *m = new_meta();
    uint64_t (*arcs)[2] = malloc(5 * VD_META_TOKENS * sizeof *arcs);
    assert_int_equal(vd_meta_arcs(m, arcs), 0);
    for (uint64_t id = 1; id <= 5; id++) {
        add_up(m, id * 1000 + 3);
        size_t n = vd_meta_arcs(m, arcs);
        assert_int_equal(n, vd_meta_ring_size(m)); /* no equal tokens among these */
        uint64_t probes[3 * 5 * VD_META_TOKENS + 2];
        size_t np = 0;
        probes[np++] = 0;
        probes[np++] = UINT64_MAX;
        for (size_t i = 0; i < n; i++) {
            probes[np++] = arcs[i][1];
            probes[np++] = arcs[i][1] + 1; /* wraps to 0 for a token at the top */
            probes[np++] = arcs[i][1] - 1;
        }
        for (size_t p = 0; p < np; p++) {
            size_t hits = 0, at = 0;
            for (size_t i = 0; i < n; i++)
                if (vd_ring_contains(arcs[i][0], arcs[i][1], probes[p])) {
                    hits++;
                    at = i;
                }
            assert_int_equal(hits, 1);
            struct vd_placement a, b;
            vd_meta_place(m, probes[p], 3, &a);
            vd_meta_place(m, arcs[at][1], 3, &b);
            assert_true(same_place(&a, &b));
            assert_int_equal(a.n_natural, id < 3 ? id : 3);
            assert_int_equal(a.n_pending, 0);
        }
        /* the arc that wraps past the top is the first one */
        assert_true(arcs[0][0] > arcs[0][1]);
        for (size_t i = 1; i < n; i++)
            assert_true(arcs[i][0] < arcs[i][1] && arcs[i][0] == arcs[i - 1][1]);
    }
    free(arcs);
    vd_meta_free(m);
}

static void test_place_point(void **state)
{
    struct vd_meta *m = new_meta();
    add_up(m, 5);
    add_up(m, 6);
    add_up(m, 7);
    add_up(m, 8);
    struct vd_coll_schema s = schema("docs");
    s.replication_factor = 2;
    s.write_consistency_factor = 1;
    assert_int_equal(create(m, &s, NULL), 0);
    struct vd_pid id = {.type = VD_PID_NUM};
    uint8_t key[VD_PID_KEY_MAX];
    struct vd_placement p;
    for (id.u.num = 0; id.u.num < 1000; id.u.num++) {
        size_t kn = vd_pid_encode(&id, key);
        assert_int_equal(vd_meta_place_point(m, "docs", key, kn, &p), 0);
        uint64_t want[2];
        assert_int_equal(vd_meta_replicas(m, vd_place_hash("docs", key, kn), 2, want), 2);
        assert_int_equal(p.n_natural, 2);
        assert_memory_equal(p.natural, want, sizeof want);
        assert_int_equal(p.n_pending, 0);
        assert_true(p.ring_version == vd_meta_ring_version(m));
    }
    assert_int_equal(vd_meta_place_point(m, "nope", key, 9, &p), VD_ENOTFOUND);
    /* rf beyond the members gives all of them; beyond the array, the array */
    vd_meta_place(m, 1, 1000, &p);
    assert_int_equal(p.n_natural, 4);
    vd_meta_free(m);
}

/* A view is a copy: later commands change the machine, never a view already taken. */
static void test_view_is_immutable(void **state)
{
    rng_state = 12;
    struct vd_meta *m = populated();
    char *before = snap(m);
    struct vd_meta_view *v;
    assert_int_equal(vd_meta_view_new(m, &v), 0);
    const struct vd_meta *vs = vd_meta_view_state(v);
    char *copy = snap(vs);
    assert_string_equal(before, copy);
    struct vd_placement a, b;
    vd_meta_place(m, 777, 3, &a);
    vd_meta_place(vs, 777, 3, &b);
    assert_true(same_place(&a, &b) && a.ring_version == b.ring_version);
    /* change everything the view holds */
    struct vd_coll_schema s = schema("later");
    assert_int_equal(create(m, &s, NULL), 0);
    assert_int_equal(drop(m, vd_meta_collection_at(m, 0)->name, NULL), 0);
    add_up(m, 4242);
    assert_int_equal(rm(m, vd_meta_member_at(m, 0)->id, NULL), 0);
    char *after = snap(vs);
    assert_string_equal(before, after);
    char *now = snap(m);
    assert_true(strcmp(before, now) != 0);
    free(now);
    /* references: the view lives until the last one goes */
    assert_true(vd_meta_view_ref(v) == v);
    vd_meta_view_release(v);
    char *again = snap(vs);
    assert_string_equal(before, again);
    vd_meta_view_release(v);
    vd_meta_view_release(NULL);
    free(before);
    free(copy);
    free(after);
    free(again);
    vd_meta_free(m);
}

struct pub_reader {
    struct vd_meta_pub *pub;
    atomic_bool *stop;
    uint64_t base;   /* applied index before the first create */
    atomic_size_t acquired; /* views read (the publisher polls it) */
    bool ok;
};

/* Reads views until told to stop: each must be whole (as many collections as creates applied
 * when it was taken) and none older than one read before. */
static void *pub_reader_main(void *arg)
{
    struct pub_reader *r = arg;
    uint64_t last = 0;
    r->ok = true;
    while (!atomic_load(r->stop)) {
        struct vd_meta_view *v = vd_meta_pub_acquire(r->pub);
        if (!v) {
            r->ok = false;
            break;
        }
        const struct vd_meta *st = vd_meta_view_state(v);
        uint64_t applied = vd_meta_applied(st);
        if (applied < last || vd_meta_n_collections(st) != applied - r->base)
            r->ok = false;
        for (size_t i = 0; i < vd_meta_n_collections(st); i++)
            if (vd_meta_collection_at(st, i)->dim != 128)
                r->ok = false;
        last = applied;
        vd_meta_view_release(v);
        atomic_fetch_add(&r->acquired, 1);
    }
    return NULL;
}

static size_t pub_readers_acquired(struct pub_reader *r, int n)
{
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += atomic_load(&r[i].acquired);
    return total;
}

/* Waits until the readers have taken more than `since` views in all (they may be slow to get a
 * core on a loaded machine: reading must overlap publishing, or the test shows nothing). */
static size_t pub_readers_wait(struct pub_reader *r, int n, size_t since)
{
    size_t now;
    while ((now = pub_readers_acquired(r, n)) <= since)
        sched_yield();
    return now;
}

/* Readers on other threads acquire views while the owner applies and publishes: every view they
 * see is complete and they never go back in time; run under TSan and ASan this also shows no race
 * and no view freed while held, or leaked. */
static void test_view_publish_concurrent(void **state)
{
    struct vd_meta *m = new_meta();
    add_up(m, 1);
    struct vd_meta_pub pub;
    vd_meta_pub_init(&pub);
    assert_null(vd_meta_pub_acquire(&pub));
    assert_int_equal(vd_meta_publish(&pub, m), 0);
    atomic_bool stop;
    atomic_init(&stop, false);
    enum { READERS = 3, CREATES = 300 };
    struct pub_reader r[READERS];
    pthread_t th[READERS];
    for (int i = 0; i < READERS; i++) {
        r[i] = (struct pub_reader){.pub = &pub, .stop = &stop, .base = vd_meta_applied(m)};
        atomic_init(&r[i].acquired, 0);
        assert_int_equal(pthread_create(&th[i], NULL, pub_reader_main, &r[i]), 0);
    }
    size_t seen = pub_readers_wait(r, READERS, 0);
    /* a view held across many publishes stays valid */
    struct vd_meta_view *held = vd_meta_pub_acquire(&pub);
    assert_non_null(held);
    for (int i = 0; i < CREATES; i++) {
        char name[32];
        snprintf(name, sizeof name, "c%04d", i);
        struct vd_coll_schema s = schema(name);
        assert_int_equal(create(m, &s, NULL), 0);
        assert_int_equal(vd_meta_publish(&pub, m), 0);
        if (i % 30 == 29) /* every 30 publishes, readers must have read meanwhile */
            seen = pub_readers_wait(r, READERS, seen);
    }
    atomic_store(&stop, true);
    size_t total = 0;
    for (int i = 0; i < READERS; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_true(r[i].ok);
        total += atomic_load(&r[i].acquired);
    }
    print_message("%zu views acquired by %d readers over %d publishes\n", total, READERS, CREATES);
    assert_true(total > 0);
    assert_int_equal(vd_meta_n_collections(vd_meta_view_state(held)), 0);
    vd_meta_view_release(held);
    struct vd_meta_view *last = vd_meta_pub_acquire(&pub);
    assert_int_equal(vd_meta_n_collections(vd_meta_view_state(last)), CREATES);
    vd_meta_view_release(last);
    vd_meta_pub_release(&pub);
    assert_null(vd_meta_pub_acquire(&pub));
    vd_meta_free(m);
}

/* ---- plan ------------------------------------------------------------------------------------ */

static const struct vd_meta_action *find_action(const struct vd_meta_action *a, size_t n,
                                                bool create, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (a[i].create == create && !strcmp(a[i].name, name))
            return &a[i];
    return NULL;
}

/* The quantization config changes through its own command, only for the named incarnation, and
 * travels in create commands; a local copy whose config differs gets an update action. */
static void test_update_quant(void **state)
{
    (void)state;
    struct vd_meta *m = new_meta();
    struct vd_coll_schema s = schema("q");
    assert_int_equal(create(m, &s, NULL), 0);
    struct vd_coll_schema want = *vd_meta_collection(m, "q");
    assert_false(want.quant_enabled);
    want.quant_enabled = true;
    want.quant_quantile = 0.95f;
    want.quant_always_ram = 1;
    struct vd_buf b = {0};
    vd_meta_cmd_update_collection(&want, &b);
    assert_int_equal(apply_buf(m, &b, NULL), 0);
    const struct vd_coll_schema *got = vd_meta_collection(m, "q");
    assert_true(got->quant_enabled && got->quant_quantile == 0.95f && got->quant_always_ram == 1);
    assert_memory_equal(got, &want, sizeof want);
    /* another incarnation: not found, nothing changes */
    struct vd_coll_schema stale = want;
    stale.incarnation ^= 1;
    stale.quant_enabled = false;
    struct vd_err e;
    vd_meta_cmd_update_collection(&stale, &b);
    assert_int_equal(apply_buf(m, &b, &e), VD_ENOTFOUND);
    assert_true(vd_meta_collection(m, "q")->quant_enabled);
    /* a create carrying the config keeps it */
    struct vd_coll_schema q2 = schema("q2");
    q2.quant_enabled = true;
    q2.quant_always_ram = 2;
    assert_int_equal(create(m, &q2, NULL), 0);
    assert_true(vd_meta_collection(m, "q2")->quant_enabled);
    assert_int_equal(vd_meta_collection(m, "q2")->quant_always_ram, 2);
    /* plan: the local copies lack the config */
    struct vd_coll_schema l1 = *vd_meta_collection(m, "q"), l2 = *vd_meta_collection(m, "q2");
    l1.quant_enabled = l2.quant_enabled = false;
    struct vd_meta_local local[] = {{"q", l1.incarnation, &l1}, {"q2", l2.incarnation, &l2}};
    struct vd_meta_action *a;
    size_t n;
    assert_int_equal(vd_meta_plan(m, local, 2, &a, &n), 0);
    assert_int_equal(n, 2);
    for (size_t i = 0; i < n; i++) {
        assert_true(a[i].update && !a[i].create);
        assert_memory_equal(&a[i].schema, vd_meta_collection(m, a[i].name), sizeof a[i].schema);
    }
    free(a);
    /* once they match, nothing to do */
    struct vd_meta_local same[] = {{"q", l1.incarnation, vd_meta_collection(m, "q")},
                                   {"q2", l2.incarnation, vd_meta_collection(m, "q2")}};
    assert_int_equal(vd_meta_plan(m, same, 2, &a, &n), 0);
    assert_int_equal(n, 0);
    vd_meta_free(m);
}

static void test_plan(void **state)
{
    struct vd_meta *m = new_meta();
    /* The state machine: "same" (index 1), "other" (index 2), "adopted" (pre-cluster 555),
     * "fresh" (index 4). */
    const char *names[] = {"same", "other", "adopted", "fresh"};
    for (int i = 0; i < 4; i++) {
        struct vd_coll_schema s = schema(names[i]);
        if (i == 2)
            s.incarnation = 555;
        s.dim = (uint32_t)(10 + i);
        assert_int_equal(create(m, &s, NULL), 0);
    }
    vd_meta_skip(m, 10);
    uint64_t inc_same = vd_meta_collection(m, "same")->incarnation;
    assert_true(inc_same == (TOP | 1));

    struct vd_meta_action *a;
    size_t n;
    /* Nothing local: create all, in name order. */
    assert_int_equal(vd_meta_plan(m, NULL, 0, &a, &n), 0);
    assert_int_equal(n, 4);
    assert_string_equal(a[0].name, "adopted");
    assert_string_equal(a[3].name, "same");
    for (size_t i = 0; i < n; i++) {
        assert_true(a[i].create);
        assert_memory_equal(&a[i].schema, vd_meta_collection(m, a[i].name), sizeof a[i].schema);
    }
    free(a);

    struct vd_meta_local local[] = {
        {"same", TOP | 1, NULL},   /* matches: nothing */
        {"other", TOP | 9, NULL},  /* another incarnation, old enough: delete then create */
        {"extra", TOP | 3, NULL},  /* unknown, created before the applied index: delete */
        {"ahead", TOP | 11, NULL}, /* unknown, created after the applied index: lagging, keep */
        {"precl", 777, NULL},      /* pre-cluster incarnation unknown to the machine: delete */
        {"adopted", 555, NULL},    /* adopted pre-cluster: matches */
        {"oldpre", 12, NULL},      /* no top bit: index rule does not apply even though 12 > 10 */
    };
    size_t nl = sizeof local / sizeof local[0];
    assert_int_equal(vd_meta_plan(m, local, nl, &a, &n), 0);
    /* Deletes first, then creates. */
    size_t first_create = n;
    for (size_t i = 0; i < n; i++)
        if (a[i].create && first_create == n)
            first_create = i;
        else if (!a[i].create)
            assert_true(first_create == n);
    assert_int_equal(n, 6);
    const struct vd_meta_action *x;
    assert_non_null(x = find_action(a, n, false, "other"));
    assert_true(x->incarnation == (TOP | 9));
    assert_non_null(x = find_action(a, n, true, "other"));
    assert_true(x->schema.incarnation == (TOP | 2));
    assert_int_equal(x->schema.dim, 11);
    assert_non_null(x = find_action(a, n, false, "extra"));
    assert_true(x->incarnation == (TOP | 3));
    assert_non_null(x = find_action(a, n, false, "precl"));
    assert_true(x->incarnation == 777);
    assert_non_null(x = find_action(a, n, false, "oldpre"));
    assert_non_null(x = find_action(a, n, true, "fresh"));
    assert_true(x->schema.incarnation == (TOP | 4));
    assert_null(find_action(a, n, false, "same"));
    assert_null(find_action(a, n, true, "same"));
    assert_null(find_action(a, n, false, "ahead"));
    assert_null(find_action(a, n, false, "adopted"));
    assert_null(find_action(a, n, true, "adopted"));
    free(a);

    /* A lagging local copy of a known name under a newer incarnation: left alone, and not
     * re-created either (the name is taken by the newer collection). */
    struct vd_meta_local lag[] = {
        {"fresh", TOP | 50, NULL}, {"same", TOP | 1, NULL}, {"other", TOP | 2, NULL}, {"adopted", 555, NULL}};
    assert_int_equal(vd_meta_plan(m, lag, 4, &a, &n), 0);
    assert_int_equal(n, 0);
    assert_null(a);
    /* Exactly at the applied index is not "above": deleted. */
    struct vd_meta_local at[] = {{"gone", TOP | 10, NULL}};
    assert_int_equal(vd_meta_plan(m, at, 1, &a, &n), 0);
    assert_true(n == 5 && !a[0].create && a[0].incarnation == (TOP | 10));
    free(a);
    /* Once the machine catches up, the lagging one is settled. */
    vd_meta_skip(m, 60);
    assert_int_equal(vd_meta_plan(m, lag, 4, &a, &n), 0);
    assert_int_equal(n, 2);
    assert_false(a[0].create);
    assert_true(a[0].incarnation == (TOP | 50));
    assert_true(a[1].create);
    assert_string_equal(a[1].name, "fresh");
    free(a);
    vd_meta_free(m);
}

/* ---- fuzz ------------------------------------------------------------------------------------ */

static size_t mutate(char *t, size_t len, size_t cap)
{
    static const char pieces[] = "0123456789{}[]\",:-.eE \\tnulfr";
    int n = 1 + (int)(rng() % 4);
    for (int k = 0; k < n; k++) {
        uint64_t r = rng();
        size_t pos = len ? (size_t)(r >> 8) % len : 0;
        switch (r % 6) {
        case 0: /* replace a byte */
            if (len)
                t[pos] = (char)(r >> 40);
            break;
        case 1: /* replace with a JSON-ish byte */
            if (len)
                t[pos] = pieces[(r >> 40) % (sizeof pieces - 1)];
            break;
        case 2: /* insert */
            if (len + 1 < cap) {
                memmove(t + pos + 1, t + pos, len - pos);
                t[pos] = pieces[(r >> 40) % (sizeof pieces - 1)];
                len++;
            }
            break;
        case 3: /* delete */
            if (len) {
                memmove(t + pos, t + pos + 1, len - pos - 1);
                len--;
            }
            break;
        case 4: /* truncate */
            len = pos;
            break;
        default: /* duplicate a span */
            if (len && len * 2 < cap) {
                size_t from = (size_t)(r >> 24) % len, n2 = (size_t)(r >> 44) % (len - from + 1);
                char span[4096];
                memcpy(span, t + from, n2);
                memmove(t + pos + n2, t + pos, len - pos);
                memcpy(t + pos, span, n2);
                len += n2;
            }
            break;
        }
    }
    return len;
}

/* ---- payload indexes ------------------------------------------------------------------------- */

static void test_payload_indexes(void **state)
{
    struct vd_meta *m = new_meta();
    struct vd_coll_schema s = schema("docs"), t = schema("other");
    assert_int_equal(create(m, &s, NULL), 0);
    assert_int_equal(create(m, &t, NULL), 0);
    char txt[4096];
    const struct vd_meta_pindex *v;
    assert_int_equal(vd_meta_payload_indexes(m, "docs", &v), 0);
    assert_null(v);
    assert_int_equal(vd_meta_payload_indexes(m, "nope", &v), 0);
    assert_null(v);

    /* create, in field order whatever the order of commands */
    struct vd_err res;
    assert_int_equal(set_pidx(m, "docs", "tag", VD_DB_PINDEX_KEYWORD, &res), 0);
    assert_int_equal(set_pidx(m, "docs", "meta.year", VD_DB_PINDEX_INTEGER, NULL), 0);
    assert_int_equal(set_pidx(m, "docs", "active", VD_DB_PINDEX_BOOL, NULL), 0);
    pidx_text(m, "docs", txt, sizeof txt);
    assert_string_equal(txt, "active:bool,meta.year:integer,tag:keyword");
    pidx_text(m, "other", txt, sizeof txt);
    assert_string_equal(txt, "");

    /* the same declaration again changes nothing; another type retypes */
    char *before = state_text(m);
    assert_int_equal(set_pidx(m, "docs", "tag", VD_DB_PINDEX_KEYWORD, NULL), 0);
    char *after = state_text(m);
    assert_string_equal(before, after);
    free(before);
    free(after);
    assert_int_equal(set_pidx(m, "docs", "meta.year", VD_DB_PINDEX_FLOAT, NULL), 0);
    pidx_text(m, "docs", txt, sizeof txt);
    assert_string_equal(txt, "active:bool,meta.year:float,tag:keyword");

    /* drop */
    assert_int_equal(drop_pidx(m, "docs", "active", NULL), 0);
    pidx_text(m, "docs", txt, sizeof txt);
    assert_string_equal(txt, "meta.year:float,tag:keyword");
    check_consistent(m);

    /* errors leave the state as it was and name what is wrong */
    expect_reject(m,
                  "{\"op\":\"set_payload_index\",\"collection\":\"nope\",\"field\":\"a\","
                  "\"type\":\"keyword\"}",
                  VD_ENOTFOUND, "collection 'nope' not found");
    expect_reject(m, "{\"op\":\"drop_payload_index\",\"collection\":\"nope\",\"field\":\"a\"}",
                  VD_ENOTFOUND, "collection 'nope' not found");
    expect_reject(m, "{\"op\":\"drop_payload_index\",\"collection\":\"docs\",\"field\":\"active\"}",
                  VD_ENOTFOUND, "no payload index on 'active'");
    expect_reject(m,
                  "{\"op\":\"set_payload_index\",\"collection\":\"docs\",\"field\":\"a\","
                  "\"type\":\"geo\"}",
                  VD_EINVAL, "'type'");
    expect_reject(m, "{\"op\":\"set_payload_index\",\"collection\":\"docs\",\"field\":\"a\"}",
                  VD_EINVAL, "'type'");
    expect_reject(m, "{\"op\":\"set_payload_index\",\"collection\":\"docs\",\"type\":\"bool\"}",
                  VD_EINVAL, "'field'");
    expect_reject(m, "{\"op\":\"set_payload_index\",\"field\":\"a\",\"type\":\"bool\"}", VD_EINVAL,
                  "'collection'");
    expect_reject(m,
                  "{\"op\":\"set_payload_index\",\"collection\":\"docs\",\"field\":\"\","
                  "\"type\":\"bool\"}",
                  VD_EINVAL, "field_name");
    expect_reject(m,
                  "{\"op\":\"set_payload_index\",\"collection\":\"docs\",\"field\":7,"
                  "\"type\":\"bool\"}",
                  VD_EINVAL, "'field' must be a string");
    expect_reject(m,
                  "{\"op\":\"set_payload_index\",\"collection\":\"bad name\",\"field\":\"a\","
                  "\"type\":\"bool\"}",
                  VD_EINVAL, NULL);
    expect_reject(m, "{\"op\":\"drop_payload_index\",\"collection\":\"docs\",\"field\":\"\"}",
                  VD_EINVAL, "field_name");
    /* a key the database would refuse (too long) is refused here too */
    char *longcmd = malloc(1200);
    char longf[VD_STORE_PINDEX_NAME_MAX + 2];
    memset(longf, 'a', sizeof longf - 1);
    longf[sizeof longf - 1] = 0;
    snprintf(longcmd, 1200,
             "{\"op\":\"set_payload_index\",\"collection\":\"docs\",\"field\":\"%s\","
             "\"type\":\"bool\"}",
             longf);
    expect_reject(m, longcmd, VD_EINVAL, "at most");
    /* the longest allowed key is fine */
    longf[VD_STORE_PINDEX_NAME_MAX] = 0;
    assert_int_equal(set_pidx(m, "other", longf, VD_DB_PINDEX_BOOL, NULL), 0);
    free(longcmd);

    /* at most VD_META_MAX_PINDEXES per collection; retyping one at the limit still works */
    for (int i = 0; vd_meta_payload_indexes(m, "docs", &v) < VD_META_MAX_PINDEXES; i++) {
        char f[32];
        snprintf(f, sizeof f, "f%03d", i);
        assert_int_equal(set_pidx(m, "docs", f, VD_DB_PINDEX_KEYWORD, NULL), 0);
    }
    expect_reject(m,
                  "{\"op\":\"set_payload_index\",\"collection\":\"docs\",\"field\":\"zz\","
                  "\"type\":\"bool\"}",
                  VD_ERANGE, "at most 64");
    assert_int_equal(set_pidx(m, "docs", "tag", VD_DB_PINDEX_INTEGER, NULL), 0);
    check_consistent(m);

    /* deleting the collection drops its indexes; a new one of that name starts with none */
    assert_int_equal(drop(m, "docs", NULL), 0);
    assert_int_equal(vd_meta_payload_indexes(m, "docs", &v), 0);
    assert_int_equal(create(m, &s, NULL), 0);
    assert_int_equal(vd_meta_payload_indexes(m, "docs", &v), 0);
    vd_meta_free(m);
}

static void test_payload_index_snapshots(void **state)
{
    struct vd_meta *m = new_meta();
    struct vd_coll_schema s = schema("docs"), t = schema("plain");
    assert_int_equal(create(m, &s, NULL), 0);
    assert_int_equal(create(m, &t, NULL), 0);
    assert_int_equal(set_pidx(m, "docs", "z", VD_DB_PINDEX_FLOAT, NULL), 0);
    assert_int_equal(set_pidx(m, "docs", "a.b", VD_DB_PINDEX_KEYWORD, NULL), 0);
    char *sn = snap(m);
    /* indexes in field order; a collection without any has no field for them */
    assert_non_null(strstr(sn, "\"payload_indexes\":[{\"field\":\"a.b\",\"type\":\"keyword\"},"
                               "{\"field\":\"z\",\"type\":\"float\"}]"));
    assert_int_equal(strstr(strstr(sn, "\"plain\""), "payload_indexes") == NULL, 1);
    struct vd_meta *r = new_meta();
    assert_int_equal(vd_meta_restore(r, (const uint8_t *)sn, strlen(sn), NULL), 0);
    char a[256], b[256];
    pidx_text(m, "docs", a, sizeof a);
    pidx_text(r, "docs", b, sizeof b);
    assert_string_equal(a, b);
    assert_string_equal(a, "a.b:keyword,z:float");
    check_consistent(m);

    /* a snapshot without the field (as written before indexes existed) reads with none */
    assert_int_equal(drop_pidx(r, "docs", "z", NULL), 0);
    assert_int_equal(drop_pidx(r, "docs", "a.b", NULL), 0);
    char *old = snap(r);
    assert_null(strstr(old, "payload_indexes"));
    struct vd_meta *o = new_meta();
    assert_int_equal(set_pidx(o, "x", "y", VD_DB_PINDEX_BOOL, NULL), VD_ENOTFOUND);
    assert_int_equal(vd_meta_restore(o, (const uint8_t *)old, strlen(old), NULL), 0);
    const struct vd_meta_pindex *v;
    assert_non_null(vd_meta_collection(o, "docs"));
    assert_int_equal(vd_meta_payload_indexes(o, "docs", &v), 0);

    /* bad index entries are refused, naming the collection and the entry */
    static const char *bad[] = {
        "\"payload_indexes\":7",
        "\"payload_indexes\":[7]",
        "\"payload_indexes\":[{\"field\":\"a\"}]",
        "\"payload_indexes\":[{\"type\":\"bool\"}]",
        "\"payload_indexes\":[{\"field\":\"a\",\"type\":\"geo\"}]",
        "\"payload_indexes\":[{\"field\":\"\",\"type\":\"bool\"}]",
        ("\"payload_indexes\":[{\"field\":\"a\",\"type\":\"bool\"},{\"field\":\"a\",\"type\":"
         "\"keyword\"}]"),
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        /* splice the field into the first collection object, before its closing brace */
        const char *hlc = strstr(sn, "\"created_hlc\":");
        assert_non_null(hlc);
        size_t cut = (size_t)(strchr(hlc, ',') - sn); /* after created_hlc's value */
        struct vd_buf t2 = {0};
        vd_buf_append(&t2, sn, cut);
        vd_buf_puts(&t2, ",");
        vd_buf_puts(&t2, bad[i]);
        /* drop the collection's own payload_indexes so the bad one is the only one */
        const char *rest = strstr(sn + cut, "]}");
        vd_buf_puts(&t2, rest + 1);
        struct vd_err e;
        struct vd_meta *x = new_meta();
        int rc = vd_meta_restore(x, (const uint8_t *)t2.data, t2.len, &e);
        if (rc != VD_ECORRUPT)
            print_error("accepted: %.*s\n", (int)t2.len, t2.data);
        assert_int_equal(rc, VD_ECORRUPT);
        assert_non_null(strstr(e.msg, "collections[0]"));
        vd_meta_free(x);
        vd_buf_release(&t2);
    }
    /* more than the limit */
    struct vd_buf big = {0};
    const char *hlc = strstr(sn, "\"created_hlc\":");
    size_t cut = (size_t)(strchr(hlc, ',') - sn);
    vd_buf_append(&big, sn, cut);
    vd_buf_puts(&big, ",\"payload_indexes\":[");
    for (int i = 0; i <= VD_META_MAX_PINDEXES; i++)
        vd_buf_printf(&big, "%s{\"field\":\"f%d\",\"type\":\"bool\"}", i ? "," : "", i);
    vd_buf_puts(&big, "]");
    vd_buf_puts(&big, strstr(sn + cut, "]}") + 1);
    struct vd_meta *x = new_meta();
    assert_int_equal(vd_meta_restore(x, (const uint8_t *)big.data, big.len, NULL), VD_ECORRUPT);
    vd_meta_free(x);
    vd_buf_release(&big);

    free(old);
    free(sn);
    vd_meta_free(o);
    vd_meta_free(r);
    vd_meta_free(m);
}

static void test_fuzz_apply_and_restore(void **state)
{
    rng_state = 99;
    struct vd_meta *m = new_meta();
    char t[8192];
    size_t counts[20] = {0};
    const char *scale = getenv("VD_TEST_SCALE");
    int iters = scale && !strcmp(scale, "small") ? 3000 : 30000;
    for (int i = 0; i < iters; i++) {
        size_t len;
        uint64_t r = rng();
        if (r % 8 == 0) { /* random bytes */
            len = (size_t)(r >> 8) % 200;
            for (size_t k = 0; k < len; k++)
                t[k] = (char)rng();
        } else {
            struct vd_buf b = {0};
            random_command(&b);
            assert_true(vd_buf_ok(&b));
            memcpy(t, b.data, b.len);
            len = b.len;
            vd_buf_release(&b);
            if (r % 8 != 1)
                len = mutate(t, len, sizeof t);
        }
        char *before = state_text(m);
        struct vd_err res;
        uint64_t idx = vd_meta_applied(m) + 1;
        int rc = vd_meta_apply(m, idx, (const uint8_t *)t, len, &res);
        assert_true(vd_meta_applied(m) == idx);
        assert_true(rc == 0 || rc == VD_EINVAL || rc == VD_EEXIST || rc == VD_ENOTFOUND);
        assert_int_equal(res.code, rc);
        counts[-rc]++;
        if (rc) {
            char *after = state_text(m);
            assert_string_equal(before, after);
            free(after);
        }
        free(before);
        if (i % 16 == 0)
            check_consistent(m);

        /* Restore of a mutated snapshot of the current state, into a copy. */
        if (i % 8 == 0) {
            char *s = snap(m);
            size_t sl = strlen(s);
            if (sl < sizeof t / 2) {
                memcpy(t, s, sl);
                size_t ml = mutate(t, sl, sizeof t);
                struct vd_meta *c = new_meta();
                assert_int_equal(vd_meta_restore(c, (const uint8_t *)s, sl, NULL), 0);
                int rr = vd_meta_restore(c, (const uint8_t *)t, ml, NULL);
                assert_true(rr == 0 || rr == VD_ECORRUPT);
                if (rr == 0) {
                    check_consistent(c);
                } else {
                    char *after = snap(c);
                    assert_string_equal(s, after);
                    free(after);
                }
                vd_meta_free(c);
            }
            free(s);
        }
        /* Now and then, random bytes as a snapshot. */
        if (i % 32 == 5) {
            size_t rl = (size_t)(rng() % 300);
            for (size_t k = 0; k < rl; k++)
                t[k] = (char)rng();
            char *s = snap(m);
            assert_int_equal(vd_meta_restore(m, (const uint8_t *)t, rl, NULL), VD_ECORRUPT);
            char *after = snap(m);
            assert_string_equal(s, after);
            free(s);
            free(after);
        }
    }
    print_message("fuzz: %d commands: %zu applied, %zu invalid, %zu exist, %zu not found\n", iters,
                  counts[0], counts[-VD_EINVAL], counts[-VD_EEXIST], counts[-VD_ENOTFOUND]);
    assert_true(counts[0] > 0 && counts[-VD_EINVAL] > 0);
    vd_meta_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_meta_is_pure),
        cmocka_unit_test(test_create_and_delete_collection),
        cmocka_unit_test(test_create_validation),
        cmocka_unit_test(test_members),
        cmocka_unit_test(test_malformed_commands),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_snapshot_roundtrip),
        cmocka_unit_test(test_restore_rejects_bad_snapshots),
        cmocka_unit_test(test_u64_extremes_roundtrip),
        cmocka_unit_test(test_ring_balance_3),
        cmocka_unit_test(test_ring_balance_5),
        cmocka_unit_test(test_ring_rf_covers_all),
        cmocka_unit_test(test_ring_stability),
        cmocka_unit_test(test_ring_version),
        cmocka_unit_test(test_arcs_match_placement),
        cmocka_unit_test(test_place_point),
        cmocka_unit_test(test_view_is_immutable),
        cmocka_unit_test(test_view_publish_concurrent),
        cmocka_unit_test(test_plan),
        cmocka_unit_test(test_update_quant),
        cmocka_unit_test(test_payload_indexes),
        cmocka_unit_test(test_payload_index_snapshots),
        cmocka_unit_test(test_fuzz_apply_and_restore),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
