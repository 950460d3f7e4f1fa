/*
 * batch.c -- many images on native threads, one failure never stopping the
 * others.
 *
 * Each item (a path, encoded bytes, or pixels) is one task of
 * isx_parallel_for: the task reads and decodes its item, hands the image to
 * the batch's function (preprocess, or a feature), and writes one output row
 * in place.  Items are handed out dynamically, so a large PNG does not hold
 * up a thread that could be decoding small JPEGs.  A failure is recorded in
 * the item's status, errno and message (the thread-local message copied to the
 * heap, because the thread that made it is about to decode something else;
 * the caller knows the item, so the message is only the reason) and the task
 * reports success to the loop.
 * After the run, isx_image_batch_compact moves the good rows to the front, so
 * the caller's array is (n_ok, ...) in input order.
 */
#include <stdlib.h>
#include <string.h>

#include "image.h"

static char *copy_message(const char *msg)
{
    size_t n = strlen(msg) + 1;
    char *m = malloc(n);
    if (m)
        memcpy(m, msg, n);
    return m;
}

static int batch_task(void *ctx, size_t i, int worker)
{
    (void)worker;
    isx_image_batch *b = ctx;
    const isx_image_source *src = &b->sources[i];
    isx_image img;
    int rc = isx_image_from_source(src, &b->decode, &img);
    if (rc == ISX_OK) {
        rc = b->fn(b->ctx, &img, b->out + i * b->row_bytes);
        isx_image_free(&img);
    }
    b->status[i] = rc;
    b->errnos[i] = rc != ISX_OK ? isx_last_errno() : 0;
    if (rc != ISX_OK)
        b->messages[i] = copy_message(isx_last_error());
    return ISX_OK; /* the batch goes on */
}

int isx_image_batch_run(isx_image_batch *b, int threads)
{
    for (size_t i = 0; i < b->n; i++) {
        b->status[i] = ISX_OK;
        b->errnos[i] = 0;
        b->messages[i] = NULL;
    }
    if (b->n == 0)
        return ISX_OK;
    return isx_parallel_for(isx_resolve_threads(threads), b->n, batch_task, b);
}

size_t isx_image_batch_compact(isx_image_batch *b)
{
    size_t k = 0;
    for (size_t i = 0; i < b->n; i++) {
        if (b->status[i] != ISX_OK)
            continue;
        if (k != i)
            memmove(b->out + k * b->row_bytes, b->out + i * b->row_bytes, b->row_bytes);
        k++;
    }
    return k;
}
