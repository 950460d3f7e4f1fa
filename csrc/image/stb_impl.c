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
 *     which the batch loader relies on: many threads decode at once.
 * stb is third-party code compiled with our warnings: they are silenced here
 * only, rather than weakening the flags for the whole core.
 */
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

uint8_t *isx_stb_load(const uint8_t *data, size_t len, int channels, int *w, int *h)
{
    int comp;
    return stbi_load_from_memory(data, (int)len, w, h, &comp, channels);
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
