/*
 * Shared by both benchmark drivers (C and C++): .fvecs/.ivecs loading, timing, RSS, argument
 * parsing and the JSON line each run prints.
 */
#ifndef VD_BENCH_COMMON_H
#define VD_BENCH_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct bench_args {
    const char *base, *query, *gt, *metric; /* metric: l2 | ip (vectors already normalised) */
    const char *graph; /* load the index from here if it exists, else build and save it here */
    unsigned m, efc, threads, k;
    int search, exact;
    int quant; /* vectord only: int8 quantization (walk on codes, rescore with floats) */
    int disk;  /* vectord only, with quant: always_ram false (floats read from the base file) */
    unsigned efs[32];
    unsigned nefs;
};

static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU time of the whole process: on a shared, oversubscribed machine this tracks the work done
 * far better than the wall clock does. */
static inline double bench_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline long bench_rss_bytes(void)
{
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
        rss = 0;
    fclose(f);
    return rss * 4096L;
}

/* Resident anonymous (heap) and file-backed bytes of this process (/proc/self/status). */
static inline void bench_rss_split(long *anon, long *file)
{
    char line[256];
    long kb;
    *anon = *file = 0;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "RssAnon: %ld kB", &kb) == 1)
            *anon = kb * 1024;
        else if (sscanf(line, "RssFile: %ld kB", &kb) == 1)
            *file = kb * 1024;
    }
    fclose(f);
}

/* Streaming read bandwidth of this machine (GB/s) over a buffer of `bytes`: the yardstick for the
 * exact scan, which should run close to it. Best of three passes. */
static inline double bench_read_gbs(size_t bytes)
{
    size_t n = bytes / 8;
    uint64_t *p = (uint64_t *)malloc(n * 8);
    for (size_t i = 0; i < n; i++)
        p[i] = i;
    double best = 0;
    volatile uint64_t sink = 0;
    for (int r = 0; r < 3; r++) {
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        double t0 = bench_now();
        for (size_t i = 0; i + 4 <= n; i += 4) {
            s0 += p[i];
            s1 += p[i + 1];
            s2 += p[i + 2];
            s3 += p[i + 3];
        }
        double el = bench_now() - t0;
        sink += s0 + s1 + s2 + s3;
        if ((double)bytes / el / 1e9 > best)
            best = (double)bytes / el / 1e9;
    }
    (void)sink;
    free(p);
    return best;
}

/* Reads an .fvecs (int32 dim, then dim floats, per vector) or .ivecs file. */
static inline void *bench_load_vecs(const char *path, size_t elem, unsigned *dim, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(2);
    }
    int32_t d;
    if (fread(&d, 4, 1, f) != 1 || d <= 0) {
        fprintf(stderr, "bad file %s\n", path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    size_t rec = 4 + (size_t)d * elem;
    *n = (size_t)len / rec;
    *dim = (unsigned)d;
    char *out = (char *)malloc(*n * (size_t)d * elem);
    for (size_t i = 0; i < *n; i++) {
        if (fread(&d, 4, 1, f) != 1 || fread(out + i * (size_t)*dim * elem, elem, *dim, f) != *dim) {
            fprintf(stderr, "short read %s\n", path);
            exit(2);
        }
    }
    fclose(f);
    return out;
}

static inline void bench_parse(int argc, char **argv, struct bench_args *a)
{
    memset(a, 0, sizeof(*a));
    a->m = 16;
    a->efc = 200;
    a->threads = 1;
    a->k = 10;
    a->metric = "l2";
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(argv[i], "--base")) a->base = v, i++;
        else if (!strcmp(argv[i], "--query")) a->query = v, i++;
        else if (!strcmp(argv[i], "--gt")) a->gt = v, i++;
        else if (!strcmp(argv[i], "--metric")) a->metric = v, i++;
        else if (!strcmp(argv[i], "--graph")) a->graph = v, i++;
        else if (!strcmp(argv[i], "--m")) a->m = (unsigned)atoi(v), i++;
        else if (!strcmp(argv[i], "--efc")) a->efc = (unsigned)atoi(v), i++;
        else if (!strcmp(argv[i], "--threads")) a->threads = (unsigned)atoi(v), i++;
        else if (!strcmp(argv[i], "--search")) a->search = 1;
        else if (!strcmp(argv[i], "--exact")) a->exact = 1;
        else if (!strcmp(argv[i], "--quant")) a->quant = 1;
        else if (!strcmp(argv[i], "--disk")) a->quant = a->disk = 1;
        else if (!strcmp(argv[i], "--efs")) {
            char *s = strdup(v), *save = NULL;
            for (char *t = strtok_r(s, ",", &save); t && a->nefs < 32; t = strtok_r(NULL, ",", &save))
                a->efs[a->nefs++] = (unsigned)atoi(t);
            free(s);
            i++;
        } else {
            fprintf(stderr, "unknown argument %s\n", argv[i]);
            exit(2);
        }
    }
    if (!a->base || (a->search && (!a->query || !a->gt))) {
        fprintf(stderr, "usage: %s --base F [--query F --gt F --search] [--metric l2|ip] "
                        "[--m 16] [--efc 200] [--threads 1] [--efs 10,20,..] [--exact] [--graph FILE]\n", argv[0]);
        exit(2);
    }
}

/* recall@k of res[nq][k] (labels) against gt[nq][gtk] (first k used) */
static inline double bench_recall(const uint64_t *res, const int32_t *gt, size_t nq, unsigned k,
                                  unsigned gtk)
{
    size_t good = 0;
    for (size_t q = 0; q < nq; q++)
        for (unsigned i = 0; i < k; i++)
            for (unsigned j = 0; j < k; j++)
                if (res[q * k + i] == (uint64_t)gt[q * gtk + j]) {
                    good++;
                    break;
                }
    return (double)good / (double)(nq * k);
}

/* Runs the body over all queries repeatedly until at least min_s of CPU time elapsed; evaluates
 * to queries per wall second and stores queries per CPU second in *cpu_qps. */
#define BENCH_TIMED_QPS(nq, min_s, cpu_qps, ...)                                                 \
    ({                                                                                            \
        double t0_ = bench_now(), c0_ = bench_cpu(), el_ = 0;                                     \
        size_t done_ = 0;                                                                         \
        do {                                                                                      \
            for (size_t qi = 0; qi < (nq); qi++) {                                                \
                __VA_ARGS__;                                                                      \
            }                                                                                     \
            done_ += (nq);                                                                        \
        } while (bench_cpu() - c0_ < (min_s));                                                    \
        el_ = bench_now() - t0_;                                                                  \
        *(cpu_qps) = (double)done_ / (bench_cpu() - c0_);                                         \
        (double)done_ / el_;                                                                      \
    })

#endif
