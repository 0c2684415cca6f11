/* config: the gpt-oss config.json, parsed into a C struct and checked.
 *
 * Every key of GPTOSS.md section 1.1 is read. Missing required keys, a
 * model_type other than gpt_oss, and inconsistent shapes are refused with a
 * message naming the key. config_check_tensors then verifies that a checkpoint
 * holds every tensor the config implies, with the right dtype and shape. */
#ifndef GPTOSS_CONFIG_H
#define GPTOSS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gerr.h"
#include "safetensors.h"

#define CONFIG_MAX_LAYERS 256
#define CONFIG_MAX_EOS    8

typedef struct {
    int hidden_size;         /* H: 2880 */
    int intermediate_size;   /* I: per-expert FFN width, 2880 */
    int num_hidden_layers;   /* L: 24 (20b) / 36 (120b) */
    int num_attention_heads; /* 64 */
    int num_key_value_heads; /* 8 */
    int head_dim;            /* D: 64 */
    int num_local_experts;   /* E: 32 / 128 */
    int num_experts_per_tok; /* top-k: 4 */
    int vocab_size;          /* 201088 */
    float rms_norm_eps;      /* 1e-5 */
    double rope_theta;       /* 150000 */
    /* rope_scaling (YaRN) */
    char rope_type[16];                    /* "yarn" (or "" when absent: plain RoPE) */
    double rope_factor;                    /* 32 */
    double rope_beta_fast;                 /* 32 */
    double rope_beta_slow;                 /* 1 */
    int rope_original_max_pos;             /* 4096 */
    bool rope_truncate;                    /* false */
    int sliding_window;                    /* 128 */
    bool layer_sliding[CONFIG_MAX_LAYERS]; /* per layer: true = sliding_attention */
    float swiglu_limit;                    /* 7.0 */
    float swiglu_alpha;                    /* 1.702, hard-coded (not in config.json) */
    int initial_context_length;            /* 4096 */
    int max_position_embeddings;           /* 131072 */
    bool attention_bias;                   /* true */
    bool tie_word_embeddings;              /* false */
    int eos_token_ids[CONFIG_MAX_EOS];     /* config eos (int or list) */
    int n_eos;
    int pad_token_id; /* -1 when absent */
    int bos_token_id; /* -1 when absent */
    bool mxfp4;       /* quantization_config.quant_method == "mxfp4" */
} gptoss_config_t;

/* Parses config.json text (len bytes, need not be NUL-terminated) into *cfg. */
int config_parse(const char *json, size_t len, gptoss_config_t *cfg, gerr_t *err);
/* Reads and parses DIR/config.json (or a path to a config file) into *cfg. */
int config_load(const char *path, gptoss_config_t *cfg, gerr_t *err);
/* Checks that m holds every tensor cfg implies with the right dtype and shape. */
int config_check_tensors(const gptoss_config_t *cfg, const st_model_t *m, gerr_t *err);
/* Writes the name of layer tensor `suffix` (e.g. "self_attn.q_proj.weight") of
 * layer `layer` into buf: "model.layers.<layer>.<suffix>". */
void config_layer_name(char *buf, size_t size, int layer, const char *suffix);
/* Total parameters and bytes implied by cfg (MXFP4 counted at 4.25 bits/weight). */
uint64_t config_param_count(const gptoss_config_t *cfg);

#endif
