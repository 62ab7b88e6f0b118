/* Configuration: defaults, JSON file, flags. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "vectord/config.h"

void vd_config_init(struct vd_config *c)
{
    memset(c, 0, sizeof *c);
    c->data_dir = vd_xstrdup("./data");
    c->bind = vd_xstrdup("127.0.0.1");
    c->port = 6333;
    c->cluster_port = 6335;
    c->log_level = VD_LOG_INFO;
    c->max_body_bytes = 32u << 20;
    c->index_save_seconds = 300;
    c->raft_election_ms = 1000;
    c->max_clock_offset_ms = VD_MAX_CLOCK_OFFSET_MS_DEFAULT;
    c->replication_factor = 1;
    c->hint_window_seconds = 10800;
    c->hint_node_bytes = 256ULL << 20;
    c->hint_total_bytes = 1ULL << 30;
    c->repair_interval_seconds = 86400;
}

static void free_keys(struct vd_config *c)
{
    for (size_t i = 0; i < c->n_keys; i++)
        free(c->keys[i].key);
    free(c->keys);
    c->keys = NULL;
    c->n_keys = 0;
}

void vd_config_release(struct vd_config *c)
{
    free(c->config_file);
    free(c->data_dir);
    free(c->bind);
    free(c->join);
    free(c->advertise);
    free(c->cluster_secret);
    free_keys(c);
    memset(c, 0, sizeof *c);
}

static void set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = v ? vd_xstrdup(v) : NULL;
}

static int parse_uint(const char *v, uint64_t min, uint64_t max, uint64_t *out)
{
    if (!v || !*v || *v == '-' || *v == '+')
        return VD_EINVAL;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || *end || x < min || x > max)
        return VD_EINVAL;
    *out = x;
    return 0;
}

static int parse_role(const char *s)
{
    if (!strcmp(s, "ro"))
        return 1;
    if (!strcmp(s, "rw"))
        return 2;
    if (!strcmp(s, "admin"))
        return 3;
    return 0;
}

static int add_key(struct vd_config *c, const char *key, int role, const char *what,
                   struct vd_err *err)
{
    if (!key || strlen(key) < 8 || strlen(key) > 512)
        return vd_errf(err, VD_EINVAL, "%s: an API key must be 8 to 512 characters", what);
    if (!strncmp(key, "sha256:", 7)) {
        const char *h = key + 7;
        if (strlen(h) != 64 || strspn(h, "0123456789abcdefABCDEF") != 64)
            return vd_errf(err, VD_EINVAL, "%s: a stored digest must be 'sha256:' and 64 hex digits",
                           what);
    }
    c->keys = realloc(c->keys, (c->n_keys + 1) * sizeof *c->keys);
    if (!c->keys)
        return vd_errf(err, VD_ENOMEM, "out of memory");
    c->keys[c->n_keys].key = vd_xstrdup(key);
    c->keys[c->n_keys].role = role;
    c->n_keys++;
    return 0;
}

bool vd_config_is_loopback(const char *addr)
{
    if (!strcmp(addr, "localhost"))
        return true;
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, addr, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, addr, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6);
    return false;
}

static bool valid_addr(const char *a)
{
    struct in_addr a4;
    struct in6_addr a6;
    return !strcmp(a, "localhost") || inet_pton(AF_INET, a, &a4) == 1 ||
           inet_pton(AF_INET6, a, &a6) == 1;
}

static bool valid_hostport(const char *s)
{
    const char *colon = strrchr(s, ':');
    uint64_t p;
    return colon && colon != s && parse_uint(colon + 1, 1, 65535, &p) == 0;
}

/* The hidden clock skew of tests: a signed number of ms, at most a day either way. */
static int test_clock_offset(struct vd_config *c, const char *v, struct vd_err *err)
{
    if (!v || !*v)
        return 0;
    bool neg = *v == '-';
    uint64_t n;
    if (parse_uint(v + neg, 0, 86400000, &n))
        return vd_errf(err, VD_EINVAL,
                       "VECTORD_TEST_CLOCK_OFFSET_MS: '%s' is not a number of milliseconds "
                       "(-86400000 to 86400000)",
                       v);
    c->test_clock_offset_ms = neg ? -(int64_t)n : (int64_t)n;
    return 0;
}

/* One option, from a flag or a config key. `name` is how the user wrote it ("--port" or
 * "config key 'port'") so errors name it. */
static int apply(struct vd_config *c, const char *opt, const char *v, const char *name,
                 struct vd_err *err)
{
    uint64_t n;
    if (!strcmp(opt, "data-dir") || !strcmp(opt, "data_dir")) {
        if (!*v)
            return vd_errf(err, VD_EINVAL, "%s: must not be empty", name);
        set_str(&c->data_dir, v);
    } else if (!strcmp(opt, "bind")) {
        if (!valid_addr(v))
            return vd_errf(err, VD_EINVAL, "%s: '%s' is not an IP address", name, v);
        set_str(&c->bind, v);
    } else if (!strcmp(opt, "port")) {
        if (parse_uint(v, 1, 65535, &n))
            return vd_errf(err, VD_EINVAL, "%s: '%s' is not a port number (1-65535)", name, v);
        c->port = (uint16_t)n;
    } else if (!strcmp(opt, "cluster-port") || !strcmp(opt, "cluster_port")) {
        if (parse_uint(v, 1, 65535, &n))
            return vd_errf(err, VD_EINVAL, "%s: '%s' is not a port number (1-65535)", name, v);
        c->cluster_port = (uint16_t)n;
    } else if (!strcmp(opt, "join")) {
        if (!valid_hostport(v))
            return vd_errf(err, VD_EINVAL, "%s: '%s' is not HOST:PORT", name, v);
        set_str(&c->join, v);
    } else if (!strcmp(opt, "advertise")) {
        if (!valid_hostport(v))
            return vd_errf(err, VD_EINVAL, "%s: '%s' is not HOST:PORT", name, v);
        set_str(&c->advertise, v);
    } else if (!strcmp(opt, "cluster-secret") || !strcmp(opt, "cluster_secret")) {
        if (strlen(v) < 8)
            return vd_errf(err, VD_EINVAL, "%s: the cluster secret must be at least 8 characters",
                           name);
        set_str(&c->cluster_secret, v);
    } else if (!strcmp(opt, "raft_election_ms")) {
        /* config file only: a cluster-wide tuning that should not differ per start */
        if (parse_uint(v, 100, 60000, &n))
            return vd_errf(err, VD_EINVAL, "%s: '%s' is not a number of milliseconds (100-60000)",
                           name, v);
        c->raft_election_ms = (unsigned)n;
    } else if (!strcmp(opt, "api-key") || !strcmp(opt, "api_key")) {
        return add_key(c, v, 3, name, err);
    } else if (!strcmp(opt, "log-level") || !strcmp(opt, "log_level")) {
        if (vd_log_level_parse(v, &c->log_level))
            return vd_errf(err, VD_EINVAL, "%s: '%s' is not one of debug, info, warn, error, off",
                           name, v);
    } else if (!strcmp(opt, "http-threads") || !strcmp(opt, "http_threads")) {
        if (parse_uint(v, 1, 1024, &n))
            return vd_errf(err, VD_EINVAL, "%s: '%s' is not a thread count (1-1024)", name, v);
        c->http_threads = (unsigned)n;
    } else if (!strcmp(opt, "index-threads") || !strcmp(opt, "index_threads")) {
        if (parse_uint(v, 1, 1024, &n))
            return vd_errf(err, VD_EINVAL, "%s: '%s' is not a thread count (1-1024)", name, v);
        c->index_threads = (unsigned)n;
    } else if (!strcmp(opt, "index-save-seconds") || !strcmp(opt, "index_save_seconds")) {
        if (parse_uint(v, 1, 86400 * 7, &n))
            return vd_errf(err, VD_EINVAL, "%s: '%s' is not a number of seconds (1-604800)", name,
                           v);
        c->index_save_seconds = (unsigned)n;
    } else if (!strcmp(opt, "max-clock-offset") || !strcmp(opt, "max_clock_offset")) {
        if (parse_uint(v, 1, 3600000, &n))
            return vd_errf(err, VD_EINVAL,
                           "%s: '%s' is not a number of milliseconds (1-3600000)", name, v);
        c->max_clock_offset_ms = n;
    } else if (!strcmp(opt, "replication-factor") || !strcmp(opt, "replication_factor")) {
        if (parse_uint(v, 1, 64, &n))
            return vd_errf(err, VD_EINVAL, "%s: '%s' is not a replication factor (1-64)", name, v);
        c->replication_factor = (unsigned)n;
    } else if (!strcmp(opt, "max-body-bytes") || !strcmp(opt, "max_body_bytes")) {
        if (parse_uint(v, 1024, (uint64_t)1 << 34, &n))
            return vd_errf(err, VD_EINVAL, "%s: '%s' is not a size in bytes (1024-17179869184)",
                           name, v);
        c->max_body_bytes = n;
    } else if (!strcmp(opt, "max-connections") || !strcmp(opt, "max_connections")) {
        if (parse_uint(v, 1, 1000000, &n))
            return vd_errf(err, VD_EINVAL, "%s: '%s' is not a connection count (1-1000000)",
                           name, v);
        c->max_connections = (unsigned)n;
    } else if (!strcmp(opt, "max-inflight-body-bytes") ||
               !strcmp(opt, "max_inflight_body_bytes")) {
        if (parse_uint(v, 1024, (uint64_t)1 << 40, &n))
            return vd_errf(err, VD_EINVAL, "%s: '%s' is not a size in bytes (1024-1099511627776)",
                           name, v);
        c->max_inflight_body_bytes = n;
    } else if (!strcmp(opt, "header-timeout-seconds") ||
               !strcmp(opt, "header_timeout_seconds")) {
        if (parse_uint(v, 1, 3600, &n))
            return vd_errf(err, VD_EINVAL, "%s: '%s' is not a number of seconds (1-3600)", name,
                           v);
        c->header_timeout_seconds = (unsigned)n;
    } else if (!strcmp(opt, "hint-window") || !strcmp(opt, "hint_window")) {
        if (parse_uint(v, 1, 86400 * 30, &n))
            return vd_errf(err, VD_EINVAL, "%s: '%s' is not a number of seconds (1-2592000)",
                           name, v);
        c->hint_window_seconds = n;
    } else if (!strcmp(opt, "hint-node-bytes") || !strcmp(opt, "hint_node_bytes")) {
        if (parse_uint(v, 1024, (uint64_t)1 << 44, &n))
            return vd_errf(err, VD_EINVAL, "%s: '%s' is not a size in bytes (1024-17592186044416)",
                           name, v);
        c->hint_node_bytes = n;
    } else if (!strcmp(opt, "hint-total-bytes") || !strcmp(opt, "hint_total_bytes")) {
        if (parse_uint(v, 1024, (uint64_t)1 << 44, &n))
            return vd_errf(err, VD_EINVAL, "%s: '%s' is not a size in bytes (1024-17592186044416)",
                           name, v);
        c->hint_total_bytes = n;
    } else if (!strcmp(opt, "repair-interval") || !strcmp(opt, "repair_interval")) {
        /* 0 is allowed: no scheduled repair, only POST /cluster/repair */
        if (parse_uint(v, 0, 86400 * 365, &n))
            return vd_errf(err, VD_EINVAL,
                           "%s: '%s' is not a number of seconds (0-31536000; 0 = off)", name, v);
        c->repair_interval_seconds = n;
    } else {
        return vd_errf(err, VD_EINVAL, "%s: unknown option", name);
    }
    return 0;
}

int vd_config_load_json(struct vd_config *c, const char *text, size_t len, struct vd_err *err)
{
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return vd_errf(err, VD_EINVAL, "config: not a JSON object");
    }
    int rc = 0;
    char name[160], num[32];
    cJSON *it;
    cJSON_ArrayForEach(it, root)
    {
        snprintf(name, sizeof name, "config key '%s'", it->string);
        const char *k = it->string;
        if (!strcmp(k, "insecure")) {
            if (!cJSON_IsBool(it)) {
                rc = vd_errf(err, VD_EINVAL, "%s: expected true or false", name);
                break;
            }
            c->insecure = cJSON_IsTrue(it);
        } else if (!strcmp(k, "api_keys")) {
            if (!cJSON_IsArray(it)) {
                rc = vd_errf(err, VD_EINVAL, "%s: expected an array of {\"key\", \"role\"}", name);
                break;
            }
            cJSON *e;
            int i = 0;
            cJSON_ArrayForEach(e, it)
            {
                snprintf(name, sizeof name, "config key 'api_keys[%d]'", i++);
                cJSON *key = cJSON_GetObjectItemCaseSensitive(e, "key");
                cJSON *role = cJSON_GetObjectItemCaseSensitive(e, "role");
                int r = cJSON_IsString(role) ? parse_role(role->valuestring) : 0;
                if (!cJSON_IsObject(e) || !cJSON_IsString(key) || !r ||
                    cJSON_GetArraySize(e) != 2) {
                    rc = vd_errf(err, VD_EINVAL,
                                 "%s: expected {\"key\": \"...\", \"role\": \"admin|rw|ro\"}", name);
                    break;
                }
                if ((rc = add_key(c, key->valuestring, r, name, err)))
                    break;
            }
            if (rc)
                break;
        } else if (cJSON_IsString(it)) {
            if ((rc = apply(c, k, it->valuestring, name, err)))
                break;
        } else if (cJSON_IsNumber(it)) {
            if (it->valuedouble != (double)(long long)it->valuedouble) {
                rc = vd_errf(err, VD_EINVAL, "%s: expected an integer", name);
                break;
            }
            snprintf(num, sizeof num, "%lld", (long long)it->valuedouble);
            if ((rc = apply(c, k, num, name, err)))
                break;
        } else {
            if ((rc = apply(c, k, "", name, err)) == 0)
                rc = vd_errf(err, VD_EINVAL, "%s: wrong type", name);
            break;
        }
    }
    cJSON_Delete(root);
    return rc;
}

static int load_file(struct vd_config *c, const char *path, struct vd_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return vd_errf(err, VD_EINVAL, "--config: cannot open '%s': %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (1u << 20)) {
                free(buf);
                fclose(f);
                return vd_errf(err, VD_EINVAL, "--config: '%s' is larger than 1 MiB", path);
            }
            buf = realloc(buf, cap);
            if (!buf) {
                fclose(f);
                return vd_errf(err, VD_ENOMEM, "out of memory");
            }
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    fclose(f);
    int rc = vd_config_load_json(c, buf, len, err);
    free(buf);
    if (rc)
        vd_err_prefix(err, "--config '%s'", path);
    return rc;
}

static const char *usage_text =
    "Usage: vectord [options]\n"
    "\n"
    "  --config FILE          JSON config file (flags override it)\n"
    "  --data-dir DIR         data directory (default ./data)\n"
    "  --bind ADDR            REST listen address (default 127.0.0.1)\n"
    "  --port N               REST port (default 6333)\n"
    "  --cluster-port N       peer port (default 6335)\n"
    "  --join HOST:PORT       join the cluster of the member at this cluster address\n"
    "  --advertise HOST:PORT  cluster address other nodes use for this one\n"
    "  --cluster-secret S     secret peers must present\n"
    "  --api-key KEY          an admin API key (also VECTORD_API_KEY)\n"
    "  --insecure             allow a non-loopback bind without any API key\n"
    "  --log-level LEVEL      debug, info, warn, error or off (default info)\n"
    "  --http-threads N       HTTP worker threads (default: number of CPUs)\n"
    "  --index-threads N      background index-building threads (default: CPUs - 1, at least 1)\n"
    "  --index-save-seconds N how often the index graph is saved when it changed (default 300)\n"
    "  --max-body-bytes N     request body limit (default 33554432)\n"
    "  --max-clock-offset MS  largest clock offset between members: data frames further ahead\n"
    "                         are refused, and a node this far from a majority refuses writes\n"
    "                         (default 500)\n"
    "  --replication-factor N replication_factor of a collection created without one\n"
    "                         (default 1, as in Qdrant)\n"
    "  --max-connections N    open HTTP connections served; requests past it get 503 (default 1024)\n"
    "  --max-inflight-body-bytes N\n"
    "                         request body bytes buffered at once over all connections; 503\n"
    "                         past it (default 536870912)\n"
    "  --header-timeout-seconds N\n"
    "                         time a connection has to send a request's headers (default 30)\n"
    "  --hint-window SECONDS  hints for a replica older than this are dropped and the replica\n"
    "                         marked needs-repair (default 10800, three hours)\n"
    "  --hint-node-bytes N    hints kept for one replica at most; past it writes for it are\n"
    "                         not hinted and it is marked needs-repair (default 268435456)\n"
    "  --hint-total-bytes N   hints kept for all replicas at most (default 1073741824)\n"
    "  --repair-interval SECONDS\n"
    "                         anti-entropy repair of every collection this often (default\n"
    "                         86400, daily; 0 = only when asked with POST /cluster/repair)\n"
    "  --help                 this text\n"
    "  --version              print the version\n";

const char *vd_config_usage(void)
{
    return usage_text;
}

int vd_config_from_args(struct vd_config *c, int argc, char **argv, struct vd_err *err)
{
    /* the file first, so flags override it wherever they stand */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strncmp(a, "--config=", 9))
            v = a + 9;
        else if (!strcmp(a, "--config")) {
            if (i + 1 >= argc)
                return vd_errf(err, VD_EINVAL, "--config: needs a value");
            v = argv[++i];
        }
        if (v) {
            set_str(&c->config_file, v);
            int rc = load_file(c, v, err);
            if (rc)
                return rc;
        }
    }
    bool key_flag = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            c->show_help = true;
            continue;
        }
        if (!strcmp(a, "--version")) {
            c->show_version = true;
            continue;
        }
        if (!strcmp(a, "--insecure")) {
            c->insecure = true;
            continue;
        }
        if (strncmp(a, "--", 2) != 0)
            return vd_errf(err, VD_EINVAL, "'%s': unexpected argument (options start with --)", a);
        char opt[64];
        const char *eq = strchr(a, '='), *v;
        size_t olen = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        if (olen >= sizeof opt || olen == 0)
            return vd_errf(err, VD_EINVAL, "'%s': unknown option", a);
        memcpy(opt, a + 2, olen);
        opt[olen] = 0;
        if (strchr(opt, '_'))
            return vd_errf(err, VD_EINVAL, "--%s: unknown option", opt);
        if (eq) {
            v = eq + 1;
        } else {
            if (i + 1 >= argc)
                return vd_errf(err, VD_EINVAL, "--%s: needs a value", opt);
            v = argv[++i];
        }
        if (!strcmp(opt, "config"))
            continue;
        char name[80];
        snprintf(name, sizeof name, "--%s", opt);
        if (!strcmp(opt, "api-key") && !key_flag) {
            key_flag = true;
        }
        int rc = apply(c, opt, v, name, err);
        if (rc)
            return rc;
    }
    const char *env = getenv("VECTORD_API_KEY");
    if (env && *env && !key_flag) {
        int rc = add_key(c, env, 3, "VECTORD_API_KEY", err);
        if (rc)
            return rc;
    }
    return test_clock_offset(c, getenv("VECTORD_TEST_CLOCK_OFFSET_MS"), err);
}

int vd_config_validate(const struct vd_config *c, struct vd_err *err)
{
    if (c->n_keys == 0 && !c->insecure && !vd_config_is_loopback(c->bind))
        return vd_errf(err, VD_EINVAL,
                       "--bind: refusing to listen on %s without an API key (give --api-key, "
                       "api_keys in the config, or --insecure)",
                       c->bind);
    if (c->port == c->cluster_port)
        return vd_errf(err, VD_EINVAL, "--cluster-port: must differ from --port (%u)", c->port);
    return 0;
}
