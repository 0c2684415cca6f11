/* ops_cpu: the CPU implementation of ops.h.
 *
 * Each op splits its work into tasks for the thread pool (output-row chunks for
 * matmuls, a token and up to 8 query heads of one kv head for attention, token
 * ranges for SwiGLU) and calls the per-ISA inner loops of cpu_kern.h. Everything
 * is fp32; weights are read in their stored formats.
 * Small problems run on the calling thread only (a pool wakeup costs more than
 * they do). Threads split rows (matmuls) or (token, heads) tasks (attention), never
 * one reduction, so a token's result does not depend on the split (batch invariance,
 * cpu_kern.h); attention's online-softmax key chunks start at the query's first
 * visible position, a function of its absolute position only.
 *
 * Memory: backend memory is host memory (alloc is a zero-filled, 64-byte aligned calloc, so
 * big buffers such as the KV cache are reserved lazily by the OS; upload/download are
 * memcpy). The moe op keeps its scratch (tokens grouped by expert, their rows and the
 * gate_up/SwiGLU/down outputs) in the backend, grown to the largest call seen.
 *
 * Threads: one thread drives a backend (the calls of one ops_t must not overlap; the moe
 * scratch is per backend). The pool's worker threads are internal. */
#include "ops_cpu.h"

#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bf16.h"
#include "cpu_kern.h"
#include "mxfp4.h"
#include "cpu_pool.h"

#define S_SMALL_WORK  16384        /* multiply-adds below which a matmul stays single-threaded */
#define S_TASK_BYTES  (384u << 10) /* weights per matmul task at most (T < 4) */
#define S_ATTN_CHUNK  128          /* keys scored per online-softmax rescale */
#define S_MAX_D       256          /* largest head_dim supported */
#define S_ATTN_HEADS  8            /* query heads (of one kv head) per attention task */
#define S_SPLIT_STACK 8192         /* floats of reordered x (s_split) kept on the stack (small T) */

typedef struct {
    ops_t ops; /* must be first: ops_t* <-> s_cpu_t* */
    cpu_pool_t *pool;
    const cpu_kern_t *kern;
    char name[32];
    /* moe scratch (s_moe_scratch), grown as needed; contents do not survive growth */
    void *m_buf[12];
    size_t m_cap[12];
} s_cpu_t;

/* The backend state behind an ops_t: through impl, so that a copy of the ops_t (a test's
 * wrapper that replaces some members) still reaches it. */
static const s_cpu_t *s_cpu(const ops_t *o) {
    return (const s_cpu_t *)o->impl;
}

/* ---- matmuls ---------------------------------------------------------------- */

typedef struct {
    const s_cpu_t *cpu;
    const float *x;
    int T;
    const ops_bf16_mat_t *wb;
    const ops_mxfp4_mat_t *wm;
    const uint16_t *bias;
    float *y;
    int rows, chunk;
} s_mm_job_t;

static void s_mm_task(void *arg, int task, int thread) {
    (void)thread;
    const s_mm_job_t *j = arg;
    int r0 = task * j->chunk, r1 = r0 + j->chunk;
    if (r1 > j->rows) r1 = j->rows;
    if (j->wb)
        j->cpu->kern->bf16_rows(j->x, j->T, j->wb, j->bias, r0, r1, j->y);
    else
        j->cpu->kern->mxfp4_rows(j->x, j->T, j->wm, j->bias, r0, r1, j->y);
}

/* Rows per task of a matmul with T tokens on `threads` threads, rows of row_bytes bytes of
 * weights: 96 for the token tiles (T >= 4), else about 8 tasks per thread, between 4 rows and
 * S_TASK_BYTES of weights, a multiple of 8 rows above 8 (the split never changes a result). The cap
 * is in bytes because the weights stream from memory: a task restarts the row streams, and with
 * tasks of 64 MXFP4 rows (98 KB) the batch-1 MoE took ~5% longer (median) than with ~250
 * (BENCHMARKS.md, third session); bf16 rows of the 20b shape get ~64 rows, as before. */
static int s_mm_chunk(int rows, int T, int threads, size_t row_bytes) {
    if (T >= 4) return 96; /* row groups of 3-row tiles, each prefetching the next (kern_avx2) */
    const int cap = (int)(S_TASK_BYTES / (row_bytes ? row_bytes : 1));
    int chunk = (rows + threads * 8 - 1) / (threads * 8);
    chunk = chunk > cap ? cap : chunk;
    if (chunk > 8) chunk &= ~7; /* whole passes of the kernels' 8- and 4-row loops */
    return chunk < 4 ? 4 : chunk;
}

/* Bytes of one row of an MXFP4 matrix with cols columns (blocks and scales). */
static size_t s_mxfp4_row_bytes(int cols) {
    return (size_t)cols / MXFP4_BLOCK * (MXFP4_BLOCK_BYTES + 1);
}

static void s_mm_run(const s_cpu_t *c, s_mm_job_t *j, int cols) {
    int threads = cpu_pool_size(c->pool);
    double work = (double)j->rows * cols * j->T;
    if (threads == 1 || work < S_SMALL_WORK) {
        j->chunk = j->rows;
        s_mm_task(j, 0, 0);
        return;
    }
    const int chunk =
        s_mm_chunk(j->rows, j->T, threads, j->wb ? (size_t)cols * 2 : s_mxfp4_row_bytes(cols));
    j->chunk = chunk;
    cpu_pool_run(c->pool, (j->rows + chunk - 1) / chunk, s_mm_task, j);
}

/* x in the order a kernel wants (cpu_kern.h: cpu_split_x, cpu_nibble_x): into stack
 * (S_SPLIT_STACK floats) when it fits, else into a malloc'd buffer that the caller frees when
 * it is not stack. Returns x itself when order is NULL (the kernel takes x as it is). */
static const float *s_split(const float *x, int T, int cols,
                            void (*order)(const float *, int, int, float *), float *stack) {
    if (!order) return x;
    size_t n = (size_t)T * cols;
    float *xs = n <= S_SPLIT_STACK ? stack : malloc(n * sizeof *xs);
    if (!xs) abort(); /* ops have no error path; a few MB at most */
    order(x, T, cols, xs);
    return xs;
}

static void s_matmul_bf16(const ops_t *o, const float *x, int T, const ops_bf16_mat_t *W,
                          const uint16_t *bias, float *y) {
    if (T <= 0 || W->rows <= 0) return;
    float stack[S_SPLIT_STACK];
    const float *xs =
        s_split(x, T, W->cols, s_cpu(o)->kern->bf16_split_x ? cpu_split_x : NULL, stack);
    s_mm_job_t j = {
        .cpu = s_cpu(o), .x = xs, .T = T, .wb = W, .bias = bias, .y = y, .rows = W->rows};
    s_mm_run(s_cpu(o), &j, W->cols);
    if (xs != x && xs != stack) free((void *)xs);
}

static void s_matmul_mxfp4(const ops_t *o, const float *x, int T, const ops_mxfp4_mat_t *W,
                           const uint16_t *bias, float *y) {
    if (T <= 0 || W->rows <= 0) return;
    assert(W->cols % 32 == 0);
    float stack[S_SPLIT_STACK];
    const float *xs =
        s_split(x, T, W->cols, s_cpu(o)->kern->mxfp4_nibble_x ? cpu_nibble_x : NULL, stack);
    s_mm_job_t j = {
        .cpu = s_cpu(o), .x = xs, .T = T, .wm = W, .bias = bias, .y = y, .rows = W->rows};
    s_mm_run(s_cpu(o), &j, W->cols);
    if (xs != x && xs != stack) free((void *)xs);
}

/* ---- elementwise ops ---------------------------------------------------------- */

static void s_embed(const ops_t *o, const uint16_t *table, size_t stride, int n, const int32_t *ids,
                    int T, float *out) {
    (void)o;
    for (int t = 0; t < T; t++) {
        const uint16_t *row = table + (size_t)ids[t] * stride;
        for (int i = 0; i < n; i++)
            out[(size_t)t * n + i] = bf16_to_f32(row[i]);
    }
}

static void s_rmsnorm(const ops_t *o, const float *x, const uint16_t *w, int T, int n, float eps,
                      float *out) {
    (void)o;
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * n;
        float *yt = out + (size_t)t * n;
        double ss = 0.0;
        for (int i = 0; i < n; i++)
            ss += (double)xt[i] * xt[i];
        float inv = (float)(1.0 / sqrt(ss / n + (double)eps));
        for (int i = 0; i < n; i++)
            yt[i] = (xt[i] * inv) * bf16_to_f32(w[i]);
    }
}

/* Row by row, so the row is still in L1 for the norm; the arithmetic of s_add then s_rmsnorm. */
static void s_add_rmsnorm(const ops_t *o, float *x, const float *y, const uint16_t *w, int T, int n,
                          float eps, float *out) {
    for (int t = 0; t < T; t++) {
        float *xt = x + (size_t)t * n;
        const float *yt = y + (size_t)t * n;
        for (int i = 0; i < n; i++)
            xt[i] += yt[i];
        s_rmsnorm(o, xt, w, 1, n, eps, out + (size_t)t * n);
    }
}

static void s_rope(const ops_t *o, float *x, int T, int n_heads, int D, const float *cs) {
    (void)o;
    const int half = D / 2;
    for (int t = 0; t < T; t++) {
        const float *c = cs + (size_t)t * D, *s = c + half;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)t * n_heads + h) * D;
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                v[i] = a * c[i] - b * s[i];
                v[i + half] = b * c[i] + a * s[i];
            }
        }
    }
}

static void s_kv_write(const ops_t *o, const ops_kv_t *kv, const float *k, const float *v,
                       const ops_tok_t *toks, int T) {
    (void)o;
    const size_t row = (size_t)kv->n_kv_heads * kv->head_dim;
    for (int t = 0; t < T; t++) {
        int p = toks[t].pos;
        int32_t b = toks[t].blocks[p / kv->block_size];
        assert(b >= 0 && b < kv->n_blocks);
        size_t off = ((size_t)b * kv->block_size + (size_t)(p % kv->block_size)) * row;
        if (kv->dtype == OPS_KV_F32) {
            memcpy((float *)kv->k + off, k + (size_t)t * row, row * sizeof(float));
            memcpy((float *)kv->v + off, v + (size_t)t * row, row * sizeof(float));
        } else {
            uint16_t *kd = (uint16_t *)kv->k + off, *vd = (uint16_t *)kv->v + off;
            for (size_t i = 0; i < row; i++) {
                kd[i] = f32_to_bf16(k[(size_t)t * row + i]);
                vd[i] = f32_to_bf16(v[(size_t)t * row + i]);
            }
        }
    }
}

/* ---- attention ---------------------------------------------------------------- */

typedef struct {
    const s_cpu_t *cpu;
    const float *q;
    int n_heads, group;
    int sub;           /* tasks per kv head: ceil(group / S_ATTN_HEADS) */
    int tasks_per_tok; /* n_kv_heads * sub */
    const ops_kv_t *kv;
    const ops_tok_t *toks;
    int window;
    const uint16_t *sinks;
    float sm_scale;
    float *out;
} s_attn_job_t;

/* Row of key or value slot j (position) for kv head h, widened into tmp if bf16. */
static inline const float *s_kv_row(const ops_kv_t *kv, const void *base, const int32_t *blocks,
                                    int j, int h, float *tmp) {
    int32_t b = blocks[j / kv->block_size];
    size_t off =
        (((size_t)b * kv->block_size + (size_t)(j % kv->block_size)) * kv->n_kv_heads + (size_t)h) *
        kv->head_dim;
    if (kv->dtype == OPS_KV_F32) return (const float *)base + off;
    const uint16_t *p = (const uint16_t *)base + off;
    for (int i = 0; i < kv->head_dim; i++)
        tmp[i] = bf16_to_f32(p[i]);
    return tmp;
}

/* One task: token t and up to S_ATTN_HEADS query heads that share one kv head, so each key
 * and value row is located (and widened from bf16) once for all of them instead of once per
 * head. Every head keeps its own online-softmax state and runs exactly the operations, in
 * exactly the order, that it would run alone, so the grouping changes no bit. */
static void s_attn_task(void *arg, int task, int thread) {
    (void)thread;
    const s_attn_job_t *j = arg;
    const ops_kv_t *kv = j->kv;
    const int D = kv->head_dim;
    const int t = task / j->tasks_per_tok, r = task % j->tasks_per_tok;
    const int kvh = r / j->sub, h0 = kvh * j->group + (r % j->sub) * S_ATTN_HEADS;
    int nh = kvh * j->group + j->group - h0;
    if (nh > S_ATTN_HEADS) nh = S_ATTN_HEADS;
    const ops_tok_t *tok = &j->toks[t];
    const cpu_kern_t *K = j->cpu->kern;
    int lo = 0;
    if (j->window > 0 && tok->pos - j->window + 1 > 0) lo = tok->pos - j->window + 1;
    /* online softmax, seeded with the sink: m = S_h, l = e^(S_h - m) = 1 */
    float m[S_ATTN_HEADS], l[S_ATTN_HEADS];
    float acc[S_ATTN_HEADS][S_MAX_D], s[S_ATTN_HEADS][S_ATTN_CHUNK], tmp[S_MAX_D];
    const float *q[S_ATTN_HEADS];
    for (int g = 0; g < nh; g++) {
        m[g] = bf16_to_f32(j->sinks[h0 + g]);
        l[g] = 1.0f;
        q[g] = j->q + ((size_t)t * j->n_heads + h0 + g) * D;
        for (int i = 0; i < D; i++)
            acc[g][i] = 0.0f;
    }
    for (int c0 = lo; c0 <= tok->pos; c0 += S_ATTN_CHUNK) {
        int n = tok->pos + 1 - c0;
        if (n > S_ATTN_CHUNK) n = S_ATTN_CHUNK;
        float cm[S_ATTN_HEADS];
        for (int g = 0; g < nh; g++)
            cm[g] = m[g];
        for (int i = 0; i < n; i++) {
            const float *kr = s_kv_row(kv, kv->k, tok->blocks, c0 + i, kvh, tmp);
            for (int g = 0; g < nh; g++) {
                s[g][i] = K->dot(q[g], kr, D) * j->sm_scale;
                if (s[g][i] > cm[g]) cm[g] = s[g][i];
            }
        }
        for (int g = 0; g < nh; g++) {
            if (cm[g] > m[g]) {
                float rr = expf(m[g] - cm[g]);
                l[g] *= rr;
                for (int i = 0; i < D; i++)
                    acc[g][i] *= rr;
                m[g] = cm[g];
            }
        }
        for (int i = 0; i < n; i++) {
            const float *vr = s_kv_row(kv, kv->v, tok->blocks, c0 + i, kvh, tmp);
            for (int g = 0; g < nh; g++) {
                float p = expf(s[g][i] - m[g]);
                l[g] += p;
                K->axpy(acc[g], p, vr, D);
            }
        }
    }
    for (int g = 0; g < nh; g++) {
        float inv = 1.0f / l[g], *out = j->out + ((size_t)t * j->n_heads + h0 + g) * D;
        for (int i = 0; i < D; i++)
            out[i] = acc[g][i] * inv;
    }
}

static void s_attention(const ops_t *o, const float *q, int T, int n_heads, const ops_kv_t *kv,
                        const ops_tok_t *toks, int window, const uint16_t *sinks, float sm_scale,
                        float *out) {
    assert(kv->head_dim <= S_MAX_D && n_heads % kv->n_kv_heads == 0);
    const int group = n_heads / kv->n_kv_heads, sub = (group + S_ATTN_HEADS - 1) / S_ATTN_HEADS;
    s_attn_job_t j = {.cpu = s_cpu(o),
                      .q = q,
                      .n_heads = n_heads,
                      .group = group,
                      .sub = sub,
                      .tasks_per_tok = kv->n_kv_heads * sub,
                      .kv = kv,
                      .toks = toks,
                      .window = window,
                      .sinks = sinks,
                      .sm_scale = sm_scale,
                      .out = out};
    cpu_pool_run(s_cpu(o)->pool, T * j.tasks_per_tok, s_attn_task, &j);
}

/* ---- MoE pieces --------------------------------------------------------------- */

static void s_router_topk(const ops_t *o, const float *z, int T, int E, int k, int32_t *idx,
                          float *w) {
    (void)o;
    assert(k >= 1 && k <= E && k <= 64);
    for (int t = 0; t < T; t++) {
        const float *zt = z + (size_t)t * E;
        int32_t *it = idx + (size_t)t * k;
        float *wt = w + (size_t)t * k;
        for (int a = 0; a < k; a++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                bool taken = false;
                for (int b = 0; b < a; b++)
                    taken |= it[b] == e;
                if (taken) continue;
                if (best < 0 || zt[e] > zt[best]) best = e;
            }
            it[a] = best;
        }
        double mx = zt[it[0]], sum = 0.0, ex[64];
        for (int a = 0; a < k; a++)
            sum += ex[a] = exp((double)zt[it[a]] - mx);
        for (int a = 0; a < k; a++)
            wt[a] = (float)(ex[a] / sum);
    }
}

typedef struct {
    const float *h;
    int T, I, per_task;
    float alpha, limit;
    float *out;
} s_swiglu_job_t;

static void s_swiglu_task(void *arg, int task, int thread) {
    (void)thread;
    const s_swiglu_job_t *j = arg;
    int t1 = (task + 1) * j->per_task;
    if (t1 > j->T) t1 = j->T;
    for (int t = task * j->per_task; t < t1; t++) {
        const float *ht = j->h + (size_t)t * 2 * j->I;
        float *ot = j->out + (size_t)t * j->I;
        for (int i = 0; i < j->I; i++) {
            float g = ht[2 * i], u = ht[2 * i + 1];
            if (g > j->limit) g = j->limit;
            if (u > j->limit) u = j->limit;
            if (u < -j->limit) u = -j->limit;
            float sig = 1.0f / (1.0f + expf(-j->alpha * g));
            ot[i] = g * sig * (u + 1.0f);
        }
    }
}

/* Elementwise, so threads may split the tokens freely; small batches (decode) stay on the
 * calling thread, where a pool wakeup would cost more than the expf calls. */
static void s_swiglu(const ops_t *o, const float *h, int T, int I, float alpha, float limit,
                     float *out) {
    s_swiglu_job_t j = {.h = h, .T = T, .I = I, .alpha = alpha, .limit = limit, .out = out};
    if ((double)T * I < 8 * S_SMALL_WORK) {
        j.per_task = T;
        if (T > 0) s_swiglu_task(&j, 0, 0);
        return;
    }
    j.per_task = 4;
    cpu_pool_run(s_cpu(o)->pool, (T + 3) / 4, s_swiglu_task, &j);
}

static void s_add(const ops_t *o, float *x, const float *y, size_t n) {
    (void)o;
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}

static void s_axpy(const ops_t *o, float *x, float a, const float *y, size_t n) {
    s_cpu(o)->kern->axpy(x, a, y, (int)n);
}

/* ---- whole MoE layer ---------------------------------------------------------- */

enum {
    S_M_XE,
    S_M_HE,
    S_M_AE,
    S_M_YE,
    S_M_ETOK,
    S_M_EWT,
    S_M_ECOUNT,
    S_M_ESTART,
    S_M_AS,
    S_M_TASKS
};

/* Scratch buffer slot of at least bytes (old contents lost on growth); aborts when out of
 * memory, as ops have no error path. */
static void *s_moe_scratch(s_cpu_t *c, int slot, size_t bytes) {
    if (bytes > c->m_cap[slot]) {
        free(c->m_buf[slot]);
        c->m_buf[slot] = malloc(bytes);
        if (!c->m_buf[slot]) {
            fprintf(stderr, "cpu backend: out of memory for %zu bytes of MoE scratch\n", bytes);
            abort();
        }
        c->m_cap[slot] = bytes;
    }
    return c->m_buf[slot];
}

/* Expert e's matrix of an ops_experts_t (as weights_expert in shardd/weights.c). */
static ops_mxfp4_mat_t s_expert(const ops_experts_t *x, int e) {
    ops_mxfp4_mat_t m = x->mat;
    m.blocks += (size_t)e * x->blocks_estride;
    m.scales += (size_t)e * x->scales_estride;
    return m;
}

static const uint16_t *s_expert_bias(const ops_experts_t *x, int e) {
    return x->bias ? x->bias + (size_t)e * x->bias_estride : NULL;
}

/* One task of a grouped expert matmul: rows [r0, r1) of expert x's matrix for its tokens. */
typedef struct {
    int x, r0, r1;
} s_moe_task_t;

typedef struct {
    const s_cpu_t *cpu;
    const ops_experts_t *set; /* gate_up or down */
    const float *x;           /* [N][cols] input rows, expert-major (nibble order if the kernel
                                 wants it) */
    const int32_t *estart;    /* [E+1] first row of each expert */
    float *y;                 /* [N][rows] */
    int rows, cols;
    const s_moe_task_t *tasks;
} s_moe_job_t;

static void s_moe_task(void *arg, int task, int thread) {
    (void)thread;
    const s_moe_job_t *j = arg;
    const s_moe_task_t *k = &j->tasks[task];
    const int first = j->estart[k->x], n = j->estart[k->x + 1] - first;
    const ops_mxfp4_mat_t W = s_expert(j->set, k->x);
    j->cpu->kern->mxfp4_rows(j->x + (size_t)first * j->cols, n, &W, s_expert_bias(j->set, k->x),
                             k->r0, k->r1, j->y + (size_t)first * j->rows);
}

/* Every active expert's matmul of one set in one pool run: tasks are (expert, row chunk)
 * pairs with s_mm_run's chunking (s_mm_chunk) for that expert's token count, so the threads
 * balance over all experts instead of joining after each (a batched decode step has ~28
 * small experts per layer). A (row, token) result does not depend on the split (cpu_kern.h). */
static void s_moe_matmuls(s_cpu_t *c, const ops_experts_t *set, const float *x,
                          const int32_t *estart, int E, float *y) {
    const int rows = set->mat.rows, cols = set->mat.cols, threads = cpu_pool_size(c->pool);
    const size_t row_bytes = s_mxfp4_row_bytes(cols);
    int n_tasks = 0;
    double work = 0.0;
    for (int e = 0; e < E; e++) {
        const int n = estart[e + 1] - estart[e];
        if (!n) continue;
        const int chunk = s_mm_chunk(rows, n, threads, row_bytes);
        n_tasks += (rows + chunk - 1) / chunk;
        work += (double)rows * cols * n;
    }
    s_moe_task_t *tasks =
        s_moe_scratch(c, S_M_TASKS, sizeof *tasks * (size_t)(n_tasks ? n_tasks : 1));
    int i = 0;
    for (int e = 0; e < E; e++) {
        const int n = estart[e + 1] - estart[e];
        if (!n) continue;
        const int chunk = s_mm_chunk(rows, n, threads, row_bytes);
        for (int r0 = 0; r0 < rows; r0 += chunk)
            tasks[i++] = (s_moe_task_t){e, r0, r0 + chunk < rows ? r0 + chunk : rows};
    }
    s_moe_job_t j = {.cpu = c,
                     .set = set,
                     .x = x,
                     .estart = estart,
                     .y = y,
                     .rows = rows,
                     .cols = cols,
                     .tasks = tasks};
    if (threads == 1 || work < S_SMALL_WORK) {
        for (int t = 0; t < n_tasks; t++)
            s_moe_task(&j, t, 0);
        return;
    }
    cpu_pool_run(c->pool, n_tasks, s_moe_task, &j);
}

/* Groups the (token, weight) pairs by expert in token order (counting sort), gathers the
 * tokens' rows expert-major, runs every expert's gate_up (+bias) in one pool run, the clamped
 * SwiGLU over all rows, every expert's down (+bias) in one pool run, then per expert in
 * ascending index out[tok] += w * y with the axpy kernel, so each token sums its experts in
 * ascending index whatever the other tokens are (batch invariance). */
static void s_moe(const ops_t *o, const float *a, int T, const int32_t *idx, const float *w, int K,
                  const ops_moe_t *m, float *out) {
    s_cpu_t *c = o->impl;
    const int H = m->gate_up.mat.cols, nu = m->gate_up.mat.rows / 2, E = m->n_experts;
    if (T <= 0) return;
    memset(out, 0, sizeof(float) * (size_t)T * H);
    if (nu == 0) return; /* a shard past the last block: zeros */
    assert(K >= 1 && K <= E && m->down.mat.rows == H && m->down.mat.cols == nu);
    const size_t P = (size_t)T * K;
    const int nibble = c->kern->mxfp4_nibble_x;
    float *xe = s_moe_scratch(c, S_M_XE, sizeof(float) * P * (size_t)H);
    float *he = s_moe_scratch(c, S_M_HE, sizeof(float) * P * 2 * (size_t)nu);
    float *ae = s_moe_scratch(c, S_M_AE, sizeof(float) * P * (size_t)nu);
    float *as = nibble ? s_moe_scratch(c, S_M_AS, sizeof(float) * P * (size_t)nu) : ae;
    float *ye = s_moe_scratch(c, S_M_YE, sizeof(float) * P * (size_t)H);
    int32_t *etok = s_moe_scratch(c, S_M_ETOK, sizeof(int32_t) * P);
    float *ewt = s_moe_scratch(c, S_M_EWT, sizeof(float) * P);
    int32_t *ecount = s_moe_scratch(c, S_M_ECOUNT, sizeof(int32_t) * (size_t)E);
    int32_t *estart = s_moe_scratch(c, S_M_ESTART, sizeof(int32_t) * ((size_t)E + 1));
    memset(ecount, 0, sizeof(int32_t) * (size_t)E);
    for (size_t i = 0; i < P; i++) {
        assert(idx[i] >= 0 && idx[i] < E);
        ecount[idx[i]]++;
    }
    estart[0] = 0;
    for (int x = 0; x < E; x++)
        estart[x + 1] = estart[x] + ecount[x];
    memset(ecount, 0, sizeof(int32_t) * (size_t)E);
    for (size_t i = 0; i < P; i++) {
        int x = idx[i], at = estart[x] + ecount[x]++;
        etok[at] = (int32_t)(i / (size_t)K);
        ewt[at] = w[i];
    }
    /* the rows, expert-major, in the order the kernel reads them */
    for (size_t p = 0; p < P; p++) {
        const float *src = a + (size_t)etok[p] * H;
        if (nibble)
            cpu_nibble_x(src, 1, H, xe + p * H);
        else
            memcpy(xe + p * H, src, sizeof(float) * (size_t)H);
    }
    s_moe_matmuls(c, &m->gate_up, xe, estart, E, he);
    s_swiglu(o, he, (int)P, nu, m->alpha, m->limit, ae);
    if (nibble) cpu_nibble_x(ae, (int)P, nu, as);
    s_moe_matmuls(c, &m->down, as, estart, E, ye);
    for (int x = 0; x < E; x++)
        for (int p = estart[x]; p < estart[x + 1]; p++)
            s_axpy(o, out + (size_t)etok[p] * H, ewt[p], ye + (size_t)p * H, (size_t)H);
}

static void s_gather_rows(const ops_t *o, const float *src, const int32_t *rows, int R, int n,
                          float *dst) {
    (void)o;
    for (int r = 0; r < R; r++)
        memcpy(dst + (size_t)r * n, src + (size_t)rows[r] * n, sizeof(float) * (size_t)n);
}

/* ---- memory ------------------------------------------------------------------- */

#define S_ALIGN 64

/* calloc'd (zero pages come lazily from the OS for big blocks), aligned by hand; the
 * pointer calloc returned sits just below the aligned one. */
static void *s_alloc(const ops_t *o, size_t bytes) {
    (void)o;
    if (bytes > SIZE_MAX - S_ALIGN - sizeof(void *)) return NULL;
    char *raw = calloc(1, bytes + S_ALIGN + sizeof(void *));
    if (!raw) return NULL;
    uintptr_t p = ((uintptr_t)raw + sizeof(void *) + S_ALIGN - 1) & ~(uintptr_t)(S_ALIGN - 1);
    memcpy((char *)p - sizeof(void *), &raw, sizeof raw);
    return (void *)p;
}

static void s_free_mem(const ops_t *o, void *p) {
    (void)o;
    if (!p) return;
    void *raw;
    memcpy(&raw, (char *)p - sizeof(void *), sizeof raw);
    free(raw);
}

static void s_copy(const ops_t *o, void *dst, const void *src, size_t bytes) {
    (void)o;
    if (bytes) memcpy(dst, src, bytes);
}

static void s_zero(const ops_t *o, void *dst, size_t bytes) {
    (void)o;
    if (bytes) memset(dst, 0, bytes);
}

/* ---- construction ------------------------------------------------------------- */

static const cpu_kern_t *s_pick(const char *isa, gerr_t *err) {
    bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    bool has_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    const cpu_kern_t *k512 = has_avx512 ? cpu_kern_avx512() : NULL;
    const cpu_kern_t *k2 = has_avx2 ? cpu_kern_avx2() : NULL;
    if (!isa || !*isa || strcmp(isa, "auto") == 0) {
        const char *env = getenv("GPTOSS_ISA");
        if (env && *env && strcmp(env, "auto") != 0) return s_pick(env, err);
        return k512 ? k512 : k2 ? k2 : &cpu_kern_generic;
    }
    if (strcmp(isa, "generic") == 0) return &cpu_kern_generic;
    if (strcmp(isa, "avx2") == 0 && k2) return k2;
    if (strcmp(isa, "avx512") == 0 && k512) return k512;
    gerr_set(err,
             "cpu backend: instruction set '%s' is not available on this CPU/build "
             "(use auto, generic, avx2 or avx512)",
             isa);
    return NULL;
}

int ops_cpu_new(int n_threads, const char *isa, ops_t **out, gerr_t *err) {
    *out = NULL;
    cpu_kern_init_tables();
    const cpu_kern_t *kern = s_pick(isa, err);
    if (!kern) return GERR_INVALID;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    s_cpu_t *c = calloc(1, sizeof *c);
    if (!c) {
        gerr_set(err, "cpu backend: out of memory");
        return GERR_NOMEM;
    }
    c->pool = cpu_pool_new(n_threads);
    if (!c->pool) {
        free(c);
        gerr_set(err, "cpu backend: cannot start %d threads", n_threads);
        return GERR_NOMEM;
    }
    c->kern = kern;
    snprintf(c->name, sizeof c->name, "cpu-%s", kern->name);
    c->ops = (ops_t){
        .name = c->name,
        .impl = c,
        .embed = s_embed,
        .rmsnorm = s_rmsnorm,
        .matmul_bf16 = s_matmul_bf16,
        .matmul_mxfp4 = s_matmul_mxfp4,
        .rope = s_rope,
        .kv_write = s_kv_write,
        .attention = s_attention,
        .router_topk = s_router_topk,
        .swiglu = s_swiglu,
        .add = s_add,
        .add_rmsnorm = s_add_rmsnorm,
        .axpy = s_axpy,
        .moe = s_moe,
        .gather_rows = s_gather_rows,
        .alloc = s_alloc,
        .free_mem = s_free_mem,
        .upload = s_copy,
        .download = s_copy,
        .zero = s_zero,
        /* graph_begin / graph_end / graph_launch: none on the CPU (NULL) */
    };
    *out = &c->ops;
    return 0;
}

void ops_cpu_free(ops_t **o) {
    if (!o || !*o) return;
    s_cpu_t *c = (s_cpu_t *)*o;
    cpu_pool_free(&c->pool);
    for (size_t i = 0; i < sizeof c->m_buf / sizeof *c->m_buf; i++)
        free(c->m_buf[i]);
    free(c);
    *o = NULL;
}

int ops_cpu_threads(const ops_t *o) {
    return cpu_pool_size(s_cpu(o)->pool);
}
