/*
 * The libmicrohttpd server: request lifecycle, suspend/resume, replies from any thread, streamed
 * bodies and replies, built-in routes and the graceful stop.
 *
 * Lifetime of a request. A struct vd_http_req is created on the first access-handler call of a
 * request and is reference counted: one reference belongs to the connection (dropped when
 * libmicrohttpd reports the request completed), one to the application while it owes a reply
 * (taken when its handler or stream `begin` is called, dropped by its reply or after `abort`),
 * one to a streamed reply while libmicrohttpd holds it. So a reply that arrives late, after a
 * forced 503 at shutdown, still finds the request in memory and is discarded.
 *
 * Suspension. libmicrohttpd only lets the connection's own thread queue a response, and only in
 * an access-handler call. A reply given elsewhere is parked in r->resp; if the connection was
 * suspended waiting for it, the replier resumes it and libmicrohttpd calls the access handler
 * again, which queues the parked response. r->mu orders "suspend unless a reply is parked" in the
 * connection thread against "park, then resume if suspended" in the replier, so no wake-up is lost.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "http_int.h"

#define DEFAULT_MAX_BODY ((size_t)32 << 20)
#define FORCED_GRACE_MS 1000
#define DISCARD_MIN ((size_t)4 << 20)
#define WAKE_WAIT_MS 1000u
#define DEFAULT_IDLE_TIMEOUT_S 30u
#define DEFAULT_MAX_CONNS 1024u
#define DEFAULT_BODY_BUDGET ((size_t)512 << 20)
#define DEFAULT_HEADER_TIMEOUT_S 30u
#define REAPER_PERIOD_MS 250u
#define PREALLOC_MAX ((unsigned long long)1 << 20)

struct query_kv {
    char *key, *val;
};

struct vd_http_req {
    struct vd_http *h;
    struct MHD_Connection *conn;
    struct vd_http_route *route; /* NULL: unmatched */
    atomic_int refs;
    uint64_t id;
    char rid[VD_REQID_MAX + 1]; /* X-Request-Id: the client's when usable, else one of ours */
    uint64_t t0_ns;
    char method[16];
    char *path; /* raw, without the query */
    struct {
        const char *name; /* borrowed from the route */
        char *val;
    } params[VD_HTTP_MAX_PARAMS];
    struct query_kv *query;
    size_t n_query;
    bool bad_query;
    enum vd_role role;
    void *user;

    /* body (connection thread only) */
    char *body;
    size_t body_len, body_cap;
    size_t discarded;
    bool discard;    /* stop delivering the body; read and drop the rest */
    bool too_big;
    bool over_budget;     /* the body would exceed the server's in-flight body budget */
    size_t body_reserved; /* bytes of h->body_inflight this request holds */
    bool dispatched; /* handler (or stream end) called, or the server answered */
    bool queued;     /* the reply is with libmicrohttpd: never suspend again */

    /* shared with repliers, guarded by mu */
    pthread_mutex_t mu;
    struct MHD_Response *resp; /* parked reply, not yet queued */
    int resp_status;
    size_t resp_bytes;
    bool replied;  /* a reply was given (parked or queued); later ones are discarded */
    bool forced;   /* that reply was the server's 503 at shutdown */
    bool user_ref; /* the application holds the request and owes a reply */
    bool ended;    /* stream end() called: abort no longer applies */
    bool suspended, paused, resume_pending;
    bool redo;            /* vd_http_redispatch: run the handler again instead of suspending */
    unsigned redispatches;
    int redo_note;
    atomic_bool wake_pending; /* resumed, libmicrohttpd has not called back yet */

    int status_sent;
    atomic_uint_fast64_t bytes_out;
    struct vd_http_req *prev, *next; /* h->live, guarded by h->mu */
};

static void req_put(struct vd_http_req *r);

/* ---- small helpers ----------------------------------------------------------------------- */

static double req_seconds(const struct vd_http_req *r)
{
    return (double)(vd_mono_ns() - r->t0_ns) / 1e9;
}

void vd__http_req_set_param(struct vd_http_req *r, unsigned i, const char *name, char *value)
{
    free(r->params[i].val);
    r->params[i].name = name;
    r->params[i].val = value;
}

static void req_free(struct vd_http_req *r)
{
    for (unsigned i = 0; i < VD_HTTP_MAX_PARAMS; i++)
        free(r->params[i].val);
    for (size_t i = 0; i < r->n_query; i++) {
        free(r->query[i].key);
        free(r->query[i].val);
    }
    free(r->query);
    free(r->path);
    free(r->body);
    if (r->resp)
        MHD_destroy_response(r->resp);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static void req_unlink_locked(struct vd_http *h, struct vd_http_req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        h->live = r->next;
    if (r->next)
        r->next->prev = r->prev;
}

static void req_put(struct vd_http_req *r)
{
    if (atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    struct vd_http *h = r->h; /* NULL: the server is gone (vd_http_free left it to its replier) */
    if (h) {
        pthread_mutex_lock(&h->mu);
        req_unlink_locked(h, r);
        pthread_mutex_unlock(&h->mu);
    }
    req_free(r);
}

/* Builds a response around a malloc'd buffer (ownership passes to libmicrohttpd). */
static struct MHD_Response *resp_from(char *data, size_t len, const char *ctype)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(data);
        return NULL;
    }
    if (ctype)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    return resp;
}

/* Last resort when a reply cannot be built (allocation failure): an empty 500. */
static struct MHD_Response *resp_bare(void)
{
    return MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
}

/*
 * Parks `resp` as the request's reply and wakes the connection if it sleeps. The one place
 * every reply goes through. A second reply is a bug in the caller, except after the server's
 * forced 503, where the application's late reply is expected and simply dropped.
 */
/* Resumes a suspended connection; the caller counted itself in h->waking under the request's
 * lock. vd_http_stop waits for the count to drop: a resume still on its way when libmicrohttpd
 * stops would leave a suspended connection behind, which libmicrohttpd answers with abort(). */
/* Under r->mu, when a wake is decided: counted twice, until MHD_resume_connection returns
 * (h->waking) and until libmicrohttpd has taken the connection back (r->wake_pending, cleared by
 * the next access-handler call or the completion). */
static void wake_begin(struct vd_http_req *r)
{
    atomic_fetch_add(&r->h->waking, 1);
    if (!atomic_exchange(&r->wake_pending, true))
        atomic_fetch_add(&r->h->wakes_unseen, 1);
}

static void wake_seen(struct vd_http_req *r)
{
    if (atomic_exchange(&r->wake_pending, false))
        atomic_fetch_sub(&r->h->wakes_unseen, 1);
}

static void wake_conn(struct vd_http *h, struct MHD_Connection *conn)
{
    MHD_resume_connection(conn);
    atomic_fetch_sub(&h->waking, 1);
}

static void deliver(struct vd_http_req *r, struct MHD_Response *resp, int status, size_t nbytes)
{
    bool drop_user = false, wake = false;
    struct MHD_Connection *conn;

    if (!resp) {
        resp = resp_bare();
        status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        nbytes = 0;
    }
    pthread_mutex_lock(&r->mu);
    if (r->replied) {
        bool late = r->forced && r->user_ref;
        if (late) {
            r->user_ref = false;
            drop_user = true;
        }
        char rid[VD_REQID_MAX + 1];
        memcpy(rid, r->rid, sizeof rid);
        pthread_mutex_unlock(&r->mu);
        if (!late)
            vd_log_error("http: second reply to request rid=%s ignored", rid);
        if (resp)
            MHD_destroy_response(resp);
        if (drop_user)
            req_put(r);
        return;
    }
    r->replied = true;
    r->resp = resp;
    r->resp_status = status;
    r->resp_bytes = nbytes;
    drop_user = r->user_ref;
    r->user_ref = false;
    wake = r->suspended;
    r->suspended = r->paused = false;
    if (wake)
        wake_begin(r);
    conn = r->conn;
    struct vd_http *h = r->h;
    pthread_mutex_unlock(&r->mu);
    /* The connection cannot progress while suspended, so conn and r stay valid until resumed. */
    if (wake)
        wake_conn(h, conn);
    if (drop_user)
        req_put(r);
}

static void reply_json_error(struct vd_http_req *r, int status, const char *msg)
{
    size_t esc = vd__http_json_escape(NULL, 0, msg);
    size_t cap = esc + 64;
    char *buf = malloc(cap);
    if (!buf) {
        deliver(r, NULL, 0, 0);
        return;
    }
    int n = snprintf(buf, cap, "{\"status\":{\"error\":");
    vd__http_json_escape(buf + n, cap - (size_t)n, msg);
    n += (int)esc;
    n += snprintf(buf + n, cap - (size_t)n, "},\"time\":%.9g}", req_seconds(r));
    deliver(r, resp_from(buf, (size_t)n, "application/json"), status, (size_t)n);
}

/* ---- public replies ---------------------------------------------------------------------- */

void vd_http_reply_ok(struct vd_http_req *r, const char *result_json, size_t len)
{
    size_t cap = len + 64;
    char *buf = malloc(cap);
    if (!buf) {
        deliver(r, NULL, 0, 0);
        return;
    }
    memcpy(buf, "{\"result\":", 10);
    memcpy(buf + 10, result_json, len);
    int n = snprintf(buf + 10 + len, cap - 10 - len, ",\"status\":\"ok\",\"time\":%.9g}", req_seconds(r));
    size_t total = 10 + len + (size_t)n;
    deliver(r, resp_from(buf, total, "application/json"), MHD_HTTP_OK, total);
}

void vd_http_reply_error(struct vd_http_req *r, int status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    reply_json_error(r, status, msg);
}

void vd_http_reply_err(struct vd_http_req *r, const struct vd_err *e)
{
    int status = vd_err_http_status(e->code);
    if (status >= 500)
        vd_log_error("http: request rid=%s: %s", r->rid,
                     e->msg[0] ? e->msg : vd_strerror(e->code));
    reply_json_error(r, status, e->msg[0] ? e->msg : vd_strerror(e->code));
}

void vd_http_reply_raw(struct vd_http_req *r, int status, const char *content_type, struct vd_buf *body)
{
    size_t len = 0;
    char *data = vd_buf_steal(body, &len);
    if (!data) {
        reply_json_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory building the reply");
        return;
    }
    struct MHD_Response *resp = resp_from(data, len, content_type);
    deliver(r, resp, status, len);
}

struct stream_reply {
    struct vd_http_req *r; /* holds a reference until libmicrohttpd drops the response */
    long (*fill)(void *ctx, char *buf, size_t max);
    void (*free_ctx)(void *ctx);
    void *ctx;
};

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct stream_reply *s = cls;
    long n = s->fill(s->ctx, buf, max);
    if (n == 0)
        return MHD_CONTENT_READER_END_OF_STREAM;
    if (n < 0)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    if ((size_t)n > max) /* a fill bug must not become an overread */
        return MHD_CONTENT_READER_END_WITH_ERROR;
    atomic_fetch_add(&s->r->bytes_out, (uint64_t)n);
    return (ssize_t)n;
}

static void stream_free(void *cls)
{
    struct stream_reply *s = cls;
    if (s->free_ctx)
        s->free_ctx(s->ctx);
    req_put(s->r);
    free(s);
}

void vd_http_reply_stream(struct vd_http_req *r, int status, const char *content_type,
                          long (*fill)(void *ctx, char *buf, size_t max), void (*free_ctx)(void *ctx),
                          void *ctx)
{
    struct stream_reply *s = malloc(sizeof(*s));
    if (!s) {
        if (free_ctx)
            free_ctx(ctx);
        deliver(r, NULL, 0, 0);
        return;
    }
    s->r = r;
    s->fill = fill;
    s->free_ctx = free_ctx;
    s->ctx = ctx;
    atomic_fetch_add(&r->refs, 1);
    /* 64 KiB blocks: large enough that an export is not a storm of tiny chunks. */
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 * 1024, stream_read, s, stream_free);
    if (!resp) {
        stream_free(s);
        deliver(r, NULL, 0, 0);
        return;
    }
    if (content_type)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    deliver(r, resp, status, 0);
}

void vd_http_redispatch(struct vd_http_req *r, int note)
{
    pthread_mutex_lock(&r->mu);
    if (r->replied) {
        /* the server's 503 at shutdown came first: like a late reply, this lets go of r */
        bool late = r->forced && r->user_ref;
        if (late)
            r->user_ref = false;
        pthread_mutex_unlock(&r->mu);
        if (late)
            req_put(r);
        return;
    }
    r->redo = true;
    r->redo_note = note;
    r->redispatches++;
    bool wake = r->suspended;
    r->suspended = false;
    if (wake)
        wake_begin(r);
    struct MHD_Connection *conn = r->conn;
    struct vd_http *h = r->h;
    pthread_mutex_unlock(&r->mu);
    if (wake)
        wake_conn(h, conn);
}

unsigned vd_http_redispatched(struct vd_http_req *r, int *note)
{
    pthread_mutex_lock(&r->mu);
    unsigned n = r->redispatches;
    if (note)
        *note = r->redo_note;
    pthread_mutex_unlock(&r->mu);
    return n;
}

void vd_http_resume_body(struct vd_http_req *r)
{
    bool wake = false, do_abort = false;
    struct MHD_Connection *conn;
    pthread_mutex_lock(&r->mu);
    if (r->forced) {
        /* The server answered 503 at shutdown while the body was paused: the application learns
         * it now, through abort, and lets go of the request. */
        do_abort = r->user_ref && !r->ended;
        if (do_abort)
            r->user_ref = false;
    } else if (!r->replied) {
        if (r->suspended && r->paused) {
            r->suspended = r->paused = false;
            wake = true;
            wake_begin(r);
        } else {
            r->resume_pending = true;
        }
    }
    conn = r->conn;
    pthread_mutex_unlock(&r->mu);
    if (wake)
        wake_conn(r->h, conn);
    if (do_abort) {
        r->route->ops->abort(r, r->route->ctx);
        req_put(r);
    }
}

/* ---- accessors --------------------------------------------------------------------------- */

const char *vd_http_method(const struct vd_http_req *r) { return r->method; }
const char *vd_http_path(const struct vd_http_req *r) { return r->path; }
enum vd_role vd_http_role(const struct vd_http_req *r) { return r->role; }
uint64_t vd_http_request_id(const struct vd_http_req *r) { return r->id; }
const char *vd_http_request_rid(const struct vd_http_req *r) { return r->rid; }
void vd_http_set_user(struct vd_http_req *r, void *p) { r->user = p; }
void *vd_http_user(const struct vd_http_req *r) { return r->user; }

const char *vd_http_param(const struct vd_http_req *r, const char *name)
{
    for (unsigned i = 0; i < VD_HTTP_MAX_PARAMS; i++)
        if (r->params[i].name && r->params[i].val && strcmp(r->params[i].name, name) == 0)
            return r->params[i].val;
    return NULL;
}

const char *vd_http_query(const struct vd_http_req *r, const char *name)
{
    for (size_t i = 0; i < r->n_query; i++)
        if (strcmp(r->query[i].key, name) == 0)
            return r->query[i].val;
    return NULL;
}

const char *vd_http_header(const struct vd_http_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *vd_http_body(const struct vd_http_req *r, size_t *len)
{
    if (len)
        *len = r->body_len;
    return r->body ? r->body : "";
}

/* ---- the access handler ------------------------------------------------------------------ */

static enum MHD_Result queue_parked(struct vd_http_req *r)
{
    pthread_mutex_lock(&r->mu);
    struct MHD_Response *resp = r->resp;
    int status = r->resp_status;
    size_t nbytes = r->resp_bytes;
    r->resp = NULL;
    pthread_mutex_unlock(&r->mu);
    if (!resp)
        return MHD_YES;
    r->dispatched = r->queued = true;
    r->status_sent = status;
    MHD_add_response_header(resp, "X-Request-Id", r->rid);
    atomic_fetch_add(&r->bytes_out, (uint64_t)nbytes);
    enum MHD_Result ret = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* Queues the parked reply, or suspends the connection until one is parked. */
static enum MHD_Result finish_or_suspend(struct vd_http_req *r)
{
    /* libmicrohttpd may still deliver the body (and the final call) of a request answered early:
     * there is nothing left to do, and suspending would strand the connection. */
    if (r->queued)
        return MHD_YES;
    pthread_mutex_lock(&r->mu);
    while (!r->resp && r->redo) {
        /* the application asked for its handler again (vd_http_redispatch), here on a pool
         * thread rather than on the thread its wait completed on */
        r->redo = false;
        pthread_mutex_unlock(&r->mu);
        r->route->fn(r, r->route->ctx);
        pthread_mutex_lock(&r->mu);
    }
    if (!r->resp) {
        /* Never suspend twice: libmicrohttpd would insert the connection twice in its list. */
        if (!r->suspended) {
            r->suspended = true;
            MHD_suspend_connection(r->conn);
        }
        pthread_mutex_unlock(&r->mu);
        return MHD_YES;
    }
    pthread_mutex_unlock(&r->mu);
    return queue_parked(r);
}

/* Hands the request to the application unless the hard stop has begun. */
static bool take_user_ref(struct vd_http_req *r)
{
    struct vd_http *h = r->h;
    pthread_mutex_lock(&h->mu);
    bool ok = !h->hard_stop;
    if (ok) {
        pthread_mutex_lock(&r->mu);
        r->user_ref = true;
        atomic_fetch_add(&r->refs, 1);
        pthread_mutex_unlock(&r->mu);
    }
    pthread_mutex_unlock(&h->mu);
    return ok;
}

static bool has_reply(struct vd_http_req *r)
{
    pthread_mutex_lock(&r->mu);
    bool v = r->replied;
    pthread_mutex_unlock(&r->mu);
    return v;
}

static enum MHD_Result collect_query(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    struct vd_http_req *r = cls;
    if (r->bad_query)
        return MHD_NO;
    if (!value)
        value = "";
    size_t kl = strlen(key), vl = strlen(value);
    struct query_kv *q = realloc(r->query, (r->n_query + 1) * sizeof(*q));
    if (!q) {
        r->bad_query = true;
        return MHD_NO;
    }
    r->query = q;
    char *k = malloc(kl + 1), *v = malloc(vl + 1);
    if (!k || !v || vd_http_url_decode(key, kl, k, true) < 0 || vd_http_url_decode(value, vl, v, true) < 0) {
        free(k);
        free(v);
        r->bad_query = true;
        return MHD_NO;
    }
    q[r->n_query].key = k;
    q[r->n_query].val = v;
    r->n_query++;
    return MHD_YES;
}

static const char *presented_key(struct MHD_Connection *conn)
{
    const char *k = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "api-key");
    if (k)
        return k;
    const char *a = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (a && strncasecmp(a, "Bearer ", 7) == 0) {
        a += 7;
        while (*a == ' ')
            a++;
        return a;
    }
    return NULL;
}

/* Reserves room for `total` body bytes of r in the server's in-flight budget (connection
 * thread). False, reserving nothing more, when that would go over the budget. */
static bool body_reserve(struct vd_http_req *r, size_t total)
{
    struct vd_http *h = r->h;
    if (total <= r->body_reserved)
        return true;
    size_t more = total - r->body_reserved;
    if (atomic_fetch_add(&h->body_inflight, more) + more > h->body_budget) {
        atomic_fetch_sub(&h->body_inflight, more);
        return false;
    }
    r->body_reserved = total;
    return true;
}

static void body_release(struct vd_http_req *r)
{
    atomic_fetch_sub(&r->h->body_inflight, r->body_reserved);
    r->body_reserved = 0;
}

static struct vd_http_conn *conn_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* Marks the connection's request begun (its headers are in) or over; tells whether the server
 * holds more connections than its limit. */
static bool conn_mark(struct vd_http *h, struct MHD_Connection *conn, bool in_request)
{
    struct vd_http_conn *c = conn_of(conn);
    pthread_mutex_lock(&h->conn_mu);
    if (c) {
        c->in_request = in_request;
        c->since_ns = vd_mono_ns();
    }
    bool over = h->n_conns > h->max_conns;
    pthread_mutex_unlock(&h->conn_mu);
    return over;
}

/* The request's id: the client's X-Request-Id when it is usable as one (vd_reqid_valid: it goes
 * into logs and data messages as is), else a new one, so a bad or forged header is never echoed
 * or logged. */
static void request_id(struct MHD_Connection *conn, char *out)
{
    const char *x = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    size_t n = x ? strnlen(x, VD_REQID_MAX + 1) : 0;
    if (vd_reqid_valid(x, n)) {
        memcpy(out, x, n);
        out[n] = '\0';
    } else {
        vd_reqid_new(out);
    }
}

static enum MHD_Result on_first(struct vd_http *h, struct MHD_Connection *conn, const char *url,
                                const char *method, void **con_cls)
{
    struct vd_http_req *r = calloc(1, sizeof(*r));
    if (!r)
        return MHD_NO;
    r->path = strdup(url);
    if (!r->path) {
        free(r);
        return MHD_NO;
    }
    pthread_mutex_init(&r->mu, NULL);
    r->h = h;
    r->conn = conn;
    atomic_init(&r->refs, 1);
    atomic_init(&r->bytes_out, 0);
    atomic_init(&r->wake_pending, false);
    r->id = atomic_fetch_add(&h->next_id, 1);
    request_id(conn, r->rid);
    vd_reqid_set(r->rid);
    r->t0_ns = vd_mono_ns();
    snprintf(r->method, sizeof(r->method), "%s", method);
    pthread_mutex_lock(&h->mu);
    r->next = h->live;
    if (h->live)
        h->live->prev = r;
    h->live = r;
    h->n_live++;
    pthread_mutex_unlock(&h->mu);
    *con_cls = r;

    bool too_many = conn_mark(h, conn, true);
    if (atomic_load(&h->stopping)) {
        reply_json_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "server is shutting down");
        MHD_add_response_header(r->resp, MHD_HTTP_HEADER_CONNECTION, "close");
        return queue_parked(r);
    }
    if (too_many) {
        vd_http_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE,
                            "too many connections (the limit is %u); retry later", h->max_conns);
        if (r->resp)
            MHD_add_response_header(r->resp, MHD_HTTP_HEADER_CONNECTION, "close");
        return queue_parked(r);
    }
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, collect_query, r);
    bool known = false, bad = false;
    r->route = vd__http_match(h, method, url, r, &known, &bad);
    if (bad || r->bad_query) {
        r->route = NULL;
        reply_json_error(r, MHD_HTTP_BAD_REQUEST, "malformed percent-encoding in the URL");
        return queue_parked(r);
    }
    if (!r->route) {
        if (known)
            vd_http_reply_error(r, MHD_HTTP_METHOD_NOT_ALLOWED, "method %s not allowed on this path", r->method);
        else
            reply_json_error(r, MHD_HTTP_NOT_FOUND, "not found");
        return queue_parked(r);
    }
    struct vd_http_route *rt = r->route;
    if (h->n_keys == 0) {
        r->role = VD_ROLE_ADMIN;
    } else {
        bool key_known;
        r->role = vd__http_key_role(h, presented_key(conn), &key_known);
        if (rt->min_role > VD_ROLE_NONE) {
            if (!key_known) {
                reply_json_error(r, MHD_HTTP_UNAUTHORIZED,
                                 "missing or invalid API key (send it as 'api-key' or 'Authorization: Bearer')");
                return queue_parked(r);
            }
            if (r->role < rt->min_role) {
                reply_json_error(r, MHD_HTTP_FORBIDDEN, "this API key may not perform this operation");
                return queue_parked(r);
            }
        }
    }
    if (rt->ops) {
        if (!take_user_ref(r)) {
            reply_json_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "server is shutting down");
            return queue_parked(r);
        }
        rt->fn(r, rt->ctx);
        /* A reply from begin goes out now; libmicrohttpd then skips the body. */
        return queue_parked(r);
    }
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno || end == cl || n > h->max_body) {
            vd_http_reply_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "request body is larger than the limit of %zu bytes",
                                h->max_body);
            return queue_parked(r);
        }
        if (!body_reserve(r, (size_t)n)) {
            vd_http_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE,
                                "request bodies in flight are over the server's budget of %zu "
                                "bytes; retry later",
                                h->body_budget);
            if (r->resp)
                MHD_add_response_header(r->resp, MHD_HTTP_HEADER_CONNECTION, "close");
            return queue_parked(r);
        }
        if (n > 0) {
            /* Sized from the header, but a header costs nothing to send: past 1 MiB the buffer
             * grows as the bytes actually arrive. */
            size_t cap = (size_t)(n < PREALLOC_MAX ? n : PREALLOC_MAX) + 1;
            r->body = malloc(cap);
            if (!r->body)
                return MHD_NO;
            r->body_cap = cap;
        }
    }
    return MHD_YES;
}

static enum MHD_Result on_body(struct vd_http_req *r, const char *data, size_t *size)
{
    struct vd_http *h = r->h;
    size_t n = *size;
    /* libmicrohttpd 0.9.75 goes on presenting the pieces of a chunked body already in its buffer
     * after the handler suspended the connection (its loop over chunks does not look at the
     * suspension). Leave them unconsumed: it keeps them and presents them again once resumed.
     * Taking them would hand the application data past its pause, and a second suspend of a
     * suspended connection corrupts libmicrohttpd's connection lists (abort at stop). */
    pthread_mutex_lock(&r->mu);
    bool asleep = r->suspended;
    pthread_mutex_unlock(&r->mu);
    if (asleep)
        return MHD_YES;
    *size = 0;
    if (!r->discard && has_reply(r))
        r->discard = true;
    if (r->discard) {
        r->discarded += n;
        /* Reading a huge body only to drop it helps nobody: past one more limit's worth (at least
         * DISCARD_MIN), close the connection instead of answering. */
        size_t cap = h->max_body > DISCARD_MIN ? h->max_body : DISCARD_MIN;
        return r->discarded > cap ? MHD_NO : MHD_YES;
    }
    struct vd_http_route *rt = r->route;
    if (rt->ops) {
        int rc = rt->ops->chunk(r, data, n, rt->ctx);
        if (rc < 0) {
            r->discard = true;
        } else if (rc == VD_HTTP_PAUSE) {
            pthread_mutex_lock(&r->mu);
            if (r->replied) {
                r->discard = true;
            } else if (r->resume_pending) {
                r->resume_pending = false;
            } else {
                r->suspended = r->paused = true;
                MHD_suspend_connection(r->conn);
            }
            pthread_mutex_unlock(&r->mu);
        }
        return MHD_YES;
    }
    if (r->body_len + n > h->max_body) {
        /* Chunked bodies have no Content-Length to refuse up front: stop buffering here. */
        r->too_big = r->discard = true;
        r->discarded = 0; /* the cap counts what is dropped beyond the limit */
        free(r->body);
        r->body = NULL;
        r->body_len = r->body_cap = 0;
        return MHD_YES;
    }
    if (!body_reserve(r, r->body_len + n)) {
        /* a chunked body announced no size: it is held to the budget as it arrives */
        r->over_budget = r->discard = true;
        r->discarded = 0;
        free(r->body);
        r->body = NULL;
        r->body_len = r->body_cap = 0;
        body_release(r);
        return MHD_YES;
    }
    if (r->body_len + n + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 4096;
        while (cap < r->body_len + n + 1)
            cap *= 2;
        if (cap > h->max_body + 1)
            cap = h->max_body + 1;
        char *b = realloc(r->body, cap);
        if (!b)
            return MHD_NO;
        r->body = b;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return MHD_YES;
}

static enum MHD_Result on_body_done(struct vd_http_req *r)
{
    struct vd_http_route *rt = r->route;
    if (has_reply(r) || r->dispatched)
        return finish_or_suspend(r);
    r->dispatched = true;
    if (r->too_big) {
        vd_http_reply_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "request body is larger than the limit of %zu bytes",
                            r->h->max_body);
        return finish_or_suspend(r);
    }
    if (r->over_budget) {
        vd_http_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE,
                            "request bodies in flight are over the server's budget of %zu bytes; "
                            "retry later",
                            r->h->body_budget);
        return finish_or_suspend(r);
    }
    if (rt->ops) {
        pthread_mutex_lock(&r->h->mu); /* lock order: server, then request */
        bool stop = r->h->hard_stop;
        pthread_mutex_lock(&r->mu);
        bool held = r->user_ref;
        if (held && !stop)
            r->ended = true;
        if (held && stop)
            r->user_ref = false;
        pthread_mutex_unlock(&r->mu);
        pthread_mutex_unlock(&r->h->mu);
        if (held && stop) {
            rt->ops->abort(r, rt->ctx);
            req_put(r);
            reply_json_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "server is shutting down");
        } else if (held) {
            rt->ops->end(r, rt->ctx);
        }
        return finish_or_suspend(r);
    }
    if (!take_user_ref(r)) {
        reply_json_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "server is shutting down");
        return finish_or_suspend(r);
    }
    rt->fn(r, rt->ctx);
    return finish_or_suspend(r);
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                 const char *version, const char *upload_data, size_t *upload_data_size,
                                 void **con_cls)
{
    /* The application's code runs inside these calls (handlers, stream chunks, redispatches):
     * the thread's current request id (vd_reqid_current) is this request's meanwhile, so the
     * cluster's data requests it starts carry it. */
    struct vd_http_req *r = *con_cls;
    enum MHD_Result ret;
    if (!r) {
        ret = on_first(cls, conn, url, method, con_cls);
    } else {
        vd_reqid_set(r->rid);
        wake_seen(r);
        ret = *upload_data_size ? on_body(r, upload_data, upload_data_size) : on_body_done(r);
    }
    vd_reqid_set(NULL);
    return ret;
}

/* A raw path for the log: control bytes would let a client forge log lines. */
static const char *printable(const char *s, char *buf, size_t cap)
{
    size_t o = 0;
    for (; *s && o + 4 < cap; s++)
        buf[o++] = ((unsigned char)*s < 0x20 || *s == 0x7f) ? '?' : *s;
    if (*s) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = '\0';
    return buf;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct vd_http *h = cls;
    struct vd_http_req *r = *con_cls;
    if (!r)
        return;
    *con_cls = NULL;
    wake_seen(r);
    pthread_mutex_lock(&r->mu);
    bool do_abort = r->route && r->route->ops && r->user_ref && !r->ended && !r->forced;
    if (do_abort)
        r->user_ref = false;
    /* A redispatch asked for and not run: the client left (or the stop's 503 went) while the
     * connection was suspended. The application let go of r when it asked, so its reference is
     * dropped here; nobody else would reply and drop it. */
    bool drop_redo = r->redo && r->user_ref;
    if (drop_redo) {
        r->redo = false;
        r->user_ref = false;
    }
    /* A reply parked but never queued (the client left first) goes now: a streamed reply holds a
     * reference on r, which would otherwise never drop to zero. */
    struct MHD_Response *unsent = r->resp;
    r->resp = NULL;
    pthread_mutex_unlock(&r->mu);
    if (unsent)
        MHD_destroy_response(unsent);
    body_release(r);
    conn_mark(h, conn, false);
    if (do_abort) {
        r->route->ops->abort(r, r->route->ctx);
        req_put(r);
    }
    if (drop_redo)
        req_put(r);
    double secs = req_seconds(r);
    unsigned long long bytes = atomic_load(&r->bytes_out);
    int status = r->status_sent;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && status == 0)
        status = 499; /* closed before a reply, as nginx counts it */
    vd__http_stats_record(h, r->route, r->method, status, secs);
    char shown[128];
    const char *what = r->route ? r->route->pattern : printable(r->path, shown, sizeof(shown));
    vd_log_info("http %s %s %d %lluB %.3fms rid=%s%s", r->method, what, status, bytes, secs * 1e3,
                r->rid,
                toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection closed early)");
    pthread_mutex_lock(&h->mu);
    h->n_live--;
    pthread_cond_broadcast(&h->idle);
    pthread_mutex_unlock(&h->mu);
    req_put(r);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct vd_http *h = cls;
    if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        struct vd_http_conn *c = *socket_context;
        if (!c)
            return;
        /* libmicrohttpd closes the socket after this returns: the reaper, which shuts sockets
         * down under conn_mu, never sees a descriptor that was closed and reused */
        pthread_mutex_lock(&h->conn_mu);
        if (c->prev)
            c->prev->next = c->next;
        else
            h->conns = c->next;
        if (c->next)
            c->next->prev = c->prev;
        h->n_conns--;
        pthread_mutex_unlock(&h->conn_mu);
        free(c);
        *socket_context = NULL;
        return;
    }
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return;
    /* Small replies must not wait ~40 ms for the peer's delayed ACK. */
    int one = 1;
    setsockopt(ci->connect_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct vd_http_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return; /* untracked: no header deadline, not counted */
    c->fd = ci->connect_fd;
    c->since_ns = vd_mono_ns();
    pthread_mutex_lock(&h->conn_mu);
    c->next = h->conns;
    if (h->conns)
        h->conns->prev = c;
    h->conns = c;
    h->n_conns++;
    pthread_mutex_unlock(&h->conn_mu);
    *socket_context = c;
}

/* Disconnects clients that take longer than the header timeout to send a request's headers
 * (slowloris: a byte now and then keeps libmicrohttpd's idle timeout from firing). Shutting the
 * socket down makes libmicrohttpd's own thread see the end of the stream and close it. */
static void *reaper_main(void *arg)
{
    struct vd_http *h = arg;
    uint64_t limit = (uint64_t)h->header_timeout_s * 1000000000ull;
    pthread_mutex_lock(&h->conn_mu);
    while (!h->reaper_stop) {
        struct timespec until;
        vd_mono_deadline(&until, REAPER_PERIOD_MS);
        pthread_cond_timedwait(&h->conn_cv, &h->conn_mu, &until);
        uint64_t now = vd_mono_ns();
        for (struct vd_http_conn *c = h->conns; c; c = c->next) {
            if (!c->in_request && !c->cut && now - c->since_ns > limit) {
                c->cut = true;
                shutdown(c->fd, SHUT_RDWR);
            }
        }
    }
    pthread_mutex_unlock(&h->conn_mu);
    return NULL;
}

/* Keeps the URL as received so the router splits segments before decoding them. */
static size_t no_unescape(void *cls, struct MHD_Connection *c, char *s)
{
    return strlen(s);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char buf[512];
    vsnprintf(buf, sizeof(buf), fmt, ap);
    size_t n = strlen(buf);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    /* Mostly client errors (malformed requests, resets): useful when debugging only. */
    vd_log_debug("http: libmicrohttpd: %s", buf);
}

/* ---- built-in routes --------------------------------------------------------------------- */

static void reply_text(struct vd_http_req *r, int status, const char *text)
{
    size_t n = strlen(text);
    char *b = malloc(n + 1);
    if (!b) {
        deliver(r, NULL, 0, 0);
        return;
    }
    memcpy(b, text, n + 1);
    deliver(r, resp_from(b, n, "text/plain; charset=utf-8"), status, n);
}

/* GET /: Qdrant's shape ({"title", "version", "commit"}) with the Qdrant API version vectord
 * follows as "version", so that Qdrant's clients, which compare it with their own, accept the
 * server; vectord's own version in a field of its own. */
static void h_root(struct vd_http_req *r, void *ctx)
{
    struct vd_http *h = ctx;
    size_t ev = vd__http_json_escape(NULL, 0, h->version);
    size_t ec = vd__http_json_escape(NULL, 0, h->commit);
    size_t cap = ev + ec + 128;
    char *b = malloc(cap);
    if (!b) {
        deliver(r, NULL, 0, 0);
        return;
    }
    int n = snprintf(b, cap, "{\"title\":\"vectord\",\"version\":\"%s\",\"commit\":",
                     VD_HTTP_QDRANT_VERSION);
    n += (int)vd__http_json_escape(b + n, cap - (size_t)n, h->commit);
    n += snprintf(b + n, cap - (size_t)n, ",\"vectord_version\":");
    n += (int)vd__http_json_escape(b + n, cap - (size_t)n, h->version);
    b[n++] = '}';
    deliver(r, resp_from(b, (size_t)n, "application/json"), MHD_HTTP_OK, (size_t)n);
}

static void h_healthz(struct vd_http_req *r, void *ctx) { reply_text(r, MHD_HTTP_OK, "healthz check passed"); }
/* Qdrant answers /livez with the same text as /healthz */
static void h_livez(struct vd_http_req *r, void *ctx) { reply_text(r, MHD_HTTP_OK, "healthz check passed"); }

static void h_readyz(struct vd_http_req *r, void *ctx)
{
    struct vd_http *h = ctx;
    if (!h->ready_fn || h->ready_fn(h->ready_ctx))
        reply_text(r, MHD_HTTP_OK, "all shards are ready");
    else
        reply_text(r, MHD_HTTP_SERVICE_UNAVAILABLE, "not ready");
}

static void h_metrics(struct vd_http_req *r, void *ctx)
{
    struct vd_http *h = ctx;
    size_t len = 0;
    char *text = vd__http_metrics_render(h, &len);
    if (!text) {
        deliver(r, NULL, 0, 0);
        return;
    }
    if (h->metrics_fn) {
        struct vd_buf extra;
        vd_buf_init(&extra);
        h->metrics_fn(&extra, h->metrics_ctx);
        if (!extra.oom && extra.len) {
            char *t = realloc(text, len + extra.len + 1);
            if (t) {
                memcpy(t + len, extra.data, extra.len);
                len += extra.len;
                t[len] = '\0';
                text = t;
            }
        }
        vd_buf_release(&extra);
    }
    deliver(r, resp_from(text, len, "text/plain; version=0.0.4; charset=utf-8"), MHD_HTTP_OK, len);
}

/* ---- lifecycle --------------------------------------------------------------------------- */

int vd_http_new(const struct vd_http_opts *o, struct vd_http **out, struct vd_err *err)
{
    int rc;
    *out = NULL;
    if (sodium_init() < 0)
        return vd_errf(err, VD_EINTERNAL, "libsodium failed to initialise");
    struct vd_http *h = calloc(1, sizeof(*h));
    if (!h)
        return vd_errf(err, VD_ENOMEM, "http: out of memory");
    h->routes_tail = &h->routes;
    const char *bind = o->bind ? o->bind : "127.0.0.1";
    if (strlen(bind) >= sizeof(h->bind)) {
        rc = vd_errf(err, VD_EINVAL, "bind address '%s' is too long", bind);
        goto out_free_h;
    }
    strcpy(h->bind, bind);
    h->port_req = o->port;
    h->threads = o->threads;
    if (!h->threads) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        h->threads = n < 2 ? 2 : (unsigned)n;
    }
    h->max_body = o->max_body ? o->max_body : DEFAULT_MAX_BODY;
    h->idle_timeout_s = o->idle_timeout_s ? o->idle_timeout_s : DEFAULT_IDLE_TIMEOUT_S;
    h->max_conns = o->max_connections ? o->max_connections : DEFAULT_MAX_CONNS;
    h->body_budget = o->max_inflight_body ? o->max_inflight_body : DEFAULT_BODY_BUDGET;
    h->header_timeout_s = o->header_timeout_s ? o->header_timeout_s : DEFAULT_HEADER_TIMEOUT_S;
    atomic_init(&h->body_inflight, 0);
    snprintf(h->version, sizeof(h->version), "%s", o->version ? o->version : "unknown");
    snprintf(h->commit, sizeof(h->commit), "%s", o->commit ? o->commit : "unknown");
    atomic_init(&h->next_id, 1);
    atomic_init(&h->stopping, false);
    atomic_init(&h->waking, 0);
    atomic_init(&h->wakes_unseen, 0);
    rc = vd__http_keys_load(h, o->keys, o->n_keys, err);
    if (rc)
        goto out_free_keys;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->idle, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&h->mu, NULL);
    pthread_mutex_init(&h->metrics_mu, NULL);
    pthread_mutex_init(&h->conn_mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->conn_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (vd__http_route_add(h, "GET", "/", VD_ROLE_NONE, h_root, NULL, h) ||
        vd__http_route_add(h, "GET", "/healthz", VD_ROLE_NONE, h_healthz, NULL, h) ||
        vd__http_route_add(h, "GET", "/livez", VD_ROLE_NONE, h_livez, NULL, h) ||
        vd__http_route_add(h, "GET", "/readyz", VD_ROLE_NONE, h_readyz, NULL, h) ||
        vd__http_route_add(h, "GET", "/metrics", VD_ROLE_RO, h_metrics, NULL, h)) {
        rc = vd_errf(err, VD_ENOMEM, "http: out of memory");
        goto out_free_routes;
    }
    *out = h;
    return 0;

out_free_routes:
    vd__http_routes_free(h);
    pthread_mutex_destroy(&h->conn_mu);
    pthread_cond_destroy(&h->conn_cv);
    pthread_mutex_destroy(&h->metrics_mu);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->idle);
out_free_keys:
    free(h->keys);
out_free_h:
    free(h);
    return rc;
}

int vd_http_route(struct vd_http *h, const char *method, const char *pattern, enum vd_role min_role,
                  vd_http_handler fn, void *ctx)
{
    return vd__http_route_add(h, method, pattern, min_role, fn, NULL, ctx);
}

int vd_http_route_stream(struct vd_http *h, const char *method, const char *pattern, enum vd_role min_role,
                         vd_http_handler begin, const struct vd_http_stream_ops *ops, void *ctx)
{
    if (!ops)
        return VD_EINVAL;
    return vd__http_route_add(h, method, pattern, min_role, begin, ops, ctx);
}

void vd_http_set_metrics_hook(struct vd_http *h, void (*fn)(struct vd_buf *out, void *ctx), void *ctx)
{
    h->metrics_fn = fn;
    h->metrics_ctx = ctx;
}

void vd_http_set_ready_hook(struct vd_http *h, bool (*fn)(void *ctx), void *ctx)
{
    h->ready_fn = fn;
    h->ready_ctx = ctx;
}

int vd_http_start(struct vd_http *h, struct vd_err *err)
{
    if (h->started)
        return vd_errf(err, VD_EINVAL, "http server already started");
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    /* poll(), not epoll: with a pool, libmicrohttpd 0.9.75's quiesce races the workers over the
     * listen socket's epoll registration and aborts ("Failed to remove listen FD from epoll set"). */
    unsigned flags = MHD_USE_POLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, h->bind, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(h->port_req);
    } else if (inet_pton(AF_INET6, h->bind, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(h->port_req);
        flags |= MHD_USE_IPv6;
    } else {
        return vd_errf(err, VD_EINVAL, "bind address '%s' is not an IPv4 or IPv6 address", h->bind);
    }
    h->started = true;
    struct MHD_OptionItem opts[] = {
        {MHD_OPTION_SOCK_ADDR, 0, &ss},
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, h},
        {MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)on_connection, h},
        {MHD_OPTION_UNESCAPE_CALLBACK, (intptr_t)no_unescape, h},
        {MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)mhd_log, h},
        /* 128 KiB per connection: headers plus body pieces large enough for fast imports. */
        {MHD_OPTION_CONNECTION_MEMORY_LIMIT, 128 * 1024, NULL},
        /* A damaged request (body shorter than announced, client half-closed) is never completed
         * and libmicrohttpd holds its connection until this idle timeout. */
        {MHD_OPTION_CONNECTION_TIMEOUT, (intptr_t)h->idle_timeout_s, NULL},
        /* Past max_conns requests are answered 503; this hard cap, with room for that answer and
         * for the pool's uneven share of connections, closes the rest at accept. */
        {MHD_OPTION_CONNECTION_LIMIT, (intptr_t)(h->max_conns * 2u + 64u), NULL},
        /* a pool of one is libmicrohttpd's single internal thread: no pool option then */
        {h->threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, (intptr_t)h->threads, NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    h->daemon = MHD_start_daemon(flags, h->port_req, NULL, NULL, on_access, h, MHD_OPTION_ARRAY, opts,
                                 MHD_OPTION_END);
    if (!h->daemon) {
        h->started = false;
        return vd_errf(err, VD_EIO, "cannot listen on %s port %u (address in use or not available)", h->bind,
                       (unsigned)h->port_req);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : h->port_req;
    if (pthread_create(&h->reaper, NULL, reaper_main, h) == 0)
        h->reaper_started = true;
    else
        vd_log_warn("http: cannot start the header-timeout thread; slow clients are cut only by "
                    "the idle timeout");
    vd_log_info("http: listening on %s port %u with %u threads", h->bind, (unsigned)h->port, h->threads);
    return 0;
}

uint16_t vd_http_port(const struct vd_http *h)
{
    return h->port;
}

/* Answers 503 for a request the application still holds; its own reply comes later and is dropped. */
static void force_unavailable(struct vd_http_req *r)
{
    static const char msg[] = "{\"status\":{\"error\":\"server is shutting down\"},\"time\":0}";
    struct MHD_Response *resp = MHD_create_response_from_buffer(sizeof(msg) - 1, (void *)msg,
                                                                MHD_RESPMEM_PERSISTENT);
    if (resp) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    } else {
        resp = resp_bare();
    }
    bool wake = false;
    pthread_mutex_lock(&r->mu);
    if (r->replied || !r->user_ref) {
        pthread_mutex_unlock(&r->mu);
        if (resp)
            MHD_destroy_response(resp);
        return;
    }
    r->replied = r->forced = true;
    r->resp = resp;
    r->resp_status = MHD_HTTP_SERVICE_UNAVAILABLE;
    r->resp_bytes = sizeof(msg) - 1;
    wake = r->suspended;
    r->suspended = r->paused = false;
    if (wake)
        wake_begin(r);
    pthread_mutex_unlock(&r->mu);
    if (wake)
        wake_conn(r->h, r->conn);
}

/* Waits until no request is in flight or `ms` pass. */
static void wait_idle(struct vd_http *h, unsigned ms)
{
    struct timespec until;
    vd_mono_deadline(&until, ms);
    pthread_mutex_lock(&h->mu);
    while (h->n_live > 0)
        if (pthread_cond_timedwait(&h->idle, &h->mu, &until) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&h->mu);
}

void vd_http_stop(struct vd_http *h, unsigned deadline_ms)
{
    if (!h->daemon)
        return;
    atomic_store(&h->stopping, true);
    MHD_socket lfd = MHD_quiesce_daemon(h->daemon);

    wait_idle(h, deadline_ms);
    pthread_mutex_lock(&h->mu);
    /* From here on nothing new reaches the application; what it still holds is answered 503
     * (libmicrohttpd aborts when stopped with a connection still suspended). */
    h->hard_stop = true;
    size_t n = 0;
    for (struct vd_http_req *r = h->live; r; r = r->next)
        n++;
    struct vd_http_req **held = n ? malloc(n * sizeof(*held)) : NULL;
    size_t k = 0;
    for (struct vd_http_req *r = h->live; r && held; r = r->next) {
        pthread_mutex_lock(&r->mu);
        if (r->user_ref && !r->replied) {
            atomic_fetch_add(&r->refs, 1);
            held[k++] = r;
        }
        pthread_mutex_unlock(&r->mu);
    }
    pthread_mutex_unlock(&h->mu);
    if (n && !held)
        vd_log_error("http: out of memory while stopping; suspended requests may abort the process");
    for (size_t i = 0; i < k; i++) {
        force_unavailable(held[i]);
        req_put(held[i]);
    }
    free(held);
    /* Every request still suspended now was answered above and is being woken; replies decided
     * just before the hard stop may still be inside MHD_resume_connection: wait them out. No new
     * wake can start (what is left suspended is already replied). */
    while (atomic_load(&h->waking) > 0)
        sched_yield();
    /* libmicrohttpd 0.9.75 aborts if a connection it was asked to resume is still on its
     * suspended list when it stops: wait until each woken connection came back to us (a paused
     * body with no new bytes never calls back, hence the bound; by then the resume is long done). */
    /* Bounded by the clock, not by a count of naps: on a loaded machine each nap lasts far longer. */
    uint64_t wake_until = vd_mono_ns() + (uint64_t)WAKE_WAIT_MS * 1000000u;
    while (atomic_load(&h->wakes_unseen) > 0 && vd_mono_ns() < wake_until) {
        struct timespec ts = {.tv_nsec = 100000};
        nanosleep(&ts, NULL);
    }
    if (k) {
        vd_log_warn("http: %zu request(s) answered 503 at shutdown", k);
        /* Let the 503s go out: a reply parked mid-body leaves once the client's remaining body has
         * been read, so give connections a short grace before they are cut. */
        wait_idle(h, FORCED_GRACE_MS);
    }
    if (h->reaper_started) {
        pthread_mutex_lock(&h->conn_mu);
        h->reaper_stop = true;
        pthread_cond_signal(&h->conn_cv);
        pthread_mutex_unlock(&h->conn_mu);
        pthread_join(h->reaper, NULL);
        h->reaper_started = false;
    }
    MHD_stop_daemon(h->daemon);
    h->daemon = NULL;
    if (lfd != MHD_INVALID_SOCKET)
        close(lfd);
    h->stopped = true;
}

size_t vd__http_live_count(struct vd_http *h)
{
    size_t n = 0;
    pthread_mutex_lock(&h->mu);
    for (struct vd_http_req *r = h->live; r; r = r->next)
        n++;
    pthread_mutex_unlock(&h->mu);
    return n;
}

void vd_http_free(struct vd_http *h)
{
    if (!h)
        return;
    vd_http_stop(h, 0);
    /* Left: requests answered 503 whose application has not replied yet. A stream not ended is
     * aborted (its application then never replies) and freed here. Any other is still owed a
     * reply that may come from another thread at any moment (a storage write completing): it
     * leaves the server and is freed by that late reply, which finds no server to tell. */
    pthread_mutex_lock(&h->mu);
    struct vd_http_req *r = h->live, *next;
    h->live = NULL;
    pthread_mutex_unlock(&h->mu);
    for (; r; r = next) {
        next = r->next;
        pthread_mutex_lock(&r->mu);
        bool owed = r->user_ref, stream = r->route && r->route->ops && !r->ended;
        if (owed && !stream) {
            r->h = NULL;
            r->prev = r->next = NULL;
        }
        pthread_mutex_unlock(&r->mu);
        if (owed && !stream)
            continue; /* the server holds no reference any more (connections completed) */
        if (owed)
            r->route->ops->abort(r, r->route->ctx);
        req_free(r);
    }
    vd__http_routes_free(h);
    pthread_mutex_destroy(&h->conn_mu);
    pthread_cond_destroy(&h->conn_cv);
    pthread_mutex_destroy(&h->metrics_mu);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->idle);
    free(h->keys);
    free(h);
}
