/* Storage under concurrency: many threads submit while readers scan; every write lands exactly
 * once, change counters are dense, and group commit really groups (fewer commits than batches).
 * Also runs under ThreadSanitizer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <ftw.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vectord/store.h"

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(p);
}

static bool small_scale(void)
{
    const char *e = getenv("VD_TEST_SCALE");
    return e && strcmp(e, "small") == 0;
}

enum { THREADS = 8, DIM = 16, OPS_PER_BATCH = 4 };

struct shared {
    struct vd_store *s;
    uint64_t inc;
    int batches_per_thread;
    atomic_int writers_left;
    atomic_ullong reads;
    atomic_int errors;
};

struct writer_arg {
    struct shared *sh;
    int tid;
};

struct async_done {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pending;
    int failed;
};

static void async_done_fn(struct vd_wbatch *b, int status, void *ctx)
{
    struct async_done *d = ctx;
    pthread_mutex_lock(&d->mu);
    if (status)
        d->failed++;
    d->pending--;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

static uint64_t point_id(int tid, int b, int i)
{
    return ((uint64_t)tid << 32) | (uint64_t)(b * OPS_PER_BATCH + i);
}

/* Even threads wait for each batch; odd ones keep up to 8 in flight with done callbacks. */
static void *writer(void *p)
{
    struct writer_arg *a = p;
    struct shared *sh = a->sh;
    int nb = sh->batches_per_thread;
    struct vd_wop *ops = calloc((size_t)nb * OPS_PER_BATCH, sizeof *ops);
    float *vecs = calloc((size_t)nb * OPS_PER_BATCH * DIM, sizeof(float));
    struct vd_wbatch *bs = calloc((size_t)nb, sizeof *bs);
    struct async_done d = {.pending = 0};
    pthread_mutex_init(&d.mu, NULL);
    pthread_cond_init(&d.cv, NULL);
    for (int b = 0; b < nb; b++) {
        for (int i = 0; i < OPS_PER_BATCH; i++) {
            size_t k = (size_t)b * OPS_PER_BATCH + (size_t)i;
            float *v = vecs + k * DIM;
            for (int j = 0; j < DIM; j++)
                v[j] = (float)(a->tid * 1000 + b) + (float)j;
            ops[k] = (struct vd_wop){.kind = VD_WOP_UPSERT, .incarnation = sh->inc,
                                     .id = {.type = VD_PID_NUM, .u.num = point_id(a->tid, b, i)},
                                     .version = 1 + (uint64_t)b, .node = (uint64_t)a->tid,
                                     .vec = v, .dim = DIM, .payload = "{\"t\":1}",
                                     .payload_len = 7};
        }
        bs[b] = (struct vd_wbatch){.ops = ops + (size_t)b * OPS_PER_BATCH, .n = OPS_PER_BATCH};
        if (a->tid % 2 == 0) {
            if (vd_store_write(sh->s, &bs[b]) != 0)
                atomic_fetch_add(&sh->errors, 1);
        } else {
            pthread_mutex_lock(&d.mu);
            while (d.pending >= 8)
                pthread_cond_wait(&d.cv, &d.mu);
            d.pending++;
            pthread_mutex_unlock(&d.mu);
            bs[b].done = async_done_fn;
            bs[b].ctx = &d;
            if (vd_store_submit(sh->s, &bs[b]) != 0)
                atomic_fetch_add(&sh->errors, 1);
        }
    }
    pthread_mutex_lock(&d.mu);
    while (d.pending > 0)
        pthread_cond_wait(&d.cv, &d.mu);
    if (d.failed)
        atomic_fetch_add(&sh->errors, d.failed);
    pthread_mutex_unlock(&d.mu);
    for (size_t k = 0; k < (size_t)nb * OPS_PER_BATCH; k++)
        if (!ops[k].applied || ops[k].seq == 0)
            atomic_fetch_add(&sh->errors, 1);
    pthread_cond_destroy(&d.cv);
    pthread_mutex_destroy(&d.mu);
    free(bs);
    free(vecs);
    free(ops);
    atomic_fetch_sub(&sh->writers_left, 1);
    return NULL;
}

struct scan_state {
    uint64_t last_num;
    bool first;
    int bad;
    size_t n;
};

static int scan_fn(const struct vd_point_view *p, void *ctx)
{
    struct scan_state *st = ctx;
    if (!st->first && p->id.u.num <= st->last_num)
        st->bad++; /* key order */
    if (p->dim != DIM || p->vec[1] != p->vec[0] + 1.0f || p->payload_len != 7)
        st->bad++; /* a torn or misread record */
    st->first = false;
    st->last_num = p->id.u.num;
    st->n++;
    return 0;
}

/* Short read transactions in a loop while writers run: each sees a consistent snapshot. */
static void *reader(void *p)
{
    struct shared *sh = p;
    size_t last_n = 0;
    while (atomic_load(&sh->writers_left) > 0) {
        struct vd_rtxn *t;
        if (vd_store_read_begin(sh->s, &t) != 0) {
            atomic_fetch_add(&sh->errors, 1);
            break;
        }
        struct scan_state st = {.first = true};
        if (vd_store_scan(t, sh->inc, NULL, false, scan_fn, &st) != 0 || st.bad)
            atomic_fetch_add(&sh->errors, 1);
        /* Points are only added: a later snapshot never has fewer. */
        if (st.n < last_n)
            atomic_fetch_add(&sh->errors, 1);
        last_n = st.n;
        vd_store_read_end(t);
        atomic_fetch_add(&sh->reads, 1);
        /* Pacing, not synchronisation: leave the two cores to the writers between scans. */
        nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
    }
    return NULL;
}

static int seq_check(uint64_t inc, const struct vd_pid *id, uint64_t seq, void *ctx)
{
    uint64_t *expect = ctx;
    if (seq != *expect + 1)
        return 1;
    *expect = seq;
    return 0;
}

static void run(bool no_sync, const char *label)
{
    char dir[256];
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/vd-storec-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(dir));
    struct vd_store_opts o = {.dir = dir, .no_sync = no_sync};
    struct shared sh = {.batches_per_thread = small_scale() ? 40 : 200};
    struct vd_err e;
    assert_int_equal(vd_store_open(&o, &sh.s, &e), 0);
    struct vd_coll_schema c = {.dim = DIM, .metric = VD_METRIC_EUCLID};
    snprintf(c.name, sizeof c.name, "conc");
    struct vd_wop cop = {.kind = VD_WOP_COLL_CREATE, .schema = &c};
    struct vd_wbatch cb = {.ops = &cop, .n = 1};
    assert_int_equal(vd_store_write(sh.s, &cb), 0);
    sh.inc = c.incarnation;
    struct vd_store_counters before, after;
    vd_store_counters(sh.s, &before);

    pthread_t w[THREADS], r[2];
    struct writer_arg wa[THREADS];
    atomic_store(&sh.writers_left, THREADS);
    uint64_t t0 = vd_mono_ns();
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&r[i], NULL, reader, &sh), 0);
    for (int i = 0; i < THREADS; i++) {
        wa[i] = (struct writer_arg){.sh = &sh, .tid = i};
        assert_int_equal(pthread_create(&w[i], NULL, writer, &wa[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(w[i], NULL);
    for (int i = 0; i < 2; i++)
        pthread_join(r[i], NULL);
    double secs = (double)(vd_mono_ns() - t0) / 1e9;
    assert_int_equal(atomic_load(&sh.errors), 0);

    vd_store_counters(sh.s, &after);
    uint64_t batches = (uint64_t)THREADS * (uint64_t)sh.batches_per_thread;
    uint64_t commits = after.commits - before.commits;
    printf("store concurrency (%s): %llu batches from %d threads in %llu commits "
           "(%.1f batches per commit), %.0f batches/s, %llu snapshot scans\n",
           label, (unsigned long long)batches, THREADS, (unsigned long long)commits,
           (double)batches / (double)commits, (double)batches / secs,
           (unsigned long long)atomic_load(&sh.reads));
    assert_true(commits >= 1);
    assert_true(commits < batches); /* group commit grouped */

    uint64_t total = batches * OPS_PER_BATCH;
    assert_int_equal(vd_store_last_seq(sh.s), total);
    struct vd_rtxn *t;
    assert_int_equal(vd_store_read_begin(sh.s, &t), 0);
    struct scan_state st = {.first = true};
    assert_int_equal(vd_store_scan(t, sh.inc, NULL, true, scan_fn, &st), 0);
    assert_int_equal(st.bad, 0);
    assert_int_equal(st.n, total);
    uint64_t expect = 0;
    assert_int_equal(vd_store_changes_since(t, 0, seq_check, &expect), 0);
    assert_int_equal(expect, total); /* every applied op has one dense change counter */
    vd_store_read_end(t);
    vd_store_close(sh.s);
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void test_concurrent_writers_sync(void **state)
{
    run(false, "fsync");
}

static void test_concurrent_writers_nosync(void **state)
{
    run(true, "no fsync");
}

/* Submitting while close runs: each batch is either committed (done with 0) or refused with
 * VD_ECLOSED; never lost, never both. */
enum { CLOSE_MAX = 2000 };
struct closer_arg {
    struct vd_store *s;
    uint64_t inc;
    atomic_int accepted, refused, completed;
    float v[DIM];
    struct vd_wop ops[CLOSE_MAX];
    struct vd_wbatch bs[CLOSE_MAX];
};

static void count_done(struct vd_wbatch *b, int status, void *ctx)
{
    struct closer_arg *a = ctx;
    if (status == 0)
        atomic_fetch_add(&a->completed, 1);
}

static int count_fn(const struct vd_point_view *p, void *ctx)
{
    (*(size_t *)ctx)++;
    return 0;
}

static void *submitter(void *p)
{
    struct closer_arg *a = p;
    for (int i = 0; i < CLOSE_MAX; i++) {
        struct vd_wop *op = &a->ops[i];
        struct vd_wbatch *b = &a->bs[i];
        *op = (struct vd_wop){.kind = VD_WOP_UPSERT, .incarnation = a->inc,
                              .id = {.type = VD_PID_NUM, .u.num = (uint64_t)i}, .version = 1,
                              .vec = a->v, .dim = DIM};
        *b = (struct vd_wbatch){.ops = op, .n = 1, .done = count_done, .ctx = a};
        if (vd_store_submit(a->s, b) == VD_ECLOSED) {
            atomic_fetch_add(&a->refused, 1);
            break;
        }
        atomic_fetch_add(&a->accepted, 1);
    }
    return NULL;
}

static void test_close_while_submitting(void **state)
{
    char dir[256];
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/vd-storec-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(dir));
    struct vd_store_opts o = {.dir = dir, .no_sync = true};
    struct closer_arg *a = calloc(1, sizeof *a);
    struct vd_err e;
    assert_int_equal(vd_store_open(&o, &a->s, &e), 0);
    struct vd_coll_schema c = {.dim = DIM, .metric = VD_METRIC_DOT};
    snprintf(c.name, sizeof c.name, "c");
    struct vd_wop cop = {.kind = VD_WOP_COLL_CREATE, .schema = &c};
    struct vd_wbatch cb = {.ops = &cop, .n = 1};
    assert_int_equal(vd_store_write(a->s, &cb), 0);
    a->inc = c.incarnation;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, submitter, a), 0);
    while (atomic_load(&a->accepted) < 50)
        sched_yield();
    vd_store_close(a->s);
    pthread_join(th, NULL);
    assert_int_equal(atomic_load(&a->completed), atomic_load(&a->accepted));
    assert_int_equal(vd_store_open(&o, &a->s, &e), 0);
    struct vd_rtxn *t;
    size_t n = 0;
    assert_int_equal(vd_store_read_begin(a->s, &t), 0);
    assert_int_equal(vd_store_scan(t, a->inc, NULL, false, count_fn, &n), 0);
    vd_store_read_end(t);
    assert_int_equal(n, (size_t)atomic_load(&a->accepted));
    vd_store_close(a->s);
    free(a);
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* The map grows (MDB_MAP_FULL) while other threads keep beginning and ending reads: growth waits
 * for open reads, holds new ones back, and every read sees whole points. */
enum { GDIM = 1536 };

struct grow_arg {
    struct vd_store *s;
    uint64_t inc;
    atomic_int stop;
    atomic_int errors;
    atomic_ullong reads;
};

static int grow_scan_fn(const struct vd_point_view *p, void *ctx)
{
    /* Each vector is filled with its id. */
    if (p->dim != GDIM || p->vec[0] != (float)p->id.u.num || p->vec[GDIM - 1] != (float)p->id.u.num)
        return 1;
    return 0;
}

static void *grow_reader(void *p)
{
    struct grow_arg *a = p;
    while (!atomic_load(&a->stop)) {
        struct vd_rtxn *t;
        if (vd_store_read_begin(a->s, &t) != 0) {
            atomic_fetch_add(&a->errors, 1);
            break;
        }
        struct vd_pid from = {.type = VD_PID_NUM, .u.num = atomic_load(&a->reads) % 64};
        if (vd_store_scan(t, a->inc, &from, false, grow_scan_fn, NULL) != 0)
            atomic_fetch_add(&a->errors, 1);
        vd_store_read_end(t);
        atomic_fetch_add(&a->reads, 1);
        nanosleep(&(struct timespec){.tv_nsec = 200000}, NULL); /* pacing only */
    }
    return NULL;
}

static void test_growth_with_readers(void **state)
{
    char dir[256];
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/vd-storec-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(dir));
    struct vd_store_opts o = {.dir = dir, .no_sync = true, .map_size = 1 << 20};
    struct grow_arg a = {0};
    struct vd_err e;
    assert_int_equal(vd_store_open(&o, &a.s, &e), 0);
    struct vd_coll_schema c = {.dim = GDIM, .metric = VD_METRIC_DOT};
    snprintf(c.name, sizeof c.name, "g");
    struct vd_wop cop = {.kind = VD_WOP_COLL_CREATE, .schema = &c};
    struct vd_wbatch cb = {.ops = &cop, .n = 1};
    assert_int_equal(vd_store_write(a.s, &cb), 0);
    a.inc = c.incarnation;
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, grow_reader, &a), 0);
    int nb = small_scale() ? 16 : 32;
    enum { PB = 16 };
    float *vecs = malloc((size_t)PB * GDIM * sizeof(float));
    struct vd_wop ops[PB];
    for (int b = 0; b < nb; b++) {
        for (int i = 0; i < PB; i++) {
            uint64_t id = (uint64_t)(b * PB + i);
            for (int j = 0; j < GDIM; j++)
                vecs[(size_t)i * GDIM + (size_t)j] = (float)id;
            ops[i] = (struct vd_wop){.kind = VD_WOP_UPSERT, .incarnation = a.inc,
                                     .id = {.type = VD_PID_NUM, .u.num = id}, .version = 1,
                                     .vec = vecs + (size_t)i * GDIM, .dim = GDIM};
        }
        struct vd_wbatch wb = {.ops = ops, .n = PB};
        assert_int_equal(vd_store_write(a.s, &wb), 0);
    }
    atomic_store(&a.stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&a.errors), 0);
    struct vd_store_counters ctr;
    vd_store_counters(a.s, &ctr);
    printf("store growth: map grown %llu times to %llu bytes during %llu concurrent reads\n",
           (unsigned long long)ctr.map_grows, (unsigned long long)ctr.map_size,
           (unsigned long long)atomic_load(&a.reads));
    assert_true(ctr.map_grows >= 1);
    vd_store_close(a.s);
    free(vecs);
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_writers_sync),
        cmocka_unit_test(test_concurrent_writers_nosync),
        cmocka_unit_test(test_close_while_submitting),
        cmocka_unit_test(test_growth_with_readers),
    };
    vd_log_set_level(VD_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
