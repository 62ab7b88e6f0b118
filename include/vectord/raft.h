/*
 * vectord raft: a pure Raft core for the cluster metadata group.
 *
 * The core does no I/O, reads no clock and draws no randomness of its own: the host feeds it
 * messages (vd_raft_step), the time (vd_raft_tick), proposals and requests, then collects what
 * must happen next with vd_raft_ready: hard state and log entries to persist, a snapshot to
 * persist and install, messages to send, committed entries to apply and confirmed reads. The host
 * persists first, then sends the messages, applies the entries and calls vd_raft_advance.
 * Because time and randomness are inputs (a seeded PRNG lives in the struct), a simulator replays
 * any run exactly from its seed.
 *
 * Features (Raft dissertation, Ongaro 2014): randomised election timeouts, pre-vote (§9.6),
 * check-quorum (§6.2), log replication with fast conflict backoff, commitment of earlier-term
 * entries only through a current-term entry (§3.6.2), a no-op entry on election (§6.4),
 * snapshots with log compaction and chunked InstallSnapshot (§5), single-server membership
 * changes with non-voting learners (§4.1, §4.2.1), removed servers ignored within the minimum
 * election timeout of hearing a leader (§4.2.3), leadership transfer (§3.10) and ReadIndex
 * linearizable reads (§6.4).
 *
 * Host loop, in outline (storage: include/vectord/raftlog.h):
 *     vd_raftlog_load(log, &st, &err);  vd_raft_new(&cfg, &st, now, &r);
 *     on a timer, a message or a request:  vd_raft_tick(r, now); then vd_raft_step / _propose ...
 *     while (vd_raft_ready(r, &u)) {
 *         vd_raftlog_save(log, &u, &err);        durable first: votes and acks promise it
 *         send u.msgs (vd_raft_msg_encode);
 *         install u.snapshot, apply u.committed, answer u.reads once applied;
 *         vd_raft_advance(r);
 *     }
 *     re-arm the timer for vd_raft_next_deadline(r); from time to time vd_raft_snapshot, then
 *     vd_raft_current_snapshot + vd_raftlog_save_snapshot, to compact the log.
 * A brand-new cluster stores vd_raft_bootstrap_entry on its first node(s); a joining node starts
 * with an empty state and waits for the leader, which adds it as a learner (VD_RAFT_ADD_LEARNER)
 * and promotes it once caught up (VD_RAFT_PROMOTE).
 *
 * Thread rules: a struct vd_raft is used by one thread at a time; the core takes no locks.
 */
#ifndef VECTORD_RAFT_H
#define VECTORD_RAFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VD_RAFT_MAX_NODES 16

enum vd_raft_entry_type {
    VD_RAFT_ENTRY_NORMAL = 1, /* opaque command for the state machine */
    VD_RAFT_ENTRY_NOOP = 2,   /* appended by a new leader; nothing to apply */
    VD_RAFT_ENTRY_CONF = 3    /* a full configuration, see vd_raft_conf_decode */
};

struct vd_raft_entry {
    uint64_t term;
    uint64_t index;
    uint8_t type;  /* enum vd_raft_entry_type */
    uint8_t *data; /* owned by whoever holds the entry (the core for entries it returns) */
    size_t len;
};

enum vd_raft_node_role { VD_RAFT_VOTER = 1, VD_RAFT_LEARNER = 2 };

struct vd_raft_conf {
    uint32_t n;
    struct {
        uint64_t id;
        uint8_t role; /* enum vd_raft_node_role */
    } nodes[VD_RAFT_MAX_NODES];
};

/* Encoded size of a configuration: 4 + 9 bytes per node. */
size_t vd_raft_conf_size(const struct vd_raft_conf *c);
/* Writes the encoding of c into buf (vd_raft_conf_size bytes); returns the length. */
size_t vd_raft_conf_encode(const struct vd_raft_conf *c, uint8_t *buf);
/* Decodes a VD_RAFT_ENTRY_CONF payload; 0 or VD_ECORRUPT (data comes from disk or network). */
int vd_raft_conf_decode(const uint8_t *buf, size_t len, struct vd_raft_conf *out);
/* Role of id in c, or 0 when id is not a member. */
int vd_raft_conf_role(const struct vd_raft_conf *c, uint64_t id);

enum vd_raft_msg_type {
    VD_RAFT_MSG_APPEND = 1,
    VD_RAFT_MSG_APPEND_RESP,
    VD_RAFT_MSG_VOTE,
    VD_RAFT_MSG_VOTE_RESP,
    VD_RAFT_MSG_PREVOTE,
    VD_RAFT_MSG_PREVOTE_RESP,
    VD_RAFT_MSG_HEARTBEAT,
    VD_RAFT_MSG_HEARTBEAT_RESP,
    VD_RAFT_MSG_SNAP, /* one chunk of InstallSnapshot */
    VD_RAFT_MSG_SNAP_RESP,
    VD_RAFT_MSG_TIMEOUT_NOW,
    VD_RAFT_MSG_READ_INDEX, /* follower asks the leader for a read index */
    VD_RAFT_MSG_READ_INDEX_RESP,
    VD_RAFT__MSG_COUNT
};

/*
 * One message. Field use by type:
 *   APPEND:        index/log_term = previous entry, entries, commit = leader commit
 *   APPEND_RESP:   index = last index now matching (success) or the rejected previous index;
 *                  reject, hint = first index worth trying, log_term = follower's conflicting term
 *   VOTE, PREVOTE: index/log_term = candidate's last entry; transfer = leadership transfer
 *   *_RESP of votes: reject
 *   HEARTBEAT:     commit, ctx = newest read sequence;  HEARTBEAT_RESP: ctx echoed
 *   SNAP:          index/log_term = snapshot point, conf, offset, data/len = chunk,
 *                  done = last chunk
 *   SNAP_RESP:     index = snapshot point, ctx = offset of the chunk answered, offset = bytes
 *                  the follower holds, done = installed
 *   READ_INDEX:    ctx = caller's context;  READ_INDEX_RESP: ctx, index = read index, reject
 * Messages returned by vd_raft_ready point into the core (entries, data): valid until
 * vd_raft_advance. Messages passed to vd_raft_step stay owned by the caller; the core copies.
 */
struct vd_raft_msg {
    uint8_t type; /* enum vd_raft_msg_type */
    bool reject;
    bool transfer;
    bool done;
    uint64_t from, to, term;
    uint64_t index, log_term, commit, hint, ctx;
    const struct vd_raft_entry *entries;
    size_t n_entries;
    struct vd_raft_conf conf;
    uint64_t offset;
    const uint8_t *data;
    size_t len;
};

/* A snapshot of the state machine at `index`. The core keeps its own copy of data. */
struct vd_raft_snapshot {
    uint64_t index, term;
    struct vd_raft_conf conf;
    const uint8_t *data;
    size_t len;
};

/* A confirmed linearizable read: the state machine may answer once it has applied `index`. */
struct vd_raft_read {
    uint64_t ctx;
    uint64_t index;
};

enum vd_raft_role { VD_RAFT_FOLLOWER = 1, VD_RAFT_PRECANDIDATE, VD_RAFT_CANDIDATE, VD_RAFT_LEADER };

/* Deliberate faults, only for proving that the simulator's checker catches them. */
enum vd_raft_bug {
    VD_RAFT_BUG_NONE = 0,
    VD_RAFT_BUG_DOUBLE_VOTE,    /* grant a vote to every up-to-date candidate of a term */
    VD_RAFT_BUG_COMMIT_OLD_TERM /* commit any entry replicated on a majority (ignores §3.6.2) */
};

/*
 * Everything the update asks of the host, in this order:
 *   1. persist: if hard_state, the term and vote; if snapshot, the snapshot (and drop stored
 *      entries up to snapshot->index); if first_index != 0, delete stored entries with index >=
 *      first_index, then store entries[0..n_entries) (which start at first_index);
 *   2. only then send msgs;
 *   3. install snapshot into the state machine (if any), then apply committed entries in order
 *      and answer reads once applied;
 *   4. call vd_raft_advance.
 * All pointers belong to the core and stay valid until vd_raft_advance; the host must not call
 * any other vd_raft function on this core in between.
 */
struct vd_raft_update {
    bool hard_state;
    uint64_t term, vote;
    const struct vd_raft_snapshot *snapshot;
    uint64_t first_index;
    const struct vd_raft_entry *entries;
    size_t n_entries;
    const struct vd_raft_msg *msgs;
    size_t n_msgs;
    const struct vd_raft_entry *committed;
    size_t n_committed;
    const struct vd_raft_read *reads;
    size_t n_reads;
    uint64_t deadline; /* when to call vd_raft_tick next (as vd_raft_next_deadline) */
};

struct vd_raft_config {
    uint64_t id;                  /* this node, non-zero */
    uint32_t election_timeout_ms; /* minimum; each timeout is drawn from [min, 2*min) */
    uint32_t heartbeat_ms;
    uint32_t max_append_entries; /* entries per APPEND message */
    uint32_t snapshot_chunk;     /* bytes per InstallSnapshot chunk */
    bool pre_vote;
    bool check_quorum;
    uint64_t seed;        /* seeds the election-timeout PRNG */
    enum vd_raft_bug bug; /* VD_RAFT_BUG_NONE outside the simulator's planted-bug test */
};

/* Fills defaults: election 1000 ms, heartbeat 100 ms, 64 entries, 64 KiB chunks, pre-vote and
 * check-quorum on. The caller sets id and seed. */
void vd_raft_config_default(struct vd_raft_config *cfg);

/* What a restarting node read back from its storage. snapshot may be NULL; entries are copied
 * and must continue the snapshot (first index = snapshot index + 1, or 1 without snapshot). */
struct vd_raft_state {
    uint64_t term, vote;
    const struct vd_raft_snapshot *snapshot;
    const struct vd_raft_entry *entries;
    size_t n_entries;
};

struct vd_raft; /* opaque */

/*
 * Creates a core. state may be NULL (a fresh node with an empty log: it waits to be contacted by
 * a leader that added it). now_ms starts the clock. Returns 0, VD_EINVAL (bad config or state)
 * or VD_ENOMEM; *out is freed with vd_raft_free.
 */
int vd_raft_new(const struct vd_raft_config *cfg, const struct vd_raft_state *state,
                uint64_t now_ms, struct vd_raft **out);
void vd_raft_free(struct vd_raft *r);

/* The entry a brand-new cluster starts from: index 1, term 1, the configuration `conf`. The
 * host stores it on every initial member before the first vd_raft_new. buf must hold
 * vd_raft_conf_size(conf) bytes and becomes the entry's data (owned by the caller). */
void vd_raft_bootstrap_entry(const struct vd_raft_conf *conf, uint8_t *buf,
                             struct vd_raft_entry *out);

/* Feeds one received message. The core stamps it with the time of the last vd_raft_tick, so the
 * host ticks with the current time before stepping (timers restarted by the message would
 * otherwise start in the past). Returns 0, or VD_EINVAL for a malformed message (dropped). */
int vd_raft_step(struct vd_raft *r, const struct vd_raft_msg *m);
/* Advances the clock (never backwards) and fires due timers. */
void vd_raft_tick(struct vd_raft *r, uint64_t now_ms);
/* The time at which vd_raft_tick next has work. */
uint64_t vd_raft_next_deadline(const struct vd_raft *r);

/* Appends a command on the leader (data is copied). index and term (out, may be NULL) identify
 * the entry: the state machine sees it committed at that index only if the term matches.
 * Errors: VD_ENOTLEADER, VD_EBUSY (leadership transfer in progress), VD_ENOMEM. */
int vd_raft_propose(struct vd_raft *r, const void *data, size_t len, uint64_t *index,
                    uint64_t *term);

enum vd_raft_change_op { VD_RAFT_ADD_LEARNER = 1, VD_RAFT_PROMOTE, VD_RAFT_REMOVE };
/* Single-server membership change (§4.1). Errors: VD_ENOTLEADER; VD_EBUSY when the leader has
 * not yet committed an entry of its term, a change is still uncommitted, or (PROMOTE) the learner
 * has not caught up with the commit index; VD_ENOTFOUND / VD_EEXIST for the id; VD_EINVAL when
 * removing the last voter; VD_ERANGE when the configuration is full. */
int vd_raft_change(struct vd_raft *r, enum vd_raft_change_op op, uint64_t id, uint64_t *index);

/* Starts leadership transfer to voter `id` (§3.10); aborted after an election timeout.
 * Errors: VD_ENOTLEADER, VD_ENOTFOUND (not a voter), VD_EINVAL (self). */
int vd_raft_transfer(struct vd_raft *r, uint64_t id);

/* Requests a linearizable read; the answer arrives as a vd_raft_read with this ctx in a later
 * update (never, if messages are lost or leadership changes: the host applies its own deadline).
 * A new leader answers only after an entry of its term committed. On a follower the request
 * goes to the leader. Errors: VD_ENOTLEADER (no leader known), VD_ENOMEM. */
int vd_raft_read_index(struct vd_raft *r, uint64_t ctx);

/* Hands the core a snapshot the host took of its state machine at applied index `index`; the
 * core copies data and compacts its log up to index. The host persists the snapshot itself.
 * Errors: VD_EINVAL (index beyond what is applied and stable, or not beyond the current
 * snapshot), VD_ENOMEM. */
int vd_raft_snapshot(struct vd_raft *r, uint64_t index, const void *data, size_t len);

/* The snapshot the core holds (index, term, configuration at that index, data); index 0 when
 * none. data points into r, valid until the next call that changes r. After vd_raft_snapshot,
 * this is what the host persists (vd_raftlog_save_snapshot). */
void vd_raft_current_snapshot(const struct vd_raft *r, struct vd_raft_snapshot *out);

/* True when vd_raft_ready would return something. Advancing can itself produce more work (a
 * leader's own durable write may complete a commit), so hosts loop until this is false. */
bool vd_raft_has_ready(const struct vd_raft *r);
/* Fills *u (see struct vd_raft_update). Returns true if there is anything to do. */
bool vd_raft_ready(struct vd_raft *r, struct vd_raft_update *u);
/* Marks the last update as done: persisted, sent and applied. */
void vd_raft_advance(struct vd_raft *r);

/* ---- wire encoding of messages ------------------------------------------------------------
 * A message body for the peer transport (which adds its own frame: version, type, length,
 * CRC32C). Layout, all integers big-endian: version u8, type u8, flags u8 (reject 1, transfer 2,
 * done 4), from, to, term, index, log_term, commit, hint, ctx, offset (u64 each), conf (count u32
 * + per node id u64 ‖ role u8), n_entries u32, per entry {term u64, index u64, type u8, len u32,
 * data}, then len u32 and the snapshot chunk. */
#define VD_RAFT_WIRE_VERSION 1

/* Bytes vd_raft_msg_encode will write for m. */
size_t vd_raft_msg_size(const struct vd_raft_msg *m);
/* Writes m into buf (vd_raft_msg_size(m) bytes); returns the length. */
size_t vd_raft_msg_encode(const struct vd_raft_msg *m, uint8_t *buf);
/* Parses a body received from the network. out->entries points into ents (the caller's array of
 * max_ents) and every data pointer points into buf: both must outlive the use of *out.
 * Errors: VD_ECORRUPT (malformed, with nothing trusted), VD_ETOOBIG (more than max_ents entries).
 */
int vd_raft_msg_decode(const uint8_t *buf, size_t len, struct vd_raft_msg *out,
                       struct vd_raft_entry *ents, size_t max_ents);

/* ---- read-only accessors (status pages, the simulator's checker) ------------------------ */
uint64_t vd_raft_id(const struct vd_raft *r);
enum vd_raft_role vd_raft_role(const struct vd_raft *r);
uint64_t vd_raft_term(const struct vd_raft *r);
uint64_t vd_raft_leader(const struct vd_raft *r);
uint64_t vd_raft_commit(const struct vd_raft *r);
uint64_t vd_raft_applied(const struct vd_raft *r);
uint64_t vd_raft_first_index(const struct vd_raft *r); /* first entry held (snapshot index + 1) */
uint64_t vd_raft_last_index(const struct vd_raft *r);
uint64_t vd_raft_snapshot_index(const struct vd_raft *r);
/* Term of the entry at index (snapshot point included); 0 if not held. */
uint64_t vd_raft_term_at(const struct vd_raft *r, uint64_t index);
/* The entry at index if held in the log, else NULL; valid until the next call on r. */
const struct vd_raft_entry *vd_raft_entry_at(const struct vd_raft *r, uint64_t index);
/* The latest configuration (it takes effect when appended, §4.1); points into r, valid until the
 * next call that changes r. */
const struct vd_raft_conf *vd_raft_conf(const struct vd_raft *r);
/* Leader only: the highest index known replicated on id; 0 if unknown. */
uint64_t vd_raft_match(const struct vd_raft *r, uint64_t id);
const char *vd_raft_role_name(enum vd_raft_role role);

#endif
