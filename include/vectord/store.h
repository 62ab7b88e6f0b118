/*
 * vectord storage: the node's data environment in LMDB (collections, points, payloads, change
 * log, node identity). LMDB is the source of truth; the in-memory index is rebuilt or caught up
 * from it.
 *
 * On-disk layout (one LMDB environment in the subdirectory `<dir>/data/`, named tables; storage
 * format 2, recorded in `meta`):
 *   meta        node identity, format, last change counter, HLC floor (the highest version HLC
 *               durably written), live and purging incarnations
 *   collections name -> binary schema (leading format version byte)
 *   points      incarnation u64 BE ‖ pid key -> change counter u64 LE ‖ point record
 *               (include/vectord/record.h: version, tombstone flag, vectors and payload, the
 *               same bytes a replica receives)
 *   points_by_hash incarnation u64 BE ‖ vd_place_hash(collection name, pid key) u64 BE ‖ pid key
 *               -> empty: the same points in ring order, so a token range is a key range
 *   payloads    format 1 only (payload text apart from the vector); emptied by the migration
 *   changes     seq u64 BE -> incarnation u64 BE ‖ pid key
 *   hints       target node u64 BE ‖ incarnation u64 BE ‖ hint id u64 BE -> created wall-clock ms
 *               u64 LE ‖ point record: records kept for a replica that did not acknowledge them
 *               (hinted handoff); per-target counts and bytes are in meta
 *   payload_indexes incarnation u64 BE ‖ field name -> {format u8 = 1, type u8}: the payload
 *               indexes declared on a collection (the indexes themselves live in memory)
 *
 * A data directory of format 1 is converted on open in transactions of a bounded number of points;
 * a conversion cut short (a crash, a kill) resumes where its last transaction ended.
 *
 * Threads: every function is thread-safe unless stated. All writes go through one writer thread
 * that commits every queued batch in one transaction (group commit: one fsync serves many
 * batches). Reads use short read-only transactions that any thread may begin and end (MDB_NOTLS).
 * A thread must not wait for a write (vd_store_write, or a done callback), nor begin a second
 * read transaction, while it holds a read transaction: growing the map waits for every open read
 * transaction to end and holds back new ones meanwhile.
 */
#ifndef VECTORD_STORE_H
#define VECTORD_STORE_H

#include "vectord/core.h"

struct vd_coll_schema {
    char name[256];
    uint32_t dim;
    enum vd_metric metric;
    uint32_t hnsw_m, hnsw_ef_construct, full_scan_threshold_kb;
    uint32_t replication_factor, write_consistency_factor;
    /* Qdrant's quantization_config {"scalar": {"type": "int8", "quantile", "always_ram"}}: */
    bool quant_enabled;
    float quant_quantile;     /* 0.5..1, or 0 when not given (vectord uses 0.99) */
    uint8_t quant_always_ram; /* 0 not given, 1 false, 2 true */
    uint64_t incarnation; /* unique per (re)creation; assigned by the store on create if 0 */
    uint64_t created_hlc; /* set to vd_hlc_now() on create if 0 */
};

struct vd_store_opts {
    const char *dir;  /* data directory; created if missing; the environment is `<dir>/data/`
                         (data.mdb, lock.mdb) and `<dir>/LOCK` guards the directory */
    uint64_t map_size; /* initial map size; 0 = default (1 TiB virtual; the file is sparse and
                          grows with use; no MDB_WRITEMAP). Grown on demand when full. */
    bool no_sync;      /* tests only: skip fsync (a crash may lose acknowledged writes) */
    /* Caps on stored hints, in bytes (key, header and record): per target node and over all
     * targets; 0 = the defaults, 256 MiB and 1 GiB. A hint past a cap is not stored. */
    uint64_t hint_target_bytes, hint_total_bytes;
};

struct vd_store; /* opaque; thread-safe */

/* Opens (creating) the environment `<dir>/data` (MDB_NOTLS, no WRITEMAP, stale readers cleared
 * with mdb_reader_check), takes an exclusive flock on `<dir>/LOCK` (a second opener, in this or
 * another process, gets VD_EBUSY naming the directory), creates or reads the persistent node id
 * (random non-zero 64-bit, in `meta`), converts a format 1 environment, passes the persisted HLC
 * floor to vd_hlc_observe (so vd_hlc_now() stays above every version this node made durable
 * before) and starts the writer thread. Interrupted purges of deleted collections resume. `o->dir` is copied. On success *out is owned by the caller until
 * vd_store_close. Errors: VD_EINVAL (no dir), VD_EBUSY, VD_EIO, VD_ECORRUPT, VD_ENOMEM. */
int vd_store_open(const struct vd_store_opts *o, struct vd_store **out, struct vd_err *err);
/* Refuses new batches (VD_ECLOSED), commits every batch already queued (their done callbacks
 * run), stops the writer, closes the environment and releases the lock. Every read transaction
 * must have ended. NULL is ignored. */
void vd_store_close(struct vd_store *s);
uint64_t vd_store_node_id(const struct vd_store *s);
/* Highest change counter durably committed (0 when nothing was ever written). */
uint64_t vd_store_last_seq(const struct vd_store *s);

/* ---- writes: all go through one writer thread with group commit ---- */

enum vd_wop_kind {
    /* Point operations write one whole record and keep, per id, the newer version by
     * vd_version_cmp (an older or equal one is skipped, applied = false); none reads a stored
     * record to build the new one. */
    VD_WOP_UPSERT,      /* the record of (id, version, node, vec, payload): vector under the
                           unnamed name (payload NULL = none) */
    VD_WOP_DELETE,      /* writes a tombstone with the given version (also for a never-seen id,
                           so an older upsert arriving later cannot resurrect it) */
    VD_WOP_APPLY,       /* the encoded record rec[rec_len] as it is (upsert or tombstone), with
                           the version it carries; incarnation, id, version and node are taken
                           from it (written back into the op). VD_EINVAL for a malformed record
                           or, on a live one, no unnamed dense vector of the collection's size */
    VD_WOP_COLL_CREATE, /* schema; VD_EEXIST if name exists */
    VD_WOP_COLL_UPDATE, /* schema: replaces the stored schema of the live collection with that
                           name and incarnation (only the quantization config may differ);
                           VD_ENOTFOUND if there is none, VD_EINVAL if other fields differ */
    VD_WOP_COLL_DELETE, /* by name; VD_ENOTFOUND if absent; points of that incarnation are purged
                           in the background in chunks (never in one huge txn) */
    VD_WOP_PINDEX_PUT,  /* declare (or retype) the payload index `field` of incarnation with
                           field_type; VD_ENOTFOUND if the collection is gone, VD_ERANGE for an
                           empty name or one over VD_STORE_PINDEX_NAME_MAX bytes */
    VD_WOP_PINDEX_DELETE, /* drop the payload index `field`; VD_ENOTFOUND if absent */
    VD_WOP_HINT_PUT,    /* keep the encoded record rec[rec_len] for node `target` (hinted
                           handoff); its incarnation is taken from the record and written back,
                           hint_id gets the new hint's id. Past a cap (vd_store_opts) nothing is
                           stored and over_cap is set; the batch still commits. VD_EINVAL for a
                           malformed record or target 0. The collection need not be live here:
                           a hint of a deleted collection goes with the collection's purge */
    VD_WOP_HINT_DELETE, /* forget hint (target, incarnation, hint_id), once replayed or expired;
                           applied = false when it was already gone */
    VD_WOP_FORGET,      /* drops this node's copy of (incarnation, id) outright when it is
                           exactly version `version` by `node` (a copy the node should not hold,
                           already written to the points' replicas): no tombstone is left, the
                           hash entry goes, and the point's change-log entry is replaced by one
                           naming the now absent key (seq set), so the index, replaying the log
                           after a crash, drops it too. Another version, or none, is kept
                           (applied = false). VD_ENOTFOUND if the collection is not live */
};

/* Longest payload index field name: the key (8-byte incarnation + name) fits LMDB's 511. */
#define VD_STORE_PINDEX_NAME_MAX 500

struct vd_wop {
    enum vd_wop_kind kind;
    uint64_t incarnation;  /* point ops: must be a live collection's (else VD_ENOTFOUND) */
    struct vd_pid id;      /* point ops */
    uint64_t version;      /* HLC of this write; a point op applies only if (version,node) is
                              newer than the stored one (last-write-wins), else it is skipped */
    uint64_t node;         /* writer node id (tie-break) */
    const float *vec;      /* UPSERT: dim finite values, dim must equal the collection's
                              (VD_EINVAL) */
    uint32_t dim;
    const char *payload;   /* JSON object text, or NULL; not validated here */
    size_t payload_len;
    const uint8_t *rec;    /* APPLY: an encoded point record */
    size_t rec_len;
    /* UPSERT and APPLY, the write of a read-modify-write: when if_version is set the op applies
     * only if the id's stored record is live and carries exactly `expect` (the version that was
     * read); an absent id, a tombstone or any other version skips it with conflict = true, and
     * the rest of the batch still commits. Decided inside the write transaction, so a point
     * deleted or rewritten after the read is never overwritten by what was built from it. */
    bool if_version;
    struct vd_version expect;
    struct vd_coll_schema *schema; /* COLL_CREATE (incarnation, created_hlc filled on success),
                                      COLL_UPDATE */
    const char *coll_name;         /* COLL_DELETE */
    const char *field;             /* PINDEX_*: NUL-terminated field name */
    uint64_t target;               /* HINT_*: the node the hint is for */
    uint64_t hint_id;              /* HINT_DELETE: which hint; HINT_PUT: output */
    uint8_t field_type;            /* PINDEX_PUT: the caller's type code (1..255, opaque here) */
    /* outputs, valid in the done callback: */
    uint64_t seq;  /* change counter assigned (0 if skipped, and for collection ops) */
    bool applied;  /* point ops: false when skipped by last-write-wins; collection ops: true */
    bool conflict; /* if_version ops: skipped because the stored record is not `expect` */
    bool over_cap; /* HINT_PUT: not stored, a hint cap was reached */
};

/* A batch of operations applied atomically. Owned by the caller, who must keep it and everything
 * it points to (ops, vectors, payloads, schema, names) alive and unchanged until `done` runs. */
struct vd_wbatch {
    struct vd_wop *ops;
    size_t n;
    /* Called once on the writer thread after the batch's transaction is durable on disk (fsync
     * done) or has failed; status 0 or VD_E*; the whole batch is atomic (nested txn per batch, so
     * one failing batch does not fail the others of its group). Keep it short: it must not block
     * and must not call vd_store_write; it may read (the map never grows while a callback runs)
     * and vd_store_submit another batch. May be NULL. */
    void (*done)(struct vd_wbatch *b, int status, void *ctx);
    void *ctx;
    struct vd_err err; /* filled on failure */
};

/* Every group commit also records in meta the highest version HLC it wrote (the HLC floor that
 * vd_store_open restores). */
/* Failure of a group's commit on an fsync or write error is sticky: its batches fail with VD_EIO
 * and every later one too until the store is reopened, because after a failed fsync the page
 * cache no longer tells what is on disk. A full disk (ENOSPC) fails the group's batches with
 * VD_EFULL and is not sticky: later batches commit once space is freed. Nor is a full map that
 * cannot grow (VD_EFULL). */
/* Queues a batch; returns at once. 0, or VD_ECLOSED after close began (done is not called). */
int vd_store_submit(struct vd_store *s, struct vd_wbatch *b);
/* Submits and waits until the batch is durable or failed; returns its status. b->done, if set,
 * runs first (on the writer thread). Must not be called from a done callback. */
int vd_store_write(struct vd_store *s, struct vd_wbatch *b);

/* ---- reads: short read-only transactions (never keep one open long) ---- */

struct vd_rtxn;
/* Begins a snapshot read. *out is owned by the caller until vd_store_read_end (any thread may end
 * it). Errors: VD_EIO, VD_ENOMEM, VD_EBUSY (too many concurrent readers). */
int vd_store_read_begin(struct vd_store *s, struct vd_rtxn **out);
void vd_store_read_end(struct vd_rtxn *t);

struct vd_point_view {
    struct vd_pid id;
    uint64_t version, node, seq; /* version: HLC; (version, node) is the struct vd_version */
    bool tombstone;
    const float *vec;  /* the unnamed dense vector, NULL for tombstones; aligned for float
                          access; see lifetime below */
    uint32_t dim;
    const char *payload; /* not NUL-terminated; NULL if none */
    size_t payload_len;
    const uint8_t *rec; /* the whole stored record (vd_record_decode), rec_len bytes; its
                           pointers may be unaligned; lives as long as payload */
    size_t rec_len;
};
/* Reads one point (live or tombstone). The view's pointers stay valid until vd_store_read_end.
 * VD_ENOTFOUND if the id was never written (or was purged). */
int vd_store_point_get(struct vd_rtxn *t, uint64_t incarnation, const struct vd_pid *id,
                       struct vd_point_view *out);
/* Ends the lifetime of the vectors of every view point_get returned so far in this transaction
 * (payloads stay valid): a long read that fetches many points and copies each vector right away
 * calls it now and then so the aligned copies LMDB's 2-byte value alignment forces for small
 * vectors do not pile up until read_end. */
void vd_store_read_release_views(struct vd_rtxn *t);
/* Visits points of an incarnation in key order (ints before UUIDs) starting at `from` (inclusive,
 * NULL = first); tombstones included only if with_tombstones. fn returns nonzero to stop (that
 * value is returned). The view passed to fn is valid only during that call (its vector may sit in
 * a scratch buffer reused for the next point). */
typedef int (*vd_store_point_fn)(const struct vd_point_view *p, void *ctx);
int vd_store_scan(struct vd_rtxn *t, uint64_t incarnation, const struct vd_pid *from,
                  bool with_tombstones, vd_store_point_fn fn, void *ctx);
/* Visits the points of an incarnation whose placement hash (vd_place_hash of the collection
 * name and the stored key) lies on the ring arc (start, end], in hash order (an arc that wraps
 * past 2^64-1 is visited from start onwards, then from 0; start == end is the whole ring, as in
 * vd_ring_contains). Otherwise as vd_store_scan. */
int vd_store_scan_hash_range(struct vd_rtxn *t, uint64_t incarnation, uint64_t start,
                             uint64_t end, bool with_tombstones, vd_store_point_fn fn, void *ctx);
/* Visits every collection in name order; the schema is valid during the call only. */
typedef int (*vd_store_coll_fn)(const struct vd_coll_schema *c, void *ctx);
int vd_store_coll_list(struct vd_rtxn *t, vd_store_coll_fn fn, void *ctx);
/* VD_ENOTFOUND if absent. */
int vd_store_coll_get(struct vd_rtxn *t, const char *name, struct vd_coll_schema *out);
/* Visits the payload indexes declared on an incarnation in field-name byte order; the name is
 * NUL-terminated and valid during the call only. fn returns nonzero to stop (that value is
 * returned). */
typedef int (*vd_store_pindex_fn)(const char *field, uint8_t type, void *ctx);
int vd_store_pindex_list(struct vd_rtxn *t, uint64_t incarnation, vd_store_pindex_fn fn,
                         void *ctx);
/* Changes with seq > after, in seq order: (incarnation, id, seq) of the latest op applied to each
 * point (a point's earlier entries are dropped when it changes again, so the log holds at most
 * one entry per point), for replaying into the in-memory index. The id pointer is valid during the call.
 * Entries of deleted collections stay until trimmed while their points are purged: a consumer
 * looks the point up and skips incarnations it does not know or ids that are gone. */
typedef int (*vd_store_change_fn)(uint64_t incarnation, const struct vd_pid *id, uint64_t seq,
                                  void *ctx);
int vd_store_changes_since(struct vd_rtxn *t, uint64_t after, vd_store_change_fn fn, void *ctx);
/* Lets the writer delete change-log entries with seq <= upto (capped at the last committed
 * counter) in the background, in small transactions. Call it only with a counter that every
 * consumer of changes_since has durably absorbed (e.g. the one a saved graph records): entries
 * below it are gone afterwards. Returns 0, or VD_ECLOSED after close began. */
int vd_store_changes_trim(struct vd_store *s, uint64_t upto);
/* How many entries the change log holds and the lowest counter among them (0 when empty). */
int vd_store_changes_stat(struct vd_rtxn *t, uint64_t *entries, uint64_t *first);

/* Space of the data file, for /metrics and tests. */
struct vd_store_space {
    uint64_t file_bytes; /* size of data.mdb on disk */
    uint64_t used_bytes; /* pages up to the highest one written (the file's high-water mark) */
    uint64_t free_bytes; /* of used_bytes, pages on LMDB's free list: reusable once no read
                          * transaction older than their release is open */
    uint64_t page_size;
};
/* Fills *out; reads LMDB's free list in a read transaction (cost: its few pages). VD_EIO if the
 * file cannot be examined. */
int vd_store_stats(struct vd_store *s, struct vd_store_space *out);

/* Writer counters since open (monotonic; for /metrics and tests). */
struct vd_store_counters {
    uint64_t batches;      /* batches completed (success or failure) */
    uint64_t commits;      /* group transactions committed (each one fsync unless no_sync) */
    uint64_t failed_commits;
    uint64_t map_grows;    /* times the map was enlarged after MDB_MAP_FULL */
    uint64_t purged_points;
    uint64_t map_size;     /* current map size in bytes */
    uint32_t purges_pending; /* deleted incarnations whose points are not yet all purged */
    uint64_t tombstones_purged; /* tombstones removed after their grace period */
    uint64_t sweep_passes;      /* completed passes of the tombstone sweep */
};
void vd_store_counters(struct vd_store *s, struct vd_store_counters *out);

/* Blocks until no purge of a deleted collection is pending or `timeout_ms` elapsed; 0 or
 * VD_ETIMEOUT. For tests and orderly shutdown. */
int vd_store_purge_wait(struct vd_store *s, uint64_t timeout_ms);

/* Removes tombstones whose version (HLC physical time) is older than grace_ms, in background
 * passes over the points table in small transactions (a pass starts now, then every
 * min(60 s, grace / 2), at least 1 s). The grace period must exceed the longest time a replica may
 * miss a delete (hint replay, repair): after it a stale replica could resurrect the point.
 * 0 (the default) keeps tombstones forever. */
void vd_store_set_tombstone_grace(struct vd_store *s, uint64_t grace_ms);

/* ---- hints (hinted handoff) ---- */

/* Where a hint sits in its target's order: (incarnation, id), ascending. */
struct vd_hint_pos {
    uint64_t incarnation, id;
};
struct vd_hint_view {
    uint64_t target;
    struct vd_hint_pos pos;
    uint64_t created_ms; /* wall clock when it was stored, for the hint window */
    const uint8_t *rec;  /* the point record (vd_record_decode; may be unaligned) */
    size_t rec_len;
};
/* Visits target's hints in (incarnation, id) order, from just after `after` (NULL: the first);
 * the view is valid during the call. fn returns nonzero to stop (that value is returned). A
 * replayer reads a page, sends it, deletes what was acknowledged (VD_WOP_HINT_DELETE) and goes
 * on from the last position. */
typedef int (*vd_store_hint_fn)(const struct vd_hint_view *h, void *ctx);
int vd_store_hints_scan(struct vd_rtxn *t, uint64_t target, const struct vd_hint_pos *after,
                        vd_store_hint_fn fn, void *ctx);
/* Visits every target that has hints, in id order, with how many and how many bytes (as the
 * caps count them). fn returns nonzero to stop (that value is returned). */
typedef int (*vd_store_hint_total_fn)(uint64_t target, uint64_t count, uint64_t bytes,
                                      void *ctx);
int vd_store_hint_totals(struct vd_rtxn *t, vd_store_hint_total_fn fn, void *ctx);

#endif
