/*
 * nearest_serial.c -- the reference nearest_small kernel (layout in
 * nearest.h): for each point, every centroid's squared L2 distance as the
 * direct sum of squared differences, in coordinate order, and a strict `<`
 * scan over the centroids in index order, so ties go to the lower index.
 *
 * The direct sum (not |x|^2 - 2 x.c + |c|^2) is what makes the result exact
 * to float32 rounding relative to the distance itself: every term is >= 0
 * and each difference is rounded relative to itself, so a near point's
 * distance keeps its digits, where the identity cancels |x|^2 against 2 x.c
 * and loses them.  No centroid norms are needed.
 */
#include <math.h>

#include "internal.h"
#include "nearest.h"

void isx_nearest_small_serial(const float *X, size_t n, size_t ldx, size_t d, const float *Ct, size_t k,
                              int32_t *assign, float *dist, float *dist2)
{
    size_t kp = ISX_NEAREST_PAD(k);
    for (size_t i = 0; i < n; i++) {
        const float *x = X + i * ldx;
        float best = INFINITY, second = INFINITY;
        int32_t a = 0; /* every distance +inf (overflow): centroid 0, as the SIMD kernels answer */
        for (size_t c = 0; c < k; c++) {
            float s = 0.0f;
            for (size_t t = 0; t < d; t++) {
                float diff = x[t] - Ct[t * kp + c];
                s += diff * diff;
            }
            if (s < best) {
                second = best;
                best = s;
                a = (int32_t)c;
            } else if (s < second) {
                second = s;
            }
        }
        assign[i] = a;
        dist[i] = best;
        if (dist2)
            dist2[i] = second;
    }
}
