/* kern_avx2: AVX2 + FMA inner loops of the CPU backend (compiled with -mavx2
 * -mfma; chosen at run time only where the CPU has both).
 *
 * bf16 weights are widened with a 16-bit shift (exact). MXFP4 blocks are decoded
 * in registers: nibbles -> pshufb over the doubled E2M1 integers {0,1,2,3,4,6,8,12}
 * (signed) -> int32 -> float, times 2^(s-128) (exact), then FMA. Several tokens
 * share each decoded weight vector (token tiles of 4), so prefill reads each weight
 * once per tile. */
#include <immintrin.h>

#include "bf16.h"
#include "cpu_kern.h"
#include "mxfp4.h"

static inline float s_hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

static inline __m256 s_load_bf16(const uint16_t *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static void s_bf16_rows(const float *x, int T, const ops_bf16_mat_t *W, const uint16_t *bias,
                        int r0, int r1, float *y) {
    const int n = W->cols, n8 = n & ~7, n32 = n & ~31;
    const size_t ldy = (size_t)W->rows;
    int t = 0;
    for (; t + 4 <= T; t += 4) {
        const float *x0 = x + (size_t)t * n, *x1 = x0 + n, *x2 = x1 + n, *x3 = x2 + n;
        int r = r0;
        /* two rows x four tokens: 8 accumulators, each x load feeds two FMAs */
        for (; r + 2 <= r1 && n8 == n; r += 2) {
            const uint16_t *w = W->w + (size_t)r * W->stride, *u = w + W->stride;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            for (int c = 0; c < n; c += 8) {
                __m256 wv = s_load_bf16(w + c), uv = s_load_bf16(u + c), xv;
                xv = _mm256_loadu_ps(x0 + c);
                a0 = _mm256_fmadd_ps(wv, xv, a0);
                b0 = _mm256_fmadd_ps(uv, xv, b0);
                xv = _mm256_loadu_ps(x1 + c);
                a1 = _mm256_fmadd_ps(wv, xv, a1);
                b1 = _mm256_fmadd_ps(uv, xv, b1);
                xv = _mm256_loadu_ps(x2 + c);
                a2 = _mm256_fmadd_ps(wv, xv, a2);
                b2 = _mm256_fmadd_ps(uv, xv, b2);
                xv = _mm256_loadu_ps(x3 + c);
                a3 = _mm256_fmadd_ps(wv, xv, a3);
                b3 = _mm256_fmadd_ps(uv, xv, b3);
            }
            float bw = bias ? bf16_to_f32(bias[r]) : 0.0f,
                  bu = bias ? bf16_to_f32(bias[r + 1]) : 0.0f;
            y[(size_t)t * ldy + r] = s_hsum(a0) + bw;
            y[(size_t)(t + 1) * ldy + r] = s_hsum(a1) + bw;
            y[(size_t)(t + 2) * ldy + r] = s_hsum(a2) + bw;
            y[(size_t)(t + 3) * ldy + r] = s_hsum(a3) + bw;
            y[(size_t)t * ldy + r + 1] = s_hsum(b0) + bu;
            y[(size_t)(t + 1) * ldy + r + 1] = s_hsum(b1) + bu;
            y[(size_t)(t + 2) * ldy + r + 1] = s_hsum(b2) + bu;
            y[(size_t)(t + 3) * ldy + r + 1] = s_hsum(b3) + bu;
        }
        for (; r < r1; r++) {
            const uint16_t *w = W->w + (size_t)r * W->stride;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            int c = 0;
            for (; c + 16 <= n8; c += 16) {
                __m256 wv = s_load_bf16(w + c), wu = s_load_bf16(w + c + 8);
                a0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + c), a0);
                a1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x1 + c), a1);
                a2 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x2 + c), a2);
                a3 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x3 + c), a3);
                b0 = _mm256_fmadd_ps(wu, _mm256_loadu_ps(x0 + c + 8), b0);
                b1 = _mm256_fmadd_ps(wu, _mm256_loadu_ps(x1 + c + 8), b1);
                b2 = _mm256_fmadd_ps(wu, _mm256_loadu_ps(x2 + c + 8), b2);
                b3 = _mm256_fmadd_ps(wu, _mm256_loadu_ps(x3 + c + 8), b3);
            }
            for (; c < n8; c += 8) {
                __m256 wv = s_load_bf16(w + c);
                a0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + c), a0);
                a1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x1 + c), a1);
                a2 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x2 + c), a2);
                a3 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x3 + c), a3);
            }
            float s0 = s_hsum(_mm256_add_ps(a0, b0)), s1 = s_hsum(_mm256_add_ps(a1, b1));
            float s2 = s_hsum(_mm256_add_ps(a2, b2)), s3 = s_hsum(_mm256_add_ps(a3, b3));
            for (; c < n; c++) {
                float wf = bf16_to_f32(w[c]);
                s0 += wf * x0[c];
                s1 += wf * x1[c];
                s2 += wf * x2[c];
                s3 += wf * x3[c];
            }
            float b = bias ? bf16_to_f32(bias[r]) : 0.0f;
            y[(size_t)t * ldy + r] = s0 + b;
            y[(size_t)(t + 1) * ldy + r] = s1 + b;
            y[(size_t)(t + 2) * ldy + r] = s2 + b;
            y[(size_t)(t + 3) * ldy + r] = s3 + b;
        }
    }
    for (; t < T; t++) {
        const float *xt = x + (size_t)t * n;
        for (int r = r0; r < r1; r++) {
            const uint16_t *w = W->w + (size_t)r * W->stride;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            int c = 0;
            for (; c < n32; c += 32) {
                a0 = _mm256_fmadd_ps(s_load_bf16(w + c), _mm256_loadu_ps(xt + c), a0);
                a1 = _mm256_fmadd_ps(s_load_bf16(w + c + 8), _mm256_loadu_ps(xt + c + 8), a1);
                a2 = _mm256_fmadd_ps(s_load_bf16(w + c + 16), _mm256_loadu_ps(xt + c + 16), a2);
                a3 = _mm256_fmadd_ps(s_load_bf16(w + c + 24), _mm256_loadu_ps(xt + c + 24), a3);
            }
            for (; c < n8; c += 8)
                a0 = _mm256_fmadd_ps(s_load_bf16(w + c), _mm256_loadu_ps(xt + c), a0);
            float s = s_hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
            for (; c < n; c++)
                s += bf16_to_f32(w[c]) * xt[c];
            y[(size_t)t * ldy + r] = s + (bias ? bf16_to_f32(bias[r]) : 0.0f);
        }
    }
}

/* Decodes one 32-value MXFP4 block into w[4] (values in order, scale applied). */
static inline void s_decode_block(const uint8_t *blk, float scale, __m128i lut, __m256 w[4]) {
    const __m128i m0f = _mm_set1_epi8(0x0f);
    __m128i bytes = _mm_loadu_si128((const __m128i *)blk);
    __m128i lo = _mm_and_si128(bytes, m0f);
    __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), m0f);
    __m128i vlo = _mm_shuffle_epi8(lut, lo), vhi = _mm_shuffle_epi8(lut, hi);
    __m128i e0 = _mm_unpacklo_epi8(vlo, vhi), e1 = _mm_unpackhi_epi8(vlo, vhi);
    __m256 s = _mm256_set1_ps(scale);
    w[0] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(e0)), s);
    w[1] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(e0, 8))), s);
    w[2] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(e1)), s);
    w[3] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(e1, 8))), s);
}

static void s_mxfp4_rows(const float *x, int T, const ops_mxfp4_mat_t *W, const uint16_t *bias,
                         int r0, int r1, float *y) {
    const int n = W->cols, nb = n / MXFP4_BLOCK;
    const size_t ldy = (size_t)W->rows;
    const __m128i lut = _mm_loadu_si128((const __m128i *)mxfp4_e2m1_x2);
    int t = 0;
    /* eight tokens share each decoded block (decode cost spread over 32 FMAs); the
     * accumulators are named so they stay in registers */
    for (; t + 8 <= T; t += 8) {
        const float *x0 = x + (size_t)t * n;
        const size_t n1 = (size_t)n;
        for (int r = r0; r < r1; r++) {
            const uint8_t *blk = W->blocks + (size_t)r * W->blocks_stride;
            const uint8_t *sc = W->scales + (size_t)r * W->scales_stride;
            __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0,
                   c7 = c0;
            for (int g = 0; g < nb; g++) {
                __m256 w[4];
                s_decode_block(blk + g * MXFP4_BLOCK_BYTES, cpu_mxfp4_half_scale[sc[g]], lut, w);
                const float *xg = x0 + g * MXFP4_BLOCK;
#define S_FMA8(q)                                                                                  \
    c0 = _mm256_fmadd_ps(w[q], _mm256_loadu_ps(xg + 8 * (q)), c0);                                 \
    c1 = _mm256_fmadd_ps(w[q], _mm256_loadu_ps(xg + n1 + 8 * (q)), c1);                            \
    c2 = _mm256_fmadd_ps(w[q], _mm256_loadu_ps(xg + 2 * n1 + 8 * (q)), c2);                        \
    c3 = _mm256_fmadd_ps(w[q], _mm256_loadu_ps(xg + 3 * n1 + 8 * (q)), c3);                        \
    c4 = _mm256_fmadd_ps(w[q], _mm256_loadu_ps(xg + 4 * n1 + 8 * (q)), c4);                        \
    c5 = _mm256_fmadd_ps(w[q], _mm256_loadu_ps(xg + 5 * n1 + 8 * (q)), c5);                        \
    c6 = _mm256_fmadd_ps(w[q], _mm256_loadu_ps(xg + 6 * n1 + 8 * (q)), c6);                        \
    c7 = _mm256_fmadd_ps(w[q], _mm256_loadu_ps(xg + 7 * n1 + 8 * (q)), c7);
                S_FMA8(0)
                S_FMA8(1)
                S_FMA8(2)
                S_FMA8(3)
#undef S_FMA8
            }
            float b = bias ? bf16_to_f32(bias[r]) : 0.0f;
            y[(size_t)t * ldy + r] = s_hsum(c0) + b;
            y[(size_t)(t + 1) * ldy + r] = s_hsum(c1) + b;
            y[(size_t)(t + 2) * ldy + r] = s_hsum(c2) + b;
            y[(size_t)(t + 3) * ldy + r] = s_hsum(c3) + b;
            y[(size_t)(t + 4) * ldy + r] = s_hsum(c4) + b;
            y[(size_t)(t + 5) * ldy + r] = s_hsum(c5) + b;
            y[(size_t)(t + 6) * ldy + r] = s_hsum(c6) + b;
            y[(size_t)(t + 7) * ldy + r] = s_hsum(c7) + b;
        }
    }
    for (; t + 4 <= T; t += 4) {
        const float *x0 = x + (size_t)t * n, *x1 = x0 + n, *x2 = x1 + n, *x3 = x2 + n;
        for (int r = r0; r < r1; r++) {
            const uint8_t *blk = W->blocks + (size_t)r * W->blocks_stride;
            const uint8_t *sc = W->scales + (size_t)r * W->scales_stride;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            for (int g = 0; g < nb; g++) {
                __m256 w[4];
                s_decode_block(blk + g * MXFP4_BLOCK_BYTES, cpu_mxfp4_half_scale[sc[g]], lut, w);
                const int c = g * MXFP4_BLOCK;
                for (int q = 0; q < 4; q += 2) {
                    a0 = _mm256_fmadd_ps(w[q], _mm256_loadu_ps(x0 + c + 8 * q), a0);
                    a1 = _mm256_fmadd_ps(w[q], _mm256_loadu_ps(x1 + c + 8 * q), a1);
                    a2 = _mm256_fmadd_ps(w[q], _mm256_loadu_ps(x2 + c + 8 * q), a2);
                    a3 = _mm256_fmadd_ps(w[q], _mm256_loadu_ps(x3 + c + 8 * q), a3);
                    b0 = _mm256_fmadd_ps(w[q + 1], _mm256_loadu_ps(x0 + c + 8 * q + 8), b0);
                    b1 = _mm256_fmadd_ps(w[q + 1], _mm256_loadu_ps(x1 + c + 8 * q + 8), b1);
                    b2 = _mm256_fmadd_ps(w[q + 1], _mm256_loadu_ps(x2 + c + 8 * q + 8), b2);
                    b3 = _mm256_fmadd_ps(w[q + 1], _mm256_loadu_ps(x3 + c + 8 * q + 8), b3);
                }
            }
            float b = bias ? bf16_to_f32(bias[r]) : 0.0f;
            y[(size_t)t * ldy + r] = s_hsum(_mm256_add_ps(a0, b0)) + b;
            y[(size_t)(t + 1) * ldy + r] = s_hsum(_mm256_add_ps(a1, b1)) + b;
            y[(size_t)(t + 2) * ldy + r] = s_hsum(_mm256_add_ps(a2, b2)) + b;
            y[(size_t)(t + 3) * ldy + r] = s_hsum(_mm256_add_ps(a3, b3)) + b;
        }
    }
    for (; t < T; t++) {
        const float *xt = x + (size_t)t * n;
        for (int r = r0; r < r1; r++) {
            const uint8_t *blk = W->blocks + (size_t)r * W->blocks_stride;
            const uint8_t *sc = W->scales + (size_t)r * W->scales_stride;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int g = 0; g < nb; g++) {
                __m256 w[4];
                s_decode_block(blk + g * MXFP4_BLOCK_BYTES, cpu_mxfp4_half_scale[sc[g]], lut, w);
                const float *xg = xt + g * MXFP4_BLOCK;
                a0 = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xg), a0);
                a1 = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xg + 8), a1);
                a2 = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xg + 16), a2);
                a3 = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xg + 24), a3);
            }
            float s = s_hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
            y[(size_t)t * ldy + r] = s + (bias ? bf16_to_f32(bias[r]) : 0.0f);
        }
    }
}

static float s_dot(const float *a, const float *b, int n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), a1);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
    float s = s_hsum(_mm256_add_ps(a0, a1));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void s_axpy(float *y, float a, const float *x, int n) {
    __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i,
                         _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += a * x[i];
}

static const cpu_kern_t s_kern = {
    .name = "avx2",
    .bf16_rows = s_bf16_rows,
    .mxfp4_rows = s_mxfp4_rows,
    .dot = s_dot,
    .axpy = s_axpy,
};

const cpu_kern_t *cpu_kern_avx2(void) {
    return &s_kern;
}
