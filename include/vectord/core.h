/*
 * vectord core: error codes, contextual errors, logging, hybrid logical clock, point ids and
 * hashing. Every other module includes this header; it has no dependency beyond libc.
 */
#ifndef VECTORD_CORE_H
#define VECTORD_CORE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* ---- errors ------------------------------------------------------------------------------ */

/* Functions return 0 or one of these negative codes. vd_strerror() gives the generic text;
 * struct vd_err carries the specific message a user reads. */
enum {
    VD_OK = 0,
    VD_EINVAL = -1,    /* malformed input: wrong type, missing field, bad syntax (HTTP 400) */
    VD_ERANGE = -2,    /* a value out of its allowed range (HTTP 422) */
    VD_ENOTFOUND = -3, /* HTTP 404 */
    VD_EEXIST = -4,    /* HTTP 409 */
    VD_ENOMEM = -5,
    VD_EIO = -6,       /* disk or OS failure */
    VD_ETOOBIG = -7,   /* body or value over a limit (HTTP 413) */
    VD_EAUTH = -8,     /* no or wrong API key (HTTP 401) */
    VD_EPERM = -9,     /* key lacks the role (HTTP 403) */
    VD_EUNAVAIL = -10, /* too few replicas / not ready (HTTP 503) */
    VD_ECORRUPT = -11, /* a file or record failed its checksum or format check */
    VD_EFULL = -12,    /* storage full */
    VD_EBUSY = -13,    /* resource locked (e.g. data directory in use) */
    VD_ECLOSED = -14,  /* object is shutting down or closed */
    VD_ETIMEOUT = -15,
    VD_ENOTLEADER = -16,
    VD_EINTERNAL = -17, /* a bug (HTTP 500) */
    VD__ECOUNT = 18
};

/* Generic text of a code; never NULL, static storage. */
const char *vd_strerror(int code);

/* HTTP status a code maps to (400, 404, ...); 500 for unknown codes. */
int vd_err_http_status(int code);

/* A code plus the sentence a user reads. Functions that validate user input take a
 * `struct vd_err *` (may be NULL) and fill it; callers prepend context with vd_err_prefix. */
struct vd_err {
    int code;
    char msg[512];
};

/* Sets err (if not NULL) to code and the formatted message; returns code. */
int vd_errf(struct vd_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prepends "<formatted>: " to err->msg (keeps the code). */
void vd_err_prefix(struct vd_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Resets err to VD_OK with an empty message. */
void vd_err_clear(struct vd_err *err);

/* ---- logging ----------------------------------------------------------------------------- */

enum vd_log_level { VD_LOG_DEBUG = 0, VD_LOG_INFO, VD_LOG_WARN, VD_LOG_ERROR, VD_LOG_OFF };

/* Parses "debug|info|warn|error|off"; returns 0 or VD_EINVAL. */
int vd_log_level_parse(const char *s, enum vd_log_level *out);
void vd_log_set_level(enum vd_log_level lvl);
enum vd_log_level vd_log_get_level(void);
/* One line to stderr: "<iso time> <LEVEL> <message>\n", written with a single write(2) so lines
 * from different threads never interleave. Thread-safe. */
void vd_log(enum vd_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define vd_log_debug(...) vd_log(VD_LOG_DEBUG, __VA_ARGS__)
#define vd_log_info(...) vd_log(VD_LOG_INFO, __VA_ARGS__)
#define vd_log_warn(...) vd_log(VD_LOG_WARN, __VA_ARGS__)
#define vd_log_error(...) vd_log(VD_LOG_ERROR, __VA_ARGS__)

/* ---- request ids ------------------------------------------------------------------------- */

/*
 * A request id names one client request in the logs of every node that worked on it: the REST
 * front end takes it from the client's X-Request-Id header or makes one, the coordinator carries
 * it in its data messages, and each replica logs it. Ids are at most VD_REQID_MAX visible ASCII
 * characters (0x21..0x7e): no space or control byte can split or forge a log line.
 */
#define VD_REQID_MAX 64
#define VD_REQID_GEN_LEN 16 /* hex digits of a generated id */
/* True when s[0..len) is a usable request id: 1..VD_REQID_MAX visible ASCII characters. */
bool vd_reqid_valid(const char *s, size_t len);
/* Writes a new id of VD_REQID_GEN_LEN lowercase hex digits and a NUL into out (at least
 * VD_REQID_GEN_LEN + 1 bytes). Unique within the process (a counter through a bijective mix,
 * seeded per process), so ids of different nodes differ too but for chance. No allocation;
 * thread-safe. */
void vd_reqid_new(char *out);
/* The id of the request this thread works for now ("" for none); the string lives until the
 * thread's next vd_reqid_set. Thread-local: modules between the REST front end and the cluster
 * pass it along without a parameter on every call. */
const char *vd_reqid_current(void);
/* Makes id (copied; NULL or "" for none; cut at VD_REQID_MAX) this thread's current one. */
void vd_reqid_set(const char *id);

/* ---- time -------------------------------------------------------------------------------- */

/* Wall clock in ms since the epoch (plus the test offset below) and a monotonic clock in ns. */
uint64_t vd_wall_ms(void);
/* Tests only: shifts vd_wall_ms, and so every HLC this process stamps, by offset_ms (negative =
 * behind), to play a node whose clock is wrong; a time namespace cannot shift CLOCK_REALTIME.
 * Thread-safe; 0 (the default) is the true clock. vectord takes it from the environment variable
 * VECTORD_TEST_CLOCK_OFFSET_MS. */
void vd_clock_set_test_offset_ms(int64_t offset_ms);
int64_t vd_clock_test_offset_ms(void);
uint64_t vd_mono_ns(void);
struct timespec;
/* The CLOCK_MONOTONIC time `ms` from now, for pthread_cond_timedwait on a condition variable
 * created with the monotonic clock. */
void vd_mono_deadline(struct timespec *ts, unsigned ms);

/* Hybrid logical clock (Kulkarni et al. 2014): 48-bit physical milliseconds in the high bits,
 * a 16-bit logical counter in the low bits. Timestamps from one clock strictly increase. */
#define VD_HLC_PHYS(ts) ((ts) >> 16)
#define VD_HLC_LOGICAL(ts) ((ts) & 0xffffu)
#define VD_HLC_MAKE(ms, c) (((uint64_t)(ms) << 16) | ((uint64_t)(c) & 0xffffu))

struct vd_hlc {
    uint64_t last; /* guarded by the caller for the pure functions below */
};

/* Pure steps (no clock, no locking): the next timestamp given the physical time now_ms, and the
 * timestamp after receiving remote timestamp `remote`. */
uint64_t vd_hlc_tick(struct vd_hlc *c, uint64_t now_ms);
uint64_t vd_hlc_recv(struct vd_hlc *c, uint64_t remote, uint64_t now_ms);
/* Process-wide clock, thread-safe, reading the wall clock. */
uint64_t vd_hlc_now(void);
void vd_hlc_observe(uint64_t remote);

/* Default of --max-clock-offset: how far ahead of this node's wall clock a peer's HLC may be. */
#define VD_MAX_CLOCK_OFFSET_MS_DEFAULT 500

/* Pure check of a data frame's HLC against this node's wall clock now_ms: 0 when its physical
 * part is at most max_offset_ms ahead, else VD_EUNAVAIL (clock skew: the frame is refused, not
 * observed, so one fast clock cannot drag every HLC of the cluster into its future). A remote
 * clock behind ours is never refused: its writes simply lose to newer ones. */
int vd_hlc_check_skew(uint64_t remote_hlc, uint64_t now_ms, uint64_t max_offset_ms);

/*
 * Offset of a peer's clock, estimated from ping round trips as NTP does: a ping leaves at local
 * wall time t_send, the reply carries the peer's HLC at the moment it answered, and arrives at
 * t_recv; assuming the two legs took equally long, the peer's clock read remote when ours read
 * t_send + rtt / 2, so offset = remote - (t_send + rtt / 2), wrong by at most rtt / 2. Of the last
 * VD_CLOCK_SAMPLES samples the one with the shortest round trip is kept as the estimate: queueing
 * delays make legs unequal, and the fastest trip had the least of them. Pure; the caller guards
 * a struct used from several threads.
 */
#define VD_CLOCK_SAMPLES 8
struct vd_clock_peer {
    struct {
        int64_t offset_ms;
        uint64_t rtt_ms;
        uint64_t rtt_us; /* the same trip on a finer clock, for metrics (loopback trips < 1 ms) */
    } s[VD_CLOCK_SAMPLES];
    unsigned n, next; /* samples held; where the next one goes */
};
/* An estimator with no samples (a zeroed struct is one too). */
void vd_clock_peer_init(struct vd_clock_peer *p);
/* Adds one round trip (times in local wall ms, remote as an HLC). VD_EINVAL, and nothing kept,
 * when t_recv < t_send (the local clock stepped back during the trip) or remote_hlc is 0. */
int vd_clock_peer_sample(struct vd_clock_peer *p, uint64_t t_send_ms, uint64_t remote_hlc,
                         uint64_t t_recv_ms);
/* As vd_clock_peer_sample, with the round trip also measured on a monotonic clock in µs (rtt_us;
 * 0 = not measured: taken from the ms times). The ms times still estimate the offset. */
int vd_clock_peer_sample_us(struct vd_clock_peer *p, uint64_t t_send_ms, uint64_t remote_hlc,
                            uint64_t t_recv_ms, uint64_t rtt_us);
/* The last round trip and the longest of the samples held, in µs. VD_ENOTFOUND when there is no
 * sample yet. */
int vd_clock_peer_rtt_us(const struct vd_clock_peer *p, uint64_t *last_us, uint64_t *max_us);
/* The estimate: the peer's clock minus ours in ms, and the round trip it came from (its error
 * bound is rtt / 2). VD_ENOTFOUND when there is no sample yet. */
int vd_clock_peer_offset(const struct vd_clock_peer *p, int64_t *offset_ms, uint64_t *rtt_ms);
/* The longest round trip among the samples held (of the last VD_CLOCK_SAMPLES), the estimate of
 * the peer's slowest trips; 0 when there is none. */
uint64_t vd_clock_peer_rtt_max(const struct vd_clock_peer *p);
/* True when the peer's clock is certainly more than max_offset_ms away from ours, either way:
 * |offset| - rtt / 2 > max_offset_ms. False without samples. */
bool vd_clock_peer_far(const struct vd_clock_peer *p, uint64_t max_offset_ms);
/* The write rule: true when this node's clock is far (vd_clock_peer_far) from a majority of the
 * n_members members (itself included, never far from itself); peers[0..n_peers) are the
 * estimators of the other members (a member without samples counts as near). Such a node
 * answers writes 503 (clock skew): its HLCs would order its writes wrongly against the others'. A
 * node alone is never skewed. */
bool vd_clock_skewed(const struct vd_clock_peer *const *peers, size_t n_peers, size_t n_members,
                     uint64_t max_offset_ms);

/*
 * The recent round trips of one peer's data requests, in µs: the last VD_RTT_WINDOW of them. Its
 * 99th percentile is the peer's usual slowest trip; a reply later than that is a sign the peer
 * stalled, so a read asks one more replica then (the speculative delay). Pure; the caller guards
 * a window used from several threads. A zeroed struct is an empty window.
 */
#define VD_RTT_WINDOW 128
struct vd_rtt_window {
    uint32_t us[VD_RTT_WINDOW];
    unsigned n, next; /* samples held; where the next one goes */
};
/* Adds one round trip (above UINT32_MAX µs it counts as UINT32_MAX), replacing the oldest once
 * the window is full. */
void vd_rtt_window_add(struct vd_rtt_window *w, uint64_t rtt_us);
/* The 99th percentile of the trips held, by nearest rank (the ceil(0.99 n)-th smallest; with
 * fewer than 100 samples the largest); 0 when the window is empty. */
uint64_t vd_rtt_window_p99(const struct vd_rtt_window *w);

/* A version of a point: the HLC of the write and the id of the node that stamped it. The newer
 * version wins everywhere (last-write-wins); equal HLCs are ordered by node id, so two writes
 * never tie unless they are the same write. Replicas, the coordinator and its simulator all use
 * this one rule. */
struct vd_version {
    uint64_t hlc;
    uint64_t node;
};
/* <0, 0, >0 as a is older than, the same as, or newer than b. */
static inline int vd_version_cmp(struct vd_version a, struct vd_version b)
{
    if (a.hlc != b.hlc)
        return a.hlc < b.hlc ? -1 : 1;
    if (a.node != b.node)
        return a.node < b.node ? -1 : 1;
    return 0;
}

/* ---- point ids --------------------------------------------------------------------------- */

/* A point id is an unsigned 64-bit integer or a UUID. The stored key is a type byte then the
 * big-endian integer or the 16 UUID bytes, so integers sort before UUIDs (Qdrant's order). */
enum { VD_PID_NUM = 1, VD_PID_UUID = 2 };
#define VD_PID_KEY_MAX 17
#define VD_PID_STR_MAX 37 /* 36 characters of a UUID or 20 digits, plus NUL */

struct vd_pid {
    uint8_t type; /* VD_PID_NUM or VD_PID_UUID */
    union {
        uint64_t num;
        uint8_t uuid[16];
    } u;
};

/* Encodes the key form into buf (at least VD_PID_KEY_MAX bytes); returns its length (9 or 17). */
size_t vd_pid_encode(const struct vd_pid *id, uint8_t *buf);
/* Decodes a key; returns 0 or VD_ECORRUPT. */
int vd_pid_decode(const uint8_t *buf, size_t len, struct vd_pid *out);
/* Parses a UUID string (hyphenated 36 chars, or 32 hex digits, any case); 0 or VD_EINVAL. */
int vd_pid_parse_uuid(const char *s, size_t len, struct vd_pid *out);
/* Parses decimal digits of a u64 (no sign, no leading zeros unless "0", no overflow). */
int vd_pid_parse_u64(const char *s, size_t len, uint64_t *out);
/* Writes the canonical text (decimal or lowercase hyphenated UUID) into buf[VD_PID_STR_MAX]. */
void vd_pid_format(const struct vd_pid *id, char *buf);
/* Total order: integers before UUIDs, then by value (the key order). */
int vd_pid_cmp(const struct vd_pid *a, const struct vd_pid *b);
bool vd_pid_eq(const struct vd_pid *a, const struct vd_pid *b);
/* Hash of the key form (stable across versions: the ring depends on it). */
uint64_t vd_pid_hash(const struct vd_pid *id);

/* ---- distance metrics (shared by storage, index and API) ---------------------------------- */

enum vd_metric { VD_METRIC_COSINE = 1, VD_METRIC_DOT = 2, VD_METRIC_EUCLID = 3, VD_METRIC_MANHATTAN = 4 };

/* "Cosine", "Dot", "Euclid", "Manhattan" (static storage; "Unknown" for other values), and back
 * (exact spelling; VD_EINVAL otherwise). */
const char *vd_metric_name(enum vd_metric m);
int vd_metric_parse(const char *s, enum vd_metric *out);

/* ---- hashing ----------------------------------------------------------------------------- */

/* 64-bit non-cryptographic hash (FNV-1a folded through a murmur3 finaliser). Stable forever:
 * placement on the ring and on-disk checksums of some files depend on it. */
uint64_t vd_hash64(const void *data, size_t len, uint64_t seed);
/* Where a point lives: the one hash of (collection name, stored key encoding as vd_pid_encode
 * writes it) that placement, range-restricted search, streaming and repair all use, so a point
 * is found on the ring where it was written. Hashing the collection too spreads two collections'
 * equal ids over different replicas. Stable forever, like vd_hash64. collection is a
 * NUL-terminated name; key is key_len bytes (not owned, only read). */
uint64_t vd_place_hash(const char *collection, const uint8_t *key, size_t key_len);

/* Whether h lies on the ring arc (start, end]: the arc a token `end` owns when `start` is the
 * token before it. The arc wraps past 2^64-1 when end < start (then it is (start, 2^64-1] and
 * [0, end]), and start == end is the whole ring (the arc of a ring with a single token). */
static inline bool vd_ring_contains(uint64_t start, uint64_t end, uint64_t h)
{
    if (start < end)
        return h > start && h <= end;
    if (start > end)
        return h > start || h <= end;
    return true;
}

/* CRC-32C (Castagnoli), software table; for file and frame checksums. */
uint32_t vd_crc32c(uint32_t crc, const void *data, size_t len);

/* ---- small helpers ----------------------------------------------------------------------- */

/* Big-endian load/store. */
static inline void vd_be64_put(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}
static inline uint64_t vd_be64_get(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}
static inline void vd_be32_put(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline uint32_t vd_be32_get(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* malloc that aborts with a log line on failure: for small fixed-size control structures only;
 * sizes that come from input use plain malloc and report VD_ENOMEM. */
void *vd_xmalloc(size_t n);
void *vd_xcalloc(size_t n, size_t sz);
char *vd_xstrdup(const char *s);

#endif
