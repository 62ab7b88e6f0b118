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

struct vd_api_opts {
    struct vd_db *db;            /* not owned; outlives the server */
    struct vd_meta_ops meta;
    size_t max_import_line;      /* longest NDJSON line accepted by import (0 = 64 MiB) */
};

/* Registers every route on h. The options are copied. */
int vd_api_register(struct vd_http *h, const struct vd_api_opts *o);

#endif
