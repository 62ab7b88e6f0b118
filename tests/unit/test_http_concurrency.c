/*
 * Many concurrent clients against one server: inline replies, replies from worker threads while
 * the connection is suspended, keep-alive connections, streamed bodies paused and resumed by
 * workers, and a stop in the middle of the traffic. Also run under ThreadSanitizer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
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

#include "vectord/http.h"

static int scale(int normal, int small)
{
    const char *s = getenv("VD_TEST_SCALE");
    return s && !strcmp(s, "small") ? small : normal;
}

/* ---- work queue: jobs run on worker threads, away from the pool ------------------------- */

enum job_kind { JOB_REPLY, JOB_RESUME };
struct job {
    enum job_kind kind;
    struct vd_http_req *r;
    long value;
};

#define QCAP 4096
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job q[QCAP];
    size_t head, len;
    bool quit;
} wq = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void wq_push(struct job j)
{
    pthread_mutex_lock(&wq.mu);
    assert_true(wq.len < QCAP);
    wq.q[(wq.head + wq.len++) % QCAP] = j;
    pthread_cond_signal(&wq.cv);
    pthread_mutex_unlock(&wq.mu);
}

static void *worker(void *arg)
{
    for (;;) {
        pthread_mutex_lock(&wq.mu);
        while (!wq.len && !wq.quit)
            pthread_cond_wait(&wq.cv, &wq.mu);
        if (!wq.len) {
            pthread_mutex_unlock(&wq.mu);
            return NULL;
        }
        struct job j = wq.q[wq.head];
        wq.head = (wq.head + 1) % QCAP;
        wq.len--;
        pthread_mutex_unlock(&wq.mu);
        if (j.kind == JOB_RESUME) {
            vd_http_resume_body(j.r);
        } else {
            char buf[64];
            int n = snprintf(buf, sizeof(buf), "{\"n\":%ld,\"by\":\"worker\"}", j.value);
            vd_http_reply_ok(j.r, buf, (size_t)n);
        }
    }
}

/* ---- handlers ---------------------------------------------------------------------------- */

static atomic_int served;

static void h_inline(struct vd_http_req *r, void *ctx)
{
    atomic_fetch_add(&served, 1);
    char buf[64];
    int n = snprintf(buf, sizeof(buf), "{\"n\":%s,\"by\":\"inline\"}", vd_http_param(r, "n"));
    vd_http_reply_ok(r, buf, (size_t)n);
}

static void h_deferred(struct vd_http_req *r, void *ctx)
{
    wq_push((struct job){JOB_REPLY, r, atol(vd_http_param(r, "n"))});
}

struct ssum {
    uint64_t bytes;
    unsigned chunks;
};

static void s_begin(struct vd_http_req *r, void *ctx)
{
    vd_http_set_user(r, calloc(1, sizeof(struct ssum)));
}

static int s_chunk(struct vd_http_req *r, const char *data, size_t len, void *ctx)
{
    struct ssum *s = vd_http_user(r);
    s->bytes += len;
    if (++s->chunks % 2)
        return 0;
    wq_push((struct job){JOB_RESUME, r, 0});
    return VD_HTTP_PAUSE;
}

static void s_end(struct vd_http_req *r, void *ctx)
{
    struct ssum *s = vd_http_user(r);
    char buf[64];
    int n = snprintf(buf, sizeof(buf), "{\"n\":%llu,\"by\":\"stream\"}", (unsigned long long)s->bytes);
    free(s);
    /* answer from a worker thread too */
    wq_push((struct job){JOB_REPLY, r, atol(buf + 5)});
    (void)n;
}

static void s_abort(struct vd_http_req *r, void *ctx)
{
    free(vd_http_user(r));
}

static const struct vd_http_stream_ops sops = {s_chunk, s_end, s_abort};

/* ---- keep-alive client ------------------------------------------------------------------- */

static int hconnect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = 30};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a))) {
        close(fd);
        return -1;
    }
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

/* Reads one Content-Length framed response. buf holds leftovers between calls. */
struct conn {
    int fd;
    char buf[16384];
    size_t len;
};

static int read_one(struct conn *c, int *status, char *body, size_t cap)
{
    for (;;) {
        c->buf[c->len] = '\0';
        char *sep = strstr(c->buf, "\r\n\r\n");
        if (sep) {
            const char *cl = strcasestr(c->buf, "\r\nContent-Length:");
            if (!cl || cl > sep || sscanf(c->buf, "HTTP/1.1 %d", status) != 1)
                return -1;
            size_t blen = strtoul(cl + 17, NULL, 10);
            size_t hlen = (size_t)(sep + 4 - c->buf);
            if (c->len >= hlen + blen) {
                if (blen >= cap)
                    return -1;
                memcpy(body, sep + 4, blen);
                body[blen] = '\0';
                memmove(c->buf, c->buf + hlen + blen, c->len - hlen - blen);
                c->len -= hlen + blen;
                return 0;
            }
        }
        if (c->len + 1 >= sizeof(c->buf))
            return -1;
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len - 1, 0);
        if (n <= 0)
            return -1;
        c->len += (size_t)n;
    }
}

struct client {
    uint16_t port;
    int id, n;
    bool tolerate_errors; /* during the stop: errors and 503s are expected */
    int ok, unavailable, failed;
};

static void *client_thread(void *arg)
{
    struct client *cl = arg;
    struct conn c = {.fd = -1};
    unsigned seed = (unsigned)cl->id * 7919u + 1;
    char req[512], body[256], payload[3000];
    memset(payload, 'p', sizeof(payload));
    for (int i = 0; i < cl->n; i++) {
        if (c.fd < 0) {
            c.fd = hconnect(cl->port);
            c.len = 0;
            if (c.fd < 0) {
                cl->failed++;
                continue;
            }
        }
        int kind = (int)(rand_r(&seed) % 3);
        long n = cl->id * 100000L + i;
        size_t blen = 0;
        int rl;
        if (kind == 0)
            rl = snprintf(req, sizeof(req), "GET /inline/%ld HTTP/1.1\r\nHost: t\r\n\r\n", n);
        else if (kind == 1)
            rl = snprintf(req, sizeof(req), "GET /deferred/%ld HTTP/1.1\r\nHost: t\r\n\r\n", n);
        else {
            blen = 1 + (size_t)(rand_r(&seed) % sizeof(payload));
            rl = snprintf(req, sizeof(req), "POST /stream HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n", blen);
            n = (long)blen;
        }
        int status = 0;
        if (send_all(c.fd, req, (size_t)rl) || (blen && send_all(c.fd, payload, blen)) ||
            read_one(&c, &status, body, sizeof(body))) {
            cl->failed++;
            close(c.fd);
            c.fd = -1;
            continue;
        }
        if (status == 503) {
            cl->unavailable++;
            continue;
        }
        char want[64];
        snprintf(want, sizeof(want), "{\"result\":{\"n\":%ld,\"by\":\"%s\"}", n,
                 kind == 0 ? "inline" : kind == 1 ? "worker" : "worker");
        if (status == 200 && strncmp(body, want, strlen(want)) == 0)
            cl->ok++;
        else
            cl->failed++;
        if (rand_r(&seed) % 8 == 0) { /* sometimes start a new connection */
            close(c.fd);
            c.fd = -1;
        }
    }
    if (c.fd >= 0)
        close(c.fd);
    return NULL;
}

static struct vd_http *make_server(pthread_t *workers, int n_workers)
{
    wq.quit = false;
    for (int i = 0; i < n_workers; i++)
        pthread_create(&workers[i], NULL, worker, NULL);
    struct vd_http_opts o = {.bind = "127.0.0.1", .threads = 4, .version = "t"};
    struct vd_http *h;
    struct vd_err e;
    assert_int_equal(vd_http_new(&o, &h, &e), 0);
    assert_int_equal(vd_http_route(h, "GET", "/inline/{n}", VD_ROLE_RO, h_inline, NULL), 0);
    assert_int_equal(vd_http_route(h, "GET", "/deferred/{n}", VD_ROLE_RO, h_deferred, NULL), 0);
    assert_int_equal(vd_http_route_stream(h, "POST", "/stream", VD_ROLE_RW, s_begin, &sops, NULL), 0);
    assert_int_equal(vd_http_start(h, &e), 0);
    return h;
}

static void stop_workers(pthread_t *workers, int n_workers)
{
    pthread_mutex_lock(&wq.mu);
    wq.quit = true;
    pthread_cond_broadcast(&wq.cv);
    pthread_mutex_unlock(&wq.mu);
    for (int i = 0; i < n_workers; i++)
        pthread_join(workers[i], NULL);
}

#define N_CLIENTS 8

static void test_many_clients(void **state)
{
    pthread_t workers[2], t[N_CLIENTS];
    struct vd_http *h = make_server(workers, 2);
    struct client cl[N_CLIENTS];
    int per = scale(300, 40);
    for (int i = 0; i < N_CLIENTS; i++) {
        cl[i] = (struct client){.port = vd_http_port(h), .id = i + 1, .n = per};
        pthread_create(&t[i], NULL, client_thread, &cl[i]);
    }
    int ok = 0;
    for (int i = 0; i < N_CLIENTS; i++) {
        pthread_join(t[i], NULL);
        if (cl[i].failed)
            fail_msg("client %d: %d failed requests", i, cl[i].failed);
        ok += cl[i].ok;
    }
    assert_int_equal(ok, N_CLIENTS * per);
    vd_http_stop(h, 5000);
    stop_workers(workers, 2);
    vd_http_free(h);
}

static void test_stop_under_load(void **state)
{
    pthread_t workers[2], t[N_CLIENTS];
    struct vd_http *h = make_server(workers, 2);
    struct client cl[N_CLIENTS];
    int per = scale(400, 60);
    for (int i = 0; i < N_CLIENTS; i++) {
        cl[i] = (struct client){.port = vd_http_port(h), .id = i + 1, .n = per, .tolerate_errors = true};
        pthread_create(&t[i], NULL, client_thread, &cl[i]);
    }
    /* stop once traffic is flowing */
    atomic_store(&served, 0);
    for (int i = 0; i < 20000 && atomic_load(&served) < 20; i++) {
        struct timespec ts = {.tv_nsec = 1000000L};
        nanosleep(&ts, NULL);
    }
    vd_http_stop(h, 200);
    for (int i = 0; i < N_CLIENTS; i++)
        pthread_join(t[i], NULL);
    stop_workers(workers, 2);
    vd_http_free(h);
    int total = 0;
    for (int i = 0; i < N_CLIENTS; i++)
        total += cl[i].ok + cl[i].unavailable + cl[i].failed;
    assert_int_equal(total, N_CLIENTS * per);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_many_clients),
        cmocka_unit_test(test_stop_under_load),
    };
    vd_log_set_level(VD_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
