/* gw: the types that cross from the HTTP side of the gateway to the scheduler.
 *
 * The HTTP side (http.c, api_*.c) parses a request, renders and tokenizes the
 * prompt, and hands the scheduler a gw_request_t (token ids and sampling
 * settings only: no JSON past this point). The scheduler thread owns the request
 * from then on and reports back through the request's gw_stream_t, a small
 * thread-safe event queue: one TOKEN event per generated token (with its
 * logprobs), then one FINISH event per choice. The HTTP side turns tokens into
 * text (Harmony parser, stop strings) and JSON. A stream is reference counted so
 * either side may go away first (a client disconnect, a finished request). */
#ifndef GPTOSS_GW_H
#define GPTOSS_GW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GW_MAX_LOGPROBS 20
#define GW_MAX_STOP_IDS 16

typedef enum {
    GW_FINISH_NONE = 0,
    GW_FINISH_STOP,      /* a stop token was sampled (or the API layer matched a stop string) */
    GW_FINISH_LENGTH,    /* max_tokens or the context limit reached */
    GW_FINISH_CANCELLED, /* sched_cancel (client gone, /v1/cancel) */
    GW_FINISH_TIMEOUT,   /* the request's max time passed */
    GW_FINISH_ERROR,     /* inference failed; message says why (never a made-up answer) */
} gw_finish_t;

typedef enum { GW_EV_TOKEN = 1, GW_EV_FINISH = 2 } gw_ev_kind_t;

/* One event of a stream. */
typedef struct {
    gw_ev_kind_t kind;
    int choice;                       /* 0 .. n_choices-1 */
    int32_t token;                    /* TOKEN: sampled id */
    float logprob;                    /* TOKEN: its raw logprob */
    int n_top;                        /* TOKEN: alternatives filled */
    int32_t top_ids[GW_MAX_LOGPROBS]; /* TOKEN: best first */
    float top_logprobs[GW_MAX_LOGPROBS];
    gw_finish_t finish; /* FINISH: why */
    char message[256];  /* FINISH with ERROR/TIMEOUT: what happened */
} gw_event_t;

/* Times of one request in seconds since the epoch (CLOCK_REALTIME as double); 0 = not yet. */
typedef struct {
    double submitted;     /* sched_submit accepted it */
    double scheduled;     /* its first prefill step was sent */
    double first_token;   /* its first token came back */
    double finished;      /* its last choice finished */
    int prompt_tokens;    /* prompt length */
    int generated_tokens; /* over all choices */
} gw_timings_t;

typedef struct gw_stream gw_stream_t;

/* A new stream with one reference (caller owns it; release with gw_stream_unref). */
gw_stream_t *gw_stream_new(void);
/* Adds a reference and returns s. */
gw_stream_t *gw_stream_ref(gw_stream_t *s);
/* Drops a reference (frees at zero) and sets *s to NULL (safe on NULL). */
void gw_stream_unref(gw_stream_t **s);
/* Appends an event (copied) and calls the notify hook outside the lock. Returns -1 on OOM. */
int gw_stream_push(gw_stream_t *s, const gw_event_t *ev);
/* Moves up to max queued events into out (caller-owned array); returns how many. Never blocks. */
size_t gw_stream_pop(gw_stream_t *s, gw_event_t *out, size_t max);
/* Blocks until an event is queued or timeout_ms passes; returns 1 if events are queued. */
int gw_stream_wait(gw_stream_t *s, int timeout_ms);
/* Sets the hook called after each push (e.g. to resume a suspended HTTP connection).
 * fn runs on the pushing thread; it must not call back into the stream's pop/wait. */
void gw_stream_set_notify(gw_stream_t *s, void (*fn)(void *arg), void *arg);
/* Copies the request's timings (written by the scheduler) into *t. */
void gw_stream_get_timings(gw_stream_t *s, gw_timings_t *t);
/* Updates the timings (scheduler side); fields <= 0 in t are left unchanged. */
void gw_stream_set_timings(gw_stream_t *s, const gw_timings_t *t);

/* What the scheduler needs to run a request. Built by the HTTP side. */
typedef struct {
    uint64_t id;     /* set by sched_submit */
    char id_str[64]; /* client-visible id ("chatcmpl-...", "cmpl-..."), for /v1/cancel */
    int32_t *prompt; /* [n_prompt] token ids, owned by the request */
    int n_prompt;
    int n_choices;      /* n >= 1: independent samples of the same prompt */
    int max_tokens;     /* generated tokens per choice (>= 1) */
    float temperature;  /* 0 = greedy */
    float top_p, min_p; /* 1 / 0 = off */
    int top_k;          /* 0 = off */
    float frequency_penalty, presence_penalty, repetition_penalty; /* 0, 0, 1 = off */
    uint64_t seed;                                                 /* choice c uses seed + c */
    int n_logprobs;                    /* 0..20 alternatives per token (TOKEN events carry them) */
    int32_t stop_ids[GW_MAX_STOP_IDS]; /* sampling one of these finishes a choice (STOP) */
    int n_stop_ids;
    double max_time_s;   /* deadline after submit (0 = the server default) */
    gw_stream_t *stream; /* one reference, owned by the request */
} gw_request_t;

/* Frees a request's prompt and stream reference and the struct itself; *r = NULL. */
void gw_request_free(gw_request_t **r);

/* Seconds since the epoch as a double (CLOCK_REALTIME). */
double gw_now(void);

#endif
