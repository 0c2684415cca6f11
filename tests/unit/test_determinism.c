/* test_determinism: the engine's logits are batch-invariant, bit for bit.
 *
 * Seeded streams must give the same text however the scheduler batched them (DESIGN.md, "Why the
 * gateway drives every step"): alone or beside other sequences, prefilled in one chunk or many,
 * decoded token by token, or recomputed from its tokens after a preemption or a shard restart.
 * So the logits of a token may depend only on the model and the sequence's tokens, never on the
 * step's other tokens, on the step's token count (kernel path: T = 1 GEMV, small and large token
 * tiles, the threads' row split), on chunk boundaries or on where its KV blocks lie.
 *
 * One "probe" sequence (136 tokens: past the sliding window and past one online-softmax key
 * chunk) gets all-position logits from a one-shot prefill: the reference. Every other schedule of
 * the same tokens must reproduce each row with memcmp: chunked prefill (1, 3, 7), decode token
 * by token (last-row logits), one-shot with the KV blocks shifted, a recompute after a
 * "preemption" (release, re-prefill prompt + generated in one chunk, go on decoding), and mixed
 * batches where filler sequences of all lengths share the step so that T runs through 1..40 and
 * the probe's rows sit at every offset inside the token tiles. Models: tiny-a, a generated model
 * with larger dims (hidden 128, 8 heads / 4 KV heads, 8 experts, vocab 2000) and one with odd
 * dims (o_proj of 54 columns, 5 experts, vocab 1999). Every ISA the CPU has, f32 and bf16 KV,
 * 1 / 2 / 3 threads. With tp 2 (rank 1 forked, shm comm, as in test_tp) the same schedules at
 * fixed N (tp 2 is compared with tp 2 only: its o_proj / MoE sums are split differently). */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bf16.h"
#include "comm.h"
#include "cpu/ops_cpu.h"
#include "engine.h"
#include "kvcache.h"
#include "ops.h"
#include "tcheck.h"
#include "weights.h"

#define S_NP        136 /* probe tokens */
#define S_MAX_T     40  /* largest step of the mixed schedule */
#define S_MAX_SEQS  8   /* sequences in one step, probe included */
#define S_FILL_LEN  50  /* a filler restarts (new blocks, new tokens) past this length */
#define S_MAX_CHUNK 160 /* engine max_chunk: the one-shot prefill of the probe */

/* One run of the suite: a model on one rank of a world with one backend setting. */
typedef struct {
    const char *model;
    int rank, world;
    comm_t *comm; /* NULL: world 1 */
    const char *isa;
    int threads;
    ops_kv_dtype_t dt;
} s_cfg_t;

/* State of a suite on one rank (checks only on rank 0). */
typedef struct {
    const s_cfg_t *cfg;
    engine_t *eng;
    kvcache_t *kv;
    int V;
    float *ref;  /* [S_NP][V] one-shot logits (rank 0) */
    float *buf;  /* [S_MAX_CHUNK + S_MAX_SEQS][V] one step's logits (rank 0) */
    int32_t *tk; /* [S_NP] probe tokens */
    uint64_t rng;
    int failed; /* engine errors */
    bool shown; /* a difference of the current schedule was printed */
    char what[256];
} s_suite_t;

static uint32_t s_rand(s_suite_t *s) {
    s->rng = s->rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(s->rng >> 33);
}

/* A sequence of a step: tokens at start.., its cache tables, whether all rows come back. */
typedef struct {
    kvcache_seq_t *seq;
    const int32_t *tok;
    int n, start;
    bool all;
} s_part_t;

/* Runs one step; logits into s->buf on rank 0. Returns 0 or -1 (message printed). */
static int s_step(s_suite_t *s, const s_part_t *p, int n) {
    engine_seq_t q[S_MAX_SEQS];
    gerr_t err = {{0}};
    for (int i = 0; i < n; i++) {
        if (kvcache_seq_reserve(s->kv, p[i].seq, p[i].start, p[i].start + p[i].n, &err)) {
            fprintf(stderr, "%s: reserve: %s\n", s->what, err.msg);
            s->failed++;
            return -1;
        }
        q[i] = (engine_seq_t){.tokens = p[i].tok,
                              .n_tokens = p[i].n,
                              .start_pos = p[i].start,
                              .full_blocks = p[i].seq->full,
                              .n_full_blocks = p[i].seq->n_full,
                              .window_blocks = p[i].seq->window,
                              .n_window_blocks = p[i].seq->n_window,
                              .all_logits = p[i].all};
    }
    if (engine_step(s->eng, q, n, s->cfg->rank == 0 ? s->buf : NULL, &err)) {
        fprintf(stderr, "%s: step: %s\n", s->what, err.msg);
        s->failed++;
        return -1;
    }
    return 0;
}

/* Compares n logits rows (from row `row` of s->buf) with the reference rows from position pos.
 * Returns the number of rows that differ; prints the first one. */
static int s_cmp(s_suite_t *s, int row, int pos, int n, const char *sched) {
    if (s->cfg->rank != 0) return 0;
    const size_t V = (size_t)s->V;
    int bad = 0;
    for (int i = 0; i < n; i++) {
        const float *a = s->ref + (size_t)(pos + i) * V, *b = s->buf + (size_t)(row + i) * V;
        if (memcmp(a, b, V * sizeof(float)) == 0) continue;
        if (!bad++ && !s->shown) {
            s->shown = true;
            double m = 0;
            for (size_t v = 0; v < V; v++)
                if (fabs((double)a[v] - b[v]) > m) m = fabs((double)a[v] - b[v]);
            fprintf(stderr, "%s: %s: position %d differs from one-shot (max |diff| %.3g)\n",
                    s->what, sched, pos + i, m);
        }
    }
    return bad;
}

/* Prefill of the probe in chunks of c (all rows) or, with last_only, one row per step. */
static int s_chunked(s_suite_t *s, int c, bool last_only) {
    kvcache_seq_t seq = {0};
    int bad = 0;
    for (int p = 0; p < S_NP && !s->failed; p += c) {
        int n = S_NP - p < c ? S_NP - p : c;
        s_part_t part = {.seq = &seq, .tok = s->tk + p, .n = n, .start = p, .all = !last_only};
        if (s_step(s, &part, 1)) break;
        bad += last_only ? s_cmp(s, 0, p + n - 1, 1, "decode") : s_cmp(s, 0, p, n, "chunked");
    }
    kvcache_seq_release(s->kv, &seq);
    return bad;
}

/* One-shot prefill after other sequences took the first blocks of both pools. */
static int s_shifted(s_suite_t *s) {
    kvcache_seq_t blocker = {0}, seq = {0};
    gerr_t err = {{0}};
    int bad = 0;
    if (kvcache_seq_reserve(s->kv, &blocker, 0, 37, &err)) {
        fprintf(stderr, "%s: reserve: %s\n", s->what, err.msg);
        s->failed++;
    } else {
        s_part_t part = {.seq = &seq, .tok = s->tk, .n = S_NP, .start = 0, .all = true};
        if (!s_step(s, &part, 1)) bad = s_cmp(s, 0, 0, S_NP, "blocks shifted");
    }
    kvcache_seq_release(s->kv, &seq);
    kvcache_seq_release(s->kv, &blocker);
    return bad;
}

/* Chunks of 5 to position 60, then a preemption: the sequence is dropped and recomputed from
 * its 60 tokens in one chunk (last row, new blocks), then decodes to the end. */
static int s_recompute(s_suite_t *s) {
    kvcache_seq_t seq = {0}, other = {0};
    gerr_t err = {{0}};
    int bad = 0, p = 0;
    for (; p < 60 && !s->failed; p += 5) {
        s_part_t part = {.seq = &seq, .tok = s->tk + p, .n = 5, .start = p, .all = true};
        if (!s_step(s, &part, 1)) bad += s_cmp(s, 0, p, 5, "before preemption");
    }
    kvcache_seq_release(s->kv, &seq);
    /* someone else takes the freed blocks meanwhile */
    if (kvcache_seq_reserve(s->kv, &other, 0, 23, &err)) s->failed++;
    s_part_t part = {.seq = &seq, .tok = s->tk, .n = 60, .start = 0, .all = false};
    if (!s->failed && !s_step(s, &part, 1)) bad += s_cmp(s, 0, 59, 1, "recompute");
    for (; p < S_NP && !s->failed; p++) {
        part = (s_part_t){.seq = &seq, .tok = s->tk + p, .n = 1, .start = p, .all = false};
        if (!s_step(s, &part, 1)) bad += s_cmp(s, 0, p, 1, "decode after recompute");
    }
    kvcache_seq_release(s->kv, &seq);
    kvcache_seq_release(s->kv, &other);
    return bad;
}

/* Mixed batches: step k has T = 1 + k % S_MAX_T tokens (so every T in 1..40 occurs), the probe
 * takes a chunk of 1..8 of them at a rotating place in the batch, and up to 4 fillers (prefill
 * chunks and decode tokens of their own sequences, restarted past S_FILL_LEN) take the rest. */
static int s_mixed(s_suite_t *s, uint64_t seed) {
    enum { NF = 4 };
    kvcache_seq_t probe = {0}, fs[NF] = {{0}};
    int32_t ftok[NF][S_FILL_LEN + S_MAX_T];
    int fpos[NF] = {0};
    int bad = 0, p = 0;
    s->rng = seed;
    for (int f = 0; f < NF; f++)
        for (int i = 0; i < S_FILL_LEN + S_MAX_T; i++)
            ftok[f][i] = (int32_t)(s_rand(s) % (uint32_t)s->V);
    for (int k = 0; p < S_NP && !s->failed; k++) {
        const int T = 1 + k % S_MAX_T;
        int c = 1 + (int)(s_rand(s) % 8);
        if (c > T) c = T;
        if (c > S_NP - p) c = S_NP - p;
        s_part_t parts[S_MAX_SEQS];
        int n = 0, left = T - c;
        for (int f = 0; f < NF && left > 0; f++) {
            int m = f == NF - 1 ? left : 1 + (int)(s_rand(s) % (uint32_t)left);
            if (fpos[f] + m > S_FILL_LEN + S_MAX_T) m = S_FILL_LEN + S_MAX_T - fpos[f];
            if (m <= 0) continue;
            parts[n++] = (s_part_t){.seq = &fs[f],
                                    .tok = ftok[f] + fpos[f],
                                    .n = m,
                                    .start = fpos[f],
                                    .all = (s_rand(s) & 1) != 0};
            left -= m;
        }
        /* the probe goes in at a rotating index; rows before it come from the fillers */
        int at = k % (n + 1);
        for (int i = n; i > at; i--)
            parts[i] = parts[i - 1];
        parts[at] = (s_part_t){.seq = &probe, .tok = s->tk + p, .n = c, .start = p, .all = true};
        n++;
        if (s_step(s, parts, n)) break;
        int row = 0;
        for (int i = 0; i < at; i++)
            row += parts[i].all ? parts[i].n : 1;
        bad += s_cmp(s, row, p, c, "mixed batch");
        p += c;
        for (int i = 0; i < n; i++) {
            if (i == at) continue;
            int f = (int)(parts[i].seq - fs);
            fpos[f] += parts[i].n;
            if (fpos[f] >= S_FILL_LEN) { /* restart: fresh blocks, shifted tokens */
                kvcache_seq_release(s->kv, &fs[f]);
                fpos[f] = 0;
                for (int j = 0; j < S_FILL_LEN + S_MAX_T; j++)
                    ftok[f][j] = (int32_t)(s_rand(s) % (uint32_t)s->V);
            }
        }
    }
    kvcache_seq_release(s->kv, &probe);
    for (int f = 0; f < NF; f++)
        kvcache_seq_release(s->kv, &fs[f]);
    return bad;
}

/* Runs every schedule on one rank. ref_out (rank 0, may be NULL) receives the one-shot logits
 * ([S_NP][V], caller frees). Returns 0, or -1 if an engine call failed. */
static int s_suite(const s_cfg_t *cfg, float **ref_out) {
    s_suite_t s = {.cfg = cfg};
    weights_t *w = NULL;
    ops_t *ops = NULL;
    gerr_t err = {{0}};
    snprintf(s.what, sizeof s.what, "%s isa %s threads %d kv %s tp %d", cfg->model, cfg->isa,
             cfg->threads, cfg->dt == OPS_KV_BF16 ? "bf16" : "f32", cfg->world);
    if (weights_load_shard(cfg->model, cfg->rank, cfg->world, &w, &err) ||
        ops_cpu_new(cfg->threads, cfg->isa, &ops, &err)) {
        fprintf(stderr, "%s: %s\n", s.what, err.msg);
        weights_free(&w);
        return -1;
    }
    engine_opts_t eo = {.kv_dtype = cfg->dt,
                        .block_size = 4,
                        .kv_budget_bytes = 32 << 20,
                        .max_seqs = S_MAX_SEQS,
                        .max_chunk = S_MAX_CHUNK,
                        .comm = cfg->comm};
    if (engine_new(w, ops, &eo, &s.eng, &err)) {
        fprintf(stderr, "%s: %s\n", s.what, err.msg);
        ops_cpu_free(&ops);
        weights_free(&w);
        return -1;
    }
    s.kv = engine_kv(s.eng);
    s.V = engine_vocab(s.eng);
    const size_t V = (size_t)s.V;
    s.ref = calloc((size_t)S_NP * V, sizeof(float));
    s.buf = calloc((size_t)(S_MAX_CHUNK + S_MAX_SEQS) * V, sizeof(float));
    s.tk = malloc(sizeof(int32_t) * S_NP);
    if (!s.ref || !s.buf || !s.tk) abort();
    for (int i = 0; i < S_NP; i++)
        s.tk[i] = (int32_t)((i * 7919 + 17) % s.V);

    kvcache_seq_t seq = {0};
    s_part_t one = {.seq = &seq, .tok = s.tk, .n = S_NP, .start = 0, .all = true};
    if (!s_step(&s, &one, 1) && cfg->rank == 0)
        memcpy(s.ref, s.buf, sizeof(float) * (size_t)S_NP * V);
    kvcache_seq_release(s.kv, &seq);

    static const int chunks[] = {1, 3, 7};
    for (size_t i = 0; i < sizeof chunks / sizeof *chunks && !s.failed; i++) {
        s.shown = false;
        int bad = s_chunked(&s, chunks[i], false);
        if (cfg->rank == 0)
            CHECK_MSG(bad == 0, "%s: chunk %d: %d rows differ", s.what, chunks[i], bad);
    }
    if (!s.failed) {
        s.shown = false;
        int bad = s_chunked(&s, 1, true);
        if (cfg->rank == 0) CHECK_MSG(bad == 0, "%s: decode: %d rows differ", s.what, bad);
    }
    if (!s.failed) {
        s.shown = false;
        int bad = s_shifted(&s);
        if (cfg->rank == 0) CHECK_MSG(bad == 0, "%s: blocks shifted: %d rows", s.what, bad);
    }
    if (!s.failed) {
        s.shown = false;
        int bad = s_recompute(&s);
        if (cfg->rank == 0) CHECK_MSG(bad == 0, "%s: recompute: %d rows", s.what, bad);
    }
    for (uint64_t seed = 1; seed <= 2 && !s.failed; seed++) {
        s.shown = false;
        int bad = s_mixed(&s, seed);
        if (cfg->rank == 0)
            CHECK_MSG(bad == 0, "%s: mixed batches (seed %d): %d rows differ", s.what, (int)seed,
                      bad);
    }
    if (cfg->rank == 0) fprintf(stderr, "%s: done\n", s.what);
    int rc = s.failed ? -1 : 0;
    if (ref_out && cfg->rank == 0 && !rc) {
        *ref_out = s.ref;
        s.ref = NULL;
    }
    free(s.ref);
    free(s.buf);
    free(s.tk);
    engine_free(&s.eng);
    ops_cpu_free(&ops);
    weights_free(&w);
    return rc;
}

/* ---- the matmul kernels alone ------------------------------------------------------------ */

/* Every token's output row must equal, bit for bit, what the same input vector gives at T = 1,
 * whatever T (1..40: GEMV, 2/4/8-token tiles and their remainders), the token's offset in the
 * step and the threads' row split. Shapes with a column tail past the SIMD width and odd row
 * counts (the single-row remainder of the 2-row tile). */
static void s_kernels(const char *isa, int threads) {
    enum { P = 48 }; /* pool of input vectors */
    ops_t *o = NULL;
    gerr_t err = {{0}};
    if (ops_cpu_new(threads, isa, &o, &err)) return; /* not on this CPU */
    static const int shapes[][2] = {{37, 54}, {130, 256}, {9, 8}, {70, 1000}};
    uint64_t rng = 12345;
#define S_RND() (rng = rng * 6364136223846793005ULL + 1442695040888963407ULL, (uint32_t)(rng >> 33))
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        const int rows = shapes[k][0], cols = shapes[k][1], mcols = (cols + 31) / 32 * 32;
        const size_t stride = (size_t)cols + 3;
        uint16_t *wb = malloc(sizeof(uint16_t) * stride * rows), *bias = malloc(2u * rows);
        uint8_t *blk = malloc((size_t)rows * mcols / 2), *sc = malloc((size_t)rows * mcols / 32);
        float *pool = malloc(sizeof(float) * (size_t)P * mcols);
        float *ref_b = malloc(sizeof(float) * (size_t)P * rows);
        float *ref_m = malloc(sizeof(float) * (size_t)P * rows);
        float *x = malloc(sizeof(float) * (size_t)S_MAX_T * mcols);
        float *y = malloc(sizeof(float) * (size_t)S_MAX_T * rows);
        if (!wb || !bias || !blk || !sc || !pool || !ref_b || !ref_m || !x || !y) abort();
        for (size_t i = 0; i < stride * rows; i++)
            wb[i] = f32_to_bf16(((float)(S_RND() % 2001) - 1000.0f) / 4000.0f);
        for (int i = 0; i < rows; i++)
            bias[i] = f32_to_bf16(((float)(S_RND() % 201) - 100.0f) / 100.0f);
        for (size_t i = 0; i < (size_t)rows * mcols / 2; i++)
            blk[i] = (uint8_t)S_RND();
        /* scales: most rows in 120..129; every 5th row (from 3) mixes tiny (0..25, where the
         * fp32 scale is a denormal or 0) and huge (153..164) scales, every 5th (from 4)
         * alternates 152 and 26 (blocks 2^126 apart), and every 7th (from 2) has a block
         * past 232 (kern_avx2 computes such rows again with a multiply) among normal ones:
         * every path must still give the bits of T = 1 */
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < mcols / 32; g++) {
                const uint32_t u = S_RND();
                sc[(size_t)r * (mcols / 32) + g] =
                    (uint8_t)(r % 7 == 2 && g == r % (mcols / 32) ? 233 + u % 8
                              : r % 5 == 3                        ? (u & 1 ? u % 26 : 153 + u % 12)
                              : r % 5 == 4                        ? (g & 1 ? 26 : 152)
                                                                  : 120 + u % 10);
            }
        for (size_t i = 0; i < (size_t)P * mcols; i++)
            pool[i] = ((float)(S_RND() % 20001) - 10000.0f) / 3000.0f;
        ops_bf16_mat_t B = {.w = wb, .stride = stride, .rows = rows, .cols = cols};
        ops_mxfp4_mat_t M = {.blocks = blk,
                             .scales = sc,
                             .blocks_stride = (size_t)mcols / 2,
                             .scales_stride = (size_t)mcols / 32,
                             .rows = rows,
                             .cols = mcols};
        /* the pool's vectors hold cols (bf16) or mcols (MXFP4) values at a stride of mcols */
        for (int v = 0; v < P; v++) {
            for (int c = 0; c < cols; c++)
                x[c] = pool[(size_t)v * mcols + c];
            o->matmul_bf16(o, x, 1, &B, bias, ref_b + (size_t)v * rows);
            o->matmul_mxfp4(o, pool + (size_t)v * mcols, 1, &M, bias, ref_m + (size_t)v * rows);
        }
        int bad_b = 0, bad_m = 0;
        for (int T = 1; T <= S_MAX_T; T++) {
            int pick[S_MAX_T];
            for (int t = 0; t < T; t++)
                pick[t] = (t * 7 + T * 5) % P;
            for (int t = 0; t < T; t++)
                for (int c = 0; c < cols; c++)
                    x[(size_t)t * cols + c] = pool[(size_t)pick[t] * mcols + c];
            o->matmul_bf16(o, x, T, &B, bias, y);
            for (int t = 0; t < T; t++)
                bad_b += memcmp(y + (size_t)t * rows, ref_b + (size_t)pick[t] * rows,
                                sizeof(float) * rows) != 0;
            for (int t = 0; t < T; t++)
                memcpy(x + (size_t)t * mcols, pool + (size_t)pick[t] * mcols,
                       sizeof(float) * mcols);
            o->matmul_mxfp4(o, x, T, &M, bias, y);
            for (int t = 0; t < T; t++)
                bad_m += memcmp(y + (size_t)t * rows, ref_m + (size_t)pick[t] * rows,
                                sizeof(float) * rows) != 0;
        }
        CHECK_MSG(bad_b == 0, "%s, %d threads: bf16 %dx%d: %d token rows differ from T = 1",
                  o->name, threads, rows, cols, bad_b);
        CHECK_MSG(bad_m == 0, "%s, %d threads: mxfp4 %dx%d: %d token rows differ from T = 1",
                  o->name, threads, rows, mcols, bad_m);
        free(wb), free(bias), free(blk), free(sc), free(pool), free(ref_b), free(ref_m), free(x);
        free(y);
    }
#undef S_RND
    ops_cpu_free(&o);
}

/* ---- world 2: rank 1 forked on a shm comm ------------------------------------------------- */

static int s_wait(pid_t pid, int timeout_ms) {
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (r < 0 && errno != EINTR) return -1;
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 > timeout_ms) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        usleep(2000);
    }
}

static void s_suite_tp2(const char *model, ops_kv_dtype_t dt) {
    char name[64];
    static int gen;
    snprintf(name, sizeof name, "/gptoss-test-det-%ld-%d", (long)getpid(), gen++);
    gerr_t err = {{0}};
    CHECK_MSG(comm_shm_create(name, 2, 0, &err) == 0, "%s", err.msg);
    comm_shm_opts_t co = {.attach_timeout_ms = 20000, .timeout_ms = 60000};
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        comm_t *c = NULL;
        int rc = comm_shm_new(name, 1, 2, &co, &c, &err);
        if (rc) fprintf(stderr, "rank 1: %s\n", err.msg);
        s_cfg_t cfg = {.model = model,
                       .rank = 1,
                       .world = 2,
                       .comm = c,
                       .isa = "auto",
                       .threads = 1,
                       .dt = dt};
        if (!rc) rc = s_suite(&cfg, NULL);
        comm_destroy(&c);
        _exit(rc ? 1 : 0);
    }
    CHECK(pid > 0);
    comm_t *c = NULL;
    int rc = comm_shm_new(name, 0, 2, &co, &c, &err);
    if (rc) fprintf(stderr, "rank 0: %s\n", err.msg);
    s_cfg_t cfg = {
        .model = model, .rank = 0, .world = 2, .comm = c, .isa = "auto", .threads = 1, .dt = dt};
    if (!rc) rc = s_suite(&cfg, NULL);
    CHECK_MSG(rc == 0, "%s tp 2: suite failed", model);
    if (rc && c) comm_abort(c);
    comm_destroy(&c);
    if (pid > 0) {
        int st = s_wait(pid, 300000);
        CHECK_MSG(st == 0, "rank 1 exit status %d", st);
    }
    comm_shm_unlink(name, &err);
}

/* ---- main --------------------------------------------------------------------------------- */

static int s_mkmodel(const char *out, const char *const *args) {
    char bin[1024];
    snprintf(bin, sizeof bin, "%s/gptoss-mkmodel", tcheck_bindir());
    const char *argv[32];
    int n = 0;
    argv[n++] = bin;
    argv[n++] = "--out";
    argv[n++] = out;
    while (*args && n < 31)
        argv[n++] = *args++;
    argv[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    return pid > 0 ? s_wait(pid, 60000) : -1;
}

static void s_rm_model(const char *dir) {
    const char *files[] = {"config.json", "generation_config.json", "model.safetensors"};
    char path[800];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    char tiny[1024], big[512], odd[512];
    snprintf(tiny, sizeof tiny, "%s/tiny-a", tcheck_fixtures());
    snprintf(big, sizeof big, "/tmp/gptoss-test-det-%ld-big", (long)getpid());
    snprintf(odd, sizeof odd, "/tmp/gptoss-test-det-%ld-odd", (long)getpid());
    int mk =
        s_mkmodel(big, (const char *const[]){"--preset", "tiny", "--hidden", "128",
                                             "--intermediate", "128", "--heads", "8", "--kv-heads",
                                             "4", "--experts", "8", "--vocab", "2000", NULL});
    CHECK_MSG(mk == 0, "gptoss-mkmodel exit status %d", mk);
    /* odd dims: o_proj of 3 * 18 = 54 columns (a tail past the SIMD width), odd row counts
     * (q 54, k/v 18, router 5, lm_head 1999), top-3 of 5 experts, window 5 */
    int mk2 =
        s_mkmodel(odd, (const char *const[]){
                           "--preset",         "tiny", "--hidden",   "96", "--intermediate", "64",
                           "--heads",          "3",    "--kv-heads", "1",  "--head-dim",     "18",
                           "--experts",        "5",    "--top-k",    "3",  "--vocab",        "1999",
                           "--sliding-window", "5",    NULL});
    CHECK_MSG(mk2 == 0, "gptoss-mkmodel exit status %d", mk2);
    if (mk != 0 || mk2 != 0) return tcheck_done("test_determinism");

    const char *models[] = {tiny, big, odd};
    const char *isas[] = {"generic", "avx2", "avx512"};
    for (size_t i = 0; i < 3; i++) {
        s_kernels(isas[i], 1);
        s_kernels(isas[i], 2);
    }
    for (size_t m = 0; m < 3; m++)
        for (size_t i = 0; i < 3; i++) {
            ops_t *probe = NULL;
            gerr_t err = {{0}};
            if (ops_cpu_new(1, isas[i], &probe, &err)) continue; /* not on this CPU */
            ops_cpu_free(&probe);
            for (int d = 0; d < 2; d++) {
                s_cfg_t cfg = {.model = models[m],
                               .world = 1,
                               .isa = isas[i],
                               .threads = 2,
                               .dt = d ? OPS_KV_BF16 : OPS_KV_F32};
                CHECK(s_suite(&cfg, NULL) == 0);
            }
        }
    /* the row split across threads changes nothing either */
    {
        float *r1 = NULL, *r3 = NULL;
        s_cfg_t cfg = {.model = big, .world = 1, .isa = "auto", .threads = 1, .dt = OPS_KV_F32};
        CHECK(s_suite(&cfg, &r1) == 0);
        cfg.threads = 3;
        CHECK(s_suite(&cfg, &r3) == 0);
        CHECK_MSG(r1 && r3 && memcmp(r1, r3, sizeof(float) * S_NP * 2000) == 0,
                  "one-shot logits differ between 1 and 3 threads");
        free(r1);
        free(r3);
    }
    s_suite_tp2(tiny, OPS_KV_F32);
    s_suite_tp2(big, OPS_KV_F32);
    s_suite_tp2(big, OPS_KV_BF16);
    s_rm_model(big);
    s_rm_model(odd);
    return tcheck_done("test_determinism");
}
