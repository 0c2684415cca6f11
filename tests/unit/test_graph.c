/* test_graph: the engine's decode-step graph path (engine.h, "Step graphs") on the CPU.
 *
 * A test-only ops_t wraps the CPU backend and gives it graph hooks the way a device backend
 * has them: between graph_begin(key) and graph_end(key) the ops are recorded, not run (view
 * structs and scalars copied, pointers kept), and graph_launch(key) replays them. So a step
 * replayed from a graph reads whatever its captured buffers hold: if the engine wrote a
 * step's inputs anywhere else, or reallocated a captured buffer, the logits would go wrong
 * (or ASan would see it). Decode steps of growing sequences (across block boundaries and the
 * sliding window, batch sizes 3, 2 and 1, a large prefill in between that grows the other
 * buffer set) must give logits bit-identical to a plain CPU engine's, and the hooks must
 * have been used as the contract says: eager the first time a key is seen, captured and
 * launched the second, launched only afterwards. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops_cpu.h"
#include "engine.h"
#include "kvcache.h"
#include "ops.h"
#include "tcheck.h"
#include "weights.h"

/* ---- the recording wrapper --------------------------------------------------------------- */

enum {
    R_EMBED,
    R_RMSNORM,
    R_MM_BF16,
    R_MM_MXFP4,
    R_ROPE,
    R_KV_WRITE,
    R_ATTENTION,
    R_TOPK,
    R_SWIGLU,
    R_ADD,
    R_ADD_RMSNORM,
    R_AXPY,
    R_MOE,
    R_GATHER,
    R_ZERO
};

typedef struct {
    int kind;
    const void *p[4]; /* input pointers, by op */
    void *out;
    int i[4];
    size_t z;
    float f[2];
    ops_bf16_mat_t wb;
    ops_mxfp4_mat_t wm;
    ops_kv_t kv;
    ops_moe_t moe;
} s_rec_t;

enum { S_KEYS = 65 };

typedef struct {
    ops_t ops; /* must be first */
    const ops_t *cpu;
    int capturing; /* key being captured, or -1 */
    s_rec_t *graph[S_KEYS];
    int n[S_KEYS], cap[S_KEYS];
    bool stored[S_KEYS];
    long eager_ops; /* ops run directly (outside capture and replay) */
    long begins, ends, launches, misses;
    long copies_in_capture; /* upload/download/alloc/free_mem during a capture: forbidden */
} s_g_t;

static s_g_t *G(const ops_t *o) {
    return (s_g_t *)o->impl;
}

/* Returns a record to fill when capturing, else NULL (and counts an eager op). */
static s_rec_t *s_rec(const ops_t *o, int kind) {
    s_g_t *g = G(o);
    if (g->capturing < 0) {
        g->eager_ops++;
        return NULL;
    }
    int k = g->capturing;
    if (g->n[k] == g->cap[k]) {
        g->cap[k] = g->cap[k] ? 2 * g->cap[k] : 64;
        g->graph[k] = realloc(g->graph[k], sizeof(s_rec_t) * (size_t)g->cap[k]);
        if (!g->graph[k]) abort();
    }
    s_rec_t *r = &g->graph[k][g->n[k]++];
    memset(r, 0, sizeof *r);
    r->kind = kind;
    return r;
}

static void w_embed(const ops_t *o, const uint16_t *table, size_t stride, int n, const int32_t *ids,
                    int T, float *out) {
    s_rec_t *r = s_rec(o, R_EMBED);
    if (!r) {
        G(o)->cpu->embed(G(o)->cpu, table, stride, n, ids, T, out);
        return;
    }
    *r = (s_rec_t){.kind = R_EMBED, .p = {table, ids}, .out = out, .i = {n, T}, .z = stride};
}
static void w_rmsnorm(const ops_t *o, const float *x, const uint16_t *w, int T, int n, float eps,
                      float *out) {
    s_rec_t *r = s_rec(o, R_RMSNORM);
    if (!r) {
        G(o)->cpu->rmsnorm(G(o)->cpu, x, w, T, n, eps, out);
        return;
    }
    *r = (s_rec_t){.kind = R_RMSNORM, .p = {x, w}, .out = out, .i = {T, n}, .f = {eps}};
}
static void w_mm_bf16(const ops_t *o, const float *x, int T, const ops_bf16_mat_t *W,
                      const uint16_t *bias, float *y) {
    s_rec_t *r = s_rec(o, R_MM_BF16);
    if (!r) {
        G(o)->cpu->matmul_bf16(G(o)->cpu, x, T, W, bias, y);
        return;
    }
    *r = (s_rec_t){.kind = R_MM_BF16, .p = {x, bias}, .out = y, .i = {T}, .wb = *W};
}
static void w_mm_mxfp4(const ops_t *o, const float *x, int T, const ops_mxfp4_mat_t *W,
                       const uint16_t *bias, float *y) {
    s_rec_t *r = s_rec(o, R_MM_MXFP4);
    if (!r) {
        G(o)->cpu->matmul_mxfp4(G(o)->cpu, x, T, W, bias, y);
        return;
    }
    *r = (s_rec_t){.kind = R_MM_MXFP4, .p = {x, bias}, .out = y, .i = {T}, .wm = *W};
}
static void w_rope(const ops_t *o, float *x, int T, int n_heads, int D, const float *cs) {
    s_rec_t *r = s_rec(o, R_ROPE);
    if (!r) {
        G(o)->cpu->rope(G(o)->cpu, x, T, n_heads, D, cs);
        return;
    }
    *r = (s_rec_t){.kind = R_ROPE, .p = {cs}, .out = x, .i = {T, n_heads, D}};
}
static void w_kv_write(const ops_t *o, const ops_kv_t *kv, const float *k, const float *v,
                       const ops_tok_t *toks, int T) {
    s_rec_t *r = s_rec(o, R_KV_WRITE);
    if (!r) {
        G(o)->cpu->kv_write(G(o)->cpu, kv, k, v, toks, T);
        return;
    }
    *r = (s_rec_t){.kind = R_KV_WRITE, .p = {k, v, toks}, .i = {T}, .kv = *kv};
}
static void w_attention(const ops_t *o, const float *q, int T, int n_heads, const ops_kv_t *kv,
                        const ops_tok_t *toks, int window, const uint16_t *sinks, float sm_scale,
                        float *out) {
    s_rec_t *r = s_rec(o, R_ATTENTION);
    if (!r) {
        G(o)->cpu->attention(G(o)->cpu, q, T, n_heads, kv, toks, window, sinks, sm_scale, out);
        return;
    }
    *r = (s_rec_t){.kind = R_ATTENTION,
                   .p = {q, toks, sinks},
                   .out = out,
                   .i = {T, n_heads, window},
                   .f = {sm_scale},
                   .kv = *kv};
}
static void w_topk(const ops_t *o, const float *z, int T, int E, int k, int32_t *idx, float *w) {
    s_rec_t *r = s_rec(o, R_TOPK);
    if (!r) {
        G(o)->cpu->router_topk(G(o)->cpu, z, T, E, k, idx, w);
        return;
    }
    *r = (s_rec_t){.kind = R_TOPK, .p = {z, w}, .out = idx, .i = {T, E, k}};
}
static void w_swiglu(const ops_t *o, const float *h, int T, int I, float alpha, float limit,
                     float *out) {
    s_rec_t *r = s_rec(o, R_SWIGLU);
    if (!r) {
        G(o)->cpu->swiglu(G(o)->cpu, h, T, I, alpha, limit, out);
        return;
    }
    *r = (s_rec_t){.kind = R_SWIGLU, .p = {h}, .out = out, .i = {T, I}, .f = {alpha, limit}};
}
static void w_add(const ops_t *o, float *x, const float *y, size_t n) {
    s_rec_t *r = s_rec(o, R_ADD);
    if (!r) {
        G(o)->cpu->add(G(o)->cpu, x, y, n);
        return;
    }
    *r = (s_rec_t){.kind = R_ADD, .p = {y}, .out = x, .z = n};
}
static void w_add_rmsnorm(const ops_t *o, float *x, const float *y, const uint16_t *w, int T, int n,
                          float eps, float *out) {
    s_rec_t *r = s_rec(o, R_ADD_RMSNORM);
    if (!r) {
        G(o)->cpu->add_rmsnorm(G(o)->cpu, x, y, w, T, n, eps, out);
        return;
    }
    *r = (s_rec_t){.kind = R_ADD_RMSNORM, .p = {x, y, w}, .out = out, .i = {T, n}, .f = {eps}};
}
static void w_axpy(const ops_t *o, float *x, float a, const float *y, size_t n) {
    s_rec_t *r = s_rec(o, R_AXPY);
    if (!r) {
        G(o)->cpu->axpy(G(o)->cpu, x, a, y, n);
        return;
    }
    *r = (s_rec_t){.kind = R_AXPY, .p = {y}, .out = x, .z = n, .f = {a}};
}
static void w_moe(const ops_t *o, const float *a, int T, const int32_t *idx, const float *w, int K,
                  const ops_moe_t *m, float *out) {
    s_rec_t *r = s_rec(o, R_MOE);
    if (!r) {
        G(o)->cpu->moe(G(o)->cpu, a, T, idx, w, K, m, out);
        return;
    }
    *r = (s_rec_t){.kind = R_MOE, .p = {a, idx, w}, .out = out, .i = {T, K}, .moe = *m};
}
static void w_gather(const ops_t *o, const float *src, const int32_t *rows, int R, int n,
                     float *dst) {
    s_rec_t *r = s_rec(o, R_GATHER);
    if (!r) {
        G(o)->cpu->gather_rows(G(o)->cpu, src, rows, R, n, dst);
        return;
    }
    *r = (s_rec_t){.kind = R_GATHER, .p = {src, rows}, .out = dst, .i = {R, n}};
}
static void w_zero(const ops_t *o, void *dst, size_t bytes) {
    s_rec_t *r = s_rec(o, R_ZERO);
    if (!r) {
        G(o)->cpu->zero(G(o)->cpu, dst, bytes);
        return;
    }
    *r = (s_rec_t){.kind = R_ZERO, .out = dst, .z = bytes};
}

/* Memory calls are never part of a graph. */
static void *w_alloc(const ops_t *o, size_t bytes) {
    G(o)->copies_in_capture += G(o)->capturing >= 0;
    return G(o)->cpu->alloc(G(o)->cpu, bytes);
}
static void w_free_mem(const ops_t *o, void *p) {
    G(o)->copies_in_capture += G(o)->capturing >= 0;
    G(o)->cpu->free_mem(G(o)->cpu, p);
}
static void w_upload(const ops_t *o, void *dst, const void *src, size_t bytes) {
    G(o)->copies_in_capture += G(o)->capturing >= 0;
    G(o)->cpu->upload(G(o)->cpu, dst, src, bytes);
}
static void w_download(const ops_t *o, void *dst, const void *src, size_t bytes) {
    G(o)->copies_in_capture += G(o)->capturing >= 0;
    G(o)->cpu->download(G(o)->cpu, dst, src, bytes);
}

static void w_graph_begin(const ops_t *o, int key) {
    s_g_t *g = G(o);
    CHECK(key >= 1 && key < S_KEYS && g->capturing < 0);
    if (key < 1 || key >= S_KEYS) abort();
    g->begins++;
    g->capturing = key;
    g->n[key] = 0;
    g->stored[key] = false;
}
static void w_graph_end(const ops_t *o, int key) {
    s_g_t *g = G(o);
    CHECK(g->capturing == key);
    g->ends++;
    g->capturing = -1;
    g->stored[key] = true;
}
static bool w_graph_launch(const ops_t *o, int key) {
    s_g_t *g = G(o);
    const ops_t *c = g->cpu;
    CHECK(g->capturing < 0);
    if (key < 1 || key >= S_KEYS || !g->stored[key]) {
        g->misses++;
        return false;
    }
    g->launches++;
    for (int i = 0; i < g->n[key]; i++) {
        const s_rec_t *r = &g->graph[key][i];
        switch (r->kind) {
        case R_EMBED:
            c->embed(c, r->p[0], r->z, r->i[0], r->p[1], r->i[1], r->out);
            break;
        case R_RMSNORM:
            c->rmsnorm(c, r->p[0], r->p[1], r->i[0], r->i[1], r->f[0], r->out);
            break;
        case R_MM_BF16:
            c->matmul_bf16(c, r->p[0], r->i[0], &r->wb, r->p[1], r->out);
            break;
        case R_MM_MXFP4:
            c->matmul_mxfp4(c, r->p[0], r->i[0], &r->wm, r->p[1], r->out);
            break;
        case R_ROPE:
            c->rope(c, r->out, r->i[0], r->i[1], r->i[2], r->p[0]);
            break;
        case R_KV_WRITE:
            c->kv_write(c, &r->kv, r->p[0], r->p[1], r->p[2], r->i[0]);
            break;
        case R_ATTENTION:
            c->attention(c, r->p[0], r->i[0], r->i[1], &r->kv, r->p[1], r->i[2], r->p[2], r->f[0],
                         r->out);
            break;
        case R_TOPK:
            c->router_topk(c, r->p[0], r->i[0], r->i[1], r->i[2], r->out, (float *)r->p[1]);
            break;
        case R_SWIGLU:
            c->swiglu(c, r->p[0], r->i[0], r->i[1], r->f[0], r->f[1], r->out);
            break;
        case R_ADD:
            c->add(c, r->out, r->p[0], r->z);
            break;
        case R_ADD_RMSNORM:
            c->add_rmsnorm(c, (float *)r->p[0], r->p[1], r->p[2], r->i[0], r->i[1], r->f[0],
                           r->out);
            break;
        case R_AXPY:
            c->axpy(c, r->out, r->f[0], r->p[0], r->z);
            break;
        case R_MOE:
            c->moe(c, r->p[0], r->i[0], r->p[1], r->p[2], r->i[1], &r->moe, r->out);
            break;
        case R_GATHER:
            c->gather_rows(c, r->p[0], r->p[1], r->i[0], r->i[1], r->out);
            break;
        case R_ZERO:
            c->zero(c, r->out, r->z);
            break;
        default:
            abort();
        }
    }
    return true;
}

/* Wraps cpu (borrowed) in a graph-recording ops_t. Caller frees with s_g_free. */
static s_g_t *s_g_new(const ops_t *cpu) {
    s_g_t *g = calloc(1, sizeof *g);
    if (!g) abort();
    g->cpu = cpu;
    g->capturing = -1;
    g->ops = (ops_t){.name = "cpu-graph-test",
                     .impl = g,
                     .embed = w_embed,
                     .rmsnorm = w_rmsnorm,
                     .matmul_bf16 = w_mm_bf16,
                     .matmul_mxfp4 = w_mm_mxfp4,
                     .rope = w_rope,
                     .kv_write = w_kv_write,
                     .attention = w_attention,
                     .router_topk = w_topk,
                     .swiglu = w_swiglu,
                     .add = w_add,
                     .add_rmsnorm = w_add_rmsnorm,
                     .axpy = w_axpy,
                     .moe = w_moe,
                     .gather_rows = w_gather,
                     .alloc = w_alloc,
                     .free_mem = w_free_mem,
                     .upload = w_upload,
                     .download = w_download,
                     .zero = w_zero,
                     .graph_begin = w_graph_begin,
                     .graph_end = w_graph_end,
                     .graph_launch = w_graph_launch};
    return g;
}

static void s_g_free(s_g_t *g) {
    for (int k = 0; k < S_KEYS; k++)
        free(g->graph[k]);
    free(g);
}

/* ---- the test ---------------------------------------------------------------------------- */

enum { S_NS = 4 };

/* Two engines (plain CPU and the graph wrapper) running the same steps. */
typedef struct {
    engine_t *e[2];
    kvcache_seq_t seq[2][S_NS];
    int len[S_NS]; /* tokens each sequence holds */
    int V;
    float *lg[2];
} s_pair_t;

static int32_t s_tok(int s, int p) {
    return (int32_t)((p * 31 + s * 97 + 5) % 509);
}

/* Runs one step on both engines: n[s] new tokens for the sequences in which[0..k), logits of
 * the last token each; returns 0 when both succeed. Logits compared by the caller. */
static int s_step(s_pair_t *P, const int *which, const int *n, int k) {
    int32_t toks[S_NS][128];
    engine_seq_t sq[S_NS];
    gerr_t err = {{0}};
    for (int side = 0; side < 2; side++) {
        for (int j = 0; j < k; j++) {
            const int s = which[j];
            kvcache_seq_t *q = &P->seq[side][s];
            if (kvcache_seq_reserve(engine_kv(P->e[side]), q, P->len[s], P->len[s] + n[j], &err))
                return fprintf(stderr, "reserve: %s\n", err.msg), -1;
            for (int i = 0; i < n[j]; i++)
                toks[j][i] = s_tok(s, P->len[s] + i);
            sq[j] = (engine_seq_t){.tokens = toks[j],
                                   .n_tokens = n[j],
                                   .start_pos = P->len[s],
                                   .full_blocks = q->full,
                                   .n_full_blocks = q->n_full,
                                   .window_blocks = q->window,
                                   .n_window_blocks = q->n_window};
        }
        if (engine_step(P->e[side], sq, k, P->lg[side], &err))
            return fprintf(stderr, "step: %s\n", err.msg), -1;
    }
    for (int j = 0; j < k; j++)
        P->len[which[j]] += n[j];
    return 0;
}

/* Decode steps of the sequences in which[0..k) (key k); checks the logits bit for bit and
 * the graph hooks' use (eager, capture + launch, launch only). */
static void s_decode(s_pair_t *P, s_g_t *g, const int *which, int k, int steps, int *seen) {
    const int one[S_NS] = {1, 1, 1, 1};
    for (int it = 0; it < steps; it++) {
        const long eager0 = g->eager_ops, begins0 = g->begins, launches0 = g->launches;
        CHECK(s_step(P, which, one, k) == 0);
        const int differ = memcmp(P->lg[0], P->lg[1], sizeof(float) * (size_t)k * P->V);
        CHECK_MSG(differ == 0, "decode key %d, step %d (lengths %d..): logits differ", k, it,
                  P->len[which[0]]);
        const int state = seen[k]++;
        if (state == 0) /* first time: eager */
            CHECK(g->eager_ops > eager0 && g->begins == begins0 && g->launches == launches0);
        else if (state == 1) /* second: capture, launch */
            CHECK(g->eager_ops == eager0 && g->begins == begins0 + 1 &&
                  g->launches == launches0 + 1);
        else /* then: launch only */
            CHECK(g->eager_ops == eager0 && g->begins == begins0 && g->launches == launches0 + 1);
    }
}

int main(void) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tiny-a", tcheck_fixtures());
    weights_t *w = NULL;
    ops_t *cpu[2] = {NULL, NULL};
    gerr_t err = {{0}};
    CHECK_MSG(weights_load(dir, &w, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 2; i++)
        CHECK_MSG(ops_cpu_new(2, NULL, &cpu[i], &err) == 0, "%s", err.msg);
    if (!w || !cpu[0] || !cpu[1]) return tcheck_done("test_graph");
    s_g_t *g = s_g_new(cpu[1]);
    s_pair_t P = {0};
    engine_opts_t eo = {
        .block_size = 4, .kv_budget_bytes = 8 << 20, .max_seqs = S_NS, .max_chunk = 96};
    CHECK_MSG(engine_new(w, cpu[0], &eo, &P.e[0], &err) == 0, "%s", err.msg);
    CHECK_MSG(engine_new(w, &g->ops, &eo, &P.e[1], &err) == 0, "%s", err.msg);
    if (!P.e[0] || !P.e[1]) goto out;
    P.V = engine_vocab(P.e[0]);
    for (int i = 0; i < 2; i++)
        P.lg[i] = malloc(sizeof(float) * S_NS * 128 * (size_t)P.V);
    CHECK(g->copies_in_capture == 0);
    int seen[S_KEYS] = {0};
    /* prefill three sequences of different lengths (not graph steps) */
    {
        const int which[3] = {0, 1, 2}, n[3] = {5, 2, 11};
        const long b0 = g->begins;
        CHECK(s_step(&P, which, n, 3) == 0);
        CHECK(memcmp(P.lg[0], P.lg[1], sizeof(float) * 3 * (size_t)P.V) == 0);
        CHECK(g->begins == b0 && g->launches == 0);
    }
    /* decode the three together across block boundaries and the window */
    const int abc[3] = {0, 1, 2}, ab[2] = {0, 1}, c[1] = {2};
    s_decode(&P, g, abc, 3, 14, seen);
    /* a large prefill of a fourth sequence (the big buffer set) and a mixed step */
    {
        const int which[2] = {3, 0}, n[2] = {90, 1};
        CHECK(s_step(&P, which, n, 2) == 0);
        CHECK(memcmp(P.lg[0], P.lg[1], sizeof(float) * 2 * (size_t)P.V) == 0);
    }
    s_decode(&P, g, abc, 3, 5, seen); /* still replayed, at new lengths */
    s_decode(&P, g, ab, 2, 6, seen);
    s_decode(&P, g, c, 1, 4, seen);
    const int all4[4] = {3, 2, 1, 0};
    s_decode(&P, g, all4, 4, 5, seen);
    s_decode(&P, g, abc, 3, 3, seen);
    /* an all_logits decode token is not a graph step */
    {
        const long b0 = g->begins, l0 = g->launches;
        int32_t tk[2] = {s_tok(0, P.len[0]), 0};
        engine_seq_t sq;
        for (int side = 0; side < 2; side++) {
            kvcache_seq_t *q = &P.seq[side][0];
            CHECK(kvcache_seq_reserve(engine_kv(P.e[side]), q, P.len[0], P.len[0] + 1, &err) == 0);
            sq = (engine_seq_t){.tokens = tk,
                                .n_tokens = 1,
                                .start_pos = P.len[0],
                                .full_blocks = q->full,
                                .n_full_blocks = q->n_full,
                                .window_blocks = q->window,
                                .n_window_blocks = q->n_window,
                                .all_logits = true};
            CHECK(engine_step(P.e[side], &sq, 1, P.lg[side], &err) == 0);
        }
        P.len[0]++;
        CHECK(memcmp(P.lg[0], P.lg[1], sizeof(float) * (size_t)P.V) == 0);
        CHECK(g->begins == b0 && g->launches == l0);
    }
    CHECK(g->copies_in_capture == 0);
    CHECK(g->misses == 0);
    printf("graph test: %ld captures, %ld launches\n", g->begins, g->launches);
out:
    for (int side = 0; side < 2; side++) {
        for (int s = 0; s < S_NS; s++)
            if (P.e[side]) kvcache_seq_release(engine_kv(P.e[side]), &P.seq[side][s]);
        engine_free(&P.e[side]);
        free(P.lg[side]);
    }
    s_g_free(g);
    ops_cpu_free(&cpu[0]);
    ops_cpu_free(&cpu[1]);
    weights_free(&w);
    return tcheck_done("test_graph");
}
