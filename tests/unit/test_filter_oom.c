/*
 * Allocation failure injection for the filter module: the Nth allocation fails, for every N
 * until the operation succeeds; each failure must come back as VD_ENOMEM with nothing leaked
 * (live allocations are counted) and nothing crashed.
 *
 * malloc and friends are interposed in this executable, forwarding to glibc's __libc_* entry
 * points. Sanitizers interpose them too, so under ASan/TSan the test only reports a skip.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vectord/filter.h"
#include "vectord/json.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define VD_NO_INTERPOSE 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) ||                         \
    __has_feature(memory_sanitizer)
#define VD_NO_INTERPOSE 1
#endif
#endif

#ifndef VD_NO_INTERPOSE
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t sz);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);

static long countdown = -1; /* allocations left before one fails; -1: never fail */
static long live;           /* allocations not yet freed */

static bool should_fail(void)
{
    if (countdown < 0)
        return false;
    return countdown-- == 0;
}

void *malloc(size_t n)
{
    if (should_fail())
        return NULL;
    void *p = __libc_malloc(n);
    live += p != NULL;
    return p;
}

void *calloc(size_t n, size_t sz)
{
    if (should_fail())
        return NULL;
    void *p = __libc_calloc(n, sz);
    live += p != NULL;
    return p;
}

void *realloc(void *old, size_t n)
{
    if (should_fail())
        return NULL;
    void *p = __libc_realloc(old, n);
    if (!old)
        live += p != NULL;
    return p;
}

void free(void *p)
{
    live -= p != NULL;
    __libc_free(p);
}

static const char *FILTER =
    "{\"must\":[{\"key\":\"a.b[].c\",\"match\":{\"any\":[\"x\",\"y\",\"z\"]}},"
    "{\"key\":\"n\",\"match\":{\"except\":[1,2,3]}},{\"key\":\"s\",\"match\":{\"value\":\"v\"}},"
    "{\"is_empty\":{\"key\":\"e\"}},{\"has_id\":[1,\"550e8400-e29b-41d4-a716-446655440000\"]}],"
    "\"should\":{\"must_not\":[{\"key\":\"r\",\"range\":{\"gt\":1}},{\"is_null\":{\"key\":\"q\"}}]}"
    ","
    "\"min_should\":{\"conditions\":[{\"key\":\"t\",\"match\":{\"text\":\"abc\"}}],\"min_count\":1}"
    "}";

static const char *PAYLOAD =
    "{\"a\":{\"b\":[{\"c\":\"x\"},{\"c\":[1,2.5,null,true]}]},\"n\":4,\"s\":\"v\",\"e\":[],"
    "\"nested\":{\"deep\":{\"deeper\":[{},{\"k\":\"v\"}]}},\"t\":\"xabcx\"}";

static void test_parse_oom(void **state)
{
    cJSON *j = NULL;
    struct vd_err err;
    assert_int_equal(vd_json_parse(FILTER, strlen(FILTER), 0, &j, &err), 0);
    long failures = 0;
    for (long n = 0;; n++) {
        long before = live;
        struct vd_filter *f = NULL;
        countdown = n;
        int rc = vd_filter_parse(j, &f, &err);
        countdown = -1;
        if (rc == 0) {
            vd_filter_free(f);
            assert_int_equal(live, before);
            break;
        }
        assert_int_equal(rc, VD_ENOMEM);
        assert_null(f);
        assert_int_equal(live, before);
        failures++;
    }
    assert_true(failures > 10);
    cJSON_Delete(j);
}

static void test_encode_decode_oom(void **state)
{
    cJSON *p = NULL;
    struct vd_err err;
    assert_int_equal(vd_json_parse(PAYLOAD, strlen(PAYLOAD), 0, &p, &err), 0);
    uint8_t *bin = NULL;
    size_t len = 0;
    long failures = 0;
    for (long n = 0;; n++) {
        long before = live;
        countdown = n;
        int rc = vd_payload_encode(p, &bin, &len);
        countdown = -1;
        if (rc == 0)
            break;
        assert_int_equal(rc, VD_ENOMEM);
        assert_int_equal(live, before);
        failures++;
    }
    assert_true(failures > 0);
    for (long n = 0;; n++) {
        long before = live;
        cJSON *back = NULL;
        countdown = n;
        int rc = vd_payload_decode(bin, len, &back);
        countdown = -1;
        if (rc == 0) {
            cJSON_Delete(back);
            break;
        }
        assert_int_equal(rc, VD_ENOMEM);
        assert_int_equal(live, before);
        failures++;
    }
    free(bin);
    cJSON_Delete(p);
}

/* Evaluation must not allocate at all. */
static void test_match_allocates_nothing(void **state)
{
    cJSON *j = NULL, *p = NULL;
    struct vd_err err;
    assert_int_equal(vd_json_parse(FILTER, strlen(FILTER), 0, &j, &err), 0);
    assert_int_equal(vd_json_parse(PAYLOAD, strlen(PAYLOAD), 0, &p, &err), 0);
    struct vd_filter *f;
    assert_int_equal(vd_filter_parse(j, &f, &err), 0);
    uint8_t *bin;
    size_t len;
    assert_int_equal(vd_payload_encode(p, &bin, &len), 0);
    struct vd_pid id = {.type = VD_PID_NUM, .u.num = 1};
    countdown = 0; /* the very next allocation fails */
    bool a = vd_filter_match_bin(f, &id, bin, len);
    bool b = vd_filter_match(f, &id, p);
    bool nothing_allocated = countdown == 0;
    countdown = -1;
    assert_true(nothing_allocated);
    assert_true(a == b);
    free(bin);
    vd_filter_free(f);
    cJSON_Delete(j);
    cJSON_Delete(p);
}
#endif

int main(void)
{
#ifdef VD_NO_INTERPOSE
    printf("allocation failure injection skipped under sanitizers\n");
    return 0;
#else
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_oom),
        cmocka_unit_test(test_encode_decode_oom),
        cmocka_unit_test(test_match_allocates_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
#endif
}
