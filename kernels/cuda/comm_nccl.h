/* comm_nccl: the NCCL implementation of shardd/comm.h (one shard process per GPU).
 *
 * What it is: a comm_t whose collectives run on this rank's GPU through NCCL, on a stream the
 * caller names (normally the engine's compute stream, so a collective is ordered after the ops
 * that produced its input). Every buffer handed to the comm_t calls is a DEVICE pointer. Each
 * collective enqueues its NCCL work and then waits for the stream in a bounded loop that polls
 * ncclCommGetAsyncError and the abort flag; on a timeout, an NCCL error (ncclRemoteError: a peer
 * failed) or an abort it calls ncclCommAbort and returns a negative code with a message; the
 * comm is then broken for good and the shard should exit (the supervisor re-forms the group with
 * a new unique id). Every NCCL and CUDA call is checked; a failure is logged with file, line,
 * the statement and NCCL's or CUDA's message.
 *
 * Abort reaches only this rank (NCCL has no shared flag): the supervisor aborts every shard of a
 * broken group through its own channel, and a shard whose peer died also sees ncclRemoteError or
 * its timeout. Group set-up (ncclCommInitRankConfig, non-blocking) is bounded the same way.
 *
 * Built only where nccl.h and libnccl were found (tests/cmake/comm.cmake defines
 * GPTOSS_HAVE_NCCL); otherwise both functions report that NCCL is missing. */
#ifndef GPTOSS_COMM_NCCL_H
#define GPTOSS_COMM_NCCL_H

#include <stddef.h>

#include "gerr.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct comm comm_t;

/* Bytes of an NCCL unique id (NCCL_UNIQUE_ID_BYTES). */
#define COMM_NCCL_ID_BYTES 128

/* Options of comm_nccl_new; zero-initialised fields take their defaults. */
typedef struct {
    int device;          /* CUDA ordinal of this rank's GPU (made current for the caller) */
    void *stream;        /* cudaStream_t the collectives run on; NULL = a stream of the comm */
    int init_timeout_ms; /* bound on group set-up (default COMM_DEFAULT_TIMEOUT_MS) */
    int timeout_ms;      /* initial comm_t.timeout_ms (default COMM_DEFAULT_TIMEOUT_MS) */
} comm_nccl_opts_t;

/* Makes a fresh group id into id (caller's buffer) for one group generation; the caller hands
 * the same bytes to every shard. The calling process hosts NCCL's bootstrap root and must live
 * until the group is formed (the gateway, or rank 0 which then relays the bytes). */
int comm_nccl_unique_id(unsigned char id[COMM_NCCL_ID_BYTES], gerr_t *err);

/* Joins group id as rank of world on opts->device, bounded by opts->init_timeout_ms. *out is
 * the caller's (comm_destroy). opts may be NULL (device 0, own stream, default timeouts). */
int comm_nccl_new(const unsigned char id[COMM_NCCL_ID_BYTES], int rank, int world,
                  const comm_nccl_opts_t *opts, comm_t **out, gerr_t *err);

#ifdef __cplusplus
}
#endif

#endif
