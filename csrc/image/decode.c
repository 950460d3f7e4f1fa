/*
 * decode.c -- bytes to RGB: format detection, limits, the JPEG and stb
 * decoders, grey/alpha/CMYK conversion, EXIF orientation, sources.
 *
 * Design
 *   Every input is treated as hostile.  The format is recognised from its
 *   signature (TGA, which has none, only by name or footer): a file that is
 *   not an image is reported as such, never "decoded" into noise.  The header
 *   is read first and the pixel count checked against ISX_IMAGE_MAX_PIXELS
 *   before anything is allocated; for PNG the claimed size is also checked
 *   against the file size, since deflate cannot expand more than 1032:1 --
 *   a header that lies is refused instead of costing a 300 MB allocation.
 *
 *   JPEG goes to libjpeg-turbo when the build found it (ISX_HAVE_LIBJPEG):
 *   it decodes about 1.4x faster than stb_image, converts CMYK/YCCK, and can
 *   scale in the DCT domain -- a 500 px photo that will be resized to 256 is
 *   decoded at 1/2 directly, which is most of why the preprocessing pipeline
 *   runs faster than a plain full-size decode.  Truncated JPEG data
 *   (libjpeg's "premature end" warning) is an error, as in Pillow; the other
 *   warnings (extraneous bytes, ...) are tolerated, as in Pillow.
 *   Everything else (PNG 8/16-bit, BMP, GIF first frame, TGA, PSD, PNM, and
 *   JPEG without libjpeg) goes through stb_image.
 *
 *   WebP (lossy, lossless, with alpha; still images) goes to libwebp when the
 *   build found it (ISX_HAVE_WEBP), with its EXIF orientation applied as for
 *   JPEG.  Lossless WebP can code a flat image in a few bytes per megapixel,
 *   so no ratio to the file size bounds it: the pixel limit does, checked
 *   from the header before the output is allocated.  Without libwebp, and for
 *   formats we recognise but do not decode (TIFF, HEIF/AVIF), the message
 *   says so and what to do, instead of quoting the first bytes.
 *
 *   Output is always RGB: grey is replicated, alpha is composited on white
 *   (out = (c * a + 255 * (255 - a)) / 255, rounded), 16-bit samples keep
 *   their high byte (as Pillow does for RGB), CMYK becomes
 *   (255 - c)(255 - k) / 255 (Adobe files store inverted values).
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image.h"
#include "stb_wrap.h"

#ifdef ISX_HAVE_LIBJPEG
#include <jpeglib.h>
#include "jpeg_guard.h"
#endif
#ifdef ISX_HAVE_WEBP
#include <webp/decode.h>
#endif

/* deflate's largest expansion is 1032:1; the slack covers tiny images. */
#define PNG_MAX_RATIO 1032u
#define PNG_RATIO_SLACK 4096u

/* The most pixels one byte of each stb format can hold, from its densest
 * coding: GIF's LZW emits at most 4096 pixels per 12-bit code; BMP RLE8/4
 * 255 pixels per 2-byte run; PSD PackBits and TGA RLE 128 pixels per
 * >= 2-byte packet; raw PNM one byte per sample.  A header claiming more
 * than (file size + slack) x this is refused before stb allocates. */
#define GIF_MAX_PIXELS_PER_BYTE 2731u
#define BMP_MAX_PIXELS_PER_BYTE 128u
#define RLE_MAX_PIXELS_PER_BYTE 64u
#define PNM_MAX_PIXELS_PER_BYTE 1u
#define STB_DENSITY_SLACK 1024u

void isx_image_free(isx_image *img)
{
    if (img) {
        free(img->owned);
        img->owned = NULL;
        img->pixels = NULL;
        img->width = img->height = 0;
    }
}

static int check_dims(uint64_t w, uint64_t h, const char *format)
{
    if (w == 0 || h == 0)
        return isx_error(ISX_EFORMAT, "%s header declares an empty image (%llu x %llu)", format,
                         (unsigned long long)w, (unsigned long long)h);
    if (w > ISX_IMAGE_MAX_SIDE || h > ISX_IMAGE_MAX_SIDE || w * h > ISX_IMAGE_MAX_PIXELS)
        return isx_error(ISX_EFORMAT,
                         "%s header declares %llu x %llu pixels, above the limit of %llu megapixels and "
                         "%u per side (a decompression bomb, or a header that lies); downscale the image "
                         "first if it is genuine",
                         format, (unsigned long long)w, (unsigned long long)h,
                         (unsigned long long)(ISX_IMAGE_MAX_PIXELS / 1000000), ISX_IMAGE_MAX_SIDE);
    return ISX_OK;
}

/* ======================================================================== */
/* Reading files                                                             */
/* ======================================================================== */

int isx_image_read_file(const char *path, uint8_t **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return isx_error_errno(errno, "cannot open '%s'", path);
    struct stat st;
    int rc = ISX_OK;
    uint8_t *buf = NULL;
    if (fstat(fd, &st) != 0) {
        rc = isx_error_errno(errno, "cannot stat '%s'", path);
        goto cleanup;
    }
    if (S_ISDIR(st.st_mode)) {
        rc = isx_error_errno(EISDIR, "cannot read '%s'", path);
        goto cleanup;
    }
    if (st.st_size < 0 || (uint64_t)st.st_size > ISX_IMAGE_MAX_FILE_BYTES) {
        rc = isx_error(ISX_EFORMAT, "'%s' is %lld bytes, above the %zu MiB limit for one image file", path,
                       (long long)st.st_size, ISX_IMAGE_MAX_FILE_BYTES >> 20);
        goto cleanup;
    }
    size_t size = (size_t)st.st_size, got = 0;
    buf = malloc(size ? size : 1);
    if (!buf) {
        rc = isx_error(ISX_ENOMEM, "out of memory reading '%s' (%zu bytes)", path, size);
        goto cleanup;
    }
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            rc = isx_error_errno(errno, "cannot read '%s'", path);
            goto cleanup;
        }
        if (r == 0)
            break; /* the file shrank while we read it: decode what is there */
        got += (size_t)r;
    }
    *data = buf;
    *len = got;
    buf = NULL;
cleanup:
    free(buf);
    close(fd);
    return rc;
}

/* ======================================================================== */
/* Pixel conversions                                                         */
/* ======================================================================== */

static inline uint8_t div255(unsigned v)
{
    /* exact round(v / 255) for v <= 255 * 255 + 127 */
    v += 128;
    return (uint8_t)((v + (v >> 8)) >> 8);
}

/* RGBA -> RGB on white, in place (the RGB bytes are written behind the reads). */
static void composite_on_white(uint8_t *px, size_t npix)
{
    const uint8_t *src = px;
    uint8_t *dst = px;
    for (size_t i = 0; i < npix; i++, src += 4, dst += 3) {
        unsigned a = src[3], na = 255 - a;
        uint8_t r = div255(src[0] * a + 255 * na);
        uint8_t g = div255(src[1] * a + 255 * na);
        uint8_t b = div255(src[2] * a + 255 * na);
        dst[0] = r;
        dst[1] = g;
        dst[2] = b;
    }
}

/* ======================================================================== */
/* JPEG through libjpeg(-turbo)                                              */
/* ======================================================================== */

#ifdef ISX_HAVE_LIBJPEG
/* The DCT-domain scale, in eighths.  Only 1/1, 1/2, 1/4 and 1/8 are used:
 * libjpeg-turbo has SIMD inverse DCTs for those, while the other M/8 factors
 * run in plain C and decode *slower* than full size (measured on flowers17:
 * 5/8 at 0.6x the rate of 8/8, 4/8 at 1.4x).  The smallest of them whose
 * shorter side reaches min_side, less DCT_SCALE_SLACK, is taken: a 500 px
 * photo headed for 256 is decoded at 250 and enlarged by 2.4%, which costs
 * less sharpness than the antialiasing of the 8x8 -> 4x4 transform gains. */
#define DCT_SCALE_SLACK 0.05
static unsigned jpeg_scale_eighths(size_t w, size_t h, size_t min_side)
{
    if (min_side == 0)
        return 8;
    size_t s = w < h ? w : h;
    double need = (double)min_side * (1.0 - DCT_SCALE_SLACK);
    for (unsigned m = 1; m < 8; m *= 2)
        if ((double)((s * m + 7) / 8) >= need)
            return m;
    return 8;
}

static int decode_jpeg(const uint8_t *data, size_t len, const isx_decode_opts *opts, isx_image *out)
{
    struct jpeg_decompress_struct cinfo;
    isx_jpeg_guard guard;
    uint8_t *volatile pixels = NULL;
    uint8_t *volatile cmyk = NULL;
    volatile int rc = ISX_OK;

    memset(&cinfo, 0, sizeof(cinfo));
    cinfo.err = isx_jpeg_guard_init(&guard);
    if (setjmp(guard.jump)) {
        rc = isx_error(ISX_EFORMAT, "corrupt JPEG: %s", guard.message);
        goto cleanup;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)len);
    jpeg_read_header(&cinfo, TRUE);
    if ((rc = check_dims(cinfo.image_width, cinfo.image_height, "JPEG")) != ISX_OK)
        goto cleanup;
    int is_cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
    cinfo.out_color_space = is_cmyk ? JCS_CMYK : JCS_RGB;
    cinfo.dct_method = JDCT_ISLOW;
    unsigned m = jpeg_scale_eighths(cinfo.image_width, cinfo.image_height, opts ? opts->min_side : 0);
    cinfo.scale_num = m;
    cinfo.scale_denom = 8;
    jpeg_start_decompress(&cinfo);
    size_t w = cinfo.output_width, h = cinfo.output_height;
    if (cinfo.output_components != (is_cmyk ? 4 : 3)) {
        rc = isx_error(ISX_EFORMAT, "JPEG: unsupported colour layout (%d components)", cinfo.output_components);
        goto cleanup;
    }
    pixels = malloc(w * h * 3);
    if (is_cmyk)
        cmyk = malloc(w * 4);
    if (!pixels || (is_cmyk && !cmyk)) {
        rc = isx_error(ISX_ENOMEM, "out of memory for a %zu x %zu JPEG", w, h);
        goto cleanup;
    }
    while (cinfo.output_scanline < h) {
        size_t y = cinfo.output_scanline;
        if (!is_cmyk) {
            JSAMPROW rows[8];
            unsigned nr = 0;
            for (; nr < 8 && y + nr < h; nr++)
                rows[nr] = pixels + (y + nr) * w * 3;
            if (jpeg_read_scanlines(&cinfo, rows, nr) == 0)
                break;
        } else {
            JSAMPROW row = cmyk;
            if (jpeg_read_scanlines(&cinfo, &row, 1) != 1)
                break;
            int inverted = cinfo.saw_Adobe_marker;
            uint8_t *dst = pixels + y * w * 3;
            for (size_t x = 0; x < w; x++) {
                unsigned c = cmyk[4 * x], mg = cmyk[4 * x + 1], ye = cmyk[4 * x + 2], k = cmyk[4 * x + 3];
                if (!inverted) {
                    c = 255 - c;
                    mg = 255 - mg;
                    ye = 255 - ye;
                    k = 255 - k;
                }
                dst[3 * x] = div255(c * k);
                dst[3 * x + 1] = div255(mg * k);
                dst[3 * x + 2] = div255(ye * k);
            }
        }
        if (guard.truncated)
            break;
    }
    if (guard.truncated || cinfo.output_scanline < h) {
        rc = isx_error(ISX_EFORMAT, "truncated JPEG: the data ends at row %u of %zu",
                       (unsigned)cinfo.output_scanline, h);
        goto cleanup;
    }
    out->owned = pixels;
    out->pixels = pixels;
    out->width = w;
    out->height = h;
    pixels = NULL;
cleanup:
    jpeg_destroy_decompress(&cinfo);
    free(pixels);
    free(cmyk);
    return rc;
}
#endif

/* ======================================================================== */
/* WebP through libwebp                                                      */
/* ======================================================================== */

#ifdef ISX_HAVE_WEBP
static const char *webp_status_text(VP8StatusCode st)
{
    switch (st) {
    case VP8_STATUS_OUT_OF_MEMORY: return "out of memory";
    case VP8_STATUS_INVALID_PARAM: return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR: return "bitstream error";
    case VP8_STATUS_UNSUPPORTED_FEATURE: return "unsupported feature";
    case VP8_STATUS_SUSPENDED: return "suspended";
    case VP8_STATUS_USER_ABORT: return "aborted";
    case VP8_STATUS_NOT_ENOUGH_DATA: return "the data ends before the image does";
    default: return "unknown error";
    }
}

static int webp_failure(VP8StatusCode st, const char *stage)
{
    if (st == VP8_STATUS_OUT_OF_MEMORY)
        return isx_error(ISX_ENOMEM, "out of memory decoding a WebP image");
    return isx_error(ISX_EFORMAT, "%s WebP (%s): %s", st == VP8_STATUS_NOT_ENOUGH_DATA ? "truncated" : "corrupt",
                     stage, webp_status_text(st));
}

static int decode_webp(const uint8_t *data, size_t len, isx_image *out)
{
    WebPDecoderConfig config;
    if (!WebPInitDecoderConfig(&config))
        return isx_error(ISX_EINVAL, "libwebp: the decoder library does not match the headers it was built with");
    VP8StatusCode st = WebPGetFeatures(data, len, &config.input);
    if (st != VP8_STATUS_OK)
        return webp_failure(st, "header");
    if (config.input.has_animation)
        return isx_error(ISX_EFORMAT, "animated WebP is not supported: convert its first frame to PNG or JPEG");
    int rc = check_dims((uint64_t)config.input.width, (uint64_t)config.input.height, "WebP");
    if (rc)
        return rc;
    size_t w = (size_t)config.input.width, h = (size_t)config.input.height;
    size_t channels = config.input.has_alpha ? 4 : 3;
    uint8_t *px = malloc(w * h * channels);
    if (!px)
        return isx_error(ISX_ENOMEM, "out of memory for a %zu x %zu WebP", w, h);
    config.output.colorspace = config.input.has_alpha ? MODE_RGBA : MODE_RGB;
    config.output.is_external_memory = 1;
    config.output.u.RGBA.rgba = px;
    config.output.u.RGBA.stride = (int)(w * channels);
    config.output.u.RGBA.size = w * h * channels;
    st = WebPDecode(data, len, &config);
    WebPFreeDecBuffer(&config.output); /* the pixels are ours; this frees libwebp's state */
    if (st != VP8_STATUS_OK) {
        free(px);
        return webp_failure(st, "image data");
    }
    if (channels == 4)
        composite_on_white(px, w * h);
    out->owned = px;
    out->pixels = px;
    out->width = w;
    out->height = h;
    return ISX_OK;
}
#endif

/* ======================================================================== */
/* Everything else through stb_image                                         */
/* ======================================================================== */

static int decode_stb(const uint8_t *data, size_t len, const char *format, isx_image *out)
{
    if (len > INT_MAX)
        return isx_error(ISX_EFORMAT, "%s data of %zu bytes is above the 2 GiB the decoder takes", format, len);
    int w, h, comp, is16;
    if (!isx_stb_info(data, len, &w, &h, &comp, &is16))
        return isx_error(ISX_EFORMAT, "corrupt %s: %s", format, isx_stb_failure());
    int rc = check_dims((uint64_t)w, (uint64_t)h, format);
    if (rc)
        return rc;
    if (strcmp(format, "PNG") == 0) {
        uint64_t raw = (uint64_t)h * (1 + (uint64_t)w * (uint64_t)comp * (is16 ? 2 : 1));
        if (raw > (uint64_t)len * PNG_MAX_RATIO + PNG_RATIO_SLACK)
            return isx_error(ISX_EFORMAT,
                             "PNG header declares %d x %d pixels but the file has only %zu bytes, less than "
                             "deflate can expand to that size: truncated, or a header that lies",
                             w, h, len);
    }
    unsigned density = strcmp(format, "GIF") == 0   ? GIF_MAX_PIXELS_PER_BYTE
                       : strcmp(format, "BMP") == 0 ? BMP_MAX_PIXELS_PER_BYTE
                       : strcmp(format, "PNM") == 0 ? PNM_MAX_PIXELS_PER_BYTE
                       : strcmp(format, "PNG") == 0 ? 0 /* checked above, per byte of raw data */
                                                    : RLE_MAX_PIXELS_PER_BYTE;
    if (density && (uint64_t)w * (uint64_t)h > ((uint64_t)len + STB_DENSITY_SLACK) * density)
        return isx_error(ISX_EFORMAT,
                         "%s header declares %d x %d pixels but the file has only %zu bytes, fewer than that "
                         "format needs: truncated, or a header that lies",
                         format, w, h, len);
    int channels = (comp == 2 || comp == 4) ? 4 : 3;
    int lw, lh, truncated;
    uint8_t *px = isx_stb_load(data, len, channels, &lw, &lh, &truncated);
    if (px && truncated) {
        isx_stb_free(px);
        return isx_error(ISX_EFORMAT, "truncated %s: the data ends before the image does (%zu bytes)", format, len);
    }
    if (!px)
        return isx_error(ISX_EFORMAT, "%s %s: %s", truncated ? "truncated" : "corrupt", format, isx_stb_failure());
    if (lw != w || lh != h) {
        isx_stb_free(px);
        return isx_error(ISX_EFORMAT, "corrupt %s: size changed between header and data", format);
    }
    if (channels == 4)
        composite_on_white(px, (size_t)w * (size_t)h); /* stb's buffer comes from malloc: free() releases it */
    out->owned = px;
    out->pixels = px;
    out->width = (size_t)w;
    out->height = (size_t)h;
    return ISX_OK;
}

/* ======================================================================== */
/* Format detection and the public entry points                              */
/* ======================================================================== */

#ifdef ISX_HAVE_WEBP
#define KNOWN_FORMATS "JPEG, PNG, WebP, GIF, BMP, TGA, PSD, PNM"
#else
#define KNOWN_FORMATS "JPEG, PNG, GIF, BMP, TGA, PSD, PNM"
#endif

static int has_tga_footer(const uint8_t *d, size_t len)
{
    static const char sig[] = "TRUEVISION-XFILE.";
    return len >= 26 + 18 && memcmp(d + len - 18, sig, 17) == 0 && d[len - 1] == 0;
}

static int is_webp(const uint8_t *d, size_t len)
{
    return len >= 12 && memcmp(d, "RIFF", 4) == 0 && memcmp(d + 8, "WEBP", 4) == 0;
}

/* Formats we recognise but do not decode: a message that says so, or NULL. */
static const char *unsupported_format(const uint8_t *d, size_t len)
{
    if (len >= 4 && (memcmp(d, "II*\0", 4) == 0 || memcmp(d, "MM\0*", 4) == 0))
        return "TIFF is not supported (convert to PNG or JPEG)";
    if (len >= 12 && memcmp(d + 4, "ftyp", 4) == 0 &&
        (memcmp(d + 8, "heic", 4) == 0 || memcmp(d + 8, "heix", 4) == 0 || memcmp(d + 8, "mif1", 4) == 0 ||
         memcmp(d + 8, "avif", 4) == 0))
        return "HEIF/AVIF is not supported (convert to PNG or JPEG)";
#ifndef ISX_HAVE_WEBP
    if (is_webp(d, len))
        return "WebP is not supported by this build of imgsearch: it was built without libwebp (install "
               "libwebp-dev, or your system's libwebp development package, and reinstall imgsearch), or "
               "convert the image to PNG or JPEG";
#endif
    return NULL;
}

static const char *sniff(const uint8_t *d, size_t len, int tga_by_name)
{
    if (len >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF)
        return "JPEG";
#ifdef ISX_HAVE_WEBP
    if (is_webp(d, len))
        return "WebP";
#endif
    if (len >= 8 && memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0)
        return "PNG";
    if (len >= 6 && (memcmp(d, "GIF87a", 6) == 0 || memcmp(d, "GIF89a", 6) == 0))
        return "GIF";
    if (len >= 2 && d[0] == 'B' && d[1] == 'M')
        return "BMP";
    if (len >= 4 && memcmp(d, "8BPS", 4) == 0)
        return "PSD";
    if (len >= 3 && d[0] == 'P' && (d[1] == '5' || d[1] == '6') && (d[2] == ' ' || d[2] == '\n' || d[2] == '\r' || d[2] == '\t'))
        return "PNM";
    if (len >= 18 && (tga_by_name || has_tga_footer(d, len)))
        return "TGA";
    return NULL;
}

int isx_image_decode(const uint8_t *data, size_t len, const isx_decode_opts *opts, isx_image *out)
{
    memset(out, 0, sizeof(*out));
    const char *format = sniff(data, len, opts && opts->tga_by_name);
    if (!format) {
        if (len == 0)
            return isx_error(ISX_EFORMAT, "not an image: the data is empty");
        const char *unsupported = unsupported_format(data, len);
        if (unsupported)
            return isx_error(ISX_EFORMAT, "%s", unsupported);
        char head[3 * 8 + 1] = "";
        for (size_t i = 0; i < len && i < 8; i++)
            snprintf(head + 3 * i, sizeof(head) - 3 * i, "%02x ", data[i]);
        return isx_error(ISX_EFORMAT, "not a recognised image format (%s): it starts with bytes %s", KNOWN_FORMATS,
                         head);
    }
    int rc;
    int jpeg = strcmp(format, "JPEG") == 0, webp = strcmp(format, "WebP") == 0;
#ifdef ISX_HAVE_LIBJPEG
    if (jpeg)
        rc = decode_jpeg(data, len, opts, out);
    else
#endif
#ifdef ISX_HAVE_WEBP
    if (webp)
        rc = decode_webp(data, len, out);
    else
#endif
        rc = decode_stb(data, len, format, out);
    if (rc == ISX_OK && (jpeg || webp)) {
        int orientation = isx_exif_orientation(data, len);
        if (orientation != 1 && (rc = isx_image_orient(out, orientation)) != ISX_OK)
            isx_image_free(out);
    }
    return rc;
}

const char *isx_source_name(const isx_image_source *src)
{
    switch (src->kind) {
    case ISX_SRC_PATH: return src->path;
    case ISX_SRC_BYTES: return "<bytes>";
    default: return "<array>";
    }
}

static int ends_with_tga(const char *path)
{
    size_t n = strlen(path);
    return n >= 4 && path[n - 4] == '.' && (path[n - 3] | 32) == 't' && (path[n - 2] | 32) == 'g' &&
           (path[n - 1] | 32) == 'a';
}

static int from_pixels(const isx_image_source *src, isx_image *out)
{
    int rc = check_dims(src->width, src->height, "array");
    if (rc)
        return rc;
    size_t npix = src->width * src->height;
    out->width = src->width;
    out->height = src->height;
    if (src->channels == 3) {
        out->pixels = src->data;
        return ISX_OK;
    }
    if (src->channels != 1 && src->channels != 4)
        return isx_error(ISX_EINVAL, "expected 1, 3 or 4 channels, found %d", src->channels);
    uint8_t *px = malloc(npix * (src->channels == 4 ? 4 : 3));
    if (!px)
        return isx_error(ISX_ENOMEM, "out of memory converting a %zu x %zu array", src->width, src->height);
    if (src->channels == 1) {
        for (size_t i = 0; i < npix; i++)
            px[3 * i] = px[3 * i + 1] = px[3 * i + 2] = src->data[i];
    } else {
        memcpy(px, src->data, npix * 4);
        composite_on_white(px, npix);
    }
    out->owned = px;
    out->pixels = px;
    return ISX_OK;
}

int isx_image_from_source(const isx_image_source *src, const isx_decode_opts *opts, isx_image *out)
{
    memset(out, 0, sizeof(*out));
    int rc;
    switch (src->kind) {
    case ISX_SRC_PATH: {
        uint8_t *data;
        size_t len;
        if ((rc = isx_image_read_file(src->path, &data, &len)) != ISX_OK)
            return rc;
        isx_decode_opts o = opts ? *opts : (isx_decode_opts){0};
        o.tga_by_name = ends_with_tga(src->path);
        rc = isx_image_decode(data, len, &o, out);
        free(data);
        return rc;
    }
    case ISX_SRC_BYTES:
        return isx_image_decode(src->data, src->len, opts, out);
    case ISX_SRC_PIXELS:
        return from_pixels(src, out);
    case ISX_SRC_INVALID:
        return isx_error(ISX_ETYPE, "%s", src->error ? src->error : "unusable item");
    }
    return isx_error(ISX_EINVAL, "unknown image source kind %d", (int)src->kind);
}
