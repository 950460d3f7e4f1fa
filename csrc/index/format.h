/*
 * format.h -- the one file format every imgsearch index is saved in.
 *
 * Layout (all integers little-endian; docs/FORMAT.md is the reference):
 *
 *   header   64 bytes   magic, version, byte-order mark, kind, metric, dtype,
 *                       section count, dim, count, file size, header CRC
 *   table    32 bytes per section: tag, flags, offset, size, CRC-32C
 *   sections each starts at a multiple of 64 bytes (so float data can be
 *            memory-mapped and used in place), zero padding between them.
 *
 * The header CRC covers the header (with its CRC field zeroed) and the
 * section table, so a flipped bit anywhere is caught before any size read
 * from the file is trusted.  Readers treat the file as hostile: every size is
 * checked against the real file size before anything is allocated.
 *
 * Writing goes to a temporary file in the same directory, which is fsynced
 * and renamed over the target, and the directory fsynced: a crash mid-save
 * leaves the previous file intact.
 */
#ifndef ISX_FORMAT_H
#define ISX_FORMAT_H

#include "../common/isx.h"

#define ISX_FORMAT_MAGIC "\x89ISX\r\n\x1a\n"   /* 8 bytes, PNG-style */
#define ISX_FORMAT_VERSION_MAJOR 1
#define ISX_FORMAT_VERSION_MINOR 0
#define ISX_FORMAT_HEADER_SIZE 64
#define ISX_FORMAT_ENTRY_SIZE 32
#define ISX_FORMAT_SECTION_ALIGN 64
#define ISX_FORMAT_MAX_SECTIONS 64        /* bounds the table a header can claim */

/* Index kinds (values are on disk: never renumber). */
typedef enum {
    ISX_KIND_FLAT = 1,
    ISX_KIND_KDTREE = 2,
    ISX_KIND_HNSW = 3,
    ISX_KIND_IVFPQ = 4,
} isx_index_kind;
#define ISX_KIND_MAX 4

/* Four-character section tags, stored as a little-endian uint32. */
#define ISX_TAG(a, b, c, d) \
    ((uint32_t)(uint8_t)(a) | ((uint32_t)(uint8_t)(b) << 8) | ((uint32_t)(uint8_t)(c) << 16) | ((uint32_t)(uint8_t)(d) << 24))
#define ISX_SEC_PARAMS ISX_TAG('P', 'A', 'R', 'M')  /* index parameters */
#define ISX_SEC_VECTORS ISX_TAG('V', 'E', 'C', 'S') /* count x dim elements */
#define ISX_SEC_IDS ISX_TAG('I', 'D', 'S', ' ')     /* count int64 ids */
#define ISX_SEC_META ISX_TAG('M', 'E', 'T', 'A')    /* opaque user bytes (engine) */

typedef struct {
    uint32_t kind;    /* isx_index_kind */
    uint32_t metric;  /* isx_metric */
    uint32_t dtype;   /* isx_dtype */
    uint64_t dim;
    uint64_t count;
    uint16_t version_major, version_minor; /* filled by the reader */
} isx_header;

typedef struct {
    const void *data;
    uint64_t size;
} isx_span;

/* A section to write: `size` bytes at `data`, or -- when parts is not NULL --
 * the nparts spans one after the other (their sizes add up to `size`), so an
 * index whose data lies in many blocks (IVF-PQ's lists) writes them without
 * first copying them into one. */
typedef struct {
    uint32_t tag;
    const void *data;
    uint64_t size;
    const isx_span *parts;
    size_t nparts;
} isx_section_out;

typedef struct {
    uint32_t tag;
    uint32_t flags;
    uint64_t offset;
    uint64_t size;
    uint32_t crc;
    const uint8_t *data; /* points into the file's bytes (mapped or read) */
} isx_section_in;

/* A file being read: its bytes stay alive (read into memory or mapped
 * read-only) until isx_format_close, and the index may keep pointers into
 * them (the vectors of an mmap-loaded index point into the mapping). */
typedef struct {
    isx_header header;
    uint32_t nsections;
    isx_section_in sections[ISX_FORMAT_MAX_SECTIONS];
    const uint8_t *bytes;
    size_t size;
    int mapped;       /* 1: munmap at close; 0: free at close (if owned) */
    int owned;        /* 0: borrowed memory (isx_format_open_memory), not freed */
} isx_file;

/* CRC-32C (Castagnoli), hardware-accelerated with SSE4.2 where present. */
uint32_t isx_crc32c(uint32_t crc, const void *data, size_t n);

/* Save atomically to `path`. */
int isx_format_write_file(const char *path, const isx_header *h,
                          const isx_section_out *secs, uint32_t nsecs);
/* Serialise into one malloc'd buffer (for pickling): *out is freed with free(). */
int isx_format_write_memory(const isx_header *h, const isx_section_out *secs,
                            uint32_t nsecs, uint8_t **out, size_t *out_size);

/* Open and fully validate (header, table, every section's CRC).  With
 * use_mmap the file is mapped read-only instead of read into memory. */
int isx_format_open_file(const char *path, int use_mmap, isx_file *f);
/* Validate a buffer the caller owns and keeps alive while f is used. */
int isx_format_open_memory(const void *buf, size_t size, isx_file *f);
void isx_format_close(isx_file *f);

/* The section with this tag, or NULL. */
const isx_section_in *isx_format_find(const isx_file *f, uint32_t tag);
/* The section with this tag whose size is exactly `size`, else
 * ISX_EFORMAT naming the section and the sizes expected and found. */
int isx_format_require(const isx_file *f, uint32_t tag, uint64_t size, const isx_section_in **out);

/* A small key/value parameter block, the PARM section: a sequence of
 * entries {uint32 key_len, key bytes, uint32 type (1 = int64, 2 = float64),
 * 8 value bytes}.  Unknown keys are ignored by readers (forward compatible). */
typedef struct {
    char key[32];
    uint32_t type;
    union { int64_t i; double f; } v;
} isx_param;
#define ISX_PARAM_INT 1
#define ISX_PARAM_FLOAT 2
#define ISX_MAX_PARAMS 64
int isx_params_encode(const isx_param *p, uint32_t n, uint8_t *buf, size_t cap, size_t *used);
int isx_params_decode(const uint8_t *buf, size_t size, isx_param *p, uint32_t cap, uint32_t *n);
/* Look up a parameter; ISX_EFORMAT if missing or of another type. */
int isx_params_get_int(const isx_param *p, uint32_t n, const char *key, int64_t *out);
int isx_params_get_float(const isx_param *p, uint32_t n, const char *key, double *out);

#endif
