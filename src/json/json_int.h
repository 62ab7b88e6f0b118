/* Internals shared between the files of the json module. */
#ifndef VECTORD_JSON_INT_H
#define VECTORD_JSON_INT_H

#include <stddef.h>

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

#endif
