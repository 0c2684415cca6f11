/* engine: the forward pass (GPTOSS.md section 4) composed from ops.h calls.
 *
 * Per step: stage the inputs on the host (token ids, the RoPE cos/sin rows computed once
 * per step with YaRN, the ops_tok_t arrays of full and window layers, each sequence's block
 * tables packed once, the logits rows) and upload them into backend buffers; embed all T
 * tokens; per layer: RMSNorm, q/k/v projections, RoPE, K/V into the paged cache, attention
 * with sinks (sliding window on even layers), o_proj + residual; RMSNorm, router top-k, the
 * moe op (experts run on the tokens routed to them, weighted sum), residual. Finally the rows
 * that want logits are gathered, RMSNorm and lm_head, and the logits are downloaded.
 * Every activation buffer is backend memory (ops->alloc), so a device backend runs this
 * same code; the host sees only the step's inputs and the logits. Two buffer sets: "small"
 * for steps of up to S_SMALL_T tokens, sized at engine_new and never reallocated (step
 * graphs capture its pointers), and "big" for the rest, grown to the largest step seen.
 *
 * With a comm of world > 1 (engine.h): the o_proj output and the weighted MoE sum
 * are partial sums over this shard's heads / units and go through all_reduce_sum
 * before the residual add (the biases are on rank 0's views only); a shard with no
 * expert units contributes zeros. The lm_head rows of every shard are gathered to
 * rank 0 rank-major ([rank][row][its vocab rows]) and downloaded there into
 * [row][vocab]. World 1 takes none of these branches. The comm works on the engine's
 * backend buffers, so it must be able to address backend memory (the shm comm with the
 * CPU backend, NCCL with CUDA).
 *
 * Batch invariance: a token's logits must not depend on the step it is in (DESIGN.md:
 * seeded streams survive re-batching, preemption and shard restarts bit for bit). The ops
 * guarantee it per token (kernels/cpu/cpu_kern.h; the moe op sums each token's experts in
 * ascending expert index, whatever other tokens the experts serve), and the all-reduce sums
 * the ranks in rank order. */
#include "engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* GPTOSS_PROFILE=1: wall-clock seconds per op kind, printed to stderr after each step, to
 * see where a prefill or batched step spends its time. Pool waits are inside the ops (each op
 * returns after its fork-join), so they count in the op that waits. On a backend that queues
 * its work (a GPU), the times are those of queueing, except for the final download. */
enum {
    S_P_INPUTS,
    S_P_EMBED,
    S_P_NORM,
    S_P_QKV,
    S_P_ROPE,
    S_P_KVW,
    S_P_ATTN,
    S_P_OPROJ,
    S_P_ROUTER,
    S_P_MOE,
    S_P_RESID,
    S_P_LMHEAD,
    S_P_N
};
static const char *const s_prof_names[S_P_N] = {"inputs", "embed",    "rmsnorm",   "qkv matmul",
                                                "rope",   "kv write", "attention", "o_proj",
                                                "router", "moe",      "residual",  "lm_head"};

static double s_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Runs stmt, adding its wall time to e->prof_s[slot] when profiling is on. */
#define S_PROF(e, slot, stmt)                                                                      \
    do {                                                                                           \
        double t0_ = (e)->prof ? s_now() : 0.0;                                                    \
        stmt;                                                                                      \
        if ((e)->prof) (e)->prof_s[slot] += s_now() - t0_;                                         \
    } while (0)

/* Steps of up to S_SMALL_T tokens run in the "small" buffer set, sized at engine_new and never
 * reallocated, so that step graphs captured on it stay valid; it is also the graph limit. */
#define S_SMALL_T 64

/* One set of backend buffers (ops->alloc) for steps of up to cap_T tokens, cap_R logits rows
 * and cap_blk packed block-table entries. */
typedef struct {
    int cap_T, cap_R;
    size_t cap_blk;
    float *x;         /* [T][H] residual stream */
    float *a;         /* [T][H] normed */
    float *q;         /* [T][nh*D] */
    float *k, *v;     /* [T][nkv*D] */
    float *att;       /* [T][nh*D] */
    float *tmp;       /* [T][H] projection out / MoE sum / rows that want logits */
    float *cs;        /* [T][D] rope rows (input) */
    float *rl;        /* [T][E] router logits */
    int32_t *ridx;    /* [T][K] */
    float *rw;        /* [T][K] */
    int32_t *ids;     /* [T] token ids (input) */
    ops_tok_t *tfull; /* [T] (input; .blocks point into blk) */
    ops_tok_t *twin;  /* [T] (input; .blocks point into blk) */
    int32_t *rows;    /* [R] token index of each logits row (input) */
    int32_t *blk;     /* [cap_blk] the step's block tables, packed (input) */
    float *lg;        /* [R][V local] lm_head output (world 1: the whole vocabulary) */
    float *gath;      /* rank 0 of world > 1: [R][vocab] gathered, rank-major */
} s_bufs_t;

/* Graph state of a decode key (engine.h, "Step graphs"). */
enum { S_G_NEW, S_G_SEEN, S_G_CAPTURED, S_G_OFF };

struct engine {
    const weights_t *w;
    const ops_t *ops;
    kvcache_t *kv;
    comm_t *comm;               /* NULL or world 1: no collectives */
    int rank, world;            /* of the comm (0, 1 without) */
    int vbegin[COMM_MAX_WORLD]; /* every rank's first vocab row */
    int vrows[COMM_MAX_WORLD];  /* and its row count */
    ops_rope_t rope;
    int H, D, nh, nkv, E, K, nu, V;
    bool any_full, any_win; /* the model has full / sliding-window layers */
    s_bufs_t small;         /* steps of <= S_SMALL_T tokens whose tables fit (never regrown) */
    s_bufs_t big;           /* every other step (grown on demand) */
    /* host staging of the step's inputs, uploaded into the chosen set */
    int hcap_T;
    size_t hcap_blk;
    int32_t *h_ids;                     /* [T] */
    int32_t *h_pos;                     /* [T] */
    float *h_cs;                        /* [T][D] */
    ops_tok_t *h_tfull;                 /* [T], .blocks are backend pointers into the set's blk */
    ops_tok_t *h_twin;                  /* [T] */
    int32_t *h_rows;                    /* [T] */
    int32_t *h_blk;                     /* [hcap_blk] */
    unsigned char graph[S_SMALL_T + 1]; /* S_G_* per decode key (T) */
    int prof;                           /* GPTOSS_PROFILE set: per-op times per step on stderr */
    double prof_s[S_P_N];
};

/* Frees every buffer of set b (backend memory) and zeroes it. */
static void s_bufs_free(const ops_t *o, s_bufs_t *b) {
    void *p[] = {b->x,    b->a,  b->q,   b->k,     b->v,    b->att,  b->tmp, b->cs, b->rl,
                 b->ridx, b->rw, b->ids, b->tfull, b->twin, b->rows, b->blk, b->lg, b->gath};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++)
        o->free_mem(o, p[i]);
    *b = (s_bufs_t){0};
}

/* Frees *p and allocates bytes of backend memory there (old contents are not kept). */
static int s_realloc(const ops_t *o, void *pp, size_t bytes) {
    void **p = pp;
    o->free_mem(o, *p);
    *p = o->alloc(o, bytes ? bytes : 1);
    return *p ? 0 : GERR_NOMEM;
}

/* Next capacity >= need, doubling from from. */
static size_t s_cap(size_t from, size_t need) {
    size_t n = from;
    while (n < need)
        n *= 2;
    return n;
}

/* Makes set b hold a step of T tokens, R logits rows and nblk table entries (growing each
 * group to the next power of two times its first size; exact sizes when exact). Contents
 * do not survive growth. */
static int s_bufs_grow(engine_t *e, s_bufs_t *b, int T, int R, size_t nblk, bool exact) {
    const ops_t *o = e->ops;
    if (T > b->cap_T) {
        size_t n = exact ? (size_t)T : s_cap(b->cap_T ? (size_t)b->cap_T : 128, (size_t)T);
        size_t H = (size_t)e->H, Q = (size_t)e->nh * e->D, KV = (size_t)e->nkv * e->D;
        b->cap_T = 0; /* until every buffer is there */
        if (s_realloc(o, &b->x, sizeof(float) * n * H) ||
            s_realloc(o, &b->a, sizeof(float) * n * H) ||
            s_realloc(o, &b->q, sizeof(float) * n * Q) ||
            s_realloc(o, &b->k, sizeof(float) * n * KV) ||
            s_realloc(o, &b->v, sizeof(float) * n * KV) ||
            s_realloc(o, &b->att, sizeof(float) * n * Q) ||
            s_realloc(o, &b->tmp, sizeof(float) * n * H) ||
            s_realloc(o, &b->cs, sizeof(float) * n * (size_t)e->D) ||
            s_realloc(o, &b->rl, sizeof(float) * n * (size_t)e->E) ||
            s_realloc(o, &b->ridx, sizeof(int32_t) * n * (size_t)e->K) ||
            s_realloc(o, &b->rw, sizeof(float) * n * (size_t)e->K) ||
            s_realloc(o, &b->ids, sizeof(int32_t) * n) ||
            s_realloc(o, &b->tfull, sizeof(ops_tok_t) * n) ||
            s_realloc(o, &b->twin, sizeof(ops_tok_t) * n))
            return GERR_NOMEM;
        b->cap_T = (int)n;
    }
    if (R > b->cap_R) {
        size_t n = exact ? (size_t)R : s_cap(b->cap_R ? (size_t)b->cap_R : 16, (size_t)R);
        b->cap_R = 0;
        if (s_realloc(o, &b->rows, sizeof(int32_t) * n) ||
            s_realloc(o, &b->lg, sizeof(float) * n * (size_t)(e->V ? e->V : 1)))
            return GERR_NOMEM;
        if (e->world > 1 && e->rank == 0 &&
            s_realloc(o, &b->gath, sizeof(float) * n * (size_t)engine_vocab(e)))
            return GERR_NOMEM;
        b->cap_R = (int)n;
    }
    if (nblk > b->cap_blk) {
        size_t n = exact ? nblk : s_cap(b->cap_blk ? b->cap_blk : 256, nblk);
        b->cap_blk = 0;
        if (s_realloc(o, &b->blk, sizeof(int32_t) * n)) return GERR_NOMEM;
        b->cap_blk = n;
    }
    return 0;
}

/* Grows the host staging arrays to T tokens and nblk table entries. */
static int s_host_grow(engine_t *e, int T, size_t nblk) {
#define S_RE(ptr, count)                                                                           \
    do {                                                                                           \
        void *p_ = realloc(e->ptr, sizeof(*e->ptr) * (size_t)(count));                             \
        if (!p_) return GERR_NOMEM;                                                                \
        e->ptr = p_;                                                                               \
    } while (0)
    if (T > e->hcap_T) {
        size_t n = s_cap(e->hcap_T ? (size_t)e->hcap_T : S_SMALL_T, (size_t)T);
        S_RE(h_ids, n);
        S_RE(h_pos, n);
        S_RE(h_cs, n * (size_t)e->D);
        S_RE(h_tfull, n);
        S_RE(h_twin, n);
        S_RE(h_rows, n);
        e->hcap_T = (int)n;
    }
    if (nblk > e->hcap_blk) {
        size_t n = s_cap(e->hcap_blk ? e->hcap_blk : 256, nblk);
        S_RE(h_blk, n);
        e->hcap_blk = n;
    }
#undef S_RE
    return 0;
}

int engine_new(const weights_t *w, const ops_t *ops, const engine_opts_t *opts, engine_t **out,
               gerr_t *err) {
    *out = NULL;
    const gptoss_config_t *c = &w->cfg;
    engine_opts_t o = opts ? *opts : (engine_opts_t){0};
    if (o.block_size <= 0) o.block_size = 16;
    if (o.kv_budget_bytes == 0) o.kv_budget_bytes = (size_t)1 << 30;
    if (o.max_seqs <= 0) o.max_seqs = 16;
    if (o.max_chunk <= 0) o.max_chunk = 512;
    engine_t *e = calloc(1, sizeof *e);
    if (!e) {
        gerr_set(err, "out of memory");
        return GERR_NOMEM;
    }
    e->w = w;
    const char *prof = getenv("GPTOSS_PROFILE");
    e->prof = prof && *prof && strcmp(prof, "0") != 0;
    e->ops = ops;
    e->comm = o.comm;
    e->rank = o.comm ? o.comm->rank : 0;
    e->world = o.comm ? o.comm->world : 1;
    if (e->rank != w->rank || e->world != w->world) {
        gerr_set(err,
                 "engine: comm rank %d of %d does not match the weights' slice (rank %d of %d)",
                 e->rank, e->world, w->rank, w->world);
        engine_free(&e);
        return GERR_INVALID;
    }
    for (int r = 0; r < e->world; r++) {
        weights_slice_t sl;
        int rc = weights_slice(c, r, e->world, &sl, err);
        if (rc) {
            engine_free(&e);
            return rc;
        }
        e->vbegin[r] = sl.vocab_begin;
        e->vrows[r] = sl.vocab_rows;
    }
    e->H = c->hidden_size;
    e->D = c->head_dim;
    e->nh = w->n_heads;
    e->nkv = w->n_kv_heads;
    e->E = c->num_local_experts;
    e->K = c->num_experts_per_tok;
    e->nu = w->n_units;
    e->V = w->vocab_rows; /* this shard's lm_head rows; engine_vocab is the whole vocabulary */
    for (int l = 0; l < c->num_hidden_layers; l++) {
        if (c->layer_sliding[l])
            e->any_win = true;
        else
            e->any_full = true;
    }
    bool yarn = strcmp(c->rope_type, "yarn") == 0;
    if (ops_rope_init(&e->rope, e->D, c->rope_theta, yarn ? c->rope_factor : 1.0, c->rope_beta_fast,
                      c->rope_beta_slow, c->rope_original_max_pos, c->rope_truncate) != 0) {
        gerr_set(err, "unsupported head_dim %d for RoPE", e->D);
        engine_free(&e);
        return GERR_INVALID;
    }
    /* the small set holds every decode step of up to S_SMALL_T sequences of up to
     * max_position_embeddings positions: graphs captured on it never see a reallocation */
    const size_t per_table =
        ((size_t)(c->max_position_embeddings > 0 ? c->max_position_embeddings : 1) +
         (size_t)o.block_size - 1) /
        (size_t)o.block_size;
    const size_t small_blk = (size_t)S_SMALL_T * per_table * (size_t)(e->any_full + e->any_win);
    if (s_bufs_grow(e, &e->small, S_SMALL_T, S_SMALL_T, small_blk ? small_blk : 1, true) ||
        s_host_grow(e, S_SMALL_T, small_blk ? small_blk : 1)) {
        engine_free(&e);
        gerr_set(err, "out of memory for the engine's activation buffers");
        return GERR_NOMEM;
    }
    kvcache_opts_t ko;
    int rc = kvcache_plan(c, e->nkv, o.kv_dtype, o.block_size, o.kv_budget_bytes, o.max_seqs,
                          o.max_chunk, &ko, err);
    if (!rc) rc = kvcache_new(c, e->nkv, &ko, ops, &e->kv, err);
    if (rc) {
        engine_free(&e);
        return rc;
    }
    *out = e;
    return 0;
}

void engine_free(engine_t **pe) {
    if (!pe || !*pe) return;
    engine_t *e = *pe;
    kvcache_free(&e->kv);
    s_bufs_free(e->ops, &e->small);
    s_bufs_free(e->ops, &e->big);
    void *bufs[] = {e->h_ids, e->h_pos, e->h_cs, e->h_tfull, e->h_twin, e->h_rows, e->h_blk};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        free(bufs[i]);
    free(e);
    *pe = NULL;
}

kvcache_t *engine_kv(engine_t *e) {
    return e->kv;
}

int engine_vocab(const engine_t *e) {
    return e->w->cfg.vocab_size;
}

/* Sums buf[0..n) over the group (nothing in world 1). */
static int s_reduce(engine_t *e, float *buf, size_t n, gerr_t *err) {
    if (e->world == 1) return 0;
    int rc = comm_all_reduce_sum(e->comm, buf, n, err);
    if (rc) gerr_prefix(err, "tensor-parallel all-reduce (rank %d of %d)", e->rank, e->world);
    return rc;
}

int engine_logits_rows(const engine_seq_t *seqs, int n_seqs) {
    int r = 0;
    for (int s = 0; s < n_seqs; s++)
        r += seqs[s].all_logits ? seqs[s].n_tokens : 1;
    return r;
}

/* Checks one sequence of a step against the model and the cache. */
static int s_check_seq(const engine_t *e, const engine_seq_t *s, int i, gerr_t *err) {
    const gptoss_config_t *c = &e->w->cfg;
    const int bs = kvcache_block_size(e->kv);
    if (s->n_tokens < 1 || !s->tokens || s->start_pos < 0 ||
        s->start_pos > INT32_MAX - s->n_tokens) {
        gerr_set(err, "step sequence %d: needs >= 1 token and a position >= 0", i);
        return GERR_INVALID;
    }
    for (int t = 0; t < s->n_tokens; t++) {
        if (s->tokens[t] < 0 || s->tokens[t] >= c->vocab_size) {
            gerr_set(err, "step sequence %d: token id %d is outside the vocabulary [0, %d)", i,
                     s->tokens[t], c->vocab_size);
            return GERR_INVALID;
        }
    }
    const int end = s->start_pos + s->n_tokens; /* positions [0, end) are read or written */
    const int need = (end + bs - 1) / bs;
    bool any_full = false, any_win = false;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        if (c->layer_sliding[l])
            any_win = true;
        else
            any_full = true;
    }
    if (any_full) {
        const ops_kv_t *L = NULL;
        for (int l = 0; l < c->num_hidden_layers && !L; l++)
            if (!c->layer_sliding[l]) L = kvcache_layer(e->kv, l);
        if (!s->full_blocks || s->n_full_blocks < need) goto blocks;
        for (int b = 0; b < need; b++)
            if (s->full_blocks[b] < 0 || s->full_blocks[b] >= L->n_blocks) goto blocks;
    }
    if (any_win) {
        const ops_kv_t *L = NULL;
        for (int l = 0; l < c->num_hidden_layers && !L; l++)
            if (c->layer_sliding[l]) L = kvcache_layer(e->kv, l);
        if (!s->window_blocks || s->n_window_blocks < need) goto blocks;
        int first_key = s->start_pos - c->sliding_window + 1;
        if (first_key < 0) first_key = 0;
        for (int b = first_key / bs; b < need; b++)
            if (s->window_blocks[b] < 0 || s->window_blocks[b] >= L->n_blocks) goto blocks;
    }
    return 0;
blocks:
    gerr_set(err,
             "step sequence %d: block tables do not cover positions %d..%d with valid "
             "blocks (reserve them with kvcache_seq_reserve first)",
             i, s->start_pos, end - 1);
    return GERR_INVALID;
}

/* Router, top-k and the moe op into b->tmp, all-reduce (the caller adds the residual). */
static int s_moe(engine_t *e, s_bufs_t *b, const weights_layer_t *L, int T, gerr_t *err) {
    const ops_t *o = e->ops;
    const size_t n = (size_t)T * (size_t)e->H;
    if (e->nu == 0) { /* a shard past the last block: contributes zeros to the sum */
        S_PROF(e, S_P_MOE, o->zero(o, b->tmp, sizeof(float) * n));
    } else {
        const ops_moe_t m = {.gate_up = L->gate_up,
                             .down = L->down,
                             .n_experts = e->E,
                             .alpha = e->w->cfg.swiglu_alpha,
                             .limit = e->w->cfg.swiglu_limit};
        S_PROF(e, S_P_ROUTER, o->matmul_bf16(o, b->a, T, &L->router, L->router_b, b->rl);
               o->router_topk(o, b->rl, T, e->E, e->K, b->ridx, b->rw));
        S_PROF(e, S_P_MOE, o->moe(o, b->a, T, b->ridx, b->rw, e->K, &m, b->tmp));
    }
    return s_reduce(e, b->tmp, n, err);
}

/* The ops of a step on set b (inputs already uploaded): embedding, the layers, the R rows
 * that want logits, final norm and lm_head into b->lg. Only the all-reduces of world > 1
 * leave the backend; nothing else here touches host memory (step graphs capture this). */
static int s_forward(engine_t *e, s_bufs_t *b, int T, int R, gerr_t *err) {
    const gptoss_config_t *c = &e->w->cfg;
    const ops_t *o = e->ops;
    const int H = e->H, D = e->D;
    const float sm_scale = 1.0f / sqrtf((float)D);
    S_PROF(e, S_P_EMBED, o->embed(o, e->w->embed.w, e->w->embed.stride, H, b->ids, T, b->x));
    /* Each residual add is fused with the RMSNorm that follows it (add_rmsnorm): o_proj's with
     * the MLP norm, the MoE's with the next layer's attention norm; the first layer's norm
     * follows the embedding, the last MoE's add is plain (the final norm is on gathered rows). */
    S_PROF(e, S_P_NORM, o->rmsnorm(o, b->x, e->w->layers[0].ln_attn, T, H, c->rms_norm_eps, b->a));
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const weights_layer_t *L = &e->w->layers[l];
        const ops_kv_t *kv = kvcache_layer(e->kv, l);
        const ops_tok_t *toks = L->sliding ? b->twin : b->tfull;
        S_PROF(e, S_P_QKV, o->matmul_bf16(o, b->a, T, &L->q, L->q_b, b->q);
               o->matmul_bf16(o, b->a, T, &L->k, L->k_b, b->k);
               o->matmul_bf16(o, b->a, T, &L->v, L->v_b, b->v));
        S_PROF(e, S_P_ROPE, o->rope(o, b->q, T, e->nh, D, b->cs);
               o->rope(o, b->k, T, e->nkv, D, b->cs));
        S_PROF(e, S_P_KVW, o->kv_write(o, kv, b->k, b->v, toks, T));
        S_PROF(e, S_P_ATTN,
               o->attention(o, b->q, T, e->nh, kv, toks, L->sliding ? c->sliding_window : 0,
                            L->sinks, sm_scale, b->att));
        S_PROF(e, S_P_OPROJ, o->matmul_bf16(o, b->att, T, &L->o, L->o_b, b->tmp));
        int rc = s_reduce(e, b->tmp, (size_t)T * H, err);
        if (rc) return rc;
        S_PROF(e, S_P_RESID,
               o->add_rmsnorm(o, b->x, b->tmp, L->ln_mlp, T, H, c->rms_norm_eps, b->a));
        if ((rc = s_moe(e, b, L, T, err))) return rc;
        if (l + 1 < c->num_hidden_layers)
            S_PROF(e, S_P_RESID,
                   o->add_rmsnorm(o, b->x, b->tmp, e->w->layers[l + 1].ln_attn, T, H,
                                  c->rms_norm_eps, b->a));
        else
            S_PROF(e, S_P_RESID, o->add(o, b->x, b->tmp, (size_t)T * H));
    }
    S_PROF(e, S_P_LMHEAD, o->gather_rows(o, b->x, b->rows, R, H, b->tmp);
           o->rmsnorm(o, b->tmp, e->w->norm, R, H, c->rms_norm_eps, b->a);
           if (e->V > 0) o->matmul_bf16(o, b->a, R, &e->w->lm_head, NULL, b->lg));
    return 0;
}

/* Brings b->lg's R rows to the caller: world 1 downloads them into logits ([R][vocab]); in a
 * group they are gathered to rank 0 (rank-major) and downloaded there into place. */
static int s_logits_out(engine_t *e, s_bufs_t *b, int R, float *logits, gerr_t *err) {
    const ops_t *o = e->ops;
    if (e->world == 1) {
        o->download(o, logits, b->lg, sizeof(float) * (size_t)R * (size_t)e->V);
        return 0;
    }
    size_t counts[COMM_MAX_WORLD];
    for (int r = 0; r < e->world; r++)
        counts[r] = (size_t)R * (size_t)e->vrows[r];
    int rc = comm_gatherv(e->comm, b->lg, counts, e->rank == 0 ? b->gath : NULL, err);
    if (rc) {
        gerr_prefix(err, "tensor-parallel logits gather (rank %d of %d)", e->rank, e->world);
        return rc;
    }
    if (e->rank != 0) return 0;
    const size_t V = (size_t)engine_vocab(e);
    const float *src = b->gath;
    for (int r = 0; r < e->world; r++) {
        const size_t nv = (size_t)e->vrows[r];
        for (int i = 0; i < R; i++, src += nv)
            o->download(o, logits + (size_t)i * V + (size_t)e->vbegin[r], src, sizeof(float) * nv);
    }
    return 0;
}

/* One table per step on stderr (GPTOSS_PROFILE): ms and share of the step per op kind;
 * "other" is what no slot covers (checks, staging the inputs, all-reduces). */
static void s_prof_print(const engine_t *e, int T, int R, double total) {
    double sum = 0.0;
    fprintf(stderr, "profile: step of %d tokens, %d logits rows: %.1f ms\n", T, R, 1e3 * total);
    for (int i = 0; i < S_P_N; i++) {
        sum += e->prof_s[i];
        fprintf(stderr, "  %-12s %9.2f ms %5.1f%%\n", s_prof_names[i], 1e3 * e->prof_s[i],
                total > 0 ? 100.0 * e->prof_s[i] / total : 0.0);
    }
    fprintf(stderr, "  %-12s %9.2f ms %5.1f%%\n", "other", 1e3 * (total - sum),
            total > 0 ? 100.0 * (total - sum) / total : 0.0);
}

int engine_step(engine_t *e, const engine_seq_t *seqs, int n_seqs, float *logits, gerr_t *err) {
    if (n_seqs < 1 || !seqs) {
        gerr_set(err, "step has no sequences");
        return GERR_INVALID;
    }
    const ops_t *o = e->ops;
    const int bs = kvcache_block_size(e->kv);
    const size_t tables = (size_t)(e->any_full + e->any_win);
    long total = 0;
    size_t nblk = 0;
    bool decode = true; /* every sequence one token, last-token logits only */
    for (int s = 0; s < n_seqs; s++) {
        int rc = s_check_seq(e, &seqs[s], s, err);
        if (rc) return rc;
        total += seqs[s].n_tokens;
        if (total > (1 << 24)) {
            gerr_set(err, "step has too many tokens (%ld)", total);
            return GERR_LIMIT;
        }
        const int end = seqs[s].start_pos + seqs[s].n_tokens;
        nblk += tables * (size_t)((end + bs - 1) / bs);
        decode = decode && seqs[s].n_tokens == 1 && !seqs[s].all_logits;
    }
    const int T = (int)total;
    const int R = engine_logits_rows(seqs, n_seqs);
    s_bufs_t *b = T <= e->small.cap_T && nblk <= e->small.cap_blk ? &e->small : &e->big;
    if ((b == &e->big && s_bufs_grow(e, b, T, R, nblk, false)) || s_host_grow(e, T, nblk)) {
        /* the peers passed the same checks and are about to wait for us */
        if (e->world > 1) comm_abort(e->comm);
        gerr_set(err, "out of memory for a step of %d tokens", T);
        return GERR_NOMEM;
    }
    if (e->prof) memset(e->prof_s, 0, sizeof e->prof_s);
    const double step_t0 = e->prof ? s_now() : 0.0;
    /* stage the inputs on the host: ids, positions, each sequence's tables packed once (its
     * tokens' ops_tok_t point at the backend copy), the logits rows; then upload them */
    size_t at = 0;
    for (int s = 0, t = 0, r = 0; s < n_seqs; s++) {
        const engine_seq_t *q = &seqs[s];
        const size_t need = (size_t)((q->start_pos + q->n_tokens + bs - 1) / bs);
        const int32_t *full = NULL, *win = NULL;
        if (e->any_full) {
            memcpy(e->h_blk + at, q->full_blocks, sizeof(int32_t) * need);
            full = b->blk + at;
            at += need;
        }
        if (e->any_win) {
            memcpy(e->h_blk + at, q->window_blocks, sizeof(int32_t) * need);
            win = b->blk + at;
            at += need;
        }
        for (int i = 0; i < q->n_tokens; i++, t++) {
            e->h_ids[t] = q->tokens[i];
            e->h_pos[t] = q->start_pos + i;
            e->h_tfull[t] = (ops_tok_t){.pos = e->h_pos[t], .blocks = full};
            e->h_twin[t] = (ops_tok_t){.pos = e->h_pos[t], .blocks = win};
            if (q->all_logits || i == q->n_tokens - 1) e->h_rows[r++] = t;
        }
    }
    S_PROF(e, S_P_ROPE, ops_rope_table(&e->rope, e->h_pos, T, e->h_cs));
    S_PROF(e, S_P_INPUTS, o->upload(o, b->ids, e->h_ids, sizeof(int32_t) * (size_t)T);
           o->upload(o, b->cs, e->h_cs, sizeof(float) * (size_t)T * (size_t)e->D);
           o->upload(o, b->tfull, e->h_tfull, sizeof(ops_tok_t) * (size_t)T);
           o->upload(o, b->twin, e->h_twin, sizeof(ops_tok_t) * (size_t)T);
           o->upload(o, b->blk, e->h_blk, sizeof(int32_t) * at);
           o->upload(o, b->rows, e->h_rows, sizeof(int32_t) * (size_t)R));
    /* step graphs (engine.h): decode steps of world 1 on the small set, key T */
    const bool graph = o->graph_launch && e->world == 1 && decode && b == &e->small &&
                       T <= S_SMALL_T && e->graph[T] != S_G_OFF;
    bool done = false;
    int rc = 0;
    if (graph && e->graph[T] == S_G_CAPTURED) {
        done = o->graph_launch(o, T);
        if (!done) e->graph[T] = S_G_SEEN; /* the backend dropped it: capture again next time */
    } else if (graph && e->graph[T] == S_G_SEEN) {
        o->graph_begin(o, T);
        rc = s_forward(e, b, T, R, err); /* world 1: cannot fail */
        o->graph_end(o, T);
        done = o->graph_launch(o, T);
        e->graph[T] = done ? S_G_CAPTURED : S_G_OFF;
    } else if (graph) {
        e->graph[T] = S_G_SEEN;
    }
    if (!done && !rc) rc = s_forward(e, b, T, R, err);
    if (!rc) S_PROF(e, S_P_LMHEAD, rc = s_logits_out(e, b, R, logits, err));
    if (e->prof) s_prof_print(e, T, R, s_now() - step_t0);
    return rc;
}
