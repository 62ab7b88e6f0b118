/* The point and search handlers over a real HTTP server and a real database, with a data
 * implementation (struct vd_data_ops) that records which operation each request used: every
 * handler reaches the data only through it, and renders whatever records it returns, as a
 * coordinator's implementation will return records that this node does not hold. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "vectord/api.h"

#include "unit/db_fixture.h"

enum { OP_UPSERT, OP_APPLY, OP_DELETE, OP_PAYLOAD, OP_RETRIEVE, OP_SEARCH, OP_SCROLL, OP_COUNT,
       OP_N };

/* Wraps the local implementation: counts each call; with `fake`, reads answer one made-up
 * record (id 42, version (7, 9), payload {"a":1,"b":2}, vector [0.5, 0.25], score 0.75)
 * instead of the database's. */
struct spy {
    struct vd_data_ops local;
    atomic_int calls[OP_N];
    bool fake;
    struct vd_data_req last; /* the options of the last call */
};

static struct spy S;

static int fake_records(struct vd_db_record **out, size_t *n, bool with_vector, float score)
{
    struct vd_db_record *r = calloc(1, sizeof *r);
    static const char pl[] = "{\"a\":1,\"b\":2}";
    r->id = (struct vd_pid){.type = VD_PID_NUM, .u.num = 42};
    r->version = (struct vd_version){7, 9};
    r->seq = 3;
    r->score = score;
    r->payload = malloc(sizeof pl - 1);
    memcpy(r->payload, pl, sizeof pl - 1);
    r->payload_len = sizeof pl - 1;
    if (with_vector) {
        r->vec = malloc(2 * sizeof(float));
        r->vec[0] = 0.5f;
        r->vec[1] = 0.25f;
        r->dim = 2;
    }
    *out = r;
    *n = 1;
    return 0;
}

static int spy_upsert(void *impl, struct vd_coll *c, const struct vd_data_req *o, const struct vd_db_point *pts, size_t n,
                      vd_db_done_fn done, void *ctx, struct vd_err *err)
{
    S.calls[OP_UPSERT]++;
    S.last = *o;
    return S.local.upsert(S.local.impl, c, o, pts, n, done, ctx, err);
}

static int spy_apply(void *impl, struct vd_coll *c, const struct vd_data_req *o, const uint8_t *const *recs,
                     const size_t *lens, size_t n, vd_db_done_fn done, void *ctx,
                     struct vd_err *err)
{
    S.calls[OP_APPLY]++;
    S.last = *o;
    return S.local.apply(S.local.impl, c, o, recs, lens, n, done, ctx, err);
}

static int spy_delete(void *impl, struct vd_coll *c, const struct vd_data_req *o, const struct vd_pid *ids, size_t n,
                      const struct vd_filter *f, vd_db_done_fn done, void *ctx,
                      struct vd_err *err)
{
    S.calls[OP_DELETE]++;
    S.last = *o;
    return S.local.delete_points(S.local.impl, c, o, ids, n, f, done, ctx, err);
}

static int spy_payload(void *impl, struct vd_coll *c, const struct vd_data_req *o, enum vd_db_payload_op op,
                       const cJSON *arg, const struct vd_pid *ids, size_t n,
                       const struct vd_filter *f, vd_db_done_fn done, void *ctx,
                       struct vd_err *err)
{
    S.calls[OP_PAYLOAD]++;
    S.last = *o;
    return S.local.payload_edit(S.local.impl, c, o, op, arg, ids, n, f, done, ctx, err);
}

static int spy_retrieve(void *impl, struct vd_coll *c, const struct vd_data_req *o, const struct vd_pid *ids, size_t n,
                        bool with_vector, struct vd_db_record **out, size_t *n_out,
                        struct vd_err *err)
{
    S.calls[OP_RETRIEVE]++;
    S.last = *o;
    if (S.fake)
        return fake_records(out, n_out, with_vector, 0);
    return S.local.retrieve(S.local.impl, c, o, ids, n, with_vector, out, n_out, err);
}

static int spy_search(void *impl, struct vd_coll *c, const struct vd_data_req *o, const struct vd_db_search *s,
                      bool with_vector, struct vd_db_record **out, size_t *n_out,
                      struct vd_err *err)
{
    S.calls[OP_SEARCH]++;
    S.last = *o;
    if (S.fake)
        return fake_records(out, n_out, with_vector, 0.75f);
    return S.local.search(S.local.impl, c, o, s, with_vector, out, n_out, err);
}

static int spy_scroll(void *impl, struct vd_coll *c, const struct vd_data_req *o, const struct vd_pid *from, uint32_t limit,
                      const struct vd_filter *f, bool with_vector, struct vd_db_record **out,
                      size_t *n_out, struct vd_pid *next, bool *has_next, struct vd_err *err)
{
    S.calls[OP_SCROLL]++;
    S.last = *o;
    if (S.fake) {
        *has_next = false;
        return fake_records(out, n_out, with_vector, 0);
    }
    return S.local.scroll(S.local.impl, c, o, from, limit, f, with_vector, out, n_out, next,
                          has_next, err);
}

static int spy_count(void *impl, struct vd_coll *c, const struct vd_data_req *o, const struct vd_filter *f, uint64_t *out,
                     struct vd_err *err)
{
    S.calls[OP_COUNT]++;
    S.last = *o;
    if (S.fake) {
        *out = 1234;
        return 0;
    }
    return S.local.count(S.local.impl, c, o, f, out, err);
}

/* The asynchronous forms: the local result, handed to the handler's completion from another
 * thread, as a cluster's completion comes from its loop thread. */
struct later {
    int rc;
    struct vd_err e;
    struct vd_db_record *recs;
    size_t n;
    struct vd_pid next;
    bool has_next;
    uint64_t count;
    vd_data_read_fn done;
    void *ctx;
};

static void *later_run(void *p)
{
    struct later *l = p;
    struct vd_data_result res = {.recs = l->recs, .n = l->n,
                                 .next = l->has_next ? &l->next : NULL, .count = l->count};
    l->done(l->rc, l->rc ? &l->e : NULL, l->rc ? NULL : &res, l->ctx);
    vd_db_records_free(l->recs, l->n);
    free(l);
    return NULL;
}

static int later_start(struct later *l, vd_data_read_fn done, void *ctx)
{
    l->done = done;
    l->ctx = ctx;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, later_run, l), 0);
    pthread_detach(t);
    return 0;
}

static int spy_retrieve_async(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                              const struct vd_pid *ids, size_t n, bool with_vector,
                              vd_data_read_fn done, void *ctx, struct vd_err *err)
{
    struct later *l = calloc(1, sizeof *l);
    l->rc = spy_retrieve(impl, c, o, ids, n, with_vector, &l->recs, &l->n, &l->e);
    return later_start(l, done, ctx);
}

static int spy_search_async(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                            const struct vd_db_search *s, bool with_vector, vd_data_read_fn done,
                            void *ctx, struct vd_err *err)
{
    struct later *l = calloc(1, sizeof *l);
    l->rc = spy_search(impl, c, o, s, with_vector, &l->recs, &l->n, &l->e);
    return later_start(l, done, ctx);
}

static int spy_scroll_async(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                            const struct vd_pid *from, uint32_t limit, const struct vd_filter *f,
                            bool with_vector, vd_data_read_fn done, void *ctx,
                            struct vd_err *err)
{
    struct later *l = calloc(1, sizeof *l);
    l->rc = spy_scroll(impl, c, o, from, limit, f, with_vector, &l->recs, &l->n, &l->next,
                       &l->has_next, &l->e);
    return later_start(l, done, ctx);
}

static int spy_count_async(void *impl, struct vd_coll *c, const struct vd_data_req *o,
                           const struct vd_filter *f, vd_data_read_fn done, void *ctx,
                           struct vd_err *err)
{
    struct later *l = calloc(1, sizeof *l);
    l->rc = spy_count(impl, c, o, f, &l->count, &l->e);
    return later_start(l, done, ctx);
}

/* node_start gives the API the asynchronous forms too */
static bool use_async;

/* ---- a node: database, API over the spy, HTTP server on an ephemeral port ---- */

struct node {
    struct vd_db *db;
    struct vd_http *h;
    uint16_t port;
};

static void node_start(struct node *n)
{
    fixture_mkdir();
    n->db = open_db();
    struct vd_coll *c = create_coll(n->db, "c", 2, VD_METRIC_EUCLID, 64, 0);
    vd_db_coll_put(c);
    memset(&S, 0, sizeof S);
    vd_api_local_data(n->db, &S.local);
    struct vd_http_opts ho = {.bind = "127.0.0.1", .threads = 2};
    struct vd_err e;
    assert_int_equal(vd_http_new(&ho, &n->h, &e), 0);
    struct vd_api_opts ao = {.db = n->db,
                             .data = {.upsert = spy_upsert,
                                      .apply = spy_apply,
                                      .delete_points = spy_delete,
                                      .payload_edit = spy_payload,
                                      .retrieve = spy_retrieve,
                                      .search = spy_search,
                                      .scroll = spy_scroll,
                                      .count = spy_count,
                                      .impl = &S}};
    if (use_async) {
        ao.data.retrieve_async = spy_retrieve_async;
        ao.data.search_async = spy_search_async;
        ao.data.scroll_async = spy_scroll_async;
        ao.data.count_async = spy_count_async;
    }
    assert_int_equal(vd_api_register(n->h, &ao), 0);
    assert_int_equal(vd_http_start(n->h, &e), 0);
    n->port = vd_http_port(n->h);
}

static void node_stop(struct node *n)
{
    vd_http_stop(n->h, 2000);
    vd_http_free(n->h);
    vd_db_close(n->db);
    fixture_rmdir();
}

/* One request on a new connection (Connection: close); returns the status and puts the body,
 * NUL-terminated, in *body (caller frees). A chunked reply (export) is left as sent: the tests
 * look for text inside its one chunk. */
static int call(const struct node *n, const char *method, const char *path, const char *json,
                char **body)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct timeval tv = {.tv_sec = 30};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(n->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    char head[512];
    size_t blen = json ? strlen(json) : 0;
    int hl = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                      "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                      method, path, blen);
    assert_int_equal(send(fd, head, (size_t)hl, MSG_NOSIGNAL), hl);
    if (blen)
        assert_int_equal(send(fd, json, blen, MSG_NOSIGNAL), (ssize_t)blen);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    ssize_t got;
    while ((got = recv(fd, buf + len, cap - len - 1, 0)) > 0) {
        len += (size_t)got;
        if (cap - len < 4096)
            buf = realloc(buf, cap *= 2);
    }
    close(fd);
    buf[len] = '\0';
    int status = 0;
    assert_int_equal(sscanf(buf, "HTTP/1.%*d %d", &status), 1);
    char *sep = strstr(buf, "\r\n\r\n");
    assert_non_null(sep);
    *body = strdup(sep + 4);
    free(buf);
    return status;
}

/* call() that expects `status` and a body containing `want` (NULL: any body). */
static void expect(const struct node *n, const char *method, const char *path, const char *json,
                   int status, const char *want)
{
    char *body;
    int st = call(n, method, path, json, &body);
    if (st != status || (want && !strstr(body, want)))
        fail_msg("%s %s: %d %s (expected %d with %s)", method, path, st, body, status,
                 want ? want : "any body");
    free(body);
}

/* Each point and search route calls its operation of the data interface, once per request (per
 * search in a batch), and never another one. */
static void test_handlers_use_data_ops(void **state)
{
    struct node n;
    node_start(&n);
    static const struct {
        const char *method, *path, *body, *want;
        int op, calls, also; /* also: a second operation called once, or OP_N */
    } t[] = {
        {"PUT", "/collections/c/points?wait=true",
         "{\"points\":[{\"id\":1,\"vector\":[1,0],\"payload\":{\"k\":\"x\"}},"
         "{\"id\":2,\"vector\":[0,1]},{\"id\":3,\"vector\":[1,1]}]}",
         "\"completed\"", OP_UPSERT, 1, OP_N},
        {"POST", "/collections/c/points", "{\"ids\":[1,2]}", "\"k\":\"x\"", OP_RETRIEVE, 1, OP_N},
        {"GET", "/collections/c/points/2", NULL, "\"id\":2", OP_RETRIEVE, 1, OP_N},
        {"POST", "/collections/c/points/scroll", "{\"limit\":2}", "\"next_page_offset\":3",
         OP_SCROLL, 1, OP_N},
        {"POST", "/collections/c/points/search", "{\"vector\":[1,0],\"limit\":1}",
         "\"score\":0", OP_SEARCH, 1, OP_N},
        {"POST", "/collections/c/points/search/batch",
         "{\"searches\":[{\"vector\":[1,0],\"limit\":1},{\"vector\":[0,1],\"limit\":1}]}",
         "\"id\":2", OP_SEARCH, 2, OP_N},
        {"POST", "/collections/c/points/query", "{\"query\":[1,0],\"limit\":1}", "\"id\":1",
         OP_SEARCH, 1, OP_N},
        /* a query by point id reads that point's vector through retrieve, then searches */
        {"POST", "/collections/c/points/query", "{\"query\":1,\"limit\":1}", "\"id\":3",
         OP_RETRIEVE, 1, OP_SEARCH},
        {"POST", "/collections/c/points/query", "{\"limit\":1,\"offset\":1}", "\"id\":2",
         OP_SCROLL, 2, OP_N},
        {"POST", "/collections/c/points/count", "{}", "\"count\":3", OP_COUNT, 1, OP_N},
        /* one page of export: every point fits in it */
        {"GET", "/collections/c/points/export", NULL, "{\"id\":3,\"vector\":[1.0,1.0]}",
         OP_SCROLL, 1, OP_N},
        {"POST", "/collections/c/points/payload?wait=true",
         "{\"payload\":{\"z\":1},\"points\":[2]}", "\"completed\"", OP_PAYLOAD, 1, OP_N},
        {"POST", "/collections/c/points/payload/clear?wait=true", "{\"points\":[2]}",
         "\"completed\"", OP_PAYLOAD, 1, OP_N},
        {"POST", "/collections/c/points/delete?wait=true",
         "{\"filter\":{\"must\":[{\"has_id\":[3]}]}}", "\"completed\"", OP_DELETE, 1, OP_N},
        {"POST", "/collections/c/points/delete?wait=true", "{\"points\":[2]}", "\"completed\"",
         OP_DELETE, 1, OP_N},
        {"POST", "/collections/c/points/count", "{}", "\"count\":1", OP_COUNT, 1, OP_N},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        int before[OP_N];
        for (int k = 0; k < OP_N; k++)
            before[k] = S.calls[k];
        expect(&n, t[i].method, t[i].path, t[i].body, 200, t[i].want);
        for (int k = 0; k < OP_N; k++) {
            int d = S.calls[k] - before[k];
            int want = k == t[i].op ? t[i].calls : k == t[i].also ? 1 : 0;
            if (d != want)
                fail_msg("request %zu (%s %s): operation %d called %d times, expected %d", i,
                         t[i].method, t[i].path, k, d, want);
        }
    }
    node_stop(&n);
}

/* Replies are made from the records the data interface returns, not from this node's database
 * (empty here), through the one renderer: with_payload and with_vector select the same way for
 * retrieve, scroll, search and query, and search hits carry the score they came with. */
static void test_handlers_render_data_ops_records(void **state)
{
    struct node n;
    node_start(&n);
    S.fake = true;
    const char *rec = "{\"id\":42,\"payload\":{\"a\":1},\"vector\":[0.5,0.25]}";
    const char *scored =
        "{\"id\":42,\"version\":3,\"score\":0.75,\"payload\":{\"a\":1},\"vector\":[0.5,0.25]}";
    const char *sel = ",\"with_payload\":{\"include\":[\"a\"]},\"with_vector\":true}";
    char req[256];
    snprintf(req, sizeof req, "{\"ids\":[42]%s", sel);
    expect(&n, "POST", "/collections/c/points", req, 200, rec);
    snprintf(req, sizeof req, "{\"limit\":5%s", sel);
    expect(&n, "POST", "/collections/c/points/scroll", req, 200, rec);
    snprintf(req, sizeof req, "{\"vector\":[1,0],\"limit\":5%s", sel);
    expect(&n, "POST", "/collections/c/points/search", req, 200, scored);
    snprintf(req, sizeof req, "{\"query\":[1,0],\"limit\":5%s", sel);
    expect(&n, "POST", "/collections/c/points/query", req, 200, scored);
    expect(&n, "GET", "/collections/c/points/42", NULL, 200,
           "{\"id\":42,\"payload\":{\"a\":1,\"b\":2},\"vector\":[0.5,0.25]}");
    expect(&n, "POST", "/collections/c/points/search",
           "{\"vector\":[1,0],\"limit\":5,\"with_payload\":[\"b\"]}", 200,
           "\"score\":0.75,\"payload\":{\"b\":2},\"vector\":null}");
    expect(&n, "POST", "/collections/c/points/count", "{}", 200, "\"count\":1234");
    /* an export line, whole payload and vector (the reply is one small chunk) */
    expect(&n, "GET", "/collections/c/points/export", NULL, 200,
           "{\"id\":42,\"vector\":[0.5,0.25],\"payload\":{\"a\":1,\"b\":2}}\n");
    node_stop(&n);
}


/* The query parameters of every data request: consistency resolved against the replication
 * factor, the timeout in seconds, wait; anything else is refused naming the parameter. */
static void test_data_req_parse(void **state)
{
    struct vd_data_req o;
    struct vd_err e;
    assert_int_equal(vd_api_data_req_parse(NULL, NULL, NULL, 3, &o, &e), 0);
    assert_int_equal(o.consistency, 0);
    assert_int_equal(o.timeout_ms, 0);
    assert_true(o.wait);
    static const struct {
        const char *c;
        unsigned rf, want;
    } ok[] = {{"1", 3, 1}, {"2", 3, 2},       {"3", 3, 3},        {"all", 3, 3},
              {"all", 5, 5}, {"quorum", 3, 2}, {"majority", 3, 2}, {"quorum", 4, 3},
              {"majority", 5, 3}, {"quorum", 1, 1}, {"all", 1, 1}, {"1", 1, 1}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        assert_int_equal(vd_api_data_req_parse(ok[i].c, NULL, NULL, ok[i].rf, &o, &e), 0);
        if (o.consistency != ok[i].want)
            fail_msg("consistency=%s at RF %u: %u, expected %u", ok[i].c, ok[i].rf,
                     o.consistency, ok[i].want);
    }
    static const struct {
        const char *c;
        unsigned rf;
    } bad[] = {{"0", 3},  {"-1", 3},   {"abc", 3}, {"4", 3},    {"2", 1},
               {"", 3},   {"1.5", 3},  {"ALL", 3}, {" 1", 3},   {"99999999999999999999", 3}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(vd_api_data_req_parse(bad[i].c, NULL, NULL, bad[i].rf, &o, &e),
                         VD_EINVAL);
        if (!strstr(e.msg, "'consistency'") || !strstr(e.msg, "'quorum'") ||
            !strstr(e.msg, "'all'"))
            fail_msg("consistency=%s: message '%s' does not name the parameter and values",
                     bad[i].c, e.msg);
    }
    assert_int_equal(vd_api_data_req_parse(NULL, "5", "false", 3, &o, &e), 0);
    assert_int_equal(o.timeout_ms, 5000);
    assert_false(o.wait);
    assert_int_equal(vd_api_data_req_parse(NULL, NULL, "true", 3, &o, &e), 0);
    assert_true(o.wait);
    static const char *bad_t[] = {"0", "-1", "abc", "1.5", "", "3601", "99999999999"};
    for (size_t i = 0; i < sizeof bad_t / sizeof bad_t[0]; i++) {
        assert_int_equal(vd_api_data_req_parse(NULL, bad_t[i], NULL, 3, &o, &e), VD_EINVAL);
        assert_non_null(strstr(e.msg, "'timeout'"));
    }
    assert_int_equal(vd_api_data_req_parse(NULL, NULL, "maybe", 3, &o, &e), VD_EINVAL);
    assert_non_null(strstr(e.msg, "'wait'"));
}

/* Every data endpoint reads the options and hands them to its operation; a bad value is a 400
 * naming the parameter before any operation runs (so nothing is written). Without a cluster the
 * replication factor is 1: consistency 2 is refused, "all" is 1. */
static void test_handlers_take_options(void **state)
{
    struct node n;
    node_start(&n);
    static const struct {
        const char *method, *path, *body;
    } t[] = {
        {"PUT", "/collections/c/points", "{\"points\":[{\"id\":1,\"vector\":[1,0]}]}"},
        {"POST", "/collections/c/points", "{\"ids\":[1]}"},
        {"GET", "/collections/c/points/1", NULL},
        {"POST", "/collections/c/points/delete", "{\"points\":[5]}"},
        {"POST", "/collections/c/points/payload", "{\"payload\":{\"z\":1},\"points\":[1]}"},
        {"PUT", "/collections/c/points/payload", "{\"payload\":{\"z\":1},\"points\":[1]}"},
        {"POST", "/collections/c/points/payload/delete", "{\"keys\":[\"z\"],\"points\":[1]}"},
        {"POST", "/collections/c/points/payload/clear", "{\"points\":[1]}"},
        {"POST", "/collections/c/points/scroll", "{}"},
        {"POST", "/collections/c/points/count", "{}"},
        {"POST", "/collections/c/points/search", "{\"vector\":[1,0],\"limit\":1}"},
        {"POST", "/collections/c/points/search/batch",
         "{\"searches\":[{\"vector\":[1,0],\"limit\":1}]}"},
        {"POST", "/collections/c/points/query", "{\"query\":[1,0],\"limit\":1}"},
        {"POST", "/collections/c/points/query/batch",
         "{\"searches\":[{\"query\":[1,0],\"limit\":1}]}"},
        {"GET", "/collections/c/points/export", NULL},
        {"POST", "/collections/c/points/import", "{\"id\":9,\"vector\":[1,0]}\n"},
    };
    static const struct {
        const char *q, *word;
    } bad[] = {{"consistency=0", "'consistency'"},  {"consistency=-1", "'consistency'"},
               {"consistency=abc", "'consistency'"}, {"consistency=2", "'consistency'"},
               {"timeout=0", "'timeout'"},          {"timeout=abc", "'timeout'"},
               {"wait=maybe", "'wait'"}};
    char path[256];
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
            int before[OP_N];
            for (int j = 0; j < OP_N; j++)
                before[j] = S.calls[j];
            snprintf(path, sizeof path, "%s?%s", t[i].path, bad[k].q);
            expect(&n, t[i].method, path, t[i].body, 400, bad[k].word);
            for (int j = 0; j < OP_N; j++)
                if (S.calls[j] != before[j])
                    fail_msg("%s %s: operation %d ran", t[i].method, path, j);
        }
        snprintf(path, sizeof path, "%s?consistency=all&timeout=7", t[i].path);
        memset(&S.last, 0, sizeof S.last);
        expect(&n, t[i].method, path, t[i].body, 200, NULL);
        if (S.last.consistency != 1 || S.last.timeout_ms != 7000)
            fail_msg("%s %s: the operation got consistency %u, timeout %u ms", t[i].method, path,
                     S.last.consistency, S.last.timeout_ms);
    }
    /* wait=false reaches the write; without a cluster the reply is still "completed" */
    expect(&n, "PUT", "/collections/c/points?wait=false",
           "{\"points\":[{\"id\":2,\"vector\":[1,0]}]}", 200, "\"completed\"");
    assert_false(S.last.wait);
    node_stop(&n);
}

/* With the asynchronous forms, retrieve, get by id, search, query, scroll and count reply from
 * the completion (another thread here) with the same bodies, errors included. */
static void test_handlers_async_reads(void **state)
{
    use_async = true;
    struct node n;
    node_start(&n);
    expect(&n, "PUT", "/collections/c/points?wait=true",
           "{\"points\":[{\"id\":1,\"vector\":[1,0],\"payload\":{\"k\":\"x\"}},"
           "{\"id\":2,\"vector\":[0,1]},{\"id\":3,\"vector\":[1,1]}]}",
           200, "\"completed\"");
    int before = S.calls[OP_RETRIEVE];
    expect(&n, "POST", "/collections/c/points", "{\"ids\":[1,2]}", 200, "\"k\":\"x\"");
    expect(&n, "GET", "/collections/c/points/2?consistency=1", NULL, 200, "\"id\":2");
    expect(&n, "GET", "/collections/c/points/9", NULL, 404, "point 9 not found");
    assert_int_equal(S.calls[OP_RETRIEVE] - before, 3);
    expect(&n, "POST", "/collections/c/points/scroll", "{\"limit\":2}",
           200, "\"next_page_offset\":3");
    expect(&n, "POST", "/collections/c/points/scroll", "{\"limit\":2,\"offset\":3}",
           200, "\"next_page_offset\":null");
    expect(&n, "POST", "/collections/c/points/count", "{}", 200, "\"count\":3");
    expect(&n, "POST", "/collections/c/points/count?timeout=2", "{}", 200, "\"count\":3");
    assert_int_equal(S.last.timeout_ms, 2000);
    before = S.calls[OP_SEARCH];
    expect(&n, "POST", "/collections/c/points/search", "{\"vector\":[1,0],\"limit\":1}", 200,
           "\"id\":1,\"version\"");
    expect(&n, "POST", "/collections/c/points/query", "{\"query\":[0,1],\"limit\":1}", 200,
           "{\"points\":[{\"id\":2,");
    expect(&n, "POST", "/collections/c/points/search", "{\"vector\":[0,0,1],\"limit\":1}",
           400, "dim");
    assert_int_equal(S.calls[OP_SEARCH] - before, 2);
    S.fake = true;
    expect(&n, "GET", "/collections/c/points/42", NULL, 200,
           "{\"id\":42,\"payload\":{\"a\":1,\"b\":2},\"vector\":[0.5,0.25]}");
    node_stop(&n);
    use_async = false;
}

/* A batch of updates reaches the data only through the same operations as the single
 * endpoints, in order: update_vectors reads the points, then applies whole records; a filter is
 * handed to the write as it is, or, with the asynchronous forms (whose implementations would
 * otherwise block for it), resolved first through the asynchronous scroll. */
static void test_batch_through_data_ops(void **state)
{
    for (int pass = 0; pass < 2; pass++) {
        use_async = pass == 1;
        struct node n;
        node_start(&n);
        const char *ops =
            "{\"operations\":["
            "{\"upsert\":{\"points\":[{\"id\":1,\"vector\":[1,0],\"payload\":{\"k\":1}},"
            "{\"id\":2,\"vector\":[0,1],\"payload\":{\"k\":2}}]}},"
            "{\"update_vectors\":{\"points\":[{\"id\":2,\"vector\":[5,5]}]}},"
            "{\"set_payload\":{\"payload\":{\"s\":1},\"filter\":{\"must\":[{\"key\":\"k\","
            "\"match\":{\"value\":2}}]}}},"
            "{\"delete\":{\"filter\":{\"must\":[{\"key\":\"k\",\"match\":{\"value\":1}}]}}}"
            "]}";
        int before[OP_N];
        for (int k = 0; k < OP_N; k++)
            before[k] = S.calls[k];
        expect(&n, "POST", "/collections/c/points/batch?wait=true", ops, 200,
               "\"status\":\"completed\"},{\"operation_id\":");
        /* upsert; update_vectors: a look-up of the points updated after the first operation,
         * its read, its write; the two filters: one scroll each with the asynchronous forms */
        int want[OP_N] = {[OP_UPSERT] = 1, [OP_RETRIEVE] = 2, [OP_APPLY] = 1, [OP_PAYLOAD] = 1,
                          [OP_DELETE] = 1, [OP_SCROLL] = use_async ? 2 : 0};
        for (int k = 0; k < OP_N; k++)
            if (S.calls[k] - before[k] != want[k])
                fail_msg("pass %d: operation %d called %d times, expected %d", pass, k,
                         S.calls[k] - before[k], want[k]);
        expect(&n, "POST", "/collections/c/points",
               "{\"ids\":[1,2],\"with_vector\":true}", 200,
               "[{\"id\":2,\"payload\":{\"k\":2,\"s\":1},\"vector\":[5.0,5.0]}]");
        /* refused whole: nothing reaches the data */
        for (int k = 0; k < OP_N; k++)
            before[k] = S.calls[k];
        expect(&n, "POST", "/collections/c/points/batch",
               "{\"operations\":[{\"delete\":{\"points\":[2]}},"
               "{\"update_vectors\":{\"points\":[{\"id\":2,\"vector\":[1,1]}]}}]}",
               404, "operations[1].update_vectors: No point with id 2 found");
        expect(&n, "POST", "/collections/c/points/batch",
               "{\"operations\":[{\"delete\":{\"points\":[2]}},{\"upsert\":{\"points\":"
               "[{\"id\":3,\"vector\":[1]}]}}]}",
               400, "operations[1].upsert: points[0]: Vector dimension error");
        assert_int_equal(S.calls[OP_DELETE] - before[OP_DELETE], 0);
        assert_int_equal(S.calls[OP_UPSERT] - before[OP_UPSERT], 0);
        node_stop(&n);
    }
    use_async = false;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handlers_use_data_ops),
        cmocka_unit_test(test_handlers_render_data_ops_records),
        cmocka_unit_test(test_data_req_parse),
        cmocka_unit_test(test_handlers_take_options),
        cmocka_unit_test(test_handlers_async_reads),
        cmocka_unit_test(test_batch_through_data_ops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
