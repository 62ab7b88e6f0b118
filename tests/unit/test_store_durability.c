/* Durability proof for the storage write path, under the fsync-counting LD_PRELOAD shim
 * (tests/shim/fsync_count.c): a write is acknowledged only after an fsync/fdatasync of its commit
 * returned, and a failed fsync is reported as VD_EIO, never acknowledged, and the write is absent
 * after a restart. A kill -9 test cannot show this (the page cache survives the process).
 *
 * The binary re-executes itself with LD_PRELOAD set when the shim is not loaded yet
 * (tests/shim/preload.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shim/preload.h"
#include "vectord/store.h"

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(p);
}

struct fx {
    char dir[256];
    struct vd_store *s;
    uint64_t inc;
};

static struct vd_store *open_store(const char *dir, bool no_sync)
{
    struct vd_store_opts o = {.dir = dir, .no_sync = no_sync};
    struct vd_store *s = NULL;
    struct vd_err e = {0};
    int r = vd_store_open(&o, &s, &e);
    if (r)
        fprintf(stderr, "open: %s\n", e.msg);
    assert_int_equal(r, 0);
    return s;
}

static int setup_mode(void **state, bool no_sync)
{
    struct fx *f = calloc(1, sizeof *f);
    const char *t = getenv("TMPDIR");
    snprintf(f->dir, sizeof f->dir, "%s/vd-stored-XXXXXX", t && *t ? t : "/tmp");
    assert_non_null(mkdtemp(f->dir));
    f->s = open_store(f->dir, no_sync);
    struct vd_coll_schema c = {.dim = 8, .metric = VD_METRIC_COSINE};
    snprintf(c.name, sizeof c.name, "d");
    struct vd_wop op = {.kind = VD_WOP_COLL_CREATE, .schema = &c};
    struct vd_wbatch b = {.ops = &op, .n = 1};
    assert_int_equal(vd_store_write(f->s, &b), 0);
    f->inc = c.incarnation;
    *state = f;
    return 0;
}

static int setup_sync(void **state)
{
    return setup_mode(state, false);
}

static int setup_nosync(void **state)
{
    return setup_mode(state, true);
}

static int teardown(void **state)
{
    struct fx *f = *state;
    vd_shim_fail(0);
    vd_store_close(f->s);
    nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static const float vec[8] = {1, 0, 0, 0, 0, 0, 0, 0};

static void fill(struct fx *f, struct vd_wop *op, uint64_t id)
{
    *op = (struct vd_wop){.kind = VD_WOP_UPSERT, .incarnation = f->inc,
                          .id = {.type = VD_PID_NUM, .u.num = id}, .version = 1, .node = 1,
                          .vec = vec, .dim = 8};
}

struct seen {
    uint64_t fsyncs_at_done;
    int status;
};

static void record_done(struct vd_wbatch *b, int status, void *ctx)
{
    struct seen *s = ctx;
    s->fsyncs_at_done = vd_shim_count();
    s->status = status;
}

/* Every acknowledged write was preceded by at least one sync call after it was submitted. */
static void test_ack_after_fsync(void **state)
{
    struct fx *f = *state;
    for (uint64_t i = 0; i < 20; i++) {
        struct vd_wop op;
        fill(f, &op, i);
        struct seen seen = {0};
        struct vd_wbatch b = {.ops = &op, .n = 1, .done = record_done, .ctx = &seen};
        uint64_t before = vd_shim_count();
        assert_int_equal(vd_store_write(f->s, &b), 0);
        assert_int_equal(seen.status, 0);
        assert_true(seen.fsyncs_at_done > before); /* done ran after the sync */
        assert_true(vd_shim_count() > before);
    }
}

struct thr {
    struct fx *f;
    int base;
    int errors;
};

static void *writer(void *p)
{
    struct thr *t = p;
    for (int i = 0; i < 25; i++) {
        struct vd_wop op;
        fill(t->f, &op, (uint64_t)(t->base + i));
        struct vd_wbatch b = {.ops = &op, .n = 1};
        if (vd_store_write(t->f->s, &b) != 0)
            t->errors++;
    }
    return NULL;
}

/* Under group commit each commit still syncs: at least one sync call per commit. */
static void test_group_commit_syncs(void **state)
{
    struct fx *f = *state;
    struct vd_store_counters c0, c1;
    vd_store_counters(f->s, &c0);
    uint64_t before = vd_shim_count();
    pthread_t th[4];
    struct thr a[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (struct thr){.f = f, .base = 1000 * (i + 1)};
        assert_int_equal(pthread_create(&th[i], NULL, writer, &a[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(a[i].errors, 0);
    }
    vd_store_counters(f->s, &c1);
    uint64_t commits = c1.commits - c0.commits, syncs = vd_shim_count() - before;
    printf("durability: 100 acknowledged writes from 4 threads, %llu commits, %llu sync calls\n",
           (unsigned long long)commits, (unsigned long long)syncs);
    assert_true(commits >= 1 && commits <= 100);
    assert_true(syncs >= commits);
}

/* Control: with no_sync the shim sees no sync calls, so the counts above come from the commits. */
static void test_no_sync_control(void **state)
{
    struct fx *f = *state;
    uint64_t before = vd_shim_count();
    for (uint64_t i = 0; i < 10; i++) {
        struct vd_wop op;
        fill(f, &op, i);
        struct vd_wbatch b = {.ops = &op, .n = 1};
        assert_int_equal(vd_store_write(f->s, &b), 0);
    }
    assert_int_equal(vd_shim_count(), before);
}

/* A failed fsync: the write is reported VD_EIO, not acknowledged, later writes are refused, and
 * after a restart the acknowledged write is there and the failed one is not. */
static void test_fsync_failure(void **state)
{
    struct fx *f = *state;
    struct vd_wop op;
    fill(f, &op, 1);
    struct vd_wbatch b = {.ops = &op, .n = 1};
    assert_int_equal(vd_store_write(f->s, &b), 0);

    vd_log_set_level(VD_LOG_OFF); /* the expected error lines */
    vd_shim_fail(1);
    struct seen seen = {.status = 12345};
    fill(f, &op, 2);
    b = (struct vd_wbatch){.ops = &op, .n = 1, .done = record_done, .ctx = &seen};
    uint64_t seq_before = vd_store_last_seq(f->s);
    assert_int_equal(vd_store_write(f->s, &b), VD_EIO);
    assert_int_equal(seen.status, VD_EIO);
    assert_int_equal(b.err.code, VD_EIO);
    assert_non_null(strstr(b.err.msg, "not durable"));
    assert_false(op.applied);
    assert_int_equal(op.seq, 0);
    assert_int_equal(vd_store_last_seq(f->s), seq_before);

    /* Sticky: even with fsync working again, this open store refuses writes. */
    vd_shim_fail(0);
    fill(f, &op, 3);
    b = (struct vd_wbatch){.ops = &op, .n = 1};
    assert_int_equal(vd_store_write(f->s, &b), VD_EIO);
    struct vd_store_counters ctr;
    vd_store_counters(f->s, &ctr);
    assert_int_equal(ctr.failed_commits, 1);
    vd_log_set_level(VD_LOG_WARN);

    vd_store_close(f->s);
    f->s = open_store(f->dir, false);
    struct vd_rtxn *t;
    struct vd_point_view pv;
    assert_int_equal(vd_store_read_begin(f->s, &t), 0);
    struct vd_pid id = {.type = VD_PID_NUM, .u.num = 1};
    assert_int_equal(vd_store_point_get(t, f->inc, &id, &pv), 0);
    id.u.num = 2;
    assert_int_equal(vd_store_point_get(t, f->inc, &id, &pv), VD_ENOTFOUND);
    id.u.num = 3;
    assert_int_equal(vd_store_point_get(t, f->inc, &id, &pv), VD_ENOTFOUND);
    vd_store_read_end(t);
    assert_int_equal(vd_store_last_seq(f->s), seq_before);
    /* And the reopened store writes again. */
    fill(f, &op, 4);
    b = (struct vd_wbatch){.ops = &op, .n = 1};
    assert_int_equal(vd_store_write(f->s, &b), 0);
}

int main(int argc, char **argv)
{
    if (vd_test_shim_preload(argv))
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ack_after_fsync, setup_sync, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit_syncs, setup_sync, teardown),
        cmocka_unit_test_setup_teardown(test_no_sync_control, setup_nosync, teardown),
        cmocka_unit_test_setup_teardown(test_fsync_failure, setup_sync, teardown),
    };
    vd_log_set_level(VD_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
