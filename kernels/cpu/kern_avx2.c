/* kern_avx2: AVX2 + FMA inner loops of the CPU backend (compiled with -mavx2
 * -mfma; chosen at run time only where the CPU has both).
 *
 * bf16 weights are widened with a 16-bit shift (exact). MXFP4 blocks are decoded
 * in registers (x in split order, see s_mx_decode): nibbles -> pshufb over the
 * doubled E2M1 integers {0,1,2,3,4,6,8,12} (signed) -> int32 -> float, block
 * partial sums times the exact 2^(s-152). Several tokens share each decoded weight
 * vector (bf16: 2 rows x 4 tokens; MXFP4: 8, 4 or 2 tokens), so prefill reads each
 * weight once per tile. */
#include <immintrin.h>
#include <math.h>

#include "bf16.h"
#include "cpu_kern.h"
#include "mxfp4.h"

#define S_MX_KB 8   /* blocks per reduction chunk of the 8-token tile (8 tokens x 1 KB of x) */
#define S_MX_RB 16  /* rows sharing one x chunk */
#define S_BF_KC 512 /* columns per reduction chunk of the bf16 4-token tile (8 KB of x) */
#define S_BF_RB 8   /* row pairs sharing one x chunk */

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

/* Summation order of every bf16 path (so that a token's result depends neither on T, nor on
 * the tile or the thread's row range it falls in, nor on its neighbours in the step; DESIGN.md:
 * seeded streams are batch-invariant): per (row, token) one 8-lane accumulator takes the columns
 * 8 at a time in ascending order, then s_hsum, then the n % 8 tail columns one by one (fmaf),
 * then the bias. Tiles only change which (row, token) pairs run side by side. */
static inline float s_bf_finish(__m256 acc, const uint16_t *w, const float *x, int n8, int n,
                                const uint16_t *bias, int r) {
    float s = s_hsum(acc);
    for (int c = n8; c < n; c++)
        s = fmaf(bf16_to_f32(w[c]), x[c], s);
    return s + (bias ? bf16_to_f32(bias[r]) : 0.0f);
}

static void s_bf16_rows(const float *x, int T, const ops_bf16_mat_t *W, const uint16_t *bias,
                        int r0, int r1, float *y) {
    const int n = W->cols, n8 = n & ~7;
    const size_t ldy = (size_t)W->rows;
    int t = 0;
    for (; t + 4 <= T; t += 4) {
        const float *x0 = x + (size_t)t * n, *x1 = x0 + n, *x2 = x1 + n, *x3 = x2 + n;
        const float *xs[4] = {x0, x1, x2, x3};
        int r = r0;
        /* two rows x four tokens: 8 accumulators, each x load feeds two FMAs; the
         * reduction runs in chunks of S_BF_KC columns so that the x chunk stays in
         * L1 for S_BF_RB row pairs (accumulators wait in acc; same summation order) */
        for (; r + 2 <= r1;) {
            const int np = (r1 - r) / 2 < S_BF_RB ? (r1 - r) / 2 : S_BF_RB;
            __m256 acc[S_BF_RB][8];
            for (int p = 0; p < np; p++)
                for (int i = 0; i < 8; i++)
                    acc[p][i] = _mm256_setzero_ps();
            for (int c0 = 0; c0 < n8; c0 += S_BF_KC) {
                const int c1 = c0 + S_BF_KC < n8 ? c0 + S_BF_KC : n8;
                for (int p = 0; p < np; p++) {
                    const uint16_t *w = W->w + (size_t)(r + 2 * p) * W->stride, *u = w + W->stride;
                    __m256 *ar = acc[p];
                    __m256 a0 = ar[0], a1 = ar[1], a2 = ar[2], a3 = ar[3];
                    __m256 b0 = ar[4], b1 = ar[5], b2 = ar[6], b3 = ar[7];
                    for (int c = c0; c < c1; c += 8) {
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
                    ar[0] = a0, ar[1] = a1, ar[2] = a2, ar[3] = a3;
                    ar[4] = b0, ar[5] = b1, ar[6] = b2, ar[7] = b3;
                }
            }
            for (int p = 0; p < np; p++, r += 2) {
                const uint16_t *w = W->w + (size_t)r * W->stride, *u = w + W->stride;
                for (int i = 0; i < 4; i++) {
                    y[(size_t)(t + i) * ldy + r] = s_bf_finish(acc[p][i], w, xs[i], n8, n, bias, r);
                    y[(size_t)(t + i) * ldy + r + 1] =
                        s_bf_finish(acc[p][4 + i], u, xs[i], n8, n, bias, r + 1);
                }
            }
        }
        for (; r < r1; r++) { /* an odd last row: one row x four tokens */
            const uint16_t *w = W->w + (size_t)r * W->stride;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int c = 0; c < n8; c += 8) {
                __m256 wv = s_load_bf16(w + c);
                a0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + c), a0);
                a1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x1 + c), a1);
                a2 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x2 + c), a2);
                a3 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x3 + c), a3);
            }
            y[(size_t)t * ldy + r] = s_bf_finish(a0, w, x0, n8, n, bias, r);
            y[(size_t)(t + 1) * ldy + r] = s_bf_finish(a1, w, x1, n8, n, bias, r);
            y[(size_t)(t + 2) * ldy + r] = s_bf_finish(a2, w, x2, n8, n, bias, r);
            y[(size_t)(t + 3) * ldy + r] = s_bf_finish(a3, w, x3, n8, n, bias, r);
        }
    }
    /* the last T % 4 tokens (T = 1: decode): four rows at a time, one accumulator each, so
     * the four independent FMA chains hide the latency that one chain per row would expose */
    for (; t < T; t++) {
        const float *xt = x + (size_t)t * n;
        float *yt = y + (size_t)t * ldy;
        int r = r0;
        for (; r + 4 <= r1; r += 4) {
            const uint16_t *w0 = W->w + (size_t)r * W->stride, *w1 = w0 + W->stride;
            const uint16_t *w2 = w1 + W->stride, *w3 = w2 + W->stride;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int c = 0; c < n8; c += 8) {
                __m256 xv = _mm256_loadu_ps(xt + c);
                a0 = _mm256_fmadd_ps(s_load_bf16(w0 + c), xv, a0);
                a1 = _mm256_fmadd_ps(s_load_bf16(w1 + c), xv, a1);
                a2 = _mm256_fmadd_ps(s_load_bf16(w2 + c), xv, a2);
                a3 = _mm256_fmadd_ps(s_load_bf16(w3 + c), xv, a3);
            }
            yt[r] = s_bf_finish(a0, w0, xt, n8, n, bias, r);
            yt[r + 1] = s_bf_finish(a1, w1, xt, n8, n, bias, r + 1);
            yt[r + 2] = s_bf_finish(a2, w2, xt, n8, n, bias, r + 2);
            yt[r + 3] = s_bf_finish(a3, w3, xt, n8, n, bias, r + 3);
        }
        for (; r < r1; r++) {
            const uint16_t *w = W->w + (size_t)r * W->stride;
            __m256 a0 = _mm256_setzero_ps();
            for (int c = 0; c < n8; c += 8)
                a0 = _mm256_fmadd_ps(s_load_bf16(w + c), _mm256_loadu_ps(xt + c), a0);
            yt[r] = s_bf_finish(a0, w, xt, n8, n, bias, r);
        }
    }
}

/* MXFP4 decoding. x arrives in the split order of cpu_kern_t.mxfp4_split_x (per
 * 16 values: the 8 even ones, then the 8 odd ones), which is the order in which
 * the nibbles come out of a byte without any interleaving. The 16 bytes of a
 * block are loaded into both 128-bit lanes; one pshufb spreads 8 bytes into the
 * top byte of eight 32-bit lanes, a mask (or a 4-bit shift and the mask) keeps
 * one nibble there, a second pshufb replaces it by the doubled E2M1 integer
 * (signed int8, so the 32-bit lane is that integer times 2^24, sign included),
 * and cvtdq2ps makes it a float. The 2^24 and the 0.5 of the doubling fold into
 * the block's scale 2^(s - 152) (cpu_mxfp4_scale24), an exact power of two. */

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

/* Decodes one block (16 bytes) into w[4]: values 2^25 * E2M1 in split order. */
static inline void s_mx_decode(const uint8_t *blk, const s_mx_consts_t *k, __m256 w[4]) {
    __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)blk));
    __m256i s0 = _mm256_shuffle_epi8(b, k->spread0), s1 = _mm256_shuffle_epi8(b, k->spread1);
    w[0] = _mm256_cvtepi32_ps(_mm256_shuffle_epi8(k->lut, _mm256_and_si256(s0, k->mask)));
    w[1] = _mm256_cvtepi32_ps(
        _mm256_shuffle_epi8(k->lut, _mm256_and_si256(_mm256_srli_epi32(s0, 4), k->mask)));
    w[2] = _mm256_cvtepi32_ps(_mm256_shuffle_epi8(k->lut, _mm256_and_si256(s1, k->mask)));
    w[3] = _mm256_cvtepi32_ps(
        _mm256_shuffle_epi8(k->lut, _mm256_and_si256(_mm256_srli_epi32(s1, 4), k->mask)));
}

/* Summation order of every MXFP4 path (batch invariance, as for bf16): per (row, token) and
 * block g, the block's unscaled partial p = w0 x0, then p += w1 x1, w2 x2, w3 x3 (FMA, x in
 * split order), then acc = fma(p, 2^(s_g - 152), acc) over the blocks in order with one 8-lane
 * accumulator; the result is s_hsum(acc) + bias. The scale on the partial costs one FMA per
 * token and block, which the tiles pay instead of scaling the decoded weights. */
static inline __m256 s_mx_part(const __m256 w[4], const float *xg) {
    __m256 p = _mm256_mul_ps(w[0], _mm256_loadu_ps(xg));
    p = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xg + 8), p);
    p = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xg + 16), p);
    return _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xg + 24), p);
}

/* One row at T = 1. Two blocks per iteration: their partials are independent, only the
 * accumulator chain (in block order) is serial. */
static inline float s_mx_row1(const uint8_t *blk, const uint8_t *sc, int nb, const float *xt,
                              const s_mx_consts_t *k) {
    __m256 acc = _mm256_setzero_ps();
    int g = 0;
    for (; g + 2 <= nb; g += 2) {
        __m256 w[4], u[4];
        _mm_prefetch((const char *)(blk + g * MXFP4_BLOCK_BYTES + 512), _MM_HINT_T0);
        s_mx_decode(blk + g * MXFP4_BLOCK_BYTES, k, w);
        s_mx_decode(blk + (g + 1) * MXFP4_BLOCK_BYTES, k, u);
        const float *xg = xt + g * MXFP4_BLOCK;
        __m256 p = s_mx_part(w, xg), q = s_mx_part(u, xg + MXFP4_BLOCK);
        acc = _mm256_fmadd_ps(p, _mm256_set1_ps(cpu_mxfp4_scale24[sc[g]]), acc);
        acc = _mm256_fmadd_ps(q, _mm256_set1_ps(cpu_mxfp4_scale24[sc[g + 1]]), acc);
    }
    for (; g < nb; g++) {
        __m256 w[4];
        s_mx_decode(blk + g * MXFP4_BLOCK_BYTES, k, w);
        acc = _mm256_fmadd_ps(s_mx_part(w, xt + g * MXFP4_BLOCK),
                              _mm256_set1_ps(cpu_mxfp4_scale24[sc[g]]), acc);
    }
    return s_hsum(acc);
}

/* Four rows at T = 1: the block's x (4 vectors) is loaded once for the four rows, and the
 * four accumulator chains are independent (one chain per row would leave the FMA latency
 * exposed). Per row, the summation order is the one of every MXFP4 path. */
static inline void s_mx_rows4(const uint8_t *blk, size_t bstride, const uint8_t *sc, size_t sstride,
                              int nb, const float *xt, const s_mx_consts_t *k, float out[4]) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const uint8_t *b1 = blk + bstride, *b2 = b1 + bstride, *b3 = b2 + bstride;
    const uint8_t *s1 = sc + sstride, *s2 = s1 + sstride, *s3 = s2 + sstride;
    for (int g = 0; g < nb; g++) {
        const float *xg = xt + g * MXFP4_BLOCK;
        const __m256 x0 = _mm256_loadu_ps(xg), x1 = _mm256_loadu_ps(xg + 8);
        const __m256 x2 = _mm256_loadu_ps(xg + 16), x3 = _mm256_loadu_ps(xg + 24);
        const size_t off = (size_t)g * MXFP4_BLOCK_BYTES;
        if ((g & 3) == 0) {
            _mm_prefetch((const char *)(blk + off + 512), _MM_HINT_T0);
            _mm_prefetch((const char *)(b1 + off + 512), _MM_HINT_T0);
            _mm_prefetch((const char *)(b2 + off + 512), _MM_HINT_T0);
            _mm_prefetch((const char *)(b3 + off + 512), _MM_HINT_T0);
        }
        __m256 w[4], p;
#define S_ROW4_STEP(bp, sp, acc)                                                                   \
    s_mx_decode((bp) + off, k, w);                                                                 \
    p = _mm256_mul_ps(w[0], x0);                                                                   \
    p = _mm256_fmadd_ps(w[1], x1, p);                                                              \
    p = _mm256_fmadd_ps(w[2], x2, p);                                                              \
    p = _mm256_fmadd_ps(w[3], x3, p);                                                              \
    acc = _mm256_fmadd_ps(p, _mm256_set1_ps(cpu_mxfp4_scale24[(sp)[g]]), acc)
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

/* One row for NT tokens (2..7, a compile-time constant after inlining) at x0 + i * ldx:
 * each decoded block feeds all NT, so a small batch decodes each weight once. */
static inline __attribute__((always_inline)) void s_mx_rowN(const uint8_t *blk, const uint8_t *sc,
                                                            int nb, const float *x0, size_t ldx,
                                                            const int NT, const s_mx_consts_t *k,
                                                            float *out) {
    __m256 acc[8];
#pragma GCC unroll 8
    for (int i = 0; i < NT; i++)
        acc[i] = _mm256_setzero_ps();
    for (int g = 0; g < nb; g++) {
        __m256 w[4];
        s_mx_decode(blk + g * MXFP4_BLOCK_BYTES, k, w);
        const __m256 s = _mm256_set1_ps(cpu_mxfp4_scale24[sc[g]]);
        const float *xg = x0 + g * MXFP4_BLOCK;
#pragma GCC unroll 8
        for (int i = 0; i < NT; i++)
            acc[i] = _mm256_fmadd_ps(s_mx_part(w, xg + i * ldx), s, acc[i]);
    }
#pragma GCC unroll 8
    for (int i = 0; i < NT; i++)
        out[i] = s_hsum(acc[i]);
}

/* Rows [r0, r1) for the NT tokens at x0 (rows of n values), results into y[t0 + i]. */
static inline __attribute__((always_inline)) void
s_mx_small(const float *x0, int n, const int NT, const ops_mxfp4_mat_t *W, const uint16_t *bias,
           int r0, int r1, float *y, int t0, const s_mx_consts_t *k) {
    const int nb = n / MXFP4_BLOCK;
    const size_t ldy = (size_t)W->rows;
    for (int r = r0; r < r1; r++) {
        float o[8];
        s_mx_rowN(W->blocks + (size_t)r * W->blocks_stride,
                  W->scales + (size_t)r * W->scales_stride, nb, x0, (size_t)n, NT, k, o);
        const float b = bias ? bf16_to_f32(bias[r]) : 0.0f;
        for (int i = 0; i < NT; i++)
            y[(size_t)(t0 + i) * ldy + r] = o[i] + b;
    }
}

static void s_mxfp4_rows(const float *x, int T, const ops_mxfp4_mat_t *W, const uint16_t *bias,
                         int r0, int r1, float *y) {
    const int n = W->cols, nb = n / MXFP4_BLOCK;
    const size_t ldy = (size_t)W->rows;
    const s_mx_consts_t k = s_mx_consts();
    int t = 0;
    /* eight tokens share each decoded block (decode cost spread over 40 FMAs). The
     * reduction runs in chunks of S_MX_KB blocks so that the 8 tokens' x chunk
     * (8 KB) stays in L1 while S_MX_RB rows use it; the accumulators of those rows
     * wait in acc between chunks (same summation order as without chunks). */
    for (; t + 8 <= T; t += 8) {
        const float *x0 = x + (size_t)t * n;
        const size_t n1 = (size_t)n;
        for (int rb = r0; rb < r1; rb += S_MX_RB) {
            const int re = rb + S_MX_RB < r1 ? rb + S_MX_RB : r1;
            __m256 acc[S_MX_RB][8];
            for (int g0 = 0; g0 < nb; g0 += S_MX_KB) {
                const int g1 = g0 + S_MX_KB < nb ? g0 + S_MX_KB : nb;
                for (int r = rb; r < re; r++) {
                    const uint8_t *blk = W->blocks + (size_t)r * W->blocks_stride;
                    const uint8_t *sc = W->scales + (size_t)r * W->scales_stride;
                    __m256 *ar = acc[r - rb];
                    __m256 c0, c1, c2, c3, c4, c5, c6, c7;
                    if (g0 == 0) {
                        c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = _mm256_setzero_ps();
                    } else {
                        c0 = ar[0], c1 = ar[1], c2 = ar[2], c3 = ar[3];
                        c4 = ar[4], c5 = ar[5], c6 = ar[6], c7 = ar[7];
                    }
                    for (int g = g0; g < g1; g++) {
                        __m256 w[4];
                        s_mx_decode(blk + g * MXFP4_BLOCK_BYTES, &k, w);
                        const __m256 s = _mm256_set1_ps(cpu_mxfp4_scale24[sc[g]]);
                        const float *xg = x0 + g * MXFP4_BLOCK;
                        c0 = _mm256_fmadd_ps(s_mx_part(w, xg), s, c0);
                        c1 = _mm256_fmadd_ps(s_mx_part(w, xg + n1), s, c1);
                        c2 = _mm256_fmadd_ps(s_mx_part(w, xg + 2 * n1), s, c2);
                        c3 = _mm256_fmadd_ps(s_mx_part(w, xg + 3 * n1), s, c3);
                        c4 = _mm256_fmadd_ps(s_mx_part(w, xg + 4 * n1), s, c4);
                        c5 = _mm256_fmadd_ps(s_mx_part(w, xg + 5 * n1), s, c5);
                        c6 = _mm256_fmadd_ps(s_mx_part(w, xg + 6 * n1), s, c6);
                        c7 = _mm256_fmadd_ps(s_mx_part(w, xg + 7 * n1), s, c7);
                    }
                    ar[0] = c0, ar[1] = c1, ar[2] = c2, ar[3] = c3;
                    ar[4] = c4, ar[5] = c5, ar[6] = c6, ar[7] = c7;
                }
            }
            for (int r = rb; r < re; r++) {
                float b = bias ? bf16_to_f32(bias[r]) : 0.0f;
                for (int i = 0; i < 8; i++)
                    y[(size_t)(t + i) * ldy + r] = s_hsum(acc[r - rb][i]) + b;
            }
        }
    }
    /* the last T % 8 tokens: one tile of all of them (2..7), each decoded block feeding
     * every token; a single token (decode) takes four rows at a time */
    const int rem = T - t;
    const float *xr = x + (size_t)t * n;
    switch (rem) {
    case 0:
        break;
    case 1: {
        int r = r0;
        for (; r + 4 <= r1; r += 4) {
            float o4[4];
            s_mx_rows4(W->blocks + (size_t)r * W->blocks_stride, W->blocks_stride,
                       W->scales + (size_t)r * W->scales_stride, W->scales_stride, nb, xr, &k, o4);
            for (int i = 0; i < 4; i++)
                y[(size_t)t * ldy + r + i] = o4[i] + (bias ? bf16_to_f32(bias[r + i]) : 0.0f);
        }
        for (; r < r1; r++) {
            const uint8_t *blk = W->blocks + (size_t)r * W->blocks_stride;
            const uint8_t *sc = W->scales + (size_t)r * W->scales_stride;
            float s = s_mx_row1(blk, sc, nb, xr, &k);
            y[(size_t)t * ldy + r] = s + (bias ? bf16_to_f32(bias[r]) : 0.0f);
        }
        break;
    }
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
