/* comm: collectives between the shards of one tensor-parallel group (DESIGN.md "Communication").
 *
 * What it is: one interface, a struct of function pointers plus rank/world, with three
 * implementations: `single` (world 1: no-ops and copies), `shm` (processes on one host over
 * POSIX shared memory: CPU shards and tests) and `nccl` (GPUs; kernels/cuda/comm_nccl.h).
 * The engine calls all_reduce_sum twice per layer (after o_proj and after the MoE down
 * projection) and gather_to_root once per step (lm_head logits split by vocabulary rows).
 *
 * Contract shared by every implementation:
 * - Collectives are called by every rank in the same order with the same sizes (counts, bytes,
 *   root). `shm` checks this and reports a mismatch; `nccl` cannot.
 * - Buffers live where the implementation works: host memory for single/shm, device memory of
 *   this rank's GPU for nccl. The caller owns every buffer.
 * - Every wait is bounded by `timeout_ms` and can be aborted: a collective returns 0 or a
 *   negative code with a message in `err` ("comm: peer 2 (pid 812) did not arrive within
 *   30000 ms (dead or stopped?)", "comm: aborted by the supervisor"). After any failure the
 *   group is broken for good: every later collective on every rank fails fast. Re-forming a
 *   group after a shard restart means a new comm (for shm: a new segment name).
 * - One thread per rank drives the collectives; `abort` may be called from any thread (and,
 *   for shm, from a signal handler).
 *
 * What it is not: a general MPI. No reduce-scatter, no sub-groups, no overlap of collectives. */
#ifndef GPTOSS_COMM_H
#define GPTOSS_COMM_H

#include <stdbool.h>
#include <stddef.h>

#include "gerr.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest group any implementation accepts (gpt-oss has 8 KV heads, so TP <= 8 in practice). */
#define COMM_MAX_WORLD 64
/* Default bound on every wait, in milliseconds. */
#define COMM_DEFAULT_TIMEOUT_MS 30000

/* Error codes of the comm layer, beyond the shared gerr table (all negative). */
enum {
    COMM_ERR_ABORTED = -16,   /* abort was called (by a rank, the supervisor, or after a failure) */
    COMM_ERR_TIMEOUT = -17,   /* a peer did not arrive within timeout_ms */
    COMM_ERR_PEER_DEAD = -18, /* a peer process died or left the group */
    COMM_ERR_MISMATCH = -19,  /* ranks called different collectives or sizes */
};

typedef struct comm comm_t;

/* A communicator: one per rank. Created by comm_single_new / comm_shm_new / comm_nccl_new and
 * released with comm_destroy. Fields other than timeout_ms are read-only for users. */
struct comm {
    int rank;         /* this process's rank, 0 .. world-1 */
    int world;        /* ranks in the group, 1 .. COMM_MAX_WORLD */
    int timeout_ms;   /* bound on every wait (ms, > 0); the owner may change it between calls */
    const char *kind; /* "single", "shm" or "nccl" (static string) */

    /* Sums buf[0..n) over all ranks, in place; every rank gets the same result. */
    int (*all_reduce_sum)(comm_t *c, float *buf, size_t n, gerr_t *err);
    /* Gathers counts[r] floats from each rank r into recv on rank 0, in rank order (recv holds
     * the sum of counts; NULL on other ranks). send holds counts[rank] floats. counts[world]
     * must be equal on every rank. */
    int (*gatherv)(comm_t *c, const float *send, const size_t *counts, float *recv, gerr_t *err);
    /* Copies bytes of buf on rank root to buf on every other rank. */
    int (*broadcast)(comm_t *c, void *buf, size_t bytes, int root, gerr_t *err);
    /* Returns when every rank has arrived. */
    int (*barrier)(comm_t *c, gerr_t *err);
    /* Makes every pending and future collective fail with COMM_ERR_ABORTED (on every rank for
     * shm; for nccl on this rank, the supervisor aborts the others). Safe from any thread. */
    void (*abort)(comm_t *c);
    /* Releases c (not the caller's buffers). Does not wait for peers. */
    void (*destroy)(comm_t *c);

    void *impl; /* implementation state */
};

/* Sums buf[0..n) over all ranks in place (see comm_t.all_reduce_sum). */
static inline int comm_all_reduce_sum(comm_t *c, float *buf, size_t n, gerr_t *err) {
    return c->all_reduce_sum(c, buf, n, err);
}

/* Gathers n floats from every rank into recv[world][n] on rank 0 (NULL elsewhere). */
static inline int comm_gather_to_root(comm_t *c, const float *send, size_t n, float *recv,
                                      gerr_t *err) {
    size_t counts[COMM_MAX_WORLD];
    for (int r = 0; r < c->world; r++)
        counts[r] = n;
    return c->gatherv(c, send, counts, recv, err);
}

/* Gathers counts[r] floats from each rank r to rank 0 (see comm_t.gatherv). */
static inline int comm_gatherv(comm_t *c, const float *send, const size_t *counts, float *recv,
                               gerr_t *err) {
    return c->gatherv(c, send, counts, recv, err);
}

/* Copies bytes of buf from rank root to every rank. */
static inline int comm_broadcast(comm_t *c, void *buf, size_t bytes, int root, gerr_t *err) {
    return c->broadcast(c, buf, bytes, root, err);
}

/* Waits (bounded) until every rank arrives. */
static inline int comm_barrier(comm_t *c, gerr_t *err) {
    return c->barrier(c, err);
}

/* Aborts the group (see comm_t.abort); c stays owned by the caller. */
static inline void comm_abort(comm_t *c) {
    c->abort(c);
}

/* Destroys *pc and sets it to NULL; safe on NULL and twice. */
static inline void comm_destroy(comm_t **pc) {
    if (pc && *pc) {
        (*pc)->destroy(*pc);
        *pc = NULL;
    }
}

/* ---- single: world 1 ------------------------------------------------------------------ */

/* Creates a world-1 communicator in *out (caller destroys with comm_destroy). */
int comm_single_new(comm_t **out, gerr_t *err);

/* ---- shm: processes on one host over POSIX shared memory -------------------------------- */

/* Default bytes of each rank's data slot; larger buffers go through it in chunks. */
#define COMM_SHM_DEFAULT_SLOT_BYTES (1u << 20)

/* Options of comm_shm_new; zero-initialised fields take their defaults. */
typedef struct {
    bool create;           /* this rank creates the segment (usually rank 0, unless the gateway
                              made it with comm_shm_create); fails if the name exists */
    size_t slot_bytes;     /* per-rank slot when creating (default COMM_SHM_DEFAULT_SLOT_BYTES,
                              rounded up to a multiple of 128; min 256) */
    int attach_timeout_ms; /* bound on waiting for the segment and for all ranks to attach
                              (default COMM_DEFAULT_TIMEOUT_MS) */
    int timeout_ms;        /* initial comm_t.timeout_ms (default COMM_DEFAULT_TIMEOUT_MS) */
} comm_shm_opts_t;

/* Creates and initialises segment `name` ("/gptoss-<pid>-<generation>") for world ranks, for
 * the gateway (which then only aborts or unlinks it). Fails if the name exists. */
int comm_shm_create(const char *name, int world, size_t slot_bytes, gerr_t *err);

/* Joins segment `name` as rank of world (creating it if opts->create) and waits, bounded by
 * opts->attach_timeout_ms, until all ranks joined. Refuses a world size that differs from the
 * segment's, and a rank already held by a live process. *out is the caller's (comm_destroy).
 * opts may be NULL. */
int comm_shm_new(const char *name, int rank, int world, const comm_shm_opts_t *opts, comm_t **out,
                 gerr_t *err);

/* Sets the abort flag of segment `name` and wakes every waiter (for the supervisor): every
 * pending and future collective of that group fails. Does not unlink. */
int comm_shm_abort_name(const char *name, gerr_t *err);

/* Removes segment `name` (ranks that have it mapped keep it until they destroy their comm).
 * Returns 0, or GERR_NOTFOUND if absent. */
int comm_shm_unlink(const char *name, gerr_t *err);

#ifdef __cplusplus
}
#endif

#endif
