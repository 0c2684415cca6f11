/* matmul: y = W x + b on the GPU with bf16 or MXFP4 weights in their stored formats.
 *
 * Two paths per weight format, chosen by the number of tokens T:
 *   - GEMV (T <= 8, decode): one warp per output row; the weights are streamed once with 16-byte
 *     loads (8 bf16, or one whole 32-value MXFP4 block per lane), decoded in registers and
 *     multiplied by each token's activations with fp32 FMAs. Bandwidth-bound, as decode is.
 *   - MMA (T > 8, prefill / large batches): 64 tokens x 64 outputs per block of 4 warps, K in
 *     steps of 32; the activation tile is rounded to bf16 and the weight tile converted (MXFP4:
 *     E2M1 nibble -> exact float via a packed byte table, times 2^(s-128), rounded to bf16, which
 *     is exact) into shared memory, then bf16 mma.sync.m16n8k16 with fp32 accumulators - the
 *     instruction exists on sm_80 (A100) and sm_90, so no FP8/FP4 hardware is needed.
 * Both paths round activations to bf16 (DESIGN.md: bf16 activations, fp32 accumulation), so a
 * token's result does not depend on which path its batch took beyond summation order.
 *
 * Not here (later work, see README.md): cp.async double buffering, ldmatrix, split-K for tall
 * skinny shapes, grouped MoE GEMM over all experts in one launch. */
#include <assert.h>
#include <stdint.h>

#include "matmul_dev.cuh"

/* ---- GEMV path ---------------------------------------------------------------------------- */

/* xvec: x 16-byte aligned and cols % 8 == 0 (every token row aligned). */
__global__ void __launch_bounds__(MM_GEMV_WARPS * 32)
    k_gemv_bf16(const float *x, int T, bool xvec, s_bf16_w_t W, const uint16_t *bias, float *y) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * MM_GEMV_WARPS + (threadIdx.x >> 5);
    if (r >= W.rows) return;
    const int K = W.cols;
    const uint16_t *w = W.w + (size_t)r * W.stride;
    float acc[MM_GEMV_MAXT];
#pragma unroll
    for (int t = 0; t < MM_GEMV_MAXT; t++)
        acc[t] = 0.0f;
    int k0 = 0;
    if (W.vec && xvec) {
        const int kv = K & ~7;
#pragma unroll 2
        for (int k = lane * 8; k < kv; k += 32 * 8) {
            float wf[8];
            s_unpack8(__ldg((const uint4 *)(w + k)), wf);
#pragma unroll
            for (int t = 0; t < MM_GEMV_MAXT; t++) {
                if (t < T) {
                    const float4 *xp = (const float4 *)(x + (size_t)t * K + k);
                    float4 a = xp[0], b = xp[1];
                    float s = acc[t];
                    s = fmaf(wf[0], cuda_bf16_round(a.x), s);
                    s = fmaf(wf[1], cuda_bf16_round(a.y), s);
                    s = fmaf(wf[2], cuda_bf16_round(a.z), s);
                    s = fmaf(wf[3], cuda_bf16_round(a.w), s);
                    s = fmaf(wf[4], cuda_bf16_round(b.x), s);
                    s = fmaf(wf[5], cuda_bf16_round(b.y), s);
                    s = fmaf(wf[6], cuda_bf16_round(b.z), s);
                    s = fmaf(wf[7], cuda_bf16_round(b.w), s);
                    acc[t] = s;
                }
            }
        }
        k0 = kv;
    }
    for (int k = k0 + lane; k < K; k += 32) {
        const float wf = cuda_bf16_to_f32(w[k]);
#pragma unroll
        for (int t = 0; t < MM_GEMV_MAXT; t++)
            if (t < T) acc[t] = fmaf(wf, cuda_bf16_round(x[(size_t)t * K + k]), acc[t]);
    }
    s_gemv_store(acc, T, lane, r, W.rows, bias, y);
}

/* y = W x + bias for T <= MM_GEMV_MAXT tokens, one warp per output row. xvec: x 16-byte
 * aligned (cols is a multiple of 32, so every token row is too). */
__global__ void __launch_bounds__(MM_GEMV_WARPS * 32)
    k_gemv_mxfp4(const float *x, int T, bool xvec, s_mxfp4_w_t W, const uint16_t *bias, float *y) {
    const int r = blockIdx.x * MM_GEMV_WARPS + (threadIdx.x >> 5);
    if (r >= W.rows) return;
    s_gemv_mxfp4_row(x, T, xvec, W, bias, y, r, threadIdx.x & 31);
}

/* ---- MMA path ----------------------------------------------------------------------------- */

/* y[T][N] = x[T][K] W[N][K]^T + bias: block (n tile, token tile), see s_mma_tile. */
template <class WS>
__global__ void __launch_bounds__(MM_THREADS)
    k_mma(const float *x, int T, bool xvec, WS W, const uint16_t *bias, float *y) {
    s_mma_tile(x, T, xvec, W, bias, y, blockIdx.x * MM_BN, blockIdx.y * MM_BM);
}

/* ---- host entry points --------------------------------------------------------------------- */

static bool s_aligned(const void *p, uintptr_t a) {
    return ((uintptr_t)p % a) == 0;
}

void cuda_op_matmul_bf16(const ops_t *o, const float *x, int T, const ops_bf16_mat_t *W,
                         const uint16_t *bias, float *y) {
    if (T <= 0 || W->rows <= 0) return;
    cudaStream_t st = cuda_state(o)->stream;
    s_bf16_w_t w = {W->w, W->stride, W->rows, W->cols, s_aligned(W->w, 16) && W->stride % 8 == 0};
    if (T <= MM_GEMV_MAXT) {
        const bool xvec = s_aligned(x, 16) && W->cols % 8 == 0;
        k_gemv_bf16<<<(W->rows + MM_GEMV_WARPS - 1) / MM_GEMV_WARPS, MM_GEMV_WARPS * 32, 0, st>>>(
            x, T, xvec, w, bias, y);
        CUDA_CHECK_LAUNCH("k_gemv_bf16");
    } else {
        const bool xvec = s_aligned(x, 16) && W->cols % 4 == 0;
        dim3 grid((W->rows + MM_BN - 1) / MM_BN, (T + MM_BM - 1) / MM_BM);
        k_mma<s_bf16_w_t><<<grid, MM_THREADS, 0, st>>>(x, T, xvec, w, bias, y);
        CUDA_CHECK_LAUNCH("k_mma<bf16>");
    }
}

void cuda_op_matmul_mxfp4(const ops_t *o, const float *x, int T, const ops_mxfp4_mat_t *W,
                          const uint16_t *bias, float *y) {
    if (T <= 0 || W->rows <= 0) return;
    assert(W->cols % 32 == 0);
    cudaStream_t st = cuda_state(o)->stream;
    s_mxfp4_w_t w = {W->blocks,
                     W->scales,
                     W->blocks_stride,
                     W->scales_stride,
                     W->rows,
                     W->cols,
                     s_aligned(W->blocks, 16) && W->blocks_stride % 16 == 0};
    const bool xvec = s_aligned(x, 16);
    if (T <= MM_GEMV_MAXT) {
        k_gemv_mxfp4<<<(W->rows + MM_GEMV_WARPS - 1) / MM_GEMV_WARPS, MM_GEMV_WARPS * 32, 0, st>>>(
            x, T, xvec, w, bias, y);
        CUDA_CHECK_LAUNCH("k_gemv_mxfp4");
    } else {
        dim3 grid((W->rows + MM_BN - 1) / MM_BN, (T + MM_BM - 1) / MM_BM);
        k_mma<s_mxfp4_w_t><<<grid, MM_THREADS, 0, st>>>(x, T, xvec, w, bias, y);
        CUDA_CHECK_LAUNCH("k_mma<mxfp4>");
    }
}
