/* gptoss-inspect: check a gpt-oss model folder and describe it.
 *
 *   gptoss-inspect DIR [--quiet]
 *
 * Prints the parsed config, the tensor table (name, dtype, shape, file, bytes)
 * and totals; validates every safetensors header, the index and the tensor
 * shapes the config implies. Exits 1 with the reason when the folder is invalid.
 * --quiet prints only the verdict and the totals. */
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "safetensors.h"

static void s_print_config(const gptoss_config_t *c) {
    printf("config:\n");
    printf("  hidden_size %d, intermediate_size %d, num_hidden_layers %d\n", c->hidden_size,
           c->intermediate_size, c->num_hidden_layers);
    printf("  num_attention_heads %d, num_key_value_heads %d, head_dim %d\n",
           c->num_attention_heads, c->num_key_value_heads, c->head_dim);
    printf("  num_local_experts %d, num_experts_per_tok %d, vocab_size %d\n", c->num_local_experts,
           c->num_experts_per_tok, c->vocab_size);
    printf("  rms_norm_eps %g, rope_theta %g, swiglu_limit %g (alpha %g)\n", c->rms_norm_eps,
           c->rope_theta, c->swiglu_limit, c->swiglu_alpha);
    if (c->rope_type[0])
        printf("  rope_scaling %s: factor %g, beta_fast %g, beta_slow %g, original_max %d, "
               "truncate %s\n",
               c->rope_type, c->rope_factor, c->rope_beta_fast, c->rope_beta_slow,
               c->rope_original_max_pos, c->rope_truncate ? "true" : "false");
    else
        printf("  rope_scaling none\n");
    printf("  sliding_window %d, layer_types ", c->sliding_window);
    for (int l = 0; l < c->num_hidden_layers; l++)
        printf("%s%c", c->layer_sliding[l] ? "S" : "F", l + 1 < c->num_hidden_layers ? ' ' : '\n');
    printf("  initial_context_length %d, max_position_embeddings %d\n", c->initial_context_length,
           c->max_position_embeddings);
    printf("  eos_token_id");
    for (int i = 0; i < c->n_eos; i++)
        printf(" %d", c->eos_token_ids[i]);
    printf(", pad_token_id %d, bos_token_id %d, tie_word_embeddings %s, quant %s\n",
           c->pad_token_id, c->bos_token_id, c->tie_word_embeddings ? "true" : "false",
           c->mxfp4 ? "mxfp4" : "none");
}

int main(int argc, char **argv) {
    const char *dir = NULL;
    int quiet = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quiet") == 0)
            quiet = 1;
        else if (argv[i][0] == '-') {
            fprintf(stderr, "usage: gptoss-inspect DIR [--quiet]\n");
            return 2;
        } else
            dir = argv[i];
    }
    if (!dir) {
        fprintf(stderr, "usage: gptoss-inspect DIR [--quiet]\n");
        return 2;
    }
    gerr_t err = {{0}};
    gptoss_config_t cfg;
    if (config_load(dir, &cfg, &err) != 0) {
        fprintf(stderr, "gptoss-inspect: invalid model folder: %s\n", err.msg);
        return 1;
    }
    if (!quiet) s_print_config(&cfg);
    st_model_t *m = NULL;
    if (st_open(dir, &m, &err) != 0) {
        fprintf(stderr, "gptoss-inspect: invalid model folder: %s\n", err.msg);
        return 1;
    }
    if (!quiet) {
        printf("tensors:\n  %-52s %-5s %-22s %-40s %14s\n", "name", "dtype", "shape", "file",
               "bytes");
        for (size_t i = 0; i < st_count(m); i++) {
            const st_tensor_t *t = st_at(m, i);
            char shape[96];
            size_t o = 0;
            o += (size_t)snprintf(shape + o, sizeof shape - o, "[");
            for (int d = 0; d < t->ndim && o < sizeof shape; d++)
                o += (size_t)snprintf(shape + o, sizeof shape - o, d ? ",%lld" : "%lld",
                                      (long long)t->shape[d]);
            if (o < sizeof shape) snprintf(shape + o, sizeof shape - o, "]");
            const char *path = st_file_path(m, t->file_index);
            const char *base = strrchr(path, '/');
            printf("  %-52s %-5s %-22s %-40s %14llu\n", t->name, st_dtype_name(t->dtype), shape,
                   base ? base + 1 : path, (unsigned long long)t->nbytes);
        }
    }
    int rc = config_check_tensors(&cfg, m, &err);
    printf("totals: %zu tensors, %llu bytes in %d file%s, %llu parameters\n", st_count(m),
           (unsigned long long)st_total_bytes(m), st_file_count(m), st_file_count(m) > 1 ? "s" : "",
           (unsigned long long)config_param_count(&cfg));
    st_close(&m);
    if (rc != 0) {
        fprintf(stderr, "gptoss-inspect: invalid model folder: %s\n", err.msg);
        return 1;
    }
    printf("ok: %s is a valid gpt-oss model folder\n", dir);
    return 0;
}
