/*
 * Placing the points of a data directory written before points were replicated. Such a node holds
 * exactly the points written through it, wherever the ring would put them; reads now ask the
 * ring's replicas, so those points would be invisible. Once per data directory (the marker file
 * PLACED_FILE says it is done), a thread of its own rewrites every record the node stores,
 * tombstones included, through the coordinator as an ordinary write at the collection's write
 * consistency, keeping the record's version: each replica keeps the newer of what it holds and
 * this, so the pass can be repeated, interrupted or run on several nodes at once. A write that
 * fails (a replica still on the old version, no quorum yet) is retried until it succeeds or the
 * node stops. A fresh data directory has nothing to place and is marked at once.
 *
 * Once a page is acknowledged, the node drops its own copies of the page's points it is no
 * replica of (vd_db_forget: no tombstone, only the version that was placed), so its database
 * holds what the ring gives it and GET /collections/{c}/cluster counts only those; a copy that
 * changed meanwhile is kept. A pass interrupted between the two steps places the rest again on
 * the next start and drops what it placed then.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "node_int.h"
#include "vectord/db.h"
#include "vectord/record.h"

#define PLACED_FILE "points-placed"
#define PAGE_RECORDS 256
#define PAGE_BYTES (1u << 20)
#define WRITE_TIMEOUT_MS 10000
#define PLACE_RETRY_MS 1000

/* One page of records: copies of the stored bytes, back to back. */
struct page {
    uint8_t *bytes;
    size_t len, cap;
    size_t off[PAGE_RECORDS], lens[PAGE_RECORDS];
    size_t n;
    struct vd_pid last;
    const struct vd_pid *skip; /* the previous page's last id, visited again first */
};

static int page_add(const struct vd_pid *id, const uint8_t *rec, size_t len, void *ctx)
{
    struct page *p = ctx;
    if (p->skip && vd_pid_cmp(id, p->skip) == 0)
        return 0;
    if (p->n == PAGE_RECORDS || (p->n && p->len + len > PAGE_BYTES))
        return 1;
    if (p->len + len > p->cap) {
        size_t cap = p->cap ? p->cap : 4096;
        while (cap < p->len + len)
            cap *= 2;
        uint8_t *b = realloc(p->bytes, cap);
        if (!b)
            return VD_ENOMEM;
        p->bytes = b;
        p->cap = cap;
    }
    memcpy(p->bytes + p->len, rec, len);
    p->off[p->n] = p->len;
    p->lens[p->n++] = len;
    p->len += len;
    p->last = *id;
    return 0;
}

/* Sleeps ms unless the node stops first; returns true when it stops. */
static bool nap(struct vd_cluster *c, uint64_t ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)(ms / 1000);
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&c->place_mu);
    while (!c->place_stop && pthread_cond_timedwait(&c->place_cv, &c->place_mu, &until) == 0)
        ;
    bool stop = c->place_stop;
    pthread_mutex_unlock(&c->place_mu);
    return stop;
}

static bool stopping(struct vd_cluster *c)
{
    pthread_mutex_lock(&c->place_mu);
    bool stop = c->place_stop;
    pthread_mutex_unlock(&c->place_mu);
    return stop;
}

/* A step on collection coll failed for `why`: says so at most once a minute (*last_warn), then
 * waits before the retry. Returns true when the node stops meanwhile. */
static bool wait_retry(struct vd_cluster *c, uint64_t *last_warn, const char *step,
                       const char *coll, const char *why)
{
    uint64_t now = vd__cluster_now_ms();
    if (now - *last_warn >= 60000) {
        vd_log_warn("cluster: %s of collection '%s' waits: %s", step, coll, why);
        *last_warn = now;
    }
    return nap(c, PLACE_RETRY_MS);
}

/* Writes one page through the coordinator until it is acknowledged. Returns 0, VD_ENOTFOUND (the
 * collection is gone or another incarnation: nothing of it to place) or VD_ECLOSED (stopping). */
static int place_page(struct vd_cluster *c, const char *coll, uint64_t inc, struct page *p)
{
    const uint8_t *recs[PAGE_RECORDS];
    for (size_t i = 0; i < p->n; i++)
        recs[i] = p->bytes + p->off[i];
    uint64_t last_warn = 0;
    for (;;) {
        struct vd_cluster_wait w = VD_CLUSTER_WAIT_INIT;
        int rc = vd_cluster_write(c, coll, inc, recs, p->lens, p->n, 0, WRITE_TIMEOUT_MS,
                                  vd__wait_done, &w, &w.err);
        if (rc == 0)
            rc = vd__wait(&w);
        if (rc == 0 || rc == VD_ENOTFOUND || rc == VD_ECLOSED)
            return rc;
        if (wait_retry(c, &last_warn, "placing the points", coll, w.err.msg))
            return VD_ECLOSED;
    }
}

/* Drops this node's copies of the points of page p (acknowledged by their replicas) that it is
 * no replica of, on the current ring of collection `name` at incarnation inc. Retried until it
 * succeeds; returns 0, VD_ENOTFOUND (the collection is gone) or VD_ECLOSED (stopping). */
static int drop_unowned(struct vd_cluster *c, struct vd_coll *coll, const char *name,
                        uint64_t inc, const struct page *p)
{
    struct vd_pid ids[PAGE_RECORDS];
    struct vd_version versions[PAGE_RECORDS];
    size_t n = 0;
    struct vd_meta_view *v = vd__cluster_view_acquire(c);
    if (!v)
        return VD_ECLOSED;
    const struct vd_meta *m = vd_meta_view_state(v);
    const struct vd_coll_schema *s = vd_meta_collection(m, name);
    for (size_t i = 0; s && s->incarnation == inc && i < p->n; i++) {
        struct vd_record r;
        struct vd_rvec vecs[VD_RECORD_MAX_VECTORS];
        if (vd_record_decode(p->bytes + p->off[i], p->lens[i], &r, vecs))
            continue; /* the write of it would have failed: not placed, kept */
        if (vd_meta_is_replica(m, name, &r.id, c->id))
            continue;
        ids[n] = r.id;
        versions[n++] = r.version;
    }
    vd_meta_view_release(v);
    uint64_t last_warn = 0;
    while (n) {
        struct vd_cluster_wait w = VD_CLUSTER_WAIT_INIT;
        int rc = vd_db_forget(coll, ids, versions, n, vd__wait_done, &w, &w.err);
        if (rc == 0)
            rc = vd__wait(&w);
        if (rc == 0) {
            atomic_fetch_add(&c->place_dropped, n);
            break;
        }
        if (rc == VD_ENOTFOUND || rc == VD_ECLOSED)
            return rc;
        if (wait_retry(c, &last_warn, "dropping the placed copies", name, w.err.msg))
            return VD_ECLOSED;
    }
    return 0;
}

/* Places every record of collection `name`; returns 0 or VD_ECLOSED. */
static int place_collection(struct vd_cluster *c, const char *name)
{
    struct vd_coll *coll;
    if (vd_db_coll_get(c->db, name, &coll))
        return 0;
    uint64_t inc = vd_db_coll_schema(coll)->incarnation;
    struct page p = {0};
    struct vd_pid from;
    int rc = 0;
    for (;;) {
        p.n = p.len = 0;
        int src = vd_db_scan_records(coll, p.skip ? &from : NULL, page_add, &p);
        if (src < 0) {
            vd_log_warn("cluster: cannot read collection '%s' to place its points: %s", name,
                        vd_strerror(src));
            if (nap(c, PLACE_RETRY_MS)) {
                rc = VD_ECLOSED;
                break;
            }
            continue;
        }
        if (p.n == 0)
            break;
        rc = place_page(c, name, inc, &p);
        if (rc == 0)
            rc = drop_unowned(c, coll, name, inc, &p);
        if (rc == VD_ENOTFOUND) {
            rc = 0;
            break;
        }
        if (rc)
            break;
        atomic_fetch_add(&c->place_points, p.n);
        from = p.last;
        p.skip = &from;
    }
    free(p.bytes);
    vd_db_coll_put(coll);
    return rc;
}

static void marker_path(const struct vd_cluster *c, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", c->data_dir, PLACED_FILE);
}

static int write_marker(struct vd_cluster *c)
{
    char path[4096];
    marker_path(c, path, sizeof path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return VD_EIO;
    static const char text[] = "the points of this data directory are placed on the ring\n";
    bool ok = write(fd, text, sizeof text - 1) == (ssize_t)(sizeof text - 1) && fsync(fd) == 0;
    close(fd);
    int dfd = open(c->data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        ok = ok && fsync(dfd) == 0;
        close(dfd);
    }
    return ok ? 0 : VD_EIO;
}

static void *place_main(void *arg)
{
    struct vd_cluster *c = arg;
    /* the collections and the ring as the cluster has them, not as this node last saw them */
    atomic_store(&c->place_state, VD_PLACE_WAITING);
    for (;;) {
        struct vd_cluster_wait w = VD_CLUSTER_WAIT_INIT;
        int rc = vd_cluster_sync(c, 5000, vd__wait_done, &w, &w.err);
        if (rc == 0)
            rc = vd__wait(&w);
        if (rc == 0)
            break;
        if (rc == VD_ECLOSED || nap(c, PLACE_RETRY_MS))
            return NULL;
    }
    atomic_store(&c->place_state, VD_PLACE_RUNNING);
    char **names = NULL;
    size_t n = 0;
    while (vd_db_coll_names(c->db, &names, &n)) {
        if (nap(c, PLACE_RETRY_MS))
            return NULL;
    }
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = place_collection(c, names[i]);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (rc || stopping(c))
        return NULL; /* the next start goes on where the records are */
    while (write_marker(c)) {
        vd_log_warn("cluster: cannot write %s/%s: %s", c->data_dir, PLACED_FILE,
                    strerror(errno));
        if (nap(c, 10 * PLACE_RETRY_MS))
            return NULL;
    }
    atomic_store(&c->place_state, VD_PLACE_DONE);
    uint64_t placed = atomic_load(&c->place_points);
    if (placed)
        vd_log_info("cluster: placed the %llu records this node held over the ring",
                    (unsigned long long)placed);
    return NULL;
}

int vd__cluster_place_start(struct vd_cluster *c)
{
    pthread_mutex_init(&c->place_mu, NULL);
    pthread_cond_init(&c->place_cv, NULL);
    char path[4096];
    marker_path(c, path, sizeof path);
    if (access(path, F_OK) == 0) {
        atomic_store(&c->place_state, VD_PLACE_DONE);
        return 0;
    }
    if (pthread_create(&c->place_thread, NULL, place_main, c))
        return VD_ENOMEM;
    c->place_running = true;
    return 0;
}

void vd__cluster_place_stop(struct vd_cluster *c)
{
    pthread_mutex_lock(&c->place_mu);
    c->place_stop = true;
    pthread_cond_broadcast(&c->place_cv);
    pthread_mutex_unlock(&c->place_mu);
    if (c->place_running)
        pthread_join(c->place_thread, NULL);
    c->place_running = false;
    pthread_cond_destroy(&c->place_cv);
    pthread_mutex_destroy(&c->place_mu);
}

const char *vd__cluster_place_state_name(const struct vd_cluster *c)
{
    switch (atomic_load(&c->place_state)) {
    case VD_PLACE_WAITING:
        return "waiting";
    case VD_PLACE_RUNNING:
        return "placing";
    case VD_PLACE_DONE:
        return "done";
    default:
        return "starting";
    }
}
