/* api: the OpenAI-shaped JSON side of the gateway's HTTP server, free of libmicrohttpd and of
 * the scheduler so that it can be unit-tested on its own (tests/unit/test_api.c).
 *
 * - api_util.c: byte buffers, OpenAI error bodies, constant-time compare, UTF-8 repair, stop
 *   strings, typed reads of request fields, random ids.
 * - api_chat.c: POST /v1/chat/completions and /v1/completions: request body -> gw_request_t
 *   plus an api_job_t, the per-request response builder that turns the stream's events into
 *   SSE chunks or one final JSON body.
 * - api_misc.c: /v1/models, /tokenize, /detokenize, /health, /ready, /stats bodies.
 * http.c owns the connections and calls these; nothing here blocks or talks to the scheduler. */
#ifndef GPTOSS_API_H
#define GPTOSS_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "gw.h"
#include "sched.h"
#include "tokenizer.h"

/* ---- byte buffer ---------------------------------------------------------------------------- */

/* A growable byte buffer, always NUL-terminated when p != NULL; oom sticks after a failure. */
typedef struct {
    char *p;
    size_t len, cap;
    bool oom;
} api_buf_t;

/* Appends n bytes (NUL-terminates). Returns 0 or -1 (out of memory; oom set). */
int api_buf_put(api_buf_t *b, const void *data, size_t n);
/* Appends a C string. */
int api_buf_puts(api_buf_t *b, const char *s);
/* Frees the storage and zeroes b. */
void api_buf_free(api_buf_t *b);

/* ---- errors --------------------------------------------------------------------------------- */

/* An API error: HTTP status plus the OpenAI fields. */
typedef struct {
    int status;     /* 400, 401, 404, 405, 413, 429, 500, 503 */
    char type[32];  /* "invalid_request_error", "authentication_error", "server_error", ... */
    char param[64]; /* the offending field, "" when none */
    char code[32];  /* short machine code, "" when none */
    char message[512];
} api_error_t;

/* Fills e (status, type from the status, param and code may be NULL) with a formatted message. */
void api_error_set(api_error_t *e, int status, const char *param, const char *code, const char *fmt,
                   ...) __attribute__((format(printf, 5, 6)));
/* {"error":{"message","type","param","code"}} for e; caller frees. NULL when out of memory. */
char *api_error_json(const api_error_t *e);

/* ---- small helpers -------------------------------------------------------------------------- */

/* Compares a[0..na) with b[0..nb) in time that depends only on the lengths; true if equal. */
bool api_ct_equal(const char *a, size_t na, const char *b, size_t nb);
/* Copies s[0..n) with every ill-formed UTF-8 sequence replaced by U+FFFD and NUL bytes by
 * U+FFFD; caller frees. NULL when out of memory. */
char *api_utf8_repair(const char *s, size_t n, size_t *out_len);
/* Fills out[0..2*nbytes] with random lowercase hex (getrandom; NUL-terminated). */
void api_random_hex(char *out, size_t nbytes);
/* A random 64-bit seed. */
uint64_t api_random_u64(void);
/* Position of the earliest occurrence of any stop string in text[from..n), or -1. */
long api_stop_find(const char *text, size_t n, size_t from, char *const *stops, int n_stops);
/* Length of the longest suffix of text[0..n) that is a proper prefix of a stop string, moved
 * back so that text[0..n-result) ends on a UTF-8 character boundary. */
size_t api_stop_holdback(const char *text, size_t n, char *const *stops, int n_stops);

/* Typed reads of optional request fields; JSON null counts as absent. Each returns 0 when the
 * field is absent (out untouched) or valid (out set), or -1 with e filled (400 naming it). */
int api_get_number(const cJSON *obj, const char *key, double lo, double hi, double *out,
                   api_error_t *e);
int api_get_int(const cJSON *obj, const char *key, long long lo, long long hi, long long *out,
                api_error_t *e);
int api_get_bool(const cJSON *obj, const char *key, bool *out, api_error_t *e);
int api_get_string(const cJSON *obj, const char *key, const char **out, api_error_t *e);

/* ---- chat / completion jobs ----------------------------------------------------------------- */

typedef enum { API_KIND_CHAT = 0, API_KIND_COMPLETION } api_kind_t;

/* Server settings the request parser needs (copied from http_opts_t and the scheduler). */
typedef struct {
    const char *model_name;
    int max_messages;
    int max_tokens_limit;   /* largest max_tokens accepted (0 = no limit but the context) */
    int default_max_tokens; /* when the request gives none */
    float default_temperature;
    const char *default_reasoning; /* "low" | "medium" | "high" */
    int max_context;               /* prompt + generated tokens (0 = unknown) */
    int vocab_size;                /* ids accepted in token prompts (0: tokenizer size) */
} api_limits_t;

#define API_MAX_STOPS   16
#define API_MAX_CHOICES 16

typedef struct api_choice api_choice_t;

/* The response builder of one chat or completion request. Created by api_job_from_*; fed the
 * stream's events on an HTTP thread (one thread at a time); freed with api_job_free. */
typedef struct {
    api_kind_t kind;
    bool stream;        /* SSE response */
    bool include_usage; /* stream_options.include_usage */
    bool logprobs;      /* logprobs asked for */
    int top_logprobs;   /* alternatives per token, 0..20 */
    char id[64];        /* "chatcmpl-<hex>" / "cmpl-<hex>" */
    char model[128];
    long long created; /* unix seconds */
    char *stops[API_MAX_STOPS];
    int n_stops;
    int n_choices;
    api_choice_t *choices; /* [n_choices] */
    const tokenizer_t *tok;
    int prompt_tokens;
    int max_tokens;
    gw_stream_t *stream_ref; /* a reference to the request's stream, for timings (may be NULL) */
    api_buf_t out;           /* streaming: SSE bytes ready to send */
    size_t out_off;          /* bytes of out already handed to the connection */
    uint64_t events_seen;    /* events fed so far */
    int n_finished;          /* choices finished */
    bool done;               /* every choice finished (streaming: [DONE] appended) */
    bool want_cancel;        /* choices were finished here (stop strings): cancel the rest */
    bool failed;             /* a choice finished with ERROR / TIMEOUT; err says what */
    api_error_t err;
    gw_timings_t timings; /* copied when done */
    int32_t forced[64];   /* chat: header tokens appended to the prompt by tool_choice
                             (required / a named function), fed to each choice's parser
                             before its first generated token */
    int n_forced;
} api_job_t;

/* Parses a chat-completions body into *job and *req (both caller-owned: api_job_free,
 * gw_request_free), rendering the Harmony prompt with tok. Returns 0, or -1 with e filled. */
int api_job_from_chat(const cJSON *body, const api_limits_t *lim, const tokenizer_t *tok,
                      api_job_t **job, gw_request_t **req, api_error_t *e);
/* The same for a raw /v1/completions body (no Harmony; prompt text or token ids). */
int api_job_from_completion(const cJSON *body, const api_limits_t *lim, const tokenizer_t *tok,
                            api_job_t **job, gw_request_t **req, api_error_t *e);
/* Feeds n stream events. Streaming jobs append SSE bytes to job->out. Returns 0 or -1 (out of
 * memory: the job is then failed and done). */
int api_job_feed(api_job_t *job, const gw_event_t *ev, size_t n);
/* Ends a job early with an error (e.g. the server is stopping): streaming jobs get an error
 * chunk and [DONE]; others a failed result. */
void api_job_fail(api_job_t *job, int status, const char *code, const char *msg);
/* The non-streaming response of a done job: the JSON body (caller frees) and its status.
 * Also used for a streaming job that failed before any event. NULL when out of memory. */
char *api_job_response(api_job_t *job, int *status);
/* The finish reason of choice i ("stop", "length", "tool_calls", "abort", "error"), or NULL
 * while it runs. */
const char *api_job_finish_reason(const api_job_t *job, int i);
/* Generated tokens of choice i. */
int api_job_choice_tokens(const api_job_t *job, int i);
/* Frees a job and everything it owns; *job = NULL (safe on NULL). */
void api_job_free(api_job_t **job);

/* ---- other endpoints (bodies; caller frees; NULL with e filled on a client error) ----------- */

/* GET /v1/models (id NULL) or /v1/models/{id} (404 when id is not the model). */
char *api_models(const char *model_name, long long created, const char *id, api_error_t *e);
/* POST /tokenize. */
char *api_tokenize(const cJSON *body, const tokenizer_t *tok, api_error_t *e);
/* POST /detokenize. */
char *api_detokenize(const cJSON *body, const tokenizer_t *tok, api_error_t *e);
/* GET /health: always 200; the body names the state. */
char *api_health(const sched_stats_t *st);
/* GET /ready: *status 200 when READY and ready_checked, else 503 with the reason. */
char *api_ready(const sched_stats_t *st, int *status);
/* GET /stats. */
char *api_stats(const sched_stats_t *st);
/* GET /profiles: {"dir","active","switching_to","profiles":[{"name","description","model",
 * "tp","backend","active"} or {"name","error"} for a file that does not load]}. dir NULL or
 * unreadable: 404 in e. */
char *api_profiles(const char *dir, const sched_stats_t *st, api_error_t *e);

#endif
