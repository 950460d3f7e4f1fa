/*
 * encode.c -- thumbnails: decode, shrink, encode to JPEG or PNG.
 *
 * Design
 *   A thumbnail is decoded with min_side = max_side, so a large JPEG is
 *   already shrunk by the DCT (the shorter side stays >= max_side, hence the
 *   longer side too), then area-averaged to its final size by
 *   isx_image_resize -- the same pixels as the preprocessing pipeline, and no
 *   full-size decode of a 12-megapixel photo to show it at 128 pixels.
 *
 *   JPEG goes through libjpeg-turbo when the build found it (it is the
 *   compact format for photographs: ~5 KB at 128 px).  PNG is always
 *   available and written here: signature, IHDR, one IDAT holding a zlib
 *   stream of *stored* deflate blocks (no compression, so no zlib), IEND.
 *   Stored blocks cost ~3 bytes per pixel -- 48 KB at 128 x 128 -- which is
 *   acceptable for a thumbnail and keeps the writer a page of code that
 *   cannot be made to misbehave by its input (the pixels are never parsed).
 *
 *   Errors follow isx.h; every buffer is owned by exactly one pointer and
 *   released at one cleanup label.
 */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "encode.h"
#include "stb_wrap.h"

#ifdef ISX_HAVE_LIBJPEG
#include <jpeglib.h>

#include "jpeg_guard.h"
#endif

/* ======================================================================== */
/* Geometry                                                                  */
/* ======================================================================== */

void isx_thumb_geometry(size_t w, size_t h, size_t max_side, size_t *tw, size_t *th)
{
    if (w <= max_side && h <= max_side) {
        *tw = w;
        *th = h;
    } else if (w >= h) {
        *tw = max_side;
        *th = (size_t)((double)h * (double)max_side / (double)w + 0.5);
    } else {
        *th = max_side;
        *tw = (size_t)((double)w * (double)max_side / (double)h + 0.5);
    }
    if (*tw == 0)
        *tw = 1;
    if (*th == 0)
        *th = 1;
}

/* ======================================================================== */
/* PNG, stored deflate                                                       */
/* ======================================================================== */

/* CRC-32 (ISO-HDLC, PNG's), bitwise: a thumbnail is tens of kilobytes, and
 * the table-less form keeps this file free of global state. */
static uint32_t png_crc(uint32_t crc, const uint8_t *p, size_t n)
{
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int b = 0; b < 8; b++)
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Writes one chunk whose data already sits at p + 8; returns its total size. */
static size_t png_close_chunk(uint8_t *p, const char type[4], size_t data_len)
{
    put_be32(p, (uint32_t)data_len);
    memcpy(p + 4, type, 4);
    put_be32(p + 8 + data_len, png_crc(0, p + 4, data_len + 4));
    return 12 + data_len;
}

static int encode_png(const isx_image *img, uint8_t **out, size_t *len)
{
    const size_t row = img->width * 3 + 1; /* filter byte (0: none) + RGB */
    const size_t raw = row * img->height;
    const size_t blocks = raw / ISX_PNG_STORED_BLOCK + 1;
    const size_t zlen = 2 + raw + 5 * blocks + 4; /* header, data, block headers, Adler-32 */
    if (zlen > 0x7FFFFFFFu)
        return isx_error(ISX_EINVAL, "PNG: a %zu x %zu image is too large for one stored chunk", img->width,
                         img->height);
    const size_t total = 8 + (12 + 13) + (12 + zlen) + 12;
    uint8_t *buf = malloc(total);
    if (!buf)
        return isx_error(ISX_ENOMEM, "out of memory for a %zu-byte PNG", total);

    uint8_t *p = buf;
    memcpy(p, "\x89PNG\r\n\x1a\n", 8);
    p += 8;
    uint8_t *ihdr = p + 8;
    put_be32(ihdr, (uint32_t)img->width);
    put_be32(ihdr + 4, (uint32_t)img->height);
    ihdr[8] = 8;  /* bit depth */
    ihdr[9] = 2;  /* colour type: RGB */
    ihdr[10] = 0; /* compression: deflate */
    ihdr[11] = 0; /* filter method */
    ihdr[12] = 0; /* no interlace */
    p += png_close_chunk(p, "IHDR", 13);

    uint8_t *z = p + 8, *zp = z;
    *zp++ = 0x78; /* deflate, 32 KB window */
    *zp++ = 0x01; /* no preset dictionary, fastest; (0x78 << 8 | 0x01) % 31 == 0 */
    uint32_t a = 1, b = 0; /* Adler-32 of the uncompressed stream */
    size_t left = raw, x = 0, y = 0;
    do {
        size_t n = left < ISX_PNG_STORED_BLOCK ? left : ISX_PNG_STORED_BLOCK;
        left -= n;
        *zp++ = left == 0; /* BFINAL, BTYPE 00 (stored) */
        zp[0] = (uint8_t)n;
        zp[1] = (uint8_t)(n >> 8);
        zp[2] = (uint8_t)~n;
        zp[3] = (uint8_t)(~n >> 8);
        zp += 4;
        for (size_t i = 0; i < n; i++) { /* the scanlines, continued across blocks */
            uint8_t v = x == 0 ? 0 : img->pixels[y * img->width * 3 + x - 1];
            if (++x == row) {
                x = 0;
                y++;
            }
            *zp++ = v;
            a = (a + v) % 65521u;
            b = (b + a) % 65521u;
        }
    } while (left);
    put_be32(zp, (b << 16) | a);
    zp += 4;
    p += png_close_chunk(p, "IDAT", (size_t)(zp - z));
    p += png_close_chunk(p, "IEND", 0);

    *out = buf;
    *len = (size_t)(p - buf);
    return ISX_OK;
}

/* ======================================================================== */
/* JPEG through libjpeg(-turbo)                                              */
/* ======================================================================== */

#ifdef ISX_HAVE_LIBJPEG
static int encode_jpeg(const isx_image *img, int quality, uint8_t **out, size_t *len)
{
    struct jpeg_compress_struct cinfo;
    isx_jpeg_guard guard;
    unsigned char *volatile mem = NULL;
    unsigned long mem_len = 0;
    volatile int rc = ISX_OK;

    memset(&cinfo, 0, sizeof(cinfo));
    cinfo.err = isx_jpeg_guard_init(&guard);
    if (setjmp(guard.jump)) {
        rc = isx_error(ISX_EINVAL, "JPEG encoder: %s", guard.message);
        goto cleanup;
    }
    jpeg_create_compress(&cinfo);
    jpeg_mem_dest(&cinfo, (unsigned char **)&mem, &mem_len);
    cinfo.image_width = (JDIMENSION)img->width;
    cinfo.image_height = (JDIMENSION)img->height;
    cinfo.input_components = 3;
    cinfo.in_color_space = JCS_RGB;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, quality, TRUE);
    jpeg_start_compress(&cinfo, TRUE);
    while (cinfo.next_scanline < cinfo.image_height) {
        JSAMPROW r = (JSAMPROW)(img->pixels + (size_t)cinfo.next_scanline * img->width * 3);
        jpeg_write_scanlines(&cinfo, &r, 1);
    }
    jpeg_finish_compress(&cinfo);
    /* libjpeg's buffer came from malloc: hand it over as it is */
    *out = mem;
    *len = mem_len;
    mem = NULL;
cleanup:
    jpeg_destroy_compress(&cinfo);
    free(mem);
    return rc;
}
#endif

int isx_encode_have_jpeg(void)
{
#ifdef ISX_HAVE_LIBJPEG
    return 1;
#else
    return 0;
#endif
}

int isx_image_encode(const isx_image *img, isx_thumb_format format, int quality, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (format == ISX_THUMB_PNG)
        return encode_png(img, out, len);
    if (format != ISX_THUMB_JPEG)
        return isx_error(ISX_EINVAL, "format: expected JPEG or PNG, found code %d", (int)format);
    if (quality < 1 || quality > 100)
        return isx_error(ISX_EINVAL, "quality: expected 1..100, found %d", quality);
#ifdef ISX_HAVE_LIBJPEG
    return encode_jpeg(img, quality, out, len);
#else
    return isx_error(ISX_EINVAL, "JPEG encoding needs libjpeg-turbo, which this build of imgsearch did not find "
                                 "(install libjpeg-dev and rebuild); use format=\"png\"");
#endif
}

/* ======================================================================== */
/* Thumbnails                                                                */
/* ======================================================================== */

int isx_image_thumbnail(const isx_image_source *src, size_t max_side, isx_thumb_format format, int quality,
                        uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (max_side < 1 || max_side > ISX_THUMB_MAX_SIDE)
        return isx_error(ISX_EINVAL, "max_side: expected 1..%u, found %zu", ISX_THUMB_MAX_SIDE, max_side);
    isx_decode_opts opts = {0};
    opts.min_side = max_side;
    isx_image img, small = {0};
    int rc = isx_image_from_source(src, &opts, &img);
    if (rc)
        return rc;
    size_t tw, th;
    isx_thumb_geometry(img.width, img.height, max_side, &tw, &th);
    const isx_image *final = &img;
    if (tw != img.width || th != img.height) {
        uint8_t *px = malloc(tw * th * 3);
        if (!px) {
            rc = isx_error(ISX_ENOMEM, "out of memory for a %zu x %zu thumbnail", tw, th);
            goto cleanup;
        }
        small.owned = px;
        small.pixels = px;
        small.width = tw;
        small.height = th;
        if ((rc = isx_image_resize(&img, tw, th, px)) != ISX_OK)
            goto cleanup;
        final = &small;
    }
    rc = isx_image_encode(final, format, quality, out, len);
cleanup:
    isx_image_free(&small);
    isx_image_free(&img);
    return rc;
}

int isx_image_dimensions(const uint8_t *data, size_t len, size_t *w, size_t *h)
{
    int iw, ih, comp, is16;
    if (len == 0 || len > (size_t)0x7FFFFFFF || !isx_stb_info(data, len, &iw, &ih, &comp, &is16) || iw <= 0 ||
        ih <= 0)
        return isx_error(ISX_EFORMAT, "not a recognised image header (JPEG, PNG, GIF, BMP, PSD, PNM) in %zu bytes",
                         len);
    *w = (size_t)iw;
    *h = (size_t)ih;
    return ISX_OK;
}
