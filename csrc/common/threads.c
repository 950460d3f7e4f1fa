/*
 * threads.c -- a parallel-for on native threads.
 *
 * Threads are started per call rather than kept in a pool: a call that is
 * worth parallelising runs for milliseconds, against tens of microseconds to
 * start a thread, and a per-call design has no state to break across fork()
 * (a pool's threads do not survive into a child, which bites users of
 * multiprocessing).  Tasks are handed out through one atomic counter, so a
 * slow task does not hold up the others; the calling thread is worker 0.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "isx.h"

int isx_cpu_count(void)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int isx_resolve_threads(int requested)
{
    int n = requested > 0 ? requested : isx_cpu_count();
    return n > ISX_MAX_THREADS ? ISX_MAX_THREADS : n;
}

typedef struct {
    isx_task_fn fn;
    void *ctx;
    size_t ntasks;
    atomic_size_t next;
    atomic_int status;
    char message[512]; /* the failing task's thread-local message, carried home */
} pool_job;

typedef struct {
    pool_job *job;
    int worker;
} worker_arg;

static void run_tasks(pool_job *job, int worker)
{
    for (;;) {
        if (atomic_load_explicit(&job->status, memory_order_relaxed) != 0)
            return;
        size_t t = atomic_fetch_add_explicit(&job->next, 1, memory_order_relaxed);
        if (t >= job->ntasks)
            return;
        int rc = job->fn(job->ctx, t, worker);
        if (rc != 0) {
            int expected = 0;
            if (atomic_compare_exchange_strong(&job->status, &expected, rc) && worker != 0)
                snprintf(job->message, sizeof(job->message), "%s", isx_last_error());
            return;
        }
    }
}

static void *worker_main(void *p)
{
    worker_arg *a = p;
    run_tasks(a->job, a->worker);
    return NULL;
}

int isx_parallel_for(int nthreads, size_t ntasks, isx_task_fn fn, void *ctx)
{
    pool_job job;
    job.fn = fn;
    job.ctx = ctx;
    job.ntasks = ntasks;
    atomic_init(&job.next, 0);
    atomic_init(&job.status, 0);
    job.message[0] = '\0';
    if (nthreads < 1)
        nthreads = 1;
    if ((size_t)nthreads > ntasks)
        nthreads = ntasks > 0 ? (int)ntasks : 1;
    if (nthreads > ISX_MAX_THREADS)
        nthreads = ISX_MAX_THREADS;

    pthread_t tids[ISX_MAX_THREADS];
    worker_arg args[ISX_MAX_THREADS];
    int started = 0;
    for (int w = 1; w < nthreads; w++) {
        args[w].job = &job;
        args[w].worker = w;
        if (pthread_create(&tids[w], NULL, worker_main, &args[w]) != 0)
            break; /* run with the threads we have: worker 0 picks up the rest */
        started++;
    }
    run_tasks(&job, 0);
    for (int w = 1; w <= started; w++)
        pthread_join(tids[w], NULL);
    int status = atomic_load(&job.status);
    if (status != 0 && job.message[0] != '\0')
        isx_error(status, "%s", job.message);
    return status;
}
