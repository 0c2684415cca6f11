/* ops_cuda: construction of the CUDA backend, its memory helpers and CUDA-graph capture.
 *
 * Holds no kernels: the ops live in misc.cu (elementwise, norms, rope, KV writes, router),
 * matmul.cu, attention.cu and sample.cu; this file wires them into the ops_t table and owns the
 * stream, the scratch buffer and the per-bucket graphs. Not here: weight loading or KV block
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
    c->capture_bucket = -1;
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    snprintf(c->name, sizeof c->name, "cuda:%d %.60s (sm_%d%d)", device, prop.name, prop.major,
             prop.minor);
    ops_t *o = &c->ops;
    o->name = c->name;
    o->impl = c;
    o->embed = cuda_op_embed;
    o->rmsnorm = cuda_op_rmsnorm;
    o->matmul_bf16 = cuda_op_matmul_bf16;
    o->matmul_mxfp4 = cuda_op_matmul_mxfp4;
    o->rope = cuda_op_rope;
    o->kv_write = cuda_op_kv_write;
    o->attention = cuda_op_attention;
    o->router_topk = cuda_op_router_topk;
    o->swiglu = cuda_op_swiglu;
    o->add = cuda_op_add;
    o->axpy = cuda_op_axpy;
    return o;
}

void ops_cuda_graph_reset(ops_t *o) {
    cuda_state_t *c = cuda_state(o);
    for (int i = 0; i < OPS_CUDA_GRAPH_MAX; i++) {
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
    if (c->scratch) CUDA_CHECK(cudaFree(c->scratch));
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

void *cuda_scratch(cuda_state_t *c, size_t bytes) {
    if (bytes <= c->scratch_bytes) return c->scratch;
    if (c->capturing)
        cuda_die(__FILE__, __LINE__, "cuda_scratch (grow during graph capture)",
                 "run the step once outside a capture so that scratch is sized first");
    /* Grow by half again so that slowly rising sizes do not reallocate every step. Graphs that
     * captured the old pointer must not replay. */
    size_t want = bytes + bytes / 2;
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    if (c->scratch) CUDA_CHECK(cudaFree(c->scratch));
    c->scratch = NULL;
    c->scratch_bytes = 0;
    CUDA_CHECK(cudaMalloc(&c->scratch, want));
    c->scratch_bytes = want;
    ops_cuda_graph_reset(&c->ops);
    return c->scratch;
}

/* ---- graphs ------------------------------------------------------------------------------ */

int ops_cuda_graph_bucket(int tokens) {
    int b = 0;
    while (b < OPS_CUDA_GRAPH_MAX - 1 && (1 << b) < tokens)
        b++;
    return b;
}

void ops_cuda_graph_begin(ops_t *o, int bucket) {
    cuda_state_t *c = cuda_state(o);
    if (bucket < 0 || bucket >= OPS_CUDA_GRAPH_MAX || c->capturing)
        cuda_die(__FILE__, __LINE__, "ops_cuda_graph_begin", "bad bucket or nested capture");
    /* ThreadLocal: only this thread's unsafe calls (cudaMalloc, sync) break the capture. */
    CUDA_CHECK(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    c->capturing = true;
    c->capture_bucket = bucket;
}

void ops_cuda_graph_end(ops_t *o, int bucket) {
    cuda_state_t *c = cuda_state(o);
    if (!c->capturing || c->capture_bucket != bucket)
        cuda_die(__FILE__, __LINE__, "ops_cuda_graph_end", "no capture open for this bucket");
    cudaGraph_t g = NULL;
    CUDA_CHECK(cudaStreamEndCapture(c->stream, &g));
    c->capturing = false;
    c->capture_bucket = -1;
    bool updated = false;
    if (c->graphs[bucket]) {
        cudaGraphExecUpdateResultInfo info;
        if (cudaGraphExecUpdate(c->graphs[bucket], g, &info) == cudaSuccess)
            updated = true;
        else {
            (void)cudaGetLastError();
            CUDA_CHECK(cudaGraphExecDestroy(c->graphs[bucket]));
            c->graphs[bucket] = NULL;
        }
    }
    if (!updated) CUDA_CHECK(cudaGraphInstantiate(&c->graphs[bucket], g, 0));
    CUDA_CHECK(cudaGraphDestroy(g));
}

bool ops_cuda_graph_launch(const ops_t *o, int bucket) {
    cuda_state_t *c = cuda_state(o);
    if (bucket < 0 || bucket >= OPS_CUDA_GRAPH_MAX || !c->graphs[bucket]) return false;
    CUDA_CHECK(cudaGraphLaunch(c->graphs[bucket], c->stream));
    return true;
}
