/* test_proto: the gateway <-> shard wire format (common/proto.c, PROTOCOL.md).
 *
 * Round trips of random STEP and RESULT bodies, a byte-exact layout check of a small
 * STEP against a hand-packed body, every truncation of valid bodies refused, trailing
 * bytes, absurd counts, n_tokens 0, n_logprobs out of range, and header errors (size,
 * magic, version, command). No sockets. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "tcheck.h"

static uint64_t s_rng = 0x9E3779B97F4A7C15ull;

static uint32_t s_rand(void) {
    s_rng ^= s_rng << 13;
    s_rng ^= s_rng >> 7;
    s_rng ^= s_rng << 17;
    return (uint32_t)(s_rng >> 11);
}

static float s_randf(void) {
    return (float)(s_rand() % 100000) / 1000.0f - 50.0f;
}

/* A random step of n sequences; arrays live in pool (caller frees). */
static proto_seq_t *s_random_step(uint32_t n, int32_t **pool) {
    proto_seq_t *s = calloc(n ? n : 1, sizeof *s);
    size_t total = 0;
    uint32_t counts[64][3];
    for (uint32_t i = 0; i < n; i++) {
        counts[i][0] = 1 + s_rand() % 40;
        counts[i][1] = s_rand() % 9;
        counts[i][2] = s_rand() % 5;
        total += counts[i][0] + counts[i][1] + counts[i][2];
    }
    *pool = malloc(sizeof(int32_t) * (total + 1));
    int32_t *p = *pool;
    for (uint32_t i = 0; i < n; i++) {
        proto_seq_t *q = &s[i];
        q->slot = s_rand();
        q->n_tokens = counts[i][0];
        q->start_pos = s_rand();
        q->prompt_len = s_rand();
        q->n_full = counts[i][1];
        q->n_window = counts[i][2];
        q->flags = s_rand() & 3;
        q->temperature = s_randf();
        q->top_p = s_randf();
        q->min_p = s_randf();
        q->top_k = (int32_t)(s_rand() ^ 0x80000000u);
        q->frequency_penalty = s_randf();
        q->presence_penalty = s_randf();
        q->repetition_penalty = s_randf();
        q->seed = (uint64_t)s_rand() << 32 | s_rand();
        q->n_logprobs = (int32_t)(s_rand() % 21);
        int32_t *arrs[3];
        for (int a = 0; a < 3; a++) {
            arrs[a] = p;
            for (uint32_t k = 0; k < counts[i][a]; k++)
                *p++ = (int32_t)(s_rand() ^ 0x40000000u);
        }
        q->tokens = arrs[0];
        q->full = arrs[1];
        q->window = arrs[2];
    }
    return s;
}

static bool s_seq_equal(const proto_seq_t *a, const proto_seq_t *b) {
    bool ok = a->slot == b->slot && a->n_tokens == b->n_tokens && a->start_pos == b->start_pos &&
              a->prompt_len == b->prompt_len && a->n_full == b->n_full &&
              a->n_window == b->n_window && a->flags == b->flags &&
              a->temperature == b->temperature && a->top_p == b->top_p && a->min_p == b->min_p &&
              a->top_k == b->top_k && a->frequency_penalty == b->frequency_penalty &&
              a->presence_penalty == b->presence_penalty &&
              a->repetition_penalty == b->repetition_penalty && a->seed == b->seed &&
              a->n_logprobs == b->n_logprobs;
    ok = ok && !memcmp(a->tokens, b->tokens, 4 * (size_t)a->n_tokens);
    ok = ok && (!a->n_full || !memcmp(a->full, b->full, 4 * (size_t)a->n_full));
    ok = ok && (!a->n_window || !memcmp(a->window, b->window, 4 * (size_t)a->n_window));
    return ok;
}

static void test_header(void) {
    gerr_t err = {{0}};
    uint8_t buf[PROTO_HEADER_SIZE];
    proto_header_t h = {.cmd = PROTO_STEP, .rank = 0xfffffffeu, .seq = 0x0102030405060708ull}, g;
    proto_header_encode(&h, buf);
    const uint8_t want[16] = {'G', 'S', 1, 5, 0xfe, 0xff, 0xff, 0xff, 8, 7, 6, 5, 4, 3, 2, 1};
    CHECK(memcmp(buf, want, 16) == 0);
    CHECK(proto_header_decode(buf, 16, &g, &err) == 0);
    CHECK(g.cmd == h.cmd && g.rank == h.rank && g.seq == h.seq);
    for (size_t len = 0; len < 16; len++)
        CHECK(proto_header_decode(buf, len, &g, &err) == GERR_FORMAT);
    uint8_t big[17] = {0};
    memcpy(big, buf, 16);
    CHECK(proto_header_decode(big, 17, &g, &err) == GERR_FORMAT);
    uint8_t bad[16];
    memcpy(bad, buf, 16);
    bad[0] = 'X';
    CHECK(proto_header_decode(bad, 16, &g, &err) == GERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "magic") != NULL, "%s", err.msg);
    memcpy(bad, buf, 16);
    bad[2] = 2;
    CHECK(proto_header_decode(bad, 16, &g, &err) == GERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "version") != NULL, "%s", err.msg);
    for (int cmd = 0; cmd < 256; cmd++) {
        memcpy(bad, buf, 16);
        bad[3] = (uint8_t)cmd;
        int rc = proto_header_decode(bad, 16, &g, &err);
        CHECK(cmd >= PROTO_HELLO && cmd <= PROTO_SHUTDOWN ? rc == 0 && g.cmd == cmd
                                                          : rc == GERR_FORMAT);
    }
    CHECK(strcmp(proto_cmd_name(PROTO_STEP), "STEP") == 0);
    CHECK(strcmp(proto_cmd_name(PROTO_SHUTDOWN), "SHUTDOWN") == 0);
    CHECK(strcmp(proto_cmd_name(200), "?") == 0);
}

/* A one-sequence step packed by hand, to pin the byte layout of PROTOCOL.md. */
static void test_step_layout(void) {
    int32_t tok[2] = {7, -2}, full[1] = {3}, win[1] = {-1};
    proto_seq_t q = {.slot = 1,
                     .n_tokens = 2,
                     .start_pos = 5,
                     .prompt_len = 6,
                     .n_full = 1,
                     .n_window = 1,
                     .flags = 3,
                     .temperature = 1.0f,
                     .top_p = 0.5f,
                     .min_p = 0.0f,
                     .top_k = -1,
                     .frequency_penalty = 2.0f,
                     .presence_penalty = -2.0f,
                     .repetition_penalty = 1.0f,
                     .seed = 0x1122334455667788ull,
                     .n_logprobs = 20,
                     .tokens = tok,
                     .full = full,
                     .window = win};
    proto_buf_t b = {0};
    CHECK(proto_step_encode(&q, 1, &b) == 0);
    const uint8_t want[] = {
        1,    0,    0,    0, /* n_seqs */
        1,    0,    0,    0,    2,    0,    0,    0,    5, 0, 0,    0,
        6,    0,    0,    0, /* slot n_tokens start_pos prompt_len */
        1,    0,    0,    0,    1,    0,    0,    0,    3, 0, 0,    0, /* n_full n_window flags */
        0,    0,    0x80, 0x3f, 0,    0,    0,    0x3f, 0, 0, 0,    0, /* 1.0f 0.5f 0.0f */
        0xff, 0xff, 0xff, 0xff,                                        /* top_k -1 */
        0,    0,    0,    0x40, 0,    0,    0,    0xc0, 0, 0, 0x80, 0x3f, /* 2.0f -2.0f 1.0f */
        0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,                   /* seed */
        20,   0,    0,    0,                                              /* n_logprobs */
        7,    0,    0,    0,    0xfe, 0xff, 0xff, 0xff,                   /* tokens */
        3,    0,    0,    0,    0xff, 0xff, 0xff, 0xff,                   /* full, window */
    };
    CHECK_MSG(b.len == sizeof want, "%zu bytes", b.len);
    CHECK(b.len == sizeof want && memcmp(b.data, want, sizeof want) == 0);
    proto_buf_free(&b);
    CHECK(b.data == NULL && b.len == 0);
}

static void test_step_roundtrip(void) {
    gerr_t err = {{0}};
    proto_buf_t b = {0};
    for (int iter = 0; iter < 200; iter++) {
        uint32_t n = iter == 0 ? 0 : 1 + s_rand() % 8;
        int32_t *pool;
        proto_seq_t *in = s_random_step(n, &pool);
        CHECK(proto_step_encode(in, n, &b) == 0);
        /* decode from an unaligned copy too: the decoder must not care */
        uint8_t *odd = malloc(b.len + 1);
        memcpy(odd + 1, b.data, b.len);
        for (int pass = 0; pass < 2; pass++) {
            proto_seq_t *out = NULL;
            uint32_t m = 99;
            int rc = proto_step_decode(pass ? odd + 1 : b.data, b.len, &out, &m, &err);
            CHECK_MSG(rc == 0, "%s", err.msg);
            CHECK(m == n);
            bool same = rc == 0 && m == n;
            for (uint32_t i = 0; same && i < n; i++)
                same = s_seq_equal(&in[i], &out[i]);
            CHECK(same);
            free(out);
        }
        /* every truncation is refused, and so are trailing bytes */
        if (iter < 20) {
            for (size_t len = 0; len < b.len; len++) {
                proto_seq_t *out = (proto_seq_t *)1;
                uint32_t m = 99;
                int rc = proto_step_decode(b.data, len, &out, &m, &err);
                CHECK_MSG(rc == GERR_FORMAT && out == NULL && m == 0, "len %zu of %zu: rc %d", len,
                          b.len, rc);
            }
            memcpy(odd, b.data, b.len);
            odd[b.len] = 0;
            proto_seq_t *out = NULL;
            uint32_t m;
            CHECK(proto_step_decode(odd, b.len + 1, &out, &m, &err) == GERR_FORMAT);
            CHECK_MSG(strstr(err.msg, "trailing") != NULL, "%s", err.msg);
        }
        free(odd);
        free(pool);
        free(in);
    }
    proto_buf_free(&b);
}

/* Field offsets inside a one-sequence STEP body. */
enum { S_OFF_NSEQ = 0, S_OFF_NTOK = 8, S_OFF_NFULL = 20, S_OFF_NLP = 68 };

static void s_put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static void test_step_refused(void) {
    gerr_t err = {{0}};
    int32_t tok[3] = {1, 2, 3}, full[2] = {0, 1};
    proto_seq_t q = {.n_tokens = 3, .n_full = 2, .tokens = tok, .full = full, .n_logprobs = 5};
    proto_buf_t b = {0};
    CHECK(proto_step_encode(&q, 1, &b) == 0);
    proto_seq_t *out;
    uint32_t n;
    CHECK(proto_step_decode(b.data, b.len, &out, &n, &err) == 0 && n == 1);
    CHECK(out[0].n_logprobs == 5 && out[0].tokens[2] == 3 && out[0].full[1] == 1);
    free(out);
    uint8_t *c = malloc(b.len);
    struct {
        size_t off;
        uint32_t v;
        const char *what;
    } cases[] = {
        {S_OFF_NSEQ, 2, "STEP claims"},         {S_OFF_NSEQ, 0xffffffffu, "STEP claims"},
        {S_OFF_NTOK, 0, "n_tokens 0"},          {S_OFF_NTOK, 0xffffffffu, "truncated"},
        {S_OFF_NTOK, 4, "truncated"},           {S_OFF_NFULL, 0x40000000u, "truncated"},
        {S_OFF_NLP, 21, "n_logprobs"},          {S_OFF_NLP, 0xffffffffu, "n_logprobs"},
        {S_OFF_NLP, 0x80000000u, "n_logprobs"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        memcpy(c, b.data, b.len);
        s_put32(c + cases[i].off, cases[i].v);
        out = (proto_seq_t *)1;
        int rc = proto_step_decode(c, b.len, &out, &n, &err);
        CHECK_MSG(rc == GERR_FORMAT && out == NULL, "case %zu: rc %d", i, rc);
        CHECK_MSG(strstr(err.msg, cases[i].what) != NULL, "case %zu: %s", i, err.msg);
    }
    /* n_logprobs 20 and 0 are fine */
    for (uint32_t lp = 0; lp <= 20; lp += 20) {
        memcpy(c, b.data, b.len);
        s_put32(c + S_OFF_NLP, lp);
        CHECK(proto_step_decode(c, b.len, &out, &n, &err) == 0);
        free(out);
    }
    free(c);
    proto_buf_free(&b);
    /* an empty step (0 sequences) is 4 bytes */
    CHECK(proto_step_encode(NULL, 0, &b) == 0 && b.len == 4);
    CHECK(proto_step_decode(b.data, b.len, &out, &n, &err) == 0 && n == 0);
    free(out);
    proto_buf_free(&b);
}

static void test_result(void) {
    gerr_t err = {{0}};
    proto_buf_t b = {0};
    for (int iter = 0; iter < 200; iter++) {
        uint32_t n = iter == 0 ? 0 : s_rand() % 10;
        proto_sample_t *in = calloc(n ? n : 1, sizeof *in);
        for (uint32_t i = 0; i < n; i++) {
            in[i].slot = s_rand();
            in[i].token = (int32_t)(s_rand() - 5u);
            in[i].logprob = -s_randf();
            in[i].n_top = s_rand() % 21;
            for (uint32_t k = 0; k < in[i].n_top; k++) {
                in[i].top_ids[k] = (int32_t)s_rand();
                in[i].top_logprobs[k] = s_randf();
            }
        }
        double ms = (double)s_rand() / 7.0;
        CHECK(proto_result_encode(in, n, ms, &b) == 0);
        proto_sample_t *out = NULL;
        uint32_t m = 99;
        double ms2 = -1;
        int rc = proto_result_decode(b.data, b.len, &out, &m, &ms2, &err);
        CHECK_MSG(rc == 0, "%s", err.msg);
        bool same = rc == 0 && m == n && ms2 == ms;
        for (uint32_t i = 0; same && i < n; i++) {
            same = out[i].slot == in[i].slot && out[i].token == in[i].token &&
                   out[i].logprob == in[i].logprob && out[i].n_top == in[i].n_top;
            for (uint32_t k = 0; same && k < in[i].n_top; k++)
                same = out[i].top_ids[k] == in[i].top_ids[k] &&
                       out[i].top_logprobs[k] == in[i].top_logprobs[k];
        }
        CHECK(same);
        free(out);
        if (iter < 20) {
            for (size_t len = 0; len < b.len; len++) {
                out = (proto_sample_t *)1;
                m = 99;
                rc = proto_result_decode(b.data, len, &out, &m, &ms2, &err);
                CHECK_MSG(rc == GERR_FORMAT && out == NULL && m == 0, "len %zu of %zu", len, b.len);
            }
            uint8_t *c = malloc(b.len + 1);
            memcpy(c, b.data, b.len);
            c[b.len] = 0;
            CHECK(proto_result_decode(c, b.len + 1, &out, &m, &ms2, &err) == GERR_FORMAT);
            free(c);
        }
        free(in);
    }
    /* n_top above 20 and absurd counts are refused */
    proto_sample_t one = {.slot = 1, .token = 2, .n_top = 1};
    CHECK(proto_result_encode(&one, 1, 1.5, &b) == 0);
    uint8_t *c = malloc(b.len);
    memcpy(c, b.data, b.len);
    s_put32(c + 16, 21);
    proto_sample_t *out;
    uint32_t m;
    double ms;
    CHECK(proto_result_decode(c, b.len, &out, &m, &ms, &err) == GERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "n_top") != NULL, "%s", err.msg);
    memcpy(c, b.data, b.len);
    s_put32(c, 0xffffffffu);
    CHECK(proto_result_decode(c, b.len, &out, &m, &ms, &err) == GERR_FORMAT);
    /* a NaN step_ms is refused */
    memcpy(c, b.data, b.len);
    memset(c + b.len - 8, 0xff, 8);
    CHECK(proto_result_decode(c, b.len, &out, &m, &ms, &err) == GERR_FORMAT);
    free(c);
    proto_buf_free(&b);
}

int main(void) {
    test_header();
    test_step_layout();
    test_step_roundtrip();
    test_step_refused();
    test_result();
    return tcheck_done("test_proto");
}
