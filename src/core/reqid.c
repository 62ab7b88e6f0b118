/* Request ids: validation, generation and the id of the request a thread works for. */
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "vectord/core.h"

static _Thread_local char current[VD_REQID_MAX + 1];

bool vd_reqid_valid(const char *s, size_t len)
{
    if (!s || len == 0 || len > VD_REQID_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return false;
    return true;
}

/* splitmix64's finaliser: a bijection of 64-bit values, so distinct counters give distinct ids */
static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static _Atomic uint64_t counter;
static _Atomic uint64_t seed;

void vd_reqid_new(char *out)
{
    uint64_t s = atomic_load_explicit(&seed, memory_order_relaxed);
    if (!s) {
        /* per process: two nodes (or a restarted one) do not walk the same sequence */
        uint64_t cand = mix(vd_mono_ns() ^ (vd_wall_ms() << 20) ^ ((uint64_t)getpid() << 40)) | 1;
        uint64_t zero = 0;
        atomic_compare_exchange_strong(&seed, &zero, cand);
        s = atomic_load(&seed);
    }
    /* the seed is odd, so n * seed repeats only after 2^64 ids (n from 1: mix(0) is 0) */
    uint64_t v = mix((atomic_fetch_add_explicit(&counter, 1, memory_order_relaxed) + 1) * s);
    static const char hex[] = "0123456789abcdef";
    for (int i = VD_REQID_GEN_LEN - 1; i >= 0; i--, v >>= 4)
        out[i] = hex[v & 15];
    out[VD_REQID_GEN_LEN] = '\0';
}

const char *vd_reqid_current(void)
{
    return current;
}

void vd_reqid_set(const char *id)
{
    size_t n = id ? strnlen(id, VD_REQID_MAX) : 0;
    memcpy(current, id ? id : "", n);
    current[n] = '\0';
}
