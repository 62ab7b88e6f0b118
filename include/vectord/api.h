/*
 * The REST API: Qdrant-compatible collection, point and search endpoints plus vectord's own bulk
 * endpoints, registered on an HTTP server and served from a local database.
 */
#ifndef VECTORD_API_H
#define VECTORD_API_H

#include "vectord/db.h"
#include "vectord/http.h"

/* Collection metadata changes (create, delete) go through this interface so that a cluster can
 * put consensus behind them without touching the handlers. The done callback runs once the
 * change is applied on this node (any thread). */
struct vd_meta_ops {
    int (*create_collection)(void *impl, const struct vd_coll_schema *s, vd_db_done_fn done,
                             void *ctx, struct vd_err *err);
    int (*delete_collection)(void *impl, const char *name, vd_db_done_fn done, void *ctx,
                             struct vd_err *err);
    void *impl;
};

/* Single-node metadata: applied directly to the local database. */
void vd_api_local_meta(struct vd_db *db, struct vd_meta_ops *out);

struct vd_cluster;

/* Cluster metadata: create and delete go through the cluster's Raft group (any node may take
 * them; a follower forwards to the leader). A change that finds no leader within the cluster's
 * deadline completes with VD_EUNAVAIL (HTTP 503) saying so. c is borrowed and must outlive the
 * server. */
void vd_api_cluster_meta(struct vd_cluster *c, struct vd_meta_ops *out);

struct vd_api_opts {
    struct vd_db *db;            /* not owned; outlives the server */
    /* Collection changes. Ignored when `cluster` is set (the cluster's are used); when neither
     * is set, changes go straight to `db`. */
    struct vd_meta_ops meta;
    /* Not owned; outlives the server. NULL = a database without a cluster (unit tests): no
     * /cluster routes, and a lookup miss answers 404 at once. When set: the /cluster routes,
     * collection changes through Raft, and a lookup miss first waits (up to 2 s) for this node
     * to catch up with the cluster, so a collection created through another node is never
     * reported missing. */
    struct vd_cluster *cluster;
    size_t max_import_line;      /* longest NDJSON line accepted by import (0 = 64 MiB) */
};

/* Registers every route on h. The options are copied. */
int vd_api_register(struct vd_http *h, const struct vd_api_opts *o);

#endif
