/*
 * The coordinator side of searches, scroll and count over the ring (contract in
 * include/vectord/cluster.h). Not served yet: every call fails at once, so callers can be built
 * against the final interface.
 */
#include "node_int.h"

int vd_cluster_search(struct vd_cluster *c, const char *coll, uint64_t incarnation,
                      const struct vd_cluster_search *q, vd_cluster_records_fn done, void *ctx,
                      struct vd_err *err)
{
    (void)c, (void)coll, (void)incarnation, (void)q, (void)done, (void)ctx;
    return vd_errf(err, VD_EUNAVAIL, "searches over the ring are not served yet");
}

int vd_cluster_scroll(struct vd_cluster *c, const char *coll, uint64_t incarnation,
                      const struct vd_cluster_scroll *q, vd_cluster_scroll_fn done, void *ctx,
                      struct vd_err *err)
{
    (void)c, (void)coll, (void)incarnation, (void)q, (void)done, (void)ctx;
    return vd_errf(err, VD_EUNAVAIL, "scroll over the ring is not served yet");
}

int vd_cluster_count(struct vd_cluster *c, const char *coll, uint64_t incarnation,
                     const cJSON *filter, unsigned r, uint32_t timeout_ms, vd_cluster_count_fn done,
                     void *ctx, struct vd_err *err)
{
    (void)c, (void)coll, (void)incarnation, (void)filter, (void)r, (void)timeout_ms, (void)done,
        (void)ctx;
    return vd_errf(err, VD_EUNAVAIL, "count over the ring is not served yet");
}
