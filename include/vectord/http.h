/*
 * vectord HTTP front end: a libmicrohttpd server with a thread pool, pattern routing with path
 * captures, API-key auth with roles, Qdrant-style JSON envelopes, request body limits, replies
 * from any thread (the connection is suspended meanwhile, never a pool thread), streamed request
 * bodies with backpressure, streamed replies, Prometheus metrics and a graceful stop.
 *
 * Threads: routes and hooks are registered before vd_http_start and never change afterwards.
 * Handlers run on pool threads. Every vd_http_reply_* and vd_http_resume_body may be called from
 * any thread. A request (struct vd_http_req) is owned by the server; the application may use it
 * from the moment its handler (or stream `begin`) is called until it has given the reply (or,
 * for a stream route, until `abort` returned).
 */
#ifndef VECTORD_HTTP_H
#define VECTORD_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vectord/core.h"
#include "vectord/json.h"

enum vd_role { VD_ROLE_NONE = 0, VD_ROLE_RO = 1, VD_ROLE_RW = 2, VD_ROLE_ADMIN = 3 };

struct vd_http_key {
    const char *key; /* the key itself, or "sha256:<64 hex>" for a stored digest */
    enum vd_role role;
};

/* The version of Qdrant's REST API that vectord follows: GET / reports it as "version", the
 * field Qdrant's clients check their own version against. */
#define VD_HTTP_QDRANT_VERSION "1.19.0"

struct vd_http_opts {
    const char *bind;   /* "127.0.0.1", "0.0.0.0", "::1", ...; NULL = "127.0.0.1" */
    uint16_t port;      /* 0 = ephemeral (tests); vd_http_port() tells the bound one */
    unsigned threads;   /* pool size, 0 = number of CPUs (at least 2) */
    size_t max_body;    /* bytes, 0 = default 32 MiB; over it -> 413 */
    const struct vd_http_key *keys;
    size_t n_keys;       /* none = auth disabled (everyone is admin) */
    const char *version; /* vectord's, for GET /; NULL = "unknown" */
    const char *commit;  /* the git commit built, for GET /; NULL = "unknown" */
    /* seconds a connection may stay silent (no byte in or out) before it is closed, e.g. a
     * malformed request whose body never comes; 0 = default 30 */
    unsigned idle_timeout_s;
    /* Open connections answered normally; a request on a connection past it is answered 503 and
     * the connection closed (0 = default 1024). Past twice that (plus 64) connections are
     * closed at accept, unanswered. */
    unsigned max_connections;
    /* Total bytes of request bodies buffered at once, over every connection; a request that
     * would go over it is answered 503 (0 = default 512 MiB). Streamed bodies (import) are not
     * buffered and not counted. */
    size_t max_inflight_body;
    /* Seconds a connection may take to send a request's headers, counted from the connection or
     * from the end of its previous request: a client that trickles them (slowloris) or sits idle
     * is disconnected then (0 = default 30). */
    unsigned header_timeout_s;
};

struct vd_http;     /* server */
struct vd_http_req; /* one request; owned by the server; valid until the reply is sent */
typedef void (*vd_http_handler)(struct vd_http_req *r, void *ctx);

enum { VD_HTTP_STREAM_BODY = 1 }; /* route flag: body delivered in chunks, no size limit */

/*
 * Streamed request bodies (vd_http_route_stream). Order of calls for one request, all on pool
 * threads except where the application itself calls back:
 *   begin(r)            once, when the headers are in (may reply at once, e.g. 404, then no
 *                       chunk or end follows and the body is discarded);
 *   chunk(r, data, len) zero or more times, in body order;
 *   end(r)              once when the body is complete, unless a reply was already given;
 *   abort(r)            instead of end when the client went away (or the server stopped) before
 *                       a reply: free the request's state, give no reply.
 *
 * chunk's return value:
 *   0               the data was consumed; the next piece follows when it arrives.
 *   VD_HTTP_PAUSE   the data WAS consumed too (the callee keeps what it needs: `data` is only
 *                   valid during the call), and no further chunk is presented until
 *                   vd_http_resume_body(r) is called (from any thread, even before chunk returns).
 *                   The connection is suspended meanwhile; no pool thread waits.
 *   < 0             failure: no further chunk is presented; the rest of the body is read and
 *                   discarded (at most max(max_body, 4 MiB) bytes, beyond that the connection
 *                   is closed without a reply);
 *                   then end(r) is called if no reply was given yet, and must reply.
 * A reply given at any time during the body (from chunk or another thread) also stops chunk
 * delivery; the reply is sent once the body has been read (discarded).
 */
struct vd_http_stream_ops {
    int (*chunk)(struct vd_http_req *r, const char *data, size_t len, void *ctx);
    void (*end)(struct vd_http_req *r, void *ctx);   /* body complete: must reply (now or later) */
    void (*abort)(struct vd_http_req *r, void *ctx); /* client went away: free state, no reply */
};
#define VD_HTTP_PAUSE 1

/* Creates a server (not yet listening). Copies everything in `o` (keys included). Errors:
 * VD_EINVAL (bad bind address, malformed "sha256:" digest, bad role). Free with vd_http_free. */
int vd_http_new(const struct vd_http_opts *o, struct vd_http **out, struct vd_err *err);

/* Routes: pattern segments "{name}" capture one non-empty path segment (URL-decoded). Method "GET"
 * also answers HEAD. min_role: VD_ROLE_NONE = open. Register all routes before vd_http_start.
 * Unknown path -> 404 JSON; known path with other method -> 405 JSON. The pattern string and
 * ctx are borrowed: they must outlive the server (string literals in practice).
 * Returns 0, VD_EINVAL (malformed pattern, server started) or VD_ENOMEM. */
int vd_http_route(struct vd_http *h, const char *method, const char *pattern, enum vd_role min_role,
                  vd_http_handler fn, void *ctx);
/* As vd_http_route, for a route whose body is streamed: `begin` runs when the headers are in,
 * then `ops` (borrowed, must outlive the server) as described above. */
int vd_http_route_stream(struct vd_http *h, const char *method, const char *pattern,
                         enum vd_role min_role, vd_http_handler begin,
                         const struct vd_http_stream_ops *ops, void *ctx);

/* Binds and starts the pool. Errors: VD_EIO (bind failed: address in use...), VD_EINVAL. */
int vd_http_start(struct vd_http *h, struct vd_err *err);
/* Port actually bound (useful with port 0); 0 before vd_http_start. */
uint16_t vd_http_port(const struct vd_http *h);

/* Graceful stop: stop accepting; wait up to deadline_ms for in-flight and suspended requests to
 * be answered (new requests on open connections get 503 meanwhile); answer the rest 503; stop
 * the daemon (all suspended connections are resumed first). The forced 503s get up to 1 s more to
 * leave; one parked in the middle of a request body leaves once the client has sent the rest of
 * it, else the connection is closed. A late reply from the application to a request that was
 * answered 503 is accepted and discarded, until vd_http_free. Idempotent. */
void vd_http_stop(struct vd_http *h, unsigned deadline_ms); /* not from a handler (joins the pool) */
/* Stops if needed, then frees everything; a stream request still held by the application gets
 * its abort callback. No call on this server or its requests may follow. */
void vd_http_free(struct vd_http *h);

/* GET /metrics exposes vectord_http_requests_total{route,method,status} (route = the pattern, or
 * "unmatched"; status 499 = client gone before the reply), the histogram
 * vectord_http_request_duration_seconds{route,method,le} and vectord_http_requests_in_flight.
 * Extra Prometheus text appended to GET /metrics (points per collection, storage bytes...).
 * Called on a pool thread per scrape; fn appends to `out` with the vd_buf functions. */
void vd_http_set_metrics_hook(struct vd_http *h, void (*fn)(struct vd_buf *out, void *ctx), void *ctx);
/* Readiness for GET /readyz (200 when fn returns true, else 503). Without a hook: ready. */
void vd_http_set_ready_hook(struct vd_http *h, bool (*fn)(void *ctx), void *ctx);

/* Request accessors (valid while the request is alive). Returned strings belong to the request. */
const char *vd_http_method(const struct vd_http_req *r);
/* Path as received, without the query, still percent-encoded. */
const char *vd_http_path(const struct vd_http_req *r);
const char *vd_http_param(const struct vd_http_req *r, const char *name); /* path capture */
/* Query parameter, percent- and '+'-decoded; "" for "?flag"; NULL if absent. First one wins. */
const char *vd_http_query(const struct vd_http_req *r, const char *name);
const char *vd_http_header(const struct vd_http_req *r, const char *name); /* case-insensitive */
/* Whole body (non-stream routes), NUL-terminated for convenience; len may be NULL. Never NULL. */
const char *vd_http_body(const struct vd_http_req *r, size_t *len);
enum vd_role vd_http_role(const struct vd_http_req *r);
uint64_t vd_http_request_id(const struct vd_http_req *r);
/* The request's id as the logs and the X-Request-Id reply header show it: the client's
 * X-Request-Id when it is 1..64 visible ASCII characters, else 16 hex digits made here. */
const char *vd_http_request_rid(const struct vd_http_req *r);
/* Per-request user pointer (for stream routes and deferred replies); the server never frees it. */
void vd_http_set_user(struct vd_http_req *r, void *p);
void *vd_http_user(const struct vd_http_req *r);

/* Replies: exactly one per request; may be called from ANY thread, inside the handler or later
 * (then the connection is suspended meanwhile, not blocking a pool thread). After the call the
 * request must not be touched. They take ownership of nothing: the bytes are copied, or stolen
 * where stated. On allocation failure the client gets a bare 500 or the connection is closed. */
/* {"result": <result_json>, "status": "ok", "time": <seconds since the request arrived>} */
void vd_http_reply_ok(struct vd_http_req *r, const char *result_json, size_t len);
/* {"status": {"error": "<msg>"}, "time": t} with HTTP status `status` */
void vd_http_reply_error(struct vd_http_req *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Status from vd_err_http_status(e->code), message e->msg (or vd_strerror when empty). */
void vd_http_reply_err(struct vd_http_req *r, const struct vd_err *e);
/* Raw reply (content type given), body->data stolen (body is left empty, still to be released
 * by its owner as usual). A body with oom set is answered 500. */
void vd_http_reply_raw(struct vd_http_req *r, int status, const char *content_type, struct vd_buf *body);
/* Streamed reply (exports): fill(ctx, buf, max) returns bytes written (>0), 0 at the end, or
 * <0 on error (connection closed); called on a pool thread; free_ctx(ctx) (may be NULL) is
 * called exactly once when the reply is over, whatever happened. Chunked encoding. */
void vd_http_reply_stream(struct vd_http_req *r, int status, const char *content_type,
                          long (*fill)(void *ctx, char *buf, size_t max), void (*free_ctx)(void *ctx),
                          void *ctx);
/* Streamed body routes: continue after VD_HTTP_PAUSE. Any thread. */
void vd_http_resume_body(struct vd_http_req *r);
/* Non-stream routes: a handler that must wait for something (a cluster catch-up) returns
 * without replying; the completion calls vd_http_redispatch(r, note) from any thread, and the
 * route's handler runs again from the start on a pool thread, where vd_http_redispatched tells
 * it how often that happened and the last note. No pool thread waits meanwhile. The caller of
 * vd_http_redispatch hands r back to the server: it must not use r afterwards (if the client
 * left meanwhile, the handler does not run again and r is freed). Ignored once a reply was
 * given (the server's 503 at shutdown). */
void vd_http_redispatch(struct vd_http_req *r, int note);
unsigned vd_http_redispatched(struct vd_http_req *r, int *note);

/* ---- helpers also used by tests and other modules ----------------------------------------- */

/* Percent-decodes src[0..len) into dst (at least len+1 bytes), NUL-terminated. plus_space turns
 * '+' into ' ' (query strings). Returns the decoded length, or VD_EINVAL for a malformed escape
 * or an escaped NUL. */
long vd_http_url_decode(const char *src, size_t len, char *dst, bool plus_space);

#endif
