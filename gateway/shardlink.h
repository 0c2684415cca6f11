/* shardlink: the gateway's side of the shard processes: the ZeroMQ ROUTER
 * socket, spawning gptoss-shardd, the HELLO / LOAD / READY handshake,
 * heartbeats both ways, and noticing a shard that exits or goes silent
 * (PROTOCOL.md). It is used only from the scheduler thread (sched.c), which
 * polls shardlink_socket() together with its own wakeup and decides what a
 * dead shard means (restart or DEGRADED).
 *
 * Not here: what goes into a STEP (sched.c builds it), request state. */
#ifndef GPTOSS_SHARDLINK_H
#define GPTOSS_SHARDLINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gerr.h"
#include "proto.h"

#define SHARDLINK_MAX_SHARDS 8

typedef enum {
    SHARDLINK_DOWN = 0, /* no process */
    SHARDLINK_STARTING, /* spawned, no HELLO yet */
    SHARDLINK_LOADING,  /* LOAD sent, no READY yet */
    SHARDLINK_UP,       /* READY */
    SHARDLINK_FAILED,   /* LOAD_ERROR (will not come up by itself) */
} shardlink_state_t;

/* Settings; strings are copied. */
typedef struct {
    const char *shardd_path; /* gptoss-shardd executable */
    const char *run_dir;     /* ipc://RUN/shards.ipc lives here */
    int n_shards;            /* world size, 1..SHARDLINK_MAX_SHARDS */
    int threads;             /* per shard (0: the shard decides) */
    double heartbeat_s;      /* interval; silent for 3 of them = dead */
    double hello_timeout_s;  /* spawn -> HELLO (default 60) */
    /* LOAD body fields (the same for every shard) */
    const char *model_dir;
    const char *kv_dtype; /* "f32" | "bf16" */
    const char *backend;  /* "cpu" (default, NULL) | "cuda" (n_shards 1 only) */
    int device;           /* "cuda": the GPU of the shard (LOAD's "device") */
    int block_size, kv_full_blocks, kv_window_blocks;
    int max_seqs, max_chunk, vocab_limit;
    bool comm_by_gateway; /* world > 1: the gateway creates the shm segment before spawning
                             (else rank 0 does; PROTOCOL.md says which) */
} shardlink_opts_t;

/* One shard as the gateway sees it. */
typedef struct {
    int rank;
    int pid; /* 0 when no process */
    shardlink_state_t state;
    double spawned_at, last_heard; /* gw_now() times */
    int vocab;                     /* from READY */
    double load_ms;                /* from READY */
    char backend[96];              /* from READY ("cpu-avx2", "cuda:0 NVIDIA ..."; "" before) */
    char last_error[256];
} shardlink_shard_t;

typedef enum {
    SHARDLINK_EV_NONE = 0,
    SHARDLINK_EV_READY,      /* rank came up (all up: shardlink_all_up) */
    SHARDLINK_EV_LOAD_ERROR, /* message: the shard's reason */
    SHARDLINK_EV_RESULT,     /* seq; rank 0: samples[n_samples] (owned by the event) */
    SHARDLINK_EV_STEP_ERROR, /* seq, message */
    SHARDLINK_EV_DEAD,       /* the shard exited or went silent; message says how */
} shardlink_ev_kind_t;

/* What shardlink_recv / shardlink_tick report. Free samples with shardlink_event_clear. */
typedef struct {
    shardlink_ev_kind_t kind;
    int rank;
    uint64_t seq;
    proto_sample_t *samples; /* RESULT of rank 0 (malloc'd) */
    uint32_t n_samples;
    double step_ms;
    char message[512];
} shardlink_event_t;

typedef struct shardlink shardlink_t;

/* Binds the ROUTER socket (no process is started yet). Caller frees with shardlink_free. */
int shardlink_new(const shardlink_opts_t *opts, shardlink_t **out, gerr_t *err);
/* Sends SHUTDOWN to every live shard, waits up to grace_s for them to exit, SIGKILLs
 * the rest, reaps them all, closes the socket and frees; *sl = NULL (safe on NULL). */
void shardlink_free(shardlink_t **sl, double grace_s);
/* Spawns every shard (a new generation; any previous processes must be gone). */
int shardlink_start(shardlink_t *sl, gerr_t *err);
/* Aborts the group's shm collectives (world > 1), then SIGKILLs and reaps every shard
 * process (for a restart); states go DOWN. The next shardlink_start uses a new
 * communicator name (generation + 1) and removes the old segment. */
void shardlink_kill_all(shardlink_t *sl);
/* The ROUTER socket, to poll for ZMQ_POLLIN (borrowed). */
void *shardlink_socket(shardlink_t *sl);
/* Reads at most one message without blocking. Returns 1 with *ev filled when the
 * scheduler must act, 0 when there was nothing (or it was handled here: HELLO, a
 * heartbeat, a dropped message), -1 on a socket error. */
int shardlink_recv(shardlink_t *sl, shardlink_event_t *ev);
/* Periodic work: heartbeats out, exits (waitpid WNOHANG) and silence in. Returns 1
 * with a DEAD event for the first dead shard found (it is killed and reaped), else 0. */
int shardlink_tick(shardlink_t *sl, shardlink_event_t *ev);
/* Sends one STEP body (or any command) to every shard. Returns 0, or GERR_IO when a
 * shard cannot be reached (err says which). */
int shardlink_send_all(shardlink_t *sl, uint8_t cmd, uint64_t seq, const void *body, size_t len,
                       gerr_t *err);
/* True when every shard is UP. */
bool shardlink_all_up(const shardlink_t *sl);
/* True when any shard process exists. */
bool shardlink_any_alive(const shardlink_t *sl);
/* Shard `rank` (borrowed). */
const shardlink_shard_t *shardlink_shard(const shardlink_t *sl, int rank);
/* Frees ev's samples and zeroes it. */
void shardlink_event_clear(shardlink_event_t *ev);
/* Starts so far (the generation in the communicator name). */
int shardlink_generation(const shardlink_t *sl);
/* The current group's communicator name ("/gptoss-<pid>-<gen>"; borrowed). */
const char *shardlink_comm_name(const shardlink_t *sl);
/* World size. */
int shardlink_n_shards(const shardlink_t *sl);
/* Name of a shard state ("up"); static storage. */
const char *shardlink_state_name(shardlink_state_t st);

#endif
