/*
 * Distance kernels: a scalar reference and AVX2+FMA / AVX-512 variants compiled with function
 * target attributes, so the default build runs anywhere and the best set is picked at run time.
 *
 * The SIMD loops keep four independent accumulators: one FMA chain is bound by the FMA latency
 * (4 cycles), four chains keep both FMA ports busy on the vector lengths we care about
 * (128..1536). Tails use masked loads on AVX-512 and a scalar loop on AVX2.
 */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "index_int.h"
#include "vectord/core.h"

/* ---- scalar reference -------------------------------------------------------------------- */

static float dot_scalar(const float *a, const float *b, size_t n)
{
    float s = 0.0f;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static float l2_scalar(const float *a, const float *b, size_t n)
{
    float s = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float d = a[i] - b[i];
        s += d * d;
    }
    return s;
}

static float l1_scalar(const float *a, const float *b, size_t n)
{
    float s = 0.0f;
    for (size_t i = 0; i < n; i++)
        s += fabsf(a[i] - b[i]);
    return s;
}

static const struct vd__kernels k_scalar = {"scalar", dot_scalar, l2_scalar, l1_scalar};

const struct vd__kernels *vd__index_kernels_scalar(void)
{
    return &k_scalar;
}

static uint64_t cdot_scalar(const uint8_t *a, const uint8_t *b, size_t n)
{
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++)
        s += (uint32_t)a[i] * b[i];
    return s;
}

static uint64_t cl1_scalar(const uint8_t *a, const uint8_t *b, size_t n)
{
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++)
        s += a[i] > b[i] ? (uint32_t)(a[i] - b[i]) : (uint32_t)(b[i] - a[i]);
    return s;
}

static const struct vd__code_kernels c_scalar = {"scalar", cdot_scalar, cl1_scalar};

const struct vd__code_kernels *vd__index_code_kernels_scalar(void)
{
    return &c_scalar;
}

#if defined(__x86_64__) || defined(__i386__)

/* ---- AVX2 + FMA ---------------------------------------------------------------------------- */

#define AVX2 __attribute__((target("avx2,fma")))

AVX2 static inline float hsum256(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v);
    __m128 hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    __m128 sh = _mm_movehdup_ps(lo);
    lo = _mm_add_ps(lo, sh);
    sh = _mm_movehl_ps(sh, lo);
    lo = _mm_add_ss(lo, sh);
    return _mm_cvtss_f32(lo);
}

AVX2 static float dot_avx2(const float *a, const float *b, size_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

AVX2 static float l2_avx2(const float *a, const float *b, size_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
        __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16));
        __m256 d3 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24));
        s0 = _mm256_fmadd_ps(d0, d0, s0);
        s1 = _mm256_fmadd_ps(d1, d1, s1);
        s2 = _mm256_fmadd_ps(d2, d2, s2);
        s3 = _mm256_fmadd_ps(d3, d3, s3);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        s0 = _mm256_fmadd_ps(d, d, s0);
    }
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++) {
        float d = a[i] - b[i];
        s += d * d;
    }
    return s;
}

AVX2 static float l1_avx2(const float *a, const float *b, size_t n)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
        s0 = _mm256_add_ps(s0, _mm256_andnot_ps(sign, d0));
        s1 = _mm256_add_ps(s1, _mm256_andnot_ps(sign, d1));
    }
    for (; i + 8 <= n; i += 8) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        s0 = _mm256_add_ps(s0, _mm256_andnot_ps(sign, d));
    }
    float s = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; i++)
        s += fabsf(a[i] - b[i]);
    return s;
}

static const struct vd__kernels k_avx2 = {"avx2", dot_avx2, l2_avx2, l1_avx2};

/* Sum of eight non-negative 32-bit lanes. */
AVX2 static inline uint64_t hsum_u32x8(__m256i v)
{
    uint32_t l[8];
    _mm256_storeu_si256((__m256i *)l, v);
    uint64_t s = 0;
    for (int i = 0; i < 8; i++)
        s += l[i];
    return s;
}

/* Codes widened to 16 bits and multiplied pairwise into 32-bit lanes (madd): 255 * 255 * 2 fits
 * a signed 16x16->32 pair sum, and a lane collects n/16 products, below 2^31 for n <= 65536.
 * (maddubs would take 32 codes at once but saturates at 16 bits for codes above 127.) */
AVX2 static uint64_t cdot_avx2(const uint8_t *a, const uint8_t *b, size_t n)
{
    __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i va = _mm256_loadu_si256((const __m256i *)(a + i));
        __m256i vb = _mm256_loadu_si256((const __m256i *)(b + i));
        __m256i alo = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(va));
        __m256i ahi = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(va, 1));
        __m256i blo = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(vb));
        __m256i bhi = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(vb, 1));
        s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(alo, blo));
        s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(ahi, bhi));
    }
    uint64_t s = hsum_u32x8(s0) + hsum_u32x8(s1);
    return s + cdot_scalar(a + i, b + i, n - i);
}

AVX2 static uint64_t cl1_avx2(const uint8_t *a, const uint8_t *b, size_t n)
{
    __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm256_add_epi64(s0, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i *)(a + i)),
                                                  _mm256_loadu_si256((const __m256i *)(b + i))));
        s1 = _mm256_add_epi64(s1, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i *)(a + i + 32)),
                                                  _mm256_loadu_si256((const __m256i *)(b + i + 32))));
    }
    for (; i + 32 <= n; i += 32)
        s0 = _mm256_add_epi64(s0, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i *)(a + i)),
                                                  _mm256_loadu_si256((const __m256i *)(b + i))));
    uint64_t l[4];
    _mm256_storeu_si256((__m256i *)l, _mm256_add_epi64(s0, s1));
    return l[0] + l[1] + l[2] + l[3] + cl1_scalar(a + i, b + i, n - i);
}

static const struct vd__code_kernels c_avx2 = {"avx2", cdot_avx2, cl1_avx2};

/* ---- AVX-512F ---------------------------------------------------------------------------- */

#define AVX512 __attribute__((target("avx512f")))

AVX512 static float dot_avx512(const float *a, const float *b, size_t n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
    }
    for (; i + 16 <= n; i += 16)
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

AVX512 static float l2_avx512(const float *a, const float *b, size_t n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));
        __m512 d2 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32));
        __m512 d3 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48));
        s0 = _mm512_fmadd_ps(d0, d0, s0);
        s1 = _mm512_fmadd_ps(d1, d1, s1);
        s2 = _mm512_fmadd_ps(d2, d2, s2);
        s3 = _mm512_fmadd_ps(d3, d3, s3);
    }
    for (; i + 16 <= n; i += 16) {
        __m512 d = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        s0 = _mm512_fmadd_ps(d, d, s0);
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
        s1 = _mm512_fmadd_ps(d, d, s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

AVX512 static float l1_avx512(const float *a, const float *b, size_t n)
{
    /* abs through an integer AND: _mm512_abs_ps needs AVX512DQ on some compilers. */
    const __m512i mask = _mm512_set1_epi32(0x7fffffff);
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));
        s0 = _mm512_add_ps(s0, _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(d0), mask)));
        s1 = _mm512_add_ps(s1, _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(d1), mask)));
    }
    for (; i + 16 <= n; i += 16) {
        __m512 d = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        s0 = _mm512_add_ps(s0, _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(d), mask)));
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
        s1 = _mm512_add_ps(s1, _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(d), mask)));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static const struct vd__kernels k_avx512 = {"avx512", dot_avx512, l2_avx512, l1_avx512};

/* ---- AVX-512BW and AVX-512 VNNI code kernels ---------------------------------------------- */

#define AVX512BW __attribute__((target("avx512f,avx512bw")))
#define AVX512VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

AVX512BW static inline __mmask64 tail_mask(size_t k)
{
    return k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << k) - 1);
}

/* As cdot_avx2 on 64 codes at a time; the tail through a masked load. */
AVX512BW static uint64_t cdot_avx512bw(const uint8_t *a, const uint8_t *b, size_t n)
{
    __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
    for (size_t i = 0; i < n; i += 64) {
        __mmask64 m = tail_mask(n - i);
        __m512i va = _mm512_maskz_loadu_epi8(m, a + i), vb = _mm512_maskz_loadu_epi8(m, b + i);
        __m512i alo = _mm512_cvtepu8_epi16(_mm512_castsi512_si256(va));
        __m512i ahi = _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(va, 1));
        __m512i blo = _mm512_cvtepu8_epi16(_mm512_castsi512_si256(vb));
        __m512i bhi = _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(vb, 1));
        s0 = _mm512_add_epi32(s0, _mm512_madd_epi16(alo, blo));
        s1 = _mm512_add_epi32(s1, _mm512_madd_epi16(ahi, bhi));
    }
    /* lanes are non-negative and below 2^31: widen before the sum, which may exceed 2^32 */
    __m512i w = _mm512_add_epi64(_mm512_cvtepu32_epi64(_mm512_castsi512_si256(s0)),
                                 _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(s0, 1)));
    w = _mm512_add_epi64(w, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(s1)));
    w = _mm512_add_epi64(w, _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(s1, 1)));
    return (uint64_t)_mm512_reduce_add_epi64(w);
}

AVX512BW static uint64_t cl1_avx512bw(const uint8_t *a, const uint8_t *b, size_t n)
{
    __m512i s = _mm512_setzero_si512();
    for (size_t i = 0; i < n; i += 64) {
        __mmask64 m = tail_mask(n - i);
        s = _mm512_add_epi64(s, _mm512_sad_epu8(_mm512_maskz_loadu_epi8(m, a + i),
                                                _mm512_maskz_loadu_epi8(m, b + i)));
    }
    return (uint64_t)_mm512_reduce_add_epi64(s);
}

/* vpdpbusd multiplies unsigned by signed bytes, so b is shifted into the signed range:
 * sum a*b = sum a*(b-128) + 128 * sum a, with sum a from vpsadbw against zero. A 32-bit lane
 * collects n/16 products of magnitude <= 255*128, far from overflow for n <= 65536. */
AVX512VNNI static uint64_t cdot_vnni(const uint8_t *a, const uint8_t *b, size_t n)
{
    const __m512i flip = _mm512_set1_epi8((char)0x80), zero = _mm512_setzero_si512();
    __m512i acc = _mm512_setzero_si512(), sa = _mm512_setzero_si512();
    for (size_t i = 0; i < n; i += 64) {
        __mmask64 m = tail_mask(n - i);
        __m512i va = _mm512_maskz_loadu_epi8(m, a + i);
        /* masked-off bytes of b load as 0 and flip to -128, but multiply a's zeros */
        __m512i vb = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, b + i), flip);
        acc = _mm512_dpbusd_epi32(acc, va, vb);
        sa = _mm512_add_epi64(sa, _mm512_sad_epu8(va, zero));
    }
    __m512i w = _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(acc)),
                                 _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(acc, 1)));
    int64_t d = _mm512_reduce_add_epi64(w);
    return (uint64_t)(d + 128 * _mm512_reduce_add_epi64(sa));
}

static const struct vd__code_kernels c_avx512bw = {"avx512bw", cdot_avx512bw, cl1_avx512bw};
static const struct vd__code_kernels c_vnni = {"avx512vnni", cdot_vnni, cl1_avx512bw};

const struct vd__kernels *vd__index_kernels_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? &k_avx2 : NULL;
}

const struct vd__kernels *vd__index_kernels_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? &k_avx512 : NULL;
}

const struct vd__code_kernels *vd__index_code_kernels_avx2(void)
{
    return vd__index_kernels_avx2() ? &c_avx2 : NULL;
}

const struct vd__code_kernels *vd__index_code_kernels_avx512bw(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") ? &c_avx512bw
                                                                                   : NULL;
}

const struct vd__code_kernels *vd__index_code_kernels_vnni(void)
{
    __builtin_cpu_init();
    return vd__index_code_kernels_avx512bw() && __builtin_cpu_supports("avx512vnni") ? &c_vnni
                                                                                     : NULL;
}

#else

const struct vd__kernels *vd__index_kernels_avx2(void)
{
    return NULL;
}

const struct vd__code_kernels *vd__index_code_kernels_avx2(void)
{
    return NULL;
}

const struct vd__code_kernels *vd__index_code_kernels_avx512bw(void)
{
    return NULL;
}

const struct vd__code_kernels *vd__index_code_kernels_vnni(void)
{
    return NULL;
}

const struct vd__kernels *vd__index_kernels_avx512(void)
{
    return NULL;
}

#endif

static const struct vd__kernels *chosen;
static pthread_once_t chosen_once = PTHREAD_ONCE_INIT;

static void choose_kernels(void)
{
    const char *cap = getenv("VD_KERNELS");
    const struct vd__kernels *k = NULL;
    if (!cap || strcmp(cap, "avx2") != 0)
        k = cap && strcmp(cap, "scalar") == 0 ? NULL : vd__index_kernels_avx512();
    if (!k && !(cap && strcmp(cap, "scalar") == 0))
        k = vd__index_kernels_avx2();
    chosen = k ? k : &k_scalar;
}

const struct vd__kernels *vd__index_kernels(void)
{
    pthread_once(&chosen_once, choose_kernels);
    return chosen;
}

static const struct vd__code_kernels *chosen_codes;
static pthread_once_t chosen_codes_once = PTHREAD_ONCE_INIT;

static void choose_code_kernels(void)
{
    const char *cap = getenv("VD_KERNELS");
    bool scalar = cap && strcmp(cap, "scalar") == 0, avx2 = cap && strcmp(cap, "avx2") == 0;
    const struct vd__code_kernels *k = NULL;
    if (!scalar && !avx2)
        k = vd__index_code_kernels_vnni();
    if (!scalar && !avx2 && !k)
        k = vd__index_code_kernels_avx512bw();
    if (!scalar && !k)
        k = vd__index_code_kernels_avx2();
    chosen_codes = k ? k : &c_scalar;
}

const struct vd__code_kernels *vd__index_code_kernels(void)
{
    pthread_once(&chosen_codes_once, choose_code_kernels);
    return chosen_codes;
}

const char *vd_index_code_kernel_name(void)
{
    return vd__index_code_kernels()->name;
}

const char *vd_index_kernel_name(void)
{
    return vd__index_kernels()->name;
}
