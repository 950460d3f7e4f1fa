/*
 * pairwise.c -- exact all-pairs distances, for imgsearch.distance.pairwise.
 *
 * The output is cut into tiles of (a block of A rows) x (a chunk of B rows
 * small enough to stay in L2), so each B chunk is loaded from memory once per
 * A block rather than once per A row; the one-to-many SIMD kernel then writes
 * each A row's distances straight into its slice of the output.  Distances
 * come from the same kernels as every index, so pairwise and search agree
 * to the last bit.
 */
#define _GNU_SOURCE
#include "../simd/simd.h"
#include "flat.h"

#define PAIRWISE_CHUNK_BYTES (128 * 1024)
#define PAIRWISE_A_BLOCK 32

typedef struct {
    isx_dist_fn dist;
    const uint8_t *A, *B;
    size_t na, nb, row_elems, row_bytes, chunk, ablocks, bchunks;
    float *out;
} pairwise_ctx;

static int task_pairwise(void *ctx, size_t task, int worker)
{
    (void)worker;
    pairwise_ctx *c = ctx;
    size_t ab = task / c->bchunks, bc = task % c->bchunks;
    size_t a0 = ab * PAIRWISE_A_BLOCK, a1 = a0 + PAIRWISE_A_BLOCK < c->na ? a0 + PAIRWISE_A_BLOCK : c->na;
    size_t b0 = bc * c->chunk, b1 = b0 + c->chunk < c->nb ? b0 + c->chunk : c->nb;
    for (size_t i = a0; i < a1; i++)
        c->dist(c->A + i * c->row_bytes, c->B + b0 * c->row_bytes, b1 - b0, c->row_elems,
                c->out + i * c->nb + b0);
    return ISX_OK;
}

int isx_pairwise(isx_metric metric, const void *A, size_t na, const void *B, size_t nb,
                 size_t row_elems, int nthreads, float *out)
{
    if (metric < 1 || metric > ISX_METRIC_MAX)
        return isx_error(ISX_EINVAL, "unknown metric %d", (int)metric);
    if (na == 0 || nb == 0)
        return ISX_OK;
    pairwise_ctx c;
    c.dist = isx_kernels_active()->dist[metric];
    c.A = A;
    c.B = B;
    c.na = na;
    c.nb = nb;
    c.row_elems = row_elems;
    c.row_bytes = metric == ISX_METRIC_HAMMING ? row_elems : row_elems * sizeof(float);
    c.chunk = c.row_bytes ? PAIRWISE_CHUNK_BYTES / c.row_bytes : nb;
    if (c.chunk < 8)
        c.chunk = 8;
    c.ablocks = (na + PAIRWISE_A_BLOCK - 1) / PAIRWISE_A_BLOCK;
    c.bchunks = (nb + c.chunk - 1) / c.chunk;
    c.out = out;
    return isx_parallel_for(isx_resolve_threads(nthreads), c.ablocks * c.bchunks, task_pairwise, &c);
}
