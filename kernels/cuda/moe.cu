/* moe: the experts of one MoE layer for T tokens, entirely on the device (ops.h `moe`).
 *
 * No host synchronisation and no host-side decision that depends on the routing, so the op can be
 * captured in a CUDA graph and replayed with new router outputs. Six launches:
 *   1. k_moe_route (one block): a stable counting sort of the T*K (token, k) pairs by expert -
 *      counts, offsets, and per pair its sorted position; pairs of one expert stay in token order.
 *      It also writes the work lists of the grouped matmuls: experts with 1..MM_GEMV_MAXT tokens
 *      (GEMV class) and 64-token tiles of the larger experts (MMA class).
 *   2. gather: the tokens' rows of a, in sorted order (expert-major), into xg [N][H].
 *   3. gate_up: grouped MXFP4 matmul over all experts in one launch per class. The grids are
 *      upper bounds (GEMV: min(E, N) expert slots; MMA: N/64 + min(E, N/9) tiles); each block reads
 *      its entry of the work list and exits early when it has none. Blocks run the device
 *      functions of matmul.cu (matmul_dev.cuh): weights decoded in registers, activations rounded
 *      to bf16, fp32 accumulation, the expert's bias added.
 *   4. clamped SwiGLU over the N rows (misc.cu's kernel).
 *   5. down: the same grouped matmul, [N][nu] -> [N][H].
 *   6. k_moe_combine (one block per token): out[t] = sum over the token's K experts in ascending
 *      expert index of w * y, the order of the CPU reference (batch invariance).
 * Scratch (routing arrays and the N-row buffers) is the backend's MoE slot, sized on the first
 * call with a given T: run a step eagerly before capturing it (ops_cuda.h).
 *
 * Not here: expert-parallel dispatch, fused SwiGLU in the gate_up epilogue, cp.async pipelining. */
#include <assert.h>
#include <stdint.h>

#include "matmul_dev.cuh"

#define MOE_ROUTE_CHUNK 2048 /* pairs staged in shared memory per pass of the placement */
#define MOE_COMBINE_T   256  /* threads of the combine kernel */
#define MOE_KMAX        64   /* largest K (top-k) */

/* Routing metadata (int32, in scratch): counts[E], offsets[E+1], n_gemv, gemv[E], n_tiles,
 * tiles[2 * max_tiles] (expert, first token), then pair_tok[N] (token of sorted row p) and
 * pos[N] (sorted row of pair i = t * K + j, -1 for an invalid expert index). */
typedef struct {
    int32_t *counts, *offsets, *n_gemv, *gemv, *n_tiles, *tiles, *pair_tok, *pos;
} s_route_t;

static __host__ __device__ inline size_t s_route_ints(int E, int N, int max_tiles) {
    return (size_t)E + (E + 1) + 1 + E + 1 + 2 * (size_t)max_tiles + 2 * (size_t)N;
}

static __host__ __device__ inline s_route_t s_route_at(int32_t *base, int E, int N, int max_tiles) {
    s_route_t r;
    r.counts = base;
    r.offsets = r.counts + E;
    r.n_gemv = r.offsets + E + 1;
    r.gemv = r.n_gemv + 1;
    r.n_tiles = r.gemv + E;
    r.tiles = r.n_tiles + 1;
    r.pair_tok = r.tiles + 2 * (size_t)max_tiles;
    r.pos = r.pair_tok + N;
    return r;
}

/* Upper bound of the MMA tiles: experts above MM_GEMV_MAXT tokens number at most
 * N / (MM_GEMV_MAXT + 1), and each has at most one partial tile. */
static inline int s_max_tiles(int E, int N) {
    int big = N / (MM_GEMV_MAXT + 1);
    return N / MM_BM + (big < E ? big : E) + 1;
}

/* One block. Dynamic shared memory: E counters, E running offsets, MOE_ROUTE_CHUNK staged
 * expert indices. Pass 1 counts pairs per expert (shared atomics); thread 0 makes the offsets and
 * the work lists; pass 2 places the pairs: thread e scans each staged chunk in order and takes
 * the pairs of expert e, so the placement is stable (token order within an expert). */
__global__ void k_moe_route(const int32_t *idx, int N, int K, int E, int max_tiles, s_route_t r) {
    extern __shared__ int32_t s_sh[];
    int32_t *cnt = s_sh, *run = s_sh + E, *chunk = s_sh + 2 * E;
    for (int e = threadIdx.x; e < E; e += blockDim.x)
        cnt[e] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < N; i += blockDim.x) {
        const int e = idx[i];
        if (e >= 0 && e < E) atomicAdd(&cnt[e], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int off = 0, ng = 0, nt = 0;
        for (int e = 0; e < E; e++) {
            const int n = cnt[e];
            r.counts[e] = n;
            r.offsets[e] = off;
            run[e] = off;
            off += n;
            if (n == 0) continue;
            if (n <= MM_GEMV_MAXT) {
                r.gemv[ng++] = e;
            } else {
                for (int m0 = 0; m0 < n && nt < max_tiles; m0 += MM_BM, nt++) {
                    r.tiles[2 * nt] = e;
                    r.tiles[2 * nt + 1] = m0;
                }
            }
        }
        r.offsets[E] = off;
        *r.n_gemv = ng;
        *r.n_tiles = nt;
    }
    __syncthreads();
    /* rows no pair fills (only with invalid expert indices) gather token 0, never garbage */
    for (int p = r.offsets[E] + threadIdx.x; p < N; p += blockDim.x)
        r.pair_tok[p] = 0;
    for (int base = 0; base < N; base += MOE_ROUTE_CHUNK) {
        const int n = min(MOE_ROUTE_CHUNK, N - base);
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const int e = idx[base + i];
            chunk[i] = e;
            if (e < 0 || e >= E) r.pos[base + i] = -1;
        }
        __syncthreads();
        for (int e = threadIdx.x; e < E; e += blockDim.x) {
            int p = run[e];
            for (int i = 0; i < n; i++) {
                if (chunk[i] == e) {
                    r.pair_tok[p] = (base + i) / K;
                    r.pos[base + i] = p;
                    p++;
                }
            }
            run[e] = p;
        }
        __syncthreads();
    }
}

/* Expert e's matrix of a set (the kernel-side view moved by e times the expert strides). */
typedef struct {
    s_mxfp4_w_t w0;       /* expert 0 */
    size_t bes, ses;      /* bytes between experts in blocks and scales */
    const uint16_t *bias; /* expert 0's bias or NULL */
    size_t bias_es;       /* elements between experts in bias */
} s_experts_t;

__device__ __forceinline__ s_mxfp4_w_t s_expert_w(const s_experts_t &x, int e) {
    s_mxfp4_w_t w = x.w0;
    w.blocks += (size_t)e * x.bes;
    w.scales += (size_t)e * x.ses;
    return w;
}

__device__ __forceinline__ const uint16_t *s_expert_bias(const s_experts_t &x, int e) {
    return x.bias ? x.bias + (size_t)e * x.bias_es : NULL;
}

/* GEMV class: block (row group, slot j); slot j < n_gemv takes expert gemv[j] and its
 * (<= MM_GEMV_MAXT) rows of x (sorted order, [N][cols]) -> the same rows of y ([N][rows]). */
__global__ void __launch_bounds__(MM_GEMV_WARPS * 32)
    k_moe_gemv(const float *x, bool xvec, s_experts_t X, s_route_t r, float *y) {
    const int j = blockIdx.y;
    if (j >= *r.n_gemv) return;
    const int e = r.gemv[j];
    const int row = blockIdx.x * MM_GEMV_WARPS + (threadIdx.x >> 5);
    const s_mxfp4_w_t W = s_expert_w(X, e);
    if (row >= W.rows) return;
    const size_t off = (size_t)r.offsets[e];
    s_gemv_mxfp4_row(x + off * W.cols, r.counts[e], xvec, W, s_expert_bias(X, e), y + off * W.rows,
                     row, threadIdx.x & 31);
}

/* MMA class: block (64-output tile, work tile j); tile j < n_tiles covers tokens m0..m0+64 of
 * expert tiles[2j]. */
__global__ void __launch_bounds__(MM_THREADS)
    k_moe_mma(const float *x, bool xvec, s_experts_t X, s_route_t r, float *y) {
    const int j = blockIdx.y;
    if (j >= *r.n_tiles) return;
    const int e = r.tiles[2 * j], m0 = r.tiles[2 * j + 1];
    const s_mxfp4_w_t W = s_expert_w(X, e);
    const size_t off = (size_t)r.offsets[e];
    s_mma_tile(x + off * W.cols, r.counts[e], xvec, W, s_expert_bias(X, e), y + off * W.rows,
               blockIdx.x * MM_BN, m0);
}

/* out[t] = sum over the token's experts, ascending expert index, of w * y[pos]. */
__global__ void __launch_bounds__(MOE_COMBINE_T)
    k_moe_combine(const int32_t *idx, const float *w, int K, int H, const int32_t *pos,
                  const float *y, float *out) {
    __shared__ int32_t se[MOE_KMAX], sp[MOE_KMAX];
    __shared__ float sw[MOE_KMAX];
    const int t = blockIdx.x;
    if (threadIdx.x == 0) {
        int n = 0;
        for (int j = 0; j < K; j++) { /* insertion by expert index (K is small) */
            const int e = idx[(size_t)t * K + j], p = pos[(size_t)t * K + j];
            if (p < 0) continue;
            int i = n++;
            while (i > 0 && se[i - 1] > e) {
                se[i] = se[i - 1], sp[i] = sp[i - 1], sw[i] = sw[i - 1];
                i--;
            }
            se[i] = e, sp[i] = p, sw[i] = w[(size_t)t * K + j];
        }
        for (int i = n; i < K; i++)
            sp[i] = -1;
    }
    __syncthreads();
    for (int h = threadIdx.x; h < H; h += blockDim.x) {
        float acc = 0.0f;
        for (int i = 0; i < K && sp[i] >= 0; i++)
            acc += sw[i] * y[(size_t)sp[i] * H + h];
        out[(size_t)t * H + h] = acc;
    }
}

static bool s_aligned16(const void *p) {
    return ((uintptr_t)p % 16) == 0;
}

static s_experts_t s_experts(const ops_experts_t *x) {
    const ops_mxfp4_mat_t *m = &x->mat;
    s_experts_t s;
    s.w0 = {m->blocks,
            m->scales,
            m->blocks_stride,
            m->scales_stride,
            m->rows,
            m->cols,
            s_aligned16(m->blocks) && m->blocks_stride % 16 == 0 && x->blocks_estride % 16 == 0};
    s.bes = x->blocks_estride;
    s.ses = x->scales_estride;
    s.bias = x->bias;
    s.bias_es = x->bias_estride;
    return s;
}

/* The grouped matmul y[N][rows] = per-expert W_e x + b_e over the sorted rows x [N][cols]. */
static void s_grouped(cudaStream_t st, const float *x, const s_experts_t &X, const s_route_t &r,
                      int E, int N, int T, int max_tiles, float *y) {
    const bool xvec = s_aligned16(x);
    const int slots = E < N ? E : N;
    dim3 gg((X.w0.rows + MM_GEMV_WARPS - 1) / MM_GEMV_WARPS, slots);
    k_moe_gemv<<<gg, MM_GEMV_WARPS * 32, 0, st>>>(x, xvec, X, r, y);
    CUDA_CHECK_LAUNCH("k_moe_gemv");
    if (T > MM_GEMV_MAXT) { /* below, no expert can have more than MM_GEMV_MAXT tokens */
        dim3 gm((X.w0.rows + MM_BN - 1) / MM_BN, max_tiles);
        k_moe_mma<<<gm, MM_THREADS, 0, st>>>(x, xvec, X, r, y);
        CUDA_CHECK_LAUNCH("k_moe_mma");
    }
}

static size_t s_round256(size_t b) {
    return (b + 255) & ~(size_t)255;
}

void cuda_op_moe(const ops_t *o, const float *a, int T, const int32_t *idx, const float *w, int K,
                 const ops_moe_t *m, float *out) {
    if (T <= 0) return;
    cuda_state_t *c = cuda_state(o);
    cudaStream_t st = c->stream;
    const int H = m->gate_up.mat.cols, nu = m->down.mat.cols, E = m->n_experts;
    if (nu <= 0 || m->gate_up.mat.rows <= 0) { /* no expert units on this shard */
        CUDA_CHECK(cudaMemsetAsync(out, 0, (size_t)T * H * sizeof(float), st));
        return;
    }
    assert(K >= 1 && K <= MOE_KMAX && E >= 1 && E <= OPS_CUDA_MOE_MAX_E);
    assert(m->gate_up.mat.rows == 2 * nu && m->down.mat.rows == H && H % 32 == 0 && nu % 32 == 0);
    const int N = T * K, max_tiles = s_max_tiles(E, N);
    const size_t b_route = s_round256(s_route_ints(E, N, max_tiles) * sizeof(int32_t));
    const size_t b_x = s_round256((size_t)N * H * sizeof(float));
    const size_t b_h = s_round256((size_t)N * 2 * nu * sizeof(float));
    const size_t b_a = s_round256((size_t)N * nu * sizeof(float));
    uint8_t *s = (uint8_t *)cuda_scratch(c, CUDA_SCRATCH_MOE, b_route + b_x + b_h + b_a + b_x);
    const s_route_t r = s_route_at((int32_t *)s, E, N, max_tiles);
    float *xg = (float *)(s + b_route), *h = (float *)(s + b_route + b_x);
    float *act = (float *)(s + b_route + b_x + b_h), *y = (float *)(s + b_route + b_x + b_h + b_a);

    const int rt = E > 256 ? 1024 : 256;
    const size_t rsh = (2 * (size_t)E + MOE_ROUTE_CHUNK) * sizeof(int32_t);
    k_moe_route<<<1, rt, rsh, st>>>(idx, N, K, E, max_tiles, r);
    CUDA_CHECK_LAUNCH("k_moe_route");
    cuda_op_gather_rows(o, a, r.pair_tok, N, H, xg);
    s_grouped(st, xg, s_experts(&m->gate_up), r, E, N, T, max_tiles, h);
    cuda_op_swiglu(o, h, N, nu, m->alpha, m->limit, act);
    s_grouped(st, act, s_experts(&m->down), r, E, N, T, max_tiles, y);
    k_moe_combine<<<T, MOE_COMBINE_T, 0, st>>>(idx, w, K, H, r.pos, y, out);
    CUDA_CHECK_LAUNCH("k_moe_combine");
}
