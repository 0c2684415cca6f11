/* kvalloc: the KV block allocator (see kvalloc.h), shared by the gateway's
 * scheduler and shardd/kvcache.c. */
#include "kvalloc.h"

#include <stdlib.h>
#include <string.h>

struct kvalloc {
    int block_size; /* tokens per block */
    int n_full, n_window;
    int window;         /* sliding window of the model (keys per query) */
    int32_t *free_full; /* stack of free full blocks [n_full] */
    int n_free_full;
    int32_t *free_window; /* stack of free window blocks [n_window] */
    int n_free_window;
};

int kvalloc_new(int block_size, int n_full, int n_window, int window, kvalloc_t **out,
                gerr_t *err) {
    *out = NULL;
    if (block_size < 1 || n_full < 0 || n_window < 0 || window < 0) {
        gerr_set(err, "kvalloc: block size %d, pools %d + %d, window %d: must be positive",
                 block_size, n_full, n_window, window);
        return GERR_INVALID;
    }
    kvalloc_t *a = calloc(1, sizeof *a);
    if (!a) goto nomem;
    a->block_size = block_size;
    a->n_full = n_full;
    a->n_window = n_window;
    a->window = window;
    a->free_full = malloc(sizeof(int32_t) * (size_t)(n_full + 1));
    a->free_window = malloc(sizeof(int32_t) * (size_t)(n_window + 1));
    if (!a->free_full || !a->free_window) goto nomem;
    for (int i = 0; i < n_full; i++)
        a->free_full[i] = n_full - 1 - i;
    a->n_free_full = n_full;
    for (int i = 0; i < n_window; i++)
        a->free_window[i] = n_window - 1 - i;
    a->n_free_window = n_window;
    *out = a;
    return 0;
nomem:
    kvalloc_free(&a);
    gerr_set(err, "kvalloc: out of memory for %d + %d blocks", n_full, n_window);
    return GERR_NOMEM;
}

void kvalloc_free(kvalloc_t **pa) {
    if (!pa || !*pa) return;
    free((*pa)->free_full);
    free((*pa)->free_window);
    free(*pa);
    *pa = NULL;
}

int kvalloc_total(const kvalloc_t *a) {
    return a->n_full + a->n_window;
}

int kvalloc_used(const kvalloc_t *a) {
    return a->n_full - a->n_free_full + a->n_window - a->n_free_window;
}

int kvalloc_free_full(const kvalloc_t *a) {
    return a->n_free_full;
}

int kvalloc_free_window(const kvalloc_t *a) {
    return a->n_free_window;
}

int kvalloc_block_size(const kvalloc_t *a) {
    return a->block_size;
}

void kvalloc_need(const kvalloc_t *a, const kvcache_seq_t *seq, int first_query, int end_pos,
                  int *need_full, int *need_window) {
    const int bs = a->block_size;
    int need = (end_pos + bs - 1) / bs;
    int nf = 0, nw = 0;
    if (a->n_full > 0 || a->n_window == 0) nf = need > seq->n_full ? need - seq->n_full : 0;
    if (a->n_window > 0) {
        int oldest_key = first_query - a->window + 1;
        int released = 0;
        for (int i = seq->first_live; i < seq->n_window && (i + 1) * bs - 1 < oldest_key; i++)
            released++;
        for (int i = seq->n_window; i < need; i++)
            if (!((i + 1) * bs - 1 < oldest_key)) nw++;
        nw -= released;
    }
    *need_full = nf;
    *need_window = nw;
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

int kvalloc_reserve(kvalloc_t *a, kvcache_seq_t *seq, int first_query, int end_pos, gerr_t *err) {
    const int bs = a->block_size;
    int need = (end_pos + bs - 1) / bs;
    /* release window blocks whose last key is older than first_query's window */
    if (a->n_window > 0) {
        int oldest_key = first_query - a->window + 1;
        while (seq->first_live < seq->n_window && (seq->first_live + 1) * bs - 1 < oldest_key) {
            a->free_window[a->n_free_window++] = seq->window[seq->first_live];
            seq->window[seq->first_live++] = -1;
        }
    }
    if (a->n_full > 0 || a->n_window == 0) {
        if (need - seq->n_full > a->n_free_full) goto full;
        if (s_grow(&seq->full, &seq->cap_full, need)) goto nomem;
        while (seq->n_full < need)
            seq->full[seq->n_full++] = a->free_full[--a->n_free_full];
    }
    if (a->n_window > 0) {
        /* count what is still needed (blocks older than the window are never taken) */
        int take = 0;
        for (int i = seq->n_window; i < need; i++)
            if (!((i + 1) * bs - 1 < first_query - a->window + 1)) take++;
        if (take > a->n_free_window) goto full;
        if (s_grow(&seq->window, &seq->cap_window, need)) goto nomem;
        while (seq->n_window < need) {
            if ((seq->n_window + 1) * bs - 1 < first_query - a->window + 1) {
                seq->window[seq->n_window++] = -1;
                if (seq->first_live == seq->n_window - 1) seq->first_live = seq->n_window;
                continue;
            }
            seq->window[seq->n_window++] = a->free_window[--a->n_free_window];
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

void kvalloc_release(kvalloc_t *a, kvcache_seq_t *seq) {
    for (int i = 0; i < seq->n_full; i++)
        a->free_full[a->n_free_full++] = seq->full[i];
    for (int i = seq->first_live; i < seq->n_window; i++)
        if (seq->window[i] >= 0) a->free_window[a->n_free_window++] = seq->window[i];
    free(seq->full);
    free(seq->window);
    memset(seq, 0, sizeof *seq);
}
