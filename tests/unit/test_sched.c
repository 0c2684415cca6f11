/* test_sched: the gateway's KV allocator against the shard's, and the scheduler
 * driving real gptoss-shardd processes on tests/fixtures/tiny-a (token-id
 * prompts straight into sched_submit, events read from the stream; no HTTP).
 *
 * Checks: kvalloc builds the same tables as kvcache over random histories; greedy
 * continuations equal expected.json; 8 concurrent requests (chunked prefill, KV
 * pressure that forces preemption) get the tokens they get alone; n > 1 choices
 * equal separate requests seeded seed + c; seeded sampling repeats; cancel frees
 * every block; queue full -> GERR_LIMIT; too long -> GERR_INVALID; a shard killed
 * mid-stream is restarted and the request ends with the undisturbed tokens;
 * sched_free leaves no shard process. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "cpu/ops_cpu.h"
#include "gw.h"
#include "kvalloc.h"
#include "kvcache.h"
#include "sched.h"
#include "tcheck.h"

/* ------------------------------------------------------------------ kvalloc */

static void test_kvalloc_twin(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tiny-a", tcheck_fixtures());
    gptoss_config_t cfg;
    gerr_t err = {{0}};
    CHECK(config_load(path, &cfg, &err) == 0);
    kvcache_opts_t ko = {
        .dtype = OPS_KV_F32, .block_size = 4, .n_full_blocks = 40, .n_window_blocks = 30};
    kvcache_t *kv = NULL;
    kvalloc_t *ka = NULL;
    ops_t *ops = NULL;
    CHECK(ops_cpu_new(1, NULL, &ops, &err) == 0);
    if (!ops) return;
    CHECK(kvcache_new(&cfg, cfg.num_key_value_heads, &ko, ops, &kv, &err) == 0);
    CHECK(kvalloc_new(4, 40, 30, cfg.sliding_window, &ka, &err) == 0);
    if (!kv || !ka) {
        kvcache_free(&kv);
        kvalloc_free(&ka);
        ops_cpu_free(&ops);
        return;
    }
    CHECK(kvalloc_total(ka) == 70 && kvalloc_used(ka) == 0);
    enum { NS = 5 };
    kvcache_seq_t a[NS] = {0}, b[NS] = {0};
    int pos[NS] = {0};
    unsigned rng = 12345;
    int mismatches = 0, limits = 0;
    for (int it = 0; it < 3000; it++) {
        rng = rng * 1103515245u + 12345u;
        int i = (int)((rng >> 16) % NS);
        int op = (int)((rng >> 8) % 10);
        if (op == 0) {
            kvcache_seq_release(kv, &a[i]);
            kvalloc_release(ka, &b[i]);
            pos[i] = 0;
        } else {
            int n = op < 7 ? 1 : 1 + (int)((rng >> 4) % 9);
            int nf, nw;
            kvalloc_need(ka, &b[i], pos[i], pos[i] + n, &nf, &nw);
            int ff = kvalloc_free_full(ka), fw = kvalloc_free_window(ka);
            int ra = kvcache_seq_reserve(kv, &a[i], pos[i], pos[i] + n, &err);
            int rb = kvalloc_reserve(ka, &b[i], pos[i], pos[i] + n, &err);
            if (rb == 0) {
                if (kvalloc_free_full(ka) != ff - nf || kvalloc_free_window(ka) != fw - nw)
                    mismatches++;
            } else {
                limits++;
            }
            /* the shard's check of the window pool is coarser (it counts entries that are
             * never allocated): where it refuses, ours may still succeed */
            if (ra != 0 && rb == 0) {
                kvcache_seq_release(kv, &a[i]);
                kvalloc_release(ka, &b[i]);
                pos[i] = 0;
                continue;
            }
            if (ra != rb) mismatches++;
            if (rb == 0) pos[i] += n;
        }
        if (a[i].n_full != b[i].n_full || a[i].n_window != b[i].n_window ||
            a[i].first_live != b[i].first_live ||
            (a[i].n_full && memcmp(a[i].full, b[i].full, sizeof(int32_t) * a[i].n_full)) ||
            (a[i].n_window && memcmp(a[i].window, b[i].window, sizeof(int32_t) * a[i].n_window)))
            mismatches++;
        if (kvcache_free_full(kv) != kvalloc_free_full(ka) ||
            kvcache_free_window(kv) != kvalloc_free_window(ka))
            mismatches++;
    }
    CHECK_MSG(mismatches == 0, "%d mismatches between kvalloc and kvcache", mismatches);
    CHECK_MSG(limits > 0, "the random walk never filled the pools");
    for (int i = 0; i < NS; i++) {
        kvcache_seq_release(kv, &a[i]);
        kvalloc_release(ka, &b[i]);
    }
    CHECK(kvalloc_used(ka) == 0);
    CHECK(kvalloc_reserve(ka, &b[0], 0, 1000, &err) == GERR_LIMIT);
    kvalloc_release(ka, &b[0]);
    CHECK(kvalloc_used(ka) == 0);
    kvcache_free(&kv);
    kvalloc_free(&ka);
    kvalloc_free(&ka);
    ops_cpu_free(&ops);
}

/* ------------------------------------------------------------------ fixtures */

typedef struct {
    int32_t input[64];
    int n_input;
    int32_t greedy[16];
} tcase_t;

static tcase_t g_cases[4];
static int g_n_cases;
static char g_model[1024], g_shardd[1024], g_run_dir[256];

static int s_load_cases(void) {
    char path[1100];
    snprintf(path, sizeof path, "%s/expected.json", g_model);
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        return -1;
    }
    fclose(f);
    cJSON *root = cJSON_ParseWithLength(buf, (size_t)n);
    free(buf);
    const cJSON *cases = cJSON_GetObjectItem(root, "cases"), *c;
    cJSON_ArrayForEach(c, cases) {
        if (g_n_cases == 4) break;
        tcase_t *t = &g_cases[g_n_cases++];
        const cJSON *x;
        cJSON_ArrayForEach(x, cJSON_GetObjectItem(c, "input_ids")) {
            if (t->n_input < 64) t->input[t->n_input++] = (int32_t)x->valuedouble;
        }
        int k = 0;
        cJSON_ArrayForEach(x, cJSON_GetObjectItem(c, "greedy_continuation")) {
            if (k < 16) t->greedy[k++] = (int32_t)x->valuedouble;
        }
    }
    cJSON_Delete(root);
    return g_n_cases == 4 ? 0 : -1;
}

static sched_opts_t s_opts(void) {
    sched_opts_t o = {0};
    o.model_dir = g_model;
    o.shardd_path = g_shardd;
    o.run_dir = g_run_dir;
    o.n_shards = 1;
    o.threads = 1;
    o.kv_budget_gib = 1.0 / 64;
    o.heartbeat_s = 0.5;
    return o;
}

/* Creates a scheduler and waits (up to 60 s) for READY. */
static sched_t *s_start(const sched_opts_t *o) {
    sched_t *s = NULL;
    gerr_t err = {{0}};
    if (sched_new(o, &s, &err) != 0) {
        fprintf(stderr, "sched_new: %s\n", err.msg);
        return NULL;
    }
    sched_stats_t st;
    double until = gw_now() + 60;
    for (;;) {
        sched_snapshot(s, &st);
        if (st.state == SCHED_STATE_READY && st.ready_checked) return s;
        if (st.state == SCHED_STATE_DEGRADED || gw_now() > until) {
            fprintf(stderr, "scheduler not ready: %s: %s\n", sched_state_name(st.state),
                    st.state_message);
            sched_free(&s);
            return NULL;
        }
        usleep(10000);
    }
}

typedef struct {
    gw_stream_t *stream;
    int32_t toks[8][512];
    int n[8];
    gw_finish_t finish[8];
    int n_finished, n_choices;
    char message[256];
} run_t;

static gw_request_t *s_req(const int32_t *prompt, int n_prompt, int max_tokens, float temp,
                           uint64_t seed, int n_choices) {
    gw_request_t *r = calloc(1, sizeof *r);
    r->prompt = malloc(sizeof(int32_t) * (size_t)n_prompt);
    memcpy(r->prompt, prompt, sizeof(int32_t) * (size_t)n_prompt);
    r->n_prompt = n_prompt;
    r->n_choices = n_choices;
    r->max_tokens = max_tokens;
    r->temperature = temp;
    r->top_p = 1;
    r->repetition_penalty = 1;
    r->seed = seed;
    r->stream = gw_stream_new();
    return r;
}

/* Submits r; run->stream keeps a reference. Returns the sched_submit code. */
static int s_submit(sched_t *s, gw_request_t *r, run_t *run, gerr_t *err) {
    memset(run, 0, sizeof *run);
    run->stream = gw_stream_ref(r->stream);
    run->n_choices = r->n_choices;
    snprintf(r->id_str, sizeof r->id_str, "cmpl-%p", (void *)run);
    int rc = sched_submit(s, r, err);
    if (rc) { /* on success r belongs to the scheduler: not touched again */
        gw_stream_unref(&run->stream);
        gw_request_free(&r);
    }
    return rc;
}

/* Reads events until every choice finished or timeout_s passed; returns 0 when done. */
static int s_wait(run_t *run, double timeout_s) {
    double until = gw_now() + timeout_s;
    while (run->n_finished < run->n_choices) {
        if (gw_now() > until) return -1;
        gw_stream_wait(run->stream, 100);
        gw_event_t ev[16];
        size_t n;
        while ((n = gw_stream_pop(run->stream, ev, 16)) > 0) {
            for (size_t i = 0; i < n; i++) {
                int c = ev[i].choice;
                if (ev[i].kind == GW_EV_TOKEN && run->n[c] < 512)
                    run->toks[c][run->n[c]++] = ev[i].token;
                if (ev[i].kind == GW_EV_FINISH) {
                    run->finish[c] = ev[i].finish;
                    run->n_finished++;
                    if (ev[i].message[0])
                        snprintf(run->message, sizeof run->message, "%s", ev[i].message);
                }
            }
        }
    }
    return 0;
}

static void s_run_done(run_t *run) {
    gw_stream_unref(&run->stream);
}

/* Runs one request alone to its end. */
static int s_run(sched_t *s, gw_request_t *r, run_t *run) {
    gerr_t err = {{0}};
    int rc = s_submit(s, r, run, &err);
    if (rc) {
        fprintf(stderr, "submit: %s\n", err.msg);
        return rc;
    }
    rc = s_wait(run, 60);
    s_run_done(run);
    return rc;
}

static int s_blocks_used(sched_t *s) {
    sched_stats_t st;
    for (int i = 0; i < 100; i++) {
        sched_snapshot(s, &st);
        if (st.kv_blocks_used == 0) break;
        usleep(10000);
    }
    return st.kv_blocks_used;
}

/* ------------------------------------------------------------------ scheduler tests */

static void test_greedy_and_limits(void) {
    sched_opts_t o = s_opts();
    o.max_context = 64;
    sched_t *s = s_start(&o);
    CHECK(s != NULL);
    if (!s) return;
    for (int c = 0; c < 4; c++) {
        run_t run;
        CHECK(s_run(s, s_req(g_cases[c].input, g_cases[c].n_input, 16, 0, 0, 1), &run) == 0);
        CHECK(run.n[0] == 16 && run.finish[0] == GW_FINISH_LENGTH);
        CHECK_MSG(memcmp(run.toks[0], g_cases[c].greedy, sizeof(int32_t) * 16) == 0,
                  "case %d: greedy continuation differs from expected.json", c);
    }
    CHECK(s_blocks_used(s) == 0);
    /* stop ids end a choice with STOP after the stop token */
    {
        gw_request_t *r = s_req(g_cases[0].input, g_cases[0].n_input, 16, 0, 0, 1);
        r->stop_ids[0] = g_cases[0].greedy[2];
        r->n_stop_ids = 1;
        run_t run;
        CHECK(s_run(s, r, &run) == 0);
        CHECK(run.n[0] == 3 && run.finish[0] == GW_FINISH_STOP);
    }
    /* too long: prompt + max_tokens over max_context */
    {
        gerr_t err = {{0}};
        run_t run;
        int rc = s_submit(s, s_req(g_cases[3].input, g_cases[3].n_input, 30, 0, 0, 1), &run, &err);
        CHECK(rc == GERR_INVALID);
        CHECK_MSG(strstr(err.msg, "40") && strstr(err.msg, "64"), "message: %s", err.msg);
        int32_t bad[2] = {1, 999};
        CHECK(s_submit(s, s_req(bad, 2, 4, 0, 0, 1), &run, &err) == GERR_INVALID);
    }
    sched_stats_t st; /* the snapshot is refreshed at the end of each scheduler turn */
    for (int i = 0; i < 100; i++) {
        sched_snapshot(s, &st);
        if (st.requests_finished == 5) break;
        usleep(10000);
    }
    CHECK(st.max_context == 64 && st.vocab_size == 512 && st.n_shards == 1);
    CHECK(st.requests_finished == 5 && st.generated_tokens_total == 16 * 4 + 3);
    int pid = st.shards[0].pid;
    CHECK(pid > 0 && st.shards[0].up);
    /* drain refuses with GERR_IO; resume admits again */
    sched_drain(s);
    {
        gerr_t err = {{0}};
        run_t run;
        CHECK(s_submit(s, s_req(g_cases[0].input, 5, 2, 0, 0, 1), &run, &err) == GERR_IO);
        CHECK(strstr(err.msg, "draining") != NULL);
    }
    sched_resume(s);
    for (int i = 0; i < 100; i++) {
        sched_snapshot(s, &st);
        if (st.state == SCHED_STATE_READY) break;
        usleep(10000);
    }
    {
        run_t run;
        CHECK(s_run(s, s_req(g_cases[0].input, 5, 2, 0, 0, 1), &run) == 0);
    }
    sched_free(&s);
    CHECK(s == NULL);
    /* no shard left behind: the pid is reaped (not our child any more) */
    int status;
    CHECK(waitpid(pid, &status, WNOHANG) < 0 && errno == ECHILD);
    CHECK(kill(pid, 0) != 0);
}

/* 8 concurrent requests, chunked prefill and a KV pool small enough to force
 * preemption: each gets the tokens it gets alone. */
static void test_concurrent(void) {
    sched_opts_t o = s_opts();
    o.block_size = 4;
    o.max_running = 8;
    o.prefill_chunk = 8;
    o.max_batch_tokens = 24;
    /* window pool 8 seqs * 6 blocks * 1 KiB, plus 24 full blocks (96 tokens) */
    o.kv_budget_gib = (48.0 + 24.0) * 1024 / (1ull << 30);
    sched_t *s = s_start(&o);
    CHECK(s != NULL);
    if (!s) return;
    enum { NR = 8, NT = 24 };
    int32_t prompts[NR][48];
    int np[NR];
    for (int i = 0; i < NR; i++) {
        const tcase_t *t = &g_cases[i % 4];
        np[i] = t->n_input - (i / 4) * 3;
        memcpy(prompts[i], t->input + (i / 4) * 3, sizeof(int32_t) * (size_t)np[i]);
    }
    static run_t alone[NR], together[NR];
    for (int i = 0; i < NR; i++)
        CHECK(s_run(s, s_req(prompts[i], np[i], NT, 0, 0, 1), &alone[i]) == 0);
    gerr_t err = {{0}};
    for (int i = 0; i < NR; i++)
        CHECK(s_submit(s, s_req(prompts[i], np[i], NT, 0, 0, 1), &together[i], &err) == 0);
    for (int i = 0; i < NR; i++) {
        CHECK(s_wait(&together[i], 120) == 0);
        s_run_done(&together[i]);
        CHECK(together[i].n[0] == NT && together[i].finish[0] == GW_FINISH_LENGTH);
        CHECK_MSG(memcmp(alone[i].toks[0], together[i].toks[0], sizeof(int32_t) * NT) == 0,
                  "request %d: tokens differ when batched", i);
    }
    CHECK(s_blocks_used(s) == 0);
    sched_free(&s);
}

/* Seeded sampling repeats; choice c of n equals a request seeded seed + c; cancel frees
 * the blocks; queue full -> GERR_LIMIT. */
static void test_sampling_cancel_queue(void) {
    sched_opts_t o = s_opts();
    o.max_running = 1;
    o.max_queue = 1;
    sched_t *s = s_start(&o);
    CHECK(s != NULL);
    if (!s) return;
    const tcase_t *t = &g_cases[1];
    static run_t a, b, c, d;
    CHECK(s_run(s, s_req(t->input, t->n_input, 32, 1.0f, 42, 1), &a) == 0);
    CHECK(s_run(s, s_req(t->input, t->n_input, 32, 1.0f, 42, 1), &b) == 0);
    CHECK(a.n[0] == 32 && memcmp(a.toks[0], b.toks[0], sizeof(int32_t) * 32) == 0);
    CHECK(s_run(s, s_req(t->input, t->n_input, 32, 1.0f, 43, 1), &c) == 0);
    CHECK_MSG(memcmp(a.toks[0], c.toks[0], sizeof(int32_t) * 32) != 0,
              "seeds 42 and 43 gave the same 32 tokens");
    CHECK(s_run(s, s_req(t->input, t->n_input, 32, 1.0f, 42, 2), &d) == 0);
    CHECK(d.n[0] == 32 && d.n[1] == 32);
    CHECK(memcmp(d.toks[0], a.toks[0], sizeof(int32_t) * 32) == 0);
    CHECK(memcmp(d.toks[1], c.toks[0], sizeof(int32_t) * 32) == 0);

    /* a long request, cancelled by its client-visible id */
    static run_t longr, q1, q2;
    gerr_t err = {{0}};
    CHECK(s_submit(s, s_req(t->input, t->n_input, 4000, 1.0f, 1, 1), &longr, &err) == 0);
    char name[64];
    snprintf(name, sizeof name, "cmpl-%p", (void *)&longr);
    /* its first token means it was admitted (no longer counts against the queue) */
    CHECK(gw_stream_wait(longr.stream, 30000) == 1);
    sched_stats_t st;
    /* running 1 of max 1: one more waits, the next is refused */
    int rc = s_submit(s, s_req(t->input, t->n_input, 4, 0, 0, 1), &q1, &err);
    CHECK_MSG(rc == 0, "rc %d: %s", rc, err.msg);
    if (rc) {
        sched_free(&s);
        return;
    }
    rc = s_submit(s, s_req(t->input, t->n_input, 4, 0, 0, 1), &q2, &err);
    CHECK_MSG(rc == GERR_LIMIT, "rc %d: %s", rc, err.msg);
    CHECK(sched_cancel_by_name(s, name) == 0);
    CHECK(sched_cancel_by_name(s, "cmpl-nonexistent") == -1);
    CHECK(s_wait(&longr, 30) == 0);
    CHECK(longr.finish[0] == GW_FINISH_CANCELLED && longr.n[0] < 4000);
    s_run_done(&longr);
    CHECK(s_wait(&q1, 30) == 0 && q1.n[0] == 4);
    s_run_done(&q1);
    CHECK(s_blocks_used(s) == 0);
    sched_snapshot(s, &st);
    CHECK(st.running == 0 && st.waiting == 0);

    /* a request past its max time ends with TIMEOUT */
    {
        gw_request_t *r = s_req(t->input, t->n_input, 4000, 1.0f, 1, 1);
        r->max_time_s = 0.3;
        run_t tr;
        CHECK(s_run(s, r, &tr) == 0);
        CHECK(tr.finish[0] == GW_FINISH_TIMEOUT && strstr(tr.message, "max time"));
    }
    CHECK(s_blocks_used(s) == 0);
    sched_free(&s);
}

/* A shard killed mid-stream: the scheduler restarts it, re-prefills, and the greedy
 * tokens are the undisturbed ones. */
static void test_shard_restart(void) {
    sched_opts_t o = s_opts();
    o.heartbeat_s = 0.2;
    sched_t *s = s_start(&o);
    CHECK(s != NULL);
    if (!s) return;
    const tcase_t *t = &g_cases[2];
    static run_t ref, r;
    CHECK(s_run(s, s_req(t->input, t->n_input, 300, 0, 0, 1), &ref) == 0);
    gerr_t err = {{0}};
    CHECK(s_submit(s, s_req(t->input, t->n_input, 300, 0, 0, 1), &r, &err) == 0);
    while (gw_stream_wait(r.stream, 100) == 0) {
    }
    sched_stats_t st;
    sched_snapshot(s, &st);
    int pid = st.shards[0].pid;
    CHECK(pid > 0 && kill(pid, SIGKILL) == 0);
    CHECK(s_wait(&r, 60) == 0);
    s_run_done(&r);
    CHECK_MSG(r.finish[0] == GW_FINISH_LENGTH && r.n[0] == 300, "finish %d, %d tokens: %s",
              r.finish[0], r.n[0], r.message);
    CHECK_MSG(memcmp(ref.toks[0], r.toks[0], sizeof(int32_t) * 300) == 0,
              "tokens differ after the shard restart");
    sched_snapshot(s, &st);
    CHECK(st.shards[0].restarts == 1 && st.shards[0].pid != pid);
    for (int i = 0; i < 500 && !(st.state == SCHED_STATE_READY && st.ready_checked); i++) {
        usleep(10000);
        sched_snapshot(s, &st);
    }
    CHECK(st.state == SCHED_STATE_READY && st.ready_checked);
    CHECK(s_blocks_used(s) == 0);
    sched_free(&s);
}

/* A model that cannot load: DEGRADED with the shard's message; submits get GERR_IO. */
static void test_load_error(void) {
    char dir[300];
    snprintf(dir, sizeof dir, "%s/badmodel", g_run_dir);
    CHECK(mkdir(dir, 0700) == 0);
    char src[1100], dst[400];
    snprintf(src, sizeof src, "%s/config.json", g_model);
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    char buf[4096];
    size_t n;
    while (in && out && (n = fread(buf, 1, sizeof buf, in)) > 0)
        fwrite(buf, 1, n, out);
    if (in) fclose(in);
    if (out) fclose(out);
    /* no model.safetensors: LOAD must fail */
    sched_opts_t o = s_opts();
    o.model_dir = dir;
    sched_t *s = NULL;
    gerr_t err = {{0}};
    CHECK(sched_new(&o, &s, &err) == 0);
    if (!s) return;
    sched_stats_t st;
    for (int i = 0; i < 3000; i++) {
        sched_snapshot(s, &st);
        if (st.state == SCHED_STATE_DEGRADED) break;
        usleep(10000);
    }
    CHECK_MSG(st.state == SCHED_STATE_DEGRADED, "state %s", sched_state_name(st.state));
    CHECK(strstr(st.state_message, "cannot load") != NULL);
    run_t run;
    CHECK(s_submit(s, s_req(g_cases[0].input, 5, 2, 0, 0, 1), &run, &err) == GERR_IO);
    CHECK_MSG(strstr(err.msg, "degraded") != NULL, "%s", err.msg);
    sched_free(&s);
    unlink(dst);
    rmdir(dir);
}

/* Freed while its shard is starting: refused while loading, no child left behind. */
static void test_free_while_loading(void) {
    sched_opts_t o = s_opts();
    sched_t *s = NULL;
    gerr_t err = {{0}};
    CHECK(sched_new(&o, &s, &err) == 0);
    if (!s) return;
    run_t run;
    int rc = s_submit(s, s_req(g_cases[0].input, 5, 2, 0, 0, 1), &run, &err);
    sched_stats_t st;
    sched_snapshot(s, &st);
    if (st.state == SCHED_STATE_LOADING) {
        CHECK(rc == GERR_IO && strstr(err.msg, "loading") != NULL);
    } else if (rc == 0) {
        s_wait(&run, 30);
        s_run_done(&run);
    }
    int pid = 0;
    for (int i = 0; i < 500 && !pid; i++) {
        sched_snapshot(s, &st);
        pid = st.shards[0].pid;
        if (!pid) usleep(1000);
    }
    CHECK(pid > 0);
    sched_free(&s);
    int status;
    CHECK(waitpid(pid, &status, WNOHANG) < 0 && errno == ECHILD);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    test_kvalloc_twin();
    snprintf(g_model, sizeof g_model, "%s/tiny-a", tcheck_fixtures());
    snprintf(g_shardd, sizeof g_shardd, "%s/gptoss-shardd", tcheck_bindir());
    snprintf(g_run_dir, sizeof g_run_dir, "/tmp/gptoss-test-sched-XXXXXX");
    CHECK(mkdtemp(g_run_dir) != NULL);
    CHECK(s_load_cases() == 0);
    if (access(g_shardd, X_OK) != 0) {
        fprintf(stderr, "no %s: scheduler tests skipped\n", g_shardd);
        CHECK(0);
        return tcheck_done("test_sched");
    }
    test_greedy_and_limits();
    test_concurrent();
    test_sampling_cancel_queue();
    test_shard_restart();
    test_load_error();
    test_free_while_loading();
    rmdir(g_run_dir);
    return tcheck_done("test_sched");
}
