/* comm_nccl: comm_t over NCCL (see comm_nccl.h for the contract).
 *
 * The communicator is created non-blocking (ncclConfig_t.blocking = 0) so that neither set-up
 * nor a collective can block the host thread without bound: every NCCL call returns at once
 * (ncclSuccess or ncclInProgress) and s_wait then polls ncclCommGetAsyncError, the abort flag,
 * cudaStreamQuery and the deadline - spinning for a short while, then sleeping in short steps.
 * Any failure ends in ncclCommAbort: NCCL's own way to unblock its kernels and proxy threads.
 *
 * Not verified on a GPU in this repository's CI (no GPU there): it compiles and links against
 * the toolkit's NCCL; run it on a multi-GPU host before trusting it. */
#include <atomic>
#include <cuda_runtime.h>
#include <errno.h>
#include <new>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern "C" {
#include "gerr.h"
#include "log.h"
}

#include "../../shardd/comm.h"
#include "comm_nccl.h"

#ifdef GPTOSS_HAVE_NCCL

#include <nccl.h>

static_assert(COMM_NCCL_ID_BYTES == NCCL_UNIQUE_ID_BYTES, "NCCL unique id size changed");

struct nccl_t {
    comm_t c;
    ncclComm_t comm;            /* NULL once aborted */
    cudaStream_t stream;        /* where every collective is queued */
    bool own_stream;            /* stream made here: destroy it */
    int device;                 /* CUDA ordinal */
    float *scratch;             /* [1] device float for barrier */
    std::atomic<int> abort_req; /* set by s_abort from any thread */
    char broken[256];           /* why the comm is unusable ("" while healthy) */
};

static double s_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void s_nap_us(long us) {
    struct timespec ts = {0, us * 1000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Aborts the NCCL communicator once and records why later calls fail. */
static void s_break(nccl_t *n, const char *why) {
    if (n->comm) {
        ncclResult_t r = ncclCommAbort(n->comm);
        if (r != ncclSuccess)
            log_msg(LOG_LEVEL_ERROR, "comm", "ncclCommAbort failed: %s", ncclGetErrorString(r));
        n->comm = NULL;
    }
    if (!n->broken[0]) { /* the reason, cut to the buffer (a copy: no format-truncation) */
        const size_t len = strnlen(why, sizeof n->broken - 1);
        memcpy(n->broken, why, len);
        n->broken[len] = '\0';
    }
}

/* Logs and reports a failed NCCL call; breaks the comm. */
static int s_nccl_fail(nccl_t *n, const char *file, int line, const char *stmt, ncclResult_t r,
                       gerr_t *err) {
    const char *last = n && n->comm ? ncclGetLastError(n->comm) : "";
    log_msg(LOG_LEVEL_ERROR, "comm", "%s:%d: %s failed: %s (%s)", file, line, stmt,
            ncclGetErrorString(r), last ? last : "");
    gerr_set(err, "comm: nccl: %s failed: %s%s%s", stmt, ncclGetErrorString(r),
             last && last[0] ? ": " : "", last ? last : "");
    if (n) s_break(n, err ? err->msg : "an NCCL call failed");
    return r == ncclRemoteError ? (int)COMM_ERR_PEER_DEAD : (int)GERR_IO;
}

/* Logs and reports a failed CUDA call; breaks the comm. */
static int s_cuda_fail(nccl_t *n, const char *file, int line, const char *stmt, cudaError_t e,
                       gerr_t *err) {
    log_msg(LOG_LEVEL_ERROR, "comm", "%s:%d: %s failed: %s", file, line, stmt,
            cudaGetErrorString(e));
    gerr_set(err, "comm: cuda: %s failed: %s", stmt, cudaGetErrorString(e));
    if (n) s_break(n, err ? err->msg : "a CUDA call failed");
    return GERR_IO;
}

/* Checks an ncclResult_t statement (ncclInProgress is fine on a non-blocking comm). */
#define NCCL_TRY(n, stmt)                                                                          \
    do {                                                                                           \
        ncclResult_t nccl_r_ = (stmt);                                                             \
        if (nccl_r_ != ncclSuccess && nccl_r_ != ncclInProgress)                                   \
            return s_nccl_fail((n), __FILE__, __LINE__, #stmt, nccl_r_, err);                      \
    } while (0)

/* Checks a cudaError_t statement. */
#define CUDA_TRY(n, stmt)                                                                          \
    do {                                                                                           \
        cudaError_t cuda_e_ = (stmt);                                                              \
        if (cuda_e_ != cudaSuccess)                                                                \
            return s_cuda_fail((n), __FILE__, __LINE__, #stmt, cuda_e_, err);                      \
    } while (0)

/* Fails fast when the comm is broken or an abort was asked for. */
static int s_usable(nccl_t *n, gerr_t *err) {
    if (n->abort_req.load()) s_break(n, "comm: aborted");
    if (n->broken[0]) {
        if (strncmp(n->broken, "comm: aborted", 13) == 0)
            gerr_set(err, "%s", n->broken);
        else
            gerr_set(err, "comm: aborted (after an earlier failure: %s)", n->broken);
        return COMM_ERR_ABORTED;
    }
    return 0;
}

/* Waits (bounded, abortable) until NCCL has no call in progress and, if stream_too, until the
 * stream has drained. */
static int s_wait(nccl_t *n, bool stream_too, int timeout_ms, const char *what, gerr_t *err) {
    double t0 = s_now_ms(), deadline = t0 + timeout_ms;
    for (long it = 0;; it++) {
        if (n->abort_req.load()) {
            s_break(n, "comm: aborted");
            gerr_set(err, "comm: aborted during %s", what);
            return COMM_ERR_ABORTED;
        }
        ncclResult_t async = ncclSuccess;
        NCCL_TRY(n, ncclCommGetAsyncError(n->comm, &async));
        if (async != ncclSuccess && async != ncclInProgress)
            return s_nccl_fail(n, __FILE__, __LINE__, what, async, err);
        if (async == ncclSuccess) {
            if (!stream_too) return 0;
            cudaError_t q = cudaStreamQuery(n->stream);
            if (q == cudaSuccess) return 0;
            if (q != cudaErrorNotReady)
                return s_cuda_fail(n, __FILE__, __LINE__, "cudaStreamQuery", q, err);
        }
        if (s_now_ms() > deadline) {
            gerr_set(err,
                     "comm: nccl %s did not complete within %d ms (a peer dead, stopped, or "
                     "not calling the same collective?)",
                     what, timeout_ms);
            log_msg(LOG_LEVEL_ERROR, "comm", "%s", err ? err->msg : "nccl timeout");
            s_break(n, err ? err->msg : "comm: nccl timeout");
            return COMM_ERR_TIMEOUT;
        }
        if (it > 2000) s_nap_us(it > 20000 ? 200 : 20); /* spin first: collectives take us */
    }
}

/* ---- collectives -------------------------------------------------------------------------- */

static int s_all_reduce_sum(comm_t *c, float *buf, size_t count, gerr_t *err) {
    nccl_t *n = (nccl_t *)c->impl;
    int rc = s_usable(n, err);
    if (rc) return rc;
    NCCL_TRY(n, ncclAllReduce(buf, buf, count, ncclFloat, ncclSum, n->comm, n->stream));
    return s_wait(n, true, c->timeout_ms, "all_reduce_sum", err);
}

static int s_gatherv(comm_t *c, const float *send, const size_t *counts, float *recv, gerr_t *err) {
    nccl_t *n = (nccl_t *)c->impl;
    int rc = s_usable(n, err);
    if (rc) return rc;
    NCCL_TRY(n, ncclGroupStart());
    if (c->rank == 0) {
        size_t off = 0;
        for (int r = 0; r < c->world; r++) {
            if (counts[r] && r == 0)
                CUDA_TRY(n, cudaMemcpyAsync(recv, send, counts[0] * sizeof(float),
                                            cudaMemcpyDeviceToDevice, n->stream));
            else if (counts[r])
                NCCL_TRY(n, ncclRecv(recv + off, counts[r], ncclFloat, r, n->comm, n->stream));
            off += counts[r];
        }
    } else if (counts[c->rank]) {
        NCCL_TRY(n, ncclSend(send, counts[c->rank], ncclFloat, 0, n->comm, n->stream));
    }
    NCCL_TRY(n, ncclGroupEnd());
    return s_wait(n, true, c->timeout_ms, "gatherv", err);
}

static int s_broadcast(comm_t *c, void *buf, size_t bytes, int root, gerr_t *err) {
    nccl_t *n = (nccl_t *)c->impl;
    int rc = s_usable(n, err);
    if (rc) return rc;
    NCCL_TRY(n, ncclBroadcast(buf, buf, bytes, ncclUint8, root, n->comm, n->stream));
    return s_wait(n, true, c->timeout_ms, "broadcast", err);
}

static int s_barrier(comm_t *c, gerr_t *err) {
    nccl_t *n = (nccl_t *)c->impl;
    int rc = s_usable(n, err);
    if (rc) return rc;
    NCCL_TRY(n, ncclAllReduce(n->scratch, n->scratch, 1, ncclFloat, ncclSum, n->comm, n->stream));
    return s_wait(n, true, c->timeout_ms, "barrier", err);
}

static void s_abort(comm_t *c) {
    ((nccl_t *)c->impl)->abort_req.store(1);
}

static void s_destroy(comm_t *c) {
    nccl_t *n = (nccl_t *)c->impl;
    s_break(n, "comm: destroyed"); /* ncclCommAbort: releases everything without waiting */
    if (n->scratch && cudaFree(n->scratch) != cudaSuccess)
        log_msg(LOG_LEVEL_WARN, "comm", "cudaFree of the barrier scratch failed");
    if (n->own_stream && n->stream && cudaStreamDestroy(n->stream) != cudaSuccess)
        log_msg(LOG_LEVEL_WARN, "comm", "cudaStreamDestroy failed");
    delete n;
}

/* ---- set-up --------------------------------------------------------------------------------- */

int comm_nccl_unique_id(unsigned char id[COMM_NCCL_ID_BYTES], gerr_t *err) {
    ncclUniqueId u;
    nccl_t *n = NULL;
    NCCL_TRY(n, ncclGetUniqueId(&u));
    memcpy(id, u.internal, COMM_NCCL_ID_BYTES);
    return 0;
}

/* Everything of comm_nccl_new after the state exists; on failure the caller destroys n. */
static int s_init(nccl_t *n, const unsigned char *id, int init_timeout_ms, gerr_t *err) {
    CUDA_TRY(n, cudaSetDevice(n->device));
    if (!n->stream) {
        CUDA_TRY(n, cudaStreamCreateWithFlags(&n->stream, cudaStreamNonBlocking));
        n->own_stream = true;
    }
    CUDA_TRY(n, cudaMalloc((void **)&n->scratch, sizeof(float)));
    CUDA_TRY(n, cudaMemset(n->scratch, 0, sizeof(float)));
    ncclUniqueId u;
    memcpy(u.internal, id, COMM_NCCL_ID_BYTES);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0; /* every call returns at once; s_wait bounds the waiting */
    NCCL_TRY(n, ncclCommInitRankConfig(&n->comm, n->c.world, u, n->c.rank, &cfg));
    return s_wait(n, false, init_timeout_ms, "ncclCommInitRankConfig (group set-up)", err);
}

int comm_nccl_new(const unsigned char id[COMM_NCCL_ID_BYTES], int rank, int world,
                  const comm_nccl_opts_t *opts, comm_t **out, gerr_t *err) {
    *out = NULL;
    comm_nccl_opts_t o = opts ? *opts : comm_nccl_opts_t{};
    if (o.init_timeout_ms <= 0) o.init_timeout_ms = COMM_DEFAULT_TIMEOUT_MS;
    if (o.timeout_ms <= 0) o.timeout_ms = COMM_DEFAULT_TIMEOUT_MS;
    if (world < 1 || world > COMM_MAX_WORLD || rank < 0 || rank >= world) {
        gerr_set(err, "comm: rank %d / world %d is invalid (want 0 <= rank < world <= %d)", rank,
                 world, COMM_MAX_WORLD);
        return GERR_INVALID;
    }
    nccl_t *n = new (std::nothrow) nccl_t();
    if (!n) {
        gerr_set(err, "comm: out of memory");
        return GERR_NOMEM;
    }
    n->c.rank = rank;
    n->c.world = world;
    n->c.timeout_ms = o.timeout_ms;
    n->c.kind = "nccl";
    n->c.all_reduce_sum = s_all_reduce_sum;
    n->c.gatherv = s_gatherv;
    n->c.broadcast = s_broadcast;
    n->c.barrier = s_barrier;
    n->c.abort = s_abort;
    n->c.destroy = s_destroy;
    n->c.impl = n;
    n->device = o.device;
    n->stream = (cudaStream_t)o.stream;
    int rc = s_init(n, id, o.init_timeout_ms, err);
    if (rc) {
        if (err && strncmp(err->msg, "comm: ", 6) == 0) /* one "comm: " in front */
            memmove(err->msg, err->msg + 6, strlen(err->msg + 6) + 1);
        gerr_prefix(err, "comm: joining the NCCL group as rank %d of %d on GPU %d", rank, world,
                    o.device);
        s_destroy(&n->c);
        return rc;
    }
    *out = &n->c;
    return 0;
}

#else /* no NCCL at build time */

int comm_nccl_unique_id(unsigned char id[COMM_NCCL_ID_BYTES], gerr_t *err) {
    (void)id;
    gerr_set(err, "comm: this build has no NCCL (nccl.h / libnccl were not found at configure "
                  "time); use comm \"shm\" or rebuild with NCCL installed");
    return GERR_INVALID;
}

int comm_nccl_new(const unsigned char id[COMM_NCCL_ID_BYTES], int rank, int world,
                  const comm_nccl_opts_t *opts, comm_t **out, gerr_t *err) {
    (void)id, (void)rank, (void)world, (void)opts;
    *out = NULL;
    return comm_nccl_unique_id(NULL, err);
}

#endif
