/* Internals shared between the files of the json module. */
#ifndef VECTORD_JSON_INT_H
#define VECTORD_JSON_INT_H

#include <stddef.h>
#include <stdint.h>

/* Correctly rounded double of a number literal s[0,n) that already matches the JSON grammar
 * (or is any text strtod accepts). Returns NaN only if a temporary allocation fails. */
double vd__json_text_to_double(const char *s, size_t n);

/* Length (2..4) of the well-formed UTF-8 sequence at c whose lead byte is >= 0x80, or 0 if the
 * bytes in [c, e) do not start one. */
size_t vd__json_utf8_len(const unsigned char *c, const unsigned char *e);

/* Powers of ten as correctly rounded doubles, 10^k for k in [VD__P10_MIN, VD__P10_MAX]. */
#define VD__P10_MIN (-64)
#define VD__P10_MAX 64
extern const double vd__json_p10[VD__P10_MAX - VD__P10_MIN + 1];
#define VD__P10(k) (vd__json_p10[(k) - VD__P10_MIN])

/* 128-bit approximations of 5^q, {high word, low word}, normalised so bit 127 is set, for
 * q in [VD__P5_MIN, VD__P5_MAX] (see scripts/gen_json_pow5.py, which writes pow5.c). Outside
 * this range a decimal of at most 19 digits is 0 or infinite as a double. */
#define VD__P5_MIN (-342)
#define VD__P5_MAX 308
extern const uint64_t vd__json_pow5[VD__P5_MAX - VD__P5_MIN + 1][2];

#endif
