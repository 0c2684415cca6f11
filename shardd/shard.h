/* shard: what one gptoss-shardd process does with the gateway's messages, without the
 * sockets.
 *
 * It turns a LOAD body (JSON) into a loaded model (weights, an ops backend, an engine whose
 * KV pools have exactly the block counts the gateway planned) and a READY body, and a STEP
 * body (binary, proto.h) into an engine step plus, on rank 0, one sampled token per
 * sequence that asks for it (a RESULT body). Rank 0 also keeps the per-slot penalty
 * history of PROTOCOL.md. Bad input from the gateway is refused with a message and
 * changes nothing, so the shard stays up.
 *
 * The backend is the CPU one unless LOAD says "backend": "cuda" (world 1 only): then the
 * CUDA backend runs on LOAD's "device", the weights are bound on the host and uploaded
 * (weights_cuda_upload), and the host mapping is freed. A build without CUDA (no
 * GPTOSS_HAVE_CUDA) refuses such a LOAD with a message. Sampling stays on the host either way.
 *
 * With world > 1 the shard holds its tensor-parallel slice and joins the group's shm comm
 * at LOAD (shard.c says how); every rank runs every STEP, rank 0 alone samples.
 *
 * Not here: ZeroMQ, heartbeats, signals, the process's exit codes (shardd/main.c). */
#ifndef GPTOSS_SHARD_H
#define GPTOSS_SHARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gerr.h"
#include "proto.h"

typedef struct shard shard_t;

/* Process settings from the command line. */
typedef struct {
    int rank;            /* this shard's rank, 0 <= rank < world */
    int world;           /* shards in the group */
    int threads;         /* CPU threads (0: one per online CPU; LOAD's "threads" overrides) */
    const char *run_dir; /* gateway's run folder (may be NULL); copied */
} shard_opts_t;

/* Creates an unloaded shard (starts its CPU ops backend). Caller frees with shard_free. */
int shard_new(const shard_opts_t *opts, shard_t **out, gerr_t *err);
/* Frees the shard and everything it loaded; sets *s to NULL (safe on NULL). */
void shard_free(shard_t **s);

/* The HELLO body {"rank","world","pid","version","backend"}; caller frees the string. */
char *shard_hello_json(const shard_t *s);

/* Name of the backend the shard runs (static or owned by the shard: valid until shard_free or
 * the next LOAD): the CUDA backend's ("cuda:0 NVIDIA H100 ... (sm_90)") after a cuda LOAD, else
 * the CPU backend's ("cpu-avx2"). */
const char *shard_backend_name(const shard_t *s);

/* True once a LOAD succeeded. */
bool shard_loaded(const shard_t *s);

/* True once a collective of this shard's group failed (peer died, aborted, timed out): every
 * later STEP fails, and the process should exit (status 4) so the group is restarted. */
bool shard_broken(const shard_t *s);

/* Handles a LOAD body (json[0..len), borrowed): validates every field, loads the model and
 * allocates the KV pools. On success *ready is the READY body (caller frees). Refuses a
 * second LOAD. On failure err says why (the LOAD_ERROR message) and nothing stays loaded. */
int shard_load(shard_t *s, const char *json, size_t len, char **ready, gerr_t *err);

/* Runs one STEP body (body[0..len), borrowed) and writes the RESULT body into out (the
 * caller's buffer; its len is reset). Refused steps (before LOAD, bad encoding, slot out of
 * range, bad block tables or tokens, bad sampling parameters) change no state and return
 * a negative code with err set (the STEP_ERROR message). */
int shard_step(shard_t *s, const uint8_t *body, size_t len, proto_buf_t *out, gerr_t *err);

#endif
