/*
 * rows.h -- small row operations the indexes share: float -> IEEE half
 * (round to nearest even) for float16 storage, and scaling a row to unit
 * length for cosine.
 */
#ifndef ISX_ROWS_H
#define ISX_ROWS_H

#include <math.h>
#include <string.h>

#include "isx.h"

/* float -> IEEE half, round to nearest even (values are finite here). */
static inline uint16_t isx_float_to_half(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    int32_t e = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t m = x & 0x7fffff;
    if (e >= 31)
        return (uint16_t)(sign | 0x7c00); /* overflow: inf (beyond 65504) */
    if (e <= 0) {
        if (e < -10)
            return (uint16_t)sign;
        m |= 0x800000;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1)))
            h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)e << 10) | (m >> 13);
    uint32_t rem = m & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
        h++; /* may carry into the exponent: still correct */
    return (uint16_t)(sign | h);
}

/* Scale a float row to unit length in place (cosine); a zero row stays zero. */
static inline void isx_normalise(float *x, size_t dim)
{
    double s = 0;
    for (size_t i = 0; i < dim; i++)
        s += (double)x[i] * x[i];
    if (s > 0) {
        float inv = (float)(1.0 / sqrt(s));
        for (size_t i = 0; i < dim; i++)
            x[i] *= inv;
    }
}

/* n rows of dim floats all finite, else ISX_EINVAL naming `what`, the row and the column. */
static inline int isx_check_finite(const float *x, size_t n, size_t dim, const char *what)
{
    size_t total = n * dim;
    for (size_t i = 0; i < total; i++)
        if (!isfinite(x[i]))
            return isx_error(ISX_EINVAL,
                             "%s must be finite, found %s at row %zu, column %zu (drop or impute such rows first)",
                             what, isnan(x[i]) ? "NaN" : "Inf", i / dim, i % dim);
    return ISX_OK;
}

#endif
