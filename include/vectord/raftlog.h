/*
 * vectord raftlog: durable storage of the Raft core's state (term, vote, log, snapshot) in its own
 * LMDB environment `<dir>/raft/`, separate from the data environment so that a large data commit
 * never delays a vote or an append acknowledgement (DESIGN §4).
 *
 * Layout (named tables):
 *   meta   "term" -> u64 BE, "vote" -> u64 BE, "snap" -> snapshot header
 *          {format u8, index u64 BE, term u64 BE, crc32c u32 BE of the data, conf}
 *          "snapdata" -> the state machine snapshot bytes
 *   log    index u64 BE -> {format u8, term u64 BE, type u8, crc32c u32 BE of data, data}
 *   conf encoding: count u32 BE, then per node id u64 BE ‖ role u8.
 *
 * Durability: every save is one LMDB transaction, committed with fsync (unless opened with
 * no_sync, for tests) before the call returns, so the host may send the messages of an update
 * once vd_raftlog_save returned 0. A failed commit is sticky: every later save fails with
 * VD_EIO, because the Raft promises already made must not be re-made from an unknown disk state.
 *
 * Threads: a struct vd_raftlog is used by one thread at a time (the cluster loop).
 */
#ifndef VECTORD_RAFTLOG_H
#define VECTORD_RAFTLOG_H

#include "vectord/core.h"
#include "vectord/raft.h"

struct vd_raftlog_opts {
    const char *dir;   /* node data directory; the environment is `<dir>/raft/` (created) */
    uint64_t map_size; /* initial map size; 0 = 1 GiB (grown on demand) */
    bool no_sync;      /* tests only: skip fsync */
};

struct vd_raftlog; /* opaque */

/* Opens (creating) `<dir>/raft/`. o->dir is copied. *out is owned by the caller until
 * vd_raftlog_close. Errors: VD_EINVAL (no dir), VD_EIO, VD_ENOMEM; err says which path. */
int vd_raftlog_open(const struct vd_raftlog_opts *o, struct vd_raftlog **out, struct vd_err *err);
/* Closes the environment and frees what vd_raftlog_load returned. NULL is ignored. */
void vd_raftlog_close(struct vd_raftlog *l);

/* Reads everything back for vd_raft_new: term, vote, snapshot (NULL if none) and the entries
 * after it. The memory behind *out belongs to l and stays valid until the next load or close.
 * Checks every record's checksum and that entries are contiguous after the snapshot.
 * Errors: VD_ECORRUPT (naming the record), VD_EIO, VD_ENOMEM. */
int vd_raftlog_load(struct vd_raftlog *l, struct vd_raft_state *out, struct vd_err *err);

/* Persists the durable part of an update in one synced transaction: hard state, snapshot (and the
 * entries it covers are dropped), then entries from u->first_index (stored entries at and after
 * it are replaced). Returns once durable; only then may u->msgs be sent.
 * Errors: VD_EIO (sticky), VD_EFULL, VD_ENOMEM. */
int vd_raftlog_save(struct vd_raftlog *l, const struct vd_raft_update *u, struct vd_err *err);

/* Stores a snapshot the host took itself (after vd_raft_snapshot succeeded) and drops the entries
 * it covers, in one synced transaction. Errors as vd_raftlog_save. */
int vd_raftlog_save_snapshot(struct vd_raftlog *l, const struct vd_raft_snapshot *s,
                             struct vd_err *err);

/* Number of entries stored and the first/last index (0/0 when empty): status and tests. */
int vd_raftlog_bounds(struct vd_raftlog *l, uint64_t *first, uint64_t *last, struct vd_err *err);

#endif
