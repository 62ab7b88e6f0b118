/*
 * Benchmark driver for vectord's index, in-process: builds from an .fvecs base set with N link
 * threads, then measures single-thread recall@10 and QPS for each ef, and the exact-scan QPS.
 * Prints one JSON object on stdout. With --graph FILE, a graph saved there by an earlier run is
 * loaded instead of built (search-only rounds: "loaded":true and no build figures).
 * With --quant the index is quantized to int8 (impl "vectord-int8"): "search" walks the codes and
 * rescores the beam with the floats, "search_float" walks the same graph on floats
 * (quantization ignored), "search_codes" returns the codes' scores without rescoring;
 * "vector_bytes" is what the index holds for vectors (floats + codes) and "float_vector_bytes"
 * the floats alone.
 */
#include <pthread.h>
#include <unistd.h>

#include "bench_common.h"
#include "vectord/index.h"

static void *link_worker(void *arg)
{
    struct vd_index *ix = arg;
    while (vd_index_link_pending(ix, 64) > 0)
        ;
    return NULL;
}

struct fetch_ctx {
    const float *base;
    size_t n;
    unsigned dim;
};

static int fetch_base(const struct vd_pid *id, float *out, void *ctx)
{
    const struct fetch_ctx *f = ctx;
    if (id->type != VD_PID_NUM || id->u.num >= f->n)
        return VD_ENOTFOUND;
    memcpy(out, f->base + id->u.num * f->dim, sizeof(float) * f->dim);
    return 0;
}

int main(int argc, char **argv)
{
    struct bench_args a;
    bench_parse(argc, argv, &a);
    unsigned dim;
    size_t n;
    float *base = bench_load_vecs(a.base, 4, &dim, &n);
    struct vd_index_params p;
    vd_index_params_init(&p, dim, strcmp(a.metric, "ip") == 0 ? VD_METRIC_COSINE : VD_METRIC_EUCLID);
    p.m = a.m;
    p.ef_construct = a.efc;
    p.full_scan_threshold_kb = 0;
    p.seed = 100;
    p.quant.enabled = a.quant != 0;
    p.quant.quantile = 0.99f;
    const char *impl = a.quant ? "vectord-int8" : "vectord";
    struct vd_index *ix;
    unsigned nt = a.threads ? (a.threads > 64 ? 64 : a.threads) : 1;
    if (a.graph && access(a.graph, R_OK) == 0) {
        struct fetch_ctx fc = {base, n, dim};
        if (vd_index_load(a.graph, &p, fetch_base, &fc, &ix) != 0) {
            fprintf(stderr, "cannot load %s\n", a.graph);
            return 1;
        }
        printf("{\"impl\":\"%s\",\"kernel\":\"%s\",\"n\":%zu,\"dim\":%u,\"threads\":%u,"
               "\"loaded\":true",
               impl, vd_index_kernel_name(), n, dim, nt);
        goto search;
    }
    if (vd_index_new(&p, &ix) != 0) {
        fprintf(stderr, "vd_index_new failed\n");
        return 1;
    }
    long rss0 = bench_rss_bytes();
    double t0 = bench_now(), c0 = bench_cpu();
    for (size_t i = 0; i < n; i++) {
        struct vd_pid id = {.type = VD_PID_NUM, .u.num = i};
        if (vd_index_upsert(ix, &id, base + i * dim, i + 1) != 0) {
            fprintf(stderr, "upsert failed\n");
            return 1;
        }
    }
    pthread_t th[64];
    for (unsigned i = 1; i < nt; i++)
        pthread_create(&th[i], NULL, link_worker, ix);
    link_worker(ix);
    for (unsigned i = 1; i < nt; i++)
        pthread_join(th[i], NULL);
    double build = bench_now() - t0, build_cpu = bench_cpu() - c0;
    long rss1 = bench_rss_bytes();
    printf("{\"impl\":\"%s\",\"kernel\":\"%s\",\"n\":%zu,\"dim\":%u,\"threads\":%u,"
           "\"build_s\":%.3f,\"build_cpu_s\":%.3f,\"rss_delta_bytes\":%ld,\"index_bytes\":%zu",
           impl, vd_index_kernel_name(), n, dim, nt, build, build_cpu, rss1 - rss0,
           vd_index_memory(ix));
    if (a.graph && vd_index_save(ix, a.graph) != 0)
        fprintf(stderr, "cannot save %s\n", a.graph);
search:
    if (a.quant)
        printf(",\"code_kernel\":\"%s\",\"quant_ready\":%s,\"vector_bytes\":%zu,"
               "\"float_vector_bytes\":%zu",
               vd_index_code_kernel_name(), vd_index_quant_ready(ix) ? "true" : "false",
               vd_index_vector_memory(ix), n * dim * sizeof(float));
    if (a.search) {
        unsigned qd, gk;
        size_t nq, ng;
        float *qs = bench_load_vecs(a.query, 4, &qd, &nq);
        int32_t *gt = bench_load_vecs(a.gt, 4, &gk, &ng);
        uint64_t *res = calloc(nq * a.k, sizeof(*res));
        struct vd_search_hit hits[64];
        /* mode 0: as configured; with --quant also 1: floats walked, 2: codes not rescored */
        static const char *const curve[] = {"search", "search_float", "search_codes"};
        for (int mode = 0; mode < (a.quant ? 3 : 1); mode++) {
            printf(",\"%s\":[", curve[mode]);
            for (unsigned e = 0; e < a.nefs; e++) {
                unsigned ef = a.efs[e];
                double cq;
                double qps = BENCH_TIMED_QPS(nq, 0.5, &cq, {
                    struct vd_search_req r = {.query = qs + qi * dim, .k = a.k, .ef = ef,
                                              .quant_ignore = mode == 1,
                                              .quant_no_rescore = mode == 2};
                    uint32_t got;
                    vd_index_search(ix, &r, hits, &got);
                    for (uint32_t j = 0; j < a.k; j++)
                        res[qi * a.k + j] = j < got ? hits[j].id.u.num : UINT64_MAX;
                });
                printf("%s{\"ef\":%u,\"recall\":%.4f,\"qps\":%.1f,\"cpu_qps\":%.1f}",
                       e ? "," : "", ef, bench_recall(res, gt, nq, a.k, gk), qps, cq);
            }
            printf("]");
        }
        if (a.exact) {
            size_t nx = nq < 50 ? nq : 50;
            double cq;
            double qps = BENCH_TIMED_QPS(nx, 1.0, &cq, {
                struct vd_search_req r = {.query = qs + qi * dim, .k = a.k, .exact = true};
                uint32_t got;
                vd_index_search(ix, &r, hits, &got);
                for (uint32_t j = 0; j < a.k; j++)
                    res[qi * a.k + j] = j < got ? hits[j].id.u.num : UINT64_MAX;
            });
            printf(",\"exact_qps\":%.2f,\"exact_cpu_qps\":%.2f,\"exact_recall\":%.4f,\"exact_gb_s\":%.2f", qps, cq,
                   bench_recall(res, gt, nx, a.k, gk), qps * (double)n * dim * 4 / 1e9);
            printf(",\"mem_read_gb_s\":%.2f", bench_read_gbs((size_t)n * dim * 4));
        }
        free(qs);
        free(gt);
        free(res);
    }
    printf("}\n");
    vd_index_free(ix);
    free(base);
    return 0;
}
