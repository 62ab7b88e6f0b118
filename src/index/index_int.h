/*
 * Internals of the index module shared between its files and its unit tests.
 */
#ifndef VD_INDEX_INT_H
#define VD_INDEX_INT_H

#include <stddef.h>
#include <stdint.h>

/* A distance kernel over n floats. Pointers may be unaligned. */
typedef float (*vd__dist_fn)(const float *a, const float *b, size_t n);

/* One instruction-set variant of every kernel. */
struct vd__kernels {
    const char *name;
    vd__dist_fn dot; /* sum a[i]*b[i] */
    vd__dist_fn l2;  /* sum (a[i]-b[i])^2 */
    vd__dist_fn l1;  /* sum |a[i]-b[i]| */
};

/* Integer kernels over n unsigned 8-bit codes (int8 scalar quantization). Exact: every variant
 * returns the same value as the scalar one for n up to 65536. Pointers may be unaligned. */
typedef uint64_t (*vd__code_fn)(const uint8_t *a, const uint8_t *b, size_t n);

struct vd__code_kernels {
    const char *name;
    vd__code_fn dot; /* sum a[i]*b[i] */
    vd__code_fn l1;  /* sum |a[i]-b[i]| */
};

/* Code kernel sets by instruction set (NULL when this CPU cannot run them) and the best one,
 * chosen once at run time under the same VD_KERNELS cap as the float kernels. Static storage. */
const struct vd__code_kernels *vd__index_code_kernels_scalar(void);
const struct vd__code_kernels *vd__index_code_kernels_avx2(void);
const struct vd__code_kernels *vd__index_code_kernels_avx512bw(void);
const struct vd__code_kernels *vd__index_code_kernels_vnni(void);
const struct vd__code_kernels *vd__index_code_kernels(void);

/* Kernel sets by instruction set; NULL when this CPU cannot run them. Static storage. */
const struct vd__kernels *vd__index_kernels_scalar(void);
const struct vd__kernels *vd__index_kernels_avx2(void);
const struct vd__kernels *vd__index_kernels_avx512(void);
/* The best set for this CPU, chosen once from cpuid (env VD_KERNELS=scalar|avx2 caps it). */
const struct vd__kernels *vd__index_kernels(void);

#endif
