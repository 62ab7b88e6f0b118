/*
 * HTTP front end against a real server on 127.0.0.1 (ephemeral port) and a small blocking
 * socket client: routing, auth, limits, deferred and streamed replies, streamed bodies with
 * backpressure, metrics and the graceful stop.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "vectord/http.h"

#include "http_int.h"

/* ---- a tiny blocking client ------------------------------------------------------------- */

struct hresp {
    int status;
    char *head; /* status line and headers */
    char *body; /* de-chunked, NUL-terminated */
    size_t len;
};

static void hresp_free(struct hresp *r)
{
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof(*r));
}

static int hconnect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct timeval tv = {.tv_sec = 30};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    /* also bounds connect(): with a full accept queue it would retry SYNs for about two minutes */
    struct timeval stv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &stv, sizeof(stv));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

static int send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static const char *find_header(const char *head, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = strstr(head, "\r\n"); p; p = strstr(p + 2, "\r\n"))
        if (strncasecmp(p + 2, name, nl) == 0 && p[2 + nl] == ':')
            return p + 3 + nl + strspn(p + 3 + nl, " ");
    return NULL;
}

/* Reads one response until the server closes (requests say Connection: close). Returns 0, or -1
 * when the connection ended without a complete status line. */
static int read_resp(int fd, struct hresp *out)
{
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len + 4096 > cap)
            buf = realloc(buf, cap *= 2);
        ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    memset(out, 0, sizeof(*out));
    char *sep = strstr(buf, "\r\n\r\n");
    if (!sep || sscanf(buf, "HTTP/1.%*d %d", &out->status) != 1) {
        free(buf);
        return -1;
    }
    out->head = strndup(buf, (size_t)(sep - buf) + 2);
    char *b = sep + 4;
    size_t blen = len - (size_t)(b - buf);
    const char *te = find_header(out->head, "Transfer-Encoding");
    out->body = malloc(blen + 1);
    if (te && strncasecmp(te, "chunked", 7) == 0) {
        size_t o = 0;
        char *p = b;
        for (;;) {
            char *end;
            unsigned long sz = strtoul(p, &end, 16);
            char *crlf = strstr(p, "\r\n");
            if (!crlf || end == p)
                break;
            p = crlf + 2;
            if (sz == 0)
                break;
            memcpy(out->body + o, p, sz);
            o += sz;
            p += sz + 2;
        }
        out->len = o;
    } else {
        memcpy(out->body, b, blen);
        out->len = blen;
    }
    out->body[out->len] = '\0';
    free(buf);
    return 0;
}

static int send_req(int fd, const char *method, const char *path, const char *hdrs, const char *body,
                    size_t blen)
{
    char head[2048];
    int n = snprintf(head, sizeof(head), "%s %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n%s", method, path,
                     hdrs ? hdrs : "");
    if (body)
        n += snprintf(head + n, sizeof(head) - (size_t)n, "Content-Length: %zu\r\n", blen);
    n += snprintf(head + n, sizeof(head) - (size_t)n, "\r\n");
    if (send_all(fd, head, (size_t)n))
        return -1;
    return body && blen ? send_all(fd, body, blen) : 0;
}

static int do_req(uint16_t port, const char *method, const char *path, const char *hdrs, const char *body,
                  struct hresp *out)
{
    int fd = hconnect(port);
    int rc = send_req(fd, method, path, hdrs, body, body ? strlen(body) : 0);
    if (rc == 0)
        rc = read_resp(fd, out);
    close(fd);
    return rc;
}

static int status_of(uint16_t port, const char *method, const char *path, const char *hdrs)
{
    struct hresp r;
    if (do_req(port, method, path, hdrs, NULL, &r))
        return -1;
    int s = r.status;
    hresp_free(&r);
    return s;
}

/* Polls cond until true or ~20 s pass. */
#define WAIT_FOR(cond)                                                  \
    do {                                                                \
        for (int i_ = 0; i_ < 20000 && !(cond); i_++) {                 \
            struct timespec ts_ = {.tv_sec = 0, .tv_nsec = 1000000};    \
            nanosleep(&ts_, NULL);                                      \
        }                                                               \
        assert_true(cond);                                              \
    } while (0)

/* ---- handlers ---------------------------------------------------------------------------- */

static void h_echo_params(struct vd_http_req *r, void *ctx)
{
    char buf[1024];
    const char *c = vd_http_param(r, "c"), *id = vd_http_param(r, "id"), *w = vd_http_query(r, "wait");
    const char *x = vd_http_query(r, "x");
    snprintf(buf, sizeof(buf), "{\"c\":\"%s\",\"id\":\"%s\",\"wait\":\"%s\",\"x\":\"%s\",\"path\":\"%s\"}",
             c ? c : "(null)", id ? id : "(null)", w ? w : "(null)", x ? x : "(null)", vd_http_path(r));
    vd_http_reply_ok(r, buf, strlen(buf));
}

static void h_info(struct vd_http_req *r, void *ctx)
{
    char buf[256];
    const char *x = vd_http_header(r, "x-test");
    snprintf(buf, sizeof(buf), "{\"role\":%d,\"id\":%llu,\"x\":\"%s\",\"m\":\"%s\"}", (int)vd_http_role(r),
             (unsigned long long)vd_http_request_id(r), x ? x : "(null)", vd_http_method(r));
    vd_http_reply_ok(r, buf, strlen(buf));
}

static void h_raw(struct vd_http_req *r, void *ctx)
{
    struct vd_buf b;
    vd_buf_init(&b);
    if (vd_http_query(r, "oom"))
        b.oom = 1;
    else if (!vd_http_query(r, "empty"))
        vd_buf_puts(&b, "a,b\n1,2\n");
    vd_http_reply_raw(r, 201, "text/csv", &b);
    assert_null(b.data);
    vd_buf_release(&b);
}

static void h_ok(struct vd_http_req *r, void *ctx)
{
    vd_http_reply_ok(r, "true", 4);
}

static void h_body_len(struct vd_http_req *r, void *ctx)
{
    size_t n;
    const char *b = vd_http_body(r, &n);
    char buf[64];
    snprintf(buf, sizeof(buf), "%zu", n);
    assert_int_equal(strlen(b), n);
    vd_http_reply_ok(r, buf, strlen(buf));
}

static struct vd_http *server(unsigned threads, size_t max_body, const struct vd_http_key *keys, size_t n_keys)
{
    struct vd_http_opts o = {.bind = "127.0.0.1", .threads = threads, .max_body = max_body, .keys = keys,
                             .n_keys = n_keys, .version = "1.2.3",
                             .commit = "0123456789abcdef0123456789abcdef01234567"};
    struct vd_http *h;
    struct vd_err e;
    assert_int_equal(vd_http_new(&o, &h, &e), 0);
    return h;
}

static void start(struct vd_http *h)
{
    struct vd_err e;
    assert_int_equal(vd_http_start(h, &e), 0);
    assert_true(vd_http_port(h) != 0);
}

/* ---- tests ------------------------------------------------------------------------------- */

static bool ready_flag;
static bool ready_hook(void *ctx) { return ready_flag; }

static void test_builtin_routes(void **state)
{
    struct vd_http *h = server(2, 0, NULL, 0);
    vd_http_set_ready_hook(h, ready_hook, NULL);
    assert_int_equal(vd_http_route(h, "GET", "/raw", VD_ROLE_NONE, h_raw, NULL), 0);
    start(h);
    uint16_t p = vd_http_port(h);
    struct hresp r;
    assert_int_equal(do_req(p, "GET", "/", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    /* Qdrant's shape: version is the Qdrant API version followed, vectord's own is apart */
    assert_string_equal(r.body, "{\"title\":\"vectord\",\"version\":\"" VD_HTTP_QDRANT_VERSION
                                "\",\"commit\":\"0123456789abcdef0123456789abcdef01234567\","
                                "\"vectord_version\":\"1.2.3\"}");
    assert_non_null(strstr(find_header(r.head, "Content-Type"), "application/json"));
    hresp_free(&r);
    assert_int_equal(do_req(p, "GET", "/healthz", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "healthz check passed");
    hresp_free(&r);
    assert_int_equal(do_req(p, "GET", "/livez", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "healthz check passed"); /* Qdrant's text for both */
    hresp_free(&r);
    ready_flag = false;
    assert_int_equal(status_of(p, "GET", "/readyz", NULL), 503);
    ready_flag = true;
    assert_int_equal(status_of(p, "GET", "/readyz", NULL), 200);
    /* HEAD answers like GET, without a body */
    assert_int_equal(do_req(p, "HEAD", "/", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.len, 0);
    hresp_free(&r);
    /* raw replies: body stolen, content type as given; an oom buffer is a 500 */
    assert_int_equal(do_req(p, "GET", "/raw", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 201);
    assert_string_equal(r.body, "a,b\n1,2\n");
    assert_non_null(strstr(find_header(r.head, "Content-Type"), "text/csv"));
    hresp_free(&r);
    assert_int_equal(do_req(p, "GET", "/raw?empty", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 201);
    assert_int_equal(r.len, 0);
    hresp_free(&r);
    assert_int_equal(status_of(p, "GET", "/raw?oom=1", NULL), 500);
    /* the port is taken: a second server fails to start with a message */
    struct vd_http_opts o = {.bind = "127.0.0.1", .port = p, .threads = 2};
    struct vd_http *h2;
    struct vd_err e;
    assert_int_equal(vd_http_new(&o, &h2, &e), 0);
    assert_int_equal(vd_http_start(h2, &e), VD_EIO);
    assert_non_null(strstr(e.msg, "cannot listen on 127.0.0.1 port"));
    vd_http_free(h2);
    o.bind = "not-an-address";
    assert_int_equal(vd_http_new(&o, &h2, &e), 0);
    assert_int_equal(vd_http_start(h2, &e), VD_EINVAL);
    vd_http_free(h2);
    vd_http_free(h);
}

static void test_routing(void **state)
{
    struct vd_http *h = server(2, 0, NULL, 0);
    assert_int_equal(vd_http_route(h, "GET", "/collections/{c}/points/{id}", VD_ROLE_RO, h_echo_params, NULL), 0);
    assert_int_equal(vd_http_route(h, "PUT", "/collections/{c}", VD_ROLE_ADMIN, h_ok, NULL), 0);
    assert_int_equal(vd_http_route(h, "GET", "no-slash", VD_ROLE_RO, h_ok, NULL), VD_EINVAL);
    assert_int_equal(vd_http_route(h, "GET", "/a//b", VD_ROLE_RO, h_ok, NULL), VD_EINVAL);
    start(h);
    assert_int_equal(vd_http_route(h, "GET", "/late", VD_ROLE_RO, h_ok, NULL), VD_EINVAL);
    uint16_t p = vd_http_port(h);
    struct hresp r;

    assert_int_equal(do_req(p, "GET", "/collections/a%20b/points/x%2Fy?wait=true&x=a+b%21", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"result\":{\"c\":\"a b\",\"id\":\"x/y\",\"wait\":\"true\",\"x\":\"a b!\","
                                   "\"path\":\"/collections/a%20b/points/x%2Fy\"}"));
    assert_non_null(strstr(r.body, "\"status\":\"ok\",\"time\":"));
    hresp_free(&r);

    assert_int_equal(do_req(p, "GET", "/nope", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 404);
    assert_non_null(strstr(r.body, "{\"status\":{\"error\":"));
    assert_non_null(strstr(find_header(r.head, "Content-Type"), "application/json"));
    hresp_free(&r);
    assert_int_equal(status_of(p, "GET", "/collections//points/1", NULL), 404); /* empty capture */
    assert_int_equal(status_of(p, "GET", "/collections/a/points/1/", NULL), 404);
    assert_int_equal(do_req(p, "POST", "/collections/a/points/1", NULL, "{}", &r), 0);
    assert_int_equal(r.status, 405);
    assert_non_null(strstr(r.body, "{\"status\":{\"error\":\"method POST not allowed"));
    hresp_free(&r);
    assert_int_equal(status_of(p, "DELETE", "/collections/a", NULL), 405);
    assert_int_equal(status_of(p, "PUT", "/collections/a", NULL), 200);
    assert_int_equal(status_of(p, "GET", "/collections/a%zz/points/1", NULL), 400);
    assert_int_equal(status_of(p, "GET", "/collections/a%00/points/1", NULL), 400);
    vd_http_free(h);
}

static void test_auth_matrix(void **state)
{
    /* ro key stored as its SHA-256 digest */
    unsigned char d[32];
    char hex[65], digest[80];
    crypto_hash_sha256(d, (const unsigned char *)"ro-secret", 9);
    sodium_bin2hex(hex, sizeof(hex), d, 32);
    snprintf(digest, sizeof(digest), "sha256:%s", hex);
    struct vd_http_key keys[] = {
        {"admin-secret", VD_ROLE_ADMIN}, {"rw-secret", VD_ROLE_RW}, {digest, VD_ROLE_RO}};
    struct vd_http *h = server(2, 0, keys, 3);
    const char *paths[] = {"/open", "/ro", "/rw", "/admin"};
    for (int i = 0; i < 4; i++)
        assert_int_equal(vd_http_route(h, "GET", paths[i], (enum vd_role)i, h_ok, NULL), 0);
    assert_int_equal(vd_http_route(h, "GET", "/info", VD_ROLE_NONE, h_info, NULL), 0);
    start(h);
    uint16_t p = vd_http_port(h);
    const char *hdrs[] = {"", "api-key: ro-secret\r\n", "Authorization: Bearer rw-secret\r\n",
                          "api-key: admin-secret\r\n", "api-key: wrong\r\n"};
    /* rows: no key, ro, rw, admin, wrong; columns: open, ro, rw, admin */
    const int want[5][4] = {{200, 401, 401, 401},
                            {200, 200, 403, 403},
                            {200, 200, 200, 403},
                            {200, 200, 200, 200},
                            {200, 401, 401, 401}};
    for (int k = 0; k < 5; k++)
        for (int i = 0; i < 4; i++) {
            int s = status_of(p, "GET", paths[i], hdrs[k]);
            if (s != want[k][i])
                fail_msg("key %d route %s: got %d want %d", k, paths[i], s, want[k][i]);
        }
    struct hresp r;
    assert_int_equal(do_req(p, "GET", "/rw", "api-key: ro-secret\r\n", NULL, &r), 0);
    assert_int_equal(r.status, 403);
    assert_non_null(strstr(r.body, "{\"status\":{\"error\":"));
    hresp_free(&r);
    /* the digest is not itself a key */
    char hd[128];
    snprintf(hd, sizeof(hd), "api-key: %s\r\n", digest);
    assert_int_equal(status_of(p, "GET", "/ro", hd), 401);
    assert_int_equal(status_of(p, "GET", "/metrics", "api-key: ro-secret\r\n"), 200);
    assert_int_equal(status_of(p, "GET", "/metrics", NULL), 401);
    assert_int_equal(status_of(p, "GET", "/healthz", NULL), 200);

    /* accessors: the role of the key, request ids, headers case-insensitively */
    assert_int_equal(do_req(p, "GET", "/info", "api-key: rw-secret\r\nX-Test: hello\r\n", NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "{\"result\":{\"role\":2,\"id\":"));
    assert_non_null(strstr(r.body, ",\"x\":\"hello\",\"m\":\"GET\"}"));
    unsigned long long id1 = strtoull(strstr(r.body, "\"id\":") + 5, NULL, 10);
    hresp_free(&r);
    assert_int_equal(do_req(p, "GET", "/info", NULL, NULL, &r), 0);
    assert_non_null(strstr(r.body, "{\"result\":{\"role\":0,\"id\":"));
    unsigned long long id2 = strtoull(strstr(r.body, "\"id\":") + 5, NULL, 10);
    assert_true(id2 > id1);
    hresp_free(&r);
    vd_http_free(h);

    /* no keys configured: everyone is admin */
    h = server(2, 0, NULL, 0);
    assert_int_equal(vd_http_route(h, "GET", "/admin", VD_ROLE_ADMIN, h_ok, NULL), 0);
    start(h);
    assert_int_equal(status_of(vd_http_port(h), "GET", "/admin", NULL), 200);
    assert_int_equal(status_of(vd_http_port(h), "GET", "/admin", "api-key: whatever\r\n"), 200);
    vd_http_free(h);

    /* malformed digest refused at creation */
    struct vd_http_key bad[] = {{"sha256:abcd", VD_ROLE_RO}};
    struct vd_http_opts o = {.keys = bad, .n_keys = 1};
    struct vd_err e;
    assert_int_equal(vd_http_new(&o, &h, &e), VD_EINVAL);
}

static void test_body_limit(void **state)
{
    struct vd_http *h = server(2, 100, NULL, 0);
    assert_int_equal(vd_http_route(h, "POST", "/echo", VD_ROLE_NONE, h_body_len, NULL), 0);
    start(h);
    uint16_t p = vd_http_port(h);
    char body[202];
    memset(body, 'a', sizeof(body) - 1);
    body[100] = '\0';
    struct hresp r;
    assert_int_equal(do_req(p, "POST", "/echo", NULL, body, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"result\":100,"));
    hresp_free(&r);
    body[100] = 'a';
    body[101] = '\0';
    assert_int_equal(do_req(p, "POST", "/echo", NULL, body, &r), 0);
    assert_int_equal(r.status, 413);
    assert_non_null(strstr(r.body, "{\"status\":{\"error\":\"request body is larger than the limit of 100 bytes\""));
    hresp_free(&r);
    /* chunked: no length up front, refused once the limit is crossed */
    int fd = hconnect(p);
    const char *req = "POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "32\r\n" "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"
                      "32\r\n" "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"
                      "1\r\n" "a\r\n" "0\r\n\r\n";
    assert_int_equal(send_all(fd, req, strlen(req)), 0);
    assert_int_equal(read_resp(fd, &r), 0);
    close(fd);
    assert_int_equal(r.status, 413);
    hresp_free(&r);
    /* chunked, many small pieces well past the limit: still a 413, not a cut connection */
    fd = hconnect(p);
    req = "POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_int_equal(send_all(fd, req, strlen(req)), 0);
    for (int i = 0; i < 100; i++)
        assert_int_equal(send_all(fd, "a\r\n0123456789\r\n", 15), 0);
    assert_int_equal(send_all(fd, "0\r\n\r\n", 5), 0);
    assert_int_equal(read_resp(fd, &r), 0);
    close(fd);
    assert_int_equal(r.status, 413);
    hresp_free(&r);
    /* exactly at the limit, chunked */
    fd = hconnect(p);
    req = "POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
          "32\r\n" "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"
          "32\r\n" "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n" "0\r\n\r\n";
    assert_int_equal(send_all(fd, req, strlen(req)), 0);
    assert_int_equal(read_resp(fd, &r), 0);
    close(fd);
    assert_int_equal(r.status, 200);
    hresp_free(&r);
    vd_http_free(h);

    /* a body larger than the up-front allocation grows as it arrives (default 32 MiB limit) */
    h = server(2, 0, NULL, 0);
    assert_int_equal(vd_http_route(h, "POST", "/echo", VD_ROLE_NONE, h_body_len, NULL), 0);
    start(h);
    char *big = malloc((3 << 20) + 1);
    memset(big, 'b', 3 << 20);
    big[3 << 20] = '\0';
    assert_int_equal(do_req(vd_http_port(h), "POST", "/echo", NULL, big, &r), 0);
    free(big);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"result\":3145728,"));
    hresp_free(&r);
    vd_http_free(h);
}

/* Deferred replies: the handler parks the request; another thread answers later. */
static struct vd_http_req *_Atomic parked;

static void h_park(struct vd_http_req *r, void *ctx)
{
    vd_http_set_user(r, (void *)0x1234);
    atomic_store(&parked, r);
}

/* Sends GET path on a new connection and waits until its handler parked the request; the only
 * pool thread is free meanwhile and serves /fast. Returns the connection. */
static int park_one(uint16_t p, const char *path)
{
    atomic_store(&parked, NULL);
    int fd = hconnect(p);
    assert_int_equal(send_req(fd, "GET", path, NULL, NULL, 0), 0);
    WAIT_FOR(atomic_load(&parked) != NULL);
    for (int i = 0; i < 3; i++)
        assert_int_equal(status_of(p, "GET", "/fast", NULL), 200);
    return fd;
}

static void test_deferred_reply_pool_of_one(void **state)
{
    struct vd_http *h = server(1, 0, NULL, 0);
    assert_int_equal(vd_http_route(h, "GET", "/slow", VD_ROLE_NONE, h_park, NULL), 0);
    assert_int_equal(vd_http_route(h, "GET", "/fast", VD_ROLE_NONE, h_ok, NULL), 0);
    start(h);
    uint16_t p = vd_http_port(h);
    int slow = park_one(p, "/slow");
    struct vd_http_req *r = atomic_load(&parked);
    assert_ptr_equal(vd_http_user(r), (void *)0x1234);
    vd_http_reply_ok(r, "\"late\"", 6); /* from this thread, long after the handler returned */
    struct hresp resp;
    assert_int_equal(read_resp(slow, &resp), 0);
    close(slow);
    assert_int_equal(resp.status, 200);
    assert_non_null(strstr(resp.body, "{\"result\":\"late\",\"status\":\"ok\""));
    hresp_free(&resp);
    vd_http_free(h);
}

/* Redispatch: the handler returns without a reply the first time; a completion on another
 * thread (here the test's) asks for it again, and it runs again on a pool thread. */
static atomic_int redo_runs;

static void h_again(struct vd_http_req *r, void *ctx)
{
    atomic_fetch_add(&redo_runs, 1);
    int note = 0;
    unsigned n = vd_http_redispatched(r, &note);
    if (n == 0) {
        if (vd_http_query(r, "now"))
            vd_http_redispatch(r, 5); /* a completion that fires before the handler returns */
        else
            atomic_store(&parked, r);
        return;
    }
    char buf[64];
    snprintf(buf, sizeof(buf), "{\"again\":%u,\"note\":%d}", n, note);
    vd_http_reply_ok(r, buf, strlen(buf));
}

static void test_redispatch(void **state)
{
    struct vd_http *h = server(1, 0, NULL, 0);
    assert_int_equal(vd_http_route(h, "GET", "/again", VD_ROLE_NONE, h_again, NULL), 0);
    assert_int_equal(vd_http_route(h, "GET", "/fast", VD_ROLE_NONE, h_ok, NULL), 0);
    start(h);
    uint16_t p = vd_http_port(h);

    /* the wait holds no pool thread: the only one serves others meanwhile */
    atomic_store(&redo_runs, 0);
    int fd = park_one(p, "/again");
    vd_http_redispatch(atomic_exchange(&parked, NULL), -7);
    struct hresp resp;
    assert_int_equal(read_resp(fd, &resp), 0);
    close(fd);
    assert_int_equal(resp.status, 200);
    assert_non_null(strstr(resp.body, "{\"again\":1,\"note\":-7}"));
    assert_int_equal(atomic_load(&redo_runs), 2);
    hresp_free(&resp);

    /* asked for before the first run returned: it runs again all the same, once */
    atomic_store(&redo_runs, 0);
    assert_int_equal(do_req(p, "GET", "/again?now=1", NULL, NULL, &resp), 0);
    assert_int_equal(resp.status, 200);
    assert_non_null(strstr(resp.body, "{\"again\":1,\"note\":5}"));
    assert_int_equal(atomic_load(&redo_runs), 2);
    hresp_free(&resp);

    /* the client leaves (a reset) while the request waits: the redispatch finds no connection to
     * run on, and the request is freed rather than held for ever */
    WAIT_FOR(vd__http_live_count(h) == 0);
    fd = park_one(p, "/again");
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
    atomic_store(&redo_runs, 0);
    vd_http_redispatch(atomic_exchange(&parked, NULL), 1);
    WAIT_FOR(vd__http_live_count(h) == 0);
    assert_true(atomic_load(&redo_runs) <= 1); /* it may run again if the reset came late */
    assert_int_equal(status_of(p, "GET", "/fast", NULL), 200);
    vd_http_free(h);
}

/* Streamed body: every chunk pauses; a "committer" (the test thread) resumes. */
struct sbody {
    pthread_mutex_t mu;
    uint64_t bytes, sum, chunks, pauses;
    bool paused, ended, aborted, no_pause;
    struct vd_http_req *r;
};
static struct sbody sb = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void s_begin(struct vd_http_req *r, void *ctx)
{
    const char *q = vd_http_query(r, "fail");
    if (q && !strcmp(q, "begin")) {
        vd_http_reply_error(r, 404, "collection 'x' not found");
        return;
    }
    pthread_mutex_lock(&sb.mu);
    sb.r = r;
    pthread_mutex_unlock(&sb.mu);
}

static int s_chunk(struct vd_http_req *r, const char *data, size_t len, void *ctx)
{
    const char *q = vd_http_query(r, "fail");
    if (q && !strcmp(q, "chunk")) {
        pthread_mutex_lock(&sb.mu);
        sb.chunks++;
        pthread_mutex_unlock(&sb.mu);
        return -1;
    }
    pthread_mutex_lock(&sb.mu);
    for (size_t i = 0; i < len; i++)
        sb.sum = sb.sum * 31 + (unsigned char)data[i];
    sb.bytes += len;
    sb.chunks++;
    int rc = 0;
    if (sb.chunks % 2 == 1 && !sb.no_pause) { /* pause every other chunk */
        sb.paused = true;
        sb.pauses++;
        rc = VD_HTTP_PAUSE;
    }
    pthread_mutex_unlock(&sb.mu);
    return rc;
}

static void s_end(struct vd_http_req *r, void *ctx)
{
    char buf[128];
    const char *q = vd_http_query(r, "fail");
    if (q && !strcmp(q, "chunk")) {
        pthread_mutex_lock(&sb.mu);
        sb.ended = true;
        pthread_mutex_unlock(&sb.mu);
        vd_http_reply_error(r, 400, "line %d: \"bad\"", 1);
        return;
    }
    pthread_mutex_lock(&sb.mu);
    sb.ended = true;
    snprintf(buf, sizeof(buf), "{\"bytes\":%llu,\"sum\":%llu}", (unsigned long long)sb.bytes,
             (unsigned long long)sb.sum);
    pthread_mutex_unlock(&sb.mu);
    vd_http_reply_ok(r, buf, strlen(buf));
}

static void s_abort(struct vd_http_req *r, void *ctx)
{
    pthread_mutex_lock(&sb.mu);
    sb.aborted = true;
    pthread_mutex_unlock(&sb.mu);
}

static const struct vd_http_stream_ops sops = {s_chunk, s_end, s_abort};

struct sender {
    uint16_t port;
    char *body;
    size_t len;
    struct hresp resp;
    int rc;
};

static void *send_thread(void *arg)
{
    struct sender *s = arg;
    int fd = hconnect(s->port);
    s->rc = send_req(fd, "POST", "/import", NULL, s->body, s->len);
    if (s->rc == 0)
        s->rc = read_resp(fd, &s->resp);
    close(fd);
    return NULL;
}

/* Zeroes the shared stream state (the mutex stays). */
static void sb_reset(void)
{
    pthread_mutex_lock(&sb.mu);
    sb.bytes = sb.sum = sb.chunks = sb.pauses = 0;
    sb.paused = sb.ended = sb.aborted = sb.no_pause = false;
    sb.r = NULL;
    pthread_mutex_unlock(&sb.mu);
}

static uint64_t sb_u64(uint64_t *v)
{
    pthread_mutex_lock(&sb.mu);
    uint64_t x = *v;
    pthread_mutex_unlock(&sb.mu);
    return x;
}

static struct vd_http_req *sb_req(void)
{
    pthread_mutex_lock(&sb.mu);
    struct vd_http_req *r = sb.r;
    pthread_mutex_unlock(&sb.mu);
    return r;
}

static bool sb_flag(bool *f)
{
    pthread_mutex_lock(&sb.mu);
    bool v = *f;
    pthread_mutex_unlock(&sb.mu);
    return v;
}

static void test_stream_body_pause_resume(void **state)
{
    sb_reset();
    struct vd_http *h = server(2, 1000, NULL, 0); /* the limit does not apply to stream routes */
    assert_int_equal(vd_http_route_stream(h, "POST", "/import", VD_ROLE_RW, s_begin, &sops, NULL), 0);
    start(h);
    struct sender s = {.port = vd_http_port(h), .len = 3 << 20};
    s.body = malloc(s.len);
    uint64_t want = 0;
    for (size_t i = 0; i < s.len; i++) {
        s.body[i] = (char)('a' + (i * 7) % 26);
        want = want * 31 + (unsigned char)s.body[i];
    }
    pthread_t t;
    pthread_create(&t, NULL, send_thread, &s);
    /* act as the committer: resume each pause until the body ends */
    while (!sb_flag(&sb.ended)) {
        if (sb_flag(&sb.paused)) {
            pthread_mutex_lock(&sb.mu);
            sb.paused = false;
            struct vd_http_req *r = sb.r;
            pthread_mutex_unlock(&sb.mu);
            vd_http_resume_body(r);
        } else {
            struct timespec ts = {.tv_nsec = 200000};
            nanosleep(&ts, NULL);
        }
    }
    pthread_join(t, NULL);
    assert_int_equal(s.rc, 0);
    assert_int_equal(s.resp.status, 200);
    char want_s[128];
    snprintf(want_s, sizeof(want_s), "{\"result\":{\"bytes\":%zu,\"sum\":%llu}", s.len, (unsigned long long)want);
    assert_non_null(strstr(s.resp.body, want_s));
    assert_true(sb_u64(&sb.pauses) >= 2);
    assert_false(sb_flag(&sb.aborted));
    hresp_free(&s.resp);

    /* begin replies at once: no chunk, no end */
    sb_reset();
    struct hresp r;
    assert_int_equal(do_req(s.port, "POST", "/import?fail=begin", NULL, "{\"x\":1}\n", &r), 0);
    assert_int_equal(r.status, 404);
    assert_int_equal(sb_u64(&sb.chunks), 0);
    assert_false(sb_flag(&sb.ended));
    hresp_free(&r);

    /* chunk fails: the rest is discarded, then end gives the reply */
    sb_reset();
    char *big = malloc(200001);
    memset(big, 'x', 200000);
    big[200000] = '\0';
    assert_int_equal(do_req(s.port, "POST", "/import?fail=chunk", "api-key: x\r\n", big, &r), 0);
    free(big);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, "{\"status\":{\"error\":\"line 1: \\\"bad\\\"\"}"));
    assert_int_equal(sb_u64(&sb.chunks), 1);
    assert_true(sb_flag(&sb.ended));
    hresp_free(&r);

    /* client goes away mid-body: abort, no end */
    sb_reset();
    int fd = hconnect(s.port);
    const char *head = "POST /import HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nabc";
    assert_int_equal(send_all(fd, head, strlen(head)), 0);
    WAIT_FOR(sb_flag(&sb.paused) || sb_u64(&sb.chunks) > 0);
    close(fd);
    /* the paused request is resumed by its committer, then the server sees the closed socket */
    if (sb_flag(&sb.paused))
        vd_http_resume_body(sb_req());
    WAIT_FOR(sb_flag(&sb.aborted));
    assert_false(sb_flag(&sb.ended));
    free(s.body);
    vd_http_free(h);
}

/*
 * The import's pattern on a chunked body whose pieces reach the server together: every piece
 * pauses, a "writer" thread resumes each pause and, after end, gives the reply. No piece may be
 * presented while paused, and the server must then stop cleanly (libmicrohttpd aborts at stop if
 * a connection was suspended twice).
 */
struct cbody {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct vd_http_req *r;
    bool pause_wanted; /* a pause waits for the writer's resume */
    bool ended, aborted;
    uint64_t bytes, sum, pieces, pauses, early; /* early: pieces presented while paused */
};
static struct cbody cb = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void c_begin(struct vd_http_req *r, void *ctx)
{
    pthread_mutex_lock(&cb.mu);
    cb.r = r;
    pthread_mutex_unlock(&cb.mu);
}

static int c_chunk(struct vd_http_req *r, const char *data, size_t len, void *ctx)
{
    pthread_mutex_lock(&cb.mu);
    if (cb.pause_wanted)
        cb.early++;
    for (size_t i = 0; i < len; i++)
        cb.sum = cb.sum * 31 + (unsigned char)data[i];
    cb.bytes += len;
    cb.pieces++;
    cb.pauses++;
    cb.pause_wanted = true;
    pthread_cond_broadcast(&cb.cv);
    pthread_mutex_unlock(&cb.mu);
    return VD_HTTP_PAUSE;
}

static void c_end(struct vd_http_req *r, void *ctx)
{
    pthread_mutex_lock(&cb.mu);
    cb.ended = true;
    pthread_cond_broadcast(&cb.cv);
    pthread_mutex_unlock(&cb.mu);
}

static void c_abort(struct vd_http_req *r, void *ctx)
{
    pthread_mutex_lock(&cb.mu);
    cb.aborted = true;
    pthread_cond_broadcast(&cb.cv);
    pthread_mutex_unlock(&cb.mu);
}

static const struct vd_http_stream_ops cops = {c_chunk, c_end, c_abort};

/* The storage writer: resumes every pause, replies once the body has ended. */
static void *c_writer(void *arg)
{
    pthread_mutex_lock(&cb.mu);
    for (;;) {
        while (!cb.pause_wanted && !cb.ended && !cb.aborted)
            pthread_cond_wait(&cb.cv, &cb.mu);
        struct vd_http_req *r = cb.r;
        if (cb.aborted)
            break;
        if (cb.ended) {
            char buf[128];
            snprintf(buf, sizeof(buf), "{\"bytes\":%llu,\"sum\":%llu}", (unsigned long long)cb.bytes,
                     (unsigned long long)cb.sum);
            pthread_mutex_unlock(&cb.mu);
            vd_http_reply_ok(r, buf, strlen(buf));
            return NULL;
        }
        cb.pause_wanted = false;
        pthread_mutex_unlock(&cb.mu);
        vd_http_resume_body(r);
        pthread_mutex_lock(&cb.mu);
    }
    pthread_mutex_unlock(&cb.mu);
    return NULL;
}

static void test_stream_body_chunked_pauses_then_stop(void **state)
{
    const char *env = getenv("VD_TEST_SCALE");
    int rounds = env && !strcmp(env, "small") ? 2 : 5;
    struct vd_http *h = server(2, 0, NULL, 0);
    assert_int_equal(vd_http_route_stream(h, "POST", "/import", VD_ROLE_NONE, c_begin, &cops, NULL), 0);
    start(h);
    uint16_t port = vd_http_port(h);
    /* 150 pieces of 997 bytes sent in one go: libmicrohttpd finds many chunks in one read */
    enum { PIECES = 150, PIECE = 997 };
    size_t cap = 256 + (size_t)PIECES * (PIECE + 16);
    char *req = malloc(cap);
    uint64_t want = 0;
    for (int round = 0; round < rounds; round++) {
        pthread_mutex_lock(&cb.mu);
        cb.r = NULL;
        cb.pause_wanted = cb.ended = cb.aborted = false;
        cb.bytes = cb.sum = cb.pieces = cb.pauses = cb.early = 0;
        pthread_mutex_unlock(&cb.mu);
        size_t n = (size_t)snprintf(req, cap, "POST /import HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                                              "Transfer-Encoding: chunked\r\n\r\n");
        want = 0;
        for (int i = 0; i < PIECES; i++) {
            n += (size_t)sprintf(req + n, "%x\r\n", PIECE);
            for (int k = 0; k < PIECE; k++) {
                char c = (char)('a' + (i * 13 + k * 7 + round) % 26);
                req[n++] = c;
                want = want * 31 + (unsigned char)c;
            }
            memcpy(req + n, "\r\n", 2);
            n += 2;
        }
        memcpy(req + n, "0\r\n\r\n", 5);
        n += 5;
        pthread_t w;
        pthread_create(&w, NULL, c_writer, NULL);
        int fd = hconnect(port);
        assert_int_equal(send_all(fd, req, n), 0);
        struct hresp r;
        int rc = read_resp(fd, &r);
        close(fd);
        pthread_mutex_lock(&cb.mu);
        uint64_t early = cb.early, pauses = cb.pauses;
        bool aborted = cb.aborted;
        pthread_mutex_unlock(&cb.mu);
        if (early)
            fail_msg("round %d: %llu piece(s) presented while the body was paused", round,
                     (unsigned long long)early);
        assert_int_equal(rc, 0);
        pthread_join(w, NULL);
        assert_int_equal(r.status, 200);
        char want_s[128];
        snprintf(want_s, sizeof(want_s), "{\"result\":{\"bytes\":%d,\"sum\":%llu}", PIECES * PIECE,
                 (unsigned long long)want);
        assert_non_null(strstr(r.body, want_s));
        hresp_free(&r);
        assert_true(pauses >= 2);
        assert_false(aborted);
    }
    free(req);
    vd_http_stop(h, 2000); /* aborted the process when a connection had been suspended twice */
    vd_http_free(h);
}

/* Streamed reply */
struct gen {
    int next, n;
};
static atomic_int gen_freed;

static long gen_fill(void *ctx, char *buf, size_t max)
{
    struct gen *g = ctx;
    size_t o = 0;
    while (g->next < g->n && o + 32 < max)
        o += (size_t)sprintf(buf + o, "{\"id\":%d}\n", g->next++);
    return (long)o;
}

static void gen_free(void *ctx)
{
    free(ctx);
    atomic_fetch_add(&gen_freed, 1);
}

static void h_export(struct vd_http_req *r, void *ctx)
{
    struct gen *g = calloc(1, sizeof(*g));
    g->n = 20000;
    vd_http_reply_stream(r, 200, "application/x-ndjson", gen_fill, gen_free, g);
}

static void test_stream_reply(void **state)
{
    struct vd_http *h = server(2, 0, NULL, 0);
    assert_int_equal(vd_http_route(h, "GET", "/export", VD_ROLE_RO, h_export, NULL), 0);
    start(h);
    atomic_store(&gen_freed, 0);
    struct hresp r;
    assert_int_equal(do_req(vd_http_port(h), "GET", "/export", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(find_header(r.head, "Content-Type"), "application/x-ndjson"));
    assert_non_null(strstr(find_header(r.head, "Transfer-Encoding"), "chunked"));
    char *p = r.body;
    for (int i = 0; i < 20000; i++) {
        char line[32];
        int n = sprintf(line, "{\"id\":%d}\n", i);
        if (strncmp(p, line, (size_t)n) != 0)
            fail_msg("line %d differs", i);
        p += n;
    }
    assert_int_equal(*p, '\0');
    hresp_free(&r);
    WAIT_FOR(atomic_load(&gen_freed) == 1);
    vd_http_free(h);
    assert_int_equal(atomic_load(&gen_freed), 1);
}

/* Graceful stop */
struct late_reply {
    struct vd_http_req *r;
    unsigned delay_ms;
};

static void *late_reply_thread(void *arg)
{
    struct late_reply *l = arg;
    struct timespec ts = {.tv_sec = l->delay_ms / 1000, .tv_nsec = (long)(l->delay_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL); /* the point is to answer while the server drains */
    vd_http_reply_ok(l->r, "\"done\"", 6);
    return NULL;
}

static void test_graceful_stop(void **state)
{
    /* a pending request answered within the deadline completes normally */
    struct vd_http *h = server(2, 0, NULL, 0);
    assert_int_equal(vd_http_route(h, "GET", "/slow", VD_ROLE_NONE, h_park, NULL), 0);
    start(h);
    atomic_store(&parked, NULL);
    int fd = hconnect(vd_http_port(h));
    assert_int_equal(send_req(fd, "GET", "/slow", NULL, NULL, 0), 0);
    WAIT_FOR(atomic_load(&parked) != NULL);
    struct late_reply l = {atomic_load(&parked), 100};
    pthread_t t;
    pthread_create(&t, NULL, late_reply_thread, &l);
    vd_http_stop(h, 10000);
    pthread_join(t, NULL);
    struct hresp r;
    assert_int_equal(read_resp(fd, &r), 0);
    close(fd);
    assert_int_equal(r.status, 200);
    hresp_free(&r);
    vd_http_free(h);

    /* one still pending at the deadline gets 503; its late reply is dropped without harm */
    h = server(2, 0, NULL, 0);
    assert_int_equal(vd_http_route(h, "GET", "/slow", VD_ROLE_NONE, h_park, NULL), 0);
    start(h);
    atomic_store(&parked, NULL);
    fd = hconnect(vd_http_port(h));
    assert_int_equal(send_req(fd, "GET", "/slow", NULL, NULL, 0), 0);
    WAIT_FOR(atomic_load(&parked) != NULL);
    vd_http_stop(h, 50);
    assert_int_equal(read_resp(fd, &r), 0);
    close(fd);
    assert_int_equal(r.status, 503);
    hresp_free(&r);
    vd_http_reply_ok(atomic_load(&parked), "1", 1);
    vd_http_stop(h, 0); /* idempotent */
    vd_http_free(h);

    /* a paused stream body at the deadline: 503, then abort when its committer resumes */
    sb_reset();
    h = server(2, 0, NULL, 0);
    assert_int_equal(vd_http_route_stream(h, "POST", "/import", VD_ROLE_RW, s_begin, &sops, NULL), 0);
    start(h);
    struct sender s = {.port = vd_http_port(h), .len = 100000};
    s.body = calloc(1, s.len);
    pthread_create(&t, NULL, send_thread, &s);
    WAIT_FOR(sb_flag(&sb.paused));
    vd_http_stop(h, 50);
    pthread_join(t, NULL);
    assert_int_equal(s.rc, 0);
    assert_int_equal(s.resp.status, 503);
    hresp_free(&s.resp);
    free(s.body);
    assert_false(sb_flag(&sb.aborted));
    vd_http_resume_body(sb_req());
    assert_true(sb_flag(&sb.aborted));
    vd_http_free(h);
}

static void extra_metrics(struct vd_buf *out, void *ctx)
{
    vd_buf_puts(out, "vectord_points{collection=\"c\"} 42\n");
}

static bool metrics_has_h(uint16_t port, const char *hdrs, const char *needle)
{
    struct hresp r;
    if (do_req(port, "GET", "/metrics", hdrs, NULL, &r))
        return false;
    bool ok = r.status == 200 && strstr(r.body, needle);
    hresp_free(&r);
    return ok;
}

static bool metrics_has(uint16_t port, const char *needle)
{
    return metrics_has_h(port, NULL, needle);
}

/* The rendered histogram of a route: cumulative buckets in increasing bounds, the +Inf one
 * equal to _count, which counts exactly the requests made. */
static void test_histogram_cumulative(void **state)
{
    struct vd_http *h = server(2, 0, NULL, 0);
    assert_int_equal(vd_http_route(h, "GET", "/h/{x}", VD_ROLE_NONE, h_ok, NULL), 0);
    start(h);
    uint16_t p = vd_http_port(h);
    const int made = 9;
    for (int i = 0; i < made; i++)
        assert_int_equal(status_of(p, "GET", "/h/1", NULL), 200);
    WAIT_FOR(metrics_has(p, "vectord_http_request_duration_seconds_count{route=\"/h/{x}\","
                            "method=\"GET\"} 9\n"));
    size_t len;
    char *text = vd__http_metrics_render(h, &len);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    const char *pre = "vectord_http_request_duration_seconds_bucket{route=\"/h/{x}\",method=\"GET\",le=\"";
    double last_le = -1, sum = -1;
    unsigned long long last = 0, inf = 0, count = 0;
    int buckets = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (!strncmp(line, pre, strlen(pre))) {
            char *q = line + strlen(pre);
            unsigned long long c = strtoull(strrchr(line, ' ') + 1, NULL, 10);
            assert_true(c >= last);
            last = c;
            buckets++;
            if (!strncmp(q, "+Inf\"", 5)) {
                inf = c;
            } else {
                double le = strtod(q, NULL);
                assert_true(le > last_le);
                last_le = le;
            }
        } else if (!strncmp(line, "vectord_http_request_duration_seconds_sum{route=\"/h/{x}\"", 53)) {
            sum = strtod(strrchr(line, ' ') + 1, NULL);
        } else if (!strncmp(line, "vectord_http_request_duration_seconds_count{route=\"/h/{x}\"", 55)) {
            count = strtoull(strrchr(line, ' ') + 1, NULL, 10);
        }
    }
    free(text);
    assert_int_equal(buckets, VD_HTTP_N_BUCKETS + 1);
    assert_int_equal(inf, made);
    assert_int_equal(count, made);
    assert_true(sum > 0);
    vd_http_free(h);
}

static void h_rid(struct vd_http_req *r, void *ctx)
{
    char buf[256];
    snprintf(buf, sizeof buf, "{\"rid\":\"%s\",\"current\":\"%s\"}", vd_http_request_rid(r),
             vd_reqid_current());
    vd_http_reply_ok(r, buf, strlen(buf));
}

/* Sends a request with header line hdr (or none); returns the X-Request-Id of the reply into out
 * and the body's "current" (the thread's request id while the handler ran) into cur. */
static int rid_of(uint16_t p, const char *path, const char *hdr, char *out, char *cur)
{
    struct hresp r;
    assert_int_equal(do_req(p, "GET", path, hdr, NULL, &r), 0);
    const char *x = find_header(r.head, "X-Request-Id");
    assert_non_null(x);
    size_t n = strcspn(x, "\r\n");
    assert_true(n <= VD_REQID_MAX);
    memcpy(out, x, n);
    out[n] = 0;
    cur[0] = 0;
    const char *c = strstr(r.body, "\"current\":\"");
    if (c) {
        c += 11;
        size_t m = strcspn(c, "\"");
        memcpy(cur, c, m);
        cur[m] = 0;
    }
    int st = r.status;
    hresp_free(&r);
    return st;
}

/* X-Request-Id: the client's when it is 1..64 visible ASCII characters, echoed in the reply and
 * current on the handler's thread; otherwise (absent, too long, a space or control byte) one of
 * 16 hex digits made by the server, never the client's bytes. Errors carry it too. */
static void test_request_id(void **state)
{
    struct vd_http_key keys[] = {{"k", VD_ROLE_ADMIN}};
    struct vd_http *h = server(2, 0, keys, 1);
    assert_int_equal(vd_http_route(h, "GET", "/rid", VD_ROLE_NONE, h_rid, NULL), 0);
    assert_int_equal(vd_http_route(h, "GET", "/locked", VD_ROLE_RO, h_rid, NULL), 0);
    start(h);
    uint16_t p = vd_http_port(h);
    char id[VD_REQID_MAX + 1], cur[VD_REQID_MAX + 1], id2[VD_REQID_MAX + 1];
    assert_int_equal(rid_of(p, "/rid", "X-Request-Id: abc-123\r\n", id, cur), 200);
    assert_string_equal(id, "abc-123");
    assert_string_equal(cur, "abc-123");
    char hdr[256], long_id[VD_REQID_MAX + 2];
    memset(long_id, 'z', VD_REQID_MAX);
    long_id[VD_REQID_MAX] = 0;
    snprintf(hdr, sizeof hdr, "x-request-id: %s\r\n", long_id);
    assert_int_equal(rid_of(p, "/rid", hdr, id, cur), 200);
    assert_string_equal(id, long_id); /* 64 is still taken */
    const char *bad[] = {NULL, "X-Request-Id: zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\r\n",
                         "X-Request-Id: a\x01" "b\r\n", "X-Request-Id: a b\r\n",
                         "X-Request-Id: caf\xc3\xa9\r\n", "X-Request-Id: a\x7f\r\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(rid_of(p, "/rid", bad[i], id, cur), 200);
        assert_int_equal(strlen(id), VD_REQID_GEN_LEN);
        assert_int_equal(strspn(id, "0123456789abcdef"), VD_REQID_GEN_LEN);
        assert_string_equal(cur, id);
    }
    assert_int_equal(rid_of(p, "/rid", NULL, id2, cur), 200);
    assert_string_not_equal(id, id2);
    /* answered by the server itself, before any handler */
    assert_int_equal(rid_of(p, "/nothing", "X-Request-Id: e-404\r\n", id, cur), 404);
    assert_string_equal(id, "e-404");
    assert_int_equal(rid_of(p, "/locked", "X-Request-Id: e-401\r\n", id, cur), 401);
    assert_string_equal(id, "e-401");
    vd_http_free(h);
}

static void test_metrics(void **state)
{
    struct vd_http *h = server(2, 0, NULL, 0);
    assert_int_equal(vd_http_route(h, "GET", "/collections/{c}/points/{id}", VD_ROLE_RO, h_echo_params, NULL), 0);
    vd_http_set_metrics_hook(h, extra_metrics, NULL);
    start(h);
    uint16_t p = vd_http_port(h);
    assert_int_equal(status_of(p, "GET", "/collections/a/points/1", NULL), 200);
    assert_int_equal(status_of(p, "GET", "/collections/b/points/2", NULL), 200);
    assert_int_equal(status_of(p, "GET", "/collections/b/points/2/x", NULL), 404);
    assert_int_equal(status_of(p, "POST", "/collections/b/points/2", NULL), 405);
    /* completion is counted just after the reply leaves: poll */
    WAIT_FOR(metrics_has(p, "vectord_http_requests_total{route=\"/collections/{c}/points/{id}\",method=\"GET\","
                            "status=\"200\"} 2\n"));
    assert_true(metrics_has(p, "vectord_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 1\n"));
    assert_true(metrics_has(p, "vectord_http_requests_total{route=\"unmatched\",method=\"POST\",status=\"405\"} 1\n"));
    assert_true(metrics_has(p, "vectord_http_request_duration_seconds_bucket{route=\"/collections/{c}/points/{id}\","
                               "method=\"GET\",le=\"+Inf\"} 2\n"));
    assert_true(metrics_has(p, "vectord_http_request_duration_seconds_count{route=\"/collections/{c}/points/{id}\","
                               "method=\"GET\"} 2\n"));
    assert_true(metrics_has(p, "vectord_points{collection=\"c\"} 42\n"));
    assert_true(metrics_has(p, "vectord_http_requests_in_flight 1\n")); /* the scrape itself */
    assert_false(metrics_has(p, "/collections/a/points")); /* raw paths never become labels */
    vd_http_free(h);
}

static void test_url_decode(void **state)
{
    char out[64];
    assert_int_equal(vd_http_url_decode("a%20b%2Fc", 9, out, false), 5);
    assert_string_equal(out, "a b/c");
    assert_int_equal(vd_http_url_decode("a+b%2b", 6, out, false), 4);
    assert_string_equal(out, "a+b+");
    assert_int_equal(vd_http_url_decode("a+b%2b", 6, out, true), 4);
    assert_string_equal(out, "a b+");
    assert_int_equal(vd_http_url_decode("%e2%82%AC", 9, out, false), 3); /* UTF-8 bytes pass */
    assert_string_equal(out, "\xe2\x82\xac");
    assert_int_equal(vd_http_url_decode("", 0, out, false), 0);
    assert_int_equal(vd_http_url_decode("%", 1, out, false), VD_EINVAL);
    assert_int_equal(vd_http_url_decode("ab%2", 4, out, false), VD_EINVAL);
    assert_int_equal(vd_http_url_decode("%g0", 3, out, false), VD_EINVAL);
    assert_int_equal(vd_http_url_decode("a%00b", 5, out, false), VD_EINVAL);
}

static void test_malformed_requests(void **state)
{
    sb_reset();
    pthread_mutex_lock(&sb.mu);
    sb.no_pause = true;
    pthread_mutex_unlock(&sb.mu);
    struct vd_http *h = server(2, 0, NULL, 0);
    assert_int_equal(vd_http_route(h, "POST", "/echo", VD_ROLE_NONE, h_body_len, NULL), 0);
    assert_int_equal(vd_http_route_stream(h, "POST", "/import", VD_ROLE_NONE, s_begin, &sops, NULL), 0);
    start(h);
    uint16_t p = vd_http_port(h);
    const char *bad[] = {
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcdefghij\r\n0\r\n\r\n",
        "POST /import HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nffffffffffffffffffff\r\n",
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: -5\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        "GARBAGE\r\n\r\n",
        "GET /%%%% HTTP/1.1\r\nHost: t\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int fd = hconnect(p);
        send_all(fd, bad[i], strlen(bad[i]));
        shutdown(fd, SHUT_WR);
        struct hresp r;
        if (read_resp(fd, &r) == 0) {
            if (r.status < 400)
                fail_msg("malformed request %zu answered %d", i, r.status);
            hresp_free(&r);
        }
        close(fd);
        assert_int_equal(status_of(p, "GET", "/healthz", NULL), 200);
    }
    vd_http_free(h);
}

/* Random damage to well-formed requests: whatever the server answers, it must keep serving. */
static void test_random_garbage(void **state)
{
    const char *env = getenv("VD_TEST_SCALE");
    int iters = env && !strcmp(env, "small") ? 40 : 300;
    sb_reset();
    pthread_mutex_lock(&sb.mu);
    sb.no_pause = true;
    pthread_mutex_unlock(&sb.mu);
    struct vd_http_key keys[] = {{"k", VD_ROLE_ADMIN}};
    /* a short idle timeout: the server must let go of what the damage left incomplete */
    struct vd_http_opts o = {.bind = "127.0.0.1", .threads = 2, .max_body = 256, .keys = keys, .n_keys = 1,
                             .idle_timeout_s = 1};
    struct vd_http *h;
    struct vd_err e;
    assert_int_equal(vd_http_new(&o, &h, &e), 0);
    assert_int_equal(vd_http_route(h, "POST", "/echo", VD_ROLE_NONE, h_body_len, NULL), 0);
    assert_int_equal(vd_http_route(h, "GET", "/collections/{c}/points/{id}", VD_ROLE_RO, h_echo_params, NULL), 0);
    assert_int_equal(vd_http_route_stream(h, "POST", "/import", VD_ROLE_NONE, s_begin, &sops, NULL), 0);
    start(h);
    uint16_t p = vd_http_port(h);
    const char *tpl[] = {
        "POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 10\r\n\r\n0123456789",
        "POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n3\r\nxyz\r\n0\r\n\r\n",
        "GET /collections/a%20b/points/7?wait=true&x=%41 HTTP/1.1\r\nHost: t\r\nConnection: close\r\napi-key: k\r\n\r\n",
        "POST /import HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{}\r\n\r\n0\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer k\r\n\r\n",
    };
    unsigned seed = 12345;
    char req[512];
    for (int it = 0; it < iters; it++) {
        const char *t = tpl[rand_r(&seed) % 5];
        size_t n = strlen(t);
        memcpy(req, t, n);
        int damage = 1 + (int)(rand_r(&seed) % 4);
        for (int d = 0; d < damage; d++) {
            size_t at = rand_r(&seed) % n;
            switch (rand_r(&seed) % 4) {
            case 0: req[at] = (char)(rand_r(&seed) & 0xff); break;        /* any byte */
            case 1: req[at] = "%\r\n:{} 0f/?&="[rand_r(&seed) % 14]; break; /* syntax */
            case 2: n = at + 1; break;                                     /* truncate */
            default: memmove(req + at, req + at + 1, n - at - 1); n--; break; /* drop */
            }
        }
        int fd = hconnect(p);
        send_all(fd, req, n);
        if (it % 8 == 0) {
            /* Read now and then, with a short timeout: a damaged request may leave libmicrohttpd
             * waiting for bytes that never come (until its idle timeout, checked below). */
            struct timeval tv = {.tv_usec = 300000};
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
            shutdown(fd, SHUT_WR);
            struct hresp r;
            if (read_resp(fd, &r) == 0)
                hresp_free(&r);
        }
        close(fd);
    }
    /* a body that never comes, from a client that stays connected: the server closes the
     * connection at its idle timeout instead of holding it */
    int fd = hconnect(p);
    const char *partial = "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234";
    assert_int_equal(send_all(fd, partial, strlen(partial)), 0);
    uint64_t t0 = vd_mono_ns();
    struct hresp r;
    if (read_resp(fd, &r) == 0) /* returns once the server closes (or after 30 s) */
        hresp_free(&r);
    close(fd);
    double waited = (double)(vd_mono_ns() - t0) / 1e9;
    if (waited > 10)
        fail_msg("a stalled request held its connection for %.1f s (idle timeout 1 s)", waited);
    assert_int_equal(status_of(p, "GET", "/healthz", NULL), 200);
    assert_int_equal(status_of(p, "GET", "/collections/x/points/1", "api-key: k\r\n"), 200);
    /* every connection the damage left waiting is closed by the idle timeout: only the scrape
     * itself is in flight then */
    WAIT_FOR(metrics_has_h(p, "api-key: k\r\n", "vectord_http_requests_in_flight 1\n"));
    vd_http_free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_builtin_routes),
        cmocka_unit_test(test_routing),
        cmocka_unit_test(test_auth_matrix),
        cmocka_unit_test(test_body_limit),
        cmocka_unit_test(test_deferred_reply_pool_of_one),
        cmocka_unit_test(test_redispatch),
        cmocka_unit_test(test_stream_body_pause_resume),
        cmocka_unit_test(test_stream_body_chunked_pauses_then_stop),
        cmocka_unit_test(test_stream_reply),
        cmocka_unit_test(test_graceful_stop),
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_histogram_cumulative),
        cmocka_unit_test(test_request_id),
        cmocka_unit_test(test_url_decode),
        cmocka_unit_test(test_malformed_requests),
        cmocka_unit_test(test_random_garbage),
    };
    vd_log_set_level(VD_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
