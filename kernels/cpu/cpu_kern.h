/* cpu_kern: the per-ISA inner loops of the CPU backend (internal header).
 *
 * Each instruction set (portable C, AVX2+FMA, AVX-512) provides one cpu_kern_t;
 * ops_cpu.c picks one at run time and wraps it with threading. These functions
 * work on a range of output rows and never allocate. Not a public interface:
 * the engine uses ops.h only.
 *
 * Batch invariance (a contract, checked bit for bit by tests/unit/test_determinism.c):
 * the value of y[t][r] may depend only on W's row r, x[t] and the bias, never on T, on
 * t, on r0/r1 (the thread's row range) or on the other tokens. So every path of a
 * kernel (T = 1 GEMV, token tiles, row and token remainders) must sum row r for token
 * t in one and the same order: same lanes, same chunking of the columns, same
 * horizontal reduction, same tail and bias. Tiles may only change which (row, token)
 * pairs run side by side. Seeded streams rely on it: a sequence recomputed after a
 * preemption or a shard restart, or batched differently, must produce the same tokens. */
#ifndef GPTOSS_CPU_KERN_H
#define GPTOSS_CPU_KERN_H

#include <stddef.h>
#include <stdint.h>

#include "ops.h"

typedef struct {
    const char *name; /* "generic", "avx2", "avx512" */
    /* y[t][r] = W[r] . x[t] + bias[r] for r in [r0, r1), t < T (x: [T][W->cols],
     * y: [T][W->rows]; bias bf16 or NULL). */
    void (*bf16_rows)(const float *x, int T, const ops_bf16_mat_t *W, const uint16_t *bias, int r0,
                      int r1, float *y);
    /* 1: bf16_rows wants x in split order (cpu_split_x): a 32-bit lane of the weights holds
     * an (even, odd) pair, so shifts and blends give the even and the odd weights. */
    int bf16_split_x;
    /* Same for MXFP4 weights; x in nibble order if mxfp4_nibble_x. */
    void (*mxfp4_rows)(const float *x, int T, const ops_mxfp4_mat_t *W, const uint16_t *bias,
                       int r0, int r1, float *y);
    /* 1: mxfp4_rows wants x in nibble order (cpu_nibble_x), the order in which its
     * decode leaves the weights of a block. */
    int mxfp4_nibble_x;
    /* Returns a . b over n floats. */
    float (*dot)(const float *a, const float *b, int n);
    /* y[i] += a * x[i] for i < n. */
    void (*axpy)(float *y, float a, const float *x, int n);
} cpu_kern_t;

/* 2^(s - 128) for each E8M0 byte s: the scale of the doubled E2M1 integers. */
extern float cpu_mxfp4_half_scale[256];
/* 2^(s - 152) for each E8M0 byte s: the scale of the doubled E2M1 integers times 2^24. */
extern float cpu_mxfp4_scale24[256];
/* For each E8M0 byte s <= 232: the bits of 2^(s - 105), a float whose mantissa's last bit is
 * worth 2^(s - 128), so OR-ing a byte u into it gives 2^(s - 105) + u * 2^(s - 128); above
 * 232 (the exponent would overflow) the bits of a quiet NaN, which stays NaN under the OR. */
extern uint32_t cpu_mxfp4_magic[256];
/* The same floats with u = 12 (12 + the doubled E2M1 zero, kern_avx2's biased table); NaN
 * above 232. */
extern float cpu_mxfp4_magic_zero[256];
/* Fills cpu_mxfp4_half_scale, cpu_mxfp4_scale24 and the magic tables (idempotent). */
void cpu_kern_init_tables(void);

/* Writes x ([T][n]) to out ([T][n]) in split order: in each 16 values of a row, the 8 at
 * even offsets, then the 8 at odd offsets; the last n % 16 values of a row as they are. */
void cpu_split_x(const float *x, int T, int n, float *out);

/* Writes x ([T][n]) to out ([T][n]) in nibble order: in each 8 values of a row, the 4 at
 * even offsets, then the 4 at odd offsets; the last n % 8 values of a row as they are. */
void cpu_nibble_x(const float *x, int T, int n, float *out);

extern const cpu_kern_t cpu_kern_generic;
/* Per-ISA tables, defined in kern_<isa>.c (compiled for that ISA; call only after
 * checking the CPU supports it). */
const cpu_kern_t *cpu_kern_avx2(void);
const cpu_kern_t *cpu_kern_avx512(void);

#endif
