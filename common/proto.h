/* proto: the gateway <-> shard wire format of PROTOCOL.md (version 1).
 *
 * Pure encode/decode of the 16-byte header and the binary STEP / RESULT bodies;
 * no sockets here (gateway/shardlink.c and shardd/main.c own those). Decoders
 * treat their input as hostile: every length is checked against the bytes
 * present, and a body that does not decode is refused with a message. Encoders
 * write into caller-owned growable buffers. */
#ifndef GPTOSS_PROTO_H
#define GPTOSS_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gerr.h"

#define PROTO_VERSION      1
#define PROTO_HEADER_SIZE  16
#define PROTO_RANK_ALL     0xffffffffu
#define PROTO_MAX_LOGPROBS 20

typedef enum {
    PROTO_HELLO = 1,
    PROTO_LOAD = 2,
    PROTO_READY = 3,
    PROTO_LOAD_ERROR = 4,
    PROTO_STEP = 5,
    PROTO_RESULT = 6,
    PROTO_STEP_ERROR = 7,
    PROTO_HEARTBEAT = 8,
    PROTO_SHUTDOWN = 9,
} proto_cmd_t;

/* The header frame. */
typedef struct {
    uint8_t cmd;   /* proto_cmd_t */
    uint32_t rank; /* sender rank (shard -> gw) or target (gw -> shard) */
    uint64_t seq;  /* step id for STEP / RESULT / STEP_ERROR */
} proto_header_t;

/* Step flags. */
enum {
    PROTO_SEQ_SAMPLE = 1u << 0, /* sample a token after the last new token */
    PROTO_SEQ_NEW = 1u << 1,    /* new sequence: reset the slot's penalty history */
};

/* One sequence of a STEP. Pointers borrow from the decoded buffer (decode) or from
 * the caller (encode). */
typedef struct {
    uint32_t slot;
    uint32_t n_tokens;
    uint32_t start_pos;
    uint32_t prompt_len;
    uint32_t n_full;
    uint32_t n_window;
    uint32_t flags;
    float temperature, top_p, min_p;
    int32_t top_k;
    float frequency_penalty, presence_penalty, repetition_penalty;
    uint64_t seed;
    int32_t n_logprobs;
    const int32_t *tokens; /* [n_tokens] */
    const int32_t *full;   /* [n_full] */
    const int32_t *window; /* [n_window] */
} proto_seq_t;

/* One sampled token of a RESULT. */
typedef struct {
    uint32_t slot;
    int32_t token;
    float logprob;
    uint32_t n_top;
    int32_t top_ids[PROTO_MAX_LOGPROBS];
    float top_logprobs[PROTO_MAX_LOGPROBS];
} proto_sample_t;

/* A growable byte buffer (caller-owned; free with proto_buf_free). */
typedef struct {
    uint8_t *data;
    size_t len, cap;
} proto_buf_t;

/* Frees b's storage and zeroes it. */
void proto_buf_free(proto_buf_t *b);

/* Writes the 16-byte header into out. */
void proto_header_encode(const proto_header_t *h, uint8_t out[PROTO_HEADER_SIZE]);
/* Decodes a header frame; refuses wrong size, magic, version or unknown command. */
int proto_header_decode(const uint8_t *buf, size_t len, proto_header_t *h, gerr_t *err);

/* Appends the STEP body for seqs[0..n) to out (out->len reset to 0 first). */
int proto_step_encode(const proto_seq_t *seqs, uint32_t n, proto_buf_t *out);
/* Decodes a STEP body. *seqs is one allocation (caller frees it with one free()) holding the
 * sequence records and copies of their token and block arrays (buf may be freed at once). Refuses
 * truncated bodies, trailing bytes, n_tokens == 0, n_logprobs outside 0..20, and counts that do not
 * fit. */
int proto_step_decode(const uint8_t *buf, size_t len, proto_seq_t **seqs, uint32_t *n, gerr_t *err);

/* Appends the RESULT body to out (out->len reset to 0 first). */
int proto_result_encode(const proto_sample_t *s, uint32_t n, double step_ms, proto_buf_t *out);
/* Decodes a RESULT body into a new array *s (caller frees with free()). */
int proto_result_decode(const uint8_t *buf, size_t len, proto_sample_t **s, uint32_t *n,
                        double *step_ms, gerr_t *err);

/* Name of a command for logs ("STEP"); static storage. */
const char *proto_cmd_name(uint8_t cmd);

#endif
