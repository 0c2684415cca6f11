/* sampling: choose the next token from a logits vector.
 *
 * What it is: the sampler of the CPU tools (gptoss-run) and of shard rank 0. One call takes the
 * logits of one sequence (length V, 201088 for the real model), the request's parameters and the
 * token history, and returns the chosen id, its logprob and the top-N alternatives.
 *
 * What it is not: it keeps no request state and no random stream. The uniform draw for the token
 * at absolute position p of a request is sampling_uniform(seed, p), a pure function, so a replay
 * after a shard restart (or the same seeded request sent twice) picks the same tokens. A request
 * without a seed gets a random one from the caller. It does not parse requests (JSON stays at the
 * HTTP edge); it only validates the numbers it is given.
 *
 * Pipeline, in this order (vLLM's order):
 *   1. mask: ids >= vocab_limit and banned ids get -inf; NaN logits count as -inf, +inf as
 *      FLT_MAX.
 *   2. penalties: repetition (llama.cpp/vLLM: for ids seen in prompt+output, a positive logit is
 *      divided by it, a negative one multiplied), then frequency and presence (OpenAI: logit -=
 *      count * frequency_penalty + (count > 0) * presence_penalty, counts of generated tokens).
 *   3. logprobs: "raw" logprobs = log_softmax of the logits after steps 1-2, before temperature
 *      and truncation (vLLM's default). The chosen token's logprob and the top-N alternatives are
 *      taken from this distribution.
 *   4. temperature 0: greedy argmax (ties -> lowest id); top_k/top_p/min_p are then irrelevant.
 *   5. temperature > 0: q = softmax(logits / T) over the unmasked ids; min_p keeps ids with
 *      q >= min_p * max(q); top_k keeps the k best of those (ties -> lower id); top_p keeps the
 *      smallest prefix (best first) of those whose renormalized mass reaches top_p (at least one
 *      id); one id is drawn from the survivors with u = sampling_uniform(seed, position).
 *
 * Cost per call: a few O(V) passes (copy, argmax, one expf per id for the logprob normaliser, one
 * more for the temperature weights unless top_k is set), plus O(V log k) worst case for top_k (a
 * k-entry heap, usually O(V)); top_p without top_k finds the nucleus boundary with a histogram of
 * mass by log-weight and a quickselect inside the boundary bin (expected O(V)), then draws in id
 * order; penalties cost O(#distinct history ids). Never a sort of V. About 2-8 ms at V = 201088 on
 * one core of the build machine (printed by test_sampling). */
#ifndef GPTOSS_SAMPLING_H
#define GPTOSS_SAMPLING_H

#include <stdbool.h>
#include <stdint.h>

#include "gerr.h"

#define SAMPLING_MAX_LOGPROBS    20    /* most top-N alternatives a request may ask for */
#define SAMPLING_MAX_TEMPERATURE 100.0 /* largest accepted temperature */

/* Parameters of one request. Plain data; the id lists are borrowed (the caller keeps them alive
 * while the params are used). Initialise with sampling_params_init, then set what differs. */
typedef struct {
    double temperature;        /* 0 = greedy argmax; valid range [0, 100] */
    int32_t top_k;             /* keep the k most likely ids; 0 = off; >= 0 */
    double top_p;              /* nucleus mass; 1 = off; valid range (0, 1] */
    double min_p;              /* keep ids with p >= min_p * p_max; 0 = off; valid [0, 1] */
    uint64_t seed;             /* always used: the caller fills in a random one if unset */
    bool seed_set;             /* true when the client chose the seed (informational) */
    double frequency_penalty;  /* OpenAI, per generated occurrence; 0 = off; valid [-2, 2] */
    double presence_penalty;   /* OpenAI, once per generated id; 0 = off; valid [-2, 2] */
    double repetition_penalty; /* llama.cpp/vLLM, prompt+generated ids; 1 = off; valid > 0 */
    int32_t n_logprobs;        /* top-N alternatives to return; 0..SAMPLING_MAX_LOGPROBS */
    int32_t vocab_limit;       /* ids >= this are never sampled; 0 = no limit; clamped to V */
    const int32_t *banned_ids; /* [n_banned] ids never sampled; borrowed; NULL if n_banned 0 */
    int32_t n_banned;          /* entries in banned_ids; >= 0 */
    const int32_t *stop_ids;   /* [n_stop] ids that end the sequence; borrowed */
    int32_t n_stop;            /* entries in stop_ids; >= 0 */
} sampling_params_t;

/* One alternative: a token id and its raw logprob (natural log). */
typedef struct {
    int32_t id;    /* token id, in [0, V) */
    float logprob; /* raw logprob (after penalties, before temperature), <= 0 */
} sampling_logprob_t;

/* What one sampling step returns. */
typedef struct {
    int32_t token;                                 /* chosen id */
    float logprob;                                 /* raw logprob of the chosen id */
    int32_t n_top;                                 /* entries filled in top (<= n_logprobs) */
    sampling_logprob_t top[SAMPLING_MAX_LOGPROBS]; /* best first; ties -> lower id */
} sampling_result_t;

/* Token history of one sequence: id -> (generated count, seen in prompt or output). A hash map,
 * so a step costs O(#distinct ids), not O(history length). Opaque. */
typedef struct sampling_history sampling_history_t;

/* Scratch memory for sampling_sample (grows to V on first use, reused after). Opaque; one per
 * thread, never shared between concurrent calls. Holds no state that affects the result. */
typedef struct sampling_ws sampling_ws_t;

/* Sets p to OpenAI's defaults: temperature 1, top_k 0, top_p 1, min_p 0, penalties off (0, 0, 1),
 * n_logprobs 0, no vocab limit, no banned or stop ids, seed 0 (unset). */
void sampling_params_init(sampling_params_t *p);

/* Checks p against the ranges above for a vocabulary of n_vocab ids (banned and stop ids must lie
 * in [0, n_vocab)). Returns 0, or GERR_INVALID with a message naming the field, its value and the
 * accepted range. Does not keep p. */
int sampling_params_validate(const sampling_params_t *p, int32_t n_vocab, gerr_t *e);

/* True when id is one of p->stop_ids. */
bool sampling_is_stop(const sampling_params_t *p, int32_t id);

/* The uniform draw in [0, 1) for the token at absolute position `position` of a request seeded
 * with `seed`: a SplitMix64-style hash of (seed, position), 53 random bits. Pure function. */
double sampling_uniform(uint64_t seed, uint64_t position);

/* Allocates an empty history; NULL when out of memory. The caller owns it (free with
 * sampling_history_destroy). */
sampling_history_t *sampling_history_new(void);

/* Frees *h and sets *h to NULL; safe on NULL and twice. */
void sampling_history_destroy(sampling_history_t **h);

/* Forgets every token (keeps the memory), e.g. before replaying a sequence. */
void sampling_history_clear(sampling_history_t *h);

/* Records one token: a prompt token (generated = false) marks id as seen; a generated token also
 * counts toward frequency/presence. Returns 0, GERR_INVALID for id < 0, GERR_NOMEM. */
int sampling_history_add(sampling_history_t *h, int32_t id, bool generated, gerr_t *e);

/* How many times id was recorded as generated (0 if never). */
int32_t sampling_history_generated_count(const sampling_history_t *h, int32_t id);

/* True when id was recorded at all (prompt or generated). */
bool sampling_history_seen(const sampling_history_t *h, int32_t id);

/* Number of distinct ids recorded. */
int32_t sampling_history_distinct(const sampling_history_t *h);

/* Applies the penalties of p for history h (may be NULL: no-op) to logits[0..n) in place, as in
 * step 2 above; ids >= n in h are skipped. Does not mask or keep anything. */
void sampling_apply_penalties(const sampling_params_t *p, const sampling_history_t *h,
                              float *logits, int32_t n);

/* Allocates an empty workspace; NULL when out of memory. The caller owns it. */
sampling_ws_t *sampling_ws_new(void);

/* Frees *ws and sets *ws to NULL; safe on NULL and twice. */
void sampling_ws_destroy(sampling_ws_t **ws);

/* Samples one token from logits[0..n_vocab) (borrowed, not modified) for the token at absolute
 * position `position`, with params p (validated here), history h (may be NULL: no penalties) and
 * scratch ws. Fills *out. Returns 0; GERR_INVALID (bad params, or every id masked); GERR_NOMEM.
 * Deterministic: the same (p, h, logits, position) always gives the same *out. */
int sampling_sample(const sampling_params_t *p, const sampling_history_t *h, const float *logits,
                    int32_t n_vocab, uint64_t position, sampling_ws_t *ws, sampling_result_t *out,
                    gerr_t *e);

#endif
