/* gptoss-run: offline generation with one process and no gateway.
 *
 *   gptoss-run --model DIR (--prompt-ids 1,2,3 | --text STR | --chat STR)
 *              [--max-tokens N] [--temperature T] [--top-p P] [--top-k K] [--seed S]
 *              [--threads N] [--ignore-eos] [--dump-logits FILE]
 *              [--kv-dtype f32|bf16] [--kv-budget-mb N] [--prefill-chunk N] [--isa NAME]
 *              [--tp N]
 *
 * Loads the model (weights stay mmapped), prefills the prompt (in chunks), then
 * decodes one token per step with the CPU engine. Generated ids go to stdout (and
 * the text, when the folder has a tokenizer); prefill and decode speeds to stderr.
 * --dump-logits writes {"input_ids","logits_last","argmax_all","generated"}: the
 * logits of the last prompt position (%.9g) and the argmax at every prompt position,
 * the tool the numerics tests use. Not a server: one sequence, no batching.
 *
 * --tp N runs the model tensor-parallel over N processes on one host: the process
 * creates a shm comm segment, forks ranks 1..N-1 (each loads only its slice with
 * weights_load_shard and its own CPU threads: --threads each, default CPUs / N), and
 * stays rank 0, which samples, broadcasts each next token and alone prints or dumps,
 * exactly as with one process, so the numerics of a sliced model can be compared
 * offline. A failing rank breaks the comm; the others fail within its timeout and
 * rank 0 exits 1 after reaping the children. */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "comm.h"
#include "cpu/ops_cpu.h"
#include "engine.h"
#include "gerr.h"
#include "kvcache.h"
#include "weights.h"
#if __has_include("tokenizer.h")
#include "tokenizer.h"
#define S_HAVE_TOK 1
#endif
#if __has_include("harmony.h")
#include "harmony.h"
#define S_HAVE_HARMONY 1
#endif
#if __has_include("sampling.h")
#include "sampling.h"
#define S_HAVE_SAMPLING 1
#endif

typedef struct {
    const char *model, *prompt_ids, *text, *chat, *dump, *isa;
    int max_tokens, top_k, threads, prefill_chunk, tp;
    double temperature, top_p;
    uint64_t seed;
    bool seed_set, ignore_eos;
    ops_kv_dtype_t kv_dtype;
    long kv_budget_mb;
} s_args_t;

static int s_usage(void) {
    fprintf(stderr,
            "usage: gptoss-run --model DIR (--prompt-ids 1,2,3 | --text STR | --chat STR)\n"
            "                  [--max-tokens N] [--temperature T] [--top-p P] [--top-k K]\n"
            "                  [--seed S] [--threads N] [--ignore-eos] [--dump-logits FILE]\n"
            "                  [--kv-dtype f32|bf16] [--kv-budget-mb N] [--prefill-chunk N]\n"
            "                  [--isa auto|generic|avx2|avx512] [--tp N]\n");
    return 2;
}

static double s_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int s_parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int s_parse_args(int argc, char **argv, s_args_t *a) {
    *a = (s_args_t){
        .max_tokens = 16, .temperature = 1.0, .top_p = 1.0, .kv_budget_mb = 1024, .tp = 1};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "--ignore-eos") == 0) {
            a->ignore_eos = true;
            continue;
        }
        if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) return -1;
        if (i + 1 >= argc) {
            fprintf(stderr, "gptoss-run: %s needs a value\n", o);
            return -1;
        }
        const char *v = argv[++i];
        long n;
        char *end;
        if (strcmp(o, "--model") == 0)
            a->model = v;
        else if (strcmp(o, "--prompt-ids") == 0)
            a->prompt_ids = v;
        else if (strcmp(o, "--text") == 0)
            a->text = v;
        else if (strcmp(o, "--chat") == 0)
            a->chat = v;
        else if (strcmp(o, "--dump-logits") == 0)
            a->dump = v;
        else if (strcmp(o, "--isa") == 0)
            a->isa = v;
        else if (strcmp(o, "--kv-dtype") == 0) {
            if (strcmp(v, "f32") == 0 || strcmp(v, "fp32") == 0)
                a->kv_dtype = OPS_KV_F32;
            else if (strcmp(v, "bf16") == 0)
                a->kv_dtype = OPS_KV_BF16;
            else {
                fprintf(stderr, "gptoss-run: --kv-dtype must be f32 or bf16\n");
                return -1;
            }
        } else if (strcmp(o, "--max-tokens") == 0 || strcmp(o, "--top-k") == 0 ||
                   strcmp(o, "--threads") == 0 || strcmp(o, "--prefill-chunk") == 0 ||
                   strcmp(o, "--kv-budget-mb") == 0) {
            if (s_parse_long(v, 0, 1L << 30, &n)) {
                fprintf(stderr, "gptoss-run: %s must be an integer >= 0, got '%s'\n", o, v);
                return -1;
            }
            if (o[2] == 'm')
                a->max_tokens = (int)n;
            else if (o[2] == 't' && o[3] == 'o')
                a->top_k = (int)n;
            else if (o[2] == 't')
                a->threads = (int)n;
            else if (o[2] == 'p')
                a->prefill_chunk = (int)n;
            else
                a->kv_budget_mb = n;
        } else if (strcmp(o, "--tp") == 0) {
            if (s_parse_long(v, 1, COMM_MAX_WORLD, &n)) {
                fprintf(stderr, "gptoss-run: --tp must be an integer in 1..%d, got '%s'\n",
                        COMM_MAX_WORLD, v);
                return -1;
            }
            a->tp = (int)n;
        } else if (strcmp(o, "--temperature") == 0 || strcmp(o, "--top-p") == 0) {
            errno = 0;
            double d = strtod(v, &end);
            if (errno || end == v || *end || !isfinite(d) || d < 0) {
                fprintf(stderr, "gptoss-run: %s must be a number >= 0, got '%s'\n", o, v);
                return -1;
            }
            if (o[2] == 't')
                a->temperature = d;
            else
                a->top_p = d;
        } else if (strcmp(o, "--seed") == 0) {
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (errno || end == v || *end || v[0] == '-') {
                fprintf(stderr, "gptoss-run: --seed must be a non-negative integer\n");
                return -1;
            }
            a->seed = s;
            a->seed_set = true;
        } else {
            fprintf(stderr, "gptoss-run: unknown option %s\n", o);
            return -1;
        }
    }
    int n_src = !!a->prompt_ids + !!a->text + !!a->chat;
    if (!a->model || n_src != 1) {
        fprintf(stderr, "gptoss-run: need --model and exactly one of --prompt-ids, --text, "
                        "--chat\n");
        return -1;
    }
    return 0;
}

/* Parses "1,2,3" into a malloc'd array. */
static int s_parse_ids(const char *s, int vocab, int32_t **out, int *n_out) {
    int cap = 16, n = 0;
    int32_t *ids = malloc(sizeof *ids * (size_t)cap);
    if (!ids) return -1;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || v < 0 || v >= vocab) {
            fprintf(stderr,
                    "gptoss-run: --prompt-ids: bad id near '%.20s' (ids are integers in "
                    "[0, %d) separated by commas)\n",
                    p, vocab);
            free(ids);
            return -1;
        }
        if (n == cap) {
            int32_t *t = realloc(ids, sizeof *ids * (size_t)(cap *= 2));
            if (!t) {
                free(ids);
                return -1;
            }
            ids = t;
        }
        ids[n++] = (int32_t)v;
        p = end;
        if (*p == ',')
            p++;
        else if (*p) {
            fprintf(stderr, "gptoss-run: --prompt-ids: unexpected '%c'\n", *p);
            free(ids);
            return -1;
        }
    }
    if (n == 0) {
        fprintf(stderr, "gptoss-run: --prompt-ids is empty\n");
        free(ids);
        return -1;
    }
    *out = ids;
    *n_out = n;
    return 0;
}

static int32_t s_argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static void s_write_ids(FILE *f, const int32_t *ids, int n) {
    fputc('[', f);
    for (int i = 0; i < n; i++)
        fprintf(f, "%s%d", i ? "," : "", ids[i]);
    fputc(']', f);
}

/* --tp: creates segment name for a.tp ranks and forks ranks 1..tp-1 (their pids into kids).
 * Returns this process's rank (0 in the parent) or -1 with err set. */
static int s_tp_fork(const s_args_t *a, const char *name, pid_t *kids, gerr_t *err) {
    if (comm_shm_create(name, a->tp, 0, err)) return -1;
    pid_t parent = getpid();
    fflush(NULL);
    for (int r = 1; r < a->tp; r++) {
        pid_t pid = fork();
        if (pid < 0) {
            gerr_set(err, "fork: %s", strerror(errno));
            return -1;
        }
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent) _exit(1);
            return r;
        }
        kids[r] = pid;
    }
    return 0;
}

/* Rank 0: waits for the forked ranks; returns how many failed. */
static int s_tp_reap(const pid_t *kids, int tp) {
    int failed = 0;
    for (int r = 1; r < tp; r++) {
        if (kids[r] <= 0) continue;
        int st = 0;
        while (waitpid(kids[r], &st, 0) < 0 && errno == EINTR) {
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "gptoss-run: rank %d failed (%s %d)\n", r,
                    WIFEXITED(st) ? "exit status" : "signal",
                    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
            failed++;
        }
    }
    return failed;
}

int main(int argc, char **argv) {
    s_args_t a;
    if (s_parse_args(argc, argv, &a)) return s_usage();
    gerr_t err = {{0}};
    int rc = 1, rank = 0;
    comm_t *comm = NULL;
    char comm_name[64] = "";
    pid_t kids[COMM_MAX_WORLD] = {0};
    if (a.tp > 1) {
        snprintf(comm_name, sizeof comm_name, "/gptoss-run-%ld-%ld", (long)getpid(),
                 (long)time(NULL));
        if (a.threads == 0) {
            long cpus = sysconf(_SC_NPROCESSORS_ONLN);
            a.threads = cpus > a.tp ? (int)(cpus / a.tp) : 1;
        }
        gptoss_config_t cfg; /* refuse a world the model cannot split before forking */
        weights_slice_t sl;
        if (config_load(a.model, &cfg, &err) || weights_slice(&cfg, 0, a.tp, &sl, &err)) {
            fprintf(stderr, "gptoss-run: --tp %d: %s\n", a.tp, err.msg);
            return 1;
        }
        rank = s_tp_fork(&a, comm_name, kids, &err);
        if (rank < 0) {
            fprintf(stderr, "gptoss-run: --tp %d: %s\n", a.tp, err.msg);
            comm_shm_abort_name(comm_name, &err);
            s_tp_reap(kids, a.tp);
            comm_shm_unlink(comm_name, &err);
            return 1;
        }
        if (rank > 0 && !freopen("/dev/null", "w", stdout)) _exit(1); /* rank 0 speaks */
    }
    weights_t *w = NULL;
    ops_t *ops = NULL;
    engine_t *eng = NULL;
    int32_t *prompt = NULL, *gen = NULL, *argmax_all = NULL;
    float *logits = NULL, *last = NULL;
    int n_prompt = 0, n_gen = 0;
    kvcache_seq_t seq = {0};
#ifdef S_HAVE_TOK
    tokenizer_t *tok = NULL;
#endif
#ifdef S_HAVE_SAMPLING
    sampling_ws_t *ws = NULL;
    sampling_history_t *hist = NULL;
#endif

    if (weights_load_shard(a.model, rank, a.tp, &w, &err)) goto fail;
    if (a.tp > 1 && comm_shm_new(comm_name, rank, a.tp, NULL, &comm, &err)) goto fail;
    const gptoss_config_t *c = &w->cfg;
    if (a.prompt_ids) {
        if (s_parse_ids(a.prompt_ids, c->vocab_size, &prompt, &n_prompt)) goto fail;
    } else {
#ifdef S_HAVE_TOK
        if (tok_load(a.model, &tok, &err)) {
            gerr_prefix(&err, "--text/--chat need the model folder's tokenizer.json");
            goto fail;
        }
        tok_ids_t ids = {0};
        if (a.text) {
            if (tok_encode(tok, a.text, strlen(a.text), &ids)) {
                gerr_set(&err, "cannot encode --text");
                goto fail;
            }
        } else {
#ifdef S_HAVE_HARMONY
            harmony_conv_t *conv = harmony_conv_new();
            if (!conv || !harmony_conv_add_msg(conv, HARMONY_ROLE_USER, a.chat, NULL) ||
                harmony_render_ids(conv, tok, &ids, &err)) {
                harmony_conv_free(&conv);
                gerr_prefix(&err, "cannot render --chat as a harmony prompt");
                goto fail;
            }
            harmony_conv_free(&conv);
#else
            gerr_set(&err, "--chat is not available in this build (no harmony module)");
            goto fail;
#endif
        }
        prompt = ids.ids;
        n_prompt = (int)ids.len;
        if (n_prompt == 0) {
            gerr_set(&err, "the prompt encodes to no tokens");
            goto fail;
        }
#else
        gerr_set(&err, "--text/--chat are not available in this build (no tokenizer module)");
        goto fail;
#endif
    }

    if (ops_cpu_new(a.threads, a.isa, &ops, &err)) goto fail;
    int chunk = a.prefill_chunk > 0 ? a.prefill_chunk : 512;
    if (a.dump && chunk > 64) chunk = 64; /* all-position logits: keep the buffer small */
    engine_opts_t eo = {.kv_dtype = a.kv_dtype,
                        .kv_budget_bytes = (size_t)a.kv_budget_mb << 20,
                        .max_seqs = 1,
                        .max_chunk = chunk,
                        .comm = comm};
    if (engine_new(w, ops, &eo, &eng, &err)) goto fail;
    const int V = engine_vocab(eng);
    /* one row per step unless every prompt position's logits are wanted */
    logits = malloc(sizeof(float) * (size_t)V * (size_t)(a.dump ? chunk : 1));
    if (rank > 0) { /* the engine gives logits to rank 0 only */
        free(logits);
        logits = NULL;
    }
    last = malloc(sizeof(float) * (size_t)V);
    gen = malloc(sizeof(int32_t) * (size_t)(a.max_tokens + 1));
    argmax_all = malloc(sizeof(int32_t) * (size_t)n_prompt);
    if ((!logits && rank == 0) || !last || !gen || !argmax_all) {
        gerr_set(&err, "out of memory for logits");
        goto fail;
    }
    if (rank == 0)
        fprintf(
            stderr, "gptoss-run: %s, %d layers, backend %s with %d threads, KV %s %zu MiB, tp %d\n",
            a.model, c->num_hidden_layers, ops->name, ops_cpu_threads(ops),
            a.kv_dtype == OPS_KV_BF16 ? "bf16" : "f32", kvcache_bytes(engine_kv(eng)) >> 20, a.tp);

    /* prefill */
    kvcache_t *kv = engine_kv(eng);
    double t0 = s_now();
    for (int p = 0; p < n_prompt; p += chunk) {
        int n = n_prompt - p < chunk ? n_prompt - p : chunk;
        if (kvcache_seq_reserve(kv, &seq, p, p + n, &err)) goto fail;
        engine_seq_t s = {.tokens = prompt + p,
                          .n_tokens = n,
                          .start_pos = p,
                          .full_blocks = seq.full,
                          .n_full_blocks = seq.n_full,
                          .window_blocks = seq.window,
                          .n_window_blocks = seq.n_window,
                          .all_logits = a.dump != NULL};
        if (engine_step(eng, &s, 1, logits, &err)) goto fail;
        if (rank > 0) continue;
        int rows = engine_logits_rows(&s, 1);
        for (int r = 0; r < rows; r++)
            argmax_all[p + n - rows + r] = s_argmax(logits + (size_t)r * V, V);
        memcpy(last, logits + (size_t)(rows - 1) * V, sizeof(float) * (size_t)V);
    }
    double t_prefill = s_now() - t0;

    /* stop ids: config eos plus <|return|> and <|call|> when the vocabulary has them */
    int32_t stops[CONFIG_MAX_EOS + 2];
    int n_stop = 0;
    for (int i = 0; i < c->n_eos; i++)
        stops[n_stop++] = c->eos_token_ids[i];
    if (c->vocab_size > 200002) stops[n_stop++] = 200002;
    if (c->vocab_size > 200012) stops[n_stop++] = 200012;

#ifdef S_HAVE_SAMPLING
    sampling_params_t sp;
    sampling_params_init(&sp);
    sp.temperature = a.temperature;
    sp.top_p = a.top_p == 0 ? 1.0 : a.top_p;
    sp.top_k = a.top_k;
    sp.seed =
        a.seed_set ? a.seed : ((uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ (uint64_t)clock());
    sp.seed_set = a.seed_set;
    if (sampling_params_validate(&sp, V, &err)) goto fail;
    ws = sampling_ws_new();
    hist = sampling_history_new();
    if (!ws || !hist) {
        gerr_set(&err, "out of memory");
        goto fail;
    }
    for (int i = 0; i < n_prompt; i++)
        if (sampling_history_add(hist, prompt[i], false, &err)) goto fail;
#else
    if (a.temperature > 0)
        fprintf(stderr, "gptoss-run: sampling module not built; using greedy decoding\n");
#endif

    /* decode */
    double t1 = s_now();
    int pos = n_prompt;
    const float *cur = last;
    while (n_gen < a.max_tokens) {
        int32_t next = 0;
        if (rank == 0) {
#ifdef S_HAVE_SAMPLING
            sampling_result_t sr;
            if (sampling_sample(&sp, hist, cur, V, (uint64_t)pos, ws, &sr, &err)) goto fail;
            next = sr.token;
            if (sampling_history_add(hist, next, true, &err)) goto fail;
#else
            next = s_argmax(cur, V);
#endif
        }
        /* rank 0 decides the next token and whether to stop; the others follow */
        int32_t msg[2] = {next, 0};
        if (rank == 0)
            for (int i = 0; i < n_stop && !a.ignore_eos; i++)
                msg[1] |= next == stops[i];
        if (comm && comm_broadcast(comm, msg, sizeof msg, 0, &err)) goto fail;
        next = msg[0];
        gen[n_gen++] = next;
        if (msg[1] || n_gen == a.max_tokens) break;
        if (kvcache_seq_reserve(kv, &seq, pos, pos + 1, &err)) goto fail;
        engine_seq_t s = {.tokens = &next,
                          .n_tokens = 1,
                          .start_pos = pos,
                          .full_blocks = seq.full,
                          .n_full_blocks = seq.n_full,
                          .window_blocks = seq.window,
                          .n_window_blocks = seq.n_window};
        if (engine_step(eng, &s, 1, logits, &err)) goto fail;
        cur = logits;
        pos++;
    }
    double t_decode = s_now() - t1;
    int n_decode_steps = n_gen > 0 ? n_gen - 1 : 0;
    if (rank == 0)
        fprintf(stderr,
                "gptoss-run: prefill %d tokens in %.3f s (%.2f tok/s); decode %d tokens in "
                "%.3f s (%.2f tok/s)\n",
                n_prompt, t_prefill, n_prompt / (t_prefill > 0 ? t_prefill : 1e-9), n_decode_steps,
                t_decode, n_decode_steps / (t_decode > 0 ? t_decode : 1e-9));

    /* output */
    s_write_ids(stdout, gen, n_gen);
    fputc('\n', stdout);
#ifdef S_HAVE_TOK
    if (tok) {
        size_t len = 0;
        char *text = tok_decode(tok, gen, (size_t)n_gen, &len);
        if (text) {
            fwrite(text, 1, len, stdout);
            fputc('\n', stdout);
            free(text);
        }
    }
#endif
    if (a.dump && rank == 0) {
        FILE *f = fopen(a.dump, "w");
        if (!f) {
            gerr_set(&err, "cannot write %s: %s", a.dump, strerror(errno));
            goto fail;
        }
        fprintf(f, "{\"input_ids\":");
        s_write_ids(f, prompt, n_prompt);
        fprintf(f, ",\n\"logits_last\":[");
        for (int i = 0; i < V; i++)
            fprintf(f, "%s%.9g", i ? "," : "", last[i]);
        fprintf(f, "],\n\"argmax_all\":");
        s_write_ids(f, argmax_all, n_prompt);
        fprintf(f, ",\n\"generated\":");
        s_write_ids(f, gen, n_gen);
        fprintf(f, "}\n");
        if (fclose(f) != 0) {
            gerr_set(&err, "writing %s failed: %s", a.dump, strerror(errno));
            goto fail;
        }
    }
    rc = 0;
    goto out;
fail:
    if (a.tp > 1)
        fprintf(stderr, "gptoss-run: rank %d: %s\n", rank, err.msg[0] ? err.msg : "failed");
    else
        fprintf(stderr, "gptoss-run: %s\n", err.msg[0] ? err.msg : "failed");
    if (comm)
        comm_abort(comm);
    else if (a.tp > 1)
        comm_shm_abort_name(comm_name, &err); /* peers waiting to attach fail at once */
    rc = 1;
out:
    if (eng) kvcache_seq_release(engine_kv(eng), &seq);
    engine_free(&eng);
    ops_cpu_free(&ops);
    weights_free(&w);
#ifdef S_HAVE_TOK
    tok_free(&tok);
#endif
#ifdef S_HAVE_SAMPLING
    sampling_ws_destroy(&ws);
    sampling_history_destroy(&hist);
#endif
    free(prompt);
    free(gen);
    free(argmax_all);
    free(logits);
    free(last);
    comm_destroy(&comm);
    if (a.tp > 1 && rank == 0) {
        if (s_tp_reap(kids, a.tp)) rc = 1;
        comm_shm_unlink(comm_name, &err);
    }
    return rc;
}
