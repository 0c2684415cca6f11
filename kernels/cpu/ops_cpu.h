/* ops_cpu: the CPU backend of ops.h (fp32 activations, exact stored weights).
 *
 * Matmuls are split over output rows across a thread pool; the inner loops come
 * from the best instruction set the CPU has (AVX-512, AVX2+FMA, else portable C),
 * chosen at run time. It is the reference every other backend is tested against. */
#ifndef GPTOSS_OPS_CPU_H
#define GPTOSS_OPS_CPU_H

#include "gerr.h"
#include "ops.h"

/* Creates the CPU backend with n_threads threads in all (<= 0: one per online CPU).
 * isa: NULL or "auto" for the best available, or "generic" / "avx2" / "avx512"
 * (refused with GERR_INVALID if this CPU or build lacks it; GPTOSS_ISA in the
 * environment overrides NULL/"auto"). Caller frees with ops_cpu_free. */
int ops_cpu_new(int n_threads, const char *isa, ops_t **out, gerr_t *err);
/* Stops the threads, frees the backend and sets *o to NULL (safe on NULL). */
void ops_cpu_free(ops_t **o);
/* Number of threads the backend uses. */
int ops_cpu_threads(const ops_t *o);

#endif
