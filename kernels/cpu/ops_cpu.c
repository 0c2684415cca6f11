/* ops_cpu: the CPU implementation of ops.h.
 *
 * Each op splits its work into tasks for the thread pool (output-row chunks for
 * matmuls, (token, head) pairs for attention) and calls the per-ISA inner loops
 * of cpu_kern.h. Everything is fp32; weights are read in their stored formats.
 * Small problems run on the calling thread only (a pool wakeup costs more than
 * they do). Threads split rows (matmuls) or (token, head) pairs (attention), never
 * one reduction, so a token's result does not depend on the split (batch invariance,
 * cpu_kern.h); attention's online-softmax key chunks start at the query's first
 * visible position, a function of its absolute position only. */
#include "ops_cpu.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bf16.h"
#include "cpu_kern.h"
#include "cpu_pool.h"

#define S_SMALL_WORK  16384 /* multiply-adds below which a matmul stays single-threaded */
#define S_ATTN_CHUNK  128   /* keys scored per online-softmax rescale */
#define S_MAX_D       256   /* largest head_dim supported */
#define S_SPLIT_STACK 8192  /* floats of split-order x kept on the stack (T = 1 and small T) */

typedef struct {
    ops_t ops; /* must be first: ops_t* <-> s_cpu_t* */
    cpu_pool_t *pool;
    const cpu_kern_t *kern;
    char name[32];
} s_cpu_t;

static const s_cpu_t *s_cpu(const ops_t *o) {
    return (const s_cpu_t *)o;
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

static void s_mm_run(const s_cpu_t *c, s_mm_job_t *j, int cols) {
    int threads = cpu_pool_size(c->pool);
    double work = (double)j->rows * cols * j->T;
    if (threads == 1 || work < S_SMALL_WORK) {
        j->chunk = j->rows;
        s_mm_task(j, 0, 0);
        return;
    }
    int chunk = j->T >= 4 ? 16 : (j->rows + threads * 8 - 1) / (threads * 8);
    if (chunk < 4) chunk = 4;
    if (chunk > 64) chunk = 64;
    j->chunk = chunk;
    cpu_pool_run(c->pool, (j->rows + chunk - 1) / chunk, s_mm_task, j);
}

static void s_matmul_bf16(const ops_t *o, const float *x, int T, const ops_bf16_mat_t *W,
                          const uint16_t *bias, float *y) {
    if (T <= 0 || W->rows <= 0) return;
    s_mm_job_t j = {
        .cpu = s_cpu(o), .x = x, .T = T, .wb = W, .bias = bias, .y = y, .rows = W->rows};
    s_mm_run(s_cpu(o), &j, W->cols);
}

static void s_matmul_mxfp4(const ops_t *o, const float *x, int T, const ops_mxfp4_mat_t *W,
                           const uint16_t *bias, float *y) {
    if (T <= 0 || W->rows <= 0) return;
    assert(W->cols % 32 == 0);
    float stack[S_SPLIT_STACK], *xs = NULL;
    if (s_cpu(o)->kern->mxfp4_split_x) {
        size_t n = (size_t)T * W->cols;
        xs = n <= S_SPLIT_STACK ? stack : malloc(n * sizeof *xs);
        if (!xs) abort(); /* ops have no error path; a few MB at most */
        cpu_split_x(x, T, W->cols, xs);
    }
    s_mm_job_t j = {
        .cpu = s_cpu(o), .x = xs ? xs : x, .T = T, .wm = W, .bias = bias, .y = y, .rows = W->rows};
    s_mm_run(s_cpu(o), &j, W->cols);
    if (xs != stack) free(xs);
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

static void s_attn_task(void *arg, int task, int thread) {
    (void)thread;
    const s_attn_job_t *j = arg;
    const ops_kv_t *kv = j->kv;
    const int D = kv->head_dim;
    const int t = task / j->n_heads, h = task % j->n_heads, kvh = h / j->group;
    const ops_tok_t *tok = &j->toks[t];
    const float *q = j->q + ((size_t)t * j->n_heads + h) * D;
    float *out = j->out + ((size_t)t * j->n_heads + h) * D;
    const cpu_kern_t *K = j->cpu->kern;
    int lo = 0;
    if (j->window > 0 && tok->pos - j->window + 1 > 0) lo = tok->pos - j->window + 1;
    /* online softmax, seeded with the sink: m = S_h, l = e^(S_h - m) = 1 */
    float m = bf16_to_f32(j->sinks[h]), l = 1.0f;
    float acc[S_MAX_D], s[S_ATTN_CHUNK], tmp[S_MAX_D];
    for (int i = 0; i < D; i++)
        acc[i] = 0.0f;
    for (int c0 = lo; c0 <= tok->pos; c0 += S_ATTN_CHUNK) {
        int n = tok->pos + 1 - c0;
        if (n > S_ATTN_CHUNK) n = S_ATTN_CHUNK;
        float cm = m;
        for (int i = 0; i < n; i++) {
            const float *kr = s_kv_row(kv, kv->k, tok->blocks, c0 + i, kvh, tmp);
            s[i] = K->dot(q, kr, D) * j->sm_scale;
            if (s[i] > cm) cm = s[i];
        }
        if (cm > m) {
            float r = expf(m - cm);
            l *= r;
            for (int i = 0; i < D; i++)
                acc[i] *= r;
            m = cm;
        }
        for (int i = 0; i < n; i++) {
            float p = expf(s[i] - m);
            l += p;
            const float *vr = s_kv_row(kv, kv->v, tok->blocks, c0 + i, kvh, tmp);
            K->axpy(acc, p, vr, D);
        }
    }
    float inv = 1.0f / l;
    for (int i = 0; i < D; i++)
        out[i] = acc[i] * inv;
}

static void s_attention(const ops_t *o, const float *q, int T, int n_heads, const ops_kv_t *kv,
                        const ops_tok_t *toks, int window, const uint16_t *sinks, float sm_scale,
                        float *out) {
    assert(kv->head_dim <= S_MAX_D && n_heads % kv->n_kv_heads == 0);
    s_attn_job_t j = {.cpu = s_cpu(o),
                      .q = q,
                      .n_heads = n_heads,
                      .group = n_heads / kv->n_kv_heads,
                      .kv = kv,
                      .toks = toks,
                      .window = window,
                      .sinks = sinks,
                      .sm_scale = sm_scale,
                      .out = out};
    cpu_pool_run(s_cpu(o)->pool, T * n_heads, s_attn_task, &j);
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

static void s_swiglu(const ops_t *o, const float *h, int T, int I, float alpha, float limit,
                     float *out) {
    (void)o;
    for (int t = 0; t < T; t++) {
        const float *ht = h + (size_t)t * 2 * I;
        float *ot = out + (size_t)t * I;
        for (int i = 0; i < I; i++) {
            float g = ht[2 * i], u = ht[2 * i + 1];
            if (g > limit) g = limit;
            if (u > limit) u = limit;
            if (u < -limit) u = -limit;
            float sig = 1.0f / (1.0f + expf(-alpha * g));
            ot[i] = g * sig * (u + 1.0f);
        }
    }
}

static void s_add(const ops_t *o, float *x, const float *y, size_t n) {
    (void)o;
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}

static void s_axpy(const ops_t *o, float *x, float a, const float *y, size_t n) {
    s_cpu(o)->kern->axpy(x, a, y, (int)n);
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
        .axpy = s_axpy,
    };
    *out = &c->ops;
    return 0;
}

void ops_cpu_free(ops_t **o) {
    if (!o || !*o) return;
    s_cpu_t *c = (s_cpu_t *)*o;
    cpu_pool_free(&c->pool);
    free(c);
    *o = NULL;
}

int ops_cpu_threads(const ops_t *o) {
    return cpu_pool_size(s_cpu(o)->pool);
}
