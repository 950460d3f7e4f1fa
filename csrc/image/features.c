/*
 * features.c -- classic global descriptors computed from decoded pixels:
 * an HSV colour histogram and two perceptual hashes.
 *
 * Colour histogram
 *   Every pixel is converted to HSV (hue 0..360, saturation and value 0..1,
 *   the hexcone model) and counted in a hue x saturation x value grid of
 *   bins[0] x bins[1] x bins[2] cells, hue varying slowest.  The histogram is
 *   divided by the pixel count, so it sums to 1 and images of different
 *   sizes compare.  HSV rather than RGB because hue separates "what colour"
 *   from lighting, which is what makes colour useful for retrieval.  The
 *   image is decoded at >= HIST_MIN_SIDE on its shorter side (JPEG DCT
 *   scaling): a histogram does not need every pixel, and the decode is the
 *   cost.
 *
 * pHash (as in the imagehash library, without its Lanczos resize)
 *   Grey (ITU-R 601 luma) at 32 x 32 by area averaging, the 2-D DCT-II
 *   (unnormalised, as scipy.fftpack.dct's default), the 8 x 8 lowest
 *   frequencies (DC included), one bit each: coefficient > their median.
 * dHash
 *   Grey at 9 x 8, one bit per horizontally adjacent pair: right > left.
 * Both give 64 bits packed into 8 bytes most significant bit first, row
 * major -- numpy.unpackbits recovers the 8 x 8 bit grid; the FlatIndex
 * 'hamming' metric counts dim in bits (64).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"

#define HIST_MIN_SIDE 128 /* decode resolution a histogram needs */
#define HASH_MIN_SIDE 32  /* the pHash grid; dHash needs less */
#define PHASH_GRID 32
#define PHASH_LOW 8
#define ISX_PI 3.14159265358979323846

/* ---------- colour histogram ---------------------------------------------------- */

static int colorhist(const isx_feature *f, const isx_image *img, float *out)
{
    const int hb = f->bins[0], sb = f->bins[1], vb = f->bins[2];
    const size_t nbins = (size_t)hb * sb * vb;
    memset(out, 0, nbins * sizeof(float));
    const size_t npix = img->width * img->height;
    const float hscale = (float)hb / 6.0f; /* hue in sixths of the circle */
    const uint8_t *p = img->pixels;
    uint32_t *count = calloc(nbins, sizeof(uint32_t));
    if (!count)
        return isx_error(ISX_ENOMEM, "out of memory for a histogram of %zu bins", nbins);
    for (size_t i = 0; i < npix; i++, p += 3) {
        int r = p[0], g = p[1], b = p[2];
        int mx = r > g ? (r > b ? r : b) : (g > b ? g : b);
        int mn = r < g ? (r < b ? r : b) : (g < b ? g : b);
        int d = mx - mn;
        int hi = 0, si = 0;
        if (d > 0) {
            float h; /* 0..6 */
            if (mx == r)
                h = (float)(g - b) / (float)d + (g < b ? 6.0f : 0.0f);
            else if (mx == g)
                h = (float)(b - r) / (float)d + 2.0f;
            else
                h = (float)(r - g) / (float)d + 4.0f;
            hi = (int)(h * hscale);
            if (hi >= hb)
                hi = hb - 1;
            si = (int)((float)d * (float)sb / (float)mx);
            if (si >= sb)
                si = sb - 1;
        }
        int vi = mx * vb / 256;
        count[((size_t)hi * sb + si) * vb + vi]++;
    }
    const float inv = 1.0f / (float)npix;
    for (size_t i = 0; i < nbins; i++)
        out[i] = (float)count[i] * inv;
    free(count);
    return ISX_OK;
}

/* ---------- hashes ----------------------------------------------------------------- */

typedef struct {
    float *grey;
    size_t width;
} grey_sink;

static void sink_grey(void *ctx, size_t y, const float *rgb, size_t cw)
{
    grey_sink *s = ctx;
    for (size_t x = 0; x < cw; x++)
        s->grey[y * s->width + x] = 0.299f * rgb[3 * x] + 0.587f * rgb[3 * x + 1] + 0.114f * rgb[3 * x + 2];
}

static int grey_resize(const isx_image *img, size_t w, size_t h, float *grey)
{
    grey_sink s = {grey, w};
    return isx_image_resample(img, w, h, 0, 0, w, h, sink_grey, &s);
}

static void pack_bits(const int *bits, uint8_t *out)
{
    for (int i = 0; i < 8; i++) {
        unsigned byte = 0;
        for (int j = 0; j < 8; j++)
            byte = byte << 1 | (bits[8 * i + j] ? 1u : 0u);
        out[i] = (uint8_t)byte;
    }
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static int phash(const isx_image *img, uint8_t *out)
{
    float grey[PHASH_GRID * PHASH_GRID];
    int rc = grey_resize(img, PHASH_GRID, PHASH_GRID, grey);
    if (rc)
        return rc;
    double cosv[PHASH_LOW][PHASH_GRID];
    for (int u = 0; u < PHASH_LOW; u++)
        for (int n = 0; n < PHASH_GRID; n++)
            cosv[u][n] = cos(ISX_PI * u * (2 * n + 1) / (2.0 * PHASH_GRID));
    double t[PHASH_LOW][PHASH_GRID]; /* DCT along the columns (rows of frequency u) */
    for (int u = 0; u < PHASH_LOW; u++)
        for (int x = 0; x < PHASH_GRID; x++) {
            double acc = 0;
            for (int y = 0; y < PHASH_GRID; y++)
                acc += cosv[u][y] * grey[y * PHASH_GRID + x];
            t[u][x] = acc;
        }
    float coef[PHASH_LOW * PHASH_LOW], sorted[PHASH_LOW * PHASH_LOW];
    for (int u = 0; u < PHASH_LOW; u++)
        for (int v = 0; v < PHASH_LOW; v++) {
            double acc = 0;
            for (int x = 0; x < PHASH_GRID; x++)
                acc += t[u][x] * cosv[v][x];
            coef[u * PHASH_LOW + v] = (float)acc;
        }
    memcpy(sorted, coef, sizeof(coef));
    qsort(sorted, PHASH_LOW * PHASH_LOW, sizeof(float), cmp_float);
    float median = 0.5f * (sorted[31] + sorted[32]);
    int bits[64];
    for (int i = 0; i < 64; i++)
        bits[i] = coef[i] > median;
    pack_bits(bits, out);
    return ISX_OK;
}

static int dhash(const isx_image *img, uint8_t *out)
{
    float grey[9 * 8];
    int rc = grey_resize(img, 9, 8, grey);
    if (rc)
        return rc;
    int bits[64];
    for (int y = 0; y < 8; y++)
        for (int x = 0; x < 8; x++)
            bits[8 * y + x] = grey[9 * y + x + 1] > grey[9 * y + x];
    pack_bits(bits, out);
    return ISX_OK;
}

/* ---------- dispatch ------------------------------------------------------------------ */

int isx_feature_check(const isx_feature *f, size_t *dim_bytes, size_t *min_side)
{
    switch (f->kind) {
    case ISX_FEATURE_COLORHIST:
        for (int i = 0; i < 3; i++)
            if (f->bins[i] < 1 || (unsigned)f->bins[i] > ISX_HIST_MAX_BINS)
                return isx_error(ISX_EINVAL, "colour histogram: expected 1..%u bins per channel, found (%d, %d, %d)",
                                 ISX_HIST_MAX_BINS, f->bins[0], f->bins[1], f->bins[2]);
        *dim_bytes = (size_t)f->bins[0] * f->bins[1] * f->bins[2] * sizeof(float);
        *min_side = HIST_MIN_SIDE;
        return ISX_OK;
    case ISX_FEATURE_PHASH:
    case ISX_FEATURE_DHASH:
        *dim_bytes = 8;
        *min_side = HASH_MIN_SIDE;
        return ISX_OK;
    }
    return isx_error(ISX_EINVAL, "unknown feature kind %d", (int)f->kind);
}

int isx_feature_compute(const isx_feature *f, const isx_image *img, void *out)
{
    switch (f->kind) {
    case ISX_FEATURE_COLORHIST: return colorhist(f, img, out);
    case ISX_FEATURE_PHASH: return phash(img, out);
    case ISX_FEATURE_DHASH: return dhash(img, out);
    }
    return isx_error(ISX_EINVAL, "unknown feature kind %d", (int)f->kind);
}
