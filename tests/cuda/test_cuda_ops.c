/* test_cuda_ops: every op of the CUDA backend against the CPU backend (the reference) on fresh
 * random data, plus the GPU sampler against shardd/sampling.c and a CUDA-graph replay.
 *
 * Each case uploads the same inputs to both backends, poisons the CUDA output with 0xff bytes (a
 * NaN in fp32, -1 in int32) so that an element the kernel never writes fails, runs both, and
 * compares with a per-op bound on err = max |got - want| / (|want| + rms(want)): matmuls 1e-2
 * (the CUDA backend rounds activations to bf16, DESIGN.md), attention 1e-4, elementwise ops
 * 1e-5 or exact. A non-finite value where the reference is finite always fails. Shapes include
 * the gpt-oss-20b ones (hidden 2880, q 4096, experts 5760 x 2880 = 90 MXFP4 blocks, 64 heads /
 * 8 kv heads of 64) and odd token counts (1, 3, 17, 64), misaligned strides and pointers, the
 * tiny test model's head_dim 16, fp32 and bf16 KV caches, windows and sinks.
 *
 * The MoE op (moe.cu) is checked against a reference made of the CPU backend's single ops (per
 * token, its experts in ascending index) and, when the CPU backend has it, the CPU moe op: the
 * gpt-oss-20b expert shape at T = 1, 3, 17, 64 with an expert that gets no token and one that
 * gets every token, and a small shape with a strided down slice and 130 tokens on one expert
 * (several MMA tiles). Bounds: 2e-2 against those fp32 references (two chained bf16 roundings,
 * the input and the SwiGLU output: up to 0.013 measured on an H200 at T = 130), and 5e-3 against
 * the bf16 emulation (bf16emu.h: the CPU ops with the GPU's roundings, so only fp32 summation
 * order differs; it still moves an SwiGLU output across a bf16 rounding boundary now and then,
 * which shows in the max-element metric: measured 6e-8 to 2e-7 on small shapes, 2e-5 to 1.2e-3 on
 * the 20b shape, where a wrong tile or scale gives > 1e-1). Also gather_rows (exact),
 * the memory members of ops_t, and the moe op captured with the ops_t graph hooks and replayed
 * on new routing.
 *
 * Without a CUDA device it prints "test_cuda_ops: skipped (no CUDA device)" and exits 77, which
 * ctest reports as skipped (SKIP_RETURN_CODE). Not here: the whole forward pass on the GPU
 * (tests/cuda/test_cuda_engine.c). */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "cuda_harness.h"
#include "cpu/ops_cpu.h"
#include "cuda/ops_cuda.h"
#include "mxfp4.h"
#include "ops.h"
#include "sampling.h"
#include "tcheck.h"

static ops_t *g_cpu, *g_gpu;
static bf16emu_t g_emu; /* the CPU with the GPU's bf16 roundings (moe references) */

#define S_MOE_TOL     2e-2 /* moe vs the fp32 CPU */
#define S_MOE_EMU_TOL 5e-3 /* moe vs the bf16 emulation (max-element metric, see s_cmp) */

/* ---- random data --------------------------------------------------------------------------- */

static uint64_t s_rng = 0x9e3779b97f4a7c15ull;

static uint32_t s_next(void) {
    s_rng ^= s_rng << 13;
    s_rng ^= s_rng >> 7;
    s_rng ^= s_rng << 17;
    return (uint32_t)(s_rng >> 11);
}

static float s_unif(void) { /* [-1, 1) */
    return (float)((s_next() & 0xffffff) / 8388608.0 - 1.0);
}

static float *s_f32_rand(size_t n, float scale) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = s_unif() * scale;
    return p;
}

static uint16_t *s_bf16_rand(size_t n, float scale) {
    uint16_t *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = f32_to_bf16(s_unif() * scale);
    return p;
}

/* ---- device helpers ------------------------------------------------------------------------ */

/* A device copy of host bytes (test-owned; freed with s_free). */
static void *s_dev(const void *host, size_t bytes) {
    gerr_t err = {{0}};
    void *d = ops_cuda_alloc(g_gpu, bytes, &err);
    if (!d) {
        fprintf(stderr, "test_cuda_ops: %s\n", err.msg);
        exit(1);
    }
    if (host) ops_cuda_upload(g_gpu, d, host, bytes);
    return d;
}

/* A device buffer filled with 0xff bytes (NaN floats, -1 ints). */
static void *s_poisoned(size_t bytes) {
    void *d = s_dev(NULL, bytes);
    ops_cuda_memset(g_gpu, d, 0xff, bytes);
    return d;
}

/* A host copy of device bytes (caller frees). */
static void *s_get(const void *dev, size_t bytes) {
    void *h = malloc(bytes ? bytes : 1);
    ops_cuda_download(g_gpu, h, dev, bytes);
    return h;
}

static void s_free(void *d) {
    ops_cuda_free_mem(g_gpu, d);
}

/* err = max |got - want| / (|want| + rms(want)); fails on tol or any non-finite got where want
 * is finite. Prints the case and its error. */
static void s_cmp(const char *what, const float *got, const float *want, size_t n, double tol) {
    double ss = 0.0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(want[i])) ss += (double)want[i] * want[i];
    const double rms = n ? sqrt(ss / (double)n) : 0.0;
    double err = 0.0;
    size_t bad = 0, worst = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(want[i])) {
            if (memcmp(&got[i], &want[i], sizeof(float)) != 0 && !(isnan(got[i]) && isnan(want[i])))
                bad++;
            continue;
        }
        if (!isfinite(got[i])) {
            if (!bad) worst = i;
            bad++;
            continue;
        }
        double e = fabs((double)got[i] - want[i]) / (fabs(want[i]) + rms + 1e-30);
        if (e > err) err = e, worst = i;
    }
    printf("  %-58s err %.3g (tol %.0e)%s\n", what, err, tol, bad ? "  NON-FINITE" : "");
    CHECK_MSG(bad == 0 && err <= tol, "%s: err %.3g, %zu non-finite; at %zu got %.9g want %.9g",
              what, err, bad, worst, (double)got[worst], (double)want[worst]);
}

/* ---- matmuls --------------------------------------------------------------------------------- */

static const int s_Ts[] = {1, 3, 8, 9, 17, 64};
#define S_NT ((int)(sizeof s_Ts / sizeof *s_Ts))

static void s_test_matmul_bf16(void) {
    printf("matmul_bf16\n");
    const struct {
        int rows, cols;
        size_t stride;
        int xoff; /* float offset of x (1 = misaligned vector loads) */
    } shapes[] = {
        {4096, 2880, 2880, 0}, /* q */
        {512, 2880, 2880, 0},  /* k, v */
        {2880, 4096, 4096, 0}, /* o */
        {32, 2880, 2880, 0},   /* router */
        {3001, 2880, 2880, 0}, /* lm_head-like, rows not a tile multiple */
        {37, 72, 77, 1},       /* odd stride, misaligned x */
        {45, 100, 100, 0},     /* cols not a multiple of 8 */
    };
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        const int rows = shapes[si].rows, cols = shapes[si].cols, xoff = shapes[si].xoff;
        const size_t stride = shapes[si].stride;
        uint16_t *w = s_bf16_rand((size_t)rows * stride, 0.5f);
        uint16_t *b = s_bf16_rand((size_t)rows, 1.0f);
        uint16_t *dw = s_dev(w, (size_t)rows * stride * 2), *db = s_dev(b, (size_t)rows * 2);
        for (int ti = 0; ti < S_NT; ti++) {
            const int T = s_Ts[ti];
            const size_t nx = (size_t)T * cols + (size_t)xoff, ny = (size_t)T * rows;
            float *x = s_f32_rand(nx, 2.0f), *want = malloc(ny * sizeof(float));
            float *dx = s_dev(x, nx * sizeof(float)), *dy = s_poisoned(ny * sizeof(float));
            const uint16_t *bias = (ti & 1) ? NULL : b, *dbias = (ti & 1) ? NULL : db;
            ops_bf16_mat_t Wc = {.w = w, .stride = stride, .rows = rows, .cols = cols};
            ops_bf16_mat_t Wg = {.w = dw, .stride = stride, .rows = rows, .cols = cols};
            g_cpu->matmul_bf16(g_cpu, x + xoff, T, &Wc, bias, want);
            g_gpu->matmul_bf16(g_gpu, dx + xoff, T, &Wg, dbias, dy);
            float *got = s_get(dy, ny * sizeof(float));
            char what[128];
            snprintf(what, sizeof what, "bf16 %dx%d stride %zu T=%d%s%s", rows, cols, stride, T,
                     bias ? " bias" : "", xoff ? " x+1" : "");
            s_cmp(what, got, want, ny, 1e-2);
            free(x), free(want), free(got);
            s_free(dx), s_free(dy);
        }
        free(w), free(b);
        s_free(dw), s_free(db);
    }
}

static void s_test_matmul_mxfp4(void) {
    printf("matmul_mxfp4\n");
    const struct {
        int rows, cols;
        size_t bstride, sstride;
    } shapes[] = {
        {5760, 2880, 1440, 90}, /* gate_up: 90 blocks per row */
        {2880, 2880, 1440, 90}, /* down */
        {2880, 736, 368, 23},   /* down, TP-4 slice of 23 blocks */
        {33, 64, 40, 3},        /* odd row strides (scalar loads) */
    };
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        const int rows = shapes[si].rows, cols = shapes[si].cols;
        const size_t bst = shapes[si].bstride, sst = shapes[si].sstride;
        uint8_t *blk = malloc((size_t)rows * bst), *sc = malloc((size_t)rows * sst);
        for (size_t i = 0; i < (size_t)rows * bst; i++)
            blk[i] = (uint8_t)s_next();
        for (size_t i = 0; i < (size_t)rows * sst; i++)
            sc[i] = (uint8_t)(118 + s_next() % 9); /* 2^-9 .. 2^-1 */
        uint16_t *b = s_bf16_rand((size_t)rows, 1.0f);
        uint8_t *dblk = s_dev(blk, (size_t)rows * bst), *dsc = s_dev(sc, (size_t)rows * sst);
        uint16_t *db = s_dev(b, (size_t)rows * 2);
        for (int ti = 0; ti < S_NT; ti++) {
            const int T = s_Ts[ti];
            const size_t nx = (size_t)T * cols, ny = (size_t)T * rows;
            float *x = s_f32_rand(nx, 2.0f), *want = malloc(ny * sizeof(float));
            float *dx = s_dev(x, nx * sizeof(float)), *dy = s_poisoned(ny * sizeof(float));
            const uint16_t *bias = (ti & 1) ? b : NULL, *dbias = (ti & 1) ? db : NULL;
            ops_mxfp4_mat_t Wc = {.blocks = blk,
                                  .scales = sc,
                                  .blocks_stride = bst,
                                  .scales_stride = sst,
                                  .rows = rows,
                                  .cols = cols};
            ops_mxfp4_mat_t Wg = Wc;
            Wg.blocks = dblk, Wg.scales = dsc;
            g_cpu->matmul_mxfp4(g_cpu, x, T, &Wc, bias, want);
            g_gpu->matmul_mxfp4(g_gpu, dx, T, &Wg, dbias, dy);
            float *got = s_get(dy, ny * sizeof(float));
            char what[128];
            snprintf(what, sizeof what, "mxfp4 %dx%d (%d blocks) strides %zu/%zu T=%d%s", rows,
                     cols, cols / 32, bst, sst, T, bias ? " bias" : "");
            s_cmp(what, got, want, ny, 1e-2);
            free(x), free(want), free(got);
            s_free(dx), s_free(dy);
        }
        free(blk), free(sc), free(b);
        s_free(dblk), s_free(dsc), s_free(db);
    }
}

/* ---- elementwise ------------------------------------------------------------------------------
 */

static void s_test_elementwise(void) {
    printf("embed, rmsnorm, add_rmsnorm, rope, swiglu, add, axpy\n");
    const int H = 2880, vocab = 1000;
    for (int ti = 0; ti < S_NT; ti++) {
        const int T = s_Ts[ti];
        const size_t n = (size_t)T * H;
        char what[128];

        /* embed: rows of a strided table */
        const size_t stride = (size_t)H + 8;
        uint16_t *table = s_bf16_rand((size_t)vocab * stride, 1.0f);
        int32_t *ids = malloc((size_t)T * sizeof *ids);
        for (int t = 0; t < T; t++)
            ids[t] = (int32_t)(s_next() % vocab);
        float *want = malloc(n * sizeof(float));
        uint16_t *dtable = s_dev(table, (size_t)vocab * stride * 2);
        int32_t *dids = s_dev(ids, (size_t)T * 4);
        float *dy = s_poisoned(n * sizeof(float));
        g_cpu->embed(g_cpu, table, stride, H, ids, T, want);
        g_gpu->embed(g_gpu, dtable, stride, H, dids, T, dy);
        float *got = s_get(dy, n * sizeof(float));
        snprintf(what, sizeof what, "embed %d x %d T=%d", vocab, H, T);
        s_cmp(what, got, want, n, 0.0);
        free(table), free(ids), free(got);
        s_free(dtable), s_free(dids);

        /* rmsnorm, out of place and in place */
        float *x = s_f32_rand(n, 3.0f);
        uint16_t *w = s_bf16_rand((size_t)H, 2.0f);
        float *dx = s_dev(x, n * sizeof(float));
        uint16_t *dw = s_dev(w, (size_t)H * 2);
        ops_cuda_memset(g_gpu, dy, 0xff, n * sizeof(float));
        g_cpu->rmsnorm(g_cpu, x, w, T, H, 1e-5f, want);
        g_gpu->rmsnorm(g_gpu, dx, dw, T, H, 1e-5f, dy);
        got = s_get(dy, n * sizeof(float));
        snprintf(what, sizeof what, "rmsnorm %d T=%d", H, T);
        s_cmp(what, got, want, n, 1e-5);
        free(got);
        g_gpu->rmsnorm(g_gpu, dx, dw, T, H, 1e-5f, dx);
        got = s_get(dx, n * sizeof(float));
        snprintf(what, sizeof what, "rmsnorm %d T=%d in place", H, T);
        s_cmp(what, got, want, n, 1e-5);
        free(got);

        /* add_rmsnorm: x += y, out = rmsnorm(x) * w; both x and out compared, out poisoned */
        float *x2 = s_f32_rand(n, 3.0f), *y2 = s_f32_rand(n, 1.0f);
        float *dx2 = s_dev(x2, n * sizeof(float)), *dy2 = s_dev(y2, n * sizeof(float));
        ops_cuda_memset(g_gpu, dy, 0xff, n * sizeof(float));
        g_cpu->add_rmsnorm(g_cpu, x2, y2, w, T, H, 1e-5f, want);
        g_gpu->add_rmsnorm(g_gpu, dx2, dy2, dw, T, H, 1e-5f, dy);
        got = s_get(dy, n * sizeof(float));
        snprintf(what, sizeof what, "add_rmsnorm %d T=%d (out)", H, T);
        s_cmp(what, got, want, n, 1e-5);
        free(got);
        got = s_get(dx2, n * sizeof(float));
        snprintf(what, sizeof what, "add_rmsnorm %d T=%d (x += y)", H, T);
        s_cmp(what, got, x2, n, 1e-5);
        free(got), free(x2), free(y2), free(w);
        s_free(dx2), s_free(dy2), s_free(dw);

        /* rope on 64 heads of 64 (q) with a YaRN table at scattered positions */
        const int nh = 64, D = 64;
        const size_t nq = (size_t)T * nh * D;
        ops_rope_t rp;
        CHECK(ops_rope_init(&rp, D, 150000.0, 32.0, 32.0, 1.0, 4096, false) == 0);
        int32_t *pos = malloc((size_t)T * sizeof *pos);
        for (int t = 0; t < T; t++)
            pos[t] = (int32_t)(s_next() % 131072);
        float *cs = malloc((size_t)T * D * sizeof(float));
        ops_rope_table(&rp, pos, T, cs);
        float *q = s_f32_rand(nq, 2.0f);
        float *dq = s_dev(q, nq * sizeof(float)), *dcs = s_dev(cs, (size_t)T * D * sizeof(float));
        g_cpu->rope(g_cpu, q, T, nh, D, cs);
        g_gpu->rope(g_gpu, dq, T, nh, D, dcs);
        got = s_get(dq, nq * sizeof(float));
        snprintf(what, sizeof what, "rope %d heads x %d T=%d", nh, D, T);
        s_cmp(what, got, q, nq, 1e-5);
        free(got), free(pos), free(cs), free(q);
        s_free(dq), s_free(dcs);

        /* swiglu: values beyond the clamp limit 7 */
        const int I = 2880;
        float *h = s_f32_rand((size_t)T * 2 * I, 10.0f);
        float *dh = s_dev(h, (size_t)T * 2 * I * sizeof(float));
        float *ws = malloc((size_t)T * I * sizeof(float));
        float *dws = s_poisoned((size_t)T * I * sizeof(float));
        g_cpu->swiglu(g_cpu, h, T, I, 1.702f, 7.0f, ws);
        g_gpu->swiglu(g_gpu, dh, T, I, 1.702f, 7.0f, dws);
        got = s_get(dws, (size_t)T * I * sizeof(float));
        snprintf(what, sizeof what, "swiglu %d T=%d", I, T);
        s_cmp(what, got, ws, (size_t)T * I, 1e-5);
        free(got), free(h), free(ws);
        s_free(dh), s_free(dws);

        /* add, axpy over an odd length (the residual of T tokens plus 3) */
        const size_t m = n + 3;
        float *a = s_f32_rand(m, 1.0f), *c = s_f32_rand(m, 1.0f);
        float *da = s_dev(a, m * sizeof(float)), *dc = s_dev(c, m * sizeof(float));
        g_cpu->add(g_cpu, a, c, m);
        g_gpu->add(g_gpu, da, dc, m);
        got = s_get(da, m * sizeof(float));
        snprintf(what, sizeof what, "add n=%zu", m);
        s_cmp(what, got, a, m, 0.0);
        free(got);
        g_cpu->axpy(g_cpu, a, 0.37f, c, m);
        g_gpu->axpy(g_gpu, da, 0.37f, dc, m);
        got = s_get(da, m * sizeof(float));
        snprintf(what, sizeof what, "axpy n=%zu", m);
        s_cmp(what, got, a, m, 1e-6);
        free(got), free(a), free(c), free(x), free(want);
        s_free(da), s_free(dc), s_free(dx), s_free(dy);
    }
}

static void s_test_router(void) {
    printf("router_topk\n");
    const int Es[] = {32, 128}, K = 4;
    for (int ei = 0; ei < 2; ei++) {
        for (int ti = 0; ti < S_NT; ti++) {
            const int T = s_Ts[ti], E = Es[ei];
            float *z = malloc((size_t)T * E * sizeof(float));
            for (int i = 0; i < T * E; i++) /* few distinct values: many ties */
                z[i] = (float)(s_next() % 7) * 0.5f + (ti & 1 ? s_unif() : 0.0f);
            int32_t *idx = malloc((size_t)T * K * sizeof *idx);
            float *w = malloc((size_t)T * K * sizeof(float));
            float *dz = s_dev(z, (size_t)T * E * sizeof(float));
            int32_t *didx = s_poisoned((size_t)T * K * sizeof *idx);
            float *dw = s_poisoned((size_t)T * K * sizeof(float));
            g_cpu->router_topk(g_cpu, z, T, E, K, idx, w);
            g_gpu->router_topk(g_gpu, dz, T, E, K, didx, dw);
            int32_t *gidx = s_get(didx, (size_t)T * K * sizeof *idx);
            float *gw = s_get(dw, (size_t)T * K * sizeof(float));
            char what[128];
            snprintf(what, sizeof what, "router E=%d k=%d T=%d%s weights", E, K, T,
                     ti & 1 ? "" : " (ties)");
            CHECK_MSG(memcmp(gidx, idx, (size_t)T * K * sizeof *idx) == 0, "%s: indices differ",
                      what);
            s_cmp(what, gw, w, (size_t)T * K, 1e-6);
            free(z), free(idx), free(w), free(gidx), free(gw);
            s_free(dz), s_free(didx), s_free(dw);
        }
    }
}

/* ---- KV cache and attention -------------------------------------------------------------------
 */

typedef struct {
    int start, n; /* positions start .. start + n - 1 in this step */
} s_seq_t;

typedef struct {
    int n_heads, n_kv, D, window;
    ops_kv_dtype_t dtype;
    int n_seqs;
    s_seq_t seqs[4];
    const char *what;
} s_attn_case_t;

static void s_test_attention_case(const s_attn_case_t *ac) {
    const int bs = 16, nh = ac->n_heads, nkv = ac->n_kv, D = ac->D;
    const size_t esz = ac->dtype == OPS_KV_F32 ? 4 : 2;
    int T = 0, nlog[4], n_blocks = 0;
    for (int s = 0; s < ac->n_seqs; s++) {
        T += ac->seqs[s].n;
        nlog[s] = (ac->seqs[s].start + ac->seqs[s].n - 1) / bs + 1;
        n_blocks += nlog[s];
    }
    n_blocks += 3; /* spare blocks nobody owns */
    /* physical blocks: a random permutation, so logical order != physical order */
    int32_t *perm = malloc((size_t)n_blocks * sizeof *perm);
    for (int i = 0; i < n_blocks; i++)
        perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        int j = (int)(s_next() % (uint32_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    int32_t *tables[4], *dtables[4];
    int used = 0;
    for (int s = 0; s < ac->n_seqs; s++) {
        tables[s] = malloc((size_t)nlog[s] * sizeof(int32_t));
        int first_lo = ac->window > 0 && ac->seqs[s].start - ac->window + 1 > 0
                           ? ac->seqs[s].start - ac->window + 1
                           : 0;
        for (int b = 0; b < nlog[s]; b++)
            tables[s][b] = b < first_lo / bs ? -1 : perm[used + b]; /* dropped from the window */
        used += nlog[s];
        dtables[s] = s_dev(tables[s], (size_t)nlog[s] * sizeof(int32_t));
    }
    ops_tok_t *toks = malloc((size_t)T * sizeof *toks), *gtoks = malloc((size_t)T * sizeof *toks);
    for (int s = 0, t = 0; s < ac->n_seqs; s++)
        for (int i = 0; i < ac->seqs[s].n; i++, t++) {
            toks[t] = (ops_tok_t){.pos = ac->seqs[s].start + i, .blocks = tables[s]};
            gtoks[t] = (ops_tok_t){.pos = ac->seqs[s].start + i, .blocks = dtables[s]};
        }
    ops_tok_t *dtoks = s_dev(gtoks, (size_t)T * sizeof *toks);

    /* random cache contents (identical on both sides), then this step's k/v written by kv_write */
    const size_t row = (size_t)nkv * D, nkvel = (size_t)n_blocks * bs * row;
    void *kc = malloc(nkvel * esz), *vc = malloc(nkvel * esz);
    if (ac->dtype == OPS_KV_F32) {
        float *k = s_f32_rand(nkvel, 1.0f), *v = s_f32_rand(nkvel, 1.0f);
        memcpy(kc, k, nkvel * 4), memcpy(vc, v, nkvel * 4);
        free(k), free(v);
    } else {
        uint16_t *k = s_bf16_rand(nkvel, 1.0f), *v = s_bf16_rand(nkvel, 1.0f);
        memcpy(kc, k, nkvel * 2), memcpy(vc, v, nkvel * 2);
        free(k), free(v);
    }
    void *dkc = s_dev(kc, nkvel * esz), *dvc = s_dev(vc, nkvel * esz);
    ops_kv_t kvc = {.k = kc,
                    .v = vc,
                    .dtype = ac->dtype,
                    .n_blocks = n_blocks,
                    .block_size = bs,
                    .n_kv_heads = nkv,
                    .head_dim = D};
    ops_kv_t kvg = kvc;
    kvg.k = dkc, kvg.v = dvc;
    float *k = s_f32_rand((size_t)T * row, 1.0f), *v = s_f32_rand((size_t)T * row, 1.0f);
    float *dk = s_dev(k, (size_t)T * row * 4), *dv = s_dev(v, (size_t)T * row * 4);
    g_cpu->kv_write(g_cpu, &kvc, k, v, toks, T);
    g_gpu->kv_write(g_gpu, &kvg, dk, dv, dtoks, T);
    void *gk = s_get(dkc, nkvel * esz), *gv = s_get(dvc, nkvel * esz);
    char what[160];
    snprintf(what, sizeof what, "kv_write %s T=%d %s", ac->what, T,
             ac->dtype == OPS_KV_F32 ? "f32" : "bf16");
    printf("  %-58s %s\n", what,
           memcmp(gk, kc, nkvel * esz) == 0 && memcmp(gv, vc, nkvel * esz) == 0 ? "exact"
                                                                                : "DIFFERS");
    CHECK_MSG(memcmp(gk, kc, nkvel * esz) == 0 && memcmp(gv, vc, nkvel * esz) == 0,
              "%s: cache bytes differ", what);

    /* attention */
    const size_t nq = (size_t)T * nh * D;
    float *q = s_f32_rand(nq, 1.0f), *want = malloc(nq * sizeof(float));
    uint16_t *sinks = s_bf16_rand((size_t)nh, 2.0f);
    float *dq = s_dev(q, nq * 4), *dout = s_poisoned(nq * 4);
    uint16_t *dsinks = s_dev(sinks, (size_t)nh * 2);
    const float sm = 1.0f / sqrtf((float)D);
    g_cpu->attention(g_cpu, q, T, nh, &kvc, toks, ac->window, sinks, sm, want);
    g_gpu->attention(g_gpu, dq, T, nh, &kvg, dtoks, ac->window, dsinks, sm, dout);
    float *got = s_get(dout, nq * 4);
    snprintf(what, sizeof what, "attention %s T=%d %dh/%dkv D=%d win=%d %s", ac->what, T, nh, nkv,
             D, ac->window, ac->dtype == OPS_KV_F32 ? "f32" : "bf16");
    s_cmp(what, got, want, nq, 1e-4);

    free(got), free(q), free(want), free(sinks), free(k), free(v), free(gk), free(gv);
    free(kc), free(vc), free(toks), free(gtoks), free(perm);
    s_free(dq), s_free(dout), s_free(dsinks), s_free(dk), s_free(dv), s_free(dkc), s_free(dvc);
    s_free(dtoks);
    for (int s = 0; s < ac->n_seqs; s++)
        free(tables[s]), s_free(dtables[s]);
}

static void s_test_attention(void) {
    printf("kv_write, attention\n");
    const s_attn_case_t cases[] = {
        {64, 8, 64, 0, OPS_KV_F32, 1, {{3000, 1}}, "decode long"},
        {64, 8, 64, 128, OPS_KV_F32, 1, {{3000, 1}}, "decode long window"},
        {64, 8, 64, 0, OPS_KV_F32, 3, {{5, 1}, {700, 1}, {4095, 1}}, "decode 3 seqs"},
        {64, 8, 64, 128, OPS_KV_F32, 3, {{5, 1}, {700, 1}, {4095, 1}}, "decode 3 seqs window"},
        {64, 8, 64, 0, OPS_KV_F32, 2, {{100, 9}, {0, 8}}, "prefill 2 seqs"},
        {64, 8, 64, 128, OPS_KV_F32, 1, {{0, 64}}, "prefill from 0 window"},
        {64, 8, 64, 128, OPS_KV_F32, 1, {{200, 64}}, "chunked prefill window"},
        {64, 8, 64, 0, OPS_KV_F32, 1, {{1000, 64}}, "chunked prefill full"},
        {64, 8, 64, 0, OPS_KV_F32, 4, {{0, 1}, {50, 20}, {300, 1}, {7, 17}}, "mixed batch"},
        {4, 2, 16, 8, OPS_KV_F32, 1, {{0, 17}}, "tiny-a shape window"},
        {4, 2, 16, 0, OPS_KV_F32, 2, {{3, 3}, {30, 1}}, "tiny-a shape"},
        {8, 8, 64, 0, OPS_KV_F32, 1, {{70, 17}}, "no GQA"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        s_attn_case_t c = cases[i];
        s_test_attention_case(&c);
        c.dtype = OPS_KV_BF16;
        s_test_attention_case(&c);
    }
}

/* ---- sampling ------------------------------------------------------------------------------ */

typedef struct {
    float v, w;
    int32_t id;
} s_scand_t;

static int s_scand_rank(const void *pa, const void *pb) { /* higher logit, then lower id */
    const s_scand_t *a = pa, *b = pb;
    if (a->v != b->v) return a->v > b->v ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

static int s_scand_id(const void *pa, const void *pb) {
    const s_scand_t *a = pa, *b = pb;
    return (a->id > b->id) - (a->id < b->id);
}

/* For a temperature > 0 row on sampling_sample's full-vocabulary path (top_k 0 or >= V), why the
 * GPU sampler may leave it to the CPU, recomputed here with plain sorted sums: 1 when the
 * nucleus (top_p < 1) or the set above the min_p floor (top_p = 1) holds more than
 * OPS_CUDA_SAMPLE_MAX_K ids, or neither top_p nor min_p is on; 2 when the nucleus boundary or the
 * draw lies within 1e-5 * mass of a threshold (the GPU's rounding guard, far narrower, may then
 * decline it); 0 when the GPU must draw the row itself. *nucleus = the member count. */
static int s_full_row_needs_cpu(const float *logits, int V, const sampling_params_t *p,
                                uint64_t position, int *nucleus) {
    *nucleus = -1;
    if (!(p->top_p < 1.0) && !(p->min_p > 0.0)) return 1;
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) {
        float v = isnan(logits[i]) ? -INFINITY : (logits[i] == INFINITY ? FLT_MAX : logits[i]);
        if (v > mx) mx = v;
    }
    const double t = p->temperature;
    const float inv_t = 1.0 / t > FLT_MAX ? FLT_MAX : (float)(1.0 / t);
    const double floor = p->min_p > 0.0 ? (double)mx + t * log(p->min_p) : -INFINITY;
    s_scand_t *c = malloc((size_t)V * sizeof *c);
    int n = 0;
    double mass = 0.0;
    for (int i = 0; i < V; i++) {
        float v = isnan(logits[i]) ? -INFINITY : (logits[i] == INFINITY ? FLT_MAX : logits[i]);
        if (v == -INFINITY || (double)v < floor) continue;
        c[n] = (s_scand_t){.v = v, .w = expf((v - mx) * inv_t), .id = i};
        mass += c[n++].w;
    }
    qsort(c, (size_t)n, sizeof *c, s_scand_rank);
    const double eps = 1e-5 * mass;
    int keep = n, near = 0;
    if (p->top_p < 1.0) {
        const double target = p->top_p * mass;
        double acc = 0.0;
        for (int i = 0; i < n; i++) {
            const double prev = acc;
            acc += c[i].w;
            if (acc >= target) {
                keep = i + 1;
                near = prev > target - eps || acc < target + eps;
                break;
            }
        }
    }
    *nucleus = keep;
    int why = 0;
    if (keep > OPS_CUDA_SAMPLE_MAX_K) {
        why = 1;
    } else {
        qsort(c, (size_t)keep, sizeof *c, s_scand_id); /* the CPU draws in id order */
        double total = 0.0, acc = 0.0;
        for (int i = 0; i < keep; i++)
            total += c[i].w;
        const double target = sampling_uniform(p->seed, position) * total;
        for (int i = 0; i < keep; i++) {
            const double prev = acc;
            acc += c[i].w;
            if (acc > target) {
                near |= prev > target - eps || acc < target + eps;
                break;
            }
        }
        why = near ? 2 : 0;
    }
    free(c);
    return why;
}

/* Runs ops_cuda_sample (and argmax) on R rows and compares them with sampling_sample: greedy and
 * top-k rows must equal the CPU token; full-vocabulary rows (top_k 0 or >= V) either equal it or
 * are -1, and -1 only where s_full_row_needs_cpu says the GPU may decline. */
static void s_check_sample_rows(const char *what, const float *lg, int R, int V, size_t stride,
                                const ops_cuda_sample_t *sp) {
    float *dlg = s_dev(lg, (size_t)R * stride * sizeof(float));
    ops_cuda_sample_t *dsp = s_dev(sp, (size_t)R * sizeof *sp);
    int32_t *dam = s_poisoned((size_t)R * 4), *dsm = s_poisoned((size_t)R * 4);
    ops_cuda_argmax(g_gpu, dlg, R, V, stride, dam);
    ops_cuda_sample(g_gpu, dlg, R, V, stride, dsp, dsm);
    int32_t *gam = s_get(dam, (size_t)R * 4), *gsm = s_get(dsm, (size_t)R * 4);
    sampling_ws_t *ws = sampling_ws_new();
    int am_ok = 0, sm_ok = 0, sm_cpu = 0, sm_near = 0, sm_full = 0;
    for (int r = 0; r < R; r++) {
        const float *x = lg + (size_t)r * stride;
        sampling_params_t p;
        sampling_params_init(&p);
        p.temperature = 0.0;
        sampling_result_t res;
        gerr_t err = {{0}};
        int rc = sampling_sample(&p, NULL, x, V, 0, ws, &res, &err);
        CHECK(rc == 0);
        am_ok += gam[r] == res.token;
        CHECK_MSG(gam[r] == res.token, "argmax row %d: gpu %d cpu %d", r, gam[r], res.token);
        p.temperature = sp[r].temperature;
        p.top_k = sp[r].top_k;
        p.top_p = sp[r].top_p;
        p.min_p = sp[r].min_p;
        p.seed = sp[r].seed;
        rc = sampling_sample(&p, NULL, x, V, sp[r].position, ws, &res, &err);
        CHECK(rc == 0);
        const bool full = p.temperature > 0.0 && (p.top_k == 0 || p.top_k >= V);
        if (p.temperature > 0.0 && !full && p.top_k > OPS_CUDA_SAMPLE_MAX_K) {
            sm_cpu++;
            CHECK_MSG(gsm[r] == -1, "sample row %d: top_k %d should be left to the CPU (got %d)", r,
                      p.top_k, gsm[r]);
            continue;
        }
        if (full) {
            sm_full++;
            int nucleus;
            const int why = s_full_row_needs_cpu(x, V, &p, sp[r].position, &nucleus);
            if (gsm[r] == -1) {
                sm_cpu++;
                sm_near += why == 2;
                CHECK_MSG(why != 0,
                          "sample row %d (T %.2f k %d p %.2f min_p %.2f): left to the CPU but its "
                          "%d members fit in %d candidates",
                          r, p.temperature, p.top_k, p.top_p, p.min_p, nucleus,
                          OPS_CUDA_SAMPLE_MAX_K);
                continue;
            }
        }
        sm_ok += gsm[r] == res.token;
        CHECK_MSG(gsm[r] == res.token,
                  "sample row %d (T %.2f k %d p %.2f min_p %.2f): gpu %d cpu %d", r, p.temperature,
                  p.top_k, p.top_p, p.min_p, gsm[r], res.token);
    }
    printf("  %-58s %d / %d\n", "argmax == sampling_sample(temperature 0)", am_ok, R);
    printf("  %-58s %d / %d (%d left to the CPU, %d of them near a rounding threshold; %d rows "
           "without top-k)\n",
           what, sm_ok, R - sm_cpu, sm_cpu, sm_near, sm_full);
    sampling_ws_destroy(&ws);
    free(gam), free(gsm);
    s_free(dlg), s_free(dsp), s_free(dam), s_free(dsm);
}

static void s_test_sampling(void) {
    printf("sampling\n");
    /* the device hash is the CPU one */
    const int nu = 4096;
    uint64_t *seeds = malloc(nu * sizeof *seeds), *posv = malloc(nu * sizeof *posv);
    for (int i = 0; i < nu; i++) {
        seeds[i] = i < 64 ? (uint64_t)i : ((uint64_t)s_next() << 32 | s_next());
        posv[i] = i < 64 ? (uint64_t)(i * 7) : (uint64_t)s_next();
    }
    uint64_t *dseeds = s_dev(seeds, nu * 8), *dpos = s_dev(posv, nu * 8);
    double *du = s_poisoned(nu * 8);
    ops_cuda_uniform(g_gpu, dseeds, dpos, nu, du);
    double *gu = s_get(du, nu * 8);
    int same = 0;
    for (int i = 0; i < nu; i++)
        same += memcmp(&gu[i], &(double){sampling_uniform(seeds[i], posv[i])}, 8) == 0;
    printf("  %-58s %d / %d bit-exact\n", "uniform(seed, position)", same, nu);
    CHECK(same == nu);
    free(seeds), free(posv), free(gu);
    s_free(dseeds), s_free(dpos), s_free(du);

    /* argmax and top-k sampling against sampling_sample on vocabulary-sized rows */
    const int V = 201088, R = 24;
    const size_t stride = (size_t)V + 16;
    float *lg = malloc((size_t)R * stride * sizeof(float));
    for (int r = 0; r < R; r++) {
        float *x = lg + (size_t)r * stride;
        for (int i = 0; i < V; i++)
            x[i] = s_unif() * 4.0f + (r % 3 == 0 ? (float)(s_next() % 3) : 0.0f);
        x[(s_next() % V)] = 9.0f; /* a tie for the maximum: the lower id wins */
        x[(s_next() % V)] = 9.0f;
        x[s_next() % V] = NAN;
        if (r == 5) x[1234] = INFINITY;
    }
    ops_cuda_sample_t *sp = calloc(R, sizeof *sp);
    const int ks[] = {1, 5, 40, 64, 0, 3};
    for (int r = 0; r < R; r++) {
        sp[r].temperature = r % 6 == 0 ? 0.0 : 0.3 + 0.1 * (r % 7);
        sp[r].top_k = ks[r % 6];
        sp[r].top_p = r % 4 == 1 ? 0.8 : 1.0;
        sp[r].min_p = r % 5 == 2 ? 0.05 : 0.0;
        sp[r].seed = 1000u + (uint64_t)r * 77u;
        sp[r].position = (uint64_t)r * 13u;
    }
    s_check_sample_rows("sample == sampling_sample", lg, R, V, stride, sp);

    /* top_p / min_p without top-k (top_k 0, or >= V: the same CPU path). Peaked rows put a
     * handful to a few dozen ids far above a flat background, so the nucleus or the min_p set
     * fits in 64 candidates; flat rows need thousands of ids and go to the CPU. */
    for (int r = 0; r < R; r++) {
        float *x = lg + (size_t)r * stride;
        const int peaked = r % 3 != 2;
        for (int i = 0; i < V; i++)
            x[i] = s_unif() * 4.0f;
        if (peaked) {
            const int np = 1 + (int)(s_next() % 40);
            for (int j = 0; j < np; j++)
                x[s_next() % V] = 16.0f + 2.0f * s_unif() + (r % 2 ? 6.0f : 0.0f);
        }
        x[s_next() % V] = NAN;
        if (r == 7) x[4321] = INFINITY;
    }
    const double tps[] = {0.5, 0.9, 1.0, 0.9, 0.5, 0.99, 1.0, 0.3};
    const double mps[] = {0.0, 0.0, 0.05, 0.1, 0.0, 0.0, 0.2, 0.01};
    for (int r = 0; r < R; r++) {
        sp[r].temperature = 0.6 + 0.2 * (r % 5);
        sp[r].top_k = r == 3 ? V : (r == 9 ? V + 7 : 0);
        sp[r].top_p = tps[r % 8];
        sp[r].min_p = mps[r % 8];
        sp[r].seed = 5000u + (uint64_t)r * 31u;
        sp[r].position = (uint64_t)r * 101u + 7u;
    }
    sp[R - 1].top_p = 1.0, sp[R - 1].min_p = 0.0; /* plain temperature: always the CPU */
    s_check_sample_rows("sample (top_k 0, top_p/min_p) == sampling_sample", lg, R, V, stride, sp);
    free(lg), free(sp);
}

/* ---- memory members, gather_rows, moe ------------------------------------------------------ */

static void s_test_memory(void) {
    printf("alloc, upload, download, zero, gather_rows\n");
    const size_t n = 1003;
    uint8_t *d = g_gpu->alloc(g_gpu, n), *h = malloc(n), *pat = malloc(n);
    CHECK(d != NULL);
    g_gpu->download(g_gpu, h, d, n);
    size_t nz = 0;
    for (size_t i = 0; i < n; i++)
        nz += h[i] != 0;
    CHECK_MSG(nz == 0, "alloc: %zu of %zu bytes not zero", nz, n);
    for (size_t i = 0; i < n; i++)
        pat[i] = (uint8_t)(i * 7 + 1);
    g_gpu->upload(g_gpu, d, pat, n);
    g_gpu->zero(g_gpu, d + 100, 300);
    g_gpu->download(g_gpu, h, d, n);
    for (size_t i = 100; i < 400; i++)
        pat[i] = 0;
    CHECK_MSG(memcmp(h, pat, n) == 0, "upload/zero/download round trip differs");
    printf("  %-58s %s\n", "alloc zero-filled, upload, zero, download",
           nz == 0 && memcmp(h, pat, n) == 0 ? "exact" : "DIFFERS");
    g_gpu->free_mem(g_gpu, d);
    g_gpu->free_mem(g_gpu, NULL);
    free(h), free(pat);

    const int ns[] = {2880, 77}, R = 37, S = 50;
    for (int k = 0; k < 2; k++) {
        const int w = ns[k];
        float *src = s_f32_rand((size_t)S * w, 1.0f), *want = malloc((size_t)R * w * 4);
        int32_t *rows = malloc(R * sizeof *rows);
        for (int r = 0; r < R; r++)
            rows[r] = (int32_t)(s_next() % S);
        float *dsrc = s_dev(src, (size_t)S * w * 4), *ddst = s_poisoned((size_t)R * w * 4);
        int32_t *drows = s_dev(rows, R * sizeof *rows);
        for (int r = 0; r < R; r++)
            memcpy(want + (size_t)r * w, src + (size_t)rows[r] * w, (size_t)w * 4);
        g_gpu->gather_rows(g_gpu, dsrc, drows, R, w, ddst);
        float *got = s_get(ddst, (size_t)R * w * 4);
        char what[96];
        snprintf(what, sizeof what, "gather_rows %d of %d rows x %d", R, S, w);
        s_cmp(what, got, want, (size_t)R * w, 0.0);
        free(src), free(want), free(rows), free(got);
        s_free(dsrc), s_free(ddst), s_free(drows);
    }
}

/* One MoE layer's experts on both sides (host and device copies of the same bytes). */
typedef struct {
    int E, H, nu;
    ops_moe_t hm, dm; /* host / device views */
    void *dev[6];     /* device buffers */
    void *host[6];    /* host buffers */
} s_moe_w_t;

/* Experts [E][rows][bstride] / [E][rows][sstride] (strides may exceed the row: a TP slice) with
 * an optional bias; host copies into host[i..i+2], device into dev[i..i+2]. */
static void s_moe_set(s_moe_w_t *m, int i, ops_experts_t *hx, ops_experts_t *dx, int rows, int cols,
                      size_t bstride, size_t sstride, bool bias) {
    const size_t nb = (size_t)m->E * rows * bstride, ns = (size_t)m->E * rows * sstride;
    uint8_t *blk = malloc(nb), *sc = malloc(ns);
    for (size_t j = 0; j < nb; j++)
        blk[j] = (uint8_t)s_next();
    for (size_t j = 0; j < ns; j++)
        sc[j] = (uint8_t)(117 + s_next() % 6); /* 2^-10 .. 2^-5: keep the SwiGLU input moderate */
    uint16_t *b = bias ? s_bf16_rand((size_t)m->E * rows, 0.5f) : NULL;
    m->host[i] = blk, m->host[i + 1] = sc, m->host[i + 2] = b;
    m->dev[i] = s_dev(blk, nb), m->dev[i + 1] = s_dev(sc, ns);
    m->dev[i + 2] = b ? s_dev(b, (size_t)m->E * rows * 2) : NULL;
    *hx = (ops_experts_t){.mat = {.blocks = blk,
                                  .scales = sc,
                                  .blocks_stride = bstride,
                                  .scales_stride = sstride,
                                  .rows = rows,
                                  .cols = cols},
                          .blocks_estride = (size_t)rows * bstride,
                          .scales_estride = (size_t)rows * sstride,
                          .bias = b,
                          .bias_estride = (size_t)rows};
    *dx = *hx;
    dx->mat.blocks = m->dev[i], dx->mat.scales = m->dev[i + 1], dx->bias = m->dev[i + 2];
}

static void s_moe_new(s_moe_w_t *m, int E, int H, int nu, int down_pad_blocks, bool down_bias) {
    memset(m, 0, sizeof *m);
    m->E = E, m->H = H, m->nu = nu;
    s_moe_set(m, 0, &m->hm.gate_up, &m->dm.gate_up, 2 * nu, H, (size_t)H / 2, (size_t)H / 32, true);
    const int dc = nu + 32 * down_pad_blocks; /* full row of which this view takes nu columns */
    s_moe_set(m, 3, &m->hm.down, &m->dm.down, H, nu, (size_t)dc / 2, (size_t)dc / 32, down_bias);
    m->hm.n_experts = m->dm.n_experts = E;
    m->hm.alpha = m->dm.alpha = 1.702f;
    m->hm.limit = m->dm.limit = 7.0f;
}

static void s_moe_free(s_moe_w_t *m) {
    for (int i = 0; i < 6; i++)
        free(m->host[i]), s_free(m->dev[i]);
}

/* The reference from the CPU's single ops: per token, its experts in ascending index, each
 * y = down(swiglu(gate_up(a) + b)) + b, out += w * y. */
static void s_moe_ref(const s_moe_w_t *m, const float *a, int T, const int32_t *idx, const float *w,
                      int K, float *out) {
    const int H = m->H, nu = m->nu;
    float *h = malloc((size_t)2 * nu * 4), *act = malloc((size_t)nu * 4),
          *y = malloc((size_t)H * 4);
    for (int t = 0; t < T; t++) {
        float *o = out + (size_t)t * H;
        memset(o, 0, (size_t)H * 4);
        for (int e = 0; e < m->E; e++) {
            int j = 0;
            while (j < K && idx[t * K + j] != e)
                j++;
            if (j == K) continue;
            const uint16_t *gb, *db;
            ops_mxfp4_mat_t gu = bf16emu_expert(&m->hm.gate_up, e, &gb);
            ops_mxfp4_mat_t dn = bf16emu_expert(&m->hm.down, e, &db);
            g_cpu->matmul_mxfp4(g_cpu, a + (size_t)t * H, 1, &gu, gb, h);
            g_cpu->swiglu(g_cpu, h, 1, nu, m->hm.alpha, m->hm.limit, act);
            g_cpu->matmul_mxfp4(g_cpu, act, 1, &dn, db, y);
            g_cpu->axpy(g_cpu, o, w[t * K + j], y, (size_t)H);
        }
    }
    free(h), free(act), free(y);
}

/* Router outputs for T tokens: K distinct experts per token (never `skip`; `hot` >= 0 is in
 * every token), weights softmax-like positive, descending. */
static void s_route(int T, int E, int K, int skip, int hot, int32_t *idx, float *w) {
    for (int t = 0; t < T; t++) {
        for (int j = 0; j < K; j++) {
            int e;
            bool dup;
            do {
                e = j == 0 && hot >= 0 ? hot : (int)(s_next() % (uint32_t)E);
                dup = e == skip;
                for (int i = 0; i < j; i++)
                    dup |= idx[t * K + i] == e;
            } while (dup);
            idx[t * K + j] = e;
        }
        float sum = 0.0f, v[64];
        for (int j = 0; j < K; j++)
            sum += v[j] = 1.0f / (float)(j + 1) + 0.1f * (s_unif() + 1.0f);
        for (int j = 0; j < K; j++)
            w[t * K + j] = v[j] / sum;
    }
}

static void s_test_moe_case(const s_moe_w_t *m, int T, int K, int skip, int hot, const char *what) {
    const int H = m->H;
    const size_t na = (size_t)T * H;
    float *a = s_f32_rand(na, 1.0f), *want = malloc(na * 4), *want2 = malloc(na * 4);
    int32_t *idx = malloc((size_t)T * K * 4);
    float *w = malloc((size_t)T * K * 4);
    s_route(T, m->E, K, skip, hot, idx, w);
    float *da = s_dev(a, na * 4), *dw = s_dev(w, (size_t)T * K * 4), *dout = s_poisoned(na * 4);
    int32_t *didx = s_dev(idx, (size_t)T * K * 4);
    s_moe_ref(m, a, T, idx, w, K, want);
    g_gpu->moe(g_gpu, da, T, didx, dw, K, &m->dm, dout);
    float *got = s_get(dout, na * 4);
    char buf[160];
    snprintf(buf, sizeof buf, "moe %s T=%d vs single CPU ops", what, T);
    s_cmp(buf, got, want, na, S_MOE_TOL);
    if (g_cpu->moe) { /* and against the CPU backend's own moe op */
        g_cpu->moe(g_cpu, a, T, idx, w, K, &m->hm, want2);
        snprintf(buf, sizeof buf, "moe %s T=%d vs CPU moe", what, T);
        s_cmp(buf, got, want2, na, S_MOE_TOL);
    }
    g_emu.ops.moe(&g_emu.ops, a, T, idx, w, K, &m->hm, want2);
    snprintf(buf, sizeof buf, "moe %s T=%d vs bf16 emulation", what, T);
    s_cmp(buf, got, want2, na, S_MOE_EMU_TOL);
    free(a), free(want), free(want2), free(idx), free(w), free(got);
    s_free(da), s_free(dw), s_free(dout), s_free(didx);
}

static void s_test_moe(void) {
    printf("moe\n");
    s_moe_w_t m;
    /* gpt-oss-20b's shape: 32 experts, hidden 2880, 2880 units, top-4; expert 5 never routed */
    s_moe_new(&m, 32, 2880, 2880, 0, true);
    const int Ts[] = {1, 3, 17, 64};
    for (int i = 0; i < 4; i++)
        s_test_moe_case(&m, Ts[i], 4, 5, -1, "20b E=32 k=4 (expert 5 empty)");
    s_test_moe_case(&m, 64, 4, 5, 9, "20b E=32 k=4, expert 9 in every token");
    s_moe_free(&m);
    /* small experts, a TP-like down slice (row stride one block wider, no down bias), one
     * expert with 130 tokens (three MMA tiles), one never routed */
    s_moe_new(&m, 8, 256, 64, 1, false);
    const int Ts2[] = {1, 8, 9, 130};
    for (int i = 0; i < 4; i++)
        s_test_moe_case(&m, Ts2[i], 2, 7, 0, "E=8 k=2 H=256 nu=64 strided down");
    s_moe_free(&m);
}

/* The moe op captured through the ops_t graph hooks (key 17) and replayed on new inputs and new
 * routing written into the same buffers. */
static void s_test_moe_graph(void) {
    printf("moe graph (ops_t hooks)\n");
    s_moe_w_t m;
    s_moe_new(&m, 32, 2880, 2880, 0, true);
    const int T = 17, K = 4, H = m.H, key = T;
    const size_t na = (size_t)T * H;
    float *da = s_poisoned(na * 4), *dw = s_poisoned((size_t)T * K * 4), *dout = s_poisoned(na * 4);
    int32_t *didx = s_poisoned((size_t)T * K * 4);
    CHECK(!g_gpu->graph_launch(g_gpu, key));
    for (int round = 0; round < 4; round++) {
        float *a = s_f32_rand(na, 1.0f), *want = malloc(na * 4), *w = malloc((size_t)T * K * 4);
        int32_t *idx = malloc((size_t)T * K * 4);
        s_route(T, m.E, K, round, round == 2 ? 3 : -1, idx, w);
        g_gpu->upload(g_gpu, da, a, na * 4);
        g_gpu->upload(g_gpu, didx, idx, (size_t)T * K * 4);
        g_gpu->upload(g_gpu, dw, w, (size_t)T * K * 4);
        ops_cuda_memset(g_gpu, dout, 0xff, na * 4);
        if (round == 0) { /* eager (sizes scratch), then capture */
            g_gpu->moe(g_gpu, da, T, didx, dw, K, &m.dm, dout);
            g_gpu->graph_begin(g_gpu, key);
            g_gpu->moe(g_gpu, da, T, didx, dw, K, &m.dm, dout);
            g_gpu->graph_end(g_gpu, key);
            ops_cuda_memset(g_gpu, dout, 0xff, na * 4);
        }
        CHECK(g_gpu->graph_launch(g_gpu, key));
        s_moe_ref(&m, a, T, idx, w, K, want);
        float *got = s_get(dout, na * 4);
        char what[96];
        snprintf(what, sizeof what, "moe graph replay %d T=%d (new routing)", round, T);
        s_cmp(what, got, want, na, S_MOE_TOL);
        g_emu.ops.moe(&g_emu.ops, a, T, idx, w, K, &m.hm, want);
        snprintf(what, sizeof what, "moe graph replay %d T=%d vs bf16 emulation", round, T);
        s_cmp(what, got, want, na, S_MOE_EMU_TOL);
        free(a), free(want), free(w), free(idx), free(got);
    }
    CHECK(!g_gpu->graph_launch(g_gpu, 65) && !g_gpu->graph_launch(g_gpu, 0));
    ops_cuda_graph_reset(g_gpu);
    CHECK(!g_gpu->graph_launch(g_gpu, key));
    s_free(da), s_free(dw), s_free(dout), s_free(didx);
    s_moe_free(&m);
}

/* ---- CUDA graphs ------------------------------------------------------------------------------
 */

/* rmsnorm -> matmul -> residual add, captured once, replayed on new inputs written into the same
 * buffers; must equal the CPU on those inputs. */
static void s_test_graph(void) {
    printf("graphs\n");
    const int T = 3, H = 2880, N = 2880;
    const size_t nx = (size_t)T * H;
    uint16_t *w = s_bf16_rand((size_t)N * H, 0.1f), *g = s_bf16_rand((size_t)H, 1.0f);
    uint16_t *dw = s_dev(w, (size_t)N * H * 2), *dg = s_dev(g, (size_t)H * 2);
    float *dx = s_poisoned(nx * 4), *da = s_poisoned(nx * 4), *dy = s_poisoned(nx * 4);
    ops_bf16_mat_t Wc = {.w = w, .stride = (size_t)H, .rows = N, .cols = H};
    ops_bf16_mat_t Wg = Wc;
    Wg.w = dw;
    const int bucket = ops_cuda_graph_bucket(T);
    CHECK(bucket == 2 && ops_cuda_graph_bucket(1) == 0 && ops_cuda_graph_bucket(8) == 3);
    CHECK(!ops_cuda_graph_launch(g_gpu, bucket));
    for (int round = 0; round < 3; round++) {
        float *x = s_f32_rand(nx, 1.0f), *a = malloc(nx * 4), *y = malloc(nx * 4);
        ops_cuda_upload(g_gpu, dx, x, nx * 4);
        if (round == 0) { /* eager warm-up, then capture */
            g_gpu->rmsnorm(g_gpu, dx, dg, T, H, 1e-5f, da);
            g_gpu->matmul_bf16(g_gpu, da, T, &Wg, NULL, dy);
            ops_cuda_sync(g_gpu);
            ops_cuda_upload(g_gpu, dx, x, nx * 4);
            ops_cuda_graph_begin(g_gpu, bucket);
            g_gpu->rmsnorm(g_gpu, dx, dg, T, H, 1e-5f, da);
            g_gpu->matmul_bf16(g_gpu, da, T, &Wg, NULL, dy);
            g_gpu->add(g_gpu, dx, dy, nx);
            ops_cuda_graph_end(g_gpu, bucket);
        }
        ops_cuda_memset(g_gpu, dy, 0xff, nx * 4);
        CHECK(ops_cuda_graph_launch(g_gpu, bucket));
        g_cpu->rmsnorm(g_cpu, x, g, T, H, 1e-5f, a);
        g_cpu->matmul_bf16(g_cpu, a, T, &Wc, NULL, y);
        g_cpu->add(g_cpu, x, y, nx);
        float *got = s_get(dx, nx * 4);
        char what[64];
        snprintf(what, sizeof what, "graph replay %d (rmsnorm, matmul, add) T=%d", round, T);
        s_cmp(what, got, x, nx, 1e-2);
        free(got), free(x), free(a), free(y);
    }
    ops_cuda_graph_reset(g_gpu);
    CHECK(!ops_cuda_graph_launch(g_gpu, bucket));
    free(w), free(g);
    s_free(dw), s_free(dg), s_free(dx), s_free(da), s_free(dy);
}

int main(void) {
    const int rc = cuda_harness_open("test_cuda_ops", &g_gpu, &g_cpu, &g_emu);
    if (rc) return rc;
    s_test_matmul_bf16();
    s_test_matmul_mxfp4();
    s_test_elementwise();
    s_test_router();
    s_test_attention();
    s_test_sampling();
    s_test_graph();
    s_test_memory();
    s_test_moe();
    s_test_moe_graph();
    ops_cuda_free(&g_gpu);
    ops_cuda_free(&g_gpu); /* safe twice */
    cuda_harness_close(&g_gpu, &g_cpu, &g_emu);
    return tcheck_done("test_cuda_ops");
}
