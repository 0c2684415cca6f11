/* engine: the gpt-oss forward pass over a batch of sequences, on one shard.
 *
 * A step is a list of sequences, each with new tokens at consecutive positions
 * starting at start_pos: a prefill chunk (many tokens) or a decode token (one)
 * mixed freely in one batch. All tokens of the step go through every matmul
 * together (weights are read once per step); attention reads each sequence's own
 * paged KV cache through the block tables the caller passes (kvcache.h; the
 * caller reserves blocks before the step). MoE tokens are grouped by expert.
 * Logits come back for the last token of each sequence, or for every token of a
 * sequence that asks for all of them.
 *
 * Tensor parallelism: with a comm of world N (engine_opts_t.comm) over weights
 * bound for the same rank (weights_load_shard), each shard runs the same step on
 * its slice: its q/KV heads (its KV cache holds only its KV heads), its expert
 * units, its lm_head rows. The partial o_proj and MoE outputs are summed with
 * all_reduce_sum (the o_proj and down biases come from rank 0 only), and the
 * shards' logits rows are gathered to rank 0, which returns full-vocabulary
 * logits; other ranks return none. Every rank must call engine_step with the same
 * sequences in the same order. A failed collective fails the step with its comm
 * code (negative, COMM_ERR_*) and message; the group is then broken for good (the
 * supervisor restarts it). With no comm (world 1) the step is the single-shard
 * forward pass, bit for bit.
 *
 * Built only from ops.h calls, so a CUDA ops backend runs the same code: activations,
 * scratch, the step's inputs (token ids, RoPE rows, ops_tok_t arrays and a backend copy of
 * the block tables) and the KV cache are backend memory (ops->alloc); the inputs are staged
 * on the host and uploaded (ops->upload), the logits downloaded (ops->download). With a comm,
 * the collectives run on those backend buffers, so the comm must be able to address backend
 * memory: the shm comm with the CPU backend, NCCL with CUDA.
 *
 * Step graphs (only when ops->graph_launch is non-NULL; never on the CPU): a step in which
 * every sequence is one decode token without all_logits, with world 1 and T <= 64 tokens,
 * has key T. The first time a key is seen the step runs eagerly; the second time its ops are
 * captured (graph_begin(T), the ops, graph_end(T)) and launched; afterwards the step only
 * uploads its inputs, calls graph_launch(T) and downloads the logits. Such steps always use
 * the same input and activation buffers (a set sized at engine_new for 64 tokens, whose
 * packed block tables hold max_position_embeddings / block_size entries per table per token,
 * and which is never reallocated; larger steps use a separate set), so a captured graph never
 * points at freed memory. If graph_launch returns false for a captured key (the backend
 * dropped its graphs), the step runs eagerly and the key is captured again next time; if it
 * fails right after a capture, the key runs eagerly from then on.
 * Not here: sampling, scheduling, creating the comm. */
#ifndef GPTOSS_ENGINE_H
#define GPTOSS_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "gerr.h"
#include "kvcache.h"
#include "ops.h"
#include "weights.h"

typedef struct engine engine_t;

/* Engine settings. */
typedef struct {
    ops_kv_dtype_t kv_dtype; /* OPS_KV_F32 (default, exact) or OPS_KV_BF16 */
    int block_size;          /* KV block size in tokens (0: 16) */
    size_t kv_budget_bytes;  /* KV cache memory (0: 1 GiB) */
    int max_seqs;            /* sequences alive at once (0: 16); sizes the window pool */
    int max_chunk;           /* most new tokens of one sequence per step (0: 512) */
    comm_t *comm;            /* tensor-parallel group (borrowed, must outlive the engine);
                                NULL: world 1. rank/world must equal the weights' */
} engine_opts_t;

/* One sequence of a step. All pointers borrowed for the call. */
typedef struct {
    const int32_t *tokens;        /* [n_tokens] new token ids */
    int n_tokens;                 /* >= 1 */
    int start_pos;                /* absolute position of tokens[0] */
    const int32_t *full_blocks;   /* block table for full-attention layers */
    int n_full_blocks;            /* entries in full_blocks */
    const int32_t *window_blocks; /* block table for sliding-window layers */
    int n_window_blocks;          /* entries in window_blocks */
    bool all_logits;              /* logits for every new token, not only the last */
} engine_seq_t;

/* Creates an engine over bound weights w and backend ops (both borrowed; they
 * must outlive the engine), with its own KV cache and buffers in backend memory. Caller
 * frees (engine_free). */
int engine_new(const weights_t *w, const ops_t *ops, const engine_opts_t *opts, engine_t **out,
               gerr_t *err);
/* Frees the engine, its buffers and its KV cache; sets *e to NULL (safe on NULL). */
void engine_free(engine_t **e);
/* The engine's KV cache (borrowed), for reserving blocks (kvcache_seq_reserve). */
kvcache_t *engine_kv(engine_t *e);
/* Length of each logits row engine_step returns on rank 0: the whole vocabulary. */
int engine_vocab(const engine_t *e);
/* Logits rows a step returns: per sequence 1, or n_tokens if all_logits. */
int engine_logits_rows(const engine_seq_t *seqs, int n_seqs);

/* Runs one step: writes the new tokens' K/V into the cache and fills logits
 * ([engine_logits_rows][engine_vocab], caller-allocated, in sequence order) on
 * rank 0; other ranks pass logits NULL (ignored). Bad input (token id out of
 * range, missing blocks, negative positions) is refused with GERR_INVALID before
 * anything is written (on every rank alike, before any collective). A comm failure
 * returns its COMM_ERR_* code; a rank-local failure in a group (out of memory)
 * aborts the comm so the peers fail fast instead of waiting. */
int engine_step(engine_t *e, const engine_seq_t *seqs, int n_seqs, float *logits, gerr_t *err);

#endif
