/* test_sampling: the sampler of shardd/sampling.c against independent double-precision
 * references computed here (softmax, nucleus, min_p set, top-k set, log-softmax).
 *
 * Every statistical check is deterministic (fixed seeds and positions), with bounds loose enough
 * that a correct sampler passes for any seed (chi-square at p ~ 1e-6) and tight enough that a
 * wrong distribution (e.g. temperature ignored) fails. */
#include "sampling.h"

#include <stdint.h>
#include <string.h>
#include <time.h>

#include "tcheck.h"

/* ---- helpers ------------------------------------------------------------------------------ */

static uint64_t s_rng_state = 12345;

/* Test-local generator (independent of the sampler's hash). Uniform in [0, 1). */
static double s_rand01(void) {
    uint64_t z = (s_rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53;
}

/* Approximately normal(0, sd) (sum of 4 uniforms). */
static float s_randn(double sd) {
    double s = s_rand01() + s_rand01() + s_rand01() + s_rand01() - 2.0;
    return (float)(s * sd * 1.7320508);
}

/* p[i] = softmax(x / t) in double over x[0..n), -inf entries get 0. */
static void s_softmax(const float *x, int n, double t, double *p) {
    double mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (x[i] > mx) mx = x[i];
    double s = 0.0;
    for (int i = 0; i < n; i++) {
        p[i] = x[i] == -INFINITY ? 0.0 : exp(((double)x[i] - mx) / t);
        s += p[i];
    }
    for (int i = 0; i < n; i++)
        p[i] /= s;
}

/* ids sorted by probability descending, ties lower id first. */
static const double *s_sort_key;
static int s_cmp_desc(const void *a, const void *b) {
    int ia = *(const int *)a, ib = *(const int *)b;
    if (s_sort_key[ia] > s_sort_key[ib]) return -1;
    if (s_sort_key[ia] < s_sort_key[ib]) return 1;
    return ia - ib;
}
static void s_order(const double *key, int n, int *ord) {
    for (int i = 0; i < n; i++)
        ord[i] = i;
    s_sort_key = key;
    qsort(ord, (size_t)n, sizeof *ord, s_cmp_desc);
}

/* Samples `draws` positions; counts[id]++ per result; returns number of failed calls. */
static int s_histogram(const sampling_params_t *p, const sampling_history_t *h, const float *x,
                       int n, int draws, long *counts) {
    sampling_ws_t *ws = sampling_ws_new();
    int bad = 0;
    memset(counts, 0, (size_t)n * sizeof *counts);
    for (int pos = 0; pos < draws; pos++) {
        sampling_result_t r;
        gerr_t e = {{0}};
        if (sampling_sample(p, h, x, n, (uint64_t)pos, ws, &r, &e) < 0 || r.token < 0 ||
            r.token >= n) {
            bad++;
            continue;
        }
        counts[r.token]++;
    }
    sampling_ws_destroy(&ws);
    return bad;
}

/* Pearson chi-square of counts against probabilities (bins with expected < 5 merged). */
static double s_chi2(const long *counts, const double *prob, int n, long draws, int *dof) {
    double chi = 0.0, rest_e = 0.0, rest_o = 0.0;
    int bins = 0;
    for (int i = 0; i < n; i++) {
        double ex = prob[i] * (double)draws;
        if (ex < 5.0) {
            rest_e += ex;
            rest_o += (double)counts[i];
            continue;
        }
        chi += ((double)counts[i] - ex) * ((double)counts[i] - ex) / ex;
        bins++;
    }
    if (rest_e > 0.0) {
        chi += (rest_o - rest_e) * (rest_o - rest_e) / rest_e;
        bins++;
    } else if (rest_o > 0.0) {
        chi += 1e9; /* a zero-probability id was drawn */
    }
    *dof = bins - 1;
    return chi;
}

/* Loose upper bound of the chi-square quantile at p ~ 1e-6 (Wilson-Hilferty, z = 4.75). */
static double s_chi2_bound(int dof) {
    double k = dof < 1 ? 1 : dof, z = 4.75;
    double a = 1.0 - 2.0 / (9.0 * k) + z * sqrt(2.0 / (9.0 * k));
    return k * a * a * a;
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_params(void) {
    sampling_params_t p;
    sampling_params_init(&p);
    gerr_t e = {{0}};
    CHECK(sampling_params_validate(&p, 100, &e) == 0);
    CHECK(p.temperature == 1.0 && p.top_p == 1.0 && p.repetition_penalty == 1.0);

    /* one bad field at a time; the message must name the field */
    sampling_params_t q;
    const int32_t ids_bad[] = {3, 100};
    const int32_t ids_neg[] = {-1};
#define EXPECT_BAD(field, stmt)                                                                    \
    do {                                                                                           \
        sampling_params_init(&q);                                                                  \
        stmt;                                                                                      \
        memset(&e, 0, sizeof e);                                                                   \
        int rc_ = sampling_params_validate(&q, 100, &e);                                           \
        CHECK_MSG(rc_ == GERR_INVALID, "%s: rc %d", #stmt, rc_);                                   \
        CHECK_MSG(strstr(e.msg, field) != NULL, "%s: message '%s' lacks '%s'", #stmt, e.msg,       \
                  field);                                                                          \
    } while (0)
    EXPECT_BAD("temperature", q.temperature = -0.1);
    EXPECT_BAD("temperature", q.temperature = 100.5);
    EXPECT_BAD("temperature", q.temperature = NAN);
    EXPECT_BAD("top_k", q.top_k = -1);
    EXPECT_BAD("top_p", q.top_p = 0.0);
    EXPECT_BAD("top_p", q.top_p = 1.01);
    EXPECT_BAD("top_p", q.top_p = NAN);
    EXPECT_BAD("min_p", q.min_p = -0.01);
    EXPECT_BAD("min_p", q.min_p = 1.5);
    EXPECT_BAD("frequency_penalty", q.frequency_penalty = 2.5);
    EXPECT_BAD("frequency_penalty", q.frequency_penalty = -2.01);
    EXPECT_BAD("presence_penalty", q.presence_penalty = -3);
    EXPECT_BAD("repetition_penalty", q.repetition_penalty = 0.0);
    EXPECT_BAD("repetition_penalty", q.repetition_penalty = -1.0);
    EXPECT_BAD("repetition_penalty", q.repetition_penalty = INFINITY);
    EXPECT_BAD("logprobs", q.n_logprobs = 21);
    EXPECT_BAD("logprobs", q.n_logprobs = -1);
    EXPECT_BAD("vocab_limit", q.vocab_limit = -5);
    EXPECT_BAD("banned_ids", (q.banned_ids = ids_bad, q.n_banned = 2));
    EXPECT_BAD("banned_ids", (q.banned_ids = NULL, q.n_banned = 1));
    EXPECT_BAD("stop_ids", (q.stop_ids = ids_neg, q.n_stop = 1));

    /* edges that are valid */
    sampling_params_init(&q);
    q.temperature = 0.0;
    q.top_p = 1.0;
    q.min_p = 1.0;
    q.frequency_penalty = -2.0;
    q.presence_penalty = 2.0;
    q.n_logprobs = 20;
    q.vocab_limit = 1000; /* larger than V: clamped, not an error */
    CHECK(sampling_params_validate(&q, 100, &e) == 0);

    /* sampling_sample rejects too, without crashing */
    sampling_params_init(&q);
    q.top_p = 2.0;
    float x[4] = {0, 1, 2, 3};
    sampling_ws_t *ws = sampling_ws_new();
    sampling_result_t r;
    memset(&e, 0, sizeof e);
    CHECK(sampling_sample(&q, NULL, x, 4, 0, ws, &r, &e) == GERR_INVALID);
    CHECK(strstr(e.msg, "top_p") != NULL);
    sampling_params_init(&q);
    CHECK(sampling_sample(&q, NULL, x, 0, 0, ws, &r, &e) == GERR_INVALID);
    sampling_ws_destroy(&ws);
    sampling_ws_destroy(&ws); /* safe twice */
    CHECK(ws == NULL);
}

static void test_greedy(void) {
    sampling_params_t p;
    sampling_params_init(&p);
    p.temperature = 0.0;
    p.top_k = 2; /* irrelevant for greedy */
    sampling_ws_t *ws = sampling_ws_new();
    sampling_result_t r;
    gerr_t e = {{0}};

    float x[8] = {1.0f, 3.0f, NAN, 3.0f, -2.0f, 3.0f, NAN, 0.5f};
    for (uint64_t pos = 0; pos < 10; pos++) {
        CHECK(sampling_sample(&p, NULL, x, 8, pos, ws, &r, &e) == 0);
        CHECK_MSG(r.token == 1, "tie must go to the lowest id, got %d", r.token);
        CHECK(!isnan(r.logprob) && r.logprob < 0.0f);
    }
    /* NaN first entry is not the argmax */
    float y[4] = {NAN, -5.0f, -4.0f, -4.5f};
    CHECK(sampling_sample(&p, NULL, y, 4, 0, ws, &r, &e) == 0);
    CHECK(r.token == 2);
    /* +inf wins and does not poison the logprobs */
    float z[4] = {0.0f, INFINITY, 1.0f, INFINITY};
    p.n_logprobs = 4;
    CHECK(sampling_sample(&p, NULL, z, 4, 0, ws, &r, &e) == 0);
    CHECK(r.token == 1);
    CHECK(!isnan(r.logprob));
    for (int i = 0; i < r.n_top; i++)
        CHECK(!isnan(r.top[i].logprob));
    /* random vectors: equals a plain argmax */
    float v[1000];
    for (int trial = 0; trial < 20; trial++) {
        int am = 0;
        for (int i = 0; i < 1000; i++) {
            v[i] = s_randn(2.0);
            if (v[i] > v[am]) am = i;
        }
        CHECK(sampling_sample(&p, NULL, v, 1000, (uint64_t)trial, ws, &r, &e) == 0);
        CHECK(r.token == am);
    }
    /* everything masked: a clear error, not a crash */
    float m[3] = {NAN, -INFINITY, NAN};
    memset(&e, 0, sizeof e);
    CHECK(sampling_sample(&p, NULL, m, 3, 0, ws, &r, &e) == GERR_INVALID);
    CHECK(strstr(e.msg, "masked") != NULL);
    p.temperature = 1.0;
    CHECK(sampling_sample(&p, NULL, m, 3, 0, ws, &r, &e) == GERR_INVALID);
    sampling_ws_destroy(&ws);
}

static void test_uniform(void) {
    double sum = 0.0, lo = 1.0, hi = 0.0;
    int same_seed_diff = 0;
    for (uint64_t i = 0; i < 100000; i++) {
        double u = sampling_uniform(42, i);
        CHECK_MSG(u >= 0.0 && u < 1.0, "u = %g", u);
        sum += u;
        lo = u < lo ? u : lo;
        hi = u > hi ? u : hi;
        if (i < 1000 && sampling_uniform(43, i) != u) same_seed_diff++;
    }
    CHECK_NEAR(sum / 100000.0, 0.5, 0.005);
    CHECK(lo < 0.001 && hi > 0.999);
    CHECK(same_seed_diff == 1000);
    CHECK(sampling_uniform(7, 99) == sampling_uniform(7, 99));
    /* consecutive draws are not correlated (lag-1 correlation ~ 0) */
    double sxy = 0.0;
    for (uint64_t i = 0; i < 100000; i++)
        sxy += (sampling_uniform(1, i) - 0.5) * (sampling_uniform(1, i + 1) - 0.5);
    CHECK_NEAR(sxy / 100000.0 * 12.0, 0.0, 0.03);
}

static void test_temperature_frequencies(void) {
    float x[6] = {1.0f, 2.0f, 0.5f, -1.0f, 1.7f, 0.0f};
    double t_list[] = {1.0, 0.6, 2.5};
    long counts[6];
    double prob[6];
    const int draws = 60000;
    for (int k = 0; k < 3; k++) {
        sampling_params_t p;
        sampling_params_init(&p);
        p.temperature = t_list[k];
        p.seed = 1000 + (uint64_t)k;
        CHECK(s_histogram(&p, NULL, x, 6, draws, counts) == 0);
        s_softmax(x, 6, t_list[k], prob);
        int dof;
        double chi = s_chi2(counts, prob, 6, draws, &dof);
        CHECK_MSG(chi < s_chi2_bound(dof), "T=%g chi2 %g (dof %d, bound %g)", t_list[k], chi, dof,
                  s_chi2_bound(dof));
        /* the wrong temperature must be detected by the same statistic */
        double wrong[6];
        s_softmax(x, 6, t_list[k] * 1.3, wrong);
        double chi_w = s_chi2(counts, wrong, 6, draws, &dof);
        CHECK_MSG(chi_w > s_chi2_bound(dof), "T=%g: wrong T not detected (chi2 %g)", t_list[k],
                  chi_w);
    }
    /* min_p = 0 and top_p = 1 and top_k >= V are all "off": same tokens as plain */
    sampling_params_t a, b;
    sampling_params_init(&a);
    sampling_params_init(&b);
    a.seed = b.seed = 5;
    b.top_k = 6;
    long ca[6], cb[6];
    s_histogram(&a, NULL, x, 6, 2000, ca);
    s_histogram(&b, NULL, x, 6, 2000, cb);
    CHECK(memcmp(ca, cb, sizeof ca) == 0);
}

static void test_top_k(void) {
    enum { N = 1000 };
    static float x[N];
    static double key[N];
    static int ord[N];
    static long counts[N];
    for (int i = 0; i < N; i++) {
        x[i] = s_randn(1.0);
        key[i] = x[i];
    }
    s_order(key, N, ord);
    int ks[] = {1, 5, 40};
    for (int j = 0; j < 3; j++) {
        int k = ks[j];
        sampling_params_t p;
        sampling_params_init(&p);
        p.temperature = 3.0; /* flat: without top-k, most draws would fall outside */
        p.top_k = k;
        p.seed = 77;
        CHECK(s_histogram(&p, NULL, x, N, 4000, counts) == 0);
        bool in[N] = {false};
        for (int i = 0; i < k; i++)
            in[ord[i]] = true;
        long outside = 0, distinct = 0;
        for (int i = 0; i < N; i++) {
            if (!in[i]) outside += counts[i];
            distinct += counts[i] > 0;
        }
        CHECK_MSG(outside == 0, "top_k %d: %ld draws outside the k best", k, outside);
        CHECK_MSG(distinct == k, "top_k %d: %ld distinct ids drawn", k, distinct);
        /* the frequencies inside are softmax(x/T) renormalised over the k best */
        double prob[N] = {0}, s = 0.0;
        for (int i = 0; i < k; i++)
            s += exp((double)x[ord[i]] / 3.0);
        for (int i = 0; i < k; i++)
            prob[ord[i]] = exp((double)x[ord[i]] / 3.0) / s;
        int dof;
        double chi = s_chi2(counts, prob, N, 4000, &dof);
        CHECK_MSG(chi < s_chi2_bound(dof), "top_k %d chi2 %g", k, chi);
    }
    /* ties at the boundary go to the lower id */
    float t[6] = {0.0f, 5.0f, 5.0f, 1.0f, 5.0f, 5.0f};
    sampling_params_t p;
    sampling_params_init(&p);
    p.top_k = 2;
    long c6[6];
    CHECK(s_histogram(&p, NULL, t, 6, 500, c6) == 0);
    CHECK(c6[1] > 0 && c6[2] > 0 && c6[4] == 0 && c6[5] == 0 && c6[0] == 0 && c6[3] == 0);
}

/* Independent nucleus of softmax(x/T) after top_k (0 = off): in[] marks members, returns size. */
static int s_ref_nucleus(const float *x, int n, double t, int top_k, double top_p, bool *in,
                         double *renorm) {
    double *prob = malloc((size_t)n * sizeof *prob);
    int *ord = malloc((size_t)n * sizeof *ord);
    s_softmax(x, n, t, prob);
    s_order(prob, n, ord);
    int kk = top_k > 0 && top_k < n ? top_k : n;
    double mass = 0.0;
    for (int i = 0; i < kk; i++)
        mass += prob[ord[i]];
    double acc = 0.0;
    int m = 0;
    memset(in, 0, (size_t)n * sizeof *in);
    while (m < kk) {
        acc += prob[ord[m]] / mass;
        in[ord[m++]] = true;
        if (acc >= top_p) break;
    }
    double s = 0.0;
    for (int i = 0; i < n; i++)
        s += in[i] ? prob[i] : 0.0;
    for (int i = 0; i < n; i++)
        renorm[i] = in[i] ? prob[i] / s : 0.0;
    free(prob);
    free(ord);
    return m;
}

static void test_top_p(void) {
    /* exact small case: p = .4 .3 .2 .1 (ids shuffled), top_p .65 -> {.4, .3} */
    float x[4] = {(float)log(0.2), (float)log(0.4), (float)log(0.1), (float)log(0.3)};
    sampling_params_t p;
    sampling_params_init(&p);
    p.top_p = 0.65;
    p.seed = 3;
    long c4[4];
    CHECK(s_histogram(&p, NULL, x, 4, 7000, c4) == 0);
    CHECK_MSG(c4[0] == 0 && c4[2] == 0, "outside nucleus: %ld %ld", c4[0], c4[2]);
    CHECK_NEAR((double)c4[1] / 7000.0, 4.0 / 7.0, 0.03);

    /* large vocabularies (quickselect path), with and without top_k */
    enum { N = 2000 };
    static float v[N];
    static long counts[N];
    static bool in[N];
    static double ren[N];
    /* quant: 0 = continuous logits, 1 = integer logits (many ties inside one histogram bin,
     * exercising the quickselect of the boundary bin), 2 = all equal (nucleus = lowest ids) */
    struct {
        double t, top_p;
        int top_k;
        double sd;
        int quant;
    } cases[] = {
        {1.0, 0.3, 0, 2.5, 0},  {0.7, 0.9, 0, 2.0, 0},   {1.3, 0.5, 0, 3.0, 0},
        {1.0, 0.8, 30, 2.0, 0}, {2.0, 0.95, 0, 1.0, 0},  {1.0, 0.99, 200, 1.0, 0},
        {1.0, 0.5, 0, 1.5, 1},  {100.0, 0.7, 0, 1.5, 1}, {1.0, 0.3001, 0, 1.0, 2},
        {0.01, 0.9, 0, 1.0, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        for (int i = 0; i < N; i++) {
            v[i] = s_randn(cases[c].sd);
            if (cases[c].quant == 1)
                v[i] = (float)(int)v[i];
            else if (cases[c].quant == 2)
                v[i] = 0.0f;
        }
        sampling_params_init(&p);
        p.temperature = cases[c].t;
        p.top_p = cases[c].top_p;
        p.top_k = cases[c].top_k;
        p.seed = 100 + c;
        int draws = 12000;
        CHECK(s_histogram(&p, NULL, v, N, draws, counts) == 0);
        int m = s_ref_nucleus(v, N, cases[c].t, cases[c].top_k, cases[c].top_p, in, ren);
        long outside = 0;
        for (int i = 0; i < N; i++)
            outside += in[i] ? 0 : counts[i];
        CHECK_MSG(outside == 0, "case %zu: %ld draws outside the nucleus of %d", c, outside, m);
        if (cases[c].quant == 2)
            CHECK_MSG(m == 601 && counts[600] > 0 && counts[0] > 0, "flat: nucleus %d", m);
        int dof;
        double chi = s_chi2(counts, ren, N, draws, &dof);
        CHECK_MSG(chi < s_chi2_bound(dof), "case %zu: nucleus %d, chi2 %g (dof %d, bound %g)", c, m,
                  chi, dof, s_chi2_bound(dof));
    }
}

static void test_min_p(void) {
    enum { N = 300 };
    float x[N];
    long counts[N];
    double prob[N];
    double mps[] = {0.05, 0.3, 1.0};
    double ts[] = {1.0, 0.5, 2.0};
    for (int j = 0; j < 3; j++) {
        for (int i = 0; i < N; i++)
            x[i] = s_randn(1.5);
        sampling_params_t p;
        sampling_params_init(&p);
        p.min_p = mps[j];
        p.temperature = ts[j];
        p.seed = 9;
        CHECK(s_histogram(&p, NULL, x, N, 10000, counts) == 0);
        s_softmax(x, N, ts[j], prob);
        double pmax = 0.0;
        for (int i = 0; i < N; i++)
            pmax = prob[i] > pmax ? prob[i] : pmax;
        long outside = 0;
        int members = 0;
        double s = 0.0;
        for (int i = 0; i < N; i++) {
            bool keep = prob[i] >= mps[j] * pmax;
            members += keep;
            s += keep ? prob[i] : 0.0;
            if (!keep) outside += counts[i];
        }
        CHECK_MSG(outside == 0, "min_p %g: %ld draws outside (%d members)", mps[j], outside,
                  members);
        for (int i = 0; i < N; i++)
            prob[i] = prob[i] >= mps[j] * pmax ? prob[i] / s : 0.0;
        int dof;
        double chi = s_chi2(counts, prob, N, 10000, &dof);
        CHECK_MSG(chi < s_chi2_bound(dof), "min_p %g chi2 %g", mps[j], chi);
    }
}

static void test_determinism(void) {
    float x[16];
    for (int i = 0; i < 16; i++)
        x[i] = 0.1f * (float)(i % 3);
    sampling_params_t p;
    sampling_params_init(&p);
    p.seed = 0xdeadbeef;
    p.top_p = 0.95;
    sampling_ws_t *w1 = sampling_ws_new(), *w2 = sampling_ws_new();
    sampling_result_t a, b;
    gerr_t e = {{0}};
    int distinct = 0, seed_diff = 0;
    bool seen[16] = {false};
    for (uint64_t pos = 0; pos < 200; pos++) {
        CHECK(sampling_sample(&p, NULL, x, 16, pos, w1, &a, &e) == 0);
        /* a fresh workspace, after unrelated calls, still gives the same token */
        float junk[16] = {5};
        sampling_sample(&p, NULL, junk, 16, pos + 7, w2, &b, &e);
        CHECK(sampling_sample(&p, NULL, x, 16, pos, w2, &b, &e) == 0);
        CHECK(a.token == b.token && a.logprob == b.logprob);
        if (!seen[a.token]) {
            seen[a.token] = true;
            distinct++;
        }
        sampling_params_t q = p;
        q.seed = p.seed + 1;
        CHECK(sampling_sample(&q, NULL, x, 16, pos, w2, &b, &e) == 0);
        seed_diff += a.token != b.token;
    }
    CHECK_MSG(distinct >= 12, "positions should vary the token: %d distinct", distinct);
    CHECK_MSG(seed_diff > 100, "seeds should vary the token: %d differ", seed_diff);
    sampling_ws_destroy(&w1);
    sampling_ws_destroy(&w2);
}

static void test_history(void) {
    sampling_history_t *h = sampling_history_new();
    gerr_t e = {{0}};
    CHECK(sampling_history_add(h, -1, true, &e) == GERR_INVALID);
    for (int32_t i = 0; i < 20000; i++)
        CHECK(sampling_history_add(h, i * 7, i % 2 == 0, &e) == 0);
    for (int32_t i = 0; i < 20000; i += 2)
        CHECK(sampling_history_add(h, i * 7, true, &e) == 0);
    CHECK(sampling_history_distinct(h) == 20000);
    int bad = 0;
    for (int32_t i = 0; i < 20000; i++) {
        int32_t want = i % 2 == 0 ? 2 : 0;
        bad += sampling_history_generated_count(h, i * 7) != want;
        bad += !sampling_history_seen(h, i * 7);
        bad += sampling_history_seen(h, i * 7 + 1);
    }
    CHECK_MSG(bad == 0, "%d history mismatches", bad);
    sampling_history_clear(h);
    CHECK(sampling_history_distinct(h) == 0 && !sampling_history_seen(h, 0));
    CHECK(sampling_history_add(h, 5, false, &e) == 0 && sampling_history_seen(h, 5));
    CHECK(sampling_history_generated_count(h, 5) == 0);
    sampling_history_destroy(&h);
    sampling_history_destroy(&h);
    CHECK(h == NULL);
}

static void test_penalties(void) {
    sampling_history_t *h = sampling_history_new();
    gerr_t e = {{0}};
    /* prompt: 0 1 2; generated: 2 3 3 3 */
    sampling_history_add(h, 0, false, &e);
    sampling_history_add(h, 1, false, &e);
    sampling_history_add(h, 2, false, &e);
    sampling_history_add(h, 2, true, &e);
    for (int i = 0; i < 3; i++)
        sampling_history_add(h, 3, true, &e);
    sampling_history_add(h, 9, true, &e); /* beyond the vector: ignored */

    sampling_params_t p;
    sampling_params_init(&p);
    float x[5] = {2.0f, -1.5f, 3.0f, 1.0f, 4.0f};
    sampling_apply_penalties(&p, h, x, 5); /* all off: unchanged */
    CHECK(x[0] == 2.0f && x[1] == -1.5f && x[2] == 3.0f && x[3] == 1.0f && x[4] == 4.0f);

    p.repetition_penalty = 2.0;
    sampling_apply_penalties(&p, h, x, 5);
    CHECK(x[0] == 1.0f);  /* positive, seen in prompt: divided */
    CHECK(x[1] == -3.0f); /* negative: multiplied */
    CHECK(x[2] == 1.5f);
    CHECK(x[3] == 0.5f);
    CHECK(x[4] == 4.0f); /* never seen */

    float y[5] = {2.0f, -1.5f, 3.0f, 1.0f, 4.0f};
    sampling_params_init(&p);
    p.frequency_penalty = 0.5;
    p.presence_penalty = 0.25;
    sampling_apply_penalties(&p, h, y, 5);
    CHECK(y[0] == 2.0f && y[1] == -1.5f); /* prompt only: untouched (OpenAI) */
    CHECK(y[2] == 3.0f - 0.5f - 0.25f);   /* generated once */
    CHECK(y[3] == 1.0f - 1.5f - 0.25f);   /* generated three times */
    CHECK(y[4] == 4.0f);

    /* both: repetition first, then frequency/presence */
    float z[5] = {2.0f, -1.5f, 3.0f, 1.0f, 4.0f};
    p.repetition_penalty = 2.0;
    sampling_apply_penalties(&p, h, z, 5);
    CHECK(z[2] == 1.5f - 0.75f && z[3] == 0.5f - 1.75f && z[0] == 1.0f);

    /* sampling sees the penalised logits: greedy moves off token 2 */
    float w[5] = {0.0f, 0.0f, 3.0f, 0.0f, 2.9f};
    sampling_params_init(&p);
    p.temperature = 0.0;
    sampling_ws_t *ws = sampling_ws_new();
    sampling_result_t r;
    CHECK(sampling_sample(&p, h, w, 5, 0, ws, &r, &e) == 0 && r.token == 2);
    p.presence_penalty = 0.2;
    CHECK(sampling_sample(&p, h, w, 5, 0, ws, &r, &e) == 0 && r.token == 4);
    CHECK(w[2] == 3.0f); /* the caller's vector is not modified */
    sampling_ws_destroy(&ws);
    sampling_history_destroy(&h);
}

static void test_logprobs(void) {
    enum { N = 20 };
    float x[N];
    for (int i = 0; i < N; i++)
        x[i] = s_randn(2.0);
    x[7] = x[3]; /* a tie: the lower id must come first */
    sampling_history_t *h = sampling_history_new();
    gerr_t e = {{0}};
    sampling_history_add(h, 3, true, &e);
    sampling_params_t p;
    sampling_params_init(&p);
    p.n_logprobs = N;
    p.frequency_penalty = 0.0;
    sampling_ws_t *ws = sampling_ws_new();
    double ts[] = {1.0, 0.3, 0.0};
    for (int j = 0; j < 3; j++) {
        p.temperature = ts[j];
        sampling_result_t r;
        CHECK(sampling_sample(&p, h, x, N, (uint64_t)j, ws, &r, &e) == 0);
        CHECK(r.n_top == N);
        /* independent log-softmax in double, T-independent ("raw") */
        double mx = -INFINITY, s = 0.0, ref[N];
        for (int i = 0; i < N; i++)
            mx = x[i] > mx ? x[i] : mx;
        for (int i = 0; i < N; i++)
            s += exp((double)x[i] - mx);
        for (int i = 0; i < N; i++)
            ref[i] = (double)x[i] - mx - log(s);
        double total = 0.0, maxdiff = 0.0;
        bool sorted = true;
        for (int i = 0; i < r.n_top; i++) {
            total += exp((double)r.top[i].logprob);
            double d = fabs((double)r.top[i].logprob - ref[r.top[i].id]);
            maxdiff = d > maxdiff ? d : maxdiff;
            if (i > 0) {
                float a = r.top[i - 1].logprob, b = r.top[i].logprob;
                if (a < b || (a == b && r.top[i - 1].id > r.top[i].id)) sorted = false;
            }
        }
        CHECK_NEAR(total, 1.0, 1e-5);
        CHECK_MSG(maxdiff < 1e-5, "T=%g: max logprob diff %g", ts[j], maxdiff);
        CHECK(sorted);
        CHECK_NEAR(r.logprob, ref[r.token], 1e-5);
    }
    /* with a penalty, logprobs are of the penalised logits */
    p.frequency_penalty = 1.0;
    p.n_logprobs = 3;
    p.temperature = 0.0;
    sampling_result_t r;
    CHECK(sampling_sample(&p, h, x, N, 0, ws, &r, &e) == 0);
    CHECK(r.n_top == 3);
    float xp[N];
    memcpy(xp, x, sizeof xp);
    xp[3] -= 1.0f;
    double mx = -INFINITY, s = 0.0;
    for (int i = 0; i < N; i++)
        mx = xp[i] > mx ? xp[i] : mx;
    for (int i = 0; i < N; i++)
        s += exp((double)xp[i] - mx);
    for (int i = 0; i < 3; i++)
        CHECK_NEAR(r.top[i].logprob, (double)xp[r.top[i].id] - mx - log(s), 1e-5);
    sampling_ws_destroy(&ws);
    sampling_history_destroy(&h);
}

static void test_masking(void) {
    enum { N = 100 };
    float x[N];
    for (int i = 0; i < N; i++)
        x[i] = (float)(i % 10) * 0.1f;
    x[70] = 50.0f; /* best overall, beyond the vocab limit */
    x[12] = 40.0f; /* banned */
    x[30] = 39.0f; /* banned */
    x[44] = 20.0f; /* best allowed */
    const int32_t banned[] = {12, 30, 77};
    sampling_params_t p;
    sampling_params_init(&p);
    p.vocab_limit = 50;
    p.banned_ids = banned;
    p.n_banned = 3;
    p.n_logprobs = 5;
    p.temperature = 0.0;
    sampling_ws_t *ws = sampling_ws_new();
    sampling_result_t r;
    gerr_t e = {{0}};
    CHECK(sampling_sample(&p, NULL, x, N, 0, ws, &r, &e) == 0);
    CHECK(r.token == 44);
    bool ok = true;
    for (int i = 0; i < r.n_top; i++)
        ok = ok && r.top[i].id < 50 && r.top[i].id != 12 && r.top[i].id != 30;
    CHECK(ok && r.top[0].id == 44);
    /* sampling at a high temperature never leaves the allowed set */
    x[44] = 0.0f;
    p.temperature = 5.0;
    long counts[N];
    CHECK(s_histogram(&p, NULL, x, N, 5000, counts) == 0);
    long bad = 0, distinct = 0;
    for (int i = 0; i < N; i++) {
        if (i >= 50 || i == 12 || i == 30) bad += counts[i];
        distinct += counts[i] > 0;
    }
    CHECK_MSG(bad == 0, "%ld masked draws", bad);
    CHECK(distinct == 48);
    p.top_p = 0.5;
    CHECK(s_histogram(&p, NULL, x, N, 2000, counts) == 0);
    bad = counts[12] + counts[30];
    for (int i = 50; i < N; i++)
        bad += counts[i];
    CHECK(bad == 0);
    /* everything masked */
    const int32_t all[] = {0, 1};
    float two[3] = {1.0f, 2.0f, 3.0f};
    sampling_params_init(&p);
    p.vocab_limit = 2;
    p.banned_ids = all;
    p.n_banned = 2;
    CHECK(sampling_sample(&p, NULL, two, 3, 0, ws, &r, &e) == GERR_INVALID);
    sampling_ws_destroy(&ws);
}

static void test_stop(void) {
    const int32_t stops[] = {200002, 199999, 200012};
    sampling_params_t p;
    sampling_params_init(&p);
    CHECK(!sampling_is_stop(&p, 200002));
    p.stop_ids = stops;
    p.n_stop = 3;
    CHECK(sampling_is_stop(&p, 200002) && sampling_is_stop(&p, 200012));
    CHECK(!sampling_is_stop(&p, 0) && !sampling_is_stop(&p, -1));
    gerr_t e = {{0}};
    CHECK(sampling_params_validate(&p, 201088, &e) == 0);
    CHECK(sampling_params_validate(&p, 200000, &e) == GERR_INVALID);
}

static double s_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void test_large_vocab(void) {
    enum { N = 201088 };
    float *x = malloc(N * sizeof *x);
    int am = 0;
    for (int i = 0; i < N; i++) {
        x[i] = s_randn(3.0);
        if (i < 200019 && x[i] > x[am]) am = i;
    }
    sampling_history_t *h = sampling_history_new();
    gerr_t e = {{0}};
    for (int i = 0; i < 2000; i++)
        sampling_history_add(h, (i * 97) % N, i % 3 == 0, &e);
    sampling_ws_t *ws = sampling_ws_new();
    struct {
        const char *name;
        double t;
        int top_k;
        double top_p, min_p;
    } cases[] = {
        {"greedy", 0.0, 0, 1.0, 0.0},       {"top_k=50", 1.0, 50, 1.0, 0.0},
        {"top_k+top_p", 0.8, 40, 0.9, 0.0}, {"top_p=0.9", 1.0, 0, 0.9, 0.0},
        {"plain T=1", 1.0, 0, 1.0, 0.0},    {"min_p=0.05", 1.0, 0, 1.0, 0.05},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        sampling_params_t p;
        sampling_params_init(&p);
        p.temperature = cases[c].t;
        p.top_k = cases[c].top_k;
        p.top_p = cases[c].top_p;
        p.min_p = cases[c].min_p;
        p.vocab_limit = 200019;
        p.n_logprobs = 5;
        p.seed = 11;
        const int reps = 20;
        int ok = 0;
        double t0 = s_now();
        for (int k = 0; k < reps; k++) {
            sampling_result_t r;
            if (sampling_sample(&p, NULL, x, N, (uint64_t)k, ws, &r, &e) == 0 && r.token >= 0 &&
                r.token < 200019 && r.n_top == 5 && r.top[0].id == am &&
                (cases[c].t > 0.0 || r.token == am))
                ok++;
        }
        double dt = (s_now() - t0) / reps;
        CHECK_MSG(ok == reps, "%s: %d of %d calls right", cases[c].name, ok, reps);
        printf("  V=%d %-12s %.3f ms/token\n", N, cases[c].name, dt * 1e3);
        /* with a history: penalties cost O(distinct) on top */
        p.repetition_penalty = 1.1;
        p.presence_penalty = 0.3;
        sampling_result_t r;
        CHECK(sampling_sample(&p, h, x, N, 0, ws, &r, &e) == 0);
    }
    sampling_ws_destroy(&ws);
    sampling_history_destroy(&h);
    free(x);
}

int main(void) {
    test_params();
    test_greedy();
    test_uniform();
    test_temperature_frequencies();
    test_top_k();
    test_top_p();
    test_min_p();
    test_determinism();
    test_history();
    test_penalties();
    test_logprobs();
    test_masking();
    test_stop();
    test_large_vocab();
    return tcheck_done("test_sampling");
}
