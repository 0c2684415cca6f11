/* test_mkmodel: gptoss-mkmodel -> st_open round trips (1 and 3 shard files),
 * determinism per seed, and the 20b/120b presets' tensor tables against the
 * shapes and byte totals of the real checkpoints transcribed from GPTOSS.md
 * section 2 (written --sparse so no data hits the disk). */
#include <string.h>
#include <unistd.h>

#include "bf16.h"
#include "config.h"
#include "mxfp4.h"
#include "tcheck.h"

static char s_dir[256];

static int s_mk(const char *name, const char *args) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s/gptoss-mkmodel' --out '%s/%s' %s 2>/dev/null", tcheck_bindir(),
             s_dir, name, args);
    return system(cmd);
}

static st_model_t *s_open(const char *name, gptoss_config_t *cfg) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", s_dir, name);
    gerr_t err = {{0}};
    st_model_t *m = NULL;
    CHECK_MSG(config_load(path, cfg, &err) == 0, "%s: %s", name, err.msg);
    CHECK_MSG(st_open(path, &m, &err) == 0, "%s: %s", name, err.msg);
    if (m) CHECK_MSG(config_check_tensors(cfg, m, &err) == 0, "%s: %s", name, err.msg);
    return m;
}

static int s_same(const st_model_t *a, const st_model_t *b) {
    if (st_count(a) != st_count(b)) return 0;
    for (size_t i = 0; i < st_count(a); i++) {
        const st_tensor_t *x = st_at(a, i), *y = st_find(b, x->name);
        if (!y || x->nbytes != y->nbytes || memcmp(x->data, y->data, x->nbytes) != 0) return 0;
    }
    return 1;
}

typedef struct {
    const char *name;
    int ndim;
    int64_t shape[4];
    int bf16;
} s_row_t;

static void s_check_table(const st_model_t *m, const s_row_t *rows, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++) {
        const st_tensor_t *t = st_find(m, rows[i].name);
        CHECK_MSG(t != NULL, "%s: %s missing", what, rows[i].name);
        if (!t) continue;
        int ok =
            t->ndim == rows[i].ndim && t->dtype == (rows[i].bf16 ? ST_DTYPE_BF16 : ST_DTYPE_U8);
        for (int d = 0; ok && d < t->ndim; d++)
            ok = t->shape[d] == rows[i].shape[d];
        CHECK_MSG(ok, "%s: %s has the wrong dtype or shape", what, rows[i].name);
    }
}

int main(void) {
    snprintf(s_dir, sizeof s_dir, "/tmp/gptoss-test-mk-XXXXXX");
    if (!mkdtemp(s_dir)) return 1;
    gptoss_config_t c1, c3, c;

    /* round trips: 1 file and 3 files hold the same tensors for the same seed */
    CHECK(s_mk("one", "--preset tiny --seed 7") == 0);
    CHECK(s_mk("three", "--preset tiny --seed 7 --shards 3") == 0);
    CHECK(s_mk("again", "--preset tiny --seed 7") == 0);
    CHECK(s_mk("other", "--preset tiny --seed 8") == 0);
    st_model_t *one = s_open("one", &c1), *three = s_open("three", &c3);
    st_model_t *again = s_open("again", &c), *other = s_open("other", &c);
    if (one && three && again && other) {
        CHECK(st_file_count(one) == 1 && st_file_count(three) == 3);
        CHECK(s_same(one, three));
        CHECK(s_same(one, again));
        CHECK(!s_same(one, other));
        CHECK(c1.vocab_size == 201088 && c1.n_eos == 1 && c1.eos_token_ids[0] == 200002);
        /* hub naming: 3 files are -of-00002 */
        char p[512];
        snprintf(p, sizeof p, "%s/three/model-00002-of-00002.safetensors", s_dir);
        CHECK(access(p, R_OK) == 0);
        /* values are well-behaved: expert weights have std near 1/sqrt(hidden) */
        const st_tensor_t *b = st_find(one, "model.layers.0.mlp.experts.gate_up_proj_blocks");
        const st_tensor_t *s = st_find(one, "model.layers.0.mlp.experts.gate_up_proj_scales");
        if (b && s) {
            double ss = 0;
            int64_t rows = b->shape[0] * b->shape[1], cols = b->shape[2] * 32;
            float row[64];
            for (int64_t r = 0; r < rows; r++) {
                mxfp4_decode_row((const uint8_t *)b->data + r * cols / 2,
                                 (const uint8_t *)s->data + r * cols / 32, (size_t)cols, row);
                for (int64_t k = 0; k < cols; k++)
                    ss += (double)row[k] * row[k];
            }
            double std = sqrt(ss / (double)(rows * cols));
            CHECK_MSG(std > 0.5 / 8 && std < 2.0 / 8, "expert weight std %g", std);
        }
        const st_tensor_t *nw = st_find(one, "model.norm.weight");
        if (nw) {
            float w0 = bf16_to_f32(((const uint16_t *)nw->data)[0]);
            CHECK(w0 > 0.5f && w0 < 1.5f);
        }
    }
    st_close(&one);
    st_close(&three);
    st_close(&again);
    st_close(&other);

    /* the 20b preset, full size but sparse: GPTOSS.md section 2 */
    CHECK(s_mk("m20", "--preset 20b --shards 3 --sparse") == 0);
    st_model_t *m20 = s_open("m20", &c);
    if (m20) {
        CHECK(st_count(m20) == 459);
        CHECK(st_total_bytes(m20) == 13761264768ull);
        CHECK(st_file_count(m20) == 3);
        CHECK(c.num_hidden_layers == 24 && c.num_local_experts == 32 && c.sliding_window == 128);
        const s_row_t rows[] = {
            {"model.embed_tokens.weight", 2, {201088, 2880}, 1},
            {"model.norm.weight", 1, {2880}, 1},
            {"lm_head.weight", 2, {201088, 2880}, 1},
            {"model.layers.23.input_layernorm.weight", 1, {2880}, 1},
            {"model.layers.23.self_attn.q_proj.weight", 2, {4096, 2880}, 1},
            {"model.layers.23.self_attn.q_proj.bias", 1, {4096}, 1},
            {"model.layers.23.self_attn.k_proj.weight", 2, {512, 2880}, 1},
            {"model.layers.23.self_attn.v_proj.bias", 1, {512}, 1},
            {"model.layers.23.self_attn.o_proj.weight", 2, {2880, 4096}, 1},
            {"model.layers.23.self_attn.o_proj.bias", 1, {2880}, 1},
            {"model.layers.23.self_attn.sinks", 1, {64}, 1},
            {"model.layers.0.post_attention_layernorm.weight", 1, {2880}, 1},
            {"model.layers.0.mlp.router.weight", 2, {32, 2880}, 1},
            {"model.layers.0.mlp.router.bias", 1, {32}, 1},
            {"model.layers.0.mlp.experts.gate_up_proj_blocks", 4, {32, 5760, 90, 16}, 0},
            {"model.layers.0.mlp.experts.gate_up_proj_scales", 3, {32, 5760, 90}, 0},
            {"model.layers.0.mlp.experts.gate_up_proj_bias", 2, {32, 5760}, 1},
            {"model.layers.0.mlp.experts.down_proj_blocks", 4, {32, 2880, 90, 16}, 0},
            {"model.layers.0.mlp.experts.down_proj_scales", 3, {32, 2880, 90}, 0},
            {"model.layers.0.mlp.experts.down_proj_bias", 2, {32, 2880}, 1},
        };
        s_check_table(m20, rows, sizeof rows / sizeof *rows, "20b");
        /* the hub's 20b keeps embed / norm / lm_head in the last shard */
        const st_tensor_t *e = st_find(m20, "model.embed_tokens.weight");
        CHECK(e && e->file_index == 2);
        /* shards read only their slice: expert rows of shard 1 of 4 (23 blocks of 32 units) */
        const st_tensor_t *gu = st_find(m20, "model.layers.0.mlp.experts.gate_up_proj_blocks");
        st_slice_t sl;
        gerr_t err = {{0}};
        CHECK(gu && st_slice(gu, 1, 2 * 736, 2 * 1472, &sl, &err) == 0);
        CHECK(sl.count == 32 && sl.len == 1472ull * 1440 && sl.stride == 5760ull * 1440);
        CHECK(sl.offset == gu->file_offset + 1472ull * 1440);
        st_close(&m20);
    }
    CHECK(s_mk("m120", "--preset 120b --shards 15 --sparse") == 0);
    st_model_t *m120 = s_open("m120", &c);
    if (m120) {
        CHECK(st_count(m120) == 687);
        CHECK(st_total_bytes(m120) == 65248815744ull);
        CHECK(st_file_count(m120) == 15);
        const s_row_t rows[] = {
            {"model.layers.35.mlp.experts.gate_up_proj_blocks", 4, {128, 5760, 90, 16}, 0},
            {"model.layers.35.mlp.experts.down_proj_scales", 3, {128, 2880, 90}, 0},
            {"model.layers.35.mlp.router.weight", 2, {128, 2880}, 1},
        };
        s_check_table(m120, rows, sizeof rows / sizeof *rows, "120b");
        CHECK(config_param_count(&c) == 116829156672ull);
        st_close(&m120);
    }
    /* bad arguments are refused */
    CHECK(s_mk("bad", "--preset 30b") != 0);
    CHECK(s_mk("bad", "--preset tiny --hidden 40") != 0);
    CHECK(s_mk("bad", "--preset tiny --shards 0") != 0);

    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", s_dir);
    return tcheck_done("test_mkmodel");
}
