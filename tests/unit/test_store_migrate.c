/* Conversion of a data directory written by a vectord of storage format 1 (the fixture
 * tests/data/store_v1, made by tests/data/make_store_v1.py): every point, tombstone, vector bit,
 * payload byte, version and change counter survives, the hash-ordered table covers the live
 * collections, and a conversion cut short resumes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <ftw.h>
#include <libgen.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lmdb.h>

#include "store_int.h"
#include "vectord/record.h"
#include "vectord/store.h"

struct old_point {
    uint64_t inc, hlc, node, seq;
    struct vd_pid id;
    bool tomb;
    uint32_t dim;
    float vec[8];
    char payload[256];
    size_t payload_len;
    bool has_payload;
};

#define MAXP 128
static struct old_point old[MAXP];
static size_t n_old;
static struct {
    uint64_t inc;
    char name[256];
} live[8];
static size_t n_live;

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(p);
}

static void copy_fixture(char *dir, size_t n)
{
    char src[4096], dst[4400], tmpl[] = __FILE__;
    snprintf(dir, n, "%s/vd-migrate-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    assert_non_null(mkdtemp(dir));
    snprintf(src, sizeof src, "%s/../data/store_v1/data.mdb", dirname(tmpl));
    snprintf(dst, sizeof dst, "%s/data", dir);
    assert_int_equal(mkdir(dst, 0700), 0);
    snprintf(dst, sizeof dst, "%s/data/data.mdb", dir);
    FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    if (!in)
        fail_msg("fixture %s is missing", src);
    assert_non_null(out);
    char buf[65536];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, in)) > 0)
        assert_int_equal(fwrite(buf, 1, k, out), k);
    fclose(in);
    assert_int_equal(fclose(out), 0);
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* Reads the format 1 tables with LMDB directly: what the conversion must keep. */
static void read_old(const char *dir)
{
    char env_dir[300];
    snprintf(env_dir, sizeof env_dir, "%s/data", dir);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi meta, points, payloads;
    MDB_cursor *cur;
    MDB_val k, v;
    assert_int_equal(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 16);
    mdb_env_set_mapsize(env, 64 << 20);
    assert_int_equal(mdb_env_open(env, env_dir, MDB_RDONLY, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "meta", 0, &meta), 0);
    assert_int_equal(mdb_dbi_open(txn, "points", 0, &points), 0);
    assert_int_equal(mdb_dbi_open(txn, "payloads", 0, &payloads), 0);
    k = (MDB_val){6, "format"};
    assert_int_equal(mdb_get(txn, meta, &k, &v), 0);
    assert_int_equal(le64(v.mv_data), 1); /* really a format 1 directory */
    n_live = 0;
    assert_int_equal(mdb_cursor_open(txn, meta, &cur), 0);
    for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size == 9 && ((uint8_t *)k.mv_data)[0] == 'i') {
            live[n_live].inc = vd_be64_get((uint8_t *)k.mv_data + 1);
            memcpy(live[n_live].name, (char *)v.mv_data + 4, v.mv_size - 4);
            live[n_live].name[v.mv_size - 4] = 0;
            n_live++;
        }
    }
    mdb_cursor_close(cur);
    n_old = 0;
    assert_int_equal(mdb_cursor_open(txn, points, &cur), 0);
    for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        assert_true(n_old < MAXP);
        struct old_point *o = &old[n_old++];
        const uint8_t *p = v.mv_data;
        o->inc = vd_be64_get(k.mv_data);
        assert_int_equal(vd_pid_decode((uint8_t *)k.mv_data + 8, k.mv_size - 8, &o->id), 0);
        o->hlc = le64(p);
        o->node = le64(p + 8);
        o->seq = le64(p + 16);
        o->tomb = p[24] & 1;
        o->dim = (uint32_t)p[25] | (uint32_t)p[26] << 8;
        assert_true(o->dim <= 8);
        assert_int_equal(v.mv_size, 29 + 4 * o->dim);
        memcpy(o->vec, p + 29, 4 * o->dim);
        MDB_val pv;
        o->has_payload = mdb_get(txn, payloads, &k, &pv) == 0;
        if (o->has_payload) {
            assert_true(pv.mv_size < sizeof o->payload);
            memcpy(o->payload, pv.mv_data, pv.mv_size);
            o->payload_len = pv.mv_size;
        }
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    mdb_env_close(env);
}

static const char *live_name(uint64_t inc)
{
    for (size_t i = 0; i < n_live; i++)
        if (live[i].inc == inc)
            return live[i].name;
    return NULL;
}

struct seen {
    size_t n;
    uint64_t last_hash;
    const char *name;
};

static int hash_fn(const struct vd_point_view *p, void *ctx)
{
    struct seen *s = ctx;
    uint8_t kb[VD_PID_KEY_MAX];
    size_t kl = vd_pid_encode(&p->id, kb);
    uint64_t h = vd_place_hash(s->name, kb, kl);
    assert_true(s->n == 0 || h >= s->last_hash);
    s->last_hash = h;
    s->n++;
    return 0;
}

/* extra: points written after the conversion into the first live collection */
static void check_all(struct vd_store *s, size_t extra)
{
    struct vd_rtxn *t;
    assert_int_equal(vd_store_read_begin(s, &t), 0);
    size_t tombs = 0, payloads = 0;
    uint64_t max_hlc = 0;
    for (size_t i = 0; i < n_old; i++) {
        struct old_point *o = &old[i];
        struct vd_point_view pv;
        if (!live_name(o->inc))
            continue; /* a deleted collection's leftovers are purged */
        assert_int_equal(vd_store_point_get(t, o->inc, &o->id, &pv), 0);
        assert_int_equal(pv.tombstone, o->tomb);
        assert_true(pv.version == o->hlc && pv.node == o->node && pv.seq == o->seq);
        assert_int_equal(pv.dim, o->dim);
        if (o->dim)
            assert_memory_equal(pv.vec, o->vec, 4 * o->dim); /* bit-exact */
        assert_int_equal(pv.payload != NULL, o->has_payload);
        if (o->has_payload) {
            assert_int_equal(pv.payload_len, o->payload_len);
            assert_memory_equal(pv.payload, o->payload, o->payload_len);
            payloads++;
        }
        tombs += o->tomb;
        if (o->hlc > max_hlc)
            max_hlc = o->hlc;
    }
    /* the fixture holds what it is meant to test */
    assert_true(tombs >= 4 && payloads >= 20 && n_live == 2);
    for (size_t i = 0; i < n_live; i++) {
        size_t expect = 0;
        for (size_t j = 0; j < n_old; j++)
            expect += old[j].inc == live[i].inc;
        if (i == 0)
            expect += extra;
        struct seen sn = {.name = live[i].name};
        assert_int_equal(vd_store_scan_hash_range(t, live[i].inc, 5, 5, true, hash_fn, &sn), 0);
        assert_int_equal(sn.n, expect);
    }
    vd_store_read_end(t);
    /* the HLC floor covers every converted version */
    assert_true(vd_hlc_now() > max_hlc);
}

static void test_migrate_v1(void **state)
{
    char dir[256];
    copy_fixture(dir, sizeof dir);
    read_old(dir);
    assert_true(n_old >= 40);

    /* cut short after two transactions of 7 points, as a crash would */
    vd__store_migrate_chunk = 7;
    vd__store_migrate_stop_after = 2;
    struct vd_store_opts o = {.dir = dir, .no_sync = true};
    struct vd_store *s = NULL;
    struct vd_err e = {0};
    assert_int_equal(vd_store_open(&o, &s, &e), VD_EIO);
    vd__store_migrate_stop_after = 0;
    assert_int_equal(vd_store_open(&o, &s, &e), 0);
    vd__store_migrate_chunk = 1024;
    check_all(s, 0);

    /* writes work on the converted data, and a reopen converts nothing again */
    uint64_t inc = live[0].inc;
    float v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    struct vd_rtxn *t;
    assert_int_equal(vd_store_read_begin(s, &t), 0);
    struct vd_coll_schema cs;
    assert_int_equal(vd_store_coll_get(t, live[0].name, &cs), 0);
    vd_store_read_end(t);
    struct vd_wop op = {.kind = VD_WOP_UPSERT, .incarnation = inc,
                        .id = {.type = VD_PID_NUM, .u.num = 123456}, .version = vd_hlc_now(),
                        .node = 1, .vec = v, .dim = cs.dim};
    struct vd_wbatch b = {.ops = &op, .n = 1};
    assert_int_equal(vd_store_write(s, &b), 0);
    assert_true(op.applied);
    vd_store_close(s);
    s = NULL;
    assert_int_equal(vd_store_open(&o, &s, &e), 0);
    check_all(s, 1);
    vd_store_close(s);
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_migrate_v1),
    };
    vd_log_set_level(VD_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
