/* ops: the operations interface of the gpt-oss forward pass.
 *
 * One struct of function pointers (ops_t) that every backend fills: the CPU
 * backend in kernels/cpu/ (fp32 activations, exact stored weights, threads +
 * SIMD) and, later, the CUDA backend. The engine (shardd/engine.c) composes a
 * forward pass from these calls only, so a backend is a drop-in replacement.
 *
 * Conventions: activations are row-major fp32 matrices of T rows (one per token
 * of the step); weights stay in their stored formats (bf16 bit patterns, MXFP4
 * nibbles + E8M0 scales), described by the small view structs below, which carry
 * a row stride so that a tensor-parallel slice (q/k/v heads, o_proj input
 * columns, expert units in whole 32-blocks) can be expressed without copying.
 * Every pointer argument is borrowed for the duration of the call; outputs are
 * caller-allocated. The ops are not a place for outside-input checks: shapes are
 * validated when weights are bound (shardd/weights.c), and misuse is asserted.
 *
 * Not here: tokenisation, sampling (shardd/sampling.h), KV block allocation
 * (shardd/kvcache.h), weight loading (shardd/weights.h). */
#ifndef GPTOSS_OPS_H
#define GPTOSS_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Element type of the KV cache. */
typedef enum {
    OPS_KV_F32 = 0,  /* fp32: exact, the default */
    OPS_KV_BF16 = 1, /* bf16: half the memory, rounded to nearest even */
} ops_kv_dtype_t;

/* A bf16 matrix [rows, cols] (y = W x): row r starts at w + r * stride. */
typedef struct {
    const uint16_t *w; /* bf16 bit patterns */
    size_t stride;     /* elements between rows (>= cols) */
    int rows;          /* output features */
    int cols;          /* input features */
} ops_bf16_mat_t;

/* An MXFP4 matrix [rows, cols] (GPTOSS.md section 3): row r has cols/2 nibble
 * bytes at blocks + r * blocks_stride and cols/32 E8M0 scale bytes at
 * scales + r * scales_stride. Low nibble = even element. */
typedef struct {
    const uint8_t *blocks; /* packed E2M1 codes */
    const uint8_t *scales; /* E8M0 exponents, 2^(s-127) */
    size_t blocks_stride;  /* bytes between rows (>= cols/2) */
    size_t scales_stride;  /* bytes between rows (>= cols/32) */
    int rows;              /* output features */
    int cols;              /* input features, a multiple of 32 */
} ops_mxfp4_mat_t;

/* The paged KV cache of one layer: n_blocks physical blocks of block_size token
 * slots; slot s of block b holds, for each kv head h, head_dim values at element
 * ((b * block_size + s) * n_kv_heads + h) * head_dim of k (keys after RoPE) and v. */
typedef struct {
    void *k;              /* [n_blocks][block_size][n_kv_heads][head_dim] of dtype */
    void *v;              /* same shape as k */
    ops_kv_dtype_t dtype; /* element type of k and v */
    int n_blocks;         /* physical blocks */
    int block_size;       /* token slots per block */
    int n_kv_heads;       /* kv heads held by this shard */
    int head_dim;         /* D */
} ops_kv_t;

/* Where one token of the step lives in the KV cache. */
typedef struct {
    int pos;               /* absolute position (0-based) */
    const int32_t *blocks; /* block table of its sequence for this layer kind:
                              logical block pos / block_size -> physical block
                              (entries older than a sliding window may be -1) */
} ops_tok_t;

/* All experts of one MoE matrix (gate_up or down) of one layer: expert e's matrix is
 * `mat` with blocks/scales moved by e times the per-expert byte strides, and its bias
 * `bias + e * bias_estride` (bf16; bias NULL: none). Same layout as the checkpoint's
 * [E][rows][cols/32][16] tensors (or a tensor-parallel slice of them). */
typedef struct {
    ops_mxfp4_mat_t mat;   /* expert 0; rows/cols = this shard's slice */
    size_t blocks_estride; /* bytes between experts in blocks */
    size_t scales_estride; /* bytes between experts in scales */
    const uint16_t *bias;  /* bf16, expert 0's [mat.rows] (NULL: none on this shard) */
    size_t bias_estride;   /* elements between experts in bias */
} ops_experts_t;

/* One layer's MoE for the moe op: gate_up [2*nu][H] (rows interleaved gate/up) and down
 * [H][nu] of n_experts experts, with the clamped-SwiGLU constants. */
typedef struct {
    ops_experts_t gate_up; /* per expert [2*nu][H] */
    ops_experts_t down;    /* per expert [H][nu] */
    int n_experts;         /* E */
    float alpha, limit;    /* SwiGLU (GPTOSS.md 3.3) */
} ops_moe_t;

typedef struct ops ops_t;

/* The operations. All members are required. T = rows (tokens) of the call. */
struct ops {
    const char *name; /* backend name for logs, e.g. "cpu-avx2" */
    void *impl;       /* backend state (thread pool, scratch); owned by the backend */

    /* out[t][0..n) = bf16 table row ids[t], widened (table: [vocab][stride]). */
    void (*embed)(const ops_t *o, const uint16_t *table, size_t stride, int n, const int32_t *ids,
                  int T, float *out);
    /* out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w (w bf16 [n]); out may equal x. */
    void (*rmsnorm)(const ops_t *o, const float *x, const uint16_t *w, int T, int n, float eps,
                    float *out);
    /* y[t][r] = sum_c W[r][c] x[t][c] + bias[r]  (x: [T][W.cols], y: [T][W.rows];
     * bias bf16 [W.rows] or NULL). fp32 accumulation, parallel over output rows. */
    void (*matmul_bf16)(const ops_t *o, const float *x, int T, const ops_bf16_mat_t *W,
                        const uint16_t *bias, float *y);
    /* Same with MXFP4 weights, decoded in registers (never expanded in memory). */
    void (*matmul_mxfp4)(const ops_t *o, const float *x, int T, const ops_mxfp4_mat_t *W,
                         const uint16_t *bias, float *y);
    /* Rotates each head of x ([T][n_heads][D]) in place, NeoX half-split: pairs
     * (i, i + D/2). cs: [T][D] = cos[D/2] then sin[D/2] for the token's position,
     * YaRN concentration already multiplied in (see ops_rope_table). */
    void (*rope)(const ops_t *o, float *x, int T, int n_heads, int D, const float *cs);
    /* Stores k, v ([T][n_kv_heads * D]) of each token at its slot in kv. */
    void (*kv_write)(const ops_t *o, const ops_kv_t *kv, const float *k, const float *v,
                     const ops_tok_t *toks, int T);
    /* Attention of q ([T][n_heads][D]) over the cached keys of each token's sequence:
     * key positions max(0, pos - window + 1) .. pos (window 0 = all 0 .. pos), GQA
     * (head h uses kv head h / (n_heads / n_kv_heads)), scores q.k * sm_scale, and a
     * learned sink logit sinks[h] (bf16, unscaled) in the softmax denominator only.
     * out: [T][n_heads][D]. The step's own k/v must already be written. */
    void (*attention)(const ops_t *o, const float *q, int T, int n_heads, const ops_kv_t *kv,
                      const ops_tok_t *toks, int window, const uint16_t *sinks, float sm_scale,
                      float *out);
    /* From router logits z ([T][E]): the k largest (ties: lower index first) in
     * descending order into idx[T][k], and softmax over those k logits into w[T][k]. */
    void (*router_topk)(const ops_t *o, const float *z, int T, int E, int k, int32_t *idx,
                        float *w);
    /* Clamped SwiGLU (GPTOSS.md 3.3): h [T][2I] interleaved (gate even, up odd) ->
     * out[t][i] = g*sigmoid(alpha*g)*(u+1), g = min(gate, limit), u = clamp(up, +-limit). */
    void (*swiglu)(const ops_t *o, const float *h, int T, int I, float alpha, float limit,
                   float *out);
    /* x[i] += y[i] for i < n (residual add). */
    void (*add)(const ops_t *o, float *x, const float *y, size_t n);
    /* Fused residual add and RMSNorm: x[t] += y[t] (x updated in place), then out[t] =
     * x[t] / sqrt(mean(x[t]^2) + eps) * w, for T rows of n (w bf16 [n]); the same values as
     * add then rmsnorm. out must not alias x or y. */
    void (*add_rmsnorm)(const ops_t *o, float *x, const float *y, const uint16_t *w, int T, int n,
                        float eps, float *out);
    /* x[i] += a * y[i] for i < n (weighted expert output). */
    void (*axpy)(const ops_t *o, float *x, float a, const float *y, size_t n);

    /* The experts of one MoE layer for T tokens (a: [T][H] normed, H = m->gate_up.mat.cols;
     * idx, w: [T][K] from router_topk): for each token t and each of its K experts e
     * (weight w[t][j]), y = down_e(swiglu(gate_up_e(a[t]) + gu_bias_e)) + dn_bias_e, and
     * out[t] = sum of w[t][j] * y, added in ascending expert index (batch invariance: the
     * order depends on the token's own experts only). out: [T][H], fully written (zeros
     * when the shard holds no expert units). Backends group tokens by expert so that each
     * active expert's weights are read once per call. */
    void (*moe)(const ops_t *o, const float *a, int T, const int32_t *idx, const float *w, int K,
                const ops_moe_t *m, float *out);
    /* dst[r][0..n) = src[rows[r]][0..n) for r < R (rows: backend memory). */
    void (*gather_rows)(const ops_t *o, const float *src, const int32_t *rows, int R, int n,
                        float *dst);

    /* Memory. The engine keeps activations, step inputs (ids, rope rows, ops_tok_t arrays
     * and block tables) and the KV cache in backend memory, so a device backend runs the
     * same engine code. CPU: host memory, copies are memcpy. */
    /* Allocates bytes of backend memory (64-byte aligned, zero-filled); NULL when out of
     * memory. Caller frees with free_mem. */
    void *(*alloc)(const ops_t *o, size_t bytes);
    /* Frees memory from alloc (NULL is a no-op). */
    void (*free_mem)(const ops_t *o, void *p);
    /* Copies bytes host src -> backend dst; src may be reused when it returns. */
    void (*upload)(const ops_t *o, void *dst, const void *src, size_t bytes);
    /* Copies bytes backend src -> host dst after all queued work; dst is filled on return. */
    void (*download)(const ops_t *o, void *dst, const void *src, size_t bytes);
    /* Sets bytes of backend memory to zero (queued in order with the ops). */
    void (*zero)(const ops_t *o, void *dst, size_t bytes);

    /* Optional step graphs (NULL on backends without them, e.g. the CPU): a device backend
     * can record the ops queued between graph_begin(key) and graph_end(key) and replay them
     * with graph_launch(key), which returns false when no graph is stored for key (then
     * the caller runs the ops eagerly, and may capture). A replay reuses the captured
     * pointers and scalars: the caller writes the step's inputs into the same buffers. */
    void (*graph_begin)(const ops_t *o, int key);
    void (*graph_end)(const ops_t *o, int key);
    bool (*graph_launch)(const ops_t *o, int key);
};

/* YaRN RoPE parameters (GPTOSS.md 4.5), computed in double. */
typedef struct {
    int half;             /* D / 2 frequencies */
    double inv_freq[256]; /* per frequency i < half */
    double concentration; /* 0.1 ln(factor) + 1 (1 without YaRN) */
    double low, high;     /* YaRN ramp bounds (unrounded unless truncate) */
} ops_rope_t;

/* Fills *r for head_dim D, theta and YaRN settings (factor <= 1 means plain RoPE;
 * truncate = floor/ceil of low/high as HF does with truncate=true). Returns -1 if
 * D is odd or D/2 > 256. */
int ops_rope_init(ops_rope_t *r, int D, double theta, double factor, double beta_fast,
                  double beta_slow, int original_max_pos, bool truncate);
/* Writes the cos/sin rows ([T][D], caller-allocated) for positions pos[T]:
 * cs[t][i] = c*cos(pos*inv_freq_i), cs[t][D/2 + i] = c*sin(...), in double then rounded. */
void ops_rope_table(const ops_rope_t *r, const int32_t *pos, int T, float *cs);

#endif
