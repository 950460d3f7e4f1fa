/*
 * filter.c -- the one rule every index applies to a boolean mask: it covers
 * every id in the index, or the search is refused (filter.h says why).
 */
#include "filter.h"

int isx_filter_check_mask(const isx_filter *flt, int64_t max_id)
{
    if (!flt || !flt->mask || max_id < 0 || (uint64_t)max_id < flt->mask_len)
        return ISX_OK;
    long long need = (long long)max_id + 1;
    return isx_error(ISX_EINVAL,
                     "filter: a boolean mask needs an entry for every id in the index: expected length >= %lld "
                     "(the largest id is %lld), found length %zu; extend it with False "
                     "(numpy.pad(mask, (0, %lld - len(mask)))) or pass the allowed ids (numpy.flatnonzero(mask))",
                     need, (long long)max_id, flt->mask_len, need);
}
