/* Internals shared by the files of the db module. */
#ifndef VD_DB_INT_H
#define VD_DB_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "pidx.h"
#include "pmap.h"
#include "vectord/db.h"
#include "vectord/index.h"

struct vd_coll {
    struct vd_db *db;
    atomic_int refs;
    struct vd_coll_schema schema;
    struct vd_index *ix;
    pthread_rwlock_t plock; /* guards pm and px */
    struct pmap pm;         /* live points and their binary payloads */
    struct pidx px;         /* payload indexes over pm */
    atomic_bool dropped;
    uint64_t saved_seq; /* applied seq of the last saved graph (link thread only) */
    uint64_t last_save_ns;
    char *index_path;
};

struct vd_db {
    struct vd_store *store;
    char *dir;
    uint64_t node_id;
    pthread_mutex_t mu; /* guards colls, n_colls and the worker fields */
    pthread_cond_t work;
    struct vd_coll **colls;
    size_t n_colls;
    pthread_t *workers;
    unsigned n_workers;
    bool stopping;
    unsigned save_seconds;
    atomic_bool ready;
};

void vd__db_coll_unref(struct vd_coll *c);
void vd__db_kick(struct vd_db *db);

#endif
