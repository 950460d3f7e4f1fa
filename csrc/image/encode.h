/*
 * encode.h -- thumbnails without Pillow: decode, shrink and encode one image
 * to JPEG (libjpeg-turbo, when the build found it) or PNG (always).
 *
 * The notebook grid, `imgsearch search --html` and the HTTP service embed
 * small pictures of their hits; these functions make them from the same
 * hostile-input decoder and area-averaging resize as the rest of the
 * pipeline, so no optional Python package is needed to see results.
 */
#ifndef ISX_ENCODE_H
#define ISX_ENCODE_H

#include <stddef.h>
#include <stdint.h>

#include "image.h"

typedef enum {
    ISX_THUMB_JPEG = 1, /* needs ISX_HAVE_LIBJPEG; ISX_EINVAL otherwise */
    ISX_THUMB_PNG = 2,  /* stored (uncompressed) deflate: no zlib needed */
} isx_thumb_format;

/* Longest side of a thumbnail; larger requests are refused (a thumbnail is
 * for a grid, and 1024^2 x 3 bytes bounds the work one request can ask). */
#define ISX_THUMB_MAX_SIDE 1024u
/* PNG IDAT payload per stored deflate block: deflate's limit for one block. */
#define ISX_PNG_STORED_BLOCK 65535u

/* 1 when this build can encode JPEG. */
int isx_encode_have_jpeg(void);

/* Encode an RGB image; *out is malloc'd (the caller frees it), *len its size.
 * quality: 1..100 (JPEG only). */
int isx_image_encode(const isx_image *img, isx_thumb_format format, int quality, uint8_t **out, size_t *len);

/* The size of a thumbnail of a w x h image: the longer side becomes
 * max_side, the other keeps the aspect ratio (rounded, at least 1); an image
 * that already fits is kept at its size (never enlarged, as Pillow's
 * Image.thumbnail). */
void isx_thumb_geometry(size_t w, size_t h, size_t max_side, size_t *tw, size_t *th);

/* Decode a source, shrink it to fit max_side x max_side and encode it. */
int isx_image_thumbnail(const isx_image_source *src, size_t max_side, isx_thumb_format format, int quality,
                        uint8_t **out, size_t *len);

/* Width and height from an encoded image's header, without decoding pixels
 * (for callers that cap uploads below the decoder's own limits). */
int isx_image_dimensions(const uint8_t *data, size_t len, size_t *w, size_t *h);

#endif
