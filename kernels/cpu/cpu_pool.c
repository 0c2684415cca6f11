/* cpu_pool: fork-join thread pool (see cpu_pool.h). Workers wait for a new job
 * generation number, claim tasks from a shared atomic counter, and report back
 * through an atomic count of workers still busy. */
#include "cpu_pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#define CPU_POOL_SPIN 4000 /* polls before a worker sleeps (tens of microseconds) */

struct cpu_pool {
    int n_threads;          /* including the caller */
    pthread_t *threads;     /* [n_threads - 1] workers */
    pthread_mutex_t mu;     /* guards sleeping / wakeups */
    pthread_cond_t cv;      /* workers sleep here between jobs */
    atomic_uint generation; /* bumped once per job */
    atomic_int next_task;   /* next unclaimed task index */
    atomic_int busy;        /* workers still inside the current job */
    atomic_bool stop;       /* set by cpu_pool_free */
    int n_tasks;            /* of the current job */
    cpu_pool_fn fn;         /* of the current job */
    void *arg;              /* of the current job */
};

typedef struct {
    cpu_pool_t *pool;
    int index; /* 1..n_threads-1 */
} s_worker_arg_t;

static void s_drain(cpu_pool_t *p, int thread) {
    for (;;) {
        int t = atomic_fetch_add_explicit(&p->next_task, 1, memory_order_relaxed);
        if (t >= p->n_tasks) break;
        p->fn(p->arg, t, thread);
    }
}

static void *s_worker(void *argp) {
    s_worker_arg_t *wa = argp;
    cpu_pool_t *p = wa->pool;
    int index = wa->index;
    free(wa);
    unsigned seen = 0;
    for (;;) {
        unsigned g = atomic_load_explicit(&p->generation, memory_order_acquire);
        int spins = 0;
        while (g == seen && !atomic_load(&p->stop)) {
            if (++spins < CPU_POOL_SPIN) {
#if defined(__x86_64__) || defined(__i386__)
                __builtin_ia32_pause();
#endif
            } else {
                pthread_mutex_lock(&p->mu);
                g = atomic_load_explicit(&p->generation, memory_order_acquire);
                if (g == seen && !atomic_load(&p->stop)) pthread_cond_wait(&p->cv, &p->mu);
                pthread_mutex_unlock(&p->mu);
                spins = 0;
            }
            g = atomic_load_explicit(&p->generation, memory_order_acquire);
        }
        if (atomic_load(&p->stop)) break;
        seen = g;
        s_drain(p, index);
        atomic_fetch_sub_explicit(&p->busy, 1, memory_order_release);
    }
    return NULL;
}

cpu_pool_t *cpu_pool_new(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    cpu_pool_t *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_threads = 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    atomic_init(&p->generation, 0);
    atomic_init(&p->next_task, 0);
    atomic_init(&p->busy, 0);
    atomic_init(&p->stop, false);
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    if (!p->threads) {
        cpu_pool_free(&p);
        return NULL;
    }
    for (int i = 1; i < n_threads; i++) {
        s_worker_arg_t *wa = malloc(sizeof *wa);
        if (!wa) break;
        wa->pool = p;
        wa->index = i;
        if (pthread_create(&p->threads[i - 1], NULL, s_worker, wa) != 0) {
            free(wa);
            break;
        }
        p->n_threads++;
    }
    return p;
}

void cpu_pool_free(cpu_pool_t **pp) {
    if (!pp || !*pp) return;
    cpu_pool_t *p = *pp;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++)
        pthread_join(p->threads[i - 1], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p);
    *pp = NULL;
}

int cpu_pool_size(const cpu_pool_t *p) {
    return p ? p->n_threads : 1;
}

void cpu_pool_run(cpu_pool_t *p, int n_tasks, cpu_pool_fn fn, void *arg) {
    if (n_tasks <= 0) return;
    if (!p || p->n_threads == 1 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++)
            fn(arg, t, 0);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next_task, 0, memory_order_relaxed);
    atomic_store_explicit(&p->busy, p->n_threads - 1, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    s_drain(p, 0);
    int spins = 0;
    while (atomic_load_explicit(&p->busy, memory_order_acquire) > 0) {
        if (++spins > CPU_POOL_SPIN) sched_yield();
#if defined(__x86_64__) || defined(__i386__)
        else
            __builtin_ia32_pause();
#endif
    }
}
