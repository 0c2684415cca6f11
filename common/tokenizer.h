/* tokenizer: the o200k_harmony byte-level BPE of gpt-oss, loaded from tokenizer.json.
 *
 * Pre-tokenisation uses the exact regex of tokenizer.json (PCRE2, UTF, JIT); each
 * piece is BPE-merged by rank (id = rank). Special tokens (ids 199998..200018, from
 * added_tokens) are recognised only when the caller asks (tok_encode_special).
 * Decoding concatenates bytes; the streaming decoder holds back an incomplete UTF-8
 * tail until a later token completes it. A tokenizer is immutable after load and
 * may be shared between threads (each encode call uses its own match data). */
#ifndef GPTOSS_TOKENIZER_H
#define GPTOSS_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gerr.h"

typedef struct tokenizer tokenizer_t;

/* Well-known special ids of o200k_harmony. */
enum {
    TOK_STARTOFTEXT = 199998,
    TOK_ENDOFTEXT = 199999,
    TOK_RETURN = 200002,
    TOK_CONSTRAIN = 200003,
    TOK_CHANNEL = 200005,
    TOK_START = 200006,
    TOK_END = 200007,
    TOK_MESSAGE = 200008,
    TOK_CALL = 200012,
    TOK_ENDOFPROMPT = 200018,
};

/* A growable array of token ids; caller-owned, free with tok_ids_free. */
typedef struct {
    int32_t *ids;
    size_t len;
    size_t cap;
} tok_ids_t;

/* Appends one id (returns GERR_NOMEM on allocation failure). */
int tok_ids_push(tok_ids_t *v, int32_t id);
/* Frees the storage of v and zeroes it. */
void tok_ids_free(tok_ids_t *v);

/* Loads a tokenizer from a tokenizer.json path or a model folder containing one.
 * *out is caller-owned (tok_free). */
int tok_load(const char *path, tokenizer_t **out, gerr_t *err);
/* Frees a tokenizer and sets *t to NULL (safe on NULL). */
void tok_free(tokenizer_t **t);

/* Encodes text[0..len) as ordinary text (special-token strings stay text), appending to out. */
int tok_encode(const tokenizer_t *t, const char *text, size_t len, tok_ids_t *out);
/* Encodes text, turning exact special-token strings (e.g. "<|start|>") into their ids. */
int tok_encode_special(const tokenizer_t *t, const char *text, size_t len, tok_ids_t *out);

/* Bytes of token id (borrowed; *len set). Specials give their string. NULL for an id
 * with no bytes (e.g. a padding id >= 200019). */
const char *tok_token_bytes(const tokenizer_t *t, int32_t id, size_t *len);
/* Decodes ids to a NUL-terminated byte string (caller frees); unknown ids are skipped. */
char *tok_decode(const tokenizer_t *t, const int32_t *ids, size_t n, size_t *out_len);
/* The id of a special-token string, or -1. */
int32_t tok_special_id(const tokenizer_t *t, const char *s);
/* Whether id is a special token (199998..200018 or a padding id). */
bool tok_is_special(const tokenizer_t *t, int32_t id);
/* Number of ids the tokenizer defines (ranks + specials, i.e. 200019). */
int32_t tok_vocab_size(const tokenizer_t *t);

/* Testing aid: BPE-merges one pre-tokenized piece, appending to out. method 0 = as
 * tok_encode does (whole-piece lookup, then the scan or heap merge by length); 1 = plain
 * scan merge, 2 = heap merge (both without the whole-piece shortcut). */
int tok_bpe_piece(const tokenizer_t *t, const char *piece, size_t len, int method, tok_ids_t *out);

/* Testing aid: the pre-tokenizer pieces of text[0..len) (ordinary text), as the end
 * offset of each piece; *ends is caller-owned (free), NULL when *n is 0. */
int tok_split(const tokenizer_t *t, const char *text, size_t len, size_t **ends, size_t *n);

/* Streaming decoder: feed ids one at a time, get back the bytes that are complete
 * UTF-8 so far. Caller-owned; holds a pointer to (not a copy of) the tokenizer. */
typedef struct {
    const tokenizer_t *tok;
    char pending[8]; /* incomplete UTF-8 tail held back */
    size_t npending;
} tok_stream_t;

/* Starts a stream over t. */
void tok_stream_init(tok_stream_t *s, const tokenizer_t *t);
/* Adds id; writes complete text to *out (caller frees, may be "" ) and its length.
 * The output is always valid UTF-8: an ill-formed byte sequence comes out as U+FFFD. */
int tok_stream_push(tok_stream_t *s, int32_t id, char **out, size_t *out_len);
/* Flushes any held-back bytes (invalid tails come out as U+FFFD). Caller frees *out. */
int tok_stream_flush(tok_stream_t *s, char **out, size_t *out_len);

#endif
