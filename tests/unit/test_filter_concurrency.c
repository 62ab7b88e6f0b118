/*
 * A compiled filter is shared by every search thread: this runs several threads evaluating one
 * filter over shared binary and cJSON payloads and checks each gets the single-threaded answer.
 * Run under ThreadSanitizer in CI (the file name carries the "concurrency" label).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vectord/filter.h"
#include "vectord/json.h"

enum { NPOINTS = 512, NTHREADS = 4 };

struct shared {
    const struct vd_filter *f;
    cJSON *payloads[NPOINTS];
    uint8_t *bins[NPOINTS];
    size_t lens[NPOINTS];
    bool expect[NPOINTS];
    int rounds;
};

struct worker {
    pthread_t th;
    const struct shared *sh;
    int mismatches;
};

static void *run(void *arg)
{
    struct worker *w = arg;
    const struct shared *sh = w->sh;
    for (int r = 0; r < sh->rounds; r++)
        for (int i = 0; i < NPOINTS; i++) {
            struct vd_pid id = {.type = VD_PID_NUM, .u.num = (uint64_t)i};
            bool a = vd_filter_match_bin(sh->f, &id, sh->bins[i], sh->lens[i]);
            bool b = vd_filter_match(sh->f, &id, sh->payloads[i]);
            w->mismatches += (a != sh->expect[i]) + (b != sh->expect[i]);
        }
    return NULL;
}

static void test_shared_filter(void **state)
{
    static const char *filter =
        "{\"must\":[{\"key\":\"tags\",\"match\":{\"any\":[\"a\",\"c\"]}}],"
        "\"should\":[{\"key\":\"meta.n\",\"range\":{\"gte\":10}},{\"has_id\":[1,2,3,4,5]}],"
        "\"must_not\":[{\"is_null\":{\"key\":\"gone\"}}]}";
    static const char *tags[] = {"a", "b", "c", "d"};
    struct shared sh = {0};
    struct vd_err err = {0};
    cJSON *fj = NULL;
    assert_int_equal(vd_json_parse(filter, strlen(filter), 0, &fj, &err), 0);
    struct vd_filter *f;
    assert_int_equal(vd_filter_parse(fj, &f, &err), 0);
    cJSON_Delete(fj);
    sh.f = f;
    const char *scale = getenv("VD_TEST_SCALE");
    sh.rounds = scale && strcmp(scale, "small") == 0 ? 20 : 200;
    int matched = 0;
    for (int i = 0; i < NPOINTS; i++) {
        char s[160];
        snprintf(s, sizeof s, "{\"tags\":[\"%s\",\"%s\"],\"meta\":{\"n\":%d},\"gone\":%s}",
                 tags[i % 4], tags[(i / 4) % 4], i % 17, i % 5 == 0 ? "null" : "1");
        assert_int_equal(vd_json_parse(s, strlen(s), 0, &sh.payloads[i], &err), 0);
        assert_int_equal(vd_payload_encode(sh.payloads[i], &sh.bins[i], &sh.lens[i]), 0);
        struct vd_pid id = {.type = VD_PID_NUM, .u.num = (uint64_t)i};
        sh.expect[i] = vd_filter_match(f, &id, sh.payloads[i]);
        matched += sh.expect[i];
    }
    assert_true(matched > 0 && matched < NPOINTS);

    struct worker w[NTHREADS];
    for (int t = 0; t < NTHREADS; t++) {
        w[t] = (struct worker){.sh = &sh};
        assert_int_equal(pthread_create(&w[t].th, NULL, run, &w[t]), 0);
    }
    for (int t = 0; t < NTHREADS; t++) {
        assert_int_equal(pthread_join(w[t].th, NULL), 0);
        assert_int_equal(w[t].mismatches, 0);
    }
    for (int i = 0; i < NPOINTS; i++) {
        cJSON_Delete(sh.payloads[i]);
        free(sh.bins[i]);
    }
    vd_filter_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shared_filter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
