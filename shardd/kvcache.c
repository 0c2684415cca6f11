/* kvcache: paged KV memory and a simple free-list allocator (see kvcache.h). */
#include "kvcache.h"

#include <stdlib.h>
#include <string.h>

struct kvcache {
    kvcache_opts_t o;
    int n_layers;
    int window;       /* sliding window (keys per query) */
    ops_kv_t *layers; /* [n_layers] */
    void *full_mem;   /* all full-layer k and v arrays */
    void *window_mem; /* all window-layer k and v arrays */
    size_t bytes;
    int32_t *free_full; /* stack of free full blocks */
    int n_free_full;
    int32_t *free_window; /* stack of free window blocks */
    int n_free_window;
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
                kvcache_t **out, gerr_t *err) {
    *out = NULL;
    if (opts->block_size < 1 || opts->n_full_blocks < 0 || opts->n_window_blocks < 0) {
        gerr_set(err, "KV cache: block_size and block counts must be positive");
        return GERR_INVALID;
    }
    kvcache_t *kv = calloc(1, sizeof *kv);
    if (!kv) goto nomem;
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
    kv->free_full = malloc(sizeof(int32_t) * (size_t)(opts->n_full_blocks + 1));
    kv->free_window = malloc(sizeof(int32_t) * (size_t)(opts->n_window_blocks + 1));
    if (!kv->layers || !kv->free_full || !kv->free_window) goto nomem;
    if (full_total && !(kv->full_mem = calloc(1, full_total))) goto nomem;
    if (win_total && !(kv->window_mem = calloc(1, win_total))) goto nomem;
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
    for (int i = 0; i < opts->n_full_blocks; i++)
        kv->free_full[i] = opts->n_full_blocks - 1 - i;
    kv->n_free_full = opts->n_full_blocks;
    for (int i = 0; i < opts->n_window_blocks; i++)
        kv->free_window[i] = opts->n_window_blocks - 1 - i;
    kv->n_free_window = opts->n_window_blocks;
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
    free(kv->full_mem);
    free(kv->window_mem);
    free(kv->free_full);
    free(kv->free_window);
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
    return kv->n_free_full;
}

int kvcache_free_window(const kvcache_t *kv) {
    return kv->n_free_window;
}

static int s_grow(int32_t **tab, int *cap, int need) {
    if (need <= *cap) return 0;
    int nc = *cap ? *cap : 16;
    while (nc < need)
        nc *= 2;
    int32_t *t = realloc(*tab, sizeof(int32_t) * (size_t)nc);
    if (!t) return GERR_NOMEM;
    *tab = t;
    *cap = nc;
    return 0;
}

int kvcache_seq_reserve(kvcache_t *kv, kvcache_seq_t *seq, int first_query, int end_pos,
                        gerr_t *err) {
    const int bs = kv->o.block_size;
    int need = (end_pos + bs - 1) / bs;
    /* release window blocks whose last key is older than first_query's window */
    if (kv->o.n_window_blocks > 0) {
        int oldest_key = first_query - kv->window + 1;
        while (seq->first_live < seq->n_window && (seq->first_live + 1) * bs - 1 < oldest_key) {
            kv->free_window[kv->n_free_window++] = seq->window[seq->first_live];
            seq->window[seq->first_live++] = -1;
        }
    }
    if (kv->o.n_full_blocks > 0 || kv->o.n_window_blocks == 0) {
        if (need - seq->n_full > kv->n_free_full) goto full;
        if (s_grow(&seq->full, &seq->cap_full, need)) goto nomem;
        while (seq->n_full < need)
            seq->full[seq->n_full++] = kv->free_full[--kv->n_free_full];
    }
    if (kv->o.n_window_blocks > 0) {
        if (need - seq->n_window > kv->n_free_window) goto full;
        if (s_grow(&seq->window, &seq->cap_window, need)) goto nomem;
        while (seq->n_window < need) {
            /* blocks entirely older than the window are never allocated */
            if ((seq->n_window + 1) * bs - 1 < first_query - kv->window + 1) {
                seq->window[seq->n_window++] = -1;
                if (seq->first_live == seq->n_window - 1) seq->first_live = seq->n_window;
                continue;
            }
            seq->window[seq->n_window++] = kv->free_window[--kv->n_free_window];
        }
    }
    return 0;
full:
    gerr_set(err, "KV cache full: no free blocks for positions up to %d (raise the KV budget)",
             end_pos);
    return GERR_LIMIT;
nomem:
    gerr_set(err, "out of memory growing a block table");
    return GERR_NOMEM;
}

void kvcache_seq_release(kvcache_t *kv, kvcache_seq_t *seq) {
    for (int i = 0; i < seq->n_full; i++)
        kv->free_full[kv->n_free_full++] = seq->full[i];
    for (int i = seq->first_live; i < seq->n_window; i++)
        if (seq->window[i] >= 0) kv->free_window[kv->n_free_window++] = seq->window[i];
    free(seq->full);
    free(seq->window);
    memset(seq, 0, sizeof *seq);
}
