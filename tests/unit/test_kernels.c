/* test_kernels: every CPU op, on every instruction set this machine has, against a
 * naive double-precision loop on random shapes (batch > 1, ragged lengths, row
 * strides, tails that are not a multiple of the vector width). MXFP4 matmul is
 * checked against common/mxfp4.c's scalar mxfp4_decode_row + a naive dot. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "cpu/ops_cpu.h"
#include "mxfp4.h"
#include "ops.h"
#include "tcheck.h"

static uint64_t s_rng = 0x1234567887654321ull;

static uint32_t s_next(void) {
    s_rng ^= s_rng << 13;
    s_rng ^= s_rng >> 7;
    s_rng ^= s_rng << 17;
    return (uint32_t)(s_rng >> 11);
}

static float s_unif(void) { /* [-1, 1) */
    return (float)((s_next() & 0xffffff) / 8388608.0 - 1.0);
}

static uint16_t *s_bf16_rand(size_t n, float scale) {
    uint16_t *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = f32_to_bf16(s_unif() * scale);
    return p;
}

static float *s_f32_rand(size_t n, float scale) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = s_unif() * scale;
    return p;
}

/* |got - want| <= tol * (1 + mag), counting failures once per call. */
static int s_close(double got, double want, double mag, double tol) {
    return fabs(got - want) <= tol * (1.0 + mag);
}

static void s_test_matmul_bf16(const ops_t *o) {
    const int Ts[] = {1, 2, 3, 4, 5,
                      6, 7, 8, 11}; /* 3: three-token loop; 6, 7: pairs after the tiles */
    /* 1104: past the 512-column reduction chunk of the AVX2 4-token tile, not a multiple of it */
    const int cols_list[] = {64, 72, 100, 2880 / 8, 1104};
    for (size_t ti = 0; ti < sizeof Ts / sizeof *Ts; ti++) {
        for (size_t ci = 0; ci < sizeof cols_list / sizeof *cols_list; ci++) {
            int T = Ts[ti], cols = cols_list[ci], rows = 37 + (int)ci * 50;
            size_t stride = (size_t)cols + 5;
            uint16_t *w = s_bf16_rand((size_t)rows * stride, 0.5f);
            uint16_t *b = s_bf16_rand((size_t)rows, 1.0f);
            float *x = s_f32_rand((size_t)T * cols, 2.0f);
            float *y = malloc(sizeof(float) * (size_t)T * rows);
            ops_bf16_mat_t W = {.w = w, .stride = stride, .rows = rows, .cols = cols};
            o->matmul_bf16(o, x, T, &W, ti % 2 ? b : NULL, y);
            int bad = 0;
            double worst = 0;
            for (int t = 0; t < T; t++)
                for (int r = 0; r < rows; r++) {
                    double acc = ti % 2 ? bf16_to_f32(b[r]) : 0.0, mag = 0;
                    for (int c = 0; c < cols; c++) {
                        double p = (double)bf16_to_f32(w[r * stride + c]) * x[t * cols + c];
                        acc += p;
                        mag += fabs(p);
                    }
                    double d = fabs(y[t * rows + r] - acc) / (1 + mag);
                    if (d > worst) worst = d;
                    bad += !s_close(y[t * rows + r], acc, mag, 1e-6);
                }
            CHECK_MSG(bad == 0, "%s matmul_bf16 T=%d rows=%d cols=%d: %d bad, worst rel %.3g",
                      o->name, T, rows, cols, bad, worst);
            free(w);
            free(b);
            free(x);
            free(y);
        }
    }
}

static void s_test_matmul_mxfp4(const ops_t *o) {
    const int Ts[] = {1, 3, 4, 6, 8, 9, 13, 17};
    const int cols_list[] = {32, 64, 96, 2880};
    for (size_t ti = 0; ti < sizeof Ts / sizeof *Ts; ti++) {
        for (size_t ci = 0; ci < sizeof cols_list / sizeof *cols_list; ci++) {
            int T = Ts[ti], cols = cols_list[ci], rows = 19 + (int)ti * 7;
            size_t bstride = (size_t)cols / 2 + 16, sstride = (size_t)cols / 32 + 3;
            uint8_t *blk = malloc((size_t)rows * bstride), *sc = malloc((size_t)rows * sstride);
            for (size_t i = 0; i < (size_t)rows * bstride; i++)
                blk[i] = (uint8_t)s_next();
            for (size_t i = 0; i < (size_t)rows * sstride; i++)
                sc[i] = (uint8_t)(118 + s_next() % 14);
            uint16_t *b = s_bf16_rand((size_t)rows, 1.0f);
            float *x = s_f32_rand((size_t)T * cols, 2.0f);
            float *y = malloc(sizeof(float) * (size_t)T * rows);
            float *row = malloc(sizeof(float) * (size_t)cols);
            ops_mxfp4_mat_t W = {.blocks = blk,
                                 .scales = sc,
                                 .blocks_stride = bstride,
                                 .scales_stride = sstride,
                                 .rows = rows,
                                 .cols = cols};
            o->matmul_mxfp4(o, x, T, &W, b, y);
            int bad = 0;
            double worst = 0;
            for (int r = 0; r < rows; r++) {
                mxfp4_decode_row(blk + r * bstride, sc + r * sstride, (size_t)cols, row);
                for (int t = 0; t < T; t++) {
                    double acc = bf16_to_f32(b[r]), mag = 0;
                    for (int c = 0; c < cols; c++) {
                        double p = (double)row[c] * x[t * cols + c];
                        acc += p;
                        mag += fabs(p);
                    }
                    double d = fabs(y[t * rows + r] - acc) / (1 + mag);
                    if (d > worst) worst = d;
                    bad += !s_close(y[t * rows + r], acc, mag, 1e-6);
                }
            }
            CHECK_MSG(bad == 0, "%s matmul_mxfp4 T=%d rows=%d cols=%d: %d bad, worst rel %.3g",
                      o->name, T, rows, cols, bad, worst);
            free(blk);
            free(sc);
            free(b);
            free(x);
            free(y);
            free(row);
        }
    }
}

/* MXFP4 with scales across the E8M0 range (tiny, subnormal and huge blocks in one row,
 * scale bytes past 232, where kern_avx2's magic-number decode gives way to a multiply), 93
 * blocks (past and not a multiple of the 8-block reduction chunk), rows past the 16-row block,
 * T = 1, the 2/3/5-token tiles and a 16-token batch: exact up to fp32 rounding. */
static void s_test_matmul_mxfp4_scales(const ops_t *o) {
    const int cols = 93 * 32, rows = 41, Ts[] = {1, 2, 3, 5, 16};
    const size_t bstride = (size_t)cols / 2, sstride = (size_t)cols / 32;
    uint8_t *blk = malloc((size_t)rows * bstride), *sc = malloc((size_t)rows * sstride);
    for (size_t i = 0; i < (size_t)rows * bstride; i++)
        blk[i] = (uint8_t)s_next();
    for (size_t i = 0; i < (size_t)rows * sstride; i++)
        sc[i] = (uint8_t)(s_next() % 241); /* 2^-127 .. 2^113 */
    float *row = malloc(sizeof(float) * (size_t)cols);
    for (size_t ti = 0; ti < sizeof Ts / sizeof *Ts; ti++) {
        const int T = Ts[ti];
        float *x = s_f32_rand((size_t)T * cols, 2.0f);
        float *y = malloc(sizeof(float) * (size_t)T * rows);
        ops_mxfp4_mat_t W = {.blocks = blk,
                             .scales = sc,
                             .blocks_stride = bstride,
                             .scales_stride = sstride,
                             .rows = rows,
                             .cols = cols};
        o->matmul_mxfp4(o, x, T, &W, NULL, y);
        int bad = 0;
        for (int r = 0; r < rows; r++) {
            mxfp4_decode_row(blk + r * bstride, sc + r * sstride, (size_t)cols, row);
            for (int t = 0; t < T; t++) {
                double acc = 0, mag = 0;
                for (int c = 0; c < cols; c++) {
                    double p = (double)row[c] * x[t * cols + c];
                    acc += p;
                    mag += fabs(p);
                }
                bad += !(fabs(y[t * rows + r] - acc) <= 1e-6 * mag);
            }
        }
        CHECK_MSG(bad == 0, "%s matmul_mxfp4 wide scales T=%d: %d bad", o->name, T, bad);
        free(x);
        free(y);
    }
    free(row);
    free(blk);
    free(sc);
}

static void s_test_small_ops(const ops_t *o) {
    /* embed + rmsnorm */
    const int V = 50, n = 72, T = 5;
    uint16_t *tab = s_bf16_rand((size_t)V * (n + 8), 3.0f), *wn = s_bf16_rand((size_t)n, 2.0f);
    int32_t ids[5] = {0, 49, 7, 7, 23};
    float *x = malloc(sizeof(float) * T * n), *y = malloc(sizeof(float) * T * n);
    o->embed(o, tab, n + 8, n, ids, T, x);
    int bad = 0;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < n; i++)
            bad += x[t * n + i] != bf16_to_f32(tab[ids[t] * (n + 8) + i]);
    CHECK_MSG(bad == 0, "%s embed: %d wrong", o->name, bad);
    o->rmsnorm(o, x, wn, T, n, 1e-5f, y);
    bad = 0;
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int i = 0; i < n; i++)
            ss += (double)x[t * n + i] * x[t * n + i];
        double inv = 1.0 / sqrt(ss / n + 1e-5);
        for (int i = 0; i < n; i++)
            bad += !s_close(y[t * n + i], x[t * n + i] * inv * bf16_to_f32(wn[i]), 0, 1e-5);
    }
    CHECK_MSG(bad == 0, "%s rmsnorm: %d wrong", o->name, bad);
    /* fused add + rmsnorm: bit for bit add then rmsnorm (the engine relies on it) */
    {
        float *r = s_f32_rand((size_t)T * n, 4.0f), *x1 = malloc(sizeof(float) * T * n);
        float *x2 = malloc(sizeof(float) * T * n), *y1 = malloc(sizeof(float) * T * n);
        float *y2 = malloc(sizeof(float) * T * n);
        memcpy(x1, x, sizeof(float) * T * n);
        memcpy(x2, x, sizeof(float) * T * n);
        o->add(o, x1, r, (size_t)T * n);
        o->rmsnorm(o, x1, wn, T, n, 1e-5f, y1);
        o->add_rmsnorm(o, x2, r, wn, T, n, 1e-5f, y2);
        CHECK_MSG(memcmp(x1, x2, sizeof(float) * T * n) == 0 &&
                      memcmp(y1, y2, sizeof(float) * T * n) == 0,
                  "%s add_rmsnorm differs from add then rmsnorm", o->name);
        free(r);
        free(x1);
        free(x2);
        free(y1);
        free(y2);
    }

    /* swiglu, including values past the clamp */
    const int I = 40;
    float *h = s_f32_rand((size_t)T * 2 * I, 10.0f), *a = malloc(sizeof(float) * T * I);
    o->swiglu(o, h, T, I, 1.702f, 7.0f, a);
    bad = 0;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < I; i++) {
            double g = h[t * 2 * I + 2 * i], u = h[t * 2 * I + 2 * i + 1];
            g = g > 7 ? 7 : g;
            u = u > 7 ? 7 : u < -7 ? -7 : u;
            double want = g / (1 + exp(-1.702 * g)) * (u + 1);
            bad += !s_close(a[t * I + i], want, fabs(want), 1e-5);
        }
    CHECK_MSG(bad == 0, "%s swiglu: %d wrong", o->name, bad);

    /* router: top-k descending, softmax over the k; a tie picks the lower index */
    const int E = 9, K = 3;
    float z[2 * 9] = {0.5f, 2.0f, -1.0f, 2.0f, 0.1f, 3.0f, -2.0f, 0.0f, 1.0f,
                      1.0f, 1.0f, 1.0f,  1.0f, 1.0f, 1.0f, 1.0f,  1.0f, 1.0f};
    int32_t idx[6];
    float wt[6];
    o->router_topk(o, z, 2, E, K, idx, wt);
    CHECK(idx[0] == 5 && idx[1] == 1 && idx[2] == 3);
    double den = exp(0.0) + exp(-1.0) + exp(-1.0);
    CHECK_NEAR(wt[0], 1.0 / den, 1e-6);
    CHECK_NEAR(wt[1], exp(-1.0) / den, 1e-6);
    CHECK(idx[3] == 0 && idx[4] == 1 && idx[5] == 2);
    CHECK_NEAR(wt[3] + wt[4] + wt[5], 1.0, 1e-6);

    /* add, axpy */
    float p[11], q[11];
    for (int i = 0; i < 11; i++)
        p[i] = (float)i, q[i] = 2.0f * i;
    o->axpy(o, p, 0.5f, q, 11);
    o->add(o, p, q, 11);
    bad = 0;
    for (int i = 0; i < 11; i++)
        bad += p[i] != 4.0f * i;
    CHECK_MSG(bad == 0, "%s add/axpy", o->name);

    /* rope against a double rotation with independently computed angles */
    ops_rope_t rp;
    CHECK(ops_rope_init(&rp, 16, 150000.0, 32.0, 32.0, 1.0, 4096, false) == 0);
    int32_t pos[5] = {0, 1, 7, 100, 4097};
    float cs[5 * 16];
    ops_rope_table(&rp, pos, T, cs);
    const int nh = 3, D = 16;
    float *r = s_f32_rand((size_t)T * nh * D, 1.0f), *r0 = malloc(sizeof(float) * T * nh * D);
    memcpy(r0, r, sizeof(float) * T * nh * D);
    o->rope(o, r, T, nh, D, cs);
    bad = 0;
    for (int t = 0; t < T; t++)
        for (int hh = 0; hh < nh; hh++)
            for (int i = 0; i < D / 2; i++) {
                double ang = pos[t] * rp.inv_freq[i], c = rp.concentration;
                const float *v = r0 + (t * nh + hh) * D;
                double lo = v[i] * c * cos(ang) - v[i + 8] * c * sin(ang);
                double hi = v[i + 8] * c * cos(ang) + v[i] * c * sin(ang);
                bad += !s_close(r[(t * nh + hh) * D + i], lo, 0, 1e-5);
                bad += !s_close(r[(t * nh + hh) * D + i + 8], hi, 0, 1e-5);
            }
    CHECK_MSG(bad == 0, "%s rope: %d wrong", o->name, bad);
    free(tab), free(wn), free(x), free(y), free(h), free(a), free(r), free(r0);
}

/* Attention over a paged cache with shuffled physical blocks, ragged per-token
 * positions (several "sequences"), GQA, sinks, with and without a window. */
static void s_test_attention(const ops_t *o, ops_kv_dtype_t dt) {
    const int D = 16, nkv = 2, nh = 6, bs = 4, nblocks = 40, T = 6;
    const int positions[6] = {0, 3, 4, 9, 30, 17}; /* tokens of different sequences */
    size_t esz = dt == OPS_KV_F32 ? 4 : 2, row = (size_t)nkv * D;
    void *kmem = calloc((size_t)nblocks * bs * row, esz),
         *vmem = calloc((size_t)nblocks * bs * row, esz);
    ops_kv_t kv = {.k = kmem,
                   .v = vmem,
                   .dtype = dt,
                   .n_blocks = nblocks,
                   .block_size = bs,
                   .n_kv_heads = nkv,
                   .head_dim = D};
    /* each token t has its own sequence; block table: a permutation slice */
    int32_t tables[6][8];
    int perm[40];
    for (int i = 0; i < 40; i++)
        perm[i] = i;
    for (int i = 39; i > 0; i--) {
        int j = (int)(s_next() % (unsigned)(i + 1)), tmp = perm[i];
        perm[i] = perm[j], perm[j] = tmp;
    }
    for (int t = 0, k = 0; t < T; t++)
        for (int b = 0; b < 8; b++)
            tables[t][b] = b <= positions[t] / bs ? perm[k++ % 40] : -1;
    /* distinct blocks per sequence: positions need at most 8 blocks; 6 seqs * <=8 <= 40 */
    /* write every key 0..pos of each sequence through kv_write (one token at a time) */
    float *keys[6], *vals[6];
    for (int t = 0; t < T; t++) {
        int n = positions[t] + 1;
        keys[t] = s_f32_rand((size_t)n * row, 1.5f);
        vals[t] = s_f32_rand((size_t)n * row, 1.0f);
        for (int p = 0; p < n; p++) {
            ops_tok_t tk = {.pos = p, .blocks = tables[t]};
            o->kv_write(o, &kv, keys[t] + p * row, vals[t] + p * row, &tk, 1);
        }
    }
    ops_tok_t toks[6];
    for (int t = 0; t < T; t++)
        toks[t] = (ops_tok_t){.pos = positions[t], .blocks = tables[t]};
    float *q = s_f32_rand((size_t)T * nh * D, 1.5f), *out = malloc(sizeof(float) * T * nh * D);
    uint16_t *sinks = s_bf16_rand((size_t)nh, 2.0f);
    const int windows[2] = {0, 5};
    for (int wi = 0; wi < 2; wi++) {
        o->attention(o, q, T, nh, &kv, toks, windows[wi], sinks, 0.25f, out);
        int bad = 0;
        for (int t = 0; t < T; t++)
            for (int h = 0; h < nh; h++) {
                int j = h / (nh / nkv), lo = 0, p = positions[t];
                if (windows[wi] && p - windows[wi] + 1 > 0) lo = p - windows[wi] + 1;
                double s[64], m = bf16_to_f32(sinks[h]), den = 0, acc[16] = {0};
                for (int k = lo; k <= p; k++) {
                    double d = 0;
                    for (int i = 0; i < D; i++) {
                        double kk = keys[t][k * row + j * D + i];
                        if (dt == OPS_KV_BF16) kk = bf16_to_f32(f32_to_bf16((float)kk));
                        d += (double)q[(t * nh + h) * D + i] * kk;
                    }
                    s[k] = d * 0.25;
                    if (s[k] > m) m = s[k];
                }
                den = exp(bf16_to_f32(sinks[h]) - m);
                for (int k = lo; k <= p; k++) {
                    double e = exp(s[k] - m);
                    den += e;
                    for (int i = 0; i < D; i++) {
                        double vv = vals[t][k * row + j * D + i];
                        if (dt == OPS_KV_BF16) vv = bf16_to_f32(f32_to_bf16((float)vv));
                        acc[i] += e * vv;
                    }
                }
                for (int i = 0; i < D; i++)
                    bad += !s_close(out[(t * nh + h) * D + i], acc[i] / den, 0, 2e-6);
            }
        CHECK_MSG(bad == 0, "%s attention (kv %s, window %d): %d wrong", o->name,
                  dt == OPS_KV_F32 ? "f32" : "bf16", windows[wi], bad);
    }
    for (int t = 0; t < T; t++)
        free(keys[t]), free(vals[t]);
    free(kmem), free(vmem), free(q), free(out), free(sinks);
}

/* Long context: more keys than one online-softmax chunk, scores with a large range. */
static void s_test_attention_long(const ops_t *o) {
    const int D = 64, bs = 16, n = 700, nb = (n + bs - 1) / bs;
    float *kmem = calloc((size_t)nb * bs * D, 4), *vmem = calloc((size_t)nb * bs * D, 4);
    ops_kv_t kv = {.k = kmem,
                   .v = vmem,
                   .dtype = OPS_KV_F32,
                   .n_blocks = nb,
                   .block_size = bs,
                   .n_kv_heads = 1,
                   .head_dim = D};
    int32_t table[64];
    for (int b = 0; b < nb; b++)
        table[b] = nb - 1 - b;
    float *keys = s_f32_rand((size_t)n * D, 3.0f), *vals = s_f32_rand((size_t)n * D, 1.0f);
    ops_tok_t tk[1] = {{.pos = 0, .blocks = table}};
    for (int p = 0; p < n; p++) {
        tk[0].pos = p;
        o->kv_write(o, &kv, keys + p * D, vals + p * D, tk, 1);
    }
    tk[0].pos = n - 1;
    float *q = s_f32_rand(D, 3.0f), out[64];
    uint16_t sink = f32_to_bf16(0.5f);
    o->attention(o, q, 1, 1, &kv, tk, 0, &sink, 0.125f, out);
    double m = 0.5, s[700], den = 0, acc[64] = {0};
    for (int k = 0; k < n; k++) {
        double d = 0;
        for (int i = 0; i < D; i++)
            d += (double)q[i] * keys[k * D + i];
        s[k] = d * 0.125;
        if (s[k] > m) m = s[k];
    }
    den = exp(0.5 - m);
    for (int k = 0; k < n; k++) {
        double e = exp(s[k] - m);
        den += e;
        for (int i = 0; i < D; i++)
            acc[i] += e * vals[k * D + i];
    }
    int bad = 0;
    for (int i = 0; i < D; i++)
        bad += !s_close(out[i], acc[i] / den, 0, 2e-6);
    CHECK_MSG(bad == 0, "%s attention over %d keys: %d wrong", o->name, n, bad);
    free(kmem), free(vmem), free(keys), free(vals), free(q);
}

int main(void) {
    const char *isas[] = {"generic", "avx2", "avx512"};
    int tested = 0;
    for (size_t i = 0; i < 3; i++) {
        ops_t *o = NULL;
        gerr_t err = {{0}};
        if (ops_cpu_new(2, isas[i], &o, &err) != 0) {
            printf("test_kernels: skipping %s (%s)\n", isas[i], err.msg);
            continue;
        }
        tested++;
        s_test_matmul_bf16(o);
        s_test_matmul_mxfp4(o);
        s_test_matmul_mxfp4_scales(o);
        s_test_small_ops(o);
        s_test_attention(o, OPS_KV_F32);
        s_test_attention(o, OPS_KV_BF16);
        s_test_attention_long(o);
        ops_cpu_free(&o);
        CHECK(o == NULL);
    }
    CHECK(tested >= 1);
    ops_t *o = NULL;
    gerr_t err = {{0}};
    CHECK(ops_cpu_new(1, "no-such-isa", &o, &err) == GERR_INVALID && o == NULL);
    CHECK(strstr(err.msg, "no-such-isa") != NULL);
    return tcheck_done("test_kernels");
}
