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
    /* Every change of this collection at or below this counter is in its saved graph (worker 0
     * and close only): what the change log may be trimmed to as far as this collection goes. */
    uint64_t durable_through;
    /* Lowest change counter a committed write failed to apply to the index or payload columns
     * (out of memory), 0 when none: a worker re-applies the change log from there, and the
     * graph is not saved meanwhile, since its counter would claim the missing write. Changed
     * with plock held for writing. */
    _Atomic uint64_t catchup_from;
    _Atomic uint64_t catchup_next_ns; /* no retry of a failed catch-up before this time */
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
    /* Highest change counter whose write completion has run (stored by the storage writer
     * thread only): every change at or below it is in memory, or noted for catch-up. */
    _Atomic uint64_t applied_through;
    /* hints not stored, per target (vd_db_hints_refused); under hint_mu */
    pthread_mutex_t hint_mu;
    struct {
        uint64_t target, count;
    } refused[64];
    size_t n_refused;
};

void vd__db_coll_unref(struct vd_coll *c);
/* Apply one point's state to the payload columns (plock held for writing). set takes bin on
 * success (VD_ENOMEM changes nothing); drop forgets the point. */
int vd__db_set_payload(struct vd_coll *c, const struct vd_pid *id, uint8_t *bin, uint32_t len);
void vd__db_drop_payload(struct vd_coll *c, const struct vd_pid *id);
/* Records that the committed change `seq` is missing from memory (plock held for writing). */
void vd__db_note_lag(struct vd_coll *c, uint64_t seq);
void vd__db_kick(struct vd_db *db);

#endif
