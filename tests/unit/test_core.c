#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include <pthread.h>

#include "vectord/core.h"

static void test_pid_roundtrip(void **state)
{
    struct vd_pid a = {.type = VD_PID_NUM, .u.num = UINT64_MAX}, b;
    uint8_t k[VD_PID_KEY_MAX];
    char s[VD_PID_STR_MAX];
    size_t n = vd_pid_encode(&a, k);
    assert_int_equal(n, 9);
    assert_int_equal(vd_pid_decode(k, n, &b), 0);
    assert_true(vd_pid_eq(&a, &b));
    vd_pid_format(&a, s);
    assert_string_equal(s, "18446744073709551615");
    uint64_t v;
    assert_int_equal(vd_pid_parse_u64("18446744073709551615", 20, &v), 0);
    assert_true(v == UINT64_MAX);
    assert_int_equal(vd_pid_parse_u64("18446744073709551616", 20, &v), VD_ERANGE);
    assert_int_equal(vd_pid_parse_u64("012", 3, &v), VD_EINVAL);
    assert_int_equal(vd_pid_parse_u64("-1", 2, &v), VD_EINVAL);

    const char *u = "550E8400-e29b-41d4-a716-446655440000";
    assert_int_equal(vd_pid_parse_uuid(u, strlen(u), &a), 0);
    vd_pid_format(&a, s);
    assert_string_equal(s, "550e8400-e29b-41d4-a716-446655440000");
    assert_int_equal(vd_pid_parse_uuid("550e8400e29b41d4a716446655440000", 32, &b), 0);
    assert_true(vd_pid_eq(&a, &b));
    assert_int_equal(vd_pid_parse_uuid("550e8400-e29b-41d4-a716-44665544000g", 36, &b), VD_EINVAL);
    assert_int_equal(vd_pid_parse_uuid("not-a-uuid", 10, &b), VD_EINVAL);
    struct vd_pid num = {.type = VD_PID_NUM, .u.num = UINT64_MAX};
    assert_true(vd_pid_cmp(&num, &a) < 0); /* integers sort before UUIDs */
}

static void test_hlc(void **state)
{
    struct vd_hlc c = {0};
    uint64_t t1 = vd_hlc_tick(&c, 1000);
    uint64_t t2 = vd_hlc_tick(&c, 1000);
    uint64_t t3 = vd_hlc_tick(&c, 999); /* clock went backwards */
    assert_true(t1 < t2 && t2 < t3);
    assert_int_equal(VD_HLC_PHYS(t3), 1000);
    uint64_t t4 = vd_hlc_recv(&c, VD_HLC_MAKE(5000, 7), 1001);
    assert_true(t4 > VD_HLC_MAKE(5000, 7));
    uint64_t g1 = vd_hlc_now(), g2 = vd_hlc_now();
    assert_true(g2 > g1);
}

static void test_errors(void **state)
{
    struct vd_err e;
    assert_int_equal(vd_errf(&e, VD_EINVAL, "vector has %d values, expected %d", 3, 4), VD_EINVAL);
    vd_err_prefix(&e, "collection '%s'", "docs");
    assert_string_equal(e.msg, "collection 'docs': vector has 3 values, expected 4");
    assert_int_equal(vd_err_http_status(VD_ERANGE), 422);
    assert_int_equal(vd_err_http_status(VD_EEXIST), 409);
    assert_string_equal(vd_strerror(1), "unknown error");
}

static void test_crc(void **state)
{
    /* RFC 3720 test vector: 32 bytes of zeros */
    uint8_t z[32] = {0};
    assert_int_equal(vd_crc32c(0, z, 32), 0x8a9136aa);
    assert_int_equal(vd_crc32c(0, "123456789", 9), 0xe3069283);
    assert_true(vd_hash64("a", 1, 0) != vd_hash64("b", 1, 0));
}

/* The placement hash is part of the on-disk and on-wire contract: pinned values catch any change
 * that would move every point to other replicas. */
static void test_place_hash(void **state)
{
    struct vd_pid a = {.type = VD_PID_NUM, .u.num = 42}, b = {.type = VD_PID_NUM, .u.num = 43};
    uint8_t ka[VD_PID_KEY_MAX], kb[VD_PID_KEY_MAX];
    size_t na = vd_pid_encode(&a, ka), nb = vd_pid_encode(&b, kb);
    assert_true(vd_place_hash("docs", ka, na) == UINT64_C(0x4384dfb0b67c9110));
    assert_true(vd_place_hash("", ka, na) == UINT64_C(0x991f8232c686e6a3));
    /* the collection and the key both matter */
    assert_true(vd_place_hash("docs", ka, na) != vd_place_hash("docs2", ka, na));
    assert_true(vd_place_hash("docs", ka, na) != vd_place_hash("docs", kb, nb));
    /* one hash: the id alone is not what places a point */
    assert_true(vd_place_hash("docs", ka, na) != vd_pid_hash(&a));
    /* a UUID whose bytes end like an integer key hashes elsewhere (the type byte is hashed) */
    struct vd_pid u = {.type = VD_PID_UUID};
    memcpy(u.u.uuid + 8, ka + 1, 8);
    uint8_t ku[VD_PID_KEY_MAX];
    size_t nu = vd_pid_encode(&u, ku);
    assert_true(vd_place_hash("docs", ku, nu) != vd_place_hash("docs", ka, na));
}

/* (start, end] with the wrapping arc split, at every edge: both ends, both sides of each end, and
 * the extremes of the hash space. */
static void test_ring_contains(void **state)
{
    /* a plain arc */
    assert_false(vd_ring_contains(10, 20, 10));
    assert_true(vd_ring_contains(10, 20, 11));
    assert_true(vd_ring_contains(10, 20, 20));
    assert_false(vd_ring_contains(10, 20, 21));
    assert_false(vd_ring_contains(10, 20, 0));
    assert_false(vd_ring_contains(10, 20, UINT64_MAX));
    /* the arc that wraps past 2^64-1 */
    assert_true(vd_ring_contains(UINT64_MAX - 5, 5, UINT64_MAX));
    assert_true(vd_ring_contains(UINT64_MAX - 5, 5, 0));
    assert_true(vd_ring_contains(UINT64_MAX - 5, 5, 5));
    assert_true(vd_ring_contains(UINT64_MAX - 5, 5, UINT64_MAX - 4));
    assert_false(vd_ring_contains(UINT64_MAX - 5, 5, UINT64_MAX - 5));
    assert_false(vd_ring_contains(UINT64_MAX - 5, 5, 6));
    /* arcs ending at the extremes: (x, UINT64_MAX] does not wrap, (x, 0] holds only the top and 0 */
    assert_true(vd_ring_contains(7, UINT64_MAX, UINT64_MAX));
    assert_false(vd_ring_contains(7, UINT64_MAX, 0));
    assert_true(vd_ring_contains(7, 0, 0));
    assert_true(vd_ring_contains(7, 0, UINT64_MAX));
    assert_false(vd_ring_contains(7, 0, 1));
    assert_false(vd_ring_contains(7, 0, 7));
    /* (UINT64_MAX, x] starts at 0 */
    assert_true(vd_ring_contains(UINT64_MAX, 3, 0));
    assert_false(vd_ring_contains(UINT64_MAX, 3, UINT64_MAX));
    /* a single-token ring: the whole ring */
    assert_true(vd_ring_contains(9, 9, 9));
    assert_true(vd_ring_contains(9, 9, 0));
    assert_true(vd_ring_contains(9, 9, UINT64_MAX));
    /* consecutive arcs of a ring cover each hash exactly once */
    const uint64_t tok[] = {0, 5, UINT64_MAX / 2, UINT64_MAX - 1};
    const size_t nt = sizeof tok / sizeof tok[0];
    const uint64_t probes[] = {0, 1, 4, 5, 6, UINT64_MAX / 2, UINT64_MAX / 2 + 1, UINT64_MAX - 1,
                               UINT64_MAX};
    for (size_t p = 0; p < sizeof probes / sizeof probes[0]; p++) {
        int n = 0;
        for (size_t i = 0; i < nt; i++)
            n += vd_ring_contains(tok[(i + nt - 1) % nt], tok[i], probes[p]);
        assert_int_equal(n, 1);
    }
}

/* A node whose wall clock jumps back an hour: its HLC keeps the order it had (every timestamp
 * after the jump is above every one before), and last-write-wins between its writes and another
 * node's decides exactly as the two versions' HLCs say, whatever the wall clocks said. */
static void test_hlc_clock_jumps_back_an_hour(void **state)
{
    const uint64_t t0 = UINT64_C(1764900000000), hour = 3600000;
    struct vd_hlc a = {0}, b = {0}; /* node 1 (jumps), node 2 (correct) */
    uint64_t last = 0;
    for (uint64_t ms = t0; ms < t0 + 100; ms++) {
        uint64_t ts = vd_hlc_tick(&a, ms);
        assert_true(ts > last);
        last = ts;
    }
    uint64_t before_jump = last;
    struct vd_version w1 = {.hlc = before_jump, .node = 1};
    /* the jump: an hour back, then the clock runs on; 200,000 writes in its first ms overflow the
     * 16-bit counter several times and must still strictly increase */
    uint64_t now = t0 + 100 - hour;
    for (int i = 0; i < 200000; i++) {
        uint64_t ts = vd_hlc_tick(&a, now + (uint64_t)(i / 100000));
        assert_true(ts > last);
        last = ts;
    }
    /* the physical part stays at the pre-jump time, running ahead only by the overflow */
    assert_true(VD_HLC_PHYS(last) >= t0 + 99 && VD_HLC_PHYS(last) <= t0 + 99 + 4);
    struct vd_version w2 = {.hlc = last, .node = 1};
    assert_true(vd_version_cmp(w2, w1) > 0); /* its own later write wins */

    /* node 2, with a correct clock, writes the same id 50 ms after the jump: its HLC is above
     * node 1's stalled one, so it wins, as its HLC says */
    struct vd_version w3 = {.hlc = vd_hlc_tick(&b, t0 + 150), .node = 2};
    assert_true(vd_version_cmp(w3, w2) > 0);
    /* node 1 writes again later in real time without having heard from node 2: its HLC is still
     * the stalled one, lower than node 2's, so it loses (the write order of wall time does not
     * count, only HLCs do) */
    struct vd_version w4 = {.hlc = vd_hlc_tick(&a, t0 + 200 - hour), .node = 1};
    assert_true(w4.hlc > w2.hlc);
    assert_true(w4.hlc < w3.hlc);
    assert_true(vd_version_cmp(w4, w3) < 0);
    /* once node 1 has observed node 2's timestamp its next write wins over it */
    vd_hlc_recv(&a, w3.hlc, t0 + 201 - hour);
    struct vd_version w5 = {.hlc = vd_hlc_tick(&a, t0 + 202 - hour), .node = 1};
    assert_true(vd_version_cmp(w5, w3) > 0);
    /* equal HLCs from two nodes: the node id decides, the same way both ways round */
    struct vd_version x = {.hlc = w3.hlc, .node = 1}, y = {.hlc = w3.hlc, .node = 2};
    assert_true(vd_version_cmp(y, x) > 0 && vd_version_cmp(x, y) < 0);

    /* the process-wide clock through the test offset: an hour back, then forward again */
    uint64_t g1 = vd_hlc_now();
    uint64_t w_before = vd_wall_ms();
    vd_clock_set_test_offset_ms(-(int64_t)hour);
    uint64_t w_after = vd_wall_ms();
    assert_true(w_after + hour >= w_before && w_after + hour < w_before + 5000);
    assert_true(vd_clock_test_offset_ms() == -(int64_t)hour);
    uint64_t prev = g1;
    for (int i = 0; i < 1000; i++) {
        uint64_t g = vd_hlc_now();
        assert_true(g > prev);
        prev = g;
    }
    assert_true(VD_HLC_PHYS(prev) >= VD_HLC_PHYS(g1)); /* not an hour back */
    vd_clock_set_test_offset_ms(0);
    assert_true(vd_hlc_now() > prev);
}

static void test_hlc_check_skew(void **state)
{
    const uint64_t now = UINT64_C(1764900000000);
    assert_int_equal(vd_hlc_check_skew(VD_HLC_MAKE(now, 5), now, 500), 0);
    assert_int_equal(vd_hlc_check_skew(VD_HLC_MAKE(now + 500, 0xffff), now, 500), 0);
    assert_int_equal(vd_hlc_check_skew(VD_HLC_MAKE(now + 501, 0), now, 500), VD_EUNAVAIL);
    assert_int_equal(vd_hlc_check_skew(VD_HLC_MAKE(now + 3600000, 0), now, 500), VD_EUNAVAIL);
    /* behind is never refused, however far */
    assert_int_equal(vd_hlc_check_skew(VD_HLC_MAKE(now - 3600000, 0), now, 500), 0);
    assert_int_equal(vd_hlc_check_skew(0, now, 500), 0);
    assert_int_equal(vd_hlc_check_skew(VD_HLC_MAKE(now + 1, 0), now, 0), VD_EUNAVAIL);
}

static void test_clock_peer_offset(void **state)
{
    struct vd_clock_peer p;
    vd_clock_peer_init(&p);
    int64_t off;
    uint64_t rtt;
    assert_int_equal(vd_clock_peer_offset(&p, &off, &rtt), VD_ENOTFOUND);
    assert_false(vd_clock_peer_far(&p, 0));
    assert_int_equal(vd_clock_peer_rtt_max(&p), 0);
    const uint64_t t = UINT64_C(1764900000000);
    /* peer 300 ms ahead, symmetric 20 ms trip: it read t + 10 + 300 at the midpoint */
    assert_int_equal(vd_clock_peer_sample(&p, t, VD_HLC_MAKE(t + 310, 3), t + 20), 0);
    assert_int_equal(vd_clock_peer_offset(&p, &off, &rtt), 0);
    assert_true(off == 300 && rtt == 20);
    /* a slow trip with its delay all on the way back suggests a wrong offset; the faster earlier
     * sample is kept */
    assert_int_equal(vd_clock_peer_sample(&p, t + 1000, VD_HLC_MAKE(t + 1301, 0), t + 1400), 0);
    assert_int_equal(vd_clock_peer_offset(&p, &off, &rtt), 0);
    assert_true(off == 300 && rtt == 20);
    assert_int_equal(vd_clock_peer_rtt_max(&p), 400); /* the slowest trip held */
    /* a faster one replaces it; an odd round trip keeps its half millisecond, rounded */
    assert_int_equal(vd_clock_peer_sample(&p, t + 2000, VD_HLC_MAKE(t + 2302, 0), t + 2005), 0);
    assert_int_equal(vd_clock_peer_offset(&p, &off, &rtt), 0);
    assert_true(off == 300 && rtt == 5); /* 2302 - 2002.5 = 299.5 -> 300 */
    /* samples age out: after VD_CLOCK_SAMPLES slower ones the fast one is gone */
    for (int i = 0; i < VD_CLOCK_SAMPLES; i++)
        assert_int_equal(vd_clock_peer_sample(&p, t + 5000 + (uint64_t)i * 100,
                                              VD_HLC_MAKE(t + 5000 + (uint64_t)i * 100 - 40 + 25, 0),
                                              t + 5000 + (uint64_t)i * 100 + 50),
                         0);
    assert_int_equal(vd_clock_peer_offset(&p, &off, &rtt), 0);
    assert_true(off == -40 && rtt == 50);
    assert_int_equal(vd_clock_peer_rtt_max(&p), 50); /* the slow trip aged out with the others */
    /* a trip the local clock stepped back during is no sample */
    assert_int_equal(vd_clock_peer_sample(&p, t + 10, VD_HLC_MAKE(t, 0), t + 9), VD_EINVAL);
    assert_int_equal(vd_clock_peer_sample(&p, t, 0, t + 1), VD_EINVAL);
    assert_int_equal(vd_clock_peer_offset(&p, &off, &rtt), 0);
    assert_true(off == -40 && rtt == 50);
    /* far: only beyond max-offset plus the error bound, either way */
    struct vd_clock_peer q = {0};
    assert_int_equal(vd_clock_peer_sample(&q, t, VD_HLC_MAKE(t - 700 + 5, 0), t + 10), 0);
    assert_false(vd_clock_peer_far(&q, 700)); /* -700 is not more than 700 */
    assert_true(vd_clock_peer_far(&q, 694));
    assert_false(vd_clock_peer_far(&q, 695)); /* within rtt / 2 of the limit: not certain */
}

/* Round trips for /metrics: the last and the longest held, in µs, measured finely when the
 * caller can (a loopback trip is well under a millisecond), else from the ms times. */
static void test_clock_peer_rtt_us(void **state)
{
    (void)state;
    const uint64_t t = UINT64_C(1764900000000);
    struct vd_clock_peer p = {0};
    uint64_t last, max;
    assert_int_equal(vd_clock_peer_rtt_us(&p, &last, &max), VD_ENOTFOUND);
    assert_int_equal(vd_clock_peer_sample_us(&p, t, VD_HLC_MAKE(t, 0), t, 180), 0);
    assert_int_equal(vd_clock_peer_rtt_us(&p, &last, &max), 0);
    assert_true(last == 180 && max == 180);
    assert_int_equal(vd_clock_peer_rtt_max(&p), 0); /* the ms view is unchanged */
    assert_int_equal(vd_clock_peer_sample(&p, t + 10, VD_HLC_MAKE(t + 12, 0), t + 13), 0);
    assert_int_equal(vd_clock_peer_rtt_us(&p, &last, &max), 0);
    assert_true(last == 3000 && max == 3000); /* not measured finely: from the ms times */
    assert_int_equal(vd_clock_peer_sample_us(&p, t + 20, VD_HLC_MAKE(t + 20, 0), t + 20, 95), 0);
    assert_int_equal(vd_clock_peer_rtt_us(&p, &last, &max), 0);
    assert_true(last == 95 && max == 3000);
    /* the last is the newest even after the ring of samples wrapped */
    for (uint64_t i = 0; i < VD_CLOCK_SAMPLES + 3; i++)
        assert_int_equal(vd_clock_peer_sample_us(&p, t, VD_HLC_MAKE(t, 0), t, 10 + i), 0);
    assert_int_equal(vd_clock_peer_rtt_us(&p, &last, &max), 0);
    assert_true(last == 10 + VD_CLOCK_SAMPLES + 2 && max == 10 + VD_CLOCK_SAMPLES + 2);
    /* a refused sample (the clock stepped back) leaves them */
    assert_int_equal(vd_clock_peer_sample_us(&p, t + 5, VD_HLC_MAKE(t, 0), t, 7), VD_EINVAL);
    assert_int_equal(vd_clock_peer_rtt_us(&p, &last, &max), 0);
    assert_true(last == 10 + VD_CLOCK_SAMPLES + 2);
}

/* Request ids: a client's is taken when it is 1..64 visible ASCII characters; ours are 16 hex
 * digits, never repeated, never all zeros; the current one is per thread. */
static void *other_thread_id(void *arg)
{
    (void)arg;
    return (void *)(uintptr_t)strlen(vd_reqid_current());
}

static void test_reqid(void **state)
{
    (void)state;
    assert_true(vd_reqid_valid("abc-123", 7));
    assert_true(vd_reqid_valid("!~", 2));
    char max[VD_REQID_MAX + 2];
    memset(max, 'a', sizeof max);
    assert_true(vd_reqid_valid(max, VD_REQID_MAX));
    assert_false(vd_reqid_valid(max, VD_REQID_MAX + 1)); /* too long */
    assert_false(vd_reqid_valid("", 0));
    assert_false(vd_reqid_valid(NULL, 0));
    const char *bad[] = {"a b", "a\tb", "a\nb", "a\rb", "a\x7f", "caf\xc3\xa9", "a\x01"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(vd_reqid_valid(bad[i], strlen(bad[i])));
    assert_false(vd_reqid_valid("a\0b", 3)); /* a NUL inside */

    char seen[64][VD_REQID_GEN_LEN + 1];
    for (int i = 0; i < 64; i++) {
        vd_reqid_new(seen[i]);
        assert_int_equal(strlen(seen[i]), VD_REQID_GEN_LEN);
        assert_true(vd_reqid_valid(seen[i], VD_REQID_GEN_LEN));
        assert_int_equal(strspn(seen[i], "0123456789abcdef"), VD_REQID_GEN_LEN);
        assert_string_not_equal(seen[i], "0000000000000000");
        for (int k = 0; k < i; k++)
            assert_string_not_equal(seen[i], seen[k]);
    }

    assert_string_equal(vd_reqid_current(), "");
    vd_reqid_set("abc-123");
    assert_string_equal(vd_reqid_current(), "abc-123");
    pthread_t t;
    void *len;
    assert_int_equal(pthread_create(&t, NULL, other_thread_id, NULL), 0);
    assert_int_equal(pthread_join(t, &len), 0);
    assert_int_equal((uintptr_t)len, 0); /* another thread has its own */
    memset(max, 'b', sizeof max - 1);
    max[sizeof max - 1] = 0;
    vd_reqid_set(max); /* cut at the limit */
    assert_int_equal(strlen(vd_reqid_current()), VD_REQID_MAX);
    vd_reqid_set(NULL);
    assert_string_equal(vd_reqid_current(), "");
}

/* A node among peers: near (offset 0), far ahead and far behind ones; skewed exactly when a
 * majority of the members (itself included) is far from it. */
static void test_clock_skewed_majority(void **state)
{
    const uint64_t t = UINT64_C(1764900000000);
    struct vd_clock_peer near = {0}, ahead = {0}, behind = {0}, unknown = {0};
    assert_int_equal(vd_clock_peer_sample(&near, t, VD_HLC_MAKE(t + 1, 0), t + 2), 0);
    assert_int_equal(vd_clock_peer_sample(&ahead, t, VD_HLC_MAKE(t + 2001, 0), t + 2), 0);
    assert_int_equal(vd_clock_peer_sample(&behind, t, VD_HLC_MAKE(t - 1999, 0), t + 2), 0);
    const struct vd_clock_peer *p1[] = {&ahead, &near};
    assert_false(vd_clock_skewed(p1, 2, 3, 500)); /* 1 of 3 far: the fast one is the odd one */
    const struct vd_clock_peer *p2[] = {&ahead, &behind};
    assert_true(vd_clock_skewed(p2, 2, 3, 500)); /* 2 of 3 */
    assert_false(vd_clock_skewed(p2, 2, 3, 3000)); /* within a wider max-offset */
    const struct vd_clock_peer *p3[] = {&ahead, &behind, &near};
    assert_false(vd_clock_skewed(p3, 3, 4, 500)); /* 2 of 4 is no majority */
    const struct vd_clock_peer *p4[] = {&ahead, &behind, &unknown};
    assert_false(vd_clock_skewed(p4, 3, 4, 500)); /* a member not yet measured counts as near */
    const struct vd_clock_peer *p5[] = {&ahead};
    /* of two members neither can tell which clock is wrong, and itself makes half: no majority
     * (the correct one still refuses the fast one's frames) */
    assert_false(vd_clock_skewed(p5, 1, 2, 500));
    assert_false(vd_clock_skewed(NULL, 0, 1, 500)); /* alone */
    /* the view from the fast node itself: both others are 2 s behind it */
    struct vd_clock_peer s1 = {0}, s2 = {0};
    assert_int_equal(vd_clock_peer_sample(&s1, t, VD_HLC_MAKE(t - 2000, 0), t + 2), 0);
    assert_int_equal(vd_clock_peer_sample(&s2, t, VD_HLC_MAKE(t - 2000, 0), t + 2), 0);
    const struct vd_clock_peer *p6[] = {&s1, &s2};
    assert_true(vd_clock_skewed(p6, 2, 3, 500));
}

/* The p99 of a peer's recent data round trips: nearest rank over the last VD_RTT_WINDOW trips, so
 * one stall among a hundred and more does not move it, two do, and old trips age out. */
static void test_rtt_window_p99(void **state)
{
    (void)state;
    struct vd_rtt_window w = {0};
    assert_int_equal(vd_rtt_window_p99(&w), 0);
    vd_rtt_window_add(&w, 700);
    assert_int_equal(vd_rtt_window_p99(&w), 700);
    /* fewer than 100 trips: the p99 is the slowest */
    for (int i = 0; i < 50; i++)
        vd_rtt_window_add(&w, 300 + (uint64_t)i);
    assert_int_equal(vd_rtt_window_p99(&w), 700);
    /* a full window of 1..128 ms: rank ceil(0.99 * 128) = 127 */
    memset(&w, 0, sizeof w);
    for (uint64_t i = 1; i <= VD_RTT_WINDOW; i++)
        vd_rtt_window_add(&w, i * 1000);
    assert_int_equal(w.n, VD_RTT_WINDOW);
    assert_int_equal(vd_rtt_window_p99(&w), 127000);
    /* the window slides: after 128 fast trips and one stall, the stall alone is above p99 */
    for (int i = 0; i < VD_RTT_WINDOW - 1; i++)
        vd_rtt_window_add(&w, 400);
    vd_rtt_window_add(&w, 5000000);
    assert_int_equal(vd_rtt_window_p99(&w), 400);
    /* a second stall is the 1 % the p99 no longer ignores */
    vd_rtt_window_add(&w, 4000000);
    assert_int_equal(vd_rtt_window_p99(&w), 4000000);
    /* and once 128 newer trips came, both are forgotten */
    for (int i = 0; i < VD_RTT_WINDOW; i++)
        vd_rtt_window_add(&w, 900);
    assert_int_equal(vd_rtt_window_p99(&w), 900);
    /* a trip beyond 32 bits of µs is kept as the largest */
    vd_rtt_window_add(&w, UINT64_MAX);
    vd_rtt_window_add(&w, UINT64_MAX);
    assert_int_equal(vd_rtt_window_p99(&w), UINT32_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pid_roundtrip),
        cmocka_unit_test(test_hlc),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_crc),
        cmocka_unit_test(test_place_hash),
        cmocka_unit_test(test_ring_contains),
        cmocka_unit_test(test_hlc_clock_jumps_back_an_hour),
        cmocka_unit_test(test_hlc_check_skew),
        cmocka_unit_test(test_clock_peer_offset),
        cmocka_unit_test(test_clock_peer_rtt_us),
        cmocka_unit_test(test_reqid),
        cmocka_unit_test(test_rtt_window_p99),
        cmocka_unit_test(test_clock_skewed_majority),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
