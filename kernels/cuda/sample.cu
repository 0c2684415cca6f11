/* sample: token choice on the GPU - argmax, and seeded sampling that reproduces
 * shardd/sampling.c (sampling_sample) for the parameters it supports.
 *
 * One block per logits row. The sanitising (NaN -> -inf, +inf -> FLT_MAX), the ranking (higher
 * logit, then lower id), the min_p floor in logit space, the weights exp((v - mx) / T) in float,
 * and u = sampling_uniform(seed, position) follow the CPU code step by step; the uniform hash
 * (SplitMix64 finaliser, two rounds) is the same integer arithmetic, so it is bit-exact.
 * Candidates are found by block-wide arg-max passes, each taking the best id ranked below the
 * previous pick (ranking is a total order, so no id is taken twice): at most
 * OPS_CUDA_SAMPLE_MAX_K (64) passes over V floats that stay in L2.
 *
 * top_k in 1..min(64, V-1) (the CPU's top-k path): the k best ids at or above the floor, the
 * top_p prefix over them with double sums in rank order and the inverse-CDF draw in rank order,
 * exactly as the CPU code.
 *
 * top_k 0 or >= V (the CPU's full-vocabulary path) with top_p < 1 and/or min_p > 0: the CPU sums
 * the weights of all V ids in id order (mass), finds the nucleus (smallest rank prefix whose mass
 * reaches top_p * mass) through a histogram and a quickselect (a summation order the GPU cannot
 * reproduce), and draws in id order over the members: first id whose cumulative weight exceeds
 * u * total. Here the 64 best ids above the floor are taken, mass and the count of ids above the
 * floor are block reductions over the whole row, and with
 *     delta = mass * (2^-19 + (V + 64) * 2^-50)
 * (a bound on every rounding difference between the two computations: sums of at most V
 * positive terms in double, each <= V * 2^-53 * mass, and CUDA's expf within 3 ulp of glibc's,
 * i.e. 3 * 2^-23 relative on every weight, on both sides of each comparison) the row is drawn
 * here only when no decision can differ from the CPU's:
 *   - top_p < 1: the nucleus is the first K <= 64 candidates, where K is the first prefix whose
 *     sum S_K exceeds top_p * mass - delta, and S_K >= top_p * mass + delta (so S_{K-1} and S_K
 *     lie on the same sides of the CPU's target as of ours);
 *   - top_p = 1 (min_p > 0 only): every id above the floor is a candidate (count <= 64);
 *   - the draw: the members sorted by id, cumulative sums c_j, target = u * c_K; the first j with
 *     c_j > target - delta must have c_j > target + delta.
 * Anything else (nucleus not reached within 64 candidates, more than 64 ids above the floor,
 * a sum within delta of a threshold, plain temperature sampling with top_p 1 and min_p 0) gets
 * -1 and is left to the CPU sampler.
 *
 * Not here: penalties, banned ids, logprobs, top_k in 65..V-1, and the rows above. */
#include <float.h>
#include <math.h>

#include "cuda_internal.cuh"

#define SM_THREADS 512

__device__ __forceinline__ uint64_t s_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* sampling_uniform(seed, position) of shardd/sampling.c, bit for bit. */
__device__ __forceinline__ double s_uniform(uint64_t seed, uint64_t position) {
    uint64_t h = s_mix64(s_mix64(seed) + (position + 1) * 0x9e3779b97f4a7c15ULL);
    return (double)(h >> 11) * 0x1.0p-53;
}

/* True when (av, aid) ranks before (bv, bid): higher logit, then lower id. */
__device__ __forceinline__ bool s_better(float av, int aid, float bv, int bid) {
    return av > bv || (av == bv && aid < bid);
}

__device__ __forceinline__ float s_clean(float v) {
    return isnan(v) ? -INFINITY : (v == INFINITY ? FLT_MAX : v);
}

/* Block-wide best (v, id) among ids of row x ranked strictly below (pv, pid) with v >= floor and
 * v != -inf; (-inf, -1) when there is none. Every thread gets the result. */
__device__ void s_best_below(const float *x, int V, float pv, int pid, double floor, float *ov,
                             int *oid) {
    __shared__ float sv[SM_THREADS / 32];
    __shared__ int si[SM_THREADS / 32];
    float bv = -INFINITY;
    int bi = -1;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float v = s_clean(x[i]);
        if (v == -INFINITY || (double)v < floor) continue;
        if (pid >= 0 && !s_better(pv, pid, v, i)) continue;
        if (bi < 0 || s_better(v, i, bv, bi)) bv = v, bi = i;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float v2 = __shfl_xor_sync(0xffffffffu, bv, o);
        int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
        if (i2 >= 0 && (bi < 0 || s_better(v2, i2, bv, bi))) bv = v2, bi = i2;
    }
    if ((threadIdx.x & 31) == 0) sv[threadIdx.x >> 5] = bv, si[threadIdx.x >> 5] = bi;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (si[w] >= 0 && (si[0] < 0 || s_better(sv[w], si[w], sv[0], si[0])))
                sv[0] = sv[w], si[0] = si[w];
    }
    __syncthreads();
    *ov = sv[0];
    *oid = si[0];
    __syncthreads(); /* sv/si are reused by the next call */
}

/* Block-wide mass and count of the ids of row x with v >= floor and v != -inf: *mass = sum of
 * expf((v - mx) * inv_t) in double (block-reduction order, not the CPU's id order), *count = how
 * many such ids. Every thread gets the result. */
__device__ void s_mass(const float *x, int V, float mx, float inv_t, double floor, double *mass,
                       int *count) {
    __shared__ double sm[SM_THREADS / 32];
    __shared__ int sc[SM_THREADS / 32];
    double acc = 0.0;
    int n = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float v = s_clean(x[i]);
        if (v == -INFINITY || (double)v < floor) continue;
        acc += (double)expf((v - mx) * inv_t);
        n++;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        acc += __shfl_xor_sync(0xffffffffu, acc, o);
        n += __shfl_xor_sync(0xffffffffu, n, o);
    }
    if ((threadIdx.x & 31) == 0) sm[threadIdx.x >> 5] = acc, sc[threadIdx.x >> 5] = n;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            sm[0] += sm[w], sc[0] += sc[w];
    }
    __syncthreads();
    *mass = sm[0];
    *count = sc[0];
    __syncthreads();
}

/* The full-vocabulary path (top_k 0 or >= V) on the m best candidates cv/ci (rank order) with
 * weights w, given the row's mass and count above the floor: the CPU's token, or -1 when the
 * nucleus needs more than the candidates or a rounding difference could change a decision (see
 * the file comment). Thread-local; m <= OPS_CUDA_SAMPLE_MAX_K. */
__device__ int s_full_draw(const float *w, const int *ci, int m, double mass, int count, int V,
                           double top_p, double u) {
    const double delta = mass * (0x1.0p-19 + ((double)V + 64.0) * 0x1.0p-50);
    int keep;
    if (top_p < 1.0) {
        const double target = top_p * mass;
        double acc = 0.0;
        keep = -1;
        for (int i = 0; i < m; i++) {
            acc += w[i];
            if (acc > target - delta) {
                if (!(acc >= target + delta)) return -1; /* too close to the CPU's target */
                keep = i + 1;
                break;
            }
        }
        if (keep < 0) return -1; /* the nucleus needs more than the candidates */
    } else {
        if (count > m) return -1; /* more ids above the floor than candidates */
        keep = m;
    }
    /* members in id order (the CPU draws in id order: s_draw_ids) */
    int order[OPS_CUDA_SAMPLE_MAX_K];
    for (int i = 0; i < keep; i++) {
        int j = i;
        while (j > 0 && ci[order[j - 1]] > ci[i]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
    double total = 0.0;
    for (int j = 0; j < keep; j++)
        total += w[order[j]];
    const double target = u * total;
    double acc = 0.0;
    for (int j = 0; j < keep; j++) {
        acc += w[order[j]];
        if (acc > target - delta) return acc > target + delta ? ci[order[j]] : -1;
    }
    return -1;
}

__global__ void __launch_bounds__(SM_THREADS)
    k_argmax(const float *logits, int V, size_t stride, int32_t *ids) {
    float v;
    int id;
    s_best_below(logits + blockIdx.x * stride, V, 0.0f, -1, -INFINITY, &v, &id);
    if (threadIdx.x == 0) ids[blockIdx.x] = id;
}

__global__ void __launch_bounds__(SM_THREADS)
    k_sample(const float *logits, int V, size_t stride, const ops_cuda_sample_t *params,
             int32_t *ids) {
    __shared__ float cv[OPS_CUDA_SAMPLE_MAX_K];
    __shared__ int ci[OPS_CUDA_SAMPLE_MAX_K];
    const float *x = logits + blockIdx.x * stride;
    const ops_cuda_sample_t p = params[blockIdx.x];
    float mx;
    int best;
    s_best_below(x, V, 0.0f, -1, -INFINITY, &mx, &best);
    if (best < 0 || p.temperature == 0.0) {
        if (threadIdx.x == 0) ids[blockIdx.x] = best;
        return;
    }
    const bool full = p.top_k < 1 || p.top_k >= V; /* the CPU's full-vocabulary path */
    if ((!full && p.top_k > OPS_CUDA_SAMPLE_MAX_K) ||
        (full && !(p.top_p < 1.0) && !(p.min_p > 0.0))) {
        if (threadIdx.x == 0) ids[blockIdx.x] = -1; /* top_k 65..V-1, or plain temperature */
        return;
    }
    const int k = full ? OPS_CUDA_SAMPLE_MAX_K : p.top_k;
    const double t = p.temperature;
    const float inv_t = 1.0 / t > FLT_MAX ? FLT_MAX : (float)(1.0 / t);
    const double floor = p.min_p > 0.0 ? (double)mx + t * log(p.min_p) : -INFINITY;
    double fmass = 0.0;
    int fcount = 0;
    if (full) s_mass(x, V, mx, inv_t, floor, &fmass, &fcount);
    /* the k best ids at or above the floor, best first (as s_select_top) */
    int m = 0;
    float pv = 0.0f;
    int pid = -1;
    for (; m < k; m++) {
        float v;
        int id;
        s_best_below(x, V, pv, pid, floor, &v, &id);
        if (id < 0) break;
        if (threadIdx.x == 0) cv[m] = v, ci[m] = id;
        pv = v, pid = id;
    }
    if (threadIdx.x != 0) return;
    float w[OPS_CUDA_SAMPLE_MAX_K];
    double mass = 0.0;
    for (int i = 0; i < m; i++) {
        w[i] = expf((cv[i] - mx) * inv_t);
        mass += w[i];
    }
    if (full) {
        ids[blockIdx.x] =
            s_full_draw(w, ci, m, fmass, fcount, V, p.top_p, s_uniform(p.seed, p.position));
        return;
    }
    if (p.top_p < 1.0) {
        const double target = p.top_p * mass;
        double acc = 0.0;
        int keep = m;
        for (int i = 0; i < m; i++) {
            acc += w[i];
            if (acc >= target) {
                keep = i + 1;
                break;
            }
        }
        m = keep;
    }
    /* s_draw: first index whose cumulative weight exceeds u * total */
    const double u = s_uniform(p.seed, p.position);
    double total = 0.0;
    for (int i = 0; i < m; i++)
        total += w[i];
    const double target = u * total;
    double acc = 0.0;
    int tok = -2;
    for (int i = 0; i < m && tok == -2; i++) {
        acc += w[i];
        if (acc > target && w[i] > 0.0f) tok = ci[i];
    }
    if (tok == -2) {
        tok = ci[0];
        for (int i = m - 1; i > 0; i--)
            if (w[i] > 0.0f) {
                tok = ci[i];
                break;
            }
    }
    ids[blockIdx.x] = tok;
}

__global__ void k_uniform(const uint64_t *seeds, const uint64_t *positions, int n, double *out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = s_uniform(seeds[i], positions[i]);
}

void ops_cuda_argmax(const ops_t *o, const float *logits, int R, int V, size_t stride,
                     int32_t *ids) {
    if (R <= 0) return;
    k_argmax<<<R, SM_THREADS, 0, cuda_state(o)->stream>>>(logits, V, stride, ids);
    CUDA_CHECK_LAUNCH("k_argmax");
}

void ops_cuda_sample(const ops_t *o, const float *logits, int R, int V, size_t stride,
                     const ops_cuda_sample_t *params, int32_t *ids) {
    if (R <= 0) return;
    k_sample<<<R, SM_THREADS, 0, cuda_state(o)->stream>>>(logits, V, stride, params, ids);
    CUDA_CHECK_LAUNCH("k_sample");
}

void ops_cuda_uniform(const ops_t *o, const uint64_t *seeds, const uint64_t *positions, int n,
                      double *out) {
    if (n <= 0) return;
    k_uniform<<<(n + 255) / 256, 256, 0, cuda_state(o)->stream>>>(seeds, positions, n, out);
    CUDA_CHECK_LAUNCH("k_uniform");
}
