/* cuda_harness: the three backends every CUDA test compares (header-only, tests/cuda only): the
 * CUDA backend on device 0, the fp32 CPU backend, and the bf16 emulation over the CPU one. */
#ifndef GPTOSS_TEST_CUDA_HARNESS_H
#define GPTOSS_TEST_CUDA_HARNESS_H

#include <stdio.h>

#include "bf16emu.h"
#include "cpu/ops_cpu.h"
#include "cuda/ops_cuda.h"

/* Opens the backends into caller-owned *gpu, *cpu, *emu (closed by cuda_harness_close) and
 * prints "<name>: <gpu> vs <cpu>". Returns 0, or the exit status the test must end with: 77
 * (ctest: skipped) without a usable CUDA device, 1 when the CPU backend cannot start. */
static inline int cuda_harness_open(const char *name, ops_t **gpu, ops_t **cpu, bf16emu_t *emu) {
    if (ops_cuda_device_count() <= 0) {
        printf("%s: skipped (no CUDA device)\n", name);
        return 77;
    }
    gerr_t err = {{0}};
    *gpu = ops_cuda_new(0, &err);
    if (!*gpu) {
        printf("%s: skipped (%s)\n", name, err.msg);
        return 77;
    }
    if (ops_cpu_new(0, NULL, cpu, &err) != 0) {
        fprintf(stderr, "%s: %s\n", name, err.msg);
        ops_cuda_free(gpu);
        return 1;
    }
    bf16emu_init(emu, *cpu);
    printf("%s: %s vs %s\n", name, (*gpu)->name, (*cpu)->name);
    return 0;
}

/* Frees what cuda_harness_open made. */
static inline void cuda_harness_close(ops_t **gpu, ops_t **cpu, bf16emu_t *emu) {
    bf16emu_free(emu);
    ops_cpu_free(cpu);
    ops_cuda_free(gpu);
}

#endif
