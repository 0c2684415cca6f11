/* weights: binds the tensors of a gpt-oss checkpoint to the engine.
 *
 * Weights stay where safetensors mapped them, in their stored formats (bf16,
 * MXFP4 blocks + scales); this module only checks shapes (config_check_tensors)
 * and fills per-layer views (ops.h matrices with row strides) plus the dims this
 * shard holds. The dims and views are what a tensor-parallel slice changes: a
 * shard holding q heads [h0, h0+nh), kv heads [j0, j0+nkv), o_proj input columns
 * of those heads, expert units [u0, u0+nu) in whole 32-blocks (gate_up rows
 * [2u0, 2(u0+nu)), down_proj block columns) and lm_head vocab rows [v0, v0+nv)
 * fills the same structs with offset pointers and strides (weights_load_shard;
 * weights_load is the whole model, rank 0 of world 1).
 *
 * Slicing (DESIGN.md "Tensor parallelism", GPTOSS.md 9) for rank r of N:
 * - q heads [r*Hq/N, (r+1)*Hq/N) with their sinks and q rows/bias; KV heads
 *   [r*Hkv/N, ...) likewise (N must divide Hq and Hkv, so GQA groups stay whole
 *   and local head h still uses local kv head h / (nh / nkv)); o_proj keeps all H
 *   rows and takes the input columns of the shard's heads (same row stride).
 * - every expert: units [r*w, min((r+1)*w, I)) with w = 32*ceil((I/32)/N), whole
 *   MXFP4 blocks (the last shard fewer, possibly none); gate_up rows [2u0, 2u1)
 *   (gate/up interleave stays paired) and bias; down_proj the matching block
 *   columns of every row: blocks + u0/2 bytes, scales + u0/32 bytes, the full
 *   row strides (a strided view).
 * - lm_head rows [r*V/N, (r+1)*V/N) (vocab_begin, vocab_rows).
 * - router, norms, embedding: replicated. o_proj bias and down_proj bias only on
 *   rank 0 (NULL elsewhere): the sum over shards adds them once.
 * Views point into the mmapped files; a shard dereferences only its own byte
 * ranges (those st_slice gives for its index ranges; test_tp checks the views
 * against st_slice), so the kernel pages in only those: the other shards'
 * slices are never read. The bytes_per_token figure counts this shard's slice.
 *
 * Not here: reading byte ranges into device memory, KV cache, the forward pass. */
#ifndef GPTOSS_WEIGHTS_H
#define GPTOSS_WEIGHTS_H

#include <stdint.h>

#include "config.h"
#include "gerr.h"
#include "ops.h"
#include "safetensors.h"

/* One expert matrix set (ops.h's ops_experts_t: expert e's matrix is the template with
 * pointers moved by e times the per-expert strides). */
typedef ops_experts_t weights_experts_t;

/* The views of one transformer block. */
typedef struct {
    const uint16_t *ln_attn;         /* input_layernorm [H] bf16 */
    const uint16_t *ln_mlp;          /* post_attention_layernorm [H] bf16 */
    ops_bf16_mat_t q, k, v;          /* [nh*D, H], [nkv*D, H], [nkv*D, H] */
    const uint16_t *q_b, *k_b, *v_b; /* [nh*D], [nkv*D], [nkv*D] */
    ops_bf16_mat_t o;                /* [H, nh*D] (input columns of this shard's heads) */
    const uint16_t *o_b;             /* [H], NULL on shards other than rank 0 */
    const uint16_t *sinks;           /* [nh] bf16 */
    ops_bf16_mat_t router;           /* [E, H] (replicated) */
    const uint16_t *router_b;        /* [E] */
    weights_experts_t gate_up;       /* per expert [2*nu, H], rows interleaved gate/up */
    weights_experts_t down;          /* per expert [H, nu] */
    int sliding;                     /* 1 = sliding-window layer */
} weights_layer_t;

/* The part of the model one rank holds (index ranges; see the file comment). */
typedef struct {
    int head_begin, n_heads;     /* q heads [head_begin, +n_heads) */
    int kv_begin, n_kv_heads;    /* kv heads [kv_begin, +n_kv_heads) */
    int unit_begin, n_units;     /* expert units, multiples of 32; n_units may be 0 */
    int vocab_begin, vocab_rows; /* lm_head rows; vocab_rows may be 0 when V < N */
} weights_slice_t;

/* A bound model. Owned by the caller of weights_load (weights_free). */
typedef struct {
    gptoss_config_t cfg;   /* the whole model's config */
    st_model_t *st;        /* mappings (owned) */
    int rank, world;       /* which slice this is (0, 1: the whole model) */
    weights_slice_t slice; /* this shard's index ranges */
    /* this shard's slice dims (whole model: the config values) */
    int n_heads;              /* q heads held (nh) */
    int n_kv_heads;           /* kv heads held (nkv) */
    int n_units;              /* expert intermediate units held (nu, multiple of 32 or all) */
    int vocab_rows;           /* lm_head rows held (nv) */
    int vocab_begin;          /* first vocab id of those rows (v0) */
    ops_bf16_mat_t embed;     /* [V, H] (replicated) */
    const uint16_t *norm;     /* final norm [H] */
    ops_bf16_mat_t lm_head;   /* [nv, H] */
    weights_layer_t *layers;  /* [L] */
    uint64_t bytes_per_token; /* weight bytes one batch-1 decode step reads (GPTOSS.md 8) */
} weights_t;

/* Loads config.json and the safetensors of folder dir, checks every tensor and
 * binds the views of the whole model. *out is caller-owned (weights_free). */
int weights_load(const char *dir, weights_t **out, gerr_t *err);
/* Same for rank's slice of a world-shard tensor-parallel group (world 1: the whole
 * model, identical to weights_load). A world that does not divide the KV or query
 * heads is refused (GERR_INVALID, "tp 4 does not divide num_key_value_heads 2").
 * *out is caller-owned (weights_free). */
int weights_load_shard(const char *dir, int rank, int world, weights_t **out, gerr_t *err);
/* Index ranges of rank's slice in a world-shard group for config c into *out (nothing
 * allocated); GERR_INVALID with a message when world cannot split this model. */
int weights_slice(const gptoss_config_t *c, int rank, int world, weights_slice_t *out, gerr_t *err);
/* Unmaps and frees; sets *w to NULL (safe on NULL). */
void weights_free(weights_t **w);
/* Expert e's matrix of a set (a view; nothing allocated). */
ops_mxfp4_mat_t weights_expert(const weights_experts_t *x, int e);
/* Expert e's bias (bf16, NULL if the set has none). */
const uint16_t *weights_expert_bias(const weights_experts_t *x, int e);

#endif
