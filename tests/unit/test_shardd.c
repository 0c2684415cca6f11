/* test_shardd: a real gptoss-shardd process driven over its real socket.
 *
 * The test plays the gateway: it binds a ROUTER on ipc:///tmp/<unique>, starts
 * $GPTOSS_BIN/gptoss-shardd with fork/exec (PR_SET_PDEATHSIG, so a crashed test leaves no
 * shard behind) and speaks PROTOCOL.md to it: HELLO, LOAD of tests/fixtures/tiny-a, a
 * greedy prefill of a tiny-a case and 15 decode steps fed back, whose tokens must equal the
 * case's greedy_continuation in expected.json. Also: heartbeats on the "-hb" identity,
 * garbage (bad magic, truncated STEP, out-of-range slot, bad blocks, wrong rank) dropped or
 * refused while the shard keeps working, LOAD errors (missing folder, world 2) with exit
 * status 2, exit status 3 when the gateway goes silent, SHUTDOWN and SIGTERM -> 0.
 * "backend": "cuda" (test_load_cuda): on a host without a GPU (or a build without CUDA) the
 * process answers LOAD_ERROR with the reason and exits 2, and in process (shard.h) the failed
 * LOAD leaves the shard answering and able to LOAD the CPU backend and step; on a GPU host the
 * LOAD must succeed and READY name the CUDA backend.
 * Every receive has a deadline; every child is reaped, and killed if the test fails. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "cpu/ops_cpu.h"
#ifdef GPTOSS_HAVE_CUDA
#include "cuda/ops_cuda.h"
#endif
#include "engine.h"
#include "kvcache.h"
#include "proto.h"
#include "sampling.h"
#include "shard.h"
#include "tcheck.h"
#include "weights.h"

#define S_MAX_CHILDREN 16

static pid_t s_children[S_MAX_CHILDREN];
static int s_n_children;
static void *s_ctx;
static char s_endpoint[128];

static long long s_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void s_forget(pid_t pid) {
    for (int i = 0; i < s_n_children; i++)
        if (s_children[i] == pid) s_children[i] = s_children[--s_n_children];
}

/* Kills and reaps every child still running (end of test or failure path). */
static void s_kill_all(void) {
    while (s_n_children > 0) {
        pid_t pid = s_children[--s_n_children];
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
    }
}

/* Starts gptoss-shardd with extra arguments (NULL-terminated). Returns the pid or -1. */
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
    if (pid < 0) {
        perror("fork");
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        execv(bin, (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    if (s_n_children < S_MAX_CHILDREN) s_children[s_n_children++] = pid;
    return pid;
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
        usleep(10 * 1000);
    }
}

#include "shard_harness.h"

/* Sends raw frames [id][f0][f1] (for garbage). */
static int s_send_raw(void *r, const char *id, const void *f0, size_t l0, const void *f1,
                      size_t l1) {
    if (zmq_send(r, id, strlen(id), ZMQ_SNDMORE) < 0 || zmq_send(r, f0, l0, ZMQ_SNDMORE) < 0 ||
        zmq_send(r, f1, l1, 0) < 0)
        return -1;
    return 0;
}

static int s_hb_seen; /* heartbeats received from "shard-0-hb" */

/* Waits for a message from `from` (heartbeats from the -hb identity are counted and
 * skipped), sending a gateway heartbeat to `from` every 250 ms while waiting. Returns 1
 * with *in filled, or 0 on timeout (in->body NULL). */
static int s_expect(void *r, const char *from, int timeout_ms, s_in_t *in) {
    long long end = s_now_ms() + timeout_ms, next_beat = 0;
    for (;;) {
        long long now = s_now_ms();
        if (now >= end) return 0;
        if (now >= next_beat) {
            s_send(r, from, PROTO_HEARTBEAT, 0, 0, "", 0);
            next_beat = now + 250;
        }
        int rc = s_recv(r, (int)(next_beat - now), in);
        if (rc < 0) return 0;
        if (rc == 0) continue;
        size_t fl = strlen(from);
        if (strncmp(in->id, from, fl) == 0 && strcmp(in->id + fl, "-hb") == 0) {
            CHECK(in->hdr_ok && in->h.cmd == PROTO_HEARTBEAT && in->len == 0);
            s_hb_seen++;
            s_in_free(in);
            continue;
        }
        if (strcmp(in->id, from) == 0) {
            if (in->hdr_ok && in->h.cmd == PROTO_HEARTBEAT) { /* "any message counts" */
                s_in_free(in);
                continue;
            }
            return 1;
        }
        fprintf(stderr, "test: unexpected message from '%s'\n", in->id);
        s_in_free(in);
    }
}

/* Expects command cmd (and seq) from `from`; returns the parsed JSON body for JSON replies
 * (caller deletes) or NULL. *ok says whether the expected message came. */
static cJSON *s_expect_cmd(void *r, const char *from, uint8_t cmd, uint64_t seq, bool *ok,
                           s_in_t *keep) {
    s_in_t in;
    *ok = false;
    if (!s_expect(r, from, 20000, &in)) {
        fprintf(stderr, "test: no %s from %s within 20 s\n", proto_cmd_name(cmd), from);
        return NULL;
    }
    *ok = in.hdr_ok && in.h.cmd == cmd && in.h.seq == seq;
    if (!*ok)
        fprintf(stderr, "test: expected %s seq %llu, got %s seq %llu: %s\n", proto_cmd_name(cmd),
                (unsigned long long)seq, in.hdr_ok ? proto_cmd_name(in.h.cmd) : "bad header",
                (unsigned long long)in.h.seq, in.body ? (const char *)in.body : "");
    cJSON *j = NULL;
    if (cmd != PROTO_RESULT && in.body) j = cJSON_ParseWithLength((const char *)in.body, in.len);
    if (keep)
        *keep = in;
    else
        s_in_free(&in);
    return j;
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

static char *s_load_json(const char *model, int block_size, int n_full, int n_win) {
    char *buf = malloc(2048);
    if (!buf) return NULL;
    snprintf(buf, 2048,
             "{\"model\":\"%s\",\"kv_dtype\":\"f32\",\"block_size\":%d,\"kv_full_blocks\":%d,"
             "\"kv_window_blocks\":%d,\"max_seqs\":4,\"max_chunk\":64,\"threads\":2,"
             "\"comm\":\"single\",\"comm_name\":\"/gptoss-test\",\"vocab_limit\":512}",
             model, block_size, n_full, n_win);
    return buf;
}

/* s_load_json with extra members (",\"backend\":\"cuda\"", spliced before the closing brace). */
static char *s_load_json_x(const char *model, int block_size, int n_full, int n_win,
                           const char *extra) {
    char *buf = s_load_json(model, block_size, n_full, n_win);
    size_t n = buf ? strlen(buf) : 0, e = strlen(extra);
    char *out = buf ? malloc(n + e + 1) : NULL;
    if (out) {
        memcpy(out, buf, n - 1); /* all but the '}' */
        memcpy(out + n - 1, extra, e);
        memcpy(out + n - 1 + e, "}", 2);
    }
    free(buf);
    return out;
}

static int s_json_int(const cJSON *o, const char *k) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(it) ? it->valueint : -12345;
}

/* One greedy sequence of a step (slot 0), block tables for positions [0, end). */
static proto_seq_t s_seq(const int32_t *tok, int n, int start, int bs, int32_t *full, int32_t *win,
                         uint32_t flags) {
    int end = start + n, need = (end + bs - 1) / bs;
    for (int b = 0; b < need; b++) {
        full[b] = b;
        /* window blocks wholly older than the window of the first query are released */
        win[b] = (b + 1) * bs <= start - 8 + 1 ? -1 : b;
    }
    return (proto_seq_t){.slot = 0,
                         .n_tokens = (uint32_t)n,
                         .start_pos = (uint32_t)start,
                         .prompt_len = 13,
                         .n_full = (uint32_t)need,
                         .n_window = (uint32_t)need,
                         .flags = flags,
                         .temperature = 0.0f,
                         .top_p = 1.0f,
                         .top_k = 0,
                         .repetition_penalty = 1.0f,
                         .seed = 42,
                         .n_logprobs = 3,
                         .tokens = tok,
                         .full = full,
                         .window = win};
}

/* Sends a STEP and checks the reply is RESULT (one sample) or STEP_ERROR. Returns the
 * sampled token, or -1 for STEP_ERROR / failure (the STEP_ERROR message goes to msg). */
static int32_t s_step(void *r, uint64_t seq, const proto_seq_t *q, uint32_t n, char *msg,
                      size_t msg_size) {
    proto_buf_t b = {0};
    if (proto_step_encode(q, n, &b) || s_send(r, "shard-0", PROTO_STEP, 0, seq, b.data, b.len)) {
        proto_buf_free(&b);
        return -1;
    }
    proto_buf_free(&b);
    s_in_t in;
    if (!s_expect(r, "shard-0", 20000, &in)) {
        fprintf(stderr, "test: no reply to step %llu\n", (unsigned long long)seq);
        return -2;
    }
    int32_t tok = -1;
    if (in.hdr_ok && in.h.cmd == PROTO_STEP_ERROR && in.h.seq == seq) {
        cJSON *j = cJSON_ParseWithLength((const char *)in.body, in.len);
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "message");
        snprintf(msg, msg_size, "%s", cJSON_IsString(m) ? m->valuestring : "?");
        cJSON_Delete(j);
    } else if (in.hdr_ok && in.h.cmd == PROTO_RESULT && in.h.seq == seq) {
        proto_sample_t *s = NULL;
        uint32_t ns = 0;
        double ms = -1;
        gerr_t err;
        int rc = proto_result_decode(in.body, in.len, &s, &ns, &ms, &err);
        CHECK_MSG(rc == 0, "%s", err.msg);
        if (rc == 0 && ns == 1) {
            tok = s[0].token;
            CHECK(s[0].slot == 0);
            CHECK(s[0].logprob <= 0.0f);
            CHECK(s[0].n_top == 3 && s[0].top_ids[0] == tok);
            CHECK(ms >= 0);
        } else if (rc == 0 && ns == 0) {
            tok = -3; /* no sample asked */
        }
        free(s);
        snprintf(msg, msg_size, "RESULT");
    } else {
        fprintf(stderr, "test: unexpected reply to step %llu\n", (unsigned long long)seq);
        tok = -2;
    }
    s_in_free(&in);
    return tok;
}

static void test_generate(void) {
    void *r = s_router();
    CHECK(r != NULL);
    if (!r) return;
    pid_t pid = s_spawn((const char *const[]){"--rank", "0", "--world", "1", "--threads", "2",
                                              "--heartbeat-ms", "500", NULL});
    CHECK(pid > 0);
    bool ok;
    cJSON *j = s_expect_cmd(r, "shard-0", PROTO_HELLO, 0, &ok, NULL);
    CHECK(ok);
    CHECK(s_json_int(j, "rank") == 0 && s_json_int(j, "world") == 1);
    CHECK(s_json_int(j, "version") == 1 && s_json_int(j, "pid") == pid);
    CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "backend")));
    cJSON_Delete(j);

    int32_t *ids = NULL, *cont = NULL;
    int n_ids = 0, n_cont = 0;
    CHECK(s_read_case(1, &ids, &n_ids, &cont, &n_cont) == 0 && n_ids == 13 && n_cont == 16);
    if (!ids || !cont || n_ids != 13 || n_cont != 16) goto out;
    const int bs = 4;
    int32_t full[16], win[16], all[40];
    memcpy(all, ids, sizeof(int32_t) * 13);
    char msg[1100];

    /* STEP before LOAD */
    proto_seq_t q = s_seq(all, 13, 0, bs, full, win, PROTO_SEQ_SAMPLE | PROTO_SEQ_NEW);
    CHECK(s_step(r, 1, &q, 1, msg, sizeof msg) == -1);
    CHECK_MSG(strstr(msg, "before LOAD") != NULL, "%s", msg);

    /* LOAD */
    char model[1024];
    snprintf(model, sizeof model, "%s/tiny-a", tcheck_fixtures());
    char *load = s_load_json(model, bs, 40, 20);
    s_send(r, "shard-0", PROTO_LOAD, 0, 0, load, strlen(load));
    j = s_expect_cmd(r, "shard-0", PROTO_READY, 0, &ok, NULL);
    CHECK(ok);
    CHECK(s_json_int(j, "vocab") == 512 && s_json_int(j, "n_layers") == 2);
    CHECK_MSG(s_json_int(j, "kv_full_blocks") == 40, "%d", s_json_int(j, "kv_full_blocks"));
    /* 20 = kvcache_plan's window pool for 1 sequence of chunks <= 64 at block size 4: the
     * gateway plans with kvcache_plan, and refuses a READY whose pools differ */
    CHECK_MSG(s_json_int(j, "kv_window_blocks") == 20, "%d", s_json_int(j, "kv_window_blocks"));
    CHECK(s_json_int(j, "block_size") == bs);
    CHECK(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "kv_bytes")));
    CHECK(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "load_ms")));
    const cJSON *be = cJSON_GetObjectItemCaseSensitive(j, "backend");
    CHECK_MSG(cJSON_IsString(be) && strncmp(be->valuestring, "cpu", 3) == 0, "READY backend %s",
              cJSON_IsString(be) ? be->valuestring : "(none)");
    cJSON_Delete(j);

    /* a second LOAD is refused and ignored */
    s_send(r, "shard-0", PROTO_LOAD, 0, 0, load, strlen(load));
    j = s_expect_cmd(r, "shard-0", PROTO_LOAD_ERROR, 0, &ok, NULL);
    CHECK(ok && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "message")));
    cJSON_Delete(j);
    free(load);

    /* garbage: bad magic and a header-only message are dropped (no reply); a truncated
     * STEP, an out-of-range slot and missing blocks get STEP_ERROR; a STEP for another
     * rank is dropped */
    uint8_t hdr[PROTO_HEADER_SIZE];
    proto_header_encode(&(proto_header_t){.cmd = PROTO_STEP, .rank = 0, .seq = 7}, hdr);
    hdr[0] = 'X';
    s_send_raw(r, "shard-0", hdr, sizeof hdr, "junk", 4);
    s_send_raw(r, "shard-0", "short", 5, "", 0);
    proto_buf_t b = {0};
    CHECK(proto_step_encode(&q, 1, &b) == 0);
    s_send(r, "shard-0", PROTO_STEP, 5, 8, b.data, b.len); /* rank 5: not us */
    s_send(r, "shard-0", PROTO_STEP, 0, 9, b.data, b.len - 3);
    proto_buf_free(&b);
    s_in_t in;
    CHECK(s_expect(r, "shard-0", 20000, &in) == 1);
    CHECK_MSG(in.hdr_ok && in.h.cmd == PROTO_STEP_ERROR && in.h.seq == 9,
              "cmd %d seq %llu (the garbage before must get no reply)", in.h.cmd,
              (unsigned long long)in.h.seq);
    CHECK(in.body && strstr((const char *)in.body, "truncated") != NULL);
    s_in_free(&in);
    proto_seq_t bad = q;
    bad.slot = 4;
    CHECK(s_step(r, 10, &bad, 1, msg, sizeof msg) == -1);
    CHECK_MSG(strstr(msg, "slot 4") != NULL, "%s", msg);
    bad = q;
    bad.n_full = 1;
    CHECK(s_step(r, 11, &bad, 1, msg, sizeof msg) == -1);
    CHECK_MSG(strstr(msg, "block") != NULL, "%s", msg);
    int32_t far[4] = {0, 1, 2, 40}; /* block 40 is past the pool */
    bad = q;
    bad.full = far;
    CHECK(s_step(r, 12, &bad, 1, msg, sizeof msg) == -1);
    CHECK_MSG(strstr(msg, "block") != NULL, "%s", msg);
    bad = q;
    bad.top_p = 0.0f;
    CHECK(s_step(r, 13, &bad, 1, msg, sizeof msg) == -1);
    CHECK_MSG(strstr(msg, "top_p") != NULL, "%s", msg);
    bad = q;
    bad.start_pos = 131072 - 12; /* tiny-a's context is 131072 positions */
    CHECK(s_step(r, 15, &bad, 1, msg, sizeof msg) == -1);
    CHECK_MSG(strstr(msg, "context") != NULL, "%s", msg);
    int32_t oov[13];
    memcpy(oov, all, sizeof oov);
    oov[5] = 512;
    bad = q;
    bad.tokens = oov;
    CHECK(s_step(r, 14, &bad, 1, msg, sizeof msg) == -1);
    CHECK_MSG(strstr(msg, "vocabulary") != NULL, "%s", msg);

    /* prefill, then 15 decode steps feeding the sampled token back */
    int32_t gen[16];
    int n_gen = 0;
    gen[n_gen++] = s_step(r, 100, &q, 1, msg, sizeof msg);
    for (int k = 0; k < 15 && gen[n_gen - 1] >= 0; k++) {
        int pos = 13 + k;
        all[pos] = gen[n_gen - 1];
        proto_seq_t d = s_seq(all + pos, 1, pos, bs, full, win, PROTO_SEQ_SAMPLE);
        gen[n_gen++] = s_step(r, 101 + (uint64_t)k, &d, 1, msg, sizeof msg);
    }
    CHECK(n_gen == 16);
    bool same = n_gen == 16;
    for (int i = 0; i < n_gen; i++) {
        if (gen[i] != cont[i]) same = false;
        fprintf(stderr, "%s%d/%d", i ? " " : "greedy (got/expected): ", gen[i], cont[i]);
    }
    fprintf(stderr, "\n");
    CHECK(same);

    /* a step without the sample flag answers an empty RESULT */
    proto_seq_t nos = s_seq(all, 13, 0, bs, full, win, PROTO_SEQ_NEW);
    CHECK(s_step(r, 200, &nos, 1, msg, sizeof msg) == -3);

    /* heartbeats arrive on the -hb identity */
    long long hb_end = s_now_ms() + 3000;
    while (s_hb_seen == 0 && s_now_ms() < hb_end) {
        if (s_expect(r, "shard-0", 200, &in)) s_in_free(&in);
    }
    CHECK_MSG(s_hb_seen > 0, "no heartbeat from shard-0-hb");

    /* SHUTDOWN -> exit 0 */
    s_send(r, "shard-0", PROTO_SHUTDOWN, PROTO_RANK_ALL, 0, "", 0);
    CHECK_MSG(s_wait_exit(pid, 10000) == 0, "shard did not exit 0 after SHUTDOWN");
out:
    free(ids);
    free(cont);
    s_kill_all();
    zmq_close(r);
}

/* Sends a STEP of n sequences; fills out[0..) with the samples of the RESULT. Returns the
 * number of samples, or -1 (STEP_ERROR, no reply, bad reply). */
static int s_step_multi(void *r, uint64_t seq, const proto_seq_t *q, uint32_t n,
                        proto_sample_t *out, uint32_t max) {
    proto_buf_t b = {0};
    int rc = proto_step_encode(q, n, &b);
    if (!rc) rc = s_send(r, "shard-0", PROTO_STEP, 0, seq, b.data, b.len);
    proto_buf_free(&b);
    s_in_t in;
    if (rc || !s_expect(r, "shard-0", 20000, &in)) return -1;
    int got = -1;
    if (in.hdr_ok && in.h.cmd == PROTO_RESULT && in.h.seq == seq) {
        proto_sample_t *smp = NULL;
        uint32_t ns = 0;
        double ms;
        gerr_t err;
        if (proto_result_decode(in.body, in.len, &smp, &ns, &ms, &err) == 0 && ns <= max) {
            memcpy(out, smp, sizeof *smp * ns);
            got = (int)ns;
        }
        free(smp);
    } else {
        fprintf(stderr, "test: step %llu: %s\n", (unsigned long long)seq,
                in.body ? (const char *)in.body : "(no body)");
    }
    s_in_free(&in);
    return got;
}

/* The shard's semantics computed in this process: engine + sampler on one sequence, the
 * prompt recorded as prompt and every sampled token as generated, the draw at position
 * start_pos + n_tokens. Fills tok/lp[0..n_gen). */
static int s_reference(const int32_t *prompt, int n_prompt, int n_gen, const sampling_params_t *p,
                       int32_t *tok, float *lp) {
    char model[1024];
    snprintf(model, sizeof model, "%s/tiny-a", tcheck_fixtures());
    gerr_t err = {{0}};
    weights_t *w = NULL;
    ops_t *ops = NULL;
    engine_t *eng = NULL;
    kvcache_seq_t ks = {0};
    sampling_history_t *h = sampling_history_new();
    sampling_ws_t *ws = sampling_ws_new();
    float *logits = NULL;
    int rc = -1;
    engine_opts_t eo = {.kv_budget_bytes = 8u << 20, .max_seqs = 2, .max_chunk = 64};
    if (!h || !ws || weights_load(model, &w, &err) || ops_cpu_new(1, NULL, &ops, &err) ||
        engine_new(w, ops, &eo, &eng, &err))
        goto out;
    const int V = engine_vocab(eng);
    if (!(logits = malloc(sizeof(float) * (size_t)V))) goto out;
    int32_t cur[64];
    memcpy(cur, prompt, sizeof(int32_t) * (size_t)n_prompt);
    int pos = 0, n_new = n_prompt;
    for (int i = 0; i < n_prompt; i++)
        sampling_history_add(h, prompt[i], false, NULL);
    for (int g = 0; g < n_gen; g++) {
        if (kvcache_seq_reserve(engine_kv(eng), &ks, pos, pos + n_new, &err)) goto out;
        engine_seq_t es = {.tokens = cur,
                           .n_tokens = n_new,
                           .start_pos = pos,
                           .full_blocks = ks.full,
                           .n_full_blocks = ks.n_full,
                           .window_blocks = ks.window,
                           .n_window_blocks = ks.n_window};
        sampling_result_t sr;
        if (engine_step(eng, &es, 1, logits, &err) ||
            sampling_sample(p, h, logits, V, (uint64_t)(pos + n_new), ws, &sr, &err))
            goto out;
        tok[g] = sr.token;
        lp[g] = sr.logprob;
        sampling_history_add(h, sr.token, true, NULL);
        pos += n_new;
        n_new = 1;
        cur[0] = sr.token;
    }
    rc = 0;
out:
    if (rc) fprintf(stderr, "test: reference failed: %s\n", err.msg);
    if (eng) kvcache_seq_release(engine_kv(eng), &ks);
    free(logits);
    engine_free(&eng);
    ops_cpu_free(&ops);
    weights_free(&w);
    sampling_history_destroy(&h);
    sampling_ws_destroy(&ws);
    return rc;
}

/* Two sequences batched in every step with seeded sampling and all three penalties: the
 * shard's tokens and logprobs equal the in-process reference, and a re-prefill with the
 * new-sequence flag starts the penalty history afresh (the same first token again). */
static void test_penalties(void) {
    enum { N_GEN = 12 };
    int32_t *ids[2] = {NULL, NULL}, *cont[2] = {NULL, NULL};
    int n_ids[2], n_cont[2];
    CHECK(s_read_case(0, &ids[0], &n_ids[0], &cont[0], &n_cont[0]) == 0);
    CHECK(s_read_case(1, &ids[1], &n_ids[1], &cont[1], &n_cont[1]) == 0);
    void *r = s_router();
    pid_t pid =
        r ? s_spawn((const char *const[]){"--rank", "0", "--world", "1", "--threads", "2", NULL})
          : -1;
    sampling_params_t sp[2];
    int32_t ref_tok[2][N_GEN];
    float ref_lp[2][N_GEN];
    bool ok = ids[0] && ids[1] && pid > 0;
    for (int k = 0; ok && k < 2; k++) {
        sampling_params_init(&sp[k]);
        sp[k].temperature = k ? 0.7 : 1.3;
        sp[k].top_k = k ? 0 : 40;
        sp[k].top_p = k ? 0.9 : 1.0;
        sp[k].min_p = k ? 0.01 : 0.0;
        sp[k].frequency_penalty = k ? 1.5 : 0.5;
        sp[k].presence_penalty = k ? 0.4 : 1.0;
        sp[k].repetition_penalty = k ? 1.3 : 0.9;
        sp[k].seed = 1000 + (uint64_t)k;
        sp[k].n_logprobs = 2;
        sp[k].vocab_limit = 500;
        ok = s_reference(ids[k], n_ids[k], N_GEN, &sp[k], ref_tok[k], ref_lp[k]) == 0;
        CHECK(ok);
    }
    bool got_hello = false;
    if (ok) cJSON_Delete(s_expect_cmd(r, "shard-0", PROTO_HELLO, 0, &got_hello, NULL));
    CHECK(got_hello);
    if (!ok || !got_hello) goto out;
    char model[1024];
    snprintf(model, sizeof model, "%s/tiny-a", tcheck_fixtures());
    char load[2048];
    snprintf(load, sizeof load,
             "{\"model\":\"%s\",\"kv_dtype\":\"f32\",\"block_size\":4,\"kv_full_blocks\":40,"
             "\"kv_window_blocks\":24,\"max_seqs\":3,\"max_chunk\":16,\"vocab_limit\":500}",
             model);
    s_send(r, "shard-0", PROTO_LOAD, 0, 0, load, strlen(load));
    cJSON *j = s_expect_cmd(r, "shard-0", PROTO_READY, 0, &ok, NULL);
    CHECK(ok);
    CHECK_MSG(s_json_int(j, "kv_window_blocks") == 24, "%d", s_json_int(j, "kv_window_blocks"));
    cJSON_Delete(j);
    if (!ok) goto out;

    /* slot 0: case 0 on blocks 0..; slot 2: case 1 on blocks 10.. */
    const uint32_t slots[2] = {0, 2};
    int32_t seqtok[2][64], full[2][16], win[2][16];
    int pos[2] = {0, 0}, n_new[2] = {n_ids[0], n_ids[1]};
    for (int k = 0; k < 2; k++)
        memcpy(seqtok[k], ids[k], sizeof(int32_t) * (size_t)n_ids[k]);
    int32_t got_tok[2][N_GEN];
    float got_lp[2][N_GEN];
    bool steps_ok = true;
    for (int g = 0; g < N_GEN && steps_ok; g++) {
        proto_seq_t q[2];
        for (int k = 0; k < 2; k++) {
            int end = pos[k] + n_new[k], need = (end + 3) / 4;
            for (int b = 0; b < need; b++)
                full[k][b] = win[k][b] = 10 * k + b;
            q[k] = (proto_seq_t){.slot = slots[k],
                                 .n_tokens = (uint32_t)n_new[k],
                                 .start_pos = (uint32_t)pos[k],
                                 .prompt_len = (uint32_t)n_ids[k],
                                 .n_full = (uint32_t)need,
                                 .n_window = (uint32_t)need,
                                 .flags = PROTO_SEQ_SAMPLE | (g == 0 ? PROTO_SEQ_NEW : 0u),
                                 .temperature = (float)sp[k].temperature,
                                 .top_p = (float)sp[k].top_p,
                                 .min_p = (float)sp[k].min_p,
                                 .top_k = sp[k].top_k,
                                 .frequency_penalty = (float)sp[k].frequency_penalty,
                                 .presence_penalty = (float)sp[k].presence_penalty,
                                 .repetition_penalty = (float)sp[k].repetition_penalty,
                                 .seed = sp[k].seed,
                                 .n_logprobs = sp[k].n_logprobs,
                                 .tokens = seqtok[k] + pos[k],
                                 .full = full[k],
                                 .window = win[k]};
        }
        proto_sample_t smp[2];
        int ns = s_step_multi(r, 300 + (uint64_t)g, q, 2, smp, 2);
        steps_ok = ns == 2 && smp[0].slot == 0 && smp[1].slot == 2;
        CHECK_MSG(steps_ok, "step %d: %d samples", g, ns);
        for (int k = 0; k < 2 && steps_ok; k++) {
            got_tok[k][g] = smp[k].token;
            got_lp[k][g] = smp[k].logprob;
            CHECK(smp[k].n_top == 2);
            pos[k] += n_new[k];
            n_new[k] = 1;
            seqtok[k][pos[k]] = smp[k].token;
        }
    }
    for (int k = 0; k < 2 && steps_ok; k++) {
        int same = 0;
        for (int g = 0; g < N_GEN; g++) {
            same += got_tok[k][g] == ref_tok[k][g];
            CHECK_MSG(got_tok[k][g] == ref_tok[k][g], "seq %d token %d: %d vs reference %d", k, g,
                      got_tok[k][g], ref_tok[k][g]);
            if (got_tok[k][g] == ref_tok[k][g]) CHECK_NEAR(got_lp[k][g], ref_lp[k][g], 1e-4);
        }
        fprintf(stderr, "penalised seq %d: %d/%d tokens equal the reference\n", k, same, N_GEN);
    }
    /* re-prefill slot 0 with the new-sequence flag: history reset -> first token again */
    if (steps_ok) {
        for (int b = 0; b < 2; b++)
            full[0][b] = win[0][b] = b;
        proto_seq_t q = {.slot = 0,
                         .n_tokens = (uint32_t)n_ids[0],
                         .prompt_len = (uint32_t)n_ids[0],
                         .n_full = 2,
                         .n_window = 2,
                         .flags = PROTO_SEQ_SAMPLE | PROTO_SEQ_NEW,
                         .temperature = (float)sp[0].temperature,
                         .top_p = (float)sp[0].top_p,
                         .top_k = sp[0].top_k,
                         .frequency_penalty = (float)sp[0].frequency_penalty,
                         .presence_penalty = (float)sp[0].presence_penalty,
                         .repetition_penalty = (float)sp[0].repetition_penalty,
                         .seed = sp[0].seed,
                         .n_logprobs = 2,
                         .tokens = ids[0],
                         .full = full[0],
                         .window = win[0]};
        proto_sample_t smp;
        CHECK(s_step_multi(r, 400, &q, 1, &smp, 1) == 1);
        CHECK(smp.token == ref_tok[0][0]);
        CHECK_NEAR(smp.logprob, ref_lp[0][0], 1e-4);
    }
    s_send(r, "shard-0", PROTO_SHUTDOWN, PROTO_RANK_ALL, 0, "", 0);
    CHECK_MSG(s_wait_exit(pid, 10000) == 0, "shard did not exit 0 after SHUTDOWN");
out:
    for (int k = 0; k < 2; k++) {
        free(ids[k]);
        free(cont[k]);
    }
    s_kill_all();
    if (r) zmq_close(r);
}

/* LOAD that fails -> LOAD_ERROR with a message, then exit status 2. */
static void test_load_error(const char *model, const char *world, const char *want) {
    void *r = s_router();
    CHECK(r != NULL);
    if (!r) return;
    pid_t pid = s_spawn((const char *const[]){"--rank", "0", "--world", world, NULL});
    bool ok;
    cJSON *j = s_expect_cmd(r, "shard-0", PROTO_HELLO, 0, &ok, NULL);
    CHECK(ok);
    cJSON_Delete(j);
    char *load = s_load_json(model, 16, 8, 8);
    s_send(r, "shard-0", PROTO_LOAD, 0, 0, load, strlen(load));
    free(load);
    j = s_expect_cmd(r, "shard-0", PROTO_LOAD_ERROR, 0, &ok, NULL);
    CHECK(ok);
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "message");
    CHECK_MSG(cJSON_IsString(m) && strstr(m->valuestring, want) != NULL, "message: %s",
              cJSON_IsString(m) ? m->valuestring : "(none)");
    cJSON_Delete(j);
    int st = s_wait_exit(pid, 10000);
    CHECK_MSG(st == 2, "exit status %d, expected 2", st);
    s_kill_all();
    zmq_close(r);
}

/* CUDA devices this test can see: -1 in a build without CUDA. */
static int s_cuda_devices(void) {
#ifdef GPTOSS_HAVE_CUDA
    return ops_cuda_device_count();
#else
    return -1;
#endif
}

/* What a "cuda" LOAD's LOAD_ERROR must say here (no GPU: ops_cuda_new's reason; no CUDA in
 * the build: shard.c's). */
static const char *s_cuda_want(int devices) {
    return devices < 0 ? "this gptoss-shardd was built without CUDA (GPTOSS_CUDA=OFF or no toolkit)"
                       : "device 0 does not exist (0 CUDA devices visible";
}

/* "backend": "cuda" through the real process: LOAD_ERROR naming the reason, exit 2 (PROTOCOL.md:
 * a shard whose LOAD failed exits; the gateway starts a fresh one), or READY on a GPU host. */
static void test_load_cuda_process(int devices) {
    void *r = s_router();
    CHECK(r != NULL);
    if (!r) return;
    pid_t pid = s_spawn((const char *const[]){"--rank", "0", "--world", "1", NULL});
    bool ok;
    cJSON *j = s_expect_cmd(r, "shard-0", PROTO_HELLO, 0, &ok, NULL);
    CHECK(ok);
    cJSON_Delete(j);
    char model[1024];
    snprintf(model, sizeof model, "%s/tiny-a", tcheck_fixtures());
    char *load = s_load_json_x(model, 4, 40, 20, ",\"backend\":\"cuda\",\"device\":0");
    CHECK(load != NULL);
    if (load) s_send(r, "shard-0", PROTO_LOAD, 0, 0, load, strlen(load));
    free(load);
    if (devices > 0) {
        j = s_expect_cmd(r, "shard-0", PROTO_READY, 0, &ok, NULL);
        CHECK(ok);
        const cJSON *be = cJSON_GetObjectItemCaseSensitive(j, "backend");
        CHECK_MSG(cJSON_IsString(be) && strncmp(be->valuestring, "cuda:0", 6) == 0,
                  "READY backend %s", cJSON_IsString(be) ? be->valuestring : "(none)");
        cJSON_Delete(j);
        s_send(r, "shard-0", PROTO_SHUTDOWN, PROTO_RANK_ALL, 0, "", 0);
        CHECK_MSG(s_wait_exit(pid, 20000) == 0, "shard did not exit 0 after SHUTDOWN");
    } else {
        j = s_expect_cmd(r, "shard-0", PROTO_LOAD_ERROR, 0, &ok, NULL);
        CHECK(ok);
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "message");
        CHECK_MSG(cJSON_IsString(m) && strstr(m->valuestring, "backend \"cuda\"") &&
                      strstr(m->valuestring, s_cuda_want(devices)),
                  "message: %s (want %s)", cJSON_IsString(m) ? m->valuestring : "(none)",
                  s_cuda_want(devices));
        cJSON_Delete(j);
        int st = s_wait_exit(pid, 10000);
        CHECK_MSG(st == 2, "exit status %d, expected 2", st);
    }
    s_kill_all();
    zmq_close(r);
}

/* Runs one greedy STEP of prompt ids[0..13) on sh; returns the sampled token, -1 with err set
 * when the step is refused. */
static int32_t s_inproc_step(shard_t *sh, const int32_t *ids, gerr_t *err) {
    int32_t full[16], win[16];
    proto_seq_t q = s_seq(ids, 13, 0, 4, full, win, PROTO_SEQ_SAMPLE | PROTO_SEQ_NEW);
    proto_buf_t in = {0}, out = {0};
    int32_t tok = -1;
    if (proto_step_encode(&q, 1, &in)) {
        gerr_set(err, "out of memory encoding a STEP");
        return -1;
    }
    if (shard_step(sh, in.data, in.len, &out, err) == 0) {
        proto_sample_t *smp = NULL;
        uint32_t ns = 0;
        double ms = 0;
        if (proto_result_decode(out.data, out.len, &smp, &ns, &ms, err) == 0 && ns == 1)
            tok = smp[0].token;
        free(smp);
    }
    proto_buf_free(&in);
    proto_buf_free(&out);
    return tok;
}

/* The same in process (shard.h): a failed "cuda" LOAD leaves nothing loaded, the shard still
 * answers (HELLO body, STEP refused as "before LOAD") and a CPU LOAD on it then works and steps
 * (greedy first token of tiny-a case 1). A bad backend name is refused with the allowed ones. */
static void test_load_cuda_inproc(int devices) {
    shard_t *sh = NULL;
    gerr_t err = {{0}};
    CHECK_MSG(shard_new(&(shard_opts_t){.rank = 0, .world = 1, .threads = 2}, &sh, &err) == 0, "%s",
              err.msg);
    if (!sh) return;
    int32_t *ids = NULL, *cont = NULL;
    int n_ids = 0, n_cont = 0;
    CHECK(s_read_case(1, &ids, &n_ids, &cont, &n_cont) == 0 && n_ids == 13 && n_cont == 16);
    char model[1024];
    snprintf(model, sizeof model, "%s/tiny-a", tcheck_fixtures());
    char *ready = NULL;

    char *load = s_load_json_x(model, 4, 40, 20, ",\"backend\":\"tpu\"");
    CHECK(load && shard_load(sh, load, strlen(load), &ready, &err) != 0 && !ready);
    CHECK_MSG(strstr(err.msg, "\"backend\" must be \"cpu\" or \"cuda\""), "%s", err.msg);
    free(load);

    load = s_load_json_x(model, 4, 40, 20, ",\"backend\":\"cuda\",\"device\":0");
    int rc = load ? shard_load(sh, load, strlen(load), &ready, &err) : -1;
    free(load);
    if (devices > 0) { /* a GPU host: the CUDA LOAD works and READY names it */
        CHECK_MSG(rc == 0, "%s", err.msg);
        CHECK_MSG(ready && strstr(ready, "\"backend\":\"cuda:0"), "READY %s", ready ? ready : "");
        CHECK(strncmp(shard_backend_name(sh), "cuda:0", 6) == 0);
        goto out;
    }
    CHECK(rc != 0 && !ready && !shard_loaded(sh));
    CHECK_MSG(strstr(err.msg, s_cuda_want(devices)), "%s (want %s)", err.msg, s_cuda_want(devices));
    char *hello = shard_hello_json(sh);
    CHECK_MSG(hello && strstr(hello, "\"backend\":\"cpu"), "HELLO %s", hello ? hello : "");
    free(hello);
    if (ids && n_ids == 13) {
        CHECK(s_inproc_step(sh, ids, &err) == -1);
        CHECK_MSG(strstr(err.msg, "before LOAD"), "%s", err.msg);
    }

    load = s_load_json_x(model, 4, 40, 20, ",\"backend\":\"cpu\"");
    rc = load ? shard_load(sh, load, strlen(load), &ready, &err) : -1;
    free(load);
    CHECK_MSG(rc == 0 && shard_loaded(sh), "CPU LOAD after the failed cuda LOAD: %s", err.msg);
    CHECK_MSG(ready && strstr(ready, "\"backend\":\"cpu") && strstr(ready, "\"kv_full_blocks\":40"),
              "READY %s", ready ? ready : "");
    if (rc == 0 && ids && cont && n_ids == 13 && n_cont == 16) {
        int32_t tok = s_inproc_step(sh, ids, &err);
        CHECK_MSG(tok == cont[0], "greedy token %d, expected %d (%s)", tok, cont[0],
                  tok < 0 ? err.msg : "");
    }
out:
    free(ready);
    free(ids);
    free(cont);
    shard_free(&sh);
    CHECK(sh == NULL);
}

/* Heartbeats sent only to the "-hb" identity keep the shard alive (any message counts);
 * then a gateway that says nothing: the shard exits with status 3. */
static void test_silence(void) {
    void *r = s_router();
    CHECK(r != NULL);
    if (!r) return;
    pid_t pid = s_spawn(
        (const char *const[]){"--rank", "0", "--world", "1", "--heartbeat-ms", "100", NULL});
    s_in_t in;
    int hello = 0, st = -1;
    long long t0 = s_now_ms(), alive_until = 0;
    while (s_now_ms() - t0 < 15000) {
        long long now = s_now_ms();
        if (hello && !alive_until) alive_until = now + 1000;
        if (hello && now < alive_until) /* 10 intervals of beats to the -hb socket only */
            s_send(r, "shard-0-hb", PROTO_HEARTBEAT, 0, 0, "", 0);
        if (s_recv(r, 50, &in) == 1) {
            hello += strcmp(in.id, "shard-0") == 0 && in.hdr_ok && in.h.cmd == PROTO_HELLO;
            s_in_free(&in);
        }
        st = s_wait_exit(pid, 0);
        if (st >= 0) break;
    }
    CHECK(hello == 1);
    CHECK_MSG(alive_until && s_now_ms() > alive_until + 200,
              "shard exited (status %d) while the gateway was beating on its -hb socket", st);
    CHECK_MSG(st == 3, "exit status %d, expected 3 when the gateway went silent", st);
    s_kill_all();
    zmq_close(r);
}

/* SIGTERM -> clean exit (status 0). */
static void test_sigterm(void) {
    void *r = s_router();
    CHECK(r != NULL);
    if (!r) return;
    pid_t pid = s_spawn((const char *const[]){"--rank", "0", "--world", "1", NULL});
    bool ok;
    cJSON_Delete(s_expect_cmd(r, "shard-0", PROTO_HELLO, 0, &ok, NULL));
    CHECK(ok);
    CHECK(kill(pid, SIGTERM) == 0);
    int st = s_wait_exit(pid, 10000);
    CHECK_MSG(st == 0, "exit status %d after SIGTERM", st);
    s_kill_all();
    zmq_close(r);
}

int main(void) {
    snprintf(s_endpoint, sizeof s_endpoint, "ipc:///tmp/gptoss-test-shardd-%ld-%lld.ipc",
             (long)getpid(), s_now_ms());
    s_ctx = zmq_ctx_new();
    CHECK(s_ctx != NULL);
    if (!s_ctx) return tcheck_done("test_shardd");
    test_generate();
    test_penalties();
    char missing[1024];
    snprintf(missing, sizeof missing, "%s/no-such-model", tcheck_fixtures());
    test_load_error(missing, "1", "no-such-model");
    char model[1024];
    snprintf(model, sizeof model, "%s/tiny-a", tcheck_fixtures());
    test_load_error(model, "2", "world 2");
    int devices = s_cuda_devices();
    fprintf(stderr, "test_shardd: CUDA devices visible: %d (-1: a build without CUDA)\n", devices);
    test_load_cuda_process(devices);
    test_load_cuda_inproc(devices);
    test_silence();
    test_sigterm();
    s_kill_all();
    zmq_ctx_term(s_ctx);
    unlink(s_endpoint + strlen("ipc://"));
    return tcheck_done("test_shardd");
}
