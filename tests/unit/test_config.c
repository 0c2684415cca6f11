/* test_config: config.json parsing of the tiny-a fixture and of mutated copies
 * that must be refused with a message naming the key; and the checkpoint shape
 * check (config_check_tensors) on tiny-a and on checkpoints that do not match. */
#include <cjson/cJSON.h>
#include <string.h>

#include "config.h"
#include "tcheck.h"

static char *s_fixture_config(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/tiny-a/config.json", tcheck_fixtures());
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = calloc(1, 1 << 16);
    size_t n = fread(buf, 1, (1 << 16) - 1, f);
    fclose(f);
    buf[n] = 0;
    return buf;
}

/* Applies `mutate` to the fixture config and expects config_parse to fail mentioning `needle`. */
static void s_refuse(const char *what, void (*mutate)(cJSON *), const char *needle) {
    char *text = s_fixture_config();
    cJSON *root = cJSON_Parse(text);
    mutate(root);
    char *out = cJSON_PrintUnformatted(root);
    gptoss_config_t cfg;
    gerr_t err = {{0}};
    int rc = config_parse(out, strlen(out), &cfg, &err);
    CHECK_MSG(rc < 0, "%s: accepted", what);
    CHECK_MSG(strstr(err.msg, needle) != NULL, "%s: message '%s' lacks '%s'", what, err.msg,
              needle);
    free(out);
    cJSON_Delete(root);
    free(text);
}

static void m_model_type(cJSON *r) {
    cJSON_ReplaceItemInObject(r, "model_type", cJSON_CreateString("llama"));
}
static void m_no_hidden(cJSON *r) {
    cJSON_DeleteItemFromObject(r, "hidden_size");
}
static void m_no_layer_types(cJSON *r) {
    cJSON_DeleteItemFromObject(r, "layer_types");
}
static void m_hidden_48(cJSON *r) {
    cJSON_ReplaceItemInObject(r, "hidden_size", cJSON_CreateNumber(48));
}
static void m_heads(cJSON *r) {
    cJSON_ReplaceItemInObject(r, "num_attention_heads", cJSON_CreateNumber(5));
}
static void m_layers(cJSON *r) {
    cJSON_ReplaceItemInObject(r, "num_hidden_layers", cJSON_CreateNumber(3));
}
static void m_layer_kind(cJSON *r) {
    cJSON *lt = cJSON_GetObjectItem(r, "layer_types");
    cJSON_ReplaceItemInArray(lt, 1, cJSON_CreateString("global"));
}
static void m_topk(cJSON *r) {
    cJSON_ReplaceItemInObject(r, "num_experts_per_tok", cJSON_CreateNumber(9));
}
static void m_quant(cJSON *r) {
    cJSON_DeleteItemFromObject(r, "quantization_config");
}
static void m_rope(cJSON *r) {
    cJSON *rs = cJSON_GetObjectItem(r, "rope_scaling");
    cJSON_ReplaceItemInObject(rs, "rope_type", cJSON_CreateString("linear"));
}
static void m_type(cJSON *r) {
    cJSON_ReplaceItemInObject(r, "head_dim", cJSON_CreateString("16"));
}
static void m_eos(cJSON *r) {
    cJSON_ReplaceItemInObject(r, "eos_token_id", cJSON_CreateNumber(100000));
}

int main(void) {
    char *text = s_fixture_config();
    CHECK(text != NULL);
    gptoss_config_t c;
    gerr_t err = {{0}};
    CHECK_MSG(config_parse(text, strlen(text), &c, &err) == 0, "%s", err.msg);
    CHECK(c.hidden_size == 64 && c.intermediate_size == 64 && c.num_hidden_layers == 2);
    CHECK(c.num_attention_heads == 4 && c.num_key_value_heads == 2 && c.head_dim == 16);
    CHECK(c.num_local_experts == 4 && c.num_experts_per_tok == 2 && c.vocab_size == 512);
    CHECK(c.sliding_window == 8 && c.layer_sliding[0] && !c.layer_sliding[1]);
    CHECK(c.n_eos == 1 && c.eos_token_ids[0] == 510 && c.pad_token_id == 511);
    CHECK(strcmp(c.rope_type, "yarn") == 0 && c.rope_factor == 32 && c.rope_beta_fast == 32 &&
          c.rope_beta_slow == 1 && c.rope_original_max_pos == 4096 && !c.rope_truncate);
    CHECK(c.rope_theta == 150000 && c.swiglu_limit == 7.0f && c.swiglu_alpha == 1.702f);
    CHECK_NEAR(c.rms_norm_eps, 1e-5, 1e-12);
    CHECK(c.max_position_embeddings == 131072 && c.initial_context_length == 4096);
    CHECK(c.attention_bias && !c.tie_word_embeddings && c.mxfp4);
    free(text);

    s_refuse("model_type llama", m_model_type, "gpt_oss");
    s_refuse("missing hidden_size", m_no_hidden, "hidden_size");
    s_refuse("missing layer_types", m_no_layer_types, "layer_types");
    s_refuse("hidden 48", m_hidden_48, "multiple of");
    s_refuse("heads 5 / kv 2", m_heads, "divisible");
    s_refuse("layer_types length", m_layers, "layer_types");
    s_refuse("layer kind", m_layer_kind, "layer_types[1]");
    s_refuse("top-k > experts", m_topk, "num_experts_per_tok");
    s_refuse("no quantization", m_quant, "mxfp4");
    s_refuse("rope type", m_rope, "yarn");
    s_refuse("head_dim string", m_type, "head_dim");
    s_refuse("eos out of vocab", m_eos, "eos_token_id");
    CHECK(config_parse("{not json", 9, &c, &err) == GERR_FORMAT);

    /* the checkpoint matches its config; a config with other shapes does not */
    char dir[512];
    snprintf(dir, sizeof dir, "%s/tiny-a", tcheck_fixtures());
    CHECK_MSG(config_load(dir, &c, &err) == 0, "%s", err.msg);
    st_model_t *m = NULL;
    CHECK_MSG(st_open(dir, &m, &err) == 0, "%s", err.msg);
    if (m) {
        CHECK_MSG(config_check_tensors(&c, m, &err) == 0, "%s", err.msg);
        gptoss_config_t c2 = c;
        c2.num_local_experts = 8;
        CHECK(config_check_tensors(&c2, m, &err) < 0);
        CHECK_MSG(strstr(err.msg, "model.layers.0.") && strstr(err.msg, "expected"), "%s", err.msg);
        c2 = c;
        c2.num_hidden_layers = 3;
        c2.layer_sliding[2] = true;
        CHECK(config_check_tensors(&c2, m, &err) == GERR_NOTFOUND);
        CHECK_MSG(strstr(err.msg, "model.layers.2.") && strstr(err.msg, "missing"), "%s", err.msg);
        c2 = c;
        c2.vocab_size = 1024;
        CHECK(config_check_tensors(&c2, m, &err) < 0);
        CHECK_MSG(strstr(err.msg, "[1024, 64]"), "%s", err.msg);
        st_close(&m);
    }
    CHECK(config_param_count(&c) == 191184);
    return tcheck_done("test_config");
}
