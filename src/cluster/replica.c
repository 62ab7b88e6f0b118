/*
 * The replica side of the data plane: one data request (dmsg.h) from a coordinator, served on
 * this node's database against one metadata view.
 *
 * Before touching data a replica checks that it is asked on its own ring version (else
 * wrong-ring, so it never applies, nor answers "absent" for, a range it may not own), that the
 * collection incarnation is the one it knows (a newer one it has not applied yet is "not yet"; an
 * older one was deleted: "gone"), and that it is a replica of every point named (a coordinator on
 * the same ring version cannot disagree, so that is an error). Writes are answered only once
 * durable.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"
#include "dmsg.h"
#include "vectord/db.h"
#include "vectord/filter.h"
#include "vectord/record.h"

/* Appends an ERROR reply saying err; or GONE when err says the collection is not there
 * (VD_ENOTFOUND: it was deleted between the checks above and the database's work), which the
 * coordinator answers 404 as it does a deletion seen up front. */
static int reply_error(struct vd_dmsg_reply *rp, const struct vd_err *err, struct vd_buf *out)
{
    if (err->code == VD_ENOTFOUND) {
        rp->status = VD_DMSG_GONE;
        return vd_dmsg_reply_encode(rp, out);
    }
    rp->status = VD_DMSG_ERROR;
    rp->msg = err->msg;
    rp->msg_len = (uint16_t)strnlen(err->msg, sizeof err->msg);
    return vd_dmsg_reply_encode(rp, out);
}

static int serve_write(struct vd_coll *c, const struct vd_dmsg_req *q, struct vd_dmsg_reply *rp,
                       struct vd_buf *out)
{
    const uint8_t **recs = malloc(q->n_recs * sizeof *recs);
    size_t *lens = malloc(q->n_recs * sizeof *lens);
    uint8_t *held = malloc(q->n_recs);
    struct vd_err e = {0};
    int rc = 0;
    if (!recs || !lens || !held) {
        rc = VD_ENOMEM;
        goto out;
    }
    for (uint32_t i = 0; i < q->n_recs; i++) {
        recs[i] = q->recs[i].p;
        lens[i] = q->recs[i].len;
        held[i] = VD_DMSG_HELD;
    }
    struct vd_cluster_wait w = VD_CLUSTER_WAIT_INIT;
    if (vd_db_apply(c, recs, lens, q->n_recs, vd__wait_done, &w, &e)) {
        rc = reply_error(rp, &e, out);
        goto out;
    }
    if (vd__wait(&w)) {
        if (!w.err.msg[0])
            vd_errf(&w.err, w.status, "write failed: %s", vd_strerror(w.status));
        rc = reply_error(rp, &w.err, out);
        goto out;
    }
    rp->results = held;
    rp->n_items = q->n_recs;
    rc = vd_dmsg_reply_encode(rp, out);
out:
    free(recs);
    free(lens);
    free(held);
    return rc;
}

/* The encoded record of r (of collection incarnation inc) appended to buf: the bytes every
 * replica stores for that version. */
static int encode_record(const struct vd_db_record *r, uint64_t inc, struct vd_buf *buf)
{
    struct vd_rvec v = {.kind = VD_RVEC_DENSE, .n = r->dim, .values = r->vec};
    struct vd_record rec = {.id = r->id,
                            .incarnation = inc,
                            .version = r->version,
                            .tombstone = r->tombstone,
                            .n_vectors = r->vec && !r->tombstone ? 1 : 0,
                            .vectors = &v,
                            .payload = r->payload,
                            .payload_len = r->payload_len};
    size_t need = vd_record_size(&rec), len;
    if (!vd_buf_reserve(buf, need))
        return VD_ENOMEM;
    int rc = vd_record_encode(&rec, (uint8_t *)buf->data + buf->len, need, &len);
    if (rc == 0)
        buf->len += len;
    return rc;
}

static int serve_read(struct vd_coll *c, const struct vd_dmsg_req *q, struct vd_dmsg_reply *rp,
                      struct vd_buf *out)
{
    struct vd_db_record *recs = NULL;
    size_t n = 0;
    struct vd_err e = {0};
    if (vd_db_retrieve(c, q->ids, q->n_ids, q->with_record, true, &recs, &n, &e))
        return reply_error(rp, &e, out);
    struct vd_dmsg_read_item *items = calloc(q->n_ids, sizeof *items);
    size_t *at = calloc(q->n_ids, sizeof *at); /* where item i's record starts in bytes */
    struct vd_buf bytes;
    vd_buf_init(&bytes);
    int rc = 0;
    if (!items || !at) {
        rc = VD_ENOMEM;
        goto out;
    }
    /* records come in request order, an id once, ids never written left out */
    size_t j = 0;
    uint64_t inc = vd_db_coll_schema(c)->incarnation;
    for (uint32_t i = 0; i < q->n_ids; i++) {
        if (j >= n || vd_pid_cmp(&recs[j].id, &q->ids[i]) != 0)
            continue; /* absent (or a repeat of an id already answered: absent too) */
        const struct vd_db_record *r = &recs[j++];
        items[i].copy = (struct vd_coord_copy){true, r->tombstone, r->version};
        /* a tombstone's record too: read repair sends it to the replicas that missed the delete */
        if (q->with_record) {
            at[i] = bytes.len;
            if ((rc = encode_record(r, inc, &bytes)))
                goto out;
            items[i].rec.len = (uint32_t)(bytes.len - at[i]);
        }
    }
    for (uint32_t i = 0; i < q->n_ids; i++)
        if (items[i].rec.len)
            items[i].rec.p = (const uint8_t *)bytes.data + at[i];
    rp->reads = items;
    rp->n_items = q->n_ids;
    rc = vd_dmsg_reply_encode(rp, out);
out:
    vd_buf_release(&bytes);
    free(items);
    free(at);
    vd_db_records_free(recs, n);
    return rc;
}

/* ---- searches, scroll and their verification ----
 * Candidates are ranked "higher is better" (coord.h): a distance (Euclid, Manhattan) is negated,
 * exactly, so the coordinator compares like with like; it maps the merged scores back.
 *
 * Scores are those of vd_db_search over the float vectors. A quantized (int8) collection rescores
 * its candidates with the float vectors by default, so a listed score and a verified one (the
 * exact kernel, vd_db_check) agree; a search asked with quantization.rescore false lists the
 * codes' estimate, which verification does not reproduce: the newest version's score is then the
 * estimate of whichever replica listed it, or the exact one when only verification found it. */

static float higher_better(enum vd_metric m, float score)
{
    return m == VD_METRIC_EUCLID || m == VD_METRIC_MANHATTAN ? -score : score;
}

/* The request's filter (JSON text), parsed; *out NULL when there is none. */
static int parse_filter(const struct vd_dmsg_req *q, struct vd_filter **out, struct vd_err *e)
{
    *out = NULL;
    if (!q->filter)
        return 0;
    cJSON *j = NULL;
    int rc = vd_json_parse(q->filter, q->filter_len, VD_JSON_MAX_DEPTH, &j, e);
    if (rc == 0 && !cJSON_IsNull(j))
        rc = vd_filter_parse(j, out, e);
    cJSON_Delete(j);
    if (rc)
        vd_err_prefix(e, "filter");
    return rc;
}

/* Disjoint arcs whose lengths add up to the whole ring (2^64, i.e. 0 modulo 2^64) are the whole
 * ring: then no point needs its hash checked. A single arc (t, t] is the whole ring too. */
static size_t arcs_needed(const struct vd_dmsg_req *q)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < q->n_arcs; i++)
        total += q->arcs[i][1] - q->arcs[i][0];
    return total == 0 ? 0 : q->n_arcs;
}

/* Best first: higher score, then lower id (the coordinator's order). */
static int cand_rank(const void *pa, const void *pb)
{
    const struct vd_coord_cand *a = pa, *b = pb;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    return vd_pid_cmp(&a->id, &b->id);
}

/* Lists recs[0..n) as candidates (scores mapped as above unless scroll: 0) and encodes the
 * reply. */
static int reply_cands(struct vd_coll *c, const struct vd_db_record *recs, size_t n, bool scroll,
                       bool complete, struct vd_dmsg_reply *rp, struct vd_buf *out)
{
    struct vd_coord_cand *cands = calloc(n ? n : 1, sizeof *cands);
    if (!cands)
        return VD_ENOMEM;
    enum vd_metric m = vd_db_coll_schema(c)->metric;
    for (size_t i = 0; i < n; i++)
        cands[i] = (struct vd_coord_cand){recs[i].id, recs[i].version,
                                          scroll ? 0.0f : higher_better(m, recs[i].score)};
    if (!scroll)
        qsort(cands, n, sizeof *cands, cand_rank);
    rp->cands = cands;
    rp->n_items = (uint32_t)n;
    rp->complete = complete;
    int rc = vd_dmsg_reply_encode(rp, out);
    free(cands);
    return rc;
}

/* Phase 1 of a search: this node's top k of the points in the arcs that match the filter. */
static int serve_search(struct vd_coll *c, const struct vd_dmsg_req *q, struct vd_dmsg_reply *rp,
                        struct vd_buf *out)
{
    struct vd_err e = {0};
    struct vd_filter *f = NULL;
    if (q->dim != vd_db_coll_schema(c)->dim) {
        vd_errf(&e, VD_EINVAL, "the query has %u values, the collection %u", q->dim,
                vd_db_coll_schema(c)->dim);
        return reply_error(rp, &e, out);
    }
    if (parse_filter(q, &f, &e))
        return reply_error(rp, &e, out);
    struct vd_db_search s = {.query = q->query,
                             .limit = q->k,
                             .ef = q->ef,
                             .exact = q->exact,
                             .quant_ignore = q->quant_ignore,
                             .quant_no_rescore = q->quant_no_rescore,
                             .oversampling = q->oversampling,
                             .filter = f,
                             .ranges = q->arcs,
                             .n_ranges = arcs_needed(q)};
    struct vd_db_record *recs = NULL;
    size_t n = 0;
    int rc = vd_db_search(c, &s, false, &recs, &n, &e);
    if (rc == 0 && n < q->k && !q->exact) {
        /* Fewer than k says "complete" (the coordinator then trusts that nothing lies below
         * this list): a graph walk that skipped most of its points (a filter, arcs this node
         * holds few points of) may stop short, so the few are found again by an exact scan. */
        vd_db_records_free(recs, n);
        recs = NULL;
        n = 0;
        s.exact = true;
        rc = vd_db_search(c, &s, false, &recs, &n, &e);
    }
    if (rc)
        rc = reply_error(rp, &e, out);
    else
        rc = reply_cands(c, recs, n, false, n < q->k, rp, out);
    vd_db_records_free(recs, n);
    vd_filter_free(f);
    return rc;
}

/* Phase 1 of a scroll: this node's first k ids from q->from in the arcs that match the filter. */
static int serve_scroll(struct vd_coll *c, const struct vd_dmsg_req *q, struct vd_dmsg_reply *rp,
                        struct vd_buf *out)
{
    struct vd_err e = {0};
    struct vd_filter *f = NULL;
    if (parse_filter(q, &f, &e))
        return reply_error(rp, &e, out);
    struct vd_db_record *recs = NULL;
    size_t n = 0;
    struct vd_pid next;
    bool more = false;
    int rc;
    if (vd_db_scroll_arcs(c, q->has_from ? &q->from : NULL, q->k, f, q->arcs, arcs_needed(q), false,
                          &recs, &n, &next, &more, &e))
        rc = reply_error(rp, &e, out);
    else
        rc = reply_cands(c, recs, n, true, !more, rp, out);
    vd_db_records_free(recs, n);
    vd_filter_free(f);
    return rc;
}

/* Phase 2: what this node holds of each id (version, tombstone, filter match, score). */
static int serve_verify(struct vd_coll *c, const struct vd_dmsg_req *q, struct vd_dmsg_reply *rp,
                        struct vd_buf *out)
{
    struct vd_err e = {0};
    struct vd_filter *f = NULL;
    if (q->dim && q->dim != vd_db_coll_schema(c)->dim) {
        vd_errf(&e, VD_EINVAL, "the query has %u values, the collection %u", q->dim,
                vd_db_coll_schema(c)->dim);
        return reply_error(rp, &e, out);
    }
    if (parse_filter(q, &f, &e))
        return reply_error(rp, &e, out);
    struct vd_db_check *chk = calloc(q->n_ids, sizeof *chk);
    struct vd_dmsg_verify_item *items = calloc(q->n_ids, sizeof *items);
    int rc = 0;
    if (!chk || !items) {
        rc = VD_ENOMEM;
        goto out;
    }
    if (vd_db_check(c, q->dim ? q->query : NULL, f, q->ids, q->n_ids, chk, &e)) {
        rc = reply_error(rp, &e, out);
        goto out;
    }
    enum vd_metric m = vd_db_coll_schema(c)->metric;
    for (uint32_t i = 0; i < q->n_ids; i++)
        items[i] = (struct vd_dmsg_verify_item){
            .copy = {chk[i].present, chk[i].tombstone, chk[i].version},
            .match = chk[i].match,
            .score = chk[i].match && q->dim ? higher_better(m, chk[i].score) : 0.0f};
    rp->verifies = items;
    rp->n_items = q->n_ids;
    rc = vd_dmsg_reply_encode(rp, out);
out:
    free(chk);
    free(items);
    vd_filter_free(f);
    return rc;
}

/* ---- anti-entropy repair: summaries and listings of an arc ---- */

/* The record's bytes are hashed whole: one version is the same bytes on every replica, so equal
 * trees mean equal copies, tombstones included. */
static int tree_add(const struct vd_pid *id, uint64_t hash, struct vd_version v, bool tombstone,
                    const uint8_t *rec, size_t len, void *ctx)
{
    (void)id;
    (void)tombstone;
    return vd_merkle_add(ctx, hash, v, vd_hash64(rec, len, 0)) ? VD_ECORRUPT : 0;
}

/* Appends an ERROR reply saying the arc could not be read (err: a VD_E* code). */
static int reply_arc_error(const struct vd_dmsg_req *q, int err, struct vd_dmsg_reply *rp,
                           struct vd_buf *out)
{
    struct vd_err e = {0};
    vd_errf(&e, err, "reading the arc (%llu, %llu]: %s", (unsigned long long)q->range[0],
            (unsigned long long)q->range[1], vd_strerror(err));
    return reply_error(rp, &e, out);
}

/* The hash tree of what this node holds of the arc: its root and count, and its leaves when
 * asked for them. */
static int serve_tree(struct vd_coll *c, const struct vd_dmsg_req *q, struct vd_dmsg_reply *rp,
                      struct vd_buf *out)
{
    struct vd_merkle *t = malloc(sizeof *t); /* 35 KiB: not on a worker's stack */
    int rc;
    if (!t)
        return VD_ENOMEM;
    vd_merkle_init(t, q->range[0], q->range[1], q->depth); /* depth checked by the decoder */
    rc = vd_db_scan_hash(c, q->range[0], q->range[1], tree_add, t);
    if (rc) {
        rc = reply_arc_error(q, rc, rp, out);
        goto out;
    }
    vd_merkle_finish(t);
    rp->tree_count = t->count;
    rp->tree_root = vd_merkle_root(t);
    rp->depth = q->depth;
    if (q->with_leaves) {
        rp->leaves = vd_merkle_leaves(t);
        rp->n_leaves = vd_merkle_n_leaves(q->depth);
    }
    rc = vd_dmsg_reply_encode(rp, out);
out:
    free(t);
    return rc;
}

struct listing {
    struct vd_dmsg_leaf_item *items;
    uint32_t n, k;
    bool more;
};

static int leaf_add(const struct vd_pid *id, uint64_t hash, struct vd_version v, bool tombstone,
                    const uint8_t *rec, size_t len, void *ctx)
{
    (void)hash;
    (void)rec;
    (void)len;
    struct listing *l = ctx;
    if (l->n == l->k) {
        l->more = true;
        return 1;
    }
    l->items[l->n++] = (struct vd_dmsg_leaf_item){*id, {true, tombstone, v}};
    return 0;
}

/* (id, version, tombstone) of the first k points this node holds in the sub-arc. */
static int serve_leaf(struct vd_coll *c, const struct vd_dmsg_req *q, struct vd_dmsg_reply *rp,
                      struct vd_buf *out)
{
    struct listing l = {.items = calloc(q->k, sizeof *l.items), .k = q->k};
    if (!l.items)
        return VD_ENOMEM;
    int rc = vd_db_scan_hash(c, q->range[0], q->range[1], leaf_add, &l);
    if (rc < 0) {
        rc = reply_arc_error(q, rc, rp, out);
    } else {
        rp->listing = l.items;
        rp->n_items = l.n;
        rp->complete = !l.more;
        rc = vd_dmsg_reply_encode(rp, out);
    }
    free(l.items);
    return rc;
}

/* True when self is a natural or pending replica of the arc ending at `end` (every hash of one
 * ring arc is placed alike; a repair asks about one arc, or a part of one). */
static bool owns_arc(const struct vd_meta *m, const struct vd_coll_schema *s, uint64_t end,
                     uint64_t self)
{
    struct vd_placement p;
    vd_meta_place(m, end, s->replication_factor, &p);
    for (size_t i = 0; i < p.n_natural + p.n_pending; i++)
        if ((i < p.n_natural ? p.natural[i] : p.pending[i - p.n_natural]) == self)
            return true;
    return false;
}

int vd__replica_serve(struct vd_db *db, const struct vd_meta *m, uint64_t self, const uint8_t *req,
                      size_t len, struct vd_buf *out)
{
    struct vd_dmsg_req q;
    int rc = vd_dmsg_req_decode(req, len, &q);
    if (rc) {
        vd_dmsg_req_free(&q);
        return rc;
    }
    struct vd_dmsg_reply rp = {.kind = q.kind,
                               .status = VD_DMSG_OK,
                               .attempt = q.attempt,
                               .ring_version = vd_meta_ring_version(m)};
    struct vd_err e = {0};
    struct vd_coll *c = NULL;
    if (q.ring_version != rp.ring_version) {
        rp.status = VD_DMSG_WRONG_RING;
        goto out_reply;
    }
    const struct vd_coll_schema *s = vd_meta_collection(m, q.coll);
    if (!s || s->incarnation != q.incarnation) {
        rp.status = vd_meta_incarnation_ahead(m, q.incarnation) ? VD_DMSG_NOT_YET : VD_DMSG_GONE;
        goto out_reply;
    }
    /* every point named must be this node's on this ring */
    for (uint32_t i = 0; i < q.n_recs + q.n_ids; i++) {
        struct vd_pid id;
        if (i < q.n_recs) {
            struct vd_record r;
            struct vd_rvec vecs[VD_RECORD_MAX_VECTORS];
            vd_record_decode(q.recs[i].p, q.recs[i].len, &r, vecs); /* checked by the decoder */
            if (r.incarnation != q.incarnation) {
                vd_errf(&e, VD_EINVAL, "records[%u]: incarnation %llu is not the request's", i,
                        (unsigned long long)r.incarnation);
                rc = reply_error(&rp, &e, out);
                goto out;
            }
            id = r.id;
        } else {
            id = q.ids[i - q.n_recs];
        }
        if (!vd_meta_is_replica(m, q.coll, &id, self)) {
            char ids[VD_PID_STR_MAX];
            vd_pid_format(&id, ids);
            vd_errf(&e, VD_EINVAL, "node %llu is not a replica of point %s on ring %llu",
                    (unsigned long long)self, ids, (unsigned long long)rp.ring_version);
            rc = reply_error(&rp, &e, out);
            goto out;
        }
    }
    if ((q.kind == VD_DMSG_TREE || q.kind == VD_DMSG_LEAF) && !owns_arc(m, s, q.range[1], self)) {
        vd_errf(&e, VD_EINVAL, "node %llu is not a replica of the arc (%llu, %llu] on ring %llu",
                (unsigned long long)self, (unsigned long long)q.range[0],
                (unsigned long long)q.range[1], (unsigned long long)rp.ring_version);
        rc = reply_error(&rp, &e, out);
        goto out;
    }
    /* the database follows the metadata a moment later */
    if (vd_db_coll_get(db, q.coll, &c) || vd_db_coll_schema(c)->incarnation != q.incarnation) {
        rp.status = VD_DMSG_NOT_YET;
        goto out_reply;
    }
    switch (q.kind) {
    case VD_DMSG_WRITE:
        rc = serve_write(c, &q, &rp, out);
        goto out;
    case VD_DMSG_READ:
        rc = serve_read(c, &q, &rp, out);
        goto out;
    case VD_DMSG_SEARCH:
        rc = serve_search(c, &q, &rp, out);
        goto out;
    case VD_DMSG_SCROLL:
        rc = serve_scroll(c, &q, &rp, out);
        goto out;
    case VD_DMSG_TREE:
        rc = serve_tree(c, &q, &rp, out);
        goto out;
    case VD_DMSG_LEAF:
        rc = serve_leaf(c, &q, &rp, out);
        goto out;
    default:
        rc = serve_verify(c, &q, &rp, out);
        goto out;
    }
out_reply:
    rc = vd_dmsg_reply_encode(&rp, out);
out:
    /* the coordinator logged the same id: one grep over every node's log follows the request */
    if (q.rid[0])
        vd_log_debug("replica: %s of collection '%s' (attempt %u): %s rid=%s",
                     vd_dmsg_kind_name(q.kind), q.coll, (unsigned)q.attempt,
                     rc ? "failed" : vd_dmsg_status_name(rp.status), q.rid);
    if (c)
        vd_db_coll_put(c);
    vd_dmsg_req_free(&q);
    return rc;
}
