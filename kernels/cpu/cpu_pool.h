/* cpu_pool: a small fork-join thread pool for the CPU kernels.
 *
 * cpu_pool_run hands n_tasks task indices to the calling thread plus the pool's
 * workers (one atomic counter, dynamic scheduling) and returns when all are
 * done. Workers spin briefly after a job (decode steps issue hundreds of short
 * jobs per token), then sleep on a condition variable. Not a general scheduler:
 * one job at a time, issued by one thread. */
#ifndef GPTOSS_CPU_POOL_H
#define GPTOSS_CPU_POOL_H

typedef struct cpu_pool cpu_pool_t;

/* fn(arg, task, thread): runs task `task` on thread index `thread` (0 = caller). */
typedef void (*cpu_pool_fn)(void *arg, int task, int thread);

/* Starts a pool of n_threads threads in all, the caller included (n_threads < 1 = 1).
 * Returns NULL on failure. Caller frees with cpu_pool_free. */
cpu_pool_t *cpu_pool_new(int n_threads);
/* Stops the workers, frees the pool and sets *p to NULL (safe on NULL). */
void cpu_pool_free(cpu_pool_t **p);
/* Number of threads (caller included). */
int cpu_pool_size(const cpu_pool_t *p);
/* Runs fn for tasks 0..n_tasks-1 across the pool; returns when all have finished. */
void cpu_pool_run(cpu_pool_t *p, int n_tasks, cpu_pool_fn fn, void *arg);

#endif
