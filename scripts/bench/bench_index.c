/*
 * Benchmark driver for vectord's index, in-process: builds from an .fvecs base set with N link
 * threads, then measures single-thread recall@10 and QPS for each ef, and the exact-scan QPS.
 * Prints one JSON object on stdout. With --graph FILE, a graph saved there by an earlier run is
 * loaded instead of built (search-only rounds: "loaded":true and no build figures).
 * With --quant the index is quantized to int8 (impl "vectord-int8"): "search" walks the codes and
 * rescores the beam with the floats, "search_float" walks the same graph on floats
 * (quantization ignored), "search_codes" returns the codes' scores without rescoring;
 * "vector_bytes" is what the index holds for vectors (floats + codes) and "float_vector_bytes"
 * the floats alone. With --disk (impl "vectord-int8-disk") the index keeps its floats on disk
 * (always_ram false): they are read, for rescoring and exact scans, in place from a read-only
 * memory map of the base file, as the server reads them from LMDB's map (without LMDB's key
 * lookup). A load reports the resident bytes it added ("rss_load_delta_bytes"), and the searches
 * the heap and file-backed resident bytes they added ("rss_search_anon_delta_bytes",
 * "rss_search_file_delta_bytes": file pages are the page cache's, reclaimable).
 */
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
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

/* The base file mapped read-only: the floats of an index that keeps them on disk. */
struct disk_src {
    const float *map; /* rows of 1 + dim words: the dim, then the floats */
    size_t n;
    unsigned dim;
};

static int disk_begin(void *ctx, void **rd)
{
    *rd = ctx;
    return 0;
}

static int disk_get(void *ctx, void *rd, const struct vd_pid *id, const float **out)
{
    const struct disk_src *d = ctx;
    (void)rd;
    if (id->type != VD_PID_NUM || id->u.num >= d->n)
        return VD_ENOTFOUND;
    *out = d->map + id->u.num * (d->dim + 1) + 1;
    return 0;
}

static void disk_end(void *ctx, void *rd)
{
    (void)ctx;
    (void)rd;
}

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
    p.quant.always_ram = !a.disk;
    struct disk_src ds = {NULL, n, dim};
    if (a.disk) {
        int fd = open(a.base, O_RDONLY);
        struct stat sb;
        void *m = fd < 0 || fstat(fd, &sb) ? MAP_FAILED
                                           : mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED || (size_t)sb.st_size < n * (dim + 1) * sizeof(float)) {
            fprintf(stderr, "cannot map %s\n", a.base);
            return 1;
        }
        close(fd);
        ds.map = m;
        p.src = (struct vd_index_source){disk_begin, disk_get, disk_end, &ds};
    }
    const char *impl = a.disk ? "vectord-int8-disk" : a.quant ? "vectord-int8" : "vectord";
    struct vd_index *ix;
    unsigned nt = a.threads ? (a.threads > 64 ? 64 : a.threads) : 1;
    if (a.graph && access(a.graph, R_OK) == 0) {
        struct fetch_ctx fc = {base, n, dim};
        long l0 = bench_rss_bytes();
        if (vd_index_load(a.graph, &p, fetch_base, &fc, &ix) != 0) {
            fprintf(stderr, "cannot load %s\n", a.graph);
            return 1;
        }
        printf("{\"impl\":\"%s\",\"kernel\":\"%s\",\"n\":%zu,\"dim\":%u,\"threads\":%u,"
               "\"loaded\":true,\"rss_load_delta_bytes\":%ld,\"index_bytes\":%zu",
               impl, vd_index_kernel_name(), n, dim, nt, bench_rss_bytes() - l0,
               vd_index_memory(ix));
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
        long anon0, file0, anon1, file1;
        bench_rss_split(&anon0, &file0);
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
        bench_rss_split(&anon1, &file1);
        printf(",\"rss_search_anon_delta_bytes\":%ld,\"rss_search_file_delta_bytes\":%ld",
               anon1 - anon0, file1 - file0);
    }
    printf("}\n");
    vd_index_free(ix);
    free(base);
    return 0;
}
