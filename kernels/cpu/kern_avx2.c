/* kern_avx2: AVX2 + FMA inner loops of the CPU backend (compiled with -mavx2
 * -mfma; chosen at run time only where the CPU has both).
 *
 * bf16 weights are widened with a 16-bit shift (exact). MXFP4 blocks are decoded
 * in registers (x in split order, see s_mx_decode): nibbles -> pshufb over the
 * doubled E2M1 integers {0,1,2,3,4,6,8,12} (signed) -> int32 -> float, times the
 * block's exact power-of-two scale, which gives the exact weight value in fp32.
 *
 * Both formats then share one summation order (the batch-invariance contract of
 * cpu_kern.h): per (row, token) one 8-lane accumulator takes the columns 8 at a time
 * in ascending order (MXFP4: in split order), then s_hsum, then the n % 8 tail
 * columns one by one, then the bias. Paths:
 * - T = 1 (decode): four rows per pass, each x vector loaded once for the four;
 * - bf16, T >= 4: tiles of 2 rows x 4 tokens, each x vector loaded once into a
 *   register for both rows (vector loads, not FMAs, bound these tiles on the cores
 *   we measured), the reduction in L1-sized column chunks with the accumulators
 *   parked in between;
 * - MXFP4, T >= S_MX_BUF_T: the task's rows are decoded once into an fp32 buffer on
 *   the stack (L2-resident), then run through the same 2 x 4 tiles as bf16;
 * - MXFP4, 2 <= T < S_MX_BUF_T (a few tokens per expert in batched decode): two rows
 *   at a time, each decoded block feeding up to 8 tokens. */
#include <immintrin.h>
#include <math.h>

#include "bf16.h"
#include "cpu_kern.h"
#include "mxfp4.h"

#define S_KC         512   /* columns per reduction chunk of the 4-token tile (8 KB of x) */
#define S_RB         8     /* row pairs sharing one x chunk */
#define S_MX_BUF_T   12    /* MXFP4 calls with at least this many tokens decode into a buffer */
#define S_MX_BUF_MAX 49152 /* floats of that buffer (192 KB on the stack) */

static inline float s_hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* Loads 8 floats into a register that the compiler must keep: a value used by several FMAs is
 * then read once (gcc would otherwise fold the load into each FMA, and on this kind of core
 * vector loads, not FMAs, bound the tiles). */
static inline __m256 s_ldreg(const float *p) {
    __m256 v = _mm256_loadu_ps(p);
    __asm__("" : "+x"(v));
    return v;
}

static inline __m256 s_load_bf16(const uint16_t *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* 8 weights of a row as floats: bf16 (BF = 1, widened) or fp32 (BF = 0). */
static inline __attribute__((always_inline)) __m256 s_wload(const void *w, size_t c, const int BF) {
    return BF ? s_load_bf16((const uint16_t *)w + c) : _mm256_loadu_ps((const float *)w + c);
}

static inline __attribute__((always_inline)) float s_wscalar(const void *w, size_t c,
                                                             const int BF) {
    return BF ? bf16_to_f32(((const uint16_t *)w)[c]) : ((const float *)w)[c];
}

/* The end of every path: s_hsum(acc), the tail columns n8..n one by one, the bias. */
static inline __attribute__((always_inline)) float
s_finish(__m256 acc, const void *w, const float *x, int n8, int n, float bias, const int BF) {
    float s = s_hsum(acc);
    for (int c = n8; c < n; c++)
        s = fmaf(s_wscalar(w, (size_t)c, BF), x[c], s);
    return s + bias;
}

/* y[t][yr + i] = w_i . x[t] + bias[yr + i] for rows i < nr (row i at w + i * ws elements of
 * bf16 (BF = 1) or fp32 (BF = 0)) and tokens t < T (x: [T][n], y: [T][ldy]). */
static inline __attribute__((always_inline)) void s_rows(const float *x, int T, int n,
                                                         const void *w, size_t ws, int nr,
                                                         const uint16_t *bias, int yr, float *y,
                                                         size_t ldy, const int BF) {
    const int n8 = n & ~7;
    const size_t esz = BF ? 2 : 4;
#define S_ROW(i)  ((const char *)w + (size_t)(i)*ws * esz)
#define S_BIAS(i) (bias ? bf16_to_f32(bias[yr + (i)]) : 0.0f)
    int t = 0;
    for (; t + 4 <= T; t += 4) {
        const float *x0 = x + (size_t)t * n, *x1 = x0 + n, *x2 = x1 + n, *x3 = x2 + n;
        const float *xs[4] = {x0, x1, x2, x3};
        int r = 0;
        /* two rows x four tokens: 8 accumulators, each x vector loaded once for both rows;
         * the reduction runs in chunks of S_KC columns so that the x chunk stays in L1 for
         * S_RB row pairs (accumulators wait in acc; same summation order) */
        for (; r + 2 <= nr;) {
            const int np = (nr - r) / 2 < S_RB ? (nr - r) / 2 : S_RB;
            __m256 acc[S_RB][8];
            for (int p = 0; p < np; p++)
                for (int i = 0; i < 8; i++)
                    acc[p][i] = _mm256_setzero_ps();
            for (int c0 = 0; c0 < n8; c0 += S_KC) {
                const int c1 = c0 + S_KC < n8 ? c0 + S_KC : n8;
                for (int p = 0; p < np; p++) {
                    const void *wa = S_ROW(r + 2 * p), *wb = S_ROW(r + 2 * p + 1);
                    __m256 *ar = acc[p];
                    __m256 a0 = ar[0], a1 = ar[1], a2 = ar[2], a3 = ar[3];
                    __m256 b0 = ar[4], b1 = ar[5], b2 = ar[6], b3 = ar[7];
                    for (int c = c0; c < c1; c += 8) {
                        __m256 wv = s_wload(wa, (size_t)c, BF), uv = s_wload(wb, (size_t)c, BF);
                        __m256 xv = s_ldreg(x0 + c);
                        a0 = _mm256_fmadd_ps(wv, xv, a0);
                        b0 = _mm256_fmadd_ps(uv, xv, b0);
                        xv = s_ldreg(x1 + c);
                        a1 = _mm256_fmadd_ps(wv, xv, a1);
                        b1 = _mm256_fmadd_ps(uv, xv, b1);
                        xv = s_ldreg(x2 + c);
                        a2 = _mm256_fmadd_ps(wv, xv, a2);
                        b2 = _mm256_fmadd_ps(uv, xv, b2);
                        xv = s_ldreg(x3 + c);
                        a3 = _mm256_fmadd_ps(wv, xv, a3);
                        b3 = _mm256_fmadd_ps(uv, xv, b3);
                    }
                    ar[0] = a0, ar[1] = a1, ar[2] = a2, ar[3] = a3;
                    ar[4] = b0, ar[5] = b1, ar[6] = b2, ar[7] = b3;
                }
            }
            for (int p = 0; p < np; p++, r += 2) {
                const void *wa = S_ROW(r), *wb = S_ROW(r + 1);
                for (int i = 0; i < 4; i++) {
                    y[(size_t)(t + i) * ldy + yr + r] =
                        s_finish(acc[p][i], wa, xs[i], n8, n, S_BIAS(r), BF);
                    y[(size_t)(t + i) * ldy + yr + r + 1] =
                        s_finish(acc[p][4 + i], wb, xs[i], n8, n, S_BIAS(r + 1), BF);
                }
            }
        }
        for (; r < nr; r++) { /* an odd last row: one row x four tokens */
            const void *wa = S_ROW(r);
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int c = 0; c < n8; c += 8) {
                __m256 wv = s_wload(wa, (size_t)c, BF);
                a0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + c), a0);
                a1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x1 + c), a1);
                a2 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x2 + c), a2);
                a3 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x3 + c), a3);
            }
            for (int i = 0; i < 4; i++)
                y[(size_t)(t + i) * ldy + yr + r] = s_finish(i == 0   ? a0
                                                             : i == 1 ? a1
                                                             : i == 2 ? a2
                                                                      : a3,
                                                             wa, xs[i], n8, n, S_BIAS(r), BF);
        }
    }
    /* the last T % 4 tokens (T = 1: decode): four rows at a time, one accumulator each, so
     * the four independent FMA chains hide the latency that one chain per row would expose */
    for (; t < T; t++) {
        const float *xt = x + (size_t)t * n;
        float *yt = y + (size_t)t * ldy + yr;
        int r = 0;
        for (; r + 4 <= nr; r += 4) {
            const void *w0 = S_ROW(r), *w1 = S_ROW(r + 1), *w2 = S_ROW(r + 2), *w3 = S_ROW(r + 3);
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            /* the next four rows, one cache line per step (as s_mx_rows4): four interleaved
             * row streams are otherwise fetched late from DRAM */
            const char *nx = (const char *)S_ROW(r + 4);
            const int nl = (int)((4 * ws * esz + 63) / 64);
            for (int c = 0, l = 0; c < n8; c += 8, l++) {
                if (l < nl) _mm_prefetch(nx + (size_t)l * 64, _MM_HINT_T0);
                __m256 xv = s_ldreg(xt + c);
                a0 = _mm256_fmadd_ps(s_wload(w0, (size_t)c, BF), xv, a0);
                a1 = _mm256_fmadd_ps(s_wload(w1, (size_t)c, BF), xv, a1);
                a2 = _mm256_fmadd_ps(s_wload(w2, (size_t)c, BF), xv, a2);
                a3 = _mm256_fmadd_ps(s_wload(w3, (size_t)c, BF), xv, a3);
            }
            yt[r] = s_finish(a0, w0, xt, n8, n, S_BIAS(r), BF);
            yt[r + 1] = s_finish(a1, w1, xt, n8, n, S_BIAS(r + 1), BF);
            yt[r + 2] = s_finish(a2, w2, xt, n8, n, S_BIAS(r + 2), BF);
            yt[r + 3] = s_finish(a3, w3, xt, n8, n, S_BIAS(r + 3), BF);
        }
        for (; r < nr; r++) {
            const void *w0 = S_ROW(r);
            __m256 a0 = _mm256_setzero_ps();
            for (int c = 0; c < n8; c += 8)
                a0 = _mm256_fmadd_ps(s_wload(w0, (size_t)c, BF), _mm256_loadu_ps(xt + c), a0);
            yt[r] = s_finish(a0, w0, xt, n8, n, S_BIAS(r), BF);
        }
    }
#undef S_ROW
#undef S_BIAS
}

static void s_bf16_rows(const float *x, int T, const ops_bf16_mat_t *W, const uint16_t *bias,
                        int r0, int r1, float *y) {
    s_rows(x, T, W->cols, W->w + (size_t)r0 * W->stride, W->stride, r1 - r0, bias, r0, y,
           (size_t)W->rows, 1);
}

/* MXFP4 decoding. x arrives in the split order of cpu_kern_t.mxfp4_split_x (per
 * 16 values: the 8 even ones, then the 8 odd ones), which is the order in which
 * the nibbles come out of a byte without any interleaving. The 16 bytes of a
 * block are loaded into both 128-bit lanes; one pshufb spreads 8 bytes into the
 * top byte of eight 32-bit lanes, a mask (lo nibble) or a 4-bit shift (hi nibble:
 * the shift leaves zeros above it, and the lo nibble lands in bits 4-7 of byte 2,
 * where pshufb reads index 0 or the zeroing bit, both giving 0) keeps one nibble
 * there, a second pshufb replaces it by the doubled E2M1 integer
 * (signed int8, so the 32-bit lane is that integer times 2^24, sign included),
 * and cvtdq2ps makes it a float. Multiplying by the block's 2^(s - 152)
 * (cpu_mxfp4_scale24: the 2^24 and the 0.5 of the doubling folded in, an exact
 * power of two) gives the exact weight. */

typedef struct {
    __m256i lut, spread0, spread1, mask;
} s_mx_consts_t;

static inline s_mx_consts_t s_mx_consts(void) {
    s_mx_consts_t k;
    k.lut = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)mxfp4_e2m1_x2));
    /* byte 3 of lane i <- byte i (lanes 0-3) / 4 + i (lanes 4-7); 0x80 = zero */
    k.spread0 = _mm256_setr_epi8(-128, -128, -128, 0, -128, -128, -128, 1, -128, -128, -128, 2,
                                 -128, -128, -128, 3, -128, -128, -128, 4, -128, -128, -128, 5,
                                 -128, -128, -128, 6, -128, -128, -128, 7);
    k.spread1 = _mm256_add_epi32(k.spread0, _mm256_set1_epi32(8 << 24));
    k.mask = _mm256_set1_epi32(0x0f000000);
    return k;
}

/* Decodes one block (16 bytes, scale byte sc) into w[4]: its 32 exact weights in split order. */
static inline void s_mx_wdec(const uint8_t *blk, uint8_t sc, const s_mx_consts_t *k, __m256 w[4]) {
    __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)blk));
    __m256i s0 = _mm256_shuffle_epi8(b, k->spread0), s1 = _mm256_shuffle_epi8(b, k->spread1);
    const __m256 s = _mm256_set1_ps(cpu_mxfp4_scale24[sc]);
    w[0] = _mm256_mul_ps(
        _mm256_cvtepi32_ps(_mm256_shuffle_epi8(k->lut, _mm256_and_si256(s0, k->mask))), s);
    w[1] =
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_shuffle_epi8(k->lut, _mm256_srli_epi32(s0, 4))), s);
    w[2] = _mm256_mul_ps(
        _mm256_cvtepi32_ps(_mm256_shuffle_epi8(k->lut, _mm256_and_si256(s1, k->mask))), s);
    w[3] =
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_shuffle_epi8(k->lut, _mm256_srli_epi32(s1, 4))), s);
}

/* acc += the block's weights w . its 32 x values (4 FMAs in column order). */
static inline __m256 s_mx_fma4(const __m256 w[4], const float *xg, __m256 acc) {
    acc = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xg), acc);
    acc = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xg + 8), acc);
    acc = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xg + 16), acc);
    return _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xg + 24), acc);
}

/* Four rows at T = 1: the block's x (4 vectors) is loaded once for the four rows, and the
 * four accumulator chains are independent. */
static inline void s_mx_rows4(const uint8_t *blk, size_t bstride, const uint8_t *sc, size_t sstride,
                              int nb, const float *xt, const s_mx_consts_t *k, float out[4]) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const uint8_t *b1 = blk + bstride, *b2 = b1 + bstride, *b3 = b2 + bstride;
    const uint8_t *s1 = sc + sstride, *s2 = s1 + sstride, *s3 = s2 + sstride;
    for (int g = 0; g < nb; g++) {
        const float *xg = xt + g * MXFP4_BLOCK;
        const __m256 x0 = s_ldreg(xg), x1 = s_ldreg(xg + 8);
        const __m256 x2 = s_ldreg(xg + 16), x3 = s_ldreg(xg + 24);
        const size_t off = (size_t)g * MXFP4_BLOCK_BYTES;
        /* the next four rows, one cache line per block step (rows are usually contiguous, so
         * this streams them in while these four are computed; four interleaved row streams
         * with prefetches inside each ran at 2/3 of one row's speed from DRAM) */
        _mm_prefetch((const char *)(blk + 4 * bstride + (size_t)g * 64), _MM_HINT_T0);
        if (g < 8) _mm_prefetch((const char *)(sc + 4 * sstride + (size_t)g * 64), _MM_HINT_T0);
        __m256 w[4];
#define S_ROW4_STEP(bp, sp, acc)                                                                   \
    s_mx_wdec((bp) + off, (sp)[g], k, w);                                                          \
    acc = _mm256_fmadd_ps(w[0], x0, acc);                                                          \
    acc = _mm256_fmadd_ps(w[1], x1, acc);                                                          \
    acc = _mm256_fmadd_ps(w[2], x2, acc);                                                          \
    acc = _mm256_fmadd_ps(w[3], x3, acc)
        S_ROW4_STEP(blk, sc, a0);
        S_ROW4_STEP(b1, s1, a1);
        S_ROW4_STEP(b2, s2, a2);
        S_ROW4_STEP(b3, s3, a3);
#undef S_ROW4_STEP
    }
    out[0] = s_hsum(a0);
    out[1] = s_hsum(a1);
    out[2] = s_hsum(a2);
    out[3] = s_hsum(a3);
}

/* RW rows (1 or 2) for NT tokens (1..8; both compile-time constants after inlining) at
 * x0 + i * ldx: each decoded block feeds all NT tokens; two rows keep at least four
 * accumulator chains in flight when NT is small, and halve the x loads per decoded block
 * (which bind from NT = 4 on: measured per block-row, RW 1 -> 2, L2-resident, this VM:
 * NT 4 20.4 -> 18.7 cycles, 5 25.5 -> 21.5, 6 28.1 -> 21.9, 8 36.4 -> 23.2; NT 1-3 equal).
 * out[r * 8 + i]. */
static inline __attribute__((always_inline)) void s_mx_rowsN(const uint8_t *blk, size_t bstride,
                                                             const uint8_t *sc, size_t sstride,
                                                             int nb, const float *x0, size_t ldx,
                                                             const int RW, const int NT,
                                                             const s_mx_consts_t *k, float *out) {
    __m256 acc[2][8];
#pragma GCC unroll 2
    for (int r = 0; r < RW; r++)
#pragma GCC unroll 8
        for (int i = 0; i < NT; i++)
            acc[r][i] = _mm256_setzero_ps();
    /* the next RW rows' bytes, one cache line per block step (see s_mx_rows4) */
    const uint8_t *nb_blk = blk + RW * bstride, *nb_sc = sc + RW * sstride;
    const int nlines = (int)((RW * bstride + 63) / 64), slines = (int)((RW * sstride + 63) / 64);
    for (int g = 0; g < nb; g++) {
        const float *xg = x0 + g * MXFP4_BLOCK;
        if (g < nlines) _mm_prefetch((const char *)(nb_blk + (size_t)g * 64), _MM_HINT_T0);
        if (g < slines) _mm_prefetch((const char *)(nb_sc + (size_t)g * 64), _MM_HINT_T0);
#pragma GCC unroll 2
        for (int r = 0; r < RW; r++) {
            __m256 w[4];
            s_mx_wdec(blk + r * bstride + g * MXFP4_BLOCK_BYTES, sc[r * sstride + g], k, w);
#pragma GCC unroll 8
            for (int i = 0; i < NT; i++)
                acc[r][i] = s_mx_fma4(w, xg + i * ldx, acc[r][i]);
        }
    }
#pragma GCC unroll 2
    for (int r = 0; r < RW; r++)
#pragma GCC unroll 8
        for (int i = 0; i < NT; i++)
            out[r * 8 + i] = s_hsum(acc[r][i]);
}

/* Rows [r0, r1) for the NT tokens at x0 (rows of n values), results into y[t0 + i]. */
static inline __attribute__((always_inline)) void
s_mx_small(const float *x0, int n, const int NT, const ops_mxfp4_mat_t *W, const uint16_t *bias,
           int r0, int r1, float *y, int t0, const s_mx_consts_t *k) {
    const int nb = n / MXFP4_BLOCK;
    const size_t ldy = (size_t)W->rows;
    int r = r0;
    for (; r + 2 <= r1; r += 2) {
        float o[16];
        s_mx_rowsN(W->blocks + (size_t)r * W->blocks_stride, W->blocks_stride,
                   W->scales + (size_t)r * W->scales_stride, W->scales_stride, nb, x0, (size_t)n, 2,
                   NT, k, o);
        for (int j = 0; j < 2; j++) {
            const float b = bias ? bf16_to_f32(bias[r + j]) : 0.0f;
            for (int i = 0; i < NT; i++)
                y[(size_t)(t0 + i) * ldy + r + j] = o[j * 8 + i] + b;
        }
    }
    for (; r < r1; r++) {
        float o[16];
        s_mx_rowsN(W->blocks + (size_t)r * W->blocks_stride, W->blocks_stride,
                   W->scales + (size_t)r * W->scales_stride, W->scales_stride, nb, x0, (size_t)n, 1,
                   NT, k, o);
        const float b = bias ? bf16_to_f32(bias[r]) : 0.0f;
        for (int i = 0; i < NT; i++)
            y[(size_t)(t0 + i) * ldy + r] = o[i] + b;
    }
}

/* T = 1: four rows at a time, then one. */
static void s_mx_t1(const float *xt, const ops_mxfp4_mat_t *W, const uint16_t *bias, int r0, int r1,
                    float *yt, const s_mx_consts_t *k) {
    const int nb = W->cols / MXFP4_BLOCK;
    int r = r0;
    for (; r + 4 <= r1; r += 4) {
        float o4[4];
        s_mx_rows4(W->blocks + (size_t)r * W->blocks_stride, W->blocks_stride,
                   W->scales + (size_t)r * W->scales_stride, W->scales_stride, nb, xt, k, o4);
        for (int i = 0; i < 4; i++)
            yt[r + i] = o4[i] + (bias ? bf16_to_f32(bias[r + i]) : 0.0f);
    }
    for (; r < r1; r++) {
        float o[16];
        s_mx_rowsN(W->blocks + (size_t)r * W->blocks_stride, W->blocks_stride,
                   W->scales + (size_t)r * W->scales_stride, W->scales_stride, nb, xt, 0, 1, 1, k,
                   o);
        yt[r] = o[0] + (bias ? bf16_to_f32(bias[r]) : 0.0f);
    }
}

static void s_mxfp4_rows(const float *x, int T, const ops_mxfp4_mat_t *W, const uint16_t *bias,
                         int r0, int r1, float *y) {
    const int n = W->cols, nb = n / MXFP4_BLOCK;
    const size_t ldy = (size_t)W->rows;
    const s_mx_consts_t k = s_mx_consts();
    if (T >= S_MX_BUF_T && n <= S_MX_BUF_MAX) {
        /* decode the rows once into an fp32 buffer (exact values, split order), then the
         * 2 x 4 tiles of the bf16 path over it: the same summation order as the paths below */
        float wbuf[S_MX_BUF_MAX] __attribute__((aligned(64)));
        const int rbw = S_MX_BUF_MAX / n;
        for (int rb = r0; rb < r1; rb += rbw) {
            const int nr = r1 - rb < rbw ? r1 - rb : rbw;
            for (int i = 0; i < nr; i++) {
                const uint8_t *blk = W->blocks + (size_t)(rb + i) * W->blocks_stride;
                const uint8_t *sc = W->scales + (size_t)(rb + i) * W->scales_stride;
                float *wr = wbuf + (size_t)i * n;
                for (int g = 0; g < nb; g++) {
                    __m256 w[4];
                    s_mx_wdec(blk + g * MXFP4_BLOCK_BYTES, sc[g], &k, w);
                    _mm256_store_ps(wr + g * MXFP4_BLOCK, w[0]);
                    _mm256_store_ps(wr + g * MXFP4_BLOCK + 8, w[1]);
                    _mm256_store_ps(wr + g * MXFP4_BLOCK + 16, w[2]);
                    _mm256_store_ps(wr + g * MXFP4_BLOCK + 24, w[3]);
                }
            }
            s_rows(x, T, n, wbuf, (size_t)n, nr, bias, rb, y, ldy, 0);
        }
        return;
    }
    /* a few tokens: tiles of up to 8, each decoded block feeding all of them */
    int t = 0;
    for (; T - t >= 8; t += 8)
        s_mx_small(x + (size_t)t * n, n, 8, W, bias, r0, r1, y, t, &k);
    const float *xr = x + (size_t)t * n;
    switch (T - t) {
    case 0:
        break;
    case 1:
        s_mx_t1(xr, W, bias, r0, r1, y + (size_t)t * ldy, &k);
        break;
    case 2:
        s_mx_small(xr, n, 2, W, bias, r0, r1, y, t, &k);
        break;
    case 3:
        s_mx_small(xr, n, 3, W, bias, r0, r1, y, t, &k);
        break;
    case 4:
        s_mx_small(xr, n, 4, W, bias, r0, r1, y, t, &k);
        break;
    case 5:
        s_mx_small(xr, n, 5, W, bias, r0, r1, y, t, &k);
        break;
    case 6:
        s_mx_small(xr, n, 6, W, bias, r0, r1, y, t, &k);
        break;
    default:
        s_mx_small(xr, n, 7, W, bias, r0, r1, y, t, &k);
        break;
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
    .mxfp4_split_x = 1,
    .dot = s_dot,
    .axpy = s_axpy,
};

const cpu_kern_t *cpu_kern_avx2(void) {
    return &s_kern;
}
