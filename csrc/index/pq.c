/*
 * pq.c -- product quantization (see pq.h for the contract).
 *
 * Training runs one k-means per sub-space (kmeans.c), the sub-spaces in
 * parallel, each on one thread (or on nthreads / m threads when there are
 * more threads than sub-spaces) with a seed of its own derived from the
 * caller's seed and the sub-space number, so a seed gives one codebook
 * whatever the thread count.
 *
 * Encoding is an arg-min over ksub centroids per sub-vector, which is
 * k-means' assignment step with d = dsub: blocks of points are run through
 * isx_kmeans_nearest_block once per sub-space (the block's sub-vectors are
 * gathered into contiguous rows there), parallel over blocks.  With dsub as
 * small as 4 or 8 a BLAS product would spend more on writing and rereading
 * its n x ksub product than on the arithmetic; for dsub <= 32 kmeans.c runs
 * the nearest_small kernel, which keeps distances and arg-min in registers.
 *
 * Codes: nbits = 8 is one byte per sub-space; nbits = 4 packs sub-space 2i
 * in the low nibble of byte i and 2i + 1 in the high nibble (an odd m leaves
 * the last high nibble 0).
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/rows.h"
#include "../simd/simd.h"
#include "kmeans.h"
#include "pq.h"

/* ======================================================================
 * Life cycle
 * ====================================================================== */

static int set_shape(isx_pq *pq, size_t d, size_t m, size_t nbits)
{
    memset(pq, 0, sizeof(*pq));
    if (nbits != 4 && nbits != 8)
        return isx_error(ISX_EINVAL, "expected nbits = 4 or 8, found nbits=%zu", nbits);
    if (d < 1 || d > ISX_MAX_DIM)
        return isx_error(ISX_EINVAL, "expected 1 <= d <= %u, found d=%zu", ISX_MAX_DIM, d);
    if (m < 1 || d % m != 0)
        return isx_error(ISX_EINVAL,
                         "the number of sub-quantizers m must divide the dimension: found d=%zu, m=%zu "
                         "(pick m among the divisors of d)", d, m);
    pq->d = d;
    pq->m = m;
    pq->nbits = nbits;
    pq->dsub = d / m;
    pq->ksub = (size_t)1 << nbits;
    pq->code_bytes = (m * nbits + 7) / 8;
    return ISX_OK;
}

static size_t centroid_floats(const isx_pq *pq)
{
    return pq->m * pq->ksub * pq->dsub;
}

int isx_pq_init(isx_pq *pq, size_t d, size_t m, size_t nbits)
{
    int rc = set_shape(pq, d, m, nbits);
    if (rc)
        return rc;
    size_t bytes = centroid_floats(pq) * sizeof(float);
    if (!(pq->centroids = isx_aligned_alloc(bytes))) {
        memset(pq, 0, sizeof(*pq));
        return isx_error(ISX_ENOMEM, "cannot allocate %zu bytes of PQ centroids", bytes);
    }
    memset(pq->centroids, 0, bytes);
    return ISX_OK;
}

int isx_pq_borrow(isx_pq *pq, size_t d, size_t m, size_t nbits, float *centroids)
{
    int rc = set_shape(pq, d, m, nbits);
    if (rc)
        return rc;
    pq->centroids = centroids;
    pq->borrowed = 1;
    return ISX_OK;
}

void isx_pq_free(isx_pq *pq)
{
    if (!pq)
        return;
    if (!pq->borrowed)
        isx_aligned_free(pq->centroids);
    memset(pq, 0, sizeof(*pq));
}

static int check_ready(const isx_pq *pq)
{
    if (!pq || !pq->centroids || !pq->m)
        return isx_error(ISX_EINVAL, "product quantizer not initialised (call isx_pq_init first)");
    return ISX_OK;
}

/* ======================================================================
 * Training
 * ====================================================================== */

typedef struct {
    const isx_pq *pq;
    const float *X;
    size_t n;
    int niter, threads_each;
    uint64_t seed;
    float *out;   /* m x ksub x dsub */
    float **sub;  /* per worker: n x dsub, one sub-space of X */
} train_ctx;

/* Sub-space j's seed: the caller's seed and j mixed, so that the streams of
 * neighbouring sub-spaces are not shifted copies of one another. */
static uint64_t subspace_seed(uint64_t seed, size_t j)
{
    uint64_t z = seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(j + 1));
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int task_train(void *ctx, size_t j, int worker)
{
    train_ctx *t = ctx;
    const isx_pq *pq = t->pq;
    size_t dsub = pq->dsub;
    float *sub = t->sub[worker];  /* one buffer per worker: fresh pages per sub-space cost ~5% */
    for (size_t i = 0; i < t->n; i++)
        memcpy(sub + i * dsub, t->X + i * pq->d + j * dsub, dsub * sizeof(float));
    isx_kmeans_params p = {pq->ksub, t->niter, subspace_seed(t->seed, j), t->threads_each, 0, 0};
    return isx_kmeans_train(sub, t->n, dsub, &p, t->out + j * pq->ksub * dsub, NULL);
}

int isx_pq_train(isx_pq *pq, const float *X, size_t n, int niter, uint64_t seed, int nthreads)
{
    int rc;
    if ((rc = check_ready(pq)))
        return rc;
    if (n < pq->ksub)
        return isx_error(ISX_EINVAL,
                         "PQ training needs at least ksub = 2^nbits = %zu points, found n=%zu "
                         "(train on more points or use nbits=4)", pq->ksub, n);
    if (niter < 0)
        return isx_error(ISX_EINVAL, "expected niter >= 0, found niter=%d", niter);
    if ((rc = isx_check_finite(X, n, pq->d, "training vectors")))
        return rc;
    /* train into a block of our own: a failure leaves the quantizer as it was,
     * and borrowed centroids are never written */
    size_t bytes = centroid_floats(pq) * sizeof(float);
    float *out = isx_aligned_alloc(bytes);
    if (!out)
        return isx_error(ISX_ENOMEM, "cannot allocate %zu bytes of PQ centroids", bytes);
    int threads = isx_resolve_threads(nthreads);
    if ((size_t)threads > pq->m)
        threads = (int)pq->m;
    int each = isx_resolve_threads(nthreads) / threads;
    float **sub = calloc((size_t)threads, sizeof(float *));
    rc = sub ? ISX_OK : ISX_ENOMEM;
    for (int w = 0; rc == ISX_OK && w < threads; w++)
        if (!(sub[w] = isx_aligned_alloc(n * pq->dsub * sizeof(float))))
            rc = ISX_ENOMEM;
    if (rc)
        rc = isx_error(ISX_ENOMEM, "cannot allocate %zu sub-vectors of dim %zu", n, pq->dsub);
    train_ctx t = {pq, X, n, niter, each, seed, out, sub};
    if (rc == ISX_OK)
        rc = isx_parallel_for(threads, pq->m, task_train, &t);
    if (sub)
        for (int w = 0; w < threads; w++)
            isx_aligned_free(sub[w]);
    free(sub);
    if (rc) {
        isx_aligned_free(out);
        return rc;
    }
    if (!pq->borrowed)
        isx_aligned_free(pq->centroids);
    pq->centroids = out;
    pq->borrowed = 0;
    return ISX_OK;
}

/* ======================================================================
 * Encode, decode
 * ====================================================================== */

typedef struct {
    const isx_pq *pq;
    const float *X;
    size_t n;
    const float *cnorm;   /* m x ksub: |centroid|^2 */
    float **scratch;      /* per worker */
    uint8_t *codes;
} encode_ctx;

static int task_encode(void *ctx, size_t task, int worker)
{
    encode_ctx *e = ctx;
    const isx_pq *pq = e->pq;
    size_t i0 = task * ISX_KMEANS_BLOCK;
    size_t mb = e->n - i0 < ISX_KMEANS_BLOCK ? e->n - i0 : ISX_KMEANS_BLOCK;
    size_t cb = pq->code_bytes;
    uint8_t *codes = e->codes + i0 * cb;
    int32_t a[ISX_KMEANS_BLOCK];
    if (pq->nbits == 4)
        memset(codes, 0, mb * cb);
    for (size_t j = 0; j < pq->m; j++) {
        isx_kmeans_nearest_block(e->X + i0 * pq->d + j * pq->dsub, mb, pq->dsub, pq->d,
                                 pq->centroids + j * pq->ksub * pq->dsub, e->cnorm + j * pq->ksub, pq->ksub,
                                 e->scratch[worker], a, NULL);
        if (pq->nbits == 8) {
            for (size_t i = 0; i < mb; i++)
                codes[i * cb + j] = (uint8_t)a[i];
        } else {
            unsigned shift = (unsigned)(j & 1) * 4;
            for (size_t i = 0; i < mb; i++)
                codes[i * cb + j / 2] |= (uint8_t)(a[i] << shift);
        }
    }
    return ISX_OK;
}

int isx_pq_encode(const isx_pq *pq, const float *X, size_t n, uint8_t *codes, int nthreads)
{
    int rc;
    if ((rc = check_ready(pq)) || (rc = isx_check_finite(X, n, pq->d, "vectors to encode")))
        return rc;
    if (n == 0)
        return ISX_OK;
    size_t blocks = (n + ISX_KMEANS_BLOCK - 1) / ISX_KMEANS_BLOCK;
    int threads = isx_resolve_threads(nthreads);
    if ((size_t)threads > blocks)
        threads = (int)blocks;
    float *cnorm = malloc(pq->m * pq->ksub * sizeof(float));
    float **scratch = calloc((size_t)threads, sizeof(float *));
    rc = ISX_OK;
    if (!cnorm || !scratch)
        goto nomem;
    size_t floats = isx_kmeans_block_scratch(pq->dsub);
    for (int w = 0; w < threads; w++)
        if (!(scratch[w] = isx_aligned_alloc(floats * sizeof(float))))
            goto nomem;
    isx_kernels_active()->sqnorm(NULL, pq->centroids, pq->m * pq->ksub, pq->dsub, cnorm);
    encode_ctx e = {pq, X, n, cnorm, scratch, codes};
    rc = isx_parallel_for(threads, blocks, task_encode, &e);
    goto cleanup;
nomem:
    rc = isx_error(ISX_ENOMEM, "cannot allocate PQ encoding buffers");
cleanup:
    if (scratch)
        for (int w = 0; w < threads; w++)
            isx_aligned_free(scratch[w]);
    free(scratch);
    free(cnorm);
    return rc;
}

/* Sub-code j of one code. */
static inline size_t code_at(const isx_pq *pq, const uint8_t *code, size_t j)
{
    if (pq->nbits == 8)
        return code[j];
    return (code[j >> 1] >> ((j & 1) * 4)) & 15u;
}

int isx_pq_decode(const isx_pq *pq, const uint8_t *codes, size_t n, float *X)
{
    int rc = check_ready(pq);
    if (rc)
        return rc;
    size_t dsub = pq->dsub;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *code = codes + i * pq->code_bytes;
        float *x = X + i * pq->d;
        for (size_t j = 0; j < pq->m; j++)
            memcpy(x + j * dsub, pq->centroids + (j * pq->ksub + code_at(pq, code, j)) * dsub,
                   dsub * sizeof(float));
    }
    return ISX_OK;
}

/* ======================================================================
 * Lookup tables
 * ====================================================================== */

int isx_pq_lut(const isx_pq *pq, const float *q, int metric, float *lut)
{
    int rc = check_ready(pq);
    if (rc)
        return rc;
    if (metric != ISX_METRIC_L2 && metric != ISX_METRIC_IP)
        return isx_error(ISX_EINVAL, "PQ lookup tables are for metric l2 or ip, found %s",
                         isx_metric_name((isx_metric)metric));
    const isx_kernels *kern = isx_kernels_active();
    size_t dsub = pq->dsub, ksub = pq->ksub;
    for (size_t j = 0; j < pq->m; j++) {
        const float *c = pq->centroids + j * ksub * dsub;
        float *row = lut + j * ksub;
        if (metric == ISX_METRIC_L2) {
            kern->dist[ISX_METRIC_L2](q + j * dsub, c, ksub, dsub, row);
        } else {
            kern->dot(q + j * dsub, c, ksub, dsub, row);
            for (size_t s = 0; s < ksub; s++)
                row[s] = -row[s];
        }
    }
    return ISX_OK;
}

float isx_pq_lut_distance(const isx_pq *pq, const float *lut, const uint8_t *code)
{
    float s = 0.0f;
    for (size_t j = 0; j < pq->m; j++)
        s += lut[j * pq->ksub + code_at(pq, code, j)];
    return s;
}

/* ======================================================================
 * OPQ
 * ====================================================================== */

/* LAPACK's SVD, from OpenBLAS (column-major; Fortran calling convention). */
extern void sgesvd_(const char *jobu, const char *jobvt, const int *m, const int *n, float *a, const int *lda,
                    float *s, float *u, const int *ldu, float *vt, const int *ldvt, float *work, const int *lwork,
                    int *info);

#define OPQ_ITER_PQ 4   /* Lloyd iterations of each intermediate PQ training (faiss: 4) */

/* R = argmin over orthogonal R of ||X R^T - Y||_F: with X^T Y = U S V^T,
 * R^T = U V^T.  LAPACK sees the row-major M = X^T Y as its transpose, whose
 * SVD is V S U^T: so U_lapack = V and VT_lapack = U^T, and R = V U^T is
 * U_lapack VT_lapack, a column-major product, transposed into R. */
static int procrustes(const float *X, const float *Y, size_t n, size_t d, float *R, float *buf)
{
    float *M = buf, *S = M + d * d, *U = S + d, *VT = U + d * d, *P = VT + d * d;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)d, (int)d, (int)n, 1.0f, X, (int)d, Y, (int)d, 0.0f,
                M, (int)d);
    int dd = (int)d, lwork = -1, info = 0;
    float query;
    sgesvd_("A", "A", &dd, &dd, M, &dd, S, U, &dd, VT, &dd, &query, &lwork, &info);
    if (info != 0)
        return isx_error(ISX_EINVAL, "OPQ: LAPACK sgesvd workspace query failed (info=%d)", info);
    lwork = (int)query;
    float *work = malloc((size_t)(lwork > 1 ? lwork : 1) * sizeof(float));
    if (!work)
        return isx_error(ISX_ENOMEM, "OPQ: cannot allocate the SVD workspace");
    sgesvd_("A", "A", &dd, &dd, M, &dd, S, U, &dd, VT, &dd, work, &lwork, &info);
    free(work);
    if (info != 0)
        return isx_error(ISX_EINVAL, "OPQ: the SVD did not converge (sgesvd info=%d)", info);
    cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, dd, dd, dd, 1.0f, U, dd, VT, dd, 0.0f, P, dd);
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++)
            R[i * d + j] = P[j * d + i];
    return ISX_OK;
}

int isx_opq_train(isx_pq *pq, const float *X, size_t n, int niter, int niter_pq, uint64_t seed, int nthreads,
                  float *R)
{
    int rc;
    if ((rc = check_ready(pq)))
        return rc;
    if (niter < 0 || niter_pq < 0)
        return isx_error(ISX_EINVAL, "expected niter >= 0 and niter_pq >= 0, found %d and %d", niter, niter_pq);
    if (n < pq->ksub)
        return isx_error(ISX_EINVAL, "OPQ training needs at least ksub = 2^nbits = %zu points, found n=%zu",
                         pq->ksub, n);
    if ((rc = isx_check_finite(X, n, pq->d, "training vectors")))
        return rc;
    size_t d = pq->d, bytes;
    if ((rc = isx_mul_size(n, d * sizeof(float), &bytes, "OPQ training set")))
        return rc;
    float *Xr = isx_aligned_alloc(bytes), *Y = isx_aligned_alloc(bytes);
    uint8_t *codes = malloc(n * pq->code_bytes);
    float *buf = malloc((4 * d * d + d) * sizeof(float));
    if (!Xr || !Y || !codes || !buf) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate OPQ buffers for %zu x %zu", n, d);
        goto cleanup;
    }
    memset(R, 0, d * d * sizeof(float));
    for (size_t i = 0; i < d; i++)
        R[i * d + i] = 1.0f;
    for (int it = 0; it <= niter; it++) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)d, (int)d, 1.0f, X, (int)d, R, (int)d,
                    0.0f, Xr, (int)d);
        if (it == niter) { /* the final codebooks, on the final rotation */
            rc = isx_pq_train(pq, Xr, n, niter_pq, seed, nthreads);
            break;
        }
        if ((rc = isx_pq_train(pq, Xr, n, OPQ_ITER_PQ, seed + (uint64_t)it, nthreads)) ||
            (rc = isx_pq_encode(pq, Xr, n, codes, nthreads)) || (rc = isx_pq_decode(pq, codes, n, Y)) ||
            (rc = procrustes(X, Y, n, d, R, buf)))
            goto cleanup;
    }
cleanup:
    isx_aligned_free(Xr);
    isx_aligned_free(Y);
    free(codes);
    free(buf);
    return rc;
}
