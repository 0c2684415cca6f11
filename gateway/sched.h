/* sched: the gateway's scheduler and shard driver, on one thread that owns all
 * request state (STYLE.md point 5).
 *
 * Continuous batching: every step is built from the running sequences (one
 * decode token each) plus prefill chunks of waiting ones under a per-step token
 * budget; new requests join running batches at the next step. Admission is by
 * free KV blocks (the scheduler keeps the block allocator; every shard gets the
 * same block ids in each STEP). The queue is bounded (sched_submit refuses with
 * GERR_LIMIT when full: HTTP 429) and FIFO. A cancelled request (client gone,
 * /v1/cancel) frees its KV blocks at the next loop turn. Each request has a max
 * time.
 *
 * The same thread drives the shards over ZeroMQ (PROTOCOL.md): spawn, hello /
 * load / ready, steps and results, heartbeats; a one-token self-test generation
 * after the shards come up gates the READY state (GET /ready).
 *
 * Other threads call only sched_submit, sched_cancel*, sched_snapshot,
 * sched_drain / sched_resume, sched_restart_shard, sched_switch and sched_free; they hand messages
 * to the scheduler thread and never touch its state. */
#ifndef GPTOSS_SCHED_H
#define GPTOSS_SCHED_H

#include <stdbool.h>
#include <stdint.h>

#include "gerr.h"
#include "gw.h"

#define SCHED_MAX_SHARDS 8

typedef enum {
    SCHED_STATE_LOADING = 0, /* shards starting / loading, or the self-test pending */
    SCHED_STATE_READY,       /* serving */
    SCHED_STATE_DRAINING,    /* finishing running requests, refusing new ones */
    SCHED_STATE_DEGRADED,    /* a shard cannot be kept up: requests fail fast with 503 */
    SCHED_STATE_STOPPED,
} sched_state_t;

/* Settings. Zero fields get the defaults noted. */
typedef struct {
    const char *model_dir;   /* model folder (required) */
    const char *shardd_path; /* gptoss-shardd executable (default: next to the gateway) */
    const char *run_dir;     /* run directory for ipc sockets (required, exists) */
    int n_shards;            /* tensor-parallel degree: shard processes (1..SCHED_MAX_SHARDS) */
    int threads;             /* CPU threads per shard (0: all cores / n_shards) */
    const char *kv_dtype;    /* "f32" (default) or "bf16" */
    const char *backend;     /* shards' backend: "cpu" (default) or "cuda" (n_shards 1 only) */
    int device;              /* "cuda": the GPU index of the (single) shard (default 0) */
    double kv_budget_gib;    /* KV cache memory per shard (default 1) */
    int block_size;          /* KV block size (default 16) */
    int max_running;         /* sequences decoding at once (default 16) */
    int max_queue;           /* waiting requests before 429 (default 256) */
    int max_batch_tokens;    /* tokens per step (default 512) */
    int prefill_chunk;       /* most prompt tokens of one sequence per step (default 256) */
    int max_context;         /* prompt + generated tokens (default: model max, capped by KV) */
    double max_time_s;       /* default per-request deadline (default 600) */
    double heartbeat_s;      /* heartbeat interval (default 1) */
    int vocab_limit;         /* ids >= this never sampled (default: tokenizer size or vocab) */
    /* supervisor (added with --tp / profiles) */
    const char *profile_name;   /* shown by status and GET /profiles ("" or NULL: none) */
    const char *profiles_dir;   /* where GET /profiles looks (NULL: none) */
    int crash_loop_deaths;      /* this many shard deaths ... (default 5) */
    double crash_loop_window_s; /* ... within this window -> DEGRADED (default 60) */
    double degraded_retry_s;    /* DEGRADED by deaths: try the shards again after this (default
                                   30; < 0: only on restart-shard / switch-profile) */
    double switch_grace_s;      /* a profile switch waits this long for running requests
                                   before failing them (default 60) */
    int default_max_tokens;     /* request defaults of the profile, read by HTTP after a switch */
    double default_temperature; /* (0: HTTP's own default) */
    const char *default_reasoning;
} sched_opts_t;

/* Per-shard state for /stats, /metrics, /health. */
typedef struct {
    int rank;
    int pid;
    bool up; /* READY and heartbeating */
    double heartbeat_age_s;
    int restarts;
    char backend[96]; /* what the shard runs, from its READY ("" before one) */
    char last_error[256];
} sched_shard_stats_t;

/* A consistent snapshot of the scheduler for /stats, /metrics, /health. */
typedef struct {
    sched_state_t state;
    char state_message[256]; /* why, when not READY */
    bool ready_checked;      /* a real generation passed since the last state change */
    double uptime_s;
    uint64_t requests_total, requests_finished;
    uint64_t prompt_tokens_total, generated_tokens_total;
    double tokens_per_s; /* generated tokens/s over the last 10 s */
    int running, waiting;
    int kv_blocks_total, kv_blocks_used;
    int n_shards;
    sched_shard_stats_t shards[SCHED_MAX_SHARDS];
    int vocab_size;  /* model vocabulary (after READY) */
    int max_context; /* longest sequence accepted */
    /* supervisor (added with --tp / profiles) */
    char profile[72];       /* active profile name ("" when started with --model) */
    char model_dir[256];    /* active model folder */
    char switching_to[72];  /* a profile switch in progress ("" when none) */
    int generation;         /* shard group starts so far (1 after the first start) */
    int deaths_recent;      /* shard deaths within the crash-loop window */
    int default_max_tokens; /* the active profile's request defaults (0: none) */
    double default_temperature;
    char default_reasoning[8];
} sched_stats_t;

typedef struct sched sched_t;

/* Creates the scheduler (copies opts) and starts its thread, which spawns the shards.
 * Returns at once; the state is LOADING until the shards are up. Caller frees with
 * sched_free. */
int sched_new(const sched_opts_t *opts, sched_t **out, gerr_t *err);
/* Stops the thread (sends SHUTDOWN to shards, waits for them, kills stragglers after
 * a grace period), fails every unfinished request with ERROR, frees; *s = NULL. */
void sched_free(sched_t **s);

/* Hands req to the scheduler (ownership moves on success; on failure the caller keeps
 * it). Fails with GERR_LIMIT when the queue is full (HTTP 429), GERR_INVALID when the
 * prompt + max_tokens cannot fit the context (400), GERR_IO when not READY or draining
 * (503); err says which. After a successful submit the caller must not touch req (the
 * scheduler thread may have finished and freed it already): keep req->id_str and cancel with
 * sched_cancel_by_name. */
int sched_submit(sched_t *s, gw_request_t *req, gerr_t *err);
/* Cancels the request with this id (no-op if unknown or finished). */
void sched_cancel(sched_t *s, uint64_t id);
/* Cancels by client-visible id; returns 0 if such a request was live, -1 otherwise. */
int sched_cancel_by_name(sched_t *s, const char *id_str);
/* Fills *st with a consistent snapshot (thread-safe). */
void sched_snapshot(sched_t *s, sched_stats_t *st);
/* Stops admitting (new requests get GERR_IO, 503); running ones finish. */
void sched_drain(sched_t *s);
/* Admits again after sched_drain. */
void sched_resume(sched_t *s);
/* Kills shard `rank` and restarts its group (every shard of the tensor-parallel group,
 * with a fresh communicator); running requests are re-prefilled and continue. Also the
 * way out of DEGRADED. Returns at once (GERR_INVALID for a rank out of range, GERR_IO
 * while stopping or switching profiles); status reports the progress. */
int sched_restart_shard(sched_t *s, int rank, gerr_t *err);
/* Switches to other settings (a profile switch, or a reload): opts is checked here (model
 * config, tp against the heads, KV plan; err says what is wrong and nothing changes), then
 * the scheduler thread drains (new requests 503, running ones finish, up to
 * switch_grace_s), stops the shards and starts the new ones. A new group that fails to come
 * up puts the old settings back. opts and its strings are copied. Returns at once. */
int sched_switch(sched_t *s, const sched_opts_t *opts, gerr_t *err);
/* The profiles directory given in the options (borrowed; NULL when none). */
const char *sched_profiles_dir(const sched_t *s);
/* Name of a state ("ready"); static storage. */
const char *sched_state_name(sched_state_t st);

#endif
