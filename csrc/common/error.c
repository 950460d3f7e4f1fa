/*
 * error.c -- the thread-local error message, metric names, aligned memory.
 *
 * Every fallible function of the C core returns a status and leaves the
 * detail in a per-thread buffer, so worker threads and Python threads that
 * released the GIL never overwrite each other's message.  The buffer is a
 * fixed 1 KiB array: recording an error must never itself fail for want of
 * memory.
 *
 * Two properties the bindings rely on:
 *   - a message may be built from the previous one
 *     (isx_error(..., "flat index: %s", isx_last_error())), so it is formatted
 *     into a scratch buffer first and copied over the old one afterwards;
 *   - the message is always valid UTF-8, because Python decodes it strictly.
 *     Paths on POSIX are arbitrary bytes and truncation can split a
 *     multi-byte character, so invalid sequences are replaced with '?'.
 *
 * strerror() shares one static buffer between threads, so errno texts come
 * from strerror_r; glibc declares either the XSI (int) or the GNU (char *)
 * flavour depending on feature macros, and _Generic picks the right reading
 * of whichever one is in scope.
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* MADV_HUGEPAGE */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "isx.h"

#define ISX_MSG_SIZE 1024

static _Thread_local char tls_msg[ISX_MSG_SIZE];
static _Thread_local int tls_errno;

/* Rewrite s in place so that it is valid UTF-8 (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF); each offending byte becomes '?'. */
static void utf8_sanitize(char *s)
{
    unsigned char *p = (unsigned char *)s;
    while (*p) {
        unsigned c = p[0];
        size_t len;
        unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        if (c < 0x80) {
            p++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0)
                lo = 0xA0;
            else if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;
        } else {
            *p++ = '?';
            continue;
        }
        int ok = p[1] >= lo && p[1] <= hi;
        for (size_t i = 2; ok && i < len; i++)
            ok = p[i] >= 0x80 && p[i] <= 0xBF; /* a NUL stops here, so no overrun */
        if (ok)
            p += len;
        else
            *p++ = '?';
    }
}

/* Format into out (ISX_MSG_SIZE bytes); a cut-off message ends in "...". */
static void format_msg(char *out, const char *fmt, va_list ap)
{
    int n = vsnprintf(out, ISX_MSG_SIZE, fmt, ap);
    if (n < 0)
        out[0] = '\0';
    else if ((size_t)n >= ISX_MSG_SIZE)
        memcpy(out + ISX_MSG_SIZE - 4, "...", 4);
}

int isx_error(int status, const char *fmt, ...)
{
    char tmp[ISX_MSG_SIZE];
    va_list ap;
    va_start(ap, fmt);
    format_msg(tmp, fmt, ap);
    va_end(ap);
    utf8_sanitize(tmp);
    memcpy(tls_msg, tmp, sizeof(tmp));
    tls_errno = 0; /* a stale errno must not decorate an unrelated error */
    return status;
}

static const char *strerror_xsi(int rc, const char *buf)
{
    return rc == 0 ? buf : "unknown error";
}

static const char *strerror_gnu(const char *r, const char *buf)
{
    (void)buf;
    return r ? r : "unknown error";
}

#define ERRTEXT(err, buf, n) \
    _Generic(strerror_r((err), (buf), (n)), int: strerror_xsi, default: strerror_gnu)(strerror_r((err), (buf), (n)), (buf))

int isx_error_errno(int err, const char *fmt, ...)
{
    char tmp[ISX_MSG_SIZE];
    char ebuf[256];
    va_list ap;
    va_start(ap, fmt);
    format_msg(tmp, fmt, ap);
    va_end(ap);
    ebuf[0] = '\0';
    const char *etext = ERRTEXT(err, ebuf, sizeof(ebuf));
    size_t used = strlen(tmp);
    if (used + 2 < sizeof(tmp))
        snprintf(tmp + used, sizeof(tmp) - used, ": %s", etext);
    utf8_sanitize(tmp);
    memcpy(tls_msg, tmp, sizeof(tmp));
    tls_errno = err;
    return ISX_EIO;
}

const char *isx_last_error(void)
{
    return tls_msg;
}

int isx_last_errno(void)
{
    return tls_errno;
}

void isx_clear_error(void)
{
    tls_msg[0] = '\0';
    tls_errno = 0;
}

/* ---------- metric names -------------------------------------------------- */

const char *isx_metric_name(isx_metric m)
{
    switch (m) {
    case ISX_METRIC_L2: return "l2";
    case ISX_METRIC_IP: return "ip";
    case ISX_METRIC_COSINE: return "cosine";
    case ISX_METRIC_L1: return "l1";
    case ISX_METRIC_HAMMING: return "hamming";
    }
    return "unknown";
}

int isx_metric_from_name(const char *name, isx_metric *out)
{
    static const struct {
        const char *name;
        isx_metric metric;
    } names[] = {
        {"l2", ISX_METRIC_L2},          {"sqeuclidean", ISX_METRIC_L2},
        {"ip", ISX_METRIC_IP},          {"inner_product", ISX_METRIC_IP},
        {"dot", ISX_METRIC_IP},         {"cosine", ISX_METRIC_COSINE},
        {"cos", ISX_METRIC_COSINE},     {"l1", ISX_METRIC_L1},
        {"manhattan", ISX_METRIC_L1},   {"cityblock", ISX_METRIC_L1},
        {"hamming", ISX_METRIC_HAMMING},
    };
    if (!name)
        return isx_error(ISX_EINVAL, "metric name is missing");
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcmp(name, names[i].name) == 0) {
            if (out)
                *out = names[i].metric;
            return ISX_OK;
        }
    }
    return isx_error(ISX_EINVAL,
                     "unknown metric '%.64s': expected one of 'l2', 'ip', 'cosine', 'l1', 'hamming' "
                     "(aliases: 'sqeuclidean', 'inner_product', 'dot', 'cos', 'manhattan', 'cityblock')",
                     name);
}

/* ---------- memory ---------------------------------------------------------- */

#define ISX_HUGE_PAGE ((size_t)2 << 20)       /* x86-64's transparent huge page */
#define ISX_HUGE_MIN ((size_t)16 << 20)        /* blocks this large ask for huge pages */

void *isx_aligned_alloc(size_t size)
{
    /* Rounding up lets SIMD code read whole 64-byte lines at the tail, and
     * size 0 still yields a pointer distinct from NULL (= failure).  Large
     * blocks (vectors, HNSW nodes) are aligned to 2 MiB and offered to the
     * kernel for transparent huge pages: a graph walk touches rows all over
     * hundreds of MB, and 4 KiB pages make nearly every row a TLB miss.  On
     * systems where THP is "madvise" (the usual default) nothing else asks. */
    size_t rounded = size ? size : 1;
    if (rounded > SIZE_MAX - (ISX_HUGE_PAGE - 1))
        return NULL;
    int huge = rounded >= ISX_HUGE_MIN && !getenv("IMGSEARCH_NO_HUGEPAGES");
    size_t align = huge ? ISX_HUGE_PAGE : ISX_ALIGN;
    rounded = (rounded + align - 1) & ~(align - 1);
    void *p = NULL;
    if (posix_memalign(&p, align, rounded) != 0)
        return NULL;
#if defined(MADV_HUGEPAGE)
    if (huge)
        (void)madvise(p, rounded, MADV_HUGEPAGE); /* advice: refused or not, the memory is good */
#endif
    return p;
}

void isx_aligned_free(void *p)
{
    free(p);
}

int isx_mul_size(size_t a, size_t b, size_t *out, const char *what)
{
    if (a != 0 && b > SIZE_MAX / a)
        return isx_error(ISX_EINVAL, "%s: %zu x %zu does not fit in memory sizes", what ? what : "size", a, b);
    *out = a * b;
    return ISX_OK;
}
