/* kern_avx2: AVX2 + FMA inner loops of the CPU backend (compiled with -mavx2
 * -mfma; chosen at run time only where the CPU has both).
 *
 * bf16 rows take x in split order (cpu_split_x: per 16 values, the 8 even ones, then the 8
 * odd ones): each 32-bit lane of the weights holds an (even, odd) pair, a 16-bit shift left
 * gives the even weights as floats and a blend of the high halves over that gives the odd
 * ones (both exact). MXFP4 rows take x in nibble order (cpu_nibble_x: per 8 values, the 4
 * even ones, then the 4 odd ones); their blocks are decoded in registers into the exact
 * weights (see s_mx_wdec).
 *
 * Both formats then share one summation order (the batch-invariance contract of
 * cpu_kern.h): per (row, token) one 8-lane accumulator takes the columns 8 at a time in
 * ascending order of x as given, then s_hsum, then the n % 16 tail columns one by one
 * (bf16 only; MXFP4 rows are whole blocks), then the bias. Paths:
 * - T = 1 (decode): bf16 eight rows per pass, MXFP4 four, each x vector loaded once per
 *   pass; bf16 with 2 or 3 tokens left after the tiles: those tokens together, four rows per
 *   pass;
 * - bf16, T >= 4: tiles of 3 rows x 4 tokens (12 accumulators, all 16 registers: the inner
 *   loop is written in assembly), the reduction in L1-sized column chunks with the
 *   accumulators parked in between;
 * - MXFP4, T >= S_MX_BUF_T: the task's rows are decoded once into an fp32 buffer on
 *   the stack (L2-resident), then run through the same 3 x 4 tiles as bf16;
 * - MXFP4, 2 <= T < S_MX_BUF_T (a few tokens per expert in batched decode): two rows
 *   at a time, each decoded block feeding up to 8 tokens. */
#include <immintrin.h>
#include <math.h>

#include "bf16.h"
#include "cpu_kern.h"
#include "mxfp4.h"

#define S_KC          512         /* columns per reduction chunk of the 4-token tile (8 KB of x) */
#define S_RB          8           /* row triples sharing one x chunk, at most */
#define S_GROUP_BYTES (96u << 10) /* weights of one row group of the token tiles, at most */
#define S_MX_BUF_T    12    /* MXFP4 calls with at least this many tokens decode into a buffer */
#define S_MX_BUF_MAX  49152 /* floats of that buffer (192 KB on the stack) */

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

/* The 16 weights of a row at position c (a multiple of 16) of the split order, as two
 * vectors. bf16 (BF = 1): one 32-byte load, whose 32-bit lanes hold the pairs (even, odd); a
 * 16-bit shift left gives the even weights as floats (s_wlo), and blending the low halves of
 * that (zeros) into the load gives the odd ones (s_whi; no mask register), both exact. fp32
 * (BF = 0, the MXFP4 buffer, already in the order of x): two loads. */
static inline __attribute__((always_inline)) __m256 s_wlo(const void *w, size_t c, const int BF) {
    if (!BF) return _mm256_loadu_ps((const float *)w + c);
    __m256i v = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + c));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

static inline __attribute__((always_inline)) __m256 s_whi(const void *w, size_t c, const int BF) {
    if (!BF) return _mm256_loadu_ps((const float *)w + c + 8);
    __m256i v = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + c));
    __asm__("" : "+x"(v)); /* a reload: keeping s_wlo's values alive would spill the tiles */
    return _mm256_castsi256_ps(_mm256_blend_epi16(v, _mm256_slli_epi32(v, 16), 0x55));
}

/* s_wlo and s_whi together; bf16: from one load (where both stay live anyway). */
static inline __attribute__((always_inline)) void s_w16(const void *w, size_t c, const int BF,
                                                        __m256 *lo, __m256 *hi) {
    if (!BF) {
        *lo = s_wlo(w, c, 0);
        *hi = s_whi(w, c, 0);
        return;
    }
    const __m256i v = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + c));
    const __m256i l = _mm256_slli_epi32(v, 16);
    *lo = _mm256_castsi256_ps(l);
    *hi = _mm256_castsi256_ps(_mm256_blend_epi16(v, l, 0x55));
}

/* a + the 16 weights of a row at split position c times x (xv: the first 8 values of the
 * split group, xw: the next 8), in that order. */
static inline __attribute__((always_inline)) __m256 s_fma16(const void *w, size_t c, __m256 xv,
                                                            __m256 xw, __m256 a, const int BF) {
    __m256 lo, hi;
    s_w16(w, c, BF, &lo, &hi);
    a = _mm256_fmadd_ps(lo, xv, a);
    return _mm256_fmadd_ps(hi, xw, a);
}

/* s_fma16 for two tokens: *a += the 16 weights . (xv, xw), *b += the same . (yv, yw). */
static inline __attribute__((always_inline)) void s_fma16x2(const void *w, size_t c, __m256 xv,
                                                            __m256 xw, __m256 yv, __m256 yw,
                                                            __m256 *a, __m256 *b, const int BF) {
    __m256 lo, hi;
    s_w16(w, c, BF, &lo, &hi);
    *a = _mm256_fmadd_ps(lo, xv, *a);
    *b = _mm256_fmadd_ps(lo, yv, *b);
    *a = _mm256_fmadd_ps(hi, xw, *a);
    *b = _mm256_fmadd_ps(hi, yw, *b);
}

/* s_fma16 for three tokens at x0, x1, x2 (split position c): *a, *b, *d += the 16 weights .
 * each token's 16 values, x from memory operands; the weights in two loads (s_wlo, s_whi), as
 * with 12 accumulators live s_w16's pair would not fit in registers beside them. */
static inline __attribute__((always_inline)) void s_fma16x3(const void *w, size_t c,
                                                            const float *x0, const float *x1,
                                                            const float *x2, __m256 *a, __m256 *b,
                                                            __m256 *d, const int BF) {
    const __m256 lo = s_wlo(w, c, BF);
    *a = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x0 + c), *a);
    *b = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x1 + c), *b);
    *d = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x2 + c), *d);
    const __m256 hi = s_whi(w, c, BF);
    *a = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x0 + c + 8), *a);
    *b = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x1 + c + 8), *b);
    *d = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x2 + c + 8), *d);
}

/* Prefetches lines l and l + 1 (those below nl) of nx: the next four rows, two lines per
 * 16-column step, in the four-row loops. */
static inline __attribute__((always_inline)) void s_pf2(const char *nx, int l, int nl) {
    if (l < nl) _mm_prefetch(nx + (size_t)l * 64, _MM_HINT_T0);
    if (l + 1 < nl) _mm_prefetch(nx + (size_t)l * 64 + 64, _MM_HINT_T0);
}

static inline __attribute__((always_inline)) float s_wscalar(const void *w, size_t c,
                                                             const int BF) {
    return BF ? bf16_to_f32(((const uint16_t *)w)[c]) : ((const float *)w)[c];
}

/* The end of every path: s_hsum(acc), the tail columns n16..n one by one (natural order in
 * both x and w), the bias. */
static inline __attribute__((always_inline)) float
s_finish(__m256 acc, const void *w, const float *x, int n16, int n, float bias, const int BF) {
    float s = s_hsum(acc);
    for (int c = n16; c < n; c++)
        s = fmaf(s_wscalar(w, (size_t)c, BF), x[c], s);
    return s + bias;
}

/* The 3 x 4 tile's reduction over split columns [c0, c1) (multiples of 16, c0 < c1): rows wa, wb,
 * wc by tokens x0..x3, accumulators a (row wa), b (wb), d (wc). In assembly because the tile
 * needs all 16 vector registers (12 accumulators, 3 weight vectors, 1 x vector) and gcc spills
 * accumulators when it allocates them itself. bf16 (BF = 1): the even weights are the loaded
 * lanes shifted left 16; the odd ones replace them in place by blending the high halves of the
 * same 32 bytes over the zeroed low halves (vpblendw from memory). */
static inline __attribute__((always_inline)) void
s_tile34(const void *wa, const void *wb, const void *wc, const float *x0, const float *x1,
         const float *x2, const float *x3, int c0, int c1, const int BF, __m256 acc[12]) {
    __m256 a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    __m256 b0 = acc[4], b1 = acc[5], b2 = acc[6], b3 = acc[7];
    __m256 d0 = acc[8], d1 = acc[9], d2 = acc[10], d3 = acc[11];
    long c = c0;
    const long ce = c1;
    /* the seven pointers go through memory, as asm takes at most 30 operands */
    const void *const ptr[7] = {wa, wb, wc, x0, x1, x2, x3};
    /* clang-format off */
#define S_X4(off) \
    "vmovups " #off "(%%rdi,%[c],4), %%ymm15\n\t" \
    "vfmadd231ps %%ymm15, %%ymm12, %[a0]\n\t" \
    "vfmadd231ps %%ymm15, %%ymm13, %[b0]\n\t" \
    "vfmadd231ps %%ymm15, %%ymm14, %[d0]\n\t" \
    "vmovups " #off "(%%r8,%[c],4), %%ymm15\n\t" \
    "vfmadd231ps %%ymm15, %%ymm12, %[a1]\n\t" \
    "vfmadd231ps %%ymm15, %%ymm13, %[b1]\n\t" \
    "vfmadd231ps %%ymm15, %%ymm14, %[d1]\n\t" \
    "vmovups " #off "(%%r9,%[c],4), %%ymm15\n\t" \
    "vfmadd231ps %%ymm15, %%ymm12, %[a2]\n\t" \
    "vfmadd231ps %%ymm15, %%ymm13, %[b2]\n\t" \
    "vfmadd231ps %%ymm15, %%ymm14, %[d2]\n\t" \
    "vmovups " #off "(%%r10,%[c],4), %%ymm15\n\t" \
    "vfmadd231ps %%ymm15, %%ymm12, %[a3]\n\t" \
    "vfmadd231ps %%ymm15, %%ymm13, %[b3]\n\t" \
    "vfmadd231ps %%ymm15, %%ymm14, %[d3]\n\t"
#define S_LOADPTR \
    "mov (%[p]), %%rax\n\t" \
    "mov 8(%[p]), %%rdx\n\t" \
    "mov 16(%[p]), %%rsi\n\t" \
    "mov 24(%[p]), %%rdi\n\t" \
    "mov 32(%[p]), %%r8\n\t" \
    "mov 40(%[p]), %%r9\n\t" \
    "mov 48(%[p]), %%r10\n\t" \
    "1:\n\t"
#define S_BODY_BF16 \
    "vmovdqu (%%rax,%[c],2), %%ymm12\n\t" \
    "vpslld $16, %%ymm12, %%ymm12\n\t" \
    "vmovdqu (%%rdx,%[c],2), %%ymm13\n\t" \
    "vpslld $16, %%ymm13, %%ymm13\n\t" \
    "vmovdqu (%%rsi,%[c],2), %%ymm14\n\t" \
    "vpslld $16, %%ymm14, %%ymm14\n\t" \
    S_X4(0) \
    "vpblendw $0xaa, (%%rax,%[c],2), %%ymm12, %%ymm12\n\t" \
    "vpblendw $0xaa, (%%rdx,%[c],2), %%ymm13, %%ymm13\n\t" \
    "vpblendw $0xaa, (%%rsi,%[c],2), %%ymm14, %%ymm14\n\t" \
    S_X4(32)
#define S_BODY_F32 \
    "vmovups (%%rax,%[c],4), %%ymm12\n\t" \
    "vmovups (%%rdx,%[c],4), %%ymm13\n\t" \
    "vmovups (%%rsi,%[c],4), %%ymm14\n\t" \
    S_X4(0) \
    "vmovups 32(%%rax,%[c],4), %%ymm12\n\t" \
    "vmovups 32(%%rdx,%[c],4), %%ymm13\n\t" \
    "vmovups 32(%%rsi,%[c],4), %%ymm14\n\t" \
    S_X4(32)
#define S_LOOP \
    "add $16, %[c]\n\t" \
    "cmp %[ce], %[c]\n\t" \
    "jl 1b\n\t"
#define S_TILE_OPS \
    [a0] "+x"(a0), [a1] "+x"(a1), [a2] "+x"(a2), [a3] "+x"(a3), \
    [b0] "+x"(b0), [b1] "+x"(b1), [b2] "+x"(b2), [b3] "+x"(b3), \
    [d0] "+x"(d0), [d1] "+x"(d1), [d2] "+x"(d2), [d3] "+x"(d3), [c] "+r"(c)
#define S_TILE_CLOBBERS \
    "xmm12", "xmm13", "xmm14", "xmm15", "rax", "rdx", "rsi", "rdi", "r8", "r9", "r10", \
    "memory", "cc"
    if (BF)
        __asm__(S_LOADPTR S_BODY_BF16 S_LOOP
                : S_TILE_OPS
                : [p] "r"(ptr), [ce] "r"(ce)
                : S_TILE_CLOBBERS);
    else
        __asm__(S_LOADPTR S_BODY_F32 S_LOOP
                : S_TILE_OPS
                : [p] "r"(ptr), [ce] "r"(ce)
                : S_TILE_CLOBBERS);
#undef S_X4
#undef S_LOADPTR
#undef S_BODY_BF16
#undef S_BODY_F32
#undef S_LOOP
#undef S_TILE_OPS
#undef S_TILE_CLOBBERS
    /* clang-format on */
    acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
    acc[4] = b0, acc[5] = b1, acc[6] = b2, acc[7] = b3;
    acc[8] = d0, acc[9] = d1, acc[10] = d2, acc[11] = d3;
}

/* y[t][yr + i] = w_i . x[t] + bias[yr + i] for rows i < nr (row i at w + i * ws elements of
 * bf16 (BF = 1) or fp32 in split order (BF = 0)) and tokens t < T (x: [T][n] in split order,
 * y: [T][ldy]). Per (row, token) the 8-lane accumulator takes, for each 16 columns, the even
 * (split positions c..c+7), then the odd ones (c+8..c+15). */
static inline __attribute__((always_inline)) void s_rows(const float *x, int T, int n,
                                                         const void *w, size_t ws, int nr,
                                                         const uint16_t *bias, int yr, float *y,
                                                         size_t ldy, const int BF) {
    const int n16 = n & ~15;
    const size_t esz = BF ? 2 : 4;
#define S_ROW(i)  ((const char *)w + (size_t)(i)*ws * esz)
#define S_BIAS(i) (bias ? bf16_to_f32(bias[yr + (i)]) : 0.0f)
    const int T4 = T & ~3;
    /* tokens [0, T4): row groups of up to S_RB triples (at most ~S_GROUP_BYTES of weights), each
     * through every four-token tile while it sits in L2. Three rows x four tokens per tile (12
     * accumulators, each x vector loaded once for the three rows); the reduction runs in chunks
     * of S_KC columns so that the x chunk stays in L1 for the group's triples (accumulators
     * wait in acc; same summation order). bf16 rows stream from memory: while a group runs, the
     * next group's rows are prefetched, a few lines per tile, so that only a task's first group
     * waits for memory (and that one prefetches two triples ahead in its first pass). */
    const size_t row_bytes = (size_t)n * esz;
    const int nchunks = (n16 + S_KC - 1) / S_KC;
    int gmax = (int)(S_GROUP_BYTES / (3 * row_bytes));
    gmax = gmax < 1 ? 1 : gmax > S_RB ? S_RB : gmax;
    int r = 0;
    if (T4 > 0)
        for (; r + 3 <= nr;) {
            const int np = (nr - r) / 3 < gmax ? (nr - r) / 3 : gmax;
            /* the next group's rows (up to 3 gmax of them, or the leftover rows) */
            const char *pf_row = S_ROW(r + 3 * np);
            int pf_rows = nr - r - 3 * np < 3 * gmax ? nr - r - 3 * np : 3 * gmax;
            size_t pf_off = 0;
            const size_t calls = (size_t)(T4 / 4) * nchunks * np;
            const int quota =
                BF && calls ? (int)(((size_t)pf_rows * ((row_bytes + 63) / 64) + calls - 1) / calls)
                            : 0;
            for (int t = 0; t < T4; t += 4) {
                const float *x0 = x + (size_t)t * n, *x1 = x0 + n, *x2 = x1 + n, *x3 = x2 + n;
                const float *xs[4] = {x0, x1, x2, x3};
                __m256 acc[S_RB][12];
                for (int p = 0; p < np; p++)
                    for (int i = 0; i < 12; i++)
                        acc[p][i] = _mm256_setzero_ps();
                for (int c0 = 0; c0 < n16; c0 += S_KC) {
                    const int c1 = c0 + S_KC < n16 ? c0 + S_KC : n16;
                    for (int p = 0; p < np; p++) {
                        const void *wa = S_ROW(r + 3 * p), *wb = S_ROW(r + 3 * p + 1);
                        const void *wc = S_ROW(r + 3 * p + 2);
                        if (BF && r == 0 && t == 0) { /* first pass: two triples ahead */
                            int pq = p + 2, cq = c0;
                            if (pq >= np) pq -= np, cq += S_KC;
                            if (cq < n16) {
                                const int cl = cq + S_KC < n16 ? cq + S_KC : n16;
                                for (int j = 0; j < 3; j++) {
                                    const char *rw = S_ROW(r + 3 * pq + j);
                                    for (size_t l = (size_t)cq * esz; l < (size_t)cl * esz; l += 64)
                                        _mm_prefetch(rw + l, _MM_HINT_T0);
                                }
                            }
                        }
                        for (int q = 0; q < quota && pf_rows > 0; q++) {
                            _mm_prefetch(pf_row + pf_off, _MM_HINT_T1);
                            if ((pf_off += 64) >= row_bytes)
                                pf_off = 0, pf_row += ws * esz, pf_rows--;
                        }
                        s_tile34(wa, wb, wc, x0, x1, x2, x3, c0, c1, BF, acc[p]);
                    }
                }
                for (int p = 0; p < np; p++)
                    for (int j = 0; j < 3; j++) {
                        const void *wj = S_ROW(r + 3 * p + j);
                        for (int i = 0; i < 4; i++)
                            y[(size_t)(t + i) * ldy + yr + r + 3 * p + j] = s_finish(
                                acc[p][4 * j + i], wj, xs[i], n16, n, S_BIAS(r + 3 * p + j), BF);
                    }
            }
            r += 3 * np;
        }
    for (; r < nr; r++) /* the last one or two rows: one row x four tokens */
        for (int t = 0; t < T4; t += 4) {
            const float *x0 = x + (size_t)t * n, *x1 = x0 + n, *x2 = x1 + n, *x3 = x2 + n;
            const float *xs[4] = {x0, x1, x2, x3};
            const void *wa = S_ROW(r);
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int c = 0; c < n16; c += 16) {
                __m256 u = s_wlo(wa, (size_t)c, BF);
                a0 = _mm256_fmadd_ps(u, _mm256_loadu_ps(x0 + c), a0);
                a1 = _mm256_fmadd_ps(u, _mm256_loadu_ps(x1 + c), a1);
                a2 = _mm256_fmadd_ps(u, _mm256_loadu_ps(x2 + c), a2);
                a3 = _mm256_fmadd_ps(u, _mm256_loadu_ps(x3 + c), a3);
                u = s_whi(wa, (size_t)c, BF);
                a0 = _mm256_fmadd_ps(u, _mm256_loadu_ps(x0 + c + 8), a0);
                a1 = _mm256_fmadd_ps(u, _mm256_loadu_ps(x1 + c + 8), a1);
                a2 = _mm256_fmadd_ps(u, _mm256_loadu_ps(x2 + c + 8), a2);
                a3 = _mm256_fmadd_ps(u, _mm256_loadu_ps(x3 + c + 8), a3);
            }
            const __m256 av[4] = {a0, a1, a2, a3};
            for (int i = 0; i < 4; i++)
                y[(size_t)(t + i) * ldy + yr + r] =
                    s_finish(av[i], wa, xs[i], n16, n, S_BIAS(r), BF);
        }
    int t = T4;
    /* The last T % 4 tokens share each weight vector where they can, so that the rows stream
     * from memory once for them instead of once per token; each (row, token) accumulator sums
     * as in the other paths, and the next four rows are prefetched as in the one-token loop
     * below. A batch of exactly 3: four rows x three tokens per pass (12 accumulators, x from
     * memory operands). */
    if (T == 3) {
        const float *x0 = x + (size_t)t * n, *x1 = x0 + n, *x2 = x1 + n;
        float *y0 = y + (size_t)t * ldy + yr, *y1 = y0 + ldy, *y2 = y1 + ldy;
        int r = 0;
        for (; r + 4 <= nr; r += 4) {
            __m256 a[4], b[4], d[4];
            for (int i = 0; i < 4; i++)
                a[i] = b[i] = d[i] = _mm256_setzero_ps();
            const char *nx = (const char *)S_ROW(r + 4);
            const int nl = (int)((4 * ws * esz + 63) / 64);
            for (int c = 0, l = 0; c < n16; c += 16, l += 2) {
                s_pf2(nx, l, nl);
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++)
                    s_fma16x3(S_ROW(r + i), (size_t)c, x0, x1, x2, &a[i], &b[i], &d[i], BF);
            }
            for (int i = 0; i < 4; i++) {
                y0[r + i] = s_finish(a[i], S_ROW(r + i), x0, n16, n, S_BIAS(r + i), BF);
                y1[r + i] = s_finish(b[i], S_ROW(r + i), x1, n16, n, S_BIAS(r + i), BF);
                y2[r + i] = s_finish(d[i], S_ROW(r + i), x2, n16, n, S_BIAS(r + i), BF);
            }
        }
        for (; r < nr; r++) {
            __m256 a = _mm256_setzero_ps(), b = a, d = a;
            for (int c = 0; c < n16; c += 16)
                s_fma16x3(S_ROW(r), (size_t)c, x0, x1, x2, &a, &b, &d, BF);
            y0[r] = s_finish(a, S_ROW(r), x0, n16, n, S_BIAS(r), BF);
            y1[r] = s_finish(b, S_ROW(r), x1, n16, n, S_BIAS(r), BF);
            y2[r] = s_finish(d, S_ROW(r), x2, n16, n, S_BIAS(r), BF);
        }
        t += 3;
    }
    /* two tokens at a time (batches of 2, 6 and 7): four rows per pass, 8 accumulators */
    for (; t + 2 <= T; t += 2) {
        const float *x0 = x + (size_t)t * n, *x1 = x0 + n;
        float *y0 = y + (size_t)t * ldy + yr, *y1 = y0 + ldy;
        int r = 0;
        for (; r + 4 <= nr; r += 4) {
            __m256 a[4], b[4];
            for (int i = 0; i < 4; i++)
                a[i] = b[i] = _mm256_setzero_ps();
            const char *nx = (const char *)S_ROW(r + 4);
            const int nl = (int)((4 * ws * esz + 63) / 64);
            for (int c = 0, l = 0; c < n16; c += 16, l += 2) {
                s_pf2(nx, l, nl);
                const __m256 x0v = s_ldreg(x0 + c), x1v = s_ldreg(x1 + c);
                const __m256 x0w = s_ldreg(x0 + c + 8), x1w = s_ldreg(x1 + c + 8);
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++)
                    s_fma16x2(S_ROW(r + i), (size_t)c, x0v, x0w, x1v, x1w, &a[i], &b[i], BF);
            }
            for (int i = 0; i < 4; i++) {
                y0[r + i] = s_finish(a[i], S_ROW(r + i), x0, n16, n, S_BIAS(r + i), BF);
                y1[r + i] = s_finish(b[i], S_ROW(r + i), x1, n16, n, S_BIAS(r + i), BF);
            }
        }
        for (; r < nr; r++) {
            __m256 a = _mm256_setzero_ps(), b = a;
            for (int c = 0; c < n16; c += 16)
                s_fma16x2(S_ROW(r), (size_t)c, s_ldreg(x0 + c), s_ldreg(x0 + c + 8),
                          s_ldreg(x1 + c), s_ldreg(x1 + c + 8), &a, &b, BF);
            y0[r] = s_finish(a, S_ROW(r), x0, n16, n, S_BIAS(r), BF);
            y1[r] = s_finish(b, S_ROW(r), x1, n16, n, S_BIAS(r), BF);
        }
    }
    /* the last T % 4 tokens (T = 1: decode): eight rows at a time, then four, one accumulator
     * each, so that independent FMA chains hide the latency that one chain per row would
     * expose. Eight rows and no software prefetch stream bf16 weights faster than four rows
     * that prefetch the next four (92% of a plain read pass beside it against 84%, two
     * threads, both in one process, BENCHMARKS.md); at four rows the prefetch is needed. */
    for (; t < T; t++) {
        const float *xt = x + (size_t)t * n;
        float *yt = y + (size_t)t * ldy + yr;
        int r = 0;
        for (; r + 8 <= nr; r += 8) {
            __m256 a[8];
            for (int i = 0; i < 8; i++)
                a[i] = _mm256_setzero_ps();
            for (int c = 0; c < n16; c += 16) {
                const __m256 xv = s_ldreg(xt + c), xw = s_ldreg(xt + c + 8);
#pragma GCC unroll 8
                for (int i = 0; i < 8; i++)
                    a[i] = s_fma16(S_ROW(r + i), (size_t)c, xv, xw, a[i], BF);
            }
            for (int i = 0; i < 8; i++)
                yt[r + i] = s_finish(a[i], S_ROW(r + i), xt, n16, n, S_BIAS(r + i), BF);
        }
        for (; r + 4 <= nr; r += 4) {
            const void *w0 = S_ROW(r), *w1 = S_ROW(r + 1), *w2 = S_ROW(r + 2), *w3 = S_ROW(r + 3);
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            /* the next four rows, two cache lines per step (as s_mx_rows4): four interleaved
             * row streams are otherwise fetched late from DRAM */
            const char *nx = (const char *)S_ROW(r + 4);
            const int nl = (int)((4 * ws * esz + 63) / 64);
            for (int c = 0, l = 0; c < n16; c += 16, l += 2) {
                s_pf2(nx, l, nl);
                __m256 xv = s_ldreg(xt + c);
                a0 = _mm256_fmadd_ps(s_wlo(w0, (size_t)c, BF), xv, a0);
                a1 = _mm256_fmadd_ps(s_wlo(w1, (size_t)c, BF), xv, a1);
                a2 = _mm256_fmadd_ps(s_wlo(w2, (size_t)c, BF), xv, a2);
                a3 = _mm256_fmadd_ps(s_wlo(w3, (size_t)c, BF), xv, a3);
                xv = s_ldreg(xt + c + 8);
                a0 = _mm256_fmadd_ps(s_whi(w0, (size_t)c, BF), xv, a0);
                a1 = _mm256_fmadd_ps(s_whi(w1, (size_t)c, BF), xv, a1);
                a2 = _mm256_fmadd_ps(s_whi(w2, (size_t)c, BF), xv, a2);
                a3 = _mm256_fmadd_ps(s_whi(w3, (size_t)c, BF), xv, a3);
            }
            yt[r] = s_finish(a0, w0, xt, n16, n, S_BIAS(r), BF);
            yt[r + 1] = s_finish(a1, w1, xt, n16, n, S_BIAS(r + 1), BF);
            yt[r + 2] = s_finish(a2, w2, xt, n16, n, S_BIAS(r + 2), BF);
            yt[r + 3] = s_finish(a3, w3, xt, n16, n, S_BIAS(r + 3), BF);
        }
        for (; r < nr; r++) {
            const void *w0 = S_ROW(r);
            __m256 a0 = _mm256_setzero_ps();
            for (int c = 0; c < n16; c += 16) {
                a0 = _mm256_fmadd_ps(s_wlo(w0, (size_t)c, BF), _mm256_loadu_ps(xt + c), a0);
                a0 = _mm256_fmadd_ps(s_whi(w0, (size_t)c, BF), _mm256_loadu_ps(xt + c + 8), a0);
            }
            yt[r] = s_finish(a0, w0, xt, n16, n, S_BIAS(r), BF);
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

/* MXFP4 decoding. x arrives in nibble order (cpu_nibble_x: per 8 values, the 4 even ones,
 * then the 4 odd ones), the order in which the decodes below leave the weights. The 16 bytes
 * of a block are loaded into both 128-bit lanes; a 4-bit shift of the high lane (vpsrlvd)
 * and a mask leave the lo nibbles (even weights) in the low lane and the hi nibbles (odd
 * weights) in the high one, and one pshufb looks all 32 up in a 16-entry table.
 *
 * s_mx_wdec (T <= 3) then needs no int -> float conversion and no multiply: the table gives
 * u = 12 + the doubled E2M1 integer (0..24), and the block's scale byte s picks M, the bits
 * of 2^(s - 105) (cpu_mxfp4_magic), a float whose mantissa's last bit is worth 2^(s - 128),
 * so M | u is the float 2^(s - 105) + u * 2^(s - 128). Two blends put M's two nonzero bytes
 * beside 8 u bytes in each lane, so each of the four pshufbs that spread 4 u bytes per lane
 * into 32-bit lanes writes M | u directly; subtracting the same float for u = 12
 * (cpu_mxfp4_magic_zero) leaves (u - 12) * 2^(s - 128), the exact weight (both operands lie
 * within a factor of two, so the difference is exact, subnormal results included). 16 vector
 * ops per block instead of 20. For s above S_MX_MAGIC_MAX the tables hold NaN (M's exponent
 * would overflow), so such rows come out NaN and s_mxfp4_rows computes them again
 * (s_mx_redo). s_mx_wdec_cvt (T >= S_MX_CVT_NT) spreads the doubled integer into the top
 * byte of each 32-bit lane instead (that integer times 2^24), converts and multiplies by
 * 2^(s - 152) (cpu_mxfp4_scale24): the same weights, and faster once several tokens share a
 * decoded block (BENCHMARKS.md, fifth session). */

#define S_MX_MAGIC_MAX 232 /* largest scale byte whose magic float is finite */
#define S_MX_CVT_NT    4   /* token tiles of at least this many tokens use s_mx_wdec_cvt */

/* 32-bit lane i of spread v (per 128-bit lane) <- u byte 4v + i, zero, M's bytes 2 and 3 (at
 * 10, 11 beside u bytes 0-7, at 2, 3 beside u bytes 8-15) */
static const int8_t s_mx_spread[4][32] __attribute__((aligned(32))) = {
#define S_SP(a, m)                                                                                 \
    a, -128, m, m + 1, a + 1, -128, m, m + 1, a + 2, -128, m, m + 1, a + 3, -128, m, m + 1
    {S_SP(0, 10), S_SP(0, 10)},
    {S_SP(4, 10), S_SP(4, 10)},
    {S_SP(8, 2), S_SP(8, 2)},
    {S_SP(12, 2), S_SP(12, 2)},
#undef S_SP
};

/* 32-bit lane i of vector v (per 128-bit lane) <- byte 4v + i in its top byte, zeros below */
static const int8_t s_mx_top[4][32] __attribute__((aligned(32))) = {
#define S_TOP(a)                                                                                   \
    -128, -128, -128, a, -128, -128, -128, a + 1, -128, -128, -128, a + 2, -128, -128, -128, a + 3
    {S_TOP(0), S_TOP(0)},
    {S_TOP(4), S_TOP(4)},
    {S_TOP(8), S_TOP(8)},
    {S_TOP(12), S_TOP(12)},
#undef S_TOP
};

typedef struct {
    __m256i ulut, vlut, shift, nib;
    /* s_mx_spread where the spreads may live in registers; NULL: through s_mx_hide, one
     * memory operand per use (s_mx_rows4: in registers beside its 4 accumulators and 4 x
     * vectors they pushed the accumulators onto the stack) */
    const __m256i *sp;
} s_mx_consts_t;

static inline s_mx_consts_t s_mx_consts(const __m256i *sp) {
    s_mx_consts_t k;
    k.vlut = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)mxfp4_e2m1_x2));
    k.ulut = _mm256_add_epi8(k.vlut, _mm256_set1_epi8(12));
    k.shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
    k.nib = _mm256_set1_epi8(0x0f);
    k.sp = sp;
    return k;
}

/* p, hidden from the optimizer so that loads through it stay memory operands. */
static inline __attribute__((always_inline)) const __m256i *s_mx_hide(const void *p) {
    const __m256i *q = p;
    __asm__("" : "+r"(q));
    return q;
}

/* The block's 32 nibbles as indices: lo nibbles in the low lane, hi nibbles in the high. */
static inline __attribute__((always_inline)) __m256i s_mx_nibbles(const uint8_t *blk,
                                                                  const s_mx_consts_t *k) {
    const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)blk));
    return _mm256_and_si256(_mm256_srlv_epi32(b, k->shift), k->nib);
}

/* Decodes one block (16 bytes, scale byte sc) into w[4]: its 32 exact weights in nibble
 * order, or NaNs when sc > S_MX_MAGIC_MAX. */
static inline __attribute__((always_inline)) void s_mx_wdec(const uint8_t *blk, uint8_t sc,
                                                            const s_mx_consts_t *k, __m256 w[4]) {
    const __m256i u = _mm256_shuffle_epi8(k->ulut, s_mx_nibbles(blk, k));
    const __m256i m = _mm256_set1_epi32((int32_t)cpu_mxfp4_magic[sc]);
    const __m256i lo = _mm256_blend_epi32(u, m, 0xcc), hi = _mm256_blend_epi32(u, m, 0x33);
    const __m256 c = _mm256_set1_ps(cpu_mxfp4_magic_zero[sc]);
    const __m256i *sp = k->sp ? k->sp : s_mx_hide(s_mx_spread);
#define S_MX_W(v, i)                                                                               \
    _mm256_sub_ps(_mm256_castsi256_ps(_mm256_shuffle_epi8(v, _mm256_load_si256(sp + i))), c)
    w[0] = S_MX_W(lo, 0);
    w[1] = S_MX_W(lo, 1);
    w[2] = S_MX_W(hi, 2);
    w[3] = S_MX_W(hi, 3);
#undef S_MX_W
}

/* The same 32 weights as s_mx_wdec by int -> float and the scale multiply, for any scale
 * byte. */
static inline __attribute__((always_inline)) void
s_mx_wdec_cvt(const uint8_t *blk, uint8_t sc, const s_mx_consts_t *k, __m256 w[4]) {
    const __m256i v = _mm256_shuffle_epi8(k->vlut, s_mx_nibbles(blk, k));
    const __m256 f = _mm256_set1_ps(cpu_mxfp4_scale24[sc]);
    const __m256i *tp = s_mx_hide(s_mx_top);
#define S_MX_W(i)                                                                                  \
    _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_shuffle_epi8(v, _mm256_load_si256(tp + i))), f)
    w[0] = S_MX_W(0);
    w[1] = S_MX_W(1);
    w[2] = S_MX_W(2);
    w[3] = S_MX_W(3);
#undef S_MX_W
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
        const __m256 x0 = _mm256_loadu_ps(xg), x1 = _mm256_loadu_ps(xg + 8);
        const __m256 x2 = _mm256_loadu_ps(xg + 16), x3 = _mm256_loadu_ps(xg + 24);
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
            const uint8_t *bp = blk + r * bstride + g * MXFP4_BLOCK_BYTES;
            __m256 w[4];
            if (NT >= S_MX_CVT_NT)
                s_mx_wdec_cvt(bp, sc[r * sstride + g], k, w);
            else
                s_mx_wdec(bp, sc[r * sstride + g], k, w);
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

/* Rows [r0, r1) for all T tokens (n <= S_MX_BUF_MAX): each row's blocks decoded with
 * s_mx_wdec_cvt (any scale byte) into an fp32 buffer on the stack, then the 3 x 4 tiles of the
 * bf16 path over it, which sum in the same order as the paths above. */
static void s_mx_buffered(const float *x, int T, const ops_mxfp4_mat_t *W, const uint16_t *bias,
                          int r0, int r1, float *y, const s_mx_consts_t *k) {
    const int n = W->cols, nb = n / MXFP4_BLOCK;
    float wbuf[S_MX_BUF_MAX] __attribute__((aligned(64)));
    const int rbw = S_MX_BUF_MAX / n >= 3 ? S_MX_BUF_MAX / n / 3 * 3 : S_MX_BUF_MAX / n;
    for (int rb = r0; rb < r1; rb += rbw) {
        const int nr = r1 - rb < rbw ? r1 - rb : rbw;
        for (int i = 0; i < nr; i++) {
            const uint8_t *blk = W->blocks + (size_t)(rb + i) * W->blocks_stride;
            const uint8_t *sc = W->scales + (size_t)(rb + i) * W->scales_stride;
            float *wr = wbuf + (size_t)i * n;
            for (int g = 0; g < nb; g++) {
                __m256 w[4];
                s_mx_wdec_cvt(blk + g * MXFP4_BLOCK_BYTES, sc[g], k, w);
                _mm256_store_ps(wr + g * MXFP4_BLOCK, w[0]);
                _mm256_store_ps(wr + g * MXFP4_BLOCK + 8, w[1]);
                _mm256_store_ps(wr + g * MXFP4_BLOCK + 16, w[2]);
                _mm256_store_ps(wr + g * MXFP4_BLOCK + 24, w[3]);
            }
        }
        s_rows(x, T, n, wbuf, (size_t)n, nr, bias, rb, y, (size_t)W->rows, 0);
    }
}

/* Rows [r0, r1) for all T tokens again, one (row, token) at a time with s_mx_wdec_cvt (any
 * scale byte, any width): the same operations in the same order as s_mx_rows4 and
 * s_mx_rowsN, for results that s_mx_wdec's NaN blocks spoiled. */
static void s_mx_redo(const float *x, int T, const ops_mxfp4_mat_t *W, const uint16_t *bias, int r0,
                      int r1, float *y, const s_mx_consts_t *k) {
    const int n = W->cols, nb = n / MXFP4_BLOCK;
    for (int r = r0; r < r1; r++) {
        const uint8_t *blk = W->blocks + (size_t)r * W->blocks_stride;
        const uint8_t *sc = W->scales + (size_t)r * W->scales_stride;
        const float b = bias ? bf16_to_f32(bias[r]) : 0.0f;
        for (int t = 0; t < T; t++) {
            __m256 acc = _mm256_setzero_ps();
            for (int g = 0; g < nb; g++) {
                __m256 w[4];
                s_mx_wdec_cvt(blk + g * MXFP4_BLOCK_BYTES, sc[g], k, w);
                acc = s_mx_fma4(w, x + (size_t)t * n + g * MXFP4_BLOCK, acc);
            }
            y[(size_t)t * W->rows + r] = s_hsum(acc) + b;
        }
    }
}

static void s_mxfp4_rows(const float *x, int T, const ops_mxfp4_mat_t *W, const uint16_t *bias,
                         int r0, int r1, float *y) {
    const int n = W->cols;
    const size_t ldy = (size_t)W->rows;
    if (T >= S_MX_BUF_T && n <= S_MX_BUF_MAX) {
        /* decode the rows once into an fp32 buffer, then the 3 x 4 tiles */
        const s_mx_consts_t k = s_mx_consts(NULL);
        s_mx_buffered(x, T, W, bias, r0, r1, y, &k);
        return;
    }
    /* a few tokens: tiles of up to 8, each decoded block feeding all of them; the token tiles
     * keep the spreads in registers (s_mx_rows4 cannot, see s_mx_consts_t) */
    const s_mx_consts_t k1 = s_mx_consts(NULL), k = s_mx_consts((const __m256i *)s_mx_spread);
    int t = 0;
    for (; T - t >= 8; t += 8)
        s_mx_small(x + (size_t)t * n, n, 8, W, bias, r0, r1, y, t, &k);
    const float *xr = x + (size_t)t * n;
    switch (T - t) {
    case 0:
        break;
    case 1:
        s_mx_t1(xr, W, bias, r0, r1, y + (size_t)t * ldy, &k1);
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
    /* s_mx_wdec gives NaN weights for scale bytes above S_MX_MAGIC_MAX (no real checkpoint has
     * one: 2^106): a NaN result is computed again with s_mx_wdec_cvt, in the same order (a NaN
     * that came from x or the bias comes out the same) */
    if (T % 8 == 0 || T % 8 >= S_MX_CVT_NT) return; /* no tile used s_mx_wdec */
    for (int i = 0; i < T; i++)
        for (int r = r0; r < r1; r++)
            if (isnan(y[(size_t)i * ldy + r])) {
                s_mx_redo(x, T, W, bias, r0, r1, y, &k1);
                return;
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
    .mxfp4_nibble_x = 1,
    .bf16_split_x = 1,
    .dot = s_dot,
    .axpy = s_axpy,
};

const cpu_kern_t *cpu_kern_avx2(void) {
    return &s_kern;
}
