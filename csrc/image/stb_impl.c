/*
 * stb_impl.c -- the one translation unit that compiles stb_image (Debian
 * libstb-dev's header, found by setup.py) for the decoders in decode.c.
 *
 * Configuration, and why:
 *   - no stdio: files are read by isx_image_read_file (bounded size, errors
 *     with errno), so stb only ever sees memory;
 *   - no HDR/PIC/linear: 8-bit retrieval pipelines have no use for them, and
 *     every decoder left out is attack surface removed;
 *   - not static, but hidden like every symbol of the core (-fvisibility);
 *   - STBI_MAX_DIMENSIONS bounds a side even before our own pixel limit, so a
 *     lying header cannot make stb allocate first;
 *   - the failure reason is thread-local (stb uses _Thread_local under C11),
 *     which the batch loader relies on: many threads decode at once;
 *   - pixels are loaded through stb's callback interface over our buffer,
 *     not stbi_load_from_memory: at the end of its input stb silently reads
 *     zeros, so a truncated BMP, GIF, PNM, PSD or TGA would "decode" with a
 *     black tail.  The callbacks see stb ask for bytes past the end, and
 *     the image is then reported as truncated.  (stb's format probes read at
 *     most the 8-byte PNG signature, so a valid file never trips this.  A
 *     raw PNM/TGA cut exactly where stb asks for STB_BUFLEN more bytes is
 *     the one truncation this cannot see.)
 * stb is third-party code compiled with our warnings: they are silenced here
 * only, rather than weakening the flags for the whole core.
 */
#include <string.h>

#include "image.h"

#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO
#define STBI_NO_HDR
#define STBI_NO_LINEAR
#define STBI_NO_PIC
#define STBI_MAX_DIMENSIONS ISX_IMAGE_MAX_SIDE
#define STBI_ASSERT(x) ((void)0)

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wmisleading-indentation"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wtype-limits"
#endif
#include <stb/stb_image.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#include "stb_wrap.h"

int isx_stb_info(const uint8_t *data, size_t len, int *w, int *h, int *comp, int *is16)
{
    if (!stbi_info_from_memory(data, (int)len, w, h, comp))
        return 0;
    *is16 = stbi_is_16_bit_from_memory(data, (int)len);
    return 1;
}

#define STB_BUFLEN 128 /* sizeof(stbi__context.buffer_start): stb's refill size */

typedef struct {
    const uint8_t *data;
    size_t len, pos;
    int overrun; /* stb wanted bytes past the end */
} mem_reader;

static int reader_read(void *user, char *out, int size)
{
    mem_reader *r = user;
    size_t left = r->len - r->pos, n = size > 0 ? (size_t)size : 0;
    if (left == 0) {
        r->overrun = 1;
        return 0;
    }
    if (n > left) {
        /* A short answer ends a refill of stb's STB_BUFLEN-byte buffer
         * normally (stb comes back, and trips the test above, only if it
         * needs more); any other request is stbi__getn wanting exactly n
         * bytes of pixels, which it does not check (PNM, raw TGA). */
        if (n != STB_BUFLEN)
            r->overrun = 1;
        n = left;
    }
    memcpy(out, r->data + r->pos, n);
    r->pos += n;
    return (int)n;
}

static void reader_skip(void *user, int n)
{
    mem_reader *r = user;
    if (n <= 0)
        return;
    if ((size_t)n > r->len - r->pos) {
        r->overrun = 1;
        r->pos = r->len;
    } else {
        r->pos += (size_t)n;
    }
}

static int reader_eof(void *user)
{
    mem_reader *r = user;
    return r->pos >= r->len;
}

uint8_t *isx_stb_load(const uint8_t *data, size_t len, int channels, int *w, int *h, int *truncated)
{
    static const stbi_io_callbacks io = {reader_read, reader_skip, reader_eof};
    mem_reader r = {data, len, 0, 0};
    int comp;
    uint8_t *px = stbi_load_from_callbacks(&io, &r, w, h, &comp, channels);
    *truncated = r.overrun;
    return px;
}

const char *isx_stb_failure(void)
{
    const char *r = stbi_failure_reason();
    return r ? r : "unknown error";
}

void isx_stb_free(void *p)
{
    stbi_image_free(p);
}
