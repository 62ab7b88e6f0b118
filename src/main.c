/* vectord: flags and config, wiring of the modules, signals. No logic of its own. */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vectord/api.h"
#include "vectord/cluster.h"
#include "vectord/config.h"
#include "vectord/db.h"
#include "vectord/http.h"
#include "vectord/notify.h"
#include "vd_commit.h"

#ifndef VD_VERSION
#define VD_VERSION "0.0.0"
#endif

struct metrics_src {
    struct vd_db *db;
    struct vd_cluster *cluster;
};

static void metrics_hook(struct vd_buf *out, void *ctx)
{
    struct metrics_src *m = ctx;
    vd_db_metrics(m->db, out);
    vd_cluster_metrics(m->cluster, out);
}

/* A cluster node that cannot go on as started (a refused --join) ends the process through the
 * same path as SIGTERM, and main exits non-zero with the reason. */
static atomic_bool fatal_set;
static char fatal_msg[512];

static void on_fatal(const char *msg, void *ctx)
{
    (void)ctx;
    if (atomic_exchange(&fatal_set, true))
        return;
    snprintf(fatal_msg, sizeof fatal_msg, "%s", msg);
    kill(getpid(), SIGTERM);
}

static bool ready_hook(void *ctx)
{
    return vd_db_ready(ctx);
}

static bool is_wildcard(const char *addr)
{
    return !strcmp(addr, "0.0.0.0") || !strcmp(addr, "::");
}

/* The REST address other nodes show for this one in GET /cluster: the bind address, or the
 * advertised cluster host when bound to a wildcard. */
static void rest_address(const struct vd_config *cfg, char *out, size_t cap)
{
    char host[300];
    if (!is_wildcard(cfg->bind)) {
        snprintf(host, sizeof host, strchr(cfg->bind, ':') ? "[%s]" : "%s", cfg->bind);
    } else if (cfg->advertise) {
        snprintf(host, sizeof host, "%s", cfg->advertise);
        char *colon = strrchr(host, ':');
        if (colon)
            *colon = 0;
    } else {
        snprintf(host, sizeof host, "127.0.0.1");
    }
    snprintf(out, cap, "%s:%u", host, cfg->port);
}

int main(int argc, char **argv)
{
    struct vd_config cfg;
    struct vd_err err = {0};
    vd_config_init(&cfg);
    if (vd_config_from_args(&cfg, argc, argv, &err) || vd_config_validate(&cfg, &err)) {
        fprintf(stderr, "vectord: %s\n", err.msg);
        vd_config_release(&cfg);
        return 2;
    }
    if (cfg.show_help) {
        fputs(vd_config_usage(), stdout);
        vd_config_release(&cfg);
        return 0;
    }
    if (cfg.show_version) {
        printf("vectord %s\n", VD_VERSION);
        vd_config_release(&cfg);
        return 0;
    }
    vd_log_set_level(cfg.log_level);
    vd_clock_set_test_offset_ms(cfg.test_clock_offset_ms);
    if (cfg.test_clock_offset_ms)
        vd_log_warn("wall clock shifted by %lld ms for tests (VECTORD_TEST_CLOCK_OFFSET_MS)",
                    (long long)cfg.test_clock_offset_ms);

    /* Signals are taken by sigwait in this thread only; every thread started below inherits the
     * blocked mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    int status = 1;
    struct vd_db *db = NULL;
    struct vd_cluster *cluster = NULL;
    struct vd_http *http = NULL;
    struct vd_http_key *keys = NULL;
    vd_log_info("vectord %s starting: data in '%s'", VD_VERSION, cfg.data_dir);
    struct vd_db_opts dbo = {
        .data_dir = cfg.data_dir,
        .index_threads = cfg.index_threads,
        .index_save_seconds = cfg.index_save_seconds,
        .hint_target_bytes = cfg.hint_node_bytes,
        .hint_total_bytes = cfg.hint_total_bytes,
    };
    if (vd_db_open(&dbo, &db, &err)) {
        vd_log_error("cannot open the database: %s", err.msg);
        goto out;
    }
    char rest_addr[320];
    rest_address(&cfg, rest_addr, sizeof rest_addr);
    /* With API keys and no cluster secret, peers prove knowledge of the admin key (a secret
     * derived from it); with keys but no admin key there is nothing to prove, so no peer. */
    const char *secret = cfg.cluster_secret;
    char derived[VD_CLUSTER_DERIVED_SECRET_LEN + 1];
    bool refuse_peers = false;
    if ((!secret || !secret[0]) && cfg.n_keys) {
        const char *admin = NULL;
        for (size_t i = 0; i < cfg.n_keys && !admin; i++)
            if (cfg.keys[i].role == VD_ROLE_ADMIN)
                admin = cfg.keys[i].key;
        if (admin && vd_cluster_derive_secret(admin, derived) == 0) {
            secret = derived;
            vd_log_info("cluster: no --cluster-secret: peers must prove a secret derived from the "
                        "first admin API key");
        } else {
            refuse_peers = true;
            vd_log_warn("cluster: API keys are set but no --cluster-secret and no admin key to "
                        "derive one from: every peer is refused (set --cluster-secret to form a "
                        "cluster)");
        }
    }
    struct vd_cluster_opts co = {
        .db = db,
        .data_dir = cfg.data_dir,
        .bind = cfg.bind,
        .port = cfg.cluster_port,
        .advertise = cfg.advertise,
        .http_advertise = rest_addr,
        .join = cfg.join,
        .secret = secret,
        .refuse_peers = refuse_peers,
        .election_timeout_ms = cfg.raft_election_ms,
        .max_clock_offset_ms = cfg.max_clock_offset_ms,
        .hint_window_ms = cfg.hint_window_seconds * 1000,
        .repair_interval_ms = cfg.repair_interval_seconds * 1000,
        .on_fatal = on_fatal,
    };
    if (vd_cluster_start(&co, &cluster, &err)) {
        vd_log_error("cannot start the cluster node on %s:%u: %s", cfg.bind, cfg.cluster_port,
                     err.msg);
        goto out_db;
    }
    keys = calloc(cfg.n_keys ? cfg.n_keys : 1, sizeof *keys);
    if (!keys)
        goto out_cluster;
    for (size_t i = 0; i < cfg.n_keys; i++) {
        keys[i].key = cfg.keys[i].key;
        keys[i].role = (enum vd_role)cfg.keys[i].role;
    }
    struct vd_http_opts ho = {
        .bind = cfg.bind,
        .port = cfg.port,
        .threads = cfg.http_threads,
        .max_body = cfg.max_body_bytes,
        .max_connections = cfg.max_connections,
        .max_inflight_body = (size_t)cfg.max_inflight_body_bytes,
        .header_timeout_s = cfg.header_timeout_seconds,
        .keys = keys,
        .n_keys = cfg.n_keys,
        .version = VD_VERSION,
        .commit = VD_COMMIT,
    };
    if (vd_http_new(&ho, &http, &err)) {
        vd_log_error("cannot set up HTTP: %s", err.msg);
        goto out_cluster;
    }
    struct vd_api_opts ao = {
        .db = db, .cluster = cluster, .replication_factor = cfg.replication_factor};
    vd_api_cluster_data(cluster, &ao.data);
    if (vd_api_register(http, &ao)) {
        vd_log_error("cannot register routes");
        goto out_http;
    }
    struct metrics_src msrc = {db, cluster};
    vd_http_set_metrics_hook(http, metrics_hook, &msrc);
    vd_http_set_ready_hook(http, ready_hook, db);
    if (vd_http_start(http, &err)) {
        vd_log_error("cannot listen on %s:%u: %s", cfg.bind, cfg.port, err.msg);
        goto out_http;
    }
    vd_log_info("serving REST on %s:%u (%s)", cfg.bind, vd_http_port(http),
                cfg.n_keys ? "API keys required" : "no API key configured");
    /* READY=1 promises what /readyz answers: a node not ready yet says nothing */
    if (ready_hook(db)) {
        char where[320];
        snprintf(where, sizeof where, "%s:%u", cfg.bind, vd_http_port(http));
        vd_notify_ready(where);
    } else {
        vd_log_warn("storage not ready after start-up: the service manager is not told READY=1");
    }

    int sig = 0;
    sigwait(&sigs, &sig);
    bool fatal = atomic_load(&fatal_set);
    if (fatal)
        vd_log_error("shutting down: %s", fatal_msg);
    else
        vd_log_info("received %s: shutting down (send it again to exit at once)",
                    sig == SIGINT ? "SIGINT" : "SIGTERM");
    /* a second signal takes the default action: immediate exit */
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    pthread_sigmask(SIG_UNBLOCK, &sigs, NULL);
    vd_notify_stopping();
    vd_http_stop(http, 10000);
    status = fatal ? 1 : 0;
out_http:
    /* After HTTP stopped accepting, before the server is freed: the requests the cluster fails
     * on its way out (VD_ECLOSED) reply to requests the server still owns, which it discards.
     * Before the db: the state machine applies changes to it. */
    vd_cluster_stop(cluster);
    cluster = NULL;
    vd_http_free(http);
out_cluster:
    vd_cluster_stop(cluster);
out_db:
    vd_db_close(db);
out:
    free(keys);
    vd_config_release(&cfg);
    if (status == 0)
        vd_log_info("vectord stopped cleanly");
    return status;
}
