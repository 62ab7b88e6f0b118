/*
 * Server configuration: the embedded defaults, a JSON config file, then command-line flags (which
 * override the file). Every problem is reported as one line naming the flag or key.
 */
#ifndef VECTORD_CONFIG_H
#define VECTORD_CONFIG_H

#include "vectord/core.h"

struct vd_config_key {
    char *key;  /* the key, or "sha256:<64 hex digits>" */
    int role;   /* 1 ro, 2 rw, 3 admin (same values as enum vd_role) */
};

struct vd_config {
    char *config_file;
    char *data_dir;          /* default "./data" */
    char *bind;              /* default "127.0.0.1" */
    uint16_t port;           /* default 6333 */
    uint16_t cluster_port;   /* default 6335 */
    char *join;              /* host:port or NULL */
    char *advertise;         /* host:port or NULL */
    char *cluster_secret;    /* or NULL */
    unsigned raft_election_ms; /* config file key only: Raft election timeout, default 1000 */
    bool insecure;
    enum vd_log_level log_level;
    unsigned http_threads;   /* 0 = automatic */
    uint64_t max_body_bytes; /* default 32 MiB */
    unsigned max_connections;          /* 0 = the HTTP server's default (1024) */
    uint64_t max_inflight_body_bytes;  /* 0 = the HTTP server's default (512 MiB) */
    unsigned header_timeout_seconds;   /* 0 = the HTTP server's default (30) */
    unsigned index_threads;  /* background graph-linking threads, 0 = automatic */
    unsigned index_save_seconds; /* periodic graph save interval, default 300 */
    uint64_t max_clock_offset_ms; /* peers' clocks this far ahead are refused, default 500 */
    unsigned replication_factor;  /* of a collection created without one, 1..64, default 1 */
    uint64_t hint_window_seconds; /* --hint-window, default 10800 */
    uint64_t hint_node_bytes;     /* --hint-node-bytes: hint cap per target, default 256 MiB */
    uint64_t hint_total_bytes;    /* --hint-total-bytes: hint cap over all, default 1 GiB */
    uint64_t repair_interval_seconds; /* --repair-interval: anti-entropy repair of every
                                         collection this often, default 86400; 0 = only asked */
    int64_t test_clock_offset_ms; /* tests only: VECTORD_TEST_CLOCK_OFFSET_MS, default 0 */
    struct vd_config_key *keys;
    size_t n_keys;
    bool show_help, show_version;
};

/* Fills defaults. */
void vd_config_init(struct vd_config *c);
/* Frees every string the config owns. */
void vd_config_release(struct vd_config *c);
/* Applies argv (argv[0] skipped): first finds --config and loads that file, then applies the
 * flags, then VD environment (VECTORD_API_KEY when no --api-key; VECTORD_TEST_CLOCK_OFFSET_MS, a
 * signed number of ms that tests use to skew a node's clock, left out of --help). Errors: VD_EINVAL with a
 * message naming the flag or key, e.g. "--port: 'abc' is not a port number (1-65535)". */
int vd_config_from_args(struct vd_config *c, int argc, char **argv, struct vd_err *err);
/* Loads a JSON config text (unknown keys are errors). */
int vd_config_load_json(struct vd_config *c, const char *text, size_t len, struct vd_err *err);
/* Checks cross-field rules (e.g. no API key and a non-loopback bind without --insecure). */
int vd_config_validate(const struct vd_config *c, struct vd_err *err);
/* The --help text. */
const char *vd_config_usage(void);
/* True when addr is a loopback address (127.0.0.0/8, ::1, localhost). */
bool vd_config_is_loopback(const char *addr);

#endif
