/* Internals of the HTTP module, shared by its files only. */
#ifndef VECTORD_HTTP_INT_H
#define VECTORD_HTTP_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include <microhttpd.h>

#include "vectord/http.h"

#define VD_HTTP_MAX_SEGS 16
#define VD_HTTP_MAX_PARAMS 4
#define VD_HTTP_N_METHODS 8  /* GET HEAD POST PUT DELETE PATCH OPTIONS other */
#define VD_HTTP_N_STATUS 12  /* distinct statuses counted per (route, method) */
#define VD_HTTP_N_BUCKETS 14 /* latency histogram buckets, +Inf excluded */

/* Counters of one route (or of unmatched requests); guarded by vd_http.metrics_mu. */
struct vd_http_stats {
    struct {
        int status;
        uint64_t count;
    } by[VD_HTTP_N_METHODS][VD_HTTP_N_STATUS];
    uint64_t buckets[VD_HTTP_N_BUCKETS + 1]; /* non-cumulative; last = over the largest bound */
    double sum_s;
    uint64_t count;
};

struct vd_http_route {
    char method[12];
    const char *pattern; /* borrowed, for logs and metrics labels */
    unsigned n_segs;
    struct {
        const char *s; /* literal text or capture name (points into `text`) */
        size_t len;
        bool capture;
    } segs[VD_HTTP_MAX_SEGS];
    char *text; /* owned copy of the pattern, split into segments */
    enum vd_role min_role;
    vd_http_handler fn; /* handler, or `begin` of a stream route */
    const struct vd_http_stream_ops *ops; /* non-NULL: streamed body */
    void *ctx;
    struct vd_http_stats stats;
    struct vd_http_route *next;
};

struct vd_http_authkey {
    uint8_t digest[32]; /* SHA-256 of the key: every comparison has the same length */
    enum vd_role role;
};

struct vd_http {
    struct MHD_Daemon *daemon;
    char bind[64];
    uint16_t port_req, port;
    unsigned threads;
    size_t max_body;
    unsigned idle_timeout_s;
    unsigned max_conns;
    size_t body_budget;
    unsigned header_timeout_s;
    char version[64];
    char commit[64];
    struct vd_http_authkey *keys;
    size_t n_keys;

    struct vd_http_route *routes, **routes_tail;
    bool started;

    void (*metrics_fn)(struct vd_buf *out, void *ctx);
    void *metrics_ctx;
    bool (*ready_fn)(void *ctx);
    void *ready_ctx;

    atomic_uint_fast64_t next_id;
    atomic_bool stopping;  /* no new work: new requests get 503 */
    atomic_int waking;     /* MHD_resume_connection calls decided and not yet returned */
    atomic_int wakes_unseen; /* resumed connections libmicrohttpd has not handed back yet */

    pthread_mutex_t mu;    /* guards the request list and the counters below */
    pthread_cond_t idle;   /* signalled when n_live drops */
    struct vd_http_req *live; /* every request not yet freed */
    size_t n_live;            /* requests whose connection has not completed */
    bool hard_stop;           /* after the drain deadline: nothing reaches the application */
    bool stopped;

    pthread_mutex_t metrics_mu;
    struct vd_http_stats unmatched;

    atomic_size_t body_inflight; /* bytes reserved by buffered bodies */
    /* open connections, for the connection limit and the header deadline */
    pthread_mutex_t conn_mu;
    pthread_cond_t conn_cv;        /* wakes the reaper at stop */
    struct vd_http_conn *conns;    /* guarded by conn_mu */
    unsigned n_conns;              /* guarded by conn_mu */
    pthread_t reaper;
    bool reaper_started, reaper_stop; /* reaper_stop guarded by conn_mu */
};

/* One open connection (libmicrohttpd's socket context). */
struct vd_http_conn {
    int fd;
    uint64_t since_ns; /* when the wait for the next request's headers began */
    bool in_request;   /* headers received, request not completed: no header deadline */
    bool cut;          /* the reaper shut it down */
    struct vd_http_conn *prev, *next;
};

/* server.c: requests held in memory, answered or not, until their last reference goes (a
 * request the application still owes a reply stays). For tests. */
size_t vd__http_live_count(struct vd_http *h);

/* route.c */
struct vd_http_route *vd__http_match(struct vd_http *h, const char *method, const char *raw_path,
                                     struct vd_http_req *r, bool *path_known, bool *bad_path);
int vd__http_route_add(struct vd_http *h, const char *method, const char *pattern,
                       enum vd_role min_role, vd_http_handler fn,
                       const struct vd_http_stream_ops *ops, void *ctx);
void vd__http_routes_free(struct vd_http *h);
int vd__http_keys_load(struct vd_http *h, const struct vd_http_key *keys, size_t n, struct vd_err *err);
/* Role of a presented key: VD_ROLE_NONE if absent (*present=false) or unknown. Constant time in
 * which key matched. */
enum vd_role vd__http_key_role(const struct vd_http *h, const char *presented, bool *known);
/* Escapes s as a JSON string (with quotes) into dst; returns the length, or the length it would
 * need (like snprintf) when cap is too small. */
size_t vd__http_json_escape(char *dst, size_t cap, const char *s);

/* metrics.c */
int vd__http_method_index(const char *m);
void vd__http_stats_record(struct vd_http *h, struct vd_http_route *rt, const char *method,
                           int status, double seconds);
/* Renders every counter as Prometheus text into a malloc'd string. */
char *vd__http_metrics_render(struct vd_http *h, size_t *len);

/* request fields needed by route.c to store captures */
void vd__http_req_set_param(struct vd_http_req *r, unsigned i, const char *name, char *value);

#endif
