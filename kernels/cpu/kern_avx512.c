/* kern_avx512: AVX-512 (F/BW/VL/DQ) inner loops of the CPU backend, compiled with
 * AVX-512 flags and chosen at run time only on CPUs that have them. Same scheme as
 * kern_avx2.c with 16-float vectors: bf16 widened by a shift, MXFP4 blocks decoded
 * in registers (pshufb over the doubled E2M1 integers, int -> float, times the
 * exact power-of-two scale). bf16: token tiles of 4 sharing each weight vector; MXFP4: groups
 * of up to 8 tokens sharing each decoded block. Run and checked (exactness, batch invariance) on
 * a 16-core Xeon on 26 Nov 2026; the machine CI runs on has no AVX-512. */
#include <immintrin.h>
#include <math.h>

#include "bf16.h"
#include "cpu_kern.h"
#include "mxfp4.h"

static inline __m512 s_load_bf16(const uint16_t *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Summation order of every bf16 path (batch invariance: a token's result must not depend on T,
 * on its tile or on its neighbours in the step): per (row, token) one 16-lane accumulator takes
 * the columns 16 at a time in ascending order, then _mm512_reduce_add_ps, then the n % 16 tail
 * columns one by one (fmaf), then the bias. */
static inline float s_bf_finish(__m512 acc, const uint16_t *w, const float *x, int n16, int n,
                                const uint16_t *bias, int r) {
    float s = _mm512_reduce_add_ps(acc);
    for (int c = n16; c < n; c++)
        s = fmaf(bf16_to_f32(w[c]), x[c], s);
    return s + (bias ? bf16_to_f32(bias[r]) : 0.0f);
}

static void s_bf16_rows(const float *x, int T, const ops_bf16_mat_t *W, const uint16_t *bias,
                        int r0, int r1, float *y) {
    const int n = W->cols, n16 = n & ~15;
    const size_t ldy = (size_t)W->rows;
    int t = 0;
    for (; t + 4 <= T; t += 4) {
        const float *x0 = x + (size_t)t * n, *x1 = x0 + n, *x2 = x1 + n, *x3 = x2 + n;
        for (int r = r0; r < r1; r++) {
            const uint16_t *w = W->w + (size_t)r * W->stride;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int c = 0; c < n16; c += 16) {
                __m512 wv = s_load_bf16(w + c);
                a0 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x0 + c), a0);
                a1 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x1 + c), a1);
                a2 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x2 + c), a2);
                a3 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x3 + c), a3);
            }
            y[(size_t)t * ldy + r] = s_bf_finish(a0, w, x0, n16, n, bias, r);
            y[(size_t)(t + 1) * ldy + r] = s_bf_finish(a1, w, x1, n16, n, bias, r);
            y[(size_t)(t + 2) * ldy + r] = s_bf_finish(a2, w, x2, n16, n, bias, r);
            y[(size_t)(t + 3) * ldy + r] = s_bf_finish(a3, w, x3, n16, n, bias, r);
        }
    }
    /* the last T % 4 tokens (T = 1: decode): four rows at a time, one accumulator each */
    for (; t < T; t++) {
        const float *xt = x + (size_t)t * n;
        float *yt = y + (size_t)t * ldy;
        int r = r0;
        for (; r + 4 <= r1; r += 4) {
            const uint16_t *w0 = W->w + (size_t)r * W->stride, *w1 = w0 + W->stride;
            const uint16_t *w2 = w1 + W->stride, *w3 = w2 + W->stride;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int c = 0; c < n16; c += 16) {
                __m512 xv = _mm512_loadu_ps(xt + c);
                a0 = _mm512_fmadd_ps(s_load_bf16(w0 + c), xv, a0);
                a1 = _mm512_fmadd_ps(s_load_bf16(w1 + c), xv, a1);
                a2 = _mm512_fmadd_ps(s_load_bf16(w2 + c), xv, a2);
                a3 = _mm512_fmadd_ps(s_load_bf16(w3 + c), xv, a3);
            }
            yt[r] = s_bf_finish(a0, w0, xt, n16, n, bias, r);
            yt[r + 1] = s_bf_finish(a1, w1, xt, n16, n, bias, r + 1);
            yt[r + 2] = s_bf_finish(a2, w2, xt, n16, n, bias, r + 2);
            yt[r + 3] = s_bf_finish(a3, w3, xt, n16, n, bias, r + 3);
        }
        for (; r < r1; r++) {
            const uint16_t *w = W->w + (size_t)r * W->stride;
            __m512 a0 = _mm512_setzero_ps();
            for (int c = 0; c < n16; c += 16)
                a0 = _mm512_fmadd_ps(s_load_bf16(w + c), _mm512_loadu_ps(xt + c), a0);
            yt[r] = s_bf_finish(a0, w, xt, n16, n, bias, r);
        }
    }
}

/* Decodes one 32-value block into w[2] (values in order, scale applied). */
static inline void s_decode_block(const uint8_t *blk, float scale, __m128i lut, __m512 w[2]) {
    const __m128i m0f = _mm_set1_epi8(0x0f);
    __m128i bytes = _mm_loadu_si128((const __m128i *)blk);
    __m128i lo = _mm_and_si128(bytes, m0f);
    __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), m0f);
    __m128i vlo = _mm_shuffle_epi8(lut, lo), vhi = _mm_shuffle_epi8(lut, hi);
    __m512 s = _mm512_set1_ps(scale);
    w[0] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_unpacklo_epi8(vlo, vhi))), s);
    w[1] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_unpackhi_epi8(vlo, vhi))), s);
}

/* One row for NT tokens (1..8; a compile-time constant after inlining) at x0 + i * ldx: each
 * block is decoded once for all of them. Every token count sums in the same order (batch
 * invariance): per (row, token) the first and second 16 values of each block (weights scaled
 * first) go to two accumulators in block order, added and reduced at the end. */
static inline __attribute__((always_inline)) void s_mx_row(const uint8_t *blk, const uint8_t *sc,
                                                           int nb, const float *x0, size_t ldx,
                                                           const int NT, __m128i lut, float *out) {
    __m512 a[8], b[8];
#pragma GCC unroll 8
    for (int i = 0; i < NT; i++)
        a[i] = b[i] = _mm512_setzero_ps();
    for (int g = 0; g < nb; g++) {
        __m512 w[2];
        s_decode_block(blk + g * MXFP4_BLOCK_BYTES, cpu_mxfp4_half_scale[sc[g]], lut, w);
        const int c = g * MXFP4_BLOCK;
#pragma GCC unroll 8
        for (int i = 0; i < NT; i++) {
            a[i] = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(x0 + i * ldx + c), a[i]);
            b[i] = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(x0 + i * ldx + c + 16), b[i]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < NT; i++)
        out[i] = _mm512_reduce_add_ps(_mm512_add_ps(a[i], b[i]));
}

/* Rows [r0, r1) for the NT tokens starting at token t. */
static inline __attribute__((always_inline)) void s_mx_rows_nt(const float *x, int t, const int NT,
                                                               const ops_mxfp4_mat_t *W,
                                                               const uint16_t *bias, int r0, int r1,
                                                               float *y, __m128i lut) {
    const int n = W->cols, nb = n / MXFP4_BLOCK;
    const size_t ldy = (size_t)W->rows;
    for (int r = r0; r < r1; r++) {
        float o[8];
        s_mx_row(W->blocks + (size_t)r * W->blocks_stride, W->scales + (size_t)r * W->scales_stride,
                 nb, x + (size_t)t * n, (size_t)n, NT, lut, o);
        const float b = bias ? bf16_to_f32(bias[r]) : 0.0f;
        for (int i = 0; i < NT; i++)
            y[(size_t)(t + i) * ldy + r] = o[i] + b;
    }
}

/* Tokens in groups of 8 (each decoded block feeds the group), then the 1-7 left. */
static void s_mxfp4_rows(const float *x, int T, const ops_mxfp4_mat_t *W, const uint16_t *bias,
                         int r0, int r1, float *y) {
    const __m128i lut = _mm_loadu_si128((const __m128i *)mxfp4_e2m1_x2);
    int t = 0;
    for (; T - t >= 8; t += 8)
        s_mx_rows_nt(x, t, 8, W, bias, r0, r1, y, lut);
    switch (T - t) {
    case 0:
        break;
    case 1:
        s_mx_rows_nt(x, t, 1, W, bias, r0, r1, y, lut);
        break;
    case 2:
        s_mx_rows_nt(x, t, 2, W, bias, r0, r1, y, lut);
        break;
    case 3:
        s_mx_rows_nt(x, t, 3, W, bias, r0, r1, y, lut);
        break;
    case 4:
        s_mx_rows_nt(x, t, 4, W, bias, r0, r1, y, lut);
        break;
    case 5:
        s_mx_rows_nt(x, t, 5, W, bias, r0, r1, y, lut);
        break;
    case 6:
        s_mx_rows_nt(x, t, 6, W, bias, r0, r1, y, lut);
        break;
    default:
        s_mx_rows_nt(x, t, 7, W, bias, r0, r1, y, lut);
        break;
    }
}

static float s_dot(const float *a, const float *b, int n) {
    __m512 a0 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16)
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), a0);
    float s = _mm512_reduce_add_ps(a0);
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void s_axpy(float *y, float a, const float *x, int n) {
    __m512 av = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i,
                         _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += a * x[i];
}

static const cpu_kern_t s_kern = {
    .name = "avx512",
    .bf16_rows = s_bf16_rows,
    .mxfp4_rows = s_mxfp4_rows,
    .dot = s_dot,
    .axpy = s_axpy,
};

const cpu_kern_t *cpu_kern_avx512(void) {
    return &s_kern;
}
