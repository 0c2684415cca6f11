/* test_engine: the batched forward pass on tiny-a (sliding window 8).
 *
 * One-shot prefill of each sequence (logits at every position) is the baseline;
 * the same logits must come from chunked prefill, from token-by-token decode past
 * the window, from a KV-cache-free recompute of every prefix (a fresh sequence per
 * prefix), and from mixed batches where prefill chunks and decode tokens of several
 * sequences share one step. YaRN frequencies are checked against GPTOSS.md 4.5,
 * window blocks against the bound, and bad step input against its error codes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops_cpu.h"
#include "engine.h"
#include "kvcache.h"
#include "ops.h"
#include "tcheck.h"
#include "weights.h"

#define S_TOL 2e-4 /* max |logit difference| between paths (logits have std ~3) */

static engine_t *g_eng;
static int g_V;

/* Runs one step of n sequences with reserved blocks. */
static int s_step(kvcache_seq_t **seqs, const int32_t **toks, const int *n, const int *start,
                  const bool *all, int n_seqs, float *logits) {
    engine_seq_t s[8];
    gerr_t err = {{0}};
    for (int i = 0; i < n_seqs; i++) {
        if (kvcache_seq_reserve(engine_kv(g_eng), seqs[i], start[i], start[i] + n[i], &err))
            return fprintf(stderr, "reserve: %s\n", err.msg), -1;
        s[i] = (engine_seq_t){.tokens = toks[i],
                              .n_tokens = n[i],
                              .start_pos = start[i],
                              .full_blocks = seqs[i]->full,
                              .n_full_blocks = seqs[i]->n_full,
                              .window_blocks = seqs[i]->window,
                              .n_window_blocks = seqs[i]->n_window,
                              .all_logits = all[i]};
    }
    int rc = engine_step(g_eng, s, n_seqs, logits, &err);
    if (rc) fprintf(stderr, "step: %s\n", err.msg);
    return rc;
}

static double s_maxdiff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

/* Baseline: all-position logits from one prefill step of tokens[0..n). */
static float *s_oneshot(const int32_t *tokens, int n) {
    float *out = malloc(sizeof(float) * (size_t)n * g_V);
    kvcache_seq_t seq = {0}, *sp = &seq;
    int start = 0;
    bool all = true;
    CHECK(s_step(&sp, &tokens, &n, &start, &all, 1, out) == 0);
    kvcache_seq_release(engine_kv(g_eng), &seq);
    return out;
}

static void s_test_yarn(void) {
    ops_rope_t r;
    CHECK(ops_rope_init(&r, 64, 150000.0, 32.0, 32.0, 1.0, 4096, false) == 0);
    CHECK_NEAR(r.low, 8.092779115512402, 1e-12);
    CHECK_NEAR(r.high, 17.39802450158856, 1e-12);
    CHECK_NEAR(r.concentration, 1.3465735902799727, 1e-15);
    CHECK_NEAR(r.inv_freq[0], 1.0, 1e-15);
    CHECK_NEAR(r.inv_freq[1], 0.68904, 5e-6);
    CHECK_NEAR(r.inv_freq[31] / 3.0235e-7, 1.0, 2e-4);
    /* dims <= 8 unchanged, >= 18 divided by 32 */
    CHECK_NEAR(r.inv_freq[8], pow(150000.0, -16.0 / 64), 1e-15);
    CHECK_NEAR(r.inv_freq[20], pow(150000.0, -40.0 / 64) / 32, 1e-18);
    ops_rope_t t;
    CHECK(ops_rope_init(&t, 64, 150000.0, 32.0, 32.0, 1.0, 4096, true) == 0);
    CHECK(t.low == 8.0 && t.high == 18.0);
    CHECK(ops_rope_init(&t, 63, 150000.0, 32.0, 32.0, 1.0, 4096, false) == -1);
}

int main(void) {
    s_test_yarn();
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tiny-a", tcheck_fixtures());
    weights_t *w = NULL;
    ops_t *ops = NULL;
    gerr_t err = {{0}};
    CHECK_MSG(weights_load(dir, &w, &err) == 0, "%s", err.msg);
    CHECK_MSG(ops_cpu_new(2, NULL, &ops, &err) == 0, "%s", err.msg);
    if (!w || !ops) return tcheck_done("test_engine");
    CHECK(w->cfg.sliding_window == 8 && w->cfg.layer_sliding[0] && !w->cfg.layer_sliding[1]);
    engine_opts_t eo = {
        .block_size = 4, .kv_budget_bytes = 4 << 20, .max_seqs = 4, .max_chunk = 48};
    CHECK_MSG(engine_new(w, ops, &eo, &g_eng, &err) == 0, "%s", err.msg);
    if (!g_eng) return tcheck_done("test_engine");
    g_V = engine_vocab(g_eng);
    CHECK(g_V == 512);

    /* three prompts, lengths well past the window */
    enum { NA = 40, NB = 23, NC = 13 };
    int32_t A[NA], B[NB], C[NC];
    for (int i = 0; i < NA; i++)
        A[i] = (i * 37 + 11) % 510;
    for (int i = 0; i < NB; i++)
        B[i] = (i * 101 + 3) % 509;
    for (int i = 0; i < NC; i++)
        C[i] = (i * 7 + 200) % 500;
    float *refA = s_oneshot(A, NA), *refB = s_oneshot(B, NB), *refC = s_oneshot(C, NC);
    const size_t V = (size_t)g_V;
    /* one-shot must be deterministic across runs */
    float *again = s_oneshot(A, NA);
    CHECK(s_maxdiff(again, refA, NA * V) == 0.0);
    free(again);

    /* chunked prefill (chunks of 3 and 9) */
    const int chunks[2] = {3, 9};
    float *buf = malloc(sizeof(float) * 64 * V);
    for (int ci = 0; ci < 2; ci++) {
        kvcache_seq_t seq = {0}, *sp = &seq;
        double worst = 0;
        for (int p = 0; p < NA; p += chunks[ci]) {
            int n = NA - p < chunks[ci] ? NA - p : chunks[ci];
            const int32_t *tk = A + p;
            bool all = true;
            CHECK(s_step(&sp, &tk, &n, &p, &all, 1, buf) == 0);
            double d = s_maxdiff(buf, refA + (size_t)p * V, (size_t)n * V);
            if (d > worst) worst = d;
        }
        CHECK_MSG(worst < S_TOL, "chunk %d vs one-shot: max diff %.3g", chunks[ci], worst);
        kvcache_seq_release(engine_kv(g_eng), &seq);
    }

    /* decode token by token (after a 2-token prefill), past the window */
    {
        kvcache_seq_t seq = {0}, *sp = &seq;
        double worst = 0;
        int n = 2, p = 0;
        const int32_t *tk = A;
        bool all = true;
        CHECK(s_step(&sp, &tk, &n, &p, &all, 1, buf) == 0);
        worst = s_maxdiff(buf, refA, 2 * V);
        int max_live = 0;
        for (p = 2; p < NA; p++) {
            n = 1;
            tk = A + p;
            all = false;
            CHECK(s_step(&sp, &tk, &n, &p, &all, 1, buf) == 0);
            double d = s_maxdiff(buf, refA + (size_t)p * V, V);
            if (d > worst) worst = d;
            int live = 0;
            for (int b = 0; b < seq.n_window; b++)
                live += seq.window[b] >= 0;
            if (live > max_live) max_live = live;
        }
        CHECK_MSG(worst < S_TOL, "decode vs one-shot: max diff %.3g", worst);
        /* window 8, block 4: a query sees at most 3 blocks */
        CHECK_MSG(max_live <= 3, "window blocks held: %d", max_live);
        CHECK(seq.first_live > 0);
        kvcache_seq_release(engine_kv(g_eng), &seq);
    }

    /* KV-cache-free recompute: a fresh sequence per prefix, last logits only */
    {
        double worst = 0;
        for (int p = 0; p < NA; p += 5) {
            kvcache_seq_t seq = {0}, *sp = &seq;
            int n = p + 1, start = 0;
            const int32_t *tk = A;
            bool all = false;
            CHECK(s_step(&sp, &tk, &n, &start, &all, 1, buf) == 0);
            double d = s_maxdiff(buf, refA + (size_t)p * V, V);
            if (d > worst) worst = d;
            kvcache_seq_release(engine_kv(g_eng), &seq);
        }
        CHECK_MSG(worst < S_TOL, "recompute vs one-shot: max diff %.3g", worst);
    }

    /* mixed batches: A decodes while B prefills in chunks and C joins late */
    {
        kvcache_seq_t sa = {0}, sb = {0}, sc = {0};
        int pa = 0, pb = 0, pc = 0;
        double worst = 0;
        /* A: prefill 10 alone */
        {
            kvcache_seq_t *s1[1] = {&sa};
            const int32_t *t1[1] = {A};
            int n1[1] = {10}, st[1] = {0};
            bool al[1] = {false};
            CHECK(s_step(s1, t1, n1, st, al, 1, buf) == 0);
            worst = s_maxdiff(buf, refA + 9 * V, V);
            pa = 10;
        }
        int step = 0;
        while (pa < NA || pb < NB || pc < NC) {
            kvcache_seq_t *ss[3];
            const int32_t *tt[3];
            int nn[3], st[3], which[3], k = 0;
            bool al[3];
            if (pb < NB) { /* B: chunks of 5, all logits */
                int n = NB - pb < 5 ? NB - pb : 5;
                ss[k] = &sb, tt[k] = B + pb, nn[k] = n, st[k] = pb, al[k] = true, which[k++] = 1;
            }
            if (pa < NA) { /* A: one decode token */
                ss[k] = &sa, tt[k] = A + pa, nn[k] = 1, st[k] = pa, al[k] = false, which[k++] = 0;
            }
            if (step >= 3 && pc < NC) { /* C: joins at step 3, chunk 4 then decode */
                int n = pc == 0 ? 4 : 1;
                ss[k] = &sc, tt[k] = C + pc, nn[k] = n, st[k] = pc, al[k] = false, which[k++] = 2;
            }
            CHECK(s_step(ss, tt, nn, st, al, k, buf) == 0);
            size_t row = 0;
            for (int i = 0; i < k; i++) {
                const float *ref = which[i] == 0 ? refA : which[i] == 1 ? refB : refC;
                int rows = al[i] ? nn[i] : 1, first = al[i] ? st[i] : st[i] + nn[i] - 1;
                double d = s_maxdiff(buf + row * V, ref + (size_t)first * V, (size_t)rows * V);
                if (d > worst) worst = d;
                row += (size_t)rows;
                if (which[i] == 0)
                    pa += nn[i];
                else if (which[i] == 1)
                    pb += nn[i];
                else
                    pc += nn[i];
            }
            step++;
        }
        CHECK_MSG(worst < S_TOL, "mixed batch vs alone: max diff %.3g", worst);
        kvcache_seq_release(engine_kv(g_eng), &sa);
        kvcache_seq_release(engine_kv(g_eng), &sb);
        kvcache_seq_release(engine_kv(g_eng), &sc);
    }

    /* bad input is refused */
    {
        kvcache_seq_t seq = {0};
        CHECK(kvcache_seq_reserve(engine_kv(g_eng), &seq, 0, 4, &err) == 0);
        int32_t bad_tok = 512;
        engine_seq_t s = {.tokens = &bad_tok,
                          .n_tokens = 1,
                          .start_pos = 0,
                          .full_blocks = seq.full,
                          .n_full_blocks = seq.n_full,
                          .window_blocks = seq.window,
                          .n_window_blocks = seq.n_window};
        CHECK(engine_step(g_eng, &s, 1, buf, &err) == GERR_INVALID);
        CHECK(strstr(err.msg, "vocabulary") != NULL);
        int32_t ok_tok = 5;
        s.tokens = &ok_tok;
        s.start_pos = 4; /* block 1 not reserved */
        CHECK(engine_step(g_eng, &s, 1, buf, &err) == GERR_INVALID);
        s.start_pos = -1;
        CHECK(engine_step(g_eng, &s, 1, buf, &err) == GERR_INVALID);
        s.start_pos = 0;
        s.full_blocks = NULL;
        CHECK(engine_step(g_eng, &s, 1, buf, &err) == GERR_INVALID);
        CHECK(engine_step(g_eng, &s, 0, buf, &err) == GERR_INVALID);
        kvcache_seq_release(engine_kv(g_eng), &seq);
    }
    /* the allocator got every block back */
    kvcache_opts_t ko;
    CHECK(kvcache_plan(&w->cfg, w->n_kv_heads, OPS_KV_F32, 4, 4 << 20, 4, 48, &ko, &err) == 0);
    CHECK(kvcache_free_full(engine_kv(g_eng)) == ko.n_full_blocks);
    CHECK(kvcache_free_window(engine_kv(g_eng)) == ko.n_window_blocks);
    /* a budget too small is refused with a message */
    CHECK(kvcache_plan(&w->cfg, w->n_kv_heads, OPS_KV_F32, 4, 1000, 4, 48, &ko, &err) ==
          GERR_LIMIT);

    free(refA), free(refB), free(refC), free(buf);
    engine_free(&g_eng);
    ops_cpu_free(&ops);
    weights_free(&w);
    return tcheck_done("test_engine");
}
