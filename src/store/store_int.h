/* Internals of the data environment shared by store.c (open, reads) and store_write.c (writer). */
#ifndef VECTORD_STORE_INT_H
#define VECTORD_STORE_INT_H

#include <lmdb.h>
#include <pthread.h>

#include "vectord/store.h"

/* Points table value (format 2): the local change counter (u64 LE) then the point record
 * (include/vectord/record.h), payload included. */
#define VD__PT_SEQ 8
/* Format 1 value, read only by the migration: version u64, node u64, seq u64, flags u8, dim u32
 * (little-endian) then float32[dim]; the payload sat in the `payloads` table. */
#define VD__PT1_HDR 29
#define VD__PT1_TOMB 0x01
/* Key: incarnation u64 BE ‖ pid key. */
#define VD__PT_KEY_MAX (8 + VD_PID_KEY_MAX)
/* points_by_hash key: incarnation u64 BE ‖ placement hash u64 BE ‖ pid key; empty value. */
#define VD__HK_MAX (16 + VD_PID_KEY_MAX)
#define VD__RTXN_POOL 64

/* Meta keys. Live incarnations "i"‖inc BE -> dim u32 LE ‖ name; purging ones "p"‖inc BE -> "". */
#define VD__META_NODE "node_id"
#define VD__META_SEQ "last_seq"
#define VD__META_INC "last_incarnation"
#define VD__META_FORMAT "format"
#define VD__META_HLC "hlc_floor"       /* highest version HLC durably written (u64 LE) */
#define VD__META_MIGRATE "migrate_pos" /* format 1 -> 2: the next points key to convert */
#define VD__META_HINT_ID "hint_id" /* last hint id handed out (u64 LE) */
#define VD__META_HINT_TOT 'H'       /* 'H' ‖ target BE -> hints count u64 LE ‖ bytes u64 LE */
#define VD__META_LIVE 'i'
#define VD__META_PURGE 'p'

struct vd_store {
    char *dir;
    int lock_fd;
    MDB_env *env;
    MDB_dbi dbi_meta, dbi_colls, dbi_points, dbi_payloads, dbi_changes, dbi_hints,
        dbi_pindex, dbi_hash;
    uint64_t node_id;
    bool no_sync;
    uint64_t hint_target_max, hint_total_max; /* hint caps in bytes */

    /* Map growth excludes readers: mdb_env_set_mapsize needs no transaction open in the
     * process. A count (not a rwlock) because a read may end on another thread than it began. */
    pthread_mutex_t rd_mu;
    pthread_cond_t rd_cv;
    unsigned readers;
    bool resizing;
    uint64_t map_size;
    /* Ended read transactions kept reset for reuse (each holds a reader slot, no snapshot). */
    struct vd_rtxn *pool[VD__RTXN_POOL];
    unsigned pool_n;

    /* Writer queue: submitters append to `q`; the writer swaps it with its own array so a group
     * is taken in one step and no allocation happens once both arrays reached their size. */
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* writer waits for work */
    pthread_cond_t idle_cv; /* purge_wait */
    struct vd_wbatch **q;
    size_t q_len, q_cap;
    bool closing;
    pthread_t writer;
    bool writer_started;

    /* Guarded by mu; written by the writer thread. */
    uint64_t last_seq; /* committed */
    struct vd_store_counters ctr;
    int failed; /* sticky: after a failed commit (fsync error) every later write fails */
    uint64_t trim_upto, trim_done; /* change log: requested and completed trim points */
    uint64_t tomb_grace_ms;        /* 0: tombstones are kept */
    uint64_t sweep_next_ns;        /* monotonic time the next sweep pass may start */
    bool sweep_active;             /* a pass is under way */

    /* Writer-thread only. */
    struct vd_wbatch **group;
    size_t group_cap;
    uint64_t next_seq; /* counter of the open group transaction */
    uint64_t last_inc;
    uint8_t sweep_key[VD__PT_KEY_MAX]; /* where the sweep pass resumes (inclusive) */
    size_t sweep_klen;
    uint64_t hlc_floor; /* highest version HLC committed (meta VD__META_HLC) */
};

struct vd_rtxn {
    struct vd_store *s;
    MDB_txn *txn;
    /* Copies of vectors LMDB stores at addresses not aligned for float (values are only 2-byte
     * aligned inside a page). point_get results live until read_end, so copies are chained. */
    struct vd__chunk *chunks;
    float *scan_buf; /* reused per scanned point */
    size_t scan_cap;
};

int vd__store_mdb_err(int rc);
/* Decodes a points value into *out (vec may still be unaligned; id and the rest come from the
 * record). VD_ECORRUPT for anything but a valid value. */
int vd__store_pt_decode(const MDB_val *v, struct vd_point_view *out);
/* Reads only the version and tombstone flag of a points value; VD_ECORRUPT if too short. */
int vd__store_pt_version(const MDB_val *v, struct vd_version *ver, bool *tomb);
/* The points_by_hash key of (inc, id) in a collection named name; returns its length. */
size_t vd__store_hash_key(uint64_t inc, const char *name, const struct vd_pid *id, uint8_t *key);
size_t vd__store_pt_key(uint64_t inc, const struct vd_pid *id, uint8_t *key);
void vd__store_le64_put(uint8_t *p, uint64_t v);
uint64_t vd__store_le64_get(const uint8_t *p);
void vd__store_le32_put(uint8_t *p, uint32_t v);
uint32_t vd__store_le32_get(const uint8_t *p);
int vd__store_schema_decode(const MDB_val *v, struct vd_coll_schema *out);
size_t vd__store_schema_encode(const struct vd_coll_schema *c, uint8_t *buf);
#define VD__SCHEMA_MAX (1 + 4 + 1 + 5 * 4 + 8 + 8 + 5 + 256)

/* Writer thread (store_write.c). */
void *vd__store_writer_main(void *arg);
/* Looks up a live incarnation in meta: its dimension and name (name[256], NUL-terminated; either
 * out may be NULL). VD_ENOTFOUND if not live. */
int vd__store_live_get(struct vd_store *s, MDB_txn *txn, uint64_t inc, uint32_t *dim, char *name);
/* Converts a format 1 data environment to format 2 in bounded transactions (store_migrate.c). */
int vd__store_migrate(struct vd_store *s, struct vd_err *err);
/* Tests: points converted per migration transaction, and a number of transactions after which the
 * migration stops with VD_EIO as if the process died (0: never). */
extern unsigned vd__store_migrate_chunk;
extern unsigned vd__store_migrate_stop_after;
/* Hints (store_hints.c): applies a VD_WOP_HINT_* op in the writer's transaction; sets the caps
 * from the options at open; deletes up to max hints of a deleted incarnation (all targets) and
 * returns how many, or -1 with the LMDB or errno code in *err. */
int vd__store_hint_op(struct vd_store *s, MDB_txn *txn, struct vd_wop *op, struct vd_err *err);
void vd__store_hint_caps(struct vd_store *s, const struct vd_store_opts *o);
long vd__store_hints_purge(struct vd_store *s, MDB_txn *txn, uint64_t inc, long max, int *err);
/* Counts pending purges in meta at open; resumes them. */
int vd__store_count_purges(struct vd_store *s, MDB_txn *txn, uint32_t *out);

/* Creates dir and its missing parents (mode 0700); VD_EINVAL for an empty or over-long path,
 * VD_EIO naming the directory that could not be made. Shared by the data and Raft environments. */
int vd__store_mkdir_p(const char *dir, struct vd_err *err);

#endif
