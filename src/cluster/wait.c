/*
 * A completion waited for by the thread that started the work (a replica's worker applying a
 * write, the thread placing a data directory's points).
 */
#include <pthread.h>

#include "cluster_int.h"

void vd__wait_done(int status, const struct vd_err *err, uint64_t op_id, void *ctx)
{
    (void)op_id;
    struct vd_cluster_wait *w = ctx;
    pthread_mutex_lock(&w->mu);
    w->status = status;
    if (err)
        w->err = *err;
    w->done = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

int vd__wait(struct vd_cluster_wait *w)
{
    pthread_mutex_lock(&w->mu);
    while (!w->done)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
    return w->status;
}
