/* shard: LOAD and STEP handling of one gptoss-shardd (see shard.h).
 *
 * LOAD: the gateway names exact KV pool sizes (kv_full_blocks, kv_window_blocks) so that
 * its block allocator and every shard agree on block ids. The engine only takes a byte
 * budget (engine_opts_t -> kvcache_plan), so s_kv_budget inverts kvcache_plan's arithmetic:
 * it picks the max_seqs and budget for which the plan yields exactly the requested full
 * pool and at least the requested window pool (exactly, when the request is a multiple of
 * the plan's per-sequence window blocks, as every kvcache_plan result is), and the sizes are
 * then read back from the cache (kvcache_layer) and reported in READY. An engine_opts_t
 * field for exact pool sizes would make this inversion unnecessary.
 *
 * STEP: the body is decoded and checked (slots, positions, duplicate slots, sampling
 * parameters) before the engine runs, the engine checks tokens and block tables before it
 * writes anything, and only then does rank 0 touch the penalty histories and sample. So a
 * refused step leaves the shard exactly as it was.
 *
 * Tensor parallelism (world > 1): LOAD names "comm": "shm" and the "comm_name" of a segment
 * the gateway created (comm_shm_create) before spawning the group; each shard binds its
 * slice (weights_load_shard: a world that cannot split the model is a LOAD_ERROR), then
 * joins the segment (bounded by "comm_timeout_ms", which also bounds every collective).
 * Every rank runs every STEP; the checks before the engine are the same on every rank
 * (sampling parameters included), so a refused step is refused everywhere before any
 * collective. Rank 0 gets the gathered logits, samples and answers the tokens; the others
 * answer an empty RESULT. A failed collective (peer died, aborted, timed out), or a
 * rank-local failure that would leave the peers waiting (out of memory: the comm is
 * aborted), marks the shard broken (shard_broken): its group cannot step again, and
 * gptoss-shardd answers STEP_ERROR and exits 4 so the supervisor restarts the group. */
#include "shard.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm.h"
#include "cpu/ops_cpu.h"
#include "engine.h"
#include "kvcache.h"
#include "log.h"
#include "sampling.h"
#include "weights.h"
#ifdef GPTOSS_HAVE_CUDA
#include "cuda/ops_cuda.h"
#include "cuda/weights_cuda.h"
#endif

struct shard {
    shard_opts_t o;
    char *run_dir;
    ops_t *ops; /* the CPU backend (owned; made at shard_new, kept for a CUDA LOAD too) */
    int ops_threads;
    /* after LOAD */
    ops_t *gpu;   /* "backend": "cuda": the CUDA backend (owned), else NULL */
    comm_t *comm; /* world > 1: the group's comm (owned) */
    bool broken;  /* a collective failed: no more steps */
    weights_t *w; /* cpu: host weights (weights_free); cuda: device weights (weights_cuda_free) */
    engine_t *eng;
    int vocab;         /* logits row length (engine_vocab) */
    int vocab_limit;   /* ids >= this are never sampled */
    int max_seqs;      /* slots are 0..max_seqs-1 */
    int max_chunk;     /* most new tokens of one sequence per step */
    int n_full_blocks; /* actual pool sizes */
    int n_window_blocks;
    /* rank 0: sampling */
    sampling_history_t **hist; /* [max_seqs], created on first use */
    sampling_ws_t *ws;
    /* step scratch */
    float *logits; /* [cap_rows][vocab] */
    int cap_rows;
    engine_seq_t *eseqs;       /* [cap_seqs] */
    sampling_params_t *params; /* [cap_seqs] */
    proto_sample_t *samples;   /* [cap_seqs] */
    unsigned char *slot_seen;  /* [max_seqs] duplicate check */
    int cap_seqs;
};

static double s_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

int shard_new(const shard_opts_t *opts, shard_t **out, gerr_t *err) {
    *out = NULL;
    if (opts->world < 1 || opts->rank < 0 || opts->rank >= opts->world) {
        gerr_set(err, "rank %d is not in 0..world-1 (world %d)", opts->rank, opts->world);
        return GERR_INVALID;
    }
    if (opts->threads < 0) {
        gerr_set(err, "threads must be >= 0 (0: one per CPU), got %d", opts->threads);
        return GERR_INVALID;
    }
    shard_t *s = calloc(1, sizeof *s);
    if (!s) goto nomem;
    s->o = *opts;
    s->o.run_dir = NULL;
    if (opts->run_dir && !(s->run_dir = strdup(opts->run_dir))) goto nomem;
    s->o.run_dir = s->run_dir;
    int rc = ops_cpu_new(opts->threads, NULL, &s->ops, err);
    if (rc) {
        shard_free(&s);
        return rc;
    }
    s->ops_threads = opts->threads;
    *out = s;
    return 0;
nomem:
    shard_free(&s);
    gerr_set(err, "out of memory");
    return GERR_NOMEM;
}

/* Frees what LOAD made (the shard is unloaded after). */
static void s_unload(shard_t *s) {
    if (s->hist)
        for (int i = 0; i < s->max_seqs; i++)
            sampling_history_destroy(&s->hist[i]);
    free(s->hist);
    s->hist = NULL;
    sampling_ws_destroy(&s->ws);
    engine_free(&s->eng);
    comm_destroy(&s->comm);
#ifdef GPTOSS_HAVE_CUDA
    if (s->gpu) {
        weights_cuda_free(s->gpu, &s->w); /* device weights belong to the CUDA backend */
        ops_cuda_free(&s->gpu);
    }
#endif
    weights_free(&s->w);
    free(s->logits);
    free(s->eseqs);
    free(s->params);
    free(s->samples);
    free(s->slot_seen);
    s->logits = NULL;
    s->eseqs = NULL;
    s->params = NULL;
    s->samples = NULL;
    s->slot_seen = NULL;
    s->cap_rows = s->cap_seqs = 0;
    s->max_seqs = 0;
}

void shard_free(shard_t **ps) {
    if (!ps || !*ps) return;
    shard_t *s = *ps;
    s_unload(s);
    ops_cpu_free(&s->ops);
    free(s->run_dir);
    free(s);
    *ps = NULL;
}

char *shard_hello_json(const shard_t *s) {
    char buf[256];
    int n = snprintf(buf, sizeof buf,
                     "{\"rank\":%d,\"world\":%d,\"pid\":%ld,\"version\":%d,\"backend\":\"%s\"}",
                     s->o.rank, s->o.world, (long)getpid(), PROTO_VERSION, shard_backend_name(s));
    if (n < 0 || (size_t)n >= sizeof buf) return NULL;
    return strdup(buf);
}

const char *shard_backend_name(const shard_t *s) {
    const ops_t *o = s->gpu ? s->gpu : s->ops;
    return o && o->name ? o->name : "cpu";
}

bool shard_loaded(const shard_t *s) {
    return s->eng != NULL;
}

bool shard_broken(const shard_t *s) {
    return s->broken;
}

/* ---- LOAD -------------------------------------------------------------------------- */

/* Reads integer field key of o into *v, in [lo, hi]; required or defaulted to def. */
static int s_json_int(const cJSON *o, const char *key, bool required, long long def, long long lo,
                      long long hi, long long *v, gerr_t *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!it) {
        if (required) {
            gerr_set(err, "LOAD: missing field \"%s\" (an integer in %lld..%lld)", key, lo, hi);
            return GERR_INVALID;
        }
        *v = def;
        return 0;
    }
    double d = cJSON_IsNumber(it) ? it->valuedouble : NAN;
    if (!isfinite(d) || d != floor(d) || d < (double)lo || d > (double)hi) {
        gerr_set(err, "LOAD: field \"%s\" must be an integer in %lld..%lld", key, lo, hi);
        return GERR_INVALID;
    }
    *v = (long long)d;
    return 0;
}

/* Reads string field key of o (borrowed from o); NULL with no error when optional and absent. */
static int s_json_str(const cJSON *o, const char *key, bool required, const char **v, gerr_t *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    *v = NULL;
    if (!it) {
        if (!required) return 0;
        gerr_set(err, "LOAD: missing field \"%s\" (a string)", key);
        return GERR_INVALID;
    }
    if (!cJSON_IsString(it) || !it->valuestring) {
        gerr_set(err, "LOAD: field \"%s\" must be a string", key);
        return GERR_INVALID;
    }
    *v = it->valuestring;
    return 0;
}

/* Engine options whose kvcache_plan gives exactly n_full full blocks and at least n_window
 * window blocks (kvcache.c's arithmetic, inverted). */
static int s_kv_budget(const weights_t *w, ops_kv_dtype_t dt, int bs, int n_full, int n_window,
                       int max_chunk, engine_opts_t *eo, gerr_t *err) {
    const gptoss_config_t *c = &w->cfg;
    int L = c->num_hidden_layers, n_sl = 0;
    for (int l = 0; l < L; l++)
        n_sl += c->layer_sliding[l];
    size_t elt = dt == OPS_KV_F32 ? 4 : 2;
    size_t blk = 2 * (size_t)bs * (size_t)w->n_kv_heads * (size_t)c->head_dim * elt;
    long long per_seq = ((long long)c->sliding_window + max_chunk + bs - 1) / bs + 2;
    long long ms = n_sl ? (n_window + per_seq - 1) / per_seq : 1;
    if (ms < 1) ms = 1;
    if (ms > INT_MAX / per_seq) {
        gerr_set(err, "LOAD: kv_window_blocks %d is too large", n_window);
        return GERR_INVALID;
    }
    size_t win = 0, full = 0, budget = 0;
    if (n_sl && (__builtin_mul_overflow(blk * (size_t)n_sl, (size_t)(ms * per_seq), &win))) {
        gerr_set(err, "LOAD: kv_window_blocks %d overflows the address space", n_window);
        return GERR_INVALID;
    }
    if (__builtin_mul_overflow(blk * (size_t)(L - n_sl), (size_t)n_full, &full) ||
        __builtin_add_overflow(win, full, &budget)) {
        gerr_set(err, "LOAD: kv_full_blocks %d overflows the address space", n_full);
        return GERR_INVALID;
    }
    if (budget == 0) budget = 1; /* engine_new reads 0 as "1 GiB" */
    *eo = (engine_opts_t){.kv_dtype = dt,
                          .block_size = bs,
                          .kv_budget_bytes = budget,
                          .max_seqs = (int)ms,
                          .max_chunk = max_chunk};
    return 0;
}

/* Reads back the pool sizes of the engine's cache. */
static void s_pool_sizes(shard_t *s) {
    const gptoss_config_t *c = &s->w->cfg;
    kvcache_t *kv = engine_kv(s->eng);
    s->n_full_blocks = s->n_window_blocks = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const ops_kv_t *L = kvcache_layer(kv, l);
        if (c->layer_sliding[l])
            s->n_window_blocks = L->n_blocks;
        else
            s->n_full_blocks = L->n_blocks;
    }
}

/* "backend": "cuda": starts the CUDA backend on `device` (s->gpu), binds the model on the host
 * (weights_load_shard), uploads it (weights_cuda_upload) and unmaps the host copy: the device
 * weights_t carries its own config, dims and slice, and neither the engine nor the STEP checks
 * read a host view after the upload. *upload gets the upload's figures. On failure err says why
 * and the caller's s_unload frees what was made. */
static int s_load_cuda(shard_t *s, const char *model, int device, double *upload_s,
                       double *upload_gbps, gerr_t *err) {
#ifdef GPTOSS_HAVE_CUDA
    if (!(s->gpu = ops_cuda_new(device, err))) {
        gerr_prefix(err, "LOAD: backend \"cuda\" device %d", device);
        return GERR_INVALID;
    }
    weights_t *host = NULL;
    int rc = weights_load_shard(model, s->o.rank, s->o.world, &host, err);
    if (rc) {
        gerr_prefix(err, "LOAD: model \"%.512s\"", model);
        return rc;
    }
    weights_cuda_stats_t st = {0};
    rc = weights_cuda_upload(s->gpu, host, &s->w, &st, err);
    weights_free(&host);
    if (rc) {
        gerr_prefix(err, "LOAD: uploading model \"%.512s\" to %s", model, s->gpu->name);
        return rc;
    }
    *upload_s = st.seconds;
    *upload_gbps = st.gbps;
    LOG_INFO("load", "weights on %s: %.2f GB in %.2f s (%.1f GB/s, %d spans); host mapping freed",
             s->gpu->name, (double)st.bytes * 1e-9, st.seconds, st.gbps, st.n_spans);
    return 0;
#else
    (void)s, (void)model, (void)device, (void)upload_s, (void)upload_gbps;
    gerr_set(err, "LOAD: backend \"cuda\": this gptoss-shardd was built without CUDA "
                  "(GPTOSS_CUDA=OFF or no toolkit); rebuild with the CUDA toolkit or use "
                  "\"backend\": \"cpu\"");
    return GERR_INVALID;
#endif
}

int shard_load(shard_t *s, const char *json, size_t len, char **ready, gerr_t *err) {
    *ready = NULL;
    if (shard_loaded(s)) {
        gerr_set(err, "LOAD: the model is already loaded (a shard loads once; restart it to "
                      "load another)");
        return GERR_INVALID;
    }
    double t0 = s_now_ms();
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        gerr_set(err, "LOAD: body is not a JSON object");
        return GERR_FORMAT;
    }
    int rc = GERR_INVALID;
    const char *model, *kv_dtype, *comm, *comm_name, *backend;
    long long bs, n_full, n_win, max_seqs, max_chunk, threads, vocab_limit, comm_timeout, device;
    if ((rc = s_json_str(root, "model", true, &model, err)) ||
        (rc = s_json_str(root, "backend", false, &backend, err)) ||
        (rc = s_json_int(root, "device", false, 0, 0, 1023, &device, err)) ||
        (rc = s_json_str(root, "kv_dtype", false, &kv_dtype, err)) ||
        (rc = s_json_str(root, "comm", false, &comm, err)) ||
        (rc = s_json_str(root, "comm_name", false, &comm_name, err)) ||
        (rc = s_json_int(root, "block_size", true, 0, 1, 4096, &bs, err)) ||
        (rc = s_json_int(root, "kv_full_blocks", true, 0, 0, INT_MAX / 2, &n_full, err)) ||
        (rc = s_json_int(root, "kv_window_blocks", true, 0, 0, INT_MAX / 2, &n_win, err)) ||
        (rc = s_json_int(root, "max_seqs", true, 0, 1, 1 << 20, &max_seqs, err)) ||
        (rc = s_json_int(root, "max_chunk", true, 0, 1, 1 << 24, &max_chunk, err)) ||
        (rc = s_json_int(root, "threads", false, 0, 0, 4096, &threads, err)) ||
        (rc = s_json_int(root, "vocab_limit", false, 0, 0, INT_MAX, &vocab_limit, err)) ||
        (rc = s_json_int(root, "comm_timeout_ms", false, COMM_DEFAULT_TIMEOUT_MS, 1, 3600000,
                         &comm_timeout, err)))
        goto out;
    rc = GERR_INVALID;
    if (!model[0]) {
        gerr_set(err, "LOAD: field \"model\" is empty (a model folder path)");
        goto out;
    }
    ops_kv_dtype_t dt = OPS_KV_F32;
    if (kv_dtype && strcmp(kv_dtype, "bf16") == 0)
        dt = OPS_KV_BF16;
    else if (kv_dtype && strcmp(kv_dtype, "f32") != 0) {
        gerr_set(err, "LOAD: field \"kv_dtype\" must be \"f32\" or \"bf16\", got \"%.64s\"",
                 kv_dtype);
        goto out;
    }
    if (comm && strcmp(comm, "single") != 0 && strcmp(comm, "shm") != 0) {
        gerr_set(err, "LOAD: field \"comm\" must be \"single\" or \"shm\", got \"%.64s\"", comm);
        goto out;
    }
    if (s->o.world > 1 && (!comm || strcmp(comm, "shm") != 0 || !comm_name || !comm_name[0])) {
        gerr_set(err,
                 "LOAD: world %d needs \"comm\": \"shm\" and the \"comm_name\" of the group's "
                 "segment (got comm \"%.64s\")",
                 s->o.world, comm ? comm : "(none)");
        goto out;
    }
    bool cuda = false;
    if (backend && strcmp(backend, "cuda") == 0)
        cuda = true;
    else if (backend && strcmp(backend, "cpu") != 0) {
        gerr_set(err, "LOAD: field \"backend\" must be \"cpu\" or \"cuda\", got \"%.64s\"",
                 backend);
        goto out;
    }
    if (cuda && s->o.world > 1) {
        gerr_set(err,
                 "LOAD: backend \"cuda\" with world %d: tensor parallelism on GPUs (NCCL) is "
                 "not wired into gptoss-shardd yet; a cuda shard group must be world 1",
                 s->o.world);
        goto out;
    }
    if (!cuda && threads > 0 && threads != s->ops_threads) {
        ops_cpu_free(&s->ops);
        if ((rc = ops_cpu_new((int)threads, NULL, &s->ops, err))) goto out;
        s->ops_threads = (int)threads;
        rc = GERR_INVALID;
    }

    double upload_s = 0, upload_gbps = 0;
    if (cuda) {
        if ((rc = s_load_cuda(s, model, (int)device, &upload_s, &upload_gbps, err))) goto fail;
    } else if ((rc = weights_load_shard(model, s->o.rank, s->o.world, &s->w, err))) {
        gerr_prefix(err, "LOAD: model \"%.512s\"", model);
        goto fail;
    }
    const ops_t *eops = s->gpu ? s->gpu : s->ops;
    if (s->o.world > 1) {
        comm_shm_opts_t co = {.attach_timeout_ms = (int)comm_timeout,
                              .timeout_ms = (int)comm_timeout};
        if ((rc = comm_shm_new(comm_name, s->o.rank, s->o.world, &co, &s->comm, err))) {
            gerr_prefix(err, "LOAD: rank %d of %d", s->o.rank, s->o.world);
            goto fail;
        }
    }
    const gptoss_config_t *c = &s->w->cfg;
    if (vocab_limit == 0) vocab_limit = c->vocab_size;
    if (vocab_limit > c->vocab_size) {
        gerr_set(err, "LOAD: vocab_limit %lld is above the model's vocab_size %d", vocab_limit,
                 c->vocab_size);
        rc = GERR_INVALID;
        goto fail;
    }
    engine_opts_t eo;
    if ((rc = s_kv_budget(s->w, dt, (int)bs, (int)n_full, (int)n_win, (int)max_chunk, &eo, err)))
        goto fail;
    eo.comm = s->comm;
    if ((rc = engine_new(s->w, eops, &eo, &s->eng, err))) {
        gerr_prefix(err, "LOAD: KV cache of %d full + %d window blocks", (int)n_full, (int)n_win);
        goto fail;
    }
    s_pool_sizes(s);
    int n_sl = 0;
    for (int l = 0; l < c->num_hidden_layers; l++)
        n_sl += c->layer_sliding[l];
    if (s->n_full_blocks < n_full || (n_sl && s->n_window_blocks < n_win)) {
        gerr_set(err,
                 "LOAD: the KV cache got %d full / %d window blocks, fewer than the %lld / "
                 "%lld asked (internal planning error)",
                 s->n_full_blocks, s->n_window_blocks, n_full, n_win);
        rc = GERR_INVALID;
        goto fail;
    }
    s->vocab = engine_vocab(s->eng);
    s->vocab_limit = (int)vocab_limit;
    s->max_seqs = (int)max_seqs;
    s->max_chunk = (int)max_chunk;
    s->slot_seen = calloc((size_t)s->max_seqs, 1);
    if (!s->slot_seen) goto nomem;
    if (s->o.rank == 0) {
        s->hist = calloc((size_t)s->max_seqs, sizeof *s->hist);
        s->ws = sampling_ws_new();
        if (!s->hist || !s->ws) goto nomem;
    }
    double load_ms = s_now_ms() - t0;
    cJSON *rd = cJSON_CreateObject();
    bool ok = rd && cJSON_AddNumberToObject(rd, "load_ms", round(load_ms * 10) / 10) &&
              cJSON_AddNumberToObject(rd, "vocab", c->vocab_size) &&
              cJSON_AddNumberToObject(rd, "n_layers", c->num_hidden_layers) &&
              cJSON_AddNumberToObject(rd, "kv_full_blocks", s->n_full_blocks) &&
              cJSON_AddNumberToObject(rd, "kv_window_blocks", s->n_window_blocks) &&
              cJSON_AddNumberToObject(rd, "block_size", (double)bs) &&
              cJSON_AddNumberToObject(rd, "kv_bytes", (double)kvcache_bytes(engine_kv(s->eng))) &&
              cJSON_AddStringToObject(rd, "backend", shard_backend_name(s));
    *ready = ok ? cJSON_PrintUnformatted(rd) : NULL;
    cJSON_Delete(rd);
    if (!*ready) goto nomem;
    char how[192];
    if (cuda)
        snprintf(how, sizeof how, "%s, weights uploaded in %.2f s (%.1f GB/s)", s->gpu->name,
                 upload_s, upload_gbps);
    else
        snprintf(how, sizeof how, "%d threads (%s)", ops_cpu_threads(s->ops), s->ops->name);
    LOG_INFO("load",
             "loaded %s in %.0f ms: rank %d of %d (%d q / %d kv heads, %d units, vocab rows "
             "%d..%d), %d layers, vocab %d (limit %d), KV %s %d full + %d window blocks of %d, "
             "%zu MiB, %s",
             model, load_ms, s->o.rank, s->o.world, s->w->n_heads, s->w->n_kv_heads, s->w->n_units,
             s->w->vocab_begin, s->w->vocab_begin + s->w->vocab_rows - 1, c->num_hidden_layers,
             c->vocab_size, s->vocab_limit, dt == OPS_KV_BF16 ? "bf16" : "f32", s->n_full_blocks,
             s->n_window_blocks, (int)bs, kvcache_bytes(engine_kv(s->eng)) >> 20, how);
    rc = 0;
    goto out;
nomem:
    gerr_set(err, "LOAD: out of memory");
    rc = GERR_NOMEM;
fail:
    s_unload(s);
out:
    cJSON_Delete(root);
    return rc;
}

/* ---- STEP -------------------------------------------------------------------------- */

/* Grows the per-sequence scratch to n sequences and the logits to n rows. */
static int s_grow(shard_t *s, int n) {
    if (n > s->cap_seqs) {
        engine_seq_t *e = realloc(s->eseqs, sizeof *e * (size_t)n);
        if (e) s->eseqs = e;
        sampling_params_t *p = realloc(s->params, sizeof *p * (size_t)n);
        if (p) s->params = p;
        proto_sample_t *r = realloc(s->samples, sizeof *r * (size_t)n);
        if (r) s->samples = r;
        if (!e || !p || !r) return GERR_NOMEM;
        s->cap_seqs = n;
    }
    if (n > s->cap_rows && s->o.rank == 0) { /* logits come to rank 0 only */
        float *l = realloc(s->logits, sizeof(float) * (size_t)s->vocab * (size_t)n);
        if (!l) return GERR_NOMEM;
        s->logits = l;
        s->cap_rows = n;
    }
    return 0;
}

/* Checks one decoded sequence against the loaded limits; fills its sampling params. */
static int s_check_seq(shard_t *s, const proto_seq_t *q, uint32_t i, sampling_params_t *p,
                       gerr_t *err) {
    if (q->slot >= (uint32_t)s->max_seqs) {
        gerr_set(err, "STEP sequence %u: slot %u is out of range (max_seqs %d)", i, q->slot,
                 s->max_seqs);
        return GERR_INVALID;
    }
    if (s->slot_seen[q->slot]) {
        gerr_set(err, "STEP sequence %u: slot %u appears twice in one step", i, q->slot);
        return GERR_INVALID;
    }
    if (q->n_tokens > (uint32_t)s->max_chunk) {
        gerr_set(err, "STEP sequence %u (slot %u): %u new tokens exceed max_chunk %d", i, q->slot,
                 q->n_tokens, s->max_chunk);
        return GERR_INVALID;
    }
    /* positions past the model's context would make attention read (and a hostile peer
     * make us spin over) a billion keys through a table that repeats one block id */
    const uint64_t max_pos = (uint64_t)s->w->cfg.max_position_embeddings;
    if ((uint64_t)q->start_pos + q->n_tokens > max_pos) {
        gerr_set(err,
                 "STEP sequence %u (slot %u): positions %u..%llu go past the model's context "
                 "of %llu tokens",
                 i, q->slot, q->start_pos, (unsigned long long)q->start_pos + q->n_tokens - 1,
                 (unsigned long long)max_pos);
        return GERR_INVALID;
    }
    if (q->flags & ~(uint32_t)(PROTO_SEQ_SAMPLE | PROTO_SEQ_NEW)) {
        gerr_set(err, "STEP sequence %u (slot %u): unknown flag bits 0x%x", i, q->slot,
                 q->flags & ~(uint32_t)(PROTO_SEQ_SAMPLE | PROTO_SEQ_NEW));
        return GERR_INVALID;
    }
    sampling_params_init(p);
    p->temperature = q->temperature;
    p->top_p = q->top_p;
    p->min_p = q->min_p;
    p->top_k = q->top_k;
    p->frequency_penalty = q->frequency_penalty;
    p->presence_penalty = q->presence_penalty;
    p->repetition_penalty = q->repetition_penalty;
    p->seed = q->seed;
    p->seed_set = true;
    p->n_logprobs = q->n_logprobs;
    p->vocab_limit = s->vocab_limit;
    /* every rank checks, so that a step is refused by all ranks alike, before any collective */
    if ((q->flags & PROTO_SEQ_SAMPLE) && sampling_params_validate(p, s->vocab, err)) {
        gerr_prefix(err, "STEP sequence %u (slot %u)", i, q->slot);
        return GERR_INVALID;
    }
    return 0;
}

/* Rank 0: brings slot q->slot's history up to date with the tokens of this step. */
static int s_history_add(shard_t *s, const proto_seq_t *q, gerr_t *err) {
    sampling_history_t **h = &s->hist[q->slot];
    if (!*h && !(*h = sampling_history_new())) {
        gerr_set(err, "out of memory for a penalty history");
        return GERR_NOMEM;
    }
    if (q->flags & PROTO_SEQ_NEW) sampling_history_clear(*h);
    for (uint32_t t = 0; t < q->n_tokens; t++) {
        bool gen = (uint64_t)q->start_pos + t >= q->prompt_len;
        int rc = sampling_history_add(*h, q->tokens[t], gen, err);
        if (rc) return rc;
    }
    return 0;
}

int shard_step(shard_t *s, const uint8_t *body, size_t len, proto_buf_t *out, gerr_t *err) {
    out->len = 0;
    if (!shard_loaded(s)) {
        gerr_set(err, "STEP before LOAD completed (no model is loaded)");
        return GERR_INVALID;
    }
    if (s->broken) {
        gerr_set(err, "STEP: the tensor-parallel group is broken (a collective failed); the "
                      "group must be restarted");
        return COMM_ERR_ABORTED;
    }
    double t0 = s_now_ms();
    proto_seq_t *q = NULL;
    uint32_t n = 0;
    int rc = proto_step_decode(body, len, &q, &n, err);
    if (rc) {
        gerr_prefix(err, "STEP does not decode");
        return rc;
    }
    if (n > (uint32_t)s->max_seqs) {
        gerr_set(err, "STEP has %u sequences, more than max_seqs %d", n, s->max_seqs);
        rc = GERR_INVALID;
        goto out;
    }
    if (n && s_grow(s, (int)n)) {
        gerr_set(err, "out of memory for a step of %u sequences", n);
        rc = GERR_NOMEM;
        if (s->comm) { /* the peers would wait for us in the first collective */
            comm_abort(s->comm);
            s->broken = true;
        }
        goto out;
    }
    memset(s->slot_seen, 0, (size_t)s->max_seqs);
    for (uint32_t i = 0; i < n; i++) {
        if ((rc = s_check_seq(s, &q[i], i, &s->params[i], err))) goto out;
        s->slot_seen[q[i].slot] = 1;
        s->eseqs[i] = (engine_seq_t){.tokens = q[i].tokens,
                                     .n_tokens = (int)q[i].n_tokens,
                                     .start_pos = (int)q[i].start_pos,
                                     .full_blocks = q[i].full,
                                     .n_full_blocks = (int)q[i].n_full,
                                     .window_blocks = q[i].window,
                                     .n_window_blocks = (int)q[i].n_window};
    }
    if (n && (rc = engine_step(s->eng, s->eseqs, (int)n, s->logits, err))) {
        /* GERR_INVALID / GERR_LIMIT: input refused on every rank before any collective;
         * anything else in a group failed or aborted a collective */
        if (s->comm && rc != GERR_INVALID && rc != GERR_LIMIT) {
            comm_abort(s->comm);
            s->broken = true;
        }
        goto out;
    }
    uint32_t n_out = 0;
    if (s->o.rank == 0) {
        for (uint32_t i = 0; i < n; i++)
            if ((rc = s_history_add(s, &q[i], err))) goto out;
        for (uint32_t i = 0; i < n; i++) {
            if (!(q[i].flags & PROTO_SEQ_SAMPLE)) continue;
            sampling_result_t r;
            uint64_t pos = (uint64_t)q[i].start_pos + q[i].n_tokens;
            if ((rc = sampling_sample(&s->params[i], s->hist[q[i].slot],
                                      s->logits + (size_t)i * (size_t)s->vocab, s->vocab, pos,
                                      s->ws, &r, err))) {
                gerr_prefix(err, "STEP sequence %u (slot %u): sampling", i, q[i].slot);
                goto out;
            }
            proto_sample_t *o = &s->samples[n_out++];
            o->slot = q[i].slot;
            o->token = r.token;
            o->logprob = r.logprob;
            o->n_top = r.n_top < 0 ? 0 : (uint32_t)r.n_top;
            for (uint32_t k = 0; k < o->n_top && k < PROTO_MAX_LOGPROBS; k++) {
                o->top_ids[k] = r.top[k].id;
                o->top_logprobs[k] = r.top[k].logprob;
            }
        }
    }
    if (proto_result_encode(s->samples, n_out, s_now_ms() - t0, out)) {
        gerr_set(err, "out of memory for a RESULT");
        rc = GERR_NOMEM;
        goto out;
    }
    rc = 0;
out:
    free(q);
    return rc;
}
