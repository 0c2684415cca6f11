/* attention: softmax attention with sinks, sliding window and GQA over the paged KV cache.
 *
 * One kernel, two launch shapes:
 *   - decode / small batches (T <= 8): split-K flash decoding. A block takes one token and one kv
 *     head (all `group` query heads that share it) and one of n_splits slices of the token's key
 *     range; it keeps an online softmax per head (running max m, sum l, unnormalised output) and
 *     writes the partial (m, l, acc) to scratch; a combine kernel merges the slices and the sink:
 *     m = max(S_h, m_i), l = e^(S_h - m) + sum l_i e^(m_i - m). The number of slices is chosen so
 *     that about two blocks per SM run even for one token at a long context.
 *   - prefill / large batches: tiled. A block takes a tile of qt = 64 / group consecutive tokens
 *     times the group's heads (64 query rows) and streams 32-key tiles of K and V through shared
 *     memory once for all 64 rows; each row masks keys outside its own window [lo, pos]. Tokens
 *     of a tile that belong to different sequences (different block tables) are processed as
 *     separate segments. With a single slice the online softmax starts from the sink (m = S_h,
 *     l = 1), exactly as the CPU reference does, and the output is written directly.
 * A warp owns up to 8 query rows; lane j scores key j of the tile (q.k in fp32 from shared memory)
 * and owns output dims j and j + 32. K/V in the cache may be fp32 or bf16 (widened on load).
 * Head dims up to 64 (gpt-oss: 64; the tiny test model: 16).
 *
 * Not here: tensor-core QK^T / PV (the FMA version is far from the roofline at prefill; decode
 * is bandwidth-bound and fine), KV layout changes. */
#include <assert.h>
#include <limits.h>
#include <math.h>

#include "cuda_internal.cuh"

#define AT_DMAX       OPS_CUDA_ATTN_MAX_D /* head_dim bound of the shared tiles */
#define AT_KT         32                  /* keys per tile (one per lane) */
#define AT_WARPS      8                   /* warps per block */
#define AT_SLOTS      8                   /* query rows per warp */
#define AT_MAXROWS    (AT_WARPS * AT_SLOTS)
#define AT_MAX_SPLITS 32
#define AT_PSTRIDE    (AT_DMAX + 2) /* floats per partial: acc[DMAX], m, l */

typedef struct {
    const float *q; /* [T][n_heads][D] */
    int T, n_heads, group, D;
    const void *k, *v;     /* paged cache of dtype KV */
    int block_size, n_kv;  /* slots per block, kv heads */
    const ops_tok_t *toks; /* [T] (device) */
    int window;            /* 0 = full */
    const uint16_t *sinks; /* [n_heads] bf16 */
    float sm_scale;
    int qt, n_splits; /* tokens per tile, key slices */
    float *out;       /* [T][n_heads][D] (n_splits == 1) */
    float *part;      /* [T][n_heads][n_splits][AT_PSTRIDE] (n_splits > 1) */
} s_attn_args_t;

__device__ __forceinline__ float s_ld(const float *p) {
    return *p;
}
__device__ __forceinline__ float s_ld(const __nv_bfloat16 *p) {
    return __bfloat162float(*p);
}

__device__ __forceinline__ int s_lo(int pos, int window) {
    return window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
}

template <typename KV> __global__ void __launch_bounds__(AT_WARPS * 32) k_attn(s_attn_args_t a) {
    __shared__ float Qs[AT_MAXROWS][AT_DMAX];
    __shared__ float Ks[AT_KT][AT_DMAX + 1]; /* +1: lane j reads row j, conflict-free */
    __shared__ float Vs[AT_KT][AT_DMAX];
    const int split = blockIdx.x, kvh = blockIdx.y;
    const int t0 = blockIdx.z * a.qt, t1 = min(a.T, t0 + a.qt);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int D = a.D, G = a.group, bs = a.block_size;
    const KV *kc = (const KV *)a.k, *vc = (const KV *)a.v;

    for (int s0 = t0; s0 < t1;) {
        /* segment: consecutive tokens of one sequence (same block table) */
        const int32_t *blocks = a.toks[s0].blocks;
        int s1 = s0 + 1;
        while (s1 < t1 && a.toks[s1].blocks == blocks)
            s1++;
        int klo = INT_MAX, khi = -1;
        for (int t = s0; t < s1; t++) {
            const int p = a.toks[t].pos;
            klo = min(klo, s_lo(p, a.window));
            khi = max(khi, p);
        }
        /* this block's slice of the key range, whole tiles */
        int per = (khi - klo + 1 + a.n_splits - 1) / a.n_splits;
        per = (per + AT_KT - 1) / AT_KT * AT_KT;
        const int kb0 = klo + split * per, kb1 = min(khi, kb0 + per - 1);
        const int nrows = (s1 - s0) * G;

        for (int e = threadIdx.x; e < nrows * D; e += blockDim.x) {
            const int i = e / D, d = e % D;
            const int t = s0 + i / G, h = kvh * G + i % G;
            Qs[i][d] = a.q[((size_t)t * a.n_heads + h) * D + d];
        }
        float m[AT_SLOTS], l[AT_SLOTS], acc0[AT_SLOTS], acc1[AT_SLOTS];
        int rlo[AT_SLOTS], rhi[AT_SLOTS];
#pragma unroll
        for (int sl = 0; sl < AT_SLOTS; sl++) {
            const int i = warp + AT_WARPS * sl;
            m[sl] = -INFINITY, l[sl] = 0.0f, acc0[sl] = 0.0f, acc1[sl] = 0.0f;
            rlo[sl] = 1, rhi[sl] = 0; /* empty */
            if (i < nrows) {
                const int t = s0 + i / G, h = kvh * G + i % G, p = a.toks[t].pos;
                rlo[sl] = s_lo(p, a.window);
                rhi[sl] = p;
                if (a.n_splits == 1) { /* seeded with the sink: m = S_h, l = e^0 */
                    m[sl] = cuda_bf16_to_f32(a.sinks[h]);
                    l[sl] = 1.0f;
                }
            }
        }
        __syncthreads();

        for (int kb = kb0; kb <= kb1; kb += AT_KT) {
            for (int e = threadIdx.x; e < AT_KT * D; e += blockDim.x) {
                const int key = e / D, d = e % D, j = kb + key;
                float kk = 0.0f, vv = 0.0f;
                if (j <= kb1) {
                    const int32_t b = blocks[j / bs];
                    if (b >= 0) { /* -1: a block dropped from a sliding window, never scored */
                        const size_t off =
                            (((size_t)b * bs + (size_t)(j % bs)) * a.n_kv + kvh) * D + d;
                        kk = s_ld(kc + off);
                        vv = s_ld(vc + off);
                    }
                }
                Ks[key][d] = kk;
                Vs[key][d] = vv;
            }
            __syncthreads();
            const int j = kb + lane;
#pragma unroll
            for (int sl = 0; sl < AT_SLOTS; sl++) {
                const int i = warp + AT_WARPS * sl;
                if (i >= nrows) break; /* uniform over the warp */
                float s = -INFINITY;
                if (j >= rlo[sl] && j <= rhi[sl] && j <= kb1) {
                    float dot = 0.0f;
                    for (int d = 0; d < D; d++)
                        dot = fmaf(Qs[i][d], Ks[lane][d], dot);
                    s = dot * a.sm_scale;
                }
                const float mn = fmaxf(m[sl], cuda_warp_max(s));
                if (mn == -INFINITY) continue; /* nothing scored yet for this row */
                const float r = expf(m[sl] - mn), p = expf(s - mn);
                l[sl] = l[sl] * r + cuda_warp_sum(p);
                float o0 = acc0[sl] * r, o1 = acc1[sl] * r;
                for (int k = 0; k < AT_KT; k++) {
                    const float pk = __shfl_sync(0xffffffffu, p, k);
                    o0 = fmaf(pk, Vs[k][lane], o0);
                    if (D > 32) o1 = fmaf(pk, Vs[k][lane + 32], o1);
                }
                acc0[sl] = o0, acc1[sl] = o1, m[sl] = mn;
            }
            __syncthreads();
        }

#pragma unroll
        for (int sl = 0; sl < AT_SLOTS; sl++) {
            const int i = warp + AT_WARPS * sl;
            if (i >= nrows) break;
            const int t = s0 + i / G, h = kvh * G + i % G;
            const size_t row = (size_t)t * a.n_heads + h;
            if (a.n_splits == 1) {
                const float inv = 1.0f / l[sl];
                if (lane < D) a.out[row * D + lane] = acc0[sl] * inv;
                if (lane + 32 < D) a.out[row * D + lane + 32] = acc1[sl] * inv;
            } else {
                float *pp = a.part + (row * a.n_splits + split) * AT_PSTRIDE;
                if (lane < D) pp[lane] = acc0[sl];
                if (lane + 32 < D) pp[lane + 32] = acc1[sl];
                if (lane == 0) pp[AT_DMAX] = m[sl], pp[AT_DMAX + 1] = l[sl];
            }
        }
        __syncthreads(); /* Qs is rewritten by the next segment */
        s0 = s1;
    }
}

/* Merges the n_splits partials of row (t, h) with the sink; thread d writes output dim d. */
__global__ void k_attn_combine(const float *part, int n_heads, int D, int n_splits,
                               const uint16_t *sinks, float *out) {
    const size_t row = blockIdx.x;
    const int h = (int)(row % (size_t)n_heads), d = threadIdx.x;
    const float *pp = part + row * n_splits * AT_PSTRIDE;
    const float sink = cuda_bf16_to_f32(sinks[h]);
    float m = sink;
    for (int s = 0; s < n_splits; s++)
        m = fmaxf(m, pp[s * AT_PSTRIDE + AT_DMAX]);
    float l = expf(sink - m), o = 0.0f;
    for (int s = 0; s < n_splits; s++) {
        const float ms = pp[s * AT_PSTRIDE + AT_DMAX];
        if (ms == -INFINITY) continue; /* empty slice */
        const float f = expf(ms - m);
        l += pp[s * AT_PSTRIDE + AT_DMAX + 1] * f;
        if (d < D) o += pp[s * AT_PSTRIDE + d] * f;
    }
    if (d < D) out[row * D + d] = o / l;
}

void cuda_op_attention(const ops_t *o, const float *q, int T, int n_heads, const ops_kv_t *kv,
                       const ops_tok_t *toks, int window, const uint16_t *sinks, float sm_scale,
                       float *out) {
    if (T <= 0 || n_heads <= 0) return;
    assert(n_heads % kv->n_kv_heads == 0);
    const int G = n_heads / kv->n_kv_heads;
    assert(G <= OPS_CUDA_ATTN_MAX_GROUP && kv->head_dim <= AT_DMAX);
    cuda_state_t *c = cuda_state(o);
    const int qt = T <= 8 ? 1 : (AT_MAXROWS / G > 1 ? AT_MAXROWS / G : 1);
    const int tiles = (T + qt - 1) / qt;
    const long blocks = (long)tiles * kv->n_kv_heads;
    int n_splits = 1;
    if (blocks < 2L * c->n_sm) {
        long s = (2L * c->n_sm + blocks - 1) / blocks;
        n_splits = (int)(s > AT_MAX_SPLITS ? AT_MAX_SPLITS : s);
    }
    s_attn_args_t a = {q,
                       T,
                       n_heads,
                       G,
                       kv->head_dim,
                       kv->k,
                       kv->v,
                       kv->block_size,
                       kv->n_kv_heads,
                       toks,
                       window,
                       sinks,
                       sm_scale,
                       qt,
                       n_splits,
                       out,
                       NULL};
    if (n_splits > 1)
        a.part = (float *)cuda_scratch(c, CUDA_SCRATCH_ATTN,
                                       (size_t)T * n_heads * n_splits * AT_PSTRIDE * sizeof(float));
    dim3 grid(n_splits, kv->n_kv_heads, tiles);
    if (kv->dtype == OPS_KV_F32)
        k_attn<float><<<grid, AT_WARPS * 32, 0, c->stream>>>(a);
    else
        k_attn<__nv_bfloat16><<<grid, AT_WARPS * 32, 0, c->stream>>>(a);
    CUDA_CHECK_LAUNCH("k_attn");
    if (n_splits > 1) {
        k_attn_combine<<<(unsigned)(T * n_heads), AT_DMAX, 0, c->stream>>>(
            a.part, n_heads, kv->head_dim, n_splits, sinks, out);
        CUDA_CHECK_LAUNCH("k_attn_combine");
    }
}
