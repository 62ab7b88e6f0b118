/* Wall and monotonic clocks, and the hybrid logical clock. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vectord/core.h"

static _Atomic int64_t test_offset_ms;

void vd_clock_set_test_offset_ms(int64_t offset_ms)
{
    atomic_store_explicit(&test_offset_ms, offset_ms, memory_order_relaxed);
}

int64_t vd_clock_test_offset_ms(void)
{
    return atomic_load_explicit(&test_offset_ms, memory_order_relaxed);
}

uint64_t vd_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    /* unsigned wrap-around adds a negative offset */
    return ms + (uint64_t)atomic_load_explicit(&test_offset_ms, memory_order_relaxed);
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

int vd_hlc_check_skew(uint64_t remote_hlc, uint64_t now_ms, uint64_t max_offset_ms)
{
    uint64_t phys = VD_HLC_PHYS(remote_hlc);
    return phys > now_ms && phys - now_ms > max_offset_ms ? VD_EUNAVAIL : 0;
}

void vd_clock_peer_init(struct vd_clock_peer *p)
{
    memset(p, 0, sizeof *p);
}

int vd_clock_peer_sample(struct vd_clock_peer *p, uint64_t t_send_ms, uint64_t remote_hlc,
                         uint64_t t_recv_ms)
{
    return vd_clock_peer_sample_us(p, t_send_ms, remote_hlc, t_recv_ms, 0);
}

int vd_clock_peer_sample_us(struct vd_clock_peer *p, uint64_t t_send_ms, uint64_t remote_hlc,
                            uint64_t t_recv_ms, uint64_t rtt_us)
{
    if (t_recv_ms < t_send_ms || remote_hlc == 0)
        return VD_EINVAL;
    uint64_t rtt = t_recv_ms - t_send_ms;
    /* the midpoint in doubled units keeps the half millisecond of an odd round trip */
    int64_t remote2 = (int64_t)VD_HLC_PHYS(remote_hlc) * 2;
    int64_t mid2 = (int64_t)t_send_ms * 2 + (int64_t)rtt;
    int64_t d = remote2 - mid2;
    p->s[p->next].offset_ms = d >= 0 ? (d + 1) / 2 : -((-d + 1) / 2); /* half away from 0 */
    p->s[p->next].rtt_ms = rtt;
    p->s[p->next].rtt_us = rtt_us ? rtt_us : rtt * 1000;
    p->next = (p->next + 1) % VD_CLOCK_SAMPLES;
    if (p->n < VD_CLOCK_SAMPLES)
        p->n++;
    return 0;
}

int vd_clock_peer_offset(const struct vd_clock_peer *p, int64_t *offset_ms, uint64_t *rtt_ms)
{
    if (p->n == 0)
        return VD_ENOTFOUND;
    unsigned best = 0;
    for (unsigned i = 1; i < p->n; i++)
        if (p->s[i].rtt_ms < p->s[best].rtt_ms)
            best = i;
    *offset_ms = p->s[best].offset_ms;
    if (rtt_ms)
        *rtt_ms = p->s[best].rtt_ms;
    return 0;
}

uint64_t vd_clock_peer_rtt_max(const struct vd_clock_peer *p)
{
    uint64_t m = 0;
    for (unsigned i = 0; i < p->n; i++)
        if (p->s[i].rtt_ms > m)
            m = p->s[i].rtt_ms;
    return m;
}

void vd_rtt_window_add(struct vd_rtt_window *w, uint64_t rtt_us)
{
    w->us[w->next] = rtt_us > UINT32_MAX ? UINT32_MAX : (uint32_t)rtt_us;
    w->next = (w->next + 1) % VD_RTT_WINDOW;
    if (w->n < VD_RTT_WINDOW)
        w->n++;
}

static int u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

uint64_t vd_rtt_window_p99(const struct vd_rtt_window *w)
{
    if (w->n == 0)
        return 0;
    uint32_t sorted[VD_RTT_WINDOW];
    memcpy(sorted, w->us, w->n * sizeof sorted[0]);
    qsort(sorted, w->n, sizeof sorted[0], u32_cmp);
    unsigned rank = (w->n * 99 + 99) / 100; /* ceil(0.99 n), 1-based */
    return sorted[rank - 1];
}

int vd_clock_peer_rtt_us(const struct vd_clock_peer *p, uint64_t *last_us, uint64_t *max_us)
{
    if (p->n == 0)
        return VD_ENOTFOUND;
    uint64_t m = 0;
    for (unsigned i = 0; i < p->n; i++)
        if (p->s[i].rtt_us > m)
            m = p->s[i].rtt_us;
    /* next is where the coming sample goes: the last one sits just before it */
    *last_us = p->s[(p->next + VD_CLOCK_SAMPLES - 1) % VD_CLOCK_SAMPLES].rtt_us;
    *max_us = m;
    return 0;
}

bool vd_clock_peer_far(const struct vd_clock_peer *p, uint64_t max_offset_ms)
{
    int64_t off;
    uint64_t rtt;
    if (vd_clock_peer_offset(p, &off, &rtt))
        return false;
    uint64_t mag = off < 0 ? (uint64_t)0 - (uint64_t)off : (uint64_t)off;
    return mag > max_offset_ms + rtt / 2;
}

bool vd_clock_skewed(const struct vd_clock_peer *const *peers, size_t n_peers, size_t n_members,
                     uint64_t max_offset_ms)
{
    size_t far = 0;
    for (size_t i = 0; i < n_peers; i++)
        far += vd_clock_peer_far(peers[i], max_offset_ms);
    return n_members > 1 && far >= n_members / 2 + 1;
}
