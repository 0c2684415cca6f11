/* sampling: choose the next token from a logits vector (see sampling.h for the pipeline).
 *
 * Design notes:
 * - Every call copies the unmasked logits into the workspace once (masking, NaN cleanup and
 *   penalties happen on the copy), so the caller's vector is never touched and the order of the
 *   steps is the documented one.
 * - Candidates are ordered by (logit descending, id ascending): a total order, so every
 *   selection below is deterministic and ties always favour the lower id.
 * - top_k uses a k-entry min-heap over one scan (most ids lose against the heap root in one
 *   compare), then sorts the k survivors. top_p without top_k bins the mass by log-weight, finds
 *   the bin where the cumulative mass crosses top_p, quickselects the boundary id inside that bin
 *   and draws in id order over the ids ranked at or above it: no sort of V, even when the nucleus
 *   is most of V.
 * - The random draw is a pure function of (seed, position): no stream, no global state.
 * It is not thread-safe per workspace; use one sampling_ws_t per thread. */
#include "sampling.h"

#include <assert.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- history: open-addressing hash map id -> counts ------------------------------------ */

typedef struct {
    int32_t id;        /* token id, >= 0 */
    int32_t generated; /* times recorded as generated */
    int32_t total;     /* times recorded at all (prompt + generated) */
} s_hist_entry_t;

struct sampling_history {
    s_hist_entry_t *entries; /* [n] dense, in first-seen order: iterated by penalties */
    int32_t n;               /* entries in use */
    int32_t cap_entries;     /* allocated entries */
    int32_t *slots;          /* [n_slots] index into entries, -1 = empty; linear probing */
    int32_t n_slots;         /* power of two, kept >= 2 * n */
};

static uint32_t s_hash_id(int32_t id) {
    uint32_t x = (uint32_t)id;
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

/* Returns the slot holding id, or the empty slot where it would go. */
static int32_t s_hist_find(const sampling_history_t *h, int32_t id) {
    uint32_t mask = (uint32_t)h->n_slots - 1;
    uint32_t i = s_hash_id(id) & mask;
    while (h->slots[i] >= 0 && h->entries[h->slots[i]].id != id)
        i = (i + 1) & mask;
    return (int32_t)i;
}

static int s_hist_rehash(sampling_history_t *h, int32_t n_slots) {
    int32_t *slots = malloc((size_t)n_slots * sizeof *slots);
    if (!slots) return GERR_NOMEM;
    for (int32_t i = 0; i < n_slots; i++)
        slots[i] = -1;
    free(h->slots);
    h->slots = slots;
    h->n_slots = n_slots;
    for (int32_t k = 0; k < h->n; k++)
        h->slots[s_hist_find(h, h->entries[k].id)] = k;
    return 0;
}

sampling_history_t *sampling_history_new(void) {
    sampling_history_t *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    if (s_hist_rehash(h, 64) < 0) {
        free(h);
        return NULL;
    }
    return h;
}

void sampling_history_destroy(sampling_history_t **h) {
    if (!h || !*h) return;
    free((*h)->entries);
    free((*h)->slots);
    free(*h);
    *h = NULL;
}

void sampling_history_clear(sampling_history_t *h) {
    assert(h);
    h->n = 0;
    for (int32_t i = 0; i < h->n_slots; i++)
        h->slots[i] = -1;
}

int sampling_history_add(sampling_history_t *h, int32_t id, bool generated, gerr_t *e) {
    assert(h);
    if (id < 0) {
        gerr_set(e, "sampling history: token id %d is negative", (int)id);
        return GERR_INVALID;
    }
    int32_t s = s_hist_find(h, id);
    if (h->slots[s] < 0) {
        if (h->n == INT32_MAX / 4) {
            gerr_set(e, "sampling history: too many distinct tokens");
            return GERR_LIMIT;
        }
        if (h->n == h->cap_entries) {
            int32_t cap = h->cap_entries ? 2 * h->cap_entries : 32;
            s_hist_entry_t *ne = realloc(h->entries, (size_t)cap * sizeof *ne);
            if (!ne) {
                gerr_set(e, "sampling history: out of memory");
                return GERR_NOMEM;
            }
            h->entries = ne;
            h->cap_entries = cap;
        }
        if (2 * (h->n + 1) > h->n_slots) {
            if (s_hist_rehash(h, 2 * h->n_slots) < 0) {
                gerr_set(e, "sampling history: out of memory");
                return GERR_NOMEM;
            }
            s = s_hist_find(h, id);
        }
        h->entries[h->n] = (s_hist_entry_t){.id = id, .generated = 0, .total = 0};
        h->slots[s] = h->n++;
    }
    s_hist_entry_t *en = &h->entries[h->slots[s]];
    if (en->total < INT32_MAX) en->total++;
    if (generated && en->generated < INT32_MAX) en->generated++;
    return 0;
}

int32_t sampling_history_generated_count(const sampling_history_t *h, int32_t id) {
    assert(h);
    if (id < 0) return 0;
    int32_t s = s_hist_find(h, id);
    return h->slots[s] < 0 ? 0 : h->entries[h->slots[s]].generated;
}

bool sampling_history_seen(const sampling_history_t *h, int32_t id) {
    assert(h);
    if (id < 0) return false;
    return h->slots[s_hist_find(h, id)] >= 0;
}

int32_t sampling_history_distinct(const sampling_history_t *h) {
    assert(h);
    return h->n;
}

/* ---- params ------------------------------------------------------------------------------ */

void sampling_params_init(sampling_params_t *p) {
    assert(p);
    memset(p, 0, sizeof *p);
    p->temperature = 1.0;
    p->top_k = 0;
    p->top_p = 1.0;
    p->min_p = 0.0;
    p->repetition_penalty = 1.0;
}

/* Checks an id list: count >= 0, pointer present, ids in [0, n_vocab). */
static int s_check_ids(const char *name, const int32_t *ids, int32_t n, int32_t n_vocab,
                       gerr_t *e) {
    if (n < 0) {
        gerr_set(e, "%s: count %d is negative", name, (int)n);
        return GERR_INVALID;
    }
    if (n > 0 && !ids) {
        gerr_set(e, "%s: %d ids announced but no list given", name, (int)n);
        return GERR_INVALID;
    }
    for (int32_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= n_vocab) {
            gerr_set(e, "%s[%d] = %d is not a token id: must be in [0, %d)", name, (int)i,
                     (int)ids[i], (int)n_vocab);
            return GERR_INVALID;
        }
    }
    return 0;
}

int sampling_params_validate(const sampling_params_t *p, int32_t n_vocab, gerr_t *e) {
    assert(p);
    if (n_vocab <= 0) {
        gerr_set(e, "sampling: vocabulary size %d must be positive", (int)n_vocab);
        return GERR_INVALID;
    }
    /* Written as !(in range) so that NaN is rejected too. */
    if (!(p->temperature >= 0.0 && p->temperature <= SAMPLING_MAX_TEMPERATURE)) {
        gerr_set(e, "temperature %g is out of range: must be in [0, %g] (0 = greedy)",
                 p->temperature, SAMPLING_MAX_TEMPERATURE);
        return GERR_INVALID;
    }
    if (p->top_k < 0) {
        gerr_set(e, "top_k %d is out of range: must be >= 0 (0 = off)", (int)p->top_k);
        return GERR_INVALID;
    }
    if (!(p->top_p > 0.0 && p->top_p <= 1.0)) {
        gerr_set(e, "top_p %g is out of range: must be in (0, 1] (1 = off)", p->top_p);
        return GERR_INVALID;
    }
    if (!(p->min_p >= 0.0 && p->min_p <= 1.0)) {
        gerr_set(e, "min_p %g is out of range: must be in [0, 1] (0 = off)", p->min_p);
        return GERR_INVALID;
    }
    if (!(p->frequency_penalty >= -2.0 && p->frequency_penalty <= 2.0)) {
        gerr_set(e, "frequency_penalty %g is out of range: must be in [-2, 2] (0 = off)",
                 p->frequency_penalty);
        return GERR_INVALID;
    }
    if (!(p->presence_penalty >= -2.0 && p->presence_penalty <= 2.0)) {
        gerr_set(e, "presence_penalty %g is out of range: must be in [-2, 2] (0 = off)",
                 p->presence_penalty);
        return GERR_INVALID;
    }
    if (!(p->repetition_penalty > 0.0 && isfinite(p->repetition_penalty))) {
        gerr_set(e, "repetition_penalty %g is out of range: must be a finite number > 0 (1 = off)",
                 p->repetition_penalty);
        return GERR_INVALID;
    }
    if (p->n_logprobs < 0 || p->n_logprobs > SAMPLING_MAX_LOGPROBS) {
        gerr_set(e, "top_logprobs %d is out of range: must be in [0, %d]", (int)p->n_logprobs,
                 SAMPLING_MAX_LOGPROBS);
        return GERR_INVALID;
    }
    if (p->vocab_limit < 0) {
        gerr_set(e, "vocab_limit %d is negative: must be >= 0 (0 = whole vocabulary)",
                 (int)p->vocab_limit);
        return GERR_INVALID;
    }
    int rc = s_check_ids("banned_ids", p->banned_ids, p->n_banned, n_vocab, e);
    if (rc < 0) return rc;
    return s_check_ids("stop_ids", p->stop_ids, p->n_stop, n_vocab, e);
}

bool sampling_is_stop(const sampling_params_t *p, int32_t id) {
    assert(p);
    for (int32_t i = 0; i < p->n_stop; i++)
        if (p->stop_ids[i] == id) return true;
    return false;
}

/* ---- randomness ------------------------------------------------------------------------------ */

/* SplitMix64's finaliser (Steele, Lea, Flood 2014): a bijective 64-bit mix. */
static uint64_t s_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

double sampling_uniform(uint64_t seed, uint64_t position) {
    /* Two rounds keyed by the seed: the position index of the SplitMix64 stream started at
     * mix(seed), so nearby seeds and nearby positions give unrelated draws. */
    uint64_t h = s_mix64(s_mix64(seed) + (position + 1) * 0x9e3779b97f4a7c15ULL);
    return (double)(h >> 11) * 0x1.0p-53;
}

/* ---- penalties ------------------------------------------------------------------------------ */

void sampling_apply_penalties(const sampling_params_t *p, const sampling_history_t *h,
                              float *logits, int32_t n) {
    assert(p);
    if (!h) return;
    bool rep = p->repetition_penalty != 1.0;
    bool fp = p->frequency_penalty != 0.0 || p->presence_penalty != 0.0;
    if (!rep && !fp) return;
    for (int32_t k = 0; k < h->n; k++) {
        const s_hist_entry_t *en = &h->entries[k];
        if (en->id >= n) continue;
        float x = logits[en->id];
        if (rep && en->total > 0)
            x = x > 0.0f ? (float)(x / p->repetition_penalty) : (float)(x * p->repetition_penalty);
        if (fp && en->generated > 0)
            x = (float)(x - (double)en->generated * p->frequency_penalty - p->presence_penalty);
        logits[en->id] = x;
    }
}

/* ---- workspace and candidates ------------------------------------------------------------ */

typedef struct {
    float v;    /* logit after masking and penalties */
    float w;    /* exp((v - max) / T): unnormalised probability (filled where needed) */
    int32_t id; /* token id */
} s_cand_t;

struct sampling_ws {
    float *x;       /* [cap] masked, penalised copy of the logits */
    float *w;       /* [cap] weights for the untruncated path */
    s_cand_t *cand; /* [cap] candidates */
    int32_t cap;    /* entries allocated in each array */
};

sampling_ws_t *sampling_ws_new(void) {
    return calloc(1, sizeof(sampling_ws_t));
}

void sampling_ws_destroy(sampling_ws_t **ws) {
    if (!ws || !*ws) return;
    free((*ws)->x);
    free((*ws)->w);
    free((*ws)->cand);
    free(*ws);
    *ws = NULL;
}

/* Unnormalised probability exp((v - mx) / T) in float (inv_t = 1/T): one expf per id on the
 * full-vocabulary paths. v = -inf gives 0; v <= mx keeps the argument <= 0, so never inf. */
static inline float s_weight(float v, float mx, float inv_t) {
    return expf((v - mx) * inv_t);
}

static int s_ws_reserve(sampling_ws_t *ws, int32_t n) {
    if (ws->cap >= n) return 0;
    float *x = malloc((size_t)n * sizeof *x);
    float *w = malloc((size_t)n * sizeof *w);
    s_cand_t *c = malloc((size_t)n * sizeof *c);
    if (!x || !w || !c) {
        free(x);
        free(w);
        free(c);
        return GERR_NOMEM;
    }
    free(ws->x);
    free(ws->w);
    free(ws->cand);
    ws->x = x;
    ws->w = w;
    ws->cand = c;
    ws->cap = n;
    return 0;
}

/* True when a ranks before b: higher logit, then lower id. */
static inline bool s_better(float av, int32_t aid, float bv, int32_t bid) {
    return av > bv || (av == bv && aid < bid);
}

static int s_cand_cmp(const void *pa, const void *pb) {
    const s_cand_t *a = pa, *b = pb;
    if (s_better(a->v, a->id, b->v, b->id)) return -1;
    if (s_better(b->v, b->id, a->v, a->id)) return 1;
    return 0;
}

/* Restores the min-heap property (root = worst) below index i of heap[0..n). */
static void s_heap_down(s_cand_t *heap, int32_t n, int32_t i) {
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && s_better(heap[m].v, heap[m].id, heap[l].v, heap[l].id)) m = l;
        if (r < n && s_better(heap[m].v, heap[m].id, heap[r].v, heap[r].id)) m = r;
        if (m == i) return;
        s_cand_t t = heap[i];
        heap[i] = heap[m];
        heap[m] = t;
        i = m;
    }
}

/* Writes the k best ids of x[0..n) with x >= floor (and finite-or-+inf, i.e. not -inf) to
 * out[0..count), sorted best first; returns count (<= k). One scan with a k-entry heap. */
static int32_t s_select_top(const float *x, int32_t n, int32_t k, double floor, s_cand_t *out) {
    int32_t m = 0;
    for (int32_t i = 0; i < n; i++) {
        float v = x[i];
        if (v == -INFINITY || (double)v < floor) continue;
        if (m < k) {
            /* sift up */
            int32_t j = m++;
            out[j] = (s_cand_t){.v = v, .w = 0.0f, .id = i};
            while (j > 0) {
                int32_t parent = (j - 1) / 2;
                if (!s_better(out[parent].v, out[parent].id, out[j].v, out[j].id)) break;
                s_cand_t t = out[j];
                out[j] = out[parent];
                out[parent] = t;
                j = parent;
            }
        } else if (s_better(v, i, out[0].v, out[0].id)) {
            out[0] = (s_cand_t){.v = v, .w = 0.0f, .id = i};
            s_heap_down(out, m, 0);
        }
    }
    qsort(out, (size_t)m, sizeof *out, s_cand_cmp);
    return m;
}

static void s_swap(s_cand_t *a, s_cand_t *b) {
    s_cand_t t = *a;
    *a = *b;
    *b = t;
}

/* Reorders c[0..n) so that c[0..return) is the nucleus: the smallest set of best-ranked
 * candidates whose weight sum reaches target (at least one). Expected O(n): quickselect that
 * descends into the side holding the boundary. c[0..return) is not sorted. */
static int32_t s_nucleus(s_cand_t *c, int32_t n, double target) {
    int32_t lo = 0, hi = n;
    double acc = 0.0; /* mass of c[0..lo), all of which is in the nucleus */
    while (hi - lo > 16) {
        /* median of three (by rank) as pivot, moved to hi-1 */
        int32_t mid = lo + (hi - lo) / 2;
        s_cand_t *a = &c[lo], *b = &c[mid], *d = &c[hi - 1];
        if (s_better(b->v, b->id, a->v, a->id)) s_swap(a, b);
        if (s_better(d->v, d->id, b->v, b->id)) {
            s_swap(b, d);
            if (s_better(b->v, b->id, a->v, a->id)) s_swap(a, b);
        }
        s_swap(&c[mid], &c[hi - 1]);
        s_cand_t piv = c[hi - 1];
        int32_t m = lo;
        double mass = 0.0;
        for (int32_t i = lo; i < hi - 1; i++) {
            if (s_better(c[i].v, c[i].id, piv.v, piv.id)) {
                mass += c[i].w;
                s_swap(&c[i], &c[m++]);
            }
        }
        s_swap(&c[m], &c[hi - 1]); /* pivot at m; c[lo..m) better, c[m+1..hi) worse */
        if (acc + mass >= target) {
            hi = m;
            if (hi == lo) /* cannot happen with target > acc, kept for safety */
                return lo > 0 ? lo : 1;
        } else {
            acc += mass + piv.w;
            if (acc >= target) return m + 1;
            lo = m + 1;
        }
    }
    qsort(c + lo, (size_t)(hi - lo), sizeof *c, s_cand_cmp);
    for (int32_t i = lo; i < hi; i++) {
        acc += c[i].w;
        if (acc >= target) return i + 1;
    }
    /* Rounding left the mass just short: take everything up to hi. Only possible when hi == n. */
    return hi > 0 ? hi : 1;
}

/* Draws from c[0..n) (weights w) with u in [0,1): first index whose cumulative weight exceeds
 * u * total. */
static int32_t s_draw(const s_cand_t *c, int32_t n, double u) {
    double total = 0.0;
    for (int32_t i = 0; i < n; i++)
        total += c[i].w;
    double target = u * total, acc = 0.0;
    for (int32_t i = 0; i < n; i++) {
        acc += c[i].w;
        if (acc > target && c[i].w > 0.0f) return c[i].id;
    }
    /* u * total rounded up to total: the last id of positive weight */
    for (int32_t i = n - 1; i > 0; i--)
        if (c[i].w > 0.0f) return c[i].id;
    return c[0].id;
}

/* Draws in id order from the ids i with w[i] > 0 ranked at or above (bv, bid), whose weights sum
 * to total: the first id whose cumulative weight exceeds u * total. When rounding leaves the
 * scan short of the target, the last member (or fallback, the argmax, if none) is returned. */
static int32_t s_draw_ids(const float *x, const float *w, int32_t n, float bv, int32_t bid,
                          double total, double u, int32_t fallback) {
    double target = u * total, acc = 0.0;
    int32_t last = fallback;
    for (int32_t i = 0; i < n; i++) {
        if (w[i] > 0.0f && !s_better(bv, bid, x[i], i)) {
            last = i;
            acc += w[i];
            if (acc > target) return i;
        }
    }
    return last;
}

/* Histogram of the nucleus search: bins of the scaled log-weight (mx - v) / T, bin 0 the most
 * likely. Bins are monotone in the logit, so whole bins above the boundary are in the nucleus and
 * only the boundary bin needs an exact selection. */
#define S_NBINS     2048
#define S_BIN_RANGE 40.0f /* log-weight span binned (exp(-40) ~ 4e-18); beyond: the last bin */

static inline int32_t s_bin(float v, float mx, float inv_t, float bscale) {
    float d = (mx - v) * inv_t * bscale; /* >= 0, may be +inf */
    return d < (float)(S_NBINS - 1) ? (int32_t)d : S_NBINS - 1;
}

/* ---- the sampler ------------------------------------------------------------------------ */

int sampling_sample(const sampling_params_t *p, const sampling_history_t *h, const float *logits,
                    int32_t n_vocab, uint64_t position, sampling_ws_t *ws, sampling_result_t *out,
                    gerr_t *e) {
    assert(p && logits && ws && out);
    int rc = sampling_params_validate(p, n_vocab, e);
    if (rc < 0) return rc;
    int32_t n = p->vocab_limit > 0 && p->vocab_limit < n_vocab ? p->vocab_limit : n_vocab;
    if (s_ws_reserve(ws, n) < 0) {
        gerr_set(e, "sampling: out of memory for a vocabulary of %d", (int)n);
        return GERR_NOMEM;
    }

    /* 1-2. mask and penalise a copy. NaN -> -inf; +inf -> FLT_MAX so that x - max stays finite. */
    float *x = ws->x;
    for (int32_t i = 0; i < n; i++) {
        float v = logits[i];
        x[i] = isnan(v) ? -INFINITY : (v == INFINITY ? FLT_MAX : v);
    }
    sampling_apply_penalties(p, h, x, n);
    for (int32_t i = 0; i < p->n_banned; i++)
        if (p->banned_ids[i] < n) x[p->banned_ids[i]] = -INFINITY;

    /* argmax, lowest id on ties (strict >) */
    int32_t best = -1;
    float mx = -INFINITY, mn = FLT_MAX; /* largest and smallest unmasked logit */
    for (int32_t i = 0; i < n; i++) {
        if (x[i] > mx) {
            mx = x[i];
            best = i;
        }
        if (x[i] < mn && x[i] != -INFINITY) mn = x[i];
    }
    if (best < 0) {
        gerr_set(e,
                 "sampling: every token is masked (vocab_limit %d, %d banned ids, or all "
                 "logits -inf/NaN); nothing can be sampled",
                 (int)n, (int)p->n_banned);
        return GERR_INVALID;
    }

    /* 3. raw log-softmax normaliser: lse = mx + log(sum exp(x - mx)) */
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++)
        sum += (double)expf(x[i] - mx); /* exp(-inf) = 0 */
    double lse = (double)mx + log(sum);

    int32_t tok;
    if (p->temperature == 0.0) {
        tok = best;
    } else {
        double t = p->temperature;
        /* clamped so a tiny T cannot make 0 * inf = NaN for the argmax */
        float inv_t = 1.0 / t > FLT_MAX ? FLT_MAX : (float)(1.0 / t);
        double u = sampling_uniform(p->seed, position);
        /* min_p in logit space: q_i >= min_p * q_max  <=>  x_i >= mx + T * log(min_p) */
        double floor = p->min_p > 0.0 ? (double)mx + t * log(p->min_p) : -INFINITY;
        bool top_p_on = p->top_p < 1.0;
        if (p->top_k > 0 && p->top_k < n) {
            int32_t m = s_select_top(x, n, p->top_k, floor, ws->cand);
            double mass = 0.0;
            for (int32_t i = 0; i < m; i++) {
                ws->cand[i].w = s_weight(ws->cand[i].v, mx, inv_t);
                mass += ws->cand[i].w;
            }
            if (top_p_on) {
                double target = p->top_p * mass, acc = 0.0;
                int32_t keep = m;
                for (int32_t i = 0; i < m; i++) {
                    acc += ws->cand[i].w;
                    if (acc >= target) {
                        keep = i + 1;
                        break;
                    }
                }
                m = keep;
            }
            tok = s_draw(ws->cand, m, u);
        } else {
            /* No top_k: weights of every id passing min_p, kept in ws->w. With top_p, a
             * histogram of mass by log-weight finds the bin holding the nucleus boundary, and a
             * quickselect over that bin's ids finds the boundary id; the draw is then an inverse
             * CDF in id order over the ids ranked at or above it. Nothing is sorted, even when
             * the nucleus holds most of V. */
            float *w = ws->w;
            double mass = 0.0;
            double bin_mass[S_NBINS];
            float span = (mx - mn) * inv_t; /* log-weight range of the unmasked ids */
            float bscale =
                span > 0.0f ? (float)S_NBINS / (span < S_BIN_RANGE ? span : S_BIN_RANGE) : 0.0f;
            if (top_p_on) memset(bin_mass, 0, sizeof bin_mass);
            for (int32_t i = 0; i < n; i++) {
                if (x[i] == -INFINITY || (double)x[i] < floor) {
                    w[i] = 0.0f;
                    continue;
                }
                w[i] = s_weight(x[i], mx, inv_t);
                mass += w[i];
                if (top_p_on) bin_mass[s_bin(x[i], mx, inv_t, bscale)] += w[i];
            }
            float bv = -INFINITY;    /* boundary logit: members rank at or above (bv, bid) */
            int32_t bid = INT32_MAX; /* boundary id */
            double total = mass;     /* weight of the members */
            if (top_p_on) {
                double target = p->top_p * mass, above = 0.0;
                int32_t b = 0;
                while (b < S_NBINS - 1 && above + bin_mass[b] < target)
                    above += bin_mass[b++];
                int32_t m = 0;
                for (int32_t i = 0; i < n; i++)
                    if (w[i] > 0.0f && s_bin(x[i], mx, inv_t, bscale) == b)
                        ws->cand[m++] = (s_cand_t){.v = x[i], .w = w[i], .id = i};
                int32_t keep = m > 0 ? s_nucleus(ws->cand, m, target - above) : 0;
                total = above;
                for (int32_t i = 0; i < keep; i++) {
                    total += ws->cand[i].w;
                    if (i == 0 || s_better(bv, bid, ws->cand[i].v, ws->cand[i].id)) {
                        bv = ws->cand[i].v;
                        bid = ws->cand[i].id;
                    }
                }
            }
            tok = s_draw_ids(x, w, n, bv, bid, total, u, best);
        }
    }

    out->token = tok;
    out->logprob = (float)((double)x[tok] - lse);
    out->n_top = 0;
    if (p->n_logprobs > 0) {
        int32_t m = s_select_top(x, n, p->n_logprobs, -INFINITY, ws->cand);
        for (int32_t i = 0; i < m; i++) {
            out->top[i].id = ws->cand[i].id;
            out->top[i].logprob = (float)((double)ws->cand[i].v - lse);
        }
        out->n_top = m;
    }
    return 0;
}
