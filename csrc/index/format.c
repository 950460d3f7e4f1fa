/*
 * format.c -- the imgsearch index file: CRC-32C, atomic writer, hostile-input
 * reader, and the PARM key/value block.  docs/FORMAT.md is the reference.
 *
 * Integers are stored and loaded one byte at a time through the le*()
 * helpers, never by overlaying a struct: the layout is then the same on every
 * compiler and host byte order, and there is no padding or aliasing to get
 * wrong.  (Compilers turn the byte loops into single moves.)
 *
 * Reading trusts nothing until it has been checked, in an order where each
 * check only relies on what came before: size >= header, magic, byte order,
 * major version, section count bound, table inside the file, header CRC
 * (which also covers the table), declared size == real size, header values,
 * then each table entry (alignment, bounds without overflow, overlap,
 * duplicates), the zero padding, and finally each section's CRC.  Nothing is
 * allocated from a header field: the only allocation is the file's real size.
 * Because the header CRC, section CRCs and the zero-padding check between
 * them cover every byte of a file, any single flipped bit is refused.
 *
 * CRC-32C speed matters because a load checks every byte of sections that run
 * to hundreds of MB: the kernels (SSE4.2 three-way, or slicing-by-8) are in
 * simd/crc32c.c, behind the kernel table like every CPU-specific routine.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../simd/simd.h"
#include "format.h"


#define HDR ISX_FORMAT_HEADER_SIZE
#define ENT ISX_FORMAT_ENTRY_SIZE
#define ALIGN ISX_FORMAT_SECTION_ALIGN
#define BOM 0x01020304u
#define BOM_SWAPPED 0x04030201u
#define DTYPE_MAX 4
#define IO_CHUNK ((size_t)1 << 30) /* below Linux's 0x7ffff000 cap per read/write */

/* ======================================================================
 * Little-endian byte helpers
 * ====================================================================== */

static uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t le64(const uint8_t *p)
{
    return (uint64_t)le32(p) | ((uint64_t)le32(p + 4) << 32);
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* A tag for messages: its four characters when printable, else hex (a
 * hostile file chooses the bytes, and messages must stay readable). */
static const char *tag_str(uint32_t tag, char out[16])
{
    for (int i = 0; i < 4; i++) {
        uint8_t c = (uint8_t)(tag >> (8 * i));
        if (c < 0x20 || c > 0x7e || c == '\'') {
            snprintf(out, 16, "0x%08x", (unsigned)tag);
            return out;
        }
        out[i] = (char)c;
    }
    out[4] = '\0';
    return out;
}

/* CRC-32C comes from the kernel table (simd/crc32c.c): SSE4.2 or portable. */
uint32_t isx_crc32c(uint32_t crc, const void *data, size_t n)
{
    return n ? isx_kernels_active()->crc32c(crc, data, n) : crc;
}

/* A section's bytes as spans: its parts, or the one span at data. */
static const isx_span *section_spans(const isx_section_out *s, isx_span *one, size_t *n)
{
    if (s->parts) {
        *n = s->nparts;
        return s->parts;
    }
    one->data = s->data;
    one->size = s->size;
    *n = s->size ? 1 : 0;
    return one;
}
/* The header CRC: bytes 0..59, four zero bytes for the CRC field, the table. */
static uint32_t header_crc(const uint8_t *bytes, uint32_t nsec)
{
    static const uint8_t zero4[4] = {0};
    uint32_t crc = isx_crc32c(0, bytes, 60);
    crc = isx_crc32c(crc, zero4, 4);
    return isx_crc32c(crc, bytes + HDR, (size_t)nsec * ENT);
}

/* ======================================================================
 * Writer
 * ====================================================================== */

/* Everything a writer needs before the first byte goes out: the encoded
 * header and table, each section's offset, and the total size. */
typedef struct {
    uint8_t head[HDR + ISX_FORMAT_MAX_SECTIONS * ENT];
    size_t head_size;
    uint64_t offset[ISX_FORMAT_MAX_SECTIONS];
    uint64_t file_size;
} plan;

static uint64_t align_up(uint64_t x)
{
    return (x + (ALIGN - 1)) & ~(uint64_t)(ALIGN - 1);
}

/* Refuse anything the reader would refuse, so that a save can never produce
 * a file that does not load. */
static int make_plan(const isx_header *h, const isx_section_out *secs, uint32_t nsecs, plan *pl)
{
    char t1[16];
    if (!h)
        return isx_error(ISX_EINVAL, "index header is missing");
    if (nsecs > ISX_FORMAT_MAX_SECTIONS)
        return isx_error(ISX_EINVAL, "%u sections, more than the %d a file can hold", nsecs, ISX_FORMAT_MAX_SECTIONS);
    if (nsecs && !secs)
        return isx_error(ISX_EINVAL, "%u sections but no section array", nsecs);
    if (h->kind < 1 || h->kind > ISX_KIND_MAX)
        return isx_error(ISX_EINVAL, "unknown index kind %u", h->kind);
    if (h->metric < 1 || h->metric > ISX_METRIC_MAX)
        return isx_error(ISX_EINVAL, "unknown metric %u", h->metric);
    if (h->dtype < 1 || h->dtype > DTYPE_MAX)
        return isx_error(ISX_EINVAL, "unknown dtype %u", h->dtype);
    if (h->dim < 1 || h->dim > ISX_MAX_DIM)
        return isx_error(ISX_EINVAL, "expected 1 <= dim <= %u, found dim=%llu", ISX_MAX_DIM, (unsigned long long)h->dim);
    if (h->count > ISX_MAX_COUNT)
        return isx_error(ISX_EINVAL, "count %llu is above the limit of %llu", (unsigned long long)h->count,
                         (unsigned long long)ISX_MAX_COUNT);

    uint64_t pos = HDR + (uint64_t)nsecs * ENT;
    pl->head_size = (size_t)pos;
    memset(pl->head, 0, pl->head_size);
    for (uint32_t i = 0; i < nsecs; i++) {
        const isx_section_out *s = &secs[i];
        if (s->size && !s->data && !s->parts)
            return isx_error(ISX_EINVAL, "section '%s' has %llu bytes but no data", tag_str(s->tag, t1),
                             (unsigned long long)s->size);
        isx_span one;
        size_t nsp;
        const isx_span *sp = section_spans(s, &one, &nsp);
        uint64_t total = 0;
        uint32_t crc = 0;
        for (size_t k = 0; k < nsp; k++) {
            if (sp[k].size && !sp[k].data)
                return isx_error(ISX_EINVAL, "section '%s': part %zu has no data", tag_str(s->tag, t1), k);
            total += sp[k].size;
            crc = isx_crc32c(crc, sp[k].data, (size_t)sp[k].size);
        }
        if (total != s->size)
            return isx_error(ISX_EINVAL, "section '%s': its parts hold %llu bytes, not %llu", tag_str(s->tag, t1),
                             (unsigned long long)total, (unsigned long long)s->size);
        for (uint32_t j = 0; j < i; j++)
            if (secs[j].tag == s->tag)
                return isx_error(ISX_EINVAL, "section '%s' is given twice", tag_str(s->tag, t1));
        uint64_t off = align_up(pos);
        if (s->size > (uint64_t)SIZE_MAX - off)
            return isx_error(ISX_EINVAL, "section '%s' of %llu bytes makes the file too large", tag_str(s->tag, t1),
                             (unsigned long long)s->size);
        pl->offset[i] = off;
        pos = off + s->size;
        uint8_t *e = pl->head + HDR + (size_t)i * ENT;
        put32(e, s->tag);
        put32(e + 4, 0);
        put64(e + 8, off);
        put64(e + 16, s->size);
        put32(e + 24, crc);
        put32(e + 28, 0);
    }
    pl->file_size = pos;

    uint8_t *b = pl->head;
    memcpy(b, ISX_FORMAT_MAGIC, 8);
    put16(b + 8, ISX_FORMAT_VERSION_MAJOR);
    put16(b + 10, ISX_FORMAT_VERSION_MINOR);
    put32(b + 12, BOM);
    put32(b + 16, h->kind);
    put32(b + 20, h->metric);
    put32(b + 24, h->dtype);
    put32(b + 28, nsecs);
    put64(b + 32, h->dim);
    put64(b + 40, h->count);
    put64(b + 48, pl->file_size);
    put32(b + 56, 0);
    put32(b + 60, header_crc(b, nsecs));
    return ISX_OK;
}

int isx_format_write_memory(const isx_header *h, const isx_section_out *secs, uint32_t nsecs, uint8_t **out,
                            size_t *out_size)
{
    plan *pl = NULL;
    uint8_t *buf = NULL;
    int rc;
    if (!out || !out_size)
        return isx_error(ISX_EINVAL, "no output buffer given");
    *out = NULL;
    *out_size = 0;
    pl = malloc(sizeof(*pl));
    if (!pl) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate a save plan");
        goto cleanup;
    }
    if ((rc = make_plan(h, secs, nsecs, pl)))
        goto cleanup;
    buf = malloc((size_t)pl->file_size);
    if (!buf) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate %llu bytes for the serialised index",
                       (unsigned long long)pl->file_size);
        goto cleanup;
    }
    memcpy(buf, pl->head, pl->head_size);
    size_t pos = pl->head_size;
    for (uint32_t i = 0; i < nsecs; i++) {
        memset(buf + pos, 0, (size_t)pl->offset[i] - pos);
        pos = (size_t)pl->offset[i];
        isx_span one;
        size_t nsp;
        const isx_span *sp = section_spans(&secs[i], &one, &nsp);
        for (size_t k = 0; k < nsp; k++) {
            if (sp[k].size)
                memcpy(buf + pos, sp[k].data, (size_t)sp[k].size);
            pos += (size_t)sp[k].size;
        }
    }
    *out = buf;
    *out_size = (size_t)pl->file_size;
    buf = NULL;
    rc = ISX_OK;
cleanup:
    free(buf);
    free(pl);
    return rc;
}

/* write() until done: it may write less than asked, or be interrupted. */
static int write_all(int fd, const void *data, size_t n)
{
    const uint8_t *p = data;
    while (n) {
        ssize_t w = write(fd, p, n < IO_CHUNK ? n : IO_CHUNK);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (w == 0) { /* should not happen for regular files; avoid spinning */
            errno = EIO;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The permission bits the file would have had from a plain open(0666):
 * mkstemp makes it 0600, which would silently make a saved index unreadable
 * to other users.  umask() cannot be read without setting it (a race with
 * other threads), so it comes from /proc; if that fails the file keeps 0600,
 * the safe side.  An existing target keeps its own mode. */
static int wanted_mode(const char *path, mode_t *mode)
{
    struct stat st;
    if (stat(path, &st) == 0) {
        *mode = st.st_mode & 07777;
        return 1;
    }
    int ok = 0;
    FILE *fp = fopen("/proc/self/status", "re");
    if (fp) {
        char line[256];
        unsigned mask;
        while (fgets(line, sizeof(line), fp)) {
            if (sscanf(line, "Umask: %o", &mask) == 1) {
                *mode = 0666 & ~(mode_t)mask;
                ok = 1;
                break;
            }
        }
        fclose(fp);
    }
    return ok;
}

/* fsync the directory holding path, so that the rename itself is durable. */
static int sync_dir(const char *path)
{
    int rc = ISX_OK, fd = -1;
    const char *slash = strrchr(path, '/');
    char *dir = NULL;
    if (!slash) {
        dir = strdup(".");
    } else {
        size_t len = slash == path ? 1 : (size_t)(slash - path); /* "/x" -> "/" */
        dir = malloc(len + 1);
        if (dir) {
            memcpy(dir, path, len);
            dir[len] = '\0';
        }
    }
    if (!dir) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate a directory name");
        goto cleanup;
    }
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        rc = isx_error_errno(errno, "saved '%s' but cannot open its directory to sync it", path);
        goto cleanup;
    }
    /* Some file systems cannot sync a directory and say so with EINVAL: the
     * rename is as durable there as it can be made. */
    if (fsync(fd) != 0 && errno != EINVAL && errno != ENOTSUP && errno != EOPNOTSUPP)
        rc = isx_error_errno(errno, "saved '%s' but cannot sync its directory", path);
cleanup:
    if (fd >= 0)
        close(fd);
    free(dir);
    return rc;
}

int isx_format_write_file(const char *path, const isx_header *h, const isx_section_out *secs, uint32_t nsecs)
{
    static const uint8_t zeros[ALIGN] = {0};
    plan *pl = NULL;
    char *tmp = NULL;
    int fd = -1, created = 0, rc;
    if (!path || !*path)
        return isx_error(ISX_EINVAL, "index file path is empty");
    pl = malloc(sizeof(*pl));
    if (!pl) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate a save plan");
        goto cleanup;
    }
    if ((rc = make_plan(h, secs, nsecs, pl)))
        goto cleanup;
    size_t len = strlen(path);
    tmp = malloc(len + sizeof(".tmp.XXXXXX"));
    if (!tmp) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate a temporary file name");
        goto cleanup;
    }
    memcpy(tmp, path, len);
    memcpy(tmp + len, ".tmp.XXXXXX", sizeof(".tmp.XXXXXX"));
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        rc = isx_error_errno(errno, "cannot create a temporary file to save '%s'", path);
        goto cleanup;
    }
    created = 1;
    mode_t mode;
    if (wanted_mode(path, &mode))
        (void)fchmod(fd, mode); /* best effort: some file systems have no modes */

    if (write_all(fd, pl->head, pl->head_size)) {
        rc = isx_error_errno(errno, "cannot write index file '%s'", path);
        goto cleanup;
    }
    uint64_t pos = pl->head_size;
    for (uint32_t i = 0; i < nsecs; i++) {
        isx_span one;
        size_t nsp;
        const isx_span *sp = section_spans(&secs[i], &one, &nsp);
        int bad = write_all(fd, zeros, (size_t)(pl->offset[i] - pos)) != 0;
        for (size_t k = 0; !bad && k < nsp; k++)
            bad = sp[k].size && write_all(fd, sp[k].data, (size_t)sp[k].size);
        if (bad) {
            rc = isx_error_errno(errno, "cannot write index file '%s'", path);
            goto cleanup;
        }
        pos = pl->offset[i] + secs[i].size;
    }
    if (fsync(fd) != 0) {
        rc = isx_error_errno(errno, "cannot sync index file '%s' to disk", path);
        goto cleanup;
    }
    int cfd = fd;
    fd = -1;
    if (close(cfd) != 0) { /* NFS reports write errors here */
        rc = isx_error_errno(errno, "cannot write index file '%s'", path);
        goto cleanup;
    }
    if (rename(tmp, path) != 0) {
        rc = isx_error_errno(errno, "cannot replace '%s' with the saved index", path);
        goto cleanup;
    }
    created = 0;
    rc = sync_dir(path);
cleanup:
    if (fd >= 0)
        close(fd);
    if (created)
        unlink(tmp);
    free(tmp);
    free(pl);
    return rc;
}

/* ======================================================================
 * Reader
 * ====================================================================== */

#define FAIL(...)                                   \
    do {                                            \
        rc = isx_error(ISX_EFORMAT, __VA_ARGS__);   \
        goto cleanup;                               \
    } while (0)

/* Check bytes[0, size) as an index file and fill f's header and sections.
 * `name` starts every message ("index file '/x/y.isx'"). */
static int validate(const uint8_t *b, size_t size, const char *name, isx_file *f)
{
    char t1[16], t2[16];
    uint32_t order[ISX_FORMAT_MAX_SECTIONS];
    int rc = ISX_OK;

    if (size < HDR)
        FAIL("%s: %zu bytes, smaller than the %d-byte header: truncated or not an imgsearch index", name, size, HDR);
    if (memcmp(b, ISX_FORMAT_MAGIC, 8) != 0)
        FAIL("%s: not an imgsearch index file (bad magic)", name);
    uint32_t bom = le32(b + 12);
    if (bom == BOM_SWAPPED)
        FAIL("%s: big-endian file, not supported", name);
    if (bom != BOM)
        FAIL("%s: bad byte-order mark 0x%08x (expected 0x%08x): corrupt file", name, (unsigned)bom, BOM);
    uint16_t vmaj = le16(b + 8), vmin = le16(b + 10);
    if (vmaj > ISX_FORMAT_VERSION_MAJOR)
        FAIL("%s: file format version %u.%u is newer than this library supports (%d.x): upgrade imgsearch", name,
             vmaj, vmin, ISX_FORMAT_VERSION_MAJOR);
    if (vmaj < ISX_FORMAT_VERSION_MAJOR)
        FAIL("%s: file format version %u.%u is not supported (this library reads %d.x)", name, vmaj, vmin,
             ISX_FORMAT_VERSION_MAJOR);
    uint32_t nsec = le32(b + 28);
    if (nsec > ISX_FORMAT_MAX_SECTIONS)
        FAIL("%s: header claims %u sections, more than the limit of %d: corrupt file", name, nsec,
             ISX_FORMAT_MAX_SECTIONS);
    size_t table_end = HDR + (size_t)nsec * ENT;
    if (table_end > size)
        FAIL("%s: truncated: the header and section table need %zu bytes, file has %zu", name, table_end, size);
    uint32_t crc = header_crc(b, nsec), stored = le32(b + 60);
    if (crc != stored)
        FAIL("%s: header is corrupt: CRC mismatch (stored 0x%08x, computed 0x%08x)", name, (unsigned)stored,
             (unsigned)crc);
    uint64_t file_size = le64(b + 48);
    if (file_size > size)
        FAIL("%s: truncated: header says %llu bytes, file has %zu", name, (unsigned long long)file_size, size);
    if (file_size < size)
        FAIL("%s: header says %llu bytes, file has %zu: trailing bytes after the index", name,
             (unsigned long long)file_size, size);

    isx_header *h = &f->header;
    h->kind = le32(b + 16);
    h->metric = le32(b + 20);
    h->dtype = le32(b + 24);
    h->dim = le64(b + 32);
    h->count = le64(b + 40);
    h->version_major = vmaj;
    h->version_minor = vmin;
    if (h->kind < 1 || h->kind > ISX_KIND_MAX)
        FAIL("%s: unknown index kind %u (this library knows 1..%d)", name, h->kind, ISX_KIND_MAX);
    if (h->metric < 1 || h->metric > ISX_METRIC_MAX)
        FAIL("%s: unknown metric %u (this library knows 1..%d)", name, h->metric, ISX_METRIC_MAX);
    if (h->dtype < 1 || h->dtype > DTYPE_MAX)
        FAIL("%s: unknown dtype %u (this library knows 1..%d)", name, h->dtype, DTYPE_MAX);
    if (h->dim < 1 || h->dim > ISX_MAX_DIM)
        FAIL("%s: dim %llu is outside 1..%u", name, (unsigned long long)h->dim, ISX_MAX_DIM);
    if (h->count > ISX_MAX_COUNT)
        FAIL("%s: count %llu is above the limit of %llu", name, (unsigned long long)h->count,
             (unsigned long long)ISX_MAX_COUNT);
    /* Every kind stores at least an 8-byte id per vector, so no loader can be
     * led to size anything by a count the file could not hold; each loader
     * then checks the count exactly against its sections. */
    if (h->count > (file_size - table_end) / sizeof(int64_t))
        FAIL("%s: header count %llu cannot fit in a %llu-byte file (each vector needs at least its 8-byte "
             "id): corrupt file or a header that lies", name, (unsigned long long)h->count,
             (unsigned long long)file_size);

    f->nsections = nsec;
    for (uint32_t i = 0; i < nsec; i++) {
        const uint8_t *e = b + HDR + (size_t)i * ENT;
        isx_section_in *s = &f->sections[i];
        s->tag = le32(e);
        s->flags = le32(e + 4);
        s->offset = le64(e + 8);
        s->size = le64(e + 16);
        s->crc = le32(e + 24);
        tag_str(s->tag, t1);
        /* Flags would mark bytes that need decoding (compression, say); a
         * reader that does not know them cannot use the section. */
        if (s->flags)
            FAIL("%s: section '%s' has flags 0x%08x that this library does not understand", name, t1,
                 (unsigned)s->flags);
        if (s->offset % ALIGN)
            FAIL("%s: section '%s' starts at offset %llu, not a multiple of %d", name, t1,
                 (unsigned long long)s->offset, ALIGN);
        if (s->offset < table_end)
            FAIL("%s: section '%s' starts at offset %llu, inside the header or section table", name, t1,
                 (unsigned long long)s->offset);
        if (s->offset > file_size || s->size > file_size - s->offset)
            FAIL("%s: section '%s' (offset %llu, %llu bytes) runs past the end of the %llu-byte file", name, t1,
                 (unsigned long long)s->offset, (unsigned long long)s->size, (unsigned long long)file_size);
        for (uint32_t j = 0; j < i; j++)
            if (f->sections[j].tag == s->tag)
                FAIL("%s: section '%s' appears twice", name, t1);
        s->data = b + s->offset;
    }

    /* Sort by (offset, size) -- at most 64 entries -- to check overlaps and
     * that every byte between sections is zero padding. */
    for (uint32_t i = 0; i < nsec; i++) {
        uint32_t k = i;
        while (k > 0) {
            const isx_section_in *a = &f->sections[order[k - 1]], *c = &f->sections[i];
            if (a->offset < c->offset || (a->offset == c->offset && a->size <= c->size))
                break;
            order[k] = order[k - 1];
            k--;
        }
        order[k] = i;
    }
    uint64_t pos = table_end;
    for (uint32_t i = 0; i < nsec; i++) {
        const isx_section_in *s = &f->sections[order[i]];
        if (s->offset < pos)
            FAIL("%s: section '%s' overlaps section '%s'", name, tag_str(s->tag, t1),
                 tag_str(f->sections[order[i - 1]].tag, t2));
        for (uint64_t k = pos; k < s->offset; k++)
            if (b[k])
                FAIL("%s: nonzero byte in the padding at offset %llu: corrupt file", name, (unsigned long long)k);
        pos = s->offset + s->size;
    }
    if (pos < file_size)
        FAIL("%s: %llu bytes after the last section: corrupt file", name, (unsigned long long)(file_size - pos));

    for (uint32_t i = 0; i < nsec; i++) {
        const isx_section_in *s = &f->sections[i];
        uint32_t c = isx_crc32c(0, s->data, (size_t)s->size);
        if (c != s->crc)
            FAIL("%s: section '%s' is corrupt: CRC mismatch (stored 0x%08x, computed 0x%08x)", name,
                 tag_str(s->tag, t1), (unsigned)s->crc, (unsigned)c);
    }
    f->bytes = b;
    f->size = size;
cleanup:
    if (rc)
        memset(f, 0, sizeof(*f));
    return rc;
}

int isx_format_open_memory(const void *buf, size_t size, isx_file *f)
{
    if (!f)
        return isx_error(ISX_EINVAL, "no file structure given");
    memset(f, 0, sizeof(*f));
    if (!buf && size)
        return isx_error(ISX_EINVAL, "index bytes: NULL buffer of %zu bytes", size);
    static const uint8_t empty[1];
    return validate(buf ? buf : empty, size, "index bytes", f);
}

/* read() until n bytes: returns bytes read (< n at end of file), -1 on error. */
static ssize_t read_all(int fd, uint8_t *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        size_t want = n - got < IO_CHUNK ? n - got : IO_CHUNK;
        ssize_t r = read(fd, p + got, want);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

int isx_format_open_file(const char *path, int use_mmap, isx_file *f)
{
    int fd = -1, rc = ISX_OK;
    uint8_t *bytes = NULL;
    size_t size = 0;
    int mapped = 0;
    char *name = NULL;
    if (!f)
        return isx_error(ISX_EINVAL, "no file structure given");
    memset(f, 0, sizeof(*f));
    if (!path || !*path)
        return isx_error(ISX_EINVAL, "index file path is empty");

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = isx_error_errno(errno, "cannot open index file '%s'", path);
        goto cleanup;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = isx_error_errno(errno, "cannot stat index file '%s'", path);
        goto cleanup;
    }
    if (S_ISDIR(st.st_mode)) {
        rc = isx_error_errno(EISDIR, "cannot load index file '%s'", path);
        goto cleanup;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = isx_error(ISX_EFORMAT, "index file '%s': not a regular file", path);
        goto cleanup;
    }
    if (st.st_size < HDR) {
        rc = isx_error(ISX_EFORMAT,
                       "index file '%s': file is %lld bytes, smaller than the %d-byte header: truncated or not an "
                       "imgsearch index",
                       path, (long long)st.st_size, HDR);
        goto cleanup;
    }
    if ((unsigned long long)st.st_size > SIZE_MAX) {
        rc = isx_error(ISX_ENOMEM, "index file '%s' (%lld bytes) does not fit in memory", path, (long long)st.st_size);
        goto cleanup;
    }
    size = (size_t)st.st_size;

    if (use_mmap) {
        void *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            rc = isx_error_errno(errno, "cannot map index file '%s'", path);
            goto cleanup;
        }
        bytes = m;
        mapped = 1;
        /* Validation reads every byte once, front to back. */
        (void)madvise(m, size, MADV_SEQUENTIAL);
    } else {
        bytes = isx_aligned_alloc(size);
        if (!bytes) {
            rc = isx_error(ISX_ENOMEM, "cannot allocate %zu bytes to read index file '%s'", size, path);
            goto cleanup;
        }
        ssize_t got = read_all(fd, bytes, size);
        if (got < 0) {
            rc = isx_error_errno(errno, "cannot read index file '%s'", path);
            goto cleanup;
        }
        if ((size_t)got != size) {
            rc = isx_error(ISX_EFORMAT, "index file '%s': truncated while being read (%zd of %zu bytes)", path, got,
                           size);
            goto cleanup;
        }
    }
    close(fd);
    fd = -1;

    size_t nlen = strlen(path) + sizeof("index file ''");
    name = malloc(nlen);
    if (!name) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate a file name");
        goto cleanup;
    }
    snprintf(name, nlen, "index file '%s'", path);
    if ((rc = validate(bytes, size, name, f)))
        goto cleanup;
    if (mapped)
        (void)madvise(bytes, size, MADV_NORMAL); /* searches re-read it: keep readahead modest */
    f->mapped = mapped;
    f->owned = 1;
cleanup:
    if (fd >= 0)
        close(fd);
    if (rc && bytes) {
        if (mapped)
            munmap(bytes, size);
        else
            isx_aligned_free(bytes);
    }
    free(name);
    return rc;
}

void isx_format_close(isx_file *f)
{
    if (!f)
        return;
    if (f->bytes) {
        void *p = (void *)(uintptr_t)f->bytes;
        if (f->mapped)
            munmap(p, f->size);
        else if (f->owned)
            isx_aligned_free(p); /* read by open_file, or handed over by the caller */
    }
    memset(f, 0, sizeof(*f));
}

const isx_section_in *isx_format_find(const isx_file *f, uint32_t tag)
{
    if (!f)
        return NULL;
    for (uint32_t i = 0; i < f->nsections && i < ISX_FORMAT_MAX_SECTIONS; i++)
        if (f->sections[i].tag == tag)
            return &f->sections[i];
    return NULL;
}

int isx_format_require(const isx_file *f, uint32_t tag, uint64_t size, const isx_section_in **out)
{
    char t[16];
    if (out)
        *out = NULL;
    const isx_section_in *s = isx_format_find(f, tag);
    if (!s)
        return isx_error(ISX_EFORMAT, "section '%s' is missing", tag_str(tag, t));
    if (s->size != size)
        return isx_error(ISX_EFORMAT, "section '%s' has %llu bytes, expected %llu for count=%llu, dim=%llu",
                         tag_str(tag, t), (unsigned long long)s->size, (unsigned long long)size,
                         (unsigned long long)f->header.count, (unsigned long long)f->header.dim);
    if (out)
        *out = s;
    return ISX_OK;
}

/* ======================================================================
 * PARM: {u32 key_len, key, u32 type, 8 value bytes} repeated
 * ====================================================================== */

#define PARAM_FIXED 16 /* key_len + type + value */

/* A key in a param: 1..31 bytes before the NUL within its 32. */
static size_t key_len(const isx_param *p)
{
    size_t n = 0;
    while (n < sizeof(p->key) && p->key[n])
        n++;
    return n;
}

int isx_params_encode(const isx_param *p, uint32_t n, uint8_t *buf, size_t cap, size_t *used)
{
    if (used)
        *used = 0;
    if (n > ISX_MAX_PARAMS)
        return isx_error(ISX_EINVAL, "%u parameters, more than the limit of %d", n, ISX_MAX_PARAMS);
    if (n && !p)
        return isx_error(ISX_EINVAL, "%u parameters but no parameter array", n);
    size_t need = 0;
    for (uint32_t i = 0; i < n; i++) {
        size_t kl = key_len(&p[i]);
        if (kl < 1 || kl > sizeof(p[i].key) - 1)
            return isx_error(ISX_EINVAL, "parameter %u: key must be 1 to %zu bytes", i, sizeof(p[i].key) - 1);
        if (p[i].type != ISX_PARAM_INT && p[i].type != ISX_PARAM_FLOAT)
            return isx_error(ISX_EINVAL, "parameter '%s': unknown type %u", p[i].key, p[i].type);
        for (uint32_t j = 0; j < i; j++)
            if (strcmp(p[j].key, p[i].key) == 0)
                return isx_error(ISX_EINVAL, "parameter '%s' is given twice", p[i].key);
        need += PARAM_FIXED + kl;
    }
    if (need > cap || (need && !buf))
        return isx_error(ISX_EINVAL, "parameter block needs %zu bytes, buffer has %zu", need, buf ? cap : 0);
    size_t pos = 0;
    for (uint32_t i = 0; i < n; i++) {
        size_t kl = key_len(&p[i]);
        put32(buf + pos, (uint32_t)kl);
        memcpy(buf + pos + 4, p[i].key, kl);
        pos += 4 + kl;
        put32(buf + pos, p[i].type);
        uint64_t bits;
        if (p[i].type == ISX_PARAM_INT)
            bits = (uint64_t)p[i].v.i;
        else
            memcpy(&bits, &p[i].v.f, 8);
        put64(buf + pos + 4, bits);
        pos += 12;
    }
    if (used)
        *used = pos;
    return ISX_OK;
}

int isx_params_decode(const uint8_t *buf, size_t size, isx_param *p, uint32_t cap, uint32_t *n)
{
    uint32_t count = 0;
    size_t pos = 0;
    int rc = ISX_OK;
    if (n)
        *n = 0;
    if (!buf && size)
        return isx_error(ISX_EINVAL, "parameter block: NULL buffer of %zu bytes", size);
    if (cap && !p)
        return isx_error(ISX_EINVAL, "parameter block: no output array");
    while (pos < size) {
        if (size - pos < 4)
            FAIL("parameter block is truncated at byte %zu of %zu", pos, size);
        uint32_t kl = le32(buf + pos);
        if (kl < 1 || kl > sizeof(p->key) - 1)
            FAIL("parameter block: key length %u at byte %zu is outside 1..%zu", kl, pos, sizeof(p->key) - 1);
        if (size - pos - 4 < (size_t)kl + 12)
            FAIL("parameter block is truncated at byte %zu of %zu", pos, size);
        const uint8_t *key = buf + pos + 4;
        if (memchr(key, 0, kl))
            FAIL("parameter block: key at byte %zu contains a NUL byte", pos);
        uint32_t type = le32(key + kl);
        uint64_t bits = le64(key + kl + 4);
        if (type != ISX_PARAM_INT && type != ISX_PARAM_FLOAT)
            FAIL("parameter '%.*s': unknown type %u", (int)kl, (const char *)key, type);
        if (count >= cap)
            FAIL("parameter block holds more than %u parameters", cap);
        isx_param *q = &p[count];
        memset(q, 0, sizeof(*q));
        memcpy(q->key, key, kl);
        for (uint32_t j = 0; j < count; j++)
            if (strcmp(p[j].key, q->key) == 0)
                FAIL("parameter '%s' appears twice", q->key);
        q->type = type;
        if (type == ISX_PARAM_INT)
            q->v.i = (int64_t)bits; /* two's complement on every platform we build for */
        else
            memcpy(&q->v.f, &bits, 8);
        count++;
        pos += 4 + (size_t)kl + 12;
    }
    if (n)
        *n = count;
cleanup:
    return rc;
}

static const isx_param *param_find(const isx_param *p, uint32_t n, const char *key)
{
    for (uint32_t i = 0; p && key && i < n; i++)
        if (strncmp(p[i].key, key, sizeof(p[i].key)) == 0)
            return &p[i];
    return NULL;
}

int isx_params_get_int(const isx_param *p, uint32_t n, const char *key, int64_t *out)
{
    const isx_param *q = param_find(p, n, key);
    if (!q)
        return isx_error(ISX_EFORMAT, "parameter '%s' is missing", key ? key : "(null)");
    if (q->type != ISX_PARAM_INT)
        return isx_error(ISX_EFORMAT, "parameter '%s' is a float, expected an integer", key);
    *out = q->v.i;
    return ISX_OK;
}

int isx_params_get_float(const isx_param *p, uint32_t n, const char *key, double *out)
{
    const isx_param *q = param_find(p, n, key);
    if (!q)
        return isx_error(ISX_EFORMAT, "parameter '%s' is missing", key ? key : "(null)");
    if (q->type != ISX_PARAM_FLOAT)
        return isx_error(ISX_EFORMAT, "parameter '%s' is an integer, expected a float", key);
    *out = q->v.f;
    return ISX_OK;
}
