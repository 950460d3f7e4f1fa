/*
 * stb_wrap.h -- the four stb_image calls decode.c needs, behind our own
 * names, so that stb's implementation lives in one file (stb_impl.c).
 * `len` must be <= INT_MAX (checked by the caller).
 */
#ifndef ISX_STB_WRAP_H
#define ISX_STB_WRAP_H

#include <stddef.h>
#include <stdint.h>

int isx_stb_info(const uint8_t *data, size_t len, int *w, int *h, int *comp, int *is16);
/* *truncated: stb needed bytes past the end of the data (it pads with zeros). */
uint8_t *isx_stb_load(const uint8_t *data, size_t len, int channels, int *w, int *h, int *truncated);
const char *isx_stb_failure(void);
void isx_stb_free(void *p);

#endif
