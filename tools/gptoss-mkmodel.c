/* gptoss-mkmodel: write a gpt-oss checkpoint with random weights in the exact
 * Hugging Face layout (config.json, generation_config.json, model.safetensors or
 * model-0000K-of-0000M.safetensors + model.safetensors.index.json, optionally
 * the tokenizer files).
 *
 *   gptoss-mkmodel --out DIR --preset tiny|20b|120b [--layers N] [--hidden N]
 *                  [--intermediate N] [--experts N] [--top-k N] [--heads N]
 *                  [--kv-heads N] [--head-dim N] [--vocab N] [--sliding-window N]
 *                  [--shards N] [--seed S] [--tokenizer DIR [--script TEXT]]
 *                  [--sparse]
 *
 * --sparse writes the headers but leaves the data as holes (all zero bytes, no
 * disk used): for tests of shapes and loading at full size, not for inference.
 *
 * --script TEXT (needs --tokenizer) writes a "scripted model" (DESIGN.md,
 * Testing): every o_proj and expert down projection is zero (weights and
 * biases), so the last hidden state is the current token's embedding; the final
 * norm weight is 1; lm_head row b is K * unit(embed[a]) for each step a -> b of
 * the script, where the script is "assistant" followed by the tokens of TEXT
 * (special tokens such as <|channel|> parsed). Greedy decoding after a prompt
 * ending in <|start|>assistant then emits exactly TEXT, with logit margins near
 * K * sqrt(hidden). Each token of the script may have only one successor.
 * Weights are a pure function of (seed, tensor name), so the same seed gives the
 * same tensors whatever the shard count. Tensors are generated and written in
 * 1 MiB chunks, so the 120b shape (~65 GB) needs little memory. Values are
 * scaled so activations stay well-behaved through all layers: linear weights
 * uniform with std ~ 1/sqrt(fan_in), MXFP4 scales chosen so that an expert's
 * weights have the same std, norms near 1.
 *
 * Shard file names follow the hub's off-by-one convention: N files are named
 * model-00000-of-<N-1>.safetensors ... (gpt-oss-20b has 3 files "of-00002"). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bf16.h"
#include "mxfp4.h"
#include "tokenizer.h"

#define S_SCRIPT_K 3.0 /* lm_head row norm of a scripted step */

/* A scripted model's transitions a -> b, sorted by a. */
typedef struct {
    int n;
    int32_t *from, *to;
    float *unit; /* [n][hidden]: unit(embed[from[i]]) */
} s_script_t;

static s_script_t s_script;

typedef struct {
    int hidden, intermediate, layers, heads, kv_heads, head_dim, experts, top_k, vocab, window;
    int eos, pad, bos;
} s_shape_t;

typedef enum {
    S_KIND_BF16_LINEAR,
    S_KIND_BF16_NORM,
    S_KIND_BF16_SMALL,
    S_KIND_BF16_UNIT,
    S_KIND_MXFP4_BLOCKS,
    S_KIND_MXFP4_SCALES
} s_kind_t;

typedef enum { S_FILL_RANDOM = 0, S_FILL_ZERO, S_FILL_ONES, S_FILL_SCRIPT_HEAD } s_fill_t;

typedef struct {
    char name[128];
    s_fill_t fill; /* how the data is made (random unless scripted) */
    int bf16;      /* 1: BF16, 0: U8 */
    int ndim;
    int64_t shape[4];
    uint64_t nbytes;
    s_kind_t kind;
    double std;      /* for BF16 kinds */
    int scale_base;  /* for MXFP4 scales: E8M0 byte of the block scale */
    int file;        /* shard index */
    uint64_t offset; /* relative to the data region of its file */
} s_tensor_t;

static uint64_t s_splitmix(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t s_hash_name(const char *s, uint64_t seed) {
    uint64_t h = 1469598103934665603ull ^ seed;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    uint64_t st = h;
    return s_splitmix(&st);
}

static int s_usage(void) {
    fprintf(stderr,
            "usage: gptoss-mkmodel --out DIR --preset tiny|20b|120b [--layers N] [--hidden N]\n"
            "       [--intermediate N] [--experts N] [--top-k N] [--heads N] [--kv-heads N]\n"
            "       [--head-dim N] [--vocab N] [--sliding-window N] [--shards N] [--seed S]\n"
            "       [--tokenizer DIR [--script TEXT]] [--sparse]\n");
    return 2;
}

static int s_preset(const char *name, s_shape_t *s) {
    /* the real models (GPTOSS.md 1.1) */
    *s = (s_shape_t){.hidden = 2880,
                     .intermediate = 2880,
                     .layers = 24,
                     .heads = 64,
                     .kv_heads = 8,
                     .head_dim = 64,
                     .experts = 32,
                     .top_k = 4,
                     .vocab = 201088,
                     .window = 128};
    if (strcmp(name, "20b") == 0) return 0;
    if (strcmp(name, "120b") == 0) {
        s->layers = 36;
        s->experts = 128;
        return 0;
    }
    if (strcmp(name, "tiny") == 0) {
        /* tiny shapes with the real vocabulary, so the real tokenizer works with it */
        *s = (s_shape_t){.hidden = 64,
                         .intermediate = 64,
                         .layers = 2,
                         .heads = 4,
                         .kv_heads = 2,
                         .head_dim = 16,
                         .experts = 4,
                         .top_k = 2,
                         .vocab = 201088,
                         .window = 8};
        return 0;
    }
    return -1;
}

static int s_parse_int(const char *v, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || x < lo || x > hi) return -1;
    *out = (int)x;
    return 0;
}

static void s_add(s_tensor_t *t, size_t *n, const char *name, int bf16, int ndim,
                  const int64_t *shape, s_kind_t kind, double std, int scale_base) {
    s_tensor_t *x = &t[(*n)++];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%s", name);
    x->bf16 = bf16;
    x->ndim = ndim;
    uint64_t count = 1;
    for (int d = 0; d < ndim; d++) {
        x->shape[d] = shape[d];
        count *= (uint64_t)shape[d];
    }
    x->nbytes = count * (bf16 ? 2 : 1);
    x->kind = kind;
    x->std = std;
    x->scale_base = scale_base;
}

/* E8M0 byte whose scale makes uniformly random E2M1 codes (rms 2.93) have std `std`. */
static int s_mxfp4_scale_for(double std) {
    int e = (int)lround(log2(std / 2.926));
    return e + 127;
}

/* The full tensor list in canonical order: layers, then the globals (as in the hub's last shard).
 */
static size_t s_build_tensors(const s_shape_t *s, s_tensor_t *t) {
    size_t n = 0;
    int64_t H = s->hidden, I = s->intermediate, E = s->experts, V = s->vocab;
    int64_t Q = (int64_t)s->heads * s->head_dim, KV = (int64_t)s->kv_heads * s->head_dim;
    char nm[128];
    double sh = 1.0 / sqrt((double)H), sq = 1.0 / sqrt((double)Q), si = 1.0 / sqrt((double)I);
    for (int l = 0; l < s->layers; l++) {
#define L(suffix) (snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suffix), nm)
#define SH(...)   ((const int64_t[]){__VA_ARGS__})
        s_add(t, &n, L("input_layernorm.weight"), 1, 1, SH(H), S_KIND_BF16_NORM, 0.1, 0);
        s_add(t, &n, L("mlp.experts.down_proj_bias"), 1, 2, SH(E, H), S_KIND_BF16_SMALL, 0.02, 0);
        s_add(t, &n, L("mlp.experts.down_proj_blocks"), 0, 4, SH(E, H, I / 32, 16),
              S_KIND_MXFP4_BLOCKS, 0, 0);
        s_add(t, &n, L("mlp.experts.down_proj_scales"), 0, 3, SH(E, H, I / 32), S_KIND_MXFP4_SCALES,
              0, s_mxfp4_scale_for(0.5 * si));
        s_add(t, &n, L("mlp.experts.gate_up_proj_bias"), 1, 2, SH(E, 2 * I), S_KIND_BF16_SMALL,
              0.02, 0);
        s_add(t, &n, L("mlp.experts.gate_up_proj_blocks"), 0, 4, SH(E, 2 * I, H / 32, 16),
              S_KIND_MXFP4_BLOCKS, 0, 0);
        s_add(t, &n, L("mlp.experts.gate_up_proj_scales"), 0, 3, SH(E, 2 * I, H / 32),
              S_KIND_MXFP4_SCALES, 0, s_mxfp4_scale_for(sh));
        s_add(t, &n, L("mlp.router.bias"), 1, 1, SH(E), S_KIND_BF16_SMALL, 0.1, 0);
        s_add(t, &n, L("mlp.router.weight"), 1, 2, SH(E, H), S_KIND_BF16_LINEAR, sh, 0);
        s_add(t, &n, L("post_attention_layernorm.weight"), 1, 1, SH(H), S_KIND_BF16_NORM, 0.1, 0);
        s_add(t, &n, L("self_attn.k_proj.bias"), 1, 1, SH(KV), S_KIND_BF16_SMALL, 0.02, 0);
        s_add(t, &n, L("self_attn.k_proj.weight"), 1, 2, SH(KV, H), S_KIND_BF16_LINEAR, sh, 0);
        s_add(t, &n, L("self_attn.o_proj.bias"), 1, 1, SH(H), S_KIND_BF16_SMALL, 0.02, 0);
        s_add(t, &n, L("self_attn.o_proj.weight"), 1, 2, SH(H, Q), S_KIND_BF16_LINEAR, 0.5 * sq, 0);
        s_add(t, &n, L("self_attn.q_proj.bias"), 1, 1, SH(Q), S_KIND_BF16_SMALL, 0.02, 0);
        s_add(t, &n, L("self_attn.q_proj.weight"), 1, 2, SH(Q, H), S_KIND_BF16_LINEAR, sh, 0);
        s_add(t, &n, L("self_attn.sinks"), 1, 1, SH(s->heads), S_KIND_BF16_UNIT, 1.0, 0);
        s_add(t, &n, L("self_attn.v_proj.bias"), 1, 1, SH(KV), S_KIND_BF16_SMALL, 0.02, 0);
        s_add(t, &n, L("self_attn.v_proj.weight"), 1, 2, SH(KV, H), S_KIND_BF16_LINEAR, sh, 0);
#undef L
    }
    s_add(t, &n, "lm_head.weight", 1, 2, SH(V, H), S_KIND_BF16_LINEAR, 2.0 * sh, 0);
    s_add(t, &n, "model.embed_tokens.weight", 1, 2, SH(V, H), S_KIND_BF16_UNIT, 1.0, 0);
    s_add(t, &n, "model.norm.weight", 1, 1, SH(H), S_KIND_BF16_NORM, 0.1, 0);
#undef SH
    return n;
}

/* Fills buf[0..len) with the bytes of t starting at byte `pos`; rng continues across calls. */
static void s_generate(const s_tensor_t *t, uint64_t *rng, uint8_t *buf, size_t len) {
    if (t->bf16) {
        double sqrt3 = sqrt(3.0);
        for (size_t i = 0; i + 1 < len; i += 2) {
            double u = (double)(s_splitmix(rng) >> 11) * (1.0 / 9007199254740992.0);
            double v = (2.0 * u - 1.0) * sqrt3; /* uniform, std 1 */
            float f;
            switch (t->kind) {
            case S_KIND_BF16_NORM:
                f = (float)(1.0 + t->std * v);
                break;
            default:
                f = (float)(t->std * v);
                break;
            }
            uint16_t h = f32_to_bf16(f);
            buf[i] = (uint8_t)(h & 0xff);
            buf[i + 1] = (uint8_t)(h >> 8);
        }
        return;
    }
    if (t->kind == S_KIND_MXFP4_BLOCKS) {
        for (size_t i = 0; i < len; i += 8) {
            uint64_t r = s_splitmix(rng);
            size_t k = len - i < 8 ? len - i : 8;
            memcpy(buf + i, &r, k);
        }
        return;
    }
    /* scales: the base scale, jittered by -1, 0 or +1 so that per-block scaling is exercised */
    for (size_t i = 0; i < len; i++) {
        int jit = (int)(s_splitmix(rng) % 3) - 1;
        int b = t->scale_base + jit;
        buf[i] = (uint8_t)(b < 1 ? 1 : b > 254 ? 254 : b);
    }
}

/* Bytes [done, done+len) of a scripted model's fixed tensors. */
static void s_fill_special(const s_tensor_t *t, uint64_t done, uint8_t *buf, size_t len) {
    memset(buf, 0, len);
    if (t->fill == S_FILL_ONES) {
        for (size_t i = 0; i + 1 < len; i += 2) {
            buf[i] = 0x80; /* bf16 1.0 = 0x3f80, little-endian */
            buf[i + 1] = 0x3f;
        }
    } else if (t->fill == S_FILL_SCRIPT_HEAD) {
        uint64_t H = (uint64_t)t->shape[1], row_bytes = 2 * H;
        for (int k = 0; k < s_script.n; k++) {
            uint64_t b0 = (uint64_t)s_script.to[k] * row_bytes, b1 = b0 + row_bytes;
            for (uint64_t b = b0 > done ? b0 : done; b < b1 && b < done + len; b += 2) {
                uint64_t e = (b - b0) / 2;
                uint16_t h = f32_to_bf16((float)(S_SCRIPT_K * s_script.unit[(size_t)k * H + e]));
                buf[b - done] = (uint8_t)(h & 0xff);
                buf[b - done + 1] = (uint8_t)(h >> 8);
            }
        }
    }
}

/* Builds the transitions of TEXT and the unit embeddings of their sources. */
static int s_script_build(const char *text, const char *tokdir, s_tensor_t *t, size_t n,
                          uint64_t seed) {
    tokenizer_t *tok = NULL;
    gerr_t err = {{0}};
    if (tok_load(tokdir, &tok, &err) != 0) {
        fprintf(stderr, "gptoss-mkmodel: --script: %s\n", err.msg);
        return -1;
    }
    tok_ids_t ids = {0}, a = {0};
    int rc = tok_encode(tok, "assistant", 9, &a) || a.len != 1 ||
                     tok_encode_special(tok, text, strlen(text), &ids) || ids.len == 0
                 ? -1
                 : 0;
    tok_free(&tok);
    if (rc) {
        fprintf(stderr, "gptoss-mkmodel: --script: cannot tokenize the script\n");
        tok_ids_free(&ids);
        tok_ids_free(&a);
        return -1;
    }
    const s_tensor_t *embed = NULL;
    for (size_t i = 0; i < n; i++)
        if (strcmp(t[i].name, "model.embed_tokens.weight") == 0) embed = &t[i];
    int64_t V = embed->shape[0], H = embed->shape[1];
    s_script.from = malloc(ids.len * sizeof(int32_t));
    s_script.to = malloc(ids.len * sizeof(int32_t));
    s_script.unit = calloc(ids.len * (size_t)H, sizeof(float));
    if (!s_script.from || !s_script.to || !s_script.unit) rc = -1;
    for (size_t i = 0; rc == 0 && i < ids.len; i++) {
        int32_t from = i ? ids.ids[i - 1] : a.ids[0], to = ids.ids[i];
        if (from >= V || to >= V) {
            fprintf(stderr, "gptoss-mkmodel: --script: token %d is outside the vocabulary\n",
                    from >= V ? from : to);
            rc = -1;
            break;
        }
        int dup = 0;
        for (int k = 0; k < s_script.n; k++) {
            if (s_script.from[k] != from) continue;
            if (s_script.to[k] != to) {
                fprintf(stderr,
                        "gptoss-mkmodel: --script: token %d is followed by both %d and %d; each "
                        "token of a script may have only one successor\n",
                        from, s_script.to[k], to);
                rc = -1;
            }
            dup = 1;
        }
        if (!dup && rc == 0) {
            s_script.from[s_script.n] = from;
            s_script.to[s_script.n++] = to;
        }
    }
    tok_ids_free(&ids);
    tok_ids_free(&a);
    if (rc) return rc;
    /* replay the embedding's random stream row by row to get the source rows */
    uint64_t rng = s_hash_name(embed->name, seed);
    uint8_t *row = malloc((size_t)H * 2);
    if (!row) return -1;
    for (int64_t r = 0; r < V; r++) {
        s_generate(embed, &rng, row, (size_t)H * 2);
        for (int k = 0; k < s_script.n; k++) {
            if (s_script.from[k] != r) continue;
            double nn = 0;
            float *u = s_script.unit + (size_t)k * (size_t)H;
            for (int64_t e = 0; e < H; e++) {
                u[e] = bf16_to_f32((uint16_t)(row[2 * e] | (row[2 * e + 1] << 8)));
                nn += (double)u[e] * u[e];
            }
            for (int64_t e = 0; e < H; e++)
                u[e] = (float)(u[e] / sqrt(nn));
        }
    }
    free(row);
    /* the fixed tensors */
    for (size_t i = 0; i < n; i++) {
        const char *nm = t[i].name;
        if (strstr(nm, "self_attn.o_proj.") || strstr(nm, "mlp.experts.down_proj_blocks") ||
            strstr(nm, "mlp.experts.down_proj_bias"))
            t[i].fill = S_FILL_ZERO;
        else if (strcmp(nm, "model.norm.weight") == 0)
            t[i].fill = S_FILL_ONES;
        else if (strcmp(nm, "lm_head.weight") == 0)
            t[i].fill = S_FILL_SCRIPT_HEAD;
    }
    return 0;
}

static int s_write_all(FILE *f, const void *p, size_t n, const char *path) {
    if (fwrite(p, 1, n, f) != n) {
        fprintf(stderr, "gptoss-mkmodel: write to %s failed: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int s_write_file(const char *path, s_tensor_t *t, size_t n, int file, uint64_t seed,
                        int sparse) {
    /* header JSON: entries in tensor order, offsets packed */
    size_t cap = 256 + n * 256, o = 0;
    char *hdr = malloc(cap);
    if (!hdr) return -1;
    o += (size_t)snprintf(hdr + o, cap - o, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        if (t[i].file != file) continue;
        t[i].offset = off;
        o += (size_t)snprintf(hdr + o, cap - o, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t[i].name,
                              t[i].bf16 ? "BF16" : "U8");
        for (int d = 0; d < t[i].ndim; d++)
            o += (size_t)snprintf(hdr + o, cap - o, d ? ",%lld" : "%lld", (long long)t[i].shape[d]);
        o += (size_t)snprintf(hdr + o, cap - o, "],\"data_offsets\":[%llu,%llu]}",
                              (unsigned long long)off, (unsigned long long)(off + t[i].nbytes));
        off += t[i].nbytes;
    }
    o += (size_t)snprintf(hdr + o, cap - o, "}");
    while (o % 8)
        hdr[o++] = ' '; /* pad so the data region is 8-byte aligned */
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "gptoss-mkmodel: cannot create %s: %s\n", path, strerror(errno));
        free(hdr);
        return -1;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)o >> (8 * i));
    int rc = s_write_all(f, len8, 8, path) || s_write_all(f, hdr, o, path) ? -1 : 0;
    free(hdr);
    if (sparse && rc == 0) {
        if (fflush(f) != 0 || ftruncate(fileno(f), (off_t)(8 + o + off)) != 0) {
            fprintf(stderr, "gptoss-mkmodel: cannot extend %s: %s\n", path, strerror(errno));
            rc = -1;
        }
        n = 0; /* no data to write */
    }
    size_t chunk = 1u << 20;
    uint8_t *buf = malloc(chunk);
    if (!buf) rc = -1;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (t[i].file != file) continue;
        uint64_t rng = s_hash_name(t[i].name, seed);
        for (uint64_t done = 0; rc == 0 && done < t[i].nbytes; done += chunk) {
            size_t len = t[i].nbytes - done < chunk ? (size_t)(t[i].nbytes - done) : chunk;
            if (t[i].fill == S_FILL_RANDOM)
                s_generate(&t[i], &rng, buf, len);
            else
                s_fill_special(&t[i], done, buf, len);
            rc = s_write_all(f, buf, len, path);
        }
    }
    free(buf);
    if (fclose(f) != 0 && rc == 0) {
        fprintf(stderr, "gptoss-mkmodel: closing %s failed: %s\n", path, strerror(errno));
        rc = -1;
    }
    return rc;
}

static int s_write_text(const char *dir, const char *name, const char *text) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "gptoss-mkmodel: cannot create %s: %s\n", path, strerror(errno));
        return -1;
    }
    int rc = s_write_all(f, text, strlen(text), path);
    if (fclose(f) != 0) rc = -1;
    return rc;
}

static int s_copy_file(const char *from, const char *to) {
    FILE *in = fopen(from, "rb");
    if (!in) return -1;
    FILE *out = fopen(to, "wb");
    if (!out) {
        fclose(in);
        fprintf(stderr, "gptoss-mkmodel: cannot create %s: %s\n", to, strerror(errno));
        return -2;
    }
    char buf[1 << 16];
    size_t k;
    int rc = 0;
    while ((k = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, k, out) != k) rc = -2;
    if (ferror(in)) rc = -2;
    fclose(in);
    if (fclose(out) != 0) rc = -2;
    return rc;
}

static int s_write_config(const char *dir, const s_shape_t *s) {
    size_t cap = 4096 + (size_t)s->layers * 24;
    char *j = malloc(cap);
    if (!j) return -1;
    size_t o = 0;
    o += (size_t)snprintf(j + o, cap - o,
                          "{\n  \"architectures\": [\"GptOssForCausalLM\"],\n"
                          "  \"attention_bias\": true,\n  \"attention_dropout\": 0.0,\n"
                          "  \"eos_token_id\": %d,\n  \"experts_per_token\": %d,\n"
                          "  \"head_dim\": %d,\n  \"hidden_act\": \"silu\",\n"
                          "  \"hidden_size\": %d,\n  \"initial_context_length\": 4096,\n"
                          "  \"initializer_range\": 0.02,\n  \"intermediate_size\": %d,\n"
                          "  \"layer_types\": [",
                          s->eos, s->top_k, s->head_dim, s->hidden, s->intermediate);
    for (int l = 0; l < s->layers; l++)
        o += (size_t)snprintf(j + o, cap - o, "%s\"%s\"", l ? ", " : "",
                              l % 2 == 0 ? "sliding_attention" : "full_attention");
    o += (size_t)snprintf(
        j + o, cap - o,
        "],\n  \"max_position_embeddings\": 131072,\n  \"model_type\": \"gpt_oss\",\n"
        "  \"num_attention_heads\": %d,\n  \"num_experts_per_tok\": %d,\n"
        "  \"num_hidden_layers\": %d,\n  \"num_key_value_heads\": %d,\n"
        "  \"num_local_experts\": %d,\n  \"output_router_logits\": false,\n"
        "  \"pad_token_id\": %d,\n"
        "  \"quantization_config\": {\"modules_to_not_convert\": [\"model.layers.*.self_attn\", "
        "\"model.layers.*.mlp.router\", \"model.embed_tokens\", \"lm_head\"], "
        "\"quant_method\": \"mxfp4\"},\n"
        "  \"rms_norm_eps\": 1e-05,\n"
        "  \"rope_scaling\": {\"beta_fast\": 32.0, \"beta_slow\": 1.0, \"factor\": 32.0, "
        "\"original_max_position_embeddings\": 4096, \"rope_type\": \"yarn\", \"truncate\": "
        "false},\n"
        "  \"rope_theta\": 150000,\n  \"router_aux_loss_coef\": 0.9,\n"
        "  \"sliding_window\": %d,\n  \"swiglu_limit\": 7.0,\n  \"tie_word_embeddings\": false,\n"
        "  \"transformers_version\": \"4.55.0.dev0\",\n  \"use_cache\": true,\n"
        "  \"vocab_size\": %d\n}\n",
        s->heads, s->top_k, s->layers, s->kv_heads, s->experts, s->pad, s->window, s->vocab);
    int rc = s_write_text(dir, "config.json", j);
    free(j);
    if (rc) return rc;
    char g[512];
    if (s->vocab > 200012)
        snprintf(g, sizeof g,
                 "{\n  \"bos_token_id\": %d,\n  \"do_sample\": true,\n  \"eos_token_id\": [%d, %d, "
                 "200012],\n  \"pad_token_id\": %d\n}\n",
                 s->bos, s->eos, s->pad, s->pad);
    else
        snprintf(
            g, sizeof g,
            "{\n  \"do_sample\": true,\n  \"eos_token_id\": [%d],\n  \"pad_token_id\": %d\n}\n",
            s->eos, s->pad);
    return s_write_text(dir, "generation_config.json", g);
}

int main(int argc, char **argv) {
    const char *out = NULL, *preset = NULL, *tokdir = NULL, *script = NULL;
    int shards = 1, sparse = 0;
    uint64_t seed = 0;
    s_shape_t s;
    struct {
        const char *flag;
        int *dst;
        int lo, hi;
        int set;
        int val;
    } ov[] = {{"--layers", &s.layers, 1, 256, 0, 0},
              {"--hidden", &s.hidden, 32, 1 << 16, 0, 0},
              {"--intermediate", &s.intermediate, 32, 1 << 16, 0, 0},
              {"--experts", &s.experts, 1, 1024, 0, 0},
              {"--top-k", &s.top_k, 1, 1024, 0, 0},
              {"--heads", &s.heads, 1, 1024, 0, 0},
              {"--kv-heads", &s.kv_heads, 1, 1024, 0, 0},
              {"--head-dim", &s.head_dim, 2, 1024, 0, 0},
              {"--vocab", &s.vocab, 16, 1 << 22, 0, 0},
              {"--sliding-window", &s.window, 1, 1 << 24, 0, 0}};
    size_t nov = sizeof ov / sizeof *ov;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) return s_usage(), 0;
        if (strcmp(a, "--sparse") == 0) {
            sparse = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "gptoss-mkmodel: %s needs a value\n", a);
            return s_usage();
        }
        i++;
        if (strcmp(a, "--out") == 0)
            out = v;
        else if (strcmp(a, "--preset") == 0)
            preset = v;
        else if (strcmp(a, "--tokenizer") == 0)
            tokdir = v;
        else if (strcmp(a, "--script") == 0)
            script = v;
        else if (strcmp(a, "--shards") == 0) {
            if (s_parse_int(v, 1, 99999, &shards)) {
                fprintf(stderr, "gptoss-mkmodel: --shards must be 1..99999\n");
                return 2;
            }
        } else if (strcmp(a, "--seed") == 0) {
            char *end;
            errno = 0;
            seed = strtoull(v, &end, 10);
            if (errno || *end) {
                fprintf(stderr, "gptoss-mkmodel: --seed must be a non-negative integer\n");
                return 2;
            }
        } else {
            size_t k = 0;
            while (k < nov && strcmp(a, ov[k].flag) != 0)
                k++;
            if (k == nov) {
                fprintf(stderr, "gptoss-mkmodel: unknown option %s\n", a);
                return s_usage();
            }
            if (s_parse_int(v, ov[k].lo, ov[k].hi, &ov[k].val)) {
                fprintf(stderr, "gptoss-mkmodel: %s must be an integer in [%d, %d]\n", a, ov[k].lo,
                        ov[k].hi);
                return 2;
            }
            ov[k].set = 1;
        }
    }
    if (!out || !preset) return s_usage();
    if (s_preset(preset, &s) != 0) {
        fprintf(stderr, "gptoss-mkmodel: unknown preset '%s' (tiny, 20b, 120b)\n", preset);
        return 2;
    }
    for (size_t k = 0; k < nov; k++)
        if (ov[k].set) *ov[k].dst = ov[k].val;
    if (s.hidden % 32 || s.intermediate % 32 || s.heads % s.kv_heads || s.head_dim % 2 ||
        s.top_k > s.experts) {
        fprintf(stderr, "gptoss-mkmodel: inconsistent shape: hidden and intermediate must be "
                        "multiples of 32, heads a multiple of kv-heads, head-dim even, "
                        "top-k <= experts\n");
        return 2;
    }
    /* special ids: the real ones when the vocabulary has them, else the last two ids */
    if (s.vocab > 200018) {
        s.eos = 200002;
        s.pad = 199999;
        s.bos = 199998;
    } else {
        s.eos = s.vocab - 2;
        s.pad = s.vocab - 1;
        s.bos = -1;
    }

    size_t maxn = (size_t)s.layers * 19 + 3;
    s_tensor_t *t = calloc(maxn, sizeof *t);
    if (!t) return 1;
    size_t n = s_build_tensors(&s, t);
    if ((size_t)shards > n) {
        fprintf(stderr, "gptoss-mkmodel: --shards %d exceeds the %zu tensors\n", shards, n);
        free(t);
        return 2;
    }
    for (size_t i = 0; i < n; i++)
        t[i].file = (int)((uint64_t)i * (uint64_t)shards / n);
    if (script) {
        if (!tokdir) {
            fprintf(stderr, "gptoss-mkmodel: --script needs --tokenizer DIR\n");
            free(t);
            return 2;
        }
        if (s_script_build(script, tokdir, t, n, seed) != 0) {
            free(t);
            return 2;
        }
    }

    if (mkdir(out, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "gptoss-mkmodel: cannot create %s: %s\n", out, strerror(errno));
        free(t);
        return 1;
    }
    int rc = s_write_config(out, &s);
    uint64_t total = 0;
    char path[PATH_MAX];
    for (int f = 0; rc == 0 && f < shards; f++) {
        if (shards == 1)
            snprintf(path, sizeof path, "%s/model.safetensors", out);
        else
            snprintf(path, sizeof path, "%s/model-%05d-of-%05d.safetensors", out, f, shards - 1);
        rc = s_write_file(path, t, n, f, seed, sparse);
    }
    for (size_t i = 0; i < n; i++)
        total += t[i].nbytes;
    if (rc == 0 && shards > 1) {
        size_t cap = 128 + n * 200, o = 0;
        char *j = malloc(cap);
        if (!j) rc = -1;
        if (j) {
            o += (size_t)snprintf(j + o, cap - o,
                                  "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n"
                                  "  \"weight_map\": {\n",
                                  (unsigned long long)total);
            for (size_t i = 0; i < n; i++)
                o += (size_t)snprintf(j + o, cap - o,
                                      "    \"%s\": \"model-%05d-of-%05d.safetensors\"%s\n",
                                      t[i].name, t[i].file, shards - 1, i + 1 < n ? "," : "");
            snprintf(j + o, cap - o, "  }\n}\n");
            rc = s_write_text(out, "model.safetensors.index.json", j);
            free(j);
        }
    }
    if (rc == 0 && tokdir) {
        char from[PATH_MAX], to[PATH_MAX];
        snprintf(from, sizeof from, "%s/tokenizer.json", tokdir);
        snprintf(to, sizeof to, "%s/tokenizer.json", out);
        int c = s_copy_file(from, to);
        if (c != 0) {
            fprintf(stderr, "gptoss-mkmodel: cannot copy %s\n", from);
            rc = -1;
        }
        snprintf(from, sizeof from, "%s/tokenizer_config.json", tokdir);
        snprintf(to, sizeof to, "%s/tokenizer_config.json", out);
        if (rc == 0 && s_copy_file(from, to) == -2) rc = -1; /* optional file; absent is fine */
    }
    free(t);
    free(s_script.from);
    free(s_script.to);
    free(s_script.unit);
    if (rc != 0) return 1;
    fprintf(stderr, "gptoss-mkmodel: wrote %s: %zu tensors, %llu bytes in %d file%s\n", out, n,
            (unsigned long long)total, shards, shards > 1 ? "s" : "");
    return 0;
}
