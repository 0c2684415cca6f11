/* kvcache: paged KV memory; block bookkeeping through kvalloc (see kvcache.h). */
#include "kvcache.h"

#include "kvalloc.h"

#include <stdlib.h>
#include <string.h>

struct kvcache {
    const ops_t *ops; /* backend of the K/V memory (borrowed) */
    kvcache_opts_t o;
    int n_layers;
    int window;       /* sliding window (keys per query) */
    ops_kv_t *layers; /* [n_layers] */
    void *full_mem;   /* all full-layer k and v arrays (backend memory) */
    void *window_mem; /* all window-layer k and v arrays (backend memory) */
    size_t bytes;
    kvalloc_t *alloc; /* block bookkeeping (the allocator the gateway uses too) */
};

static size_t s_block_bytes(int n_kv_heads, int D, int bs, ops_kv_dtype_t dt) {
    return (size_t)bs * n_kv_heads * D * (dt == OPS_KV_F32 ? 4 : 2);
}

int kvcache_plan(const gptoss_config_t *cfg, int n_kv_heads, ops_kv_dtype_t dtype, int block_size,
                 size_t budget_bytes, int max_seqs, int max_chunk, kvcache_opts_t *opts,
                 gerr_t *err) {
    int n_sl = 0, L = cfg->num_hidden_layers;
    for (int l = 0; l < L; l++)
        n_sl += cfg->layer_sliding[l];
    size_t blk = 2 * s_block_bytes(n_kv_heads, cfg->head_dim, block_size, dtype);
    int per_seq = (cfg->sliding_window + max_chunk + block_size - 1) / block_size + 2;
    size_t win = n_sl ? (size_t)max_seqs * per_seq * blk * n_sl : 0;
    if (win > budget_bytes) {
        gerr_set(err,
                 "KV cache budget of %zu MiB is too small for %d sequences (the "
                 "sliding-window layers alone need %zu MiB)",
                 budget_bytes >> 20, max_seqs, win >> 20);
        return GERR_LIMIT;
    }
    opts->dtype = dtype;
    opts->block_size = block_size;
    opts->n_window_blocks = n_sl ? max_seqs * per_seq : 0;
    size_t full_blk = blk * (size_t)(L - n_sl);
    opts->n_full_blocks = full_blk ? (int)((budget_bytes - win) / full_blk) : 0;
    if (L > n_sl && opts->n_full_blocks < 1) {
        gerr_set(err, "KV cache budget of %zu MiB holds no full-attention block",
                 budget_bytes >> 20);
        return GERR_LIMIT;
    }
    return 0;
}

int kvcache_new(const gptoss_config_t *cfg, int n_kv_heads, const kvcache_opts_t *opts,
                const ops_t *ops, kvcache_t **out, gerr_t *err) {
    *out = NULL;
    if (opts->block_size < 1 || opts->n_full_blocks < 0 || opts->n_window_blocks < 0) {
        gerr_set(err, "KV cache: block_size and block counts must be positive");
        return GERR_INVALID;
    }
    kvcache_t *kv = calloc(1, sizeof *kv);
    if (!kv) goto nomem;
    kv->ops = ops;
    kv->o = *opts;
    kv->n_layers = cfg->num_hidden_layers;
    kv->window = cfg->sliding_window;
    int n_sl = 0;
    for (int l = 0; l < kv->n_layers; l++)
        n_sl += cfg->layer_sliding[l];
    size_t blk = s_block_bytes(n_kv_heads, cfg->head_dim, opts->block_size, opts->dtype);
    size_t full_arr = blk * (size_t)opts->n_full_blocks; /* one k or v array */
    size_t win_arr = blk * (size_t)opts->n_window_blocks;
    size_t full_total = full_arr * 2 * (size_t)(kv->n_layers - n_sl);
    size_t win_total = win_arr * 2 * (size_t)n_sl;
    kv->layers = calloc((size_t)kv->n_layers, sizeof *kv->layers);
    if (!kv->layers) goto nomem;
    if (full_total && !(kv->full_mem = ops->alloc(ops, full_total))) goto nomem;
    if (win_total && !(kv->window_mem = ops->alloc(ops, win_total))) goto nomem;
    kv->bytes = full_total + win_total;
    char *fp = kv->full_mem, *wp = kv->window_mem;
    for (int l = 0; l < kv->n_layers; l++) {
        ops_kv_t *L = &kv->layers[l];
        bool sl = cfg->layer_sliding[l];
        size_t arr = sl ? win_arr : full_arr;
        char **p = sl ? &wp : &fp;
        L->k = *p;
        L->v = *p + arr;
        *p += 2 * arr;
        L->dtype = opts->dtype;
        L->n_blocks = sl ? opts->n_window_blocks : opts->n_full_blocks;
        L->block_size = opts->block_size;
        L->n_kv_heads = n_kv_heads;
        L->head_dim = cfg->head_dim;
    }
    if (kvalloc_new(opts->block_size, opts->n_full_blocks, opts->n_window_blocks, kv->window,
                    &kv->alloc, err) != 0) {
        kvcache_free(&kv);
        return GERR_NOMEM;
    }
    *out = kv;
    return 0;
nomem:
    kvcache_free(&kv);
    gerr_set(err, "KV cache: cannot allocate %d + %d blocks of %d tokens", opts->n_full_blocks,
             opts->n_window_blocks, opts->block_size);
    return GERR_NOMEM;
}

void kvcache_free(kvcache_t **pkv) {
    if (!pkv || !*pkv) return;
    kvcache_t *kv = *pkv;
    free(kv->layers);
    if (kv->ops) {
        kv->ops->free_mem(kv->ops, kv->full_mem);
        kv->ops->free_mem(kv->ops, kv->window_mem);
    }
    kvalloc_free(&kv->alloc);
    free(kv);
    *pkv = NULL;
}

const ops_kv_t *kvcache_layer(const kvcache_t *kv, int l) {
    return &kv->layers[l];
}

int kvcache_block_size(const kvcache_t *kv) {
    return kv->o.block_size;
}

size_t kvcache_bytes(const kvcache_t *kv) {
    return kv->bytes;
}

int kvcache_free_full(const kvcache_t *kv) {
    return kvalloc_free_full(kv->alloc);
}

int kvcache_free_window(const kvcache_t *kv) {
    return kvalloc_free_window(kv->alloc);
}

int kvcache_seq_reserve(kvcache_t *kv, kvcache_seq_t *seq, int first_query, int end_pos,
                        gerr_t *err) {
    return kvalloc_reserve(kv->alloc, seq, first_query, end_pos, err);
}

void kvcache_seq_release(kvcache_t *kv, kvcache_seq_t *seq) {
    kvalloc_release(kv->alloc, seq);
}
