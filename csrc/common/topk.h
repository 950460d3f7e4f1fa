/*
 * topk.h -- bounded max-heaps that keep the k smallest (distance, slot)
 * pairs, shared by every index.
 *
 * The root is the worst kept candidate, so "is this one better than what we
 * have?" is one compare against heap->dist[0].  Ties are broken by slot (the
 * lower slot wins), which makes results independent of thread count and of
 * the order in which tiles are scanned.
 */
#ifndef ISX_TOPK_H
#define ISX_TOPK_H

#include <math.h>

#include "isx.h"

typedef struct {
    float *dist;
    int64_t *slot;
    size_t size, k;
} isx_topk;

/* a is worse than b: larger distance, or equal distance and larger slot */
static inline int isx_topk_worse(float da, int64_t sa, float db, int64_t sb)
{
    return da > db || (da == db && sa > sb);
}

static inline void isx_topk_init(isx_topk *h, float *dist, int64_t *slot, size_t k)
{
    h->dist = dist;
    h->slot = slot;
    h->size = 0;
    h->k = k;
}

/* The distance a candidate must beat (strictly, or tie with a lower slot). */
static inline float isx_topk_bound(const isx_topk *h)
{
    return h->size < h->k ? INFINITY : h->dist[0];
}

static inline void isx_topk_sift_down(isx_topk *h, size_t i)
{
    size_t n = h->size;
    float d = h->dist[i];
    int64_t s = h->slot[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && isx_topk_worse(h->dist[c + 1], h->slot[c + 1], h->dist[c], h->slot[c]))
            c++;
        if (!isx_topk_worse(h->dist[c], h->slot[c], d, s))
            break;
        h->dist[i] = h->dist[c];
        h->slot[i] = h->slot[c];
        i = c;
    }
    h->dist[i] = d;
    h->slot[i] = s;
}

/* Offer a candidate; kept if the heap is not full or it beats the root. */
static inline void isx_topk_push(isx_topk *h, float d, int64_t s)
{
    if (h->size < h->k) {
        size_t i = h->size++;
        while (i > 0) {
            size_t p = (i - 1) / 2;
            if (!isx_topk_worse(d, s, h->dist[p], h->slot[p]))
                break;
            h->dist[i] = h->dist[p];
            h->slot[i] = h->slot[p];
            i = p;
        }
        h->dist[i] = d;
        h->slot[i] = s;
    } else if (h->k > 0 && isx_topk_worse(h->dist[0], h->slot[0], d, s)) {
        h->dist[0] = d;
        h->slot[0] = s;
        isx_topk_sift_down(h, 0);
    }
}

/* Sort the kept pairs in place, best first (heap sort: pop the root to the
 * end), leaving h->size entries in dist/slot. */
static inline void isx_topk_sort(isx_topk *h)
{
    size_t n = h->size;
    while (h->size > 1) {
        size_t last = h->size - 1;
        float d = h->dist[0];
        int64_t s = h->slot[0];
        h->dist[0] = h->dist[last];
        h->slot[0] = h->slot[last];
        h->size = last;
        isx_topk_sift_down(h, 0);
        h->dist[last] = d;
        h->slot[last] = s;
    }
    h->size = n;
}

#endif
