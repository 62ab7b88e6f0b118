// Peer driver: hnswlib (Debian libhnswlib-dev, header-only) with the same data, parameters and
// measurement loop as bench_index. Prints one JSON object on stdout.
#include <atomic>
#include <thread>
#include <vector>

#include <hnswlib/hnswlib.h>
#include <unistd.h>

#include "bench_common.h"

int main(int argc, char **argv)
{
    bench_args a;
    bench_parse(argc, argv, &a);
    unsigned dim;
    size_t n;
    float *base = (float *)bench_load_vecs(a.base, 4, &dim, &n);
    hnswlib::SpaceInterface<float> *space;
    if (strcmp(a.metric, "ip") == 0)
        space = new hnswlib::InnerProductSpace(dim);
    else
        space = new hnswlib::L2Space(dim);
    unsigned nt = a.threads ? a.threads : 1;
    hnswlib::HierarchicalNSW<float> *ix;
    if (a.graph && access(a.graph, R_OK) == 0) {
        ix = new hnswlib::HierarchicalNSW<float>(space, a.graph, false, n);
        printf("{\"impl\":\"hnswlib\",\"n\":%zu,\"dim\":%u,\"threads\":%u,\"loaded\":true", n, dim, nt);
        goto search;
    }
    {
    long rss0 = bench_rss_bytes();
    double t0 = bench_now(), c0 = bench_cpu();
    ix = new hnswlib::HierarchicalNSW<float>(space, n, a.m, a.efc, 100);
    std::atomic<size_t> next(0);
    auto work = [&]() {
        for (;;) {
            size_t i = next.fetch_add(1);
            if (i >= n)
                break;
            ix->addPoint(base + i * dim, (hnswlib::labeltype)i);
        }
    };
    std::vector<std::thread> th;
    for (unsigned i = 1; i < nt; i++)
        th.emplace_back(work);
    work();
    for (auto &t : th)
        t.join();
    double build = bench_now() - t0, build_cpu = bench_cpu() - c0;
    long rss1 = bench_rss_bytes();
    printf("{\"impl\":\"hnswlib\",\"n\":%zu,\"dim\":%u,\"threads\":%u,\"build_s\":%.3f,\"build_cpu_s\":%.3f,"
           "\"rss_delta_bytes\":%ld",
           n, dim, nt, build, build_cpu, rss1 - rss0);
    if (a.graph)
        ix->saveIndex(a.graph);
    }
search:
    if (a.search) {
        unsigned qd, gk;
        size_t nq, ng;
        float *qs = (float *)bench_load_vecs(a.query, 4, &qd, &nq);
        int32_t *gt = (int32_t *)bench_load_vecs(a.gt, 4, &gk, &ng);
        std::vector<uint64_t> res(nq * a.k, UINT64_MAX);
        printf(",\"search\":[");
        for (unsigned e = 0; e < a.nefs; e++) {
            unsigned ef = a.efs[e];
            ix->setEf(ef);
            double cq;
            double qps = BENCH_TIMED_QPS(nq, 0.5, &cq, {
                auto pq = ix->searchKnn(qs + qi * dim, a.k);
                size_t j = pq.size();
                while (!pq.empty()) {
                    res[qi * a.k + --j] = pq.top().second;
                    pq.pop();
                }
            });
            printf("%s{\"ef\":%u,\"recall\":%.4f,\"qps\":%.1f,\"cpu_qps\":%.1f}", e ? "," : "", ef,
                   bench_recall(res.data(), gt, nq, a.k, gk), qps, cq);
        }
        printf("]");
        if (a.exact) {
            auto *bf = new hnswlib::BruteforceSearch<float>(space, n);
            for (size_t i = 0; i < n; i++)
                bf->addPoint(base + i * dim, (hnswlib::labeltype)i);
            size_t nx = nq < 50 ? nq : 50;
            double cq;
            double qps = BENCH_TIMED_QPS(nx, 1.0, &cq, {
                auto pq = bf->searchKnn(qs + qi * dim, a.k);
                size_t j = pq.size();
                while (!pq.empty()) {
                    res[qi * a.k + --j] = pq.top().second;
                    pq.pop();
                }
            });
            printf(",\"exact_qps\":%.2f,\"exact_cpu_qps\":%.2f,\"exact_recall\":%.4f,\"exact_gb_s\":%.2f", qps, cq,
                   bench_recall(res.data(), gt, nx, a.k, gk), qps * (double)n * dim * 4 / 1e9);
            delete bf;
        }
        free(qs);
        free(gt);
    }
    printf("}\n");
    delete ix;
    delete space;
    free(base);
    return 0;
}
