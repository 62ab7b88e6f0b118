/* Storage: CRUD, last-write-wins, tombstones, scans, collections and their incarnations, the
 * change log, restart, the directory lock, map growth, and a write-throughput figure. Real LMDB in
 * a temporary directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sched.h>
#include <string.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lmdb.h>

#include "vectord/record.h"
#include "vectord/store.h"

/* ---- fixture ------------------------------------------------------------------------------- */

struct fx {
    char dir[256];
    struct vd_store *s;
    uint64_t inc; /* collection "c" (dim 4) */
};

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(p);
}

static void rm_rf(const char *dir)
{
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static bool small_scale(void)
{
    const char *e = getenv("VD_TEST_SCALE");
    return e && strcmp(e, "small") == 0;
}

static void make_dir(char *buf, size_t n)
{
    const char *t = getenv("TMPDIR");
    snprintf(buf, n, "%s/vd-store-XXXXXX", t && *t ? t : "/tmp");
    assert_non_null(mkdtemp(buf));
}

static struct vd_store *open_store(const char *dir, bool no_sync, uint64_t map)
{
    struct vd_store_opts o = {.dir = dir, .no_sync = no_sync, .map_size = map};
    struct vd_store *s = NULL;
    struct vd_err e = {0};
    int r = vd_store_open(&o, &s, &e);
    if (r)
        fprintf(stderr, "open: %s\n", e.msg);
    assert_int_equal(r, 0);
    return s;
}

static int create_coll(struct vd_store *s, const char *name, uint32_t dim, uint64_t *inc)
{
    struct vd_coll_schema c = {.dim = dim, .metric = VD_METRIC_DOT, .hnsw_m = 16,
                               .hnsw_ef_construct = 100, .replication_factor = 1};
    snprintf(c.name, sizeof c.name, "%s", name);
    struct vd_wop op = {.kind = VD_WOP_COLL_CREATE, .schema = &c};
    struct vd_wbatch b = {.ops = &op, .n = 1};
    int r = vd_store_write(s, &b);
    if (r == 0) {
        assert_true(c.incarnation != 0);
        assert_true(c.created_hlc != 0);
        if (inc)
            *inc = c.incarnation;
    }
    return r;
}

static int drop_coll(struct vd_store *s, const char *name)
{
    struct vd_wop op = {.kind = VD_WOP_COLL_DELETE, .coll_name = name};
    struct vd_wbatch b = {.ops = &op, .n = 1};
    return vd_store_write(s, &b);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    make_dir(f->dir, sizeof f->dir);
    f->s = open_store(f->dir, true, 0);
    assert_int_equal(create_coll(f->s, "c", 4, &f->inc), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    vd_store_close(f->s);
    rm_rf(f->dir);
    free(f);
    return 0;
}

static struct vd_pid num(uint64_t n)
{
    struct vd_pid p = {.type = VD_PID_NUM, .u.num = n};
    return p;
}

static struct vd_pid uuid(uint8_t fill)
{
    struct vd_pid p = {.type = VD_PID_UUID};
    memset(p.u.uuid, fill, 16);
    return p;
}

/* One point op, written and waited for; returns status, *applied and *seq if not NULL. */
static int put(struct vd_store *s, enum vd_wop_kind kind, uint64_t inc, struct vd_pid id,
               uint64_t version, uint64_t node, const float *vec, uint32_t dim, const char *payload,
               bool *applied, uint64_t *seq)
{
    struct vd_wop op = {.kind = kind, .incarnation = inc, .id = id, .version = version,
                        .node = node, .vec = vec, .dim = dim, .payload = payload,
                        .payload_len = payload ? strlen(payload) : 0};
    struct vd_wbatch b = {.ops = &op, .n = 1};
    int r = vd_store_write(s, &b);
    if (applied)
        *applied = op.applied;
    if (seq)
        *seq = op.seq;
    if (r == 0)
        assert_int_equal(b.err.code, 0);
    else
        assert_int_equal(b.err.code, r);
    return r;
}

/* Applies one encoded record; as put. */
static int apply(struct vd_store *s, const uint8_t *rec, size_t len, bool *applied,
                 uint64_t *seq)
{
    struct vd_wop op = {.kind = VD_WOP_APPLY, .rec = rec, .rec_len = len};
    struct vd_wbatch b = {.ops = &op, .n = 1};
    int r = vd_store_write(s, &b);
    *applied = op.applied;
    *seq = op.seq;
    assert_int_equal(b.err.code, r);
    return r;
}

static int upsert(struct vd_store *s, uint64_t inc, struct vd_pid id, uint64_t version,
                  float base, const char *payload)
{
    float v[4] = {base, base + 1, base + 2, base + 3};
    return put(s, VD_WOP_UPSERT, inc, id, version, 1, v, 4, payload, NULL, NULL);
}

static int get(struct vd_store *s, uint64_t inc, struct vd_pid id, struct vd_point_view *pv,
               struct vd_rtxn **t)
{
    assert_int_equal(vd_store_read_begin(s, t), 0);
    return vd_store_point_get(*t, inc, &id, pv);
}

/* ---- tests --------------------------------------------------------------------------------- */

static void test_crud(void **state)
{
    struct fx *f = *state;
    struct vd_point_view pv;
    struct vd_rtxn *t;
    bool applied;
    uint64_t seq;
    float v[4] = {0.5f, -1.25f, 3e-7f, 1e30f};

    assert_int_equal(put(f->s, VD_WOP_UPSERT, f->inc, num(7), 100, 1, v, 4, "{\"a\":1}", &applied,
                         &seq), 0);
    assert_true(applied);
    assert_int_equal(seq, 1);
    assert_int_equal(vd_store_last_seq(f->s), 1);

    assert_int_equal(get(f->s, f->inc, num(7), &pv, &t), 0);
    assert_false(pv.tombstone);
    assert_int_equal(pv.dim, 4);
    assert_memory_equal(pv.vec, v, sizeof v); /* bit-exact */
    assert_int_equal(pv.version, 100);
    assert_int_equal(pv.node, 1);
    assert_int_equal(pv.seq, 1);
    assert_int_equal(pv.payload_len, 7);
    assert_memory_equal(pv.payload, "{\"a\":1}", 7);
    struct vd_pid missing = num(8);
    struct vd_point_view pv2;
    assert_int_equal(vd_store_point_get(t, f->inc, &missing, &pv2), VD_ENOTFOUND);
    /* The same id in another incarnation is another point. */
    assert_int_equal(vd_store_point_get(t, f->inc + 1, &pv.id, &pv2), VD_ENOTFOUND);
    vd_store_read_end(t);

    /* Upsert without payload drops the old one. */
    assert_int_equal(upsert(f->s, f->inc, num(7), 101, 9, NULL), 0);
    assert_int_equal(get(f->s, f->inc, num(7), &pv, &t), 0);
    assert_null(pv.payload);
    assert_true(pv.vec[0] == 9 && pv.vec[3] == 12);
    vd_store_read_end(t);

    /* A whole record is stored as its very bytes, with the version it carries. */
    float nv[4] = {-0.0f, 1, 2, 3};
    struct vd_rvec rv = {.kind = VD_RVEC_DENSE, .n = 4, .values = nv};
    struct vd_record rec = {.id = num(7), .incarnation = f->inc, .version = {102, 3},
                            .n_vectors = 1, .vectors = &rv, .payload = "{\"b\":2}",
                            .payload_len = 7};
    uint8_t rb[256];
    size_t rl;
    assert_int_equal(vd_record_encode(&rec, rb, sizeof rb, &rl), 0);
    assert_int_equal(apply(f->s, rb, rl, &applied, &seq), 0);
    assert_true(applied);
    assert_int_equal(get(f->s, f->inc, num(7), &pv, &t), 0);
    assert_memory_equal(pv.vec, nv, sizeof nv);
    assert_int_equal(pv.version, 102);
    assert_int_equal(pv.node, 3);
    assert_int_equal(pv.seq, seq);
    assert_memory_equal(pv.payload, "{\"b\":2}", 7);
    assert_int_equal(pv.rec_len, rl);
    assert_memory_equal(pv.rec, rb, rl);
    vd_store_read_end(t);
    /* an older record is skipped; so is the same one again */
    rec.version = (struct vd_version){101, 9};
    assert_int_equal(vd_record_encode(&rec, rb, sizeof rb, &rl), 0);
    assert_int_equal(apply(f->s, rb, rl, &applied, &seq), 0);
    assert_false(applied);
    rec.version = (struct vd_version){102, 3};
    assert_int_equal(vd_record_encode(&rec, rb, sizeof rb, &rl), 0);
    assert_int_equal(apply(f->s, rb, rl, &applied, &seq), 0);
    assert_false(applied);
    /* malformed bytes and a vector of the wrong size fail the batch */
    assert_int_equal(apply(f->s, rb, rl - 1, &applied, &seq), VD_EINVAL);
    rv.n = 3;
    rec.version.hlc = 200;
    assert_int_equal(vd_record_encode(&rec, rb, sizeof rb, &rl), 0);
    assert_int_equal(apply(f->s, rb, rl, &applied, &seq), VD_EINVAL);

    /* Delete leaves a tombstone. */
    assert_int_equal(put(f->s, VD_WOP_DELETE, f->inc, num(7), 103, 1, NULL, 0, NULL, &applied,
                         &seq), 0);
    assert_true(applied);
    assert_int_equal(get(f->s, f->inc, num(7), &pv, &t), 0);
    assert_true(pv.tombstone);
    assert_null(pv.vec);
    assert_null(pv.payload);
    assert_int_equal(pv.version, 103);
    vd_store_read_end(t);

    /* A tombstone record for an id never seen is applied, not refused. */
    struct vd_record tr = {.id = num(99), .incarnation = f->inc, .version = {104, 1},
                           .tombstone = true};
    assert_int_equal(vd_record_encode(&tr, rb, sizeof rb, &rl), 0);
    assert_int_equal(apply(f->s, rb, rl, &applied, &seq), 0);
    assert_true(applied);

    /* Wrong dimension and unknown incarnation are refused with a message. */
    struct vd_wop op = {.kind = VD_WOP_UPSERT, .incarnation = f->inc, .id = num(1),
                        .version = 1, .vec = v, .dim = 3};
    struct vd_wbatch b = {.ops = &op, .n = 1};
    assert_int_equal(vd_store_write(f->s, &b), VD_EINVAL);
    assert_non_null(strstr(b.err.msg, "Vector dimension error: expected dim: 4, got"));
    op.dim = 4;
    op.incarnation = f->inc + 12345;
    assert_int_equal(vd_store_write(f->s, &b), VD_ENOTFOUND);
    assert_non_null(strstr(b.err.msg, "does not exist"));
}

static void test_lww(void **state)
{
    struct fx *f = *state;
    struct vd_point_view pv;
    struct vd_rtxn *t;
    bool applied;
    uint64_t seq;
    float v[4] = {1, 2, 3, 4};
    uint64_t last;

    assert_int_equal(put(f->s, VD_WOP_UPSERT, f->inc, num(1), 50, 5, v, 4, NULL, &applied, &seq), 0);
    assert_true(applied);
    last = vd_store_last_seq(f->s);
    /* Older version: skipped, no change counter. */
    assert_int_equal(put(f->s, VD_WOP_UPSERT, f->inc, num(1), 49, 9, v, 4, NULL, &applied, &seq), 0);
    assert_false(applied);
    assert_int_equal(seq, 0);
    /* Same version: the node id breaks the tie; the very same write is idempotent. */
    assert_int_equal(put(f->s, VD_WOP_UPSERT, f->inc, num(1), 50, 4, v, 4, NULL, &applied, &seq), 0);
    assert_false(applied);
    assert_int_equal(put(f->s, VD_WOP_UPSERT, f->inc, num(1), 50, 5, v, 4, NULL, &applied, &seq), 0);
    assert_false(applied);
    assert_int_equal(vd_store_last_seq(f->s), last);
    assert_int_equal(put(f->s, VD_WOP_UPSERT, f->inc, num(1), 50, 6, v, 4, "{}", &applied, &seq), 0);
    assert_true(applied);
    assert_int_equal(seq, last + 1);

    /* An older delete does not remove a newer point. */
    assert_int_equal(put(f->s, VD_WOP_DELETE, f->inc, num(1), 40, 9, NULL, 0, NULL, &applied, &seq), 0);
    assert_false(applied);
    assert_int_equal(get(f->s, f->inc, num(1), &pv, &t), 0);
    assert_false(pv.tombstone);
    assert_int_equal(pv.node, 6);
    vd_store_read_end(t);

    /* A delete of a never-seen id still leaves a tombstone, so a late older upsert cannot
     * resurrect it; a newer one can. */
    assert_int_equal(put(f->s, VD_WOP_DELETE, f->inc, num(2), 60, 1, NULL, 0, NULL, &applied, &seq), 0);
    assert_true(applied);
    assert_int_equal(put(f->s, VD_WOP_UPSERT, f->inc, num(2), 59, 1, v, 4, NULL, &applied, &seq), 0);
    assert_false(applied);
    assert_int_equal(get(f->s, f->inc, num(2), &pv, &t), 0);
    assert_true(pv.tombstone);
    vd_store_read_end(t);
    assert_int_equal(put(f->s, VD_WOP_UPSERT, f->inc, num(2), 61, 1, v, 4, NULL, &applied, &seq), 0);
    assert_true(applied);
    assert_int_equal(get(f->s, f->inc, num(2), &pv, &t), 0);
    assert_false(pv.tombstone);
    vd_store_read_end(t);
}

/* One conditional upsert of id (the write of a read-modify-write that read version `expect`),
 * batched with a plain upsert of id 9 that must commit whatever the condition gives. */
static int put_if(struct fx *f, struct vd_pid id, struct vd_version expect, uint64_t version,
                  bool *applied, bool *conflict)
{
    static uint64_t other = 1000; /* id 9: a newer version each call */
    float v[4] = {7, 8, 9, 10};
    struct vd_wop ops[2] = {
        {.kind = VD_WOP_UPSERT, .incarnation = f->inc, .id = id, .version = version, .node = 1,
         .vec = v, .dim = 4, .payload = "{\"e\":1}", .payload_len = 7, .if_version = true,
         .expect = expect},
        {.kind = VD_WOP_UPSERT, .incarnation = f->inc, .id = num(9), .version = ++other,
         .node = 1, .vec = v, .dim = 4},
    };
    struct vd_wbatch b = {.ops = ops, .n = 2};
    int r = vd_store_write(f->s, &b);
    *applied = ops[0].applied;
    *conflict = ops[0].conflict;
    assert_true(ops[1].applied || r != 0);
    assert_false(ops[1].conflict);
    return r;
}

/* A conditional write applies only over the very version it names: not over a newer one, a
 * tombstone or an absent id, and a refused one does not fail its batch. */
static void test_if_version(void **state)
{
    struct fx *f = *state;
    struct vd_point_view pv;
    struct vd_rtxn *t;
    bool applied, conflict;
    float v[4] = {1, 2, 3, 4};
    assert_int_equal(put(f->s, VD_WOP_UPSERT, f->inc, num(1), 50, 5, v, 4, NULL, NULL, NULL), 0);
    /* read at (50, 5), then someone else writes (60, 5): the edit must not land */
    assert_int_equal(put(f->s, VD_WOP_UPSERT, f->inc, num(1), 60, 5, v, 4, "{\"o\":1}", NULL,
                         NULL), 0);
    assert_int_equal(put_if(f, num(1), (struct vd_version){50, 5}, 70, &applied, &conflict), 0);
    assert_true(!applied && conflict);
    assert_int_equal(get(f->s, f->inc, num(1), &pv, &t), 0);
    assert_true(pv.version == 60 && pv.payload_len == 7 && !memcmp(pv.payload, "{\"o\":1}", 7));
    vd_store_read_end(t);
    /* over the version it read: applied */
    assert_int_equal(put_if(f, num(1), (struct vd_version){60, 5}, 70, &applied, &conflict), 0);
    assert_true(applied && !conflict);
    assert_int_equal(get(f->s, f->inc, num(1), &pv, &t), 0);
    assert_true(pv.version == 70 && !memcmp(pv.payload, "{\"e\":1}", 7));
    vd_store_read_end(t);
    /* not newer than what it names: refused as a conflict, not silently dropped */
    assert_int_equal(put_if(f, num(1), (struct vd_version){70, 1}, 70, &applied, &conflict), 0);
    assert_true(!applied && conflict);
    /* deleted after the read: the tombstone stays */
    assert_int_equal(put(f->s, VD_WOP_DELETE, f->inc, num(1), 80, 5, NULL, 0, NULL, NULL, NULL), 0);
    assert_int_equal(put_if(f, num(1), (struct vd_version){70, 1}, 90, &applied, &conflict), 0);
    assert_true(!applied && conflict);
    assert_int_equal(get(f->s, f->inc, num(1), &pv, &t), 0);
    assert_true(pv.tombstone && pv.version == 80);
    vd_store_read_end(t);
    /* never written (or purged): nothing is created */
    assert_int_equal(put_if(f, num(2), (struct vd_version){70, 1}, 90, &applied, &conflict), 0);
    assert_true(!applied && conflict);
    assert_int_equal(get(f->s, f->inc, num(2), &pv, &t), VD_ENOTFOUND);
    vd_store_read_end(t);
}

struct collect {
    struct vd_pid ids[64];
    bool tomb[64];
    size_t n;
    size_t stop_after;
};

static int collect_fn(const struct vd_point_view *p, void *ctx)
{
    struct collect *c = ctx;
    c->ids[c->n] = p->id;
    c->tomb[c->n] = p->tombstone;
    if (!p->tombstone) {
        /* Every vector is readable as floats (alignment) and matches what was written. */
        assert_int_equal(p->dim, 4);
        assert_true(p->vec[1] == p->vec[0] + 1);
    }
    c->n++;
    return c->stop_after && c->n == c->stop_after ? 77 : 0;
}

static void test_scan(void **state)
{
    struct fx *f = *state;
    uint64_t inc2;
    assert_int_equal(create_coll(f->s, "other", 4, &inc2), 0);
    assert_int_equal(upsert(f->s, f->inc, uuid(0x01), 1, 1, NULL), 0);
    assert_int_equal(upsert(f->s, f->inc, num(UINT64_MAX), 1, 2, "{\"x\":1}"), 0);
    assert_int_equal(upsert(f->s, f->inc, num(5), 1, 3, NULL), 0);
    assert_int_equal(upsert(f->s, f->inc, num(1), 1, 4, NULL), 0);
    assert_int_equal(upsert(f->s, f->inc, num(3), 1, 5, NULL), 0);
    assert_int_equal(put(f->s, VD_WOP_DELETE, f->inc, num(3), 2, 1, NULL, 0, NULL, NULL, NULL), 0);
    assert_int_equal(upsert(f->s, inc2, num(2), 1, 6, NULL), 0);

    struct vd_rtxn *t;
    assert_int_equal(vd_store_read_begin(f->s, &t), 0);
    struct collect c = {0};
    assert_int_equal(vd_store_scan(t, f->inc, NULL, false, collect_fn, &c), 0);
    assert_int_equal(c.n, 4); /* integers in order, then the UUID; tombstone hidden */
    assert_int_equal(c.ids[0].u.num, 1);
    assert_int_equal(c.ids[1].u.num, 5);
    assert_true(c.ids[2].u.num == UINT64_MAX);
    assert_int_equal(c.ids[3].type, VD_PID_UUID);

    memset(&c, 0, sizeof c);
    assert_int_equal(vd_store_scan(t, f->inc, NULL, true, collect_fn, &c), 0);
    assert_int_equal(c.n, 5);
    assert_int_equal(c.ids[1].u.num, 3);
    assert_true(c.tomb[1]);

    memset(&c, 0, sizeof c);
    struct vd_pid from = num(4); /* inclusive lower bound, need not exist */
    assert_int_equal(vd_store_scan(t, f->inc, &from, false, collect_fn, &c), 0);
    assert_int_equal(c.n, 3);
    assert_int_equal(c.ids[0].u.num, 5);

    memset(&c, 0, sizeof c);
    from = num(5);
    c.stop_after = 2;
    assert_int_equal(vd_store_scan(t, f->inc, &from, false, collect_fn, &c), 77);
    assert_int_equal(c.n, 2);
    assert_true(c.ids[1].u.num == UINT64_MAX);

    memset(&c, 0, sizeof c);
    from = uuid(0x01);
    assert_int_equal(vd_store_scan(t, f->inc, &from, false, collect_fn, &c), 0);
    assert_int_equal(c.n, 1);

    memset(&c, 0, sizeof c);
    assert_int_equal(vd_store_scan(t, inc2, NULL, true, collect_fn, &c), 0);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.ids[0].u.num, 2);
    vd_store_read_end(t);
}

static int count_fn(const struct vd_point_view *p, void *ctx)
{
    (*(size_t *)ctx)++;
    return 0;
}

static size_t count_points(struct vd_store *s, uint64_t inc, bool tomb)
{
    struct vd_rtxn *t;
    size_t n = 0;
    assert_int_equal(vd_store_read_begin(s, &t), 0);
    assert_int_equal(vd_store_scan(t, inc, NULL, tomb, count_fn, &n), 0);
    vd_store_read_end(t);
    return n;
}

struct names {
    char name[8][256];
    uint64_t inc[8];
    size_t n;
};

static int names_fn(const struct vd_coll_schema *c, void *ctx)
{
    struct names *n = ctx;
    snprintf(n->name[n->n], 256, "%s", c->name);
    n->inc[n->n++] = c->incarnation;
    return 0;
}

/* The quantization config is stored with the schema (format 2 only when set) and changed by
 * COLL_UPDATE, which refuses any other change and unknown collections or incarnations; the
 * config survives a reopen. */
static void test_coll_update_quant(void **state)
{
    struct fx *f = *state;
    struct vd_rtxn *t;
    struct vd_coll_schema sc, want;
    assert_int_equal(vd_store_read_begin(f->s, &t), 0);
    assert_int_equal(vd_store_coll_get(t, "c", &sc), 0);
    vd_store_read_end(t);
    assert_false(sc.quant_enabled);
    want = sc;
    want.quant_enabled = true;
    want.quant_quantile = 0.9f;
    want.quant_always_ram = 1;
    struct vd_wop op = {.kind = VD_WOP_COLL_UPDATE, .schema = &want};
    struct vd_wbatch b = {.ops = &op, .n = 1};
    assert_int_equal(vd_store_write(f->s, &b), 0);
    struct vd_coll_schema bad = want;
    bad.dim = 8;
    op.schema = &bad;
    assert_int_equal(vd_store_write(f->s, &b), VD_EINVAL);
    bad = want;
    bad.incarnation++;
    assert_int_equal(vd_store_write(f->s, &b), VD_ENOTFOUND);
    bad = want;
    snprintf(bad.name, sizeof bad.name, "nope");
    assert_int_equal(vd_store_write(f->s, &b), VD_ENOTFOUND);
    bad = want;
    bad.quant_quantile = 0.2f;
    assert_int_equal(vd_store_write(f->s, &b), VD_ERANGE);
    vd_store_close(f->s);
    f->s = open_store(f->dir, true, 0);
    assert_int_equal(vd_store_read_begin(f->s, &t), 0);
    assert_int_equal(vd_store_coll_get(t, "c", &sc), 0);
    vd_store_read_end(t);
    assert_memory_equal(&sc, &want, sizeof sc);
    /* and back to none: format 1 again */
    want.quant_enabled = false;
    want.quant_quantile = 0.0f;
    want.quant_always_ram = 0;
    op.schema = &want;
    assert_int_equal(vd_store_write(f->s, &b), 0);
    assert_int_equal(vd_store_read_begin(f->s, &t), 0);
    assert_int_equal(vd_store_coll_get(t, "c", &sc), 0);
    vd_store_read_end(t);
    assert_memory_equal(&sc, &want, sizeof sc);
}

static void test_collections(void **state)
{
    struct fx *f = *state;
    uint64_t inc_b, inc_b2;
    assert_int_equal(create_coll(f->s, "c", 8, NULL), VD_EEXIST);
    assert_int_equal(create_coll(f->s, "bad name", 8, NULL), VD_ERANGE);
    assert_int_equal(create_coll(f->s, "zero", 0, NULL), VD_ERANGE);
    assert_int_equal(create_coll(f->s, "b", 1536, &inc_b), 0);
    assert_true(inc_b != f->inc);

    struct vd_rtxn *t;
    struct vd_coll_schema sc;
    struct names n = {0};
    assert_int_equal(vd_store_read_begin(f->s, &t), 0);
    assert_int_equal(vd_store_coll_list(t, names_fn, &n), 0);
    assert_int_equal(n.n, 2);
    assert_string_equal(n.name[0], "b");
    assert_string_equal(n.name[1], "c");
    assert_int_equal(vd_store_coll_get(t, "b", &sc), 0);
    assert_int_equal(sc.dim, 1536);
    assert_int_equal(sc.metric, VD_METRIC_DOT);
    assert_int_equal(sc.hnsw_m, 16);
    assert_int_equal(sc.hnsw_ef_construct, 100);
    assert_int_equal(sc.incarnation, inc_b);
    assert_int_equal(vd_store_coll_get(t, "nope", &sc), VD_ENOTFOUND);
    vd_store_read_end(t);

    /* Fill "b" with more points than one purge chunk holds. */
    size_t npts = small_scale() ? 700 : 1500;
    float *v = calloc(1536, sizeof(float));
    struct vd_wop *ops = calloc(npts, sizeof *ops);
    for (size_t i = 0; i < npts; i++) {
        ops[i] = (struct vd_wop){.kind = VD_WOP_UPSERT, .incarnation = inc_b, .id = num(i),
                                 .version = 1, .vec = v, .dim = 1536, .payload = "{}",
                                 .payload_len = 2};
    }
    struct vd_wbatch b = {.ops = ops, .n = npts};
    assert_int_equal(vd_store_write(f->s, &b), 0);
    assert_int_equal(count_points(f->s, inc_b, true), npts);

    assert_int_equal(drop_coll(f->s, "b"), 0);
    assert_int_equal(drop_coll(f->s, "b"), VD_ENOTFOUND);
    /* Writes to the dead incarnation are refused. */
    assert_int_equal(upsert(f->s, inc_b, num(1), 5, 0, NULL), VD_ENOTFOUND);
    assert_int_equal(create_coll(f->s, "b", 4, &inc_b2), 0);
    assert_true(inc_b2 != inc_b);
    assert_int_equal(count_points(f->s, inc_b2, true), 0); /* recreated empty */
    assert_int_equal(upsert(f->s, inc_b2, num(1), 1, 0, NULL), 0);

    assert_int_equal(vd_store_purge_wait(f->s, 30000), 0);
    struct vd_store_counters ctr;
    vd_store_counters(f->s, &ctr);
    assert_int_equal(ctr.purges_pending, 0);
    assert_int_equal(ctr.purged_points, npts);
    assert_int_equal(count_points(f->s, inc_b, true), 0);
    assert_int_equal(count_points(f->s, inc_b2, true), 1);
    assert_int_equal(count_points(f->s, f->inc, true), 0);

    /* A caller-chosen incarnation already used is refused. */
    struct vd_coll_schema c = {.dim = 4, .metric = VD_METRIC_COSINE, .incarnation = inc_b2};
    snprintf(c.name, sizeof c.name, "dup");
    struct vd_wop op = {.kind = VD_WOP_COLL_CREATE, .schema = &c};
    struct vd_wbatch b1 = {.ops = &op, .n = 1};
    assert_int_equal(vd_store_write(f->s, &b1), VD_EEXIST);
    c.incarnation = 424242;
    assert_int_equal(vd_store_write(f->s, &b1), 0);
    assert_int_equal(c.incarnation, 424242);
    free(ops);
    free(v);
}

struct changes {
    uint64_t seq[64], inc[64];
    struct vd_pid id[64];
    size_t n;
};

static int changes_fn(uint64_t inc, const struct vd_pid *id, uint64_t seq, void *ctx)
{
    struct changes *c = ctx;
    c->inc[c->n] = inc;
    c->id[c->n] = *id;
    c->seq[c->n++] = seq;
    return 0;
}

static void test_changes(void **state)
{
    struct fx *f = *state;
    assert_int_equal(upsert(f->s, f->inc, num(10), 5, 0, NULL), 0);           /* seq 1 */
    assert_int_equal(upsert(f->s, f->inc, num(11), 5, 0, NULL), 0);           /* seq 2 */
    assert_int_equal(upsert(f->s, f->inc, num(10), 4, 0, NULL), 0);           /* skipped */
    assert_int_equal(put(f->s, VD_WOP_DELETE, f->inc, num(10), 6, 1, NULL, 0, NULL, NULL, NULL),
                     0);                                                       /* seq 3 */
    assert_int_equal(upsert(f->s, f->inc, uuid(9), 5, 0, NULL), 0);           /* seq 4 */
    struct vd_rtxn *t;
    struct changes c = {0};
    assert_int_equal(vd_store_read_begin(f->s, &t), 0);
    assert_int_equal(vd_store_changes_since(t, 0, changes_fn, &c), 0);
    /* one entry per point, its latest change: point 10's seq 1 went with its delete (seq 3) */
    assert_int_equal(c.n, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(c.seq[i], i + 2);
        assert_int_equal(c.inc[i], f->inc);
    }
    assert_int_equal(c.id[0].u.num, 11);
    assert_int_equal(c.id[1].u.num, 10);
    assert_int_equal(c.id[2].type, VD_PID_UUID);
    memset(&c, 0, sizeof c);
    assert_int_equal(vd_store_changes_since(t, 2, changes_fn, &c), 0);
    assert_int_equal(c.n, 2);
    assert_int_equal(c.seq[0], 3);
    memset(&c, 0, sizeof c);
    assert_int_equal(vd_store_changes_since(t, 4, changes_fn, &c), 0);
    assert_int_equal(c.n, 0);
    vd_store_read_end(t);
    assert_int_equal(vd_store_last_seq(f->s), 4);

    /* Trimming below 3 happens in the background; poll until it shows, with a deadline. */
    assert_int_equal(vd_store_changes_trim(f->s, 2), 0);
    /* a point whose entry was trimmed gets a new one when it changes */
    assert_int_equal(upsert(f->s, f->inc, num(11), 6, 0, NULL), 0); /* seq 5 */
    uint64_t deadline = vd_mono_ns() + 10000000000ull;
    do {
        memset(&c, 0, sizeof c);
        assert_int_equal(vd_store_read_begin(f->s, &t), 0);
        assert_int_equal(vd_store_changes_since(t, 0, changes_fn, &c), 0);
        vd_store_read_end(t);
        if (c.n == 2)
            break;
        sched_yield();
    } while (vd_mono_ns() < deadline);
    assert_int_equal(c.n, 3);
    assert_int_equal(c.seq[0], 3);
    assert_int_equal(c.seq[1], 4);
    assert_int_equal(c.seq[2], 5);
    assert_int_equal(c.id[2].u.num, 11);
    /* The counter itself is unaffected. */
    assert_int_equal(vd_store_last_seq(f->s), 5);
    assert_int_equal(upsert(f->s, f->inc, num(12), 5, 0, NULL), 0);
    memset(&c, 0, sizeof c);
    assert_int_equal(vd_store_read_begin(f->s, &t), 0);
    assert_int_equal(vd_store_changes_since(t, 0, changes_fn, &c), 0);
    vd_store_read_end(t);
    assert_int_equal(c.n, 4);
    assert_int_equal(c.seq[3], 6);
}

/* Pages of the data file in use: its high-water mark less the pages on the free list. */
static uint64_t live_pages(struct vd_store *s, uint64_t *high)
{
    struct vd_store_space sp;
    assert_int_equal(vd_store_stats(s, &sp), 0);
    assert_true(sp.free_bytes <= sp.used_bytes);
    *high = sp.used_bytes / sp.page_size;
    return (sp.used_bytes - sp.free_bytes) / sp.page_size;
}

/* Overwrites, deletes and payload edits over a fixed set of ids, with a read transaction held
 * across some rounds (as a graph save, scroll or export holds one) and no change-log trim (the
 * graph is not saved meanwhile): once warm, the data file stops growing, counted in LMDB pages.
 * The change log used to keep every write since the last trim, so the file grew with the
 * number of writes rather than with the data. */
#define CHURN_IDS 400
#define CHURN_BATCH 100
static void test_churn_bounded(void **state)
{
    struct fx *f = *state;
    const int warm = 60, rounds = small_scale() ? 150 : 240, pin_every = 15, pin_len = 5;
    struct vd_wop ops[CHURN_BATCH];
    float vec[CHURN_BATCH][4];
    char pay[CHURN_BATCH][64];
    struct vd_rtxn *pin = NULL;
    uint64_t warm_high = 0, warm_live = 0, high = 0, live = 0, max_live = 0;
    for (int r = 0; r < rounds; r++) {
        if (r % pin_every == 0) /* a long read from here for pin_len rounds */
            assert_int_equal(vd_store_read_begin(f->s, &pin), 0);
        if (pin && r % pin_every == pin_len) {
            vd_store_read_end(pin);
            pin = NULL;
        }
        for (int lo = 0; lo < CHURN_IDS; lo += CHURN_BATCH) {
            for (int i = 0; i < CHURN_BATCH; i++) {
                int id = lo + i;
                /* one id in seven is a tombstone every other round; payloads vary in length */
                bool del = id % 7 == r % 2;
                for (int d = 0; d < 4; d++)
                    vec[i][d] = (float)(r * 31 + id * 7 + d);
                snprintf(pay[i], sizeof pay[i], "{\"r\":%04d,\"t\":\"%.*s\"}", r, (r + id) % 40,
                         "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
                ops[i] = (struct vd_wop){.kind = del ? VD_WOP_DELETE : VD_WOP_UPSERT,
                                         .incarnation = f->inc, .id = num((uint64_t)id),
                                         .version = (uint64_t)r + 1, .node = 1,
                                         .vec = del ? NULL : vec[i], .dim = del ? 0 : 4,
                                         .payload = del ? NULL : pay[i],
                                         .payload_len = del ? 0 : strlen(pay[i])};
            }
            struct vd_wbatch b = {.ops = ops, .n = CHURN_BATCH};
            assert_int_equal(vd_store_write(f->s, &b), 0);
        }
        live = live_pages(f->s, &high);
        if (live > max_live)
            max_live = live;
        if (r == warm - 1) {
            warm_high = high;
            warm_live = live;
        }
    }
    if (pin)
        vd_store_read_end(pin);
    struct vd_rtxn *t;
    uint64_t entries = 0, first = 0;
    assert_int_equal(vd_store_read_begin(f->s, &t), 0);
    assert_int_equal(vd_store_changes_stat(t, &entries, &first), 0);
    vd_store_read_end(t);
    print_message("churn: %d writes over %d ids; pages after warm-up %llu (%llu live), at the "
                  "end %llu (%llu live, most %llu); change log %llu entries\n",
                  rounds * CHURN_IDS, CHURN_IDS, (unsigned long long)warm_high,
                  (unsigned long long)warm_live, (unsigned long long)high,
                  (unsigned long long)live, (unsigned long long)max_live,
                  (unsigned long long)entries);
    /* Room for where page splits fall and for how many pages each long read keeps from reuse
     * (it depends on what was freed just before it began); the log of every write grew the
     * file several times over. */
    assert_true(high <= warm_high + warm_high / 10 + 8);
    assert_true(max_live <= warm_live + warm_live / 10 + 4);
    assert_true(entries <= CHURN_IDS);
}

/* A failing batch does not fail the others committed in the same group, and its partial work
 * is not visible. */
struct done_rec {
    int status;
    int calls;
};

static void done_fn(struct vd_wbatch *b, int status, void *ctx)
{
    struct done_rec *d = ctx;
    d->status = status;
    d->calls++;
}

static void test_batch_atomic(void **state)
{
    struct fx *f = *state;
    float v[4] = {1, 2, 3, 4};
    struct vd_wop good1[2] = {
        {.kind = VD_WOP_UPSERT, .incarnation = f->inc, .id = num(1), .version = 1, .vec = v, .dim = 4},
        {.kind = VD_WOP_UPSERT, .incarnation = f->inc, .id = num(2), .version = 1, .vec = v, .dim = 4}};
    struct vd_wop bad[2] = {
        {.kind = VD_WOP_UPSERT, .incarnation = f->inc, .id = num(3), .version = 1, .vec = v, .dim = 4},
        {.kind = VD_WOP_UPSERT, .incarnation = f->inc, .id = num(4), .version = 1, .vec = v, .dim = 2}};
    struct vd_wop good2 = {.kind = VD_WOP_UPSERT, .incarnation = f->inc, .id = num(5),
                           .version = 1, .vec = v, .dim = 4};
    struct done_rec d1 = {0}, d2 = {0}, d3 = {0};
    struct vd_wbatch b1 = {.ops = good1, .n = 2, .done = done_fn, .ctx = &d1};
    struct vd_wbatch b2 = {.ops = bad, .n = 2, .done = done_fn, .ctx = &d2};
    struct vd_wbatch b3 = {.ops = &good2, .n = 1, .done = done_fn, .ctx = &d3};
    assert_int_equal(vd_store_submit(f->s, &b1), 0);
    assert_int_equal(vd_store_submit(f->s, &b2), 0);
    assert_int_equal(vd_store_write(f->s, &b3), 0); /* the queue is FIFO: b1, b2 are done too */
    assert_int_equal(d1.calls, 1);
    assert_int_equal(d1.status, 0);
    assert_int_equal(d2.calls, 1);
    assert_int_equal(d2.status, VD_EINVAL);
    assert_non_null(strstr(b2.err.msg, "operation 1"));
    assert_false(bad[0].applied);
    assert_int_equal(bad[0].seq, 0);
    assert_int_equal(d3.calls, 1);
    assert_int_equal(d3.status, 0);
    assert_true(good1[0].applied && good1[1].applied && good2.applied);
    /* Sequence numbers stay dense: the failed batch's counters were given back. */
    assert_int_equal(good1[0].seq + 1, good1[1].seq);
    assert_int_equal(good1[1].seq + 1, good2.seq);
    struct vd_point_view pv;
    struct vd_rtxn *t;
    assert_int_equal(get(f->s, f->inc, num(3), &pv, &t), VD_ENOTFOUND);
    vd_store_read_end(t);
    assert_int_equal(count_points(f->s, f->inc, true), 3);
}

static void test_restart(void **state)
{
    struct fx *f = *state;
    uint64_t node = vd_store_node_id(f->s);
    assert_true(node != 0);
    assert_int_equal(upsert(f->s, f->inc, num(1), 7, 1, "{\"k\":\"v\"}"), 0);
    assert_int_equal(upsert(f->s, f->inc, num(2), 7, 2, NULL), 0);
    assert_int_equal(put(f->s, VD_WOP_DELETE, f->inc, num(2), 8, 1, NULL, 0, NULL, NULL, NULL), 0);
    /* A deleted collection with many points whose purge has not finished at close. */
    uint64_t inc_d;
    assert_int_equal(create_coll(f->s, "d", 4, &inc_d), 0);
    size_t npts = 3000;
    float v[4] = {0};
    struct vd_wop *ops = calloc(npts, sizeof *ops);
    for (size_t i = 0; i < npts; i++)
        ops[i] = (struct vd_wop){.kind = VD_WOP_UPSERT, .incarnation = inc_d, .id = num(i),
                                 .version = 1, .vec = v, .dim = 4};
    struct vd_wbatch b = {.ops = ops, .n = npts};
    assert_int_equal(vd_store_write(f->s, &b), 0);
    free(ops);
    assert_int_equal(drop_coll(f->s, "d"), 0);
    uint64_t seq = vd_store_last_seq(f->s);
    vd_store_close(f->s);

    f->s = open_store(f->dir, true, 0);
    assert_int_equal(vd_store_node_id(f->s), node);
    assert_int_equal(vd_store_last_seq(f->s), seq);
    struct vd_point_view pv;
    struct vd_rtxn *t;
    assert_int_equal(get(f->s, f->inc, num(1), &pv, &t), 0);
    assert_int_equal(pv.version, 7);
    assert_true(pv.vec[0] == 1);
    assert_memory_equal(pv.payload, "{\"k\":\"v\"}", pv.payload_len);
    struct vd_pid two = num(2);
    assert_int_equal(vd_store_point_get(t, f->inc, &two, &pv), 0);
    assert_true(pv.tombstone);
    struct vd_coll_schema sc;
    assert_int_equal(vd_store_coll_get(t, "c", &sc), 0);
    assert_int_equal(sc.incarnation, f->inc);
    assert_int_equal(vd_store_coll_get(t, "d", &sc), VD_ENOTFOUND);
    vd_store_read_end(t);
    /* The purge resumes after restart and the counter keeps counting up. */
    assert_int_equal(vd_store_purge_wait(f->s, 30000), 0);
    assert_int_equal(count_points(f->s, inc_d, true), 0);
    bool applied;
    uint64_t s2;
    assert_int_equal(put(f->s, VD_WOP_UPSERT, f->inc, num(3), 1, 1, v, 4, NULL, &applied, &s2), 0);
    assert_int_equal(s2, seq + 1);
}

static void test_lock(void **state)
{
    struct fx *f = *state;
    struct vd_store_opts o = {.dir = f->dir, .no_sync = true};
    struct vd_store *s2 = NULL;
    struct vd_err e = {0};
    assert_int_equal(vd_store_open(&o, &s2, &e), VD_EBUSY);
    assert_null(s2);
    assert_non_null(strstr(e.msg, f->dir));
    /* Another process too. */
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct vd_err ce = {0};
        struct vd_store *cs = NULL;
        int r = vd_store_open(&o, &cs, &ce);
        _exit(r == VD_EBUSY && strstr(ce.msg, f->dir) ? 0 : 1);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    /* Released on close. */
    vd_store_close(f->s);
    f->s = open_store(f->dir, true, 0);
    assert_int_equal(vd_store_open(&o, &s2, &e), VD_EBUSY);
}

/* A small initial map forces MDB_MAP_FULL; the writer grows the map and no write fails. */
static void test_map_growth(void **state)
{
    char dir[256];
    make_dir(dir, sizeof dir);
    struct vd_store *s = open_store(dir, true, 1 << 20);
    uint64_t inc;
    assert_int_equal(create_coll(s, "big", 1536, &inc), 0);
    float *v = calloc(1536, sizeof(float));
    struct vd_wop ops[32];
    int nb = small_scale() ? 8 : 20;
    for (int b = 0; b < nb; b++) {
        for (int i = 0; i < 32; i++) {
            v[0] = (float)(b * 32 + i);
            ops[i] = (struct vd_wop){.kind = VD_WOP_UPSERT, .incarnation = inc,
                                     .id = num((uint64_t)(b * 32 + i)), .version = 1, .vec = v,
                                     .dim = 1536};
        }
        struct vd_wbatch wb = {.ops = ops, .n = 32};
        assert_int_equal(vd_store_write(s, &wb), 0);
    }
    struct vd_store_counters ctr;
    vd_store_counters(s, &ctr);
    assert_true(ctr.map_grows > 0);
    assert_true(ctr.map_size > (1 << 20));
    assert_int_equal(count_points(s, inc, false), (size_t)nb * 32);
    struct vd_store_space sp;
    assert_int_equal(vd_store_stats(s, &sp), 0);
    assert_true(sp.file_bytes >= (uint64_t)nb * 32 * 6144);
    assert_true(sp.used_bytes <= sp.file_bytes);
    assert_true(sp.free_bytes < sp.used_bytes);
    vd_store_close(s);
    /* Reopening with the small size keeps the larger map LMDB recorded. */
    s = open_store(dir, true, 1 << 20);
    assert_int_equal(count_points(s, inc, false), (size_t)nb * 32);
    vd_store_close(s);
    rm_rf(dir);
    free(v);
}

static void test_closed(void **state)
{
    char dir[256];
    make_dir(dir, sizeof dir);
    struct vd_store *s = open_store(dir, true, 0);
    uint64_t inc;
    assert_int_equal(create_coll(s, "c", 4, &inc), 0);
    /* Batches queued before close are committed by it. */
    float v[4] = {1, 2, 3, 4};
    enum { N = 16 };
    struct vd_wop ops[N];
    struct vd_wbatch bs[N];
    struct done_rec d[N];
    memset(d, 0, sizeof d);
    for (int i = 0; i < N; i++) {
        ops[i] = (struct vd_wop){.kind = VD_WOP_UPSERT, .incarnation = inc, .id = num(i),
                                 .version = 1, .vec = v, .dim = 4};
        bs[i] = (struct vd_wbatch){.ops = &ops[i], .n = 1, .done = done_fn, .ctx = &d[i]};
        assert_int_equal(vd_store_submit(s, &bs[i]), 0);
    }
    vd_store_close(s);
    for (int i = 0; i < N; i++) {
        assert_int_equal(d[i].calls, 1);
        assert_int_equal(d[i].status, 0);
    }
    s = open_store(dir, true, 0);
    assert_int_equal(count_points(s, inc, false), N);
    vd_store_close(s);
    rm_rf(dir);
}

/* Vectors of views from point_get stay valid (and float-aligned) until read_end, however many
 * are fetched; release_views ends them early. Small vectors sit at 2-byte aligned addresses in
 * LMDB pages, so this exercises the copies. */
static void test_views(void **state)
{
    struct fx *f = *state;
    enum { N = 3000 };
    struct vd_wop *ops = calloc(N, sizeof *ops);
    float *vals = calloc((size_t)N * 4, sizeof(float));
    for (size_t i = 0; i < N; i++) {
        for (int j = 0; j < 4; j++)
            vals[i * 4 + (size_t)j] = (float)i + 0.25f * (float)j;
        ops[i] = (struct vd_wop){.kind = VD_WOP_UPSERT, .incarnation = f->inc,
                                 .id = i % 2 ? uuid((uint8_t)i) : num(i), .version = 1,
                                 .vec = vals + i * 4, .dim = 4};
    }
    struct vd_wbatch b = {.ops = ops, .n = N};
    assert_int_equal(vd_store_write(f->s, &b), 0);
    struct vd_point_view *pv = calloc(N, sizeof *pv);
    for (int round = 0; round < 3; round++) { /* later rounds reuse a pooled transaction */
        struct vd_rtxn *t;
        assert_int_equal(vd_store_read_begin(f->s, &t), 0);
        size_t got = 0;
        for (size_t i = 0; i < N; i += 2) /* even ids are numeric, unique */
            assert_int_equal(vd_store_point_get(t, f->inc, &ops[i].id, &pv[got++]), 0);
        for (size_t k = 0; k < got; k++) {
            assert_int_equal((uintptr_t)pv[k].vec % sizeof(float), 0);
            assert_memory_equal(pv[k].vec, vals + k * 2 * 4, 4 * sizeof(float));
        }
        vd_store_read_release_views(t);
        struct vd_point_view one;
        assert_int_equal(vd_store_point_get(t, f->inc, &ops[2].id, &one), 0);
        assert_true(one.vec[3] == 2.75f);
        vd_store_read_end(t);
    }
    free(pv);
    free(vals);
    free(ops);
}

/* Tombstones older than the grace period are swept in the background over several chunks;
 * younger tombstones and live points of any age stay. */
static void test_tombstone_sweep(void **state)
{
    struct fx *f = *state;
    uint64_t now_ms = vd_wall_ms();
    uint64_t old = VD_HLC_MAKE(now_ms - 120000, 0), recent = VD_HLC_MAKE(now_ms, 0);
    enum { N = 6000 }; /* spans several sweep transactions */
    float v[4] = {1, 2, 3, 4};
    struct vd_wop *ops = calloc(N, sizeof *ops);
    for (size_t i = 0; i < N; i++) {
        bool tomb = i % 2 == 0;
        ops[i] = (struct vd_wop){.kind = tomb ? VD_WOP_DELETE : VD_WOP_UPSERT,
                                 .incarnation = f->inc, .id = num(i), .version = old, .node = 1,
                                 .vec = tomb ? NULL : v, .dim = tomb ? 0 : 4};
    }
    ops[0].version = recent; /* one young tombstone */
    struct vd_wbatch b = {.ops = ops, .n = N};
    assert_int_equal(vd_store_write(f->s, &b), 0);
    assert_int_equal(count_points(f->s, f->inc, true), N);

    vd_store_set_tombstone_grace(f->s, 60000);
    struct vd_store_counters ctr;
    uint64_t deadline = vd_mono_ns() + 20000000000ull;
    do {
        vd_store_counters(f->s, &ctr);
        if (ctr.sweep_passes >= 1)
            break;
        sched_yield();
    } while (vd_mono_ns() < deadline);
    assert_true(ctr.sweep_passes >= 1);
    assert_int_equal(ctr.tombstones_purged, N / 2 - 1);
    assert_int_equal(count_points(f->s, f->inc, true), N / 2 + 1);
    assert_int_equal(count_points(f->s, f->inc, false), N / 2);
    struct vd_rtxn *t;
    struct vd_point_view pv;
    assert_int_equal(get(f->s, f->inc, num(0), &pv, &t), 0);
    assert_true(pv.tombstone);
    struct vd_pid two = num(2);
    assert_int_equal(vd_store_point_get(t, f->inc, &two, &pv), VD_ENOTFOUND);
    vd_store_read_end(t);
    vd_store_set_tombstone_grace(f->s, 0);
    free(ops);
}

/* A data directory written by an incompatible format is refused, not misread. */
static void test_format_mismatch(void **state)
{
    char dir[256], env_dir[300];
    make_dir(dir, sizeof dir);
    vd_store_close(open_store(dir, true, 0));
    snprintf(env_dir, sizeof env_dir, "%s/data", dir);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    assert_int_equal(mdb_env_create(&env), 0);
    mdb_env_set_mapsize(env, 64 << 20); /* not the 1 TiB recorded in the file */
    mdb_env_set_maxdbs(env, 8);
    assert_int_equal(mdb_env_open(env, env_dir, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
    uint8_t v8[8] = {99};
    MDB_val k = {6, "format"}, v = {8, v8};
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);

    struct vd_store_opts o = {.dir = dir, .no_sync = true};
    struct vd_store *s = NULL;
    struct vd_err e = {0};
    assert_int_equal(vd_store_open(&o, &s, &e), VD_ECORRUPT);
    assert_non_null(strstr(e.msg, "format 99"));
    /* The failed open released the directory lock. */
    v8[0] = 1;
    assert_int_equal(mdb_env_create(&env), 0);
    mdb_env_set_mapsize(env, 64 << 20); /* not the 1 TiB recorded in the file */
    mdb_env_set_maxdbs(env, 8);
    assert_int_equal(mdb_env_open(env, env_dir, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    vd_store_close(open_store(dir, true, 0));
    rm_rf(dir);
}

/* A writer process killed with SIGKILL mid-stream: the directory lock and reader slots are
 * recovered on reopen and every write the child saw acknowledged is there. (This alone does not
 * prove durability, the page cache survives the process; test_store_durability does that.) */
static void test_kill9(void **state)
{
    char dir[256];
    make_dir(dir, sizeof dir);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        struct vd_store_opts o = {.dir = dir};
        struct vd_store *s;
        struct vd_err e;
        uint64_t inc;
        if (vd_store_open(&o, &s, &e) || create_coll(s, "k", 4, &inc))
            _exit(2);
        if (write(fds[1], &inc, 8) != 8)
            _exit(3);
        float v[4] = {1, 2, 3, 4};
        for (uint64_t i = 0;; i++) {
            struct vd_wop ops[8];
            for (int j = 0; j < 8; j++)
                ops[j] = (struct vd_wop){.kind = VD_WOP_UPSERT, .incarnation = inc,
                                         .id = num(i * 8 + (uint64_t)j), .version = 1, .vec = v,
                                         .dim = 4};
            struct vd_wbatch b = {.ops = ops, .n = 8};
            if (vd_store_write(s, &b) != 0)
                _exit(4);
            uint64_t acked = i * 8 + 7;
            if (write(fds[1], &acked, 8) != 8)
                _exit(5);
        }
    }
    close(fds[1]);
    uint64_t inc = 0, acked = 0, x;
    assert_int_equal(read(fds[0], &inc, 8), 8);
    for (int n = 0; n < 40 && read(fds[0], &x, 8) == 8; n++)
        acked = x;
    kill(pid, SIGKILL);
    while (read(fds[0], &x, 8) == 8) /* acknowledgements sent before the kill landed */
        acked = x;
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st));
    close(fds[0]);
    assert_true(acked >= 7);

    struct vd_store *s = open_store(dir, true, 0);
    size_t n = count_points(s, inc, false);
    assert_true(n >= acked + 1);
    struct vd_rtxn *t;
    struct vd_point_view pv;
    assert_int_equal(vd_store_read_begin(s, &t), 0);
    for (uint64_t i = 0; i <= acked; i++) {
        struct vd_pid id = num(i);
        assert_int_equal(vd_store_point_get(t, inc, &id, &pv), 0);
    }
    vd_store_read_end(t);
    /* And it takes writes again. */
    assert_int_equal(upsert(s, inc, num(1u << 30), 1, 0, NULL), 0);
    vd_store_close(s);
    rm_rf(dir);
}

/* Figure, not assertion: points/s for batches of 256 × 1536-d points with and without fsync. */
struct inflight {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n, failed;
};

static void inflight_done(struct vd_wbatch *b, int status, void *ctx)
{
    struct inflight *f = ctx;
    pthread_mutex_lock(&f->mu);
    f->n--;
    if (status)
        f->failed++;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

/* `depth` batches in flight at once (as several importing clients would have): with fsync, group
 * commit lets one sync serve several batches. */
static void bench_one(bool no_sync, int depth)
{
    char dir[256];
    make_dir(dir, sizeof dir);
    struct vd_store *s = open_store(dir, no_sync, 0);
    uint64_t inc;
    assert_int_equal(create_coll(s, "bench", 1536, &inc), 0);
    enum { B = 256, D = 1536, MAXD = 8 };
    assert_true(depth >= 1 && depth <= MAXD);
    int nb = small_scale() ? 4 : 40;
    float *vec = malloc((size_t)B * D * sizeof(float));
    struct vd_wop *ops = calloc((size_t)B * MAXD, sizeof *ops);
    struct vd_wbatch wb[MAXD];
    struct inflight fl = {.n = 0};
    pthread_mutex_init(&fl.mu, NULL);
    pthread_cond_init(&fl.cv, NULL);
    uint64_t rnd = 42;
    for (size_t i = 0; i < (size_t)B * D; i++) {
        rnd = rnd * 6364136223846793005ull + 1442695040888963407ull;
        vec[i] = (float)((rnd >> 40) & 0xffff) / 65536.0f - 0.5f;
    }
    const char *payload = "{\"text\":\"a chunk of a document of some length, as stored with "
                          "embeddings\",\"source\":\"doc-1\",\"page\":3}";
    struct vd_store_counters c0, c1;
    vd_store_counters(s, &c0);
    uint64_t t0 = vd_mono_ns();
    for (int b = 0; b < nb; b++) {
        /* Wait for a free slot; slots complete in order, so slot b % depth is free when fewer
         * than depth batches are in flight. */
        pthread_mutex_lock(&fl.mu);
        while (fl.n >= depth)
            pthread_cond_wait(&fl.cv, &fl.mu);
        fl.n++;
        pthread_mutex_unlock(&fl.mu);
        struct vd_wop *o = ops + (size_t)(b % depth) * B;
        for (int i = 0; i < B; i++)
            o[i] = (struct vd_wop){.kind = VD_WOP_UPSERT, .incarnation = inc,
                                   .id = num((uint64_t)b * B + (uint64_t)i), .version = 1,
                                   .vec = vec + (size_t)i * D, .dim = D, .payload = payload,
                                   .payload_len = strlen(payload)};
        wb[b % depth] = (struct vd_wbatch){.ops = o, .n = B, .done = inflight_done, .ctx = &fl};
        assert_int_equal(vd_store_submit(s, &wb[b % depth]), 0);
    }
    pthread_mutex_lock(&fl.mu);
    while (fl.n > 0)
        pthread_cond_wait(&fl.cv, &fl.mu);
    pthread_mutex_unlock(&fl.mu);
    assert_int_equal(fl.failed, 0);
    double secs = (double)(vd_mono_ns() - t0) / 1e9;
    vd_store_counters(s, &c1);
    double pts = (double)nb * B;
    printf("store write: %d batches of %d x %d-d points, %d in flight, %s: %.0f points/s "
           "(%.1f MB/s of vectors, %llu commits)\n",
           nb, B, D, depth, no_sync ? "no fsync" : "fsync per commit", pts / secs,
           pts * D * 4 / secs / 1e6, (unsigned long long)(c1.commits - c0.commits));
    vd_store_close(s);
    rm_rf(dir);
    pthread_cond_destroy(&fl.cv);
    pthread_mutex_destroy(&fl.mu);
    free(ops);
    free(vec);
}

static void test_bench_write(void **state)
{
    bench_one(false, 1);
    bench_one(false, 4);
    bench_one(true, 1);
    bench_one(true, 4);
}


/* ---- hash-ordered table -------------------------------------------------------------------- */

struct hvisit {
    struct vd_pid ids[1200];
    uint64_t hash[1200];
    size_t n;
};

static struct vd_pid uuid16(uint16_t n)
{
    struct vd_pid p = uuid(0xab);
    p.u.uuid[0] = (uint8_t)(n >> 8);
    p.u.uuid[1] = (uint8_t)n;
    return p;
}

static uint64_t place(const struct vd_pid *id)
{
    uint8_t kb[VD_PID_KEY_MAX];
    size_t kl = vd_pid_encode(id, kb);
    return vd_place_hash("c", kb, kl);
}

static int hvisit_fn(const struct vd_point_view *p, void *ctx)
{
    struct hvisit *h = ctx;
    assert_true(h->n < 1200);
    h->ids[h->n] = p->id;
    h->hash[h->n++] = place(&p->id);
    return 0;
}

/* A token range scanned through points_by_hash is exactly the points a full scan finds on that
 * arc, in ring order, for plain, wrapping, whole-ring and edge arcs; deletes and purges keep the
 * table in step. */
static void test_hash_range(void **state)
{
    struct fx *f = *state;
    enum { N = 600 };
    static struct vd_wop ops[N];
    float v[4] = {1, 2, 3, 4};
    for (int i = 0; i < N; i++)
        ops[i] = (struct vd_wop){.kind = i % 7 == 3 ? VD_WOP_DELETE : VD_WOP_UPSERT,
                                 .incarnation = f->inc,
                                 .id = i % 2 ? uuid16((uint16_t)i) : num((uint64_t)i * 977),
                                 .version = 10, .node = 1, .vec = v, .dim = 4};
    struct vd_wbatch b = {.ops = ops, .n = N};
    assert_int_equal(vd_store_write(f->s, &b), 0);
    /* a second write to the same ids adds no second entry */
    for (int i = 0; i < N; i++)
        ops[i].version = 11;
    assert_int_equal(vd_store_write(f->s, &b), 0);

    static struct hvisit all, got;
    struct vd_rtxn *t;
    assert_int_equal(vd_store_read_begin(f->s, &t), 0);
    all.n = 0;
    assert_int_equal(vd_store_scan(t, f->inc, NULL, true, hvisit_fn, &all), 0);
    assert_int_equal(all.n, N);
    uint64_t mid = all.hash[7];
    const uint64_t arcs[][2] = {{0, UINT64_MAX},      {UINT64_MAX, 0},   {mid, mid},
                                {mid, mid + 1},       {mid - 1, mid},    {UINT64_MAX / 3, 0},
                                {UINT64_MAX / 2, 7},  {1ull << 63, 1ull << 62},
                                {12345, UINT64_MAX},  {UINT64_MAX - 1, UINT64_MAX},
                                {0, 0}};
    for (size_t a = 0; a < sizeof arcs / sizeof arcs[0]; a++) {
        uint64_t s0 = arcs[a][0], e0 = arcs[a][1];
        got.n = 0;
        assert_int_equal(vd_store_scan_hash_range(t, f->inc, s0, e0, true, hvisit_fn, &got), 0);
        size_t expect = 0;
        for (size_t i = 0; i < all.n; i++)
            expect += vd_ring_contains(s0, e0, all.hash[i]);
        assert_int_equal(got.n, expect);
        for (size_t i = 0; i < got.n; i++) {
            assert_true(vd_ring_contains(s0, e0, got.hash[i]));
            /* ring order: from start onwards, wrapping once */
            if (i) {
                bool wrapped = got.hash[i] < got.hash[i - 1];
                assert_true(!wrapped || (s0 >= e0 && got.hash[i - 1] > s0 && got.hash[i] <= e0));
            }
        }
    }
    /* without tombstones */
    got.n = 0;
    assert_int_equal(vd_store_scan_hash_range(t, f->inc, 9, 9, false, hvisit_fn, &got), 0);
    size_t live_n = 0;
    for (int i = 0; i < N; i++)
        live_n += i % 7 != 3;
    assert_int_equal(got.n, live_n);
    vd_store_read_end(t);

    /* a deleted collection's entries go with its points */
    assert_int_equal(drop_coll(f->s, "c"), 0);
    assert_int_equal(vd_store_purge_wait(f->s, 30000), 0);
    assert_int_equal(vd_store_read_begin(f->s, &t), 0);
    got.n = 0;
    assert_int_equal(vd_store_scan_hash_range(t, f->inc, 0, 0, true, hvisit_fn, &got), 0);
    assert_int_equal(got.n, 0);
    vd_store_read_end(t);
}

/* One VD_WOP_FORGET of (id, version by node 1); returns status, *applied, *seq. */
static int forget(struct vd_store *s, uint64_t inc, struct vd_pid id, uint64_t version,
                  bool *applied, uint64_t *seq)
{
    return put(s, VD_WOP_FORGET, inc, id, version, 1, NULL, 0, NULL, applied, seq);
}

/* Forgetting a copy drops it outright when it is exactly the version named: no tombstone, no
 * hash entry, and the change log holds one entry for the key, newer than the forgotten write,
 * so a replay finds it absent; another version or an absent id is kept as it is, and the id can
 * be written again later. */
static void test_forget(void **state)
{
    struct fx *f = *state;
    assert_int_equal(upsert(f->s, f->inc, num(1), 5, 0, "{\"a\":1}"), 0);                 /* 1 */
    assert_int_equal(upsert(f->s, f->inc, num(2), 5, 0, NULL), 0);                        /* 2 */
    assert_int_equal(put(f->s, VD_WOP_DELETE, f->inc, num(3), 6, 1, NULL, 0, NULL, NULL, NULL),
                     0);                                                                  /* 3 */
    bool applied = true;
    uint64_t seq = 99;
    /* another version than the stored one: kept */
    assert_int_equal(forget(f->s, f->inc, num(1), 4, &applied, &seq), 0);
    assert_false(applied);
    assert_int_equal(seq, 0);
    assert_int_equal(forget(f->s, f->inc, num(9), 5, &applied, &seq), 0); /* absent */
    assert_false(applied);
    assert_int_equal(forget(f->s, f->inc, num(1), 5, &applied, &seq), 0);
    assert_true(applied);
    assert_int_equal(seq, 4);
    assert_int_equal(forget(f->s, f->inc, num(3), 6, &applied, &seq), 0); /* a tombstone too */
    assert_true(applied);
    assert_int_equal(seq, 5);
    assert_int_equal(vd_store_last_seq(f->s), 5);
    struct vd_rtxn *t;
    struct vd_point_view pv;
    assert_int_equal(get(f->s, f->inc, num(1), &pv, &t), VD_ENOTFOUND);
    assert_int_equal(vd_store_point_get(t, f->inc, &(struct vd_pid){.type = VD_PID_NUM,
                                                                   .u.num = 3}, &pv),
                     VD_ENOTFOUND);
    vd_store_read_end(t);
    assert_int_equal(count_points(f->s, f->inc, true), 1);
    /* the hash-ordered table holds point 2 alone */
    static struct hvisit got;
    got.n = 0;
    assert_int_equal(vd_store_read_begin(f->s, &t), 0);
    assert_int_equal(vd_store_scan_hash_range(t, f->inc, 0, 0, true, hvisit_fn, &got), 0);
    assert_int_equal(got.n, 1);
    assert_int_equal(got.ids[0].u.num, 2);
    /* one entry per key: 2 at seq 2, then the forgotten 1 and 3 at their new counters */
    struct changes c = {0};
    assert_int_equal(vd_store_changes_since(t, 0, changes_fn, &c), 0);
    vd_store_read_end(t);
    assert_int_equal(c.n, 3);
    assert_int_equal(c.id[0].u.num, 2);
    assert_int_equal(c.seq[0], 2);
    assert_int_equal(c.id[1].u.num, 1);
    assert_int_equal(c.seq[1], 4);
    assert_int_equal(c.id[2].u.num, 3);
    assert_int_equal(c.seq[2], 5);
    /* written again, even under an older version than the forgotten one: nothing is left of it
     * to win over the new write */
    assert_int_equal(upsert(f->s, f->inc, num(1), 3, 7, NULL), 0);
    assert_int_equal(get(f->s, f->inc, num(1), &pv, &t), 0);
    assert_int_equal(pv.version, 3);
    vd_store_read_end(t);
    /* a collection that is not live */
    assert_int_equal(drop_coll(f->s, "c"), 0);
    assert_int_equal(forget(f->s, f->inc, num(2), 5, &applied, &seq), VD_ENOTFOUND);
}

/* A restarted node's clock starts above every version it made durable: a write stamped by a
 * clock far ahead (in a child process, so this one's clock never saw it) lifts the next
 * vd_hlc_now() of the process that reopens the directory. */
static void test_hlc_floor(void **state)
{
    char dir[256];
    make_dir(dir, sizeof dir);
    uint64_t ahead = VD_HLC_MAKE(vd_wall_ms() + 3600 * 1000, 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct vd_store_opts o = {.dir = dir};
        struct vd_store *s;
        uint64_t inc;
        if (vd_store_open(&o, &s, NULL) || create_coll(s, "c", 4, &inc))
            _exit(1);
        vd_hlc_observe(ahead);
        float v[4] = {1, 2, 3, 4};
        struct vd_wop op = {.kind = VD_WOP_UPSERT, .incarnation = inc, .id = num(1),
                            .version = vd_hlc_now(), .node = 1, .vec = v, .dim = 4};
        struct vd_wbatch b = {.ops = &op, .n = 1};
        int r = vd_store_write(s, &b);
        vd_store_close(s);
        _exit(r || !op.applied || op.version <= ahead ? 1 : 0);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_true(vd_hlc_now() < ahead); /* this process never saw the fast clock */
    struct vd_store *s = open_store(dir, true, 0);
    uint64_t now = vd_hlc_now();
    assert_true(now > ahead);
    struct vd_rtxn *t;
    struct vd_coll_schema cs;
    assert_int_equal(vd_store_read_begin(s, &t), 0);
    assert_int_equal(vd_store_coll_get(t, "c", &cs), 0);
    struct vd_pid one = num(1);
    struct vd_point_view pv;
    assert_int_equal(vd_store_point_get(t, cs.incarnation, &one, &pv), 0);
    assert_true(now > pv.version);
    vd_store_read_end(t);
    vd_store_close(s);
    rm_rf(dir);
}

/* ---- hints --------------------------------------------------------------------------------- */

/* Encodes the record of point `id` of inc (vector {base..base+3}, version (hlc, 2)) into rb. */
static size_t hint_rec(uint64_t inc, uint64_t id, uint64_t hlc, float base, uint8_t *rb,
                       size_t cap)
{
    float v[4] = {base, base + 1, base + 2, base + 3};
    struct vd_rvec rv = {.kind = VD_RVEC_DENSE, .n = 4, .values = v};
    struct vd_record r = {.id = num(id), .incarnation = inc, .version = {hlc, 2},
                          .n_vectors = 1, .vectors = &rv};
    size_t len;
    assert_int_equal(vd_record_encode(&r, rb, cap, &len), 0);
    return len;
}

/* Stores one hint; returns the status, *over_cap and the new hint's id. */
static int hint_put(struct vd_store *s, uint64_t target, const uint8_t *rec, size_t len,
                    bool *over_cap, uint64_t *id)
{
    struct vd_wop op = {.kind = VD_WOP_HINT_PUT, .target = target, .rec = rec, .rec_len = len};
    struct vd_wbatch b = {.ops = &op, .n = 1};
    int r = vd_store_write(s, &b);
    if (over_cap)
        *over_cap = op.over_cap;
    if (id)
        *id = op.hint_id;
    assert_int_equal(op.applied, r == 0 && !op.over_cap);
    return r;
}

static int hint_del(struct vd_store *s, uint64_t target, struct vd_hint_pos pos, bool *applied)
{
    struct vd_wop op = {.kind = VD_WOP_HINT_DELETE, .target = target,
                        .incarnation = pos.incarnation, .hint_id = pos.id};
    struct vd_wbatch b = {.ops = &op, .n = 1};
    int r = vd_store_write(s, &b);
    *applied = op.applied;
    return r;
}

struct hint_list {
    struct vd_hint_view h[16];
    uint64_t point[16];
    size_t n;
};

static int hint_fn(const struct vd_hint_view *h, void *ctx)
{
    struct hint_list *l = ctx;
    struct vd_rvec vecs[VD_RECORD_MAX_VECTORS];
    struct vd_record r;
    assert_int_equal(vd_record_decode(h->rec, h->rec_len, &r, vecs), 0);
    assert_int_equal(r.incarnation, h->pos.incarnation);
    assert_true(l->n < 16);
    l->point[l->n] = r.id.u.num;
    l->h[l->n++] = *h;
    return 0;
}

static void hints_of(struct vd_store *s, uint64_t target, const struct vd_hint_pos *after,
                     struct hint_list *l)
{
    struct vd_rtxn *t;
    l->n = 0;
    assert_int_equal(vd_store_read_begin(s, &t), 0);
    assert_int_equal(vd_store_hints_scan(t, target, after, hint_fn, l), 0);
    vd_store_read_end(t);
}

struct totals {
    uint64_t target[8], count[8], bytes[8];
    size_t n;
};

static int total_fn(uint64_t target, uint64_t count, uint64_t bytes, void *ctx)
{
    struct totals *t = ctx;
    assert_true(t->n < 8);
    t->target[t->n] = target, t->count[t->n] = count, t->bytes[t->n++] = bytes;
    return 0;
}

static void totals_of(struct vd_store *s, struct totals *out)
{
    struct vd_rtxn *t;
    out->n = 0;
    assert_int_equal(vd_store_read_begin(s, &t), 0);
    assert_int_equal(vd_store_hint_totals(t, total_fn, out), 0);
    vd_store_read_end(t);
}

/*
 * Hints are kept per target in (incarnation, id) order with their exact record bytes, paged
 * from a position, deleted once (a second delete is not an error), counted per target, and kept
 * across a restart; a malformed record or no target is refused and nothing is stored.
 */
static void test_hints(void **state)
{
    struct fx *f = *state;
    uint64_t inc2;
    assert_int_equal(create_coll(f->s, "d", 4, &inc2), 0);
    uint8_t rb[4][256];
    size_t rl[4] = {hint_rec(inc2, 1, 100, 1, rb[0], 256), hint_rec(f->inc, 2, 101, 2, rb[1], 256),
                    hint_rec(f->inc, 3, 102, 3, rb[2], 256), hint_rec(f->inc, 4, 103, 4, rb[3], 256)};
    uint64_t ids[4];
    bool over;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(hint_put(f->s, 7, rb[i], rl[i], &over, &ids[i]), 0);
        assert_false(over);
    }
    assert_int_equal(hint_put(f->s, 9, rb[3], rl[3], &over, &ids[3]), 0);
    assert_true(ids[0] < ids[1] && ids[1] < ids[2] && ids[2] < ids[3]);

    struct hint_list l;
    hints_of(f->s, 7, NULL, &l);
    assert_int_equal(l.n, 3);
    /* collection "c" was created first: its incarnation sorts first */
    assert_true(f->inc < inc2);
    assert_int_equal(l.point[0], 2);
    assert_int_equal(l.point[1], 3);
    assert_int_equal(l.point[2], 1);
    assert_int_equal(l.h[0].rec_len, rl[1]);
    assert_memory_equal(l.h[0].rec, rb[1], rl[1]);
    assert_true(l.h[0].created_ms > 0 && l.h[0].created_ms <= vd_wall_ms());
    struct vd_hint_pos after = l.h[0].pos;
    hints_of(f->s, 7, &after, &l);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.point[0], 3);
    hints_of(f->s, 8, NULL, &l);
    assert_int_equal(l.n, 0);

    struct totals t;
    totals_of(f->s, &t);
    assert_int_equal(t.n, 2);
    assert_int_equal(t.target[0], 7);
    assert_int_equal(t.count[0], 3);
    assert_int_equal(t.bytes[0], 3 * (24 + 8) + rl[0] + rl[1] + rl[2]);
    assert_int_equal(t.target[1], 9);
    assert_int_equal(t.count[1], 1);

    bool applied;
    assert_int_equal(hint_del(f->s, 7, after, &applied), 0);
    assert_true(applied);
    assert_int_equal(hint_del(f->s, 7, after, &applied), 0);
    assert_false(applied);
    totals_of(f->s, &t);
    assert_int_equal(t.count[0], 2);
    assert_int_equal(t.bytes[0], 2 * (24 + 8) + rl[0] + rl[2]);

    /* refused: nothing stored */
    uint8_t bad[8] = {0};
    assert_int_equal(hint_put(f->s, 7, bad, sizeof bad, NULL, NULL), VD_EINVAL);
    assert_int_equal(hint_put(f->s, 0, rb[0], rl[0], NULL, NULL), VD_EINVAL);

    /* kept across a restart, with their totals */
    vd_store_close(f->s);
    f->s = open_store(f->dir, true, 0);
    hints_of(f->s, 7, NULL, &l);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.point[0], 3);
    assert_int_equal(l.point[1], 1);
    totals_of(f->s, &t);
    assert_int_equal(t.n, 2);
    assert_int_equal(t.count[0], 2);

    /* the last hint of a target gone: the target has no totals any more */
    hints_of(f->s, 9, NULL, &l);
    assert_int_equal(hint_del(f->s, 9, l.h[0].pos, &applied), 0);
    assert_true(applied);
    totals_of(f->s, &t);
    assert_int_equal(t.n, 1);
    assert_int_equal(t.target[0], 7);
}

/* Caps: past the per-target cap a hint is not stored (over_cap) while another target still
 * takes hints, until the total cap; deleting hints makes room again. */
static void test_hint_caps(void **state)
{
    (void)state;
    char dir[256];
    make_dir(dir, sizeof dir);
    uint8_t rb[256];
    size_t rl = hint_rec(1, 1, 100, 1, rb, sizeof rb), one = 24 + 8 + rl;
    struct vd_store_opts o = {.dir = dir, .no_sync = true, .hint_target_bytes = 3 * one,
                              .hint_total_bytes = 5 * one};
    struct vd_store *s = NULL;
    struct vd_err e = {0};
    assert_int_equal(vd_store_open(&o, &s, &e), 0);
    bool over;
    uint64_t id;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(hint_put(s, 7, rb, rl, &over, &id), 0);
        assert_false(over);
    }
    assert_int_equal(hint_put(s, 7, rb, rl, &over, &id), 0);
    assert_true(over);
    assert_int_equal(id, 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(hint_put(s, 9, rb, rl, &over, NULL), 0);
        assert_false(over);
    }
    assert_int_equal(hint_put(s, 9, rb, rl, &over, NULL), 0);
    assert_true(over); /* target 9 has room, the total has not */
    struct hint_list l;
    hints_of(s, 7, NULL, &l);
    assert_int_equal(l.n, 3);
    bool applied;
    assert_int_equal(hint_del(s, 7, l.h[0].pos, &applied), 0);
    assert_int_equal(hint_put(s, 9, rb, rl, &over, NULL), 0);
    assert_false(over);
    vd_store_close(s);
    rm_rf(dir);
}

/* Deleting a collection drops its hints, for every target, and no other collection's. */
static void test_hints_purged_with_collection(void **state)
{
    struct fx *f = *state;
    uint64_t inc2;
    assert_int_equal(create_coll(f->s, "d", 4, &inc2), 0);
    uint8_t rb[256], rb2[256];
    size_t rl = hint_rec(inc2, 1, 100, 1, rb, sizeof rb);
    size_t rl2 = hint_rec(f->inc, 2, 100, 1, rb2, sizeof rb2);
    for (uint64_t target = 5; target <= 7; target++)
        for (int i = 0; i < 700; i++) /* more than one purge chunk */
            assert_int_equal(hint_put(f->s, target, rb, rl, NULL, NULL), 0);
    assert_int_equal(hint_put(f->s, 6, rb2, rl2, NULL, NULL), 0);
    assert_int_equal(drop_coll(f->s, "d"), 0);
    assert_int_equal(vd_store_purge_wait(f->s, 30000), 0);
    struct hint_list l;
    for (uint64_t target = 5; target <= 7; target++) {
        hints_of(f->s, target, NULL, &l);
        assert_int_equal(l.n, target == 6 ? 1 : 0);
    }
    assert_int_equal(l.n, 0);
    hints_of(f->s, 6, NULL, &l);
    assert_int_equal(l.point[0], 2);
    struct totals t;
    totals_of(f->s, &t);
    assert_int_equal(t.n, 1);
    assert_int_equal(t.target[0], 6);
    assert_int_equal(t.count[0], 1);
    assert_int_equal(t.bytes[0], 24 + 8 + rl2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_crud, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lww, setup, teardown),
        cmocka_unit_test_setup_teardown(test_if_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scan, setup, teardown),
        cmocka_unit_test_setup_teardown(test_collections, setup, teardown),
        cmocka_unit_test_setup_teardown(test_coll_update_quant, setup, teardown),
        cmocka_unit_test_setup_teardown(test_changes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_churn_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_atomic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_views, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tombstone_sweep, setup, teardown),
        cmocka_unit_test(test_map_growth),
        cmocka_unit_test(test_closed),
        cmocka_unit_test(test_format_mismatch),
        cmocka_unit_test_setup_teardown(test_hash_range, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forget, setup, teardown),
        cmocka_unit_test(test_hlc_floor),
        cmocka_unit_test(test_kill9),
        cmocka_unit_test_setup_teardown(test_hints, setup, teardown),
        cmocka_unit_test(test_hint_caps),
        cmocka_unit_test_setup_teardown(test_hints_purged_with_collection, setup, teardown),
        cmocka_unit_test(test_bench_write),
    };
    vd_log_set_level(VD_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
