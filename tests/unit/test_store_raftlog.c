/*
 * Raft log storage on a real LMDB environment in a temporary directory: round trips across
 * close/reopen (a restart), truncation of conflicting suffixes, snapshots that compact or replace
 * the log, checksums that catch corruption, and (under the fsync-counting shim, which the binary
 * loads itself: without it the test fails) that a save returns only after its commit was synced
 * and that a failed sync is sticky.
 */
#include <lmdb.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "shim/preload.h"
#include "vectord/raftlog.h"

struct fix {
    char dir[256];
    struct vd_raftlog *l;
    bool no_sync;
};

static int open_log(struct fix *f)
{
    struct vd_raftlog_opts o = {.dir = f->dir, .no_sync = f->no_sync, .map_size = 1 << 20};
    struct vd_err err;
    int rc = vd_raftlog_open(&o, &f->l, &err);
    if (rc)
        print_error("open: %s\n", err.msg);
    return rc;
}

static int setup_common(void **state, bool no_sync)
{
    struct fix *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/vd_raftlog_XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    f->no_sync = no_sync;
    if (open_log(f))
        return -1;
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_common(state, true);
}
static int setup_sync(void **state)
{
    return setup_common(state, false);
}

static int teardown(void **state)
{
    struct fix *f = *state;
    vd_raftlog_close(f->l);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    if (system(cmd) != 0)
        return -1;
    free(f);
    return 0;
}

static void reopen(struct fix *f)
{
    vd_raftlog_close(f->l);
    f->l = NULL;
    assert_int_equal(open_log(f), 0);
}

/* Entries index from..to of the given term, with data "e<index>". */
static struct vd_raft_entry *make_entries(uint64_t from, uint64_t to, uint64_t term, char buf[][16])
{
    static struct vd_raft_entry e[64];
    for (uint64_t i = from; i <= to; i++) {
        struct vd_raft_entry *x = &e[i - from];
        snprintf(buf[i - from], 16, "e%llu", (unsigned long long)i);
        *x = (struct vd_raft_entry){.index = i,
                                    .term = term,
                                    .type = VD_RAFT_ENTRY_NORMAL,
                                    .data = (uint8_t *)buf[i - from],
                                    .len = strlen(buf[i - from])};
    }
    return e;
}

static void save_entries(struct fix *f, uint64_t from, uint64_t to, uint64_t term)
{
    char buf[64][16];
    struct vd_raft_update u = {.first_index = from, .n_entries = to - from + 1};
    u.entries = make_entries(from, to, term, buf);
    struct vd_err err;
    assert_int_equal(vd_raftlog_save(f->l, &u, &err), 0);
}

static void test_fresh_is_empty(void **state)
{
    struct fix *f = *state;
    struct vd_raft_state st;
    struct vd_err err;
    assert_int_equal(vd_raftlog_load(f->l, &st, &err), 0);
    assert_int_equal(st.term, 0);
    assert_int_equal(st.vote, 0);
    assert_null(st.snapshot);
    assert_int_equal(st.n_entries, 0);
}

static void test_roundtrip_across_restart(void **state)
{
    struct fix *f = *state;
    struct vd_raft_update u = {.hard_state = true, .term = 7, .vote = 3};
    struct vd_err err;
    assert_int_equal(vd_raftlog_save(f->l, &u, &err), 0);
    save_entries(f, 1, 10, 7);
    reopen(f);
    struct vd_raft_state st;
    assert_int_equal(vd_raftlog_load(f->l, &st, &err), 0);
    assert_int_equal(st.term, 7);
    assert_int_equal(st.vote, 3);
    assert_int_equal(st.n_entries, 10);
    for (size_t i = 0; i < 10; i++) {
        char want[16];
        snprintf(want, sizeof(want), "e%zu", i + 1);
        assert_int_equal(st.entries[i].index, i + 1);
        assert_int_equal(st.entries[i].term, 7);
        assert_int_equal(st.entries[i].type, VD_RAFT_ENTRY_NORMAL);
        assert_int_equal(st.entries[i].len, strlen(want));
        assert_memory_equal(st.entries[i].data, want, strlen(want));
    }
    uint64_t first, last;
    assert_int_equal(vd_raftlog_bounds(f->l, &first, &last, &err), 0);
    assert_int_equal(first, 1);
    assert_int_equal(last, 10);
}

static void test_conflicting_suffix_is_replaced(void **state)
{
    struct fix *f = *state;
    save_entries(f, 1, 10, 2);
    save_entries(f, 6, 7, 3); /* a new leader's entries replace 6..10 */
    struct vd_raft_state st;
    struct vd_err err;
    assert_int_equal(vd_raftlog_load(f->l, &st, &err), 0);
    assert_int_equal(st.n_entries, 7);
    assert_int_equal(st.entries[4].term, 2);
    assert_int_equal(st.entries[5].term, 3);
    assert_int_equal(st.entries[6].term, 3);
    /* a pure truncation (no entries) also works */
    struct vd_raft_update u = {.first_index = 4};
    assert_int_equal(vd_raftlog_save(f->l, &u, &err), 0);
    assert_int_equal(vd_raftlog_load(f->l, &st, &err), 0);
    assert_int_equal(st.n_entries, 3);
}

static void test_snapshot_compacts_and_replaces(void **state)
{
    struct fix *f = *state;
    save_entries(f, 1, 20, 4);
    struct vd_raft_snapshot s = {
        .index = 12, .term = 4, .data = (const uint8_t *)"state@12", .len = 8};
    s.conf.n = 2;
    s.conf.nodes[0].id = 1;
    s.conf.nodes[0].role = VD_RAFT_VOTER;
    s.conf.nodes[1].id = 0xfeedfacecafebeefULL;
    s.conf.nodes[1].role = VD_RAFT_LEARNER;
    struct vd_err err;
    assert_int_equal(vd_raftlog_save_snapshot(f->l, &s, &err), 0);
    reopen(f);
    struct vd_raft_state st;
    assert_int_equal(vd_raftlog_load(f->l, &st, &err), 0);
    assert_non_null(st.snapshot);
    assert_int_equal(st.snapshot->index, 12);
    assert_int_equal(st.snapshot->term, 4);
    assert_int_equal(st.snapshot->len, 8);
    assert_memory_equal(st.snapshot->data, "state@12", 8);
    assert_int_equal(st.snapshot->conf.n, 2);
    assert_true(st.snapshot->conf.nodes[1].id == 0xfeedfacecafebeefULL);
    assert_int_equal(st.snapshot->conf.nodes[1].role, VD_RAFT_LEARNER);
    assert_int_equal(st.n_entries, 8);
    assert_int_equal(st.entries[0].index, 13);

    /* InstallSnapshot that conflicts with the log: the update carries the snapshot and asks for
     * every entry after it to go */
    struct vd_raft_snapshot s2 = {
        .index = 30, .term = 6, .conf = s.conf, .data = (const uint8_t *)"state@30!", .len = 9};
    struct vd_raft_update u = {
        .hard_state = true, .term = 6, .vote = 0, .snapshot = &s2, .first_index = 31};
    assert_int_equal(vd_raftlog_save(f->l, &u, &err), 0);
    reopen(f);
    assert_int_equal(vd_raftlog_load(f->l, &st, &err), 0);
    assert_int_equal(st.term, 6);
    assert_int_equal(st.snapshot->index, 30);
    assert_int_equal(st.n_entries, 0);
    save_entries(f, 31, 33, 6);
    assert_int_equal(vd_raftlog_load(f->l, &st, &err), 0);
    assert_int_equal(st.n_entries, 3);
    assert_int_equal(st.entries[2].index, 33);
}

/* Flips a byte of a stored record behind the log's back. */
static void corrupt(struct fix *f, const char *dbname, const void *key, size_t klen, size_t at)
{
    vd_raftlog_close(f->l);
    f->l = NULL;
    char path[400];
    snprintf(path, sizeof(path), "%s/raft", f->dir);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    assert_int_equal(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 4);
    assert_int_equal(mdb_env_open(env, path, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, dbname, 0, &dbi), 0);
    MDB_val k = {klen, (void *)key}, v;
    assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
    uint8_t copy[256];
    assert_true(v.mv_size <= sizeof(copy) && at < v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    copy[at] ^= 0x40;
    v.mv_data = copy;
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    assert_int_equal(open_log(f), 0);
}

static void test_corruption_is_reported(void **state)
{
    struct fix *f = *state;
    save_entries(f, 1, 5, 1);
    uint8_t key[8];
    vd_be64_put(key, 3);
    corrupt(f, "log", key, 8, 15); /* a data byte of entry 3 */
    struct vd_raft_state st;
    struct vd_err err;
    assert_int_equal(vd_raftlog_load(f->l, &st, &err), VD_ECORRUPT);
    assert_non_null(strstr(err.msg, "entry 3"));
    assert_int_equal(st.n_entries, 0);

    /* a hole in the log is corruption too */
    struct vd_raft_update u = {.first_index = 3};
    assert_int_equal(vd_raftlog_save(f->l, &u, &err), 0);
    save_entries(f, 3, 3, 1);
    assert_int_equal(vd_raftlog_load(f->l, &st, &err), 0);
    struct vd_raft_snapshot s = {.index = 1, .term = 1, .data = (const uint8_t *)"abc", .len = 3};
    assert_int_equal(vd_raftlog_save_snapshot(f->l, &s, &err), 0);
    corrupt(f, "meta", "snapdata", 8, 1);
    assert_int_equal(vd_raftlog_load(f->l, &st, &err), VD_ECORRUPT);
    assert_non_null(strstr(err.msg, "snapshot"));
}

static void test_map_grows(void **state)
{
    struct fix *f = *state; /* opened with a 1 MiB map */
    static uint8_t big[200000];
    memset(big, 7, sizeof(big));
    struct vd_err err;
    for (uint64_t i = 1; i <= 40; i++) { /* 8 MB in total */
        struct vd_raft_entry e = {
            .index = i, .term = 1, .type = VD_RAFT_ENTRY_NORMAL, .data = big, .len = sizeof(big)};
        struct vd_raft_update u = {.first_index = i, .entries = &e, .n_entries = 1};
        assert_int_equal(vd_raftlog_save(f->l, &u, &err), 0);
    }
    reopen(f);
    struct vd_raft_state st;
    assert_int_equal(vd_raftlog_load(f->l, &st, &err), 0);
    assert_int_equal(st.n_entries, 40);
    assert_int_equal(st.entries[39].len, sizeof(big));
}

static void test_save_is_synced(void **state)
{
    struct fix *f = *state;
    uint64_t before = vd_shim_count();
    struct vd_raft_update u = {.hard_state = true, .term = 2, .vote = 1};
    struct vd_err err;
    assert_int_equal(vd_raftlog_save(f->l, &u, &err), 0);
    assert_true(vd_shim_count() > before); /* the vote is on disk before anyone hears of it */
    before = vd_shim_count();
    save_entries(f, 1, 3, 2);
    assert_true(vd_shim_count() > before);
    /* an update with nothing durable in it costs no sync */
    before = vd_shim_count();
    struct vd_raft_update none = {0};
    assert_int_equal(vd_raftlog_save(f->l, &none, &err), 0);
    assert_int_equal(vd_shim_count(), before);
}

static void test_failed_sync_is_sticky(void **state)
{
    struct fix *f = *state;
    save_entries(f, 1, 2, 1);
    vd_shim_fail(1);
    struct vd_raft_update u = {.hard_state = true, .term = 5, .vote = 2};
    struct vd_err err;
    assert_int_equal(vd_raftlog_save(f->l, &u, &err), VD_EIO);
    vd_shim_fail(0);
    /* the promise was never acknowledged; nothing more is written through this handle */
    assert_int_equal(vd_raftlog_save(f->l, &u, &err), VD_EIO);
    assert_non_null(strstr(err.msg, "earlier commit failed"));
}

int main(int argc, char **argv)
{
    if (vd_test_shim_preload(argv))
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fresh_is_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roundtrip_across_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conflicting_suffix_is_replaced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_compacts_and_replaces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corruption_is_reported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_grows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_save_is_synced, setup_sync, teardown),
        cmocka_unit_test_setup_teardown(test_failed_sync_is_sticky, setup_sync, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
