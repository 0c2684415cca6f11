/* test_moe: the CPU backend's moe, gather_rows and memory ops (ops.h).
 *
 * moe against a naive double-precision loop on random MXFP4 experts (K = 4 of E = 8, ragged
 * token counts, T = 1, 3 and 17, an expert with no tokens, biases on and off, padded strides),
 * and bit for bit against the same layer composed from the backend's own matmul_mxfp4, swiglu
 * and axpy (what the engine computed before the moe op existed). A shard with no expert
 * units gets zeros. Memory: alloc is zero-filled and 64-byte aligned, upload/download/zero
 * copy and clear, gather_rows picks rows. */
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

enum { S_E = 8, S_K = 4, S_H = 64, S_NU = 96, S_TMAX = 17 };

static uint32_t s_rng = 2463534242u;

static uint32_t s_next(void) {
    s_rng ^= s_rng << 13;
    s_rng ^= s_rng >> 17;
    s_rng ^= s_rng << 5;
    return s_rng;
}

/* Uniform in [-1, 1). */
static float s_unif(void) {
    return (float)((double)(s_next() >> 8) / (double)(1u << 24) * 2.0 - 1.0);
}

/* Random experts of rows x cols with padded strides; bias when with_bias. Caller frees
 * *mem and *bias. */
static ops_experts_t s_experts(int rows, int cols, bool with_bias, uint8_t **mem, uint16_t **bias) {
    const size_t bstride = (size_t)cols / 2 + 8, sstride = (size_t)cols / 32 + 3;
    const size_t best = (size_t)rows * bstride + 40, sest = (size_t)rows * sstride + 5;
    const size_t nb = best * S_E, ns = sest * S_E;
    *mem = malloc(nb + ns);
    for (size_t i = 0; i < nb; i++)
        (*mem)[i] = (uint8_t)s_next();
    for (size_t i = 0; i < ns; i++)
        (*mem)[nb + i] = (uint8_t)(122 + s_next() % 6); /* 2^-5 .. 2^0 */
    *bias = NULL;
    if (with_bias) {
        *bias = malloc(sizeof(uint16_t) * (size_t)(rows + 7) * S_E);
        for (int i = 0; i < (rows + 7) * S_E; i++)
            (*bias)[i] = f32_to_bf16(s_unif());
    }
    return (ops_experts_t){.mat = {.blocks = *mem,
                                   .scales = *mem + nb,
                                   .blocks_stride = bstride,
                                   .scales_stride = sstride,
                                   .rows = rows,
                                   .cols = cols},
                           .blocks_estride = best,
                           .scales_estride = sest,
                           .bias = *bias,
                           .bias_estride = (size_t)rows + 7};
}

/* Weight (e, r, c) and bias (e, r) of x, in double. */
static double s_w(const ops_experts_t *x, int e, int r, int c) {
    const ops_mxfp4_mat_t *m = &x->mat;
    return mxfp4_get(m->blocks + (size_t)e * x->blocks_estride + (size_t)r * m->blocks_stride,
                     m->scales + (size_t)e * x->scales_estride + (size_t)r * m->scales_stride,
                     (size_t)c);
}

static double s_b(const ops_experts_t *x, int e, int r) {
    return x->bias ? bf16_to_f32(x->bias[(size_t)e * x->bias_estride + (size_t)r]) : 0.0;
}

/* The naive layer in double: out[t] = sum over t's experts, ascending, of w * y. */
static void s_naive(const float *a, int T, const int32_t *idx, const float *w, const ops_moe_t *m,
                    double *out) {
    const int H = m->gate_up.mat.cols, nu = m->gate_up.mat.rows / 2;
    double h[2 * S_NU], g[S_NU];
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < H; i++)
            out[(size_t)t * H + i] = 0.0;
        for (int e = 0; e < m->n_experts; e++) {
            int j = -1;
            for (int q = 0; q < S_K; q++)
                if (idx[t * S_K + q] == e) j = q;
            if (j < 0) continue;
            for (int r = 0; r < 2 * nu; r++) {
                double s = s_b(&m->gate_up, e, r);
                for (int c = 0; c < H; c++)
                    s += s_w(&m->gate_up, e, r, c) * a[(size_t)t * H + c];
                h[r] = s;
            }
            for (int u = 0; u < nu; u++) {
                double gt = fmin(h[2 * u], m->limit);
                double up = fmax(fmin(h[2 * u + 1], m->limit), -m->limit);
                g[u] = gt / (1.0 + exp(-m->alpha * gt)) * (up + 1.0);
            }
            for (int r = 0; r < H; r++) {
                double s = s_b(&m->down, e, r);
                for (int c = 0; c < nu; c++)
                    s += s_w(&m->down, e, r, c) * g[c];
                out[(size_t)t * H + r] += w[t * S_K + j] * s;
            }
        }
    }
}

static ops_mxfp4_mat_t s_ex(const ops_experts_t *x, int e) {
    ops_mxfp4_mat_t m = x->mat;
    m.blocks += (size_t)e * x->blocks_estride;
    m.scales += (size_t)e * x->scales_estride;
    return m;
}

/* The layer composed from the backend's own ops (the engine's loop before the moe op). */
static void s_composed(const ops_t *o, const float *a, int T, const int32_t *idx, const float *w,
                       const ops_moe_t *m, float *out) {
    const int H = m->gate_up.mat.cols, nu = m->gate_up.mat.rows / 2;
    static float xe[S_TMAX * S_H], he[S_TMAX * 2 * S_NU], ae[S_TMAX * S_NU], ye[S_TMAX * S_H];
    int tk[S_TMAX];
    float wt[S_TMAX];
    memset(out, 0, sizeof(float) * (size_t)T * H);
    for (int e = 0; e < m->n_experts; e++) {
        int n = 0;
        for (int i = 0; i < T * S_K; i++) {
            if (idx[i] != e) continue;
            tk[n] = i / S_K;
            wt[n++] = w[i];
        }
        if (!n) continue;
        for (int i = 0; i < n; i++)
            memcpy(xe + (size_t)i * H, a + (size_t)tk[i] * H, sizeof(float) * H);
        ops_mxfp4_mat_t gu = s_ex(&m->gate_up, e), dn = s_ex(&m->down, e);
        const uint16_t *gb = m->gate_up.bias ? m->gate_up.bias + e * m->gate_up.bias_estride : NULL;
        const uint16_t *db = m->down.bias ? m->down.bias + e * m->down.bias_estride : NULL;
        o->matmul_mxfp4(o, xe, n, &gu, gb, he);
        o->swiglu(o, he, n, nu, m->alpha, m->limit, ae);
        o->matmul_mxfp4(o, ae, n, &dn, db, ye);
        for (int i = 0; i < n; i++)
            o->axpy(o, out + (size_t)tk[i] * H, wt[i], ye + (size_t)i * H, (size_t)H);
    }
}

/* Routes T tokens: K distinct experts each (never `skip`), in random order, softmax-like
 * positive weights. */
static void s_route(int T, int skip, int32_t *idx, float *w) {
    for (int t = 0; t < T; t++) {
        float sum = 0.0f;
        for (int j = 0; j < S_K; j++) {
            int e;
            bool dup;
            do {
                e = (int)(s_next() % S_E);
                dup = e == skip;
                for (int q = 0; q < j; q++)
                    dup |= idx[t * S_K + q] == e;
            } while (dup);
            idx[t * S_K + j] = e;
            sum += w[t * S_K + j] = 0.1f + (float)(s_next() % 1000) / 1000.0f;
        }
        for (int j = 0; j < S_K; j++)
            w[t * S_K + j] /= sum;
    }
}

static void s_test_moe(const ops_t *o, bool bias) {
    uint8_t *gm, *dm;
    uint16_t *gbias, *dbias;
    ops_moe_t m = {.gate_up = s_experts(2 * S_NU, S_H, bias, &gm, &gbias),
                   .down = s_experts(S_H, S_NU, bias, &dm, &dbias),
                   .n_experts = S_E,
                   .alpha = 1.702f,
                   .limit = 7.0f};
    const int Ts[] = {1, 3, 17};
    for (size_t ti = 0; ti < sizeof Ts / sizeof *Ts; ti++) {
        const int T = Ts[ti];
        float *a = o->alloc(o, sizeof(float) * T * S_H),
              *out = o->alloc(o, sizeof(float) * T * S_H);
        float *w = o->alloc(o, sizeof(float) * T * S_K);
        int32_t *idx = o->alloc(o, sizeof(int32_t) * T * S_K);
        float *ref = malloc(sizeof(float) * T * S_H);
        double *nv = malloc(sizeof(double) * T * S_H);
        for (int i = 0; i < T * S_H; i++)
            a[i] = 2.0f * s_unif();
        s_route(T, T == 17 ? 5 : -1, idx, w);
        int count[S_E] = {0};
        for (int i = 0; i < T * S_K; i++)
            count[idx[i]]++;
        if (T == 17) CHECK(count[5] == 0 && count[0] != count[1]); /* empty and ragged */
        for (int i = 0; i < T * S_H; i++)
            out[i] = NAN; /* the op must write every element */
        o->moe(o, a, T, idx, w, S_K, &m, out);
        s_composed(o, a, T, idx, w, &m, ref);
        s_naive(a, T, idx, w, &m, nv);
        double scale = 1.0, worst = 0.0;
        for (int i = 0; i < T * S_H; i++)
            scale = fmax(scale, fabs(nv[i]));
        int differ = 0;
        for (int i = 0; i < T * S_H; i++) {
            double d = fabs(out[i] - nv[i]);
            if (!(d <= worst)) worst = d;
            differ += memcmp(&out[i], &ref[i], sizeof(float)) != 0;
        }
        CHECK_MSG(worst <= 1e-5 * scale, "moe T=%d bias=%d vs double: max diff %.3g (scale %.3g)",
                  T, bias, worst, scale);
        CHECK_MSG(differ == 0, "moe T=%d bias=%d: %d values differ from the composed ops", T, bias,
                  differ);
        /* batch invariance: each token alone gives the same bits */
        int alone = 0;
        for (int t = 0; t < T; t++) {
            float one[S_H];
            o->moe(o, a + (size_t)t * S_H, 1, idx + t * S_K, w + t * S_K, S_K, &m, one);
            alone += memcmp(one, out + (size_t)t * S_H, sizeof one) != 0;
        }
        CHECK_MSG(alone == 0, "moe T=%d: %d tokens differ when alone", T, alone);
        o->free_mem(o, a);
        o->free_mem(o, out);
        o->free_mem(o, w);
        o->free_mem(o, idx);
        free(ref);
        free(nv);
    }
    /* a shard with no expert units: zeros */
    ops_moe_t none = m;
    none.gate_up.mat.rows = 0;
    none.down.mat.cols = 0;
    float a[3 * S_H], out[3 * S_H];
    int32_t idx[3 * S_K];
    float w[3 * S_K];
    for (int i = 0; i < 3 * S_H; i++) {
        a[i] = s_unif();
        out[i] = NAN;
    }
    s_route(3, -1, idx, w);
    o->moe(o, a, 3, idx, w, S_K, &none, out);
    int nz = 0;
    for (int i = 0; i < 3 * S_H; i++)
        nz += out[i] != 0.0f;
    CHECK(nz == 0);
    free(gm);
    free(dm);
    free(gbias);
    free(dbias);
}

static void s_test_memory(const ops_t *o) {
    const size_t sizes[] = {1, 7, 64, 1000, 1 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        unsigned char *p = o->alloc(o, sizes[i]);
        CHECK(p != NULL);
        if (!p) continue;
        CHECK(((uintptr_t)p & 63) == 0);
        size_t nz = 0;
        for (size_t j = 0; j < sizes[i]; j++)
            nz += p[j] != 0;
        CHECK(nz == 0);
        unsigned char *h = malloc(sizes[i]), *back = malloc(sizes[i]);
        for (size_t j = 0; j < sizes[i]; j++)
            h[j] = (unsigned char)(j * 13 + 1);
        o->upload(o, p, h, sizes[i]);
        o->download(o, back, p, sizes[i]);
        CHECK(memcmp(h, back, sizes[i]) == 0);
        o->zero(o, p, sizes[i]);
        o->download(o, back, p, sizes[i]);
        nz = 0;
        for (size_t j = 0; j < sizes[i]; j++)
            nz += back[j] != 0;
        CHECK(nz == 0);
        free(h);
        free(back);
        o->free_mem(o, p);
    }
    o->free_mem(o, NULL);
    /* gather_rows */
    float src[5 * 3], dst[4 * 3];
    for (int i = 0; i < 15; i++)
        src[i] = (float)i;
    const int32_t rows[4] = {4, 0, 4, 2};
    o->gather_rows(o, src, rows, 4, 3, dst);
    int bad = 0;
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 3; c++)
            bad += dst[r * 3 + c] != (float)(rows[r] * 3 + c);
    CHECK(bad == 0);
    CHECK(o->graph_begin == NULL && o->graph_end == NULL && o->graph_launch == NULL);
}

int main(void) {
    const char *isas[] = {"generic", "avx2", "avx512"};
    for (size_t i = 0; i < sizeof isas / sizeof *isas; i++) {
        ops_t *o = NULL;
        gerr_t err = {{0}};
        if (ops_cpu_new(2, isas[i], &o, &err)) continue; /* not on this CPU */
        s_test_memory(o);
        s_test_moe(o, true);
        s_test_moe(o, false);
        ops_cpu_free(&o);
    }
    return tcheck_done("test_moe");
}
