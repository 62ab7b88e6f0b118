/* Waiting in a test for an asynchronous completion (vd_db_done_fn shape): pass on_done and a
 * struct waiter as its context, then wait_for() returns the status. Header-only, for tests. */
#ifndef VD_TEST_WAITER_H
#define VD_TEST_WAITER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "vectord/core.h"

struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    int status;
    uint64_t op;
    char msg[512];
};

#define WAITER_INIT {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0, 0, ""}

static inline void on_done(int status, const struct vd_err *err, uint64_t op, void *ctx)
{
    struct waiter *w = ctx;
    pthread_mutex_lock(&w->mu);
    w->done = true;
    w->status = status;
    w->op = op;
    snprintf(w->msg, sizeof w->msg, "%s", err ? err->msg : "");
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static inline int wait_for(struct waiter *w)
{
    pthread_mutex_lock(&w->mu);
    while (!w->done)
        pthread_cond_wait(&w->cv, &w->mu);
    w->done = false;
    pthread_mutex_unlock(&w->mu);
    return w->status;
}

#endif
