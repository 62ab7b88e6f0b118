/*
 * One data message (dmsg.h) from this node's coordinator to one replica: to a peer over the data
 * transport, to this node on libuv's thread pool, where the replica side (replica.c) serves it
 * exactly as it serves a peer's. Writes, reads (node_data.c) and searches (node_search.c) send
 * through here, so a local replica and a remote one answer alike.
 */
#include <stdlib.h>
#include <string.h>

#include "dmsg.h"
#include "node_int.h"

struct dcall {
    struct vd_cluster *c;
    uint64_t node;
    uint64_t sent_ns; /* monotonic */
    uint8_t kind;     /* of the request (dmsg.h) */
    uint8_t *body;
    size_t len;
    struct vd_buf reply;
    uv_work_t work;
    vd__dcall_fn fn;
    void *arg;
};

static void dcall_free(struct dcall *d)
{
    vd_buf_release(&d->reply);
    free(d->body);
    free(d);
}

/* The kinds whose replies time a peer for the speculative delay of reads and searches (a
 * write's trip includes its commit, which reads never wait for). */
static bool timed_kind(uint8_t kind)
{
    return kind == VD_DMSG_READ || kind == VD_DMSG_SEARCH || kind == VD_DMSG_SCROLL ||
           kind == VD_DMSG_VERIFY;
}

static void on_peer_done(void *arg, enum vd_data_outcome outcome, int status, const uint8_t *reply,
                         size_t len)
{
    struct dcall *d = arg;
    if (!d->c->dreqs_open)
        outcome = VD_DATA_SHUTDOWN;
    if (outcome == VD_DATA_REPLIED && status != 0)
        reply = NULL, len = 0; /* the peer's handler failed: no answer */
    else if (outcome == VD_DATA_REPLIED && timed_kind(d->kind))
        vd__cluster_data_rtt(d->c, d->node, (vd_mono_ns() - d->sent_ns) / 1000);
    d->fn(d->arg, outcome, reply, len);
    dcall_free(d);
}

static void local_work(uv_work_t *w)
{
    struct dcall *d = w->data;
    struct vd_meta_view *v = vd__cluster_view_acquire(d->c);
    if (!v)
        return;
    if (vd__replica_serve(d->c->db, vd_meta_view_state(v), d->c->id, d->body, d->len, &d->reply))
        d->reply.len = 0;
    vd_meta_view_release(v);
}

static void local_after(uv_work_t *w, int status)
{
    struct dcall *d = w->data;
    if (status == UV_ECANCELED || !d->c->dreqs_open)
        d->fn(d->arg, VD_DATA_SHUTDOWN, NULL, 0);
    else
        d->fn(d->arg, VD_DATA_REPLIED, d->reply.len ? (const uint8_t *)d->reply.data : NULL,
              d->reply.len);
    dcall_free(d);
}

bool vd__dcall_reply(uint64_t node, enum vd_data_outcome outcome, const uint8_t *reply, size_t len,
                     uint8_t kind, uint32_t attempt, struct vd_dmsg_reply *rp, uint8_t *status)
{
    memset(rp, 0, sizeof *rp);
    if (outcome == VD_DATA_REPLIED && reply) {
        if (vd_dmsg_reply_decode(reply, len, rp) == 0 && rp->kind == kind &&
            rp->attempt == attempt) {
            *status = VD_COORD_OK;
            return true;
        }
        vd_dmsg_reply_free(rp);
        vd_log_warn("cluster: a malformed data reply from node %llu", (unsigned long long)node);
    }
    /* a timeout counts as a refusal: the deadline counts the replica out anyway */
    *status = outcome == VD_DATA_CLOSED ? VD_COORD_CLOSED : VD_COORD_REFUSED;
    return false;
}

int vd__cluster_coll_gone(struct vd_err *e, const char *coll)
{
    return vd_errf(e, VD_ENOTFOUND, "Not found: Collection `%s` doesn't exist!", coll);
}

int vd__cluster_dcall(struct vd_cluster *c, uint64_t node, const struct vd_data_hdr *h,
                      uint8_t *body, size_t len, vd__dcall_fn fn, void *arg)
{
    struct dcall *d = calloc(1, sizeof *d);
    if (!d) {
        free(body);
        return VD_ENOMEM;
    }
    /* dmsg.h: a request begins with its version byte, then its kind */
    *d = (struct dcall){.c = c,
                        .node = node,
                        .sent_ns = vd_mono_ns(),
                        .kind = len >= 2 ? body[1] : 0,
                        .body = body,
                        .len = len,
                        .fn = fn,
                        .arg = arg};
    vd_buf_init(&d->reply);
    int rc;
    if (node == c->id) {
        d->work.data = d;
        rc = uv_queue_work(&c->loop, &d->work, local_work, local_after) ? VD_ECLOSED : 0;
    } else {
        rc =
            c->data ? vd_data_send(c->data, node, h, body, len, on_peer_done, d, NULL) : VD_ECLOSED;
        if (rc == 0) { /* the transport keeps its own copy */
            free(d->body);
            d->body = NULL;
        }
    }
    if (rc)
        dcall_free(d);
    return rc;
}
