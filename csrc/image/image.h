/*
 * image.h -- the image pipeline of the C core: decode, orient, resize,
 * normalise, batch, and the classic features computed from pixels.
 *
 * Everything here works on one representation, isx_image: 8-bit RGB,
 * interleaved, rows packed.  Decoders (libjpeg-turbo for JPEG and libwebp for
 * WebP when the build found them, stb_image for everything else) convert
 * whatever they read into that form -- grey is replicated, alpha is composited on white, 16-bit
 * samples keep their high byte -- and apply the EXIF orientation, so later
 * stages never branch on the source format.
 *
 * Errors follow isx.h: a negative status and a thread-local message.  A file
 * that is not an image, or a corrupt, truncated or oversized one, is
 * ISX_EFORMAT (the binding raises imgsearch.ImageDecodeError for it); an
 * unreadable path is ISX_EIO.
 */
#ifndef ISX_IMAGE_H
#define ISX_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "../common/isx.h"

/* ---------- limits --------------------------------------------------------- */
/* A decompression bomb is refused from its header, before any allocation:
 * 100 megapixels is 300 MB of RGB, beyond any photograph a retrieval system
 * indexes (Pillow warns at 89 MP and refuses at 179 MP). */
#define ISX_IMAGE_MAX_PIXELS ((uint64_t)100000000)
/* A side longer than this is refused whatever the pixel count (a 1 x 10^8
 * strip is not a photograph, and it would defeat per-row buffers). */
#define ISX_IMAGE_MAX_SIDE 65535u
/* Files larger than this are not read into memory (the largest legitimate
 * 100 MP PNG is about this size). */
#define ISX_IMAGE_MAX_FILE_BYTES ((size_t)1 << 30)
/* Output side of load_batch and the resize function. */
#define ISX_IMAGE_MAX_OUT_SIDE 16384u

/* ---------- images ----------------------------------------------------------- */
typedef struct {
    const uint8_t *pixels; /* height rows of width * 3 bytes (RGB) */
    size_t width, height;
    uint8_t *owned;        /* what isx_image_free releases (NULL: borrowed) */
} isx_image;

void isx_image_free(isx_image *img);

typedef struct {
    /* 0: full resolution.  Otherwise the decoder may deliver a smaller image
     * (JPEG DCT-domain scaling by M/8) whose shorter side stays >= min_side:
     * a preprocessing pipeline that resizes to min_side loses nothing. */
    size_t min_side;
    /* TGA has no signature, so a file is only read as TGA when its name ends
     * in .tga or it carries the TGA 2.0 footer: anything else that is not a
     * known format is reported as such, never guessed. */
    int tga_by_name;
} isx_decode_opts;

/* Decode an encoded image held in memory; the EXIF orientation of a JPEG or
 * WebP is applied.  On success *out owns its pixels. */
int isx_image_decode(const uint8_t *data, size_t len, const isx_decode_opts *opts, isx_image *out);

/* Read a whole file (bounded by ISX_IMAGE_MAX_FILE_BYTES); *data is malloc'd. */
int isx_image_read_file(const char *path, uint8_t **data, size_t *len);

/* EXIF orientation (1..8) from a JPEG's APP1 segment or a WebP's EXIF chunk;
 * 1 when absent or unreadable (a broken EXIF block never makes a good image
 * fail). */
int isx_exif_orientation(const uint8_t *data, size_t len);

/* Apply an EXIF orientation: *img is replaced by the transformed copy. */
int isx_image_orient(isx_image *img, int orientation);

/* ---------- sources: what a batch item can be -------------------------------- */
typedef enum {
    ISX_SRC_INVALID = 0, /* the caller could not use the item: `error` says why */
    ISX_SRC_PATH = 1,   /* a file to read */
    ISX_SRC_BYTES = 2,  /* encoded image data in memory */
    ISX_SRC_PIXELS = 3, /* decoded uint8 pixels: height x width x channels, packed */
} isx_source_kind;

typedef struct {
    isx_source_kind kind;
    const char *path;       /* PATH */
    const uint8_t *data;    /* BYTES: encoded data; PIXELS: the pixels */
    size_t len;             /* BYTES */
    size_t width, height;   /* PIXELS */
    int channels;           /* PIXELS: 1 (grey), 3 (RGB) or 4 (RGBA, composited on white) */
    const char *error;      /* INVALID */
} isx_image_source;

/* Turn any source into an RGB image (3-channel pixels are borrowed). */
int isx_image_from_source(const isx_image_source *src, const isx_decode_opts *opts, isx_image *out);

/* A short description of a source for messages: the path, or "<bytes>". */
const char *isx_source_name(const isx_image_source *src);

/* ---------- resampling -------------------------------------------------------- */
/* Resize the whole image to out_w x out_h: area averaging on each axis that
 * shrinks, bilinear (pixel centres aligned) on each axis that grows.
 * `out` holds out_h * out_w * 3 bytes, rounded to nearest. */
int isx_image_resize(const isx_image *img, size_t out_w, size_t out_h, uint8_t *out);

typedef struct {
    size_t size;    /* side of the centre crop */
    size_t resize;  /* the shorter side is first resized to this (>= size) */
    float mean[3];  /* per channel, on the 0..1 scale */
    float std[3];
} isx_preprocess;

/* Shorter side -> resize, centre crop size x size, (x/255 - mean) / std,
 * written planar: out[c][y][x], 3 * size * size floats.  One fused pass:
 * only the pixels inside the crop are ever computed. */
int isx_image_preprocess(const isx_image *img, const isx_preprocess *p, float *out);

/* The (width, height) the shorter-side resize produces, and the crop origin. */
void isx_preprocess_geometry(size_t w, size_t h, const isx_preprocess *p, size_t *rw, size_t *rh, size_t *x0,
                             size_t *y0);

/* Resample into float rows: the output image is out_w x out_h, of which the
 * window [x0, x0 + cw) x [y0, y0 + ch) is produced; each window row is
 * handed to `row` as cw * 3 floats (RGB, 0..255 scale). */
typedef void (*isx_row_sink)(void *ctx, size_t y, const float *rgb, size_t cw);
int isx_image_resample(const isx_image *img, size_t out_w, size_t out_h, size_t x0, size_t y0, size_t cw,
                       size_t ch, isx_row_sink row, void *ctx);

/* ---------- batches ------------------------------------------------------------ */
/* Work done on one decoded image, writing one output row of the batch. */
typedef int (*isx_image_item_fn)(void *ctx, const isx_image *img, void *out_row);

typedef struct {
    const isx_image_source *sources;
    size_t n;
    isx_decode_opts decode;
    isx_image_item_fn fn;
    void *ctx;
    uint8_t *out;      /* n rows of row_bytes */
    size_t row_bytes;
    int *status;       /* n: 0 or the item's error status */
    int *errnos;       /* n: the errno of an ISX_EIO failure, else 0 */
    char **messages;   /* n: NULL, or a malloc'd message for a failed item */
} isx_image_batch;

/* Run every item on up to `threads` native threads (<= 0: all CPUs).  A
 * failing item never stops the others: its status and message are recorded.
 * Returns non-zero only when the batch itself could not run. */
int isx_image_batch_run(isx_image_batch *b, int threads);

/* Move the rows of successful items to the front, in order; returns their
 * count.  Frees nothing. */
size_t isx_image_batch_compact(isx_image_batch *b);

/* ---------- classic features --------------------------------------------------- */
typedef enum {
    ISX_FEATURE_COLORHIST = 1, /* HSV histogram, L1-normalised float32 */
    ISX_FEATURE_PHASH = 2,     /* DCT perceptual hash, 64 packed bits */
    ISX_FEATURE_DHASH = 3,     /* difference hash, 64 packed bits */
    ISX_FEATURE_LBP = 4,       /* rotation-invariant uniform LBP histograms, float32 */
} isx_feature_kind;

#define ISX_HIST_MAX_BINS 64u /* per channel; 64^3 floats = 1 MiB per image */

/* LBP limits.  A code's bits are counted, never stored, so P is bounded only
 * by what is useful: Ojala et al. go to P = 24; 32 leaves room.  The radius
 * bounds the border padding; beyond 16 pixels at a 256 working side the
 * "texture" is the layout of the image. */
#define ISX_LBP_MAX_SCALES 4   /* (P, R) pairs in one descriptor */
#define ISX_LBP_MIN_POINTS 4
#define ISX_LBP_MAX_POINTS 32
#define ISX_LBP_MAX_RADIUS 16.0f
#define ISX_LBP_MIN_SIDE 8u    /* working side: below this there is no texture to speak of */
#define ISX_LBP_MAX_SIDE 4096u
#define ISX_LBP_MAX_LEVELS 4   /* spatial grid levels, e.g. 1x1 + 2x2 */
#define ISX_LBP_MAX_CELLS 8    /* cells per side of one level */

typedef struct {
    int side;                            /* the longest side is shrunk to this (never enlarged) */
    int n_scales;
    int points[ISX_LBP_MAX_SCALES];      /* P of each scale */
    float radius[ISX_LBP_MAX_SCALES];    /* R of each scale, pixels of the working image */
    int n_levels;
    int cells[ISX_LBP_MAX_LEVELS];       /* cells per side of each level: {1, 2} = whole + 2x2 */
} isx_lbp_params;

typedef struct {
    isx_feature_kind kind;
    int bins[3];       /* COLORHIST: hue, saturation, value bins */
    float centre;      /* COLORHIST: count only the central fraction of each side (0: the whole image) */
    isx_lbp_params lbp; /* LBP */
} isx_feature;

/* Validates the parameters; *dim_bytes is the size of one output row,
 * *min_side the resolution the feature needs from the decoder. */
int isx_feature_check(const isx_feature *f, size_t *dim_bytes, size_t *min_side);
int isx_feature_compute(const isx_feature *f, const isx_image *img, void *out);

/* LBP^riu2_{P,R} code (0..P+1) of every pixel of a grey float image, rows
 * packed; samples off the image repeat the border pixel.  The building
 * block of ISX_FEATURE_LBP, public so that tests can check codes directly. */
int isx_lbp_codes(const float *grey, size_t width, size_t height, int points, float radius, uint8_t *codes);

#endif
