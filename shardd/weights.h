/* weights: binds the tensors of a gpt-oss checkpoint to the engine.
 *
 * Weights stay where safetensors mapped them, in their stored formats (bf16,
 * MXFP4 blocks + scales); this module only checks shapes (config_check_tensors)
 * and fills per-layer views (ops.h matrices with row strides) plus the dims this
 * shard holds. The dims and views are what a tensor-parallel slice changes: a
 * shard holding q heads [h0, h0+nh), kv heads [j0, j0+nkv), o_proj input columns
 * of those heads, expert units [u0, u0+nu) in whole 32-blocks (gate_up rows
 * [2u0, 2(u0+nu)), down_proj block columns) and lm_head vocab rows [v0, v0+nv)
 * fills the same structs with offset pointers and strides. This version binds
 * the whole model (one shard); slicing is a later issue.
 *
 * Not here: reading byte ranges into device memory, KV cache, the forward pass. */
#ifndef GPTOSS_WEIGHTS_H
#define GPTOSS_WEIGHTS_H

#include <stdint.h>

#include "config.h"
#include "gerr.h"
#include "ops.h"
#include "safetensors.h"

/* One expert matrix set: expert e's matrix is the template with pointers moved by
 * e times the per-expert strides. */
typedef struct {
    ops_mxfp4_mat_t mat;   /* expert 0; rows/cols = this shard's slice */
    size_t blocks_estride; /* bytes between experts in blocks */
    size_t scales_estride; /* bytes between experts in scales */
    const uint16_t *bias;  /* bf16, expert 0's [mat.rows] (NULL: none on this shard) */
    size_t bias_estride;   /* elements between experts in bias */
} weights_experts_t;

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

/* A bound model. Owned by the caller of weights_load (weights_free). */
typedef struct {
    gptoss_config_t cfg; /* the whole model's config */
    st_model_t *st;      /* mappings (owned) */
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
 * binds the views. *out is caller-owned (weights_free). */
int weights_load(const char *dir, weights_t **out, gerr_t *err);
/* Unmaps and frees; sets *w to NULL (safe on NULL). */
void weights_free(weights_t **w);
/* Expert e's matrix of a set (a view; nothing allocated). */
ops_mxfp4_mat_t weights_expert(const weights_experts_t *x, int e);
/* Expert e's bias (bf16, NULL if the set has none). */
const uint16_t *weights_expert_bias(const weights_experts_t *x, int e);

#endif
