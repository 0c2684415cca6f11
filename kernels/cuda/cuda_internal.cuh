/* cuda_internal: what the .cu files of the CUDA backend share (internal header, CUDA C++).
 *
 * The backend state, the check macros that make a CUDA failure fatal, small device helpers
 * (bf16 rounding, E2M1 decode, warp reductions) and the host entry points of each op, which
 * ops_cuda.cu wires into the ops_t table. Not a public interface: users include ops_cuda.h. */
#ifndef GPTOSS_CUDA_INTERNAL_CUH
#define GPTOSS_CUDA_INTERNAL_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "ops_cuda.h"

/* Graph slots: the OPS_CUDA_GRAPH_MAX buckets of ops_cuda_graph_*, then one per key 1 ..
 * OPS_CUDA_GRAPH_KEYS of the ops_t graph hooks (key k -> slot OPS_CUDA_GRAPH_MAX + k - 1). */
#define CUDA_GRAPH_SLOTS (OPS_CUDA_GRAPH_MAX + OPS_CUDA_GRAPH_KEYS)

/* Scratch slots: each op family has its own buffer, so one cannot shrink another's. */
enum { CUDA_SCRATCH_ATTN = 0, CUDA_SCRATCH_MOE = 1, CUDA_SCRATCH_N = 2 };

/* Backend state; ops must be first (ops_t * <-> cuda_state_t *). */
typedef struct {
    ops_t ops;
    int device;                               /* CUDA ordinal */
    int n_sm;                                 /* streaming multiprocessors */
    cudaStream_t stream;                      /* every op is queued here */
    void *scratch[CUDA_SCRATCH_N];            /* attention split-K partials; MoE routing + rows */
    size_t scratch_bytes[CUDA_SCRATCH_N];     /* size of each */
    bool capturing;                           /* inside a graph begin/end */
    int capture_slot;                         /* graph slot being captured, or -1 */
    cudaGraphExec_t graphs[CUDA_GRAPH_SLOTS]; /* executable graph per slot, or NULL */
    char name[96];                            /* "cuda:0 NVIDIA H100 (sm_90)" */
} cuda_state_t;

/* The state behind o (the ops are const at the interface; scratch and graphs are mutable). */
static inline cuda_state_t *cuda_state(const ops_t *o) {
    return (cuda_state_t *)o->impl;
}

/* Logs "file:line: stmt failed: name (message)" and exits the process. */
[[noreturn]] void cuda_die(const char *file, int line, const char *stmt, const char *what);

/* Checks a cudaError_t-returning statement; fatal on failure. */
#define CUDA_CHECK(stmt)                                                                           \
    do {                                                                                           \
        cudaError_t cuda_e_ = (stmt);                                                              \
        if (cuda_e_ != cudaSuccess)                                                                \
            cuda_die(__FILE__, __LINE__, #stmt, cudaGetErrorString(cuda_e_));                      \
    } while (0)

/* Checks the launch just queued (bad configuration, missing kernel image). */
#define CUDA_CHECK_LAUNCH(what) CUDA_CHECK(cudaGetLastError())

/* Device scratch slot `slot` (CUDA_SCRATCH_*) of at least `bytes` (grown, and stored graphs
 * dropped, when needed; fatal if it would have to grow during a graph capture). Owned by the
 * backend; contents are not kept across calls. */
void *cuda_scratch(cuda_state_t *c, int slot, size_t bytes);

/* ---- device helpers --------------------------------------------------------------------- */

/* x rounded to the nearest bf16 and widened again (the activation rounding of the matmuls). */
__device__ __forceinline__ float cuda_bf16_round(float x) {
    return __bfloat162float(__float2bfloat16_rn(x));
}

/* bf16 bit pattern -> float (exact). */
__device__ __forceinline__ float cuda_bf16_to_f32(uint16_t h) {
    return __uint_as_float((uint32_t)h << 16);
}

/* E2M1 code (low 4 bits of c) -> twice its value, as an exact float: magnitudes
 * {0,1,2,3,4,6,8,12} from a byte table packed in one 64-bit constant (no memory LUT). */
__device__ __forceinline__ float cuda_e2m1_x2(uint32_t c) {
    float v = (float)((0x0C08060403020100ull >> ((c & 7u) * 8u)) & 0xffu);
    return (c & 8u) ? -v : v;
}

/* 2^(s - 128) for an E8M0 byte s: the scale of the doubled E2M1 values (exact, subnormal for
 * s < 2). */
__device__ __forceinline__ float cuda_mxfp4_half_scale(uint32_t s) {
    return s >= 2u ? __uint_as_float((s - 1u) << 23) : __uint_as_float(0x00400000u >> (1u - s));
}

__device__ __forceinline__ float cuda_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float cuda_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* ---- op entry points (signatures of ops.h) ----------------------------------------------- */

void cuda_op_embed(const ops_t *o, const uint16_t *table, size_t stride, int n, const int32_t *ids,
                   int T, float *out);
void cuda_op_rmsnorm(const ops_t *o, const float *x, const uint16_t *w, int T, int n, float eps,
                     float *out);
void cuda_op_add_rmsnorm(const ops_t *o, float *x, const float *y, const uint16_t *w, int T, int n,
                         float eps, float *out);
void cuda_op_matmul_bf16(const ops_t *o, const float *x, int T, const ops_bf16_mat_t *W,
                         const uint16_t *bias, float *y);
void cuda_op_matmul_mxfp4(const ops_t *o, const float *x, int T, const ops_mxfp4_mat_t *W,
                          const uint16_t *bias, float *y);
void cuda_op_rope(const ops_t *o, float *x, int T, int n_heads, int D, const float *cs);
void cuda_op_kv_write(const ops_t *o, const ops_kv_t *kv, const float *k, const float *v,
                      const ops_tok_t *toks, int T);
void cuda_op_attention(const ops_t *o, const float *q, int T, int n_heads, const ops_kv_t *kv,
                       const ops_tok_t *toks, int window, const uint16_t *sinks, float sm_scale,
                       float *out);
void cuda_op_router_topk(const ops_t *o, const float *z, int T, int E, int k, int32_t *idx,
                         float *w);
void cuda_op_swiglu(const ops_t *o, const float *h, int T, int I, float alpha, float limit,
                    float *out);
void cuda_op_add(const ops_t *o, float *x, const float *y, size_t n);
void cuda_op_axpy(const ops_t *o, float *x, float a, const float *y, size_t n);
void cuda_op_moe(const ops_t *o, const float *a, int T, const int32_t *idx, const float *w, int K,
                 const ops_moe_t *m, float *out);
void cuda_op_gather_rows(const ops_t *o, const float *src, const int32_t *rows, int R, int n,
                         float *dst);

#endif
