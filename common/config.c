/* config: parse and check a gpt-oss config.json (GPTOSS.md section 1.1).
 *
 * Strict: a required key that is missing or of the wrong type is an error that
 * names the key; shapes that the kernels cannot handle (hidden size not a
 * multiple of the MXFP4 block, heads not a multiple of KV heads, ...) are refused
 * here, at load, rather than discovered mid-inference. Optional keys get the
 * gpt-oss defaults. config_check_tensors then holds a checkpoint to the shapes
 * the config implies (GPTOSS.md section 2). */
#include "config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mxfp4.h"

static int s_get_int(const cJSON *root, const char *key, bool required, int def, int lo, int hi,
                     int *out, gerr_t *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) {
            gerr_set(err, "config.json: required key '%s' is missing", key);
            return GERR_INVALID;
        }
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi) {
        gerr_set(err, "config.json: '%s' must be an integer in [%d, %d]", key, lo, hi);
        return GERR_INVALID;
    }
    *out = (int)v->valuedouble;
    return 0;
}

static int s_get_num(const cJSON *root, const char *key, bool required, double def, double *out,
                     gerr_t *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) {
            gerr_set(err, "config.json: required key '%s' is missing", key);
            return GERR_INVALID;
        }
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        gerr_set(err, "config.json: '%s' must be a number", key);
        return GERR_INVALID;
    }
    *out = v->valuedouble;
    return 0;
}

static int s_get_bool(const cJSON *root, const char *key, bool def, bool *out, gerr_t *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v)) {
        gerr_set(err, "config.json: '%s' must be true or false", key);
        return GERR_INVALID;
    }
    *out = cJSON_IsTrue(v);
    return 0;
}

/* eos_token_id may be an int or a list of ints. */
static int s_get_eos(const cJSON *root, gptoss_config_t *cfg, gerr_t *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    cfg->n_eos = 0;
    if (!v || cJSON_IsNull(v)) return 0;
    if (cJSON_IsNumber(v)) {
        if (v->valuedouble < 0 || v->valuedouble >= cfg->vocab_size) goto bad;
        cfg->eos_token_ids[cfg->n_eos++] = (int)v->valuedouble;
        return 0;
    }
    if (!cJSON_IsArray(v)) goto bad;
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= cfg->vocab_size ||
            cfg->n_eos >= CONFIG_MAX_EOS)
            goto bad;
        cfg->eos_token_ids[cfg->n_eos++] = (int)e->valuedouble;
    }
    return 0;
bad:
    gerr_set(err, "config.json: 'eos_token_id' must be a token id below vocab_size or a list of "
                  "at most 8 of them");
    return GERR_INVALID;
}

static int s_parse(const cJSON *root, gptoss_config_t *cfg, gerr_t *err) {
    memset(cfg, 0, sizeof *cfg);
    if (!cJSON_IsObject(root)) {
        gerr_set(err, "config.json: not a JSON object");
        return GERR_FORMAT;
    }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!cJSON_IsString(mt)) {
        gerr_set(err, "config.json: required key 'model_type' is missing (expected \"gpt_oss\")");
        return GERR_INVALID;
    }
    if (strcmp(mt->valuestring, "gpt_oss") != 0) {
        gerr_set(err, "config.json: model_type is \"%s\"; this server runs only \"gpt_oss\" models",
                 mt->valuestring);
        return GERR_INVALID;
    }
    int rc;
#define INT_KEY(key, req, def, lo, hi)                                                             \
    if ((rc = s_get_int(root, #key, req, def, lo, hi, &cfg->key, err)) != 0) return rc
    INT_KEY(hidden_size, true, 0, 1, 1 << 20);
    INT_KEY(intermediate_size, true, 0, 1, 1 << 20);
    INT_KEY(num_hidden_layers, true, 0, 1, CONFIG_MAX_LAYERS);
    INT_KEY(num_attention_heads, true, 0, 1, 4096);
    INT_KEY(num_key_value_heads, true, 0, 1, 4096);
    INT_KEY(head_dim, true, 0, 2, 1024);
    INT_KEY(num_local_experts, true, 0, 1, 4096);
    INT_KEY(vocab_size, true, 0, 1, 1 << 24);
    INT_KEY(sliding_window, true, 0, 1, INT_MAX);
    INT_KEY(max_position_embeddings, true, 0, 1, INT_MAX);
    INT_KEY(initial_context_length, false, 4096, 1, INT_MAX);
    INT_KEY(pad_token_id, false, -1, -1, 1 << 24);
    INT_KEY(bos_token_id, false, -1, -1, 1 << 24);
#undef INT_KEY
    /* num_experts_per_tok, with the legacy experts_per_token as a fallback */
    if (cJSON_GetObjectItemCaseSensitive(root, "num_experts_per_tok"))
        rc = s_get_int(root, "num_experts_per_tok", true, 0, 1, 4096, &cfg->num_experts_per_tok,
                       err);
    else
        rc = s_get_int(root, "experts_per_token", true, 0, 1, 4096, &cfg->num_experts_per_tok, err);
    if (rc) {
        if (!cJSON_GetObjectItemCaseSensitive(root, "experts_per_token"))
            gerr_set(err, "config.json: required key 'num_experts_per_tok' is missing");
        return rc;
    }
    double d;
    if ((rc = s_get_num(root, "rms_norm_eps", true, 0, &d, err))) return rc;
    cfg->rms_norm_eps = (float)d;
    if ((rc = s_get_num(root, "rope_theta", true, 0, &cfg->rope_theta, err))) return rc;
    if ((rc = s_get_num(root, "swiglu_limit", true, 0, &d, err))) return rc;
    cfg->swiglu_limit = (float)d;
    cfg->swiglu_alpha = 1.702f;
    if ((rc = s_get_bool(root, "attention_bias", true, &cfg->attention_bias, err))) return rc;
    if ((rc = s_get_bool(root, "tie_word_embeddings", false, &cfg->tie_word_embeddings, err)))
        return rc;
    if ((rc = s_get_eos(root, cfg, err))) return rc;

    /* rope_scaling: YaRN (or absent / null = plain RoPE) */
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    cfg->rope_factor = 1.0;
    if (rs && !cJSON_IsNull(rs)) {
        if (!cJSON_IsObject(rs)) {
            gerr_set(err, "config.json: 'rope_scaling' must be an object or null");
            return GERR_INVALID;
        }
        const cJSON *rt = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
        if (!rt) rt = cJSON_GetObjectItemCaseSensitive(rs, "type");
        if (!cJSON_IsString(rt) || strcmp(rt->valuestring, "yarn") != 0) {
            gerr_set(err, "config.json: rope_scaling.rope_type must be \"yarn\" for gpt-oss");
            return GERR_INVALID;
        }
        snprintf(cfg->rope_type, sizeof cfg->rope_type, "yarn");
        double orig;
        if ((rc = s_get_num(rs, "factor", true, 0, &cfg->rope_factor, err)) ||
            (rc = s_get_num(rs, "beta_fast", false, 32.0, &cfg->rope_beta_fast, err)) ||
            (rc = s_get_num(rs, "beta_slow", false, 1.0, &cfg->rope_beta_slow, err)) ||
            (rc = s_get_num(rs, "original_max_position_embeddings", false,
                            cfg->initial_context_length, &orig, err)) ||
            (rc = s_get_bool(rs, "truncate", true, &cfg->rope_truncate, err))) {
            gerr_prefix(err, "in rope_scaling");
            return rc;
        }
        if (cfg->rope_factor < 1.0 || orig < 1 || orig > INT_MAX || cfg->rope_beta_fast <= 0 ||
            cfg->rope_beta_slow <= 0) {
            gerr_set(err, "config.json: rope_scaling needs factor >= 1, positive betas and "
                          "original_max_position_embeddings >= 1");
            return GERR_INVALID;
        }
        cfg->rope_original_max_pos = (int)orig;
    }

    /* layer_types */
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
    if (!cJSON_IsArray(lt)) {
        gerr_set(err, "config.json: required key 'layer_types' is missing or not a list");
        return GERR_INVALID;
    }
    if (cJSON_GetArraySize(lt) != cfg->num_hidden_layers) {
        gerr_set(err, "config.json: layer_types has %d entries but num_hidden_layers is %d",
                 cJSON_GetArraySize(lt), cfg->num_hidden_layers);
        return GERR_INVALID;
    }
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, lt) {
        if (cJSON_IsString(e) && strcmp(e->valuestring, "sliding_attention") == 0)
            cfg->layer_sliding[i] = true;
        else if (cJSON_IsString(e) && strcmp(e->valuestring, "full_attention") == 0)
            cfg->layer_sliding[i] = false;
        else {
            gerr_set(err,
                     "config.json: layer_types[%d] must be \"sliding_attention\" or "
                     "\"full_attention\"",
                     i);
            return GERR_INVALID;
        }
        i++;
    }

    /* quantization */
    const cJSON *qc = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    const cJSON *qm =
        cJSON_IsObject(qc) ? cJSON_GetObjectItemCaseSensitive(qc, "quant_method") : NULL;
    if (!cJSON_IsString(qm) || strcmp(qm->valuestring, "mxfp4") != 0) {
        gerr_set(err, "config.json: quantization_config.quant_method must be \"mxfp4\" (the "
                      "released gpt-oss checkpoints); dequantized bf16 experts are not supported");
        return GERR_INVALID;
    }
    cfg->mxfp4 = true;

    /* consistency */
    if (cfg->hidden_size % MXFP4_BLOCK) {
        gerr_set(err, "config.json: hidden_size %d is not a multiple of the MXFP4 block (32)",
                 cfg->hidden_size);
        return GERR_INVALID;
    }
    if (cfg->intermediate_size % MXFP4_BLOCK) {
        gerr_set(err, "config.json: intermediate_size %d is not a multiple of the MXFP4 block (32)",
                 cfg->intermediate_size);
        return GERR_INVALID;
    }
    if (cfg->num_attention_heads % cfg->num_key_value_heads) {
        gerr_set(err,
                 "config.json: num_attention_heads %d is not divisible by num_key_value_heads %d",
                 cfg->num_attention_heads, cfg->num_key_value_heads);
        return GERR_INVALID;
    }
    if (cfg->head_dim % 2) {
        gerr_set(err, "config.json: head_dim %d must be even (RoPE rotates pairs)", cfg->head_dim);
        return GERR_INVALID;
    }
    if (cfg->num_experts_per_tok > cfg->num_local_experts) {
        gerr_set(err, "config.json: num_experts_per_tok %d exceeds num_local_experts %d",
                 cfg->num_experts_per_tok, cfg->num_local_experts);
        return GERR_INVALID;
    }
    if (!(cfg->rms_norm_eps > 0) || !(cfg->rope_theta > 1) || !(cfg->swiglu_limit > 0)) {
        gerr_set(err, "config.json: rms_norm_eps, swiglu_limit must be > 0 and rope_theta > 1");
        return GERR_INVALID;
    }
    if (cfg->pad_token_id >= cfg->vocab_size || cfg->bos_token_id >= cfg->vocab_size) {
        gerr_set(err, "config.json: pad_token_id / bos_token_id must be below vocab_size %d",
                 cfg->vocab_size);
        return GERR_INVALID;
    }
    return 0;
}

int config_parse(const char *json, size_t len, gptoss_config_t *cfg, gerr_t *err) {
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) {
        gerr_set(err, "config.json: not well-formed JSON");
        return GERR_FORMAT;
    }
    int rc = s_parse(root, cfg, err);
    cJSON_Delete(root);
    return rc;
}

int config_load(const char *path, gptoss_config_t *cfg, gerr_t *err) {
    char file[4096];
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
        snprintf(file, sizeof file, "%s/config.json", path);
    else
        snprintf(file, sizeof file, "%s", path);
    FILE *f = fopen(file, "rb");
    if (!f) {
        gerr_set(err, "%s: cannot open: %s", file, strerror(errno));
        return GERR_IO;
    }
    size_t max = 1u << 20;
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad || n > max) {
        free(buf);
        gerr_set(err, "%s: cannot read (or larger than 1 MiB)", file);
        return GERR_IO;
    }
    int rc = config_parse(buf, n, cfg, err);
    free(buf);
    if (rc) gerr_prefix(err, "%s", file);
    return rc;
}

void config_layer_name(char *buf, size_t size, int layer, const char *suffix) {
    snprintf(buf, size, "model.layers.%d.%s", layer, suffix);
}

typedef struct {
    const char *suffix;
    st_dtype_t dtype;
    int ndim;
    int64_t shape[4];
} s_expect_t;

static int s_check_one(const st_model_t *m, const char *name, const s_expect_t *x, gerr_t *err) {
    const st_tensor_t *t = st_find(m, name);
    if (!t) {
        gerr_set(err, "checkpoint: tensor '%s' is missing", name);
        return GERR_NOTFOUND;
    }
    int rc = st_expect(t, x->dtype, x->ndim, x->shape, err);
    if (rc) gerr_prefix(err, "checkpoint does not match config.json");
    return rc;
}

int config_check_tensors(const gptoss_config_t *c, const st_model_t *m, gerr_t *err) {
    int64_t H = c->hidden_size, I = c->intermediate_size, E = c->num_local_experts;
    int64_t V = c->vocab_size, D = c->head_dim;
    int64_t Q = (int64_t)c->num_attention_heads * D, KV = (int64_t)c->num_key_value_heads * D;
    const s_expect_t globals[] = {
        {"model.embed_tokens.weight", ST_DTYPE_BF16, 2, {V, H}},
        {"model.norm.weight", ST_DTYPE_BF16, 1, {H}},
        {"lm_head.weight", ST_DTYPE_BF16, 2, {V, H}},
    };
    int rc;
    for (size_t i = 0; i < sizeof globals / sizeof *globals; i++) {
        if (c->tie_word_embeddings && i == 2) continue;
        if ((rc = s_check_one(m, globals[i].suffix, &globals[i], err))) return rc;
    }
    const s_expect_t layer[] = {
        {"input_layernorm.weight", ST_DTYPE_BF16, 1, {H}},
        {"post_attention_layernorm.weight", ST_DTYPE_BF16, 1, {H}},
        {"self_attn.q_proj.weight", ST_DTYPE_BF16, 2, {Q, H}},
        {"self_attn.k_proj.weight", ST_DTYPE_BF16, 2, {KV, H}},
        {"self_attn.v_proj.weight", ST_DTYPE_BF16, 2, {KV, H}},
        {"self_attn.o_proj.weight", ST_DTYPE_BF16, 2, {H, Q}},
        {"self_attn.q_proj.bias", ST_DTYPE_BF16, 1, {Q}},
        {"self_attn.k_proj.bias", ST_DTYPE_BF16, 1, {KV}},
        {"self_attn.v_proj.bias", ST_DTYPE_BF16, 1, {KV}},
        {"self_attn.o_proj.bias", ST_DTYPE_BF16, 1, {H}},
        {"self_attn.sinks", ST_DTYPE_BF16, 1, {c->num_attention_heads}},
        {"mlp.router.weight", ST_DTYPE_BF16, 2, {E, H}},
        {"mlp.router.bias", ST_DTYPE_BF16, 1, {E}},
        {"mlp.experts.gate_up_proj_blocks", ST_DTYPE_U8, 4, {E, 2 * I, H / 32, 16}},
        {"mlp.experts.gate_up_proj_scales", ST_DTYPE_U8, 3, {E, 2 * I, H / 32}},
        {"mlp.experts.gate_up_proj_bias", ST_DTYPE_BF16, 2, {E, 2 * I}},
        {"mlp.experts.down_proj_blocks", ST_DTYPE_U8, 4, {E, H, I / 32, 16}},
        {"mlp.experts.down_proj_scales", ST_DTYPE_U8, 3, {E, H, I / 32}},
        {"mlp.experts.down_proj_bias", ST_DTYPE_BF16, 2, {E, H}},
    };
    size_t nl = sizeof layer / sizeof *layer;
    if (!c->attention_bias) {
        gerr_set(err, "config.json: attention_bias is false, but gpt-oss attention has biases");
        return GERR_INVALID;
    }
    char name[256];
    for (int l = 0; l < c->num_hidden_layers; l++) {
        for (size_t i = 0; i < nl; i++) {
            config_layer_name(name, sizeof name, l, layer[i].suffix);
            if ((rc = s_check_one(m, name, &layer[i], err))) return rc;
        }
    }
    return 0;
}

uint64_t config_param_count(const gptoss_config_t *c) {
    uint64_t H = (uint64_t)c->hidden_size, I = (uint64_t)c->intermediate_size;
    uint64_t E = (uint64_t)c->num_local_experts, V = (uint64_t)c->vocab_size;
    uint64_t Q = (uint64_t)c->num_attention_heads * (uint64_t)c->head_dim;
    uint64_t KV = (uint64_t)c->num_key_value_heads * (uint64_t)c->head_dim;
    uint64_t attn = Q * H + Q + 2 * (KV * H + KV) + H * Q + H + (uint64_t)c->num_attention_heads;
    uint64_t moe = E * H + E + E * (2 * I * H + 2 * I + H * I + H);
    uint64_t layer = attn + moe + 2 * H;
    return (uint64_t)c->num_hidden_layers * layer + V * H * (c->tie_word_embeddings ? 1 : 2) + H;
}
