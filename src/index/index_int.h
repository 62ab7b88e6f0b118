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

/* Kernel sets by instruction set; NULL when this CPU cannot run them. Static storage. */
const struct vd__kernels *vd__index_kernels_scalar(void);
const struct vd__kernels *vd__index_kernels_avx2(void);
const struct vd__kernels *vd__index_kernels_avx512(void);
/* The best set for this CPU, chosen once from cpuid (env VD_KERNELS=scalar|avx2 caps it). */
const struct vd__kernels *vd__index_kernels(void);

#endif
