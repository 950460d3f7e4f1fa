/*
 * isx.h -- conventions shared by every file of the imgsearch C core.
 *
 * The C core (everything under csrc/ except csrc/python/) never includes
 * Python headers.  Every fallible function returns an int status: 0 on
 * success, a negative ISX_E* code on failure, and writes its results through
 * out-parameters.  The detail of a failure ("expected ..., found ...") goes
 * to a thread-local message that the Python binding turns into the text of
 * the exception, so a worker thread's error never clobbers another thread's.
 */
#ifndef ISX_H
#define ISX_H

#include <stddef.h>
#include <stdint.h>

/* ---------- status codes ------------------------------------------------ */
enum {
    ISX_OK = 0,
    ISX_ENOMEM = -1,   /* allocation failed                      -> MemoryError */
    ISX_EINVAL = -2,   /* bad argument value                     -> ValueError */
    ISX_ETYPE = -3,    /* bad argument type / dtype              -> TypeError */
    ISX_EFORMAT = -4,  /* corrupt, truncated or foreign file     -> IndexFormatError */
    ISX_EIO = -5,      /* operating-system I/O error (errno set) -> OSError */
    ISX_EKEY = -6,     /* an id that is not in the index         -> KeyError */
};

/* ---------- metrics and storage dtypes (values are on disk: never renumber) */
typedef enum {
    ISX_METRIC_L2 = 1,      /* squared Euclidean */
    ISX_METRIC_IP = 2,      /* 1 - dot(a, b) */
    ISX_METRIC_COSINE = 3,  /* 1 - cos(a, b); 1 when either vector is zero */
    ISX_METRIC_L1 = 4,      /* Manhattan */
    ISX_METRIC_HAMMING = 5, /* differing bits of packed uint8 codes */
} isx_metric;
#define ISX_METRIC_MAX 5

typedef enum {
    ISX_DTYPE_F32 = 1,
    ISX_DTYPE_F16 = 2,
    ISX_DTYPE_I8 = 3,
    ISX_DTYPE_BITS = 4, /* uint8 bytes holding 8 packed bits each */
} isx_dtype;

/* ---------- limits (each is checked, and tested) ------------------------- */
#define ISX_MAX_DIM (1u << 20)          /* elements per vector: 4 MiB of float32 */
#define ISX_MAX_K (1u << 20)            /* neighbours per query: bounds the heaps */
#define ISX_MAX_COUNT ((uint64_t)1 << 40) /* vectors per index: far above RAM */
#define ISX_MAX_THREADS 256             /* worker threads per call */

/* ---------- errors ------------------------------------------------------- */
#if defined(__GNUC__)
#define ISX_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define ISX_PRINTF(a, b)
#endif

/* Record a message for the calling thread and return `status`, so that
 * `return isx_error(ISX_EINVAL, "...", ...);` reads as one statement. */
int isx_error(int status, const char *fmt, ...) ISX_PRINTF(2, 3);
/* Record errno's text after a message, for ISX_EIO. */
int isx_error_errno(int err, const char *fmt, ...) ISX_PRINTF(2, 3);
const char *isx_last_error(void);
int isx_last_errno(void);
void isx_clear_error(void);

const char *isx_metric_name(isx_metric m);
int isx_metric_from_name(const char *name, isx_metric *out);

/* ---------- threads ------------------------------------------------------ */
/* Usable CPUs (sched_getaffinity), at least 1. */
int isx_cpu_count(void);
/* Resolve a user's thread request: <= 0 means "all usable CPUs". */
int isx_resolve_threads(int requested);

/* Run fn(ctx, task, worker) for task in [0, ntasks) on up to `nthreads`
 * threads (the caller is worker 0).  Tasks are handed out dynamically with an
 * atomic counter, so uneven tasks balance.  Returns the first non-zero status
 * a task returned (remaining tasks are skipped), or ISX_ENOMEM/ISX_EIO if
 * threads could not be started -- in which case the caller's thread runs
 * everything itself, so a failure to spawn never loses work. */
typedef int (*isx_task_fn)(void *ctx, size_t task, int worker);
int isx_parallel_for(int nthreads, size_t ntasks, isx_task_fn fn, void *ctx);

/* ---------- memory ------------------------------------------------------- */
#define ISX_ALIGN 64
/* 64-byte aligned allocation; size 0 gives a valid non-NULL pointer. */
void *isx_aligned_alloc(size_t size);
void isx_aligned_free(void *p);
/* a * b without overflow, else ISX_EINVAL with a message naming `what`. */
int isx_mul_size(size_t a, size_t b, size_t *out, const char *what);

#endif
