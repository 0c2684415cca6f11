/* engine: the forward pass (GPTOSS.md section 4) composed from ops.h calls.
 *
 * Per step: embed all T tokens; per layer: RMSNorm, q/k/v projections, RoPE with
 * YaRN (cos/sin rows computed once per step), K/V into the paged cache, attention
 * with sinks (sliding window on even layers), o_proj + residual; RMSNorm, router
 * top-k, experts run on the tokens routed to them (gate_up, clamped SwiGLU, down),
 * weighted sum + residual. Finally RMSNorm and lm_head on the rows that want
 * logits. Scratch buffers grow to the largest step seen and are reused.
 *
 * With a comm of world > 1 (engine.h): the o_proj output and the weighted MoE sum
 * are partial sums over this shard's heads / units and go through all_reduce_sum
 * before the residual add (the biases are on rank 0's views only); a shard with no
 * expert units contributes zeros. The lm_head rows of every shard are gathered to
 * rank 0 rank-major ([rank][row][its vocab rows]) and rearranged there into
 * [row][vocab]. World 1 takes none of these branches.
 *
 * Batch invariance: a token's logits must not depend on the step it is in (DESIGN.md:
 * seeded streams survive re-batching, preemption and shard restarts bit for bit). The ops
 * guarantee it per token (kernels/cpu/cpu_kern.h); here, each token's MoE sum is
 * accumulated in ascending expert index (the loop over experts), whatever other tokens
 * the experts serve, and the all-reduce sums the ranks in rank order. */
#include "engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* GPTOSS_PROFILE=1: wall-clock seconds per op kind, printed to stderr after each step, to
 * see where a prefill or batched step spends its time. Pool waits are inside the ops (each op
 * returns after its fork-join), so they count in the op that waits. */
enum {
    S_P_EMBED,
    S_P_NORM,
    S_P_QKV,
    S_P_ROPE,
    S_P_KVW,
    S_P_ATTN,
    S_P_OPROJ,
    S_P_ROUTER,
    S_P_GATHER,
    S_P_GATEUP,
    S_P_SWIGLU,
    S_P_DOWN,
    S_P_SCATTER,
    S_P_RESID,
    S_P_LMHEAD,
    S_P_N
};
static const char *const s_prof_names[S_P_N] = {
    "embed",     "rmsnorm",  "qkv matmul",  "rope",       "kv write",
    "attention", "o_proj",   "router",      "moe gather", "moe gate_up",
    "swiglu",    "moe down", "moe scatter", "residual",   "lm_head"};

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

struct engine {
    const weights_t *w;
    const ops_t *ops;
    kvcache_t *kv;
    comm_t *comm;               /* NULL or world 1: no collectives */
    int rank, world;            /* of the comm (0, 1 without) */
    int vbegin[COMM_MAX_WORLD]; /* every rank's first vocab row */
    int vrows[COMM_MAX_WORLD];  /* and its row count */
    float *lg;                  /* [cap_R][V local] this shard's logits (world > 1) */
    float *gath;                /* rank 0: [cap_R][V] gathered, rank-major */
    int cap_R;                  /* logits scratch capacity in rows */
    ops_rope_t rope;
    int H, D, nh, nkv, E, K, nu, V;
    int cap_T;         /* scratch capacity in tokens */
    float *x;          /* [T][H] residual stream */
    float *a;          /* [T][H] normed */
    float *q;          /* [T][nh*D] */
    float *k, *v;      /* [T][nkv*D] */
    float *att;        /* [T][nh*D] */
    float *tmp;        /* [T][H] projection out / MoE sum */
    float *cs;         /* [T][D] rope rows */
    float *rl;         /* [T][E] router logits */
    int32_t *ridx;     /* [T][K] */
    float *rw;         /* [T][K] */
    float *xe;         /* [T][H] tokens gathered for one expert */
    float *he;         /* [T][2nu] */
    float *ae;         /* [T][nu] */
    float *ye;         /* [T][H] */
    int32_t *ids;      /* [T] */
    int32_t *pos;      /* [T] */
    int32_t *etok;     /* [T*K] tokens of expert e */
    float *ewt;        /* [T*K] their weights */
    int32_t *ecount;   /* [E] */
    int32_t *estart;   /* [E+1] */
    ops_tok_t *tfull;  /* [T] */
    ops_tok_t *twin;   /* [T] */
    int32_t *out_rows; /* [T] token index of each logits row */
    int prof;          /* GPTOSS_PROFILE set: per-op times per step on stderr */
    double prof_s[S_P_N];
};

static int s_grow(engine_t *e, int T) {
    if (T <= e->cap_T) return 0;
    int n = e->cap_T ? e->cap_T : 16;
    while (n < T)
        n *= 2;
    size_t H = (size_t)e->H, Q = (size_t)e->nh * e->D, KV = (size_t)e->nkv * e->D;
#define S_RE(ptr, count)                                                                           \
    do {                                                                                           \
        void *p_ = realloc(e->ptr, sizeof(*e->ptr) * (size_t)(count));                             \
        if (!p_) return GERR_NOMEM;                                                                \
        e->ptr = p_;                                                                               \
    } while (0)
    S_RE(x, n * H);
    S_RE(a, n * H);
    S_RE(q, n * Q);
    S_RE(k, n * KV);
    S_RE(v, n * KV);
    S_RE(att, n * Q);
    S_RE(tmp, n * H);
    S_RE(cs, n * (size_t)e->D);
    S_RE(rl, n * (size_t)e->E);
    S_RE(ridx, n * (size_t)e->K);
    S_RE(rw, n * (size_t)e->K);
    S_RE(xe, n * H);
    S_RE(he, n * 2 * (size_t)e->nu);
    S_RE(ae, n * (size_t)e->nu);
    S_RE(ye, n * H);
    S_RE(ids, n);
    S_RE(pos, n);
    S_RE(etok, n * (size_t)e->K);
    S_RE(ewt, n * (size_t)e->K);
    S_RE(tfull, n);
    S_RE(twin, n);
    S_RE(out_rows, n);
#undef S_RE
    e->cap_T = n;
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
    bool yarn = strcmp(c->rope_type, "yarn") == 0;
    if (ops_rope_init(&e->rope, e->D, c->rope_theta, yarn ? c->rope_factor : 1.0, c->rope_beta_fast,
                      c->rope_beta_slow, c->rope_original_max_pos, c->rope_truncate) != 0) {
        gerr_set(err, "unsupported head_dim %d for RoPE", e->D);
        engine_free(&e);
        return GERR_INVALID;
    }
    e->ecount = calloc((size_t)e->E, sizeof *e->ecount);
    e->estart = calloc((size_t)e->E + 1, sizeof *e->estart);
    if (!e->ecount || !e->estart || s_grow(e, 64)) {
        engine_free(&e);
        gerr_set(err, "out of memory");
        return GERR_NOMEM;
    }
    kvcache_opts_t ko;
    int rc = kvcache_plan(c, e->nkv, o.kv_dtype, o.block_size, o.kv_budget_bytes, o.max_seqs,
                          o.max_chunk, &ko, err);
    if (!rc) rc = kvcache_new(c, e->nkv, &ko, &e->kv, err);
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
    void *bufs[] = {e->x,     e->a,    e->q,        e->k,    e->v,   e->att,    e->tmp,
                    e->cs,    e->rl,   e->ridx,     e->rw,   e->xe,  e->he,     e->ae,
                    e->ye,    e->ids,  e->pos,      e->etok, e->ewt, e->ecount, e->estart,
                    e->tfull, e->twin, e->out_rows, e->lg,   e->gath};
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

/* Grows the tensor-parallel logits scratch to R rows (world > 1 only). */
static int s_grow_logits(engine_t *e, int R) {
    if (R <= e->cap_R) return 0;
    float *lg = realloc(e->lg, sizeof(float) * (size_t)R * (size_t)(e->V ? e->V : 1));
    if (!lg) return GERR_NOMEM;
    e->lg = lg;
    if (e->rank == 0) {
        float *g = realloc(e->gath, sizeof(float) * (size_t)R * (size_t)engine_vocab(e));
        if (!g) return GERR_NOMEM;
        e->gath = g;
    }
    e->cap_R = R;
    return 0;
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

static int s_moe(engine_t *e, const weights_layer_t *L, int T, gerr_t *err) {
    const ops_t *o = e->ops;
    const int H = e->H, E = e->E, K = e->K;
    if (e->nu == 0) { /* a shard past the last block: contributes zeros to the sum */
        memset(e->tmp, 0, sizeof(float) * (size_t)T * H);
        int rc = s_reduce(e, e->tmp, (size_t)T * H, err);
        if (rc) return rc;
        o->add(o, e->x, e->tmp, (size_t)T * H);
        return 0;
    }
    S_PROF(e, S_P_ROUTER, o->matmul_bf16(o, e->a, T, &L->router, L->router_b, e->rl);
           o->router_topk(o, e->rl, T, E, K, e->ridx, e->rw));
    /* group (token, weight) pairs by expert, in token order */
    memset(e->ecount, 0, sizeof(int32_t) * (size_t)E);
    for (int i = 0; i < T * K; i++)
        e->ecount[e->ridx[i]]++;
    e->estart[0] = 0;
    for (int x = 0; x < E; x++)
        e->estart[x + 1] = e->estart[x] + e->ecount[x];
    memset(e->ecount, 0, sizeof(int32_t) * (size_t)E);
    for (int i = 0; i < T * K; i++) {
        int x = e->ridx[i], at = e->estart[x] + e->ecount[x]++;
        e->etok[at] = i / K;
        e->ewt[at] = e->rw[i];
    }
    memset(e->tmp, 0, sizeof(float) * (size_t)T * H);
    for (int x = 0; x < E; x++) {
        int n = e->estart[x + 1] - e->estart[x];
        if (!n) continue;
        const int32_t *tk = e->etok + e->estart[x];
        const float *wt = e->ewt + e->estart[x];
        S_PROF(e, S_P_GATHER,
               for (int i = 0; i < n; i++) memcpy(e->xe + (size_t)i * H, e->a + (size_t)tk[i] * H,
                                                  sizeof(float) * (size_t)H));
        ops_mxfp4_mat_t gu = weights_expert(&L->gate_up, x);
        ops_mxfp4_mat_t dn = weights_expert(&L->down, x);
        S_PROF(e, S_P_GATEUP,
               o->matmul_mxfp4(o, e->xe, n, &gu, weights_expert_bias(&L->gate_up, x), e->he));
        S_PROF(
            e, S_P_SWIGLU,
            o->swiglu(o, e->he, n, e->nu, e->w->cfg.swiglu_alpha, e->w->cfg.swiglu_limit, e->ae));
        S_PROF(e, S_P_DOWN,
               o->matmul_mxfp4(o, e->ae, n, &dn, weights_expert_bias(&L->down, x), e->ye));
        S_PROF(e, S_P_SCATTER,
               for (int i = 0; i < n; i++)
                   o->axpy(o, e->tmp + (size_t)tk[i] * H, wt[i], e->ye + (size_t)i * H, (size_t)H));
    }
    int rc = s_reduce(e, e->tmp, (size_t)T * H, err);
    if (rc) return rc;
    o->add(o, e->x, e->tmp, (size_t)T * H);
    return 0;
}

/* Final norm and lm_head on the R rows of xe; rank 0 gets [R][vocab] logits. */
static int s_logits(engine_t *e, int R, float *logits, gerr_t *err) {
    const ops_t *o = e->ops;
    const int H = e->H;
    o->rmsnorm(o, e->xe, e->w->norm, R, H, e->w->cfg.rms_norm_eps, e->a);
    if (e->world == 1) {
        o->matmul_bf16(o, e->a, R, &e->w->lm_head, NULL, logits);
        return 0;
    }
    if (e->V > 0) o->matmul_bf16(o, e->a, R, &e->w->lm_head, NULL, e->lg);
    size_t counts[COMM_MAX_WORLD];
    for (int r = 0; r < e->world; r++)
        counts[r] = (size_t)R * (size_t)e->vrows[r];
    int rc = comm_gatherv(e->comm, e->lg, counts, e->rank == 0 ? e->gath : NULL, err);
    if (rc) {
        gerr_prefix(err, "tensor-parallel logits gather (rank %d of %d)", e->rank, e->world);
        return rc;
    }
    if (e->rank != 0) return 0;
    const size_t V = (size_t)engine_vocab(e);
    const float *src = e->gath;
    for (int r = 0; r < e->world; r++) {
        const size_t nv = (size_t)e->vrows[r];
        for (int i = 0; i < R; i++, src += nv)
            memcpy(logits + (size_t)i * V + (size_t)e->vbegin[r], src, sizeof(float) * nv);
    }
    return 0;
}

/* One table per step on stderr (GPTOSS_PROFILE): ms and share of the step per op kind;
 * "other" is what no slot covers (checks, the MoE grouping, all-reduces). */
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
    const gptoss_config_t *c = &e->w->cfg;
    const ops_t *o = e->ops;
    long total = 0;
    for (int s = 0; s < n_seqs; s++) {
        int rc = s_check_seq(e, &seqs[s], s, err);
        if (rc) return rc;
        total += seqs[s].n_tokens;
        if (total > (1 << 24)) {
            gerr_set(err, "step has too many tokens (%ld)", total);
            return GERR_LIMIT;
        }
    }
    const int T = (int)total;
    const int R_all = engine_logits_rows(seqs, n_seqs);
    if (s_grow(e, T) || (e->world > 1 && s_grow_logits(e, R_all))) {
        /* the peers passed the same checks and are about to wait for us */
        if (e->world > 1) comm_abort(e->comm);
        gerr_set(err, "out of memory for a step of %d tokens", T);
        return GERR_NOMEM;
    }
    int R = 0;
    for (int s = 0, t = 0; s < n_seqs; s++) {
        const engine_seq_t *q = &seqs[s];
        for (int i = 0; i < q->n_tokens; i++, t++) {
            e->ids[t] = q->tokens[i];
            e->pos[t] = q->start_pos + i;
            e->tfull[t] = (ops_tok_t){.pos = e->pos[t], .blocks = q->full_blocks};
            e->twin[t] = (ops_tok_t){.pos = e->pos[t], .blocks = q->window_blocks};
            if (q->all_logits || i == q->n_tokens - 1) e->out_rows[R++] = t;
        }
    }
    const int H = e->H, D = e->D;
    const float sm_scale = 1.0f / sqrtf((float)D);
    if (e->prof) memset(e->prof_s, 0, sizeof e->prof_s);
    const double step_t0 = e->prof ? s_now() : 0.0;
    S_PROF(e, S_P_EMBED, o->embed(o, e->w->embed.w, e->w->embed.stride, H, e->ids, T, e->x));
    S_PROF(e, S_P_ROPE, ops_rope_table(&e->rope, e->pos, T, e->cs));
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const weights_layer_t *L = &e->w->layers[l];
        const ops_kv_t *kv = kvcache_layer(e->kv, l);
        const ops_tok_t *toks = L->sliding ? e->twin : e->tfull;
        S_PROF(e, S_P_NORM, o->rmsnorm(o, e->x, L->ln_attn, T, H, c->rms_norm_eps, e->a));
        S_PROF(e, S_P_QKV, o->matmul_bf16(o, e->a, T, &L->q, L->q_b, e->q);
               o->matmul_bf16(o, e->a, T, &L->k, L->k_b, e->k);
               o->matmul_bf16(o, e->a, T, &L->v, L->v_b, e->v));
        S_PROF(e, S_P_ROPE, o->rope(o, e->q, T, e->nh, D, e->cs);
               o->rope(o, e->k, T, e->nkv, D, e->cs));
        S_PROF(e, S_P_KVW, o->kv_write(o, kv, e->k, e->v, toks, T));
        S_PROF(e, S_P_ATTN,
               o->attention(o, e->q, T, e->nh, kv, toks, L->sliding ? c->sliding_window : 0,
                            L->sinks, sm_scale, e->att));
        S_PROF(e, S_P_OPROJ, o->matmul_bf16(o, e->att, T, &L->o, L->o_b, e->tmp));
        int rc = s_reduce(e, e->tmp, (size_t)T * H, err);
        if (rc) return rc;
        S_PROF(e, S_P_RESID, o->add(o, e->x, e->tmp, (size_t)T * H));
        S_PROF(e, S_P_NORM, o->rmsnorm(o, e->x, L->ln_mlp, T, H, c->rms_norm_eps, e->a));
        if ((rc = s_moe(e, L, T, err))) return rc;
    }
    for (int r = 0; r < R; r++)
        memcpy(e->xe + (size_t)r * H, e->x + (size_t)e->out_rows[r] * H, sizeof(float) * H);
    int rc;
    S_PROF(e, S_P_LMHEAD, rc = s_logits(e, R, logits, err));
    if (e->prof) s_prof_print(e, T, R, s_now() - step_t0);
    return rc;
}
