/* Wall and monotonic clocks, and the hybrid logical clock. */
#include <pthread.h>
#include <time.h>

#include "vectord/core.h"

uint64_t vd_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t vd_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void vd_mono_deadline(struct timespec *ts, unsigned ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* When the counter would overflow 16 bits we borrow the next millisecond: timestamps stay
 * strictly increasing and run at most briefly ahead of the wall clock. */
static uint64_t advance(uint64_t last, uint64_t cand)
{
    return cand > last ? cand : last + 1;
}

uint64_t vd_hlc_tick(struct vd_hlc *c, uint64_t now_ms)
{
    c->last = advance(c->last, VD_HLC_MAKE(now_ms, 0));
    return c->last;
}

uint64_t vd_hlc_recv(struct vd_hlc *c, uint64_t remote, uint64_t now_ms)
{
    uint64_t m = remote > c->last ? remote : c->last;
    c->last = advance(m, VD_HLC_MAKE(now_ms, 0));
    return c->last;
}

static struct vd_hlc global_hlc;
static pthread_mutex_t global_mu = PTHREAD_MUTEX_INITIALIZER;

uint64_t vd_hlc_now(void)
{
    uint64_t now = vd_wall_ms();
    pthread_mutex_lock(&global_mu);
    uint64_t ts = vd_hlc_tick(&global_hlc, now);
    pthread_mutex_unlock(&global_mu);
    return ts;
}

void vd_hlc_observe(uint64_t remote)
{
    uint64_t now = vd_wall_ms();
    pthread_mutex_lock(&global_mu);
    vd_hlc_recv(&global_hlc, remote, now);
    pthread_mutex_unlock(&global_mu);
}
