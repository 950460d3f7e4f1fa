/*
 * features.c -- classic global descriptors computed from decoded pixels:
 * an HSV colour histogram, two perceptual hashes, and LBP texture histograms.
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
 *   cost.  `centre` in (0, 1) counts only the central window of that
 *   fraction of each side: the weak spatial constraint of Stricker & Dimai
 *   (1996) -- the subject of a photograph is mostly in the middle, its
 *   background around it -- so the window's colours are the object's.
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
 *
 * LBP (Ojala, Pietikainen & Maenpaa, PAMI 2002: LBP^riu2_{P,R})
 *   Texture, which a colour histogram cannot see.  The image is turned grey
 *   (601 luma, as the hashes) and shrunk so that its longest side is `side`
 *   (never enlarged: upsampling invents no texture, it only blurs), so that
 *   R means the same scale for every image of a collection.  Around each
 *   pixel g_c, P samples g_p on a circle of radius R at angles 2 pi p / P
 *   (bilinear; a sample within 1e-6 of a pixel centre is that pixel exactly,
 *   so R = 1 with P = 4 or the axis samples of P = 8 read the grid itself)
 *   give the bits s_p = (g_p >= g_c).  The code is the number of ones when
 *   the circular bit string has at most two 0/1 transitions ("uniform"),
 *   else P + 1: P + 2 values, invariant to rotating the image by a multiple
 *   of 2 pi / P (exactly for 90 degrees, up to interpolation otherwise) and
 *   to monotone changes of brightness.  A flat patch has all
 *   bits set: code P.  Samples outside the image repeat the border pixel
 *   (the image is padded once by ceil(R_max) + 1 pixels), so every pixel has
 *   a code and the smallest image still has a histogram.
 *   Several (P, R) scales are concatenated (multi-resolution LBP, section 4
 *   of the paper), and each is counted in every cell of a spatial grid of
 *   one or more levels (1x1, 2x2, ...).  Each (cell, scale) block is
 *   L1-normalised on its own, so cells of different sizes weigh the same; an
 *   empty cell (an image narrower than its grid) stays zero.  The bits are
 *   never stored: the ones and the transitions are counted sample by sample
 *   over a whole row at a time, which vectorises, and bounds P only by the
 *   byte counters (ISX_LBP_MAX_POINTS).
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
#define LBP_SNAP 1e-6 /* a sample this close to a pixel centre reads that pixel */

/* ---------- colour histogram ---------------------------------------------------- */

/* The cell of one RGB pixel in the hue x saturation x value grid. */
static inline size_t hsv_cell(const uint8_t *p, int hb, int sb, int vb, float hscale)
{
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
    return ((size_t)hi * sb + si) * vb + vi;
}

static int colorhist(const isx_feature *f, const isx_image *img, float *out)
{
    const int hb = f->bins[0], sb = f->bins[1], vb = f->bins[2];
    const size_t nbins = (size_t)hb * sb * vb;
    size_t x0 = 0, y0 = 0, ww = img->width, wh = img->height;
    if (f->centre > 0.0f && f->centre < 1.0f) {
        ww = (size_t)floor((double)img->width * f->centre + 0.5);
        wh = (size_t)floor((double)img->height * f->centre + 0.5);
        ww = ww ? ww : 1;
        wh = wh ? wh : 1;
        x0 = (img->width - ww) / 2;
        y0 = (img->height - wh) / 2;
    }
    const float hscale = (float)hb / 6.0f; /* hue in sixths of the circle */
    uint32_t *count = calloc(nbins, sizeof(uint32_t));
    if (!count)
        return isx_error(ISX_ENOMEM, "out of memory for a histogram of %zu bins", nbins);
    for (size_t y = y0; y < y0 + wh; y++) {
        const uint8_t *p = img->pixels + (y * img->width + x0) * 3;
        for (size_t x = 0; x < ww; x++, p += 3)
            count[hsv_cell(p, hb, sb, vb, hscale)]++;
    }
    const float inv = 1.0f / (float)(ww * wh);
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


/* ---------- LBP ------------------------------------------------------------------------ */

typedef struct {
    int oy, ox;   /* top-left pixel of the 2 x 2 neighbourhood, relative to the centre */
    float fy, fx; /* position inside it */
} lbp_sample;

static double snap(double v)
{
    double r = floor(v + 0.5);
    return fabs(v - r) < LBP_SNAP ? r : v;
}

static void lbp_circle(int points, float radius, lbp_sample *s)
{
    for (int p = 0; p < points; p++) {
        double a = 2.0 * ISX_PI * p / points;
        double dy = snap(-radius * sin(a)), dx = snap(radius * cos(a));
        double y0 = floor(dy), x0 = floor(dx);
        s[p].oy = (int)y0;
        s[p].ox = (int)x0;
        s[p].fy = (float)(dy - y0);
        s[p].fx = (float)(dx - x0);
    }
}

static size_t lbp_pad(float radius)
{
    return (size_t)ceilf(radius) + 1; /* the 2 x 2 neighbourhood of the farthest sample */
}

/* `grey` (w x h) into `out` ((w + 2 pad) x (h + 2 pad)) with the border repeated. */
static void pad_replicate(const float *grey, size_t w, size_t h, size_t pad, float *out)
{
    const size_t pw = w + 2 * pad, ph = h + 2 * pad;
    for (size_t y = 0; y < ph; y++) {
        size_t sy = y < pad ? 0 : y - pad >= h ? h - 1 : y - pad;
        const float *src = grey + sy * w;
        float *dst = out + y * pw;
        for (size_t x = 0; x < pad; x++) {
            dst[x] = src[0];
            dst[pad + w + x] = src[w - 1];
        }
        memcpy(dst + pad, src, w * sizeof(float));
    }
}

/* Codes of one scale from the padded image; `scratch` holds 5 * w bytes. */
static void lbp_scale(const float *padded, size_t w, size_t h, size_t pad, int points, float radius,
                      uint8_t *codes, uint8_t *scratch)
{
    lbp_sample s[ISX_LBP_MAX_POINTS];
    lbp_circle(points, radius, s);
    const size_t pw = w + 2 * pad;
    uint8_t *ones = scratch, *trans = scratch + w, *first = scratch + 2 * w;
    uint8_t *cur = scratch + 3 * w, *prev = scratch + 4 * w;
    for (size_t y = 0; y < h; y++) {
        const float *centre = padded + (y + pad) * pw + pad;
        for (int p = 0; p < points; p++) {
            const float *r0 = padded + (size_t)((ptrdiff_t)(y + pad) + s[p].oy) * pw +
                              (size_t)((ptrdiff_t)pad + s[p].ox);
            const float *r1 = r0 + pw;
            const float fy = s[p].fy, fx = s[p].fx;
            for (size_t x = 0; x < w; x++) {
                /* lerp form: four equal neighbours give exactly their value */
                float top = r0[x] + fx * (r0[x + 1] - r0[x]);
                float bot = r1[x] + fx * (r1[x + 1] - r1[x]);
                cur[x] = top + fy * (bot - top) >= centre[x];
            }
            if (p == 0) {
                memcpy(ones, cur, w);
                memcpy(first, cur, w);
                memset(trans, 0, w);
            } else {
                for (size_t x = 0; x < w; x++) {
                    ones[x] += cur[x];
                    trans[x] += cur[x] ^ prev[x];
                }
            }
            uint8_t *t = prev;
            prev = cur;
            cur = t;
        }
        uint8_t *out = codes + y * w;
        const uint8_t nonuniform = (uint8_t)(points + 1);
        for (size_t x = 0; x < w; x++) /* the transition that closes the circle */
            out[x] = trans[x] + (prev[x] ^ first[x]) <= 2 ? ones[x] : nonuniform;
    }
}

int isx_lbp_codes(const float *grey, size_t width, size_t height, int points, float radius, uint8_t *codes)
{
    if (!width || !height)
        return isx_error(ISX_EINVAL, "lbp: expected an image of at least 1 x 1 pixels, found %zu x %zu", width,
                         height);
    if (points < ISX_LBP_MIN_POINTS || points > ISX_LBP_MAX_POINTS || !(radius > 0.0f) ||
        !(radius <= ISX_LBP_MAX_RADIUS))
        return isx_error(ISX_EINVAL, "lbp: expected %d <= P <= %d and 0 < R <= %g, found P=%d R=%g",
                         ISX_LBP_MIN_POINTS, ISX_LBP_MAX_POINTS, (double)ISX_LBP_MAX_RADIUS, points,
                         (double)radius);
    const size_t pad = lbp_pad(radius);
    float *padded = malloc((width + 2 * pad) * (height + 2 * pad) * sizeof(float));
    uint8_t *scratch = malloc(5 * width);
    int rc = ISX_OK;
    if (!padded || !scratch) {
        rc = isx_error(ISX_ENOMEM, "out of memory for the LBP of a %zu x %zu image", width, height);
        goto cleanup;
    }
    pad_replicate(grey, width, height, pad, padded);
    lbp_scale(padded, width, height, pad, points, radius, codes, scratch);
cleanup:
    free(padded);
    free(scratch);
    return rc;
}

/* Bins of one cell: every scale's P + 2. */
static size_t lbp_cell_bins(const isx_lbp_params *q)
{
    size_t n = 0;
    for (int i = 0; i < q->n_scales; i++)
        n += (size_t)q->points[i] + 2;
    return n;
}

static size_t lbp_cells(const isx_lbp_params *q)
{
    size_t n = 0;
    for (int l = 0; l < q->n_levels; l++)
        n += (size_t)q->cells[l] * (size_t)q->cells[l];
    return n;
}

static int lbp_check(const isx_lbp_params *q)
{
    if (q->side < (int)ISX_LBP_MIN_SIDE || q->side > (int)ISX_LBP_MAX_SIDE)
        return isx_error(ISX_EINVAL, "lbp: expected a working side of %u..%u pixels, found %d", ISX_LBP_MIN_SIDE,
                         ISX_LBP_MAX_SIDE, q->side);
    if (q->n_scales < 1 || q->n_scales > ISX_LBP_MAX_SCALES)
        return isx_error(ISX_EINVAL, "lbp: expected 1..%d (P, R) scales, found %d", ISX_LBP_MAX_SCALES,
                         q->n_scales);
    for (int i = 0; i < q->n_scales; i++)
        if (q->points[i] < ISX_LBP_MIN_POINTS || q->points[i] > ISX_LBP_MAX_POINTS || !(q->radius[i] > 0.0f) ||
            !(q->radius[i] <= ISX_LBP_MAX_RADIUS))
            return isx_error(ISX_EINVAL, "lbp: scale %d: expected %d <= P <= %d and 0 < R <= %g, found P=%d R=%g",
                             i, ISX_LBP_MIN_POINTS, ISX_LBP_MAX_POINTS, (double)ISX_LBP_MAX_RADIUS, q->points[i],
                             (double)q->radius[i]);
    if (q->n_levels < 1 || q->n_levels > ISX_LBP_MAX_LEVELS)
        return isx_error(ISX_EINVAL, "lbp: expected 1..%d grid levels, found %d", ISX_LBP_MAX_LEVELS, q->n_levels);
    for (int l = 0; l < q->n_levels; l++)
        if (q->cells[l] < 1 || q->cells[l] > ISX_LBP_MAX_CELLS)
            return isx_error(ISX_EINVAL, "lbp: grid level %d: expected 1..%d cells per side, found %d", l,
                             ISX_LBP_MAX_CELLS, q->cells[l]);
    return ISX_OK;
}

static int lbp(const isx_lbp_params *q, const isx_image *img, float *out)
{
    size_t w = img->width, h = img->height, longest = w > h ? w : h;
    if (longest > (size_t)q->side) { /* shrink, the longest side to exactly `side` */
        double k = (double)q->side / (double)longest;
        w = w == longest ? (size_t)q->side : (size_t)floor((double)w * k + 0.5);
        h = h == longest ? (size_t)q->side : (size_t)floor((double)h * k + 0.5);
        w = w ? w : 1;
        h = h ? h : 1;
    }
    float rmax = 0;
    for (int i = 0; i < q->n_scales; i++)
        rmax = q->radius[i] > rmax ? q->radius[i] : rmax;
    const size_t pad = lbp_pad(rmax), cell_bins = lbp_cell_bins(q), dim = lbp_cells(q) * cell_bins;
    float *grey = malloc(w * h * sizeof(float));
    float *padded = malloc((w + 2 * pad) * (h + 2 * pad) * sizeof(float));
    uint8_t *codes = malloc(w * h), *scratch = malloc(5 * w);
    uint32_t *count = calloc(dim, sizeof(uint32_t));
    int rc = ISX_OK;
    if (!grey || !padded || !codes || !scratch || !count) {
        rc = isx_error(ISX_ENOMEM, "out of memory for the LBP of a %zu x %zu image", w, h);
        goto cleanup;
    }
    if ((rc = grey_resize(img, w, h, grey)) != ISX_OK)
        goto cleanup;
    pad_replicate(grey, w, h, pad, padded);
    size_t scale_off = 0;
    for (int i = 0; i < q->n_scales; i++) {
        lbp_scale(padded, w, h, pad, q->points[i], q->radius[i], codes, scratch);
        size_t level_off = 0;
        for (int l = 0; l < q->n_levels; l++) {
            const size_t c = (size_t)q->cells[l];
            for (size_t y = 0; y < h; y++) {
                const uint8_t *row = codes + y * w;
                uint32_t *cell_row = count + level_off + (y * c / h) * c * cell_bins + scale_off;
                for (size_t x = 0; x < w; x++)
                    cell_row[(x * c / w) * cell_bins + row[x]]++;
            }
            level_off += c * c * cell_bins;
        }
        scale_off += (size_t)q->points[i] + 2;
    }
    /* each (cell, scale) block sums to 1 */
    for (size_t cell = 0; cell < dim / cell_bins; cell++) {
        size_t off = 0;
        for (int i = 0; i < q->n_scales; i++) {
            const size_t nb = (size_t)q->points[i] + 2;
            const uint32_t *cnt = count + cell * cell_bins + off;
            float *dst = out + cell * cell_bins + off;
            uint64_t total = 0;
            for (size_t b = 0; b < nb; b++)
                total += cnt[b];
            const float inv = total ? 1.0f / (float)total : 0.0f;
            for (size_t b = 0; b < nb; b++)
                dst[b] = (float)cnt[b] * inv;
            off += nb;
        }
    }
cleanup:
    free(grey);
    free(padded);
    free(codes);
    free(scratch);
    free(count);
    return rc;
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
        if (!(f->centre >= 0.0f && f->centre <= 1.0f))
            return isx_error(ISX_EINVAL, "colour histogram: expected a centre fraction in 0..1 (0: the whole image), "
                                         "found %g", (double)f->centre);
        *dim_bytes = (size_t)f->bins[0] * f->bins[1] * f->bins[2] * sizeof(float);
        *min_side = HIST_MIN_SIDE;
        return ISX_OK;
    case ISX_FEATURE_PHASH:
    case ISX_FEATURE_DHASH:
        *dim_bytes = 8;
        *min_side = HASH_MIN_SIDE;
        return ISX_OK;
    case ISX_FEATURE_LBP: {
        int rc = lbp_check(&f->lbp);
        if (rc)
            return rc;
        *dim_bytes = lbp_cells(&f->lbp) * lbp_cell_bins(&f->lbp) * sizeof(float);
        *min_side = (size_t)f->lbp.side; /* the longer side then reaches `side` too */
        return ISX_OK;
    }
    }
    return isx_error(ISX_EINVAL, "unknown feature kind %d", (int)f->kind);
}

int isx_feature_compute(const isx_feature *f, const isx_image *img, void *out)
{
    switch (f->kind) {
    case ISX_FEATURE_COLORHIST: return colorhist(f, img, out);
    case ISX_FEATURE_PHASH: return phash(img, out);
    case ISX_FEATURE_DHASH: return dhash(img, out);
    case ISX_FEATURE_LBP: return lbp(&f->lbp, img, out);
    }
    return isx_error(ISX_EINVAL, "unknown feature kind %d", (int)f->kind);
}
