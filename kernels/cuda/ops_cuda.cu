/* ops_cuda: construction of the CUDA backend, its memory helpers and CUDA-graph capture.
 *
 * Holds no kernels: the ops live in misc.cu (elementwise, norms, rope, KV writes, router,
 * gather_rows), matmul.cu, moe.cu, attention.cu and sample.cu; this file wires them into the ops_t
 * table (with the memory members and the graph hooks) and owns the stream, the scratch buffers
 * and the graphs (per bucket and per key). Not here: weight loading or KV block
 * allocation (the engine's job; it uses ops_cuda_alloc/upload). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.cuh"

extern "C" {
#include "log.h"
}

void cuda_die(const char *file, int line, const char *stmt, const char *what) {
    log_msg(LOG_LEVEL_ERROR, "cuda",
            "%s:%d: %s failed: %s (a CUDA failure is fatal: the shard exits and its supervisor "
            "restarts it; set CUDA_LAUNCH_BLOCKING=1 to pin an asynchronous error to its launch)",
            file, line, stmt, what);
    exit(EXIT_FAILURE);
}

int ops_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear the sticky "no device / no driver" error */
        return 0;
    }
    return n;
}

static void *s_op_alloc(const ops_t *o, size_t bytes);
static void s_op_zero(const ops_t *o, void *dst, size_t bytes);
static void s_op_graph_begin(const ops_t *o, int key);
static void s_op_graph_end(const ops_t *o, int key);
static bool s_op_graph_launch(const ops_t *o, int key);

ops_t *ops_cuda_new(int device, gerr_t *err) {
    int n = ops_cuda_device_count();
    if (device < 0 || device >= n) {
        gerr_set(err,
                 "cuda backend: device %d does not exist (%d CUDA devices visible; check "
                 "CUDA_VISIBLE_DEVICES and the driver)",
                 device, n);
        return NULL;
    }
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    if (prop.major < 8) {
        gerr_set(err,
                 "cuda backend: device %d (%s) is sm_%d%d; the kernels need sm_80 or newer "
                 "(bf16 mma.sync)",
                 device, prop.name, prop.major, prop.minor);
        return NULL;
    }
    cuda_state_t *c = (cuda_state_t *)calloc(1, sizeof *c);
    if (!c) {
        gerr_set(err, "cuda backend: out of host memory");
        return NULL;
    }
    c->device = device;
    c->n_sm = prop.multiProcessorCount;
    c->capture_slot = -1;
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    snprintf(c->name, sizeof c->name, "cuda:%d %.60s (sm_%d%d)", device, prop.name, prop.major,
             prop.minor);
    ops_t *o = &c->ops;
    o->name = c->name;
    o->impl = c;
    o->embed = cuda_op_embed;
    o->rmsnorm = cuda_op_rmsnorm;
    o->add_rmsnorm = cuda_op_add_rmsnorm;
    o->matmul_bf16 = cuda_op_matmul_bf16;
    o->matmul_mxfp4 = cuda_op_matmul_mxfp4;
    o->rope = cuda_op_rope;
    o->kv_write = cuda_op_kv_write;
    o->attention = cuda_op_attention;
    o->router_topk = cuda_op_router_topk;
    o->swiglu = cuda_op_swiglu;
    o->add = cuda_op_add;
    o->axpy = cuda_op_axpy;
    o->moe = cuda_op_moe;
    o->gather_rows = cuda_op_gather_rows;
    o->alloc = s_op_alloc;
    o->free_mem = ops_cuda_free_mem;
    o->upload = ops_cuda_upload;
    o->download = ops_cuda_download;
    o->zero = s_op_zero;
    o->graph_begin = s_op_graph_begin;
    o->graph_end = s_op_graph_end;
    o->graph_launch = s_op_graph_launch;
    return o;
}

void ops_cuda_graph_reset(ops_t *o) {
    cuda_state_t *c = cuda_state(o);
    for (int i = 0; i < CUDA_GRAPH_SLOTS; i++) {
        if (c->graphs[i]) CUDA_CHECK(cudaGraphExecDestroy(c->graphs[i]));
        c->graphs[i] = NULL;
    }
}

void ops_cuda_free(ops_t **o) {
    if (!o || !*o) return;
    cuda_state_t *c = cuda_state(*o);
    CUDA_CHECK(cudaSetDevice(c->device));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    ops_cuda_graph_reset(*o);
    for (int i = 0; i < CUDA_SCRATCH_N; i++)
        if (c->scratch[i]) CUDA_CHECK(cudaFree(c->scratch[i]));
    CUDA_CHECK(cudaStreamDestroy(c->stream));
    free(c);
    *o = NULL;
}

/* ---- memory ------------------------------------------------------------------------------ */

void *ops_cuda_alloc(const ops_t *o, size_t bytes, gerr_t *err) {
    cuda_state_t *c = cuda_state(o);
    CUDA_CHECK(cudaSetDevice(c->device));
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        (void)cudaMemGetInfo(&free_b, &total_b);
        gerr_set(err,
                 "cuda backend: cannot allocate %zu MiB on %s (%zu MiB free of %zu); use more "
                 "shards or a smaller KV cache",
                 bytes >> 20, c->name, free_b >> 20, total_b >> 20);
        return NULL;
    }
    CUDA_CHECK(e);
    return p;
}

/* ops_t alloc: zero-filled device memory, NULL (with the reason logged) when out of memory. */
static void *s_op_alloc(const ops_t *o, size_t bytes) {
    gerr_t err = {{0}};
    void *p = ops_cuda_alloc(o, bytes, &err);
    if (!p) {
        log_msg(LOG_LEVEL_ERROR, "cuda", "%s", err.msg);
        return NULL;
    }
    CUDA_CHECK(cudaMemset(p, 0, bytes ? bytes : 1));
    return p;
}

/* ops_t zero: queued on the stream (capturable). */
static void s_op_zero(const ops_t *o, void *dst, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, cuda_state(o)->stream));
}

void ops_cuda_free_mem(const ops_t *o, void *p) {
    if (!p) return;
    CUDA_CHECK(cudaSetDevice(cuda_state(o)->device));
    CUDA_CHECK(cudaFree(p));
}

void ops_cuda_upload(const ops_t *o, void *dst, const void *src, size_t bytes) {
    cuda_state_t *c = cuda_state(o);
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
}

void ops_cuda_download(const ops_t *o, void *dst, const void *src, size_t bytes) {
    cuda_state_t *c = cuda_state(o);
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
}

void ops_cuda_memset(const ops_t *o, void *dst, int byte, size_t bytes) {
    CUDA_CHECK(cudaMemsetAsync(dst, byte, bytes, cuda_state(o)->stream));
}

void ops_cuda_copy(const ops_t *o, void *dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cuda_state(o)->stream));
}

void ops_cuda_sync(const ops_t *o) {
    CUDA_CHECK(cudaStreamSynchronize(cuda_state(o)->stream));
}

void *ops_cuda_stream(const ops_t *o) {
    return (void *)cuda_state(o)->stream;
}

void *cuda_scratch(cuda_state_t *c, int slot, size_t bytes) {
    if (bytes <= c->scratch_bytes[slot]) return c->scratch[slot];
    if (c->capturing)
        cuda_die(__FILE__, __LINE__, "cuda_scratch (grow during graph capture)",
                 "run the step once outside a capture so that scratch is sized first");
    /* Grow by half again so that slowly rising sizes do not reallocate every step. Graphs that
     * captured the old pointer must not replay. */
    size_t want = bytes + bytes / 2;
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    if (c->scratch[slot]) CUDA_CHECK(cudaFree(c->scratch[slot]));
    c->scratch[slot] = NULL;
    c->scratch_bytes[slot] = 0;
    CUDA_CHECK(cudaMalloc(&c->scratch[slot], want));
    c->scratch_bytes[slot] = want;
    ops_cuda_graph_reset(&c->ops);
    return c->scratch[slot];
}

/* ---- graphs ------------------------------------------------------------------------------ */

int ops_cuda_graph_bucket(int tokens) {
    int b = 0;
    while (b < OPS_CUDA_GRAPH_MAX - 1 && (1 << b) < tokens)
        b++;
    return b;
}

/* Starts capturing o's stream into graph slot `slot`. */
static void s_graph_begin(cuda_state_t *c, int slot) {
    if (slot < 0 || slot >= CUDA_GRAPH_SLOTS || c->capturing)
        cuda_die(__FILE__, __LINE__, "graph_begin", "bad bucket/key or nested capture");
    /* ThreadLocal: only this thread's unsafe calls (cudaMalloc, sync) break the capture. */
    CUDA_CHECK(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    c->capturing = true;
    c->capture_slot = slot;
}

/* Ends the capture of slot and instantiates it (in place when the topology is unchanged). */
static void s_graph_end(cuda_state_t *c, int slot) {
    if (!c->capturing || c->capture_slot != slot)
        cuda_die(__FILE__, __LINE__, "graph_end", "no capture open for this bucket/key");
    cudaGraph_t g = NULL;
    CUDA_CHECK(cudaStreamEndCapture(c->stream, &g));
    c->capturing = false;
    c->capture_slot = -1;
    bool updated = false;
    if (c->graphs[slot]) {
        cudaGraphExecUpdateResultInfo info;
        if (cudaGraphExecUpdate(c->graphs[slot], g, &info) == cudaSuccess)
            updated = true;
        else {
            (void)cudaGetLastError();
            CUDA_CHECK(cudaGraphExecDestroy(c->graphs[slot]));
            c->graphs[slot] = NULL;
        }
    }
    if (!updated) CUDA_CHECK(cudaGraphInstantiate(&c->graphs[slot], g, 0));
    CUDA_CHECK(cudaGraphDestroy(g));
}

/* Launches slot's graph; false when none is stored. */
static bool s_graph_launch(cuda_state_t *c, int slot) {
    if (slot < 0 || slot >= CUDA_GRAPH_SLOTS || !c->graphs[slot]) return false;
    CUDA_CHECK(cudaGraphLaunch(c->graphs[slot], c->stream));
    return true;
}

void ops_cuda_graph_begin(ops_t *o, int bucket) {
    if (bucket < 0 || bucket >= OPS_CUDA_GRAPH_MAX)
        cuda_die(__FILE__, __LINE__, "ops_cuda_graph_begin", "bad bucket");
    s_graph_begin(cuda_state(o), bucket);
}

void ops_cuda_graph_end(ops_t *o, int bucket) {
    s_graph_end(cuda_state(o), bucket);
}

bool ops_cuda_graph_launch(const ops_t *o, int bucket) {
    if (bucket < 0 || bucket >= OPS_CUDA_GRAPH_MAX) return false;
    return s_graph_launch(cuda_state(o), bucket);
}

/* Graph slot of an ops_t key (1..OPS_CUDA_GRAPH_KEYS), or -1. */
static int s_key_slot(int key) {
    return key >= 1 && key <= OPS_CUDA_GRAPH_KEYS ? OPS_CUDA_GRAPH_MAX + key - 1 : -1;
}

static void s_op_graph_begin(const ops_t *o, int key) {
    if (s_key_slot(key) < 0)
        cuda_die(__FILE__, __LINE__, "graph_begin",
                 "key outside 1..OPS_CUDA_GRAPH_KEYS (run that step eagerly)");
    s_graph_begin(cuda_state(o), s_key_slot(key));
}

static void s_op_graph_end(const ops_t *o, int key) {
    s_graph_end(cuda_state(o), s_key_slot(key));
}

static bool s_op_graph_launch(const ops_t *o, int key) {
    return s_key_slot(key) >= 0 && s_graph_launch(cuda_state(o), s_key_slot(key));
}
