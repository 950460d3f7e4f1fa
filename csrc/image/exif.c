/*
 * exif.c -- the EXIF orientation tag of a JPEG or WebP, and applying it.
 *
 * stb_image and libjpeg ignore EXIF, and so do the Pillow pipelines of our
 * peers unless they call ImageOps.exif_transpose: a phone photo taken in
 * portrait then comes out lying on its side.  We read one tag, Orientation
 * (0x0112) of IFD0, so a full EXIF library would be mostly attack surface.
 *
 * The parser walks the JPEG's marker segments up to the first scan, finds
 * APP1 "Exif\0\0" (or a WebP's RIFF chunks, to its EXIF chunk), and reads
 * the TIFF header and IFD0 in either byte order.  Every offset and count is
 * checked against the segment before it is followed; the walk is bounded
 * (ISX_EXIF_MAX_SEGMENTS).  Anything odd yields
 * orientation 1: a broken EXIF block never makes a good image fail.
 *
 * Orientation values (TIFF 6.0 / EXIF 2.3) and the transform that undoes
 * each, written as "output pixel (row y, column x) reads input (r, c)" for
 * an input of H rows and W columns:
 *   1 identity             5 transpose:   r = x,         c = y
 *   2 mirror:  r = y,  c = W-1-x          6 rotate 90 CW: r = H-1-x,    c = y
 *   3 rot 180: r = H-1-y, c = W-1-x       7 transverse:  r = H-1-x,     c = W-1-y
 *   4 flip:    r = H-1-y, c = x           8 rotate 90 CCW: r = x,       c = W-1-y
 * which is what Pillow's ImageOps.exif_transpose does.
 */
#include <stdlib.h>
#include <string.h>

#include "image.h"

#define ISX_EXIF_MAX_SEGMENTS 1024 /* markers before the scan: real files have < 20 */
#define ISX_EXIF_MAX_ENTRIES 1024  /* IFD0 entries looked at (real IFD0s have < 100) */

static unsigned rd16(const uint8_t *p, int big)
{
    return big ? (unsigned)p[0] << 8 | p[1] : (unsigned)p[1] << 8 | p[0];
}

static uint32_t rd32(const uint8_t *p, int big)
{
    return big ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]
               : (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

/* The orientation in a TIFF structure of `len` bytes, or 1. */
static int tiff_orientation(const uint8_t *t, size_t len)
{
    if (len < 8)
        return 1;
    int big;
    if (t[0] == 'I' && t[1] == 'I')
        big = 0;
    else if (t[0] == 'M' && t[1] == 'M')
        big = 1;
    else
        return 1;
    if (rd16(t + 2, big) != 42)
        return 1;
    uint32_t ifd = rd32(t + 4, big);
    if (ifd > len || len - ifd < 2)
        return 1;
    unsigned count = rd16(t + ifd, big);
    if (count > ISX_EXIF_MAX_ENTRIES)
        count = ISX_EXIF_MAX_ENTRIES;
    size_t avail = (len - ifd - 2) / 12;
    if (count > avail)
        count = (unsigned)avail;
    for (unsigned i = 0; i < count; i++) {
        const uint8_t *e = t + ifd + 2 + 12 * (size_t)i;
        if (rd16(e, big) != 0x0112)
            continue;
        unsigned type = rd16(e + 2, big);
        uint32_t n = rd32(e + 4, big);
        unsigned v;
        if (type == 3 && n >= 1) /* SHORT, stored in the first 2 bytes of the value field */
            v = rd16(e + 8, big);
        else if (type == 4 && n >= 1) /* LONG: not per the standard, but seen in the wild */
            v = rd32(e + 8, big) > 8 ? 0 : (unsigned)rd32(e + 8, big);
        else
            return 1;
        return v >= 1 && v <= 8 ? (int)v : 1;
    }
    return 1;
}

static int jpeg_orientation(const uint8_t *d, size_t len)
{
    size_t pos = 2;
    for (int seg = 0; seg < ISX_EXIF_MAX_SEGMENTS; seg++) {
        while (pos < len && d[pos] == 0xFF && pos + 1 < len && d[pos + 1] == 0xFF)
            pos++; /* fill bytes */
        if (pos + 4 > len || d[pos] != 0xFF)
            return 1;
        unsigned marker = d[pos + 1];
        if (marker == 0xDA || marker == 0xD9) /* start of scan / end of image: no EXIF before it */
            return 1;
        if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) { /* standalone markers */
            pos += 2;
            continue;
        }
        size_t seglen = (size_t)d[pos + 2] << 8 | d[pos + 3];
        if (seglen < 2 || seglen > len - pos - 2)
            return 1;
        if (marker == 0xE1 && seglen >= 2 + 6 + 8 && memcmp(d + pos + 4, "Exif\0\0", 6) == 0)
            return tiff_orientation(d + pos + 10, seglen - 8);
        pos += 2 + seglen;
    }
    return 1;
}

/* A WebP file is a RIFF container: "RIFF", u32 size, "WEBP", then chunks of
 * {fourcc, u32 little-endian size, payload padded to an even length}.  The
 * EXIF chunk holds the TIFF structure (some writers keep JPEG's "Exif\0\0"
 * in front of it). */
static int webp_orientation(const uint8_t *d, size_t len)
{
    size_t pos = 12;
    for (int chunk = 0; chunk < ISX_EXIF_MAX_SEGMENTS && len - pos >= 8; chunk++) {
        size_t size = rd32(d + pos + 4, 0);
        if (size > len - pos - 8)
            return 1;
        const uint8_t *payload = d + pos + 8;
        if (memcmp(d + pos, "EXIF", 4) == 0) {
            if (size >= 6 && memcmp(payload, "Exif\0\0", 6) == 0)
                return tiff_orientation(payload + 6, size - 6);
            return tiff_orientation(payload, size);
        }
        pos += 8 + size + (size & 1);
        if (pos > len)
            return 1;
    }
    return 1;
}

int isx_exif_orientation(const uint8_t *d, size_t len)
{
    if (len >= 4 && d[0] == 0xFF && d[1] == 0xD8)
        return jpeg_orientation(d, len);
    if (len >= 12 && memcmp(d, "RIFF", 4) == 0 && memcmp(d + 8, "WEBP", 4) == 0)
        return webp_orientation(d, len);
    return 1;
}

int isx_image_orient(isx_image *img, int orientation)
{
    if (orientation < 2 || orientation > 8)
        return ISX_OK;
    size_t W = img->width, H = img->height;
    int swap = orientation >= 5;
    size_t ow = swap ? H : W, oh = swap ? W : H;
    uint8_t *out = malloc(W * H * 3);
    if (!out)
        return isx_error(ISX_ENOMEM, "out of memory rotating a %zu x %zu image", W, H);
    /* input pixel index = base + y * dy + x * dx, in pixels (signed) */
    ptrdiff_t w = (ptrdiff_t)W, h = (ptrdiff_t)H, base = 0, dx = 1, dy = w;
    switch (orientation) {
    case 2: base = w - 1;               dx = -1; dy = w;  break;
    case 3: base = (h - 1) * w + w - 1; dx = -1; dy = -w; break;
    case 4: base = (h - 1) * w;         dx = 1;  dy = -w; break;
    case 5: base = 0;                   dx = w;  dy = 1;  break;
    case 6: base = (h - 1) * w;         dx = -w; dy = 1;  break;
    case 7: base = (h - 1) * w + w - 1; dx = -w; dy = -1; break;
    case 8: base = w - 1;               dx = w;  dy = -1; break;
    }
    const uint8_t *in = img->pixels;
    for (size_t y = 0; y < oh; y++) {
        ptrdiff_t idx = base + (ptrdiff_t)y * dy;
        uint8_t *dst = out + 3 * y * ow;
        for (size_t x = 0; x < ow; x++, idx += dx) {
            const uint8_t *src = in + 3 * idx;
            dst[3 * x] = src[0];
            dst[3 * x + 1] = src[1];
            dst[3 * x + 2] = src[2];
        }
    }
    free(img->owned);
    img->owned = out;
    img->pixels = out;
    img->width = ow;
    img->height = oh;
    return ISX_OK;
}
