/* proto: encode/decode of the gateway <-> shard wire format (PROTOCOL.md, proto.h).
 *
 * Every field is packed byte by byte in little-endian order (never a struct memcpy), so
 * the layout does not depend on the compiler or the host. Decoders read through a
 * bounds-checked cursor: each read first checks the bytes left, and each variable-length
 * array is checked against the bytes present before anything is allocated, so a hostile
 * count cannot make us allocate or read past the buffer. Not here: sockets, JSON bodies
 * (HELLO/LOAD/READY/errors are parsed by their owners with cJSON). */
#include "proto.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Fixed bytes of one STEP sequence before its arrays: 7 u32, 4 f32/i32, 3 f32, u64, i32. */
#define S_STEP_SEQ_FIXED (7 * 4 + 4 * 4 + 3 * 4 + 8 + 4)
/* Fixed bytes of one RESULT sample before its top list: slot, token, logprob, n_top. */
#define S_RESULT_FIXED (4 * 4)

void proto_buf_free(proto_buf_t *b) {
    if (!b) return;
    free(b->data);
    *b = (proto_buf_t){0};
}

/* ---- writer ------------------------------------------------------------------------ */

/* Makes room for n more bytes; returns 0 or GERR_NOMEM. */
static int s_reserve(proto_buf_t *b, size_t n) {
    if (n <= b->cap - b->len) return 0;
    if (n > SIZE_MAX / 2 - b->len) return GERR_NOMEM;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < n)
        cap *= 2;
    uint8_t *d = realloc(b->data, cap);
    if (!d) return GERR_NOMEM;
    b->data = d;
    b->cap = cap;
    return 0;
}

static void s_put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static void s_put_u64(uint8_t *p, uint64_t v) {
    s_put_u32(p, (uint32_t)v);
    s_put_u32(p + 4, (uint32_t)(v >> 32));
}

/* Appenders: the caller reserved the space. */
static void s_w32(proto_buf_t *b, uint32_t v) {
    s_put_u32(b->data + b->len, v);
    b->len += 4;
}

static void s_wi32(proto_buf_t *b, int32_t v) {
    s_w32(b, (uint32_t)v);
}

static void s_wf32(proto_buf_t *b, float f) {
    uint32_t v;
    memcpy(&v, &f, 4);
    s_w32(b, v);
}

static void s_w64(proto_buf_t *b, uint64_t v) {
    s_put_u64(b->data + b->len, v);
    b->len += 8;
}

static void s_wf64(proto_buf_t *b, double d) {
    uint64_t v;
    memcpy(&v, &d, 8);
    s_w64(b, v);
}

/* ---- reader ------------------------------------------------------------------------ */

typedef struct {
    const uint8_t *p;
    size_t left;
} s_cur_t;

static uint32_t s_get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t s_get_u64(const uint8_t *p) {
    return (uint64_t)s_get_u32(p) | (uint64_t)s_get_u32(p + 4) << 32;
}

/* Readers return false when the buffer holds fewer bytes than the field. */
static bool s_r32(s_cur_t *c, uint32_t *v) {
    if (c->left < 4) return false;
    *v = s_get_u32(c->p);
    c->p += 4;
    c->left -= 4;
    return true;
}

static bool s_ri32(s_cur_t *c, int32_t *v) {
    uint32_t u;
    if (!s_r32(c, &u)) return false;
    *v = (int32_t)u;
    return true;
}

static bool s_rf32(s_cur_t *c, float *f) {
    uint32_t u;
    if (!s_r32(c, &u)) return false;
    memcpy(f, &u, 4);
    return true;
}

static bool s_r64(s_cur_t *c, uint64_t *v) {
    if (c->left < 8) return false;
    *v = s_get_u64(c->p);
    c->p += 8;
    c->left -= 8;
    return true;
}

static bool s_rf64(s_cur_t *c, double *d) {
    uint64_t u;
    if (!s_r64(c, &u)) return false;
    memcpy(d, &u, 8);
    return true;
}

/* ---- header ------------------------------------------------------------------------ */

void proto_header_encode(const proto_header_t *h, uint8_t out[PROTO_HEADER_SIZE]) {
    out[0] = 'G';
    out[1] = 'S';
    out[2] = PROTO_VERSION;
    out[3] = h->cmd;
    s_put_u32(out + 4, h->rank);
    s_put_u64(out + 8, h->seq);
}

int proto_header_decode(const uint8_t *buf, size_t len, proto_header_t *h, gerr_t *err) {
    if (len != PROTO_HEADER_SIZE) {
        gerr_set(err, "header frame is %zu bytes, expected %d", len, PROTO_HEADER_SIZE);
        return GERR_FORMAT;
    }
    if (buf[0] != 'G' || buf[1] != 'S') {
        gerr_set(err, "bad magic 0x%02x 0x%02x (expected 'G' 'S')", buf[0], buf[1]);
        return GERR_FORMAT;
    }
    if (buf[2] != PROTO_VERSION) {
        gerr_set(err, "protocol version %u, this build speaks %d", buf[2], PROTO_VERSION);
        return GERR_FORMAT;
    }
    if (buf[3] < PROTO_HELLO || buf[3] > PROTO_SHUTDOWN) {
        gerr_set(err, "unknown command %u", buf[3]);
        return GERR_FORMAT;
    }
    h->cmd = buf[3];
    h->rank = s_get_u32(buf + 4);
    h->seq = s_get_u64(buf + 8);
    return 0;
}

const char *proto_cmd_name(uint8_t cmd) {
    static const char *const names[] = {"?",    "HELLO",  "LOAD",       "READY",     "LOAD_ERROR",
                                        "STEP", "RESULT", "STEP_ERROR", "HEARTBEAT", "SHUTDOWN"};
    return cmd < sizeof names / sizeof *names ? names[cmd] : "?";
}

/* ---- STEP -------------------------------------------------------------------------- */

int proto_step_encode(const proto_seq_t *seqs, uint32_t n, proto_buf_t *out) {
    out->len = 0;
    size_t total = 4;
    for (uint32_t i = 0; i < n; i++) {
        const proto_seq_t *s = &seqs[i];
        size_t arr = (size_t)s->n_tokens + s->n_full + s->n_window;
        if (arr > (SIZE_MAX / 4 - S_STEP_SEQ_FIXED - total) / 4) return GERR_NOMEM;
        total += S_STEP_SEQ_FIXED + 4 * arr;
    }
    if (s_reserve(out, total)) return GERR_NOMEM;
    s_w32(out, n);
    for (uint32_t i = 0; i < n; i++) {
        const proto_seq_t *s = &seqs[i];
        s_w32(out, s->slot);
        s_w32(out, s->n_tokens);
        s_w32(out, s->start_pos);
        s_w32(out, s->prompt_len);
        s_w32(out, s->n_full);
        s_w32(out, s->n_window);
        s_w32(out, s->flags);
        s_wf32(out, s->temperature);
        s_wf32(out, s->top_p);
        s_wf32(out, s->min_p);
        s_wi32(out, s->top_k);
        s_wf32(out, s->frequency_penalty);
        s_wf32(out, s->presence_penalty);
        s_wf32(out, s->repetition_penalty);
        s_w64(out, s->seed);
        s_wi32(out, s->n_logprobs);
        for (uint32_t t = 0; t < s->n_tokens; t++)
            s_wi32(out, s->tokens[t]);
        for (uint32_t t = 0; t < s->n_full; t++)
            s_wi32(out, s->full[t]);
        for (uint32_t t = 0; t < s->n_window; t++)
            s_wi32(out, s->window[t]);
    }
    return 0;
}

/* Copies count i32 values at the cursor into dst (decoded byte by byte, so neither the
 * alignment of buf nor the host's byte order matters) and skips them. */
static bool s_read_i32s(s_cur_t *c, uint32_t count, int32_t *dst) {
    if (count > c->left / 4) return false;
    for (uint32_t i = 0; i < count; i++)
        dst[i] = (int32_t)s_get_u32(c->p + (size_t)i * 4);
    c->p += (size_t)count * 4;
    c->left -= (size_t)count * 4;
    return true;
}

int proto_step_decode(const uint8_t *buf, size_t len, proto_seq_t **seqs, uint32_t *n,
                      gerr_t *err) {
    *seqs = NULL;
    *n = 0;
    s_cur_t c = {buf, len};
    uint32_t ns;
    if (!s_r32(&c, &ns)) {
        gerr_set(err, "STEP body of %zu bytes is too short for its sequence count", len);
        return GERR_FORMAT;
    }
    if (ns > c.left / S_STEP_SEQ_FIXED) {
        gerr_set(err, "STEP claims %u sequences but holds only %zu bytes after the count", ns,
                 c.left);
        return GERR_FORMAT;
    }
    /* One allocation: the sequences, then a copy of every token/block array. The arrays
     * of a valid body hold at most len / 4 values, so the size is bounded by the bytes
     * present, whatever the counts claim. Copying (rather than pointing into buf) keeps
     * the int32_t pointers aligned and host-endian. */
    size_t head = (size_t)ns * sizeof(proto_seq_t);
    proto_seq_t *out = malloc(head + (len / 4) * sizeof(int32_t) + 1);
    if (!out) {
        gerr_set(err, "out of memory for %u STEP sequences", ns);
        return GERR_NOMEM;
    }
    memset(out, 0, head);
    int32_t *pool = (int32_t *)(void *)((char *)out + head);
    for (uint32_t i = 0; i < ns; i++) {
        proto_seq_t *s = &out[i];
        bool ok = s_r32(&c, &s->slot) && s_r32(&c, &s->n_tokens) && s_r32(&c, &s->start_pos) &&
                  s_r32(&c, &s->prompt_len) && s_r32(&c, &s->n_full) && s_r32(&c, &s->n_window) &&
                  s_r32(&c, &s->flags) && s_rf32(&c, &s->temperature) && s_rf32(&c, &s->top_p) &&
                  s_rf32(&c, &s->min_p) && s_ri32(&c, &s->top_k) &&
                  s_rf32(&c, &s->frequency_penalty) && s_rf32(&c, &s->presence_penalty) &&
                  s_rf32(&c, &s->repetition_penalty) && s_r64(&c, &s->seed) &&
                  s_ri32(&c, &s->n_logprobs);
        if (!ok) {
            gerr_set(err, "STEP sequence %u is truncated in its fixed fields", i);
            goto bad;
        }
        if (s->n_tokens == 0) {
            gerr_set(err, "STEP sequence %u (slot %u) has n_tokens 0 (needs >= 1)", i, s->slot);
            goto bad;
        }
        if (s->n_logprobs < 0 || s->n_logprobs > PROTO_MAX_LOGPROBS) {
            gerr_set(err, "STEP sequence %u (slot %u) asks for n_logprobs %d (accepted 0..%d)", i,
                     s->slot, s->n_logprobs, PROTO_MAX_LOGPROBS);
            goto bad;
        }
        int32_t *arrs[3];
        const uint32_t counts[3] = {s->n_tokens, s->n_full, s->n_window};
        for (int a = 0; a < 3; a++) {
            if (!s_read_i32s(&c, counts[a], pool)) {
                gerr_set(err,
                         "STEP sequence %u (slot %u) is truncated: %u tokens, %u full and %u "
                         "window blocks do not fit in the bytes left",
                         i, s->slot, s->n_tokens, s->n_full, s->n_window);
                goto bad;
            }
            arrs[a] = pool;
            pool += counts[a];
        }
        s->tokens = arrs[0];
        s->full = arrs[1];
        s->window = arrs[2];
    }
    if (c.left != 0) {
        gerr_set(err, "STEP body has %zu trailing bytes after its %u sequences", c.left, ns);
        goto bad;
    }
    *seqs = out;
    *n = ns;
    return 0;
bad:
    free(out);
    return GERR_FORMAT;
}

/* ---- RESULT ------------------------------------------------------------------------ */

int proto_result_encode(const proto_sample_t *s, uint32_t n, double step_ms, proto_buf_t *out) {
    out->len = 0;
    size_t total = 4 + 8;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t nt = s[i].n_top > PROTO_MAX_LOGPROBS ? PROTO_MAX_LOGPROBS : s[i].n_top;
        total += S_RESULT_FIXED + 8 * (size_t)nt;
    }
    if (s_reserve(out, total)) return GERR_NOMEM;
    s_w32(out, n);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t nt = s[i].n_top > PROTO_MAX_LOGPROBS ? PROTO_MAX_LOGPROBS : s[i].n_top;
        s_w32(out, s[i].slot);
        s_wi32(out, s[i].token);
        s_wf32(out, s[i].logprob);
        s_w32(out, nt);
        for (uint32_t k = 0; k < nt; k++) {
            s_wi32(out, s[i].top_ids[k]);
            s_wf32(out, s[i].top_logprobs[k]);
        }
    }
    s_wf64(out, step_ms);
    return 0;
}

int proto_result_decode(const uint8_t *buf, size_t len, proto_sample_t **s, uint32_t *n,
                        double *step_ms, gerr_t *err) {
    *s = NULL;
    *n = 0;
    s_cur_t c = {buf, len};
    uint32_t ns;
    if (!s_r32(&c, &ns)) {
        gerr_set(err, "RESULT body of %zu bytes is too short for its sample count", len);
        return GERR_FORMAT;
    }
    if (c.left < 8 || ns > (c.left - 8) / S_RESULT_FIXED) {
        gerr_set(err, "RESULT claims %u samples but holds only %zu bytes after the count", ns,
                 c.left);
        return GERR_FORMAT;
    }
    proto_sample_t *out = calloc(ns ? ns : 1, sizeof *out);
    if (!out) {
        gerr_set(err, "out of memory for %u RESULT samples", ns);
        return GERR_NOMEM;
    }
    for (uint32_t i = 0; i < ns; i++) {
        proto_sample_t *r = &out[i];
        if (!s_r32(&c, &r->slot) || !s_ri32(&c, &r->token) || !s_rf32(&c, &r->logprob) ||
            !s_r32(&c, &r->n_top)) {
            gerr_set(err, "RESULT sample %u is truncated", i);
            goto bad;
        }
        if (r->n_top > PROTO_MAX_LOGPROBS) {
            gerr_set(err, "RESULT sample %u (slot %u) has n_top %u (at most %d)", i, r->slot,
                     r->n_top, PROTO_MAX_LOGPROBS);
            goto bad;
        }
        for (uint32_t k = 0; k < r->n_top; k++) {
            if (!s_ri32(&c, &r->top_ids[k]) || !s_rf32(&c, &r->top_logprobs[k])) {
                gerr_set(err, "RESULT sample %u (slot %u) is truncated in its top list", i,
                         r->slot);
                goto bad;
            }
        }
    }
    double ms;
    if (!s_rf64(&c, &ms)) {
        gerr_set(err, "RESULT body is truncated before step_ms");
        goto bad;
    }
    if (c.left != 0) {
        gerr_set(err, "RESULT body has %zu trailing bytes", c.left);
        goto bad;
    }
    if (!isfinite(ms) || ms < 0) {
        gerr_set(err, "RESULT step_ms is %g (needs a finite value >= 0)", ms);
        goto bad;
    }
    *s = out;
    *n = ns;
    if (step_ms) *step_ms = ms;
    return 0;
bad:
    free(out);
    return GERR_FORMAT;
}
