/*
 * resize.c -- separable resampling, and the fused shorter-side resize +
 * centre crop + normalise that feeds a network.
 *
 * Filters
 *   Each axis gets its own filter, chosen by its own scale:
 *     shrinking  area averaging: output sample o covers the input interval
 *                [o * s, (o + 1) * s) (s = in / out) and each input pixel is
 *                weighted by the length of its overlap -- exact box
 *                integration, so no input pixel is skipped (no aliasing) and
 *                an integer factor is a plain block mean;
 *     growing    bilinear with pixel centres aligned
 *                (x_in = (o + 0.5) * s - 0.5, clamped at the edges), which
 *                is also what Pillow's BILINEAR does when enlarging.
 *   The weights of an axis are computed once per call into a table with a
 *   fixed number of taps per output sample (zero padded), so the inner loops
 *   have no branches.
 *
 * Order of work
 *   Vertical first, then horizontal, one output row at a time: for output
 *   row y the few input rows it covers are blended into one float row (only
 *   the columns the window needs), then each output pixel blends a few
 *   entries of that row.  Memory traffic is one pass over the needed input
 *   and the working set is two rows, so it stays in L1/L2 for any image.
 *   Only the requested window of the output is computed: for a 256-resize +
 *   224-crop that is the crop and nothing else.
 *
 * The float rows go to a sink: rounding to uint8 (isx_image_resize), or the
 * normalisation to planar float32 (isx_image_preprocess) fused into the
 * same loop, so a preprocessed image is written exactly once.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"

typedef struct {
    size_t taps;    /* weights per output sample */
    size_t *start;  /* first input index of each output sample */
    float *weight;  /* taps per output sample */
} axis_filter;

static void axis_free(axis_filter *f)
{
    free(f->start);
    free(f->weight);
    f->start = NULL;
    f->weight = NULL;
}

/* Filter for output samples [o0, o0 + n) of an axis resized in -> out. */
static int axis_build(size_t in, size_t out, size_t o0, size_t n, axis_filter *f)
{
    f->start = NULL;
    f->weight = NULL;
    double scale = (double)in / (double)out;
    int shrink = out <= in;
    size_t taps = shrink ? (size_t)ceil(scale) + 1 : 2;
    if (taps > in)
        taps = in;
    f->taps = taps;
    f->start = malloc(n * sizeof(size_t));
    f->weight = calloc(n * taps, sizeof(float));
    if (!f->start || !f->weight) {
        axis_free(f);
        return isx_error(ISX_ENOMEM, "out of memory for resampling weights (%zu samples)", n);
    }
    for (size_t j = 0; j < n; j++) {
        size_t o = o0 + j;
        float *w = f->weight + j * taps;
        size_t first;
        if (shrink) {
            double x0 = (double)o * scale, x1 = (double)(o + 1) * scale;
            if (x1 > (double)in)
                x1 = (double)in;
            first = (size_t)x0;
            size_t last = (size_t)ceil(x1); /* exclusive */
            if (last > in)
                last = in;
            if (last <= first)
                last = first + 1;
            size_t s = first + taps > in ? in - taps : first;
            double total = 0;
            for (size_t i = first; i < last; i++) {
                double lo = x0 > (double)i ? x0 : (double)i;
                double hi = x1 < (double)(i + 1) ? x1 : (double)(i + 1);
                double cover = hi > lo ? hi - lo : 0;
                w[i - s] = (float)cover;
                total += cover;
            }
            if (total > 0)
                for (size_t k = 0; k < taps; k++)
                    w[k] = (float)(w[k] / total);
            else
                w[first - s] = 1.0f;
            f->start[j] = s;
        } else {
            double c = ((double)o + 0.5) * scale - 0.5;
            if (c < 0)
                c = 0;
            first = (size_t)c;
            double frac = c - (double)first;
            if (first >= in - 1) {
                first = in - 1;
                frac = 0;
            }
            size_t s = first + taps > in ? in - taps : first;
            w[first - s] += (float)(1.0 - frac);
            if (frac > 0)
                w[first + 1 - s] += (float)frac;
            f->start[j] = s;
        }
    }
    return ISX_OK;
}

/* One output row from one blended input row: rgb[x] = sum_k w[x][k] * in[start[x] + k].
 * Always inlined, so a constant `taps` (bilinear: 2) gives a loop the
 * compiler unrolls, without a dependency chain through the accumulators.
 * `in` holds the input columns from cmin on. */
static inline __attribute__((always_inline)) void blend_columns(const float *in, size_t cmin, const axis_filter *f,
                                                                size_t taps, size_t cw, float *rgb)
{
    for (size_t x = 0; x < cw; x++) {
        const float *w = f->weight + x * taps;
        const float *s = in + (f->start[x] - cmin) * 3;
        float r = 0, g = 0, b = 0;
        for (size_t k = 0; k < taps; k++) {
            r += w[k] * s[3 * k];
            g += w[k] * s[3 * k + 1];
            b += w[k] * s[3 * k + 2];
        }
        rgb[3 * x] = r;
        rgb[3 * x + 1] = g;
        rgb[3 * x + 2] = b;
    }
}

int isx_image_resample(const isx_image *img, size_t out_w, size_t out_h, size_t x0, size_t y0, size_t cw,
                       size_t ch, isx_row_sink sink, void *ctx)
{
    if (!img->width || !img->height || !out_w || !out_h || !cw || !ch || x0 + cw > out_w || y0 + ch > out_h)
        return isx_error(ISX_EINVAL, "resample: window %zu x %zu at (%zu, %zu) does not fit a %zu x %zu output",
                         cw, ch, x0, y0, out_w, out_h);
    axis_filter fx, fy;
    float *colbuf = NULL, *rowbuf = NULL;
    int rc = axis_build(img->width, out_w, x0, cw, &fx);
    if (rc)
        return rc;
    if ((rc = axis_build(img->height, out_h, y0, ch, &fy)) != ISX_OK) {
        axis_free(&fx);
        return rc;
    }
    size_t cmin = fx.start[0], cmax = 0; /* input columns the window needs */
    for (size_t j = 0; j < cw; j++) {
        if (fx.start[j] < cmin)
            cmin = fx.start[j];
        if (fx.start[j] + fx.taps > cmax)
            cmax = fx.start[j] + fx.taps;
    }
    size_t span = (cmax - cmin) * 3;
    colbuf = malloc(span * sizeof(float));
    rowbuf = malloc(cw * 3 * sizeof(float));
    if (!colbuf || !rowbuf) {
        rc = isx_error(ISX_ENOMEM, "out of memory for resampling rows");
        goto cleanup;
    }
    const size_t stride = img->width * 3, tx = fx.taps, ty = fy.taps;
    for (size_t y = 0; y < ch; y++) {
        /* vertical: blend the input rows of output row y, needed columns only */
        const float *wy = fy.weight + y * ty;
        const uint8_t *src = img->pixels + fy.start[y] * stride + cmin * 3;
        float w0 = wy[0];
        for (size_t i = 0; i < span; i++)
            colbuf[i] = w0 * (float)src[i];
        for (size_t k = 1; k < ty; k++) {
            float wk = wy[k];
            if (wk == 0.0f)
                continue;
            const uint8_t *s = src + k * stride;
            for (size_t i = 0; i < span; i++)
                colbuf[i] += wk * (float)s[i];
        }
        /* horizontal: the common tap counts get their own unrolled copy */
        switch (tx) {
        case 1: blend_columns(colbuf, cmin, &fx, 1, cw, rowbuf); break;
        case 2: blend_columns(colbuf, cmin, &fx, 2, cw, rowbuf); break;
        case 3: blend_columns(colbuf, cmin, &fx, 3, cw, rowbuf); break;
        case 4: blend_columns(colbuf, cmin, &fx, 4, cw, rowbuf); break;
        default: blend_columns(colbuf, cmin, &fx, tx, cw, rowbuf); break;
        }
        sink(ctx, y, rowbuf, cw);
    }
cleanup:
    free(colbuf);
    free(rowbuf);
    axis_free(&fx);
    axis_free(&fy);
    return rc;
}

/* ---------- uint8 output ------------------------------------------------------ */

typedef struct {
    uint8_t *out;
    size_t width;
} u8_sink;

static void sink_u8(void *ctx, size_t y, const float *rgb, size_t cw)
{
    u8_sink *s = ctx;
    uint8_t *dst = s->out + y * s->width * 3;
    for (size_t i = 0; i < cw * 3; i++) {
        float v = rgb[i] + 0.5f;
        dst[i] = v <= 0.0f ? 0 : v >= 255.0f ? 255 : (uint8_t)v;
    }
}

int isx_image_resize(const isx_image *img, size_t out_w, size_t out_h, uint8_t *out)
{
    if (out_w == 0 || out_h == 0 || out_w > ISX_IMAGE_MAX_OUT_SIDE || out_h > ISX_IMAGE_MAX_OUT_SIDE)
        return isx_error(ISX_EINVAL, "resize: expected an output size between 1 and %u per side, found %zu x %zu",
                         ISX_IMAGE_MAX_OUT_SIDE, out_w, out_h);
    u8_sink s = {out, out_w};
    return isx_image_resample(img, out_w, out_h, 0, 0, out_w, out_h, sink_u8, &s);
}

/* ---------- the network preprocessing ------------------------------------------- */

/* Python's round(d / 2), half to even, as torchvision's centre crop uses. */
static size_t half_round_even(size_t d)
{
    size_t q = d / 2;
    return (d & 1) && (q & 1) ? q + 1 : q;
}

void isx_preprocess_geometry(size_t w, size_t h, const isx_preprocess *p, size_t *rw, size_t *rh, size_t *x0,
                             size_t *y0)
{
    /* the shorter side becomes `resize`, the longer one keeps the aspect
     * ratio truncated to an integer (torchvision's Resize(int)) */
    size_t W, H;
    if (w <= h) {
        W = p->resize;
        H = (size_t)((double)p->resize * (double)h / (double)w);
    } else {
        H = p->resize;
        W = (size_t)((double)p->resize * (double)w / (double)h);
    }
    if (W < p->size)
        W = p->size;
    if (H < p->size)
        H = p->size;
    *rw = W;
    *rh = H;
    *x0 = half_round_even(W - p->size);
    *y0 = half_round_even(H - p->size);
}

typedef struct {
    float *out;
    size_t plane; /* size * size */
    size_t size;
    float scale[3], bias[3];
} norm_sink;

static void sink_normalise(void *ctx, size_t y, const float *rgb, size_t cw)
{
    norm_sink *s = ctx;
    float *r = s->out + y * s->size, *g = r + s->plane, *b = g + s->plane;
    const float sr = s->scale[0], sg = s->scale[1], sb = s->scale[2];
    const float br = s->bias[0], bg = s->bias[1], bb = s->bias[2];
    for (size_t x = 0; x < cw; x++) {
        r[x] = rgb[3 * x] * sr + br;
        g[x] = rgb[3 * x + 1] * sg + bg;
        b[x] = rgb[3 * x + 2] * sb + bb;
    }
}

int isx_image_preprocess(const isx_image *img, const isx_preprocess *p, float *out)
{
    if (p->size == 0 || p->size > ISX_IMAGE_MAX_OUT_SIDE || p->resize < p->size || p->resize > ISX_IMAGE_MAX_OUT_SIDE)
        return isx_error(ISX_EINVAL, "preprocess: expected 1 <= size <= resize <= %u, found size=%zu resize=%zu",
                         ISX_IMAGE_MAX_OUT_SIDE, p->size, p->resize);
    norm_sink s;
    s.out = out;
    s.size = p->size;
    s.plane = p->size * p->size;
    for (int c = 0; c < 3; c++) {
        s.scale[c] = 1.0f / (255.0f * p->std[c]);
        s.bias[c] = -p->mean[c] / p->std[c];
    }
    size_t rw, rh, x0, y0;
    isx_preprocess_geometry(img->width, img->height, p, &rw, &rh, &x0, &y0);
    return isx_image_resample(img, rw, rh, x0, y0, p->size, p->size, sink_normalise, &s);
}
