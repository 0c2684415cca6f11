/* bf16emu: a test-only backend that computes what the CUDA backend computes, on the CPU.
 *
 * The CUDA matmuls (bf16 and MXFP4 weights, the GEMV and the MMA path alike) and the MoE op
 * round every activation they load to bf16 (round to nearest even) and accumulate in fp32; the
 * other ops keep fp32. This ops_t is a copy of the CPU backend whose matmul_bf16 and
 * matmul_mxfp4 round their input x to bf16 first, and whose moe is composed of those two (per
 * expert in ascending index: gate_up on the rounded input, SwiGLU, down on the rounded SwiGLU
 * output, weighted add), so both roundings of the device MoE happen at the same places. What is
 * left between the GPU and this reference is fp32 summation order, so the CUDA tests can bound
 * the GPU against it tightly, where against the exact fp32 CPU they can only bound loosely.
 *
 * router_topk also keeps the router logits of every call (one per layer) since the last
 * bf16emu_log_reset, so a test can tell a near-tie in routing (where any rounding difference
 * may pick another expert) from a wrong result.
 *
 * Single-threaded use only (one scratch buffer). Header-only, for the tests under tests/cuda. */
#ifndef GPTOSS_TEST_BF16EMU_H
#define GPTOSS_TEST_BF16EMU_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

#define BF16EMU_MAX_LOG 64 /* router calls kept per step (layers) */

typedef struct {
    ops_t ops;                    /* first member: the wrappers cast their ops_t back */
    const ops_t *base;            /* the CPU backend (not owned) */
    float *xr;                    /* scratch: rounded inputs */
    size_t xr_cap;                /* floats */
    float *zlog[BF16EMU_MAX_LOG]; /* router logits [T][E] of each call since the reset */
    int zT[BF16EMU_MAX_LOG], zE[BF16EMU_MAX_LOG], zk[BF16EMU_MAX_LOG];
    int n_log;
} bf16emu_t;

/* x rounded to the nearest bf16 (ties to even), as __float2bfloat16_rn; NaN/inf unchanged. */
static inline float bf16emu_round(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

/* The rounded copy of n floats in the emulator's scratch (valid until the next call). */
static inline const float *bf16emu_rounded(bf16emu_t *e, const float *x, size_t n) {
    if (n > e->xr_cap) {
        float *p = realloc(e->xr, n * sizeof(float));
        if (!p) abort(); /* a test helper: out of memory ends the test */
        e->xr = p, e->xr_cap = n;
    }
    for (size_t i = 0; i < n; i++)
        e->xr[i] = bf16emu_round(x[i]);
    return e->xr;
}

/* ops_t.matmul_bf16 of the emulation: the CPU's on x rounded to bf16 (y: caller's). */
static inline void bf16emu_matmul_bf16(const ops_t *o, const float *x, int T,
                                       const ops_bf16_mat_t *W, const uint16_t *bias, float *y) {
    bf16emu_t *e = (bf16emu_t *)o;
    e->base->matmul_bf16(e->base, bf16emu_rounded(e, x, (size_t)T * W->cols), T, W, bias, y);
}

/* ops_t.matmul_mxfp4 of the emulation: the CPU's on x rounded to bf16 (y: caller's). */
static inline void bf16emu_matmul_mxfp4(const ops_t *o, const float *x, int T,
                                        const ops_mxfp4_mat_t *W, const uint16_t *bias, float *y) {
    bf16emu_t *e = (bf16emu_t *)o;
    e->base->matmul_mxfp4(e->base, bf16emu_rounded(e, x, (size_t)T * W->cols), T, W, bias, y);
}

/* Expert e's matrix and bias of a set. */
static inline ops_mxfp4_mat_t bf16emu_expert(const ops_experts_t *x, int e, const uint16_t **bias) {
    ops_mxfp4_mat_t m = x->mat;
    m.blocks += (size_t)e * x->blocks_estride;
    m.scales += (size_t)e * x->scales_estride;
    *bias = x->bias ? x->bias + (size_t)e * x->bias_estride : NULL;
    return m;
}

/* The MoE from the rounding matmuls: tokens grouped per expert (the CPU kernels are batch
 * invariant, so grouping changes no bit), experts added in ascending index. */
static inline void bf16emu_moe(const ops_t *o, const float *a, int T, const int32_t *idx,
                               const float *w, int K, const ops_moe_t *m, float *out) {
    const int H = m->gate_up.mat.cols, nu = m->down.mat.cols, Ho = m->down.mat.rows;
    float *ga = malloc(sizeof(float) * (size_t)T * H),
          *h = malloc(sizeof(float) * (size_t)T * 2 * nu),
          *act = malloc(sizeof(float) * (size_t)T * nu),
          *y = malloc(sizeof(float) * (size_t)T * Ho), *wt = malloc(sizeof(float) * (size_t)T);
    int *tok = malloc(sizeof(int) * (size_t)T);
    if (!ga || !h || !act || !y || !wt || !tok) abort();
    memset(out, 0, sizeof(float) * (size_t)T * Ho);
    for (int e = 0; e < m->n_experts; e++) {
        int n = 0;
        for (int t = 0; t < T; t++)
            for (int j = 0; j < K; j++)
                if (idx[t * K + j] == e) {
                    memcpy(ga + (size_t)n * H, a + (size_t)t * H, sizeof(float) * (size_t)H);
                    tok[n] = t, wt[n] = w[t * K + j], n++;
                    break;
                }
        if (!n) continue;
        const uint16_t *gb, *db;
        ops_mxfp4_mat_t gu = bf16emu_expert(&m->gate_up, e, &gb);
        ops_mxfp4_mat_t dn = bf16emu_expert(&m->down, e, &db);
        bf16emu_matmul_mxfp4(o, ga, n, &gu, gb, h);
        o->swiglu(o, h, n, nu, m->alpha, m->limit, act);
        bf16emu_matmul_mxfp4(o, act, n, &dn, db, y);
        for (int i = 0; i < n; i++)
            o->axpy(o, out + (size_t)tok[i] * Ho, wt[i], y + (size_t)i * Ho, (size_t)Ho);
    }
    free(ga), free(h), free(act), free(y), free(wt), free(tok);
}

/* ops_t.router_topk of the emulation: the CPU's, keeping a copy of z in the log (owned by the
 * emulator, freed by bf16emu_log_reset). */
static inline void bf16emu_router_topk(const ops_t *o, const float *z, int T, int E, int k,
                                       int32_t *idx, float *w) {
    bf16emu_t *e = (bf16emu_t *)o;
    if (e->n_log < BF16EMU_MAX_LOG) {
        float *c = malloc(sizeof(float) * (size_t)T * E);
        if (!c) abort();
        memcpy(c, z, sizeof(float) * (size_t)T * E);
        e->zlog[e->n_log] = c;
        e->zT[e->n_log] = T, e->zE[e->n_log] = E, e->zk[e->n_log] = k;
        e->n_log++;
    }
    e->base->router_topk(e->base, z, T, E, k, idx, w);
}

/* Forgets the router logits kept so far. */
static inline void bf16emu_log_reset(bf16emu_t *e) {
    for (int i = 0; i < e->n_log; i++)
        free(e->zlog[i]);
    e->n_log = 0;
}

/* The smallest routing margin of token t of the logged step over every logged layer: the gap
 * between the k-th and the (k+1)-th largest router logit, divided by the RMS of the token's
 * logits. INFINITY when nothing was logged. */
static inline double bf16emu_margin(const bf16emu_t *e, int t) {
    double best = INFINITY;
    for (int c = 0; c < e->n_log; c++) {
        const int E = e->zE[c], k = e->zk[c];
        if (t >= e->zT[c] || k >= E || k > 64) continue;
        const float *z = e->zlog[c] + (size_t)t * E;
        double top[65], ss = 0.0; /* the k + 1 largest, descending */
        int n = 0;
        for (int i = 0; i < E; i++) {
            ss += (double)z[i] * z[i];
            const double v = z[i];
            int p;
            if (n < k + 1)
                p = n++;
            else if (v > top[k])
                p = k;
            else
                continue;
            while (p > 0 && top[p - 1] < v) {
                top[p] = top[p - 1];
                p--;
            }
            top[p] = v;
        }
        const double rms = sqrt(ss / E) + 1e-30, gap = (top[k - 1] - top[k]) / rms;
        if (gap < best) best = gap;
    }
    return best;
}

/* Makes the emulator over the CPU backend `base` (not owned; must outlive it) in caller-owned e. */
static inline void bf16emu_init(bf16emu_t *e, const ops_t *base) {
    memset(e, 0, sizeof *e);
    e->ops = *base;
    e->base = base;
    e->ops.name = "cpu+bf16-activations";
    e->ops.matmul_bf16 = bf16emu_matmul_bf16;
    e->ops.matmul_mxfp4 = bf16emu_matmul_mxfp4;
    e->ops.moe = bf16emu_moe;
    e->ops.router_topk = bf16emu_router_topk;
}

/* Frees the emulator's scratch and log (not the base backend). */
static inline void bf16emu_free(bf16emu_t *e) {
    bf16emu_log_reset(e);
    free(e->xr);
    e->xr = NULL, e->xr_cap = 0;
}

#endif
