/* kvalloc: the KV block allocator, without any KV memory.
 *
 * Two free stacks: full-attention blocks, and sliding-window blocks released
 * once every key in them is older than the window of the next query. The
 * gateway uses it to decide which physical blocks each sequence uses and sends
 * the block tables with every STEP, so every shard writes the same slots;
 * shardd/kvcache.c uses the same allocator for callers that manage their own
 * sequences (gptoss-run, tests), so there is one allocation logic, not two
 * copies to keep in step. Block tables are kvcache_seq_t, owned by the caller.
 *
 * Not here: which sequences run (sched.c), the pool sizes (kvcache_plan). */
#ifndef GPTOSS_KVALLOC_H
#define GPTOSS_KVALLOC_H

#include <stdint.h>

#include "gerr.h"
#include "kvcache.h"

typedef struct kvalloc kvalloc_t;

/* Creates an allocator for pools of n_full and n_window blocks of block_size tokens,
 * for a model whose sliding window is `window` keys. Caller frees with kvalloc_free. */
int kvalloc_new(int block_size, int n_full, int n_window, int window, kvalloc_t **out, gerr_t *err);
/* Frees the allocator; *a = NULL (safe on NULL). Tables still held by callers stay theirs. */
void kvalloc_free(kvalloc_t **a);
/* Blocks the pools hold in all (full + window). */
int kvalloc_total(const kvalloc_t *a);
/* Blocks in use now (full + window). */
int kvalloc_used(const kvalloc_t *a);
/* Free blocks of the full / window pool. */
int kvalloc_free_full(const kvalloc_t *a);
int kvalloc_free_window(const kvalloc_t *a);
/* Block size in tokens. */
int kvalloc_block_size(const kvalloc_t *a);
/* How many new full / window blocks kvalloc_reserve(seq, first_query, end_pos) would take
 * (window blocks it would release first are subtracted). Changes nothing. */
void kvalloc_need(const kvalloc_t *a, const kvcache_seq_t *seq, int first_query, int end_pos,
                  int *need_full, int *need_window);
/* Makes seq hold positions up to end_pos - 1, after releasing window blocks no query at
 * position >= first_query can see; same semantics as kvcache_seq_reserve. Returns
 * GERR_LIMIT when a pool is short (the failing pool unchanged), GERR_NOMEM. */
int kvalloc_reserve(kvalloc_t *a, kvcache_seq_t *seq, int first_query, int end_pos, gerr_t *err);
/* Returns all of seq's blocks to the pools and frees its tables (seq zeroed). */
void kvalloc_release(kvalloc_t *a, kvcache_seq_t *seq);

#endif
