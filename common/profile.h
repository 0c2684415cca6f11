/* profile: a deployment profile, one JSON file in deploy/profiles/ naming the
 * model, the backend and shard layout, the batching and context limits, the KV
 * budget, the request defaults and the HTTP address the gateway serves on.
 *
 * Strict at load: every field has a type and a range, unknown fields are
 * refused (a typo such as "max_runing" must not silently fall back to a
 * default), and every message names the field ("profile latency-first: field
 * 'kv_dtype': ..."). What cannot be checked without the model (tp dividing the
 * heads, KV heads and experts) is profile_check_model's job, called once the
 * model's config.json is read. deploy/README.md documents every field.
 *
 * Not here: applying a profile (the gateway maps it onto sched_opts_t and
 * http_opts_t) and generating the model a "generate" hint names (run.sh). */
#ifndef GPTOSS_PROFILE_H
#define GPTOSS_PROFILE_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "gerr.h"

#define PROFILE_MAX_TP         8
#define PROFILE_DEFAULT_DIR    "deploy/profiles"
#define PROFILE_MAX_FILE_BYTES (64 * 1024)

typedef enum {
    PROFILE_BACKEND_CPU = 0,
    PROFILE_BACKEND_CUDA,
} profile_backend_t;

/* A loaded profile. Strings are owned (profile_free frees them); zero/empty
 * fields that are documented as "auto" are left for the gateway to decide. */
typedef struct {
    char *name;        /* "latency-first" (default: the file name without .json) */
    char *description; /* one line for humans ("" when absent) */
    char *model;       /* model folder as written; relative = relative to the gateway's cwd */
    char *path;        /* the file it was loaded from ("" for profile_parse without origin) */

    profile_backend_t backend;   /* "cpu" (default) or "cuda" */
    int tp;                      /* shard count, 1..PROFILE_MAX_TP (default 1) */
    int devices[PROFILE_MAX_TP]; /* GPU index of shard r (cuda); unused for cpu */
    int n_devices;               /* == tp for cuda, 0 for cpu */
    int threads;                 /* CPU threads per shard; 0 = auto (cores / tp) */

    int max_running;      /* sequences decoding at once (default 16) */
    int max_batch_tokens; /* tokens per step (default 512) */
    int prefill_chunk;    /* most prompt tokens of one sequence per step (default 256) */
    int max_context;      /* prompt + generated tokens; 0 = model max, capped by KV (default 0) */
    int max_queue;        /* waiting requests before HTTP 429 (default 256) */

    double kv_gib;    /* KV cache memory per shard, GiB (default 1) */
    char kv_dtype[8]; /* "f32" (default) or "bf16" */

    int default_max_tokens;     /* defaults.max_tokens (default 1024) */
    double default_temperature; /* defaults.temperature, 0..2 (default 1.0) */
    char default_reasoning[8];  /* defaults.reasoning_effort: low|medium|high (default medium) */

    char *http_host; /* http.host (default "127.0.0.1") */
    int http_port;   /* http.port, 0..65535; 0 = any free port (default 8000) */

    bool has_generate;       /* a "generate" hint is present */
    char generate_preset[8]; /* generate.preset: tiny|20b|120b (gptoss-mkmodel --preset) */
    bool generate_tokenizer; /* generate.tokenizer: also write the real tokenizer (default false) */
} profile_t;

/* Loads a profile into *out (caller frees with profile_free, also on failure).
 * path_or_name is a file path when it contains '/' or ends in ".json", else a
 * NAME that resolves to profiles_dir/NAME.json (profiles_dir NULL: PROFILE_DEFAULT_DIR). */
int profile_load(const char *path_or_name, const char *profiles_dir, profile_t *out, gerr_t *err);
/* Parses profile JSON text (len bytes, need not be NUL-terminated) into *out; origin
 * (borrowed, may be NULL) names the source in messages and sets the default name.
 * Caller frees *out with profile_free, also on failure. */
int profile_parse(const char *json, size_t len, const char *origin, profile_t *out, gerr_t *err);
/* Frees the strings of p and zeroes it (safe on a zeroed or already freed profile). */
void profile_free(profile_t *p);
/* Lists the profile names (files NAME.json) in dir, sorted. *names is a malloc'd
 * array of *n malloc'd strings the caller frees (profile_list_free). */
int profile_list(const char *dir, char ***names, int *n, gerr_t *err);
/* Frees what profile_list returned. */
void profile_list_free(char **names, int n);
/* The profile as JSON text with every default filled in (loadable again);
 * malloc'd, caller frees; NULL when out of memory. */
char *profile_to_json(const profile_t *p);
/* Checks p against the model's config: tp must divide the attention heads, the
 * KV heads and the experts and leave every shard at least one MXFP4 block of
 * each expert; max_context must not exceed max_position_embeddings. */
int profile_check_model(const profile_t *p, const gptoss_config_t *cfg, gerr_t *err);
/* Name of a backend ("cpu"); static storage. */
const char *profile_backend_name(profile_backend_t b);

#endif
