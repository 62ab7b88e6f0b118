/*
 * Frame codec and peer transport. The transport tests run real transports on 127.0.0.1 with
 * ephemeral ports on a libuv loop owned by the test thread, driven until a polled condition
 * holds or a deadline passes; raw sockets play broken or hostile peers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sodium.h>
#include <uv.h>

#include "cluster_int.h"
#include "skip.h"

/* ---- frame codec ----------------------------------------------------------------------------- */

static size_t make_frame(uint8_t *buf, uint8_t type, const uint8_t *body, uint32_t len)
{
    memcpy(buf + VD_FRAME_HDR, body, len);
    vd__frame_header(type, buf + VD_FRAME_HDR, len, buf);
    return VD_FRAME_HDR + (size_t)len;
}

static void test_frame_roundtrip(void **state)
{
    static const uint32_t lens[] = {0, 1, 7, 12, 100, 65536};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        uint32_t len = lens[i];
        uint8_t *body = malloc(len + 1), *buf = malloc(VD_FRAME_HDR + len);
        randombytes_buf(body, len);
        size_t n = make_frame(buf, (uint8_t)(16 + i), body, len);
        assert_int_equal(vd_be32_get(buf) >> 16, VD_FRAME_MAGIC);
        assert_int_equal(buf[2], VD_FRAME_VERSION);
        struct vd_frame f;
        size_t used = 99;
        assert_int_equal(vd__frame_decode(buf, n, len, &f, &used), 0);
        assert_int_equal(used, n);
        assert_int_equal(f.type, 16 + i);
        assert_int_equal(f.len, len);
        assert_ptr_equal(f.body, buf + VD_FRAME_HDR);
        assert_memory_equal(f.body, body, len);
        if (len) /* one byte over the limit */
            assert_int_equal(vd__frame_decode(buf, n, len - 1, &f, &used), VD_ETOOBIG);
        free(body);
        free(buf);
    }
}

/* Every proper prefix of a frame asks for more bytes and never reads past it (ASan). */
static void test_frame_truncation(void **state)
{
    uint8_t body[200];
    for (size_t i = 0; i < sizeof(body); i++)
        body[i] = (uint8_t)(i * 7);
    uint8_t full[VD_FRAME_HDR + sizeof(body)];
    size_t n = make_frame(full, 17, body, sizeof(body));
    for (size_t k = 0; k < n; k++) {
        uint8_t *p = malloc(k ? k : 1); /* exact size: a read past k bytes is an ASan error */
        memcpy(p, full, k);
        struct vd_frame f;
        size_t used = 99;
        assert_int_equal(vd__frame_decode(p, k, 1 << 20, &f, &used), 0);
        assert_int_equal(used, 0);
        free(p);
    }
}

/*
 * Every single-bit flip is rejected: an error, or (a length made larger) a request for more
 * bytes that ends in an error once those bytes arrive.
 */
static void test_frame_bitflip(void **state)
{
    const uint32_t max = 1 << 20;
    uint8_t body[100];
    randombytes_buf(body, sizeof(body));
    uint8_t full[VD_FRAME_HDR + sizeof(body)];
    size_t n = make_frame(full, 16, body, sizeof(body));
    for (size_t bit = 0; bit < n * 8; bit++) {
        uint8_t p[sizeof(full)];
        memcpy(p, full, n);
        p[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        struct vd_frame f;
        size_t used = 99;
        int r = vd__frame_decode(p, n, max, &f, &used);
        if (r == 0) {
            assert_int_equal(used, 0);
            uint32_t len = vd_be32_get(p + 4);
            assert_true(len > sizeof(body) && len <= max);
            uint8_t *big = calloc(1, VD_FRAME_HDR + len);
            memcpy(big, p, n);
            r = vd__frame_decode(big, VD_FRAME_HDR + len, max, &f, &used);
            free(big);
        }
        assert_true(r == VD_ECORRUPT || r == VD_ETOOBIG);
    }
}

/* Frames back to back decode one by one; garbage and an oversized length are refused from the
 * header alone. */
static void test_frame_stream(void **state)
{
    uint8_t buf[4096];
    size_t n = 0;
    for (uint32_t i = 0; i < 20; i++) {
        uint8_t body[64];
        memset(body, (int)i, sizeof(body));
        n += make_frame(buf + n, (uint8_t)(16 + i), body, i * 3);
    }
    size_t off = 0;
    for (uint32_t i = 0; i < 20; i++) {
        struct vd_frame f;
        size_t used;
        assert_int_equal(vd__frame_decode(buf + off, n - off, 1024, &f, &used), 0);
        assert_int_equal(f.type, 16 + i);
        assert_int_equal(f.len, i * 3);
        off += used;
    }
    assert_int_equal(off, n);

    struct vd_frame f;
    size_t used;
    uint8_t g = 'G';
    assert_int_equal(vd__frame_decode(&g, 1, 1024, &f, &used), VD_ECORRUPT);
    uint8_t hdr[VD_FRAME_HDR];
    vd__frame_header(16, NULL, 0, hdr);
    vd_be32_put(hdr + 4, 0xfffffff0u);
    assert_int_equal(vd__frame_decode(hdr, sizeof(hdr), 1024, &f, &used), VD_ETOOBIG);
    vd__frame_header(16, NULL, 0, hdr);
    hdr[2] = VD_FRAME_VERSION + 1;
    assert_int_equal(vd__frame_decode(hdr, 3, 1024, &f, &used), VD_ECORRUPT);
}

/* ---- transport harness ----------------------------------------------------------------------- */

struct rx {
    uint64_t from;
    char from_addr[64];
    uint8_t type;
    uint64_t hlc;
    uint8_t *body;
    size_t len;
};

struct fx;

struct node {
    struct vd_transport *t;
    struct fx *fx; /* registered for teardown while open */
    int slot;
    uint64_t id;
    uint16_t port;
    char addr[64];
    struct rx *rx;
    size_t n_rx, cap_rx;
    bool remove_sender; /* the frame callback forgets the sender (re-entrancy) */
};

struct fx {
    uv_loop_t loop;
    uv_timer_t tick;
    /* transports still open: teardown closes them when a test fails half-way (the nodes live
     * on the failed test's stack, so only the transport pointers are kept here) */
    struct vd_transport *live[16];
    struct vd_data *live_data[16]; /* closed first: they hold handles of the same loop */
};

static void adopt(struct fx *fx, struct node *n)
{
    for (int i = 0; i < 16; i++) {
        if (!fx->live[i]) {
            fx->live[i] = n->t;
            n->fx = fx;
            n->slot = i;
            return;
        }
    }
    fail_msg("too many transports");
}

static void on_rx(void *ctx, uint64_t from, const char *from_addr, uint8_t type, uint64_t hlc,
                  const uint8_t *body, size_t len)
{
    struct node *n = ctx;
    if (n->n_rx == n->cap_rx) {
        n->cap_rx = n->cap_rx ? 2 * n->cap_rx : 64;
        n->rx = realloc(n->rx, n->cap_rx * sizeof(*n->rx));
        assert_non_null(n->rx);
    }
    struct rx *r = &n->rx[n->n_rx++];
    r->from = from;
    snprintf(r->from_addr, sizeof(r->from_addr), "%s", from_addr);
    r->type = type;
    r->hlc = hlc;
    r->len = len;
    r->body = malloc(len ? len : 1);
    memcpy(r->body, body, len);
    if (n->remove_sender)
        vd_transport_remove_peer(n->t, from);
}

static void rx_clear(struct node *n)
{
    for (size_t i = 0; i < n->n_rx; i++)
        free(n->rx[i].body);
    n->n_rx = 0;
}

static void node_start_opts(struct fx *fx, struct node *n, uint64_t id, uint16_t port,
                            const char *secret, uint32_t max_frame)
{
    struct vd_transport_opts o = {
        .loop = &fx->loop,
        .self_id = id,
        .bind = "127.0.0.1",
        .port = port,
        .secret = secret,
        .max_frame = max_frame,
        .on_frame = on_rx,
        .ctx = n,
    };
    struct vd_err err;
    n->id = id;
    int r = vd_transport_start(&o, &n->t, &err);
    if (r)
        print_error("start: %s\n", err.msg);
    assert_int_equal(r, 0);
    adopt(fx, n);
    n->port = vd_transport_port(n->t);
    assert_true(n->port != 0);
    if (port)
        assert_int_equal(n->port, port);
    snprintf(n->addr, sizeof(n->addr), "127.0.0.1:%u", (unsigned)n->port);
}

static void node_start(struct fx *fx, struct node *n, uint64_t id, const char *secret)
{
    node_start_opts(fx, n, id, 0, secret, 0);
}

/* Closes the transport (the loop frees it later) and the received frames. */
static void node_stop(struct node *n)
{
    if (n->t)
        vd_transport_close(n->t);
    if (n->fx)
        n->fx->live[n->slot] = NULL;
    n->fx = NULL;
    n->t = NULL;
    rx_clear(n);
    free(n->rx);
    n->rx = NULL;
    n->cap_rx = 0;
}

static void on_tick(uv_timer_t *h)
{
    (void)h;
}

static int fx_setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    /* bounds each UV_RUN_ONCE, so conditions that depend on raw sockets are polled too */
    uv_timer_init(&fx->loop, &fx->tick);
    uv_timer_start(&fx->tick, on_tick, 2, 2);
    *state = fx;
    return 0;
}

/* Every transport must be closed by now: the loop must then end with no handle left. */
static int fx_teardown(void **state)
{
    struct fx *fx = *state;
    for (int i = 0; i < 16; i++)
        vd_data_close(fx->live_data[i]);
    for (int i = 0; i < 16; i++)
        vd_transport_close(fx->live[i]);
    uv_close((uv_handle_t *)&fx->tick, NULL);
    uint64_t deadline = uv_hrtime() + 10000000000ull;
    while (uv_run(&fx->loop, UV_RUN_NOWAIT))
        assert_true(uv_hrtime() < deadline);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    free(fx);
    return 0;
}

#define WAIT_FOR(fx, cond, ms)                                                                     \
    do {                                                                                           \
        uint64_t dl_ = uv_hrtime() + (uint64_t)(ms)*1000000u;                                      \
        while (!(cond)) {                                                                          \
            if (uv_hrtime() > dl_)                                                                 \
                fail_msg("timed out after %d ms waiting for %s", (int)(ms), #cond);                \
            uv_run(&(fx)->loop, UV_RUN_ONCE);                                                      \
        }                                                                                          \
    } while (0)

/* Runs the loop for a while when what is checked is that something does NOT happen. */
static void run_for(struct fx *fx, unsigned ms)
{
    uint64_t end = uv_hrtime() + (uint64_t)ms * 1000000u;
    while (uv_hrtime() < end)
        uv_run(&fx->loop, UV_RUN_ONCE);
}

static int send_str(struct node *n, uint64_t to, const char *s)
{
    return vd_transport_send(n->t, to, VD_FRAME_USER, s, strlen(s));
}

static void assert_rx(const struct node *n, size_t i, uint64_t from, const char *from_addr,
                      const char *s)
{
    assert_true(i < n->n_rx);
    assert_int_equal(n->rx[i].from, from);
    assert_string_equal(n->rx[i].from_addr, from_addr);
    assert_int_equal(n->rx[i].type, VD_FRAME_USER);
    assert_int_equal(n->rx[i].len, strlen(s));
    assert_memory_equal(n->rx[i].body, s, strlen(s));
}

/* A port nothing listens on (bound, read, released). */
static uint16_t dead_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t l = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &l);
    close(fd);
    return ntohs(a.sin_port);
}

/* ---- transport tests ------------------------------------------------------------------------- */

static void test_both_ways(void **state)
{
    struct fx *fx = *state;
    struct node a = {0}, b = {0};
    node_start(fx, &a, 1, NULL);
    node_start(fx, &b, 2, NULL);
    assert_int_equal(send_str(&a, 2, "x"), VD_ENOTFOUND); /* no address yet */
    vd_transport_set_peer(a.t, 2, b.addr);
    uint64_t before = vd_hlc_now();
    assert_int_equal(send_str(&a, 2, "ping"), 0);
    WAIT_FOR(fx, b.n_rx == 1, 5000);
    assert_rx(&b, 0, 1, a.addr, "ping");
    /* stamped with the sender's HLC on its way out */
    assert_true(b.rx[0].hlc > before && b.rx[0].hlc < vd_hlc_now());
    assert_true(vd_transport_connected(a.t, 2));
    assert_true(vd_transport_connected(b.t, 1));
    /* b never had an address for 1: the reply rides the accepted connection */
    assert_int_equal(send_str(&b, 1, "pong"), 0);
    WAIT_FOR(fx, a.n_rx == 1, 5000);
    assert_rx(&a, 0, 2, b.addr, "pong");
    /* handshake types are not for users */
    assert_int_equal(vd_transport_send(a.t, 2, VD_FRAME_HELLO, "x", 1), VD_EINVAL);

    /* forgetting a peer from inside the frame callback closes the connection under it */
    b.remove_sender = true;
    assert_int_equal(send_str(&a, 2, "bye"), 0);
    WAIT_FOR(fx, b.n_rx == 2 && !vd_transport_connected(a.t, 2), 5000);
    assert_false(vd_transport_connected(b.t, 1));
    assert_int_equal(send_str(&b, 1, "x"), VD_ENOTFOUND);
    node_stop(&a);
    node_stop(&b);
}

static void test_thousand_in_order(void **state)
{
    struct fx *fx = *state;
    struct node a = {0}, b = {0};
    node_start(fx, &a, 1, NULL);
    node_start(fx, &b, 2, NULL);
    vd_transport_set_peer(a.t, 2, b.addr);
    for (uint32_t i = 0; i < 1000; i++) {
        uint8_t body[4 + 300];
        vd_be32_put(body, i);
        memset(body + 4, (int)i, sizeof(body) - 4);
        assert_int_equal(vd_transport_send(a.t, 2, VD_FRAME_USER + 1, body, 4 + i % 300), 0);
    }
    WAIT_FOR(fx, b.n_rx == 1000, 10000);
    for (uint32_t i = 0; i < 1000; i++) {
        assert_int_equal(b.rx[i].len, 4 + i % 300);
        assert_int_equal(vd_be32_get(b.rx[i].body), i);
        assert_int_equal(b.rx[i].type, VD_FRAME_USER + 1);
        for (size_t k = 4; k < b.rx[i].len; k++)
            assert_int_equal(b.rx[i].body[k], (uint8_t)i);
    }
    node_stop(&a);
    node_stop(&b);
}

static void test_big_frame(void **state)
{
    struct fx *fx = *state;
    struct node a = {0}, b = {0};
    node_start(fx, &a, 1, NULL);
    node_start(fx, &b, 2, NULL);
    vd_transport_set_peer(a.t, 2, b.addr);
    size_t len = 4u << 20;
    uint8_t *big = malloc(len);
    randombytes_buf(big, len);
    assert_int_equal(vd_transport_send(a.t, 2, VD_FRAME_USER, big, len), 0);
    assert_int_equal(send_str(&a, 2, "after"), 0);
    WAIT_FOR(fx, b.n_rx == 2, 10000);
    assert_int_equal(b.rx[0].len, len);
    assert_memory_equal(b.rx[0].body, big, len);
    assert_rx(&b, 1, 1, a.addr, "after");
    free(big);
    node_stop(&a);
    node_stop(&b);
}

static void test_send_addr_then_reply(void **state)
{
    struct fx *fx = *state;
    struct node a = {0}, b = {0};
    node_start(fx, &a, 1, "s3cret");
    node_start(fx, &b, 2, "s3cret");
    assert_int_equal(vd_transport_send_addr(a.t, "127.0.0.1", VD_FRAME_USER, "x", 1), VD_EINVAL);
    assert_int_equal(vd_transport_send_addr(a.t, a.addr, VD_FRAME_USER, "x", 1), VD_EINVAL);
    assert_int_equal(vd_transport_send_addr(a.t, b.addr, VD_FRAME_USER, "join", 4), 0);
    WAIT_FOR(fx, b.n_rx == 1, 5000);
    assert_rx(&b, 0, 1, a.addr, "join");
    assert_int_equal(send_str(&b, 1, "welcome"), 0);
    WAIT_FOR(fx, a.n_rx == 1, 5000);
    assert_rx(&a, 0, 2, b.addr, "welcome");
    /* the connection is now a's connection to node 2 */
    assert_true(vd_transport_connected(a.t, 2));
    assert_int_equal(send_str(&a, 2, "by id"), 0);
    assert_int_equal(vd_transport_send_addr(a.t, b.addr, VD_FRAME_USER, "by addr", 7), 0);
    WAIT_FOR(fx, b.n_rx == 3, 5000);
    assert_rx(&b, 1, 1, a.addr, "by id");
    assert_rx(&b, 2, 1, a.addr, "by addr");
    node_stop(&a);
    node_stop(&b);
}

/* A name resolved with getaddrinfo: the host's own name when it resolves to loopback, else
 * localhost (a host's name often resolves to its network address, which a transport without a
 * secret refuses). */
static void test_resolved_name(void **state)
{
    struct fx *fx = *state;
    char own[256];
    const char *names[] = {gethostname(own, sizeof(own)) == 0 ? own : "localhost", "localhost"};
    const char *host = NULL;
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res = NULL;
    bool loop_ok = false;
    for (int i = 0; i < 2 && !loop_ok; i++) {
        host = names[i];
        if (getaddrinfo(host, NULL, &hints, &res) == 0) {
            loop_ok = (ntohl(((struct sockaddr_in *)res->ai_addr)->sin_addr.s_addr) >> 24) == 127;
            freeaddrinfo(res);
        }
    }
    if (!loop_ok)
        VD_SKIP("neither this host's name nor localhost resolves to a loopback address");
    struct node a = {0}, b = {0};
    node_start(fx, &a, 1, NULL);
    node_start(fx, &b, 2, NULL);
    char addr[300];
    snprintf(addr, sizeof(addr), "%s:%u", host, (unsigned)b.port);
    vd_transport_set_peer(a.t, 2, addr);
    assert_int_equal(send_str(&a, 2, "named"), 0);
    WAIT_FOR(fx, b.n_rx == 1, 5000);
    assert_rx(&b, 0, 1, a.addr, "named");
    node_stop(&a);
    node_stop(&b);
}

/* A fake acceptor that cannot know the secret: it answers the HELLO with a WELCOME carrying a
 * made-up proof, then a user frame. The dialer must close without delivering anything. */
struct fake {
    int lfd;
    atomic_int closed;
};

static int read_full(int fd, uint8_t *p, size_t n)
{
    while (n) {
        ssize_t r = recv(fd, p, n, 0);
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static void *fake_acceptor(void *arg)
{
    struct fake *fk = arg;
    int fd = accept(fk->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    uint8_t buf[2048];
    uint8_t nonce[32];
    randombytes_buf(nonce, sizeof(nonce));
    size_t n = make_frame(buf, VD_FRAME_CHALLENGE, nonce, sizeof(nonce));
    send(fd, buf, n, MSG_NOSIGNAL);
    if (read_full(fd, buf, VD_FRAME_HDR) == 0 && buf[3] == VD_FRAME_HELLO &&
        vd_be32_get(buf + 4) < sizeof(buf) - VD_FRAME_HDR &&
        read_full(fd, buf + VD_FRAME_HDR, vd_be32_get(buf + 4)) == 0) {
        uint8_t w[8 + 2 + 11 + 32];
        vd_be64_put(w, 9);
        w[8] = 0;
        w[9] = 11;
        memcpy(w + 10, "127.0.0.1:9", 11);
        randombytes_buf(w + 21, 32);
        n = make_frame(buf, VD_FRAME_WELCOME, w, sizeof(w));
        n += make_frame(buf + n, VD_FRAME_USER, (const uint8_t *)"evil", 4);
        send(fd, buf, n, MSG_NOSIGNAL);
        while (recv(fd, buf, sizeof(buf), 0) > 0)
            ;
        atomic_store(&fk->closed, 1);
    }
    close(fd);
    return NULL;
}

static int raw_connect_ip(const char *ip, uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    assert_int_equal(inet_pton(AF_INET, ip, &a.sin_addr), 1);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

static int raw_connect(uint16_t port)
{
    return raw_connect_ip("127.0.0.1", port);
}

/* Bytes read without blocking (0 when none are there yet). */
static size_t raw_recv(int fd, uint8_t *p, size_t n)
{
    ssize_t r = recv(fd, p, n, MSG_DONTWAIT);
    return r > 0 ? (size_t)r : 0;
}

/* True once the other end has closed fd (EOF or reset); drains whatever it sent before and
 * adds its size to *got. */
static bool raw_gone(int fd, size_t *got)
{
    char b[512];
    for (;;) {
        ssize_t r = recv(fd, b, sizeof(b), MSG_DONTWAIT);
        if (r > 0) {
            *got += (size_t)r;
            continue;
        }
        if (r == 0)
            return true;
        return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
    }
}

static bool raw_closed(int fd)
{
    size_t got = 0;
    return raw_gone(fd, &got);
}

static void test_wrong_secret(void **state)
{
    struct fx *fx = *state;
    struct node a = {0}, b = {0}, c = {0};
    node_start(fx, &a, 1, "alpha");
    node_start(fx, &b, 2, "bravo");
    node_start(fx, &c, 3, NULL);
    /* both directions between different secrets, and secret against no secret */
    vd_transport_set_peer(a.t, 2, b.addr);
    vd_transport_set_peer(b.t, 1, a.addr);
    vd_transport_set_peer(a.t, 3, c.addr);
    vd_transport_set_peer(c.t, 1, a.addr);
    assert_int_equal(send_str(&a, 2, "a->b"), 0);
    assert_int_equal(send_str(&b, 1, "b->a"), 0);
    assert_int_equal(send_str(&a, 3, "a->c"), 0);
    assert_int_equal(send_str(&c, 1, "c->a"), 0);
    run_for(fx, 400); /* several redials */
    assert_int_equal(a.n_rx + b.n_rx + c.n_rx, 0);
    assert_false(vd_transport_connected(a.t, 2));
    assert_false(vd_transport_connected(b.t, 1));
    assert_false(vd_transport_connected(a.t, 3));
    assert_false(vd_transport_connected(c.t, 1));

    /* an acceptor that fakes its proof is refused by the dialer */
    struct fake fk = {.lfd = socket(AF_INET, SOCK_STREAM, 0)};
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fk.lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fk.lfd, 4), 0);
    socklen_t sl = sizeof(sa);
    getsockname(fk.lfd, (struct sockaddr *)&sa, &sl);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, fake_acceptor, &fk), 0);
    char faddr[64];
    snprintf(faddr, sizeof(faddr), "127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    vd_transport_set_peer(a.t, 9, faddr);
    assert_int_equal(send_str(&a, 9, "to the fake"), 0);
    WAIT_FOR(fx, atomic_load(&fk.closed), 5000);
    pthread_join(th, NULL);
    close(fk.lfd);
    assert_int_equal(a.n_rx, 0);
    assert_false(vd_transport_connected(a.t, 9));

    /* and a dialer that fakes its proof is refused by the acceptor, frames after it unread */
    int raw = raw_connect(a.port);
    uint8_t ch[VD_FRAME_HDR + 32];
    size_t got = 0;
    WAIT_FOR(fx, (got += raw_recv(raw, ch + got, sizeof(ch) - got)) == sizeof(ch), 5000);
    assert_int_equal(ch[3], VD_FRAME_CHALLENGE);
    uint8_t h[8 + 2 + 11 + 32 + 32], out[256];
    vd_be64_put(h, 7);
    h[8] = 0;
    h[9] = 11;
    memcpy(h + 10, "127.0.0.1:7", 11);
    randombytes_buf(h + 21, 64); /* nonce and a made-up proof */
    size_t n = make_frame(out, VD_FRAME_HELLO, h, sizeof(h));
    n += make_frame(out + n, VD_FRAME_USER, (const uint8_t *)"evil", 4);
    assert_int_equal(send(raw, out, n, MSG_NOSIGNAL), (ssize_t)n);
    WAIT_FOR(fx, raw_closed(raw), 5000);
    close(raw);
    assert_int_equal(a.n_rx, 0);
    assert_false(vd_transport_connected(a.t, 7));

    /* the same secret on both ends works */
    struct node d = {0};
    node_start(fx, &d, 4, "alpha");
    vd_transport_set_peer(d.t, 1, a.addr);
    assert_int_equal(send_str(&d, 1, "friend"), 0);
    WAIT_FOR(fx, a.n_rx == 1, 5000);
    assert_rx(&a, 0, 4, d.addr, "friend");
    node_stop(&a);
    node_stop(&b);
    node_stop(&c);
    node_stop(&d);
}

/* ---- a man in the middle ---------------------------------------------------------------------
 * A proxy thread between a dialer and an acceptor: it relays bytes both ways, and on the
 * dialer -> acceptor direction it parses frames so that it can change the k-th user frame as an
 * attacker who knows the frame format would (fixing the CRC), or send it twice (replay). */
enum mitm_mode { MITM_PASS, MITM_TAMPER, MITM_REPLAY };

struct mitm {
    int lfd;
    uint16_t port, upstream;
    atomic_int mode;   /* enum mitm_mode, for the frame numbered `target` */
    atomic_int target; /* 1-based index of the user frame to act on, counted over all conns */
    atomic_int seen;   /* user frames relayed dialer -> acceptor */
    atomic_int conns;  /* connections accepted */
    atomic_int stop;
    pthread_t th;
};

static bool send_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t r = send(fd, p, n, MSG_NOSIGNAL);
        if (r <= 0)
            return false;
        p += r;
        n -= (size_t)r;
    }
    return true;
}

/* Relays whole frames from buf[0..*len) to fd, acting on the target frame; keeps the rest. */
static bool mitm_frames(struct mitm *m, int fd, uint8_t *buf, size_t *len)
{
    size_t off = 0;
    while (*len - off >= VD_FRAME_HDR) {
        size_t flen = VD_FRAME_HDR + vd_be32_get(buf + off + 4);
        if (*len - off < flen)
            break;
        uint8_t *f = buf + off;
        int copies = 1;
        if (f[3] >= VD_FRAME_USER) {
            int k = atomic_fetch_add(&m->seen, 1) + 1;
            if (k == atomic_load(&m->target)) {
                if (atomic_load(&m->mode) == MITM_TAMPER && flen > VD_FRAME_HDR) {
                    f[VD_FRAME_HDR] ^= 0x20; /* "m2" becomes "M2" */
                    vd__frame_header(f[3], f + VD_FRAME_HDR, (uint32_t)(flen - VD_FRAME_HDR), f);
                } else if (atomic_load(&m->mode) == MITM_REPLAY) {
                    copies = 2;
                }
            }
        }
        for (int i = 0; i < copies; i++)
            if (!send_all(fd, f, flen))
                return false;
        off += flen;
    }
    memmove(buf, buf + off, *len - off);
    *len -= off;
    return true;
}

static void *mitm_main(void *arg)
{
    struct mitm *m = arg;
    static uint8_t buf[1 << 20];
    while (!atomic_load(&m->stop)) {
        struct pollfd lp = {.fd = m->lfd, .events = POLLIN};
        if (poll(&lp, 1, 20) <= 0)
            continue;
        int a = accept(m->lfd, NULL, NULL);
        if (a < 0)
            continue;
        atomic_fetch_add(&m->conns, 1);
        int b = raw_connect(m->upstream);
        size_t len = 0;
        for (bool open = true; open && !atomic_load(&m->stop);) {
            struct pollfd p[2] = {{.fd = a, .events = POLLIN}, {.fd = b, .events = POLLIN}};
            if (poll(p, 2, 20) <= 0)
                continue;
            if (p[0].revents) {
                ssize_t r = recv(a, buf + len, sizeof(buf) - len, 0);
                open = r > 0;
                if (open) {
                    len += (size_t)r;
                    open = mitm_frames(m, b, buf, &len);
                }
            }
            if (open && p[1].revents) {
                uint8_t tmp[65536];
                ssize_t r = recv(b, tmp, sizeof(tmp), 0);
                open = r > 0 && send_all(a, tmp, (size_t)r);
            }
        }
        close(a);
        close(b);
    }
    return NULL;
}

static void mitm_start(struct mitm *m, uint16_t upstream)
{
    m->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(m->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(m->lfd, 4), 0);
    socklen_t sl = sizeof(sa);
    getsockname(m->lfd, (struct sockaddr *)&sa, &sl);
    m->port = ntohs(sa.sin_port);
    m->upstream = upstream;
    assert_int_equal(pthread_create(&m->th, NULL, mitm_main, m), 0);
}

static void mitm_stop(struct mitm *m)
{
    atomic_store(&m->stop, 1);
    pthread_join(m->th, NULL);
    close(m->lfd);
}

static size_t rx_count(const struct node *n, const char *s)
{
    size_t k = 0;
    for (size_t i = 0; i < n->n_rx; i++)
        k += n->rx[i].len == strlen(s) && !memcmp(n->rx[i].body, s, n->rx[i].len);
    return k;
}

/* With a secret, a frame altered in flight (its CRC fixed up) or replayed is refused: the
 * connection drops, nothing altered or repeated is delivered, and the peers reconnect. */
static void mitm_case(struct fx *fx, enum mitm_mode mode)
{
    struct node a = {0}, b = {0};
    struct mitm m = {0};
    node_start(fx, &a, 1, "shared secret");
    node_start(fx, &b, 2, "shared secret");
    mitm_start(&m, b.port);
    char via[64];
    snprintf(via, sizeof(via), "127.0.0.1:%u", (unsigned)m.port);
    vd_transport_set_peer(a.t, 2, via);
    atomic_store(&m.mode, mode);
    atomic_store(&m.target, 2);
    assert_int_equal(send_str(&a, 2, "m1"), 0);
    WAIT_FOR(fx, b.n_rx == 1, 5000);
    assert_int_equal(send_str(&a, 2, "m2"), 0); /* altered or replayed by the proxy */
    WAIT_FOR(fx, !vd_transport_connected(a.t, 2) || rx_count(&b, "M2") || rx_count(&b, "m2") > 1,
             5000);
    assert_int_equal(rx_count(&b, "M2"), 0);
    assert_true(rx_count(&b, "m2") <= 1);
    /* the connection was dropped; a new one through the same proxy carries the next frame */
    assert_int_equal(send_str(&a, 2, "m3"), 0);
    WAIT_FOR(fx, rx_count(&b, "m3") == 1, 5000);
    assert_true(atomic_load(&m.conns) >= 2);
    assert_int_equal(rx_count(&b, "M2"), 0);
    assert_true(rx_count(&b, "m2") <= 1);
    mitm_stop(&m);
    node_stop(&a);
    node_stop(&b);
}

static void test_tampered_frame(void **state)
{
    mitm_case(*state, MITM_TAMPER);
}

static void test_replayed_frame(void **state)
{
    mitm_case(*state, MITM_REPLAY);
}

/* A non-loopback address for test_loopback_only. A machine may have no address but loopback (a
 * container), so the test makes one: a veth pair whose far end lives in a network namespace of
 * its own and whose near end gets 10.200.N.1/24, N from the process id so that concurrent runs
 * use different subnets. Needs root and iproute2's ip; removed again in the teardown. */
static struct {
    char ns[32], ip[INET_ADDRSTRLEN], why[512];
    bool made;
} veth;

/* Runs a shell command; on failure returns nonzero and keeps its output in veth.why. */
static int veth_sh(const char *fmt, ...)
{
    char cmd[512], out[256] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    size_t len = strlen(cmd);
    snprintf(cmd + len, sizeof(cmd) - len, " 2>&1");
    FILE *p = popen(cmd, "r");
    if (!p) {
        snprintf(veth.why, sizeof(veth.why), "%s: %s", cmd, strerror(errno));
        return -1;
    }
    size_t n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = 0;
    int rc = pclose(p);
    if (rc != 0) {
        out[strcspn(out, "\n")] = 0;
        snprintf(veth.why, sizeof(veth.why), "`%.*s` failed (status %d): %s", (int)(len), cmd, rc,
                 out);
    }
    return rc;
}

static void veth_remove(void)
{
    /* deleting one end deletes the pair; the namespace goes with its name */
    veth_sh("ip link del %sa", veth.ns);
    veth_sh("ip netns del %s", veth.ns);
}

static int veth_setup(void **state)
{
    unsigned pid = (unsigned)getpid();
    snprintf(veth.ns, sizeof(veth.ns), "vdt%u", pid);
    snprintf(veth.ip, sizeof(veth.ip), "10.200.%u.1", pid % 254 + 1);
    veth.made = false;
    veth_remove(); /* left over by a crashed run with the same process id */
    veth.why[0] = 0;
    if (veth_sh("ip netns add %s", veth.ns) ||
        veth_sh("ip link add %sa type veth peer name %sb netns %s", veth.ns, veth.ns, veth.ns) ||
        veth_sh("ip addr add %s/24 dev %sa", veth.ip, veth.ns) ||
        veth_sh("ip link set %sa up", veth.ns) || veth_sh("ip -n %s link set %sb up", veth.ns, veth.ns)) {
        char why[sizeof(veth.why)];
        snprintf(why, sizeof(why), "%s", veth.why);
        veth_remove();
        snprintf(veth.why, sizeof(veth.why), "%s", why);
    } else {
        veth.made = true;
    }
    return fx_setup(state);
}

static int veth_teardown(void **state)
{
    int rc = fx_teardown(state);
    if (veth.made)
        veth_remove();
    return rc;
}

/* Without a secret only loopback peers are accepted, on both ends; with one, any address. */
static void test_loopback_only(void **state)
{
    struct fx *fx = *state;
    if (!veth.made)
        VD_SKIP("no non-loopback address could be made (root and iproute2 are needed): %s", veth.why);
    const char *ip = veth.ip;
    struct vd_err err;
    struct node a = {0}, b = {0}, c = {0}, d = {0};
    struct vd_transport_opts o = {.loop = &fx->loop, .bind = ip, .on_frame = on_rx};
    /* b, without a secret, on a non-loopback address: a connection from there is refused
     * before a byte is sent */
    o.self_id = 2;
    o.ctx = &b;
    assert_int_equal(vd_transport_start(&o, &b.t, &err), 0);
    adopt(fx, &b);
    int raw = raw_connect_ip(ip, vd_transport_port(b.t));
    size_t got = 0;
    WAIT_FOR(fx, raw_gone(raw, &got), 5000);
    assert_int_equal(got, 0);
    close(raw);

    /* a, without a secret, dialing a non-loopback address hangs up without a HELLO */
    node_start(fx, &a, 1, NULL);
    int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    inet_pton(AF_INET, ip, &sa.sin_addr);
    assert_int_equal(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(l, 4), 0);
    socklen_t sl = sizeof(sa);
    getsockname(l, (struct sockaddr *)&sa, &sl);
    char addr[64];
    snprintf(addr, sizeof(addr), "%s:%u", ip, (unsigned)ntohs(sa.sin_port));
    vd_transport_set_peer(a.t, 5, addr);
    assert_int_equal(send_str(&a, 5, "a->5"), 0);
    int fd = -1;
    WAIT_FOR(fx, (fd = accept(l, NULL, NULL)) >= 0, 5000);
    uint8_t ch[VD_FRAME_HDR + 32] = {0};
    size_t n = make_frame(ch, VD_FRAME_CHALLENGE, ch + VD_FRAME_HDR, 32);
    assert_int_equal(send(fd, ch, n, MSG_NOSIGNAL), (ssize_t)n);
    got = 0;
    WAIT_FOR(fx, raw_gone(fd, &got), 5000);
    assert_int_equal(got, 0);
    close(fd);
    close(l);
    assert_false(vd_transport_connected(a.t, 5));

    node_start(fx, &c, 3, "shared");
    o.self_id = 4;
    o.ctx = &d;
    o.secret = "shared";
    assert_int_equal(vd_transport_start(&o, &d.t, &err), 0);
    adopt(fx, &d);
    snprintf(d.addr, sizeof(d.addr), "%s:%u", ip, (unsigned)vd_transport_port(d.t));
    vd_transport_set_peer(c.t, 4, d.addr);
    assert_int_equal(send_str(&c, 4, "c->d"), 0);
    WAIT_FOR(fx, d.n_rx == 1, 5000);
    assert_rx(&d, 0, 3, c.addr, "c->d");
    node_stop(&a);
    node_stop(&b);
    node_stop(&c);
    node_stop(&d);
}

/* Two nodes dialing each other at once end with one connection both keep: after it settles,
 * nothing is lost and nobody redials. */
static void test_simultaneous_dial(void **state)
{
    struct fx *fx = *state;
    struct node a = {0}, b = {0};
    node_start(fx, &a, 1, "k");
    node_start(fx, &b, 2, "k");
    vd_transport_set_peer(a.t, 2, b.addr);
    vd_transport_set_peer(b.t, 1, a.addr);
    assert_int_equal(send_str(&a, 2, "hi"), 0);
    assert_int_equal(send_str(&b, 1, "hi"), 0);
    WAIT_FOR(fx, vd_transport_connected(a.t, 2) && vd_transport_connected(b.t, 1), 5000);
    run_for(fx, 200); /* the losing connection closes on both ends */
    size_t a0 = a.n_rx, b0 = b.n_rx;
    for (int i = 0; i < 20; i++) {
        char m[16];
        snprintf(m, sizeof(m), "round %d", i);
        assert_int_equal(send_str(&a, 2, m), 0);
        assert_int_equal(send_str(&b, 1, m), 0);
        WAIT_FOR(fx, a.n_rx == a0 + (size_t)i + 1 && b.n_rx == b0 + (size_t)i + 1, 5000);
        assert_rx(&a, a0 + (size_t)i, 2, b.addr, m);
        assert_rx(&b, b0 + (size_t)i, 1, a.addr, m);
        run_for(fx, 10);
    }
    assert_true(vd_transport_connected(a.t, 2) && vd_transport_connected(b.t, 1));
    node_stop(&a);
    node_stop(&b);
}

static void test_peer_restart(void **state)
{
    struct fx *fx = *state;
    struct node a = {0}, b = {0};
    node_start(fx, &a, 1, NULL);
    node_start(fx, &b, 2, NULL);
    vd_transport_set_peer(a.t, 2, b.addr);
    assert_int_equal(send_str(&a, 2, "first"), 0);
    WAIT_FOR(fx, b.n_rx == 1, 5000);
    uint16_t port = b.port;
    node_stop(&b);
    WAIT_FOR(fx, !vd_transport_connected(a.t, 2), 5000);
    char msg[16];
    for (int i = 0; i < 5; i++) {
        snprintf(msg, sizeof(msg), "queued %d", i);
        assert_int_equal(send_str(&a, 2, msg), 0);
    }
    run_for(fx, 300); /* the peer stays down while a's dials fail and back off */
    node_start_opts(fx, &b, 2, port, NULL, 0);
    WAIT_FOR(fx, b.n_rx == 5, 10000);
    for (int i = 0; i < 5; i++) {
        snprintf(msg, sizeof(msg), "queued %d", i);
        assert_rx(&b, (size_t)i, 1, a.addr, msg);
    }
    assert_true(vd_transport_connected(a.t, 2));
    node_stop(&a);
    node_stop(&b);
}

static void test_garbage_and_oversize(void **state)
{
    struct fx *fx = *state;
    struct node a = {0}, b = {0}, small = {0};
    node_start(fx, &a, 1, NULL);
    node_start(fx, &b, 2, NULL);
    node_start_opts(fx, &small, 3, 0, NULL, 1024);
    vd_transport_set_peer(a.t, 2, b.addr);
    vd_transport_set_peer(a.t, 3, small.addr);

    int g = raw_connect(a.port);
    const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(send(g, junk, sizeof(junk) - 1, MSG_NOSIGNAL), (ssize_t)sizeof(junk) - 1);
    int o = raw_connect(a.port);
    uint8_t hdr[VD_FRAME_HDR];
    vd__frame_header(VD_FRAME_HELLO, NULL, 0, hdr);
    vd_be32_put(hdr + 4, 0x7ffffff0u);
    assert_int_equal(send(o, hdr, sizeof(hdr), MSG_NOSIGNAL), (ssize_t)sizeof(hdr));
    WAIT_FOR(fx, raw_closed(g) && raw_closed(o), 5000);
    close(g);
    close(o);

    /* a frame over the receiver's limit closes the connection; the next one gets through */
    uint8_t big[2048];
    memset(big, 7, sizeof(big));
    assert_int_equal(send_str(&a, 3, "hello"), 0);
    WAIT_FOR(fx, small.n_rx == 1 && vd_transport_connected(a.t, 3), 5000);
    assert_int_equal(vd_transport_send(a.t, 3, VD_FRAME_USER, big, sizeof(big)), 0);
    WAIT_FOR(fx, !vd_transport_connected(a.t, 3), 5000);
    assert_int_equal(send_str(&a, 3, "again"), 0);
    WAIT_FOR(fx, small.n_rx == 2, 5000);
    assert_rx(&small, 1, 1, a.addr, "again");
    /* the sender refuses what it would itself refuse */
    assert_int_equal(vd_transport_send(small.t, 1, VD_FRAME_USER, big, sizeof(big)), VD_ETOOBIG);

    /* and a still serves real peers */
    assert_int_equal(send_str(&a, 2, "still here"), 0);
    WAIT_FOR(fx, b.n_rx == 1, 5000);
    assert_int_equal(send_str(&b, 1, "me too"), 0);
    WAIT_FOR(fx, a.n_rx == 1, 5000);
    assert_rx(&a, 0, 2, b.addr, "me too");
    node_stop(&a);
    node_stop(&b);
    node_stop(&small);
}

/* ---- the clock gate: a raw peer stamps its frames with whatever HLC a test wants ----------- */

struct rawp {
    int fd;
    uint8_t buf[4096];
    size_t n;
};

/* Runs the loop until the next whole frame from the node is in; returns its type and copies its
 * body (HLC included for a user frame) into body[*len]. */
static uint8_t rawp_next(struct fx *fx, struct rawp *p, uint8_t *body, size_t *len)
{
    struct vd_frame f;
    size_t used = 0;
    WAIT_FOR(fx,
             (p->n += raw_recv(p->fd, p->buf + p->n, sizeof(p->buf) - p->n),
              vd__frame_decode(p->buf, p->n, 2048, &f, &used) == 0 && used),
             5000);
    uint8_t type = f.type;
    memcpy(body, f.body, f.len);
    *len = f.len;
    memmove(p->buf, p->buf + used, p->n - used);
    p->n -= used;
    return type;
}

/* One user frame: hlc ‖ body. */
static void rawp_send(struct rawp *p, uint8_t type, uint64_t hlc, const void *body, size_t len)
{
    uint8_t inner[VD_FRAME_HLC + 64], out[VD_FRAME_HDR + sizeof(inner)];
    assert_true(len <= 64);
    vd_be64_put(inner, hlc);
    memcpy(inner + VD_FRAME_HLC, body, len);
    size_t n = make_frame(out, type, inner, (uint32_t)(VD_FRAME_HLC + len));
    assert_int_equal(send(p->fd, out, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* Dials port and runs the dialer's handshake as node id without a secret (a loopback peer), for
 * channel chan (0: control, sent without a channel byte as before channels existed). */
static void rawp_open_chan(struct fx *fx, struct rawp *p, uint16_t port, uint64_t id, uint8_t chan)
{
    memset(p, 0, sizeof(*p));
    p->fd = raw_connect(port);
    uint8_t b[512], hello[8 + 2 + 11 + 32 + 1], out[VD_FRAME_HDR + sizeof(hello)];
    size_t len;
    assert_int_equal(rawp_next(fx, p, b, &len), VD_FRAME_CHALLENGE);
    vd_be64_put(hello, id);
    hello[8] = 0;
    hello[9] = 11;
    memcpy(hello + 10, "127.0.0.1:7", 11);
    randombytes_buf(hello + 21, 32);
    hello[53] = chan;
    size_t n = make_frame(out, VD_FRAME_HELLO, hello, sizeof(hello) - (chan ? 0 : 1));
    assert_int_equal(send(p->fd, out, n, MSG_NOSIGNAL), (ssize_t)n);
    assert_int_equal(rawp_next(fx, p, b, &len), VD_FRAME_WELCOME);
}

static void rawp_open(struct fx *fx, struct rawp *p, uint16_t port, uint64_t id)
{
    rawp_open_chan(fx, p, port, id, 0);
}

/* Lines of stderr written while the capture runs, into a temporary file. */
struct capture {
    int saved;
    FILE *f;
};

static void capture_start(struct capture *c)
{
    c->f = tmpfile();
    assert_non_null(c->f);
    c->saved = dup(STDERR_FILENO);
    assert_true(c->saved >= 0);
    assert_true(dup2(fileno(c->f), STDERR_FILENO) >= 0);
}

/* Stops capturing; returns how many captured lines contain every one of the n words. */
static int capture_stop(struct capture *c, const char *const *words, size_t n)
{
    dup2(c->saved, STDERR_FILENO);
    close(c->saved);
    rewind(c->f);
    char line[1024];
    int hits = 0;
    while (fgets(line, sizeof(line), c->f)) {
        fputs(line, stderr);
        bool all = true;
        for (size_t i = 0; i < n; i++)
            all = all && strstr(line, words[i]);
        hits += all;
    }
    fclose(c->f);
    return hits;
}

/*
 * A data frame stamped more than the maximum offset ahead of the receiver's wall clock is not
 * delivered: the sender gets VD_FRAME_SKEW naming the frame's request id and the offset, and the
 * receiver logs the peer and the offset once (not once per frame), and does not observe the
 * HLC. A Raft frame with the same stamp is delivered and not observed either. A data frame
 * within the offset is delivered and observed. None of it closes the connection.
 */
static void test_clock_gate(void **state)
{
    struct fx *fx = *state;
    struct node b = {0};
    node_start(fx, &b, 2, NULL);
    struct rawp p;
    rawp_open(fx, &p, b.port, 7);

    uint64_t now = vd_wall_ms();
    uint64_t far = VD_HLC_MAKE(now + 5000, 3);
    uint8_t req[9];
    vd_be64_put(req, 77);
    req[8] = 'x';
    struct capture cap;
    capture_start(&cap);
    rawp_send(&p, VD_FRAME_DATA, far, req, sizeof(req));
    rawp_send(&p, VD_FRAME_DATA + 1, far, req, sizeof(req));
    uint8_t body[512];
    size_t len;
    uint8_t types[2];
    uint64_t ahead[2];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(rawp_next(fx, &p, body, &len), VD_FRAME_SKEW);
        assert_int_equal(len, VD_FRAME_HLC + VD_FRAME_SKEW_LEN);
        const uint8_t *s = body + VD_FRAME_HLC;
        types[i] = s[0];
        assert_int_equal(vd_be64_get(s + 1), 77);
        ahead[i] = vd_be64_get(s + 9);
        assert_int_equal(vd_be64_get(s + 17), VD_MAX_CLOCK_OFFSET_MS_DEFAULT);
    }
    static const char *const words[] = {"refused", "node 7", "ms ahead", "max-clock-offset 500"};
    int logged = capture_stop(&cap, words, 4);
    assert_int_equal(types[0], VD_FRAME_DATA);
    assert_int_equal(types[1], VD_FRAME_DATA + 1);
    for (int i = 0; i < 2; i++)
        assert_true(ahead[i] > 4000 && ahead[i] <= 5000);
    assert_int_equal(logged, 1);
    assert_int_equal(b.n_rx, 0);
    assert_true(vd_hlc_now() < far);

    /* Raft: delivered with its stamp, which is not observed */
    rawp_send(&p, VD_FRAME_RAFT, far, "raft", 4);
    WAIT_FOR(fx, b.n_rx == 1, 5000);
    assert_int_equal(b.rx[0].type, VD_FRAME_RAFT);
    assert_int_equal(b.rx[0].hlc, far);
    assert_memory_equal(b.rx[0].body, "raft", 4);
    assert_true(vd_hlc_now() < far);

    /* within the offset: delivered and observed */
    uint64_t near = VD_HLC_MAKE(vd_wall_ms() + 300, 9);
    rawp_send(&p, VD_FRAME_DATA, near, req, sizeof(req));
    WAIT_FOR(fx, b.n_rx == 2, 5000);
    assert_int_equal(b.rx[1].type, VD_FRAME_DATA);
    assert_int_equal(b.rx[1].hlc, near);
    assert_int_equal(b.rx[1].len, sizeof(req));
    assert_true(vd_hlc_now() > near);
    assert_false(raw_closed(p.fd));

    /* a user frame too short to hold a stamp is refused with the connection */
    uint8_t out[VD_FRAME_HDR + 4];
    size_t n = make_frame(out, VD_FRAME_RAFT, (const uint8_t *)"abcd", 4);
    assert_int_equal(send(p.fd, out, n, MSG_NOSIGNAL), (ssize_t)n);
    WAIT_FOR(fx, raw_closed(p.fd), 5000);
    assert_int_equal(b.n_rx, 2);
    close(p.fd);
    node_stop(&b);
}

/* A peer of another frame version is refused at the handshake, and the log says so. */
static void test_other_version(void **state)
{
    struct fx *fx = *state;
    struct node b = {0};
    node_start(fx, &b, 2, NULL);
    struct rawp p;
    memset(&p, 0, sizeof(p));
    p.fd = raw_connect(b.port);
    uint8_t body[512];
    size_t len;
    assert_int_equal(rawp_next(fx, &p, body, &len), VD_FRAME_CHALLENGE);
    uint8_t hello[VD_FRAME_HDR + 8];
    make_frame(hello, VD_FRAME_HELLO, (const uint8_t *)"12345678", 8);
    hello[2] = 1;
    struct capture cap;
    capture_start(&cap);
    assert_int_equal(send(p.fd, hello, sizeof(hello), MSG_NOSIGNAL), (ssize_t)sizeof(hello));
    WAIT_FOR(fx, raw_closed(p.fd), 5000);
    static const char *const words[] = {"refused", "frame version 1", "version 2"};
    assert_int_equal(capture_stop(&cap, words, 3), 1);
    close(p.fd);
    node_stop(&b);
}

/* The per-peer queue keeps the newest frames within its byte bound. */
static void test_queue_bound(void **state)
{
    struct fx *fx = *state;
    struct node a = {0}, b = {0};
    struct vd_transport_opts o = {.loop = &fx->loop,
                                  .self_id = 1,
                                  .bind = "127.0.0.1",
                                  .max_queue = 10 * (VD_FRAME_HDR + VD_FRAME_HLC + 100),
                                  .on_frame = on_rx,
                                  .ctx = &a};
    struct vd_err err;
    assert_int_equal(vd_transport_start(&o, &a.t, &err), 0);
    adopt(fx, &a);
    snprintf(a.addr, sizeof(a.addr), "127.0.0.1:%u", (unsigned)vd_transport_port(a.t));
    uint16_t port = dead_port();
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", (unsigned)port);
    vd_transport_set_peer(a.t, 2, addr);
    for (uint32_t i = 0; i < 25; i++) {
        uint8_t body[100] = {0};
        vd_be32_put(body, i);
        assert_int_equal(vd_transport_send(a.t, 2, VD_FRAME_USER, body, sizeof(body)), 0);
    }
    run_for(fx, 100);
    node_start_opts(fx, &b, 2, port, NULL, 0);
    WAIT_FOR(fx, b.n_rx == 10, 10000);
    run_for(fx, 50);
    assert_int_equal(b.n_rx, 10);
    for (uint32_t i = 0; i < 10; i++)
        assert_int_equal(vd_be32_get(b.rx[i].body), 15 + i);
    node_stop(&a);
    node_stop(&b);
}

/* Closing with frames queued, in flight, dialing and half-handshaken frees everything (the
 * sanitizer build checks for leaks; the loop must end with no handle left). */
static void test_close_pending(void **state)
{
    struct fx *fx = *state;
    struct node a = {0}, b = {0};
    node_start(fx, &a, 1, NULL);
    node_start(fx, &b, 2, NULL);
    vd_transport_set_peer(a.t, 2, b.addr);
    assert_int_equal(send_str(&a, 2, "up"), 0);
    WAIT_FOR(fx, b.n_rx == 1, 5000);
    uint8_t *chunk = calloc(1, 256 << 10);
    for (int i = 0; i < 40; i++)
        assert_int_equal(vd_transport_send(a.t, 2, VD_FRAME_USER, chunk, 256 << 10), 0);
    free(chunk);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", (unsigned)dead_port());
    vd_transport_set_peer(a.t, 3, addr);
    assert_int_equal(send_str(&a, 3, "nobody"), 0);
    assert_int_equal(vd_transport_send_addr(a.t, "localhost:1", VD_FRAME_USER, "x", 1), 0);
    char host[256];
    if (gethostname(host, sizeof(host)) == 0) {
        snprintf(addr, sizeof(addr), "%s:1", host);
        vd_transport_send_addr(a.t, addr, VD_FRAME_USER, "x", 1); /* resolving when closed */
    }
    int raw = raw_connect(a.port); /* accepted, never answers the challenge */
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    node_stop(&a);
    node_stop(&b);
    close(raw);
}

static void test_start_errors(void **state)
{
    struct fx *fx = *state;
    struct node a = {0};
    node_start(fx, &a, 1, NULL);
    struct vd_transport *t = NULL;
    struct vd_err err;
    struct vd_transport_opts o = {
        .loop = &fx->loop, .self_id = 2, .bind = "127.0.0.1", .port = a.port};
    assert_int_equal(vd_transport_start(&o, &t, &err), VD_EIO);
    assert_null(t);
    assert_non_null(strstr(err.msg, "127.0.0.1"));
    o.port = 0;
    o.bind = "not an address!";
    assert_true(vd_transport_start(&o, &t, &err) != 0);
    o.bind = "127.0.0.1";
    o.self_id = 0;
    assert_int_equal(vd_transport_start(&o, &t, &err), VD_EINVAL);
    /* IPv6 loopback with a bracketed address, when the host has it */
    o.self_id = 2;
    o.bind = "::1";
    o.on_frame = on_rx;
    struct node b = {0};
    o.ctx = &b;
    if (vd_transport_start(&o, &b.t, &err) == 0) {
        adopt(fx, &b);
        snprintf(b.addr, sizeof(b.addr), "[::1]:%u", (unsigned)vd_transport_port(b.t));
        vd_transport_set_peer(a.t, 2, b.addr);
        assert_int_equal(send_str(&a, 2, "six"), 0);
        WAIT_FOR(fx, b.n_rx == 1, 5000);
        assert_rx(&b, 0, 1, a.addr, "six");
        node_stop(&b);
    }
    node_stop(&a);
}

/* ---- data transport ---------------------------------------------------------------------------
 * Requests between two real transports on loopback, with a vd_data on each; the handler runs on
 * the workers, and its results are checked from the loop. */

/* Chunk sequences, good and bad, through the reassembler alone. */
static void test_chunk_reasm(void **state)
{
    (void)state;
    enum { N = 3000 };
    static uint8_t msg[N];
    for (size_t i = 0; i < N; i++)
        msg[i] = (uint8_t)(i * 7);
    uint64_t w[3] = {11, 22, 33};
    struct vd__reasm r = {0};
    struct vd__reasm_msg m;
    struct vd_err err;
    uint64_t id;
    uint8_t c[VD_CHUNK_HDR + VD_CHUNK_HEAD + 1000];
    /* three chunks of 1000 bytes */
    for (uint32_t seq = 0; seq < 3; seq++) {
        size_t h = vd__chunk_header(9, seq, seq == 2, N, w, c);
        memcpy(c + h, msg + seq * 1000, 1000);
        int rc = vd__reasm_feed(&r, c, h + 1000, N, false, &id, &m, &err);
        assert_int_equal(id, 9);
        assert_int_equal(rc, seq == 2 ? VD_REASM_DONE : VD_REASM_MORE);
    }
    assert_int_equal(m.id, 9);
    assert_int_equal(m.len, N);
    assert_memory_equal(m.buf, msg, N);
    assert_int_equal(m.w[0], 11);
    assert_int_equal(m.w[2], 33);
    free(m.buf);
    /* an empty message is one chunk */
    size_t h = vd__chunk_header(10, 0, true, 0, w, c);
    assert_int_equal(vd__reasm_feed(&r, c, h, N, false, &id, &m, &err), VD_REASM_DONE);
    assert_int_equal(m.len, 0);
    free(m.buf);
    /* a refused chunk drops its message, which still has to end properly */
    h = vd__chunk_header(11, 0, false, 2, w, c);
    c[h] = 1;
    assert_int_equal(vd__reasm_feed(&r, c, h + 1, N, true, &id, &m, &err), VD_REASM_MORE);
    h = vd__chunk_header(11, 1, true, 2, w, c);
    c[h] = 2;
    assert_int_equal(vd__reasm_feed(&r, c, h + 1, N, false, &id, &m, &err), VD_REASM_DROPPED);
    assert_false(r.open);

    /* malformed sequences: each is an error with a reason */
    struct {
        uint64_t id;
        uint32_t seq;
        bool last;
        uint32_t total;
        size_t payload;
    } bad[][2] = {
        {{1, 1, true, 5, 5}},                     /* no chunk 0 */
        {{1, 0, true, N + 1, 0}},                 /* over the limit */
        {{1, 0, false, 10, 5}, {2, 0, true, 5, 5}}, /* interleaved */
        {{1, 0, false, 10, 5}, {1, 2, true, 10, 5}}, /* gap */
        {{1, 0, true, 10, 5}},                    /* ends short */
        {{1, 0, false, 4, 4}, {1, 1, true, 4, 1}}, /* longer than announced */
    };
    int want[] = {VD_ECORRUPT, VD_ETOOBIG, VD_ECORRUPT, VD_ECORRUPT, VD_ECORRUPT, VD_ECORRUPT};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = 0;
        for (int k = 0; k < 2 && rc >= 0 && (k == 0 || bad[i][k].total); k++) {
            h = vd__chunk_header(bad[i][k].id, bad[i][k].seq, bad[i][k].last, bad[i][k].total, w,
                                 c);
            memset(c + h, 0, bad[i][k].payload);
            err.msg[0] = 0;
            rc = vd__reasm_feed(&r, c, h + bad[i][k].payload, N, false, &id, &m, &err);
        }
        assert_int_equal(rc, want[i]);
        assert_true(strlen(err.msg) > 10);
        vd__reasm_release(&r);
    }
    /* short chunks and unknown flags */
    assert_int_equal(vd__reasm_feed(&r, c, VD_CHUNK_HDR - 1, N, false, &id, &m, &err),
                     VD_ECORRUPT);
    h = vd__chunk_header(3, 0, true, 0, w, c);
    assert_int_equal(vd__reasm_feed(&r, c, h - 1, N, false, &id, &m, &err), VD_ECORRUPT);
    c[12] = 0x80;
    assert_int_equal(vd__reasm_feed(&r, c, h, N, false, &id, &m, &err), VD_ECORRUPT);
    vd__reasm_release(&r);
}

static uv_thread_t loop_thread;

/* What the handler saw, per request number (the body's first 4 bytes). */
#define DREQ_MAX 2048
struct dserve {
    atomic_int seen[DREQ_MAX];
    atomic_int on_loop;
    atomic_int calls;
    struct vd_data_hdr last_hdr;
};

/* Replies "re:" ‖ the request's number ‖ its length ‖ a checksum of its bytes. */
static int dserve_handler(void *ctx, uint64_t from, const struct vd_data_hdr *h,
                          const uint8_t *req, size_t len, struct vd_buf *reply)
{
    struct dserve *s = ctx;
    (void)from;
    uv_thread_t self = uv_thread_self();
    if (uv_thread_equal(&self, &loop_thread))
        atomic_fetch_add(&s->on_loop, 1);
    atomic_fetch_add(&s->calls, 1);
    if (len >= 4 && vd_be32_get(req) == 0)
        s->last_hdr = *h; /* one request writes it: workers run at once */
    if (len < 4)
        return VD_EINVAL;
    uint32_t n = vd_be32_get(req);
    if (n < DREQ_MAX)
        atomic_fetch_add(&s->seen[n], 1);
    uint8_t out[3 + 4 + 8 + 4];
    memcpy(out, "re:", 3);
    memcpy(out + 3, req, 4);
    vd_be64_put(out + 7, len);
    vd_be32_put(out + 15, vd_crc32c(0, req, len));
    vd_buf_append(reply, out, sizeof(out));
    return 0;
}

struct dres {
    int calls;
    enum vd_data_outcome outcome;
    int status;
    uint8_t reply[32];
    size_t len;
    uint64_t at_ms;
};

static void dres_done(void *arg, enum vd_data_outcome outcome, int status, const uint8_t *reply,
                      size_t len)
{
    struct dres *r = arg;
    r->calls++;
    r->outcome = outcome;
    r->status = status;
    r->len = len;
    r->at_ms = vd_wall_ms();
    if (reply)
        memcpy(r->reply, reply, len < sizeof(r->reply) ? len : sizeof(r->reply));
}

/* How many of r[0..n) have ended. */
static int dres_count(const struct dres *r, int n)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        k += r[i].calls > 0;
    return k;
}

static struct vd_data *data_start(struct fx *fx, struct node *n, struct dserve *s,
                                  uint32_t max_message, uint32_t window)
{
    struct vd_data_opts o = {
        .loop = &fx->loop,
        .tp = n->t,
        .handler = dserve_handler,
        .ctx = s,
        .max_message = max_message,
        .window = window,
    };
    struct vd_data *d;
    struct vd_err err;
    assert_int_equal(vd_data_start(&o, &d, &err), 0);
    for (int i = 0; i < 16; i++) {
        if (!fx->live_data[i]) {
            fx->live_data[i] = d;
            return d;
        }
    }
    fail_msg("too many data transports");
    return NULL;
}

static void data_stop(struct fx *fx, struct vd_data *d)
{
    for (int i = 0; i < 16; i++)
        if (fx->live_data[i] == d)
            fx->live_data[i] = NULL;
    vd_data_close(d);
}

/* A request of len bytes numbered n (its first 4 bytes), the rest a pattern of n. */
static int dsend(struct vd_data *d, uint64_t to, uint32_t n, size_t len, uint64_t deadline_ms,
                 struct dres *r, size_t *queued)
{
    uint8_t *b = malloc(len < 4 ? 4 : len);
    vd_be32_put(b, n);
    for (size_t i = 4; i < len; i++)
        b[i] = (uint8_t)(n + i);
    struct vd_data_hdr h = {.incarnation = 0x8000000000000005ull,
                            .ring_version = 42,
                            .deadline_ms = deadline_ms};
    int rc = vd_data_send(d, to, &h, b, len, dres_done, r, queued);
    free(b);
    return rc;
}

/* The reply to request n of len bytes, as dserve_handler makes it. */
static void assert_dreply(const struct dres *r, uint32_t n, size_t len)
{
    assert_int_equal(r->calls, 1);
    assert_int_equal(r->outcome, VD_DATA_REPLIED);
    assert_int_equal(r->status, 0);
    assert_int_equal(r->len, 19);
    assert_memory_equal(r->reply, "re:", 3);
    assert_int_equal(vd_be32_get(r->reply + 3), n);
    assert_int_equal(vd_be64_get(r->reply + 7), len);
    uint8_t *b = malloc(len);
    vd_be32_put(b, n);
    for (size_t i = 4; i < len; i++)
        b[i] = (uint8_t)(n + i);
    assert_int_equal(vd_be32_get(r->reply + 15), vd_crc32c(0, b, len));
    free(b);
}

static void two_nodes(struct fx *fx, struct node *a, struct node *b, const char *secret)
{
    node_start(fx, a, 1, secret);
    node_start(fx, b, 2, secret);
    vd_transport_set_peer(a->t, 2, b->addr);
    vd_transport_set_peer(b->t, 1, a->addr);
}

/*
 * Small and 5 MiB requests round trip on an authenticated data connection: each is handled once,
 * whole, on a worker thread, with the header it was sent with, and its reply reaches the right
 * callback. The data connection is not the control one: control frames still flow.
 */
static void test_data_roundtrip(void **state)
{
    struct fx *fx = *state;
    loop_thread = uv_thread_self();
    struct node a = {0}, b = {0};
    two_nodes(fx, &a, &b, "s3cret");
    static struct dserve sa, sb;
    memset(&sa, 0, sizeof(sa));
    memset(&sb, 0, sizeof(sb));
    struct vd_data *da = data_start(fx, &a, &sa, 0, 0), *db = data_start(fx, &b, &sb, 0, 0);
    static struct dres r[8];
    memset(r, 0, sizeof(r));
    uint64_t dl = vd_wall_ms() + 20000;
    size_t big = (size_t)5 << 20;
    assert_int_equal(dsend(da, 2, 0, 10, dl, &r[0], NULL), 0);
    assert_int_equal(dsend(da, 2, 1, big, dl, &r[1], NULL), 0);
    assert_int_equal(dsend(da, 2, 2, VD_DATA_FRAME_MAX, dl, &r[2], NULL), 0);
    assert_int_equal(dsend(db, 1, 3, 4, dl, &r[3], NULL), 0); /* and the other way */
    assert_int_equal(r[0].calls + r[1].calls, 0);            /* never from inside send */
    assert_int_equal(send_str(&a, 2, "control"), 0);
    WAIT_FOR(fx, r[0].calls && r[1].calls && r[2].calls && r[3].calls && b.n_rx == 1, 10000);
    assert_dreply(&r[0], 0, 10);
    assert_dreply(&r[1], 1, big);
    assert_dreply(&r[2], 2, VD_DATA_FRAME_MAX);
    assert_dreply(&r[3], 3, 4);
    assert_int_equal(atomic_load(&sb.seen[1]), 1);
    assert_int_equal(atomic_load(&sb.calls), 3);
    assert_int_equal(atomic_load(&sb.on_loop) + atomic_load(&sa.on_loop), 0);
    assert_int_equal(sb.last_hdr.incarnation, 0x8000000000000005ull);
    assert_int_equal(sb.last_hdr.ring_version, 42);
    assert_int_equal(sb.last_hdr.deadline_ms, dl);
    assert_true(vd_transport_data_connected(a.t, 2) && vd_transport_connected(a.t, 2));
    /* too big and unknown node: refused at once, no callback */
    assert_int_equal(dsend(da, 2, 4, (32u << 20) + 1, dl, &r[4], NULL), VD_ETOOBIG);
    assert_int_equal(dsend(da, 9, 4, 4, dl, &r[4], NULL), VD_ENOTFOUND);
    run_for(fx, 50);
    assert_int_equal(r[4].calls, 0);
    data_stop(fx, da);
    data_stop(fx, db);
    node_stop(&a);
    node_stop(&b);
}

/* Loop-thread side of the starvation test: Raft-like heartbeats from a to b on the control
 * connection, and a steady stream of requests from a to b on the data connection. */
struct flood {
    struct node *a, *b;
    struct vd_data *da;
    struct dres *res;
    uint32_t sent, max;
    size_t req_len;
    size_t queued_peak;
    uv_timer_t hb, data;
};

static void on_flood_hb(uv_timer_t *t)
{
    struct flood *f = t->data;
    vd_transport_send(f->a->t, 2, VD_FRAME_RAFT, "hb", 2);
}

static void on_flood_data(uv_timer_t *t)
{
    struct flood *f = t->data;
    for (int i = 0; i < 2 && f->sent < f->max; i++) {
        size_t q = 0;
        assert_int_equal(dsend(f->da, 2, f->sent, f->req_len, vd_wall_ms() + 60000,
                               &f->res[f->sent], &q),
                         0);
        f->sent++;
        if (q > f->queued_peak)
            f->queued_peak = q;
    }
}

/*
 * While b's data workers are paused, a keeps sending requests: b's credit runs out, the rest
 * waits in a's queue (reported to the caller), and b's heartbeats keep arriving: the largest gap
 * between two stays under a quarter of the default election timeout (250 ms of 1000, at the
 * default 100 ms heartbeat). Once the workers resume, every request is handled exactly once and
 * answered.
 */
static void test_data_pause_no_starvation(void **state)
{
    struct fx *fx = *state;
    loop_thread = uv_thread_self();
    struct node a = {0}, b = {0};
    two_nodes(fx, &a, &b, "s3cret");
    static struct dserve sb;
    memset(&sb, 0, sizeof(sb));
    enum { MAX_MSG = 1 << 20, REQ = 48 << 10, N = 600, HB_MS = 100, ELECTION_MS = 1000 };
    struct vd_data *da = data_start(fx, &a, NULL, MAX_MSG, 1), *db = data_start(fx, &b, &sb, MAX_MSG, 1);
    static struct dres res[N];
    memset(res, 0, sizeof(res));
    /* connected both ways before the clock starts */
    assert_int_equal(send_str(&a, 2, "hi"), 0);
    WAIT_FOR(fx, b.n_rx == 1, 5000);
    vd_data_pause_workers(db, true);

    /* static: its timers are freed by the loop after this function returns */
    static struct flood f;
    f = (struct flood){.a = &a, .b = &b, .da = da, .res = res, .max = N, .req_len = REQ};
    uv_timer_init(&fx->loop, &f.hb);
    uv_timer_init(&fx->loop, &f.data);
    f.hb.data = f.data.data = &f;
    uv_timer_start(&f.hb, on_flood_hb, HB_MS, HB_MS);
    uv_timer_start(&f.data, on_flood_data, 0, 5);
    /* 600 requests of 48 KiB at 2 per 5 ms: 1.5 s, about 28 MiB against a 2 MiB window */
    uint64_t t0 = uv_hrtime();
    size_t seen = b.n_rx;
    uint64_t last = 0, max_gap = 0, sum_gap = 0, n_gap = 0;
    while (f.sent < N || uv_hrtime() - t0 < 2000000000ull) {
        uv_run(&fx->loop, UV_RUN_ONCE);
        while (seen < b.n_rx) {
            if (b.rx[seen].type == VD_FRAME_RAFT) {
                uint64_t now = uv_hrtime() / 1000000u;
                if (last) {
                    uint64_t gap = now - last;
                    max_gap = gap > max_gap ? gap : max_gap;
                    sum_gap += gap;
                    n_gap++;
                }
                last = now;
            }
            seen++;
        }
        assert_true(uv_hrtime() - t0 < 30000000000ull);
    }
    uv_timer_stop(&f.data);
    uv_timer_stop(&f.hb);
    struct vd_data_stats st;
    vd_data_stats(db, &st);
    size_t served_paused = (size_t)st.served;
    size_t queued_end = vd_data_queued(da, 2);
    print_message("data flood with paused workers: %u requests of %u KiB sent; heartbeats every "
                  "%d ms: %llu gaps, max %llu ms, mean %llu ms (limit %d ms); sender queue peak "
                  "%zu KiB, at the end %zu KiB; receiver held at most %llu KiB\n",
                  f.sent, REQ >> 10, HB_MS, (unsigned long long)n_gap,
                  (unsigned long long)max_gap,
                  (unsigned long long)(n_gap ? sum_gap / n_gap : 0), ELECTION_MS / 4,
                  f.queued_peak >> 10, queued_end >> 10, (unsigned long long)(st.held_max >> 10));
    assert_true(n_gap >= 15);
    assert_true(max_gap < ELECTION_MS / 4);
    assert_int_equal(served_paused, 0);
    /* backpressure: most of it waited at the sender, the receiver held no more than a window */
    assert_true(queued_end > (size_t)16 << 20);
    assert_true(st.held_max <= 2u * MAX_MSG + 4096);
    for (int i = 0; i < N; i++)
        assert_int_equal(res[i].calls, 0);

    vd_data_pause_workers(db, false);
    WAIT_FOR(fx, dres_count(res, N) == N, 30000);
    for (int i = 0; i < N; i++) {
        assert_dreply(&res[i], (uint32_t)i, REQ);
        assert_int_equal(atomic_load(&sb.seen[i]), 1);
    }
    assert_int_equal(atomic_load(&sb.calls), N);
    assert_int_equal(vd_data_queued(da, 2), 0);
    uv_close((uv_handle_t *)&f.hb, NULL);
    uv_close((uv_handle_t *)&f.data, NULL);
    run_for(fx, 10);
    data_stop(fx, da);
    data_stop(fx, db);
    node_stop(&a);
    node_stop(&b);
}

/* Two nodes (1 = a, 2 = b) with a vd_data each, b serving into *sb (cleared), b's workers
 * paused: the start of every test of what happens while a replica does not keep up. */
static void paused_pair(struct fx *fx, struct node *a, struct node *b, struct dserve *sb,
                        uint32_t max_message, uint32_t window, struct vd_data **da,
                        struct vd_data **db)
{
    loop_thread = uv_thread_self();
    two_nodes(fx, a, b, NULL);
    memset(sb, 0, sizeof(*sb));
    *da = data_start(fx, a, NULL, max_message, window);
    *db = data_start(fx, b, sb, max_message, window);
    vd_data_pause_workers(*db, true);
}

/*
 * Closing the data connection fails the requests it carried at once, long before their deadline;
 * requests that had not left wait for a new connection instead.
 */
static void test_data_close_fails_inflight(void **state)
{
    struct fx *fx = *state;
    struct node a = {0}, b = {0};
    static struct dserve sb;
    struct vd_data *da, *db;
    paused_pair(fx, &a, &b, &sb, 0, 0, &da, &db);
    static struct dres r[5];
    memset(r, 0, sizeof(r));
    uint64_t dl = vd_wall_ms() + 60000;
    for (uint32_t i = 0; i < 5; i++)
        assert_int_equal(dsend(da, 2, i, 100000, dl, &r[i], NULL), 0);
    struct vd_data_stats st;
    WAIT_FOR(fx, (vd_data_stats(db, &st), st.held_bytes >= 5 * 100000), 5000);
    uint64_t t0 = vd_wall_ms();
    data_stop(fx, db);
    node_stop(&b);
    WAIT_FOR(fx, dres_count(r, 5) == 5, 5000);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].outcome, VD_DATA_CLOSED);
        assert_true(r[i].at_ms - t0 < 2000);
    }
    assert_int_equal(atomic_load(&sb.calls), 0);

    /* a node that is down: the request waits (redials) until its deadline */
    static struct dres late;
    memset(&late, 0, sizeof(late));
    t0 = vd_wall_ms();
    assert_int_equal(dsend(da, 2, 9, 10, t0 + 300, &late, NULL), 0);
    WAIT_FOR(fx, late.calls == 1, 5000);
    assert_int_equal(late.outcome, VD_DATA_TIMEOUT);
    assert_true(late.at_ms >= t0 + 300 && late.at_ms < t0 + 2000);
    data_stop(fx, da);
    node_stop(&a);
}

/*
 * Deadlines: a request that gets no reply in time (workers paused) fails with a timeout near its
 * deadline; one that never got credit leaves the sender's queue and never reaches the handler;
 * one that arrived but expired while waiting is not handled either. Requests with time left are
 * served once the workers resume.
 */
static void test_data_deadline(void **state)
{
    struct fx *fx = *state;
    struct node a = {0}, b = {0};
    static struct dserve sb;
    enum { MAX_MSG = 1 << 20 };
    struct vd_data *da, *db;
    paused_pair(fx, &a, &b, &sb, MAX_MSG, 1, &da, &db);
    static struct dres r[4];
    memset(r, 0, sizeof(r));
    uint64_t t0 = vd_wall_ms();
    /* 0 and 1 fill the 2 MiB window; 2 gets no credit; 0 and 2 expire, 1 and 3 do not */
    assert_int_equal(dsend(da, 2, 0, MAX_MSG, t0 + 300, &r[0], NULL), 0);
    assert_int_equal(dsend(da, 2, 1, MAX_MSG - 64, t0 + 60000, &r[1], NULL), 0);
    size_t q = 0;
    assert_int_equal(dsend(da, 2, 2, 1000, t0 + 300, &r[2], &q), 0);
    assert_int_equal(dsend(da, 2, 3, 1000, t0 + 60000, &r[3], NULL), 0);
    WAIT_FOR(fx, r[0].calls && r[2].calls, 5000);
    assert_true(q >= 1000);
    for (int i = 0; i < 3; i += 2) {
        assert_int_equal(r[i].outcome, VD_DATA_TIMEOUT);
        assert_true(r[i].at_ms >= t0 + 300 && r[i].at_ms < t0 + 2000);
    }
    assert_int_equal(r[1].calls + r[3].calls, 0);
    vd_data_pause_workers(db, false);
    WAIT_FOR(fx, r[1].calls && r[3].calls, 10000);
    assert_dreply(&r[1], 1, MAX_MSG - 64);
    assert_dreply(&r[3], 3, 1000);
    assert_int_equal(atomic_load(&sb.seen[0]) + atomic_load(&sb.seen[2]), 0);
    assert_int_equal(atomic_load(&sb.calls), 2);
    run_for(fx, 50);
    assert_int_equal(r[0].calls + r[2].calls, 2); /* the expired one's late answer is ignored */
    data_stop(fx, da);
    data_stop(fx, db);
    node_stop(&a);
    node_stop(&b);
}

/* One data chunk from a raw peer: header fields as given, payload bytes of value 7. */
static void rawp_chunk(struct rawp *p, uint8_t type, uint64_t hlc, uint64_t id, uint32_t seq,
                       bool last, uint32_t total, size_t payload)
{
    uint8_t c[64];
    uint64_t w[3] = {1, 2, vd_wall_ms() + 60000};
    size_t h = vd__chunk_header(id, seq, last, total, w, c);
    assert_true(h + payload <= sizeof(c));
    memset(c + h, 7, payload);
    rawp_send(p, type, hlc, c, h + payload);
}

/* Reads frames until one of type `type` (credit grants are skipped); returns its body length. */
static size_t rawp_expect(struct fx *fx, struct rawp *p, uint8_t type, uint8_t *body)
{
    size_t len;
    uint8_t got;
    while ((got = rawp_next(fx, p, body, &len)) == VD_FRAME_CREDIT)
        ;
    assert_int_equal(got, type);
    return len;
}

/*
 * A raw peer on a data connection: a request within the clock offset is served and answered; one
 * stamped too far ahead is answered VD_FRAME_SKEW and never handled, and its credit comes back;
 * malformed chunk sequences close the connection (with a log line naming the fault, rate-limited
 * per address), and the node serves the next connection.
 */
static void test_data_raw_peer(void **state)
{
    struct fx *fx = *state;
    loop_thread = uv_thread_self();
    struct node b = {0};
    node_start(fx, &b, 2, NULL);
    static struct dserve sb;
    memset(&sb, 0, sizeof(sb));
    struct vd_data *db = data_start(fx, &b, &sb, 1000, 0);
    struct rawp p;
    rawp_open_chan(fx, &p, b.port, 7, 1);
    uint8_t body[512];
    size_t len = rawp_next(fx, &p, body, &len) == VD_FRAME_CREDIT ? len : 0;
    assert_int_equal(len, VD_FRAME_HLC + VD_DATA_CREDIT_LEN);

    rawp_chunk(&p, VD_FRAME_DATA_REQ, vd_hlc_now(), 5, 0, true, 10, 10);
    len = rawp_expect(fx, &p, VD_FRAME_DATA_REPLY, body);
    assert_int_equal(vd_be64_get(body + VD_FRAME_HLC), 5);
    assert_int_equal(atomic_load(&sb.calls), 1);

    /* skew: refused, not handled; a credit grant follows (its bytes are back) */
    uint64_t far = VD_HLC_MAKE(vd_wall_ms() + 5000, 1);
    rawp_chunk(&p, VD_FRAME_DATA_REQ, far, 6, 0, true, 10, 10);
    len = rawp_expect(fx, &p, VD_FRAME_SKEW, body);
    assert_int_equal(len, VD_FRAME_HLC + VD_FRAME_SKEW_LEN);
    assert_int_equal(body[VD_FRAME_HLC], VD_FRAME_DATA_REQ);
    assert_int_equal(vd_be64_get(body + VD_FRAME_HLC + 1), 6);
    assert_int_equal(rawp_next(fx, &p, body, &len), VD_FRAME_CREDIT);
    rawp_chunk(&p, VD_FRAME_DATA_REQ, vd_hlc_now(), 8, 0, true, 0, 0);
    rawp_expect(fx, &p, VD_FRAME_DATA_REPLY, body);
    assert_int_equal(atomic_load(&sb.calls), 2);
    close(p.fd);

    struct {
        const char *why;
        uint64_t id[2];
        uint32_t seq[2];
        bool last[2];
        uint32_t total[2];
        size_t payload[2];
        int n;
    } bad[] = {
        {"without its chunk 0", {1}, {3}, {true}, {0}, {4}, 1},
        {"over the limit", {1}, {0}, {true}, {1001}, {0}, 1},
        {"was expected", {1, 2}, {0, 0}, {false, true}, {10, 5}, {5, 5}, 2},
        {"longer than the", {1, 1}, {0, 1}, {false, true}, {6, 6}, {5, 5}, 2},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        rawp_open_chan(fx, &p, b.port, 10 + i, 1);
        rawp_next(fx, &p, body, &len);
        struct capture cap;
        capture_start(&cap);
        for (int k = 0; k < bad[i].n; k++)
            rawp_chunk(&p, VD_FRAME_DATA_REQ, vd_hlc_now(), bad[i].id[k], bad[i].seq[k],
                       bad[i].last[k], bad[i].total[k], bad[i].payload[k]);
        WAIT_FOR(fx, raw_closed(p.fd), 5000);
        /* refusals are logged once a minute per address: the first names its fault, the
         * others only close (the reassembler's own test checks each fault's message) */
        const char *words[] = {"refused", bad[i].why};
        assert_int_equal(capture_stop(&cap, words, 2), i == 0);
        close(p.fd);
    }
    /* a control frame type on a data connection is refused too */
    rawp_open_chan(fx, &p, b.port, 20, 1);
    rawp_send(&p, VD_FRAME_RAFT, vd_hlc_now(), "x", 1);
    WAIT_FOR(fx, raw_closed(p.fd), 5000);
    close(p.fd);
    /* and still serves */
    rawp_open_chan(fx, &p, b.port, 21, 1);
    rawp_chunk(&p, VD_FRAME_DATA_REQ, vd_hlc_now(), 5, 0, true, 4, 4);
    rawp_expect(fx, &p, VD_FRAME_DATA_REPLY, body);
    close(p.fd);
    data_stop(fx, db);
    node_stop(&b);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    vd_log_set_level(VD_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frame_roundtrip),
        cmocka_unit_test(test_frame_truncation),
        cmocka_unit_test(test_frame_bitflip),
        cmocka_unit_test(test_frame_stream),
        cmocka_unit_test_setup_teardown(test_both_ways, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_thousand_in_order, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_big_frame, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_send_addr_then_reply, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_resolved_name, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_wrong_secret, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tampered_frame, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_replayed_frame, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_loopback_only, veth_setup, veth_teardown),
        cmocka_unit_test_setup_teardown(test_simultaneous_dial, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_peer_restart, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_garbage_and_oversize, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_queue_bound, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_clock_gate, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_other_version, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_close_pending, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_start_errors, fx_setup, fx_teardown),
        cmocka_unit_test(test_chunk_reasm),
        cmocka_unit_test_setup_teardown(test_data_roundtrip, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_data_pause_no_starvation, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_data_close_fails_inflight, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_data_deadline, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_data_raw_peer, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
