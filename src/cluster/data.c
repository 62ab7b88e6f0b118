/*
 * Data transport: requests and replies between replicas over the transport's data connections,
 * with credit-based flow control, chunking and a worker pool (contract in cluster_int.h).
 *
 * Threads: everything but the workers runs on the loop thread. Workers take whole requests from
 * `work` and put results on `results`, both under `mu`; the loop collects results in its async
 * callback, which also runs every sender's callback (queued on `done`), so no callback ever runs
 * inside a transport callback or inside vd_data_send.
 *
 * Per peer (struct dpeer), per data connection (an epoch: a new one on every up and down):
 *   - as sender: credit granted by the peer and used, and the queue of chunks waiting for it;
 *   - as receiver: credit announced and request bytes received and finished, and the message
 *     being reassembled in each direction.
 * A request (struct req) lives in the `reqs` table from vd_data_send until its outcome is
 * known; its chunks wait in the peer's queue meanwhile, and name it only by id.
 */
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "cluster_int.h"

#define REQ_BUCKETS 256
#define WORKERS_DEFAULT 2
#define WINDOW_DEFAULT (64u << 20)
#define WINDOW_FRAMES_DEFAULT 4096
#define MAX_MESSAGE_DEFAULT (32u << 20)
/* Deadlines are checked this often while a request is pending. */
#define TICK_MS 10

struct chunk {
    struct chunk *next;
    uint64_t req_id;
    uint32_t seq;
    size_t len;
    uint8_t data[];
};

struct req {
    struct req *hnext; /* d->reqs bucket */
    struct req *dnext; /* d->done, once its outcome is known */
    uint64_t id, to;
    uint64_t deadline_ms;
    bool sent_any; /* a chunk of it went on the current connection */
    vd_data_done_fn cb;
    void *arg;
    enum vd_data_outcome outcome;
    int status;
    uint8_t *reply;
    size_t reply_len;
};

struct dpeer {
    struct dpeer *next;
    uint64_t id;
    bool up;
    uint64_t epoch;
    /* sender */
    uint64_t granted_b, granted_f, sent_b, sent_f;
    struct chunk *qhead, *qtail;
    size_t queued;
    /* receiver */
    uint64_t announced_b, announced_f, recv_b, recv_f, fin_b, fin_f;
    uint64_t msg_b, msg_f; /* credit used by the request being reassembled */
    bool credit_dirty;
    struct vd__reasm req_in, reply_in;
};

/* A whole request on its way through a worker, and back as its result. */
struct work {
    struct work *next;
    uint64_t from, epoch, id;
    struct vd_data_hdr h;
    uint8_t *body;
    size_t len;
    uint64_t credit_b, credit_f;
    int status;
    struct vd_buf reply;
};

struct vd_data {
    uv_loop_t *loop;
    struct vd_transport *tp;
    vd_data_handler_fn handler;
    void *ctx;
    uint32_t window, window_frames, max_message;
    uv_async_t async;
    uv_timer_t tick;
    bool tick_on;
    unsigned open_handles;
    bool closing;
    uint64_t next_id;
    struct req *reqs[REQ_BUCKETS];
    size_t n_reqs;
    struct req *done, *done_tail;
    struct dpeer *peers;
    /* workers */
    uv_mutex_t mu;
    uv_cond_t cv;
    struct work *work, *work_tail, *results, *results_tail;
    bool stop, paused;
    unsigned n_workers;
    uv_thread_t *threads;
    /* stats: loop thread, except served (under mu) */
    uint64_t served, held, held_max;
};

/* ---- small helpers --------------------------------------------------------------------------- */

static struct dpeer *dpeer_get(struct vd_data *d, uint64_t id, bool make)
{
    for (struct dpeer *p = d->peers; p; p = p->next)
        if (p->id == id)
            return p;
    if (!make)
        return NULL;
    struct dpeer *p = vd_xcalloc(1, sizeof(*p));
    p->id = id;
    p->next = d->peers;
    d->peers = p;
    return p;
}

static struct req **req_slot(struct vd_data *d, uint64_t id)
{
    struct req **s = &d->reqs[id % REQ_BUCKETS];
    while (*s && (*s)->id != id)
        s = &(*s)->hnext;
    return s;
}

static struct req *req_find(struct vd_data *d, uint64_t id)
{
    return *req_slot(d, id);
}

/* Takes r out of the table and queues its callback for the async (reply: ownership passes). */
static void req_finish(struct vd_data *d, struct req *r, enum vd_data_outcome outcome, int status,
                       uint8_t *reply, size_t len)
{
    struct req **s = req_slot(d, r->id);
    *s = r->hnext;
    d->n_reqs--;
    r->outcome = outcome;
    r->status = status;
    r->reply = reply;
    r->reply_len = len;
    r->dnext = NULL;
    if (d->done_tail)
        d->done_tail->dnext = r;
    else
        d->done = r;
    d->done_tail = r;
    uv_async_send(&d->async);
}

static void run_done(struct vd_data *d)
{
    struct req *r;
    while ((r = d->done)) {
        d->done = r->dnext;
        if (!d->done)
            d->done_tail = NULL;
        r->cb(r->arg, r->outcome, r->status, r->outcome == VD_DATA_REPLIED ? r->reply : NULL,
              r->reply_len);
        free(r->reply);
        free(r);
    }
}

static void held_add(struct vd_data *d, int64_t delta)
{
    d->held += (uint64_t)delta;
    if (d->held > d->held_max)
        d->held_max = d->held;
}

/* ---- sending --------------------------------------------------------------------------------- */

static void chunk_free_list(struct chunk *c)
{
    while (c) {
        struct chunk *n = c->next;
        free(c);
        c = n;
    }
}

/* Writes queued chunks to the connection while the peer's credit covers them. */
static void pump(struct vd_data *d, struct dpeer *p)
{
    while (p->up && p->qhead) {
        struct chunk *c = p->qhead;
        if (p->sent_b + c->len > p->granted_b || p->sent_f + 1 > p->granted_f)
            return;
        if (vd_transport_send_data(d->tp, p->id, VD_FRAME_DATA_REQ, c->data, c->len))
            return; /* the connection is going: its down event comes */
        p->qhead = c->next;
        if (!p->qhead)
            p->qtail = NULL;
        p->queued -= c->len;
        p->sent_b += c->len;
        p->sent_f++;
        struct req *r = req_find(d, c->req_id);
        if (r)
            r->sent_any = true;
        free(c);
    }
}

/* Splits one message into chunks, header included, appended to a list (head, tail). Returns the
 * bytes queued, 0 on allocation failure (nothing appended). */
static size_t chunk_message(uint64_t id, const uint64_t w[3], const uint8_t *body, size_t len,
                            struct chunk **head, struct chunk **tail)
{
    struct chunk *first = NULL, *last = NULL;
    size_t off = 0, bytes = 0;
    uint32_t seq = 0;
    do {
        size_t room = VD_DATA_FRAME_MAX - VD_CHUNK_HDR - (seq ? 0 : VD_CHUNK_HEAD);
        size_t part = len - off < room ? len - off : room;
        bool fin = off + part == len;
        struct chunk *c = malloc(sizeof(*c) + VD_CHUNK_HDR + VD_CHUNK_HEAD + part);
        if (!c) {
            chunk_free_list(first);
            return 0;
        }
        c->next = NULL;
        c->req_id = id;
        c->seq = seq;
        size_t h = vd__chunk_header(id, seq, fin, (uint32_t)len, w, c->data);
        if (part)
            memcpy(c->data + h, body + off, part);
        c->len = h + part;
        bytes += c->len;
        if (last)
            last->next = c;
        else
            first = c;
        last = c;
        off += part;
        seq++;
    } while (off < len);
    if (*tail)
        (*tail)->next = first;
    else
        *head = first;
    *tail = last;
    return bytes;
}

/* Removes the chunks of request id that are still queued (none of it was sent). */
static void unqueue(struct dpeer *p, uint64_t id)
{
    struct chunk **s = &p->qhead, *prev = NULL;
    while (*s) {
        struct chunk *c = *s;
        if (c->req_id == id) {
            *s = c->next;
            p->queued -= c->len;
            free(c);
        } else {
            prev = c;
            s = &c->next;
        }
    }
    p->qtail = prev;
}

static void on_tick(uv_timer_t *t);

/* Deadlines are watched only while requests are pending, so an idle node does not wake. */
static void tick_arm(struct vd_data *d)
{
    if (!d->tick_on && d->n_reqs && !d->closing) {
        d->tick_on = true;
        uv_timer_start(&d->tick, on_tick, TICK_MS, TICK_MS);
    }
}

static void on_tick(uv_timer_t *t)
{
    struct vd_data *d = t->data;
    uint64_t now = vd_wall_ms();
    for (size_t b = 0; b < REQ_BUCKETS; b++) {
        for (struct req *r = d->reqs[b], *next; r; r = next) {
            next = r->hnext;
            if (now < r->deadline_ms)
                continue;
            /* a request none of which was sent leaves the queue; one partly sent goes on
             * whole, or the receiver would hold half a message (it skips it, past deadline) */
            struct dpeer *p = dpeer_get(d, r->to, false);
            if (p && !r->sent_any)
                unqueue(p, r->id);
            req_finish(d, r, VD_DATA_TIMEOUT, 0, NULL, 0);
        }
    }
    if (!d->n_reqs) {
        uv_timer_stop(&d->tick);
        d->tick_on = false;
    }
}

int vd_data_send(struct vd_data *d, uint64_t to, const struct vd_data_hdr *h, const void *body,
                 size_t len, vd_data_done_fn done, void *arg, size_t *queued)
{
    if (d->closing)
        return VD_ECLOSED;
    if (len > d->max_message)
        return VD_ETOOBIG;
    int rc = vd_transport_data_open(d->tp, to);
    if (rc)
        return rc;
    struct dpeer *p = dpeer_get(d, to, true);
    struct req *r = calloc(1, sizeof(*r));
    if (!r)
        return VD_ENOMEM;
    r->id = ++d->next_id;
    r->to = to;
    r->deadline_ms = h->deadline_ms;
    r->cb = done;
    r->arg = arg;
    const uint64_t w[3] = {h->incarnation, h->ring_version, h->deadline_ms};
    size_t added = chunk_message(r->id, w, body, len, &p->qhead, &p->qtail);
    if (!added) {
        free(r);
        return VD_ENOMEM;
    }
    p->queued += added;
    struct req **s = &d->reqs[r->id % REQ_BUCKETS];
    r->hnext = *s;
    *s = r;
    d->n_reqs++;
    tick_arm(d);
    pump(d, p);
    if (queued)
        *queued = p->queued;
    return 0;
}

size_t vd_data_queued(const struct vd_data *d, uint64_t to)
{
    for (const struct dpeer *p = d->peers; p; p = p->next)
        if (p->id == to)
            return p->queued;
    return 0;
}

/* ---- receiving ------------------------------------------------------------------------------- */

/* Tells the peer how much more it may send: everything finished so far plus one window. */
static void grant(struct vd_data *d, struct dpeer *p)
{
    p->credit_dirty = false;
    if (!p->up)
        return;
    p->announced_b = p->fin_b + d->window;
    p->announced_f = p->fin_f + d->window_frames;
    uint8_t b[VD_DATA_CREDIT_LEN];
    vd_be64_put(b, p->announced_b);
    vd_be64_put(b + 8, p->announced_f);
    vd_transport_send_data(d->tp, p->id, VD_FRAME_CREDIT, b, sizeof(b));
}

static void credit_back(struct vd_data *d, struct dpeer *p, uint64_t bytes, uint64_t frames)
{
    p->fin_b += bytes;
    p->fin_f += frames;
    held_add(d, -(int64_t)bytes);
    p->credit_dirty = true;
}

/* Sends one reply, whatever its size, as chunks: replies take no credit. */
static void send_reply(struct vd_data *d, struct dpeer *p, uint64_t id, int status,
                       const uint8_t *body, size_t len)
{
    if (len > d->max_message) {
        vd_log_warn("cluster: reply of %zu bytes to node %llu is over the data message limit "
                    "(%u bytes); answering VD_ETOOBIG instead",
                    len, (unsigned long long)p->id, d->max_message);
        status = VD_ETOOBIG;
        len = 0;
    }
    const uint64_t w[3] = {(uint64_t)(int64_t)status, 0, 0};
    struct chunk *head = NULL, *tail = NULL;
    if (!chunk_message(id, w, body, len, &head, &tail))
        return; /* out of memory: the sender times out */
    for (struct chunk *c = head; c; c = c->next)
        vd_transport_send_data(d->tp, p->id, VD_FRAME_DATA_REPLY, c->data, c->len);
    chunk_free_list(head);
}

static void work_push(struct vd_data *d, struct work *w)
{
    uv_mutex_lock(&d->mu);
    w->next = NULL;
    if (d->work_tail)
        d->work_tail->next = w;
    else
        d->work = w;
    d->work_tail = w;
    uv_cond_signal(&d->cv);
    uv_mutex_unlock(&d->mu);
}

static int on_request_chunk(struct vd_data *d, struct dpeer *p, const uint8_t *body, size_t len,
                            int gate, struct vd_err *err)
{
    p->recv_b += len;
    p->recv_f++;
    if (p->recv_b > p->announced_b || p->recv_f > p->announced_f)
        return vd_errf(err, VD_ECORRUPT,
                       "node %llu sent data beyond its credit (%llu bytes, %llu frames granted)",
                       (unsigned long long)p->id, (unsigned long long)p->announced_b,
                       (unsigned long long)p->announced_f);
    held_add(d, (int64_t)len);
    p->msg_b += len;
    p->msg_f++;
    uint64_t id;
    struct vd__reasm_msg m;
    int r = vd__reasm_feed(&p->req_in, body, len, d->max_message, gate != 0, &id, &m, err);
    if (r < 0)
        return r;
    if (r == VD_REASM_MORE && !p->req_in.discard)
        return 0;
    /* dropped (refused for its clock) or whole: the credit of what arrived so far is either
     * returned now or travels with the request to the worker */
    uint64_t mb = p->msg_b, mf = p->msg_f;
    p->msg_b = p->msg_f = 0;
    if (r != VD_REASM_DONE) {
        credit_back(d, p, mb, mf);
        grant(d, p);
        return 0;
    }
    struct work *w = calloc(1, sizeof(*w));
    if (!w) {
        free(m.buf);
        return vd_errf(err, VD_ENOMEM, "out of memory queueing a data request");
    }
    w->from = p->id;
    w->epoch = p->epoch;
    w->id = m.id;
    w->h.incarnation = m.w[0];
    w->h.ring_version = m.w[1];
    w->h.deadline_ms = m.w[2];
    w->body = m.buf;
    w->len = m.len;
    w->credit_b = mb;
    w->credit_f = mf;
    work_push(d, w);
    return 0;
}

static int on_reply_chunk(struct vd_data *d, struct dpeer *p, const uint8_t *body, size_t len,
                          int gate, struct vd_err *err)
{
    uint64_t id;
    struct vd__reasm_msg m;
    int r = vd__reasm_feed(&p->reply_in, body, len, d->max_message, gate != 0, &id, &m, err);
    if (r < 0)
        return r;
    if (gate) {
        /* the replier's clock is too far ahead: its answer cannot be used */
        struct req *q = req_find(d, id);
        if (q)
            req_finish(d, q, VD_DATA_SKEW, 0, NULL, 0);
        return 0;
    }
    if (r != VD_REASM_DONE)
        return 0;
    struct req *q = req_find(d, m.id);
    if (!q || q->to != p->id) {
        free(m.buf); /* an answer after the deadline, or to an earlier incarnation of this node */
        return 0;
    }
    req_finish(d, q, VD_DATA_REPLIED, (int)(int64_t)m.w[0], m.buf, m.len);
    return 0;
}

/* The transport's callback for every frame of a data connection. */
static int on_data(void *ctx, uint64_t from, uint8_t type, uint64_t hlc, const uint8_t *body,
                   size_t len, int gate, struct vd_err *err)
{
    (void)hlc; /* the transport observed it */
    struct vd_data *d = ctx;
    struct dpeer *p = dpeer_get(d, from, false);
    if (!p || !p->up)
        return vd_errf(err, VD_ECORRUPT, "data frame from node %llu outside a connection",
                       (unsigned long long)from);
    switch (type) {
    case VD_FRAME_DATA_REQ:
        return on_request_chunk(d, p, body, len, gate, err);
    case VD_FRAME_DATA_REPLY:
        return on_reply_chunk(d, p, body, len, gate, err);
    case VD_FRAME_CREDIT: {
        if (len != VD_DATA_CREDIT_LEN)
            return vd_errf(err, VD_ECORRUPT, "credit frame of %zu bytes", len);
        uint64_t b = vd_be64_get(body), f = vd_be64_get(body + 8);
        if (b < p->granted_b || f < p->granted_f)
            return vd_errf(err, VD_ECORRUPT, "credit went backwards");
        p->granted_b = b;
        p->granted_f = f;
        pump(d, p);
        return 0;
    }
    case VD_FRAME_SKEW: {
        if (len != VD_FRAME_SKEW_LEN)
            return vd_errf(err, VD_ECORRUPT, "clock-skew frame of %zu bytes", len);
        struct req *q = body[0] == VD_FRAME_DATA_REQ ? req_find(d, vd_be64_get(body + 1)) : NULL;
        if (q && q->to == from) {
            vd_log_debug("cluster: data request %llu refused by node %llu: this node's clock is "
                         "%llu ms ahead of its own",
                         (unsigned long long)q->id, (unsigned long long)from,
                         (unsigned long long)vd_be64_get(body + 9));
            req_finish(d, q, VD_DATA_SKEW, 0, NULL, 0);
        }
        return 0;
    }
    default:
        return vd_errf(err, VD_ECORRUPT, "frame type %u on a data connection", type);
    }
}

/* A data connection opened or closed: either way what the old one carried is gone. */
static void on_link(void *ctx, uint64_t peer, bool up)
{
    struct vd_data *d = ctx;
    struct dpeer *p = dpeer_get(d, peer, true);
    p->epoch++;
    p->up = up;
    held_add(d, -(int64_t)(p->recv_b - p->fin_b));
    p->granted_b = p->granted_f = p->sent_b = p->sent_f = 0;
    p->announced_b = p->announced_f = p->recv_b = p->recv_f = p->fin_b = p->fin_f = 0;
    p->msg_b = p->msg_f = 0;
    vd__reasm_release(&p->req_in);
    vd__reasm_release(&p->reply_in);
    /* chunks at the head that continue a request already begun on the old connection cannot
     * go on a new one */
    while (p->qhead && p->qhead->seq != 0) {
        struct chunk *c = p->qhead;
        p->qhead = c->next;
        p->queued -= c->len;
        free(c);
    }
    if (!p->qhead)
        p->qtail = NULL;
    for (size_t b = 0; b < REQ_BUCKETS; b++) {
        for (struct req *r = d->reqs[b], *next; r; r = next) {
            next = r->hnext;
            if (r->to == peer && r->sent_any)
                req_finish(d, r, VD_DATA_CLOSED, 0, NULL, 0);
        }
    }
    if (up) {
        grant(d, p);
        pump(d, p);
    }
}

/* ---- workers --------------------------------------------------------------------------------- */

static void worker_main(void *arg)
{
    struct vd_data *d = arg;
    uv_mutex_lock(&d->mu);
    for (;;) {
        while (!d->stop && (d->paused || !d->work))
            uv_cond_wait(&d->cv, &d->mu);
        if (d->stop)
            break;
        struct work *w = d->work;
        d->work = w->next;
        if (!d->work)
            d->work_tail = NULL;
        d->served++;
        uv_mutex_unlock(&d->mu);

        vd_buf_init(&w->reply);
        if (vd_wall_ms() >= w->h.deadline_ms)
            w->status = VD_ETIMEOUT; /* the sender has given up: do no work for nothing */
        else if (!d->handler)
            w->status = VD_ENOTFOUND;
        else
            w->status = d->handler(d->ctx, w->from, &w->h, w->body, w->len, &w->reply);
        if (!vd_buf_ok(&w->reply)) {
            vd_buf_release(&w->reply);
            w->status = VD_ENOMEM;
        }
        free(w->body);
        w->body = NULL;

        uv_mutex_lock(&d->mu);
        w->next = NULL;
        if (d->results_tail)
            d->results_tail->next = w;
        else
            d->results = w;
        d->results_tail = w;
        uv_async_send(&d->async);
    }
    uv_mutex_unlock(&d->mu);
}

/* Loop thread: answers what the workers finished, returns its credit, runs callbacks. */
static void on_async(uv_async_t *a)
{
    struct vd_data *d = a->data;
    uv_mutex_lock(&d->mu);
    struct work *w = d->results;
    d->results = d->results_tail = NULL;
    uv_mutex_unlock(&d->mu);
    while (w) {
        struct work *next = w->next;
        struct dpeer *p = dpeer_get(d, w->from, false);
        if (p && p->up && p->epoch == w->epoch) {
            if (w->status != VD_ETIMEOUT || w->reply.len)
                send_reply(d, p, w->id, w->status, (const uint8_t *)w->reply.data, w->reply.len);
            credit_back(d, p, w->credit_b, w->credit_f);
        }
        vd_buf_release(&w->reply);
        free(w);
        w = next;
    }
    for (struct dpeer *p = d->peers; p; p = p->next)
        if (p->credit_dirty)
            grant(d, p);
    run_done(d);
}

void vd_data_pause_workers(struct vd_data *d, bool pause)
{
    uv_mutex_lock(&d->mu);
    d->paused = pause;
    uv_cond_broadcast(&d->cv);
    uv_mutex_unlock(&d->mu);
}

void vd_data_stats(const struct vd_data *d, struct vd_data_stats *out)
{
    uv_mutex_lock((uv_mutex_t *)&d->mu);
    out->served = d->served;
    uv_mutex_unlock((uv_mutex_t *)&d->mu);
    out->held_bytes = d->held;
    out->held_max = d->held_max;
}

/* ---- lifecycle ------------------------------------------------------------------------------- */

int vd_data_start(const struct vd_data_opts *o, struct vd_data **out, struct vd_err *err)
{
    *out = NULL;
    if (!o->loop || !o->tp)
        return vd_errf(err, VD_EINVAL, "data transport needs a loop and a transport");
    struct vd_data *d = calloc(1, sizeof(*d));
    if (!d)
        return vd_errf(err, VD_ENOMEM, "out of memory");
    d->loop = o->loop;
    d->tp = o->tp;
    d->handler = o->handler;
    d->ctx = o->ctx;
    d->max_message = o->max_message ? o->max_message : MAX_MESSAGE_DEFAULT;
    d->window = o->window ? o->window : WINDOW_DEFAULT;
    /* a request is finished only once it is whole, so one must fit in a window */
    if (d->window < d->max_message + VD_DATA_FRAME_MAX)
        d->window = d->max_message + VD_DATA_FRAME_MAX;
    d->window_frames = o->window_frames ? o->window_frames : WINDOW_FRAMES_DEFAULT;
    uint32_t min_frames = d->max_message / (VD_DATA_FRAME_MAX - VD_CHUNK_HDR - VD_CHUNK_HEAD) + 2;
    if (d->window_frames < min_frames)
        d->window_frames = min_frames;
    d->n_workers = o->workers ? o->workers : WORKERS_DEFAULT;
    d->threads = calloc(d->n_workers, sizeof(*d->threads));
    if (!d->threads) {
        free(d);
        return vd_errf(err, VD_ENOMEM, "out of memory");
    }
    uv_mutex_init(&d->mu);
    uv_cond_init(&d->cv);
    for (unsigned i = 0; i < d->n_workers; i++) {
        if (uv_thread_create(&d->threads[i], worker_main, d)) {
            uv_mutex_lock(&d->mu);
            d->stop = true;
            uv_cond_broadcast(&d->cv);
            uv_mutex_unlock(&d->mu);
            for (unsigned j = 0; j < i; j++)
                uv_thread_join(&d->threads[j]);
            uv_cond_destroy(&d->cv);
            uv_mutex_destroy(&d->mu);
            free(d->threads);
            free(d);
            return vd_errf(err, VD_ENOMEM, "cannot start data worker threads");
        }
    }
    uv_async_init(d->loop, &d->async, on_async);
    d->async.data = d;
    uv_timer_init(d->loop, &d->tick);
    d->tick.data = d;
    d->open_handles = 2;
    vd_transport_set_data(d->tp, on_data, on_link, d);
    *out = d;
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    struct vd_data *d = h->data;
    if (--d->open_handles)
        return;
    uv_cond_destroy(&d->cv);
    uv_mutex_destroy(&d->mu);
    free(d->threads);
    free(d);
}

static void work_free_list(struct work *w)
{
    while (w) {
        struct work *n = w->next;
        free(w->body);
        vd_buf_release(&w->reply);
        free(w);
        w = n;
    }
}

void vd_data_close(struct vd_data *d)
{
    if (!d || d->closing)
        return;
    d->closing = true;
    vd_transport_set_data(d->tp, NULL, NULL, NULL);
    uv_mutex_lock(&d->mu);
    d->stop = true;
    uv_cond_broadcast(&d->cv);
    uv_mutex_unlock(&d->mu);
    for (unsigned i = 0; i < d->n_workers; i++)
        uv_thread_join(&d->threads[i]);
    work_free_list(d->work);
    work_free_list(d->results);
    d->work = d->results = NULL;
    for (size_t b = 0; b < REQ_BUCKETS; b++)
        while (d->reqs[b])
            req_finish(d, d->reqs[b], VD_DATA_SHUTDOWN, 0, NULL, 0);
    run_done(d);
    while (d->peers) {
        struct dpeer *p = d->peers;
        d->peers = p->next;
        chunk_free_list(p->qhead);
        vd__reasm_release(&p->req_in);
        vd__reasm_release(&p->reply_in);
        free(p);
    }
    uv_timer_stop(&d->tick);
    uv_close((uv_handle_t *)&d->async, on_closed);
    uv_close((uv_handle_t *)&d->tick, on_closed);
}
