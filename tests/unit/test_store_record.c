/* Point record encoding: round trips, the one valid form, and input that must be refused. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vectord/record.h"

static const float dense[4] = {0.1f, -0.0f, 1e-38f, 3.4e38f};
static const uint32_t sidx[3] = {2, 17, 4000000000u};
static const float sval[3] = {1.5f, -2.0f, 0.25f};

static struct vd_record sample(struct vd_rvec *v)
{
    v[0] = (struct vd_rvec){.name = "", .name_len = 0, .kind = VD_RVEC_DENSE, .n = 4,
                            .values = dense};
    v[1] = (struct vd_rvec){.name = "a", .name_len = 1, .kind = VD_RVEC_DENSE, .n = 1,
                            .values = dense + 2};
    v[2] = (struct vd_rvec){.name = "text", .name_len = 4, .kind = VD_RVEC_SPARSE, .n = 3,
                            .values = sval, .indices = sidx};
    return (struct vd_record){
        .id = {.type = VD_PID_UUID, .u.uuid = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}},
        .incarnation = 0x0102030405060708ull,
        .version = {.hlc = UINT64_MAX - 1, .node = 42},
        .n_vectors = 3,
        .vectors = v,
        .payload = "{\"k\":\"\xc3\xa9\"}",
        .payload_len = 11};
}

static uint8_t *enc(const struct vd_record *r, size_t *len)
{
    size_t cap = vd_record_size(r);
    uint8_t *b = malloc(cap);
    assert_non_null(b);
    assert_int_equal(vd_record_encode(r, b, cap, len), 0);
    assert_int_equal(*len, cap);
    return b;
}

static void test_roundtrip(void **state)
{
    struct vd_rvec v[3], dv[VD_RECORD_MAX_VECTORS];
    struct vd_record r = sample(v), d;
    size_t len;
    uint8_t *b = enc(&r, &len);
    assert_int_equal(vd_record_decode(b, len, &d, dv), 0);
    assert_true(vd_pid_eq(&d.id, &r.id));
    assert_true(d.incarnation == r.incarnation);
    assert_int_equal(vd_version_cmp(d.version, r.version), 0);
    assert_false(d.tombstone);
    assert_int_equal(d.n_vectors, 3);
    assert_int_equal(d.payload_len, r.payload_len);
    assert_memory_equal(d.payload, r.payload, r.payload_len);
    const struct vd_rvec *u = vd_record_vector(&d, "", 0);
    assert_non_null(u);
    assert_int_equal(u->kind, VD_RVEC_DENSE);
    float out[4];
    vd_record_copy_values(u, out);
    assert_memory_equal(out, dense, sizeof dense); /* bit-exact, -0.0 included */
    const struct vd_rvec *s = vd_record_vector(&d, "text", 4);
    assert_non_null(s);
    assert_int_equal(s->n, 3);
    assert_memory_equal(s->indices, sidx, sizeof sidx);
    assert_memory_equal(s->values, sval, sizeof sval);
    /* data of a 4-aligned buffer is 4-aligned */
    assert_int_equal((uintptr_t)s->values % 4, 0);
    assert_null(vd_record_vector(&d, "b", 1));
    /* decoding then encoding gives the same bytes */
    size_t len2;
    uint8_t *b2 = enc(&d, &len2);
    assert_int_equal(len2, len);
    assert_memory_equal(b2, b, len);
    free(b2);
    free(b);

    /* a tombstone with an integer id */
    struct vd_record t = {.id = {.type = VD_PID_NUM, .u.num = 7}, .incarnation = 1,
                          .version = {5, 6}, .tombstone = true};
    b = enc(&t, &len);
    assert_int_equal(vd_record_decode(b, len, &d, dv), 0);
    assert_true(d.tombstone && d.n_vectors == 0 && d.payload == NULL && d.id.u.num == 7);
    free(b);
}

static void test_encode_refuses(void **state)
{
    struct vd_rvec v[3];
    struct vd_record r = sample(v);
    uint8_t b[512];
    size_t len;
    assert_int_equal(vd_record_encode(&r, b, 10, &len), VD_ETOOBIG);
    v[1].name = "";
    v[1].name_len = 0; /* duplicate name */
    assert_int_equal(vd_record_encode(&r, b, sizeof b, &len), VD_EINVAL);
    r = sample(v);
    float nan = NAN;
    v[1].values = &nan;
    assert_int_equal(vd_record_encode(&r, b, sizeof b, &len), VD_EINVAL);
    r = sample(v);
    uint32_t bad[3] = {3, 3, 4};
    v[2].indices = bad;
    assert_int_equal(vd_record_encode(&r, b, sizeof b, &len), VD_EINVAL);
    r = sample(v);
    r.tombstone = true;
    assert_int_equal(vd_record_encode(&r, b, sizeof b, &len), VD_EINVAL);
}

/* Every truncation and every single-byte change either fails with VD_ECORRUPT or decodes to a
 * record that encodes back to exactly the changed bytes (there is one valid form). */
static void test_truncation_and_corruption(void **state)
{
    struct vd_rvec v[3], dv[VD_RECORD_MAX_VECTORS];
    struct vd_record r = sample(v), d;
    size_t len;
    uint8_t *b = enc(&r, &len);
    for (size_t n = 0; n < len; n++) {
        uint8_t *t = malloc(n ? n : 1); /* exact size: ASan catches a read past it */
        memcpy(t, b, n);
        assert_int_equal(vd_record_decode(t, n, &d, dv), VD_ECORRUPT);
        free(t);
    }
    uint8_t *longer = malloc(len + 1);
    memcpy(longer, b, len);
    longer[len] = 0;
    assert_int_equal(vd_record_decode(longer, len + 1, &d, dv), VD_ECORRUPT);
    free(longer);
    size_t accepted = 0;
    for (size_t i = 0; i < len; i++) {
        for (int bit = 0; bit < 8; bit++) {
            uint8_t *t = malloc(len);
            memcpy(t, b, len);
            t[i] ^= (uint8_t)(1u << bit);
            int rc = vd_record_decode(t, len, &d, dv);
            if (rc == 0) {
                size_t l2;
                uint8_t *t2 = enc(&d, &l2);
                assert_int_equal(l2, len);
                assert_memory_equal(t2, t, len);
                free(t2);
                accepted++;
            } else {
                assert_int_equal(rc, VD_ECORRUPT);
            }
            free(t);
        }
    }
    /* flips in the version, the floats or the payload are valid records; in the framing not */
    assert_true(accepted > 0 && accepted < len * 8);
    /* counts that claim more than the buffer holds */
    b[3 + 17 + 24] = 0xff;
    b[3 + 17 + 25] = 0xff;
    assert_int_equal(vd_record_decode(b, len, &d, dv), VD_ECORRUPT);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_encode_refuses),
        cmocka_unit_test(test_truncation_and_corruption),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
