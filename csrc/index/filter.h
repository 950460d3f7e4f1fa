/*
 * filter.h -- which ids a search may return, as the caller gave it.
 *
 * Either a boolean mask indexed by id (id i is allowed iff mask[i] != 0) or
 * a list of allowed ids (ids not in the index are ignored).  Each index turns
 * this into whatever it can test fastest during its walk (a bitmap over its
 * own slots for the flat index).
 *
 * A mask must have an entry for every id the index holds: one that stops
 * short would silently exclude every id past its end, so each index checks
 * it against its largest live id (isx_filter_check_mask) while it reads the
 * mask, under its lock, and refuses it otherwise.
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

/* ISX_OK when flt is not a mask or covers max_id (the index's largest live
 * id, -1 when empty); else ISX_EINVAL saying what length was needed. */
int isx_filter_check_mask(const isx_filter *flt, int64_t max_id);

#endif
