/* ops_cuda: the CUDA backend of ops.h (bf16 tensor cores, MXFP4 decoded in registers).
 *
 * What it is: an ops_t whose calls are enqueued on one CUDA stream owned by the backend, plus
 * the memory helpers that place weights (in their stored formats: bf16 bit patterns, MXFP4
 * nibbles + E8M0 scales, never expanded), activations and the KV cache on the GPU, CUDA-graph
 * capture helpers keyed by a batch-size bucket, and a GPU sampler (greedy, top-k, and top-p /
 * min_p without top-k when the nucleus fits in OPS_CUDA_SAMPLE_MAX_K candidates).
 *
 * Pointer conventions for the ops_t calls: EVERY array pointer is a DEVICE pointer - the
 * activations, the weights inside the ops_*_mat_t views, biases, sinks, token ids, the rope
 * table, router outputs, the ops_tok_t array itself AND the block tables it points to. The view
 * structs (ops_bf16_mat_t, ops_mxfp4_mat_t, ops_kv_t) and scalars are read on the host at call
 * time. Calls are asynchronous: results are visible after ops_cuda_sync or a download.
 * Activations stay fp32 in memory (the ops.h interface); matmuls round them to bf16 when they
 * load them (DESIGN.md: bf16 activations, fp32 accumulation), every other op is fp32.
 *
 * What it is not: thread-safe (one host thread drives one backend, like one shard process drives
 * one GPU), nor a place for input checks. A failed CUDA call is fatal: it is logged with file,
 * line, the statement and CUDA's message, and the process exits (the supervisor restarts the
 * shard, STYLE.md point 3). Only allocation failure is reported to the caller (a model that does
 * not fit is outside input). */
#ifndef GPTOSS_OPS_CUDA_H
#define GPTOSS_OPS_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "gerr.h"
#include "ops.h"

#define OPS_CUDA_GRAPH_MAX      16   /* graph buckets per backend (see ops_cuda_graph_bucket) */
#define OPS_CUDA_GRAPH_KEYS     64   /* keys 1..64 of the ops_t graph hooks, one graph each */
#define OPS_CUDA_MOE_MAX_E      1024 /* most experts the moe op routes */
#define OPS_CUDA_SAMPLE_MAX_K   64   /* largest top_k / nucleus the GPU sampler handles */
#define OPS_CUDA_ATTN_MAX_D     64   /* largest head_dim of the attention kernels */
#define OPS_CUDA_ATTN_MAX_GROUP 64   /* largest n_heads / n_kv_heads */

/* Number of CUDA devices usable by this process; 0 when there is none or no driver. */
int ops_cuda_device_count(void);

/* Creates the CUDA backend on device `device` (its own stream, no other state). Returns NULL with
 * a message in err if the device does not exist or is older than sm_80. Caller frees with
 * ops_cuda_free. */
ops_t *ops_cuda_new(int device, gerr_t *err);
/* Waits for queued work, frees graphs, scratch and the stream, frees the backend and sets *o to
 * NULL (safe on NULL). Memory from ops_cuda_alloc is NOT freed (the caller owns it). */
void ops_cuda_free(ops_t **o);

/* The ops_t memory members (ops.h) are these: alloc = ops_cuda_alloc then a zero fill (NULL and a
 * logged message when out of memory), free_mem, upload, download, zero = an async memset on the
 * stream. */

/* Allocates `bytes` of device memory (256-byte aligned) on o's device. Returns NULL with a
 * message in err when the device is out of memory. Caller owns it (ops_cuda_free_mem). */
void *ops_cuda_alloc(const ops_t *o, size_t bytes, gerr_t *err);
/* Frees device memory from ops_cuda_alloc (NULL is a no-op). Waits for the device first. */
void ops_cuda_free_mem(const ops_t *o, void *p);
/* Copies bytes from host src to device dst; returns when the copy is done (src may be reused). */
void ops_cuda_upload(const ops_t *o, void *dst, const void *src, size_t bytes);
/* Copies bytes from device src to host dst after all queued work; returns when dst is filled. */
void ops_cuda_download(const ops_t *o, void *dst, const void *src, size_t bytes);
/* Sets bytes of device memory to `byte`, queued on o's stream (tests poison outputs with 0xff,
 * which is a NaN in fp32). */
void ops_cuda_memset(const ops_t *o, void *dst, int byte, size_t bytes);
/* Copies bytes between device buffers, queued on o's stream. */
void ops_cuda_copy(const ops_t *o, void *dst, const void *src, size_t bytes);
/* Waits until every call queued on o has finished. */
void ops_cuda_sync(const ops_t *o);
/* The backend's cudaStream_t (as void *, borrowed), for NCCL calls that must be ordered with the
 * ops. */
void *ops_cuda_stream(const ops_t *o);

/* Device memory bandwidth of o's GPU, best of reps passes over `bytes` (allocated and freed
 * here, outside any graph capture): *read_bps from a read-only kernel, *copy_bps from a
 * device-to-device cudaMemcpy counted as read + write. For gptoss-bench. */
void ops_cuda_bandwidth(const ops_t *o, size_t bytes, int reps, double *read_bps, double *copy_bps);

/* CUDA graphs. A step's sequence of ops calls is captured once per batch-size bucket and replayed
 * with one launch. A graph replays the exact pointers and scalars it captured, so the caller
 * keeps fixed device buffers per bucket and writes each step's inputs (ids, toks, block tables,
 * rope table) into them before launching. Run a bucket's sequence once eagerly before capturing it:
 * backend scratch is sized on first use and cannot grow during capture (a capture that would need
 * to grow it is fatal); when scratch grows later, every stored graph is dropped
 * (ops_cuda_graph_launch then returns false and the caller captures again). */

/* Bucket index for a batch of `tokens` rows: 0 for 1, 1 for 2, 2 for 3..4, 3 for 5..8, ...,
 * clamped to OPS_CUDA_GRAPH_MAX - 1. Callers pad the batch to the bucket's size 2^bucket. */
int ops_cuda_graph_bucket(int tokens);
/* Starts capturing every op queued on o's stream (by this thread) for bucket; nothing runs until
 * ops_cuda_graph_launch. */
void ops_cuda_graph_begin(ops_t *o, int bucket);
/* Ends the capture begun for bucket and instantiates it (updating the bucket's executable graph
 * in place when the topology is unchanged). */
void ops_cuda_graph_end(ops_t *o, int bucket);
/* Launches bucket's graph on o's stream; false (and nothing queued) if none is stored. */
bool ops_cuda_graph_launch(const ops_t *o, int bucket);
/* Drops every stored graph, buckets and keys (e.g. after the caller reallocates the buffers they
 * captured). */
void ops_cuda_graph_reset(ops_t *o);
/* The ops_t graph hooks (ops.h graph_begin/end/launch) use keys 1..OPS_CUDA_GRAPH_KEYS (the
 * engine's token count of a decode step), each with its own graph, stored beside the buckets
 * above and under the same rules. For a key outside that range graph_launch returns false and
 * graph_begin/graph_end are fatal (misuse: the caller must run such a step eagerly). */

/* Sampling parameters of one logits row, in device memory (the same meaning as
 * shardd/sampling.h's sampling_params_t, restricted to what the GPU sampler supports). */
typedef struct {
    double temperature; /* 0 = greedy argmax */
    double top_p;       /* 1 = off */
    double min_p;       /* 0 = off */
    uint64_t seed;      /* request seed */
    uint64_t position;  /* absolute position of the token being sampled */
    int32_t top_k;      /* 0 or >= V = off; 1..OPS_CUDA_SAMPLE_MAX_K on the GPU */
    int32_t reserved;   /* 0 */
} ops_cuda_sample_t;

/* ids[r] = argmax of logits row r (row r at logits + r * stride, V values; NaN counts as -inf,
 * ties -> lowest id, all -inf -> -1), for r < R. Device pointers; queued on o's stream. */
void ops_cuda_argmax(const ops_t *o, const float *logits, int R, int V, size_t stride,
                     int32_t *ids);
/* ids[r] = the token sampling_sample (shardd/sampling.c) would pick for logits row r with
 * params[r], no penalties, no banned ids, vocab_limit V, or -1 for a row left to the CPU sampler
 * (the caller then samples that row on the CPU). Device pointers; queued on o's stream.
 * - temperature 0: the argmax (-1 only when every logit is -inf or NaN).
 * - top_k in 1..min(OPS_CUDA_SAMPLE_MAX_K, V-1): min_p -> top_k -> top_p and the draw with
 *   u = sampling_uniform(seed, position), step by step as the CPU's top-k path.
 * - top_k 0 or >= V (the CPU's full-vocabulary path) with top_p < 1 and/or min_p > 0: drawn here
 *   only when the answer provably lies among the 64 best ids above the min_p floor and no
 *   rounding difference can change it. With mass = the weights of all ids above the floor
 *   (block reduction) and delta = mass * (2^-19 + (V + 64) * 2^-50): for top_p < 1 the first
 *   prefix of the ranked candidates whose sum S_K exceeds top_p * mass - delta must have
 *   K <= 64 and S_K >= top_p * mass + delta; for top_p = 1 at most 64 ids may pass the floor;
 *   the draw (in id order over the members, as the CPU) must exceed u * S_K by more than delta at
 *   the chosen id and not come within delta before it. Otherwise -1: the nucleus or the min_p set
 *   needs more than 64 ids, or a sum is within delta of a threshold.
 * - -1 as well for temperature > 0 with top_k in 65..V-1, and for top_k 0 (or >= V) with top_p 1
 *   and min_p 0 (plain temperature sampling over the whole vocabulary).
 * Weights use CUDA's expf (within 2 ulp, glibc's within 1): on the top-k path a draw that lands
 * within rounding of a boundary can differ from the CPU sampler; the full-vocabulary path's
 * delta covers it. */
void ops_cuda_sample(const ops_t *o, const float *logits, int R, int V, size_t stride,
                     const ops_cuda_sample_t *params, int32_t *ids);
/* out[i] = sampling_uniform(seeds[i], positions[i]) computed on the device (a check that the
 * device hash is the CPU one). Device pointers, n values. */
void ops_cuda_uniform(const ops_t *o, const uint64_t *seeds, const uint64_t *positions, int n,
                      double *out);

#ifdef __cplusplus
}
#endif

#endif
