/* test_tp: tensor parallelism over N shards (issue 5): slicing, numerics, the shard daemon.
 *
 * - Slices: the views weights_load_shard binds for every rank of tiny-a (N = 1, 2) and of a
 *   generated model (gptoss-mkmodel: heads 8, kv heads 4, intermediate 96 = 3 MXFP4 blocks,
 *   hidden 64, vocab 1000; N = 1, 2, 4, where N = 4 gives 1,1,1,0 blocks: a zero-unit shard)
 *   point exactly at the byte ranges st_slice gives for the rank's index ranges (so a shard
 *   reads only its own bytes); the ranks' ranges tile the model; the o_proj and down biases
 *   are on rank 0 only. Refused: N = 4 on tiny-a (kv heads 2), N = 3 on the generated model
 *   (kv heads 4), an engine whose comm does not match its weights.
 * - Numerics: rank 0 in this process, ranks 1..N-1 forked, on a shm comm, run one script:
 *   a chunked prefill with all-position logits, a mixed batch (the rest of that prefill and
 *   a second sequence's whole prompt), then batched greedy decode with the tokens broadcast
 *   from rank 0; f32 and bf16 KV. Every logits row must be within 1e-4 relative L2 of the
 *   world-1 engine's and the greedy tokens identical.
 * - Bytes read: on a model with 512 KiB of gate_up rows per expert and shard, rank 1 runs the
 *   script with the pages of rank 0's q_proj, gate_up and lm_head rows made unreadable
 *   (mprotect PROT_NONE on its mapping): any read would kill it. (down_proj is sliced by
 *   block columns inside each row, so shards share its pages; its byte ranges are checked
 *   against st_slice.)
 * - gptoss-shardd with --world 2 over the real protocol (a test ROUTER plays the gateway and
 *   creates the comm segment as the gateway does): both READY, greedy generation of a tiny-a
 *   case equal to expected.json (rank 0 answers the tokens, rank 1 empty RESULTs); then rank
 *   1 is killed and rank 0 answers the next STEP with STEP_ERROR and exits 4 within the comm
 *   timeout. Also LOAD_ERROR (exit 2) for tp 4 on tiny-a and for a peer that never joins.
 * Every wait has a deadline; every child is reaped, and killed if the test fails. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "comm.h"
#include "cpu/ops_cpu.h"
#include "engine.h"
#include "kvcache.h"
#include "proto.h"
#include "safetensors.h"
#include "tcheck.h"
#include "weights.h"

#define S_MAX_CHILDREN 16
#define S_DECODE       6    /* greedy decode steps of the numerics script */
#define S_REL_TOL      1e-4 /* relative L2 of a logits row against world 1 */

static pid_t s_children[S_MAX_CHILDREN];
static int s_n_children;
static char s_gen_model[512]; /* the generated model folder */

static long long s_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void s_forget(pid_t pid) {
    for (int i = 0; i < s_n_children; i++)
        if (s_children[i] == pid) s_children[i] = s_children[--s_n_children];
}

static void s_track(pid_t pid) {
    if (pid > 0 && s_n_children < S_MAX_CHILDREN) s_children[s_n_children++] = pid;
}

/* Kills and reaps every child still running (end of a test or failure path). */
static void s_kill_all(void) {
    while (s_n_children > 0) {
        pid_t pid = s_children[--s_n_children];
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
    }
}

/* Waits up to timeout_ms for pid to exit; returns its exit status, 128+signal, or -1 on
 * timeout (the child is then still running and still tracked). */
static int s_wait_exit(pid_t pid, int timeout_ms) {
    long long end = s_now_ms() + timeout_ms;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            s_forget(pid);
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        if (r < 0 && errno != EINTR) return -1;
        if (s_now_ms() > end) return -1;
        usleep(5 * 1000);
    }
}

/* Runs argv (NULL-terminated) and waits; returns its exit status or -1. */
static int s_run(const char *const *argv) {
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    s_track(pid);
    return s_wait_exit(pid, 60000);
}

/* ---- slices --------------------------------------------------------------------------- */

/* Byte address of st_slice's first range of t, in t's mapping. */
static const uint8_t *s_at(const st_tensor_t *t, const st_slice_t *sl) {
    return (const uint8_t *)t->data + (sl->offset - t->file_offset);
}

static const st_tensor_t *s_tensor(const weights_t *w, int layer, const char *suffix) {
    char name[256];
    if (layer >= 0)
        config_layer_name(name, sizeof name, layer, suffix);
    else
        snprintf(name, sizeof name, "%s", suffix);
    const st_tensor_t *t = st_find(w->st, name);
    CHECK_MSG(t != NULL, "tensor %s", name);
    return t;
}

/* Checks a dim-0 slice [b, e) of t against a contiguous view starting at p of len bytes. */
static void s_check_rows(const st_tensor_t *t, int64_t b, int64_t e, const void *p, uint64_t len) {
    st_slice_t sl;
    gerr_t err = {{0}};
    CHECK_MSG(st_slice(t, 0, b, e, &sl, &err) == 0, "%s: %s", t->name, err.msg);
    CHECK_MSG(s_at(t, &sl) == p, "%s rows %lld..%lld: view %p, slice %p", t->name, (long long)b,
              (long long)e, p, (const void *)s_at(t, &sl));
    CHECK_MSG(sl.len == len && sl.count == 1, "%s: len %llu vs %llu", t->name,
              (unsigned long long)sl.len, (unsigned long long)len);
}

/* Checks one rank's views against st_slice of its index ranges. */
static void s_check_views(const weights_t *w) {
    const gptoss_config_t *c = &w->cfg;
    const weights_slice_t *s = &w->slice;
    const int D = c->head_dim, H = c->hidden_size;
    const int q0 = s->head_begin * D, q1 = q0 + s->n_heads * D;
    const int k0 = s->kv_begin * D, k1 = k0 + s->n_kv_heads * D;
    const int u0 = s->unit_begin, u1 = u0 + s->n_units;
    const st_tensor_t *t = s_tensor(w, -1, "lm_head.weight");
    if (t && s->vocab_rows > 0)
        s_check_rows(t, s->vocab_begin, s->vocab_begin + s->vocab_rows, w->lm_head.w,
                     (uint64_t)s->vocab_rows * H * 2);
    CHECK(w->lm_head.rows == s->vocab_rows && w->lm_head.cols == H);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const weights_layer_t *L = &w->layers[l];
        if ((t = s_tensor(w, l, "self_attn.q_proj.weight")))
            s_check_rows(t, q0, q1, L->q.w, (uint64_t)(q1 - q0) * H * 2);
        if ((t = s_tensor(w, l, "self_attn.k_proj.weight")))
            s_check_rows(t, k0, k1, L->k.w, (uint64_t)(k1 - k0) * H * 2);
        if ((t = s_tensor(w, l, "self_attn.v_proj.weight")))
            s_check_rows(t, k0, k1, L->v.w, (uint64_t)(k1 - k0) * H * 2);
        if ((t = s_tensor(w, l, "self_attn.q_proj.bias")))
            s_check_rows(t, q0, q1, L->q_b, (uint64_t)(q1 - q0) * 2);
        if ((t = s_tensor(w, l, "self_attn.k_proj.bias")))
            s_check_rows(t, k0, k1, L->k_b, (uint64_t)(k1 - k0) * 2);
        if ((t = s_tensor(w, l, "self_attn.sinks")))
            s_check_rows(t, s->head_begin, s->head_begin + s->n_heads, L->sinks,
                         (uint64_t)s->n_heads * 2);
        CHECK(L->q.rows == q1 - q0 && L->k.rows == k1 - k0 && L->v.rows == k1 - k0);
        /* o_proj: input columns of the shard's heads, one run per output row */
        st_slice_t sl;
        gerr_t err = {{0}};
        if ((t = s_tensor(w, l, "self_attn.o_proj.weight"))) {
            CHECK(st_slice(t, 1, q0, q1, &sl, &err) == 0);
            CHECK(s_at(t, &sl) == (const uint8_t *)L->o.w);
            CHECK(sl.count == (uint64_t)H && L->o.rows == H);
            CHECK(sl.len == (uint64_t)L->o.cols * 2 && sl.stride == L->o.stride * 2);
        }
        CHECK((L->o_b != NULL) == (w->rank == 0));
        CHECK((L->down.bias != NULL) == (w->rank == 0));
        if (!s->n_units) {
            CHECK(L->gate_up.mat.rows == 0 && L->down.mat.cols == 0);
            continue;
        }
        /* gate_up: rows [2u0, 2u1) of every expert */
        const st_tensor_t *gb = s_tensor(w, l, "mlp.experts.gate_up_proj_blocks");
        const st_tensor_t *gs = s_tensor(w, l, "mlp.experts.gate_up_proj_scales");
        const st_tensor_t *gbias = s_tensor(w, l, "mlp.experts.gate_up_proj_bias");
        if (gb && gs && gbias) {
            CHECK(st_slice(gb, 1, 2 * u0, 2 * u1, &sl, &err) == 0);
            CHECK(s_at(gb, &sl) == L->gate_up.mat.blocks);
            CHECK(sl.count == (uint64_t)c->num_local_experts &&
                  sl.stride == L->gate_up.blocks_estride);
            CHECK(sl.len == (uint64_t)L->gate_up.mat.rows * L->gate_up.mat.blocks_stride);
            CHECK(st_slice(gs, 1, 2 * u0, 2 * u1, &sl, &err) == 0);
            CHECK(s_at(gs, &sl) == L->gate_up.mat.scales);
            CHECK(sl.len == (uint64_t)L->gate_up.mat.rows * L->gate_up.mat.scales_stride);
            CHECK(st_slice(gbias, 1, 2 * u0, 2 * u1, &sl, &err) == 0);
            CHECK(s_at(gbias, &sl) == (const uint8_t *)L->gate_up.bias);
            CHECK(sl.stride == L->gate_up.bias_estride * 2 && sl.len == (uint64_t)(u1 - u0) * 4);
            CHECK(L->gate_up.mat.rows == 2 * (u1 - u0) && L->gate_up.mat.cols == H);
        }
        /* down: block columns [u0/32, u1/32) of every row of every expert */
        const st_tensor_t *db = s_tensor(w, l, "mlp.experts.down_proj_blocks");
        const st_tensor_t *ds = s_tensor(w, l, "mlp.experts.down_proj_scales");
        if (db && ds) {
            CHECK(st_slice(db, 2, u0 / 32, u1 / 32, &sl, &err) == 0);
            CHECK(s_at(db, &sl) == L->down.mat.blocks);
            CHECK(sl.count == (uint64_t)c->num_local_experts * H);
            CHECK(sl.stride == L->down.mat.blocks_stride && sl.len == (uint64_t)(u1 - u0) / 2);
            CHECK(st_slice(ds, 2, u0 / 32, u1 / 32, &sl, &err) == 0);
            CHECK(s_at(ds, &sl) == L->down.mat.scales);
            CHECK(sl.stride == L->down.mat.scales_stride && sl.len == (uint64_t)(u1 - u0) / 32);
            CHECK(L->down.mat.rows == H && L->down.mat.cols == u1 - u0);
        }
    }
}

/* All ranks of a world: views checked, ranges tiling the model, expected unit counts. */
static void s_check_world(const char *model, int world, const int *units) {
    int next_head = 0, next_kv = 0, next_unit = 0, next_vocab = 0, V = 0, I = 0;
    for (int r = 0; r < world; r++) {
        weights_t *w = NULL;
        gerr_t err = {{0}};
        int rc = weights_load_shard(model, r, world, &w, &err);
        CHECK_MSG(rc == 0, "%s rank %d of %d: %s", model, r, world, err.msg);
        if (rc) return;
        const weights_slice_t *s = &w->slice;
        CHECK(w->rank == r && w->world == world);
        CHECK(s->head_begin == next_head && s->kv_begin == next_kv);
        CHECK(s->unit_begin == next_unit && s->vocab_begin == next_vocab);
        CHECK(s->n_heads == w->n_heads && s->n_kv_heads == w->n_kv_heads);
        CHECK_MSG(s->n_units == units[r], "%s tp %d rank %d: %d units, expected %d", model, world,
                  r, s->n_units, units[r]);
        CHECK(s->n_units % 32 == 0);
        next_head += s->n_heads;
        next_kv += s->n_kv_heads;
        next_unit += s->n_units;
        next_vocab += s->vocab_rows;
        V = w->cfg.vocab_size;
        I = w->cfg.intermediate_size;
        CHECK(next_head <= w->cfg.num_attention_heads && next_kv <= w->cfg.num_key_value_heads);
        s_check_views(w);
        weights_free(&w);
    }
    CHECK(next_unit == I && next_vocab == V);
}

static void s_check_refused(const char *model, int world, const char *want) {
    weights_t *w = NULL;
    gerr_t err = {{0}};
    int rc = weights_load_shard(model, 0, world, &w, &err);
    CHECK(rc == GERR_INVALID && w == NULL);
    CHECK_MSG(strstr(err.msg, want) != NULL, "message: %s (want %s)", err.msg, want);
}

static void test_slices(const char *tiny) {
    s_check_world(tiny, 1, (const int[]){64});
    s_check_world(tiny, 2, (const int[]){32, 32});
    s_check_refused(tiny, 4, "tp 4 does not divide num_key_value_heads 2");
    s_check_world(s_gen_model, 1, (const int[]){96});
    s_check_world(s_gen_model, 2, (const int[]){64, 32});
    s_check_world(s_gen_model, 4, (const int[]){32, 32, 32, 0});
    s_check_refused(s_gen_model, 3, "tp 3 does not divide num_key_value_heads 4");
    /* the engine refuses weights of another world than its comm's */
    weights_t *w = NULL;
    ops_t *ops = NULL;
    engine_t *e = NULL;
    gerr_t err = {{0}};
    CHECK(weights_load_shard(tiny, 1, 2, &w, &err) == 0);
    CHECK(ops_cpu_new(1, NULL, &ops, &err) == 0);
    if (w && ops) {
        engine_opts_t eo = {.kv_budget_bytes = 1 << 20, .max_seqs = 1, .max_chunk = 8};
        CHECK(engine_new(w, ops, &eo, &e, &err) == GERR_INVALID && e == NULL);
        CHECK_MSG(strstr(err.msg, "does not match") != NULL, "%s", err.msg);
    }
    ops_cpu_free(&ops);
    weights_free(&w);
}

/* ---- bytes a shard reads --------------------------------------------------------------- */

static bool s_guard_pages; /* set: the script's rank 1 runs with the others' pages unreadable */

/* Sets prot on the whole pages inside [a, b); returns the number of pages or -1. */
static long s_protect(uintptr_t a, uintptr_t b, int prot) {
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = (a + pg - 1) & ~(pg - 1), hi = b & ~(pg - 1);
    if (hi <= lo) return 0;
    if (mprotect((void *)lo, hi - lo, prot)) return -1;
    return (long)((hi - lo) / pg);
}

/* Sets prot on the pages of the other ranks' rows of q_proj, gate_up (blocks) and lm_head
 * (dim-0 slices, every expert); returns the pages changed or -1. down_proj's block columns
 * share pages between shards and are checked against st_slice only. */
static long s_guard(const weights_t *w, int prot) {
    const gptoss_config_t *c = &w->cfg;
    long pages = 0;
    for (int r = 0; r < w->world; r++) {
        weights_slice_t sl;
        st_slice_t ss;
        gerr_t err = {{0}};
        if (r == w->rank || weights_slice(c, r, w->world, &sl, &err)) continue;
        for (int l = -1; l < c->num_hidden_layers; l++) {
            for (int k = 0; k < 2; k++) {
                const st_tensor_t *t;
                int dim = l < 0 ? 0 : k ? 1 : 0;
                int64_t b0, b1;
                if (l < 0 && k == 1) continue;
                if (l < 0) {
                    t = s_tensor(w, -1, "lm_head.weight");
                    b0 = sl.vocab_begin, b1 = sl.vocab_begin + sl.vocab_rows;
                } else if (k == 0) {
                    t = s_tensor(w, l, "self_attn.q_proj.weight");
                    b0 = (int64_t)sl.head_begin * c->head_dim;
                    b1 = b0 + (int64_t)sl.n_heads * c->head_dim;
                } else {
                    t = s_tensor(w, l, "mlp.experts.gate_up_proj_blocks");
                    b0 = 2 * sl.unit_begin, b1 = 2 * (sl.unit_begin + sl.n_units);
                }
                if (!t || b1 <= b0) continue;
                if (st_slice(t, dim, b0, b1, &ss, &err)) return -1;
                for (uint64_t i = 0; i < ss.count; i++) {
                    uintptr_t a = (uintptr_t)s_at(t, &ss) + i * ss.stride;
                    long n = s_protect(a, a + ss.len, prot);
                    if (n < 0) return -1;
                    pages += n;
                }
            }
        }
    }
    return pages;
}

/* ---- numerics ------------------------------------------------------------------------- */

/* What rank 0 saw: every logits row in order, and the greedy tokens. */
typedef struct {
    float *rows;
    int n_rows, V;
    int32_t toks[2][S_DECODE];
} s_out_t;

static int s_keep(s_out_t *o, const float *logits, int n, int V) {
    float *p = realloc(o->rows, sizeof(float) * (size_t)(o->n_rows + n) * (size_t)V);
    if (!p) return -1;
    o->rows = p;
    memcpy(p + (size_t)o->n_rows * V, logits, sizeof(float) * (size_t)n * V);
    o->n_rows += n;
    o->V = V;
    return 0;
}

static int32_t s_argmax(const float *x, int n) {
    int32_t b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* The script every rank runs (comm NULL: world 1). Returns 0 or -1 (message printed). */
static int s_script(const char *model, int rank, int world, comm_t *comm, ops_kv_dtype_t dt,
                    s_out_t *out) {
    weights_t *w = NULL;
    ops_t *ops = NULL;
    engine_t *eng = NULL;
    float *logits = NULL;
    kvcache_seq_t sa = {0}, sb = {0};
    gerr_t err = {{0}};
    int rc = -1;
    if (weights_load_shard(model, rank, world, &w, &err) || ops_cpu_new(1, NULL, &ops, &err))
        goto done;
    if (s_guard_pages && rank == 1) { /* reading any of these pages kills rank 1 (SIGSEGV) */
        long pages = s_guard(w, PROT_NONE);
        fprintf(stderr, "rank 1: %ld pages of the other shards' slices made unreadable\n", pages);
        if (pages < 256) {
            gerr_set(&err, "could not protect the other shards' pages (%ld)", pages);
            goto done;
        }
    }
    engine_opts_t eo = {.kv_dtype = dt,
                        .block_size = 4,
                        .kv_budget_bytes = 8 << 20,
                        .max_seqs = 2,
                        .max_chunk = 16,
                        .comm = comm};
    if (engine_new(w, ops, &eo, &eng, &err)) goto done;
    const int V = engine_vocab(eng);
    if (rank == 0 && !(logits = malloc(sizeof(float) * (size_t)V * 16))) goto done;
    int32_t pa[12 + S_DECODE], pb[7 + S_DECODE];
    for (int i = 0; i < 12; i++)
        pa[i] = (i * 37 + 5) % V;
    for (int i = 0; i < 7; i++)
        pb[i] = (i * 101 + 3) % V;
    kvcache_t *kv = engine_kv(eng);
    /* 1: first chunk of A, all-position logits */
    if (kvcache_seq_reserve(kv, &sa, 0, 5, &err)) goto done;
    engine_seq_t s1 = {.tokens = pa,
                       .n_tokens = 5,
                       .full_blocks = sa.full,
                       .n_full_blocks = sa.n_full,
                       .window_blocks = sa.window,
                       .n_window_blocks = sa.n_window,
                       .all_logits = true};
    if (engine_step(eng, &s1, 1, logits, &err)) goto done;
    if (rank == 0 && s_keep(out, logits, 5, V)) goto done;
    /* 2: mixed batch: the rest of A and all of B */
    if (kvcache_seq_reserve(kv, &sa, 5, 12, &err) || kvcache_seq_reserve(kv, &sb, 0, 7, &err))
        goto done;
    engine_seq_t s2[2] = {{.tokens = pa + 5,
                           .n_tokens = 7,
                           .start_pos = 5,
                           .full_blocks = sa.full,
                           .n_full_blocks = sa.n_full,
                           .window_blocks = sa.window,
                           .n_window_blocks = sa.n_window},
                          {.tokens = pb,
                           .n_tokens = 7,
                           .full_blocks = sb.full,
                           .n_full_blocks = sb.n_full,
                           .window_blocks = sb.window,
                           .n_window_blocks = sb.n_window}};
    if (engine_step(eng, s2, 2, logits, &err)) goto done;
    if (rank == 0 && s_keep(out, logits, 2, V)) goto done;
    /* 3: batched greedy decode, tokens from rank 0 */
    for (int k = 0; k < S_DECODE; k++) {
        int32_t next[2] = {0, 0};
        if (rank == 0) {
            next[0] = s_argmax(logits, V);
            next[1] = s_argmax(logits + V, V);
            out->toks[0][k] = next[0];
            out->toks[1][k] = next[1];
        }
        if (comm && comm_broadcast(comm, next, sizeof next, 0, &err)) goto done;
        pa[12 + k] = next[0];
        pb[7 + k] = next[1];
        if (kvcache_seq_reserve(kv, &sa, 12 + k, 13 + k, &err) ||
            kvcache_seq_reserve(kv, &sb, 7 + k, 8 + k, &err))
            goto done;
        engine_seq_t s3[2] = {{.tokens = pa + 12 + k,
                               .n_tokens = 1,
                               .start_pos = 12 + k,
                               .full_blocks = sa.full,
                               .n_full_blocks = sa.n_full,
                               .window_blocks = sa.window,
                               .n_window_blocks = sa.n_window},
                              {.tokens = pb + 7 + k,
                               .n_tokens = 1,
                               .start_pos = 7 + k,
                               .full_blocks = sb.full,
                               .n_full_blocks = sb.n_full,
                               .window_blocks = sb.window,
                               .n_window_blocks = sb.n_window}};
        if (engine_step(eng, s3, 2, logits, &err)) goto done;
        if (rank == 0 && s_keep(out, logits, 2, V)) goto done;
    }
    if (s_guard_pages && rank == 1 && s_guard(w, PROT_READ) < 0) goto done;
    rc = 0;
done:
    if (rc) fprintf(stderr, "test: rank %d of %d: %s\n", rank, world, err.msg);
    if (eng) {
        kvcache_seq_release(engine_kv(eng), &sa);
        kvcache_seq_release(engine_kv(eng), &sb);
    }
    engine_free(&eng);
    ops_cpu_free(&ops);
    weights_free(&w);
    free(logits);
    return rc;
}

/* Runs the script over world ranks (rank 0 here, the others forked) into *out. */
static int s_script_tp(const char *model, int world, ops_kv_dtype_t dt, s_out_t *out) {
    char name[64];
    static int gen;
    snprintf(name, sizeof name, "/gptoss-test-tp-%ld-%d", (long)getpid(), gen++);
    gerr_t err = {{0}};
    if (comm_shm_create(name, world, 0, &err)) {
        fprintf(stderr, "test: %s\n", err.msg);
        return -1;
    }
    comm_shm_opts_t co = {.attach_timeout_ms = 20000, .timeout_ms = 20000};
    pid_t kids[COMM_MAX_WORLD] = {0};
    fflush(NULL);
    for (int r = 1; r < world; r++) {
        pid_t pid = fork();
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            comm_t *c = NULL;
            int rc = comm_shm_new(name, r, world, &co, &c, &err);
            if (rc) fprintf(stderr, "test: rank %d: %s\n", r, err.msg);
            if (!rc) rc = s_script(model, r, world, c, dt, NULL);
            comm_destroy(&c);
            _exit(rc ? 1 : 0);
        }
        kids[r] = pid;
        s_track(pid);
    }
    comm_t *c = NULL;
    int rc = comm_shm_new(name, 0, world, &co, &c, &err);
    if (rc) fprintf(stderr, "test: rank 0: %s\n", err.msg);
    if (!rc) rc = s_script(model, 0, world, c, dt, out);
    if (rc && c) comm_abort(c);
    comm_destroy(&c);
    for (int r = 1; r < world; r++) {
        int st = kids[r] > 0 ? s_wait_exit(kids[r], 60000) : -1;
        CHECK_MSG(st == 0, "rank %d of %d exit status %d", r, world, st);
        if (st != 0) rc = -1;
    }
    s_kill_all();
    comm_shm_unlink(name, &err);
    return rc;
}

static void s_compare(const s_out_t *ref, const s_out_t *got, const char *what) {
    CHECK_MSG(got->n_rows == ref->n_rows && got->V == ref->V, "%s: %d rows of %d vs %d of %d", what,
              got->n_rows, got->V, ref->n_rows, ref->V);
    if (got->n_rows != ref->n_rows || got->V != ref->V) return;
    double worst = 0;
    for (int i = 0; i < ref->n_rows; i++) {
        const float *a = ref->rows + (size_t)i * ref->V, *b = got->rows + (size_t)i * ref->V;
        double num = 0, den = 0;
        for (int v = 0; v < ref->V; v++) {
            num += ((double)a[v] - b[v]) * ((double)a[v] - b[v]);
            den += (double)a[v] * a[v];
        }
        double rel = sqrt(num / (den > 0 ? den : 1));
        if (rel > worst) worst = rel;
    }
    CHECK_MSG(worst < S_REL_TOL, "%s: worst relative L2 %.3g", what, worst);
    CHECK_MSG(memcmp(ref->toks, got->toks, sizeof ref->toks) == 0, "%s: greedy tokens differ",
              what);
    fprintf(stderr, "%s: %d logits rows, worst relative L2 %.3g vs world 1\n", what, ref->n_rows,
            worst);
}

static void test_numerics(const char *model, const int *worlds, int n_worlds, ops_kv_dtype_t dt) {
    s_out_t ref = {0};
    int rc = s_script(model, 0, 1, NULL, dt, &ref);
    CHECK(rc == 0);
    for (int i = 0; i < n_worlds && rc == 0; i++) {
        s_out_t got = {0};
        char what[600];
        snprintf(what, sizeof what, "%s tp %d kv %s", model, worlds[i],
                 dt == OPS_KV_BF16 ? "bf16" : "f32");
        CHECK_MSG(s_script_tp(model, worlds[i], dt, &got) == 0, "%s", what);
        s_compare(&ref, &got, what);
        free(got.rows);
    }
    free(ref.rows);
}

/* ---- the shard daemon over the protocol ------------------------------------------------ */

static void *s_ctx;
static char s_endpoint[128];

/* Starts gptoss-shardd --endpoint EP with extra arguments (NULL-terminated). */
static pid_t s_spawn(const char *const *extra) {
    char bin[1024];
    snprintf(bin, sizeof bin, "%s/gptoss-shardd", tcheck_bindir());
    const char *argv[32] = {bin, "--endpoint", s_endpoint};
    int n = 3;
    for (int i = 0; extra[i] && n < 30; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        execv(bin, (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    s_track(pid);
    return pid;
}

#include "shard_harness.h"

/* Waits for one cmd/seq message from each shard k < n with want[k] (heartbeats skipped),
 * beating every shard every 250 ms. Fills got[k]; returns how many came. A message that is
 * not the expected one is kept in got[k] too (the caller sees its cmd). */
static int s_collect(void *r, int n, const bool *want, uint8_t cmd, uint64_t seq, s_in_t *got,
                     int timeout_ms) {
    long long end = s_now_ms() + timeout_ms, next_beat = 0;
    bool have[8] = {false};
    int count = 0, need = 0;
    for (int k = 0; k < n; k++) {
        memset(&got[k], 0, sizeof got[k]);
        need += want[k];
    }
    while (count < need) {
        long long now = s_now_ms();
        if (now >= end) break;
        if (now >= next_beat) {
            for (int k = 0; k < n; k++) {
                char id[32];
                snprintf(id, sizeof id, "shard-%d", k);
                s_send(r, id, PROTO_HEARTBEAT, 0, 0, "", 0);
            }
            next_beat = now + 250;
        }
        s_in_t in;
        int rc = s_recv(r, (int)(next_beat - now), &in);
        if (rc < 0) break;
        if (rc == 0) continue;
        int k = -1;
        char tail[16] = "";
        if (sscanf(in.id, "shard-%d%15s", &k, tail) < 1 || k < 0 || k >= n || tail[0] ||
            (in.hdr_ok && in.h.cmd == PROTO_HEARTBEAT) || !want[k] || have[k]) {
            if (!tail[0] && !(in.hdr_ok && in.h.cmd == PROTO_HEARTBEAT))
                fprintf(stderr, "test: unexpected message from '%s' (cmd %d)\n", in.id,
                        in.hdr_ok ? in.h.cmd : -1);
            s_in_free(&in);
            continue;
        }
        if (!(in.hdr_ok && in.h.cmd == cmd && in.h.seq == seq))
            fprintf(stderr, "test: from %s expected %s seq %llu, got %s seq %llu: %s\n", in.id,
                    proto_cmd_name(cmd), (unsigned long long)seq,
                    in.hdr_ok ? proto_cmd_name(in.h.cmd) : "bad header",
                    (unsigned long long)in.h.seq, in.body ? (const char *)in.body : "");
        got[k] = in;
        have[k] = true;
        count++;
    }
    return count;
}

static bool s_is(const s_in_t *in, uint8_t cmd, uint64_t seq) {
    return in->hdr_ok && in->h.cmd == cmd && in->h.seq == seq;
}

static void *s_router(void) {
    void *r = zmq_socket(s_ctx, ZMQ_ROUTER);
    int linger = 0, one = 1;
    if (!r || zmq_setsockopt(r, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(r, ZMQ_ROUTER_MANDATORY, &one, sizeof one) || zmq_bind(r, s_endpoint)) {
        fprintf(stderr, "test: cannot bind %s: %s\n", s_endpoint, zmq_strerror(zmq_errno()));
        if (r) zmq_close(r);
        return NULL;
    }
    return r;
}

static char *s_load_json(const char *model, const char *comm_name, int timeout_ms) {
    char *buf = malloc(2048);
    if (!buf) return NULL;
    snprintf(buf, 2048,
             "{\"model\":\"%s\",\"kv_dtype\":\"f32\",\"block_size\":16,\"kv_full_blocks\":8,"
             "\"kv_window_blocks\":8,\"max_seqs\":2,\"max_chunk\":64,\"threads\":1,"
             "\"comm\":\"shm\",\"comm_name\":\"%s\",\"comm_timeout_ms\":%d,\"vocab_limit\":512}",
             model, comm_name, timeout_ms);
    return buf;
}

static int s_json_int(const char *body, const char *k) {
    cJSON *o = cJSON_Parse(body ? body : "");
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    int v = cJSON_IsNumber(it) ? it->valueint : -12345;
    cJSON_Delete(o);
    return v;
}

/* A greedy sequence in slot 0 with block tables for positions [0, start + n), bs 16. */
static proto_seq_t s_seq(const int32_t *tok, int n, int start, int prompt_len, int32_t *full,
                         int32_t *win, uint32_t flags) {
    int end = start + n, need = (end + 15) / 16;
    for (int b = 0; b < need; b++) {
        full[b] = b;
        win[b] = (b + 1) * 16 <= start - 8 + 1 ? -1 : b; /* tiny-a's window is 8 */
    }
    return (proto_seq_t){.slot = 0,
                         .n_tokens = (uint32_t)n,
                         .start_pos = (uint32_t)start,
                         .prompt_len = (uint32_t)prompt_len,
                         .n_full = (uint32_t)need,
                         .n_window = (uint32_t)need,
                         .flags = flags,
                         .top_p = 1.0f,
                         .repetition_penalty = 1.0f,
                         .seed = 7,
                         .n_logprobs = 2,
                         .tokens = tok,
                         .full = full,
                         .window = win};
}

/* Sends one STEP to both shards; returns rank 0's token (>= 0), or -1 on any failure. */
static int32_t s_step2(void *r, uint64_t seq, const proto_seq_t *q) {
    proto_buf_t b = {0};
    if (proto_step_encode(q, 1, &b)) return -1;
    s_send(r, "shard-0", PROTO_STEP, 0, seq, b.data, b.len);
    s_send(r, "shard-1", PROTO_STEP, 1, seq, b.data, b.len);
    proto_buf_free(&b);
    s_in_t got[2];
    int n = s_collect(r, 2, (const bool[]){true, true}, PROTO_RESULT, seq, got, 20000);
    int32_t tok = -1;
    if (n == 2 && s_is(&got[0], PROTO_RESULT, seq) && s_is(&got[1], PROTO_RESULT, seq)) {
        proto_sample_t *s = NULL;
        uint32_t ns = 0;
        double ms;
        gerr_t err;
        if (proto_result_decode(got[0].body, got[0].len, &s, &ns, &ms, &err) == 0 && ns == 1)
            tok = s[0].token;
        free(s);
        s = NULL;
        CHECK(proto_result_decode(got[1].body, got[1].len, &s, &ns, &ms, &err) == 0 && ns == 0);
        free(s);
    }
    s_in_free(&got[0]);
    s_in_free(&got[1]);
    return tok;
}

static void test_shardd_world2(void) {
    void *r = s_router();
    CHECK(r != NULL);
    if (!r) return;
    char name[64], model[1024];
    snprintf(name, sizeof name, "/gptoss-test-tpd-%ld", (long)getpid());
    snprintf(model, sizeof model, "%s/tiny-a", tcheck_fixtures());
    gerr_t err = {{0}};
    comm_shm_unlink(name, &err);
    CHECK_MSG(comm_shm_create(name, 2, 0, &err) == 0, "%s", err.msg); /* as the gateway does */
    int32_t *ids = NULL, *cont = NULL;
    int n_ids = 0, n_cont = 0;
    CHECK(s_read_case(0, &ids, &n_ids, &cont, &n_cont) == 0 && n_cont >= 4);
    if (!ids || !cont || n_cont < 4) goto out;
    pid_t p0 = s_spawn((const char *const[]){"--rank", "0", "--world", "2", "--threads", "1",
                                             "--heartbeat-ms", "500", NULL});
    pid_t p1 = s_spawn((const char *const[]){"--rank", "1", "--world", "2", "--threads", "1",
                                             "--heartbeat-ms", "500", NULL});
    CHECK(p0 > 0 && p1 > 0);
    s_in_t got[2];
    int n = s_collect(r, 2, (const bool[]){true, true}, PROTO_HELLO, 0, got, 20000);
    CHECK(n == 2 && s_is(&got[0], PROTO_HELLO, 0) && s_is(&got[1], PROTO_HELLO, 0));
    CHECK(s_json_int((const char *)got[1].body, "world") == 2);
    s_in_free(&got[0]);
    s_in_free(&got[1]);
    char *load = s_load_json(model, name, 5000);
    CHECK(load != NULL);
    if (!load) goto out;
    s_send(r, "shard-0", PROTO_LOAD, 0, 0, load, strlen(load));
    s_send(r, "shard-1", PROTO_LOAD, 1, 0, load, strlen(load));
    free(load);
    n = s_collect(r, 2, (const bool[]){true, true}, PROTO_READY, 0, got, 20000);
    CHECK(n == 2 && s_is(&got[0], PROTO_READY, 0) && s_is(&got[1], PROTO_READY, 0));
    for (int k = 0; k < 2 && n == 2; k++) {
        CHECK(s_json_int((const char *)got[k].body, "kv_full_blocks") >= 8);
        CHECK(s_json_int((const char *)got[k].body, "vocab") == 512);
    }
    if (n == 2)
        CHECK(s_json_int((const char *)got[0].body, "kv_window_blocks") ==
              s_json_int((const char *)got[1].body, "kv_window_blocks"));
    s_in_free(&got[0]);
    s_in_free(&got[1]);

    /* greedy generation: prefill, then decode feeding tokens back */
    int32_t full[8], win[8];
    int32_t gen[64];
    int n_gen = 0, n_want = n_cont < 8 ? n_cont : 8;
    proto_seq_t q = s_seq(ids, n_ids, 0, n_ids, full, win, PROTO_SEQ_SAMPLE | PROTO_SEQ_NEW);
    gen[n_gen++] = s_step2(r, 1, &q);
    while (n_gen < n_want && gen[n_gen - 1] >= 0) {
        int pos = n_ids + n_gen - 1;
        ids[pos] = gen[n_gen - 1];
        proto_seq_t d = s_seq(ids + pos, 1, pos, n_ids, full, win, PROTO_SEQ_SAMPLE);
        gen[n_gen] = s_step2(r, 1 + (uint64_t)n_gen, &d);
        n_gen++;
    }
    bool same = n_gen == n_want;
    for (int i = 0; i < n_gen; i++)
        same &= gen[i] == cont[i];
    CHECK_MSG(same, "world-2 greedy tokens differ from expected.json (first %d/%d)", gen[0],
              cont[0]);

    /* kill rank 1: rank 0's next step fails (STEP_ERROR) and it exits 4, well within the
     * comm timeout (the dead peer is noticed, not waited for) */
    kill(p1, SIGKILL);
    CHECK(s_wait_exit(p1, 5000) == 128 + SIGKILL);
    long long t0 = s_now_ms();
    int pos = n_ids + n_gen - 1;
    ids[pos] = gen[n_gen - 1];
    proto_seq_t d = s_seq(ids + pos, 1, pos, n_ids, full, win, PROTO_SEQ_SAMPLE);
    proto_buf_t b = {0};
    CHECK(proto_step_encode(&d, 1, &b) == 0);
    s_send(r, "shard-0", PROTO_STEP, 0, 99, b.data, b.len);
    proto_buf_free(&b);
    n = s_collect(r, 1, (const bool[]){true}, PROTO_STEP_ERROR, 99, got, 20000);
    CHECK(n == 1 && s_is(&got[0], PROTO_STEP_ERROR, 99));
    CHECK_MSG(got[0].body && strstr((const char *)got[0].body, "comm") != NULL, "%s",
              got[0].body ? (const char *)got[0].body : "(none)");
    if (n == 1) s_in_free(&got[0]);
    int st = s_wait_exit(p0, 10000);
    CHECK_MSG(st == 4, "rank 0 exit status %d after its peer died, expected 4", st);
    fprintf(stderr, "world 2: peer killed -> STEP_ERROR and exit %d after %lld ms\n", st,
            s_now_ms() - t0);
    CHECK(s_now_ms() - t0 < 5000);
out:
    free(ids);
    free(cont);
    s_kill_all();
    comm_shm_unlink(name, &err);
    zmq_close(r);
}

/* LOAD refused on rank 0 of a world: LOAD_ERROR containing want, exit status 2. */
static void test_shardd_load_error(const char *world, const char *comm_name, const char *want) {
    void *r = s_router();
    CHECK(r != NULL);
    if (!r) return;
    char model[1024];
    snprintf(model, sizeof model, "%s/tiny-a", tcheck_fixtures());
    pid_t pid = s_spawn((const char *const[]){"--rank", "0", "--world", world, "--threads", "1",
                                              "--heartbeat-ms", "500", NULL});
    s_in_t got[1];
    int n = s_collect(r, 1, (const bool[]){true}, PROTO_HELLO, 0, got, 20000);
    CHECK(n == 1);
    if (n == 1) s_in_free(&got[0]);
    char *load = s_load_json(model, comm_name, 500);
    if (load) s_send(r, "shard-0", PROTO_LOAD, 0, 0, load, strlen(load));
    free(load);
    n = s_collect(r, 1, (const bool[]){true}, PROTO_LOAD_ERROR, 0, got, 20000);
    CHECK(n == 1 && s_is(&got[0], PROTO_LOAD_ERROR, 0));
    CHECK_MSG(n == 1 && got[0].body && strstr((const char *)got[0].body, want) != NULL,
              "LOAD_ERROR %s (want %s)", n == 1 && got[0].body ? (char *)got[0].body : "(none)",
              want);
    if (n == 1) s_in_free(&got[0]);
    int st = s_wait_exit(pid, 10000);
    CHECK_MSG(st == 2, "exit status %d, expected 2", st);
    s_kill_all();
    zmq_close(r);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    char tiny[1024];
    snprintf(tiny, sizeof tiny, "%s/tiny-a", tcheck_fixtures());
    snprintf(s_gen_model, sizeof s_gen_model, "/tmp/gptoss-test-tp-%ld", (long)getpid());
    char bin[1024];
    snprintf(bin, sizeof bin, "%s/gptoss-mkmodel", tcheck_bindir());
    int mk = s_run((const char *const[]){bin, "--out", s_gen_model, "--preset", "tiny", "--heads",
                                         "8", "--kv-heads", "4", "--intermediate", "96", "--hidden",
                                         "64", "--vocab", "1000", NULL});
    CHECK_MSG(mk == 0, "gptoss-mkmodel exit status %d", mk);
    /* experts large enough that a shard's rows of one expert span many pages (512 KiB) */
    char big[600];
    snprintf(big, sizeof big, "%s-big", s_gen_model);
    int mk2 = s_run((const char *const[]){bin, "--out", big, "--preset", "tiny", "--layers", "1",
                                          "--heads", "8", "--kv-heads", "4", "--intermediate",
                                          "2048", "--hidden", "512", "--vocab", "1000", NULL});
    CHECK_MSG(mk2 == 0, "gptoss-mkmodel exit status %d", mk2);
    if (mk != 0 || mk2 != 0) return tcheck_done("test_tp");

    test_slices(tiny);
    test_numerics(tiny, (const int[]){2}, 1, OPS_KV_F32);
    test_numerics(s_gen_model, (const int[]){2, 4}, 2, OPS_KV_F32);
    test_numerics(s_gen_model, (const int[]){2, 4}, 2, OPS_KV_BF16);
    s_guard_pages = true; /* rank 1 never reads rank 0's slices */
    test_numerics(big, (const int[]){2}, 1, OPS_KV_F32);
    s_guard_pages = false;

    snprintf(s_endpoint, sizeof s_endpoint, "ipc:///tmp/gptoss-test-tp-%ld-%lld.ipc",
             (long)getpid(), s_now_ms());
    s_ctx = zmq_ctx_new();
    CHECK(s_ctx != NULL);
    if (s_ctx) {
        test_shardd_world2();
        test_shardd_load_error("4", "/gptoss-test-tp-none", "tp 4 does not divide");
        char lonely[64]; /* a segment whose rank 1 never comes */
        snprintf(lonely, sizeof lonely, "/gptoss-test-tpl-%ld", (long)getpid());
        gerr_t err = {{0}};
        CHECK(comm_shm_create(lonely, 2, 0, &err) == 0);
        test_shardd_load_error("2", lonely, "comm");
        comm_shm_unlink(lonely, &err);
        s_kill_all();
        zmq_ctx_term(s_ctx);
        unlink(s_endpoint + strlen("ipc://"));
    }
    char path[800];
    const char *files[] = {"config.json", "generation_config.json", "model.safetensors"};
    for (int m = 0; m < 2; m++) {
        const char *dir = m ? big : s_gen_model;
        for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
            snprintf(path, sizeof path, "%s/%s", dir, files[i]);
            unlink(path);
        }
        rmdir(dir);
    }
    return tcheck_done("test_tp");
}
