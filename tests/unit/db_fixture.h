/* What the database tests share: a database in a fresh temporary directory, collections, and
 * searches read back as JSON. Header-only, for tests; include it after cmocka.h. Each test binary
 * gets its own waiter W and directory dir. */
#ifndef VD_TEST_DB_FIXTURE_H
#define VD_TEST_DB_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vectord/db.h"
#include "vectord/json.h"

#include "unit/waiter.h"

static struct waiter W = WAITER_INIT;
static char dir[64];

/* Makes dir a new empty directory under /tmp. */
static inline void fixture_mkdir(void)
{
    strcpy(dir, "/tmp/vd-test-db-XXXXXX");
    assert_non_null(mkdtemp(dir));
}

/* Removes dir and everything in it. */
static inline void fixture_rmdir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* Opens the database in dir with one index thread, saving graphs every save_seconds (0: only at
 * close). */
static inline struct vd_db *open_db_saving(unsigned save_seconds)
{
    struct vd_db *db;
    struct vd_err e;
    struct vd_db_opts o = {.data_dir = dir, .no_sync = true, .index_threads = 1,
                           .index_save_seconds = save_seconds};
    if (vd_db_open(&o, &db, &e))
        fail_msg("open: %s", e.msg);
    return db;
}

static inline struct vd_db *open_db(void)
{
    return open_db_saving(0);
}

/* Closes *db (dropping the reference *c) and opens it again with *c the collection name. */
static inline void reopen(struct vd_db **db, struct vd_coll **c, const char *name)
{
    vd_db_coll_put(*c);
    vd_db_close(*db);
    *db = open_db();
    assert_int_equal(vd_db_coll_get(*db, name, c), 0);
}

/* Creates collection name (HNSW m 16) and returns a reference to it (vd_db_coll_put). */
static inline struct vd_coll *create_coll(struct vd_db *db, const char *name, uint32_t dim,
                                          enum vd_metric metric, uint32_t ef_construct,
                                          uint32_t full_scan_threshold_kb)
{
    struct vd_coll_schema s = {.dim = dim, .metric = metric, .hnsw_m = 16,
                               .hnsw_ef_construct = ef_construct,
                               .full_scan_threshold_kb = full_scan_threshold_kb,
                               .replication_factor = 1, .write_consistency_factor = 1};
    snprintf(s.name, sizeof s.name, "%s", name);
    struct vd_err e;
    assert_int_equal(vd_db_coll_create(db, &s, on_done, &W, &e), 0);
    assert_int_equal(wait_for(&W), 0);
    struct vd_coll *c;
    assert_int_equal(vd_db_coll_get(db, name, &c), 0);
    return c;
}

/* Records as text the tests can compare: [{"id", ("version", "score" when scored), "payload"
 * (as stored, {} when none), "vector" (null when not read)}], the shape the API gives them. */
static inline void records_text(struct vd_buf *b, const struct vd_db_record *r, size_t n,
                                bool scored)
{
    vd_buf_puts(b, "[");
    for (size_t i = 0; i < n; i++) {
        vd_buf_puts(b, i ? ",{\"id\":" : "{\"id\":");
        vd_buf_json_pid(b, &r[i].id);
        if (scored) {
            char num[32];
            vd_json_fmt_float(r[i].score, num);
            vd_buf_printf(b, ",\"version\":%llu,\"score\":%s", (unsigned long long)r[i].seq,
                          num);
        }
        vd_buf_puts(b, ",\"payload\":");
        if (r[i].payload_len)
            vd_buf_append(b, r[i].payload, r[i].payload_len);
        else
            vd_buf_puts(b, "{}");
        vd_buf_puts(b, ",\"vector\":");
        if (r[i].vec)
            vd_buf_json_floats(b, r[i].vec, r[i].dim);
        else
            vd_buf_puts(b, "null");
        vd_buf_puts(b, "}");
    }
    vd_buf_puts(b, "]");
}

/* The hits of search s with their payloads, as a JSON array (cJSON_Delete). */
static inline cJSON *search(struct vd_coll *c, const struct vd_db_search *s)
{
    struct vd_buf b;
    struct vd_err e;
    struct vd_db_record *r;
    size_t n;
    vd_buf_init(&b);
    if (vd_db_search(c, s, false, &r, &n, &e))
        fail_msg("search: %s", e.msg);
    records_text(&b, r, n, true);
    vd_db_records_free(r, n);
    cJSON *j = cJSON_ParseWithLength(b.data, b.len);
    vd_buf_release(&b);
    assert_non_null(j);
    return j;
}

/* The (integer) id of hit i of a search's hits, or -1 when there are fewer hits. */
static inline int hit_id(const cJSON *hits, int i)
{
    const cJSON *h = cJSON_GetArrayItem(hits, i);
    return h ? (int)cJSON_GetObjectItem(h, "id")->valuedouble : -1;
}

/* The id of the first hit of search s, or -1 when there is none. */
static inline int first_id(struct vd_coll *c, const struct vd_db_search *s)
{
    cJSON *r = search(c, s);
    int id = hit_id(r, 0);
    cJSON_Delete(r);
    return id;
}

#endif
