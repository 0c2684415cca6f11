/* kvcache: the paged KV cache of one shard, and a block allocator for callers
 * that manage their own sequences (gptoss-run, tests). The allocation logic is
 * kvalloc.h, which the gateway's scheduler uses too, so block ids chosen there
 * are the ones a shard's own allocator would choose.
 *
 * Two pools of fixed-size blocks: "full" blocks for full-attention layers (a
 * sequence needs ceil(len / block_size) of them) and "window" blocks for
 * sliding-window layers, where a block is freed as soon as every key in it is
 * older than the window of the next query, so a sequence holds only about
 * (window + chunk) / block_size of them however long it grows. A block id names
 * the same slot range in every layer of its kind. Block tables are owned by the
 * caller (kvcache_seq_t) and passed with each step; this module holds the
 * memory and a kvalloc for callers that want it.
 *
 * Not here: which sequences run (scheduler), prefix sharing. */
#ifndef GPTOSS_KVCACHE_H
#define GPTOSS_KVCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "gerr.h"
#include "ops.h"

typedef struct kvcache kvcache_t;

/* Sizing and format of a cache. */
typedef struct {
    ops_kv_dtype_t dtype; /* OPS_KV_F32 (exact) or OPS_KV_BF16 */
    int block_size;       /* token slots per block (e.g. 16) */
    int n_full_blocks;    /* blocks in the full-attention pool */
    int n_window_blocks;  /* blocks in the sliding-window pool */
} kvcache_opts_t;

/* A caller-owned sequence: its block tables (logical block -> physical id). */
typedef struct {
    int32_t *full; /* [n_full] full-layer blocks for positions [0, n_full*bs) */
    int n_full, cap_full;
    int32_t *window; /* [n_window] window-layer blocks; entries < first_live are -1 */
    int n_window, cap_window;
    int first_live; /* first window-table entry still held */
} kvcache_seq_t;

/* Plans opts for a byte budget: window pool for max_seqs sequences of chunks up to
 * max_chunk tokens, the rest to full blocks. Returns GERR_LIMIT if the budget
 * cannot hold even that. */
int kvcache_plan(const gptoss_config_t *cfg, int n_kv_heads, ops_kv_dtype_t dtype, int block_size,
                 size_t budget_bytes, int max_seqs, int max_chunk, kvcache_opts_t *opts,
                 gerr_t *err);
/* Allocates a cache for cfg's layers (n_kv_heads held by this shard) with its K/V arrays in
 * backend memory from ops->alloc (zero-filled; on the CPU reserved lazily by the OS, pages
 * touched on use). ops is borrowed and must outlive the cache. Block bookkeeping stays on
 * the host. Caller frees with kvcache_free. */
int kvcache_new(const gptoss_config_t *cfg, int n_kv_heads, const kvcache_opts_t *opts,
                const ops_t *ops, kvcache_t **out, gerr_t *err);
/* Frees the cache (its backend memory through ops->free_mem), sets *kv to NULL (safe on
 * NULL). */
void kvcache_free(kvcache_t **kv);
/* The cache of layer l (borrowed; k and v are backend memory). */
const ops_kv_t *kvcache_layer(const kvcache_t *kv, int l);
/* Block size. */
int kvcache_block_size(const kvcache_t *kv);
/* Bytes held by the cache. */
size_t kvcache_bytes(const kvcache_t *kv);
/* Free blocks left in the full / window pool. */
int kvcache_free_full(const kvcache_t *kv);
int kvcache_free_window(const kvcache_t *kv);

/* Makes seq able to take positions up to end_pos - 1 (allocating blocks), after
 * releasing window blocks that no query at position >= first_query can see.
 * Returns GERR_LIMIT (nothing changed for the failing pool) when out of blocks. */
int kvcache_seq_reserve(kvcache_t *kv, kvcache_seq_t *seq, int first_query, int end_pos,
                        gerr_t *err);
/* Returns all of seq's blocks to the pools and frees its tables (seq zeroed). */
void kvcache_seq_release(kvcache_t *kv, kvcache_seq_t *seq);

#endif
