/* bench_engine: `gptoss-bench engine --model DIR [--threads N] [--prompt N] [--steps N]`.
 *
 * Measures this machine first (memory read bandwidth with all threads, STREAM-like
 * sum over a 512 MiB buffer; fp32 FMA peak with independent AVX2/AVX-512 FMA
 * chains), then the CPU engine on the model: prefill tokens/s of one prompt
 * (default 512 tokens, one step), and decode tokens/s at batch 1, 2, 4 and 16 (each
 * sequence prefilled with 16 tokens first). Prints weight bytes read per decoded
 * token (batch 1, GPTOSS.md 8), achieved bytes/s / bandwidth, and prefill FLOP/s /
 * peak; on a shared machine the ratios to a read pass right before each batch-1
 * step and to an FMA peak right after the prefill are the ones to compare. The decode
 * steps run in rounds (one step at batch 1, 2, 4 and 16 per round) so that load from other
 * jobs hits them alike; batch 16 / batch 1 is the median of the per-round ratios.
 * Random token ids; medians of the timed steps. A benchmark, not a test.
 *
 * `gptoss-bench engine --kernels [--threads N] [--steps REPS]`: the matmul kernels
 * alone (no model), beside read-bandwidth and FMA-peak measurements.
 *
 * `gptoss-bench engine --backend cuda --model DIR [--prompt N] [--steps N]`: the same engine on
 * GPU 0 (CUDA_VISIBLE_DEVICES picks it): device read and copy bandwidth (best of 10), weight load
 * time and GB/s (weights_cuda_upload), prefill tokens/s of one prompt (default 512; median of 3
 * after a warm-up), decode tokens/s at batch 1, 8 and 64 (median of the steps after the first two,
 * which the engine runs eagerly and then captures: the timed steps replay CUDA graphs), weight
 * bytes per decoded token and achieved bytes/s over the measured read and copy bandwidths (target:
 * batch-1 decode at >= 70% of the roofline). A binary built
 * without CUDA, or a machine without a device, says so and exits 2. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "cpu/cpu_pool.h"
#if defined(GPTOSS_HAVE_CUDA)
#include "cuda/ops_cuda.h"
#include "cuda/weights_cuda.h"
#endif
#include "cpu/ops_cpu.h"
#include "engine.h"
#include "kvcache.h"
#include "weights.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

static double s_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double s_cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int s_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double s_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, s_cmp);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- memory bandwidth ------------------------------------------------------ */

typedef struct {
    const uint64_t *buf;
    size_t n; /* words */
    int parts;
    uint64_t sums[64];
} s_bw_t;

#if defined(__x86_64__)
/* Sums words [lo, hi) with 256-bit loads (4 independent accumulators). */
__attribute__((target("avx2"))) static uint64_t s_sum_avx2(const uint64_t *p, size_t lo,
                                                           size_t hi) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = lo; i + 16 <= hi; i += 16) {
        a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i *)(p + i + 4)));
        a2 = _mm256_add_epi64(a2, _mm256_loadu_si256((const __m256i *)(p + i + 8)));
        a3 = _mm256_add_epi64(a3, _mm256_loadu_si256((const __m256i *)(p + i + 12)));
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t out[4];
    _mm256_storeu_si256((__m256i *)out, a0);
    return out[0] + out[1] + out[2] + out[3];
}
#endif

static void s_bw_task(void *arg, int task, int thread) {
    (void)thread;
    s_bw_t *b = arg;
    size_t per = b->n / (size_t)b->parts, lo = per * (size_t)task, hi = lo + per;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2")) {
        b->sums[task % 64] = s_sum_avx2(b->buf, lo, hi);
        return;
    }
#endif
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
    for (size_t i = lo; i < hi; i += 8) {
        a0 += b->buf[i], a1 += b->buf[i + 1], a2 += b->buf[i + 2], a3 += b->buf[i + 3];
        a4 += b->buf[i + 4], a5 += b->buf[i + 5], a6 += b->buf[i + 6], a7 += b->buf[i + 7];
    }
    b->sums[task % 64] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

static double s_bandwidth(cpu_pool_t *pool) {
    const size_t bytes = (size_t)512 << 20;
    uint64_t *buf = malloc(bytes);
    if (!buf) return 0;
    for (size_t i = 0; i < bytes / 8; i++)
        buf[i] = i;
    s_bw_t b = {.buf = buf, .n = bytes / 8, .parts = cpu_pool_size(pool) * 4};
    double best = 0;
    for (int r = 0; r < 5; r++) {
        double t = s_now();
        cpu_pool_run(pool, b.parts, s_bw_task, &b);
        t = s_now() - t;
        if (bytes / t > best) best = bytes / t;
    }
    free(buf);
    return best;
}

/* ---- FMA peak -------------------------------------------------------------- */

#define S_FMA_ITERS 10000000L

typedef struct {
    int width; /* 8 (AVX2) or 16 (AVX-512) */
    float sink[64];
} s_fma_t;

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) static float s_fma_avx2(long iters) {
    /* ten independent chains in named registers (an array may live in memory) */
    __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    __m256 a0 = _mm256_set1_ps(0.f), a1 = _mm256_set1_ps(1.f), a2 = _mm256_set1_ps(2.f);
    __m256 a3 = _mm256_set1_ps(3.f), a4 = _mm256_set1_ps(4.f), a5 = _mm256_set1_ps(5.f);
    __m256 a6 = _mm256_set1_ps(6.f), a7 = _mm256_set1_ps(7.f), a8 = _mm256_set1_ps(8.f);
    __m256 a9 = _mm256_set1_ps(9.f);
    for (long it = 0; it < iters; it++) {
        a0 = _mm256_fmadd_ps(a0, m, c), a1 = _mm256_fmadd_ps(a1, m, c);
        a2 = _mm256_fmadd_ps(a2, m, c), a3 = _mm256_fmadd_ps(a3, m, c);
        a4 = _mm256_fmadd_ps(a4, m, c), a5 = _mm256_fmadd_ps(a5, m, c);
        a6 = _mm256_fmadd_ps(a6, m, c), a7 = _mm256_fmadd_ps(a7, m, c);
        a8 = _mm256_fmadd_ps(a8, m, c), a9 = _mm256_fmadd_ps(a9, m, c);
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(a8, a9));
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0];
}

__attribute__((target("avx512f"))) static float s_fma_avx512(long iters) {
    __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    __m512 a0 = _mm512_set1_ps(0.f), a1 = _mm512_set1_ps(1.f), a2 = _mm512_set1_ps(2.f);
    __m512 a3 = _mm512_set1_ps(3.f), a4 = _mm512_set1_ps(4.f), a5 = _mm512_set1_ps(5.f);
    __m512 a6 = _mm512_set1_ps(6.f), a7 = _mm512_set1_ps(7.f), a8 = _mm512_set1_ps(8.f);
    __m512 a9 = _mm512_set1_ps(9.f);
    for (long it = 0; it < iters; it++) {
        a0 = _mm512_fmadd_ps(a0, m, c), a1 = _mm512_fmadd_ps(a1, m, c);
        a2 = _mm512_fmadd_ps(a2, m, c), a3 = _mm512_fmadd_ps(a3, m, c);
        a4 = _mm512_fmadd_ps(a4, m, c), a5 = _mm512_fmadd_ps(a5, m, c);
        a6 = _mm512_fmadd_ps(a6, m, c), a7 = _mm512_fmadd_ps(a7, m, c);
        a8 = _mm512_fmadd_ps(a8, m, c), a9 = _mm512_fmadd_ps(a9, m, c);
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    return _mm512_reduce_add_ps(_mm512_add_ps(s, _mm512_add_ps(a8, a9)));
}
#endif

static void s_fma_task(void *arg, int task, int thread) {
    (void)thread;
    s_fma_t *f = arg;
#if defined(__x86_64__)
    f->sink[task % 64] = f->width == 16 ? s_fma_avx512(S_FMA_ITERS) : s_fma_avx2(S_FMA_ITERS);
#else
    (void)f;
#endif
}

/* FLOP/s of n_threads chains of FMAs (0 where no SIMD FMA). */
static double s_fma_peak(cpu_pool_t *pool, int *width) {
#if defined(__x86_64__)
    s_fma_t f = {.width = 0};
    if (__builtin_cpu_supports("avx512f"))
        f.width = 16;
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        f.width = 8;
    *width = f.width;
    if (!f.width) return 0;
    int n = cpu_pool_size(pool);
    int lanes = 10;
    double best = 0;
    for (int r = 0; r < 3; r++) { /* best of 3: the machine may be shared */
        double t = s_now();
        cpu_pool_run(pool, n, s_fma_task, &f);
        t = s_now() - t;
        double fl = (double)n * S_FMA_ITERS * lanes * f.width * 2 / t;
        if (fl > best) best = fl;
    }
    return best;
#else
    (void)pool;
    *width = 0;
    return 0;
#endif
}

/* ---- engine ---------------------------------------------------------------- */

/* Multiply-adds per token of the dense + expert matmuls (lm_head counted apart). */
static double s_macs_per_token(const weights_t *w) {
    const gptoss_config_t *c = &w->cfg;
    double macs = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const weights_layer_t *L = &w->layers[l];
        macs += (double)(L->q.rows + L->k.rows + L->v.rows) * L->q.cols;
        macs += (double)L->o.rows * L->o.cols + (double)L->router.rows * L->router.cols;
        macs +=
            (double)c->num_experts_per_tok * ((double)L->gate_up.mat.rows * L->gate_up.mat.cols +
                                              (double)L->down.mat.rows * L->down.mat.cols);
    }
    return macs;
}

static int s_run(engine_t *eng, kvcache_seq_t *seqs, int32_t **toks, int n_seqs, int n_tok,
                 const int *start, float *logits, double *secs) {
    engine_seq_t s[64];
    gerr_t err = {{0}};
    for (int i = 0; i < n_seqs; i++) {
        if (kvcache_seq_reserve(engine_kv(eng), &seqs[i], start[i], start[i] + n_tok, &err)) {
            fprintf(stderr, "bench: %s\n", err.msg);
            return -1;
        }
        s[i] = (engine_seq_t){.tokens = toks[i] + start[i],
                              .n_tokens = n_tok,
                              .start_pos = start[i],
                              .full_blocks = seqs[i].full,
                              .n_full_blocks = seqs[i].n_full,
                              .window_blocks = seqs[i].window,
                              .n_window_blocks = seqs[i].n_window};
    }
    double t = s_now();
    int rc = engine_step(eng, s, n_seqs, logits, &err);
    *secs = s_now() - t;
    if (rc) fprintf(stderr, "bench: %s\n", err.msg);
    return rc;
}

/* ---- CUDA backend (--backend cuda) ------------------------------------------ */

#if defined(GPTOSS_HAVE_CUDA)
/* Median seconds of steps [skip, n) of B decode tokens each (one per sequence). */
static int s_cuda_decode(engine_t *eng, kvcache_seq_t *seqs, int32_t **toks, int B, int n, int skip,
                         float *logits, double *med) {
    int start[64];
    double t, times[80];
    for (int i = 0; i < B; i++)
        start[i] = 0;
    memset(seqs, 0, sizeof(kvcache_seq_t) * (size_t)B);
    int rc = s_run(eng, seqs, toks, B, 16, start, logits, &t); /* prefill 16 each */
    for (int s = 0; s < n && !rc; s++) {
        for (int i = 0; i < B; i++)
            start[i] = 16 + s;
        rc = s_run(eng, seqs, toks, B, 1, start, logits, &times[s]);
    }
    for (int i = 0; i < B; i++)
        kvcache_seq_release(engine_kv(eng), &seqs[i]);
    if (!rc) *med = s_median(times + skip, n - skip);
    return rc;
}

static int s_cuda_main(const char *model, int prompt, int steps) {
    if (ops_cuda_device_count() <= 0) {
        fprintf(stderr, "gptoss-bench engine: --backend cuda: no CUDA device visible (check the "
                        "driver and CUDA_VISIBLE_DEVICES)\n");
        return 2;
    }
    gerr_t err = {{0}};
    ops_t *ops = ops_cuda_new(0, &err);
    if (!ops) {
        fprintf(stderr, "gptoss-bench engine: %s\n", err.msg);
        return 2;
    }
    double rbw = 0, cbw = 0;
    ops_cuda_bandwidth(ops, (size_t)1 << 30, 10, &rbw, &cbw);
    printf("device: %s, read %.1f GB/s, device-to-device copy %.1f GB/s (read + write; best of "
           "10 over 1 GiB)\n",
           ops->name, rbw / 1e9, cbw / 1e9);
    weights_t *hw = NULL, *w = NULL;
    weights_cuda_stats_t ls;
    if (weights_load(model, &hw, &err) || weights_cuda_upload(ops, hw, &w, &ls, &err)) {
        fprintf(stderr, "gptoss-bench engine: %s\n", err.msg);
        weights_free(&hw);
        ops_cuda_free(&ops);
        return 1;
    }
    printf("load: %.3f GB in %.2f s = %.2f GB/s (%d file spans; page cache state as found)\n",
           ls.bytes / 1e9, ls.seconds, ls.gbps, ls.n_spans);
    const gptoss_config_t *c = &w->cfg;
    engine_t *eng = NULL;
    engine_opts_t eo = {
        .kv_budget_bytes = (size_t)4 << 30, .max_seqs = 64, .max_chunk = prompt > 16 ? prompt : 16};
    int rc = engine_new(w, ops, &eo, &eng, &err);
    if (rc) fprintf(stderr, "gptoss-bench engine: %s\n", err.msg);
    const int V = rc ? 0 : engine_vocab(eng), ctx = prompt + 16 + steps + 4;
    float *logits = rc ? NULL : malloc(sizeof(float) * (size_t)V * 64);
    int32_t *toks[64];
    uint64_t rng = 88172645463325252ull;
    for (int i = 0; i < 64; i++) {
        toks[i] = malloc(sizeof(int32_t) * (size_t)ctx);
        for (int j = 0; j < ctx; j++) {
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            toks[i][j] =
                (int32_t)(rng % (uint64_t)(c->vocab_size < 200000 ? c->vocab_size : 199998));
        }
    }
    if (!rc)
        printf("model: %s, %d layers, hidden %d, %d experts top-%d, vocab %d; ops %s\n", model,
               c->num_hidden_layers, c->hidden_size, c->num_local_experts, c->num_experts_per_tok,
               c->vocab_size, ops->name);
    kvcache_seq_t seqs[64];
    int start[64] = {0};
    if (!rc) { /* prefill: a warm-up (scratch sized), then the median of 3 */
        double t[4];
        for (int r = 0; r < 4 && !rc; r++) {
            memset(seqs, 0, sizeof seqs);
            rc = s_run(eng, seqs, toks, 1, prompt, start, logits, &t[r]);
            kvcache_seq_release(engine_kv(eng), &seqs[0]);
        }
        if (!rc) {
            double med = s_median(t + 1, 3);
            printf("prefill: %d tokens in %.1f ms = %.0f tok/s (first run %.1f ms)\n", prompt,
                   med * 1e3, prompt / med, t[0] * 1e3);
        }
    }
    const int batches[3] = {1, 8, 64};
    for (int bi = 0; bi < 3 && !rc; bi++) {
        const int B = batches[bi];
        double med = 0;
        rc = s_cuda_decode(eng, seqs, toks, B, steps + 2, 2, logits, &med);
        if (rc) break;
        const double tps = B / med;
        if (B == 1)
            printf("decode batch 1: %.1f tok/s (%.2f ms/step); weight bytes/token %.3f GB -> %.1f "
                   "GB/s = %.0f%% of the measured read bandwidth, %.0f%% of the copy bandwidth\n",
                   tps, med * 1e3, w->bytes_per_token / 1e9, w->bytes_per_token * tps / 1e9,
                   rbw > 0 ? 100.0 * w->bytes_per_token * tps / rbw : 0.0,
                   cbw > 0 ? 100.0 * w->bytes_per_token * tps / cbw : 0.0);
        else
            printf("decode batch %d: %.1f tok/s (%.2f ms/step)\n", B, tps, med * 1e3);
    }
    for (int i = 0; i < 64; i++)
        free(toks[i]);
    free(logits);
    engine_free(&eng);
    weights_cuda_free(ops, &w);
    weights_free(&hw);
    ops_cuda_free(&ops);
    return rc ? 1 : 0;
}
#endif

/* ---- kernel micro-benchmark (--kernels) ------------------------------------- */

/* One read-bandwidth pass over b (all threads), bytes/s. */
static double s_bw_once(cpu_pool_t *pool, s_bw_t *b) {
    double t = s_now();
    cpu_pool_run(pool, b->parts, s_bw_task, b);
    return (double)b->n * 8 / (s_now() - t);
}

/* `--kernels`: matmul throughput at T = 1 (GB/s of weights) and T = 64 (GFLOP/s)
 * for a bf16 and an MXFP4 matrix larger than the caches, each timed right after a
 * read-bandwidth pass with the same threads, so that the ratio holds on a shared
 * machine. Prints per-repeat ratios and their medians, then the compute ceilings
 * of cache-resident slices per CPU-second. */
static int s_kernels(int threads, int reps) {
    gerr_t err = {{0}};
    ops_t *ops = NULL;
    if (ops_cpu_new(threads, NULL, &ops, &err)) {
        fprintf(stderr, "gptoss-bench engine: %s\n", err.msg);
        return 1;
    }
    const int n = 2880, rb = 46080, rm = 5760 * 16, T = 64;
    const size_t bw_bytes = (size_t)256 << 20;
    cpu_pool_t *pool = cpu_pool_new(ops_cpu_threads(ops));
    uint64_t *bwbuf = malloc(bw_bytes);
    uint16_t *wb = malloc(sizeof(uint16_t) * (size_t)rb * n);
    uint8_t *blk = malloc((size_t)rm * n / 2), *sc = malloc((size_t)rm * n / 32);
    float *x = malloc(sizeof(float) * (size_t)T * n), *y = malloc(sizeof(float) * (size_t)T * rb);
    if (!pool || !bwbuf || !wb || !blk || !sc || !x || !y) {
        fprintf(stderr, "gptoss-bench engine: out of memory\n");
        return 1;
    }
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < bw_bytes / 8; i++)
        bwbuf[i] = i;
    for (size_t i = 0; i < (size_t)rb * n; i++) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        wb[i] = (uint16_t)(0x3c00 + (rng & 0x3ff) + ((rng >> 10 & 1) << 15));
    }
    for (size_t i = 0; i < (size_t)rm * n / 2; i++) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        blk[i] = (uint8_t)rng;
    }
    for (size_t i = 0; i < (size_t)rm * n / 32; i++)
        sc[i] = (uint8_t)(120 + i % 8);
    for (size_t i = 0; i < (size_t)T * n; i++)
        x[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    s_bw_t b = {.buf = bwbuf, .n = bw_bytes / 8, .parts = cpu_pool_size(pool) * 4};
    ops_bf16_mat_t W = {.w = wb, .stride = (size_t)n, .rows = rb, .cols = n};
    ops_mxfp4_mat_t M = {.blocks = blk,
                         .scales = sc,
                         .blocks_stride = (size_t)n / 2,
                         .scales_stride = (size_t)n / 32,
                         .rows = rm,
                         .cols = n};
    const double bytes_b = 2.0 * rb * n, bytes_m = (double)rm * (n / 2 + n / 32);
    enum { K = 6 };
    const char *names[K] = {"bandwidth", "bf16 T=1",   "mxfp4 T=1",
                            "bf16 T=64", "mxfp4 T=64", "fma peak"};
    double v[K][64], ratio[K][64];
    if (reps > 64) reps = 64;
    int width = 0;
    for (int r = 0; r < reps; r++) {
        double bw = s_bw_once(pool, &b), t;
        v[0][r] = bw / 1e9;
        t = s_now();
        ops->matmul_bf16(ops, x, 1, &W, NULL, y);
        v[1][r] = bytes_b / (s_now() - t) / 1e9;
        t = s_now();
        ops->matmul_mxfp4(ops, x, 1, &M, NULL, y);
        v[2][r] = bytes_m / (s_now() - t) / 1e9;
        double bw2 = s_bw_once(pool, &b);
        v[0][r] = 0.5 * (bw + bw2) / 1e9;
        /* T = 64: a slice of rows (the time of a whole matrix is seconds) */
        ops_bf16_mat_t Ws = W;
        Ws.rows = 4096;
        ops_mxfp4_mat_t Ms = M;
        Ms.rows = 5760;
        t = s_now();
        ops->matmul_bf16(ops, x, T, &Ws, NULL, y);
        v[3][r] = 2.0 * T * Ws.rows * n / (s_now() - t) / 1e9;
        t = s_now();
        ops->matmul_mxfp4(ops, x, T, &Ms, NULL, y);
        v[4][r] = 2.0 * T * Ms.rows * n / (s_now() - t) / 1e9;
        v[5][r] = s_fma_peak(pool, &width) / 1e9;
        for (int k = 1; k < K; k++)
            ratio[k][r] = v[k][r] / (k < 3 ? v[0][r] : v[5][r]);
        printf("rep %d: bw %.1f GB/s | bf16 T=1 %.1f GB/s (%.0f%%) | mxfp4 T=1 %.1f GB/s (%.0f%%) "
               "| bf16 T=64 %.1f GFLOP/s (%.0f%%) | mxfp4 T=64 %.1f GFLOP/s (%.0f%%) | peak %.1f\n",
               r, v[0][r], v[1][r], 100 * ratio[1][r], v[2][r], 100 * ratio[2][r], v[3][r],
               100 * ratio[3][r], v[4][r], 100 * ratio[4][r], v[5][r]);
        fflush(stdout);
    }
    /* compute ceilings: L2-resident slices, process CPU time, best of the repeats
     * (least disturbed by other processes; meaningful with --threads 1) */
    double hot[4][64];
    for (int r = 0; r < reps; r++) {
        ops_bf16_mat_t Ws = W;
        Ws.rows = 64;
        ops_mxfp4_mat_t Ms = M;
        Ms.rows = 192;
        for (int k = 0; k < 4; k++) {
            int TT = k < 2 ? 1 : T, iters = k < 2 ? 200 : 4;
            double c = s_cpu_now();
            for (int i = 0; i < iters; i++)
                if (k % 2 == 0)
                    ops->matmul_bf16(ops, x, TT, &Ws, NULL, y);
                else
                    ops->matmul_mxfp4(ops, x, TT, &Ms, NULL, y);
            c = s_cpu_now() - c;
            double units =
                k % 2 == 0 ? (k < 2 ? 2.0 * Ws.rows * n : 2.0 * TT * Ws.rows * n)
                           : (k < 2 ? (double)Ms.rows * (n / 2 + n / 32) : 2.0 * TT * Ms.rows * n);
            hot[k][r] = units * iters / c / 1e9;
        }
    }
    double best[4] = {0, 0, 0, 0};
    for (int k = 0; k < 4; k++)
        for (int r = 0; r < reps; r++)
            if (hot[k][r] > best[k]) best[k] = hot[k][r];
    printf("L2-resident, per CPU-second, best of %d (all threads): bf16 T=1 %.1f GB/s, mxfp4 T=1 "
           "%.1f GB/s, bf16 T=64 %.1f GFLOP/s, mxfp4 T=64 %.1f GFLOP/s\n",
           reps, best[0], best[1], best[2], best[3]);
    printf("medians over %d reps, %d threads, ops %s:\n", reps, ops_cpu_threads(ops), ops->name);
    for (int k = 0; k < K; k++) {
        double m = s_median(v[k], reps);
        if (k == 0 || k == 5)
            printf("  %-10s %.1f %s\n", names[k], m, k == 0 ? "GB/s" : "GFLOP/s");
        else
            printf("  %-10s %.1f %s, %.0f%% of the %s measured beside it\n", names[k], m,
                   k < 3 ? "GB/s" : "GFLOP/s", 100 * s_median(ratio[k], reps),
                   k < 3 ? "bandwidth" : "FMA peak");
    }
    free(bwbuf);
    free(wb);
    free(blk);
    free(sc);
    free(x);
    free(y);
    cpu_pool_free(&pool);
    ops_cpu_free(&ops);
    return 0;
}

int bench_engine_main(int argc, char **argv) {
    const char *model = NULL;
    const char *backend = "cpu";
    int threads = 0, prompt = 512, steps = 6, kernels = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--kernels") == 0)
            kernels = 1;
        else if (i + 1 < argc && strcmp(argv[i], "--backend") == 0)
            backend = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--model") == 0)
            model = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--threads") == 0)
            threads = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--prompt") == 0)
            prompt = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--steps") == 0)
            steps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: gptoss-bench engine [--backend cpu|cuda] --model DIR "
                            "[--threads N] [--prompt N] [--steps N] | --kernels [--threads N] "
                            "[--steps REPS]\n");
            return 2;
        }
    }
    if (kernels) return s_kernels(threads, steps);
    if (steps > 64) steps = 64;
    if (!model || prompt < 1 || steps < 1) {
        fprintf(stderr, "gptoss-bench engine: --model DIR is required\n");
        return 2;
    }
    if (strcmp(backend, "cuda") == 0) {
#if defined(GPTOSS_HAVE_CUDA)
        return s_cuda_main(model, prompt, steps);
#else
        fprintf(stderr, "gptoss-bench engine: --backend cuda: this binary was built without "
                        "CUDA (configure with -DGPTOSS_CUDA=ON on a machine with the CUDA "
                        "toolkit)\n");
        return 2;
#endif
    }
    if (strcmp(backend, "cpu") != 0) {
        fprintf(stderr, "gptoss-bench engine: --backend %s: expected cpu or cuda\n", backend);
        return 2;
    }
    gerr_t err = {{0}};
    weights_t *w = NULL;
    ops_t *ops = NULL;
    engine_t *eng = NULL;
    if (weights_load(model, &w, &err) || ops_cpu_new(threads, NULL, &ops, &err)) {
        fprintf(stderr, "gptoss-bench engine: %s\n", err.msg);
        weights_free(&w);
        return 1;
    }
    int n_threads = ops_cpu_threads(ops);
    cpu_pool_t *pool = cpu_pool_new(n_threads);
    double bw = s_bandwidth(pool);
    int width = 0;
    double peak = s_fma_peak(pool, &width);
    /* a second pool (its workers sleep while the engine runs) for the measurements
     * beside each step: one 256 MiB read pass before every batch-1 decode step, an
     * FMA peak right after the prefill */
    const size_t bw_bytes = (size_t)256 << 20;
    uint64_t *bwbuf = malloc(bw_bytes);
    if (bwbuf)
        for (size_t i = 0; i < bw_bytes / 8; i++)
            bwbuf[i] = i;
    s_bw_t bwj = {.buf = bwbuf, .n = bw_bytes / 8, .parts = cpu_pool_size(pool) * 4};
    printf("machine: %d threads, memory read %.1f GB/s, fp32 FMA peak %.1f GFLOP/s (%d-wide)\n",
           n_threads, bw / 1e9, peak / 1e9, width);

    const gptoss_config_t *c = &w->cfg;
    engine_opts_t eo = {
        .kv_budget_bytes = (size_t)2 << 30, .max_seqs = 24, .max_chunk = prompt > 16 ? prompt : 16};
    if (engine_new(w, ops, &eo, &eng, &err)) {
        fprintf(stderr, "gptoss-bench engine: %s\n", err.msg);
        ops_cpu_free(&ops);
        weights_free(&w);
        return 1;
    }
    const int V = engine_vocab(eng), ctx = prompt + 16 + steps + 2;
    float *logits = malloc(sizeof(float) * (size_t)V * 16);
    int32_t *toks[16];
    uint64_t rng = 88172645463325252ull;
    for (int i = 0; i < 16; i++) {
        toks[i] = malloc(sizeof(int32_t) * (size_t)ctx);
        for (int j = 0; j < ctx; j++) {
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            toks[i][j] =
                (int32_t)(rng % (uint64_t)(c->vocab_size < 200000 ? c->vocab_size : 199998));
        }
    }
    printf("model: %s, %d layers, hidden %d, %d experts top-%d, vocab %d; ops %s\n", model,
           c->num_hidden_layers, c->hidden_size, c->num_local_experts, c->num_experts_per_tok,
           c->vocab_size, ops->name);

    /* prefill */
    kvcache_seq_t seqs[16];
    memset(seqs, 0, sizeof seqs);
    int start[16] = {0};
    double t_pre = 0;
    int rc = s_run(eng, seqs, toks, 1, prompt, start, logits, &t_pre);
    kvcache_seq_release(engine_kv(eng), &seqs[0]);
    double macs = s_macs_per_token(w);
    double flops = 2.0 * macs * prompt + 2.0 * (double)w->lm_head.rows * w->lm_head.cols;
    for (int l = 0; l < c->num_hidden_layers && !rc; l++) { /* attention: QK and PV */
        double keys = 0;
        for (int p = 0; p < prompt; p++)
            keys += c->layer_sliding[l] && p + 1 > c->sliding_window ? c->sliding_window : p + 1;
        flops += 4.0 * keys * w->n_heads * c->head_dim;
    }
    double peak_after = rc ? 0 : s_fma_peak(pool, &width);
    if (!rc)
        printf(
            "prefill: %d tokens in %.2f s = %.2f tok/s, %.1f GFLOP/s = %.0f%% of FMA peak (%.0f%% "
            "of the peak measured right after, %.1f GFLOP/s)\n",
            prompt, t_pre, prompt / t_pre, flops / t_pre / 1e9,
            peak > 0 ? 100.0 * flops / t_pre / peak : 0.0,
            peak_after > 0 ? 100.0 * flops / t_pre / peak_after : 0.0, peak_after / 1e9);

    /* decode at batch 1, 2, 4, 16, interleaved: each round runs one step of each batch size (the
     * batch-1 step after a read pass), so that a drift in what else the machine runs hits them
     * alike; the ratios are medians of the per-round ratios. */
    enum { NB = 4, B16 = 3 };
    const int batches[NB] = {1, 2, 4, 16};
    kvcache_seq_t dseqs[NB][16];
    int dstart[NB][16];
    memset(dseqs, 0, sizeof dseqs);
    for (int bi = 0; bi < NB && !rc; bi++) {
        for (int i = 0; i < batches[bi]; i++)
            dstart[bi][i] = 0;
        double t;
        rc = s_run(eng, dseqs[bi], toks, batches[bi], 16, dstart[bi], logits, &t); /* 16 each */
    }
    double times[NB][64], bw_beside[64], ratio[64], r16[64];
    for (int s = 0; s < steps && !rc; s++) {
        for (int bi = 0; bi < NB && !rc; bi++) {
            const int B = batches[bi];
            for (int i = 0; i < B; i++)
                dstart[bi][i] = 16 + s;
            if (B == 1 && bwbuf) bw_beside[s] = s_bw_once(pool, &bwj);
            rc = s_run(eng, dseqs[bi], toks, B, 1, dstart[bi], logits, &times[bi][s]);
            if (B == 1 && bwbuf) ratio[s] = w->bytes_per_token / times[bi][s] / bw_beside[s];
        }
        if (!rc) r16[s] = 16.0 * times[0][s] / times[B16][s];
    }
    for (int bi = 0; bi < NB; bi++)
        for (int i = 0; i < batches[bi]; i++)
            kvcache_seq_release(engine_kv(eng), &dseqs[bi][i]);
    if (!rc) {
        if (bwbuf)
            printf("decode batch 1 vs a read pass right before each step: median ratio %.0f%% "
                   "(median read pass %.1f GB/s)\n",
                   100.0 * s_median(ratio, steps), s_median(bw_beside, steps) / 1e9);
        for (int bi = 0; bi < NB; bi++) {
            const int B = batches[bi];
            const double med = s_median(times[bi], steps), tps = B / med;
            if (B == 1)
                printf("decode batch 1: %.2f tok/s (%.1f ms/step); weight bytes/token %.3f GB -> "
                       "%.1f GB/s = %.0f%% of measured bandwidth\n",
                       tps, med * 1e3, w->bytes_per_token / 1e9, w->bytes_per_token * tps / 1e9,
                       bw > 0 ? 100.0 * w->bytes_per_token * tps / bw : 0.0);
            else
                printf("decode batch %d: %.2f tok/s (%.1f ms/step)\n", B, tps, med * 1e3);
        }
        printf("decode batch 16 / batch 1 aggregate tokens/s: median of per-round ratios %.2fx\n",
               s_median(r16, steps));
    }
    free(bwbuf);
    double bw2 = s_bandwidth(pool), peak2 = s_fma_peak(pool, &width);
    cpu_pool_free(&pool);
    printf("machine again after the runs: memory read %.1f GB/s, FMA peak %.1f GFLOP/s (ratios "
           "above use the first measurement; the spread shows how shared the machine was)\n",
           bw2 / 1e9, peak2 / 1e9);
    for (int i = 0; i < 16; i++)
        free(toks[i]);
    free(logits);
    engine_free(&eng);
    ops_cpu_free(&ops);
    weights_free(&w);
    return rc ? 1 : 0;
}
