/* matmul_dev: the device functions of the matmuls (CUDA C++, internal), shared by matmul.cu (one
 * weight matrix) and moe.cu (all experts of a layer in one grouped launch).
 *
 * Kernel-side weight views, the GEMV row of an MXFP4 matrix (one warp, up to MM_GEMV_MAXT
 * tokens, weights decoded in registers) and the MMA tile (64 tokens x 64 outputs per block of 4
 * warps, bf16 mma.sync.m16n8k16 with fp32 accumulators; MXFP4 decoded exactly into bf16 in shared
 * memory). Both round activations to bf16 as they load them. Everything here is inline: each .cu
 * that includes it gets its own copy (no relocatable device code). */
#ifndef GPTOSS_MATMUL_DEV_CUH
#define GPTOSS_MATMUL_DEV_CUH

#include <stdint.h>

#include "cuda_internal.cuh"

#define MM_GEMV_MAXT  8           /* largest T of the GEMV path */
#define MM_GEMV_WARPS 8           /* output rows per GEMV block */
#define MM_BM         64          /* tokens per MMA block */
#define MM_BN         64          /* output rows per MMA block */
#define MM_BK         32          /* reduction step (one MXFP4 block) */
#define MM_LDS        (MM_BK + 8) /* smem row stride in bf16: 80 bytes, conflict-free fragments */
#define MM_THREADS    128         /* 4 warps, 2 x 2 of 32 x 32 */

/* Kernel-side view of a bf16 weight matrix. vec: w 16-byte aligned and stride % 8 == 0. */
typedef struct {
    const uint16_t *w;
    size_t stride;
    int rows, cols;
    bool vec;
} s_bf16_w_t;

/* Kernel-side view of an MXFP4 weight matrix. vec: blocks 16-byte aligned, bstride % 16 == 0. */
typedef struct {
    const uint8_t *blocks, *scales;
    size_t bstride, sstride;
    int rows, cols;
    bool vec;
} s_mxfp4_w_t;

/* The 8 bf16 of a 16-byte word, widened. */
__device__ __forceinline__ void s_unpack8(uint4 q, float *f) {
    const uint32_t u[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(u[i] << 16);
        f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
    }
}

/* Loads 16 nibble bytes (one MXFP4 block) as four words. */
__device__ __forceinline__ void s_load_block(const uint8_t *p, bool vec, uint32_t *w) {
    if (vec) {
        uint4 q = __ldg((const uint4 *)p);
        w[0] = q.x, w[1] = q.y, w[2] = q.z, w[3] = q.w;
    } else {
#pragma unroll
        for (int i = 0; i < 4; i++)
            w[i] = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
                   (uint32_t)p[4 * i + 3] << 24;
    }
}

/* Sums each token's partial over the warp; lane 0 writes y[t][r] = acc[t] + bias[r]. */
__device__ __forceinline__ void s_gemv_store(float *acc, int T, int lane, int r, int rows,
                                             const uint16_t *bias, float *y) {
    const float b = bias ? cuda_bf16_to_f32(bias[r]) : 0.0f;
#pragma unroll
    for (int t = 0; t < MM_GEMV_MAXT; t++) {
        if (t < T) {
            float s = cuda_warp_sum(acc[t]);
            if (lane == 0) y[(size_t)t * rows + r] = s + b;
        }
    }
}

/* Output row r of y = W x + bias for T <= MM_GEMV_MAXT tokens, computed by one warp (lane =
 * its lane). One lane per 32-value block: 16 nibble bytes + 1 scale byte, decoded once, used by
 * every token. xvec: x 16-byte aligned (cols is a multiple of 32, so every token row is too). */
__device__ __forceinline__ void s_gemv_mxfp4_row(const float *x, int T, bool xvec,
                                                 const s_mxfp4_w_t &W, const uint16_t *bias,
                                                 float *y, int r, int lane) {
    const int K = W.cols, nb = K / 32;
    const uint8_t *blk = W.blocks + (size_t)r * W.bstride;
    const uint8_t *sc = W.scales + (size_t)r * W.sstride;
    float acc[MM_GEMV_MAXT];
#pragma unroll
    for (int t = 0; t < MM_GEMV_MAXT; t++)
        acc[t] = 0.0f;
    for (int g = lane; g < nb; g += 32) {
        uint32_t q[4];
        s_load_block(blk + (size_t)g * 16, W.vec, q);
        const float s = cuda_mxfp4_half_scale(__ldg(sc + g));
        float wv[32];
#pragma unroll
        for (int i = 0; i < 16; i++) {
            uint32_t byte = (q[i >> 2] >> ((i & 3) * 8)) & 0xffu;
            wv[2 * i] = cuda_e2m1_x2(byte & 15u);
            wv[2 * i + 1] = cuda_e2m1_x2(byte >> 4);
        }
#pragma unroll
        for (int t = 0; t < MM_GEMV_MAXT; t++) {
            if (t < T) {
                const float *xg = x + (size_t)t * K + (size_t)g * 32;
                float d = 0.0f;
                if (xvec) {
#pragma unroll
                    for (int i = 0; i < 8; i++) {
                        float4 a = ((const float4 *)xg)[i];
                        d = fmaf(wv[4 * i], cuda_bf16_round(a.x), d);
                        d = fmaf(wv[4 * i + 1], cuda_bf16_round(a.y), d);
                        d = fmaf(wv[4 * i + 2], cuda_bf16_round(a.z), d);
                        d = fmaf(wv[4 * i + 3], cuda_bf16_round(a.w), d);
                    }
                } else {
#pragma unroll
                    for (int i = 0; i < 32; i++)
                        d = fmaf(wv[i], cuda_bf16_round(xg[i]), d);
                }
                acc[t] = fmaf(d, s, acc[t]);
            }
        }
    }
    s_gemv_store(acc, T, lane, r, W.rows, bias, y);
}

/* ---- MMA path ----------------------------------------------------------------------------- */

typedef __nv_bfloat16 s_tile_t[MM_LDS];

/* As[r][0..32) = bf16(x[m0 + r][k0 .. k0 + 32)), zeros outside T x K. xvec: x 16-byte aligned
 * and K % 4 == 0. */
__device__ __forceinline__ void s_load_a(const float *x, int T, int K, bool xvec, int m0, int k0,
                                         s_tile_t *As) {
    for (int c = threadIdx.x; c < MM_BM * MM_BK / 4; c += MM_THREADS) {
        const int r = c / (MM_BK / 4), kc = (c % (MM_BK / 4)) * 4;
        const int t = m0 + r, k = k0 + kc;
        float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (t < T) {
            const float *p = x + (size_t)t * K + k;
            if (xvec && k + 4 <= K) {
                float4 f = *(const float4 *)p;
                v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
            } else {
#pragma unroll
                for (int j = 0; j < 4; j++)
                    if (k + j < K) v[j] = p[j];
            }
        }
        __nv_bfloat162 *d = (__nv_bfloat162 *)&As[r][kc];
        d[0] = __floats2bfloat162_rn(v[0], v[1]);
        d[1] = __floats2bfloat162_rn(v[2], v[3]);
    }
}

/* Bs[r][0..32) = W[n0 + r][k0 .. k0 + 32) as bf16, zeros outside. */
__device__ __forceinline__ void s_load_b(const s_bf16_w_t &W, int n0, int k0, s_tile_t *Bs) {
    for (int c = threadIdx.x; c < MM_BN * MM_BK / 8; c += MM_THREADS) {
        const int r = c / (MM_BK / 8), kc = (c % (MM_BK / 8)) * 8;
        const int n = n0 + r, k = k0 + kc;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (n < W.rows) {
            const uint16_t *p = W.w + (size_t)n * W.stride + k;
            if (W.vec && k + 8 <= W.cols) {
                v = __ldg((const uint4 *)p);
            } else {
                uint32_t h[8];
#pragma unroll
                for (int j = 0; j < 8; j++)
                    h[j] = k + j < W.cols ? p[j] : 0u;
                v = make_uint4(h[0] | h[1] << 16, h[2] | h[3] << 16, h[4] | h[5] << 16,
                               h[6] | h[7] << 16);
            }
        }
        *(uint4 *)&Bs[r][kc] = v;
    }
}

/* Bs[r][0..32) = MXFP4 block k0/32 of row n0 + r decoded to bf16 (exact); two threads per row,
 * 8 nibble bytes each. Needs MM_THREADS == 2 * MM_BN. */
__device__ __forceinline__ void s_load_b(const s_mxfp4_w_t &W, int n0, int k0, s_tile_t *Bs) {
    const int r = threadIdx.x >> 1, h = threadIdx.x & 1;
    const int n = n0 + r, gb = k0 / 32;
    uint32_t w[2] = {0u, 0u};
    float s = 0.0f;
    if (n < W.rows) {
        const uint8_t *p = W.blocks + (size_t)n * W.bstride + (size_t)gb * 16 + h * 8;
        if (W.vec) {
            uint2 u = __ldg((const uint2 *)p);
            w[0] = u.x, w[1] = u.y;
        } else {
#pragma unroll
            for (int i = 0; i < 2; i++)
                w[i] = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
                       (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24;
        }
        s = cuda_mxfp4_half_scale(W.scales[(size_t)n * W.sstride + gb]);
    }
    __nv_bfloat162 *d = (__nv_bfloat162 *)&Bs[r][h * 16];
#pragma unroll
    for (int j = 0; j < 8; j++) {
        uint32_t byte = (w[j >> 2] >> ((j & 3) * 8)) & 0xffu;
        d[j] = __floats2bfloat162_rn(cuda_e2m1_x2(byte & 15u) * s, cuda_e2m1_x2(byte >> 4) * s);
    }
}

/* d += a * b for one m16n8k16 tile (bf16 inputs, fp32 accumulators; sm_80+). */
__device__ __forceinline__ void s_mma(float *d, const uint32_t *a, const uint32_t *b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* The tile (outputs n0..n0+64, tokens m0..m0+64) of y[T][N] = x[T][K] W[N][K]^T + bias, computed
 * by the whole block of MM_THREADS (every thread must call it); warp w computes tokens
 * wm..wm+32 x outputs wn..wn+32 as 2 x 4 mma tiles. Fragment layouts are PTX's for
 * m16n8k16 (g = lane / 4, tg = lane % 4): A rows g, g+8 / cols 2tg, 2tg+8; B col g / rows 2tg,
 * 2tg+8; C rows g, g+8 / cols 2tg, 2tg+1. */
template <class WS>
__device__ __forceinline__ void s_mma_tile(const float *x, int T, bool xvec, const WS &W,
                                           const uint16_t *bias, float *y, int n0, int m0) {
    __shared__ __align__(16) __nv_bfloat16 As[MM_BM][MM_LDS];
    __shared__ __align__(16) __nv_bfloat16 Bs[MM_BN][MM_LDS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int K = W.cols, N = W.rows;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    const int g = lane >> 2, tg = lane & 3;
    float acc[2][4][4];
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                acc[mi][ni][e] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += MM_BK) {
        s_load_a(x, T, K, xvec, m0, k0, As);
        s_load_b(W, n0, k0, Bs);
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < MM_BK; ks += 16) {
            uint32_t a[2][4], b[4][2];
#pragma unroll
            for (int mi = 0; mi < 2; mi++) {
                const __nv_bfloat16 *p0 = &As[wm + mi * 16 + g][ks + tg * 2];
                const __nv_bfloat16 *p1 = p0 + 8 * MM_LDS;
                a[mi][0] = *(const uint32_t *)p0;
                a[mi][1] = *(const uint32_t *)p1;
                a[mi][2] = *(const uint32_t *)(p0 + 8);
                a[mi][3] = *(const uint32_t *)(p1 + 8);
            }
#pragma unroll
            for (int ni = 0; ni < 4; ni++) {
                const __nv_bfloat16 *q = &Bs[wn + ni * 8 + g][ks + tg * 2];
                b[ni][0] = *(const uint32_t *)q;
                b[ni][1] = *(const uint32_t *)(q + 8);
            }
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
#pragma unroll
                for (int ni = 0; ni < 4; ni++)
                    s_mma(acc[mi][ni], a[mi], b[ni]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int ni = 0; ni < 4; ni++) {
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int n = n0 + wn + ni * 8 + tg * 2 + e;
            if (n >= N) continue;
            const float b = bias ? cuda_bf16_to_f32(bias[n]) : 0.0f;
#pragma unroll
            for (int mi = 0; mi < 2; mi++) {
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    const int t = m0 + wm + mi * 16 + g + hf * 8;
                    if (t < T) y[(size_t)t * N + n] = acc[mi][ni][hf * 2 + e] + b;
                }
            }
        }
    }
}

#endif
