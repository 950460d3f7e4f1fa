/*
 * filter.h -- which ids a search may return, as the caller gave it.
 *
 * Either a boolean mask indexed by id (id i is allowed iff i < mask_len and
 * mask[i] != 0) or a list of allowed ids (ids not in the index are ignored).
 * Each index turns this into whatever it can test fastest during its walk
 * (a bitmap over its own slots for the flat index).
 */
#ifndef ISX_FILTER_H
#define ISX_FILTER_H

#include "../common/isx.h"

typedef struct {
    const uint8_t *mask;
    size_t mask_len;
    const int64_t *ids;
    size_t n_ids;
} isx_filter;

#endif
