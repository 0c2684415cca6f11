/* misc: the small ops of the CUDA backend - embed, rmsnorm (and fused add + rmsnorm), rope,
 * kv_write, router_topk, swiglu, add, axpy, gather_rows.
 *
 * All fp32, memory-bound, one launch each; they follow the CPU reference (kernels/cpu/ops_cpu.c)
 * operation by operation so that results agree to float rounding (rmsnorm sums in fp32 by a tree
 * instead of the CPU's double loop; router_topk uses the same selection order and a double
 * softmax). Not here: matmuls, attention, sampling. */
#include <assert.h>
#include <math.h>

#include "cuda_internal.cuh"

#define S_THREADS 256

static inline unsigned s_blocks(size_t n, int threads) {
    size_t b = (n + (size_t)threads - 1) / (size_t)threads;
    return (unsigned)(b > 65535u * 32u ? 65535u * 32u : b); /* grid-stride loops cover the rest */
}

/* ---- embed ------------------------------------------------------------------------------- */

__global__ void k_embed(const uint16_t *table, size_t stride, int n, const int32_t *ids,
                        float *out) {
    const int t = blockIdx.x;
    const uint16_t *row = table + (size_t)ids[t] * stride;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        out[(size_t)t * n + i] = cuda_bf16_to_f32(row[i]);
}

void cuda_op_embed(const ops_t *o, const uint16_t *table, size_t stride, int n, const int32_t *ids,
                   int T, float *out) {
    if (T <= 0 || n <= 0) return;
    k_embed<<<T, S_THREADS, 0, cuda_state(o)->stream>>>(table, stride, n, ids, out);
    CUDA_CHECK_LAUNCH("k_embed");
}

/* ---- rmsnorm ----------------------------------------------------------------------------- */

/* The end of both norm kernels: the block's sum of the per-thread ss, then yt[i] = (xt[i] *
 * inv) * w[i] over the elements this thread owns (i = threadIdx.x, + blockDim.x, ...). */
__device__ void s_rms_finish(const float *xt, float ss, const uint16_t *w, int n, float eps,
                             float *yt) {
    __shared__ float part[S_THREADS / 32];
    ss = cuda_warp_sum(ss);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    float tot = 0.0f;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++)
        tot += part[i];
    const float inv = (float)(1.0 / sqrt((double)tot / n + (double)eps));
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        yt[i] = (xt[i] * inv) * cuda_bf16_to_f32(w[i]);
}

/* One block per row; each thread reads and later writes the same elements, so out may be x. */
__global__ void k_rmsnorm(const float *x, const uint16_t *w, int n, float eps, float *out) {
    const float *xt = x + (size_t)blockIdx.x * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        ss += xt[i] * xt[i];
    s_rms_finish(xt, ss, w, n, eps, out + (size_t)blockIdx.x * n);
}

/* x += y, then the rmsnorm of k_rmsnorm on the new x; each thread writes back and later reads
 * only its own elements of x. */
__global__ void k_add_rmsnorm(float *x, const float *y, const uint16_t *w, int n, float eps,
                              float *out) {
    float *xt = x + (size_t)blockIdx.x * n;
    const float *ys = y + (size_t)blockIdx.x * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = xt[i] + ys[i];
        xt[i] = v;
        ss += v * v;
    }
    s_rms_finish(xt, ss, w, n, eps, out + (size_t)blockIdx.x * n);
}

void cuda_op_add_rmsnorm(const ops_t *o, float *x, const float *y, const uint16_t *w, int T, int n,
                         float eps, float *out) {
    if (T <= 0 || n <= 0) return;
    k_add_rmsnorm<<<T, S_THREADS, 0, cuda_state(o)->stream>>>(x, y, w, n, eps, out);
    CUDA_CHECK_LAUNCH("k_add_rmsnorm");
}

void cuda_op_rmsnorm(const ops_t *o, const float *x, const uint16_t *w, int T, int n, float eps,
                     float *out) {
    if (T <= 0 || n <= 0) return;
    k_rmsnorm<<<T, S_THREADS, 0, cuda_state(o)->stream>>>(x, w, n, eps, out);
    CUDA_CHECK_LAUNCH("k_rmsnorm");
}

/* ---- rope -------------------------------------------------------------------------------- */

/* One block per token, threads over (head, i < D/2) pairs. */
__global__ void k_rope(float *x, int n_heads, int D, const float *cs) {
    const int t = blockIdx.x, half = D / 2;
    const float *c = cs + (size_t)t * D, *s = c + half;
    for (int e = threadIdx.x; e < n_heads * half; e += blockDim.x) {
        int h = e / half, i = e % half;
        float *v = x + ((size_t)t * n_heads + h) * D;
        float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
    }
}

void cuda_op_rope(const ops_t *o, float *x, int T, int n_heads, int D, const float *cs) {
    if (T <= 0 || n_heads <= 0) return;
    assert(D % 2 == 0);
    k_rope<<<T, S_THREADS, 0, cuda_state(o)->stream>>>(x, n_heads, D, cs);
    CUDA_CHECK_LAUNCH("k_rope");
}

/* ---- kv_write ---------------------------------------------------------------------------- */

template <typename KV> __device__ __forceinline__ KV s_kv_from(float f);
template <> __device__ __forceinline__ float s_kv_from<float>(float f) {
    return f;
}
template <> __device__ __forceinline__ __nv_bfloat16 s_kv_from<__nv_bfloat16>(float f) {
    return __float2bfloat16_rn(f);
}

template <typename KV>
__global__ void k_kv_write(KV *kc, KV *vc, int block_size, size_t row, const float *k,
                           const float *v, const ops_tok_t *toks) {
    const int t = blockIdx.x;
    const int p = toks[t].pos;
    const int32_t b = toks[t].blocks[p / block_size];
    const size_t off = ((size_t)b * block_size + (size_t)(p % block_size)) * row;
    for (size_t i = threadIdx.x; i < row; i += blockDim.x) {
        kc[off + i] = s_kv_from<KV>(k[(size_t)t * row + i]);
        vc[off + i] = s_kv_from<KV>(v[(size_t)t * row + i]);
    }
}

void cuda_op_kv_write(const ops_t *o, const ops_kv_t *kv, const float *k, const float *v,
                      const ops_tok_t *toks, int T) {
    if (T <= 0) return;
    const size_t row = (size_t)kv->n_kv_heads * kv->head_dim;
    cudaStream_t st = cuda_state(o)->stream;
    if (kv->dtype == OPS_KV_F32)
        k_kv_write<float><<<T, S_THREADS, 0, st>>>((float *)kv->k, (float *)kv->v, kv->block_size,
                                                   row, k, v, toks);
    else
        k_kv_write<__nv_bfloat16><<<T, S_THREADS, 0, st>>>(
            (__nv_bfloat16 *)kv->k, (__nv_bfloat16 *)kv->v, kv->block_size, row, k, v, toks);
    CUDA_CHECK_LAUNCH("k_kv_write");
}

/* ---- router_topk ------------------------------------------------------------------------- */

/* One thread per token: E is 32 or 128 and k is 4, so the CPU's O(k E) selection (ties -> lower
 * index) is cheaper than any cooperative scheme and gives the same order. */
__global__ void k_router_topk(const float *z, int T, int E, int k, int32_t *idx, float *w) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= T) return;
    const float *zt = z + (size_t)t * E;
    int32_t *it = idx + (size_t)t * k;
    float *wt = w + (size_t)t * k;
    for (int a = 0; a < k; a++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            bool taken = false;
            for (int b = 0; b < a; b++)
                taken |= it[b] == e;
            if (taken) continue;
            if (best < 0 || zt[e] > zt[best]) best = e;
        }
        it[a] = best;
    }
    double mx = zt[it[0]], sum = 0.0;
    for (int a = 0; a < k; a++)
        sum += exp((double)zt[it[a]] - mx);
    for (int a = 0; a < k; a++)
        wt[a] = (float)(exp((double)zt[it[a]] - mx) / sum);
}

void cuda_op_router_topk(const ops_t *o, const float *z, int T, int E, int k, int32_t *idx,
                         float *w) {
    if (T <= 0) return;
    assert(k >= 1 && k <= E && k <= 64);
    k_router_topk<<<(T + 127) / 128, 128, 0, cuda_state(o)->stream>>>(z, T, E, k, idx, w);
    CUDA_CHECK_LAUNCH("k_router_topk");
}

/* ---- swiglu, add, axpy ------------------------------------------------------------------- */

__global__ void k_swiglu(const float *h, size_t n, int I, float alpha, float limit, float *out) {
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n;
         e += (size_t)gridDim.x * blockDim.x) {
        size_t t = e / (size_t)I, i = e % (size_t)I;
        const float *ht = h + t * 2 * (size_t)I;
        float g = ht[2 * i], u = ht[2 * i + 1];
        if (g > limit) g = limit; /* comparisons, not fminf: a NaN stays NaN as on the CPU */
        if (u > limit) u = limit;
        if (u < -limit) u = -limit;
        float sig = 1.0f / (1.0f + expf(-alpha * g));
        out[e] = g * sig * (u + 1.0f);
    }
}

void cuda_op_swiglu(const ops_t *o, const float *h, int T, int I, float alpha, float limit,
                    float *out) {
    size_t n = (size_t)T * (size_t)I;
    if (T <= 0 || I <= 0) return;
    k_swiglu<<<s_blocks(n, S_THREADS), S_THREADS, 0, cuda_state(o)->stream>>>(h, n, I, alpha, limit,
                                                                              out);
    CUDA_CHECK_LAUNCH("k_swiglu");
}

__global__ void k_axpy(float *x, float a, const float *y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] += a * y[i];
}

__global__ void k_add(float *x, const float *y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] += y[i];
}

void cuda_op_add(const ops_t *o, float *x, const float *y, size_t n) {
    if (!n) return;
    k_add<<<s_blocks(n, S_THREADS), S_THREADS, 0, cuda_state(o)->stream>>>(x, y, n);
    CUDA_CHECK_LAUNCH("k_add");
}

void cuda_op_axpy(const ops_t *o, float *x, float a, const float *y, size_t n) {
    if (!n) return;
    k_axpy<<<s_blocks(n, S_THREADS), S_THREADS, 0, cuda_state(o)->stream>>>(x, a, y, n);
    CUDA_CHECK_LAUNCH("k_axpy");
}

/* ---- gather_rows ------------------------------------------------------------------------- */

/* One block per output row; float4 copies when both rows are 16-byte aligned. */
__global__ void k_gather_rows(const float *src, const int32_t *rows, int n, float *dst) {
    const int r = blockIdx.x;
    const float *s = src + (size_t)rows[r] * n;
    float *d = dst + (size_t)r * n;
    if (n % 4 == 0 && ((uintptr_t)s | (uintptr_t)d) % 16 == 0) {
        for (int i = threadIdx.x; i < n / 4; i += blockDim.x)
            ((float4 *)d)[i] = ((const float4 *)s)[i];
    } else {
        for (int i = threadIdx.x; i < n; i += blockDim.x)
            d[i] = s[i];
    }
}

void cuda_op_gather_rows(const ops_t *o, const float *src, const int32_t *rows, int R, int n,
                         float *dst) {
    if (R <= 0 || n <= 0) return;
    k_gather_rows<<<R, S_THREADS, 0, cuda_state(o)->stream>>>(src, rows, n, dst);
    CUDA_CHECK_LAUNCH("k_gather_rows");
}

/* ---- bandwidth probe (gptoss-bench) -------------------------------------------------------- */

/* Reads n 16-byte words with a grid-stride loop; the xor reaches memory only in a case that never
 * happens, which the compiler cannot know, so every load stays. */
__global__ void k_read_probe(const uint4 *p, size_t n, uint32_t *sink) {
    uint32_t acc = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = __ldcs(p + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u) *sink = acc;
}

void ops_cuda_bandwidth(const ops_t *o, size_t bytes, int reps, double *read_bps,
                        double *copy_bps) {
    cuda_state_t *c = cuda_state(o);
    cudaStream_t st = c->stream;
    bytes &= ~(size_t)15;
    void *a = NULL, *b = NULL;
    uint32_t *sink = NULL;
    CUDA_CHECK(cudaSetDevice(c->device));
    CUDA_CHECK(cudaMalloc(&a, bytes));
    CUDA_CHECK(cudaMalloc(&b, bytes));
    CUDA_CHECK(cudaMalloc(&sink, sizeof *sink));
    CUDA_CHECK(cudaMemsetAsync(a, 1, bytes, st));
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    double best_r = 0.0, best_c = 0.0;
    for (int r = 0; r < reps; r++) {
        float ms = 0.0f;
        CUDA_CHECK(cudaEventRecord(e0, st));
        k_read_probe<<<c->n_sm * 8, 512, 0, st>>>((const uint4 *)a, bytes / 16, sink);
        CUDA_CHECK_LAUNCH("k_read_probe");
        CUDA_CHECK(cudaEventRecord(e1, st));
        CUDA_CHECK(cudaEventSynchronize(e1));
        CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        if (ms > 0 && bytes / (ms * 1e-3) > best_r) best_r = bytes / (ms * 1e-3);
        CUDA_CHECK(cudaEventRecord(e0, st));
        CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, st));
        CUDA_CHECK(cudaEventRecord(e1, st));
        CUDA_CHECK(cudaEventSynchronize(e1));
        CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        if (ms > 0 && 2.0 * bytes / (ms * 1e-3) > best_c) best_c = 2.0 * bytes / (ms * 1e-3);
    }
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    CUDA_CHECK(cudaFree(a));
    CUDA_CHECK(cudaFree(b));
    CUDA_CHECK(cudaFree(sink));
    if (read_bps) *read_bps = best_r;
    if (copy_bps) *copy_bps = best_c;
}
