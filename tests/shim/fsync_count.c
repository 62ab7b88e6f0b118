/*
 * LD_PRELOAD shim for durability tests: counts fsync, fdatasync, msync and sync_file_range calls
 * and can make them fail with EIO, so a test can prove that a write is acknowledged only after
 * the data reached a sync call and that a failed sync is reported rather than acknowledged.
 *
 * Control: environment VD_SHIM_FSYNC_FAIL=1 fails every call from the start; at run time a
 * program that runs under the shim finds these functions with dlsym(RTLD_DEFAULT, ...):
 *   uint64_t vd_shim_fsync_count(void);   calls seen so far (failed ones included)
 *   void vd_shim_fsync_fail(int on);       make later calls fail with EIO (1) or pass (0)
 *   uint64_t vd_shim_fsync_last_ns(void);  CLOCK_MONOTONIC time the last call returned
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static atomic_uint_fast64_t calls;
static atomic_uint_fast64_t last_ns;
static atomic_int fail = -1; /* -1: not yet read from the environment */

uint64_t vd_shim_fsync_count(void);
void vd_shim_fsync_fail(int on);
uint64_t vd_shim_fsync_last_ns(void);

uint64_t vd_shim_fsync_count(void)
{
    return atomic_load(&calls);
}

void vd_shim_fsync_fail(int on)
{
    atomic_store(&fail, on ? 1 : 0);
}

uint64_t vd_shim_fsync_last_ns(void)
{
    return atomic_load(&last_ns);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Counts the call; returns nonzero if it must fail. */
static int enter(void)
{
    int f = atomic_load(&fail);
    if (f < 0) {
        const char *e = getenv("VD_SHIM_FSYNC_FAIL");
        int want = e && *e == '1';
        atomic_compare_exchange_strong(&fail, &f, want);
        f = atomic_load(&fail);
    }
    atomic_fetch_add(&calls, 1);
    return f == 1;
}

static void leave(void)
{
    atomic_store(&last_ns, now_ns());
}

typedef int (*fd_fn)(int);
typedef int (*msync_fn)(void *, size_t, int);
typedef int (*sfr_fn)(int, off64_t, off64_t, unsigned int);

/* The real function, looked up once (a racing second lookup finds the same address). */
static void *real(const char *name, void **slot)
{
    void *p = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (!p) {
        p = dlsym(RTLD_NEXT, name);
        __atomic_store_n(slot, p, __ATOMIC_RELEASE);
    }
    return p;
}

static void *p_fsync, *p_fdatasync, *p_msync, *p_sfr;

int fsync(int fd)
{
    fd_fn f = (fd_fn)real("fsync", &p_fsync);
    int r = -1;
    if (enter())
        errno = EIO;
    else
        r = f(fd);
    leave();
    return r;
}

int fdatasync(int fd)
{
    fd_fn f = (fd_fn)real("fdatasync", &p_fdatasync);
    int r = -1;
    if (enter())
        errno = EIO;
    else
        r = f(fd);
    leave();
    return r;
}

int msync(void *addr, size_t len, int flags)
{
    msync_fn f = (msync_fn)real("msync", &p_msync);
    int r = -1;
    if (enter())
        errno = EIO;
    else
        r = f(addr, len, flags);
    leave();
    return r;
}

int sync_file_range(int fd, off64_t off, off64_t n, unsigned int flags)
{
    sfr_fn f = (sfr_fn)real("sync_file_range", &p_sfr);
    int r = -1;
    if (enter())
        errno = EIO;
    else
        r = f(fd, off, n, flags);
    leave();
    return r;
}
