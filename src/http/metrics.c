/* Request counters and latency histograms, rendered as Prometheus text for GET /metrics. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_int.h"

static const char *const method_names[VD_HTTP_N_METHODS] = {"GET",    "HEAD",  "POST",    "PUT",
                                                            "DELETE", "PATCH", "OPTIONS", "OTHER"};
/* Upper bounds in seconds: fine below 5 ms where the API targets sit, coarse above. */
static const double bucket_le[VD_HTTP_N_BUCKETS] = {0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                    0.05,    0.1,    0.25,  0.5,    1,     2.5,  10};

int vd__http_method_index(const char *m)
{
    for (int i = 0; i < VD_HTTP_N_METHODS - 1; i++)
        if (strcmp(m, method_names[i]) == 0)
            return i;
    return VD_HTTP_N_METHODS - 1;
}

static void stats_record(struct vd_http_stats *st, int mi, int status, double seconds)
{
    int slot = -1;
    for (int i = 0; i < VD_HTTP_N_STATUS; i++) {
        if (st->by[mi][i].count && st->by[mi][i].status == status) {
            slot = i;
            break;
        }
        if (!st->by[mi][i].count && slot < 0) {
            slot = i;
            st->by[mi][i].status = status;
            break;
        }
    }
    if (slot < 0) /* more distinct statuses than slots: fold into the last one */
        slot = VD_HTTP_N_STATUS - 1;
    st->by[mi][slot].count++;
    int b = 0;
    while (b < VD_HTTP_N_BUCKETS && seconds > bucket_le[b])
        b++;
    st->buckets[b]++;
    st->sum_s += seconds;
    st->count++;
}

void vd__http_stats_record(struct vd_http *h, struct vd_http_route *rt, const char *method,
                           int status, double seconds)
{
    int mi = vd__http_method_index(method);
    pthread_mutex_lock(&h->metrics_mu);
    stats_record(rt ? &rt->stats : &h->unmatched, mi, status, seconds);
    pthread_mutex_unlock(&h->metrics_mu);
}

/* Growable text buffer private to this file: the rendering runs per scrape, not per request. */
struct out {
    char *p;
    size_t len, cap;
    bool oom;
};

static void outf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void outf(struct out *o, const char *fmt, ...)
{
    if (o->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->oom = true;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t ncap = (o->cap + (size_t)n + 1) * 2;
        char *np = realloc(o->p, ncap);
        if (!np) {
            o->oom = true;
            return;
        }
        o->p = np;
        o->cap = ncap;
    }
}

/* Prometheus label values escape backslash, quote and newline. Patterns are ours, but a
 * pattern could still carry a quote. */
static const char *label(const char *s, char *buf, size_t cap)
{
    size_t o = 0;
    for (; *s && o + 3 < cap; s++) {
        if (*s == '\\' || *s == '"') {
            buf[o++] = '\\';
            buf[o++] = *s;
        } else if (*s == '\n') {
            buf[o++] = '\\';
            buf[o++] = 'n';
        } else {
            buf[o++] = *s;
        }
    }
    buf[o] = '\0';
    return buf;
}

static void render_counts(struct out *o, const char *route, const struct vd_http_stats *st)
{
    for (int m = 0; m < VD_HTTP_N_METHODS; m++)
        for (int i = 0; i < VD_HTTP_N_STATUS; i++)
            if (st->by[m][i].count)
                outf(o, "vectord_http_requests_total{route=\"%s\",method=\"%s\",status=\"%d\"} %llu\n",
                     route, method_names[m], st->by[m][i].status,
                     (unsigned long long)st->by[m][i].count);
}

/* The histogram carries the route's method too: two routes may share a pattern (GET and PUT
 * /collections/{c}) and Prometheus rejects two series with the same labels. */
static void render_hist(struct out *o, const char *route, const char *method,
                        const struct vd_http_stats *st)
{
    if (!st->count)
        return;
    uint64_t cum = 0;
    for (int b = 0; b < VD_HTTP_N_BUCKETS; b++) {
        cum += st->buckets[b];
        outf(o, "vectord_http_request_duration_seconds_bucket{route=\"%s\",method=\"%s\",le=\"%g\"} %llu\n",
             route, method,
             bucket_le[b], (unsigned long long)cum);
    }
    outf(o, "vectord_http_request_duration_seconds_bucket{route=\"%s\",method=\"%s\",le=\"+Inf\"} %llu\n",
         route, method,
         (unsigned long long)st->count);
    outf(o, "vectord_http_request_duration_seconds_sum{route=\"%s\",method=\"%s\"} %.9g\n", route, method, st->sum_s);
    outf(o, "vectord_http_request_duration_seconds_count{route=\"%s\",method=\"%s\"} %llu\n", route, method,
         (unsigned long long)st->count);
}

char *vd__http_metrics_render(struct vd_http *h, size_t *len)
{
    struct out o = {0};
    char lb[512];
    o.cap = 4096;
    o.p = malloc(o.cap);
    if (!o.p)
        return NULL;
    o.p[0] = '\0';
    pthread_mutex_lock(&h->metrics_mu);
    outf(&o, "# HELP vectord_http_requests_total HTTP requests by route pattern, method and status.\n"
             "# TYPE vectord_http_requests_total counter\n");
    for (struct vd_http_route *rt = h->routes; rt; rt = rt->next)
        render_counts(&o, label(rt->pattern, lb, sizeof(lb)), &rt->stats);
    render_counts(&o, "unmatched", &h->unmatched);
    outf(&o, "# HELP vectord_http_request_duration_seconds HTTP request latency by route pattern.\n"
             "# TYPE vectord_http_request_duration_seconds histogram\n");
    for (struct vd_http_route *rt = h->routes; rt; rt = rt->next)
        render_hist(&o, label(rt->pattern, lb, sizeof(lb)), rt->method, &rt->stats);
    render_hist(&o, "unmatched", "any", &h->unmatched);
    pthread_mutex_unlock(&h->metrics_mu);
    pthread_mutex_lock(&h->mu);
    size_t in_flight = h->n_live;
    pthread_mutex_unlock(&h->mu);
    pthread_mutex_lock(&h->conn_mu);
    unsigned conns = h->n_conns;
    pthread_mutex_unlock(&h->conn_mu);
    size_t body_bytes = atomic_load(&h->body_inflight);
    outf(&o, "# HELP vectord_http_requests_in_flight Requests received and not yet completed.\n"
             "# TYPE vectord_http_requests_in_flight gauge\n"
             "vectord_http_requests_in_flight %zu\n", in_flight);
    /* what --max-connections and --max-inflight-body-bytes are measured against */
    outf(&o, "# HELP vectord_http_connections Open HTTP connections.\n"
             "# TYPE vectord_http_connections gauge\n"
             "vectord_http_connections %u\n", conns);
    outf(&o, "# HELP vectord_http_body_bytes_in_flight Request body bytes held against the "
             "in-flight budget (announced by Content-Length, or received so far when chunked).\n"
             "# TYPE vectord_http_body_bytes_in_flight gauge\n"
             "vectord_http_body_bytes_in_flight %zu\n", body_bytes);
    if (o.oom) {
        free(o.p);
        return NULL;
    }
    *len = o.len;
    return o.p;
}
