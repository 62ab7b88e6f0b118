/*
 * Peer transport: framed messages between nodes over libuv TCP (contract in cluster_int.h).
 *
 * Objects, all owned by the transport and touched only on its loop thread:
 *   - struct peer: what we know of one node (id, dial address), its queue of frames not yet
 *     handed to a socket, and a backoff timer. A peer created by send_addr has id 0 until a
 *     handshake tells who listens there.
 *   - struct conn: one TCP connection, dialed or accepted. It belongs to a peer once its
 *     handshake is done (or, for a dialer, from the start).
 * Every uv handle is freed in its close callback; the transport itself is freed when the last
 * handle has closed and the last name resolution has called back (t->pending reaches zero).
 */
#include <signal.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sodium.h>
#include <uv.h>

#include "cluster_int.h"
#include "vectord/cluster.h"

#define NONCE_LEN 32
#define PROOF_LEN crypto_auth_hmacsha256_BYTES
/* With a secret, every frame after the handshake ends with this MAC (see session_keys). */
#define TAG_LEN crypto_auth_hmacsha256_BYTES
#define ADDR_MAX 255
/* Handshake frames are tiny; until a peer has proved itself it may not make us buffer more. */
#define HS_MAX_BODY 1024
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 2000
/* Bounds a connect to a silent address and a client that never finishes the handshake. */
#define HANDSHAKE_TIMEOUT_MS 10000
#define SWEEP_MS 1000
/* Bytes handed to libuv per connection before further frames wait in the peer's bounded queue:
 * libuv's own write queue has no limit, ours drops the oldest frames. */
#define WRITE_HIGH (1u << 20)
#define WRITE_BATCH 64
#define READ_CHUNK 65536
#define FAIL_SLOTS 32
#define FAIL_LOG_MS 60000
#define SKEW_LOG_MS 60000
#define QUEUE_DEFAULT ((size_t)64 << 20)

struct qframe {
    struct qframe *next;
    size_t len; /* header + body */
    uint8_t data[];
};

struct fqueue {
    struct qframe *head, *tail;
    size_t bytes;
};

enum conn_state { C_CONNECTING, C_WAIT_CHALLENGE, C_WAIT_HELLO, C_WAIT_WELCOME, C_OPEN };

/* The two connections a pair of nodes keeps (cluster_int.h, "channels"). */
enum chan { CHAN_CTRL = 0, CHAN_DATA = 1 };

struct peer;

struct conn {
    uv_tcp_t tcp; /* data = this conn */
    uv_connect_t connect;
    struct vd_transport *t;
    struct conn *prev, *next; /* t->conns: every conn not yet closing */
    struct peer *peer;        /* dialer: the peer dialed; acceptor: set once open */
    enum conn_state state;
    uint8_t chan; /* enum chan: the dialer's peer's, or what the HELLO asked for */
    bool dialer, closing;
    uint64_t started_ms;
    uint64_t remote_id;
    char remote_adv[ADDR_MAX + 1]; /* address the peer advertised in the handshake */
    char remote_ip[INET6_ADDRSTRLEN];
    uint8_t nonce_local[NONCE_LEN], nonce_remote[NONCE_LEN];
    bool auth; /* frames carry a MAC under the session keys */
    uint8_t k_send[TAG_LEN], k_recv[TAG_LEN];
    uint64_t n_send, n_recv; /* frames sealed and opened so far, one counter per direction */
    uint8_t *rbuf;
    size_t rlen, rcap, rwant;
};

struct dial_req {
    uv_getaddrinfo_t req;
    struct vd_transport *t;
    struct peer *peer; /* NULL once the peer is gone: the answer is then dropped */
};

/* One per node and channel: a node known to the data transport has a second struct peer with
 * chan CHAN_DATA, its own connection, queue and backoff. */
struct peer {
    struct peer *prev, *next;
    struct vd_transport *t;
    uint8_t chan;      /* enum chan */
    uint64_t id;       /* 0: known only by address (control only) */
    char *addr;        /* dial address, or NULL */
    bool addr_learnt;  /* addr came from the peer's handshake, not from set_peer */
    struct conn *conn; /* open connection */
    struct conn *dial; /* our connection to it while connecting and handshaking */
    struct dial_req *resolving;
    struct fqueue q;
    uv_timer_t timer; /* redial backoff; the peer is freed in its close callback */
    bool timer_armed;
    bool up; /* last state logged; for a data peer also what on_link was last told */
    unsigned backoff_ms;
    uint64_t skew_logged; /* loop time of the last clock-skew refusal logged; 0: none */
};

struct wreq {
    uv_write_t req;
    struct conn *c;
    unsigned n;
    struct qframe *f[];
};

struct fail_slot {
    char key[ADDR_MAX + 1];
    uint64_t last_ms;
};

struct vd_transport {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_timer_t sweep;
    uint64_t self_id;
    char *advertise;
    uint8_t *secret;
    size_t secret_len;
    uint32_t max_frame;
    size_t max_queue;
    uint64_t max_offset_ms;
    bool refuse_all;
    vd_transport_frame_fn on_frame;
    void *ctx;
    vd_transport_data_fn on_data; /* NULL: data connections are refused */
    vd_transport_link_fn on_link;
    void *data_ctx;
    struct peer *peers;
    struct conn *conns;
    unsigned pending; /* open handles plus resolutions in flight */
    bool closing;
    uint16_t port;
    struct fail_slot fails[FAIL_SLOTS];
};

static void pump(struct peer *p);
static void conn_close(struct conn *c);
static int enqueue(struct vd_transport *t, struct peer *p, uint8_t type, const void *body,
                   size_t len);

/* ---- small helpers --------------------------------------------------------------------------- */

static void maybe_free(struct vd_transport *t)
{
    if (!t->closing || t->pending)
        return;
    free(t->advertise);
    if (t->secret) {
        sodium_memzero(t->secret, t->secret_len);
        free(t->secret);
    }
    free(t);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct vd_transport *t = h->data;
    t->pending--;
    maybe_free(t);
}

static void fqueue_free(struct fqueue *q)
{
    struct qframe *f = q->head;
    while (f) {
        struct qframe *next = f->next;
        free(f);
        f = next;
    }
    memset(q, 0, sizeof(*q));
}

static struct qframe *fqueue_pop(struct fqueue *q)
{
    struct qframe *f = q->head;
    if (f) {
        q->head = f->next;
        if (!q->head)
            q->tail = NULL;
        q->bytes -= f->len;
        f->next = NULL;
    }
    return f;
}

/* Appends f, dropping the oldest frames while the queue would exceed max bytes (a frame larger
 * than max still goes in alone: dropping the newest would starve big messages forever). */
static void fqueue_push(struct fqueue *q, struct qframe *f, size_t max)
{
    while (q->head && q->bytes + f->len > max)
        free(fqueue_pop(q));
    f->next = NULL;
    if (q->tail)
        q->tail->next = f;
    else
        q->head = f;
    q->tail = f;
    q->bytes += f->len;
}

/*
 * A handshake frame is complete at once. A user frame gets room for the sender's HLC in front of
 * its body and for a MAC behind it; both, and its header, are filled in by finish() as it goes
 * to the socket (until then data[3] holds its type).
 */
static struct qframe *frame_new(uint8_t type, const void *body, size_t len)
{
    size_t pre = type >= VD_FRAME_USER ? VD_FRAME_HLC : 0;
    struct qframe *f = malloc(sizeof(*f) + VD_FRAME_HDR + pre + len + TAG_LEN);
    if (!f)
        return NULL;
    f->next = NULL;
    f->len = VD_FRAME_HDR + pre + len;
    if (len)
        memcpy(f->data + VD_FRAME_HDR + pre, body, len);
    if (pre)
        f->data[3] = type;
    else
        vd__frame_header(type, f->data + VD_FRAME_HDR, (uint32_t)len, f->data);
    return f;
}

static bool is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    }
    if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a))
            return true;
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return false;
}

static void sockaddr_ip(const struct sockaddr_storage *ss, char *out, size_t cap)
{
    const void *src = ss->ss_family == AF_INET6
                          ? (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr
                          : (const void *)&((const struct sockaddr_in *)ss)->sin_addr;
    if (!inet_ntop(ss->ss_family, src, out, (socklen_t)cap))
        snprintf(out, cap, "?");
}

/*
 * Splits "host:port" or "[v6]:port" into host (without brackets) and port (1..65535).
 * Returns 0 or VD_EINVAL.
 */
static int split_hostport(const char *s, char *host, size_t cap, uint16_t *port)
{
    const char *h = s, *colon;
    size_t hl;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return VD_EINVAL;
        h = s + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return VD_EINVAL;
        hl = (size_t)(colon - s);
        if (memchr(s, ':', hl))
            return VD_EINVAL; /* an IPv6 literal needs brackets */
    }
    if (hl == 0 || hl >= cap)
        return VD_EINVAL;
    unsigned long v = 0;
    const char *d = colon + 1;
    if (!*d)
        return VD_EINVAL;
    for (; *d; d++) {
        if (*d < '0' || *d > '9')
            return VD_EINVAL;
        v = v * 10 + (unsigned long)(*d - '0');
        if (v > 65535)
            return VD_EINVAL;
    }
    if (v == 0)
        return VD_EINVAL;
    memcpy(host, h, hl);
    host[hl] = 0;
    *port = (uint16_t)v;
    return 0;
}

/* Fills ss from an IP literal or "localhost" (always 127.0.0.1, so a dual-stack resolver cannot
 * send a loopback-only cluster to ::1 on one node and 127.0.0.1 on another). false otherwise. */
static bool literal_addr(const char *host, uint16_t port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        return true;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        return true;
    }
    return false;
}

/* A failed handshake or a refused frame is logged once per address per minute (the address
 * dialed, or the remote IP of an accepted connection): a scanner or a misconfigured node
 * retrying every few seconds must not flood the log. */
static void refuse(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void refuse(struct conn *c, const char *fmt, ...)
{
    struct vd_transport *t = c->t;
    uint64_t now = uv_now(t->loop);
    const char *key = c->dialer && c->peer && c->peer->addr ? c->peer->addr : c->remote_ip;
    struct fail_slot *slot = NULL, *oldest = &t->fails[0];
    for (int i = 0; i < FAIL_SLOTS; i++) {
        struct fail_slot *s = &t->fails[i];
        if (s->key[0] && strcmp(s->key, key) == 0) {
            slot = s;
            break;
        }
        if (s->last_ms < oldest->last_ms)
            oldest = s;
    }
    bool log = true;
    if (slot) {
        log = now - slot->last_ms >= FAIL_LOG_MS;
    } else {
        slot = oldest;
        snprintf(slot->key, sizeof(slot->key), "%s", key);
    }
    if (log) {
        char msg[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        vd_log_warn("cluster: %s connection %s %s refused: %s (further refusals for this address "
                    "are not logged for a minute)",
                    c->dialer ? "outgoing" : "incoming", c->dialer ? "to" : "from", key, msg);
        slot->last_ms = now;
    }
    conn_close(c);
}

/* ---- writing --------------------------------------------------------------------------------- */

static void on_write(uv_write_t *req, int status)
{
    struct wreq *w = (struct wreq *)req;
    struct conn *c = w->c;
    for (unsigned i = 0; i < w->n; i++)
        free(w->f[i]);
    free(w);
    if (c->closing)
        return; /* canceled by the close: the conn is freed after this callback */
    if (status < 0) {
        vd_log_debug("cluster: write to %s failed: %s", c->remote_ip, uv_strerror(status));
        conn_close(c);
        return;
    }
    if (c->peer && c->peer->conn == c)
        pump(c->peer);
}

/* Hands frames f[0..n) to libuv (ownership passes: they are freed when written or canceled).
 * On failure the frames are freed and the connection closed. */
static int write_frames(struct conn *c, struct qframe **f, unsigned n)
{
    struct wreq *w = malloc(sizeof(*w) + n * sizeof(w->f[0]));
    uv_buf_t bufs[WRITE_BATCH] = {{0}};
    if (!w) {
        for (unsigned i = 0; i < n; i++)
            free(f[i]);
        conn_close(c);
        return VD_ENOMEM;
    }
    w->c = c;
    w->n = n;
    for (unsigned i = 0; i < n; i++) {
        w->f[i] = f[i];
        bufs[i] = uv_buf_init((char *)f[i]->data, (unsigned)f[i]->len);
    }
    int r = uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, n, on_write);
    if (r) {
        for (unsigned i = 0; i < n; i++)
            free(f[i]);
        free(w);
        conn_close(c);
        return VD_EIO;
    }
    return 0;
}

static int send_ctrl(struct conn *c, uint8_t type, const void *body, size_t len)
{
    struct qframe *f = frame_new(type, body, len);
    if (!f) {
        conn_close(c);
        return VD_ENOMEM;
    }
    return write_frames(c, &f, 1);
}

/* The MAC of one frame: HMAC-SHA256 under the direction's session key over the frame's number
 * in that direction, its type and its body. The number is never sent: a replayed, dropped or
 * reordered frame is checked against another number and fails. */
static void frame_tag(const uint8_t key[TAG_LEN], uint64_t n, uint8_t type, const uint8_t *body,
                      size_t len, uint8_t out[TAG_LEN])
{
    uint8_t pre[9];
    vd_be64_put(pre, n);
    pre[8] = type;
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, TAG_LEN);
    crypto_auth_hmacsha256_update(&st, pre, sizeof(pre));
    crypto_auth_hmacsha256_update(&st, body, len);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof(st));
}

/* Stamps a queued user frame with this node's HLC now, appends its MAC on an authenticated
 * connection (frame_new left room for both) and writes its header. A frame is written to one
 * connection only, so it is finished once; stamping at the socket rather than when queued keeps
 * a frame that waited out a reconnection from carrying an old time into a peer's offset
 * estimate. */
static void finish(struct conn *c, struct qframe *f)
{
    uint8_t type = f->data[3];
    uint8_t *body = f->data + VD_FRAME_HDR;
    size_t len = f->len - VD_FRAME_HDR;
    vd_be64_put(body, vd_hlc_now());
    if (c->auth) {
        frame_tag(c->k_send, c->n_send++, type, body, len, body + len);
        len += TAG_LEN;
        f->len += TAG_LEN;
    }
    vd__frame_header(type, body, (uint32_t)len, f->data);
}

/* Moves queued frames onto the socket while libuv holds less than WRITE_HIGH unsent bytes. */
static void flush(struct conn *c, struct fqueue *q)
{
    while (!c->closing && q->head &&
           uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) < WRITE_HIGH) {
        struct qframe *batch[WRITE_BATCH];
        unsigned n = 0;
        size_t bytes = 0;
        while (n < WRITE_BATCH && q->head && bytes < WRITE_HIGH) {
            batch[n] = fqueue_pop(q);
            finish(c, batch[n]);
            bytes += batch[n++]->len;
        }
        if (write_frames(c, batch, n))
            return;
    }
}

/* ---- peers ----------------------------------------------------------------------------------- */

static struct peer *peer_by_id(const struct vd_transport *t, uint64_t id, uint8_t chan)
{
    for (struct peer *p = t->peers; p; p = p->next)
        if (p->id == id && id && p->chan == chan)
            return p;
    return NULL;
}

static struct peer *peer_by_addr(const struct vd_transport *t, const char *addr)
{
    for (struct peer *p = t->peers; p; p = p->next)
        if (p->addr && p->chan == CHAN_CTRL && strcmp(p->addr, addr) == 0)
            return p;
    return NULL;
}

static void on_peer_timer(uv_timer_t *h)
{
    struct peer *p = h->data;
    p->timer_armed = false;
    pump(p);
}

static void on_peer_closed(uv_handle_t *h)
{
    struct peer *p = h->data;
    struct vd_transport *t = p->t;
    free(p);
    t->pending--;
    maybe_free(t);
}

static struct peer *peer_new(struct vd_transport *t, uint64_t id, const char *addr, uint8_t chan)
{
    struct peer *p = vd_xcalloc(1, sizeof(*p));
    p->t = t;
    p->id = id;
    p->chan = chan;
    p->addr = addr ? vd_xstrdup(addr) : NULL;
    p->backoff_ms = BACKOFF_MIN_MS;
    uv_timer_init(t->loop, &p->timer);
    p->timer.data = p;
    t->pending++;
    p->next = t->peers;
    if (t->peers)
        t->peers->prev = p;
    t->peers = p;
    return p;
}

static void peer_remove(struct peer *p)
{
    struct vd_transport *t = p->t;
    if (p->prev)
        p->prev->next = p->next;
    else
        t->peers = p->next;
    if (p->next)
        p->next->prev = p->prev;
    if (p->up && !t->closing && p->chan == CHAN_CTRL)
        vd_log_info("cluster: disconnected from node %llu (removed)", (unsigned long long)p->id);
    bool was_up = p->up;
    p->up = false;
    struct conn *cs[2] = {p->conn, p->dial};
    p->conn = p->dial = NULL;
    for (int i = 0; i < 2; i++) {
        if (cs[i]) {
            cs[i]->peer = NULL;
            conn_close(cs[i]);
        }
    }
    if (p->resolving) {
        p->resolving->peer = NULL;
        uv_cancel((uv_req_t *)&p->resolving->req); /* the callback runs either way */
        p->resolving = NULL;
    }
    fqueue_free(&p->q);
    free(p->addr);
    p->addr = NULL;
    uv_close((uv_handle_t *)&p->timer, on_peer_closed);
    if (was_up && p->chan == CHAN_DATA && t->on_link)
        t->on_link(t->data_ctx, p->id, false);
}

/* Arms the redial timer and doubles the next delay, up to BACKOFF_MAX_MS. */
static void backoff(struct peer *p)
{
    if (p->timer_armed || p->t->closing)
        return;
    p->timer_armed = true;
    uv_timer_start(&p->timer, on_peer_timer, p->backoff_ms, 0);
    p->backoff_ms = p->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : p->backoff_ms * 2;
}

static void conn_ready(struct conn *c);

static void on_connect(uv_connect_t *req, int status)
{
    struct conn *c = req->data;
    if (c->closing)
        return;
    if (status < 0) {
        vd_log_debug("cluster: connect to %s failed: %s",
                     c->peer && c->peer->addr ? c->peer->addr : "?", uv_strerror(status));
        conn_close(c);
        return;
    }
    conn_ready(c);
}

static struct conn *conn_new(struct vd_transport *t)
{
    struct conn *c = vd_xcalloc(1, sizeof(*c));
    c->t = t;
    c->started_ms = uv_now(t->loop);
    uv_tcp_init(t->loop, &c->tcp);
    c->tcp.data = c;
    c->connect.data = c;
    t->pending++;
    c->next = t->conns;
    if (t->conns)
        t->conns->prev = c;
    t->conns = c;
    return c;
}

static void connect_to(struct peer *p, const struct sockaddr *sa)
{
    struct conn *c = conn_new(p->t);
    c->dialer = true;
    c->state = C_CONNECTING;
    c->chan = p->chan;
    c->peer = p;
    p->dial = c;
    struct sockaddr_storage ss;
    memcpy(&ss, sa,
           sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    sockaddr_ip(&ss, c->remote_ip, sizeof(c->remote_ip));
    int r = uv_tcp_connect(&c->connect, &c->tcp, sa, on_connect);
    if (r) {
        vd_log_debug("cluster: connect to %s failed: %s", p->addr, uv_strerror(r));
        conn_close(c);
    }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct dial_req *d = (struct dial_req *)req;
    struct vd_transport *t = d->t;
    struct peer *p = d->peer;
    if (p) {
        p->resolving = NULL;
        if (status == 0 && res && !t->closing) {
            connect_to(p, res->ai_addr);
        } else if (!t->closing) {
            vd_log_debug("cluster: cannot resolve %s: %s", p->addr, uv_strerror(status));
            backoff(p);
        }
    }
    if (res)
        uv_freeaddrinfo(res);
    free(d);
    t->pending--;
    maybe_free(t);
}

static void dial(struct peer *p)
{
    struct vd_transport *t = p->t;
    char host[ADDR_MAX + 1], portstr[8];
    uint16_t port;
    struct sockaddr_storage ss;
    if (split_hostport(p->addr, host, sizeof(host), &port)) {
        vd_log_warn("cluster: node %llu has an invalid address '%s' (expected host:port)",
                    (unsigned long long)p->id, p->addr);
        backoff(p);
        return;
    }
    if (literal_addr(host, port, &ss)) {
        connect_to(p, (struct sockaddr *)&ss);
        return;
    }
    struct dial_req *d = malloc(sizeof(*d));
    if (!d) {
        backoff(p);
        return;
    }
    d->t = t;
    d->peer = p;
    snprintf(portstr, sizeof(portstr), "%u", (unsigned)port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int r = uv_getaddrinfo(t->loop, &d->req, on_resolved, host, portstr, &hints);
    if (r) {
        vd_log_debug("cluster: cannot resolve %s: %s", p->addr, uv_strerror(r));
        free(d);
        backoff(p);
        return;
    }
    p->resolving = d;
    t->pending++;
}

/* Sends what p has queued on its open connection, or starts a dial when nothing is connected,
 * connecting or waiting out a backoff. */
static void pump(struct peer *p)
{
    if (p->t->closing)
        return;
    if (p->conn) {
        flush(p->conn, &p->q);
        return;
    }
    /* a data peer is dialed with nothing queued: its credit comes with the connection */
    if ((!p->q.head && p->chan != CHAN_DATA) || p->dial || p->resolving || p->timer_armed ||
        !p->addr)
        return;
    dial(p);
}

/*
 * Two open connections to one peer (both dialed at once, or a restarted peer dialing again
 * before we saw the old connection die): both ends must keep the same one. Between opposite
 * directions the connection dialed by the smaller id wins; in one direction the newer wins
 * (the older is most likely dead).
 */
static bool keep_old(const struct vd_transport *t, const struct conn *old, const struct conn *c)
{
    if (old->dialer == c->dialer)
        return false;
    bool self_dials_winner = t->self_id < c->remote_id;
    return old->dialer == self_dials_winner;
}

/* c has completed its handshake with p: it becomes p's connection. */
static void peer_attach(struct peer *p, struct conn *c)
{
    struct vd_transport *t = p->t;
    if (p->dial == c)
        p->dial = NULL;
    struct conn *old = p->conn;
    if (old && keep_old(t, old, c)) {
        c->peer = NULL;
        conn_close(c);
        pump(p);
        return;
    }
    p->conn = c;
    c->peer = p;
    if (old) {
        old->peer = NULL;
        conn_close(old);
    }
    p->backoff_ms = BACKOFF_MIN_MS;
    if (p->timer_armed) {
        uv_timer_stop(&p->timer);
        p->timer_armed = false;
    }
    if (p->chan == CHAN_DATA) {
        /* a new data connection starts with fresh credit: tell the data transport, which
         * forgets the old one */
        if (p->up) {
            fqueue_free(&p->q);
            if (t->on_link)
                t->on_link(t->data_ctx, p->id, false);
        }
        p->up = true;
        vd_log_debug("cluster: data connection to node %llu at %s (%s)", (unsigned long long)p->id,
                     c->remote_adv[0] ? c->remote_adv : c->remote_ip,
                     c->dialer ? "dialed" : "accepted");
        if (t->on_link)
            t->on_link(t->data_ctx, p->id, true);
    } else if (!p->up) {
        p->up = true;
        vd_log_info("cluster: connected to node %llu at %s (%s)", (unsigned long long)p->id,
                    c->remote_adv[0] ? c->remote_adv : c->remote_ip,
                    c->dialer ? "dialed" : "accepted");
    }
    pump(p);
}

/* ---- connections ----------------------------------------------------------------------------- */

static void on_conn_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    struct vd_transport *t = c->t;
    free(c->rbuf);
    sodium_memzero(c->k_send, sizeof(c->k_send));
    sodium_memzero(c->k_recv, sizeof(c->k_recv));
    free(c);
    t->pending--;
    maybe_free(t);
}

/* Idempotent. Tells the owning peer (a failed dial backs off, a lost connection is logged) and
 * closes the handle; c is freed in the close callback, after libuv cancels its writes. */
static void conn_close(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    struct vd_transport *t = c->t;
    struct peer *p = c->peer;
    c->peer = NULL;
    if (p && p->dial == c) {
        p->dial = NULL;
        backoff(p);
    }
    bool data_down = false;
    if (p && p->conn == c) {
        p->conn = NULL;
        if (p->chan == CHAN_DATA) {
            /* frames queued for a data connection were sent under its credit: they die with
             * it (the data transport fails their requests), and it is redialed at once */
            fqueue_free(&p->q);
            data_down = p->up;
            p->up = false;
            backoff(p);
        } else {
            if (p->up) {
                p->up = false;
                if (!t->closing)
                    vd_log_info("cluster: connection to node %llu at %s lost",
                                (unsigned long long)p->id,
                                c->remote_adv[0] ? c->remote_adv : c->remote_ip);
            }
            if (p->q.head)
                backoff(p);
        }
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        t->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    if (data_down && t->on_link)
        t->on_link(t->data_ctx, p->id, false);
}

/* HMAC-SHA256 with the cluster secret over a label (so a HELLO proof never passes for a WELCOME
 * one), the nonces and the handshake fields. */
static void proof(const struct vd_transport *t, const char *label, const uint8_t *n1,
                  const uint8_t *n2, const uint8_t *fields, size_t flen, uint8_t out[PROOF_LEN])
{
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, t->secret, t->secret_len);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)label, strlen(label) + 1);
    crypto_auth_hmacsha256_update(&st, n1, NONCE_LEN);
    if (n2)
        crypto_auth_hmacsha256_update(&st, n2, NONCE_LEN);
    crypto_auth_hmacsha256_update(&st, fields, flen);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof(st));
}

/*
 * Session keys, one per direction, from the secret and both handshake nonces (fresh on every
 * connection, so frames recorded on one connection mean nothing on another). Without a secret
 * there is nothing to key them with: frames carry their CRC only, and only loopback peers are
 * accepted.
 */
static void session_keys(struct conn *c)
{
    struct vd_transport *t = c->t;
    if (!t->secret)
        return;
    const uint8_t *na = c->dialer ? c->nonce_remote : c->nonce_local; /* acceptor's */
    const uint8_t *nd = c->dialer ? c->nonce_local : c->nonce_remote; /* dialer's */
    uint8_t d2a[TAG_LEN], a2d[TAG_LEN];
    proof(t, "vectord session dialer->acceptor", na, nd, (const uint8_t *)"", 0, d2a);
    proof(t, "vectord session acceptor->dialer", na, nd, (const uint8_t *)"", 0, a2d);
    memcpy(c->k_send, c->dialer ? d2a : a2d, TAG_LEN);
    memcpy(c->k_recv, c->dialer ? a2d : d2a, TAG_LEN);
    sodium_memzero(d2a, sizeof(d2a));
    sodium_memzero(a2d, sizeof(a2d));
    c->n_send = c->n_recv = 0;
    c->auth = true;
}

static size_t proof_len(const struct vd_transport *t)
{
    return t->secret ? PROOF_LEN : 0;
}

/* Appends id ‖ addr_len u16 ‖ addr to p; returns the new end. */
static uint8_t *put_ident(uint8_t *p, uint64_t id, const char *addr)
{
    size_t al = strlen(addr);
    vd_be64_put(p, id);
    p[8] = (uint8_t)(al >> 8);
    p[9] = (uint8_t)al;
    memcpy(p + 10, addr, al);
    return p + 10 + al;
}

/* Reads id ‖ addr_len ‖ addr from b[0..n), leaving exactly `rest` bytes after it. The address
 * must be printable ASCII: it goes into logs and to the user. */
static int get_ident(struct conn *c, const uint8_t *b, size_t n, size_t rest)
{
    if (n < 10 + rest)
        return VD_EINVAL;
    size_t al = ((size_t)b[8] << 8) | b[9];
    if (al > ADDR_MAX || 10 + al + rest != n)
        return VD_EINVAL;
    for (size_t i = 0; i < al; i++)
        if (b[10 + i] < 0x21 || b[10 + i] > 0x7e)
            return VD_EINVAL;
    c->remote_id = vd_be64_get(b);
    memcpy(c->remote_adv, b + 10, al);
    c->remote_adv[al] = 0;
    return c->remote_id ? 0 : VD_EINVAL;
}

/* Dialer got CHALLENGE: answer HELLO = id ‖ addr ‖ our nonce ‖ [channel] ‖ proof. The channel
 * byte is sent for data connections only (a HELLO without one asks for the control channel, as
 * every HELLO did before there were two), and the proof covers it. */
static void on_challenge(struct conn *c, const struct vd_frame *f)
{
    struct vd_transport *t = c->t;
    if (f->type != VD_FRAME_CHALLENGE || f->len != NONCE_LEN) {
        refuse(c, "expected a challenge");
        return;
    }
    memcpy(c->nonce_remote, f->body, NONCE_LEN);
    randombytes_buf(c->nonce_local, NONCE_LEN);
    uint8_t b[10 + ADDR_MAX + NONCE_LEN + 1 + PROOF_LEN];
    uint8_t *e = put_ident(b, t->self_id, t->advertise);
    memcpy(e, c->nonce_local, NONCE_LEN);
    e += NONCE_LEN;
    if (c->chan != CHAN_CTRL)
        *e++ = c->chan;
    if (t->secret) {
        proof(t, "vectord hello", c->nonce_remote, NULL, b, (size_t)(e - b), e);
        e += PROOF_LEN;
    }
    c->state = C_WAIT_WELCOME;
    send_ctrl(c, VD_FRAME_HELLO, b, (size_t)(e - b));
}

/* Acceptor got HELLO: check it, answer WELCOME = id ‖ addr ‖ proof, and open. */
static void on_hello(struct conn *c, const struct vd_frame *f)
{
    struct vd_transport *t = c->t;
    size_t pl = proof_len(t);
    bool has_chan = f->type == VD_FRAME_HELLO && !get_ident(c, f->body, f->len, NONCE_LEN + 1 + pl);
    if (f->type != VD_FRAME_HELLO ||
        (!has_chan && get_ident(c, f->body, f->len, NONCE_LEN + pl))) {
        refuse(c, "malformed hello%s", t->secret ? " (or the peer has no cluster secret)" : "");
        return;
    }
    const uint8_t *nonce = f->body + f->len - pl - (has_chan ? 1 : 0) - NONCE_LEN;
    memcpy(c->nonce_remote, nonce, NONCE_LEN);
    c->chan = has_chan ? nonce[NONCE_LEN] : CHAN_CTRL;
    if (c->chan > CHAN_DATA || (c->chan == CHAN_DATA && !t->on_data)) {
        refuse(c, "the peer asked for channel %u, which this node does not serve", c->chan);
        return;
    }
    if (t->secret) {
        uint8_t want[PROOF_LEN];
        proof(t, "vectord hello", c->nonce_local, NULL, f->body, f->len - pl, want);
        if (sodium_memcmp(want, f->body + f->len - pl, PROOF_LEN) != 0) {
            refuse(c, "wrong cluster secret");
            return;
        }
    }
    if (c->remote_id == t->self_id) {
        refuse(c, "the peer has this node's own id %llu", (unsigned long long)t->self_id);
        return;
    }
    uint8_t b[10 + ADDR_MAX + PROOF_LEN];
    uint8_t *e = put_ident(b, t->self_id, t->advertise);
    if (t->secret) {
        proof(t, "vectord welcome", c->nonce_local, c->nonce_remote, b, (size_t)(e - b), e);
        e += PROOF_LEN;
    }
    if (send_ctrl(c, VD_FRAME_WELCOME, b, (size_t)(e - b)))
        return;
    session_keys(c);
    c->state = C_OPEN;
    struct peer *p = peer_by_id(t, c->remote_id, c->chan);
    if (!p)
        p = peer_new(t, c->remote_id, NULL, c->chan);
    if (!p->addr && c->remote_adv[0]) {
        /* lets a reply reach a node that has no address yet (a joining one) if this connection
         * drops; set_peer replaces it */
        p->addr = vd_xstrdup(c->remote_adv);
        p->addr_learnt = true;
    }
    peer_attach(p, c);
}

/* Dialer got WELCOME: check the acceptor's proof; register the connection under its id. */
static void on_welcome(struct conn *c, const struct vd_frame *f)
{
    struct vd_transport *t = c->t;
    size_t pl = proof_len(t);
    if (f->type != VD_FRAME_WELCOME || get_ident(c, f->body, f->len, pl)) {
        refuse(c, "malformed welcome%s", t->secret ? " (or the peer has no cluster secret)" : "");
        return;
    }
    if (t->secret) {
        uint8_t want[PROOF_LEN];
        proof(t, "vectord welcome", c->nonce_remote, c->nonce_local, f->body, f->len - pl, want);
        if (sodium_memcmp(want, f->body + f->len - pl, PROOF_LEN) != 0) {
            refuse(c, "wrong cluster secret");
            return;
        }
    }
    if (c->remote_id == t->self_id) {
        refuse(c, "address %s is this node itself", c->peer ? c->peer->addr : "?");
        return;
    }
    struct peer *p = c->peer;
    if (!p) {
        conn_close(c);
        return;
    }
    if (p->id && p->id != c->remote_id) {
        /* the frames queued for p are not for whoever answers there now */
        vd_log_warn("cluster: %s answers as node %llu, expected node %llu", p->addr,
                    (unsigned long long)c->remote_id, (unsigned long long)p->id);
        conn_close(c);
        return;
    }
    session_keys(c);
    c->state = C_OPEN;
    if (!p->id) {
        struct peer *q = peer_by_id(t, c->remote_id, CHAN_CTRL);
        if (q) {
            /* this address belongs to a node we know by id: one peer, one queue */
            p->dial = NULL;
            for (struct qframe *fr; (fr = fqueue_pop(&p->q));)
                fqueue_push(&q->q, fr, t->max_queue);
            if (!q->addr || q->addr_learnt) {
                free(q->addr);
                q->addr = p->addr;
                q->addr_learnt = false;
                p->addr = NULL;
            }
            c->peer = NULL;
            peer_remove(p);
            p = q;
        } else {
            p->id = c->remote_id;
        }
    }
    peer_attach(p, c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = h->data;
    size_t want = c->rlen + READ_CHUNK;
    if (c->rwant > want)
        want = c->rwant;
    if (c->rcap < want) {
        uint8_t *nb = realloc(c->rbuf, want);
        if (!nb) {
            *buf = uv_buf_init(NULL, 0); /* read callback gets UV_ENOBUFS */
            return;
        }
        c->rbuf = nb;
        c->rcap = want;
    }
    *buf = uv_buf_init((char *)c->rbuf + c->rlen, (unsigned)(c->rcap - c->rlen));
}

/*
 * Answers a data frame refused for its clock with VD_FRAME_SKEW, through the peer's queue so
 * that the answer is numbered and sealed like any frame, and logs it once a minute per peer.
 */
static void refuse_skewed(struct conn *c, uint8_t type, uint64_t ahead_ms, const uint8_t *body,
                          size_t len)
{
    struct vd_transport *t = c->t;
    struct peer *p = c->peer;
    uint64_t now = uv_now(t->loop);
    if (!p || !p->skew_logged || now - p->skew_logged >= SKEW_LOG_MS) {
        vd_log_warn("cluster: data frame (type %u) from node %llu at %s refused: its clock is "
                    "%llu ms ahead of this node's (max-clock-offset %llu ms); further refusals "
                    "from it are logged once a minute",
                    type, (unsigned long long)c->remote_id,
                    c->remote_adv[0] ? c->remote_adv : c->remote_ip, (unsigned long long)ahead_ms,
                    (unsigned long long)t->max_offset_ms);
        if (p)
            p->skew_logged = now ? now : 1;
    }
    if (!p)
        return;
    uint8_t b[VD_FRAME_SKEW_LEN];
    b[0] = type;
    vd_be64_put(b + 1, len >= 8 ? vd_be64_get(body) : 0);
    vd_be64_put(b + 9, ahead_ms);
    vd_be64_put(b + 17, t->max_offset_ms);
    enqueue(t, p, VD_FRAME_SKEW, b, sizeof(b));
}

/*
 * The clock gate (cluster_int.h), then the user's callback. A data connection hands every frame
 * to the data transport, a refused one too (with gate set), since the credit it used must come
 * back; a frame the data transport rejects closes the connection.
 */
static void deliver(struct conn *c, uint8_t type, uint64_t hlc, const uint8_t *body, size_t len)
{
    struct vd_transport *t = c->t;
    int gate = 0;
    if (vd__frame_is_data(type)) {
        uint64_t now = vd_wall_ms();
        if (vd_hlc_check_skew(hlc, now, t->max_offset_ms)) {
            refuse_skewed(c, type, VD_HLC_PHYS(hlc) - now, body, len);
            gate = VD_EUNAVAIL;
        } else {
            vd_hlc_observe(hlc);
        }
    }
    if (c->chan == CHAN_DATA) {
        struct vd_err err = {0};
        if (!t->on_data) {
            conn_close(c);
        } else if (t->on_data(t->data_ctx, c->remote_id, type, hlc, body, len, gate, &err) &&
                   !c->closing) {
            refuse(c, "%s", err.msg[0] ? err.msg : "malformed data frame");
        }
        return;
    }
    if (!gate && t->on_frame)
        t->on_frame(t->ctx, c->remote_id, c->remote_adv, type, hlc, body, len);
}

static void on_frame_in(struct conn *c, const struct vd_frame *f)
{
    switch (c->state) {
    case C_WAIT_CHALLENGE:
        on_challenge(c, f);
        break;
    case C_WAIT_HELLO:
        on_hello(c, f);
        break;
    case C_WAIT_WELCOME:
        on_welcome(c, f);
        break;
    case C_OPEN:
        if (f->type < VD_FRAME_USER) {
            refuse(c, "handshake frame type %u on an open connection", f->type);
            break;
        }
        size_t len = f->len;
        if (c->auth) {
            uint8_t want[TAG_LEN];
            len = f->len >= TAG_LEN ? f->len - TAG_LEN : 0;
            if (f->len >= TAG_LEN)
                frame_tag(c->k_recv, c->n_recv, f->type, f->body, len, want);
            if (f->len < TAG_LEN || sodium_memcmp(want, f->body + len, TAG_LEN) != 0) {
                refuse(c, "frame %llu failed authentication (altered, replayed or reordered)",
                       (unsigned long long)c->n_recv);
                break;
            }
            c->n_recv++;
        }
        if (len < VD_FRAME_HLC) {
            refuse(c, "frame of type %u has no clock stamp", f->type);
            break;
        }
        deliver(c, f->type, vd_be64_get(f->body), f->body + VD_FRAME_HLC, len - VD_FRAME_HLC);
        break;
    default:
        conn_close(c);
        break;
    }
}

/*
 * Decodes every whole frame received so far. The user callback may send, remove this peer or
 * close the whole transport: c stays allocated until its close callback, so checking c->closing
 * after each frame is enough.
 */
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    struct vd_transport *t = c->t;
    if (c->closing)
        return;
    if (nread < 0) {
        if (nread != UV_EOF)
            vd_log_debug("cluster: read from %s: %s", c->remote_ip, uv_strerror((int)nread));
        conn_close(c);
        return;
    }
    c->rlen += (size_t)nread;
    size_t off = 0;
    c->rwant = 0;
    while (!c->closing) {
        struct vd_frame f;
        size_t used;
        uint32_t max = c->chan == CHAN_DATA && t->max_frame > VD_DATA_FRAME_MAX
                           ? VD_DATA_FRAME_MAX
                           : t->max_frame;
        uint32_t lim =
            c->state != C_OPEN ? HS_MAX_BODY : max + VD_FRAME_HLC + (c->auth ? TAG_LEN : 0);
        int r = vd__frame_decode(c->rbuf + off, c->rlen - off, lim, &f, &used);
        if (r == VD_ETOOBIG) {
            refuse(c, "frame of %u bytes is over the limit of %u",
                   (unsigned)vd_be32_get(c->rbuf + off + 4), (unsigned)lim);
            return;
        }
        if (r && c->rlen - off >= 3 && c->rbuf[off] == (uint8_t)(VD_FRAME_MAGIC >> 8) &&
            c->rbuf[off + 1] == (uint8_t)VD_FRAME_MAGIC && c->rbuf[off + 2] != VD_FRAME_VERSION) {
            refuse(c,
                   "the peer speaks frame version %u, this node version %u (every member must "
                   "run a vectord of the same cluster protocol)",
                   c->rbuf[off + 2], VD_FRAME_VERSION);
            return;
        }
        if (r) {
            refuse(c, "%s", c->state == C_OPEN ? "corrupt frame" : "not a vectord peer");
            return;
        }
        if (!used) {
            if (c->rlen - off >= VD_FRAME_HDR)
                c->rwant = VD_FRAME_HDR + (size_t)vd_be32_get(c->rbuf + off + 4);
            break;
        }
        off += used;
        on_frame_in(c, &f);
    }
    if (c->closing)
        return;
    if (off) {
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
    }
    if (c->rlen == 0 && c->rcap > 4 * READ_CHUNK) {
        /* a big frame passed: do not keep its buffer for the life of the connection */
        free(c->rbuf);
        c->rbuf = NULL;
        c->rcap = 0;
    }
}

/* The socket is connected (accepted or dialed): set it up and start the handshake. */
static void conn_ready(struct conn *c)
{
    struct vd_transport *t = c->t;
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len)) {
        conn_close(c);
        return;
    }
    sockaddr_ip(&ss, c->remote_ip, sizeof(c->remote_ip));
    if (t->refuse_all) {
        conn_close(c); /* said once at start: a line per attempt would flood the log */
        return;
    }
    if (!t->secret && !is_loopback(&ss)) {
        refuse(c, "no cluster secret is set, so only loopback peers are allowed");
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_tcp_keepalive(&c->tcp, 1, 10);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read)) {
        conn_close(c);
        return;
    }
    if (c->dialer) {
        c->state = C_WAIT_CHALLENGE;
        return;
    }
    c->state = C_WAIT_HELLO;
    randombytes_buf(c->nonce_local, NONCE_LEN);
    send_ctrl(c, VD_FRAME_CHALLENGE, c->nonce_local, NONCE_LEN);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct vd_transport *t = server->data;
    if (status < 0) {
        vd_log_warn("cluster: accept failed: %s", uv_strerror(status));
        return;
    }
    struct conn *c = conn_new(t);
    if (uv_accept(server, (uv_stream_t *)&c->tcp)) {
        conn_close(c);
        return;
    }
    conn_ready(c);
}

/* Closes connections stuck before the end of their handshake. */
static void on_sweep(uv_timer_t *h)
{
    struct vd_transport *t = h->data;
    uint64_t now = uv_now(t->loop);
    for (struct conn *c = t->conns, *next; c; c = next) {
        next = c->next;
        if (c->state != C_OPEN && now - c->started_ms >= HANDSHAKE_TIMEOUT_MS) {
            if (c->state == C_CONNECTING) {
                vd_log_debug("cluster: connect to %s timed out", c->remote_ip);
                conn_close(c);
            } else {
                refuse(c, "handshake timed out");
            }
        }
    }
}

/* ---- public ---------------------------------------------------------------------------------- */

/* Resolves the bind address (IP literal, "localhost" or a name, blocking: start-up only). */
static int bind_addr(const char *bind, uint16_t port, struct sockaddr_storage *ss,
                     struct vd_err *err)
{
    char host[ADDR_MAX + 1];
    size_t bl = strlen(bind);
    if (bind[0] == '[' && bl > 2 && bind[bl - 1] == ']') {
        if (bl - 2 > ADDR_MAX)
            return vd_errf(err, VD_EINVAL, "cluster bind address '%s' is too long", bind);
        memcpy(host, bind + 1, bl - 2);
        host[bl - 2] = 0;
    } else {
        if (bl > ADDR_MAX)
            return vd_errf(err, VD_EINVAL, "cluster bind address '%s' is too long", bind);
        memcpy(host, bind, bl + 1);
    }
    if (literal_addr(host, port, ss))
        return 0;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res;
    int r = getaddrinfo(host, NULL, &hints, &res);
    if (r)
        return vd_errf(err, VD_EINVAL, "cluster bind address '%s': %s", bind, gai_strerror(r));
    memset(ss, 0, sizeof(*ss));
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons(port);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
    freeaddrinfo(res);
    return 0;
}

/*
 * The listening socket is made here with plain socket calls so that every way binding can fail
 * (address in use, not local, no permission) is reported before a uv handle exists: a handle
 * would need the caller's loop to run before the transport could be freed.
 */
int vd_transport_start(const struct vd_transport_opts *o, struct vd_transport **out,
                       struct vd_err *err)
{
    *out = NULL;
    if (!o->loop || !o->self_id)
        return vd_errf(err, VD_EINVAL, "cluster transport needs a loop and a non-zero node id");
    /* libuv writes to sockets with plain write(2): a peer that hangs up mid-write would raise
     * SIGPIPE and kill the process. The write error is handled per connection instead. */
    signal(SIGPIPE, SIG_IGN);
    const char *where = o->bind && o->bind[0] ? o->bind : "127.0.0.1";
    if (o->advertise && strlen(o->advertise) > ADDR_MAX)
        return vd_errf(err, VD_EINVAL, "cluster advertise address is longer than %d bytes",
                       ADDR_MAX);
    if (sodium_init() < 0)
        return vd_errf(err, VD_EINTERNAL, "libsodium failed to initialise");
    struct sockaddr_storage ss;
    int r = bind_addr(where, o->port, &ss, err);
    if (r)
        return r;
    socklen_t sl =
        ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return vd_errf(err, VD_EIO, "cluster port %s:%u: socket: %s", where, (unsigned)o->port,
                       strerror(errno));
    int one = 1;
    /* a restarted node rebinds its port while old connections sit in TIME_WAIT */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, sl) || listen(fd, 128)) {
        int e = errno;
        close(fd);
        return vd_errf(err, VD_EIO, "cannot listen on cluster address %s port %u: %s", where,
                       (unsigned)o->port, strerror(e));
    }
    struct sockaddr_storage got;
    socklen_t gl = sizeof(got);
    getsockname(fd, (struct sockaddr *)&got, &gl);
    uint16_t port = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
                                                    : ((struct sockaddr_in *)&got)->sin_port);

    struct vd_transport *t = calloc(1, sizeof(*t));
    if (!t) {
        close(fd);
        return vd_errf(err, VD_ENOMEM, "out of memory");
    }
    t->loop = o->loop;
    t->self_id = o->self_id;
    t->port = port;
    t->max_frame = o->max_frame ? o->max_frame : VD_FRAME_MAX_DEFAULT;
    t->max_queue = o->max_queue ? o->max_queue : QUEUE_DEFAULT;
    t->max_offset_ms =
        o->max_clock_offset_ms ? o->max_clock_offset_ms : VD_MAX_CLOCK_OFFSET_MS_DEFAULT;
    t->on_frame = o->on_frame;
    t->ctx = o->ctx;
    t->refuse_all = o->refuse_all;
    if (o->advertise && o->advertise[0]) {
        t->advertise = strdup(o->advertise);
    } else {
        /* the address bound, with the port actually listened on (port 0 in tests); a wildcard
         * bind is reachable on loopback at least */
        char a[ADDR_MAX + 16];
        bool any = !strcmp(where, "0.0.0.0") || !strcmp(where, "::") || !strcmp(where, "[::]");
        const char *host = any ? "127.0.0.1" : where;
        bool v6 = strchr(host, ':') && host[0] != '[';
        snprintf(a, sizeof(a), "%s%s%s:%u", v6 ? "[" : "", host, v6 ? "]" : "", (unsigned)port);
        t->advertise = strdup(a);
    }
    if (o->secret && o->secret[0]) {
        t->secret_len = strlen(o->secret);
        t->secret = malloc(t->secret_len);
        if (t->secret)
            memcpy(t->secret, o->secret, t->secret_len);
    }
    if (!t->advertise || (o->secret && o->secret[0] && !t->secret) ||
        strlen(t->advertise) > ADDR_MAX) {
        close(fd);
        free(t->advertise);
        free(t->secret);
        free(t);
        return vd_errf(err, VD_ENOMEM, "out of memory");
    }
    uv_tcp_init(t->loop, &t->listener);
    t->listener.data = t;
    t->pending++;
    uv_timer_init(t->loop, &t->sweep);
    t->sweep.data = t;
    t->pending++;
    if ((r = uv_tcp_open(&t->listener, fd)) ||
        (r = uv_listen((uv_stream_t *)&t->listener, 128, on_connection))) {
        if (uv_fileno((uv_handle_t *)&t->listener, &(uv_os_fd_t){0}))
            close(fd); /* not adopted by the handle */
        vd_errf(err, VD_EIO, "cannot listen on cluster address %s port %u: %s", where,
                (unsigned)o->port, uv_strerror(r));
        vd_transport_close(t); /* freed once the caller's loop runs the close callbacks */
        return err ? err->code : VD_EIO;
    }
    uv_timer_start(&t->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
    vd_log_info("cluster: listening on %s port %u (advertised as %s)%s", where, (unsigned)port,
                t->advertise, t->secret ? "" : ", no cluster secret: loopback peers only");
    *out = t;
    return 0;
}

int vd_cluster_derive_secret(const char *admin_key, char out[VD_CLUSTER_DERIVED_SECRET_LEN + 1])
{
    static const char ctx[] = "vectord cluster secret v1";
    uint8_t digest[crypto_hash_sha256_BYTES], secret[VD_CLUSTER_DERIVED_SECRET_LEN / 2];
    if (sodium_init() < 0)
        return VD_EINTERNAL;
    if (!strncmp(admin_key, "sha256:", 7)) {
        size_t n = 0;
        if (sodium_hex2bin(digest, sizeof(digest), admin_key + 7, strlen(admin_key + 7), NULL, &n,
                           NULL) ||
            n != sizeof(digest))
            return VD_EINVAL;
    } else {
        crypto_hash_sha256(digest, (const unsigned char *)admin_key, strlen(admin_key));
    }
    crypto_generichash(secret, sizeof(secret), (const unsigned char *)ctx, sizeof(ctx) - 1, digest,
                       sizeof(digest));
    sodium_bin2hex(out, VD_CLUSTER_DERIVED_SECRET_LEN + 1, secret, sizeof(secret));
    sodium_memzero(digest, sizeof(digest));
    sodium_memzero(secret, sizeof(secret));
    return 0;
}

uint16_t vd_transport_port(const struct vd_transport *t)
{
    return t->port;
}

const char *vd_transport_advertise(const struct vd_transport *t)
{
    return t->advertise;
}

void vd_transport_set_peer(struct vd_transport *t, uint64_t id, const char *addr)
{
    if (t->closing || !id || id == t->self_id || !addr)
        return;
    for (uint8_t chan = CHAN_CTRL; chan <= CHAN_DATA; chan++) {
        struct peer *p = peer_by_id(t, id, chan);
        if (!p) {
            if (chan == CHAN_CTRL)
                peer_new(t, id, addr, chan);
            continue; /* a data peer is made by its first use */
        }
        if (p->addr && strcmp(p->addr, addr) == 0) {
            p->addr_learnt = false;
            continue;
        }
        free(p->addr);
        p->addr = vd_xstrdup(addr);
        p->addr_learnt = false;
        p->backoff_ms = BACKOFF_MIN_MS;
        pump(p);
    }
}

void vd_transport_remove_peer(struct vd_transport *t, uint64_t id)
{
    for (uint8_t chan = CHAN_CTRL; chan <= CHAN_DATA; chan++) {
        struct peer *p = peer_by_id(t, id, chan);
        if (p)
            peer_remove(p);
    }
}

static int enqueue(struct vd_transport *t, struct peer *p, uint8_t type, const void *body,
                   size_t len)
{
    struct qframe *f = frame_new(type, body, len);
    if (!f)
        return VD_ENOMEM;
    /* the data transport bounds what it queues by its credit and must lose nothing */
    fqueue_push(&p->q, f, p->chan == CHAN_DATA ? SIZE_MAX : t->max_queue);
    pump(p);
    return 0;
}

static int check_send(const struct vd_transport *t, uint8_t type, size_t len)
{
    if (t->closing)
        return VD_ECLOSED;
    if (type < VD_FRAME_USER)
        return VD_EINVAL;
    if (len > t->max_frame)
        return VD_ETOOBIG;
    return 0;
}

int vd_transport_send(struct vd_transport *t, uint64_t to, uint8_t type, const void *body,
                      size_t len)
{
    int r = check_send(t, type, len);
    if (r)
        return r;
    struct peer *p = peer_by_id(t, to, CHAN_CTRL);
    if (!p || (!p->conn && !p->addr))
        return VD_ENOTFOUND;
    return enqueue(t, p, type, body, len);
}

void vd_transport_set_data(struct vd_transport *t, vd_transport_data_fn on_data,
                           vd_transport_link_fn on_link, void *ctx)
{
    t->on_data = on_data;
    t->on_link = on_link;
    t->data_ctx = ctx;
    if (on_data)
        return;
    /* nobody to serve them: stop keeping data connections */
    for (struct peer *p = t->peers, *next; p; p = next) {
        next = p->next;
        if (p->chan == CHAN_DATA)
            peer_remove(p);
    }
}

/* The data peer of `to`, made on first use with the control peer's address. */
static struct peer *data_peer(struct vd_transport *t, uint64_t to)
{
    struct peer *p = peer_by_id(t, to, CHAN_DATA);
    if (p)
        return p;
    const struct peer *ctl = peer_by_id(t, to, CHAN_CTRL);
    const char *addr = ctl && ctl->addr ? ctl->addr
                       : ctl && ctl->conn && ctl->conn->remote_adv[0] ? ctl->conn->remote_adv
                                                                      : NULL;
    if (!addr)
        return NULL;
    p = peer_new(t, to, addr, CHAN_DATA);
    return p;
}

int vd_transport_data_open(struct vd_transport *t, uint64_t to)
{
    if (t->closing)
        return VD_ECLOSED;
    struct peer *p = data_peer(t, to);
    if (!p)
        return VD_ENOTFOUND;
    pump(p);
    return 0;
}

int vd_transport_send_data(struct vd_transport *t, uint64_t to, uint8_t type, const void *body,
                           size_t len)
{
    int r = check_send(t, type, len);
    if (r)
        return r;
    if (len > VD_DATA_FRAME_MAX)
        return VD_ETOOBIG;
    struct peer *p = peer_by_id(t, to, CHAN_DATA);
    if (!p || !p->conn)
        return VD_ECLOSED; /* frames only go with the credit of an open connection */
    return enqueue(t, p, type, body, len);
}

bool vd_transport_data_connected(const struct vd_transport *t, uint64_t id)
{
    const struct peer *p = peer_by_id(t, id, CHAN_DATA);
    return p && p->conn && p->conn->state == C_OPEN;
}

int vd_transport_send_addr(struct vd_transport *t, const char *addr, uint8_t type, const void *body,
                           size_t len)
{
    int r = check_send(t, type, len);
    if (r)
        return r;
    char host[ADDR_MAX + 1];
    uint16_t port;
    if (split_hostport(addr, host, sizeof(host), &port) || strcmp(addr, t->advertise) == 0)
        return VD_EINVAL;
    struct peer *p = peer_by_addr(t, addr);
    if (!p)
        p = peer_new(t, 0, addr, CHAN_CTRL);
    return enqueue(t, p, type, body, len);
}

bool vd_transport_connected(const struct vd_transport *t, uint64_t id)
{
    const struct peer *p = peer_by_id(t, id, CHAN_CTRL);
    return p && p->conn && p->conn->state == C_OPEN;
}

void vd_transport_close(struct vd_transport *t)
{
    if (!t || t->closing)
        return;
    t->closing = true;
    while (t->peers)
        peer_remove(t->peers);
    while (t->conns)
        conn_close(t->conns);
    uv_close((uv_handle_t *)&t->listener, on_handle_closed);
    uv_close((uv_handle_t *)&t->sweep, on_handle_closed);
}
