/* weights: binding checkpoint tensors to per-layer views (see weights.h).
 *
 * Every view is the whole tensor's view moved to the slice: s_rows keeps rows
 * [r0, r0+n) of a 2-D bf16 matrix (one contiguous byte range), s_cols keeps
 * columns [c0, c0+n) with the full row stride (one range per row), and the expert
 * views do the same per expert with the per-expert strides unchanged. Nothing is
 * read here beyond the headers; the engine reads the views. */
#include "weights.h"

#include "comm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const st_tensor_t *s_get(const st_model_t *m, int layer, const char *suffix, gerr_t *err) {
    char name[256];
    if (layer >= 0)
        config_layer_name(name, sizeof name, layer, suffix);
    else
        snprintf(name, sizeof name, "%s", suffix);
    const st_tensor_t *t = st_find(m, name);
    if (!t) gerr_set(err, "tensor %s is missing from the checkpoint", name);
    return t;
}

static ops_bf16_mat_t s_mat(const st_tensor_t *t) {
    return (ops_bf16_mat_t){.w = t->data,
                            .stride = (size_t)t->shape[1],
                            .rows = (int)t->shape[0],
                            .cols = (int)t->shape[1]};
}

/* Rows [r0, r0+n) of a bf16 matrix view. */
static ops_bf16_mat_t s_rows(ops_bf16_mat_t m, int r0, int n) {
    m.w += (size_t)r0 * m.stride;
    m.rows = n;
    return m;
}

/* Input columns [c0, c0+n) of a bf16 matrix view (row stride unchanged). */
static ops_bf16_mat_t s_cols(ops_bf16_mat_t m, int c0, int n) {
    m.w += c0;
    m.cols = n;
    return m;
}

/* Experts from blocks [E, R, C/32, 16], scales [E, R, C/32], bias [E, R]. */
static weights_experts_t s_experts(const st_tensor_t *b, const st_tensor_t *s,
                                   const st_tensor_t *bias) {
    int R = (int)b->shape[1], nb = (int)b->shape[2];
    weights_experts_t x = {
        .mat = {.blocks = b->data,
                .scales = s->data,
                .blocks_stride = (size_t)nb * 16,
                .scales_stride = (size_t)nb,
                .rows = R,
                .cols = nb * 32},
        .blocks_estride = (size_t)R * nb * 16,
        .scales_estride = (size_t)R * nb,
        .bias = bias->data,
        .bias_estride = (size_t)R,
    };
    return x;
}

ops_mxfp4_mat_t weights_expert(const weights_experts_t *x, int e) {
    ops_mxfp4_mat_t m = x->mat;
    m.blocks += (size_t)e * x->blocks_estride;
    m.scales += (size_t)e * x->scales_estride;
    return m;
}

const uint16_t *weights_expert_bias(const weights_experts_t *x, int e) {
    return x->bias ? x->bias + (size_t)e * x->bias_estride : NULL;
}

/* Output rows [r0, r0+n) of every expert (gate_up: rows 2u0 .. 2u1). */
static void s_expert_rows(weights_experts_t *x, int r0, int n) {
    x->mat.blocks += (size_t)r0 * x->mat.blocks_stride;
    x->mat.scales += (size_t)r0 * x->mat.scales_stride;
    x->mat.rows = n;
    if (x->bias) x->bias += r0;
}

/* Input columns [c0, c0+n) of every expert, whole 32-blocks (down_proj: units u0 .. u1);
 * the row strides stay those of the full row. */
static void s_expert_cols(weights_experts_t *x, int c0, int n) {
    x->mat.blocks += (size_t)c0 / 2;
    x->mat.scales += (size_t)c0 / 32;
    x->mat.cols = n;
}

int weights_slice(const gptoss_config_t *c, int rank, int world, weights_slice_t *out,
                  gerr_t *err) {
    memset(out, 0, sizeof *out);
    if (world < 1 || world > COMM_MAX_WORLD || rank < 0 || rank >= world) {
        gerr_set(err, "tp %d rank %d: need 1 <= tp <= %d and 0 <= rank < tp", world, rank,
                 COMM_MAX_WORLD);
        return GERR_INVALID;
    }
    if (c->num_key_value_heads < 1 || c->num_key_value_heads % world) {
        gerr_set(err, "tp %d does not divide num_key_value_heads %d", world,
                 c->num_key_value_heads);
        return GERR_INVALID;
    }
    if (c->num_attention_heads < 1 || c->num_attention_heads % world) {
        gerr_set(err, "tp %d does not divide num_attention_heads %d", world,
                 c->num_attention_heads);
        return GERR_INVALID;
    }
    if (c->intermediate_size < 0 || c->intermediate_size % 32 || c->vocab_size < 1) {
        gerr_set(err, "intermediate_size %d is not whole MXFP4 blocks of 32", c->intermediate_size);
        return GERR_INVALID;
    }
    out->n_heads = c->num_attention_heads / world;
    out->head_begin = rank * out->n_heads;
    out->n_kv_heads = c->num_key_value_heads / world;
    out->kv_begin = rank * out->n_kv_heads;
    const int nb = c->intermediate_size / 32, w = (nb + world - 1) / world;
    int b0 = rank * w, b1 = (rank + 1) * w;
    if (b0 > nb) b0 = nb;
    if (b1 > nb) b1 = nb;
    out->unit_begin = b0 * 32;
    out->n_units = (b1 - b0) * 32;
    const int64_t V = c->vocab_size;
    out->vocab_begin = (int)(V * rank / world);
    out->vocab_rows = (int)(V * (rank + 1) / world - V * rank / world);
    return 0;
}

int weights_load(const char *dir, weights_t **out, gerr_t *err) {
    return weights_load_shard(dir, 0, 1, out, err);
}

int weights_load_shard(const char *dir, int rank, int world, weights_t **out, gerr_t *err) {
    *out = NULL;
    weights_t *w = calloc(1, sizeof *w);
    if (!w) {
        gerr_set(err, "out of memory");
        return GERR_NOMEM;
    }
    int rc = config_load(dir, &w->cfg, err);
    if (rc) goto fail;
    const gptoss_config_t *c = &w->cfg;
    if ((rc = st_open(dir, &w->st, err))) goto fail;
    if ((rc = config_check_tensors(c, w->st, err))) goto fail;
    if (c->hidden_size % 32 || c->intermediate_size % 32 || c->head_dim % 2 ||
        c->num_attention_heads % c->num_key_value_heads || c->head_dim > 256 ||
        c->num_experts_per_tok > c->num_local_experts || c->num_experts_per_tok > 64) {
        gerr_set(err,
                 "%s: unsupported shape (hidden %d, intermediate %d, head_dim %d, heads "
                 "%d/%d, experts %d top-%d)",
                 dir, c->hidden_size, c->intermediate_size, c->head_dim, c->num_attention_heads,
                 c->num_key_value_heads, c->num_local_experts, c->num_experts_per_tok);
        rc = GERR_INVALID;
        goto fail;
    }
    w->rank = rank;
    w->world = world;
    if ((rc = weights_slice(c, rank, world, &w->slice, err))) goto fail;
    const weights_slice_t *sl = &w->slice;
    const int D = c->head_dim;
    const st_tensor_t *t;
    if (!(t = s_get(w->st, -1, "model.embed_tokens.weight", err))) goto missing;
    w->embed = s_mat(t);
    if (!(t = s_get(w->st, -1, "model.norm.weight", err))) goto missing;
    w->norm = t->data;
    if (!(t = s_get(w->st, -1,
                    c->tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight", err)))
        goto missing;
    w->lm_head = s_rows(s_mat(t), sl->vocab_begin, sl->vocab_rows);
    w->n_heads = sl->n_heads;
    w->n_kv_heads = sl->n_kv_heads;
    w->n_units = sl->n_units;
    w->vocab_rows = sl->vocab_rows;
    w->vocab_begin = sl->vocab_begin;
    const int q0 = sl->head_begin * D, nq = sl->n_heads * D;
    const int k0 = sl->kv_begin * D, nk = sl->n_kv_heads * D;
    const int u0 = sl->unit_begin, nu = sl->n_units;
    w->layers = calloc((size_t)c->num_hidden_layers, sizeof *w->layers);
    if (!w->layers) {
        gerr_set(err, "out of memory");
        rc = GERR_NOMEM;
        goto fail;
    }
    const int H = c->hidden_size, E = c->num_local_experts, k = c->num_experts_per_tok;
    uint64_t bytes = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        weights_layer_t *L = &w->layers[l];
        const st_tensor_t *b, *s, *bb;
#define S_T(var, name)                                                                             \
    if (!(var = s_get(w->st, l, name, err))) goto missing;
        S_T(t, "input_layernorm.weight") L->ln_attn = t->data;
        S_T(t, "post_attention_layernorm.weight") L->ln_mlp = t->data;
        S_T(t, "self_attn.q_proj.weight") L->q = s_rows(s_mat(t), q0, nq);
        S_T(t, "self_attn.k_proj.weight") L->k = s_rows(s_mat(t), k0, nk);
        S_T(t, "self_attn.v_proj.weight") L->v = s_rows(s_mat(t), k0, nk);
        S_T(t, "self_attn.o_proj.weight") L->o = s_cols(s_mat(t), q0, nq);
        S_T(t, "self_attn.q_proj.bias") L->q_b = (const uint16_t *)t->data + q0;
        S_T(t, "self_attn.k_proj.bias") L->k_b = (const uint16_t *)t->data + k0;
        S_T(t, "self_attn.v_proj.bias") L->v_b = (const uint16_t *)t->data + k0;
        S_T(t, "self_attn.o_proj.bias") L->o_b = rank == 0 ? t->data : NULL;
        S_T(t, "self_attn.sinks") L->sinks = (const uint16_t *)t->data + sl->head_begin;
        S_T(t, "mlp.router.weight") L->router = s_mat(t);
        S_T(t, "mlp.router.bias") L->router_b = t->data;
        S_T(b, "mlp.experts.gate_up_proj_blocks")
        S_T(s, "mlp.experts.gate_up_proj_scales")
        S_T(bb, "mlp.experts.gate_up_proj_bias")
        L->gate_up = s_experts(b, s, bb);
        s_expert_rows(&L->gate_up, 2 * u0, 2 * nu);
        S_T(b, "mlp.experts.down_proj_blocks")
        S_T(s, "mlp.experts.down_proj_scales")
        S_T(bb, "mlp.experts.down_proj_bias")
        L->down = s_experts(b, s, bb);
        s_expert_cols(&L->down, u0, nu);
        if (rank != 0) L->down.bias = NULL;
#undef S_T
        L->sliding = c->layer_sliding[l] ? 1 : 0;
        /* bytes read per decoded token (batch 1) */
        bytes += 2ull * H * 2; /* two norms */
        bytes += 2ull * ((uint64_t)L->q.rows + L->k.rows + L->v.rows) * (H + 1);
        bytes +=
            2ull * (uint64_t)L->o.rows * L->o.cols + (L->o_b ? 2ull * H : 0) + 2ull * w->n_heads;
        bytes += 2ull * E * (H + 1);
        uint64_t per_expert = (uint64_t)L->gate_up.mat.rows * (H / 32) * 17 +
                              2ull * L->gate_up.mat.rows +
                              (uint64_t)L->down.mat.rows * (L->down.mat.cols / 32) * 17 +
                              (L->down.bias ? 2ull * H : 0);
        bytes += (uint64_t)k * per_expert;
    }
    bytes += 2ull * (uint64_t)w->lm_head.rows * H + 2ull * H + 2ull * H;
    w->bytes_per_token = bytes;
    *out = w;
    return 0;
missing:
    rc = GERR_NOTFOUND;
fail:
    weights_free(&w);
    gerr_prefix(err, "loading model %s", dir);
    return rc;
}

void weights_free(weights_t **pw) {
    if (!pw || !*pw) return;
    weights_t *w = *pw;
    st_close(&w->st);
    free(w->layers);
    free(w);
    *pw = NULL;
}
