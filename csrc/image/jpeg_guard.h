/*
 * jpeg_guard.h -- the libjpeg error manager the decoder and the encoder share.
 *
 * libjpeg reports a fatal error by calling error_exit, which must not
 * return: the guard formats the message and longjmps back to the caller's
 * setjmp (the one place each codec cleans up).  Warnings are never printed;
 * the one that matters, "premature end of data", sets `truncated` so the
 * decoder can refuse a cut-off file instead of returning grey rows.
 * Include after <jpeglib.h>; only where ISX_HAVE_LIBJPEG is defined.
 */
#ifndef ISX_JPEG_GUARD_H
#define ISX_JPEG_GUARD_H

#include <jerror.h>
#include <setjmp.h>

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    int truncated;
    char message[JMSG_LENGTH_MAX];
} isx_jpeg_guard;

static inline void isx_jpeg_guard_fail(j_common_ptr cinfo)
{
    isx_jpeg_guard *g = (isx_jpeg_guard *)cinfo->err;
    g->pub.format_message(cinfo, g->message);
    longjmp(g->jump, 1);
}

static inline void isx_jpeg_guard_note(j_common_ptr cinfo, int level)
{
    isx_jpeg_guard *g = (isx_jpeg_guard *)cinfo->err;
    if (level < 0 && g->pub.msg_code == JWRN_JPEG_EOF)
        g->truncated = 1;
}

static inline void isx_jpeg_guard_quiet(j_common_ptr cinfo)
{
    (void)cinfo;
}

/* Install the guard as cinfo->err; then setjmp(g->jump) before any libjpeg call. */
static inline struct jpeg_error_mgr *isx_jpeg_guard_init(isx_jpeg_guard *g)
{
    struct jpeg_error_mgr *m = jpeg_std_error(&g->pub);
    m->error_exit = isx_jpeg_guard_fail;
    m->emit_message = isx_jpeg_guard_note;
    m->output_message = isx_jpeg_guard_quiet;
    g->truncated = 0;
    g->message[0] = '\0';
    return m;
}

#endif
