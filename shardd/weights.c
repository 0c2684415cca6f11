/* weights: binding checkpoint tensors to per-layer views (see weights.h). */
#include "weights.h"

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

int weights_load(const char *dir, weights_t **out, gerr_t *err) {
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
    const st_tensor_t *t;
    if (!(t = s_get(w->st, -1, "model.embed_tokens.weight", err))) goto missing;
    w->embed = s_mat(t);
    if (!(t = s_get(w->st, -1, "model.norm.weight", err))) goto missing;
    w->norm = t->data;
    if (!(t = s_get(w->st, -1,
                    c->tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight", err)))
        goto missing;
    w->lm_head = s_mat(t);
    w->n_heads = c->num_attention_heads;
    w->n_kv_heads = c->num_key_value_heads;
    w->n_units = c->intermediate_size;
    w->vocab_rows = c->vocab_size;
    w->vocab_begin = 0;
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
        S_T(t, "self_attn.q_proj.weight") L->q = s_mat(t);
        S_T(t, "self_attn.k_proj.weight") L->k = s_mat(t);
        S_T(t, "self_attn.v_proj.weight") L->v = s_mat(t);
        S_T(t, "self_attn.o_proj.weight") L->o = s_mat(t);
        S_T(t, "self_attn.q_proj.bias") L->q_b = t->data;
        S_T(t, "self_attn.k_proj.bias") L->k_b = t->data;
        S_T(t, "self_attn.v_proj.bias") L->v_b = t->data;
        S_T(t, "self_attn.o_proj.bias") L->o_b = t->data;
        S_T(t, "self_attn.sinks") L->sinks = t->data;
        S_T(t, "mlp.router.weight") L->router = s_mat(t);
        S_T(t, "mlp.router.bias") L->router_b = t->data;
        S_T(b, "mlp.experts.gate_up_proj_blocks")
        S_T(s, "mlp.experts.gate_up_proj_scales")
        S_T(bb, "mlp.experts.gate_up_proj_bias")
        L->gate_up = s_experts(b, s, bb);
        S_T(b, "mlp.experts.down_proj_blocks")
        S_T(s, "mlp.experts.down_proj_scales")
        S_T(bb, "mlp.experts.down_proj_bias")
        L->down = s_experts(b, s, bb);
#undef S_T
        L->sliding = c->layer_sliding[l] ? 1 : 0;
        /* bytes read per decoded token (batch 1) */
        bytes += 2ull * H * 2; /* two norms */
        bytes += 2ull * ((uint64_t)L->q.rows + L->k.rows + L->v.rows) * (H + 1);
        bytes += 2ull * (uint64_t)L->o.rows * L->o.cols + 2ull * H + 2ull * w->n_heads;
        bytes += 2ull * E * (H + 1);
        uint64_t per_expert = (uint64_t)L->gate_up.mat.rows * (H / 32) * 17 +
                              2ull * L->gate_up.mat.rows +
                              (uint64_t)L->down.mat.rows * (L->down.mat.cols / 32) * 17 + 2ull * H;
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
